/* The contents of the opaque tunnel_config. Constructors copy it. */
#ifndef TUNNEL_LIB_CONFIG_H
#define TUNNEL_LIB_CONFIG_H

#include "log.h"
#include "mem.h"

#define TUNNEL__DEFAULT_MAX_STREAMS 1024u
#define TUNNEL__DEFAULT_STREAM_WINDOW (6u * 1024u * 1024u)
#define TUNNEL__DEFAULT_MAX_MESSAGE 10240u
#define TUNNEL__DEFAULT_CONTROL_BACKLOG (1024u * 1024u)

/* A copied byte buffer (PEM text), NUL-terminated for mbedTLS's parsers;
 * `len` counts the NUL. */
typedef struct tunnel__blob {
  uint8_t *data;
  size_t len;
} tunnel__blob;

typedef struct tunnel__tls_settings {
  int enabled;
  int insecure;
  int marker;   /* client: frp's 0x17 byte first */
  int only;     /* server: refuse plain clients */
  int has_pin;
  uint8_t pin[32];
  tunnel__blob ca;
  tunnel__blob cert;
  tunnel__blob key; /* wiped when released */
  char *server_name;
} tunnel__tls_settings;

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
  uint32_t keepalive_interval_ms; /* client: probe after this much silence */
  uint32_t keepalive_timeout_ms;  /* client: the link is dead after this */
  int reconnect;                  /* client: connect again after a loss */
  uint32_t reconnect_initial_ms;  /* first delay, doubled at each failure */
  uint32_t reconnect_max_ms;      /* the delay's ceiling */
  uint32_t reconnect_max_attempts; /* failures in a row; 0: no limit */
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
  tunnel__tls_settings tls;
  uint32_t login_failures; /* per address per window; 0: no limit */
  uint32_t login_window_ms;
};

void tunnel__config_defaults(struct tunnel_config *cfg);
/* Deep copy into `dst` (strings allocated with src's allocator). */
int tunnel__config_copy(struct tunnel_config *dst,
                        const struct tunnel_config *src);
/* Frees what a copy owns. */
void tunnel__config_release(struct tunnel_config *cfg);
/* TLS settings (config_tls.c): deep copy with `mem`, release with the
 * allocator they were copied with. */
int tunnel__tls_settings_copy(tunnel__tls_settings *dst,
                              const tunnel__tls_settings *src,
                              const tunnel__mem *mem);
void tunnel__tls_settings_release(tunnel__tls_settings *s,
                                  const tunnel__mem *mem);
/* 64 hex digits, colons allowed, into 32 bytes. */
int tunnel__tls_parse_pin(const char *s, uint8_t out[32]);
/* The token, or "" when none. */
const char *tunnel__config_token(const struct tunnel_config *cfg);

#endif
