/*
 * The client protocol without I/O: login, proxy registration, the work
 * connection pool, heartbeats, multiplexed streams and their flow control,
 * driven by the program (the model of nghttp2's session). The engine owns
 * no socket, reads no clock and allocates only through the configuration's
 * allocator hook; the program moves bytes between it and its sockets, passes
 * the time in, and hears of visitors through callbacks. This is how the
 * library runs on an RTOS with lwIP, under another event loop (epoll,
 * kqueue, asyncio) or from another language.
 *
 * Connections. The engine names each connection to the server by a number.
 * Connection 1 is the control connection: the program connects it, then
 * calls tunnel_engine_start(). With multiplexing (the default,
 * tunnel_config_set_tcp_mux) it is the only one. Without, the engine asks
 * for one more connection per work connection through the connect callback
 * and the program reports the outcome with tunnel_engine_conn_ready() or
 * tunnel_engine_conn_closed(). The engine speaks plain bytes: TLS, if any,
 * sits between it and the socket, in the program's hands.
 *
 * The loop a program runs:
 *   - bytes arrive on connection c:  tunnel_engine_recv(e, c, data, n, now)
 *   - while tunnel_engine_next_output(e, &c) is 1:
 *       n = socket's room; tunnel_engine_send(e, c, buf, n, &got); write them
 *   - a socket ends or fails:         tunnel_engine_conn_closed(e, c, err, now)
 *   - at the deadline it returned:    tunnel_engine_tick(e, now, &deadline)
 * Callbacks fire only from within these calls (and from the stream calls);
 * a callback may call any engine function except tunnel_engine_free().
 *
 * Streams. Each visitor is a stream, named by a number unique for the
 * engine's lifetime (in non-mux mode it is the number of the connection
 * that carries it). Data from the visitor arrives through the data
 * callback; the program tells the engine what it has consumed
 * (tunnel_engine_stream_consumed) and only then is the server allowed to
 * send more, so the memory a stream holds is bounded by what the program
 * has not consumed. Data to the visitor goes in with
 * tunnel_engine_stream_write(), which takes what the window allows; the
 * writable callback says when it allows more.
 *
 * Threading: one engine belongs to one thread at a time. Times are
 * milliseconds on any monotonic clock the program likes; the engine never
 * compares them with anything else.
 */
#ifndef TUNNEL_ENGINE_H
#define TUNNEL_ENGINE_H

#include "tunnel/tunnel.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tunnel_engine tunnel_engine;

/* The control connection's number. */
#define TUNNEL_ENGINE_CONTROL 1u

/* Proxy kinds (the same values as tunnel/uv.h's tunnel_proxy_type). */
#define TUNNEL_ENGINE_PROXY_TCP 1
#define TUNNEL_ENGINE_PROXY_HTTP 2
#define TUNNEL_ENGINE_PROXY_HTTPS 3
#define TUNNEL_ENGINE_PROXY_UDP 4
#define TUNNEL_ENGINE_PROXY_STCP 5

/* status 0: logged in, `message` is the run id. Negative: the login was
 * refused (TUNNEL_EAUTH, `message` the server's reason), the session
 * ended (TUNNEL_ECONNRESET, TUNNEL_ETIMEDOUT: the server stopped
 * answering heartbeats, TUNNEL_EPROTO) or an attempt made through
 * tunnel_engine_connect() failed. After a negative status every
 * connection is finished for the engine (close the sockets). Then the
 * engine reconnects by itself when it can (see tunnel_engine_connect and
 * the event callback), or the program may connect again and call
 * tunnel_engine_start(): proxies register again. `message` is valid for
 * the call. */
typedef void (*tunnel_engine_state_cb)(tunnel_engine *e, int status,
                                       const char *message, void *user_data);
/* The server answered a proxy's registration: 0 and the public address
 * (":PORT" for TCP, "NAME[:PORT],..." for HTTP/HTTPS), or a negative code
 * and the server's reason: TUNNEL_EREFUSED is final; TUNNEL_EAGAIN is a
 * proxy the server had accepted before a reconnection (its port or name
 * still held by the lost session, most likely), which the engine asks for
 * again after a delay until it is accepted. */
typedef void (*tunnel_engine_proxy_cb)(tunnel_engine *e, uint32_t proxy,
                                       int status, const char *message,
                                       void *user_data);
/* A visitor reached `proxy`; `stream` carries it, `visitor` is its
 * "HOST:PORT" as the server reported it ("" if not). Return 0 to take the
 * stream, or a negative code to refuse it (it is reset). */
typedef int (*tunnel_engine_stream_open_cb)(tunnel_engine *e, uint32_t stream,
                                            uint32_t proxy,
                                            const char *visitor,
                                            void *user_data);
/* Bytes from the visitor, valid for the call. */
typedef void (*tunnel_engine_stream_data_cb)(tunnel_engine *e,
                                             uint32_t stream,
                                             const uint8_t *data, size_t len,
                                             void *user_data);
/* status 0: the visitor finished sending (half-close); the stream lives
 * on for writing. Negative: the stream is over (TUNNEL_ERESET by the peer,
 * TUNNEL_ECLOSED when the session went away) and its number is gone. */
typedef void (*tunnel_engine_stream_end_cb)(tunnel_engine *e, uint32_t stream,
                                            int status, void *user_data);
/* tunnel_engine_stream_write() can take more on `stream`. */
typedef void (*tunnel_engine_stream_writable_cb)(tunnel_engine *e,
                                                 uint32_t stream,
                                                 void *user_data);
/* Non-mux mode: open connection `conn` to the server (the address of the
 * control connection), then call tunnel_engine_conn_ready() or
 * tunnel_engine_conn_closed(). */
typedef void (*tunnel_engine_connect_cb)(tunnel_engine *e, uint32_t conn,
                                         void *user_data);
/* The engine is finished with connection `conn`: flush what
 * tunnel_engine_send() still gives for it, then close the socket. */
typedef void (*tunnel_engine_disconnect_cb)(tunnel_engine *e, uint32_t conn,
                                            void *user_data);

/* Each step of the connection's life (tunnel_client_event in
 * tunnel/tunnel.h): `status` for LOST and GAVE_UP, `delay_ms` for
 * RETRYING, `message` for LOGGED_IN (the run id) and LOST (valid for the
 * call). LOGGED_IN and LOST follow the state callback's report of the same
 * moment. */
typedef void (*tunnel_engine_event_cb)(tunnel_engine *e, int32_t event,
                                       int32_t status, uint32_t delay_ms,
                                       const char *message, void *user_data);

/* The configuration is copied (token, limits, pool count, mux mode,
 * heartbeat, allocator, logger). `user_data` goes to every callback. */
TUNNEL_EXTERN int tunnel_engine_new(tunnel_engine **out,
                                    const tunnel_config *cfg,
                                    void *user_data);
/* Frees the engine and every stream; no callback fires. */
TUNNEL_EXTERN void tunnel_engine_free(tunnel_engine *e);

/* Callbacks: set before tunnel_engine_start(); NULL ignores the event (a
 * stream nobody opens is refused). */
TUNNEL_EXTERN int tunnel_engine_set_state_cb(tunnel_engine *e,
                                             tunnel_engine_state_cb cb);
TUNNEL_EXTERN int tunnel_engine_set_proxy_cb(tunnel_engine *e,
                                             tunnel_engine_proxy_cb cb);
TUNNEL_EXTERN int tunnel_engine_set_stream_cbs(
    tunnel_engine *e, tunnel_engine_stream_open_cb open,
    tunnel_engine_stream_data_cb data, tunnel_engine_stream_end_cb end,
    tunnel_engine_stream_writable_cb writable);
TUNNEL_EXTERN int tunnel_engine_set_conn_cbs(tunnel_engine *e,
                                             tunnel_engine_connect_cb connect,
                                             tunnel_engine_disconnect_cb
                                                 disconnect);

TUNNEL_EXTERN int tunnel_engine_set_event_cb(tunnel_engine *e,
                                             tunnel_engine_event_cb cb);

/* UDP proxies carry datagrams, not streams: one arrived at `proxy` from
 * the visitor at `ip` (numeric; IPv6 possibly with "%zone") and `port`.
 * `data` is valid for the call. Answers go back with
 * tunnel_engine_datagram_send() to the same address. */
typedef void (*tunnel_engine_datagram_cb)(tunnel_engine *e, uint32_t proxy,
                                          const char *ip, uint16_t port,
                                          const uint8_t *data, size_t len,
                                          void *user_data);
TUNNEL_EXTERN int tunnel_engine_set_datagram_cb(tunnel_engine *e,
                                                tunnel_engine_datagram_cb cb);
/* Sends a datagram of up to 65,507 bytes to the visitor at `ip`:`port`
 * through UDP proxy `proxy`. As with a UDP socket, nothing waits: when the
 * channel to the server has no room for all of it, the datagram is dropped
 * (TUNNEL_ELIMIT); TUNNEL_ESTATE when the proxy has no channel right now
 * (not registered yet, or the server is replacing it). */
TUNNEL_EXTERN int tunnel_engine_datagram_send(tunnel_engine *e,
                                              uint32_t proxy, const char *ip,
                                              uint16_t port,
                                              const uint8_t *data,
                                              size_t len);

/* Fills `out` with `n` random bytes (frp's cipher needs a fresh 16-byte IV
 * per session); 0 on success, anything else fails the session with
 * TUNNEL_ECRYPTO. Required: tunnel_engine_start() refuses to run without it
 * (TUNNEL_ESTATE). `user_data` is the engine's. */
typedef int (*tunnel_engine_random_cb)(uint8_t *out, size_t n,
                                       void *user_data);
TUNNEL_EXTERN int tunnel_engine_set_random_cb(tunnel_engine *e,
                                              tunnel_engine_random_cb cb);
/* The current Unix time in seconds, for the timestamp that Login,
 * NewWorkConn and Ping are signed with (a server refuses one too far from
 * its own clock). Without it the timestamp is 0, which only a server that
 * does not bound the skew accepts (stock frps; not libtunnel's by
 * default). */
typedef int64_t (*tunnel_engine_time_cb)(void *user_data);
TUNNEL_EXTERN int tunnel_engine_set_time_cb(tunnel_engine *e,
                                            tunnel_engine_time_cb cb);

/* Who the client is, sent in every later Login as frp's hostname, os and
 * arch (the server shows them; frp's own client sends its GOOS and
 * GOARCH, e.g. "linux" and "amd64"). The strings are copied, at most 255
 * bytes each; NULL or "" leaves a field out. TUNNEL_ENOMEM keeps the
 * previous identity. */
TUNNEL_EXTERN int tunnel_engine_set_identity(tunnel_engine *e,
                                             const char *hostname,
                                             const char *os,
                                             const char *arch);

/* Declares a proxy (registered at every login; names are unique on the
 * server). Options are set before the login that registers it; a proxy
 * added during a session is registered by the next
 * tunnel_engine_next_output() or tunnel_engine_tick(), so its options can
 * be set in between. TUNNEL_EEXIST for a name already declared,
 * TUNNEL_ENOTSUP for another type. Options of a proxy already registered in
 * the running session: TUNNEL_ESTATE; an option its type lacks:
 * TUNNEL_ENOTSUP. */
TUNNEL_EXTERN int tunnel_engine_add_proxy(tunnel_engine *e, const char *name,
                                          int32_t type, uint32_t *proxy_out);
/* TCP and UDP: the public port wanted (0, the default: the server
 * picks). */
TUNNEL_EXTERN int tunnel_engine_proxy_set_remote_port(tunnel_engine *e,
                                                      uint32_t proxy,
                                                      uint16_t port);
/* HTTP/HTTPS: NAME.DOMAIN, and exact names (repeatable). */
TUNNEL_EXTERN int tunnel_engine_proxy_set_subdomain(tunnel_engine *e,
                                                    uint32_t proxy,
                                                    const char *name);
TUNNEL_EXTERN int tunnel_engine_proxy_add_domain(tunnel_engine *e,
                                                 uint32_t proxy,
                                                 const char *fqdn);

/* HTTP only: a path prefix routed to this proxy (repeatable), the Host
 * header the local service sees, HTTP basic authentication the server
 * demands of visitors, and a request header the server sets. Values
 * cannot contain CR or LF. */
TUNNEL_EXTERN int tunnel_engine_proxy_add_location(tunnel_engine *e,
                                                   uint32_t proxy,
                                                   const char *path);
TUNNEL_EXTERN int tunnel_engine_proxy_set_host_rewrite(tunnel_engine *e,
                                                       uint32_t proxy,
                                                       const char *host);
TUNNEL_EXTERN int tunnel_engine_proxy_set_basic_auth(tunnel_engine *e,
                                                     uint32_t proxy,
                                                     const char *user,
                                                     const char *password);
TUNNEL_EXTERN int tunnel_engine_proxy_set_header(tunnel_engine *e,
                                                 uint32_t proxy,
                                                 const char *name,
                                                 const char *value);
/* STCP only (TUNNEL_ENOTSUP for other types): the secret a visitor must
 * prove to reach this secret service (frp's `sk`), copied, 1 to 255 bytes.
 * A secret service has no public address: its registration reports 0 and
 * "" to the proxy callback, and visitors arrive through the open callback
 * as for a TCP proxy. The server refuses one registered without a
 * secret. */
TUNNEL_EXTERN int tunnel_engine_proxy_set_secret(tunnel_engine *e,
                                                 uint32_t proxy,
                                                 const char *secret);
/* Forgets a proxy: the server is told (CloseProxy) if it registered it,
 * so its port or names are free at once; visitors' streams already open
 * go on; work channels still waiting for it are dropped. The number is
 * gone. */
TUNNEL_EXTERN int tunnel_engine_remove_proxy(tunnel_engine *e,
                                             uint32_t proxy);

/* Connection 1 is connected: the engine queues the login (and, with
 * multiplexing, the session's first frames). TUNNEL_ESTATE while a
 * session is running. A reconnection waiting for its delay is superseded.
 */
TUNNEL_EXTERN int tunnel_engine_start(tunnel_engine *e, uint64_t now_ms);

/* Connecting through the engine, which is how it reconnects by itself
 * (tunnel_config_set_reconnect): it asks for connection 1 through the
 * connect callback (so that callback is required), the program reports
 * the outcome with tunnel_engine_conn_ready() or
 * tunnel_engine_conn_closed(), and the session starts. An attempt that
 * neither succeeds nor fails within the login timeout is abandoned (the
 * disconnect callback closes it). After a loss the engine waits its delay
 * (RETRYING event; tunnel_engine_tick's deadline) and asks again. This
 * call makes an attempt now, superseding a pending delay; TUNNEL_ESTATE
 * while a session or an attempt is under way, or without a connect
 * callback. */
TUNNEL_EXTERN int tunnel_engine_connect(tunnel_engine *e, uint64_t now_ms);
/* Ends the session (streams end with TUNNEL_ECLOSED; the state callback
 * says TUNNEL_ECANCELED) or the attempt under way (the disconnect callback
 * closes connection 1), and cancels any reconnection. The engine stays
 * idle until tunnel_engine_connect() or tunnel_engine_start(). */
TUNNEL_EXTERN int tunnel_engine_stop(tunnel_engine *e, uint64_t now_ms);
/* Graceful shutdown, first step: the server is told to close every proxy
 * (CloseProxy: ports and names are free at once and no visitor arrives
 * any more), work channels the server asks for or starts from now on are
 * refused, and the engine will not reconnect. Streams already open go on;
 * once tunnel_engine_stream_count() is 0 (or the program's patience ends)
 * call tunnel_engine_stop(). Without a session it just stops. */
TUNNEL_EXTERN int tunnel_engine_drain(tunnel_engine *e, uint64_t now_ms);
/* Visitor streams open now (handed to the program and not yet closed),
 * the program's own open visits to secret services included. */
TUNNEL_EXTERN uint32_t tunnel_engine_stream_count(const tunnel_engine *e);
/* Bytes received on `conn`. An error ends the session (the state callback
 * says why) and is returned. */
TUNNEL_EXTERN int tunnel_engine_recv(tunnel_engine *e, uint32_t conn,
                                     const uint8_t *data, size_t len,
                                     uint64_t now_ms);
/* 1 and *conn when some connection has bytes to send, else 0. */
TUNNEL_EXTERN int tunnel_engine_next_output(tunnel_engine *e, uint32_t *conn);
/* The same among connections numbered above `after` (in increasing
 * order), so a program whose socket for one connection is full can go on
 * to the next: start with 0, then pass the last number returned. */
TUNNEL_EXTERN int tunnel_engine_next_output_after(tunnel_engine *e,
                                                  uint32_t after,
                                                  uint32_t *conn);
/* Copies up to `cap` bytes to send on `conn` into `buf`; *len says how
 * many (0: none). The bytes are the program's to deliver, in order. */
TUNNEL_EXTERN int tunnel_engine_send(tunnel_engine *e, uint32_t conn,
                                     uint8_t *buf, size_t cap, size_t *len);
/* Non-mux: connection `conn` (asked for by the connect callback) is
 * connected. */
TUNNEL_EXTERN int tunnel_engine_conn_ready(tunnel_engine *e, uint32_t conn,
                                           uint64_t now_ms);
/* `conn` ended (0: the peer closed it; negative: failed or could not be
 * opened). Connection 1 ends the session. On a non-mux connection carrying
 * a visitor, 0 is the visitor's half-close (end callback with 0; the
 * stream can still be written) and a negative status resets the stream
 * (TUNNEL_ERESET). A connection the engine already finished with is
 * ignored. The socket: after status 0 on a visitor's connection it stays
 * open for writing until the disconnect callback; in every other case the
 * engine is done with it when this returns (no disconnect callback
 * follows): close it. */
TUNNEL_EXTERN int tunnel_engine_conn_closed(tunnel_engine *e, uint32_t conn,
                                            int status, uint64_t now_ms);
/* Non-mux: the program takes connection `conn`, which carries the open
 * stream of the same number, as a plain byte pipe to the visitor: the
 * engine forgets the stream (no callback fires for it again) and the
 * program moves the bytes between its socket and the local service
 * itself, half-closes included — no copy through the engine. Before
 * either side finished and while tunnel_engine_send() still has bytes for
 * it (send them first): TUNNEL_ESTATE. Call it once the call that opened
 * the stream has returned: bytes that came with StartWorkConn arrive
 * through the data callback right after the open callback. */
TUNNEL_EXTERN int tunnel_engine_conn_detach(tunnel_engine *e, uint32_t conn);
/* Runs what is due at `now_ms` (heartbeats, the login deadline, the
 * server's silence limit) and sets *next_ms to when to call again
 * (UINT64_MAX: nothing pending). */
TUNNEL_EXTERN int tunnel_engine_tick(tunnel_engine *e, uint64_t now_ms,
                                     uint64_t *next_ms);

/* Sends up to `len` bytes to the visitor; *taken says how many the window
 * allowed (0: wait for the writable callback). */
TUNNEL_EXTERN int tunnel_engine_stream_write(tunnel_engine *e,
                                             uint32_t stream,
                                             const uint8_t *data, size_t len,
                                             size_t *taken);
/* No more data to the visitor (half-close). Without multiplexing a
 * connection cannot be half-closed through this interface, so the stream
 * ends as with a stock frp peer: the disconnect callback (flush, then
 * close), then the end callback with TUNNEL_ECLOSED. */
TUNNEL_EXTERN int tunnel_engine_stream_shutdown(tunnel_engine *e,
                                                uint32_t stream);
/* The program is done with the stream: closed, reset if either side had
 * not finished. The number is gone; no callback fires for it. */
TUNNEL_EXTERN int tunnel_engine_stream_close(tunnel_engine *e,
                                             uint32_t stream);
/* The program consumed `n` bytes delivered by the data callback. */
TUNNEL_EXTERN int tunnel_engine_stream_consumed(tunnel_engine *e,
                                                uint32_t stream, size_t n);

/* ------------------------------------------- visiting a secret service */

/* The outcome of tunnel_engine_visit() for `stream`. status 0: the
 * service's client has a visitor; from now on `stream` is an open stream
 * like a visitor's (data, end and writable callbacks; stream_write,
 * shutdown, close, consumed; without multiplexing, conn_detach), bytes
 * that followed the answer arrive through the data callback right after
 * this one. Negative: the stream number is gone: TUNNEL_EREFUSED with the
 * server's reason (a wrong secret, an unknown name), TUNNEL_ECLOSED when
 * the session ended first, TUNNEL_ETIMEDOUT when the server did not answer
 * within the login timeout (counted from the first tunnel_engine_tick()
 * after the visit), TUNNEL_ECONNRESET when it closed the channel
 * without an answer, TUNNEL_EPROTO for an answer that is not one, or the
 * connection's own failure (non-mux). `message` is valid for the call
 * ("" when there is nothing to add). */
typedef void (*tunnel_engine_visit_cb)(tunnel_engine *e, uint32_t stream,
                                       int status, const char *message,
                                       void *user_data);
TUNNEL_EXTERN int tunnel_engine_set_visit_cb(tunnel_engine *e,
                                             tunnel_engine_visit_cb cb);
/* Opens a channel to the secret service `name` (another client's STCP
 * proxy) proving `secret` (frp's NewVisitorConn, signed like a login:
 * md5 of the secret and the time callback's timestamp, so a server that
 * bounds the clock skew needs that callback). With multiplexing the
 * channel is a new stream of the session; without, the connect callback
 * is asked for connection *stream_out (the same number), reported as work
 * connections are, and a connect callback that reports a failure at once
 * gets the visit callback before this returns. *stream_out is set before
 * anything is asked; the visit callback says how it ended. Closing the
 * stream before that (tunnel_engine_stream_close) abandons the visit
 * without a visit callback (without multiplexing, the disconnect callback
 * ends its connection). Errors: TUNNEL_EINVAL (name empty or over 255
 * bytes, secret empty or over 255 bytes), TUNNEL_ESTATE (not logged in,
 * draining, or no connect callback without multiplexing), TUNNEL_ELIMIT
 * (as many visits waiting for their answer as max_work_conns, or the
 * session's stream limit), TUNNEL_ENOMEM. */
TUNNEL_EXTERN int tunnel_engine_visit(tunnel_engine *e, const char *name,
                                      const char *secret,
                                      uint32_t *stream_out);

#ifdef __cplusplus
}
#endif

#endif /* TUNNEL_ENGINE_H */
