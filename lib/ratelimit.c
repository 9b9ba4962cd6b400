#include "ratelimit.h"

#include <string.h>

#include "router.h" /* tunnel__siphash24 */

#define NIL UINT32_MAX
#define KEY_SIZE 9 /* family tag, then 4 (IPv4) or 8 (IPv6 /64) bytes */
#define MIN_ENTRIES 16u
#define MAX_CAPACITY (1u << 24)

typedef struct rl_entry {
  uint64_t hash;
  uint64_t units;        /* tokens times window_ms: exact integer refill */
  uint64_t t;            /* time of the last refill */
  uint64_t reported;     /* time of the last reported refusal */
  uint32_t refused;      /* refusals not yet reported */
  uint32_t chain;        /* next entry in the bucket */
  uint32_t newer, older; /* recency list */
  uint8_t has_reported;
  uint8_t key[KEY_SIZE];
} rl_entry;

struct tunnel__ratelimit {
  tunnel__mem mem;
  uint8_t seed[TUNNEL__RATELIMIT_SEED_SIZE];
  uint32_t capacity, failures, window_ms;
  uint64_t full; /* failures * window_ms */
  rl_entry *e;
  uint32_t ecap, count;
  uint32_t *buckets; /* heads; nbuckets is a power of two >= ecap */
  uint32_t nbuckets;
  uint32_t newest, oldest;
};

/* The grouping key: IPv4 alone, IPv6 by its /64, IPv4-mapped IPv6 as the
 * IPv4 address it carries. 0 for an unknown length. */
static int make_key(const uint8_t *addr, size_t len, uint8_t key[KEY_SIZE]) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  memset(key, 0, KEY_SIZE);
  if (!addr)
    return 0;
  if (len == 16 && memcmp(addr, mapped, sizeof mapped) == 0) {
    addr += 12;
    len = 4;
  }
  if (len == 4) {
    key[0] = 4;
    memcpy(key + 1, addr, 4);
    return 1;
  }
  if (len == 16) {
    key[0] = 6;
    memcpy(key + 1, addr, 8);
    return 1;
  }
  return 0;
}

static uint64_t key_hash(const tunnel__ratelimit *rl,
                         const uint8_t key[KEY_SIZE]) {
  return tunnel__siphash24(rl->seed, key, KEY_SIZE);
}

int tunnel__ratelimit_new(tunnel__ratelimit **out, const tunnel__mem *mem,
                          uint32_t capacity, uint32_t failures,
                          uint32_t window_ms,
                          const uint8_t seed[TUNNEL__RATELIMIT_SEED_SIZE]) {
  if (out)
    *out = NULL;
  if (!out || !seed)
    return TUNNEL_EINVAL;
  if (capacity < 1 || capacity > MAX_CAPACITY ||
      failures > TUNNEL__RATELIMIT_MAX_FAILURES ||
      window_ms < TUNNEL__RATELIMIT_MIN_WINDOW_MS ||
      window_ms > TUNNEL__RATELIMIT_MAX_WINDOW_MS)
    return TUNNEL_ERANGE;
  if (!mem)
    mem = tunnel__mem_default();
  tunnel__ratelimit *rl = tunnel__calloc(mem, 1, sizeof *rl);
  if (!rl)
    return TUNNEL_ENOMEM;
  rl->mem = *mem;
  memcpy(rl->seed, seed, sizeof rl->seed);
  rl->capacity = capacity;
  rl->failures = failures;
  rl->window_ms = window_ms;
  rl->full = (uint64_t)failures * window_ms;
  rl->newest = rl->oldest = NIL;
  *out = rl;
  return 0;
}

void tunnel__ratelimit_free(tunnel__ratelimit *rl) {
  if (!rl)
    return;
  tunnel__mem mem = rl->mem;
  /* The table says which addresses were refused: not worth leaving in
   * freed memory. */
  if (rl->e)
    tunnel__wipe(rl->e, (size_t)rl->ecap * sizeof *rl->e);
  tunnel__free(&mem, rl->e);
  tunnel__free(&mem, rl->buckets);
  tunnel__wipe(rl, sizeof *rl);
  tunnel__free(&mem, rl);
}

size_t tunnel__ratelimit_count(const tunnel__ratelimit *rl) {
  return rl ? rl->count : 0;
}

uint64_t tunnel__ratelimit_hash(const tunnel__ratelimit *rl,
                                const uint8_t *addr, size_t len) {
  uint8_t key[KEY_SIZE];
  if (!rl || !make_key(addr, len, key))
    return 0;
  return key_hash(rl, key);
}

/* ------------------------------------------------------------- table */

static uint32_t bucket_of(const tunnel__ratelimit *rl, uint64_t hash) {
  return (uint32_t)(hash & (rl->nbuckets - 1));
}

static uint32_t find(const tunnel__ratelimit *rl, const uint8_t key[KEY_SIZE],
                     uint64_t hash) {
  if (!rl->nbuckets)
    return NIL;
  for (uint32_t i = rl->buckets[bucket_of(rl, hash)]; i != NIL;
       i = rl->e[i].chain)
    if (rl->e[i].hash == hash && memcmp(rl->e[i].key, key, KEY_SIZE) == 0)
      return i;
  return NIL;
}

static void chain_unlink(tunnel__ratelimit *rl, uint32_t i) {
  uint32_t *link = &rl->buckets[bucket_of(rl, rl->e[i].hash)];
  while (*link != i)
    link = &rl->e[*link].chain;
  *link = rl->e[i].chain;
}

static void chain_link(tunnel__ratelimit *rl, uint32_t i) {
  uint32_t *head = &rl->buckets[bucket_of(rl, rl->e[i].hash)];
  rl->e[i].chain = *head;
  *head = i;
}

static void lru_unlink(tunnel__ratelimit *rl, uint32_t i) {
  rl_entry *x = &rl->e[i];
  if (x->newer != NIL)
    rl->e[x->newer].older = x->older;
  else
    rl->newest = x->older;
  if (x->older != NIL)
    rl->e[x->older].newer = x->newer;
  else
    rl->oldest = x->newer;
}

static void lru_push(tunnel__ratelimit *rl, uint32_t i) {
  rl_entry *x = &rl->e[i];
  x->newer = NIL;
  x->older = rl->newest;
  if (rl->newest != NIL)
    rl->e[rl->newest].newer = i;
  rl->newest = i;
  if (rl->oldest == NIL)
    rl->oldest = i;
}

static void touch(tunnel__ratelimit *rl, uint32_t i) {
  if (rl->newest == i)
    return;
  lru_unlink(rl, i);
  lru_push(rl, i);
}

/* Room for more entries, up to the capacity: the entry array doubles (its
 * indices stay valid) and the buckets follow it, rehashed from the cached
 * hashes. */
static int grow(tunnel__ratelimit *rl) {
  if (rl->count == rl->ecap && rl->ecap < rl->capacity) {
    uint32_t ecap = rl->ecap ? rl->ecap * 2 : MIN_ENTRIES;
    if (ecap > rl->capacity)
      ecap = rl->capacity;
    rl_entry *e = tunnel__realloc(&rl->mem, rl->e, (size_t)ecap * sizeof *e);
    if (!e)
      return TUNNEL_ENOMEM;
    rl->e = e;
    rl->ecap = ecap;
  }
  uint32_t nb = rl->nbuckets ? rl->nbuckets : 1;
  while (nb < rl->ecap)
    nb *= 2;
  if (nb != rl->nbuckets) {
    uint32_t *b = tunnel__malloc(&rl->mem, (size_t)nb * sizeof *b);
    if (!b)
      return rl->nbuckets ? 0 : TUNNEL_ENOMEM; /* longer chains will do */
    tunnel__free(&rl->mem, rl->buckets);
    rl->buckets = b;
    rl->nbuckets = nb;
    for (uint32_t k = 0; k < nb; k++)
      b[k] = NIL;
    for (uint32_t i = 0; i < rl->count; i++)
      chain_link(rl, i);
  }
  return 0;
}

/* An entry for `key`: a free slot, or the least recently touched one. */
static uint32_t insert(tunnel__ratelimit *rl, const uint8_t key[KEY_SIZE],
                       uint64_t hash, uint64_t now) {
  uint32_t i;
  if ((rl->count == rl->ecap && rl->ecap < rl->capacity) || !rl->nbuckets)
    (void)grow(rl); /* on failure, reuse below */
  if (rl->count < rl->ecap && rl->nbuckets) {
    i = rl->count++;
  } else if (rl->oldest != NIL) {
    i = rl->oldest;
    chain_unlink(rl, i);
    lru_unlink(rl, i);
  } else {
    return NIL;
  }
  rl_entry *x = &rl->e[i];
  memset(x, 0, sizeof *x);
  memcpy(x->key, key, KEY_SIZE);
  x->hash = hash;
  x->units = rl->full;
  x->t = now;
  chain_link(rl, i);
  lru_push(rl, i);
  return i;
}

/* Tokens earned since the last refill; the bucket never holds more than
 * `failures`. A clock that goes back earns nothing. */
static void refill(tunnel__ratelimit *rl, rl_entry *x, uint64_t now) {
  if (now <= x->t)
    return;
  uint64_t dt = now - x->t;
  if (dt > rl->window_ms)
    dt = rl->window_ms; /* a whole window refills any bucket */
  x->units += dt * rl->failures;
  if (x->units > rl->full)
    x->units = rl->full;
  x->t = now;
}

int tunnel__ratelimit_fail(tunnel__ratelimit *rl, const uint8_t *addr,
                           size_t len, uint64_t now_ms) {
  uint8_t key[KEY_SIZE];
  if (!rl || !make_key(addr, len, key))
    return TUNNEL_EINVAL;
  if (!rl->failures)
    return 0;
  uint64_t hash = key_hash(rl, key);
  uint32_t i = find(rl, key, hash);
  if (i == NIL) {
    i = insert(rl, key, hash, now_ms);
    if (i == NIL)
      return TUNNEL_ENOMEM;
  } else {
    touch(rl, i);
  }
  rl_entry *x = &rl->e[i];
  refill(rl, x, now_ms);
  x->units = x->units >= rl->window_ms ? x->units - rl->window_ms : 0;
  return 0;
}

uint32_t tunnel__ratelimit_check(tunnel__ratelimit *rl, const uint8_t *addr,
                                 size_t len, uint64_t now_ms,
                                 uint32_t *report) {
  uint8_t key[KEY_SIZE];
  if (report)
    *report = 0;
  if (!rl || !rl->failures || !rl->count || !make_key(addr, len, key))
    return 0;
  uint64_t hash = key_hash(rl, key);
  uint32_t i = find(rl, key, hash);
  if (i == NIL)
    return 0;
  touch(rl, i);
  rl_entry *x = &rl->e[i];
  refill(rl, x, now_ms);
  if (x->units >= rl->window_ms)
    return 0;
  uint64_t wait = (rl->window_ms - x->units + rl->failures - 1) / rl->failures;
  if (report) {
    if (x->refused < UINT32_MAX)
      x->refused++;
    if (!x->has_reported || now_ms < x->reported ||
        now_ms - x->reported >= rl->window_ms) {
      *report = x->refused;
      x->refused = 0;
      x->reported = now_ms;
      x->has_reported = 1;
    }
  }
  return wait ? (uint32_t)wait : 1;
}
