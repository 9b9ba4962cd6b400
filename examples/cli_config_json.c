/* frp's current JSON format (frpc.json / frps.json), read with cJSON. Each
 * JSON key maps to the INI setting of the same meaning, so that both
 * formats share one set of checks; messages name the JSON key path. */
#include "cli_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli_common.h"

enum {
  J_VALUE,   /* a scalar */
  J_SECTION, /* an object whose keys are looked up in turn */
  J_LIST,    /* an array of strings, joined by commas */
  J_PORTS,   /* allowPorts: [{"start": LO, "end": HI}, {"single": P}] */
  J_SCOPES,  /* auth.additionalScopes: ["HeartBeats", "NewWorkConns"] */
  J_HEADERS, /* requestHeaders.set: {"NAME": "VALUE"} */
  J_IGNORED  /* a whole object of settings these programs do without */
};

typedef struct jkey {
  const char *path, *ini;
  int kind;
} jkey;

static const jkey client_keys[] = {
    {"serverAddr", "server_addr", J_VALUE},
    {"serverPort", "server_port", J_VALUE},
    {"user", "user", J_VALUE},
    {"loginFailExit", "login_fail_exit", J_VALUE},
    {"start", "start", J_IGNORED},
    {"auth", NULL, J_SECTION},
    {"auth.method", "authentication_method", J_VALUE},
    {"auth.token", "token", J_VALUE},
    {"auth.additionalScopes", NULL, J_SCOPES},
    {"log", NULL, J_SECTION},
    {"log.level", "log_level", J_VALUE},
    {"log.to", "log_file", J_VALUE},
    {"log.maxDays", "log_max_days", J_VALUE},
    {"log.disablePrintColor", "disable_log_color", J_VALUE},
    {"webServer", "admin_addr", J_IGNORED},
    {"transport", NULL, J_SECTION},
    {"transport.protocol", "protocol", J_VALUE},
    {"transport.tcpMux", "tcp_mux", J_VALUE},
    {"transport.poolCount", "pool_count", J_VALUE},
    {"transport.heartbeatInterval", "heartbeat_interval", J_VALUE},
    {"transport.heartbeatTimeout", "heartbeat_timeout", J_VALUE},
    {"transport.tls", NULL, J_SECTION},
    {"transport.tls.enable", "tls_enable", J_VALUE},
    {"transport.tls.certFile", "tls_cert_file", J_VALUE},
    {"transport.tls.keyFile", "tls_key_file", J_VALUE},
    {"transport.tls.trustedCaFile", "tls_trusted_ca_file", J_VALUE},
    {"transport.tls.serverName", "tls_server_name", J_VALUE},
    {"transport.tls.disableCustomTLSFirstByte",
     "disable_custom_tls_first_byte", J_VALUE},
    {NULL, NULL, 0}};

static const jkey proxy_keys[] = {
    {"name", "name", J_VALUE},
    {"type", "type", J_VALUE},
    {"localIP", "local_ip", J_VALUE},
    {"localPort", "local_port", J_VALUE},
    {"remotePort", "remote_port", J_VALUE},
    {"subdomain", "subdomain", J_VALUE},
    {"customDomains", "custom_domains", J_LIST},
    {"locations", "locations", J_LIST},
    {"hostHeaderRewrite", "host_header_rewrite", J_VALUE},
    {"httpUser", "http_user", J_VALUE},
    {"httpPassword", "http_pwd", J_VALUE},
    {"requestHeaders", NULL, J_SECTION},
    {"requestHeaders.set", NULL, J_HEADERS},
    {"secretKey", "sk", J_VALUE},
    {"allowUsers", "allow_users", J_IGNORED},
    {"transport", NULL, J_SECTION},
    {"transport.useEncryption", "use_encryption", J_VALUE},
    {"transport.useCompression", "use_compression", J_VALUE},
    {"transport.bandwidthLimit", "bandwidth_limit", J_IGNORED},
    {"transport.bandwidthLimitMode", "bandwidth_limit_mode", J_IGNORED},
    {"transport.proxyProtocolVersion", "proxy_protocol_version", J_IGNORED},
    {"loadBalancer", "group", J_IGNORED},
    {"healthCheck", "health_check_type", J_IGNORED},
    {"plugin", "plugin", J_IGNORED},
    {NULL, NULL, 0}};

/* frp's "visitors": an stcp visitor's local port. */
static const jkey visitor_keys[] = {
    {"name", "name", J_VALUE},
    {"type", "type", J_VALUE},
    {"serverName", "server_name", J_VALUE},
    {"secretKey", "sk", J_VALUE},
    {"bindAddr", "bind_addr", J_VALUE},
    {"bindPort", "bind_port", J_VALUE},
    {"serverUser", "server_user", J_IGNORED},
    {"transport", NULL, J_SECTION},
    {"transport.useEncryption", "use_encryption", J_VALUE},
    {"transport.useCompression", "use_compression", J_VALUE},
    {"plugin", "plugin", J_IGNORED},
    {NULL, NULL, 0}};

static const jkey server_keys[] = {
    {"bindAddr", "bind_addr", J_VALUE},
    {"bindPort", "bind_port", J_VALUE},
    {"proxyBindAddr", "proxy_bind_addr", J_VALUE},
    {"vhostHTTPPort", "vhost_http_port", J_VALUE},
    {"vhostHTTPSPort", "vhost_https_port", J_VALUE},
    {"subDomainHost", "subdomain_host", J_VALUE},
    {"allowPorts", "allow_ports", J_PORTS},
    {"maxPortsPerClient", "max_ports_per_client", J_VALUE},
    {"userConnTimeout", "user_conn_timeout", J_VALUE},
    {"detailedErrorsToClient", "detailed_errors_to_client", J_VALUE},
    {"enablePrometheus", "enable_prometheus", J_VALUE},
    {"custom404Page", "custom_404_page", J_VALUE},
    {"auth", NULL, J_SECTION},
    {"auth.method", "authentication_method", J_VALUE},
    {"auth.token", "token", J_VALUE},
    {"auth.additionalScopes", NULL, J_SCOPES},
    {"log", NULL, J_SECTION},
    {"log.level", "log_level", J_VALUE},
    {"log.to", "log_file", J_VALUE},
    {"log.maxDays", "log_max_days", J_VALUE},
    {"log.disablePrintColor", "disable_log_color", J_VALUE},
    {"webServer", "dashboard_addr", J_IGNORED},
    {"transport", NULL, J_SECTION},
    {"transport.tcpMux", "tcp_mux", J_VALUE},
    {"transport.maxPoolCount", "max_pool_count", J_VALUE},
    {"transport.heartbeatTimeout", "heartbeat_timeout", J_VALUE},
    {"transport.tcpKeepalive", "tcp_keepalive", J_VALUE},
    {"transport.tls", NULL, J_SECTION},
    {"transport.tls.force", "tls_only", J_VALUE},
    {"transport.tls.certFile", "tls_cert_file", J_VALUE},
    {"transport.tls.keyFile", "tls_key_file", J_VALUE},
    {"transport.tls.trustedCaFile", "tls_trusted_ca_file", J_VALUE},
    {NULL, NULL, 0}};

typedef struct jwalk {
  cli_conf_ctx *ctx;
  const jkey *keys;
  cli_proxy_conf *proxy;
  const char *prefix; /* "" or "proxies[N]." before the shown path */
} jwalk;

static const jkey *find_key(const jkey *keys, const char *path) {
  for (; keys->path; keys++)
    if (!strcmp(keys->path, path))
      return keys;
  return NULL;
}

/* A scalar as the INI text of the same value; NULL for another type. */
static const char *scalar(const cJSON *v, char *buf, size_t n) {
  if (cJSON_IsString(v))
    return v->valuestring;
  if (cJSON_IsBool(v))
    return cJSON_IsTrue(v) ? "true" : "false";
  if (cJSON_IsNumber(v)) {
    double d = v->valuedouble;
    /* Whole numbers only, tested without libm: at -Os floor() is a call
     * that would load libm.so for this one check. */
    if (!(d >= -1e15 && d <= 1e15) || d != (double)(long long)d)
      return NULL;
    snprintf(buf, n, "%.0f", d);
    return buf;
  }
  return NULL;
}

static int set(jwalk *w, const char *ini, const char *value,
               const char *shown) {
  return cli_conf_set(w->ctx, w->proxy, ini, value, shown, NULL) < 0 ? -1 : 0;
}

static int bad(jwalk *w, const char *shown, const char *want) {
  cli_conf_error(w->ctx, NULL, "bad value for '%s': want %s", shown, want);
  return -1;
}

/* Appends to a bounded text buffer; -1 when it would not fit. */
static int append(char *buf, size_t n, size_t *len, const char *s) {
  size_t m = strlen(s);
  if (*len + m + 1 > n)
    return -1;
  memcpy(buf + *len, s, m + 1);
  *len += m;
  return 0;
}

static int walk(jwalk *w, const cJSON *obj, const char *path);

static int one(jwalk *w, const cJSON *v, const char *path) {
  char shown[512], num[32];
  snprintf(shown, sizeof shown, "%s%s", w->prefix, path);
  const jkey *k = find_key(w->keys, path);
  if (!k) {
    cli_conf_warn(w->ctx, NULL, "unknown key '%s', ignored", shown);
    return 0;
  }
  switch (k->kind) {
  case J_SECTION:
    if (!cJSON_IsObject(v))
      return bad(w, shown, "an object");
    return walk(w, v, path);
  case J_IGNORED:
    /* The INI name carries the warning; the value does not matter. */
    return set(w, k->ini, "", shown);
  case J_VALUE: {
    const char *s = scalar(v, num, sizeof num);
    if (!s)
      return bad(w, shown, "a string, a whole number or a boolean");
    return set(w, k->ini, s, shown);
  }
  case J_LIST: {
    char buf[4096];
    size_t len = 0;
    const cJSON *e;
    if (!cJSON_IsArray(v))
      return bad(w, shown, "an array of strings");
    cJSON_ArrayForEach(e, v) {
      if (!cJSON_IsString(e) || strchr(e->valuestring, ','))
        return bad(w, shown, "an array of strings without commas");
      if ((len && append(buf, sizeof buf, &len, ",")) ||
          append(buf, sizeof buf, &len, e->valuestring))
        return bad(w, shown, "a shorter list");
    }
    buf[len] = '\0';
    return set(w, k->ini, buf, shown);
  }
  case J_PORTS: {
    char buf[2048], piece[32];
    size_t len = 0;
    const cJSON *e;
    if (!cJSON_IsArray(v))
      return bad(w, shown, "an array of {\"start\", \"end\"} or {\"single\"}");
    cJSON_ArrayForEach(e, v) {
      const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "start");
      const cJSON *en = cJSON_GetObjectItemCaseSensitive(e, "end");
      const cJSON *si = cJSON_GetObjectItemCaseSensitive(e, "single");
      if (cJSON_IsNumber(si) && !st && !en)
        snprintf(piece, sizeof piece, "%.0f", si->valuedouble);
      else if (cJSON_IsNumber(st) && cJSON_IsNumber(en) && !si)
        snprintf(piece, sizeof piece, "%.0f-%.0f", st->valuedouble,
                 en->valuedouble);
      else
        return bad(w, shown, "an array of {\"start\", \"end\"} or "
                             "{\"single\"}");
      if ((len && append(buf, sizeof buf, &len, ",")) ||
          append(buf, sizeof buf, &len, piece))
        return bad(w, shown, "fewer ranges");
    }
    buf[len] = '\0';
    return set(w, k->ini, buf, shown);
  }
  case J_SCOPES: {
    const cJSON *e;
    if (!cJSON_IsArray(v))
      return bad(w, shown, "an array of strings");
    cJSON_ArrayForEach(e, v) {
      if (cJSON_IsString(e) && !strcmp(e->valuestring, "NewWorkConns")) {
        if (set(w, "authenticate_new_work_conns", "true", shown))
          return -1;
      } else if (cJSON_IsString(e) &&
                 !strcmp(e->valuestring, "HeartBeats")) {
        if (set(w, "authenticate_heartbeats", "true", shown))
          return -1;
      } else {
        return bad(w, shown, "\"HeartBeats\" or \"NewWorkConns\" entries");
      }
    }
    return 0;
  }
  case J_HEADERS: {
    const cJSON *e;
    if (!cJSON_IsObject(v))
      return bad(w, shown, "an object of header names and values");
    cJSON_ArrayForEach(e, v) {
      char ini[300], eshown[600];
      snprintf(eshown, sizeof eshown, "%s.%s", shown, e->string);
      if (!cJSON_IsString(e))
        return bad(w, eshown, "a string");
      if (strlen(e->string) >= sizeof ini - 8)
        return bad(w, eshown, "a shorter header name");
      snprintf(ini, sizeof ini, "header_%s", e->string);
      if (set(w, ini, e->valuestring, eshown))
        return -1;
    }
    return 0;
  }
  }
  return 0;
}

static int walk(jwalk *w, const cJSON *obj, const char *path) {
  const cJSON *e;
  cJSON_ArrayForEach(e, obj) {
    char sub[256];
    if (strlen(path) + strlen(e->string) + 2 > sizeof sub) {
      cli_conf_warn(w->ctx, NULL, "unknown key '%s%s.%s', ignored",
                    w->prefix, path, e->string);
      continue;
    }
    size_t pl = strlen(path), el = strlen(e->string);
    memcpy(sub, path, pl);
    if (pl)
      sub[pl++] = '.';
    memcpy(sub + pl, e->string, el + 1);
    if (one(w, e, sub) != 0)
      return -1;
  }
  return 0;
}

int cli_conf_parse_json(cli_conf_ctx *ctx, const char *text, size_t len) {
  const char *err_at = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(text, len + 1, &err_at, 1);
  if (!root || !cJSON_IsObject(root)) {
    size_t off = err_at ? (size_t)(err_at - text) : 0;
    int line = 1;
    for (size_t i = 0; i < off && i < len; i++)
      line += text[i] == '\n';
    if (root)
      cli_conf_error(ctx, NULL, "not a JSON object");
    else
      cli_conf_error(ctx, NULL, "line %d: JSON syntax error", line);
    cJSON_Delete(root);
    return -1;
  }
  jwalk w = {ctx, ctx->is_client ? client_keys : server_keys, NULL, ""};
  int rc = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, root) {
    int visitors = !strcmp(e->string, "visitors");
    if (ctx->is_client && (visitors || !strcmp(e->string, "proxies"))) {
      if (!cJSON_IsArray(e)) {
        rc = bad(&w, e->string, "an array of objects");
        break;
      }
      const cJSON *p;
      size_t i = 0;
      cJSON_ArrayForEach(p, e) {
        char prefix[40];
        snprintf(prefix, sizeof prefix, "%s[%zu].", e->string, i++);
        if (!cJSON_IsObject(p)) {
          cli_conf_error(ctx, NULL, "bad value for '%.*s': want an object",
                         (int)strlen(prefix) - 1, prefix);
          rc = -1;
          break;
        }
        jwalk pw = {ctx, visitors ? visitor_keys : proxy_keys,
                    cli_client_conf_add_proxy(ctx->client), prefix};
        if (!pw.proxy) {
          cli_conf_error(ctx, NULL, "out of memory");
          rc = -1;
          break;
        }
        pw.proxy->visitor = visitors;
        if ((rc = walk(&pw, p, "")) != 0)
          break;
      }
      if (rc)
        break;
      continue;
    }
    if (!ctx->is_client &&
        (visitors || !strcmp(e->string, "proxies"))) {
      cli_conf_warn(ctx, NULL, "'%s' is not used by the server, ignored",
                    e->string);
      continue;
    }
    if ((rc = one(&w, e, e->string)) != 0)
      break;
  }
  /* The parsed tree holds the token's text too. */
  cJSON *t = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(root, "auth"), "token");
  if (cJSON_IsString(t))
    cli_wipe_string(t->valuestring);
  /* And the secrets of secret services and their visitors. */
  static const char *const lists[] = {"proxies", "visitors"};
  for (size_t l = 0; l < 2; l++) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, lists[l]), *p;
    if (!cJSON_IsArray(arr))
      continue;
    cJSON_ArrayForEach(p, arr) {
      cJSON *k = cJSON_GetObjectItemCaseSensitive(p, "secretKey");
      if (cJSON_IsString(k))
        cli_wipe_string(k->valuestring);
    }
  }
  cJSON_Delete(root);
  return rc || ctx->errors ? -1 : 0;
}
