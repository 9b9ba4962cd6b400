/* A table lookup per character. mbedTLS's codec is constant-time, which is
 * what keys need and bulk data does not: it cost the UDP path a third to a
 * half of its CPU. */
#include "base64.h"

#include "tunnel/tunnel.h"

static const char enc[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* One more than a character's sextet; 0 for characters outside the
 * alphabet, SKIP for CR and LF, PAD for '='. */
enum { SKIP = 65, PAD = 66 };

static const uint8_t dec[256] = {
    ['\r'] = SKIP, ['\n'] = SKIP, ['='] = PAD,
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,
    ['G'] = 7,  ['H'] = 8,  ['I'] = 9,  ['J'] = 10, ['K'] = 11, ['L'] = 12,
    ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, ['Q'] = 17, ['R'] = 18,
    ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24,
    ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30,
    ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36,
    ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42,
    ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48,
    ['w'] = 49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54,
    ['2'] = 55, ['3'] = 56, ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60,
    ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64,
};

void tunnel__b64_encode(uint8_t *out, const uint8_t *in, size_t n) {
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    *out++ = (uint8_t)enc[v >> 18];
    *out++ = (uint8_t)enc[v >> 12 & 63];
    *out++ = (uint8_t)enc[v >> 6 & 63];
    *out++ = (uint8_t)enc[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)in[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)in[i + 1] << 8;
    *out++ = (uint8_t)enc[v >> 18];
    *out++ = (uint8_t)enc[v >> 12 & 63];
    *out++ = i + 1 < n ? (uint8_t)enc[v >> 6 & 63] : '=';
    *out++ = '=';
  }
}

int tunnel__b64_decode(uint8_t *out, size_t cap, size_t *olen,
                       const uint8_t *in, size_t n) {
  size_t o = 0, i = 0;
  uint32_t acc = 0;
  unsigned have = 0, pads = 0;
  *olen = 0;
  /* Whole groups of four alphabet characters, the bulk of any input: a
   * character outside the alphabet (0, SKIP, PAD) turns its term above 63
   * and sends the rest to the careful loop below. */
  while (i + 4 <= n && o + 3 <= cap) {
    uint32_t a = dec[in[i]] - 1u, b = dec[in[i + 1]] - 1u,
             c = dec[in[i + 2]] - 1u, d = dec[in[i + 3]] - 1u;
    if ((a | b | c | d) > 63)
      break;
    uint32_t v = a << 18 | b << 12 | c << 6 | d;
    out[o] = (uint8_t)(v >> 16);
    out[o + 1] = (uint8_t)(v >> 8);
    out[o + 2] = (uint8_t)v;
    o += 3;
    i += 4;
  }
  for (; i < n; i++) {
    uint8_t s = dec[in[i]];
    if (s == SKIP)
      continue;
    if (s == 0)
      return TUNNEL_EPROTO;
    if (s == PAD) {
      /* One or two pad characters after at least two of the alphabet,
       * and only in the last group. */
      if (have + pads < 2)
        return TUNNEL_EPROTO;
      pads++;
    } else {
      if (pads)
        return TUNNEL_EPROTO;
      acc = acc << 6 | (uint32_t)(s - 1);
      have++;
    }
    if (have + pads < 4)
      continue;
    size_t k = have - 1; /* bytes in this group */
    if (o + k > cap)
      return TUNNEL_EPROTO;
    acc <<= 6 * pads;
    out[o++] = (uint8_t)(acc >> 16);
    if (k > 1)
      out[o++] = (uint8_t)(acc >> 8);
    if (k > 2)
      out[o++] = (uint8_t)acc;
    acc = 0;
    have = 0;
    if (pads) {
      /* Nothing but line breaks after the padding. */
      for (i++; i < n; i++)
        if (dec[in[i]] != SKIP)
          return TUNNEL_EPROTO;
      break;
    }
  }
  if (have || pads > 2 || (pads && have))
    return TUNNEL_EPROTO;
  *olen = o;
  return 0;
}
