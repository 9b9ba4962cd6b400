/*
 * libtunnel: expose services behind NAT through a relay server.
 *
 * This is the core header. It needs only <stddef.h> and <stdint.h>; the libuv
 * binding lives in <tunnel/uv.h>.
 *
 * Conventions (the same for every call in the library):
 *  - Every handle is opaque and created by a `_new` call that returns an error
 *    code and writes the handle through an out-pointer; `_free(NULL)` is a no-op.
 *  - Every fallible call returns 0 on success or a negative TUNNEL_E* code;
 *    tunnel_strerror() and tunnel_err_name() describe it. When a call fails,
 *    the callback it would have scheduled never fires.
 *  - Input buffers are borrowed for the duration of the call; strings are
 *    copied. Callbacks receive their `user_data` as the last argument.
 *  - Threading: the library keeps no global state. A handle and everything
 *    created from it belong to one thread at a time (the thread running its
 *    event loop); distinct handles may be used from distinct threads.
 */
#ifndef TUNNEL_TUNNEL_H
#define TUNNEL_TUNNEL_H

#include <stddef.h>
#include <stdint.h>

#include "tunnel/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  if defined(TUNNEL_BUILDING)
#    define TUNNEL_EXTERN __declspec(dllexport)
#  else
#    define TUNNEL_EXTERN
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define TUNNEL_EXTERN __attribute__((visibility("default")))
#else
#  define TUNNEL_EXTERN
#endif

/* ---------------------------------------------------------------- errors */

/* X(name, value, description). Values are stable ABI: append, never renumber. */
#define TUNNEL_ERRNO_MAP(X)                                                    \
  X(EINVAL, -1, "invalid argument")                                           \
  X(ENOMEM, -2, "out of memory")                                              \
  X(EPROTO, -3, "protocol error")                                             \
  X(ELIMIT, -4, "configured limit exceeded")                                  \
  X(ESTATE, -5, "operation not valid in the current state")                   \
  X(EAGAIN, -6, "resource temporarily unavailable (window or buffer full)")   \
  X(ECLOSED, -7, "handle or stream is closed")                                \
  X(ERESET, -8, "stream reset by peer")                                       \
  X(EGOAWAY, -9, "session is going away")                                     \
  X(EAUTH, -10, "authentication failed")                                      \
  X(EREFUSED, -11, "request refused by peer")                                 \
  X(ECONNREFUSED, -12, "connection refused")                                  \
  X(ECONNRESET, -13, "connection reset")                                      \
  X(ETIMEDOUT, -14, "timed out")                                              \
  X(EADDRINUSE, -15, "address already in use")                                \
  X(EADDRNOTAVAIL, -16, "address not available")                              \
  X(ENOTFOUND, -17, "not found")                                              \
  X(EEXIST, -18, "already exists")                                            \
  X(ECANCELED, -19, "operation canceled")                                     \
  X(EEOF, -20, "end of stream")                                               \
  X(EIO, -21, "input/output error")                                           \
  X(ETLS, -22, "TLS error")                                                   \
  X(ECRYPTO, -23, "cryptographic failure")                                    \
  X(ERANGE, -24, "value out of range")                                        \
  X(ENOTSUP, -25, "operation not supported")                                 \
  X(ECERTUNTRUSTED, -26, "certificate not trusted")                           \
  X(ECERTNAME, -27, "host name mismatch")                                     \
  X(ECERTPIN, -28, "pin mismatch")                                           \
  X(EMFILE, -29, "too many open files")

typedef enum tunnel_errno {
  TUNNEL_OK = 0,
#define TUNNEL__ERR_ENUM(name, value, desc) TUNNEL_##name = (value),
  TUNNEL_ERRNO_MAP(TUNNEL__ERR_ENUM)
#undef TUNNEL__ERR_ENUM
  TUNNEL__ERR_LAST = -30
} tunnel_errno;

/* Human-readable description; never NULL, static storage. */
TUNNEL_EXTERN const char *tunnel_strerror(int err);
/* Symbolic name such as "TUNNEL_EPROTO"; never NULL, static storage. */
TUNNEL_EXTERN const char *tunnel_err_name(int err);

/* --------------------------------------------------------------- version */

/* TUNNEL_VERSION_HEX of the library actually linked (may differ from the
 * header's when loaded dynamically). */
TUNNEL_EXTERN uint32_t tunnel_version(void);
/* "MAJOR.MINOR.PATCH"; static storage. */
TUNNEL_EXTERN const char *tunnel_version_string(void);

/* ---------------------------------------------------- allocator, logging */

/* Allocator hook. `realloc_fn(NULL, n)` must behave as malloc, `free_fn(NULL)`
 * must be a no-op. The functions are called only from the owning thread. */
typedef void *(*tunnel_malloc_fn)(size_t size, void *user_data);
typedef void *(*tunnel_realloc_fn)(void *ptr, size_t size, void *user_data);
typedef void (*tunnel_free_fn)(void *ptr, void *user_data);

typedef enum tunnel_log_level {
  TUNNEL_LOG_ERROR = 0,
  TUNNEL_LOG_WARN = 1,
  TUNNEL_LOG_INFO = 2,
  TUNNEL_LOG_DEBUG = 3
} tunnel_log_level;

/* Log sink. `message` is a NUL-terminated line without trailing newline,
 * valid only during the call. The library never writes to stdout/stderr. */
typedef void (*tunnel_log_fn)(int level, const char *message, void *user_data);

TUNNEL_EXTERN const char *tunnel_log_level_name(int level);

/* ------------------------------------------------------- client events */

/* A client's connection to its server, step by step (the event callbacks
 * of tunnel/uv.h and tunnel/engine.h). Numbers are fixed. */
typedef enum tunnel_client_event {
  /* Opening the connection to the server (the first time or again). */
  TUNNEL_EVENT_CONNECTING = 1,
  /* Logged in; `message` is the run id. */
  TUNNEL_EVENT_LOGGED_IN = 2,
  /* The session ended, or an attempt failed before the login: `status`
   * says why, `message` adds the server's reason or the failing step. */
  TUNNEL_EVENT_LOST = 3,
  /* The next attempt comes in `delay_ms`. */
  TUNNEL_EVENT_RETRYING = 4,
  /* No more attempts: reconnection is off, or `status` will not get
   * better by retrying (TUNNEL_EAUTH, a certificate that failed), or the
   * attempts ran out (`status` is the last failure). */
  TUNNEL_EVENT_GAVE_UP = 5,
  /* A graceful shutdown began: no new visitors, proxies withdrawn. */
  TUNNEL_EVENT_DRAINING = 6
} tunnel_client_event;

TUNNEL_EXTERN const char *tunnel_client_event_name(int event);

/* ---------------------------------------------------------------- config */

/* Options shared by clients and servers (nghttp2_option style): create one,
 * set what you need, pass it to a constructor, which copies it. Setters that
 * do not apply to a role are ignored by that role. */
typedef struct tunnel_config tunnel_config;

TUNNEL_EXTERN int tunnel_config_new(tunnel_config **out);
TUNNEL_EXTERN void tunnel_config_free(tunnel_config *cfg);

/* All three functions or none (NULL restores libc). The config object itself
 * is allocated with libc; objects created from it use these functions. */
TUNNEL_EXTERN int tunnel_config_set_allocator(tunnel_config *cfg,
                                              tunnel_malloc_fn malloc_fn,
                                              tunnel_realloc_fn realloc_fn,
                                              tunnel_free_fn free_fn,
                                              void *user_data);
/* Default: no sink (silent). Messages above `max_level` are not formatted. */
TUNNEL_EXTERN int tunnel_config_set_log(tunnel_config *cfg, tunnel_log_fn fn,
                                        int max_level, void *user_data);

/* Limits. Every one is enforced against the peer; exceeding it is refused
 * (stream reset, message rejected) rather than buffered. */

/* Concurrent multiplexed streams per session (default 1024, 1..2^31). */
TUNNEL_EXTERN int tunnel_config_set_max_streams(tunnel_config *cfg,
                                                uint32_t n);
/* Per-stream receive window, bytes (default 6 MiB, 256 KiB..1 GiB). It bounds
 * what a stalled consumer can hold in memory. */
TUNNEL_EXTERN int tunnel_config_set_stream_window(tunnel_config *cfg,
                                                  uint32_t bytes);
/* Largest control message body accepted, bytes (default 10240, 64..1 MiB). */
TUNNEL_EXTERN int tunnel_config_set_max_message_size(tunnel_config *cfg,
                                                     uint32_t bytes);
/* Bytes a session may queue for its peer beyond flow-controlled data before
 * it is considered abusive and closed (default 1 MiB, 4 KiB..1 GiB). */
TUNNEL_EXTERN int tunnel_config_set_max_control_backlog(tunnel_config *cfg,
                                                        uint32_t bytes);

/* Shared secret for login (frp "token" authentication) and the key of the
 * control stream's encryption. NULL or "" means none (a server then admits
 * every client). Copied. */
TUNNEL_EXTERN int tunnel_config_set_token(tunnel_config *cfg,
                                          const char *token);

/* Client: work connections kept ready in advance (frp pool_count; default 1,
 * 0..100), so a visitor rarely waits for a round trip. */
TUNNEL_EXTERN int tunnel_config_set_pool_count(tunnel_config *cfg,
                                               uint32_t n);
/* Client: 1 (default) multiplexes everything over one connection (yamux);
 * 0 opens one TCP connection per work connection (frp tcp_mux = false). */
TUNNEL_EXTERN int tunnel_config_set_tcp_mux(tunnel_config *cfg, int enabled);
/* Seconds between the client's heartbeats on the control stream, and
 * seconds of silence after which a peer is declared dead: the client drops
 * a server, the server drops a client (defaults 30 and 90; 0 disables). */
TUNNEL_EXTERN int tunnel_config_set_heartbeat(tunnel_config *cfg,
                                              uint32_t interval_s,
                                              uint32_t timeout_s);
/* Client: dead-link detection. After `interval_ms` without a byte from the
 * server the client probes (a yamux ping, or frp's Ping without
 * multiplexing); after `timeout_ms` without one it declares the link dead
 * (TUNNEL_ETIMEDOUT) and, when reconnecting, connects again. Defaults 10,000
 * and 30,000 ms: a silently dead link is noticed within 30 s. 0 disables.
 * Independent of the frp heartbeats above, which servers expect. */
TUNNEL_EXTERN int tunnel_config_set_keepalive(tunnel_config *cfg,
                                              uint32_t interval_ms,
                                              uint32_t timeout_ms);

/* Client: reconnection. After a lost session or a failed attempt the
 * client connects again by itself, waiting a delay that starts at
 * `initial_ms` and doubles at each failure up to `max_ms`, each drawn at
 * random between half and all of it (so the clients of a restarted server
 * spread out); once a session has stayed up for 10 s the delay starts
 * over. Proxies register again with the ports and names they had (a port
 * the server chose is asked for again; if it stays taken for three tries,
 * the server chooses anew).
 * `max_attempts` failures in a row (0: no limit) end it, and so do a
 * refused login and a server certificate that fails verification: those
 * will not get better by themselves. Defaults: enabled, 500 ms, 30,000 ms,
 * no limit. `enabled` 0: off (the other values are then ignored); the
 * program reconnects itself. */
TUNNEL_EXTERN int tunnel_config_set_reconnect(tunnel_config *cfg, int enabled,
                                              uint32_t initial_ms,
                                              uint32_t max_ms,
                                              uint32_t max_attempts);

/* Server: address the public listeners bind to (default "0.0.0.0"). */
TUNNEL_EXTERN int tunnel_config_set_proxy_bind_addr(tunnel_config *cfg,
                                                    const char *host);
/* Server: public ports clients may request or be given (default
 * 1024..65535). */
TUNNEL_EXTERN int tunnel_config_set_port_range(tunnel_config *cfg,
                                               uint16_t lo, uint16_t hi);
/* Server: clients logged in at once (default 1024). Connections not yet
 * authenticated (identifying themselves, logging in, or refused and being
 * closed) are capped at the same number. */
TUNNEL_EXTERN int tunnel_config_set_max_clients(tunnel_config *cfg,
                                                uint32_t n);
/* Server: milliseconds a visitor may wait for a work connection before it
 * is dropped (default 10000). */
TUNNEL_EXTERN int tunnel_config_set_work_conn_timeout(tunnel_config *cfg,
                                                      uint32_t ms);

/* Server: public proxies one client may hold at once (default 128,
 * 1..65535). Each TCP proxy holds a listening socket. */
TUNNEL_EXTERN int tunnel_config_set_max_proxies(tunnel_config *cfg,
                                                uint32_t n);
/* Client: work connections (streams, or TCP connections in non-mux mode)
 * opened at the server's request and not yet joined to a visitor (default
 * 256, 1..65535). Requests beyond it are ignored with a log line, so a
 * hostile server cannot exhaust the client's sockets. */
TUNNEL_EXTERN int tunnel_config_set_max_work_conns(tunnel_config *cfg,
                                                   uint32_t n);
/* Client: milliseconds from the start of a connection attempt to the
 * server's LoginResp (default 15000, 100..600000). A server that accepts
 * and never answers ends the attempt with TUNNEL_ETIMEDOUT. */
TUNNEL_EXTERN int tunnel_config_set_login_timeout(tunnel_config *cfg,
                                                  uint32_t ms);

/* Server: what a peer that has not logged in yet can make the server hold.
 * `streams`: streams a multiplexed session may open before its login
 * (default 4, 1..1024). `per_addr`: unauthenticated connections from one
 * source address (default 128, 1..1048576). `bytes`: bytes buffered for
 * all unauthenticated peers together (default 16 MiB, 64 KiB..4 GiB-1).
 * At a limit the oldest unauthenticated connection (of that address, or
 * overall) is shed to make room, so a trickle of slow connections cannot
 * lock real clients out. */
TUNNEL_EXTERN int tunnel_config_set_unauth_limits(tunnel_config *cfg,
                                                  uint32_t streams,
                                                  uint32_t per_addr,
                                                  uint32_t bytes);
/* Flow-control window granted beyond each stream's first 256 KiB, summed
 * over a session's streams (default 64 MiB; clients and servers) and, on a
 * server, over all sessions (default 512 MiB); 1 MiB..4 GiB-1. Beyond them
 * streams run with the 256 KiB window, so stalled readers cannot make
 * memory grow; while the bytes actually received and not yet read exceed
 * a limit, new streams are refused. */
TUNNEL_EXTERN int tunnel_config_set_buffer_limits(tunnel_config *cfg,
                                                  uint32_t per_session,
                                                  uint32_t total);
/* Server: seconds a signed Login or NewWorkConn timestamp may differ from
 * the server's clock (default 900; 0 accepts any age, as frp once did). */
TUNNEL_EXTERN int tunnel_config_set_auth_max_skew(tunnel_config *cfg,
                                                  uint32_t seconds);
/* Server: each source address (IPv4 address, or IPv6 /64) may fail
 * `failures` logins per `window_ms` (a bucket of that many attempts that
 * refills at failures/window_ms); after that its logins are refused at
 * once, before any key check, until an attempt is earned back. Successful
 * logins cost nothing. Default 5 per 60000 ms; failures 0..1000000 (0: no
 * limit), window_ms 100..86400000, else TUNNEL_ERANGE. */
TUNNEL_EXTERN int tunnel_config_set_login_limits(tunnel_config *cfg,
                                                 uint32_t failures,
                                                 uint32_t window_ms);
/* Server: 1 refuses work connections that arrive on their own TCP
 * connection (frp's non-mux mode) without a privilege key; 0 (default)
 * accepts unsigned ones from the address the client's control connection
 * came from, as a stock frpc sends them. See docs/PROTOCOL.md. */
TUNNEL_EXTERN int tunnel_config_set_require_signed_work_conns(
    tunnel_config *cfg, int required);

/* Server: the domain under which HTTP/HTTPS proxies get subdomains
 * (NAME.DOMAIN; default "localhost", so NAME.localhost works on one
 * machine). Also the domain of the names picked for proxies that ask for
 * none. */
TUNNEL_EXTERN int tunnel_config_set_subdomain_host(tunnel_config *cfg,
                                                   const char *domain);
/* Server, public HTTP/HTTPS ports: the largest request head (or TLS
 * ClientHello) accepted, bytes (default 16384, 1024..1048576; larger heads
 * get 431); milliseconds a visitor may take to send it (default 10000,
 * 100..600000; a slow client cannot hold a slot); milliseconds a local
 * service may take to start answering a request (default 60000,
 * 100..3600000; then 504); and visitor connections open at once on those
 * ports (default 10000, 1..1048576). */
TUNNEL_EXTERN int tunnel_config_set_http_limits(tunnel_config *cfg,
                                                uint32_t max_head,
                                                uint32_t head_timeout_ms,
                                                uint32_t response_timeout_ms,
                                                uint32_t max_visitors);

/* ------------------------------------------------------------------- TLS */

/* Client: 1 runs the connection to the server over TLS, and in non-mux mode
 * every work connection too (default 0). The server's certificate is
 * verified: against the CA set with tunnel_config_set_tls_ca*() or else the
 * system bundle, with the host name checked; or by pin alone. Server: 1
 * accepts TLS on the control port, with the configured certificate or, when
 * none is set, a self-signed one generated at start (see
 * tunnel_server_tls_fingerprint()). A server with a certificate accepts TLS
 * whatever this flag says. */
TUNNEL_EXTERN int tunnel_config_set_tls(tunnel_config *cfg, int enabled);
/* Trust anchors, PEM (one or more certificates; copied). Client: the CAs
 * that may sign the server's certificate (default: the system bundle).
 * Server: clients must present a certificate signed by one of them. NULL
 * clears. The _file variant reads the file now (TUNNEL_ENOTFOUND, TUNNEL_EIO,
 * TUNNEL_ELIMIT beyond 1 MiB); the contents are checked when a client or
 * server is created from the config (TUNNEL_ETLS when unusable). */
TUNNEL_EXTERN int tunnel_config_set_tls_ca(tunnel_config *cfg,
                                           const uint8_t *pem, size_t len);
TUNNEL_EXTERN int tunnel_config_set_tls_ca_file(tunnel_config *cfg,
                                                const char *path);
/* This side's certificate chain and private key, PEM (copied; the key is
 * wiped from memory when released). Server: its certificate. Client: the
 * certificate presented to a server that requires one. NULL clears both. */
TUNNEL_EXTERN int tunnel_config_set_tls_cert(tunnel_config *cfg,
                                             const uint8_t *cert_pem,
                                             size_t cert_len,
                                             const uint8_t *key_pem,
                                             size_t key_len);
TUNNEL_EXTERN int tunnel_config_set_tls_cert_file(tunnel_config *cfg,
                                                  const char *cert_path,
                                                  const char *key_path);
/* Client: accept only a server whose certificate (DER) has this SHA-256
 * fingerprint: 64 hex digits, colons allowed, as printed by tunnel-server.
 * Replaces CA and name checks (trust on first setup). NULL clears;
 * TUNNEL_EINVAL when malformed. */
TUNNEL_EXTERN int tunnel_config_set_tls_pin(tunnel_config *cfg,
                                            const char *fingerprint);
/* Client: 1 accepts any server certificate. Anyone on the path can then
 * read and change the traffic: for tests only. Default 0. */
TUNNEL_EXTERN int tunnel_config_set_tls_insecure(tunnel_config *cfg,
                                                 int insecure);
/* Client: the name sent as SNI and checked against the certificate
 * (default: the host the client dials). NULL restores the default. */
TUNNEL_EXTERN int tunnel_config_set_tls_server_name(tunnel_config *cfg,
                                                    const char *name);
/* Client: 1 (default) sends frp's one-byte 0x17 marker before the TLS
 * handshake, which frps before 0.50 requires; libtunnel servers and later
 * frps accept both. Server: ignored (both are accepted). */
TUNNEL_EXTERN int tunnel_config_set_tls_marker(tunnel_config *cfg,
                                               int enabled);
/* Server: 1 refuses clients that do not speak TLS (default 0). */
TUNNEL_EXTERN int tunnel_config_set_tls_only(tunnel_config *cfg, int only);

#ifdef __cplusplus
}
#endif

#endif /* TUNNEL_TUNNEL_H */
