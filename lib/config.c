#include "config.h"

#include <stdlib.h>

void tunnel__config_defaults(struct tunnel_config *cfg) {
  cfg->mem = *tunnel__mem_default();
  cfg->log.fn = NULL;
  cfg->log.max_level = TUNNEL_LOG_ERROR;
  cfg->log.user_data = NULL;
  cfg->max_streams = TUNNEL__DEFAULT_MAX_STREAMS;
  cfg->stream_window = TUNNEL__DEFAULT_STREAM_WINDOW;
  cfg->max_message_size = TUNNEL__DEFAULT_MAX_MESSAGE;
  cfg->max_control_backlog = TUNNEL__DEFAULT_CONTROL_BACKLOG;
}

int tunnel_config_new(tunnel_config **out) {
  if (!out)
    return TUNNEL_EINVAL;
  *out = NULL;
  tunnel_config *cfg = malloc(sizeof *cfg);
  if (!cfg)
    return TUNNEL_ENOMEM;
  tunnel__config_defaults(cfg);
  *out = cfg;
  return 0;
}

void tunnel_config_free(tunnel_config *cfg) { free(cfg); }

int tunnel_config_set_allocator(tunnel_config *cfg, tunnel_malloc_fn m,
                                tunnel_realloc_fn r, tunnel_free_fn f,
                                void *user_data) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (!m && !r && !f) {
    cfg->mem = *tunnel__mem_default();
    return 0;
  }
  if (!m || !r || !f)
    return TUNNEL_EINVAL;
  cfg->mem.malloc_fn = m;
  cfg->mem.realloc_fn = r;
  cfg->mem.free_fn = f;
  cfg->mem.user_data = user_data;
  return 0;
}

int tunnel_config_set_log(tunnel_config *cfg, tunnel_log_fn fn, int max_level,
                          void *user_data) {
  if (!cfg || max_level < TUNNEL_LOG_ERROR || max_level > TUNNEL_LOG_DEBUG)
    return TUNNEL_EINVAL;
  cfg->log.fn = fn;
  cfg->log.max_level = max_level;
  cfg->log.user_data = user_data;
  return 0;
}

static int set_range(tunnel_config *cfg, uint32_t *field, uint32_t v,
                     uint32_t lo, uint32_t hi) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (v < lo || v > hi)
    return TUNNEL_ERANGE;
  *field = v;
  return 0;
}

int tunnel_config_set_max_streams(tunnel_config *cfg, uint32_t n) {
  return set_range(cfg, cfg ? &cfg->max_streams : NULL, n, 1, 0x80000000u);
}

int tunnel_config_set_stream_window(tunnel_config *cfg, uint32_t bytes) {
  return set_range(cfg, cfg ? &cfg->stream_window : NULL, bytes, 256u * 1024u,
                   1024u * 1024u * 1024u);
}

int tunnel_config_set_max_message_size(tunnel_config *cfg, uint32_t bytes) {
  return set_range(cfg, cfg ? &cfg->max_message_size : NULL, bytes, 64,
                   1024u * 1024u);
}

int tunnel_config_set_max_control_backlog(tunnel_config *cfg, uint32_t bytes) {
  return set_range(cfg, cfg ? &cfg->max_control_backlog : NULL, bytes, 4096,
                   1024u * 1024u * 1024u);
}
