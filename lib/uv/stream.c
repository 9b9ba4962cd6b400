#include "stream.h"

#include <string.h>
#include <sys/socket.h>

#include "../yamux.h"
#include "handle.h"
#include "mux.h"
#include "uverr.h"

/* Read size of TCP streams: large reads, few syscalls. */
#define TCP_READ_BUF (64u * 1024u)

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

static void tcp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void tcp_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  tunnel_stream *st = h->data;
  (void)hint;
  *buf = uv_buf_init((char *)st->tcp_rbuf, TCP_READ_BUF);
}

/* Interval of the reset check on a paused TCP stream. */
#define TCP_WATCH_MS 1000

/* The socket's pending error (a reset that arrived while nobody read). */
static void tcp_watch_cb(uv_timer_t *t) {
  tunnel_stream *st = t->data;
  uv_os_fd_t fd;
  int err = 0;
  socklen_t len = sizeof err;
  if (!st->tcp || !st->tcp_open || st->error || st->closing ||
      uv_fileno((uv_handle_t *)st->tcp, &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0)
    return;
  uv_timer_stop(t);
  tunnel__stream_on_fail(st, tunnel__uv_err(uv_translate_sys_error(err)));
}

/* A TCP stream reads from the socket only while a reader wants data and
 * nothing is queued: stopping is the backpressure. */
static void tcp_sync_reading(tunnel_stream *st) {
  if (!st->tcp || !st->tcp_open)
    return;
  int want = st->reading && !st->rx.size && !st->eof_received &&
             !st->error && !st->closing;
  int watch = !want && !st->eof_received && !st->error && !st->closing;
  if (st->tcp_watch_open && watch != uv_is_active((uv_handle_t *)&st->tcp_watch)) {
    if (watch)
      uv_timer_start(&st->tcp_watch, tcp_watch_cb, TCP_WATCH_MS,
                     TCP_WATCH_MS);
    else
      uv_timer_stop(&st->tcp_watch);
  }
  if (want == st->tcp_reading)
    return;
  st->tcp_reading = want;
  if (want)
    uv_read_start((uv_stream_t *)st->tcp, tcp_alloc_cb, tcp_read_cb);
  else
    uv_read_stop((uv_stream_t *)st->tcp);
}

tunnel_stream *tunnel__stream_new(tunnel__mux *m, tunnel__sched *sched,
                                  const tunnel__mem *mem, uint32_t id) {
  tunnel_stream *st = tunnel__calloc(mem, 1, sizeof *st);
  if (!st)
    return NULL;
  st->mux = m;
  st->sched = sched;
  st->mem = mem;
  st->id = id;
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

static void stream_free(tunnel_stream *st) {
  tunnel__sched *sched = st->sched;
  list_remove(st);
  tunnel__bufq_free(&st->rx);
  tunnel__bufq_free(&st->tx);
  tunnel__free(st->mem, st->tcp_rbuf);
  tunnel__free(st->mem, st);
  tunnel__sched_unref(sched); /* may end the owner: last */
}

tunnel_stream *tunnel__stream_new_tcp(tunnel__sched *sched,
                                      const tunnel__mem *mem, uv_tcp_t *tcp,
                                      const uint8_t *prefix, size_t len) {
  tunnel_stream *st = tunnel__stream_new(NULL, sched, mem, 0);
  if (st && (!(st->tcp_rbuf = tunnel__malloc(mem, TCP_READ_BUF)) ||
             (len && tunnel__bufq_append(&st->rx, prefix, len) != 0))) {
    stream_free(st);
    st = NULL;
  }
  if (!st) {
    tunnel__tcp_close_free(mem, tcp);
    return NULL;
  }
  st->tcp = tcp;
  st->tcp_open = 1;
  tcp->data = st;
  uv_timer_init(tcp->loop, &st->tcp_watch);
  st->tcp_watch.data = st;
  st->tcp_watch_open = 1;
  tcp_sync_reading(st);
  uv_tcp_nodelay(tcp, 1);
  return st;
}

static void tcp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  tunnel_stream *st = s->data;
  (void)buf;
  if (nread > 0) {
    tunnel__stream_on_data(st, st->tcp_rbuf, (size_t)nread);
  } else if (nread == UV_EOF) {
    tunnel__stream_on_fin(st);
  } else if (nread < 0) {
    tunnel__stream_on_fail(st, tunnel__uv_err((int)nread));
  }
  tcp_sync_reading(st);
}

/* Returns the window to the peer for bytes the reader has taken. */
static void consumed(tunnel_stream *st, size_t n) {
  if (n && st->mux && !st->forgotten) {
    tunnel__ymx_consumed(tunnel__mux_session(st->mux), st->id, n);
    tunnel__mux_flush_soon(st->mux);
  }
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
  tcp_sync_reading(st);
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
  tcp_sync_reading(st);
  if (st->mux && err != TUNNEL_ERESET && !st->forgotten) {
    /* A local failure (out of memory): tell the peer. */
    tunnel__ymx_reset(tunnel__mux_session(st->mux), st->id);
    st->forgotten = 1;
    tunnel__mux_flush_soon(st->mux);
  }
  tunnel__bufq_consume(&st->tx, st->tx.size); /* never to be sent */
  post(st);
}

void tunnel__stream_on_forgotten(tunnel_stream *st) { st->forgotten = 1; }

void tunnel__stream_pump(tunnel_stream *st) {
  tunnel__mux *m = st->mux;
  if (!m || st->error || st->closing)
    return;
  tunnel__ymx *y = tunnel__mux_session(m);
  uint64_t before = st->tx_out;
  while (st->tx.size) {
    if (!tunnel__mux_has_room(m)) {
      tunnel__mux_wait_room(m, st);
      break;
    }
    int64_t win = tunnel__ymx_send_window(y, st->id);
    if (win <= 0)
      break; /* on_window will call again */
    tunnel__iov iov;
    tunnel__bufq_iov(&st->tx, &iov, 1);
    size_t len = iov.len < (uint64_t)win ? iov.len : (size_t)win;
    size_t w = 0;
    int rc = tunnel__mux_send(m, st->id, iov.base, len, &w);
    if (rc) {
      tunnel__stream_on_fail(st, rc);
      return;
    }
    tunnel__bufq_consume(&st->tx, w);
    st->tx_out += w;
    if (w < len)
      break;
  }
  if (!st->tx.size && st->shut_requested && !st->shut_sent) {
    int rc = tunnel__ymx_shutdown(y, st->id);
    if (rc < 0) {
      tunnel__stream_on_fail(st, rc);
      return;
    }
    st->shut_sent = 1;
    st->shut_cb_pending = 1;
    if (rc == 1)
      st->forgotten = 1;
  }
  if (st->tx_out != before || st->shut_cb_pending)
    post(st);
  tunnel__mux_flush_soon(m);
}

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
  stream_free(st);
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
  /* A TCP stream is freed only once libuv is done with its handle. */
  if (st->closing && !st->tcp_open && !st->tcp_watch_open)
    finish_close(st);
}

/* ---------------------------------------------------------- TCP side */

/* uv_buf_t lengths are unsigned int: larger writes go out as several
 * buffers, never truncated. */
#define TCP_MAX_BUF (1u << 30)

typedef struct tcp_wbuf {
  uv_write_t req;
  tunnel_stream *st;
  size_t len;
  unsigned nbufs;
  uv_buf_t *bufs;
  uint8_t *data;
} tcp_wbuf;

static void tcp_write_cb(uv_write_t *req, int status) {
  tcp_wbuf *w = (tcp_wbuf *)req;
  tunnel_stream *st = w->st;
  st->tcp_pending -= w->len;
  st->tx_out += w->len;
  tunnel__free(st->mem, w);
  if (status < 0 && status != UV_ECANCELED)
    tunnel__stream_on_fail(st, tunnel__uv_err(status));
  post(st);
}

/* Writes what the socket takes now and queues a copy of the rest. Returns
 * how much went out at once, or an error. */
static int tcp_send(tunnel_stream *st, const uint8_t *data, size_t len,
                    size_t *done) {
  *done = 0;
  if (st->tcp_pending == 0) {
    size_t first = len < TCP_MAX_BUF ? len : TCP_MAX_BUF;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)first);
    int n = uv_try_write((uv_stream_t *)st->tcp, &b, 1);
    if (n > 0)
      *done = (size_t)n;
    else if (n != UV_EAGAIN)
      return tunnel__uv_err(n);
  }
  if (*done == len)
    return 0;
  size_t rest = len - *done;
  size_t nbufs = rest / TCP_MAX_BUF + (rest % TCP_MAX_BUF != 0);
  if (nbufs > (SIZE_MAX - sizeof(tcp_wbuf) - rest) / sizeof(uv_buf_t))
    return TUNNEL_ENOMEM;
  tcp_wbuf *w = tunnel__malloc(st->mem, sizeof *w + nbufs * sizeof(uv_buf_t) +
                                            rest);
  if (!w)
    return TUNNEL_ENOMEM;
  w->st = st;
  w->len = rest;
  w->nbufs = (unsigned)nbufs;
  w->bufs = (uv_buf_t *)(void *)(w + 1);
  w->data = (uint8_t *)(w->bufs + nbufs);
  memcpy(w->data, data + *done, rest);
  for (size_t i = 0, off = 0; i < nbufs; i++, off += TCP_MAX_BUF) {
    size_t n = rest - off < TCP_MAX_BUF ? rest - off : TCP_MAX_BUF;
    w->bufs[i] = uv_buf_init((char *)w->data + off, (unsigned)n);
  }
  int rc = uv_write(&w->req, (uv_stream_t *)st->tcp, w->bufs, w->nbufs,
                    tcp_write_cb);
  if (rc) {
    tunnel__free(st->mem, w);
    return tunnel__uv_err(rc);
  }
  st->tcp_pending += rest;
  return 0;
}

static void tcp_shut_cb(uv_shutdown_t *req, int status) {
  tunnel_stream *st = req->data;
  if (status < 0 && status != UV_ECANCELED)
    tunnel__stream_on_fail(st, tunnel__uv_err(status));
  st->shut_sent = 1;
  st->shut_cb_pending = 1;
  post(st);
}

static void tcp_watch_closed_cb(uv_handle_t *h) {
  tunnel_stream *st = h->data;
  st->tcp_watch_open = 0;
  post(st);
}

static void tcp_closed_cb(uv_handle_t *h) {
  tunnel_stream *st = h->data;
  tunnel__free(st->mem, st->tcp);
  st->tcp = NULL;
  st->tcp_open = 0;
  post(st);
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
  tcp_sync_reading(st);
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
  tcp_sync_reading(st);
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
  tunnel__mux *m = st->mux;
  if (st->tcp) {
    int rc = tcp_send(st, data, len, &direct);
    if (rc) {
      tunnel__free(st->mem, r);
      return rc;
    }
    wreq_push(st, r, len, direct, cb, ud);
    return 0;
  }
  if (m && st->tx.size == 0 && tunnel__mux_has_room(m)) {
    /* Straight into the session while the window is open: one copy. */
    int rc = tunnel__mux_send(m, st->id, data, len, &direct);
    if (rc) {
      tunnel__free(st->mem, r);
      return rc;
    }
  }
  if (len > direct && tunnel__bufq_append(&st->tx, data + direct,
                                          len - direct) != 0) {
    /* Part went out already: the stream cannot stay consistent. */
    tunnel__free(st->mem, r);
    if (direct) {
      tunnel__stream_on_fail(st, TUNNEL_ENOMEM);
      st->tx_out += direct;
    }
    return TUNNEL_ENOMEM;
  }
  wreq_push(st, r, len, direct, cb, ud);
  if (direct < len && m && st->tx.size == len - direct &&
      !tunnel__mux_has_room(m))
    tunnel__mux_wait_room(m, st);
  return 0;
}

size_t tunnel_stream_write_queue_size(const tunnel_stream *st) {
  if (!st)
    return 0;
  return st->tcp ? st->tcp_pending : st->tx.size;
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
  if (st->tcp) {
    /* libuv sends the FIN after the queued writes. */
    st->tcp_shut.data = st;
    int rc = uv_shutdown(&st->tcp_shut, (uv_stream_t *)st->tcp, tcp_shut_cb);
    if (rc) {
      st->shut_requested = 0;
      st->shut_cb = NULL;
      return tunnel__uv_err(rc);
    }
    return 0;
  }
  tunnel__stream_pump(st);
  return 0;
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
  if (st->tcp && st->tcp_open) {
    uv_read_stop((uv_stream_t *)st->tcp);
    st->tcp_reading = 0;
    int clean = st->eof_received && st->shut_sent && !st->error;
    /* As with a mux stream, an unfinished stream ends in a reset. */
    if (clean || uv_tcp_close_reset(st->tcp, tcp_closed_cb) != 0)
      uv_close((uv_handle_t *)st->tcp, tcp_closed_cb);
  }
  if (st->tcp_watch_open && !uv_is_closing((uv_handle_t *)&st->tcp_watch))
    uv_close((uv_handle_t *)&st->tcp_watch, tcp_watch_closed_cb);
  if (st->mux) {
    if (!st->forgotten) {
      tunnel__ymx_reset(tunnel__mux_session(st->mux), st->id);
      st->forgotten = 1;
      tunnel__mux_flush_soon(st->mux);
    }
    tunnel__mux_detach(st->mux, st);
  }
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
