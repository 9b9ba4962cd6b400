/* The contents of the opaque tunnel_config. Constructors copy it. */
#ifndef TUNNEL_LIB_CONFIG_H
#define TUNNEL_LIB_CONFIG_H

#include "log.h"
#include "mem.h"

#define TUNNEL__DEFAULT_MAX_STREAMS 1024u
#define TUNNEL__DEFAULT_STREAM_WINDOW (6u * 1024u * 1024u)
#define TUNNEL__DEFAULT_MAX_MESSAGE 10240u
#define TUNNEL__DEFAULT_CONTROL_BACKLOG (1024u * 1024u)

struct tunnel_config {
  tunnel__mem mem;
  tunnel__logger log;
  uint32_t max_streams;
  uint32_t stream_window;
  uint32_t max_message_size;
  uint32_t max_control_backlog;
};

void tunnel__config_defaults(struct tunnel_config *cfg);

#endif
