#include "udpmsg.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "base64.h"
#include "msg.h"
#include "wire.h"

/* {"c":"","r":{"IP":"","Port":65535,"Zone":""}} without the strings. */
#define JSON_FIXED 48u

/* An address as Go prints it: characters JSON needs no escape for. */
static int ip_ok(const char *ip, size_t *ip_len, size_t *zone_at) {
  size_t n = strlen(ip);
  if (n == 0 || n >= TUNNEL__UDP_IP_MAX)
    return 0;
  *zone_at = n;
  for (size_t i = 0; i < n; i++) {
    char c = ip[i];
    if (c == '%') {
      if (*zone_at != n || i == 0 || i + 1 == n)
        return 0;
      *zone_at = i;
      continue;
    }
    if (c < 0x21 || c > 0x7e || c == '"' || c == '\\')
      return 0;
  }
  *ip_len = n;
  return 1;
}

size_t tunnel__udp_encoded_size(size_t len, const char *ip) {
  return TUNNEL__MSG_HEADER_SIZE + JSON_FIXED + tunnel__b64_len(len) +
         (ip ? strlen(ip) : 0);
}

int tunnel__udp_encode(const tunnel__mem *mem, const uint8_t *data,
                       size_t len, const char *ip, uint16_t port,
                       tunnel__bufq *out) {
  size_t ip_len, zone_at;
  if (len > TUNNEL__UDP_MAX_PAYLOAD || !ip || !ip_ok(ip, &ip_len, &zone_at))
    return TUNNEL_EINVAL;
  size_t cap = tunnel__udp_encoded_size(len, ip) + 1;
  uint8_t *buf = tunnel__malloc(mem, cap);
  if (!buf)
    return TUNNEL_ENOMEM;
  uint8_t *p = buf + TUNNEL__MSG_HEADER_SIZE;
  size_t room = cap - TUNNEL__MSG_HEADER_SIZE;
  memcpy(p, "{\"c\":\"", 6);
  tunnel__b64_encode(p + 6, data, len);
  size_t at = 6 + tunnel__b64_len(len);
  /* Go's net.UDPAddr: the zone travels apart from the address. */
  int w = snprintf((char *)p + at, room - at,
                   "\",\"r\":{\"IP\":\"%.*s\",\"Port\":%u,\"Zone\":\"%s\"}}",
                   (int)zone_at, ip, (unsigned)port,
                   zone_at < ip_len ? ip + zone_at + 1 : "");
  size_t body = at + (size_t)w;
  buf[0] = TUNNEL__MSG_UDP_PACKET;
  tunnel__put64(buf + 1, (uint64_t)body);
  int rc = tunnel__bufq_append(out, buf, TUNNEL__MSG_HEADER_SIZE + body);
  tunnel__free(mem, buf);
  return rc;
}

void tunnel__udp_packet_free(const tunnel__mem *mem, tunnel__udp_packet *p) {
  tunnel__free(mem, p->data);
  memset(p, 0, sizeof *p);
}

static int decode_addr(const cJSON *a, tunnel__udp_packet *out) {
  if (cJSON_IsNull(a))
    return 0;
  if (!cJSON_IsObject(a))
    return TUNNEL_EPROTO;
  const cJSON *ip = cJSON_GetObjectItemCaseSensitive(a, "IP");
  const cJSON *port = cJSON_GetObjectItemCaseSensitive(a, "Port");
  const cJSON *zone = cJSON_GetObjectItemCaseSensitive(a, "Zone");
  if ((ip && !cJSON_IsString(ip) && !cJSON_IsNull(ip)) ||
      (port && !cJSON_IsNumber(port)) ||
      (zone && !cJSON_IsString(zone) && !cJSON_IsNull(zone)))
    return TUNNEL_EPROTO;
  const char *ips = cJSON_IsString(ip) ? ip->valuestring : "";
  const char *zs = cJSON_IsString(zone) ? zone->valuestring : "";
  if (strchr(ips, '%') || strchr(zs, '%'))
    return TUNNEL_EPROTO; /* the zone travels in "Zone" only */
  if (port) {
    double d = port->valuedouble;
    if (!(d >= 0 && d <= 65535) || d != (double)(int)d)
      return TUNNEL_EPROTO;
    out->port = (uint16_t)d;
  }
  int n = *zs ? snprintf(out->ip, sizeof out->ip, "%s%%%s", ips, zs)
              : snprintf(out->ip, sizeof out->ip, "%s", ips);
  size_t ip_len, zone_at;
  if (n < 0 || (size_t)n >= sizeof out->ip ||
      (n > 0 && !ip_ok(out->ip, &ip_len, &zone_at)))
    return TUNNEL_EPROTO;
  return 0;
}

/* Consumes `lit` at *p. */
static int take(const uint8_t **p, const uint8_t *end, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
    return 0;
  *p += n;
  return 1;
}

/* Consumes characters of `set` up to the next '"'; 0 for any other. */
static int span(const uint8_t **p, const uint8_t *end, const uint8_t *set,
                const uint8_t **start, size_t *n) {
  const uint8_t *q = *p;
  while (q < end && set[*q])
    q++;
  if (q == end || *q != '"')
    return 0;
  *start = *p;
  *n = (size_t)(q - *p);
  *p = q;
  return 1;
}

static const uint8_t b64_chars[256] = {
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1,
    ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1,
    ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1,
    ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1, ['0'] = 1, ['1'] = 1,
    ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['+'] = 1, ['/'] = 1, ['='] = 1,
};

static const uint8_t ip_chars[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1,
    ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['A'] = 1, ['B'] = 1,
    ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['.'] = 1, [':'] = 1,
};

/* The one shape Go's encoder (frp) and ours give a datagram with content
 * and no zone, {"c":"B64","r":{"IP":"ADDR","Port":N,"Zone":""}}, read
 * without a JSON parser: the general path costs more than the datagram.
 * 1 when the body has that shape (*rc says how decoding went), 0 when it
 * must take the general path. Whatever this accepts, the general path
 * decodes to the same packet (the fuzz target checks it). */
static int decode_canonical(const tunnel__mem *mem, const uint8_t *json,
                            size_t len, tunnel__udp_packet *out, int *rc) {
  const uint8_t *p = json, *end = json + len, *b64, *ip;
  size_t blen, iplen;
  if (!take(&p, end, "{\"c\":\"") || !span(&p, end, b64_chars, &b64, &blen) ||
      blen == 0 || !take(&p, end, "\",\"r\":{\"IP\":\"") ||
      !span(&p, end, ip_chars, &ip, &iplen) || iplen == 0 ||
      iplen >= sizeof out->ip || !take(&p, end, "\",\"Port\":"))
    return 0;
  unsigned long port = 0;
  const uint8_t *digits = p;
  while (p < end && *p >= '0' && *p <= '9' && p - digits < 6)
    port = port * 10 + (unsigned long)(*p++ - '0');
  if (p == digits || p - digits > 5 || port > 65535 ||
      (*digits == '0' && p - digits > 1) ||
      !take(&p, end, ",\"Zone\":\"\"}}") || p != end)
    return 0;
  if (blen > tunnel__b64_len(TUNNEL__UDP_MAX_PAYLOAD)) {
    *rc = TUNNEL_EPROTO;
    return 1;
  }
  memcpy(out->ip, ip, iplen);
  out->ip[iplen] = '\0';
  out->port = (uint16_t)port;
  size_t cap = blen / 4 * 3, olen = 0;
  out->data = tunnel__malloc(mem, cap);
  if (!out->data)
    *rc = TUNNEL_ENOMEM;
  else if (tunnel__b64_decode(out->data, cap, &olen, b64, blen) != 0)
    *rc = TUNNEL_EPROTO;
  else
    *rc = 0;
  out->len = olen;
  if (*rc == 0 && olen == 0) {
    tunnel__free(mem, out->data);
    out->data = NULL;
  }
  if (*rc)
    tunnel__udp_packet_free(mem, out);
  return 1;
}

int tunnel__udp_decode(const tunnel__mem *mem, const uint8_t *json,
                       size_t len, tunnel__udp_packet *out) {
  memset(out, 0, sizeof *out);
  int rc;
  if (decode_canonical(mem, json, len, out, &rc))
    return rc;
  return tunnel__udp_decode_general(mem, json, len, out);
}

int tunnel__udp_decode_general(const tunnel__mem *mem, const uint8_t *json,
                               size_t len, tunnel__udp_packet *out) {
  memset(out, 0, sizeof *out);
  /* Go's grammar, not cJSON's looser one. */
  if (!tunnel__msg_json_strict(json, len))
    return TUNNEL_EPROTO;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts((const char *)json, len, &end, 0);
  if (!root)
    return TUNNEL_EPROTO;
  int rc = cJSON_IsObject(root) && end ? 0 : TUNNEL_EPROTO;
  /* Nothing but whitespace after the object, as Go requires. */
  for (const char *q = rc ? NULL : end; q && q < (const char *)json + len; q++)
    if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r')
      rc = TUNNEL_EPROTO;
  const cJSON *c = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "c");
  const cJSON *r = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "r");
  if (c && !cJSON_IsString(c) && !cJSON_IsNull(c))
    rc = TUNNEL_EPROTO;
  if (rc == 0 && r)
    rc = decode_addr(r, out);
  const char *b64 = c && cJSON_IsString(c) ? c->valuestring : "";
  size_t blen = strlen(b64);
  if (rc == 0 &&
      blen > tunnel__b64_len(TUNNEL__UDP_MAX_PAYLOAD) + blen / 64 * 2)
    rc = TUNNEL_EPROTO;
  if (rc == 0 && blen) {
    size_t cap = blen / 4 * 3 + 3, olen = 0;
    out->data = tunnel__malloc(mem, cap);
    if (!out->data)
      rc = TUNNEL_ENOMEM;
    else if (tunnel__b64_decode(out->data, cap, &olen, (const uint8_t *)b64,
                                blen) != 0 ||
             olen > TUNNEL__UDP_MAX_PAYLOAD)
      rc = TUNNEL_EPROTO;
    out->len = olen;
    if (rc == 0 && olen == 0) {
      tunnel__free(mem, out->data);
      out->data = NULL;
    }
  }
  cJSON_Delete(root);
  if (rc)
    tunnel__udp_packet_free(mem, out);
  return rc;
}
