/* The client protocol engine (include/tunnel/engine.h): login, proxy
 * registration, the work pool, heartbeats and visitor streams, over bytes
 * the program moves. A session (one login, its yamux session or its
 * connections, its streams) is a heap object of its own: when it ends
 * inside a callback, it is detached at once and freed when the outermost
 * engine call returns, so no frame of the yamux parser or the control
 * codec ever runs on freed memory, and the program may start the next
 * session from the state callback. This file holds the API, sessions,
 * login, control messages and heartbeats; engine_stream.c the streams. */
#include <string.h>

#include "engine_int.h"
#include "engine_io.h"
#include "log.h"

/* The frp protocol level we speak, sent as Login.version: stock frps
 * servers check it for compatibility. */
#define FRP_PROTOCOL_VERSION "0.61.0"

#define MEM(e) tunnel__eng_mem(e)

typedef tunnel__eng_session eng_session;
typedef tunnel__eng_proxy eng_proxy;

static void session_free(eng_session *s);

/* ------------------------------------------------------------ plumbing */

void tunnel__eng_enter(tunnel_engine *e) { e->depth++; }

void tunnel__eng_leave(tunnel_engine *e) {
  if (--e->depth)
    return;
  while (e->dead) {
    eng_session *s = e->dead;
    e->dead = s->next_dead;
    session_free(s);
  }
}

static void session_free(eng_session *s) {
  tunnel__eng_streams_free(s);
  tunnel__ctlcodec_free(&s->ctl);
  tunnel__bufq_free(&s->ctl_out);
  tunnel__ymx_free(s->ymx);
  tunnel__free(MEM(s->e), s);
}

/* Ends the running session: it is detached now and freed when the
 * outermost call returns. Streams the program holds end first, then the
 * program hears why. */
void tunnel__eng_session_down(eng_session *s, int err, const char *why) {
  tunnel_engine *e = s->e;
  if (s->dead)
    return;
  s->dead = 1;
  s->err = err;
  int current = e->s == s;
  int was_up = current && e->state == TUNNEL__E_READY;
  if (current) {
    e->s = NULL;
    e->state = TUNNEL__E_DOWN;
  }
  s->next_dead = e->dead;
  e->dead = s;
  tunnel__log(&e->cfg.log, e->state_cb ? TUNNEL_LOG_INFO : TUNNEL_LOG_WARN,
              "engine: %s: %s", why, tunnel_strerror(err));
  for (tunnel__eng_stream *st = s->streams; st; st = st->next) {
    if (tunnel__eng_visiting(st)) {
      st->state = TUNNEL__ST_DRAIN; /* visits waiting for their answer */
      if (e->visit_cb)
        e->visit_cb(e, st->num, TUNNEL_ECLOSED, why, e->ud);
      continue;
    }
    if (st->state != TUNNEL__ST_OPEN)
      continue;
    st->state = TUNNEL__ST_DRAIN; /* the program's calls no longer find it */
    if (e->end_cb)
      e->end_cb(e, st->num, TUNNEL_ECLOSED, e->ud);
  }
  for (eng_proxy *p = e->proxies; p; p = p->next) {
    p->sent = 0;
    p->dgram = 0;
  }
  if (current)
    tunnel__eng_lost(e, err, why, was_up);
}

/* ------------------------------------------------------------ messages */

int tunnel__eng_sign(tunnel_engine *e, const char *secret, int64_t *ts,
                     char **key) {
  char hex[33];
  *ts = e->time_cb ? e->time_cb(e->ud) : 0;
  int rc = tunnel__privilege_key(secret, strlen(secret), *ts, hex);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(e), key, hex);
  tunnel__wipe(hex, sizeof hex);
  return rc;
}

/* Fills privilege_key and timestamp. */
static int sign(tunnel_engine *e, tunnel__msg *m) {
  return tunnel__eng_sign(e, tunnel__config_token(&e->cfg), &m->timestamp,
                          &m->privilege_key);
}

static void clear_signed(tunnel_engine *e, tunnel__msg *m) {
  tunnel__wipe_string(m->privilege_key);
  tunnel__msg_clear(MEM(e), m);
}

/* Moves queued control bytes into the control stream as far as its window
 * allows (mux mode); the rest waits for the window callback. */
void tunnel__eng_flush_ctl(eng_session *s) {
  if (!s->mux || s->dead)
    return;
  tunnel__iov v[4];
  while (s->ctl_out.size) {
    size_t k = tunnel__bufq_iov(&s->ctl_out, v, 4), i = 0;
    size_t total = 0;
    for (; i < k; i++) {
      size_t w = 0;
      int rc = tunnel__ymx_write(s->ymx, s->ctl_id, v[i].base, v[i].len, &w);
      total += w;
      if (rc || w < v[i].len)
        break;
    }
    tunnel__bufq_consume(&s->ctl_out, total);
    if (i < k) /* window closed, or no memory now: retried later */
      return;
  }
}

/* Queues a control message. Failing to is fatal for the session: the
 * cipher stream cannot skip a message. */
static int queue_ctl(eng_session *s, const tunnel__msg *m) {
  tunnel_engine *e = s->e;
  int rc = tunnel__ctlcodec_encode(&s->ctl, m, &s->ctl_out);
  if (rc == 0 && s->ctl_out.size > e->cfg.max_control_backlog)
    rc = TUNNEL_ELIMIT; /* the server does not read its control channel */
  if (rc == 0)
    tunnel__eng_flush_ctl(s);
  return rc;
}

int tunnel__eng_send_ctl(eng_session *s, const tunnel__msg *m) {
  int rc = queue_ctl(s, m);
  if (rc)
    tunnel__eng_session_down(s, rc,
                             rc == TUNNEL_ELIMIT
                                 ? "server does not read the control channel"
                                 : "cannot send a control message");
  return rc;
}

static const char *type_name(int32_t type) {
  switch (type) {
  case TUNNEL_ENGINE_PROXY_HTTP:
    return "http";
  case TUNNEL_ENGINE_PROXY_HTTPS:
    return "https";
  case TUNNEL_ENGINE_PROXY_UDP:
    return "udp";
  case TUNNEL_ENGINE_PROXY_STCP:
    return "stcp";
  default:
    return "tcp";
  }
}

static void send_new_proxy(eng_session *s, eng_proxy *p) {
  /* The options are borrowed into the message for the encoding only. */
  tunnel__msg m = p->opts;
  m.proxy_name = p->name;
  m.proxy_type = (char *)type_name(p->type);
  m.remote_port = p->type == TUNNEL_ENGINE_PROXY_TCP ||
                          p->type == TUNNEL_ENGINE_PROXY_UDP
                      ? (p->remote_port ? p->remote_port : p->chosen_port)
                      : 0;
  if (tunnel__eng_send_ctl(s, &m) == 0)
    p->sent = 1;
}

/* Registers the proxies declared since the login. */
static void register_pending(tunnel_engine *e) {
  /* From the head each time: a callback run by a failed send may remove
   * any proxy, this one included. */
  for (;;) {
    if (!e->s || e->state != TUNNEL__E_READY)
      return;
    eng_proxy *p = e->proxies;
    while (p && (p->sent || p->held || p->withdrawn || p->retry_at > e->now))
      p = p->next;
    if (!p)
      return;
    /* Sent, or the session went down (the check above ends it then). */
    send_new_proxy(e->s, p);
  }
}

int tunnel__eng_encode_work_conn(tunnel_engine *e, tunnel__bufq *out) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_WORK_CONN);
  int rc = tunnel__msg_set_str(MEM(e), &m.run_id, e->run_id);
  if (rc == 0)
    rc = sign(e, &m);
  if (rc == 0)
    rc = tunnel__msg_encode(MEM(e), &m, out);
  clear_signed(e, &m);
  return rc;
}

/* ------------------------------------------------------------- control */

static void down_msg(eng_session *s, int err, const char *fallback,
                     const char *reason) {
  tunnel__eng_session_down(s, err, reason && *reason ? reason : fallback);
}

static int on_login_resp(eng_session *s, const tunnel__msg *m) {
  tunnel_engine *e = s->e;
  if (m->type != TUNNEL__MSG_LOGIN_RESP) {
    tunnel__eng_session_down(s, TUNNEL_EPROTO, "unexpected answer to login");
    return 0;
  }
  if (m->error && *m->error) {
    down_msg(s, TUNNEL_EAUTH, "login refused", m->error);
    return 0;
  }
  const char *id = m->run_id ? m->run_id : "";
  if (strlen(id) > TUNNEL__ENG_RUN_ID_MAX) {
    tunnel__eng_session_down(s, TUNNEL_EPROTO, "run id too long");
    return 0;
  }
  memcpy(e->run_id, id, strlen(id) + 1);
  /* Everything after LoginResp is encrypted, both ways. */
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  int rc = e->random_cb(iv, sizeof iv, e->ud) ? TUNNEL_ECRYPTO : 0;
  if (s->dead)
    return 0;
  if (rc == 0)
    rc = tunnel__ctlcodec_encrypt(&s->ctl, e->key, iv);
  tunnel__wipe(iv, sizeof iv);
  if (rc) {
    tunnel__eng_session_down(s, rc,
                             "cannot start the encrypted control channel");
    return 0;
  }
  e->state = TUNNEL__E_READY;
  e->up_since = e->now;
  e->failures = 0;
  e->last_heard = e->now;
  e->last_rx = e->now;
  e->next_probe = 0;
  e->next_ping = e->now + (uint64_t)e->cfg.heartbeat_interval_s * 1000u;
  tunnel__log(&e->cfg.log, TUNNEL_LOG_INFO, "engine: logged in as %s",
              e->run_id);
  register_pending(e);
  if (s->dead)
    return 0;
  if (e->state_cb)
    e->state_cb(e, 0, e->run_id, e->ud);
  if (!s->dead)
    tunnel__eng_event(e, TUNNEL_EVENT_LOGGED_IN, 0, 0, e->run_id);
  return !s->dead;
}

static void on_proxy_resp(tunnel_engine *e, const tunnel__msg *m) {
  eng_proxy *p = tunnel__eng_proxy_by_name(e, m->proxy_name);
  if (!p || p->withdrawn)
    return;
  if (m->error && *m->error) {
    int again = tunnel__eng_proxy_refused(e, p);
    if (e->proxy_cb)
      e->proxy_cb(e, p->id, again ? TUNNEL_EAGAIN : TUNNEL_EREFUSED,
                  m->error, e->ud);
    return;
  }
  p->accepted = 1;
  p->retry_ms = 0;
  p->chosen_refusals = 0;
  if ((p->type == TUNNEL_ENGINE_PROXY_TCP ||
       p->type == TUNNEL_ENGINE_PROXY_UDP) &&
      !p->remote_port && m->remote_addr) {
    /* ":PORT" (frp) or "HOST:PORT". */
    const char *colon = strrchr(m->remote_addr, ':');
    unsigned long v = 0;
    for (const char *q = colon ? colon + 1 : ""; *q >= '0' && *q <= '9'; q++)
      v = v * 10 + (unsigned long)(*q - '0');
    if (v > 0 && v <= 65535)
      p->chosen_port = (uint16_t)v;
  }
  if (e->proxy_cb)
    e->proxy_cb(e, p->id, 0, m->remote_addr ? m->remote_addr : "", e->ud);
}

static int on_ctl_msg(void *ud, const tunnel__msg *m) {
  eng_session *s = ud;
  tunnel_engine *e = s->e;
  if (s->dead)
    return 0;
  e->last_heard = e->now;
  if (e->state == TUNNEL__E_LOGIN)
    return on_login_resp(s, m);
  switch (m->type) {
  case TUNNEL__MSG_REQ_WORK_CONN:
    tunnel__eng_new_work(s);
    break;
  case TUNNEL__MSG_NEW_PROXY_RESP:
    on_proxy_resp(e, m);
    break;
  case TUNNEL__MSG_PONG:
    if (m->error && *m->error)
      down_msg(s, TUNNEL_EAUTH, "heartbeat refused", m->error);
    break;
  default:
    tunnel__log(&e->cfg.log, TUNNEL_LOG_DEBUG, "engine: ignoring %s",
                tunnel__msg_type_name(m->type));
    break;
  }
  return !s->dead;
}

void tunnel__eng_ctl_input(eng_session *s, const uint8_t *data, size_t len) {
  size_t used;
  int rc = tunnel__ctlcodec_feed(&s->ctl, data, len, &used, on_ctl_msg, s);
  if (rc && !s->dead)
    tunnel__eng_session_down(s, rc, "bad control message");
}

static void heartbeat(eng_session *s) {
  tunnel_engine *e = s->e;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_PING);
  int rc = sign(e, &m);
  if (rc == 0)
    tunnel__eng_send_ctl(s, &m);
  else
    tunnel__eng_session_down(s, rc, "cannot sign a heartbeat");
  clear_signed(e, &m);
}

/* A keepalive probe: a yamux ping (answered by any yamux peer), or frp's
 * Ping (answered with Pong) without multiplexing. */
static void probe(eng_session *s) {
  if (!s->mux) {
    heartbeat(s);
    return;
  }
  int rc = tunnel__ymx_ping(s->ymx, (uint32_t)s->e->now);
  if (rc)
    tunnel__eng_session_down(s, rc, "cannot send a keepalive");
}

/* ---------------------------------------------------------------- API */

int tunnel_engine_new(tunnel_engine **out, const tunnel_config *cfg,
                      void *user_data) {
  if (!out)
    return TUNNEL_EINVAL;
  *out = NULL;
  struct tunnel_config defaults;
  if (!cfg) {
    tunnel__config_defaults(&defaults);
    cfg = &defaults;
  }
  tunnel_engine *e = tunnel__calloc(&cfg->mem, 1, sizeof *e);
  if (!e)
    return TUNNEL_ENOMEM;
  int rc = tunnel__config_copy(&e->cfg, cfg);
  if (rc) {
    tunnel__free(&cfg->mem, e);
    return rc;
  }
  /* The key costs 64 HMACs: derived once, not at every login. */
  const char *token = tunnel__config_token(&e->cfg);
  rc = tunnel__frp_key(token, strlen(token), e->key);
  if (rc) {
    tunnel__config_release(&e->cfg);
    tunnel__free(&cfg->mem, e);
    return rc;
  }
  e->ud = user_data;
  e->next_proxy = 1;
  e->next_num = 2;
  *out = e;
  return 0;
}

void tunnel_engine_free(tunnel_engine *e) {
  if (!e)
    return;
  if (e->s)
    session_free(e->s);
  while (e->dead) {
    eng_session *s = e->dead;
    e->dead = s->next_dead;
    session_free(s);
  }
  while (e->proxies) {
    eng_proxy *p = e->proxies;
    e->proxies = p->next;
    tunnel__eng_proxy_free(e, p);
  }
  tunnel__free(MEM(e), e->hostname);
  tunnel__free(MEM(e), e->os);
  tunnel__free(MEM(e), e->arch);
  tunnel__wipe(e->key, sizeof e->key);
  tunnel__wipe(e->run_id, sizeof e->run_id);
  tunnel__mem mem = e->cfg.mem;
  tunnel__config_release(&e->cfg);
  tunnel__free(&mem, e);
}

int tunnel_engine_set_state_cb(tunnel_engine *e, tunnel_engine_state_cb cb) {
  if (!e)
    return TUNNEL_EINVAL;
  e->state_cb = cb;
  return 0;
}

int tunnel_engine_set_proxy_cb(tunnel_engine *e, tunnel_engine_proxy_cb cb) {
  if (!e)
    return TUNNEL_EINVAL;
  e->proxy_cb = cb;
  return 0;
}

int tunnel_engine_set_stream_cbs(tunnel_engine *e,
                                 tunnel_engine_stream_open_cb open,
                                 tunnel_engine_stream_data_cb data,
                                 tunnel_engine_stream_end_cb end,
                                 tunnel_engine_stream_writable_cb writable) {
  if (!e)
    return TUNNEL_EINVAL;
  e->open_cb = open;
  e->data_cb = data;
  e->end_cb = end;
  e->writable_cb = writable;
  return 0;
}

int tunnel_engine_set_conn_cbs(tunnel_engine *e,
                               tunnel_engine_connect_cb connect,
                               tunnel_engine_disconnect_cb disconnect) {
  if (!e)
    return TUNNEL_EINVAL;
  e->connect_cb = connect;
  e->disconnect_cb = disconnect;
  return 0;
}

int tunnel_engine_set_event_cb(tunnel_engine *e, tunnel_engine_event_cb cb) {
  if (!e)
    return TUNNEL_EINVAL;
  e->event_cb = cb;
  return 0;
}

int tunnel_engine_set_visit_cb(tunnel_engine *e, tunnel_engine_visit_cb cb) {
  if (!e)
    return TUNNEL_EINVAL;
  e->visit_cb = cb;
  return 0;
}

int tunnel_engine_set_random_cb(tunnel_engine *e, tunnel_engine_random_cb cb) {
  if (!e)
    return TUNNEL_EINVAL;
  e->random_cb = cb;
  return 0;
}

int tunnel_engine_set_time_cb(tunnel_engine *e, tunnel_engine_time_cb cb) {
  if (!e)
    return TUNNEL_EINVAL;
  e->time_cb = cb;
  return 0;
}

/* A copy of `v` for an identity field: NULL and "" leave it out. */
static int identity_dup(tunnel_engine *e, const char *v, char **out) {
  *out = NULL;
  if (!v || !*v)
    return 0;
  if (strlen(v) > 255)
    return TUNNEL_EINVAL;
  *out = tunnel__strdup(MEM(e), v);
  return *out ? 0 : TUNNEL_ENOMEM;
}

int tunnel_engine_set_identity(tunnel_engine *e, const char *hostname,
                               const char *os, const char *arch) {
  if (!e)
    return TUNNEL_EINVAL;
  char *h = NULL, *o = NULL, *a = NULL;
  int rc = identity_dup(e, hostname, &h);
  if (rc == 0)
    rc = identity_dup(e, os, &o);
  if (rc == 0)
    rc = identity_dup(e, arch, &a);
  if (rc) { /* all or nothing: the previous identity stays */
    tunnel__free(MEM(e), h);
    tunnel__free(MEM(e), o);
    tunnel__free(MEM(e), a);
    return rc;
  }
  tunnel__free(MEM(e), e->hostname);
  tunnel__free(MEM(e), e->os);
  tunnel__free(MEM(e), e->arch);
  e->hostname = h;
  e->os = o;
  e->arch = a;
  return 0;
}

static int session_new(tunnel_engine *e, eng_session **out) {
  eng_session *s = tunnel__calloc(MEM(e), 1, sizeof *s);
  if (!s)
    return TUNNEL_ENOMEM;
  s->e = e;
  s->mux = e->cfg.tcp_mux != 0;
  tunnel__ctlcodec_init(&s->ctl, MEM(e), e->cfg.max_message_size);
  tunnel__bufq_init(&s->ctl_out, MEM(e), TUNNEL__ENG_CTL_CHUNK);
  int rc = 0;
  if (s->mux) {
    tunnel__ymx_config yc;
    memset(&yc, 0, sizeof yc);
    yc.is_client = 1;
    /* The program copies output out in pieces of its own size anyway; an
     * idle session keeps one chunk. */
    yc.out_chunk = 4096;
    yc.max_streams = e->cfg.max_streams;
    yc.window = e->cfg.stream_window;
    yc.max_backlog = e->cfg.max_control_backlog;
    yc.mem = MEM(e);
    yc.log = &e->cfg.log;
    yc.budget = e->cfg.session_buffer;
    rc = tunnel__ymx_new(&s->ymx, &yc, &tunnel__eng_ymx_cb, s);
    /* The control stream is the first one the client opens. */
    if (rc == 0)
      rc = tunnel__ymx_open(s->ymx, &s->ctl, &s->ctl_id);
  }
  if (rc) {
    session_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

static int queue_login(tunnel_engine *e, eng_session *s) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  int rc = tunnel__msg_set_str(MEM(e), &m.version, FRP_PROTOCOL_VERSION);
  /* A reconnecting client asks for its old run id back. */
  if (rc == 0 && *e->run_id)
    rc = tunnel__msg_set_str(MEM(e), &m.run_id, e->run_id);
  /* The identity shows in the server's dashboard; unset fields stay out. */
  if (rc == 0 && e->hostname)
    rc = tunnel__msg_set_str(MEM(e), &m.hostname, e->hostname);
  if (rc == 0 && e->os)
    rc = tunnel__msg_set_str(MEM(e), &m.os, e->os);
  if (rc == 0 && e->arch)
    rc = tunnel__msg_set_str(MEM(e), &m.arch, e->arch);
  m.pool_count = e->cfg.pool_count;
  if (rc == 0)
    rc = sign(e, &m);
  if (rc == 0)
    rc = queue_ctl(s, &m);
  clear_signed(e, &m);
  return rc;
}

int tunnel__eng_session_start(tunnel_engine *e, uint64_t now_ms) {
  if (e->s || !e->random_cb)
    return TUNNEL_ESTATE;
  eng_session *s;
  int rc = session_new(e, &s);
  if (rc)
    return rc;
  if ((rc = queue_login(e, s)) != 0) {
    session_free(s);
    return rc;
  }
  for (eng_proxy *p = e->proxies; p; p = p->next) {
    p->sent = 0;
    p->retry_at = 0; /* a new session asks at once */
  }
  e->s = s;
  e->state = TUNNEL__E_LOGIN;
  e->now = now_ms;
  e->login_deadline = now_ms + e->cfg.login_timeout_ms;
  return 0;
}

int tunnel_engine_start(tunnel_engine *e, uint64_t now_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  int rc = tunnel__eng_session_start(e, now_ms);
  if (rc == 0) {
    /* A fresh start after a drain: its proxies register again. */
    e->halted = 0;
    e->draining = 0;
    for (eng_proxy *p = e->proxies; p; p = p->next)
      p->withdrawn = 0;
  }
  return rc;
}

int tunnel_engine_recv(tunnel_engine *e, uint32_t conn, const uint8_t *data,
                       size_t len, uint64_t now_ms) {
  if (!e || (!data && len))
    return TUNNEL_EINVAL;
  eng_session *s = e->s;
  if (!s)
    return TUNNEL_ESTATE;
  tunnel__eng_enter(e);
  e->now = now_ms;
  int rc = 0;
  if (conn == TUNNEL_ENGINE_CONTROL && len)
    e->last_rx = now_ms;
  if (s->mux) {
    if (conn != TUNNEL_ENGINE_CONTROL) {
      rc = TUNNEL_EINVAL;
    } else {
      rc = tunnel__ymx_recv(s->ymx, data, len);
      if (rc && !s->dead)
        tunnel__eng_session_down(s, rc, "protocol error on the connection");
    }
  } else if (conn == TUNNEL_ENGINE_CONTROL) {
    tunnel__eng_ctl_input(s, data, len);
  } else {
    rc = tunnel__eng_conn_recv(s, conn, data, len);
  }
  if (s->dead)
    rc = s->err;
  tunnel__eng_leave(e);
  return rc;
}

int tunnel_engine_next_output_after(tunnel_engine *e, uint32_t after,
                                    uint32_t *conn) {
  if (!e || !conn)
    return 0;
  eng_session *s = e->s;
  if (!s)
    return 0;
  tunnel__eng_enter(e);
  register_pending(e);
  int rc = 0;
  s = e->s;
  if (s && s->mux) {
    tunnel__eng_flush_ctl(s); /* retries what a lack of memory held back */
    if (after < TUNNEL_ENGINE_CONTROL && tunnel__ymx_out_pending(s->ymx)) {
      *conn = TUNNEL_ENGINE_CONTROL;
      rc = 1;
    }
  } else if (s) {
    /* The lowest number above `after`, so a program can walk past a
     * connection whose socket is full. */
    uint32_t best = UINT32_MAX;
    if (after < TUNNEL_ENGINE_CONTROL && s->ctl_out.size)
      best = TUNNEL_ENGINE_CONTROL;
    best = tunnel__eng_conn_next(s, after, best);
    if (best != UINT32_MAX) {
      *conn = best;
      rc = 1;
    }
  }
  tunnel__eng_leave(e);
  return rc;
}

int tunnel_engine_next_output(tunnel_engine *e, uint32_t *conn) {
  return tunnel_engine_next_output_after(e, 0, conn);
}

int tunnel_engine_send(tunnel_engine *e, uint32_t conn, uint8_t *buf,
                       size_t cap, size_t *len) {
  if (!e || !len || (!buf && cap))
    return TUNNEL_EINVAL;
  *len = 0;
  eng_session *s = e->s;
  if (!s)
    return 0;
  tunnel__eng_enter(e);
  if (s->mux) {
    if (conn == TUNNEL_ENGINE_CONTROL) {
      size_t got = 0;
      tunnel__iov v[8];
      while (got < cap && tunnel__ymx_out_pending(s->ymx)) {
        size_t k = tunnel__ymx_out_iov(s->ymx, v, 8), n = 0;
        for (size_t i = 0; i < k && got + n < cap; i++) {
          size_t c = v[i].len < cap - got - n ? v[i].len : cap - got - n;
          memcpy(buf + got + n, v[i].base, c);
          n += c;
        }
        tunnel__ymx_out_consume(s->ymx, n);
        got += n;
      }
      *len = got;
    }
  } else if (conn == TUNNEL_ENGINE_CONTROL) {
    *len = tunnel__eng_copy_out(&s->ctl_out, buf, cap);
  } else {
    *len = tunnel__eng_conn_send(s, conn, buf, cap);
  }
  tunnel__eng_leave(e);
  return 0;
}

size_t tunnel__engine_out_pending(tunnel_engine *e, uint32_t conn) {
  eng_session *s = e->s;
  if (!s)
    return 0;
  if (s->mux)
    return conn == TUNNEL_ENGINE_CONTROL ? tunnel__ymx_out_pending(s->ymx) : 0;
  if (conn == TUNNEL_ENGINE_CONTROL)
    return s->ctl_out.size;
  tunnel__bufq *q = tunnel__eng_conn_queue(s, conn);
  return q ? q->size : 0;
}

size_t tunnel__engine_out_iov(tunnel_engine *e, uint32_t conn,
                              tunnel__iov *iov, size_t max) {
  eng_session *s = e->s;
  if (!s)
    return 0;
  if (s->mux)
    return conn == TUNNEL_ENGINE_CONTROL
               ? tunnel__ymx_out_iov(s->ymx, iov, max)
               : 0;
  tunnel__bufq *q = conn == TUNNEL_ENGINE_CONTROL
                        ? &s->ctl_out
                        : tunnel__eng_conn_queue(s, conn);
  return q ? tunnel__bufq_iov(q, iov, max) : 0;
}

void tunnel__engine_out_consume(tunnel_engine *e, uint32_t conn, size_t n) {
  eng_session *s = e->s;
  if (!s || !n)
    return;
  tunnel__eng_enter(e);
  if (s->mux) {
    if (conn == TUNNEL_ENGINE_CONTROL)
      tunnel__ymx_out_consume(s->ymx, n);
  } else if (conn == TUNNEL_ENGINE_CONTROL) {
    tunnel__bufq_consume(&s->ctl_out,
                         n < s->ctl_out.size ? n : s->ctl_out.size);
  } else {
    tunnel__eng_conn_consume(s, conn, n);
  }
  tunnel__eng_leave(e);
}

int tunnel_engine_tick(tunnel_engine *e, uint64_t now_ms, uint64_t *next_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  uint64_t next = UINT64_MAX;
  tunnel__eng_enter(e);
  e->now = now_ms;
  register_pending(e);
  eng_session *s = e->s;
  uint64_t timeout = (uint64_t)e->cfg.heartbeat_timeout_s * 1000u;
  uint64_t interval = (uint64_t)e->cfg.heartbeat_interval_s * 1000u;
  if (s && e->state == TUNNEL__E_LOGIN && e->cfg.login_timeout_ms &&
      now_ms >= e->login_deadline)
    tunnel__eng_session_down(s, TUNNEL_ETIMEDOUT, "no answer to login");
  if (s && !s->dead && e->state == TUNNEL__E_READY && timeout &&
      now_ms >= e->last_heard + timeout)
    tunnel__eng_session_down(s, TUNNEL_ETIMEDOUT, "server stopped answering");
  uint64_t ka_int = e->cfg.keepalive_interval_ms;
  uint64_t ka_to = e->cfg.keepalive_timeout_ms;
  if (s && !s->dead && e->state == TUNNEL__E_READY && ka_to &&
      now_ms >= e->last_rx + ka_to)
    tunnel__eng_session_down(s, TUNNEL_ETIMEDOUT,
                             "no data from the server: link dead");
  if (s && !s->dead && e->state == TUNNEL__E_READY && ka_int &&
      now_ms >= e->last_rx + ka_int && now_ms >= e->next_probe) {
    /* Silence: ask for an answer. Any byte back counts. */
    e->next_probe = now_ms + ka_int;
    probe(s);
  }
  if (s && !s->dead && e->state == TUNNEL__E_READY && interval &&
      now_ms >= e->next_ping) {
    e->next_ping = now_ms + interval;
    heartbeat(s);
  }
  if (s && !s->dead && e->state == TUNNEL__E_READY)
    next = tunnel__eng_dgram_tick(s, next);
  if (s && !s->dead && e->state == TUNNEL__E_READY)
    next = tunnel__eng_visit_tick(s, next);
  next = tunnel__eng_life_tick(e, next);
  s = e->s; /* a callback may have started another session */
  if (s && e->state == TUNNEL__E_LOGIN && e->cfg.login_timeout_ms)
    next = e->login_deadline;
  if (s && e->state == TUNNEL__E_READY) {
    if (timeout && e->last_heard + timeout < next)
      next = e->last_heard + timeout;
    if (interval && e->next_ping < next)
      next = e->next_ping;
    if (ka_to && e->last_rx + ka_to < next)
      next = e->last_rx + ka_to;
    if (ka_int) {
      uint64_t at = e->last_rx + ka_int;
      if (e->next_probe > at)
        at = e->next_probe;
      if (at < next)
        next = at;
    }
  }
  tunnel__eng_leave(e);
  if (next_ms)
    *next_ms = next;
  return 0;
}
