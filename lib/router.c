#include "router.h"

#include <string.h>

#define MIN_SLOTS 16
#define LABEL_MAX 63

/* ------------------------------------------------------------ SipHash-2-4 */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND(v0, v1, v2, v3)                                               \
  do {                                                                         \
    v0 += v1;                                                                  \
    v1 = ROTL(v1, 13);                                                         \
    v1 ^= v0;                                                                  \
    v0 = ROTL(v0, 32);                                                         \
    v2 += v3;                                                                  \
    v3 = ROTL(v3, 16);                                                         \
    v3 ^= v2;                                                                  \
    v0 += v3;                                                                  \
    v3 = ROTL(v3, 21);                                                         \
    v3 ^= v0;                                                                  \
    v2 += v1;                                                                  \
    v1 = ROTL(v1, 17);                                                         \
    v1 ^= v2;                                                                  \
    v2 = ROTL(v2, 32);                                                         \
  } while (0)

static uint64_t load_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static uint64_t siphash(uint64_t k0, uint64_t k1, const uint8_t *m,
                        size_t len) {
  uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575);
  uint64_t v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
  uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261);
  uint64_t v3 = k1 ^ UINT64_C(0x7465646279746573);
  size_t whole = len & ~(size_t)7;
  for (size_t i = 0; i < whole; i += 8) {
    uint64_t w = load_le64(m + i);
    v3 ^= w;
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    v0 ^= w;
  }
  /* Last block: the remaining bytes, and the length's low byte on top. */
  uint64_t b = (uint64_t)(len & 0xff) << 56;
  for (size_t i = len - whole; i > 0; i--)
    b |= (uint64_t)m[whole + i - 1] << (8 * (i - 1));
  v3 ^= b;
  SIPROUND(v0, v1, v2, v3);
  SIPROUND(v0, v1, v2, v3);
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND(v0, v1, v2, v3);
  SIPROUND(v0, v1, v2, v3);
  SIPROUND(v0, v1, v2, v3);
  SIPROUND(v0, v1, v2, v3);
  return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t tunnel__siphash24(const uint8_t key[16], const void *data,
                           size_t len) {
  return siphash(load_le64(key), load_le64(key + 8), data, len);
}

/* ------------------------------------------------------------------ names */

/* Lower-cases and checks a name into out (TUNNEL__ROUTER_NAME_MAX bytes, not
 * terminated). allow_wild admits "*" as a whole first label. Returns the
 * length, or 0 when the name is not valid. */
static size_t normalize(const char *s, size_t len, int allow_wild,
                        char *out) {
  if (len == 0 || len > TUNNEL__ROUTER_NAME_MAX)
    return 0;
  size_t label = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 'A' && c <= 'Z')
      c = (unsigned char)(c - 'A' + 'a');
    if (c == '.') {
      if (label == 0)
        return 0;
      label = 0;
    } else if (c == '*') {
      /* Whole first label only: "*" or "*.rest". */
      if (!allow_wild || i != 0 || (len > 1 && s[1] != '.'))
        return 0;
      label++;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_') {
      if (++label > LABEL_MAX)
        return 0;
    } else {
      return 0;
    }
    out[i] = (char)c;
  }
  return label ? len : 0;
}

static int valid_location(const char *loc) {
  return loc[0] == '\0' || loc[0] == '/';
}

/* ------------------------------------------------------------------ table */

typedef struct route {
  char *loc;
  size_t len;
  void *target;
} route;

/* One name and its routes, longest location first: the first that matches
 * a path is the longest (two distinct matching locations are both prefixes
 * of the path, so they cannot have the same length). */
typedef struct host {
  route *routes;
  size_t n, cap;
  size_t len;
  char name[]; /* not terminated */
} host;

typedef struct slot {
  uint64_t hash;
  host *h; /* NULL: empty */
} slot;

struct tunnel__router {
  const tunnel__mem *mem;
  uint64_t k0, k1;
  slot *slots;
  size_t mask; /* slot count - 1, a power of two minus one */
  size_t names;
  size_t routes;
  uint64_t probes;
};

static uint64_t hash_name(const tunnel__router *r, const char *name,
                          size_t len) {
  return siphash(r->k0, r->k1, (const uint8_t *)name, len);
}

/* Index of the slot holding name, or of the empty slot that ends its probe
 * sequence. The table is never full, so the walk ends. */
static size_t probe(tunnel__router *r, uint64_t hash, const char *name,
                    size_t len) {
  size_t i = (size_t)hash & r->mask;
  for (;;) {
    r->probes++;
    const slot *s = &r->slots[i];
    if (!s->h || (s->hash == hash && s->h->len == len &&
                  memcmp(s->h->name, name, len) == 0))
      return i;
    i = (i + 1) & r->mask;
  }
}

static host *get(tunnel__router *r, const char *name, size_t len) {
  return r->slots[probe(r, hash_name(r, name, len), name, len)].h;
}

/* Moves every entry into a fresh array of `count` slots (a power of two
 * larger than twice the names). */
static int rehash(tunnel__router *r, size_t count) {
  slot *fresh = tunnel__calloc(r->mem, count, sizeof *fresh);
  if (!fresh)
    return TUNNEL_ENOMEM;
  size_t mask = count - 1;
  for (size_t i = 0; i <= r->mask; i++) {
    if (!r->slots[i].h)
      continue;
    size_t j = (size_t)r->slots[i].hash & mask;
    while (fresh[j].h)
      j = (j + 1) & mask;
    fresh[j] = r->slots[i];
  }
  tunnel__free(r->mem, r->slots);
  r->slots = fresh;
  r->mask = mask;
  return 0;
}

/* Empties slot i, pulling later members of its cluster back so that every
 * probe sequence stays unbroken (no tombstones to accumulate). */
static void delete_slot(tunnel__router *r, size_t i) {
  size_t j = i;
  for (;;) {
    j = (j + 1) & r->mask;
    if (!r->slots[j].h)
      break;
    size_t home = (size_t)r->slots[j].hash & r->mask;
    /* The entry at j may fill the hole unless its home lies cyclically in
     * (i, j], where a search for it never passes i. */
    int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!stays) {
      r->slots[i] = r->slots[j];
      i = j;
    }
  }
  r->slots[i].h = NULL;
  r->slots[i].hash = 0;
  r->names--;
}

/* Halves the table while it is at most 1/8 full, so a burst of names does
 * not pin memory; a failed allocation just keeps the larger table. */
static void maybe_shrink(tunnel__router *r) {
  size_t count = r->mask + 1;
  while (count > MIN_SLOTS && r->names * 8 < count)
    count /= 2;
  if (count != r->mask + 1)
    (void)rehash(r, count);
}

static void host_free(const tunnel__mem *mem, host *h) {
  for (size_t i = 0; i < h->n; i++)
    tunnel__free(mem, h->routes[i].loc);
  tunnel__free(mem, h->routes);
  tunnel__free(mem, h);
}

int tunnel__router_new(tunnel__router **out, const tunnel__mem *mem,
                       const uint8_t seed[TUNNEL__ROUTER_SEED_SIZE]) {
  if (!out || !seed)
    return TUNNEL_EINVAL;
  *out = NULL;
  if (!mem)
    mem = tunnel__mem_default();
  tunnel__router *r = tunnel__calloc(mem, 1, sizeof *r);
  if (!r)
    return TUNNEL_ENOMEM;
  r->mem = mem;
  r->k0 = load_le64(seed);
  r->k1 = load_le64(seed + 8);
  r->slots = tunnel__calloc(mem, MIN_SLOTS, sizeof *r->slots);
  if (!r->slots) {
    tunnel__free(mem, r);
    return TUNNEL_ENOMEM;
  }
  r->mask = MIN_SLOTS - 1;
  *out = r;
  return 0;
}

void tunnel__router_free(tunnel__router *r) {
  if (!r)
    return;
  for (size_t i = 0; i <= r->mask; i++)
    if (r->slots[i].h)
      host_free(r->mem, r->slots[i].h);
  tunnel__free(r->mem, r->slots);
  tunnel__free(r->mem, r);
}

static route *find_route(host *h, const char *loc, size_t len) {
  for (size_t i = 0; i < h->n; i++)
    if (h->routes[i].len == len && memcmp(h->routes[i].loc, loc, len) == 0)
      return &h->routes[i];
  return NULL;
}

/* Inserts keeping the longest locations first; room is reserved. */
static void insert_route(host *h, char *loc, size_t len, void *target) {
  size_t at = 0;
  while (at < h->n && h->routes[at].len >= len)
    at++;
  memmove(&h->routes[at + 1], &h->routes[at], (h->n - at) * sizeof(route));
  h->routes[at] = (route){loc, len, target};
  h->n++;
}

static int reserve_route(const tunnel__mem *mem, host *h) {
  if (h->n < h->cap)
    return 0;
  size_t cap = h->cap ? h->cap * 2 : 1;
  route *v = tunnel__realloc(mem, h->routes, cap * sizeof *v);
  if (!v)
    return TUNNEL_ENOMEM;
  h->routes = v;
  h->cap = cap;
  return 0;
}

int tunnel__router_add(tunnel__router *r, const char *name,
                       const char *location, void *target) {
  char key[TUNNEL__ROUTER_NAME_MAX];
  if (!r || !name || !target)
    return TUNNEL_EINVAL;
  if (!location)
    location = "";
  size_t len = normalize(name, strlen(name), 1, key);
  if (!len || !valid_location(location))
    return TUNNEL_EINVAL;
  size_t loc_len = strlen(location);

  uint64_t hash = hash_name(r, key, len);
  size_t i = probe(r, hash, key, len);
  host *h = r->slots[i].h;
  if (h && find_route(h, location, loc_len))
    return TUNNEL_EEXIST;

  /* Everything that can fail comes before the first change. */
  char *loc = tunnel__strndup(r->mem, location, loc_len);
  if (!loc)
    return TUNNEL_ENOMEM;
  if (h) {
    if (reserve_route(r->mem, h) != 0) {
      tunnel__free(r->mem, loc);
      return TUNNEL_ENOMEM;
    }
  } else {
    h = tunnel__malloc(r->mem, sizeof *h + len);
    if (!h) {
      tunnel__free(r->mem, loc);
      return TUNNEL_ENOMEM;
    }
    h->routes = NULL;
    h->n = h->cap = 0;
    h->len = len;
    memcpy(h->name, key, len);
    if (reserve_route(r->mem, h) != 0) {
      tunnel__free(r->mem, h);
      tunnel__free(r->mem, loc);
      return TUNNEL_ENOMEM;
    }
    /* Keep the table at most half full: short clusters, and never full. */
    if ((r->names + 1) * 2 > r->mask + 1) {
      if (r->mask + 1 > SIZE_MAX / 2 / sizeof(slot) ||
          rehash(r, (r->mask + 1) * 2) != 0) {
        host_free(r->mem, h);
        tunnel__free(r->mem, loc);
        return TUNNEL_ENOMEM;
      }
      i = probe(r, hash, key, len);
    }
    r->slots[i] = (slot){hash, h};
    r->names++;
  }
  insert_route(h, loc, loc_len, target);
  r->routes++;
  return 0;
}

/* Takes route k out of the host in slot i, and the host when it empties.
 * Returns 1 when the slot was emptied. */
static int drop_route(tunnel__router *r, size_t i, size_t k) {
  host *h = r->slots[i].h;
  tunnel__free(r->mem, h->routes[k].loc);
  memmove(&h->routes[k], &h->routes[k + 1], (h->n - k - 1) * sizeof(route));
  h->n--;
  r->routes--;
  if (h->n)
    return 0;
  delete_slot(r, i);
  host_free(r->mem, h);
  return 1;
}

int tunnel__router_remove(tunnel__router *r, const char *name,
                          const char *location) {
  char key[TUNNEL__ROUTER_NAME_MAX];
  if (!r || !name)
    return TUNNEL_EINVAL;
  if (!location)
    location = "";
  size_t len = normalize(name, strlen(name), 1, key);
  if (!len || !valid_location(location))
    return TUNNEL_EINVAL;
  size_t i = probe(r, hash_name(r, key, len), key, len);
  host *h = r->slots[i].h;
  route *rt = h ? find_route(h, location, strlen(location)) : NULL;
  if (!rt)
    return TUNNEL_ENOTFOUND;
  if (drop_route(r, i, (size_t)(rt - h->routes)))
    maybe_shrink(r);
  return 0;
}

size_t tunnel__router_remove_target(tunnel__router *r, const void *target) {
  if (!r || !target)
    return 0;
  size_t removed = 0;
  for (size_t i = 0; i <= r->mask;) {
    host *h = r->slots[i].h;
    int emptied = 0;
    for (size_t k = h ? h->n : 0; k > 0 && !emptied; k--) {
      if (h->routes[k - 1].target == target) {
        removed++;
        emptied = drop_route(r, i, k - 1);
      }
    }
    /* An emptied slot may have been refilled from later in its cluster;
     * look at it again. Entries pulled back from a wrapped cluster were
     * already seen and hold no route to target any more. */
    if (!emptied)
      i++;
  }
  maybe_shrink(r);
  return removed;
}

void *tunnel__router_find(tunnel__router *r, const char *name,
                          const char *location) {
  char key[TUNNEL__ROUTER_NAME_MAX];
  if (!r || !name)
    return NULL;
  if (!location)
    location = "";
  size_t len = normalize(name, strlen(name), 1, key);
  if (!len)
    return NULL;
  host *h = get(r, key, len);
  route *rt = h ? find_route(h, location, strlen(location)) : NULL;
  return rt ? rt->target : NULL;
}

/* loc is a prefix of path ending where a path segment does. */
static int location_matches(const route *rt, const char *path,
                            size_t path_len) {
  size_t n = rt->len;
  if (n == 0)
    return 1;
  if (path_len < n || memcmp(path, rt->loc, n) != 0)
    return 0;
  return path_len == n || rt->loc[n - 1] == '/' || path[n] == '/' ||
         path[n] == '?';
}

static void *match(const host *h, const char *path, size_t path_len) {
  if (!h)
    return NULL;
  for (size_t i = 0; i < h->n; i++)
    if (location_matches(&h->routes[i], path, path_len))
      return h->routes[i].target;
  return NULL;
}

void *tunnel__router_lookup(tunnel__router *r, const char *host_name,
                            size_t host_len, const char *path,
                            size_t path_len) {
  char buf[TUNNEL__ROUTER_NAME_MAX];
  if (!r || !host_name || (!path && path_len))
    return NULL;
  size_t len = normalize(host_name, host_len, 0, buf);
  if (!len)
    return NULL;
  void *t = match(get(r, buf, len), path, path_len);
  /* Wildcards, longest suffix first. For the dot at i, "*.<suffix>" is
   * written over the label's last byte and the dot itself; that byte is not
   * needed again, as every later dot lies further right. */
  for (size_t i = 1; !t && i < len; i++) {
    if (buf[i] != '.')
      continue;
    buf[i - 1] = '*';
    t = match(get(r, buf + i - 1, len - i + 1), path, path_len);
  }
  if (!t)
    t = match(get(r, "*", 1), path, path_len);
  return t;
}

size_t tunnel__router_count(const tunnel__router *r) {
  return r ? r->routes : 0;
}

uint64_t tunnel__router_probes(const tunnel__router *r) {
  return r ? r->probes : 0;
}

/* ---------------------------------------------------------- random labels */

int tunnel__router_random_label(const uint8_t *random_bytes, size_t n,
                                char *out, size_t cap) {
  static const char alphabet[33] = "abcdefghijkmnpqrstuvwxyz23456789";
  if (!random_bytes || !out || n < TUNNEL__ROUTER_LABEL_MIN_BYTES ||
      n > TUNNEL__ROUTER_LABEL_MAX_BYTES)
    return TUNNEL_EINVAL;
  size_t len = TUNNEL__ROUTER_LABEL_LEN(n);
  if (cap < len + 1)
    return TUNNEL_ERANGE;
  /* 32 symbols: every 5-bit group maps to one character, so the label is
   * as uniform as the bytes. */
  uint32_t acc = 0;
  unsigned bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    acc = acc << 8 | random_bytes[i];
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out[o++] = alphabet[(acc >> bits) & 31];
    }
  }
  if (bits)
    out[o++] = alphabet[(acc << (5 - bits)) & 31];
  out[o] = '\0';
  return (int)o;
}
