/* The libuv client's insides, shared by client.c (connections to the
 * server, the engine's callbacks, the client's life), client_proxy.c (the
 * proxy API and joining visitors to local services) and stream_eng.c (the
 * engine's streams as tunnel_stream). The protocol itself is the engine's
 * (lib/engine.c): this layer only moves bytes, keeps time and owns
 * sockets. */
#ifndef TUNNEL_LIB_UV_CLIENT_INT_H
#define TUNNEL_LIB_UV_CLIENT_INT_H

#include "tunnel/engine.h"
#include "tunnel/uv.h"

#include "../config.h"
#include "dial.h"
#include "link.h"
#include "sched.h"
#include "splice.h"
#include "stream.h"
#include "tlsconf.h"

#define TUNNEL__CLIENT_READBUF (64u * 1024u)
/* Visits to secret services waiting for a login, at once and for how
 * long. */
#define TUNNEL__CLIENT_VISIT_WAIT_MAX 256u
#define TUNNEL__CLIENT_VISIT_WAIT_MS 10000u
/* UDP visitors mapped at once per proxy (each holds a socket). */
#define TUNNEL__CLIENT_UDP_PEERS 1024u
#define TUNNEL__CLIENT_UDP_IDLE_MS 60000u

enum {
  TUNNEL__C_IDLE,
  TUNNEL__C_CONNECTING, /* the control connection is being opened */
  TUNNEL__C_LOGIN,      /* the engine runs, not yet logged in */
  TUNNEL__C_READY,
  TUNNEL__C_DOWN
};

typedef struct tunnel__cl_conn tunnel__cl_conn;
typedef struct tunnel__cl_join tunnel__cl_join;
typedef struct tunnel__cl_udp_peer tunnel__cl_udp_peer;
typedef struct tunnel__cl_visit tunnel__cl_visit;

struct tunnel_client {
  uv_loop_t *loop;
  struct tunnel_config cfg;
  tunnel__sched sched;
  tunnel_engine *eng;
  uv_timer_t timer;      /* the engine's deadlines */
  tunnel__task flush_task;
  tunnel__task connect_task; /* tunnel_client_connect, run from the loop */
  char *host;
  uint16_t port;
  int state;
  tunnel__cl_conn *conns;  /* connections to the server */
  tunnel__cl_join *joins;  /* visitors waiting for the local service */
  tunnel_proxy *proxies;
  /* Visits to secret services (client_visit.c): dialled by the program or
   * by a visitor's local connection. */
  tunnel__cl_visit *visits;
  uint32_t visits_waiting;        /* of them, waiting for a login */
  tunnel__cl_visit *visit_current; /* inside tunnel_engine_visit() */
  tunnel__task visit_task;        /* waiting visits go once logged in */
  tunnel_visitor *visitors;
  /* Non-mux visitors: whole connections, which no session end reaches. */
  tunnel__stream_list handed;
  tunnel_stream *blocked; /* engine streams waiting for output room */
  tunnel__splice_set splices;
  uint8_t *readbuf;
  tunnel_client_state_cb state_cb;
  void *state_ud;
  tunnel_client_event_cb event_cb;
  void *event_ud;
  char reason[256]; /* why the last session or attempt ended */
  /* tunnel_client_shutdown: the drain's end, then the close's callback. */
  uv_timer_t *drain_timer;
  uint64_t drain_deadline;
  tunnel_client_close_cb drain_cb;
  void *drain_ud;
  uint32_t handles; /* uv handles owned directly */
  uint32_t objects; /* connections and joins not yet freed */
  tunnel__tls_conf *tls; /* NULL: plain connections */
  int closing;
  tunnel_client_close_cb close_cb;
  void *close_ud;
};

struct tunnel_proxy {
  tunnel_client *c;
  tunnel_proxy *next;
  uint32_t id; /* the engine's */
  char *name;
  int type;
  char *local_host;
  uint16_t local_port;
  tunnel_proxy_status_cb status_cb;
  void *status_ud;
  tunnel_proxy_accept_cb accept_cb;
  void *accept_ud;
  int started;
  int has_secret; /* STCP */
  /* UDP: a socket per visitor address, closed after udp_idle_ms idle. */
  tunnel__cl_udp_peer *peers;
  uint32_t npeers;
  uint32_t udp_idle_ms;
  uint64_t udp_dropped;
  uint32_t udp_full_logged;
  uv_timer_t *udp_sweep;
};

static inline const tunnel__mem *tunnel__client_mem(tunnel_client *c) {
  return &c->cfg.mem;
}

/* client.c */

/* Sends what the engine has for the server at the end of this loop
 * iteration (frames of every stream leave together) and re-arms the
 * engine's deadline. */
void tunnel__client_flush_soon(tunnel_client *c);
/* Writes to engine stream `num` as far as its window allows (*done):
 * large writes straight to the socket when nothing is queued ahead. */
int tunnel__client_stream_send(tunnel_client *c, uint32_t num,
                               const uint8_t *data, size_t len, size_t *done);
/* Whether engine streams may hand the engine more bytes now; if not, `st`
 * waits and is pumped when room frees. */
int tunnel__client_has_room(const tunnel_client *c);
void tunnel__client_wait_room(tunnel_client *c, tunnel_stream *st);
void tunnel__client_unblock(tunnel_client *c, tunnel_stream *st);
void tunnel__client_maybe_finish_close(tunnel_client *c);

/* client_proxy.c */

tunnel_proxy *tunnel__client_proxy(tunnel_client *c, uint32_t id);
/* A visitor's stream for proxy `p`: joined to the local service or handed
 * to the program. Owns `st` from now on. */
void tunnel__client_visitor(tunnel_proxy *p, tunnel_stream *st);
/* The session ended: visitors still waiting for the local service go. */
void tunnel__client_joins_abort(tunnel_client *c);
void tunnel__client_proxies_free(tunnel_client *c);

/* client_udp.c */

/* A datagram from visitor ip:port for UDP proxy `p`. */
void tunnel__client_datagram(tunnel_proxy *p, const char *ip, uint16_t port,
                             const uint8_t *data, size_t len);
/* Closes the proxy's visitor sockets (and its timer when `all`: the proxy
 * goes). */
void tunnel__client_udp_close(tunnel_proxy *p, int all);

/* client_visit.c */

/* The engine's visit callback. Returns the visit when its connection must
 * be handed over (non-mux, success): the caller does it once the engine
 * call returns, then reports with tunnel__client_visit_opened() or
 * tunnel__client_visit_lost(). */
tunnel__cl_visit *tunnel__client_on_visit(tunnel_client *c, uint32_t stream,
                                          int status, const char *message);
void tunnel__client_visit_opened(tunnel__cl_visit *v, tunnel_stream *st);
void tunnel__client_visit_lost(tunnel__cl_visit *v, int status);
/* Logged in: visits waiting for it go (from the loop). */
void tunnel__client_visits_kick(tunnel_client *c);
/* Visits that waited too long for a login fail; returns the earlier of
 * `next` and the next such deadline. */
uint64_t tunnel__client_visits_tick(tunnel_client *c, uint64_t next);
/* The client closes: visits still waiting for a login fail, visitors
 * close. */
void tunnel__client_visits_abort(tunnel_client *c);
void tunnel__client_visitors_free(tunnel_client *c);

/* stream_eng.c */

/* Engine events for the stream (number `num`). */
void tunnel__stream_eng_data(tunnel_stream *st, const uint8_t *data,
                             size_t len);
void tunnel__stream_eng_end(tunnel_stream *st, int status);
/* Moves queued bytes into the engine as far as window and room allow. */
void tunnel__stream_eng_pump(tunnel_stream *st);

#endif
