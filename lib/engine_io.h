/* What the library's own adapters (lib/uv/client.c) use of the engine
 * beyond its public API: output without a copy, and proxies declared
 * before they may be registered. */
#ifndef TUNNEL_LIB_ENGINE_IO_H
#define TUNNEL_LIB_ENGINE_IO_H

#include "tunnel/engine.h"

#include "bufq.h"

/* Bytes waiting to leave on `conn`. */
size_t tunnel__engine_out_pending(tunnel_engine *e, uint32_t conn);
/* Up to `max` iovecs over the head of `conn`'s output, without taking
 * them: they stay valid until tunnel__engine_out_consume() takes them
 * (the queue never moves queued bytes) or the session ends, whose state
 * callback is the last moment they may be referenced. */
size_t tunnel__engine_out_iov(tunnel_engine *e, uint32_t conn,
                              tunnel__iov *iov, size_t max);
/* The first `n` bytes of `conn`'s output have left. */
void tunnel__engine_out_consume(tunnel_engine *e, uint32_t conn, size_t n);
/* Mux, the zero-copy path for large writes (see tunnel__ymx_frame_data):
 * while the output of connection 1 is empty, takes up to `len` bytes of
 * `stream`'s window for one data frame, writes its header to `hdr` and
 * the payload size to *n (0: window closed). The caller puts header and
 * payload on the connection itself, before anything the engine queues
 * later; what it cannot write at once goes back, in order, with
 * tunnel__engine_out_push(). */
#define TUNNEL__ENGINE_FRAME_HEADER 12
int tunnel__engine_stream_frame(tunnel_engine *e, uint32_t stream,
                                size_t len, uint8_t *hdr, size_t *n);
int tunnel__engine_out_push(tunnel_engine *e, const tunnel__iov *v,
                            size_t n);
/* A held proxy is declared but not registered until released: the
 * program finishes setting it up first. */
int tunnel__engine_proxy_hold(tunnel_engine *e, uint32_t proxy, int held);

/* A pointer of the program's kept with a stream, found again by number
 * in O(1), also during the end callbacks of a session going down. */
int tunnel__engine_stream_set_user(tunnel_engine *e, uint32_t stream,
                                   void *user);
void *tunnel__engine_stream_user(tunnel_engine *e, uint32_t stream);

#endif
