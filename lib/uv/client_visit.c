/* Visiting secret services from the client (frp's stcp visitors): the
 * program's dials (tunnel_client_dial) and visitors' local ports
 * (tunnel_visitor), over the engine's visits (lib/engine_visit.c). A visit
 * made while the client is not logged in waits for the login, bounded in
 * number and time; every outcome reaches its requester from the loop. */
#include <stdio.h>
#include <string.h>

#include "../engine_io.h"
#include "../log.h"
#include "client_int.h"
#include "handle.h"
#include "uverr.h"

#define MEM(c) tunnel__client_mem(c)

#define CONTAINER(ptr, type, field)                                            \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

enum {
  V_WAITING,  /* for a login */
  V_PENDING,  /* the engine's visit is under way */
  V_HANDOVER, /* non-mux: answered, its connection being handed over */
  V_DONE      /* the outcome waits to be delivered from the loop */
};

struct tunnel__cl_visit {
  tunnel_client *c;
  tunnel__cl_visit *prev, *next; /* c->visits */
  int state;
  char *name;
  char *secret;      /* wiped when freed */
  uint32_t num;      /* the engine's stream, while V_PENDING */
  uint64_t deadline; /* V_WAITING */
  /* The outcome. */
  int status;
  tunnel_stream *st;
  char message[256];
  tunnel__task task;
  /* Who asked: the program, or a visitor's local connection. */
  tunnel_client_dial_cb cb;
  void *ud;
  tunnel_visitor *visitor;
  uv_tcp_t *local;
  int cancelled; /* nobody wants the outcome any more */
};

struct tunnel_visitor {
  tunnel_client *c;
  tunnel_visitor *next; /* c->visitors */
  char *name;
  char *secret;
  uv_tcp_t *listener;
  uint16_t port;
  uint32_t waiting; /* local connections waiting for their channel */
};

typedef tunnel__cl_visit cl_visit;

/* Local connections of one visitor waiting for their channel at once:
 * beyond, new ones are closed at once. */
#define VISITOR_WAITING_MAX 256u

static uint64_t now_ms(tunnel_client *c) { return uv_now(c->loop); }

/* -------------------------------------------------------- visits */

static void visit_unlink(cl_visit *v) {
  tunnel_client *c = v->c;
  if (v->prev)
    v->prev->next = v->next;
  else
    c->visits = v->next;
  if (v->next)
    v->next->prev = v->prev;
  v->prev = v->next = NULL;
}

static void visit_free(cl_visit *v) {
  tunnel_client *c = v->c;
  tunnel__free(MEM(c), v->name);
  tunnel__wipe_string(v->secret);
  tunnel__free(MEM(c), v->secret);
  tunnel__free(MEM(c), v);
  c->objects--;
  tunnel__client_maybe_finish_close(c);
}

static void splice_gone(void *ud) { tunnel__client_maybe_finish_close(ud); }

/* A visitor's local connection learns its channel's fate. */
static void visitor_done(cl_visit *v) {
  tunnel_client *c = v->c;
  tunnel_visitor *vis = v->visitor;
  uv_tcp_t *local = v->local;
  v->local = NULL;
  if (vis)
    vis->waiting--;
  if (v->status == 0 && !c->closing) {
    tunnel__splice_start(MEM(c), &c->cfg.log, local, v->st, NULL, 0, c->readbuf,
                         TUNNEL__CLIENT_READBUF, &c->splices, splice_gone, c);
    v->st = NULL;
    return;
  }
  tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
              "client: visitor of %s: connection closed: %s%s%s", v->name,
              tunnel_strerror(v->status), *v->message ? ": " : "", v->message);
  tunnel__tcp_close_free(MEM(c), local);
}

static void visit_deliver(tunnel__task *t) {
  cl_visit *v = CONTAINER(t, cl_visit, task);
  tunnel_client *c = v->c;
  visit_unlink(v);
  if (c->closing && v->status == 0) {
    /* A stream would outlive its client: nobody gets it. */
    tunnel_stream_close(v->st, NULL, NULL);
    v->st = NULL;
    v->status = TUNNEL_ECANCELED;
    snprintf(v->message, sizeof v->message, "client closed");
  } else if (c->closing) {
    v->status = TUNNEL_ECANCELED;
  }
  if (v->local) {
    visitor_done(v);
  } else if (v->cancelled) {
    if (v->st)
      tunnel_stream_close(v->st, NULL, NULL);
  } else if (v->cb) {
    v->cb(c, v->status, v->status ? NULL : v->st, v->message, v->ud);
  }
  visit_free(v);
}

/* The outcome is known: it reaches the requester from the loop. */
static void finish(cl_visit *v, int status, tunnel_stream *st,
                   const char *message) {
  tunnel_client *c = v->c;
  if (v->state == V_DONE) { /* the first outcome stands */
    if (st)
      tunnel_stream_close(st, NULL, NULL);
    return;
  }
  if (v->state == V_WAITING)
    c->visits_waiting--;
  v->state = V_DONE;
  v->num = 0;
  v->status = status;
  v->st = st;
  snprintf(v->message, sizeof v->message, "%s", message ? message : "");
  tunnel__sched_post(&c->sched, &v->task, visit_deliver);
}

/* Asks the engine for the channel. */
static void visit_start(cl_visit *v) {
  tunnel_client *c = v->c;
  c->visits_waiting--;
  v->state = V_PENDING;
  uint32_t num = 0;
  /* Without multiplexing the engine asks for a connection inside the
   * call, and a failure to open one may end the visit before it returns:
   * the visit callback finds it here then. */
  c->visit_current = v;
  int rc = tunnel_engine_visit(c->eng, v->name, v->secret, &num);
  c->visit_current = NULL;
  if (rc) {
    finish(v, rc, NULL,
           rc == TUNNEL_ELIMIT ? "too many visits waiting for an answer"
                               : "cannot visit the service");
  } else if (v->state == V_PENDING) {
    v->num = num;
    tunnel__engine_stream_set_user(c->eng, num, v);
  }
  tunnel__client_flush_soon(c); /* sends it; the engine's tick times it */
}

static void visits_run(tunnel_client *c) {
  /* From the head after each start: outcomes unlink visits. */
  for (;;) {
    if (c->state != TUNNEL__C_READY || c->closing || !c->visits_waiting)
      return;
    cl_visit *v = c->visits;
    while (v && v->state != V_WAITING)
      v = v->next;
    if (!v)
      return;
    visit_start(v);
  }
}

static void visit_task(tunnel__task *t) {
  visits_run(CONTAINER(t, tunnel_client, visit_task));
}

void tunnel__client_visits_kick(tunnel_client *c) {
  if (c->visits_waiting && !c->closing)
    tunnel__sched_post(&c->sched, &c->visit_task, visit_task);
}

uint64_t tunnel__client_visits_tick(tunnel_client *c, uint64_t next) {
  if (!c->visits_waiting)
    return next;
  uint64_t now = now_ms(c);
  for (cl_visit *v = c->visits, *n; v; v = n) {
    n = v->next;
    if (v->state != V_WAITING)
      continue;
    if (v->deadline <= now)
      finish(v, TUNNEL_ETIMEDOUT, NULL, "not logged in to the server");
    else if (v->deadline < next)
      next = v->deadline;
  }
  return next;
}

/* A new visit, waiting; NULL when out of memory. */
static cl_visit *visit_new(tunnel_client *c, const char *name,
                           const char *secret) {
  cl_visit *v = tunnel__calloc(MEM(c), 1, sizeof *v);
  if (!v)
    return NULL;
  v->name = tunnel__strdup(MEM(c), name);
  v->secret = tunnel__strdup(MEM(c), secret);
  if (!v->name || !v->secret) {
    tunnel__free(MEM(c), v->name);
    tunnel__wipe_string(v->secret);
    tunnel__free(MEM(c), v->secret);
    tunnel__free(MEM(c), v);
    return NULL;
  }
  v->c = c;
  v->state = V_WAITING;
  v->deadline = now_ms(c) + TUNNEL__CLIENT_VISIT_WAIT_MS;
  /* Appended: visits waiting for a login go in the order they came. */
  cl_visit **pp = &c->visits;
  cl_visit *prev = NULL;
  while (*pp) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  v->prev = prev;
  *pp = v;
  c->objects++;
  c->visits_waiting++;
  /* Logged in, they all go at the next pass of the loop; otherwise the
   * wait is bounded. */
  if (c->state != TUNNEL__C_READY &&
      c->visits_waiting > TUNNEL__CLIENT_VISIT_WAIT_MAX)
    finish(v, TUNNEL_ELIMIT, NULL, "too many visits waiting for a login");
  else
    tunnel__sched_post(&c->sched, &c->visit_task, visit_task);
  tunnel__client_flush_soon(c); /* arms the timer for the deadline */
  return v;
}

/* Nobody wants the outcome: what is under way is abandoned. */
static void visit_cancel(cl_visit *v) {
  tunnel_client *c = v->c;
  v->cancelled = 1;
  v->cb = NULL;
  if (v->state == V_PENDING) {
    uint32_t num = v->num;
    finish(v, TUNNEL_ECANCELED, NULL, "");
    tunnel_engine_stream_close(c->eng, num);
    tunnel__client_flush_soon(c);
  } else if (v->state == V_WAITING) {
    finish(v, TUNNEL_ECANCELED, NULL, "");
  }
  /* V_HANDOVER and V_DONE: the outcome arrives and is dropped. */
}

tunnel__cl_visit *tunnel__client_on_visit(tunnel_client *c, uint32_t stream,
                                          int status, const char *message) {
  cl_visit *v = tunnel__engine_stream_user(c->eng, stream);
  if (!v)
    v = c->visit_current;
  if (!v || v->state != V_PENDING)
    return NULL;
  if (status < 0) {
    finish(v, status, NULL, message);
    return NULL;
  }
  tunnel__engine_stream_set_user(c->eng, stream, NULL);
  if (!c->cfg.tcp_mux) {
    v->state = V_HANDOVER;
    return v;
  }
  tunnel_stream *st = tunnel__stream_new_eng(c, &c->sched, MEM(c), stream);
  if (!st) {
    tunnel_engine_stream_close(c->eng, stream);
    finish(v, TUNNEL_ENOMEM, NULL, "no memory for the stream");
    return NULL;
  }
  tunnel__engine_stream_set_user(c->eng, stream, st);
  finish(v, 0, st, "");
  return NULL;
}

void tunnel__client_visit_opened(tunnel__cl_visit *v, tunnel_stream *st) {
  finish(v, 0, st, "");
}

void tunnel__client_visit_lost(tunnel__cl_visit *v, int status) {
  finish(v, status, NULL, "the channel ended before it was handed over");
}

void tunnel__client_visits_abort(tunnel_client *c) {
  for (cl_visit *v = c->visits, *n; v; v = n) {
    n = v->next;
    if (v->state == V_WAITING || v->state == V_PENDING) {
      uint32_t num = v->state == V_PENDING ? v->num : 0;
      finish(v, TUNNEL_ECANCELED, NULL, "client closed");
      if (num)
        tunnel_engine_stream_close(c->eng, num);
    }
  }
}

/* Names and secrets as the engine takes them. */
static int valid_arg(const char *s) { return s && *s && strlen(s) <= 255; }

int tunnel_client_dial(tunnel_client *c, const char *name, const char *secret,
                       tunnel_client_dial_cb cb, void *ud) {
  if (!c || !cb || !valid_arg(name) || !valid_arg(secret))
    return TUNNEL_EINVAL;
  if (c->closing || c->drain_timer)
    return TUNNEL_ESTATE;
  cl_visit *v = visit_new(c, name, secret);
  if (!v)
    return TUNNEL_ENOMEM;
  v->cb = cb;
  v->ud = ud;
  return 0;
}

/* ------------------------------------------------------------ visitors */

static void on_local(uv_stream_t *l, int status) {
  tunnel_visitor *vis = l->data;
  tunnel_client *c = vis->c;
  if (status < 0) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: visitor of %s: accept failed: %s", vis->name,
                tunnel_strerror(tunnel__uv_err(status)));
    return;
  }
  uv_tcp_t *tcp = tunnel__malloc(MEM(c), sizeof *tcp);
  if (!tcp) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: visitor of %s: no memory for a connection", vis->name);
    return;
  }
  uv_tcp_init(c->loop, tcp);
  if (uv_accept(l, (uv_stream_t *)tcp) != 0) {
    tunnel__tcp_close_free(MEM(c), tcp);
    return;
  }
  const char *why = c->drain_timer                        ? "client draining"
                    : vis->waiting >= VISITOR_WAITING_MAX ? "too many waiting"
                                                          : NULL;
  cl_visit *v = why ? NULL : visit_new(c, vis->name, vis->secret);
  if (!v) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: visitor of %s: connection refused: %s", vis->name,
                why ? why : "no memory");
    tunnel__tcp_close_free(MEM(c), tcp);
    return;
  }
  v->visitor = vis;
  v->local = tcp;
  vis->waiting++;
}

int tunnel_visitor_new(tunnel_visitor **out, tunnel_client *c, const char *name,
                       const char *secret) {
  if (!out || !c || !valid_arg(name) || !valid_arg(secret))
    return TUNNEL_EINVAL;
  *out = NULL;
  if (c->closing)
    return TUNNEL_ESTATE;
  tunnel_visitor *vis = tunnel__calloc(MEM(c), 1, sizeof *vis);
  if (!vis)
    return TUNNEL_ENOMEM;
  vis->name = tunnel__strdup(MEM(c), name);
  vis->secret = tunnel__strdup(MEM(c), secret);
  if (!vis->name || !vis->secret) {
    tunnel__free(MEM(c), vis->name);
    tunnel__wipe_string(vis->secret);
    tunnel__free(MEM(c), vis->secret);
    tunnel__free(MEM(c), vis);
    return TUNNEL_ENOMEM;
  }
  vis->c = c;
  vis->next = c->visitors;
  c->visitors = vis;
  *out = vis;
  return 0;
}

int tunnel_visitor_listen(tunnel_visitor *vis, const char *host,
                          uint16_t port) {
  if (!vis || !host)
    return TUNNEL_EINVAL;
  tunnel_client *c = vis->c;
  if (vis->listener || c->closing)
    return TUNNEL_ESTATE;
  struct sockaddr_storage ss;
  int rc = tunnel__parse_addr(host, port, &ss);
  if (rc)
    return rc;
  uv_tcp_t *l = tunnel__malloc(MEM(c), sizeof *l);
  if (!l)
    return TUNNEL_ENOMEM;
  uv_tcp_init(c->loop, l);
  l->data = vis;
  rc = uv_tcp_bind(l, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)l, 128, on_local);
  struct sockaddr_storage bound;
  int len = sizeof bound;
  if (rc == 0)
    rc = uv_tcp_getsockname(l, (struct sockaddr *)&bound, &len);
  if (rc) {
    tunnel__tcp_close_free(MEM(c), l);
    return tunnel__uv_err(rc);
  }
  char h[64];
  tunnel__format_addr((struct sockaddr *)&bound, h, sizeof h, &vis->port);
  vis->listener = l;
  tunnel__log(&c->cfg.log, TUNNEL_LOG_INFO,
              "client: visitor of %s listening on %s:%u", vis->name, host,
              (unsigned)vis->port);
  return 0;
}

int tunnel_visitor_port(const tunnel_visitor *vis, uint16_t *port) {
  if (!vis || !port)
    return TUNNEL_EINVAL;
  if (!vis->listener)
    return TUNNEL_ESTATE;
  *port = vis->port;
  return 0;
}

static void visitor_free(tunnel_visitor *vis) {
  tunnel_client *c = vis->c;
  if (vis->listener)
    tunnel__tcp_close_free(MEM(c), vis->listener);
  /* Connections still waiting go with it; joined ones go on. */
  for (cl_visit *v = c->visits; v; v = v->next) {
    if (v->visitor != vis)
      continue;
    v->visitor = NULL;
    if (v->local) {
      tunnel__tcp_close_free(MEM(c), v->local);
      v->local = NULL;
    }
    visit_cancel(v);
  }
  tunnel__free(MEM(c), vis->name);
  tunnel__wipe_string(vis->secret);
  tunnel__free(MEM(c), vis->secret);
  tunnel__free(MEM(c), vis);
}

int tunnel_visitor_close(tunnel_visitor *vis) {
  if (!vis)
    return TUNNEL_EINVAL;
  tunnel_client *c = vis->c;
  for (tunnel_visitor **pp = &c->visitors; *pp; pp = &(*pp)->next) {
    if (*pp == vis) {
      *pp = vis->next;
      break;
    }
  }
  visitor_free(vis);
  return 0;
}

void tunnel__client_visitors_free(tunnel_client *c) {
  while (c->visitors) {
    tunnel_visitor *vis = c->visitors;
    c->visitors = vis->next;
    visitor_free(vis);
  }
}
