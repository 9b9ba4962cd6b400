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
  lg->fn(level, line, lg->user_data);
}
