/* The client's proxies (tunnel_proxy_*: declared in the engine, held back
 * until started) and what happens to a visitor: joined to the local
 * service through a splice, or handed to the program. */
#include <string.h>

#include "../engine_io.h"
#include "../log.h"
#include "client_int.h"
#include "handle.h"

#define MEM(c) tunnel__client_mem(c)

/* A visitor waiting for the local service to accept. */
struct tunnel__cl_join {
  tunnel_client *c;
  tunnel__cl_join *next;
  tunnel_stream *st;
  uv_tcp_t *local;
  tunnel__dial *dial;
};

tunnel_proxy *tunnel__client_proxy(tunnel_client *c, uint32_t id) {
  for (tunnel_proxy *p = c->proxies; p; p = p->next)
    if (p->id == id)
      return p;
  return NULL;
}

/* ------------------------------------------------------------ visitors */

static void splice_gone(void *ud) { tunnel__client_maybe_finish_close(ud); }

static void join_unlink(tunnel__cl_join *j) {
  tunnel_client *c = j->c;
  for (tunnel__cl_join **pp = &c->joins; *pp; pp = &(*pp)->next) {
    if (*pp == j) {
      *pp = j->next;
      break;
    }
  }
  tunnel__free(MEM(c), j);
  c->objects--;
  tunnel__client_maybe_finish_close(c);
}

static void local_connected(tunnel__dial *d, int status, void *ud) {
  tunnel__cl_join *j = ud;
  tunnel_client *c = j->c;
  (void)d;
  j->dial = NULL;
  if (status) {
    /* The visitor learns at once: its stream is reset, so the server
     * closes its connection. */
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: local service unreachable: %s",
                tunnel_strerror(status));
    tunnel__tcp_close_free(MEM(c), j->local);
    tunnel_stream_close(j->st, NULL, NULL);
  } else {
    tunnel__splice_start(MEM(c), &c->cfg.log, j->local, j->st, NULL, 0,
                         c->readbuf, TUNNEL__CLIENT_READBUF, &c->splices,
                         splice_gone, c);
  }
  join_unlink(j);
}

void tunnel__client_visitor(tunnel_proxy *p, tunnel_stream *st) {
  tunnel_client *c = p->c;
  if (!p->local_host) {
    if (p->accept_cb)
      p->accept_cb(p, st, p->accept_ud);
    else
      tunnel_stream_close(st, NULL, NULL);
    return;
  }
  tunnel__cl_join *j = tunnel__calloc(MEM(c), 1, sizeof *j);
  uv_tcp_t *tcp = j ? tunnel__malloc(MEM(c), sizeof *tcp) : NULL;
  int rc = tcp ? 0 : TUNNEL_ENOMEM;
  if (rc == 0) {
    uv_tcp_init(c->loop, tcp);
    j->c = c;
    j->st = st;
    j->local = tcp;
    rc = tunnel__dial_start(&j->dial, c->loop, MEM(c), tcp, p->local_host,
                            p->local_port, local_connected, j);
    if (rc)
      tunnel__tcp_close_free(MEM(c), tcp);
  }
  if (rc) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: cannot reach the local service: %s",
                tunnel_strerror(rc));
    tunnel__free(MEM(c), j);
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  c->objects++;
  j->next = c->joins;
  c->joins = j;
}

void tunnel__client_joins_abort(tunnel_client *c) {
  while (c->joins) {
    tunnel__cl_join *j = c->joins;
    tunnel__dial_cancel(j->dial);
    tunnel__tcp_close_free(MEM(c), j->local);
    tunnel_stream_close(j->st, NULL, NULL);
    join_unlink(j);
  }
}

/* ----------------------------------------------------------------- API */

static void proxy_free(tunnel_proxy *p) {
  tunnel_client *c = p->c;
  tunnel__client_udp_close(p, 1);
  tunnel__free(MEM(c), p->name);
  tunnel__free(MEM(c), p->local_host);
  tunnel__free(MEM(c), p);
}

void tunnel__client_proxies_free(tunnel_client *c) {
  while (c->proxies) {
    tunnel_proxy *p = c->proxies;
    c->proxies = p->next;
    tunnel_engine_remove_proxy(c->eng, p->id);
    proxy_free(p);
  }
}

int tunnel_proxy_new(tunnel_proxy **out, tunnel_client *c, const char *name,
                     int type) {
  if (!out || !c || !name || !*name)
    return TUNNEL_EINVAL;
  *out = NULL;
  if (c->closing)
    return TUNNEL_ESTATE;
  tunnel_proxy *p = tunnel__calloc(MEM(c), 1, sizeof *p);
  if (!p || !(p->name = tunnel__strdup(MEM(c), name))) {
    tunnel__free(MEM(c), p);
    return TUNNEL_ENOMEM;
  }
  /* The engine keeps the proxy and its options; it registers it once
   * started. The type numbers are the same. */
  int rc = tunnel_engine_add_proxy(c->eng, name, type, &p->id);
  if (rc == 0 && (rc = tunnel__engine_proxy_hold(c->eng, p->id, 1)) != 0)
    tunnel_engine_remove_proxy(c->eng, p->id);
  if (rc) {
    tunnel__free(MEM(c), p->name);
    tunnel__free(MEM(c), p);
    return rc;
  }
  p->c = c;
  p->type = type;
  p->udp_idle_ms = TUNNEL__CLIENT_UDP_IDLE_MS;
  p->next = c->proxies;
  c->proxies = p;
  *out = p;
  return 0;
}

/* Options are fixed once the proxy started. */
static int opt_ok(const tunnel_proxy *p) {
  return !p ? TUNNEL_EINVAL : p->started ? TUNNEL_ESTATE : 0;
}

int tunnel_proxy_set_remote_port(tunnel_proxy *p, uint16_t port) {
  int rc = opt_ok(p);
  return rc ? rc : tunnel_engine_proxy_set_remote_port(p->c->eng, p->id, port);
}

int tunnel_proxy_set_subdomain(tunnel_proxy *p, const char *name) {
  int rc = opt_ok(p);
  return rc ? rc : tunnel_engine_proxy_set_subdomain(p->c->eng, p->id, name);
}

int tunnel_proxy_add_domain(tunnel_proxy *p, const char *fqdn) {
  int rc = opt_ok(p);
  return rc ? rc : tunnel_engine_proxy_add_domain(p->c->eng, p->id, fqdn);
}

int tunnel_proxy_add_location(tunnel_proxy *p, const char *path) {
  int rc = opt_ok(p);
  return rc ? rc : tunnel_engine_proxy_add_location(p->c->eng, p->id, path);
}

int tunnel_proxy_set_host_rewrite(tunnel_proxy *p, const char *host) {
  int rc = opt_ok(p);
  return rc ? rc : tunnel_engine_proxy_set_host_rewrite(p->c->eng, p->id, host);
}

int tunnel_proxy_set_basic_auth(tunnel_proxy *p, const char *user,
                                const char *password) {
  int rc = opt_ok(p);
  return rc ? rc : tunnel_engine_proxy_set_basic_auth(p->c->eng, p->id, user,
                                               password);
}

int tunnel_proxy_set_header(tunnel_proxy *p, const char *name,
                            const char *value) {
  int rc = opt_ok(p);
  return rc ? rc : tunnel_engine_proxy_set_header(p->c->eng, p->id, name, value);
}

int tunnel_proxy_set_local(tunnel_proxy *p, const char *host, uint16_t port) {
  if (!p || !host || !*host || port == 0)
    return TUNNEL_EINVAL;
  char *h = tunnel__strdup(MEM(p->c), host);
  if (!h)
    return TUNNEL_ENOMEM;
  tunnel__free(MEM(p->c), p->local_host);
  p->local_host = h;
  p->local_port = port;
  return 0;
}

int tunnel_proxy_set_secret(tunnel_proxy *p, const char *secret) {
  int rc = opt_ok(p);
  if (rc == 0)
    rc = tunnel_engine_proxy_set_secret(p->c->eng, p->id, secret);
  if (rc == 0)
    p->has_secret = 1;
  return rc;
}

int tunnel_proxy_set_idle_timeout(tunnel_proxy *p, uint32_t ms) {
  if (!p || ms == 0)
    return TUNNEL_EINVAL;
  if (p->type != TUNNEL_ENGINE_PROXY_UDP)
    return TUNNEL_ENOTSUP;
  p->udp_idle_ms = ms;
  return 0;
}

int tunnel_proxy_set_status_cb(tunnel_proxy *p, tunnel_proxy_status_cb cb,
                               void *ud) {
  if (!p)
    return TUNNEL_EINVAL;
  p->status_cb = cb;
  p->status_ud = ud;
  return 0;
}

int tunnel_proxy_set_accept_cb(tunnel_proxy *p, tunnel_proxy_accept_cb cb,
                               void *ud) {
  if (!p)
    return TUNNEL_EINVAL;
  p->accept_cb = cb;
  p->accept_ud = ud;
  return 0;
}

int tunnel_proxy_start(tunnel_proxy *p) {
  if (!p)
    return TUNNEL_EINVAL;
  if (p->started)
    return TUNNEL_ESTATE;
  if (!p->local_host && !p->accept_cb)
    return TUNNEL_EINVAL; /* visitors would have nowhere to go */
  if (p->type == TUNNEL_PROXY_STCP && !p->has_secret)
    return TUNNEL_EINVAL; /* the server refuses a secret service without */
  if (p->type == TUNNEL_ENGINE_PROXY_UDP) {
    /* Datagrams go to a local socket, whose address must be numeric. */
    struct sockaddr_storage ss;
    const char *h = p->local_host;
    if (!h || tunnel__parse_addr(strcmp(h, "localhost") ? h : "127.0.0.1",
                                 p->local_port, &ss) != 0)
      return TUNNEL_EINVAL;
  }
  p->started = 1;
  tunnel__engine_proxy_hold(p->c->eng, p->id, 0);
  tunnel__client_flush_soon(p->c); /* registers it if logged in */
  return 0;
}

int tunnel_proxy_close(tunnel_proxy *p) {
  if (!p)
    return TUNNEL_EINVAL;
  tunnel_client *c = p->c;
  for (tunnel_proxy **pp = &c->proxies; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  tunnel_engine_remove_proxy(c->eng, p->id);
  tunnel__client_flush_soon(c);
  proxy_free(p);
  return 0;
}

const char *tunnel_proxy_name(const tunnel_proxy *p) {
  return p ? p->name : NULL;
}
