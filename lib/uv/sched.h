/* Deferred calls: work that must not run inside the API call that caused it
 * (callbacks promised "from the loop") is queued here and run from a uv_idle
 * handle on the next loop iteration. */
#ifndef TUNNEL_LIB_UV_SCHED_H
#define TUNNEL_LIB_UV_SCHED_H

#include <uv.h>

typedef struct tunnel__task tunnel__task;
typedef void (*tunnel__task_fn)(tunnel__task *t);

/* Embed in the object that owns the work. */
struct tunnel__task {
  tunnel__task *next, *prev; /* doubly linked: cancelling is O(1) */
  tunnel__task_fn fn;
  unsigned gen; /* run in which it was posted */
  int queued;
};

typedef struct tunnel__sched {
  uv_idle_t idle;
  tunnel__task *head;
  tunnel__task *tail;
  unsigned gen;
  int closing;
  /* Objects that will still post tasks (streams): the owner may close the
   * scheduler only when none is left. `drained` fires when the count drops
   * to zero. */
  unsigned refs;
  void (*drained)(void *ud);
  void *drained_ud;
} tunnel__sched;

void tunnel__sched_ref(tunnel__sched *s);
void tunnel__sched_unref(tunnel__sched *s);

int tunnel__sched_init(tunnel__sched *s, uv_loop_t *loop);
/* Queues `t` once (a task already queued stays where it is). */
void tunnel__sched_post(tunnel__sched *s, tunnel__task *t, tunnel__task_fn fn);
/* Removes a queued task (before freeing its owner); constant time. */
void tunnel__sched_cancel(tunnel__sched *s, tunnel__task *t);
/* Runs what is still queued, then closes the idle handle; `cb` gets the uv
 * handle when it may be freed. Nothing may be posted afterwards. */
void tunnel__sched_close(tunnel__sched *s, uv_close_cb cb);

#endif
