/* Fixture of the HTTP/HTTPS vhost tests (see vh_fixture.h). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vh_fixture.h"

int vt_log_level = TUNNEL_LOG_WARN;

static void log_sink(int level, const char *msg, void *ud) {
  fprintf(stderr, "[%s] %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

uint64_t vt_now(vt *t) {
  uv_update_time(&t->loop);
  return uv_now(&t->loop);
}

/* ------------------------------------------------------------ messages */

const char *vt_hdr_get(const vt_msg *m, const char *name) {
  for (int i = 0; i < m->nhdrs; i++)
    if (strcasecmp(m->hdrs[i].name, name) == 0)
      return m->hdrs[i].value;
  return NULL;
}

int vt_hdr_count(const vt_msg *m, const char *name) {
  int n = 0;
  for (int i = 0; i < m->nhdrs; i++)
    n += strcasecmp(m->hdrs[i].name, name) == 0;
  return n;
}

static void msg_reset(vt_msg *m) {
  memset(m, 0, offsetof(vt_msg, body));
  m->body_hash = FNV_OFFSET;
  m->body[0] = '\0';
  m->body_small = 0;
  m->upgrade = m->keep_alive = m->complete = 0;
  m->done_ms = 0;
  m->conn = 0;
}

static void append(char *dst, size_t cap, const char *src, size_t n) {
  size_t have = strlen(dst);
  if (have + 1 >= cap)
    return;
  if (n > cap - 1 - have)
    n = cap - 1 - have;
  memcpy(dst + have, src, n);
  dst[have + n] = '\0';
}

/* Header callbacks may come in pieces: a field callback after a value (or
 * first) starts a new header. Headers beyond VT_HDRS are counted, not kept. */
static void msg_field(vt_msg *m, const char *at, size_t n) {
  if (m->hstate != 1) {
    m->hstate = 1;
    m->hskip = m->nhdrs == VT_HDRS;
    if (m->hskip) {
      m->hdr_overflow++;
    } else {
      m->nhdrs++;
      m->hdrs[m->nhdrs - 1].name[0] = '\0';
      m->hdrs[m->nhdrs - 1].value[0] = '\0';
    }
  }
  if (!m->hskip)
    append(m->hdrs[m->nhdrs - 1].name, VT_NAME, at, n);
}

static void msg_value(vt_msg *m, const char *at, size_t n) {
  m->hstate = 2;
  if (!m->hskip && m->nhdrs > 0)
    append(m->hdrs[m->nhdrs - 1].value, VT_VALUE, at, n);
}

static void msg_body(vt_msg *m, const char *at, size_t n) {
  m->body_len += n;
  m->body_hash = fnv1a(m->body_hash, (const uint8_t *)at, n);
  size_t room = VT_BODY_CAP - m->body_small;
  size_t take = n < room ? n : room;
  memcpy(m->body + m->body_small, at, take);
  m->body_small += take;
  m->body[m->body_small] = '\0';
}

/* --------------------------------------------------------------- writes */

typedef struct vt_wreq {
  uv_write_t req;
  void (*done)(void *owner, size_t len, int status);
  void *owner;
  size_t len;
  uint8_t data[];
} vt_wreq;

static void wreq_cb(uv_write_t *req, int status) {
  vt_wreq *w = (vt_wreq *)req;
  void (*done)(void *, size_t, int) = w->done;
  void *owner = w->owner;
  size_t len = w->len;
  free(w);
  done(owner, len, status);
}

static vt_wreq *wreq_new(size_t n) {
  vt_wreq *w = malloc(sizeof *w + n);
  assert_non_null(w);
  w->len = n;
  return w;
}

/* Queues w on the stream; returns the uv error (w freed then). */
static int wreq_submit(uv_stream_t *s, vt_wreq *w, void *owner,
                       void (*done)(void *, size_t, int)) {
  w->owner = owner;
  w->done = done;
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
  int rc = uv_write(&w->req, s, &b, 1, wreq_cb);
  if (rc)
    free(w);
  return rc;
}

/* -------------------------------------------------------------- service */

static void sconn_process(vt_sconn *c);
static void sconn_pump(vt_sconn *c);
static void sconn_read_start(vt_sconn *c);

static void sconn_closed(uv_handle_t *h) {
  vt_sconn *c = h->data;
  c->closed = 1;
}

static void sconn_close(vt_sconn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, sconn_closed);
}

static void sconn_shut_cb(uv_shutdown_t *req, int status) {
  vt_sconn *c = req->data;
  (void)status;
  c->shut_done = 1;
  if (c->rx_eof || c->rx_err)
    sconn_close(c);
}

static void sconn_maybe_shut(vt_sconn *c) {
  if (!c->want_shut || c->shut_requested || c->closing || c->busy ||
      (c->in_len && !c->parse_err && !c->upgraded))
    return;
  c->shut_requested = 1;
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, sconn_shut_cb) != 0)
    sconn_close(c);
}

static void sconn_written(void *owner, size_t len, int status) {
  vt_sconn *c = owner;
  c->tx_inflight -= len;
  if (status && !c->write_err)
    c->write_err = status;
  if (status || c->closing)
    return;
  if (c->busy) {
    sconn_pump(c);
    if (!c->busy)
      sconn_process(c); /* the next request, and reading again */
  }
  /* An echoing connection paused reading while its writes were backed
   * up. */
  if (c->upgraded && c->tx_inflight <= VT_INFLIGHT / 2)
    sconn_read_start(c);
}

static void sconn_write(vt_sconn *c, const void *data, size_t n) {
  if (c->closing || n == 0)
    return;
  vt_wreq *w = wreq_new(n);
  memcpy(w->data, data, n);
  int rc = wreq_submit((uv_stream_t *)&c->tcp, w, c, sconn_written);
  if (rc) {
    if (!c->write_err)
      c->write_err = rc;
    return;
  }
  c->tx_inflight += n;
}

/* Streams the generated body of a /bytes response. */
static void sconn_pump(vt_sconn *c) {
  while (c->busy && c->tx_queued < c->tx_total &&
         c->tx_inflight < VT_INFLIGHT && !c->write_err && !c->closing) {
    uint64_t left = c->tx_total - c->tx_queued;
    size_t n = left < VT_CHUNK ? (size_t)left : VT_CHUNK;
    vt_wreq *w = wreq_new(n);
    gen_fill(c->tx_seed, c->tx_queued, w->data, n);
    c->tx_hash = fnv1a(c->tx_hash, w->data, n);
    c->tx_queued += n;
    if (wreq_submit((uv_stream_t *)&c->tcp, w, c, sconn_written) != 0) {
      c->write_err = UV_EPIPE;
      return;
    }
    c->tx_inflight += n;
  }
  if (c->busy && c->tx_queued == c->tx_total) {
    c->busy = 0;
    c->s->dl_hash = c->tx_hash;
    c->s->dl_len = c->tx_total;
    c->s->dl_done++;
    sconn_maybe_shut(c);
  }
}

static vt_sconn *sconn_of(http_parser *p) { return p->data; }

static int sreq_begin(http_parser *p) {
  vt_sconn *c = sconn_of(p);
  msg_reset(c->cur);
  c->cur->conn = c->idx;
  return 0;
}

static int sreq_url(http_parser *p, const char *at, size_t n) {
  append(sconn_of(p)->cur->url, VT_VALUE, at, n);
  return 0;
}

static int sreq_field(http_parser *p, const char *at, size_t n) {
  msg_field(sconn_of(p)->cur, at, n);
  return 0;
}

static int sreq_value(http_parser *p, const char *at, size_t n) {
  msg_value(sconn_of(p)->cur, at, n);
  return 0;
}

static int sreq_headers(http_parser *p) {
  vt_sconn *c = sconn_of(p);
  snprintf(c->cur->method, sizeof c->cur->method, "%s",
           http_method_str((enum http_method)p->method));
  c->cur->upgrade = p->upgrade;
  return 0;
}

static int sreq_body(http_parser *p, const char *at, size_t n) {
  msg_body(sconn_of(p)->cur, at, n);
  return 0;
}

static int sreq_complete(http_parser *p) {
  vt_sconn *c = sconn_of(p);
  vt_service *s = c->s;
  c->cur->keep_alive = http_should_keep_alive(p);
  c->cur->complete = 1;
  c->cur->done_ms = uv_now(c->tcp.loop);
  if (s->nreqs < VT_MAX_REQS)
    s->reqs[s->nreqs] = *c->cur;
  s->nreqs++;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings sreq_settings = {
    .on_message_begin = sreq_begin,
    .on_url = sreq_url,
    .on_header_field = sreq_field,
    .on_header_value = sreq_value,
    .on_headers_complete = sreq_headers,
    .on_body = sreq_body,
    .on_message_complete = sreq_complete,
};

/* Answers the request that just ended. */
static void sconn_respond(vt_sconn *c) {
  vt_service *s = c->s;
  const vt_msg *m = c->cur;
  char head[512];
  if (s->silent)
    return;
  if (s->hangup) {
    sconn_close(c);
    return;
  }
  if (m->upgrade) {
    /* The 101 and the greeting in one write. */
    char *r = NULL;
    int n = asprintf(&r,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "X-Service: %s\r\n\r\n%s",
                     s->name, s->greeting ? s->greeting : "");
    assert_true(n > 0);
    sconn_write(c, r, (size_t)n);
    free(r);
    c->upgraded = 1;
    return;
  }
  if (s->canned) {
    sconn_write(c, s->canned, s->canned_len);
  } else if (strncmp(m->url, "/bytes/", 7) == 0) {
    uint64_t n = strtoull(m->url + 7, NULL, 10);
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 200 OK\r\nContent-Length: %llu\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      "X-Service: %s\r\n%s\r\n",
                      (unsigned long long)n, s->name,
                      m->keep_alive ? "" : "Connection: close\r\n");
    sconn_write(c, head, (size_t)hl);
    if (strcmp(m->method, "HEAD") != 0 && n > 0) {
      c->busy = 1;
      c->tx_total = n;
      c->tx_queued = 0;
      c->tx_seed = s->seed;
      c->tx_hash = FNV_OFFSET;
      sconn_pump(c);
    }
  } else {
    char body[2048];
    int bl = snprintf(body, sizeof body,
                      "service=%s\nmethod=%s\nurl=%s\nbody_len=%llu\n"
                      "body_hash=%016llx\n",
                      s->name, m->method, m->url,
                      (unsigned long long)m->body_len,
                      (unsigned long long)m->body_hash);
    int eof = strncmp(m->url, "/eof", 4) == 0;
    int hl;
    if (eof)
      hl = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                    "Content-Type: text/plain\r\nX-Service: %s\r\n\r\n",
                    s->name);
    else
      hl = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                    "Content-Type: text/plain\r\nX-Service: %s\r\n%s\r\n",
                    bl, s->name,
                    m->keep_alive ? "" : "Connection: close\r\n");
    sconn_write(c, head, (size_t)hl);
    if (strcmp(m->method, "HEAD") != 0)
      sconn_write(c, body, (size_t)bl);
    if (eof)
      c->want_shut = 1;
  }
  if (!m->keep_alive)
    c->want_shut = 1;
  sconn_maybe_shut(c);
}

static void sconn_consume(vt_sconn *c, size_t n) {
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
}

static void sconn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  vt_sconn *c = h->data;
  (void)hint;
  *b = uv_buf_init((char *)c->rbuf, sizeof c->rbuf);
}

static void sconn_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b);

static void sconn_read_start(vt_sconn *c) {
  if (c->closing || c->rx_eof || c->rx_err)
    return;
  uv_read_start((uv_stream_t *)&c->tcp, sconn_alloc, sconn_read);
}

/* Parses buffered input while no streamed response is in progress. */
static void sconn_process(vt_sconn *c) {
  while (!c->busy && !c->closing && c->in_len) {
    if (c->upgraded) {
      sconn_write(c, c->in, c->in_len);
      c->in_len = 0;
      break;
    }
    if (c->parse_err) {
      c->in_len = 0;
      break;
    }
    size_t used = http_parser_execute(&c->p, &sreq_settings,
                                      (const char *)c->in, c->in_len);
    sconn_consume(c, used);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
    if (e == HPE_PAUSED) {
      http_parser_pause(&c->p, 0);
      sconn_respond(c);
      continue;
    }
    if (e != HPE_OK) {
      c->parse_err = (int)e;
      fprintf(stderr, "# service %s: request parse error %s\n", c->s->name,
              http_errno_name(e));
      c->in_len = 0;
      c->want_shut = 1;
      sconn_maybe_shut(c);
      break;
    }
    if (used == 0)
      break;
  }
  if (c->busy && !c->closing)
    uv_read_stop((uv_stream_t *)&c->tcp);
  else if (!c->busy)
    sconn_read_start(c);
  sconn_maybe_shut(c);
}

static void sconn_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  vt_sconn *c = st->data;
  if (n == 0)
    return;
  if (n < 0) {
    uv_read_stop(st);
    if (n == UV_EOF) {
      c->rx_eof = 1;
      c->want_shut = 1;
      sconn_maybe_shut(c); /* closed once the shutdown completes */
      if (c->shut_done)
        sconn_close(c);
    } else {
      c->rx_err = (int)n;
      sconn_close(c);
    }
    return;
  }
  c->rx_total += (uint64_t)n;
  if (c->raw_len < VT_RAW_CAP) {
    size_t take = (size_t)n < VT_RAW_CAP - c->raw_len
                      ? (size_t)n
                      : VT_RAW_CAP - c->raw_len;
    memcpy(c->raw + c->raw_len, b->base, take);
    c->raw_len += take;
  }
  if (c->upgraded && c->in_len == 0) {
    sconn_write(c, b->base, (size_t)n);
    if (c->tx_inflight > VT_INFLIGHT)
      uv_read_stop(st);
    return;
  }
  if (c->in_len + (size_t)n > c->in_cap) {
    size_t cap = c->in_cap ? c->in_cap : VT_CHUNK;
    while (cap < c->in_len + (size_t)n)
      cap *= 2;
    c->in = realloc(c->in, cap);
    assert_non_null(c->in);
    c->in_cap = cap;
  }
  memcpy(c->in + c->in_len, b->base, (size_t)n);
  c->in_len += (size_t)n;
  sconn_process(c);
}

static void on_service_conn(uv_stream_t *l, int status) {
  vt_service *s = l->data;
  if (status < 0)
    return;
  vt_sconn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->raw = malloc(VT_RAW_CAP);
  c->cur = malloc(sizeof *c->cur);
  assert_non_null(c->raw);
  assert_non_null(c->cur);
  msg_reset(c->cur);
  c->s = s;
  c->idx = s->nconns++;
  uv_tcp_init(l->loop, &c->tcp);
  c->tcp.data = c;
  c->next = s->conns;
  s->conns = c;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    sconn_close(c);
    return;
  }
  http_parser_init(&c->p, HTTP_REQUEST);
  c->p.data = c;
  sconn_read_start(c);
}

vt_service *vt_service_new(vt *t, const char *name) {
  vt_service *s = calloc(1, sizeof *s);
  assert_non_null(s);
  s->reqs = calloc(VT_MAX_REQS, sizeof *s->reqs);
  assert_non_null(s->reqs);
  s->t = t;
  snprintf(s->name, sizeof s->name, "%s", name);
  s->seed = 7;
  s->next = t->services;
  t->services = s;
  uv_tcp_init(&t->loop, &s->tcp);
  s->tcp.data = s;
  return s;
}

void vt_service_listen(vt_service *s) {
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  assert_int_equal(uv_tcp_bind(&s->tcp, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&s->tcp, 511, on_service_conn),
                   0);
  int len = sizeof a;
  assert_int_equal(
      uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&a, &len), 0);
  s->port = ntohs(a.sin_port);
}

const vt_msg *vt_service_req(const vt_service *s, int i) {
  assert_true(i >= 0 && i < s->nreqs && i < VT_MAX_REQS);
  return &s->reqs[i];
}

/* -------------------------------------------------------------- visitor */

static void visitor_pump(vt_visitor *v);

static void visitor_handle_closed(uv_handle_t *h) {
  vt_visitor *v = h->data;
  if (++v->handles_closed == 2)
    v->closed = 1;
}

static void visitor_close(vt_visitor *v) {
  if (v->closing)
    return;
  v->closing = 1;
  uv_close((uv_handle_t *)&v->tcp, visitor_handle_closed);
  uv_close((uv_handle_t *)&v->timer, visitor_handle_closed);
}

static void visitor_written(void *owner, size_t len, int status) {
  vt_visitor *v = owner;
  v->tx_inflight -= len;
  if (status && !v->write_err)
    v->write_err = status;
  if (status || v->closing)
    return;
  visitor_pump(v);
}

void vt_visitor_write(vt_visitor *v, const void *data, size_t len) {
  if (v->closing || len == 0)
    return;
  vt_wreq *w = wreq_new(len);
  memcpy(w->data, data, len);
  int rc = wreq_submit((uv_stream_t *)&v->tcp, w, v, visitor_written);
  if (rc) {
    if (!v->write_err)
      v->write_err = rc;
    return;
  }
  v->tx_inflight += len;
}

void vt_visitor_printf(vt_visitor *v, const char *fmt, ...) {
  va_list ap;
  char *s = NULL;
  va_start(ap, fmt);
  int n = vasprintf(&s, fmt, ap);
  va_end(ap);
  assert_true(n >= 0);
  vt_visitor_write(v, s, (size_t)n);
  free(s);
}

static void visitor_shut_cb(uv_shutdown_t *req, int status) {
  vt_visitor *v = req->data;
  (void)status;
  v->shut_done = 1;
}

void vt_visitor_shutdown(vt_visitor *v) {
  if (v->shut_requested || v->closing)
    return;
  v->shut_requested = 1;
  v->sreq.data = v;
  if (uv_shutdown(&v->sreq, (uv_stream_t *)&v->tcp, visitor_shut_cb) != 0)
    v->shut_done = 1;
}

static void visitor_pump(vt_visitor *v) {
  while (v->gen_queued < v->gen_total && v->tx_inflight < VT_INFLIGHT &&
         !v->write_err && !v->closing) {
    uint64_t left = v->gen_total - v->gen_queued;
    size_t n = left < VT_CHUNK ? (size_t)left : VT_CHUNK;
    vt_wreq *w = wreq_new(n);
    gen_fill(v->gen_seed, v->gen_queued, w->data, n);
    v->gen_hash = fnv1a(v->gen_hash, w->data, n);
    v->gen_queued += n;
    if (wreq_submit((uv_stream_t *)&v->tcp, w, v, visitor_written) != 0) {
      v->write_err = UV_EPIPE;
      return;
    }
    v->tx_inflight += n;
  }
  if (v->gen_shut && v->gen_total && v->gen_queued == v->gen_total)
    vt_visitor_shutdown(v);
}

void vt_visitor_gen(vt_visitor *v, uint64_t total, uint32_t seed,
                    int shut_after) {
  v->gen_total = total;
  v->gen_queued = 0;
  v->gen_seed = seed;
  v->gen_hash = FNV_OFFSET;
  v->gen_shut = shut_after;
  visitor_pump(v);
}

static void trickle_tick(uv_timer_t *h) {
  vt_visitor *v = h->data;
  if (v->closing || v->rx_eof || v->rx_err || v->write_err ||
      v->trickle_pos >= v->trickle_len) {
    uv_timer_stop(h);
    return;
  }
  vt_visitor_write(v, v->trickle + v->trickle_pos, 1);
  v->trickle_pos++;
}

void vt_visitor_trickle(vt_visitor *v, const char *s, unsigned ms) {
  free(v->trickle);
  v->trickle_len = strlen(s);
  v->trickle = malloc(v->trickle_len + 1);
  assert_non_null(v->trickle);
  memcpy(v->trickle, s, v->trickle_len + 1);
  v->trickle_pos = 0;
  uv_timer_start(&v->timer, trickle_tick, 0, ms);
}

void vt_visitor_sent(vt_visitor *v, const char *method) {
  assert_true(v->nreqs < (int)(sizeof v->is_head / sizeof v->is_head[0]));
  v->is_head[v->nreqs++] = strcmp(method, "HEAD") == 0;
}

void vt_visitor_request(vt_visitor *v, const char *method, const char *host,
                        const char *path, const char *extra,
                        const char *body) {
  char cl[64] = "";
  if (body)
    snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", strlen(body));
  vt_visitor_printf(v, "%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n%s", method,
                    path, host, extra ? extra : "", cl, body ? body : "");
  vt_visitor_sent(v, method);
}

static vt_visitor *visitor_of(http_parser *p) { return p->data; }

static vt_msg *resp_cur(vt_visitor *v) {
  return v->nresp < VT_MAX_RESP ? &v->resps[v->nresp] : NULL;
}

static int vresp_begin(http_parser *p) {
  vt_msg *m = resp_cur(visitor_of(p));
  if (m)
    msg_reset(m);
  return 0;
}

static int vresp_field(http_parser *p, const char *at, size_t n) {
  vt_msg *m = resp_cur(visitor_of(p));
  if (m)
    msg_field(m, at, n);
  return 0;
}

static int vresp_value(http_parser *p, const char *at, size_t n) {
  vt_msg *m = resp_cur(visitor_of(p));
  if (m)
    msg_value(m, at, n);
  return 0;
}

static int vresp_headers(http_parser *p) {
  vt_visitor *v = visitor_of(p);
  vt_msg *m = resp_cur(v);
  if (m) {
    m->status = (int)p->status_code;
    m->upgrade = p->upgrade;
  }
  /* The response to a HEAD request has no body. */
  return v->nresp < v->nreqs && v->is_head[v->nresp] ? 1 : 0;
}

static int vresp_body(http_parser *p, const char *at, size_t n) {
  vt_msg *m = resp_cur(visitor_of(p));
  if (m)
    msg_body(m, at, n);
  return 0;
}

static int vresp_complete(http_parser *p) {
  vt_visitor *v = visitor_of(p);
  vt_msg *m = resp_cur(v);
  if (m) {
    m->keep_alive = http_should_keep_alive(p);
    m->complete = 1;
    m->done_ms = uv_now(v->tcp.loop);
  }
  v->nresp++;
  return 0;
}

static const http_parser_settings vresp_settings = {
    .on_message_begin = vresp_begin,
    .on_header_field = vresp_field,
    .on_header_value = vresp_value,
    .on_headers_complete = vresp_headers,
    .on_body = vresp_body,
    .on_message_complete = vresp_complete,
};

static void visitor_raw(vt_visitor *v, const uint8_t *d, size_t n) {
  for (size_t i = 0; i < n; i++, v->up_rx++) {
    if (v->up_rx < sizeof v->up_head - 1) {
      v->up_head[v->up_rx] = (char)d[i];
      v->up_head[v->up_rx + 1] = '\0';
    }
    if (v->up_rx >= v->up_skip)
      v->up_hash = fnv1a(v->up_hash, d + i, 1);
  }
}

static void visitor_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  vt_visitor *v = h->data;
  (void)hint;
  *b = uv_buf_init((char *)v->rbuf, sizeof v->rbuf);
}

static void visitor_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  vt_visitor *v = s->data;
  if (n == 0)
    return;
  if (n < 0) {
    uv_read_stop(s);
    v->rx_end_ms = vt_now(v->t);
    if (!v->upgraded && !v->parse_err) {
      /* The end of the connection ends a response framed by it. */
      http_parser_execute(&v->p, &vresp_settings, NULL, 0);
    }
    if (n == UV_EOF)
      v->rx_eof = 1;
    else
      v->rx_err = (int)n;
    visitor_close(v);
    return;
  }
  const uint8_t *d = (const uint8_t *)b->base;
  v->rx_total += (uint64_t)n;
  if (v->raw_len < VT_RAW_CAP) {
    size_t take = (size_t)n < VT_RAW_CAP - v->raw_len
                      ? (size_t)n
                      : VT_RAW_CAP - v->raw_len;
    memcpy(v->raw + v->raw_len, d, take);
    v->raw_len += take;
  }
  if (v->upgraded) {
    visitor_raw(v, d, (size_t)n);
    return;
  }
  if (v->parse_err)
    return;
  size_t used = http_parser_execute(&v->p, &vresp_settings, (const char *)d,
                                    (size_t)n);
  enum http_errno e = HTTP_PARSER_ERRNO(&v->p);
  if (e != HPE_OK) {
    v->parse_err = (int)e;
    fprintf(stderr, "# visitor: response parse error %s\n",
            http_errno_name(e));
    return;
  }
  if (v->p.upgrade) {
    v->upgraded = 1;
    visitor_raw(v, d + used, (size_t)n - used);
  }
}

static void visitor_connected(uv_connect_t *req, int status) {
  vt_visitor *v = req->data;
  v->conn_done = 1;
  v->conn_status = status;
  if (status) {
    v->rx_err = status;
    visitor_close(v);
    return;
  }
  uv_read_start((uv_stream_t *)&v->tcp, visitor_alloc, visitor_read);
}

vt_visitor *vt_visitor_new(vt *t, uint16_t port) {
  vt_visitor *v = calloc(1, sizeof *v);
  assert_non_null(v);
  v->t = t;
  v->up_hash = FNV_OFFSET;
  v->gen_hash = FNV_OFFSET;
  uv_tcp_init(&t->loop, &v->tcp);
  uv_timer_init(&t->loop, &v->timer);
  v->tcp.data = v;
  v->timer.data = v;
  v->next = t->visitors;
  t->visitors = v;
  http_parser_init(&v->p, HTTP_RESPONSE);
  v->p.data = v;
  v->opened_ms = vt_now(t);
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", port, &a), 0);
  v->creq.data = v;
  assert_int_equal(uv_tcp_connect(&v->creq, &v->tcp,
                                  (const struct sockaddr *)&a,
                                  visitor_connected),
                   0);
  VT_WAIT(t, v->conn_done);
  assert_int_equal(v->conn_status, 0);
  return v;
}

int vt_visitor_done(const vt_visitor *v) { return v->closed; }

/* --------------------------------------------------------- tunnel side */

static tunnel_config *config_new(vt *t, const char *who) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &t->mem),
                   0);
  assert_int_equal(tunnel_config_set_log(cfg, log_sink, vt_log_level,
                                         (void *)(uintptr_t)who),
                   0);
  assert_int_equal(tunnel_config_set_token(cfg, "vhost-token"), 0);
  return cfg;
}

void vt_init(vt *t) {
  memset(t, 0, sizeof *t);
  assert_int_equal(uv_loop_init(&t->loop), 0);
  it_waiter_init(&t->w, &t->loop);
}

void vt_server_start(vt *t, const vt_srv_opts *o) {
  tunnel_config *cfg = config_new(t, "server");
  uint16_t lo, hi;
  it_pick_range(&lo, &hi);
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1"), 0);
  assert_int_equal(tunnel_config_set_port_range(cfg, lo, hi), 0);
  if (o && o->subdomain_host)
    assert_int_equal(tunnel_config_set_subdomain_host(cfg, o->subdomain_host),
                     0);
  if (o && (o->max_head || o->head_timeout_ms || o->response_timeout_ms))
    assert_int_equal(
        tunnel_config_set_http_limits(
            cfg, o->max_head ? o->max_head : 16384,
            o->head_timeout_ms ? o->head_timeout_ms : 10000,
            o->response_timeout_ms ? o->response_timeout_ms : 60000, 10000),
        0);
  assert_int_equal(tunnel_server_new(&t->srv, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(t->srv, &t->srv_port), 0);
  assert_int_equal(tunnel_server_listen_http(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_http_port(t->srv, &t->http_port), 0);
  assert_int_equal(tunnel_server_listen_https(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_https_port(t->srv, &t->https_port), 0);
  assert_true(t->srv_port && t->http_port && t->https_port);
  assert_true(t->http_port != t->https_port);
}

static void on_client_state(tunnel_client *c, int status, const char *msg,
                            void *ud) {
  vt_client *k = ud;
  (void)c;
  k->state_calls++;
  k->state = status;
  snprintf(k->state_msg, sizeof k->state_msg, "%s", msg ? msg : "(null)");
}

vt_client *vt_client_start(vt *t) {
  assert_true(t->ncls < VT_MAX_CLIENTS);
  vt_client *k = &t->cls[t->ncls];
  memset(k, 0, sizeof *k);
  k->t = t;
  tunnel_config *cfg = config_new(t, "client");
  assert_int_equal(tunnel_client_new(&k->c, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  t->ncls++;
  assert_int_equal(tunnel_client_set_state_cb(k->c, on_client_state, k), 0);
  assert_int_equal(tunnel_client_connect(k->c, "127.0.0.1", t->srv_port), 0);
  VT_WAIT(t, k->state_calls > 0);
  if (k->state != 0)
    fail_msg("login failed: %s (%s)", tunnel_err_name(k->state),
             k->state_msg);
  return k;
}

static void on_proxy_status(tunnel_proxy *p, int status, const char *msg,
                            void *ud) {
  vt_proxy *x = ud;
  (void)p;
  x->status_calls++;
  x->status = status;
  snprintf(x->msg, sizeof x->msg, "%s", msg ? msg : "(null)");
}

vt_proxy *vt_proxy_add(vt *t, vt_client *k, const vt_proxy_opts *o) {
  assert_true(t->npxs < VT_MAX_PROXIES);
  vt_proxy *x = &t->pxs[t->npxs++];
  memset(x, 0, sizeof *x);
  x->owner = k;
  int type = o->type ? o->type : TUNNEL_PROXY_HTTP;
  assert_int_equal(tunnel_proxy_new(&x->p, k->c, o->name, type), 0);
  assert_int_equal(tunnel_proxy_set_local(x->p, "127.0.0.1", o->local_port),
                   0);
  if (o->subdomain)
    assert_int_equal(tunnel_proxy_set_subdomain(x->p, o->subdomain), 0);
  for (int i = 0; i < 4 && o->domains[i]; i++)
    assert_int_equal(tunnel_proxy_add_domain(x->p, o->domains[i]), 0);
  for (int i = 0; i < 4 && o->locations[i]; i++)
    assert_int_equal(tunnel_proxy_add_location(x->p, o->locations[i]), 0);
  if (o->host_rewrite)
    assert_int_equal(tunnel_proxy_set_host_rewrite(x->p, o->host_rewrite), 0);
  if (o->user)
    assert_int_equal(tunnel_proxy_set_basic_auth(x->p, o->user, o->pass), 0);
  if (o->hdr_name)
    assert_int_equal(
        tunnel_proxy_set_header(x->p, o->hdr_name, o->hdr_value), 0);
  assert_int_equal(tunnel_proxy_set_status_cb(x->p, on_proxy_status, x), 0);
  assert_int_equal(tunnel_proxy_start(x->p), 0);
  return x;
}

const char *vt_wait_registered(vt *t, vt_proxy *x) {
  VT_WAIT(t, x->status_calls > 0);
  if (x->status != 0)
    fail_msg("proxy %s refused: %s (%s)", tunnel_proxy_name(x->p),
             tunnel_err_name(x->status), x->msg);
  assert_int_equal(x->status_calls, 1);
  return x->msg;
}

const char *vt_wait_refused(vt *t, vt_proxy *x) {
  VT_WAIT(t, x->status_calls > 0);
  if (x->status != TUNNEL_EREFUSED)
    fail_msg("proxy %s: expected TUNNEL_EREFUSED, got %s (%s)",
             tunnel_proxy_name(x->p), tunnel_err_name(x->status), x->msg);
  assert_true(x->msg[0] != '\0');
  fprintf(stderr, "# proxy %s refused as expected: %s\n",
          tunnel_proxy_name(x->p), x->msg);
  return x->msg;
}

const char *vt_host(vt *t, const char *sub, char *buf, size_t cap) {
  snprintf(buf, cap, "%s.localhost:%u", sub, t->http_port);
  return buf;
}

vt_service *vt_simple(vt *t, const vt_srv_opts *o, const char *sub,
                      const char *svc_name, vt_client **k) {
  vt_init(t);
  vt_server_start(t, o);
  *k = vt_client_start(t);
  vt_service *s = vt_service_new(t, svc_name);
  vt_service_listen(s);
  vt_proxy_opts po = {.name = sub, .local_port = s->port, .subdomain = sub};
  vt_proxy *x = vt_proxy_add(t, *k, &po);
  char want[128];
  vt_host(t, sub, want, sizeof want);
  assert_string_equal(vt_wait_registered(t, x), want);
  return s;
}

vt_visitor *vt_fetch(vt *t, const char *method, const char *host,
                     const char *path, const char *extra, const char *body) {
  vt_visitor *v = vt_visitor_new(t, t->http_port);
  char hdrs[2048];
  snprintf(hdrs, sizeof hdrs, "%sConnection: close\r\n", extra ? extra : "");
  vt_visitor_request(v, method, host, path, hdrs, body);
  VT_WAIT(t, vt_visitor_done(v));
  return v;
}

static void on_client_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((vt_client *)ud)->closed = 1;
}

static void on_server_closed(tunnel_server *s, void *ud) {
  (void)s;
  ((vt *)ud)->srv_closed = 1;
}

void vt_client_close(vt *t, vt_client *k) {
  if (k->close_called)
    return;
  k->close_called = 1;
  assert_int_equal(tunnel_client_close(k->c, on_client_closed, k), 0);
  VT_WAIT(t, k->closed);
}

static int all_tunnel_closed(vt *t) {
  for (int i = 0; i < t->ncls; i++)
    if (!t->cls[i].closed)
      return 0;
  return !t->srv || t->srv_closed;
}

static void service_closed(uv_handle_t *h) {
  ((vt_service *)h->data)->closed = 1;
}

void vt_teardown(vt *t) {
  for (int i = 0; i < t->ncls; i++) {
    vt_client *k = &t->cls[i];
    if (!k->close_called) {
      k->close_called = 1;
      assert_int_equal(tunnel_client_close(k->c, on_client_closed, k), 0);
    }
  }
  if (t->srv)
    assert_int_equal(tunnel_server_close(t->srv, on_server_closed, t), 0);
  VT_WAIT(t, all_tunnel_closed(t));
  if (t->mem.cur != 0)
    fail_msg("library leaked %zu bytes through the allocator", t->mem.cur);
  for (vt_visitor *v = t->visitors; v; v = v->next)
    visitor_close(v);
  for (vt_service *s = t->services; s; s = s->next) {
    for (vt_sconn *c = s->conns; c; c = c->next)
      sconn_close(c);
    uv_close((uv_handle_t *)&s->tcp, service_closed);
  }
  assert_int_equal(it_waiter_finish(&t->w, IT_WAIT_MS), 0);
  while (t->visitors) {
    vt_visitor *v = t->visitors;
    t->visitors = v->next;
    free(v->trickle);
    free(v);
  }
  while (t->services) {
    vt_service *s = t->services;
    t->services = s->next;
    while (s->conns) {
      vt_sconn *c = s->conns;
      s->conns = c->next;
      free(c->in);
      free(c->raw);
      free(c->cur);
      free(c);
    }
    free(s->reqs);
    free(s);
  }
}

int vt_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n) {
  /* Endpoints write to sockets the tunnel may have closed (some tests
   * provoke it); such writes must fail with EPIPE, not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  const char *lv = getenv("IT_LOG");
  if (lv && *lv)
    vt_log_level = atoi(lv);
  if (argc > 1) {
    size_t i;
    for (i = 0; i < n && strcmp(tests[i].name, argv[1]) != 0; i++)
      ;
    if (i == n) {
      fprintf(stderr, "no test named %s\n", argv[1]);
      return 2;
    }
    cmocka_set_test_filter(argv[1]);
  }
  return _cmocka_run_group_tests("vhost", tests, n, NULL, NULL) ? 1 : 0;
}
