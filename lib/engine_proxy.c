/* The engine's proxies (include/tunnel/engine.h): declared by the program,
 * kept across sessions, registered at every login with the options they
 * carry as NewProxy fields, and removed on request. */
#include <string.h>

#include "engine_int.h"
#include "engine_io.h"

#define MEM(e) tunnel__eng_mem(e)

typedef tunnel__eng_proxy eng_proxy;

eng_proxy *tunnel__eng_proxy_by_name(tunnel_engine *e, const char *name) {
  for (eng_proxy *p = e->proxies; p && name; p = p->next)
    if (strcmp(p->name, name) == 0)
      return p;
  return NULL;
}

eng_proxy *tunnel__eng_proxy_by_id(tunnel_engine *e, uint32_t id) {
  for (eng_proxy *p = e ? e->proxies : NULL; p; p = p->next)
    if (p->id == id)
      return p;
  return NULL;
}

void tunnel__eng_proxy_free(tunnel_engine *e, eng_proxy *p) {
  tunnel__wipe_string(p->opts.sk);
  tunnel__msg_clear(MEM(e), &p->opts);
  tunnel__free(MEM(e), p->name);
  tunnel__free(MEM(e), p);
}

int tunnel_engine_add_proxy(tunnel_engine *e, const char *name, int32_t type,
                            uint32_t *proxy_out) {
  if (!e || !name || !*name || strlen(name) > 255)
    return TUNNEL_EINVAL;
  if (type != TUNNEL_ENGINE_PROXY_TCP && type != TUNNEL_ENGINE_PROXY_HTTP &&
      type != TUNNEL_ENGINE_PROXY_HTTPS && type != TUNNEL_ENGINE_PROXY_UDP &&
      type != TUNNEL_ENGINE_PROXY_STCP)
    return TUNNEL_ENOTSUP;
  if (tunnel__eng_proxy_by_name(e, name))
    return TUNNEL_EEXIST;
  eng_proxy *p = tunnel__calloc(MEM(e), 1, sizeof *p);
  if (!p || !(p->name = tunnel__strdup(MEM(e), name))) {
    tunnel__free(MEM(e), p);
    return TUNNEL_ENOMEM;
  }
  p->id = e->next_proxy++;
  p->type = type;
  tunnel__msg_init(&p->opts, TUNNEL__MSG_NEW_PROXY);
  /* Appended: registrations go out in the order they were declared. */
  eng_proxy **pp = &e->proxies;
  while (*pp)
    pp = &(*pp)->next;
  *pp = p;
  if (proxy_out)
    *proxy_out = p->id;
  return 0;
}

int tunnel__eng_send_close_proxy(tunnel__eng_session *s, eng_proxy *p) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_CLOSE_PROXY);
  m.proxy_name = p->name; /* borrowed for the encoding */
  return tunnel__eng_send_ctl(s, &m);
}

int tunnel_engine_remove_proxy(tunnel_engine *e, uint32_t proxy) {
  eng_proxy *p = tunnel__eng_proxy_by_id(e, proxy);
  if (!p)
    return TUNNEL_EINVAL;
  /* Unlinked first: a callback run by a failed send no longer finds it. */
  for (eng_proxy **pp = &e->proxies; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  int rc = 0;
  tunnel__eng_stream *ch =
      p->dgram && e->s ? tunnel__eng_find_stream(e->s, p->dgram) : NULL;
  if (ch) {
    tunnel__eng_enter(e);
    tunnel__eng_stream_discard(ch);
    tunnel__eng_leave(e);
  }
  if (p->sent && e->s && e->state == TUNNEL__E_READY) {
    /* The server frees the port or names now, not at the session's end. */
    tunnel__eng_enter(e);
    rc = tunnel__eng_send_close_proxy(e->s, p);
    tunnel__eng_leave(e);
  }
  tunnel__eng_proxy_free(e, p);
  return rc;
}

int tunnel__engine_proxy_hold(tunnel_engine *e, uint32_t proxy, int held) {
  eng_proxy *p = tunnel__eng_proxy_by_id(e, proxy);
  if (!p)
    return TUNNEL_EINVAL;
  p->held = held != 0;
  return 0;
}

/* Option kinds: which proxy types have them. */
enum { OPT_TCP = 1, OPT_HTTP = 2, OPT_HTTPS = 4, OPT_UDP = 8, OPT_STCP = 16 };

static int type_bit(int32_t type) {
  return type == TUNNEL_ENGINE_PROXY_TCP    ? OPT_TCP
         : type == TUNNEL_ENGINE_PROXY_HTTP ? OPT_HTTP
         : type == TUNNEL_ENGINE_PROXY_UDP  ? OPT_UDP
         : type == TUNNEL_ENGINE_PROXY_STCP ? OPT_STCP
                                            : OPT_HTTPS;
}

/* The proxy whose options may change now. */
static int proxy_opt(tunnel_engine *e, uint32_t proxy, int kinds,
                     eng_proxy **out) {
  eng_proxy *p = tunnel__eng_proxy_by_id(e, proxy);
  if (!p)
    return TUNNEL_EINVAL;
  if (!(type_bit(p->type) & kinds))
    return TUNNEL_ENOTSUP;
  if (p->sent)
    return TUNNEL_ESTATE;
  *out = p;
  return 0;
}

int tunnel_engine_proxy_set_remote_port(tunnel_engine *e, uint32_t proxy,
                                        uint16_t port) {
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_TCP | OPT_UDP, &p);
  if (rc == 0)
    p->remote_port = port;
  return rc;
}

/* A host name as routing tables and peers expect it: letters, digits,
 * hyphens, underscores and dots (and a leading "*." where wildcards are
 * allowed). */
static int valid_name(const char *s, int wildcard) {
  size_t n = strlen(s);
  if (n == 0 || n > 253)
    return 0;
  if (wildcard && s[0] == '*' && s[1] == '.')
    s += 2;
  if (!*s)
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '-' || *s == '.' || *s == '_'))
      return 0;
  return 1;
}

/* Header names and values travel into HTTP heads: no CR or LF. */
static int header_safe(const char *s) { return !strpbrk(s, "\r\n"); }

int tunnel_engine_proxy_set_subdomain(tunnel_engine *e, uint32_t proxy,
                                      const char *name) {
  if (!name || !valid_name(name, 0) || strchr(name, '.'))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_HTTP | OPT_HTTPS, &p);
  return rc ? rc : tunnel__msg_set_str(MEM(e), &p->opts.subdomain, name);
}

int tunnel_engine_proxy_add_domain(tunnel_engine *e, uint32_t proxy,
                                   const char *fqdn) {
  if (!fqdn || !valid_name(fqdn, 1))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_HTTP | OPT_HTTPS, &p);
  return rc ? rc
            : tunnel__msg_strs_push(MEM(e), &p->opts.custom_domains, fqdn);
}

int tunnel_engine_proxy_add_location(tunnel_engine *e, uint32_t proxy,
                                     const char *path) {
  if (!path || path[0] != '/' || !header_safe(path))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_HTTP, &p);
  return rc ? rc : tunnel__msg_strs_push(MEM(e), &p->opts.locations, path);
}

int tunnel_engine_proxy_set_host_rewrite(tunnel_engine *e, uint32_t proxy,
                                         const char *host) {
  if (!host || !*host || !header_safe(host))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_HTTP, &p);
  return rc ? rc
            : tunnel__msg_set_str(MEM(e), &p->opts.host_header_rewrite, host);
}

int tunnel_engine_proxy_set_basic_auth(tunnel_engine *e, uint32_t proxy,
                                       const char *user,
                                       const char *password) {
  if (!user || !*user || !password || strchr(user, ':') ||
      !header_safe(user) || !header_safe(password))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_HTTP, &p);
  if (rc)
    return rc;
  /* Both or neither. */
  char *u = tunnel__strdup(MEM(e), user);
  char *w = u ? tunnel__strdup(MEM(e), password) : NULL;
  if (!w) {
    tunnel__free(MEM(e), u);
    return TUNNEL_ENOMEM;
  }
  tunnel__free(MEM(e), p->opts.http_user);
  tunnel__wipe_string(p->opts.http_pwd);
  tunnel__free(MEM(e), p->opts.http_pwd);
  p->opts.http_user = u;
  p->opts.http_pwd = w;
  return 0;
}

int tunnel_engine_proxy_set_header(tunnel_engine *e, uint32_t proxy,
                                   const char *name, const char *value) {
  if (!name || !*name || !value || !header_safe(name) || !header_safe(value) ||
      strchr(name, ':'))
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_HTTP, &p);
  return rc ? rc : tunnel__msg_map_add(MEM(e), &p->opts.headers, name, value);
}

int tunnel_engine_proxy_set_secret(tunnel_engine *e, uint32_t proxy,
                                   const char *secret) {
  if (!secret || !*secret || strlen(secret) > 255)
    return TUNNEL_EINVAL;
  eng_proxy *p;
  int rc = proxy_opt(e, proxy, OPT_STCP, &p);
  if (rc)
    return rc;
  char *k = tunnel__strdup(MEM(e), secret);
  if (!k)
    return TUNNEL_ENOMEM;
  tunnel__wipe_string(p->opts.sk); /* a secret leaves no copy behind */
  tunnel__free(MEM(e), p->opts.sk);
  p->opts.sk = k;
  return 0;
}
