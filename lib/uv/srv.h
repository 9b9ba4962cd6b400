/* The inside of tunnel_server, shared by its parts: accepting connections
 * (srv_accept.c), sessions, logins and work connections (srv_session.c),
 * proxy registration (srv_proxy.c), and one file per proxy kind
 * (srv_tcp.c, ...) behind the srv_kind interface. */
#ifndef TUNNEL_LIB_UV_SRV_H
#define TUNNEL_LIB_UV_SRV_H

#include "tunnel/uv.h"

#include "../config.h"
#include "../log.h"
#include "../msg.h"
#include "../ratelimit.h"
#include "../tls.h"
#include "../yamux.h"
#include "anon.h"
#include "ctlchan.h"
#include "mux.h"
#include "sched.h"
#include "splice.h"

/* A connection must identify itself, and a session or channel log in or
 * say what it is, within this time. */
#define TUNNEL__SRV_SNIFF_TIMEOUT_MS 10000
#define TUNNEL__SRV_READBUF_SIZE (64u * 1024u)
/* Control addresses one server listens on (IPv4 and IPv6, say). */
#define TUNNEL__SRV_MAX_LISTENERS 4
/* What an unauthenticated peer costs, for the byte budget: a sniffing
 * connection its record; a raw channel its read buffer and a first
 * message; a session its read buffer and its allowed first streams
 * (srv_accept.c). */
#define TUNNEL__SRV_ANON_CONN_COST 1024u
#define TUNNEL__SRV_ANON_RAW_COST (64u * 1024u + TUNNEL__DEFAULT_MAX_MESSAGE)
/* A TLS connection in its handshake: the link's buffers and mbedTLS's
 * records and handshake state. */
#define TUNNEL__SRV_ANON_TLS_COST (160u * 1024u)

typedef struct srv_sess srv_sess;
typedef struct srv_ctl srv_ctl;
typedef struct srv_proxy srv_proxy;
typedef struct srv_first srv_first;
typedef struct srv_conn srv_conn;
typedef struct srv_drain srv_drain;
typedef struct srv_work srv_work;
typedef struct srv_waiter srv_waiter;
typedef struct srv_vhost srv_vhost;
typedef struct srv_vconn srv_vconn;
typedef struct srv_metrics srv_metrics;
typedef struct srv_wait srv_wait;
typedef struct srv_pair srv_pair;

/* A visitor connection on a public HTTP/HTTPS port. */
struct srv_vconn {
  srv_vhost *vh;
  srv_vconn *prev, *next;
  /* Closes the connection now (server closing). */
  void (*close)(srv_vconn *c);
  /* `p` is going away: forget it, and close if waiting on it. */
  void (*proxy_gone)(srv_vconn *c, srv_proxy *p);
  /* The server drains: close now unless a request is under way, which
   * then ends the connection when done. NULL: close now. */
  void (*drain)(srv_vconn *c);
};

/* A public HTTP or HTTPS port shared by every client's proxies of that
 * kind, and the names routed through it (srv_vhost.c). */
struct srv_vhost {
  tunnel_server *srv;
  int https;
  uv_tcp_t listener;
  int listening;
  uint16_t port;
  struct tunnel__router *router;
  srv_vconn *conns; /* visitor connections */
  uint32_t nconns;
};

struct tunnel_server {
  uv_loop_t *loop;
  struct tunnel_config cfg;
  tunnel__sched sched;
  uv_tcp_t *listeners[TUNNEL__SRV_MAX_LISTENERS];
  int listening; /* listeners in use */
  uv_timer_t sweep; /* drops clients that went silent */
  uint8_t *readbuf; /* shared by all splices */
  srv_sess *sessions;
  srv_conn *conns; /* connections not yet identified */
  uint32_t nconns;
  /* Peers not (yet) authenticated: sniffing connections, raw first-message
   * channels, refused raw channels draining, and mux sessions without a
   * login. Bounded by count (max_clients), per address and by bytes. */
  tunnel__anon_set anon;
  tunnel__anon_limits anon_limits;
  /* Bytes the server may be made to hold for all sessions' streams. */
  tunnel__ymx_budget budget;
  srv_vhost http, https;
  srv_drain *drains; /* refused channels, until the peer reads the refusal
                        and closes, or a deadline */
  srv_first *firsts; /* streams awaiting their first message */
  srv_ctl *ctls;
  uint32_t nctl;
  tunnel__ratelimit *logins; /* failed logins per source address */
  tunnel__tls_conf *tls;     /* NULL: plain clients only */
  uint64_t accept_warned;    /* loop time of the last failed-accept line */
  uint32_t handles;            /* open uv handles owned by server objects */
  tunnel__splice_set splices;  /* live splices */
  uint32_t npairs;             /* live stream-to-stream joins (srv_stcp.c) */
  uint32_t objects;            /* sessions, controls, proxies not yet freed */
  int closing;
  tunnel_server_close_cb close_cb;
  void *close_ud;
  /* tunnel_server_shutdown: nothing new is accepted while what is under
   * way runs on, until it has all ended or the deadline (drain_timer);
   * then the server closes, and calls drain_cb after close_cb. */
  int draining;
  uv_timer_t drain_timer;
  tunnel_server_close_cb drain_cb;
  void *drain_ud;
  /* Counters of tunnel_server_stat (the gauges are computed when read),
   * and the byte and open-visitor totals of every proxy. */
  uint64_t stats[TUNNEL_SERVER_STAT_COUNT_];
  tunnel__traffic traffic;
  uint64_t started_ms; /* loop time at creation */
  srv_metrics *metrics; /* srv_metrics.c; NULL when not listening */
};

#define TUNNEL__SRV_COUNT(srv, id) ((srv)->stats[TUNNEL_SERVER_STAT_##id]++)

/* A multiplexed connection from a client. */
struct srv_sess {
  tunnel_server *srv;
  tunnel__mux *mux;
  int authed; /* a client logged in over it (it left srv->anon) */
  tunnel__anon anon;
  char addr[TUNNEL__ADDR_MAX];
  uint32_t nfirst; /* streams opened before the login */
  uint64_t created; /* loop time; a session must log in within a limit */
  srv_sess *prev, *next;
  srv_ctl *ctl; /* the client that logged in over this session */
  int dead;
  tunnel__task free_task;
};

/* A stream (mux) or connection (raw) whose first message decides what it
 * is. */
struct srv_first {
  tunnel_server *srv;
  srv_sess *sess; /* NULL: a whole TCP connection (non-mux) */
  tunnel_stream *st;
  tunnel__anon anon; /* raw connections only */
  char addr[TUNNEL__ADDR_MAX];
  tunnel__ctlchan ch;
  srv_first *prev, *next;
  uint64_t created;
};

/* A new connection, until its first bytes tell yamux from a raw frp
 * message. */
struct srv_conn {
  tunnel_server *srv;
  uv_tcp_t *tcp;
  struct tunnel__link *link; /* TLS: handshake, then the first bytes */
  uv_timer_t timer;
  srv_conn *prev, *next;
  tunnel__anon anon;
  uint8_t buf[256];
  int done;
};

/* A refused channel: kept until the peer ends it, so that what was written
 * to it (a refusal) is delivered before any reset, but no longer than the
 * identification timeout, and closed with the server. */
struct srv_drain {
  tunnel_server *srv;
  tunnel_stream *st;
  srv_drain *prev, *next;
  uint64_t created;
  tunnel__anon anon; /* raw connections only */
};

/* A parked work stream. */
struct srv_work {
  srv_ctl *ctl;
  tunnel_stream *st;
  srv_work *next;
};

/* Something of a proxy's (a visitor) waiting for a work stream. */
struct srv_waiter {
  srv_waiter *next;
  srv_proxy *proxy;
  /* A work stream for it; the callee owns `st`. The waiter has left the
   * queue. */
  void (*got)(srv_waiter *w, tunnel_stream *st);
  /* No work stream will come (client or proxy gone); the waiter has left
   * the queue. */
  void (*drop)(srv_waiter *w);
};

/* A visitor connection waiting, for at most work_conn_timeout, for a work
 * stream of its proxy's client (srv_tcp.c): shared by the kinds whose
 * visitors are whole connections. It must be the first member of the
 * kind's record, which is allocated with the server's allocator and freed
 * by the wait once it is over. */
struct srv_wait {
  srv_waiter w;
  uv_timer_t timer;
  srv_wait **list; /* the proxy's waiting visitors */
  srv_wait *prev, *next;
  /* A work stream came; the callee owns it. The wait is over (the record
   * stays valid for the call). */
  void (*got)(srv_wait *v, tunnel_stream *st);
  /* No work stream will come (timeout, too many waiting, client or proxy
   * gone): closes the visitor's connection. The wait ends after it. */
  void (*drop)(srv_wait *v);
};

/* A logged-in client. */
struct srv_ctl {
  tunnel_server *srv;
  srv_sess *sess; /* NULL in non-mux mode */
  srv_ctl *prev, *next;
  tunnel_stream *st;
  tunnel__ctlchan ch;
  char run_id[33];
  char addr[TUNNEL__ADDR_MAX]; /* where the control connection came from */
  int64_t login_ts;   /* timestamp of the login that made this control */
  uint64_t since_ms;  /* loop time of the login */
  int64_t since_unix; /* and the server's wall clock then */
  char version[33];   /* what the client said it runs */
  uint32_t requested; /* work connections asked for and not yet arrived */
  srv_proxy *proxies;
  uint32_t nproxies;
  srv_work *pool; /* oldest first */
  srv_work *pool_tail;
  uint32_t pooled;
  uint32_t pool_count;
  srv_waiter *waiting; /* oldest first */
  srv_waiter *waiting_tail;
  uint32_t nwaiting;
  uint64_t last_msg; /* loop time of the last control message */
  /* Visitors joined to this client's work streams or connections: they end
   * with the client, in non-mux mode too. The record is freed once the
   * last one is gone. */
  tunnel__splice_set splices;
  /* Secret-service visitors joined stream to stream to its work streams
   * (srv_stcp.c): aborted with the client, then no longer listed. */
  srv_pair *pairs;
  int dead;
  int free_due; /* destroyed; waiting for its splices */
  tunnel__task free_task;
};

/* One kind of proxy (frp proxy_type): how it is registered and ended. */
typedef struct srv_kind {
  const char *type;
  /* Registers `p` as `m` asks (p->name and p->ctl are set). 0 and
   * `remote_addr` filled, or a negative code and `err` filled (the proxy
   * is then freed by the caller, with nothing of the kind's left). */
  int (*open)(srv_proxy *p, const tunnel__msg *m, char *remote_addr,
              size_t ralen, char *err, size_t errlen);
  /* Unregisters: no new visitor, waiting ones dropped, visitors already
   * joined continue. Ends with tunnel__srv_proxy_free(p), now or later. */
  void (*close)(srv_proxy *p);
} srv_kind;

struct srv_proxy {
  tunnel_server *srv; /* the ctl may be freed before the proxy */
  srv_ctl *ctl;
  srv_proxy *next;
  const srv_kind *kind;
  char *name;
  void *kind_data;
  /* What its visitors moved, shared with their joins (which may outlive
   * the proxy); what the client was told; when. */
  tunnel__traffic *traffic;
  uint64_t visitors_total;
  char *public_addr;
  uint64_t since_ms;
  int64_t since_unix;
};

#define TUNNEL__CONTAINER(ptr, type, field)                                    \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

/* server.c */
static inline const tunnel__mem *tunnel__srv_mem(tunnel_server *srv) {
  return &srv->cfg.mem;
}
/* Frees the server once closing and everything has gone; while it
 * drains, closes it (from the loop) once nothing is under way. Called
 * whenever something of the server ends. */
void tunnel__srv_maybe_finish_close(tunnel_server *srv);
/* Close callback for a uv_tcp_t allocated with the server's allocator
 * whose data is the server; counts in srv->handles. */
void tunnel__srv_free_tcp_closed(uv_handle_t *h);
/* Writes one unencrypted message to a stream. */
int tunnel__srv_send_plain(tunnel_server *srv, tunnel_stream *st,
                           const tunnel__msg *m);

/* srv_accept.c */
void tunnel__srv_on_client(uv_stream_t *l, int status);
/* A listener could not accept (out of descriptors or memory): libuv has
 * already refused the waiting connections; this says so, at most once a
 * second. `what` names the listener. */
void tunnel__srv_accept_failed(tunnel_server *srv, int status,
                               const char *what);
void tunnel__srv_conn_done(srv_conn *c, int keep_tcp);

/* srv_session.c */
void tunnel__srv_sess_destroy(srv_sess *sess);
/* Keeps a channel that was answered and half-closed until its peer closes
 * it (the answer arrives before any reset), at most the identification
 * timeout; a connection of its own counts as unauthenticated meanwhile. */
void tunnel__srv_drain_start(tunnel_server *srv, tunnel_stream *st,
                             const char *addr);
/* Failed attempts per address, shared by logins and secret-service
 * visitors (srv->logins). The seconds `addr` must wait before it may try
 * again, 0 when it may now; a refusal logs one line per window for the
 * address, naming `what` ("login", ...). */
uint32_t tunnel__srv_blocked_for(tunnel_server *srv, const char *addr,
                                 const char *what);
/* An attempt from `addr` failed its key check: it takes one of the
 * address's attempts. */
void tunnel__srv_count_failure(tunnel_server *srv, const char *addr);
/* The server's wall clock, Unix seconds (0 if unknown). */
int64_t tunnel__srv_now_seconds(void);
void tunnel__srv_first_start(tunnel_server *srv, srv_sess *sess,
                             tunnel_stream *st, const char *addr);
void tunnel__srv_first_end(srv_first *f);
void tunnel__srv_drain_end(srv_drain *d);
void tunnel__srv_ctl_destroy(srv_ctl *ctl);
/* The server drains: the client's proxies close (joined visitors run on),
 * its parked work streams go, and a multiplexing client is told (GoAway)
 * to open no more streams. Its control channel stays until the close. */
void tunnel__srv_ctl_drain(srv_ctl *ctl);
/* Creates srv->logins from the configuration, with a random seed. */
int tunnel__srv_logins_init(tunnel_server *srv);
/* Sends a control message; a client that does not read its replies is
 * dropped (TUNNEL_ELIMIT). */
int tunnel__srv_send_ctl(srv_ctl *ctl, const tunnel__msg *m);
extern const tunnel__mux_callbacks tunnel__srv_mux_cb;
/* Hands `w` a work stream now (its got() runs before this returns) or
 * queues it and asks the client for one. TUNNEL_ELIMIT when too many
 * wait. */
int tunnel__srv_want_work(srv_ctl *ctl, srv_waiter *w);
/* Takes `w` out of the queue (no callback). */
void tunnel__srv_cancel_work(srv_ctl *ctl, srv_waiter *w);
/* Joins a visitor's connection to a work stream of `ctl`'s (both owned by
 * the join from now on): see tunnel__splice_start. `ctl` NULL: a join
 * tied to no client (it ends with the server). Bytes are counted in `tr`
 * (a proxy's; may be NULL). `key`: the work stream is encrypted (frp's
 * use_encryption, keyed by the token); NULL: plain. */
void tunnel__srv_join(tunnel_server *srv, srv_ctl *ctl, uv_tcp_t *tcp,
                      tunnel_stream *st, const uint8_t *prefix,
                      size_t prefix_len, tunnel__traffic *tr,
                      const uint8_t *key);

/* srv_proxy.c */
void tunnel__srv_on_new_proxy(srv_ctl *ctl, const tunnel__msg *m);
void tunnel__srv_on_close_proxy(srv_ctl *ctl, const tunnel__msg *m);
/* Closes every proxy of the client. */
void tunnel__srv_close_proxies(srv_ctl *ctl);
/* Frees a proxy whose kind has finished with it. */
void tunnel__srv_proxy_free(srv_proxy *p);
/* Sends StartWorkConn for `p` on a work stream. */
int tunnel__srv_start_work(srv_proxy *p, tunnel_stream *st, const char *src,
                           uint16_t src_port, const char *dst,
                           uint16_t dst_port);

/* srv_vhost.c */
void tunnel__srv_vhost_init(tunnel_server *srv, srv_vhost *vh, int https);
int tunnel__srv_vhost_listen(srv_vhost *vh, const char *host, uint16_t port);
/* Closes the listener and every visitor connection. */
void tunnel__srv_vhost_close(srv_vhost *vh);
/* Closes the listener and drains every visitor connection (see
 * srv_vconn.drain). */
void tunnel__srv_vhost_drain(srv_vhost *vh);
/* Registers the names `m` asks for (subdomain, custom domains, HTTP
 * locations; an unguessable subdomain when it asks for none) to `p`. Fills
 * `remote_addr` with "NAME[:PORT],..." or `err`. All or nothing. */
int tunnel__srv_vhost_register(srv_vhost *vh, srv_proxy *p,
                               const tunnel__msg *m, char *remote_addr,
                               size_t ralen, char *err, size_t errlen);
/* Forgets `p`'s names and drops its visitors still waiting for work. */
void tunnel__srv_vhost_unregister(srv_vhost *vh, srv_proxy *p);
/* Counts a visitor connection in (0) or refuses it (TUNNEL_ELIMIT). */
int tunnel__srv_vconn_add(srv_vhost *vh, srv_vconn *c);
void tunnel__srv_vconn_remove(srv_vconn *c);
/* Looks a name up; NULL when nothing is routed there. */
srv_proxy *tunnel__srv_vhost_route(srv_vhost *vh, const char *host,
                                   size_t host_len, const char *path,
                                   size_t path_len);

/* srv_metrics.c: closes the metrics listener and its connections. */
void tunnel__srv_metrics_close(tunnel_server *srv);

/* srv_tcp.c: waits for a work stream of `p`'s client for `v` (got and
 * drop set), listed in `list` meanwhile. got() may run before this
 * returns; drop() runs (now or later) if no stream comes. */
void tunnel__srv_wait_start(srv_proxy *p, srv_wait *v, srv_wait **list);
/* Drops every visitor of `list` (its proxy closes). */
void tunnel__srv_wait_drop_all(srv_proxy *p, srv_wait **list);

/* srv_stcp.c: a channel's first message is NewVisitorConn. `sess` is the
 * stream's session (NULL: a connection of its own). Joins the channel to
 * a work stream of the named secret service, or answers why not and ends
 * it. */
void tunnel__srv_on_new_visitor(tunnel_server *srv, srv_sess *sess,
                                tunnel_stream *st, const char *addr,
                                const tunnel__msg *m);
/* Ends every visitor joined to `ctl`'s work streams by srv_stcp.c (the
 * client is gone). */
void tunnel__srv_pairs_abort(srv_ctl *ctl);

/* Proxy kinds. */
extern const srv_kind tunnel__srv_kind_tcp;
extern const srv_kind tunnel__srv_kind_http;
extern const srv_kind tunnel__srv_kind_https;
extern const srv_kind tunnel__srv_kind_udp;
extern const srv_kind tunnel__srv_kind_stcp;
/* Binds a proxy's public port: `wanted`, or (0) random probes over the
 * configured range; `try_port` binds one. On failure `err` says why for
 * the client. */
int tunnel__srv_pick_port(const struct tunnel_config *cfg, int64_t wanted,
                          int (*try_port)(void *ud, uint16_t port), void *ud,
                          char *err, size_t errlen);

/* srv_udp.c: what a UDP proxy moved, in datagrams (its bytes count in the
 * proxy's traffic like a TCP proxy's). */
typedef struct tunnel__srv_udp_stats {
  uint64_t datagrams_in;  /* from visitors, queued to the client */
  uint64_t datagrams_out; /* from the client, sent to visitors */
  uint64_t dropped_in;    /* from visitors: no work stream, its queue full,
                             truncated, or out of memory */
  uint64_t dropped_out;   /* from the client: malformed, bad address, or
                             the socket could not take it */
  uint64_t work_streams;  /* work streams it has had */
} tunnel__srv_udp_stats;
/* Copies `p`'s counters; TUNNEL_EINVAL when `p` is not a UDP proxy. */
int tunnel__srv_udp_stats_get(const srv_proxy *p, tunnel__srv_udp_stats *out);
/* srv_http.c / srv_https.c: a visitor arrived on the public port. */
void tunnel__srv_http_accept(srv_vhost *vh, uv_tcp_t *tcp);
void tunnel__srv_https_accept(srv_vhost *vh, uv_tcp_t *tcp);

#endif
