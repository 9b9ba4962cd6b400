/* UDP proxies on the server, against a client scripted in the test over
 * frp's wire protocol (non-mux: one TCP connection for the control channel
 * and one per work connection): it logs in, registers a udp proxy, answers
 * each ReqWorkConn with a NewWorkConn and echoes every UDPPacket back to
 * its visitor. Visitors are UDP sockets on 127.0.0.1 and ::1. Everything
 * runs on one uv loop; every wait is bounded. The server's allocator is
 * counted: what it holds during a burst, and nothing once it has closed.
 * The program takes the case's name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "it_common.h"
#include "it_data.h"
#include "tunnel/tunnel.h"
#include "tunnel/uv.h"

#include "../../lib/crypto.h"
#include "../../lib/msg.h"
#include "../../lib/udpmsg.h"
#include "../../lib/uv/srv.h"

#define TOKEN "udp-test-token"
#define WAIT_MS 8000u
#define MAX_VISITORS 4

/* ------------------------------------------------ counted allocator */

static memstat g_mem;

static const tunnel__mem *libc(void) { return tunnel__mem_default(); }

/* ------------------------------------------------ the scripted client */

typedef struct tcase tcase;

typedef struct conn {
  tcase *t;
  uv_tcp_t tcp;
  uv_connect_t creq;
  int ctl;
  int connected, failed, eof, closed;
  /* control: plain until the LoginResp, then the server's cipher stream */
  int logged_in;
  tunnel__cfb dec;
  tunnel__msg_reader rd;
  int started; /* work: StartWorkConn seen */
  char started_for[64];
  uint64_t packets;
  struct conn *next;
} conn;

typedef struct visitor {
  uv_udp_t h;
  int id;
  uint64_t got, wrong;
  uint32_t last_len;
} visitor;

struct tcase {
  uv_loop_t loop;
  it_waiter w;
  tunnel_server *srv;
  uint16_t ctl_port;
  uint16_t port_lo, port_hi;
  conn *ctl;
  conn *works; /* every work connection ever opened (closed or not) */
  tunnel__cfb enc;
  char run_id[64];
  uint32_t reqs;      /* ReqWorkConn received */
  int answer_work;    /* open a work connection per ReqWorkConn */
  int hold_work;      /* read nothing from work connections */
  uint32_t resps;     /* NewProxyResp received */
  char resp_err[256];
  char resp_addr[64];
  uint32_t pongs;
  uv_timer_t pinger; /* control heartbeats, with a short timeout */
  int pinging;
  visitor vis[MAX_VISITORS];
  int nvis;
  uint8_t *rbuf;
};

static void conn_closed(uv_handle_t *h) {
  conn *c = h->data;
  c->closed = 1;
}

static void conn_close(conn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

typedef struct wreq {
  uv_write_t req;
  uint8_t data[];
} wreq;

static void on_written(uv_write_t *r, int status) {
  (void)status;
  free(r);
}

static void conn_write(conn *c, const uint8_t *p, size_t n) {
  if (uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  wreq *r = malloc(sizeof *r + n);
  assert_non_null(r);
  memcpy(r->data, p, n);
  uv_buf_t b = uv_buf_init((char *)r->data, (unsigned)n);
  if (uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
    free(r);
}

static void conn_write_q(conn *c, tunnel__bufq *q) {
  while (q->size) {
    tunnel__iov v;
    tunnel__bufq_iov(q, &v, 1);
    conn_write(c, v.base, v.len);
    tunnel__bufq_consume(q, v.len);
  }
}

static void send_plain(conn *c, const tunnel__msg *m) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, libc(), 4096);
  assert_int_equal(tunnel__msg_encode(libc(), m, &q), 0);
  conn_write_q(c, &q);
  tunnel__bufq_free(&q);
}

/* A control message, through the client's cipher stream. */
static void send_ctl(tcase *t, const tunnel__msg *m) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, libc(), 4096);
  assert_int_equal(tunnel__msg_encode(libc(), m, &q), 0);
  uint8_t plain[4096], out[4096 + TUNNEL__CFB_IV_SIZE];
  size_t n = 0;
  while (q.size) {
    tunnel__iov v;
    tunnel__bufq_iov(&q, &v, 1);
    assert_true(n + v.len <= sizeof plain);
    memcpy(plain + n, v.base, v.len);
    n += v.len;
    tunnel__bufq_consume(&q, v.len);
  }
  tunnel__bufq_free(&q);
  size_t out_n = 0;
  assert_int_equal(tunnel__cfb_encrypt(&t->enc, plain, n, out, &out_n), 0);
  conn_write(t->ctl, out, out_n);
}

static void on_ctl_msg(tcase *t, const tunnel__msg *m);
static void open_work(tcase *t);

/* Echoes a UDPPacket to its visitor, through the work connection. */
static void echo_packet(conn *c, const uint8_t *body, size_t len) {
  tunnel__udp_packet pk;
  assert_int_equal(tunnel__udp_decode(libc(), body, len, &pk), 0);
  assert_true(pk.ip[0] != '\0');
  tunnel__bufq q;
  tunnel__bufq_init(&q, libc(), 64 * 1024);
  assert_int_equal(
      tunnel__udp_encode(libc(), pk.data, pk.len, pk.ip, pk.port, &q), 0);
  conn_write_q(c, &q);
  tunnel__bufq_free(&q);
  tunnel__udp_packet_free(libc(), &pk);
  c->packets++;
}

static void work_bytes(conn *c, const uint8_t *p, size_t n) {
  size_t off = 0;
  while (off < n) {
    uint8_t type;
    const uint8_t *body;
    size_t blen, used = 0;
    int rc = tunnel__msg_reader_next(&c->rd, p + off, n - off, &used, &type,
                                     &body, &blen);
    off += used;
    if (rc < 0)
      fail_msg("work connection: bad frame from the server (%d)", rc);
    if (rc == 0)
      break;
    if (type == TUNNEL__MSG_START_WORK_CONN) {
      tunnel__msg m;
      assert_int_equal(tunnel__msg_decode(libc(), type, body, blen, &m), 0);
      assert_false(m.error && *m.error);
      snprintf(c->started_for, sizeof c->started_for, "%s",
               m.proxy_name ? m.proxy_name : "");
      c->started = 1;
      tunnel__msg_clear(libc(), &m);
    } else if (type == TUNNEL__MSG_UDP_PACKET) {
      assert_true(c->started);
      echo_packet(c, body, blen);
    } else {
      fail_msg("work connection: unexpected %s", tunnel__msg_type_name(type));
    }
  }
}

static void ctl_plain(tcase *t, const uint8_t *p, size_t n) {
  size_t off = 0;
  while (off < n) {
    tunnel__msg m;
    size_t used = 0;
    int rc = tunnel__msg_reader_feed(&t->ctl->rd, p + off, n - off, &used, &m);
    off += used;
    if (rc < 0)
      fail_msg("control: bad frame from the server (%d)", rc);
    if (rc == 0)
      break;
    on_ctl_msg(t, &m);
    tunnel__msg_clear(libc(), &m);
  }
}

static void ctl_bytes(conn *c, const uint8_t *p, size_t n) {
  tcase *t = c->t;
  size_t off = 0;
  if (!c->logged_in) {
    tunnel__msg m;
    size_t used = 0;
    int rc = tunnel__msg_reader_feed(&c->rd, p, n, &used, &m);
    off = used;
    if (rc < 0)
      fail_msg("login: bad answer (%d)", rc);
    if (rc == 0)
      return;
    assert_int_equal(m.type, TUNNEL__MSG_LOGIN_RESP);
    if (m.error && *m.error)
      fail_msg("login refused: %s", m.error);
    snprintf(t->run_id, sizeof t->run_id, "%s", m.run_id ? m.run_id : "");
    tunnel__msg_clear(libc(), &m);
    c->logged_in = 1;
    assert_int_equal(tunnel__cfb_init_decrypt(&c->dec, TOKEN, strlen(TOKEN)),
                     0);
  }
  if (off == n)
    return;
  uint8_t *plain = malloc(n - off);
  size_t plain_n = 0;
  assert_non_null(plain);
  assert_int_equal(tunnel__cfb_decrypt(&c->dec, p + off, n - off, plain,
                                       &plain_n),
                   0);
  ctl_plain(t, plain, plain_n);
  free(plain);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  conn *c = h->data;
  (void)hint;
  *b = uv_buf_init((char *)c->t->rbuf, 256 * 1024);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *c = s->data;
  if (n < 0) {
    c->eof = 1;
    conn_close(c);
    return;
  }
  if (c->ctl)
    ctl_bytes(c, (const uint8_t *)b->base, (size_t)n);
  else
    work_bytes(c, (const uint8_t *)b->base, (size_t)n);
}

static void on_connect(uv_connect_t *r, int status) {
  conn *c = r->data;
  if (status) {
    c->failed = 1;
    conn_close(c);
    return;
  }
  c->connected = 1;
  if (!c->ctl && c->t->hold_work) {
    /* Sends its NewWorkConn but reads nothing yet. */
  } else {
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
}

static conn *conn_open(tcase *t, int ctl) {
  conn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->t = t;
  c->ctl = ctl;
  tunnel__msg_reader_init(&c->rd, libc(), 1u << 20);
  uv_tcp_init_ex(&t->loop, &c->tcp, AF_INET);
  if (!ctl && t->hold_work) {
    /* Little room on this side: the server's queue fills sooner. */
    int size = 32 * 1024;
    uv_recv_buffer_size((uv_handle_t *)&c->tcp, &size);
  }
  c->tcp.data = c;
  c->creq.data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", t->ctl_port, &a);
  assert_int_equal(uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&a,
                                  on_connect),
                   0);
  return c;
}

static void put_key(tunnel__msg *m) {
  char k[33];
  int64_t ts = (int64_t)time(NULL);
  assert_int_equal(tunnel__privilege_key(TOKEN, strlen(TOKEN), ts, k), 0);
  assert_int_equal(tunnel__msg_set_str(libc(), &m->privilege_key, k), 0);
  m->timestamp = ts;
}

static void open_work(tcase *t) {
  conn *c = conn_open(t, 0);
  c->next = t->works;
  t->works = c;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_WORK_CONN);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.run_id, t->run_id), 0);
  put_key(&m);
  send_plain(c, &m);
  tunnel__msg_clear(libc(), &m);
}

static void on_ctl_msg(tcase *t, const tunnel__msg *m) {
  switch (m->type) {
  case TUNNEL__MSG_NEW_PROXY_RESP:
    snprintf(t->resp_err, sizeof t->resp_err, "%s", m->error ? m->error : "");
    snprintf(t->resp_addr, sizeof t->resp_addr, "%s",
             m->remote_addr ? m->remote_addr : "");
    t->resps++;
    break;
  case TUNNEL__MSG_REQ_WORK_CONN:
    t->reqs++;
    if (t->answer_work)
      open_work(t);
    break;
  case TUNNEL__MSG_PONG:
    t->pongs++;
    break;
  default:
    fail_msg("control: unexpected %s", tunnel__msg_type_name(m->type));
  }
}

/* ------------------------------------------------ setup */

static int have_ipv6(void);

static void ping_tick(uv_timer_t *h) {
  tcase *t = h->data;
  tunnel__msg ping;
  tunnel__msg_init(&ping, TUNNEL__MSG_PING);
  if (!uv_is_closing((uv_handle_t *)&t->ctl->tcp))
    send_ctl(t, &ping);
}

static void setup_case(tcase *t, uint32_t backlog, uint32_t hb_timeout_s) {
  memset(t, 0, sizeof *t);
  memset(&g_mem, 0, sizeof g_mem);
  t->rbuf = malloc(256 * 1024);
  assert_non_null(t->rbuf);
  assert_int_equal(uv_loop_init(&t->loop), 0);
  it_waiter_init(&t->w, &t->loop);
  tunnel_config *cfg = NULL;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(
      tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc, mem_free, &g_mem),
      0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  /* Dual-stack public sockets: IPv4 visitors arrive v4-mapped. */
  assert_int_equal(
      tunnel_config_set_proxy_bind_addr(cfg, have_ipv6() ? "::" : "0.0.0.0"),
      0);
  it_pick_range(&t->port_lo, &t->port_hi);
  assert_int_equal(tunnel_config_set_port_range(cfg, t->port_lo, t->port_hi),
                   0);
  if (backlog)
    assert_int_equal(tunnel_config_set_max_control_backlog(cfg, backlog), 0);
  if (hb_timeout_s)
    assert_int_equal(tunnel_config_set_heartbeat(cfg, 0, hb_timeout_s), 0);
  assert_int_equal(tunnel_server_new(&t->srv, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(t->srv, &t->ctl_port), 0);
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  assert_int_equal(uv_random(NULL, NULL, iv, sizeof iv, 0, NULL), 0);
  assert_int_equal(tunnel__cfb_init_encrypt(&t->enc, TOKEN, strlen(TOKEN), iv),
                   0);
  t->answer_work = 1;
  /* Log in: pool 0, so every work connection is asked for. */
  t->ctl = conn_open(t, 1);
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.version, "0.46.1"), 0);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.os, "linux"), 0);
  put_key(&m);
  send_plain(t->ctl, &m);
  tunnel__msg_clear(libc(), &m);
  IT_WAIT(&t->w, t->ctl->logged_in || t->ctl->eof, WAIT_MS);
  assert_true(t->ctl->logged_in);
  if (hb_timeout_s) {
    uv_timer_init(&t->loop, &t->pinger);
    t->pinger.data = t;
    t->pinging = 1;
    uv_timer_start(&t->pinger, ping_tick, 400, 400);
  }
}

static void free_conn(conn *c) {
  tunnel__msg_reader_free(&c->rd);
  if (c->ctl)
    tunnel__cfb_free(&c->dec);
  free(c);
}

static void vis_closed(uv_handle_t *h) { (void)h; }

/* Closes the server and everything of the test's; the server must have
 * freed every byte and closed every handle. */
static int g_srv_closed;
static void srv_closed(tunnel_server *s, void *ud) {
  (void)s, (void)ud;
  g_srv_closed = 1;
}

static void teardown_case(tcase *t) {
  g_srv_closed = 0;
  assert_int_equal(tunnel_server_close(t->srv, srv_closed, NULL), 0);
  IT_WAIT(&t->w, g_srv_closed, WAIT_MS);
  assert_int_equal(g_mem.cur, 0);
  conn_close(t->ctl);
  if (t->pinging)
    uv_close((uv_handle_t *)&t->pinger, NULL);
  for (conn *c = t->works; c; c = c->next)
    conn_close(c);
  for (int i = 0; i < t->nvis; i++)
    uv_close((uv_handle_t *)&t->vis[i].h, vis_closed);
  assert_int_equal(it_waiter_finish(&t->w, WAIT_MS), 0);
  free_conn(t->ctl);
  while (t->works) {
    conn *c = t->works;
    t->works = c->next;
    free_conn(c);
  }
  tunnel__cfb_free(&t->enc);
  free(t->rbuf);
}

/* Registers a udp proxy; returns its public port (0: refused, with the
 * reason in t->resp_err). */
static uint16_t new_proxy(tcase *t, const char *name, int64_t port,
                          int encrypted) {
  uint32_t before = t->resps;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_PROXY);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.proxy_name, name), 0);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.proxy_type, "udp"), 0);
  m.remote_port = port;
  m.use_encryption = encrypted != 0;
  send_ctl(t, &m);
  tunnel__msg_clear(libc(), &m);
  IT_WAIT(&t->w, t->resps > before, WAIT_MS);
  if (t->resp_err[0])
    return 0;
  assert_true(t->resp_addr[0] == ':');
  return (uint16_t)atoi(t->resp_addr + 1);
}

static void close_proxy(tcase *t, const char *name) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_CLOSE_PROXY);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.proxy_name, name), 0);
  send_ctl(t, &m);
  tunnel__msg_clear(libc(), &m);
}

/* The work connection currently attached: the newest that got its
 * StartWorkConn and is still open. */
static conn *live_work(tcase *t) {
  for (conn *c = t->works; c; c = c->next)
    if (c->started && !c->eof && !c->closed)
      return c;
  return NULL;
}

/* ------------------------------------------------ visitors */

/* Datagram `seq` of visitor `id`, `len` bytes: its id and sequence number,
 * then a pattern of both. */
static void fill(uint8_t *p, size_t len, int id, uint32_t seq) {
  for (size_t i = 0; i < len; i++)
    p[i] = (uint8_t)(id * 31 + seq * 7 + i);
  if (len >= 1)
    p[0] = (uint8_t)id;
  if (len >= 5)
    memcpy(p + 1, &seq, 4);
}

static void vis_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  visitor *v = h->data;
  (void)hint, (void)v;
  static uint8_t buf[65536];
  *b = uv_buf_init((char *)buf, sizeof buf);
}

static void vis_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b,
                     const struct sockaddr *addr, unsigned flags) {
  visitor *v = h->data;
  (void)flags;
  if (n <= 0 || !addr)
    return;
  const uint8_t *p = (const uint8_t *)b->base;
  uint32_t seq = 0;
  if (n >= 5)
    memcpy(&seq, p + 1, 4);
  uint8_t *want = malloc((size_t)n);
  assert_non_null(want);
  fill(want, (size_t)n, v->id, seq);
  if (memcmp(want, p, (size_t)n) == 0)
    v->got++;
  else
    v->wrong++;
  v->last_len = (uint32_t)n;
  free(want);
}

static int have_ipv6(void) {
  uv_loop_t l;
  uv_udp_t u;
  struct sockaddr_in6 a;
  uv_loop_init(&l);
  uv_udp_init(&l, &u);
  uv_ip6_addr("::1", 0, &a);
  int ok = uv_udp_bind(&u, (struct sockaddr *)&a, 0) == 0;
  uv_close((uv_handle_t *)&u, NULL);
  uv_run(&l, UV_RUN_DEFAULT);
  uv_loop_close(&l);
  return ok;
}

static visitor *add_visitor(tcase *t, int v6) {
  visitor *v = &t->vis[t->nvis];
  memset(v, 0, sizeof *v);
  v->id = ++t->nvis;
  uv_udp_init(&t->loop, &v->h);
  v->h.data = v;
  struct sockaddr_storage ss;
  if (v6)
    uv_ip6_addr("::1", 0, (struct sockaddr_in6 *)&ss);
  else
    uv_ip4_addr("127.0.0.1", 0, (struct sockaddr_in *)&ss);
  assert_int_equal(uv_udp_bind(&v->h, (struct sockaddr *)&ss, 0), 0);
  int size = 4 * 1024 * 1024;
  uv_recv_buffer_size((uv_handle_t *)&v->h, &size);
  assert_int_equal(uv_udp_recv_start(&v->h, vis_alloc, vis_recv), 0);
  return v;
}

/* Sends datagram `seq` of `len` bytes to the proxy at `port`: 0 or a
 * libuv error (UV_EAGAIN when the socket is full). */
static int vis_send(visitor *v, uint16_t port, size_t len, uint32_t seq) {
  static uint8_t buf[65536];
  fill(buf, len, v->id, seq);
  struct sockaddr_storage ss;
  struct sockaddr_storage me;
  int mlen = sizeof me;
  uv_udp_getsockname(&v->h, (struct sockaddr *)&me, &mlen);
  if (me.ss_family == AF_INET6)
    uv_ip6_addr("::1", port, (struct sockaddr_in6 *)&ss);
  else
    uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)&ss);
  uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
  int rc = uv_udp_try_send(&v->h, &b, 1, (struct sockaddr *)&ss);
  return rc < 0 ? rc : 0;
}

/* Sends one datagram at a time until `want` replies arrived (some may be
 * lost on the way: loopback UDP drops too when a buffer is full). */
static void round_trips(tcase *t, visitor *v, uint16_t port, size_t len,
                        uint64_t want) {
  uint64_t goal = v->got + want;
  uint32_t seq = 0;
  it_waiter_arm(&t->w, WAIT_MS);
  while (v->got < goal && !t->w.fired) {
    uint64_t before = v->got;
    (void)vis_send(v, port, len, seq++);
    uint64_t until = uv_now(&t->loop) + 200;
    while (v->got == before && !t->w.fired && uv_now(&t->loop) < until)
      uv_run(&t->loop, UV_RUN_NOWAIT), uv_sleep(1), uv_update_time(&t->loop);
  }
  it_waiter_disarm(&t->w);
  if (v->got < goal)
    fail_msg("visitor %d: %llu of %llu replies of %zu bytes", v->id,
             (unsigned long long)(v->got - (goal - want)),
             (unsigned long long)want, len);
  assert_int_equal(v->wrong, 0);
}

static srv_proxy *find_proxy(tcase *t, const char *name) {
  for (srv_ctl *c = t->srv->ctls; c; c = c->next)
    for (srv_proxy *p = c->proxies; p; p = p->next)
      if (strcmp(p->name, name) == 0)
        return p;
  return NULL;
}

static tunnel__srv_udp_stats stats_of(tcase *t, const char *name) {
  tunnel__srv_udp_stats s;
  srv_proxy *p = find_proxy(t, name);
  assert_non_null(p);
  assert_int_equal(tunnel__srv_udp_stats_get(p, &s), 0);
  return s;
}

typedef struct seen {
  int type;
  uint64_t in, out, open;
} seen;

static int on_proxy(const tunnel_server_proxy_info *i, void *ud) {
  seen *s = ud;
  s->type = tunnel_server_proxy_type(i);
  s->in = tunnel_server_proxy_bytes_in(i);
  s->out = tunnel_server_proxy_bytes_out(i);
  s->open = tunnel_server_proxy_visitors_open(i);
  return 0;
}

/* Whether a UDP socket can bind [::]:port now. */
static int udp_port_free(uv_loop_t *loop, uint16_t port) {
  uv_udp_t u;
  struct sockaddr_storage a;
  uv_udp_init(loop, &u);
  if (have_ipv6())
    uv_ip6_addr("::", port, (struct sockaddr_in6 *)&a);
  else
    uv_ip4_addr("0.0.0.0", port, (struct sockaddr_in *)&a);
  int ok = uv_udp_bind(&u, (struct sockaddr *)&a, 0) == 0;
  uv_close((uv_handle_t *)&u, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return ok;
}

/* ------------------------------------------------ cases */

/* Several visitors at once, IPv4 and IPv6, each gets only its own
 * replies; payloads of 1, 1,400 and 60,000 bytes; the counters. */
static void test_echo(void **state) {
  (void)state;
  tcase t;
  setup_case(&t, 0, 0);
  uint16_t port = new_proxy(&t, "u1", 0, 0);
  if (!port)
    fail_msg("refused: %s", t.resp_err);
  assert_true(port >= t.port_lo && port <= t.port_hi);
  IT_WAIT(&t.w, live_work(&t) != NULL, WAIT_MS);
  assert_string_equal(live_work(&t)->started_for, "u1");
  int v6 = have_ipv6();
  visitor *vs[MAX_VISITORS];
  for (int i = 0; i < MAX_VISITORS; i++)
    vs[i] = add_visitor(&t, v6 && (i & 1));
  /* Interleaved: every visitor's datagrams in flight together, sent
   * again by those still without a reply (the kernel may drop a datagram
   * on loopback too when a socket buffer is full). */
  static const size_t sizes[] = {1, 1400, 60000};
  for (size_t s = 0; s < 3; s++) {
    it_waiter_arm(&t.w, WAIT_MS);
    int done = 0;
    while (!done && !t.w.fired) {
      for (int i = 0; i < MAX_VISITORS; i++)
        if (vs[i]->got <= s)
          (void)vis_send(vs[i], port, sizes[s], (uint32_t)s);
      uint64_t until = uv_now(&t.loop) + 300;
      while (!t.w.fired && uv_now(&t.loop) < until && !done) {
        uv_run(&t.loop, UV_RUN_NOWAIT);
        uv_sleep(1);
        uv_update_time(&t.loop);
        done = 1;
        for (int i = 0; i < MAX_VISITORS; i++)
          done &= vs[i]->got > s;
      }
    }
    it_waiter_disarm(&t.w);
    for (int i = 0; i < MAX_VISITORS; i++) {
      assert_int_equal(vs[i]->wrong, 0);
      assert_true(vs[i]->got > s);
      assert_int_equal(vs[i]->last_len, sizes[s]);
    }
  }
  /* The largest payload, then a run of each size from each visitor. */
  round_trips(&t, vs[0], port, TUNNEL__UDP_MAX_PAYLOAD, 1);
  for (int i = 0; i < MAX_VISITORS; i++)
    round_trips(&t, vs[i], port, 1400, 50);
  tunnel__srv_udp_stats st = stats_of(&t, "u1");
  uint64_t total = 0;
  for (int i = 0; i < MAX_VISITORS; i++)
    total += vs[i]->got;
  assert_true(st.datagrams_out >= total);
  assert_true(st.datagrams_in >= st.datagrams_out);
  assert_int_equal(st.work_streams, 1);
  seen s = {0};
  assert_int_equal(tunnel_server_foreach_proxy(t.srv, on_proxy, &s), 0);
  assert_int_equal(s.type, TUNNEL_PROXY_UDP);
  assert_int_equal(s.open, 1);
  assert_true(s.in >= 4 * (1 + 1400 + 60000) + TUNNEL__UDP_MAX_PAYLOAD);
  assert_true(s.out >= 4 * (1 + 1400 + 60000) + TUNNEL__UDP_MAX_PAYLOAD);
  uint64_t bin = 0, bout = 0;
  assert_int_equal(tunnel_server_stat(t.srv, TUNNEL_SERVER_STAT_BYTES_IN, &bin),
                   0);
  assert_int_equal(
      tunnel_server_stat(t.srv, TUNNEL_SERVER_STAT_BYTES_OUT, &bout), 0);
  assert_int_equal(bin, s.in);
  assert_int_equal(bout, s.out);
  /* Encryption is refused with a reason; the port range is enforced. */
  assert_int_equal(new_proxy(&t, "u-enc", 0, 1), 0);
  assert_non_null(strstr(t.resp_err, "use_encryption"));
  assert_int_equal(new_proxy(&t, "u-low", t.port_lo - 1, 0), 0);
  assert_non_null(strstr(t.resp_err, "not allowed"));
  /* A requested port that is taken. */
  assert_int_equal(new_proxy(&t, "u-dup", port, 0), 0);
  assert_non_null(strstr(t.resp_err, "in use"));
  teardown_case(&t);
}

/* 10,000 datagrams while the client reads nothing: the server drops what
 * would queue beyond its limit, its memory stays bounded, and once the
 * client reads again the traffic flows. Then the same burst with the
 * client echoing, for a rate. */
static void test_burst(void **state) {
  (void)state;
  tcase t;
  const uint32_t limit = 256u * 1024u;
  setup_case(&t, limit, 0);
  t.hold_work = 1;
  uint16_t port = new_proxy(&t, "burst", 0, 0);
  assert_int_not_equal(port, 0);
  IT_WAIT(&t.w, t.works && t.works->connected, WAIT_MS);
  srv_proxy *p = find_proxy(&t, "burst");
  IT_WAIT(&t.w, stats_of(&t, "burst").work_streams == 1, WAIT_MS);
  (void)p;
  visitor *v = add_visitor(&t, 0);
  size_t base = g_mem.cur;
  g_mem.peak = base;
  /* 10,000 datagrams; more if the kernel's TCP buffers absorbed all the
   * server queued (at most 50,000). */
  uint32_t sent = 0;
  it_waiter_arm(&t.w, WAIT_MS);
  while (!t.w.fired &&
         (sent < 10000 ||
          (sent < 50000 && stats_of(&t, "burst").dropped_in == 0))) {
    if (vis_send(v, port, 1400, sent) == 0)
      sent++;
    if (sent % 16 == 0)
      uv_run(&t.loop, UV_RUN_NOWAIT);
  }
  it_waiter_disarm(&t.w);
  assert_true(sent >= 10000);
  it_sleep(&t.w, 300); /* what the kernel held reaches the server */
  tunnel__srv_udp_stats st = stats_of(&t, "burst");
  fprintf(stderr,
          "# burst of %u while the client reads nothing: %llu queued, %llu "
          "dropped; server memory %zu -> peak %zu bytes\n",
          sent, (unsigned long long)st.datagrams_in,
          (unsigned long long)st.dropped_in, base, g_mem.peak);
  assert_true(st.dropped_in > 0);
  /* Bounded by the queue limit plus one frame and the stream's own
   * records, whatever the burst. */
  assert_true(g_mem.peak - base < limit + 256u * 1024u);
  /* The client reads again: the queue drains, new datagrams round-trip. */
  t.hold_work = 0;
  conn *w = t.works;
  uv_read_start((uv_stream_t *)&w->tcp, on_alloc, on_read);
  round_trips(&t, v, port, 1400, 20);
  /* Rate: bursts of 500 with the echo on, replies counted. */
  uint64_t got0 = v->got;
  uint64_t t0 = uv_hrtime();
  uint32_t n = 0;
  it_waiter_arm(&t.w, WAIT_MS);
  while (n < 10000 && !t.w.fired) {
    for (int k = 0; k < 500 && n < 10000; k++)
      if (vis_send(v, port, 1400, 100000 + n) == 0)
        n++;
    uint64_t until = uv_now(&t.loop) + 2;
    while (uv_now(&t.loop) < until)
      uv_run(&t.loop, UV_RUN_NOWAIT), uv_update_time(&t.loop);
  }
  uint64_t quiet_since = uv_now(&t.loop), last = v->got;
  while (!t.w.fired && uv_now(&t.loop) - quiet_since < 200) {
    uv_run(&t.loop, UV_RUN_NOWAIT);
    uv_sleep(1);
    uv_update_time(&t.loop);
    if (v->got != last)
      last = v->got, quiet_since = uv_now(&t.loop);
  }
  it_waiter_disarm(&t.w);
  double secs = (double)(uv_hrtime() - t0) / 1e9 - 0.2;
  fprintf(stderr,
          "# echo: %u datagrams of 1400 bytes sent, %llu replies in %.2f s "
          "(%.0f round trips/s)\n",
          n, (unsigned long long)(v->got - got0), secs,
          (double)(v->got - got0) / (secs > 0 ? secs : 1));
  assert_true(v->got - got0 > 0);
  assert_int_equal(v->wrong, 0);
  teardown_case(&t);
}

/* The work connection ends: the server asks for another and traffic
 * resumes; one that is silent past the heartbeat timeout is replaced
 * too. */
static void test_work_dropped(void **state) {
  (void)state;
  tcase t;
  setup_case(&t, 0, 2);
  uint16_t port = new_proxy(&t, "wd", 0, 0);
  assert_int_not_equal(port, 0);
  IT_WAIT(&t.w, live_work(&t) != NULL, WAIT_MS);
  visitor *v = add_visitor(&t, 0);
  round_trips(&t, v, port, 100, 3);
  uint32_t reqs = t.reqs;
  conn *w = live_work(&t);
  conn_close(w);
  IT_WAIT(&t.w, t.reqs > reqs, WAIT_MS);
  IT_WAIT(&t.w, live_work(&t) != NULL && live_work(&t) != w, WAIT_MS);
  round_trips(&t, v, port, 100, 3);
  assert_int_equal(stats_of(&t, "wd").work_streams, 2);
  /* Silence: the server ends the work connection after the heartbeat
   * timeout (2 s) and asks for a new one. The control channel stays alive
   * on pings. */
  w = live_work(&t);
  reqs = t.reqs;
  it_waiter_arm(&t.w, WAIT_MS);
  while (!w->eof && !t.w.fired) {
    tunnel__msg ping;
    tunnel__msg_init(&ping, TUNNEL__MSG_PING);
    send_ctl(&t, &ping);
    uint64_t until = uv_now(&t.loop) + 500;
    while (!w->eof && !t.w.fired && uv_now(&t.loop) < until)
      uv_run(&t.loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&t.w);
  assert_true(w->eof);
  IT_WAIT(&t.w, t.reqs > reqs && live_work(&t) != NULL, WAIT_MS);
  round_trips(&t, v, port, 100, 3);
  teardown_case(&t);
}

/* CloseProxy frees the port and ends the work connection; so does the end
 * of the client's session; and the server closes clean with a proxy
 * working. */
static void test_close_frees_port(void **state) {
  (void)state;
  tcase t;
  setup_case(&t, 0, 0);
  uint16_t port = new_proxy(&t, "c1", 0, 0);
  assert_int_not_equal(port, 0);
  IT_WAIT(&t.w, live_work(&t) != NULL, WAIT_MS);
  visitor *v = add_visitor(&t, 0);
  round_trips(&t, v, port, 10, 2);
  conn *w = live_work(&t);
  assert_false(udp_port_free(&t.loop, port));
  close_proxy(&t, "c1");
  IT_WAIT(&t.w, w->eof && find_proxy(&t, "c1") == NULL, WAIT_MS);
  IT_WAIT(&t.w, udp_port_free(&t.loop, port), WAIT_MS);
  /* The same port again, requested. */
  assert_int_equal(new_proxy(&t, "c2", port, 0), port);
  IT_WAIT(&t.w, live_work(&t) != NULL, WAIT_MS);
  round_trips(&t, v, port, 10, 2);
  /* The client's control connection ends: its proxy goes. */
  w = live_work(&t);
  conn_close(t.ctl);
  IT_WAIT(&t.w, w->eof && t.srv->ctls == NULL, WAIT_MS);
  IT_WAIT(&t.w, udp_port_free(&t.loop, port), WAIT_MS);
  teardown_case(&t);
}

/* The server closes while a proxy has its work connection and visitors:
 * every byte is freed and every handle closed (checked by teardown). */
static void test_server_close(void **state) {
  (void)state;
  tcase t;
  setup_case(&t, 0, 0);
  uint16_t port = new_proxy(&t, "sc", 0, 0);
  assert_int_not_equal(port, 0);
  /* A second one still waiting for its first work connection. */
  t.answer_work = 0;
  assert_int_not_equal(new_proxy(&t, "sc2", 0, 0), 0);
  IT_WAIT(&t.w, t.reqs >= 2, WAIT_MS);
  t.answer_work = 1;
  open_work(&t);
  IT_WAIT(&t.w, live_work(&t) != NULL, WAIT_MS);
  visitor *v = add_visitor(&t, 0);
  for (uint32_t i = 0; i < 100; i++)
    (void)vis_send(v, port, 1000, i);
  uv_run(&t.loop, UV_RUN_NOWAIT);
  teardown_case(&t);
}

int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_echo),
      cmocka_unit_test(test_burst),
      cmocka_unit_test(test_work_dropped),
      cmocka_unit_test(test_close_frees_port),
      cmocka_unit_test(test_server_close),
  };
  if (argc > 1) {
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
      if (strcmp(all[i].name, argv[1]) == 0)
        return _cmocka_run_group_tests(argv[1], &all[i], 1, NULL, NULL);
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
  }
  return cmocka_run_group_tests(all, NULL, NULL);
}
