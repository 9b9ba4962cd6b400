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
/* Graceful close. Stops accepting at once (control and public listeners,
 * new logins, visitors, proxies and work connections), closes every
 * public proxy port, and tells multiplexing clients to open no more
 * streams (GoAway); visitors already joined to a client and HTTP requests
 * under way run on for at most `drain_ms`. Then, or as soon as none is
 * left, it does what tunnel_server_close() does (non-multiplexing clients'
 * control connections close then) and frees the server after `cb` (may be
 * NULL), which fires once. `drain_ms` 0: tunnel_server_close() now.
 * tunnel_server_close() during the drain ends it at once; its own callback
 * then fires too, before this one. TUNNEL_ESTATE when already closing or
 * draining. */
TUNNEL_EXTERN int tunnel_server_shutdown(tunnel_server *srv,
                                         uint32_t drain_ms,
                                         tunnel_server_close_cb cb,
                                         void *user_data);

/* ------------------------------------------------------ server metrics */

/* Counters (only ever grow) and gauges (values now) of a server, read with
 * tunnel_server_stat(). Values are kept on the loop thread: read them from
 * it. Numbers are fixed; new ones are added at the end. */
typedef enum tunnel_server_stat_id {
  /* gauge: clients logged in */
  TUNNEL_SERVER_STAT_CLIENTS = 0,
  /* counter: logins accepted */
  TUNNEL_SERVER_STAT_LOGINS_OK = 1,
  /* counter: logins refused for a wrong token, a clock out of range or a
   * replayed login */
  TUNNEL_SERVER_STAT_LOGINS_REFUSED_AUTH = 2,
  /* counter: logins refused because their address failed too often */
  TUNNEL_SERVER_STAT_LOGINS_REFUSED_RATE = 3,
  /* counter: logins refused because max_clients were logged in */
  TUNNEL_SERVER_STAT_LOGINS_REFUSED_CLIENTS = 4,
  /* counter: logins refused for any other reason (a second login on a
   * session, server out of memory) */
  TUNNEL_SERVER_STAT_LOGINS_REFUSED_OTHER = 5,
  /* gauges: proxies registered now, by type */
  TUNNEL_SERVER_STAT_PROXIES_TCP = 6,
  TUNNEL_SERVER_STAT_PROXIES_HTTP = 7,
  TUNNEL_SERVER_STAT_PROXIES_HTTPS = 8,
  /* gauge: visitor connections being carried by a work connection now (an
   * HTTP connection while a request is in flight) */
  TUNNEL_SERVER_STAT_VISITORS_OPEN = 9,
  /* counter: visitors that asked a tunnel for a work connection (for HTTP,
   * each request that needed a new one) */
  TUNNEL_SERVER_STAT_VISITORS_TOTAL = 10,
  /* counter: visitors refused because no proxy serves the port or name */
  TUNNEL_SERVER_STAT_VISITORS_REFUSED_NO_TUNNEL = 11,
  /* counter: visitors refused because too many were waiting for work */
  TUNNEL_SERVER_STAT_VISITORS_REFUSED_LIMIT = 12,
  /* counters: payload bytes from and to visitors, every proxy (HTTP: the
   * forwarded request, rewritten head included, and the response) */
  TUNNEL_SERVER_STAT_BYTES_IN = 13,
  TUNNEL_SERVER_STAT_BYTES_OUT = 14,
  /* gauge: multiplexed streams open in client sessions */
  TUNNEL_SERVER_STAT_STREAMS_OPEN = 15,
  /* counters: visitors handed a pooled work connection at once, and
   * visitors that had to wait for one */
  TUNNEL_SERVER_STAT_POOL_HITS = 16,
  TUNNEL_SERVER_STAT_POOL_MISSES = 17,
  /* counters: unauthenticated connections, sessions or channels dropped to
   * make room for newer ones, and for saying nothing (or not logging in)
   * in time */
  TUNNEL_SERVER_STAT_UNAUTH_SHED = 18,
  TUNNEL_SERVER_STAT_UNAUTH_TIMED_OUT = 19,
  /* counters: TLS handshakes of clients completed in full, resumed from a
   * ticket or the cache, and failed */
  TUNNEL_SERVER_STAT_TLS_FULL = 20,
  TUNNEL_SERVER_STAT_TLS_RESUMED = 21,
  TUNNEL_SERVER_STAT_TLS_FAILED = 22,
  /* gauge: secret (stcp) services registered now */
  TUNNEL_SERVER_STAT_PROXIES_STCP = 23,
  /* counter: visitors of secret services refused for their key (wrong, or
   * its timestamp out of range) or because their address ran out of
   * attempts */
  TUNNEL_SERVER_STAT_VISITORS_REFUSED_AUTH = 24,
  TUNNEL_SERVER_STAT_COUNT_ = 25 /* not an id: the number of ids */
} tunnel_server_stat_id;

/* One value; TUNNEL_EINVAL for an unknown id or a NULL argument. */
TUNNEL_EXTERN int tunnel_server_stat(const tunnel_server *srv, int32_t which,
                                     uint64_t *value);

/* A logged-in client, during a tunnel_server_foreach_client() callback
 * only (also those with no proxy). */
typedef struct tunnel_server_client_info tunnel_server_client_info;
/* Non-zero stops the walk (tunnel_server_foreach_client returns it). */
typedef int (*tunnel_server_client_cb)(const tunnel_server_client_info *c,
                                       void *user_data);
/* Calls `cb` for each client logged in now; the callback must not change
 * the server. */
TUNNEL_EXTERN int tunnel_server_foreach_client(const tunnel_server *srv,
                                               tunnel_server_client_cb cb,
                                               void *user_data);
/* Its run id, the address its control connection came from, the version
 * it announced, when it logged in (loop milliseconds, and Unix seconds by
 * the server's clock), and how many proxies it holds. Strings are valid
 * during the callback. */
TUNNEL_EXTERN const char *
tunnel_server_client_run_id(const tunnel_server_client_info *c);
TUNNEL_EXTERN const char *
tunnel_server_client_addr(const tunnel_server_client_info *c);
TUNNEL_EXTERN const char *
tunnel_server_client_version(const tunnel_server_client_info *c);
TUNNEL_EXTERN uint64_t
tunnel_server_client_since_ms(const tunnel_server_client_info *c);
TUNNEL_EXTERN int64_t
tunnel_server_client_since_unix(const tunnel_server_client_info *c);
TUNNEL_EXTERN uint32_t
tunnel_server_client_proxies(const tunnel_server_client_info *c);

/* A registered proxy, during a tunnel_server_foreach_proxy() callback
 * only. */
typedef struct tunnel_server_proxy_info tunnel_server_proxy_info;
/* Non-zero stops the walk (tunnel_server_foreach_proxy returns it). */
typedef int (*tunnel_server_proxy_cb)(const tunnel_server_proxy_info *p,
                                      void *user_data);
/* Calls `cb` for each proxy registered now. The callback must not change
 * the server (close it, or anything of its clients). */
TUNNEL_EXTERN int tunnel_server_foreach_proxy(const tunnel_server *srv,
                                              tunnel_server_proxy_cb cb,
                                              void *user_data);
TUNNEL_EXTERN const char *
tunnel_server_proxy_name(const tunnel_server_proxy_info *p);
/* TUNNEL_PROXY_TCP, _HTTP, _HTTPS, _UDP or _STCP. */
TUNNEL_EXTERN int tunnel_server_proxy_type(const tunnel_server_proxy_info *p);
/* What the client was told: ":PORT" for TCP, "NAME[:PORT],..." for
 * HTTP/HTTPS. */
TUNNEL_EXTERN const char *
tunnel_server_proxy_public_addr(const tunnel_server_proxy_info *p);
TUNNEL_EXTERN const char *
tunnel_server_proxy_run_id(const tunnel_server_proxy_info *p);
/* Address the client's control connection came from. */
TUNNEL_EXTERN const char *
tunnel_server_proxy_client_addr(const tunnel_server_proxy_info *p);
/* When the proxy was registered: loop time (uv_now, milliseconds) and Unix
 * time (seconds). */
TUNNEL_EXTERN uint64_t
tunnel_server_proxy_since_ms(const tunnel_server_proxy_info *p);
TUNNEL_EXTERN int64_t
tunnel_server_proxy_since_unix(const tunnel_server_proxy_info *p);
/* Bytes from and to its visitors, visitor connections carried now and
 * visitors ever (as the server-wide stats). */
TUNNEL_EXTERN uint64_t
tunnel_server_proxy_bytes_in(const tunnel_server_proxy_info *p);
TUNNEL_EXTERN uint64_t
tunnel_server_proxy_bytes_out(const tunnel_server_proxy_info *p);
TUNNEL_EXTERN uint64_t
tunnel_server_proxy_visitors_open(const tunnel_server_proxy_info *p);
TUNNEL_EXTERN uint64_t
tunnel_server_proxy_visitors_total(const tunnel_server_proxy_info *p);

/* Serves GET /metrics (Prometheus text format) and GET /api/status (JSON)
 * on host:port (numeric; port 0: ephemeral) over HTTP/1.1, for operators.
 * Once per server (TUNNEL_ESTATE after). It shares nothing with the
 * tunnels but the loop: its peers cannot affect them. Closed with the
 * server. */
TUNNEL_EXTERN int tunnel_server_listen_metrics(tunnel_server *srv,
                                               const char *host,
                                               uint16_t port);
/* Port bound by tunnel_server_listen_metrics (TUNNEL_ESTATE before). */
TUNNEL_EXTERN int tunnel_server_metrics_port(const tunnel_server *srv,
                                             uint16_t *port);

/* ---------------------------------------------------------------- client */

/* The agent: one connection to a server, and the proxies registered over
 * it. */
typedef struct tunnel_client tunnel_client;
typedef struct tunnel_proxy tunnel_proxy;

/* status 0: logged in; `message` is the run id the server assigned.
 * Negative: the login was refused (TUNNEL_EAUTH, `message` is the server's
 * reason), the session ended (connection lost, protocol error) or an
 * attempt to connect failed. Visitors of the session have ended. Unless
 * reconnection is off (tunnel_config_set_reconnect) or the error is final
 * (the event callback says which: GAVE_UP), the client connects again by
 * itself and its proxies register again. */
typedef void (*tunnel_client_state_cb)(tunnel_client *c, int status,
                                       const char *message, void *user_data);
/* Every step of the connection's life, tunnel_client_event in
 * tunnel/tunnel.h: `status` for LOST and GAVE_UP, `delay_ms` for RETRYING,
 * `message` (valid for the call) for LOGGED_IN (the run id) and LOST. */
typedef void (*tunnel_client_event_cb)(tunnel_client *c, int32_t event,
                                       int32_t status, uint32_t delay_ms,
                                       const char *message, void *user_data);
typedef void (*tunnel_client_close_cb)(tunnel_client *c, void *user_data);

TUNNEL_EXTERN int tunnel_client_new(tunnel_client **out, uv_loop_t *loop,
                                    const tunnel_config *cfg);
TUNNEL_EXTERN int tunnel_client_set_state_cb(tunnel_client *c,
                                             tunnel_client_state_cb cb,
                                             void *user_data);
TUNNEL_EXTERN int tunnel_client_set_event_cb(tunnel_client *c,
                                             tunnel_client_event_cb cb,
                                             void *user_data);
/* Connects and logs in; proxies already started register on login. `host`
 * may be a name (resolved at each attempt) or a numeric address. A lost
 * session is re-established by the client itself (see
 * tunnel_config_set_reconnect); while it waits to retry, this call makes
 * the next attempt now (to another address, if given). TUNNEL_ESTATE while
 * connected or connecting. */
TUNNEL_EXTERN int tunnel_client_connect(tunnel_client *c, const char *host,
                                        uint16_t port);
/* Graceful close: the server is told at once to close every proxy (their
 * ports and names are free; no new visitor comes), no reconnection is
 * made, and visitors already carried run on for at most `drain_ms`. Then,
 * or as soon as none is left, it does what tunnel_client_close() does and
 * `cb` (may be NULL) fires once the client is freed. drain_ms 0: close
 * now. tunnel_client_close() during the drain ends it at once (only its
 * own callback fires then). TUNNEL_ESTATE when already closing or
 * draining. */
TUNNEL_EXTERN int tunnel_client_shutdown(tunnel_client *c, uint32_t drain_ms,
                                         tunnel_client_close_cb cb,
                                         void *user_data);
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
 * certificate). UDP: datagrams through a public port. STCP: a secret
 * service, with no public address: only visitors that know its name and
 * its secret reach it, through their own client (tunnel_client_dial,
 * tunnel_visitor). */
typedef enum tunnel_proxy_type {
  TUNNEL_PROXY_TCP = 1,
  TUNNEL_PROXY_HTTP = 2,
  TUNNEL_PROXY_HTTPS = 3,
  TUNNEL_PROXY_UDP = 4,
  TUNNEL_PROXY_STCP = 5
} tunnel_proxy_type;

/* status 0: registered; `message` is the public address: "HOST:PORT" for
 * TCP; for HTTP/HTTPS the names routed to the proxy, "NAME[:PORT]" joined
 * by commas (the port omitted when it is the scheme's default); for STCP
 * the proxy's name, which is what its visitors ask for. Again
 * after each reconnection. Negative: refused, `message` is the server's
 * reason: TUNNEL_EREFUSED is final; TUNNEL_EAGAIN is a proxy refused
 * after a reconnection although accepted before (its port or name most
 * likely still held by the lost session), asked for again with backoff
 * until it is accepted. */
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
/* STCP: the secret its visitors must prove (frp's `sk`), copied, 1 to
 * 255 bytes; required before tunnel_proxy_start (TUNNEL_EINVAL without
 * it). TUNNEL_ENOTSUP for other kinds. */
TUNNEL_EXTERN int tunnel_proxy_set_secret(tunnel_proxy *p,
                                          const char *secret);
/* UDP: how long a visitor's address keeps its socket towards the local
 * service without a datagram either way (default 60,000 ms). */
TUNNEL_EXTERN int tunnel_proxy_set_idle_timeout(tunnel_proxy *p, uint32_t ms);
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

/* -------------------------------------------- visiting secret services */

/* The outcome of tunnel_client_dial. status 0: `stream` is a byte stream
 * to the secret service, owned by the program from now on (end it with
 * tunnel_stream_close()); `message` is "". Negative: `stream` is NULL and
 * `message` says why (valid for the call): TUNNEL_EREFUSED with the
 * server's reason (a wrong secret, no such service), TUNNEL_ETIMEDOUT (the
 * client was not logged in within 10 s, or the server did not answer
 * within the login timeout), TUNNEL_ECLOSED (the session ended first),
 * TUNNEL_ECANCELED (the client was closed first), TUNNEL_ELIMIT (too many
 * dials waiting for a login), or another transport error. */
typedef void (*tunnel_client_dial_cb)(tunnel_client *c, int status,
                                      tunnel_stream *stream,
                                      const char *message, void *user_data);
/* The in-process mirror of an accept callback: a stream to the secret
 * service `name` (another client's STCP proxy) proving `secret`, with no
 * local port on either end. The client carries it: a new stream of its
 * session, or a connection of its own without multiplexing (over TLS when
 * the client uses TLS). A dial made while the client is not logged in
 * (connecting, reconnecting) waits for the login, at most 10 s and 256
 * dials at a time. `cb` fires exactly once, from the loop, never inside
 * this call. Errors: TUNNEL_EINVAL (empty or over 255 bytes), TUNNEL_ESTATE
 * (the client is closing or draining), TUNNEL_ENOMEM. */
TUNNEL_EXTERN int tunnel_client_dial(tunnel_client *c, const char *name,
                                     const char *secret,
                                     tunnel_client_dial_cb cb,
                                     void *user_data);

/* A local port for a secret service (frp's stcp visitor): each connection
 * accepted there is dialled as by tunnel_client_dial and joined to it,
 * bytes, backpressure and half-closes carried both ways. A connection that
 * cannot be carried (refused, no answer, no login within 10 s) is closed
 * and one log line says why. Belongs to its client and goes with it. */
typedef struct tunnel_visitor tunnel_visitor;
/* `name` and `secret` as for tunnel_client_dial, copied. */
TUNNEL_EXTERN int tunnel_visitor_new(tunnel_visitor **out, tunnel_client *c,
                                     const char *name, const char *secret);
/* Listens on host:port (`host` numeric IPv4 or IPv6; port 0: an ephemeral
 * port, see tunnel_visitor_port). Once per visitor (TUNNEL_ESTATE after);
 * TUNNEL_EADDRINUSE and the like from the socket. */
TUNNEL_EXTERN int tunnel_visitor_listen(tunnel_visitor *v, const char *host,
                                        uint16_t port);
/* The port listened on (TUNNEL_ESTATE before tunnel_visitor_listen). */
TUNNEL_EXTERN int tunnel_visitor_port(const tunnel_visitor *v,
                                      uint16_t *port);
/* Stops listening and frees the visitor; connections still waiting for
 * their channel are closed, those already joined go on. */
TUNNEL_EXTERN int tunnel_visitor_close(tunnel_visitor *v);

#ifdef __cplusplus
}
#endif

#endif /* TUNNEL_UV_H */
