/* Streams over a whole TCP connection (frp's non-mux mode): reading stops
 * as backpressure, writes go to libuv (a copy of what the socket does not
 * take at once), half-close is a TCP FIN, an unfinished close a reset. */
#include <string.h>
#include <sys/socket.h>

#include "handle.h"
#include "stream.h"
#include "uverr.h"

/* Read size of TCP streams: large reads, few syscalls. */
#define TCP_READ_BUF (64u * 1024u)

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

static const tunnel__stream_ops tcp_ops;

tunnel_stream *tunnel__stream_new_tcp(tunnel__sched *sched,
                                      const tunnel__mem *mem, uv_tcp_t *tcp,
                                      const uint8_t *prefix, size_t len) {
  tunnel_stream *st = tunnel__stream_alloc(&tcp_ops, sched, mem);
  if (st && (!(st->tcp_rbuf = tunnel__malloc(mem, TCP_READ_BUF)) ||
             (len && tunnel__bufq_append(&st->rx, prefix, len) != 0))) {
    tunnel__stream_free(st);
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
  tunnel__stream_post(st);
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
  tunnel__stream_post(st);
}

static void tcp_watch_closed_cb(uv_handle_t *h) {
  tunnel_stream *st = h->data;
  st->tcp_watch_open = 0;
  tunnel__stream_post(st);
}

static void tcp_closed_cb(uv_handle_t *h) {
  tunnel_stream *st = h->data;
  tunnel__free(st->mem, st->tcp);
  st->tcp = NULL;
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
  /* libuv sends the FIN after the queued writes. */
  st->tcp_shut.data = st;
  return tunnel__uv_err(
      uv_shutdown(&st->tcp_shut, (uv_stream_t *)st->tcp, tcp_shut_cb));
}

static void tcp_fail(tunnel_stream *st) {
  (void)st; /* the close that follows resets the connection */
}

static void tcp_close(tunnel_stream *st) {
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
}

/* Freed only once libuv is done with the handles. */
static int tcp_is_closed(const tunnel_stream *st) {
  return !st->tcp_open && !st->tcp_watch_open;
}

static const tunnel__stream_ops tcp_ops = {
    tcp_sync_reading, tcp_consumed, tcp_write,    tcp_queue_size,
    tcp_shutdown,     tcp_fail,     tcp_close,    tcp_is_closed};
