/* The inside of tunnel_stream, shared by the mux and the role code that
 * reads control messages off a stream before handing it on. */
#ifndef TUNNEL_LIB_UV_STREAM_H
#define TUNNEL_LIB_UV_STREAM_H

#include "tunnel/uv.h"

#include "../bufq.h"
#include "sched.h"

typedef struct tunnel__mux tunnel__mux;
typedef struct tunnel__wreq tunnel__wreq;

/* What a stream is carried by: a yamux stream (stream_mux.c) or a whole
 * TCP connection (stream_tcp.c, frp's non-mux mode). The common code in
 * stream.c (delivery, write requests, callbacks, closing) calls only
 * these. */
typedef struct tunnel__stream_ops {
  /* Reading wishes changed (reader, queued bytes, end, failure). */
  void (*sync_reading)(tunnel_stream *st);
  /* The reader took `n` received bytes. */
  void (*consumed)(tunnel_stream *st, size_t n);
  /* Takes all `len` bytes: *direct of them left at once, the backing
   * queued the rest. On error nothing was taken, unless the stream
   * failed. */
  int (*write)(tunnel_stream *st, const uint8_t *data, size_t len,
               size_t *direct);
  size_t (*queue_size)(const tunnel_stream *st);
  /* The end of the data, after what is queued. */
  int (*shutdown)(tunnel_stream *st);
  /* A local failure: tell the peer if it can be told. */
  void (*fail)(tunnel_stream *st);
  /* Starts closing; closed() says when the stream may be freed. */
  void (*close)(tunnel_stream *st);
  int (*closed)(const tunnel_stream *st);
} tunnel__stream_ops;

/* Streams an owner handed out and must be able to fail all at once
 * (streams over whole TCP connections, which no session end reaches). */
typedef struct tunnel__stream_list {
  tunnel_stream *head;
} tunnel__stream_list;

/* Internal reader: takes what it can use and returns how many bytes that
 * was; the rest stays queued for the next reader. status as in
 * tunnel_stream_read_cb (data NULL when status != 0; return value ignored). */
typedef size_t (*tunnel__stream_take_fn)(tunnel_stream *st, int status,
                                         const uint8_t *data, size_t len,
                                         void *ud);

struct tunnel_stream {
  const tunnel__stream_ops *ops;
  tunnel__mux *mux; /* NULL once the session is gone (or for TCP streams) */
  /* A client engine's stream (stream_eng.c): its client; NULL once the
   * engine forgot the stream. */
  struct tunnel_client *client;
  /* A stream that is a whole connection (frp's non-mux mode). */
  struct tunnel__link *link;
  size_t tcp_pending;  /* bytes in queued link writes */
  int tcp_reading;     /* link reading */
  int tcp_open;        /* link not yet closed */
  /* While reading is paused nothing watches the socket, and a reset from
   * the peer would go unseen: a slow timer checks for one. */
  uv_timer_t tcp_watch;
  int tcp_watch_open;
  tunnel__sched *sched;
  const tunnel__mem *mem;
  uint32_t id;
  tunnel_stream *prev, *next;       /* mux's list */
  tunnel_stream *blocked_next;      /* mux's list of streams waiting for room */
  int blocked;

  /* Receive side. */
  tunnel__bufq rx;  /* arrived while no reader could take it */
  int reading;
  unsigned read_gen; /* bumped by every read/take start */
  tunnel_stream_read_cb read_cb;
  tunnel__stream_take_fn take_cb;
  void *read_ud;
  int eof_received;  /* peer FIN seen */
  int eof_delivered;
  int error;         /* sticky failure, delivered once to the reader */
  int error_delivered;

  /* Send side. */
  tunnel__bufq tx;   /* written, waiting for window or room */
  uint64_t tx_in;    /* bytes ever queued */
  uint64_t tx_out;   /* bytes ever handed to the session */
  tunnel__wreq *wreq_head, *wreq_tail;
  int shut_requested;
  int shut_sent;
  tunnel_stream_write_cb shut_cb;
  void *shut_ud;
  int shut_cb_pending;

  int forgotten; /* the session no longer knows the id */
  int closing;
  tunnel_stream_close_cb close_cb;
  void *close_ud;
  tunnel__task task;
  void *user_data;
  tunnel__stream_list *list; /* and its links there */
  tunnel_stream *list_prev, *list_next;
  /* Internal owner told of a failure even while nobody reads or writes. */
  void (*watch_cb)(tunnel_stream *st, int err, void *ud);
  void *watch_ud;
  int watch_fired;
};

tunnel_stream *tunnel__stream_new(tunnel__mux *m, tunnel__sched *sched,
                                  const tunnel__mem *mem, uint32_t id);
/* A stream over a connected TCP handle (allocated with `mem`; owned by the
 * stream from now on, also on failure). `prefix` bytes were already read
 * from it and are delivered first. NULL on out of memory. */
tunnel_stream *tunnel__stream_new_tcp(tunnel__sched *sched,
                                      const tunnel__mem *mem, uv_tcp_t *tcp,
                                      const uint8_t *prefix, size_t len);
/* The same over a link (TLS), owned by the stream from now on. */
struct tunnel__link;
tunnel_stream *tunnel__stream_new_link(tunnel__sched *sched,
                                       const tunnel__mem *mem,
                                       struct tunnel__link *link,
                                       const uint8_t *prefix, size_t len);
/* A stream of the client engine, number `num` (stream_eng.c). */
tunnel_stream *tunnel__stream_new_eng(struct tunnel_client *c,
                                      tunnel__sched *sched,
                                      const tunnel__mem *mem, uint32_t num);
/* Internal-reader variant of tunnel_stream_read_start. */
int tunnel__stream_take_start(tunnel_stream *st, tunnel__stream_take_fn cb,
                              void *ud);

/* `cb` fires once, from the loop, when the stream fails (reset, session
 * gone, transport error), whether or not a reader or a write is pending:
 * an owner whose both directions are paused still learns of it. Not after
 * tunnel_stream_close. */
void tunnel__stream_watch(tunnel_stream *st,
                          void (*cb)(tunnel_stream *st, int err, void *ud),
                          void *ud);

/* Adds `st` to `l`; it leaves when freed or failed through the list. */
void tunnel__stream_list_add(tunnel__stream_list *l, tunnel_stream *st);
/* Fails every stream of `l` with `err` and empties it. */
void tunnel__stream_list_fail_all(tunnel__stream_list *l, int err);

/* For the backings. */
/* A zeroed stream with the common parts set up (NULL on out of memory). */
tunnel_stream *tunnel__stream_alloc(const tunnel__stream_ops *ops,
                                    tunnel__sched *sched,
                                    const tunnel__mem *mem);
void tunnel__stream_free(tunnel_stream *st);
/* For a backing's write: `direct` of `len` bytes were handed on, the rest
 * is queued in tx. On TUNNEL_ENOMEM nothing was queued (and a stream that
 * already sent part of the write fails). */
int tunnel__stream_queue_rest(tunnel_stream *st, const uint8_t *data,
                              size_t len, size_t direct);
/* Runs the stream's pending work from the loop. */
void tunnel__stream_post(tunnel_stream *st);

/* Called by the mux. */
void tunnel__stream_on_data(tunnel_stream *st, const uint8_t *data, size_t n);
void tunnel__stream_on_fin(tunnel_stream *st);
void tunnel__stream_on_fail(tunnel_stream *st, int err); /* reset or mux gone */
void tunnel__stream_on_forgotten(tunnel_stream *st);
/* Moves queued bytes into the session as far as window and room allow. */
void tunnel__stream_pump(tunnel_stream *st);

#endif
