/* Joins a TCP connection and a tunnel stream: bytes both ways, backpressure
 * each way (reading stops while the other side's queue is full), half-close
 * carried each way, and teardown of both when both directions end or
 * either fails. */
#ifndef TUNNEL_LIB_UV_SPLICE_H
#define TUNNEL_LIB_UV_SPLICE_H

#include "tunnel/uv.h"

#include "../log.h"
#include "../mem.h"

typedef struct tunnel__splice tunnel__splice;

/* Bytes and open connections of one proxy's visitors. Shared by the proxy
 * and whatever carries its visitors, which may outlive it: freed with the
 * last reference. `all` (the server's totals, never freed before them)
 * gets every add too. Loop thread only: no locks. */
typedef struct tunnel__traffic {
  uint64_t in, out; /* bytes from / to visitors */
  uint32_t open;    /* visitor connections carried now */
  uint32_t refs;
  struct tunnel__traffic *all;
} tunnel__traffic;

static inline void tunnel__traffic_in(tunnel__traffic *t, size_t n) {
  t->in += n;
  t->all->in += n;
}
static inline void tunnel__traffic_out(tunnel__traffic *t, size_t n) {
  t->out += n;
  t->all->out += n;
}
/* A connection starts being carried: a reference and one open. */
void tunnel__traffic_hold(tunnel__traffic *t);
/* The connection ended: the open and its reference go. */
void tunnel__traffic_release(const tunnel__mem *mem, tunnel__traffic *t);
/* Drops a reference (the proxy's own). */
void tunnel__traffic_unref(const tunnel__mem *mem, tunnel__traffic *t);

/* The live splices of one owner, so that closing the owner can end them:
 * a splice over a whole TCP connection (non-mux mode) has no session whose
 * end would reach it. */
typedef struct tunnel__splice_set {
  tunnel__splice *head;
  uint32_t count;
} tunnel__splice_set;

/* Takes ownership of `tcp` (allocated with `mem`, initialised, connected)
 * and `st`. `prefix` bytes are written to the TCP side first. `readbuf` is
 * scratch space shared by the owner's splices (bytes read are copied out
 * before the read callback returns). The splice joins `set` until it is
 * freed; then `gone` (may be NULL) is called. Once started, a failure
 * still tears both sides down and calls `gone`; only when this returns
 * TUNNEL_ENOMEM was nothing started: both sides are closed and `gone` is
 * not called. */
int tunnel__splice_start(const tunnel__mem *mem, const tunnel__logger *log,
                         uv_tcp_t *tcp, tunnel_stream *st,
                         const uint8_t *prefix, size_t prefix_len,
                         uint8_t *readbuf, size_t readbuf_size,
                         tunnel__splice_set *set, void (*gone)(void *ud),
                         void *gone_ud);

/* The same, counting the bytes each way in `tr` (held for the splice's
 * life, released when it is freed; NULL: not counted). The TCP side is the
 * visitor: what it sends is `in`. With `key` (TUNNEL__FRP_KEY_SIZE bytes,
 * copied into the cipher state; NULL: plain) the stream side carries frp's
 * use_encryption cipher. Also returns an error, with both sides closed and
 * `gone` not called, when the cipher cannot start. */
int tunnel__splice_start_counted(const tunnel__mem *mem,
                                 const tunnel__logger *log, uv_tcp_t *tcp,
                                 tunnel_stream *st, const uint8_t *prefix,
                                 size_t prefix_len, uint8_t *readbuf,
                                 size_t readbuf_size, tunnel__splice_set *set,
                                 void (*gone)(void *ud), void *gone_ud,
                                 tunnel__traffic *tr, const uint8_t *key);

/* Ends every splice of `set` (each calls its `gone` once both sides have
 * closed). */
void tunnel__splice_abort_all(tunnel__splice_set *set);

#endif
