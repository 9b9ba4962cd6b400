/* Streams of the client engine (multiplexed visitors): data within the
 * server's window goes straight into the engine when nothing waits ahead,
 * else it is queued until window or output room frees; received bytes
 * return window as the reader takes them. */
#include "../engine_io.h"
#include "client_int.h"

static const tunnel__stream_ops eng_ops;

tunnel_stream *tunnel__stream_new_eng(tunnel_client *c, tunnel__sched *sched,
                                      const tunnel__mem *mem, uint32_t num) {
  tunnel_stream *st = tunnel__stream_alloc(&eng_ops, sched, mem);
  if (!st)
    return NULL;
  st->client = c;
  st->id = num;
  return st;
}

/* The engine no longer knows the number: nothing more goes to it. */
static void forget(tunnel_stream *st) {
  if (!st->client)
    return;
  tunnel__client_unblock(st->client, st);
  tunnel__engine_stream_set_user(st->client->eng, st->id, NULL);
  st->client = NULL;
  st->forgotten = 1;
}

void tunnel__stream_eng_data(tunnel_stream *st, const uint8_t *data,
                             size_t len) {
  tunnel__stream_on_data(st, data, len);
}

void tunnel__stream_eng_end(tunnel_stream *st, int status) {
  if (status == 0) {
    tunnel__stream_on_fin(st);
    return;
  }
  forget(st); /* the engine's number is gone with the end callback */
  tunnel__stream_on_fail(st, status);
}

void tunnel__stream_eng_pump(tunnel_stream *st) {
  tunnel_client *c = st->client;
  if (!c || st->error || st->closing)
    return;
  uint64_t before = st->tx_out;
  while (st->tx.size) {
    if (!tunnel__client_has_room(c)) {
      tunnel__client_wait_room(c, st);
      break;
    }
    tunnel__iov iov;
    tunnel__bufq_iov(&st->tx, &iov, 1);
    size_t w = 0;
    int rc = tunnel__client_stream_send(c, st->id, iov.base, iov.len, &w);
    if (rc) {
      tunnel__stream_on_fail(st, rc);
      return;
    }
    tunnel__bufq_consume(&st->tx, w);
    st->tx_out += w;
    if (w < iov.len)
      break; /* the writable callback pumps again */
  }
  if (!st->tx.size && st->shut_requested && !st->shut_sent) {
    int rc = tunnel_engine_stream_shutdown(c->eng, st->id);
    if (rc) {
      tunnel__stream_on_fail(st, rc);
      return;
    }
    st->shut_sent = 1;
    st->shut_cb_pending = 1;
  }
  /* Only progress is worth a pass of the loop: a stream waiting for
   * window must not keep it spinning. */
  if (st->tx_out != before || st->shut_cb_pending) {
    tunnel__stream_post(st);
    tunnel__client_flush_soon(c);
  }
}

/* ----------------------------------------------------------- ops */

static void eng_sync_reading(tunnel_stream *st) {
  (void)st; /* the window is the backpressure: see eng_consumed */
}

static void eng_consumed(tunnel_stream *st, size_t n) {
  tunnel_client *c = st->client;
  if (n && c && tunnel_engine_stream_consumed(c->eng, st->id, n) == 0)
    tunnel__client_flush_soon(c);
}

static int eng_write(tunnel_stream *st, const uint8_t *data, size_t len,
                     size_t *direct) {
  tunnel_client *c = st->client;
  *direct = 0;
  if (c && st->tx.size == 0 && tunnel__client_has_room(c)) {
    /* Straight into the engine while the window is open: one copy. */
    int rc = tunnel__client_stream_send(c, st->id, data, len, direct);
    if (rc)
      return rc;
  }
  if (tunnel__stream_queue_rest(st, data, len, *direct) != 0)
    return TUNNEL_ENOMEM;
  if (*direct < len && c && st->tx.size == len - *direct &&
      !tunnel__client_has_room(c))
    tunnel__client_wait_room(c, st);
  return 0;
}

static size_t eng_queue_size(const tunnel_stream *st) { return st->tx.size; }

static int eng_shutdown(tunnel_stream *st) {
  tunnel__stream_eng_pump(st);
  return 0;
}

/* A local failure (out of memory) or the program's close: the engine
 * resets the stream if either side had not finished. */
static void release(tunnel_stream *st) {
  tunnel_client *c = st->client;
  if (!c)
    return;
  uint32_t num = st->id;
  forget(st);
  tunnel_engine_stream_close(c->eng, num);
  tunnel__client_flush_soon(c);
}

static void eng_fail(tunnel_stream *st) { release(st); }

static void eng_close(tunnel_stream *st) { release(st); }

static int eng_is_closed(const tunnel_stream *st) {
  (void)st;
  return 1;
}

static const tunnel__stream_ops eng_ops = {
    eng_sync_reading, eng_consumed, eng_write, eng_queue_size,
    eng_shutdown,     eng_fail,     eng_close, eng_is_closed};
