/* A yamux session over a libuv TCP handle: feeds reads to the sans-I/O
 * session, writes its output with batching, and hosts tunnel_streams. */
#ifndef TUNNEL_LIB_UV_MUX_H
#define TUNNEL_LIB_UV_MUX_H

#include "tunnel/uv.h"

#include "../config.h"
#include "sched.h"

typedef struct tunnel__mux tunnel__mux;
struct tunnel__ymx_budget;

typedef struct tunnel__mux_callbacks {
  /* The peer opened a stream; the callee owns it from now on. */
  void (*on_stream)(tunnel__mux *m, tunnel_stream *st, void *ud);
  /* A ping we sent was answered. */
  void (*on_ping)(tunnel__mux *m, uint32_t opaque, void *ud);
  /* The session ended (transport error or EOF, protocol error, peer's
   * GoAway with an error code). Fires once; streams have failed. The mux
   * stays allocated until tunnel__mux_close(). */
  void (*on_end)(tunnel__mux *m, int err, void *ud);
} tunnel__mux_callbacks;

/* `sched` and `cfg` must outlive the mux and every stream it creates. `tcp` is an
 * initialised handle allocated with cfg->mem; the mux owns it from now on
 * (even when this call fails) and frees it when closed. NULL when the mux
 * will start on a link (tunnel__mux_start_on). */
int tunnel__mux_new(tunnel__mux **out, uv_loop_t *loop, tunnel__sched *sched,
                    const struct tunnel_config *cfg, int is_client,
                    uv_tcp_t *tcp, const tunnel__mux_callbacks *cb, void *ud);
/* The same, with the receive budget of cfg->session_buffer per session and
 * `shared` (may be NULL; must outlive the mux) across sessions: see
 * tunnel__ymx_config. */
int tunnel__mux_new_budgeted(tunnel__mux **out, uv_loop_t *loop,
                             tunnel__sched *sched,
                             const struct tunnel_config *cfg, int is_client,
                             uv_tcp_t *tcp, struct tunnel__ymx_budget *shared,
                             const tunnel__mux_callbacks *cb, void *ud);
/* The transport handle: connect it or accept into it, then start. */
uv_tcp_t *tunnel__mux_tcp(tunnel__mux *m);
/* Starts reading over a plain link made of the handle. `prefix` holds
 * bytes already read from the transport (a sniffed first byte, say) to
 * process first. */
int tunnel__mux_start(tunnel__mux *m, const uint8_t *prefix, size_t len);
/* The same over `link` (TLS), which must carry the mux's handle; the mux
 * owns the link from now on. */
struct tunnel__link;
int tunnel__mux_start_on(tunnel__mux *m, struct tunnel__link *link,
                         const uint8_t *prefix, size_t len);
int tunnel__mux_open(tunnel__mux *m, tunnel_stream **out);
int tunnel__mux_ping(tunnel__mux *m, uint32_t opaque);
/* Grants flow-control window withheld for the budget, as far as it allows
 * now. */
void tunnel__mux_regrant(tunnel__mux *m);
/* Sends GoAway(normal): the peer opens no new streams. */
int tunnel__mux_goaway(tunnel__mux *m);
uint32_t tunnel__mux_stream_count(const tunnel__mux *m);
/* The link once started (NULL before). */
struct tunnel__link *tunnel__mux_link(tunnel__mux *m);
/* See tunnel__ymx_set_max_streams. */
void tunnel__mux_set_max_streams(tunnel__mux *m, uint32_t n);
/* Loop time (ms) at which the transport last delivered bytes. */
uint64_t tunnel__mux_last_rx(const tunnel__mux *m);
/* Fails every stream, closes the transport and frees the mux. No mux
 * callback fires after this call. */
void tunnel__mux_close(tunnel__mux *m);

#endif

/* For stream.c. */
#include "../yamux.h"
tunnel__ymx *tunnel__mux_session(tunnel__mux *m);
/* Sends stream data within the window: straight to the socket (header and
 * payload in one writev, no copy) when nothing is queued ahead, else
 * through the session's queue. *done: bytes taken. */
int tunnel__mux_send(tunnel__mux *m, uint32_t id, const uint8_t *data,
                     size_t len, size_t *done);
/* Whether the session's output queue can take more stream data now. */
int tunnel__mux_has_room(const tunnel__mux *m);
/* Calls tunnel__stream_pump(st) once the output queue has drained. */
void tunnel__mux_wait_room(tunnel__mux *m, tunnel_stream *st);
/* Schedules a write of whatever the session has queued. */
void tunnel__mux_flush_soon(tunnel__mux *m);
/* Unlinks a stream that is being freed. */
void tunnel__mux_detach(tunnel__mux *m, tunnel_stream *st);
