/* Child processes of the integration tests: spawned with uv_spawn, their
 * stdout captured or logged, stopped by PID (SIGTERM, then SIGKILL) with
 * every wait bounded. A failed assertion leaves a case early, so the PIDs
 * of live children sit in a registry that an exit or fatal-signal handler
 * kills by PID. Include <cmocka.h> first. Everything is static inline so
 * that each test program uses what it needs without unused-function
 * warnings. */
#ifndef TUNNEL_TESTS_IT_PROC_H
#define TUNNEL_TESTS_IT_PROC_H

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "it_common.h"

#define IT_PROC_MAX 8
/* How long a child gets to end after SIGTERM before SIGKILL. */
#define IT_PROC_TERM_MS 3000u

typedef struct it_proc {
  uv_process_t h;
  uv_pipe_t out; /* stdout, when captured */
  char obuf[8192];
  size_t olen;
  int64_t status;
  int sig;
  int captured, exited, frozen;
  int handles; /* not yet closed: 0 before the spawn and after the stop */
  int slot;    /* in the PID registry, -1 when not there */
} it_proc;

/* The registry: PIDs of children not yet reaped, 0 in free slots. Written
 * by the loop, read by it_proc_kill_all, which may run in a signal
 * handler: hence sig_atomic_t (a pid_t fits on the platforms we run on). */
static inline volatile sig_atomic_t *it_proc_pids(void) {
  static volatile sig_atomic_t pids[IT_PROC_MAX];
  return pids;
}

static inline void it_proc_unregister(it_proc *p) {
  if (p->slot >= 0)
    it_proc_pids()[p->slot] = 0;
  p->slot = -1;
}

/* SIGKILL to every registered child: async-signal-safe (kill only), and
 * SIGKILL ends a frozen child too. */
static inline void it_proc_kill_all(void) {
  volatile sig_atomic_t *pids = it_proc_pids();
  for (int i = 0; i < IT_PROC_MAX; i++)
    if (pids[i] > 0)
      kill((pid_t)pids[i], SIGKILL);
}

static inline void it_proc_on_fatal(int sig) {
  it_proc_kill_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Children die with the test: at exit (a skip, the end of main) and on the
 * signals a test runner ends a program with (meson's timeout: SIGTERM). */
static inline void it_proc_guard(void) {
  atexit(it_proc_kill_all);
  signal(SIGTERM, it_proc_on_fatal);
  signal(SIGINT, it_proc_on_fatal);
  signal(SIGHUP, it_proc_on_fatal);
  signal(SIGALRM, it_proc_on_fatal);
}

static inline void it_proc_exited(uv_process_t *h, int64_t status, int sig) {
  it_proc *p = h->data;
  p->exited = 1;
  p->status = status;
  p->sig = sig;
  /* Reaped: its PID may be reused from now on, so it must not be killed. */
  it_proc_unregister(p);
}

static inline void it_proc_handle_closed(uv_handle_t *h) {
  ((it_proc *)h->data)->handles--;
}

static inline void it_proc_out_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  it_proc *p = h->data;
  (void)hint;
  size_t room = sizeof p->obuf - 1 - p->olen;
  *b = uv_buf_init(p->obuf + p->olen, (unsigned)(room ? room : 1));
}

/* Keeps p->obuf a string; what does not fit is dropped. */
static inline void it_proc_out_read(uv_stream_t *s, ssize_t n,
                                    const uv_buf_t *b) {
  it_proc *p = s->data;
  (void)b;
  if (n > 0 && p->olen + (size_t)n < sizeof p->obuf) {
    p->olen += (size_t)n;
    p->obuf[p->olen] = '\0';
  } else if (n < 0) {
    uv_read_stop(s);
  }
}

/* Spawns args[0] (args NULL-terminated) on `loop`, stdin closed. Its stderr
 * goes to a new file at `log`, or to the test's own stderr when `log` is
 * NULL; its stdout into p->obuf when `capture`, else where stderr goes
 * (stock frp logs to its console). */
static inline void it_proc_spawn(it_proc *p, uv_loop_t *loop, char **args,
                                 const char *log, int capture) {
  memset(p, 0, sizeof *p);
  p->slot = -1;
  p->h.data = p->out.data = p;
  int fd = 2;
  if (log) {
    fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
      fail_msg("cannot create %s", log);
  }
  uv_stdio_container_t io[3];
  io[0].flags = UV_IGNORE;
  io[1].flags = io[2].flags = UV_INHERIT_FD;
  io[1].data.fd = io[2].data.fd = fd;
  if (capture) {
    uv_pipe_init(loop, &p->out, 0);
    p->captured = 1;
    io[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    io[1].data.stream = (uv_stream_t *)&p->out;
  }
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = it_proc_exited;
  o.file = args[0];
  o.args = args;
  o.stdio_count = 3;
  o.stdio = io;
  int rc = uv_spawn(loop, &p->h, &o);
  if (log)
    close(fd);
  if (rc) {
    if (capture)
      uv_close((uv_handle_t *)&p->out, NULL);
    fail_msg("cannot spawn %s: %s", args[0], uv_strerror(rc));
  }
  p->handles = 1 + p->captured;
  volatile sig_atomic_t *pids = it_proc_pids();
  for (int i = 0; i < IT_PROC_MAX && p->slot < 0; i++)
    if (pids[i] == 0) {
      pids[i] = p->h.pid;
      p->slot = i;
    }
  if (p->slot < 0) {
    uv_process_kill(&p->h, SIGKILL);
    fail_msg("more than %d children", IT_PROC_MAX);
  }
  if (capture)
    assert_int_equal(uv_read_start((uv_stream_t *)&p->out, it_proc_out_alloc,
                                   it_proc_out_read),
                     0);
}

/* SIGSTOP by PID: the child keeps its sockets and answers nothing. Returns
 * kill's result. */
static inline int it_proc_freeze(it_proc *p) {
  int rc = kill((pid_t)p->h.pid, SIGSTOP);
  if (rc == 0)
    p->frozen = 1;
  return rc;
}

static inline int it_proc_thaw(it_proc *p) {
  int rc = kill((pid_t)p->h.pid, SIGCONT);
  if (rc == 0)
    p->frozen = 0;
  return rc;
}

/* Ends the child: SIGTERM by PID (resumed first if frozen), SIGKILL if it
 * lingers past IT_PROC_TERM_MS; then its handles close, so `p` may go
 * away on return. Nothing for a child never spawned or already stopped. */
static inline void it_proc_stop(it_proc *p, it_waiter *w) {
  if (p->handles == 0 || uv_is_closing((uv_handle_t *)&p->h))
    return;
  if (!p->exited) {
    if (p->frozen)
      it_proc_thaw(p);
    uv_process_kill(&p->h, SIGTERM);
    it_waiter_arm(w, IT_PROC_TERM_MS);
    while (!p->exited && !w->fired)
      uv_run(w->guard.loop, UV_RUN_ONCE);
    it_waiter_disarm(w);
    if (!p->exited) {
      uv_process_kill(&p->h, SIGKILL);
      IT_WAIT(w, p->exited, IT_WAIT_MS);
    }
  }
  it_proc_unregister(p);
  uv_close((uv_handle_t *)&p->h, it_proc_handle_closed);
  if (p->captured && !uv_is_closing((uv_handle_t *)&p->out))
    uv_close((uv_handle_t *)&p->out, it_proc_handle_closed);
  IT_WAIT(w, p->handles == 0, IT_WAIT_MS);
}

/* Copies the file at `path` to stderr as TAP comments, under `label`. */
static inline void it_dump_file(const char *label, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return;
  char line[1024];
  fprintf(stderr, "# --- %s\n", label);
  while (fgets(line, sizeof line, f))
    fprintf(stderr, "# %s", line);
  fclose(f);
}

/* Whether the file at `path` contains `needle` (not empty). Read in
 * chunks, each after the tail of the one before, so that a match across
 * two reads is found and logs of any size are searched whole. */
static inline int it_file_has(const char *path, const char *needle) {
  size_t k = strlen(needle);
  FILE *f = fopen(path, "r");
  if (!f || k == 0 || k > 4096) {
    if (f)
      fclose(f);
    return 0;
  }
  static char buf[65536 + 1];
  size_t keep = 0;
  int found = 0;
  for (;;) {
    size_t n = fread(buf + keep, 1, sizeof buf - 1 - keep, f);
    if (n == 0)
      break;
    n += keep;
    buf[n] = '\0';
    /* Logs hold no NUL bytes; a binary one would only shorten the search. */
    if (strstr(buf, needle)) {
      found = 1;
      break;
    }
    keep = k - 1 < n ? k - 1 : n;
    memmove(buf, buf + n - keep, keep);
  }
  fclose(f);
  return found;
}

/* The control port a spawned tunnel-server prints on its first line
 * ("listening on 127.0.0.1:PORT"); dumps `log` (if any) and fails the test
 * when the line does not come or says something else. */
static inline uint16_t it_proc_listening_port(it_proc *p, it_waiter *w,
                                              const char *log) {
  IT_WAIT(w, strchr(p->obuf, '\n') || p->exited, IT_WAIT_MS);
  unsigned port = 0;
  if (sscanf(p->obuf, "listening on 127.0.0.1:%u", &port) != 1 || !port ||
      port > 65535) {
    if (log)
      it_dump_file("tunnel-server", log);
    fail_msg("tunnel-server did not print its port: %s", p->obuf);
  }
  return (uint16_t)port;
}

#endif
