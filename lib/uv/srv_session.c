/* Sessions, logins and work connections: what a client's connection says
 * first, who may log in (keys, clock skew, replays), the control channel,
 * and the pool of work streams that visitors of any proxy kind wait for. */
#include <stdio.h>
#include <string.h>

#include "../crypto.h"
#include "srv.h"
#include "stream.h"
#include "uverr.h"

#define MEM tunnel__srv_mem
#define CONTAINER TUNNEL__CONTAINER

/* Work streams parked per client beyond what it was asked for: frp allows
 * a few extra before it drops them. */
#define POOL_SLACK 10u
#define MAX_POOL_COUNT 32u
/* Visitors of one client waiting for a work stream. */
#define MAX_WAITING 256u

static srv_ctl *find_ctl(tunnel_server *srv, const char *run_id);

int tunnel__srv_send_ctl(srv_ctl *ctl, const tunnel__msg *m) {
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
    tunnel__srv_ctl_destroy(ctl);
    return TUNNEL_ELIMIT;
  }
  return 0;
}

static void req_work_conn(srv_ctl *ctl) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_REQ_WORK_CONN);
  if (tunnel__srv_send_ctl(ctl, &m) == 0)
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


void tunnel__srv_drain_end(srv_drain *d) {
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
    tunnel__srv_drain_end(ud);
}

static void drain_shed(tunnel__anon *a) {
  TUNNEL__SRV_COUNT(CONTAINER(a, srv_drain, anon)->srv, UNAUTH_SHED);
  tunnel__srv_drain_end(CONTAINER(a, srv_drain, anon));
}

void tunnel__srv_drain_start(tunnel_server *srv, tunnel_stream *st,
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
  if (st->link)
    tunnel__anon_add(&srv->anon, &d->anon, addr, TUNNEL__SRV_ANON_RAW_COST,
                     drain_shed);
  d->next = srv->drains;
  if (srv->drains)
    srv->drains->prev = d;
  srv->drains = d;
  tunnel_stream_read_start(st, drain_then_close, d);
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



/* ------------------------------------------------------------ waiters */

int tunnel__srv_want_work(srv_ctl *ctl, srv_waiter *w) {
  srv_work *pw = pool_pop(ctl);
  srv_proxy *p = w->proxy;
  if (pw) {
    TUNNEL__SRV_COUNT(ctl->srv, POOL_HITS);
    TUNNEL__SRV_COUNT(ctl->srv, VISITORS_TOTAL);
    p->visitors_total++;
    tunnel_stream *st = pw->st;
    tunnel__free(MEM(ctl->srv), pw);
    tunnel_stream_read_stop(st);
    req_work_conn(ctl); /* refill the pool */
    w->next = NULL;
    w->got(w, st);
    return 0;
  }
  if (ctl->nwaiting >= MAX_WAITING) {
    TUNNEL__SRV_COUNT(ctl->srv, VISITORS_REFUSED_LIMIT);
    return TUNNEL_ELIMIT;
  }
  TUNNEL__SRV_COUNT(ctl->srv, POOL_MISSES);
  TUNNEL__SRV_COUNT(ctl->srv, VISITORS_TOTAL);
  p->visitors_total++;
  w->next = NULL;
  if (ctl->waiting_tail)
    ctl->waiting_tail->next = w;
  else
    ctl->waiting = w;
  ctl->waiting_tail = w;
  ctl->nwaiting++;
  req_work_conn(ctl);
  return 0;
}

void tunnel__srv_cancel_work(srv_ctl *ctl, srv_waiter *w) {
  srv_waiter *prev = NULL;
  for (srv_waiter **pp = &ctl->waiting; *pp; prev = *pp, pp = &(*pp)->next) {
    if (*pp == w) {
      *pp = w->next;
      if (ctl->waiting_tail == w)
        ctl->waiting_tail = prev;
      ctl->nwaiting--;
      w->next = NULL;
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
    tunnel__srv_ctl_destroy(ctl);
    return 0;
  }
  switch (m->type) {
  case TUNNEL__MSG_NEW_PROXY:
    tunnel__srv_on_new_proxy(ctl, m);
    break;
  case TUNNEL__MSG_CLOSE_PROXY:
    tunnel__srv_on_close_proxy(ctl, m);
    break;
  case TUNNEL__MSG_PING: {
    tunnel__msg pong;
    tunnel__msg_init(&pong, TUNNEL__MSG_PONG);
    tunnel__srv_send_ctl(ctl, &pong);
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
  if (ctl->splices.count) {
    ctl->free_due = 1; /* the last join to end frees it */
    return;
  }
  tunnel__ctlchan_free(&ctl->ch);
  tunnel__free(MEM(srv), ctl);
  srv->objects--;
  tunnel__srv_maybe_finish_close(srv);
}

static void ctl_splice_gone(void *ud) {
  srv_ctl *ctl = ud;
  tunnel_server *srv = ctl->srv;
  if (ctl->free_due && ctl->splices.count == 0)
    ctl_free_task(&ctl->free_task);
  else
    tunnel__srv_maybe_finish_close(srv); /* a drain may be waiting on it */
}

static void srv_splice_gone(void *ud) { tunnel__srv_maybe_finish_close(ud); }

void tunnel__srv_join(tunnel_server *srv, srv_ctl *ctl, uv_tcp_t *tcp,
                      tunnel_stream *st, const uint8_t *prefix,
                      size_t prefix_len, tunnel__traffic *tr,
                      const uint8_t *key) {
  if (ctl && ctl->dead)
    ctl = NULL;
  srv->handles--; /* the join owns the visitor's handle now */
  tunnel__splice_start_counted(MEM(srv), &srv->cfg.log, tcp, st, prefix,
                               prefix_len, srv->readbuf,
                               TUNNEL__SRV_READBUF_SIZE,
                               ctl ? &ctl->splices : &srv->splices,
                               ctl ? ctl_splice_gone : srv_splice_gone,
                               ctl ? (void *)ctl : (void *)srv, tr, key);
}

/* The client is gone: its proxies, pool, waiting visitors and session. */
void tunnel__srv_ctl_destroy(srv_ctl *ctl) {
  if (ctl->dead)
    return;
  ctl->dead = 1;
  tunnel_server *srv = ctl->srv;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO, "server: [%s] client gone",
              ctl->run_id);
  tunnel__srv_close_proxies(ctl);
  /* Its visitors go with it, whatever carries them. */
  tunnel__splice_abort_all(&ctl->splices);
  tunnel__srv_pairs_abort(ctl);
  while (ctl->waiting) {
    srv_waiter *w = ctl->waiting;
    tunnel__srv_cancel_work(ctl, w);
    w->drop(w);
  }
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
    tunnel__srv_sess_destroy(ctl->sess);
  }
  tunnel__sched_post(&srv->sched, &ctl->free_task, ctl_free_task);
}

void tunnel__srv_ctl_drain(srv_ctl *ctl) {
  if (ctl->dead)
    return;
  tunnel__srv_close_proxies(ctl);
  srv_work *w;
  while ((w = pool_pop(ctl)) != NULL) {
    tunnel_stream_close(w->st, NULL, NULL);
    tunnel__free(MEM(ctl->srv), w);
  }
  /* Streams already open (visitors joined to them) carry on. */
  if (ctl->sess)
    tunnel__mux_goaway(ctl->sess->mux);
}

static srv_ctl *find_ctl(tunnel_server *srv, const char *run_id) {
  if (!run_id || !*run_id)
    return NULL;
  for (srv_ctl *c = srv->ctls; c; c = c->next)
    if (!c->dead && strcmp(c->run_id, run_id) == 0)
      return c;
  return NULL;
}

/* Answers a Login with `why` and ends the channel (the caller logs). */
static void send_refusal(tunnel_server *srv, tunnel_stream *st,
                         const char *addr, const char *why) {
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_LOGIN_RESP);
  tunnel__msg_set_str(MEM(srv), &r.version, TUNNEL_VERSION_STRING);
  tunnel__msg_set_str(MEM(srv), &r.error, why);
  tunnel__srv_send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  /* FIN after the answer; the client ends the session when it reads it. */
  tunnel_stream_shutdown(st, NULL, NULL);
  tunnel__srv_drain_start(srv, st, addr);
}

/* `stat`: the refusal's counter. */
static void refuse_login(tunnel_server *srv, tunnel_stream *st,
                         const char *addr, const char *why, int32_t stat) {
  srv->stats[stat]++;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
              "server: login from %s refused: %s", addr, why);
  send_refusal(srv, st, addr, why);
}

/* ------------------------------------------------ failed logins per address */

int tunnel__srv_logins_init(tunnel_server *srv) {
  uint8_t seed[TUNNEL__RATELIMIT_SEED_SIZE];
  int rc = tunnel__uv_err(uv_random(NULL, NULL, seed, sizeof seed, 0, NULL));
  if (rc == 0)
    rc = tunnel__ratelimit_new(&srv->logins, MEM(srv),
                               TUNNEL__RATELIMIT_DEFAULT_CAPACITY,
                               srv->cfg.login_failures,
                               srv->cfg.login_window_ms, seed);
  tunnel__wipe(seed, sizeof seed);
  return rc;
}

/* The peer's address as bytes (4 or 16); 0 when it is not numeric (then
 * no limit applies: the accept path could not name the peer). */
static size_t addr_bytes(const char *addr, uint8_t out[16]) {
  if (uv_inet_pton(AF_INET, addr, out) == 0)
    return 4;
  if (uv_inet_pton(AF_INET6, addr, out) == 0)
    return 16;
  return 0;
}

/* A flood from one address gives one log line per window with the count
 * of refusals, not one per attempt. */
uint32_t tunnel__srv_blocked_for(tunnel_server *srv, const char *addr,
                                 const char *what) {
  uint8_t ab[16];
  size_t alen = addr_bytes(addr, ab);
  uint32_t report = 0;
  uint32_t wait_ms = tunnel__ratelimit_check(srv->logins, ab, alen,
                                             uv_now(srv->loop), &report);
  if (!wait_ms)
    return 0;
  uint32_t wait_s = (wait_ms + 999u) / 1000u;
  if (report)
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: %s from %s refused: too many failed %ss from "
                "this address (%u refused since the last such line; blocked "
                "for %u s more)",
                what, addr, what, (unsigned)report, (unsigned)wait_s);
  return wait_s;
}

/* Refuses a login from an address out of attempts, before any key check:
 * 1 when it did. */
static int refuse_if_blocked(tunnel_server *srv, tunnel_stream *st,
                             const char *addr) {
  uint32_t wait_s = tunnel__srv_blocked_for(srv, addr, "login");
  if (!wait_s)
    return 0;
  TUNNEL__SRV_COUNT(srv, LOGINS_REFUSED_RATE);
  char why[96];
  snprintf(why, sizeof why,
           "too many failed logins from this address; retry in %u s",
           (unsigned)wait_s);
  send_refusal(srv, st, addr, why);
  return 1;
}

void tunnel__srv_count_failure(tunnel_server *srv, const char *addr) {
  uint8_t ab[16];
  size_t alen = addr_bytes(addr, ab);
  if (alen)
    (void)tunnel__ratelimit_fail(srv->logins, ab, alen, uv_now(srv->loop));
}

int64_t tunnel__srv_now_seconds(void) {
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
  int ok = key && strlen(key) == 32 &&
           tunnel__privilege_key(token, strlen(token), ts, want) == 0 &&
           tunnel__ct_equal(want, key, 32);
  tunnel__wipe(want, sizeof want);
  if (!ok)
    return "authorization failed: token mismatch";
  uint32_t skew = srv->cfg.auth_max_skew_s;
  int64_t now = tunnel__srv_now_seconds();
  if (skew && (ts < now - (int64_t)skew || ts > now + (int64_t)skew))
    return "authorization failed: timestamp out of range (check the "
           "clock)";
  return NULL;
}

static void on_login(tunnel_server *srv, srv_sess *sess, tunnel_stream *st,
                     const char *addr, const tunnel__msg *m) {
  if (refuse_if_blocked(srv, st, addr))
    return;
  if (sess && sess->ctl) {
    refuse_login(srv, st, addr, "session already logged in",
                 TUNNEL_SERVER_STAT_LOGINS_REFUSED_OTHER);
    return;
  }
  const char *why = check_key(srv, m->privilege_key, m->timestamp);
  if (why) {
    tunnel__srv_count_failure(srv, addr);
    refuse_login(srv, st, addr, why, TUNNEL_SERVER_STAT_LOGINS_REFUSED_AUTH);
    return;
  }
  srv_ctl *old = find_ctl(srv, m->run_id);
  if (old) {
    /* The same client reconnecting replaces its session, but only with a
     * later login: a replayed one must not take the live session over. */
    if (*tunnel__config_token(&srv->cfg) && m->timestamp <= old->login_ts) {
      tunnel__srv_count_failure(srv, addr);
      refuse_login(srv, st, addr,
                   "authorization failed: login not newer than the "
                   "session it would replace (replayed)",
                   TUNNEL_SERVER_STAT_LOGINS_REFUSED_AUTH);
      return;
    }
    tunnel__srv_ctl_destroy(old);
  }
  if (srv->nctl >= srv->cfg.max_clients) {
    refuse_login(srv, st, addr, "too many clients",
                 TUNNEL_SERVER_STAT_LOGINS_REFUSED_CLIENTS);
    return;
  }
  srv_ctl *ctl = tunnel__calloc(MEM(srv), 1, sizeof *ctl);
  if (!ctl) {
    refuse_login(srv, st, addr, "server out of memory",
                 TUNNEL_SERVER_STAT_LOGINS_REFUSED_OTHER);
    return;
  }
  ctl->srv = srv;
  ctl->sess = sess;
  ctl->st = st;
  ctl->login_ts = m->timestamp;
  ctl->since_ms = uv_now(srv->loop);
  ctl->since_unix = tunnel__srv_now_seconds();
  snprintf(ctl->version, sizeof ctl->version, "%s",
           m->version ? m->version : "");
  snprintf(ctl->addr, sizeof ctl->addr, "%s", addr);
  ctl->pool_count = m->pool_count < 0 ? 0 : (uint32_t)m->pool_count;
  if (ctl->pool_count > MAX_POOL_COUNT)
    ctl->pool_count = MAX_POOL_COUNT;
  if (m->run_id && *m->run_id && strlen(m->run_id) < sizeof ctl->run_id)
    snprintf(ctl->run_id, sizeof ctl->run_id, "%s", m->run_id);
  else if (gen_run_id(ctl->run_id) != 0) {
    tunnel__free(MEM(srv), ctl);
    refuse_login(srv, st, addr, "server cannot generate a run id",
                 TUNNEL_SERVER_STAT_LOGINS_REFUSED_OTHER);
    return;
  }
  tunnel__ctlchan_init(&ctl->ch, st, MEM(srv), srv->cfg.max_message_size);
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_LOGIN_RESP);
  int rc = tunnel__msg_set_str(MEM(srv), &r.version, TUNNEL_VERSION_STRING);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(srv), &r.run_id, ctl->run_id);
  if (rc == 0)
    rc = tunnel__srv_send_plain(srv, st, &r);
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
    tunnel__mux_set_max_streams(sess->mux, srv->cfg.max_streams);
  }
  ctl->next = srv->ctls;
  if (srv->ctls)
    srv->ctls->prev = ctl;
  srv->ctls = ctl;
  srv->nctl++;
  TUNNEL__SRV_COUNT(srv, LOGINS_OK);
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
  tunnel__srv_send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  tunnel_stream_shutdown(st, NULL, NULL);
  tunnel__srv_drain_start(srv, st, addr);
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
  /* A multiplexing client opens its work streams in its session: a
   * connection of its own naming it can only be someone else's. */
  if (ctl->sess)
    return "the client's work streams come in its session";
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
    srv_waiter *w = ctl->waiting;
    tunnel__srv_cancel_work(ctl, w);
    /* It came for this visitor (asked for when the visitor arrived): the
     * pool was not drawn, so ask again only if what is pooled and on its
     * way no longer covers the pool and the visitors still waiting. Over
     * TLS each extra work connection would cost a handshake. */
    if (ctl->pooled + ctl->requested < ctl->pool_count + ctl->nwaiting)
      req_work_conn(ctl);
    w->got(w, st);
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
  case TUNNEL__MSG_NEW_VISITOR_CONN:
    tunnel__srv_on_new_visitor(srv, sess, st, addr, m);
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

/* Ends a channel that has not said what it is. */
void tunnel__srv_first_end(srv_first *f) {
  tunnel_stream *st = f->st;
  first_unlink(f);
  tunnel_stream_close(st, NULL, NULL);
}

static void first_shed(tunnel__anon *a) {
  srv_first *f = CONTAINER(a, srv_first, anon);
  TUNNEL__SRV_COUNT(f->srv, UNAUTH_SHED);
  tunnel__log(&f->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: unauthenticated channel from %s shed to make room",
              f->addr);
  tunnel__srv_first_end(f);
}

/* Reads the first message of a new stream (mux) or connection (raw). */
void tunnel__srv_first_start(tunnel_server *srv, srv_sess *sess,
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
    tunnel__anon_add(&srv->anon, &f->anon, addr, TUNNEL__SRV_ANON_RAW_COST,
                     first_shed);
  if (tunnel__ctlchan_read(&f->ch, on_first_msg, f) != 0) {
    first_unlink(f);
    tunnel_stream_close(st, NULL, NULL);
  }
}

static void on_stream(tunnel__mux *mux, tunnel_stream *st, void *ud) {
  srv_sess *sess = ud;
  (void)mux;
  /* Draining: told by GoAway to open none; nothing new is taken. */
  if (sess->srv->draining) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  /* Before its login a session needs one stream; a few spare allow for a
   * retry, more are only a way to make the server hold memory. */
  if (!sess->authed && sess->nfirst >= sess->srv->cfg.unauth_streams) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  if (!sess->authed)
    sess->nfirst++;
  tunnel__srv_first_start(sess->srv, sess, st, sess->addr);
}

static void on_mux_end(tunnel__mux *mux, int err, void *ud) {
  srv_sess *sess = ud;
  (void)mux;
  tunnel__log(&sess->srv->cfg.log, TUNNEL_LOG_DEBUG,
              "server: session ended: %s", tunnel_strerror(err));
  if (sess->ctl)
    tunnel__srv_ctl_destroy(sess->ctl); /* also destroys the session */
  else
    tunnel__srv_sess_destroy(sess);
}

const tunnel__mux_callbacks tunnel__srv_mux_cb = {on_stream, NULL,
                                                 on_mux_end};

static void sess_free_task(tunnel__task *t) {
  srv_sess *sess = CONTAINER(t, srv_sess, free_task);
  tunnel_server *srv = sess->srv;
  tunnel__free(MEM(srv), sess);
  srv->objects--;
  tunnel__srv_maybe_finish_close(srv);
}

void tunnel__srv_sess_destroy(srv_sess *sess) {
  if (sess->dead)
    return;
  sess->dead = 1;
  tunnel_server *srv = sess->srv;
  if (sess->ctl) {
    srv_ctl *ctl = sess->ctl;
    sess->ctl = NULL;
    ctl->sess = NULL;
    tunnel__srv_ctl_destroy(ctl);
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

