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

/* Ends every splice of `set` (each calls its `gone` once both sides have
 * closed). */
void tunnel__splice_abort_all(tunnel__splice_set *set);

#endif
