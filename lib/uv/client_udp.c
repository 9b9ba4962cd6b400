/* UDP proxies on the client: each visitor address gets a socket of its own
 * towards the local service, so replies go back to the right visitor; a
 * mapping idle for the proxy's idle time is closed. Datagrams that cannot
 * be sent at once are dropped, as UDP would. */
#include <string.h>

#include "../log.h"
#include "client_int.h"

#define MEM(c) tunnel__client_mem(c)

struct tunnel__cl_udp_peer {
  tunnel__cl_udp_peer *next;
  tunnel_proxy *p; /* NULL once closing */
  tunnel_client *c;
  uv_udp_t sock;
  char ip[64];
  uint16_t port;
  uint64_t last; /* loop time of the last datagram either way */
};

typedef tunnel__cl_udp_peer peer;

static void peer_closed(uv_handle_t *h) {
  peer *u = h->data;
  tunnel_client *c = u->c;
  tunnel__free(MEM(c), u);
  c->handles--;
  tunnel__client_maybe_finish_close(c);
}

static void peer_close(peer *u) {
  u->p = NULL;
  uv_close((uv_handle_t *)&u->sock, peer_closed);
}

static void recv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  peer *u = h->data;
  (void)hint;
  /* Copied out before the callback returns: the client's shared buffer. */
  *buf = uv_buf_init((char *)u->c->readbuf, TUNNEL__CLIENT_READBUF);
}

static void on_reply(uv_udp_t *h, ssize_t n, const uv_buf_t *buf,
                     const struct sockaddr *addr, unsigned flags) {
  peer *u = h->data;
  (void)addr;
  if (!u->p || n <= 0 || (flags & UV_UDP_PARTIAL))
    return; /* nothing, an ICMP error from the service, or truncated */
  tunnel_client *c = u->c;
  u->last = uv_now(c->loop);
  int rc = tunnel_engine_datagram_send(c->eng, u->p->id, u->ip, u->port,
                                       (const uint8_t *)buf->base,
                                       (size_t)n);
  if (rc == 0)
    tunnel__client_flush_soon(c);
  else
    u->p->udp_dropped++;
}

/* The local service's address: numeric, or "localhost". */
static int local_addr(tunnel_proxy *p, struct sockaddr_storage *ss) {
  const char *h = p->local_host;
  if (strcmp(h, "localhost") == 0)
    h = "127.0.0.1";
  return tunnel__parse_addr(h, p->local_port, ss);
}

static void sweep(uv_timer_t *t) {
  tunnel_proxy *p = t->data;
  uint64_t now = uv_now(p->c->loop);
  for (peer **pp = &p->peers; *pp;) {
    peer *u = *pp;
    if (now - u->last >= p->udp_idle_ms) {
      *pp = u->next;
      p->npeers--;
      peer_close(u);
    } else {
      pp = &u->next;
    }
  }
  if (!p->peers)
    uv_timer_stop(t);
}

static peer *peer_get(tunnel_proxy *p, const char *ip, uint16_t port) {
  tunnel_client *c = p->c;
  for (peer **pp = &p->peers; *pp; pp = &(*pp)->next) {
    peer *u = *pp;
    if (u->port == port && strcmp(u->ip, ip) == 0) {
      /* Busy visitors stay near the front. */
      *pp = u->next;
      u->next = p->peers;
      p->peers = u;
      return u;
    }
  }
  if (p->npeers >= TUNNEL__CLIENT_UDP_PEERS) {
    if (!p->udp_full_logged++)
      tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                  "client: %s: %u UDP visitors at once; datagrams from "
                  "more are dropped",
                  p->name, (unsigned)TUNNEL__CLIENT_UDP_PEERS);
    return NULL;
  }
  struct sockaddr_storage ss;
  if (strlen(ip) >= sizeof ((peer *)0)->ip || local_addr(p, &ss) != 0)
    return NULL;
  peer *u = tunnel__calloc(MEM(c), 1, sizeof *u);
  if (!u)
    return NULL;
  u->c = c;
  u->p = p;
  memcpy(u->ip, ip, strlen(ip) + 1);
  u->port = port;
  uv_udp_init(c->loop, &u->sock);
  u->sock.data = u;
  c->handles++;
  int rc = uv_udp_connect(&u->sock, (const struct sockaddr *)&ss);
  if (rc == 0)
    rc = uv_udp_recv_start(&u->sock, recv_alloc, on_reply);
  if (rc) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: %s: cannot reach the local UDP service: %s",
                p->name, uv_strerror(rc));
    peer_close(u);
    return NULL;
  }
  u->next = p->peers;
  p->peers = u;
  p->npeers++;
  if (!p->udp_sweep && (p->udp_sweep = tunnel__malloc(MEM(c),
                                                       sizeof *p->udp_sweep))) {
    uv_timer_init(c->loop, p->udp_sweep);
    p->udp_sweep->data = p;
    c->handles++;
  }
  if (p->udp_sweep && !uv_is_active((uv_handle_t *)p->udp_sweep)) {
    uint64_t every = p->udp_idle_ms / 4 ? p->udp_idle_ms / 4 : 1;
    uv_timer_start(p->udp_sweep, sweep, every, every);
  }
  return u;
}

void tunnel__client_datagram(tunnel_proxy *p, const char *ip, uint16_t port,
                             const uint8_t *data, size_t len) {
  if (!p->started || !p->local_host)
    return;
  peer *u = peer_get(p, ip, port);
  if (!u) {
    p->udp_dropped++;
    return;
  }
  u->last = uv_now(p->c->loop);
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  /* A full socket buffer drops the datagram: UDP semantics. */
  if (uv_udp_try_send(&u->sock, &b, 1, NULL) < 0)
    p->udp_dropped++;
}

static void sweep_closed(uv_handle_t *h) {
  tunnel_client *c = h->data;
  tunnel__free(MEM(c), h);
  c->handles--;
  tunnel__client_maybe_finish_close(c);
}

void tunnel__client_udp_close(tunnel_proxy *p, int all) {
  while (p->peers) {
    peer *u = p->peers;
    p->peers = u->next;
    peer_close(u);
  }
  p->npeers = 0;
  if (p->udp_sweep) {
    uv_timer_stop(p->udp_sweep);
    if (all) {
      p->udp_sweep->data = p->c;
      uv_close((uv_handle_t *)p->udp_sweep, sweep_closed);
      p->udp_sweep = NULL;
    }
  }
}
