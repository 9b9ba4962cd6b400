/* The neutral configuration description and the settings both file formats
 * share, by their frp INI names (the JSON parser maps its keys to them). */
#include "cli_config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tunnel/uv.h>

#include "cli_common.h"

/* Configuration files are small; a bigger one is a mistake. */
#define CONF_MAX_BYTES (1024 * 1024)

static void vreport(cli_conf_ctx *ctx, const char *kind, const char *where,
                    const char *fmt, va_list ap) {
  fprintf(stderr, "%s: %s%s: %s%s", ctx->prog, kind, ctx->path,
          where ? where : "", where ? ": " : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void cli_conf_error(cli_conf_ctx *ctx, const char *where, const char *fmt,
                    ...) {
  /* One error per file: the first is the one to fix. */
  if (ctx->errors++)
    return;
  va_list ap;
  va_start(ap, fmt);
  vreport(ctx, "", where, fmt, ap);
  va_end(ap);
}

void cli_conf_warn(cli_conf_ctx *ctx, const char *where, const char *fmt,
                   ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(ctx, "warning: ", where, fmt, ap);
  va_end(ap);
}

void cli_client_conf_init(cli_client_conf *c) {
  memset(c, 0, sizeof *c);
  c->server_port = c->tcp_mux = c->pool_count = -1;
  c->tls = c->tls_marker = -1;
  c->heartbeat_interval = c->heartbeat_timeout = c->verbose = -1;
}

void cli_server_conf_init(cli_server_conf *c) {
  memset(c, 0, sizeof *c);
  c->bind_port = c->vhost_http_port = c->vhost_https_port = -1;
  c->ports_lo = c->ports_hi = c->max_proxies = -1;
  c->tls_only = c->heartbeat_timeout = c->require_signed = c->verbose = -1;
}

static void list_free(char **l, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(l[i]);
  free(l);
}

int cli_conf_list_add(char ***list, size_t *n, const char *s) {
  char **nl = realloc(*list, (*n + 1) * sizeof *nl);
  if (!nl)
    return -1;
  *list = nl;
  if (!(nl[*n] = strdup(s)))
    return -1;
  (*n)++;
  return 0;
}

cli_proxy_conf *cli_client_conf_add_proxy(cli_client_conf *c) {
  cli_proxy_conf *np = realloc(c->proxies, (c->nproxies + 1) * sizeof *np);
  if (!np)
    return NULL;
  c->proxies = np;
  cli_proxy_conf *p = &np[c->nproxies++];
  memset(p, 0, sizeof *p);
  p->local_port = p->remote_port = p->bind_port = -1;
  return p;
}

void cli_client_conf_free(cli_client_conf *c) {
  for (size_t i = 0; i < c->nproxies; i++) {
    cli_proxy_conf *p = &c->proxies[i];
    free(p->name);
    free(p->local_ip);
    free(p->subdomain);
    list_free(p->domains, p->ndomains);
    list_free(p->locations, p->nlocations);
    free(p->host_rewrite);
    free(p->http_user);
    cli_wipe_string(p->http_password);
    free(p->http_password);
    list_free(p->header_names, p->nheaders);
    list_free(p->header_values, p->nheaders);
    cli_secret_free(p->sk);
    free(p->server_name);
    free(p->bind_addr);
  }
  free(c->proxies);
  free(c->server_addr);
  cli_secret_free(c->token);
  free(c->tls_cert);
  free(c->tls_key);
  free(c->tls_ca);
  free(c->tls_server_name);
  cli_client_conf_init(c);
}

void cli_server_conf_free(cli_server_conf *c) {
  free(c->bind_addr);
  free(c->proxy_bind_addr);
  free(c->subdomain_host);
  cli_secret_free(c->token);
  free(c->tls_cert);
  free(c->tls_key);
  free(c->tls_ca);
  cli_server_conf_init(c);
}

/* ------------------------------------------------------------- values */

static int parse_bool(const char *v, int32_t *out) {
  /* The spellings frp's Go parser accepts. */
  static const char *const yes[] = {"true", "1", "t", "yes", "on"};
  static const char *const no[] = {"false", "0", "f", "no", "off"};
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    if (!strcasecmp(v, yes[i])) {
      *out = 1;
      return 0;
    }
    if (!strcasecmp(v, no[i])) {
      *out = 0;
      return 0;
    }
  }
  return -1;
}

static int parse_int(const char *v, long lo, long hi, int32_t *out) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || errno || n < lo || n > hi)
    return -1;
  *out = (int32_t)n;
  return 0;
}

static int set_str(char **dst, const char *v) {
  char *s = strdup(v);
  if (!s)
    return -1;
  if (*dst) {
    cli_wipe_string(*dst);
    free(*dst);
  }
  *dst = s;
  return 0;
}

/* Splits a comma-separated list (frp's custom_domains, locations). */
static int set_list(char ***list, size_t *n, const char *v) {
  list_free(*list, *n);
  *list = NULL;
  *n = 0;
  while (*v) {
    size_t len = strcspn(v, ",");
    const char *s = v, *e = v + len;
    while (s < e && (*s == ' ' || *s == '\t'))
      s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if (e > s) {
      char buf[1024];
      if ((size_t)(e - s) >= sizeof buf)
        return -2;
      memcpy(buf, s, (size_t)(e - s));
      buf[e - s] = '\0';
      if (cli_conf_list_add(list, n, buf) != 0)
        return -1;
    }
    v += len + (v[len] == ',');
  }
  return 0;
}

static int parse_log_level(const char *v, int32_t *out) {
  if (!strcasecmp(v, "error") || !strcasecmp(v, "warn"))
    *out = 0;
  else if (!strcasecmp(v, "info"))
    *out = 1;
  else if (!strcasecmp(v, "debug") || !strcasecmp(v, "trace"))
    *out = 2;
  else
    return -1;
  return 0;
}

/* "LO-HI" or "PORT", comma-separated (frp allow_ports). libtunnel keeps one
 * range: the pieces must join into one without a gap. */
static int parse_ports(const char *v, int32_t *lo, int32_t *hi) {
  int32_t rl[64], rh[64];
  size_t n = 0;
  while (*v) {
    size_t len = strcspn(v, ",");
    char buf[32];
    if (len >= sizeof buf || n == 64)
      return -1;
    memcpy(buf, v, len);
    buf[len] = '\0';
    char *dash = strchr(buf, '-');
    char *a = buf, *b = dash ? dash + 1 : buf;
    if (dash)
      *dash = '\0';
    while (*a == ' ')
      a++;
    while (*b == ' ')
      b++;
    for (char *t = a + strlen(a); t > a && t[-1] == ' ';)
      *--t = '\0';
    if (dash)
      for (char *t = b + strlen(b); t > b && t[-1] == ' ';)
        *--t = '\0';
    if (parse_int(a, 1, 65535, &rl[n]) || parse_int(b, 1, 65535, &rh[n]) ||
        rl[n] > rh[n])
      return -1;
    n++;
    v += len + (v[len] == ',');
  }
  if (n == 0)
    return -1;
  /* Merge: grow [l, h] with any piece that touches it until none does. */
  int32_t l = rl[0], h = rh[0];
  size_t used = 1;
  for (int grew = 1; grew;) {
    grew = 0;
    for (size_t i = 1; i < n; i++)
      if (rl[i] != -1 && rl[i] <= h + 1 && rh[i] >= l - 1) {
        l = rl[i] < l ? rl[i] : l;
        h = rh[i] > h ? rh[i] : h;
        rl[i] = -1;
        used++;
        grew = 1;
      }
  }
  if (used != n)
    return -2;
  *lo = l;
  *hi = h;
  return 0;
}

/* ------------------------------------------------------------- settings */

/* Settings frp has and these programs do without: a warning, not an error,
 * so that an frp file starts unchanged. */
static const char *const ignored_client[] = {
    "user", "log_file", "log_way", "log_max_days", "disable_log_color",
    "admin_addr", "admin_port", "admin_user", "admin_pwd", "assets_dir",
    "dns_server", "start", "authenticate_heartbeats", "connect_server_local_ip",
    "http_proxy", "udp_packet_size", "metas", "includes", "pprofEnable",
    NULL};
static const char *const ignored_proxy[] = {
    "bandwidth_limit", "bandwidth_limit_mode", "group", "group_key",
    "health_check_type", "health_check_timeout_s", "health_check_max_failed",
    "health_check_interval_s", "health_check_url", "proxy_protocol_version",
    "route_by_http_user", "server_user", "allow_users", NULL};
static const char *const ignored_server[] = {
    "log_file", "log_way", "log_max_days", "disable_log_color",
    "dashboard_addr", "dashboard_port", "dashboard_user", "dashboard_pwd",
    "dashboard_tls_mode", "dashboard_tls_cert_file", "dashboard_tls_key_file",
    "enable_prometheus", "assets_dir", "max_pool_count", "user_conn_timeout",
    "detailed_errors_to_client", "tcp_keepalive", "udp_packet_size",
    "authenticate_heartbeats", "tcp_mux", "tcp_mux_keepalive_interval",
    "custom_404_page", "tls_enable", NULL};

static int in_list(const char *const *l, const char *k) {
  for (; *l; l++)
    if (!strcmp(*l, k))
      return 1;
  return 0;
}

#define BAD(why)                                                             \
  do {                                                                       \
    cli_conf_error(ctx, where, "bad value for '%s': %s", shown, why);       \
    return -1;                                                               \
  } while (0)
#define OOM()                                                                \
  do {                                                                       \
    cli_conf_error(ctx, NULL, "out of memory");                              \
    return -1;                                                               \
  } while (0)

static int set_common(cli_conf_ctx *ctx, const char *k, const char *v,
                      const char *shown, const char *where, int32_t *verbose,
                      char **token) {
  int32_t b;
  if (!strcmp(k, "token")) {
    if (set_str(token, v))
      OOM();
  } else if (!strcmp(k, "authentication_method")) {
    if (*v && strcmp(v, "token"))
      BAD("only \"token\" authentication is supported");
  } else if (!strcmp(k, "log_level")) {
    if (parse_log_level(v, verbose))
      BAD("want trace, debug, info, warn or error");
  } else if (!strcmp(k, "authenticate_new_work_conns") && ctx->is_client) {
    if (parse_bool(v, &b))
      BAD("want true or false");
    /* libtunnel's client signs its work connections already. */
  } else {
    return 1;
  }
  return 0;
}

static int set_client(cli_conf_ctx *ctx, const char *k, const char *v,
                      const char *shown, const char *where) {
  cli_client_conf *c = ctx->client;
  int32_t b;
  int rc = set_common(ctx, k, v, shown, where, &c->verbose, &c->token);
  if (rc <= 0)
    return rc;
  if (!strcmp(k, "server_addr")) {
    if (!*v)
      BAD("empty");
    if (set_str(&c->server_addr, v))
      OOM();
  } else if (!strcmp(k, "server_port")) {
    if (parse_int(v, 1, 65535, &c->server_port))
      BAD("want a port, 1-65535");
  } else if (!strcmp(k, "tcp_mux")) {
    if (parse_bool(v, &c->tcp_mux))
      BAD("want true or false");
  } else if (!strcmp(k, "pool_count")) {
    if (parse_int(v, 0, 100, &c->pool_count))
      BAD("want 0-100");
  } else if (!strcmp(k, "protocol")) {
    if (strcmp(v, "tcp"))
      BAD("only \"tcp\" is supported");
  } else if (!strcmp(k, "tls_enable")) {
    if (parse_bool(v, &c->tls))
      BAD("want true or false");
  } else if (!strcmp(k, "disable_custom_tls_first_byte")) {
    if (parse_bool(v, &b))
      BAD("want true or false");
    c->tls_marker = !b;
  } else if (!strcmp(k, "tls_cert_file") || !strcmp(k, "tls_key_file") ||
             !strcmp(k, "tls_trusted_ca_file") ||
             !strcmp(k, "tls_server_name")) {
    char **dst = !strcmp(k, "tls_cert_file")   ? &c->tls_cert
                 : !strcmp(k, "tls_key_file")  ? &c->tls_key
                 : !strcmp(k, "tls_server_name") ? &c->tls_server_name
                                                 : &c->tls_ca;
    if (!*v)
      BAD("empty");
    if (set_str(dst, v))
      OOM();
  } else if (!strcmp(k, "heartbeat_interval") ||
             !strcmp(k, "heartbeat_timeout")) {
    int32_t *dst = k[10] == 'i' ? &c->heartbeat_interval
                                : &c->heartbeat_timeout;
    /* frp: a negative value switches heartbeats off. */
    if (parse_int(v, -1, 86400, dst))
      BAD("want seconds, -1-86400");
    if (*dst < 0)
      *dst = 0;
  } else if (!strcmp(k, "login_fail_exit")) {
    if (parse_bool(v, &b))
      BAD("want true or false");
    if (!b)
      cli_conf_warn(ctx, where, "'%s' = false is not supported: a first "
                    "login that fails ends the program", shown);
  } else if (in_list(ignored_client, k)) {
    cli_conf_warn(ctx, where, "'%s' is not supported, ignored", shown);
  } else {
    return 1;
  }
  return 0;
}

static int set_proxy(cli_conf_ctx *ctx, cli_proxy_conf *p, const char *k,
                     const char *v, const char *shown, const char *where) {
  int32_t b;
  if (!strcmp(k, "name")) {
    if (!*v)
      BAD("empty");
    if (set_str(&p->name, v))
      OOM();
  } else if (!strcmp(k, "type")) {
    if (!strcmp(v, "tcp"))
      p->type = TUNNEL_PROXY_TCP;
    else if (!strcmp(v, "http"))
      p->type = TUNNEL_PROXY_HTTP;
    else if (!strcmp(v, "https"))
      p->type = TUNNEL_PROXY_HTTPS;
    else if (!strcmp(v, "udp"))
      p->type = TUNNEL_PROXY_UDP;
    else if (!strcmp(v, "stcp"))
      p->type = TUNNEL_PROXY_STCP;
    else if (!strcmp(v, "xtcp") || !strcmp(v, "sudp") ||
             !strcmp(v, "tcpmux")) {
      cli_conf_error(ctx, where, "proxy type '%s' is not supported (tcp, "
                     "udp, http, https and stcp are)", v);
      return -1;
    } else {
      BAD("want tcp, udp, http, https or stcp");
    }
  } else if (!strcmp(k, "role")) {
    if (!strcmp(v, "visitor"))
      p->visitor = 1;
    else if (!strcmp(v, "server") || !*v)
      p->visitor = 0;
    else
      BAD("want server or visitor");
  } else if (!strcmp(k, "sk")) {
    if (!*v)
      BAD("empty");
    if (strlen(v) > 255)
      BAD("longer than 255 bytes");
    if (set_str(&p->sk, v))
      OOM();
  } else if (!strcmp(k, "server_name") || !strcmp(k, "bind_addr")) {
    if (!*v)
      BAD("empty");
    if (set_str(k[0] == 's' ? &p->server_name : &p->bind_addr, v))
      OOM();
  } else if (!strcmp(k, "bind_port")) {
    /* 0: a port the system picks (printed once listening). */
    if (parse_int(v, 0, 65535, &p->bind_port))
      BAD("want a port, 0-65535");
  } else if (!strcmp(k, "local_ip")) {
    if (!*v)
      BAD("empty");
    if (set_str(&p->local_ip, v))
      OOM();
  } else if (!strcmp(k, "local_port")) {
    if (parse_int(v, 1, 65535, &p->local_port))
      BAD("want a port, 1-65535");
  } else if (!strcmp(k, "remote_port")) {
    if (parse_int(v, 0, 65535, &p->remote_port))
      BAD("want a port, 0-65535");
  } else if (!strcmp(k, "subdomain")) {
    if (!*v)
      BAD("empty");
    if (set_str(&p->subdomain, v))
      OOM();
  } else if (!strcmp(k, "custom_domains") || !strcmp(k, "locations")) {
    int lrc = k[0] == 'c' ? set_list(&p->domains, &p->ndomains, v)
                          : set_list(&p->locations, &p->nlocations, v);
    if (lrc == -2)
      BAD("an entry is too long");
    if (lrc)
      OOM();
  } else if (!strcmp(k, "host_header_rewrite")) {
    if (!*v)
      BAD("empty");
    if (set_str(&p->host_rewrite, v))
      OOM();
  } else if (!strcmp(k, "http_user")) {
    if (!*v || strchr(v, ':'))
      BAD("empty or holds ':'");
    if (set_str(&p->http_user, v))
      OOM();
  } else if (!strcmp(k, "http_pwd")) {
    if (set_str(&p->http_password, v))
      OOM();
  } else if (!strncmp(k, "header_", 7)) {
    if (!k[7] || strpbrk(k + 7, " \t:\r\n"))
      BAD("not a header name");
    size_t nv = p->nheaders;
    if (cli_conf_list_add(&p->header_values, &nv, v))
      OOM();
    if (cli_conf_list_add(&p->header_names, &p->nheaders, k + 7)) {
      cli_wipe_string(p->header_values[nv - 1]);
      free(p->header_values[nv - 1]);
      OOM();
    }
  } else if (!strcmp(k, "use_encryption") || !strcmp(k, "use_compression")) {
    if (parse_bool(v, &b))
      BAD("want true or false");
    if (b)
      cli_conf_warn(ctx, where, "'%s' is not supported, ignored (use TLS to "
                    "the server instead)", shown);
  } else if (!strcmp(k, "plugin")) {
    cli_conf_error(ctx, where, "'%s': client plugins are not supported",
                   shown);
    return -1;
  } else if (in_list(ignored_proxy, k)) {
    cli_conf_warn(ctx, where, "'%s' is not supported, ignored", shown);
  } else {
    return 1;
  }
  return 0;
}

static int set_server(cli_conf_ctx *ctx, const char *k, const char *v,
                      const char *shown, const char *where) {
  cli_server_conf *c = ctx->server;
  int32_t n;
  int rc = set_common(ctx, k, v, shown, where, &c->verbose, &c->token);
  if (rc <= 0)
    return rc;
  if (!strcmp(k, "bind_addr") || !strcmp(k, "proxy_bind_addr") ||
      !strcmp(k, "subdomain_host")) {
    char **dst = k[0] == 'b' ? &c->bind_addr
                 : k[0] == 'p' ? &c->proxy_bind_addr
                               : &c->subdomain_host;
    if (!*v)
      BAD("empty");
    if (set_str(dst, v))
      OOM();
  } else if (!strcmp(k, "bind_port") || !strcmp(k, "vhost_http_port") ||
             !strcmp(k, "vhost_https_port")) {
    int32_t *dst = k[0] == 'b'        ? &c->bind_port
                   : k[10] == '_' ? &c->vhost_http_port
                                       : &c->vhost_https_port;
    if (parse_int(v, 0, 65535, dst))
      BAD("want a port, 0-65535");
  } else if (!strcmp(k, "allow_ports")) {
    int prc = parse_ports(v, &c->ports_lo, &c->ports_hi);
    if (prc == -2)
      BAD("the ranges must join into one (LO-HI)");
    if (prc)
      BAD("want LO-HI or PORT, comma-separated");
  } else if (!strcmp(k, "max_ports_per_client")) {
    if (parse_int(v, 0, 65535, &n))
      BAD("want 0-65535");
    c->max_proxies = n ? n : 65535; /* frp: 0 is no limit */
  } else if (!strcmp(k, "tls_only")) {
    if (parse_bool(v, &c->tls_only))
      BAD("want true or false");
  } else if (!strcmp(k, "tls_cert_file") || !strcmp(k, "tls_key_file") ||
             !strcmp(k, "tls_trusted_ca_file")) {
    char **dst = !strcmp(k, "tls_cert_file")  ? &c->tls_cert
                 : !strcmp(k, "tls_key_file") ? &c->tls_key
                                              : &c->tls_ca;
    if (!*v)
      BAD("empty");
    if (set_str(dst, v))
      OOM();
  } else if (!strcmp(k, "heartbeat_timeout")) {
    if (parse_int(v, -1, 315360000, &c->heartbeat_timeout))
      BAD("want seconds");
    if (c->heartbeat_timeout < 0)
      c->heartbeat_timeout = 0;
  } else if (!strcmp(k, "authenticate_new_work_conns")) {
    if (parse_bool(v, &c->require_signed))
      BAD("want true or false");
  } else if (in_list(ignored_server, k)) {
    cli_conf_warn(ctx, where, "'%s' is not supported, ignored", shown);
  } else {
    return 1;
  }
  return 0;
}

int cli_conf_set(cli_conf_ctx *ctx, cli_proxy_conf *proxy, const char *key,
                 const char *value, const char *shown_key, const char *where) {
  const char *shown = shown_key ? shown_key : key;
  int rc = proxy              ? set_proxy(ctx, proxy, key, value, shown, where)
           : ctx->is_client ? set_client(ctx, key, value, shown, where)
                            : set_server(ctx, key, value, shown, where);
  if (rc == 1)
    cli_conf_warn(ctx, where, "unknown key '%s', ignored", shown);
  return rc;
}

/* --------------------------------------------------------------- loading */

static const char *kind_name(int type) {
  return type == TUNNEL_PROXY_TCP     ? "tcp"
         : type == TUNNEL_PROXY_UDP   ? "udp"
         : type == TUNNEL_PROXY_HTTP  ? "http"
         : type == TUNNEL_PROXY_HTTPS ? "https"
                                      : "stcp";
}

/* A visitor's settings: a secret service's name, its secret and a local
 * port, nothing of a proxy's. NULL, or the first key that is wrong
 * (*missing: absent rather than out of place). */
static const char *visitor_bad(const cli_proxy_conf *p, int json,
                               int *missing) {
  *missing = 1;
  if (!p->server_name)
    return json ? "serverName" : "server_name";
  if (!p->sk)
    return json ? "secretKey" : "sk";
  if (p->bind_port < 0)
    return json ? "bindPort" : "bind_port";
  *missing = 0;
  if (p->local_ip || p->local_port >= 0)
    return json ? "localIP/localPort" : "local_ip/local_port";
  if (p->remote_port >= 0)
    return json ? "remotePort" : "remote_port";
  if (p->subdomain || p->ndomains)
    return p->subdomain ? "subdomain" : json ? "customDomains"
                                             : "custom_domains";
  if (p->host_rewrite || p->http_user || p->http_password || p->nlocations ||
      p->nheaders)
    return "HTTP settings";
  return NULL;
}

/* What the settings of each proxy must agree on, once all are read. */
static int check_proxies(cli_conf_ctx *ctx, int json) {
  cli_client_conf *c = ctx->client;
  char where[300];
  size_t nvisitors = 0;
  for (size_t i = 0; i < c->nproxies; i++) {
    cli_proxy_conf *p = &c->proxies[i];
    if (json)
      snprintf(where, sizeof where, "%s[%zu]",
               p->visitor ? "visitors" : "proxies",
               p->visitor ? nvisitors++ : i - nvisitors);
    else
      snprintf(where, sizeof where, "[%s]", p->name ? p->name : "");
    if (!p->name) {
      cli_conf_error(ctx, where, "'name' is missing");
      return -1;
    }
    for (size_t j = 0; j < i; j++)
      if (!strcmp(c->proxies[j].name, p->name)) {
        cli_conf_error(ctx, where, "proxy name '%s' is used twice", p->name);
        return -1;
      }
    if (!p->type) {
      cli_conf_error(ctx, where, "'type' is missing");
      return -1;
    }
    if (p->visitor) {
      int missing;
      const char *vb = visitor_bad(p, json, &missing);
      if (p->type != TUNNEL_PROXY_STCP) {
        cli_conf_error(ctx, where, "%s visitors are not supported (stcp "
                       "ones are)", kind_name(p->type));
        return -1;
      }
      if (vb) {
        cli_conf_error(ctx, where, missing ? "'%s' is missing"
                                           : "'%s' does not apply to a "
                                             "visitor", vb);
        return -1;
      }
      continue;
    }
    if (p->server_name || p->bind_addr || p->bind_port >= 0) {
      cli_conf_error(ctx, where, "'%s' applies to visitors only (%s)",
                     p->server_name ? (json ? "serverName" : "server_name")
                     : p->bind_addr ? (json ? "bindAddr" : "bind_addr")
                                    : (json ? "bindPort" : "bind_port"),
                     json ? "\"visitors\"" : "role = visitor");
      return -1;
    }
    if ((p->type == TUNNEL_PROXY_STCP) != !!p->sk) {
      if (p->sk)
        cli_conf_error(ctx, where, "'%s' does not apply to a %s proxy",
                       json ? "secretKey" : "sk", kind_name(p->type));
      else
        cli_conf_error(ctx, where, "'%s' is missing",
                       json ? "secretKey" : "sk");
      return -1;
    }
    if (p->local_port < 0) {
      cli_conf_error(ctx, where, "'%s' is missing",
                     json ? "localPort" : "local_port");
      return -1;
    }
    const char *bad = NULL;
    int port_kind = p->type == TUNNEL_PROXY_TCP || p->type == TUNNEL_PROXY_UDP;
    if ((port_kind || p->type == TUNNEL_PROXY_STCP) &&
        (p->subdomain || p->ndomains))
      bad = p->subdomain ? "subdomain" : json ? "customDomains"
                                              : "custom_domains";
    else if (!port_kind && p->remote_port >= 0)
      bad = json ? "remotePort" : "remote_port";
    else if (p->type != TUNNEL_PROXY_HTTP &&
             (p->host_rewrite || p->http_user || p->http_password ||
              p->nlocations || p->nheaders))
      bad = p->host_rewrite ? (json ? "hostHeaderRewrite"
                                    : "host_header_rewrite")
            : p->nlocations ? "locations"
            : p->nheaders   ? (json ? "requestHeaders" : "header_*")
                            : (json ? "httpUser/httpPassword"
                                    : "http_user/http_pwd");
    if (bad) {
      cli_conf_error(ctx, where, "'%s' does not apply to a %s proxy", bad,
                     kind_name(p->type));
      return -1;
    }
    if (!p->http_user != !p->http_password) {
      cli_conf_error(ctx, where, "%s go together",
                     json ? "'httpUser' and 'httpPassword'"
                          : "'http_user' and 'http_pwd'");
      return -1;
    }
  }
  return 0;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && !strcasecmp(s + n - m, suffix);
}

/* Reads the whole file; NULL after printing why. A secret may be in it:
 * the buffer is wiped by the caller. */
static char *read_file(cli_conf_ctx *ctx, size_t *len, int *readable) {
  int fd = open(ctx->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "%s: cannot read config file '%s': %s\n", ctx->prog,
            ctx->path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      st.st_size > CONF_MAX_BYTES) {
    fprintf(stderr, "%s: config file '%s': not a regular file of at most "
            "%d bytes\n", ctx->prog, ctx->path, CONF_MAX_BYTES);
    close(fd);
    return NULL;
  }
  *readable = (st.st_mode & (S_IRGRP | S_IROTH)) != 0;
  char *buf = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (buf && got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      fprintf(stderr, "%s: cannot read config file '%s': %s\n", ctx->prog,
              ctx->path, n ? strerror(errno) : "file shrank");
      cli_wipe(buf, got);
      free(buf);
      close(fd);
      return NULL;
    }
    got += (size_t)n;
  }
  close(fd);
  if (!buf) {
    fprintf(stderr, "%s: out of memory\n", ctx->prog);
    return NULL;
  }
  buf[got] = '\0';
  *len = got;
  return buf;
}

static int load(cli_conf_ctx *ctx) {
  const char *p = ctx->path;
  if (ends_with(p, ".toml")) {
    fprintf(stderr, "%s: config file '%s': TOML is not supported; write it "
            "as INI (.ini) or JSON (.json)\n", ctx->prog, p);
    return -1;
  }
  size_t len;
  int readable;
  char *text = read_file(ctx, &len, &readable);
  if (!text)
    return -1;
  int format;
  if (ends_with(p, ".json"))
    format = CLI_CONF_JSON;
  else if (ends_with(p, ".ini"))
    format = CLI_CONF_INI;
  else {
    /* By content: JSON opens with '{', INI with a section or a key. */
    const char *s = text;
    s += strspn(s, " \t\r\n");
    format = *s == '{' ? CLI_CONF_JSON : CLI_CONF_INI;
  }
  int rc = memchr(text, '\0', len) ? (cli_conf_error(ctx, NULL,
                                                     "holds a NUL byte"), -1)
           : format == CLI_CONF_JSON ? cli_conf_parse_json(ctx, text, len)
                                     : cli_conf_parse_ini(ctx, text, len);
  cli_wipe(text, len);
  free(text);
  if (rc == 0 && ctx->errors)
    rc = -1;
  if (rc == 0 && ctx->is_client)
    rc = check_proxies(ctx, format == CLI_CONF_JSON);
  const char *token = ctx->is_client ? ctx->client->token : ctx->server->token;
  if (rc == 0 && token && *token && readable)
    fprintf(stderr,
            "%s: warning: config file '%s' holds a token and is readable by "
            "group or others (chmod 600 it)\n",
            ctx->prog, p);
  return rc;
}

int cli_client_conf_load(const char *prog, const char *path,
                         cli_client_conf *out) {
  cli_client_conf_init(out);
  cli_conf_ctx ctx = {prog, path, 1, out, NULL, 0};
  int rc = load(&ctx);
  if (rc)
    cli_client_conf_free(out);
  return rc;
}

int cli_server_conf_load(const char *prog, const char *path,
                         cli_server_conf *out) {
  cli_server_conf_init(out);
  cli_conf_ctx ctx = {prog, path, 0, NULL, out, 0};
  int rc = load(&ctx);
  if (rc)
    cli_server_conf_free(out);
  return rc;
}
