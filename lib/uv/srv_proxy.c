/* Proxy registration, whatever the kind: names, per-client caps, the
 * NewProxy/CloseProxy exchange, and StartWorkConn. Each kind (srv_tcp.c,
 * ...) opens and closes its public side behind srv_kind. */
#include <stdio.h>
#include <string.h>

#include "srv.h"

#define MEM tunnel__srv_mem

/* Longest proxy name accepted: names are echoed in replies and logs. */
#define MAX_PROXY_NAME 255

static const srv_kind *const kinds[] = {
    &tunnel__srv_kind_tcp, &tunnel__srv_kind_http, &tunnel__srv_kind_https,
    &tunnel__srv_kind_udp, &tunnel__srv_kind_stcp};

static const srv_kind *find_kind(const char *type) {
  for (size_t i = 0; type && i < sizeof kinds / sizeof kinds[0]; i++)
    if (strcmp(kinds[i]->type, type) == 0)
      return kinds[i];
  return NULL;
}

static srv_proxy *find_proxy(tunnel_server *srv, const char *name) {
  for (srv_ctl *c = srv->ctls; c; c = c->next)
    for (srv_proxy *p = c->proxies; p; p = p->next)
      if (strcmp(p->name, name) == 0)
        return p;
  return NULL;
}

static void reply_proxy(srv_ctl *ctl, const char *name, const char *addr,
                        const char *error) {
  tunnel_server *srv = ctl->srv;
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_NEW_PROXY_RESP);
  int rc = tunnel__msg_set_str(MEM(srv), &r.proxy_name, name);
  if (rc == 0 && addr)
    rc = tunnel__msg_set_str(MEM(srv), &r.remote_addr, addr);
  if (rc == 0 && error)
    rc = tunnel__msg_set_str(MEM(srv), &r.error, error);
  if (error)
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] proxy %.64s refused: %s", ctl->run_id,
                name ? name : "", error);
  if (rc == 0)
    tunnel__srv_send_ctl(ctl, &r);
  tunnel__msg_clear(MEM(srv), &r);
}

void tunnel__srv_on_new_proxy(srv_ctl *ctl, const tunnel__msg *m) {
  tunnel_server *srv = ctl->srv;
  char err[160];
  const char *name = m->proxy_name ? m->proxy_name : "";
  if (!*name) {
    reply_proxy(ctl, name, NULL, "proxy name is empty");
    return;
  }
  if (srv->draining) {
    reply_proxy(ctl, name, NULL, "server is shutting down");
    return;
  }
  if (strlen(name) > MAX_PROXY_NAME) {
    snprintf(err, sizeof err, "proxy name is longer than %d bytes",
             MAX_PROXY_NAME);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  if (ctl->nproxies >= srv->cfg.max_proxies) {
    snprintf(err, sizeof err, "too many proxies for one client (limit %u)",
             srv->cfg.max_proxies);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  const srv_kind *kind = find_kind(m->proxy_type);
  if (!kind) {
    snprintf(err, sizeof err, "proxy type [%.32s] is not supported",
             m->proxy_type ? m->proxy_type : "");
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  if (find_proxy(srv, name)) {
    snprintf(err, sizeof err, "proxy [%.64s] is already in use", name);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  srv_proxy *p = tunnel__calloc(MEM(srv), 1, sizeof *p);
  if (p)
    p->traffic = tunnel__calloc(MEM(srv), 1, sizeof *p->traffic);
  if (!p || !p->traffic || !(p->name = tunnel__strdup(MEM(srv), name))) {
    if (p)
      tunnel__free(MEM(srv), p->traffic);
    tunnel__free(MEM(srv), p);
    reply_proxy(ctl, name, NULL, "server out of memory");
    return;
  }
  p->srv = srv;
  p->ctl = ctl;
  p->kind = kind;
  p->traffic->refs = 1;
  p->traffic->all = &srv->traffic;
  char addr[300] = "";
  err[0] = '\0';
  int rc = kind->open(p, m, addr, sizeof addr, err, sizeof err);
  if (rc) {
    if (!err[0])
      snprintf(err, sizeof err, "cannot open the proxy: %s",
               tunnel_strerror(rc));
    tunnel__free(MEM(srv), p->traffic);
    tunnel__free(MEM(srv), p->name);
    tunnel__free(MEM(srv), p);
    reply_proxy(ctl, name, NULL, err);
    return;
  }
  /* Without it the status shows an empty address: not worth refusing. */
  p->public_addr = tunnel__strdup(MEM(srv), addr);
  p->since_ms = uv_now(srv->loop);
  uv_timeval64_t tv;
  p->since_unix = uv_gettimeofday(&tv) == 0 ? tv.tv_sec : 0;
  srv->objects++;
  p->next = ctl->proxies;
  ctl->proxies = p;
  ctl->nproxies++;
  reply_proxy(ctl, name, addr, NULL);
}

static void proxy_close(srv_proxy *p) {
  tunnel__log(&p->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] proxy %s (%s) closed", p->ctl->run_id, p->name,
              p->kind->type);
  p->kind->close(p);
}

void tunnel__srv_on_close_proxy(srv_ctl *ctl, const tunnel__msg *m) {
  if (!m->proxy_name)
    return;
  for (srv_proxy **pp = &ctl->proxies; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->name, m->proxy_name) == 0) {
      srv_proxy *p = *pp;
      *pp = p->next;
      ctl->nproxies--;
      proxy_close(p);
      return;
    }
  }
}

void tunnel__srv_close_proxies(srv_ctl *ctl) {
  while (ctl->proxies) {
    srv_proxy *p = ctl->proxies;
    ctl->proxies = p->next;
    ctl->nproxies--;
    proxy_close(p);
  }
}

void tunnel__srv_proxy_free(srv_proxy *p) {
  tunnel_server *srv = p->srv;
  tunnel__traffic_unref(MEM(srv), p->traffic);
  tunnel__free(MEM(srv), p->public_addr);
  tunnel__free(MEM(srv), p->name);
  tunnel__free(MEM(srv), p);
  srv->objects--;
  tunnel__srv_maybe_finish_close(srv);
}

int tunnel__srv_start_work(srv_proxy *p, tunnel_stream *st, const char *src,
                           uint16_t src_port, const char *dst,
                           uint16_t dst_port) {
  tunnel_server *srv = p->srv;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_START_WORK_CONN);
  int rc = tunnel__msg_set_str(MEM(srv), &m.proxy_name, p->name);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(srv), &m.src_addr, src);
  if (rc == 0)
    rc = tunnel__msg_set_str(MEM(srv), &m.dst_addr, dst);
  m.src_port = src_port;
  m.dst_port = dst_port;
  if (rc == 0)
    rc = tunnel__srv_send_plain(srv, st, &m);
  tunnel__msg_clear(MEM(srv), &m);
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_DEBUG,
              "server: [%s] visitor %s:%u -> proxy %s", p->ctl->run_id, src,
              src_port, p->name);
  return rc;
}

/* Random probes per proxy before "no free port". */
#define PORT_TRIES 64

int tunnel__srv_pick_port(const struct tunnel_config *cfg, int64_t wanted,
                          int (*try_port)(void *ud, uint16_t port), void *ud,
                          char *err, size_t errlen) {
  int rc;
  if (wanted) {
    rc = try_port(ud, (uint16_t)wanted);
    if (rc == TUNNEL_EADDRINUSE)
      snprintf(err, errlen, "port %lld is already in use", (long long)wanted);
    return rc;
  }
  /* Random probes spread clients over the range and stay cheap when most
   * ports are taken; a failing probe costs one bind. */
  uint32_t span = (uint32_t)cfg->port_hi - cfg->port_lo + 1;
  rc = TUNNEL_EADDRINUSE;
  for (int i = 0; i < PORT_TRIES && rc == TUNNEL_EADDRINUSE; i++) {
    uint32_t r = 0;
    uv_random(NULL, NULL, &r, sizeof r, 0, NULL);
    rc = try_port(ud, (uint16_t)(cfg->port_lo + r % span));
  }
  if (rc == TUNNEL_EADDRINUSE)
    snprintf(err, errlen, "no free port in %u-%u", cfg->port_lo,
             cfg->port_hi);
  return rc;
}
