/* Stock frpc 0.46.1 on both sides of a secret TCP service (stcp), against
 * tunnel-server (the built program): one frpc registers the service (an
 * echo service in the test), another runs visitors (`role = visitor`) on
 * local ports: the right key, the right key with use_encryption, a wrong
 * key, and an unknown name. Bytes go through the visitor's port and come
 * back with checksums (32 MiB each way), over multiplexed sessions or one
 * TCP connection per channel. Refused visitors are closed and frpc logs
 * why; the others keep working. Every process is spawned and stopped by
 * PID (SIGTERM, then SIGKILL); every wait is bounded. Exits 77 (skipped)
 * when PEERS_DIR/frpc is absent.
 *
 * Usage: test-stcp-frpc PEERS_DIR TUNNEL_SERVER CASE */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "it_common.h"
#include "it_data.h"

#define TOKEN "stcp-frpc-token"
#define SK "stcp-frpc-secret"
#define WAIT_MS 15000u
#define BIG (32u * 1024u * 1024u)

static const char *g_peers, *g_server;
/* Children still to be stopped: a failed assertion leaves the case early,
 * and main stops them by PID. */
static int g_pids[3];

typedef struct proc {
  uv_process_t h;
  uv_pipe_t out;
  char obuf[4096];
  size_t olen;
  int exited;
  int64_t status;
  int sig;
  int slot;
} proc;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  char dir[64];
  proc srv, svc, vis;
  uv_tcp_t echo;
  uint16_t echo_port;
  uint8_t rbuf[256 * 1024];
} ctx;

/* ------------------------------------------------ processes */

static void on_exit_cb(uv_process_t *h, int64_t status, int sig) {
  proc *p = h->data;
  p->exited = 1;
  p->status = status;
  p->sig = sig;
}

static void pipe_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  proc *p = h->data;
  (void)hint;
  size_t room = sizeof p->obuf - 1 - p->olen;
  *b = uv_buf_init(p->obuf + p->olen, (unsigned)(room ? room : 1));
}

static void pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  proc *p = s->data;
  (void)b;
  if (n > 0 && p->olen + (size_t)n < sizeof p->obuf) {
    p->olen += (size_t)n;
    p->obuf[p->olen] = '\0';
  } else if (n < 0) {
    uv_read_stop(s);
  }
}

/* Spawns args[0]: stdout to a pipe read into p->obuf, stdout and stderr
 * of frpc (which logs to its console) to `log`. */
static void spawn(ctx *c, proc *p, int slot, char **args, const char *log,
                  int out_to_log) {
  memset(p, 0, sizeof *p);
  p->slot = slot;
  uv_pipe_init(&c->loop, &p->out, 0);
  p->out.data = p->h.data = p;
  int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  uv_stdio_container_t io[3];
  io[0].flags = UV_IGNORE;
  if (out_to_log) {
    io[1].flags = UV_INHERIT_FD;
    io[1].data.fd = fd;
  } else {
    io[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    io[1].data.stream = (uv_stream_t *)&p->out;
  }
  io[2].flags = UV_INHERIT_FD;
  io[2].data.fd = fd;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = on_exit_cb;
  o.file = args[0];
  o.args = args;
  o.stdio_count = 3;
  o.stdio = io;
  int rc = uv_spawn(&c->loop, &p->h, &o);
  close(fd);
  if (rc)
    fail_msg("cannot spawn %s: %s", args[0], uv_strerror(rc));
  g_pids[slot] = p->h.pid;
  if (!out_to_log)
    assert_int_equal(
        uv_read_start((uv_stream_t *)&p->out, pipe_alloc, pipe_read), 0);
}

static void proc_closed(uv_handle_t *h) { (void)h; }

/* SIGTERM by PID, SIGKILL if it lingers; then its handles close. */
static void stop(ctx *c, proc *p) {
  if (!p->h.pid)
    return;
  if (!p->exited) {
    uv_process_kill(&p->h, SIGTERM);
    it_waiter_arm(&c->w, 3000);
    while (!p->exited && !c->w.fired)
      uv_run(&c->loop, UV_RUN_ONCE);
    it_waiter_disarm(&c->w);
    if (!p->exited) {
      uv_process_kill(&p->h, SIGKILL);
      IT_WAIT(&c->w, p->exited, WAIT_MS);
    }
  }
  g_pids[p->slot] = 0;
  uv_close((uv_handle_t *)&p->h, proc_closed);
  if (!uv_is_closing((uv_handle_t *)&p->out))
    uv_close((uv_handle_t *)&p->out, proc_closed);
}

static void dump(const char *label, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return;
  char line[1024];
  fprintf(stderr, "# --- %s\n", label);
  while (fgets(line, sizeof line, f))
    fprintf(stderr, "# %s", line);
  fclose(f);
}

/* Whether the file at `path` contains `s`. */
static int file_has(const char *path, const char *s) {
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  static char buf[1u << 20];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strstr(buf, s) != NULL;
}

/* ------------------------------------------------ the echo service */

typedef struct echo_conn {
  uv_tcp_t tcp;
  uv_shutdown_t shut;
  size_t queued;
  int paused, eof;
} echo_conn;

typedef struct echo_w {
  uv_write_t req;
  echo_conn *e;
  size_t n;
  char data[];
} echo_w;

static void echo_closed(uv_handle_t *h) { free(h->data); }

static void echo_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  static char buf[256 * 1024];
  (void)h, (void)hint;
  *b = uv_buf_init(buf, sizeof buf);
}

static void echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void echo_written(uv_write_t *r, int status) {
  echo_w *w = (echo_w *)r;
  echo_conn *e = w->e;
  e->queued -= w->n;
  free(w);
  if (status || uv_is_closing((uv_handle_t *)&e->tcp))
    return;
  if (e->paused && e->queued < (1u << 20)) {
    e->paused = 0;
    uv_read_start((uv_stream_t *)&e->tcp, echo_alloc, echo_read);
  }
}

static void echo_shut(uv_shutdown_t *r, int status) {
  echo_conn *e = r->data;
  (void)status;
  if (!uv_is_closing((uv_handle_t *)&e->tcp))
    uv_close((uv_handle_t *)&e->tcp, echo_closed);
}

static void echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  echo_conn *e = s->data;
  if (n < 0) {
    if (n == UV_EOF && !e->eof) {
      e->eof = 1;
      e->shut.data = e;
      if (uv_shutdown(&e->shut, s, echo_shut) == 0)
        return;
    }
    if (!uv_is_closing((uv_handle_t *)s))
      uv_close((uv_handle_t *)s, echo_closed);
    return;
  }
  if (n == 0)
    return;
  echo_w *w = malloc(sizeof *w + (size_t)n);
  assert_non_null(w);
  w->e = e;
  w->n = (size_t)n;
  memcpy(w->data, b->base, (size_t)n);
  uv_buf_t wb = uv_buf_init(w->data, (unsigned)n);
  if (uv_write(&w->req, s, &wb, 1, echo_written) != 0) {
    free(w);
    return;
  }
  e->queued += (size_t)n;
  if (e->queued > (4u << 20)) {
    e->paused = 1;
    uv_read_stop(s);
  }
}

static void on_echo_conn(uv_stream_t *l, int status) {
  if (status)
    return;
  echo_conn *e = calloc(1, sizeof *e);
  assert_non_null(e);
  uv_tcp_init(l->loop, &e->tcp);
  e->tcp.data = e;
  if (uv_accept(l, (uv_stream_t *)&e->tcp) != 0) {
    uv_close((uv_handle_t *)&e->tcp, echo_closed);
    return;
  }
  uv_read_start((uv_stream_t *)&e->tcp, echo_alloc, echo_read);
}

/* ------------------------------------------------ user connections */

/* A user of a visitor's local port: sends `total` bytes of stream `seed`
 * (its write queue kept short) and hashes what comes back. */
typedef struct xfer {
  ctx *c;
  uv_tcp_t tcp;
  uv_connect_t creq;
  uint32_t seed;
  size_t total, sent, queued, rx;
  uint64_t want, got;
  int connected, failed, eof, closed;
  uint64_t t0, t1;
} xfer;

typedef struct xfer_w {
  uv_write_t req;
  xfer *x;
  size_t n;
  uint8_t data[];
} xfer_w;

static void xfer_pump(xfer *x);

static void xfer_closed(uv_handle_t *h) {
  xfer *x = h->data;
  x->closed = 1;
}

static void xfer_close(xfer *x) {
  if (!uv_is_closing((uv_handle_t *)&x->tcp))
    uv_close((uv_handle_t *)&x->tcp, xfer_closed);
}

static void xfer_written(uv_write_t *r, int status) {
  xfer_w *w = (xfer_w *)r;
  xfer *x = w->x;
  x->queued -= w->n;
  free(w);
  if (status == 0)
    xfer_pump(x);
}

static void xfer_pump(xfer *x) {
  while (x->sent < x->total && x->queued < (2u << 20) &&
         !uv_is_closing((uv_handle_t *)&x->tcp)) {
    size_t n = x->total - x->sent < 65536 ? x->total - x->sent : 65536;
    xfer_w *w = malloc(sizeof *w + n);
    assert_non_null(w);
    w->x = x;
    w->n = n;
    gen_fill(x->seed, x->sent, w->data, n);
    x->want = fnv1a(x->want, w->data, n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&x->tcp, &b, 1, xfer_written) != 0) {
      free(w);
      return;
    }
    x->sent += n;
    x->queued += n;
  }
}

static void xfer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  xfer *x = h->data;
  (void)hint;
  *b = uv_buf_init((char *)x->c->rbuf, sizeof x->c->rbuf);
}

static void xfer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  xfer *x = s->data;
  if (n < 0) {
    x->eof = 1;
    xfer_close(x);
    return;
  }
  x->got = fnv1a(x->got, (const uint8_t *)b->base, (size_t)n);
  x->rx += (size_t)n;
  if (x->rx >= x->total && !x->t1)
    x->t1 = uv_hrtime();
}

static void xfer_connected(uv_connect_t *r, int status) {
  xfer *x = r->data;
  if (status) {
    x->failed = 1;
    xfer_close(x);
    return;
  }
  x->connected = 1;
  x->t0 = uv_hrtime();
  uv_read_start((uv_stream_t *)&x->tcp, xfer_alloc, xfer_read);
  xfer_pump(x);
}

static xfer *xfer_start(ctx *c, uint16_t port, uint32_t seed, size_t total) {
  xfer *x = calloc(1, sizeof *x);
  assert_non_null(x);
  x->c = c;
  x->seed = seed;
  x->total = total;
  x->want = x->got = FNV_OFFSET;
  uv_tcp_init(&c->loop, &x->tcp);
  x->tcp.data = x;
  x->creq.data = x;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  assert_int_equal(
      uv_tcp_connect(&x->creq, &x->tcp, (struct sockaddr *)&a, xfer_connected),
      0);
  return x;
}

/* Runs until the transfer is back whole (1), or ended (0). */
static int xfer_wait(ctx *c, xfer *x, uint32_t ms) {
  it_waiter_arm(&c->w, ms);
  while (!c->w.fired && !x->closed && x->rx < x->total)
    uv_run(&c->loop, UV_RUN_ONCE);
  it_waiter_disarm(&c->w);
  return x->rx == x->total && x->got == x->want;
}

static void xfer_free(ctx *c, xfer *x) {
  xfer_close(x);
  IT_WAIT(&c->w, x->closed, WAIT_MS);
  free(x);
}

/* One round trip through `port`; 1 when it came back. */
static int try_echo(ctx *c, uint16_t port, uint32_t seed, size_t n) {
  xfer *x = xfer_start(c, port, seed, n);
  int ok = xfer_wait(c, x, 3000);
  xfer_free(c, x);
  return ok;
}

/* A visitor the server refuses: frpc closes the user's connection with
 * nothing sent back. */
static void expect_refused(ctx *c, uint16_t port) {
  xfer *x = xfer_start(c, port, 99, 1000);
  IT_WAIT(&c->w, x->closed, WAIT_MS);
  assert_true(x->connected);
  assert_int_equal(x->rx, 0);
  free(x);
}

/* ------------------------------------------------ the case */

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static uint16_t free_port(uint16_t not1, uint16_t not2, uint16_t not3) {
  for (int i = 0; i < 100; i++) {
    uint16_t p = it_ephemeral_free_port();
    if (p && p != not1 && p != not2 && p != not3)
      return p;
  }
  fail_msg("no free port");
  return 0;
}

static void run_case(int mux) {
  char frpc[512];
  snprintf(frpc, sizeof frpc, "%s/frpc", g_peers);
  if (access(frpc, X_OK) != 0) {
    fprintf(stderr, "# %s absent: skipped\n", frpc);
    exit(77);
  }
  ctx *c = calloc(1, sizeof *c);
  assert_non_null(c);
  assert_int_equal(uv_loop_init(&c->loop), 0);
  it_waiter_init(&c->w, &c->loop);
  snprintf(c->dir, sizeof c->dir, "/tmp/stcp-frpc-XXXXXX");
  assert_non_null(mkdtemp(c->dir));
  uv_tcp_init(&c->loop, &c->echo);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&c->echo, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&c->echo, 64, on_echo_conn), 0);
  int alen = sizeof a;
  assert_int_equal(uv_tcp_getsockname(&c->echo, (struct sockaddr *)&a, &alen),
                   0);
  c->echo_port = ntohs(a.sin_port);

  char slog[128], svclog[128], vislog[128], svcini[128], visini[128];
  snprintf(slog, sizeof slog, "%s/server.log", c->dir);
  snprintf(svclog, sizeof svclog, "%s/frpc-service.log", c->dir);
  snprintf(vislog, sizeof vislog, "%s/frpc-visitor.log", c->dir);
  snprintf(svcini, sizeof svcini, "%s/service.ini", c->dir);
  snprintf(visini, sizeof visini, "%s/visitor.ini", c->dir);
  char *sargs[] = {
      (char *)g_server, "--control", "127.0.0.1:0", "--bind", "127.0.0.1",
      "--token",        TOKEN,       "-v",          NULL};
  spawn(c, &c->srv, 0, sargs, slog, 0);
  IT_WAIT(&c->w, strchr(c->srv.obuf, '\n') || c->srv.exited, WAIT_MS);
  unsigned cport = 0;
  if (sscanf(c->srv.obuf, "listening on 127.0.0.1:%u", &cport) != 1)
    fail_msg("tunnel-server did not print its port: %s", c->srv.obuf);

  char ini[2048];
  snprintf(ini, sizeof ini,
           "[common]\nserver_addr = 127.0.0.1\nserver_port = %u\n"
           "token = %s\ntcp_mux = %s\nlog_level = debug\n\n"
           "[secret]\ntype = stcp\nsk = %s\nlocal_ip = 127.0.0.1\n"
           "local_port = %u\n",
           cport, TOKEN, mux ? "true" : "false", SK, c->echo_port);
  write_file(svcini, ini);
  uint16_t good = free_port(0, 0, 0);
  uint16_t enc = free_port(good, 0, 0);
  uint16_t bad = free_port(good, enc, 0);
  uint16_t unknown = free_port(good, enc, bad);
  snprintf(ini, sizeof ini,
           "[common]\nserver_addr = 127.0.0.1\nserver_port = %u\n"
           "token = %s\ntcp_mux = %s\nlog_level = debug\n\n"
           "[good]\ntype = stcp\nrole = visitor\nserver_name = secret\n"
           "sk = %s\nbind_addr = 127.0.0.1\nbind_port = %u\n\n"
           "[encrypted]\ntype = stcp\nrole = visitor\nserver_name = secret\n"
           "sk = %s\nuse_encryption = true\nbind_addr = 127.0.0.1\n"
           "bind_port = %u\n\n"
           "[bad]\ntype = stcp\nrole = visitor\nserver_name = secret\n"
           "sk = not-the-secret\nbind_addr = 127.0.0.1\nbind_port = %u\n\n"
           "[unknown]\ntype = stcp\nrole = visitor\nserver_name = nosuch\n"
           "sk = %s\nbind_addr = 127.0.0.1\nbind_port = %u\n",
           cport, TOKEN, mux ? "true" : "false", SK, good, SK, enc, bad, SK,
           unknown);
  write_file(visini, ini);
  char *svcargs[] = {frpc, "-c", svcini, NULL};
  char *visargs[] = {frpc, "-c", visini, NULL};
  spawn(c, &c->svc, 1, svcargs, svclog, 1);
  spawn(c, &c->vis, 2, visargs, vislog, 1);

  /* Until the service is registered and the visitor listens. */
  int up = 0;
  uint64_t until = uv_now(&c->loop) + WAIT_MS;
  for (uint32_t i = 0; !up && uv_now(&c->loop) < until; i++) {
    up = try_echo(c, good, i, 16);
    if (!up)
      it_sleep(&c->w, 200);
    if (c->srv.exited || c->svc.exited || c->vis.exited)
      break;
  }
  if (!up) {
    dump("tunnel-server", slog);
    dump("frpc service", svclog);
    dump("frpc visitor", vislog);
    fail_msg("no echo through the stcp visitor");
  }

  /* 32 MiB each way, checksummed. */
  xfer *x = xfer_start(c, good, 1, BIG);
  if (!xfer_wait(c, x, 60000)) {
    dump("tunnel-server", slog);
    fail_msg("32 MiB: %zu bytes back, checksum %s", x->rx,
             x->got == x->want ? "matches" : "differs");
  }
  fprintf(stderr, "# frpc stcp (%s): 32 MiB each way in %.2f s\n",
          mux ? "mux" : "no mux", (double)(x->t1 - x->t0) / 1e9);
  xfer_free(c, x);
  /* Visitors side by side, one of them through frp's cipher. */
  xfer *xs[6];
  for (int i = 0; i < 6; i++)
    xs[i] = xfer_start(c, i % 2 ? enc : good, 10 + (uint32_t)i, 1u << 20);
  for (int i = 0; i < 6; i++) {
    if (!xfer_wait(c, xs[i], WAIT_MS))
      fail_msg("visitor %d: %zu bytes back", i, xs[i]->rx);
    xfer_free(c, xs[i]);
  }
  x = xfer_start(c, enc, 2, 8u << 20);
  assert_true(xfer_wait(c, x, 30000));
  xfer_free(c, x);

  /* A wrong key and an unknown name: refused, and frpc says why. */
  expect_refused(c, bad);
  expect_refused(c, unknown);
  IT_WAIT(&c->w,
          file_has(vislog, "visitor connection of [secret] auth failed") &&
              file_has(vislog, "custom listener for [nosuch] doesn't exist"),
          WAIT_MS);
  IT_WAIT(&c->w,
          file_has(slog, "for [secret] refused: visitor connection of "
                         "[secret] auth failed") &&
              file_has(slog, "for [nosuch] refused: custom listener"),
          WAIT_MS);
  /* The others carry on. */
  assert_true(try_echo(c, good, 20, 100000));
  assert_true(try_echo(c, enc, 21, 100000));

  stop(c, &c->vis);
  stop(c, &c->svc);
  stop(c, &c->srv);
  /* SIGTERM ends it cleanly (a sanitizer's findings would not). */
  if (c->srv.status != 0 || c->srv.sig != 0) {
    dump("tunnel-server", slog);
    fail_msg("tunnel-server exited with status %lld, signal %d",
             (long long)c->srv.status, c->srv.sig);
  }
  uv_close((uv_handle_t *)&c->echo, NULL);
  assert_int_equal(it_waiter_finish(&c->w, WAIT_MS), 0);
  unlink(slog), unlink(svclog), unlink(vislog), unlink(svcini), unlink(visini);
  rmdir(c->dir);
  free(c);
}

static void test_frpc_mux(void **state) {
  (void)state;
  run_case(1);
}

static void test_frpc_nomux(void **state) {
  (void)state;
  run_case(0);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s PEERS_DIR TUNNEL_SERVER CASE\n", argv[0]);
    return 2;
  }
  g_peers = argv[1];
  g_server = argv[2];
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_frpc_mux),
      cmocka_unit_test(test_frpc_nomux),
  };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i].name, argv[3]) == 0) {
      int rc = _cmocka_run_group_tests(argv[3], &all[i], 1, NULL, NULL);
      for (int k = 0; k < 3; k++)
        if (g_pids[k] > 0)
          kill((pid_t)g_pids[k], SIGKILL);
      return rc;
    }
  fprintf(stderr, "unknown case %s\n", argv[3]);
  return 2;
}
