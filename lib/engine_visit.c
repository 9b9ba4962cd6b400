/* The program's visits to secret services (frp's stcp visitors; see
 * include/tunnel/engine.h): a channel of its own to the server - a new
 * stream of the session, or a new connection without multiplexing - whose
 * first message names the service and proves its secret. The server's
 * answer either refuses the visit or turns the channel into a plain byte
 * pipe to the service, which from then on is an open stream like any
 * visitor's. */
#include <string.h>

#include "engine_int.h"

#define MEM(e) tunnel__eng_mem(e)

typedef tunnel__eng_session eng_session;
typedef tunnel__eng_stream eng_stream;

/* How long an answer is awaited when the configuration sets no login
 * timeout (frp's own visitors give up after 10 s). */
#define VISIT_TIMEOUT_MS 10000u

/* NewVisitorConn, appended to `out`. The key is the login's function of
 * the secret and the time; the run id tells servers that check a
 * service's allowed users whose visitor this is (others ignore it). */
static int encode_visit(tunnel_engine *e, const char *name, const char *secret,
                        tunnel__bufq *out) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_VISITOR_CONN);
  int rc = tunnel__eng_sign(e, secret, &m.timestamp, &m.sign_key);
  if (rc == 0 && *e->run_id)
    rc = tunnel__msg_set_str(MEM(e), &m.run_id, e->run_id);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(e), &m.proxy_name, name);
  if (rc == 0)
    rc = tunnel__msg_encode(MEM(e), &m, out);
  tunnel__msg_clear(MEM(e), &m); /* wipes the key */
  return rc;
}

void tunnel__eng_visit_failed(eng_stream *st, int status, const char *why,
                              int discard) {
  tunnel_engine *e = st->s->e;
  uint32_t num = st->num;
  void *user = st->user;
  if (!why)
    why = status == TUNNEL_EPROTO       ? "bad answer from the server"
          : status == TUNNEL_ETIMEDOUT  ? "no answer from the server"
          : status == TUNNEL_ECONNRESET ? "channel closed before the answer"
                                        : "";
  if (discard)
    tunnel__eng_stream_discard(st);
  else
    tunnel__eng_stream_drop(st);
  tunnel__eng_gone(e, num, user, status, why);
}

void tunnel__eng_visit_answered(eng_stream *st, const tunnel__msg *m,
                                const uint8_t *rest, size_t rest_len) {
  eng_session *s = st->s;
  tunnel_engine *e = s->e;
  if (m->type != TUNNEL__MSG_NEW_VISITOR_CONN_RESP) {
    tunnel__eng_visit_failed(st, TUNNEL_EPROTO, NULL, 1);
    return;
  }
  if (m->error && *m->error) {
    tunnel__eng_visit_failed(st, TUNNEL_EREFUSED, m->error, 1);
    return;
  }
  s->nvisits--;
  st->state = TUNNEL__ST_OPEN;
  tunnel__msg_reader_free(&st->reader);
  uint32_t num = st->num;
  if (!e->visit_cb) { /* nobody would ever hear of it */
    tunnel__eng_stream_discard(st);
    return;
  }
  e->visit_cb(e, num, 0, "", e->ud);
  if (s->dead || e->s != s)
    return;
  st = tunnel__eng_find_stream(s, num); /* the callback may have closed it */
  if (st && st->state == TUNNEL__ST_OPEN)
    tunnel__eng_deliver(st, rest, rest_len);
}

uint64_t tunnel__eng_visit_tick(eng_session *s, uint64_t next) {
  tunnel_engine *e = s->e;
  uint64_t timeout =
      e->cfg.login_timeout_ms ? e->cfg.login_timeout_ms : VISIT_TIMEOUT_MS;
  /* Visits waiting are few and short-lived: a walk while there are any.
   * From the head after each failure: its callback may change the list. */
  while (s->nvisits && !s->dead && e->s == s) {
    eng_stream *st = s->streams;
    for (; st; st = st->next) {
      if (!tunnel__eng_visiting(st))
        continue;
      /* A visit's time starts at the first tick that sees it: the engine
       * learns the time only from the program's calls. */
      if (!st->next_ping)
        st->next_ping = e->now + timeout;
      if (st->next_ping <= e->now)
        break;
      if (st->next_ping < next)
        next = st->next_ping;
    }
    if (!st)
      break;
    tunnel__eng_visit_failed(st, TUNNEL_ETIMEDOUT, NULL, 1);
  }
  return next;
}

int tunnel_engine_visit(tunnel_engine *e, const char *name, const char *secret,
                        uint32_t *stream_out) {
  if (stream_out)
    *stream_out = 0;
  if (!e || !stream_out || !name || !*name || strlen(name) > 255 || !secret ||
      !*secret || strlen(secret) > 255)
    return TUNNEL_EINVAL;
  eng_session *s = e->s;
  if (!s || s->dead || e->state != TUNNEL__E_READY || e->draining ||
      (!s->mux && !e->connect_cb))
    return TUNNEL_ESTATE;
  /* Each visit waiting for its answer holds a stream or a connection. */
  if (s->nvisits >= e->cfg.max_work_conns)
    return TUNNEL_ELIMIT;
  eng_stream *st = tunnel__eng_stream_new(s);
  if (!st)
    return TUNNEL_ENOMEM;
  st->state = s->mux ? TUNNEL__ST_VISIT : TUNNEL__ST_VCONNECTING;
  s->nvisits++;
  tunnel__eng_enter(e);
  /* Non-mux: queued now, sent once the connection is ready. */
  tunnel__bufq q;
  tunnel__bufq_init(&q, MEM(e), TUNNEL__ENG_CTL_CHUNK);
  int rc = encode_visit(e, name, secret, s->mux ? &q : &st->out);
  if (rc)
    tunnel__eng_stream_drop(st);
  else if (s->mux)
    rc = tunnel__eng_open_send(st, &q);
  tunnel__bufq_free(&q);
  if (rc == 0) {
    *stream_out = st->num;
    if (!s->mux)
      e->connect_cb(e, st->num, e->ud);
  }
  tunnel__eng_leave(e);
  return rc;
}
