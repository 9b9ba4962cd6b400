#include "sched.h"

static void unlink_task(tunnel__sched *s, tunnel__task *t) {
  if (t->prev)
    t->prev->next = t->next;
  else
    s->head = t->next;
  if (t->next)
    t->next->prev = t->prev;
  else
    s->tail = t->prev;
  t->next = t->prev = NULL;
  t->queued = 0;
}

static void run(uv_idle_t *idle) {
  tunnel__sched *s = idle->data;
  /* Tasks posted while running carry the new generation and wait for the
   * next iteration, so a task that re-posts itself cannot starve the loop. */
  unsigned g = ++s->gen;
  while (s->head && s->head->gen != g) {
    tunnel__task *t = s->head;
    unlink_task(s, t);
    t->fn(t);
  }
  if (!s->head)
    uv_idle_stop(&s->idle);
}

int tunnel__sched_init(tunnel__sched *s, uv_loop_t *loop) {
  s->head = s->tail = NULL;
  s->gen = 0;
  s->closing = 0;
  s->refs = 0;
  s->drained = NULL;
  s->drained_ud = NULL;
  s->idle.data = s;
  return uv_idle_init(loop, &s->idle);
}

void tunnel__sched_post(tunnel__sched *s, tunnel__task *t, tunnel__task_fn fn) {
  t->fn = fn;
  if (t->queued || s->closing)
    return;
  t->queued = 1;
  t->gen = s->gen;
  t->next = NULL;
  t->prev = s->tail;
  if (s->tail)
    s->tail->next = t;
  else
    s->head = t;
  s->tail = t;
  uv_idle_start(&s->idle, run);
}

void tunnel__sched_cancel(tunnel__sched *s, tunnel__task *t) {
  if (t->queued)
    unlink_task(s, t);
}

void tunnel__sched_close(tunnel__sched *s, uv_close_cb cb) {
  /* Queued work is mostly frees: run it now rather than leak it. */
  while (s->head) {
    tunnel__task *t = s->head;
    unlink_task(s, t);
    t->fn(t);
  }
  s->closing = 1;
  uv_close((uv_handle_t *)&s->idle, cb);
}

void tunnel__sched_ref(tunnel__sched *s) { s->refs++; }

void tunnel__sched_unref(tunnel__sched *s) {
  if (--s->refs == 0 && s->drained)
    s->drained(s->drained_ud);
}
