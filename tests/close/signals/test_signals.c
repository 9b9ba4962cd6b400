/* SIGTERM ends the programs under backpressure. Each run starts a
 * tunnel-server and a tunnel-client (mux or --no-mux) exposing a local
 * service that this test runs, joins one visitor, then sends SIGTERM to one
 * of the two programs: it must exit with status 0 within EXIT_MS. The other
 * is killed afterwards (it may be reconnecting: that is not measured).
 *
 *   busy  the service and the visitor both write without end and never
 *         read, so the tunnel holds data queued both ways with both ends
 *         stalled; 0.2 to 0.5 s of transfer before the signal.
 *   idle  the visitor connects and sends nothing; the join is open.
 *
 * A case repeats its run RUNS times and stops at the first failure,
 * reporting which run it was. Every child is killed by PID (SIGKILL) and
 * reaped whatever happens.
 *
 * Usage: test-close-signals TUNNEL_SERVER TUNNEL_CLIENT CASE
 *   CASE  {busy|idle}-{mux|nomux}-sigterm-{client|server} */
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

#include "../../integration/it_common.h"

/* The signalled program must be gone this long after SIGTERM. */
#define EXIT_MS 5000u
/* Starting the programs, joining the visitor: far above a healthy run. */
#define START_MS 10000u
#define RUNS 20
/* Busy runs: at least this much transfer before the signal, and at most
 * TRANSFER_MAX_MS waiting for both writers to stall. */
#define TRANSFER_MIN_MS 200u
#define TRANSFER_MAX_MS 500u
#define STALLED_MS 100u
#define CHUNK (64u * 1024u)
#define INFLIGHT_MAX (1u << 20)
#define OUT_CAP 16384

extern char **environ;

static char *server_path, *client_path;
static uint8_t filler[CHUNK];

typedef struct scase {
  char name[64];
  int busy;
  int mux;
  int signal_server; /* else the client */
} scase;

/* ------------------------------------------------------------- children */

typedef struct proc {
  uv_process_t h;
  uv_pipe_t out, err;
  const char *name;
  char obuf[OUT_CAP + 1];
  size_t olen;
  char ebuf[OUT_CAP + 1];
  size_t elen;
  int spawned, exited;
  int64_t status;
  int term_signal;
  uint64_t exit_ms;
  int open_handles;
} proc;

typedef struct conn conn;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  uv_timer_t tick; /* keeps time-based conditions evaluated */
  char **env;
  uint16_t lo, hi;
  char token[64];
  const scase *sc;
  proc srv, cli;
  uv_tcp_t service;
  uint16_t service_port;
  conn *conns;
  conn *visitor, *service_conn;
} ctx;

static uint64_t now_ms(ctx *c) {
  uv_update_time(&c->loop);
  return uv_now(&c->loop);
}

static void tick_cb(uv_timer_t *h) { (void)h; }

static int wait_for(ctx *c, int (*pred)(ctx *), uint64_t ms) {
  it_waiter_arm(&c->w, ms);
  while (!pred(c) && !c->w.fired)
    uv_run(&c->loop, UV_RUN_ONCE);
  it_waiter_disarm(&c->w);
  return pred(c);
}

static void on_exit_cb(uv_process_t *h, int64_t status, int sig) {
  proc *p = h->data;
  p->exited = 1;
  p->status = status;
  p->term_signal = sig;
  uv_update_time(h->loop);
  p->exit_ms = uv_now(h->loop);
}

static void pipe_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
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

static void pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  proc *p = s->data;
  int is_out = s == (uv_stream_t *)&p->out;
  (void)b;
  if (n > 0) {
    size_t *len = is_out ? &p->olen : &p->elen;
    char *buf = is_out ? p->obuf : p->ebuf;
    if (*len < OUT_CAP)
      *len += (size_t)n;
    buf[*len] = '\0';
  } else if (n < 0) {
    uv_read_stop(s);
  }
}

static void proc_handle_closed(uv_handle_t *h) {
  ((proc *)h->data)->open_handles--;
}

/* Children get the test's environment without TUNNEL_* variables, so that
 * only the command line configures them. */
static char **clean_env(void) {
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + 1, sizeof *env);
  assert_non_null(env);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "TUNNEL_", 7) != 0)
      env[k++] = environ[i];
  env[k] = NULL;
  return env;
}

static void spawn(ctx *c, proc *p, const char *name, char **args) {
  memset(p, 0, sizeof *p);
  p->name = name;
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
  int rc = uv_spawn(&c->loop, &p->h, &o);
  p->spawned = 1;
  p->open_handles = 3;
  if (rc) {
    p->exited = 1; /* nothing to kill; the handles still get closed */
    fail_msg("cannot spawn %s: %s", args[0], uv_strerror(rc));
  }
  uv_read_start((uv_stream_t *)&p->out, pipe_alloc, pipe_read);
  uv_read_start((uv_stream_t *)&p->err, pipe_alloc, pipe_read);
}

/* The last lines of a child's stderr. */
static const char *err_tail(const proc *p) {
  const char *s = p->ebuf;
  return p->elen > 1500 ? s + p->elen - 1500 : s;
}

/* "PREFIX127.0.0.1:PORT\n" at the start of a line of `buf`: the port, or
 * 0. */
static uint16_t find_addr_line(const char *buf, const char *prefix) {
  for (const char *l = buf; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : l) {
    size_t pl = strlen(prefix);
    if (strncmp(l, prefix, pl) != 0 || strncmp(l + pl, "127.0.0.1:", 10))
      continue;
    char *end;
    long v = strtol(l + pl + 10, &end, 10);
    if (*end == '\n' && v > 0 && v <= 65535)
      return (uint16_t)v;
  }
  return 0;
}

/* ---------------------------------------------------- service, visitor */

/* One TCP endpoint of the test: writes filler without end (busy) or
 * nothing (idle), and never reads. */
struct conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  ctx *c;
  conn *next;
  int writes;
  int connected, failed;
  uint64_t tx_done, tx_inflight, last_tx_ms;
  int closing, closed;
};

typedef struct conn_wreq {
  uv_write_t req;
  conn *k;
} conn_wreq;

static void conn_closed_cb(uv_handle_t *h) { ((conn *)h->data)->closed = 1; }

static void conn_close(conn *k) {
  if (k->closing)
    return;
  k->closing = 1;
  uv_close((uv_handle_t *)&k->tcp, conn_closed_cb);
}

static void conn_pump(conn *k);

static void conn_written(uv_write_t *req, int status) {
  conn_wreq *w = (conn_wreq *)req;
  conn *k = w->k;
  free(w);
  k->tx_inflight -= CHUNK;
  if (status) {
    k->failed = 1;
    return;
  }
  k->tx_done += CHUNK;
  k->last_tx_ms = now_ms(k->c);
  conn_pump(k);
}

static void conn_pump(conn *k) {
  while (k->writes && !k->closing && !k->failed &&
         k->tx_inflight < INFLIGHT_MAX) {
    conn_wreq *w = malloc(sizeof *w);
    assert_non_null(w);
    w->k = k;
    uv_buf_t b = uv_buf_init((char *)filler, CHUNK);
    if (uv_write(&w->req, (uv_stream_t *)&k->tcp, &b, 1, conn_written) != 0) {
      free(w);
      k->failed = 1;
      return;
    }
    k->tx_inflight += CHUNK;
  }
}

static conn *conn_new(ctx *c) {
  conn *k = calloc(1, sizeof *k);
  assert_non_null(k);
  k->c = c;
  k->writes = c->sc->busy;
  uv_tcp_init(&c->loop, &k->tcp);
  k->tcp.data = k;
  k->next = c->conns;
  c->conns = k;
  return k;
}

static void conn_begin(conn *k) {
  k->connected = 1;
  k->last_tx_ms = now_ms(k->c);
  conn_pump(k);
}

static void on_service_conn(uv_stream_t *l, int status) {
  ctx *c = l->data;
  if (status < 0)
    return;
  conn *k = conn_new(c);
  if (uv_accept(l, (uv_stream_t *)&k->tcp) != 0) {
    conn_close(k);
    return;
  }
  if (!c->service_conn)
    c->service_conn = k;
  conn_begin(k);
}

static void on_visitor_connected(uv_connect_t *req, int status) {
  conn *k = req->data;
  if (status) {
    k->failed = 1;
    return;
  }
  conn_begin(k);
}

static void conns_close_all(ctx *c) {
  for (conn *k = c->conns; k; k = k->next)
    conn_close(k);
}

static int conns_closed(ctx *c) {
  for (conn *k = c->conns; k; k = k->next)
    if (!k->closed)
      return 0;
  return 1;
}

static void conns_free(ctx *c) {
  while (c->conns) {
    conn *k = c->conns;
    c->conns = k->next;
    free(k);
  }
  c->visitor = c->service_conn = NULL;
}

/* -------------------------------------------------------------- fixture */

static int setup(void **state) {
  ctx *c = calloc(1, sizeof *c);
  if (!c || uv_loop_init(&c->loop) != 0)
    return -1;
  it_waiter_init(&c->w, &c->loop);
  uv_timer_init(&c->loop, &c->tick);
  uv_timer_start(&c->tick, tick_cb, 20, 20);
  c->env = clean_env();
  it_pick_range(&c->lo, &c->hi);
  snprintf(c->token, sizeof c->token, "sig-%08x", it_random32());
  c->sc = *state;
  uv_tcp_init(&c->loop, &c->service);
  c->service.data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  int len = sizeof a;
  if (uv_tcp_bind(&c->service, (const struct sockaddr *)&a, 0) != 0 ||
      uv_listen((uv_stream_t *)&c->service, 64, on_service_conn) != 0 ||
      uv_tcp_getsockname(&c->service, (struct sockaddr *)&a, &len) != 0)
    return -1;
  c->service_port = ntohs(a.sin_port);
  *state = c;
  return 0;
}

static int procs_exited(ctx *c) {
  return (!c->srv.spawned || c->srv.exited) &&
         (!c->cli.spawned || c->cli.exited);
}

static int procs_closed(ctx *c) {
  return c->srv.open_handles == 0 && c->cli.open_handles == 0;
}

/* Kills what still runs (by PID, SIGKILL), reaps it, closes the children's
 * handles and the test's connections. Whether everything went. */
static int end_run(ctx *c) {
  proc *ps[2] = {&c->srv, &c->cli};
  for (int i = 0; i < 2; i++)
    if (ps[i]->spawned && !ps[i]->exited)
      uv_process_kill(&ps[i]->h, SIGKILL);
  /* The exit callback means libuv has reaped the child (waitpid). */
  int ok = wait_for(c, procs_exited, IT_WAIT_MS);
  for (int i = 0; i < 2; i++) {
    proc *p = ps[i];
    if (!p->spawned)
      continue;
    if (!p->exited)
      fprintf(stderr, "%s (pid %d) did not die\n", p->name, p->h.pid);
    uv_close((uv_handle_t *)&p->h, proc_handle_closed);
    uv_close((uv_handle_t *)&p->out, proc_handle_closed);
    uv_close((uv_handle_t *)&p->err, proc_handle_closed);
    p->spawned = 0;
  }
  conns_close_all(c);
  ok &= wait_for(c, procs_closed, IT_WAIT_MS);
  ok &= wait_for(c, conns_closed, IT_WAIT_MS);
  conns_free(c);
  return ok;
}

static int teardown(void **state) {
  ctx *c = *state;
  int ok = end_run(c);
  uv_close((uv_handle_t *)&c->service, NULL);
  uv_close((uv_handle_t *)&c->tick, NULL);
  if (it_waiter_finish(&c->w, IT_WAIT_MS) != 0) {
    fprintf(stderr, "teardown: loop did not close\n");
    ok = 0;
  }
  free(c->env);
  free(c);
  return ok ? 0 : -1;
}

/* ----------------------------------------------------------------- runs */

static int server_ready(ctx *c) {
  return c->srv.exited || find_addr_line(c->srv.obuf, "listening on ");
}

static int client_ready(ctx *c) {
  return c->cli.exited || find_addr_line(c->cli.obuf, "tcp://");
}

static int joined(ctx *c) {
  return c->service_conn || (c->visitor && c->visitor->failed);
}

static int conn_stalled(ctx *c, conn *k) {
  return k->tx_done > 0 && now_ms(c) - k->last_tx_ms >= STALLED_MS;
}

static int both_stalled(ctx *c) {
  return conn_stalled(c, c->visitor) && conn_stalled(c, c->service_conn);
}

static int target_exited(ctx *c) {
  return (c->sc->signal_server ? &c->srv : &c->cli)->exited;
}

/* One run; its SIGTERM-to-exit time. */
static uint64_t run_once(ctx *c, int run) {
  const scase *sc = c->sc;
  char ports[32], control[32], local[32], name[32];
  snprintf(ports, sizeof ports, "%u-%u", c->lo, c->hi);
  snprintf(control, sizeof control, "127.0.0.1:0");
  /* These cases are about stopping at once; draining has its own tests
   * (tests/close/drain). */
  char *sargs[] = {server_path, "--control", control, "--bind", "127.0.0.1",
                   "--ports", ports, "--token", c->token, "--drain-ms", "0",
                   NULL};
  spawn(c, &c->srv, "tunnel-server", sargs);
  wait_for(c, server_ready, START_MS);
  uint16_t sport = find_addr_line(c->srv.obuf, "listening on ");
  if (!sport)
    fail_msg("run %d: tunnel-server did not print its address:\n%s", run,
             err_tail(&c->srv));

  char server[32];
  snprintf(server, sizeof server, "127.0.0.1:%u", sport);
  snprintf(local, sizeof local, "127.0.0.1:%u", c->service_port);
  snprintf(name, sizeof name, "sig-%d", run);
  char *cargs[] = {client_path, "--server", server, "--token", c->token,
                   "--drain-ms", "0", "tcp", local, "--name", name,
                   sc->mux ? NULL : "--no-mux", NULL};
  spawn(c, &c->cli, "tunnel-client", cargs);
  wait_for(c, client_ready, START_MS);
  uint16_t pub = find_addr_line(c->cli.obuf, "tcp://");
  if (!pub)
    fail_msg("run %d: tunnel-client did not print its public address:\n%s",
             run, err_tail(&c->cli));

  c->visitor = conn_new(c);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", pub, &a);
  c->visitor->creq.data = c->visitor;
  assert_int_equal(uv_tcp_connect(&c->visitor->creq, &c->visitor->tcp,
                                  (const struct sockaddr *)&a,
                                  on_visitor_connected),
                   0);
  if (!wait_for(c, joined, START_MS) || c->visitor->failed)
    fail_msg("run %d: the visitor was not joined to the service within %u "
             "ms",
             run, START_MS);
  if (sc->busy) {
    it_sleep(&c->w, TRANSFER_MIN_MS);
    wait_for(c, both_stalled, TRANSFER_MAX_MS - TRANSFER_MIN_MS);
    if (!c->visitor->tx_done || !c->service_conn->tx_done)
      fail_msg("run %d: no transfer (visitor wrote %llu, service %llu)", run,
               (unsigned long long)c->visitor->tx_done,
               (unsigned long long)c->service_conn->tx_done);
  }
  if (c->srv.exited || c->cli.exited)
    fail_msg("run %d: %s exited before the signal:\n%s", run,
             c->srv.exited ? "tunnel-server" : "tunnel-client",
             err_tail(c->srv.exited ? &c->srv : &c->cli));

  proc *target = sc->signal_server ? &c->srv : &c->cli;
  uint64_t t0 = now_ms(c);
  assert_int_equal(uv_process_kill(&target->h, SIGTERM), 0);
  wait_for(c, target_exited, EXIT_MS);
  if (!target->exited)
    fail_msg("run %d of %d: %s did not exit within %u ms of SIGTERM (%s "
             "visitor: wrote %llu bytes, service %llu); its stderr:\n%s",
             run, RUNS, target->name, EXIT_MS,
             sc->busy ? "busy" : "idle",
             (unsigned long long)c->visitor->tx_done,
             (unsigned long long)c->service_conn->tx_done,
             err_tail(target));
  uint64_t took = target->exit_ms - t0;
  if (target->status != 0 || target->term_signal != 0)
    fail_msg("run %d: %s exited with status %lld, signal %d after SIGTERM; "
             "its stderr:\n%s",
             run, target->name, (long long)target->status,
             target->term_signal, err_tail(target));
  if (!end_run(c))
    fail_msg("run %d: the other program or a connection would not go", run);
  return took;
}

static void run_case(void **state) {
  ctx *c = *state;
  int runs = RUNS;
  uint64_t worst = 0, total = 0;
  for (int run = 1; run <= runs; run++) {
    uint64_t took = run_once(c, run);
    total += took;
    if (took > worst)
      worst = took;
  }
  fprintf(stderr, "# %s: %d/%d runs exited 0 after SIGTERM; mean %llu ms, "
                  "worst %llu ms\n",
          c->sc->name, runs, runs, (unsigned long long)(total / runs),
          (unsigned long long)worst);
}

static int parse_case(const char *s, scase *sc) {
  memset(sc, 0, sizeof *sc);
  size_t len = strlen(s);
  if (len >= sizeof sc->name)
    return -1;
  memcpy(sc->name, s, len + 1);
  if (strncmp(s, "busy-", 5) == 0)
    sc->busy = 1;
  else if (strncmp(s, "idle-", 5) != 0)
    return -1;
  s += 5;
  if (strncmp(s, "mux-", 4) == 0) {
    sc->mux = 1;
    s += 4;
  } else if (strncmp(s, "nomux-", 6) == 0) {
    s += 6;
  } else {
    return -1;
  }
  if (strcmp(s, "sigterm-server") == 0)
    sc->signal_server = 1;
  else if (strcmp(s, "sigterm-client") != 0)
    return -1;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s TUNNEL_SERVER TUNNEL_CLIENT CASE\n", argv[0]);
    return 2;
  }
  server_path = argv[1];
  client_path = argv[2];
  static scase sc;
  if (parse_case(argv[3], &sc) != 0) {
    fprintf(stderr, "no case named %s\n", argv[3]);
    return 2;
  }
  /* The test's endpoints write to connections the programs close. */
  signal(SIGPIPE, SIG_IGN);
  for (size_t i = 0; i < sizeof filler; i++)
    filler[i] = (uint8_t)(i * 131u + 7u);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_prestate_setup_teardown(run_case, setup, teardown,
                                               &sc),
  };
  return cmocka_run_group_tests_name(sc.name, tests, NULL, NULL) ? 1 : 0;
}
