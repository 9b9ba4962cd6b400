/* tunnel_server: the public API, the periodic sweep and teardown. The
 * server's parts: srv_accept.c (new connections), srv_session.c (sessions,
 * logins, work connections), srv_proxy.c and one file per proxy kind. */
#include <string.h>

#include "dial.h"
#include "handle.h"
#include "srv.h"
#include "tlsconf.h"
#include "uverr.h"

#define MEM tunnel__srv_mem

static void handle_closed(uv_handle_t *h) {
  tunnel_server *srv = h->data;
  srv->handles--;
  tunnel__srv_maybe_finish_close(srv);
}

void tunnel__srv_free_tcp_closed(uv_handle_t *h) {
  tunnel_server *srv = h->data;
  tunnel__free(MEM(srv), h);
  srv->handles--;
  tunnel__srv_maybe_finish_close(srv);
}

int tunnel__srv_send_plain(tunnel_server *srv, tunnel_stream *st,
                           const tunnel__msg *m) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, MEM(srv), 1024);
  int rc = tunnel__msg_encode(MEM(srv), m, &q);
  while (rc == 0 && q.size) {
    tunnel__iov iov;
    tunnel__bufq_iov(&q, &iov, 1);
    rc = tunnel_stream_write(st, iov.base, iov.len, NULL, NULL);
    tunnel__bufq_consume(&q, iov.len);
  }
  tunnel__bufq_free(&q);
  return rc;
}

/* Once a second: drops clients that went silent, sessions that never
 * logged in and channels that never said what they are. A client is alive
 * while anything arrives from it: control messages (frp heartbeats) or, in
 * mux mode, any frame (frpc replaces heartbeats with yamux keepalive pings
 * there). */
static void sweep(uv_timer_t *t) {
  tunnel_server *srv = t->data;
  uint64_t limit = (uint64_t)srv->cfg.heartbeat_timeout_s * 1000u;
  uint64_t now = uv_now(srv->loop);
  uv_timeval64_t tv;
  if (srv->tls && uv_gettimeofday(&tv) == 0 && tv.tv_sec > 0)
    tunnel__tls_conf_tick(srv->tls, (uint64_t)tv.tv_sec);
  for (srv_ctl *ctl = srv->ctls, *next; ctl; ctl = next) {
    next = ctl->next;
    uint64_t last = ctl->last_msg;
    if (ctl->sess && tunnel__mux_last_rx(ctl->sess->mux) > last)
      last = tunnel__mux_last_rx(ctl->sess->mux);
    if (limit && !ctl->dead && now - last > limit) {
      tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                  "server: [%s] silent for %llu s; dropped", ctl->run_id,
                  (unsigned long long)((now - last) / 1000u));
      /* Destroying may take the next control's session along only if it
       * is the same session, which cannot be: one control per session. */
      tunnel__srv_ctl_destroy(ctl);
    }
  }
  for (srv_sess *sess = srv->sessions, *next; sess; sess = next) {
    next = sess->next;
    /* Window withheld for the memory budget goes out as budget frees. */
    tunnel__mux_regrant(sess->mux);
    if (!sess->ctl && now - sess->created > TUNNEL__SRV_SNIFF_TIMEOUT_MS) {
      TUNNEL__SRV_COUNT(srv, UNAUTH_TIMED_OUT);
      tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
                  "server: session from %s did not log in in time; closed",
                  sess->addr);
      tunnel__srv_sess_destroy(sess);
    }
  }
  for (srv_drain *d = srv->drains, *next; d; d = next) {
    next = d->next;
    if (now - d->created > TUNNEL__SRV_SNIFF_TIMEOUT_MS)
      tunnel__srv_drain_end(d);
  }
  for (srv_first *f = srv->firsts, *next; f; f = next) {
    next = f->next;
    if (now - f->created > TUNNEL__SRV_SNIFF_TIMEOUT_MS) {
      TUNNEL__SRV_COUNT(srv, UNAUTH_TIMED_OUT);
      tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
                  "server: channel from %s sent no complete message in "
                  "time; closed",
                  f->addr);
      tunnel__srv_first_end(f);
    }
  }
}

/* ---------------------------------------------------------------- API */

static void sched_drained(void *ud) { tunnel__srv_maybe_finish_close(ud); }

int tunnel_server_new(tunnel_server **out, uv_loop_t *loop,
                      const tunnel_config *cfg) {
  if (!out || !loop)
    return TUNNEL_EINVAL;
  *out = NULL;
  struct tunnel_config defaults;
  if (!cfg) {
    tunnel__config_defaults(&defaults);
    cfg = &defaults;
  }
  tunnel_server *srv = tunnel__calloc(&cfg->mem, 1, sizeof *srv);
  if (!srv)
    return TUNNEL_ENOMEM;
  int rc = tunnel__config_copy(&srv->cfg, cfg);
  if (rc == 0 && !(srv->readbuf = tunnel__malloc(MEM(srv), TUNNEL__SRV_READBUF_SIZE)))
    rc = TUNNEL_ENOMEM;
  if (rc == 0 && tunnel__tlsconf_wanted(&srv->cfg, 1))
    rc = tunnel__tlsconf_new(&srv->tls, &srv->cfg, &srv->cfg.log, 1);
  if (rc == 0 && (rc = tunnel__srv_logins_init(srv)) != 0)
    tunnel__tls_conf_free(srv->tls);
  if (rc) {
    tunnel__free(MEM(srv), srv->readbuf);
    tunnel__config_release(&srv->cfg);
    tunnel__free(&cfg->mem, srv);
    return rc;
  }
  /* Neither can fail: no socket is created until bind. */
  tunnel__sched_init(&srv->sched, loop);
  srv->sched.drained = sched_drained;
  srv->sched.drained_ud = srv;
  uv_timer_init(loop, &srv->sweep);
  srv->loop = loop;
  srv->started_ms = uv_now(loop);
  srv->traffic.all = &srv->traffic; /* the totals: never freed */
  srv->traffic.refs = 1;
  srv->budget.limit = srv->cfg.total_buffer;
  tunnel__srv_vhost_init(srv, &srv->http, 0);
  tunnel__srv_vhost_init(srv, &srv->https, 1);
  srv->sweep.data = srv;
  uv_timer_init(loop, &srv->drain_timer);
  srv->drain_timer.data = srv;
  srv->handles = 2;
  uv_timer_start(&srv->sweep, sweep, 1000, 1000);
  *out = srv;
  return 0;
}

int tunnel_server_listen(tunnel_server *srv, const char *host, uint16_t port) {
  if (!srv || !host)
    return TUNNEL_EINVAL;
  if (srv->closing || srv->draining)
    return TUNNEL_ESTATE;
  if (srv->listening == TUNNEL__SRV_MAX_LISTENERS)
    return TUNNEL_ELIMIT;
  struct sockaddr_storage ss;
  int rc = tunnel__parse_addr(host, port, &ss);
  if (rc)
    return rc;
  uv_tcp_t *l = tunnel__malloc(MEM(srv), sizeof *l);
  if (!l)
    return TUNNEL_ENOMEM;
  uv_tcp_init(srv->loop, l);
  l->data = srv;
  rc = uv_tcp_bind(l, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)l, 511, tunnel__srv_on_client);
  if (rc) {
    tunnel__tcp_close_free(MEM(srv), l);
    return tunnel__uv_err(rc);
  }
  srv->handles++;
  srv->listeners[srv->listening++] = l;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO, "server: listening on %s:%u",
              host, port);
  return 0;
}

int tunnel_server_port(const tunnel_server *srv, uint16_t *port) {
  if (!srv || !port)
    return TUNNEL_EINVAL;
  if (!srv->listening)
    return TUNNEL_ESTATE;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  int rc =
      uv_tcp_getsockname(srv->listeners[0], (struct sockaddr *)&ss, &len);
  if (rc)
    return tunnel__uv_err(rc);
  char host[64];
  tunnel__format_addr((struct sockaddr *)&ss, host, sizeof host, port);
  return 0;
}

int tunnel_server_listen_http(tunnel_server *srv, const char *host,
                              uint16_t port) {
  if (!srv || !host)
    return TUNNEL_EINVAL;
  if (srv->draining)
    return TUNNEL_ESTATE;
  return tunnel__srv_vhost_listen(&srv->http, host, port);
}

int tunnel_server_listen_https(tunnel_server *srv, const char *host,
                               uint16_t port) {
  if (!srv || !host)
    return TUNNEL_EINVAL;
  if (srv->draining)
    return TUNNEL_ESTATE;
  return tunnel__srv_vhost_listen(&srv->https, host, port);
}

static int vhost_port(const srv_vhost *vh, uint16_t *port) {
  if (!port)
    return TUNNEL_EINVAL;
  if (!vh->listening)
    return TUNNEL_ESTATE;
  *port = vh->port;
  return 0;
}

int tunnel_server_http_port(const tunnel_server *srv, uint16_t *port) {
  return srv ? vhost_port(&srv->http, port) : TUNNEL_EINVAL;
}

int tunnel_server_https_port(const tunnel_server *srv, uint16_t *port) {
  return srv ? vhost_port(&srv->https, port) : TUNNEL_EINVAL;
}

int tunnel_server_tls_fingerprint(const tunnel_server *srv, char *out,
                                  size_t len) {
  if (!srv || !out || len < TUNNEL__TLS_FINGERPRINT_TEXT)
    return TUNNEL_EINVAL;
  uint8_t fp[32];
  if (!srv->tls)
    return TUNNEL_ESTATE;
  int rc = tunnel__tls_conf_fingerprint(srv->tls, fp);
  if (rc == 0)
    tunnel__tls_fingerprint_format(fp, out, len);
  return rc;
}

uint32_t tunnel_server_client_count(const tunnel_server *srv) {
  return srv ? srv->nctl : 0;
}

static void sched_closed(uv_handle_t *h) {
  tunnel_server *srv = TUNNEL__CONTAINER(h, tunnel_server, sched.idle);
  tunnel_server_close_cb cb = srv->close_cb, dcb = srv->drain_cb;
  void *ud = srv->close_ud, *dud = srv->drain_ud;
  tunnel__mem mem = srv->cfg.mem;
  tunnel__free(&mem, srv->readbuf);
  tunnel__ratelimit_free(srv->logins);
  tunnel__tls_conf_free(srv->tls); /* every link has ended */
  tunnel__config_release(&srv->cfg);
  tunnel__free(&mem, srv);
  if (cb)
    cb(srv, ud);
  if (dcb)
    dcb(srv, dud);
}

/* Whether a drain has nothing left to wait for: no visitor joined to a
 * work stream, no HTTP exchange under way. Nothing new starts while the
 * server drains, so once true it stays true. */
static int drain_idle(const tunnel_server *srv) {
  if (srv->splices.count || srv->npairs || srv->http.conns ||
      srv->https.conns)
    return 0;
  for (const srv_ctl *c = srv->ctls; c; c = c->next)
    if (c->splices.count)
      return 0;
  return 1;
}

static void drain_over(uv_timer_t *t) {
  tunnel_server *srv = t->data;
  if (srv->closing)
    return;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              drain_idle(srv) ? "server: drained; closing"
                              : "server: drain time is up; closing");
  tunnel_server_close(srv, NULL, NULL);
}

void tunnel__srv_maybe_finish_close(tunnel_server *srv) {
  if (srv->draining && !srv->closing) {
    /* Closing from here would pull the server from under the caller: the
     * loop does it next. */
    if (drain_idle(srv) && uv_timer_get_due_in(&srv->drain_timer) > 0)
      uv_timer_start(&srv->drain_timer, drain_over, 0, 0);
    return;
  }
  if (!srv->closing || srv->handles || srv->splices.count || srv->npairs ||
      srv->objects || srv->sched.refs || srv->sched.closing)
    return;
  tunnel__sched_close(&srv->sched, sched_closed);
}

static void close_listeners(tunnel_server *srv) {
  for (int i = 0; i < srv->listening; i++)
    uv_close((uv_handle_t *)srv->listeners[i], tunnel__srv_free_tcp_closed);
  srv->listening = 0;
}

int tunnel_server_close(tunnel_server *srv, tunnel_server_close_cb cb,
                        void *ud) {
  if (!srv)
    return TUNNEL_EINVAL;
  if (srv->closing)
    return TUNNEL_ESTATE;
  srv->closing = 1;
  srv->close_cb = cb;
  srv->close_ud = ud;
  close_listeners(srv);
  uv_close((uv_handle_t *)&srv->sweep, handle_closed);
  uv_close((uv_handle_t *)&srv->drain_timer, handle_closed);
  while (srv->conns)
    tunnel__srv_conn_done(srv->conns, 0);
  while (srv->firsts)
    tunnel__srv_first_end(srv->firsts);
  while (srv->drains)
    tunnel__srv_drain_end(srv->drains);
  while (srv->sessions)
    tunnel__srv_sess_destroy(srv->sessions);
  while (srv->ctls) /* clients without a session: non-mux */
    tunnel__srv_ctl_destroy(srv->ctls);
  tunnel__srv_vhost_close(&srv->http);
  tunnel__srv_vhost_close(&srv->https);
  tunnel__srv_metrics_close(srv);
  /* Non-mux joins are connections of their own: no session end reaches
   * them. */
  tunnel__splice_abort_all(&srv->splices);
  tunnel__srv_maybe_finish_close(srv);
  return 0;
}

int tunnel_server_shutdown(tunnel_server *srv, uint32_t drain_ms,
                           tunnel_server_close_cb cb, void *ud) {
  if (!srv)
    return TUNNEL_EINVAL;
  if (srv->closing || srv->draining)
    return TUNNEL_ESTATE;
  if (drain_ms == 0)
    return tunnel_server_close(srv, cb, ud);
  srv->draining = 1;
  srv->drain_cb = cb;
  srv->drain_ud = ud;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: draining (up to %lu ms)", (unsigned long)drain_ms);
  close_listeners(srv);
  /* Whatever has not logged in or been joined yet goes now. */
  while (srv->conns)
    tunnel__srv_conn_done(srv->conns, 0);
  while (srv->firsts)
    tunnel__srv_first_end(srv->firsts);
  while (srv->drains)
    tunnel__srv_drain_end(srv->drains);
  for (srv_sess *sess = srv->sessions, *next; sess; sess = next) {
    next = sess->next;
    if (!sess->ctl)
      tunnel__srv_sess_destroy(sess);
  }
  /* Proxies first: closing them answers HTTP visitors still waiting for a
   * work stream, so that the vhosts see who is under way. */
  for (srv_ctl *ctl = srv->ctls; ctl; ctl = ctl->next)
    tunnel__srv_ctl_drain(ctl);
  tunnel__srv_vhost_drain(&srv->http);
  tunnel__srv_vhost_drain(&srv->https);
  uv_timer_start(&srv->drain_timer, drain_over, drain_ms, 0);
  tunnel__srv_maybe_finish_close(srv);
  return 0;
}
