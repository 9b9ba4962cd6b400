/* Configuration files for the example programs: frp's legacy INI format
 * ("[common]" plus one section per proxy) and its current JSON format,
 * read into one neutral description that the programs apply before their
 * flags (so that flags override the file). Not part of the library. */
#ifndef TUNNEL_EXAMPLES_CLI_CONFIG_H
#define TUNNEL_EXAMPLES_CLI_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* Values not given by the file stay "unset": NULL strings, -1 integers. */
typedef struct cli_proxy_conf {
  char *name;
  int type; /* TUNNEL_PROXY_*, 0 while unknown */
  char *local_ip;
  int32_t local_port, remote_port;
  char *subdomain;
  char **domains;
  size_t ndomains;
  char **locations;
  size_t nlocations;
  char *host_rewrite;
  char *http_user, *http_password;
  char **header_names, **header_values;
  size_t nheaders;
  char *sk; /* stcp: the secret (wiped when freed) */
  /* A visitor of another client's stcp service (frp's role = visitor):
   * a local port joined to `server_name`. */
  int visitor;
  char *server_name;
  char *bind_addr;
  int32_t bind_port;
} cli_proxy_conf;

typedef struct cli_client_conf {
  char *server_addr;
  int32_t server_port;
  char *token; /* wiped when freed */
  int32_t tcp_mux, pool_count;
  int32_t tls, tls_marker;
  char *tls_cert, *tls_key, *tls_ca, *tls_server_name;
  int32_t heartbeat_interval, heartbeat_timeout;
  int32_t verbose; /* from log level: 0 warn, 1 info, 2 debug */
  cli_proxy_conf *proxies;
  size_t nproxies;
} cli_client_conf;

typedef struct cli_server_conf {
  char *bind_addr;
  int32_t bind_port;
  char *proxy_bind_addr;
  int32_t vhost_http_port, vhost_https_port;
  char *subdomain_host;
  int32_t ports_lo, ports_hi;
  int32_t max_proxies;
  char *token; /* wiped when freed */
  int32_t tls_only;
  char *tls_cert, *tls_key, *tls_ca;
  int32_t heartbeat_timeout;
  int32_t require_signed;
  int32_t verbose;
} cli_server_conf;

enum cli_conf_format { CLI_CONF_INI = 1, CLI_CONF_JSON = 2 };

/* Where diagnostics go: "PROG: FILE: line N: ..." (INI) or
 * "PROG: FILE: KEY.PATH: ..." (JSON) on stderr. */
typedef struct cli_conf_ctx {
  const char *prog;
  const char *path;
  int is_client;
  cli_client_conf *client;
  cli_server_conf *server;
  int errors;
} cli_conf_ctx;

/* Reads `path` into `*out` (which it initialises). The format comes from
 * the extension (.ini, .json; .toml is refused by name) or, failing that,
 * the content. Unknown keys and ignored settings are warnings; a bad value,
 * an unsupported proxy type or a malformed file is one error naming the key
 * or line. 0, or -1 after printing the error (*out then holds nothing). */
int cli_client_conf_load(const char *prog, const char *path,
                         cli_client_conf *out);
int cli_server_conf_load(const char *prog, const char *path,
                         cli_server_conf *out);
void cli_client_conf_free(cli_client_conf *c);
void cli_server_conf_free(cli_server_conf *c);

void cli_client_conf_init(cli_client_conf *c);
void cli_server_conf_init(cli_server_conf *c);
/* A new proxy at the end of the list, every field unset; NULL when out of
 * memory. */
cli_proxy_conf *cli_client_conf_add_proxy(cli_client_conf *c);
/* Appends a copy of `s` to a string list; 0 or -1 (out of memory). */
int cli_conf_list_add(char ***list, size_t *n, const char *s);

/* Shared by the two parsers. The key is a setting's INI name (client:
 * "[common]" keys and proxy keys; server: "[common]" keys); `where` is the
 * name to show ("line 12" or "proxies[0].localPort"). `proxy` is NULL for
 * common keys. Returns 0, 1 for an unknown key (warned here), or -1 after
 * printing an error. */
int cli_conf_set(cli_conf_ctx *ctx, cli_proxy_conf *proxy, const char *key,
                 const char *value, const char *shown_key, const char *where);
void cli_conf_error(cli_conf_ctx *ctx, const char *where, const char *fmt,
                    ...) __attribute__((format(printf, 3, 4)));
void cli_conf_warn(cli_conf_ctx *ctx, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The format parsers: fill ctx->client or ctx->server from `text` (`len`
 * bytes, NUL-terminated). 0 or -1 after printing the error. */
int cli_conf_parse_ini(cli_conf_ctx *ctx, const char *text, size_t len);
int cli_conf_parse_json(cli_conf_ctx *ctx, const char *text, size_t len);

#endif
