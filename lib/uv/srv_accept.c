/* New connections on the control port: bounded while unidentified, then
 * told apart by their first byte: TLS (a ClientHello, or frp's 0x17 marker
 * before one), then inside it or in plain, a yamux session or a raw frp
 * channel (non-mux mode). */
#include <string.h>

#include "dial.h"
#include "handle.h"
#include "link.h"
#include "srv.h"
#include "stream.h"

#define MEM tunnel__srv_mem
#define CONTAINER TUNNEL__CONTAINER

static void conn_timer_closed(uv_handle_t *h) {
  srv_conn *c = h->data;
  tunnel_server *srv = c->srv;
  tunnel__free(MEM(srv), c);
  srv->handles--;
  tunnel__srv_maybe_finish_close(srv);
}

/* Ends the sniffing phase; `keep_tcp` when the handle was handed on. */
void tunnel__srv_conn_done(srv_conn *c, int keep_tcp) {
  tunnel_server *srv = c->srv;
  if (c->done)
    return;
  c->done = 1;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  srv->nconns--;
  tunnel__anon_remove(&srv->anon, &c->anon);
  if (!keep_tcp && c->link) {
    tunnel__link_close(c->link, 1, NULL, NULL);
  } else if (!keep_tcp) {
    uv_read_stop((uv_stream_t *)c->tcp);
    tunnel__tcp_close_free(MEM(srv), c->tcp);
  }
  c->tcp = NULL;
  c->link = NULL;
  uv_close((uv_handle_t *)&c->timer, conn_timer_closed);
}

static void conn_timeout(uv_timer_t *t) {
  srv_conn *c = t->data;
  TUNNEL__SRV_COUNT(c->srv, UNAUTH_TIMED_OUT);
  tunnel__log(&c->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: connection from %s silent for too long; closed",
              c->anon.addr);
  tunnel__srv_conn_done(c, 0);
}

static void conn_shed(tunnel__anon *a) {
  srv_conn *c = CONTAINER(a, srv_conn, anon);
  TUNNEL__SRV_COUNT(c->srv, UNAUTH_SHED);
  tunnel__log(&c->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: unidentified connection from %s shed to make room",
              a->addr);
  tunnel__srv_conn_done(c, 0);
}

static void sess_shed(tunnel__anon *a) {
  srv_sess *sess = CONTAINER(a, srv_sess, anon);
  TUNNEL__SRV_COUNT(sess->srv, UNAUTH_SHED);
  tunnel__log(&sess->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: session from %s not logged in yet shed to make room",
              a->addr);
  tunnel__srv_sess_destroy(sess);
}

/* Room for one more unauthenticated peer: the oldest make way. */
static void anon_make_room(tunnel_server *srv, const char *addr,
                           uint32_t cost) {
  srv->anon_limits.max = srv->cfg.max_clients;
  srv->anon_limits.per_addr = srv->cfg.unauth_per_addr;
  srv->anon_limits.bytes = srv->cfg.unauth_bytes;
  tunnel__anon_make_room(&srv->anon, &srv->anon_limits, addr, cost);
}

static uint32_t sess_cost(const tunnel_server *srv) {
  /* Read buffer, session state and its output queue's first chunk, and
   * the first messages of its allowed streams. */
  return 64u * 1024u + 32u * 1024u +
         srv->cfg.unauth_streams * (srv->cfg.max_message_size + 2048u);
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  srv_conn *c = h->data;
  (void)hint;
  *buf = uv_buf_init((char *)c->buf, sizeof c->buf);
}

/* The connection says what it is with its first bytes (decrypted, over
 * TLS): `tcp` or `link` (exactly one) is handed on with them. */
static void identify(tunnel_server *srv, const char *addr, uv_tcp_t *tcp,
                     tunnel__link *link, const uint8_t *first, size_t n) {
  uint32_t cost = first[0] == 0 ? sess_cost(srv) : TUNNEL__SRV_ANON_RAW_COST;
  anon_make_room(srv, addr, cost);
  if (first[0] == 0) {
    /* A yamux header starts with version 0; no frp message type is 0. */
    srv_sess *sess = tunnel__calloc(MEM(srv), 1, sizeof *sess);
    if (!sess) {
      if (link)
        tunnel__link_close(link, 1, NULL, NULL);
      else
        tunnel__tcp_close_free(MEM(srv), tcp);
      return;
    }
    sess->srv = srv;
    sess->created = uv_now(srv->loop);
    if (tunnel__mux_new_budgeted(&sess->mux, srv->loop, &srv->sched,
                                 &srv->cfg, 0, tcp, &srv->budget,
                                 &tunnel__srv_mux_cb, sess) != 0) {
      if (link)
        tunnel__link_close(link, 1, NULL, NULL);
      tunnel__free(MEM(srv), sess);
      return;
    }
    srv->objects++;
    /* Until its login a session may hold only a few streams: SYNs beyond
     * them are refused before anything is allocated. */
    tunnel__mux_set_max_streams(sess->mux, srv->cfg.unauth_streams);
    snprintf(sess->addr, sizeof sess->addr, "%s", addr);
    tunnel__anon_add(&srv->anon, &sess->anon, addr, cost, sess_shed);
    sess->next = srv->sessions;
    if (srv->sessions)
      srv->sessions->prev = sess;
    srv->sessions = sess;
    int rc = link ? tunnel__mux_start_on(sess->mux, link, first, n)
                  : tunnel__mux_start(sess->mux, first, n);
    if (rc != 0)
      tunnel__srv_sess_destroy(sess);
    return;
  }
  /* frp's non-mux mode: the connection itself carries one control or work
   * channel. */
  tunnel_stream *st =
      link ? tunnel__stream_new_link(&srv->sched, MEM(srv), link, first, n)
           : tunnel__stream_new_tcp(&srv->sched, MEM(srv), tcp, first, n);
  if (st)
    tunnel__srv_first_start(srv, NULL, st, addr);
}

/* First plaintext bytes of a TLS connection, once its handshake is done. */
static void tls_first_read(tunnel__link *l, int status, const uint8_t *data,
                           size_t n, void *ud) {
  srv_conn *c = ud;
  tunnel_server *srv = c->srv;
  if (status) {
    TUNNEL__SRV_COUNT(srv, TLS_FAILED);
    const char *why = l->tls ? tunnel__tls_error_text(l->tls) : "";
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
                "server: TLS connection from %s failed: %s", c->anon.addr,
                *why ? why : tunnel_strerror(status));
    tunnel__srv_conn_done(c, 0);
    return;
  }
  tunnel__link_read_stop(l);
  if (tunnel__tls_resumed(l->tls))
    TUNNEL__SRV_COUNT(srv, TLS_RESUMED);
  else
    TUNNEL__SRV_COUNT(srv, TLS_FULL);
  char addr[TUNNEL__ADDR_MAX];
  memcpy(addr, c->anon.addr, sizeof addr);
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_DEBUG,
              "server: TLS from %s: %s, %s handshake", addr,
              tunnel__tls_ciphersuite(l->tls),
              tunnel__tls_resumed(l->tls) ? "resumed" : "full");
  tunnel__srv_conn_done(c, 1);
  /* `data` stays valid through the call: the next owner takes it (as the
   * start of its input) before the link reads again. */
  identify(srv, addr, NULL, l, data, n);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  srv_conn *c = s->data;
  tunnel_server *srv = c->srv;
  (void)buf;
  if (nread == 0)
    return;
  if (nread < 0) {
    tunnel__srv_conn_done(c, 0);
    return;
  }
  uv_read_stop(s);
  uv_tcp_t *tcp = c->tcp;
  size_t n = (size_t)nread;
  int kind = tunnel__tls_sniff(c->buf[0]);
  if (kind != TUNNEL__SNIFF_PLAIN && srv->tls) {
    /* The connection stays unidentified (timer, budget) until the first
     * bytes inside TLS arrive. */
    size_t skip = kind == TUNNEL__SNIFF_TLS_MARKER;
    tunnel__tls *t;
    int rc = tunnel__tls_new(&t, srv->tls, NULL);
    if (rc == 0) {
      c->tcp = NULL;
      rc = tunnel__link_new_tls(&c->link, &srv->sched, MEM(srv), tcp, t, 0,
                                c->buf + skip, n - skip);
    }
    if (rc) {
      tunnel__srv_conn_done(c, c->tcp == NULL);
      return;
    }
    char addr[TUNNEL__ADDR_MAX];
    memcpy(addr, c->anon.addr, sizeof addr);
    tunnel__anon_remove(&srv->anon, &c->anon);
    anon_make_room(srv, addr, TUNNEL__SRV_ANON_TLS_COST);
    tunnel__anon_add(&srv->anon, &c->anon, addr, TUNNEL__SRV_ANON_TLS_COST,
                     conn_shed);
    tunnel__link_read_start(c->link, tls_first_read, c);
    return;
  }
  if (srv->cfg.tls.only) {
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: plain connection from %s refused: this server "
                "accepts TLS only",
                c->anon.addr);
    tunnel__srv_conn_done(c, 0);
    return;
  }
  uint8_t first[sizeof c->buf];
  memcpy(first, c->buf, n);
  char addr[TUNNEL__ADDR_MAX];
  memcpy(addr, c->anon.addr, sizeof addr);
  tunnel__srv_conn_done(c, 1);
  identify(srv, addr, tcp, NULL, first, n);
}

void tunnel__srv_accept_failed(tunnel_server *srv, int status,
                               const char *what) {
  uint64_t now = uv_now(srv->loop);
  if (srv->accept_warned && now - srv->accept_warned < 1000)
    return;
  srv->accept_warned = now;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
              "server: cannot accept on the %s port (%s): refusing new "
              "connections until resources return; existing ones go on",
              what, uv_strerror(status));
}

void tunnel__srv_on_client(uv_stream_t *l, int status) {
  tunnel_server *srv = l->data;
  if (status < 0 && !srv->closing)
    tunnel__srv_accept_failed(srv, status, "control");
  if (status < 0 || srv->closing)
    return;
  uv_tcp_t *tcp = tunnel__malloc(MEM(srv), sizeof *tcp);
  if (!tcp)
    return;
  uv_tcp_init(srv->loop, tcp);
  if (uv_accept(l, (uv_stream_t *)tcp) != 0) {
    tunnel__tcp_close_free(MEM(srv), tcp);
    return;
  }
  char addr[TUNNEL__ADDR_MAX] = "?";
  struct sockaddr_storage peer;
  int plen = sizeof peer;
  uint16_t pport = 0;
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&peer, &plen) == 0)
    tunnel__format_addr((struct sockaddr *)&peer, addr, sizeof addr, &pport);
  /* Unidentified connections are bounded like clients, so a flood cannot
   * exhaust the server; the oldest make way for newcomers. */
  anon_make_room(srv, addr, TUNNEL__SRV_ANON_CONN_COST);
  srv_conn *c = tunnel__calloc(MEM(srv), 1, sizeof *c);
  if (!c) {
    tunnel__tcp_close_free(MEM(srv), tcp);
    return;
  }
  c->srv = srv;
  c->tcp = tcp;
  tcp->data = c;
  uv_timer_init(srv->loop, &c->timer);
  c->timer.data = c;
  srv->handles++;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  tunnel__anon_add(&srv->anon, &c->anon, addr, TUNNEL__SRV_ANON_CONN_COST, conn_shed);
  uv_timer_start(&c->timer, conn_timeout, TUNNEL__SRV_SNIFF_TIMEOUT_MS, 0);
  if (uv_read_start((uv_stream_t *)tcp, conn_alloc, conn_read) != 0)
    tunnel__srv_conn_done(c, 0);
}

