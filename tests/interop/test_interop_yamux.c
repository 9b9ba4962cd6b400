/* Our yamux (tunnel__mux over libuv) against HashiCorp's Go yamux, over a
 * real loopback TCP connection. The Go half is yamux_peer.go, spawned with
 * the ephemeral port we listen on; its header describes its side.
 *
 * Each scenario, with either side as yamux client (both stream-id parities):
 *  - a 32 MiB stream each way, content checked against a shared generator;
 *    the Go-opened one ends with FIN (we must see EOF), the one we open ends
 *    with our FIN and Go answers with its count and FNV-1a after it (writing
 *    after the peer's half-close);
 *  - 100 concurrent echo streams opened by us (Go echoes after EOF) and 100
 *    opened by Go (length-prefixed; we echo with read_stop/read_start
 *    backpressure, then half-close);
 *  - pings both ways while the data flows;
 *  - every stream ends with a FIN each way, so the session must forget all
 *    of them (no resets), and Go must exit 0.
 *
 * Failures inside loop callbacks are recorded and the scenario is torn down
 * from a timer callback (kill the peer, close streams, session, handles), so
 * that even a failing run ends with uv_loop_close() == 0 and no leak. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "config.h"
#include "tunnel/uv.h"
#include "uv/mux.h"
#include "uv/stream.h" /* to check the session forgot a stream */

#define HDR_SIZE 16
#define REPLY_SIZE 17
#define BULK_SIZE (32u << 20)
#define N_ECHO 100
#define ECHO_MIN 1024u
#define ECHO_MAX (512u * 1024u)
#define CHUNK (64u * 1024u)
/* A sender keeps at most this many chunk writes unacknowledged (1 MiB). */
#define MAX_WRITES 16
/* Echo backpressure: stop reading while this much waits in the stream's
 * queue, resume below the low mark. Lower than the 1 MiB a real proxy would
 * use so that it engages with these stream sizes. */
#define ECHO_HIGH (256u * 1024u)
#define ECHO_LOW (64u * 1024u)
#ifndef SCENARIO_TIMEOUT_MS
#define SCENARIO_TIMEOUT_MS 60000
#endif
#define PEER_TIMEOUT "50s"
#define PING_START 0x5eed0001u
#define PING_MIDWAY 0xc0ffee02u

static const char *peer_path;

/* ------------------------------------------ generator and checksum */

/* Mirrored in yamux_peer.go. */
static uint64_t seed_for(int kind, uint32_t index, int go_opened) {
  uint64_t x = ((uint64_t)(uint8_t)kind << 56) | index;
  if (go_opened)
    x |= (uint64_t)1 << 48;
  x = x * 0x9E3779B97F4A7C15u + 0x632BE59BD9B4E019u;
  return x ? x : 1;
}

typedef struct gen {
  uint64_t x;
  uint8_t buf[8];
  unsigned pos;
} gen;

static void gen_init(gen *g, uint64_t seed) {
  g->x = seed;
  g->pos = 8;
}

static void gen_fill(gen *g, uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (g->pos == 8) {
      g->x ^= g->x << 13;
      g->x ^= g->x >> 7;
      g->x ^= g->x << 17;
      for (unsigned k = 0; k < 8; k++)
        g->buf[k] = (uint8_t)(g->x >> (8 * k));
      g->pos = 0;
    }
    p[i] = g->buf[g->pos++];
  }
}

#define FNV_OFFSET 0xcbf29ce484222325u
#define FNV_PRIME 0x100000001b3u

static uint64_t fnv_update(uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * FNV_PRIME;
  return h;
}

typedef struct verifier {
  gen g;
  uint64_t n;
  int bad;
  uint64_t bad_at;
} verifier;

static void verify_init(verifier *v, uint64_t seed) {
  gen_init(&v->g, seed);
  v->n = 0;
  v->bad = 0;
  v->bad_at = 0;
}

static void verify_update(verifier *v, const uint8_t *p, size_t n) {
  uint8_t exp[4096];
  while (n) {
    size_t k = n < sizeof exp ? n : sizeof exp;
    gen_fill(&v->g, exp, k);
    if (!v->bad && memcmp(p, exp, k) != 0) {
      size_t i = 0;
      while (p[i] == exp[i])
        i++;
      v->bad = 1;
      v->bad_at = v->n + i;
    }
    v->n += k;
    p += k;
    n -= k;
  }
}

static uint64_t be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

static void put_header(uint8_t *h, int kind, uint32_t index, uint64_t len) {
  memset(h, 0, HDR_SIZE);
  h[0] = (uint8_t)kind;
  for (int i = 0; i < 4; i++)
    h[4 + i] = (uint8_t)(index >> (24 - 8 * i));
  for (int i = 0; i < 8; i++)
    h[8 + i] = (uint8_t)(len >> (56 - 8 * i));
}

static uint32_t echo_size(uint32_t i) {
  return ECHO_MIN + i * (ECHO_MAX - ECHO_MIN) / (N_ECHO - 1);
}

/* ------------------------------------------------------------- state */

typedef struct scenario scenario;

typedef struct sctx {
  scenario *sc;
  tunnel_stream *st;
  struct sctx *prev, *next;
  int kind; /* 0 until a Go-opened stream's header has arrived */
  uint32_t index;
  uint64_t length;
  uint8_t hdr[HDR_SIZE];
  size_t hdr_len;
  uint8_t reply[REPLY_SIZE];
  size_t reply_len;
  verifier v; /* what we receive */
  gen tx;     /* what we send (streams we open) */
  uint64_t sent;
  uint64_t tx_fnv;
  int writes; /* chunk writes not yet acknowledged */
  uint64_t echoed;
  int paused;
  int eof, shut_started, shut_done, closing;
} sctx;

struct scenario {
  const char *name;
  int go_is_client;
  uint32_t window; /* both sides; 0: Go's default (256 KiB) */

  uv_loop_t loop;
  tunnel__sched sched;
  tunnel_config *cfg;
  uv_tcp_t listener;
  uv_process_t proc;
  uv_timer_t watchdog;
  uv_timer_t kick; /* runs decisions outside library callbacks */
  tunnel__mux *mux;
  int listener_closed, mux_closed, proc_exited, finished, aborting;
  int64_t exit_status;
  int watchdog_fired;

  sctx *streams;
  int live;

  int c_bulk_done, c_echo_done, g_bulk_done, g_echo_done;
  int g_done;
  int ping_midway_sent, pings_ok, pings_seen;

  size_t max_echo_queue;
  int pauses;
  uint64_t t0;

  int failed;
  char failure[512];
};

static void kick_cb(uv_timer_t *t);

/* The library's warnings (why a session was cut, say) go to the test log. */
static void log_sink(int level, const char *msg, void *ud) {
  scenario *sc = ud;
  fprintf(stderr, "[%s] libtunnel %s: %s\n", sc->name,
          tunnel_log_level_name(level), msg);
}

/* Asks kick_cb to run on the next loop iteration. */
static void kick(scenario *sc) {
  if (!sc->finished)
    uv_timer_start(&sc->kick, kick_cb, 0, 0);
}

static void sc_fail(scenario *sc, const char *fmt, ...) {
  if (!sc->failed) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sc->failure, sizeof sc->failure, fmt, ap);
    va_end(ap);
    sc->failed = 1;
    fprintf(stderr, "[%s] FAIL: %s\n", sc->name, sc->failure);
  }
  kick(sc);
}

/* ------------------------------------------------------- stream ends */

static void close_cb(tunnel_stream *st, void *ud) {
  sctx *c = ud;
  scenario *sc = c->sc;
  (void)st;
  if (c->prev)
    c->prev->next = c->next;
  else
    sc->streams = c->next;
  if (c->next)
    c->next->prev = c->prev;
  free(c);
  sc->live--;
  kick(sc);
}

static void close_stream(sctx *c) {
  if (c->closing)
    return;
  c->closing = 1;
  int rc = tunnel_stream_close(c->st, close_cb, c);
  if (rc)
    sc_fail(c->sc, "tunnel_stream_close: %s", tunnel_err_name(rc));
}

/* Closes a stream once a FIN went each way. The session must have forgotten
 * it by then, so that the close sends no reset. */
static void maybe_close(sctx *c) {
  if (!c->eof || !c->shut_done)
    return;
  if (!c->st->forgotten)
    sc_fail(c->sc, "stream %c#%u: FIN both ways, yet the session keeps it",
            c->kind, c->index);
  close_stream(c);
}

static void shut_cb(tunnel_stream *st, int status, void *ud) {
  sctx *c = ud;
  (void)st;
  if (status == TUNNEL_ECANCELED && c->closing)
    return;
  if (status) {
    sc_fail(c->sc, "shutdown: %s", tunnel_err_name(status));
    return;
  }
  c->shut_done = 1;
  maybe_close(c);
}

static void shutdown_stream(sctx *c) {
  if (c->shut_started)
    return;
  c->shut_started = 1;
  int rc = tunnel_stream_shutdown(c->st, shut_cb, c);
  if (rc)
    sc_fail(c->sc, "tunnel_stream_shutdown: %s", tunnel_err_name(rc));
}

static sctx *sctx_new(scenario *sc, tunnel_stream *st) {
  sctx *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->sc = sc;
  c->st = st;
  c->tx_fnv = FNV_OFFSET;
  c->next = sc->streams;
  if (sc->streams)
    sc->streams->prev = c;
  sc->streams = c;
  sc->live++;
  tunnel_stream_set_user_data(st, c);
  return c;
}

/* ------------------------------------------------ streams we open */

static void send_more(sctx *c);

static void chunk_written(tunnel_stream *st, int status, void *ud) {
  sctx *c = ud;
  (void)st;
  c->writes--;
  if (c->closing)
    return;
  if (status) {
    sc_fail(c->sc, "write on stream %c#%u: %s", c->kind, c->index,
            tunnel_err_name(status));
    return;
  }
  send_more(c);
}

/* Generates and writes the next chunks, keeping at most MAX_WRITES
 * outstanding so memory stays bounded whatever the windows. */
static void send_more(sctx *c) {
  uint8_t buf[CHUNK];
  while (c->sent < c->length && c->writes < MAX_WRITES && !c->sc->failed) {
    size_t n =
        c->length - c->sent < CHUNK ? (size_t)(c->length - c->sent) : CHUNK;
    gen_fill(&c->tx, buf, n);
    c->tx_fnv = fnv_update(c->tx_fnv, buf, n);
    int rc = tunnel_stream_write(c->st, buf, n, chunk_written, c);
    if (rc) {
      sc_fail(c->sc, "tunnel_stream_write: %s", tunnel_err_name(rc));
      return;
    }
    c->writes++;
    c->sent += n;
  }
  if (c->sent == c->length)
    shutdown_stream(c);
}

static void c_read_cb(tunnel_stream *st, int status, const uint8_t *data,
                      size_t len, void *ud) {
  sctx *c = ud;
  scenario *sc = c->sc;
  (void)st;
  if (status == 0) {
    if (c->kind == 'B') {
      if (c->reply_len + len > REPLY_SIZE) {
        sc_fail(sc, "bulk reply longer than %d bytes", REPLY_SIZE);
        return;
      }
      memcpy(c->reply + c->reply_len, data, len);
      c->reply_len += len;
    } else {
      verify_update(&c->v, data, len);
    }
    return;
  }
  if (status != TUNNEL_EEOF) {
    sc_fail(sc, "stream %c#%u we opened: %s", c->kind, c->index,
            tunnel_err_name(status));
    return;
  }
  c->eof = 1;
  if (!c->shut_done)
    sc_fail(sc, "stream %c#%u: EOF before our FIN was sent", c->kind, c->index);
  if (c->kind == 'B') {
    if (c->reply_len != REPLY_SIZE)
      sc_fail(sc, "bulk reply: %zu bytes", c->reply_len);
    else if (be64(c->reply) != BULK_SIZE || be64(c->reply + 8) != c->tx_fnv ||
             c->reply[16] != 1)
      sc_fail(sc,
              "bulk reply: Go counted %llu bytes, FNV %016llx (ours %016llx), "
              "verdict %d",
              (unsigned long long)be64(c->reply),
              (unsigned long long)be64(c->reply + 8),
              (unsigned long long)c->tx_fnv, c->reply[16]);
    else
      sc->c_bulk_done++;
  } else if (c->v.n != c->length || c->v.bad) {
    sc_fail(sc, "echo #%u: %llu of %llu bytes back, mismatch %d at %llu",
            c->index, (unsigned long long)c->v.n, (unsigned long long)c->length,
            c->v.bad, (unsigned long long)c->v.bad_at);
  } else {
    sc->c_echo_done++;
  }
  maybe_close(c);
}

static void open_stream(scenario *sc, int kind, uint32_t index,
                        uint64_t length) {
  tunnel_stream *st;
  int rc = tunnel__mux_open(sc->mux, &st);
  if (rc) {
    sc_fail(sc, "tunnel__mux_open: %s", tunnel_err_name(rc));
    return;
  }
  sctx *c = sctx_new(sc, st);
  if (!c) {
    tunnel_stream_close(st, NULL, NULL);
    sc_fail(sc, "out of memory");
    return;
  }
  c->kind = kind;
  c->index = index;
  c->length = length;
  gen_init(&c->tx, seed_for(kind, index, 0));
  verify_init(&c->v, seed_for(kind, index, 0));
  uint8_t h[HDR_SIZE];
  put_header(h, kind, index, length);
  if ((rc = tunnel_stream_read_start(st, c_read_cb, c)) != 0 ||
      (rc = tunnel_stream_write(st, h, sizeof h, NULL, NULL)) != 0) {
    sc_fail(sc, "starting stream: %s", tunnel_err_name(rc));
    return;
  }
  send_more(c);
}

/* ------------------------------------------- streams Go opens */

static void g_read_cb(tunnel_stream *st, int status, const uint8_t *data,
                      size_t len, void *ud);

static void echo_written(tunnel_stream *st, int status, void *ud) {
  sctx *c = ud;
  if (c->closing)
    return;
  if (status) {
    sc_fail(c->sc, "echo write: %s", tunnel_err_name(status));
    return;
  }
  if (c->paused && tunnel_stream_write_queue_size(st) <= ECHO_LOW) {
    c->paused = 0;
    int rc = tunnel_stream_read_start(st, g_read_cb, c);
    if (rc)
      sc_fail(c->sc, "read_start: %s", tunnel_err_name(rc));
  }
}

static void g_data(sctx *c, const uint8_t *data, size_t len) {
  scenario *sc = c->sc;
  switch (c->kind) {
  case 'B':
    verify_update(&c->v, data, len);
    if (c->v.n > c->length)
      sc_fail(sc, "Go bulk: more than %llu bytes",
              (unsigned long long)c->length);
    /* A ping queued behind megabytes of data, from inside a read. */
    if (!sc->ping_midway_sent && c->v.n >= BULK_SIZE / 2) {
      sc->ping_midway_sent = 1;
      int rc = tunnel__mux_ping(sc->mux, PING_MIDWAY);
      if (rc)
        sc_fail(sc, "tunnel__mux_ping: %s", tunnel_err_name(rc));
    }
    break;
  case 'E': {
    if (c->echoed + len > c->length) {
      sc_fail(sc, "Go echo #%u: more than the %llu bytes announced", c->index,
              (unsigned long long)c->length);
      return;
    }
    verify_update(&c->v, data, len);
    int rc = tunnel_stream_write(c->st, data, len, echo_written, c);
    if (rc) {
      sc_fail(sc, "echo write: %s", tunnel_err_name(rc));
      return;
    }
    c->echoed += len;
    size_t q = tunnel_stream_write_queue_size(c->st);
    if (q > sc->max_echo_queue)
      sc->max_echo_queue = q;
    if (q > ECHO_HIGH && !c->paused) {
      /* Hold Go back through the window instead of queueing its data. */
      c->paused = 1;
      sc->pauses++;
      tunnel_stream_read_stop(c->st);
    }
    if (c->echoed == c->length)
      shutdown_stream(c);
    break;
  }
  default:
    sc_fail(sc, "Go stream %c: unexpected data after the header", c->kind);
  }
}

static void g_header(sctx *c) {
  scenario *sc = c->sc;
  c->kind = c->hdr[0];
  c->index = (uint32_t)be64(c->hdr) & 0xffffffffu;
  c->length = be64(c->hdr + 8);
  verify_init(&c->v, seed_for(c->kind, c->index, 1));
  switch (c->kind) {
  case 'B':
    if (c->length != BULK_SIZE)
      sc_fail(sc, "Go bulk announces %llu bytes",
              (unsigned long long)c->length);
    break;
  case 'E':
    if (c->length != echo_size(c->index))
      sc_fail(sc, "Go echo #%u announces %llu bytes", c->index,
              (unsigned long long)c->length);
    break;
  case 'D':
    sc->g_done = 1;
    if (c->length != 1)
      sc_fail(sc, "the Go peer reports failed checks (see its stderr)");
    break;
  default:
    sc_fail(sc, "Go stream: unknown kind 0x%02x", c->kind);
  }
}

static void g_read_cb(tunnel_stream *st, int status, const uint8_t *data,
                      size_t len, void *ud) {
  sctx *c = ud;
  scenario *sc = c->sc;
  (void)st;
  if (status == 0) {
    if (c->hdr_len < HDR_SIZE) {
      size_t k = HDR_SIZE - c->hdr_len < len ? HDR_SIZE - c->hdr_len : len;
      memcpy(c->hdr + c->hdr_len, data, k);
      c->hdr_len += k;
      data += k;
      len -= k;
      if (c->hdr_len == HDR_SIZE)
        g_header(c);
    }
    if (len && !sc->failed)
      g_data(c, data, len);
    return;
  }
  if (status != TUNNEL_EEOF) {
    sc_fail(sc, "stream %c#%u Go opened: %s", c->kind ? c->kind : '?', c->index,
            tunnel_err_name(status));
    return;
  }
  c->eof = 1;
  if (c->hdr_len < HDR_SIZE) {
    sc_fail(sc, "Go stream ended inside its header");
    return;
  }
  switch (c->kind) {
  case 'B':
    if (c->v.n != BULK_SIZE || c->v.bad)
      sc_fail(sc, "Go bulk: %llu bytes then EOF, mismatch %d at %llu",
              (unsigned long long)c->v.n, c->v.bad,
              (unsigned long long)c->v.bad_at);
    else
      sc->g_bulk_done++;
    break;
  case 'E':
    /* Go closes only after it has verified our echo. */
    if (c->echoed != c->length || c->v.bad || !c->shut_started)
      sc_fail(sc, "Go echo #%u: EOF after %llu of %llu bytes, mismatch %d",
              c->index, (unsigned long long)c->echoed,
              (unsigned long long)c->length, c->v.bad);
    else
      sc->g_echo_done++;
    break;
  default:
    break;
  }
  /* Half-closed by Go; our direction ends now (echo: already ending). */
  shutdown_stream(c);
  maybe_close(c);
}

/* ---------------------------------------------------------- mux */

static void on_stream(tunnel__mux *m, tunnel_stream *st, void *ud) {
  scenario *sc = ud;
  (void)m;
  sctx *c = sctx_new(sc, st);
  if (!c) {
    tunnel_stream_close(st, NULL, NULL);
    sc_fail(sc, "out of memory");
    return;
  }
  int rc = tunnel_stream_read_start(st, g_read_cb, c);
  if (rc)
    sc_fail(sc, "read_start: %s", tunnel_err_name(rc));
}

static void on_ping(tunnel__mux *m, uint32_t opaque, void *ud) {
  scenario *sc = ud;
  (void)m;
  /* Each answer once, in any order (Go answers from a goroutine each). */
  int i = opaque == PING_START ? 0 : opaque == PING_MIDWAY ? 1 : -1;
  if (i >= 0 && !(sc->pings_seen & (1 << i))) {
    sc->pings_seen |= 1 << i;
    sc->pings_ok++;
  } else {
    sc_fail(sc, "unexpected ping answer %08x", opaque);
  }
  kick(sc);
}

static void on_end(tunnel__mux *m, int err, void *ud) {
  scenario *sc = ud;
  (void)m;
  sc_fail(sc, "session ended early: %s", tunnel_err_name(err));
}

static const tunnel__mux_callbacks mux_cb = {on_stream, on_ping, on_end};

/* ------------------------------------------------------- driving */

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void close_listener(scenario *sc) {
  if (!sc->listener_closed) {
    sc->listener_closed = 1;
    close_handle((uv_handle_t *)&sc->listener);
  }
}

static void kill_peer(scenario *sc) {
  if (!sc->proc_exited) {
    int rc = uv_process_kill(&sc->proc, SIGKILL);
    if (rc && rc != UV_ESRCH)
      fprintf(stderr, "[%s] kill: %s\n", sc->name, uv_strerror(rc));
  }
}

static int all_done(const scenario *sc) {
  return sc->c_bulk_done == 1 && sc->c_echo_done == N_ECHO &&
         sc->g_bulk_done == 1 && sc->g_echo_done == N_ECHO && sc->g_done &&
         sc->pings_ok == 2 && sc->live == 0;
}

/* Every decision that closes things runs here, from the loop, never from
 * inside a library callback. */
static void kick_cb(uv_timer_t *t) {
  scenario *sc = t->data;
  if (sc->finished)
    return;
  if (sc->failed && !sc->aborting) {
    sc->aborting = 1;
    kill_peer(sc);
    close_listener(sc);
    for (sctx *c = sc->streams; c; c = c->next)
      close_stream(c);
    if (!sc->mux_closed) {
      sc->mux_closed = 1;
      tunnel__mux_close(sc->mux);
    }
  }
  if (!sc->mux_closed && all_done(sc)) {
    uint32_t left = tunnel__mux_stream_count(sc->mux);
    if (left)
      sc_fail(sc, "the session still tracks %u streams", left);
    /* Go exits once it sees the session end. */
    sc->mux_closed = 1;
    tunnel__mux_close(sc->mux);
  }
  if (sc->mux_closed && sc->live == 0 && sc->proc_exited) {
    sc->finished = 1;
    close_handle((uv_handle_t *)&sc->watchdog);
    close_handle((uv_handle_t *)&sc->kick);
    tunnel__sched_close(&sc->sched, NULL);
  }
}

static void watchdog_cb(uv_timer_t *t) {
  scenario *sc = t->data;
  if (sc->watchdog_fired++) {
    /* Teardown itself is stuck: give up on a clean loop. */
    fprintf(stderr, "[%s] teardown stuck; stopping the loop\n", sc->name);
    uv_stop(&sc->loop);
    return;
  }
  sc_fail(sc,
          "timed out: C bulk %d, C echoes %d, Go bulk %d, Go echoes %d, "
          "done %d, pings %d, live streams %d",
          sc->c_bulk_done, sc->c_echo_done, sc->g_bulk_done, sc->g_echo_done,
          sc->g_done, sc->pings_ok, sc->live);
  uv_timer_start(&sc->watchdog, watchdog_cb, 10000, 0);
}

static void exit_cb(uv_process_t *p, int64_t status, int sig) {
  scenario *sc = p->data;
  sc->proc_exited = 1;
  sc->exit_status = status;
  close_handle((uv_handle_t *)p);
  if (!sc->aborting && (status != 0 || sig != 0))
    sc_fail(sc, "the Go peer exited with status %lld, signal %d",
            (long long)status, sig);
  else if (!sc->mux_closed)
    sc_fail(sc, "the Go peer exited before we ended the session");
  kick(sc);
}

static void on_connection(uv_stream_t *server, int status) {
  scenario *sc = server->data;
  if (status < 0) {
    sc_fail(sc, "listen: %s", uv_strerror(status));
    return;
  }
  if (sc->mux_closed || sc->listener_closed)
    return;
  int rc = uv_accept(server, (uv_stream_t *)tunnel__mux_tcp(sc->mux));
  if (rc) {
    sc_fail(sc, "accept: %s", uv_strerror(rc));
    return;
  }
  close_listener(sc); /* one connection only */
  if ((rc = tunnel__mux_start(sc->mux, NULL, 0)) != 0) {
    sc_fail(sc, "tunnel__mux_start: %s", tunnel_err_name(rc));
    return;
  }
  if ((rc = tunnel__mux_ping(sc->mux, PING_START)) != 0) {
    sc_fail(sc, "tunnel__mux_ping: %s", tunnel_err_name(rc));
    return;
  }
  open_stream(sc, 'B', 0, BULK_SIZE);
  for (uint32_t i = 0; i < N_ECHO && !sc->failed; i++)
    open_stream(sc, 'E', i, echo_size(i));
}

static void spawn_peer(scenario *sc, int port) {
  char port_s[16], window_s[16], streams_s[16];
  snprintf(port_s, sizeof port_s, "%d", port);
  snprintf(window_s, sizeof window_s, "%u", sc->window);
  snprintf(streams_s, sizeof streams_s, "%d", N_ECHO);
  char *args[] = {(char *)peer_path,
                  "-port", port_s,
                  "-role", sc->go_is_client ? "client" : "server",
                  "-window", window_s,
                  "-streams", streams_s,
                  "-timeout", PEER_TIMEOUT,
                  NULL};
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  uv_process_options_t opt;
  memset(&opt, 0, sizeof opt);
  opt.exit_cb = exit_cb;
  opt.file = peer_path;
  opt.args = args;
  opt.stdio = stdio;
  opt.stdio_count = 3;
  sc->proc.data = sc;
  int rc = uv_spawn(&sc->loop, &sc->proc, &opt);
  if (rc) {
    /* A failed spawn leaves a handle to close, and no process. */
    sc->proc_exited = 1;
    close_handle((uv_handle_t *)&sc->proc);
    sc_fail(sc, "spawning %s: %s", peer_path, uv_strerror(rc));
  }
}

static void walk_close(uv_handle_t *h, void *arg) {
  (void)arg;
  close_handle(h);
}

static void run_scenario(const char *name, int go_is_client, uint32_t window) {
  scenario *sc = calloc(1, sizeof *sc);
  assert_non_null(sc);
  sc->name = name;
  sc->go_is_client = go_is_client;
  sc->window = window;
  sc->t0 = uv_hrtime();

  assert_int_equal(uv_loop_init(&sc->loop), 0);
  assert_int_equal(tunnel__sched_init(&sc->sched, &sc->loop), 0);
  assert_int_equal(uv_timer_init(&sc->loop, &sc->watchdog), 0);
  assert_int_equal(uv_timer_init(&sc->loop, &sc->kick), 0);
  sc->watchdog.data = sc->kick.data = sc;
  /* The kick timer's callback is fixed; kick() restarts it with 0 delay. */
  assert_int_equal(uv_timer_start(&sc->kick, kick_cb, 0, 0), 0);
  assert_int_equal(
      uv_timer_start(&sc->watchdog, watchdog_cb, SCENARIO_TIMEOUT_MS, 0), 0);

  assert_int_equal(tunnel_config_new(&sc->cfg), 0);
  assert_int_equal(
      tunnel_config_set_log(sc->cfg, log_sink, TUNNEL_LOG_WARN, sc), 0);
  if (window)
    assert_int_equal(tunnel_config_set_stream_window(sc->cfg, window), 0);
  else
    assert_int_equal(tunnel_config_set_stream_window(sc->cfg, 256u * 1024u), 0);
  /* The mux owns the transport handle (allocated with libc, the config's
   * default allocator). */
  uv_tcp_t *tcp = malloc(sizeof *tcp);
  assert_non_null(tcp);
  assert_int_equal(uv_tcp_init(&sc->loop, tcp), 0);
  assert_int_equal(tunnel__mux_new(&sc->mux, &sc->loop, &sc->sched, sc->cfg,
                                   !go_is_client, tcp, &mux_cb, sc),
                   0);

  struct sockaddr_in addr;
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  assert_int_equal(uv_tcp_init(&sc->loop, &sc->listener), 0);
  sc->listener.data = sc;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
  assert_int_equal(uv_tcp_bind(&sc->listener, (struct sockaddr *)&addr, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&sc->listener, 1, on_connection),
                   0);
  assert_int_equal(
      uv_tcp_getsockname(&sc->listener, (struct sockaddr *)&bound, &blen), 0);
  spawn_peer(sc, ntohs(((struct sockaddr_in *)&bound)->sin_port));

  uv_run(&sc->loop, UV_RUN_DEFAULT);
  if (!sc->finished) {
    /* Only after the watchdog gave up: close what is left so the loop can
     * still be closed (the mux's memory may leak on this path). */
    kill_peer(sc);
    uv_walk(&sc->loop, walk_close, NULL);
    uv_run(&sc->loop, UV_RUN_DEFAULT);
  }
  int loop_rc = uv_loop_close(&sc->loop);
  tunnel_config_free(sc->cfg);

  double secs = (double)(uv_hrtime() - sc->t0) / 1e9;
  printf("[%s] %s in %.2f s; echo backpressure: %d pauses, largest queue "
         "%zu bytes\n",
         sc->name, sc->failed ? "FAILED" : "passed", secs, sc->pauses,
         sc->max_echo_queue);
  fflush(stdout);

  int failed = sc->failed;
  char msg[sizeof sc->failure];
  memcpy(msg, sc->failure, sizeof msg);
  int finished = sc->finished;
  int64_t status = sc->exit_status;
  free(sc);
  if (failed)
    fail_msg("%s: %s", name, msg);
  assert_true(finished);
  assert_int_equal(status, 0);
  assert_int_equal(loop_rc, 0);
}

/* ------------------------------------------------------------ tests */

static void go_client_6m(void **state) {
  (void)state;
  run_scenario("go-client-6MiB", 1, 6u << 20);
}

static void go_server_6m(void **state) {
  (void)state;
  run_scenario("go-server-6MiB", 0, 6u << 20);
}

/* yamux's default window, and ours at the same minimum. */
static void go_client_256k(void **state) {
  (void)state;
  run_scenario("go-client-256KiB", 1, 0);
}

static void go_server_256k(void **state) {
  (void)state;
  run_scenario("go-server-256KiB", 0, 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PATH-TO-yamux_peer\n", argv[0]);
    return 2;
  }
  peer_path = argv[1];
  /* A peer that dies mid-write must not kill us with SIGPIPE. */
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(go_client_6m),
      cmocka_unit_test(go_server_6m),
      cmocka_unit_test(go_client_256k),
      cmocka_unit_test(go_server_256k),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
