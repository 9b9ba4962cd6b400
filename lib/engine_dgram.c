/* UDP proxies in the engine (include/tunnel/engine.h): frp carries every
 * datagram of a UDP proxy as a UDPPacket message over one work channel per
 * proxy (lib/udpmsg.h). The engine turns that channel into datagrams for
 * the program, and the program's replies into UDPPackets; it keeps the
 * channel alive with frp's Ping. A datagram that does not fit in the
 * channel's window is dropped, as a full UDP socket buffer would: it never
 * grows memory or holds up streams. */
#include <string.h>

#include "engine_int.h"
#include "log.h"
#include "udpmsg.h"

#define MEM(e) tunnel__eng_mem(e)

/* Stock frps drops a UDP work connection after 60 s without a message;
 * frpc pings every 30 s. */
#define DGRAM_PING_MS 30000u

void tunnel__eng_dgram_start(tunnel__eng_stream *st, tunnel__eng_proxy *p) {
  tunnel__eng_session *s = st->s;
  tunnel_engine *e = s->e;
  /* One channel per proxy: a new one replaces the old (the server asks
   * for another when it lost the first). */
  tunnel__eng_stream *old =
      p->dgram ? tunnel__eng_find_stream(s, p->dgram) : NULL;
  st->state = TUNNEL__ST_DGRAM;
  st->proxy = p->id;
  /* UDPPackets are larger than control messages: a 65,507-byte datagram
   * in base64, two addresses and frp's keys. The reader is between
   * messages here (StartWorkConn was its last). */
  tunnel__msg_reader_free(&st->reader);
  tunnel__msg_reader_init(
      &st->reader, MEM(e),
      (uint32_t)(tunnel__udp_encoded_size(TUNNEL__UDP_MAX_PAYLOAD, NULL) +
                 4u * TUNNEL__UDP_IP_MAX + 256u));
  st->next_ping = e->now + DGRAM_PING_MS;
  p->dgram = st->num;
  if (old && old != st)
    tunnel__eng_stream_discard(old);
}

void tunnel__eng_dgram_input(tunnel__eng_stream *st, const uint8_t *data,
                             size_t len) {
  tunnel__eng_session *s = st->s;
  tunnel_engine *e = s->e;
  uint32_t num = st->num, proxy = st->proxy;
  while (len) {
    uint8_t type;
    const uint8_t *body;
    size_t blen, used = 0;
    int rc = tunnel__msg_reader_next(&st->reader, data, len, &used, &type,
                                     &body, &blen);
    if (s->mux)
      tunnel__ymx_consumed(s->ymx, st->id, used);
    data += used;
    len -= used;
    if (rc == 0)
      return;
    if (rc < 0) {
      tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                  "engine: bad message on a UDP channel: %s",
                  tunnel_strerror(rc));
      tunnel__eng_stream_discard(st);
      return;
    }
    if (type != TUNNEL__MSG_UDP_PACKET)
      continue; /* Ping, or something newer: nothing to do */
    tunnel__udp_packet pk;
    rc = tunnel__udp_decode(MEM(e), body, blen, &pk);
    if (rc) {
      /* One bad datagram is dropped, as a bad UDP checksum would be. */
      tunnel__log(&e->cfg.log, TUNNEL_LOG_DEBUG,
                  "engine: UDPPacket dropped: %s", tunnel_strerror(rc));
      continue;
    }
    if (e->dgram_cb && pk.ip[0])
      e->dgram_cb(e, proxy, pk.ip, pk.port, pk.data, pk.len, e->ud);
    tunnel__udp_packet_free(MEM(e), &pk);
    /* The callback may have removed the proxy or ended the session. */
    if (s->dead || tunnel__eng_find_stream(s, num) != st)
      return;
  }
}

/* Queues a framed message on the channel if its window takes all of it. */
static int channel_put(tunnel__eng_stream *st, const tunnel__bufq *msg) {
  tunnel__eng_session *s = st->s;
  tunnel_engine *e = s->e;
  if (!s->mux) {
    if (st->out.size + msg->size > e->cfg.stream_window)
      return TUNNEL_ELIMIT;
    tunnel__iov v[8];
    size_t k = tunnel__bufq_iov(msg, v, 8);
    return tunnel__bufq_appendv(&st->out, v, k);
  }
  if (tunnel__ymx_send_window(s->ymx, st->id) < (int64_t)msg->size)
    return TUNNEL_ELIMIT;
  tunnel__iov v[8];
  size_t k = tunnel__bufq_iov(msg, v, 8);
  for (size_t i = 0; i < k; i++) {
    size_t w = 0;
    int rc = tunnel__ymx_write(s->ymx, st->id, v[i].base, v[i].len, &w);
    if (rc == 0 && w < v[i].len)
      rc = TUNNEL_ENOMEM; /* the window was checked: a torn message */
    if (rc) {
      tunnel__eng_stream_discard(st);
      return rc;
    }
  }
  return 0;
}

int tunnel_engine_datagram_send(tunnel_engine *e, uint32_t proxy,
                                const char *ip, uint16_t port,
                                const uint8_t *data, size_t len) {
  if (!e || !ip || (!data && len))
    return TUNNEL_EINVAL;
  if (len > TUNNEL__UDP_MAX_PAYLOAD)
    return TUNNEL_ELIMIT;
  tunnel__eng_proxy *p = tunnel__eng_proxy_by_id(e, proxy);
  if (!p || p->type != TUNNEL_ENGINE_PROXY_UDP)
    return TUNNEL_EINVAL;
  tunnel__eng_stream *st =
      e->s && p->dgram ? tunnel__eng_find_stream(e->s, p->dgram) : NULL;
  if (!st || st->state != TUNNEL__ST_DGRAM)
    return TUNNEL_ESTATE;
  tunnel__bufq q;
  tunnel__bufq_init(&q, MEM(e),
                    tunnel__udp_encoded_size(len, ip) + 16);
  int rc = tunnel__udp_encode(MEM(e), data, len, ip, port, &q);
  if (rc == 0) {
    tunnel__eng_enter(e);
    rc = channel_put(st, &q);
    tunnel__eng_leave(e);
  }
  tunnel__bufq_free(&q);
  return rc;
}

uint64_t tunnel__eng_dgram_tick(tunnel__eng_session *s, uint64_t next) {
  tunnel_engine *e = s->e;
  /* By proxy, not by stream: this runs at every tick, and a session may
   * carry thousands of streams but has few UDP proxies. */
  for (tunnel__eng_proxy *p = e->proxies, *nx; p && !s->dead; p = nx) {
    nx = p->next;
    tunnel__eng_stream *st =
        p->dgram ? tunnel__eng_find_stream(s, p->dgram) : NULL;
    if (!st || st->state != TUNNEL__ST_DGRAM)
      continue;
    if (e->now >= st->next_ping) {
      st->next_ping = e->now + DGRAM_PING_MS;
      tunnel__msg m;
      tunnel__msg_init(&m, TUNNEL__MSG_PING);
      tunnel__bufq q;
      tunnel__bufq_init(&q, MEM(e), 64);
      /* A full window already shows the channel alive: no ping needed. */
      if (tunnel__msg_encode(MEM(e), &m, &q) == 0)
        (void)channel_put(st, &q);
      tunnel__bufq_free(&q);
    }
    if (st->next_ping < next)
      next = st->next_ping;
  }
  return next;
}

int tunnel_engine_set_datagram_cb(tunnel_engine *e,
                                  tunnel_engine_datagram_cb cb) {
  if (!e)
    return TUNNEL_EINVAL;
  e->dgram_cb = cb;
  return 0;
}
