/* The client's connection over its life: attempts through the program's
 * connect callback, reconnection with backoff after a loss, proxies asked
 * for again when a reconnection finds them still held, the program's stop,
 * and the graceful drain. */
#include <string.h>

#include "engine_int.h"
#include "log.h"

#define MEM(e) tunnel__eng_mem(e)

typedef tunnel__eng_proxy eng_proxy;

const char *tunnel_client_event_name(int event) {
  switch (event) {
  case TUNNEL_EVENT_CONNECTING:
    return "connecting";
  case TUNNEL_EVENT_LOGGED_IN:
    return "logged in";
  case TUNNEL_EVENT_LOST:
    return "lost";
  case TUNNEL_EVENT_RETRYING:
    return "retrying";
  case TUNNEL_EVENT_GAVE_UP:
    return "gave up";
  case TUNNEL_EVENT_DRAINING:
    return "draining";
  default:
    return "unknown";
  }
}

void tunnel__eng_event(tunnel_engine *e, int32_t event, int32_t status,
                       uint32_t delay_ms, const char *message) {
  if (e->event_cb)
    e->event_cb(e, event, status, delay_ms, message ? message : "", e->ud);
}

/* Errors that the same attempt would meet again: a wrong token, a server
 * certificate that fails verification, the program's own stop. */
static int final_error(int err) {
  return err == TUNNEL_EAUTH || err == TUNNEL_ECERTUNTRUSTED ||
         err == TUNNEL_ECERTNAME || err == TUNNEL_ECERTPIN ||
         err == TUNNEL_ECANCELED;
}

/* Half of `ceiling` plus a random part of the other half ("equal
 * jitter"): never much sooner than the backoff says, and a crowd of
 * clients cut off together comes back spread over the interval. */
static uint32_t jittered(tunnel_engine *e, uint32_t ceiling) {
  uint32_t r = 0;
  if (ceiling < 2 || e->random_cb((uint8_t *)&r, sizeof r, e->ud) != 0)
    return ceiling;
  uint32_t half = ceiling / 2;
  return half + r % (ceiling - half + 1);
}

/* The next ceiling: the initial delay, then doubled up to the maximum. */
static uint32_t next_ceiling(const tunnel_engine *e, uint32_t cur) {
  uint32_t max = e->cfg.reconnect_max_ms;
  if (cur == 0)
    return e->cfg.reconnect_initial_ms;
  return cur > max / 2 ? max : cur * 2;
}

void tunnel__eng_lost(tunnel_engine *e, int err, const char *why,
                      int was_up) {
  if (was_up) {
    e->failures = 0;
    if (e->now - e->up_since >= TUNNEL__ENG_STABLE_MS)
      e->delay_ceiling = 0; /* a stable session: back to the first delay */
  } else {
    e->failures++;
  }
  if (e->state_cb)
    e->state_cb(e, err, why, e->ud);
  /* A session lost while draining is news; one the program stopped is
   * not. */
  if (!e->halted || e->draining)
    tunnel__eng_event(e, TUNNEL_EVENT_LOST, err, 0, why);
  /* The program may have stopped the engine or started it again. */
  if (e->state != TUNNEL__E_DOWN || e->halted)
    return;
  int give_up = !e->cfg.reconnect || !e->connect_cb || final_error(err) ||
                (e->cfg.reconnect_max_attempts &&
                 e->failures >= e->cfg.reconnect_max_attempts);
  if (give_up) {
    tunnel__log(&e->cfg.log, TUNNEL_LOG_INFO,
                "engine: not reconnecting (%s)", tunnel_strerror(err));
    tunnel__eng_event(e, TUNNEL_EVENT_GAVE_UP, err, 0, why);
    return;
  }
  e->delay_ceiling = next_ceiling(e, e->delay_ceiling);
  uint32_t delay = jittered(e, e->delay_ceiling);
  e->state = TUNNEL__E_WAIT;
  e->retry_at = e->now + delay;
  tunnel__log(&e->cfg.log, TUNNEL_LOG_INFO,
              "engine: reconnecting in %u ms", (unsigned)delay);
  tunnel__eng_event(e, TUNNEL_EVENT_RETRYING, err, delay, why);
}

void tunnel__eng_attempt_failed(tunnel_engine *e, int err, const char *why) {
  e->state = TUNNEL__E_DOWN;
  tunnel__log(&e->cfg.log, TUNNEL_LOG_INFO, "engine: %s: %s", why,
              tunnel_strerror(err));
  tunnel__eng_lost(e, err, why, 0);
}

/* Asks the program for connection 1. */
static void attempt(tunnel_engine *e) {
  e->state = TUNNEL__E_CONNECTING;
  e->retry_at = 0;
  e->connect_deadline = e->now + (e->cfg.login_timeout_ms
                                      ? e->cfg.login_timeout_ms
                                      : e->cfg.reconnect_max_ms);
  tunnel__eng_event(e, TUNNEL_EVENT_CONNECTING, 0, 0, NULL);
  /* The program may answer from inside: ready, failed, or stopped. */
  if (e->state == TUNNEL__E_CONNECTING)
    e->connect_cb(e, TUNNEL_ENGINE_CONTROL, e->ud);
}

uint64_t tunnel__eng_life_tick(tunnel_engine *e, uint64_t next) {
  if (e->state == TUNNEL__E_CONNECTING && !e->s &&
      e->now >= e->connect_deadline) {
    /* The attempt hangs (a SYN into the void): abandoned. */
    if (e->disconnect_cb)
      e->disconnect_cb(e, TUNNEL_ENGINE_CONTROL, e->ud);
    if (e->state == TUNNEL__E_CONNECTING && !e->s)
      tunnel__eng_attempt_failed(e, TUNNEL_ETIMEDOUT,
                                 "cannot connect to the server");
  }
  if (e->state == TUNNEL__E_WAIT && e->now >= e->retry_at)
    attempt(e);
  if (e->state == TUNNEL__E_WAIT && e->retry_at < next)
    next = e->retry_at;
  if (e->state == TUNNEL__E_CONNECTING && !e->s &&
      e->connect_deadline < next)
    next = e->connect_deadline;
  if (e->s && e->state == TUNNEL__E_READY) {
    for (eng_proxy *p = e->proxies; p; p = p->next)
      if (!p->sent && !p->held && !p->withdrawn && p->retry_at &&
          p->retry_at < next)
        next = p->retry_at;
  }
  return next;
}

int tunnel__eng_proxy_refused(tunnel_engine *e, eng_proxy *p) {
  /* A proxy the server took before: the refusal is most likely its own
   * old registration, still held by a session the server has not yet
   * noticed is gone. Asked again, with backoff. */
  if (!p->accepted || !e->cfg.reconnect || e->draining || e->halted)
    return 0;
  /* The port the server had chosen may have gone to someone else while
   * this client was away: after a few tries, any port will do. */
  if (p->chosen_port && ++p->chosen_refusals >= 3) {
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: proxy %s: port %u not available again; letting the "
                "server choose",
                p->name, (unsigned)p->chosen_port);
    p->chosen_port = 0;
    p->chosen_refusals = 0;
  }
  p->retry_ms = next_ceiling(e, p->retry_ms);
  p->retry_at = e->now + jittered(e, p->retry_ms);
  p->sent = 0;
  tunnel__log(&e->cfg.log, TUNNEL_LOG_INFO,
              "engine: proxy %s refused after reconnecting; asking again in "
              "%u ms",
              p->name, (unsigned)(p->retry_at - e->now));
  return 1;
}

/* ---------------------------------------------------------------- API */

int tunnel_engine_connect(tunnel_engine *e, uint64_t now_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  if (e->s || e->state == TUNNEL__E_CONNECTING || !e->connect_cb ||
      !e->random_cb)
    return TUNNEL_ESTATE;
  tunnel__eng_enter(e);
  e->now = now_ms;
  e->halted = 0;
  e->draining = 0;
  e->failures = 0;
  e->delay_ceiling = 0;
  for (eng_proxy *p = e->proxies; p; p = p->next)
    p->withdrawn = 0;
  attempt(e);
  tunnel__eng_leave(e);
  return 0;
}

int tunnel_engine_stop(tunnel_engine *e, uint64_t now_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  tunnel__eng_enter(e);
  e->now = now_ms;
  e->halted = 1;
  if (e->s) {
    tunnel__eng_session_down(e->s, TUNNEL_ECANCELED, "stopped");
  } else if (e->state == TUNNEL__E_CONNECTING) {
    e->state = TUNNEL__E_DOWN;
    if (e->disconnect_cb)
      e->disconnect_cb(e, TUNNEL_ENGINE_CONTROL, e->ud);
  }
  if (!e->s)
    e->state = e->state == TUNNEL__E_IDLE ? TUNNEL__E_IDLE : TUNNEL__E_DOWN;
  e->retry_at = 0;
  tunnel__eng_leave(e);
  return 0;
}

int tunnel_engine_drain(tunnel_engine *e, uint64_t now_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  if (e->draining)
    return 0;
  if (!e->s || e->state != TUNNEL__E_READY)
    return tunnel_engine_stop(e, now_ms);
  tunnel__eng_enter(e);
  e->now = now_ms;
  e->draining = 1;
  e->halted = 1;
  tunnel__eng_event(e, TUNNEL_EVENT_DRAINING, 0, 0, NULL);
  /* Withdrawn one by one from the head: a failed send ends the session,
   * and its callbacks may change the list. */
  for (eng_proxy *p = e->proxies; p && e->s && !e->s->dead;) {
    if (p->withdrawn) {
      p = p->next;
      continue;
    }
    p->withdrawn = 1;
    if (p->sent)
      tunnel__eng_send_close_proxy(e->s, p);
    p = e->proxies;
  }
  /* Work channels waiting for a visitor will not carry one. */
  for (;;) { /* from the head each time: callbacks may change the list */
    tunnel__eng_stream *st = e->s ? e->s->streams : NULL;
    while (st && st->state != TUNNEL__ST_WORK &&
           st->state != TUNNEL__ST_CONNECTING &&
           st->state != TUNNEL__ST_DGRAM)
      st = st->next;
    if (!st)
      break;
    tunnel__eng_stream_discard(st);
  }
  tunnel__eng_leave(e);
  return 0;
}

uint32_t tunnel_engine_stream_count(const tunnel_engine *e) {
  uint32_t n = 0;
  for (tunnel__eng_stream *st = e && e->s ? e->s->streams : NULL; st;
       st = st->next)
    n += st->state == TUNNEL__ST_OPEN;
  return n;
}
