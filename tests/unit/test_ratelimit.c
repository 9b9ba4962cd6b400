/* The failed-login limiter (lib/ratelimit.c): bucket arithmetic, refill,
 * address grouping, the bounded table and its eviction order, the log
 * throttle, allocation failures, and a randomised comparison with a
 * straightforward model of the same policy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ratelimit.h"

static const uint8_t seed_a[16] = {1, 2,  3,  4,  5,  6,  7,  8,
                                   9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t seed_b[16] = {16, 15, 14, 13, 12, 11, 10, 9,
                                   8,  7,  6,  5,  4,  3,  2,  1};

/* ------------------------------------------------------------ helpers */

/* An allocator that counts live bytes and can be told to fail. */
typedef struct memstat {
  size_t cur, peak;
  long fail_after; /* allocations left before failing; < 0: never */
} memstat;

typedef union hdr {
  size_t size;
  max_align_t align;
} hdr;

static void *m_malloc(size_t n, void *ud) {
  memstat *m = ud;
  if (m->fail_after == 0)
    return NULL;
  if (m->fail_after > 0)
    m->fail_after--;
  hdr *h = malloc(sizeof *h + n);
  if (!h)
    return NULL;
  h->size = n;
  m->cur += n;
  if (m->cur > m->peak)
    m->peak = m->cur;
  return h + 1;
}

static void m_free(void *p, void *ud) {
  memstat *m = ud;
  if (!p)
    return;
  hdr *h = (hdr *)p - 1;
  m->cur -= h->size;
  free(h);
}

static void *m_realloc(void *p, size_t n, void *ud) {
  memstat *m = ud;
  if (!p)
    return m_malloc(n, ud);
  if (m->fail_after == 0)
    return NULL;
  if (m->fail_after > 0)
    m->fail_after--;
  hdr *h = (hdr *)p - 1;
  size_t old = h->size;
  hdr *nh = realloc(h, sizeof *nh + n);
  if (!nh)
    return NULL;
  nh->size = n;
  m->cur = m->cur - old + n;
  if (m->cur > m->peak)
    m->peak = m->cur;
  return nh + 1;
}

static tunnel__mem counting(memstat *m) {
  tunnel__mem mem = {m_malloc, m_realloc, m_free, m};
  return mem;
}

static tunnel__ratelimit *new_rl(uint32_t capacity, uint32_t failures,
                                 uint32_t window_ms) {
  tunnel__ratelimit *rl;
  assert_int_equal(
      tunnel__ratelimit_new(&rl, NULL, capacity, failures, window_ms, seed_a),
      0);
  return rl;
}

static void v4(uint8_t a[4], uint32_t x) {
  a[0] = (uint8_t)(x >> 24);
  a[1] = (uint8_t)(x >> 16);
  a[2] = (uint8_t)(x >> 8);
  a[3] = (uint8_t)x;
}

/* 2001:db8:PPPP:PPPP:IIII:IIII:IIII:IIII (prefix p, interface id i). */
static void v6(uint8_t a[16], uint32_t p, uint64_t i) {
  a[0] = 0x20, a[1] = 0x01, a[2] = 0x0d, a[3] = 0xb8;
  for (int k = 0; k < 4; k++)
    a[4 + k] = (uint8_t)(p >> (24 - 8 * k));
  for (int k = 0; k < 8; k++)
    a[8 + k] = (uint8_t)(i >> (56 - 8 * k));
}

static uint32_t check(tunnel__ratelimit *rl, const uint8_t *a, size_t len,
                      uint64_t now) {
  return tunnel__ratelimit_check(rl, a, len, now, NULL);
}

/* -------------------------------------------------------------- tests */

/* Five failures are allowed, the sixth attempt is refused until a token
 * is back: window/failures later. */
static void bucket_allows_failures_then_blocks(void **state) {
  (void)state;
  tunnel__ratelimit *rl = new_rl(4096, 5, 60000);
  uint8_t a[4];
  v4(a, 0x0a000001);
  uint64_t t = 1000;
  for (int i = 0; i < 5; i++) {
    assert_int_equal(check(rl, a, 4, t), 0);
    assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, t), 0);
  }
  assert_int_equal(check(rl, a, 4, t), 12000);
  assert_int_equal(check(rl, a, 4, t + 2000), 10000);
  assert_int_equal(check(rl, a, 4, t + 11999), 1);
  assert_int_equal(check(rl, a, 4, t + 12000), 0);
  /* That token spent, blocked again for a whole interval. */
  assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, t + 12000), 0);
  assert_int_equal(check(rl, a, 4, t + 12000), 12000);
  assert_int_equal(tunnel__ratelimit_count(rl), 1);
  tunnel__ratelimit_free(rl);
}

/* The bucket refills at failures/window, never beyond `failures`. */
static void refill_is_continuous_and_capped(void **state) {
  (void)state;
  tunnel__ratelimit *rl = new_rl(16, 3, 3000); /* one token a second */
  uint8_t a[4];
  v4(a, 0xc0000201);
  for (int i = 0; i < 3; i++)
    tunnel__ratelimit_fail(rl, a, 4, 0);
  assert_int_equal(check(rl, a, 4, 0), 1000);
  assert_int_equal(check(rl, a, 4, 2500), 0); /* 2.5 tokens back */
  tunnel__ratelimit_fail(rl, a, 4, 2500);
  tunnel__ratelimit_fail(rl, a, 4, 2500);
  assert_int_equal(check(rl, a, 4, 2500), 500); /* 0.5 left */
  /* Idle for ten windows: full again, but only three. */
  uint64_t t = 40000;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(check(rl, a, 4, t), 0);
    tunnel__ratelimit_fail(rl, a, 4, t);
  }
  assert_int_equal(check(rl, a, 4, t), 1000);
  /* A clock that goes back earns nothing and breaks nothing. */
  assert_int_equal(check(rl, a, 4, t - 5000), 1000);
  tunnel__ratelimit_free(rl);
}

/* Checks (successful logins) and refusals take no token: hammering a
 * blocked address does not push its unblocking back. */
static void checks_and_refusals_cost_nothing(void **state) {
  (void)state;
  memstat ms = {0, 0, -1};
  tunnel__mem mem = counting(&ms);
  tunnel__ratelimit *rl;
  assert_int_equal(tunnel__ratelimit_new(&rl, &mem, 4096, 2, 10000, seed_a), 0);
  size_t base = ms.cur;
  uint8_t a[4], b[4];
  v4(a, 0x7f000001);
  v4(b, 0x7f000002);
  for (int i = 0; i < 1000; i++)
    assert_int_equal(check(rl, b, 4, (uint64_t)i), 0);
  assert_int_equal(tunnel__ratelimit_count(rl), 0);
  assert_int_equal(ms.cur, base); /* never failed: never stored */
  tunnel__ratelimit_fail(rl, a, 4, 0);
  tunnel__ratelimit_fail(rl, a, 4, 0);
  uint32_t report;
  for (uint64_t t = 0; t < 5000; t++)
    assert_int_equal(tunnel__ratelimit_check(rl, a, 4, t, &report), 5000 - t);
  assert_int_equal(check(rl, a, 4, 5000), 0);
  tunnel__ratelimit_free(rl);
  assert_int_equal(ms.cur, 0);
}

/* IPv4 counts per address; IPv6 per /64; an IPv4-mapped IPv6 address is
 * its IPv4 address (not the ::/64 every mapped address shares). */
static void address_grouping(void **state) {
  (void)state;
  tunnel__ratelimit *rl = new_rl(4096, 1, 60000);
  uint8_t a[16], b[16];
  /* IPv6: same /64, another interface id: same bucket. */
  v6(a, 0x00010002, 1);
  tunnel__ratelimit_fail(rl, a, 16, 0);
  v6(b, 0x00010002, 0xffffffffffffffffull);
  assert_true(check(rl, b, 16, 0) > 0);
  assert_int_equal(tunnel__ratelimit_hash(rl, a, 16),
                   tunnel__ratelimit_hash(rl, b, 16));
  /* The next /64: free. */
  v6(b, 0x00010003, 1);
  assert_int_equal(check(rl, b, 16, 0), 0);
  /* IPv4: the neighbour is free. */
  v4(a, 0x0a000001);
  tunnel__ratelimit_fail(rl, a, 4, 0);
  assert_true(check(rl, a, 4, 0) > 0);
  v4(b, 0x0a000002);
  assert_int_equal(check(rl, b, 4, 0), 0);
  /* ::ffff:10.0.0.1 is 10.0.0.1; ::ffff:10.0.0.2 is not blocked with it. */
  uint8_t m[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
  assert_true(check(rl, m, 16, 0) > 0);
  m[15] = 2;
  assert_int_equal(check(rl, m, 16, 0), 0);
  /* ::1 shares its first 64 bits with every mapped address, not a bucket. */
  uint8_t lo6[16] = {0};
  lo6[15] = 1;
  tunnel__ratelimit_fail(rl, lo6, 16, 0);
  assert_true(check(rl, lo6, 16, 0) > 0);
  assert_int_equal(check(rl, m, 16, 0), 0);
  /* The IPv4 address 0.0.0.1 is not ::1 either. */
  uint8_t z[4] = {0, 0, 0, 1};
  assert_int_equal(check(rl, z, 4, 0), 0);
  assert_int_equal(tunnel__ratelimit_count(rl), 3);
  /* Other lengths: never refused, never stored. */
  assert_int_equal(tunnel__ratelimit_fail(rl, a, 5, 0), TUNNEL_EINVAL);
  assert_int_equal(tunnel__ratelimit_fail(rl, NULL, 4, 0), TUNNEL_EINVAL);
  assert_int_equal(check(rl, a, 0, 0), 0);
  assert_int_equal(tunnel__ratelimit_hash(rl, a, 3), 0);
  assert_int_equal(tunnel__ratelimit_count(rl), 3);
  tunnel__ratelimit_free(rl);
}

/* A flood of distinct addresses keeps the table at its capacity, in
 * memory that stops growing once it is reached. */
static void eviction_keeps_table_bounded(void **state) {
  (void)state;
  memstat ms = {0, 0, -1};
  tunnel__mem mem = counting(&ms);
  tunnel__ratelimit *rl;
  assert_int_equal(tunnel__ratelimit_new(&rl, &mem, 1000, 5, 60000, seed_a), 0);
  uint8_t a[16];
  size_t at_capacity = 0;
  for (uint32_t i = 0; i < 200000; i++) {
    v6(a, i, 7);
    assert_int_equal(tunnel__ratelimit_fail(rl, a, 16, i), 0);
    assert_true(tunnel__ratelimit_count(rl) <= 1000);
    if (i == 999)
      at_capacity = ms.cur;
  }
  assert_int_equal(tunnel__ratelimit_count(rl), 1000);
  assert_int_equal(ms.cur, at_capacity);
  assert_true(at_capacity < 1000u * 128u);
  fprintf(stderr, "# 1000 entries: %zu bytes\n", at_capacity);
  /* The last thousand are the ones kept, and each still counts. */
  for (uint32_t i = 200000 - 1000; i < 200000; i++) {
    v6(a, i, 9);
    tunnel__ratelimit_fail(rl, a, 16, 200000);
    tunnel__ratelimit_fail(rl, a, 16, 200000);
    tunnel__ratelimit_fail(rl, a, 16, 200000);
    tunnel__ratelimit_fail(rl, a, 16, 200000);
    assert_true(check(rl, a, 16, 200000) > 0);
  }
  tunnel__ratelimit_free(rl);
  assert_int_equal(ms.cur, 0);
}

/* At capacity the least recently touched entry goes: a check counts as a
 * touch, so an address that keeps trying stays blocked. */
static void eviction_is_least_recently_touched(void **state) {
  (void)state;
  tunnel__ratelimit *rl = new_rl(4, 1, 60000);
  uint8_t x[5][4];
  for (int i = 0; i < 5; i++)
    v4(x[i], 0x0a000000u + (uint32_t)i);
  for (int i = 0; i < 4; i++)
    tunnel__ratelimit_fail(rl, x[i], 4, (uint64_t)i);
  assert_true(check(rl, x[0], 4, 10) > 0); /* touches x0: x1 is oldest */
  tunnel__ratelimit_fail(rl, x[4], 4, 11);
  assert_int_equal(tunnel__ratelimit_count(rl), 4);
  assert_int_equal(check(rl, x[1], 4, 12), 0); /* evicted */
  assert_true(check(rl, x[0], 4, 12) > 0);
  assert_true(check(rl, x[2], 4, 12) > 0);
  assert_true(check(rl, x[3], 4, 12) > 0);
  assert_true(check(rl, x[4], 4, 12) > 0);
  /* Checked in the order x0, x2, x3, x4: x0 is the least recent now. */
  tunnel__ratelimit_fail(rl, x[1], 4, 13);
  assert_int_equal(check(rl, x[0], 4, 14), 0);
  assert_true(check(rl, x[1], 4, 14) > 0);
  tunnel__ratelimit_free(rl);
}

/* failures 0: nothing is refused, nothing is stored. */
static void disabled_mode(void **state) {
  (void)state;
  memstat ms = {0, 0, -1};
  tunnel__mem mem = counting(&ms);
  tunnel__ratelimit *rl;
  assert_int_equal(tunnel__ratelimit_new(&rl, &mem, 4096, 0, 60000, seed_a), 0);
  size_t base = ms.cur;
  uint8_t a[4];
  v4(a, 0x01020304);
  for (int i = 0; i < 1000; i++) {
    assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, 0), 0);
    assert_int_equal(check(rl, a, 4, 0), 0);
  }
  assert_int_equal(tunnel__ratelimit_count(rl), 0);
  assert_int_equal(ms.cur, base);
  tunnel__ratelimit_free(rl);
  assert_int_equal(ms.cur, 0);
}

/* The bucket index depends on the seed: the same addresses hash apart
 * under another seed, the same under the same one. */
static void hash_seeds(void **state) {
  (void)state;
  tunnel__ratelimit *a1 = new_rl(16, 5, 60000);
  tunnel__ratelimit *a2 = new_rl(16, 5, 60000);
  tunnel__ratelimit *b;
  assert_int_equal(tunnel__ratelimit_new(&b, NULL, 16, 5, 60000, seed_b), 0);
  int differ = 0;
  uint64_t prev = 0;
  for (uint32_t i = 0; i < 64; i++) {
    uint8_t x[4];
    v4(x, 0xc0a80000u + i);
    uint64_t h1 = tunnel__ratelimit_hash(a1, x, 4);
    assert_int_equal(h1, tunnel__ratelimit_hash(a2, x, 4));
    differ += h1 != tunnel__ratelimit_hash(b, x, 4);
    assert_true(h1 != prev);
    prev = h1;
  }
  assert_int_equal(differ, 64);
  /* The seed is copied: clobbering the caller's buffer changes nothing. */
  uint8_t s[16];
  memcpy(s, seed_b, sizeof s);
  tunnel__ratelimit *c;
  assert_int_equal(tunnel__ratelimit_new(&c, NULL, 16, 5, 60000, s), 0);
  memset(s, 0, sizeof s);
  uint8_t x[4] = {1, 2, 3, 4};
  assert_int_equal(tunnel__ratelimit_hash(c, x, 4),
                   tunnel__ratelimit_hash(b, x, 4));
  tunnel__ratelimit_free(a1);
  tunnel__ratelimit_free(a2);
  tunnel__ratelimit_free(b);
  tunnel__ratelimit_free(c);
}

/* A flood against a blocked address is reported once per window, with the
 * number of refusals since the last report. */
static void report_once_per_window(void **state) {
  (void)state;
  tunnel__ratelimit *rl = new_rl(16, 1, 1000);
  uint8_t a[4];
  v4(a, 0x0a0a0a0a);
  tunnel__ratelimit_fail(rl, a, 4, 0);
  uint32_t report = 77;
  assert_int_equal(tunnel__ratelimit_check(rl, a, 4, 0, &report), 1000);
  assert_int_equal(report, 1); /* the first refusal is reported */
  int lines = 1;
  for (uint64_t t = 1; t < 1000; t++) {
    assert_true(tunnel__ratelimit_check(rl, a, 4, t, &report) > 0);
    lines += report != 0;
  }
  assert_int_equal(lines, 1);
  /* A token back, spent, refused again a window after the last report:
   * that line carries the 999 silent refusals and this one. */
  assert_int_equal(tunnel__ratelimit_check(rl, a, 4, 1000, &report), 0);
  assert_int_equal(report, 0);
  tunnel__ratelimit_fail(rl, a, 4, 1000);
  assert_true(tunnel__ratelimit_check(rl, a, 4, 1000, &report) > 0);
  assert_int_equal(report, 1000);
  assert_true(tunnel__ratelimit_check(rl, a, 4, 1001, &report) > 0);
  assert_int_equal(report, 0);
  /* Without `report`, refusals are not counted. */
  assert_true(tunnel__ratelimit_check(rl, a, 4, 1002, NULL) > 0);
  tunnel__ratelimit_fail(rl, a, 4, 2001);
  assert_true(tunnel__ratelimit_check(rl, a, 4, 2001, &report) > 0);
  assert_int_equal(report, 2);
  tunnel__ratelimit_free(rl);
}

static void bad_arguments(void **state) {
  (void)state;
  tunnel__ratelimit *rl = (tunnel__ratelimit *)1;
  assert_int_equal(tunnel__ratelimit_new(NULL, NULL, 16, 5, 60000, seed_a),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel__ratelimit_new(&rl, NULL, 16, 5, 60000, NULL),
                   TUNNEL_EINVAL);
  assert_null(rl);
  assert_int_equal(tunnel__ratelimit_new(&rl, NULL, 0, 5, 60000, seed_a),
                   TUNNEL_ERANGE);
  assert_int_equal(tunnel__ratelimit_new(&rl, NULL, 16, 5, 99, seed_a),
                   TUNNEL_ERANGE);
  assert_int_equal(tunnel__ratelimit_new(&rl, NULL, 16, 5, 86400001u, seed_a),
                   TUNNEL_ERANGE);
  assert_int_equal(
      tunnel__ratelimit_new(&rl, NULL, 16, 1000001u, 60000, seed_a),
      TUNNEL_ERANGE);
  /* The extremes work, without overflow: a million failures per day. */
  assert_int_equal(
      tunnel__ratelimit_new(&rl, NULL, 16, 1000000u, 86400000u, seed_a), 0);
  uint8_t a[4] = {1, 1, 1, 1};
  for (int i = 0; i < 1000000; i++)
    tunnel__ratelimit_fail(rl, a, 4, 0);
  assert_int_equal(check(rl, a, 4, 0), 87); /* 86.4 ms rounded up */
  assert_int_equal(check(rl, a, 4, UINT64_MAX), 0);
  tunnel__ratelimit_free(rl);
  tunnel__ratelimit_free(NULL);
  assert_int_equal(tunnel__ratelimit_fail(NULL, a, 4, 0), TUNNEL_EINVAL);
  assert_int_equal(tunnel__ratelimit_check(NULL, a, 4, 0, NULL), 0);
}

/* Allocation failures: nothing recorded when the table cannot start; once
 * it has entries, a failed growth reuses the oldest instead. */
static void out_of_memory(void **state) {
  (void)state;
  memstat ms = {0, 0, -1};
  tunnel__mem mem = counting(&ms);
  tunnel__ratelimit *rl;
  ms.fail_after = 0;
  assert_int_equal(tunnel__ratelimit_new(&rl, &mem, 4096, 1, 60000, seed_a),
                   TUNNEL_ENOMEM);
  ms.fail_after = -1;
  assert_int_equal(tunnel__ratelimit_new(&rl, &mem, 4096, 1, 60000, seed_a), 0);
  uint8_t a[4];
  v4(a, 1);
  ms.fail_after = 0;
  assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, 0), TUNNEL_ENOMEM);
  assert_int_equal(check(rl, a, 4, 0), 0);
  /* Entries but no buckets yet: still nothing. */
  ms.fail_after = 1;
  assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, 0), TUNNEL_ENOMEM);
  ms.fail_after = -1;
  for (uint32_t i = 0; i < 16; i++) {
    v4(a, i);
    assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, i), 0);
  }
  ms.fail_after = 0; /* the 17th needs the table to grow */
  v4(a, 100);
  assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, 100), 0);
  assert_true(check(rl, a, 4, 100) > 0);
  assert_int_equal(tunnel__ratelimit_count(rl), 16);
  v4(a, 0);
  assert_int_equal(check(rl, a, 4, 100), 0); /* the oldest made room */
  ms.fail_after = -1;
  tunnel__ratelimit_free(rl);
  assert_int_equal(ms.cur, 0);
}

/* ------------------------------------------------ comparison with a model */

/* The same policy with a plain array, linear search and timestamps for
 * recency: what the hash table, chains and lists must agree with. */
typedef struct model_entry {
  uint32_t addr;
  uint64_t units, t, touched;
} model_entry;

typedef struct model {
  model_entry e[8];
  int n;
  uint32_t cap, failures, window;
  uint64_t clock; /* touch order */
} model;

static model_entry *model_find(model *m, uint32_t addr) {
  for (int i = 0; i < m->n; i++)
    if (m->e[i].addr == addr)
      return &m->e[i];
  return NULL;
}

static void model_refill(model *m, model_entry *x, uint64_t now) {
  if (now <= x->t)
    return;
  uint64_t dt = now - x->t;
  if (dt > m->window)
    dt = m->window;
  x->units += dt * m->failures;
  if (x->units > (uint64_t)m->failures * m->window)
    x->units = (uint64_t)m->failures * m->window;
  x->t = now;
}

static uint32_t model_check(model *m, uint32_t addr, uint64_t now) {
  model_entry *x = model_find(m, addr);
  if (!x)
    return 0;
  x->touched = ++m->clock;
  model_refill(m, x, now);
  if (x->units >= m->window)
    return 0;
  return (uint32_t)((m->window - x->units + m->failures - 1) / m->failures);
}

static void model_fail(model *m, uint32_t addr, uint64_t now) {
  model_entry *x = model_find(m, addr);
  if (!x) {
    if ((uint32_t)m->n < m->cap) {
      x = &m->e[m->n++];
    } else {
      x = &m->e[0];
      for (int i = 1; i < m->n; i++)
        if (m->e[i].touched < x->touched)
          x = &m->e[i];
    }
    x->addr = addr;
    x->units = (uint64_t)m->failures * m->window;
    x->t = now;
  }
  x->touched = ++m->clock;
  model_refill(m, x, now);
  x->units = x->units >= m->window ? x->units - m->window : 0;
}

static void matches_model(void **state) {
  (void)state;
  uint64_t rng = 0x243f6a8885a308d3ull;
  for (int round = 0; round < 200; round++) {
    model m;
    memset(&m, 0, sizeof m);
    m.cap = 1 + (uint32_t)(round % 8);
    m.failures = 1 + (uint32_t)(round % 5);
    m.window = 100 + (uint32_t)(round * 37 % 2000);
    tunnel__ratelimit *rl = new_rl(m.cap, m.failures, m.window);
    uint64_t now = 0;
    for (int step = 0; step < 2000; step++) {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      uint32_t r = (uint32_t)(rng >> 33);
      now += r % 97;
      uint32_t addr = (r >> 8) % 12;
      uint8_t a[4];
      v4(a, 0x0a000000u + addr);
      if (r & 1) {
        model_fail(&m, addr, now);
        assert_int_equal(tunnel__ratelimit_fail(rl, a, 4, now), 0);
      } else {
        uint32_t want = model_check(&m, addr, now);
        uint32_t got = check(rl, a, 4, now);
        if (want != got)
          fail_msg("round %d step %d: address %u at %llu: model %u, table "
                   "%u",
                   round, step, addr, (unsigned long long)now, want, got);
      }
      assert_int_equal(tunnel__ratelimit_count(rl), (size_t)m.n);
    }
    tunnel__ratelimit_free(rl);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(bucket_allows_failures_then_blocks),
      cmocka_unit_test(refill_is_continuous_and_capped),
      cmocka_unit_test(checks_and_refusals_cost_nothing),
      cmocka_unit_test(address_grouping),
      cmocka_unit_test(eviction_keeps_table_bounded),
      cmocka_unit_test(eviction_is_least_recently_touched),
      cmocka_unit_test(disabled_mode),
      cmocka_unit_test(hash_seeds),
      cmocka_unit_test(report_once_per_window),
      cmocka_unit_test(bad_arguments),
      cmocka_unit_test(out_of_memory),
      cmocka_unit_test(matches_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
