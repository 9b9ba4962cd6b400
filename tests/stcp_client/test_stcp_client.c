/* Secret services (stcp) end to end on the client side, through the public
 * API over real loopback sockets: a server, a client serving a secret
 * service and a client visiting it, all on one uv loop in this process.
 *   visitor-mux, visitor-nomux  a tunnel_visitor's local port carries
 *       echoes, 32 MiB each way with checksums, half-closes both ways and
 *       visitors side by side; everything the clients allocated is
 *       returned at the end;
 *   dial-mux, dial-nomux  tunnel_client_dial with no local port on either
 *       end (the service takes its visitors with an accept callback): the
 *       callback never fires inside the call, a dial made before the login
 *       waits for it, bytes and half-closes cross both ways;
 *   refused-mux, refused-nomux  a wrong secret and an unknown name are
 *       refused with the server's reason while a visit already open and
 *       new good ones go on; a visitor with the wrong secret closes its
 *       local connections;
 *   reconnect  the service's client loses its connection (a relay between
 *       it and the server drops everything) and logs in again by itself:
 *       the visitor's port carries echoes again;
 *   frps-mux, frps-nomux, server-frpc  stock frp 0.46.1 from PEERS_DIR on
 *       the other side: our service visited by a stock frpc visitor, a
 *       stock frpc's service visited by our visitor and our dial (8 MiB
 *       each way, checksummed), a wrong secret refused with the server's
 *       reason, through a stock frps (both modes) and through our server.
 *       Processes are spawned and stopped by PID; exits 77 (skipped) when
 *       PEERS_DIR/frpc is absent;
 *   cli  tunnel-server and tunnel-client as processes: `stcp` prints
 *       stcp://NAME, `visit` (and visitors of INI and JSON files) print
 *       tcp://HOST:PORT, and each port carries an echo to the service;
 *       a secret from a file; missing options refused.
 *
 * Usage: test-stcp-client CASE [PEERS_DIR [TUNNEL_SERVER TUNNEL_CLIENT]].
 * IT_LOG=0..3 shows library log lines. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include <tunnel/uv.h>

#include "it_common.h"
#include "it_data.h"
#include "it_echo.h"
#include "it_proc.h"

#define TOKEN "stcp-client-token"
#define SK "the-service-secret"
#define NAME "secret-echo"
#define WAIT_MS 15000u
#define BIG (32u << 20)
#define CHUNK (64u * 1024u)
#define INFLIGHT (1u << 20)

static int g_log = TUNNEL_LOG_WARN;
static const char *g_peers = "../shared/peers";
static const char *g_server_exe, *g_client_exe;

static void log_sink(int level, const char *msg, void *ud) {
  fprintf(stderr, "# [%s] %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

/* ------------------------------------------------------------ fixture */

typedef struct ctx ctx;

typedef struct cl {
  ctx *x;
  tunnel_client *c;
  int logins, state;
  int closed;
} cl;

struct ctx {
  uv_loop_t loop;
  it_waiter w;
  memstat mem;
  tunnel_server *srv;
  uint16_t srv_port;
  int srv_closed;
  cl svc, vis;
  tunnel_proxy *proxy;
  int proxy_status, proxy_calls;
  char proxy_msg[256];
  /* The local echo service, for tunnel_visitor cases. */
  it_echo echo;
  /* A relay between the service's client and the server. */
  uv_tcp_t relay;
  uint16_t relay_port;
  struct relay_pair *pairs;
  uint8_t rbuf[CHUNK];
};

static ctx *X;

#define WAIT(cond) IT_WAIT(&X->w, cond, WAIT_MS)

static void on_state(tunnel_client *c, int status, const char *msg, void *ud) {
  cl *k = ud;
  (void)c, (void)msg;
  k->state = status;
  if (status == 0)
    k->logins++;
}

static void client_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((cl *)ud)->closed = 1;
}

static tunnel_config *config(const char *who, int mux) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &X->mem),
                   0);
  assert_int_equal(
      tunnel_config_set_log(cfg, log_sink, g_log, (void *)(uintptr_t)who), 0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, mux), 0);
  assert_int_equal(tunnel_config_set_reconnect(cfg, 1, 100, 500, 0), 0);
  return cfg;
}

/* The loop and the waiter, no server. */
static void fixture_loop(ctx *x) {
  memset(x, 0, sizeof *x);
  X = x;
  assert_int_equal(uv_loop_init(&x->loop), 0);
  it_waiter_init(&x->w, &x->loop);
}

static void fixture_init(ctx *x) {
  fixture_loop(x);
  tunnel_config *cfg = config("server", 1);
  /* Refused visitors cost attempts: the cases make several. */
  assert_int_equal(tunnel_config_set_login_limits(cfg, 0, 60000), 0);
  assert_int_equal(tunnel_server_new(&x->srv, &x->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(x->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(x->srv, &x->srv_port), 0);
}

static void client_start(cl *k, const char *who, int mux, uint16_t port) {
  k->x = X;
  tunnel_config *cfg = config(who, mux);
  assert_int_equal(tunnel_client_new(&k->c, &X->loop, cfg), 0);
  tunnel_config_free(cfg);
  tunnel_client_set_state_cb(k->c, on_state, k);
  assert_int_equal(tunnel_client_connect(k->c, "127.0.0.1", port), 0);
}

static void on_proxy_status(tunnel_proxy *p, int status, const char *msg,
                            void *ud) {
  ctx *x = ud;
  (void)p;
  x->proxy_status = status;
  x->proxy_calls++;
  snprintf(x->proxy_msg, sizeof x->proxy_msg, "%s", msg);
}

/* The secret service on the service's client: to the local echo port, or
 * to the accept callback. */
static void service_start(tunnel_proxy_accept_cb accept) {
  assert_int_equal(
      tunnel_proxy_new(&X->proxy, X->svc.c, NAME, TUNNEL_PROXY_STCP), 0);
  /* Without its secret a secret service does not start. */
  assert_int_equal(tunnel_proxy_set_local(X->proxy, "127.0.0.1",
                                          X->echo.port ? X->echo.port : 9),
                   0);
  assert_int_equal(tunnel_proxy_start(X->proxy), TUNNEL_EINVAL);
  assert_int_equal(tunnel_proxy_set_remote_port(X->proxy, 1000),
                   TUNNEL_ENOTSUP);
  assert_int_equal(tunnel_proxy_set_secret(X->proxy, ""), TUNNEL_EINVAL);
  assert_int_equal(tunnel_proxy_set_secret(X->proxy, SK), 0);
  if (accept) {
    /* Visitors to the program: no local service. */
    tunnel_proxy_close(X->proxy);
    assert_int_equal(
        tunnel_proxy_new(&X->proxy, X->svc.c, NAME, TUNNEL_PROXY_STCP), 0);
    assert_int_equal(tunnel_proxy_set_secret(X->proxy, SK), 0);
    assert_int_equal(tunnel_proxy_set_accept_cb(X->proxy, accept, X), 0);
  }
  tunnel_proxy_set_status_cb(X->proxy, on_proxy_status, X);
  assert_int_equal(tunnel_proxy_start(X->proxy), 0);
  assert_int_equal(tunnel_proxy_set_secret(X->proxy, "late"), TUNNEL_ESTATE);
  WAIT(X->proxy_calls > 0);
  assert_int_equal(X->proxy_status, 0);
  assert_string_equal(X->proxy_msg, NAME); /* no address: its name */
}

static void fixture_finish(void) {
  if (X->svc.c)
    tunnel_client_close(X->svc.c, client_closed, &X->svc);
  if (X->vis.c)
    tunnel_client_close(X->vis.c, client_closed, &X->vis);
  WAIT((!X->svc.c || X->svc.closed) && (!X->vis.c || X->vis.closed));
  if (X->srv)
    tunnel_server_close(X->srv, NULL, NULL);
  it_echo_close(&X->echo, &X->w);
  if (X->relay_port)
    uv_close((uv_handle_t *)&X->relay, NULL);
  assert_int_equal(it_waiter_finish(&X->w, WAIT_MS), 0);
  /* Everything the library allocated came back. */
  assert_int_equal(X->mem.cur, 0);
}

static uint16_t listen_on(uv_tcp_t *t, uv_connection_cb cb) {
  uv_tcp_init(&X->loop, t);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(t, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)t, 64, cb), 0);
  int alen = sizeof a;
  assert_int_equal(uv_tcp_getsockname(t, (struct sockaddr *)&a, &alen), 0);
  return ntohs(a.sin_port);
}

/* Reading pauses past INFLIGHT queued, as the transfers' own windows. */
static void echo_start(void) {
  it_echo_init(&X->echo, &X->loop);
  it_echo_set_window(&X->echo, INFLIGHT, INFLIGHT / 2);
  it_echo_listen(&X->echo, 0);
}

/* ---------------------------------------------- users of a local port */

/* Connects to a visitor's port, sends `total` bytes of stream `seed` (its
 * write queue kept short), half-closes, hashes what comes back. */
typedef struct xfer {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  uint32_t seed;
  size_t total, sent, queued, rx;
  uint64_t want, got;
  int connected, failed, eof, closed, shut;
  uint64_t t0, t1;
} xfer;

/* A stock frp peer ends a joined connection as soon as either side
 * half-closes: transfers through one end only after everything came
 * back. */
static int g_keep_open;

typedef struct xfer_w {
  uv_write_t req;
  xfer *x;
  size_t n;
  uint8_t data[];
} xfer_w;

static void xfer_pump(xfer *x);

static void xfer_closed(uv_handle_t *h) { ((xfer *)h->data)->closed = 1; }

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

static void xfer_shut_cb(uv_shutdown_t *r, int status) {
  (void)r, (void)status;
}

static void xfer_pump(xfer *x) {
  while (x->sent < x->total && x->queued < INFLIGHT &&
         !uv_is_closing((uv_handle_t *)&x->tcp)) {
    size_t n = x->total - x->sent < CHUNK ? x->total - x->sent : CHUNK;
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
  if (x->sent == x->total && !x->shut && !g_keep_open &&
      !uv_is_closing((uv_handle_t *)&x->tcp)) {
    x->shut = 1;
    uv_shutdown(&x->sreq, (uv_stream_t *)&x->tcp, xfer_shut_cb);
  }
}

static void xfer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  *b = uv_buf_init((char *)X->rbuf, sizeof X->rbuf);
}

static void xfer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  xfer *x = s->data;
  if (n < 0) {
    x->eof = 1;
    x->t1 = uv_hrtime();
    uv_read_stop(s);
    return;
  }
  x->got = fnv1a(x->got, (const uint8_t *)b->base, (size_t)n);
  x->rx += (size_t)n;
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

static xfer *xfer_start(uint16_t port, uint32_t seed, size_t total) {
  xfer *x = calloc(1, sizeof *x);
  assert_non_null(x);
  x->seed = seed;
  x->total = total;
  x->want = x->got = FNV_OFFSET;
  uv_tcp_init(&X->loop, &x->tcp);
  x->tcp.data = x;
  x->creq.data = x;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  assert_int_equal(
      uv_tcp_connect(&x->creq, &x->tcp, (struct sockaddr *)&a, xfer_connected),
      0);
  return x;
}

/* Until the peer ended (EOF or failure). 1 when everything came back
 * whole and then the end (the half-close crossed both ways). */
static int xfer_wait(xfer *x, uint32_t ms) {
  it_waiter_arm(&X->w, ms);
  while (!X->w.fired && !x->closed && !x->eof &&
         !(g_keep_open && x->rx >= x->total))
    uv_run(&X->loop, UV_RUN_ONCE);
  it_waiter_disarm(&X->w);
  return (x->eof || g_keep_open) && x->rx == x->total && x->got == x->want;
}

static void xfer_free(xfer *x) {
  xfer_close(x);
  WAIT(x->closed);
  free(x);
}

static int try_echo(uint16_t port, uint32_t seed, size_t n) {
  xfer *x = xfer_start(port, seed, n);
  int ok = xfer_wait(x, 3000);
  xfer_free(x);
  return ok;
}

/* ------------------------------------------------ a visitor's local port */

static uint16_t visitor_open(tunnel_visitor **out, const char *name,
                             const char *secret) {
  tunnel_visitor *v;
  assert_int_equal(tunnel_visitor_new(&v, X->vis.c, name, secret), 0);
  uint16_t port = 0;
  assert_int_equal(tunnel_visitor_port(v, &port), TUNNEL_ESTATE);
  assert_int_equal(tunnel_visitor_listen(v, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_visitor_listen(v, "127.0.0.1", 0), TUNNEL_ESTATE);
  assert_int_equal(tunnel_visitor_port(v, &port), 0);
  assert_true(port != 0);
  *out = v;
  return port;
}

static void visitor_case(int mux) {
  ctx x;
  fixture_init(&x);
  echo_start();
  client_start(&x.svc, "service", mux, x.srv_port);
  client_start(&x.vis, "visitor", mux, x.srv_port);
  service_start(NULL);
  tunnel_visitor *v;
  uint16_t port = visitor_open(&v, NAME, SK);
  assert_true(try_echo(port, 1, 5));
  /* 32 MiB each way, checksummed; the half-close goes to the service and
   * its own comes back after the last byte. */
  xfer *big = xfer_start(port, 2, BIG);
  if (!xfer_wait(big, 45000))
    fail_msg("32 MiB: %zu bytes back, %s, checksum %s", big->rx,
             big->eof ? "ended" : "not ended",
             big->got == big->want ? "matches" : "differs");
  fprintf(stderr, "# %s: 32 MiB each way in %.2f s\n", mux ? "mux" : "no mux",
          (double)(big->t1 - big->t0) / 1e9);
  xfer_free(big);
  /* Side by side. */
  xfer *xs[6];
  for (uint32_t i = 0; i < 6; i++)
    xs[i] = xfer_start(port, 10 + i, (1u << 20) + i * 1000u);
  for (int i = 0; i < 6; i++) {
    if (!xfer_wait(xs[i], WAIT_MS))
      fail_msg("visitor %d: %zu bytes back", i, xs[i]->rx);
    xfer_free(xs[i]);
  }
  /* Nothing sent at all: the ends still cross. */
  assert_true(try_echo(port, 30, 0));
  assert_int_equal(tunnel_visitor_close(v), 0);
  fixture_finish();
}

static void test_visitor_mux(void **state) {
  (void)state;
  visitor_case(1);
}

static void test_visitor_nomux(void **state) {
  (void)state;
  visitor_case(0);
}

/* ---------------------------------------------------- in-process dials */

/* One end of a stream: writes `total` bytes of `seed` then half-closes;
 * hashes what it reads. `echo`: writes back what it reads instead, and
 * half-closes after the peer did. */
typedef struct sside {
  tunnel_stream *st;
  int echo;
  uint32_t seed;
  size_t total, sent, rx;
  uint64_t want, got;
  int eof, err, shut, closed, reading;
} sside;

static void sside_pump(sside *s);

static void sside_written(tunnel_stream *st, int status, void *ud) {
  sside *s = ud;
  (void)st;
  if (status == 0 && !s->closed)
    sside_pump(s);
}

static void sside_read(tunnel_stream *st, int status, const uint8_t *d,
                       size_t n, void *ud);

static void sside_pump(sside *s) {
  if (s->echo) {
    /* Reading resumes once the queue is short again. */
    if (!s->reading && !s->eof &&
        tunnel_stream_write_queue_size(s->st) < INFLIGHT / 2) {
      s->reading = 1;
      tunnel_stream_read_start(s->st, sside_read, s);
    }
    return;
  }
  uint8_t buf[CHUNK];
  while (s->sent < s->total &&
         tunnel_stream_write_queue_size(s->st) < INFLIGHT) {
    size_t n = s->total - s->sent < CHUNK ? s->total - s->sent : CHUNK;
    gen_fill(s->seed, s->sent, buf, n);
    s->want = fnv1a(s->want, buf, n);
    assert_int_equal(tunnel_stream_write(s->st, buf, n, sside_written, s), 0);
    s->sent += n;
  }
  if (s->sent == s->total && !s->shut) {
    s->shut = 1;
    assert_int_equal(tunnel_stream_shutdown(s->st, NULL, NULL), 0);
  }
}

static void sside_read(tunnel_stream *st, int status, const uint8_t *d,
                       size_t n, void *ud) {
  sside *s = ud;
  if (status == TUNNEL_EEOF) {
    s->eof = 1;
    if (s->echo && !s->shut) {
      s->shut = 1;
      tunnel_stream_shutdown(st, NULL, NULL);
    }
    return;
  }
  if (status < 0) {
    s->err = status;
    return;
  }
  s->got = fnv1a(s->got, d, n);
  s->rx += n;
  if (s->echo) {
    tunnel_stream_write(st, d, n, sside_written, s);
    if (tunnel_stream_write_queue_size(st) > INFLIGHT) {
      s->reading = 0;
      tunnel_stream_read_stop(st);
    }
  }
}

/* `keep_open`: no half-close after the bytes. */
static void sside_init(sside *s, tunnel_stream *st, int echo, uint32_t seed,
                       size_t total, int keep_open) {
  memset(s, 0, sizeof *s);
  s->shut = keep_open;
  s->st = st;
  s->echo = echo;
  s->seed = seed;
  s->total = total;
  s->want = s->got = FNV_OFFSET;
  s->reading = 1;
  tunnel_stream_set_user_data(st, s);
  assert_int_equal(tunnel_stream_read_start(st, sside_read, s), 0);
  sside_pump(s);
}

static void sside_closed(tunnel_stream *st, void *ud) {
  (void)st;
  ((sside *)ud)->closed = 1;
}

/* The service's visitors, taken in-process. */
static sside g_echoes[8];
static int g_naccepted;

static void on_accept(tunnel_proxy *p, tunnel_stream *st, void *ud) {
  (void)p, (void)ud;
  assert_true(g_naccepted < 8);
  sside_init(&g_echoes[g_naccepted++], st, 1, 0, 0, 0);
}

typedef struct dial {
  int calls, status;
  tunnel_stream *st;
  char msg[256];
  int in_call; /* set around tunnel_client_dial: no callback inside */
} dial;

static void on_dial(tunnel_client *c, int status, tunnel_stream *st,
                    const char *msg, void *ud) {
  dial *d = ud;
  (void)c;
  assert_false(d->in_call);
  d->calls++;
  d->status = status;
  d->st = st;
  snprintf(d->msg, sizeof d->msg, "%s", msg);
  if (status)
    assert_null(st);
}

static void do_dial(dial *d, const char *name, const char *secret) {
  memset(d, 0, sizeof *d);
  d->in_call = 1;
  assert_int_equal(tunnel_client_dial(X->vis.c, name, secret, on_dial, d), 0);
  d->in_call = 0;
  assert_int_equal(d->calls, 0);
}

static void echoes_close(void) {
  for (int i = 0; i < g_naccepted; i++)
    if (!g_echoes[i].closed)
      tunnel_stream_close(g_echoes[i].st, sside_closed, &g_echoes[i]);
  for (int i = 0; i < g_naccepted; i++)
    WAIT(g_echoes[i].closed);
  g_naccepted = 0;
}

static void dial_case(int mux) {
  ctx x;
  fixture_init(&x);
  g_naccepted = 0;
  client_start(&x.svc, "service", mux, x.srv_port);
  service_start(on_accept);
  client_start(&x.vis, "visitor", mux, x.srv_port);
  /* Not logged in yet: the dial waits for the login. */
  assert_int_equal(x.vis.logins, 0);
  dial d;
  assert_int_equal(tunnel_client_dial(x.vis.c, "", SK, on_dial, &d),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_client_dial(x.vis.c, NAME, "", on_dial, &d),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_client_dial(x.vis.c, NAME, SK, NULL, &d),
                   TUNNEL_EINVAL);
  do_dial(&d, NAME, SK);
  WAIT(d.calls == 1);
  assert_int_equal(d.status, 0);
  assert_non_null(d.st);
  assert_int_equal(x.vis.logins, 1);
  WAIT(g_naccepted == 1);
  /* 8 MiB each way through the service's echo, then the ends. */
  sside s;
  sside_init(&s, d.st, 0, 7, 8u << 20, 0);
  WAIT(s.eof || s.err);
  assert_int_equal(s.err, 0);
  assert_int_equal(s.rx, s.total);
  assert_true(s.got == s.want);
  WAIT(g_echoes[0].eof);
  assert_int_equal(g_echoes[0].rx, s.total);
  tunnel_stream_close(d.st, sside_closed, &s);
  WAIT(s.closed);
  /* Two more at once, one sending nothing. */
  dial d2, d3;
  do_dial(&d2, NAME, SK);
  do_dial(&d3, NAME, SK);
  WAIT(d2.calls && d3.calls);
  assert_int_equal(d2.status, 0);
  assert_int_equal(d3.status, 0);
  sside s2, s3;
  sside_init(&s2, d2.st, 0, 8, 100000, 0);
  sside_init(&s3, d3.st, 0, 9, 0, 0);
  WAIT((s2.eof || s2.err) && (s3.eof || s3.err));
  assert_true(s2.rx == s2.total && s2.got == s2.want && !s2.err);
  assert_true(s3.rx == 0 && !s3.err);
  tunnel_stream_close(d2.st, sside_closed, &s2);
  tunnel_stream_close(d3.st, sside_closed, &s3);
  WAIT(s2.closed && s3.closed);
  echoes_close();
  /* A dial pending when its client closes: canceled, from the loop. */
  dial d4;
  do_dial(&d4, NAME, SK);
  tunnel_client_close(x.vis.c, client_closed, &x.vis);
  assert_int_equal(d4.calls, 0);
  WAIT(d4.calls == 1);
  assert_int_equal(d4.status, TUNNEL_ECANCELED);
  WAIT(x.vis.closed);
  x.vis.c = NULL;
  fixture_finish();
}

static void test_dial_mux(void **state) {
  (void)state;
  dial_case(1);
}

static void test_dial_nomux(void **state) {
  (void)state;
  dial_case(0);
}

/* ------------------------------------------------------------ refusals */

static void refused_case(int mux) {
  ctx x;
  fixture_init(&x);
  g_naccepted = 0;
  client_start(&x.svc, "service", mux, x.srv_port);
  client_start(&x.vis, "visitor", mux, x.srv_port);
  service_start(on_accept);
  WAIT(x.vis.logins == 1);
  /* A visit open before the refusals. */
  dial ok;
  do_dial(&ok, NAME, SK);
  WAIT(ok.calls);
  assert_int_equal(ok.status, 0);
  sside s;
  sside_init(&s, ok.st, 0, 3, 0, 1);
  uint8_t hello[5] = {'h', 'e', 'l', 'l', 'o'};
  /* The service's echo is reached: bytes go both ways. */
  assert_int_equal(tunnel_stream_write(ok.st, hello, 5, NULL, NULL), 0);
  WAIT(s.rx == 5);
  dial bad, unknown, good;
  do_dial(&bad, NAME, "not-the-secret");
  do_dial(&unknown, "no-such-service", SK);
  do_dial(&good, NAME, SK);
  WAIT(bad.calls && unknown.calls && good.calls);
  assert_int_equal(bad.status, TUNNEL_EREFUSED);
  if (!strstr(bad.msg, "auth failed"))
    fail_msg("wrong secret refused with \"%s\"", bad.msg);
  assert_int_equal(unknown.status, TUNNEL_EREFUSED);
  if (!strstr(unknown.msg, "doesn't exist"))
    fail_msg("unknown name refused with \"%s\"", unknown.msg);
  assert_int_equal(good.status, 0);
  /* The open one goes on. */
  assert_int_equal(tunnel_stream_write(ok.st, hello, 5, NULL, NULL), 0);
  WAIT(s.rx == 10);
  assert_int_equal(s.err, 0);
  sside g;
  sside_init(&g, good.st, 0, 4, 300000, 0);
  WAIT(g.eof || g.err);
  assert_true(g.rx == g.total && g.got == g.want);
  /* A visitor's port with the wrong secret: each connection is closed
   * with nothing sent back. */
  tunnel_visitor *v;
  uint16_t port = visitor_open(&v, NAME, "wrong");
  xfer *xf = xfer_start(port, 5, 1000);
  WAIT(xf->eof || xf->closed);
  assert_true(xf->connected);
  assert_int_equal(xf->rx, 0);
  xfer_free(xf);
  tunnel_visitor_close(v);
  tunnel_stream_close(ok.st, sside_closed, &s);
  tunnel_stream_close(good.st, sside_closed, &g);
  WAIT(s.closed && g.closed);
  echoes_close();
  fixture_finish();
}

static void test_refused_mux(void **state) {
  (void)state;
  refused_case(1);
}

static void test_refused_nomux(void **state) {
  (void)state;
  refused_case(0);
}

/* ----------------------------------------------------------- reconnect */

/* A TCP relay to the server that can drop every connection it carries;
 * half-closes cross it. */
typedef struct relay_pair {
  uv_tcp_t a, b; /* from the client, to the server */
  uv_connect_t creq;
  uv_shutdown_t sa, sb;
  struct relay_pair *next;
  int open; /* handles not yet closed */
  int eofs; /* sides that finished sending */
  int dropping;
} relay_pair;

static void pair_closed(uv_handle_t *h) {
  relay_pair *p = h->data;
  if (--p->open)
    return;
  for (relay_pair **pp = &X->pairs; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  free(p);
}

static void pair_drop(relay_pair *p) {
  if (p->dropping)
    return;
  p->dropping = 1;
  uv_close((uv_handle_t *)&p->a, pair_closed);
  uv_close((uv_handle_t *)&p->b, pair_closed);
}

typedef struct relay_w {
  uv_write_t req;
  char data[];
} relay_w;

static void relay_written(uv_write_t *r, int status) {
  (void)status;
  free(r);
}

static void relay_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  static char buf[CHUNK];
  *b = uv_buf_init(buf, sizeof buf);
}

static void relay_shut(uv_shutdown_t *r, int status) {
  relay_pair *p = r->handle->data;
  if (status || p->eofs == 2)
    pair_drop(p);
}

static void relay_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  relay_pair *p = s->data;
  if (p->dropping)
    return;
  uv_stream_t *to =
      s == (uv_stream_t *)&p->a ? (uv_stream_t *)&p->b : (uv_stream_t *)&p->a;
  if (n == UV_EOF) {
    p->eofs++;
    uv_read_stop(s);
    if (uv_shutdown(to == (uv_stream_t *)&p->a ? &p->sa : &p->sb, to,
                    relay_shut) != 0)
      pair_drop(p);
    return;
  }
  if (n < 0) {
    pair_drop(p);
    return;
  }
  if (n == 0)
    return;
  relay_w *w = malloc(sizeof *w + (size_t)n);
  assert_non_null(w);
  memcpy(w->data, b->base, (size_t)n);
  uv_buf_t out = uv_buf_init(w->data, (unsigned)n);
  if (uv_write(&w->req, to, &out, 1, relay_written) != 0) {
    free(w);
    pair_drop(p);
  }
}

static void relay_connected(uv_connect_t *r, int status) {
  relay_pair *p = r->data;
  if (p->dropping)
    return;
  if (status) {
    pair_drop(p);
    return;
  }
  uv_read_start((uv_stream_t *)&p->a, relay_alloc, relay_read);
  uv_read_start((uv_stream_t *)&p->b, relay_alloc, relay_read);
}

static void on_relay_conn(uv_stream_t *l, int status) {
  if (status)
    return;
  relay_pair *p = calloc(1, sizeof *p);
  assert_non_null(p);
  uv_tcp_init(l->loop, &p->a);
  uv_tcp_init(l->loop, &p->b);
  p->a.data = p->b.data = p->creq.data = p;
  p->open = 2;
  p->next = X->pairs;
  X->pairs = p;
  if (uv_accept(l, (uv_stream_t *)&p->a) != 0) {
    pair_drop(p);
    return;
  }
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", X->srv_port, &a);
  if (uv_tcp_connect(&p->creq, &p->b, (struct sockaddr *)&a, relay_connected) !=
      0)
    pair_drop(p);
}

static void reconnect_case(int mux) {
  ctx x;
  fixture_init(&x);
  echo_start();
  x.relay_port = listen_on(&x.relay, on_relay_conn);
  client_start(&x.svc, "service", mux, x.relay_port);
  client_start(&x.vis, "visitor", mux, x.srv_port);
  service_start(NULL);
  tunnel_visitor *v;
  uint16_t port = visitor_open(&v, NAME, SK);
  assert_true(try_echo(port, 1, 100000));
  /* The service's client loses every connection at once. */
  int calls = x.proxy_calls;
  for (relay_pair *p = x.pairs; p; p = p->next)
    pair_drop(p);
  WAIT(x.svc.state < 0);
  WAIT(x.svc.logins == 2 && x.proxy_calls > calls && x.proxy_status == 0);
  assert_string_equal(x.proxy_msg, NAME);
  /* The visitor's port carries echoes again (the server may take a moment
   * to see the old session go). */
  int ok = 0;
  uint64_t until = uv_now(&x.loop) + WAIT_MS;
  for (uint32_t i = 0; !ok && uv_now(&x.loop) < until; i++) {
    ok = try_echo(port, 40 + i, 100000);
    if (!ok)
      it_sleep(&x.w, 100);
  }
  assert_true(ok);
  assert_true(try_echo(port, 99, 1u << 20));
  assert_int_equal(x.vis.logins, 1); /* the visitor's client never left */
  tunnel_visitor_close(v);
  fixture_finish();
  assert_null(x.pairs);
}

static void test_reconnect(void **state) {
  (void)state;
  reconnect_case(1);
}

static void test_reconnect_nomux(void **state) {
  (void)state;
  reconnect_case(0);
}

/* ------------------------------------------------------- stock frp */

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Retries an echo through `port` until it works (registrations and
 * logins settle), within WAIT_MS. */
static int echo_up(uint16_t port) {
  uint64_t until = uv_now(&X->loop) + WAIT_MS;
  for (uint32_t i = 0; uv_now(&X->loop) < until; i++) {
    if (try_echo(port, 100 + i, 16))
      return 1;
    it_sleep(&X->w, 100);
  }
  return 0;
}

#define FRP_SK "frp-side-secret"

/* `stock_server`: a stock frps (else our server, in-process); `mux` for
 * every client of the case. */
static void frp_case(int stock_server, int mux) {
  char frpc[512], frps[512];
  snprintf(frpc, sizeof frpc, "%s/frpc", g_peers);
  snprintf(frps, sizeof frps, "%s/frps", g_peers);
  if (access(frpc, X_OK) != 0 || (stock_server && access(frps, X_OK) != 0)) {
    fprintf(stderr, "# %s absent: skipped\n", frpc);
    exit(77);
  }
  ctx x;
  it_proc srv, svc, vis;
  memset(&srv, 0, sizeof srv);
  g_keep_open = 1;
  char dir[64];
  snprintf(dir, sizeof dir, "/tmp/stcp-client-XXXXXX");
  if (stock_server) {
    fixture_loop(&x);
  } else {
    fixture_init(&x);
  }
  assert_non_null(mkdtemp(dir));
  echo_start();
  char slog[128], svclog[128], vislog[128], sini[128], svcini[128], visini[128],
      ini[2048];
  snprintf(slog, sizeof slog, "%s/frps.log", dir);
  snprintf(svclog, sizeof svclog, "%s/frpc-service.log", dir);
  snprintf(vislog, sizeof vislog, "%s/frpc-visitor.log", dir);
  snprintf(sini, sizeof sini, "%s/frps.ini", dir);
  snprintf(svcini, sizeof svcini, "%s/service.ini", dir);
  snprintf(visini, sizeof visini, "%s/visitor.ini", dir);
  if (stock_server) {
    x.srv_port = it_ephemeral_free_port();
    snprintf(ini, sizeof ini,
             "[common]\nbind_addr = 127.0.0.1\nbind_port = %u\n"
             "token = %s\ntcp_mux = %s\nlog_level = debug\n",
             x.srv_port, TOKEN, mux ? "true" : "false");
    write_file(sini, ini);
    char *args[] = {frps, "-c", sini, NULL};
    it_proc_spawn(&srv, &x.loop, args, slog, 0);
    /* Listening before anyone logs in: a stock frpc that finds nobody
     * waits seconds before it tries again. */
    uint64_t until = uv_now(&x.loop) + WAIT_MS;
    while (it_port_free(x.srv_port) && !srv.exited && uv_now(&x.loop) < until)
      it_sleep(&x.w, 20);
  }
  uint16_t frp_vis_port = it_ephemeral_free_port();
  snprintf(ini, sizeof ini,
           "[common]\nserver_addr = 127.0.0.1\nserver_port = %u\n"
           "token = %s\ntcp_mux = %s\nlog_level = debug\n"
           "login_fail_exit = false\n\n"
           "[frp-echo]\ntype = stcp\nsk = %s\nlocal_ip = 127.0.0.1\n"
           "local_port = %u\n",
           x.srv_port, TOKEN, mux ? "true" : "false", FRP_SK, x.echo.port);
  write_file(svcini, ini);
  snprintf(ini, sizeof ini,
           "[common]\nserver_addr = 127.0.0.1\nserver_port = %u\n"
           "token = %s\ntcp_mux = %s\nlog_level = debug\n"
           "login_fail_exit = false\n\n"
           "[to-ours]\ntype = stcp\nrole = visitor\nserver_name = %s\n"
           "sk = %s\nbind_addr = 127.0.0.1\nbind_port = %u\n",
           x.srv_port, TOKEN, mux ? "true" : "false", NAME, SK, frp_vis_port);
  write_file(visini, ini);
  char *svcargs[] = {frpc, "-c", svcini, NULL};
  char *visargs[] = {frpc, "-c", visini, NULL};
  it_proc_spawn(&svc, &x.loop, svcargs, svclog, 0);
  it_proc_spawn(&vis, &x.loop, visargs, vislog, 0);
  /* Ours: the service the stock visitor reaches, and a visitor of the
   * stock frpc's service. */
  client_start(&x.svc, "service", mux, x.srv_port);
  client_start(&x.vis, "visitor", mux, x.srv_port);
  WAIT(x.svc.logins == 1 || srv.exited);
  service_start(NULL);
  tunnel_visitor *v;
  uint16_t port = visitor_open(&v, "frp-echo", FRP_SK);
  int up = echo_up(port) && echo_up(frp_vis_port);
  if (!up) {
    it_dump_file("frps", slog);
    it_dump_file("frpc service", svclog);
    it_dump_file("frpc visitor", vislog);
    fail_msg("no echo through the stcp visitors");
  }
  /* Both ways at once, 8 MiB each way each, checksummed. */
  xfer *a = xfer_start(port, 1, 8u << 20);
  xfer *b = xfer_start(frp_vis_port, 2, 8u << 20);
  /* Within meson's 60 s: a stall fails here, with the peers' logs. */
  if (!xfer_wait(a, 20000) || !xfer_wait(b, 20000)) {
    it_dump_file("frps", slog);
    it_dump_file("frpc service", svclog);
    it_dump_file("frpc visitor", vislog);
    fail_msg("8 MiB: %zu and %zu bytes back", a->rx, b->rx);
  }
  xfer_free(a);
  xfer_free(b);
  /* In-process, to the stock frpc's service. */
  dial d;
  do_dial(&d, "frp-echo", FRP_SK);
  WAIT(d.calls);
  assert_int_equal(d.status, 0);
  sside s;
  sside_init(&s, d.st, 0, 3, 1u << 20, 1);
  WAIT(s.rx >= s.total || s.eof || s.err);
  assert_true(s.rx == s.total && s.got == s.want);
  tunnel_stream_close(d.st, sside_closed, &s);
  WAIT(s.closed);
  /* A wrong secret: the server's reason. */
  do_dial(&d, "frp-echo", "not-the-secret");
  WAIT(d.calls);
  assert_int_equal(d.status, TUNNEL_EREFUSED);
  if (!strstr(d.msg, "auth failed"))
    fail_msg("wrong secret refused with \"%s\"", d.msg);
  do_dial(&d, "no-such", FRP_SK);
  WAIT(d.calls);
  assert_int_equal(d.status, TUNNEL_EREFUSED);
  if (!strstr(d.msg, "doesn't exist"))
    fail_msg("unknown name refused with \"%s\"", d.msg);
  assert_true(try_echo(port, 50, 100000));
  tunnel_visitor_close(v);
  tunnel_client_close(x.svc.c, client_closed, &x.svc);
  tunnel_client_close(x.vis.c, client_closed, &x.vis);
  WAIT(x.svc.closed && x.vis.closed);
  x.svc.c = x.vis.c = NULL;
  it_proc_stop(&vis, &x.w);
  it_proc_stop(&svc, &x.w);
  it_proc_stop(&srv, &x.w);
  fixture_finish();
  unlink(slog), unlink(svclog), unlink(vislog);
  unlink(sini), unlink(svcini), unlink(visini);
  rmdir(dir);
}

static void test_frps_mux(void **state) {
  (void)state;
  frp_case(1, 1);
}

static void test_frps_nomux(void **state) {
  (void)state;
  frp_case(1, 0);
}

static void test_server_frpc(void **state) {
  (void)state;
  frp_case(0, 1);
}

/* -------------------------------------------------------- command line */

/* The port of "tcp://127.0.0.1:PORT" on a line of `out`, the n-th such. */
static uint16_t tcp_line(const char *out, int nth) {
  const char *at = out;
  for (int i = 0; (at = strstr(at, "tcp://127.0.0.1:")) != NULL; i++) {
    unsigned port;
    if (sscanf(at, "tcp://127.0.0.1:%u", &port) == 1 && i == nth)
      return (uint16_t)port;
    at++;
  }
  return 0;
}

/* Runs the client with `args` to its end; its exit status. */
static int64_t run_to_end(char **args, const char *log) {
  it_proc p;
  it_proc_spawn(&p, &X->loop, args, log, 0);
  WAIT(p.exited);
  int64_t st = p.status;
  it_proc_stop(&p, &X->w);
  return st;
}

static void test_cli(void **state) {
  (void)state;
  if (!g_server_exe || !g_client_exe)
    fail_msg("usage: test-stcp-client test_cli PEERS TUNNEL_SERVER "
             "TUNNEL_CLIENT");
  ctx x;
  fixture_loop(&x);
  echo_start();
  char dir[64];
  snprintf(dir, sizeof dir, "/tmp/stcp-cli-XXXXXX");
  assert_non_null(mkdtemp(dir));
  char slog[128], svclog[128], vlog[128], jlog[128], elog[128], skfile[128],
      ini[128], json[128], text[2048], sport[32], echo[16];
  snprintf(slog, sizeof slog, "%s/server.log", dir);
  snprintf(svclog, sizeof svclog, "%s/service.log", dir);
  snprintf(vlog, sizeof vlog, "%s/visitor.log", dir);
  snprintf(jlog, sizeof jlog, "%s/visitor-json.log", dir);
  snprintf(elog, sizeof elog, "%s/refused.log", dir);
  snprintf(skfile, sizeof skfile, "%s/secret", dir);
  snprintf(ini, sizeof ini, "%s/visitor.ini", dir);
  snprintf(json, sizeof json, "%s/visitor.json", dir);
  it_proc srv, svc, vis, vjs;
  char *sargs[] = {(char *)g_server_exe, "--control", "127.0.0.1:0", "--bind",
                   "127.0.0.1",          "--token",   TOKEN,         NULL};
  it_proc_spawn(&srv, &x.loop, sargs, slog, 1);
  unsigned cport = it_proc_listening_port(&srv, &x.w, slog);
  snprintf(sport, sizeof sport, "127.0.0.1:%u", cport);
  snprintf(echo, sizeof echo, "%u", (unsigned)x.echo.port);
  write_file(skfile, SK "\n");
  chmod(skfile, 0600);
  /* The service: its secret from a file, its name printed. */
  char *svcargs[] = {(char *)g_client_exe,
                     "--server",
                     sport,
                     "--token",
                     TOKEN,
                     "stcp",
                     echo,
                     "--name",
                     NAME,
                     "--secret-file",
                     skfile,
                     NULL};
  it_proc_spawn(&svc, &x.loop, svcargs, svclog, 1);
  WAIT(strchr(svc.obuf, '\n') || svc.exited);
  if (strcmp(svc.obuf, "stcp://" NAME "\n") != 0) {
    it_dump_file("service", svclog);
    fail_msg("stcp printed \"%s\"", svc.obuf);
  }
  /* Visitors: an INI file's, and one of the command line next to it. */
  snprintf(text, sizeof text,
           "[common]\nserver_addr = 127.0.0.1\nserver_port = %u\n"
           "token = %s\n\n[to-echo]\ntype = stcp\nrole = visitor\n"
           "server_name = %s\nsk = %s\nbind_addr = 127.0.0.1\n"
           "bind_port = 0\n",
           cport, TOKEN, NAME, SK);
  write_file(ini, text);
  chmod(ini, 0600);
  char *visargs[] = {(char *)g_client_exe, "-c", ini,      "visit", NAME,
                     "--secret",           SK,   "--bind", "0",     NULL};
  it_proc_spawn(&vis, &x.loop, visargs, vlog, 1);
  /* And a JSON file's. */
  snprintf(text, sizeof text,
           "{\"serverAddr\": \"127.0.0.1\", \"serverPort\": %u,\n"
           " \"auth\": {\"token\": \"%s\"},\n"
           " \"visitors\": [{\"name\": \"v\", \"type\": \"stcp\",\n"
           "   \"serverName\": \"%s\", \"secretKey\": \"%s\",\n"
           "   \"bindAddr\": \"127.0.0.1\", \"bindPort\": 0}]}\n",
           cport, TOKEN, NAME, SK);
  write_file(json, text);
  chmod(json, 0600);
  char *jsargs[] = {(char *)g_client_exe, "-c", json, NULL};
  it_proc_spawn(&vjs, &x.loop, jsargs, jlog, 1);
  WAIT((tcp_line(vis.obuf, 1) && tcp_line(vjs.obuf, 0)) || vis.exited ||
       vjs.exited);
  uint16_t p1 = tcp_line(vis.obuf, 0), p2 = tcp_line(vis.obuf, 1),
           p3 = tcp_line(vjs.obuf, 0);
  if (!p1 || !p2 || !p3 || p1 == p2) {
    it_dump_file("visitor", vlog);
    it_dump_file("visitor (json)", jlog);
    fail_msg("visitors printed \"%s\" and \"%s\"", vis.obuf, vjs.obuf);
  }
  fprintf(stderr, "# %s# %s# %s", svc.obuf, vis.obuf, vjs.obuf);
  assert_true(try_echo(p1, 1, 100000));
  assert_true(try_echo(p2, 2, 100000));
  assert_true(try_echo(p3, 3, 100000));
  /* Refused before anything starts. */
  char *nosecret[] = {(char *)g_client_exe,
                      "--server",
                      sport,
                      "stcp",
                      echo,
                      "--name",
                      "x",
                      NULL};
  assert_int_equal(run_to_end(nosecret, elog), 2);
  char *nobind[] = {(char *)g_client_exe, "--server", sport, "visit", NAME,
                    "--secret",           SK,         NULL};
  assert_int_equal(run_to_end(nobind, elog), 2);
  char *badopt[] = {(char *)g_client_exe, "--server", sport, "tcp", echo,
                    "--secret",           SK,         NULL};
  assert_int_equal(run_to_end(badopt, elog), 2);
  it_proc_stop(&vjs, &x.w);
  it_proc_stop(&vis, &x.w);
  it_proc_stop(&svc, &x.w);
  it_proc_stop(&srv, &x.w);
  it_echo_close(&x.echo, &x.w);
  assert_int_equal(it_waiter_finish(&x.w, WAIT_MS), 0);
  unlink(slog), unlink(svclog), unlink(vlog), unlink(jlog), unlink(elog);
  unlink(skfile), unlink(ini), unlink(json);
  rmdir(dir);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN); /* as tunnel/uv.h asks of programs */
  it_proc_guard();
  const char *lv = getenv("IT_LOG");
  if (lv)
    g_log = atoi(lv);
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_visitor_mux),
      cmocka_unit_test(test_visitor_nomux),
      cmocka_unit_test(test_dial_mux),
      cmocka_unit_test(test_dial_nomux),
      cmocka_unit_test(test_refused_mux),
      cmocka_unit_test(test_refused_nomux),
      cmocka_unit_test(test_reconnect),
      cmocka_unit_test(test_reconnect_nomux),
      cmocka_unit_test(test_frps_mux),
      cmocka_unit_test(test_frps_nomux),
      cmocka_unit_test(test_server_frpc),
      cmocka_unit_test(test_cli),
  };
  if (argc > 2)
    g_peers = argv[2];
  if (argc > 4) {
    g_server_exe = argv[3];
    g_client_exe = argv[4];
  }
  if (argc < 2)
    return cmocka_run_group_tests(all, NULL, NULL);
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i].name, argv[1]) == 0) {
      return _cmocka_run_group_tests(argv[1], &all[i], 1, NULL, NULL);
    }
  fprintf(stderr, "unknown case %s\n", argv[1]);
  return 2;
}
