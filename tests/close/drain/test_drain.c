/* tunnel_server_shutdown, in process: one uv loop holds a tunnel_server on
 * 127.0.0.1, a tunnel_client with a TCP proxy to a local echo service, and
 * visitors. Checked, in mux and non-mux mode:
 *
 *   transfer   a visitor in the middle of a 16 MiB echo, read slowly, when
 *              the drain starts: every byte comes back intact; a new
 *              visitor during the drain is refused (connection refused or
 *              reset, no byte); the server is freed once the visitor is
 *              done, before the deadline.
 *   deadline   a visitor that never finishes: the server is freed at the
 *              drain deadline (not before, and within a bound after), and
 *              the visitor's connection ends.
 *   close      tunnel_server_close during a drain ends it at once; both
 *              callbacks fire once.
 *   idle       nothing under way: freed at once; a second shutdown is
 *              refused.
 *   http       an HTTP request under way on the public HTTP port (its
 *              response not yet sent) is answered in full, and its
 *              kept-alive connection then closed; an idle kept-alive
 *              connection is closed at once; the public HTTP port refuses
 *              new connections.
 *
 * Each case ends with every handle closed (uv_loop_close succeeds) and all
 * memory taken through the configured allocator returned. Every wait is
 * bounded. Environment: IT_LOG=0..3 prints library log lines up to that
 * level on stderr. */
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

#include "../../integration/it_common.h"
#include "../../integration/it_data.h"

#define TOTAL (16u << 20)
#define CHUNK (64u * 1024u)
#define INFLIGHT_MAX (1u << 20)
/* The slow reader pauses this long after each read. */
#define READ_PAUSE_MS 2u
/* Received before the drain starts. */
#define BEFORE_DRAIN (2u << 20)
/* A freed server must be gone this long after it had nothing to wait for
 * (or after its deadline). */
#define FREE_BOUND_MS 3000u

static int log_level = TUNNEL_LOG_WARN;

static void log_sink(int level, const char *msg, void *ud) {
  fprintf(stderr, "[%s] %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

/* ------------------------------------------------------- echo service */

typedef struct echo_conn {
  uv_tcp_t tcp;
  struct echo_conn *next;
  int reading, eof, closed;
  size_t queued;
} echo_conn;

typedef struct echo_write {
  uv_write_t req;
  echo_conn *c;
  size_t len;
  uint8_t data[];
} echo_write;

typedef struct fx fx;

/* A visitor: writes `limit` bytes of generated data (then half-closes,
 * when `finish`) and checks what comes back against the same data. */
typedef struct visitor {
  fx *t;
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_timer_t pause;
  int connected; /* 1 connected, <0 connect error */
  int closed;
  int finish;
  uint64_t limit;
  uint64_t sent, inflight, recvd;
  int mismatch;
  int eof;      /* EOF read */
  int read_err; /* an error read */
  int shut_done;
} visitor;

struct fx {
  uv_loop_t loop;
  it_waiter w;
  memstat mem;
  int mux;
  uv_tcp_t echo_l;
  uint16_t echo_port;
  echo_conn *echoes;
  tunnel_server *srv;
  uint16_t srv_port;
  tunnel_client *cli;
  tunnel_proxy *px;
  int px_status, px_answered;
  uint16_t pub;
  int cli_closed;
  int srv_freed, srv_freed_close; /* callback counts */
  int order;                      /* which callback came first: 1 close */
  uint64_t freed_at;
};

static void echo_closed(uv_handle_t *h) { ((echo_conn *)h->data)->closed = 1; }

static void echo_close(echo_conn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, echo_closed);
}

static void echo_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  static uint8_t buf[CHUNK];
  *b = uv_buf_init((char *)buf, sizeof buf);
}

static void echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void echo_write_cb(uv_write_t *req, int status) {
  echo_write *w = (echo_write *)req;
  echo_conn *c = w->c;
  c->queued -= w->len;
  free(w);
  if (status < 0 || uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  if (!c->reading && !c->eof && c->queued < INFLIGHT_MAX / 2) {
    c->reading = 1;
    uv_read_start((uv_stream_t *)&c->tcp, echo_alloc, echo_read);
  }
}

static void echo_shut_cb(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

static void echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  echo_conn *c = s->data;
  if (n == 0)
    return;
  if (n < 0) {
    uv_read_stop(s);
    c->reading = 0;
    if (n == UV_EOF) {
      c->eof = 1;
      uv_shutdown_t *sh = malloc(sizeof *sh);
      if (!sh || uv_shutdown(sh, s, echo_shut_cb) != 0) {
        free(sh);
        echo_close(c);
      }
    } else {
      echo_close(c);
    }
    return;
  }
  echo_write *w = malloc(sizeof *w + (size_t)n);
  assert_non_null(w);
  w->c = c;
  w->len = (size_t)n;
  memcpy(w->data, b->base, (size_t)n);
  uv_buf_t wb = uv_buf_init((char *)w->data, (unsigned)n);
  if (uv_write(&w->req, s, &wb, 1, echo_write_cb) != 0) {
    free(w);
    echo_close(c);
    return;
  }
  c->queued += (size_t)n;
  if (c->queued >= INFLIGHT_MAX) {
    uv_read_stop(s);
    c->reading = 0;
  }
}

static void on_echo_conn(uv_stream_t *l, int status) {
  fx *t = l->data;
  if (status < 0)
    return;
  echo_conn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  uv_tcp_init(&t->loop, &c->tcp);
  c->tcp.data = c;
  c->next = t->echoes;
  t->echoes = c;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    echo_close(c);
    return;
  }
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, echo_alloc, echo_read);
}

/* ------------------------------------------------------------ visitor */

static void vis_closed(uv_handle_t *h) { ((visitor *)h->data)->closed = 1; }

static void vis_close(visitor *v) {
  if (!uv_is_closing((uv_handle_t *)&v->tcp)) {
    uv_close((uv_handle_t *)&v->tcp, vis_closed);
    uv_close((uv_handle_t *)&v->pause, NULL);
  }
}

static void vis_pump(visitor *v);

static void vis_write_cb(uv_write_t *req, int status) {
  visitor *v = req->data;
  v->inflight -= CHUNK;
  free(req);
  if (status == 0)
    vis_pump(v);
}

static void vis_shut_cb(uv_shutdown_t *req, int status) {
  visitor *v = req->data;
  v->shut_done = status == 0 ? 1 : -1;
  free(req);
}

/* Keeps up to INFLIGHT_MAX queued towards the tunnel. */
static void vis_pump(visitor *v) {
  if (uv_is_closing((uv_handle_t *)&v->tcp))
    return;
  while (v->sent < v->limit && v->inflight < INFLIGHT_MAX) {
    uv_write_t *req = malloc(sizeof *req + CHUNK);
    assert_non_null(req);
    uint8_t *data = (uint8_t *)(req + 1);
    gen_fill(7, v->sent, data, CHUNK);
    req->data = v;
    uv_buf_t b = uv_buf_init((char *)data, CHUNK);
    if (uv_write(req, (uv_stream_t *)&v->tcp, &b, 1, vis_write_cb) != 0) {
      free(req);
      return;
    }
    v->sent += CHUNK;
    v->inflight += CHUNK;
  }
  if (v->finish && v->sent == v->limit && !v->shut_done) {
    v->shut_done = 2; /* under way */
    uv_shutdown_t *sh = malloc(sizeof *sh);
    assert_non_null(sh);
    sh->data = v;
    if (uv_shutdown(sh, (uv_stream_t *)&v->tcp, vis_shut_cb) != 0) {
      free(sh);
      v->shut_done = -1;
    }
  }
}

static void vis_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  static uint8_t buf[CHUNK];
  *b = uv_buf_init((char *)buf, sizeof buf);
}

static void vis_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void vis_resume(uv_timer_t *tm) {
  visitor *v = tm->data;
  if (!uv_is_closing((uv_handle_t *)&v->tcp))
    uv_read_start((uv_stream_t *)&v->tcp, vis_alloc, vis_read);
}

static void vis_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  visitor *v = s->data;
  if (n == 0)
    return;
  if (n < 0) {
    uv_read_stop(s);
    if (n == UV_EOF)
      v->eof = 1;
    else
      v->read_err = (int)n;
    return;
  }
  uint8_t want[CHUNK];
  gen_fill(7, v->recvd, want, (size_t)n);
  if (memcmp(want, b->base, (size_t)n) != 0)
    v->mismatch = 1;
  v->recvd += (uint64_t)n;
  /* A slow reader: the tunnel holds what it cannot deliver. */
  uv_read_stop(s);
  uv_timer_start(&v->pause, vis_resume, READ_PAUSE_MS, 0);
}

static void vis_connected(uv_connect_t *req, int status) {
  visitor *v = req->data;
  v->connected = status == 0 ? 1 : status;
  if (status < 0)
    return;
  uv_read_start((uv_stream_t *)&v->tcp, vis_alloc, vis_read);
  vis_pump(v);
}

static void vis_start(fx *t, visitor *v, uint64_t limit, int finish) {
  memset(v, 0, sizeof *v);
  v->t = t;
  v->limit = limit;
  v->finish = finish;
  uv_tcp_init(&t->loop, &v->tcp);
  uv_timer_init(&t->loop, &v->pause);
  v->tcp.data = v;
  v->pause.data = v;
  v->conn.data = v;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", t->pub, &a);
  assert_int_equal(
      uv_tcp_connect(&v->conn, &v->tcp, (struct sockaddr *)&a, vis_connected),
      0);
}

/* ------------------------------------------------- HTTP service, client */

#define HTTP_BODY (1u << 20)
/* The service answers this long after the request arrived. */
#define HTTP_DELAY_MS 300u

typedef struct http_svc {
  uv_tcp_t l;
  uv_tcp_t c;
  uv_timer_t delay;
  uint16_t port;
  int accepted, got_request;
  char head[4096];
  size_t head_len;
} http_svc;

static void svc_write_cb(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void svc_answer(uv_timer_t *tm) {
  http_svc *h = tm->data;
  char head[128];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n",
                   HTTP_BODY);
  uv_write_t *req = malloc(sizeof *req + (size_t)n + HTTP_BODY);
  assert_non_null(req);
  uint8_t *data = (uint8_t *)(req + 1);
  memcpy(data, head, (size_t)n);
  gen_fill(9, 0, data + n, HTTP_BODY);
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)n + HTTP_BODY);
  if (uv_write(req, (uv_stream_t *)&h->c, &b, 1, svc_write_cb) != 0)
    free(req);
}

static void svc_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *b) {
  http_svc *h = hd->data;
  (void)hint;
  *b = uv_buf_init(h->head + h->head_len,
                   (unsigned)(sizeof h->head - 1 - h->head_len));
}

static void svc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  http_svc *h = s->data;
  (void)b;
  if (n <= 0) {
    if (n < 0)
      uv_read_stop(s);
    return;
  }
  h->head_len += (size_t)n;
  h->head[h->head_len] = '\0';
  if (!h->got_request && strstr(h->head, "\r\n\r\n")) {
    h->got_request = 1;
    uv_timer_start(&h->delay, svc_answer, HTTP_DELAY_MS, 0);
  }
  if (h->head_len == sizeof h->head - 1)
    uv_read_stop(s);
}

static void on_svc_conn(uv_stream_t *l, int status) {
  http_svc *h = l->data;
  if (status < 0 || h->accepted)
    return;
  h->accepted = 1;
  uv_tcp_init(l->loop, &h->c);
  h->c.data = h;
  if (uv_accept(l, (uv_stream_t *)&h->c) == 0)
    uv_read_start((uv_stream_t *)&h->c, svc_alloc, svc_read);
}

static void svc_start(uv_loop_t *loop, http_svc *h) {
  memset(h, 0, sizeof *h);
  uv_tcp_init(loop, &h->l);
  uv_timer_init(loop, &h->delay);
  h->l.data = h;
  h->delay.data = h;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&h->l, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&h->l, 8, on_svc_conn), 0);
  int len = sizeof a;
  uv_tcp_getsockname(&h->l, (struct sockaddr *)&a, &len);
  h->port = ntohs(a.sin_port);
}

static void svc_close(http_svc *h) {
  uv_close((uv_handle_t *)&h->l, NULL);
  uv_close((uv_handle_t *)&h->delay, NULL);
  if (h->accepted)
    uv_close((uv_handle_t *)&h->c, NULL);
}

/* A connection that sends `req` and keeps what comes back. */
typedef struct raw {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t wr;
  const char *req;
  int connected, eof, err, closed;
  uint8_t *buf;
  size_t len, cap;
} raw;

static void raw_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *b) {
  raw *r = hd->data;
  (void)hint;
  if (r->cap - r->len < CHUNK) {
    r->cap = r->cap * 2 + CHUNK;
    r->buf = realloc(r->buf, r->cap);
    assert_non_null(r->buf);
  }
  *b = uv_buf_init((char *)r->buf + r->len, (unsigned)(r->cap - r->len));
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  raw *r = s->data;
  (void)b;
  if (n > 0)
    r->len += (size_t)n;
  else if (n == UV_EOF)
    r->eof = 1;
  else if (n < 0)
    r->err = (int)n;
  if (n < 0)
    uv_read_stop(s);
}

static void raw_written(uv_write_t *req, int status) {
  (void)req, (void)status;
}

static void raw_connected(uv_connect_t *req, int status) {
  raw *r = req->data;
  r->connected = status == 0 ? 1 : status;
  if (status < 0)
    return;
  uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_read);
  if (r->req) {
    uv_buf_t b = uv_buf_init((char *)r->req, (unsigned)strlen(r->req));
    uv_write(&r->wr, (uv_stream_t *)&r->tcp, &b, 1, raw_written);
  }
}

static void raw_start(uv_loop_t *loop, raw *r, uint16_t port,
                      const char *req) {
  memset(r, 0, sizeof *r);
  r->req = req;
  uv_tcp_init(loop, &r->tcp);
  r->tcp.data = r;
  r->conn.data = r;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  assert_int_equal(
      uv_tcp_connect(&r->conn, &r->tcp, (struct sockaddr *)&a, raw_connected),
      0);
}

static void raw_closed(uv_handle_t *h) { ((raw *)h->data)->closed = 1; }

static void raw_close(raw *r) {
  if (!uv_is_closing((uv_handle_t *)&r->tcp))
    uv_close((uv_handle_t *)&r->tcp, raw_closed);
}

/* ------------------------------------------------------------- fixture */

static void on_proxy_status(tunnel_proxy *p, int status, const char *msg,
                            void *ud) {
  fx *t = ud;
  (void)p;
  t->px_answered = 1;
  t->px_status = status;
  const char *colon = msg ? strrchr(msg, ':') : NULL;
  if (status == 0 && colon)
    t->pub = (uint16_t)atoi(colon + 1);
}

static void on_srv_freed(tunnel_server *srv, void *ud) {
  fx *t = ud;
  (void)srv;
  if (!t->order)
    t->order = 2;
  t->srv_freed++;
  t->freed_at = uv_now(&t->loop);
}

static void on_srv_freed_close(tunnel_server *srv, void *ud) {
  fx *t = ud;
  (void)srv;
  if (!t->order)
    t->order = 1;
  t->srv_freed_close++;
}

static void on_cli_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((fx *)ud)->cli_closed = 1;
}

static tunnel_config *make_cfg(fx *t, const char *who) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &t->mem),
                   0);
  tunnel_config_set_log(cfg, log_sink, log_level, (void *)who);
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, t->mux), 0);
  return cfg;
}

static void fx_setup(fx *t, int mux) {
  memset(t, 0, sizeof *t);
  t->mux = mux;
  assert_int_equal(uv_loop_init(&t->loop), 0);
  it_waiter_init(&t->w, &t->loop);

  uv_tcp_init(&t->loop, &t->echo_l);
  t->echo_l.data = t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&t->echo_l, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&t->echo_l, 64, on_echo_conn), 0);
  int len = sizeof a;
  uv_tcp_getsockname(&t->echo_l, (struct sockaddr *)&a, &len);
  t->echo_port = ntohs(a.sin_port);

  uint16_t lo, hi;
  it_pick_range(&lo, &hi);
  tunnel_config *scfg = make_cfg(t, "server");
  assert_int_equal(tunnel_config_set_port_range(scfg, lo, hi), 0);
  assert_int_equal(tunnel_config_set_proxy_bind_addr(scfg, "127.0.0.1"), 0);
  assert_int_equal(tunnel_server_new(&t->srv, &t->loop, scfg), 0);
  tunnel_config_free(scfg);
  assert_int_equal(tunnel_server_listen(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(t->srv, &t->srv_port), 0);

  tunnel_config *ccfg = make_cfg(t, "client");
  assert_int_equal(tunnel_config_set_pool_count(ccfg, 1), 0);
  assert_int_equal(tunnel_client_new(&t->cli, &t->loop, ccfg), 0);
  tunnel_config_free(ccfg);
  assert_int_equal(tunnel_proxy_new(&t->px, t->cli, "echo", TUNNEL_PROXY_TCP),
                   0);
  assert_int_equal(tunnel_proxy_set_local(t->px, "127.0.0.1", t->echo_port),
                   0);
  assert_int_equal(tunnel_proxy_set_status_cb(t->px, on_proxy_status, t), 0);
  assert_int_equal(tunnel_proxy_start(t->px), 0);
  assert_int_equal(tunnel_client_connect(t->cli, "127.0.0.1", t->srv_port), 0);
  IT_WAIT(&t->w, t->px_answered, IT_WAIT_MS);
  assert_int_equal(t->px_status, 0);
  assert_true(t->pub != 0);
}

/* Closes what is left and checks that every handle closed and every byte
 * went back. */
static void fx_teardown(fx *t) {
  if (t->cli)
    tunnel_client_close(t->cli, on_cli_closed, t);
  if (!t->srv_freed && !t->srv_freed_close)
    tunnel_server_close(t->srv, on_srv_freed_close, t);
  uv_close((uv_handle_t *)&t->echo_l, NULL);
  for (echo_conn *c = t->echoes; c; c = c->next)
    echo_close(c);
  IT_WAIT(&t->w, t->cli_closed && (t->srv_freed || t->srv_freed_close),
          IT_WAIT_MS);
  assert_int_equal(it_waiter_finish(&t->w, IT_WAIT_MS), 0);
  while (t->echoes) {
    echo_conn *c = t->echoes;
    t->echoes = c->next;
    free(c);
  }
  assert_int_equal(t->mem.cur, 0);
}

/* A connection attempt to the public port while the server drains: refused
 * or reset, never served. */
static void check_refused(fx *t) {
  visitor v;
  vis_start(t, &v, CHUNK, 1);
  IT_WAIT(&t->w, v.connected < 0 || v.eof || v.read_err, IT_WAIT_MS);
  assert_int_equal(v.recvd, 0);
  vis_close(&v);
  IT_WAIT(&t->w, v.closed, IT_WAIT_MS);
}

/* ---------------------------------------------------------------- cases */

static void run_transfer(int mux) {
  fx t;
  fx_setup(&t, mux);
  visitor v;
  vis_start(&t, &v, TOTAL, 1);
  IT_WAIT(&t.w, v.recvd >= BEFORE_DRAIN || v.eof || v.read_err, IT_WAIT_MS);
  assert_true(v.recvd >= BEFORE_DRAIN && v.recvd < TOTAL);
  const uint32_t drain = 20000;
  uint64_t start = uv_now(&t.loop);
  assert_int_equal(tunnel_server_shutdown(t.srv, drain, on_srv_freed, &t), 0);
  assert_int_equal(tunnel_server_shutdown(t.srv, drain, on_srv_freed, &t),
                   TUNNEL_ESTATE);
  check_refused(&t);
  assert_int_equal(t.srv_freed, 0);
  IT_WAIT(&t.w, v.eof || v.read_err || v.mismatch, IT_WAIT_MS);
  assert_false(v.mismatch);
  assert_int_equal(v.read_err, 0);
  assert_int_equal(v.recvd, TOTAL);
  vis_close(&v);
  /* Nothing left to wait for: freed well before the deadline. */
  IT_WAIT(&t.w, t.srv_freed, FREE_BOUND_MS);
  assert_int_equal(t.srv_freed, 1);
  assert_true(t.freed_at - start < drain);
  IT_WAIT(&t.w, v.closed, IT_WAIT_MS);
  fx_teardown(&t);
  assert_int_equal(t.srv_freed, 1);
  assert_int_equal(t.srv_freed_close, 0);
}

static void run_deadline(int mux) {
  fx t;
  fx_setup(&t, mux);
  visitor v;
  vis_start(&t, &v, TOTAL, 0);
  IT_WAIT(&t.w, v.recvd >= CHUNK || v.eof || v.read_err, IT_WAIT_MS);
  const uint32_t drain = 800;
  uint64_t start = uv_now(&t.loop);
  assert_int_equal(tunnel_server_shutdown(t.srv, drain, on_srv_freed, &t), 0);
  IT_WAIT(&t.w, t.srv_freed, drain + FREE_BOUND_MS);
  assert_true(t.freed_at - start >= drain - 50);
  /* The drain cut the visitor that never finished (it never half-closes:
   * its exchange stays open however much it has read). */
  IT_WAIT(&t.w, v.eof || v.read_err, IT_WAIT_MS);
  assert_false(v.mismatch);
  vis_close(&v);
  IT_WAIT(&t.w, v.closed, IT_WAIT_MS);
  fx_teardown(&t);
  assert_int_equal(t.srv_freed, 1);
}

static void run_close_during(int mux) {
  fx t;
  fx_setup(&t, mux);
  visitor v;
  vis_start(&t, &v, TOTAL, 0);
  IT_WAIT(&t.w, v.recvd >= CHUNK || v.eof || v.read_err, IT_WAIT_MS);
  assert_int_equal(tunnel_server_shutdown(t.srv, 60000, on_srv_freed, &t), 0);
  it_sleep(&t.w, 100);
  assert_int_equal(t.srv_freed, 0);
  assert_int_equal(tunnel_server_close(t.srv, on_srv_freed_close, &t), 0);
  IT_WAIT(&t.w, t.srv_freed && t.srv_freed_close, FREE_BOUND_MS);
  assert_int_equal(t.order, 1);
  IT_WAIT(&t.w, v.eof || v.read_err, IT_WAIT_MS);
  vis_close(&v);
  IT_WAIT(&t.w, v.closed, IT_WAIT_MS);
  fx_teardown(&t);
  assert_int_equal(t.srv_freed, 1);
  assert_int_equal(t.srv_freed_close, 1);
}

static void run_idle(int mux) {
  fx t;
  fx_setup(&t, mux);
  assert_int_equal(tunnel_server_shutdown(t.srv, 60000, on_srv_freed, &t), 0);
  assert_int_equal(tunnel_server_listen(t.srv, "127.0.0.1", 0),
                   TUNNEL_ESTATE);
  assert_int_equal(t.srv_freed, 0); /* never from inside the call */
  IT_WAIT(&t.w, t.srv_freed, FREE_BOUND_MS);
  fx_teardown(&t);
  assert_int_equal(t.srv_freed, 1);
}

static void run_http(int mux) {
  fx t;
  fx_setup(&t, mux);
  http_svc svc;
  svc_start(&t.loop, &svc);
  uint16_t http_port;
  assert_int_equal(tunnel_server_listen_http(t.srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_http_port(t.srv, &http_port), 0);
  tunnel_proxy *hp;
  assert_int_equal(tunnel_proxy_new(&hp, t.cli, "web", TUNNEL_PROXY_HTTP), 0);
  assert_int_equal(tunnel_proxy_set_subdomain(hp, "drain"), 0);
  assert_int_equal(tunnel_proxy_set_local(hp, "127.0.0.1", svc.port), 0);
  t.px_answered = 0;
  assert_int_equal(tunnel_proxy_set_status_cb(hp, on_proxy_status, &t), 0);
  assert_int_equal(tunnel_proxy_start(hp), 0);
  IT_WAIT(&t.w, t.px_answered, IT_WAIT_MS);
  assert_int_equal(t.px_status, 0);

  raw busy, idle;
  raw_start(&t.loop, &busy, http_port,
            "GET / HTTP/1.1\r\nHost: drain.localhost\r\n\r\n");
  raw_start(&t.loop, &idle, http_port, NULL);
  IT_WAIT(&t.w, svc.got_request && idle.connected, IT_WAIT_MS);
  assert_int_equal(idle.connected, 1);
  assert_int_equal(busy.len, 0); /* the answer is still to come */
  uint64_t start = uv_now(&t.loop);
  const uint32_t drain = 20000;
  assert_int_equal(tunnel_server_shutdown(t.srv, drain, on_srv_freed, &t), 0);
  /* Between requests: closed at once, with nothing sent. */
  IT_WAIT(&t.w, idle.eof || idle.err, IT_WAIT_MS);
  assert_int_equal(idle.len, 0);
  raw late;
  raw_start(&t.loop, &late, http_port,
            "GET / HTTP/1.1\r\nHost: drain.localhost\r\n\r\n");
  IT_WAIT(&t.w, late.connected < 0 || late.eof || late.err, IT_WAIT_MS);
  assert_int_equal(late.len, 0);
  /* The request under way is answered in full, then the connection ends
   * (kept alive no longer). */
  IT_WAIT(&t.w, busy.eof || busy.err, IT_WAIT_MS);
  assert_int_equal(busy.err, 0);
  busy.buf = realloc(busy.buf, busy.len + 1); /* terminated for strstr */
  assert_non_null(busy.buf);
  busy.buf[busy.len] = 0;
  const char *crlf = busy.len ? strstr((const char *)busy.buf, "\r\n\r\n")
                              : NULL;
  assert_non_null(crlf);
  assert_true(strncmp((const char *)busy.buf, "HTTP/1.1 200", 12) == 0);
  size_t hlen = (size_t)(crlf + 4 - (const char *)busy.buf);
  assert_int_equal(busy.len - hlen, HTTP_BODY);
  uint8_t *want = malloc(HTTP_BODY);
  assert_non_null(want);
  gen_fill(9, 0, want, HTTP_BODY);
  assert_memory_equal(busy.buf + hlen, want, HTTP_BODY);
  free(want);
  IT_WAIT(&t.w, t.srv_freed, FREE_BOUND_MS);
  assert_true(t.freed_at - start < drain);
  raw_close(&busy);
  raw_close(&idle);
  raw_close(&late);
  svc_close(&svc);
  IT_WAIT(&t.w, busy.closed && idle.closed && late.closed, IT_WAIT_MS);
  free(busy.buf);
  free(idle.buf);
  free(late.buf);
  fx_teardown(&t);
  assert_int_equal(t.srv_freed, 1);
}

static void transfer_mux(void **s) { (void)s, run_transfer(1); }
static void transfer_nonmux(void **s) { (void)s, run_transfer(0); }
static void deadline_mux(void **s) { (void)s, run_deadline(1); }
static void deadline_nonmux(void **s) { (void)s, run_deadline(0); }
static void close_mux(void **s) { (void)s, run_close_during(1); }
static void close_nonmux(void **s) { (void)s, run_close_during(0); }
static void idle_mux(void **s) { (void)s, run_idle(1); }
static void idle_nonmux(void **s) { (void)s, run_idle(0); }
static void http_mux(void **s) { (void)s, run_http(1); }
static void http_nonmux(void **s) { (void)s, run_http(0); }

int main(void) {
  const char *lv = getenv("IT_LOG");
  if (lv)
    log_level = atoi(lv);
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(transfer_mux),  cmocka_unit_test(transfer_nonmux),
      cmocka_unit_test(deadline_mux),  cmocka_unit_test(deadline_nonmux),
      cmocka_unit_test(close_mux),     cmocka_unit_test(close_nonmux),
      cmocka_unit_test(idle_mux),      cmocka_unit_test(idle_nonmux),
      cmocka_unit_test(http_mux),      cmocka_unit_test(http_nonmux),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
