/* Big-endian helpers: wire bytes are always decoded field by field, never
 * through casts of packed structs. */
#ifndef TUNNEL_LIB_WIRE_H
#define TUNNEL_LIB_WIRE_H

#include <stdint.h>

static inline uint16_t tunnel__be16(const uint8_t *p) {
  return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t tunnel__be32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
         ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint64_t tunnel__be64(const uint8_t *p) {
  return ((uint64_t)tunnel__be32(p) << 32) | tunnel__be32(p + 4);
}

static inline void tunnel__put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static inline void tunnel__put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static inline void tunnel__put64(uint8_t *p, uint64_t v) {
  tunnel__put32(p, (uint32_t)(v >> 32));
  tunnel__put32(p + 4, (uint32_t)v);
}

#endif
