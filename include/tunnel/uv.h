/*
 * libtunnel on libuv: the only public header that includes <uv.h>.
 *
 * Every handle here runs on the uv_loop_t it was created with and must be
 * used from that loop's thread only. Callbacks are invoked from the loop,
 * never from inside the call that scheduled them.
 *
 * As with libuv itself, a write to a connection the peer has reset raises
 * SIGPIPE: programs must ignore it (signal(SIGPIPE, SIG_IGN)). A library
 * cannot change a process-wide signal disposition on its behalf.
 */
#ifndef TUNNEL_UV_H
#define TUNNEL_UV_H

#include <uv.h>

#include "tunnel/tunnel.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- stream */

/* A bidirectional byte stream carried through the tunnel: one visitor
 * connection, as seen by the program that serves it in-process. Created by
 * the library (see tunnel_proxy_set_accept_cb); the program owns it from the
 * accept callback on and must end it with tunnel_stream_close(). */
typedef struct tunnel_stream tunnel_stream;

/* status 0: `len` bytes of data, borrowed for the call.
 * status TUNNEL_EEOF: the peer half-closed; no more data will come, but
 *   writing is still allowed.
 * other negative status: the stream failed (reset, session lost); no more
 *   reads. `data` is NULL and `len` 0 unless status is 0. */
typedef void (*tunnel_stream_read_cb)(tunnel_stream *stream, int status,
                                      const uint8_t *data, size_t len,
                                      void *user_data);
/* status 0: the bytes were handed to the transport (this is the moment to
 * write more); TUNNEL_ECANCELED: the stream was closed first; other negative:
 * the stream failed. */
typedef void (*tunnel_stream_write_cb)(tunnel_stream *stream, int status,
                                       void *user_data);
typedef void (*tunnel_stream_close_cb)(tunnel_stream *stream, void *user_data);

/* Delivers data through `cb` until tunnel_stream_read_stop(). While reading
 * is stopped the peer is held back by flow control, not buffered without
 * bound. */
TUNNEL_EXTERN int tunnel_stream_read_start(tunnel_stream *stream,
                                           tunnel_stream_read_cb cb,
                                           void *user_data);
TUNNEL_EXTERN int tunnel_stream_read_stop(tunnel_stream *stream);

/* Queues a copy of `data`. `cb` (may be NULL) fires once the bytes have left
 * the stream's queue. Writes are never refused for being large; apply your
 * own backpressure with tunnel_stream_write_queue_size(). */
TUNNEL_EXTERN int tunnel_stream_write(tunnel_stream *stream,
                                      const uint8_t *data, size_t len,
                                      tunnel_stream_write_cb cb,
                                      void *user_data);
/* Bytes queued and not yet handed to the transport. */
TUNNEL_EXTERN size_t tunnel_stream_write_queue_size(const tunnel_stream *stream);

/* Half-close: the peer reads EOF after every byte queued before this call.
 * `cb` (may be NULL) fires with 0 once the end has been sent. */
TUNNEL_EXTERN int tunnel_stream_shutdown(tunnel_stream *stream,
                                         tunnel_stream_write_cb cb,
                                         void *user_data);

/* Ends the stream and frees it after `cb` (may be NULL). Unless both
 * directions had already ended, the peer sees a reset. Pending write and
 * shutdown callbacks fire first with TUNNEL_ECANCELED. */
TUNNEL_EXTERN int tunnel_stream_close(tunnel_stream *stream,
                                      tunnel_stream_close_cb cb,
                                      void *user_data);

TUNNEL_EXTERN void tunnel_stream_set_user_data(tunnel_stream *stream,
                                               void *user_data);
TUNNEL_EXTERN void *tunnel_stream_get_user_data(const tunnel_stream *stream);

/* ---------------------------------------------------------------- server */

/* The relay: accepts clients on a control address, authenticates them, and
 * opens the public listeners their proxies ask for. */
typedef struct tunnel_server tunnel_server;
typedef void (*tunnel_server_close_cb)(tunnel_server *srv, void *user_data);

/* `cfg` is copied; it may be freed after the call. */
TUNNEL_EXTERN int tunnel_server_new(tunnel_server **out, uv_loop_t *loop,
                                    const tunnel_config *cfg);
/* Starts accepting clients on host:port (port 0: an ephemeral port; see
 * tunnel_server_port). `host` is a numeric IPv4 or IPv6 address. May be
 * called again for other addresses (up to 4: "0.0.0.0" and "::", say);
 * TUNNEL_ELIMIT beyond. */
TUNNEL_EXTERN int tunnel_server_listen(tunnel_server *srv, const char *host,
                                       uint16_t port);
/* Port of the first address listened on. */
TUNNEL_EXTERN int tunnel_server_port(const tunnel_server *srv,
                                     uint16_t *port);
/* The public HTTP port: requests are routed by their Host to HTTP proxies
 * (each request of a kept-alive connection on its own). Port 0: an
 * ephemeral port. */
TUNNEL_EXTERN int tunnel_server_listen_http(tunnel_server *srv,
                                            const char *host, uint16_t port);
/* The public HTTPS port: TLS connections are routed by the server name of
 * their ClientHello (SNI) to HTTPS proxies, bytes untouched. */
TUNNEL_EXTERN int tunnel_server_listen_https(tunnel_server *srv,
                                             const char *host, uint16_t port);
/* Ports bound by the calls above (TUNNEL_ESTATE when not listening). */
TUNNEL_EXTERN int tunnel_server_http_port(const tunnel_server *srv,
                                          uint16_t *port);
TUNNEL_EXTERN int tunnel_server_https_port(const tunnel_server *srv,
                                           uint16_t *port);
/* Server with TLS: the SHA-256 fingerprint of its certificate (the one
 * configured or the one generated at start), as 95 characters "AB:CD:..."
 * plus NUL; `len` >= 96. Clients pin it with tunnel_config_set_tls_pin().
 * TUNNEL_ESTATE when TLS is off. */
TUNNEL_EXTERN int tunnel_server_tls_fingerprint(const tunnel_server *srv,
                                                char *out, size_t len);
/* Clients logged in now. */
TUNNEL_EXTERN uint32_t tunnel_server_client_count(const tunnel_server *srv);
/* Stops listening, disconnects every client and frees the server after
 * `cb` (may be NULL). */
TUNNEL_EXTERN int tunnel_server_close(tunnel_server *srv,
                                      tunnel_server_close_cb cb,
                                      void *user_data);

/* ---------------------------------------------------------------- client */

/* The agent: one connection to a server, and the proxies registered over
 * it. */
typedef struct tunnel_client tunnel_client;
typedef struct tunnel_proxy tunnel_proxy;

/* status 0: logged in; `message` is the run id the server assigned.
 * Negative: the login was refused (TUNNEL_EAUTH, `message` is the server's
 * reason) or the session ended (connection lost, protocol error). The
 * client is then disconnected; close it. */
typedef void (*tunnel_client_state_cb)(tunnel_client *c, int status,
                                       const char *message, void *user_data);
typedef void (*tunnel_client_close_cb)(tunnel_client *c, void *user_data);

TUNNEL_EXTERN int tunnel_client_new(tunnel_client **out, uv_loop_t *loop,
                                    const tunnel_config *cfg);
TUNNEL_EXTERN int tunnel_client_set_state_cb(tunnel_client *c,
                                             tunnel_client_state_cb cb,
                                             void *user_data);
/* Connects and logs in; proxies already started register on login. `host`
 * may be a name (resolved asynchronously) or a numeric address. */
TUNNEL_EXTERN int tunnel_client_connect(tunnel_client *c, const char *host,
                                        uint16_t port);
/* Disconnects, frees every proxy, and frees the client after `cb`. Streams
 * handed to the program stay valid until it closes them, but fail
 * (TUNNEL_ECLOSED on reading or writing); `cb` fires once the program has
 * closed them all. The same failure ends them when the session is lost. */
TUNNEL_EXTERN int tunnel_client_close(tunnel_client *c,
                                      tunnel_client_close_cb cb,
                                      void *user_data);

/* TCP: a public port. HTTP: requests routed by Host through the server's
 * HTTP port. HTTPS: TLS connections routed by their server name (SNI)
 * through the server's HTTPS port, untouched (the local service holds the
 * certificate). */
typedef enum tunnel_proxy_type {
  TUNNEL_PROXY_TCP = 1,
  TUNNEL_PROXY_HTTP = 2,
  TUNNEL_PROXY_HTTPS = 3
} tunnel_proxy_type;

/* status 0: registered; `message` is the public address: "HOST:PORT" for
 * TCP; for HTTP/HTTPS the names routed to the proxy, "NAME[:PORT]" joined
 * by commas (the port omitted when it is the scheme's default).
 * Negative: refused (TUNNEL_EREFUSED; `message` is the server's reason). */
typedef void (*tunnel_proxy_status_cb)(tunnel_proxy *p, int status,
                                       const char *message, void *user_data);
/* In-process accept: a visitor arrived; the program owns `stream`. */
typedef void (*tunnel_proxy_accept_cb)(tunnel_proxy *p, tunnel_stream *stream,
                                       void *user_data);

/* The proxy belongs to the client and is freed with it. `name` is unique
 * on the server. */
TUNNEL_EXTERN int tunnel_proxy_new(tunnel_proxy **out, tunnel_client *c,
                                   const char *name, int type);
/* Public port wanted (0, the default: the server chooses). */
TUNNEL_EXTERN int tunnel_proxy_set_remote_port(tunnel_proxy *p,
                                               uint16_t port);
/* Forward visitors to this local address (name or numeric). Without one,
 * visitors go to the accept callback. */
TUNNEL_EXTERN int tunnel_proxy_set_local(tunnel_proxy *p, const char *host,
                                         uint16_t port);
/* HTTP/HTTPS routing, before tunnel_proxy_start (TUNNEL_ESTATE after;
 * TUNNEL_ENOTSUP for a kind they do not apply to). Without a subdomain or
 * a domain, the server picks an unguessable subdomain. */
/* NAME.DOMAIN, DOMAIN being the server's (one DNS label). */
TUNNEL_EXTERN int tunnel_proxy_set_subdomain(tunnel_proxy *p,
                                             const char *name);
/* A full host name, or a wildcard "*.example.com"; repeatable. */
TUNNEL_EXTERN int tunnel_proxy_add_domain(tunnel_proxy *p, const char *fqdn);
/* HTTP: a path prefix ("/api": "/api" and "/api/..."); repeatable. Without
 * one, every path. */
TUNNEL_EXTERN int tunnel_proxy_add_location(tunnel_proxy *p,
                                            const char *path);
/* HTTP: the Host header the local service sees. */
TUNNEL_EXTERN int tunnel_proxy_set_host_rewrite(tunnel_proxy *p,
                                                const char *host);
/* HTTP: visitors must send these credentials (HTTP basic auth). */
TUNNEL_EXTERN int tunnel_proxy_set_basic_auth(tunnel_proxy *p,
                                              const char *user,
                                              const char *password);
/* HTTP: a request header set on every request (replacing the visitor's). */
TUNNEL_EXTERN int tunnel_proxy_set_header(tunnel_proxy *p, const char *name,
                                          const char *value);
TUNNEL_EXTERN int tunnel_proxy_set_status_cb(tunnel_proxy *p,
                                             tunnel_proxy_status_cb cb,
                                             void *user_data);
TUNNEL_EXTERN int tunnel_proxy_set_accept_cb(tunnel_proxy *p,
                                             tunnel_proxy_accept_cb cb,
                                             void *user_data);
/* Registers the proxy now if logged in, else at login. */
TUNNEL_EXTERN int tunnel_proxy_start(tunnel_proxy *p);
/* Unregisters the proxy and frees it. Visitors already joined continue. */
TUNNEL_EXTERN int tunnel_proxy_close(tunnel_proxy *p);
TUNNEL_EXTERN const char *tunnel_proxy_name(const tunnel_proxy *p);

#ifdef __cplusplus
}
#endif

#endif /* TUNNEL_UV_H */
