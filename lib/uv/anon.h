/* Peers that have not authenticated yet, oldest first, with the address
 * they came from and what they cost: the server bounds them by count, per
 * address and by bytes, and makes room by shedding the oldest rather than
 * refusing newcomers, so a trickle of slow connections cannot keep real
 * clients out. */
#ifndef TUNNEL_LIB_UV_ANON_H
#define TUNNEL_LIB_UV_ANON_H

#include <stddef.h>
#include <stdint.h>

#define TUNNEL__ADDR_MAX 46 /* numeric IPv6 address and NUL */

typedef struct tunnel__anon tunnel__anon;

struct tunnel__anon {
  tunnel__anon *prev, *next;
  char addr[TUNNEL__ADDR_MAX];
  uint32_t cost;
  /* Closes the owner, which removes the entry (and may free it). */
  void (*shed)(tunnel__anon *a);
  int linked;
};

typedef struct tunnel__anon_set {
  tunnel__anon *head, *tail;
  uint32_t count;
  uint64_t bytes;
} tunnel__anon_set;

typedef struct tunnel__anon_limits {
  uint32_t max;      /* entries */
  uint32_t per_addr; /* entries from one address */
  uint64_t bytes;    /* summed cost */
} tunnel__anon_limits;

/* Appends `a` (the youngest). `addr` is copied. */
void tunnel__anon_add(tunnel__anon_set *set, tunnel__anon *a,
                      const char *addr, uint32_t cost,
                      void (*shed)(tunnel__anon *a));
/* Removes `a` if it is in the set. */
void tunnel__anon_remove(tunnel__anon_set *set, tunnel__anon *a);
/* Sheds the oldest entries until one more from `addr` costing `cost` fits
 * the limits. Returns how many were shed. */
uint32_t tunnel__anon_make_room(tunnel__anon_set *set,
                                const tunnel__anon_limits *lim,
                                const char *addr, uint32_t cost);

#endif
