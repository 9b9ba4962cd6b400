/* A stock frpc 0.46.1 with a `type = udp` proxy against tunnel-server (the
 * built program): datagrams from a visitor reach a UDP echo service in the
 * test through frpc and come back, over a multiplexed session or one TCP
 * connection per work connection. Both programs are spawned and stopped by
 * PID (SIGTERM, then SIGKILL); every wait is bounded. Exits 77 (skipped)
 * when PEERS_DIR/frpc is absent.
 *
 * Usage: test-udp-frpc PEERS_DIR TUNNEL_SERVER CASE */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "it_common.h"
#include "it_proc.h"

#define TOKEN "udp-frpc-token"
#define WAIT_MS 15000u

static const char *g_peers, *g_server;

typedef struct ctx {
  uv_loop_t loop;
  it_waiter w;
  char dir[64];
  it_proc srv, cli;
  uv_udp_t echo, vis;
  uint16_t echo_port;
  uint64_t echoed, got, wrong;
} ctx;

/* ------------------------------------------------ UDP sides */

static uint8_t g_buf[65536];

static void udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  *b = uv_buf_init((char *)g_buf, sizeof g_buf);
}

static void echo_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b,
                      const struct sockaddr *addr, unsigned flags) {
  ctx *c = h->data;
  (void)flags;
  if (n < 0 || !addr)
    return;
  uv_buf_t r = uv_buf_init(b->base, (unsigned)n);
  if (uv_udp_try_send(h, &r, 1, addr) >= 0)
    c->echoed++;
}

/* Datagram `seq`: its number, then a pattern of it (shorter ones: a
 * pattern of their length only, as the number does not fit). */
static void fill(uint8_t *p, size_t len, uint32_t seq) {
  if (len < 4)
    seq = 0;
  for (size_t i = 0; i < len; i++)
    p[i] = (uint8_t)(seq * 13 + i);
  if (len >= 4)
    memcpy(p, &seq, 4);
}

static void vis_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b,
                     const struct sockaddr *addr, unsigned flags) {
  ctx *c = h->data;
  (void)flags;
  if (n <= 0 || !addr)
    return;
  uint32_t seq = 0;
  if (n >= 4)
    memcpy(&seq, b->base, 4);
  static uint8_t want[65536];
  fill(want, (size_t)n, seq);
  if (memcmp(want, b->base, (size_t)n) == 0)
    c->got++;
  else
    c->wrong++;
}

static void udp_open(ctx *c, uv_udp_t *u, uv_udp_recv_cb cb) {
  uv_udp_init(&c->loop, u);
  u->data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_udp_bind(u, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_udp_recv_start(u, udp_alloc, cb), 0);
}

static uint16_t udp_port(uv_udp_t *u) {
  struct sockaddr_in a;
  int len = sizeof a;
  assert_int_equal(uv_udp_getsockname(u, (struct sockaddr *)&a, &len), 0);
  return ntohs(a.sin_port);
}

static int send_to(ctx *c, uint16_t port, size_t len, uint32_t seq) {
  static uint8_t buf[65536];
  fill(buf, len, seq);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
  return uv_udp_try_send(&c->vis, &b, 1, (struct sockaddr *)&a) >= 0;
}

/* Whether UDP 127.0.0.1:port is free now. */
static int udp_free(uint16_t port) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  if (fd >= 0)
    close(fd);
  return ok;
}

/* Runs the loop for up to `ms` or until `want` more replies came. */
static void pump(ctx *c, uint64_t ms, uint64_t want) {
  uint64_t until = uv_now(&c->loop) + ms, goal = c->got + want;
  while (uv_now(&c->loop) < until && c->got < goal) {
    uv_run(&c->loop, UV_RUN_NOWAIT);
    uv_sleep(1);
    uv_update_time(&c->loop);
  }
}

static void run_case(int mux) {
  char frpc[512];
  snprintf(frpc, sizeof frpc, "%s/frpc", g_peers);
  if (access(frpc, X_OK) != 0) {
    fprintf(stderr, "# %s absent: skipped\n", frpc);
    exit(77);
  }
  ctx *c = calloc(1, sizeof *c);
  assert_non_null(c);
  assert_int_equal(uv_loop_init(&c->loop), 0);
  it_waiter_init(&c->w, &c->loop);
  snprintf(c->dir, sizeof c->dir, "/tmp/udp-frpc-XXXXXX");
  assert_non_null(mkdtemp(c->dir));
  udp_open(c, &c->echo, echo_recv);
  udp_open(c, &c->vis, vis_recv);
  c->echo_port = udp_port(&c->echo);

  uint16_t lo, hi, rport = 0;
  it_pick_range(&lo, &hi);
  for (int i = 0; i < 500 && !rport; i++) {
    uint16_t p = (uint16_t)(lo + it_random32() % ((unsigned)hi - lo + 1));
    if (udp_free(p))
      rport = p;
  }
  assert_int_not_equal(rport, 0);
  char ports[32], slog[128], clog[128], ini[128];
  snprintf(ports, sizeof ports, "%u-%u", lo, hi);
  snprintf(slog, sizeof slog, "%s/server.log", c->dir);
  snprintf(clog, sizeof clog, "%s/frpc.log", c->dir);
  snprintf(ini, sizeof ini, "%s/frpc.ini", c->dir);
  char *sargs[] = {(char *)g_server, "--control", "127.0.0.1:0", "--bind",
                   "127.0.0.1", "--ports", ports, "--token", TOKEN, "-v",
                   NULL};
  it_proc_spawn(&c->srv, &c->loop, sargs, slog, 1);
  unsigned cport = it_proc_listening_port(&c->srv, &c->w, slog);

  FILE *f = fopen(ini, "w");
  assert_non_null(f);
  fprintf(f,
          "[common]\nserver_addr = 127.0.0.1\nserver_port = %u\n"
          "token = %s\ntcp_mux = %s\nlog_level = debug\n\n"
          "[echo-udp]\ntype = udp\nlocal_ip = 127.0.0.1\nlocal_port = %u\n"
          "remote_port = %u\n",
          cport, TOKEN, mux ? "true" : "false", c->echo_port, rport);
  fclose(f);
  char *cargs[] = {frpc, "-c", ini, NULL};
  it_proc_spawn(&c->cli, &c->loop, cargs, clog, 0);

  /* Until the proxy works: one datagram every 200 ms. */
  uint32_t seq = 0;
  it_waiter_arm(&c->w, WAIT_MS);
  while (c->got == 0 && !c->w.fired && !c->srv.exited && !c->cli.exited) {
    (void)send_to(c, rport, 64, seq++);
    pump(c, 200, 1);
  }
  it_waiter_disarm(&c->w);
  if (c->got == 0) {
    it_dump_file("tunnel-server", slog);
    it_dump_file("frpc", clog);
    fail_msg("no datagram came back through frpc");
  }
  /* Round trips of several sizes (frpc reads its local service's replies
   * into udp_packet_size = 1500 bytes). */
  static const size_t sizes[] = {1, 100, 1000, 1400};
  for (size_t s = 0; s < 4; s++) {
    uint64_t before = c->got;
    for (int k = 0; k < 50; k++) {
      (void)send_to(c, rport, sizes[s], seq++);
      pump(c, 50, 1);
    }
    pump(c, 500, 50 - (c->got - before));
    if (c->got - before < 40)
      fail_msg("%zu-byte datagrams: %llu of 50 came back", sizes[s],
               (unsigned long long)(c->got - before));
  }
  assert_int_equal(c->wrong, 0);
  /* A rate: 2,000 datagrams of 1,000 bytes in bursts of 100. */
  uint64_t before = c->got, t0 = uv_hrtime();
  for (int k = 0; k < 20; k++) {
    for (int j = 0; j < 100; j++)
      (void)send_to(c, rport, 1000, seq++);
    pump(c, 20, 100);
  }
  pump(c, 300, 2000 - (c->got - before));
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  fprintf(stderr,
          "# frpc (%s): 2000 datagrams of 1000 bytes, %llu back in %.2f s\n",
          mux ? "mux" : "no mux", (unsigned long long)(c->got - before), secs);
  assert_true(c->got - before > 0);

  it_proc_stop(&c->cli, &c->w);
  it_proc_stop(&c->srv, &c->w);
  uv_close((uv_handle_t *)&c->echo, NULL);
  uv_close((uv_handle_t *)&c->vis, NULL);
  assert_int_equal(it_waiter_finish(&c->w, WAIT_MS), 0);
  unlink(slog), unlink(clog), unlink(ini);
  rmdir(c->dir);
  free(c);
}

static void test_frpc_mux(void **state) {
  (void)state;
  run_case(1);
}

static void test_frpc_nomux(void **state) {
  (void)state;
  run_case(0);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s PEERS_DIR TUNNEL_SERVER CASE\n", argv[0]);
    return 2;
  }
  g_peers = argv[1];
  g_server = argv[2];
  it_proc_guard();
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_frpc_mux),
      cmocka_unit_test(test_frpc_nomux),
  };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i].name, argv[3]) == 0) {
      return _cmocka_run_group_tests(argv[3], &all[i], 1, NULL, NULL);
    }
  fprintf(stderr, "unknown case %s\n", argv[3]);
  return 2;
}
