/* Close paths under load, in process. One uv loop holds a tunnel_server on
 * 127.0.0.1, a tunnel_client, a local service (plain libuv) or an in-process
 * accept handler, and two visitors, both joined: an idle one, and a busy
 * one whose connection carries data both ways while one end, the "slow
 * side", reads nothing. The slow side writes SLOW_BYTES, which the other
 * end reads; the other end writes without end and is held back. So, next to
 * the slow side, the tunnel has data queued outwards and nothing coming in:
 * the state in which only the tunnel itself can notice that the other end
 * went away. (An accept handler is only told of a failure through a read or
 * a write it has pending, so a slow handler keeps writing, and an idle one
 * reads.) Then one close action:
 *
 *   client-close   tunnel_client_close
 *   server-close   tunnel_server_close
 *   proxy-close    tunnel_proxy_close (joined visitors carry on), then
 *                  tunnel_client_close
 *   stream-close   tunnel_stream_close on the busy accepted stream (accept
 *                  handler only), then everything else
 *   heartbeat      the client's traffic stops reaching the server (a relay
 *                  between them stops forwarding that way); the server, with
 *                  a short heartbeat timeout, drops the session
 *   reset          the relay resets every connection between client and
 *                  server
 *   replace        a second login with the client's run id replaces its
 *                  session
 *
 * After it, every connection and stream the test opened must end and every
 * tunnel object close within CLOSE_MS; all memory the library took through
 * the configured allocator must be returned and the loop must close (no
 * handle left behind). An endpoint that reads nothing cannot see its
 * connection end (the FIN waits behind data it does not read), so the test
 * looks at the tunnel's socket instead: the connection has ended once no
 * process holds that socket any more (/proc/net/tcp).
 *
 * The held-stream cases are client-close with an idle accepted stream the
 * program neither reads nor writes: the visitors must still end, and the
 * stream, closed by the program only afterwards, must close and let the
 * client finish closing.
 *
 * The first-bytes cases check an in-process accept handler whose visitor
 * writes before any work connection exists (pool count 0): StartWorkConn
 * and the visitor's first bytes then reach the client together (the relay
 * holds back the server's bytes briefly so that they arrive in one read),
 * and the accepted stream must still deliver those bytes.
 *
 * Usage: test-close-matrix CASE
 *   CASE  MODE-TARGET-ACTION-slow-SIDE, MODE-accept-held-stream or
 *         MODE-accept-first-bytes
 *   MODE mux | nonmux;  TARGET local | accept;  SIDE visitor | service
 * Environment: IT_LOG=0..3 prints library log lines up to that level
 * (default 1: errors and warnings) on stderr. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cmocka.h>

#include <mbedtls/md5.h>
#include <mbedtls/version.h>

#include <tunnel/uv.h>

#include "../../integration/it_common.h"
#include "../../integration/it_data.h"
#include "../../integration/it_hostile.h"

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define md5_digest mbedtls_md5
#else
#define md5_digest mbedtls_md5_ret
#endif

/* Everything must be closed this long after the close action. */
#define CLOSE_MS 5000u
/* The server's heartbeat timeout in the heartbeat cases; it checks once a
 * second, so the session is dropped within this plus one second. */
#define HB_TIMEOUT_S 2u
#define HB_BOUND_MS (HB_TIMEOUT_S * 1000u + 1000u + CLOSE_MS)

#define CHUNK (64u * 1024u)
/* A test endpoint keeps at most this much queued before waiting for its
 * writes to complete (its own backpressure). */
#define INFLIGHT_MAX (1u << 20)
/* What a slow endpoint writes. Before the action the other end has read
 * all of it (an endless slow handler: this much), and the other direction
 * has made no progress for BLOCKED_MS. */
#define SLOW_BYTES (4u << 20)
#define BLOCKED_MS 200u
#define WINDOW (1u << 20)
#define TOKEN "close-token"
#define FIRST_BYTES_ROUNDS 10
/* The relay stops reading one side while this much waits for the other. */
#define RELAY_HIGH (1u << 20)
#define RELAY_LOW (256u * 1024u)
/* In first-bytes cases, bytes from the server are held until the server
 * has been quiet this long, then sent in one write. */
#define RELAY_HOLD_MS 10u

static int log_level = TUNNEL_LOG_WARN;
static int skipped;
static uint8_t filler[CHUNK];

static void log_sink(int level, const char *msg, void *ud) {
  fprintf(stderr, "[%s] %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

/* ----------------------------------------------------------------- cases */

enum {
  A_CLIENT_CLOSE,
  A_SERVER_CLOSE,
  A_PROXY_CLOSE,
  A_STREAM_CLOSE,
  A_HEARTBEAT,
  A_RESET,
  A_REPLACE,
  A_FIRST_BYTES,
  A_COUNT
};

static const char *const action_names[A_COUNT] = {
    "client-close", "server-close", "proxy-close", "stream-close",
    "heartbeat",    "reset",        "replace",     "first-bytes"};

typedef struct mcase {
  char name[128];
  int mux;
  int accept;       /* in-process accept handler instead of a local service */
  int action;
  int slow_visitor; /* the visitor reads nothing (else the service) */
  int held;         /* the idle accepted stream is left alone */
} mcase;

/* Parses a case name (see the usage above). */
static int parse_case(const char *s, mcase *c) {
  memset(c, 0, sizeof *c);
  size_t len = strlen(s);
  if (len >= sizeof c->name)
    return -1;
  memcpy(c->name, s, len + 1);
  if (strncmp(s, "mux-", 4) == 0) {
    c->mux = 1;
    s += 4;
  } else if (strncmp(s, "nonmux-", 7) == 0) {
    s += 7;
  } else {
    return -1;
  }
  if (strncmp(s, "local-", 6) == 0) {
    s += 6;
  } else if (strncmp(s, "accept-", 7) == 0) {
    c->accept = 1;
    s += 7;
  } else {
    return -1;
  }
  if (strcmp(s, "first-bytes") == 0) {
    c->action = A_FIRST_BYTES;
    return c->accept ? 0 : -1;
  }
  if (strcmp(s, "held-stream") == 0) {
    c->action = A_CLIENT_CLOSE;
    c->slow_visitor = c->held = 1;
    return c->accept ? 0 : -1;
  }
  const char *slow = strstr(s, "-slow-");
  if (!slow)
    return -1;
  if (strcmp(slow + 6, "visitor") == 0)
    c->slow_visitor = 1;
  else if (strcmp(slow + 6, "service") != 0)
    return -1;
  size_t n = (size_t)(slow - s);
  for (int a = 0; a < A_FIRST_BYTES; a++) {
    if (strlen(action_names[a]) == n && strncmp(s, action_names[a], n) == 0) {
      c->action = a;
      return 0;
    }
  }
  return -1;
}

/* --------------------------------------------------------------- fixture */

typedef struct mx mx;
typedef struct relay relay;

/* A TCP endpoint of the test: a visitor, or a connection the local service
 * accepted. */
typedef struct ep {
  uv_tcp_t tcp;
  uv_connect_t creq;
  mx *t;
  struct ep *next;
  char name[48];
  int reads;  /* reads (and counts) everything; else never reads */
  int writes; /* writes filler */
  uint64_t tx_limit; /* ... this much of it (0: without end) */
  char first[160]; /* sent once connected (first-bytes visitors) */
  size_t first_len;
  int connected;
  /* Both ends' addresses, to find the tunnel's socket in /proc/net/tcp. */
  int addr_known;
  uint32_t self_addr, peer_addr;
  uint16_t self_port, peer_port;
  int peer_seen, peer_owned; /* last /proc/net/tcp scan */
  int peer_released; /* no process holds the tunnel's socket any more */
  uint64_t rx, tx_queued, tx_done, tx_inflight;
  uint64_t last_tx_ms; /* loop time of the last completed write */
  char rx_small[256];
  size_t rx_small_len;
  int eof, rerr, werr;
  int ended; /* the tunnel ended the connection */
  uint64_t end_ms;
  int closing, closed;
  uint8_t rbuf[CHUNK];
} ep;

typedef struct ep_wreq {
  uv_write_t req;
  ep *e;
  size_t len;
} ep_wreq;

/* A stream handed to the in-process accept handler. */
typedef struct acc {
  mx *t;
  struct acc *next;
  tunnel_stream *st;
  char name[48];
  int reads, writes;
  int passive; /* neither reads nor writes: closed by the test at the end */
  int echo;    /* first-bytes: write back what arrives, end on EOF */
  uint64_t rx, tx_done;
  uint64_t last_tx_ms;
  char rx_small[256];
  size_t rx_small_len;
  int eof, rerr, werr;
  int stray_cancel; /* TUNNEL_ECANCELED before the program closed it */
  int ended;
  uint64_t end_ms;
  int close_called, closed;
  uint64_t closed_ms;
} acc;

typedef struct svc {
  uv_tcp_t tcp;
  mx *t;
  uint16_t port;
  int closed;
} svc;

struct mx {
  uv_loop_t loop;
  it_waiter w;
  uv_timer_t tick; /* keeps time-based conditions evaluated */
  memstat mem;
  const mcase *c;
  uint16_t lo, hi;
  uint64_t t_action;

  tunnel_server *srv;
  uint16_t srv_port;
  int srv_close_called, srv_closed;

  relay *rl;

  tunnel_client *cli;
  int cli_state_calls, cli_logged_in, cli_down, cli_down_status;
  char run_id[64];
  int64_t login_unix; /* wall-clock second the login was answered in */
  uint64_t cli_down_ms;
  int cli_close_called, cli_closed;
  uint64_t cli_closed_ms, srv_closed_ms;

  tunnel_proxy *px;
  int px_status_calls, px_status;
  char px_msg[256];
  uint16_t pub;

  svc *service;
  ep *eps; /* every endpoint, for teardown */
  ep *svc_conns[8];
  int nsvc_conns;
  acc *accs;
  acc *acc_by_order[FIRST_BYTES_ROUNDS + 8];
  int naccs;
  ep *busy_visitor, *idle_visitor;

  it_atk *atks;
  it_atk *raw_login;
  int watch_peers; /* look for released tunnel sockets (after the load) */
};

static uint64_t now_ms(mx *t) {
  uv_update_time(&t->loop);
  return uv_now(&t->loop);
}

static void check_peers(mx *t);

static void tick_cb(uv_timer_t *h) { check_peers(h->data); }

/* Runs the loop until pred holds or `ms` pass; whether it holds. */
static int mx_wait(mx *t, int (*pred)(mx *), uint64_t ms) {
  it_waiter_arm(&t->w, ms);
  while (!pred(t) && !t->w.fired)
    uv_run(&t->loop, UV_RUN_ONCE);
  it_waiter_disarm(&t->w);
  return pred(t);
}

static void mx_sleep(mx *t, uint64_t ms) { it_sleep(&t->w, ms); }

/* ------------------------------------------------------------- endpoints */

static void ep_closed_cb(uv_handle_t *h) { ((ep *)h->data)->closed = 1; }

static void ep_close(ep *e) {
  if (e->closing)
    return;
  e->closing = 1;
  uv_close((uv_handle_t *)&e->tcp, ep_closed_cb);
}

/* The tunnel ended this connection: record when, and let it go. */
static void ep_end(ep *e) {
  if (e->ended)
    return;
  e->ended = 1;
  e->end_ms = now_ms(e->t);
  ep_close(e);
}

static void ep_pump(ep *e);

static void ep_written(uv_write_t *req, int status) {
  ep_wreq *w = (ep_wreq *)req;
  ep *e = w->e;
  size_t w_len = w->len;
  e->tx_inflight -= w_len;
  free(w);
  if (status == 0) {
    e->tx_done += w_len;
    e->last_tx_ms = now_ms(e->t);
    ep_pump(e);
    return;
  }
  if (status != UV_ECANCELED && !e->werr) {
    e->werr = status;
    ep_end(e);
  }
}

static void ep_write_buf(ep *e, const void *data, size_t len) {
  ep_wreq *w = malloc(sizeof *w);
  assert_non_null(w);
  w->e = e;
  w->len = len;
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)&e->tcp, &b, 1, ep_written);
  if (rc) {
    free(w);
    if (!e->werr)
      e->werr = rc;
    ep_end(e);
    return;
  }
  e->tx_inflight += len;
}

/* Keeps up to INFLIGHT_MAX of filler queued, up to the endpoint's limit. */
static void ep_pump(ep *e) {
  while (e->writes && !e->closing && e->tx_inflight < INFLIGHT_MAX &&
         (!e->tx_limit || e->tx_queued < e->tx_limit)) {
    uint64_t left = e->tx_limit ? e->tx_limit - e->tx_queued : CHUNK;
    size_t n = left < CHUNK ? (size_t)left : CHUNK;
    e->tx_queued += n;
    ep_write_buf(e, filler, n);
  }
}

static void ep_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  ep *e = h->data;
  (void)hint;
  *b = uv_buf_init((char *)e->rbuf, sizeof e->rbuf);
}

static void ep_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  ep *e = s->data;
  if (n == 0)
    return;
  if (n > 0) {
    e->rx += (uint64_t)n;
    size_t room = sizeof e->rx_small - 1 - e->rx_small_len;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(e->rx_small + e->rx_small_len, b->base, take);
    e->rx_small_len += take;
    e->rx_small[e->rx_small_len] = '\0';
    return;
  }
  uv_read_stop(s);
  if (n == UV_EOF) {
    e->eof = 1;
    /* An endless writer goes on writing: EOF alone is only a half-close;
     * its writes fail once the connection is really gone. */
    if (!e->writes || e->tx_limit)
      ep_end(e);
    return;
  }
  e->rerr = (int)n;
  ep_end(e);
}

static void ep_note_addrs(ep *e) {
  struct sockaddr_in self, peer;
  int sl = sizeof self, pl = sizeof peer;
  if (uv_tcp_getsockname(&e->tcp, (struct sockaddr *)&self, &sl) != 0 ||
      uv_tcp_getpeername(&e->tcp, (struct sockaddr *)&peer, &pl) != 0 ||
      self.sin_family != AF_INET || peer.sin_family != AF_INET)
    return;
  e->self_addr = self.sin_addr.s_addr;
  e->peer_addr = peer.sin_addr.s_addr;
  e->self_port = ntohs(self.sin_port);
  e->peer_port = ntohs(peer.sin_port);
  e->addr_known = 1;
}

/* Connected or accepted: read and write as configured. */
static void ep_begin(ep *e) {
  e->connected = 1;
  e->last_tx_ms = now_ms(e->t);
  ep_note_addrs(e);
  if (e->reads)
    assert_int_equal(uv_read_start((uv_stream_t *)&e->tcp, ep_alloc, ep_read),
                     0);
  if (e->first_len)
    ep_write_buf(e, e->first, e->first_len);
  ep_pump(e);
}

/* `writes`: 0 nothing, 1 without end, 2 SLOW_BYTES. */
static ep *ep_new(mx *t, const char *name, int reads, int writes) {
  ep *e = calloc(1, sizeof *e);
  assert_non_null(e);
  e->t = t;
  snprintf(e->name, sizeof e->name, "%s", name);
  e->reads = reads;
  e->writes = writes != 0;
  e->tx_limit = writes == 2 ? SLOW_BYTES : 0;
  uv_tcp_init(&t->loop, &e->tcp);
  e->tcp.data = e;
  e->next = t->eps;
  t->eps = e;
  return e;
}

static void ep_connected(uv_connect_t *req, int status) {
  ep *e = req->data;
  if (status) {
    e->rerr = status;
    ep_end(e);
    return;
  }
  ep_begin(e);
}

static ep *visitor_new(mx *t, const char *name, int reads, int writes) {
  ep *e = ep_new(t, name, reads, writes);
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", t->pub, &a), 0);
  e->creq.data = e;
  assert_int_equal(uv_tcp_connect(&e->creq, &e->tcp,
                                  (const struct sockaddr *)&a, ep_connected),
                   0);
  return e;
}

static const char *ep_how(const ep *e) {
  if (e->peer_released)
    return "tunnel socket released";
  if (e->rerr)
    return uv_err_name(e->rerr);
  if (e->werr)
    return uv_err_name(e->werr);
  if (e->eof)
    return "EOF";
  return "open";
}

/* Ends the endpoints whose tunnel-side socket no process holds any more:
 * gone from /proc/net/tcp, or left there as an orphan (inode 0) with its
 * FIN or data still queued. Run from the tick timer. */
static void check_peers(mx *t) {
  if (!t->watch_peers)
    return;
  int pending = 0;
  for (ep *e = t->eps; e; e = e->next) {
    e->peer_seen = 0;
    pending += e->addr_known && !e->ended;
  }
  if (!pending)
    return;
  FILE *f = fopen("/proc/net/tcp", "r");
  if (!f)
    return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    unsigned la, lp, ra, rp, st;
    unsigned long inode;
    if (sscanf(line, " %*d: %x:%x %x:%x %x %*x:%*x %*x:%*x %*x %*u %*d %lu",
               &la, &lp, &ra, &rp, &st, &inode) != 6)
      continue; /* the header */
    for (ep *e = t->eps; e; e = e->next) {
      if (e->addr_known && !e->ended && la == e->peer_addr &&
          lp == e->peer_port && ra == e->self_addr && rp == e->self_port) {
        e->peer_seen = 1;
        e->peer_owned = inode != 0;
      }
    }
  }
  fclose(f);
  for (ep *e = t->eps; e; e = e->next) {
    if (e->addr_known && !e->ended && (!e->peer_seen || !e->peer_owned)) {
      e->peer_released = 1;
      ep_end(e);
    }
  }
}

/* ------------------------------------------------------- local service */

/* The first connection is the busy visitor's, the second the idle one's. */
static void on_service_conn(uv_stream_t *l, int status) {
  svc *s = l->data;
  mx *t = s->t;
  if (status < 0)
    return;
  int busy = t->nsvc_conns == 0, slow = busy && !t->c->slow_visitor;
  ep *e = ep_new(t,
                 !busy  ? "service connection (idle)"
                 : slow ? "service connection (busy, slow)"
                        : "service connection (busy)",
                 !slow, !busy ? 0 : slow ? 2 : 1);
  if (uv_accept(l, (uv_stream_t *)&e->tcp) != 0) {
    ep_close(e);
    return;
  }
  if (t->nsvc_conns < (int)(sizeof t->svc_conns / sizeof t->svc_conns[0]))
    t->svc_conns[t->nsvc_conns] = e;
  t->nsvc_conns++;
  ep_begin(e);
}

static void service_closed(uv_handle_t *h) { ((svc *)h->data)->closed = 1; }

static svc *service_new(mx *t) {
  svc *s = calloc(1, sizeof *s);
  assert_non_null(s);
  s->t = t;
  uv_tcp_init(&t->loop, &s->tcp);
  s->tcp.data = s;
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  assert_int_equal(uv_tcp_bind(&s->tcp, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&s->tcp, 64, on_service_conn), 0);
  int len = sizeof a;
  assert_int_equal(uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&a, &len),
                   0);
  s->port = ntohs(a.sin_port);
  return s;
}

/* ------------------------------------------------- accept handler streams */

static void acc_closed(tunnel_stream *st, void *ud) {
  acc *a = ud;
  (void)st;
  a->closed = 1;
  a->closed_ms = now_ms(a->t);
}

static void acc_close(acc *a) {
  if (a->close_called)
    return;
  a->close_called = 1;
  int rc = tunnel_stream_close(a->st, acc_closed, a);
  if (rc)
    fail_msg("%s: tunnel_stream_close: %s", a->name, tunnel_err_name(rc));
}

/* The stream failed (or ended, for one that only reads): close it, as a
 * program must. */
static void acc_end(acc *a) {
  if (a->ended)
    return;
  a->ended = 1;
  a->end_ms = now_ms(a->t);
  acc_close(a);
}

static void acc_pump(acc *a);

static void acc_written(tunnel_stream *st, int status, void *ud) {
  acc *a = ud;
  (void)st;
  if (status == 0) {
    a->last_tx_ms = now_ms(a->t);
    acc_pump(a);
    return;
  }
  /* ECANCELED means the program closed the stream first; from a stream
   * the program still holds it hides a failure. */
  if (status == TUNNEL_ECANCELED && a->close_called)
    return;
  if (status == TUNNEL_ECANCELED)
    a->stray_cancel = 1;
  if (!a->werr)
    a->werr = status;
  acc_end(a);
}

/* Keeps INFLIGHT_MAX queued on the stream while it lasts. */
static void acc_pump(acc *a) {
  while (a->writes && !a->close_called &&
         tunnel_stream_write_queue_size(a->st) < INFLIGHT_MAX) {
    int rc = tunnel_stream_write(a->st, filler, CHUNK, acc_written, a);
    if (rc) {
      if (!a->werr)
        a->werr = rc;
      acc_end(a);
      return;
    }
    a->tx_done += CHUNK;
  }
}

static void acc_shut_done(tunnel_stream *st, int status, void *ud) {
  (void)st, (void)status;
  acc_close(ud);
}

static void acc_read(tunnel_stream *st, int status, const uint8_t *data,
                     size_t len, void *ud) {
  acc *a = ud;
  if (status == 0) {
    a->rx += len;
    size_t room = sizeof a->rx_small - 1 - a->rx_small_len;
    size_t take = len < room ? len : room;
    memcpy(a->rx_small + a->rx_small_len, data, take);
    a->rx_small_len += take;
    a->rx_small[a->rx_small_len] = '\0';
    if (a->echo) {
      int rc = tunnel_stream_write(st, data, len, NULL, NULL);
      if (rc) {
        a->werr = rc;
        acc_end(a);
      }
    }
    return;
  }
  if (status == TUNNEL_EEOF) {
    a->eof = 1;
    if (a->echo) { /* answer complete: end our side too, then close */
      if (tunnel_stream_shutdown(st, acc_shut_done, a) != 0)
        acc_close(a);
    } else if (!a->writes) {
      acc_end(a);
    }
    return;
  }
  a->rerr = status;
  acc_end(a);
}

/* First stream: the busy visitor's; second: the idle one's (first-bytes
 * cases: every stream echoes). */
static void on_accept(tunnel_proxy *p, tunnel_stream *st, void *ud) {
  mx *t = ud;
  (void)p;
  acc *a = calloc(1, sizeof *a);
  assert_non_null(a);
  a->t = t;
  a->st = st;
  a->next = t->accs;
  t->accs = a;
  int order = t->naccs++;
  if (order < (int)(sizeof t->acc_by_order / sizeof t->acc_by_order[0]))
    t->acc_by_order[order] = a;
  a->last_tx_ms = now_ms(t);
  if (t->c->action == A_FIRST_BYTES) {
    snprintf(a->name, sizeof a->name, "accepted stream %d", order + 1);
    a->reads = a->echo = 1;
  } else if (order == 0) {
    snprintf(a->name, sizeof a->name, "accepted stream (busy%s)",
             t->c->slow_visitor ? "" : ", slow");
    a->reads = t->c->slow_visitor;
    a->writes = 1;
  } else if (t->c->held) {
    snprintf(a->name, sizeof a->name, "accepted stream (idle, held)");
    a->passive = 1;
  } else {
    snprintf(a->name, sizeof a->name, "accepted stream (idle)");
    a->reads = 1;
  }
  tunnel_stream_set_user_data(st, a);
  if (a->reads) {
    int rc = tunnel_stream_read_start(st, acc_read, a);
    if (rc)
      fail_msg("%s: tunnel_stream_read_start: %s", a->name,
               tunnel_err_name(rc));
  }
  acc_pump(a);
}

/* ----------------------------------------------------------------- relay */

/* A TCP relay between the client and the server: forwards bytes each way
 * with backpressure and carries half-closes; it can stop forwarding from
 * the client (the server hears nothing more), reset every connection, or
 * hold the server's bytes briefly so that what the server sends in quick
 * succession reaches the client in one write. */
typedef struct rl_pair rl_pair;

typedef struct rl_side {
  uv_tcp_t tcp;
  rl_pair *pair;
  struct rl_side *peer;
  int to_client;  /* faces the tunnel client */
  int reading;
  int eof;        /* read EOF from this side */
  int shut_done;  /* FIN sent to this side */
  size_t out_pending; /* bytes queued for writing to this side */
  uv_shutdown_t sreq;
} rl_side;

struct rl_pair {
  relay *rl;
  rl_pair *next;
  rl_side c, s; /* facing the client, facing the server */
  uv_connect_t creq;
  int connected, ended;
  int open_handles;
  it_buf hold; /* server bytes held for the client */
};

struct relay {
  mx *t;
  uv_tcp_t listener;
  uv_timer_t poll;  /* notices resets on sides it is not reading */
  uv_timer_t flush; /* sends held bytes once the server is quiet */
  uint16_t port, target;
  rl_pair *pairs;
  int freeze_up; /* nothing from the client is forwarded any more */
  int hold;      /* hold the server's bytes (RELAY_HOLD_MS) */
  int closing, open_handles;
  uint8_t rbuf[CHUNK];
};

typedef struct rl_wreq {
  uv_write_t req;
  rl_side *to;
  size_t len;
  uint8_t data[];
} rl_wreq;

static void rl_side_closed(uv_handle_t *h) {
  rl_side *x = h->data;
  x->pair->open_handles--;
}

/* Aborts both connections of a pair with RST. */
static void rl_pair_reset(rl_pair *p) {
  if (p->ended)
    return;
  p->ended = 1;
  rl_side *sides[2] = {&p->c, &p->s};
  for (int i = 0; i < 2; i++) {
    rl_side *x = sides[i];
    uv_read_stop((uv_stream_t *)&x->tcp);
    x->reading = 0;
    if (uv_tcp_close_reset(&x->tcp, rl_side_closed) != 0)
      uv_close((uv_handle_t *)&x->tcp, rl_side_closed);
  }
}

/* Both directions finished cleanly. */
static void rl_pair_close(rl_pair *p) {
  if (p->ended)
    return;
  p->ended = 1;
  uv_close((uv_handle_t *)&p->c.tcp, rl_side_closed);
  uv_close((uv_handle_t *)&p->s.tcp, rl_side_closed);
}

static void rl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void rl_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  rl_side *x = h->data;
  (void)hint;
  *b = uv_buf_init((char *)x->pair->rl->rbuf, sizeof x->pair->rl->rbuf);
}

static int rl_frozen(const rl_side *from) {
  return from->to_client && from->pair->rl->freeze_up;
}

static void rl_resume(rl_side *from) {
  rl_pair *p = from->pair;
  if (from->reading || from->eof || p->ended || !p->connected ||
      rl_frozen(from))
    return;
  if (from->peer->out_pending + (from->to_client ? 0 : p->hold.len) >
      RELAY_LOW)
    return;
  if (uv_read_start((uv_stream_t *)&from->tcp, rl_alloc, rl_read) == 0)
    from->reading = 1;
}

static void rl_written(uv_write_t *req, int status) {
  rl_wreq *w = (rl_wreq *)req;
  rl_side *to = w->to;
  to->out_pending -= w->len;
  free(w);
  if (status) {
    if (status != UV_ECANCELED)
      rl_pair_reset(to->pair);
    return;
  }
  rl_resume(to->peer);
}

static void rl_write(rl_side *to, const void *data, size_t len) {
  if (!len || to->pair->ended)
    return;
  rl_wreq *w = malloc(sizeof *w + len);
  assert_non_null(w);
  w->to = to;
  w->len = len;
  memcpy(w->data, data, len);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&to->tcp, &b, 1, rl_written) != 0) {
    free(w);
    rl_pair_reset(to->pair);
    return;
  }
  to->out_pending += len;
}

static void rl_flush_pair(rl_pair *p) {
  if (!p->hold.len)
    return;
  rl_write(&p->c, p->hold.p, p->hold.len);
  p->hold.len = 0;
}

static void rl_flush_cb(uv_timer_t *h) {
  relay *r = h->data;
  for (rl_pair *p = r->pairs; p; p = p->next) {
    rl_flush_pair(p);
    rl_resume(&p->s);
  }
}

static void rl_shut_cb(uv_shutdown_t *req, int status) {
  rl_side *to = req->data;
  rl_pair *p = to->pair;
  if (p->ended)
    return;
  if (status) {
    rl_pair_reset(p);
    return;
  }
  to->shut_done = 1;
  if (p->c.shut_done && p->s.shut_done)
    rl_pair_close(p);
}

static void rl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  rl_side *from = s->data;
  rl_pair *p = from->pair;
  relay *r = p->rl;
  if (n == 0 || p->ended)
    return;
  if (n < 0) {
    uv_read_stop(s);
    from->reading = 0;
    if (n != UV_EOF) {
      rl_pair_reset(p);
      return;
    }
    from->eof = 1;
    if (!from->to_client)
      rl_flush_pair(p);
    /* FIN onwards, after what is queued. */
    from->peer->sreq.data = from->peer;
    if (uv_shutdown(&from->peer->sreq, (uv_stream_t *)&from->peer->tcp,
                    rl_shut_cb) != 0)
      rl_pair_reset(p);
    return;
  }
  if (!from->to_client && r->hold) {
    it_buf_put(&p->hold, b->base, (size_t)n);
    uv_timer_start(&r->flush, rl_flush_cb, RELAY_HOLD_MS, 0);
  } else {
    rl_write(from->peer, b->base, (size_t)n);
  }
  if (p->ended)
    return;
  if (from->peer->out_pending + (from->to_client ? 0 : p->hold.len) >
      RELAY_HIGH) {
    uv_read_stop(s);
    from->reading = 0;
  }
}

static void rl_upstream_connected(uv_connect_t *req, int status) {
  rl_pair *p = req->data;
  if (p->ended)
    return;
  if (status) {
    rl_pair_reset(p);
    return;
  }
  p->connected = 1;
  rl_resume(&p->c);
  rl_resume(&p->s);
}

static void rl_on_conn(uv_stream_t *l, int status) {
  relay *r = l->data;
  if (status < 0 || r->closing)
    return;
  rl_pair *p = calloc(1, sizeof *p);
  assert_non_null(p);
  p->rl = r;
  p->next = r->pairs;
  r->pairs = p;
  p->c.pair = p->s.pair = p;
  p->c.peer = &p->s;
  p->s.peer = &p->c;
  p->c.to_client = 1;
  uv_tcp_init(&r->t->loop, &p->c.tcp);
  uv_tcp_init(&r->t->loop, &p->s.tcp);
  p->c.tcp.data = &p->c;
  p->s.tcp.data = &p->s;
  p->open_handles = 2;
  if (uv_accept(l, (uv_stream_t *)&p->c.tcp) != 0) {
    rl_pair_reset(p);
    return;
  }
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", r->target, &a);
  p->creq.data = p;
  if (uv_tcp_connect(&p->creq, &p->s.tcp, (const struct sockaddr *)&a,
                     rl_upstream_connected) != 0)
    rl_pair_reset(p);
}

/* A side the relay is not reading cannot report a reset through libuv: ask
 * the kernel. */
static int rl_side_was_reset(rl_side *x) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&x->tcp, &fd) != 0)
    return 0;
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
    return 0;
  return ti.tcpi_state == TCP_CLOSE;
}

static void rl_poll_cb(uv_timer_t *h) {
  relay *r = h->data;
  for (rl_pair *p = r->pairs; p; p = p->next)
    if (p->connected && !p->ended &&
        (rl_side_was_reset(&p->c) || rl_side_was_reset(&p->s)))
      rl_pair_reset(p);
}

static void rl_handle_closed(uv_handle_t *h) {
  ((relay *)h->data)->open_handles--;
}

static relay *relay_new(mx *t, uint16_t target, int hold) {
  relay *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->t = t;
  r->target = target;
  r->hold = hold;
  uv_tcp_init(&t->loop, &r->listener);
  uv_timer_init(&t->loop, &r->poll);
  uv_timer_init(&t->loop, &r->flush);
  r->listener.data = r->poll.data = r->flush.data = r;
  r->open_handles = 3;
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  assert_int_equal(uv_tcp_bind(&r->listener, (const struct sockaddr *)&a, 0),
                   0);
  assert_int_equal(uv_listen((uv_stream_t *)&r->listener, 64, rl_on_conn), 0);
  int len = sizeof a;
  assert_int_equal(
      uv_tcp_getsockname(&r->listener, (struct sockaddr *)&a, &len), 0);
  r->port = ntohs(a.sin_port);
  uv_timer_start(&r->poll, rl_poll_cb, 50, 50);
  return r;
}

/* From now on nothing the client sends reaches the server. */
static void relay_freeze_up(relay *r) {
  r->freeze_up = 1;
  for (rl_pair *p = r->pairs; p; p = p->next) {
    if (p->c.reading) {
      uv_read_stop((uv_stream_t *)&p->c.tcp);
      p->c.reading = 0;
    }
  }
}

static int relay_reset_all(relay *r) {
  int n = 0;
  for (rl_pair *p = r->pairs; p; p = p->next) {
    n += !p->ended;
    rl_pair_reset(p);
  }
  return n;
}

static void relay_close(relay *r) {
  if (r->closing)
    return;
  r->closing = 1;
  relay_reset_all(r);
  uv_close((uv_handle_t *)&r->listener, rl_handle_closed);
  uv_close((uv_handle_t *)&r->poll, rl_handle_closed);
  uv_close((uv_handle_t *)&r->flush, rl_handle_closed);
}

static void relay_free(relay *r) {
  while (r->pairs) {
    rl_pair *p = r->pairs;
    r->pairs = p->next;
    it_buf_free(&p->hold);
    free(p);
  }
  free(r);
}

/* ----------------------------------------------------------- tunnel side */

static void on_server_closed(tunnel_server *s, void *ud) {
  mx *t = ud;
  (void)s;
  t->srv_closed = 1;
  t->srv_closed_ms = now_ms(t);
}

static void on_client_closed(tunnel_client *c, void *ud) {
  mx *t = ud;
  (void)c;
  t->cli_closed = 1;
  t->cli_closed_ms = now_ms(t);
}

static void on_client_state(tunnel_client *c, int status, const char *msg,
                            void *ud) {
  mx *t = ud;
  (void)c;
  t->cli_state_calls++;
  if (status == 0) {
    t->cli_logged_in = 1;
    t->login_unix = (int64_t)time(NULL);
    snprintf(t->run_id, sizeof t->run_id, "%s", msg ? msg : "");
    return;
  }
  if (!t->cli_down) {
    t->cli_down = 1;
    t->cli_down_status = status;
    t->cli_down_ms = now_ms(t);
  }
}

static void on_proxy_status(tunnel_proxy *p, int status, const char *msg,
                            void *ud) {
  mx *t = ud;
  (void)p;
  t->px_status_calls++;
  t->px_status = status;
  snprintf(t->px_msg, sizeof t->px_msg, "%s", msg ? msg : "(null)");
  if (status == 0) {
    const char *colon = strrchr(t->px_msg, ':');
    t->pub = colon ? (uint16_t)atoi(colon + 1) : 0;
  }
}

static tunnel_config *config_new(mx *t, const char *who) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &t->mem),
                   0);
  assert_int_equal(tunnel_config_set_log(cfg, log_sink, log_level,
                                         (void *)(uintptr_t)who),
                   0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  assert_int_equal(tunnel_config_set_stream_window(cfg, WINDOW), 0);
  return cfg;
}

static int logged_in(mx *t) { return t->cli_state_calls > 0; }
static int proxy_answered(mx *t) { return t->px_status_calls > 0; }

/* Server, relay (when the case needs one), client and proxy, registered. */
static void tunnel_up(mx *t) {
  const mcase *c = t->c;
  tunnel_config *cfg = config_new(t, "server");
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1"), 0);
  assert_int_equal(tunnel_config_set_port_range(cfg, t->lo, t->hi), 0);
  if (c->action == A_HEARTBEAT)
    assert_int_equal(tunnel_config_set_heartbeat(cfg, 0, HB_TIMEOUT_S), 0);
  assert_int_equal(tunnel_server_new(&t->srv, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(t->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(t->srv, &t->srv_port), 0);

  uint16_t dial = t->srv_port;
  if (c->action == A_HEARTBEAT || c->action == A_RESET ||
      c->action == A_FIRST_BYTES) {
    t->rl = relay_new(t, t->srv_port, c->action == A_FIRST_BYTES);
    dial = t->rl->port;
  }

  cfg = config_new(t, "client");
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, c->mux), 0);
  if (c->action == A_FIRST_BYTES)
    assert_int_equal(tunnel_config_set_pool_count(cfg, 0), 0);
  /* Heartbeats keep a non-mux control channel alive until the relay
   * swallows them; the client itself never gives up on the server. */
  if (c->action == A_HEARTBEAT)
    assert_int_equal(tunnel_config_set_heartbeat(cfg, 1, 0), 0);
  assert_int_equal(tunnel_client_new(&t->cli, &t->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_client_set_state_cb(t->cli, on_client_state, t), 0);
  assert_int_equal(tunnel_client_connect(t->cli, "127.0.0.1", dial), 0);
  if (!mx_wait(t, logged_in, IT_WAIT_MS))
    fail_msg("no login within %u ms", IT_WAIT_MS);
  if (!t->cli_logged_in || t->cli_down)
    fail_msg("login failed: %s", tunnel_err_name(t->cli_down_status));
  assert_true(t->run_id[0] != '\0');

  assert_int_equal(
      tunnel_proxy_new(&t->px, t->cli, "close-matrix", TUNNEL_PROXY_TCP), 0);
  if (c->accept) {
    assert_int_equal(tunnel_proxy_set_accept_cb(t->px, on_accept, t), 0);
  } else {
    t->service = service_new(t);
    assert_int_equal(
        tunnel_proxy_set_local(t->px, "127.0.0.1", t->service->port), 0);
  }
  assert_int_equal(tunnel_proxy_set_status_cb(t->px, on_proxy_status, t), 0);
  assert_int_equal(tunnel_proxy_start(t->px), 0);
  if (!mx_wait(t, proxy_answered, IT_WAIT_MS))
    fail_msg("proxy not answered within %u ms", IT_WAIT_MS);
  if (t->px_status != 0 || !t->pub)
    fail_msg("proxy refused: %s (%s)", tunnel_err_name(t->px_status),
             t->px_msg);
}

/* ------------------------------------------------------- the load phase */

static int busy_joined(mx *t) {
  return (t->c->accept ? t->naccs : t->nsvc_conns) >= 1 ||
         t->busy_visitor->ended;
}

static int idle_joined(mx *t) {
  return (t->c->accept ? t->naccs : t->nsvc_conns) >= 2 ||
         t->idle_visitor->ended;
}

static acc *busy_acc(mx *t) { return t->naccs >= 1 ? t->acc_by_order[0] : NULL; }
static acc *idle_acc(mx *t) { return t->naccs >= 2 ? t->acc_by_order[1] : NULL; }
static ep *busy_svc(mx *t) { return t->nsvc_conns >= 1 ? t->svc_conns[0] : NULL; }
static ep *idle_svc(mx *t) { return t->nsvc_conns >= 2 ? t->svc_conns[1] : NULL; }

/* Bytes the reading end of the busy connection received from the slow
 * side. */
static uint64_t flow_rx(mx *t) {
  if (t->c->slow_visitor)
    return t->c->accept ? busy_acc(t)->rx : busy_svc(t)->rx;
  return t->busy_visitor->rx;
}

/* The writes towards the slow side made no progress for BLOCKED_MS. */
static int towards_slow_blocked(mx *t) {
  uint64_t now = now_ms(t), last;
  int pending;
  if (!t->c->slow_visitor) {
    last = t->busy_visitor->last_tx_ms;
    pending = t->busy_visitor->tx_inflight > 0;
  } else if (t->c->accept) {
    last = busy_acc(t)->last_tx_ms;
    pending = tunnel_stream_write_queue_size(busy_acc(t)->st) > 0;
  } else {
    last = busy_svc(t)->last_tx_ms;
    pending = busy_svc(t)->tx_inflight > 0;
  }
  return pending && now - last >= BLOCKED_MS;
}

static int anything_ended(mx *t) {
  for (ep *e = t->eps; e; e = e->next)
    if (e->ended)
      return 1;
  for (acc *a = t->accs; a; a = a->next)
    if (a->ended || a->close_called)
      return 1;
  return t->cli_down;
}

static int loaded(mx *t) {
  return anything_ended(t) ||
         (flow_rx(t) >= SLOW_BYTES && towards_slow_blocked(t));
}

static void describe(mx *t, char *buf, size_t cap);
static int replacing_login_answer(mx *t, char *err, size_t errsz);

/* Busy and idle visitors joined; data flowing one way and held back the
 * other, with nothing ended. */
static void load_up(mx *t) {
  const mcase *c = t->c;
  int slow_v = c->slow_visitor;
  t->busy_visitor = visitor_new(t, slow_v ? "busy visitor (slow)"
                                         : "busy visitor",
                                !slow_v, slow_v ? 2 : 1);
  if (!mx_wait(t, busy_joined, IT_WAIT_MS))
    fail_msg("the busy visitor was not joined within %u ms", IT_WAIT_MS);
  t->idle_visitor = visitor_new(t, "idle visitor", 1, 0);
  if (!mx_wait(t, idle_joined, IT_WAIT_MS))
    fail_msg("the idle visitor was not joined within %u ms", IT_WAIT_MS);
  mx_wait(t, loaded, IT_WAIT_MS);
  char d[2048];
  if (anything_ended(t)) {
    describe(t, d, sizeof d);
    fail_msg("something ended before the close action:\n%s", d);
  }
  if (!loaded(t)) {
    describe(t, d, sizeof d);
    fail_msg("the load never settled (%llu bytes from the slow side, the "
             "other direction %s) within %u ms:\n%s",
             (unsigned long long)flow_rx(t),
             towards_slow_blocked(t) ? "blocked" : "still moving",
             IT_WAIT_MS, d);
  }
  fprintf(stderr, "# load: %llu bytes read from the %s (which reads "
                  "nothing); the other way blocked; library memory %zu "
                  "bytes\n",
          (unsigned long long)flow_rx(t), slow_v ? "visitor" : "service",
          t->mem.cur);
}

/* --------------------------------------------------------- diagnostics */

static void dappend(char *buf, size_t cap, const char *fmt, ...) {
  size_t len = strlen(buf);
  if (len + 1 >= cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + len, cap - len, fmt, ap);
  va_end(ap);
}

static long long since_action(mx *t, uint64_t ms) {
  return (long long)ms - (long long)t->t_action;
}

static void describe_ep(mx *t, const ep *e, char *buf, size_t cap) {
  if (!e)
    return;
  if (e->ended)
    dappend(buf, cap, "  %s: ended (%s) at %+lld ms\n", e->name, ep_how(e),
            since_action(t, e->end_ms));
  else
    dappend(buf, cap, "  %s: STILL OPEN (%s%s; read %llu, wrote %llu, %llu "
                      "queued)\n",
            e->name, e->eof ? "saw EOF" : "no EOF",
            t->watch_peers && e->addr_known ? ", tunnel socket held" : "",
            (unsigned long long)e->rx, (unsigned long long)e->tx_done,
            (unsigned long long)e->tx_inflight);
}

static void describe_acc(mx *t, const acc *a, char *buf, size_t cap) {
  if (!a)
    return;
  if (a->passive && !a->close_called)
    dappend(buf, cap, "  %s: open, held by the program (closed last)\n",
            a->name);
  else if (a->closed)
    dappend(buf, cap, "  %s: closed at %+lld ms (%s)\n", a->name,
            since_action(t, a->closed_ms),
            a->rerr   ? tunnel_err_name(a->rerr)
            : a->werr ? tunnel_err_name(a->werr)
            : a->eof  ? "EOF"
                      : "closed by the test");
  else if (a->close_called)
    dappend(buf, cap, "  %s: tunnel_stream_close called, NO CLOSE CALLBACK\n",
            a->name);
  else
    dappend(buf, cap, "  %s: NO FAILURE REPORTED (read %llu, %zu bytes "
                      "queued)\n",
            a->name, (unsigned long long)a->rx,
            tunnel_stream_write_queue_size(a->st));
}

static void describe(mx *t, char *buf, size_t cap) {
  buf[0] = '\0';
  describe_ep(t, t->busy_visitor, buf, cap);
  describe_ep(t, t->idle_visitor, buf, cap);
  if (t->c->accept) {
    describe_acc(t, busy_acc(t), buf, cap);
    describe_acc(t, idle_acc(t), buf, cap);
  } else {
    describe_ep(t, busy_svc(t), buf, cap);
    describe_ep(t, idle_svc(t), buf, cap);
  }
  if (t->cli_closed)
    dappend(buf, cap, "  client: closed at %+lld ms\n",
            since_action(t, t->cli_closed_ms));
  else if (t->cli_close_called)
    dappend(buf, cap, "  client: tunnel_client_close called, NO CLOSE "
                      "CALLBACK\n");
  else if (t->cli_down)
    dappend(buf, cap, "  client: session down (%s) at %+lld ms\n",
            tunnel_err_name(t->cli_down_status),
            since_action(t, t->cli_down_ms));
  else
    dappend(buf, cap, "  client: logged in, no session loss reported\n");
  if (t->srv_closed)
    dappend(buf, cap, "  server: closed at %+lld ms\n",
            since_action(t, t->srv_closed_ms));
  else if (t->srv_close_called)
    dappend(buf, cap, "  server: tunnel_server_close called, NO CLOSE "
                      "CALLBACK\n");
  else
    dappend(buf, cap, "  server: open, %u client(s) logged in\n",
            tunnel_server_client_count(t->srv));
  if (t->raw_login) {
    char err[256];
    int ans = replacing_login_answer(t, err, sizeof err);
    dappend(buf, cap, "  replacing login: %s%s (connection %s)\n",
            ans > 0   ? "accepted"
            : ans < 0 ? "REFUSED: "
                      : "not answered",
            err, it_atk_how(t->raw_login));
  }
  dappend(buf, cap, "  library memory: %zu bytes", t->mem.cur);
}

/* ------------------------------------------------------------ the close */

static int ep_done(const ep *e) { return !e || e->ended; }
static int acc_done(const acc *a) { return !a || a->closed; }

static int busy_done(mx *t) {
  return ep_done(t->busy_visitor) &&
         (t->c->accept ? acc_done(busy_acc(t)) : ep_done(busy_svc(t)));
}

/* A held stream is the program's to close (see finish). */
static int idle_done(mx *t) {
  if (!ep_done(t->idle_visitor))
    return 0;
  if (!t->c->accept)
    return ep_done(idle_svc(t));
  return t->c->held || acc_done(idle_acc(t));
}

/* What the action itself must bring about, besides the endpoints. */
static int action_done(mx *t) {
  switch (t->c->action) {
  case A_CLIENT_CLOSE:
    /* A stream the program still holds keeps the client's memory (see
     * finish), not its connections. */
    return t->c->held || t->cli_closed;
  case A_PROXY_CLOSE:
    return t->cli_closed;
  case A_SERVER_CLOSE:
    return t->srv_closed && t->cli_down;
  case A_STREAM_CLOSE:
    return 1;
  default: /* the session is lost */
    return t->cli_down;
  }
}

static int all_after_action(mx *t) {
  return busy_done(t) && idle_done(t) && action_done(t);
}

static int tunnel_closed(mx *t) { return t->cli_closed && t->srv_closed; }

static void expect_within(mx *t, int (*pred)(mx *), uint64_t ms,
                          const char *what) {
  if (mx_wait(t, pred, ms))
    return;
  char d[2048];
  describe(t, d, sizeof d);
  fail_msg("%s: not done %llu ms after the %s:\n%s", t->c->name,
           (unsigned long long)ms, what, d);
}

static void client_close(mx *t) {
  if (t->cli_close_called)
    return;
  t->cli_close_called = 1;
  assert_int_equal(tunnel_client_close(t->cli, on_client_closed, t), 0);
}

static void server_close(mx *t) {
  if (t->srv_close_called)
    return;
  t->srv_close_called = 1;
  assert_int_equal(tunnel_server_close(t->srv, on_server_closed, t), 0);
}

static int64_t unix_now(void) { return (int64_t)time(NULL); }

static int login_second_passed(mx *t) { return unix_now() > t->login_unix; }

/* A raw connection logs in with the client's run id (frp framing, signed
 * with a fresh timestamp), as the same client reconnecting would. */
static void replacing_login(mx *t) {
  /* The server takes a login with a run id in use only if it is newer
   * than the one it replaces (an older or equal one could be a replay). */
  if (!mx_wait(t, login_second_passed, 3000))
    fail_msg("the wall clock did not advance");
  t->t_action = now_ms(t);
  int64_t ts = unix_now();
  char num[32], key[33];
  int nl = snprintf(num, sizeof num, "%lld", (long long)ts);
  size_t tl = strlen(TOKEN);
  unsigned char in[64], d[16];
  memcpy(in, TOKEN, tl);
  memcpy(in + tl, num, (size_t)nl);
  assert_int_equal(md5_digest(in, tl + (size_t)nl, d), 0);
  for (int i = 0; i < 16; i++)
    snprintf(key + 2 * i, 3, "%02x", d[i]);
  char body[512];
  snprintf(body, sizeof body,
           "{\"version\":\"0.61.0\",\"hostname\":\"close-matrix\","
           "\"os\":\"linux\",\"arch\":\"amd64\",\"privilege_key\":\"%s\","
           "\"timestamp\":%lld,\"run_id\":\"%s\",\"pool_count\":0}",
           key, (long long)ts, t->run_id);
  t->raw_login = it_atk_new(&t->loop, &t->atks, "replacing login",
                            t->srv_port, 0);
  it_frp(&t->raw_login->tx, 'o', body);
}

/* The LoginResp the server sent the replacing login: 1 accepted, -1
 * refused, 0 not (completely) there. */
static int replacing_login_answer(mx *t, char *err, size_t errsz) {
  const it_atk *a = t->raw_login;
  err[0] = '\0';
  if (a->rx.len < 9)
    return 0;
  uint64_t len = it_get_be(a->rx.p + 1, 8);
  if (a->rx.p[0] != '1' || len > 4096)
    return -1;
  if (a->rx.len < 9 + len)
    return 0;
  char body[4097];
  memcpy(body, a->rx.p + 9, (size_t)len);
  body[len] = '\0';
  const char *e = strstr(body, "\"error\":\"");
  if (e && e[9] != '"') {
    snprintf(err, errsz, "%s", e + 9);
    return -1;
  }
  return 1;
}

static void do_action(mx *t) {
  t->t_action = now_ms(t);
  t->watch_peers = 1;
  switch (t->c->action) {
  case A_CLIENT_CLOSE:
    client_close(t);
    break;
  case A_SERVER_CLOSE:
    server_close(t);
    break;
  case A_PROXY_CLOSE: {
    assert_int_equal(tunnel_proxy_close(t->px), 0);
    t->px = NULL;
    /* Joined visitors carry on without their proxy. */
    mx_sleep(t, 300);
    char d[2048];
    if (anything_ended(t)) {
      describe(t, d, sizeof d);
      fail_msg("tunnel_proxy_close ended joined visitors:\n%s", d);
    }
    client_close(t);
    break;
  }
  case A_STREAM_CLOSE:
    acc_close(busy_acc(t));
    break;
  case A_HEARTBEAT:
    relay_freeze_up(t->rl);
    break;
  case A_RESET:
    fprintf(stderr, "# reset %d connection pair(s)\n",
            relay_reset_all(t->rl));
    break;
  case A_REPLACE:
    replacing_login(t);
    break;
  }
}

/* Closes the test's own handles and checks that the loop can close. */
static void test_handles_close(mx *t) {
  for (ep *e = t->eps; e; e = e->next)
    ep_close(e);
  if (t->service)
    uv_close((uv_handle_t *)&t->service->tcp, service_closed);
  if (t->rl)
    relay_close(t->rl);
  for (it_atk *a = t->atks; a; a = a->next)
    it_atk_close(a);
  uv_close((uv_handle_t *)&t->tick, NULL);
  int rc = it_waiter_finish(&t->w, CLOSE_MS);
  if (rc != 0)
    fail_msg("the loop cannot close (%s): a handle is still open",
             uv_err_name(rc));
}

static void mx_free(mx *t) {
  while (t->eps) {
    ep *e = t->eps;
    t->eps = e->next;
    free(e);
  }
  while (t->accs) {
    acc *a = t->accs;
    t->accs = a->next;
    free(a);
  }
  free(t->service);
  if (t->rl)
    relay_free(t->rl);
  it_atk_free_all(&t->atks);
  free(t);
}

static int passive_closed(mx *t) {
  for (acc *a = t->accs; a; a = a->next)
    if (a->passive && !a->closed)
      return 0;
  return 1;
}

/* Closes whatever tunnel object is still open, checks the library returned
 * all its memory, then closes the test's handles and the loop. */
static int tunnel_and_held_closed(mx *t) {
  return tunnel_closed(t) && passive_closed(t);
}

static void finish(mx *t) {
  for (acc *a = t->accs; a; a = a->next)
    if (a->stray_cancel)
      fail_msg("%s: a write callback reported TUNNEL_ECANCELED although the "
               "program had not closed the stream (uv.h: ECANCELED means "
               "\"the stream was closed first\")",
               a->name);
  uint64_t t0 = now_ms(t);
  /* A held stream is closed late, after its client (which may wait for it:
   * handed streams stay valid until the program closes them). */
  for (acc *a = t->accs; a; a = a->next)
    if (a->passive)
      acc_close(a);
  client_close(t);
  server_close(t);
  if (!mx_wait(t, tunnel_and_held_closed, CLOSE_MS)) {
    char d[2048];
    describe(t, d, sizeof d);
    fail_msg("%s: not all closed %u ms after closing client, server and "
             "held streams:\n%s",
             t->c->name, CLOSE_MS, d);
  }
  uint64_t took = now_ms(t) - t0;
  if (t->mem.cur != 0)
    fail_msg("the library kept %zu bytes of its allocator's memory",
             t->mem.cur);
  test_handles_close(t);
  fprintf(stderr, "# final close in %llu ms; library memory peak %zu bytes\n",
          (unsigned long long)took, t->mem.peak);
}

static mx *mx_new(const mcase *c) {
  mx *t = calloc(1, sizeof *t);
  assert_non_null(t);
  t->c = c;
  assert_int_equal(uv_loop_init(&t->loop), 0);
  it_waiter_init(&t->w, &t->loop);
  uv_timer_init(&t->loop, &t->tick);
  t->tick.data = t;
  uv_timer_start(&t->tick, tick_cb, 20, 20);
  it_pick_range(&t->lo, &t->hi);
  return t;
}

static void run_matrix_case(mx *t) {
  const mcase *c = t->c;
  tunnel_up(t);
  load_up(t);
  do_action(t);
  uint64_t bound = c->action == A_HEARTBEAT ? HB_BOUND_MS : CLOSE_MS;
  if (c->action == A_STREAM_CLOSE) {
    expect_within(t, busy_done, bound, "stream close");
    char d[2048];
    acc *idle = idle_acc(t);
    if (t->idle_visitor->ended || idle->ended || idle->close_called ||
        t->cli_down) {
      describe(t, d, sizeof d);
      fail_msg("closing one accepted stream ended others:\n%s", d);
    }
    fprintf(stderr, "# busy visitor ended %lld ms after the stream close\n",
            since_action(t, t->busy_visitor->end_ms));
    /* The rest goes with the client. */
    t->t_action = now_ms(t);
    client_close(t);
    expect_within(t, all_after_action, CLOSE_MS, "client close");
  } else {
    expect_within(t, all_after_action, bound, action_names[c->action]);
  }
  if (c->action == A_REPLACE) {
    char err[256];
    int ans = replacing_login_answer(t, err, sizeof err);
    if (ans != 1)
      fail_msg("the replacing login was %s %s", ans ? "refused:" : "not answered",
               err);
  }
  uint64_t last = t->t_action;
  for (ep *e = t->eps; e; e = e->next)
    if (e->end_ms > last)
      last = e->end_ms;
  for (acc *a = t->accs; a; a = a->next)
    if (a->closed_ms > last)
      last = a->closed_ms;
  fprintf(stderr, "# %s: every connection and stream ended within %lld ms "
                  "of the %s\n",
          c->name, since_action(t, last), action_names[c->action]);
  finish(t);
}

/* --------------------------------------------------------- first bytes */

static int round_echoed(mx *t) {
  ep *v = t->busy_visitor;
  return v->ended || v->rx >= v->first_len;
}

static int round_stream_closed(mx *t) {
  return t->naccs > 0 && t->acc_by_order[t->naccs - 1]->closed;
}

static void run_first_bytes(mx *t) {
  tunnel_up(t);
  for (int i = 0; i < FIRST_BYTES_ROUNDS; i++) {
    ep *v = ep_new(t, "visitor", 1, 0);
    v->first_len = (size_t)snprintf(
        v->first, sizeof v->first,
        "visitor %d writes this at once, before any work connection "
        "exists\n",
        i + 1);
    t->busy_visitor = v;
    struct sockaddr_in a;
    assert_int_equal(uv_ip4_addr("127.0.0.1", t->pub, &a), 0);
    v->creq.data = v;
    assert_int_equal(uv_tcp_connect(&v->creq, &v->tcp,
                                    (const struct sockaddr *)&a, ep_connected),
                     0);
    uint64_t t0 = now_ms(t);
    mx_wait(t, round_echoed, CLOSE_MS);
    if (v->rx < v->first_len) {
      acc *s = t->naccs > i ? t->acc_by_order[i] : NULL;
      fail_msg("round %d: %zu bytes sent on connect, %llu echoed back within "
               "%u ms (visitor %s; the accepted stream %s, received %llu "
               "bytes)",
               i + 1, v->first_len, (unsigned long long)v->rx, CLOSE_MS,
               ep_how(v), s ? "exists" : "was never accepted",
               (unsigned long long)(s ? s->rx : 0));
    }
    if (memcmp(v->rx_small, v->first, v->first_len) != 0)
      fail_msg("round %d: echoed bytes differ:\nsent: %s\ngot:  %s", i + 1,
               v->first, v->rx_small);
    fprintf(stderr, "# round %d: first bytes echoed in %llu ms\n", i + 1,
            (unsigned long long)(now_ms(t) - t0));
    /* The visitor leaves; the handler sees EOF and closes its stream. */
    ep_close(v);
    if (!mx_wait(t, round_stream_closed, CLOSE_MS))
      fail_msg("round %d: the accepted stream did not end within %u ms of "
               "the visitor's close",
               i + 1, CLOSE_MS);
    t->busy_visitor = NULL;
  }
  assert_int_equal(t->naccs, FIRST_BYTES_ROUNDS);
  t->t_action = now_ms(t);
  finish(t);
}

/* ---------------------------------------------------------------- main */

static void run_case(void **state) {
  const mcase *c = *state;
  if (c->action == A_STREAM_CLOSE && !c->accept) {
    /* A local-forward proxy hands no stream to the program. */
    skipped = 1;
    skip();
  }
  mx *t = mx_new(c);
  if (c->action == A_FIRST_BYTES)
    run_first_bytes(t);
  else
    run_matrix_case(t);
  mx_free(t);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CASE\n", argv[0]);
    return 2;
  }
  static mcase c;
  if (parse_case(argv[1], &c) != 0) {
    fprintf(stderr, "no case named %s\n", argv[1]);
    return 2;
  }
  /* Endpoints write to connections the tunnel closes: that must fail with
   * EPIPE, not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  const char *lv = getenv("IT_LOG");
  if (lv && *lv)
    log_level = atoi(lv);
  for (size_t i = 0; i < sizeof filler; i++)
    filler[i] = (uint8_t)(i * 131u + 7u);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_prestate(run_case, &c),
  };
  int failed = cmocka_run_group_tests_name(c.name, tests, NULL, NULL);
  return failed ? 1 : skipped ? 77 : 0;
}
