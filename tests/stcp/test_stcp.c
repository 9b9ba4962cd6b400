/* Secret TCP services (stcp) on the server, against clients scripted in
 * the test over frp's wire protocol: a service client (non-mux: one TCP
 * connection for the control channel and one per work connection) that
 * registers an stcp proxy and echoes whatever its work connections carry,
 * and visitors that open a connection of their own to the control port and
 * send NewVisitorConn with a computed sign_key (optionally encrypting their
 * side as frp does). Everything runs on one uv loop on 127.0.0.1 (and ::1
 * when available); every wait is bounded. The server's allocator is
 * counted: nothing is left once it has closed. The program takes the
 * case's name. */
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

#define TOKEN "stcp-test-token"
#define SK "stcp-secret-key"
#define SVC "svc"
#define WAIT_MS 8000u

/* ------------------------------------------------ counted allocator */

static memstat g_mem;

static const tunnel__mem *libc(void) { return tunnel__mem_default(); }

/* ------------------------------------------------ scripted peers */

typedef struct tcase tcase;

typedef enum { ROLE_CTL, ROLE_WORK, ROLE_VIS, ROLE_RAW } role;

typedef struct conn {
  tcase *t;
  uv_tcp_t tcp;
  uv_connect_t creq;
  role role;
  int connected, failed, eof, closed;
  tunnel__msg_reader rd;
  /* control: plain until the LoginResp, then the server's cipher stream */
  int logged_in;
  tunnel__cfb dec;
  int dec_on;
  /* work: StartWorkConn seen, then an echo */
  int started;
  char started_for[64];
  char started_src[64];
  /* visitor: NewVisitorConnResp seen, then data (through frp's cipher
   * keyed with the service's key when `crypt`) */
  int answered;
  char resp_err[1024];
  char resp_name[64];
  int crypt;
  tunnel__cfb venc, vdec;
  uint64_t rx, rx_hash;
  /* raw: every byte received */
  uint8_t raw[16384];
  size_t raw_len;
  struct conn *next;
} conn;

struct tcase {
  uv_loop_t loop;
  it_waiter w;
  tunnel_server *srv;
  uint16_t ctl_port;
  int v6; /* the server also listens on ::1 */
  conn *ctl;
  conn *conns; /* every connection opened but the control one */
  tunnel__cfb enc;
  char run_id[64];
  uint32_t reqs;   /* ReqWorkConn received */
  int answer_work; /* open a work connection per ReqWorkConn */
  uint32_t resps;  /* NewProxyResp received */
  char resp_err[256];
  char resp_addr[64];
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
  if (uv_is_closing((uv_handle_t *)&c->tcp) || !n)
    return;
  wreq *r = malloc(sizeof *r + n);
  assert_non_null(r);
  memcpy(r->data, p, n);
  uv_buf_t b = uv_buf_init((char *)r->data, (unsigned)n);
  if (uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
    free(r);
}

/* The framed bytes of `m`, in a fresh buffer. */
static uint8_t *encode(const tunnel__msg *m, size_t *len) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, libc(), 4096);
  assert_int_equal(tunnel__msg_encode(libc(), m, &q), 0);
  uint8_t *out = malloc(q.size + 1);
  assert_non_null(out);
  *len = 0;
  while (q.size) {
    tunnel__iov v;
    tunnel__bufq_iov(&q, &v, 1);
    memcpy(out + *len, v.base, v.len);
    *len += v.len;
    tunnel__bufq_consume(&q, v.len);
  }
  tunnel__bufq_free(&q);
  return out;
}

static void send_plain(conn *c, const tunnel__msg *m) {
  size_t n;
  uint8_t *b = encode(m, &n);
  conn_write(c, b, n);
  free(b);
}

/* A control message, through the client's cipher stream. */
static void send_ctl(tcase *t, const tunnel__msg *m) {
  size_t n, out_n = 0;
  uint8_t *plain = encode(m, &n);
  uint8_t *out = malloc(n + TUNNEL__CFB_IV_SIZE);
  assert_non_null(out);
  assert_int_equal(tunnel__cfb_encrypt(&t->enc, plain, n, out, &out_n), 0);
  conn_write(t->ctl, out, out_n);
  free(plain);
  free(out);
}

static void open_work(tcase *t);

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
    break;
  default:
    fail_msg("control: unexpected %s", tunnel__msg_type_name(m->type));
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
    snprintf(c->resp_err, sizeof c->resp_err, "%s", m.error ? m.error : "");
    if (c == t->ctl && c->resp_err[0])
      fail_msg("login refused: %s", m.error);
    if (c == t->ctl)
      snprintf(t->run_id, sizeof t->run_id, "%s", m.run_id ? m.run_id : "");
    tunnel__msg_clear(libc(), &m);
    c->logged_in = 1;
    if (c != t->ctl)
      return;
    assert_int_equal(tunnel__cfb_init_decrypt(&c->dec, TOKEN, strlen(TOKEN)),
                     0);
    c->dec_on = 1;
  }
  if (off == n)
    return;
  uint8_t *plain = malloc(n - off);
  size_t plain_n = 0;
  assert_non_null(plain);
  assert_int_equal(
      tunnel__cfb_decrypt(&c->dec, p + off, n - off, plain, &plain_n), 0);
  size_t at = 0;
  while (at < plain_n) {
    tunnel__msg m;
    size_t used = 0;
    int rc =
        tunnel__msg_reader_feed(&c->rd, plain + at, plain_n - at, &used, &m);
    at += used;
    if (rc < 0)
      fail_msg("control: bad frame from the server (%d)", rc);
    if (rc == 0)
      break;
    on_ctl_msg(t, &m);
    tunnel__msg_clear(libc(), &m);
  }
  free(plain);
}

/* A work connection: StartWorkConn, then everything is echoed. */
static void work_bytes(conn *c, const uint8_t *p, size_t n) {
  if (!c->started) {
    tunnel__msg m;
    size_t used = 0;
    int rc = tunnel__msg_reader_feed(&c->rd, p, n, &used, &m);
    if (rc < 0)
      fail_msg("work connection: bad frame from the server (%d)", rc);
    if (rc == 0)
      return;
    assert_int_equal(m.type, TUNNEL__MSG_START_WORK_CONN);
    assert_false(m.error && *m.error);
    snprintf(c->started_for, sizeof c->started_for, "%s",
             m.proxy_name ? m.proxy_name : "");
    snprintf(c->started_src, sizeof c->started_src, "%s",
             m.src_addr ? m.src_addr : "");
    c->started = 1;
    tunnel__msg_clear(libc(), &m);
    p += used;
    n -= used;
  }
  conn_write(c, p, n);
}

/* A visitor: NewVisitorConnResp, then the echo of what it sent. */
static void vis_bytes(conn *c, const uint8_t *p, size_t n) {
  if (!c->answered) {
    tunnel__msg m;
    size_t used = 0;
    int rc = tunnel__msg_reader_feed(&c->rd, p, n, &used, &m);
    if (rc < 0)
      fail_msg("visitor: bad frame from the server (%d)", rc);
    if (rc == 0)
      return;
    assert_int_equal(m.type, TUNNEL__MSG_NEW_VISITOR_CONN_RESP);
    snprintf(c->resp_err, sizeof c->resp_err, "%s", m.error ? m.error : "");
    snprintf(c->resp_name, sizeof c->resp_name, "%s",
             m.proxy_name ? m.proxy_name : "");
    c->answered = 1;
    tunnel__msg_clear(libc(), &m);
    p += used;
    n -= used;
  }
  if (!n)
    return;
  if (c->crypt) {
    uint8_t *plain = malloc(n);
    size_t plain_n = 0;
    assert_non_null(plain);
    assert_int_equal(tunnel__cfb_decrypt(&c->vdec, p, n, plain, &plain_n), 0);
    c->rx_hash = fnv1a(c->rx_hash, plain, plain_n);
    c->rx += plain_n;
    free(plain);
  } else {
    c->rx_hash = fnv1a(c->rx_hash, p, n);
    c->rx += n;
  }
}

static void raw_bytes(conn *c, const uint8_t *p, size_t n) {
  size_t room = sizeof c->raw - c->raw_len;
  if (n > room)
    n = room;
  memcpy(c->raw + c->raw_len, p, n);
  c->raw_len += n;
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
  const uint8_t *p = (const uint8_t *)b->base;
  switch (c->role) {
  case ROLE_CTL:
    ctl_bytes(c, p, (size_t)n);
    break;
  case ROLE_WORK:
    work_bytes(c, p, (size_t)n);
    break;
  case ROLE_VIS:
    vis_bytes(c, p, (size_t)n);
    break;
  case ROLE_RAW:
    raw_bytes(c, p, (size_t)n);
    break;
  }
}

static void on_connect(uv_connect_t *r, int status) {
  conn *c = r->data;
  if (status) {
    c->failed = 1;
    conn_close(c);
    return;
  }
  c->connected = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static conn *conn_open(tcase *t, role r, int v6) {
  conn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->t = t;
  c->role = r;
  c->rx_hash = FNV_OFFSET;
  tunnel__msg_reader_init(&c->rd, libc(), 1u << 20);
  uv_tcp_init(&t->loop, &c->tcp);
  c->tcp.data = c;
  c->creq.data = c;
  struct sockaddr_storage a;
  if (v6)
    uv_ip6_addr("::1", t->ctl_port, (struct sockaddr_in6 *)&a);
  else
    uv_ip4_addr("127.0.0.1", t->ctl_port, (struct sockaddr_in *)&a);
  assert_int_equal(
      uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&a, on_connect), 0);
  if (r != ROLE_CTL) {
    c->next = t->conns;
    t->conns = c;
  }
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
  conn *c = conn_open(t, ROLE_WORK, 0);
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_WORK_CONN);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.run_id, t->run_id), 0);
  put_key(&m);
  send_plain(c, &m);
  tunnel__msg_clear(libc(), &m);
}

/* ------------------------------------------------ visitors */

typedef struct vis_opts {
  const char *name;  /* default SVC */
  const char *sk;    /* default SK */
  int64_t ts_offset; /* seconds added to now */
  int encrypt, compress;
  int v6;
} vis_opts;

/* Opens a visitor connection and sends its NewVisitorConn. */
static conn *vis_open(tcase *t, const vis_opts *o) {
  conn *c = conn_open(t, ROLE_VIS, o->v6);
  const char *sk = o->sk ? o->sk : SK;
  int64_t ts = (int64_t)time(NULL) + o->ts_offset;
  char k[33];
  assert_int_equal(tunnel__privilege_key(sk, strlen(sk), ts, k), 0);
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_VISITOR_CONN);
  assert_int_equal(
      tunnel__msg_set_str(libc(), &m.proxy_name, o->name ? o->name : SVC), 0);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.sign_key, k), 0);
  m.timestamp = ts;
  m.use_encryption = o->encrypt != 0;
  m.use_compression = o->compress != 0;
  send_plain(c, &m);
  tunnel__msg_clear(libc(), &m);
  if (o->encrypt) {
    uint8_t iv[TUNNEL__CFB_IV_SIZE];
    assert_int_equal(uv_random(NULL, NULL, iv, sizeof iv, 0, NULL), 0);
    assert_int_equal(tunnel__cfb_init_encrypt(&c->venc, sk, strlen(sk), iv), 0);
    assert_int_equal(tunnel__cfb_init_decrypt(&c->vdec, sk, strlen(sk)), 0);
    c->crypt = 1;
  }
  return c;
}

/* A visitor with the right key; waits for the server's answer. */
static conn *vis_ok(tcase *t, int v6) {
  vis_opts o = {0};
  o.v6 = v6;
  conn *v = vis_open(t, &o);
  IT_WAIT(&t->w, v->answered || v->eof, WAIT_MS);
  assert_true(v->answered);
  if (v->resp_err[0])
    fail_msg("visitor refused: %s", v->resp_err);
  assert_string_equal(v->resp_name, SVC);
  return v;
}

/* Opens a visitor as `o` says and returns the server's refusal (the
 * connection then ends). */
static const char *vis_refused(tcase *t, const vis_opts *o) {
  conn *v = vis_open(t, o);
  IT_WAIT(&t->w, v->eof, WAIT_MS);
  assert_true(v->answered);
  assert_true(v->resp_err[0] != '\0');
  assert_int_equal(v->rx, 0);
  return v->resp_err;
}

static void vis_send(conn *v, const uint8_t *p, size_t n) {
  if (!v->crypt) {
    conn_write(v, p, n);
    return;
  }
  uint8_t *out = malloc(n + TUNNEL__CFB_IV_SIZE);
  size_t out_n = 0;
  assert_non_null(out);
  assert_int_equal(tunnel__cfb_encrypt(&v->venc, p, n, out, &out_n), 0);
  conn_write(v, out, out_n);
  free(out);
}

/* Sends `size` bytes of stream `seed` and waits for their echo. */
static void vis_echo(tcase *t, conn *v, uint32_t seed, size_t size) {
  uint64_t want = FNV_OFFSET, before = v->rx;
  v->rx_hash = FNV_OFFSET;
  uint8_t *buf = malloc(64 * 1024);
  assert_non_null(buf);
  for (size_t off = 0; off < size;) {
    size_t n = size - off < 64 * 1024 ? size - off : 64 * 1024;
    gen_fill(seed, off, buf, n);
    want = fnv1a(want, buf, n);
    vis_send(v, buf, n);
    off += n;
    uv_run(&t->loop, UV_RUN_NOWAIT);
  }
  free(buf);
  IT_WAIT(&t->w, v->rx - before >= size || v->eof, WAIT_MS);
  assert_int_equal(v->rx - before, size);
  assert_true(v->rx_hash == want);
}

/* ------------------------------------------------ setup */

static int have_ipv6(void) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in6 a;
  memset(&a, 0, sizeof a);
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

typedef struct setup_opts {
  int skew_set;
  uint32_t skew;
  int limits_set;
  uint32_t failures, window_ms;
  uint32_t work_timeout_ms;
} setup_opts;

static void login(tcase *t) {
  t->ctl = conn_open(t, ROLE_CTL, 0);
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.version, "0.46.1"), 0);
  put_key(&m);
  send_plain(t->ctl, &m);
  tunnel__msg_clear(libc(), &m);
  IT_WAIT(&t->w, t->ctl->logged_in || t->ctl->eof, WAIT_MS);
  assert_true(t->ctl->logged_in);
}

static void setup_case(tcase *t, const setup_opts *o) {
  memset(t, 0, sizeof *t);
  memset(&g_mem, 0, sizeof g_mem);
  t->rbuf = malloc(256 * 1024);
  assert_non_null(t->rbuf);
  assert_int_equal(uv_loop_init(&t->loop), 0);
  it_waiter_init(&t->w, &t->loop);
  tunnel_config *cfg = NULL;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(
      tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc, mem_free, &g_mem), 0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  if (o && o->skew_set)
    assert_int_equal(tunnel_config_set_auth_max_skew(cfg, o->skew), 0);
  if (o && o->limits_set)
    assert_int_equal(
        tunnel_config_set_login_limits(cfg, o->failures, o->window_ms), 0);
  if (o && o->work_timeout_ms)
    assert_int_equal(
        tunnel_config_set_work_conn_timeout(cfg, o->work_timeout_ms), 0);
  assert_int_equal(tunnel_server_new(&t->srv, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(t->srv, &t->ctl_port), 0);
  t->v6 = have_ipv6() && tunnel_server_listen(t->srv, "::1", t->ctl_port) == 0;
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  assert_int_equal(uv_random(NULL, NULL, iv, sizeof iv, 0, NULL), 0);
  assert_int_equal(tunnel__cfb_init_encrypt(&t->enc, TOKEN, strlen(TOKEN), iv),
                   0);
  t->answer_work = 1;
  login(t);
}

static void free_conn(conn *c) {
  tunnel__msg_reader_free(&c->rd);
  if (c->dec_on)
    tunnel__cfb_free(&c->dec);
  if (c->crypt) {
    tunnel__cfb_free(&c->venc);
    tunnel__cfb_free(&c->vdec);
  }
  free(c);
}

static int g_srv_closed;
static void srv_closed(tunnel_server *s, void *ud) {
  (void)s, (void)ud;
  g_srv_closed = 1;
}

/* Closes the server (visitors may still be joined) and everything of the
 * test's; the server must have freed every byte and closed every handle. */
static void teardown_case(tcase *t) {
  g_srv_closed = 0;
  assert_int_equal(tunnel_server_close(t->srv, srv_closed, NULL), 0);
  IT_WAIT(&t->w, g_srv_closed, WAIT_MS);
  assert_int_equal(g_mem.cur, 0);
  conn_close(t->ctl);
  for (conn *c = t->conns; c; c = c->next)
    conn_close(c);
  assert_int_equal(it_waiter_finish(&t->w, WAIT_MS), 0);
  free_conn(t->ctl);
  while (t->conns) {
    conn *c = t->conns;
    t->conns = c->next;
    free_conn(c);
  }
  tunnel__cfb_free(&t->enc);
  free(t->rbuf);
}

/* Registers a proxy; returns the server's error text ("" when accepted). */
static const char *new_proxy(tcase *t, const char *name, const char *type,
                             const char *sk, int encrypted) {
  uint32_t before = t->resps;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_PROXY);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.proxy_name, name), 0);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.proxy_type, type), 0);
  if (sk)
    assert_int_equal(tunnel__msg_set_str(libc(), &m.sk, sk), 0);
  m.use_encryption = encrypted != 0;
  send_ctl(t, &m);
  tunnel__msg_clear(libc(), &m);
  IT_WAIT(&t->w, t->resps > before, WAIT_MS);
  return t->resp_err;
}

static void add_service(tcase *t) {
  assert_string_equal(new_proxy(t, SVC, "stcp", SK, 0), "");
  assert_string_equal(t->resp_addr, "");
}

static void close_proxy(tcase *t, const char *name) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_CLOSE_PROXY);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.proxy_name, name), 0);
  send_ctl(t, &m);
  tunnel__msg_clear(libc(), &m);
}

static uint64_t get_stat(tcase *t, int32_t id) {
  uint64_t v = 0;
  assert_int_equal(tunnel_server_stat(t->srv, id, &v), 0);
  return v;
}

/* ------------------------------------------------ cases */

/* Registration: no public address; refusals with their reasons. */
static void test_register(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_case(t, NULL);
  add_service(t);
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_PROXIES_STCP), 1);
  assert_string_equal(new_proxy(t, "nokey", "stcp", NULL, 0),
                      "stcp services need a secret key (sk)");
  assert_string_equal(new_proxy(t, "emptykey", "stcp", "", 0),
                      "stcp services need a secret key (sk)");
  assert_non_null(strstr(new_proxy(t, "enc", "stcp", SK, 1),
                         "use_encryption or use_compression are not "
                         "supported"));
  assert_string_equal(new_proxy(t, SVC, "stcp", "other", 0),
                      "proxy [" SVC "] is already in use");
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_PROXIES_STCP), 1);
  /* The visitor's echo comes from the service's work connection. */
  conn *v = vis_ok(t, 0);
  vis_echo(t, v, 1, 100000);
  int found = 0;
  for (conn *c = t->conns; c; c = c->next)
    if (c->role == ROLE_WORK && c->started) {
      assert_string_equal(c->started_for, SVC);
      assert_string_equal(c->started_src, "127.0.0.1");
      found++;
    }
  assert_int_equal(found, 1);
  teardown_case(t);
  free(t);
}

/* The exact refusals, each ending only its own connection. */
static void test_refusals(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_case(t, NULL);
  add_service(t);
  conn *ok = vis_ok(t, 0);
  vis_echo(t, ok, 2, 5000);
  uint64_t no_tunnel =
      get_stat(t, TUNNEL_SERVER_STAT_VISITORS_REFUSED_NO_TUNNEL);
  vis_opts o = {0};
  o.name = "nosuch";
  assert_string_equal(vis_refused(t, &o),
                      "custom listener for [nosuch] doesn't exist");
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_VISITORS_REFUSED_NO_TUNNEL),
                   no_tunnel + 1);
  /* Another kind's proxy is not a secret service. */
  assert_string_equal(new_proxy(t, "plain", "tcp", NULL, 0), "");
  o.name = "plain";
  assert_string_equal(vis_refused(t, &o),
                      "custom listener for [plain] doesn't exist");
  memset(&o, 0, sizeof o);
  o.sk = "wrong-key";
  uint64_t bad_keys = get_stat(t, TUNNEL_SERVER_STAT_VISITORS_REFUSED_AUTH);
  assert_string_equal(vis_refused(t, &o),
                      "visitor connection of [" SVC "] auth failed");
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_VISITORS_REFUSED_AUTH),
                   bad_keys + 1);
  /* The two unknown names above, not the wrong key. */
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_VISITORS_REFUSED_NO_TUNNEL),
                   no_tunnel + 2);
  memset(&o, 0, sizeof o);
  o.compress = 1;
  assert_string_equal(vis_refused(t, &o),
                      "visitor connection of [" SVC "] refused: "
                      "use_compression is not supported by this server");
  /* The service and the joined visitor are untouched. */
  vis_echo(t, ok, 3, 5000);
  vis_echo(t, vis_ok(t, 0), 4, 5000);
  teardown_case(t);
  free(t);
}

/* frp's cipher on the visitor's side, keyed with the service's key. */
static void test_encrypted(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_case(t, NULL);
  add_service(t);
  vis_opts o = {0};
  o.encrypt = 1;
  conn *v = vis_open(t, &o);
  IT_WAIT(&t->w, v->answered || v->eof, WAIT_MS);
  assert_true(v->answered);
  assert_string_equal(v->resp_err, "");
  vis_echo(t, v, 5, 1u << 20);
  vis_echo(t, v, 6, 333);
  /* The service sees plain bytes, whoever visits. */
  conn *plain = vis_ok(t, 0);
  vis_echo(t, plain, 7, 4096);
  teardown_case(t);
  free(t);
}

/* The timestamp must be within the allowed skew (default 900 s); with 0
 * any age is accepted, as frp does. */
static void test_timestamp(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_case(t, NULL);
  add_service(t);
  vis_opts o = {0};
  o.ts_offset = -1000;
  assert_string_equal(vis_refused(t, &o),
                      "visitor connection of [" SVC "] auth failed: timestamp "
                      "out of range (check the clock)");
  o.ts_offset = 1000;
  assert_string_equal(vis_refused(t, &o),
                      "visitor connection of [" SVC "] auth failed: timestamp "
                      "out of range (check the clock)");
  o.ts_offset = -800;
  conn *v = vis_open(t, &o);
  IT_WAIT(&t->w, v->answered || v->eof, WAIT_MS);
  assert_string_equal(v->resp_err, "");
  vis_echo(t, v, 8, 1000);
  teardown_case(t);
  free(t);

  t = calloc(1, sizeof *t);
  setup_opts so = {0};
  so.skew_set = 1;
  so.skew = 0;
  setup_case(t, &so);
  add_service(t);
  o.ts_offset = -(int64_t)time(NULL) + 1; /* 1970 */
  v = vis_open(t, &o);
  IT_WAIT(&t->w, v->answered || v->eof, WAIT_MS);
  assert_string_equal(v->resp_err, "");
  vis_echo(t, v, 9, 1000);
  teardown_case(t);
  free(t);
}

/* Failed keys take their address's attempts (shared with logins); once
 * out of them the address is refused before any check, other addresses
 * and joined visitors are not. Unknown names take none. */
static void test_flood(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_opts so = {0};
  so.limits_set = 1;
  so.failures = 3;
  so.window_ms = 60000;
  setup_case(t, &so);
  add_service(t);
  conn *joined = vis_ok(t, 0);
  vis_echo(t, joined, 10, 10000);
  vis_opts bad = {0};
  bad.sk = "guess";
  for (int i = 0; i < 2; i++)
    assert_string_equal(vis_refused(t, &bad),
                        "visitor connection of [" SVC "] auth failed");
  vis_opts unknown = {0};
  unknown.name = "nosuch";
  for (int i = 0; i < 6; i++)
    assert_non_null(strstr(vis_refused(t, &unknown), "doesn't exist"));
  conn *v = vis_ok(t, 0);
  vis_echo(t, v, 11, 1000);
  assert_string_equal(vis_refused(t, &bad),
                      "visitor connection of [" SVC "] auth failed");
  /* Out of attempts: a flood gets the same answer, the right key too. */
  for (int i = 0; i < 20; i++) {
    const char *why = vis_refused(t, i % 2 ? &bad : &unknown);
    assert_non_null(strstr(why, "too many failed visitor connections from "
                                "this address; retry in "));
  }
  vis_opts good = {0};
  assert_non_null(strstr(vis_refused(t, &good), "too many failed visitor"));
  /* Three wrong keys and 21 refusals of the address; unknown names are not
   * counted as key failures. */
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_VISITORS_REFUSED_AUTH), 24);
  /* Logins from the address are held back too. */
  conn *l = conn_open(t, ROLE_CTL, 0);
  l->next = t->conns;
  t->conns = l;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  put_key(&m);
  send_plain(l, &m);
  tunnel__msg_clear(libc(), &m);
  IT_WAIT(&t->w, l->logged_in || l->eof, WAIT_MS);
  assert_non_null(strstr(l->resp_err, "too many failed logins"));
  /* What was joined runs on; another address may visit. */
  vis_echo(t, joined, 12, 10000);
  vis_echo(t, v, 13, 10000);
  if (t->v6)
    vis_echo(t, vis_ok(t, 1), 14, 10000);
  teardown_case(t);
  free(t);
}

/* A raw frame on a connection of its own. */
static conn *raw_send(tcase *t, uint8_t type, const char *json) {
  conn *c = conn_open(t, ROLE_RAW, 0);
  size_t n = strlen(json);
  uint8_t *b = malloc(9 + n);
  assert_non_null(b);
  b[0] = type;
  for (int i = 0; i < 8; i++)
    b[1 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
  memcpy(b + 9, json, n);
  conn_write(c, b, 9 + n);
  free(b);
  return c;
}

/* The decoded answer of a raw connection, once it has ended. */
static void raw_answer(tcase *t, conn *c, char *err, size_t len) {
  IT_WAIT(&t->w, c->eof, WAIT_MS);
  err[0] = '\0';
  if (!c->raw_len)
    return;
  tunnel__msg_reader rd;
  tunnel__msg_reader_init(&rd, libc(), 1u << 20);
  tunnel__msg m;
  size_t used = 0;
  assert_int_equal(tunnel__msg_reader_feed(&rd, c->raw, c->raw_len, &used, &m),
                   1);
  assert_int_equal(m.type, TUNNEL__MSG_NEW_VISITOR_CONN_RESP);
  snprintf(err, len, "%s", m.error ? m.error : "");
  tunnel__msg_clear(libc(), &m);
  tunnel__msg_reader_free(&rd);
}

/* Malformed or hostile NewVisitorConn fields are refused (or the channel
 * closed) one by one; the server runs on. */
static void test_garbage(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_opts so = {0};
  so.limits_set = 1; /* no attempt limit here: every case is checked */
  so.failures = 0;
  so.window_ms = 60000;
  setup_case(t, &so);
  add_service(t);
  conn *joined = vis_ok(t, 0);
  int64_t now = (int64_t)time(NULL);
  char key[33], upper[33], json[8192], err[1024];
  assert_int_equal(tunnel__privilege_key(SK, strlen(SK), now, key), 0);
  for (int i = 0; i < 33; i++)
    upper[i] = (char)(key[i] >= 'a' && key[i] <= 'f' ? key[i] - 32 : key[i]);
  static const char *const auth_failed[] = {
      "{\"proxy_name\":\"svc\"}",
      "{\"proxy_name\":\"svc\",\"sign_key\":\"\",\"timestamp\":0}",
      "{\"proxy_name\":\"svc\",\"sign_key\":"
      "\"0123456789abcdef0123456789abcde\"}",
      "{\"proxy_name\":\"svc\",\"sign_key\":"
      "\"0123456789abcdef0123456789abcdef0\"}",
      "{\"proxy_name\":\"svc\",\"sign_key\":null,\"timestamp\":-1}",
      "{\"proxy_name\":\"svc\",\"sign_key\":\"\\u00e9\\u00e9\",\"timestamp\":"
      "9007199254740991}",
  };
  for (size_t i = 0; i < sizeof auth_failed / sizeof auth_failed[0]; i++) {
    raw_answer(t, raw_send(t, 'v', auth_failed[i]), err, sizeof err);
    assert_string_equal(err, "visitor connection of [svc] auth failed");
  }
  /* The right key in upper case is another string, as frp compares. */
  snprintf(json, sizeof json,
           "{\"proxy_name\":\"svc\",\"sign_key\":\"%s\",\"timestamp\":%lld}",
           upper, (long long)now);
  raw_answer(t, raw_send(t, 'v', json), err, sizeof err);
  assert_string_equal(err, "visitor connection of [svc] auth failed");
  /* A key signed for another time than the one sent. */
  snprintf(json, sizeof json,
           "{\"proxy_name\":\"svc\",\"sign_key\":\"%s\",\"timestamp\":%lld}",
           key, (long long)now + 1);
  raw_answer(t, raw_send(t, 'v', json), err, sizeof err);
  assert_string_equal(err, "visitor connection of [svc] auth failed");
  /* No name, and a long one (echoed in part). */
  raw_answer(t, raw_send(t, 'v', "{}"), err, sizeof err);
  assert_string_equal(err, "custom listener for [] doesn't exist");
  char name[5001];
  memset(name, 'n', 5000);
  name[5000] = '\0';
  snprintf(json, sizeof json, "{\"proxy_name\":\"%s\"}", name);
  raw_answer(t, raw_send(t, 'v', json), err, sizeof err);
  assert_int_equal(strlen(err),
                   strlen("custom listener for [] doesn't exist") + 255);
  /* Bodies that do not decode end the connection without an answer. */
  static const char *const undecodable[] = {
      "{\"proxy_name\":\"svc\",\"timestamp\":\"now\"}",
      "{\"proxy_name\":7}",
      "{\"proxy_name\":\"svc\",\"use_encryption\":\"yes\"}",
      "{\"proxy_name\":\"s\\u0000vc\"}",
      "[1,2,3]",
      "{\"proxy_name\":",
      "not json",
  };
  for (size_t i = 0; i < sizeof undecodable / sizeof undecodable[0]; i++) {
    conn *c = raw_send(t, 'v', undecodable[i]);
    if (i == 5) /* a truncated body: the server waits, the peer gives up */
      uv_tcp_close_reset(&c->tcp, conn_closed);
    else
      raw_answer(t, c, err, sizeof err), assert_string_equal(err, "");
  }
  /* A NewVisitorConn on the control channel is no visitor: ignored. */
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_VISITOR_CONN);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.proxy_name, SVC), 0);
  assert_int_equal(tunnel__msg_set_str(libc(), &m.sign_key, key), 0);
  m.timestamp = now;
  send_ctl(t, &m);
  tunnel__msg_clear(libc(), &m);
  /* A session that has not logged in may not carry visitors: yamux SYN on
   * stream 1 with NewVisitorConn as its data. */
  snprintf(json, sizeof json,
           "{\"proxy_name\":\"svc\",\"sign_key\":\"%s\",\"timestamp\":%lld}",
           key, (long long)now);
  size_t jl = strlen(json);
  uint8_t frame[12 + 9 + 256];
  assert_true(jl <= 256);
  memset(frame, 0, 12);
  frame[1] = 0; /* data */
  frame[3] = 1; /* SYN */
  frame[7] = 1; /* stream 1 */
  uint32_t flen = (uint32_t)(9 + jl);
  frame[8] = (uint8_t)(flen >> 24), frame[9] = (uint8_t)(flen >> 16);
  frame[10] = (uint8_t)(flen >> 8), frame[11] = (uint8_t)flen;
  frame[12] = 'v';
  memset(frame + 13, 0, 8);
  frame[19] = (uint8_t)(jl >> 8), frame[20] = (uint8_t)jl;
  memcpy(frame + 21, json, jl);
  conn *s = conn_open(t, ROLE_RAW, 0);
  conn_write(s, frame, 12 + flen);
  const char *want = "a visitor stream must come in a logged-in session";
  it_waiter_arm(&t->w, WAIT_MS);
  while (!t->w.fired && !s->eof &&
         !memmem(s->raw, s->raw_len, want, strlen(want)))
    uv_run(&t->loop, UV_RUN_ONCE);
  it_waiter_disarm(&t->w);
  assert_non_null(memmem(s->raw, s->raw_len, want, strlen(want)));
  conn_close(s);
  /* Still serving: the joined visitor and a new one. */
  vis_echo(t, joined, 15, 100000);
  vis_echo(t, vis_ok(t, 0), 16, 100000);
  assert_int_equal(tunnel_server_client_count(t->srv), 1);
  teardown_case(t);
  free(t);
}

/* CloseProxy: joined visitors run on, new ones are refused, waiting ones
 * dropped; the client's end ends its visitors. */
static void test_lifecycle(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_case(t, NULL);
  add_service(t);
  conn *a = vis_ok(t, 0);
  vis_echo(t, a, 17, 50000);
  close_proxy(t, SVC);
  IT_WAIT(&t->w, get_stat(t, TUNNEL_SERVER_STAT_PROXIES_STCP) == 0, WAIT_MS);
  vis_opts o = {0};
  assert_string_equal(vis_refused(t, &o),
                      "custom listener for [" SVC "] doesn't exist");
  vis_echo(t, a, 18, 50000);
  /* Registered again: a visitor waiting for work is dropped when the
   * proxy closes. */
  add_service(t);
  t->answer_work = 0;
  uint32_t reqs = t->reqs;
  conn *w = vis_ok(t, 0);
  IT_WAIT(&t->w, t->reqs > reqs, WAIT_MS);
  close_proxy(t, SVC);
  IT_WAIT(&t->w, w->eof, WAIT_MS);
  assert_int_equal(w->rx, 0);
  t->answer_work = 1;
  add_service(t);
  conn *b = vis_ok(t, 0);
  vis_echo(t, b, 19, 50000);
  vis_echo(t, a, 20, 1000);
  /* The service's client goes: its visitors end with it. */
  conn_close(t->ctl);
  IT_WAIT(&t->w, a->eof && b->eof, WAIT_MS);
  IT_WAIT(&t->w, tunnel_server_client_count(t->srv) == 0, WAIT_MS);
  IT_WAIT(&t->w, get_stat(t, TUNNEL_SERVER_STAT_VISITORS_OPEN) == 0, WAIT_MS);
  teardown_case(t);
  free(t);
}

/* A visitor waits at most the work connection timeout. */
static void test_work_timeout(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_opts so = {0};
  so.work_timeout_ms = 300;
  setup_case(t, &so);
  add_service(t);
  t->answer_work = 0;
  conn *v = vis_ok(t, 0);
  IT_WAIT(&t->w, v->eof, 3000);
  assert_int_equal(v->rx, 0);
  t->answer_work = 1;
  vis_echo(t, vis_ok(t, 0), 21, 1000);
  teardown_case(t);
  free(t);
}

/* A draining server waits for joined visitors (and no longer), then
 * closes with nothing left. */
static int g_drained;
static void srv_drained(tunnel_server *s, void *ud) {
  (void)s, (void)ud;
  g_drained = 1;
}

static void test_drain(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_case(t, NULL);
  add_service(t);
  conn *a = vis_ok(t, 0);
  vis_echo(t, a, 26, 10000);
  g_drained = 0;
  assert_int_equal(tunnel_server_shutdown(t->srv, 20000, srv_drained, NULL), 0);
  it_sleep(&t->w, 300);
  assert_false(g_drained);
  vis_echo(t, a, 27, 10000);
  /* The visitor finishes: its work connection follows, and the drain is
   * over long before its deadline. */
  uint64_t t0 = uv_now(&t->loop);
  conn_close(a);
  IT_WAIT(&t->w, g_drained, WAIT_MS);
  assert_true(uv_now(&t->loop) - t0 < 5000);
  assert_int_equal(g_mem.cur, 0);
  conn_close(t->ctl);
  for (conn *c = t->conns; c; c = c->next)
    conn_close(c);
  assert_int_equal(it_waiter_finish(&t->w, WAIT_MS), 0);
  free_conn(t->ctl);
  while (t->conns) {
    conn *c = t->conns;
    t->conns = c->next;
    free_conn(c);
  }
  tunnel__cfb_free(&t->enc);
  free(t->rbuf);
  free(t);
}

/* --------------------------------------------- stats and metrics */

static int check_proxy(const tunnel_server_proxy_info *p, void *ud) {
  tcase *t = ud;
  if (strcmp(tunnel_server_proxy_name(p), SVC) != 0)
    return 0;
  assert_int_equal(tunnel_server_proxy_type(p), TUNNEL_PROXY_STCP);
  assert_string_equal(tunnel_server_proxy_public_addr(p), "");
  assert_string_equal(tunnel_server_proxy_run_id(p), t->run_id);
  return 1;
}

typedef struct proxy_vals {
  uint64_t in, out, open, total;
} proxy_vals;

static int read_proxy(const tunnel_server_proxy_info *p, void *ud) {
  proxy_vals *v = ud;
  if (strcmp(tunnel_server_proxy_name(p), SVC) != 0)
    return 0;
  v->in = tunnel_server_proxy_bytes_in(p);
  v->out = tunnel_server_proxy_bytes_out(p);
  v->open = tunnel_server_proxy_visitors_open(p);
  v->total = tunnel_server_proxy_visitors_total(p);
  return 1;
}

/* GET `path` from the metrics port; the body, or NULL. */
typedef struct http_get {
  tcase *t;
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  char buf[65536];
  size_t len;
  int done;
} http_get;

static void get_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  http_get *g = h->data;
  (void)hint;
  *b = uv_buf_init(g->buf + g->len, (unsigned)(sizeof g->buf - 1 - g->len));
}

static void get_closed(uv_handle_t *h) {
  http_get *g = h->data;
  g->done = 1;
}

static void get_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  http_get *g = s->data;
  (void)b;
  if (n > 0) {
    g->len += (size_t)n;
    g->buf[g->len] = '\0';
  }
  if (n < 0 || g->len >= sizeof g->buf - 1)
    uv_close((uv_handle_t *)s, get_closed);
}

static void get_connected(uv_connect_t *r, int status) {
  http_get *g = r->data;
  if (status) {
    uv_close((uv_handle_t *)&g->tcp, get_closed);
    return;
  }
  static const char req[] =
      "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  uv_buf_t b = uv_buf_init((char *)req, sizeof req - 1);
  uv_write(&g->wreq, (uv_stream_t *)&g->tcp, &b, 1, NULL);
  uv_read_start((uv_stream_t *)&g->tcp, get_alloc, get_read);
}

static char *get_metrics(tcase *t, uint16_t port) {
  http_get *g = calloc(1, sizeof *g);
  assert_non_null(g);
  g->t = t;
  uv_tcp_init(&t->loop, &g->tcp);
  g->tcp.data = g;
  g->creq.data = g;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  assert_int_equal(
      uv_tcp_connect(&g->creq, &g->tcp, (struct sockaddr *)&a, get_connected),
      0);
  IT_WAIT(&t->w, g->done, WAIT_MS);
  char *body = strstr(g->buf, "\r\n\r\n");
  char *out = body ? strdup(body + 4) : NULL;
  free(g);
  return out;
}

static void test_stats(void **state) {
  (void)state;
  tcase *t = calloc(1, sizeof *t);
  setup_case(t, NULL);
  assert_int_equal(tunnel_server_listen_metrics(t->srv, "127.0.0.1", 0), 0);
  uint16_t mport = 0;
  assert_int_equal(tunnel_server_metrics_port(t->srv, &mport), 0);
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_PROXIES_STCP), 0);
  uint64_t v = 0;
  assert_int_equal(tunnel_server_stat(t->srv, TUNNEL_SERVER_STAT_COUNT_, &v),
                   TUNNEL_EINVAL);
  add_service(t);
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_PROXIES_STCP), 1);
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_PROXIES_TCP), 0);
  assert_int_equal(tunnel_server_foreach_proxy(t->srv, check_proxy, t), 1);
  uint64_t vtotal = get_stat(t, TUNNEL_SERVER_STAT_VISITORS_TOTAL);
  conn *a = vis_ok(t, 0);
  vis_echo(t, a, 22, 123456);
  conn *b = vis_ok(t, 0);
  vis_echo(t, b, 23, 1000);
  /* An encrypted visitor counts its plain bytes. */
  vis_opts o = {0};
  o.encrypt = 1;
  conn *c = vis_open(t, &o);
  IT_WAIT(&t->w, c->answered, WAIT_MS);
  vis_echo(t, c, 24, 2000);
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_VISITORS_TOTAL), vtotal + 3);
  assert_int_equal(get_stat(t, TUNNEL_SERVER_STAT_VISITORS_OPEN), 3);
  proxy_vals pv = {0};
  assert_int_equal(tunnel_server_foreach_proxy(t->srv, read_proxy, &pv), 1);
  assert_int_equal(pv.in, 123456 + 1000 + 2000);
  assert_int_equal(pv.out, 123456 + 1000 + 2000);
  assert_int_equal(pv.open, 3);
  assert_int_equal(pv.total, 3);
  char *m = get_metrics(t, mport);
  assert_non_null(m);
  assert_non_null(strstr(m, "\ntunnel_proxies{type=\"stcp\"} 1\n"));
  assert_non_null(strstr(m, "\ntunnel_proxies{type=\"tcp\"} 0\n"));
  char line[256];
  snprintf(line, sizeof line,
           "\ntunnel_proxy_received_bytes_total{proxy=\"" SVC
           "\",type=\"stcp\",run_id=\"%s\"} %u\n",
           t->run_id, 123456u + 1000u + 2000u);
  assert_non_null(strstr(m, line));
  snprintf(line, sizeof line,
           "\ntunnel_proxy_visitors_open{proxy=\"" SVC
           "\",type=\"stcp\",run_id=\"%s\"} 3\n",
           t->run_id);
  assert_non_null(strstr(m, line));
  free(m);
  /* A visitor that ended leaves the open count. */
  conn_close(b);
  IT_WAIT(&t->w, get_stat(t, TUNNEL_SERVER_STAT_VISITORS_OPEN) == 2, WAIT_MS);
  close_proxy(t, SVC);
  IT_WAIT(&t->w, get_stat(t, TUNNEL_SERVER_STAT_PROXIES_STCP) == 0, WAIT_MS);
  m = get_metrics(t, mport);
  assert_non_null(m);
  assert_non_null(strstr(m, "\ntunnel_proxies{type=\"stcp\"} 0\n"));
  free(m);
  /* Closed with visitors still joined. */
  vis_echo(t, a, 25, 1000);
  teardown_case(t);
  free(t);
}

int main(int argc, char **argv) {
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_register),  cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_encrypted), cmocka_unit_test(test_timestamp),
      cmocka_unit_test(test_flood),     cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_lifecycle), cmocka_unit_test(test_work_timeout),
      cmocka_unit_test(test_drain),     cmocka_unit_test(test_stats),
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
