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

/* Takes ownership of `tcp` (allocated with `mem`, initialised, connected)
 * and `st`. `prefix` bytes are written to the TCP side first. `readbuf` is
 * scratch space shared by the owner's splices (bytes read are copied out
 * before the read callback returns). `gone` (may be NULL) is called once
 * both sides are closed and the splice is freed. On error the splice still
 * tears both sides down and calls `gone`. */
int tunnel__splice_start(const tunnel__mem *mem, const tunnel__logger *log,
                         uv_tcp_t *tcp, tunnel_stream *st,
                         const uint8_t *prefix, size_t prefix_len,
                         uint8_t *readbuf, size_t readbuf_size,
                         void (*gone)(void *ud), void *gone_ud);

#endif
