/* Failed logins are limited per source address. A server with a token
 * listens on 127.0.0.1 and ::1 (the same port); attackers on ::1 come from
 * another address than the legitimate clients on 127.0.0.1, all on
 * loopback.
 *
 * - flood: several concurrent raw connections from ::1 send logins with a
 *   wrong key, each reconnecting as soon as it has its answer, until 2,000
 *   have been answered. Meanwhile a legitimate tunnel_client logs in from
 *   127.0.0.1 and echoes 64 KiB through a TCP proxy within a bound. Only
 *   the first attempts (the default 5 per 60 s, plus any earned back while
 *   the test runs) reach a key check; the rest are refused at once. The
 *   server's log holds one line per key check and one line per window for
 *   the refusals, and never the token or a privilege key.
 * - blocked-then-accepted: with 2 failures per 10 s, two bad logins block
 *   ::1; a correct login from there is refused ("retry in N s") while one
 *   from 127.0.0.1 is accepted; after N s the correct login from ::1 is
 *   accepted.
 * - disabled: with the limit off, every bad login gets a key check; the
 *   setter's ranges.
 *
 * Cases needing ::1 exit 77 (skipped) when IPv6 loopback is unavailable.
 * Usage: test-integration-login-flood [flood|blocked-then-accepted|disabled]
 * Environment: IT_LOG=1 prints the server's log lines on stderr. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <tunnel/uv.h>

/* Internal: the frp codec and key, to hand-build attackers' logins. */
#include "crypto.h"
#include "msg.h"

#include "it_data.h"
#include "it_hostile.h"

#define TOKEN "flood-token-7c1e"
#define OTHER_ADDR "::1"
#define ECHO_BYTES (64u * 1024u)
#define FLOOD_ATTEMPTS 2000
#define FLOOD_CONNS 8
/* The legitimate client logs in and echoes within this, flood or not. */
#define GOOD_MS 5000u
#define CLOSE_MS 5000u
#define BLOCKED_MSG "too many failed logins from this address"

static int print_log;

/* ------------------------------------------------------------ fixture */

typedef struct fx fx;

/* A tunnel_client with a TCP proxy to the echo service. */
typedef struct good {
  fx *f;
  tunnel_client *c;
  tunnel_proxy *px;
  int state_calls, state;
  char msg[256];
  int px_calls, px_status;
  uint16_t pub;
  int close_called, closed;
} good;

/* A connection of the echo service, or the visitor that checks it. */
typedef struct econn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  struct econn *next;
  int visitor;
  uint8_t *tx; /* visitor: what it sends */
  size_t rx_len, rx_ok;
  int eof, err, closed;
  uint8_t rbuf[16384];
} econn;

struct fx {
  uv_loop_t loop;
  it_waiter w;
  memstat mem;
  uint16_t lo, hi;
  tunnel_server *srv;
  uint16_t port;
  int srv_closed;
  uv_tcp_t svc;
  uint16_t svc_port;
  int svc_closed;
  econn *conns;
  good goods[4];
  int ngoods;
  it_buf log; /* server log lines, NUL-separated */
  size_t log_lines;
};

#define WAIT(f, cond, ms) IT_WAIT(&(f)->w, cond, ms)

static uint64_t now_ms(fx *f) { return it_now(&f->loop); }

static void log_cb(int level, const char *msg, void *ud) {
  fx *f = ud;
  if (print_log)
    fprintf(stderr, "[server] %s: %s\n", tunnel_log_level_name(level), msg);
  f->log_lines++;
  if (f->log.len < (16u << 20))
    it_buf_put(&f->log, msg, strlen(msg) + 1);
}

/* Recorded log lines containing `s`. */
static size_t log_count(const fx *f, const char *s) {
  size_t n = 0;
  for (size_t off = 0; off < f->log.len;) {
    const char *line = (const char *)f->log.p + off;
    n += strstr(line, s) != NULL;
    off += strlen(line) + 1;
  }
  return n;
}

static void econn_closed(uv_handle_t *h) { ((econn *)h->data)->closed = 1; }

static void econn_close(econn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, econn_closed);
}

static econn *econn_new(fx *f, int visitor) {
  econn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->visitor = visitor;
  uv_tcp_init(&f->loop, &c->tcp);
  c->tcp.data = c;
  c->next = f->conns;
  f->conns = c;
  return c;
}

static void econn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  econn *c = h->data;
  (void)hint;
  *b = uv_buf_init((char *)c->rbuf, sizeof c->rbuf);
}

static void econn_shut(uv_shutdown_t *req, int status) {
  (void)req, (void)status;
}

typedef struct ewreq {
  uv_write_t req;
  uint8_t data[];
} ewreq;

static void econn_written(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void econn_write(econn *c, const void *p, size_t n) {
  ewreq *w = malloc(sizeof *w + n);
  assert_non_null(w);
  memcpy(w->data, p, n);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, econn_written) != 0) {
    free(w);
    c->err = 1;
  }
}

static void econn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  econn *c = s->data;
  if (n > 0) {
    if (!c->visitor) {
      econn_write(c, b->base, (size_t)n); /* echo */
      return;
    }
    for (ssize_t i = 0; i < n; i++, c->rx_len++)
      c->rx_ok +=
          c->rx_len < ECHO_BYTES && (uint8_t)b->base[i] == c->tx[c->rx_len];
    return;
  }
  if (n == 0)
    return;
  uv_read_stop(s);
  if (n == UV_EOF) {
    c->eof = 1;
    if (!c->visitor)
      uv_shutdown(&c->sreq, s, econn_shut);
    else
      econn_close(c);
  } else {
    c->err = 1;
    econn_close(c);
  }
}

static void on_svc(uv_stream_t *l, int status) {
  fx *f = l->data;
  if (status < 0)
    return;
  econn *c = econn_new(f, 0);
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    econn_close(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, econn_alloc, econn_read);
}

static void visitor_connected(uv_connect_t *req, int status) {
  econn *c = req->data;
  if (status) {
    c->err = 1;
    econn_close(c);
    return;
  }
  econn_write(c, c->tx, ECHO_BYTES);
  uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, econn_shut);
  uv_read_start((uv_stream_t *)&c->tcp, econn_alloc, econn_read);
}

/* 64 KiB through the proxy at 127.0.0.1:pub and back, checked byte for
 * byte. */
static void echo_through(fx *f, uint16_t pub, uint64_t within_ms) {
  econn *c = econn_new(f, 1);
  uint8_t *tx = malloc(ECHO_BYTES);
  assert_non_null(tx);
  gen_fill(0x5eed, 0, tx, ECHO_BYTES);
  c->tx = tx;
  c->creq.data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", pub, &a);
  assert_int_equal(uv_tcp_connect(&c->creq, &c->tcp,
                                  (const struct sockaddr *)&a,
                                  visitor_connected),
                   0);
  WAIT(f, c->closed, within_ms);
  c->tx = NULL;
  free(tx);
  if (c->err || !c->eof || c->rx_len != ECHO_BYTES || c->rx_ok != ECHO_BYTES)
    fail_msg("echo through the tunnel: error %d, eof %d, %zu bytes back, "
             "%zu matching (want %u)",
             c->err, c->eof, c->rx_len, c->rx_ok, ECHO_BYTES);
}

static void on_good_state(tunnel_client *c, int status, const char *msg,
                          void *ud) {
  good *g = ud;
  (void)c;
  g->state_calls++;
  g->state = status;
  snprintf(g->msg, sizeof g->msg, "%s", msg ? msg : "");
}

static void on_good_px(tunnel_proxy *p, int status, const char *msg, void *ud) {
  good *g = ud;
  (void)p;
  g->px_calls++;
  g->px_status = status;
  const char *colon = msg ? strrchr(msg, ':') : NULL;
  g->pub = status == 0 && colon ? (uint16_t)atoi(colon + 1) : 0;
}

/* A legitimate client with the right token, logging in to `host`. */
static good *good_start(fx *f, const char *host) {
  assert_true(f->ngoods < 4);
  good *g = &f->goods[f->ngoods++];
  memset(g, 0, sizeof *g);
  g->f = f;
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &f->mem),
                   0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  assert_int_equal(tunnel_client_new(&g->c, &f->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_client_set_state_cb(g->c, on_good_state, g), 0);
  char name[32];
  snprintf(name, sizeof name, "echo-%d", f->ngoods);
  assert_int_equal(tunnel_proxy_new(&g->px, g->c, name, TUNNEL_PROXY_TCP), 0);
  assert_int_equal(tunnel_proxy_set_local(g->px, "127.0.0.1", f->svc_port), 0);
  assert_int_equal(tunnel_proxy_set_status_cb(g->px, on_good_px, g), 0);
  assert_int_equal(tunnel_proxy_start(g->px), 0);
  assert_int_equal(tunnel_client_connect(g->c, host, f->port), 0);
  return g;
}

static void on_good_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((good *)ud)->closed = 1;
}

static void good_close(good *g) {
  if (g->close_called)
    return;
  g->close_called = 1;
  assert_int_equal(tunnel_client_close(g->c, on_good_closed, g), 0);
}

static int ipv6_loopback(void) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof a);
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 1) == 0;
  close(fd);
  return ok;
}

/* Server (limits set by `failures`/`window_ms`; failures < 0: defaults)
 * on 127.0.0.1 and ::1, and the echo service. */
static void fx_setup(fx *f, long failures, uint32_t window_ms) {
  memset(f, 0, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  it_waiter_init(&f->w, &f->loop);
  it_pick_range(&f->lo, &f->hi);
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &f->mem),
                   0);
  assert_int_equal(tunnel_config_set_log(cfg, log_cb, TUNNEL_LOG_DEBUG, f), 0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1"), 0);
  assert_int_equal(tunnel_config_set_port_range(cfg, f->lo, f->hi), 0);
  if (failures >= 0)
    assert_int_equal(
        tunnel_config_set_login_limits(cfg, (uint32_t)failures, window_ms), 0);
  assert_int_equal(tunnel_server_new(&f->srv, &f->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(f->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(f->srv, &f->port), 0);
  assert_int_equal(tunnel_server_listen(f->srv, OTHER_ADDR, f->port), 0);

  uv_tcp_init(&f->loop, &f->svc);
  f->svc.data = f;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&f->svc, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&f->svc, 128, on_svc), 0);
  int len = sizeof a;
  assert_int_equal(uv_tcp_getsockname(&f->svc, (struct sockaddr *)&a, &len), 0);
  f->svc_port = ntohs(a.sin_port);
}

static void on_srv_closed(tunnel_server *s, void *ud) {
  (void)s;
  ((fx *)ud)->srv_closed = 1;
}

static void svc_closed(uv_handle_t *h) { ((fx *)h->data)->svc_closed = 1; }

static int all_closed(fx *f) {
  if (!f->srv_closed)
    return 0;
  for (int i = 0; i < f->ngoods; i++)
    if (!f->goods[i].closed)
      return 0;
  return 1;
}

/* Closes the clients and the server, checks that every byte the library
 * allocated came back, then closes the rest and the loop. */
static void fx_teardown(fx *f) {
  for (int i = 0; i < f->ngoods; i++)
    good_close(&f->goods[i]);
  assert_int_equal(tunnel_server_close(f->srv, on_srv_closed, f), 0);
  WAIT(f, all_closed(f), CLOSE_MS);
  if (f->mem.cur != 0)
    fail_msg("library leaked %zu bytes through the allocator", f->mem.cur);
  for (econn *c = f->conns; c; c = c->next)
    econn_close(c);
  uv_close((uv_handle_t *)&f->svc, svc_closed);
  assert_int_equal(it_waiter_finish(&f->w, IT_WAIT_MS), 0);
  while (f->conns) {
    econn *c = f->conns;
    f->conns = c->next;
    free(c);
  }
  it_buf_free(&f->log);
}

/* ----------------------------------------------------------- attackers */

/* A Login signed with `token` (a wrong one, for attackers). */
static void put_login(it_buf *b, const char *token, int64_t ts) {
  const tunnel__mem *mem = tunnel__mem_default();
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  char k[33];
  assert_int_equal(tunnel__privilege_key(token, strlen(token), ts, k), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.version, "0.61.0"), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.privilege_key, k), 0);
  m.timestamp = ts;
  tunnel__bufq q;
  tunnel__bufq_init(&q, mem, 1024);
  assert_int_equal(tunnel__msg_encode(mem, &m, &q), 0);
  while (q.size) {
    tunnel__iov v;
    tunnel__bufq_iov(&q, &v, 1);
    it_buf_put(b, v.base, v.len);
    tunnel__bufq_consume(&q, v.len);
  }
  tunnel__bufq_free(&q);
  tunnel__msg_clear(mem, &m);
}

/* The error of the LoginResp at the start of p[0..n): 1 and `err` filled,
 * 0 when there is none. */
static int login_resp_error(const uint8_t *p, size_t n, char *err,
                            size_t errsz) {
  const tunnel__mem *mem = tunnel__mem_default();
  tunnel__msg_reader r;
  tunnel__msg_reader_init(&r, mem, 1u << 16);
  tunnel__msg m;
  size_t used = 0;
  int rc = tunnel__msg_reader_feed(&r, p, n, &used, &m);
  int ok = 0;
  if (rc == 1) {
    ok = m.type == TUNNEL__MSG_LOGIN_RESP && m.error;
    if (ok)
      snprintf(err, errsz, "%s", m.error);
    tunnel__msg_clear(mem, &m);
  }
  tunnel__msg_reader_free(&r);
  return ok;
}

typedef struct flood flood;

/* One attacker connection: connect, send the login, read the answer until
 * the server ends the connection, then start over. */
typedef struct slot {
  flood *fl;
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  it_buf rx;
  uint8_t rbuf[4096];
  int active;
} slot;

struct flood {
  fx *f;
  it_buf login;
  int target;
  int started, answered, key_checks, blocked, other;
  int conn_errors;
  char first_blocked[256], first_other[256];
  slot slots[FLOOD_CONNS];
};

static void slot_start(slot *s);

static void slot_closed(uv_handle_t *h) {
  slot *s = h->data;
  s->active = 0;
  if (s->fl->started < s->fl->target)
    slot_start(s);
}

static void slot_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  slot *s = h->data;
  (void)hint;
  *b = uv_buf_init((char *)s->rbuf, sizeof s->rbuf);
}

static void slot_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  slot *s = st->data;
  flood *fl = s->fl;
  if (n > 0) {
    it_buf_put(&s->rx, b->base, (size_t)n);
    return;
  }
  if (n == 0)
    return;
  /* The server ended the connection: its answer is complete. */
  char err[256] = "";
  if (!login_resp_error(s->rx.p, s->rx.len, err, sizeof err)) {
    fl->conn_errors++;
  } else {
    fl->answered++;
    if (strstr(err, "token mismatch")) {
      fl->key_checks++;
    } else if (strstr(err, BLOCKED_MSG)) {
      if (!fl->blocked++)
        snprintf(fl->first_blocked, sizeof fl->first_blocked, "%s", err);
    } else if (!fl->other++) {
      snprintf(fl->first_other, sizeof fl->first_other, "%s", err);
    }
  }
  uv_close((uv_handle_t *)st, slot_closed);
}

static void slot_written(uv_write_t *req, int status) {
  (void)req, (void)status; /* a failed write shows as a read error */
}

static void slot_connected(uv_connect_t *req, int status) {
  slot *s = req->data;
  if (status) {
    s->fl->conn_errors++;
    uv_close((uv_handle_t *)&s->tcp, slot_closed);
    return;
  }
  uv_buf_t b = uv_buf_init((char *)s->fl->login.p, (unsigned)s->fl->login.len);
  uv_write(&s->wreq, (uv_stream_t *)&s->tcp, &b, 1, slot_written);
  uv_read_start((uv_stream_t *)&s->tcp, slot_alloc, slot_read);
}

static void slot_start(slot *s) {
  flood *fl = s->fl;
  if (fl->conn_errors > 100)
    return; /* something else is wrong: the test reports it */
  fl->started++;
  s->active = 1;
  s->rx.len = 0;
  uv_tcp_init(&fl->f->loop, &s->tcp);
  s->tcp.data = s;
  s->creq.data = s;
  struct sockaddr_in6 a;
  uv_ip6_addr(OTHER_ADDR, fl->f->port, &a);
  if (uv_tcp_connect(&s->creq, &s->tcp, (const struct sockaddr *)&a,
                     slot_connected) != 0) {
    fl->conn_errors++;
    uv_close((uv_handle_t *)&s->tcp, slot_closed);
  }
}

static int flood_idle(const flood *fl) {
  for (int i = 0; i < FLOOD_CONNS; i++)
    if (fl->slots[i].active)
      return 0;
  return 1;
}

static void flood_start(fx *f, flood *fl, int target, int conns) {
  memset(fl, 0, sizeof *fl);
  fl->f = f;
  fl->target = target;
  put_login(&fl->login, "not-" TOKEN, (int64_t)time(NULL));
  for (int i = 0; i < conns && i < FLOOD_CONNS; i++) {
    fl->slots[i].fl = fl;
    slot_start(&fl->slots[i]);
  }
}

static void flood_free(flood *fl) {
  it_buf_free(&fl->login);
  for (int i = 0; i < FLOOD_CONNS; i++)
    it_buf_free(&fl->slots[i].rx);
}

/* Neither the token nor a privilege key (the attackers', or the
 * legitimate clients' for any second the test ran) is in the log. */
static void expect_no_secret_logged(fx *f, int64_t t0, int64_t t1,
                                    const flood *fl) {
  if (log_count(f, TOKEN))
    fail_msg("the token appears in the server's log");
  for (int64_t ts = t0 - 2; ts <= t1 + 2; ts++) {
    char k[33];
    assert_int_equal(tunnel__privilege_key(TOKEN, strlen(TOKEN), ts, k), 0);
    if (log_count(f, k))
      fail_msg("a privilege key appears in the server's log");
    if (fl) {
      assert_int_equal(
          tunnel__privilege_key("not-" TOKEN, strlen("not-" TOKEN), ts, k), 0);
      if (log_count(f, k))
        fail_msg("an attacker's privilege key appears in the server's log");
    }
  }
}

/* -------------------------------------------------------------- tests */

static void test_flood(void **state) {
  (void)state;
  fx f;
  fx_setup(&f, -1, 0); /* the defaults: 5 per 60 s */
  int64_t unix0 = (int64_t)time(NULL);
  flood fl;
  uint64_t t0 = now_ms(&f);
  flood_start(&f, &fl, FLOOD_ATTEMPTS, FLOOD_CONNS);
  /* The legitimate client starts while the flood is under way and past
   * its first key checks. */
  WAIT(&f, fl.answered >= 100 || fl.conn_errors > 100, IT_WAIT_MS);
  assert_true(fl.conn_errors <= 100);
  uint64_t g0 = now_ms(&f);
  int answered_at_start = fl.answered;
  good *g = good_start(&f, "127.0.0.1");
  WAIT(&f, g->state_calls > 0, GOOD_MS);
  if (g->state != 0)
    fail_msg("legitimate login refused during the flood: %s (%s)",
             tunnel_err_name(g->state), g->msg);
  uint64_t g_login = now_ms(&f) - g0;
  WAIT(&f, g->px_calls > 0, GOOD_MS);
  assert_int_equal(g->px_status, 0);
  assert_true(g->pub != 0);
  echo_through(&f, g->pub, GOOD_MS);
  uint64_t g_echo = now_ms(&f) - g0;
  int answered_during = fl.answered - answered_at_start;
  if (g_echo > GOOD_MS)
    fail_msg("the legitimate client took %llu ms (bound %u)",
             (unsigned long long)g_echo, GOOD_MS);

  WAIT(&f, (fl.started >= fl.target && flood_idle(&fl)) || fl.conn_errors > 100,
       60000u);
  uint64_t took = now_ms(&f) - t0;
  int64_t unix1 = (int64_t)time(NULL);
  size_t block_lines = log_count(&f, BLOCKED_MSG);
  size_t mismatch_lines = log_count(&f, "token mismatch");
  fprintf(stderr,
          "# flood from %s: %d logins answered in %llu ms (%.0f/s) over %d "
          "connections: %d key checks, %d refused at once, %d other, %d "
          "connection errors\n"
          "# legitimate client from 127.0.0.1: logged in after %llu ms, "
          "64 KiB echoed after %llu ms, while %d attacker logins were "
          "answered\n"
          "# server log: %zu lines; %zu about key mismatches, %zu about "
          "the block\n# first block refusal: %s\n",
          OTHER_ADDR, fl.answered, (unsigned long long)took,
          took ? fl.answered * 1000.0 / (double)took : 0.0, FLOOD_CONNS,
          fl.key_checks, fl.blocked, fl.other, fl.conn_errors,
          (unsigned long long)g_login, (unsigned long long)g_echo,
          answered_during, f.log_lines, mismatch_lines, block_lines,
          fl.first_blocked);
  if (fl.other)
    fail_msg("unexpected refusal: %s", fl.first_other);
  assert_int_equal(fl.conn_errors, 0);
  assert_true(fl.answered >= FLOOD_ATTEMPTS);
  /* Key checks: the bucket (5), plus one per 12 s the test ran. */
  int max_checks = 5 + (int)(took / 12000u) + 1;
  if (fl.key_checks < 5 || fl.key_checks > max_checks)
    fail_msg("%d attacker logins reached a key check; expected 5 to %d",
             fl.key_checks, max_checks);
  assert_int_equal(fl.blocked, fl.answered - fl.key_checks);
  assert_non_null(strstr(fl.first_blocked, "retry in "));
  /* One line per key check; the refusals in one line per window. */
  assert_int_equal(mismatch_lines, (size_t)fl.key_checks);
  size_t max_block_lines = 1 + (size_t)(took / 60000u) + 1;
  if (block_lines < 1 || block_lines > max_block_lines)
    fail_msg("%zu log lines about the block (expected 1 to %zu)", block_lines,
             max_block_lines);
  expect_no_secret_logged(&f, unix0, unix1, &fl);
  assert_int_equal(tunnel_server_client_count(f.srv), 1);
  echo_through(&f, g->pub, GOOD_MS); /* still served */
  fx_teardown(&f);
  flood_free(&fl);
}

/* Waits for the first login answer of a one-attempt flood. */
static void bad_logins(fx *f, flood *fl, int n) {
  flood_start(f, fl, n, 1);
  WAIT(f, fl->started >= n && flood_idle(fl), IT_WAIT_MS);
  assert_int_equal(fl->conn_errors, 0);
  assert_int_equal(fl->answered, n);
}

static void test_blocked_then_accepted(void **state) {
  (void)state;
  fx f;
  fx_setup(&f, 2, 10000); /* one attempt back every 5 s */
  int64_t unix0 = (int64_t)time(NULL);
  flood fl;
  uint64_t t0 = now_ms(&f);
  bad_logins(&f, &fl, 2);
  assert_int_equal(fl.key_checks, 2);
  flood_free(&fl);

  /* The right token from the blocked address: refused, with when. */
  good *g = good_start(&f, OTHER_ADDR);
  WAIT(&f, g->state_calls > 0, GOOD_MS);
  uint64_t refused_at = now_ms(&f);
  if (refused_at - t0 >= 5000u)
    fail_msg("the correct login took %llu ms: past the block it tests",
             (unsigned long long)(refused_at - t0));
  if (g->state != TUNNEL_EAUTH || !strstr(g->msg, BLOCKED_MSG))
    fail_msg("correct login from the blocked address: expected a refusal "
             "for too many failed logins, got %s (%s)",
             tunnel_err_name(g->state), g->msg);
  const char *r = strstr(g->msg, "retry in ");
  assert_non_null(r);
  int secs = atoi(r + strlen("retry in "));
  fprintf(stderr, "# blocked %s was told: %s\n", OTHER_ADDR, g->msg);
  assert_true(secs >= 1 && secs <= 5);
  good_close(g);

  /* Another address is not affected. */
  good *other = good_start(&f, "127.0.0.1");
  WAIT(&f, other->state_calls > 0, GOOD_MS);
  if (other->state != 0)
    fail_msg("login from 127.0.0.1 refused while %s is blocked: %s", OTHER_ADDR,
             other->msg);

  /* After the time it was given, the blocked address logs in. */
  it_sleep(&f.w, (uint64_t)secs * 1000u + 100u);
  good *again = good_start(&f, OTHER_ADDR);
  WAIT(&f, again->state_calls > 0, GOOD_MS);
  if (again->state != 0)
    fail_msg("correct login from %s refused %d s later: %s", OTHER_ADDR, secs,
             again->msg);
  WAIT(&f, again->px_calls > 0, GOOD_MS);
  assert_int_equal(again->px_status, 0);
  echo_through(&f, again->pub, GOOD_MS);
  fprintf(stderr, "# accepted %llu ms after the refusal\n",
          (unsigned long long)(now_ms(&f) - refused_at));
  assert_int_equal(tunnel_server_client_count(f.srv), 2);
  /* The refusal was logged with the address and the reason. */
  assert_true(log_count(&f, "login from ::1 refused: " BLOCKED_MSG) == 1);
  expect_no_secret_logged(&f, unix0, (int64_t)time(NULL), NULL);
  fx_teardown(&f);
}

static void test_disabled(void **state) {
  (void)state;
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_login_limits(NULL, 5, 60000),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_config_set_login_limits(cfg, 5, 99), TUNNEL_ERANGE);
  assert_int_equal(tunnel_config_set_login_limits(cfg, 5, 86400001u),
                   TUNNEL_ERANGE);
  assert_int_equal(tunnel_config_set_login_limits(cfg, 1000001u, 60000),
                   TUNNEL_ERANGE);
  assert_int_equal(tunnel_config_set_login_limits(cfg, 1000000u, 86400000u), 0);
  assert_int_equal(tunnel_config_set_login_limits(cfg, 0, 100), 0);
  tunnel_config_free(cfg);

  fx f;
  fx_setup(&f, 0, 60000);
  flood fl;
  flood_start(&f, &fl, 40, 4);
  WAIT(&f, fl.started >= 40 && flood_idle(&fl), IT_WAIT_MS);
  assert_int_equal(fl.conn_errors, 0);
  assert_int_equal(fl.answered, 40);
  assert_int_equal(fl.key_checks, 40); /* no limit: every one checked */
  flood_free(&fl);
  good *g = good_start(&f, OTHER_ADDR);
  WAIT(&f, g->state_calls > 0, GOOD_MS);
  assert_int_equal(g->state, 0);
  fx_teardown(&f);
}

int main(int argc, char **argv) {
  const char *lv = getenv("IT_LOG");
  print_log = lv && atoi(lv) > 0;
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flood),
      cmocka_unit_test(test_blocked_then_accepted),
      cmocka_unit_test(test_disabled),
  };
  if (argc > 2) {
    fprintf(stderr, "usage: %s [TEST]\n", argv[0]);
    return 2;
  }
  if (!ipv6_loopback()) {
    fprintf(stderr, "# IPv6 loopback (::1) unavailable: skipped\n");
    return 77;
  }
  if (argc == 2) {
    size_t i, n = sizeof tests / sizeof tests[0];
    for (i = 0; i < n && strcmp(tests[i].name, argv[1]) != 0; i++)
      ;
    if (i == n) {
      fprintf(stderr, "no test named %s\n", argv[1]);
      return 2;
    }
    cmocka_set_test_filter(argv[1]);
  }
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
