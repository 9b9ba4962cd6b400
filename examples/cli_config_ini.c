/* frp's legacy INI format, read with libinih: "[common]" holds the
 * program's settings; on the client every other section is one proxy,
 * named after the section. */
#include "cli_config.h"

#include <stdio.h>
#include <string.h>

#include <ini.h>

#include <tunnel/uv.h>

typedef struct ini_state {
  cli_conf_ctx *ctx;
  const char *text, *end;
  const char *pos;
  int line;      /* of the line last handed to libinih */
  int too_long;  /* that line did not fit libinih's buffer */
  char section[256];
  long proxy;    /* index of the current section's proxy, -1 none */
  int section_warned;
} ini_state;

/* fgets over the file in memory, counting lines, so that a warning can
 * name the line of a key (libinih's handler is not told it). */
static char *ini_read_line(char *str, int num, void *stream) {
  ini_state *st = stream;
  if (st->pos >= st->end || num < 2)
    return NULL;
  const char *nl = memchr(st->pos, '\n', (size_t)(st->end - st->pos));
  size_t len = nl ? (size_t)(nl - st->pos) + 1 : (size_t)(st->end - st->pos);
  st->line++;
  st->too_long = len > (size_t)num - 1;
  size_t n = st->too_long ? (size_t)num - 1 : len;
  memcpy(str, st->pos, n);
  str[n] = '\0';
  st->pos += len; /* the rest of an overlong line is not another line */
  return str;
}

static int ini_on_key(void *user, const char *section, const char *name,
                      const char *value) {
  ini_state *st = user;
  cli_conf_ctx *ctx = st->ctx;
  char where[32];
  snprintf(where, sizeof where, "line %d", st->line);
  if (st->too_long) {
    cli_conf_error(ctx, where, "line too long");
    return 0;
  }
  if (!*section) {
    cli_conf_error(ctx, where, "'%s' is outside a section ([common] or a "
                   "proxy)", name);
    return 0;
  }
  if (strcmp(section, st->section)) {
    if (strlen(section) >= sizeof st->section) {
      cli_conf_error(ctx, where, "section name too long");
      return 0;
    }
    strcpy(st->section, section);
    st->proxy = -1;
    st->section_warned = 0;
  }
  if (!strcmp(section, "common"))
    return cli_conf_set(ctx, NULL, name, value, NULL, where) >= 0;
  if (!ctx->is_client) {
    if (!st->section_warned)
      cli_conf_warn(ctx, where, "section [%s] is not used by the server, "
                    "ignored", section);
    st->section_warned = 1;
    return 1;
  }
  if (!strncmp(section, "range:", 6)) {
    cli_conf_error(ctx, where, "range sections ([%s]) are not supported",
                   section);
    return 0;
  }
  cli_client_conf *c = ctx->client;
  if (st->proxy < 0) {
    for (size_t i = 0; i < c->nproxies; i++)
      if (!strcmp(c->proxies[i].name, section))
        st->proxy = (long)i;
    if (st->proxy < 0) {
      cli_proxy_conf *p = cli_client_conf_add_proxy(c);
      if (!p || !(p->name = strdup(section))) {
        cli_conf_error(ctx, NULL, "out of memory");
        return 0;
      }
      st->proxy = (long)c->nproxies - 1;
    }
  }
  if (!strcmp(name, "name")) {
    cli_conf_warn(ctx, where, "unknown key 'name', ignored (the section "
                  "names the proxy)");
    return 1;
  }
  return cli_conf_set(ctx, &c->proxies[st->proxy], name, value, NULL,
                      where) >= 0;
}

int cli_conf_parse_ini(cli_conf_ctx *ctx, const char *text, size_t len) {
  /* frp's INI has no continuation lines: an indented "key = value" is a
   * key of its own, not part of the value above it. */
  ini_allow_multiline = false;
  ini_state st = {ctx, text, text + len, text, 0, 0, "", -1, 0};
  int rc = ini_parse_stream(ini_read_line, &st, ini_on_key, &st);
  if (rc > 0 && !ctx->errors)
    cli_conf_error(ctx, NULL, "line %d: not a [section] or a KEY = VALUE "
                   "line", rc);
  if (rc < 0 && !ctx->errors)
    cli_conf_error(ctx, NULL, "out of memory");
  if (ctx->errors)
    return -1;
  /* frp's default proxy type. */
  if (ctx->is_client)
    for (size_t i = 0; i < ctx->client->nproxies; i++)
      if (!ctx->client->proxies[i].type)
        ctx->client->proxies[i].type = TUNNEL_PROXY_TCP;
  return 0;
}
