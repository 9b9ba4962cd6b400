/* The client protocol engine (include/tunnel/engine.h): login, proxy
 * registration, the work pool, heartbeats and visitor streams, over bytes
 * the program moves. A session (one login, its yamux session or its
 * connections, its streams) is a heap object of its own: when it ends
 * inside a callback, it is detached at once and freed when the outermost
 * engine call returns, so no frame of the yamux parser or the control
 * codec ever runs on freed memory, and the program may start the next
 * session from the state callback. */
#include "tunnel/engine.h"

#include <stdio.h>
#include <string.h>

#include "config.h"
#include "crypto.h"
#include "ctlcodec.h"
#include "log.h"
#include "msg.h"
#include "yamux.h"

/* The frp protocol level we speak, sent as Login.version: stock frps
 * servers check it for compatibility. */
#define FRP_PROTOCOL_VERSION "0.61.0"
/* frp's run ids are 16 hex digits; a longer one is not a run id. */
#define RUN_ID_MAX 64
/* Queue chunks: small for control bytes (an idle engine stays small),
 * larger appends get a chunk of their own size anyway. */
#define CTL_CHUNK 256
#define CONN_CHUNK 1024

enum { E_IDLE, E_LOGIN, E_READY, E_DOWN };

enum {
  ST_CONNECTING, /* non-mux: the program is opening the connection */
  ST_WORK,       /* NewWorkConn sent, waiting for StartWorkConn */
  ST_OPEN,       /* a visitor's stream, the program's */
  ST_DRAIN       /* non-mux: finished, its last bytes not yet sent */
};

typedef struct eng_proxy {
  struct eng_proxy *next;
  uint32_t id;
  int32_t type;
  uint16_t remote_port;
  uint8_t sent; /* NewProxy queued in the running session */
  char *name;
  /* HTTP/HTTPS options, kept as the NewProxy fields they travel in. */
  tunnel__msg opts;
} eng_proxy;

typedef struct eng_session eng_session;

typedef struct eng_stream {
  struct eng_stream *next;
  eng_session *s;
  uint32_t num; /* the program's stream number; non-mux: connection too */
  uint32_t id;  /* yamux stream id (mux mode) */
  uint8_t state;
  uint8_t local_fin;
  uint8_t remote_fin;
  uint8_t ymx_gone;      /* the yamux session forgot the stream */
  uint8_t want_writable; /* non-mux: a write was cut short */
  tunnel__msg_reader reader; /* ST_WORK: StartWorkConn */
  tunnel__bufq out;          /* non-mux: bytes for the connection */
} eng_stream;

struct eng_session {
  tunnel_engine *e;
  eng_session *next_dead;
  int dead;
  int err; /* why it ended */
  int mux;
  tunnel__ymx *ymx;
  uint32_t ctl_id;
  tunnel__ctlcodec ctl;
  /* Mux: control bytes waiting for window. Non-mux: connection 1's
   * output. */
  tunnel__bufq ctl_out;
  eng_stream *streams;
  uint32_t nworks; /* work channels waiting for a visitor */
};

struct tunnel_engine {
  struct tunnel_config cfg;
  void *ud;
  tunnel_engine_state_cb state_cb;
  tunnel_engine_proxy_cb proxy_cb;
  tunnel_engine_stream_open_cb open_cb;
  tunnel_engine_stream_data_cb data_cb;
  tunnel_engine_stream_end_cb end_cb;
  tunnel_engine_stream_writable_cb writable_cb;
  tunnel_engine_connect_cb connect_cb;
  tunnel_engine_disconnect_cb disconnect_cb;
  tunnel_engine_random_cb random_cb;
  tunnel_engine_time_cb time_cb;
  eng_proxy *proxies;
  uint32_t next_proxy;
  uint32_t next_num;
  int state;
  eng_session *s;    /* the running session */
  eng_session *dead; /* ended, freed when no call is under way */
  unsigned depth;    /* engine calls under way (callbacks re-enter) */
  uint64_t now;
  uint64_t login_deadline;
  uint64_t last_heard;
  uint64_t next_ping;
  uint8_t key[TUNNEL__FRP_KEY_SIZE];
  char run_id[RUN_ID_MAX + 1];
};

static const tunnel__mem *MEM(const tunnel_engine *e) { return &e->cfg.mem; }

static void session_free(eng_session *s);

/* ------------------------------------------------------------ plumbing */

static void enter(tunnel_engine *e) { e->depth++; }

static void leave(tunnel_engine *e) {
  if (--e->depth)
    return;
  while (e->dead) {
    eng_session *s = e->dead;
    e->dead = s->next_dead;
    session_free(s);
  }
}

static uint32_t new_num(tunnel_engine *e) {
  uint32_t n = e->next_num++;
  if (e->next_num < 2) /* wrapped: 0 and 1 are never streams */
    e->next_num = 2;
  return n;
}

static eng_stream *find_stream(eng_session *s, uint32_t num) {
  for (eng_stream *st = s ? s->streams : NULL; st; st = st->next)
    if (st->num == num)
      return st;
  return NULL;
}

/* A stream the program may name. */
static eng_stream *find_open(tunnel_engine *e, uint32_t num) {
  eng_stream *st = find_stream(e->s, num);
  return st && st->state == ST_OPEN ? st : NULL;
}

static void stream_unlink(eng_stream *st) {
  for (eng_stream **pp = &st->s->streams; *pp; pp = &(*pp)->next) {
    if (*pp == st) {
      *pp = st->next;
      break;
    }
  }
}

static void stream_free(eng_stream *st) {
  const tunnel__mem *mem = MEM(st->s->e);
  tunnel__msg_reader_free(&st->reader);
  tunnel__bufq_free(&st->out);
  tunnel__free(mem, st);
}

static void stream_drop(eng_stream *st) {
  if (st->state == ST_CONNECTING || st->state == ST_WORK)
    st->s->nworks--;
  stream_unlink(st);
  stream_free(st);
}

static eng_stream *stream_new(eng_session *s) {
  tunnel_engine *e = s->e;
  eng_stream *st = tunnel__calloc(MEM(e), 1, sizeof *st);
  if (!st)
    return NULL;
  st->s = s;
  st->num = new_num(e);
  tunnel__msg_reader_init(&st->reader, MEM(e), e->cfg.max_message_size);
  tunnel__bufq_init(&st->out, MEM(e), CONN_CHUNK);
  st->next = s->streams;
  s->streams = st;
  return st;
}

static void session_free(eng_session *s) {
  while (s->streams) {
    eng_stream *st = s->streams;
    s->streams = st->next;
    stream_free(st);
  }
  tunnel__ctlcodec_free(&s->ctl);
  tunnel__bufq_free(&s->ctl_out);
  tunnel__ymx_free(s->ymx);
  tunnel__free(MEM(s->e), s);
}

/* Ends the running session: it is detached now and freed when the
 * outermost call returns. Streams the program holds end first, then the
 * program hears why. */
static void session_down(eng_session *s, int err, const char *why) {
  tunnel_engine *e = s->e;
  if (s->dead)
    return;
  s->dead = 1;
  s->err = err;
  if (e->s == s) {
    e->s = NULL;
    e->state = E_DOWN;
  }
  s->next_dead = e->dead;
  e->dead = s;
  tunnel__log(&e->cfg.log, e->state_cb ? TUNNEL_LOG_INFO : TUNNEL_LOG_WARN,
              "engine: %s: %s", why, tunnel_strerror(err));
  for (eng_stream *st = s->streams; st; st = st->next) {
    if (st->state != ST_OPEN)
      continue;
    st->state = ST_DRAIN; /* the program's calls no longer find it */
    if (e->end_cb)
      e->end_cb(e, st->num, TUNNEL_ECLOSED, e->ud);
  }
  for (eng_proxy *p = e->proxies; p; p = p->next)
    p->sent = 0;
  if (e->state_cb)
    e->state_cb(e, err, why, e->ud);
}

/* ------------------------------------------------------------ messages */

/* Fills privilege_key and timestamp. */
static int sign(tunnel_engine *e, tunnel__msg *m) {
  const char *token = tunnel__config_token(&e->cfg);
  char key[33];
  m->timestamp = e->time_cb ? e->time_cb(e->ud) : 0;
  int rc = tunnel__privilege_key(token, strlen(token), m->timestamp, key);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(e), &m->privilege_key, key);
  tunnel__wipe(key, sizeof key);
  return rc;
}

static void clear_signed(tunnel_engine *e, tunnel__msg *m) {
  tunnel__wipe_string(m->privilege_key);
  tunnel__msg_clear(MEM(e), m);
}

/* Moves queued control bytes into the control stream as far as its window
 * allows (mux mode); the rest waits for the window callback. */
static void flush_ctl(eng_session *s) {
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
    flush_ctl(s);
  return rc;
}

static int send_ctl(eng_session *s, const tunnel__msg *m) {
  int rc = queue_ctl(s, m);
  if (rc)
    session_down(s, rc, rc == TUNNEL_ELIMIT
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
  default:
    return "tcp";
  }
}

static void send_new_proxy(eng_session *s, eng_proxy *p) {
  /* The options are borrowed into the message for the encoding only. */
  tunnel__msg m = p->opts;
  m.proxy_name = p->name;
  m.proxy_type = (char *)type_name(p->type);
  m.remote_port = p->type == TUNNEL_ENGINE_PROXY_TCP ? p->remote_port : 0;
  if (send_ctl(s, &m) == 0)
    p->sent = 1;
}

/* Registers the proxies declared since the login. */
static void register_pending(tunnel_engine *e) {
  for (eng_proxy *p = e->proxies; p && e->s && e->state == E_READY;
       p = p->next)
    if (!p->sent)
      send_new_proxy(e->s, p);
}

static eng_proxy *proxy_by_name(tunnel_engine *e, const char *name) {
  for (eng_proxy *p = e->proxies; p && name; p = p->next)
    if (strcmp(p->name, name) == 0)
      return p;
  return NULL;
}

static eng_proxy *proxy_by_id(tunnel_engine *e, uint32_t id) {
  for (eng_proxy *p = e->proxies; p; p = p->next)
    if (p->id == id)
      return p;
  return NULL;
}

/* NewWorkConn, appended to `out`. */
static int encode_work_conn(tunnel_engine *e, tunnel__bufq *out) {
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

/* ------------------------------------------------------------- streams */

/* Bytes from the visitor: to the program, or consumed here when nobody
 * listens (a mux stream would stall otherwise). */
static void deliver(eng_stream *st, const uint8_t *data, size_t len) {
  tunnel_engine *e = st->s->e;
  if (!len)
    return;
  if (e->data_cb)
    e->data_cb(e, st->num, data, len, e->ud);
  else if (st->s->mux)
    tunnel__ymx_consumed(st->s->ymx, st->id, len);
}

/* Finishes a work channel the server will not use or the program refused:
 * mux streams are reset, connections handed back to the program. */
static void work_discard(eng_stream *st) {
  eng_session *s = st->s;
  tunnel_engine *e = s->e;
  uint32_t num = st->num;
  if (s->mux) {
    if (!st->ymx_gone)
      tunnel__ymx_reset(s->ymx, st->id);
    stream_drop(st);
    return;
  }
  stream_drop(st);
  if (e->disconnect_cb)
    e->disconnect_cb(e, num, e->ud);
}

static void visitor_name(char *out, size_t cap, const tunnel__msg *m) {
  const char *a = m->src_addr ? m->src_addr : "";
  if (!*a)
    *out = '\0';
  else if (strchr(a, ':'))
    snprintf(out, cap, "[%s]:%u", a, (unsigned)m->src_port);
  else
    snprintf(out, cap, "%s:%u", a, (unsigned)m->src_port);
}

/* StartWorkConn arrived on a work channel; `rest` followed it. */
static void start_work(eng_stream *st, const tunnel__msg *m,
                       const uint8_t *rest, size_t rest_len) {
  eng_session *s = st->s;
  tunnel_engine *e = s->e;
  eng_proxy *p = NULL;
  if (m->type == TUNNEL__MSG_START_WORK_CONN && !(m->error && *m->error))
    p = proxy_by_name(e, m->proxy_name);
  if (!p) {
    const char *why = m->type != TUNNEL__MSG_START_WORK_CONN
                          ? "unexpected message"
                      : m->error && *m->error ? m->error
                                              : "no such proxy";
    tunnel__log(&e->cfg.log, TUNNEL_LOG_DEBUG,
                "engine: work channel dropped (%s)", why);
    work_discard(st);
    return;
  }
  s->nworks--;
  st->state = ST_OPEN;
  tunnel__msg_reader_free(&st->reader);
  char visitor[300];
  visitor_name(visitor, sizeof visitor, m);
  uint32_t num = st->num;
  int rc = e->open_cb ? e->open_cb(e, num, p->id, visitor, e->ud)
                      : TUNNEL_EREFUSED;
  if (s->dead)
    return;
  st = find_open(e, num); /* the callback may have closed it */
  if (!st || e->s != s)
    return;
  if (rc < 0) {
    st->state = ST_WORK; /* so it is discarded as a work channel */
    s->nworks++;
    work_discard(st);
    return;
  }
  deliver(st, rest, rest_len);
}

/* Reads StartWorkConn from a work channel; returns bytes used. */
static void work_input(eng_stream *st, const uint8_t *data, size_t len) {
  eng_session *s = st->s;
  tunnel__msg m;
  size_t used = 0;
  int rc = tunnel__msg_reader_feed(&st->reader, data, len, &used, &m);
  if (s->mux) /* the engine used these bytes itself */
    tunnel__ymx_consumed(s->ymx, st->id, used);
  if (rc < 0) {
    tunnel__log(&s->e->cfg.log, TUNNEL_LOG_DEBUG,
                "engine: bad message on a work channel: %s",
                tunnel_strerror(rc));
    work_discard(st);
    return;
  }
  if (rc == 0)
    return;
  start_work(st, &m, data + used, len - used);
  tunnel__msg_clear(MEM(s->e), &m);
}

static void new_work(eng_session *s) {
  tunnel_engine *e = s->e;
  /* Each request costs a stream or a connection: a server asking for more
   * than the limit is not obeyed. */
  if (s->nworks >= e->cfg.max_work_conns) {
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: server asked for more than %u pending work "
                "connections; request ignored",
                (unsigned)e->cfg.max_work_conns);
    return;
  }
  if (!s->mux && !e->connect_cb)
    return;
  eng_stream *st = stream_new(s);
  if (!st) {
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: no memory for a work connection");
    return;
  }
  s->nworks++;
  if (!s->mux) {
    st->state = ST_CONNECTING;
    e->connect_cb(e, st->num, e->ud);
    return;
  }
  st->state = ST_WORK;
  tunnel__bufq q;
  tunnel__bufq_init(&q, MEM(e), CTL_CHUNK);
  int rc = tunnel__ymx_open(s->ymx, st, &st->id);
  if (rc) {
    tunnel__bufq_free(&q);
    stream_drop(st);
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: cannot open a work stream: %s", tunnel_strerror(rc));
    return;
  }
  rc = encode_work_conn(e, &q);
  /* A new stream's window (256 KiB at least) takes the whole message. */
  tunnel__iov v[4];
  size_t k = rc ? 0 : tunnel__bufq_iov(&q, v, 4);
  for (size_t i = 0; i < k && rc == 0; i++) {
    size_t w = 0;
    rc = tunnel__ymx_write(s->ymx, st->id, v[i].base, v[i].len, &w);
    if (rc == 0 && w < v[i].len)
      rc = TUNNEL_ENOMEM;
  }
  tunnel__bufq_free(&q);
  if (rc) {
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: cannot start a work stream: %s", tunnel_strerror(rc));
    work_discard(st);
  }
}

/* ------------------------------------------------------------- control */

static void down_msg(eng_session *s, int err, const char *fallback,
                     const char *reason) {
  session_down(s, err, reason && *reason ? reason : fallback);
}

static int on_login_resp(eng_session *s, const tunnel__msg *m) {
  tunnel_engine *e = s->e;
  if (m->type != TUNNEL__MSG_LOGIN_RESP) {
    session_down(s, TUNNEL_EPROTO, "unexpected answer to login");
    return 0;
  }
  if (m->error && *m->error) {
    down_msg(s, TUNNEL_EAUTH, "login refused", m->error);
    return 0;
  }
  const char *id = m->run_id ? m->run_id : "";
  if (strlen(id) > RUN_ID_MAX) {
    session_down(s, TUNNEL_EPROTO, "run id too long");
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
    session_down(s, rc, "cannot start the encrypted control channel");
    return 0;
  }
  e->state = E_READY;
  e->last_heard = e->now;
  e->next_ping = e->now + (uint64_t)e->cfg.heartbeat_interval_s * 1000u;
  tunnel__log(&e->cfg.log, TUNNEL_LOG_INFO, "engine: logged in as %s",
              e->run_id);
  register_pending(e);
  if (s->dead)
    return 0;
  if (e->state_cb)
    e->state_cb(e, 0, e->run_id, e->ud);
  return !s->dead;
}

static void on_proxy_resp(tunnel_engine *e, const tunnel__msg *m) {
  eng_proxy *p = proxy_by_name(e, m->proxy_name);
  if (!p || !e->proxy_cb)
    return;
  if (m->error && *m->error)
    e->proxy_cb(e, p->id, TUNNEL_EREFUSED, m->error, e->ud);
  else
    e->proxy_cb(e, p->id, 0, m->remote_addr ? m->remote_addr : "", e->ud);
}

static int on_ctl_msg(void *ud, const tunnel__msg *m) {
  eng_session *s = ud;
  tunnel_engine *e = s->e;
  if (s->dead)
    return 0;
  e->last_heard = e->now;
  if (e->state == E_LOGIN)
    return on_login_resp(s, m);
  switch (m->type) {
  case TUNNEL__MSG_REQ_WORK_CONN:
    new_work(s);
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

static void ctl_input(eng_session *s, const uint8_t *data, size_t len) {
  size_t used;
  int rc = tunnel__ctlcodec_feed(&s->ctl, data, len, &used, on_ctl_msg, s);
  if (rc && !s->dead)
    session_down(s, rc, "bad control message");
}

static void heartbeat(eng_session *s) {
  tunnel_engine *e = s->e;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_PING);
  int rc = sign(e, &m);
  if (rc == 0)
    send_ctl(s, &m);
  else
    session_down(s, rc, "cannot sign a heartbeat");
  clear_signed(e, &m);
}

/* ---------------------------------------------------------- yamux glue */

static int ymx_on_stream(tunnel__ymx *y, uint32_t id, void **su, void *ud) {
  (void)y, (void)id, (void)su, (void)ud;
  return TUNNEL_EREFUSED; /* servers never open streams in frp's protocol */
}

static void ymx_on_data(tunnel__ymx *y, uint32_t id, void *su,
                        const uint8_t *data, size_t len, void *ud) {
  eng_session *s = ud;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    /* Control bytes are used as they arrive. */
    tunnel__ymx_consumed(y, id, len);
    ctl_input(s, data, len);
    return;
  }
  eng_stream *st = su;
  if (st->state == ST_WORK)
    work_input(st, data, len);
  else if (st->state == ST_OPEN)
    deliver(st, data, len);
}

static void ymx_on_fin(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  (void)y, (void)id;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    session_down(s, TUNNEL_ECONNRESET, "control stream ended");
    return;
  }
  eng_stream *st = su;
  if (st->state == ST_WORK) {
    work_discard(st); /* the server will not use it */
    return;
  }
  st->remote_fin = 1;
  if (s->e->end_cb)
    s->e->end_cb(s->e, st->num, 0, s->e->ud);
}

static void ymx_on_rst(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    session_down(s, TUNNEL_ECONNRESET, "control stream reset");
    return;
  }
  eng_stream *st = su;
  tunnel_engine *e = s->e;
  uint32_t num = st->num;
  int open = st->state == ST_OPEN;
  tunnel__ymx_set_user(y, id, NULL);
  stream_drop(st);
  if (open && e->end_cb)
    e->end_cb(e, num, TUNNEL_ERESET, e->ud);
}

static void ymx_on_window(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  (void)y, (void)id;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    flush_ctl(s);
    return;
  }
  eng_stream *st = su;
  if (st->state == ST_OPEN && !st->local_fin && s->e->writable_cb)
    s->e->writable_cb(s->e, st->num, s->e->ud);
}

static void ymx_on_close(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  (void)y, (void)id;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    session_down(s, TUNNEL_ECONNRESET, "control stream closed");
    return;
  }
  eng_stream *st = su;
  st->ymx_gone = 1; /* both directions finished; the program closes it */
}

static void ymx_on_goaway(tunnel__ymx *y, uint32_t code, void *ud) {
  eng_session *s = ud;
  (void)y;
  tunnel__log(&s->e->cfg.log, TUNNEL_LOG_INFO,
              "engine: server going away (code %u)", (unsigned)code);
}

static const tunnel__ymx_callbacks ymx_cb = {
    ymx_on_stream, NULL,          ymx_on_data, ymx_on_fin,    ymx_on_rst,
    ymx_on_window, ymx_on_close, NULL,        ymx_on_goaway};

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

static void proxy_free(tunnel_engine *e, eng_proxy *p) {
  tunnel__msg_clear(MEM(e), &p->opts);
  tunnel__free(MEM(e), p->name);
  tunnel__free(MEM(e), p);
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
    proxy_free(e, p);
  }
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

int tunnel_engine_add_proxy(tunnel_engine *e, const char *name, int32_t type,
                            uint32_t *proxy_out) {
  if (!e || !name || !*name || strlen(name) > 255)
    return TUNNEL_EINVAL;
  if (type != TUNNEL_ENGINE_PROXY_TCP && type != TUNNEL_ENGINE_PROXY_HTTP &&
      type != TUNNEL_ENGINE_PROXY_HTTPS)
    return TUNNEL_ENOTSUP;
  if (proxy_by_name(e, name))
    return TUNNEL_EEXIST;
  eng_proxy *p = tunnel__calloc(MEM(e), 1, sizeof *p);
  if (!p || !(p->name = tunnel__strdup(MEM(e), name))) {
    tunnel__free(MEM(e), p);
    return TUNNEL_ENOMEM;
  }
  p->id = e->next_proxy++;
  p->type = type;
  tunnel__msg_init(&p->opts, TUNNEL__MSG_NEW_PROXY);
  /* Appended: registrations go out in the order they were declared. */
  eng_proxy **pp = &e->proxies;
  while (*pp)
    pp = &(*pp)->next;
  *pp = p;
  if (proxy_out)
    *proxy_out = p->id;
  return 0;
}

/* The proxy whose options may change now. */
static int proxy_opt(tunnel_engine *e, uint32_t proxy, int http,
                     eng_proxy **out) {
  eng_proxy *p = e ? proxy_by_id(e, proxy) : NULL;
  if (!p)
    return TUNNEL_EINVAL;
  if (http != (p->type != TUNNEL_ENGINE_PROXY_TCP))
    return TUNNEL_ENOTSUP;
  if (p->sent)
    return TUNNEL_ESTATE;
  *out = p;
  return 0;
}

int tunnel_engine_proxy_set_remote_port(tunnel_engine *e, uint32_t proxy,
                                        uint16_t port) {
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, 0, &p);
  if (rc == 0)
    p->remote_port = port;
  return rc;
}

/* A host name as routing tables and peers expect it: letters, digits,
 * hyphens, underscores and dots (and a leading "*." where wildcards are
 * allowed). */
static int valid_name(const char *s, int wildcard) {
  size_t n = strlen(s);
  if (n == 0 || n > 253)
    return 0;
  if (wildcard && s[0] == '*' && s[1] == '.')
    s += 2;
  if (!*s)
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '-' || *s == '.' || *s == '_'))
      return 0;
  return 1;
}

int tunnel_engine_proxy_set_subdomain(tunnel_engine *e, uint32_t proxy,
                                      const char *name) {
  if (!name || !valid_name(name, 0) || strchr(name, '.'))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, 1, &p);
  return rc ? rc : tunnel__msg_set_str(MEM(e), &p->opts.subdomain, name);
}

int tunnel_engine_proxy_add_domain(tunnel_engine *e, uint32_t proxy,
                                   const char *fqdn) {
  if (!fqdn || !valid_name(fqdn, 1))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, 1, &p);
  return rc ? rc
            : tunnel__msg_strs_push(MEM(e), &p->opts.custom_domains, fqdn);
}

static int session_new(tunnel_engine *e, eng_session **out) {
  eng_session *s = tunnel__calloc(MEM(e), 1, sizeof *s);
  if (!s)
    return TUNNEL_ENOMEM;
  s->e = e;
  s->mux = e->cfg.tcp_mux != 0;
  tunnel__ctlcodec_init(&s->ctl, MEM(e), e->cfg.max_message_size);
  tunnel__bufq_init(&s->ctl_out, MEM(e), CTL_CHUNK);
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
    rc = tunnel__ymx_new(&s->ymx, &yc, &ymx_cb, s);
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
  m.pool_count = e->cfg.pool_count;
  if (rc == 0)
    rc = sign(e, &m);
  if (rc == 0)
    rc = queue_ctl(s, &m);
  clear_signed(e, &m);
  return rc;
}

int tunnel_engine_start(tunnel_engine *e, uint64_t now_ms) {
  if (!e)
    return TUNNEL_EINVAL;
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
  for (eng_proxy *p = e->proxies; p; p = p->next)
    p->sent = 0;
  e->s = s;
  e->state = E_LOGIN;
  e->now = now_ms;
  e->login_deadline = now_ms + e->cfg.login_timeout_ms;
  return 0;
}

/* Bytes on a work connection of its own (non-mux). */
static void conn_input(eng_stream *st, const uint8_t *data, size_t len) {
  if (st->state == ST_WORK)
    work_input(st, data, len);
  else if (st->state == ST_OPEN && !st->remote_fin)
    deliver(st, data, len);
}

/* A connection number the engine handed out (and may since have
 * finished with). */
static int known_conn(const tunnel_engine *e, uint32_t conn) {
  return conn >= 2 && conn < e->next_num;
}

int tunnel_engine_recv(tunnel_engine *e, uint32_t conn, const uint8_t *data,
                       size_t len, uint64_t now_ms) {
  if (!e || (!data && len))
    return TUNNEL_EINVAL;
  eng_session *s = e->s;
  if (!s)
    return TUNNEL_ESTATE;
  enter(e);
  e->now = now_ms;
  int rc = 0;
  if (s->mux) {
    if (conn != TUNNEL_ENGINE_CONTROL) {
      rc = TUNNEL_EINVAL;
    } else {
      rc = tunnel__ymx_recv(s->ymx, data, len);
      if (rc && !s->dead)
        session_down(s, rc, "protocol error on the connection");
    }
  } else if (conn == TUNNEL_ENGINE_CONTROL) {
    ctl_input(s, data, len);
  } else {
    eng_stream *st = find_stream(s, conn);
    if (st && st->state != ST_CONNECTING)
      conn_input(st, data, len);
    else if (!st && !known_conn(e, conn))
      rc = TUNNEL_EINVAL;
    else if (st)
      rc = TUNNEL_ESTATE;
  }
  if (s->dead)
    rc = s->err;
  leave(e);
  return rc;
}

int tunnel_engine_next_output_after(tunnel_engine *e, uint32_t after,
                                    uint32_t *conn) {
  if (!e || !conn)
    return 0;
  eng_session *s = e->s;
  if (!s)
    return 0;
  enter(e);
  register_pending(e);
  int rc = 0;
  s = e->s;
  if (s && s->mux) {
    flush_ctl(s); /* retries what a lack of memory held back */
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
    for (eng_stream *st = s->streams; st; st = st->next)
      if (st->out.size && st->num > after && st->num < best)
        best = st->num;
    if (best != UINT32_MAX) {
      *conn = best;
      rc = 1;
    }
  }
  leave(e);
  return rc;
}

int tunnel_engine_next_output(tunnel_engine *e, uint32_t *conn) {
  return tunnel_engine_next_output_after(e, 0, conn);
}

static size_t copy_out(tunnel__bufq *q, uint8_t *buf, size_t cap) {
  size_t got = 0;
  tunnel__iov v[8];
  while (got < cap && q->size) {
    size_t k = tunnel__bufq_iov(q, v, 8), n = 0;
    for (size_t i = 0; i < k && got + n < cap; i++) {
      size_t c = v[i].len < cap - got - n ? v[i].len : cap - got - n;
      memcpy(buf + got + n, v[i].base, c);
      n += c;
    }
    tunnel__bufq_consume(q, n);
    got += n;
  }
  return got;
}

int tunnel_engine_send(tunnel_engine *e, uint32_t conn, uint8_t *buf,
                       size_t cap, size_t *len) {
  if (!e || !len || (!buf && cap))
    return TUNNEL_EINVAL;
  *len = 0;
  eng_session *s = e->s;
  if (!s)
    return 0;
  enter(e);
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
    *len = copy_out(&s->ctl_out, buf, cap);
  } else {
    eng_stream *st = find_stream(s, conn);
    if (st) {
      *len = copy_out(&st->out, buf, cap);
      if (st->state == ST_DRAIN && !st->out.size) {
        stream_drop(st);
      } else if (st->state == ST_OPEN && st->want_writable &&
                 st->out.size < e->cfg.stream_window) {
        st->want_writable = 0;
        if (e->writable_cb)
          e->writable_cb(e, st->num, e->ud);
      }
    }
  }
  leave(e);
  return 0;
}

int tunnel_engine_conn_ready(tunnel_engine *e, uint32_t conn,
                             uint64_t now_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  eng_session *s = e->s;
  eng_stream *st = s && !s->mux ? find_stream(s, conn) : NULL;
  if (!st)
    return s && !s->mux && known_conn(e, conn) ? TUNNEL_ESTATE
                                               : TUNNEL_EINVAL;
  if (st->state != ST_CONNECTING)
    return TUNNEL_ESTATE;
  e->now = now_ms;
  int rc = encode_work_conn(e, &st->out);
  if (rc) {
    /* The error says it: the program closes the connection. */
    stream_drop(st);
    return rc;
  }
  st->state = ST_WORK;
  return 0;
}

int tunnel_engine_conn_closed(tunnel_engine *e, uint32_t conn, int status,
                              uint64_t now_ms) {
  if (!e || status > 0)
    return TUNNEL_EINVAL;
  eng_session *s = e->s;
  if (conn == TUNNEL_ENGINE_CONTROL) {
    if (!s)
      return 0;
    enter(e);
    e->now = now_ms;
    session_down(s, status ? status : TUNNEL_ECONNRESET,
                 "connection to the server lost");
    leave(e);
    return 0;
  }
  if (s && s->mux)
    return TUNNEL_EINVAL;
  eng_stream *st = find_stream(s, conn);
  if (!st)
    return known_conn(e, conn) ? 0 : TUNNEL_EINVAL;
  enter(e);
  e->now = now_ms;
  uint32_t num = st->num;
  if (st->state != ST_OPEN) {
    stream_drop(st);
  } else if (status == 0) {
    /* The server finished sending: the visitor half-closed. */
    if (!st->remote_fin) {
      st->remote_fin = 1;
      if (e->end_cb)
        e->end_cb(e, num, 0, e->ud);
    }
  } else {
    stream_drop(st);
    if (e->end_cb)
      e->end_cb(e, num, TUNNEL_ERESET, e->ud);
  }
  leave(e);
  return 0;
}

int tunnel_engine_tick(tunnel_engine *e, uint64_t now_ms, uint64_t *next_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  uint64_t next = UINT64_MAX;
  enter(e);
  e->now = now_ms;
  register_pending(e);
  eng_session *s = e->s;
  uint64_t timeout = (uint64_t)e->cfg.heartbeat_timeout_s * 1000u;
  uint64_t interval = (uint64_t)e->cfg.heartbeat_interval_s * 1000u;
  if (s && e->state == E_LOGIN && e->cfg.login_timeout_ms &&
      now_ms >= e->login_deadline)
    session_down(s, TUNNEL_ETIMEDOUT, "no answer to login");
  if (s && !s->dead && e->state == E_READY && timeout &&
      now_ms >= e->last_heard + timeout)
    session_down(s, TUNNEL_ETIMEDOUT, "server stopped answering");
  if (s && !s->dead && e->state == E_READY && interval &&
      now_ms >= e->next_ping) {
    e->next_ping = now_ms + interval;
    heartbeat(s);
  }
  s = e->s; /* a callback may have started another session */
  if (s && e->state == E_LOGIN && e->cfg.login_timeout_ms)
    next = e->login_deadline;
  if (s && e->state == E_READY) {
    if (timeout)
      next = e->last_heard + timeout;
    if (interval && e->next_ping < next)
      next = e->next_ping;
  }
  leave(e);
  if (next_ms)
    *next_ms = next;
  return 0;
}

int tunnel_engine_stream_write(tunnel_engine *e, uint32_t stream,
                               const uint8_t *data, size_t len,
                               size_t *taken) {
  if (taken)
    *taken = 0;
  if (!e || !taken || (!data && len))
    return TUNNEL_EINVAL;
  eng_stream *st = find_open(e, stream);
  if (!st)
    return TUNNEL_EINVAL;
  if (st->local_fin)
    return TUNNEL_ESTATE;
  eng_session *s = st->s;
  if (s->mux) {
    if (st->ymx_gone)
      return TUNNEL_ESTATE;
    return tunnel__ymx_write(s->ymx, st->id, data, len, taken);
  }
  /* Non-mux: the connection's queue stands for the window. */
  size_t limit = e->cfg.stream_window;
  size_t room = st->out.size < limit ? limit - st->out.size : 0;
  size_t n = len < room ? len : room;
  int rc = n ? tunnel__bufq_append(&st->out, data, n) : 0;
  if (rc)
    return rc;
  *taken = n;
  if (n < len)
    st->want_writable = 1;
  return 0;
}

int tunnel_engine_stream_shutdown(tunnel_engine *e, uint32_t stream) {
  eng_stream *st = e ? find_open(e, stream) : NULL;
  if (!st)
    return TUNNEL_EINVAL;
  if (st->local_fin)
    return 0;
  st->local_fin = 1;
  eng_session *s = st->s;
  if (s->mux) {
    if (!st->ymx_gone && tunnel__ymx_shutdown(s->ymx, st->id) == 1)
      st->ymx_gone = 1;
    return 0;
  }
  enter(e);
  /* A connection cannot be half-closed from here: it ends as with frp. */
  st->state = ST_DRAIN;
  if (!st->out.size)
    stream_drop(st);
  if (e->disconnect_cb)
    e->disconnect_cb(e, stream, e->ud);
  if (e->end_cb)
    e->end_cb(e, stream, TUNNEL_ECLOSED, e->ud);
  leave(e);
  return 0;
}

int tunnel_engine_stream_close(tunnel_engine *e, uint32_t stream) {
  eng_stream *st = e ? find_open(e, stream) : NULL;
  if (!st)
    return TUNNEL_EINVAL;
  eng_session *s = st->s;
  if (s->mux) {
    if (!st->ymx_gone)
      tunnel__ymx_reset(s->ymx, st->id);
    stream_drop(st);
    return 0;
  }
  enter(e);
  st->state = ST_DRAIN;
  if (!st->out.size)
    stream_drop(st);
  if (e->disconnect_cb)
    e->disconnect_cb(e, stream, e->ud);
  leave(e);
  return 0;
}

int tunnel_engine_stream_consumed(tunnel_engine *e, uint32_t stream,
                                  size_t n) {
  eng_stream *st = e ? find_open(e, stream) : NULL;
  if (!st)
    return TUNNEL_EINVAL;
  if (!st->s->mux || st->ymx_gone || !n)
    return 0;
  return tunnel__ymx_consumed(st->s->ymx, st->id, n);
}
