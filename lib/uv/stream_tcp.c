/* Streams over a whole connection (frp's non-mux mode), plain or TLS:
 * reading stops as backpressure, writes go to the link (a copy of what it
 * does not take at once), half-close is the link's shutdown (TCP FIN, after
 * close_notify with TLS), an unfinished close a reset. */
#include <string.h>

#include "handle.h"
#include "link.h"
#include "stream.h"
#include "uverr.h"

/* Interval of the reset check on a paused stream. */
#define TCP_WATCH_MS 1000

/* A failure that arrived while nobody read (a reset, a TLS alert). */
static void tcp_watch_cb(uv_timer_t *t) {
  tunnel_stream *st = t->data;
  if (!st->link || !st->tcp_open || st->error || st->closing)
    return;
  int err = tunnel__link_check(st->link);
  if (err == 0)
    return;
  uv_timer_stop(t);
  tunnel__stream_on_fail(st, err);
}

static void tcp_read_cb(tunnel__link *l, int status, const uint8_t *data,
                        size_t n, void *ud);

/* A stream reads from its link only while a reader wants data and nothing
 * is queued: stopping is the backpressure. */
static void tcp_sync_reading(tunnel_stream *st) {
  if (!st->link || !st->tcp_open)
    return;
  int want = st->reading && !st->rx.size && !st->eof_received &&
             !st->error && !st->closing;
  int watch = !want && !st->eof_received && !st->error && !st->closing;
  if (st->tcp_watch_open &&
      watch != uv_is_active((uv_handle_t *)&st->tcp_watch)) {
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
    tunnel__link_read_start(st->link, tcp_read_cb, st);
  else
    tunnel__link_read_stop(st->link);
}

static const tunnel__stream_ops tcp_ops;

tunnel_stream *tunnel__stream_new_link(tunnel__sched *sched,
                                       const tunnel__mem *mem,
                                       tunnel__link *link,
                                       const uint8_t *prefix, size_t len) {
  tunnel_stream *st = tunnel__stream_alloc(&tcp_ops, sched, mem);
  if (st && len && tunnel__bufq_append(&st->rx, prefix, len) != 0) {
    tunnel__stream_free(st);
    st = NULL;
  }
  if (!st) {
    tunnel__link_close(link, 1, NULL, NULL);
    return NULL;
  }
  st->link = link;
  st->tcp_open = 1;
  uv_timer_init(link->loop, &st->tcp_watch);
  st->tcp_watch.data = st;
  st->tcp_watch_open = 1;
  tcp_sync_reading(st);
  return st;
}

tunnel_stream *tunnel__stream_new_tcp(tunnel__sched *sched,
                                      const tunnel__mem *mem, uv_tcp_t *tcp,
                                      const uint8_t *prefix, size_t len) {
  tunnel__link *link;
  if (tunnel__link_new_tcp(&link, sched, mem, tcp) != 0)
    return NULL;
  return tunnel__stream_new_link(sched, mem, link, prefix, len);
}

static void tcp_read_cb(tunnel__link *l, int status, const uint8_t *data,
                        size_t n, void *ud) {
  tunnel_stream *st = ud;
  (void)l;
  if (status == 0)
    tunnel__stream_on_data(st, data, n);
  else if (status == TUNNEL_EEOF)
    tunnel__stream_on_fin(st);
  else
    tunnel__stream_on_fail(st, status);
  tcp_sync_reading(st);
}

/* uv_buf_t lengths are unsigned int: larger writes go out as several
 * buffers, never truncated. */
#define TCP_MAX_BUF (1u << 30)

typedef struct tcp_wbuf {
  tunnel__link_wreq req;
  tunnel_stream *st;
  size_t len;
  unsigned nbufs;
  uv_buf_t *bufs;
  uint8_t *data;
} tcp_wbuf;

static void tcp_write_cb(tunnel__link_wreq *req, int status) {
  tcp_wbuf *w = (tcp_wbuf *)req;
  tunnel_stream *st = w->st;
  st->tcp_pending -= w->len;
  st->tx_out += w->len;
  tunnel__free(st->mem, w);
  if (status < 0 && status != TUNNEL_ECANCELED)
    tunnel__stream_on_fail(st, status);
  tunnel__stream_post(st);
}

/* Writes what the link takes now and queues a copy of the rest. Returns
 * how much went out at once, or an error. */
static int tcp_send(tunnel_stream *st, const uint8_t *data, size_t len,
                    size_t *done) {
  *done = 0;
  if (st->tcp_pending == 0) {
    size_t first = len < TCP_MAX_BUF ? len : TCP_MAX_BUF;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)first);
    int n = tunnel__link_try_write(st->link, &b, 1);
    if (n < 0)
      return n;
    *done = (size_t)n;
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
  int rc = tunnel__link_write(&w->req, st->link, w->bufs, w->nbufs,
                              tcp_write_cb);
  if (rc) {
    tunnel__free(st->mem, w);
    return rc;
  }
  st->tcp_pending += rest;
  return 0;
}

static void tcp_shut_cb(tunnel__link *l, int status, void *ud) {
  tunnel_stream *st = ud;
  (void)l;
  if (status < 0 && status != TUNNEL_ECANCELED)
    tunnel__stream_on_fail(st, status);
  st->shut_sent = 1;
  st->shut_cb_pending = 1;
  tunnel__stream_post(st);
}

static void tcp_watch_closed_cb(uv_handle_t *h) {
  tunnel_stream *st = h->data;
  st->tcp_watch_open = 0;
  tunnel__stream_post(st);
}

static void tcp_closed_cb(tunnel__link *l, int status, void *ud) {
  tunnel_stream *st = ud;
  (void)l, (void)status;
  st->link = NULL;
  st->tcp_open = 0;
  tunnel__stream_post(st);
}

/* ----------------------------------------------------------- ops */

static void tcp_consumed(tunnel_stream *st, size_t n) {
  (void)st, (void)n; /* TCP's own flow control: reading stops */
}

static int tcp_write(tunnel_stream *st, const uint8_t *data, size_t len,
                     size_t *direct) {
  return tcp_send(st, data, len, direct);
}

static size_t tcp_queue_size(const tunnel_stream *st) {
  return st->tcp_pending;
}

static int tcp_shutdown(tunnel_stream *st) {
  /* The link ends its side after the queued writes. */
  return tunnel__link_shutdown(st->link, tcp_shut_cb, st);
}

static void tcp_fail(tunnel_stream *st) {
  (void)st; /* the close that follows resets the connection */
}

static void tcp_close(tunnel_stream *st) {
  if (st->link && st->tcp_open && !st->link->closing) {
    st->tcp_reading = 0;
    int clean = st->eof_received && st->shut_sent && !st->error;
    /* As with a mux stream, an unfinished stream ends in a reset. */
    tunnel__link_close(st->link, !clean, tcp_closed_cb, st);
  }
  if (st->tcp_watch_open && !uv_is_closing((uv_handle_t *)&st->tcp_watch))
    uv_close((uv_handle_t *)&st->tcp_watch, tcp_watch_closed_cb);
}

/* Freed only once libuv is done with the handles. */
static int tcp_is_closed(const tunnel_stream *st) {
  return !st->tcp_open && !st->tcp_watch_open;
}

static const tunnel__stream_ops tcp_ops = {
    tcp_sync_reading, tcp_consumed, tcp_write,    tcp_queue_size,
    tcp_shutdown,     tcp_fail,     tcp_close,    tcp_is_closed};
