#include "config.h"

#include <stdlib.h>
#include <string.h>

void tunnel__config_defaults(struct tunnel_config *cfg) {
  cfg->mem = *tunnel__mem_default();
  cfg->log.fn = NULL;
  cfg->log.max_level = TUNNEL_LOG_ERROR;
  cfg->log.user_data = NULL;
  cfg->max_streams = TUNNEL__DEFAULT_MAX_STREAMS;
  cfg->stream_window = TUNNEL__DEFAULT_STREAM_WINDOW;
  cfg->max_message_size = TUNNEL__DEFAULT_MAX_MESSAGE;
  cfg->max_control_backlog = TUNNEL__DEFAULT_CONTROL_BACKLOG;
  cfg->token = NULL;
  cfg->pool_count = 1;
  cfg->tcp_mux = 1;
  cfg->heartbeat_interval_s = 30;
  cfg->heartbeat_timeout_s = 90;
  cfg->keepalive_interval_ms = 10000;
  cfg->keepalive_timeout_ms = 30000;
  cfg->reconnect = 1;
  cfg->reconnect_initial_ms = 500;
  cfg->reconnect_max_ms = 30000;
  cfg->reconnect_max_attempts = 0;
  cfg->proxy_bind_addr = NULL;
  cfg->port_lo = 1024;
  cfg->port_hi = 65535;
  cfg->max_clients = 1024;
  cfg->work_conn_timeout_ms = 10000;
  cfg->max_proxies = 128;
  cfg->max_work_conns = 256;
  cfg->login_timeout_ms = 15000;
  cfg->unauth_streams = 4;
  cfg->unauth_per_addr = 128;
  cfg->unauth_bytes = 16u * 1024u * 1024u;
  cfg->session_buffer = 64u * 1024u * 1024u;
  cfg->total_buffer = 512u * 1024u * 1024u;
  cfg->auth_max_skew_s = 900;
  cfg->require_signed_work = 0;
  cfg->subdomain_host = NULL;
  cfg->http_max_head = 16384;
  cfg->http_head_timeout_ms = 10000;
  cfg->http_response_timeout_ms = 60000;
  cfg->http_max_visitors = 10000;
  memset(&cfg->tls, 0, sizeof cfg->tls);
  cfg->tls.marker = 1;
  cfg->login_failures = 5;
  cfg->login_window_ms = 60000;
}

int tunnel__config_copy(struct tunnel_config *dst,
                        const struct tunnel_config *src) {
  *dst = *src;
  dst->token = NULL;
  dst->proxy_bind_addr = NULL;
  dst->subdomain_host = NULL;
  if (tunnel__tls_settings_copy(&dst->tls, &src->tls, &src->mem) != 0) {
    dst->token = NULL;
    tunnel__config_release(dst);
    return TUNNEL_ENOMEM;
  }
  if ((src->token && !(dst->token = tunnel__strdup(&src->mem, src->token))) ||
      (src->proxy_bind_addr &&
       !(dst->proxy_bind_addr =
             tunnel__strdup(&src->mem, src->proxy_bind_addr))) ||
      (src->subdomain_host &&
       !(dst->subdomain_host =
             tunnel__strdup(&src->mem, src->subdomain_host)))) {
    tunnel__config_release(dst);
    return TUNNEL_ENOMEM;
  }
  return 0;
}

void tunnel__config_release(struct tunnel_config *cfg) {
  tunnel__wipe_string(cfg->token);
  tunnel__free(&cfg->mem, cfg->token);
  tunnel__tls_settings_release(&cfg->tls, &cfg->mem);
  tunnel__free(&cfg->mem, cfg->proxy_bind_addr);
  tunnel__free(&cfg->mem, cfg->subdomain_host);
  cfg->token = cfg->proxy_bind_addr = cfg->subdomain_host = NULL;
}

const char *tunnel__config_token(const struct tunnel_config *cfg) {
  return cfg->token ? cfg->token : "";
}

/* Config strings are small and live with the config: plain libc. */
static int set_string(char **field, const char *v) {
  char *copy = NULL;
  if (v && *v) {
    size_t n = strlen(v);
    copy = malloc(n + 1);
    if (!copy)
      return TUNNEL_ENOMEM;
    memcpy(copy, v, n + 1);
  }
  free(*field);
  *field = copy;
  return 0;
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

void tunnel_config_free(tunnel_config *cfg) {
  if (!cfg)
    return;
  tunnel__wipe_string(cfg->token);
  free(cfg->token);
  tunnel__tls_settings_release(&cfg->tls, tunnel__mem_default());
  free(cfg->proxy_bind_addr);
  free(cfg->subdomain_host);
  free(cfg);
}

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

int tunnel_config_set_token(tunnel_config *cfg, const char *token) {
  if (!cfg)
    return TUNNEL_EINVAL;
  tunnel__wipe_string(cfg->token);
  return set_string(&cfg->token, token);
}

int tunnel_config_set_pool_count(tunnel_config *cfg, uint32_t n) {
  return set_range(cfg, cfg ? &cfg->pool_count : NULL, n, 0, 100);
}

int tunnel_config_set_tcp_mux(tunnel_config *cfg, int enabled) {
  if (!cfg)
    return TUNNEL_EINVAL;
  cfg->tcp_mux = enabled ? 1 : 0;
  return 0;
}

int tunnel_config_set_heartbeat(tunnel_config *cfg, uint32_t interval_s,
                                uint32_t timeout_s) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (interval_s > 86400 || timeout_s > 86400 ||
      (interval_s && timeout_s && timeout_s <= interval_s))
    return TUNNEL_ERANGE;
  cfg->heartbeat_interval_s = interval_s;
  cfg->heartbeat_timeout_s = timeout_s;
  return 0;
}

int tunnel_config_set_keepalive(tunnel_config *cfg, uint32_t interval_ms,
                                uint32_t timeout_ms) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (interval_ms > 86400000u || timeout_ms > 86400000u ||
      (interval_ms && timeout_ms && timeout_ms <= interval_ms))
    return TUNNEL_ERANGE;
  cfg->keepalive_interval_ms = interval_ms;
  cfg->keepalive_timeout_ms = timeout_ms;
  return 0;
}

int tunnel_config_set_reconnect(tunnel_config *cfg, int enabled,
                                uint32_t initial_ms, uint32_t max_ms,
                                uint32_t max_attempts) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (enabled && (initial_ms == 0 || max_ms < initial_ms ||
                  max_ms > 86400000u))
    return TUNNEL_ERANGE;
  cfg->reconnect = enabled != 0;
  if (enabled) {
    cfg->reconnect_initial_ms = initial_ms;
    cfg->reconnect_max_ms = max_ms;
    cfg->reconnect_max_attempts = max_attempts;
  }
  return 0;
}

int tunnel_config_set_proxy_bind_addr(tunnel_config *cfg, const char *host) {
  return cfg ? set_string(&cfg->proxy_bind_addr, host) : TUNNEL_EINVAL;
}

int tunnel_config_set_port_range(tunnel_config *cfg, uint16_t lo,
                                 uint16_t hi) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (lo == 0 || lo > hi)
    return TUNNEL_ERANGE;
  cfg->port_lo = lo;
  cfg->port_hi = hi;
  return 0;
}

int tunnel_config_set_max_clients(tunnel_config *cfg, uint32_t n) {
  return set_range(cfg, cfg ? &cfg->max_clients : NULL, n, 1, 1u << 20);
}

int tunnel_config_set_work_conn_timeout(tunnel_config *cfg, uint32_t ms) {
  return set_range(cfg, cfg ? &cfg->work_conn_timeout_ms : NULL, ms, 10,
                   3600000);
}

int tunnel_config_set_max_proxies(tunnel_config *cfg, uint32_t n) {
  return set_range(cfg, cfg ? &cfg->max_proxies : NULL, n, 1, 65535);
}

int tunnel_config_set_max_work_conns(tunnel_config *cfg, uint32_t n) {
  return set_range(cfg, cfg ? &cfg->max_work_conns : NULL, n, 1, 65535);
}

int tunnel_config_set_login_timeout(tunnel_config *cfg, uint32_t ms) {
  return set_range(cfg, cfg ? &cfg->login_timeout_ms : NULL, ms, 100, 600000);
}

int tunnel_config_set_unauth_limits(tunnel_config *cfg, uint32_t streams,
                                    uint32_t per_addr, uint32_t bytes) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (streams < 1 || streams > 1024 || per_addr < 1 || per_addr > (1u << 20) ||
      bytes < 64u * 1024u || bytes == UINT32_MAX)
    return TUNNEL_ERANGE;
  cfg->unauth_streams = streams;
  cfg->unauth_per_addr = per_addr;
  cfg->unauth_bytes = bytes;
  return 0;
}

int tunnel_config_set_buffer_limits(tunnel_config *cfg, uint32_t per_session,
                                    uint32_t total) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (per_session < 1024u * 1024u || total < 1024u * 1024u ||
      per_session == UINT32_MAX || total == UINT32_MAX)
    return TUNNEL_ERANGE;
  cfg->session_buffer = per_session;
  cfg->total_buffer = total;
  return 0;
}

int tunnel_config_set_auth_max_skew(tunnel_config *cfg, uint32_t seconds) {
  return set_range(cfg, cfg ? &cfg->auth_max_skew_s : NULL, seconds, 0,
                   10u * 365u * 86400u);
}

int tunnel_config_set_login_limits(tunnel_config *cfg, uint32_t failures,
                                   uint32_t window_ms) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (failures > 1000000u || window_ms < 100u || window_ms > 86400000u)
    return TUNNEL_ERANGE;
  cfg->login_failures = failures;
  cfg->login_window_ms = window_ms;
  return 0;
}

int tunnel_config_set_require_signed_work_conns(tunnel_config *cfg,
                                                int required) {
  if (!cfg)
    return TUNNEL_EINVAL;
  cfg->require_signed_work = required ? 1 : 0;
  return 0;
}

int tunnel_config_set_subdomain_host(tunnel_config *cfg, const char *domain) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (domain) {
    size_t n = strlen(domain);
    if (n > 200)
      return TUNNEL_ERANGE;
    for (size_t i = 0; i < n; i++) {
      char ch = domain[i];
      if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
            (ch >= '0' && ch <= '9') || ch == '-' || ch == '.'))
        return TUNNEL_EINVAL;
    }
  }
  return set_string(&cfg->subdomain_host, domain);
}

int tunnel_config_set_http_limits(tunnel_config *cfg, uint32_t max_head,
                                  uint32_t head_timeout_ms,
                                  uint32_t response_timeout_ms,
                                  uint32_t max_visitors) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (max_head < 1024 || max_head > (1u << 20) || head_timeout_ms < 100 ||
      head_timeout_ms > 600000 || response_timeout_ms < 100 ||
      response_timeout_ms > 3600000 || max_visitors < 1 ||
      max_visitors > (1u << 20))
    return TUNNEL_ERANGE;
  cfg->http_max_head = max_head;
  cfg->http_head_timeout_ms = head_timeout_ms;
  cfg->http_response_timeout_ms = response_timeout_ms;
  cfg->http_max_visitors = max_visitors;
  return 0;
}
