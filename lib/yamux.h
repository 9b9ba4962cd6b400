/*
 * yamux stream multiplexer (HashiCorp spec.md), sans-I/O.
 *
 * The session owns no socket and no clock. Bytes read from the transport go
 * in through tunnel__ymx_recv(); bytes for the transport accumulate in an
 * output queue read with tunnel__ymx_out_iov() / tunnel__ymx_out_consume().
 * Events are reported through callbacks invoked from inside the API calls.
 *
 * Flow control: stream data handed to on_data is not buffered by the session.
 * The receive window is re-opened only when the application reports the bytes
 * consumed (tunnel__ymx_consumed), so a stalled consumer holds at most one
 * window per stream.
 *
 * Receive budget: a stream's outstanding receive credit is what the peer may
 * still send on it plus what was delivered and not yet consumed; the
 * session's total (tunnel__ymx_buffered) sums its live streams and is also
 * counted in the optional shared counter. With a budget set, window beyond
 * the spec's initial 256 KiB (up to cfg.window, including what a new
 * stream's SYN or ACK carries) is granted only while the session total
 * stays within cfg.budget and the shared counter within its limit. A stream
 * is always let back up to 256 KiB outstanding, so none can stall for good,
 * and the session holds at most budget + 256 KiB per live stream. Withheld
 * credit goes out with the stream's next tunnel__ymx_consumed() or with
 * tunnel__ymx_regrant(), batched like any update (a quarter of cfg.window,
 * or of 256 KiB when cut short by a budget). While the session total or the
 * shared counter is over its budget, incoming streams are refused with RST
 * (streams we open are not): as each live stream holds up to 256 KiB, and
 * the first ones may hold whole windows, a budget also bounds how many
 * streams are accepted at once.
 *
 * Stream lifetime: a stream is forgotten when both directions are closed
 * (FIN each way) or it is reset. When the peer's frame causes that, on_close
 * fires; when the application's own call causes it, the call returns 1 and
 * no callback fires. Callbacks may call any function here except
 * tunnel__ymx_free().
 */
#ifndef TUNNEL_LIB_YAMUX_H
#define TUNNEL_LIB_YAMUX_H

#include <stddef.h>
#include <stdint.h>

#include "bufq.h"
#include "log.h"
#include "mem.h"

#define TUNNEL__YMX_HEADER_SIZE 12
#define TUNNEL__YMX_INITIAL_WINDOW (256u * 1024u)

enum {
  TUNNEL__YMX_DATA = 0,
  TUNNEL__YMX_WINDOW_UPDATE = 1,
  TUNNEL__YMX_PING = 2,
  TUNNEL__YMX_GOAWAY = 3
};

enum {
  TUNNEL__YMX_SYN = 1,
  TUNNEL__YMX_ACK = 2,
  TUNNEL__YMX_FIN = 4,
  TUNNEL__YMX_RST = 8
};

enum {
  TUNNEL__YMX_GOAWAY_NORMAL = 0,
  TUNNEL__YMX_GOAWAY_PROTOCOL = 1,
  TUNNEL__YMX_GOAWAY_INTERNAL = 2
};

typedef struct tunnel__ymx tunnel__ymx;

/* Receive credit held by several sessions of one thread. Each session adds
 * its total to `used` and takes it back as it shrinks, and all of it when
 * freed. `limit` 0 admits no growth beyond the initial windows. */
typedef struct tunnel__ymx_budget {
  uint64_t used;  /* outstanding receive credit of every session */
  uint64_t limit;
  uint64_t held;  /* of which received and not yet consumed */
} tunnel__ymx_budget;

typedef struct tunnel__ymx_callbacks {
  /* The peer opened stream `id`. Return 0 to accept (optionally setting
   * *stream_user), or a negative code to refuse it with RST. */
  int (*on_stream)(tunnel__ymx *s, uint32_t id, void **stream_user, void *ud);
  /* The peer acknowledged a stream we opened. */
  void (*on_ack)(tunnel__ymx *s, uint32_t id, void *stream_user, void *ud);
  /* Stream data, borrowed for the call. Report it with tunnel__ymx_consumed
   * once it has been used, now or later. */
  void (*on_data)(tunnel__ymx *s, uint32_t id, void *stream_user,
                  const uint8_t *data, size_t len, void *ud);
  /* The peer will send no more data on the stream (half-close). */
  void (*on_fin)(tunnel__ymx *s, uint32_t id, void *stream_user, void *ud);
  /* The peer reset (or refused) the stream. */
  void (*on_rst)(tunnel__ymx *s, uint32_t id, void *stream_user, void *ud);
  /* The send window grew; more may be written. */
  void (*on_window)(tunnel__ymx *s, uint32_t id, void *stream_user, void *ud);
  /* The session forgot the stream because of a peer frame (after on_fin or
   * on_rst). The id is not valid any more. */
  void (*on_close)(tunnel__ymx *s, uint32_t id, void *stream_user, void *ud);
  /* Our ping `opaque` was answered. */
  void (*on_ping)(tunnel__ymx *s, uint32_t opaque, void *ud);
  /* The peer will accept no new streams; `code` as sent. */
  void (*on_goaway)(tunnel__ymx *s, uint32_t code, void *ud);
} tunnel__ymx_callbacks;

typedef struct tunnel__ymx_config {
  int is_client;             /* client opens odd ids, server even */
  uint32_t max_streams;      /* live streams, both directions */
  uint32_t window;           /* per-stream receive window we grant */
  uint32_t max_backlog;      /* peer-triggered control bytes queued at most */
  const tunnel__mem *mem;    /* NULL: libc */
  const tunnel__logger *log; /* may be NULL */
  uint64_t budget;           /* receive credit the session holds; 0: none */
  /* Counter shared with other sessions, or NULL; must outlive the session. */
  tunnel__ymx_budget *shared;
  /* Chunk size of the output queue (0: 64 KiB, large writes in few
   * iovecs). A small device picks a few KiB: an idle session keeps one. */
  uint32_t out_chunk;
} tunnel__ymx_config;

int tunnel__ymx_new(tunnel__ymx **out, const tunnel__ymx_config *cfg,
                    const tunnel__ymx_callbacks *cb, void *user_data);
void tunnel__ymx_free(tunnel__ymx *s);

/* Feeds transport bytes. Returns 0, or the session's sticky error
 * (TUNNEL_EPROTO, TUNNEL_ELIMIT, TUNNEL_ENOMEM) after which a GoAway is queued,
 * nothing more is processed, and the transport should be flushed and closed. */
int tunnel__ymx_recv(tunnel__ymx *s, const uint8_t *data, size_t len);

/* Output queue. Iovecs stay valid until consumed, even across appends. */
size_t tunnel__ymx_out_pending(const tunnel__ymx *s);
size_t tunnel__ymx_out_iov(const tunnel__ymx *s, tunnel__iov *iov, size_t max);
void tunnel__ymx_out_consume(tunnel__ymx *s, size_t n);

/* Opens a stream (SYN is queued at once; data may follow before the ACK). */
int tunnel__ymx_open(tunnel__ymx *s, void *stream_user, uint32_t *id_out);
int tunnel__ymx_set_user(tunnel__ymx *s, uint32_t id, void *stream_user);
/* Queues up to `len` bytes within the send window; *written says how many.
 * 0 written with return 0 means the window is closed: wait for on_window. */
int tunnel__ymx_write(tunnel__ymx *s, uint32_t id, const uint8_t *data,
                      size_t len, size_t *written);
/* Zero-copy path, for a caller that writes to the transport itself: only
 * while the output queue is empty (else TUNNEL_ESTATE). Takes up to `len`
 * bytes of send window for one data frame, writes its header to `hdr` and
 * the payload size to *n (0: window closed). The caller must put the header
 * and those n payload bytes on the transport before anything else the
 * session queues: whatever it cannot write at once goes back in order with
 * tunnel__ymx_out_push. */
int tunnel__ymx_frame_data(tunnel__ymx *s, uint32_t id, size_t len,
                           uint8_t hdr[TUNNEL__YMX_HEADER_SIZE], size_t *n);
/* Appends raw bytes to the output queue, all or nothing. */
int tunnel__ymx_out_push(tunnel__ymx *s, const tunnel__iov *v, size_t n);
/* Bytes that may be written now. Negative error if the stream is unknown. */
int64_t tunnel__ymx_send_window(const tunnel__ymx *s, uint32_t id);
/* Reports `n` received bytes as used; reopens the peer's window as far as
 * the budgets allow. */
int tunnel__ymx_consumed(tunnel__ymx *s, uint32_t id, size_t n);
/* Grants withheld credit on every stream as far as the budgets allow now
 * (scans all streams). Call it when budget frees elsewhere, or now and then.
 * Without memory for an update the rest waits for the next call. */
void tunnel__ymx_regrant(tunnel__ymx *s);
/* The session's outstanding receive credit, in bytes. */
uint64_t tunnel__ymx_buffered(const tunnel__ymx *s);
/* Half-close (FIN). Returns 1 if the stream is now forgotten, else 0. */
int tunnel__ymx_shutdown(tunnel__ymx *s, uint32_t id);
/* Reset (RST). The stream is forgotten; returns 1. */
int tunnel__ymx_reset(tunnel__ymx *s, uint32_t id);

int tunnel__ymx_ping(tunnel__ymx *s, uint32_t opaque);
/* Refuse new streams from now on and tell the peer. */
int tunnel__ymx_goaway(tunnel__ymx *s, uint32_t code);

uint32_t tunnel__ymx_stream_count(const tunnel__ymx *s);
/* Changes the cap on live streams (n >= 1). Streams already open stay;
 * SYNs beyond the new cap are refused. */
void tunnel__ymx_set_max_streams(tunnel__ymx *s, uint32_t n);
/* 0, or the sticky error that stopped the session. */
int tunnel__ymx_error(const tunnel__ymx *s);
int tunnel__ymx_remote_goaway(const tunnel__ymx *s);

#endif
