/* poll-client: a tunnel client on the sans-I/O engine (<tunnel/engine.h>),
 * POSIX sockets and poll(), without libuv: the shape of a port to an RTOS
 * with lwIP. One loop moves bytes between the sockets and the engine, passes
 * the time in, and sleeps until a socket is ready or the engine's deadline.
 *
 * Each visitor arrives as an engine stream and is joined to a new connection
 * to the local service. Memory per visitor is bounded both ways: the
 * engine's window bounds what the server may send beyond what the local
 * service has taken (bytes are reported consumed only once written out), and
 * the local socket is not read while what was read from it waits for the
 * visitor's window. Half-close travels both ways. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <tunnel/engine.h>

#include "cli_common.h"

static const char usage[] =
    "usage: poll-client --server HOST:PORT [--token TOKEN] [--no-mux]\n"
    "                   [--verbose] tcp LOCAL [--remote-port N] [--name NAME]\n"
    "  --token        shared secret (default $TUNNEL_TOKEN)\n"
    "  --no-mux       one TCP connection per visitor instead of one shared\n"
    "  LOCAL          PORT or HOST:PORT (host defaults to 127.0.0.1)\n"
    "  --remote-port  public port wanted (default 0: the server picks)\n"
    "On success the public address is printed alone on stdout:\n"
    "tcp://HOST:PORT. A lost session is re-established with backoff; a\n"
    "refused login or proxy, or a first connection that fails, ends the\n"
    "program with status 1; SIGINT and SIGTERM with status 0.\n";

/* The engine's receive window per stream: the most a visitor can have sent
 * that the local service has not taken yet. */
#define WINDOW (256u << 10)
/* Read from the local service, waiting for the visitor's window. */
#define TO_VISITOR_CAP (64u << 10)
/* Engine output that a server socket has not taken yet. */
#define OUT_CAP (64u << 10)
#define READ_CHUNK (64u << 10)

/* A connection to the server: the control connection, or in non-mux mode a
 * work connection the engine asked for. */
typedef struct server_conn {
  struct server_conn *next;
  uint32_t id;
  int fd;
  int connecting; /* non-blocking connect() in progress */
  int read_eof;   /* non-mux: the visitor half-closed; still writable */
  int finished;   /* the engine is done with it: flush, then close */
  int dead;       /* closed; freed at the end of the loop turn */
  size_t out_off, out_len;
  uint8_t out[OUT_CAP];
} server_conn;

/* A visitor's stream joined to its connection to the local service. */
typedef struct visitor {
  struct visitor *next;
  uint32_t stream;
  int fd;
  int connecting;
  int visitor_eof; /* the visitor finished sending... */
  int local_shut;  /* ...and the local service was told */
  int local_eof;   /* the local service finished sending... */
  int stream_shut; /* ...and the visitor was told */
  int dead;        /* the stream number is gone; freed at the end of the turn */
  size_t tl_off, tl_len; /* to_local: from the visitor, not yet written */
  size_t tv_len;         /* to_visitor: read locally, not yet taken */
  uint8_t to_local[WINDOW];
  uint8_t to_visitor[TO_VISITOR_CAP];
} visitor;

static struct {
  tunnel_engine *e;
  int mux;
  char server_host[256];
  struct sockaddr_storage server_addr, local_addr;
  socklen_t server_len, local_len;
  server_conn *conns;
  visitor *visitors;
  int logged_in_once;
  uint64_t deadline;  /* the engine's next tick */
  int again;          /* a callback left work: do not sleep in poll() */
  int stop, exit_code;
  int sig_pipe[2];    /* the signal handler's wake-up */
} app;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void stop(int code) {
  if (!app.stop)
    app.exit_code = code;
  app.stop = 1;
}

static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss,
                   socklen_t *len) {
  struct addrinfo hints, *res;
  char serv[8];
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(serv, sizeof serv, "%u", port);
  if (getaddrinfo(host, serv, &hints, &res) != 0)
    return -1;
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

/* A non-blocking socket connecting to `ss`; -1 when it failed at once. */
static int dial(const struct sockaddr_storage *ss, socklen_t len) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr *)ss, len) != 0 &&
      errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  return fd;
}

/* The outcome of a non-blocking connect(), once poll() reports the socket. */
static int connect_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    err = errno;
  return err;
}

/* ------------------------------------------------- server connections */

static server_conn *conn_find(uint32_t id) {
  for (server_conn *s = app.conns; s; s = s->next)
    if (s->id == id && !s->dead)
      return s;
  return NULL;
}

static server_conn *conn_add(uint32_t id, int fd) {
  server_conn *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->id = id;
  s->fd = fd;
  s->connecting = 1;
  s->next = app.conns;
  app.conns = s;
  return s;
}

static void conn_drop(server_conn *s) {
  if (s->dead)
    return;
  close(s->fd);
  s->dead = 1;
}

static void visitor_drop(visitor *v);

/* The session is over, or an attempt failed: the engine has forgotten
 * every connection and stream. It connects again by itself (through
 * on_connect) unless the failure is final. */
static void session_over(int status, const char *why) {
  for (server_conn *s = app.conns; s; s = s->next)
    conn_drop(s);
  for (visitor *v = app.visitors; v; v = v->next)
    visitor_drop(v);
  if (app.stop)
    return;
  if (status == TUNNEL_EAUTH) {
    fprintf(stderr, "poll-client: login refused by the server: %s\n", why);
    stop(1);
    return;
  }
  fprintf(stderr, "poll-client: %s: %s\n",
          app.logged_in_once ? "disconnected" : "cannot reach the server",
          why && *why ? why : tunnel_strerror(status));
  /* A first attempt that fails is fatal (a typo should not loop); a working
   * tunnel that drops is re-established by the engine. */
  if (!app.logged_in_once)
    stop(1);
}

/* A server connection's socket ended (status 0) or failed. */
static void conn_ended(server_conn *s, int status) {
  uint32_t id = s->id;
  conn_drop(s);
  /* For connection 1 the engine ends the session and says so through the
   * state callback. */
  tunnel_engine_conn_closed(app.e, id, status, now_ms());
}

/* Moves the engine's output for `s` into its socket until the socket is
 * full. Each connection is drained on its own, so that one blocked socket
 * never holds back the others. */
static void conn_flush(server_conn *s) {
  for (;;) {
    if (s->out_len == 0) {
      size_t n = 0;
      s->out_off = 0;
      if (tunnel_engine_send(app.e, s->id, s->out, OUT_CAP, &n) != 0 || !n)
        break;
      s->out_len = n;
    }
    ssize_t w = send(s->fd, s->out + s->out_off, s->out_len, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR))
      return;
    if (w < 0) {
      conn_ended(s, TUNNEL_ECONNRESET);
      return;
    }
    s->out_off += (size_t)w;
    s->out_len -= (size_t)w;
  }
  if (s->finished) {
    shutdown(s->fd, SHUT_WR);
    conn_drop(s);
  }
}

static visitor *visitor_find(uint32_t stream) {
  for (visitor *v = app.visitors; v; v = v->next)
    if (v->stream == stream && !v->dead)
      return v;
  return NULL;
}

static void conn_on_event(server_conn *s, short revents) {
  if (s->connecting) {
    int err = connect_error(s->fd);
    if (err) {
      conn_ended(s, TUNNEL_ECONNREFUSED);
      return;
    }
    s->connecting = 0;
    tunnel_engine_conn_ready(app.e, s->id, now_ms());
    return;
  }
  if (revents & (POLLIN | POLLHUP | POLLERR)) {
    /* Non-mux: a work connection carries one stream; read only what that
     * stream's buffer can take. */
    static uint8_t buf[READ_CHUNK];
    size_t cap = sizeof buf;
    visitor *v = s->id == TUNNEL_ENGINE_CONTROL ? NULL : visitor_find(s->id);
    if (v && WINDOW - v->tl_len < cap)
      cap = WINDOW - v->tl_len;
    ssize_t n = recv(s->fd, buf, cap, 0);
    if (n > 0) {
      tunnel_engine_recv(app.e, s->id, buf, (size_t)n, now_ms());
    } else if (n == 0 && v) {
      /* A visitor's half-close: the connection stays open for the answer
       * until the engine lets it go (disconnect callback). */
      s->read_eof = 1;
      tunnel_engine_conn_closed(app.e, s->id, 0, now_ms());
    } else if (n == 0) {
      conn_ended(s, 0);
    }
    else if (errno != EAGAIN && errno != EINTR)
      conn_ended(s, TUNNEL_ECONNRESET);
  }
  if (!s->dead && (revents & POLLOUT))
    conn_flush(s);
}

static short conn_events(const server_conn *s) {
  if (s->connecting)
    return POLLOUT;
  short ev = s->out_len ? POLLOUT : 0;
  visitor *v = s->id == TUNNEL_ENGINE_CONTROL ? NULL : visitor_find(s->id);
  if (!s->read_eof && (!v || v->tl_len < WINDOW))
    ev |= POLLIN;
  return ev;
}

/* ------------------------------------------------------------ visitors */

static void visitor_drop(visitor *v) {
  if (v->dead)
    return;
  close(v->fd);
  v->dead = 1;
}

/* The local side failed: reset the visitor. */
static void visitor_fail(visitor *v) {
  visitor_drop(v);
  tunnel_engine_stream_close(app.e, v->stream);
}

/* Moves bytes each way as far as the socket and the window allow. */
static void visitor_pump(visitor *v) {
  if (v->dead || v->connecting)
    return;
  while (v->tl_len) { /* visitor -> local service */
    ssize_t n = send(v->fd, v->to_local + v->tl_off, v->tl_len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      break;
    if (n < 0) {
      visitor_fail(v);
      return;
    }
    v->tl_off += (size_t)n;
    v->tl_len -= (size_t)n;
    /* Written out: only now may the server send that much more. */
    tunnel_engine_stream_consumed(app.e, v->stream, (size_t)n);
    if (v->dead)
      return;
  }
  if (v->visitor_eof && !v->tl_len && !v->local_shut) {
    shutdown(v->fd, SHUT_WR);
    v->local_shut = 1;
  }
  if (v->tv_len) { /* local service -> visitor */
    size_t taken = 0;
    if (tunnel_engine_stream_write(app.e, v->stream, v->to_visitor, v->tv_len,
                                   &taken) != 0) {
      visitor_fail(v);
      return;
    }
    memmove(v->to_visitor, v->to_visitor + taken, v->tv_len - taken);
    v->tv_len -= taken;
  }
  if (v->local_eof && !v->tv_len && !v->stream_shut) {
    /* Without multiplexing this ends the stream (end callback). */
    v->stream_shut = 1;
    tunnel_engine_stream_shutdown(app.e, v->stream);
  }
  if (!v->dead && v->local_shut && v->stream_shut) { /* both finished */
    visitor_drop(v);
    tunnel_engine_stream_close(app.e, v->stream);
  }
}

static void visitor_on_event(visitor *v, short revents) {
  if (v->connecting) {
    if (connect_error(v->fd) != 0) {
      visitor_fail(v);
      return;
    }
    v->connecting = 0;
    return;
  }
  if (revents & (POLLIN | POLLHUP | POLLERR)) {
    ssize_t n = recv(v->fd, v->to_visitor + v->tv_len,
                     TO_VISITOR_CAP - v->tv_len, 0);
    if (n > 0)
      v->tv_len += (size_t)n;
    else if (n == 0)
      v->local_eof = 1;
    else if (errno != EAGAIN && errno != EINTR)
      visitor_fail(v);
  }
}

static short visitor_events(const visitor *v) {
  if (v->connecting)
    return POLLOUT;
  short ev = v->tl_len ? POLLOUT : 0;
  /* Stop reading while the visitor's window is closed. */
  if (!v->local_eof && v->tv_len < TO_VISITOR_CAP)
    ev |= POLLIN;
  return ev;
}

/* ----------------------------------------------------- engine callbacks */

static void on_state(tunnel_engine *e, int status, const char *msg, void *ud) {
  (void)e, (void)ud;
  if (status == 0) {
    fprintf(stderr, "poll-client: logged in (run id %s)\n", msg);
    app.logged_in_once = 1;
    return;
  }
  session_over(status, msg);
}

static void on_proxy(tunnel_engine *e, uint32_t proxy, int status,
                     const char *msg, void *ud) {
  (void)e, (void)proxy, (void)ud;
  if (status != 0) {
    fprintf(stderr, "poll-client: proxy refused by the server: %s\n", msg);
    stop(1);
    return;
  }
  /* ":PORT" on the server's host. */
  int v6 = strchr(app.server_host, ':') != NULL;
  printf("tcp://%s%s%s%s\n", v6 ? "[" : "", app.server_host, v6 ? "]" : "",
         msg);
  fflush(stdout);
}

static int on_stream_open(tunnel_engine *e, uint32_t stream, uint32_t proxy,
                          const char *from, void *ud) {
  (void)e, (void)proxy, (void)ud;
  visitor *v = calloc(1, sizeof *v);
  if (!v)
    return TUNNEL_ENOMEM;
  v->stream = stream;
  v->connecting = 1;
  v->fd = dial(&app.local_addr, app.local_len);
  if (v->fd < 0) {
    fprintf(stderr, "poll-client: visitor %s: local service: %s\n", from,
            strerror(errno));
    free(v);
    return TUNNEL_ECONNREFUSED;
  }
  v->next = app.visitors;
  app.visitors = v;
  return 0;
}

static void on_stream_data(tunnel_engine *e, uint32_t stream,
                           const uint8_t *data, size_t len, void *ud) {
  (void)ud;
  visitor *v = visitor_find(stream);
  if (!v)
    return;
  if (v->tl_off + v->tl_len + len > WINDOW) {
    memmove(v->to_local, v->to_local + v->tl_off, v->tl_len);
    v->tl_off = 0;
  }
  if (v->tl_len + len > WINDOW) { /* beyond the window: cannot happen */
    visitor_drop(v);
    tunnel_engine_stream_close(e, stream);
    return;
  }
  memcpy(v->to_local + v->tl_off + v->tl_len, data, len);
  v->tl_len += len;
  app.again = 1;
}

static void on_stream_end(tunnel_engine *e, uint32_t stream, int status,
                          void *ud) {
  (void)e, (void)ud;
  visitor *v = visitor_find(stream);
  if (!v)
    return;
  if (status == 0)
    v->visitor_eof = 1;
  else
    visitor_drop(v); /* reset, or the session is gone: the number with it */
  app.again = 1;
}

static void on_stream_writable(tunnel_engine *e, uint32_t stream, void *ud) {
  (void)e, (void)stream, (void)ud;
  app.again = 1;
}

static void on_connect(tunnel_engine *e, uint32_t conn, void *ud) {
  (void)ud;
  int fd = dial(&app.server_addr, app.server_len);
  if (fd < 0 || !conn_add(conn, fd)) {
    if (fd >= 0)
      close(fd);
    tunnel_engine_conn_closed(e, conn, TUNNEL_ECONNREFUSED, now_ms());
  }
}

static void on_disconnect(tunnel_engine *e, uint32_t conn, void *ud) {
  (void)e, (void)ud;
  server_conn *s = conn_find(conn);
  if (s && s->connecting) {
    conn_drop(s); /* an attempt that took too long */
  } else if (s) {
    s->finished = 1;
    app.again = 1;
  }
}

/* Login and work connections are signed with the Unix time. */
static int64_t unix_time(void *ud) {
  (void)ud;
  return (int64_t)time(NULL);
}

static int fill_random(uint8_t *out, size_t n, void *ud) {
  (void)ud;
  while (n) {
    ssize_t got = getrandom(out, n, 0);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      return TUNNEL_EIO;
    out += got;
    n -= (size_t)got;
  }
  return 0;
}

/* ------------------------------------------------------------ the loop */

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  ssize_t ignored = write(app.sig_pipe[1], &b, 1);
  (void)ignored;
  errno = saved;
}

/* Frees what the last turn closed: nothing refers to it any more. */
static void sweep(void) {
  for (server_conn **p = &app.conns; *p;) {
    server_conn *s = *p;
    *p = s->dead ? s->next : s;
    if (s->dead)
      free(s);
    else
      p = &s->next;
  }
  for (visitor **p = &app.visitors; *p;) {
    visitor *v = *p;
    *p = v->dead ? v->next : v;
    if (v->dead)
      free(v);
    else
      p = &v->next;
  }
}

static int run(void) {
  struct pollfd *fds = NULL;
  void **owners = NULL; /* the server_conn or visitor behind each entry */
  size_t cap = 0;
  /* The engine asks for connection 1 through on_connect, now and after
   * each loss (its backoff). */
  int rc = tunnel_engine_connect(app.e, now_ms());
  if (rc) {
    fprintf(stderr, "poll-client: cannot connect: %s\n", tunnel_strerror(rc));
    return 1;
  }
  while (!app.stop) {
    uint64_t now = now_ms();
    /* Cheap when nothing is due, and keeps the deadline current after the
     * calls that move it (start, recv): heartbeats, reconnections. */
    tunnel_engine_tick(app.e, now, &app.deadline);
    app.again = 0;
    for (visitor *v = app.visitors; v; v = v->next)
      visitor_pump(v);
    for (server_conn *s = app.conns; s; s = s->next)
      if (!s->dead && !s->connecting)
        conn_flush(s);
    sweep();
    if (app.stop)
      break;

    size_t n = 1, nconn = 0;
    for (server_conn *s = app.conns; s; s = s->next)
      n++;
    for (visitor *v = app.visitors; v; v = v->next)
      n++;
    if (n > cap) {
      cap = n * 2;
      fds = realloc(fds, cap * sizeof *fds);
      owners = realloc(owners, cap * sizeof *owners);
      if (!fds || !owners) {
        fprintf(stderr, "poll-client: out of memory\n");
        return 1;
      }
    }
    n = 0;
    fds[n++] = (struct pollfd){.fd = app.sig_pipe[0], .events = POLLIN};
    /* Sockets that want nothing are left out, or a hung-up one would wake
     * the loop again and again. */
    for (server_conn *s = app.conns; s; s = s->next) {
      short ev = conn_events(s);
      if (!ev)
        continue;
      owners[n] = s;
      fds[n++] = (struct pollfd){.fd = s->fd, .events = ev};
      nconn++;
    }
    for (visitor *v = app.visitors; v; v = v->next) {
      short ev = visitor_events(v);
      if (!ev)
        continue;
      owners[n] = v;
      fds[n++] = (struct pollfd){.fd = v->fd, .events = ev};
    }
    uint64_t wake = app.deadline;
    int timeout = -1;
    if (app.again)
      timeout = 0;
    else if (wake != UINT64_MAX)
      timeout = wake <= now ? 0 : wake - now > 60000 ? 60000
                                                     : (int)(wake - now);
    if (poll(fds, (nfds_t)n, timeout) < 0 && errno != EINTR) {
      perror("poll-client: poll");
      return 1;
    }
    if (fds[0].revents) {
      unsigned char sig;
      if (read(app.sig_pipe[0], &sig, 1) == 1)
        fprintf(stderr, "poll-client: signal %d, shutting down\n", sig);
      stop(0);
      break;
    }
    for (size_t i = 1; i < n; i++) {
      if (!fds[i].revents)
        continue;
      if (i <= nconn) { /* server connections come first */
        server_conn *s = owners[i];
        if (!s->dead)
          conn_on_event(s, fds[i].revents);
      } else {
        visitor *v = owners[i];
        if (!v->dead)
          visitor_on_event(v, fds[i].revents);
      }
    }
  }
  free(fds);
  free(owners);
  return app.exit_code;
}

/* The engine, configured and wired to the callbacks above. */
static int engine_setup(char *token, int verbose, const char *name,
                        uint16_t remote_port) {
  tunnel_config *cfg;
  uint32_t proxy;
  int rc = tunnel_config_new(&cfg);
  if (rc)
    return rc;
  tunnel_config_set_log(cfg, cli_log,
                        verbose > 1 ? TUNNEL_LOG_DEBUG
                                    : TUNNEL_LOG_WARN + verbose,
                        "poll-client");
  rc = tunnel_config_set_token(cfg, token);
  cli_secret_free(token); /* the config holds the only copy now */
  if (rc || (rc = tunnel_config_set_tcp_mux(cfg, app.mux)) ||
      (rc = tunnel_config_set_stream_window(cfg, WINDOW)) ||
      (rc = tunnel_engine_new(&app.e, cfg, NULL))) {
    tunnel_config_free(cfg);
    return rc;
  }
  tunnel_config_free(cfg);
  if ((rc = tunnel_engine_set_random_cb(app.e, fill_random)) ||
      (rc = tunnel_engine_set_time_cb(app.e, unix_time)) ||
      (rc = tunnel_engine_set_state_cb(app.e, on_state)) ||
      (rc = tunnel_engine_set_proxy_cb(app.e, on_proxy)) ||
      (rc = tunnel_engine_set_stream_cbs(app.e, on_stream_open, on_stream_data,
                                         on_stream_end, on_stream_writable)) ||
      (rc = tunnel_engine_set_conn_cbs(app.e, on_connect, on_disconnect)) ||
      (rc = tunnel_engine_add_proxy(app.e, name, TUNNEL_ENGINE_PROXY_TCP,
                                    &proxy)))
    return rc;
  return tunnel_engine_proxy_set_remote_port(app.e, proxy, remote_port);
}

int main(int argc, char **argv) {
  char shost[256] = "", lhost[256] = "127.0.0.1", gen_name[64];
  uint16_t sport = 0, lport = 0;
  uint32_t rport = 0;
  char *token_arg = NULL, *token;
  const char *name = NULL;
  int verbose = 0;
  app.mux = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(usage, stdout);
      return 0;
    } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
      verbose++;
    } else if (!strcmp(a, "--no-mux")) {
      app.mux = 0;
    } else if (v && ((!strcmp(a, "--server") &&
                      !cli_parse_hostport(v, shost, sizeof shost, &sport)) ||
                     (!strcmp(a, "tcp") && !lport &&
                      !cli_parse_hostport(v, lhost, sizeof lhost, &lport)) ||
                     (!strcmp(a, "--remote-port") &&
                      !cli_parse_u32(v, 65535, &rport)))) {
      i++;
    } else if (v && !strcmp(a, "--token")) {
      token_arg = argv[++i];
    } else if (v && !strcmp(a, "--name")) {
      name = argv[++i];
    } else {
      fprintf(stderr, "poll-client: bad or incomplete argument '%s'\n%s", a,
              usage);
      return 2;
    }
  }
  if (!sport || !shost[0] || !lport) {
    fprintf(stderr, "poll-client: --server and tcp LOCAL are required\n%s",
            usage);
    return 2;
  }
  snprintf(app.server_host, sizeof app.server_host, "%s", shost);
  if (resolve(shost, sport, &app.server_addr, &app.server_len) != 0 ||
      resolve(lhost, lport, &app.local_addr, &app.local_len) != 0) {
    fprintf(stderr, "poll-client: cannot resolve %s or %s\n", shost, lhost);
    return 1;
  }
  if (!name) {
    uint8_t r[3] = {0};
    fill_random(r, sizeof r, NULL);
    snprintf(gen_name, sizeof gen_name, "tcp-%u-%02x%02x%02x", lport, r[0],
             r[1], r[2]);
    name = gen_name;
  }
  if (cli_token("poll-client", token_arg, NULL, &token) != 0)
    return 2;
  int rc = engine_setup(token, verbose, name, (uint16_t)rport);
  if (rc) {
    fprintf(stderr, "poll-client: %s\n", tunnel_strerror(rc));
    tunnel_engine_free(app.e);
    return 1;
  }
  /* Signals only wake the loop, which then ends in order. */
  if (pipe2(app.sig_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
    perror("poll-client: pipe");
    return 1;
  }
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int code = run();
  tunnel_engine_free(app.e); /* no callback fires from here on */
  for (server_conn *s = app.conns; s; s = s->next)
    conn_drop(s);
  for (visitor *v = app.visitors; v; v = v->next)
    visitor_drop(v);
  sweep();
  return code;
}
