/*
 * Failed logins per source address, sans-I/O: a token bucket per address
 * in a bounded table. Time comes in as milliseconds from any monotonic
 * clock.
 *
 * Each address may fail `failures` logins per `window_ms`: its bucket holds
 * `failures` tokens and refills continuously at failures/window_ms, so after
 * a burst one more attempt is allowed every window_ms/failures ms. A failed
 * login takes a token; once the bucket is empty the address is refused
 * before any key check until a token is back. Successful logins and
 * refusals take none (an attacker hammering a blocked address does not
 * extend the block beyond the refill).
 *
 * Addresses are IPv4 (4 bytes) or IPv6 (16 bytes). An IPv6 address counts
 * per /64 prefix, since one host commonly owns a whole /64; an IPv4-mapped
 * IPv6 address (::ffff:a.b.c.d, from a dual-stack listener) counts as its
 * IPv4 address, or every IPv4 peer would share one bucket.
 *
 * The table only holds addresses that failed. It is bounded (`capacity`
 * entries, grown on demand); at capacity the least recently touched entry
 * makes room, in O(1). Buckets are chosen by SipHash-2-4 under a seed given
 * at creation, so peers cannot aim their addresses at one chain. An
 * attacker owning more prefixes than the capacity can cycle entries out;
 * the bound is on memory, the per-address policy holds for the addresses
 * the table keeps.
 */
#ifndef TUNNEL_LIB_RATELIMIT_H
#define TUNNEL_LIB_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "mem.h"

#define TUNNEL__RATELIMIT_SEED_SIZE 16
#define TUNNEL__RATELIMIT_DEFAULT_CAPACITY 4096u
#define TUNNEL__RATELIMIT_DEFAULT_FAILURES 5u
#define TUNNEL__RATELIMIT_DEFAULT_WINDOW_MS 60000u
/* Accepted ranges (tunnel_config_set_login_limits). */
#define TUNNEL__RATELIMIT_MAX_FAILURES 1000000u
#define TUNNEL__RATELIMIT_MIN_WINDOW_MS 100u
#define TUNNEL__RATELIMIT_MAX_WINDOW_MS 86400000u

typedef struct tunnel__ratelimit tunnel__ratelimit;

/* capacity 1..2^24 entries; failures 0 (disabled: nothing is ever refused
 * or stored) up to TUNNEL__RATELIMIT_MAX_FAILURES; window_ms within the
 * MIN/MAX bounds above; seed: TUNNEL__RATELIMIT_SEED_SIZE unpredictable
 * bytes. mem NULL: libc (the allocator is copied). 0, TUNNEL_EINVAL,
 * TUNNEL_ERANGE or TUNNEL_ENOMEM. */
int tunnel__ratelimit_new(tunnel__ratelimit **out, const tunnel__mem *mem,
                          uint32_t capacity, uint32_t failures,
                          uint32_t window_ms,
                          const uint8_t seed[TUNNEL__RATELIMIT_SEED_SIZE]);
/* NULL is a no-op. */
void tunnel__ratelimit_free(tunnel__ratelimit *rl);

/* Records a failed login from `addr` (`len` 4 or 16) at `now_ms`. 0;
 * TUNNEL_EINVAL for another length; TUNNEL_ENOMEM when the table could
 * neither grow nor reuse an entry (nothing recorded). */
int tunnel__ratelimit_fail(tunnel__ratelimit *rl, const uint8_t *addr,
                           size_t len, uint64_t now_ms);

/* 0 when `addr` may attempt a login at `now_ms`, else the milliseconds
 * until it may (at least 1). An address of another length than 4 or 16 is
 * never refused. With `report` not NULL a refusal is counted for the log:
 * *report becomes the number of refusals to report now (this one included)
 * once per window_ms per address, the first time an address is refused,
 * and 0 otherwise, so that a flood gives one log line per address per
 * window. */
uint32_t tunnel__ratelimit_check(tunnel__ratelimit *rl, const uint8_t *addr,
                                 size_t len, uint64_t now_ms, uint32_t *report);

/* Addresses held. */
size_t tunnel__ratelimit_count(const tunnel__ratelimit *rl);
/* The keyed hash that places `addr` (after /64 or IPv4-mapped grouping);
 * exposed for tests. 0 for an address of another length. */
uint64_t tunnel__ratelimit_hash(const tunnel__ratelimit *rl,
                                const uint8_t *addr, size_t len);

#endif
