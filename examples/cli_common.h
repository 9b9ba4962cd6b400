/* Helpers shared by the example programs (argument parsing, logging to
 * stderr). Not part of the library. */
#ifndef TUNNEL_EXAMPLES_CLI_COMMON_H
#define TUNNEL_EXAMPLES_CLI_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tunnel/tunnel.h>

/* Splits "HOST:PORT", "[V6]:PORT" or "PORT" (host left as given default).
 * Returns 0 on success. `host` receives at most hlen-1 characters. */
static inline int cli_parse_hostport(const char *s, char *host, size_t hlen,
                                     uint16_t *port) {
  const char *colon = strrchr(s, ':');
  const char *ps = s;
  if (colon) {
    const char *h = s;
    size_t n = (size_t)(colon - s);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
      h++;
      n -= 2;
    }
    if (n == 0 || n >= hlen)
      return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    ps = colon + 1;
  }
  char *end;
  long v = strtol(ps, &end, 10);
  if (*ps == '\0' || *end != '\0' || v < 0 || v > 65535)
    return -1;
  *port = (uint16_t)v;
  return 0;
}

static inline int cli_parse_u32(const char *s, uint32_t max, uint32_t *out) {
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (*s == '\0' || *s == '-' || *end != '\0' || v > max)
    return -1;
  *out = (uint32_t)v;
  return 0;
}

static inline void cli_log(int level, const char *msg, void *ud) {
  fprintf(stderr, "%s: %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

#endif
