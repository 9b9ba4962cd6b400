/*
 * Name router for the server's HTTP and HTTPS vhosts, sans-I/O.
 *
 * Maps (name, location) keys to an opaque target (a proxy). A name is exact
 * ("app.example.com"), a wildcard ("*.example.com": any name with at least
 * one more label under example.com, not example.com itself) or "*" (every
 * name). The location is a path prefix, frp's `locations`; "" (or NULL)
 * matches every path.
 *
 * Lookup(host, path) tries the exact host, then the wildcards from the most
 * specific ("*.b.example.com" before "*.example.com"), then "*". Within a
 * name the longest location that matches wins; a name none of whose
 * locations matches does not stop the search, the next name is tried (as in
 * frp's vhost muxer). A location matches on path segment boundaries: "/api"
 * matches "/api", "/api/x" and "/api?q" but not "/apix" (frp compares plain
 * string prefixes; "/api/" matches what both would).
 *
 * Names are case-insensitive and stored lower-case: labels of 1..63 bytes of
 * [a-z0-9_-] (A-Z folded), separated by dots, 253 bytes at most, no empty
 * label (hence no trailing dot); '*' only as a whole first label.
 *
 * The table hashes names with SipHash-2-4 under a caller-supplied 128-bit
 * seed, so a client choosing names cannot aim them at one bucket. Open
 * addressing with linear probing, at most half full, doubling as it grows;
 * a lookup costs O(1) expected probes per name tried, at most 128 names
 * (the host, one wildcard per label suffix, "*").
 */
#ifndef TUNNEL_LIB_ROUTER_H
#define TUNNEL_LIB_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "mem.h"

#define TUNNEL__ROUTER_SEED_SIZE 16
#define TUNNEL__ROUTER_NAME_MAX 253

/* Random labels: bytes of randomness accepted, and the label length they
 * give (5 bits a character, the last one padded with zero bits). */
#define TUNNEL__ROUTER_LABEL_MIN_BYTES 8
#define TUNNEL__ROUTER_LABEL_MAX_BYTES 39
#define TUNNEL__ROUTER_LABEL_LEN(n) (((n) * 8 + 4) / 5)

typedef struct tunnel__router tunnel__router;

/* SipHash-2-4 of data under a 16-byte key (k0 = bytes 0..7 little-endian,
 * k1 = bytes 8..15), as in the reference implementation. */
uint64_t tunnel__siphash24(const uint8_t key[16], const void *data,
                           size_t len);

/* seed: TUNNEL__ROUTER_SEED_SIZE unpredictable bytes; mem NULL: libc.
 * 0, TUNNEL_EINVAL (out or seed NULL) or TUNNEL_ENOMEM. */
int tunnel__router_new(tunnel__router **out, const tunnel__mem *mem,
                       const uint8_t seed[TUNNEL__ROUTER_SEED_SIZE]);
/* Frees the router and its keys, not the targets. NULL is a no-op. */
void tunnel__router_free(tunnel__router *r);

/* Routes (name, location) to target (not NULL). location NULL or "" means
 * every path, otherwise it starts with '/'. 0; TUNNEL_EEXIST when that
 * exact pair is held (by any target; the router is unchanged);
 * TUNNEL_EINVAL for a bad name, location or target; TUNNEL_ENOMEM, leaving
 * the router unchanged. */
int tunnel__router_add(tunnel__router *r, const char *name,
                       const char *location, void *target);
/* Drops the route of (name, location): 0, TUNNEL_ENOTFOUND, TUNNEL_EINVAL. */
int tunnel__router_remove(tunnel__router *r, const char *name,
                          const char *location);
/* Drops every route to target; returns how many there were. Walks the whole
 * table: meant for a proxy's teardown, not for a hot path. */
size_t tunnel__router_remove_target(tunnel__router *r, const void *target);

/* Holder of exactly (name, location), without wildcard or prefix matching
 * (for "already used by ..." messages), or NULL. */
void *tunnel__router_find(tunnel__router *r, const char *name,
                          const char *location);

/* Target serving a request for host (without port; any case) and path (the
 * request target; may be NULL when path_len is 0), or NULL. A host that is
 * not a valid name matches nothing. */
void *tunnel__router_lookup(tunnel__router *r, const char *host,
                            size_t host_len, const char *path,
                            size_t path_len);

/* Number of (name, location) routes held. */
size_t tunnel__router_count(const tunnel__router *r);

/* Table slots examined by searches since creation: a deterministic measure
 * of the cost of lookups, for tests and diagnostics. */
uint64_t tunnel__router_probes(const tunnel__router *r);

/* Writes a DNS label of lower-case letters and digits carrying all n bytes of
 * caller-supplied randomness (n from TUNNEL__ROUTER_LABEL_MIN_BYTES to
 * TUNNEL__ROUTER_LABEL_MAX_BYTES) into out, NUL-terminated. The alphabet has
 * 32 symbols without 'l', 'o', '0' and '1', which read alike. Returns the
 * length, TUNNEL__ROUTER_LABEL_LEN(n); TUNNEL_EINVAL for a bad n or NULL
 * pointer; TUNNEL_ERANGE when cap cannot hold the label and its NUL. */
int tunnel__router_random_label(const uint8_t *random_bytes, size_t n,
                                char *out, size_t cap);

#endif
