/* The command-line programs, driven as child processes over loopback:
 * tunnel-server, tunnel-client and hello-service are spawned with uv_spawn,
 * their stdout/stderr captured through pipes, and held to the contract in
 * their usage text (addresses printed alone on stdout, refusals reported on
 * stderr with exit status 1 within seconds, SIGTERM a clean exit 0).
 * Every child is killed by PID and reaped at the end of each test, also
 * when the test fails.
 *
 * Usage: test-integration-cli TUNNEL_SERVER TUNNEL_CLIENT HELLO_SERVICE [TEST]
 * (default: all tests) */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include <uv.h>

#include "it_common.h"

/* Refusals and signals must take effect within this (the contract says
 * "within seconds"). */
#define EXIT_MS 5000u
#define MAX_PROCS 8
#define OUT_CAP 16384

extern char **environ;

static char *server_path, *client_path, *hello_path;

typedef struct proc {
  uv_process_t h;
  uv_pipe_t out, err;
  const char *name;
  char obuf[OUT_CAP + 1];
  size_t olen;
  char ebuf[OUT_CAP + 1];
  size_t elen;
  int exited;
  int64_t status;
  int term_signal;
  uint64_t start_ms, exit_ms;
  int out_eof, err_eof;
  int handles; /* still open */
} proc;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  proc procs[MAX_PROCS];
  int nprocs;
  char **env;
  uint16_t lo, hi;
  char token[64];
  char dir[64];       /* token files, removed at teardown */
  char files[4][128];
  int nfiles;
} ctx;

#define WAIT_MS(c, cond, ms) IT_WAIT(&(c)->w, cond, ms)
#define WAIT(c, cond) IT_WAIT(&(c)->w, cond, IT_WAIT_MS)

static uint64_t now_ms(ctx *c) {
  uv_update_time(&c->loop);
  return uv_now(&c->loop);
}

/* ------------------------------------------------------------ children */

static void on_exit_cb(uv_process_t *h, int64_t status, int sig) {
  proc *p = h->data;
  p->exited = 1;
  p->status = status;
  p->term_signal = sig;
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

static void proc_handle_closed(uv_handle_t *h) { ((proc *)h->data)->handles--; }

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

static proc *spawn(ctx *c, const char *name, char **args) {
  assert_true(c->nprocs < MAX_PROCS);
  proc *p = &c->procs[c->nprocs++];
  memset(p, 0, sizeof *p);
  p->name = name;
  uv_pipe_init(&c->loop, &p->out, 0);
  uv_pipe_init(&c->loop, &p->err, 0);
  p->out.data = p->err.data = p->h.data = p;
  p->handles = 3;
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
  assert_int_equal(uv_read_start((uv_stream_t *)&p->out, on_alloc,
                                 on_pipe_read),
                   0);
  assert_int_equal(uv_read_start((uv_stream_t *)&p->err, on_alloc,
                                 on_pipe_read),
                   0);
  return p;
}

/* Exited, and its output read to the end. */
static int proc_done(const proc *p) {
  return p->exited && p->out_eof && p->err_eof;
}

static int has_line(const char *buf) { return strchr(buf, '\n') != NULL; }

static int count_lines(const char *buf) {
  int n = 0;
  for (; *buf; buf++)
    n += *buf == '\n';
  return n;
}

static void dump(const proc *p) {
  fprintf(stderr, "--- %s: exited %d status %lld signal %d\n--- stdout:\n%s"
                  "--- stderr:\n%s---\n",
          p->name, p->exited, (long long)p->status, p->term_signal, p->obuf,
          p->ebuf);
}

/* Waits for a child's exit and checks how it exited. */
static void expect_exit(ctx *c, proc *p, int status, uint64_t within_ms) {
  WAIT_MS(c, proc_done(p), within_ms + 2000);
  uint64_t took = p->exit_ms - p->start_ms;
  if (p->status != status || p->term_signal != 0 || took > within_ms) {
    dump(p);
    fail_msg("%s: expected exit %d within %llu ms; got status %lld, signal "
             "%d after %llu ms",
             p->name, status, (unsigned long long)within_ms,
             (long long)p->status, p->term_signal, (unsigned long long)took);
  }
}

/* ------------------------------------------------------------ fixtures */

static int setup(void **state) {
  ctx *c = calloc(1, sizeof *c);
  if (!c)
    return -1;
  if (uv_loop_init(&c->loop) != 0)
    return -1;
  it_waiter_init(&c->w, &c->loop);
  c->env = clean_env();
  it_pick_range(&c->lo, &c->hi);
  snprintf(c->token, sizeof c->token, "it-%08x", it_random32());
  *state = c;
  return 0;
}

/* Kills every child still running (by PID, through uv_process_kill), reaps
 * it, and closes everything. Runs after failed tests too. */
static int teardown(void **state) {
  ctx *c = *state;
  int ok = 1;
  for (int i = 0; i < c->nprocs; i++) {
    proc *p = &c->procs[i];
    if (!p->exited && uv_process_kill(&p->h, SIGKILL) != 0)
      ok = 0;
  }
  /* Exit callbacks mean libuv has reaped the children (waitpid). */
  it_waiter_arm(&c->w, IT_WAIT_MS);
  for (;;) {
    int pending = 0;
    for (int i = 0; i < c->nprocs; i++)
      pending |= !c->procs[i].exited;
    if (!pending || c->w.fired)
      break;
    uv_run(&c->loop, UV_RUN_ONCE);
  }
  it_waiter_disarm(&c->w);
  for (int i = 0; i < c->nprocs; i++) {
    proc *p = &c->procs[i];
    if (!p->exited) {
      fprintf(stderr, "teardown: %s (pid %d) did not die\n", p->name,
              p->h.pid);
      ok = 0;
    }
    uv_close((uv_handle_t *)&p->h, proc_handle_closed);
    uv_close((uv_handle_t *)&p->out, proc_handle_closed);
    uv_close((uv_handle_t *)&p->err, proc_handle_closed);
  }
  if (it_waiter_finish(&c->w, IT_WAIT_MS) != 0) {
    fprintf(stderr, "teardown: loop did not close\n");
    ok = 0;
  }
  for (int i = 0; i < c->nfiles; i++)
    remove(c->files[i]);
  if (c->dir[0])
    rmdir(c->dir);
  free(c->env);
  free(c);
  return ok ? 0 : -1;
}

/* A first line "PREFIX127.0.0.1:PORT\n" (later lines are other news): the
 * port, or 0. */
static uint16_t parse_addr_line(const char *buf, const char *prefix) {
  size_t pl = strlen(prefix);
  if (strncmp(buf, prefix, pl) != 0 || strncmp(buf + pl, "127.0.0.1:", 10))
    return 0;
  const char *s = buf + pl + 10;
  char *end;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\n' || v <= 0 || v > 65535)
    return 0;
  return (uint16_t)v;
}

/* tunnel-server with its control port at *port (0: ephemeral, and *port
 * receives it), its token given as `opt` `val` (--token or --token-file). */
static proc *start_server_token(ctx *c, uint16_t *port, const char *opt,
                                const char *val) {
  char ports[32], control[32];
  snprintf(ports, sizeof ports, "%u-%u", c->lo, c->hi);
  snprintf(control, sizeof control, "127.0.0.1:%u", *port);
  char *args[] = {server_path, "--control", control, "--bind", "127.0.0.1",
                  "--ports", ports, (char *)opt, (char *)val, NULL};
  proc *p = spawn(c, "tunnel-server", args);
  WAIT(c, has_line(p->obuf) || p->exited);
  uint16_t want = *port;
  *port = parse_addr_line(p->obuf, "listening on ");
  if (!*port || (want && *port != want)) {
    dump(p);
    fail_msg("tunnel-server did not print 'listening on 127.0.0.1:PORT'");
  }
  return p;
}

static proc *start_server(ctx *c, uint16_t *port) {
  return start_server_token(c, port, "--token", c->token);
}

static proc *start_hello(ctx *c, uint16_t *port) {
  char *args[] = {hello_path, NULL};
  proc *p = spawn(c, "hello-service", args);
  WAIT(c, has_line(p->obuf) || p->exited);
  *port = parse_addr_line(p->obuf, "");
  if (!*port) {
    dump(p);
    fail_msg("hello-service did not print its address");
  }
  return p;
}

/* tunnel-client exposing 127.0.0.1:local_port; remote_port 0: any;
 * `option` (may be NULL): one more flag, such as --no-mux. */
static proc *spawn_client_opt(ctx *c, const char *name, uint16_t server_port,
                              const char *token, uint16_t local_port,
                              uint16_t remote_port, const char *option) {
  char server[32], local[32], remote[16];
  snprintf(server, sizeof server, "127.0.0.1:%u", server_port);
  snprintf(local, sizeof local, "127.0.0.1:%u", local_port);
  snprintf(remote, sizeof remote, "%u", remote_port);
  char *args[] = {client_path, "--server", server, "--token", (char *)token,
                  "tcp", local, "--name", (char *)name, "--remote-port",
                  remote, (char *)option, NULL};
  return spawn(c, name, args);
}

static proc *spawn_client(ctx *c, const char *name, uint16_t server_port,
                          const char *token, uint16_t local_port,
                          uint16_t remote_port) {
  return spawn_client_opt(c, name, server_port, token, local_port,
                          remote_port, NULL);
}

/* Waits for the public address, printed alone on stdout. */
static uint16_t wait_public(ctx *c, proc *p) {
  WAIT(c, has_line(p->obuf) || p->exited);
  uint16_t port = parse_addr_line(p->obuf, "tcp://");
  if (!port || p->exited) {
    dump(p);
    fail_msg("%s did not print 'tcp://127.0.0.1:PORT' alone on stdout",
             p->name);
  }
  assert_true(port >= c->lo && port <= c->hi);
  return port;
}

/* ------------------------------------------------------------ visitor */

typedef struct fetch {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  char buf[4096];
  size_t len;
  int done, err, closed;
} fetch;

static void fetch_closed(uv_handle_t *h) { ((fetch *)h->data)->closed = 1; }

static void fetch_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  fetch *f = h->data;
  (void)hint;
  size_t room = sizeof f->buf - 1 - f->len;
  if (room == 0) { /* keep draining into the last byte */
    *b = uv_buf_init(f->buf + sizeof f->buf - 2, 1);
    return;
  }
  *b = uv_buf_init(f->buf + f->len, (unsigned)room);
}

static void fetch_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  fetch *f = s->data;
  (void)b;
  if (n > 0) {
    if (f->len < sizeof f->buf - 1)
      f->len += (size_t)n;
    f->buf[f->len] = '\0';
    return;
  }
  if (n < 0) {
    f->done = 1;
    f->err = n == UV_EOF ? 0 : (int)n;
    uv_close((uv_handle_t *)s, fetch_closed);
  }
}

static void fetch_written(uv_write_t *req, int status) {
  fetch *f = req->data;
  if (status && !f->done) {
    f->done = 1;
    f->err = status;
    uv_close((uv_handle_t *)&f->tcp, fetch_closed);
  }
}

static void fetch_connected(uv_connect_t *req, int status) {
  fetch *f = req->data;
  if (status) {
    f->done = 1;
    f->err = status;
    uv_close((uv_handle_t *)&f->tcp, fetch_closed);
    return;
  }
  static char request[] = "GET / HTTP/1.0\r\nHost: it\r\n\r\n";
  uv_buf_t b = uv_buf_init(request, sizeof request - 1);
  f->wreq.data = f;
  uv_write(&f->wreq, (uv_stream_t *)&f->tcp, &b, 1, fetch_written);
  uv_read_start((uv_stream_t *)&f->tcp, fetch_alloc, fetch_read);
}

/* An HTTP GET to 127.0.0.1:port, read to EOF; the response. */
static void http_get(ctx *c, uint16_t port, fetch *f) {
  memset(f, 0, sizeof *f);
  uv_tcp_init(&c->loop, &f->tcp);
  f->tcp.data = f;
  f->creq.data = f;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  assert_int_equal(uv_tcp_connect(&f->creq, &f->tcp, (struct sockaddr *)&a,
                                  fetch_connected),
                   0);
  WAIT(c, f->closed);
}

static void expect_hello(ctx *c, uint16_t port) {
  fetch f;
  http_get(c, port, &f);
  if (f.err || !strstr(f.buf, "Hello from behind the tunnel"))
    fail_msg("fetching 127.0.0.1:%u: %s; got:\n%s", port,
             f.err ? uv_strerror(f.err) : "no greeting", f.buf);
}

/* Exactly one line on stderr, mentioning the refusal; nothing on stdout. */
static void expect_refusal_line(const proc *p) {
  if (p->olen != 0 || count_lines(p->ebuf) != 1 ||
      p->ebuf[p->elen - 1] != '\n' || !strstr(p->ebuf, "refused")) {
    dump(p);
    fail_msg("%s: expected one stderr line mentioning the refusal and an "
             "empty stdout",
             p->name);
  }
  fprintf(stderr, "# %s said: %s", p->name, p->ebuf);
}

/* -------------------------------------------------------------- tests */

/* --help and --version succeed and print on stdout. */
static void test_help_version(void **state) {
  ctx *c = *state;
  struct {
    char *path;
    const char *name;
  } bins[] = {{server_path, "tunnel-server"}, {client_path, "tunnel-client"}};
  for (size_t i = 0; i < 2; i++) {
    char *help[] = {bins[i].path, "--help", NULL};
    proc *p = spawn(c, bins[i].name, help);
    expect_exit(c, p, 0, EXIT_MS);
    assert_non_null(strstr(p->obuf, "usage: "));
    /* The safer way to pass the secret, and which source wins. */
    assert_non_null(strstr(p->obuf, "--token-file"));
    assert_non_null(strstr(p->obuf, "precedence: --token, then --token-file, "
                                    "then\n"));
    char *version[] = {bins[i].path, "--version", NULL};
    p = spawn(c, bins[i].name, version);
    expect_exit(c, p, 0, EXIT_MS);
    char want[64];
    snprintf(want, sizeof want, "%s ", bins[i].name);
    assert_true(strncmp(p->obuf, want, strlen(want)) == 0);
    assert_int_equal(count_lines(p->obuf), 1);
  }
}

/* The whole path: the server listens, the client prints its public
 * address, a visitor there reaches hello-service; SIGTERM ends both
 * programs with status 0. */
static void run_tunnel(ctx *c, const char *option) {
  uint16_t sport = 0, hport;
  proc *srv = start_server(c, &sport);
  start_hello(c, &hport);
  proc *cli = spawn_client_opt(c, "tunnel-client", sport, c->token, hport, 0,
                               option);
  uint16_t pub = wait_public(c, cli);
  expect_hello(c, pub);
  expect_hello(c, pub); /* a second visitor too */

  uv_process_kill(&cli->h, SIGTERM);
  expect_exit(c, cli, 0, EXIT_MS);
  assert_int_equal(count_lines(cli->obuf), 1); /* the address, alone */
  uv_process_kill(&srv->h, SIGTERM);
  expect_exit(c, srv, 0, EXIT_MS);
  /* Its address, and the fingerprint of the certificate it made. */
  assert_int_equal(count_lines(srv->obuf), 2);
  assert_non_null(strstr(srv->obuf, "\ntls certificate (generated) sha256 "));
}

static void test_tunnel(void **state) { run_tunnel(*state, NULL); }

/* The same with one TCP connection per visitor. */
static void test_tunnel_no_mux(void **state) { run_tunnel(*state, "--no-mux"); }

/* A wrong token: the client exits 1 within seconds with one stderr line
 * saying the login was refused. */
static void test_wrong_token(void **state) {
  ctx *c = *state;
  uint16_t sport = 0, hport;
  proc *srv = start_server(c, &sport);
  start_hello(c, &hport);
  proc *cli = spawn_client(c, "tunnel-client (wrong token)", sport,
                           "not-the-token", hport, 0);
  expect_exit(c, cli, 1, EXIT_MS);
  expect_refusal_line(cli);
  assert_false(srv->exited); /* the server carries on */
}

/* A requested port that another client holds: the second client exits 1
 * within seconds, reporting the refusal; the first keeps working. */
static void test_port_taken(void **state) {
  ctx *c = *state;
  uint16_t sport = 0, hport;
  start_server(c, &sport);
  start_hello(c, &hport);
  proc *first = spawn_client(c, "tunnel-client (first)", sport, c->token,
                             hport, 0);
  uint16_t pub = wait_public(c, first);
  proc *second = spawn_client(c, "tunnel-client (second)", sport, c->token,
                              hport, pub);
  expect_exit(c, second, 1, EXIT_MS);
  /* Login itself succeeded, so an informational line may precede it; the
   * refusal is one line. */
  assert_int_equal(second->olen, 0);
  int refusals = 0;
  for (const char *l = second->ebuf; *l;) {
    const char *nl = strchr(l, '\n');
    size_t n = nl ? (size_t)(nl - l) : strlen(l);
    char line[1024];
    snprintf(line, sizeof line, "%.*s", (int)n, l);
    refusals += strstr(line, "refused") != NULL;
    l += n + (nl != NULL);
  }
  if (refusals != 1) {
    dump(second);
    fail_msg("expected exactly one stderr line reporting the refusal");
  }
  fprintf(stderr, "# second client said:\n%s", second->ebuf);
  expect_hello(c, pub);
  assert_false(first->exited);
}

/* The usage text promises that a lost connection is re-established: the
 * server goes away and comes back on the same control port; the client,
 * still running, logs in again, prints its (new) public address on a new
 * stdout line, and serves visitors there. */
static void test_reconnect(void **state) {
  ctx *c = *state;
  uint16_t sport = it_free_port_in(c->lo, c->hi), hport;
  assert_true(sport != 0);
  proc *srv = start_server(c, &sport);
  start_hello(c, &hport);
  proc *cli = spawn_client(c, "tunnel-client", sport, c->token, hport, 0);
  expect_hello(c, wait_public(c, cli));

  uv_process_kill(&srv->h, SIGTERM);
  expect_exit(c, srv, 0, EXIT_MS);
  /* Restarted at once: the client's first retry (after 1 s) finds it. */
  srv = start_server(c, &sport);
  WAIT(c, count_lines(cli->obuf) >= 2 || cli->exited);
  if (cli->exited) {
    dump(cli);
    fail_msg("tunnel-client exited instead of reconnecting");
  }
  uint16_t pub = parse_addr_line(strchr(cli->obuf, '\n') + 1, "tcp://");
  if (!pub) {
    dump(cli);
    fail_msg("no second 'tcp://127.0.0.1:PORT' line after reconnecting");
  }
  expect_hello(c, pub);
  uv_process_kill(&cli->h, SIGTERM);
  expect_exit(c, cli, 0, EXIT_MS);
}

/* ---------------------------------------------------------- token files */

/* A file in the test's directory holding `content`, with `mode`. */
static const char *token_file(ctx *c, const char *name, const char *content,
                              mode_t mode) {
  if (!c->dir[0]) {
    snprintf(c->dir, sizeof c->dir, "/tmp/it-cli-XXXXXX");
    if (!mkdtemp(c->dir)) {
      c->dir[0] = '\0';
      fail_msg("mkdtemp failed");
    }
  }
  assert_true(c->nfiles < 4);
  char *path = c->files[c->nfiles++];
  snprintf(path, sizeof c->files[0], "%s/%s", c->dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(content, f);
  assert_int_equal(fclose(f), 0);
  assert_int_equal(chmod(path, mode), 0);
  return path;
}

static proc *spawn_client_args(ctx *c, const char *name, uint16_t sport,
                               uint16_t lport, const char *o1,
                               const char *v1, const char *o2,
                               const char *v2) {
  char server[32], local[32];
  snprintf(server, sizeof server, "127.0.0.1:%u", sport);
  snprintf(local, sizeof local, "127.0.0.1:%u", lport);
  char *args[] = {client_path, "--server", server, "tcp", local,
                  (char *)o1, (char *)v1, (char *)o2, (char *)v2, NULL};
  return spawn(c, name, args);
}

/* The token from --token-file on both sides (its line ending stripped,
 * what follows the first line ignored): the tunnel works, and a file only
 * its owner may read draws no warning. */
static void test_token_file(void **state) {
  ctx *c = *state;
  char content[128];
  snprintf(content, sizeof content, "%s\r\nsecond line ignored\n", c->token);
  const char *path = token_file(c, "token", content, 0600);
  uint16_t sport = 0, hport;
  proc *srv = start_server_token(c, &sport, "--token-file", path);
  start_hello(c, &hport);
  proc *cli = spawn_client_args(c, "tunnel-client", sport, hport,
                                "--token-file", path, NULL, NULL);
  expect_hello(c, wait_public(c, cli));
  if (strstr(srv->ebuf, "warning") || strstr(cli->ebuf, "warning")) {
    dump(srv);
    dump(cli);
    fail_msg("a mode 600 token file drew a warning");
  }
  uv_process_kill(&cli->h, SIGTERM);
  expect_exit(c, cli, 0, EXIT_MS);
  uv_process_kill(&srv->h, SIGTERM);
  expect_exit(c, srv, 0, EXIT_MS);
  assert_null(strstr(srv->ebuf, c->token));
  assert_null(strstr(cli->ebuf, c->token));
}

/* --token wins over --token-file, which wins over $TUNNEL_TOKEN: a client
 * given a wrong value at each lower level still logs in. */
static void test_token_precedence(void **state) {
  ctx *c = *state;
  const char *right = token_file(c, "right", c->token, 0600);
  const char *wrong = token_file(c, "wrong", "not-the-token\n", 0600);
  uint16_t sport = 0, hport;
  start_server(c, &sport);
  start_hello(c, &hport);
  proc *a = spawn_client_args(c, "tunnel-client (--token over a file)",
                              sport, hport, "--token-file", wrong,
                              "--token", c->token);
  expect_hello(c, wait_public(c, a));
  /* The environment for the next child only. */
  size_t n = 0;
  while (c->env[n])
    n++;
  char **env = calloc(n + 2, sizeof *env);
  assert_non_null(env);
  memcpy(env, c->env, n * sizeof *env);
  env[n] = "TUNNEL_TOKEN=not-the-token";
  char **saved = c->env;
  c->env = env;
  proc *b = spawn_client_args(c, "tunnel-client (a file over $TUNNEL_TOKEN)",
                              sport, hport, "--token-file", right, NULL,
                              NULL);
  proc *e = spawn_client_args(c, "tunnel-client ($TUNNEL_TOKEN, wrong)",
                              sport, hport, NULL, NULL, NULL, NULL);
  c->env = saved;
  free(env);
  expect_hello(c, wait_public(c, b));
  /* The check that the environment is read at all: alone, it is used. */
  expect_exit(c, e, 1, EXIT_MS);
  expect_refusal_line(e);
}

/* A missing or empty file: one stderr line naming it, exit status 2, for
 * the server and the client alike. */
static void test_token_file_errors(void **state) {
  ctx *c = *state;
  const char *empty = token_file(c, "empty", "\r\n", 0600);
  char missing[160];
  snprintf(missing, sizeof missing, "%s/missing", c->dir);
  struct {
    char *path;
    const char *name;
  } bins[] = {{server_path, "tunnel-server"}, {client_path, "tunnel-client"}};
  for (size_t i = 0; i < 2; i++) {
    const char *files[] = {missing, empty};
    for (size_t k = 0; k < 2; k++) {
      char *args[] = {bins[i].path, "--token-file", (char *)files[k], "tcp",
                      "80", NULL};
      if (i == 0)
        args[3] = NULL; /* the server takes no proxy */
      proc *p = spawn(c, bins[i].name, args);
      expect_exit(c, p, 2, EXIT_MS);
      if (p->olen != 0 || count_lines(p->ebuf) != 1 ||
          !strstr(p->ebuf, files[k]) ||
          !strstr(p->ebuf, k == 0 ? "No such file" : "empty")) {
        dump(p);
        fail_msg("%s --token-file %s: expected one stderr line naming the "
                 "file and the problem",
                 bins[i].name, files[k]);
      }
      fprintf(stderr, "# %s said: %s", bins[i].name, p->ebuf);
    }
  }
}

/* A token file that group or others may read works, with one warning line
 * naming it. */
static void test_token_file_readable(void **state) {
  ctx *c = *state;
  const char *path = token_file(c, "token", c->token, 0640);
  uint16_t sport = 0, hport;
  proc *srv = start_server_token(c, &sport, "--token-file", path);
  start_hello(c, &hport);
  proc *cli = spawn_client_args(c, "tunnel-client", sport, hport,
                                "--token-file", path, NULL, NULL);
  expect_hello(c, wait_public(c, cli));
  for (int i = 0; i < 2; i++) {
    proc *p = i ? cli : srv;
    size_t warnings = 0;
    for (const char *s = p->ebuf; (s = strstr(s, "warning")) != NULL; s++)
      warnings++;
    if (warnings != 1 || !strstr(p->ebuf, path) ||
        !strstr(p->ebuf, "readable by group or others")) {
      dump(p);
      fail_msg("%s: expected one warning naming the group-readable token "
               "file",
               p->name);
    }
  }
  fprintf(stderr, "# tunnel-server said: %s", srv->ebuf);
}

/* ------------------------------------------------------------------ TLS */

/* tunnel-server with its token and one more flag (such as --tls-only). */
static proc *start_server_flag(ctx *c, uint16_t *port, const char *flag) {
  char ports[32], control[32];
  snprintf(ports, sizeof ports, "%u-%u", c->lo, c->hi);
  snprintf(control, sizeof control, "127.0.0.1:%u", *port);
  char *args[] = {server_path, "--control", control, "--bind", "127.0.0.1",
                  "--ports", ports, "--token", c->token, (char *)flag, NULL};
  proc *p = spawn(c, "tunnel-server", args);
  WAIT(c, has_line(p->obuf) || p->exited);
  *port = parse_addr_line(p->obuf, "listening on ");
  if (!*port) {
    dump(p);
    fail_msg("tunnel-server did not print 'listening on 127.0.0.1:PORT'");
  }
  return p;
}

/* The fingerprint line tunnel-server prints for the certificate it made:
 * "tls certificate (generated) sha256 AB:CD:..." (32 bytes in hex). */
static void server_fingerprint(ctx *c, proc *srv, char fp[96]) {
  static const char tag[] = "\ntls certificate (generated) sha256 ";
  WAIT(c, (strstr(srv->obuf, tag) && strchr(strstr(srv->obuf, tag) + 1, '\n'))
              || srv->exited);
  const char *s = strstr(srv->obuf, tag);
  size_t n = s ? strcspn(s + sizeof tag - 1, "\n") : 0;
  if (n != 95) {
    dump(srv);
    fail_msg("tunnel-server did not print its certificate's fingerprint");
  }
  memcpy(fp, s + sizeof tag - 1, 95);
  fp[95] = '\0';
  for (size_t i = 0; i < 95; i++)
    assert_true(i % 3 == 2 ? fp[i] == ':'
                           : strchr("0123456789ABCDEF", fp[i]) != NULL);
}

/* tunnel-client with the token, exposing 127.0.0.1:lport, plus `extra`
 * (NULL-terminated, up to 4 words) before the proxy. */
static proc *spawn_client_extra(ctx *c, const char *name, const char *server,
                                uint16_t lport, const char *const *extra) {
  char local[32];
  snprintf(local, sizeof local, "127.0.0.1:%u", lport);
  char *args[12] = {client_path, "--server", (char *)server, "--token",
                    c->token};
  size_t n = 5;
  for (; extra && *extra && n < 9; extra++)
    args[n++] = (char *)*extra;
  args[n++] = "tcp";
  args[n++] = local;
  args[n] = NULL;
  return spawn(c, name, args);
}

static proc *spawn_tls_client(ctx *c, const char *name, uint16_t sport,
                              uint16_t lport, const char *const *extra) {
  char server[32];
  snprintf(server, sizeof server, "127.0.0.1:%u", sport);
  return spawn_client_extra(c, name, server, lport, extra);
}

/* The server prints the fingerprint of the certificate it generated; a
 * client pinning it reaches hello-service through the tunnel, silently. */
static void test_tls_pin(void **state) {
  ctx *c = *state;
  uint16_t sport = 0, hport;
  char fp[96];
  proc *srv = start_server(c, &sport);
  server_fingerprint(c, srv, fp);
  start_hello(c, &hport);
  const char *extra[] = {"--tls-pin", fp, NULL};
  proc *cli = spawn_tls_client(c, "tunnel-client --tls-pin", sport, hport,
                               extra);
  expect_hello(c, wait_public(c, cli));
  uv_process_kill(&cli->h, SIGTERM);
  expect_exit(c, cli, 0, EXIT_MS);
  if (strstr(cli->ebuf, "WARNING") || strstr(cli->ebuf, "not encrypted")) {
    dump(cli);
    fail_msg("a pinned TLS client warned");
  }
  /* A wrong pin is refused at once, and says why. */
  fp[0] = fp[0] == 'A' ? 'B' : 'A';
  cli = spawn_tls_client(c, "tunnel-client --tls-pin (wrong)", sport, hport,
                         extra);
  expect_exit(c, cli, 1, EXIT_MS);
  if (!strstr(cli->ebuf, "pin")) {
    dump(cli);
    fail_msg("the pin mismatch was not reported");
  }
  fprintf(stderr, "# %s said: %s", cli->name, cli->ebuf);
}

/* --tls-insecure works, after a warning on stderr. */
static void test_tls_insecure(void **state) {
  ctx *c = *state;
  uint16_t sport = 0, hport;
  start_server(c, &sport);
  start_hello(c, &hport);
  const char *extra[] = {"--tls-insecure", NULL};
  proc *cli = spawn_tls_client(c, "tunnel-client --tls-insecure", sport,
                               hport, extra);
  expect_hello(c, wait_public(c, cli));
  if (!strstr(cli->ebuf, "tunnel-client: WARNING: --tls-insecure")) {
    dump(cli);
    fail_msg("no WARNING line for --tls-insecure");
  }
}

/* --tls alone verifies against the system CAs, which did not sign the
 * generated certificate: exit 1 within seconds, saying so. */
static void test_tls_untrusted(void **state) {
  ctx *c = *state;
  uint16_t sport = 0, hport;
  proc *srv = start_server(c, &sport);
  start_hello(c, &hport);
  const char *extra[] = {"--tls", NULL};
  proc *cli = spawn_tls_client(c, "tunnel-client --tls", sport, hport, extra);
  expect_exit(c, cli, 1, EXIT_MS);
  if (cli->olen != 0 || !strstr(cli->ebuf, "certificate not trusted")) {
    dump(cli);
    fail_msg("expected 'certificate not trusted' on stderr, nothing on "
             "stdout");
  }
  fprintf(stderr, "# %s said: %s", cli->name, cli->ebuf);
  assert_false(srv->exited);
}

/* --tls-only: a plain client exits 1 within seconds; the server logs the
 * refusal and carries on. */
static void test_tls_only(void **state) {
  ctx *c = *state;
  uint16_t sport = 0, hport;
  proc *srv = start_server_flag(c, &sport, "--tls-only");
  start_hello(c, &hport);
  proc *cli = spawn_client(c, "tunnel-client (plain)", sport, c->token, hport,
                           0);
  expect_exit(c, cli, 1, EXIT_MS);
  assert_int_equal(cli->olen, 0);
  /* To a loopback address, a plain connection draws no note. */
  assert_null(strstr(cli->ebuf, "not encrypted"));
  WAIT(c, strstr(srv->ebuf, "accepts TLS only") || srv->exited);
  if (srv->exited || !strstr(srv->ebuf, "plain connection from 127.0.0.1")) {
    dump(srv);
    fail_msg("the server did not log the refused plain connection");
  }
  fprintf(stderr, "# tunnel-server said: %s", srv->ebuf);
  char fp[96];
  server_fingerprint(c, srv, fp);
  const char *extra[] = {"--tls-pin", fp, NULL};
  proc *tls = spawn_tls_client(c, "tunnel-client --tls-pin", sport, hport,
                               extra);
  expect_hello(c, wait_public(c, tls));
}

/* A plain connection beyond loopback draws a note at once, before any
 * connection attempt completes (192.0.2.1 is a documentation address that
 * nothing answers). */
static void test_plain_note(void **state) {
  ctx *c = *state;
  const char *extra[] = {NULL};
  proc *cli = spawn_client_extra(c, "tunnel-client (remote, plain)",
                                 "192.0.2.1:1", 8080, extra);
  WAIT_MS(c, strstr(cli->ebuf, "not encrypted") || cli->exited, EXIT_MS);
  if (!strstr(cli->ebuf, "tunnel-client: note: the connection to 192.0.2.1 "
                         "is not encrypted")) {
    dump(cli);
    fail_msg("no 'not encrypted' note for a remote plain server");
  }
  if (!cli->exited)
    assert_int_equal(uv_process_kill(&cli->h, SIGKILL), 0);
}

int main(int argc, char **argv) {
  if (argc != 4 && argc != 5) {
    fprintf(stderr,
            "usage: %s TUNNEL_SERVER TUNNEL_CLIENT HELLO_SERVICE [TEST]\n",
            argv[0]);
    return 2;
  }
  server_path = argv[1];
  client_path = argv[2];
  hello_path = argv[3];
  /* The visitor may write to a connection the tunnel already closed. */
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_help_version, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tunnel, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tunnel_no_mux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_token, setup, teardown),
      cmocka_unit_test_setup_teardown(test_port_taken, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
      cmocka_unit_test_setup_teardown(test_token_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_token_precedence, setup, teardown),
      cmocka_unit_test_setup_teardown(test_token_file_errors, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_token_file_readable, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_tls_pin, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tls_insecure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tls_untrusted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tls_only, setup, teardown),
      cmocka_unit_test_setup_teardown(test_plain_note, setup, teardown),
  };
  if (argc == 5) {
    size_t i, n = sizeof tests / sizeof tests[0];
    for (i = 0; i < n && strcmp(tests[i].name, argv[4]) != 0; i++)
      ;
    if (i == n) {
      fprintf(stderr, "no test named %s\n", argv[4]);
      return 2;
    }
    cmocka_set_test_filter(argv[4]);
  }
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
