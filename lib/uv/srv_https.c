/* Visitors on the public HTTPS port: the ClientHello's server name picks
 * the proxy, then the TLS bytes, the hello included, go to the client's
 * local service untouched (it holds the certificate). */
#include <string.h>

#include "../sni.h"
#include "dial.h"
#include "srv.h"
#include "stream.h"
#include "uverr.h"

#define MEM tunnel__srv_mem
#define CONTAINER TUNNEL__CONTAINER

typedef struct https_conn {
  srv_vconn vc;
  srv_waiter w;
  tunnel_server *srv;
  uv_tcp_t *tcp;
  uv_timer_t timer; /* the hello, then the work stream, in time */
  tunnel__sni sni;
  uint8_t *buf; /* everything read so far, forwarded once routed */
  size_t len, cap;
  srv_proxy *p; /* waiting for its work stream */
  char peer[TUNNEL__ADDR_MAX];
  uint16_t peer_port;
} https_conn;

static void timer_closed(uv_handle_t *h) {
  https_conn *c = CONTAINER(h, https_conn, timer);
  tunnel_server *srv = c->srv;
  tunnel__free(MEM(srv), c);
  srv->handles--;
  tunnel__srv_maybe_finish_close(srv);
}

/* Forgets the connection's record; `keep_tcp` when the TCP handle was
 * handed on. */
static void conn_end(https_conn *c, int keep_tcp) {
  tunnel_server *srv = c->srv;
  tunnel__srv_vconn_remove(&c->vc);
  if (c->p) {
    tunnel__srv_cancel_work(c->p->ctl, &c->w);
    c->p = NULL;
  }
  if (!keep_tcp) {
    uv_read_stop((uv_stream_t *)c->tcp);
    c->tcp->data = srv;
    uv_close((uv_handle_t *)c->tcp, tunnel__srv_free_tcp_closed);
  }
  tunnel__sni_free(&c->sni);
  tunnel__free(MEM(srv), c->buf);
  c->buf = NULL;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, timer_closed);
}

static void vc_close(srv_vconn *vc) {
  conn_end(CONTAINER(vc, https_conn, vc), 0);
}

static void vc_proxy_gone(srv_vconn *vc, srv_proxy *p) {
  https_conn *c = CONTAINER(vc, https_conn, vc);
  if (c->p == p)
    conn_end(c, 0);
}

static void got_work(srv_waiter *w, tunnel_stream *st) {
  https_conn *c = CONTAINER(w, https_conn, w);
  tunnel_server *srv = c->srv;
  srv_proxy *p = c->p;
  c->p = NULL; /* out of the queue already */
  uv_tcp_t *tcp = c->tcp;
  int rc = tunnel__srv_start_work(p, st, c->peer, c->peer_port, c->sni.host,
                                  c->vc.vh->port);
  if (rc == 0 && c->len)
    rc = tunnel_stream_write(st, c->buf, c->len, NULL, NULL);
  if (rc) {
    tunnel_stream_close(st, NULL, NULL);
    conn_end(c, 0);
    return;
  }
  conn_end(c, 1);
  tunnel__srv_join(srv, p->ctl, tcp, st, NULL, 0, p->traffic, NULL);
}

static void work_dropped(srv_waiter *w) {
  https_conn *c = CONTAINER(w, https_conn, w);
  c->p = NULL;
  conn_end(c, 0);
}

static void on_timeout(uv_timer_t *t) {
  https_conn *c = CONTAINER(t, https_conn, timer);
  tunnel__log(&c->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: HTTPS visitor %s:%u %s in time; closed", c->peer,
              c->peer_port,
              c->p ? "got no work connection" : "sent no ClientHello");
  conn_end(c, 0);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  https_conn *c = ((uv_tcp_t *)h)->data;
  (void)hint;
  /* Reads land where they will be forwarded from: no copy. */
  size_t want = c->len + 4096;
  size_t max = c->srv->cfg.http_max_head + 4096;
  if (want > max)
    want = max;
  if (want > c->cap) {
    uint8_t *b = tunnel__realloc(MEM(c->srv), c->buf, want);
    if (b) {
      c->buf = b;
      c->cap = want;
    }
  }
  *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void route(https_conn *c) {
  tunnel_server *srv = c->srv;
  srv_proxy *p = tunnel__srv_vhost_route(c->vc.vh, c->sni.host,
                                         c->sni.host_len, NULL, 0);
  if (!p) {
    TUNNEL__SRV_COUNT(srv, VISITORS_REFUSED_NO_TUNNEL);
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
                "server: HTTPS visitor %s:%u asked for [%s]: no such name",
                c->peer, c->peer_port, c->sni.host);
    conn_end(c, 0);
    return;
  }
  uv_read_stop((uv_stream_t *)c->tcp);
  c->p = p;
  c->w.proxy = p;
  c->w.got = got_work;
  c->w.drop = work_dropped;
  uv_timer_start(&c->timer, on_timeout, srv->cfg.work_conn_timeout_ms, 0);
  if (tunnel__srv_want_work(p->ctl, &c->w) != 0) {
    c->p = NULL;
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] too many visitors waiting; dropping one",
                p->ctl->run_id);
    conn_end(c, 0);
  }
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  https_conn *c = s->data;
  (void)b;
  if (nread == 0)
    return;
  if (nread < 0 || !c->buf) {
    conn_end(c, 0);
    return;
  }
  const uint8_t *fresh = c->buf + c->len;
  c->len += (size_t)nread;
  int rc = tunnel__sni_feed(&c->sni, fresh, (size_t)nread);
  if (rc == TUNNEL__SNI_NEED_MORE && c->len < c->srv->cfg.http_max_head + 4096)
    return;
  if (rc != TUNNEL__SNI_FOUND) {
    tunnel__log(&c->srv->cfg.log, TUNNEL_LOG_INFO,
                "server: HTTPS visitor %s:%u refused: %s", c->peer,
                c->peer_port,
                rc == TUNNEL__SNI_NONE        ? "no server name (SNI)"
                : rc == TUNNEL__SNI_NEED_MORE ? "ClientHello too large"
                : c->sni.why                  ? c->sni.why
                                              : tunnel_strerror(rc));
    conn_end(c, 0);
    return;
  }
  route(c);
}

void tunnel__srv_https_accept(srv_vhost *vh, uv_tcp_t *tcp) {
  tunnel_server *srv = vh->srv;
  https_conn *c = tunnel__calloc(MEM(srv), 1, sizeof *c);
  if (!c) {
    uv_close((uv_handle_t *)tcp, tunnel__srv_free_tcp_closed);
    return;
  }
  c->srv = srv;
  c->tcp = tcp;
  tcp->data = c;
  c->vc.close = vc_close;
  c->vc.proxy_gone = vc_proxy_gone;
  tunnel__sni_init(&c->sni, MEM(srv), srv->cfg.http_max_head);
  struct sockaddr_storage peer;
  int len = sizeof peer;
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&peer, &len) == 0)
    tunnel__format_addr((struct sockaddr *)&peer, c->peer, sizeof c->peer,
                        &c->peer_port);
  uv_timer_init(srv->loop, &c->timer);
  srv->handles++;
  tunnel__srv_vconn_add(vh, &c->vc);
  uv_timer_start(&c->timer, on_timeout, srv->cfg.http_head_timeout_ms, 0);
  uv_tcp_nodelay(tcp, 1);
  if (uv_read_start((uv_stream_t *)tcp, alloc_cb, read_cb) != 0)
    conn_end(c, 0);
}

static int https_open(srv_proxy *p, const tunnel__msg *m, char *remote_addr,
                      size_t ralen, char *err, size_t errlen) {
  return tunnel__srv_vhost_register(&p->srv->https, p, m, remote_addr, ralen,
                                    err, errlen);
}

static void https_close(srv_proxy *p) {
  tunnel__srv_vhost_unregister(&p->srv->https, p);
  tunnel__srv_proxy_free(p);
}

const srv_kind tunnel__srv_kind_https = {"https", https_open, https_close};
