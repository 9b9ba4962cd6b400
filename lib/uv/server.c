/* tunnel_server: accepts client sessions, authenticates logins, opens the
 * public listeners of TCP proxies, and joins each visitor to a work stream
 * taken from its client's pool. */
#include <stdio.h>
#include <string.h>

#include "../config.h"
#include "../crypto.h"
#include "../log.h"
#include "../msg.h"
#include "ctlchan.h"
#include "dial.h"
#include "handle.h"
#include "mux.h"
#include "splice.h"
#include "stream.h"
#include "uverr.h"

#define READBUF_SIZE (64u * 1024u)
/* Work streams parked per client beyond what it was asked for: frp allows
 * a few extra before it drops them. */
#define POOL_SLACK 10u
#define MAX_POOL_COUNT 32u
#define MAX_WAITING 256u
#define PORT_TRIES 64

typedef struct srv_sess srv_sess;
typedef struct srv_ctl srv_ctl;
typedef struct srv_proxy srv_proxy;

struct tunnel_server {
  uv_loop_t *loop;
  struct tunnel_config cfg;
  tunnel__sched sched;
  uv_tcp_t listener;
  uv_timer_t sweep; /* drops clients that went silent */
  int listening;
  uint8_t *readbuf; /* shared by all splices */
  srv_sess *sessions;
  struct srv_conn *conns;   /* connections not yet identified */
  uint32_t nconns;
  /* Peers not (yet) authenticated, capped at max_clients so that
   * unauthenticated connections cannot exhaust the server: sniffing
   * connections, raw first-message channels, refused raw channels draining,
   * and mux sessions without a login. */
  uint32_t nanon;
  struct srv_drain *drains; /* refused channels, until the peer reads the
                               refusal and closes, or a deadline */
  struct srv_first *firsts; /* streams awaiting their first message */
  srv_ctl *ctls;
  uint32_t nctl;
  uint32_t handles;  /* open uv handles owned by server objects */
  tunnel__splice_set splices;  /* live splices */
  uint32_t objects;  /* sessions and controls not yet freed */
  int closing;
  tunnel_server_close_cb close_cb;
  void *close_ud;
};

struct srv_sess {
  tunnel_server *srv;
  tunnel__mux *mux;
  int authed; /* a client logged in over it (it left srv->nanon) */
  uint64_t created; /* loop time; a session must log in within a limit */
  srv_sess *prev, *next;
  srv_ctl *ctl; /* the client that logged in over this session */
  int dead;
  tunnel__task free_task;
};

/* A stream whose first message decides what it is. */
typedef struct srv_first {
  tunnel_server *srv;
  srv_sess *sess; /* NULL: a whole TCP connection (non-mux) */
  tunnel_stream *st;
  tunnel__ctlchan ch;
  struct srv_first *prev, *next;
  uint64_t created;
} srv_first;

/* A new connection, until its first bytes tell yamux from a raw frp
 * message. */
typedef struct srv_conn {
  tunnel_server *srv;
  uv_tcp_t *tcp;
  uv_timer_t timer;
  struct srv_conn *prev, *next;
  uint8_t buf[256];
  int done;
} srv_conn;

/* A connection must identify itself, and a session or channel log in or
 * say what it is, within this time. */
#define SNIFF_TIMEOUT_MS 10000

typedef struct srv_work {
  srv_ctl *ctl;
  tunnel_stream *st;
  struct srv_work *next;
} srv_work;

typedef struct srv_visitor {
  srv_ctl *ctl;
  srv_proxy *proxy;
  uv_tcp_t *tcp;
  uv_timer_t timer;
  struct srv_visitor *next;
} srv_visitor;

struct srv_ctl {
  tunnel_server *srv;
  srv_sess *sess;
  srv_ctl *prev, *next;
  tunnel_stream *st;
  tunnel__ctlchan ch;
  char run_id[33];
  srv_proxy *proxies;
  srv_work *pool;
  uint32_t pooled;
  uint32_t pool_count;
  srv_visitor *waiting; /* oldest first */
  uint32_t nwaiting;
  uint64_t last_msg; /* loop time of the last control message */
  int dead;
  tunnel__task free_task;
};

struct srv_proxy {
  tunnel_server *srv; /* the ctl may be freed before the listener closes */
  srv_ctl *ctl;
  srv_proxy *next;
  char *name;
  uv_tcp_t *listener;
  uint16_t port;
  char bind_host[64];
};

#define CONTAINER(ptr, type, field)                                            \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

static void maybe_finish_close(tunnel_server *srv);
static void ctl_destroy(srv_ctl *ctl);
static void sess_destroy(srv_sess *sess);

/* ------------------------------------------------------------ helpers */

static const tunnel__mem *MEM(tunnel_server *srv) { return &srv->cfg.mem; }

static void handle_closed(uv_handle_t *h) {
  tunnel_server *srv = h->data;
  srv->handles--;
  maybe_finish_close(srv);
}

/* Writes one unencrypted message to a stream. */
static int send_plain(tunnel_server *srv, tunnel_stream *st,
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

static int send_ctl(srv_ctl *ctl, const tunnel__msg *m) {
  int rc = tunnel__ctlchan_send(&ctl->ch, m);
  if (rc)
    tunnel__log(&ctl->srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] cannot send %s: %s", ctl->run_id,
                tunnel__msg_type_name(m->type), tunnel_strerror(rc));
  return rc;
}

static void req_work_conn(srv_ctl *ctl) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_REQ_WORK_CONN);
  send_ctl(ctl, &m);
}

static int gen_run_id(char out[33]) {
  uint8_t raw[8];
  int rc = tunnel__uv_err(uv_random(NULL, NULL, raw, sizeof raw, 0, NULL));
  if (rc)
    return rc;
  for (size_t i = 0; i < sizeof raw; i++)
    snprintf(out + 2 * i, 3, "%02x", raw[i]);
  return 0;
}

/* ------------------------------------------------------------ visitors */

static void splice_gone(void *ud) { maybe_finish_close(ud); }

static void free_tcp_closed(uv_handle_t *h) {
  tunnel_server *srv = h->data;
  /* The handle was allocated with the server's allocator. */
  tunnel__free(MEM(srv), h);
  srv->handles--;
  maybe_finish_close(srv);
}

/* Sends StartWorkConn on the work stream and joins it to the visitor. */
static void dispatch(srv_proxy *p, tunnel_stream *st, uv_tcp_t *vis) {
  tunnel_server *srv = p->ctl->srv;
  struct sockaddr_storage peer;
  int len = sizeof peer;
  char src[64] = "";
  uint16_t src_port = 0;
  if (uv_tcp_getpeername(vis, (struct sockaddr *)&peer, &len) == 0)
    tunnel__format_addr((struct sockaddr *)&peer, src, sizeof src, &src_port);
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_START_WORK_CONN);
  int rc = tunnel__msg_set_str(MEM(srv), &m.proxy_name, p->name);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(srv), &m.src_addr, src);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(srv), &m.dst_addr, p->bind_host);
  m.src_port = src_port;
  m.dst_port = p->port;
  if (rc == 0)
    rc = send_plain(srv, st, &m);
  tunnel__msg_clear(MEM(srv), &m);
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_DEBUG,
              "server: [%s] visitor %s:%u -> proxy %s", p->ctl->run_id, src,
              src_port, p->name);
  if (rc == 0) {
    /* The splice owns both now and tears them down even if it fails. */
    srv->handles--;
    tunnel__splice_start(MEM(srv), &srv->cfg.log, vis, st, NULL, 0,
                         srv->readbuf, READBUF_SIZE, &srv->splices,
                         splice_gone, srv);
    return;
  }
  tunnel_stream_close(st, NULL, NULL);
  vis->data = srv;
  uv_close((uv_handle_t *)vis, free_tcp_closed);
}

static void visitor_served(srv_visitor *v);

/* A refused channel: kept until the peer ends it, so that what was written
 * to it (a refusal) is delivered before any reset, but no longer than the
 * identification timeout, and closed with the server. */
typedef struct srv_drain {
  tunnel_server *srv;
  tunnel_stream *st;
  struct srv_drain *prev, *next;
  uint64_t created;
  int anon; /* a raw connection: counts in srv->nanon */
} srv_drain;

static void drain_end(srv_drain *d) {
  tunnel_server *srv = d->srv;
  if (d->prev)
    d->prev->next = d->next;
  else
    srv->drains = d->next;
  if (d->next)
    d->next->prev = d->prev;
  if (d->anon)
    srv->nanon--;
  tunnel_stream_close(d->st, NULL, NULL);
  tunnel__free(MEM(srv), d);
}

static void drain_then_close(tunnel_stream *st, int status,
                             const uint8_t *data, size_t len, void *ud) {
  (void)st, (void)data, (void)len;
  if (status)
    drain_end(ud);
}

static void drain_start(tunnel_server *srv, tunnel_stream *st) {
  srv_drain *d = tunnel__calloc(MEM(srv), 1, sizeof *d);
  if (!d) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  d->srv = srv;
  d->st = st;
  d->created = uv_now(srv->loop);
  /* Mux streams are covered by their session's count. */
  d->anon = st->tcp != NULL;
  if (d->anon)
    srv->nanon++;
  d->next = srv->drains;
  if (srv->drains)
    srv->drains->prev = d;
  srv->drains = d;
  tunnel_stream_read_start(st, drain_then_close, d);
}

static void unlink_waiting(srv_ctl *ctl, srv_visitor *v) {
  srv_visitor **pp = &ctl->waiting;
  while (*pp && *pp != v)
    pp = &(*pp)->next;
  if (*pp) {
    *pp = v->next;
    ctl->nwaiting--;
  }
}

static void visitor_timeout(uv_timer_t *t) {
  srv_visitor *v = CONTAINER(t, srv_visitor, timer);
  srv_ctl *ctl = v->ctl;
  tunnel__log(&ctl->srv->cfg.log, TUNNEL_LOG_WARN,
              "server: [%s] no work connection for proxy %s in time",
              ctl->run_id, v->proxy->name);
  unlink_waiting(ctl, v);
  v->tcp->data = ctl->srv;
  uv_close((uv_handle_t *)v->tcp, free_tcp_closed);
  visitor_served(v);
}

static void visitor_timer_closed(uv_handle_t *h) {
  srv_visitor *v = CONTAINER(h, srv_visitor, timer);
  tunnel_server *srv = h->data;
  tunnel__free(MEM(srv), v);
  srv->handles--;
  maybe_finish_close(srv);
}

static srv_work *pool_pop(srv_ctl *ctl) {
  srv_work *w = ctl->pool;
  if (w) {
    ctl->pool = w->next;
    ctl->pooled--;
  }
  return w;
}

static void on_visitor(uv_stream_t *l, int status) {
  srv_proxy *p = l->data;
  srv_ctl *ctl = p->ctl;
  tunnel_server *srv = ctl->srv;
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
    uv_close((uv_handle_t *)vis, free_tcp_closed);
    return;
  }
  srv_work *w = pool_pop(ctl);
  if (w) {
    tunnel_stream *st = w->st;
    tunnel__free(MEM(srv), w);
    tunnel_stream_read_stop(st);
    req_work_conn(ctl); /* refill the pool */
    dispatch(p, st, vis);
    return;
  }
  if (ctl->nwaiting >= MAX_WAITING) {
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] too many visitors waiting; dropping one",
                ctl->run_id);
    uv_close((uv_handle_t *)vis, free_tcp_closed);
    return;
  }
  srv_visitor *v = tunnel__calloc(MEM(srv), 1, sizeof *v);
  if (!v || uv_timer_init(srv->loop, &v->timer) != 0) {
    tunnel__free(MEM(srv), v);
    uv_close((uv_handle_t *)vis, free_tcp_closed);
    return;
  }
  srv->handles++;
  v->ctl = ctl;
  v->proxy = p;
  v->tcp = vis;
  uv_timer_start(&v->timer, visitor_timeout, srv->cfg.work_conn_timeout_ms, 0);
  srv_visitor **pp = &ctl->waiting;
  while (*pp)
    pp = &(*pp)->next;
  *pp = v;
  ctl->nwaiting++;
  req_work_conn(ctl);
}

/* Frees a waiting visitor's record once its work stream arrived. */
static void visitor_served(srv_visitor *v) {
  tunnel_server *srv = v->ctl->srv;
  uv_timer_stop(&v->timer);
  v->timer.data = srv;
  uv_close((uv_handle_t *)&v->timer, visitor_timer_closed);
}

/* ------------------------------------------------------------- proxies */

static void proxy_closed(uv_handle_t *h) {
  srv_proxy *p = h->data;
  tunnel_server *srv = p->srv;
  tunnel__free(MEM(srv), h);
  tunnel__free(MEM(srv), p->name);
  tunnel__free(MEM(srv), p);
  srv->handles--;
  maybe_finish_close(srv);
}

static void proxy_close(srv_proxy *p) {
  tunnel_server *srv = p->ctl->srv;
  /* Waiting visitors of this proxy go too: their work would never come. */
  srv_visitor **pp = &p->ctl->waiting;
  while (*pp) {
    srv_visitor *v = *pp;
    if (v->proxy == p) {
      *pp = v->next;
      p->ctl->nwaiting--;
      v->tcp->data = srv;
      uv_close((uv_handle_t *)v->tcp, free_tcp_closed);
      visitor_served(v);
    } else {
      pp = &v->next;
    }
  }
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] proxy %s closed (port %u)", p->ctl->run_id,
              p->name, p->port);
  p->listener->data = p;
  uv_close((uv_handle_t *)p->listener, proxy_closed);
}

static srv_proxy *find_proxy(tunnel_server *srv, const char *name) {
  for (srv_ctl *c = srv->ctls; c; c = c->next)
    for (srv_proxy *p = c->proxies; p; p = p->next)
      if (strcmp(p->name, name) == 0)
        return p;
  return NULL;
}

/* Binds and listens; 0 or an error (EADDRINUSE when taken). libuv may
 * report a bind conflict from either call. */
static int proxy_listen(tunnel_server *srv, srv_proxy *p, uint16_t port) {
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
  l->data = p;
  rc = uv_tcp_bind(l, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)l, 511, on_visitor);
  if (rc) {
    l->data = srv;
    uv_close((uv_handle_t *)l, free_tcp_closed);
    return tunnel__uv_err(rc);
  }
  p->listener = l;
  snprintf(p->bind_host, sizeof p->bind_host, "%s", host);
  p->port = port;
  return 0;
}

static void reply_proxy(srv_ctl *ctl, const char *name, const char *addr,
                        const char *error) {
  tunnel_server *srv = ctl->srv;
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_NEW_PROXY_RESP);
  int rc = tunnel__msg_set_str(MEM(srv), &r.proxy_name, name);
  if (rc == 0 && addr)
    rc = tunnel__msg_set_str(MEM(srv), &r.remote_addr, addr);
  if (rc == 0 && error)
    rc = tunnel__msg_set_str(MEM(srv), &r.error, error);
  if (rc == 0)
    send_ctl(ctl, &r);
  tunnel__msg_clear(MEM(srv), &r);
  if (error)
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] proxy %s refused: %s", ctl->run_id,
                name ? name : "", error);
}

static void on_new_proxy(srv_ctl *ctl, const tunnel__msg *m) {
  tunnel_server *srv = ctl->srv;
  const struct tunnel_config *cfg = &srv->cfg;
  char err[160];
  const char *name = m->proxy_name ? m->proxy_name : "";
  if (!*name) {
    reply_proxy(ctl, name, NULL, "proxy name is empty");
    return;
  }
  if (!m->proxy_type || strcmp(m->proxy_type, "tcp") != 0) {
    snprintf(err, sizeof err, "proxy type [%s] is not supported",
             m->proxy_type ? m->proxy_type : "");
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  if (find_proxy(srv, name)) {
    snprintf(err, sizeof err, "proxy [%s] is already in use", name);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  if (m->remote_port < 0 || m->remote_port > 65535 ||
      (m->remote_port &&
       (m->remote_port < cfg->port_lo || m->remote_port > cfg->port_hi))) {
    snprintf(err, sizeof err, "port %lld is not allowed (allowed: %u-%u)",
             (long long)m->remote_port, cfg->port_lo, cfg->port_hi);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  srv_proxy *p = tunnel__calloc(MEM(srv), 1, sizeof *p);
  if (!p || !(p->name = tunnel__strdup(MEM(srv), name))) {
    tunnel__free(MEM(srv), p);
    reply_proxy(ctl, name, NULL, "server out of memory");
    return;
  }
  p->srv = srv;
  p->ctl = ctl;
  int rc;
  if (m->remote_port) {
    rc = proxy_listen(srv, p, (uint16_t)m->remote_port);
    if (rc == TUNNEL_EADDRINUSE)
      snprintf(err, sizeof err, "port %lld is already in use",
               (long long)m->remote_port);
  } else {
    /* Random probes spread clients over the range and stay cheap when most
     * ports are taken; a failing probe costs one bind. */
    uint32_t span = (uint32_t)cfg->port_hi - cfg->port_lo + 1;
    rc = TUNNEL_EADDRINUSE;
    for (int i = 0; i < PORT_TRIES && rc == TUNNEL_EADDRINUSE; i++) {
      uint32_t r = 0;
      uv_random(NULL, NULL, &r, sizeof r, 0, NULL);
      rc = proxy_listen(srv, p, (uint16_t)(cfg->port_lo + r % span));
    }
    if (rc == TUNNEL_EADDRINUSE)
      snprintf(err, sizeof err, "no free port in %u-%u", cfg->port_lo,
               cfg->port_hi);
  }
  if (rc) {
    if (rc != TUNNEL_EADDRINUSE)
      snprintf(err, sizeof err, "cannot listen: %s", tunnel_strerror(rc));
    tunnel__free(MEM(srv), p->name);
    tunnel__free(MEM(srv), p);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  p->next = ctl->proxies;
  ctl->proxies = p;
  char addr[16];
  snprintf(addr, sizeof addr, ":%u", p->port);
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] proxy %s listening on %s:%u", ctl->run_id, name,
              p->bind_host, p->port);
  reply_proxy(ctl, name, addr, NULL);
}

static void on_close_proxy(srv_ctl *ctl, const tunnel__msg *m) {
  if (!m->proxy_name)
    return;
  for (srv_proxy **pp = &ctl->proxies; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->name, m->proxy_name) == 0) {
      srv_proxy *p = *pp;
      *pp = p->next;
      proxy_close(p);
      return;
    }
  }
}

/* ------------------------------------------------------------ controls */

static int on_ctl_msg(tunnel__ctlchan *ch, int err, const tunnel__msg *m,
                      void *ud) {
  srv_ctl *ctl = ud;
  (void)ch;
  ctl->last_msg = uv_now(ctl->srv->loop);
  if (err) {
    /* A client that disconnects ends its streams with a reset: normal. */
    int quiet = err == TUNNEL_EEOF || err == TUNNEL_ECONNRESET;
    tunnel__log(&ctl->srv->cfg.log, quiet ? TUNNEL_LOG_INFO : TUNNEL_LOG_WARN,
                "server: [%s] control stream ended: %s", ctl->run_id,
                tunnel_strerror(err));
    ctl_destroy(ctl);
    return 0;
  }
  switch (m->type) {
  case TUNNEL__MSG_NEW_PROXY:
    on_new_proxy(ctl, m);
    break;
  case TUNNEL__MSG_CLOSE_PROXY:
    on_close_proxy(ctl, m);
    break;
  case TUNNEL__MSG_PING: {
    tunnel__msg pong;
    tunnel__msg_init(&pong, TUNNEL__MSG_PONG);
    send_ctl(ctl, &pong);
    break;
  }
  default:
    tunnel__log(&ctl->srv->cfg.log, TUNNEL_LOG_DEBUG,
                "server: [%s] ignoring %s", ctl->run_id,
                tunnel__msg_type_name(m->type));
    break;
  }
  return !ctl->dead;
}

static void ctl_free_task(tunnel__task *t) {
  srv_ctl *ctl = CONTAINER(t, srv_ctl, free_task);
  tunnel_server *srv = ctl->srv;
  tunnel__ctlchan_free(&ctl->ch);
  tunnel__free(MEM(srv), ctl);
  srv->objects--;
  maybe_finish_close(srv);
}

/* The client is gone: its proxies, pool, waiting visitors and session. */
static void ctl_destroy(srv_ctl *ctl) {
  if (ctl->dead)
    return;
  ctl->dead = 1;
  tunnel_server *srv = ctl->srv;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO, "server: [%s] client gone",
              ctl->run_id);
  while (ctl->proxies) {
    srv_proxy *p = ctl->proxies;
    ctl->proxies = p->next;
    proxy_close(p);
  }
  while (ctl->waiting) {
    srv_visitor *v = ctl->waiting;
    ctl->waiting = v->next;
    v->tcp->data = srv;
    uv_close((uv_handle_t *)v->tcp, free_tcp_closed);
    visitor_served(v);
  }
  ctl->nwaiting = 0;
  srv_work *w;
  while ((w = pool_pop(ctl)) != NULL) {
    tunnel_stream_close(w->st, NULL, NULL);
    tunnel__free(MEM(srv), w);
  }
  tunnel_stream_close(ctl->st, NULL, NULL);
  if (ctl->prev)
    ctl->prev->next = ctl->next;
  else
    srv->ctls = ctl->next;
  if (ctl->next)
    ctl->next->prev = ctl->prev;
  srv->nctl--;
  if (ctl->sess) {
    ctl->sess->ctl = NULL;
    sess_destroy(ctl->sess);
  }
  tunnel__sched_post(&srv->sched, &ctl->free_task, ctl_free_task);
}

static srv_ctl *find_ctl(tunnel_server *srv, const char *run_id) {
  if (!run_id || !*run_id)
    return NULL;
  for (srv_ctl *c = srv->ctls; c; c = c->next)
    if (!c->dead && strcmp(c->run_id, run_id) == 0)
      return c;
  return NULL;
}

static void refuse_login(tunnel_server *srv, tunnel_stream *st,
                         const char *why) {
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN, "server: login refused: %s",
              why);
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_LOGIN_RESP);
  tunnel__msg_set_str(MEM(srv), &r.version, TUNNEL_VERSION_STRING);
  tunnel__msg_set_str(MEM(srv), &r.error, why);
  send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  /* FIN after the answer; the client ends the session when it reads it. */
  tunnel_stream_shutdown(st, NULL, NULL);
  drain_start(srv, st);
}

static int check_key(tunnel_server *srv, const char *key, int64_t ts) {
  const char *token = tunnel__config_token(&srv->cfg);
  if (!*token)
    return 1;
  char want[33];
  if (!key || strlen(key) != 32 ||
      tunnel__privilege_key(token, strlen(token), ts, want) != 0)
    return 0;
  return tunnel__ct_equal(want, key, 32);
}

static void on_login(tunnel_server *srv, srv_sess *sess, tunnel_stream *st,
                     const tunnel__msg *m) {
  if (sess && sess->ctl) {
    refuse_login(srv, st, "session already logged in");
    return;
  }
  if (!check_key(srv, m->privilege_key, m->timestamp)) {
    refuse_login(srv, st, "authorization failed: token mismatch");
    return;
  }
  srv_ctl *old = find_ctl(srv, m->run_id);
  if (old) /* the same client reconnecting: the new session replaces it */
    ctl_destroy(old);
  if (srv->nctl >= srv->cfg.max_clients) {
    refuse_login(srv, st, "too many clients");
    return;
  }
  srv_ctl *ctl = tunnel__calloc(MEM(srv), 1, sizeof *ctl);
  if (!ctl) {
    refuse_login(srv, st, "server out of memory");
    return;
  }
  ctl->srv = srv;
  ctl->sess = sess;
  ctl->st = st;
  ctl->pool_count = m->pool_count < 0 ? 0 : (uint32_t)m->pool_count;
  if (ctl->pool_count > MAX_POOL_COUNT)
    ctl->pool_count = MAX_POOL_COUNT;
  if (m->run_id && *m->run_id && strlen(m->run_id) < sizeof ctl->run_id)
    snprintf(ctl->run_id, sizeof ctl->run_id, "%s", m->run_id);
  else if (gen_run_id(ctl->run_id) != 0) {
    tunnel__free(MEM(srv), ctl);
    refuse_login(srv, st, "server cannot generate a run id");
    return;
  }
  tunnel__ctlchan_init(&ctl->ch, st, MEM(srv), srv->cfg.max_message_size);
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_LOGIN_RESP);
  int rc = tunnel__msg_set_str(MEM(srv), &r.version, TUNNEL_VERSION_STRING);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(srv), &r.run_id, ctl->run_id);
  if (rc == 0)
    rc = send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  if (rc == 0)
    rc = tunnel__ctlchan_encrypt(&ctl->ch, srv->cfg.token);
  if (rc == 0)
    rc = tunnel__ctlchan_read(&ctl->ch, on_ctl_msg, ctl);
  if (rc) {
    tunnel__ctlchan_free(&ctl->ch);
    tunnel__free(MEM(srv), ctl);
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  srv->objects++;
  ctl->last_msg = uv_now(srv->loop);
  if (sess) {
    sess->ctl = ctl;
    sess->authed = 1;
    srv->nanon--;
  }
  ctl->next = srv->ctls;
  if (srv->ctls)
    srv->ctls->prev = ctl;
  srv->ctls = ctl;
  srv->nctl++;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] client logged in (version %s, pool %u)",
              ctl->run_id, m->version ? m->version : "?", ctl->pool_count);
  for (uint32_t i = 0; i < ctl->pool_count; i++)
    req_work_conn(ctl);
}

/* A pooled work stream should stay silent until StartWorkConn; anything
 * from it (reset, EOF, stray bytes) retires it. */
static void pooled_read(tunnel_stream *st, int status, const uint8_t *data,
                        size_t len, void *ud) {
  srv_ctl *ctl = ud;
  (void)status, (void)data, (void)len;
  for (srv_work **pp = &ctl->pool; *pp; pp = &(*pp)->next) {
    if ((*pp)->st == st) {
      srv_work *w = *pp;
      *pp = w->next;
      ctl->pooled--;
      tunnel__free(MEM(ctl->srv), w);
      break;
    }
  }
  tunnel_stream_close(st, NULL, NULL);
}

static void on_new_work_conn(tunnel_server *srv, srv_sess *sess,
                             tunnel_stream *st, const tunnel__msg *m) {
  srv_ctl *ctl = find_ctl(srv, m->run_id);
  /* A work stream on the session its client logged in on is covered by
   * that login; one arriving any other way (its own TCP connection, in
   * non-mux mode) must carry its own key when a token is set. */
  int trusted = ctl && sess && ctl->sess == sess;
  if (!ctl || (!trusted && !check_key(srv, m->privilege_key, m->timestamp))) {
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: work connection for unknown or unauthorised run id "
                "[%s]",
                m->run_id ? m->run_id : "");
    tunnel__msg r;
    tunnel__msg_init(&r, TUNNEL__MSG_START_WORK_CONN);
    tunnel__msg_set_str(MEM(srv), &r.error, "invalid NewWorkConn");
    send_plain(srv, st, &r);
    tunnel__msg_clear(MEM(srv), &r);
    tunnel_stream_shutdown(st, NULL, NULL);
    drain_start(srv, st);
    return;
  }
  if (ctl->waiting) {
    srv_visitor *v = ctl->waiting;
    ctl->waiting = v->next;
    ctl->nwaiting--;
    uv_tcp_t *vis = v->tcp;
    srv_proxy *p = v->proxy;
    visitor_served(v);
    req_work_conn(ctl); /* keep the pool at its size */
    dispatch(p, st, vis);
    return;
  }
  if (ctl->pooled >= ctl->pool_count + POOL_SLACK) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  srv_work *w = tunnel__malloc(MEM(srv), sizeof *w);
  if (!w) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  w->ctl = ctl;
  w->st = st;
  w->next = ctl->pool;
  ctl->pool = w;
  ctl->pooled++;
  tunnel_stream_read_start(st, pooled_read, ctl);
}

/* ------------------------------------------------------------ sessions */

static void first_unlink(srv_first *f) {
  tunnel_server *srv = f->srv;
  if (f->prev)
    f->prev->next = f->next;
  else
    srv->firsts = f->next;
  if (f->next)
    f->next->prev = f->prev;
  if (!f->sess)
    srv->nanon--;
  tunnel__ctlchan_free(&f->ch);
  tunnel__free(MEM(srv), f);
}

static int on_first_msg(tunnel__ctlchan *ch, int err, const tunnel__msg *m,
                        void *ud) {
  srv_first *f = ud;
  tunnel_server *srv = f->srv;
  srv_sess *sess = f->sess;
  tunnel_stream *st = f->st;
  (void)ch;
  first_unlink(f);
  if (err) {
    tunnel_stream_close(st, NULL, NULL);
    return 0;
  }
  switch (m->type) {
  case TUNNEL__MSG_LOGIN:
    on_login(srv, sess, st, m);
    break;
  case TUNNEL__MSG_NEW_WORK_CONN:
    on_new_work_conn(srv, sess, st, m);
    break;
  default:
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: unexpected first message %s",
                tunnel__msg_type_name(m->type));
    tunnel_stream_close(st, NULL, NULL);
    break;
  }
  return 0;
}

/* Reads the first message of a new stream (mux) or connection (raw). */
static void first_start(tunnel_server *srv, srv_sess *sess,
                        tunnel_stream *st) {
  srv_first *f = tunnel__calloc(MEM(srv), 1, sizeof *f);
  if (!f) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  f->srv = srv;
  f->sess = sess;
  f->st = st;
  f->created = uv_now(srv->loop);
  tunnel__ctlchan_init(&f->ch, st, MEM(srv), srv->cfg.max_message_size);
  f->next = srv->firsts;
  if (srv->firsts)
    srv->firsts->prev = f;
  srv->firsts = f;
  if (!sess)
    srv->nanon++;
  if (tunnel__ctlchan_read(&f->ch, on_first_msg, f) != 0) {
    first_unlink(f);
    tunnel_stream_close(st, NULL, NULL);
  }
}

static void on_stream(tunnel__mux *mux, tunnel_stream *st, void *ud) {
  srv_sess *sess = ud;
  (void)mux;
  first_start(sess->srv, sess, st);
}

static void on_mux_end(tunnel__mux *mux, int err, void *ud) {
  srv_sess *sess = ud;
  (void)mux;
  tunnel__log(&sess->srv->cfg.log, TUNNEL_LOG_DEBUG,
              "server: session ended: %s", tunnel_strerror(err));
  if (sess->ctl)
    ctl_destroy(sess->ctl); /* also destroys the session */
  else
    sess_destroy(sess);
}

static const tunnel__mux_callbacks mux_cb = {on_stream, NULL, on_mux_end};

static void sess_free_task(tunnel__task *t) {
  srv_sess *sess = CONTAINER(t, srv_sess, free_task);
  tunnel_server *srv = sess->srv;
  tunnel__free(MEM(srv), sess);
  srv->objects--;
  maybe_finish_close(srv);
}

static void sess_destroy(srv_sess *sess) {
  if (sess->dead)
    return;
  sess->dead = 1;
  tunnel_server *srv = sess->srv;
  if (sess->ctl) {
    srv_ctl *ctl = sess->ctl;
    sess->ctl = NULL;
    ctl->sess = NULL;
    ctl_destroy(ctl);
  }
  if (!sess->authed)
    srv->nanon--;
  if (sess->prev)
    sess->prev->next = sess->next;
  else
    srv->sessions = sess->next;
  if (sess->next)
    sess->next->prev = sess->prev;
  tunnel__mux_close(sess->mux);
  tunnel__sched_post(&srv->sched, &sess->free_task, sess_free_task);
}

static void conn_timer_closed(uv_handle_t *h) {
  srv_conn *c = h->data;
  tunnel_server *srv = c->srv;
  tunnel__free(MEM(srv), c);
  srv->handles--;
  maybe_finish_close(srv);
}

/* Ends the sniffing phase; `keep_tcp` when the handle was handed on. */
static void conn_done(srv_conn *c, int keep_tcp) {
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
  srv->nanon--;
  if (!keep_tcp) {
    uv_read_stop((uv_stream_t *)c->tcp);
    tunnel__tcp_close_free(MEM(srv), c->tcp);
  }
  c->tcp = NULL;
  uv_close((uv_handle_t *)&c->timer, conn_timer_closed);
}

static void conn_timeout(uv_timer_t *t) {
  srv_conn *c = t->data;
  tunnel__log(&c->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: connection silent for too long; closed");
  conn_done(c, 0);
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  srv_conn *c = h->data;
  (void)hint;
  *buf = uv_buf_init((char *)c->buf, sizeof c->buf);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  srv_conn *c = s->data;
  tunnel_server *srv = c->srv;
  (void)buf;
  if (nread == 0)
    return;
  if (nread < 0) {
    conn_done(c, 0);
    return;
  }
  uv_read_stop(s);
  uv_tcp_t *tcp = c->tcp;
  uint8_t first[sizeof c->buf];
  size_t n = (size_t)nread;
  memcpy(first, c->buf, n);
  conn_done(c, 1);
  if (first[0] == 0) {
    /* A yamux header starts with version 0; no frp message type is 0. */
    srv_sess *sess = tunnel__calloc(MEM(srv), 1, sizeof *sess);
    if (!sess) {
      tunnel__tcp_close_free(MEM(srv), tcp);
      return;
    }
    sess->srv = srv;
    sess->created = uv_now(srv->loop);
    if (tunnel__mux_new(&sess->mux, srv->loop, &srv->sched, &srv->cfg, 0, tcp,
                        &mux_cb, sess) != 0) {
      tunnel__free(MEM(srv), sess);
      return;
    }
    srv->objects++;
    srv->nanon++;
    sess->next = srv->sessions;
    if (srv->sessions)
      srv->sessions->prev = sess;
    srv->sessions = sess;
    if (tunnel__mux_start(sess->mux, first, n) != 0)
      sess_destroy(sess);
    return;
  }
  /* frp's non-mux mode: the connection itself carries one control or work
   * channel. */
  tunnel_stream *st = tunnel__stream_new_tcp(&srv->sched, MEM(srv), tcp,
                                             first, n);
  if (st)
    first_start(srv, NULL, st);
}

static void on_client(uv_stream_t *l, int status) {
  tunnel_server *srv = l->data;
  if (status < 0 || srv->closing)
    return;
  uv_tcp_t *tcp = tunnel__malloc(MEM(srv), sizeof *tcp);
  if (!tcp)
    return;
  uv_tcp_init(srv->loop, tcp);
  if (uv_accept(l, (uv_stream_t *)tcp) != 0 ||
      srv->nanon >= srv->cfg.max_clients) {
    /* Accepted and closed at once: unidentified connections are bounded
     * like clients, so a flood cannot exhaust the server. */
    tunnel__tcp_close_free(MEM(srv), tcp);
    return;
  }
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
  srv->nanon++;
  uv_timer_start(&c->timer, conn_timeout, SNIFF_TIMEOUT_MS, 0);
  if (uv_read_start((uv_stream_t *)tcp, conn_alloc, conn_read) != 0)
    conn_done(c, 0);
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
      ctl_destroy(ctl);
    }
  }
  for (srv_sess *sess = srv->sessions, *next; sess; sess = next) {
    next = sess->next;
    if (!sess->ctl && now - sess->created > SNIFF_TIMEOUT_MS) {
      tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
                  "server: session did not log in in time; closed");
      sess_destroy(sess);
    }
  }
  for (srv_drain *d = srv->drains, *next; d; d = next) {
    next = d->next;
    if (now - d->created > SNIFF_TIMEOUT_MS)
      drain_end(d);
  }
  for (srv_first *f = srv->firsts, *next; f; f = next) {
    next = f->next;
    if (now - f->created > SNIFF_TIMEOUT_MS) {
      tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
                  "server: channel sent no complete message in time; "
                  "closed");
      tunnel_stream *st = f->st;
      first_unlink(f);
      tunnel_stream_close(st, NULL, NULL);
    }
  }
}

/* ---------------------------------------------------------------- API */

static void sched_drained(void *ud) { maybe_finish_close(ud); }

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
  if (rc == 0 && !(srv->readbuf = tunnel__malloc(MEM(srv), READBUF_SIZE)))
    rc = TUNNEL_ENOMEM;
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
  uv_tcp_init(loop, &srv->listener);
  uv_timer_init(loop, &srv->sweep);
  srv->loop = loop;
  srv->listener.data = srv;
  srv->sweep.data = srv;
  srv->handles = 2;
  uv_timer_start(&srv->sweep, sweep, 1000, 1000);
  *out = srv;
  return 0;
}

int tunnel_server_listen(tunnel_server *srv, const char *host, uint16_t port) {
  if (!srv || !host)
    return TUNNEL_EINVAL;
  if (srv->listening || srv->closing)
    return TUNNEL_ESTATE;
  struct sockaddr_storage ss;
  int rc = tunnel__parse_addr(host, port, &ss);
  if (rc)
    return rc;
  rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&srv->listener, 511, on_client);
  if (rc)
    return tunnel__uv_err(rc);
  srv->listening = 1;
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
  int rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
  if (rc)
    return tunnel__uv_err(rc);
  char host[64];
  tunnel__format_addr((struct sockaddr *)&ss, host, sizeof host, port);
  return 0;
}

uint32_t tunnel_server_client_count(const tunnel_server *srv) {
  return srv ? srv->nctl : 0;
}

static void sched_closed(uv_handle_t *h) {
  tunnel_server *srv = CONTAINER(h, tunnel_server, sched.idle);
  tunnel_server_close_cb cb = srv->close_cb;
  void *ud = srv->close_ud;
  tunnel__mem mem = srv->cfg.mem;
  tunnel__free(&mem, srv->readbuf);
  tunnel__config_release(&srv->cfg);
  tunnel__free(&mem, srv);
  if (cb)
    cb(srv, ud);
}

static void maybe_finish_close(tunnel_server *srv) {
  if (!srv->closing || srv->handles || srv->splices.count || srv->objects ||
      srv->sched.refs || srv->sched.closing)
    return;
  tunnel__sched_close(&srv->sched, sched_closed);
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
  srv->listener.data = srv;
  uv_close((uv_handle_t *)&srv->listener, handle_closed);
  uv_close((uv_handle_t *)&srv->sweep, handle_closed);
  while (srv->conns)
    conn_done(srv->conns, 0);
  while (srv->firsts) {
    tunnel_stream *st = srv->firsts->st;
    first_unlink(srv->firsts);
    tunnel_stream_close(st, NULL, NULL);
  }
  while (srv->drains)
    drain_end(srv->drains);
  while (srv->sessions)
    sess_destroy(srv->sessions);
  while (srv->ctls) /* clients without a session: non-mux */
    ctl_destroy(srv->ctls);
  /* Non-mux joins are connections of their own: no session end reaches
   * them. */
  tunnel__splice_abort_all(&srv->splices);
  maybe_finish_close(srv);
  return 0;
}
