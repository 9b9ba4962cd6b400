/* Hostile input from the network. Each test runs, on one uv loop, a
 * tunnel_server on 127.0.0.1, a legitimate tunnel_client with a TCP proxy
 * to an echo service, and attackers: raw libuv TCP connections to the
 * server's control port that send garbage, oversized or malformed frames,
 * protocol violations, nothing at all, or forged logins. Every test checks
 * that (a) the server ends each attack connection within a bounded time,
 * (b) the legitimate tunnel echoes correctly during and after the attack,
 * (c) the server's client count is what it should be, and (d) teardown is
 * clean: the server closes while attackers may still be connected, every
 * byte allocated through the configured allocator is returned, and
 * uv_loop_close succeeds.
 *
 * Tests 9 to 16 attack the server's limits with peers that follow the
 * protocol: floods of requests, of streams and of connections, slow
 * senders, old or replayed keys, injected work connections, control bytes
 * in names. Each states its numbers (memory, time, counts) next to it.
 *
 * Usage: test-integration-hostile [TEST_NAME]  (default: all tests)
 * Environment: IT_LOG=0..3 prints library log lines up to that level
 * (default: none; the attacks make the server warn a lot) on stderr. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include <tunnel/uv.h>

/* Internal headers (libtunnel_internal_dep): frp message encoding and the
 * frp key and cipher, to hand-build what a client would send. */
#include "crypto.h"
#include "msg.h"

#include "it_data.h"
#include "it_hostile.h"

#define TOKEN "it-token"
/* A loopback address other than the legitimate clients' 127.0.0.1. */
#define OTHER_ADDR "::1"
/* Short limits, so that the limits themselves are what the attacks hit. */
#define MAX_MSG 1024u
#define MAX_BACKLOG 4096u /* the smallest the config accepts */
/* The server's identification timeout (docs/PROTOCOL.md section 1). */
#define IDENT_MS 10000u
/* A bad input must get its connection (or stream) closed this fast: far
 * below the identification timeout, so a close that merely comes from the
 * timeout does not pass. */
#define FAST_MS 3000u
/* Closes by the identification timeout: the server sweeps once a second. */
#define IDENT_MIN_MS (IDENT_MS - 500u)
#define IDENT_MAX_MS (IDENT_MS + 2500u)
/* A server still running after it was asked to close, this long after,
 * hangs. */
#define CLOSE_MS 5000u

#define CHUNK (64u * 1024u)
#define TX_INFLIGHT_MAX (1u << 20)
#define ECHO_BYTES (64u * 1024u + 7u)
#define FLOOD_TRANSFER (8u << 20)

/* ------------------------------------------------------------- helpers */


static int log_level = -1; /* none */

static void log_sink(int level, const char *msg, void *ud) {
  fprintf(stderr, "[%s] %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

/* ------------------------------------------------------------ fixture */

typedef struct ht ht;

/* A connection of the echo service, or a visitor of the public port. */
typedef struct conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  ht *t;
  struct conn *next;
  int visitor;
  uint64_t tx_total;
  uint32_t seed;
  uint64_t tx_queued, tx_inflight, tx_hash;
  uint64_t rx_bytes, rx_hash;
  int reading, conn_status, eof, rerr, werr;
  int shut_req, shut_done, closing, closed;
  uint64_t t_start, t_end;
  uint8_t rbuf[CHUNK];
} conn;

/* A second tunnel_client: one with the wrong token
 * (test_wrong_token_repeated), or a late legitimate one with a proxy of its
 * own (test_slowloris). */
typedef struct badcl {
  ht *t;
  tunnel_client *c;
  int state_calls, state;
  char msg[256];
  int close_called, closed;
  tunnel_proxy *px;
  int px_calls, px_status;
  uint16_t pub;
} badcl;

/* Where a log line comes from; the server's may be recorded. */
typedef struct logsrc {
  ht *t;
  const char *who;
  int capture;
} logsrc;

/* The server's log lines, as the log callback received them: entries of a
 * level byte, the line and a NUL. */
typedef struct logcap {
  it_buf text;
  uint64_t lines, dropped;
  uint64_t ctl_lines;    /* lines holding a raw control character */
  char first_ctl[256];   /* the first of them, made printable */
} logcap;

/* What a test changes in the fixture. */
typedef struct ht_opts {
  void (*tune)(tunnel_config *cfg); /* server settings beyond the fixture's */
  int log_capture;                  /* record the server's log, all levels */
} ht_opts;

#define MAX_BAD 32

struct ht {
  int have_v6; /* the server also listens on ::1 */
  uv_loop_t loop;
  it_waiter w;
  memstat mem;
  uint16_t lo, hi;
  tunnel_server *srv;
  uint16_t srv_port;
  int srv_closed;
  tunnel_client *cli;
  int cli_state_calls, cli_state;
  char run_id[64];
  int cli_close_called, cli_closed;
  tunnel_proxy *px;
  int px_calls, px_status;
  char px_msg[256];
  uint16_t pub;
  uv_tcp_t svc;
  uint16_t svc_port;
  int svc_closed;
  conn *conns;
  it_atk *atks;
  badcl bad[MAX_BAD];
  int nbad;
  it_rng rng;
  logsrc log_server, log_client, log_other;
  logcap cap;
  uint64_t hr0; /* uv_hrtime at setup */
  char deferred[1024]; /* failures reported at the end of the test */
};

#define WAIT(t, cond) IT_WAIT(&(t)->w, cond, IT_WAIT_MS)

static uint64_t now_ms(ht *t) { return it_now(&t->loop); }

/* A raw control character (C0 or DEL): what must never reach a log line
 * unescaped, since it can forge lines or drive a terminal. */
static int is_ctl(unsigned char c) { return c < 0x20 || c == 0x7f; }

static void log_record(logcap *cap, int level, const char *msg) {
  size_t n = strlen(msg);
  cap->lines++;
  int ctl = 0;
  for (size_t i = 0; i < n; i++)
    ctl |= is_ctl((unsigned char)msg[i]);
  if (ctl && cap->ctl_lines++ == 0) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < sizeof cap->first_ctl; i++) {
      unsigned char c = (unsigned char)msg[i];
      if (is_ctl(c))
        o += (size_t)snprintf(cap->first_ctl + o, sizeof cap->first_ctl - o,
                              "\\x%02x", c);
      else
        cap->first_ctl[o++] = (char)c;
    }
    cap->first_ctl[o] = '\0';
  }
  if (cap->text.len + n + 2 > (8u << 20)) { /* bounded: floods log a lot */
    cap->dropped++;
    return;
  }
  uint8_t lv = (uint8_t)level;
  it_buf_put(&cap->text, &lv, 1);
  it_buf_put(&cap->text, msg, n + 1);
}

static void log_sink_src(int level, const char *msg, void *ud) {
  logsrc *src = ud;
  if (src->capture)
    log_record(&src->t->cap, level, msg);
  if (level <= log_level)
    log_sink(level, msg, (void *)(uintptr_t)src->who);
}

/* Whether a recorded server line at `max_level` or more severe, recorded
 * from position `from` on, contains `a` and (when not NULL) `b`. */
static int log_has(const ht *t, size_t from, int max_level, const char *a,
                   const char *b) {
  const it_buf *x = &t->cap.text;
  size_t off = from;
  while (off < x->len) {
    int level = x->p[off];
    const char *line = (const char *)x->p + off + 1;
    if (level <= max_level && strstr(line, a) && (!b || strstr(line, b)))
      return 1;
    off += 1 + strlen(line) + 1;
  }
  return 0;
}

/* Position for log_has: lines recorded from now on. */
static size_t log_pos(const ht *t) { return t->cap.text.len; }

/* Prints the recorded lines from `from` on (a failure's context). */
static void log_dump(const ht *t, size_t from, const char *why) {
  const it_buf *x = &t->cap.text;
  fprintf(stderr, "# server log since %s:\n", why);
  for (size_t off = from; off < x->len;) {
    const char *line = (const char *)x->p + off + 1;
    fprintf(stderr, "#   %s: ", tunnel_log_level_name(x->p[off]));
    for (const char *q = line; *q; q++)
      fprintf(stderr, is_ctl((unsigned char)*q) ? "\\x%02x" : "%c",
              (unsigned char)*q);
    fprintf(stderr, "\n");
    off += 1 + strlen(line) + 1;
  }
}

static tunnel_config *config_new(ht *t, const char *token, const char *who) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &t->mem),
                   0);
  logsrc *src = strcmp(who, "server") == 0   ? &t->log_server
                : strcmp(who, "client") == 0 ? &t->log_client
                                             : &t->log_other;
  src->t = t;
  src->who = who;
  int level = src->capture ? TUNNEL_LOG_DEBUG : log_level;
  if (level >= 0)
    assert_int_equal(
        tunnel_config_set_log(cfg, log_sink_src, level, src), 0);
  assert_int_equal(tunnel_config_set_token(cfg, token), 0);
  return cfg;
}

/* ----- echo service and visitors */

static void conn_closed(uv_handle_t *h) { ((conn *)h->data)->closed = 1; }

static void conn_close(conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void conn_maybe_close(conn *c) {
  if ((c->eof || c->rerr) && (c->shut_done || c->rerr || c->werr))
    conn_close(c);
}

static void conn_on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = req->data;
  c->shut_done = 1;
  if (status && !c->werr)
    c->werr = status;
  conn_maybe_close(c);
}

static void conn_shutdown(conn *c) {
  if (c->shut_req || c->closing)
    return;
  c->shut_req = 1;
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
    c->shut_done = 1;
    conn_maybe_close(c);
  }
}

typedef struct cwreq {
  uv_write_t req;
  conn *c;
  size_t len;
  uint8_t data[];
} cwreq;

static void conn_pump(conn *c);
static void conn_read_start(conn *c);

static void conn_on_write(uv_write_t *req, int status) {
  cwreq *w = (cwreq *)req;
  conn *c = w->c;
  c->tx_inflight -= w->len;
  free(w);
  if (status) {
    if (!c->werr)
      c->werr = status;
    return;
  }
  if (c->closing)
    return;
  if (c->visitor)
    conn_pump(c);
  else if (!c->reading && !c->eof && c->tx_inflight < TX_INFLIGHT_MAX / 2)
    conn_read_start(c); /* the echo had paused while its writes backed up */
}

static void conn_write(conn *c, const uint8_t *d, size_t n) {
  cwreq *w = malloc(sizeof *w + n);
  assert_non_null(w);
  w->c = c;
  w->len = n;
  memcpy(w->data, d, n);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write) != 0) {
    free(w);
    if (!c->werr)
      c->werr = UV_EPIPE;
    return;
  }
  c->tx_inflight += n;
}

/* Visitor: queues generated bytes up to the in-flight limit, then FIN. */
static void conn_pump(conn *c) {
  while (c->tx_queued < c->tx_total && c->tx_inflight < TX_INFLIGHT_MAX &&
         !c->werr && !c->closing) {
    uint64_t left = c->tx_total - c->tx_queued;
    size_t n = left < CHUNK ? (size_t)left : CHUNK;
    uint8_t buf[CHUNK];
    gen_fill(c->seed, c->tx_queued, buf, n);
    c->tx_hash = fnv1a(c->tx_hash, buf, n);
    c->tx_queued += n;
    conn_write(c, buf, n);
  }
  if (c->tx_queued == c->tx_total)
    conn_shutdown(c);
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  conn *c = h->data;
  (void)hint;
  *b = uv_buf_init((char *)c->rbuf, sizeof c->rbuf);
}

static void conn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *c = s->data;
  if (n == 0)
    return;
  if (n > 0) {
    c->rx_bytes += (uint64_t)n;
    c->rx_hash = fnv1a(c->rx_hash, (const uint8_t *)b->base, (size_t)n);
    if (!c->visitor) {
      conn_write(c, (const uint8_t *)b->base, (size_t)n);
      if (c->tx_inflight > TX_INFLIGHT_MAX) {
        uv_read_stop(s);
        c->reading = 0;
      }
    }
    return;
  }
  uv_read_stop(s);
  c->reading = 0;
  c->t_end = now_ms(c->t);
  if (n == UV_EOF) {
    c->eof = 1;
    if (!c->visitor)
      conn_shutdown(c); /* after the echoed bytes */
  } else {
    c->rerr = (int)n;
  }
  conn_maybe_close(c);
}

static void conn_read_start(conn *c) {
  if (c->closing || c->eof || c->rerr)
    return;
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read);
}

static conn *conn_new(ht *t, int visitor) {
  conn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->t = t;
  c->visitor = visitor;
  c->tx_hash = c->rx_hash = FNV_OFFSET;
  c->t_start = now_ms(t);
  uv_tcp_init(&t->loop, &c->tcp);
  c->tcp.data = c;
  c->next = t->conns;
  t->conns = c;
  return c;
}

static void on_svc_conn(uv_stream_t *l, int status) {
  ht *t = l->data;
  if (status < 0)
    return;
  conn *c = conn_new(t, 0);
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  conn_read_start(c);
}

static void vis_on_connect(uv_connect_t *req, int status) {
  conn *c = req->data;
  c->conn_status = status;
  if (status) {
    c->rerr = status;
    c->t_end = now_ms(c->t);
    conn_close(c);
    return;
  }
  conn_read_start(c);
  conn_pump(c);
}

/* A visitor of the legitimate proxy: sends `bytes` of stream `seed`, FIN,
 * and expects exactly the same bytes back, then EOF. */
static conn *vis_new(ht *t, uint64_t bytes, uint32_t seed) {
  conn *c = conn_new(t, 1);
  c->tx_total = bytes;
  c->seed = seed;
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", t->pub, &a), 0);
  c->creq.data = c;
  assert_int_equal(uv_tcp_connect(&c->creq, &c->tcp,
                                  (const struct sockaddr *)&a,
                                  vis_on_connect),
                   0);
  return c;
}

static void vis_check(const conn *v, const char *when) {
  if (v->conn_status || v->rerr || v->werr || !v->eof ||
      v->rx_bytes != v->tx_total || v->rx_hash != v->tx_hash)
    fail_msg("legitimate tunnel broken %s: connect %s, read %s, write %s, "
             "eof %d; sent %llu bytes (hash %016llx), echoed %llu (hash "
             "%016llx)",
             when, uv_err_name(v->conn_status), uv_err_name(v->rerr),
             uv_err_name(v->werr), v->eof,
             (unsigned long long)v->tx_total, (unsigned long long)v->tx_hash,
             (unsigned long long)v->rx_bytes,
             (unsigned long long)v->rx_hash);
}

/* One echo through the tunnel, start to finish. */
static void echo_now(ht *t, uint32_t seed, const char *when) {
  conn *v = vis_new(t, ECHO_BYTES, seed);
  WAIT(t, v->closed);
  vis_check(v, when);
}

/* ----- server and legitimate client */

static void on_cli_state(tunnel_client *c, int status, const char *msg,
                         void *ud) {
  ht *t = ud;
  (void)c;
  t->cli_state_calls++;
  t->cli_state = status;
  if (status == 0)
    snprintf(t->run_id, sizeof t->run_id, "%s", msg ? msg : "");
}

static void on_px_status(tunnel_proxy *p, int status, const char *msg,
                         void *ud) {
  ht *t = ud;
  (void)p;
  t->px_calls++;
  t->px_status = status;
  snprintf(t->px_msg, sizeof t->px_msg, "%s", msg ? msg : "");
  const char *colon = strrchr(t->px_msg, ':');
  t->pub = status == 0 && colon ? (uint16_t)atoi(colon + 1) : 0;
}

/* Server, echo service and a logged-in client with a registered proxy that
 * has echoed once. */
static void ht_setup_opts(ht *t, uint64_t seed, const ht_opts *o) {
  memset(t, 0, sizeof *t);
  t->log_server.capture = o && o->log_capture;
  t->rng.s = seed;
  assert_int_equal(uv_loop_init(&t->loop), 0);
  it_waiter_init(&t->w, &t->loop);
  it_pick_range(&t->lo, &t->hi);
  t->hr0 = uv_hrtime();

  tunnel_config *cfg = config_new(t, TOKEN, "server");
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1"), 0);
  assert_int_equal(tunnel_config_set_port_range(cfg, t->lo, t->hi), 0);
  assert_int_equal(tunnel_config_set_max_message_size(cfg, MAX_MSG), 0);
  assert_int_equal(tunnel_config_set_max_control_backlog(cfg, MAX_BACKLOG),
                   0);
  if (o && o->tune)
    o->tune(cfg);
  assert_int_equal(tunnel_server_new(&t->srv, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(t->srv, &t->srv_port), 0);
  /* The same port on ::1: a peer there comes from another address than
   * the clients on 127.0.0.1, all on loopback. */
  t->have_v6 = tunnel_server_listen(t->srv, "::1", t->srv_port) == 0;

  uv_tcp_init(&t->loop, &t->svc);
  t->svc.data = t;
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  assert_int_equal(uv_tcp_bind(&t->svc, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&t->svc, 511, on_svc_conn), 0);
  int len = sizeof a;
  assert_int_equal(uv_tcp_getsockname(&t->svc, (struct sockaddr *)&a, &len),
                   0);
  t->svc_port = ntohs(a.sin_port);

  cfg = config_new(t, TOKEN, "client");
  assert_int_equal(tunnel_client_new(&t->cli, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_client_set_state_cb(t->cli, on_cli_state, t), 0);
  assert_int_equal(tunnel_proxy_new(&t->px, t->cli, "echo", TUNNEL_PROXY_TCP),
                   0);
  assert_int_equal(tunnel_proxy_set_local(t->px, "127.0.0.1", t->svc_port),
                   0);
  assert_int_equal(tunnel_proxy_set_status_cb(t->px, on_px_status, t), 0);
  assert_int_equal(tunnel_proxy_start(t->px), 0);
  assert_int_equal(tunnel_client_connect(t->cli, "127.0.0.1", t->srv_port),
                   0);
  WAIT(t, t->cli_state_calls > 0);
  if (t->cli_state != 0)
    fail_msg("legitimate login failed: %s", tunnel_err_name(t->cli_state));
  WAIT(t, t->px_calls > 0);
  if (t->px_status != 0 || !t->pub)
    fail_msg("legitimate proxy refused: %s (%s)",
             tunnel_err_name(t->px_status), t->px_msg);
  assert_true(t->run_id[0] != '\0');
  echo_now(t, 1, "before the attack");
  assert_int_equal(tunnel_server_client_count(t->srv), 1);
}

static void ht_setup(ht *t, uint64_t seed) { ht_setup_opts(t, seed, NULL); }

/* The legitimate client has not been disturbed: still its first session. */
static void legit_intact(ht *t) {
  assert_int_equal(t->cli_state_calls, 1);
  assert_int_equal(t->cli_state, 0);
  assert_int_equal(t->px_calls, 1);
}

static void on_cli_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((ht *)ud)->cli_closed = 1;
}

static void on_bad_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((badcl *)ud)->closed = 1;
}

static void on_srv_closed(tunnel_server *s, void *ud) {
  (void)s;
  ((ht *)ud)->srv_closed = 1;
}

static void svc_closed(uv_handle_t *h) { ((ht *)h->data)->svc_closed = 1; }

static int tunnel_all_closed(ht *t) {
  if (!t->srv_closed || !t->cli_closed)
    return 0;
  for (int i = 0; i < t->nbad; i++)
    if (!t->bad[i].closed)
      return 0;
  return 1;
}

/* Records a failure to report once the test has run to its end, so that
 * one library bug does not hide the checks after it. */
static void ht_fail_later(ht *t, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "# FAILURE (reported at the end): %s\n", msg);
  size_t len = strlen(t->deferred);
  snprintf(t->deferred + len, sizeof t->deferred - len, "%s%s",
           len ? "; " : "", msg);
}

/* Closes the tunnel objects while the attackers that are still connected
 * stay connected (the server must end them itself), checks that the
 * library returned every byte, then closes everything and the loop. */
static void ht_teardown(ht *t) {
  int open = 0;
  for (it_atk *a = t->atks; a; a = a->next)
    open += !a->closing && a->connected && !a->dead && !a->rerr && !a->werr;
  t->cli_close_called = 1;
  assert_int_equal(tunnel_client_close(t->cli, on_cli_closed, t), 0);
  for (int i = 0; i < t->nbad; i++) {
    badcl *b = &t->bad[i];
    if (!b->close_called) {
      b->close_called = 1;
      assert_int_equal(tunnel_client_close(b->c, on_bad_closed, b), 0);
    }
  }
  assert_int_equal(tunnel_server_close(t->srv, on_srv_closed, t), 0);
  it_waiter_arm(&t->w, CLOSE_MS);
  while (!tunnel_all_closed(t) && !t->w.fired)
    uv_run(&t->loop, UV_RUN_ONCE);
  it_waiter_disarm(&t->w);
  if (!t->srv_closed)
    fail_msg("tunnel_server_close did not complete within %u ms while %d "
             "attacker connection(s) stayed open (library memory still "
             "held: %zu bytes)",
             CLOSE_MS, open, t->mem.cur);
  if (!tunnel_all_closed(t))
    fail_msg("a tunnel_client did not close within %u ms", CLOSE_MS);
  if (t->mem.cur != 0)
    fail_msg("library leaked %zu bytes through the allocator", t->mem.cur);
  for (conn *c = t->conns; c; c = c->next)
    conn_close(c);
  for (it_atk *a = t->atks; a; a = a->next)
    it_atk_close(a);
  uv_close((uv_handle_t *)&t->svc, svc_closed);
  assert_int_equal(it_waiter_finish(&t->w, IT_WAIT_MS), 0);
  while (t->conns) {
    conn *c = t->conns;
    t->conns = c->next;
    free(c);
  }
  it_atk_free_all(&t->atks);
  it_buf_free(&t->cap.text);
  fprintf(stderr, "# test took %.2f s; library memory peak %zu bytes\n",
          (double)(uv_hrtime() - t->hr0) / 1e9, t->mem.peak);
  if (t->deferred[0])
    fail_msg("%s", t->deferred);
}

/* ----------------------------------------------------- hand-made frames */

static const tunnel__mem *libc_mem(void) { return tunnel__mem_default(); }

/* Appends one encoded frp message. */
static void put_msg(it_buf *b, const tunnel__msg *m) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, libc_mem(), 1024);
  assert_int_equal(tunnel__msg_encode(libc_mem(), m, &q), 0);
  while (q.size) {
    tunnel__iov v;
    tunnel__bufq_iov(&q, &v, 1);
    it_buf_put(b, v.base, v.len);
    tunnel__bufq_consume(&q, v.len);
  }
  tunnel__bufq_free(&q);
}

static int64_t unix_now(void) { return (int64_t)time(NULL); }

/* The privilege key of `token` at `ts`, as a client computes it. */
static void key_of(const char *token, int64_t ts, char out[33]) {
  assert_int_equal(tunnel__privilege_key(token, strlen(token), ts, out), 0);
}

/* Login or NewWorkConn (type `type`) signed with `token` at `key_ts` and
 * carrying `ts`; `key` overrides the computed key (NULL: computed, "":
 * none). */
static void put_signed(it_buf *b, uint8_t type, const char *token,
                       int64_t key_ts, int64_t ts, const char *key,
                       const char *run_id) {
  tunnel__msg m;
  tunnel__msg_init(&m, type);
  char k[33];
  if (!key) {
    key_of(token, key_ts, k);
    key = k;
  }
  const tunnel__mem *mem = libc_mem();
  assert_int_equal(tunnel__msg_set_str(mem, &m.privilege_key, key), 0);
  m.timestamp = ts;
  if (run_id)
    assert_int_equal(tunnel__msg_set_str(mem, &m.run_id, run_id), 0);
  if (type == TUNNEL__MSG_LOGIN) {
    assert_int_equal(tunnel__msg_set_str(mem, &m.version, "0.52.3"), 0);
    assert_int_equal(tunnel__msg_set_str(mem, &m.hostname, "attacker"), 0);
    assert_int_equal(tunnel__msg_set_str(mem, &m.os, "linux"), 0);
    assert_int_equal(tunnel__msg_set_str(mem, &m.arch, "amd64"), 0);
    m.pool_count = 1;
  }
  put_msg(b, &m);
  tunnel__msg_clear(mem, &m);
}

static void put_login(it_buf *b, const char *token, int64_t key_ts,
                      int64_t ts, const char *key) {
  put_signed(b, TUNNEL__MSG_LOGIN, token, key_ts, ts, key, NULL);
}

/* Decodes the frp messages at the start of p[0..n): up to `max` into
 * `out` (to be cleared by the caller); *used: bytes they took. Stops at an
 * incomplete message; -1 on a malformed one. */
static int decode_msgs(const uint8_t *p, size_t n, tunnel__msg *out,
                       int max, size_t *used) {
  tunnel__msg_reader r;
  tunnel__msg_reader_init(&r, libc_mem(), 1u << 20);
  int k = 0;
  size_t off = 0;
  while (k < max && off < n) {
    size_t u = 0;
    int rc = tunnel__msg_reader_feed(&r, p + off, n - off, &u, &out[k]);
    off += u;
    if (rc < 0) {
      tunnel__msg_reader_free(&r);
      for (int i = 0; i < k; i++)
        tunnel__msg_clear(libc_mem(), &out[i]);
      return -1;
    }
    if (rc == 0)
      break;
    k++;
  }
  tunnel__msg_reader_free(&r);
  if (used)
    *used = off;
  return k;
}

static void clear_msgs(tunnel__msg *m, int n) {
  for (int i = 0; i < n; i++)
    tunnel__msg_clear(libc_mem(), &m[i]);
}

/* The first message in p[0..n) is complete and of type `type`: 1, with
 * its error (may be "") copied out; 0 when incomplete. */
static int first_msg(const uint8_t *p, size_t n, uint8_t type, char *err,
                     size_t errsz, char *run_id, size_t ridsz,
                     size_t *used) {
  tunnel__msg m[1];
  int k = decode_msgs(p, n, m, 1, used);
  if (k <= 0)
    return k;
  if (m[0].type != type)
    fail_msg("expected %s from the server, got %s",
             tunnel__msg_type_name(type), tunnel__msg_type_name(m[0].type));
  if (err)
    snprintf(err, errsz, "%s", m[0].error ? m[0].error : "");
  if (run_id)
    snprintf(run_id, ridsz, "%s", m[0].run_id ? m[0].run_id : "");
  clear_msgs(m, 1);
  return 1;
}

/* The messages the server sent encrypted, after its LoginResp (which ends
 * at `from`): up to `max` into `out` (to be cleared by the caller). */
static int encrypted_msgs(const uint8_t *p, size_t n, size_t from,
                          tunnel__msg *out, int max) {
  if (n <= from)
    return 0;
  tunnel__cfb dec;
  memset(&dec, 0, sizeof dec);
  assert_int_equal(tunnel__cfb_init_decrypt(&dec, TOKEN, strlen(TOKEN)), 0);
  size_t len = n - from, plain_n = 0;
  uint8_t *plain = malloc(len);
  assert_non_null(plain);
  assert_int_equal(tunnel__cfb_decrypt(&dec, p + from, len, plain, &plain_n),
                   0);
  tunnel__cfb_free(&dec);
  int k = decode_msgs(plain, plain_n, out, max, NULL);
  free(plain);
  if (k < 0)
    fail_msg("the server's encrypted control stream does not decrypt to "
             "frp messages");
  return k;
}

/* The same, as a string of type letters. */
static void encrypted_types(const uint8_t *p, size_t n, size_t from,
                            char *types, size_t cap) {
  tunnel__msg m[16];
  int k = encrypted_msgs(p, n, from, m, 16);
  size_t i;
  for (i = 0; i < (size_t)k && i + 1 < cap; i++)
    types[i] = (char)m[i].type;
  types[i] = '\0';
  clear_msgs(m, k);
}

/* Appends `plain` encrypted as a client's first encrypted bytes (its IV,
 * then the ciphertext). */
static void put_encrypted(it_buf *b, const it_buf *plain, it_rng *rng) {
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  it_rng_fill(rng, iv, sizeof iv);
  tunnel__cfb enc;
  memset(&enc, 0, sizeof enc);
  assert_int_equal(tunnel__cfb_init_encrypt(&enc, TOKEN, strlen(TOKEN), iv),
                   0);
  uint8_t *out = malloc(plain->len + TUNNEL__CFB_IV_SIZE);
  assert_non_null(out);
  size_t out_n = 0;
  assert_int_equal(tunnel__cfb_encrypt(&enc, plain->p, plain->len, out,
                                       &out_n),
                   0);
  tunnel__cfb_free(&enc);
  it_buf_put(b, out, out_n);
  free(out);
}

/* Appends `plain` encrypted with a client's cipher stream `enc`, which
 * emits its IV before its first ciphertext. */
static void put_encrypted_more(it_buf *b, tunnel__cfb *enc,
                               const it_buf *plain) {
  uint8_t *out = malloc(plain->len + TUNNEL__CFB_IV_SIZE);
  assert_non_null(out);
  size_t out_n = 0;
  assert_int_equal(tunnel__cfb_encrypt(enc, plain->p, plain->len, out,
                                       &out_n),
                   0);
  it_buf_put(b, out, out_n);
  free(out);
}

static void put_new_proxy(it_buf *b, const char *name, int64_t port) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_PROXY);
  assert_int_equal(tunnel__msg_set_str(libc_mem(), &m.proxy_name, name), 0);
  assert_int_equal(tunnel__msg_set_str(libc_mem(), &m.proxy_type, "tcp"), 0);
  m.remote_port = port;
  put_msg(b, &m);
  tunnel__msg_clear(libc_mem(), &m);
}

/* A yamux stream opening with the spec's initial window (no extra grant). */
static void put_syn(it_buf *b, uint32_t id) {
  it_ymx(b, 0, IT_YW, IT_SYN, id, 0);
}

/* ---------------------------------------------------------- attackers */

static it_atk *atk_new(ht *t, const char *name) {
  return it_atk_new(&t->loop, &t->atks, name, t->srv_port, 0);
}

static it_atk *atk_bytes(ht *t, const char *name, const it_buf *tx) {
  it_atk *a = atk_new(t, name);
  it_buf_put(&a->tx, tx->p, tx->len);
  return a;
}

/* Waits until the server has ended every attacker in a[0..n) and checks
 * that each took at most `bound_ms` after its last byte. Prints the
 * slowest. */
static void wait_closed_within(ht *t, it_atk **a, int n, uint64_t bound_ms,
                               const char *what) {
  it_waiter_arm(&t->w, bound_ms + 2000u);
  for (;;) {
    int all = 1;
    for (int i = 0; i < n && all; i++)
      all = it_atk_ended(a[i]);
    if (all || t->w.fired)
      break;
    uv_run(&t->loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&t->w);
  uint64_t worst = 0;
  const char *worst_name = "";
  for (int i = 0; i < n; i++) {
    if (!it_atk_ended(a[i]))
      fail_msg("%s: attacker \"%s\" still connected %llu ms after its "
               "last byte (bound %llu ms)",
               what, a[i]->name,
               (unsigned long long)(now_ms(t) - (a[i]->t_sent
                                                     ? a[i]->t_sent
                                                     : a[i]->t_connect)),
               (unsigned long long)bound_ms);
    if (a[i]->conn_status)
      fail_msg("%s: attacker \"%s\" could not connect: %s", what, a[i]->name,
               uv_err_name(a[i]->conn_status));
    uint64_t ms = it_atk_close_ms(a[i]);
    if (ms > bound_ms)
      fail_msg("%s: attacker \"%s\" closed (%s) only after %llu ms (bound "
               "%llu ms)",
               what, a[i]->name, it_atk_how(a[i]), (unsigned long long)ms,
               (unsigned long long)bound_ms);
    if (ms >= worst) {
      worst = ms;
      worst_name = a[i]->name;
    }
  }
  fprintf(stderr, "# %s: %d connection(s) closed by the server, slowest "
          "after %llu ms (%s)\n",
          what, n, (unsigned long long)worst, worst_name);
}

/* The yamux output an attacker got: a GoAway(protocol error) and nothing
 * after it, every frame well formed. */
static void expect_goaway(const it_atk *a) {
  it_ymx_scan s;
  it_ymx_scan_bytes(a->rx.p, a->rx.len, 0, NULL, &s);
  if (s.bad || s.truncated)
    fail_msg("attacker \"%s\": malformed yamux output from the server",
             a->name);
  if (s.goaway != 1 || s.goaway_code != 1 || s.frames_after_goaway)
    fail_msg("attacker \"%s\": expected one GoAway(protocol error) as the "
             "server's last frame; got %d GoAway(s), code %u, %d frame(s) "
             "after it (%d frames, %zu bytes)",
             a->name, s.goaway, s.goaway_code, s.frames_after_goaway,
             s.frames, a->rx.len);
}

static int rst_seen(const it_atk *a, uint32_t id) {
  it_ymx_scan s;
  it_ymx_scan_bytes(a->rx.p, a->rx.len, 0, NULL, &s);
  return it_scan_has(s.rst, s.nrst, id);
}

static int ping_acks(const it_atk *a) {
  it_ymx_scan s;
  it_ymx_scan_bytes(a->rx.p, a->rx.len, 0, NULL, &s);
  return s.ping_acks;
}

/* Stream `id`'s data as the server sent it on a yamux attacker. */
static void stream_data(const it_atk *a, uint32_t id, it_buf *out) {
  it_ymx_scan s;
  out->len = 0;
  it_ymx_scan_bytes(a->rx.p, a->rx.len, id, out, &s);
}

static int fin_seen(const it_atk *a, uint32_t id) {
  it_ymx_scan s;
  it_ymx_scan_bytes(a->rx.p, a->rx.len, 0, NULL, &s);
  return it_scan_has(s.fin, s.nfin, id);
}

/* Waits for `cond` with a bound; fails with `what`. */
#define WAIT_MS(t, cond, ms) IT_WAIT(&(t)->w, cond, ms)

/* ---------------------------------------------------------------- tests */

/* 1. Random bytes (fixed seed, several sizes) as the first bytes of a
 * connection, in both of the server's modes: a first byte 0x00 (taken as
 * yamux) and a printable or frp-type first byte (taken as a raw frp
 * message). Every connection is closed at once; yamux ones get a
 * GoAway(protocol error) first. */
static void test_garbage(void **state) {
  (void)state;
  static const size_t sizes[] = {12, 13, 64, 255, 256, 257, 1000, 4096,
                                 65536};
  static const char frp_types[] = "o1pc2wrsvh4u3inm56";
  enum { NS = sizeof sizes / sizeof sizes[0] };
  ht t;
  ht_setup(&t, 0x6a7ba6e0001ull);
  it_atk *a[4 * NS];
  int n = 0, nymx = 0;
  char names[4 * NS][48];
  /* yamux first */
  for (size_t i = 0; i < NS; i++) {
    it_buf b = {0};
    uint8_t zero = 0;
    it_buf_put(&b, &zero, 1);
    it_buf_rand(&b, &t.rng, sizes[i] - 1);
    snprintf(names[n], sizeof names[n], "yamux garbage %zu B", sizes[i]);
    a[n] = atk_bytes(&t, names[n], &b);
    n++;
    it_buf_free(&b);
  }
  nymx = n;
  for (size_t i = 0; i < NS; i++) {
    /* printable first byte: almost always no frp type at all */
    it_buf b = {0};
    uint8_t first = (uint8_t)(0x21 + it_rng_next(&t.rng) % 94);
    it_buf_put(&b, &first, 1);
    it_buf_rand(&b, &t.rng, sizes[i] - 1);
    snprintf(names[n], sizeof names[n], "raw garbage 0x%02x %zu B", first,
             sizes[i]);
    a[n] = atk_bytes(&t, names[n], &b);
    n++;
    it_buf_free(&b);
    /* a real frp type letter, then random: the length is random too */
    b.len = 0;
    first = (uint8_t)frp_types[it_rng_next(&t.rng) % (sizeof frp_types - 1)];
    it_buf_put(&b, &first, 1);
    it_buf_rand(&b, &t.rng, sizes[i] - 1);
    snprintf(names[n], sizeof names[n], "raw '%c' + garbage %zu B", first,
             sizes[i]);
    a[n] = atk_bytes(&t, names[n], &b);
    n++;
    it_buf_free(&b);
    /* a real type and a plausible length: random bytes as the JSON body */
    b.len = 0;
    first = (uint8_t)frp_types[it_rng_next(&t.rng) % (sizeof frp_types - 1)];
    size_t body = sizes[i] > 9 ? sizes[i] - 9 : 1;
    if (body > MAX_MSG)
      body = MAX_MSG;
    it_frp_hdr(&b, first, body);
    it_buf_rand(&b, &t.rng, sizes[i] > 9 + body ? sizes[i] - 9 : body);
    snprintf(names[n], sizeof names[n], "raw '%c' len %zu random body %zu B",
             first, body, sizes[i]);
    a[n] = atk_bytes(&t, names[n], &b);
    n++;
    it_buf_free(&b);
  }
  conn *during = vis_new(&t, ECHO_BYTES, 2);
  wait_closed_within(&t, a, n, FAST_MS, "garbage");
  for (int i = 0; i < nymx; i++)
    expect_goaway(a[i]);
  WAIT(&t, during->closed);
  vis_check(during, "during the garbage");
  echo_now(&t, 3, "after the garbage");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 2. A raw frp message header announcing a body above max_message_size, or
 * a negative length: the connection is closed at once, from the header
 * alone (the body is never sent, so waiting for it would show as a close
 * only at the identification timeout). Inside a yamux stream the same
 * header resets that stream at once, and the session goes on. */
static void test_oversized_header(void **state) {
  (void)state;
  static const struct {
    uint8_t type;
    uint64_t len;
    const char *name;
  } hdrs[] = {
      {'o', MAX_MSG + 1u, "Login, max_message_size + 1"},
      {'w', (uint64_t)1 << 40, "NewWorkConn, 1 TiB"},
      {'p', UINT64_MAX, "NewProxy, length -1"},
      {'h', (uint64_t)1 << 63, "Ping, length INT64_MIN"},
      {'o', UINT64_MAX >> 1, "Login, length INT64_MAX"},
  };
  enum { NH = sizeof hdrs / sizeof hdrs[0] };
  ht t;
  ht_setup(&t, 0x0e5eed0002ull);
  it_atk *raw[NH + 1], *mux[NH];
  char names[2 * NH][64];
  for (int i = 0; i < NH; i++) {
    it_buf b = {0};
    it_frp_hdr(&b, hdrs[i].type, hdrs[i].len);
    snprintf(names[i], sizeof names[i], "raw %s", hdrs[i].name);
    raw[i] = atk_bytes(&t, names[i], &b);
    b.len = 0;
    put_syn(&b, 1);
    uint8_t h[9];
    h[0] = hdrs[i].type;
    it_put_be(h + 1, hdrs[i].len, 8);
    it_ymx_data(&b, 1, 0, h, sizeof h);
    snprintf(names[NH + i], sizeof names[NH + i], "stream %s", hdrs[i].name);
    mux[i] = atk_bytes(&t, names[NH + i], &b);
    it_buf_free(&b);
  }
  /* The header in two pieces, 200 ms apart: judged when it completes. */
  it_atk *split = atk_new(&t, "raw Login, max_message_size + 1, split");
  it_frp_hdr(&split->tx, 'o', MAX_MSG + 1u);
  split->tx.len = 5;
  raw[NH] = split;

  conn *during = vis_new(&t, ECHO_BYTES, 2);
  WAIT(&t, split->t_sent != 0);
  it_sleep(&t.w, 200);
  assert_false(it_atk_ended(split)); /* an incomplete header is no reason */
  uint8_t rest[4];
  it_put_be(rest, MAX_MSG + 1u, 4);
  it_atk_write(split, rest, sizeof rest);
  wait_closed_within(&t, raw, NH + 1, FAST_MS, "oversized raw header");

  /* yamux: that stream is reset; the session still answers a ping. */
  uint64_t t0 = now_ms(&t);
  for (int i = 0; i < NH; i++) {
    WAIT_MS(&t, rst_seen(mux[i], 1) || it_atk_ended(mux[i]), FAST_MS);
    if (!rst_seen(mux[i], 1))
      fail_msg("attacker \"%s\": session closed (%s) instead of resetting "
               "the stream",
               mux[i]->name, it_atk_how(mux[i]));
    it_buf p = {0};
    it_ymx(&p, 0, IT_YP, IT_SYN, 0, 0x5eed0000u + (uint32_t)i);
    it_atk_write(mux[i], p.p, p.len);
    it_buf_free(&p);
  }
  for (int i = 0; i < NH; i++) {
    WAIT_MS(&t, ping_acks(mux[i]) > 0 || it_atk_ended(mux[i]), FAST_MS);
    if (ping_acks(mux[i]) != 1)
      fail_msg("attacker \"%s\": the session did not survive the reset "
               "stream (%s)",
               mux[i]->name, it_atk_how(mux[i]));
    it_ymx_scan s;
    it_ymx_scan_bytes(mux[i]->rx.p, mux[i]->rx.len, 0, NULL, &s);
    assert_int_equal(s.goaway, 0);
    assert_int_equal(s.bad, 0);
  }
  fprintf(stderr, "# oversized header in a stream: %d stream(s) reset, "
          "sessions alive, within %llu ms\n",
          NH, (unsigned long long)(now_ms(&t) - t0));
  for (int i = 0; i < NH; i++)
    it_atk_close(mux[i]);
  WAIT(&t, during->closed);
  vis_check(during, "during the oversized headers");
  echo_now(&t, 3, "after the oversized headers");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 3. Well-framed control messages that are not valid: bad JSON, an unknown
 * type letter, fields of the wrong JSON type, bodies that are not objects,
 * messages that may not come first. On a yamux stream that stream is reset
 * and the session goes on (it answers a ping); as the first bytes of a raw
 * connection the connection is closed. And in one session, a bad stream
 * does not prevent a valid login on the next stream; garbage on that
 * logged-in (encrypted) control stream then ends the session. */
static const struct {
  uint8_t type;
  const char *body;
  const char *what;
} bad_msgs[] = {
    {'o', "{\"version\":", "truncated JSON"},
    {'o', "not json", "not JSON"},
    {'o', "", "empty body"},
    {'o', "{\"version\":\"1\"} x", "trailing bytes"},
    {'o', "{\"version\":\"1\",}", "trailing comma"},
    {'Z', "{}", "unknown type letter"},
    {0x7f, "{}", "type letter DEL"},
    {'o', "{\"version\":1}", "number for a string"},
    {'o', "{\"timestamp\":\"123\"}", "string for an integer"},
    {'o', "{\"pool_count\":1.5}", "fraction for an integer"},
    {'o', "{\"timestamp\":1e400}", "integer out of range"},
    {'o', "{\"timestamp\":9007199254740993}", "integer beyond 2^53"},
    {'o', "{\"metas\":[1,2]}", "array for a map"},
    {'o', "{\"metas\":{\"k\":7}}", "number in a string map"},
    {'o', "{\"user\":\"a\\u0000b\"}", "NUL in a string"},
    {'o', "{\"user\":\"\\u12\"}", "\\u escape without four hex digits"},
    {'w', "{\"run_id\":42}", "number for run_id"},
    {'w', "{\"privilege_key\":{}}", "object for a string"},
    {'o', "[]", "array body"},
    {'o', "\"login\"", "string body"},
    {'o', "7", "number body"},
    {'o', NULL, "500 nested arrays"},
    {'p', "{\"proxy_name\":\"x\",\"proxy_type\":\"tcp\"}", "NewProxy first"},
    {'h', "{}", "Ping first"},
    {'1', "{\"run_id\":\"x\"}", "LoginResp from a client"},
    {'s', "{}", "StartWorkConn from a client"},
};

static void put_bad_msg(it_buf *b, int i) {
  if (bad_msgs[i].body) {
    it_frp(b, bad_msgs[i].type, bad_msgs[i].body);
    return;
  }
  /* Deep nesting within the size limit: the parser must not recurse into
   * trouble (and the body is no object anyway). */
  char deep[1001];
  memset(deep, '[', 500);
  memset(deep + 500, ']', 500);
  deep[1000] = '\0';
  it_frp(b, bad_msgs[i].type, deep);
}

static void test_bad_control_messages(void **state) {
  (void)state;
  enum { NB = sizeof bad_msgs / sizeof bad_msgs[0] };
  ht t;
  ht_setup(&t, 0x0e5eed0003ull);
  it_atk *mux[NB], *raw[NB];
  char names[2 * NB][64];
  for (int i = 0; i < NB; i++) {
    it_buf m = {0}, b = {0};
    put_bad_msg(&m, i);
    put_syn(&b, 1);
    it_ymx_data(&b, 1, 0, m.p, m.len);
    snprintf(names[i], sizeof names[i], "stream: %s", bad_msgs[i].what);
    mux[i] = atk_bytes(&t, names[i], &b);
    snprintf(names[NB + i], sizeof names[NB + i], "raw: %s",
             bad_msgs[i].what);
    raw[i] = atk_bytes(&t, names[NB + i], &m);
    it_buf_free(&m);
    it_buf_free(&b);
  }
  /* One session: a bad stream, then a login on the next stream. */
  it_atk *sess = atk_new(&t, "bad stream then login");
  put_syn(&sess->tx, 1);
  it_ymx_data(&sess->tx, 1, 0, "o\0\0\0\0\0\0\0\x08not json", 17);

  conn *during = vis_new(&t, ECHO_BYTES, 2);
  wait_closed_within(&t, raw, NB, FAST_MS, "bad message on a raw connection");
  uint64_t t0 = now_ms(&t);
  for (int i = 0; i < NB; i++) {
    WAIT_MS(&t, rst_seen(mux[i], 1) || it_atk_ended(mux[i]), FAST_MS);
    if (!rst_seen(mux[i], 1))
      fail_msg("attacker \"%s\": stream not reset (session %s)",
               mux[i]->name, it_atk_how(mux[i]));
    it_buf p = {0};
    it_ymx(&p, 0, IT_YP, IT_SYN, 0, (uint32_t)i);
    it_atk_write(mux[i], p.p, p.len);
    it_buf_free(&p);
  }
  for (int i = 0; i < NB; i++) {
    WAIT_MS(&t, ping_acks(mux[i]) > 0 || it_atk_ended(mux[i]), FAST_MS);
    if (ping_acks(mux[i]) != 1)
      fail_msg("attacker \"%s\": the session did not survive (%s)",
               mux[i]->name, it_atk_how(mux[i]));
    it_ymx_scan s;
    it_ymx_scan_bytes(mux[i]->rx.p, mux[i]->rx.len, 0, NULL, &s);
    assert_int_equal(s.goaway, 0);
    assert_int_equal(s.bad, 0);
    it_atk_close(mux[i]);
  }
  fprintf(stderr, "# bad message on a stream: %d stream(s) reset, sessions "
          "alive, within %llu ms\n",
          NB, (unsigned long long)(now_ms(&t) - t0));

  /* The same session logs in on stream 3. */
  WAIT_MS(&t, rst_seen(sess, 1) || it_atk_ended(sess), FAST_MS);
  assert_true(rst_seen(sess, 1));
  it_buf login = {0}, b = {0};
  int64_t ts = unix_now();
  put_login(&login, TOKEN, ts, ts, NULL);
  put_syn(&b, 3);
  it_ymx_data(&b, 3, 0, login.p, login.len);
  it_atk_write(sess, b.p, b.len);
  it_buf d = {0};
  char err[256] = "", rid[64] = "";
  WAIT_MS(&t, (stream_data(sess, 3, &d),
               first_msg(d.p, d.len, TUNNEL__MSG_LOGIN_RESP, err, sizeof err,
                         rid, sizeof rid, NULL) == 1) ||
                  it_atk_ended(sess),
          FAST_MS);
  if (err[0] || !rid[0])
    fail_msg("login on the stream after a bad one: error \"%s\", run id "
             "\"%s\" (%s)",
             err, rid, it_atk_how(sess));
  WAIT_MS(&t, tunnel_server_client_count(t.srv) == 2, FAST_MS);
  echo_now(&t, 3, "while an attacker is logged in");
  /* Garbage on the encrypted control stream ends that client. */
  b.len = 0;
  uint8_t junk[64];
  it_rng_fill(&t.rng, junk, sizeof junk);
  it_ymx_data(&b, 3, 0, junk, sizeof junk);
  it_atk_write(sess, b.p, b.len);
  it_atk *one[1] = {sess};
  wait_closed_within(&t, one, 1, FAST_MS, "garbage on a control stream");
  WAIT_MS(&t, tunnel_server_client_count(t.srv) == 1, FAST_MS);
  it_buf_free(&login);
  it_buf_free(&b);
  it_buf_free(&d);

  WAIT(&t, during->closed);
  vis_check(during, "during the bad messages");
  echo_now(&t, 4, "after the bad messages");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 4. yamux protocol violations, each on its own connection: the server
 * answers GoAway(protocol error) and closes. Also a peer that floods pings
 * and never reads the answers: closed as abusive once the answers pile up
 * beyond max_control_backlog, long before the identification timeout, and
 * without the server buffering them. */
static const char *violation(int i, it_buf *b) {
  static const uint8_t x = 'x';
  switch (i) {
  case 0: /* a valid ping first, so that the bad version comes in a frame
           * the sniffer has already taken as yamux */
    it_ymx(b, 0, IT_YP, IT_SYN, 0, 1);
    it_ymx(b, 1, IT_YP, IT_SYN, 0, 2);
    return "bad version";
  case 1:
    it_ymx(b, 0, IT_YP, IT_SYN, 0, 1);
    it_ymx(b, 0xff, IT_YW, IT_SYN, 1, 0);
    return "version 255";
  case 2:
    it_ymx(b, 0, 4, 0, 0, 0);
    return "unknown type 4";
  case 3:
    it_ymx(b, 0, 0xff, IT_SYN, 1, 0);
    return "unknown type 255";
  case 4:
    it_ymx(b, 0, IT_YP, IT_SYN, 1, 7);
    return "ping on a stream";
  case 5:
    it_ymx(b, 0, IT_YG, 0, 1, 0);
    return "go away on a stream";
  case 6:
    it_ymx_data(b, 0, 0, &x, 1);
    return "data on stream 0";
  case 7:
    it_ymx(b, 0, IT_YW, IT_SYN, 0, 0);
    return "SYN on stream 0";
  case 8:
    put_syn(b, 2);
    return "SYN with wrong parity";
  case 9:
    put_syn(b, 1);
    put_syn(b, 1);
    return "SYN reusing a live id";
  case 10:
    put_syn(b, 1);
    it_ymx(b, 0, IT_YW, IT_RST, 1, 0);
    put_syn(b, 1);
    return "SYN reusing a closed id";
  case 11:
    it_ymx_data(b, 5, 0, &x, 1);
    return "data for a stream never opened";
  case 12:
    it_ymx(b, 0, IT_YW, 0, 7, 100);
    return "window update for a stream never opened";
  case 13:
    put_syn(b, 1);
    it_ymx(b, 0, IT_YW, 0, 1, 0xffffffffu);
    return "window overflow";
  case 14:
    put_syn(b, 3);
    it_ymx(b, 0, IT_YW, 0, 3, 0x7fffffffu);
    it_ymx(b, 0, IT_YW, 0, 3, 0x7fffffffu);
    return "window overflow in two steps";
  case 15: /* only the header: the payload is never needed */
    put_syn(b, 1);
    it_ymx(b, 0, IT_YD, 0, 1, 0x7fffffffu);
    return "data beyond the window";
  case 16:
    put_syn(b, 1);
    it_ymx(b, 0, IT_YD, 0, 1, (6u << 20) + 1u); /* default window + 1 */
    return "data beyond the window by one byte";
  case 17: /* "o": an incomplete frp header, so the stream stays open */
    put_syn(b, 1);
    it_ymx_data(b, 1, IT_FIN, "o", 1);
    it_ymx_data(b, 1, 0, "o", 1);
    return "data after FIN";
  case 18:
    put_syn(b, 1);
    it_ymx(b, 0, IT_YW, IT_FIN, 1, 0);
    it_ymx(b, 0, IT_YW, IT_FIN, 1, 0);
    return "second FIN";
  default:
    return NULL;
  }
}

static void test_yamux_violations(void **state) {
  (void)state;
  ht t;
  ht_setup(&t, 0x0e5eed0004ull);
  it_atk *a[32];
  int n = 0;
  for (;; n++) {
    it_buf b = {0};
    const char *name = violation(n, &b);
    if (!name) {
      it_buf_free(&b);
      break;
    }
    assert_true(n < 32);
    a[n] = atk_bytes(&t, name, &b);
    it_buf_free(&b);
  }
  conn *during = vis_new(&t, ECHO_BYTES, 2);
  wait_closed_within(&t, a, n, FAST_MS, "yamux violation");
  for (int i = 0; i < n; i++)
    expect_goaway(a[i]);
  WAIT(&t, during->closed);
  vis_check(during, "during the yamux violations");

  /* The ping flood: the attacker's receive buffer is small and never
   * read, so the server's answers back up in its own queue. */
  size_t mem0 = t.mem.cur;
  t.mem.peak = mem0;
  it_atk *f = it_atk_new(&t.loop, &t.atks, "ping flood, never reading",
                         t.srv_port, 4096);
  f->no_read = 1;
  for (uint32_t i = 0; i < 4096; i++)
    it_ymx(&f->flood_unit, 0, IT_YP, IT_SYN, 0, i);
  f->flood_max = (uint64_t)1 << 30;
  conn *during2 = vis_new(&t, ECHO_BYTES, 3);
  it_atk *fa[1] = {f};
  wait_closed_within(&t, fa, 1, IDENT_MS / 2, "ping flood");
  fprintf(stderr, "# ping flood: %llu bytes of pings sent before the close "
          "(%s); library memory peak %zu bytes above the baseline\n",
          (unsigned long long)f->flood_sent, it_atk_how(f),
          t.mem.peak - mem0);
  /* The backlog limit is 4 KiB: megabytes would mean the answers were
   * buffered after all. */
  if (t.mem.peak - mem0 > (2u << 20))
    fail_msg("the server buffered %zu bytes for a peer that never reads",
             t.mem.peak - mem0);
  WAIT(&t, during2->closed);
  vis_check(during2, "during the ping flood");

  echo_now(&t, 4, "after the yamux violations");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 5. Connections that never identify themselves: one sends nothing, one a
 * yamux SYN and then nothing, one half a raw frp message, one a SYN and
 * half a message on the stream, one keeps a yamux session alive with pings
 * but never logs in. The server closes each after its identification
 * timeout (10 s, no earlier), and the tunnel echoes every second
 * meanwhile. */
static void test_idle_timeouts(void **state) {
  (void)state;
  ht t;
  ht_setup(&t, 0x0e5eed0005ull);
  enum { NA = 5 };
  it_atk *a[NA];
  a[0] = atk_new(&t, "silent");
  a[1] = atk_new(&t, "yamux SYN, then nothing");
  put_syn(&a[1]->tx, 1);
  a[2] = atk_new(&t, "half a raw frp message");
  it_frp_hdr(&a[2]->tx, 'o', 100);
  it_buf_str(&a[2]->tx, "{\"version\"");
  a[3] = atk_new(&t, "SYN and half a message on the stream");
  {
    it_buf m = {0};
    it_frp_hdr(&m, 'o', 100);
    it_buf_str(&m, "{\"version\"");
    put_syn(&a[3]->tx, 1);
    it_ymx_data(&a[3]->tx, 1, 0, m.p, m.len);
    it_buf_free(&m);
  }
  a[4] = atk_new(&t, "yamux pings every 500 ms, no login");
  it_ymx(&a[4]->tx, 0, IT_YP, IT_SYN, 0, 0);
  it_ymx(&a[4]->tick_unit, 0, IT_YP, IT_SYN, 0, 1);
  WAIT(&t, a[4]->connected);
  it_atk_tick(a[4], 500);

  uint64_t start = now_ms(&t);
  int echoes = 0, all = 0;
  while (!all && now_ms(&t) - start < IDENT_MAX_MS + 1000u) {
    uint64_t t1 = now_ms(&t);
    conn *v = vis_new(&t, ECHO_BYTES, 100u + (uint32_t)echoes);
    WAIT_MS(&t, v->closed, 3000);
    vis_check(v, "during the idle connections");
    echoes++;
    all = 1;
    for (int i = 0; i < NA; i++)
      all = all && it_atk_ended(a[i]);
    uint64_t spent = now_ms(&t) - t1;
    if (!all && spent < 1000)
      it_sleep(&t.w, 1000 - spent);
  }
  for (int i = 0; i < NA; i++) {
    if (!it_atk_ended(a[i]))
      fail_msg("attacker \"%s\" still connected after %llu ms", a[i]->name,
               (unsigned long long)(now_ms(&t) - a[i]->t_connect));
    uint64_t from = a[i]->t_sent ? a[i]->t_sent : a[i]->t_connect;
    if (i == 4)
      from = a[i]->t_connect; /* its pings do not count as identifying */
    uint64_t ms = a[i]->t_end - from;
    fprintf(stderr, "# \"%s\" closed (%s) after %llu ms\n", a[i]->name,
            it_atk_how(a[i]), (unsigned long long)ms);
    if (ms < IDENT_MIN_MS || ms > IDENT_MAX_MS)
      fail_msg("attacker \"%s\" closed after %llu ms, expected %u..%u",
               a[i]->name, (unsigned long long)ms, IDENT_MIN_MS,
               IDENT_MAX_MS);
  }
  fprintf(stderr, "# %d echo(es) through the tunnel meanwhile\n", echoes);
  assert_true(echoes >= (int)(IDENT_MS / 1000u) - 1);
  echo_now(&t, 3, "after the idle connections");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 6. 200 junk connections at once while the legitimate client moves 8 MiB
 * through its tunnel: the transfer completes intact and every junk
 * connection is closed promptly. */
static void put_junk(ht *t, int kind, it_buf *b) {
  uint8_t c;
  switch (kind % 8) {
  case 0:
    c = 0;
    it_buf_put(b, &c, 1);
    it_buf_rand(b, &t->rng, 200);
    break;
  case 1:
    c = (uint8_t)(0x21 + it_rng_next(&t->rng) % 94);
    it_buf_put(b, &c, 1);
    it_buf_rand(b, &t->rng, 200);
    break;
  case 2:
    it_frp_hdr(b, 'o', MAX_MSG + 1u);
    break;
  case 3:
    put_syn(b, 1);
    it_ymx_data(b, 1, 0, "o\0\0\0\0\0\0\0\x08not json", 17);
    it_ymx(b, 1, IT_YP, IT_SYN, 0, 0);
    break;
  case 4:
    it_ymx(b, 0, 9, 0, 0, 0);
    break;
  case 5:
    it_frp(b, 'o', "{\"version\":");
    break;
  case 6:
    put_syn(b, 1);
    it_ymx(b, 0, IT_YD, 0, 1, 0x7fffffffu);
    break;
  default:
    put_syn(b, 4);
    break;
  }
}

static int all_connected(it_atk **a, int n) {
  for (int i = 0; i < n; i++)
    if (!a[i]->connected)
      return 0;
  return 1;
}

static int all_closed(it_atk **a, int n) {
  for (int i = 0; i < n; i++)
    if (!a[i]->closed)
      return 0;
  return 1;
}

static void test_flood_during_transfer(void **state) {
  (void)state;
  enum { NJ = 200, NV = 50 };
  ht t;
  ht_setup(&t, 0x0e5eed0006ull);
  it_atk *a[NJ];
  /* All connected (and waiting in the server's identification phase)
   * before the transfer starts. */
  for (int i = 0; i < NJ; i++) {
    a[i] = atk_new(&t, "junk");
    a[i]->hold_tx = 1;
    put_junk(&t, i, &a[i]->tx);
  }
  WAIT(&t, all_connected(a, NJ));
  uint64_t hr = uv_hrtime();
  conn *big = vis_new(&t, FLOOD_TRANSFER, 6);
  WAIT(&t, big->rx_bytes >= (1u << 20) || big->closed);
  assert_false(big->closed);
  for (int i = 0; i < NJ; i++)
    it_atk_send_tx(a[i]);
  /* And junk visitors on the public port: some abort at once with RST,
   * some send garbage and close without reading the echo. */
  it_atk *pv[NV];
  for (int i = 0; i < NV; i++) {
    pv[i] = it_atk_new(&t.loop, &t.atks, "public-port junk", t.pub, 0);
    if (i % 2) {
      pv[i]->reset_on_connect = 1;
    } else {
      it_buf_rand(&pv[i]->tx, &t.rng, 1000);
      pv[i]->close_after_tx = 1;
    }
  }
  wait_closed_within(&t, a, NJ, FAST_MS, "junk flood");
  WAIT(&t, all_closed(pv, NV));
  uint64_t junk_done = big->rx_bytes;
  WAIT(&t, big->closed);
  vis_check(big, "after an 8 MiB transfer under a junk flood");
  fprintf(stderr, "# 8 MiB echoed in %.2f s with %d junk connections and %d "
          "junk visitors; %llu bytes were back when the last junk "
          "connection closed\n",
          (double)(uv_hrtime() - hr) / 1e9, NJ, NV,
          (unsigned long long)junk_done);
  echo_now(&t, 7, "after the junk flood");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 7. 50 logins with a wrong key at once: 25 tunnel_clients with the wrong
 * token (yamux) and 25 hand-built raw logins with a bad privilege key in
 * various ways, some with more bytes pipelined after the Login. Each is
 * refused with a LoginResp error; the legitimate client is served
 * throughout and stays the only client. The raw attackers then keep their
 * end open: the server must still let go of each refused connection within
 * a bounded time (its identification timeout, at the latest). */
static void on_bad_state(tunnel_client *c, int status, const char *msg,
                         void *ud) {
  badcl *b = ud;
  (void)c;
  b->state_calls++;
  b->state = status;
  snprintf(b->msg, sizeof b->msg, "%s", msg ? msg : "");
}

static void test_wrong_token_repeated(void **state) {
  (void)state;
  enum { NC = 25, NR = 25 };
  ht t;
  ht_setup(&t, 0x0e5eed0007ull);
  for (int i = 0; i < NC; i++) {
    badcl *b = &t.bad[t.nbad++];
    b->t = &t;
    tunnel_config *cfg = config_new(&t, "wrong-token", "bad client");
    assert_int_equal(tunnel_client_new(&b->c, &t.loop, cfg), 0);
    tunnel_config_free(cfg);
    assert_int_equal(tunnel_client_set_state_cb(b->c, on_bad_state, b), 0);
    assert_int_equal(tunnel_client_connect(b->c, "127.0.0.1", t.srv_port),
                     0);
  }
  it_atk *r[NR];
  static const char *const how[] = {
      "key of another token", "key for another timestamp", "no key",
      "key of the wrong length", "upper-case key"};
  char names[NR][80];
  int64_t ts = unix_now();
  for (int i = 0; i < NR; i++) {
    it_buf b = {0};
    char k[33];
    switch (i % 5) {
    case 0:
      put_login(&b, "wrong-token", ts, ts, NULL);
      break;
    case 1:
      put_login(&b, TOKEN, ts - 1000, ts, NULL);
      break;
    case 2:
      put_login(&b, TOKEN, ts, ts, "");
      break;
    case 3:
      put_login(&b, TOKEN, ts, ts, "0123456789abcdef");
      break;
    default:
      key_of(TOKEN, ts, k);
      for (char *q = k; *q; q++)
        if (*q >= 'a' && *q <= 'f')
          *q = (char)(*q - 'a' + 'A');
      put_login(&b, TOKEN, ts, ts, k);
      break;
    }
    int pipelined = (i / 5) % 2;
    if (pipelined) /* a client that does not wait for the answer */
      it_frp(&b, 'p', "{\"proxy_name\":\"steal\",\"proxy_type\":\"tcp\"}");
    snprintf(names[i], sizeof names[i], "raw login, %s%s", how[i % 5],
             pipelined ? ", pipelined" : "");
    r[i] = atk_bytes(&t, names[i], &b);
    it_buf_free(&b);
  }
  conn *during = vis_new(&t, ECHO_BYTES, 2);

  /* Every raw login gets a LoginResp with an error, then EOF. */
  wait_closed_within(&t, r, NR, FAST_MS, "refused raw login (EOF)");
  for (int i = 0; i < NR; i++) {
    char err[256] = "", rid[64] = "";
    size_t used = 0;
    if (first_msg(r[i]->rx.p, r[i]->rx.len, TUNNEL__MSG_LOGIN_RESP, err,
                  sizeof err, rid, sizeof rid, &used) != 1)
      fail_msg("attacker \"%s\": no complete LoginResp (%zu bytes, %s)",
               r[i]->name, r[i]->rx.len, it_atk_how(r[i]));
    if (!err[0] || rid[0] || !r[i]->eof || used != r[i]->rx.len)
      fail_msg("attacker \"%s\": expected a refusal then EOF; got error "
               "\"%s\", run id \"%s\", %zu extra bytes, %s",
               r[i]->name, err, rid, r[i]->rx.len - used, it_atk_how(r[i]));
  }
  /* Every tunnel_client with the wrong token reports TUNNEL_EAUTH. */
  uint64_t t0 = now_ms(&t);
  for (int i = 0; i < NC; i++) {
    badcl *b = &t.bad[i];
    WAIT_MS(&t, b->state_calls > 0, FAST_MS);
    if (b->state != TUNNEL_EAUTH)
      fail_msg("wrong-token client %d: expected TUNNEL_EAUTH, got %s (%s)",
               i, tunnel_err_name(b->state), b->msg);
    b->close_called = 1;
    assert_int_equal(tunnel_client_close(b->c, on_bad_closed, b), 0);
  }
  fprintf(stderr, "# %d wrong-token clients refused (last %llu ms after the "
          "raw ones); first reason: %s\n",
          NC, (unsigned long long)(now_ms(&t) - t0), t.bad[0].msg);
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  WAIT(&t, during->closed);
  vis_check(during, "during the wrong-token logins");
  echo_now(&t, 3, "after the wrong-token logins");

  /* The refused raw connections are still open on the attackers' side:
   * the server must not keep them (and their buffers) forever. */
  uint64_t t1 = now_ms(&t);
  for (int i = 0; i < NR; i++)
    it_atk_probe(r[i]);
  it_waiter_arm(&t.w, IDENT_MAX_MS);
  int dead = 0;
  while (!t.w.fired) {
    dead = 0;
    for (int i = 0; i < NR; i++)
      dead += r[i]->dead;
    if (dead == NR)
      break;
    uv_run(&t.loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&t.w);
  if (dead != NR)
    fail_msg("%d of %d refused raw logins are still held open by the "
             "server %llu ms after its refusal and FIN (the attackers "
             "never close their end); library memory held: %zu bytes",
             NR - dead, NR, (unsigned long long)(now_ms(&t) - t1),
             t.mem.cur);
  fprintf(stderr, "# refused raw connections released within %llu ms\n",
          (unsigned long long)(now_ms(&t) - t1));
  echo_now(&t, 4, "after the refused connections were released");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 8. A client that logs in correctly over raw frp framing (non-mux, a
 * hand-built Login with the right privilege key) is a real client: the
 * server counts it and talks to it encrypted. Work connections for a run
 * id that does not exist, or with a bad key, or for another client's run
 * id from outside its session, are refused with StartWorkConn(error) and
 * FIN; a correct one is parked. Garbage on the logged-in client's
 * encrypted control channel ends that client and its parked work
 * connection. A client that pipelines an encrypted Ping right after its
 * Login is answered. */

/* Waits for the first message of the server on an attacker (raw, or on
 * yamux stream `sid`). */
static void wait_reply(ht *t, it_atk *a, uint32_t sid, uint8_t type,
                       char err[256], char rid[64], size_t *used) {
  it_buf d = {0};
  int got = 0;
  it_waiter_arm(&t->w, FAST_MS);
  for (;;) {
    const uint8_t *p = a->rx.p;
    size_t n = a->rx.len;
    if (sid) {
      stream_data(a, sid, &d);
      p = d.p;
      n = d.len;
    }
    got = first_msg(p, n, type, err, 256, rid, 64, used);
    if (got || it_atk_ended(a) || t->w.fired)
      break;
    uv_run(&t->loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&t->w);
  it_buf_free(&d);
  if (got < 0)
    fail_msg("attacker \"%s\": malformed answer from the server", a->name);
  if (!got)
    fail_msg("attacker \"%s\": no %s from the server within %u ms (%s)",
             a->name, tunnel__msg_type_name(type), FAST_MS, it_atk_how(a));
}

static void test_raw_login_bad_work_conn(void **state) {
  (void)state;
  ht t;
  ht_setup(&t, 0x0e5eed0008ull);
  int64_t ts = unix_now();
  char err[256], rid[64], types[32];
  size_t resp_len = 0;

  /* A logs in over raw frp framing. */
  it_buf b = {0};
  put_login(&b, TOKEN, ts, ts, NULL);
  it_atk *A = atk_bytes(&t, "raw login", &b);
  wait_reply(&t, A, 0, TUNNEL__MSG_LOGIN_RESP, err, rid, &resp_len);
  if (err[0] || !rid[0])
    fail_msg("hand-built login refused: \"%s\"", err);
  char a_rid[64];
  snprintf(a_rid, sizeof a_rid, "%s", rid);
  WAIT_MS(&t, tunnel_server_client_count(t.srv) == 2, FAST_MS);
  /* ... and the server asks it, encrypted, for a work connection. */
  WAIT_MS(&t, (encrypted_types(A->rx.p, A->rx.len, resp_len, types,
                               sizeof types),
               strchr(types, TUNNEL__MSG_REQ_WORK_CONN) != NULL),
          FAST_MS);

  /* A is authenticated, yet must not touch the other client's proxy: a
   * NewProxy with its name, one for its public port, a CloseProxy of it,
   * then a Ping to know that all were read. */
  tunnel__cfb a_enc;
  memset(&a_enc, 0, sizeof a_enc);
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  it_rng_fill(&t.rng, iv, sizeof iv);
  assert_int_equal(tunnel__cfb_init_encrypt(&a_enc, TOKEN, strlen(TOKEN), iv),
                   0);
  {
    it_buf plain = {0}, c = {0};
    put_new_proxy(&plain, "echo", 0);
    put_new_proxy(&plain, "squatter", t.pub);
    it_frp(&plain, TUNNEL__MSG_CLOSE_PROXY, "{\"proxy_name\":\"echo\"}");
    put_signed(&plain, TUNNEL__MSG_PING, TOKEN, ts, ts, NULL, NULL);
    put_encrypted_more(&c, &a_enc, &plain);
    it_atk_write(A, c.p, c.len);
    it_buf_free(&plain);
    it_buf_free(&c);
  }
  tunnel__cfb_free(&a_enc);
  WAIT_MS(&t, (encrypted_types(A->rx.p, A->rx.len, resp_len, types,
                               sizeof types),
               strchr(types, TUNNEL__MSG_PONG) != NULL || it_atk_ended(A)),
          FAST_MS);
  {
    tunnel__msg m[16];
    int k = encrypted_msgs(A->rx.p, A->rx.len, resp_len, m, 16);
    int refused = 0, pong = 0;
    for (int i = 0; i < k; i++) {
      if (m[i].type == TUNNEL__MSG_NEW_PROXY_RESP) {
        if (!m[i].error || !m[i].error[0])
          fail_msg("the raw client was granted proxy %s (%s)",
                   m[i].proxy_name ? m[i].proxy_name : "?",
                   m[i].remote_addr ? m[i].remote_addr : "");
        fprintf(stderr, "# raw client's NewProxy %s refused: %s\n",
                m[i].proxy_name ? m[i].proxy_name : "?", m[i].error);
        refused++;
      }
      pong += m[i].type == TUNNEL__MSG_PONG;
    }
    clear_msgs(m, k);
    if (refused != 2 || pong != 1)
      fail_msg("raw client: expected 2 refused NewProxy and a Pong, got "
               "\"%s\" (%s)",
               types, it_atk_how(A));
  }
  echo_now(&t, 9, "after another client tried to take its proxy");

  /* Work connections that must be refused. */
  enum { NW = 8 };
  it_atk *w[NW];
  const char *wname[NW] = {
      "raw NewWorkConn, unknown run id",
      "raw NewWorkConn, key of another token",
      "raw NewWorkConn, key for another timestamp",
      "raw NewWorkConn, no key, from another address",
      "raw NewWorkConn, no run id",
      "raw NewWorkConn for the legitimate client, no key",
      "yamux NewWorkConn for the legitimate client, no key",
      "yamux NewWorkConn for the raw client, no key",
  };
  for (int i = 0; i < NW; i++) {
    it_buf m = {0};
    switch (i) {
    case 0:
      put_signed(&m, 'w', TOKEN, ts, ts, NULL, "00000000deadbeef");
      break;
    case 1:
      put_signed(&m, 'w', "wrong-token", ts, ts, NULL, a_rid);
      break;
    case 2:
      put_signed(&m, 'w', TOKEN, ts + 1, ts, NULL, a_rid);
      break;
    case 3:
      put_signed(&m, 'w', TOKEN, ts, ts, "", a_rid);
      break;
    case 4:
      put_signed(&m, 'w', TOKEN, ts, ts, NULL, NULL);
      break;
    case 5:
    case 6:
      put_signed(&m, 'w', TOKEN, ts, ts, "", t.run_id);
      break;
    default:
      put_signed(&m, 'w', TOKEN, ts, ts, "", a_rid);
      break;
    }
    if (i == 3) { /* unsigned ones from the client's own address pass */
      if (!t.have_v6)
        fail_msg("the server could not listen on %s", OTHER_ADDR);
      w[i] = it_atk_new_from(&t.loop, &t.atks, wname[i], t.srv_port, 0,
                             OTHER_ADDR);
      it_buf_put(&w[i]->tx, m.p, m.len);
    } else if (i < 6) {
      w[i] = atk_bytes(&t, wname[i], &m);
    } else {
      it_buf y = {0};
      put_syn(&y, 1);
      it_ymx_data(&y, 1, 0, m.p, m.len);
      w[i] = atk_bytes(&t, wname[i], &y);
      it_buf_free(&y);
    }
    it_buf_free(&m);
  }
  /* The positive control: A's run id with the right key is parked. */
  b.len = 0;
  put_signed(&b, 'w', TOKEN, ts, ts, NULL, a_rid);
  it_atk *P = atk_bytes(&t, "raw NewWorkConn, correct", &b);
  conn *during = vis_new(&t, ECHO_BYTES, 2);

  for (int i = 0; i < NW; i++) {
    uint32_t sid = i < 6 ? 0 : 1;
    wait_reply(&t, w[i], sid, TUNNEL__MSG_START_WORK_CONN, err, rid, NULL);
    if (!err[0])
      fail_msg("attacker \"%s\" was given a work connection", w[i]->name);
    if (sid)
      WAIT_MS(&t, fin_seen(w[i], 1) || it_atk_ended(w[i]), FAST_MS);
  }
  wait_closed_within(&t, w, 6, FAST_MS, "refused raw work connection (EOF)");
  for (int i = 6; i < NW; i++)
    assert_true(fin_seen(w[i], 1));
  fprintf(stderr, "# %d bad work connections refused: \"%s\"\n", NW, err);
  it_sleep(&t.w, 300);
  if (it_atk_ended(P) || P->rx.len)
    fail_msg("the correct work connection was not parked: %s, %zu bytes",
             it_atk_how(P), P->rx.len);
  assert_int_equal(tunnel_server_client_count(t.srv), 2);
  WAIT(&t, during->closed);
  vis_check(during, "during the bad work connections");
  echo_now(&t, 3, "after the bad work connections");

  /* Garbage on A's encrypted control channel: A and its parked work
   * connection go. */
  uint8_t junk[64];
  it_rng_fill(&t.rng, junk, sizeof junk);
  P->t_sent = now_ms(&t); /* what ends P is A's garbage, not P's bytes */
  it_atk_write(A, junk, sizeof junk);
  it_atk *ap[2] = {A, P};
  wait_closed_within(&t, ap, 2, FAST_MS, "garbage on a raw control channel");
  WAIT_MS(&t, tunnel_server_client_count(t.srv) == 1, FAST_MS);
  echo_now(&t, 4, "after the raw client was dropped");

  /* Clients that pipeline an encrypted Ping right behind their Login, so
   * that the Ping arrives with the Login or while it is being read: in the
   * connection's first segment, in a later segment with the Login's end,
   * and in the same yamux data frame as the Login. Each must be answered
   * with a Pong. */
  enum { NP = 3 };
  static const char *const pname[NP] = {
      "raw Login + Ping in the first segment",
      "raw Login split, its end + Ping in the second segment",
      "yamux Login + Ping in one data frame",
  };
  it_atk *pc[NP];
  size_t split_at = 10;
  for (int i = 0; i < NP; i++) {
    it_buf m = {0}, ping = {0};
    put_login(&m, TOKEN, ts, ts, NULL);
    put_signed(&ping, TUNNEL__MSG_PING, TOKEN, ts, ts, NULL, NULL);
    put_encrypted(&m, &ping, &t.rng);
    it_buf_free(&ping);
    b.len = 0;
    if (i == 2) {
      put_syn(&b, 1);
      it_ymx_data(&b, 1, 0, m.p, m.len);
    } else {
      it_buf_put(&b, m.p, m.len);
    }
    pc[i] = atk_bytes(&t, pname[i], &b);
    if (i == 1) {
      pc[i]->hold_tx = 1;
      WAIT(&t, pc[i]->connected);
      it_atk_write(pc[i], b.p, split_at);
      it_sleep(&t.w, 100);
      it_atk_write(pc[i], b.p + split_at, b.len - split_at);
    }
    it_buf_free(&m);
  }
  it_buf_free(&b);
  size_t presp[NP];
  for (int i = 0; i < NP; i++) {
    wait_reply(&t, pc[i], i == 2 ? 1 : 0, TUNNEL__MSG_LOGIN_RESP, err, rid,
               &presp[i]);
    if (err[0] || !rid[0])
      fail_msg("attacker \"%s\": login refused: \"%s\"", pc[i]->name, err);
  }
  WAIT_MS(&t, tunnel_server_client_count(t.srv) == 1 + NP, FAST_MS);
  int ponged[NP] = {0};
  it_buf d = {0};
  it_waiter_arm(&t.w, FAST_MS);
  for (;;) {
    int all = 1;
    for (int i = 0; i < NP; i++) {
      const uint8_t *p = pc[i]->rx.p;
      size_t n = pc[i]->rx.len;
      if (i == 2) {
        stream_data(pc[i], 1, &d);
        p = d.p;
        n = d.len;
      }
      encrypted_types(p, n, presp[i], types, sizeof types);
      ponged[i] = strchr(types, TUNNEL__MSG_PONG) != NULL;
      all = all && ponged[i];
    }
    if (all || t.w.fired)
      break;
    uv_run(&t.loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&t.w);
  it_buf_free(&d);
  char missing[512] = "";
  for (int i = 0; i < NP; i++)
    if (!ponged[i])
      snprintf(missing + strlen(missing), sizeof missing - strlen(missing),
               "%s\"%s\"", missing[0] ? ", " : "", pc[i]->name);
  if (missing[0]) {
    /* Reported after the teardown check, which must run too. */
    ht_fail_later(&t,
                  "a Ping pipelined behind the Login was never answered "
                  "within %u ms for: %s",
                  FAST_MS, missing);
  } else {
    for (int i = 0; i < NP; i++)
      it_atk_close(pc[i]);
    WAIT_MS(&t, tunnel_server_client_count(t.srv) == 1, FAST_MS);
    echo_now(&t, 5, "after the raw logins");
    assert_int_equal(tunnel_server_client_count(t.srv), 1);
  }
  legit_intact(&t);
  /* The refused work connections are still open on the attackers' side:
   * closing the server must end them too. */
  ht_teardown(&t);
}

/* ------------------------------------------------------------------------
 * Defences against abuse by peers that follow the protocol: floods of
 * requests, streams and connections, slow senders, old or replayed keys,
 * injected work connections, control bytes in names.
 * --------------------------------------------------------------------- */

/* Sanitizer builds run the server several times slower: CPU-time and
 * latency bounds are multiplied by SAN_FACTOR there (memory and count
 * bounds are not). */
#if defined(__SANITIZE_ADDRESS__)
#define SAN_FACTOR 4u
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SAN_FACTOR 4u
#endif
#endif
#ifndef SAN_FACTOR
#define SAN_FACTOR 1u
#endif

/* Server memory above `base`, or 0. */
static size_t mem_above(const ht *t, size_t base) {
  return t->mem.cur > base ? t->mem.cur - base : 0;
}

/* Memory the server may still hold, once an attack is over, beyond what
 * it held before (buffers of the legitimate tunnel in another state). */
#define MEM_SETTLE_SLACK (256u * 1024u)

/* Waits until the server is back within MEM_SETTLE_SLACK of `base`. */
static void wait_mem_settled(ht *t, size_t base, const char *what) {
  it_waiter_arm(&t->w, FAST_MS);
  while (mem_above(t, base) > MEM_SETTLE_SLACK && !t->w.fired)
    uv_run(&t->loop, UV_RUN_ONCE);
  it_waiter_disarm(&t->w);
  if (mem_above(t, base) > MEM_SETTLE_SLACK)
    ht_fail_later(t, "%s: the server still holds %zu bytes above the "
                  "baseline %u ms after the attack ended",
                  what, mem_above(t, base), FAST_MS);
}

/* Frees a visitor that has finished (closed), so that long measurement
 * loops do not accumulate them. */
static void conn_reap(ht *t, conn *v) {
  for (conn **pp = &t->conns; *pp; pp = &(*pp)->next) {
    if (*pp == v) {
      *pp = v->next;
      free(v);
      return;
    }
  }
}

/* A Login signed at `ts` with the right token, carrying `run_id` (NULL:
 * none) and asking for `pool` work connections. */
static void put_login_as(it_buf *b, int64_t ts, const char *run_id,
                         int64_t pool) {
  const tunnel__mem *mem = libc_mem();
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  char k[33];
  key_of(TOKEN, ts, k);
  assert_int_equal(tunnel__msg_set_str(mem, &m.version, "0.61.0"), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.hostname, "attacker"), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.os, "linux"), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.arch, "amd64"), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.privilege_key, k), 0);
  m.timestamp = ts;
  if (run_id)
    assert_int_equal(tunnel__msg_set_str(mem, &m.run_id, run_id), 0);
  m.pool_count = pool;
  put_msg(b, &m);
  tunnel__msg_clear(mem, &m);
}

/* A client logged in by hand, over raw frp framing (non-mux) or on stream
 * 1 of a yamux session: its connection, where the server's encrypted
 * stream starts in what it received (on stream 1), and the client's own
 * cipher stream. */
typedef struct rawcl {
  it_atk *a;
  int mux;
  size_t resp_len;
  char run_id[64];
  tunnel__cfb enc;
} rawcl;

/* Connects to `src_ip` (NULL: 127.0.0.1, the clients' address; OTHER_ADDR:
 * another one), sends `login` and waits for
 * its acceptance. `rcvbuf` as for it_atk_new. */
static void rawcl_open(ht *t, rawcl *r, const char *name,
                       const it_buf *login, int rcvbuf, const char *src_ip) {
  memset(r, 0, sizeof *r);
  r->a = it_atk_new_from(&t->loop, &t->atks, name, t->srv_port, rcvbuf,
                         src_ip);
  it_buf_put(&r->a->tx, login->p, login->len);
  char err[256], rid[64];
  wait_reply(t, r->a, 0, TUNNEL__MSG_LOGIN_RESP, err, rid, &r->resp_len);
  if (err[0] || !rid[0])
    fail_msg("client \"%s\": login refused: \"%s\"", name, err);
  snprintf(r->run_id, sizeof r->run_id, "%s", rid);
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  it_rng_fill(&t->rng, iv, sizeof iv);
  assert_int_equal(
      tunnel__cfb_init_encrypt(&r->enc, TOKEN, strlen(TOKEN), iv), 0);
}

/* The same over a yamux session: a SYN and the Login on stream 1. It
 * never grants the stream more window, which is fine for the few replies
 * these tests provoke. */
static void rawcl_open_mux(ht *t, rawcl *r, const char *name,
                           const it_buf *login) {
  memset(r, 0, sizeof *r);
  r->mux = 1;
  r->a = atk_new(t, name);
  put_syn(&r->a->tx, 1);
  it_ymx_data(&r->a->tx, 1, 0, login->p, login->len);
  char err[256], rid[64];
  wait_reply(t, r->a, 1, TUNNEL__MSG_LOGIN_RESP, err, rid, &r->resp_len);
  if (err[0] || !rid[0])
    fail_msg("client \"%s\": login refused: \"%s\"", name, err);
  snprintf(r->run_id, sizeof r->run_id, "%s", rid);
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  it_rng_fill(&t->rng, iv, sizeof iv);
  assert_int_equal(
      tunnel__cfb_init_encrypt(&r->enc, TOKEN, strlen(TOKEN), iv), 0);
}

static void rawcl_free(rawcl *r) { tunnel__cfb_free(&r->enc); }

static void rawcl_send(rawcl *r, const it_buf *plain) {
  it_buf c = {0}, f = {0};
  put_encrypted_more(&c, &r->enc, plain);
  if (r->mux) {
    it_ymx_data(&f, 1, 0, c.p, c.len);
    it_atk_write(r->a, f.p, f.len);
  } else {
    it_atk_write(r->a, c.p, c.len);
  }
  it_buf_free(&c);
  it_buf_free(&f);
}

/* The messages the server sent after LoginResp: up to `max` into `out`
 * (to be cleared by the caller). */
static int rawcl_msgs(const rawcl *r, tunnel__msg *out, int max) {
  if (!r->mux)
    return encrypted_msgs(r->a->rx.p, r->a->rx.len, r->resp_len, out, max);
  it_buf d = {0};
  stream_data(r->a, 1, &d);
  int k = encrypted_msgs(d.p, d.len, r->resp_len, out, max);
  it_buf_free(&d);
  return k;
}

static int rawcl_count(const rawcl *r, uint8_t type) {
  enum { MAXM = 1024 };
  tunnel__msg *m = calloc(MAXM, sizeof *m);
  assert_non_null(m);
  int k = rawcl_msgs(r, m, MAXM);
  int n = 0;
  for (int i = 0; i < k; i++)
    n += m[i].type == type;
  clear_msgs(m, k);
  free(m);
  return n;
}

/* Sends a signed Ping and waits for its Pong: everything sent before it
 * has been handled. */
static void rawcl_sync(ht *t, rawcl *r) {
  int n0 = rawcl_count(r, TUNNEL__MSG_PONG);
  it_buf p = {0};
  int64_t ts = unix_now();
  put_signed(&p, TUNNEL__MSG_PING, TOKEN, ts, ts, NULL, NULL);
  rawcl_send(r, &p);
  it_buf_free(&p);
  it_waiter_arm(&t->w, FAST_MS);
  while (rawcl_count(r, TUNNEL__MSG_PONG) <= n0 && !it_atk_ended(r->a) &&
         !t->w.fired)
    uv_run(&t->loop, UV_RUN_ONCE);
  it_waiter_disarm(&t->w);
  if (rawcl_count(r, TUNNEL__MSG_PONG) <= n0)
    fail_msg("client \"%s\": no Pong within %u ms (%s)", r->a->name, FAST_MS,
             it_atk_how(r->a));
}

/* Waits until the server has asked `r` for at least `n` work
 * connections. */
static void rawcl_wait_reqs(ht *t, rawcl *r, int n) {
  it_waiter_arm(&t->w, FAST_MS);
  while (rawcl_count(r, TUNNEL__MSG_REQ_WORK_CONN) < n &&
         !it_atk_ended(r->a) && !t->w.fired)
    uv_run(&t->loop, UV_RUN_ONCE);
  it_waiter_disarm(&t->w);
  int got = rawcl_count(r, TUNNEL__MSG_REQ_WORK_CONN);
  if (got < n)
    fail_msg("client \"%s\": the server asked for %d work connection(s), "
             "expected %d",
             r->a->name, got, n);
}

/* Registers proxy `name` and returns its public port. */
static uint16_t rawcl_proxy(ht *t, rawcl *r, const char *name) {
  it_buf p = {0};
  put_new_proxy(&p, name, 0);
  rawcl_send(r, &p);
  it_buf_free(&p);
  rawcl_sync(t, r);
  tunnel__msg m[64];
  int k = rawcl_msgs(r, m, 64);
  uint16_t port = 0;
  char err[256] = "";
  for (int i = 0; i < k; i++) {
    if (m[i].type != TUNNEL__MSG_NEW_PROXY_RESP || !m[i].proxy_name ||
        strcmp(m[i].proxy_name, name) != 0)
      continue;
    snprintf(err, sizeof err, "%s", m[i].error ? m[i].error : "");
    const char *colon = m[i].remote_addr ? strrchr(m[i].remote_addr, ':')
                                         : NULL;
    port = colon ? (uint16_t)atoi(colon + 1) : 0;
  }
  clear_msgs(m, k);
  if (err[0] || !port)
    fail_msg("client \"%s\": proxy %s refused: \"%s\"", r->a->name, name,
             err);
  return port;
}

/* A work connection that must be parked: open and silent a while after its
 * NewWorkConn. */
static void expect_parked(ht *t, it_atk *w) {
  WAIT(t, w->t_sent != 0 || it_atk_ended(w));
  it_sleep(&t->w, 300);
  if (it_atk_ended(w) || w->rx.len) {
    char err[256] = "";
    if (w->rx.len)
      first_msg(w->rx.p, w->rx.len, TUNNEL__MSG_START_WORK_CONN, err,
                sizeof err, NULL, 0, NULL);
    fail_msg("\"%s\" was not accepted: %s, %zu bytes from the server "
             "(error \"%s\")",
             w->name, it_atk_how(w), w->rx.len, err);
  }
}

/* A work connection that must be refused: closed within FAST_MS, after at
 * most a StartWorkConn carrying an error. */
static void expect_work_refused(ht *t, it_atk *w) {
  it_atk *one[1] = {w};
  wait_closed_within(t, one, 1, FAST_MS, w->name);
  if (w->rx.len) {
    char err[256] = "";
    size_t used = 0;
    if (first_msg(w->rx.p, w->rx.len, TUNNEL__MSG_START_WORK_CONN, err,
                  sizeof err, NULL, 0, &used) != 1 ||
        !err[0])
      fail_msg("\"%s\": closed, but the server sent %zu bytes that are not "
               "a StartWorkConn with an error",
               w->name, w->rx.len);
  }
}

/* A NewWorkConn for `run_id` on a connection of its own from `src_ip`
 * (NULL: 127.0.0.1; OTHER_ADDR: another address), signed at `ts` or (signed == 0) without key and
 * timestamp, as a stock frpc sends it. */
static it_atk *work_conn(ht *t, const char *name, const char *run_id,
                         int signed_, int64_t ts, const char *src_ip) {
  it_buf m = {0};
  if (signed_)
    put_signed(&m, TUNNEL__MSG_NEW_WORK_CONN, TOKEN, ts, ts, NULL, run_id);
  else
    put_signed(&m, TUNNEL__MSG_NEW_WORK_CONN, TOKEN, 0, 0, "", run_id);
  it_atk *w =
      it_atk_new_from(&t->loop, &t->atks, name, t->srv_port, 0, src_ip);
  it_buf_put(&w->tx, m.p, m.len);
  it_buf_free(&m);
  return w;
}

/* 9. A logged-in client that does not read what the server sends floods
 * its control channel with requests that each provoke an answer: signed
 * Pings (an 11-byte Pong each, for 72 bytes), or NewProxy messages whose
 * name is 900 '<' and type 16 '<' (the refusal echoes the name, escaped as
 * \u003c: 5.4 KiB of answer for 0.95 KiB). Non-mux, the client never reads
 * its socket; in a yamux session it reads its socket but never grants its
 * control stream more window, and sends no more than the window the
 * server granted (6 MiB). Once the answers back up, the server must cut
 * the client off (its connection ends) within FLOOD_CUT_MS of the flood's
 * start, holding at most FLOOD_MEM_BOUND above its baseline meanwhile, and
 * give that memory back afterwards; the legitimate tunnel echoes
 * throughout. */
#define FLOOD_MEM_BOUND (8u << 20)
#define FLOOD_CUT_MS (15000u * SAN_FACTOR)
/* Beyond this the flood is stopped, so that a server without the defence
 * fails the test without exhausting the machine. */
#define FLOOD_MEM_ABORT (64u << 20)
/* What a yamux client may send on a stream the server acknowledged
 * (docs/PROTOCOL.md section 2: the default window, granted at once), less
 * room for the Login. */
#define FLOOD_MUX_MAX ((6u << 20) - (64u << 10))

typedef struct reqflood {
  rawcl *r;
  int mux;     /* wrap each chunk in a data frame of stream 1 */
  it_buf unit; /* plaintext, encrypted afresh for each chunk */
  it_buf tmp;
} reqflood;

static void reqflood_gen(it_atk *a, it_buf *chunk) {
  reqflood *f = a->ud;
  if (!f->mux) {
    put_encrypted_more(chunk, &f->r->enc, &f->unit);
    return;
  }
  f->tmp.len = 0;
  put_encrypted_more(&f->tmp, &f->r->enc, &f->unit);
  it_ymx_data(chunk, 1, 0, f->tmp.p, f->tmp.len);
}

static void flood_requests(ht *t, int amplify, int mux, uint32_t seed) {
  static const char *const names[2][2] = {
      {"logged-in non-mux client flooding Pings",
       "logged-in non-mux client flooding NewProxy with '<' names"},
      {"logged-in yamux client flooding Pings",
       "logged-in yamux client flooding NewProxy with '<' names"}};
  const char *name = names[!!mux][!!amplify]; /* outlives the attacker */
  size_t mem0 = t->mem.cur;
  t->mem.peak = mem0;
  int64_t ts = unix_now();
  it_buf login = {0};
  put_login_as(&login, ts, NULL, 0);
  rawcl r;
  if (mux) {
    /* It reads its socket, but never grants its control stream window. */
    rawcl_open_mux(t, &r, name, &login);
  } else {
    rawcl_open(t, &r, name, &login, 4096, NULL);
    /* From now on its socket is never read: the answers pile up. */
    r.a->no_read = 1;
    uv_read_stop((uv_stream_t *)&r.a->tcp);
  }
  it_buf_free(&login);
  WAIT_MS(t, tunnel_server_client_count(t->srv) == 2, FAST_MS);
  reqflood f = {&r, mux, {0}, {0}};
  while (f.unit.len < 60000) {
    if (!amplify) {
      put_signed(&f.unit, TUNNEL__MSG_PING, TOKEN, ts, ts, NULL, NULL);
      continue;
    }
    /* Raw '<' in the JSON: only the server's answer escapes it. */
    char lt[901], body[1024];
    memset(lt, '<', 900);
    lt[900] = '\0';
    snprintf(body, sizeof body,
             "{\"proxy_name\":\"%s\",\"proxy_type\":\"%.16s\"}", lt, lt);
    it_frp(&f.unit, TUNNEL__MSG_NEW_PROXY, body);
  }
  r.a->ud = &f;
  r.a->flood_gen = reqflood_gen;
  r.a->flood_max = mux ? FLOOD_MUX_MAX : UINT64_MAX;
  uint64_t t0 = now_ms(t);
  it_atk_flood_pump(r.a);
  conn *during = vis_new(t, ECHO_BYTES, seed);
  it_waiter_arm(&t->w, FLOOD_CUT_MS);
  while (!it_atk_ended(r.a) && !t->w.fired &&
         mem_above(t, mem0) < FLOOD_MEM_ABORT)
    uv_run(&t->loop, UV_RUN_ONCE);
  it_waiter_disarm(&t->w);
  uint64_t ms = now_ms(t) - t0;
  size_t peak = t->mem.peak - mem0;
  fprintf(stderr,
          "# %s: %s after %llu ms and %llu bytes sent; server memory peak "
          "%zu bytes above the baseline (bound %u)\n",
          name, it_atk_ended(r.a) ? it_atk_how(r.a) : "still connected",
          (unsigned long long)ms, (unsigned long long)r.a->flood_sent, peak,
          FLOOD_MEM_BOUND);
  if (!it_atk_ended(r.a)) {
    ht_fail_later(t,
                  "%s: not cut off after %llu ms and %llu bytes of requests "
                  "(server memory %zu bytes above the baseline)",
                  name, (unsigned long long)ms,
                  (unsigned long long)r.a->flood_sent, mem_above(t, mem0));
    it_atk_close(r.a);
  }
  if (peak >= FLOOD_MEM_BOUND)
    ht_fail_later(t,
                  "%s: server memory peaked %zu bytes above the baseline "
                  "(bound %u)",
                  name, peak, FLOOD_MEM_BOUND);
  WAIT_MS(t, tunnel_server_client_count(t->srv) == 1, FAST_MS);
  WAIT(t, during->closed);
  vis_check(during, "during the request flood");
  wait_mem_settled(t, mem0, name);
  /* The generator's state lives in this frame. */
  r.a->flood_gen = NULL;
  r.a->flood_max = 0;
  it_atk_close(r.a);
  rawcl_free(&r);
  it_buf_free(&f.unit);
  it_buf_free(&f.tmp);
}

static void test_request_flood(void **state) {
  (void)state;
  ht t;
  ht_setup(&t, 0x0e5eed0009ull);
  for (int mux = 0; mux < 2; mux++) {
    for (int amplify = 0; amplify < 2; amplify++) {
      uint32_t seed = 2u + 2u * (uint32_t)(2 * mux + amplify);
      flood_requests(&t, amplify, mux, seed);
      echo_now(&t, seed + 1, "after a request flood");
    }
  }
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* The library's defaults where the fixture is stricter (message size and
 * control backlog), for attacks whose point needs them. */
static void tune_defaults(tunnel_config *cfg) {
  assert_int_equal(tunnel_config_set_max_message_size(cfg, 10240), 0);
  assert_int_equal(tunnel_config_set_max_control_backlog(cfg, 1u << 20), 0);
}

/* 10. Sessions that never log in open streams: UNAUTH_SESSIONS yamux
 * sessions from 127.0.0.1 connect (the server keeps the newest
 * unauth_per_addr, 128 by default, and sheds the others), then each one
 * kept sends UNAUTH_SYNS SYNs, every other one followed by a frp header
 * announcing a 10240-byte message that never comes, in UNAUTH_ROUNDS
 * bursts (one write each). Each session keeps at most UNAUTH_STREAMS
 * streams (the default): every further SYN is answered with RST, and the
 * session itself goes on (it answers a ping). The server holds at most
 * UNAUTH_MEM_BOUND above its baseline, even while it refuses a burst, and
 * the legitimate tunnel echoes meanwhile. The server runs with the default
 * limits. */
#define UNAUTH_SESSIONS 200
#define UNAUTH_SYNS 1024
#define UNAUTH_STREAMS 4
#define UNAUTH_MEM_BOUND (32u << 20)
#define UNAUTH_MEM_ABORT (128u << 20)
#define UNAUTH_ROUNDS 2
/* Well below the identification timeout, which would end the sessions. */
#define UNAUTH_WAIT_MS 7000u

/* What the server answered to each stream id of a session. */
typedef struct sstate {
  uint8_t ack[2 * UNAUTH_SYNS + 2], rst[2 * UNAUTH_SYNS + 2];
  int rsts, live, goaway, bad, ping_acks;
} sstate;

static void stream_states(const it_atk *a, sstate *s) {
  memset(s, 0, sizeof *s);
  const uint8_t *p = a->rx.p;
  size_t n = a->rx.len, off = 0;
  while (n - off >= 12) {
    const uint8_t *h = p + off;
    uint8_t type = h[1];
    uint16_t flags = (uint16_t)it_get_be(h + 2, 2);
    uint32_t id = (uint32_t)it_get_be(h + 4, 4);
    uint32_t len = (uint32_t)it_get_be(h + 8, 4);
    off += 12;
    if (h[0] != 0 || type > IT_YG) {
      s->bad++;
      break;
    }
    if (type == IT_YD) {
      if (n - off < len)
        break;
      off += len;
    }
    if (type == IT_YG)
      s->goaway++;
    if (type == IT_YP && (flags & IT_ACK))
      s->ping_acks++;
    if ((type == IT_YD || type == IT_YW) && id < sizeof s->ack) {
      if (flags & IT_ACK)
        s->ack[id] = 1;
      if (flags & IT_RST)
        s->rst[id] = 1;
    }
  }
  for (size_t id = 0; id < sizeof s->ack; id++) {
    s->rsts += s->rst[id];
    s->live += s->ack[id] && !s->rst[id];
  }
}

/* The byte budget for unauthenticated peers sheds whole sessions; here
 * it is raised so that every session the per-address cap keeps stays, and
 * what is measured is what each one can make the server hold. */
static void tune_unauth_flood(tunnel_config *cfg) {
  tune_defaults(cfg);
  assert_int_equal(tunnel_config_set_unauth_limits(cfg, 4, 128, 64u << 20),
                   0);
}

static void test_unauth_stream_flood(void **state) {
  (void)state;
  enum { NS = UNAUTH_SESSIONS };
  ht t;
  ht_opts o = {tune_unauth_flood, 0};
  ht_setup_opts(&t, 0x0e5eed000aull, &o);
  /* Each burst is answered before the next, so that a server without the
   * defence is caught, and the attack stopped, before it takes all of the
   * machine's memory. */
  it_buf round[UNAUTH_ROUNDS];
  memset(round, 0, sizeof round);
  uint8_t hdr[9];
  hdr[0] = TUNNEL__MSG_LOGIN;
  it_put_be(hdr + 1, 10240, 8);
  for (uint32_t i = 0; i < UNAUTH_SYNS; i++) {
    it_buf *b = &round[i / (UNAUTH_SYNS / UNAUTH_ROUNDS)];
    put_syn(b, 2 * i + 1);
    if (i & 1)
      it_ymx_data(b, 2 * i + 1, 0, hdr, sizeof hdr);
  }
  it_atk **all = calloc(NS, sizeof *all), **a = calloc(NS, sizeof *a);
  assert_non_null(all);
  assert_non_null(a);
  for (int s = 0; s < NS; s++)
    all[s] = atk_new(&t, "unauthenticated session opening streams");
  WAIT(&t, all_connected(all, NS));
  it_sleep(&t.w, 300); /* the sessions shed to make room have seen it */
  int n = 0;
  for (int s = 0; s < NS; s++)
    if (!it_atk_ended(all[s]))
      a[n++] = all[s];
  fprintf(stderr, "# %d of %d sessions kept by the server\n", n, NS);
  if (n < NS / 4)
    fail_msg("the server kept only %d of %d sessions that had sent nothing "
             "yet",
             n, NS);
  size_t mem0 = t.mem.cur;
  t.mem.peak = mem0;
  uint64_t t0 = now_ms(&t);
  conn *during = vis_new(&t, ECHO_BYTES, 2);
  sstate *st = malloc(sizeof *st);
  assert_non_null(st);
  int aborted = 0;
  for (int r = 0; r < UNAUTH_ROUNDS && !aborted; r++) {
    uint32_t last = 2 * (uint32_t)((r + 1) * (UNAUTH_SYNS / UNAUTH_ROUNDS)) -
                    1;
    for (int s = 0; s < n; s++)
      it_atk_write(a[s], round[r].p, round[r].len);
    for (;;) {
      it_sleep(&t.w, 20);
      if (mem_above(&t, mem0) >= UNAUTH_MEM_ABORT) {
        aborted = 1;
        break;
      }
      int answered = 0;
      for (int s = 0; s < n; s++) {
        stream_states(a[s], st);
        answered += it_atk_ended(a[s]) || st->ack[last] || st->rst[last];
      }
      if (answered == n || now_ms(&t) - t0 > UNAUTH_WAIT_MS)
        break;
    }
  }
  for (int r = 0; r < UNAUTH_ROUNDS; r++)
    it_buf_free(&round[r]);
  uint64_t ms = now_ms(&t) - t0;
  size_t peak = t.mem.peak - mem0;
  int ended = 0, over = 0, unrefused = 0, broken = 0;
  int max_live = 0, min_rsts = UNAUTH_SYNS;
  for (int s = 0; s < n; s++) {
    stream_states(a[s], st);
    ended += it_atk_ended(a[s]);
    over += st->live > UNAUTH_STREAMS;
    unrefused += st->rsts < UNAUTH_SYNS - UNAUTH_STREAMS;
    broken += st->goaway || st->bad;
    if (st->live > max_live)
      max_live = st->live;
    if (st->rsts < min_rsts)
      min_rsts = st->rsts;
  }
  fprintf(stderr,
          "# %d sessions x %d SYNs: after %llu ms, at most %d live "
          "stream(s) per session, at least %d RST(s); %d session(s) "
          "closed; server memory peak %zu bytes above the baseline "
          "(bound %u), %zu at the end\n",
          n, UNAUTH_SYNS, (unsigned long long)ms, max_live, min_rsts, ended,
          peak, UNAUTH_MEM_BOUND, mem_above(&t, mem0));
  /* At once: tearing down that much can take longer than the test. */
  if (aborted)
    fail_msg("the server held %zu bytes above the baseline for "
             "unauthenticated sessions' streams; attack stopped",
             mem_above(&t, mem0));
  if (peak >= UNAUTH_MEM_BOUND)
    ht_fail_later(&t,
                  "server memory peaked %zu bytes above the baseline "
                  "(bound %u)",
                  peak, UNAUTH_MEM_BOUND);
  if (over || unrefused || ended || broken)
    ht_fail_later(&t,
                  "of %d sessions that never logged in: %d kept more than "
                  "%d streams (at most %d), %d had fewer than %d SYNs reset "
                  "(at least %d reset), %d were closed, %d got a GoAway or "
                  "a malformed frame",
                  n, over, UNAUTH_STREAMS, max_live, unrefused,
                  UNAUTH_SYNS - UNAUTH_STREAMS, min_rsts, ended, broken);
  /* The sessions are alive: each answers a ping. */
  if (!ended && !broken) {
    for (int s = 0; s < n; s++) {
      it_buf p = {0};
      it_ymx(&p, 0, IT_YP, IT_SYN, 0, (uint32_t)s);
      it_atk_write(a[s], p.p, p.len);
      it_buf_free(&p);
    }
    int answered = 0;
    it_waiter_arm(&t.w, FAST_MS);
    while (!t.w.fired) {
      answered = 0;
      for (int s = 0; s < n; s++)
        answered += ping_acks(a[s]) > 0;
      if (answered == n)
        break;
      uv_run(&t.loop, UV_RUN_ONCE);
    }
    it_waiter_disarm(&t.w);
    if (answered != n)
      ht_fail_later(&t, "%d of %d sessions did not answer a ping",
                    n - answered, n);
  }
  for (int s = 0; s < NS; s++)
    it_atk_close(all[s]);
  WAIT(&t, during->closed);
  vis_check(during, "during the stream flood");
  wait_mem_settled(&t, mem0, "unauthenticated stream flood");
  free(st);
  free(a);
  free(all);
  echo_now(&t, 3, "after the stream flood");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 11. A storm of sessions that never log in: STORM_SESSIONS connections
 * each send STORM_SYNS bare SYNs, wait for the server's answer to the last
 * one (so that the server has handled them all), and close. The attack
 * runs in a child process, so that this process's CPU time (getrusage) is
 * the server's and the legitimate tunnel's alone: from the storm's start
 * until the server has let go of every session it may cost at most
 * STORM_CPU_MS, and echoes through the tunnel, back to back meanwhile,
 * each take at most STORM_ECHO_MS (both times SAN_FACTOR under
 * sanitizers). The server runs with the default limits. */
#define STORM_SESSIONS 200
#define STORM_SYNS 1024
#define STORM_CPU_MS (3000u * SAN_FACTOR)
#define STORM_ECHO_MS (2000u * SAN_FACTOR)
#define STORM_ECHO_BYTES 4096u
#define STORM_MAX_MS 30000u

/* Reads the server's frames on `fd` until one answers stream `last` (ACK
 * or RST) or the connection ends: 0, or -1 when the wait timed out. */
static int storm_wait_answer(int fd, uint32_t last) {
  uint8_t buf[16384];
  uint8_t hdr[12];
  size_t have = 0;    /* header bytes gathered */
  uint64_t skip = 0;  /* data payload left to skip */
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0)
      return 0;
    if (n < 0)
      return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : 0;
    for (size_t i = 0; i < (size_t)n;) {
      if (skip) {
        size_t k = (size_t)n - i < skip ? (size_t)n - i : (size_t)skip;
        skip -= k;
        i += k;
        continue;
      }
      hdr[have++] = buf[i++];
      if (have < sizeof hdr)
        continue;
      have = 0;
      uint16_t flags = (uint16_t)it_get_be(hdr + 2, 2);
      uint32_t id = (uint32_t)it_get_be(hdr + 4, 4);
      if (hdr[1] == IT_YD)
        skip = it_get_be(hdr + 8, 4);
      if (hdr[1] == IT_YG)
        return 0;
      if (id == last && (flags & (IT_ACK | IT_RST)))
        return 0;
    }
  }
}

/* The child: only system calls (it was forked from a threaded process).
 * Its exit status counts connections that could not be made or whose
 * answer never came. */
static int storm_child(const struct sockaddr_in *sa, const uint8_t *tx,
                       size_t n, uint32_t last) {
  int fd[STORM_SESSIONS];
  int failed = 0;
  struct timeval rcvtimeo = {20, 0};
  for (int i = 0; i < STORM_SESSIONS; i++) {
    fd[i] = socket(AF_INET, SOCK_STREAM, 0);
    if (fd[i] >= 0 &&
        (setsockopt(fd[i], SOL_SOCKET, SO_RCVTIMEO, &rcvtimeo,
                    sizeof rcvtimeo) != 0 ||
         connect(fd[i], (const struct sockaddr *)sa, sizeof *sa) != 0)) {
      close(fd[i]);
      fd[i] = -1;
    }
    failed += fd[i] < 0;
  }
  for (int i = 0; i < STORM_SESSIONS; i++) {
    size_t off = 0;
    while (fd[i] >= 0 && off < n) {
      ssize_t w = write(fd[i], tx + off, n - off);
      if (w <= 0)
        break; /* the server may shed the session: not the child's error */
      off += (size_t)w;
    }
  }
  for (int i = 0; i < STORM_SESSIONS; i++)
    if (fd[i] >= 0 && storm_wait_answer(fd[i], last) != 0)
      failed++;
  for (int i = 0; i < STORM_SESSIONS; i++)
    if (fd[i] >= 0)
      close(fd[i]);
  return failed > 255 ? 255 : failed;
}

/* The storm may keep the server's loop from ever returning to the test's
 * bounded waits: then this ends the test with a diagnosis (and the child)
 * instead of meson's timeout. */
static volatile pid_t storm_pid;

static void storm_watchdog(int sig) {
  static const char msg[] =
      "FAILURE: the server's event loop was still blocked by the SYN storm "
      "after the watchdog's bound\n";
  (void)sig;
  if (storm_pid > 0)
    kill(storm_pid, SIGKILL);
  (void)!write(2, msg, sizeof msg - 1);
  _exit(1);
}

static uint64_t cpu_ms(const struct rusage *a, const struct rusage *b) {
  int64_t us = (int64_t)(b->ru_utime.tv_sec - a->ru_utime.tv_sec) * 1000000 +
               (b->ru_utime.tv_usec - a->ru_utime.tv_usec) +
               (int64_t)(b->ru_stime.tv_sec - a->ru_stime.tv_sec) * 1000000 +
               (b->ru_stime.tv_usec - a->ru_stime.tv_usec);
  return us > 0 ? (uint64_t)us / 1000u : 0;
}

static void test_syn_close_storm(void **state) {
  (void)state;
  ht t;
  ht_opts o = {tune_defaults, 0};
  ht_setup_opts(&t, 0x0e5eed000bull, &o);
  it_buf tx = {0};
  for (uint32_t i = 0; i < STORM_SYNS; i++)
    put_syn(&tx, 2 * i + 1);
  struct sockaddr_in sa;
  assert_int_equal(uv_ip4_addr("127.0.0.1", t.srv_port, &sa), 0);
  it_sleep(&t.w, 200); /* the setup's echo has settled */
  size_t mem0 = t.mem.cur;
  struct rusage ru0, ru1;
  assert_int_equal(getrusage(RUSAGE_SELF, &ru0), 0);
  uint64_t t0 = now_ms(&t);
  fflush(stderr);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    _exit(storm_child(&sa, tx.p, tx.len, 2 * STORM_SYNS - 1));
  storm_pid = pid;
  signal(SIGALRM, storm_watchdog);
  alarm(STORM_MAX_MS / 1000u + 15u);
  int status = 0, exited = 0, echoes = 0;
  uint64_t worst = 0, busy_ms = 0;
  for (;;) {
    if (!exited && waitpid(pid, &status, WNOHANG) == pid)
      exited = 1;
    if (exited && mem_above(&t, mem0) <= MEM_SETTLE_SLACK)
      break;
    if (now_ms(&t) - t0 > STORM_MAX_MS)
      break;
    uint64_t e0 = now_ms(&t);
    conn *v = vis_new(&t, STORM_ECHO_BYTES, 100u + (uint32_t)echoes);
    WAIT(&t, v->closed);
    vis_check(v, "during the SYN storm");
    conn_reap(&t, v);
    uint64_t rtt = now_ms(&t) - e0;
    if (rtt > worst)
      worst = rtt;
    echoes++;
  }
  busy_ms = now_ms(&t) - t0;
  assert_int_equal(getrusage(RUSAGE_SELF, &ru1), 0);
  alarm(0);
  storm_pid = 0;
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("the storm did not end within %u ms", STORM_MAX_MS);
  }
  it_buf_free(&tx);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("the storm's child failed: %d connection(s) not made or not "
             "answered within 20 s",
             WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  uint64_t cpu = cpu_ms(&ru0, &ru1);
  fprintf(stderr,
          "# %d sessions x %d SYNs then close: server busy %llu ms, CPU "
          "%llu ms (bound %u); %d echoes meanwhile, slowest %llu ms (bound "
          "%u); memory peak %zu bytes above the baseline\n",
          STORM_SESSIONS, STORM_SYNS, (unsigned long long)busy_ms,
          (unsigned long long)cpu, STORM_CPU_MS, echoes,
          (unsigned long long)worst, STORM_ECHO_MS, t.mem.peak - mem0);
  if (mem_above(&t, mem0) > MEM_SETTLE_SLACK)
    ht_fail_later(&t,
                  "the server still held %zu bytes above the baseline %u ms "
                  "after the storm began",
                  mem_above(&t, mem0), STORM_MAX_MS);
  if (cpu > STORM_CPU_MS)
    ht_fail_later(&t, "the storm cost the server %llu ms of CPU (bound %u)",
                  (unsigned long long)cpu, STORM_CPU_MS);
  if (worst > STORM_ECHO_MS)
    ht_fail_later(&t,
                  "an echo through the tunnel took %llu ms during the storm "
                  "(bound %u)",
                  (unsigned long long)worst, STORM_ECHO_MS);
  echo_now(&t, 3, "after the SYN storm");
  assert_int_equal(tunnel_server_client_count(t.srv), 1);
  legit_intact(&t);
  ht_teardown(&t);
}

/* 12. A client asks for more proxies than max_proxies (PROXY_CAP): the
 * first PROXY_CAP are granted, every further one is refused with a reason
 * naming the limit, and only PROXY_CAP of its public ports listen. Once it
 * closes one, it may open another. */
#define PROXY_CAP 5

static void tune_proxy_cap(tunnel_config *cfg) {
  assert_int_equal(tunnel_config_set_max_proxies(cfg, PROXY_CAP), 0);
}

/* A refusal that says it is about a limit. */
static int names_limit(const char *err) {
  char low[256];
  size_t i;
  for (i = 0; err[i] && i + 1 < sizeof low; i++)
    low[i] = (char)(err[i] >= 'A' && err[i] <= 'Z' ? err[i] - 'A' + 'a'
                                                    : err[i]);
  low[i] = '\0';
  return strstr(low, "limit") || strstr(low, "too many") ||
         strstr(low, "max") || strstr(low, "at most");
}

/* The NewProxyResp `r` received for `name`: 1 with its error and port. */
static int proxy_resp(const rawcl *r, const char *name, char err[256],
                      uint16_t *port) {
  tunnel__msg m[64];
  int k = rawcl_msgs(r, m, 64), found = 0;
  for (int i = 0; i < k; i++) {
    if (m[i].type != TUNNEL__MSG_NEW_PROXY_RESP || !m[i].proxy_name ||
        strcmp(m[i].proxy_name, name) != 0)
      continue;
    found = 1;
    snprintf(err, 256, "%s", m[i].error ? m[i].error : "");
    const char *colon = m[i].remote_addr ? strrchr(m[i].remote_addr, ':')
                                         : NULL;
    *port = colon ? (uint16_t)atoi(colon + 1) : 0;
  }
  clear_msgs(m, k);
  return found;
}

static void test_proxy_cap(void **state) {
  (void)state;
  enum { NP = PROXY_CAP + 3 };
  ht t;
  ht_opts o = {tune_proxy_cap, 0};
  ht_setup_opts(&t, 0x0e5eed000cull, &o);
  it_buf b = {0};
  put_login_as(&b, unix_now(), NULL, 0);
  rawcl r;
  rawcl_open(&t, &r, "client asking for 8 proxies", &b, 0, NULL);
  it_buf_free(&b);
  uint16_t port[NP + 1];
  char name[NP + 1][16];
  for (int i = 0; i <= NP; i++) {
    snprintf(name[i], sizeof name[i], "cap-%d", i);
    int dup;
    do {
      port[i] = it_free_port_in(t.lo, t.hi);
      assert_true(port[i] != 0);
      dup = port[i] == t.pub;
      for (int j = 0; j < i; j++)
        dup |= port[j] == port[i];
    } while (dup);
  }
  for (int i = 0; i < NP; i++)
    put_new_proxy(&b, name[i], port[i]);
  rawcl_send(&r, &b);
  it_buf_free(&b);
  rawcl_sync(&t, &r);
  for (int i = 0; i < NP; i++) {
    char err[256] = "";
    uint16_t got = 0;
    if (!proxy_resp(&r, name[i], err, &got))
      fail_msg("no NewProxyResp for %s", name[i]);
    if (i < PROXY_CAP) {
      if (err[0] || got != port[i])
        fail_msg("proxy %d of %d (%s, port %u) refused: \"%s\"", i + 1,
                 PROXY_CAP, name[i], port[i], err);
    } else {
      if (!err[0])
        fail_msg("proxy %d granted (port %u) beyond max_proxies = %d", i + 1,
                 got, PROXY_CAP);
      if (!names_limit(err))
        fail_msg("proxy %d refused with a reason that does not name the "
                 "limit: \"%s\"",
                 i + 1, err);
      if (i == PROXY_CAP)
        fprintf(stderr, "# proxy %d refused: %s\n", i + 1, err);
    }
  }
  for (int i = 0; i < NP; i++) {
    int listening = !it_port_free(port[i]);
    if (listening != (i < PROXY_CAP))
      fail_msg("port %u of proxy %d: %s", port[i], i + 1,
               listening ? "listening beyond the cap" : "not listening");
  }
  echo_now(&t, 2, "with a client at its proxy cap");

  /* One closed, one more granted. */
  it_frp(&b, TUNNEL__MSG_CLOSE_PROXY, "{\"proxy_name\":\"cap-0\"}");
  rawcl_send(&r, &b);
  it_buf_free(&b);
  rawcl_sync(&t, &r);
  WAIT_MS(&t, it_port_free(port[0]), FAST_MS);
  put_new_proxy(&b, name[NP], port[NP]);
  rawcl_send(&r, &b);
  it_buf_free(&b);
  rawcl_sync(&t, &r);
  char err[256] = "";
  uint16_t got = 0;
  if (!proxy_resp(&r, name[NP], err, &got) || err[0] || got != port[NP])
    fail_msg("after closing one, a new proxy was not granted: \"%s\"", err);
  rawcl_free(&r);
  it_atk_close(r.a);
  WAIT_MS(&t, tunnel_server_client_count(t.srv) == 1, FAST_MS);
  echo_now(&t, 3, "after the proxy cap");
  legit_intact(&t);
  ht_teardown(&t);
}

/* 13. Key age. A Login and a non-mux NewWorkConn signed with the right
 * token at timestamp OLD_TS (in 1970) are refused: a LoginResp with an
 * error, and the work connection closed; for each the server logs a line
 * naming the peer address. So is a Login signed AUTH_SKEW + 300 s ago,
 * while one signed AUTH_SKEW - 300 s ago, or as far in the future, is
 * accepted (AUTH_SKEW is the default, 900 s). A replayed Login (the same
 * run id, timestamp and key) while the session it came from is live is
 * refused and leaves that session alone, while a login with that run id
 * and a newer timestamp replaces it (a client reconnecting). With
 * tunnel_config_set_auth_max_skew(cfg, 0), a Login and a NewWorkConn
 * signed at OLD_TS are accepted. */
#define OLD_TS 1000
#define AUTH_SKEW 900

/* A Login that must be refused. With `addr_log`, the server must also log
 * a line naming the peer (127.0.0.1). */
static void expect_login_refused(ht *t, const char *name,
                                 const it_buf *login, int addr_log) {
  size_t lp = log_pos(t);
  it_atk *a = atk_bytes(t, name, login);
  char err[256], rid[64];
  size_t used = 0;
  wait_reply(t, a, 0, TUNNEL__MSG_LOGIN_RESP, err, rid, &used);
  if (!err[0] || rid[0])
    fail_msg("%s: accepted (run id \"%s\")", name, rid);
  it_atk *one[1] = {a};
  wait_closed_within(t, one, 1, FAST_MS, name);
  fprintf(stderr, "# %s: refused: %s\n", name, err);
  if (addr_log && !log_has(t, lp, TUNNEL_LOG_INFO, "127.0.0.1", NULL)) {
    log_dump(t, lp, name);
    fail_msg("%s: refused, but no log line names the peer 127.0.0.1", name);
  }
}

/* A Login that must be accepted; the client then leaves. */
static void expect_login_accepted(ht *t, const char *name,
                                  const it_buf *login) {
  uint32_t n0 = tunnel_server_client_count(t->srv);
  rawcl r;
  rawcl_open(t, &r, name, login, 0, NULL);
  WAIT_MS(t, tunnel_server_client_count(t->srv) == n0 + 1, FAST_MS);
  rawcl_free(&r);
  it_atk_close(r.a);
  WAIT_MS(t, tunnel_server_client_count(t->srv) == n0, FAST_MS);
}

static void tune_no_skew(tunnel_config *cfg) {
  assert_int_equal(tunnel_config_set_auth_max_skew(cfg, 0), 0);
}

static void test_old_key(void **state) {
  (void)state;
  ht t;
  ht_opts o = {NULL, 1};
  ht_setup_opts(&t, 0x0e5eed000dull, &o);
  int64_t now = unix_now();
  it_buf b = {0};
  put_login_as(&b, OLD_TS, NULL, 0);
  expect_login_refused(&t, "Login signed in 1970", &b, 1);
  b.len = 0;
  put_login_as(&b, now - AUTH_SKEW - 300, NULL, 0);
  expect_login_refused(&t, "Login signed 1200 s ago", &b, 0);
  b.len = 0;
  put_login_as(&b, now - AUTH_SKEW + 300, NULL, 0);
  expect_login_accepted(&t, "Login signed 600 s ago", &b);
  b.len = 0;
  put_login_as(&b, now + AUTH_SKEW - 300, NULL, 0);
  expect_login_accepted(&t, "Login signed 600 s ahead", &b);

  /* A non-mux client with two work connections requested. */
  b.len = 0;
  put_login_as(&b, now, NULL, 2);
  rawcl v;
  rawcl_open(&t, &v, "non-mux client", &b, 0, NULL);
  rawcl_wait_reqs(&t, &v, 2);
  size_t lp = log_pos(&t);
  it_atk *w = work_conn(&t, "NewWorkConn signed in 1970", v.run_id, 1,
                        OLD_TS, NULL);
  expect_work_refused(&t, w);
  if (!log_has(&t, lp, TUNNEL_LOG_INFO, "127.0.0.1", NULL)) {
    log_dump(&t, lp, w->name);
    fail_msg("%s: refused, but no log line names the peer 127.0.0.1",
             w->name);
  }
  expect_parked(&t, work_conn(&t, "NewWorkConn signed now", v.run_id, 1,
                              unix_now(), NULL));
  echo_now(&t, 2, "after the old keys");

  /* A replay of a live session's Login. */
  static const char rid[] = "5eed0000feedface";
  int64_t ts = unix_now();
  b.len = 0;
  put_login_as(&b, ts, rid, 0);
  rawcl live;
  rawcl_open(&t, &live, "client with its own run id", &b, 0, NULL);
  if (strcmp(live.run_id, rid) != 0)
    fail_msg("the server gave run id %s to a client that asked for %s",
             live.run_id, rid);
  uint32_t n0 = tunnel_server_client_count(t.srv);
  expect_login_refused(&t, "replayed Login of a live session", &b, 0);
  rawcl_sync(&t, &live);
  if (it_atk_ended(live.a) || tunnel_server_client_count(t.srv) != n0)
    fail_msg("the replayed Login ended the live session (%s)",
             it_atk_how(live.a));
  echo_now(&t, 3, "after the replayed Login");
  b.len = 0;
  put_login_as(&b, ts + 1, rid, 0);
  rawcl again;
  rawcl_open(&t, &again, "the same client, reconnecting", &b, 0, NULL);
  if (strcmp(again.run_id, rid) != 0)
    fail_msg("the reconnecting client got run id %s, not %s", again.run_id,
             rid);
  WAIT_MS(&t, it_atk_ended(live.a), FAST_MS);
  WAIT_MS(&t, tunnel_server_client_count(t.srv) == n0, FAST_MS);
  rawcl_free(&live);
  rawcl_free(&again);
  rawcl_free(&v);
  it_buf_free(&b);
  legit_intact(&t);
  ht_teardown(&t);

  /* No limit on the age. */
  o.tune = tune_no_skew;
  ht_setup_opts(&t, 0x0e5eed000eull, &o);
  put_login_as(&b, OLD_TS, NULL, 1);
  rawcl x;
  rawcl_open(&t, &x, "Login signed in 1970, any age allowed", &b, 0, NULL);
  it_buf_free(&b);
  rawcl_wait_reqs(&t, &x, 1);
  expect_parked(&t, work_conn(&t, "NewWorkConn signed in 1970, any age "
                                  "allowed",
                              x.run_id, 1, OLD_TS, NULL));
  rawcl_free(&x);
  echo_now(&t, 4, "with any key age allowed");
  legit_intact(&t);
  ht_teardown(&t);
}

/* 14. Work connections on TCP connections of their own (non-mux). By
 * default an unsigned NewWorkConn with the right run id from the address
 * the client's control connection came from (127.0.0.1) is accepted, as a
 * stock frpc sends it; from another address (::1) it is refused. A
 * NewWorkConn beyond the requests outstanding (the pool the server asked
 * for) is refused, signed or not. The pool hands out its oldest work
 * connection first, so one injected late does not get the next visitor.
 * For a client logged in over yamux, whose work streams come in its
 * session, an unsigned one is refused even while a visitor waits.
 * With tunnel_config_set_require_signed_work_conns(cfg, 1) an unsigned one
 * is refused and the server logs why; a signed one is still accepted. */
static void tune_require_signed(tunnel_config *cfg) {
  assert_int_equal(tunnel_config_set_require_signed_work_conns(cfg, 1), 0);
}

static void test_work_conn_rules(void **state) {
  (void)state;
  ht t;
  ht_opts o = {NULL, 1};
  ht_setup_opts(&t, 0x0e5eed000full, &o);
  it_buf b = {0};
  put_login_as(&b, unix_now(), NULL, 2);
  rawcl v;
  rawcl_open(&t, &v, "non-mux client, pool 2", &b, 0, NULL);
  it_buf_free(&b);
  uint16_t vport = rawcl_proxy(&t, &v, "wc");
  rawcl_wait_reqs(&t, &v, 2);
  if (!t.have_v6)
    fail_msg("the server could not listen on %s", OTHER_ADDR);
  expect_work_refused(&t, work_conn(&t, "unsigned NewWorkConn from "
                                        OTHER_ADDR,
                                    v.run_id, 0, 0, OTHER_ADDR));
  it_atk *w1 = work_conn(&t, "signed NewWorkConn, first", v.run_id, 1,
                         unix_now(), NULL);
  expect_parked(&t, w1);
  it_atk *w2 = work_conn(&t, "unsigned NewWorkConn from 127.0.0.1, second",
                         v.run_id, 0, 0, NULL);
  expect_parked(&t, w2);
  expect_work_refused(&t, work_conn(&t, "signed NewWorkConn beyond the "
                                        "requests",
                                    v.run_id, 1, unix_now(), NULL));
  expect_work_refused(&t, work_conn(&t, "unsigned NewWorkConn beyond the "
                                        "requests",
                                    v.run_id, 0, 0, NULL));
  /* A visitor: the first parked connection serves it. */
  it_atk *vis = it_atk_new(&t.loop, &t.atks, "visitor", vport, 0);
  WAIT_MS(&t, w1->rx.len || w2->rx.len || it_atk_ended(w1), FAST_MS);
  it_sleep(&t.w, 200);
  char err[256] = "";
  if (w2->rx.len || !w1->rx.len)
    fail_msg("the visitor went to the work connection parked last (the "
             "first got %zu bytes, the last %zu)",
             w1->rx.len, w2->rx.len);
  if (first_msg(w1->rx.p, w1->rx.len, TUNNEL__MSG_START_WORK_CONN, err,
                sizeof err, NULL, 0, NULL) != 1 ||
      err[0])
    fail_msg("the first work connection got no StartWorkConn (error "
             "\"%s\")",
             err);
  it_atk_close(vis);
  rawcl_free(&v);

  /* A yamux client's visitor waits for a work stream: a work connection
   * of its own for that client, unsigned, from the same address, is
   * refused all the same (such a client never sends one), and the visitor
   * does not get it. */
  b.len = 0;
  put_login_as(&b, unix_now(), NULL, 0);
  rawcl mx;
  rawcl_open_mux(&t, &mx, "yamux client that opens no work streams", &b);
  it_buf_free(&b);
  uint16_t mport = rawcl_proxy(&t, &mx, "wc-mux");
  it_atk *mvis = it_atk_new(&t.loop, &t.atks, "visitor of the yamux client",
                            mport, 0);
  rawcl_wait_reqs(&t, &mx, 1);
  expect_work_refused(&t, work_conn(&t, "unsigned NewWorkConn from "
                                        "127.0.0.1 for a yamux client",
                                    mx.run_id, 0, 0, NULL));
  if (it_atk_ended(mvis) || mvis->rx.len)
    fail_msg("the yamux client's visitor was served (%s, %zu bytes)",
             it_atk_how(mvis), mvis->rx.len);
  it_atk_close(mvis);
  rawcl_free(&mx);
  echo_now(&t, 2, "after the work connections");
  legit_intact(&t);
  ht_teardown(&t);

  /* Signatures required. */
  o.tune = tune_require_signed;
  ht_setup_opts(&t, 0x0e5eed0010ull, &o);
  put_login_as(&b, unix_now(), NULL, 1);
  rawcl_open(&t, &v, "non-mux client, pool 1", &b, 0, NULL);
  it_buf_free(&b);
  rawcl_wait_reqs(&t, &v, 1);
  size_t lp = log_pos(&t);
  it_atk *u = work_conn(&t, "unsigned NewWorkConn, signatures required",
                        v.run_id, 0, 0, NULL);
  expect_work_refused(&t, u);
  if (!log_has(&t, lp, TUNNEL_LOG_WARN, "key", NULL) &&
      !log_has(&t, lp, TUNNEL_LOG_WARN, "sign", NULL)) {
    log_dump(&t, lp, u->name);
    fail_msg("%s: refused without a warning that says why (no key)",
             u->name);
  }
  expect_parked(&t, work_conn(&t, "signed NewWorkConn, signatures required",
                              v.run_id, 1, unix_now(), NULL));
  rawcl_free(&v);
  echo_now(&t, 3, "with signed work connections required");
  legit_intact(&t);
  ht_teardown(&t);
}

/* 15. Slowloris: SLOW_CONNS connections from 127.0.0.1, more than
 * max_clients (the default 1024), each sending a Login (raw, or in a yamux
 * stream) one byte per second, so that none ever finishes. During the
 * trickle, a new tunnel_client logs in within SLOW_LOGIN_MS and its tunnel
 * echoes; so does the legitimate one. */
#define SLOW_CONNS 1100
#define SLOW_BATCH 100
#define SLOW_LOGIN_MS 5000u

static void on_late_px(tunnel_proxy *p, int status, const char *msg,
                       void *ud) {
  badcl *b = ud;
  (void)p;
  b->px_calls++;
  b->px_status = status;
  const char *colon = msg ? strrchr(msg, ':') : NULL;
  b->pub = status == 0 && colon ? (uint16_t)atoi(colon + 1) : 0;
}

static void test_slowloris(void **state) {
  (void)state;
  ht t;
  ht_setup(&t, 0x0e5eed0011ull);
  it_buf raw = {0}, mux = {0};
  put_login_as(&raw, unix_now(), NULL, 1);
  put_syn(&mux, 1);
  it_ymx_data(&mux, 1, 0, raw.p, raw.len);
  it_atk **a = calloc(SLOW_CONNS, sizeof *a);
  assert_non_null(a);
  uint64_t t0 = now_ms(&t);
  for (int i = 0; i < SLOW_CONNS; i += SLOW_BATCH) {
    int n = SLOW_CONNS - i < SLOW_BATCH ? SLOW_CONNS - i : SLOW_BATCH;
    for (int j = i; j < i + n; j++) {
      a[j] = atk_new(&t, j % 2 ? "slow Login in a yamux stream"
                               : "slow raw Login");
      a[j]->tick_bytewise = 1;
      const it_buf *u = j % 2 ? &mux : &raw;
      it_buf_put(&a[j]->tick_unit, u->p, u->len);
    }
    it_waiter_arm(&t.w, IT_WAIT_MS);
    for (;;) {
      int pending = 0;
      for (int j = i; j < i + n; j++)
        pending += !a[j]->connected && !it_atk_ended(a[j]);
      if (!pending || t.w.fired)
        break;
      uv_run(&t.loop, UV_RUN_ONCE);
    }
    it_waiter_disarm(&t.w);
    for (int j = i; j < i + n; j++)
      if (a[j]->connected && !it_atk_ended(a[j]))
        it_atk_tick(a[j], 1000);
  }
  int open = 0, refused = 0;
  for (int i = 0; i < SLOW_CONNS; i++) {
    open += a[i]->connected && !it_atk_ended(a[i]);
    refused += !a[i]->connected;
  }
  fprintf(stderr,
          "# %d slow connections made in %llu ms: %d still open, %d not "
          "connected\n",
          SLOW_CONNS, (unsigned long long)(now_ms(&t) - t0), open, refused);
  it_sleep(&t.w, 1000); /* a first byte from each */

  conn *during = vis_new(&t, ECHO_BYTES, 2);
  badcl *late = &t.bad[t.nbad++];
  late->t = &t;
  tunnel_config *cfg = config_new(&t, TOKEN, "late client");
  assert_int_equal(tunnel_client_new(&late->c, &t.loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_client_set_state_cb(late->c, on_bad_state, late),
                   0);
  assert_int_equal(
      tunnel_proxy_new(&late->px, late->c, "late", TUNNEL_PROXY_TCP), 0);
  assert_int_equal(
      tunnel_proxy_set_local(late->px, "127.0.0.1", t.svc_port), 0);
  assert_int_equal(tunnel_proxy_set_status_cb(late->px, on_late_px, late),
                   0);
  assert_int_equal(tunnel_proxy_start(late->px), 0);
  uint64_t l0 = now_ms(&t);
  assert_int_equal(tunnel_client_connect(late->c, "127.0.0.1", t.srv_port),
                   0);
  it_waiter_arm(&t.w, SLOW_LOGIN_MS);
  while (!late->state_calls && !t.w.fired)
    uv_run(&t.loop, UV_RUN_ONCE);
  it_waiter_disarm(&t.w);
  uint64_t login_ms = now_ms(&t) - l0;
  if (!late->state_calls)
    fail_msg("a new client did not log in within %u ms during the "
             "trickle",
             SLOW_LOGIN_MS);
  if (late->state != 0)
    fail_msg("a new client's login failed during the trickle after %llu "
             "ms: %s (%s)",
             (unsigned long long)login_ms, tunnel_err_name(late->state),
             late->msg);
  WAIT_MS(&t, late->px_calls > 0, FAST_MS);
  if (late->px_status != 0 || !late->pub)
    fail_msg("the new client's proxy was refused: %s",
             tunnel_err_name(late->px_status));
  fprintf(stderr, "# a new client logged in after %llu ms during the "
          "trickle\n",
          (unsigned long long)login_ms);
  uint16_t pub = t.pub;
  t.pub = late->pub;
  echo_now(&t, 3, "through the new client, during the trickle");
  t.pub = pub;
  WAIT(&t, during->closed);
  vis_check(during, "during the trickle");
  echo_now(&t, 4, "during the trickle");
  assert_int_equal(tunnel_server_client_count(t.srv), 2);
  legit_intact(&t);
  it_buf_free(&raw);
  it_buf_free(&mux);
  free(a);
  ht_teardown(&t);
}

/* 16. Control bytes in names: run ids, proxy names, a proxy type, a
 * version, a hostname and a user holding '\n', '\r', ESC, BEL, BS, TAB,
 * DEL..., from raw clients logged in or not, raw or in a yamux stream. No
 * line the log callback receives (at any level) holds a raw control
 * character, and the run ids and the proxy name do appear, escaped: both
 * halves of the name on one line. */
static void test_log_injection(void **state) {
  (void)state;
  ht t;
  ht_opts o = {NULL, 1};
  ht_setup_opts(&t, 0x0e5eed0012ull, &o);
  size_t lp = log_pos(&t);
  int64_t ts = unix_now();
  const tunnel__mem *mem = libc_mem();

  /* A Login full of control bytes. */
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  char k[33];
  key_of(TOKEN, ts, k);
  assert_int_equal(tunnel__msg_set_str(mem, &m.version,
                                       "0.61.0\nFAKE5\x1b]0;t\x07"),
                   0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.hostname, "h\bFAKE7\t"), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.user, "u\nFAKE8\r"), 0);
  assert_int_equal(tunnel__msg_set_str(mem, &m.privilege_key, k), 0);
  assert_int_equal(
      tunnel__msg_set_str(mem, &m.run_id, "inj\nFAKE1\r\x1b[2J\x07"), 0);
  m.timestamp = ts;
  it_buf b = {0};
  put_msg(&b, &m);
  tunnel__msg_clear(mem, &m);
  it_atk *l1 = atk_bytes(&t, "Login with control bytes", &b);
  char err[256], rid[64];
  wait_reply(&t, l1, 0, TUNNEL__MSG_LOGIN_RESP, err, rid, NULL);

  /* The same run id in a yamux stream's Login. */
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  assert_int_equal(tunnel__msg_set_str(mem, &m.privilege_key, k), 0);
  assert_int_equal(
      tunnel__msg_set_str(mem, &m.run_id, "mx\nFAKE6\b\x7f"), 0);
  m.timestamp = ts;
  it_buf lm = {0};
  put_msg(&lm, &m);
  tunnel__msg_clear(mem, &m);
  b.len = 0;
  put_syn(&b, 1);
  it_ymx_data(&b, 1, 0, lm.p, lm.len);
  it_buf_free(&lm);
  it_atk *l2 = atk_bytes(&t, "yamux Login with control bytes", &b);
  wait_reply(&t, l2, 1, TUNNEL__MSG_LOGIN_RESP, err, rid, NULL);

  /* A work connection for a run id with control bytes. */
  b.len = 0;
  put_signed(&b, TUNNEL__MSG_NEW_WORK_CONN, TOKEN, ts, ts, NULL,
             "wc\nFAKE4\x1b[0m");
  it_atk *w = atk_bytes(&t, "NewWorkConn with control bytes", &b);
  WAIT_MS(&t, it_atk_ended(w) || w->rx.len, FAST_MS);

  /* Proxy names and a type with control bytes, from a logged-in client. */
  b.len = 0;
  put_login_as(&b, ts, NULL, 0);
  rawcl r;
  rawcl_open(&t, &r, "client naming proxies with control bytes", &b, 0,
             NULL);
  b.len = 0;
  static const char px[] = "px\nFAKE2\x1b[31m\x7f";
  put_new_proxy(&b, px, 0);
  put_new_proxy(&b, px, 0); /* a duplicate: refused, naming it */
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_PROXY);
  assert_int_equal(tunnel__msg_set_str(mem, &m.proxy_name, "q1"), 0);
  assert_int_equal(
      tunnel__msg_set_str(mem, &m.proxy_type, "tc\np\x01" "FAKE3"), 0);
  put_msg(&b, &m);
  tunnel__msg_clear(mem, &m);
  tunnel__msg_init(&m, TUNNEL__MSG_CLOSE_PROXY);
  assert_int_equal(tunnel__msg_set_str(mem, &m.proxy_name, "cl\nFAKE9\r"),
                   0);
  put_msg(&b, &m);
  tunnel__msg_clear(mem, &m);
  it_frp(&b, TUNNEL__MSG_CLOSE_PROXY,
         "{\"proxy_name\":\"px\\nFAKE2\\u001b[31m\\u007f\"}");
  rawcl_send(&r, &b);
  it_buf_free(&b);
  rawcl_sync(&t, &r);
  echo_now(&t, 2, "after the control bytes");

  fprintf(stderr, "# %llu server log lines, %llu with a raw control "
          "character\n",
          (unsigned long long)t.cap.lines,
          (unsigned long long)t.cap.ctl_lines);
  if (t.cap.ctl_lines) {
    log_dump(&t, lp, "the control bytes");
    fail_msg("%llu log line(s) held a raw control character; the first: "
             "%s",
             (unsigned long long)t.cap.ctl_lines, t.cap.first_ctl);
  }
  if (!log_has(&t, lp, TUNNEL_LOG_DEBUG, "inj", "FAKE1") &&
      !log_has(&t, lp, TUNNEL_LOG_DEBUG, "mx", "FAKE6") &&
      !log_has(&t, lp, TUNNEL_LOG_DEBUG, "wc", "FAKE4")) {
    log_dump(&t, lp, "the control bytes");
    fail_msg("no log line shows a run id with control bytes, escaped");
  }
  if (!log_has(&t, lp, TUNNEL_LOG_DEBUG, "px", "FAKE2")) {
    log_dump(&t, lp, "the control bytes");
    fail_msg("no log line shows the proxy name with control bytes, "
             "escaped");
  }
  rawcl_free(&r);
  legit_intact(&t);
  ht_teardown(&t);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_oversized_header),
      cmocka_unit_test(test_bad_control_messages),
      cmocka_unit_test(test_yamux_violations),
      cmocka_unit_test(test_idle_timeouts),
      cmocka_unit_test(test_flood_during_transfer),
      cmocka_unit_test(test_wrong_token_repeated),
      cmocka_unit_test(test_raw_login_bad_work_conn),
      cmocka_unit_test(test_request_flood),
      cmocka_unit_test(test_unauth_stream_flood),
      cmocka_unit_test(test_syn_close_storm),
      cmocka_unit_test(test_proxy_cap),
      cmocka_unit_test(test_old_key),
      cmocka_unit_test(test_work_conn_rules),
      cmocka_unit_test(test_slowloris),
      cmocka_unit_test(test_log_injection),
  };
  /* Attackers write to connections the server closes: EPIPE, not death. */
  signal(SIGPIPE, SIG_IGN);
  const char *lv = getenv("IT_LOG");
  if (lv && *lv)
    log_level = atoi(lv);
  if (argc > 1) {
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
