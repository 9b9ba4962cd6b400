/* Visitors on the public HTTP port. Each request of a kept-alive
 * connection is routed on its own by its Host: its head is rewritten
 * (X-Forwarded-*, the proxy's Host rewrite and headers) and sent through a
 * work stream of the proxy's client, its body follows byte for byte, and
 * the response comes back byte for byte. Responses are read only as far as
 * needed to know where each ends (and to see a 101 Switching Protocols,
 * after which the connection is a plain byte pipe). Requests are served one
 * at a time: the next head is read once the previous response has ended,
 * so responses keep their order even when consecutive requests go to
 * different clients. */
#include <http_parser.h>
#include <stdio.h>
#include <string.h>

#include "../httpreq.h"
#include "dial.h"
#include "srv.h"
#include "stream.h"
#include "uverr.h"

#define MEM tunnel__srv_mem
#define CONTAINER TUNNEL__CONTAINER

/* Queue marks each way: reading stops above HIGH, resumes below LOW. */
#define HIGH (256u * 1024u)
#define LOW (64u * 1024u)
#define READ_CHUNK (64u * 1024u)

/* What an HTTP proxy adds to each request. */
typedef struct http_opts {
  char *host_rewrite;
  char *user, *pwd;
  tunnel__httpreq_kv *set;
  size_t n_set;
} http_opts;

enum {
  S_HEAD,      /* reading a request head */
  S_WAIT_WORK, /* routed; waiting for a work stream */
  S_FORWARD,   /* request body out, response back */
  S_HANDOVER,  /* upgraded: waiting for our writes before splicing */
  S_FINISH     /* a last response is being written; then close */
};

typedef struct http_conn {
  srv_vconn vc;
  srv_waiter w;
  tunnel_server *srv;
  uv_tcp_t *tcp;
  uv_timer_t timer; /* head, work stream or first response byte in time */
  uv_shutdown_t shut;
  tunnel__httpreq *req;
  char peer[TUNNEL__ADDR_MAX];
  uint16_t peer_port;
  int state;
  int closing;
  int handles; /* tcp and timer still to close */

  /* Visitor input not yet consumed by the request parser. */
  uint8_t *in;
  size_t in_len, in_cap;
  size_t partial; /* bytes of a head being read (buffered by the parser) */
  int reading;  /* uv_read_start in effect on the visitor */
  int vis_eof;  /* the visitor finished sending */
  size_t tcp_pending; /* bytes queued towards the visitor */
  size_t sent;        /* response bytes sent for the current request */

  /* The current upstream. */
  srv_proxy *p;      /* its proxy; NULL once the proxy went away */
  srv_proxy *want;   /* proxy whose work stream is awaited */
  tunnel_stream *st;
  tunnel__traffic *tr; /* held with `st`: the proxy's counters */
  int st_reading;
  int st_eof;
  http_parser resp;
  int resp_started; /* a byte of the response arrived */
  int resp_done;    /* the response ended */
  int req_done;     /* the request's body ended */
  int req_head;     /* the request is HEAD: the response has no body */
  int req_upgrade;  /* the request asks for an upgrade */
  int req_keep;     /* the request allows another one */
  int upgraded;     /* a 101 answered an upgrade request */
  const uint8_t *resp_rest; /* bytes after the 101 head, in the chunk */
  size_t resp_rest_len;
  uint8_t *handover; /* response bytes after the 101, for the splice */
  size_t handover_len;
} http_conn;

typedef struct vis_write {
  uv_write_t req;
  http_conn *c;
  size_t len;
  uint8_t data[];
} vis_write;

static void process(http_conn *c);
static void conn_close(http_conn *c);
static void st_read_cb(tunnel_stream *st, int status, const uint8_t *data,
                       size_t len, void *ud);
static void maybe_handover(http_conn *c);

/* ----------------------------------------------------------- teardown */

static void handle_closed(uv_handle_t *h) {
  http_conn *c = h->data;
  tunnel_server *srv = c->srv;
  if (h == (uv_handle_t *)c->tcp)
    tunnel__free(MEM(srv), c->tcp);
  srv->handles--;
  if (--c->handles == 0) {
    tunnel__free(MEM(srv), c);
    tunnel__srv_maybe_finish_close(srv);
    return;
  }
  tunnel__srv_maybe_finish_close(srv);
}

static void drop_upstream(http_conn *c) {
  if (c->want) {
    tunnel__srv_cancel_work(c->want->ctl, &c->w);
    c->want = NULL;
  }
  if (c->st) {
    /* Callbacks still queued for the stream find no connection. */
    tunnel_stream_set_user_data(c->st, NULL);
    tunnel_stream_close(c->st, NULL, NULL);
    c->st = NULL;
  }
  if (c->tr) {
    tunnel__traffic_release(MEM(c->srv), c->tr);
    c->tr = NULL;
  }
  c->p = NULL;
}

/* Closes everything; the record is freed once libuv is done with it. */
static void conn_close(http_conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  tunnel__srv_vconn_remove(&c->vc);
  drop_upstream(c);
  tunnel__httpreq_free(c->req);
  c->req = NULL;
  tunnel__free(MEM(c->srv), c->in);
  c->in = NULL;
  tunnel__free(MEM(c->srv), c->handover);
  c->handover = NULL;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, handle_closed);
  if (c->tcp) {
    uv_read_stop((uv_stream_t *)c->tcp);
    uv_close((uv_handle_t *)c->tcp, handle_closed);
  } else {
    c->handles--; /* handed to a splice */
  }
}

static void vc_close(srv_vconn *vc) { conn_close(CONTAINER(vc, http_conn, vc)); }

/* Between requests nothing is lost by closing (a kept-alive visitor
 * retries); a request under way is served, and response_done() then ends
 * the connection. */
static void vc_drain(srv_vconn *vc) {
  http_conn *c = CONTAINER(vc, http_conn, vc);
  if (c->state == S_HEAD)
    conn_close(c);
}

/* ------------------------------------------------------ visitor side */

static void read_sync(http_conn *c);

static void shut_cb(uv_shutdown_t *req, int status) {
  http_conn *c = req->data;
  (void)status;
  conn_close(c);
}

/* After the last response: FIN once it is out, then close. */
static void finish_if_done(http_conn *c) {
  if (c->state != S_FINISH || c->tcp_pending || c->closing)
    return;
  c->shut.data = c;
  if (uv_shutdown(&c->shut, (uv_stream_t *)c->tcp, shut_cb) != 0)
    conn_close(c);
  c->state = -1; /* shutting down */
}

static void vis_write_cb(uv_write_t *req, int status) {
  vis_write *w = (vis_write *)req;
  http_conn *c = w->c;
  c->tcp_pending -= w->len;
  tunnel__free(MEM(c->srv), w);
  if (c->closing)
    return;
  if (status) {
    conn_close(c);
    return;
  }
  if (c->st && !c->st_reading && !c->st_eof && c->state == S_FORWARD &&
      c->tcp_pending <= LOW) {
    c->st_reading = 1;
    tunnel_stream_read_start(c->st, st_read_cb, c);
  }
  finish_if_done(c);
  maybe_handover(c);
}

/* Writes towards the visitor: at once when the socket takes it, else a
 * copy is queued. */
static int vis_send(http_conn *c, const uint8_t *data, size_t len) {
  if (!len)
    return 0;
  if (c->tcp_pending == 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)c->tcp, &b, 1);
    if (n > 0) {
      data += n;
      len -= (size_t)n;
    } else if (n != UV_EAGAIN) {
      return tunnel__uv_err(n);
    }
  }
  if (!len)
    return 0;
  vis_write *w = tunnel__malloc(MEM(c->srv), sizeof *w + len);
  if (!w)
    return TUNNEL_ENOMEM;
  w->c = c;
  w->len = len;
  memcpy(w->data, data, len);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)c->tcp, &b, 1, vis_write_cb);
  if (rc) {
    tunnel__free(MEM(c->srv), w);
    return tunnel__uv_err(rc);
  }
  c->tcp_pending += len;
  return 0;
}

/* Answers by itself with `status` (a 401 challenges for `realm`) and
 * closes once it is out. */
static void answer_realm(http_conn *c, int status, const char *realm,
                         const char *why) {
  tunnel_server *srv = c->srv;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: HTTP visitor %s:%u: %d %s", c->peer, c->peer_port,
              status, why);
  drop_upstream(c);
  uv_timer_stop(&c->timer);
  tunnel__bufq q;
  tunnel__bufq_init(&q, MEM(srv), 1024);
  int rc = tunnel__http_error_page(status, realm, &q);
  while (rc == 0 && q.size) {
    tunnel__iov iov;
    tunnel__bufq_iov(&q, &iov, 1);
    rc = vis_send(c, iov.base, iov.len);
    tunnel__bufq_consume(&q, iov.len);
  }
  tunnel__bufq_free(&q);
  if (rc) {
    conn_close(c);
    return;
  }
  c->state = S_FINISH;
  read_sync(c);
  finish_if_done(c);
}

static void answer(http_conn *c, int status, const char *why) {
  answer_realm(c, status, NULL, why);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  http_conn *c = h->data;
  (void)hint;
  if (c->in_cap - c->in_len < READ_CHUNK / 4) {
    size_t cap = c->in_len + READ_CHUNK;
    uint8_t *p = tunnel__realloc(MEM(c->srv), c->in, cap);
    if (p) {
      c->in = p;
      c->in_cap = cap;
    }
  }
  *buf = uv_buf_init((char *)c->in + c->in_len,
                     (unsigned)(c->in ? c->in_cap - c->in_len : 0));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  http_conn *c = s->data;
  (void)b;
  if (nread == 0 || c->closing)
    return;
  if (nread < 0) {
    if (nread != UV_EOF) {
      conn_close(c);
      return;
    }
    c->vis_eof = 1;
    read_sync(c);
    /* A visitor that is done and owes nothing is simply gone. */
    if (c->state == S_HEAD && c->in_len == 0) {
      conn_close(c);
      return;
    }
    process(c);
    return;
  }
  c->in_len += (size_t)nread;
  process(c);
}

/* Reads from the visitor while something can use the bytes: a head being
 * read, or a body being forwarded with room in the stream's queue. */
static void read_sync(http_conn *c) {
  if (c->closing || !c->tcp)
    return;
  int want = !c->vis_eof && c->in_len < READ_CHUNK &&
             (c->state == S_HEAD ||
              (c->state == S_FORWARD && c->st && !c->req_done &&
               tunnel_stream_write_queue_size(c->st) <= HIGH) ||
              (c->state == S_FORWARD && c->req_upgrade && c->st &&
               tunnel_stream_write_queue_size(c->st) <= HIGH));
  if (want == c->reading)
    return;
  c->reading = want;
  if (want)
    uv_read_start((uv_stream_t *)c->tcp, alloc_cb, read_cb);
  else
    uv_read_stop((uv_stream_t *)c->tcp);
}

/* A body write left the stream's queue: there may be room for more. */
static void st_write_cb(tunnel_stream *st, int status, void *ud) {
  (void)ud;
  http_conn *c = tunnel_stream_get_user_data(st);
  if (!c || c->closing || status)
    return;
  if (c->state == S_FORWARD && !c->req_done &&
      tunnel_stream_write_queue_size(st) <= LOW)
    process(c);
}

static void consume(http_conn *c, size_t n) {
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
}

/* ----------------------------------------------------- response side */

static int on_resp_headers(http_parser *hp) {
  http_conn *c = hp->data;
  if (hp->status_code == 101 && c->req_upgrade) {
    c->upgraded = 1;
    return 2; /* no body; what follows is another protocol */
  }
  /* A response to HEAD (and 204/304, which http-parser knows) has no
   * body whatever its headers say. */
  return c->req_head ? 1 : 0;
}

static int on_resp_complete(http_parser *hp) {
  http_conn *c = hp->data;
  /* Interim responses (100 Continue) precede the real one. */
  if (hp->status_code / 100 == 1 && !c->upgraded)
    return 0;
  c->resp_done = 1;
  http_parser_pause(hp, 1);
  return 0;
}

static const http_parser_settings resp_settings = {
    .on_headers_complete = on_resp_headers,
    .on_message_complete = on_resp_complete,
};

static void next_request(http_conn *c);

/* The response ended (and, with it, maybe the exchange). */
static void response_done(http_conn *c) {
  if (!c->req_done)
    return; /* the request body still flows: its END comes later */
  int keep = c->req_keep && http_should_keep_alive(&c->resp) && !c->st_eof &&
             !c->vis_eof && !c->srv->draining;
  if (!keep) {
    drop_upstream(c);
    c->state = S_FINISH;
    read_sync(c);
    finish_if_done(c);
    return;
  }
  next_request(c);
}

static void st_failed(http_conn *c, int status) {
  if (!c->resp_started) {
    /* The client could not reach its local service, or the tunnel went
     * away, before any answer. */
    answer(c, 502,
           status == TUNNEL_EEOF ? "local service closed the connection"
                                 : "local service unreachable");
    return;
  }
  if (status == TUNNEL_EEOF && !c->resp_done) {
    /* A response framed by the end of the connection ends here. */
    http_parser_execute(&c->resp, &resp_settings, NULL, 0);
    if (c->resp_done || !http_should_keep_alive(&c->resp)) {
      c->resp_done = 1;
      c->req_keep = 0;
      response_done(c);
      if (!c->req_done) {
        c->state = S_FINISH;
        drop_upstream(c);
        read_sync(c);
        finish_if_done(c);
      }
      return;
    }
  }
  if (status == TUNNEL_EEOF && c->resp_done)
    return; /* the next request will need a new stream */
  /* Cut mid-response: the visitor must not take it for complete. */
  conn_close(c);
}

static void st_read_cb(tunnel_stream *st, int status, const uint8_t *data,
                       size_t len, void *ud) {
  http_conn *c = ud;
  if (c->closing)
    return;
  if (status) {
    c->st_eof = 1;
    c->st_reading = 0;
    tunnel_stream_read_stop(st);
    if (c->upgraded) {
      maybe_handover(c);
      return;
    }
    st_failed(c, status);
    return;
  }
  if (!c->resp_started) {
    c->resp_started = 1;
    uv_timer_stop(&c->timer);
  }
  if (c->tr)
    tunnel__traffic_out(c->tr, len);
  size_t used = len;
  if (!c->resp_done && !c->upgraded) {
    used = http_parser_execute(&c->resp, &resp_settings, (const char *)data,
                               len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->resp);
    if ((e != HPE_OK && e != HPE_PAUSED && !c->upgraded) ||
        (c->resp.upgrade && !c->upgraded)) {
      tunnel__log(&c->srv->cfg.log, TUNNEL_LOG_INFO,
                  "server: HTTP response from proxy %s malformed: %s",
                  c->p ? c->p->name : "?", http_errno_name(e));
      if (!c->sent)
        answer(c, 502, "malformed response");
      else
        conn_close(c);
      return;
    }
  }
  if (c->upgraded) {
    /* The 101 head goes out now; what followed it waits for the splice. */
    size_t head = used < len ? used : len;
    if (vis_send(c, data, head) != 0) {
      conn_close(c);
      return;
    }
    c->sent += head;
    if (head < len) {
      uint8_t *h = tunnel__realloc(MEM(c->srv), c->handover,
                                   c->handover_len + len - head);
      if (!h) {
        conn_close(c);
        return;
      }
      memcpy(h + c->handover_len, data + head, len - head);
      c->handover = h;
      c->handover_len += len - head;
    }
    c->state = S_HANDOVER;
    c->st_reading = 0;
    tunnel_stream_read_stop(st);
    maybe_handover(c);
    return;
  }
  if (c->resp_done && used < len) {
    /* Bytes beyond the end of the response: the local service is not
     * speaking HTTP/1.1 as the request asked. */
    if (vis_send(c, data, used) == 0)
      c->sent += used;
    c->req_keep = 0;
    drop_upstream(c);
    c->state = S_FINISH;
    read_sync(c);
    finish_if_done(c);
    return;
  }
  if (vis_send(c, data, len) != 0) {
    conn_close(c);
    return;
  }
  c->sent += len;
  if (c->resp_done) {
    c->st_reading = 0;
    tunnel_stream_read_stop(st);
    response_done(c);
    return;
  }
  if (c->tcp_pending > HIGH) {
    c->st_reading = 0;
    tunnel_stream_read_stop(st);
  }
}

/* --------------------------------------------------------- upgrades */

/* After a 101: once our own writes to the visitor are out, the visitor
 * and the stream are joined as a plain byte pipe. */
static void maybe_handover(http_conn *c) {
  if (c->state != S_HANDOVER || c->tcp_pending || c->closing)
    return;
  tunnel_server *srv = c->srv;
  tunnel_stream *st = c->st;
  uv_tcp_t *tcp = c->tcp;
  /* What the visitor sent after its request head belongs to the new
   * protocol. */
  if (c->in_len && tunnel_stream_write(st, c->in, c->in_len, NULL, NULL)) {
    conn_close(c);
    return;
  }
  if (c->tr)
    tunnel__traffic_in(c->tr, c->in_len);
  /* The join counts from now on; this connection's hold ends below. */
  tunnel__traffic *tr = c->tr;
  c->tr = NULL;
  c->in_len = 0;
  uv_read_stop((uv_stream_t *)tcp);
  c->reading = 0;
  tunnel_stream_set_user_data(st, NULL);
  srv_ctl *ctl = c->p ? c->p->ctl : NULL;
  c->st = NULL;
  c->tcp = NULL;
  uint8_t *prefix = c->handover;
  size_t prefix_len = c->handover_len;
  c->handover = NULL;
  c->handover_len = 0;
  conn_close(c); /* the record only: tcp and stream are handed on */
  tunnel__srv_join(srv, ctl, tcp, st, prefix, prefix_len, tr, NULL);
  tunnel__free(MEM(srv), prefix);
  if (tr)
    tunnel__traffic_release(MEM(srv), tr);
}

/* ---------------------------------------------------------- requests */

static void on_timeout(uv_timer_t *t) {
  http_conn *c = CONTAINER(t, http_conn, timer);
  switch (c->state) {
  case S_HEAD:
    /* A slow sender cannot hold its slot; an idle kept-alive connection
     * simply ends. */
    if (c->in_len || c->partial)
      answer(c, 408, "request head not received in time");
    else
      conn_close(c);
    break;
  case S_WAIT_WORK:
    answer(c, 502, "no work connection from the client in time");
    break;
  case S_FORWARD:
    if (!c->resp_started) {
      answer(c, 504, "local service did not answer in time");
      break;
    }
    /* fall through */
  default:
    conn_close(c);
    break;
  }
}

/* Sends the rewritten head on the work stream and starts the exchange. */
static void forward_head(http_conn *c) {
  tunnel_server *srv = c->srv;
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(c->req);
  const http_opts *o = c->p->kind_data;
  tunnel__httpreq_rewrite_opts ro = {0};
  ro.client_addr = c->peer;
  ro.proto = c->vc.vh->https ? "https" : "http";
  ro.forwarded_host = 1;
  ro.host = o->host_rewrite;
  ro.set = o->set;
  ro.n_set = o->n_set;
  tunnel__bufq q;
  tunnel__bufq_init(&q, MEM(srv), 4096);
  int rc = tunnel__httpreq_rewrite(c->req, &ro, &q);
  while (rc == 0 && q.size) {
    tunnel__iov iov;
    tunnel__bufq_iov(&q, &iov, 1);
    rc = tunnel_stream_write(c->st, iov.base, iov.len, NULL, NULL);
    if (rc == 0 && c->tr)
      tunnel__traffic_in(c->tr, iov.len);
    tunnel__bufq_consume(&q, iov.len);
  }
  tunnel__bufq_free(&q);
  if (rc) {
    answer(c, 502, "cannot forward the request");
    return;
  }
  c->state = S_FORWARD;
  c->req_head = strcmp(h->method, "HEAD") == 0;
  c->req_upgrade = h->upgrade;
  c->req_keep = h->keep_alive && !h->upgrade;
  c->req_done = 0;
  c->resp_started = 0;
  c->resp_done = 0;
  c->upgraded = 0;
  c->sent = 0;
  http_parser_init(&c->resp, HTTP_RESPONSE);
  c->resp.data = c;
  /* The local service has until the response timeout to start answering
   * once it has the whole request (an upgrade has no body to wait for). */
  if (c->req_upgrade)
    uv_timer_start(&c->timer, on_timeout, srv->cfg.http_response_timeout_ms,
                   0);
  if (!c->st_reading && !c->st_eof) {
    c->st_reading = 1;
    tunnel_stream_read_start(c->st, st_read_cb, c);
  }
  process(c);
}

/* The stream failed while its reading was paused. */
static void st_watch(tunnel_stream *st, int err, void *ud) {
  (void)ud;
  http_conn *c = tunnel_stream_get_user_data(st);
  if (!c || c->closing || c->st != st || c->st_eof || c->st_reading)
    return;
  st_read_cb(st, err, NULL, 0, c);
}

static void got_work(srv_waiter *w, tunnel_stream *st) {
  http_conn *c = CONTAINER(w, http_conn, w);
  srv_proxy *p = c->want;
  c->want = NULL;
  uv_timer_stop(&c->timer);
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(c->req);
  if (tunnel__srv_start_work(p, st, c->peer, c->peer_port, h->host,
                             c->vc.vh->port) != 0) {
    tunnel_stream_close(st, NULL, NULL);
    answer(c, 502, "cannot start the work connection");
    return;
  }
  c->p = p;
  c->st = st;
  c->tr = p->traffic;
  tunnel__traffic_hold(c->tr);
  c->st_reading = 0;
  c->st_eof = 0;
  tunnel_stream_set_user_data(st, c);
  tunnel__stream_watch(st, st_watch, NULL);
  forward_head(c);
}

static void work_dropped(srv_waiter *w) {
  http_conn *c = CONTAINER(w, http_conn, w);
  c->want = NULL;
  answer(c, 502, "the tunnel went away");
}

static void vc_proxy_gone(srv_vconn *vc, srv_proxy *p) {
  http_conn *c = CONTAINER(vc, http_conn, vc);
  if (c->want == p) {
    tunnel__srv_cancel_work(p->ctl, &c->w);
    c->want = NULL;
    answer(c, 502, "the tunnel went away");
    return;
  }
  if (c->p == p)
    c->p = NULL; /* the stream runs its course; the next request re-routes */
}

/* A complete head: route it, check it, and find it a work stream. */
static void on_head(http_conn *c) {
  tunnel_server *srv = c->srv;
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(c->req);
  uv_timer_stop(&c->timer);
  srv_proxy *p = tunnel__srv_vhost_route(c->vc.vh, h->host, h->host_len,
                                         h->path, h->path_len);
  if (!p) {
    TUNNEL__SRV_COUNT(srv, VISITORS_REFUSED_NO_TUNNEL);
    answer(c, 404, "no tunnel for this name");
    return;
  }
  const http_opts *o = p->kind_data;
  if (o->user) {
    int a = tunnel__httpreq_basic_auth(h, o->user, o->pwd ? o->pwd : "");
    if (a != TUNNEL__HTTP_AUTH_MATCH) {
      answer_realm(c, 401, NULL,
                   a == TUNNEL__HTTP_AUTH_NONE ? "credentials required"
                                               : "wrong credentials");
      return;
    }
  }
  /* The same tunnel on a kept-alive exchange keeps its stream; another
   * tunnel gets a stream of its own. */
  if (c->st && c->p == p && !c->st_eof) {
    forward_head(c);
    return;
  }
  drop_upstream(c);
  c->want = p;
  c->state = S_WAIT_WORK;
  c->w.proxy = p;
  c->w.got = got_work;
  c->w.drop = work_dropped;
  uv_timer_start(&c->timer, on_timeout, srv->cfg.work_conn_timeout_ms, 0);
  if (tunnel__srv_want_work(p->ctl, &c->w) != 0) {
    c->want = NULL;
    answer(c, 503, "too many visitors waiting for this tunnel");
  }
}

/* Ready for the next request on a kept-alive connection. */
static void next_request(http_conn *c) {
  c->state = S_HEAD;
  uv_timer_start(&c->timer, on_timeout, c->srv->cfg.http_head_timeout_ms, 0);
  process(c);
}

/* Moves buffered visitor bytes through the request parser as far as the
 * state allows. */
static void process(http_conn *c) {
  while (!c->closing) {
    if (c->state == S_FORWARD && c->req_upgrade) {
      /* Raw bytes for the new protocol wait for the 101. */
      break;
    }
    if (c->state != S_HEAD && !(c->state == S_FORWARD && !c->req_done))
      break;
    if (c->state == S_FORWARD &&
        tunnel_stream_write_queue_size(c->st) > HIGH)
      break;
    size_t used = 0;
    int ev = tunnel__httpreq_feed(c->req, c->in, c->in_len, &used);
    if (ev < 0) {
      answer(c, 500, "out of memory");
      return;
    }
    switch (ev) {
    case TUNNEL__HTTPREQ_MORE:
      if (c->state == S_HEAD)
        c->partial += used;
      consume(c, used);
      if (c->vis_eof) {
        if (c->state == S_HEAD && !tunnel__httpreq_get_head(c->req) &&
            used == 0)
          conn_close(c);
        else if (c->state == S_HEAD)
          answer(c, 400, "connection ended inside a request head");
        else
          conn_close(c); /* body cut short */
        return;
      }
      read_sync(c);
      return;
    case TUNNEL__HTTPREQ_HEAD:
      c->partial = 0;
      consume(c, used);
      read_sync(c);
      on_head(c);
      break;
    case TUNNEL__HTTPREQ_BODY:
      if (tunnel_stream_write(c->st, c->in, used, st_write_cb, NULL) != 0) {
        conn_close(c);
        return;
      }
      if (c->tr)
        tunnel__traffic_in(c->tr, used);
      consume(c, used);
      break;
    case TUNNEL__HTTPREQ_END:
      c->req_done = 1;
      if (!c->resp_started && !c->resp_done)
        uv_timer_start(&c->timer, on_timeout,
                       c->srv->cfg.http_response_timeout_ms, 0);
      if (c->resp_done) {
        response_done(c);
        return;
      }
      read_sync(c);
      return;
    case TUNNEL__HTTPREQ_UPGRADE:
      /* Reported right after the head; the head's handling decided. */
      read_sync(c);
      return;
    default: {
      int status = tunnel__httpreq_status(c->req);
      if (c->state == S_HEAD)
        answer(c, status ? status : 400, "malformed request");
      else
        conn_close(c);
      return;
    }
    }
  }
  read_sync(c);
}

/* ------------------------------------------------------------ accept */

void tunnel__srv_http_accept(srv_vhost *vh, uv_tcp_t *tcp) {
  tunnel_server *srv = vh->srv;
  http_conn *c = tunnel__calloc(MEM(srv), 1, sizeof *c);
  if (!c || tunnel__httpreq_new(&c->req, MEM(srv), srv->cfg.http_max_head,
                                0) != 0) {
    tunnel__free(MEM(srv), c);
    uv_close((uv_handle_t *)tcp, tunnel__srv_free_tcp_closed);
    return;
  }
  c->srv = srv;
  c->tcp = tcp;
  tcp->data = c;
  c->vc.close = vc_close;
  c->vc.proxy_gone = vc_proxy_gone;
  c->vc.drain = vc_drain;
  struct sockaddr_storage peer;
  int len = sizeof peer;
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&peer, &len) == 0)
    tunnel__format_addr((struct sockaddr *)&peer, c->peer, sizeof c->peer,
                        &c->peer_port);
  uv_timer_init(srv->loop, &c->timer);
  c->timer.data = c;
  srv->handles++;
  c->handles = 2;
  tunnel__srv_vconn_add(vh, &c->vc);
  uv_tcp_nodelay(tcp, 1);
  c->state = S_HEAD;
  uv_timer_start(&c->timer, on_timeout, srv->cfg.http_head_timeout_ms, 0);
  read_sync(c);
}

/* ------------------------------------------------------------- kind */

static void opts_free(const tunnel__mem *mem, http_opts *o) {
  if (!o)
    return;
  tunnel__free(mem, o->host_rewrite);
  tunnel__free(mem, o->user);
  tunnel__free(mem, o->pwd);
  for (size_t i = 0; i < o->n_set; i++) {
    tunnel__free(mem, (char *)o->set[i].name);
    tunnel__free(mem, (char *)o->set[i].value);
  }
  tunnel__free(mem, o->set);
  tunnel__free(mem, o);
}

static char *dup_opt(const tunnel__mem *mem, const char *s, int *rc) {
  if (!s || !*s)
    return NULL;
  char *d = tunnel__strdup(mem, s);
  if (!d)
    *rc = TUNNEL_ENOMEM;
  return d;
}

static int http_open(srv_proxy *p, const tunnel__msg *m, char *remote_addr,
                     size_t ralen, char *err, size_t errlen) {
  const tunnel__mem *mem = MEM(p->srv);
  http_opts *o = tunnel__calloc(mem, 1, sizeof *o);
  if (!o)
    return TUNNEL_ENOMEM;
  int rc = 0;
  o->host_rewrite = dup_opt(mem, m->host_header_rewrite, &rc);
  o->user = dup_opt(mem, m->http_user, &rc);
  o->pwd = dup_opt(mem, m->http_pwd, &rc);
  if (rc == 0 && m->headers.n) {
    o->set = tunnel__calloc(mem, m->headers.n, sizeof *o->set);
    if (!o->set)
      rc = TUNNEL_ENOMEM;
    for (size_t i = 0; rc == 0 && i < m->headers.n; i++) {
      char *k = tunnel__strdup(mem, m->headers.v[i].key);
      char *v = tunnel__strdup(mem, m->headers.v[i].value);
      o->set[o->n_set].name = k;
      o->set[o->n_set].value = v;
      o->n_set++;
      if (!k || !v)
        rc = TUNNEL_ENOMEM;
    }
  }
  if (rc == 0)
    rc = tunnel__srv_vhost_register(&p->srv->http, p, m, remote_addr, ralen,
                                    err, errlen);
  if (rc) {
    opts_free(mem, o);
    return rc;
  }
  p->kind_data = o;
  return 0;
}

static void http_close(srv_proxy *p) {
  tunnel__srv_vhost_unregister(&p->srv->http, p);
  opts_free(MEM(p->srv), p->kind_data);
  tunnel__srv_proxy_free(p);
}

const srv_kind tunnel__srv_kind_http = {"http", http_open, http_close};
