/* The server's statistics API: counters kept where things happen (logins,
 * the work pool, splices...), gauges computed when read, and a walk over
 * the registered proxies for status pages. */
#include <string.h>

#include "srv.h"

struct tunnel_server_proxy_info {
  const srv_proxy *p;
};

struct tunnel_server_client_info {
  const srv_ctl *c;
};

static uint64_t count_proxies(const tunnel_server *srv, const srv_kind *k) {
  uint64_t n = 0;
  for (const srv_ctl *c = srv->ctls; c; c = c->next)
    for (const srv_proxy *p = c->proxies; p; p = p->next)
      n += p->kind == k;
  return n;
}

static uint64_t count_streams(const tunnel_server *srv) {
  uint64_t n = 0;
  for (const srv_sess *s = srv->sessions; s; s = s->next)
    n += tunnel__mux_stream_count(s->mux);
  return n;
}

int tunnel_server_stat(const tunnel_server *srv, int32_t which,
                       uint64_t *value) {
  if (!srv || !value || which < 0 || which >= TUNNEL_SERVER_STAT_COUNT_)
    return TUNNEL_EINVAL;
  switch (which) {
  case TUNNEL_SERVER_STAT_CLIENTS:
    *value = srv->nctl;
    break;
  case TUNNEL_SERVER_STAT_PROXIES_TCP:
    *value = count_proxies(srv, &tunnel__srv_kind_tcp);
    break;
  case TUNNEL_SERVER_STAT_PROXIES_HTTP:
    *value = count_proxies(srv, &tunnel__srv_kind_http);
    break;
  case TUNNEL_SERVER_STAT_PROXIES_HTTPS:
    *value = count_proxies(srv, &tunnel__srv_kind_https);
    break;
  case TUNNEL_SERVER_STAT_PROXIES_STCP:
    *value = count_proxies(srv, &tunnel__srv_kind_stcp);
    break;
  case TUNNEL_SERVER_STAT_VISITORS_OPEN:
    *value = srv->traffic.open;
    break;
  case TUNNEL_SERVER_STAT_BYTES_IN:
    *value = srv->traffic.in;
    break;
  case TUNNEL_SERVER_STAT_BYTES_OUT:
    *value = srv->traffic.out;
    break;
  case TUNNEL_SERVER_STAT_STREAMS_OPEN:
    *value = count_streams(srv);
    break;
  default:
    *value = srv->stats[which];
    break;
  }
  return 0;
}

int tunnel_server_foreach_proxy(const tunnel_server *srv,
                                tunnel_server_proxy_cb cb, void *user_data) {
  if (!srv || !cb)
    return TUNNEL_EINVAL;
  for (const srv_ctl *c = srv->ctls; c; c = c->next) {
    for (const srv_proxy *p = c->proxies; p; p = p->next) {
      tunnel_server_proxy_info info = {p};
      int rc = cb(&info, user_data);
      if (rc)
        return rc;
    }
  }
  return 0;
}

int tunnel_server_foreach_client(const tunnel_server *srv,
                                 tunnel_server_client_cb cb, void *user_data) {
  if (!srv || !cb)
    return TUNNEL_EINVAL;
  for (const srv_ctl *c = srv->ctls; c; c = c->next) {
    tunnel_server_client_info info = {c};
    int rc = cb(&info, user_data);
    if (rc)
      return rc;
  }
  return 0;
}

const char *tunnel_server_client_run_id(const tunnel_server_client_info *i) {
  return i ? i->c->run_id : "";
}

const char *tunnel_server_client_addr(const tunnel_server_client_info *i) {
  return i ? i->c->addr : "";
}

const char *tunnel_server_client_version(const tunnel_server_client_info *i) {
  return i ? i->c->version : "";
}

uint64_t tunnel_server_client_since_ms(const tunnel_server_client_info *i) {
  return i ? i->c->since_ms : 0;
}

int64_t tunnel_server_client_since_unix(const tunnel_server_client_info *i) {
  return i ? i->c->since_unix : 0;
}

uint32_t tunnel_server_client_proxies(const tunnel_server_client_info *i) {
  return i ? i->c->nproxies : 0;
}

const char *tunnel_server_proxy_name(const tunnel_server_proxy_info *i) {
  return i ? i->p->name : NULL;
}

int tunnel_server_proxy_type(const tunnel_server_proxy_info *i) {
  if (!i)
    return TUNNEL_EINVAL;
  if (i->p->kind == &tunnel__srv_kind_http)
    return TUNNEL_PROXY_HTTP;
  if (i->p->kind == &tunnel__srv_kind_https)
    return TUNNEL_PROXY_HTTPS;
  if (i->p->kind == &tunnel__srv_kind_udp)
    return TUNNEL_PROXY_UDP;
  if (i->p->kind == &tunnel__srv_kind_stcp)
    return TUNNEL_PROXY_STCP;
  return TUNNEL_PROXY_TCP;
}

const char *tunnel_server_proxy_public_addr(const tunnel_server_proxy_info *i) {
  return !i ? NULL : i->p->public_addr ? i->p->public_addr : "";
}

const char *tunnel_server_proxy_run_id(const tunnel_server_proxy_info *i) {
  return i ? i->p->ctl->run_id : NULL;
}

const char *tunnel_server_proxy_client_addr(const tunnel_server_proxy_info *i) {
  return i ? i->p->ctl->addr : NULL;
}

uint64_t tunnel_server_proxy_since_ms(const tunnel_server_proxy_info *i) {
  return i ? i->p->since_ms : 0;
}

int64_t tunnel_server_proxy_since_unix(const tunnel_server_proxy_info *i) {
  return i ? i->p->since_unix : 0;
}

uint64_t tunnel_server_proxy_bytes_in(const tunnel_server_proxy_info *i) {
  return i ? i->p->traffic->in : 0;
}

uint64_t tunnel_server_proxy_bytes_out(const tunnel_server_proxy_info *i) {
  return i ? i->p->traffic->out : 0;
}

uint64_t tunnel_server_proxy_visitors_open(const tunnel_server_proxy_info *i) {
  return i ? i->p->traffic->open : 0;
}

uint64_t tunnel_server_proxy_visitors_total(const tunnel_server_proxy_info *i) {
  return i ? i->p->visitors_total : 0;
}
