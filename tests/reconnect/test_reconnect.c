/* The client's own reconnection, and the server's handover of stale
 * sessions, over real loopback sockets (127.0.0.1, ports picked at run
 * time). Server and clients run in this process on one loop, through the
 * public API; the cases that need a process (SIGKILL, SIGTERM's drain)
 * spawn tunnel-client and stop it by PID.
 *   restart-mux, restart-nomux  the server goes away for a second and
 *       comes back on the same port: every client logs in again and gets
 *       its port back within RESTART_MAX_MS of the server's return, and
 *       visitors get through again; the client reports each step (LOST,
 *       RETRYING, CONNECTING, LOGGED_IN) and never gives up;
 *   restart-200  the same with 200 clients at once;
 *   stale-mux, stale-nomux  a relay between client and server stops
 *       forwarding without closing anything (a silently dead link): the
 *       client notices within its keepalive deadline, reconnects through a
 *       fresh connection while the server still holds the old session, and
 *       gets its port back at once (the server hands the session's
 *       registrations over to the same run id); another client still
 *       cannot take the port;
 *   sigkill  tunnel-client killed with SIGKILL: its port is free for
 *       another client within 1 s;
 *   service-restart  the local service goes away and comes back: the
 *       next visitor is served;
 *   drain  SIGTERM to tunnel-client in the middle of a 64 MiB echo: the
 *       transfer completes byte for byte, a new visitor is refused once
 *       the proxy is withdrawn, and the client exits 0 afterwards;
 *   cycles  1,000 connect/disconnect cycles of a client: the server's
 *       memory (allocator-counted) and the process's descriptors stay
 *       flat, and every client frees all it allocated;
 *   emfile  the process runs out of file descriptors: a new visitor is
 *       refused with a log line, a visitor already joined goes on, and
 *       new visitors are served again once descriptors are back.
 *
 * Usage: test-reconnect TUNNEL_CLIENT CASE */
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>

#include <tunnel/tunnel.h>
#include <tunnel/uv.h>

#include "../integration/it_common.h"
#include "../integration/it_data.h"
#include "../integration/it_echo.h"
#include "../integration/it_proc.h"

#define TOKEN "reconnect-token"
/* Bound of the waits that normally take milliseconds. */
#define WAIT_MS 10000u
/* How long the server stays away, and how soon after its return every
 * client must be back. */
#define DOWN_MS 1000u
#define RESTART_MAX_MS 3000u
#define MANY 200
/* The stale-link case's keepalive, and the latest acceptable notice. */
#define KA_INTERVAL_MS 300u
#define KA_TIMEOUT_MS 900u
#define STALL_NOTICE_MAX_MS 2500u
#define DRAIN_BYTES (64u * 1024u * 1024u)
#define CYCLES 1000

static const char *g_client;

/* ---------------------------------------------------------------- ctx */

typedef struct relay_pair relay_pair;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  tunnel_server *srv;
  memstat srv_mem;
  int srv_closed;
  uint16_t ctl_port;
  uint16_t lo, hi;
  /* The local service: an echo server, one write in flight per
   * connection (reading resumes once it is out). */
  it_echo svc;
  /* The relay of the stale cases. */
  uv_tcp_t relay;
  int relay_open;
  uint16_t relay_port;
  relay_pair *pairs;
  int fd_warnings; /* log lines about running out of descriptors */
} ctx;

static void log_sink(int level, const char *msg, void *ud) {
  ctx *c = ud;
  if (c && (strstr(msg, "too many open files") || strstr(msg, "EMFILE")))
    c->fd_warnings++;
  if (level <= TUNNEL_LOG_WARN || getenv("TEST_VERBOSE"))
    fprintf(stderr, "# [%s] %s\n", tunnel_log_level_name(level), msg);
}

/* ------------------------------------------------------------- server */

static void srv_closed(tunnel_server *s, void *ud) {
  (void)s;
  ((ctx *)ud)->srv_closed = 1;
}

/* On c->ctl_port (0 the first time: an ephemeral port, kept). */
static void server_start(ctx *c) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc, mem_free, &c->srv_mem);
  tunnel_config_set_token(cfg, TOKEN);
  tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1");
  tunnel_config_set_port_range(cfg, c->lo, c->hi);
  tunnel_config_set_max_clients(cfg, 1000);
  tunnel_config_set_log(cfg, log_sink, TUNNEL_LOG_WARN, c);
  assert_int_equal(tunnel_server_new(&c->srv, &c->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(c->srv, "127.0.0.1", c->ctl_port), 0);
  assert_int_equal(tunnel_server_port(c->srv, &c->ctl_port), 0);
  c->srv_closed = 0;
}

static void server_stop(ctx *c) {
  if (!c->srv)
    return;
  assert_int_equal(tunnel_server_close(c->srv, srv_closed, c), 0);
  IT_WAIT(&c->w, c->srv_closed, WAIT_MS);
  c->srv = NULL;
}

/* --------------------------------------------------------------- relay */

/* A TCP relay to the server that can stop forwarding on the connections it
 * carries while keeping them open: the link looks alive to both ends and
 * carries nothing. New connections are forwarded normally. */
struct relay_pair {
  ctx *c;
  relay_pair *next;
  uv_tcp_t a, b; /* a: from the client; b: to the server */
  uv_connect_t creq;
  int b_up, paused, closing, nclosed;
  char abuf[65536], bbuf[65536];
};

static void pair_closed(uv_handle_t *h) {
  relay_pair *p = h->data;
  if (++p->nclosed < 2)
    return;
  for (relay_pair **pp = &p->c->pairs; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  free(p);
}

static void pair_close(relay_pair *p) {
  if (p->closing)
    return;
  p->closing = 1;
  uv_close((uv_handle_t *)&p->a, pair_closed);
  uv_close((uv_handle_t *)&p->b, pair_closed);
}

static void pair_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  relay_pair *p = h->data;
  (void)hint;
  *b = h == (uv_handle_t *)&p->a ? uv_buf_init(p->abuf, sizeof p->abuf)
                                 : uv_buf_init(p->bbuf, sizeof p->bbuf);
}

typedef struct relay_write {
  uv_write_t req;
  char data[];
} relay_write;

static void relay_written(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void pair_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  relay_pair *p = s->data;
  if (n < 0) {
    pair_close(p);
    return;
  }
  if (n == 0 || p->paused)
    return;
  uv_stream_t *to =
      s == (uv_stream_t *)&p->a ? (uv_stream_t *)&p->b : (uv_stream_t *)&p->a;
  relay_write *w = malloc(sizeof *w + (size_t)n);
  assert_non_null(w);
  memcpy(w->data, b->base, (size_t)n);
  uv_buf_t out = uv_buf_init(w->data, (unsigned)n);
  if (uv_write(&w->req, to, &out, 1, relay_written) != 0) {
    free(w);
    pair_close(p);
  }
}

static void pair_connected(uv_connect_t *req, int status) {
  relay_pair *p = req->data;
  if (p->closing)
    return;
  if (status < 0) {
    pair_close(p);
    return;
  }
  p->b_up = 1;
  uv_read_start((uv_stream_t *)&p->a, pair_alloc, pair_read);
  uv_read_start((uv_stream_t *)&p->b, pair_alloc, pair_read);
}

static void on_relay_conn(uv_stream_t *l, int status) {
  ctx *c = l->data;
  if (status < 0)
    return;
  relay_pair *p = calloc(1, sizeof *p);
  assert_non_null(p);
  p->c = c;
  uv_tcp_init(&c->loop, &p->a);
  uv_tcp_init(&c->loop, &p->b);
  p->a.data = p->b.data = p->creq.data = p;
  p->next = c->pairs;
  c->pairs = p;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", c->ctl_port, &a);
  if (uv_accept(l, (uv_stream_t *)&p->a) != 0 ||
      uv_tcp_connect(&p->creq, &p->b, (struct sockaddr *)&a,
                     pair_connected) != 0)
    pair_close(p);
}

static void relay_open(ctx *c) {
  uv_tcp_init(&c->loop, &c->relay);
  c->relay.data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&c->relay, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&c->relay, 16, on_relay_conn), 0);
  int len = sizeof a;
  assert_int_equal(
      uv_tcp_getsockname(&c->relay, (struct sockaddr *)&a, &len), 0);
  c->relay_port = ntohs(a.sin_port);
  c->relay_open = 1;
}

/* Every connection the relay carries now goes silent, both ways. */
static void relay_pause_all(ctx *c) {
  for (relay_pair *p = c->pairs; p; p = p->next)
    p->paused = 1;
}

static void relay_close(ctx *c) {
  if (c->relay_open)
    uv_close((uv_handle_t *)&c->relay, NULL);
  c->relay_open = 0;
  for (relay_pair *p = c->pairs; p; p = p->next)
    pair_close(p);
  IT_WAIT(&c->w, c->pairs == NULL, WAIT_MS);
}

/* ------------------------------------------------------------ visitor */

typedef struct visitor {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  char sent[64], got[64];
  size_t sent_len, got_len;
  int err, done, closed, connected;
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
  v->connected = 1;
  uv_buf_t b = uv_buf_init(v->sent, (unsigned)v->sent_len);
  v->wreq.data = v;
  if (uv_write(&v->wreq, (uv_stream_t *)&v->tcp, &b, 1, vis_written) != 0 ||
      uv_read_start((uv_stream_t *)&v->tcp, vis_alloc, vis_read) != 0)
    v->err = UV_EIO;
}

/* A visitor at `port`: 1 when its bytes came back, else 0 with *err. */
static int try_round_trip(ctx *c, uint16_t port, int *err) {
  visitor v;
  memset(&v, 0, sizeof v);
  v.sent_len = (size_t)snprintf(v.sent, sizeof v.sent, "visitor:%u:%08x",
                                (unsigned)port, (unsigned)it_random32());
  uv_tcp_init(&c->loop, &v.tcp);
  v.tcp.data = v.creq.data = &v;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  int rc = uv_tcp_connect(&v.creq, &v.tcp, (struct sockaddr *)&a,
                          vis_connected);
  if (rc == 0)
    IT_WAIT(&c->w, v.done || v.err, WAIT_MS);
  uv_close((uv_handle_t *)&v.tcp, vis_closed);
  IT_WAIT(&c->w, v.closed, WAIT_MS);
  *err = rc ? rc : v.err;
  return v.done && v.got_len == v.sent_len &&
         memcmp(v.got, v.sent, v.sent_len) == 0;
}

static void round_trip(ctx *c, uint16_t port, const char *label) {
  int err = 0;
  if (!try_round_trip(c, port, &err))
    fail_msg("%s: no echo through port %u (%s)", label, (unsigned)port,
             err ? uv_strerror(err) : "wrong bytes");
}

/* ------------------------------------------------------------- clients */

typedef struct cli {
  ctx *c;
  tunnel_client *cl;
  tunnel_proxy *px;
  memstat mem;
  uint16_t want_port, pub_port;
  int registered; /* status 0 reports of the proxy */
  int refused, again, last_px_status;
  int events[8];
  int last_event, last_status;
  uint64_t t_lost, t_logged_in, t_registered;
  int closed;
} cli;

static void on_event(tunnel_client *cl, int32_t event, int32_t status,
                     uint32_t delay_ms, const char *msg, void *ud) {
  cli *x = ud;
  (void)cl, (void)delay_ms, (void)msg;
  if (event > 0 && event < 8)
    x->events[event]++;
  x->last_event = event;
  if (event == TUNNEL_EVENT_LOST) {
    x->last_status = status;
    x->t_lost = uv_now(&x->c->loop);
  }
  if (event == TUNNEL_EVENT_LOGGED_IN)
    x->t_logged_in = uv_now(&x->c->loop);
}

static void on_proxy(tunnel_proxy *p, int status, const char *msg, void *ud) {
  cli *x = ud;
  (void)p;
  x->last_px_status = status;
  if (status == TUNNEL_EAGAIN) {
    x->again++;
    return;
  }
  if (status) {
    x->refused++;
    return;
  }
  const char *colon = strrchr(msg, ':');
  x->pub_port = colon ? (uint16_t)atoi(colon + 1) : 0;
  x->registered++;
  x->t_registered = uv_now(&x->c->loop);
}

static void on_cli_closed(tunnel_client *cl, void *ud) {
  (void)cl;
  ((cli *)ud)->closed = 1;
}

/* A client with one TCP proxy to the echo service, connecting to `port`
 * (the server's, or the relay's). */
static void cli_start(ctx *c, cli *x, uint16_t port, int mux, int keepalive,
                      const char *name, uint16_t want) {
  memset(x, 0, sizeof *x);
  x->c = c;
  x->want_port = want;
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc, mem_free, &x->mem);
  tunnel_config_set_token(cfg, TOKEN);
  tunnel_config_set_tcp_mux(cfg, mux);
  tunnel_config_set_log(cfg, log_sink, TUNNEL_LOG_WARN, c);
  if (keepalive)
    assert_int_equal(
        tunnel_config_set_keepalive(cfg, KA_INTERVAL_MS, KA_TIMEOUT_MS), 0);
  assert_int_equal(tunnel_client_new(&x->cl, &c->loop, cfg), 0);
  tunnel_config_free(cfg);
  tunnel_client_set_event_cb(x->cl, on_event, x);
  assert_int_equal(tunnel_proxy_new(&x->px, x->cl, name, TUNNEL_PROXY_TCP),
                   0);
  assert_int_equal(tunnel_proxy_set_local(x->px, "127.0.0.1", c->svc.port), 0);
  assert_int_equal(tunnel_proxy_set_remote_port(x->px, x->want_port), 0);
  tunnel_proxy_set_status_cb(x->px, on_proxy, x);
  assert_int_equal(tunnel_proxy_start(x->px), 0);
  assert_int_equal(tunnel_client_connect(x->cl, "127.0.0.1", port), 0);
}

static void cli_stop(ctx *c, cli *x) {
  if (!x->cl || x->closed)
    return;
  assert_int_equal(tunnel_client_close(x->cl, on_cli_closed, x), 0);
  IT_WAIT(&c->w, x->closed, WAIT_MS);
  x->cl = NULL;
  if (x->mem.cur)
    fail_msg("a closed client still holds %zu bytes", x->mem.cur);
}

/* ------------------------------------------------------------ fixture */

static ctx *setup(void) {
  ctx *c = calloc(1, sizeof *c);
  assert_non_null(c);
  assert_int_equal(uv_loop_init(&c->loop), 0);
  it_waiter_init(&c->w, &c->loop);
  it_pick_range(&c->lo, &c->hi);
  it_echo_init(&c->svc, &c->loop);
  it_echo_set_window(&c->svc, 0, 1);
  it_echo_listen(&c->svc, 0);
  server_start(c);
  return c;
}

static void teardown(ctx *c) {
  relay_close(c);
  server_stop(c);
  it_echo_close(&c->svc, &c->w);
  int rc = it_waiter_finish(&c->w, WAIT_MS);
  if (rc)
    fail_msg("handles left open at the end: %s", uv_strerror(rc));
  if (c->srv_mem.cur)
    fail_msg("the server left %zu bytes allocated", c->srv_mem.cur);
  free(c);
}

/* n distinct free ports of the server's range, for the clients to ask. */
static void pick_ports(ctx *c, cli *xs, int n) {
  uint16_t p = c->lo;
  for (int i = 0; i < n; i++) {
    while (p <= c->hi && !it_port_free(p))
      p++;
    assert_true(p <= c->hi);
    xs[i].want_port = p++;
  }
}

static int all_registered(cli *xs, int n, int times) {
  for (int i = 0; i < n; i++)
    if (xs[i].registered < times)
      return 0;
  return 1;
}

/* ------------------------------------------------------------- restart */

static void run_restart(int n, int mux) {
  ctx *c = setup();
  cli *xs = calloc((size_t)n, sizeof *xs);
  assert_non_null(xs);
  uint16_t *want = calloc((size_t)n, sizeof *want);
  assert_non_null(want);
  pick_ports(c, xs, n);
  for (int i = 0; i < n; i++)
    want[i] = xs[i].want_port;
  for (int i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof name, "restart-%d", i);
    cli_start(c, &xs[i], c->ctl_port, mux, 0, name, want[i]);
  }
  IT_WAIT(&c->w, all_registered(xs, n, 1), WAIT_MS + (unsigned)n * 50u);
  for (int i = 0; i < n; i++)
    assert_int_equal(xs[i].pub_port, want[i]);
  round_trip(c, xs[0].pub_port, "before the restart");

  server_stop(c);
  it_sleep(&c->w, DOWN_MS);
  uint64_t t_back = uv_now(&c->loop);
  server_start(c);
  IT_WAIT(&c->w, all_registered(xs, n, 2), WAIT_MS + (unsigned)n * 50u);
  uint64_t worst = 0;
  for (int i = 0; i < n; i++) {
    uint64_t took = xs[i].t_registered - t_back;
    if (took > worst)
      worst = took;
    assert_int_equal(xs[i].pub_port, want[i]);
    if (xs[i].events[TUNNEL_EVENT_LOST] < 1 ||
        xs[i].events[TUNNEL_EVENT_RETRYING] < 1 ||
        xs[i].events[TUNNEL_EVENT_LOGGED_IN] != 2 ||
        xs[i].events[TUNNEL_EVENT_CONNECTING] < 2 ||
        xs[i].events[TUNNEL_EVENT_GAVE_UP] != 0)
      fail_msg("client %d: events lost %d, retrying %d, connecting %d, "
               "logged in %d, gave up %d",
               i, xs[i].events[TUNNEL_EVENT_LOST],
               xs[i].events[TUNNEL_EVENT_RETRYING],
               xs[i].events[TUNNEL_EVENT_CONNECTING],
               xs[i].events[TUNNEL_EVENT_LOGGED_IN],
               xs[i].events[TUNNEL_EVENT_GAVE_UP]);
  }
  fprintf(stderr,
          "# %d %s client(s): the last back %llu ms after the server's "
          "return\n",
          n, mux ? "mux" : "non-mux", (unsigned long long)worst);
  if (worst > RESTART_MAX_MS)
    fail_msg("a client came back %llu ms after the server (limit %u ms)",
             (unsigned long long)worst, RESTART_MAX_MS);
  for (int i = 0; i < n; i++)
    round_trip(c, xs[i].pub_port, "after the restart");
  assert_int_equal(tunnel_server_client_count(c->srv), (uint32_t)n);
  for (int i = 0; i < n; i++)
    cli_stop(c, &xs[i]);
  free(want);
  free(xs);
  teardown(c);
}

static void test_restart_mux(void **state) {
  (void)state;
  run_restart(3, 1);
}

static void test_restart_nomux(void **state) {
  (void)state;
  run_restart(3, 0);
}

static void test_restart_200(void **state) {
  (void)state;
  /* 200 clients, their sessions on the server, 200 public listeners. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 2048) {
    rl.rlim_cur = rl.rlim_max < 2048 ? rl.rlim_max : 2048;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  run_restart(MANY, 1);
}

/* --------------------------------------------------------------- stale */

static void run_stale(int mux) {
  ctx *c = setup();
  relay_open(c);
  cli x;
  cli_start(c, &x, c->relay_port, mux, 1, "stale", 0);
  IT_WAIT(&c->w, x.registered == 1, WAIT_MS);
  uint16_t port = x.pub_port;
  round_trip(c, port, "before the stall");

  uint64_t t_stall = uv_now(&c->loop);
  relay_pause_all(c);
  IT_WAIT(&c->w, x.events[TUNNEL_EVENT_LOST] == 1,
          STALL_NOTICE_MAX_MS + 2000u);
  uint64_t noticed = x.t_lost - t_stall;
  fprintf(stderr, "# stalled link noticed after %llu ms (%s)\n",
          (unsigned long long)noticed, tunnel_strerror(x.last_status));
  assert_int_equal(x.last_status, TUNNEL_ETIMEDOUT);
  if (noticed < KA_TIMEOUT_MS - 50u || noticed > STALL_NOTICE_MAX_MS)
    fail_msg("stall noticed after %llu ms; expected %u..%u",
             (unsigned long long)noticed, KA_TIMEOUT_MS, STALL_NOTICE_MAX_MS);
  /* The server still holds the old session (its own timeout is 90 s);
   * the client's new login with the same run id takes it over. */
  assert_int_equal(tunnel_server_client_count(c->srv), 1);
  IT_WAIT(&c->w, x.registered == 2 || x.refused, WAIT_MS);
  if (x.refused || x.again)
    fail_msg("the port was refused after reconnecting (status %s)",
             tunnel_strerror(x.last_px_status));
  uint64_t back = x.t_registered - x.t_logged_in;
  fprintf(stderr, "# port back %llu ms after the new login\n",
          (unsigned long long)back);
  assert_true(back < 1000);
  assert_int_equal(x.pub_port, port);
  assert_int_equal(tunnel_server_client_count(c->srv), 1);
  round_trip(c, port, "after the reconnection");

  /* Another client (its own run id) cannot take the port. */
  cli y;
  cli_start(c, &y, c->ctl_port, mux, 0, "intruder", port);
  IT_WAIT(&c->w, y.refused || y.registered, WAIT_MS);
  assert_int_equal(y.registered, 0);
  assert_int_equal(y.last_px_status, TUNNEL_EREFUSED);
  round_trip(c, port, "after the intruder");
  cli_stop(c, &y);
  cli_stop(c, &x);
  teardown(c);
}

static void test_stale_mux(void **state) {
  (void)state;
  run_stale(1);
}

static void test_stale_nomux(void **state) {
  (void)state;
  run_stale(0);
}

/* ---------------------------------------------------- spawned client */

/* The port of the "tcp://HOST:PORT" line, 0 until there is one. */
static uint16_t printed_port(const it_proc *p) {
  const char *s = strstr(p->obuf, "tcp://");
  const char *nl = s ? strchr(s, '\n') : NULL;
  const char *colon = nl ? memrchr(s, ':', (size_t)(nl - s)) : NULL;
  return colon ? (uint16_t)atoi(colon + 1) : 0;
}

static void spawn_proxy_client(ctx *c, it_proc *p, uint16_t want,
                               const char *drain_ms) {
  char server[32], local[32], remote[16];
  snprintf(server, sizeof server, "127.0.0.1:%u", c->ctl_port);
  snprintf(local, sizeof local, "127.0.0.1:%u", c->svc.port);
  snprintf(remote, sizeof remote, "%u", want);
  char *args[] = {(char *)g_client, "--server", server, "--token", TOKEN,
                  "--drain-ms", (char *)drain_ms, "tcp", local,
                  "--remote-port", remote, NULL};
  /* Its stderr to the test's; its stdout tells the public address. */
  it_proc_spawn(p, &c->loop, args, NULL, 1);
  IT_WAIT(&c->w, printed_port(p) != 0 || p->exited, WAIT_MS);
  if (p->exited)
    fail_msg("tunnel-client exited before printing its address");
  assert_int_equal(printed_port(p), want);
}

/* ------------------------------------------------------------- sigkill */

static void test_sigkill(void **state) {
  (void)state;
  ctx *c = setup();
  cli tmp[1];
  pick_ports(c, tmp, 1);
  uint16_t want = tmp[0].want_port;
  it_proc p;
  spawn_proxy_client(c, &p, want, "0");
  round_trip(c, want, "through the spawned client");
  uint64_t t0 = uv_now(&c->loop);
  assert_int_equal(uv_process_kill(&p.h, SIGKILL), 0);
  IT_WAIT(&c->w, p.exited, WAIT_MS);
  /* The kernel closes the dead client's connection: the server frees the
   * port at once. */
  IT_WAIT(&c->w, tunnel_server_client_count(c->srv) == 0, 1000);
  cli x;
  cli_start(c, &x, c->ctl_port, 1, 0, "successor", want);
  IT_WAIT(&c->w, x.registered || x.refused, WAIT_MS);
  uint64_t took = x.t_registered - t0;
  fprintf(stderr, "# port %u taken by another client %llu ms after SIGKILL\n",
          (unsigned)want, (unsigned long long)took);
  assert_int_equal(x.refused, 0);
  assert_int_equal(x.pub_port, want);
  assert_true(took <= 1000);
  round_trip(c, want, "through the successor");
  cli_stop(c, &x);
  it_proc_stop(&p, &c->w);
  teardown(c);
}

/* ----------------------------------------------------- service restart */

static void test_service_restart(void **state) {
  (void)state;
  ctx *c = setup();
  cli x;
  cli_start(c, &x, c->ctl_port, 1, 0, "svc", 0);
  IT_WAIT(&c->w, x.registered == 1, WAIT_MS);
  round_trip(c, x.pub_port, "service up");
  it_echo_close(&c->svc, &c->w);
  int err = 0;
  assert_false(try_round_trip(c, x.pub_port, &err));
  it_echo_listen(&c->svc, c->svc.port); /* the same port */
  round_trip(c, x.pub_port, "service back");
  assert_int_equal(x.events[TUNNEL_EVENT_LOST], 0);
  cli_stop(c, &x);
  teardown(c);
}

/* --------------------------------------------------------------- drain */

typedef struct bulk {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  uv_shutdown_t sreq;
  size_t sent, got, bad_at;
  int err, eof, closed, writing, connected, bad;
  char wbuf[65536], rbuf[65536];
} bulk;

static uint8_t pattern(size_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

static void bulk_closed(uv_handle_t *h) { ((bulk *)h->data)->closed = 1; }

static void bulk_write_more(bulk *b);

static void bulk_written(uv_write_t *req, int status) {
  bulk *b = req->data;
  b->writing = 0;
  if (status < 0) {
    b->err = status;
    return;
  }
  bulk_write_more(b);
}

/* One 64 KiB write at a time, ahead of what came back by at most 4 MiB:
 * the echo keeps data queued in both directions all along. */
static void bulk_write_more(bulk *b) {
  if (b->writing || b->err || b->sent >= DRAIN_BYTES)
    return;
  if (b->sent - b->got > 4u * 1024u * 1024u)
    return;
  size_t n = DRAIN_BYTES - b->sent < sizeof b->wbuf ? DRAIN_BYTES - b->sent
                                                    : sizeof b->wbuf;
  for (size_t i = 0; i < n; i++)
    b->wbuf[i] = (char)pattern(b->sent + i);
  uv_buf_t buf = uv_buf_init(b->wbuf, (unsigned)n);
  b->wreq.data = b;
  if (uv_write(&b->wreq, (uv_stream_t *)&b->tcp, &buf, 1, bulk_written)) {
    b->err = UV_EIO;
    return;
  }
  b->writing = 1;
  b->sent += n;
  if (b->sent == DRAIN_BYTES) {
    b->sreq.data = b;
    uv_shutdown(&b->sreq, (uv_stream_t *)&b->tcp, NULL);
  }
}

static void bulk_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  bulk *b = h->data;
  (void)hint;
  *buf = uv_buf_init(b->rbuf, sizeof b->rbuf);
}

static void bulk_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  bulk *b = s->data;
  if (n == UV_EOF) {
    b->eof = 1;
    return;
  }
  if (n < 0) {
    b->err = (int)n;
    return;
  }
  for (ssize_t i = 0; i < n && !b->bad; i++)
    if ((uint8_t)buf->base[i] != pattern(b->got + (size_t)i)) {
      b->bad = 1;
      b->bad_at = b->got + (size_t)i;
    }
  b->got += (size_t)n;
  bulk_write_more(b);
}

static void bulk_connected(uv_connect_t *req, int status) {
  bulk *b = req->data;
  if (status < 0) {
    b->err = status;
    return;
  }
  b->connected = 1;
  uv_read_start((uv_stream_t *)&b->tcp, bulk_alloc, bulk_read);
  bulk_write_more(b);
}

static void test_drain(void **state) {
  (void)state;
  ctx *c = setup();
  cli tmp[1];
  pick_ports(c, tmp, 1);
  uint16_t want = tmp[0].want_port;
  it_proc p;
  spawn_proxy_client(c, &p, want, "30000");
  bulk *b = calloc(1, sizeof *b);
  assert_non_null(b);
  uv_tcp_init(&c->loop, &b->tcp);
  b->tcp.data = b->creq.data = b;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", want, &a);
  assert_int_equal(
      uv_tcp_connect(&b->creq, &b->tcp, (struct sockaddr *)&a, bulk_connected),
      0);
  IT_WAIT(&c->w, b->got >= 8u * 1024u * 1024u || b->err, WAIT_MS);
  assert_int_equal(b->err, 0);
  uint64_t t_term = uv_now(&c->loop);
  size_t at_term = b->got;
  assert_int_equal(uv_process_kill(&p.h, SIGTERM), 0);
  /* The proxy is withdrawn at once: a new visitor is refused while the
   * transfer goes on. */
  it_sleep(&c->w, 300);
  int err = 0;
  assert_false(try_round_trip(c, want, &err));
  IT_WAIT(&c->w, b->eof || b->err || b->bad, 60000);
  fprintf(stderr,
          "# %zu of %u bytes back at SIGTERM; all back %llu ms later; new "
          "visitor: %s\n",
          at_term, DRAIN_BYTES,
          (unsigned long long)(uv_now(&c->loop) - t_term), uv_strerror(err));
  if (b->bad)
    fail_msg("byte %zu came back wrong", b->bad_at);
  assert_int_equal(b->err, 0);
  assert_int_equal(b->got, DRAIN_BYTES);
  uv_close((uv_handle_t *)&b->tcp, bulk_closed);
  IT_WAIT(&c->w, b->closed, WAIT_MS);
  free(b);
  /* Nothing left to carry: the client exits now, well before its drain
   * time is up. */
  IT_WAIT(&c->w, p.exited, 5000);
  assert_int_equal(p.status, 0);
  assert_int_equal(p.sig, 0);
  it_proc_stop(&p, &c->w);
  teardown(c);
}

/* -------------------------------------------------------------- cycles */

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  if (!d)
    return -1;
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

static void test_cycles(void **state) {
  (void)state;
  ctx *c = setup();
  cli tmp[1];
  pick_ports(c, tmp, 1);
  size_t mem_warm = 0;
  int fds_warm = 0;
  for (int i = 0; i < CYCLES; i++) {
    cli x;
    cli_start(c, &x, c->ctl_port, i % 2 == 0, 0, "cycle", tmp[0].want_port);
    IT_WAIT(&c->w, x.registered || x.refused, WAIT_MS);
    if (x.refused)
      fail_msg("cycle %d: the port was refused", i);
    cli_stop(c, &x);
    IT_WAIT(&c->w, tunnel_server_client_count(c->srv) == 0, WAIT_MS);
    it_sleep(&c->w, 0);
    if (i == CYCLES / 10) {
      mem_warm = c->srv_mem.cur;
      fds_warm = count_fds();
    }
  }
  /* The last session's handles finish closing. */
  it_sleep(&c->w, 50);
  size_t mem_end = c->srv_mem.cur;
  int fds_end = count_fds();
  fprintf(stderr,
          "# after %d cycles: server memory %zu bytes (%zu at cycle %d), "
          "fds %d (%d)\n",
          CYCLES, mem_end, mem_warm, CYCLES / 10, fds_end, fds_warm);
  assert_true(mem_end <= mem_warm + 4096);
  assert_true(fds_end <= fds_warm);
  teardown(c);
}

/* -------------------------------------------------------------- emfile */

/* A visitor that stays connected for several exchanges. */
typedef struct pvis {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  char sent[32], got[32];
  size_t sent_len, got_len;
  int err, connected, closed;
} pvis;

static void pv_closed(uv_handle_t *h) { ((pvis *)h->data)->closed = 1; }

static void pv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  pvis *v = h->data;
  (void)hint;
  *b = uv_buf_init(v->got + v->got_len, (unsigned)(sizeof v->got - v->got_len));
}

static void pv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  pvis *v = s->data;
  (void)b;
  if (n < 0)
    v->err = (int)n;
  else
    v->got_len += (size_t)n;
}

static void pv_connected(uv_connect_t *req, int status) {
  pvis *v = req->data;
  if (status < 0) {
    v->err = status;
    return;
  }
  v->connected = 1;
  uv_read_start((uv_stream_t *)&v->tcp, pv_alloc, pv_read);
}

static void pv_open(ctx *c, pvis *v, uint16_t port) {
  memset(v, 0, sizeof *v);
  uv_tcp_init(&c->loop, &v->tcp);
  v->tcp.data = v->creq.data = v;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  assert_int_equal(
      uv_tcp_connect(&v->creq, &v->tcp, (struct sockaddr *)&a, pv_connected),
      0);
  IT_WAIT(&c->w, v->connected || v->err, WAIT_MS);
}

/* One exchange on an open visitor: 1 when the bytes came back. */
static int pv_echo(ctx *c, pvis *v, const char *what) {
  if (!v->connected || v->err)
    return 0;
  v->sent_len = (size_t)snprintf(v->sent, sizeof v->sent, "%s", what);
  v->got_len = 0;
  uv_buf_t b = uv_buf_init(v->sent, (unsigned)v->sent_len);
  if (uv_write(&v->wreq, (uv_stream_t *)&v->tcp, &b, 1, NULL) != 0)
    return 0;
  it_waiter_arm(&c->w, 3000);
  while (v->got_len < v->sent_len && !v->err && !c->w.fired)
    uv_run(&c->loop, UV_RUN_ONCE);
  it_waiter_disarm(&c->w);
  return v->got_len == v->sent_len &&
         memcmp(v->got, v->sent, v->sent_len) == 0;
}

static void pv_close(ctx *c, pvis *v) {
  uv_close((uv_handle_t *)&v->tcp, pv_closed);
  IT_WAIT(&c->w, v->closed, WAIT_MS);
}

static void test_emfile(void **state) {
  (void)state;
  ctx *c = setup();
  cli x;
  cli_start(c, &x, c->ctl_port, 1, 0, "fd", 0);
  IT_WAIT(&c->w, x.registered == 1, WAIT_MS);
  pvis v1;
  pv_open(c, &v1, x.pub_port);
  assert_true(pv_echo(c, &v1, "before"));
  /* The process runs out of descriptors: a low limit, then filled. */
  struct rlimit old, low;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = (rlim_t)count_fds() + 16;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
  int fill[64], nfill = 0;
  while (nfill < 64) {
    int fd = dup(0);
    if (fd < 0)
      break;
    fill[nfill++] = fd;
  }
  assert_true(nfill > 0 && nfill < 64);
  /* One descriptor for a new visitor's own socket: the server has none
   * left to accept it with (libuv accepts and closes it at once with a
   * descriptor it keeps in reserve), and the visitor is refused. */
  close(fill[--nfill]);
  pvis v2;
  pv_open(c, &v2, x.pub_port);
  int refused_srv = !pv_echo(c, &v2, "server out of fds");
  pv_close(c, &v2);
  /* Two: the visitor's and the server's; the client has none left to
   * reach the local service with, says so and refuses the visitor. */
  close(fill[--nfill]);
  pvis v3;
  pv_open(c, &v3, x.pub_port);
  int refused_cli = !pv_echo(c, &v3, "client out of fds");
  pv_close(c, &v3);
  /* What exists goes on meanwhile. */
  int v1_ok = pv_echo(c, &v1, "during");
  while (nfill)
    close(fill[--nfill]);
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
  fprintf(stderr,
          "# out of descriptors: new visitor %s by the server, %s by the "
          "client (%d log line(s)); the joined visitor %s\n",
          refused_srv ? "refused" : "SERVED",
          refused_cli ? "refused" : "SERVED", c->fd_warnings,
          v1_ok ? "went on" : "was CUT");
  assert_true(refused_srv);
  assert_true(refused_cli);
  assert_true(c->fd_warnings >= 1);
  assert_true(v1_ok);
  /* Descriptors back: new visitors are served again. */
  assert_true(pv_echo(c, &v1, "after"));
  round_trip(c, x.pub_port, "after the shortage");
  assert_int_equal(x.events[TUNNEL_EVENT_LOST], 0);
  pv_close(c, &v1);
  cli_stop(c, &x);
  teardown(c);
}

/* ----------------------------------------------------------------- main */

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s TUNNEL_CLIENT CASE\n", argv[0]);
    return 2;
  }
  g_client = argv[1];
  signal(SIGPIPE, SIG_IGN);
  it_proc_guard();
  static const struct {
    const char *name;
    struct CMUnitTest t;
  } cases[] = {
      {"restart-mux", cmocka_unit_test(test_restart_mux)},
      {"restart-nomux", cmocka_unit_test(test_restart_nomux)},
      {"restart-200", cmocka_unit_test(test_restart_200)},
      {"stale-mux", cmocka_unit_test(test_stale_mux)},
      {"stale-nomux", cmocka_unit_test(test_stale_nomux)},
      {"sigkill", cmocka_unit_test(test_sigkill)},
      {"service-restart", cmocka_unit_test(test_service_restart)},
      {"drain", cmocka_unit_test(test_drain)},
      {"cycles", cmocka_unit_test(test_cycles)},
      {"emfile", cmocka_unit_test(test_emfile)},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (strcmp(argv[2], cases[i].name) != 0)
      continue;
    struct CMUnitTest t[1] = {cases[i].t};
    return _cmocka_run_group_tests(cases[i].name, t, 1, NULL, NULL);
  }
  fprintf(stderr, "no case named %s\n", argv[2]);
  return 2;
}
