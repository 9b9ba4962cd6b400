/* poll-client (the client built on the sans-I/O engine, poll() and POSIX
 * sockets) as a child process, against tunnel-server and a stock frps:
 *   - 8 MiB each way through one visitor, hashed on both ends, in the three
 *     orders: the visitor sends all and half-closes before the service
 *     answers, the service first, and both at once (the order a stock frp
 *     peer allows, as it does not carry half-close); multiplexed and not;
 *   - several visitors at once on an echo service;
 *   - a local service that stalls: poll-client's memory stays bounded by
 *     its window while 8 MiB push at it, then everything arrives;
 *   - a refused login ends poll-client with status 1;
 *   - a restarted server: poll-client logs in again and serves visitors;
 *   - SIGTERM ends it with status 0 (every case).
 * The services and visitors are threads of this process with blocking
 * sockets (bounded by socket timeouts). Children are stopped by PID at the
 * end of every case, also when it fails; a fatal signal (the per-case
 * alarm, the test runner's timeout) kills them too.
 *
 * Usage: test-embed-poll-client TUNNEL_SERVER POLL_CLIENT PEERS_DIR CASE
 * frps cases exit 77 (skipped) when PEERS_DIR/frps is missing. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "it_common.h"

#define BULK_BYTES (8u << 20)
#define ECHO_BYTES (512u << 10)
#define ECHO_VISITORS 8
#define CHUNK (64u << 10)
#define MAX_PROCS 4
#define OUT_CAP 4096
/* A socket that makes no progress for this long fails its side. */
#define IO_TIMEOUT_S 60
#define START_MS 20000
#define EXIT_MS 5000
#define CASE_ALARM_S 150u

extern char **environ;

static const char *server_path, *client_path, *peers_dir;
static char frps_path[PATH_MAX];

/* --------------------------------------------------------- test data */

/* The bytes a side sends: a function of (seed, offset), so that the
 * receiver's hash can be checked against the sender's stream. */
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15u;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  return x ^ (x >> 31);
}

static void gen_fill(uint64_t seed, uint64_t off, uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++, off++)
    p[i] = (uint8_t)(mix64(seed ^ (off >> 3)) >> ((off & 7) * 8));
}

#define FNV_INIT 0xcbf29ce484222325u

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3u;
  return h;
}

static uint64_t stream_hash(uint64_t seed, size_t len) {
  uint8_t buf[4096];
  uint64_t h = FNV_INIT;
  for (size_t off = 0; off < len; off += sizeof buf) {
    size_t n = len - off < sizeof buf ? len - off : sizeof buf;
    gen_fill(seed, off, buf, n);
    h = fnv1a(h, buf, n);
  }
  return h;
}

/* ------------------------------------------------- one side's exchange */

typedef enum order {
  SEND_FIRST, /* send all, half-close, then read to EOF */
  RECV_FIRST, /* read to EOF, then send all and half-close */
  BOTH,       /* send and read at once, `n` each; close without half-close */
  ECHO_BACK,       /* service only: write back what arrives, half-close at EOF */
} order;

typedef struct side {
  int fd;
  order ord;
  uint64_t seed, peer_seed; /* what this side sends, what it expects */
  size_t n;
  uint16_t port; /* visitors: where to connect */
  unsigned delay_ms; /* a stalled reader: nothing read before this */
  size_t got;
  uint64_t hash;
  int ok;
  char why[128];
} side;

static int send_stream(int fd, uint64_t seed, size_t n) {
  uint8_t *buf = malloc(CHUNK);
  int rc = buf ? 0 : -1;
  for (size_t off = 0; rc == 0 && off < n;) {
    size_t len = n - off < CHUNK ? n - off : CHUNK;
    gen_fill(seed, off, buf, len);
    for (size_t done = 0; rc == 0 && done < len;) {
      ssize_t w = send(fd, buf + done, len - done, MSG_NOSIGNAL);
      if (w <= 0 && errno != EINTR)
        rc = -1;
      else if (w > 0)
        done += (size_t)w;
    }
    off += len;
  }
  free(buf);
  return rc;
}

/* Reads `limit` bytes, or to EOF when limit is 0, into the side's hash. */
static int recv_stream(side *s, size_t limit) {
  uint8_t *buf = malloc(CHUNK);
  int rc = -1;
  while (buf) {
    size_t want = limit ? limit - s->got : CHUNK;
    if (limit && want == 0) {
      rc = 0;
      break;
    }
    ssize_t r = recv(s->fd, buf, want < CHUNK ? want : CHUNK, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      rc = r == 0 && !limit ? 0 : -1;
      break;
    }
    s->hash = fnv1a(s->hash, buf, (size_t)r);
    s->got += (size_t)r;
  }
  free(buf);
  return rc;
}

static void *send_thread(void *arg) {
  side *s = arg;
  return (void *)(intptr_t)send_stream(s->fd, s->seed, s->n);
}

static void side_run(side *s) {
  s->hash = FNV_INIT;
  s->got = 0;
  snprintf(s->why, sizeof s->why, "ok");
  int rc = 0;
  if (s->ord == ECHO_BACK) {
    uint8_t *buf = malloc(CHUNK);
    for (ssize_t r; buf && (r = recv(s->fd, buf, CHUNK, 0)) != 0;) {
      if (r < 0 ? errno != EINTR : send(s->fd, buf, (size_t)r,
                                        MSG_NOSIGNAL) != r) {
        rc = -1;
        break;
      }
    }
    free(buf);
    shutdown(s->fd, SHUT_WR);
    s->ok = rc == 0 && buf;
    return;
  }
  if (s->ord == SEND_FIRST) {
    rc = send_stream(s->fd, s->seed, s->n);
    shutdown(s->fd, SHUT_WR);
    if (rc == 0)
      rc = recv_stream(s, 0);
  } else if (s->ord == RECV_FIRST) {
    usleep(s->delay_ms * 1000u);
    rc = recv_stream(s, 0);
    if (rc == 0)
      rc = send_stream(s->fd, s->seed, s->n);
    shutdown(s->fd, SHUT_WR);
  } else {
    pthread_t t;
    void *sent;
    if (pthread_create(&t, NULL, send_thread, s) != 0) {
      rc = -1;
    } else {
      rc = recv_stream(s, s->n);
      pthread_join(t, &sent);
      rc |= (int)(intptr_t)sent;
    }
  }
  uint64_t want = stream_hash(s->peer_seed, s->n);
  s->ok = rc == 0 && s->got == s->n && s->hash == want;
  if (!s->ok)
    snprintf(s->why, sizeof s->why, "%s: received %zu of %zu bytes, %s",
             rc ? strerror(errno) : "completed", s->got, s->n,
             s->hash == want ? "hash matches" : "hash differs");
}

static void set_timeouts(int fd) {
  struct timeval tv = {IO_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* ------------------------------------------------------------ services */

#define MAX_CONNS 64

/* A service on 127.0.0.1: each accepted connection runs `ord` in its own
 * thread, its outcome kept in `sides`. */
typedef struct service {
  int lfd;
  uint16_t port;
  order ord;
  uint64_t seed, peer_seed;
  size_t n;
  unsigned delay_ms;
  pthread_t acceptor;
  pthread_t threads[MAX_CONNS];
  side sides[MAX_CONNS];
  int nconns;
  pthread_mutex_t mu;
} service;

static void *service_conn(void *arg) {
  side *s = arg;
  side_run(s);
  close(s->fd);
  return NULL;
}

static void *service_accept(void *arg) {
  service *svc = arg;
  for (;;) {
    int fd = accept(svc->lfd, NULL, NULL);
    if (fd < 0 && errno == EINTR)
      continue;
    if (fd < 0)
      return NULL; /* the listener was shut down */
    pthread_mutex_lock(&svc->mu);
    if (svc->nconns == MAX_CONNS) {
      pthread_mutex_unlock(&svc->mu);
      close(fd);
      continue;
    }
    side *s = &svc->sides[svc->nconns];
    set_timeouts(fd);
    *s = (side){.fd = fd, .ord = svc->ord, .seed = svc->seed,
                .peer_seed = svc->peer_seed, .n = svc->n,
                .delay_ms = svc->delay_ms};
    if (pthread_create(&svc->threads[svc->nconns], NULL, service_conn, s) ==
        0)
      svc->nconns++;
    else
      close(fd);
    pthread_mutex_unlock(&svc->mu);
  }
}

static int listen_local(uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 128), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static void service_start(service *svc, order ord, uint64_t seed,
                          uint64_t peer_seed, size_t n) {
  memset(svc, 0, sizeof *svc);
  svc->ord = ord;
  svc->seed = seed;
  svc->peer_seed = peer_seed;
  svc->n = n;
  pthread_mutex_init(&svc->mu, NULL);
  svc->lfd = listen_local(&svc->port);
  assert_int_equal(pthread_create(&svc->acceptor, NULL, service_accept, svc),
                   0);
}

/* Stops accepting and waits for every connection's thread. */
static void service_stop(service *svc) {
  shutdown(svc->lfd, SHUT_RDWR);
  pthread_join(svc->acceptor, NULL);
  close(svc->lfd);
  for (int i = 0; i < svc->nconns; i++)
    pthread_join(svc->threads[i], NULL);
  pthread_mutex_destroy(&svc->mu);
}

/* A visitor at 127.0.0.1:port running `s` (fd filled in). */
static void *visitor_thread(void *arg) {
  side *s = arg;
  s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons(s->port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  set_timeouts(s->fd);
  if (connect(s->fd, (struct sockaddr *)&a, sizeof a) != 0) {
    snprintf(s->why, sizeof s->why, "connect: %s", strerror(errno));
    s->ok = 0;
  } else {
    side_run(s);
  }
  close(s->fd);
  return NULL;
}

/* Runs `n` visitors on `port` at once; 0 when all of them succeeded. */
static int run_visitors(side *v, int n, uint16_t port) {
  pthread_t t[ECHO_VISITORS];
  for (int i = 0; i < n; i++) {
    v[i].port = port;
    assert_int_equal(pthread_create(&t[i], NULL, visitor_thread, &v[i]), 0);
  }
  int bad = 0;
  for (int i = 0; i < n; i++) {
    pthread_join(t[i], NULL);
    if (!v[i].ok) {
      fprintf(stderr, "visitor %d: %s\n", i, v[i].why);
      bad = 1;
    }
  }
  return bad;
}

/* ------------------------------------------------------------ children */

typedef struct proc {
  const char *name;
  pid_t pid;
  int out; /* stdout pipe */
  char obuf[OUT_CAP + 1];
  size_t olen;
  int exited, status;
} proc;

typedef struct ctx {
  proc procs[MAX_PROCS];
  int nprocs;
  uint16_t lo, hi;
  char token[32];
  char dir[64], ini[128];
  service svc;
  int svc_on;
} ctx;

/* What a fatal signal must kill, readable from its handler. */
static volatile sig_atomic_t g_pids[MAX_PROCS];

static void on_fatal_signal(int sig) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (g_pids[i] > 0)
      kill((pid_t)g_pids[i], SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Children get this environment without TUNNEL_* variables, so that only
 * the command line configures them. */
static proc *spawn(ctx *c, const char *name, char **args) {
  assert_true(c->nprocs < MAX_PROCS);
  proc *p = &c->procs[c->nprocs];
  int fds[2];
  assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
  memset(p, 0, sizeof *p);
  p->name = name;
  /* Built before fork(): the child of a threaded process may only make
   * async-signal-safe calls. */
  size_t n = 0, k = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + 1, sizeof *env);
  assert_non_null(env);
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "TUNNEL_", 7) != 0)
      env[k++] = environ[i];
  p->pid = fork();
  assert_true(p->pid >= 0);
  if (p->pid == 0) {
    dup2(fds[1], 1);
    execve(args[0], args, env);
    _exit(127);
  }
  free(env);
  close(fds[1]);
  p->out = fds[0];
  g_pids[c->nprocs++] = p->pid;
  return p;
}

/* Collects output and the exit status; waits up to `ms` for `nlines`
 * lines of stdout or the exit. */
static void proc_wait(proc *p, int nlines, uint64_t ms) {
  uint64_t end = mono_ms() + ms;
  for (;;) {
    int lines = 0;
    for (size_t i = 0; i < p->olen; i++)
      lines += p->obuf[i] == '\n';
    if (!p->exited && waitpid(p->pid, &p->status, WNOHANG) == p->pid)
      p->exited = 1;
    if ((nlines && lines >= nlines) || p->exited || mono_ms() >= end)
      return;
    struct pollfd pfd = {.fd = p->out, .events = POLLIN};
    if (poll(&pfd, 1, 20) == 1 && p->olen < OUT_CAP) {
      ssize_t r = read(p->out, p->obuf + p->olen, OUT_CAP - p->olen);
      if (r > 0)
        p->olen += (size_t)r;
      p->obuf[p->olen] = '\0';
    }
  }
}

/* Sends `sig` and waits for the exit (SIGKILL after EXIT_MS). */
static void proc_stop(proc *p, int sig) {
  if (!p->exited) {
    kill(p->pid, sig);
    proc_wait(p, 0, EXIT_MS);
  }
  if (!p->exited) {
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &p->status, 0);
    p->exited = 1;
  }
}

static int exited_with(const proc *p, int code) {
  return p->exited && WIFEXITED(p->status) && WEXITSTATUS(p->status) == code;
}

/* The port of stdout line `nth` (1-based), "PREFIX127.0.0.1:PORT". */
static uint16_t wait_addr_line(proc *p, int nth, const char *prefix) {
  proc_wait(p, nth, START_MS);
  const char *line = p->obuf;
  for (int i = 1; i < nth && line; i++)
    line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL;
  char fmt[64];
  unsigned port = 0;
  snprintf(fmt, sizeof fmt, "%s127.0.0.1:%%u\n", prefix);
  if (!line || sscanf(line, fmt, &port) != 1 || !port || port > 65535)
    fail_msg("%s did not print '%s127.0.0.1:PORT' on line %d (stdout: "
             "'%s')", p->name, prefix, nth, p->obuf);
  return (uint16_t)port;
}

static uint16_t wait_addr(proc *p, const char *prefix) {
  return wait_addr_line(p, 1, prefix);
}

static int setup(void **state) {
  ctx *c = calloc(1, sizeof *c);
  if (!c)
    return -1;
  it_pick_range(&c->lo, &c->hi);
  snprintf(c->token, sizeof c->token, "pc-%08x", it_random32());
  alarm(CASE_ALARM_S);
  *state = c;
  return 0;
}

/* Kills what still runs, by PID; runs after failed cases too. */
static int teardown(void **state) {
  ctx *c = *state;
  for (int i = 0; i < c->nprocs; i++) {
    proc_stop(&c->procs[i], SIGKILL);
    close(c->procs[i].out);
    g_pids[i] = 0;
  }
  if (c->svc_on)
    service_stop(&c->svc);
  if (c->ini[0])
    unlink(c->ini);
  if (c->dir[0])
    rmdir(c->dir);
  alarm(0);
  free(c);
  return 0;
}

/* tunnel-server on *port (0: an ephemeral one, stored back). */
static proc *start_server(ctx *c, uint16_t *port) {
  char ports[32], control[32];
  snprintf(ports, sizeof ports, "%u-%u", c->lo, c->hi);
  snprintf(control, sizeof control, "127.0.0.1:%u", *port);
  char *args[] = {(char *)server_path, "--control", control, "--bind",
                  "127.0.0.1", "--ports", ports, "--token", c->token,
                  "--no-tls", NULL};
  proc *p = spawn(c, "tunnel-server", args);
  *port = wait_addr(p, "listening on ");
  return p;
}

static proc *start_frps(ctx *c, int mux, uint16_t *port) {
  *port = it_free_port_in(c->lo, c->hi);
  snprintf(c->dir, sizeof c->dir, "/tmp/test-poll-client-XXXXXX");
  assert_non_null(mkdtemp(c->dir));
  snprintf(c->ini, sizeof c->ini, "%s/frps.ini", c->dir);
  FILE *f = fopen(c->ini, "w");
  assert_non_null(f);
  /* authenticate_new_work_conns: frps checks the non-mux work
   * connections' signatures too. */
  fprintf(f,
          "[common]\nbind_addr = 127.0.0.1\nbind_port = %u\n"
          "proxy_bind_addr = 127.0.0.1\ntoken = %s\nallow_ports = %u-%u\n"
          "tcp_mux = %s\nauthenticate_new_work_conns = true\n"
          "log_level = warn\n",
          *port, c->token, c->lo, c->hi, mux ? "true" : "false");
  fclose(f);
  char *args[] = {frps_path, "-c", c->ini, NULL};
  proc *p = spawn(c, "frps", args);
  /* frps prints nothing on stdout: wait for its port to accept. */
  for (uint64_t end = mono_ms() + START_MS; it_port_free(*port);) {
    proc_wait(p, 0, 50);
    if (p->exited || mono_ms() > end)
      fail_msg("frps did not listen on 127.0.0.1:%u", *port);
  }
  return p;
}

static proc *start_client(ctx *c, uint16_t server_port, const char *token,
                          int mux, uint16_t local_port) {
  char server[32], local[32];
  snprintf(server, sizeof server, "127.0.0.1:%u", server_port);
  snprintf(local, sizeof local, "127.0.0.1:%u", local_port);
  char *args[] = {(char *)client_path, "--server", server, "--token",
                  (char *)token, "tcp", local, mux ? NULL : "--no-mux", NULL};
  return spawn(c, "poll-client", args);
}

/* ---------------------------------------------------------------- cases */

/* SIGTERM ends every child with status 0 (frps aside: Go's default). */
static void stop_all(ctx *c) {
  for (int i = c->nprocs - 1; i >= 0; i--) {
    proc *p = &c->procs[i];
    proc_stop(p, SIGTERM);
    if (strcmp(p->name, "frps") != 0 && !exited_with(p, 0))
      fail_msg("%s did not exit 0 on SIGTERM (status %#x)", p->name,
               p->status);
  }
}

/* One visitor and a service exchanging BULK_BYTES each way in the given
 * orders, through tunnel-server or (`frps`) a stock frps. */
static void bulk_case(void **state, int mux, order visitor_ord,
                      order service_ord, int frps) {
  ctx *c = *state;
  uint16_t sport = 0;
  if (frps)
    start_frps(c, mux, &sport);
  else
    start_server(c, &sport);
  service_start(&c->svc, service_ord, 0x5e77, 0x7157, BULK_BYTES);
  c->svc_on = 1;
  proc *pc = start_client(c, sport, c->token, mux, c->svc.port);
  uint16_t public = wait_addr(pc, "tcp://");

  side v = {.ord = visitor_ord, .seed = 0x7157, .peer_seed = 0x5e77,
            .n = BULK_BYTES};
  int bad = run_visitors(&v, 1, public);
  service_stop(&c->svc);
  c->svc_on = 0;
  if (c->svc.nconns != 1 || !c->svc.sides[0].ok)
    fail_msg("service: %d connections; %s", c->svc.nconns,
             c->svc.nconns ? c->svc.sides[0].why : "-");
  assert_false(bad);
  stop_all(c);
}

static void concurrent_case(void **state, int mux) {
  ctx *c = *state;
  uint16_t sport = 0;
  start_server(c, &sport);
  service_start(&c->svc, ECHO_BACK, 0, 0, 0);
  c->svc_on = 1;
  proc *pc = start_client(c, sport, c->token, mux, c->svc.port);
  uint16_t public = wait_addr(pc, "tcp://");
  side v[ECHO_VISITORS];
  for (int i = 0; i < ECHO_VISITORS; i++)
    v[i] = (side){.ord = SEND_FIRST, .seed = 100u + (unsigned)i,
                  .peer_seed = 100u + (unsigned)i, .n = ECHO_BYTES};
  assert_false(run_visitors(v, ECHO_VISITORS, public));
  stop_all(c);
}

/* Resident memory of a process, KiB (0 when unknown). */
static long rss_kib(pid_t pid) {
  char path[64], line[128];
  long kib = 0;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
      break;
  if (f)
    fclose(f);
  return kib;
}

typedef struct visit_job {
  side *v;
  uint16_t port;
  int bad;
} visit_job;

static void *visit_job_run(void *arg) {
  visit_job *j = arg;
  j->bad = run_visitors(j->v, 1, j->port);
  return NULL;
}

/* A local service that reads nothing for a while: poll-client holds at
 * most its window of the visitor's bulk meanwhile (the server is not
 * allowed more until it is written out), then delivers all of it. */
static void stalled_case(void **state, int mux) {
  ctx *c = *state;
  uint16_t sport = 0;
  start_server(c, &sport);
  service_start(&c->svc, RECV_FIRST, 0x5e77, 0x7157, BULK_BYTES);
  c->svc.delay_ms = 3000;
  c->svc_on = 1;
  proc *pc = start_client(c, sport, c->token, mux, c->svc.port);
  uint16_t public = wait_addr(pc, "tcp://");
  long before = rss_kib(pc->pid);
  side v = {.ord = SEND_FIRST, .seed = 0x7157, .peer_seed = 0x5e77,
            .n = BULK_BYTES};
  visit_job j = {.v = &v, .port = public};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, visit_job_run, &j), 0);
  usleep(2000 * 1000);
  long during = rss_kib(pc->pid);
  pthread_join(t, NULL);
  assert_false(j.bad);
  /* The window (256 KiB) and the buffers of one visitor, with room for
   * the allocator: far below the 8 MiB pushed at it. */
  if (during - before > 3 * 1024)
    fail_msg("poll-client grew by %ld KiB while its local service stalled",
             during - before);
  stop_all(c);
}

static void test_mux_stalled(void **s) { stalled_case(s, 1); }
static void test_nomux_stalled(void **s) { stalled_case(s, 0); }

/* The server goes away and comes back on the same port: poll-client logs
 * in again, prints its address again, and serves visitors through it. */
static void test_reconnect(void **state) {
  ctx *c = *state;
  uint16_t sport = 0;
  proc *first = start_server(c, &sport);
  service_start(&c->svc, ECHO_BACK, 0, 0, 0);
  c->svc_on = 1;
  proc *pc = start_client(c, sport, c->token, 1, c->svc.port);
  wait_addr(pc, "tcp://");
  proc_stop(first, SIGTERM);
  assert_true(exited_with(first, 0));
  start_server(c, &sport);
  uint16_t public = wait_addr_line(pc, 2, "tcp://");
  side v = {.ord = SEND_FIRST, .seed = 7, .peer_seed = 7, .n = ECHO_BYTES};
  assert_false(run_visitors(&v, 1, public));
  stop_all(c);
}

static void test_mux_visitor_first(void **s) {
  bulk_case(s, 1, SEND_FIRST, RECV_FIRST, 0);
}
static void test_mux_service_first(void **s) {
  bulk_case(s, 1, RECV_FIRST, SEND_FIRST, 0);
}
static void test_mux_both(void **s) { bulk_case(s, 1, BOTH, BOTH, 0); }
static void test_nomux_visitor_first(void **s) {
  bulk_case(s, 0, SEND_FIRST, RECV_FIRST, 0);
}
static void test_nomux_both(void **s) { bulk_case(s, 0, BOTH, BOTH, 0); }
static void test_mux_concurrent(void **s) { concurrent_case(s, 1); }
static void test_nomux_concurrent(void **s) { concurrent_case(s, 0); }
static void test_frps_mux(void **s) { bulk_case(s, 1, BOTH, BOTH, 1); }
static void test_frps_nomux(void **s) { bulk_case(s, 0, BOTH, BOTH, 1); }

static void test_wrong_token(void **state) {
  ctx *c = *state;
  uint16_t sport = 0;
  start_server(c, &sport);
  uint64_t t0 = mono_ms();
  proc *pc = start_client(c, sport, "not-the-token", 1, 9);
  proc_wait(pc, 0, EXIT_MS);
  if (!exited_with(pc, 1))
    fail_msg("poll-client with a wrong token: %s %#x after %llu ms",
             pc->exited ? "exit status" : "still running", pc->status,
             (unsigned long long)(mono_ms() - t0));
  assert_int_equal(pc->olen, 0); /* no public address printed */
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_mux_visitor_first, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mux_service_first, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mux_both, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nomux_visitor_first, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_nomux_both, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mux_concurrent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nomux_concurrent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_token, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mux_stalled, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nomux_stalled, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_mux, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frps_nomux, setup, teardown),
  };
  if (argc != 5) {
    fprintf(stderr, "usage: %s TUNNEL_SERVER POLL_CLIENT PEERS_DIR CASE\n",
            argv[0]);
    return 2;
  }
  server_path = argv[1];
  client_path = argv[2];
  peers_dir = argv[3];
  snprintf(frps_path, sizeof frps_path, "%s/frps", peers_dir);
  if (!strncmp(argv[4], "test_frps", 9) && access(frps_path, X_OK) != 0) {
    printf("SKIP: no executable frps in %s\n", peers_dir);
    return 77;
  }
  signal(SIGPIPE, SIG_IGN);
  int fatal[] = {SIGTERM, SIGINT, SIGHUP, SIGALRM};
  for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
    signal(fatal[i], on_fatal_signal);
  cmocka_set_test_filter(argv[4]);
  return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
