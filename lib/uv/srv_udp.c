/* UDP proxies: a public UDP port per proxy and ONE work stream at a time
 * that carries frp messages both ways: a UDPPacket per visitor datagram
 * ("r" = the visitor) to the client, a UDPPacket per reply from it (sent
 * from the public port to "r"), and the client's Pings. When the work
 * stream ends another is asked for, after a delay that grows while streams
 * keep ending without carrying anything; datagrams arriving meanwhile are
 * dropped, as are those that would queue more than max_control_backlog
 * bytes on the work stream (a slow client loses datagrams, it does not
 * make the server buffer them or stall the session's other streams). */
#include <stdio.h>
#include <string.h>

#include "../udpmsg.h"
#include "dial.h"
#include "srv.h"
#include "stream.h"
#include "uverr.h"

#define MEM tunnel__srv_mem
#define CONTAINER TUNNEL__CONTAINER

/* The first work stream is asked for a little after the NewProxyResp: frpc
 * drops a StartWorkConn for a proxy it has not yet seen accepted, and the
 * two travel apart (a pooled work stream would be handed out at once). */
#define FIRST_WORK_DELAY_MS 500u
/* Between two work streams: the delay after one that carried nothing
 * doubles up to the cap, so a client that accepts and drops them cannot
 * make the server spin; one that carried a message resets it. */
#define RETRY_MIN_MS 100u
#define RETRY_MAX_MS 10000u
/* Kernel socket buffers asked for (best effort): bursts of datagrams wait
 * there while the loop is busy. */
#define SOCK_BUFFER (1024 * 1024)
/* Room in a UDPPacket body beyond the encoding of the largest payload with
 * the longest address: the "l" field and spacing a peer may add. */
#define BODY_SLACK 512u

typedef enum { W_IDLE, W_WAITING, W_ATTACHED } work_state;

typedef struct udp_proxy {
  tunnel_server *srv;
  srv_proxy *p; /* NULL after a failed open */
  uv_udp_t sock;
  uv_timer_t timer; /* next request, work timeout, or idle check */
  int handles;      /* of sock and timer, not yet closed */
  int family;       /* of the socket */
  uint16_t port;
  char bind_host[64];
  work_state state;
  srv_waiter w;
  tunnel_stream *st; /* W_ATTACHED */
  tunnel__msg_reader rd;
  tunnel__bufq enc;   /* one datagram's frame on its way to the stream */
  uint64_t last_rx;   /* loop time of the work stream's last message */
  int carried;        /* the work stream delivered a message */
  uint32_t retry_ms;
  int closing;
  tunnel__srv_udp_stats stats;
} udp_proxy;

static void schedule_request(udp_proxy *up, uint32_t delay_ms);

static tunnel_server *srv_of(udp_proxy *up) { return up->srv; }

/* The longest a work stream may stay silent: the heartbeat timeout (frpc
 * pings its UDP work connection every 30 s). 0: no limit. */
static uint64_t idle_limit_ms(udp_proxy *up) {
  return (uint64_t)srv_of(up)->cfg.heartbeat_timeout_s * 1000u;
}

/* Ends the work stream, if any (nothing is asked for here). */
static void detach(udp_proxy *up) {
  if (up->state != W_ATTACHED)
    return;
  tunnel_server *srv = srv_of(up);
  tunnel_stream *st = up->st;
  up->st = NULL;
  up->state = W_IDLE;
  uv_timer_stop(&up->timer);
  tunnel__msg_reader_free(&up->rd);
  tunnel__bufq_consume(&up->enc, up->enc.size);
  tunnel_stream_read_stop(st);
  tunnel_stream_close(st, NULL, NULL);
  tunnel__traffic_release(MEM(srv), up->p->traffic);
}

/* The work stream is gone: ask for the next one after the backoff. */
static void work_lost(udp_proxy *up, const char *why) {
  srv_proxy *p = up->p;
  tunnel__log(&p->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] udp proxy %s: work connection ended (%s)",
              p->ctl->run_id, p->name, why);
  if (up->carried)
    up->retry_ms = RETRY_MIN_MS;
  detach(up);
  schedule_request(up, up->retry_ms);
  up->retry_ms = up->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS
                                                 : up->retry_ms * 2;
}

/* ------------------------------------------------ client -> visitors */

/* `ip` as an address the socket can send to: an IPv4 address for an IPv6
 * socket becomes v4-mapped (Go prints a v4-mapped address as plain IPv4,
 * so frpc returns our "::ffff:a.b.c.d" as "a.b.c.d"). */
static int reply_addr(udp_proxy *up, const char *ip, uint16_t port,
                      struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (up->family == AF_INET)
    return uv_ip4_addr(ip, port, (struct sockaddr_in *)ss) == 0 ? 0 : -1;
  if (uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  char mapped[TUNNEL__UDP_IP_MAX + 8];
  struct sockaddr_in v4;
  if (uv_ip4_addr(ip, port, &v4) != 0)
    return -1;
  snprintf(mapped, sizeof mapped, "::ffff:%s", ip);
  return uv_ip6_addr(mapped, port, (struct sockaddr_in6 *)ss) == 0 ? 0 : -1;
}

static void on_packet(udp_proxy *up, const uint8_t *body, size_t len) {
  tunnel_server *srv = srv_of(up);
  tunnel__udp_packet pk;
  if (tunnel__udp_decode(MEM(srv), body, len, &pk) != 0) {
    up->stats.dropped_out++;
    return;
  }
  struct sockaddr_storage ss;
  if (!pk.ip[0] || reply_addr(up, pk.ip, pk.port, &ss) != 0) {
    up->stats.dropped_out++;
    tunnel__udp_packet_free(MEM(srv), &pk);
    return;
  }
  /* Never queued: a datagram the socket cannot take now is lost, as it
   * would be anywhere on the way. */
  uv_buf_t b = uv_buf_init(pk.data ? (char *)pk.data : (char *)"",
                           (unsigned)pk.len);
  int rc = uv_udp_try_send(&up->sock, &b, 1, (const struct sockaddr *)&ss);
  if (rc >= 0) {
    up->stats.datagrams_out++;
    tunnel__traffic_out(up->p->traffic, pk.len);
  } else {
    up->stats.dropped_out++;
  }
  tunnel__udp_packet_free(MEM(srv), &pk);
}

static void on_work_read(tunnel_stream *st, int status, const uint8_t *data,
                         size_t len, void *ud) {
  udp_proxy *up = ud;
  (void)st;
  if (status) {
    work_lost(up, tunnel_strerror(status));
    return;
  }
  size_t off = 0;
  while (off < len && up->state == W_ATTACHED) {
    uint8_t type;
    const uint8_t *body;
    size_t blen, used = 0;
    int rc = tunnel__msg_reader_next(&up->rd, data + off, len - off, &used,
                                     &type, &body, &blen);
    off += used;
    if (rc < 0) {
      work_lost(up, tunnel_strerror(rc));
      return;
    }
    if (rc == 0)
      break;
    up->last_rx = uv_now(srv_of(up)->loop);
    up->carried = 1;
    /* Pings only keep the stream alive; frp ignores anything else too. */
    if (type == TUNNEL__MSG_UDP_PACKET)
      on_packet(up, body, blen);
  }
}

/* ------------------------------------------------ visitors -> client */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  udp_proxy *up = h->data;
  (void)hint;
  /* Copied out (encoded) before the receive callback returns. */
  *buf = uv_buf_init((char *)srv_of(up)->readbuf, TUNNEL__SRV_READBUF_SIZE);
}

/* Queues one datagram's UDPPacket on the work stream, or drops it. */
static void forward(udp_proxy *up, const uint8_t *data, size_t n,
                    const struct sockaddr *from) {
  tunnel_server *srv = srv_of(up);
  char ip[TUNNEL__UDP_IP_MAX];
  uint16_t port = 0;
  tunnel__format_addr(from, ip, sizeof ip, &port);
  if (from->sa_family == AF_INET6) {
    uint32_t scope = ((const struct sockaddr_in6 *)from)->sin6_scope_id;
    char ifname[32];
    size_t iflen = sizeof ifname;
    size_t at = strlen(ip);
    if (scope && uv_if_indextoname(scope, ifname, &iflen) == 0 &&
        at + 1 + iflen < sizeof ip)
      snprintf(ip + at, sizeof ip - at, "%%%s", ifname);
  }
  size_t need = tunnel__udp_encoded_size(n, ip);
  if (up->state != W_ATTACHED ||
      tunnel_stream_write_queue_size(up->st) + need >
          srv->cfg.max_control_backlog) {
    up->stats.dropped_in++;
    return;
  }
  if (tunnel__udp_encode(MEM(srv), data, n, ip, port, &up->enc) != 0) {
    up->stats.dropped_in++;
    return;
  }
  while (up->enc.size) {
    tunnel__iov iov;
    tunnel__bufq_iov(&up->enc, &iov, 1);
    int rc = tunnel_stream_write(up->st, iov.base, iov.len, NULL, NULL);
    if (rc) {
      up->stats.dropped_in++;
      work_lost(up, tunnel_strerror(rc));
      return;
    }
    tunnel__bufq_consume(&up->enc, iov.len);
  }
  up->stats.datagrams_in++;
  tunnel__traffic_in(up->p->traffic, n);
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr, unsigned flags) {
  udp_proxy *up = h->data;
  (void)buf;
  /* nread 0 without an address: nothing more to read now. */
  if (nread < 0 || !addr || up->closing)
    return;
  if (flags & UV_UDP_PARTIAL) {
    up->stats.dropped_in++;
    return;
  }
  forward(up, (const uint8_t *)buf->base, (size_t)nread, addr);
}

/* ------------------------------------------------ the work stream */

static void on_timer(uv_timer_t *t);

static void arm_idle_check(udp_proxy *up) {
  uint64_t limit = idle_limit_ms(up);
  if (!limit)
    return;
  uint64_t now = uv_now(srv_of(up)->loop);
  uint64_t quiet = now - up->last_rx;
  uv_timer_start(&up->timer, on_timer, quiet >= limit ? 0 : limit - quiet,
                 0);
}

static void work_got(srv_waiter *w, tunnel_stream *st) {
  udp_proxy *up = CONTAINER(w, udp_proxy, w);
  srv_proxy *p = up->p;
  tunnel_server *srv = p->srv;
  uv_timer_stop(&up->timer);
  up->state = W_IDLE;
  if (up->closing) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  /* No addresses: the stream carries every visitor's datagrams. */
  int rc = tunnel__srv_start_work(p, st, "", 0, "", 0);
  if (rc == 0) {
    size_t max_body =
        tunnel__udp_encoded_size(TUNNEL__UDP_MAX_PAYLOAD,
                                 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                                 "%interface-name-of-20") +
        BODY_SLACK;
    tunnel__msg_reader_init(&up->rd, MEM(srv), (uint32_t)max_body);
    up->st = st;
    up->state = W_ATTACHED;
    up->carried = 0;
    up->last_rx = uv_now(srv->loop);
    up->stats.work_streams++;
    tunnel__traffic_hold(p->traffic);
    rc = tunnel_stream_read_start(st, on_work_read, up);
    if (rc) {
      work_lost(up, tunnel_strerror(rc));
      return;
    }
    arm_idle_check(up);
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_DEBUG,
                "server: [%s] udp proxy %s: work connection attached",
                p->ctl->run_id, p->name);
    return;
  }
  tunnel_stream_close(st, NULL, NULL);
  schedule_request(up, up->retry_ms);
  up->retry_ms = up->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS
                                                 : up->retry_ms * 2;
}

static void work_dropped(srv_waiter *w) {
  udp_proxy *up = CONTAINER(w, udp_proxy, w);
  uv_timer_stop(&up->timer);
  up->state = W_IDLE;
  /* The client is going: its proxies close with it. */
}

static void request_work(udp_proxy *up) {
  srv_proxy *p = up->p;
  tunnel_server *srv = p->srv;
  if (up->closing || p->ctl->dead || up->state != W_IDLE)
    return;
  up->state = W_WAITING;
  /* A work stream that does not come in time is asked for again. */
  uv_timer_start(&up->timer, on_timer, srv->cfg.work_conn_timeout_ms, 0);
  if (tunnel__srv_want_work(p->ctl, &up->w) != 0) {
    /* Too many visitors wait on this client: try again later. */
    up->state = W_IDLE;
    schedule_request(up, RETRY_MAX_MS);
  }
}

static void on_timer(uv_timer_t *t) {
  udp_proxy *up = t->data;
  srv_proxy *p = up->p;
  switch (up->state) {
  case W_IDLE:
    request_work(up);
    break;
  case W_WAITING:
    tunnel__log(&p->srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] udp proxy %s: no work connection in time",
                p->ctl->run_id, p->name);
    tunnel__srv_cancel_work(p->ctl, &up->w);
    up->state = W_IDLE;
    schedule_request(up, up->retry_ms);
    break;
  case W_ATTACHED:
    if (uv_now(p->srv->loop) - up->last_rx >= idle_limit_ms(up))
      work_lost(up, "silent for too long");
    else
      arm_idle_check(up);
    break;
  }
}

static void schedule_request(udp_proxy *up, uint32_t delay_ms) {
  if (up->closing || up->p->ctl->dead)
    return;
  uv_timer_start(&up->timer, on_timer, delay_ms, 0);
}

/* ------------------------------------------------ open and close */

/* Binds the public socket; 0 or an error (EADDRINUSE when taken). */
static int udp_bind(udp_proxy *up, uint16_t port);

static int try_bind(void *ud, uint16_t port) { return udp_bind(ud, port); }

static int udp_bind(udp_proxy *up, uint16_t port) {
  tunnel_server *srv = srv_of(up);
  const char *host = srv->cfg.proxy_bind_addr ? srv->cfg.proxy_bind_addr
                                              : "0.0.0.0";
  struct sockaddr_storage ss;
  int rc = tunnel__parse_addr(host, port, &ss);
  if (rc)
    return rc;
  rc = tunnel__uv_err(uv_udp_bind(&up->sock, (struct sockaddr *)&ss, 0));
  if (rc)
    return rc;
  up->family = ss.ss_family;
  snprintf(up->bind_host, sizeof up->bind_host, "%s", host);
  up->port = port;
  return 0;
}

static void handle_closed(uv_handle_t *h) {
  udp_proxy *up = h->data;
  srv_proxy *p = up->p;
  tunnel_server *srv = up->srv;
  srv->handles--;
  if (--up->handles)
    return;
  tunnel__bufq_free(&up->enc);
  tunnel__free(MEM(srv), up);
  if (p) {
    p->kind_data = NULL;
    tunnel__srv_proxy_free(p);
  } else {
    tunnel__srv_maybe_finish_close(srv);
  }
}

/* Closes both handles; the proxy record goes with the last. */
static void close_handles(udp_proxy *up) {
  up->closing = 1;
  up->handles = 2;
  uv_close((uv_handle_t *)&up->sock, handle_closed);
  uv_close((uv_handle_t *)&up->timer, handle_closed);
}

static int udp_open(srv_proxy *p, const tunnel__msg *m, char *remote_addr,
                    size_t ralen, char *err, size_t errlen) {
  tunnel_server *srv = p->srv;
  const struct tunnel_config *cfg = &srv->cfg;
  if (m->use_encryption || m->use_compression) {
    snprintf(err, errlen,
             "udp proxies with use_encryption or use_compression are not "
             "supported by this server");
    return TUNNEL_EINVAL;
  }
  if (m->remote_port < 0 || m->remote_port > 65535 ||
      (m->remote_port &&
       (m->remote_port < cfg->port_lo || m->remote_port > cfg->port_hi))) {
    snprintf(err, errlen, "port %lld is not allowed (allowed: %u-%u)",
             (long long)m->remote_port, cfg->port_lo, cfg->port_hi);
    return TUNNEL_ERANGE;
  }
  udp_proxy *up = tunnel__calloc(MEM(srv), 1, sizeof *up);
  if (!up)
    return TUNNEL_ENOMEM;
  up->srv = srv;
  up->p = p;
  up->retry_ms = RETRY_MIN_MS;
  tunnel__bufq_init(&up->enc, MEM(srv), 16u * 1024u);
  up->w.proxy = p;
  up->w.got = work_got;
  up->w.drop = work_dropped;
  /* Neither can fail: the socket is created by the bind. */
  uv_udp_init(srv->loop, &up->sock);
  uv_timer_init(srv->loop, &up->timer);
  up->sock.data = up->timer.data = up;
  srv->handles += 2;
  p->kind_data = up;
  int rc = tunnel__srv_pick_port(cfg, m->remote_port, try_bind, up, err,
                                 errlen);
  if (rc == 0)
    rc = tunnel__uv_err(uv_udp_recv_start(&up->sock, on_alloc, on_recv));
  if (rc) {
    if (!err[0])
      snprintf(err, errlen, "cannot bind: %s", tunnel_strerror(rc));
    /* The caller frees the proxy now; the record goes once its handles
     * have closed. */
    p->kind_data = NULL;
    up->p = NULL;
    close_handles(up);
    return rc;
  }
  int size = SOCK_BUFFER;
  (void)uv_recv_buffer_size((uv_handle_t *)&up->sock, &size);
  size = SOCK_BUFFER;
  (void)uv_send_buffer_size((uv_handle_t *)&up->sock, &size);
  schedule_request(up, FIRST_WORK_DELAY_MS);
  snprintf(remote_addr, ralen, ":%u", up->port);
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] udp proxy %s bound to %s:%u", p->ctl->run_id,
              p->name, up->bind_host, up->port);
  return 0;
}

static void udp_close(srv_proxy *p) {
  udp_proxy *up = p->kind_data;
  if (up->state == W_WAITING)
    tunnel__srv_cancel_work(p->ctl, &up->w);
  up->state = up->state == W_WAITING ? W_IDLE : up->state;
  detach(up);
  uv_timer_stop(&up->timer);
  tunnel__log(&p->srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] udp proxy %s: %llu datagrams in, %llu out, "
              "%llu dropped in, %llu dropped out",
              p->ctl->run_id, p->name,
              (unsigned long long)up->stats.datagrams_in,
              (unsigned long long)up->stats.datagrams_out,
              (unsigned long long)up->stats.dropped_in,
              (unsigned long long)up->stats.dropped_out);
  close_handles(up);
}

int tunnel__srv_udp_stats_get(const srv_proxy *p, tunnel__srv_udp_stats *out) {
  if (!p || !out || p->kind != &tunnel__srv_kind_udp || !p->kind_data)
    return TUNNEL_EINVAL;
  *out = ((const udp_proxy *)p->kind_data)->stats;
  return 0;
}

const srv_kind tunnel__srv_kind_udp = {"udp", udp_open, udp_close};
