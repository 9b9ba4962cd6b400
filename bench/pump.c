/* pump: bulk throughput through a TCP port or an in-process stream to a
 * secret service, measured by one program so both paths pay the same
 * costs at the ends.
 *
 *   pump serve [PORT]
 *       Service on 127.0.0.1:PORT (0 = any); prints "listening on
 *       127.0.0.1:PORT". A connection's first byte picks its job:
 *       'W': read and count until a 0xFF byte (the data never holds one),
 *            then send the count (8 bytes, little endian) and close. An
 *            in-band end, because not every tunnel carries a half-close;
 *       'R': send without pause until the peer goes away.
 *
 *   pump tcp HOST:PORT SECONDS fwd|rev
 *   pump dial HOST:PORT TOKEN NAME SECRET SECONDS fwd|rev
 *       Connects to the service through a TCP port (a proxy's public port,
 *       a visitor's local port), or logs in to the tunnel server at
 *       HOST:PORT as a client and dials the secret service NAME in-process
 *       (tunnel_client_dial). fwd sends for SECONDS, then the end byte, and
 *       waits for the service's count; rev reads for SECONDS. Prints one
 *       line:
 *         bytes=N seconds=S gbit_s=G
 *       fwd's time runs from the connection to the count's arrival, so it
 *       includes draining what was in flight. Exits 1 on any failure or
 *       after SECONDS + 30 s.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tunnel/uv.h>
#include <uv.h>

#define CHUNK (128u * 1024u)
#define TCP_INFLIGHT 4               /* uv writes in flight per connection */
#define STREAM_QUEUE (1024u * 1024u) /* queued stream bytes before waiting */
#define END_BYTE 0xFFu

static uint8_t g_data[CHUNK];
static uv_loop_t *g_loop;

static void die(const char *what, int err) {
  fprintf(stderr, "pump: %s: %s\n", what,
          err ? uv_strerror(err) : "failed");
  exit(1);
}

static int parse_hostport(const char *s, char *host, size_t hostlen,
                          uint16_t *port) {
  const char *c = strrchr(s, ':');
  if (!c || (size_t)(c - s) >= hostlen)
    return -1;
  char *end;
  long p = strtol(c + 1, &end, 10);
  if (*end || p <= 0 || p > 65535)
    return -1;
  memcpy(host, s, (size_t)(c - s));
  host[c - s] = 0;
  *port = (uint16_t)p;
  return 0;
}

/* ------------------------------------------------------------ service */

typedef struct svc_conn {
  uv_tcp_t tcp;
  uv_shutdown_t shut;
  char job;        /* 0 until the first byte */
  uint64_t count;  /* 'W': bytes after the job byte */
  int inflight;    /* 'R': writes in flight */
  int closing;
  uint8_t rbuf[CHUNK];
  uint8_t reply[8];
  uv_write_t reply_req;
} svc_conn;

static void svc_closed(uv_handle_t *h) { free(h->data); }

static void svc_close(svc_conn *s) {
  if (s->closing)
    return;
  s->closing = 1;
  uv_close((uv_handle_t *)&s->tcp, svc_closed);
}

static void svc_send(svc_conn *s);

static void svc_sent(uv_write_t *req, int status) {
  svc_conn *s = req->data;
  free(req);
  s->inflight--;
  if (status || s->closing)
    return;
  svc_send(s);
}

static void svc_send(svc_conn *s) {
  while (!s->closing && s->inflight < TCP_INFLIGHT) {
    uv_write_t *req = malloc(sizeof *req);
    if (!req)
      die("out of memory", 0);
    req->data = s;
    uv_buf_t b = uv_buf_init((char *)g_data, CHUNK);
    if (uv_write(req, (uv_stream_t *)&s->tcp, &b, 1, svc_sent) != 0) {
      free(req);
      svc_close(s);
      return;
    }
    s->inflight++;
  }
}

static void svc_shut(uv_shutdown_t *req, int status) {
  (void)status;
  svc_close(req->data);
}

static void svc_replied(uv_write_t *req, int status) {
  svc_conn *s = req->data;
  if (status || uv_shutdown(&s->shut, (uv_stream_t *)&s->tcp, svc_shut) != 0)
    svc_close(s);
}

static void svc_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  svc_conn *s = h->data;
  (void)hint;
  *b = uv_buf_init((char *)s->rbuf, sizeof s->rbuf);
}

static void svc_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  svc_conn *s = st->data;
  (void)b;
  if (n < 0) {
    svc_close(s);
    return;
  }
  if (n == 0)
    return;
  size_t off = 0;
  if (!s->job) {
    s->job = (char)s->rbuf[0];
    off = 1;
    if (s->job == 'R') {
      svc_send(s); /* keep reading: the peer's close ends the job */
    } else if (s->job != 'W') {
      svc_close(s);
      return;
    }
  }
  if (s->job != 'W')
    return;
  const uint8_t *end = memchr(s->rbuf + off, END_BYTE, (size_t)n - off);
  if (!end) {
    s->count += (uint64_t)n - off;
    return;
  }
  s->count += (uint64_t)(end - (s->rbuf + off));
  uv_read_stop(st);
  for (int i = 0; i < 8; i++)
    s->reply[i] = (uint8_t)(s->count >> (8 * i));
  uv_buf_t r = uv_buf_init((char *)s->reply, 8);
  s->shut.data = s->reply_req.data = s;
  if (uv_write(&s->reply_req, st, &r, 1, svc_replied) != 0)
    svc_close(s);
}

static void svc_accept(uv_stream_t *l, int status) {
  if (status)
    return;
  svc_conn *s = calloc(1, sizeof *s);
  if (!s)
    die("out of memory", 0);
  uv_tcp_init(g_loop, &s->tcp);
  s->tcp.data = s;
  if (uv_accept(l, (uv_stream_t *)&s->tcp) != 0 ||
      uv_read_start((uv_stream_t *)&s->tcp, svc_alloc, svc_read) != 0)
    svc_close(s);
}

static int serve(int port) {
  static uv_tcp_t l;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);
  int rc = uv_tcp_init(g_loop, &l);
  if (!rc)
    rc = uv_tcp_bind(&l, (const struct sockaddr *)&sa, 0);
  if (!rc)
    rc = uv_listen((uv_stream_t *)&l, 128, svc_accept);
  if (rc)
    die("listen", rc);
  int len = sizeof sa;
  uv_tcp_getsockname(&l, (struct sockaddr *)&sa, &len);
  printf("listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
  fflush(stdout);
  return uv_run(g_loop, UV_RUN_DEFAULT);
}

/* ------------------------------------------------------------ client */

/* The client's side: the same loop over a TCP handle or a stream. */
typedef struct run {
  int fwd;
  uint64_t seconds;
  uint64_t t0, t_last; /* ns */
  uint64_t bytes;
  int sending;   /* fwd: still inside the sending period */
  int done;
  /* TCP */
  uv_tcp_t tcp;
  uv_connect_t conn_req;
  int inflight;
  uint8_t rbuf[CHUNK];
  /* stream */
  tunnel_client *client;
  tunnel_stream *st;
  uint8_t reply[8];
  size_t reply_len;
  uv_timer_t timer, guard;
} run;

static void finish(run *r) {
  if (r->done)
    return;
  r->done = 1;
  double secs = (double)(r->t_last - r->t0) / 1e9;
  if (secs <= 0)
    die("no time measured", 0);
  printf("bytes=%llu seconds=%.3f gbit_s=%.3f\n", (unsigned long long)r->bytes,
         secs, (double)r->bytes * 8 / secs / 1e9);
  fflush(stdout);
  uv_timer_stop(&r->timer);
  uv_timer_stop(&r->guard);
  if (r->st)
    tunnel_stream_close(r->st, NULL, NULL);
  r->st = NULL;
  if (r->client)
    tunnel_client_close(r->client, NULL, NULL);
  r->client = NULL;
  if (r->tcp.loop && !uv_is_closing((uv_handle_t *)&r->tcp))
    uv_close((uv_handle_t *)&r->tcp, NULL);
  uv_close((uv_handle_t *)&r->timer, NULL);
  uv_close((uv_handle_t *)&r->guard, NULL);
}

static void on_guard(uv_timer_t *t) {
  (void)t;
  die("time limit reached", 0);
}

/* fwd: the reply is the service's count, which is what crossed. */
static void got_reply(run *r, const uint8_t *p, size_t n) {
  while (n && r->reply_len < 8)
    r->reply[r->reply_len++] = *p++, n--;
  if (r->reply_len < 8)
    return;
  uint64_t c = 0;
  for (int i = 0; i < 8; i++)
    c |= (uint64_t)r->reply[i] << (8 * i);
  if (c != r->bytes) {
    fprintf(stderr, "pump: sent %llu bytes, the service counted %llu\n",
            (unsigned long long)r->bytes, (unsigned long long)c);
    exit(1);
  }
  r->t_last = uv_hrtime();
  finish(r);
}

/* rev: every byte counts; fwd: only the reply comes. */
static void got_data(run *r, const uint8_t *p, size_t n) {
  if (r->fwd) {
    got_reply(r, p, n);
    return;
  }
  r->bytes += n;
  r->t_last = uv_hrtime();
}

static void period_over(uv_timer_t *t);

/* --- TCP path --- */

static void tcp_send(run *r);

static void tcp_sent(uv_write_t *req, int status) {
  run *r = req->data;
  free(req);
  r->inflight--;
  if (status) {
    if (!r->done)
      die("write", status);
    return;
  }
  tcp_send(r);
}

static void tcp_send(run *r) {
  while (r->sending && r->inflight < TCP_INFLIGHT) {
    uv_write_t *req = malloc(sizeof *req);
    if (!req)
      die("out of memory", 0);
    req->data = r;
    uv_buf_t b = uv_buf_init((char *)g_data, CHUNK);
    int rc = uv_write(req, (uv_stream_t *)&r->tcp, &b, 1, tcp_sent);
    if (rc)
      die("write", rc);
    r->inflight++;
    r->bytes += CHUNK;
  }
}

static void tcp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  run *r = h->data;
  (void)hint;
  *b = uv_buf_init((char *)r->rbuf, sizeof r->rbuf);
}

static void tcp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  run *r = s->data;
  if (n < 0) {
    if (!r->done)
      die("read (the service or the path went away)", (int)n);
    return;
  }
  got_data(r, (const uint8_t *)b->base, (size_t)n);
}

static void job_written(uv_write_t *req, int status) {
  free(req);
  if (status)
    die("write", status);
}

static void start_period(run *r) {
  r->t0 = uv_hrtime();
  r->sending = r->fwd;
  uv_timer_start(&r->timer, period_over, r->seconds * 1000, 0);
}

static void tcp_connected(uv_connect_t *req, int status) {
  run *r = req->data;
  if (status)
    die("connect", status);
  uv_write_t *w = malloc(sizeof *w);
  if (!w)
    die("out of memory", 0);
  uv_buf_t b = uv_buf_init(r->fwd ? "W" : "R", 1);
  int rc = uv_write(w, (uv_stream_t *)&r->tcp, &b, 1, job_written);
  if (!rc)
    rc = uv_read_start((uv_stream_t *)&r->tcp, tcp_alloc, tcp_read);
  if (rc)
    die("start", rc);
  start_period(r);
  if (r->fwd)
    tcp_send(r);
}

/* --- stream path --- */

static void stream_send(run *r);

static void stream_sent(tunnel_stream *st, int status, void *ud) {
  run *r = ud;
  (void)st;
  if (status) {
    if (!r->done)
      die(tunnel_strerror(status), 0);
    return;
  }
  stream_send(r);
}

static void stream_send(run *r) {
  while (r->sending && tunnel_stream_write_queue_size(r->st) < STREAM_QUEUE) {
    int rc = tunnel_stream_write(r->st, g_data, CHUNK, stream_sent, r);
    if (rc)
      die(tunnel_strerror(rc), 0);
    r->bytes += CHUNK;
  }
}

static void stream_read(tunnel_stream *st, int status, const uint8_t *data,
                        size_t len, void *ud) {
  run *r = ud;
  (void)st;
  if (status) {
    if (!r->done) {
      fprintf(stderr, "pump: stream: %s\n", tunnel_strerror(status));
      exit(1);
    }
    return;
  }
  got_data(r, data, len);
}

static void dialled(tunnel_client *c, int status, tunnel_stream *st,
                    const char *msg, void *ud) {
  run *r = ud;
  (void)c;
  if (status) {
    fprintf(stderr, "pump: dial: %s: %s\n", tunnel_strerror(status), msg);
    exit(1);
  }
  r->st = st;
  int rc = tunnel_stream_write(st, (const uint8_t *)(r->fwd ? "W" : "R"), 1,
                               NULL, NULL);
  if (!rc)
    rc = tunnel_stream_read_start(st, stream_read, r);
  if (rc)
    die(tunnel_strerror(rc), 0);
  start_period(r);
  if (r->fwd)
    stream_send(r);
}

static void period_over(uv_timer_t *t) {
  run *r = t->data;
  if (!r->fwd) {
    finish(r);
    return;
  }
  r->sending = 0;
  static const uint8_t end = END_BYTE;
  int rc;
  if (r->st) {
    rc = tunnel_stream_write(r->st, &end, 1, NULL, NULL);
  } else {
    uv_write_t *w = malloc(sizeof *w);
    if (!w)
      die("out of memory", 0);
    uv_buf_t b = uv_buf_init((char *)&end, 1);
    rc = uv_write(w, (uv_stream_t *)&r->tcp, &b, 1, job_written);
  }
  if (rc)
    die("write", r->st ? 0 : rc);
}

int main(int argc, char **argv) {
  /* A peer that goes away mid-send is an ordinary end, not a signal. */
  signal(SIGPIPE, SIG_IGN);
  g_loop = uv_default_loop();
  for (size_t i = 0; i < sizeof g_data; i++)
    g_data[i] = (uint8_t)((i * 131u + 7u) % END_BYTE);
  if (argc >= 2 && strcmp(argv[1], "serve") == 0 && argc <= 3)
    return serve(argc == 3 ? atoi(argv[2]) : 0);

  int dial = argc == 8 && strcmp(argv[1], "dial") == 0;
  if (!dial && !(argc == 5 && strcmp(argv[1], "tcp") == 0)) {
    fprintf(stderr, "usage: pump serve [PORT]\n"
                    "       pump tcp HOST:PORT SECONDS fwd|rev\n"
                    "       pump dial HOST:PORT TOKEN NAME SECRET SECONDS "
                    "fwd|rev\n");
    return 2;
  }
  static run r;
  char host[256];
  uint16_t port;
  if (parse_hostport(argv[2], host, sizeof host, &port) != 0)
    die("bad HOST:PORT", 0);
  const char *secs = argv[argc - 2], *dir = argv[argc - 1];
  r.seconds = strtoull(secs, NULL, 10);
  r.fwd = strcmp(dir, "fwd") == 0;
  if (r.seconds == 0 || (!r.fwd && strcmp(dir, "rev") != 0))
    die("bad SECONDS or direction", 0);
  uv_timer_init(g_loop, &r.timer);
  uv_timer_init(g_loop, &r.guard);
  r.timer.data = &r;
  uv_timer_start(&r.guard, on_guard, (r.seconds + 30) * 1000, 0);

  if (!dial) {
    struct sockaddr_in sa;
    int rc = uv_ip4_addr(host, port, &sa);
    if (!rc)
      rc = uv_tcp_init(g_loop, &r.tcp);
    r.tcp.data = r.conn_req.data = &r;
    if (!rc)
      rc = uv_tcp_connect(&r.conn_req, &r.tcp, (const struct sockaddr *)&sa,
                          tcp_connected);
    if (rc)
      die("connect", rc);
  } else {
    tunnel_config *cfg;
    int rc = tunnel_config_new(&cfg);
    if (!rc)
      rc = tunnel_config_set_token(cfg, argv[3]);
    if (!rc)
      rc = tunnel_client_new(&r.client, g_loop, cfg);
    tunnel_config_free(cfg);
    if (!rc)
      rc = tunnel_client_connect(r.client, host, port);
    if (!rc)
      rc = tunnel_client_dial(r.client, argv[4], argv[5], dialled, &r);
    if (rc)
      die(tunnel_strerror(rc), 0);
  }
  uv_run(g_loop, UV_RUN_DEFAULT);
  return r.done ? 0 : 1;
}
