/* frp's UDPPacket codec and the raw message framer. The first byte picks
 * the mode. Even: the rest is a UDPPacket body; the decoder and its general
 * JSON path must agree; whatever decodes must re-encode, decode back to the
 * same payload and address, and re-encode to the same bytes. Odd: the rest is a byte stream for two framers, one fed
 * everything at once and one fed pseudo-random pieces; both must hand out
 * the same messages at the same offsets and stop alike. UDPPacket bodies
 * they hand out go through the codec check as well. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "udpmsg.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      abort();                                                                 \
  } while (0)

/* Encodes one datagram and returns the framed bytes in a fresh buffer. */
static uint8_t *encode(const tunnel__mem *mem, const tunnel__udp_packet *p,
                       size_t *len) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, mem, 1024);
  CHECK(tunnel__udp_encode(mem, p->data, p->len, p->ip, p->port, &q) == 0);
  uint8_t *out = malloc(q.size + 1);
  CHECK(out != NULL);
  *len = 0;
  while (q.size) {
    tunnel__iov iov[4];
    size_t n = tunnel__bufq_iov(&q, iov, 4);
    CHECK(n > 0);
    memcpy(out + *len, iov[0].base, iov[0].len);
    *len += iov[0].len;
    tunnel__bufq_consume(&q, iov[0].len);
  }
  tunnel__bufq_free(&q);
  CHECK(*len > TUNNEL__MSG_HEADER_SIZE &&
        *len <= tunnel__udp_encoded_size(p->len, p->ip));
  CHECK(out[0] == TUNNEL__MSG_UDP_PACKET);
  CHECK(tunnel__be64(out + 1) == *len - TUNNEL__MSG_HEADER_SIZE);
  return out;
}

static void check_same(const tunnel__udp_packet *a,
                       const tunnel__udp_packet *b) {
  CHECK(a->len == b->len);
  CHECK(a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
  CHECK(strcmp(a->ip, b->ip) == 0);
  CHECK(a->port == b->port);
}

static void check_body(const tunnel__mem *mem, const uint8_t *body,
                       size_t len) {
  tunnel__udp_packet p, g;
  int rc = tunnel__udp_decode(mem, body, len, &p);
  CHECK(rc == 0 || rc == TUNNEL_EPROTO);
  /* The shortcut for the common shape agrees with the general path. */
  CHECK(tunnel__udp_decode_general(mem, body, len, &g) == rc);
  if (rc == 0)
    check_same(&p, &g);
  tunnel__udp_packet_free(mem, &g);
  if (rc) {
    CHECK(p.data == NULL && p.len == 0);
    return;
  }
  CHECK(p.len <= TUNNEL__UDP_MAX_PAYLOAD);
  CHECK((p.len == 0) == (p.data == NULL));
  CHECK(memchr(p.ip, '\0', sizeof p.ip) != NULL);
  if (p.ip[0] == '\0') {
    /* No sender: nothing to address a reply to, so encoding refuses it. */
    tunnel__bufq q;
    tunnel__bufq_init(&q, mem, 64);
    CHECK(tunnel__udp_encode(mem, p.data, p.len, p.ip, p.port, &q) ==
          TUNNEL_EINVAL);
    CHECK(q.size == 0);
    tunnel__bufq_free(&q);
    memcpy(p.ip, "192.0.2.1", sizeof "192.0.2.1");
  }
  size_t wlen;
  uint8_t *wire = encode(mem, &p, &wlen);
  tunnel__udp_packet back;
  CHECK(tunnel__udp_decode(mem, wire + TUNNEL__MSG_HEADER_SIZE,
                           wlen - TUNNEL__MSG_HEADER_SIZE, &back) == 0);
  check_same(&p, &back);
  size_t wlen2;
  uint8_t *wire2 = encode(mem, &back, &wlen2);
  CHECK(wlen2 == wlen && memcmp(wire, wire2, wlen) == 0);
  free(wire);
  free(wire2);
  tunnel__udp_packet_free(mem, &back);
  tunnel__udp_packet_free(mem, &p);
}

/* Piece sizes: mostly short, sometimes empty, sometimes long. */
static size_t next_piece(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  *s = x;
  switch (x & 7) {
  case 0:
    return 0;
  case 1:
    return 1;
  case 2:
    return 9;
  case 3:
    return (x >> 8) % 512;
  default:
    return (x >> 8) % 17;
  }
}

static int pull_split(tunnel__msg_reader *r, const uint8_t *d, size_t n,
                      size_t *off, uint32_t *rng, uint8_t *type,
                      const uint8_t **body, size_t *blen) {
  for (;;) {
    size_t piece = next_piece(rng), used;
    if (piece > n - *off)
      piece = n - *off;
    int rc =
        tunnel__msg_reader_next(r, d + *off, piece, &used, type, body, blen);
    CHECK(used <= piece);
    *off += used;
    if (rc != 0)
      return rc;
    CHECK(used == piece);
    if (*off == n)
      return 0;
  }
}

static void frame(const tunnel__mem *mem, const uint8_t *d, size_t n,
                  uint8_t mode, uint32_t seed) {
  uint32_t max_body = mode & 2 ? 1u << 17 : 64u + (mode >> 2) * 8u;
  tunnel__msg_reader whole, split;
  tunnel__msg_reader_init(&whole, mem, max_body);
  tunnel__msg_reader_init(&split, mem, max_body);
  size_t off_w = 0, off_s = 0;
  uint32_t rng = seed * 2654435761u + 1;
  for (;;) {
    uint8_t type_w = 0, type_s = 0;
    const uint8_t *body_w = NULL, *body_s = NULL;
    size_t blen_w = 0, blen_s = 0, used;
    int rc_w = tunnel__msg_reader_next(&whole, d + off_w, n - off_w, &used,
                                       &type_w, &body_w, &blen_w);
    CHECK(used <= n - off_w);
    off_w += used;
    int rc_s =
        pull_split(&split, d, n, &off_s, &rng, &type_s, &body_s, &blen_s);
    CHECK(rc_w == rc_s);
    CHECK(off_w == off_s);
    if (rc_w != 1) {
      CHECK(rc_w == 0 || rc_w == TUNNEL_EPROTO || rc_w == TUNNEL_ELIMIT);
      if (rc_w == 0)
        CHECK(off_w == n);
      break;
    }
    CHECK(type_w == type_s && blen_w == blen_s);
    CHECK(blen_w <= max_body);
    CHECK(body_w != NULL && body_s != NULL);
    /* Fed everything, the framer hands out the body in place. */
    CHECK(blen_w == 0 || body_w == d + off_w - blen_w);
    CHECK(blen_w == 0 || memcmp(body_w, body_s, blen_w) == 0);
    CHECK(tunnel__msg_type_name(type_w) != NULL);
    if (type_s == TUNNEL__MSG_UDP_PACKET)
      check_body(mem, body_s, blen_s);
  }
  tunnel__msg_reader_free(&whole);
  tunnel__msg_reader_free(&split);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const tunnel__mem *mem = tunnel__mem_default();
  uint8_t mode = data[0];
  if ((mode & 1) == 0) {
    check_body(mem, data + 1, size - 1);
  } else if (size >= 2) {
    frame(mem, data + 2, size - 2, mode, data[1]);
  }
  return 0;
}
