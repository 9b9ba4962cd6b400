/* The client engine scripted against a server played in memory with the
 * project's own sans-I/O pieces (a server-side yamux session, the message
 * codec, frp's cipher): bytes in, bytes out, no sockets, no clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "config.h"
#include "crypto.h"
#include "ctlcodec.h"
#include "msg.h"
#include "tunnel/engine.h"
#include "yamux.h"

#define TOKEN "s3cret"
#define NOW_S 1700000000
/* Streams a test may open: the fake server and the callbacks keep them in
 * arrays. */
#define MAXS 5200
#define MAXM 32

/* ------------------------------------------------------------ allocator */

/* Counts live bytes; fails the Nth allocation when asked. */
typedef struct {
  size_t live, peak, calls, allocs, frees;
  size_t fail_at; /* 0: never */
  int failed;
} counter;

typedef struct {
  size_t size;
  size_t pad;
} hdr;

static void *c_malloc(size_t n, void *ud) {
  counter *c = ud;
  if (++c->calls == c->fail_at) {
    c->failed = 1;
    return NULL;
  }
  hdr *h = malloc(sizeof *h + n);
  if (!h)
    return NULL;
  h->size = n;
  c->live += n;
  c->allocs++;
  if (c->live > c->peak)
    c->peak = c->live;
  return h + 1;
}

static void c_free(void *p, void *ud) {
  counter *c = ud;
  if (!p)
    return;
  hdr *h = (hdr *)p - 1;
  c->live -= h->size;
  c->frees++;
  free(h);
}

static void *c_realloc(void *p, size_t n, void *ud) {
  counter *c = ud;
  if (!p)
    return c_malloc(n, ud);
  if (++c->calls == c->fail_at) {
    c->failed = 1;
    return NULL;
  }
  hdr *h = (hdr *)p - 1;
  size_t old = h->size;
  hdr *q = realloc(h, sizeof *q + n);
  if (!q)
    return NULL;
  q->size = n;
  c->live = c->live - old + n;
  if (c->live > c->peak)
    c->peak = c->live;
  return q + 1;
}

/* ------------------------------------------------------- the fake server */

typedef struct {
  uint8_t type;
  char name[64];
  char proxy_type[16];
  char run_id[80];
  char key[40];
  char subdomain[64];
  char domain[64];
  char hostname[64];
  char os[16];
  char arch[16];
  /* HTTP options: lists joined, headers as "name=value;" in order. */
  char locations[64];
  char host_rewrite[64];
  char http_user[32];
  char http_pwd[32];
  char headers[128];
  int64_t timestamp;
  int64_t pool_count;
  int64_t remote_port;
} seen_msg;

typedef struct {
  uint32_t id;
  uint8_t *buf; /* bytes the client sent on it */
  size_t len;
  int fin, rst, closed;
} sstream;

typedef struct srv {
  int mux;
  tunnel__mem mem;
  tunnel__ymx *y;
  tunnel__ctlcodec ctl;
  uint8_t key[16];
  sstream st[MAXS]; /* mux: yamux streams; non-mux: [0] is connection 1 */
  int nst;
  seen_msg msgs[MAXM];
  int nmsgs;
  int consume; /* consume what arrives at once */
} srv;

/* ------------------------------------------------------ the program side */

typedef struct t {
  tunnel_engine *e;
  tunnel_config *cfg;
  counter mem;
  srv s;
  uint64_t now;
  int states[8];
  char state_msg[128];
  int nstates;
  int proxy_status[8];
  uint32_t proxy_ids[8];
  char proxy_msg[8][64];
  int nproxy;
  uint32_t opened[MAXS];
  uint32_t open_proxy;
  char visitor[64];
  int nopened;
  int refuse;
  uint8_t data[512 * 1024];
  size_t data_len;
  uint32_t data_stream;
  uint32_t ended[MAXS];
  int end_status[MAXS];
  int nended;
  int writable;
  uint32_t connects[MAXS];
  int nconnects;
  uint32_t disconnects[MAXS];
  int ndisconnects;
  int restart_in_cb;
} t;

static t *T;

static sstream *sfind(srv *s, uint32_t id) {
  for (int i = 0; i < s->nst; i++)
    if (s->st[i].id == id)
      return &s->st[i];
  return NULL;
}

static void sappend(sstream *x, const uint8_t *d, size_t n) {
  x->buf = realloc(x->buf, x->len + n + 1);
  assert_non_null(x->buf);
  memcpy(x->buf + x->len, d, n);
  x->len += n;
}

static void copy_str(char *dst, size_t cap, const char *s) {
  snprintf(dst, cap, "%s", s ? s : "");
}

static int srv_on_msg(void *ud, const tunnel__msg *m) {
  srv *s = ud;
  assert_true(s->nmsgs < MAXM);
  seen_msg *x = &s->msgs[s->nmsgs++];
  memset(x, 0, sizeof *x);
  x->type = m->type;
  copy_str(x->name, sizeof x->name, m->proxy_name);
  copy_str(x->proxy_type, sizeof x->proxy_type, m->proxy_type);
  copy_str(x->run_id, sizeof x->run_id, m->run_id);
  copy_str(x->key, sizeof x->key, m->privilege_key);
  copy_str(x->subdomain, sizeof x->subdomain, m->subdomain);
  copy_str(x->hostname, sizeof x->hostname, m->hostname);
  copy_str(x->os, sizeof x->os, m->os);
  copy_str(x->arch, sizeof x->arch, m->arch);
  if (m->custom_domains.n)
    copy_str(x->domain, sizeof x->domain, m->custom_domains.v[0]);
  for (size_t i = 0; i < m->locations.n; i++) {
    size_t at = strlen(x->locations);
    snprintf(x->locations + at, sizeof x->locations - at, "%s%s",
             i ? "," : "", m->locations.v[i]);
  }
  copy_str(x->host_rewrite, sizeof x->host_rewrite, m->host_header_rewrite);
  copy_str(x->http_user, sizeof x->http_user, m->http_user);
  copy_str(x->http_pwd, sizeof x->http_pwd, m->http_pwd);
  for (size_t i = 0; i < m->headers.n; i++) {
    size_t at = strlen(x->headers);
    snprintf(x->headers + at, sizeof x->headers - at, "%s=%s;",
             m->headers.v[i].key, m->headers.v[i].value);
  }
  x->timestamp = m->timestamp;
  x->pool_count = m->pool_count;
  x->remote_port = m->remote_port;
  return 1;
}

static int s_on_stream(tunnel__ymx *y, uint32_t id, void **su, void *ud) {
  srv *s = ud;
  (void)y, (void)su;
  assert_true(s->nst < MAXS);
  memset(&s->st[s->nst], 0, sizeof s->st[0]);
  s->st[s->nst++].id = id;
  return 0;
}

static void s_on_data(tunnel__ymx *y, uint32_t id, void *su,
                      const uint8_t *d, size_t n, void *ud) {
  srv *s = ud;
  (void)su;
  sstream *x = sfind(s, id);
  assert_non_null(x);
  if (x == &s->st[0]) {
    size_t used;
    assert_int_equal(tunnel__ctlcodec_feed(&s->ctl, d, n, &used, srv_on_msg,
                                           s),
                     0);
    tunnel__ymx_consumed(y, id, n);
    return;
  }
  sappend(x, d, n);
  if (s->consume)
    tunnel__ymx_consumed(y, id, n);
}

static void s_on_fin(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  (void)y, (void)su;
  sfind(ud, id)->fin = 1;
}

static void s_on_rst(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  (void)y, (void)su;
  sfind(ud, id)->rst = 1;
}

static void s_on_close(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  (void)y, (void)su;
  sfind(ud, id)->closed = 1;
}

static const tunnel__ymx_callbacks s_cb = {s_on_stream, NULL, s_on_data,
                                           s_on_fin,    s_on_rst, NULL,
                                           s_on_close, NULL,     NULL};

static void srv_init(srv *s, int mux) {
  memset(s, 0, sizeof *s);
  s->mux = mux;
  s->consume = 1;
  s->mem = *tunnel__mem_default();
  assert_int_equal(tunnel__frp_key(TOKEN, strlen(TOKEN), s->key), 0);
  tunnel__ctlcodec_init(&s->ctl, &s->mem, 10240);
  if (mux) {
    tunnel__ymx_config c;
    memset(&c, 0, sizeof c);
    c.is_client = 0;
    c.max_streams = MAXS;
    c.window = TUNNEL__YMX_INITIAL_WINDOW;
    c.max_backlog = 1 << 20;
    assert_int_equal(tunnel__ymx_new(&s->y, &c, &s_cb, s), 0);
  } else {
    s->nst = 1;
    s->st[0].id = TUNNEL_ENGINE_CONTROL;
  }
}

static void srv_free(srv *s) {
  tunnel__ymx_free(s->y);
  tunnel__ctlcodec_free(&s->ctl);
  for (int i = 0; i < s->nst; i++)
    free(s->st[i].buf);
}

/* The server's output for the client: (conn, bytes) pairs. */
typedef struct {
  uint32_t conn;
  uint8_t *b;
  size_t n;
} pkt;
static pkt Q[256];
static int NQ;
static int LENIENT;

static void to_client(uint32_t conn, const uint8_t *b, size_t n) {
  assert_true(NQ < 256);
  Q[NQ].conn = conn;
  Q[NQ].b = malloc(n ? n : 1);
  memcpy(Q[NQ].b, b, n);
  Q[NQ].n = n;
  NQ++;
}

/* Raw bytes on a server-side stream (mux) or connection (non-mux). */
static void srv_raw(t *x, uint32_t id, const void *d, size_t n) {
  if (!x->s.mux) {
    to_client(id, d, n);
    return;
  }
  size_t w = 0;
  int rc = tunnel__ymx_write(x->s.y, id, d, n, &w);
  if (LENIENT) /* out of memory, the client may have dropped the stream */
    return;
  assert_int_equal(rc, 0);
  assert_int_equal(w, n);
}

static void srv_send(t *x, uint32_t id, const tunnel__msg *m) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, &x->s.mem, 0);
  if (id == (x->s.mux ? x->s.st[0].id : TUNNEL_ENGINE_CONTROL))
    assert_int_equal(tunnel__ctlcodec_encode(&x->s.ctl, m, &q), 0);
  else
    assert_int_equal(tunnel__msg_encode(&x->s.mem, m, &q), 0);
  tunnel__iov v[8];
  while (q.size) {
    size_t k = tunnel__bufq_iov(&q, v, 8);
    for (size_t i = 0; i < k; i++) {
      srv_raw(x, id, v[i].base, v[i].len);
      tunnel__bufq_consume(&q, v[i].len);
    }
  }
  tunnel__bufq_free(&q);
}

static uint32_t ctl_id(t *x) {
  return x->s.mux ? x->s.st[0].id : TUNNEL_ENGINE_CONTROL;
}

static void srv_msg(t *x, uint8_t type, const char *field_a,
                    const char *field_b) {
  tunnel__msg m;
  tunnel__msg_init(&m, type);
  if (type == TUNNEL__MSG_LOGIN_RESP) {
    m.run_id = (char *)field_a;
    m.error = (char *)field_b;
  } else if (type == TUNNEL__MSG_NEW_PROXY_RESP) {
    m.proxy_name = (char *)field_a;
    m.remote_addr = field_b && field_b[0] == ':' ? (char *)field_b : NULL;
    m.error = field_b && field_b[0] != ':' ? (char *)field_b : NULL;
  } else if (type == TUNNEL__MSG_PONG) {
    m.error = (char *)field_a;
  }
  srv_send(x, ctl_id(x), &m);
}

/* How pump() takes the client's output: tunnel_engine_send() unless a
 * test sets another way (the zero-copy calls, a recorder). */
static size_t (*TAKE)(t *x, uint32_t conn, uint8_t *buf, size_t cap);

/* Moves bytes both ways until neither side has anything to say. Returns
 * the last engine error seen. */
static int pump(t *x) {
  int err = 0;
  for (int round = 0; round < 1000; round++) {
    int moved = 0;
    uint32_t conn;
    while (tunnel_engine_next_output(x->e, &conn) == 1) {
      uint8_t buf[7000]; /* odd size: frames split across sends */
      size_t n;
      if (TAKE)
        n = TAKE(x, conn, buf, sizeof buf);
      else
        assert_int_equal(tunnel_engine_send(x->e, conn, buf, sizeof buf, &n),
                         0);
      if (!n)
        break;
      moved = 1;
      if (x->s.mux) {
        assert_int_equal(conn, TUNNEL_ENGINE_CONTROL);
        assert_int_equal(tunnel__ymx_recv(x->s.y, buf, n), 0);
      } else {
        sstream *st = sfind(&x->s, conn);
        if (!st) {
          assert_true(x->s.nst < MAXS);
          st = &x->s.st[x->s.nst++];
          memset(st, 0, sizeof *st);
          st->id = conn;
        }
        if (conn == TUNNEL_ENGINE_CONTROL) {
          size_t used;
          assert_int_equal(tunnel__ctlcodec_feed(&x->s.ctl, buf, n, &used,
                                                 srv_on_msg, &x->s),
                           0);
        } else {
          sappend(st, buf, n);
        }
      }
    }
    if (x->s.mux) {
      tunnel__iov v[16];
      while (tunnel__ymx_out_pending(x->s.y)) {
        size_t k = tunnel__ymx_out_iov(x->s.y, v, 16), tot = 0;
        for (size_t i = 0; i < k; i++) {
          to_client(TUNNEL_ENGINE_CONTROL, v[i].base, v[i].len);
          tot += v[i].len;
        }
        tunnel__ymx_out_consume(x->s.y, tot);
      }
    }
    for (int i = 0; i < NQ; i++) {
      if (x->e) {
        int rc = tunnel_engine_recv(x->e, Q[i].conn, Q[i].b, Q[i].n, x->now);
        if (rc && !err)
          err = rc; /* the first: later bytes find no session */
      }
      free(Q[i].b);
      moved = 1;
    }
    NQ = 0;
    if (!moved)
      return err;
  }
  fail_msg("pump did not settle");
  return err;
}

static seen_msg *last_msg(t *x, uint8_t type) {
  for (int i = x->s.nmsgs - 1; i >= 0; i--)
    if (x->s.msgs[i].type == type)
      return &x->s.msgs[i];
  return NULL;
}

static int count_msgs(t *x, uint8_t type) {
  int n = 0;
  for (int i = 0; i < x->s.nmsgs; i++)
    n += x->s.msgs[i].type == type;
  return n;
}

/* ----------------------------------------------------------- callbacks */

static void cb_state(tunnel_engine *e, int status, const char *msg,
                     void *ud) {
  t *x = ud;
  (void)e;
  if (x->nstates < 8)
    x->states[x->nstates++] = status;
  copy_str(x->state_msg, sizeof x->state_msg, msg);
  if (status < 0 && x->restart_in_cb)
    assert_int_equal(tunnel_engine_start(e, x->now), 0);
}

static void cb_proxy(tunnel_engine *e, uint32_t proxy, int status,
                     const char *msg, void *ud) {
  t *x = ud;
  (void)e;
  assert_true(x->nproxy < 8);
  x->proxy_ids[x->nproxy] = proxy;
  x->proxy_status[x->nproxy] = status;
  copy_str(x->proxy_msg[x->nproxy], 64, msg);
  x->nproxy++;
}

static int cb_open(tunnel_engine *e, uint32_t stream, uint32_t proxy,
                   const char *visitor, void *ud) {
  t *x = ud;
  (void)e;
  assert_true(x->nopened < MAXS);
  x->opened[x->nopened++] = stream;
  x->open_proxy = proxy;
  copy_str(x->visitor, sizeof x->visitor, visitor);
  return x->refuse ? TUNNEL_EREFUSED : 0;
}

static void cb_data(tunnel_engine *e, uint32_t stream, const uint8_t *d,
                    size_t n, void *ud) {
  t *x = ud;
  (void)e;
  assert_true(x->data_len + n <= sizeof x->data);
  memcpy(x->data + x->data_len, d, n);
  x->data_len += n;
  x->data_stream = stream;
}

static void cb_end(tunnel_engine *e, uint32_t stream, int status, void *ud) {
  t *x = ud;
  (void)e;
  assert_true(x->nended < MAXS);
  x->ended[x->nended] = stream;
  x->end_status[x->nended++] = status;
}

static void cb_writable(tunnel_engine *e, uint32_t stream, void *ud) {
  t *x = ud;
  (void)e, (void)stream;
  x->writable++;
}

static void cb_connect(tunnel_engine *e, uint32_t conn, void *ud) {
  t *x = ud;
  (void)e;
  assert_true(x->nconnects < MAXS);
  x->connects[x->nconnects++] = conn;
}

static void cb_disconnect(tunnel_engine *e, uint32_t conn, void *ud) {
  t *x = ud;
  (void)e;
  assert_true(x->ndisconnects < MAXS);
  x->disconnects[x->ndisconnects++] = conn;
}

static int cb_random(uint8_t *out, size_t n, void *ud) {
  (void)ud;
  for (size_t i = 0; i < n; i++)
    out[i] = (uint8_t)(i * 7 + 3);
  return 0;
}

static int64_t cb_time(void *ud) {
  (void)ud;
  return NOW_S;
}

/* ------------------------------------------------------------- fixture */

static int setup_cfg(t *x, int mux) {
  memset(x, 0, sizeof *x);
  T = x;
  NQ = 0;
  assert_int_equal(tunnel_config_new(&x->cfg), 0);
  tunnel_config_set_allocator(x->cfg, c_malloc, c_realloc, c_free, &x->mem);
  tunnel_config_set_token(x->cfg, TOKEN);
  tunnel_config_set_tcp_mux(x->cfg, mux);
  tunnel_config_set_stream_window(x->cfg, 256u * 1024u);
  /* Scripted time jumps ahead with no server bytes: the keepalive would
   * declare the link dead. keepalive_dead_link tests it. */
  tunnel_config_set_keepalive(x->cfg, 0, 0);
  /* Sessions here end at the script's will; test_engine_life.c covers
   * the engine's own reconnection. */
  tunnel_config_set_reconnect(x->cfg, 0, 0, 0, 0);
  srv_init(&x->s, mux);
  return 0;
}

static int make_engine(t *x) {
  int rc = tunnel_engine_new(&x->e, x->cfg, x);
  if (rc)
    return rc;
  tunnel_engine_set_state_cb(x->e, cb_state);
  tunnel_engine_set_proxy_cb(x->e, cb_proxy);
  tunnel_engine_set_stream_cbs(x->e, cb_open, cb_data, cb_end, cb_writable);
  tunnel_engine_set_conn_cbs(x->e, cb_connect, cb_disconnect);
  tunnel_engine_set_random_cb(x->e, cb_random);
  tunnel_engine_set_time_cb(x->e, cb_time);
  return 0;
}

static void teardown_all(t *x) {
  tunnel_engine_free(x->e);
  x->e = NULL;
  for (int i = 0; i < NQ; i++)
    free(Q[i].b);
  NQ = 0;
  srv_free(&x->s);
  tunnel_config_free(x->cfg);
  assert_int_equal(x->mem.live, 0);
}

/* The server's side of a successful login: LoginResp, then encryption. */
static void serve_login(t *x, const char *run_id) {
  pump(x);
  seen_msg *lg = last_msg(x, TUNNEL__MSG_LOGIN);
  assert_non_null(lg);
  srv_msg(x, TUNNEL__MSG_LOGIN_RESP, run_id, NULL);
  static const uint8_t iv[16] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
  assert_int_equal(tunnel__ctlcodec_encrypt(&x->s.ctl, x->s.key, iv), 0);
}

/* An engine logged in (mux or not), with one TCP proxy "web". */
static uint32_t logged_in(t *x, int mux, uint32_t *proxy) {
  setup_cfg(x, mux);
  assert_int_equal(make_engine(x), 0);
  uint32_t p;
  assert_int_equal(
      tunnel_engine_add_proxy(x->e, "web", TUNNEL_ENGINE_PROXY_TCP, &p), 0);
  if (proxy)
    *proxy = p;
  assert_int_equal(tunnel_engine_start(x->e, x->now), 0);
  serve_login(x, "0123456789abcdef");
  pump(x);
  assert_int_equal(x->nstates, 1);
  assert_int_equal(x->states[0], 0);
  return p;
}

/* Asks for a work channel; returns its server-side id (mux) or its
 * connection (non-mux), after checking its NewWorkConn. */
static uint32_t work_channel(t *x) {
  int before = x->s.nst, nc = x->nconnects;
  srv_msg(x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
  pump(x);
  uint32_t id;
  if (!x->s.mux) {
    assert_int_equal(x->nconnects, nc + 1);
    id = x->connects[nc];
    assert_int_equal(tunnel_engine_conn_ready(x->e, id, x->now), 0);
    pump(x);
  }
  assert_int_equal(x->s.nst, before + 1);
  sstream *st = &x->s.st[before];
  id = st->id;
  tunnel__msg_reader r;
  tunnel__msg m;
  size_t used;
  tunnel__msg_reader_init(&r, &x->s.mem, 10240);
  assert_int_equal(tunnel__msg_reader_feed(&r, st->buf, st->len, &used, &m),
                   1);
  assert_int_equal(used, st->len);
  assert_int_equal(m.type, TUNNEL__MSG_NEW_WORK_CONN);
  assert_string_equal(m.run_id, "0123456789abcdef");
  char key[33];
  tunnel__privilege_key(TOKEN, strlen(TOKEN), NOW_S, key);
  assert_string_equal(m.privilege_key, key);
  tunnel__msg_clear(&x->s.mem, &m);
  tunnel__msg_reader_free(&r);
  st->len = 0;
  return id;
}

static void start_work_conn(t *x, uint32_t id, const char *proxy,
                            const char *then) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_START_WORK_CONN);
  m.proxy_name = (char *)proxy;
  m.src_addr = "192.0.2.7";
  m.src_port = 40000;
  srv_send(x, id, &m);
  if (then)
    srv_raw(x, id, then, strlen(then));
  pump(x);
}

/* test_engine_proxy.c shares everything above and brings its own tests. */
#ifndef TEST_ENGINE_HARNESS_ONLY

/* --------------------------------------------------------------- tests */

static void login_ok(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), TUNNEL_ESTATE);
  pump(&x);
  /* The control stream is the first the client opens. */
  assert_int_equal(x.s.nst, 1);
  assert_int_equal(x.s.st[0].id, 1);
  seen_msg *lg = last_msg(&x, TUNNEL__MSG_LOGIN);
  assert_non_null(lg);
  char key[33];
  tunnel__privilege_key(TOKEN, strlen(TOKEN), NOW_S, key);
  assert_string_equal(lg->key, key);
  assert_int_equal(lg->timestamp, NOW_S);
  assert_int_equal(lg->pool_count, 1);
  assert_string_equal(lg->run_id, "");
  assert_int_equal(x.nstates, 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(x.nstates, 1);
  assert_int_equal(x.states[0], 0);
  assert_string_equal(x.state_msg, "0123456789abcdef");
  /* Encrypted both ways: a Pong goes in, a Ping comes out readable. */
  srv_msg(&x, TUNNEL__MSG_PONG, NULL, NULL);
  uint64_t next;
  assert_int_equal(tunnel_engine_tick(x.e, 30000, &next), 0);
  assert_int_equal(next, 60000);
  pump(&x);
  seen_msg *ping = last_msg(&x, TUNNEL__MSG_PING);
  assert_non_null(ping);
  assert_string_equal(ping->key, key);
  assert_int_equal(x.nstates, 1);
  teardown_all(&x);
}

static void login_refused_then_again(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  srv_msg(&x, TUNNEL__MSG_LOGIN_RESP, NULL, "token mismatch");
  assert_int_equal(pump(&x), TUNNEL_EAUTH);
  assert_int_equal(x.nstates, 1);
  assert_int_equal(x.states[0], TUNNEL_EAUTH);
  assert_string_equal(x.state_msg, "token mismatch");
  uint32_t conn;
  assert_int_equal(tunnel_engine_next_output(x.e, &conn), 0);
  /* A new connection, a new session. */
  srv_free(&x.s);
  srv_init(&x.s, 1);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(x.states[1], 0);
  teardown_all(&x);
}

static void login_garbage(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  /* A message type frp does not define, on the control stream. */
  srv_raw(&x, 1, "\x7f\0\0\0\0\0\0\0\x02{}", 11);
  assert_int_equal(pump(&x), TUNNEL_EPROTO);
  assert_int_equal(x.states[0], TUNNEL_EPROTO);
  teardown_all(&x);
  /* An answer that is not LoginResp. */
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  srv_msg(&x, TUNNEL__MSG_PONG, NULL, NULL);
  assert_int_equal(pump(&x), TUNNEL_EPROTO);
  teardown_all(&x);
  /* A message above the size limit, refused from its header. */
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  srv_raw(&x, 1, "1\0\0\0\0\x7f\0\0\0", 9);
  assert_int_equal(pump(&x), TUNNEL_ELIMIT);
  teardown_all(&x);
}

static void restart_from_state_cb(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  x.restart_in_cb = 1;
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  assert_int_equal(tunnel_engine_conn_closed(x.e, 1, 0, 0), 0);
  assert_int_equal(x.states[0], TUNNEL_ECONNRESET);
  /* The callback started the next session: it has its login queued. */
  uint32_t conn;
  assert_int_equal(tunnel_engine_next_output(x.e, &conn), 1);
  teardown_all(&x);
}

static void proxies(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  uint32_t a, b, c;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "ssh", TUNNEL_ENGINE_PROXY_TCP, &a), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "ssh", TUNNEL_ENGINE_PROXY_TCP, NULL),
      TUNNEL_EEXIST);
  assert_int_equal(tunnel_engine_add_proxy(x.e, "u", 9, NULL),
                   TUNNEL_ENOTSUP);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_HTTP, &b), 0);
  assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, a, 6000), 0);
  assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, b, 6000),
                   TUNNEL_ENOTSUP);
  assert_int_equal(tunnel_engine_proxy_set_subdomain(x.e, a, "x"),
                   TUNNEL_ENOTSUP);
  assert_int_equal(tunnel_engine_proxy_set_subdomain(x.e, b, "a.b"),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_subdomain(x.e, b, "app"), 0);
  assert_int_equal(tunnel_engine_proxy_add_domain(x.e, b, "*.example.com"),
                   0);
  assert_int_equal(tunnel_engine_proxy_add_domain(x.e, 99, "a.com"),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 2);
  seen_msg *m0 = &x.s.msgs[1], *m1 = &x.s.msgs[2];
  assert_string_equal(m0->name, "ssh");
  assert_string_equal(m0->proxy_type, "tcp");
  assert_int_equal(m0->remote_port, 6000);
  assert_string_equal(m1->name, "web");
  assert_string_equal(m1->proxy_type, "http");
  assert_string_equal(m1->subdomain, "app");
  assert_string_equal(m1->domain, "*.example.com");
  /* Registered: its options are fixed for this session. */
  assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, a, 7000),
                   TUNNEL_ESTATE);
  srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "ssh", ":6000");
  srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", "name in use");
  srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "nobody", ":1");
  pump(&x);
  assert_int_equal(x.nproxy, 2);
  assert_int_equal(x.proxy_ids[0], a);
  assert_int_equal(x.proxy_status[0], 0);
  assert_string_equal(x.proxy_msg[0], ":6000");
  assert_int_equal(x.proxy_ids[1], b);
  assert_int_equal(x.proxy_status[1], TUNNEL_EREFUSED);
  assert_string_equal(x.proxy_msg[1], "name in use");
  /* Declared during the session: options first, registered next. */
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "late", TUNNEL_ENGINE_PROXY_TCP, &c), 0);
  assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, c, 6001), 0);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 3);
  assert_int_equal(last_msg(&x, TUNNEL__MSG_NEW_PROXY)->remote_port, 6001);
  teardown_all(&x);
}

static void work_pool_and_limit(void **state) {
  (void)state;
  t x;
  tunnel_config *dummy = NULL;
  (void)dummy;
  logged_in(&x, 1, NULL);
  tunnel_engine_free(x.e);
  x.e = NULL;
  teardown_all(&x);

  setup_cfg(&x, 1);
  tunnel_config_set_max_work_conns(x.cfg, 2);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(work_channel(&x), 3);
  assert_int_equal(work_channel(&x), 5);
  /* More requests than the limit: ignored. */
  for (int i = 0; i < 3; i++)
    srv_msg(&x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
  pump(&x);
  assert_int_equal(x.s.nst, 3);
  /* The server drops a parked one: room for another. */
  tunnel__ymx_reset(x.s.y, 3);
  pump(&x);
  assert_int_equal(work_channel(&x), 7);
  /* A StartWorkConn for an unknown proxy resets the channel. */
  start_work_conn(&x, 5, "nobody", NULL);
  assert_int_equal(sfind(&x.s, 5)->rst, 1);
  assert_int_equal(x.nopened, 0);
  teardown_all(&x);
}

static void visitor_data_and_flow_control(void **state) {
  (void)state;
  t x;
  uint32_t p = logged_in(&x, 1, NULL);
  uint32_t id = work_channel(&x);
  start_work_conn(&x, id, "web", "hello");
  assert_int_equal(x.nopened, 1);
  assert_int_equal(x.open_proxy, p);
  assert_string_equal(x.visitor, "192.0.2.7:40000");
  uint32_t st = x.opened[0];
  assert_int_equal(x.data_len, 5);
  assert_memory_equal(x.data, "hello", 5);
  assert_int_equal(x.data_stream, st);
  /* To the visitor. */
  size_t taken;
  assert_int_equal(tunnel_engine_stream_write(x.e, st, (const uint8_t *)"world",
                                              5, &taken),
                   0);
  assert_int_equal(taken, 5);
  pump(&x);
  assert_int_equal(sfind(&x.s, id)->len, 5);
  assert_memory_equal(sfind(&x.s, id)->buf, "world", 5);
  /* From the visitor: the window is 256 KiB and nothing was consumed. */
  static uint8_t big[300 * 1024];
  memset(big, 'x', sizeof big);
  /* StartWorkConn used some of it (the engine consumed those bytes
   * itself), "hello" the program has not consumed. */
  int64_t win = tunnel__ymx_send_window(x.s.y, id);
  assert_true(win > 256 * 1024 - 200 && win < 256 * 1024 - 5);
  size_t w;
  assert_int_equal(tunnel__ymx_write(x.s.y, id, big, sizeof big, &w), 0);
  assert_int_equal(w, (size_t)win);
  pump(&x);
  assert_int_equal(x.data_len, 5 + w);
  assert_int_equal(tunnel__ymx_send_window(x.s.y, id), 0);
  /* Consumed: the window opens again (updates go out per quarter). */
  assert_int_equal(tunnel_engine_stream_consumed(x.e, st, 100 * 1024), 0);
  pump(&x);
  assert_true(tunnel__ymx_send_window(x.s.y, id) >= 64 * 1024);
  assert_true(tunnel__ymx_send_window(x.s.y, id) <= 100 * 1024 + 200);
  assert_int_equal(tunnel_engine_stream_consumed(x.e, st, x.data_len - 100 * 1024), 0);
  pump(&x);
  assert_int_equal(tunnel__ymx_send_window(x.s.y, id), 256 * 1024);
  /* More than was delivered cannot be consumed. */
  assert_int_equal(tunnel_engine_stream_consumed(x.e, st, 1), TUNNEL_EINVAL);
  /* The client's window towards the visitor: the server grants 256 KiB
   * and consumes nothing now. */
  x.s.consume = 0;
  size_t total = 0;
  for (;;) {
    assert_int_equal(tunnel_engine_stream_write(x.e, st, big, sizeof big,
                                                &taken),
                     0);
    if (!taken)
      break;
    total += taken;
  }
  /* NewWorkConn and "world" took some, not yet granted back. */
  assert_true(total > 256 * 1024 - 300 && total < 256 * 1024);
  pump(&x);
  int before = x.writable;
  tunnel__ymx_consumed(x.s.y, id, 200 * 1024);
  pump(&x);
  assert_true(x.writable > before);
  assert_int_equal(tunnel_engine_stream_write(x.e, st, big, 10, &taken), 0);
  assert_int_equal(taken, 10);
  teardown_all(&x);
}

static void data_beyond_window(void **state) {
  (void)state;
  t x;
  logged_in(&x, 1, NULL);
  uint32_t id = work_channel(&x);
  start_work_conn(&x, id, "web", NULL);
  /* A hand-built frame larger than the window the client granted. */
  uint8_t h[12] = {0, 0, 0, 0, 0, 0, 0, (uint8_t)id, 0, 4, 0, 1};
  to_client(1, h, sizeof h);
  static uint8_t body[256 * 1024 + 1];
  to_client(1, body, sizeof body);
  assert_int_equal(pump(&x), TUNNEL_EPROTO);
  assert_int_equal(x.states[1], TUNNEL_EPROTO);
  /* The visitor's stream ended with the session. */
  assert_int_equal(x.nended, 1);
  assert_int_equal(x.end_status[0], TUNNEL_ECLOSED);
  assert_int_equal(tunnel_engine_stream_close(x.e, x.opened[0]),
                   TUNNEL_EINVAL);
  teardown_all(&x);
}

static void half_close_both_ways(void **state) {
  (void)state;
  t x;
  logged_in(&x, 1, NULL);
  /* The visitor finishes first, the program later. */
  uint32_t id = work_channel(&x);
  start_work_conn(&x, id, "web", "req");
  uint32_t st = x.opened[0];
  tunnel__ymx_shutdown(x.s.y, id);
  pump(&x);
  assert_int_equal(x.nended, 1);
  assert_int_equal(x.end_status[0], 0);
  size_t taken;
  assert_int_equal(
      tunnel_engine_stream_write(x.e, st, (const uint8_t *)"resp", 4, &taken),
      0);
  assert_int_equal(tunnel_engine_stream_shutdown(x.e, st), 0);
  pump(&x);
  sstream *ss = sfind(&x.s, id);
  assert_int_equal(ss->len, 4);
  assert_int_equal(ss->fin, 1);
  assert_int_equal(ss->rst, 0);
  assert_int_equal(tunnel_engine_stream_close(x.e, st), 0);
  pump(&x);
  assert_int_equal(ss->rst, 0); /* both finished: no reset */
  /* The program finishes first; the visitor keeps sending. */
  id = work_channel(&x);
  start_work_conn(&x, id, "web", NULL);
  st = x.opened[1];
  assert_int_equal(tunnel_engine_stream_shutdown(x.e, st), 0);
  assert_int_equal(tunnel_engine_stream_write(
                       x.e, st, (const uint8_t *)"x", 1, &taken),
                   TUNNEL_ESTATE);
  pump(&x);
  ss = sfind(&x.s, id);
  assert_int_equal(ss->fin, 1);
  x.data_len = 0;
  srv_raw(&x, id, "more", 4);
  tunnel__ymx_shutdown(x.s.y, id);
  pump(&x);
  assert_int_equal(x.data_len, 4);
  assert_int_equal(x.nended, 2);
  assert_int_equal(x.end_status[1], 0);
  assert_int_equal(tunnel_engine_stream_close(x.e, st), 0);
  pump(&x);
  assert_int_equal(ss->rst, 0);
  teardown_all(&x);
}

static void resets(void **state) {
  (void)state;
  t x;
  logged_in(&x, 1, NULL);
  uint32_t id = work_channel(&x);
  start_work_conn(&x, id, "web", NULL);
  uint32_t st = x.opened[0];
  tunnel__ymx_reset(x.s.y, id);
  pump(&x);
  assert_int_equal(x.nended, 1);
  assert_int_equal(x.end_status[0], TUNNEL_ERESET);
  assert_int_equal(tunnel_engine_stream_close(x.e, st), TUNNEL_EINVAL);
  /* The program closes a stream the visitor has not finished: reset. */
  id = work_channel(&x);
  start_work_conn(&x, id, "web", NULL);
  assert_int_equal(tunnel_engine_stream_close(x.e, x.opened[1]), 0);
  pump(&x);
  assert_int_equal(sfind(&x.s, id)->rst, 1);
  /* The program refuses a visitor: reset, and no number to close. */
  x.refuse = 1;
  id = work_channel(&x);
  start_work_conn(&x, id, "web", "data");
  assert_int_equal(sfind(&x.s, id)->rst, 1);
  assert_int_equal(tunnel_engine_stream_close(x.e, x.opened[2]),
                   TUNNEL_EINVAL);
  teardown_all(&x);
}

static void heartbeats_and_silence(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  tunnel_config_set_heartbeat(x.cfg, 10, 25);
  assert_int_equal(make_engine(&x), 0);
  x.now = 1000;
  assert_int_equal(tunnel_engine_start(x.e, 1000), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  uint64_t next;
  assert_int_equal(tunnel_engine_tick(x.e, 1000, &next), 0);
  assert_int_equal(next, 11000);
  assert_int_equal(tunnel_engine_tick(x.e, 10999, &next), 0);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_PING), 0);
  assert_int_equal(tunnel_engine_tick(x.e, 11000, &next), 0);
  assert_int_equal(next, 21000);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_PING), 1);
  /* A Pong at 15 s moves the silence limit to 40 s. */
  x.now = 15000;
  srv_msg(&x, TUNNEL__MSG_PONG, NULL, NULL);
  pump(&x);
  assert_int_equal(tunnel_engine_tick(x.e, 21000, &next), 0);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_PING), 2);
  assert_int_equal(tunnel_engine_tick(x.e, 31000, &next), 0);
  assert_int_equal(next, 40000);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_PING), 3);
  assert_int_equal(x.nstates, 1);
  assert_int_equal(tunnel_engine_tick(x.e, 40000, &next), 0);
  assert_int_equal(x.nstates, 2);
  assert_int_equal(x.states[1], TUNNEL_ETIMEDOUT);
  assert_int_equal(next, UINT64_MAX);
  /* A Pong with an error ends the session too. */
  teardown_all(&x);
  logged_in(&x, 1, NULL);
  srv_msg(&x, TUNNEL__MSG_PONG, "token expired", NULL);
  assert_int_equal(pump(&x), TUNNEL_EAUTH);
  assert_string_equal(x.state_msg, "token expired");
  teardown_all(&x);
}

/* Silence from the server: a probe after the interval (answered while the
 * link works), the session down after the timeout when nothing comes. */
static void keepalive_dead_link(void **state) {
  (void)state;
  for (int mux = 1; mux >= 0; mux--) {
    t x;
    setup_cfg(&x, mux);
    tunnel_config_set_heartbeat(x.cfg, 0, 0); /* only the keepalive runs */
    tunnel_config_set_keepalive(x.cfg, 2000, 5000);
    assert_int_equal(make_engine(&x), 0);
    x.now = 1000;
    assert_int_equal(tunnel_engine_start(x.e, 1000), 0);
    serve_login(&x, "0123456789abcdef");
    pump(&x);
    uint64_t next;
    assert_int_equal(tunnel_engine_tick(x.e, 1000, &next), 0);
    assert_int_equal(next, 3000);
    /* The probe goes out and the (working) server answers at 3 s. */
    x.now = 3000;
    assert_int_equal(tunnel_engine_tick(x.e, 3000, &next), 0);
    size_t pings = count_msgs(&x, TUNNEL__MSG_PING);
    pump(&x);
    if (!mux) { /* frp's Ping: this server answers by hand */
      assert_int_equal(count_msgs(&x, TUNNEL__MSG_PING), pings + 1);
      srv_msg(&x, TUNNEL__MSG_PONG, NULL, NULL);
      pump(&x);
    }
    assert_int_equal(tunnel_engine_tick(x.e, 7999, &next), 0);
    assert_int_equal(x.nstates, 1);
    /* The link dies: probes go unanswered, then the session ends 5 s after
     * the last byte heard. */
    assert_int_equal(next, 8000);
    assert_int_equal(tunnel_engine_tick(x.e, 8000, &next), 0);
    assert_int_equal(x.nstates, 2);
    assert_int_equal(x.states[1], TUNNEL_ETIMEDOUT);
    teardown_all(&x);
  }
}

static void login_timeout(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  tunnel_config_set_login_timeout(x.cfg, 1000);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_start(x.e, 5000), 0);
  pump(&x);
  uint64_t next;
  assert_int_equal(tunnel_engine_tick(x.e, 5999, &next), 0);
  assert_int_equal(next, 6000);
  assert_int_equal(x.nstates, 0);
  assert_int_equal(tunnel_engine_tick(x.e, 6000, &next), 0);
  assert_int_equal(x.nstates, 1);
  assert_int_equal(x.states[0], TUNNEL_ETIMEDOUT);
  /* Without a random source there is no session. */
  tunnel_engine_set_random_cb(x.e, NULL);
  assert_int_equal(tunnel_engine_start(x.e, 0), TUNNEL_ESTATE);
  teardown_all(&x);
}

static void non_mux(void **state) {
  (void)state;
  t x;
  uint32_t p = logged_in(&x, 0, NULL);
  assert_int_equal(x.s.nst, 1); /* connection 1 only */
  uint32_t conn = work_channel(&x);
  assert_true(conn >= 2);
  assert_int_equal(tunnel_engine_conn_ready(x.e, conn, 0), TUNNEL_ESTATE);
  start_work_conn(&x, conn, "web", "GET");
  assert_int_equal(x.nopened, 1);
  assert_int_equal(x.opened[0], conn); /* stream number == connection */
  assert_int_equal(x.open_proxy, p);
  assert_int_equal(x.data_len, 3);
  srv_raw(&x, conn, "/", 1);
  pump(&x);
  assert_int_equal(x.data_len, 4);
  assert_int_equal(tunnel_engine_stream_consumed(x.e, conn, 4), 0);
  size_t taken;
  assert_int_equal(tunnel_engine_stream_write(x.e, conn,
                                              (const uint8_t *)"200", 3,
                                              &taken),
                   0);
  pump(&x);
  sstream *ss = sfind(&x.s, conn);
  assert_int_equal(ss->len, 3);
  assert_memory_equal(ss->buf, "200", 3);
  /* The server's side ends: the visitor finished. */
  assert_int_equal(tunnel_engine_conn_closed(x.e, conn, 0, 0), 0);
  assert_int_equal(x.nended, 1);
  assert_int_equal(x.end_status[0], 0);
  assert_int_equal(tunnel_engine_stream_close(x.e, conn), 0);
  assert_int_equal(x.ndisconnects, 1);
  assert_int_equal(x.disconnects[0], conn);
  /* Shutdown: flushed, then the connection ends as with frp. */
  conn = work_channel(&x);
  start_work_conn(&x, conn, "web", NULL);
  assert_int_equal(tunnel_engine_stream_write(x.e, conn,
                                              (const uint8_t *)"bye", 3,
                                              &taken),
                   0);
  assert_int_equal(tunnel_engine_stream_shutdown(x.e, conn), 0);
  assert_int_equal(x.ndisconnects, 2);
  assert_int_equal(x.nended, 2);
  assert_int_equal(x.end_status[1], TUNNEL_ECLOSED);
  pump(&x);
  assert_int_equal(sfind(&x.s, conn)->len, 3);
  uint32_t c2;
  assert_int_equal(tunnel_engine_next_output(x.e, &c2), 0);
  /* A connection that failed: its stream is reset. */
  conn = work_channel(&x);
  start_work_conn(&x, conn, "web", NULL);
  assert_int_equal(tunnel_engine_conn_closed(x.e, conn, TUNNEL_ECONNRESET, 0),
                   0);
  assert_int_equal(x.end_status[2], TUNNEL_ERESET);
  /* A connection that could not be opened is forgotten. */
  srv_msg(&x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
  pump(&x);
  conn = x.connects[x.nconnects - 1];
  assert_int_equal(
      tunnel_engine_conn_closed(x.e, conn, TUNNEL_ECONNREFUSED, 0), 0);
  assert_int_equal(tunnel_engine_conn_ready(x.e, conn, 0), TUNNEL_ESTATE);
  /* The control connection ends: the open stream fails with it. */
  conn = work_channel(&x);
  start_work_conn(&x, conn, "web", NULL);
  assert_int_equal(tunnel_engine_conn_closed(x.e, 1, 0, 0), 0);
  assert_int_equal(x.states[1], TUNNEL_ECONNRESET);
  assert_int_equal(x.end_status[3], TUNNEL_ECLOSED);
  teardown_all(&x);
}

/* ---------------------------------------------------------------- memory */

static void idle_heap(void **state) {
  (void)state;
  t x;
  logged_in(&x, 1, NULL);
  srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", ":6000");
  work_channel(&x);
  pump(&x);
  /* Idle: one control stream, one parked work stream, one TCP proxy. */
  size_t live = x.mem.live;
  print_message("idle logged-in engine (mux, 1 proxy, pool 1): %zu bytes "
                "in %zu blocks\n",
                live, x.mem.allocs - x.mem.frees);
  assert_true(live <= 16 * 1024);
  teardown_all(&x);
}

/* The whole story with the Nth allocation failing, for every N. */
static int oom_run(size_t fail_at, int mux) {
  t x;
  setup_cfg(&x, mux);
  LENIENT = 1;
  x.mem.fail_at = fail_at;
  int rc = make_engine(&x);
  if (rc) {
    assert_int_equal(rc, TUNNEL_ENOMEM);
    goto out;
  }
  uint32_t p;
  rc = tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, &p);
  if (rc) {
    assert_int_equal(rc, TUNNEL_ENOMEM);
    goto out;
  }
  rc = tunnel_engine_start(x.e, 0);
  if (rc) {
    assert_int_equal(rc, TUNNEL_ENOMEM);
    goto out;
  }
  pump(&x);
  if (!last_msg(&x, TUNNEL__MSG_LOGIN))
    goto out;
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  if (x.nstates != 1 || x.states[0] != 0) {
    assert_true(x.nstates == 0 || x.states[0] == TUNNEL_ENOMEM);
    goto out;
  }
  srv_msg(&x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
  pump(&x);
  if (x.s.mux ? x.s.nst < 2 : x.nconnects < 1)
    goto out;
  uint32_t id = x.s.mux ? x.s.st[1].id : x.connects[0];
  if (!mux) {
    if (tunnel_engine_conn_ready(x.e, id, 0) != 0)
      goto out;
    pump(&x);
  }
  start_work_conn(&x, id, "web", "hi");
  if (x.nopened == 1) {
    size_t taken;
    rc = tunnel_engine_stream_write(x.e, x.opened[0], (const uint8_t *)"yo",
                                    2, &taken);
    assert_true(rc == 0 || rc == TUNNEL_ENOMEM);
    pump(&x);
    tunnel_engine_stream_consumed(x.e, x.opened[0], x.data_len);
    tunnel_engine_stream_close(x.e, x.opened[0]);
  }
  tunnel_engine_tick(x.e, 30000, NULL);
  pump(&x);
out:;
  int failed = x.mem.failed;
  LENIENT = 0;
  teardown_all(&x); /* asserts nothing leaked */
  return failed;
}

static void oom_everywhere(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    size_t n = 1;
    while (oom_run(n, mux))
      n++;
    print_message("mux %d: %zu allocation points\n", mux, n - 1);
    assert_true(n > 10);
  }
}

/* The identity goes out in Login under frp's field names; a field left
 * NULL stays out, and a failed update keeps the identity in place. */
static void login_identity(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 0);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_set_identity(NULL, "h", "linux", "amd64"),
                   TUNNEL_EINVAL);
  char big[300];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(tunnel_engine_set_identity(x.e, "h", big, NULL),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_set_identity(x.e, "gw-01", "linux", "arm64"),
                   0);
  /* The second copy fails: nothing changes. */
  x.mem.fail_at = x.mem.calls + 2;
  assert_int_equal(tunnel_engine_set_identity(x.e, "gw-02", "freebsd", "x"),
                   TUNNEL_ENOMEM);
  x.mem.fail_at = 0;
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  seen_msg *lg = last_msg(&x, TUNNEL__MSG_LOGIN);
  assert_non_null(lg);
  assert_string_equal(lg->hostname, "gw-01");
  assert_string_equal(lg->os, "linux");
  assert_string_equal(lg->arch, "arm64");
  /* Changed between sessions: the next Login carries the new one. */
  assert_int_equal(tunnel_engine_set_identity(x.e, "gw-02", NULL, ""), 0);
  assert_int_equal(
      tunnel_engine_conn_closed(x.e, TUNNEL_ENGINE_CONTROL, 0, 0), 0);
  srv_free(&x.s);
  srv_init(&x.s, 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  lg = last_msg(&x, TUNNEL__MSG_LOGIN);
  assert_non_null(lg);
  assert_string_equal(lg->hostname, "gw-02");
  assert_string_equal(lg->os, "");
  assert_string_equal(lg->arch, "");
  teardown_all(&x);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Every stream still open answers to its number, every closed one is
 * gone; the lookups are what a program does for each chunk it moves. */
static void check_streams(t *x, const uint8_t *open, int n) {
  for (int k = 0; k < n; k++) {
    uint32_t num = x->opened[k];
    if (open[k]) {
      assert_int_equal(tunnel_engine_stream_consumed(x->e, num, 0), 0);
    } else {
      size_t taken;
      assert_int_equal(
          tunnel_engine_stream_write(x->e, num, (const uint8_t *)"x", 1,
                                     &taken),
          TUNNEL_EINVAL);
    }
  }
}

/* Ends stream k one of three ways: the program closes it (reset), the
 * server resets it, or both sides finish and the program closes it. */
static void end_stream(t *x, uint8_t *open, const uint32_t *sid, int k) {
  uint32_t num = x->opened[k];
  int ended = x->nended;
  switch (k % 3) {
  case 0:
    assert_int_equal(tunnel_engine_stream_close(x->e, num), 0);
    pump(x);
    assert_int_equal(sfind(&x->s, sid[k])->rst, 1);
    break;
  case 1:
    assert_true(tunnel__ymx_reset(x->s.y, sid[k]) >= 0);
    pump(x);
    assert_int_equal(x->nended, ended + 1);
    assert_int_equal(x->ended[ended], num);
    assert_int_equal(x->end_status[ended], TUNNEL_ERESET);
    break;
  default:
    tunnel__ymx_shutdown(x->s.y, sid[k]);
    pump(x);
    assert_int_equal(x->nended, ended + 1);
    assert_int_equal(x->ended[ended], num);
    assert_int_equal(x->end_status[ended], 0);
    assert_int_equal(tunnel_engine_stream_shutdown(x->e, num), 0);
    assert_int_equal(tunnel_engine_stream_close(x->e, num), 0);
    pump(x);
    assert_int_equal(sfind(&x->s, sid[k])->fin, 1);
    assert_int_equal(sfind(&x->s, sid[k])->rst, 0);
    break;
  }
  open[k] = 0;
}

#define MANY 5000

/* One cycle of MANY streams: half opened, two thirds of those closed in a
 * scattered order, the other half opened, then everything closed in
 * another order, with lookups checked along the way. Leaves the harness's
 * stream records empty for the next cycle. */
static void churn(t *x) {
  static uint32_t sid[MANY];
  static uint8_t open[MANY];
  int n = 0;
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < MANY / 2; i++, n++) {
      sid[n] = work_channel(x);
      start_work_conn(x, sid[n], "web", NULL);
      assert_int_equal(x->nopened, n + 1);
      open[n] = 1;
    }
    int span = round ? MANY : MANY / 2;
    int stop = round ? span : span * 2 / 3;
    for (int i = 0; i < stop; i++) {
      int k = (int)(((long)i * 2221) % span); /* 2221: prime to span */
      if (!open[k])
        continue;
      end_stream(x, open, sid, k);
      if (i % 500 == 0) {
        check_streams(x, open, n);
        /* Bytes from the server reach the right stream. */
        for (int j = (k * 7) % n, m = 0; m < n; j = (j + 1) % n, m++) {
          if (!open[j])
            continue;
          size_t before = x->data_len;
          srv_raw(x, sid[j], "ping", 4);
          pump(x);
          assert_int_equal(x->data_len, before + 4);
          assert_int_equal(x->data_stream, x->opened[j]);
          assert_int_equal(
              tunnel_engine_stream_consumed(x->e, x->opened[j], 4), 0);
          break;
        }
      }
    }
  }
  check_streams(x, open, n);
  pump(x);
  /* Every server-side stream is finished and forgotten by now. */
  for (int i = 1; i < x->s.nst; i++)
    free(x->s.st[i].buf);
  x->s.nst = 1;
  x->nopened = x->nended = 0;
  x->data_len = 0;
}

/* Thousands of streams on one session, opened and closed in mixed order:
 * each number keeps finding its stream (data goes where it belongs), and
 * the memory the streams took goes back. */
static void many_streams(void **state) {
  (void)state;
  static t x;
  setup_cfg(&x, 1);
  assert_int_equal(tunnel_config_set_max_streams(x.cfg, MANY + 8), 0);
  assert_int_equal(tunnel_config_set_max_work_conns(x.cfg, MANY + 8), 0);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, NULL), 0);
  assert_int_equal(tunnel_engine_start(x.e, x.now), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(x.states[0], 0);
  size_t idle = x.mem.live;
  double t0 = now_s();
  churn(&x);
  double secs = now_s() - t0;
  size_t after = x.mem.live;
  /* What stays is the yamux session's bucket array, kept at its peak (one
   * pointer per bucket, at most twice the 3,334 streams open at once) and
   * the engine's smallest table. */
  print_message("%d streams opened and closed in %.2f s; heap %zu bytes "
                "(idle %zu)\n",
                MANY, secs, after, idle);
  assert_true(after <= idle + 2 * 4096 * sizeof(void *));
  /* A second cycle takes nothing more: no stream leaves anything behind. */
  churn(&x);
  assert_int_equal(x.mem.live, after);
  /* Bounded: lookups by number do not walk the streams. */
  assert_true(secs < 30.0);
  teardown_all(&x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(login_ok),
      cmocka_unit_test(login_refused_then_again),
      cmocka_unit_test(login_garbage),
      cmocka_unit_test(restart_from_state_cb),
      cmocka_unit_test(proxies),
      cmocka_unit_test(work_pool_and_limit),
      cmocka_unit_test(visitor_data_and_flow_control),
      cmocka_unit_test(data_beyond_window),
      cmocka_unit_test(half_close_both_ways),
      cmocka_unit_test(resets),
      cmocka_unit_test(heartbeats_and_silence),
      cmocka_unit_test(keepalive_dead_link),
      cmocka_unit_test(login_timeout),
      cmocka_unit_test(non_mux),
      cmocka_unit_test(idle_heap),
      cmocka_unit_test(oom_everywhere),
      cmocka_unit_test(login_identity),
      cmocka_unit_test(many_streams),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif /* TEST_ENGINE_HARNESS_ONLY */
