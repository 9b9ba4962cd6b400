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
 * Usage: test-integration-hostile [TEST_NAME]  (default: all tests)
 * Environment: IT_LOG=0..3 prints library log lines up to that level
 * (default: none; the attacks make the server warn a lot) on stderr. */
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

/* Internal headers (libtunnel_internal_dep): frp message encoding and the
 * frp key and cipher, to hand-build what a client would send. */
#include "crypto.h"
#include "msg.h"

#include "it_data.h"
#include "it_hostile.h"

#define TOKEN "it-token"
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

/* A tunnel_client with the wrong token (test_wrong_token_repeated). */
typedef struct badcl {
  ht *t;
  tunnel_client *c;
  int state_calls, state;
  char msg[256];
  int close_called, closed;
} badcl;

#define MAX_BAD 32

struct ht {
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
  uint64_t hr0; /* uv_hrtime at setup */
  char deferred[1024]; /* failures reported at the end of the test */
};

#define WAIT(t, cond) IT_WAIT(&(t)->w, cond, IT_WAIT_MS)

static uint64_t now_ms(ht *t) { return it_now(&t->loop); }

static tunnel_config *config_new(ht *t, const char *token, const char *who) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &t->mem),
                   0);
  if (log_level >= 0)
    assert_int_equal(tunnel_config_set_log(cfg, log_sink, log_level,
                                           (void *)(uintptr_t)who),
                     0);
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
static void ht_setup(ht *t, uint64_t seed) {
  memset(t, 0, sizeof *t);
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
  assert_int_equal(tunnel_server_new(&t->srv, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(t->srv, &t->srv_port), 0);

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
    {'o', "{\"user\":\"\\ud800\"}", "lone surrogate"},
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
      "raw NewWorkConn, no key",
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
    if (i < 6) {
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
