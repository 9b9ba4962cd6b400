/* Internal logging: formats only when a sink wants the level. */
#ifndef TUNNEL_LIB_LOG_H
#define TUNNEL_LIB_LOG_H

#include "tunnel/tunnel.h"

typedef struct tunnel__logger {
  tunnel_log_fn fn;
  int max_level;
  void *user_data;
} tunnel__logger;

#if defined(__GNUC__)
#define TUNNEL__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TUNNEL__PRINTF(a, b)
#endif

void tunnel__log(const tunnel__logger *lg, int level, const char *fmt, ...)
    TUNNEL__PRINTF(3, 4);

#define tunnel__log_enabled(lg, level)                                         \
  ((lg) != NULL && (lg)->fn != NULL && (level) <= (lg)->max_level)

#endif
