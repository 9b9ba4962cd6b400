/* The client protocol engine's internals, shared by lib/engine.c (the API,
 * sessions, login, control messages, heartbeats) and lib/engine_stream.c
 * (streams, work channels, the yamux glue, connections without
 * multiplexing). */
#ifndef TUNNEL_ENGINE_INT_H
#define TUNNEL_ENGINE_INT_H

#include "tunnel/engine.h"

#include "config.h"
#include "ctlcodec.h"
#include "crypto.h"
#include "msg.h"
#include "yamux.h"

/* frp's run ids are 16 hex digits; a longer one is not a run id. */
#define TUNNEL__ENG_RUN_ID_MAX 64
/* Queue chunks: small for control bytes (an idle engine stays small),
 * larger appends get a chunk of their own size anyway. */
#define TUNNEL__ENG_CTL_CHUNK 256
#define TUNNEL__ENG_CONN_CHUNK 1024

enum {
  TUNNEL__E_IDLE,
  TUNNEL__E_CONNECTING, /* connection 1 asked of the program */
  TUNNEL__E_LOGIN,
  TUNNEL__E_READY,
  TUNNEL__E_WAIT, /* the next attempt is due at retry_at */
  TUNNEL__E_DOWN  /* no session and none coming by itself */
};

/* A session up this long was stable: the reconnection delay starts over. */
#define TUNNEL__ENG_STABLE_MS 10000u

enum {
  TUNNEL__ST_CONNECTING, /* non-mux: the program is opening the connection */
  TUNNEL__ST_WORK,       /* NewWorkConn sent, waiting for StartWorkConn */
  TUNNEL__ST_OPEN,       /* a visitor's stream, the program's */
  TUNNEL__ST_DRAIN,      /* non-mux: finished, its last bytes not yet sent */
  TUNNEL__ST_DGRAM,      /* a UDP proxy's channel of UDPPackets */
  /* The program's visit to a secret service (engine_visit.c): */
  TUNNEL__ST_VCONNECTING, /* non-mux: connection asked, message queued */
  TUNNEL__ST_VISIT        /* NewVisitorConn sent, waiting for the answer */
};

typedef struct tunnel__eng_proxy {
  struct tunnel__eng_proxy *next;
  uint32_t id;
  int32_t type;
  uint16_t remote_port;
  uint8_t sent; /* NewProxy queued in the running session */
  uint8_t held; /* not registered until released (tunnel__engine_proxy_hold) */
  uint8_t withdrawn; /* drained: closed on the server, never registered again */
  uint8_t accepted;  /* the server accepted it once: a refusal is retried */
  uint64_t retry_at; /* refused after a reconnection: asked again then */
  uint32_t retry_ms; /* the delay that led to retry_at */
  /* TCP/UDP without a port of its own: the one the server chose, asked
   * for again after a reconnection so the public address stays. */
  uint16_t chosen_port;
  uint8_t chosen_refusals;
  uint32_t dgram; /* UDP: the stream number of its channel, 0: none */
  char *name;
  /* HTTP/HTTPS options, kept as the NewProxy fields they travel in. */
  tunnel__msg opts;
} tunnel__eng_proxy;

typedef struct tunnel__eng_session tunnel__eng_session;

typedef struct tunnel__eng_stream {
  /* The session's list, newest first: the order streams end in when the
   * session goes down. */
  struct tunnel__eng_stream *next, *prev;
  tunnel__eng_session *s;
  uint32_t num; /* the program's stream number; non-mux: connection too */
  uint32_t id;  /* yamux stream id (mux mode) */
  uint8_t state;
  uint8_t local_fin;
  uint8_t remote_fin;
  uint8_t ymx_gone;      /* the yamux session forgot the stream */
  uint8_t want_writable; /* non-mux: a write was cut short */
  void *user;            /* tunnel__engine_stream_set_user */
  uint32_t proxy;        /* ST_DGRAM: the proxy it carries */
  uint64_t next_ping;    /* ST_DGRAM; ST_VCONNECTING/ST_VISIT: deadline */
  tunnel__msg_reader reader; /* ST_WORK, ST_VISIT: the first message */
  tunnel__bufq out;          /* non-mux: bytes for the connection */
} tunnel__eng_stream;

/* Streams by number: open addressing with linear probing, sized to a power
 * of two and kept at most half full, so a program naming one of thousands
 * of streams finds it in a probe or two. */
typedef struct tunnel__eng_table {
  tunnel__eng_stream **slot; /* NULL: empty */
  uint32_t cap;              /* 0 or a power of two */
  uint32_t count;
} tunnel__eng_table;

struct tunnel__eng_session {
  tunnel_engine *e;
  tunnel__eng_session *next_dead;
  int dead;
  int err; /* why it ended */
  int mux;
  tunnel__ymx *ymx;
  uint32_t ctl_id;
  tunnel__ctlcodec ctl;
  /* Mux: control bytes waiting for window. Non-mux: connection 1's
   * output. */
  tunnel__bufq ctl_out;
  tunnel__eng_stream *streams;
  tunnel__eng_table table;
  uint32_t nworks; /* work channels waiting for a visitor */
  uint32_t nvisits; /* the program's visits waiting for their answer */
};

struct tunnel_engine {
  struct tunnel_config cfg;
  void *ud;
  tunnel_engine_state_cb state_cb;
  tunnel_engine_proxy_cb proxy_cb;
  tunnel_engine_stream_open_cb open_cb;
  tunnel_engine_stream_data_cb data_cb;
  tunnel_engine_stream_end_cb end_cb;
  tunnel_engine_stream_writable_cb writable_cb;
  tunnel_engine_connect_cb connect_cb;
  tunnel_engine_disconnect_cb disconnect_cb;
  tunnel_engine_random_cb random_cb;
  tunnel_engine_time_cb time_cb;
  tunnel_engine_datagram_cb dgram_cb;
  tunnel_engine_event_cb event_cb;
  tunnel_engine_visit_cb visit_cb;
  tunnel__eng_proxy *proxies;
  uint32_t next_proxy;
  uint32_t next_num;
  int state;
  tunnel__eng_session *s;    /* the running session */
  tunnel__eng_session *dead; /* ended, freed when no call is under way */
  unsigned depth;            /* engine calls under way (callbacks re-enter) */
  /* The stream whose end callback runs after it was freed. */
  uint32_t ending_num;
  void *ending_user;
  uint64_t now;
  uint64_t login_deadline;
  uint64_t last_heard;
  uint64_t last_rx;    /* any byte on connection 1 */
  uint64_t next_probe; /* keepalive */
  uint64_t next_ping;
  /* Reconnection (lib/engine_life.c). */
  uint64_t connect_deadline; /* TUNNEL__E_CONNECTING */
  uint64_t retry_at;         /* TUNNEL__E_WAIT */
  uint64_t up_since;         /* when the running session logged in */
  uint32_t failures;         /* attempts in a row that did not log in */
  uint32_t delay_ceiling;    /* of the next delay; 0: the initial one */
  uint8_t halted;            /* the program stopped it: no reconnection */
  uint8_t draining;          /* no new visitors, proxies withdrawn */
  /* Sent in Login; NULL: left out. */
  char *hostname;
  char *os;
  char *arch;
  uint8_t key[TUNNEL__FRP_KEY_SIZE];
  char run_id[TUNNEL__ENG_RUN_ID_MAX + 1];
};

static inline const tunnel__mem *tunnel__eng_mem(const tunnel_engine *e) {
  return &e->cfg.mem;
}

/* A connection number the engine handed out (and may since have finished
 * with). */
static inline int tunnel__eng_known_conn(const tunnel_engine *e,
                                         uint32_t conn) {
  return conn >= 2 && conn < e->next_num;
}

/* engine.c */

/* Engine calls nest through callbacks; sessions that ended are freed when
 * the outermost returns. */
void tunnel__eng_enter(tunnel_engine *e);
void tunnel__eng_leave(tunnel_engine *e);
void tunnel__eng_session_down(tunnel__eng_session *s, int err,
                              const char *why);
void tunnel__eng_flush_ctl(tunnel__eng_session *s);
/* Starts a session on a connected connection 1 (login queued). */
int tunnel__eng_session_start(tunnel_engine *e, uint64_t now_ms);

/* engine_life.c: the connection's life. */
void tunnel__eng_event(tunnel_engine *e, int32_t event, int32_t status,
                       uint32_t delay_ms, const char *message);
/* A session ended or an attempt failed, after the state callback: connect
 * again later, or give up. `was_up`: it had logged in. */
void tunnel__eng_lost(tunnel_engine *e, int err, const char *why,
                      int was_up);
/* Connection 1 failed while the engine waited for it. */
void tunnel__eng_attempt_failed(tunnel_engine *e, int err, const char *why);
/* Runs what is due (an attempt's deadline, the next attempt, proxies to
 * ask for again); returns the earliest of `next` and its own deadlines. */
uint64_t tunnel__eng_life_tick(tunnel_engine *e, uint64_t next);
/* The server refused proxy `p`: 1 when the engine asks again later. */
int tunnel__eng_proxy_refused(tunnel_engine *e, tunnel__eng_proxy *p);
void tunnel__eng_ctl_input(tunnel__eng_session *s, const uint8_t *data,
                           size_t len);
/* Queues a control message; failing to ends the session. */
int tunnel__eng_send_ctl(tunnel__eng_session *s, const tunnel__msg *m);
/* md5hex(secret ‖ timestamp) into *key, the time callback's timestamp
 * into *ts: how Login, NewWorkConn, Ping and NewVisitorConn are signed. */
int tunnel__eng_sign(tunnel_engine *e, const char *secret, int64_t *ts,
                     char **key);

/* engine_proxy.c */

tunnel__eng_proxy *tunnel__eng_proxy_by_name(tunnel_engine *e,
                                             const char *name);
void tunnel__eng_proxy_free(tunnel_engine *e, tunnel__eng_proxy *p);
/* Tells the server to forget `p` (CloseProxy); a failure ends `s`. */
int tunnel__eng_send_close_proxy(tunnel__eng_session *s, tunnel__eng_proxy *p);
tunnel__eng_proxy *tunnel__eng_proxy_by_id(tunnel_engine *e, uint32_t id);

/* engine_dgram.c */

/* A UDP proxy's work channel started (StartWorkConn). */
void tunnel__eng_dgram_start(tunnel__eng_stream *st, tunnel__eng_proxy *p);
void tunnel__eng_dgram_input(tunnel__eng_stream *st, const uint8_t *data,
                             size_t len);
/* Pings due channels; returns the earlier of `next` and the next ping. */
uint64_t tunnel__eng_dgram_tick(tunnel__eng_session *s, uint64_t next);
/* NewWorkConn, appended to `out`. */
int tunnel__eng_encode_work_conn(tunnel_engine *e, tunnel__bufq *out);

/* engine_stream.c */

extern const tunnel__ymx_callbacks tunnel__eng_ymx_cb;
tunnel__eng_stream *tunnel__eng_find_stream(tunnel__eng_session *s,
                                            uint32_t num);
/* Frees every stream of a session that is going away; no callback. */
void tunnel__eng_streams_free(tunnel__eng_session *s);
/* Ends a channel the engine no longer wants (mux: reset; non-mux: handed
 * back to the program through the disconnect callback). */
void tunnel__eng_stream_discard(tunnel__eng_stream *st);
/* The server asked for a work channel. */
void tunnel__eng_new_work(tunnel__eng_session *s);
/* Non-mux connections other than the control one. */
int tunnel__eng_conn_recv(tunnel__eng_session *s, uint32_t conn,
                          const uint8_t *data, size_t len);
size_t tunnel__eng_conn_send(tunnel__eng_session *s, uint32_t conn,
                             uint8_t *buf, size_t cap);
/* The output queue of a connection (NULL: none), and taking bytes off it
 * once they left. */
tunnel__bufq *tunnel__eng_conn_queue(tunnel__eng_session *s, uint32_t conn);
void tunnel__eng_conn_consume(tunnel__eng_session *s, uint32_t conn,
                              size_t n);
/* The lowest connection above `after` and below `best` with bytes to send,
 * else `best`. */
uint32_t tunnel__eng_conn_next(tunnel__eng_session *s, uint32_t after,
                               uint32_t best);
/* Copies up to `cap` queued bytes into `buf`. */
size_t tunnel__eng_copy_out(tunnel__bufq *q, uint8_t *buf, size_t cap);
/* A new stream of the session (numbered, in the table; state 0), or NULL
 * when out of memory. */
tunnel__eng_stream *tunnel__eng_stream_new(tunnel__eng_session *s);
/* Forgets a stream: no callback, nothing sent. */
void tunnel__eng_stream_drop(tunnel__eng_stream *st);
/* Bytes for the program's data callback on an open stream. */
void tunnel__eng_deliver(tunnel__eng_stream *st, const uint8_t *data,
                         size_t len);
/* Mux: opens the yamux stream of `st` and writes `q` on it (a channel's
 * first message). On failure the stream is gone (reset if it was opened,
 * no callback). */
int tunnel__eng_open_send(tunnel__eng_stream *st, tunnel__bufq *q);
/* The callback of a stream that is gone, its user pointer still found by
 * number meanwhile: the end callback, or with `visit_msg` the visit
 * callback. */
void tunnel__eng_gone(tunnel_engine *e, uint32_t num, void *user,
                      int status, const char *visit_msg);

/* engine_visit.c: the program's visits to secret services. */

static inline int tunnel__eng_visiting(const tunnel__eng_stream *st) {
  return st->state == TUNNEL__ST_VCONNECTING ||
         st->state == TUNNEL__ST_VISIT;
}
/* The answer to a visit arrived (`m`, any type); `rest` followed it. */
void tunnel__eng_visit_answered(tunnel__eng_stream *st, const tunnel__msg *m,
                                const uint8_t *rest, size_t rest_len);
/* The visit ended before its answer: the stream goes (`discard`: as an
 * unwanted channel, reset or handed back through the disconnect callback;
 * else silently, the program's connection being gone already), then the
 * program hears `status` and `why` (NULL: the usual words for it). */
void tunnel__eng_visit_failed(tunnel__eng_stream *st, int status,
                              const char *why, int discard);
/* Visits past their deadline fail; returns the earlier of `next` and the
 * next deadline. */
uint64_t tunnel__eng_visit_tick(tunnel__eng_session *s, uint64_t next);

#endif /* TUNNEL_ENGINE_INT_H */
