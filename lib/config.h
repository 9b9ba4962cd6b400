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
  char *token; /* NULL: none */
  uint32_t pool_count;
  int tcp_mux;
  uint32_t heartbeat_interval_s;
  uint32_t heartbeat_timeout_s;
  char *proxy_bind_addr;
  uint16_t port_lo, port_hi;
  uint32_t max_clients;
  uint32_t work_conn_timeout_ms;
  uint32_t max_proxies;
  uint32_t max_work_conns;
  uint32_t login_timeout_ms;
  uint32_t unauth_streams;
  uint32_t unauth_per_addr;
  uint32_t unauth_bytes;
  uint32_t session_buffer;
  uint32_t total_buffer;
  uint32_t auth_max_skew_s;
  int require_signed_work;
  char *subdomain_host;
  uint32_t http_max_head;
  uint32_t http_head_timeout_ms;
  uint32_t http_response_timeout_ms;
  uint32_t http_max_visitors;
};

void tunnel__config_defaults(struct tunnel_config *cfg);
/* Deep copy into `dst` (strings allocated with src's allocator). */
int tunnel__config_copy(struct tunnel_config *dst,
                        const struct tunnel_config *src);
/* Frees what a copy owns. */
void tunnel__config_release(struct tunnel_config *cfg);
/* The token, or "" when none. */
const char *tunnel__config_token(const struct tunnel_config *cfg);

#endif
