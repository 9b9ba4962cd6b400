/* TCP proxies: a public port per proxy; each visitor connection waits for
 * a work stream and is then joined to it. The wait is shared with the
 * other kinds whose visitors are whole connections (srv_stcp.c). */
#include <stdio.h>
#include <string.h>

#include "../crypto.h"
#include "dial.h"
#include "srv.h"
#include "uverr.h"

#define MEM tunnel__srv_mem
#define CONTAINER TUNNEL__CONTAINER

typedef struct tcp_proxy {
  srv_proxy *p;
  uv_tcp_t *listener;
  uint16_t port;
  char bind_host[64];
  srv_wait *waiting; /* visitors of this proxy waiting for work */
  int encrypted;      /* use_encryption: work streams carry frp's cipher */
  uint8_t key[TUNNEL__FRP_KEY_SIZE];
} tcp_proxy;

typedef struct tcp_visitor {
  srv_wait v; /* first: the wait frees the record */
  tcp_proxy *tp;
  uv_tcp_t *tcp;
} tcp_visitor;

/* ------------------------------------------ waiting for a work stream */

static void wait_timer_closed(uv_handle_t *h) {
  srv_wait *v = CONTAINER(h, srv_wait, timer);
  tunnel_server *srv = h->data;
  tunnel__free(MEM(srv), v);
  srv->handles--;
  tunnel__srv_maybe_finish_close(srv);
}

/* Takes the record out of its list; it is freed once its timer closed. */
static void wait_end(srv_wait *v, tunnel_server *srv) {
  if (v->prev)
    v->prev->next = v->next;
  else
    *v->list = v->next;
  if (v->next)
    v->next->prev = v->prev;
  uv_timer_stop(&v->timer);
  v->timer.data = srv;
  uv_close((uv_handle_t *)&v->timer, wait_timer_closed);
}

static void wait_drop(srv_wait *v) {
  tunnel_server *srv = v->w.proxy->srv;
  v->drop(v);
  wait_end(v, srv);
}

static void wait_got(srv_waiter *w, tunnel_stream *st) {
  srv_wait *v = CONTAINER(w, srv_wait, w);
  wait_end(v, w->proxy->srv);
  v->got(v, st);
}

static void wait_dropped(srv_waiter *w) {
  wait_drop(CONTAINER(w, srv_wait, w));
}

static void wait_timeout(uv_timer_t *t) {
  srv_wait *v = CONTAINER(t, srv_wait, timer);
  srv_proxy *p = v->w.proxy;
  tunnel__log(&p->srv->cfg.log, TUNNEL_LOG_WARN,
              "server: [%s] no work connection for proxy %s in time",
              p->ctl->run_id, p->name);
  tunnel__srv_cancel_work(p->ctl, &v->w);
  wait_drop(v);
}

void tunnel__srv_wait_start(srv_proxy *p, srv_wait *v, srv_wait **list) {
  tunnel_server *srv = p->srv;
  srv_ctl *ctl = p->ctl;
  v->w.proxy = p;
  v->w.got = wait_got;
  v->w.drop = wait_dropped;
  if (uv_timer_init(srv->loop, &v->timer) != 0) {
    v->drop(v);
    tunnel__free(MEM(srv), v);
    return;
  }
  srv->handles++;
  v->list = list;
  v->prev = NULL;
  v->next = *list;
  if (*list)
    (*list)->prev = v;
  *list = v;
  uv_timer_start(&v->timer, wait_timeout, srv->cfg.work_conn_timeout_ms, 0);
  if (tunnel__srv_want_work(ctl, &v->w) != 0) {
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] too many visitors waiting; dropping one",
                ctl->run_id);
    wait_drop(v);
  }
}

void tunnel__srv_wait_drop_all(srv_proxy *p, srv_wait **list) {
  while (*list) {
    srv_wait *v = *list;
    tunnel__srv_cancel_work(p->ctl, &v->w);
    wait_drop(v);
  }
}

/* ------------------------------------------------------------ visitors */

/* Sends StartWorkConn on the work stream and joins it to the visitor. */
static void join(tcp_proxy *tp, tunnel_stream *st, uv_tcp_t *vis) {
  tunnel_server *srv = tp->p->srv;
  struct sockaddr_storage peer;
  int len = sizeof peer;
  char src[64] = "";
  uint16_t src_port = 0;
  if (uv_tcp_getpeername(vis, (struct sockaddr *)&peer, &len) == 0)
    tunnel__format_addr((struct sockaddr *)&peer, src, sizeof src, &src_port);
  if (tunnel__srv_start_work(tp->p, st, src, src_port, tp->bind_host,
                             tp->port) == 0) {
    /* The join owns both now and tears them down even if it fails. */
    tunnel__srv_join(srv, tp->p->ctl, vis, st, NULL, 0, tp->p->traffic,
                     tp->encrypted ? tp->key : NULL);
    return;
  }
  tunnel_stream_close(st, NULL, NULL);
  vis->data = srv;
  uv_close((uv_handle_t *)vis, tunnel__srv_free_tcp_closed);
}

static void visitor_got(srv_wait *v, tunnel_stream *st) {
  tcp_visitor *tv = (tcp_visitor *)v;
  join(tv->tp, st, tv->tcp);
}

static void visitor_drop(srv_wait *v) {
  tcp_visitor *tv = (tcp_visitor *)v;
  tv->tcp->data = tv->tp->p->srv;
  uv_close((uv_handle_t *)tv->tcp, tunnel__srv_free_tcp_closed);
}

static void on_visitor(uv_stream_t *l, int status) {
  tcp_proxy *tp = l->data;
  srv_proxy *p = tp->p;
  srv_ctl *ctl = p->ctl;
  tunnel_server *srv = p->srv;
  if (status < 0 && !ctl->dead)
    tunnel__srv_accept_failed(srv, status, "proxy");
  if (status < 0 || ctl->dead)
    return;
  uv_tcp_t *vis = tunnel__malloc(MEM(srv), sizeof *vis);
  if (!vis)
    return;
  if (uv_tcp_init(srv->loop, vis) != 0) {
    tunnel__free(MEM(srv), vis);
    return;
  }
  srv->handles++;
  vis->data = srv;
  if (uv_accept(l, (uv_stream_t *)vis) != 0) {
    uv_close((uv_handle_t *)vis, tunnel__srv_free_tcp_closed);
    return;
  }
  tcp_visitor *tv = tunnel__calloc(MEM(srv), 1, sizeof *tv);
  if (!tv) {
    uv_close((uv_handle_t *)vis, tunnel__srv_free_tcp_closed);
    return;
  }
  tv->tp = tp;
  tv->tcp = vis;
  tv->v.got = visitor_got;
  tv->v.drop = visitor_drop;
  tunnel__srv_wait_start(p, &tv->v, &tp->waiting);
}

/* Binds and listens; 0 or an error (EADDRINUSE when taken). libuv may
 * report a bind conflict from either call. */
static int tcp_listen(tcp_proxy *tp, uint16_t port);

static int try_listen(void *ud, uint16_t port) { return tcp_listen(ud, port); }

static int tcp_listen(tcp_proxy *tp, uint16_t port) {
  tunnel_server *srv = tp->p->srv;
  struct sockaddr_storage ss;
  const char *host = srv->cfg.proxy_bind_addr ? srv->cfg.proxy_bind_addr
                                              : "0.0.0.0";
  int rc = tunnel__parse_addr(host, port, &ss);
  if (rc)
    return rc;
  uv_tcp_t *l = tunnel__malloc(MEM(srv), sizeof *l);
  if (!l)
    return TUNNEL_ENOMEM;
  uv_tcp_init(srv->loop, l);
  srv->handles++;
  l->data = tp;
  rc = uv_tcp_bind(l, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)l, 511, on_visitor);
  if (rc) {
    l->data = srv;
    uv_close((uv_handle_t *)l, tunnel__srv_free_tcp_closed);
    return tunnel__uv_err(rc);
  }
  tp->listener = l;
  snprintf(tp->bind_host, sizeof tp->bind_host, "%s", host);
  tp->port = port;
  return 0;
}

static int tcp_open(srv_proxy *p, const tunnel__msg *m, char *remote_addr,
                    size_t ralen, char *err, size_t errlen) {
  tunnel_server *srv = p->srv;
  const struct tunnel_config *cfg = &srv->cfg;
  if (m->use_compression) {
    snprintf(err, errlen,
             "tcp proxies with use_compression are not supported by this "
             "server");
    return TUNNEL_EINVAL;
  }
  if (m->remote_port < 0 || m->remote_port > 65535 ||
      (m->remote_port &&
       (m->remote_port < cfg->port_lo || m->remote_port > cfg->port_hi))) {
    snprintf(err, errlen, "port %lld is not allowed (allowed: %u-%u)",
             (long long)m->remote_port, cfg->port_lo, cfg->port_hi);
    return TUNNEL_ERANGE;
  }
  tcp_proxy *tp = tunnel__calloc(MEM(srv), 1, sizeof *tp);
  if (!tp)
    return TUNNEL_ENOMEM;
  tp->p = p;
  int rc = 0;
  if (m->use_encryption) {
    /* frps keys a proxy's work connections with the token; derived once
     * here, not per visitor. */
    const char *token = tunnel__config_token(cfg);
    tp->encrypted = 1;
    rc = tunnel__frp_key(token, strlen(token), tp->key);
    if (rc) {
      tunnel__free(MEM(srv), tp);
      return rc;
    }
  }
  rc = tunnel__srv_pick_port(cfg, m->remote_port, try_listen, tp, err,
                                 errlen);
  if (rc) {
    if (rc != TUNNEL_EADDRINUSE)
      snprintf(err, errlen, "cannot listen: %s", tunnel_strerror(rc));
    tunnel__free(MEM(srv), tp);
    return rc;
  }
  p->kind_data = tp;
  /* frp answers ":PORT": the client knows the public host itself. */
  snprintf(remote_addr, ralen, ":%u", tp->port);
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] proxy %s listening on %s:%u", p->ctl->run_id,
              p->name, tp->bind_host, tp->port);
  return 0;
}

static void listener_closed(uv_handle_t *h) {
  tcp_proxy *tp = h->data;
  srv_proxy *p = tp->p;
  tunnel_server *srv = p->srv;
  tunnel__free(MEM(srv), h);
  tunnel__free(MEM(srv), tp);
  srv->handles--;
  tunnel__srv_proxy_free(p);
}

static void tcp_close(srv_proxy *p) {
  tcp_proxy *tp = p->kind_data;
  /* Waiting visitors go too: their work would never come. */
  tunnel__srv_wait_drop_all(p, &tp->waiting);
  tp->listener->data = tp;
  uv_close((uv_handle_t *)tp->listener, listener_closed);
}

const srv_kind tunnel__srv_kind_tcp = {"tcp", tcp_open, tcp_close};
