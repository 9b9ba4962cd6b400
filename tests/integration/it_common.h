/* Helpers shared by the integration tests: bounded waits on a uv loop and
 * loopback port selection. Everything here is static inline so that each
 * test program uses what it needs without unused-function warnings. */
#ifndef TUNNEL_TESTS_IT_COMMON_H
#define TUNNEL_TESTS_IT_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

/* Upper bound of any single wait: far above what a healthy run needs even
 * under sanitizers on a loaded machine, so that a hang fails fast instead of
 * running into meson's timeout without a diagnosis. */
#define IT_WAIT_MS 20000u

/* A one-shot guard timer that bounds uv_run loops. */
typedef struct it_waiter {
  uv_timer_t guard;
  int fired;
} it_waiter;

static inline void it_waiter_fired(uv_timer_t *t) {
  ((it_waiter *)t->data)->fired = 1;
}

static inline void it_waiter_init(it_waiter *w, uv_loop_t *loop) {
  uv_timer_init(loop, &w->guard);
  w->guard.data = w;
  w->fired = 0;
}

static inline void it_waiter_arm(it_waiter *w, uint64_t ms) {
  w->fired = 0;
  uv_timer_start(&w->guard, it_waiter_fired, ms, 0);
}

static inline void it_waiter_disarm(it_waiter *w) {
  uv_timer_stop(&w->guard);
}

/* Runs the loop until `cond` holds; fails the test if it does not within
 * `ms` milliseconds. The guard keeps the loop alive, so UV_RUN_ONCE always
 * blocks on something that will happen. */
#define IT_WAIT(w, cond, ms)                                                   \
  do {                                                                         \
    it_waiter_arm((w), (ms));                                                  \
    while (!(cond) && !(w)->fired)                                             \
      uv_run((w)->guard.loop, UV_RUN_ONCE);                                    \
    it_waiter_disarm(w);                                                       \
    if (!(cond))                                                               \
      fail_msg("timed out after %u ms waiting for: %s", (unsigned)(ms),       \
               #cond);                                                         \
  } while (0)

/* Runs the loop for `ms` milliseconds. */
static inline void it_sleep(it_waiter *w, uint64_t ms) {
  it_waiter_arm(w, ms);
  while (!w->fired)
    uv_run(w->guard.loop, UV_RUN_ONCE);
}

/* Closes the guard and runs the loop until nothing is left; the caller has
 * closed everything else. Returns uv_loop_close's result (0 when every
 * handle is gone). */
static inline int it_waiter_finish(it_waiter *w, uint64_t ms) {
  uv_loop_t *loop = w->guard.loop;
  /* Unreferenced, the guard still wakes the loop up but no longer keeps it
   * alive: uv_loop_alive reports only the handles under test. */
  uv_unref((uv_handle_t *)&w->guard);
  it_waiter_arm(w, ms);
  while (uv_loop_alive(loop) && !w->fired)
    uv_run(loop, UV_RUN_ONCE);
  int alive = uv_loop_alive(loop);
  uv_close((uv_handle_t *)&w->guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  if (alive)
    return UV_EBUSY;
  return uv_loop_close(loop);
}

static inline uint32_t it_random32(void) {
  uint32_t r = 0;
  if (uv_random(NULL, NULL, &r, sizeof r, 0, NULL) != 0)
    r = (uint32_t)uv_hrtime() ^ (uint32_t)getpid();
  return r;
}

/* Whether 127.0.0.1:port can be listened on now. No SO_REUSEADDR: a port
 * still in TIME_WAIT counts as taken, which only makes the choice safer. */
static inline int it_port_free(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 1) == 0;
  close(fd);
  return ok;
}

/* A port the kernel just handed out for 127.0.0.1:0, now unused. */
static inline uint16_t it_ephemeral_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  uint16_t port = 0;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* Public port range for a test server: 1000 ports at a random offset below
 * the kernel's ephemeral range. Outgoing connections (including the tests'
 * own) take local ports from the ephemeral range at any moment, so a port
 * chosen there could be stolen between choosing and binding it; below it,
 * only deliberate binds compete, and the random offset keeps concurrent runs
 * apart. */
static inline void it_pick_range(uint16_t *lo, uint16_t *hi) {
  unsigned elo = 32768, ehi = 60999;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f) {
    if (fscanf(f, "%u %u", &elo, &ehi) != 2)
      elo = 32768, ehi = 60999;
    fclose(f);
  }
  unsigned base_lo = 10000, base_hi; /* inclusive bounds of the window start */
  if (elo >= base_lo + 2000) {
    base_hi = elo - 1000;
  } else if (ehi <= 65535 - 2000) {
    base_lo = ehi + 1;
    base_hi = 65535 - 1000;
  } else { /* no room outside: share the ephemeral range */
    base_lo = 20000;
    base_hi = 64000;
  }
  unsigned base = base_lo + it_random32() % (base_hi - base_lo + 1);
  *lo = (uint16_t)base;
  *hi = (uint16_t)(base + 999);
}

/* A currently free port in [lo, hi]. */
static inline uint16_t it_free_port_in(uint16_t lo, uint16_t hi) {
  for (int i = 0; i < 500; i++) {
    uint16_t p = (uint16_t)(lo + it_random32() % ((unsigned)hi - lo + 1));
    if (it_port_free(p))
      return p;
  }
  return 0;
}

#endif
