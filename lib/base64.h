/* Base64 (RFC 4648: the standard alphabet, padded) for bulk data: frp
 * carries every UDP datagram this way. */
#ifndef TUNNEL_LIB_BASE64_H
#define TUNNEL_LIB_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Characters encoding `n` bytes. */
static inline size_t tunnel__b64_len(size_t n) { return (n + 2) / 3 * 4; }

/* Writes tunnel__b64_len(n) characters to `out` (no NUL). */
void tunnel__b64_encode(uint8_t *out, const uint8_t *in, size_t n);

/* Decodes as Go's base64.StdEncoding does: CR and LF are skipped, anything
 * else outside the alphabet fails, as do a group of fewer than four
 * characters and padding anywhere but at the end. *olen gets the bytes
 * written; `cap` must be at least 3 per 4 characters. 0 or
 * TUNNEL_EPROTO. */
int tunnel__b64_decode(uint8_t *out, size_t cap, size_t *olen,
                       const uint8_t *in, size_t n);

#endif
