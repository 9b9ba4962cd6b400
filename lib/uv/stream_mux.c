/* Streams carried by a yamux session: data within the peer's window,
 * straight into the session when nothing waits ahead, else queued until
 * window or room frees; received bytes return window as the reader takes
 * them. */
#include <string.h>

#include "../yamux.h"
#include "mux.h"
#include "stream.h"

static const tunnel__stream_ops mux_ops;

tunnel_stream *tunnel__stream_new(tunnel__mux *m, tunnel__sched *sched,
                                  const tunnel__mem *mem, uint32_t id) {
  tunnel_stream *st = tunnel__stream_alloc(&mux_ops, sched, mem);
  if (!st)
    return NULL;
  st->mux = m;
  st->id = id;
  return st;
}

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
    tunnel__stream_post(st);
  tunnel__mux_flush_soon(m);
}

/* ----------------------------------------------------------- ops */

static void mux_sync_reading(tunnel_stream *st) {
  (void)st; /* the window is the backpressure: see mux_consumed */
}

/* Returns the window to the peer for bytes the reader has taken. */
static void mux_consumed(tunnel_stream *st, size_t n) {
  if (n && st->mux && !st->forgotten) {
    tunnel__ymx_consumed(tunnel__mux_session(st->mux), st->id, n);
    tunnel__mux_flush_soon(st->mux);
  }
}

static int mux_write(tunnel_stream *st, const uint8_t *data, size_t len,
                     size_t *direct) {
  tunnel__mux *m = st->mux;
  *direct = 0;
  if (m && st->tx.size == 0 && tunnel__mux_has_room(m)) {
    /* Straight into the session while the window is open: one copy. */
    int rc = tunnel__mux_send(m, st->id, data, len, direct);
    if (rc)
      return rc;
  }
  if (tunnel__stream_queue_rest(st, data, len, *direct) != 0)
    return TUNNEL_ENOMEM;
  if (*direct < len && m && st->tx.size == len - *direct &&
      !tunnel__mux_has_room(m))
    tunnel__mux_wait_room(m, st);
  return 0;
}

static size_t mux_queue_size(const tunnel_stream *st) { return st->tx.size; }

static int mux_shutdown(tunnel_stream *st) {
  tunnel__stream_pump(st);
  return 0;
}

static void mux_fail(tunnel_stream *st) {
  if (st->mux && st->error != TUNNEL_ERESET && !st->forgotten) {
    /* A local failure (out of memory): tell the peer. */
    tunnel__ymx_reset(tunnel__mux_session(st->mux), st->id);
    st->forgotten = 1;
    tunnel__mux_flush_soon(st->mux);
  }
}

static void mux_close(tunnel_stream *st) {
  if (!st->mux)
    return;
  if (!st->forgotten) {
    tunnel__ymx_reset(tunnel__mux_session(st->mux), st->id);
    st->forgotten = 1;
    tunnel__mux_flush_soon(st->mux);
  }
  tunnel__mux_detach(st->mux, st);
}

static int mux_is_closed(const tunnel_stream *st) {
  (void)st;
  return 1;
}

static const tunnel__stream_ops mux_ops = {
    mux_sync_reading, mux_consumed, mux_write, mux_queue_size,
    mux_shutdown,     mux_fail,     mux_close, mux_is_closed};
