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
#include <setjmp.h>
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
#include "it_echo.h"
#include "it_proc.h"

#define TOKEN "stcp-frpc-token"
#define SK "stcp-frpc-secret"
#define WAIT_MS 15000u
#define BIG (32u * 1024u * 1024u)

static const char *g_peers, *g_server;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  char dir[64];
  it_proc srv, svc, vis;
  it_echo echo;
  uint8_t rbuf[256 * 1024];
} ctx;

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
  it_echo_init(&c->echo, &c->loop);
  it_echo_listen(&c->echo, 0);

  char slog[128], svclog[128], vislog[128], svcini[128], visini[128];
  snprintf(slog, sizeof slog, "%s/server.log", c->dir);
  snprintf(svclog, sizeof svclog, "%s/frpc-service.log", c->dir);
  snprintf(vislog, sizeof vislog, "%s/frpc-visitor.log", c->dir);
  snprintf(svcini, sizeof svcini, "%s/service.ini", c->dir);
  snprintf(visini, sizeof visini, "%s/visitor.ini", c->dir);
  char *sargs[] = {
      (char *)g_server, "--control", "127.0.0.1:0", "--bind", "127.0.0.1",
      "--token",        TOKEN,       "-v",          NULL};
  it_proc_spawn(&c->srv, &c->loop, sargs, slog, 1);
  unsigned cport = it_proc_listening_port(&c->srv, &c->w, slog);

  char ini[2048];
  snprintf(ini, sizeof ini,
           "[common]\nserver_addr = 127.0.0.1\nserver_port = %u\n"
           "token = %s\ntcp_mux = %s\nlog_level = debug\n\n"
           "[secret]\ntype = stcp\nsk = %s\nlocal_ip = 127.0.0.1\n"
           "local_port = %u\n",
           cport, TOKEN, mux ? "true" : "false", SK, c->echo.port);
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
  it_proc_spawn(&c->svc, &c->loop, svcargs, svclog, 0);
  it_proc_spawn(&c->vis, &c->loop, visargs, vislog, 0);

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
    it_dump_file("tunnel-server", slog);
    it_dump_file("frpc service", svclog);
    it_dump_file("frpc visitor", vislog);
    fail_msg("no echo through the stcp visitor");
  }

  /* 32 MiB each way, checksummed. */
  xfer *x = xfer_start(c, good, 1, BIG);
  if (!xfer_wait(c, x, 60000)) {
    it_dump_file("tunnel-server", slog);
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
          it_file_has(vislog, "visitor connection of [secret] auth failed") &&
              it_file_has(vislog, "custom listener for [nosuch] doesn't exist"),
          WAIT_MS);
  IT_WAIT(&c->w,
          it_file_has(slog, "for [secret] refused: visitor connection of "
                            "[secret] auth failed") &&
              it_file_has(slog, "for [nosuch] refused: custom listener"),
          WAIT_MS);
  /* The others carry on. */
  assert_true(try_echo(c, good, 20, 100000));
  assert_true(try_echo(c, enc, 21, 100000));

  it_proc_stop(&c->vis, &c->w);
  it_proc_stop(&c->svc, &c->w);
  it_proc_stop(&c->srv, &c->w);
  /* SIGTERM ends it cleanly (a sanitizer's findings would not). */
  if (c->srv.status != 0 || c->srv.sig != 0) {
    it_dump_file("tunnel-server", slog);
    fail_msg("tunnel-server exited with status %lld, signal %d",
             (long long)c->srv.status, c->srv.sig);
  }
  it_echo_close(&c->echo, &c->w);
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
  it_proc_guard();
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_frpc_mux),
      cmocka_unit_test(test_frpc_nomux),
  };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i].name, argv[3]) == 0) {
      return _cmocka_run_group_tests(argv[3], &all[i], 1, NULL, NULL);
    }
  fprintf(stderr, "unknown case %s\n", argv[3]);
  return 2;
}
