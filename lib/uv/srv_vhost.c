/* The public HTTP and HTTPS ports: one listener each, shared by every
 * client's proxies of that kind, and the router from names to proxies.
 * The connections themselves are srv_http.c's and srv_https.c's. */
#include <stdio.h>
#include <string.h>

#include "../router.h"
#include "dial.h"
#include "srv.h"
#include "uverr.h"

#define MEM tunnel__srv_mem

/* Random bytes in a name picked for a proxy that asks for none: 80 bits,
 * 16 characters. */
#define RANDOM_NAME_BYTES 10

void tunnel__srv_vhost_init(tunnel_server *srv, srv_vhost *vh, int https) {
  memset(vh, 0, sizeof *vh);
  vh->srv = srv;
  vh->https = https;
}

static const char *domain(const tunnel_server *srv) {
  return srv->cfg.subdomain_host ? srv->cfg.subdomain_host : "localhost";
}

static void on_visitor(uv_stream_t *l, int status) {
  srv_vhost *vh = l->data;
  tunnel_server *srv = vh->srv;
  if (status < 0 && !srv->closing)
    tunnel__srv_accept_failed(srv, status, vh->https ? "HTTPS" : "HTTP");
  if (status < 0 || srv->closing)
    return;
  uv_tcp_t *tcp = tunnel__malloc(MEM(srv), sizeof *tcp);
  if (!tcp)
    return;
  uv_tcp_init(srv->loop, tcp);
  srv->handles++;
  tcp->data = srv;
  if (uv_accept(l, (uv_stream_t *)tcp) != 0 ||
      vh->nconns >= srv->cfg.http_max_visitors) {
    if (vh->nconns >= srv->cfg.http_max_visitors)
      TUNNEL__SRV_COUNT(srv, VISITORS_REFUSED_LIMIT);
    uv_close((uv_handle_t *)tcp, tunnel__srv_free_tcp_closed);
    return;
  }
  if (vh->https)
    tunnel__srv_https_accept(vh, tcp);
  else
    tunnel__srv_http_accept(vh, tcp);
}

static int ensure_router(srv_vhost *vh) {
  if (vh->router)
    return 0;
  /* A keyed hash with a secret seed: names chosen by clients cannot be
   * made to collide. */
  uint8_t seed[16];
  int rc = tunnel__uv_err(uv_random(NULL, NULL, seed, sizeof seed, 0, NULL));
  if (rc == 0)
    rc = tunnel__router_new(&vh->router, MEM(vh->srv), seed);
  return rc;
}

int tunnel__srv_vhost_listen(srv_vhost *vh, const char *host, uint16_t port) {
  tunnel_server *srv = vh->srv;
  if (vh->listening || srv->closing)
    return TUNNEL_ESTATE;
  struct sockaddr_storage ss;
  int rc = tunnel__parse_addr(host, port, &ss);
  if (rc == 0)
    rc = ensure_router(vh);
  if (rc)
    return rc;
  uv_tcp_init(srv->loop, &vh->listener);
  vh->listener.data = vh;
  rc = uv_tcp_bind(&vh->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&vh->listener, 511, on_visitor);
  if (rc == 0) {
    struct sockaddr_storage bound;
    int len = sizeof bound;
    char h[64];
    rc = uv_tcp_getsockname(&vh->listener, (struct sockaddr *)&bound, &len);
    if (rc == 0)
      tunnel__format_addr((struct sockaddr *)&bound, h, sizeof h, &vh->port);
  }
  srv->handles++;
  vh->listening = 1;
  if (rc) {
    tunnel__srv_vhost_close(vh);
    return tunnel__uv_err(rc);
  }
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: %s visitors on %s:%u (names under %s)",
              vh->https ? "HTTPS" : "HTTP", host, vh->port, domain(srv));
  return 0;
}

static void listener_closed(uv_handle_t *h) {
  srv_vhost *vh = h->data;
  vh->srv->handles--;
  tunnel__srv_maybe_finish_close(vh->srv);
}

void tunnel__srv_vhost_close(srv_vhost *vh) {
  if (vh->listening) {
    vh->listening = 0;
    uv_close((uv_handle_t *)&vh->listener, listener_closed);
  }
  while (vh->conns)
    vh->conns->close(vh->conns);
  /* Proxies are closed before the server's vhosts: no route is left. */
  tunnel__router_free(vh->router);
  vh->router = NULL;
}

void tunnel__srv_vhost_drain(srv_vhost *vh) {
  if (vh->listening) {
    vh->listening = 0;
    uv_close((uv_handle_t *)&vh->listener, listener_closed);
  }
  /* The router stays: the close frees it. */
  for (srv_vconn *c = vh->conns, *next; c; c = next) {
    next = c->next;
    if (c->drain)
      c->drain(c);
    else
      c->close(c);
  }
}

int tunnel__srv_vconn_add(srv_vhost *vh, srv_vconn *c) {
  c->vh = vh;
  c->prev = NULL;
  c->next = vh->conns;
  if (vh->conns)
    vh->conns->prev = c;
  vh->conns = c;
  vh->nconns++;
  return 0;
}

void tunnel__srv_vconn_remove(srv_vconn *c) {
  srv_vhost *vh = c->vh;
  if (c->prev)
    c->prev->next = c->next;
  else if (vh->conns == c)
    vh->conns = c->next;
  else
    return; /* not in the list */
  if (c->next)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
  vh->nconns--;
}

srv_proxy *tunnel__srv_vhost_route(srv_vhost *vh, const char *host,
                                   size_t host_len, const char *path,
                                   size_t path_len) {
  if (!vh->router)
    return NULL;
  return tunnel__router_lookup(vh->router, host, host_len, path, path_len);
}

/* Appends "name[:port]" to the list of public names. */
static void add_addr(const srv_vhost *vh, char *out, size_t cap,
                     const char *name) {
  size_t n = strlen(out);
  if (n >= cap)
    return;
  uint16_t dflt = vh->https ? 443 : 80;
  if (vh->port == dflt)
    snprintf(out + n, cap - n, "%s%s", n ? "," : "", name);
  else
    snprintf(out + n, cap - n, "%s%s:%u", n ? "," : "", name, vh->port);
}

static int ends_with_domain(const char *name, const char *dom) {
  size_t n = strlen(name), d = strlen(dom);
  return n > d && name[n - d - 1] == '.' && strcmp(name + n - d, dom) == 0;
}

/* Routes `name` under every location the proxy asked for. */
static int add_name(srv_vhost *vh, srv_proxy *p, const tunnel__msg *m,
                    const char *name, char *err, size_t errlen) {
  size_t nloc = vh->https ? 0 : m->locations.n;
  for (size_t i = 0; i < (nloc ? nloc : 1); i++) {
    const char *loc = nloc ? m->locations.v[i] : "";
    int rc = tunnel__router_add(vh->router, name, loc, p);
    if (rc == TUNNEL_EEXIST) {
      srv_proxy *holder = tunnel__router_find(vh->router, name, loc);
      snprintf(err, errlen, "name [%.100s%s%.60s] is already used by %s",
               name, *loc ? "" : "", loc,
               holder && holder->ctl == p->ctl ? "another proxy of this client"
                                               : "another client");
      return rc;
    }
    if (rc == TUNNEL_EINVAL) {
      snprintf(err, errlen, "invalid name [%.100s] or location [%.60s]",
               name, loc);
      return rc;
    }
    if (rc)
      return rc;
  }
  return 0;
}

int tunnel__srv_vhost_register(srv_vhost *vh, srv_proxy *p,
                               const tunnel__msg *m, char *remote_addr,
                               size_t ralen, char *err, size_t errlen) {
  tunnel_server *srv = p->srv;
  const char *kind = vh->https ? "https" : "http";
  if (!vh->listening) {
    snprintf(err, errlen, "type [%s] is not enabled on this server", kind);
    return TUNNEL_ENOTSUP;
  }
  if (m->use_encryption || m->use_compression) {
    /* Requests are read and routed here: a ciphered work channel would
     * reach the service as noise. */
    snprintf(err, errlen,
             "%s proxies with use_encryption or use_compression are not "
             "supported by this server",
             kind);
    return TUNNEL_EINVAL;
  }
  const char *dom = domain(srv);
  remote_addr[0] = '\0';
  char name[300];
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < m->custom_domains.n; i++) {
    const char *d = m->custom_domains.v[i];
    size_t n = strlen(d);
    if (n == 0 || n >= sizeof name) {
      snprintf(err, errlen, "invalid domain [%.100s]", d);
      rc = TUNNEL_EINVAL;
      break;
    }
    for (size_t k = 0; k <= n; k++)
      name[k] = (char)(d[k] >= 'A' && d[k] <= 'Z' ? d[k] - 'A' + 'a' : d[k]);
    /* Names under the server's domain are handed out as subdomains:
     * a custom domain must not take one (frp's rule). */
    if (ends_with_domain(name, dom)) {
      snprintf(err, errlen,
               "custom domain [%.100s] should not belong to subdomain host "
               "[%.100s]",
               name, dom);
      rc = TUNNEL_EINVAL;
      break;
    }
    rc = add_name(vh, p, m, name, err, errlen);
    if (rc == 0)
      add_addr(vh, remote_addr, ralen, name);
  }
  if (rc == 0 && m->subdomain && *m->subdomain) {
    if (strchr(m->subdomain, '.') || strchr(m->subdomain, '*')) {
      snprintf(err, errlen, "subdomain [%.100s] must be a single label",
               m->subdomain);
      rc = TUNNEL_EINVAL;
    } else {
      snprintf(name, sizeof name, "%s.%s", m->subdomain, dom);
      rc = add_name(vh, p, m, name, err, errlen);
      if (rc == 0)
        add_addr(vh, remote_addr, ralen, name);
    }
  }
  if (rc == 0 && !m->custom_domains.n && !(m->subdomain && *m->subdomain)) {
    uint8_t r[RANDOM_NAME_BYTES];
    char label[TUNNEL__ROUTER_LABEL_LEN(RANDOM_NAME_BYTES) + 1];
    rc = tunnel__uv_err(uv_random(NULL, NULL, r, sizeof r, 0, NULL));
    if (rc == 0 && tunnel__router_random_label(r, sizeof r, label,
                                               sizeof label) < 0)
      rc = TUNNEL_EINVAL;
    if (rc == 0) {
      snprintf(name, sizeof name, "%s.%s", label, dom);
      rc = add_name(vh, p, m, name, err, errlen);
      if (rc == 0)
        add_addr(vh, remote_addr, ralen, name);
    }
  }
  if (rc) {
    tunnel__router_remove_target(vh->router, p);
    if (!err[0])
      snprintf(err, errlen, "cannot register the names: %s",
               tunnel_strerror(rc));
    return rc;
  }
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] %s proxy %s serves %s", p->ctl->run_id, kind,
              p->name, remote_addr);
  return 0;
}

void tunnel__srv_vhost_unregister(srv_vhost *vh, srv_proxy *p) {
  if (vh->router)
    tunnel__router_remove_target(vh->router, p);
  for (srv_vconn *c = vh->conns, *next; c; c = next) {
    next = c->next;
    c->proxy_gone(c, p);
  }
}
