#include "udpmsg.h"

#include <cjson/cJSON.h>
#include <mbedtls/base64.h>
#include <stdio.h>
#include <string.h>

#include "msg.h"
#include "wire.h"

/* {"c":"","r":{"IP":"","Port":65535,"Zone":""}} without the strings. */
#define JSON_FIXED 48u

static size_t b64_len(size_t n) { return (n + 2) / 3 * 4; }

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
  return TUNNEL__MSG_HEADER_SIZE + JSON_FIXED + b64_len(len) +
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
  size_t olen = 0;
  if (len)
    mbedtls_base64_encode(p + 6, room - 6, &olen, data, len);
  size_t at = 6 + olen;
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

int tunnel__udp_decode(const tunnel__mem *mem, const uint8_t *json,
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
  if (rc == 0 && blen > b64_len(TUNNEL__UDP_MAX_PAYLOAD) + blen / 64 * 2)
    rc = TUNNEL_EPROTO;
  /* Go's decoder skips line breaks and nothing else, and wants whole
   * groups of four: mbedTLS would drop a short last group silently. */
  size_t chars = 0;
  for (size_t i = 0; rc == 0 && i < blen; i++) {
    if (b64[i] == '\r' || b64[i] == '\n')
      continue;
    if (b64[i] == ' ' || b64[i] == '\t')
      rc = TUNNEL_EPROTO;
    chars++;
  }
  if (rc == 0 && chars % 4)
    rc = TUNNEL_EPROTO;
  if (rc == 0 && blen) {
    size_t cap = blen / 4 * 3 + 3, olen = 0;
    out->data = tunnel__malloc(mem, cap);
    if (!out->data)
      rc = TUNNEL_ENOMEM;
    else if (mbedtls_base64_decode(out->data, cap, &olen,
                                   (const unsigned char *)b64, blen) != 0 ||
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
