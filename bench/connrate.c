/* connrate: new-connection rate load generator and echo service (libuv).
 *
 *   connrate serve [PORT]
 *       Echo service on 127.0.0.1:PORT (0 = any). Prints
 *       "listening on 127.0.0.1:PORT" on stdout. Echoes what it reads and
 *       closes the connection when the peer does.
 *
 *   connrate [-n N] [-c CONC] [-m BYTES] [-t SECONDS] HOST:PORT
 *       Opens N short TCP connections, at most CONC at a time. Each one
 *       connects, sends BYTES bytes, reads them back, checks them and
 *       closes. Prints one line:
 *         ok=N err=E seconds=S rate=R p50_ms=A p99_ms=B max_ms=C
 *       where rate counts successful connections per second of wall time.
 *       Exits 1 if any connection failed or the run hit the time limit.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#define MAXMSG 4096

/* ---------------- echo service ---------------- */

typedef struct {
  uv_tcp_t tcp;
  char buf[MAXMSG];
} sconn;

typedef struct {
  uv_write_t req;
  uv_buf_t b;
  char data[];
} swrite;

static void s_closed(uv_handle_t *h) { free(h); }

static void s_written(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void s_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)hint;
  sconn *c = (sconn *)h;
  *b = uv_buf_init(c->buf, sizeof c->buf);
}

static void s_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n < 0) {
    uv_close((uv_handle_t *)s, s_closed);
    return;
  }
  if (n == 0)
    return;
  /* Try the cheap path first; queue a copy only for what did not fit. */
  uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
  int done = uv_try_write(s, &out, 1);
  if (done == n)
    return;
  if (done < 0)
    done = 0;
  swrite *w = malloc(sizeof *w + (size_t)(n - done));
  if (!w) {
    uv_close((uv_handle_t *)s, s_closed);
    return;
  }
  memcpy(w->data, b->base + done, (size_t)(n - done));
  w->b = uv_buf_init(w->data, (unsigned)(n - done));
  if (uv_write(&w->req, s, &w->b, 1, s_written) != 0) {
    free(w);
    uv_close((uv_handle_t *)s, s_closed);
  }
}

static void s_conn(uv_stream_t *l, int status) {
  if (status < 0)
    return;
  sconn *c = malloc(sizeof *c);
  if (!c)
    return;
  uv_tcp_init(l->loop, &c->tcp);
  if (uv_accept(l, (uv_stream_t *)&c->tcp) == 0) {
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, s_alloc, s_read);
  } else {
    uv_close((uv_handle_t *)&c->tcp, s_closed);
  }
}

static int serve(int port) {
  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t l;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  uv_tcp_init(loop, &l);
  int rc = uv_tcp_bind(&l, (struct sockaddr *)&a, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&l, 4096, s_conn);
  if (rc) {
    fprintf(stderr, "connrate serve: %s\n", uv_strerror(rc));
    return 1;
  }
  int len = sizeof a;
  uv_tcp_getsockname(&l, (struct sockaddr *)&a, &len);
  printf("listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}

/* ---------------- load generator ---------------- */

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  uint64_t t0;
  size_t got;
  int failed;
  char buf[MAXMSG];
} cconn;

static struct sockaddr_in target;
static long total, conc, started, finished, ok, errs;
static size_t msglen = 16;
static char msg[MAXMSG];
static double *lat_ms;
static uint64_t t_start, t_end;
static uv_timer_t deadline;
static int timed_out;
static int first_err;

static void start_one(uv_loop_t *loop);

static void c_closed(uv_handle_t *h) {
  cconn *c = (cconn *)h;
  if (c->failed) {
    errs++;
  } else {
    lat_ms[ok++] = (double)(uv_hrtime() - c->t0) / 1e6;
  }
  finished++;
  uv_loop_t *loop = h->loop;
  free(c);
  if (finished == total) {
    if (!timed_out) {
      t_end = uv_hrtime();
      uv_close((uv_handle_t *)&deadline, NULL);
    }
    return;
  }
  if (!timed_out && started < total)
    start_one(loop);
}

static void c_fail(cconn *c, int err) {
  if (!first_err)
    first_err = err;
  c->failed = 1;
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, c_closed);
}

static void c_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)hint;
  cconn *c = (cconn *)h;
  *b = uv_buf_init(c->buf + c->got, (unsigned)(sizeof c->buf - c->got));
}

static void c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  cconn *c = (cconn *)s;
  if (n < 0) {
    c_fail(c, n == UV_EOF ? UV_ECONNRESET : (int)n);
    return;
  }
  c->got += (size_t)n;
  if (c->got > msglen) {
    c_fail(c, UV_EPROTO);
    return;
  }
  if (c->got == msglen) {
    if (memcmp(c->buf, msg, msglen) != 0) {
      c_fail(c, UV_EPROTO);
      return;
    }
    uv_close((uv_handle_t *)s, c_closed); /* success: we close first */
  }
}

static void c_written(uv_write_t *w, int status) {
  cconn *c = w->data;
  if (status < 0)
    c_fail(c, status);
}

static void c_connected(uv_connect_t *r, int status) {
  cconn *c = r->data;
  if (status < 0) {
    c_fail(c, status);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_buf_t b = uv_buf_init(msg, (unsigned)msglen);
  c->wreq.data = c;
  int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, c_written);
  if (rc == 0)
    rc = uv_read_start((uv_stream_t *)&c->tcp, c_alloc, c_read);
  if (rc)
    c_fail(c, rc);
}

static void start_one(uv_loop_t *loop) {
  cconn *c = calloc(1, sizeof *c);
  if (!c) {
    fprintf(stderr, "connrate: out of memory\n");
    exit(2);
  }
  started++;
  c->t0 = uv_hrtime();
  uv_tcp_init(loop, &c->tcp);
  c->creq.data = c;
  int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&target,
                          c_connected);
  if (rc)
    c_fail(c, rc);
}

static void walk_close(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) {
    ((cconn *)h)->failed = 1;
    uv_close(h, c_closed);
  }
}

static void on_deadline(uv_timer_t *t) {
  timed_out = 1;
  t_end = uv_hrtime();
  uv_close((uv_handle_t *)t, NULL);
  uv_walk(t->loop, walk_close, NULL);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static const char usage[] =
    "usage: connrate serve [PORT]\n"
    "       connrate [-n N] [-c CONC] [-m BYTES] [-t SECONDS] HOST:PORT\n";

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "serve"))
    return serve(argc > 2 ? atoi(argv[2]) : 0);
  total = 2000;
  conc = 32;
  double limit = 60;
  const char *hp = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-n") && v)
      total = atol(v), i++;
    else if (!strcmp(a, "-c") && v)
      conc = atol(v), i++;
    else if (!strcmp(a, "-m") && v)
      msglen = (size_t)atol(v), i++;
    else if (!strcmp(a, "-t") && v)
      limit = atof(v), i++;
    else if (a[0] != '-' && !hp)
      hp = a;
    else {
      fputs(usage, stderr);
      return 2;
    }
  }
  if (!hp || total <= 0 || conc <= 0 || msglen == 0 || msglen > MAXMSG ||
      limit <= 0) {
    fputs(usage, stderr);
    return 2;
  }
  char host[64];
  const char *colon = strrchr(hp, ':');
  if (!colon || (size_t)(colon - hp) >= sizeof host) {
    fputs(usage, stderr);
    return 2;
  }
  memcpy(host, hp, (size_t)(colon - hp));
  host[colon - hp] = '\0';
  if (uv_ip4_addr(host, atoi(colon + 1), &target) != 0) {
    fprintf(stderr, "connrate: bad address '%s' (IPv4 HOST:PORT)\n", hp);
    return 2;
  }
  for (size_t i = 0; i < msglen; i++)
    msg[i] = (char)('a' + i % 26);
  lat_ms = calloc((size_t)total, sizeof *lat_ms);
  if (!lat_ms)
    return 2;

  uv_loop_t *loop = uv_default_loop();
  uv_timer_init(loop, &deadline);
  uv_timer_start(&deadline, on_deadline, (uint64_t)(limit * 1000), 0);
  t_start = uv_hrtime();
  for (long i = 0; i < conc && i < total; i++)
    start_one(loop);
  uv_run(loop, UV_RUN_DEFAULT);

  double secs = (double)(t_end - t_start) / 1e9;
  double p50 = 0, p99 = 0, mx = 0;
  if (ok > 0) {
    qsort(lat_ms, (size_t)ok, sizeof *lat_ms, cmp_d);
    p50 = lat_ms[(ok - 1) / 2];
    p99 = lat_ms[(ok - 1) * 99 / 100];
    mx = lat_ms[ok - 1];
  }
  printf("ok=%ld err=%ld seconds=%.3f rate=%.1f p50_ms=%.3f p99_ms=%.3f "
         "max_ms=%.3f\n",
         ok, errs + (total - finished), secs, secs > 0 ? ok / secs : 0.0, p50,
         p99, mx);
  if (first_err)
    fprintf(stderr, "connrate: first error: %s\n", uv_strerror(first_err));
  if (timed_out)
    fprintf(stderr, "connrate: time limit of %.0f s reached\n", limit);
  uv_loop_close(loop);
  return (errs || timed_out || finished != total) ? 1 : 0;
}
