/* UDP proxies end to end through the public API: a tunnel_client with a
 * `udp` proxy, a tunnel_server (or a stock frps 0.46.1 from
 * ../shared/peers, skipped when absent), a UDP echo service written here
 * that answers each datagram with "ECHO" and the payload (cut to the
 * largest UDP payload), and visitors sending to the public port from
 * 127.0.0.1 and ::1. Everything but frps runs on one uv loop; every wait
 * is bounded. The library's memory goes through a counting allocator
 * (server and client share it): bounded under load, zero once both are
 * closed, and the loop must then close with no handle left.
 *
 * Usage: test-udp-e2e PEERS_DIR CASE
 * Environment: IT_LOG=0..3 prints library log lines up to that level
 * (default 1: errors and warnings) on stderr. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <tunnel/uv.h>

#include "it_common.h"
#include "it_data.h"

#define TOKEN "udp-e2e-token"
#define WAIT_MS 8000u
#define MAX_VIS 4
/* The largest UDP payload over IPv4, and the service's reply prefix: a
 * reply is the prefix and the payload, cut to BIG bytes in all. */
#define BIG 65507u
#define PREFIX "ECHO"
#define PREFIX_LEN 4u
/* Burst: what the visitor sends while the service reads nothing, and the
 * most the library (server and client together) may hold meanwhile beyond
 * what it held before: well under one stream window (6 MiB), as datagrams
 * that do not fit are dropped, not queued. */
#define BURST_N 10000u
#define BURST_LEN 1000u
#define BURST_MEM_MAX (1u << 20)

static const char *g_peers;
static int g_log_level = TUNNEL_LOG_WARN;
/* frps, still to be stopped when an assertion leaves a case early. */
static int g_pid;

static void log_sink(int level, const char *msg, void *ud) {
  fprintf(stderr, "[%s] %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

/* ------------------------------------------------------------ fixture */

typedef struct fx fx;

typedef struct vis {
  uv_udp_t h;
  fx *f;
  uint32_t idx;
  int v6;
  uint32_t seq; /* next to send */
  /* Echo case: the one reply expected now (NULL: any payload of ours). */
  const uint8_t *want;
  size_t want_len;
  int waiting;
  int stage;
  uint64_t sent_ms; /* when the current datagram last went */
  unsigned resent;  /* bit per stage sent more than once */
  uint64_t resends, dups;
  uint64_t rx, got, wrong;
  uint32_t last_seq;
} vis;

typedef struct proc {
  uv_process_t h;
  int exited;
} proc;

struct fx {
  uv_loop_t loop;
  it_waiter w;
  memstat mem;
  int mux, v6;
  uint16_t lo, hi;
  tunnel_server *srv;
  uint16_t srv_port;
  int srv_closed;
  tunnel_client *cli;
  int logins, downs, last_state;
  int reconnect;
  uv_timer_t retry;
  int cli_close_called, cli_closed;
  tunnel_proxy *p;
  int px_calls, px_status;
  char px_msg[128];
  uint16_t pub_port;
  uv_udp_t svc;
  uint16_t svc_port;
  int svc_reading;
  uint64_t svc_rx, svc_tx, svc_partial;
  uint16_t svc_last_src;
  uint16_t svc_srcs[64];
  int svc_nsrc;
  vis v[MAX_VIS];
  int nvis;
  uv_timer_t flow; /* close-under-load: steady traffic */
  int flow_on;
  uint64_t flow_sent;
  proc frps;
};

#define WAIT(f, cond) IT_WAIT(&(f)->w, cond, WAIT_MS)

static uint64_t now_ms(fx *f) {
  uv_update_time(&f->loop);
  return uv_now(&f->loop);
}

static int have_ipv6(void) {
  uv_loop_t loop;
  uv_udp_t u;
  struct sockaddr_in6 a;
  int ok = 0;
  if (uv_loop_init(&loop) != 0)
    return 0;
  uv_udp_init(&loop, &u);
  uv_ip6_addr("::1", 0, &a);
  ok = uv_udp_bind(&u, (struct sockaddr *)&a, 0) == 0;
  uv_close((uv_handle_t *)&u, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return ok;
}

/* Whether a UDP socket can bind the server's public address at `port`. */
static int udp_free(const char *host, uint16_t port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (strchr(host, ':'))
    uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
  else
    uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
  int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
  if (fd < 0)
    return 0;
  int ok = bind(fd, (struct sockaddr *)&ss,
                ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                         : sizeof(struct sockaddr_in)) == 0;
  close(fd);
  return ok;
}

static uint16_t pick_udp_port(fx *f, const char *host) {
  for (int i = 0; i < 500; i++) {
    uint16_t p =
        (uint16_t)(f->lo + it_random32() % ((unsigned)f->hi - f->lo + 1));
    if (udp_free(host, p))
      return p;
  }
  fail_msg("no free UDP port in %u-%u", f->lo, f->hi);
  return 0;
}

/* ------------------------------------------------------ payloads */

/* Datagram `seq` of visitor `idx`: from 8 bytes on, the two numbers then
 * content that depends on both, so a reply routed to the wrong visitor or
 * altered shows. */
static void make_payload(uint8_t *out, size_t len, uint32_t idx,
                         uint32_t seq) {
  gen_fill(idx * 1000003u + seq, 0, out, len);
  if (len >= 8) {
    memcpy(out, &seq, 4);
    memcpy(out + 4, &idx, 4);
  }
}

/* Echo case: what each visitor sends, one size after the other. */
static const size_t g_sizes[] = {1, 1400, 60000, BIG};
/* A datagram without its reply after this long is sent again: four large
 * ones at once can overflow a socket's kernel buffer on the way (the
 * client's towards the service have the default size), and UDP drops what
 * does not fit. */
#define RESEND_MS 250u
#define NSIZES (sizeof g_sizes / sizeof g_sizes[0])
static uint8_t g_want[MAX_VIS][NSIZES][BIG];

static uint8_t g_svc_buf[65536], g_svc_out[65536], g_vis_buf[65536],
    g_scratch[65536];

static void svc_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  *b = uv_buf_init((char *)g_svc_buf, sizeof g_svc_buf);
}

static void vis_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  *b = uv_buf_init((char *)g_vis_buf, sizeof g_vis_buf);
}

static uint16_t sa_port(const struct sockaddr *a) {
  if (a->sa_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
  return ntohs(((const struct sockaddr_in *)a)->sin_port);
}

/* The echo service: every datagram back to its sender with the prefix. */
static void svc_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b,
                     const struct sockaddr *addr, unsigned flags) {
  fx *f = h->data;
  if (n < 0 || !addr)
    return;
  if (flags & UV_UDP_PARTIAL) {
    f->svc_partial++;
    return;
  }
  f->svc_rx++;
  uint16_t src = sa_port(addr);
  f->svc_last_src = src;
  int known = 0;
  for (int i = 0; i < f->svc_nsrc; i++)
    known |= f->svc_srcs[i] == src;
  if (!known && f->svc_nsrc < (int)(sizeof f->svc_srcs / 2))
    f->svc_srcs[f->svc_nsrc++] = src;
  size_t len = (size_t)n;
  if (len > BIG - PREFIX_LEN)
    len = BIG - PREFIX_LEN;
  memcpy(g_svc_out, PREFIX, PREFIX_LEN);
  memcpy(g_svc_out + PREFIX_LEN, b->base, len);
  uv_buf_t r = uv_buf_init((char *)g_svc_out, (unsigned)(len + PREFIX_LEN));
  if (uv_udp_try_send(h, &r, 1, addr) >= 0)
    f->svc_tx++;
}

static int echo_dup(const vis *v, const uint8_t *d, size_t len);

static void vis_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b,
                     const struct sockaddr *addr, unsigned flags) {
  vis *v = h->data;
  if (n <= 0 || !addr)
    return;
  v->rx++;
  const uint8_t *d = (const uint8_t *)b->base;
  size_t len = (size_t)n;
  if ((flags & UV_UDP_PARTIAL) || len < PREFIX_LEN ||
      memcmp(d, PREFIX, PREFIX_LEN) != 0) {
    v->wrong++;
    return;
  }
  d += PREFIX_LEN;
  len -= PREFIX_LEN;
  if (v->want) {
    if (v->waiting && len == v->want_len && memcmp(d, v->want, len) == 0) {
      v->waiting = 0;
      v->got++;
    } else if (echo_dup(v, d, len)) {
      v->dups++;
    } else {
      v->wrong++;
    }
    return;
  }
  uint32_t seq, idx;
  if (len < 8) {
    v->wrong++;
    return;
  }
  memcpy(&seq, d, 4);
  memcpy(&idx, d + 4, 4);
  make_payload(g_scratch, len, idx, seq);
  if (idx != v->idx || memcmp(g_scratch, d, len) != 0) {
    v->wrong++;
    return;
  }
  v->got++;
  v->last_seq = seq;
}

static void udp_open(fx *f, uv_udp_t *u, int v6, void *data) {
  uv_udp_init(&f->loop, u);
  u->data = data;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (v6)
    uv_ip6_addr("::1", 0, (struct sockaddr_in6 *)&ss);
  else
    uv_ip4_addr("127.0.0.1", 0, (struct sockaddr_in *)&ss);
  assert_int_equal(uv_udp_bind(u, (struct sockaddr *)&ss, 0), 0);
  /* Room for a few of the largest datagrams at once (best effort: capped
   * by net.core.rmem_max). */
  int size = 1 << 20;
  (void)uv_recv_buffer_size((uv_handle_t *)u, &size);
}

static void svc_open(fx *f) {
  udp_open(f, &f->svc, 0, f);
  assert_int_equal(uv_udp_recv_start(&f->svc, svc_alloc, svc_recv), 0);
  f->svc_reading = 1;
  struct sockaddr_in a;
  int alen = sizeof a;
  assert_int_equal(uv_udp_getsockname(&f->svc, (struct sockaddr *)&a, &alen),
                   0);
  f->svc_port = ntohs(a.sin_port);
}

static vis *vis_open(fx *f, int v6) {
  assert_true(f->nvis < MAX_VIS);
  vis *v = &f->v[f->nvis];
  memset(v, 0, sizeof *v);
  v->f = f;
  v->idx = (uint32_t)f->nvis++;
  v->v6 = v6;
  udp_open(f, &v->h, v6, v);
  assert_int_equal(uv_udp_recv_start(&v->h, vis_alloc, vis_recv), 0);
  return v;
}

/* uv_udp_try_send's result: bytes sent, or a libuv error. */
static int vis_send_raw(vis *v, const uint8_t *data, size_t len) {
  fx *f = v->f;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (v->v6)
    uv_ip6_addr("::1", f->pub_port, (struct sockaddr_in6 *)&ss);
  else
    uv_ip4_addr("127.0.0.1", f->pub_port, (struct sockaddr_in *)&ss);
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  return uv_udp_try_send(&v->h, &b, 1, (struct sockaddr *)&ss);
}

static uint8_t g_send_buf[65536];

/* Sends the visitor's next numbered datagram of `len` (>= 8) bytes. */
static int vis_send(vis *v, size_t len) {
  make_payload(g_send_buf, len, v->idx, v->seq);
  int rc = vis_send_raw(v, g_send_buf, len);
  if (rc >= 0)
    v->seq++;
  return rc;
}

static void vis_reset(vis *v) {
  v->rx = v->got = v->wrong = 0;
}

/* Until the path works: one datagram every 100 ms until one comes back
 * (the server asks for its work channel a moment after registering, and
 * drops datagrams until then). Late replies are let in, then the counts
 * start over. */
static void vis_ready(fx *f, vis *v) {
  vis_reset(v);
  uint64_t until = now_ms(f) + WAIT_MS;
  while (v->got == 0 && now_ms(f) < until) {
    (void)vis_send(v, 64);
    it_sleep(&f->w, 100);
  }
  if (v->got == 0)
    fail_msg("visitor %u: no datagram came back in %u ms", v->idx, WAIT_MS);
  it_sleep(&f->w, 100);
  assert_int_equal(v->wrong, 0);
  vis_reset(v);
}

/* One datagram of `len` bytes and its reply, within 2 s. */
static void vis_roundtrip(fx *f, vis *v, size_t len) {
  uint64_t got = v->got;
  assert_true(vis_send(v, len) >= 0);
  IT_WAIT(&f->w, v->got > got, 2000);
  assert_int_equal(v->last_seq, v->seq - 1);
  assert_int_equal(v->wrong, 0);
}

/* UDP handles in the loop other than the test's own: the server's public
 * sockets and the client's sockets towards the service. */
typedef struct walk_ctx {
  fx *f;
  int n;
} walk_ctx;

static void count_udp(uv_handle_t *h, void *arg) {
  walk_ctx *w = arg;
  if (h->type != UV_UDP || uv_is_closing(h) || h == (uv_handle_t *)&w->f->svc)
    return;
  for (int i = 0; i < w->f->nvis; i++)
    if (h == (uv_handle_t *)&w->f->v[i].h)
      return;
  w->n++;
}

static int lib_udp_handles(fx *f) {
  walk_ctx w = {f, 0};
  uv_walk(&f->loop, count_udp, &w);
  return w.n;
}

/* ------------------------------------------------ server and client */

static tunnel_config *config_new(fx *f, const char *who) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &f->mem),
                   0);
  assert_int_equal(
      tunnel_config_set_log(cfg, log_sink, g_log_level, (void *)(uintptr_t)who),
      0);
  assert_int_equal(tunnel_config_set_token(cfg, TOKEN), 0);
  return cfg;
}

/* Public UDP ports on "::" when the host has IPv6 (IPv4 visitors arrive
 * v4-mapped), else on 127.0.0.1. */
static const char *pub_host(fx *f) { return f->v6 ? "::" : "127.0.0.1"; }

static void server_start(fx *f, uint16_t port) {
  tunnel_config *cfg = config_new(f, "server");
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, pub_host(f)), 0);
  assert_int_equal(tunnel_config_set_port_range(cfg, f->lo, f->hi), 0);
  assert_int_equal(tunnel_server_new(&f->srv, &f->loop, cfg), 0);
  tunnel_config_free(cfg);
  f->srv_closed = 0;
  assert_int_equal(tunnel_server_listen(f->srv, "127.0.0.1", port), 0);
  assert_int_equal(tunnel_server_port(f->srv, &f->srv_port), 0);
  assert_true(f->srv_port != 0);
}

static void on_srv_closed(tunnel_server *srv, void *ud) {
  fx *f = ud;
  (void)srv;
  f->srv_closed = 1;
}

static void server_close(fx *f) {
  if (!f->srv)
    return;
  assert_int_equal(tunnel_server_close(f->srv, on_srv_closed, f), 0);
  WAIT(f, f->srv_closed);
  f->srv = NULL;
}

static void retry_cb(uv_timer_t *t) {
  fx *f = t->data;
  if (f->cli && !f->cli_close_called)
    (void)tunnel_client_connect(f->cli, "127.0.0.1", f->srv_port);
}

static void on_state(tunnel_client *c, int status, const char *msg,
                     void *ud) {
  fx *f = ud;
  (void)c, (void)msg;
  f->last_state = status;
  if (status == 0) {
    f->logins++;
    return;
  }
  f->downs++;
  /* Back to the server a little later: it may not be listening yet. */
  if (f->reconnect && !f->cli_close_called)
    uv_timer_start(&f->retry, retry_cb, 100, 0);
}

static void on_cli_closed(tunnel_client *c, void *ud) {
  fx *f = ud;
  (void)c;
  f->cli_closed = 1;
}

static void client_start(fx *f, uint16_t port) {
  tunnel_config *cfg = config_new(f, "client");
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, f->mux), 0);
  assert_int_equal(tunnel_client_new(&f->cli, &f->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_client_set_state_cb(f->cli, on_state, f), 0);
  assert_int_equal(tunnel_client_connect(f->cli, "127.0.0.1", port), 0);
}

static void wait_login(fx *f, int n) {
  WAIT(f, f->logins >= n || (f->downs && !f->reconnect));
  if (f->logins < n)
    fail_msg("login failed: %s", tunnel_err_name(f->last_state));
}

static void on_px_status(tunnel_proxy *p, int status, const char *msg,
                         void *ud) {
  fx *f = ud;
  (void)p;
  f->px_calls++;
  f->px_status = status;
  snprintf(f->px_msg, sizeof f->px_msg, "%s", msg ? msg : "(null)");
  if (status == 0) {
    const char *colon = strrchr(f->px_msg, ':');
    f->pub_port = colon ? (uint16_t)atoi(colon + 1) : 0;
  }
}

static void proxy_start(fx *f, uint16_t remote, uint32_t idle_ms) {
  assert_int_equal(
      tunnel_proxy_new(&f->p, f->cli, "udp-e2e", TUNNEL_PROXY_UDP), 0);
  assert_int_equal(tunnel_proxy_set_local(f->p, "127.0.0.1", f->svc_port), 0);
  assert_int_equal(tunnel_proxy_set_remote_port(f->p, remote), 0);
  if (idle_ms)
    assert_int_equal(tunnel_proxy_set_idle_timeout(f->p, idle_ms), 0);
  assert_int_equal(tunnel_proxy_set_status_cb(f->p, on_px_status, f), 0);
  assert_int_equal(tunnel_proxy_start(f->p), 0);
}

static void wait_registered(fx *f, int n) {
  WAIT(f, f->px_calls >= n);
  if (f->px_status != 0)
    fail_msg("udp proxy refused: %s (%s)", tunnel_err_name(f->px_status),
             f->px_msg);
  assert_true(f->pub_port != 0);
}

static fx *fx_new(int mux) {
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->mux = mux;
  f->v6 = have_ipv6();
  assert_int_equal(uv_loop_init(&f->loop), 0);
  it_waiter_init(&f->w, &f->loop);
  uv_timer_init(&f->loop, &f->retry);
  f->retry.data = f;
  uv_timer_init(&f->loop, &f->flow);
  f->flow.data = f;
  it_pick_range(&f->lo, &f->hi);
  svc_open(f);
  return f;
}

/* Server, client and a registered proxy (remote port `remote`, 0: any). */
static fx *fx_start(int mux, uint16_t remote, uint32_t idle_ms) {
  fx *f = fx_new(mux);
  server_start(f, 0);
  client_start(f, f->srv_port);
  wait_login(f, 1);
  proxy_start(f, remote, idle_ms);
  wait_registered(f, 1);
  return f;
}

static void client_close(fx *f) {
  if (!f->cli)
    return;
  if (!f->cli_close_called) {
    f->cli_close_called = 1;
    assert_int_equal(tunnel_client_close(f->cli, on_cli_closed, f), 0);
  }
  WAIT(f, f->cli_closed);
  f->cli = NULL;
  f->p = NULL;
}

/* Closes everything; the loop must then have nothing left and the library
 * must have returned every byte. */
static void fx_finish(fx *f) {
  client_close(f);
  server_close(f);
  uv_close((uv_handle_t *)&f->svc, NULL);
  for (int i = 0; i < f->nvis; i++)
    uv_close((uv_handle_t *)&f->v[i].h, NULL);
  uv_close((uv_handle_t *)&f->retry, NULL);
  uv_close((uv_handle_t *)&f->flow, NULL);
  assert_int_equal(it_waiter_finish(&f->w, WAIT_MS), 0);
  if (f->mem.cur != 0)
    fail_msg("%zu bytes still allocated", f->mem.cur);
  free(f);
}

/* ------------------------------------------------------------- cases */


static void wake(uv_timer_t *t) { (void)t; }

static size_t echo_reply_len(size_t len) {
  return len > BIG - PREFIX_LEN ? BIG - PREFIX_LEN : len;
}

/* A second reply to a datagram sent twice: the first was only late. */
static int echo_dup(const vis *v, const uint8_t *d, size_t len) {
  for (int s = 0; s <= v->stage && s < (int)NSIZES; s++)
    if ((v->resent & (1u << s)) && len == echo_reply_len(g_sizes[s]) &&
        memcmp(d, g_want[v->idx][s], len) == 0)
      return 1;
  return 0;
}

static void echo_send(vis *v) {
  size_t len = g_sizes[v->stage];
  v->sent_ms = uv_now(v->h.loop);
  assert_true(vis_send_raw(v, g_want[v->idx][v->stage], len) == (int)len);
}

static void echo_next(vis *v) {
  v->want = g_want[v->idx][v->stage];
  v->want_len = echo_reply_len(g_sizes[v->stage]);
  v->waiting = 1;
  echo_send(v);
}

/* Four visitors at once (two on ::1 when the server binds "::"), each
 * sending 1, 1,400, 60,000 and 65,507 bytes, the next once the last came
 * back: each gets its own replies exactly, and the service sees one
 * source port per visitor. */
static void run_echo(int mux) {
  fx *f = fx_start(mux, 0, 0);
  for (int i = 0; i < MAX_VIS; i++)
    vis_open(f, f->v6 && (i & 1));
  for (int i = 0; i < MAX_VIS; i++)
    vis_ready(f, &f->v[i]);
  for (int i = 0; i < MAX_VIS; i++)
    for (size_t s = 0; s < NSIZES; s++)
      make_payload(g_want[i][s], g_sizes[s], (uint32_t)i,
                   0x40000000u + (uint32_t)s);
  for (int i = 0; i < MAX_VIS; i++)
    echo_next(&f->v[i]);
  uv_timer_start(&f->flow, wake, 50, 50); /* for the resends */
  uint64_t t0 = now_ms(f);
  int done = 0;
  it_waiter_arm(&f->w, WAIT_MS);
  while (done < MAX_VIS && !f->w.fired) {
    uv_run(&f->loop, UV_RUN_ONCE);
    done = 0;
    for (int i = 0; i < MAX_VIS; i++) {
      vis *v = &f->v[i];
      if (v->wrong)
        fail_msg("visitor %d: a wrong reply at stage %d", i, v->stage);
      if (!v->waiting && v->stage < (int)NSIZES &&
          v->got == (uint64_t)v->stage + 1) {
        if (++v->stage < (int)NSIZES)
          echo_next(v);
      } else if (v->waiting && now_ms(f) - v->sent_ms >= RESEND_MS) {
        v->resent |= 1u << v->stage;
        v->resends++;
        echo_send(v);
      }
      done += v->stage == (int)NSIZES;
    }
  }
  it_waiter_disarm(&f->w);
  uv_timer_stop(&f->flow);
  for (int i = 0; i < MAX_VIS; i++)
    if (f->v[i].stage < (int)NSIZES)
      fail_msg("visitor %d (%s): no reply to its %zu-byte datagram", i,
               f->v[i].v6 ? "::1" : "127.0.0.1", g_sizes[f->v[i].stage]);
  uint64_t took = now_ms(f) - t0, resends = 0;
  it_sleep(&f->w, 2 * RESEND_MS); /* nothing more may come */
  for (int i = 0; i < MAX_VIS; i++) {
    vis *v = &f->v[i];
    assert_int_equal(v->got, NSIZES);
    assert_int_equal(v->wrong, 0);
    assert_true(v->dups <= v->resends);
    assert_int_equal(v->rx, v->got + v->dups);
    resends += v->resends;
  }
  fprintf(stderr,
          "# echo (%s, %s): 4 visitors x 4 sizes in %llu ms, %llu sent "
          "again\n",
          mux ? "mux" : "no mux", f->v6 ? "IPv4+IPv6" : "IPv4",
          (unsigned long long)took, (unsigned long long)resends);
  assert_int_equal(f->svc_partial, 0);
  assert_int_equal(f->svc_nsrc, MAX_VIS);
  fx_finish(f);
}

static void test_echo_mux(void **state) {
  (void)state;
  run_echo(1);
}

static void test_echo_nomux(void **state) {
  (void)state;
  run_echo(0);
}

/* Idle timeout 300 ms: a mapping in use stays (same source port at the
 * service), a quiet one is closed within a second, and the next datagram
 * gets a new one and still comes back. */
static void run_expiry(int mux) {
  fx *f = fx_start(mux, 0, 300);
  int base = lib_udp_handles(f); /* the server's public socket */
  assert_true(base >= 1);
  vis *v = vis_open(f, 0);
  vis_ready(f, v);
  vis_roundtrip(f, v, 100);
  assert_int_equal(lib_udp_handles(f), base + 1);
  uint16_t first = f->svc_last_src;
  /* Busy for 0.8 s, a datagram every 100 ms: never idle for 300. */
  for (int i = 0; i < 8; i++) {
    it_sleep(&f->w, 100);
    vis_roundtrip(f, v, 100);
    assert_int_equal(f->svc_last_src, first);
  }
  uint64_t t0 = now_ms(f);
  assert_int_equal(lib_udp_handles(f), base + 1);
  IT_WAIT(&f->w, lib_udp_handles(f) == base, 1000);
  uint64_t gone = now_ms(f) - t0;
  fprintf(stderr, "# expiry (%s): mapping closed %llu ms after the last "
                  "datagram (idle timeout 300 ms)\n",
          mux ? "mux" : "no mux", (unsigned long long)gone);
  /* Not before its time (the reply passed the client just before t0). */
  assert_true(gone >= 250);
  vis_roundtrip(f, v, 100);
  assert_true(f->svc_last_src != first);
  assert_int_equal(lib_udp_handles(f), base + 1);
  vis_roundtrip(f, v, 1000);
  fx_finish(f);
}

static void test_expiry_mux(void **state) {
  (void)state;
  run_expiry(1);
}

static void test_expiry_nomux(void **state) {
  (void)state;
  run_expiry(0);
}

/* 10,000 datagrams of 1,000 bytes as fast as the visitor can send them
 * (the loop runs between every 20) while the service reads nothing for
 * a second: memory stays bounded, nothing breaks, and paced datagrams come
 * back afterwards. */
static void run_burst(int mux) {
  fx *f = fx_start(mux, 0, 0);
  vis *v = vis_open(f, 0);
  vis_ready(f, v);
  size_t base = f->mem.cur;
  f->mem.peak = f->mem.cur;
  assert_int_equal(uv_udp_recv_stop(&f->svc), 0);
  uint64_t svc_before = f->svc_rx, t0 = now_ms(f);
  uint32_t sent = 0, refused = 0;
  while (sent + refused < BURST_N) {
    if (vis_send(v, BURST_LEN) >= 0)
      sent++;
    else
      refused++;
    if ((sent + refused) % 20 == 0)
      uv_run(&f->loop, UV_RUN_NOWAIT);
  }
  uint64_t send_ms = now_ms(f) - t0;
  it_sleep(&f->w, 1000 > send_ms ? 1000 - send_ms : 0);
  size_t peak_paused = f->mem.peak;
  assert_int_equal(uv_udp_recv_start(&f->svc, svc_alloc, svc_recv), 0);
  it_sleep(&f->w, 300);
  size_t after = f->mem.cur;
  fprintf(stderr,
          "# burst (%s): %u of %u sent in %llu ms; service got %llu, "
          "visitor %llu back; library memory: %zu before, peak %zu, %zu "
          "after\n",
          mux ? "mux" : "no mux", sent, BURST_N,
          (unsigned long long)send_ms,
          (unsigned long long)(f->svc_rx - svc_before),
          (unsigned long long)v->got, base, f->mem.peak, after);
  assert_int_equal(v->wrong, 0);
  assert_true(v->got <= f->svc_rx - svc_before);
  if (peak_paused > base + BURST_MEM_MAX || f->mem.peak > base + BURST_MEM_MAX)
    fail_msg("library memory peaked at %zu bytes (%zu before, bound %u "
             "more)", f->mem.peak, base, BURST_MEM_MAX);
  /* What the burst left is freed or reused, not kept per datagram. */
  assert_true(after <= base + BURST_MEM_MAX / 4);
  for (int i = 0; i < 20; i++)
    vis_roundtrip(f, v, BURST_LEN);
  fx_finish(f);
}

static void test_burst_mux(void **state) {
  (void)state;
  run_burst(1);
}

static void test_burst_nomux(void **state) {
  (void)state;
  run_burst(0);
}

/* The server goes away under the client (closed, then a new one on the
 * same control port): the client, connecting again from its state
 * callback, logs in again, its proxy registers again on the same public
 * port, and datagrams round-trip again. */
static void run_reconnect(int mux) {
  fx *f = fx_new(mux);
  server_start(f, 0);
  uint16_t remote = pick_udp_port(f, pub_host(f));
  f->reconnect = 1;
  client_start(f, f->srv_port);
  wait_login(f, 1);
  proxy_start(f, remote, 0);
  wait_registered(f, 1);
  assert_int_equal(f->pub_port, remote);
  vis *v = vis_open(f, 0);
  vis_ready(f, v);
  vis_roundtrip(f, v, 1400);
  uint16_t port = f->srv_port;
  server_close(f);
  WAIT(f, f->downs >= 1);
  assert_int_equal(f->logins, 1);
  server_start(f, port);
  wait_login(f, 2);
  wait_registered(f, 2);
  assert_int_equal(f->pub_port, remote);
  vis_ready(f, v);
  for (int i = 0; i < 20; i++)
    vis_roundtrip(f, v, i % 2 ? 60000 : 1400);
  fx_finish(f);
}

static void test_reconnect_mux(void **state) {
  (void)state;
  run_reconnect(1);
}

static void test_reconnect_nomux(void **state) {
  (void)state;
  run_reconnect(0);
}

/* Steady traffic from every visitor: 4 datagrams of 1,200 bytes each per
 * millisecond tick. */
static void flow_tick(uv_timer_t *t) {
  fx *f = t->data;
  for (int i = 0; i < f->nvis; i++)
    for (int k = 0; k < 4; k++)
      if (vis_send(&f->v[i], 1200) >= 0)
        f->flow_sent++;
}

/* tunnel_client_close while datagrams flow both ways: the close completes,
 * every handle closes and every byte comes back. */
static void run_close_load(int mux) {
  fx *f = fx_start(mux, 0, 0);
  int base = lib_udp_handles(f);
  vis *a = vis_open(f, 0);
  vis *b = vis_open(f, f->v6);
  vis_ready(f, a);
  vis_ready(f, b);
  uv_timer_start(&f->flow, flow_tick, 1, 1);
  it_sleep(&f->w, 300);
  uint64_t got = a->got + b->got;
  assert_true(got > 0);
  assert_int_equal(lib_udp_handles(f), base + 2);
  f->cli_close_called = 1;
  assert_int_equal(tunnel_client_close(f->cli, on_cli_closed, f), 0);
  WAIT(f, f->cli_closed);
  f->cli = NULL;
  it_sleep(&f->w, 100); /* visitors keep sending to the proxy gone */
  uv_timer_stop(&f->flow);
  fprintf(stderr, "# close under load (%s): %llu sent, %llu back\n",
          mux ? "mux" : "no mux", (unsigned long long)f->flow_sent,
          (unsigned long long)(a->got + b->got));
  assert_int_equal(a->wrong + b->wrong, 0);
  /* Only the server's handles are left, and none of its proxy's. */
  WAIT(f, lib_udp_handles(f) == 0);
  fx_finish(f);
}

static void test_close_load_mux(void **state) {
  (void)state;
  run_close_load(1);
}

static void test_close_load_nomux(void **state) {
  (void)state;
  run_close_load(0);
}

/* ------------------------------------------------------- stock frps */

static void on_proc_exit(uv_process_t *h, int64_t status, int sig) {
  proc *p = h->data;
  (void)status, (void)sig;
  p->exited = 1;
}

static void frps_stop(fx *f) {
  proc *p = &f->frps;
  if (!p->h.pid)
    return;
  if (!p->exited) {
    uv_process_kill(&p->h, SIGTERM);
    it_waiter_arm(&f->w, 3000);
    while (!p->exited && !f->w.fired)
      uv_run(&f->loop, UV_RUN_ONCE);
    it_waiter_disarm(&f->w);
    if (!p->exited) {
      uv_process_kill(&p->h, SIGKILL);
      IT_WAIT(&f->w, p->exited, WAIT_MS);
    }
  }
  g_pid = 0;
  uv_close((uv_handle_t *)&p->h, NULL);
}

static void dump(const char *path) {
  FILE *fp = fopen(path, "r");
  if (!fp)
    return;
  char line[512];
  fprintf(stderr, "# --- %s\n", path);
  while (fgets(line, sizeof line, fp))
    fprintf(stderr, "# %s", line);
  fclose(fp);
}

/* Our client with a udp proxy on a stock frps 0.46.1. frp carries every
 * datagram as one JSON message, and frp's message reader refuses bodies
 * above 10,240 bytes: payloads stay at 1,400 bytes and below. */
static void run_frps(int mux) {
  char bin[512];
  snprintf(bin, sizeof bin, "%s/frps", g_peers);
  if (access(bin, X_OK) != 0) {
    fprintf(stderr, "# %s absent: skipped\n", bin);
    exit(77);
  }
  fx *f = fx_new(mux);
  f->v6 = 0; /* frps binds proxy_bind_addr = 127.0.0.1 */
  char dir[64] = "/tmp/udp-e2e-XXXXXX", ini[128], logf[128];
  assert_non_null(mkdtemp(dir));
  snprintf(ini, sizeof ini, "%s/frps.ini", dir);
  snprintf(logf, sizeof logf, "%s/frps.log", dir);
  uint16_t cport = it_ephemeral_free_port();
  assert_true(cport != 0);
  uint16_t remote = pick_udp_port(f, "127.0.0.1");
  FILE *fp = fopen(ini, "w");
  assert_non_null(fp);
  fprintf(fp,
          "[common]\nbind_addr = 127.0.0.1\nbind_port = %u\n"
          "proxy_bind_addr = 127.0.0.1\ntoken = %s\ntcp_mux = %s\n"
          "udp_packet_size = 1500\nlog_level = debug\nlog_file = %s\n",
          cport, TOKEN, mux ? "true" : "false", logf);
  fclose(fp);
  char *args[] = {bin, "-c", ini, NULL};
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  uv_stdio_container_t io[3];
  for (int i = 0; i < 3; i++)
    io[i].flags = UV_IGNORE;
  o.exit_cb = on_proc_exit;
  o.file = bin;
  o.args = args;
  o.stdio_count = 3;
  o.stdio = io;
  f->frps.h.data = &f->frps;
  int rc = uv_spawn(&f->loop, &f->frps.h, &o);
  if (rc)
    fail_msg("cannot spawn %s: %s", bin, uv_strerror(rc));
  g_pid = f->frps.h.pid;

  /* frps listens a moment after it starts: connect until logged in. */
  f->srv_port = cport;
  f->reconnect = 1;
  client_start(f, cport);
  IT_WAIT(&f->w, f->logins >= 1 || f->frps.exited, WAIT_MS);
  if (f->logins < 1) {
    dump(logf);
    fail_msg("no login to frps (last state %s)",
             tunnel_err_name(f->last_state));
  }
  f->reconnect = 0;
  proxy_start(f, remote, 0);
  wait_registered(f, 1);
  assert_int_equal(f->pub_port, remote);
  vis *a = vis_open(f, 0);
  vis *b = vis_open(f, 0);
  vis_ready(f, a);
  vis_ready(f, b);
  static const size_t sizes[] = {8, 100, 1000, 1400};
  for (size_t s = 0; s < 4; s++)
    for (int k = 0; k < 10; k++) {
      vis_roundtrip(f, a, sizes[s]);
      vis_roundtrip(f, b, sizes[s]);
    }
  /* Both at once, 200 datagrams each in bursts of 20. */
  uint64_t before = a->got + b->got;
  for (int k = 0; k < 10; k++) {
    for (int j = 0; j < 10; j++) {
      (void)vis_send(a, 1000);
      (void)vis_send(b, 1000);
    }
    it_sleep(&f->w, 20);
  }
  it_sleep(&f->w, 300);
  uint64_t back = a->got + b->got - before;
  fprintf(stderr, "# frps (%s): 200 datagrams of 1000 bytes, %llu back\n",
          mux ? "mux" : "no mux", (unsigned long long)back);
  assert_true(back >= 150);
  assert_int_equal(a->wrong + b->wrong, 0);
  assert_int_equal(f->svc_nsrc, 2);
  client_close(f);
  frps_stop(f);
  fx_finish(f);
  unlink(ini), unlink(logf);
  rmdir(dir);
}

static void test_frps_mux(void **state) {
  (void)state;
  run_frps(1);
}

static void test_frps_nomux(void **state) {
  (void)state;
  run_frps(0);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s PEERS_DIR CASE\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  g_peers = argv[1];
  const char *lv = getenv("IT_LOG");
  if (lv && *lv >= '0' && *lv <= '3')
    g_log_level = *lv - '0';
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_echo_mux),
      cmocka_unit_test(test_echo_nomux),
      cmocka_unit_test(test_expiry_mux),
      cmocka_unit_test(test_expiry_nomux),
      cmocka_unit_test(test_burst_mux),
      cmocka_unit_test(test_burst_nomux),
      cmocka_unit_test(test_reconnect_mux),
      cmocka_unit_test(test_reconnect_nomux),
      cmocka_unit_test(test_close_load_mux),
      cmocka_unit_test(test_close_load_nomux),
      cmocka_unit_test(test_frps_mux),
      cmocka_unit_test(test_frps_nomux),
  };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i].name, argv[2]) == 0) {
      int rc = _cmocka_run_group_tests(argv[2], &all[i], 1, NULL, NULL);
      if (g_pid > 0)
        kill((pid_t)g_pid, SIGKILL);
      return rc;
    }
  fprintf(stderr, "unknown case %s\n", argv[2]);
  return 2;
}
