/* tunnel_client: logs in to a server, registers proxies, keeps the work
 * stream pool filled, and on StartWorkConn joins each stream to the local
 * service or hands it to the program. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "../crypto.h"
#include "../log.h"
#include "../msg.h"
#include "ctlchan.h"
#include "dial.h"
#include "handle.h"
#include "link.h"
#include "mux.h"
#include "splice.h"
#include "stream.h"
#include "tlsconf.h"
#include "uverr.h"

#define READBUF_SIZE (64u * 1024u)
/* The frp protocol level we speak, sent as Login.version: stock frps
 * servers check it for compatibility. */
#define FRP_PROTOCOL_VERSION "0.61.0"

enum { C_IDLE, C_CONNECTING, C_LOGIN, C_READY, C_DOWN };

typedef struct cl_work cl_work;

struct tunnel_client {
  uv_loop_t *loop;
  struct tunnel_config cfg;
  tunnel__sched sched;
  uv_timer_t hb_timer;
  uv_timer_t login_timer; /* from connect to LoginResp */
  tunnel__mux *mux;     /* mux mode */
  uv_tcp_t *ctl_tcp;    /* non-mux mode: control connection being dialled */
  tunnel__dial *dial;
  char *host;
  uint16_t port;
  int state;
  tunnel_stream *ctl_st;
  tunnel__ctlchan ch;
  int ch_live;
  char run_id[64];
  tunnel_proxy *proxies;
  cl_work *works; /* waiting for StartWorkConn or a local connection */
  /* Non-mux streams handed to the program: they fail with the session,
   * as multiplexed ones do. */
  tunnel__stream_list handed;
  uint32_t nworks;
  uint8_t *readbuf;
  tunnel_client_state_cb state_cb;
  void *state_ud;
  uint64_t last_heard; /* loop time (ms) of the last control message */
  uint32_t handles;    /* uv handles owned directly */
  tunnel__splice_set splices;
  uint32_t objects; /* work records and muxes not yet freed */
  tunnel__tls_conf *tls; /* NULL: plain connections */
  int tls_logged;        /* the first handshake was logged */
  int closing;
  tunnel_client_close_cb close_cb;
  void *close_ud;
};

struct tunnel_proxy {
  tunnel_client *c;
  tunnel_proxy *next;
  char *name;
  int type;
  uint16_t remote_port;
  /* HTTP/HTTPS options, kept as the NewProxy fields they travel in. */
  tunnel__msg opts;
  char *local_host;
  uint16_t local_port;
  tunnel_proxy_status_cb status_cb;
  void *status_ud;
  tunnel_proxy_accept_cb accept_cb;
  void *accept_ud;
  int started;
  int sent; /* NewProxy sent in the current session */
};

struct cl_work {
  tunnel_client *c;
  cl_work *next;
  tunnel_stream *st;
  tunnel__ctlchan ch;
  int ch_live;
  uv_tcp_t *local;
  tunnel__dial *dial;
  uv_tcp_t *conn;        /* non-mux: this work stream's own connection */
  tunnel__dial *conn_dial;
  tunnel__task free_task;
};

#define CONTAINER(ptr, type, field)                                            \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

static void maybe_finish_close(tunnel_client *c);
static void session_down(tunnel_client *c, int err, const char *why);

static const tunnel__mem *MEM(tunnel_client *c) { return &c->cfg.mem; }

/* ---------------------------------------------------------- messages */

static int64_t now_seconds(void) {
  uv_timeval64_t tv;
  return uv_gettimeofday(&tv) == 0 ? tv.tv_sec : 0;
}

/* Fills privilege_key and timestamp for the current time. */
static int sign(tunnel_client *c, tunnel__msg *m) {
  const char *token = tunnel__config_token(&c->cfg);
  char key[33];
  m->timestamp = now_seconds();
  int rc = tunnel__privilege_key(token, strlen(token), m->timestamp, key);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(c), &m->privilege_key, key);
  tunnel__wipe(key, sizeof key);
  return rc;
}

static int send_ctl(tunnel_client *c, const tunnel__msg *m) {
  if (!c->ch_live)
    return TUNNEL_ESTATE;
  int rc = tunnel__ctlchan_send(&c->ch, m);
  if (rc)
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN, "client: cannot send %s: %s",
                tunnel__msg_type_name(m->type), tunnel_strerror(rc));
  return rc;
}

static const char *type_name(int type) {
  switch (type) {
  case TUNNEL_PROXY_HTTP:
    return "http";
  case TUNNEL_PROXY_HTTPS:
    return "https";
  default:
    return "tcp";
  }
}

static int send_new_proxy(tunnel_proxy *p) {
  tunnel_client *c = p->c;
  /* The options are borrowed into the message for the encoding only. */
  tunnel__msg m = p->opts;
  m.proxy_name = p->name;
  m.proxy_type = (char *)type_name(p->type);
  m.remote_port = p->type == TUNNEL_PROXY_TCP ? p->remote_port : 0;
  int rc = send_ctl(c, &m);
  if (rc == 0)
    p->sent = 1;
  return rc;
}

static tunnel_proxy *find_proxy(tunnel_client *c, const char *name) {
  for (tunnel_proxy *p = c->proxies; p && name; p = p->next)
    if (strcmp(p->name, name) == 0)
      return p;
  return NULL;
}

static void on_proxy_resp(tunnel_client *c, const tunnel__msg *m) {
  tunnel_proxy *p = find_proxy(c, m->proxy_name);
  if (!p || !p->status_cb)
    return;
  if (m->error && *m->error) {
    p->status_cb(p, TUNNEL_EREFUSED, m->error, p->status_ud);
    return;
  }
  const char *ra = m->remote_addr ? m->remote_addr : "";
  if (p->type != TUNNEL_PROXY_TCP) {
    /* Names the server routes to this proxy: "NAME[:PORT][,NAME...]". */
    p->status_cb(p, 0, ra, p->status_ud);
    return;
  }
  /* frp answers ":PORT" (the server's bind address is not meaningful to
   * the client): the public host is the one we reached the server at. */
  const char *colon = strrchr(ra, ':');
  const char *port = colon ? colon + 1 : ra;
  char addr[300];
  if (strchr(c->host, ':'))
    snprintf(addr, sizeof addr, "[%s]:%s", c->host, port);
  else
    snprintf(addr, sizeof addr, "%s:%s", c->host, port);
  p->status_cb(p, 0, addr, p->status_ud);
}

/* ------------------------------------------------------- work streams */

static void work_free_task(tunnel__task *t) {
  cl_work *w = CONTAINER(t, cl_work, free_task);
  tunnel_client *c = w->c;
  if (w->ch_live)
    tunnel__ctlchan_free(&w->ch);
  tunnel__free(MEM(c), w);
  c->objects--;
  maybe_finish_close(c);
}

static void work_unlink(cl_work *w) {
  tunnel_client *c = w->c;
  for (cl_work **pp = &c->works; *pp; pp = &(*pp)->next) {
    if (*pp == w) {
      *pp = w->next;
      c->nworks--;
      break;
    }
  }
  tunnel__sched_post(&c->sched, &w->free_task, work_free_task);
}

static void splice_gone(void *ud) { maybe_finish_close(ud); }

static void local_tcp_closed(uv_handle_t *h) {
  tunnel_client *c = h->data;
  tunnel__free(MEM(c), h);
  c->handles--;
  maybe_finish_close(c);
}

static void local_connected(tunnel__dial *d, int status, void *ud) {
  cl_work *w = ud;
  tunnel_client *c = w->c;
  (void)d;
  w->dial = NULL;
  if (status) {
    /* The visitor learns at once: its stream is reset, so the server
     * closes its connection. */
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: local service unreachable: %s",
                tunnel_strerror(status));
    w->local->data = c;
    uv_close((uv_handle_t *)w->local, local_tcp_closed);
    tunnel_stream_close(w->st, NULL, NULL);
  } else {
    c->handles--; /* the splice owns the handle now */
    tunnel__splice_start(MEM(c), &c->cfg.log, w->local, w->st, NULL, 0,
                         c->readbuf, READBUF_SIZE, &c->splices, splice_gone,
                         c);
  }
  w->local = NULL;
  w->st = NULL;
  work_unlink(w);
}

static int on_start_work(tunnel__ctlchan *ch, int err, const tunnel__msg *m,
                         void *ud) {
  cl_work *w = ud;
  tunnel_client *c = w->c;
  (void)ch;
  tunnel__ctlchan_free(&w->ch);
  w->ch_live = 0;
  tunnel_proxy *p = NULL;
  if (!err && m->type == TUNNEL__MSG_START_WORK_CONN && !(m->error && *m->error))
    p = find_proxy(c, m->proxy_name);
  if (!p) {
    if (err != TUNNEL_ECLOSED)
      tunnel__log(&c->cfg.log, TUNNEL_LOG_DEBUG,
                  "client: work stream dropped (%s%s)",
                  err ? tunnel_strerror(err) : "no such proxy",
                  !err && m->error ? m->error : "");
    tunnel_stream_close(w->st, NULL, NULL);
    w->st = NULL;
    work_unlink(w);
    return 0;
  }
  if (!p->local_host) {
    tunnel_stream *st = w->st;
    w->st = NULL;
    work_unlink(w);
    if (st->link)
      tunnel__stream_list_add(&c->handed, st);
    if (p->accept_cb)
      p->accept_cb(p, st, p->accept_ud);
    else
      tunnel_stream_close(st, NULL, NULL);
    return 0;
  }
  w->local = tunnel__malloc(MEM(c), sizeof *w->local);
  int rc = w->local ? 0 : TUNNEL_ENOMEM;
  if (rc == 0) {
    uv_tcp_init(c->loop, w->local);
    c->handles++;
    rc = tunnel__dial_start(&w->dial, c->loop, MEM(c), w->local,
                            p->local_host, p->local_port, local_connected, w);
  }
  if (rc)
    local_connected(NULL, rc, w);
  return 0;
}

/* Sends NewWorkConn on a fresh stream and waits for StartWorkConn. */
static void work_begin(cl_work *w, tunnel_stream *st) {
  tunnel_client *c = w->c;
  w->st = st;
  tunnel__ctlchan_init(&w->ch, st, MEM(c), c->cfg.max_message_size);
  w->ch_live = 1;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_WORK_CONN);
  int rc = tunnel__msg_set_str(MEM(c), &m.run_id, c->run_id);
  if (rc == 0)
    rc = sign(c, &m);
  if (rc == 0)
    rc = tunnel__ctlchan_send(&w->ch, &m);
  tunnel__msg_clear(MEM(c), &m);
  if (rc == 0)
    rc = tunnel__ctlchan_read(&w->ch, on_start_work, w);
  if (rc) {
    tunnel_stream_close(st, NULL, NULL);
    w->st = NULL;
    work_unlink(w);
  }
}

/* The link to the server over a connected handle: TLS when configured.
 * Owns `tcp` from now on. */
static int open_link(tunnel_client *c, uv_tcp_t *tcp, tunnel__link **out) {
  if (!c->tls)
    return tunnel__link_new_tcp(out, &c->sched, MEM(c), tcp);
  tunnel__tls *t;
  const char *name = c->cfg.tls.server_name ? c->cfg.tls.server_name : c->host;
  int rc = tunnel__tls_new(&t, c->tls, name);
  if (rc) {
    tunnel__tcp_close_free(MEM(c), tcp);
    return rc;
  }
  return tunnel__link_new_tls(out, &c->sched, MEM(c), tcp, t,
                              c->cfg.tls.marker, NULL, 0);
}

/* The link of the current session. */
static tunnel__link *session_link(tunnel_client *c) {
  if (c->mux)
    return tunnel__mux_link(c->mux);
  return c->ctl_st ? c->ctl_st->link : NULL;
}

/* Why a link failed, for the program: the TLS reason when there is one. */
static const char *link_reason(tunnel__link *l, const char *fallback) {
  if (l && l->tls && *tunnel__tls_error_text(l->tls))
    return tunnel__tls_error_text(l->tls);
  return fallback;
}

static void work_connected(tunnel__dial *d, int status, void *ud) {
  cl_work *w = ud;
  tunnel_client *c = w->c;
  (void)d;
  w->conn_dial = NULL;
  uv_tcp_t *tcp = w->conn;
  w->conn = NULL;
  if (status) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: cannot open a work connection: %s",
                tunnel_strerror(status));
    tunnel__tcp_close_free(MEM(c), tcp);
    work_unlink(w);
    return;
  }
  tunnel__link *link;
  tunnel_stream *st = NULL;
  if (open_link(c, tcp, &link) == 0)
    st = tunnel__stream_new_link(&c->sched, MEM(c), link, NULL, 0);
  if (!st) {
    work_unlink(w);
    return;
  }
  work_begin(w, st);
}

static void new_work(tunnel_client *c) {
  /* Each request costs a stream or a socket: a server asking for more
   * than the limit is not obeyed. */
  if (c->nworks >= c->cfg.max_work_conns) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: server asked for more than %u pending work "
                "connections; request ignored",
                c->cfg.max_work_conns);
    return;
  }
  cl_work *w = tunnel__calloc(MEM(c), 1, sizeof *w);
  if (!w)
    return;
  w->c = c;
  c->objects++;
  w->next = c->works;
  c->works = w;
  c->nworks++;
  if (c->mux) {
    tunnel_stream *st;
    if (tunnel__mux_open(c->mux, &st) != 0) {
      work_unlink(w);
      return;
    }
    work_begin(w, st);
    return;
  }
  /* Non-mux: every work stream is a connection of its own. */
  w->conn = tunnel__malloc(MEM(c), sizeof *w->conn);
  if (!w->conn) {
    work_unlink(w);
    return;
  }
  uv_tcp_init(c->loop, w->conn);
  if (tunnel__dial_start(&w->conn_dial, c->loop, MEM(c), w->conn, c->host,
                         c->port, work_connected, w) != 0) {
    tunnel__tcp_close_free(MEM(c), w->conn);
    w->conn = NULL;
    work_unlink(w);
  }
}

/* ------------------------------------------------------------ control */

static int on_ctl_msg(tunnel__ctlchan *ch, int err, const tunnel__msg *m,
                      void *ud) {
  tunnel_client *c = ud;
  (void)ch;
  if (err) {
    session_down(c, err == TUNNEL_EEOF ? TUNNEL_ECONNRESET : err,
                 link_reason(session_link(c), "control stream ended"));
    return 0;
  }
  c->last_heard = uv_now(c->loop);
  switch (m->type) {
  case TUNNEL__MSG_REQ_WORK_CONN:
    new_work(c);
    break;
  case TUNNEL__MSG_NEW_PROXY_RESP:
    on_proxy_resp(c, m);
    break;
  case TUNNEL__MSG_PONG:
    if (m->error && *m->error) {
      session_down(c, TUNNEL_EAUTH, m->error);
      return 0;
    }
    break;
  default:
    tunnel__log(&c->cfg.log, TUNNEL_LOG_DEBUG, "client: ignoring %s",
                tunnel__msg_type_name(m->type));
    break;
  }
  return c->state == C_READY;
}

static void heartbeat(uv_timer_t *t) {
  tunnel_client *c = t->data;
  if (c->state != C_READY)
    return;
  uint64_t timeout = (uint64_t)c->cfg.heartbeat_timeout_s * 1000u;
  if (timeout && uv_now(c->loop) - c->last_heard > timeout) {
    session_down(c, TUNNEL_ETIMEDOUT, "server stopped answering");
    return;
  }
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_PING);
  if (sign(c, &m) == 0)
    send_ctl(c, &m);
  tunnel__msg_clear(MEM(c), &m);
}

static int on_login_resp(tunnel__ctlchan *ch, int err, const tunnel__msg *m,
                         void *ud) {
  tunnel_client *c = ud;
  (void)ch;
  if (err) {
    session_down(c, err == TUNNEL_EEOF ? TUNNEL_ECONNRESET : err,
                 link_reason(session_link(c),
                             "connection closed during login"));
    return 0;
  }
  if (m->type != TUNNEL__MSG_LOGIN_RESP) {
    session_down(c, TUNNEL_EPROTO, "unexpected answer to login");
    return 0;
  }
  if (m->error && *m->error) {
    session_down(c, TUNNEL_EAUTH, m->error);
    return 0;
  }
  snprintf(c->run_id, sizeof c->run_id, "%s", m->run_id ? m->run_id : "");
  tunnel__link *l = session_link(c);
  if (l && l->tls)
    tunnel__log(&c->cfg.log, TUNNEL_LOG_INFO,
                "client: TLS %s, %s handshake", tunnel__tls_ciphersuite(l->tls),
                tunnel__tls_resumed(l->tls) ? "resumed" : "full");
  /* Everything after LoginResp is encrypted, both ways. */
  int rc = tunnel__ctlchan_encrypt(&c->ch, c->cfg.token);
  if (rc == 0)
    rc = tunnel__ctlchan_read(&c->ch, on_ctl_msg, c);
  if (rc) {
    session_down(c, rc, "cannot start the control channel");
    return 0;
  }
  c->state = C_READY;
  uv_timer_stop(&c->login_timer);
  c->last_heard = uv_now(c->loop);
  tunnel__log(&c->cfg.log, TUNNEL_LOG_INFO, "client: logged in as %s",
              c->run_id);
  for (tunnel_proxy *p = c->proxies; p; p = p->next)
    if (p->started && !p->sent)
      send_new_proxy(p);
  if (c->cfg.heartbeat_interval_s) {
    uint64_t ms = (uint64_t)c->cfg.heartbeat_interval_s * 1000u;
    uv_timer_start(&c->hb_timer, heartbeat, ms, ms);
  }
  if (c->state_cb)
    c->state_cb(c, 0, c->run_id, c->state_ud);
  return 0;
}

static void send_login(tunnel_client *c) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  char host[256] = "";
  size_t hlen = sizeof host;
  uv_utsname_t un;
  int rc = tunnel__msg_set_str(MEM(c), &m.version, FRP_PROTOCOL_VERSION);
  if (rc == 0 && uv_os_gethostname(host, &hlen) == 0)
    rc = tunnel__msg_set_str(MEM(c), &m.hostname, host);
  if (rc == 0 && uv_os_uname(&un) == 0) {
    for (char *q = un.sysname; *q; q++)
      if (*q >= 'A' && *q <= 'Z')
        *q = (char)(*q - 'A' + 'a');
    rc = tunnel__msg_set_str(MEM(c), &m.os, un.sysname);
    if (rc == 0)
      rc = tunnel__msg_set_str(MEM(c), &m.arch, un.machine);
  }
  if (rc == 0 && *c->run_id)
    rc = tunnel__msg_set_str(MEM(c), &m.run_id, c->run_id);
  m.pool_count = c->cfg.pool_count;
  if (rc == 0)
    rc = sign(c, &m);
  if (rc == 0)
    rc = tunnel__ctlchan_send(&c->ch, &m);
  tunnel__msg_clear(MEM(c), &m);
  if (rc == 0)
    rc = tunnel__ctlchan_read(&c->ch, on_login_resp, c);
  if (rc)
    session_down(c, rc, "cannot send login");
}

static void on_mux_end(tunnel__mux *m, int err, void *ud) {
  tunnel_client *c = ud;
  session_down(c, err == TUNNEL_EEOF ? TUNNEL_ECONNRESET : err,
               link_reason(tunnel__mux_link(m),
                           "connection to the server lost"));
}

static void on_mux_stream(tunnel__mux *m, tunnel_stream *st, void *ud) {
  (void)m, (void)ud;
  /* Servers never open streams towards clients in frp's protocol. */
  tunnel_stream_close(st, NULL, NULL);
}

static const tunnel__mux_callbacks mux_cb = {on_mux_stream, NULL, on_mux_end};

static void server_connected(tunnel__dial *d, int status, void *ud) {
  tunnel_client *c = ud;
  (void)d;
  c->dial = NULL;
  if (status) {
    session_down(c, status, "cannot connect to the server");
    return;
  }
  int rc = 0;
  tunnel__link *link = NULL;
  if (c->mux) {
    rc = c->tls ? open_link(c, tunnel__mux_tcp(c->mux), &link) : 0;
    if (rc == 0)
      rc = link ? tunnel__mux_start_on(c->mux, link, NULL, 0)
                : tunnel__mux_start(c->mux, NULL, 0);
    if (rc == 0)
      rc = tunnel__mux_open(c->mux, &c->ctl_st);
  } else {
    uv_tcp_t *tcp = c->ctl_tcp;
    c->ctl_tcp = NULL;
    rc = open_link(c, tcp, &link);
    if (rc == 0 &&
        !(c->ctl_st = tunnel__stream_new_link(&c->sched, MEM(c), link, NULL,
                                              0)))
      rc = TUNNEL_ENOMEM;
  }
  if (rc) {
    session_down(c, rc, "cannot start the session");
    return;
  }
  if (c->ch_live) /* from the previous session */
    tunnel__ctlchan_free(&c->ch);
  tunnel__ctlchan_init(&c->ch, c->ctl_st, MEM(c), c->cfg.max_message_size);
  c->ch_live = 1;
  c->state = C_LOGIN;
  send_login(c);
}

/* Ends the current session (never the client): streams handed to the
 * program fail, pending work is dropped, the program hears why. */
static void session_down(tunnel_client *c, int err, const char *why) {
  if (c->state == C_DOWN || c->state == C_IDLE)
    return;
  c->state = C_DOWN;
  uv_timer_stop(&c->hb_timer);
  uv_timer_stop(&c->login_timer);
  if (c->dial) {
    tunnel__dial_cancel(c->dial);
    c->dial = NULL;
  }
  if (c->ctl_tcp) {
    tunnel__tcp_close_free(MEM(c), c->ctl_tcp);
    c->ctl_tcp = NULL;
  }
  while (c->works) {
    cl_work *w = c->works;
    c->works = w->next;
    c->nworks--;
    if (w->dial) {
      tunnel__dial_cancel(w->dial);
      w->dial = NULL;
    }
    if (w->local) {
      w->local->data = c;
      uv_close((uv_handle_t *)w->local, local_tcp_closed);
      w->local = NULL;
    }
    if (w->conn_dial) {
      tunnel__dial_cancel(w->conn_dial);
      w->conn_dial = NULL;
    }
    if (w->conn) {
      tunnel__tcp_close_free(MEM(c), w->conn);
      w->conn = NULL;
    }
    if (w->st)
      tunnel_stream_close(w->st, NULL, NULL);
    w->st = NULL;
    tunnel__sched_post(&c->sched, &w->free_task, work_free_task);
  }
  if (c->ctl_st) {
    tunnel_stream_close(c->ctl_st, NULL, NULL);
    c->ctl_st = NULL;
  }
  if (c->mux) {
    tunnel__mux_close(c->mux);
    c->mux = NULL;
  }
  /* A session's visitors end with it, whatever carries them. */
  tunnel__splice_abort_all(&c->splices);
  tunnel__stream_list_fail_all(&c->handed, TUNNEL_ECLOSED);
  for (tunnel_proxy *p = c->proxies; p; p = p->next)
    p->sent = 0;
  /* The state callback is how the program hears of this; the log only
   * records it. */
  tunnel__log(&c->cfg.log,
              c->closing || c->state_cb ? TUNNEL_LOG_INFO : TUNNEL_LOG_WARN,
              "client: %s: %s", why, tunnel_strerror(err));
  int tls_err = err == TUNNEL_ETLS || err == TUNNEL_ECERTUNTRUSTED ||
                err == TUNNEL_ECERTNAME || err == TUNNEL_ECERTPIN;
  if (!c->closing && c->state_cb)
    c->state_cb(c, err, err == TUNNEL_EAUTH || tls_err ? why : "",
                c->state_ud);
}

/* ---------------------------------------------------------------- API */

static void sched_drained(void *ud) { maybe_finish_close(ud); }

int tunnel_client_new(tunnel_client **out, uv_loop_t *loop,
                      const tunnel_config *cfg) {
  if (!out || !loop)
    return TUNNEL_EINVAL;
  *out = NULL;
  struct tunnel_config defaults;
  if (!cfg) {
    tunnel__config_defaults(&defaults);
    cfg = &defaults;
  }
  tunnel_client *c = tunnel__calloc(&cfg->mem, 1, sizeof *c);
  if (!c)
    return TUNNEL_ENOMEM;
  int rc = tunnel__config_copy(&c->cfg, cfg);
  if (rc == 0 && !(c->readbuf = tunnel__malloc(MEM(c), READBUF_SIZE)))
    rc = TUNNEL_ENOMEM;
  if (rc == 0 && tunnel__tlsconf_wanted(&c->cfg, 0))
    rc = tunnel__tlsconf_new(&c->tls, &c->cfg, &c->cfg.log, 0);
  if (rc) {
    tunnel__free(MEM(c), c->readbuf);
    tunnel__config_release(&c->cfg);
    tunnel__free(&cfg->mem, c);
    return rc;
  }
  c->loop = loop;
  tunnel__sched_init(&c->sched, loop);
  c->sched.drained = sched_drained;
  c->sched.drained_ud = c;
  uv_timer_init(loop, &c->hb_timer);
  c->hb_timer.data = c;
  uv_timer_init(loop, &c->login_timer);
  c->login_timer.data = c;
  c->handles = 2;
  *out = c;
  return 0;
}

int tunnel_client_set_state_cb(tunnel_client *c, tunnel_client_state_cb cb,
                               void *ud) {
  if (!c)
    return TUNNEL_EINVAL;
  c->state_cb = cb;
  c->state_ud = ud;
  return 0;
}

/* Every wait for the server has a deadline: one that accepts and never
 * answers must not hold the client forever. */
static void login_timeout(uv_timer_t *t) {
  tunnel_client *c = t->data;
  if (c->state == C_CONNECTING || c->state == C_LOGIN)
    session_down(c, TUNNEL_ETIMEDOUT,
                 c->state == C_CONNECTING ? "cannot connect to the server"
                                          : "no answer to login");
}

int tunnel_client_connect(tunnel_client *c, const char *host, uint16_t port) {
  if (!c || !host || !*host || port == 0)
    return TUNNEL_EINVAL;
  if (c->closing || (c->state != C_IDLE && c->state != C_DOWN))
    return TUNNEL_ESTATE;
  char *h = tunnel__strdup(MEM(c), host);
  if (!h)
    return TUNNEL_ENOMEM;
  uv_tcp_t *tcp = tunnel__malloc(MEM(c), sizeof *tcp);
  if (!tcp) {
    tunnel__free(MEM(c), h);
    return TUNNEL_ENOMEM;
  }
  uv_tcp_init(c->loop, tcp);
  tunnel__mux *mux = NULL;
  int rc = 0;
  if (c->cfg.tcp_mux)
    rc = tunnel__mux_new(&mux, c->loop, &c->sched, &c->cfg, 1, tcp, &mux_cb,
                         c);
  if (rc == 0) {
    rc = tunnel__dial_start(&c->dial, c->loop, MEM(c), tcp, h, port,
                            server_connected, c);
    if (rc && mux)
      tunnel__mux_close(mux);
    else if (rc)
      tunnel__tcp_close_free(MEM(c), tcp);
  }
  if (rc) {
    tunnel__free(MEM(c), h);
    return rc;
  }
  if (!mux)
    c->ctl_tcp = tcp;
  tunnel__free(MEM(c), c->host);
  c->host = h;
  c->port = port;
  c->mux = mux;
  c->state = C_CONNECTING;
  uv_timer_start(&c->login_timer, login_timeout, c->cfg.login_timeout_ms, 0);
  return 0;
}

static void proxy_free(tunnel_proxy *p) {
  tunnel_client *c = p->c;
  tunnel__msg_clear(MEM(c), &p->opts);
  tunnel__free(MEM(c), p->name);
  tunnel__free(MEM(c), p->local_host);
  tunnel__free(MEM(c), p);
}

static void sched_closed(uv_handle_t *h) {
  tunnel_client *c = CONTAINER(h, tunnel_client, sched.idle);
  tunnel_client_close_cb cb = c->close_cb;
  void *ud = c->close_ud;
  tunnel__mem mem = c->cfg.mem;
  tunnel__free(&mem, c->readbuf);
  tunnel__free(&mem, c->host);
  tunnel__tls_conf_free(c->tls); /* every link has ended */
  tunnel__config_release(&c->cfg);
  tunnel__free(&mem, c);
  if (cb)
    cb(c, ud);
}

static void maybe_finish_close(tunnel_client *c) {
  if (!c->closing || c->handles || c->splices.count || c->objects ||
      c->sched.refs || c->sched.closing)
    return;
  tunnel__sched_close(&c->sched, sched_closed);
}

static void timer_closed(uv_handle_t *h) {
  tunnel_client *c = h->data;
  c->handles--;
  maybe_finish_close(c);
}

int tunnel_client_close(tunnel_client *c, tunnel_client_close_cb cb,
                        void *ud) {
  if (!c)
    return TUNNEL_EINVAL;
  if (c->closing)
    return TUNNEL_ESTATE;
  c->closing = 1;
  c->close_cb = cb;
  c->close_ud = ud;
  session_down(c, TUNNEL_ECANCELED, "client closed");
  /* Non-mux joins are connections of their own: no session end reaches
   * them. */
  tunnel__splice_abort_all(&c->splices);
  if (c->ch_live) {
    tunnel__ctlchan_free(&c->ch);
    c->ch_live = 0;
  }
  while (c->proxies) {
    tunnel_proxy *p = c->proxies;
    c->proxies = p->next;
    proxy_free(p);
  }
  uv_close((uv_handle_t *)&c->hb_timer, timer_closed);
  uv_close((uv_handle_t *)&c->login_timer, timer_closed);
  return 0;
}

int tunnel_proxy_new(tunnel_proxy **out, tunnel_client *c, const char *name,
                     int type) {
  if (!out || !c || !name || !*name)
    return TUNNEL_EINVAL;
  *out = NULL;
  if (type != TUNNEL_PROXY_TCP && type != TUNNEL_PROXY_HTTP &&
      type != TUNNEL_PROXY_HTTPS)
    return TUNNEL_ENOTSUP;
  if (c->closing)
    return TUNNEL_ESTATE;
  if (find_proxy(c, name))
    return TUNNEL_EEXIST;
  tunnel_proxy *p = tunnel__calloc(MEM(c), 1, sizeof *p);
  if (!p || !(p->name = tunnel__strdup(MEM(c), name))) {
    tunnel__free(MEM(c), p);
    return TUNNEL_ENOMEM;
  }
  p->c = c;
  p->type = type;
  tunnel__msg_init(&p->opts, TUNNEL__MSG_NEW_PROXY);
  p->next = c->proxies;
  c->proxies = p;
  *out = p;
  return 0;
}

int tunnel_proxy_set_remote_port(tunnel_proxy *p, uint16_t port) {
  if (!p)
    return TUNNEL_EINVAL;
  if (p->started)
    return TUNNEL_ESTATE;
  p->remote_port = port;
  return 0;
}

/* A host name as routing tables and peers expect it: letters, digits,
 * hyphens and dots (and a leading "*." where wildcards are allowed). */
static int valid_name(const char *s, int wildcard) {
  size_t n = strlen(s);
  if (n == 0 || n > 253)
    return 0;
  if (wildcard && s[0] == '*' && s[1] == '.')
    s += 2;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '-' || *s == '.' || *s == '_'))
      return 0;
  return 1;
}

static int http_opt_ok(const tunnel_proxy *p) {
  if (p->type == TUNNEL_PROXY_TCP)
    return TUNNEL_ENOTSUP;
  return p->started ? TUNNEL_ESTATE : 0;
}

int tunnel_proxy_set_subdomain(tunnel_proxy *p, const char *name) {
  if (!p || !name || !valid_name(name, 0) || strchr(name, '.'))
    return TUNNEL_EINVAL;
  int rc = http_opt_ok(p);
  return rc ? rc : tunnel__msg_set_str(MEM(p->c), &p->opts.subdomain, name);
}

int tunnel_proxy_add_domain(tunnel_proxy *p, const char *fqdn) {
  if (!p || !fqdn || !valid_name(fqdn, 1))
    return TUNNEL_EINVAL;
  int rc = http_opt_ok(p);
  return rc ? rc
            : tunnel__msg_strs_push(MEM(p->c), &p->opts.custom_domains, fqdn);
}

int tunnel_proxy_add_location(tunnel_proxy *p, const char *path) {
  if (!p || !path || path[0] != '/')
    return TUNNEL_EINVAL;
  int rc = p && p->type != TUNNEL_PROXY_HTTP ? TUNNEL_ENOTSUP : http_opt_ok(p);
  return rc ? rc : tunnel__msg_strs_push(MEM(p->c), &p->opts.locations, path);
}

/* Header names and values travel into HTTP heads: no CR, LF or NUL. */
static int header_safe(const char *s) { return !strpbrk(s, "\r\n"); }

int tunnel_proxy_set_host_rewrite(tunnel_proxy *p, const char *host) {
  if (!p || !host || !*host || !header_safe(host))
    return TUNNEL_EINVAL;
  int rc = p->type != TUNNEL_PROXY_HTTP ? TUNNEL_ENOTSUP : http_opt_ok(p);
  return rc ? rc
            : tunnel__msg_set_str(MEM(p->c), &p->opts.host_header_rewrite,
                                  host);
}

int tunnel_proxy_set_basic_auth(tunnel_proxy *p, const char *user,
                                const char *password) {
  if (!p || !user || !*user || !password || strchr(user, ':') ||
      !header_safe(user) || !header_safe(password))
    return TUNNEL_EINVAL;
  int rc = p->type != TUNNEL_PROXY_HTTP ? TUNNEL_ENOTSUP : http_opt_ok(p);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(p->c), &p->opts.http_user, user);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(p->c), &p->opts.http_pwd, password);
  return rc;
}

int tunnel_proxy_set_header(tunnel_proxy *p, const char *name,
                            const char *value) {
  if (!p || !name || !*name || !value || !header_safe(name) ||
      !header_safe(value) || strchr(name, ':'))
    return TUNNEL_EINVAL;
  int rc = p->type != TUNNEL_PROXY_HTTP ? TUNNEL_ENOTSUP : http_opt_ok(p);
  return rc ? rc
            : tunnel__msg_map_add(MEM(p->c), &p->opts.headers, name, value);
}

int tunnel_proxy_set_local(tunnel_proxy *p, const char *host, uint16_t port) {
  if (!p || !host || !*host || port == 0)
    return TUNNEL_EINVAL;
  char *h = tunnel__strdup(MEM(p->c), host);
  if (!h)
    return TUNNEL_ENOMEM;
  tunnel__free(MEM(p->c), p->local_host);
  p->local_host = h;
  p->local_port = port;
  return 0;
}

int tunnel_proxy_set_status_cb(tunnel_proxy *p, tunnel_proxy_status_cb cb,
                               void *ud) {
  if (!p)
    return TUNNEL_EINVAL;
  p->status_cb = cb;
  p->status_ud = ud;
  return 0;
}

int tunnel_proxy_set_accept_cb(tunnel_proxy *p, tunnel_proxy_accept_cb cb,
                               void *ud) {
  if (!p)
    return TUNNEL_EINVAL;
  p->accept_cb = cb;
  p->accept_ud = ud;
  return 0;
}

int tunnel_proxy_start(tunnel_proxy *p) {
  if (!p)
    return TUNNEL_EINVAL;
  if (p->started)
    return TUNNEL_ESTATE;
  if (!p->local_host && !p->accept_cb)
    return TUNNEL_EINVAL; /* visitors would have nowhere to go */
  p->started = 1;
  if (p->c->state == C_READY)
    return send_new_proxy(p);
  return 0;
}

int tunnel_proxy_close(tunnel_proxy *p) {
  if (!p)
    return TUNNEL_EINVAL;
  tunnel_client *c = p->c;
  if (p->sent && c->state == C_READY) {
    tunnel__msg m;
    tunnel__msg_init(&m, TUNNEL__MSG_CLOSE_PROXY);
    if (tunnel__msg_set_str(MEM(c), &m.proxy_name, p->name) == 0)
      send_ctl(c, &m);
    tunnel__msg_clear(MEM(c), &m);
  }
  for (tunnel_proxy **pp = &c->proxies; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  proxy_free(p);
  return 0;
}

const char *tunnel_proxy_name(const tunnel_proxy *p) {
  return p ? p->name : NULL;
}
