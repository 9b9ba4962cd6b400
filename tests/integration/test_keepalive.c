/* Dead-link detection of the client (tunnel_config_set_keepalive) over real
 * loopback sockets. An in-process tunnel_client with keepalive 500/1,500 ms
 * logs in to a spawned server and exposes an echo service of the test:
 *  - stall-*: the server is frozen with SIGSTOP, so its TCP connection stays
 *    up but nothing answers; the client must report TUNNEL_ETIMEDOUT after
 *    the timeout, neither before the last answer can have aged that long
 *    nor much later;
 *  - idle-alive-*: the server runs and the session sits idle for several
 *    timeouts; the probes are answered, so the session must survive and a
 *    visitor still reaches the service;
 *  - stock-frps: the same idle check against a stock frps 0.46.1, whose
 *    yamux answers the client's pings (skipped, 77, when it is absent).
 * Servers are stopped by PID (SIGTERM, then SIGKILL), at exit too when an
 * assertion ended a case early. Every wait is bounded.
 *
 * Usage: test-integration-keepalive TUNNEL_SERVER PEERS_DIR CASE */
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

#include <tunnel/tunnel.h>
#include <tunnel/uv.h>

#include "it_common.h"
#include "it_echo.h"
#include "it_proc.h"

#define TOKEN "keepalive-token"
#define KA_INTERVAL_MS 500u
#define KA_TIMEOUT_MS 1500u
/* Idle period of the idle cases: two timeouts, six probe intervals. */
#define IDLE_MS 3000u
/* Latest acceptable report of a dead link after the stop: the timeout plus
 * a generous allowance for a loaded machine. */
#define STALL_MAX_MS 3000u
/* Bound of the waits that normally take milliseconds (spawning, login,
 * registration, a round trip). */
#define WAIT_MS 8000u

static const char *g_server, *g_peers;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  char dir[64], log[128], ini[128];
  it_proc srv;
  uint16_t ctl_port;
  /* The local service: an echo server. */
  it_echo svc;
  /* The client under test and its one TCP proxy. */
  tunnel_client *cli;
  int state_calls, state, cli_closed;
  char state_msg[256];
  uint64_t state_ns; /* uv_hrtime() of the latest state callback */
  tunnel_proxy *px;
  int px_calls, px_status;
  char px_msg[256];
  uint16_t pub_port;
} ctx;

/* ------------------------------------------------------------ visitor */

typedef struct visitor {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  char sent[64], got[64];
  size_t sent_len, got_len;
  int err, done, closed;
} visitor;

static void vis_closed(uv_handle_t *h) { ((visitor *)h->data)->closed = 1; }

static void vis_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  visitor *v = h->data;
  (void)hint;
  *b = uv_buf_init(v->got + v->got_len, (unsigned)(sizeof v->got - v->got_len));
}

static void vis_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  visitor *v = s->data;
  (void)b;
  if (n < 0) {
    v->err = (int)n;
    uv_read_stop(s);
    return;
  }
  v->got_len += (size_t)n;
  if (v->got_len >= v->sent_len || v->got_len == sizeof v->got) {
    v->done = 1;
    uv_read_stop(s);
  }
}

static void vis_written(uv_write_t *req, int status) {
  visitor *v = req->data;
  if (status < 0)
    v->err = status;
}

static void vis_connected(uv_connect_t *req, int status) {
  visitor *v = req->data;
  if (status < 0) {
    v->err = status;
    return;
  }
  uv_buf_t b = uv_buf_init(v->sent, (unsigned)v->sent_len);
  v->wreq.data = v;
  if (uv_write(&v->wreq, (uv_stream_t *)&v->tcp, &b, 1, vis_written) != 0 ||
      uv_read_start((uv_stream_t *)&v->tcp, vis_alloc, vis_read) != 0)
    v->err = UV_EIO;
}

/* A visitor at the proxy's public port gets its own bytes back. */
static void round_trip(ctx *c, const char *label) {
  visitor v;
  memset(&v, 0, sizeof v);
  v.sent_len = (size_t)snprintf(v.sent, sizeof v.sent, "%s:%08x", label,
                                (unsigned)it_random32());
  uv_tcp_init(&c->loop, &v.tcp);
  v.tcp.data = v.creq.data = &v;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", c->pub_port, &a);
  int rc = uv_tcp_connect(&v.creq, &v.tcp, (struct sockaddr *)&a,
                          vis_connected);
  if (rc == 0)
    IT_WAIT(&c->w, v.done || v.err, WAIT_MS);
  int done = v.done;
  uv_close((uv_handle_t *)&v.tcp, vis_closed);
  IT_WAIT(&c->w, v.closed, WAIT_MS);
  if (rc)
    fail_msg("%s: cannot connect: %s", label, uv_strerror(rc));
  if (!done)
    fail_msg("%s: no echo through the proxy (%s, %zu bytes back)", label,
             uv_strerror(v.err), v.got_len);
  assert_int_equal(v.got_len, v.sent_len);
  assert_memory_equal(v.got, v.sent, v.sent_len);
}

/* ------------------------------------------------------------- client */

static void log_sink(int level, const char *msg, void *ud) {
  (void)ud;
  fprintf(stderr, "# client %s: %s\n", tunnel_log_level_name(level), msg);
}

static void on_state(tunnel_client *cl, int status, const char *msg,
                     void *ud) {
  ctx *c = ud;
  (void)cl;
  c->state_calls++;
  c->state = status;
  c->state_ns = uv_hrtime();
  snprintf(c->state_msg, sizeof c->state_msg, "%s", msg ? msg : "");
}

static void on_proxy_status(tunnel_proxy *p, int status, const char *msg,
                            void *ud) {
  ctx *c = ud;
  (void)p;
  c->px_calls++;
  c->px_status = status;
  snprintf(c->px_msg, sizeof c->px_msg, "%s", msg ? msg : "");
}

static void on_client_closed(tunnel_client *cl, void *ud) {
  (void)cl;
  ((ctx *)ud)->cli_closed = 1;
}

/* Connects the client to 127.0.0.1:c->ctl_port with the test's keepalive
 * and waits for the login and the registration of its proxy (public port
 * `remote`, 0: the server's choice). */
static void client_up(ctx *c, int mux, uint16_t remote) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_log(cfg, log_sink, TUNNEL_LOG_INFO, c),
                   0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, mux), 0);
  assert_int_equal(
      tunnel_config_set_keepalive(cfg, KA_INTERVAL_MS, KA_TIMEOUT_MS), 0);
  int rc = tunnel_client_new(&c->cli, &c->loop, cfg);
  tunnel_config_free(cfg);
  assert_int_equal(rc, 0);
  assert_int_equal(tunnel_client_set_state_cb(c->cli, on_state, c), 0);
  assert_int_equal(
      tunnel_proxy_new(&c->px, c->cli, "keepalive-echo", TUNNEL_PROXY_TCP), 0);
  assert_int_equal(tunnel_proxy_set_local(c->px, "127.0.0.1", c->svc.port), 0);
  assert_int_equal(tunnel_proxy_set_remote_port(c->px, remote), 0);
  assert_int_equal(tunnel_proxy_set_status_cb(c->px, on_proxy_status, c), 0);
  assert_int_equal(tunnel_proxy_start(c->px), 0);
  assert_int_equal(tunnel_client_connect(c->cli, "127.0.0.1", c->ctl_port), 0);

  IT_WAIT(&c->w, c->state_calls > 0, WAIT_MS);
  if (c->state != 0) {
    it_dump_file("server log", c->log);
    fail_msg("login failed: %s (%s)", tunnel_err_name(c->state),
             c->state_msg);
  }
  IT_WAIT(&c->w, c->px_calls > 0 || c->state_calls > 1, WAIT_MS);
  if (c->px_calls == 0 || c->px_status != 0)
    fail_msg("proxy not registered: %s (%s)", tunnel_err_name(c->px_status),
             c->px_msg);
  const char *colon = strrchr(c->px_msg, ':');
  c->pub_port = colon ? (uint16_t)atoi(colon + 1) : 0;
  assert_true(c->pub_port != 0);
  if (remote)
    assert_int_equal(c->pub_port, remote);
}

/* ------------------------------------------------------ setup/teardown */

static ctx *setup(void) {
  ctx *c = calloc(1, sizeof *c);
  assert_non_null(c);
  assert_int_equal(uv_loop_init(&c->loop), 0);
  it_waiter_init(&c->w, &c->loop);
  snprintf(c->dir, sizeof c->dir, "/tmp/keepalive-XXXXXX");
  assert_non_null(mkdtemp(c->dir));
  snprintf(c->log, sizeof c->log, "%s/server.log", c->dir);
  it_echo_init(&c->svc, &c->loop);
  it_echo_listen(&c->svc, 0);
  return c;
}

/* tunnel-server on 127.0.0.1, an ephemeral control port, plain TCP. */
static void start_tunnel_server(ctx *c) {
  uint16_t lo, hi;
  it_pick_range(&lo, &hi);
  char ports[32];
  snprintf(ports, sizeof ports, "%u-%u", lo, hi);
  char *args[] = {(char *)g_server, "--control", "127.0.0.1:0", "--bind",
                  "127.0.0.1", "--ports", ports, "--token", TOKEN,
                  "--no-tls", NULL};
  it_proc_spawn(&c->srv, &c->loop, args, c->log, 1);
  c->ctl_port = it_proc_listening_port(&c->srv, &c->w, c->log);
}

static void teardown(ctx *c) {
  if (c->cli) {
    assert_int_equal(tunnel_client_close(c->cli, on_client_closed, c), 0);
    IT_WAIT(&c->w, c->cli_closed, WAIT_MS);
  }
  it_proc_stop(&c->srv, &c->w);
  it_echo_close(&c->svc, &c->w);
  assert_int_equal(it_waiter_finish(&c->w, WAIT_MS), 0);
  unlink(c->log);
  if (c->ini[0])
    unlink(c->ini);
  rmdir(c->dir);
  free(c);
}

static double ms_since(uint64_t t0_ns, uint64_t t1_ns) {
  return (double)(t1_ns - t0_ns) / 1e6;
}

/* -------------------------------------------------------------- cases */

/* The server frozen: nothing answers the probes while the kernel keeps the
 * connection up. The last byte from the server came at most one probe
 * interval (plus a round trip) before the stop, so the report is due
 * between KA_TIMEOUT_MS - KA_INTERVAL_MS and KA_TIMEOUT_MS after it. */
static void run_stall(int mux) {
  ctx *c = setup();
  start_tunnel_server(c);
  client_up(c, mux, 0);
  round_trip(c, "before");
  /* A little idle first: the stop lands among probes, not right after the
   * login's traffic. */
  it_sleep(&c->w, 600);
  assert_int_equal(c->state_calls, 1);

  assert_int_equal(it_proc_freeze(&c->srv), 0);
  uint64_t t0 = uv_hrtime();
  IT_WAIT(&c->w, c->state_calls > 1, STALL_MAX_MS + 2000);
  double ms = ms_since(t0, c->state_ns);
  fprintf(stderr, "# %s: %s %.0f ms after SIGSTOP (%s)\n",
          mux ? "mux" : "no mux", tunnel_err_name(c->state), ms,
          c->state_msg[0] ? c->state_msg : "no message");
  assert_int_equal(c->state_calls, 2);
  if (c->state != TUNNEL_ETIMEDOUT)
    fail_msg("session ended with %s, expected TUNNEL_ETIMEDOUT",
             tunnel_err_name(c->state));
  /* 5 ms: loop-time granularity between the stamp of the last answer and
   * the clock read here. */
  if (ms < (double)(KA_TIMEOUT_MS - KA_INTERVAL_MS) - 5.0 ||
      ms > (double)STALL_MAX_MS)
    fail_msg("dead link reported %.0f ms after the stop, expected %u..%u ms",
             ms, KA_TIMEOUT_MS - KA_INTERVAL_MS, STALL_MAX_MS);

  assert_int_equal(it_proc_thaw(&c->srv), 0);
  /* The session is over: no further report, and the server outlives it. */
  it_sleep(&c->w, 200);
  assert_int_equal(c->state_calls, 2);
  assert_false(c->srv.exited);
  teardown(c);
}

/* Idle for several timeouts with the server answering: the session stays,
 * and the proxy still carries a visitor. */
static void idle_check(ctx *c, const char *label) {
  round_trip(c, "before");
  uint64_t t0 = uv_hrtime();
  it_sleep(&c->w, IDLE_MS);
  if (c->state_calls != 1)
    fail_msg("%s: session lost while idle: %s (%s)", label,
             tunnel_err_name(c->state), c->state_msg);
  assert_int_equal(c->state, 0);
  round_trip(c, "after");
  fprintf(stderr, "# %s: %.0f ms idle, session kept, visitor served\n", label,
          ms_since(t0, uv_hrtime()));
  assert_int_equal(c->state_calls, 1);
}

static void run_idle(int mux) {
  ctx *c = setup();
  start_tunnel_server(c);
  client_up(c, mux, 0);
  idle_check(c, mux ? "mux" : "no mux");
  assert_false(c->srv.exited);
  teardown(c);
}

static void test_stall_mux(void **state) {
  (void)state;
  run_stall(1);
}

static void test_stall_nomux(void **state) {
  (void)state;
  run_stall(0);
}

static void test_idle_alive_mux(void **state) {
  (void)state;
  run_idle(1);
}

static void test_idle_alive_nomux(void **state) {
  (void)state;
  run_idle(0);
}

/* A stock frps, multiplexed: frps sends nothing on its own while idle (its
 * heartbeat is the client's business), so the session lives on the answers
 * to the client's probes. */
static void test_stock_frps(void **state) {
  (void)state;
  char frps[512];
  snprintf(frps, sizeof frps, "%s/frps", g_peers);
  if (access(frps, X_OK) != 0) {
    fprintf(stderr, "# %s absent: skipped\n", frps);
    exit(77);
  }
  ctx *c = setup();
  uint16_t lo, hi;
  it_pick_range(&lo, &hi);
  c->ctl_port = it_free_port_in(lo, hi);
  uint16_t remote = 0;
  for (int i = 0; i < 50 && (!remote || remote == c->ctl_port); i++)
    remote = it_free_port_in(lo, hi);
  assert_true(c->ctl_port != 0 && remote != 0 && remote != c->ctl_port);
  snprintf(c->ini, sizeof c->ini, "%s/frps.ini", c->dir);
  FILE *f = fopen(c->ini, "w");
  assert_non_null(f);
  fprintf(f,
          "[common]\nbind_addr = 127.0.0.1\nbind_port = %u\n"
          "proxy_bind_addr = 127.0.0.1\ntoken = %s\nallow_ports = %u-%u\n"
          "tcp_mux = true\nlog_level = info\n",
          c->ctl_port, TOKEN, lo, hi);
  fclose(f);
  char *args[] = {frps, "-c", c->ini, NULL};
  it_proc_spawn(&c->srv, &c->loop, args, c->log, 1);
  IT_WAIT(&c->w,
          strstr(c->srv.obuf, "frps started successfully") || c->srv.exited,
          WAIT_MS);
  if (c->srv.exited)
    fail_msg("frps exited at start: %s", c->srv.obuf);
  client_up(c, 1, remote);
  idle_check(c, "stock frps, mux");
  assert_false(c->srv.exited);
  teardown(c);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s TUNNEL_SERVER PEERS_DIR CASE\n", argv[0]);
    return 2;
  }
  g_server = argv[1];
  g_peers = argv[2];
  signal(SIGPIPE, SIG_IGN);
  it_proc_guard(); /* SIGKILL ends a frozen server too */
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_stall_mux),
      cmocka_unit_test(test_stall_nomux),
      cmocka_unit_test(test_idle_alive_mux),
      cmocka_unit_test(test_idle_alive_nomux),
      cmocka_unit_test(test_stock_frps),
  };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i].name, argv[3]) == 0) {
      return _cmocka_run_group_tests(argv[3], &all[i], 1, NULL, NULL);
    }
  fprintf(stderr, "unknown case %s\n", argv[3]);
  return 2;
}
