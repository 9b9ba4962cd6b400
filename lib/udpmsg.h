/* frp's UDPPacket message, which carries each datagram of a UDP proxy over
 * its work connection: {"c":BASE64,"l":ADDR,"r":ADDR}, ADDR being Go's
 * net.UDPAddr as JSON ({"IP":"1.2.3.4","Port":N,"Zone":""}). "r" is the
 * visitor (the remote sender); "l" is never set by frp. Sans-I/O. Encoded
 * directly (one per datagram: no JSON tree); decoded directly when the body
 * has the shape encoders produce, else with cJSON. */
#ifndef TUNNEL_LIB_UDPMSG_H
#define TUNNEL_LIB_UDPMSG_H

#include <stddef.h>
#include <stdint.h>

#include "bufq.h"
#include "mem.h"

/* The largest UDP payload (IPv4: 65,535 - 8 - 20). */
#define TUNNEL__UDP_MAX_PAYLOAD 65507u
/* A numeric address with an IPv6 zone: "ffff:...%eth0". */
#define TUNNEL__UDP_IP_MAX 64

typedef struct tunnel__udp_packet {
  uint8_t *data; /* owned; NULL when len is 0 */
  size_t len;
  char ip[TUNNEL__UDP_IP_MAX]; /* "r": "" when absent */
  uint16_t port;
} tunnel__udp_packet;

/* At most the framed message's size for a payload of `len` and an address. */
size_t tunnel__udp_encoded_size(size_t len, const char *ip);
/* Appends the framed message (type byte, length, JSON): all or nothing.
 * `ip` is numeric ("1.2.3.4", "::1", "fe80::1%eth0"). TUNNEL_EINVAL for a
 * payload above TUNNEL__UDP_MAX_PAYLOAD or an unusable address. */
int tunnel__udp_encode(const tunnel__mem *mem, const uint8_t *data,
                       size_t len, const char *ip, uint16_t port,
                       tunnel__bufq *out);
/* Decodes a UDPPacket body into *out (freed with tunnel__udp_packet_free;
 * nothing to free on error). TUNNEL_EPROTO for bad JSON, bad base64, a
 * payload above the limit, or an address of the wrong shape. */
int tunnel__udp_decode(const tunnel__mem *mem, const uint8_t *json,
                       size_t len, tunnel__udp_packet *out);
/* The same through the general JSON path alone (the decoder above takes a
 * shortcut for the shape frp and this codec produce): for tests. */
int tunnel__udp_decode_general(const tunnel__mem *mem, const uint8_t *json,
                               size_t len, tunnel__udp_packet *out);
void tunnel__udp_packet_free(const tunnel__mem *mem, tunnel__udp_packet *p);

#endif
