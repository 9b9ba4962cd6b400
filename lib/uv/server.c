/* tunnel_server: accepts client sessions, authenticates logins, opens the
 * public listeners of TCP proxies, and joins each visitor to a work stream
 * taken from its client's pool. */
#include <stdio.h>
#include <string.h>

#include "../config.h"
#include "../crypto.h"
#include "../log.h"
#include "../msg.h"
#include "anon.h"
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
  /* Peers not (yet) authenticated: sniffing connections, raw first-message
   * channels, refused raw channels draining, and mux sessions without a
   * login. Bounded by count (max_clients), per address and by bytes. */
  tunnel__anon_set anon;
  tunnel__anon_limits anon_limits;
  /* Bytes the server may be made to hold for all sessions' streams. */
  tunnel__ymx_budget budget;
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
  int authed; /* a client logged in over it (it left srv->anon) */
  tunnel__anon anon;
  char addr[TUNNEL__ADDR_MAX];
  uint32_t nfirst; /* streams opened before the login */
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
  tunnel__anon anon; /* raw connections only */
  char addr[TUNNEL__ADDR_MAX];
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
  tunnel__anon anon;
  uint8_t buf[256];
  int done;
} srv_conn;

/* A connection must identify itself, and a session or channel log in or
 * say what it is, within this time. */
#define SNIFF_TIMEOUT_MS 10000
/* What an unauthenticated peer costs, for the byte budget: a sniffing
 * connection its record; a raw channel its read buffer and a first
 * message; a session its read buffer and its allowed first streams. */
#define ANON_CONN_COST 1024u
#define ANON_RAW_COST (64u * 1024u + TUNNEL__DEFAULT_MAX_MESSAGE)
/* Longest proxy name accepted: names are echoed in replies and logs. */
#define MAX_PROXY_NAME 255

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
  char addr[TUNNEL__ADDR_MAX]; /* where the control connection came from */
  int64_t login_ts;   /* timestamp of the login that made this control */
  uint32_t requested; /* work connections asked for and not yet arrived */
  srv_proxy *proxies;
  uint32_t nproxies;
  srv_work *pool; /* oldest first */
  srv_work *pool_tail;
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
  if (ctl->dead)
    return TUNNEL_ECLOSED;
  int rc = tunnel__ctlchan_send(&ctl->ch, m);
  if (rc) {
    tunnel__log(&ctl->srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] cannot send %s: %s", ctl->run_id,
                tunnel__msg_type_name(m->type), tunnel_strerror(rc));
    return rc;
  }
  /* Replies are provoked by the client (a Pong per Ping): one that does
   * not read them is cut off, not buffered. */
  if (tunnel_stream_write_queue_size(ctl->st) > ctl->srv->cfg.max_control_backlog) {
    tunnel__log(&ctl->srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] client %s does not read its control stream "
                "(%zu bytes queued); dropped",
                ctl->run_id, ctl->addr,
                tunnel_stream_write_queue_size(ctl->st));
    ctl_destroy(ctl);
    return TUNNEL_ELIMIT;
  }
  return 0;
}

static void req_work_conn(srv_ctl *ctl) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_REQ_WORK_CONN);
  if (send_ctl(ctl, &m) == 0)
    ctl->requested++;
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
  tunnel__anon anon; /* raw connections only */
} srv_drain;

static void drain_end(srv_drain *d) {
  tunnel_server *srv = d->srv;
  if (d->prev)
    d->prev->next = d->next;
  else
    srv->drains = d->next;
  if (d->next)
    d->next->prev = d->prev;
  tunnel__anon_remove(&srv->anon, &d->anon);
  tunnel_stream_close(d->st, NULL, NULL);
  tunnel__free(MEM(srv), d);
}

static void drain_then_close(tunnel_stream *st, int status,
                             const uint8_t *data, size_t len, void *ud) {
  (void)st, (void)data, (void)len;
  if (status)
    drain_end(ud);
}

static void drain_shed(tunnel__anon *a) {
  drain_end(CONTAINER(a, srv_drain, anon));
}

static void drain_start(tunnel_server *srv, tunnel_stream *st,
                        const char *addr) {
  srv_drain *d = tunnel__calloc(MEM(srv), 1, sizeof *d);
  if (!d) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  d->srv = srv;
  d->st = st;
  d->created = uv_now(srv->loop);
  /* Mux streams are covered by their session's entry. */
  if (st->tcp)
    tunnel__anon_add(&srv->anon, &d->anon, addr, ANON_RAW_COST, drain_shed);
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

/* Oldest first: a connection slipped in late is the last to get a
 * visitor. */
static srv_work *pool_pop(srv_ctl *ctl) {
  srv_work *w = ctl->pool;
  if (w) {
    ctl->pool = w->next;
    if (!ctl->pool)
      ctl->pool_tail = NULL;
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
                "server: [%s] proxy %.64s refused: %s", ctl->run_id,
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
  if (strlen(name) > MAX_PROXY_NAME) {
    snprintf(err, sizeof err, "proxy name is longer than %d bytes",
             MAX_PROXY_NAME);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  if (ctl->nproxies >= cfg->max_proxies) {
    snprintf(err, sizeof err, "too many proxies for one client (limit %u)",
             cfg->max_proxies);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  if (!m->proxy_type || strcmp(m->proxy_type, "tcp") != 0) {
    snprintf(err, sizeof err, "proxy type [%.32s] is not supported",
             m->proxy_type ? m->proxy_type : "");
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  if (find_proxy(srv, name)) {
    snprintf(err, sizeof err, "proxy [%.64s] is already in use", name);
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
  ctl->nproxies++;
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
      ctl->nproxies--;
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
                         const char *addr, const char *why) {
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
              "server: login from %s refused: %s", addr, why);
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_LOGIN_RESP);
  tunnel__msg_set_str(MEM(srv), &r.version, TUNNEL_VERSION_STRING);
  tunnel__msg_set_str(MEM(srv), &r.error, why);
  send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  /* FIN after the answer; the client ends the session when it reads it. */
  tunnel_stream_shutdown(st, NULL, NULL);
  drain_start(srv, st, addr);
}

static int64_t now_seconds(void) {
  uv_timeval64_t tv;
  return uv_gettimeofday(&tv) == 0 ? tv.tv_sec : 0;
}

/* NULL when the key is right for the token and its timestamp is within the
 * allowed skew (a captured key is only good for that long), else why
 * not. */
static const char *check_key(tunnel_server *srv, const char *key,
                             int64_t ts) {
  const char *token = tunnel__config_token(&srv->cfg);
  if (!*token)
    return NULL;
  char want[33];
  if (!key || strlen(key) != 32 ||
      tunnel__privilege_key(token, strlen(token), ts, want) != 0 ||
      !tunnel__ct_equal(want, key, 32))
    return "authorization failed: token mismatch";
  uint32_t skew = srv->cfg.auth_max_skew_s;
  int64_t now = now_seconds();
  if (skew && (ts < now - (int64_t)skew || ts > now + (int64_t)skew))
    return "authorization failed: timestamp out of range (check the "
           "clock)";
  return NULL;
}

static void on_login(tunnel_server *srv, srv_sess *sess, tunnel_stream *st,
                     const char *addr, const tunnel__msg *m) {
  if (sess && sess->ctl) {
    refuse_login(srv, st, addr, "session already logged in");
    return;
  }
  const char *why = check_key(srv, m->privilege_key, m->timestamp);
  if (why) {
    refuse_login(srv, st, addr, why);
    return;
  }
  srv_ctl *old = find_ctl(srv, m->run_id);
  if (old) {
    /* The same client reconnecting replaces its session, but only with a
     * later login: a replayed one must not take the live session over. */
    if (*tunnel__config_token(&srv->cfg) && m->timestamp <= old->login_ts) {
      refuse_login(srv, st, addr,
                   "authorization failed: login not newer than the "
                   "session it would replace (replayed)");
      return;
    }
    ctl_destroy(old);
  }
  if (srv->nctl >= srv->cfg.max_clients) {
    refuse_login(srv, st, addr, "too many clients");
    return;
  }
  srv_ctl *ctl = tunnel__calloc(MEM(srv), 1, sizeof *ctl);
  if (!ctl) {
    refuse_login(srv, st, addr, "server out of memory");
    return;
  }
  ctl->srv = srv;
  ctl->sess = sess;
  ctl->st = st;
  ctl->login_ts = m->timestamp;
  snprintf(ctl->addr, sizeof ctl->addr, "%s", addr);
  ctl->pool_count = m->pool_count < 0 ? 0 : (uint32_t)m->pool_count;
  if (ctl->pool_count > MAX_POOL_COUNT)
    ctl->pool_count = MAX_POOL_COUNT;
  if (m->run_id && *m->run_id && strlen(m->run_id) < sizeof ctl->run_id)
    snprintf(ctl->run_id, sizeof ctl->run_id, "%s", m->run_id);
  else if (gen_run_id(ctl->run_id) != 0) {
    tunnel__free(MEM(srv), ctl);
    refuse_login(srv, st, addr, "server cannot generate a run id");
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
    tunnel__anon_remove(&srv->anon, &sess->anon);
  }
  ctl->next = srv->ctls;
  if (srv->ctls)
    srv->ctls->prev = ctl;
  srv->ctls = ctl;
  srv->nctl++;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] client logged in from %s (version %.32s, pool "
              "%u)",
              ctl->run_id, addr, m->version ? m->version : "?",
              ctl->pool_count);
  for (uint32_t i = 0; i < ctl->pool_count; i++)
    req_work_conn(ctl);
}

/* A pooled work stream should stay silent until StartWorkConn; anything
 * from it (reset, EOF, stray bytes) retires it. */
static void pooled_read(tunnel_stream *st, int status, const uint8_t *data,
                        size_t len, void *ud) {
  srv_ctl *ctl = ud;
  (void)status, (void)data, (void)len;
  srv_work *prev = NULL;
  for (srv_work **pp = &ctl->pool; *pp; prev = *pp, pp = &(*pp)->next) {
    if ((*pp)->st == st) {
      srv_work *w = *pp;
      *pp = w->next;
      if (ctl->pool_tail == w)
        ctl->pool_tail = prev;
      ctl->pooled--;
      tunnel__free(MEM(ctl->srv), w);
      break;
    }
  }
  tunnel_stream_close(st, NULL, NULL);
}

static void refuse_work_conn(tunnel_server *srv, tunnel_stream *st,
                             const char *addr, const char *run_id,
                             const char *why) {
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
              "server: work connection from %s for run id [%.64s] refused: %s",
              addr, run_id ? run_id : "", why);
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_START_WORK_CONN);
  tunnel__msg_set_str(MEM(srv), &r.error, "invalid NewWorkConn");
  send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  tunnel_stream_shutdown(st, NULL, NULL);
  drain_start(srv, st, addr);
}

/* Who may hand a client a work connection (which will carry a visitor):
 * a stream of the session the client logged in on is covered by that
 * login. A connection of its own (non-mux) must have been asked for, and
 * either carry a fresh key signed after the client's login, or come
 * unsigned from the address of the client's control connection (what a
 * stock frpc sends by default) unless signatures are required. */
static const char *work_conn_refusal(tunnel_server *srv, srv_sess *sess,
                                     srv_ctl *ctl, const char *addr,
                                     const tunnel__msg *m) {
  if (!ctl)
    return "unknown run id";
  if (sess)
    return ctl->sess == sess ? NULL : "stream of another session";
  if (!ctl->requested)
    return "not requested";
  const char *token = tunnel__config_token(&srv->cfg);
  int is_signed = m->privilege_key && *m->privilege_key;
  if (!*token)
    return NULL;
  if (!is_signed) {
    if (srv->cfg.require_signed_work)
      return "unsigned, and this server requires signed work connections";
    if (strcmp(addr, ctl->addr) != 0)
      return "unsigned, and not from the client's address";
    return NULL;
  }
  const char *why = check_key(srv, m->privilege_key, m->timestamp);
  if (why)
    return why;
  if (m->timestamp < ctl->login_ts)
    return "signed before the client's login (replayed)";
  return NULL;
}

static void on_new_work_conn(tunnel_server *srv, srv_sess *sess,
                             tunnel_stream *st, const char *addr,
                             const tunnel__msg *m) {
  srv_ctl *ctl = find_ctl(srv, m->run_id);
  const char *why = work_conn_refusal(srv, sess, ctl, addr, m);
  if (why) {
    refuse_work_conn(srv, st, addr, m->run_id, why);
    return;
  }
  if (ctl->requested)
    ctl->requested--;
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
  w->next = NULL;
  if (ctl->pool_tail)
    ctl->pool_tail->next = w;
  else
    ctl->pool = w;
  ctl->pool_tail = w;
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
  tunnel__anon_remove(&srv->anon, &f->anon);
  tunnel__ctlchan_free(&f->ch);
  tunnel__free(MEM(srv), f);
}

static int on_first_msg(tunnel__ctlchan *ch, int err, const tunnel__msg *m,
                        void *ud) {
  srv_first *f = ud;
  tunnel_server *srv = f->srv;
  srv_sess *sess = f->sess;
  tunnel_stream *st = f->st;
  char addr[TUNNEL__ADDR_MAX];
  memcpy(addr, f->addr, sizeof addr);
  (void)ch;
  first_unlink(f);
  if (err) {
    tunnel_stream_close(st, NULL, NULL);
    return 0;
  }
  switch (m->type) {
  case TUNNEL__MSG_LOGIN:
    on_login(srv, sess, st, addr, m);
    break;
  case TUNNEL__MSG_NEW_WORK_CONN:
    on_new_work_conn(srv, sess, st, addr, m);
    break;
  default:
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: unexpected first message %s from %s",
                tunnel__msg_type_name(m->type), addr);
    tunnel_stream_close(st, NULL, NULL);
    break;
  }
  return 0;
}

static void first_shed(tunnel__anon *a) {
  srv_first *f = CONTAINER(a, srv_first, anon);
  tunnel__log(&f->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: unauthenticated channel from %s shed to make room",
              f->addr);
  tunnel_stream *st = f->st;
  first_unlink(f);
  tunnel_stream_close(st, NULL, NULL);
}

/* Reads the first message of a new stream (mux) or connection (raw). */
static void first_start(tunnel_server *srv, srv_sess *sess,
                        tunnel_stream *st, const char *addr) {
  srv_first *f = tunnel__calloc(MEM(srv), 1, sizeof *f);
  if (!f) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  f->srv = srv;
  f->sess = sess;
  f->st = st;
  f->created = uv_now(srv->loop);
  snprintf(f->addr, sizeof f->addr, "%s", addr);
  tunnel__ctlchan_init(&f->ch, st, MEM(srv), srv->cfg.max_message_size);
  f->next = srv->firsts;
  if (srv->firsts)
    srv->firsts->prev = f;
  srv->firsts = f;
  if (!sess)
    tunnel__anon_add(&srv->anon, &f->anon, addr, ANON_RAW_COST, first_shed);
  if (tunnel__ctlchan_read(&f->ch, on_first_msg, f) != 0) {
    first_unlink(f);
    tunnel_stream_close(st, NULL, NULL);
  }
}

static void on_stream(tunnel__mux *mux, tunnel_stream *st, void *ud) {
  srv_sess *sess = ud;
  (void)mux;
  /* Before its login a session needs one stream; a few spare allow for a
   * retry, more are only a way to make the server hold memory. */
  if (!sess->authed && sess->nfirst >= sess->srv->cfg.unauth_streams) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  if (!sess->authed)
    sess->nfirst++;
  first_start(sess->srv, sess, st, sess->addr);
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
  tunnel__anon_remove(&srv->anon, &sess->anon);
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
  tunnel__anon_remove(&srv->anon, &c->anon);
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
              "server: connection from %s silent for too long; closed",
              c->anon.addr);
  conn_done(c, 0);
}

static void conn_shed(tunnel__anon *a) {
  srv_conn *c = CONTAINER(a, srv_conn, anon);
  tunnel__log(&c->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: unidentified connection from %s shed to make room",
              a->addr);
  conn_done(c, 0);
}

static void sess_shed(tunnel__anon *a) {
  srv_sess *sess = CONTAINER(a, srv_sess, anon);
  tunnel__log(&sess->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: session from %s not logged in yet shed to make room",
              a->addr);
  sess_destroy(sess);
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
  return 64u * 1024u +
         srv->cfg.unauth_streams * (srv->cfg.max_message_size + 2048u);
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
  char addr[TUNNEL__ADDR_MAX];
  memcpy(addr, c->anon.addr, sizeof addr);
  conn_done(c, 1);
  uint32_t cost = first[0] == 0 ? sess_cost(srv) : ANON_RAW_COST;
  anon_make_room(srv, addr, cost);
  if (first[0] == 0) {
    /* A yamux header starts with version 0; no frp message type is 0. */
    srv_sess *sess = tunnel__calloc(MEM(srv), 1, sizeof *sess);
    if (!sess) {
      tunnel__tcp_close_free(MEM(srv), tcp);
      return;
    }
    sess->srv = srv;
    sess->created = uv_now(srv->loop);
    if (tunnel__mux_new_budgeted(&sess->mux, srv->loop, &srv->sched,
                                 &srv->cfg, 0, tcp, &srv->budget, &mux_cb,
                                 sess) != 0) {
      tunnel__free(MEM(srv), sess);
      return;
    }
    srv->objects++;
    snprintf(sess->addr, sizeof sess->addr, "%s", addr);
    tunnel__anon_add(&srv->anon, &sess->anon, addr, cost, sess_shed);
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
    first_start(srv, NULL, st, addr);
}

static void on_client(uv_stream_t *l, int status) {
  tunnel_server *srv = l->data;
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
  anon_make_room(srv, addr, ANON_CONN_COST);
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
  tunnel__anon_add(&srv->anon, &c->anon, addr, ANON_CONN_COST, conn_shed);
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
    /* Window withheld for the memory budget goes out as budget frees. */
    tunnel__mux_regrant(sess->mux);
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
  srv->budget.limit = srv->cfg.total_buffer;
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
