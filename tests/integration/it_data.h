/* Test data and accounting shared by the integration tests: deterministic
 * content, FNV-1a hashing, and a counting allocator for memory bounds and
 * leak checks. */
#ifndef IT_DATA_H
#define IT_DATA_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static inline uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= FNV_PRIME;
  }
  return h;
}

static inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Deterministic pseudo-random content: byte `off` of stream `seed`. Distinct
 * seeds give unrelated streams, so a misrouted or reordered chunk changes
 * the receiver's hash. */
static inline void gen_fill(uint32_t seed, uint64_t off, uint8_t *out, size_t n) {
  uint64_t block = off / 8, word = 0;
  unsigned pos = (unsigned)(off % 8);
  word = splitmix64(((uint64_t)seed << 40) ^ block);
  for (size_t i = 0; i < n; i++) {
    out[i] = (uint8_t)(word >> (8 * pos));
    if (++pos == 8) {
      pos = 0;
      word = splitmix64(((uint64_t)seed << 40) ^ ++block);
    }
  }
}

/* Counting allocator: every byte the library allocates through its config,
 * for the memory-bound and leak checks. */
typedef struct memstat {
  size_t cur, peak;
  uint64_t calls;
} memstat;

typedef union mem_hdr {
  size_t n;
  max_align_t align;
} mem_hdr;

static inline void mem_account(memstat *m, size_t add, size_t sub) {
  m->cur = m->cur - sub + add;
  if (m->cur > m->peak)
    m->peak = m->cur;
  m->calls++;
}

static inline void *mem_malloc(size_t n, void *ud) {
  mem_hdr *h = malloc(sizeof *h + n);
  if (!h)
    return NULL;
  h->n = n;
  mem_account(ud, n, 0);
  return h + 1;
}

static inline void *mem_realloc(void *p, size_t n, void *ud) {
  if (!p)
    return mem_malloc(n, ud);
  mem_hdr *h = (mem_hdr *)p - 1;
  size_t old = h->n;
  mem_hdr *nh = realloc(h, sizeof *nh + n);
  if (!nh)
    return NULL;
  nh->n = n;
  mem_account(ud, n, old);
  return nh + 1;
}

static inline void mem_free(void *p, void *ud) {
  if (!p)
    return;
  mem_hdr *h = (mem_hdr *)p - 1;
  mem_account(ud, 0, h->n);
  free(h);
}

#endif
