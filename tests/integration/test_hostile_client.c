/* Hostile servers against tunnel_client. Each test runs, on one uv loop, a
 * fake server written here with raw libuv and the frp codec, and
 * tunnel_clients (public API) connecting to it:
 *  - servers that accept and never answer, or never even accept: a client
 *    with a login deadline gives up in time and releases its connection;
 *  - a server that logs a non-mux client in and then asks for thousands of
 *    work connections: the client opens no more than max_work_conns at once
 *    and keeps working (heartbeats, visitors).
 * Every test ends by closing the clients, checking that every byte they
 * allocated through the configured allocator was returned, and that
 * uv_loop_close succeeds.
 *
 * Usage: test-integration-hostile-client [TEST_NAME]  (default: all)
 * Environment: IT_LOG=0..3 prints library log lines up to that level on
 * stderr (default: none). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <tunnel/uv.h>

/* Internal headers (libtunnel_internal_dep): the frp codec and cipher, to
 * play the server's part. */
#include "crypto.h"
#include "msg.h"

#include "it_data.h"
#include "it_hostile.h"

#define TOKEN "it-token"
#define FAKE_RUN_ID "fa4e5e4e4c1e0001"
/* Sanitizer builds run several times slower: time bounds that measure the
 * library's reaction (not a configured deadline) are multiplied by it. */
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

static int log_level = -1;

static void log_sink(int level, const char *msg, void *ud) {
  fprintf(stderr, "[%s] %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

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

/* ------------------------------------------------------- fake server */

enum fake_mode {
  FAKE_SILENT,    /* accepts, reads, never answers */
  FAKE_NO_ACCEPT, /* never accepts: the kernel completes the handshake */
  FAKE_WORK_FLOOD /* logs the client in, then asks for FLOOD_REQS work
                     connections */
};

#define FLOOD_REQS 5000

typedef struct fake fake;

/* One accepted connection: the control channel, a work connection, or not
 * known yet. */
typedef struct fconn {
  uv_tcp_t tcp;
  fake *f;
  struct fconn *next;
  int kind; /* 0 unknown, 1 control, 2 work */
  int eof, rerr, closing, closed;
  int joined; /* work: StartWorkConn sent */
  uint64_t t_accept, t_end;
  tunnel__msg_reader plain; /* first message (and, control, Login) */
  int plain_live;
  /* control, after Login: the client's encrypted stream */
  tunnel__cfb dec;
  tunnel__msg_reader enc_rd;
  int enc_live;
  it_buf after; /* work: bytes after NewWorkConn */
  uint8_t rbuf[16384];
} fconn;

struct fake {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uint16_t port;
  int mode;
  int listener_closed;
  fconn *conns;
  it_rng rng;
  fconn *ctl;
  tunnel__cfb enc; /* to the client */
  int enc_live;
  int logged_in, proxy_resp_sent, reqs_sent;
  char proxy_name[64];
  int pings;
  int accepted, works, works_open, max_unjoined;
  uint64_t t_last_work;
};

static void fconn_closed(uv_handle_t *h) { ((fconn *)h->data)->closed = 1; }

static void fconn_close(fconn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, fconn_closed);
}

static void fconn_write_done(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void fconn_write(fconn *c, const void *d, size_t n) {
  if (c->closing || c->eof || c->rerr || !n)
    return;
  /* uv_try_write first: the flood is written in one go into a socket
   * buffer the client drains. */
  uv_buf_t b = uv_buf_init((char *)d, (unsigned)n);
  int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (w == (int)n)
    return;
  size_t off = w > 0 ? (size_t)w : 0;
  uv_write_t *req = malloc(sizeof *req + n - off);
  assert_non_null(req);
  memcpy(req + 1, (const uint8_t *)d + off, n - off);
  b = uv_buf_init((char *)(req + 1), (unsigned)(n - off));
  if (uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, fconn_write_done) != 0)
    free(req);
}

/* Sends a message to the client, encrypted once the login is done. */
static void fake_send(fake *f, fconn *c, const tunnel__msg *m,
                      int encrypted) {
  it_buf b = {0};
  put_msg(&b, m);
  if (encrypted) {
    uint8_t *out = malloc(b.len + TUNNEL__CFB_IV_SIZE);
    assert_non_null(out);
    size_t n = 0;
    assert_int_equal(tunnel__cfb_encrypt(&f->enc, b.p, b.len, out, &n), 0);
    fconn_write(c, out, n);
    free(out);
  } else {
    fconn_write(c, b.p, b.len);
  }
  it_buf_free(&b);
}

static void fake_track_unjoined(fake *f) {
  int unjoined = 0;
  for (fconn *c = f->conns; c; c = c->next)
    unjoined += c->kind == 2 && !c->joined && !c->eof && !c->rerr &&
                !c->closing;
  if (unjoined > f->max_unjoined)
    f->max_unjoined = unjoined;
}

/* The client's encrypted control messages. */
static void fake_on_ctl_msg(fake *f, fconn *c, const tunnel__msg *m) {
  tunnel__msg r;
  switch (m->type) {
  case TUNNEL__MSG_NEW_PROXY:
    tunnel__msg_init(&r, TUNNEL__MSG_NEW_PROXY_RESP);
    assert_int_equal(tunnel__msg_set_str(libc_mem(), &r.proxy_name,
                                         m->proxy_name),
                     0);
    assert_int_equal(tunnel__msg_set_str(libc_mem(), &r.remote_addr,
                                         ":4242"),
                     0);
    fake_send(f, c, &r, 1);
    tunnel__msg_clear(libc_mem(), &r);
    snprintf(f->proxy_name, sizeof f->proxy_name, "%s",
             m->proxy_name ? m->proxy_name : "");
    f->proxy_resp_sent = 1;
    /* The flood: every request at once. */
    {
      it_buf plain = {0};
      tunnel__msg_init(&r, TUNNEL__MSG_REQ_WORK_CONN);
      for (int i = 0; i < FLOOD_REQS; i++)
        put_msg(&plain, &r);
      uint8_t *out = malloc(plain.len + TUNNEL__CFB_IV_SIZE);
      assert_non_null(out);
      size_t n = 0;
      assert_int_equal(
          tunnel__cfb_encrypt(&f->enc, plain.p, plain.len, out, &n), 0);
      fconn_write(c, out, n);
      free(out);
      it_buf_free(&plain);
      f->reqs_sent = FLOOD_REQS;
    }
    break;
  case TUNNEL__MSG_PING:
    f->pings++;
    tunnel__msg_init(&r, TUNNEL__MSG_PONG);
    fake_send(f, c, &r, 1);
    break;
  default:
    break;
  }
}

/* Feeds `n` bytes to a reader and calls `on_msg` for each whole message,
 * until it returns nonzero. Returns the bytes consumed (the rest follows
 * the message that stopped it). */
static size_t feed(fake *f, fconn *c, tunnel__msg_reader *rd,
                   const uint8_t *p, size_t n,
                   int (*on_msg)(fake *, fconn *, const tunnel__msg *)) {
  size_t off = 0;
  while (off < n) {
    size_t used = 0;
    tunnel__msg m;
    int rc = tunnel__msg_reader_feed(rd, p + off, n - off, &used, &m);
    off += used;
    if (rc < 0)
      fail_msg("fake server: the client sent a malformed message (%s)",
               tunnel_err_name(rc));
    if (rc == 0)
      break;
    int stop = on_msg(f, c, &m);
    tunnel__msg_clear(libc_mem(), &m);
    if (stop)
      return off;
  }
  return off;
}

static int on_encrypted_msg(fake *f, fconn *c, const tunnel__msg *m) {
  fake_on_ctl_msg(f, c, m);
  return 0;
}

/* The first message of a connection: Login (control) or NewWorkConn. */
static int on_first_msg(fake *f, fconn *c, const tunnel__msg *m) {
  if (m->type == TUNNEL__MSG_LOGIN) {
    c->kind = 1;
    f->ctl = c;
    tunnel__msg r;
    tunnel__msg_init(&r, TUNNEL__MSG_LOGIN_RESP);
    assert_int_equal(tunnel__msg_set_str(libc_mem(), &r.version, "0.61.0"),
                     0);
    assert_int_equal(tunnel__msg_set_str(libc_mem(), &r.run_id, FAKE_RUN_ID),
                     0);
    fake_send(f, c, &r, 0);
    tunnel__msg_clear(libc_mem(), &r);
    uint8_t iv[TUNNEL__CFB_IV_SIZE];
    it_rng_fill(&f->rng, iv, sizeof iv);
    assert_int_equal(
        tunnel__cfb_init_encrypt(&f->enc, TOKEN, strlen(TOKEN), iv), 0);
    f->enc_live = 1;
    assert_int_equal(tunnel__cfb_init_decrypt(&c->dec, TOKEN, strlen(TOKEN)),
                     0);
    tunnel__msg_reader_init(&c->enc_rd, libc_mem(), 1u << 20);
    c->enc_live = 1;
    f->logged_in = 1;
  } else if (m->type == TUNNEL__MSG_NEW_WORK_CONN) {
    c->kind = 2;
    f->works++;
    f->t_last_work = uv_now(f->loop);
    fake_track_unjoined(f);
  } else {
    fail_msg("fake server: unexpected first message %s",
             tunnel__msg_type_name(m->type));
  }
  return 1;
}

static void fconn_data(fake *f, fconn *c, const uint8_t *p, size_t n) {
  if (f->mode != FAKE_WORK_FLOOD)
    return; /* silent: read and drop */
  if (c->kind == 0) {
    size_t used = feed(f, c, &c->plain, p, n, on_first_msg);
    p += used;
    n -= used;
  }
  if (c->kind == 1 && n) {
    uint8_t *plain = malloc(n);
    assert_non_null(plain);
    size_t pn = 0;
    assert_int_equal(tunnel__cfb_decrypt(&c->dec, p, n, plain, &pn), 0);
    feed(f, c, &c->enc_rd, plain, pn, on_encrypted_msg);
    free(plain);
  } else if (c->kind == 2 && n) {
    it_buf_put(&c->after, p, n);
  }
}

static void fconn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  fconn *c = h->data;
  (void)hint;
  *b = uv_buf_init((char *)c->rbuf, sizeof c->rbuf);
}

static void fconn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  fconn *c = s->data;
  if (n == 0)
    return;
  if (n > 0) {
    fconn_data(c->f, c, (const uint8_t *)b->base, (size_t)n);
    return;
  }
  uv_read_stop(s);
  c->t_end = uv_now(c->f->loop);
  if (n == UV_EOF)
    c->eof = 1;
  else
    c->rerr = (int)n;
  fake_track_unjoined(c->f);
}

static void fake_on_conn(uv_stream_t *l, int status) {
  fake *f = l->data;
  if (status < 0 || f->mode == FAKE_NO_ACCEPT)
    return;
  fconn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->f = f;
  c->t_accept = uv_now(f->loop);
  uv_tcp_init(f->loop, &c->tcp);
  c->tcp.data = c;
  c->next = f->conns;
  f->conns = c;
  tunnel__msg_reader_init(&c->plain, libc_mem(), 1u << 20);
  c->plain_live = 1;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    fconn_close(c);
    return;
  }
  f->accepted++;
  uv_read_start((uv_stream_t *)&c->tcp, fconn_alloc, fconn_read);
}

static void fake_start(fake *f, uv_loop_t *loop, int mode, uint64_t seed) {
  memset(f, 0, sizeof *f);
  f->loop = loop;
  f->mode = mode;
  f->rng.s = seed;
  uv_tcp_init(loop, &f->listener);
  f->listener.data = f;
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  assert_int_equal(uv_tcp_bind(&f->listener, (const struct sockaddr *)&a, 0),
                   0);
  assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 511, fake_on_conn),
                   0);
  int len = sizeof a;
  assert_int_equal(
      uv_tcp_getsockname(&f->listener, (struct sockaddr *)&a, &len), 0);
  f->port = ntohs(a.sin_port);
}

static void fake_listener_closed(uv_handle_t *h) {
  ((fake *)h->data)->listener_closed = 1;
}

static void fake_close(fake *f) {
  for (fconn *c = f->conns; c; c = c->next)
    fconn_close(c);
  uv_close((uv_handle_t *)&f->listener, fake_listener_closed);
}

/* After the loop has run the closes. */
static void fake_free(fake *f) {
  while (f->conns) {
    fconn *c = f->conns;
    f->conns = c->next;
    if (c->plain_live)
      tunnel__msg_reader_free(&c->plain);
    if (c->enc_live) {
      tunnel__msg_reader_free(&c->enc_rd);
      tunnel__cfb_free(&c->dec);
    }
    it_buf_free(&c->after);
    free(c);
  }
  if (f->enc_live)
    tunnel__cfb_free(&f->enc);
}

/* ------------------------------------------------------------ clients */

typedef struct cl {
  uv_loop_t *loop;
  tunnel_client *c;
  const char *name;
  int state_calls, state;
  char msg[256];
  uint64_t t_connect, t_state;
  int closed;
  /* in-process visitors (test_work_conn_flood) */
  tunnel_stream *st;
  it_buf got;
  int st_eof;
} cl;

typedef struct hc {
  uv_loop_t loop;
  it_waiter w;
  memstat mem;
} hc;

static void on_state(tunnel_client *c, int status, const char *msg,
                     void *ud) {
  cl *x = ud;
  (void)c;
  x->state_calls++;
  x->state = status;
  x->t_state = it_now(x->loop);
  snprintf(x->msg, sizeof x->msg, "%s", msg ? msg : "");
}

static void on_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((cl *)ud)->closed = 1;
}

static tunnel_config *config_new(hc *h, const char *who) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &h->mem),
                   0);
  if (log_level >= 0)
    assert_int_equal(tunnel_config_set_log(cfg, log_sink, log_level,
                                           (void *)(uintptr_t)who),
                     0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  return cfg;
}

/* Closes every client, checks that the library returned every byte, then
 * closes the fake servers and the loop. */
static void hc_teardown(hc *h, cl *cls, int n, fake *f, int nf) {
  for (int i = 0; i < n; i++)
    assert_int_equal(tunnel_client_close(cls[i].c, on_closed, &cls[i]), 0);
  it_waiter_arm(&h->w, 5000);
  for (;;) {
    int all = 1;
    for (int i = 0; i < n; i++)
      all = all && cls[i].closed;
    if (all || h->w.fired)
      break;
    uv_run(&h->loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&h->w);
  for (int i = 0; i < n; i++)
    if (!cls[i].closed)
      fail_msg("client \"%s\" did not close within 5 s", cls[i].name);
  if (h->mem.cur != 0)
    fail_msg("the clients leaked %zu bytes through the allocator",
             h->mem.cur);
  for (int i = 0; i < nf; i++)
    fake_close(&f[i]);
  assert_int_equal(it_waiter_finish(&h->w, IT_WAIT_MS), 0);
  for (int i = 0; i < nf; i++)
    fake_free(&f[i]);
  fprintf(stderr, "# clients' memory peak %zu bytes\n", h->mem.peak);
}

static void hc_setup(hc *h) {
  memset(h, 0, sizeof *h);
  assert_int_equal(uv_loop_init(&h->loop), 0);
  it_waiter_init(&h->w, &h->loop);
}

/* 1. Servers that accept and never answer, or never accept at all (the
 * kernel completes the handshake anyway), for a mux and a non-mux client
 * each, with tunnel_config_set_login_timeout(cfg, LOGIN_TIMEOUT_MS): every
 * client reports TUNNEL_ETIMEDOUT once, between LOGIN_GIVEUP_MIN_MS and
 * LOGIN_GIVEUP_MAX_MS after tunnel_client_connect, and lets go of its
 * connection (the silent server reads EOF). */
#define LOGIN_TIMEOUT_MS 1000u
#define LOGIN_GIVEUP_MIN_MS 900u
#define LOGIN_GIVEUP_MAX_MS 2000u

static void test_login_timeout(void **state) {
  (void)state;
  enum { NC = 4 };
  static const char *const names[NC] = {
      "mux, server silent", "non-mux, server silent",
      "mux, server never accepts", "non-mux, server never accepts"};
  hc h;
  hc_setup(&h);
  fake f[2];
  fake_start(&f[0], &h.loop, FAKE_SILENT, 1);
  fake_start(&f[1], &h.loop, FAKE_NO_ACCEPT, 2);
  cl cls[NC];
  memset(cls, 0, sizeof cls);
  for (int i = 0; i < NC; i++) {
    cl *x = &cls[i];
    x->loop = &h.loop;
    x->name = names[i];
    tunnel_config *cfg = config_new(&h, names[i]);
    assert_int_equal(tunnel_config_set_login_timeout(cfg, LOGIN_TIMEOUT_MS),
                     0);
    /* One attempt each: what is counted is how it ends. */
    assert_int_equal(tunnel_config_set_reconnect(cfg, 0, 0, 0, 0), 0);
    assert_int_equal(tunnel_config_set_tcp_mux(cfg, i % 2 == 0), 0);
    assert_int_equal(tunnel_client_new(&x->c, &h.loop, cfg), 0);
    tunnel_config_free(cfg);
    assert_int_equal(tunnel_client_set_state_cb(x->c, on_state, x), 0);
    x->t_connect = it_now(&h.loop);
    assert_int_equal(
        tunnel_client_connect(x->c, "127.0.0.1", f[i / 2].port), 0);
  }
  it_waiter_arm(&h.w, LOGIN_GIVEUP_MAX_MS + 2000u);
  for (;;) {
    int all = 1;
    for (int i = 0; i < NC; i++)
      all = all && cls[i].state_calls > 0;
    if (all || h.w.fired)
      break;
    uv_run(&h.loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&h.w);
  it_sleep(&h.w, 300); /* no second report */
  for (int i = 0; i < NC; i++) {
    cl *x = &cls[i];
    if (!x->state_calls)
      fail_msg("client \"%s\": no report %u ms after connecting (login "
               "timeout %u ms)",
               x->name, LOGIN_GIVEUP_MAX_MS + 2000u, LOGIN_TIMEOUT_MS);
    uint64_t ms = x->t_state - x->t_connect;
    fprintf(stderr, "# client \"%s\": %s after %llu ms\n", x->name,
            tunnel_err_name(x->state), (unsigned long long)ms);
    if (x->state != TUNNEL_ETIMEDOUT)
      fail_msg("client \"%s\": reported %s (%s), expected TUNNEL_ETIMEDOUT",
               x->name, tunnel_err_name(x->state), x->msg);
    if (ms < LOGIN_GIVEUP_MIN_MS || ms > LOGIN_GIVEUP_MAX_MS)
      fail_msg("client \"%s\": gave up after %llu ms, expected %u..%u",
               x->name, (unsigned long long)ms, LOGIN_GIVEUP_MIN_MS,
               LOGIN_GIVEUP_MAX_MS);
    if (x->state_calls != 1)
      fail_msg("client \"%s\": %d reports, expected one", x->name,
               x->state_calls);
  }
  /* The silent server saw both clients arrive, and leave. */
  assert_int_equal(f[0].accepted, 2);
  it_waiter_arm(&h.w, 1000);
  for (;;) {
    int ended = 0;
    for (fconn *c = f[0].conns; c; c = c->next)
      ended += c->eof || c->rerr;
    if (ended == 2 || h.w.fired)
      break;
    uv_run(&h.loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&h.w);
  for (fconn *c = f[0].conns; c; c = c->next)
    if (!c->eof && !c->rerr)
      fail_msg("a client that gave up still holds its connection to the "
               "silent server");
  hc_teardown(&h, cls, NC, f, 2);
}

/* 2. A non-mux server logs the client in, grants its proxy, and then asks
 * for FLOOD_REQS work connections at once. With
 * tunnel_config_set_max_work_conns(cfg, MAX_WORK) the client opens
 * MAX_WORK of them, never more waiting for a visitor at once, and ignores
 * the rest; meanwhile it keeps sending heartbeats (every second here), and
 * a visitor sent down one of its work connections reaches the program's
 * accept callback and is answered. */
#define MAX_WORK 16
#define WORK_SETTLE_MS 1000u
#define WORK_WAIT_MS (5000u * SAN_FACTOR)
#define VIS_HELLO "hello through the flood"
#define VIS_REPLY "HELLO THROUGH THE FLOOD"

static void on_vis_read(tunnel_stream *st, int status, const uint8_t *d,
                        size_t n, void *ud) {
  cl *x = ud;
  if (status != 0) {
    x->st_eof = 1;
    return;
  }
  size_t before = x->got.len;
  it_buf_put(&x->got, d, n);
  if (before < strlen(VIS_HELLO) && x->got.len >= strlen(VIS_HELLO))
    assert_int_equal(tunnel_stream_write(st, (const uint8_t *)VIS_REPLY,
                                         strlen(VIS_REPLY), NULL, NULL),
                     0);
}

static void on_accept(tunnel_proxy *p, tunnel_stream *st, void *ud) {
  cl *x = ud;
  (void)p;
  if (x->st) { /* one visitor is all this test sends */
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  x->st = st;
  assert_int_equal(tunnel_stream_read_start(st, on_vis_read, x), 0);
}

static int after_has(const fconn *c, const char *s) {
  size_t n = strlen(s);
  for (size_t i = 0; i + n <= c->after.len; i++)
    if (memcmp(c->after.p + i, s, n) == 0)
      return 1;
  return 0;
}

static void test_work_conn_flood(void **state) {
  (void)state;
  hc h;
  hc_setup(&h);
  fake f;
  fake_start(&f, &h.loop, FAKE_WORK_FLOOD, 3);
  cl x;
  memset(&x, 0, sizeof x);
  x.loop = &h.loop;
  x.name = "non-mux client";
  tunnel_config *cfg = config_new(&h, x.name);
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, 0), 0);
  assert_int_equal(tunnel_config_set_max_work_conns(cfg, MAX_WORK), 0);
  assert_int_equal(tunnel_config_set_pool_count(cfg, 0), 0);
  assert_int_equal(tunnel_config_set_heartbeat(cfg, 1, 90), 0);
  assert_int_equal(tunnel_client_new(&x.c, &h.loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_client_set_state_cb(x.c, on_state, &x), 0);
  tunnel_proxy *px;
  assert_int_equal(tunnel_proxy_new(&px, x.c, "p", TUNNEL_PROXY_TCP), 0);
  assert_int_equal(tunnel_proxy_set_accept_cb(px, on_accept, &x), 0);
  assert_int_equal(tunnel_proxy_start(px), 0);
  assert_int_equal(tunnel_client_connect(x.c, "127.0.0.1", f.port), 0);
  IT_WAIT(&h.w, x.state_calls > 0, IT_WAIT_MS);
  if (x.state != 0 || strcmp(x.msg, FAKE_RUN_ID) != 0)
    fail_msg("login to the fake server: %s (%s)", tunnel_err_name(x.state),
             x.msg);
  IT_WAIT(&h.w, f.reqs_sent == FLOOD_REQS, IT_WAIT_MS);

  /* The client answers what it will; then nothing more comes. */
  uint64_t t0 = it_now(&h.loop);
  for (;;) {
    it_sleep(&h.w, 100);
    uint64_t now = it_now(&h.loop);
    if (f.works > 0 && now - f.t_last_work >= WORK_SETTLE_MS)
      break;
    if (now - t0 > WORK_WAIT_MS)
      break;
  }
  fprintf(stderr,
          "# %d ReqWorkConn: the client opened %d work connection(s), at "
          "most %d waiting at once (limit %d); client memory peak %zu "
          "bytes\n",
          FLOOD_REQS, f.works, f.max_unjoined, MAX_WORK, h.mem.peak);
  if (f.max_unjoined > MAX_WORK || f.works > MAX_WORK)
    fail_msg("the client opened %d work connections (%d waiting at once) "
             "for a server that asked %d times; the limit is %d",
             f.works, f.max_unjoined, FLOOD_REQS, MAX_WORK);
  if (f.works < MAX_WORK)
    fail_msg("the client opened only %d work connection(s) of the %d it "
             "may have waiting",
             f.works, MAX_WORK);

  /* Still alive: heartbeats go on... */
  int pings = f.pings;
  IT_WAIT(&h.w, f.pings > pings, 3000u * SAN_FACTOR);
  /* ...and a visitor sent down a work connection is served. */
  fconn *w = NULL;
  for (fconn *c = f.conns; c && !w; c = c->next)
    if (c->kind == 2 && !c->eof && !c->rerr)
      w = c;
  assert_non_null(w);
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_START_WORK_CONN);
  assert_int_equal(tunnel__msg_set_str(libc_mem(), &m.proxy_name, "p"), 0);
  assert_int_equal(tunnel__msg_set_str(libc_mem(), &m.src_addr, "192.0.2.7"),
                   0);
  assert_int_equal(tunnel__msg_set_str(libc_mem(), &m.dst_addr, "127.0.0.1"),
                   0);
  m.src_port = 40000;
  m.dst_port = 4242;
  w->joined = 1;
  fake_send(&f, w, &m, 0);
  tunnel__msg_clear(libc_mem(), &m);
  fconn_write(w, VIS_HELLO, strlen(VIS_HELLO));
  IT_WAIT(&h.w, after_has(w, VIS_REPLY), 3000u * SAN_FACTOR);
  fprintf(stderr, "# heartbeats and a visitor served after the flood\n");
  it_sleep(&h.w, 300);
  if (f.max_unjoined > MAX_WORK)
    fail_msg("after a visitor, %d work connections were waiting at once "
             "(limit %d)",
             f.max_unjoined, MAX_WORK);
  if (x.state_calls != 1)
    fail_msg("the client reported a second state: %s (%s)",
             tunnel_err_name(x.state), x.msg);
  if (x.st)
    assert_int_equal(tunnel_stream_close(x.st, NULL, NULL), 0);
  hc_teardown(&h, &x, 1, &f, 1);
  it_buf_free(&x.got);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_login_timeout),
      cmocka_unit_test(test_work_conn_flood),
  };
  /* The fake server writes to connections the clients close. */
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
