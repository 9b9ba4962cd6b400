#include "log.h"

#include <stdarg.h>
#include <stdio.h>

const char *tunnel_log_level_name(int level) {
  switch (level) {
  case TUNNEL_LOG_ERROR:
    return "error";
  case TUNNEL_LOG_WARN:
    return "warn";
  case TUNNEL_LOG_INFO:
    return "info";
  case TUNNEL_LOG_DEBUG:
    return "debug";
  default:
    return "unknown";
  }
}

void tunnel__log(const tunnel__logger *lg, int level, const char *fmt, ...) {
  if (!tunnel__log_enabled(lg, level))
    return;
  /* Log lines are short; a fixed buffer keeps logging allocation-free. */
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  /* A line is one line: control bytes can only come from a peer-supplied
   * string (a run id, a proxy name) and would let it forge log lines. */
  char safe[sizeof line * 4];
  size_t o = 0;
  static const char hex[] = "0123456789abcdef";
  for (const unsigned char *p = (const unsigned char *)line; *p; p++) {
    if (*p < 0x20 || *p == 0x7f) {
      safe[o++] = '\\';
      safe[o++] = 'x';
      safe[o++] = hex[*p >> 4];
      safe[o++] = hex[*p & 15];
    } else {
      safe[o++] = (char)*p;
    }
  }
  safe[o] = '\0';
  lg->fn(level, safe, lg->user_data);
}
