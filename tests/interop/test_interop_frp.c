/* Interoperability with the stock frp 0.46.1 binaries (frps, frpc), over
 * loopback:
 *   - tunnel-client against a stock frps (mux and non-mux, with and without
 *     a work-connection pool, refusals, a restarted frps);
 *   - a stock frpc against tunnel-server (mux and non-mux, signed and
 *     unsigned work connections, pools of 0 and 5, several proxies in one
 *     frpc, heartbeats, a restarted frpc, a wrong token);
 *   - HTTP and HTTPS virtual hosts both ways, multiplexed or not: our
 *     client's http/https proxies on frps's vhost ports, and a stock
 *     frpc's http/https proxies on tunnel-server's (subdomains, custom and
 *     wildcard domains, locations, Host rewrite, basic auth, keep-alive,
 *     request bodies, 404 for unknown names, TLS passed through untouched);
 *   - TLS both ways: tunnel-client --tls --ca against a TLS-only frps with
 *     a certificate from a CA made here, and a stock frpc with tls_enable
 *     against a TLS-only tunnel-server (its generated certificate, and a
 *     CA-signed one that frpc verifies), mux and non-mux.
 * The services behind the tunnel and the visitors in front of it run in
 * this process on one libuv loop: a bulk service and visitor that exchange
 * 32 MiB each way at once, each hashing what it receives, an echo service
 * for 100 concurrent visitors, HTTP services that answer with their name
 * and what they were asked, and a visitor that sends requests (or a TLS
 * ClientHello) step by step. Every login here also exercises the
 * control stream's encryption, which starts right after LoginResp.
 *
 * Children are spawned with uv_spawn and stopped by PID (SIGTERM, then
 * SIGKILL after a bound) at the end of every case, also when it fails; a
 * fatal signal (a timeout of the test runner, the per-case alarm) kills
 * them too. Configuration files live in a mkdtemp directory removed at the
 * end.
 *
 * Usage: test-interop-frp PEERS_DIR TUNNEL_SERVER TUNNEL_CLIENT CASE
 * Exits 77 (skipped) when PEERS_DIR/frps or PEERS_DIR/frpc is missing. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <tunnel/uv.h>
#include <uv.h>

#include "certgen.h"
#include "it_common.h"

#define BULK_BYTES (32u << 20)
#define BULK_CHUNK (256u << 10)
#define BULK_WRITES_IN_FLIGHT 4
#define VISITORS 100
#define MAX_PROCS 10
#define MAX_SVCS 8
#define MAX_FILES 12
#define OUT_CAP (256u << 10)
#define LOG_CAP (256u << 10)
#define READ_BUF (256u << 10)
/* What an HTTP service buffers of one connection's requests, and what the
 * raw visitor keeps of what it receives. */
#define REQ_CAP (64u << 10)
#define RAW_CAP (64u << 10)
#define HEAD_CAP 8192u
/* SIGTERM, then SIGKILL after this. */
#define STOP_MS 3000u
/* Refusals must end our client within this (its usage text: "ends the
 * program with status 1"). */
#define EXIT_MS 5000u
/* One 32 MiB exchange each way: seconds in a release build, more under
 * sanitizers on a loaded machine. */
#define BULK_MS 90000u
/* Backstop for a whole case, below meson's timeout for it. */
#define CASE_ALARM_S 170u

extern char **environ;

static const char *peers_dir, *server_path, *client_path;
static char frps_path[PATH_MAX], frpc_path[PATH_MAX];

/* ---------------------------------------------- fatal-signal cleanup */

/* What a fatal signal must undo, readable from a signal handler. */
static volatile sig_atomic_t g_pids[MAX_PROCS];
static char g_files[MAX_FILES][PATH_MAX];
static volatile sig_atomic_t g_nfiles;
static char g_dir[64];

static void on_fatal_signal(int sig) {
  static const char msg[] =
      "test-interop-frp: fatal signal; killing children by pid\n";
  ssize_t ignored = write(2, msg, sizeof msg - 1);
  (void)ignored;
  for (int i = 0; i < MAX_PROCS; i++)
    if (g_pids[i] > 0)
      kill((pid_t)g_pids[i], SIGKILL);
  for (int i = 0; i < g_nfiles; i++)
    unlink(g_files[i]);
  if (g_dir[0])
    rmdir(g_dir);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* ------------------------------------------------------ test data */

/* The byte stream a bulk sender writes: a function of (seed, offset), so
 * that the receiver's hash can be compared with the sender's stream. */
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15u;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  return x ^ (x >> 31);
}

static void gen_fill(uint64_t seed, uint64_t off, uint8_t *p, size_t n) {
  for (size_t i = 0; i < n;) {
    uint64_t o = off + i;
    uint64_t word = mix64(seed ^ (o >> 3));
    for (unsigned b = (unsigned)(o & 7); b < 8 && i < n; b++, i++)
      p[i] = (uint8_t)(word >> (b * 8));
  }
}

#define FNV_INIT 0xcbf29ce484222325u

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3u;
  return h;
}

static uint64_t stream_hash(uint64_t seed, uint64_t len) {
  static uint8_t buf[BULK_CHUNK];
  uint64_t h = FNV_INIT;
  for (uint64_t off = 0; off < len; off += BULK_CHUNK) {
    size_t n = len - off < BULK_CHUNK ? (size_t)(len - off) : BULK_CHUNK;
    gen_fill(seed, off, buf, n);
    h = fnv1a(h, buf, n);
  }
  return h;
}

/* -------------------------------------------------------- context */

typedef struct proc {
  uv_process_t h;
  uv_pipe_t out, err;
  char name[48];
  int slot; /* index in g_pids */
  char obuf[OUT_CAP + 1];
  size_t olen;
  char ebuf[OUT_CAP + 1];
  size_t elen;
  int exited;
  int64_t status;
  int term_signal;
  uint64_t start_ms, exit_ms;
  int out_eof, err_eof;
} proc;

typedef enum role {
  ROLE_ECHO_SVC,
  ROLE_BULK_SVC,
  ROLE_BULK_VISITOR,
  ROLE_ECHO_VISITOR,
  ROLE_HTTP_SVC,
  ROLE_RAW_VISITOR,
} role;

/* Outcome of one side of a bulk exchange. */
typedef struct bulk_result {
  int done, ok;
  uint64_t rcvd, hash;
  char why[160];
} bulk_result;

typedef struct echo_slot {
  struct conn *k;
  int done, ok, err;
  int half_close; /* shut down sending once the line is written */
  int ended, end_err; /* the visitor's read side ended (0: clean EOF) */
  char msg[48];
  size_t len;
  char got[48];
  size_t got_len;
} echo_slot;

struct ctx;

typedef struct service {
  uv_tcp_t listener;
  struct ctx *c;
  role r;
  uint16_t port;
  int accepted;
  int open; /* accepted connections not closed yet */
  uint64_t rx_seed, tx_seed; /* bulk */
  uint64_t echo_rcvd;        /* echo: bytes, clean EOFs, read errors */
  int echo_eofs, echo_errs;
  bulk_result res;           /* bulk: the latest connection */
  /* HTTP: its name (first word of every answer), requests answered, the
   * head of the latest one as it arrived, connections refused as bad. */
  char label[16];
  int requests, http_errs;
  char last_head[HEAD_CAP];
} service;

typedef struct conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  struct ctx *c;
  role r;
  struct conn *prev, *next;
  int closing;
  /* bulk */
  uint64_t tx_seed, rx_seed;
  uint64_t sent, acked, rcvd, hash;
  int writes_in_flight, eof;
  bulk_result *res;
  service *svc; /* accepted by */
  uv_shutdown_t shut;
  /* echo visitor */
  echo_slot *slot;
  /* HTTP service: the requests received and not answered yet */
  char *req;
  size_t req_len;
  /* raw visitor */
  struct rawv *raw;
} conn;

/* One visitor connection driven step by step: bytes sent as the case
 * says, everything received kept (HTTP responses are parsed from it). */
typedef struct rawv {
  conn *k;
  int connected, conn_err, write_err;
  int ended, end_err; /* end_err 0: clean EOF */
  int overflow;
  size_t len;  /* received */
  size_t used; /* of which parsed as complete responses */
  char in[RAW_CAP + 1];
} rawv;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  uv_timer_t tick; /* wakes waits on conditions no loop event signals */
  proc procs[MAX_PROCS];
  int nprocs;
  char **env;
  uint16_t lo, hi;
  uint16_t taken[32];
  int ntaken;
  char token[64];
  service svcs[MAX_SVCS];
  int nsvcs;
  conn *conns; /* open connections */
  echo_slot slots[VISITORS];
  bulk_result visitor_res;
  uint64_t bulk_up_seed, bulk_down_seed; /* visitor->service, back */
  uint8_t rbuf[READ_BUF];
  rawv vis; /* HTTP and TLS cases: one visitor connection at a time */
  /* frps: vhost ports to configure (0: none) */
  uint16_t frps_http, frps_https;
  /* TLS cases: more frps [common] lines, and more flags for our programs */
  char frps_extra[PATH_MAX * 2 + 64];
  const char *client_extra[3];
  const char *server_extra[5];
  /* in-process server (heartbeat case) */
  tunnel_server *srv;
  int srv_closed;
  char srvlog[LOG_CAP + 1];
  size_t srvlog_len;
} ctx;

/* ------------------------------------------------------- failures */

static void tail_print(const char *label, const char *buf, size_t len) {
  size_t keep = 4000;
  const char *from = len > keep ? buf + len - keep : buf;
  fprintf(stderr, "--- %s%s:\n%s%s", label, len > keep ? " (tail)" : "",
          from, len && buf[len - 1] != '\n' ? "\n" : "");
}

static void dump_proc(const proc *p) {
  if (p->exited)
    fprintf(stderr, "=== %s (pid %d): exited, status %lld, signal %d\n",
            p->name, p->h.pid, (long long)p->status, p->term_signal);
  else
    fprintf(stderr, "=== %s (pid %d): running\n", p->name, p->h.pid);
  tail_print("stdout", p->obuf, p->olen);
  tail_print("stderr", p->ebuf, p->elen);
}

static void dump_all(const ctx *c) {
  for (int i = 0; i < c->nprocs; i++)
    dump_proc(&c->procs[i]);
  if (c->srvlog_len)
    tail_print("in-process server log", c->srvlog, c->srvlog_len);
}

#define FAIL(c, ...)                                                           \
  do {                                                                         \
    dump_all(c);                                                               \
    fail_msg(__VA_ARGS__);                                                     \
  } while (0)

static void on_tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until `cond` holds, re-checking it at least every 20 ms;
 * fails with every child's output if it does not hold within `ms`. */
#define WAIT_FOR(c, cond, ms)                                                  \
  do {                                                                         \
    it_waiter_arm(&(c)->w, (ms));                                              \
    uv_timer_start(&(c)->tick, on_tick, 20, 20);                               \
    while (!(cond) && !(c)->w.fired)                                           \
      uv_run(&(c)->loop, UV_RUN_ONCE);                                         \
    uv_timer_stop(&(c)->tick);                                                 \
    it_waiter_disarm(&(c)->w);                                                 \
    if (!(cond))                                                               \
      FAIL(c, "timed out after %u ms waiting for: %s", (unsigned)(ms),         \
           #cond);                                                             \
  } while (0)

static uint64_t now_ms(ctx *c) {
  uv_update_time(&c->loop);
  return uv_now(&c->loop);
}

/* ------------------------------------------------------- children */

static void on_exit_cb(uv_process_t *h, int64_t status, int sig) {
  proc *p = h->data;
  p->exited = 1;
  p->status = status;
  p->term_signal = sig;
  g_pids[p->slot] = 0;
  uv_update_time(h->loop);
  p->exit_ms = uv_now(h->loop);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  proc *p = h->data;
  (void)hint;
  int is_out = h == (uv_handle_t *)&p->out;
  char *buf = is_out ? p->obuf : p->ebuf;
  size_t len = is_out ? p->olen : p->elen;
  /* Past the cap, output is read into the last byte and dropped. */
  if (len >= OUT_CAP)
    *b = uv_buf_init(buf + OUT_CAP - 1, 1);
  else
    *b = uv_buf_init(buf + len, (unsigned)(OUT_CAP - len));
}

static void on_pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  proc *p = s->data;
  int is_out = s == (uv_stream_t *)&p->out;
  (void)b;
  if (n > 0) {
    size_t *len = is_out ? &p->olen : &p->elen;
    char *buf = is_out ? p->obuf : p->ebuf;
    if (*len < OUT_CAP)
      *len += (size_t)n;
    buf[*len] = '\0';
    return;
  }
  if (n < 0) {
    uv_read_stop(s);
    if (is_out)
      p->out_eof = 1;
    else
      p->err_eof = 1;
  }
}

/* Children get the test's environment without TUNNEL_* variables, so that
 * only the command line configures our programs. */
static char **clean_env(void) {
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + 1, sizeof *env);
  if (!env)
    return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "TUNNEL_", 7) != 0)
      env[k++] = environ[i];
  env[k] = NULL;
  return env;
}

static proc *spawn(ctx *c, const char *name, char **args) {
  assert_true(c->nprocs < MAX_PROCS);
  proc *p = &c->procs[c->nprocs];
  memset(p, 0, sizeof *p);
  p->slot = c->nprocs++;
  snprintf(p->name, sizeof p->name, "%s", name);
  uv_pipe_init(&c->loop, &p->out, 0);
  uv_pipe_init(&c->loop, &p->err, 0);
  p->out.data = p->err.data = p->h.data = p;
  uv_stdio_container_t io[3];
  io[0].flags = UV_IGNORE;
  io[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  io[1].data.stream = (uv_stream_t *)&p->out;
  io[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  io[2].data.stream = (uv_stream_t *)&p->err;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = on_exit_cb;
  o.file = args[0];
  o.args = args;
  o.env = c->env;
  o.stdio_count = 3;
  o.stdio = io;
  p->start_ms = now_ms(c);
  int rc = uv_spawn(&c->loop, &p->h, &o);
  if (rc) {
    p->exited = 1; /* nothing to kill; teardown still closes the handles */
    fail_msg("cannot spawn %s: %s", args[0], uv_strerror(rc));
  }
  g_pids[p->slot] = p->h.pid;
  assert_int_equal(
      uv_read_start((uv_stream_t *)&p->out, on_alloc, on_pipe_read), 0);
  assert_int_equal(
      uv_read_start((uv_stream_t *)&p->err, on_alloc, on_pipe_read), 0);
  return p;
}

/* Exited, and its output read to the end. */
static int proc_done(const proc *p) {
  return p->exited && p->out_eof && p->err_eof;
}

/* Occurrences of `s` in the child's stdout and stderr. */
static int proc_count(const proc *p, const char *s) {
  int n = 0;
  const char *bufs[2] = {p->obuf, p->ebuf};
  for (int i = 0; i < 2; i++)
    for (const char *q = bufs[i]; (q = strstr(q, s)) != NULL; q++)
      n++;
  return n;
}

static int proc_has(const proc *p, const char *s) {
  return proc_count(p, s) > 0;
}

static int count_lines(const char *buf) {
  int n = 0;
  for (; *buf; buf++)
    n += *buf == '\n';
  return n;
}

/* Sends SIGTERM, and SIGKILL if the child is still there after STOP_MS;
 * waits until it is reaped. Returns 0 once it is. */
static int stop_procs(ctx *c, proc **ps, int n) {
  for (int i = n - 1; i >= 0; i--)
    if (!ps[i]->exited)
      uv_process_kill(&ps[i]->h, SIGTERM);
  for (int round = 0; round < 2; round++) {
    it_waiter_arm(&c->w, STOP_MS);
    for (;;) {
      int pending = 0;
      for (int i = 0; i < n; i++)
        pending |= !ps[i]->exited;
      if (!pending)
        break;
      if (c->w.fired)
        break;
      uv_run(&c->loop, UV_RUN_ONCE);
    }
    it_waiter_disarm(&c->w);
    int pending = 0;
    for (int i = 0; i < n; i++) {
      if (ps[i]->exited)
        continue;
      pending = 1;
      if (round == 0) {
        fprintf(stderr, "# %s (pid %d) ignored SIGTERM for %u ms; SIGKILL\n",
                ps[i]->name, ps[i]->h.pid, STOP_MS);
        uv_process_kill(&ps[i]->h, SIGKILL);
      }
    }
    if (!pending)
      return 0;
  }
  return -1;
}

static void stop_proc(ctx *c, proc *p) {
  if (stop_procs(c, &p, 1) != 0)
    FAIL(c, "%s (pid %d) survived SIGKILL", p->name, p->h.pid);
}

/* SIGTERM, and the contract of our programs: a clean exit 0 within
 * EXIT_MS. */
static void term_expect_clean_exit(ctx *c, proc *p) {
  uv_process_kill(&p->h, SIGTERM);
  WAIT_FOR(c, proc_done(p), EXIT_MS);
  if (p->status != 0 || p->term_signal != 0)
    FAIL(c, "%s: SIGTERM should end it with status 0; got status %lld "
            "signal %d",
         p->name, (long long)p->status, p->term_signal);
}

/* ------------------------------------------------- temp directory */

static void make_dir(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/libtunnel-interop.XXXXXX");
  if (!mkdtemp(g_dir)) {
    g_dir[0] = '\0';
    fail_msg("mkdtemp: %s", strerror(errno));
  }
}

/* Writes dir/name and records it for removal; `path` receives its path. */
static void write_file(char *path, size_t cap, const char *name,
                       const char *fmt, ...) {
  assert_true(g_nfiles < MAX_FILES);
  snprintf(path, cap, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "w");
  if (!f)
    fail_msg("cannot create %s: %s", path, strerror(errno));
  snprintf(g_files[g_nfiles], sizeof g_files[0], "%s", path);
  g_nfiles++;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  if (fclose(f) != 0)
    fail_msg("cannot write %s", path);
}

static int remove_dir(void) {
  int ok = 1;
  for (int i = 0; i < g_nfiles; i++)
    if (unlink(g_files[i]) != 0 && errno != ENOENT)
      ok = 0;
  g_nfiles = 0;
  if (g_dir[0] && rmdir(g_dir) != 0) {
    fprintf(stderr, "teardown: rmdir %s: %s\n", g_dir, strerror(errno));
    ok = 0;
  }
  g_dir[0] = '\0';
  return ok;
}

/* ------------------------------------------------------------ ports */

/* A free port in the case's range, not handed out before in this case. */
static uint16_t pick_port(ctx *c) {
  for (int tries = 0; tries < 100; tries++) {
    uint16_t p = it_free_port_in(c->lo, c->hi);
    int dup = p == 0;
    for (int i = 0; i < c->ntaken && !dup; i++)
      dup = c->taken[i] == p;
    if (!dup) {
      assert_true(c->ntaken < (int)(sizeof c->taken / sizeof c->taken[0]));
      c->taken[c->ntaken++] = p;
      return p;
    }
  }
  fail_msg("no free port in %u-%u", c->lo, c->hi);
  return 0;
}

/* Whether a connection to 127.0.0.1:port is refused now (nothing listens).
 * A blocking connect: on loopback it completes or fails at once. */
static int port_refuses(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int refused = connect(fd, (struct sockaddr *)&a, sizeof a) != 0 &&
                errno == ECONNREFUSED;
  close(fd);
  return refused;
}

/* ---------------------------------------------------- connections */

static void conn_closed(uv_handle_t *h) {
  conn *k = h->data;
  ctx *c = k->c;
  if (k->prev)
    k->prev->next = k->next;
  else
    c->conns = k->next;
  if (k->next)
    k->next->prev = k->prev;
  if (k->slot)
    k->slot->k = NULL;
  if (k->svc)
    k->svc->open--;
  if (k->raw)
    k->raw->k = NULL;
  free(k->req);
  free(k);
}

static void conn_close(conn *k) {
  if (k->closing)
    return;
  k->closing = 1;
  uv_close((uv_handle_t *)&k->tcp, conn_closed);
}

static conn *conn_new(ctx *c, role r) {
  conn *k = calloc(1, sizeof *k);
  assert_non_null(k);
  k->c = c;
  k->r = r;
  k->hash = FNV_INIT;
  k->tcp.data = k;
  k->creq.data = k;
  uv_tcp_init(&c->loop, &k->tcp);
  k->next = c->conns;
  if (c->conns)
    c->conns->prev = k;
  c->conns = k;
  return k;
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  conn *k = h->data;
  (void)hint;
  /* Reads are handled before the next allocation: one buffer serves all. */
  *b = uv_buf_init((char *)k->c->rbuf, READ_BUF);
}

typedef struct wreq {
  uv_write_t req;
  conn *k;
  size_t len;
  uint8_t data[];
} wreq;

/* ------------------------------------------------------------- bulk */

static void bulk_finish(conn *k, int ok, const char *fmt, ...) {
  bulk_result *res = k->res;
  if (!res->done) {
    res->done = 1;
    res->ok = ok;
    res->rcvd = k->rcvd;
    res->hash = k->hash;
    if (fmt) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(res->why, sizeof res->why, fmt, ap);
      va_end(ap);
    }
  }
  conn_close(k);
}

/* The service ends once it has sent and received everything (it closes
 * first, so a relay that closes both directions at the first EOF, as frp
 * does, cannot cut the exchange short); the visitor ends at that EOF,
 * having received everything. */
static void bulk_check(conn *k) {
  if (k->closing || k->acked < BULK_BYTES)
    return;
  if (k->r == ROLE_BULK_SVC ? k->rcvd == BULK_BYTES : k->eof)
    bulk_finish(k, 1, NULL);
}

static void bulk_pump(conn *k);

static void bulk_written(uv_write_t *req, int status) {
  wreq *w = req->data;
  conn *k = w->k;
  k->writes_in_flight--;
  if (status == 0)
    k->acked += w->len;
  free(w);
  if (status != 0) {
    if (status != UV_ECANCELED)
      bulk_finish(k, 0, "write failed after %llu bytes: %s",
                  (unsigned long long)k->acked, uv_strerror(status));
    return;
  }
  bulk_pump(k);
  bulk_check(k);
}

static void bulk_pump(conn *k) {
  while (!k->closing && k->writes_in_flight < BULK_WRITES_IN_FLIGHT &&
         k->sent < BULK_BYTES) {
    size_t n = BULK_BYTES - k->sent < BULK_CHUNK
                   ? (size_t)(BULK_BYTES - k->sent)
                   : BULK_CHUNK;
    wreq *w = malloc(sizeof *w + n);
    assert_non_null(w);
    w->k = k;
    w->len = n;
    w->req.data = w;
    gen_fill(k->tx_seed, k->sent, w->data, n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&k->tcp, &b, 1, bulk_written);
    if (rc != 0) {
      free(w);
      bulk_finish(k, 0, "write: %s", uv_strerror(rc));
      return;
    }
    k->sent += n;
    k->writes_in_flight++;
  }
}

static void bulk_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *k = s->data;
  if (n > 0) {
    k->hash = fnv1a(k->hash, (const uint8_t *)b->base, (size_t)n);
    k->rcvd += (uint64_t)n;
    if (k->rcvd > BULK_BYTES)
      bulk_finish(k, 0, "received more than %u bytes", BULK_BYTES);
    else
      bulk_check(k);
    return;
  }
  if (n == UV_EOF) {
    k->eof = 1;
    if (k->r == ROLE_BULK_SVC || k->rcvd != BULK_BYTES)
      bulk_finish(k, 0, "EOF after %llu of %u bytes",
                  (unsigned long long)k->rcvd, BULK_BYTES);
    else
      bulk_check(k);
  } else if (n < 0) {
    bulk_finish(k, 0, "read error after %llu bytes: %s",
                (unsigned long long)k->rcvd, uv_strerror((int)n));
  }
}

/* ------------------------------------------------------------- echo */

static void echo_svc_written(uv_write_t *req, int status) {
  (void)status;
  free(req->data);
}

static void echo_svc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *k = s->data;
  if (n > 0) {
    k->svc->echo_rcvd += (uint64_t)n;
    wreq *w = malloc(sizeof *w + (size_t)n);
    assert_non_null(w);
    w->k = k;
    w->len = (size_t)n;
    w->req.data = w;
    memcpy(w->data, b->base, (size_t)n);
    uv_buf_t out = uv_buf_init((char *)w->data, (unsigned)n);
    if (uv_write(&w->req, s, &out, 1, echo_svc_written) != 0) {
      free(w);
      conn_close(k);
    }
    return;
  }
  if (n < 0) {
    if (n == UV_EOF)
      k->svc->echo_eofs++;
    else
      k->svc->echo_errs++;
    conn_close(k);
  }
}

static void echo_slot_finish(echo_slot *sl, int ok, int err) {
  if (sl->done)
    return;
  sl->done = 1;
  sl->ok = ok;
  sl->err = err;
}

static void echo_vis_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *k = s->data;
  echo_slot *sl = k->slot;
  if (n > 0) {
    if (sl->got_len + (size_t)n > sl->len) {
      echo_slot_finish(sl, 0, 0); /* more than was sent */
      return;
    }
    memcpy(sl->got + sl->got_len, b->base, (size_t)n);
    sl->got_len += (size_t)n;
    if (sl->got_len == sl->len)
      echo_slot_finish(sl, memcmp(sl->got, sl->msg, sl->len) == 0, 0);
    return;
  }
  if (n < 0) {
    sl->ended = 1;
    sl->end_err = n == UV_EOF ? 0 : (int)n;
    echo_slot_finish(sl, 0, sl->end_err);
    uv_read_stop(s);
  }
}

static void echo_vis_shut(uv_shutdown_t *req, int status) {
  conn *k = req->data;
  if (status != 0 && status != UV_ECANCELED && k->slot)
    echo_slot_finish(k->slot, 0, status);
}

static void echo_vis_written(uv_write_t *req, int status) {
  conn *k = req->data;
  if (status != 0 && status != UV_ECANCELED)
    echo_slot_finish(k->slot, 0, status);
  else if (status == 0 && k->slot->half_close) {
    k->shut.data = k;
    if (uv_shutdown(&k->shut, (uv_stream_t *)&k->tcp, echo_vis_shut) != 0)
      echo_slot_finish(k->slot, 0, UV_EIO);
  }
  free(req);
}

static void visitor_connected(uv_connect_t *req, int status) {
  conn *k = req->data;
  if (status != 0) {
    if (k->r == ROLE_BULK_VISITOR)
      bulk_finish(k, 0, "connect: %s", uv_strerror(status));
    else
      echo_slot_finish(k->slot, 0, status);
    conn_close(k);
    return;
  }
  if (k->r == ROLE_BULK_VISITOR) {
    uv_read_start((uv_stream_t *)&k->tcp, conn_alloc, bulk_read);
    bulk_pump(k);
    return;
  }
  uv_write_t *w = malloc(sizeof *w);
  assert_non_null(w);
  w->data = k;
  uv_buf_t b = uv_buf_init(k->slot->msg, (unsigned)k->slot->len);
  if (uv_write(w, (uv_stream_t *)&k->tcp, &b, 1, echo_vis_written) != 0) {
    free(w);
    echo_slot_finish(k->slot, 0, UV_EIO);
    return;
  }
  uv_read_start((uv_stream_t *)&k->tcp, conn_alloc, echo_vis_read);
}

static conn *visitor_start(ctx *c, role r, uint16_t port) {
  conn *k = conn_new(c, r);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  int rc = uv_tcp_connect(&k->creq, &k->tcp, (struct sockaddr *)&a,
                          visitor_connected);
  if (rc != 0) {
    conn_close(k);
    fail_msg("connect to %u: %s", port, uv_strerror(rc));
  }
  return k;
}

/* ------------------------------------------------------------- HTTP */

/* The value of header `name` in an HTTP head (first line skipped), name
 * matched without case, surrounding blanks trimmed, copied to out. Returns
 * how many times the header occurs (0: out is ""). */
static int head_value(const char *head, const char *name, char *out,
                      size_t cap) {
  int found = 0;
  size_t nl = strlen(name);
  out[0] = '\0';
  const char *line = strstr(head, "\r\n");
  while (line && line[2] != '\r' && line[2] != '\0') {
    line += 2;
    const char *end = strstr(line, "\r\n");
    if (!end)
      break;
    if ((size_t)(end - line) > nl && line[nl] == ':' &&
        strncasecmp(line, name, nl) == 0) {
      const char *v = line + nl + 1;
      while (v < end && (*v == ' ' || *v == '\t'))
        v++;
      const char *ve = end;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
      if (!found++)
        snprintf(out, cap, "%.*s", (int)(ve - v), v);
    }
    line = end;
  }
  return found;
}

static void http_svc_written(uv_write_t *req, int status) {
  (void)status;
  free(req->data);
}

/* Answers every complete request (head plus Content-Length body) with 200
 * and the body "LABEL METHOD TARGET BODYLEN\n" followed by the request's
 * body, so a visitor can tell which service answered what, and that the
 * body went through whole. */
static void http_svc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *k = s->data;
  service *svc = k->svc;
  if (n < 0) {
    conn_close(k);
    return;
  }
  if (k->req_len + (size_t)n > REQ_CAP) {
    svc->http_errs++;
    conn_close(k);
    return;
  }
  memcpy(k->req + k->req_len, b->base, (size_t)n);
  k->req_len += (size_t)n;
  for (;;) {
    const char *e = memmem(k->req, k->req_len, "\r\n\r\n", 4);
    if (!e)
      return;
    size_t head_len = (size_t)(e + 4 - k->req);
    char head[HEAD_CAP];
    if (head_len >= sizeof head) {
      svc->http_errs++;
      conn_close(k);
      return;
    }
    memcpy(head, k->req, head_len);
    head[head_len] = '\0';
    char v[32], te[32];
    size_t body_len = 0;
    if (head_value(head, "Content-Length", v, sizeof v) > 1 ||
        head_value(head, "Transfer-Encoding", te, sizeof te)) {
      svc->http_errs++; /* never sent by these cases */
      conn_close(k);
      return;
    }
    if (v[0])
      body_len = strtoul(v, NULL, 10);
    if (k->req_len < head_len + body_len)
      return;
    char method[16], target[256];
    if (sscanf(head, "%15s %255s HTTP/1.", method, target) != 2) {
      svc->http_errs++;
      conn_close(k);
      return;
    }
    svc->requests++;
    snprintf(svc->last_head, sizeof svc->last_head, "%s", head);
    char first[320];
    int fl = snprintf(first, sizeof first, "%s %s %s %zu\n", svc->label,
                      method, target, body_len);
    char rh[128];
    int rl = snprintf(rh, sizeof rh,
                      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      (size_t)fl + body_len);
    wreq *w = malloc(sizeof *w + (size_t)rl + (size_t)fl + body_len);
    assert_non_null(w);
    w->k = k;
    w->len = (size_t)rl + (size_t)fl + body_len;
    w->req.data = w;
    memcpy(w->data, rh, (size_t)rl);
    memcpy(w->data + rl, first, (size_t)fl);
    memcpy(w->data + rl + fl, k->req + head_len, body_len);
    uv_buf_t out = uv_buf_init((char *)w->data, (unsigned)w->len);
    if (uv_write(&w->req, s, &out, 1, http_svc_written) != 0) {
      free(w);
      conn_close(k);
      return;
    }
    memmove(k->req, k->req + head_len + body_len,
            k->req_len - head_len - body_len);
    k->req_len -= head_len + body_len;
  }
}

/* ------------------------------------------------------ raw visitor */

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *k = s->data;
  rawv *x = k->raw;
  if (!x)
    return;
  if (n > 0) {
    size_t m = (size_t)n;
    if (m > RAW_CAP - x->len) {
      m = RAW_CAP - x->len;
      x->overflow = 1;
    }
    memcpy(x->in + x->len, b->base, m);
    x->len += m;
    x->in[x->len] = '\0';
    return;
  }
  if (n < 0) {
    x->ended = 1;
    x->end_err = n == UV_EOF ? 0 : (int)n;
    uv_read_stop(s);
  }
}

static void raw_connected(uv_connect_t *req, int status) {
  conn *k = req->data;
  rawv *x = k->raw;
  if (!x)
    return;
  if (status != 0) {
    x->conn_err = status;
    conn_close(k);
    return;
  }
  x->connected = 1;
  uv_read_start((uv_stream_t *)&k->tcp, conn_alloc, raw_read);
}

/* Closes the visitor connection, if open, and waits until it is. */
static void raw_close(ctx *c) {
  rawv *x = &c->vis;
  if (x->k)
    conn_close(x->k);
  WAIT_FOR(c, x->k == NULL, IT_WAIT_MS);
}

/* A new visitor connection to 127.0.0.1:port, connected on return. */
static void raw_open(ctx *c, uint16_t port) {
  raw_close(c);
  rawv *x = &c->vis;
  memset(x, 0, sizeof *x);
  conn *k = conn_new(c, ROLE_RAW_VISITOR);
  k->raw = x;
  x->k = k;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  int rc = uv_tcp_connect(&k->creq, &k->tcp, (struct sockaddr *)&a,
                          raw_connected);
  if (rc != 0) {
    conn_close(k);
    fail_msg("connect to %u: %s", port, uv_strerror(rc));
  }
  WAIT_FOR(c, x->connected || x->conn_err, IT_WAIT_MS);
  if (x->conn_err)
    FAIL(c, "connect to %u: %s", port, uv_strerror(x->conn_err));
}

static void raw_written(uv_write_t *req, int status) {
  wreq *w = req->data;
  if (status != 0 && w->k->raw)
    w->k->raw->write_err = status;
  free(w);
}

static void raw_send(ctx *c, const void *data, size_t len) {
  rawv *x = &c->vis;
  if (!x->k)
    FAIL(c, "the visitor connection is closed; cannot send");
  wreq *w = malloc(sizeof *w + len);
  assert_non_null(w);
  w->k = x->k;
  w->len = len;
  w->req.data = w;
  memcpy(w->data, data, len);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&x->k->tcp, &b, 1, raw_written) != 0) {
    free(w);
    FAIL(c, "write to the visitor connection failed");
  }
}

/* A response parsed from what the visitor received. */
typedef struct http_resp {
  int status; /* 0: the connection ended before a whole response */
  char head[HEAD_CAP];
  char body[4096];
  size_t body_len;
} http_resp;

/* Parses one response at x->in + x->used. Returns 1 and advances x->used
 * when one is complete (a body without Content-Length runs to the end of
 * the connection), 0 if more bytes are needed, -1 if it is malformed. */
static int resp_parse(rawv *x, http_resp *r) {
  const char *p = x->in + x->used;
  size_t avail = x->len - x->used;
  const char *e = memmem(p, avail, "\r\n\r\n", 4);
  if (!e)
    return avail >= HEAD_CAP ? -1 : 0;
  size_t head_len = (size_t)(e + 4 - p);
  if (head_len >= sizeof r->head)
    return -1;
  memcpy(r->head, p, head_len);
  r->head[head_len] = '\0';
  unsigned status;
  if (sscanf(r->head, "HTTP/1.%*1[01] %3u", &status) != 1)
    return -1;
  char v[32], te[32];
  size_t body_len;
  if (head_value(r->head, "Transfer-Encoding", te, sizeof te))
    return -1; /* none of the peers here chunks these small answers */
  if (head_value(r->head, "Content-Length", v, sizeof v) == 1) {
    body_len = strtoul(v, NULL, 10);
    if (avail < head_len + body_len)
      return 0;
  } else if (x->ended) {
    body_len = avail - head_len;
  } else {
    return 0;
  }
  if (body_len >= sizeof r->body)
    return -1;
  memcpy(r->body, p + head_len, body_len);
  r->body[body_len] = '\0';
  r->body_len = body_len;
  r->status = (int)status;
  x->used += head_len + body_len;
  return 1;
}

typedef struct resp_wait {
  rawv *x;
  http_resp *r;
  int rc;
} resp_wait;

/* Idempotent: a response parsed once stays parsed. */
static int resp_ready(resp_wait *rw) {
  if (rw->rc == 0)
    rw->rc = resp_parse(rw->x, rw->r);
  return rw->rc != 0 || rw->x->ended || rw->x->write_err;
}

/* Sends `req` on the open visitor connection and waits for the response
 * to it; r->status is 0 if the connection ended first. */
static void http_roundtrip(ctx *c, const char *req, size_t req_len,
                           http_resp *r) {
  memset(r, 0, sizeof *r);
  raw_send(c, req, req_len);
  resp_wait rw = {&c->vis, r, 0};
  WAIT_FOR(c, resp_ready(&rw), IT_WAIT_MS);
  if (rw.rc < 0)
    FAIL(c, "malformed HTTP response: %.200s", c->vis.in + c->vis.used);
  if (rw.rc == 0)
    r->status = 0;
}

/* Formats a request: METHOD TARGET, Host `host`, `extra` header lines
 * (each ending in CRLF, may be ""), and `body` with its Content-Length
 * when not NULL. */
static size_t http_req(char *out, size_t cap, const char *method,
                       const char *host, const char *target,
                       const char *extra, const char *body) {
  int n;
  if (body)
    n = snprintf(out, cap,
                 "%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %zu\r\n"
                 "\r\n%s",
                 method, target, host, extra, strlen(body), body);
  else
    n = snprintf(out, cap, "%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", method,
                 target, host, extra);
  assert_true(n > 0 && (size_t)n < cap);
  return (size_t)n;
}

/* GET `target` with Host `host` on a new connection to `port`, closed
 * afterwards. */
static void http_get(ctx *c, uint16_t port, const char *host,
                     const char *target, const char *extra, http_resp *r) {
  char req[1024];
  size_t n = http_req(req, sizeof req, "GET", host, target, extra, NULL);
  raw_open(c, port);
  http_roundtrip(c, req, n, r);
  raw_close(c);
}

/* The response must be 200 from service `svc` for METHOD TARGET with a
 * body of body_len bytes. */
static void expect_answer(ctx *c, const http_resp *r, const service *svc,
                          const char *method, const char *target,
                          size_t body_len) {
  char want[320];
  snprintf(want, sizeof want, "%s %s %s %zu\n", svc->label, method, target,
           body_len);
  if (r->status != 200 || strncmp(r->body, want, strlen(want)) != 0)
    FAIL(c, "expected 200 with '%.*s' from service %s; got status %d, "
            "head:\n%s\nbody: %.200s",
         (int)strlen(want) - 1, want, svc->label, r->status, r->head,
         r->body);
}

/* The header `name` of the latest request service `svc` got must be
 * `want` (and occur once). */
static void expect_seen(ctx *c, const service *svc, const char *name,
                        const char *want) {
  char v[512];
  int n = head_value(svc->last_head, name, v, sizeof v);
  if (n != 1 || strcmp(v, want) != 0)
    FAIL(c, "service %s: expected one '%s: %s' in the request it got; "
            "found %d, first '%s'. Head:\n%s",
         svc->label, name, want, n, v, svc->last_head);
}

static void base64(const char *in, char *out, size_t cap) {
  static const char tab[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t n = strlen(in), o = 0;
  assert_true((n + 2) / 3 * 4 < cap);
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)(uint8_t)in[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)(uint8_t)in[i + 1] << 8;
    if (i + 2 < n)
      v |= (uint8_t)in[i + 2];
    out[o++] = tab[(v >> 18) & 63];
    out[o++] = tab[(v >> 12) & 63];
    out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < n ? tab[v & 63] : '=';
  }
  out[o] = '\0';
}

/* ------------------------------------------------------------- TLS */

/* A TLS 1.2-framed ClientHello for server name `sni`, with random bytes
 * (32 of them), TLS 1.3 and 1.2 suites, and ALPN h2 and http/1.1: what
 * any TLS client opens with, byte for byte what the service must get. */
static size_t client_hello(uint8_t *out, size_t cap, const char *sni) {
  uint8_t hs[512];
  size_t n = 0, sl = strlen(sni);
  assert_true(sl < 200 && cap >= sizeof hs + 9);
  hs[n++] = 0x03; /* client_version TLS 1.2 */
  hs[n++] = 0x03;
  for (int i = 0; i < 8; i++) {
    uint32_t r = it_random32();
    memcpy(hs + n, &r, 4);
    n += 4;
  }
  hs[n++] = 0; /* no session id */
  static const uint8_t suites[] = {0x00, 0x06, 0x13, 0x01, 0xc0,
                                   0x2f, 0xc0, 0x2b};
  memcpy(hs + n, suites, sizeof suites);
  n += sizeof suites;
  hs[n++] = 1; /* compression: null */
  hs[n++] = 0;
  size_t ext_len_at = n;
  n += 2;
  /* server_name */
  hs[n++] = 0x00;
  hs[n++] = 0x00;
  hs[n++] = (uint8_t)((sl + 5) >> 8);
  hs[n++] = (uint8_t)(sl + 5);
  hs[n++] = (uint8_t)((sl + 3) >> 8);
  hs[n++] = (uint8_t)(sl + 3);
  hs[n++] = 0; /* host_name */
  hs[n++] = (uint8_t)(sl >> 8);
  hs[n++] = (uint8_t)sl;
  memcpy(hs + n, sni, sl);
  n += sl;
  /* application_layer_protocol_negotiation */
  static const uint8_t alpn[] = {0x00, 0x10, 0x00, 0x0e, 0x00, 0x0c,
                                 2,    'h',  '2',  8,    'h',  't',
                                 't',  'p',  '/',  '1',  '.',  '1'};
  memcpy(hs + n, alpn, sizeof alpn);
  n += sizeof alpn;
  size_t ext_len = n - ext_len_at - 2;
  hs[ext_len_at] = (uint8_t)(ext_len >> 8);
  hs[ext_len_at + 1] = (uint8_t)ext_len;
  size_t o = 0;
  out[o++] = 0x16; /* handshake record, TLS 1.0 framing */
  out[o++] = 0x03;
  out[o++] = 0x01;
  out[o++] = (uint8_t)((n + 4) >> 8);
  out[o++] = (uint8_t)(n + 4);
  out[o++] = 0x01; /* client_hello */
  out[o++] = 0;
  out[o++] = (uint8_t)(n >> 8);
  out[o++] = (uint8_t)n;
  memcpy(out + o, hs, n);
  return o + n;
}

/* A ClientHello for `sni` and then some opaque bytes (what encrypted
 * records would be) to the HTTPS port: the service behind it, an echo,
 * must get exactly those bytes, and the visitor must get them back. */
static void check_tls_passthrough(ctx *c, service *echo, uint16_t port,
                                  const char *sni) {
  uint8_t msg[1024];
  size_t n = client_hello(msg, sizeof msg, sni);
  size_t hello = n;
  /* An application_data record of 251 random bytes. */
  static const uint8_t rec[] = {0x17, 0x03, 0x03, 0x00, 0xfb};
  memcpy(msg + n, rec, sizeof rec);
  n += sizeof rec;
  for (size_t end = n + 0xfb; n < end; n++)
    msg[n] = (uint8_t)it_random32();
  uint64_t rcvd = echo->echo_rcvd;
  int accepted = echo->accepted;
  raw_open(c, port);
  raw_send(c, msg, hello);
  /* The rest once the hello made it through, as a TLS client would after
   * the server's answer. */
  WAIT_FOR(c, c->vis.len >= hello || c->vis.ended, IT_WAIT_MS);
  raw_send(c, msg + hello, n - hello);
  WAIT_FOR(c, c->vis.len >= n || c->vis.ended, IT_WAIT_MS);
  if (c->vis.len != n || memcmp(c->vis.in, msg, n) != 0)
    FAIL(c, "TLS passthrough for %s: the visitor got %zu bytes back, %s; "
            "sent %zu",
         sni, c->vis.len,
         c->vis.len <= n && memcmp(c->vis.in, msg, c->vis.len) == 0
             ? "a prefix of what it sent"
             : "not what it sent",
         n);
  if (echo->echo_rcvd - rcvd != n || echo->accepted != accepted + 1)
    FAIL(c, "TLS passthrough for %s: the service got %llu bytes on %d "
            "connections; expected %zu on 1",
         sni, (unsigned long long)(echo->echo_rcvd - rcvd),
         echo->accepted - accepted, n);
  raw_close(c);
  fprintf(stderr, "# TLS for %s: %zu-byte ClientHello and %zu more bytes "
                  "passed through unchanged both ways\n",
          sni, hello, n - hello);
}

/* A ClientHello for a name nobody registered: the connection is closed
 * and no service contacted. libtunnel's server sends nothing back; frps
 * answers with a plain-text HTTP 404 first (its vhost muxer's page), which
 * a TLS client takes for a protocol error: allowed when `our_server` is 0,
 * as that response only. */
static void check_tls_unknown(ctx *c, service *echo, uint16_t port,
                              const char *sni, int our_server) {
  uint8_t msg[1024];
  size_t n = client_hello(msg, sizeof msg, sni);
  int accepted = echo->accepted;
  raw_open(c, port);
  raw_send(c, msg, n);
  WAIT_FOR(c, c->vis.ended, IT_WAIT_MS);
  int answer_ok = c->vis.len == 0 ||
                  (!our_server && strncmp(c->vis.in, "HTTP/1.1 404 ", 13) == 0);
  if (!answer_ok || echo->accepted != accepted)
    FAIL(c, "ClientHello for unknown %s: got %zu bytes back (%.40s), "
            "service accepted %d connections",
         sni, c->vis.len, c->vis.in, echo->accepted - accepted);
  raw_close(c);
}

/* --------------------------------------------------------- services */

static void svc_connection(uv_stream_t *l, int status) {
  service *svc = l->data;
  ctx *c = svc->c;
  if (status != 0)
    return;
  conn *k = conn_new(c, svc->r);
  if (uv_accept(l, (uv_stream_t *)&k->tcp) != 0) {
    conn_close(k);
    return;
  }
  svc->accepted++;
  svc->open++;
  k->svc = svc;
  if (svc->r == ROLE_HTTP_SVC) {
    k->req = malloc(REQ_CAP);
    assert_non_null(k->req);
    uv_read_start((uv_stream_t *)&k->tcp, conn_alloc, http_svc_read);
    return;
  }
  if (svc->r == ROLE_ECHO_SVC) {
    uv_read_start((uv_stream_t *)&k->tcp, conn_alloc, echo_svc_read);
    return;
  }
  memset(&svc->res, 0, sizeof svc->res);
  k->res = &svc->res;
  k->rx_seed = svc->rx_seed;
  k->tx_seed = svc->tx_seed;
  uv_read_start((uv_stream_t *)&k->tcp, conn_alloc, bulk_read);
  bulk_pump(k);
}

static service *svc_start(ctx *c, role r) {
  assert_true(c->nsvcs < MAX_SVCS);
  service *svc = &c->svcs[c->nsvcs++];
  memset(svc, 0, sizeof *svc);
  svc->c = c;
  svc->r = r;
  svc->rx_seed = c->bulk_up_seed;
  svc->tx_seed = c->bulk_down_seed;
  uv_tcp_init(&c->loop, &svc->listener);
  svc->listener.data = svc;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&svc->listener, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(
      uv_listen((uv_stream_t *)&svc->listener, 1024, svc_connection), 0);
  int len = sizeof a;
  assert_int_equal(
      uv_tcp_getsockname(&svc->listener, (struct sockaddr *)&a, &len), 0);
  svc->port = ntohs(a.sin_port);
  return svc;
}

/* An HTTP service on an ephemeral port, answering as `label`. */
static service *http_svc_start(ctx *c, const char *label) {
  service *svc = svc_start(c, ROLE_HTTP_SVC);
  snprintf(svc->label, sizeof svc->label, "%s", label);
  return svc;
}

/* ------------------------------------------------------ the checks */

/* 32 MiB each way at once through public port `port` to the bulk service
 * `svc`; both ends hash what they receive. */
static void check_bulk(ctx *c, service *svc, uint16_t port) {
  uint64_t up = stream_hash(c->bulk_up_seed, BULK_BYTES);
  uint64_t down = stream_hash(c->bulk_down_seed, BULK_BYTES);
  int accepted = svc->accepted;
  memset(&c->visitor_res, 0, sizeof c->visitor_res);
  conn *v = visitor_start(c, ROLE_BULK_VISITOR, port);
  v->res = &c->visitor_res;
  v->tx_seed = c->bulk_up_seed;
  v->rx_seed = c->bulk_down_seed;
  uint64_t t0 = now_ms(c);
  WAIT_FOR(c, c->visitor_res.done, BULK_MS);
  /* The service closes first, so it is done when the visitor is, unless
   * something failed. */
  if (c->visitor_res.ok)
    WAIT_FOR(c, svc->res.done, IT_WAIT_MS);
  uint64_t ms = now_ms(c) - t0;
  if (!svc->res.done || !svc->res.ok || svc->res.hash != up ||
      svc->res.rcvd != BULK_BYTES)
    FAIL(c, "service side of the exchange: %s (got %llu bytes, hash %s)",
         svc->res.done ? (svc->res.why[0] ? svc->res.why : "done")
                       : "never connected",
         (unsigned long long)svc->res.rcvd,
         svc->res.hash == up ? "ok" : "WRONG");
  if (!c->visitor_res.ok || c->visitor_res.hash != down ||
      c->visitor_res.rcvd != BULK_BYTES)
    FAIL(c, "visitor side of the exchange: %s (got %llu bytes, hash %s)",
         c->visitor_res.why[0] ? c->visitor_res.why : "done",
         (unsigned long long)c->visitor_res.rcvd,
         c->visitor_res.hash == down ? "ok" : "WRONG");
  assert_int_equal(svc->accepted, accepted + 1);
  fprintf(stderr, "# 32 MiB each way, hashes match, %llu ms\n",
          (unsigned long long)ms);
}

static int slots_done(const ctx *c, int n) {
  int done = 0;
  for (int i = 0; i < n; i++)
    done += c->slots[i].done;
  return done;
}

static int slots_open(const ctx *c, int n) {
  int open = 0;
  for (int i = 0; i < n; i++)
    open += c->slots[i].k != NULL;
  return open;
}

static int echo_services_open(const ctx *c) {
  int open = 0;
  for (int i = 0; i < c->nsvcs; i++)
    if (c->svcs[i].r == ROLE_ECHO_SVC)
      open += c->svcs[i].open;
  return open;
}

/* `n` visitors at once, spread over `ports`, each sending its own line and
 * waiting for it to come back; all stay connected until every one has its
 * echo. */
static void check_echo(ctx *c, const uint16_t *ports, int nports, int n) {
  assert_true(n <= VISITORS);
  memset(c->slots, 0, sizeof c->slots);
  for (int i = 0; i < n; i++) {
    echo_slot *sl = &c->slots[i];
    sl->len = (size_t)snprintf(sl->msg, sizeof sl->msg,
                               "visitor %03d of %d, %08x\n", i, n,
                               it_random32());
    conn *k = visitor_start(c, ROLE_ECHO_VISITOR, ports[i % nports]);
    k->slot = sl;
    sl->k = k;
  }
  WAIT_FOR(c, slots_done(c, n) == n, IT_WAIT_MS * 2);
  int bad = 0, first = -1;
  for (int i = 0; i < n; i++)
    if (!c->slots[i].ok && bad++ == 0)
      first = i;
  if (bad) {
    echo_slot *sl = &c->slots[first];
    FAIL(c, "%d of %d visitors did not get their echo; visitor %d: %s, got "
            "%zu of %zu bytes",
         bad, n, first, sl->err ? uv_strerror(sl->err) : "wrong or short",
         sl->got_len, sl->len);
  }
  for (int i = 0; i < n; i++)
    if (c->slots[i].k)
      conn_close(c->slots[i].k);
  WAIT_FOR(c, slots_open(c, n) == 0, IT_WAIT_MS);
  /* Every close reaches the services through the tunnel. */
  WAIT_FOR(c, echo_services_open(c) == 0, IT_WAIT_MS);
}

/* A visitor sends a line and half-closes. libtunnel carries a half-close
 * as such (yamux FIN, or TCP FIN in non-mux mode) and keeps the other
 * direction open; the stock frp peer on the other end instead closes both
 * directions at the first EOF, so the echo may or may not make it back.
 * Checked: the service receives the whole line, then its connection ends,
 * and so does the visitor's, each within a bound (nothing is left
 * half-open). Where libtunnel is the side next to a connection, that end
 * must be a clean EOF, not a reset. Behind a stock frpc
 * (`service_behind_frp`), frpc closes the service's connection while the
 * echo may still be arriving, which the kernel may answer with a reset:
 * that is frp's behaviour, so the service may see one there. */
static void check_half_close(ctx *c, service *echo, uint16_t port,
                             int service_behind_frp) {
  uint64_t rcvd = echo->echo_rcvd;
  int eofs = echo->echo_eofs, errs = echo->echo_errs;
  memset(c->slots, 0, sizeof c->slots);
  echo_slot *sl = &c->slots[0];
  sl->half_close = 1;
  sl->len = (size_t)snprintf(sl->msg, sizeof sl->msg, "half-close %08x\n",
                             it_random32());
  conn *k = visitor_start(c, ROLE_ECHO_VISITOR, port);
  k->slot = sl;
  sl->k = k;
  WAIT_FOR(c, sl->ended, IT_WAIT_MS);
  if (sl->end_err)
    FAIL(c, "half-closed visitor: connection ended with %s, not EOF",
         uv_strerror(sl->end_err));
  if (memcmp(sl->got, sl->msg, sl->got_len) != 0)
    FAIL(c, "half-closed visitor: received bytes that are not its echo");
  WAIT_FOR(c, echo->echo_eofs + echo->echo_errs > eofs + errs, IT_WAIT_MS);
  if ((!service_behind_frp && echo->echo_errs != errs) ||
      echo->echo_rcvd - rcvd != sl->len)
    FAIL(c, "service behind a half-closed visitor: got %llu of %zu bytes, "
            "%s",
         (unsigned long long)(echo->echo_rcvd - rcvd), sl->len,
         echo->echo_errs != errs ? "then a read error" : "then EOF");
  fprintf(stderr, "# half-close: service got the line, then %s; visitor got "
                  "%zu of %zu echoed bytes, then EOF\n",
          echo->echo_errs != errs ? "a reset" : "EOF", sl->got_len, sl->len);
  if (sl->k)
    conn_close(sl->k);
  WAIT_FOR(c, slots_open(c, 1) == 0, IT_WAIT_MS);
}

/* -------------------------------------------------------- fixtures */

static int setup(void **state) {
  ctx *c = calloc(1, sizeof *c);
  if (!c)
    return -1;
  if (uv_loop_init(&c->loop) != 0)
    return -1;
  it_waiter_init(&c->w, &c->loop);
  uv_timer_init(&c->loop, &c->tick);
  c->env = clean_env();
  if (!c->env)
    return -1;
  it_pick_range(&c->lo, &c->hi);
  snprintf(c->token, sizeof c->token, "interop-%08x", it_random32());
  c->bulk_up_seed = ((uint64_t)it_random32() << 32) | it_random32();
  c->bulk_down_seed = ((uint64_t)it_random32() << 32) | it_random32();
  *state = c;
  g_nfiles = 0;
  make_dir();
  alarm(CASE_ALARM_S);
  return 0;
}

static void srv_closed_cb(tunnel_server *srv, void *ud) {
  (void)srv;
  ((ctx *)ud)->srv_closed = 1;
}

/* Stops every child still running by PID, closes everything, removes the
 * temp directory. Runs after failed cases too. */
static int teardown(void **state) {
  ctx *c = *state;
  int ok = 1;
  proc *ps[MAX_PROCS];
  for (int i = 0; i < c->nprocs; i++)
    ps[i] = &c->procs[i];
  if (stop_procs(c, ps, c->nprocs) != 0) {
    for (int i = 0; i < c->nprocs; i++)
      if (!ps[i]->exited)
        fprintf(stderr, "teardown: %s (pid %d) did not die\n", ps[i]->name,
                ps[i]->h.pid);
    ok = 0;
  }
  for (int i = 0; i < c->nprocs; i++) {
    proc *p = &c->procs[i];
    uv_close((uv_handle_t *)&p->h, NULL);
    uv_close((uv_handle_t *)&p->out, NULL);
    uv_close((uv_handle_t *)&p->err, NULL);
  }
  if (c->srv)
    tunnel_server_close(c->srv, srv_closed_cb, c);
  for (conn *k = c->conns; k; k = k->next)
    conn_close(k);
  for (int i = 0; i < c->nsvcs; i++)
    uv_close((uv_handle_t *)&c->svcs[i].listener, NULL);
  uv_close((uv_handle_t *)&c->tick, NULL);
  if (it_waiter_finish(&c->w, IT_WAIT_MS) != 0) {
    fprintf(stderr, "teardown: loop did not close\n");
    ok = 0;
  }
  if (c->srv && !c->srv_closed) {
    fprintf(stderr, "teardown: the in-process server did not close\n");
    ok = 0;
  }
  if (!remove_dir())
    ok = 0;
  alarm(0);
  free(c->env);
  free(c);
  return ok ? 0 : -1;
}

/* -------------------------------------------- our programs and frps */

/* frps on 127.0.0.1:*bind_port (0: a free one, stored back), public ports
 * lo..hi, with the case's token. */
static proc *start_frps(ctx *c, const char *name, int mux,
                        uint16_t *bind_port, char *ini, size_t inicap) {
  if (!*bind_port)
    *bind_port = pick_port(c);
  /* HTTP and HTTPS vhosts on the ports the case chose, names NAME.localhost
   * for subdomains. */
  char vhost[256] = "";
  if (c->frps_http)
    snprintf(vhost, sizeof vhost,
             "vhost_http_port = %u\nvhost_https_port = %u\n"
             "subdomain_host = localhost\n",
             c->frps_http, c->frps_https);
  if (!ini[0])
    /* authenticate_new_work_conns: frps checks our work connections'
     * privilege keys too. */
    write_file(ini, inicap, "frps.ini",
               "[common]\n"
               "bind_addr = 127.0.0.1\n"
               "bind_port = %u\n"
               "proxy_bind_addr = 127.0.0.1\n"
               "token = %s\n"
               "allow_ports = %u-%u\n"
               "tcp_mux = %s\n"
               "authenticate_new_work_conns = true\n"
               "max_pool_count = 10\n"
               "log_level = info\n"
               "%s%s",
               *bind_port, c->token, c->lo, c->hi, mux ? "true" : "false",
               vhost, c->frps_extra);
  char *args[] = {frps_path, "-c", ini, NULL};
  proc *p = spawn(c, name, args);
  WAIT_FOR(c, proc_has(p, "frps started successfully") || p->exited,
           IT_WAIT_MS);
  if (p->exited)
    FAIL(c, "frps exited at start");
  return p;
}

/* tunnel-client (shown as `label`) exposing 127.0.0.1:local_port as proxy
 * `name` on remote_port through the server at 127.0.0.1:server_port;
 * `opts` (NULL-terminated, may be NULL): more flags. */
static proc *start_client(ctx *c, const char *label, const char *name,
                          uint16_t server_port, const char *token,
                          uint16_t local_port, uint16_t remote_port,
                          const char *const *opts) {
  char server[32], local[32], remote[16];
  snprintf(server, sizeof server, "127.0.0.1:%u", server_port);
  snprintf(local, sizeof local, "127.0.0.1:%u", local_port);
  snprintf(remote, sizeof remote, "%u", remote_port);
  /* A short drain: SIGTERM must end it within EXIT_MS even with a
   * visitor's connection idle in frps's keep-alive pool. */
  char *args[18] = {(char *)client_path, "--server", server, "--token",
                    (char *)token, "--drain-ms", "1000"};
  int n = 7;
  for (; opts && *opts; opts++)
    args[n++] = (char *)*opts;
  char *tail[] = {"tcp", local, "--name", (char *)name, "--remote-port",
                  remote, NULL};
  for (size_t i = 0; i < sizeof tail / sizeof tail[0]; i++)
    args[n++] = tail[i];
  return spawn(c, label, args);
}

/* The public address our client prints on its `nth` stdout line (1-based),
 * which must be tcp://127.0.0.1:want. */
static void wait_public(ctx *c, proc *p, int nth, uint16_t want) {
  WAIT_FOR(c, count_lines(p->obuf) >= nth || p->exited, IT_WAIT_MS);
  if (count_lines(p->obuf) < nth)
    FAIL(c, "%s exited before printing its public address", p->name);
  const char *line = p->obuf;
  for (int i = 1; i < nth; i++)
    line = strchr(line, '\n') + 1;
  char expect[48];
  snprintf(expect, sizeof expect, "tcp://127.0.0.1:%u\n", want);
  if (strncmp(line, expect, strlen(expect)) != 0)
    FAIL(c, "%s: stdout line %d is not '%.*s'", p->name, nth,
         (int)strlen(expect) - 1, expect);
}

/* tunnel-server on an ephemeral control port, public ports lo..hi. */
static proc *start_server(ctx *c, uint16_t *control_port) {
  char ports[32];
  snprintf(ports, sizeof ports, "%u-%u", c->lo, c->hi);
  char *args[16] = {(char *)server_path, "--control", "127.0.0.1:0",
                    "--bind", "127.0.0.1", "--ports", ports, "--token",
                    c->token, "-v"};
  size_t n = 10;
  for (const char *const *e = c->server_extra; *e; e++)
    args[n++] = (char *)*e;
  args[n] = NULL;
  proc *p = spawn(c, "tunnel-server", args);
  WAIT_FOR(c, strchr(p->obuf, '\n') || p->exited, IT_WAIT_MS);
  unsigned port = 0;
  if (sscanf(p->obuf, "listening on 127.0.0.1:%u\n", &port) != 1 || !port ||
      port > 65535)
    FAIL(c, "tunnel-server did not print 'listening on 127.0.0.1:PORT'");
  *control_port = (uint16_t)port;
  return p;
}

/* ------------------------------------------------------------- frpc */

typedef struct frpc_opts {
  int mux;
  int pool;            /* -1: frpc's default */
  int auth_work_conns; /* authenticate_new_work_conns */
  int auth_heartbeats; /* authenticate_heartbeats */
  int heartbeat;       /* heartbeat_interval; 0: frpc's default */
  int heartbeat_timeout;
  int mux_keepalive; /* tcp_mux_keepalive_interval; 0: default */
  const char *token; /* NULL: the case's */
  int tls;            /* tls_enable */
  const char *tls_ca; /* tls_trusted_ca_file (frpc verifies the server) */
  const char *proxy_extra; /* lines added to every proxy section */
} frpc_opts;

typedef struct frpc_proxy {
  const char *name;
  uint16_t local, remote;
} frpc_proxy;

/* frpc's [common] section for the server at 127.0.0.1:server_port. */
static void frpc_common(ctx *c, char *common, size_t cap, uint16_t server_port,
                        const frpc_opts *o) {
  size_t n = 0;
  n += (size_t)snprintf(common + n, cap - n,
                        "[common]\n"
                        "server_addr = 127.0.0.1\n"
                        "server_port = %u\n"
                        "token = %s\n"
                        "tcp_mux = %s\n"
                        "log_level = info\n",
                        server_port, o->token ? o->token : c->token,
                        o->mux ? "true" : "false");
  if (o->pool >= 0)
    n += (size_t)snprintf(common + n, cap - n, "pool_count = %d\n",
                          o->pool);
  if (o->auth_work_conns)
    n += (size_t)snprintf(common + n, cap - n,
                          "authenticate_new_work_conns = true\n");
  if (o->auth_heartbeats)
    n += (size_t)snprintf(common + n, cap - n,
                          "authenticate_heartbeats = true\n");
  if (o->heartbeat)
    n += (size_t)snprintf(common + n, cap - n,
                          "heartbeat_interval = %d\nheartbeat_timeout = %d\n",
                          o->heartbeat, o->heartbeat_timeout);
  if (o->mux_keepalive)
    n += (size_t)snprintf(common + n, cap - n,
                          "tcp_mux_keepalive_interval = %d\n",
                          o->mux_keepalive);
  if (o->tls)
    n += (size_t)snprintf(common + n, cap - n, "tls_enable = true\n");
  if (o->tls_ca)
    n += (size_t)snprintf(common + n, cap - n, "tls_trusted_ca_file = %s\n",
                          o->tls_ca);
  assert_true(n < cap);
}

static void write_frpc_ini(ctx *c, char *ini, size_t cap, const char *file,
                           uint16_t server_port, const frpc_opts *o,
                           const frpc_proxy *px, int npx) {
  char common[1024], proxies[2048];
  frpc_common(c, common, sizeof common, server_port, o);
  size_t m = 0;
  for (int i = 0; i < npx; i++)
    m += (size_t)snprintf(proxies + m, sizeof proxies - m,
                          "\n[%s]\ntype = tcp\nlocal_ip = 127.0.0.1\n"
                          "local_port = %u\nremote_port = %u\n%s",
                          px[i].name, px[i].local, px[i].remote,
                          o->proxy_extra ? o->proxy_extra : "");
  assert_true(m < sizeof proxies);
  write_file(ini, cap, file, "%s%s", common, proxies);
}

static proc *start_frpc(ctx *c, const char *name, const char *ini) {
  char *args[] = {frpc_path, "-c", (char *)ini, NULL};
  return spawn(c, name, args);
}

/* Waits until frpc reports every proxy started. */
static void wait_frpc_proxies(ctx *c, proc *p, const frpc_proxy *px,
                              int npx, int times) {
  for (int i = 0; i < npx; i++) {
    char want[96];
    snprintf(want, sizeof want, "[%s] start proxy success", px[i].name);
    WAIT_FOR(c, proc_count(p, want) >= times || p->exited, IT_WAIT_MS);
    if (p->exited)
      FAIL(c, "%s exited before starting its proxies", p->name);
  }
}

/* The run id frpc prints after "get run id [", or fails. */
static void frpc_run_id(ctx *c, proc *p, char *out, size_t cap) {
  static const char key[] = "get run id [";
  WAIT_FOR(c, proc_has(p, key) || p->exited, IT_WAIT_MS);
  const char *s = strstr(p->obuf, key);
  if (!s)
    s = strstr(p->ebuf, key);
  if (!s)
    FAIL(c, "%s printed no run id", p->name);
  s += sizeof key - 1;
  const char *e = strchr(s, ']');
  if (!e || (size_t)(e - s) >= cap)
    FAIL(c, "%s: malformed run id", p->name);
  snprintf(out, cap, "%.*s", (int)(e - s), s);
}

/* ================================================= our client -> frps */

/* Two tunnel-clients (one per service: tunnel-client exposes one port)
 * with the same flags, then 32 MiB each way and 100 concurrent visitors;
 * SIGTERM ends each client with status 0. */
static void run_client_to_frps(ctx *c, int mux, const char *pool) {
  uint16_t bind_port = 0;
  char ini[PATH_MAX] = "";
  start_frps(c, "frps", mux, &bind_port, ini, sizeof ini);
  service *bulk = svc_start(c, ROLE_BULK_SVC);
  service *echo = svc_start(c, ROLE_ECHO_SVC);
  const char *opts[8] = {NULL};
  int n = 0;
  if (!mux)
    opts[n++] = "--no-mux";
  if (pool) {
    opts[n++] = "--pool";
    opts[n++] = pool;
  }
  for (const char *const *e = c->client_extra; *e; e++)
    opts[n++] = *e;
  uint16_t bulk_pub = pick_port(c), echo_pub = pick_port(c);
  proc *cb = start_client(c, "tunnel-client bulk", "bulk", bind_port, c->token,
                          bulk->port, bulk_pub, opts);
  proc *ce = start_client(c, "tunnel-client echo", "echo", bind_port, c->token,
                          echo->port, echo_pub, opts);
  wait_public(c, cb, 1, bulk_pub);
  wait_public(c, ce, 1, echo_pub);

  check_bulk(c, bulk, bulk_pub);
  check_echo(c, &echo_pub, 1, VISITORS);
  assert_int_equal(echo->accepted, VISITORS);
  check_half_close(c, echo, echo_pub, 0);

  term_expect_clean_exit(c, cb);
  term_expect_clean_exit(c, ce);
  /* Both still logged in once: nothing dropped along the way. */
  assert_int_equal(proc_count(cb, "logged in"), 1);
  assert_int_equal(proc_count(ce, "logged in"), 1);
}

static void test_frps_mux(void **state) {
  run_client_to_frps(*state, 1, NULL);
}

static void test_frps_mux_pool(void **state) {
  run_client_to_frps(*state, 1, "8");
}

/* frps must be set to tcp_mux = false for a non-mux client. */
static void test_frps_nomux(void **state) {
  run_client_to_frps(*state, 0, NULL);
}

static void test_frps_nomux_pool(void **state) {
  run_client_to_frps(*state, 0, "8");
}

/* A wrong token: our client exits 1 within seconds with frps's reason on
 * exactly one stderr line, and prints nothing on stdout. */
static void test_frps_wrong_token(void **state) {
  ctx *c = *state;
  uint16_t bind_port = 0;
  char ini[PATH_MAX] = "";
  proc *frps = start_frps(c, "frps", 1, &bind_port, ini, sizeof ini);
  service *echo = svc_start(c, ROLE_ECHO_SVC);
  proc *cli = start_client(c, "tunnel-client (wrong token)", "echo", bind_port,
                           "not-the-token", echo->port, pick_port(c), NULL);
  WAIT_FOR(c, proc_done(cli), EXIT_MS);
  if (cli->status != 1 || cli->term_signal || cli->olen ||
      count_lines(cli->ebuf) != 1 ||
      !strstr(cli->ebuf,
              "token in login doesn't match token from configuration"))
    FAIL(c, "expected exit 1 and one stderr line with frps's reason");
  fprintf(stderr, "# %s", cli->ebuf);
  assert_false(frps->exited);
}

/* A requested port another client holds, and one outside frps's
 * allow_ports: each refused client exits 1 with frps's reason on one line;
 * the first client keeps working. */
static void test_frps_port_taken(void **state) {
  ctx *c = *state;
  uint16_t bind_port = 0;
  char ini[PATH_MAX] = "";
  start_frps(c, "frps", 1, &bind_port, ini, sizeof ini);
  service *echo = svc_start(c, ROLE_ECHO_SVC);
  uint16_t pub = pick_port(c);
  proc *first = start_client(c, "tunnel-client (first)", "first", bind_port, c->token,
                             echo->port, pub, NULL);
  wait_public(c, first, 1, pub);
  uint16_t outside = c->lo > 1100 ? (uint16_t)(c->lo - 1) : (uint16_t)(c->hi + 1);
  struct {
    const char *name, *proxy;
    uint16_t port;
    const char *reason;
  } refused[] = {
      {"tunnel-client (port taken)", "second", pub, "port already used"},
      {"tunnel-client (port not allowed)", "outside", outside,
       "port not allowed"},
  };
  for (size_t i = 0; i < 2; i++) {
    proc *p = start_client(c, refused[i].name, refused[i].proxy, bind_port, c->token,
                           echo->port, refused[i].port, NULL);
    WAIT_FOR(c, proc_done(p), EXIT_MS);
    /* Login succeeded, so its informational line precedes the refusal. */
    int refusals = 0, with_reason = 0;
    for (const char *l = p->ebuf; *l;) {
      const char *nl = strchr(l, '\n');
      size_t len = nl ? (size_t)(nl - l) : strlen(l);
      char line[1024];
      snprintf(line, sizeof line, "%.*s", (int)len, l);
      refusals += strstr(line, "refused") != NULL;
      with_reason += strstr(line, "refused") && strstr(line, refused[i].reason);
      l += len + (nl != NULL);
    }
    if (p->status != 1 || p->term_signal || p->olen || refusals != 1 ||
        with_reason != 1)
      FAIL(c, "%s: expected exit 1 and one stderr line with frps's reason "
              "'%s'",
           p->name, refused[i].reason);
    fprintf(stderr, "# %s said:\n%s", p->name, p->ebuf);
  }
  check_echo(c, &pub, 1, 1);
  assert_false(first->exited);
}

/* frps goes away (SIGTERM) and comes back on the same port: our client,
 * still running, logs in again, prints its address again and the public
 * port answers again. */
static void test_frps_restart(void **state) {
  ctx *c = *state;
  uint16_t bind_port = 0;
  char ini[PATH_MAX] = "";
  proc *frps = start_frps(c, "frps", 1, &bind_port, ini, sizeof ini);
  service *echo = svc_start(c, ROLE_ECHO_SVC);
  uint16_t pub = pick_port(c);
  proc *cli = start_client(c, "tunnel-client", "echo", bind_port, c->token,
                           echo->port, pub, NULL);
  wait_public(c, cli, 1, pub);
  check_echo(c, &pub, 1, 10);

  stop_proc(c, frps);
  WAIT_FOR(c, port_refuses(pub), EXIT_MS);
  start_frps(c, "frps (restarted)", 1, &bind_port, ini, sizeof ini);
  /* The client retries after 1 s, then 2 s, ... */
  uint64_t t0 = now_ms(c);
  wait_public(c, cli, 2, pub);
  fprintf(stderr, "# re-registered %llu ms after frps came back\n",
          (unsigned long long)(now_ms(c) - t0));
  assert_false(cli->exited);
  check_echo(c, &pub, 1, 10);
  term_expect_clean_exit(c, cli);
}

/* =============================================== stock frpc -> server */

/* One frpc with three proxies (bulk, echo a, echo b) against
 * tunnel-server: 32 MiB each way through one, 100 concurrent visitors over
 * the other two (each echo service must see its own 50). */
static void run_frpc_to_server(ctx *c, const frpc_opts *o) {
  uint16_t control;
  proc *srv = start_server(c, &control);
  service *bulk = svc_start(c, ROLE_BULK_SVC);
  service *ea = svc_start(c, ROLE_ECHO_SVC);
  service *eb = svc_start(c, ROLE_ECHO_SVC);
  frpc_proxy px[] = {
      {"bulk", bulk->port, pick_port(c)},
      {"echo_a", ea->port, pick_port(c)},
      {"echo_b", eb->port, pick_port(c)},
  };
  char ini[PATH_MAX];
  write_frpc_ini(c, ini, sizeof ini, "frpc.ini", control, o, px, 3);
  proc *frpc = start_frpc(c, "frpc", ini);
  wait_frpc_proxies(c, frpc, px, 3, 1);

  check_bulk(c, bulk, px[0].remote);
  uint16_t echo_ports[2] = {px[1].remote, px[2].remote};
  check_echo(c, echo_ports, 2, VISITORS);
  assert_int_equal(ea->accepted, VISITORS / 2);
  assert_int_equal(eb->accepted, VISITORS / 2);
  check_half_close(c, ea, px[1].remote, 1);

  /* One login, no work connection refused along the way. */
  assert_int_equal(proc_count(frpc, "login to server success"), 1);
  if (proc_has(frpc, "StartWorkConn contains error"))
    FAIL(c, "the server refused some of frpc's work connections");
  stop_proc(c, frpc);
  term_expect_clean_exit(c, srv);
}

static void test_frpc_mux_pool0(void **state) {
  frpc_opts o = {.mux = 1, .pool = 0};
  run_frpc_to_server(*state, &o);
}

/* Signed work streams and heartbeats over the mux session. */
static void test_frpc_mux_pool5_auth(void **state) {
  frpc_opts o = {.mux = 1, .pool = 5, .auth_work_conns = 1,
                 .auth_heartbeats = 1};
  run_frpc_to_server(*state, &o);
}

/* frpc's defaults with tcp_mux = false: unsigned NewWorkConn on separate
 * TCP connections from the control connection's address. */
static void test_frpc_nomux(void **state) {
  frpc_opts o = {.mux = 0, .pool = -1};
  run_frpc_to_server(*state, &o);
}

static void test_frpc_nomux_auth_pool0(void **state) {
  frpc_opts o = {.mux = 0, .pool = 0, .auth_work_conns = 1};
  run_frpc_to_server(*state, &o);
}

static void test_frpc_nomux_auth_pool5(void **state) {
  frpc_opts o = {.mux = 0, .pool = 5, .auth_work_conns = 1};
  run_frpc_to_server(*state, &o);
}

/* use_encryption: frpc ciphers each work connection with the token; the
 * server deciphers, so visitors see plain bytes both ways. */
static void test_frpc_encryption_mux(void **state) {
  frpc_opts o = {.mux = 1, .pool = -1, .proxy_extra = "use_encryption = true\n"};
  run_frpc_to_server(*state, &o);
}

static void test_frpc_encryption_nomux(void **state) {
  frpc_opts o = {.mux = 0, .pool = 2,
                 .proxy_extra = "use_encryption = true\n"};
  run_frpc_to_server(*state, &o);
}

/* use_compression is refused with a reason frpc prints and the port is
 * never opened; the same proxy without it is carried by the same server. */
static void test_frpc_compression_refused(void **state) {
  ctx *c = *state;
  uint16_t control;
  proc *srv = start_server(c, &control);
  service *echo = svc_start(c, ROLE_ECHO_SVC);
  frpc_proxy px = {"zipped", echo->port, pick_port(c)};
  frpc_opts o = {.mux = 1, .pool = -1,
                 .proxy_extra = "use_compression = true\n"};
  char ini[PATH_MAX];
  write_frpc_ini(c, ini, sizeof ini, "frpc.ini", control, &o, &px, 1);
  proc *frpc = start_frpc(c, "frpc (compression)", ini);
  WAIT_FOR(c, proc_has(frpc, "use_compression are not supported") ||
                  frpc->exited, IT_WAIT_MS);
  if (!proc_has(frpc, "[zipped] start error: tcp proxies with "
                      "use_compression are not supported"))
    FAIL(c, "frpc should print the server's refusal of use_compression");
  assert_true(port_refuses(px.remote));
  stop_proc(c, frpc);
  /* The same proxy without compression is carried. */
  o.proxy_extra = NULL;
  write_frpc_ini(c, ini, sizeof ini, "frpc-plain.ini", control, &o, &px, 1);
  proc *plain = start_frpc(c, "frpc", ini);
  wait_frpc_proxies(c, plain, &px, 1, 1);
  check_echo(c, &px.remote, 1, 5);
  stop_proc(c, plain);
  term_expect_clean_exit(c, srv);
}

/* A wrong token: frpc prints the server's reason and gives up (exit 1);
 * its proxy's port is never opened and the server carries on. */
static void test_frpc_wrong_token(void **state) {
  ctx *c = *state;
  uint16_t control;
  proc *srv = start_server(c, &control);
  service *echo = svc_start(c, ROLE_ECHO_SVC);
  frpc_proxy px = {"echo", echo->port, pick_port(c)};
  frpc_opts o = {.mux = 1, .pool = -1, .token = "not-the-token"};
  char ini[PATH_MAX];
  write_frpc_ini(c, ini, sizeof ini, "frpc.ini", control, &o, &px, 1);
  proc *frpc = start_frpc(c, "frpc (wrong token)", ini);
  WAIT_FOR(c, proc_done(frpc), IT_WAIT_MS);
  if (frpc->status != 1 || !proc_has(frpc, "login to server failed: ") ||
      !proc_has(frpc, "token mismatch"))
    FAIL(c, "frpc should exit 1 printing 'login to server failed: ... token "
            "mismatch'");
  assert_true(port_refuses(px.remote));
  assert_false(srv->exited);
  /* The same server still admits the right token. */
  o.token = NULL;
  write_frpc_ini(c, ini, sizeof ini, "frpc-good.ini", control, &o, &px, 1);
  proc *good = start_frpc(c, "frpc", ini);
  wait_frpc_proxies(c, good, &px, 1, 1);
  check_echo(c, &px.remote, 1, 5);
}

/* frpc stopped: its port is freed at once; frpc started again with the
 * same configuration takes it again and serves visitors. */
static void test_frpc_restart(void **state) {
  ctx *c = *state;
  uint16_t control;
  start_server(c, &control);
  service *echo = svc_start(c, ROLE_ECHO_SVC);
  frpc_proxy px = {"echo", echo->port, pick_port(c)};
  frpc_opts o = {.mux = 1, .pool = -1};
  char ini[PATH_MAX];
  write_frpc_ini(c, ini, sizeof ini, "frpc.ini", control, &o, &px, 1);
  proc *frpc = start_frpc(c, "frpc", ini);
  wait_frpc_proxies(c, frpc, &px, 1, 1);
  check_echo(c, &px.remote, 1, 10);

  stop_proc(c, frpc);
  WAIT_FOR(c, port_refuses(px.remote), EXIT_MS);
  frpc = start_frpc(c, "frpc (restarted)", ini);
  wait_frpc_proxies(c, frpc, &px, 1, 1);
  check_echo(c, &px.remote, 1, 10);
  assert_false(port_refuses(px.remote));
}

/* ======================================== HTTP and HTTPS virtual hosts */

/* Names routed in these cases. The custom ones are not under the
 * subdomain host (frps refuses those as custom domains). */
#define CUSTOM_HOST "app.example.test"
#define WILD_DOMAIN "*.wild.example.test"
#define WILD_HOST "deep.wild.example.test"
#define REWRITTEN_HOST "internal.example"

/* tunnel-client against the server at 127.0.0.1:server_port, multiplexed
 * or not; `tail`: the proxy's words (kind, LOCAL, options), NULL-ended. */
static proc *start_client_proxy(ctx *c, const char *label,
                                uint16_t server_port, int mux,
                                const char *const *tail) {
  char server[32];
  snprintf(server, sizeof server, "127.0.0.1:%u", server_port);
  char *args[24] = {(char *)client_path, "--server", server, "--token",
                    c->token, "--drain-ms", "1000"};
  int n = 7;
  if (!mux)
    args[n++] = "--no-mux";
  for (; *tail; tail++) {
    assert_true(n < 23);
    args[n++] = (char *)*tail;
  }
  args[n] = NULL;
  return spawn(c, label, args);
}

/* Whether `buf` has `line` (without its newline) as a whole line. */
static int has_line(const char *buf, const char *line) {
  size_t n = strlen(line);
  for (const char *q = buf; (q = strstr(q, line)) != NULL; q++)
    if ((q == buf || q[-1] == '\n') && q[n] == '\n')
      return 1;
  return 0;
}

/* Waits until our client has printed its public addresses: exactly the
 * `n` URLs of `want`, one a line, in any order. */
static void wait_urls(ctx *c, proc *p, const char *const *want, int n) {
  WAIT_FOR(c, count_lines(p->obuf) >= n || p->exited, IT_WAIT_MS);
  if (count_lines(p->obuf) != n)
    FAIL(c, "%s printed %d lines, expected %d URLs", p->name,
         count_lines(p->obuf), n);
  for (int i = 0; i < n; i++)
    if (!has_line(p->obuf, want[i]))
      FAIL(c, "%s did not print '%s'", p->name, want[i]);
}

/* tunnel-server with its HTTP and HTTPS ports on ephemeral ports and
 * subdomains under localhost. */
static proc *start_server_vhost(ctx *c, uint16_t *control, uint16_t *http,
                                uint16_t *https) {
  char ports[32];
  snprintf(ports, sizeof ports, "%u-%u", c->lo, c->hi);
  char *args[] = {(char *)server_path, "--control", "127.0.0.1:0", "--bind",
                  "127.0.0.1", "--ports", ports, "--token", c->token,
                  "--http", "127.0.0.1:0", "--https", "127.0.0.1:0",
                  "--domain", "localhost", "-v", NULL};
  proc *p = spawn(c, "tunnel-server", args);
  WAIT_FOR(c, count_lines(p->obuf) >= 3 || p->exited, IT_WAIT_MS);
  unsigned cp = 0, hp = 0, sp = 0;
  if (sscanf(p->obuf,
             "listening on 127.0.0.1:%u\nhttp on 127.0.0.1:%u\n"
             "https on 127.0.0.1:%u\n",
             &cp, &hp, &sp) != 3 ||
      !cp || !hp || !sp || cp > 65535 || hp > 65535 || sp > 65535)
    FAIL(c, "tunnel-server did not print its control, http and https "
            "ports");
  *control = (uint16_t)cp;
  *http = (uint16_t)hp;
  *https = (uint16_t)sp;
  return p;
}

/* Requests for NAME.localhost:port on one keep-alive connection: a GET,
 * a POST whose body must come back whole, another GET; the service sees
 * the visitor's Host and an X-Forwarded-For naming the visitor (and, with
 * libtunnel's server, X-Forwarded-Proto and -Host). */
static void check_subdomain(ctx *c, uint16_t port, service *svc,
                            int our_server) {
  char host[128], req[1024], body[64];
  snprintf(host, sizeof host, "%s.localhost:%u", svc->label, port);
  int before = svc->requests;
  http_resp r;
  raw_open(c, port);
  size_t n = http_req(req, sizeof req, "GET", host, "/", "", NULL);
  http_roundtrip(c, req, n, &r);
  expect_answer(c, &r, svc, "GET", "/", 0);
  expect_seen(c, svc, "Host", host);
  expect_seen(c, svc, "X-Forwarded-For", "127.0.0.1");
  if (our_server) {
    expect_seen(c, svc, "X-Forwarded-Proto", "http");
    expect_seen(c, svc, "X-Forwarded-Host", host);
  }
  snprintf(body, sizeof body, "a request body %08x%08x", it_random32(),
           it_random32());
  n = http_req(req, sizeof req, "POST", host, "/upload?x=1",
               "Content-Type: text/plain\r\n", body);
  http_roundtrip(c, req, n, &r);
  expect_answer(c, &r, svc, "POST", "/upload?x=1", strlen(body));
  const char *echoed = strchr(r.body, '\n') + 1;
  if (strcmp(echoed, body) != 0)
    FAIL(c, "POST body came back as '%s', sent '%s'", echoed, body);
  n = http_req(req, sizeof req, "GET", host, "/again", "", NULL);
  http_roundtrip(c, req, n, &r);
  expect_answer(c, &r, svc, "GET", "/again", 0);
  if (c->vis.ended)
    FAIL(c, "the keep-alive connection was closed after three requests");
  raw_close(c);
  assert_int_equal(svc->requests, before + 3);
}

/* Basic auth on NAME.localhost:port: no credentials and wrong ones get 401
 * with a WWW-Authenticate challenge and never reach the service; the right
 * ones get its answer. */
static void check_basic_auth(ctx *c, uint16_t port, service *svc,
                             const char *user, const char *pass) {
  char host[128], cred[128], b64[200], hdr[256], v[128];
  snprintf(host, sizeof host, "%s.localhost:%u", svc->label, port);
  int before = svc->requests;
  http_resp r;
  http_get(c, port, host, "/private", "", &r);
  if (r.status != 401 ||
      head_value(r.head, "WWW-Authenticate", v, sizeof v) != 1 ||
      strncasecmp(v, "Basic", 5) != 0)
    FAIL(c, "no credentials: expected 401 with a Basic challenge; got %d:\n%s",
         r.status, r.head);
  snprintf(cred, sizeof cred, "%s:not-%s", user, pass);
  base64(cred, b64, sizeof b64);
  snprintf(hdr, sizeof hdr, "Authorization: Basic %s\r\n", b64);
  http_get(c, port, host, "/private", hdr, &r);
  if (r.status != 401)
    FAIL(c, "wrong password: expected 401; got %d:\n%s", r.status, r.head);
  assert_int_equal(svc->requests, before);
  snprintf(cred, sizeof cred, "%s:%s", user, pass);
  base64(cred, b64, sizeof b64);
  snprintf(hdr, sizeof hdr, "Authorization: Basic %s\r\n", b64);
  http_get(c, port, host, "/private", hdr, &r);
  expect_answer(c, &r, svc, "GET", "/private", 0);
  assert_int_equal(svc->requests, before + 1);
  fprintf(stderr, "# basic auth: 401, 401, then 200 with the password\n");
}

/* A name nobody registered: 404, and no service sees a request. */
static void check_unknown_host(ctx *c, uint16_t port, service **svcs,
                               int nsvcs) {
  int before = 0;
  for (int i = 0; i < nsvcs; i++)
    before += svcs[i]->requests;
  http_resp r;
  http_get(c, port, "nobody.localhost", "/", "", &r);
  if (r.status != 404)
    FAIL(c, "unknown host: expected 404, got %d:\n%s", r.status, r.head);
  int after = 0;
  for (int i = 0; i < nsvcs; i++)
    after += svcs[i]->requests;
  assert_int_equal(after, before);
}

/* Our client's four proxies (subdomain; custom and wildcard names with a
 * Host rewrite; basic auth; HTTPS subdomain) against frps's vhosts. */
static void run_client_to_frps_http(ctx *c, int mux) {
  c->frps_http = pick_port(c);
  c->frps_https = pick_port(c);
  uint16_t bind_port = 0, hp = c->frps_http, sp = c->frps_https;
  char ini[PATH_MAX] = "";
  start_frps(c, "frps", mux, &bind_port, ini, sizeof ini);
  service *web = http_svc_start(c, "web");
  service *site = http_svc_start(c, "site");
  service *secret = http_svc_start(c, "secret");
  service *tls = svc_start(c, ROLE_ECHO_SVC);
  char lweb[32], lsite[32], lsecret[32], ltls[32], auth[64], pass[16];
  snprintf(lweb, sizeof lweb, "127.0.0.1:%u", web->port);
  snprintf(lsite, sizeof lsite, "127.0.0.1:%u", site->port);
  snprintf(lsecret, sizeof lsecret, "127.0.0.1:%u", secret->port);
  snprintf(ltls, sizeof ltls, "127.0.0.1:%u", tls->port);
  snprintf(pass, sizeof pass, "%08x", it_random32());
  snprintf(auth, sizeof auth, "alice:%s", pass);
  const char *t_web[] = {"http", lweb, "--subdomain", "web", "--name", "web",
                         NULL};
  const char *t_site[] = {"http",         lsite,          "--hostname",
                          CUSTOM_HOST,    "--hostname",   WILD_DOMAIN,
                          "--host-rewrite", REWRITTEN_HOST, "--name",
                          "site",         NULL};
  const char *t_secret[] = {"http",         lsecret, "--subdomain", "secret",
                            "--basic-auth", auth,    "--name",      "secret",
                            NULL};
  const char *t_tls[] = {"https", ltls, "--subdomain", "tls", "--name", "tls",
                         NULL};
  proc *cl[4] = {
      start_client_proxy(c, "tunnel-client web", bind_port, mux, t_web),
      start_client_proxy(c, "tunnel-client site", bind_port, mux, t_site),
      start_client_proxy(c, "tunnel-client secret", bind_port, mux,
                         t_secret),
      start_client_proxy(c, "tunnel-client tls", bind_port, mux, t_tls),
  };
  char u[5][96];
  snprintf(u[0], sizeof u[0], "http://web.localhost:%u", hp);
  snprintf(u[1], sizeof u[1], "http://%s:%u", CUSTOM_HOST, hp);
  snprintf(u[2], sizeof u[2], "http://%s:%u", WILD_DOMAIN, hp);
  snprintf(u[3], sizeof u[3], "http://secret.localhost:%u", hp);
  snprintf(u[4], sizeof u[4], "https://tls.localhost:%u", sp);
  const char *w0[] = {u[0]}, *w1[] = {u[1], u[2]}, *w2[] = {u[3]},
             *w3[] = {u[4]};
  wait_urls(c, cl[0], w0, 1);
  wait_urls(c, cl[1], w1, 2);
  wait_urls(c, cl[2], w2, 1);
  wait_urls(c, cl[3], w3, 1);

  check_subdomain(c, hp, web, 0);
  /* Custom and wildcard names; the service sees the rewritten Host. */
  http_resp r;
  http_get(c, hp, CUSTOM_HOST, "/", "", &r);
  expect_answer(c, &r, site, "GET", "/", 0);
  expect_seen(c, site, "Host", REWRITTEN_HOST);
  http_get(c, hp, WILD_HOST, "/w", "", &r);
  expect_answer(c, &r, site, "GET", "/w", 0);
  expect_seen(c, site, "Host", REWRITTEN_HOST);
  check_basic_auth(c, hp, secret, "alice", pass);
  service *all[] = {web, site, secret};
  check_unknown_host(c, hp, all, 3);
  check_tls_passthrough(c, tls, sp, "tls.localhost");
  check_tls_unknown(c, tls, sp, "nobody.localhost", 0);

  for (int i = 0; i < 4; i++) {
    term_expect_clean_exit(c, cl[i]);
    assert_int_equal(proc_count(cl[i], "logged in"), 1);
  }
  for (int i = 0; i < 3; i++)
    assert_int_equal(all[i]->http_errs, 0);
}

static void test_frps_http_mux(void **state) {
  run_client_to_frps_http(*state, 1);
}

static void test_frps_http_nomux(void **state) {
  run_client_to_frps_http(*state, 0);
}

/* A stock frpc with five proxies against tunnel-server's vhosts:
 *   web     http, subdomain
 *   site    http, custom and wildcard domains, host_header_rewrite
 *   api     http, the same custom domain, locations = /api
 *   secret  http, subdomain, http_user/http_pwd
 *   tls     https, subdomain (TLS passed through untouched) */
static void run_frpc_to_server_http(ctx *c, int mux) {
  uint16_t control, hp, sp;
  proc *srv = start_server_vhost(c, &control, &hp, &sp);
  service *web = http_svc_start(c, "web");
  service *site = http_svc_start(c, "site");
  service *api = http_svc_start(c, "api");
  service *secret = http_svc_start(c, "secret");
  service *tls = svc_start(c, ROLE_ECHO_SVC);
  char pass[16];
  snprintf(pass, sizeof pass, "%08x", it_random32());
  frpc_opts o = {.mux = mux, .pool = -1};
  char common[1024], proxies[2048];
  frpc_common(c, common, sizeof common, control, &o);
  int m = snprintf(proxies, sizeof proxies,
                   "\n[web]\ntype = http\nlocal_ip = 127.0.0.1\n"
                   "local_port = %u\nsubdomain = web\n"
                   "\n[site]\ntype = http\nlocal_ip = 127.0.0.1\n"
                   "local_port = %u\ncustom_domains = %s, %s\n"
                   "host_header_rewrite = %s\n"
                   "\n[api]\ntype = http\nlocal_ip = 127.0.0.1\n"
                   "local_port = %u\ncustom_domains = %s\n"
                   "locations = /api\n"
                   "\n[secret]\ntype = http\nlocal_ip = 127.0.0.1\n"
                   "local_port = %u\nsubdomain = secret\n"
                   "http_user = alice\nhttp_pwd = %s\n"
                   "\n[tls]\ntype = https\nlocal_ip = 127.0.0.1\n"
                   "local_port = %u\nsubdomain = tls\n",
                   web->port, site->port, CUSTOM_HOST, WILD_DOMAIN,
                   REWRITTEN_HOST, api->port, CUSTOM_HOST, secret->port, pass,
                   tls->port);
  assert_true(m > 0 && (size_t)m < sizeof proxies);
  char ini[PATH_MAX];
  write_file(ini, sizeof ini, "frpc.ini", "%s%s", common, proxies);
  proc *frpc = start_frpc(c, "frpc", ini);
  frpc_proxy px[] = {{"web", 0, 0}, {"site", 0, 0}, {"api", 0, 0},
                     {"secret", 0, 0}, {"tls", 0, 0}};
  wait_frpc_proxies(c, frpc, px, 5, 1);

  check_subdomain(c, hp, web, 1);
  /* One keep-alive connection, each request to another proxy: locations
   * route /api and /api/..., not /apix; the site sees its Host rewrite,
   * the api proxy the visitor's Host. */
  char req[1024];
  http_resp r;
  struct {
    const char *host, *target;
    service *svc;
    const char *seen_host;
  } seq[] = {
      {CUSTOM_HOST, "/api/v1?q=1", api, CUSTOM_HOST},
      {CUSTOM_HOST, "/", site, REWRITTEN_HOST},
      {CUSTOM_HOST, "/api", api, CUSTOM_HOST},
      {CUSTOM_HOST, "/apix", site, REWRITTEN_HOST},
      {WILD_HOST, "/w", site, REWRITTEN_HOST},
      {NULL, "/", web, NULL},
  };
  char webhost[64];
  snprintf(webhost, sizeof webhost, "web.localhost:%u", hp);
  raw_open(c, hp);
  for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
    const char *host = seq[i].host ? seq[i].host : webhost;
    size_t n = http_req(req, sizeof req, "GET", host, seq[i].target, "",
                        NULL);
    http_roundtrip(c, req, n, &r);
    expect_answer(c, &r, seq[i].svc, "GET", seq[i].target, 0);
    expect_seen(c, seq[i].svc, "Host", seq[i].seen_host ? seq[i].seen_host
                                                        : webhost);
  }
  raw_close(c);
  check_basic_auth(c, hp, secret, "alice", pass);
  service *all[] = {web, site, api, secret};
  check_unknown_host(c, hp, all, 4);
  check_tls_passthrough(c, tls, sp, "tls.localhost");
  check_tls_unknown(c, tls, sp, "nobody.localhost", 1);

  assert_int_equal(proc_count(frpc, "login to server success"), 1);
  if (proc_has(frpc, "StartWorkConn contains error"))
    FAIL(c, "the server refused some of frpc's work connections");
  for (int i = 0; i < 4; i++)
    assert_int_equal(all[i]->http_errs, 0);
  stop_proc(c, frpc);
  term_expect_clean_exit(c, srv);
}

/* HTTP and HTTPS proxies asking for use_encryption or use_compression are
 * refused with a reason frpc prints, not carried as noise. */
static void test_frpc_http_encryption_refused(void **state) {
  ctx *c = *state;
  uint16_t control, hp, sp;
  proc *srv = start_server_vhost(c, &control, &hp, &sp);
  service *web = http_svc_start(c, "web");
  frpc_opts o = {.mux = 1, .pool = -1};
  char common[1024], proxies[512];
  frpc_common(c, common, sizeof common, control, &o);
  int m = snprintf(proxies, sizeof proxies,
                   "\n[web]\ntype = http\nlocal_ip = 127.0.0.1\n"
                   "local_port = %u\nsubdomain = web\nuse_encryption = true\n"
                   "\n[tls]\ntype = https\nlocal_ip = 127.0.0.1\n"
                   "local_port = %u\nsubdomain = tls\nuse_compression = true\n",
                   web->port, web->port);
  assert_true(m > 0 && (size_t)m < sizeof proxies);
  char ini[PATH_MAX];
  write_file(ini, sizeof ini, "frpc.ini", "%s%s", common, proxies);
  proc *frpc = start_frpc(c, "frpc", ini);
  WAIT_FOR(c, (proc_has(frpc, "[web] start error") &&
               proc_has(frpc, "[tls] start error")) || frpc->exited,
           IT_WAIT_MS);
  if (!proc_has(frpc, "[web] start error: http proxies with use_encryption "
                      "or use_compression are not supported") ||
      !proc_has(frpc, "[tls] start error: https proxies with use_encryption "
                      "or use_compression are not supported"))
    FAIL(c, "frpc should print the server's refusals");
  stop_proc(c, frpc);
  term_expect_clean_exit(c, srv);
}

static void test_frpc_http_mux(void **state) {
  run_frpc_to_server_http(*state, 1);
}

/* tcp_mux = false: a TCP work connection per visitor connection. */
static void test_frpc_http_nomux(void **state) {
  run_frpc_to_server_http(*state, 0);
}

/* --------------------------------------------------------- heartbeat */

static void srv_log(int level, const char *msg, void *ud) {
  ctx *c = ud;
  (void)level;
  int n = snprintf(c->srvlog + c->srvlog_len, LOG_CAP + 1 - c->srvlog_len,
                   "%s\n", msg);
  if (n > 0)
    c->srvlog_len += (size_t)n < LOG_CAP - c->srvlog_len
                         ? (size_t)n
                         : LOG_CAP - c->srvlog_len;
}

/* "[RUNID] silent for" in the in-process server's log. */
static int srv_dropped(const ctx *c, const char *run_id) {
  char key[96];
  snprintf(key, sizeof key, "[%s] silent for", run_id);
  return strstr(c->srvlog, key) != NULL;
}

#define HB_TIMEOUT_S 3u
#define HB_WATCH_MS 8000u

/* Heartbeats keep a stock frpc connected past the server's silent-client
 * timeout. tunnel-server has no option to shorten that timeout (90 s), so
 * this case runs the library's server in-process with a 3 s timeout.
 * Four frpcs at once, watched for 8 s:
 *   A  non-mux, heartbeat every 1 s (frpc itself drops the server if no
 *      Pong arrives within 4 s)        -> stays;
 *   B  mux, heartbeat every 1 s        -> stays;
 *   C  mux, no heartbeat, yamux keepalive every 1 s (the server counts any
 *      frame of the session as a sign of life) -> stays;
 *   D  non-mux, no heartbeat: the control that shows the timeout is live
 *                                      -> dropped as silent. */
static void test_frpc_heartbeat(void **state) {
  ctx *c = *state;
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_token(cfg, c->token), 0);
  assert_int_equal(tunnel_config_set_port_range(cfg, c->lo, c->hi), 0);
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1"), 0);
  assert_int_equal(tunnel_config_set_heartbeat(cfg, 1, HB_TIMEOUT_S), 0);
  assert_int_equal(tunnel_config_set_log(cfg, srv_log, TUNNEL_LOG_INFO, c),
                   0);
  int rc = tunnel_server_new(&c->srv, &c->loop, cfg);
  tunnel_config_free(cfg);
  assert_int_equal(rc, 0);
  assert_int_equal(tunnel_server_listen(c->srv, "127.0.0.1", 0), 0);
  uint16_t control;
  assert_int_equal(tunnel_server_port(c->srv, &control), 0);
  service *echo = svc_start(c, ROLE_ECHO_SVC);

  struct {
    const char *name;
    frpc_opts o;
    int stays;
    frpc_proxy px;
    proc *p;
    char run_id[64];
  } f[] = {
      {"frpc A (non-mux, heartbeats)",
       {.mux = 0, .pool = 0, .auth_work_conns = 1, .heartbeat = 1,
        .heartbeat_timeout = 4},
       1, {"hb_a", 0, 0}, NULL, ""},
      {"frpc B (mux, heartbeats)",
       {.mux = 1, .pool = 0, .heartbeat = 1, .heartbeat_timeout = 4},
       1, {"hb_b", 0, 0}, NULL, ""},
      {"frpc C (mux, keepalive only)",
       {.mux = 1, .pool = 0, .heartbeat = -1, .heartbeat_timeout = 0,
        .mux_keepalive = 1},
       1, {"hb_c", 0, 0}, NULL, ""},
      {"frpc D (non-mux, silent)",
       {.mux = 0, .pool = 0, .auth_work_conns = 1, .heartbeat = -1,
        .heartbeat_timeout = 0},
       0, {"hb_d", 0, 0}, NULL, ""},
  };
  const int n = (int)(sizeof f / sizeof f[0]);
  for (int i = 0; i < n; i++) {
    char ini[PATH_MAX], file[32];
    f[i].px.local = echo->port;
    f[i].px.remote = pick_port(c);
    snprintf(file, sizeof file, "frpc-%d.ini", i);
    write_frpc_ini(c, ini, sizeof ini, file, control, &f[i].o, &f[i].px, 1);
    f[i].p = start_frpc(c, f[i].name, ini);
  }
  for (int i = 0; i < n; i++) {
    wait_frpc_proxies(c, f[i].p, &f[i].px, 1, 1);
    frpc_run_id(c, f[i].p, f[i].run_id, sizeof f[i].run_id);
  }
  uint64_t t0 = now_ms(c);
  WAIT_FOR(c, srv_dropped(c, f[3].run_id), HB_WATCH_MS);
  fprintf(stderr, "# the silent frpc was dropped after %llu ms\n",
          (unsigned long long)(now_ms(c) - t0));
  uint64_t elapsed = now_ms(c) - t0;
  if (elapsed < HB_WATCH_MS)
    it_sleep(&c->w, HB_WATCH_MS - elapsed);
  uint16_t ports[3];
  for (int i = 0; i < n; i++) {
    if (!f[i].stays)
      continue;
    if (srv_dropped(c, f[i].run_id) || f[i].p->exited ||
        proc_count(f[i].p, "login to server success") != 1)
      FAIL(c, "%s did not stay connected for %u ms with a %u s timeout",
           f[i].name, HB_WATCH_MS, HB_TIMEOUT_S);
    ports[i] = f[i].px.remote;
  }
  check_echo(c, ports, 3, 3);
}

/* ------------------------------------------------------------- main */

/* ================================================================ TLS */

/* PEM files made for the case: a CA, and a server certificate it signed
 * for 127.0.0.1 and "localhost". */
typedef struct tls_files {
  char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
} tls_files;

static int tls_entropy(void *ud, uint8_t *out, size_t n) {
  (void)ud;
  return uv_random(NULL, NULL, out, n, 0, NULL) == 0 ? 0 : TUNNEL_EIO;
}

static void tls_gen(const char *cn, int is_ca, const char *issuer_cert,
                    const char *issuer_key, char **cert, char **key) {
  static const char *const dns[] = {"localhost"};
  static const tunnel__certgen_ip ip = {{127, 0, 0, 1}, 4};
  uint64_t now = (uint64_t)time(NULL);
  char nb[15], na[15];
  tunnel__certgen_time(now - 3600, nb);
  tunnel__certgen_time(now + 86400, na);
  tunnel__certgen_params p = {0};
  p.entropy = tls_entropy;
  p.cn = cn;
  p.is_ca = is_ca;
  p.not_before = nb;
  p.not_after = na;
  if (!is_ca) {
    p.dns = dns;
    p.n_dns = 1;
    p.ips = &ip;
    p.n_ips = 1;
  }
  p.issuer_cert_pem = issuer_cert;
  p.issuer_key_pem = issuer_key;
  assert_int_equal(tunnel__certgen(&p, cert, key), 0);
}

static void pem_release(char *cert, char *key) {
  tunnel__wipe(key, strlen(key));
  free(key);
  free(cert);
}

/* The CA's key is dropped once it has signed: nothing else needs it. */
static void tls_files_make(tls_files *f) {
  char *ca_cert, *ca_key, *cert, *key;
  tls_gen("interop CA", 1, NULL, NULL, &ca_cert, &ca_key);
  tls_gen("localhost", 0, ca_cert, ca_key, &cert, &key);
  write_file(f->ca, sizeof f->ca, "ca.pem", "%s", ca_cert);
  write_file(f->cert, sizeof f->cert, "server.pem", "%s", cert);
  write_file(f->key, sizeof f->key, "server.key", "%s", key);
  pem_release(ca_cert, ca_key);
  pem_release(cert, key);
}

/* Our client with --tls --ca (the 0x17 marker on, as frps 0.46.1 needs it)
 * against a TLS-only frps holding a certificate from that CA: the same
 * transfers as the plain cases. */
static void run_tls_client_to_frps(ctx *c, int mux) {
  tls_files f;
  tls_files_make(&f);
  snprintf(c->frps_extra, sizeof c->frps_extra,
           "tls_only = true\ntls_cert_file = %s\ntls_key_file = %s\n",
           f.cert, f.key);
  c->client_extra[0] = "--ca";
  c->client_extra[1] = f.ca;
  run_client_to_frps(c, mux, NULL);
}

static void test_frps_tls_mux(void **state) {
  run_tls_client_to_frps(*state, 1);
}

static void test_frps_tls_nomux(void **state) {
  run_tls_client_to_frps(*state, 0);
}

/* A stock frpc with tls_enable (frp's 0x17 marker, no verification)
 * against a TLS-only tunnel-server with its generated certificate. */
static void run_tls_frpc_to_server(ctx *c, int mux) {
  c->server_extra[0] = "--tls-only";
  frpc_opts o = {.mux = mux, .pool = -1, .tls = 1};
  run_frpc_to_server(c, &o);
}

static void test_frpc_tls_mux(void **state) {
  run_tls_frpc_to_server(*state, 1);
}

static void test_frpc_tls_nomux(void **state) {
  run_tls_frpc_to_server(*state, 0);
}

/* frpc verifies tunnel-server's CA-signed certificate (tls_trusted_ca_file;
 * frpc checks the IP address it dials against the certificate): with
 * another CA it fails to log in, with the right one everything works, mux
 * and non-mux. */
static void test_frpc_tls_verify(void **state) {
  ctx *c = *state;
  tls_files f;
  tls_files_make(&f);
  char *other_cert, *other_key, other[PATH_MAX];
  tls_gen("another CA", 1, NULL, NULL, &other_cert, &other_key);
  write_file(other, sizeof other, "other-ca.pem", "%s", other_cert);
  pem_release(other_cert, other_key);
  const char *extra[] = {"--tls-only", "--tls-cert", f.cert, "--tls-key",
                         f.key};
  memcpy(c->server_extra, extra, sizeof extra);

  uint16_t control;
  proc *srv = start_server(c, &control);
  WAIT_FOR(c, proc_has(srv, "tls certificate sha256 ") || srv->exited,
           IT_WAIT_MS);
  if (!proc_has(srv, "tls certificate sha256 "))
    FAIL(c, "tunnel-server did not print its certificate's fingerprint");
  frpc_proxy px = {"refused", 1, pick_port(c)};
  frpc_opts bad = {.mux = 1, .pool = -1, .tls = 1, .tls_ca = other};
  char ini[PATH_MAX];
  write_frpc_ini(c, ini, sizeof ini, "frpc-other-ca.ini", control, &bad, &px,
                 1);
  proc *frpc = start_frpc(c, "frpc (another CA)", ini);
  WAIT_FOR(c, proc_done(frpc), EXIT_MS);
  /* frpc may report the closed session rather than the x509 error (the
   * handshake runs lazily under yamux); the server hears its alert. */
  WAIT_FOR(c, proc_has(srv, "failed: peer sent alert: bad certificate"),
           IT_WAIT_MS);
  if (frpc->status == 0 || !proc_has(frpc, "login to server failed"))
    FAIL(c, "frpc trusting another CA did not fail to log in");
  fprintf(stderr, "# frpc with another CA exited %lld\n",
          (long long)frpc->status);
  term_expect_clean_exit(c, srv);

  for (int mux = 1; mux >= 0; mux--) {
    frpc_opts o = {.mux = mux, .pool = -1, .tls = 1, .tls_ca = f.ca};
    run_frpc_to_server(c, &o);
  }
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_frps_mux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_mux_pool, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_nomux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_nomux_pool, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_wrong_token, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_port_taken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_restart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_mux_pool0, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_mux_pool5_auth, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_frpc_nomux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_nomux_auth_pool0, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_frpc_nomux_auth_pool5, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_frpc_wrong_token, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_encryption_mux, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_frpc_encryption_nomux, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_frpc_compression_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_frpc_restart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_heartbeat, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_http_mux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_http_nomux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_http_mux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_http_nomux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_http_encryption_refused,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_tls_mux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_tls_nomux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_tls_mux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_tls_nomux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frpc_tls_verify, setup, teardown),
  };
  if (argc != 5) {
    fprintf(stderr,
            "usage: %s PEERS_DIR TUNNEL_SERVER TUNNEL_CLIENT CASE\n", argv[0]);
    return 2;
  }
  peers_dir = argv[1];
  server_path = argv[2];
  client_path = argv[3];
  size_t i, n = sizeof tests / sizeof tests[0];
  for (i = 0; i < n && strcmp(tests[i].name, argv[4]) != 0; i++)
    ;
  if (i == n) {
    fprintf(stderr, "no case named %s\n", argv[4]);
    return 2;
  }
  snprintf(frps_path, sizeof frps_path, "%s/frps", peers_dir);
  snprintf(frpc_path, sizeof frpc_path, "%s/frpc", peers_dir);
  if (access(frps_path, X_OK) != 0 || access(frpc_path, X_OK) != 0) {
    printf("SKIP: no executable frps and frpc in %s\n", peers_dir);
    return 77;
  }
  /* A visitor may write to a connection a relay already closed. */
  signal(SIGPIPE, SIG_IGN);
  int fatal[] = {SIGTERM, SIGINT, SIGHUP, SIGALRM};
  for (size_t s = 0; s < sizeof fatal / sizeof fatal[0]; s++)
    signal(fatal[s], on_fatal_signal);
  cmocka_set_test_filter(argv[4]);
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
