/* What every tunnel_stream does whatever carries it (stream_mux.c,
 * stream_tcp.c): delivery to the reader, write requests and their
 * callbacks, half-close and closing. */
#include "stream.h"

#include <string.h>

struct tunnel__wreq {
  tunnel__wreq *next;
  uint64_t end; /* done once tx_out reaches this */
  tunnel_stream_write_cb cb;
  void *ud;
};

#define CONTAINER(ptr, type, field)                                            \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

static void task(tunnel__task *t);

static void post(tunnel_stream *st) { tunnel__sched_post(st->sched, &st->task, task); }

void tunnel__stream_post(tunnel_stream *st) { post(st); }

tunnel_stream *tunnel__stream_alloc(const tunnel__stream_ops *ops,
                                    tunnel__sched *sched,
                                    const tunnel__mem *mem) {
  tunnel_stream *st = tunnel__calloc(mem, 1, sizeof *st);
  if (!st)
    return NULL;
  st->ops = ops;
  st->sched = sched;
  st->mem = mem;
  tunnel__sched_ref(sched);
  tunnel__bufq_init(&st->rx, mem, 16384);
  tunnel__bufq_init(&st->tx, mem, 65536);
  return st;
}

static void list_remove(tunnel_stream *st) {
  tunnel__stream_list *l = st->list;
  if (!l)
    return;
  if (st->list_prev)
    st->list_prev->list_next = st->list_next;
  else
    l->head = st->list_next;
  if (st->list_next)
    st->list_next->list_prev = st->list_prev;
  st->list = NULL;
  st->list_prev = st->list_next = NULL;
}

void tunnel__stream_list_add(tunnel__stream_list *l, tunnel_stream *st) {
  list_remove(st);
  st->list = l;
  st->list_prev = NULL;
  st->list_next = l->head;
  if (l->head)
    l->head->list_prev = st;
  l->head = st;
}

void tunnel__stream_list_fail_all(tunnel__stream_list *l, int err) {
  while (l->head) {
    tunnel_stream *st = l->head;
    list_remove(st);
    if (!st->closing)
      tunnel__stream_on_fail(st, err);
  }
}

void tunnel__stream_free(tunnel_stream *st) {
  tunnel__sched *sched = st->sched;
  list_remove(st);
  tunnel__bufq_free(&st->rx);
  tunnel__bufq_free(&st->tx);
  tunnel__free(st->mem, st);
  tunnel__sched_unref(sched); /* may end the owner: last */
}

static void consumed(tunnel_stream *st, size_t n) {
  if (n)
    st->ops->consumed(st, n);
}

/* Hands data to the current reader; returns how much it took. */
static size_t give(tunnel_stream *st, const uint8_t *d, size_t n) {
  if (st->take_cb) {
    unsigned gen = st->read_gen;
    size_t took = st->take_cb(st, 0, d, n, st->read_ud);
    /* Taking less means the internal reader is done: the rest waits for
     * whoever reads next (unless the callback already named one). */
    if (took < n && gen == st->read_gen)
      st->reading = 0;
    return took;
  }
  st->read_cb(st, 0, d, n, st->read_ud);
  return n;
}

static void give_status(tunnel_stream *st, int status) {
  if (st->take_cb)
    st->take_cb(st, status, NULL, 0, st->read_ud);
  else
    st->read_cb(st, status, NULL, 0, st->read_ud);
}

/* Delivers queued data, then EOF or the error, while a reader wants it. */
static void deliver(tunnel_stream *st) {
  if (st->error) {
    if (st->reading && !st->error_delivered && !st->closing) {
      st->error_delivered = 1;
      tunnel__bufq_consume(&st->rx, st->rx.size);
      give_status(st, st->error);
    }
    return;
  }
  while (st->reading && st->rx.size && !st->closing) {
    tunnel__iov iov;
    tunnel__bufq_iov(&st->rx, &iov, 1);
    size_t took = give(st, iov.base, iov.len);
    if (st->closing)
      return;
    if (took > iov.len)
      took = iov.len;
    tunnel__bufq_consume(&st->rx, took);
    consumed(st, took);
    if (took < iov.len)
      return; /* the reader wants no more for now */
  }
  if (st->reading && !st->rx.size && st->eof_received && !st->eof_delivered &&
      !st->closing) {
    st->eof_delivered = 1;
    give_status(st, TUNNEL_EEOF);
  }
  st->ops->sync_reading(st);
}

void tunnel__stream_on_data(tunnel_stream *st, const uint8_t *d, size_t n) {
  if (st->closing || st->error)
    return;
  if (st->reading && st->rx.size == 0) {
    size_t took = give(st, d, n);
    if (st->closing || st->error)
      return;
    if (took > n)
      took = n;
    consumed(st, took);
    d += took;
    n -= took;
  }
  /* What the reader did not take waits here; the window it still occupies
   * is what holds the peer back. */
  if (n && tunnel__bufq_append(&st->rx, d, n) != 0) {
    tunnel__stream_on_fail(st, TUNNEL_ENOMEM);
    return;
  }
  /* A reader named during the call above (an accept callback run from a
   * control message) found nothing queued yet: deliver from the loop. */
  if (n && st->reading)
    post(st);
}

void tunnel__stream_on_fin(tunnel_stream *st) {
  st->eof_received = 1;
  if (st->reading && st->rx.size == 0 && !st->closing)
    post(st);
}

void tunnel__stream_on_fail(tunnel_stream *st, int err) {
  if (st->error)
    return;
  st->error = err;
  if (err == TUNNEL_ERESET)
    st->forgotten = 1;
  st->ops->sync_reading(st);
  st->ops->fail(st);
  tunnel__bufq_consume(&st->tx, st->tx.size); /* never to be sent */
  post(st);
}

void tunnel__stream_on_forgotten(tunnel_stream *st) { st->forgotten = 1; }

/* Fires completed write and shutdown callbacks; stops if one closes us. */
static void complete_writes(tunnel_stream *st) {
  while (st->wreq_head && !st->closing) {
    tunnel__wreq *r = st->wreq_head;
    int status = st->error;
    if (!status && r->end > st->tx_out)
      break;
    st->wreq_head = r->next;
    if (!st->wreq_head)
      st->wreq_tail = NULL;
    tunnel_stream_write_cb cb = r->cb;
    void *ud = r->ud;
    tunnel__free(st->mem, r);
    if (cb)
      cb(st, status, ud);
  }
  if (st->closing)
    return;
  if (st->shut_cb && (st->shut_cb_pending || st->error)) {
    tunnel_stream_write_cb cb = st->shut_cb;
    st->shut_cb = NULL;
    st->shut_cb_pending = 0;
    cb(st, st->error, st->shut_ud);
  }
}

static void finish_close(tunnel_stream *st) {
  /* Pending callbacks learn of the cancellation before the close. */
  while (st->wreq_head) {
    tunnel__wreq *r = st->wreq_head;
    st->wreq_head = r->next;
    if (r->cb)
      r->cb(st, TUNNEL_ECANCELED, r->ud);
    tunnel__free(st->mem, r);
  }
  if (st->shut_cb) {
    tunnel_stream_write_cb cb = st->shut_cb;
    st->shut_cb = NULL;
    cb(st, TUNNEL_ECANCELED, st->shut_ud);
  }
  tunnel__sched_cancel(st->sched, &st->task);
  if (st->close_cb)
    st->close_cb(st, st->close_ud);
  tunnel__stream_free(st);
}

static void task(tunnel__task *t) {
  tunnel_stream *st = CONTAINER(t, tunnel_stream, task);
  if (!st->closing)
    complete_writes(st);
  if (!st->closing)
    deliver(st);
  if (!st->closing && st->error && st->watch_cb && !st->watch_fired) {
    st->watch_fired = 1;
    st->watch_cb(st, st->error, st->watch_ud);
  }
  if (st->closing && st->ops->closed(st))
    finish_close(st);
}

/* ------------------------------------------------------------- public */

static int start_reading(tunnel_stream *st, tunnel_stream_read_cb read_cb,
                         tunnel__stream_take_fn take_cb, void *ud) {
  if (st->closing)
    return TUNNEL_ECLOSED;
  st->read_cb = read_cb;
  st->take_cb = take_cb;
  st->read_ud = ud;
  st->reading = 1;
  st->read_gen++;
  if (st->rx.size || st->eof_received || st->error)
    post(st);
  st->ops->sync_reading(st);
  return 0;
}

int tunnel__stream_take_start(tunnel_stream *st, tunnel__stream_take_fn cb,
                              void *ud) {
  if (!st || !cb)
    return TUNNEL_EINVAL;
  return start_reading(st, NULL, cb, ud);
}

int tunnel_stream_read_start(tunnel_stream *st, tunnel_stream_read_cb cb,
                             void *ud) {
  if (!st || !cb)
    return TUNNEL_EINVAL;
  return start_reading(st, cb, NULL, ud);
}

int tunnel_stream_read_stop(tunnel_stream *st) {
  if (!st)
    return TUNNEL_EINVAL;
  st->reading = 0;
  st->ops->sync_reading(st);
  return 0;
}

/* Records a write of `len` bytes, `direct` of them already handed on; its
 * callback fires once tx_out passes its end. */
static void wreq_push(tunnel_stream *st, tunnel__wreq *r, size_t len,
                      size_t direct, tunnel_stream_write_cb cb, void *ud) {
  st->tx_in += len;
  st->tx_out += direct;
  r->next = NULL;
  r->end = st->tx_in;
  r->cb = cb;
  r->ud = ud;
  if (st->wreq_tail)
    st->wreq_tail->next = r;
  else
    st->wreq_head = r;
  st->wreq_tail = r;
  if (direct == len)
    post(st);
}

int tunnel_stream_write(tunnel_stream *st, const uint8_t *data, size_t len,
                        tunnel_stream_write_cb cb, void *ud) {
  if (!st || (!data && len))
    return TUNNEL_EINVAL;
  if (st->closing)
    return TUNNEL_ECLOSED;
  if (st->error)
    return st->error;
  if (st->shut_requested)
    return TUNNEL_ESTATE;
  tunnel__wreq *r = tunnel__malloc(st->mem, sizeof *r);
  if (!r)
    return TUNNEL_ENOMEM;
  size_t direct = 0;
  int rc = st->ops->write(st, data, len, &direct);
  if (rc) {
    tunnel__free(st->mem, r);
    return rc;
  }
  wreq_push(st, r, len, direct, cb, ud);
  return 0;
}

int tunnel__stream_queue_rest(tunnel_stream *st, const uint8_t *data,
                              size_t len, size_t direct) {
  if (len > direct &&
      tunnel__bufq_append(&st->tx, data + direct, len - direct) != 0) {
    if (direct) {
      /* Part went out already: the stream cannot stay consistent. */
      tunnel__stream_on_fail(st, TUNNEL_ENOMEM);
      st->tx_out += direct;
    }
    return TUNNEL_ENOMEM;
  }
  return 0;
}

size_t tunnel_stream_write_queue_size(const tunnel_stream *st) {
  if (!st)
    return 0;
  return st->ops->queue_size(st);
}

int tunnel_stream_shutdown(tunnel_stream *st, tunnel_stream_write_cb cb,
                           void *ud) {
  if (!st)
    return TUNNEL_EINVAL;
  if (st->closing)
    return TUNNEL_ECLOSED;
  if (st->error)
    return st->error;
  if (st->shut_requested)
    return TUNNEL_ESTATE;
  st->shut_requested = 1;
  st->shut_cb = cb;
  st->shut_ud = ud;
  int rc = st->ops->shutdown(st);
  if (rc) {
    st->shut_requested = 0;
    st->shut_cb = NULL;
  }
  return rc;
}

int tunnel_stream_close(tunnel_stream *st, tunnel_stream_close_cb cb,
                        void *ud) {
  if (!st)
    return TUNNEL_EINVAL;
  if (st->closing)
    return TUNNEL_ECLOSED;
  st->closing = 1;
  st->close_cb = cb;
  st->close_ud = ud;
  st->ops->close(st);
  post(st);
  return 0;
}

void tunnel__stream_watch(tunnel_stream *st,
                          void (*cb)(tunnel_stream *st, int err, void *ud),
                          void *ud) {
  st->watch_cb = cb;
  st->watch_ud = ud;
  if (st->error)
    post(st);
}

void tunnel_stream_set_user_data(tunnel_stream *st, void *ud) {
  if (st)
    st->user_data = ud;
}

void *tunnel_stream_get_user_data(const tunnel_stream *st) {
  return st ? st->user_data : NULL;
}
