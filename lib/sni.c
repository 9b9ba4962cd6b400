#include "sni.h"

#include <string.h>

#include "wire.h"

#define REC_HDR 5
#define HS_HDR 4
#define CT_HANDSHAKE 22
#define HT_CLIENT_HELLO 1
/* TLSCiphertext bound (RFC 8446 5.2); a plaintext hello is smaller still,
 * but peers are not punished for the slack the RFCs allow. */
#define REC_MAX (16384 + 2048)
#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
#define EXT_SUPPORTED_VERSIONS 43
/* First allocation for a hello that arrives in pieces: common hellos fit. */
#define BUF_MIN_CAP 512

void tunnel__sni_init(tunnel__sni *p, const tunnel__mem *mem,
                      size_t max_hello) {
  memset(p, 0, sizeof *p);
  p->mem = mem;
  p->max_hello = max_hello ? max_hello : TUNNEL__SNI_DEFAULT_MAX;
}

static void drop_buf(tunnel__sni *p) {
  tunnel__free(p->mem, p->buf);
  p->buf = NULL;
  p->buf_len = 0;
  p->buf_cap = 0;
}

void tunnel__sni_free(tunnel__sni *p) {
  drop_buf(p);
  tunnel__free(p->mem, p->alpn);
  p->alpn = NULL;
  p->alpn_len = 0;
}

static int fail(tunnel__sni *p, int err, const char *why) {
  drop_buf(p);
  p->result = err;
  p->why = why;
  return err;
}

/* ------------------------------------------------------- hello structure */

/* A bounded view: every read checks the bytes are there, so no length from
 * the peer can move a pointer past the message. */
typedef struct cur {
  const uint8_t *p;
  size_t n;
} cur;

static int get_bytes(cur *c, size_t k, cur *out) {
  if (c->n < k)
    return -1;
  out->p = c->p;
  out->n = k;
  c->p += k;
  c->n -= k;
  return 0;
}

static int get_u8(cur *c, unsigned *v) {
  if (c->n < 1)
    return -1;
  *v = c->p[0];
  c->p++;
  c->n--;
  return 0;
}

static int get_u16(cur *c, unsigned *v) {
  if (c->n < 2)
    return -1;
  *v = tunnel__be16(c->p);
  c->p += 2;
  c->n -= 2;
  return 0;
}

/* A vector with a one- or two-byte length prefix. */
static int get_vec8(cur *c, cur *out) {
  unsigned k;
  return get_u8(c, &k) ? -1 : get_bytes(c, k, out);
}

static int get_vec16(cur *c, cur *out) {
  unsigned k;
  return get_u16(c, &k) ? -1 : get_bytes(c, k, out);
}

/* Checks a host name and writes it lower-cased, without its one allowed
 * trailing dot, into out (TUNNEL__SNI_HOST_MAX + 1 bytes). NULL when valid,
 * otherwise the reason. */
static const char *check_host(cur name, char *out, size_t *out_len) {
  size_t n = name.n;
  if (n > TUNNEL__SNI_HOST_MAX)
    return "host name longer than 255 bytes";
  if (n && name.p[n - 1] == '.')
    n--;
  size_t label = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t ch = name.p[i];
    if (ch == '.') {
      if (label == 0)
        return "empty label in host name";
      label = 0;
    } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
               ch == '-') {
      label++;
    } else if (ch >= 'A' && ch <= 'Z') {
      ch = (uint8_t)(ch - 'A' + 'a');
      label++;
    } else {
      return "invalid byte in host name";
    }
    if (label > 63)
      return "label longer than 63 bytes in host name";
    out[i] = (char)ch;
  }
  /* Covers "", "." and a name ending in "..". */
  if (label == 0)
    return "empty label in host name";
  out[n] = '\0';
  *out_len = n;
  return NULL;
}

/* server_name (RFC 6066 3): a non-empty list of (name_type, opaque<1..>).
 * Entries of unknown types are skipped, as their form is assumed to be the
 * same; a second host_name is refused, since which one routes would be a
 * guess. */
static const char *parse_server_name(cur data, cur *host) {
  cur list;
  if (get_vec16(&data, &list) || data.n)
    return "server_name extension length mismatch";
  if (list.n == 0)
    return "empty server_name list";
  while (list.n) {
    unsigned type;
    cur name;
    if (get_u8(&list, &type) || get_vec16(&list, &name))
      return "server_name entry overruns its list";
    if (name.n == 0)
      return "empty server name";
    if (type != 0)
      continue;
    if (host->p)
      return "two host names in server_name";
    *host = name;
  }
  return NULL;
}

/* ALPN (RFC 7301 3.1): protocol_name_list<2..2^16-1> of opaque<1..2^8-1>. */
static const char *parse_alpn(cur data, cur *list) {
  if (get_vec16(&data, list) || data.n)
    return "ALPN extension length mismatch";
  if (list->n == 0)
    return "empty ALPN list";
  cur walk = *list, name;
  while (walk.n) {
    if (get_vec8(&walk, &name))
      return "ALPN name overruns its list";
    if (name.n == 0)
      return "empty ALPN protocol name";
  }
  return NULL;
}

/* supported_versions in a ClientHello (RFC 8446 4.2.1): versions<2..254>.
 * Only 3.x values count: GREASE (0x?A?A) and drafts (0x7Fxx) fall out. */
static const char *parse_versions(cur data, uint16_t *max) {
  cur list;
  if (get_vec8(&data, &list) || data.n)
    return "supported_versions length mismatch";
  if (list.n < 2 || list.n % 2)
    return "bad supported_versions list length";
  *max = 0;
  unsigned v;
  while (get_u16(&list, &v) == 0)
    if ((v >> 8) == 3 && v > *max)
      *max = (uint16_t)v;
  return NULL;
}

/* Parses a complete ClientHello body (RFC 8446 4.1.2, RFC 5246 7.4.1.2)
 * and sets the verdict. Results are stored only once all of it is valid,
 * so a failure leaves none behind. */
static int parse_hello(tunnel__sni *p, const uint8_t *body, size_t len) {
  cur c = {body, len}, skip, exts;
  unsigned legacy;
  if (get_u16(&c, &legacy))
    return fail(p, TUNNEL_EPROTO, "ClientHello too short");
  if ((legacy >> 8) != 3)
    return fail(p, TUNNEL_EPROTO, "ClientHello version is not 3.x");
  if (get_bytes(&c, 32, &skip))
    return fail(p, TUNNEL_EPROTO, "ClientHello random truncated");
  if (get_vec8(&c, &skip))
    return fail(p, TUNNEL_EPROTO, "session id overruns the hello");
  if (skip.n > 32)
    return fail(p, TUNNEL_EPROTO, "session id longer than 32 bytes");
  if (get_vec16(&c, &skip))
    return fail(p, TUNNEL_EPROTO, "cipher suites overrun the hello");
  if (skip.n < 2 || skip.n % 2)
    return fail(p, TUNNEL_EPROTO, "bad cipher suites length");
  if (get_vec8(&c, &skip))
    return fail(p, TUNNEL_EPROTO, "compression methods overrun the hello");
  if (skip.n < 1)
    return fail(p, TUNNEL_EPROTO, "no compression method");

  cur host = {NULL, 0}, alpn = {NULL, 0};
  int have_sni = 0, have_alpn = 0, have_versions = 0;
  uint16_t max_version = (uint16_t)legacy;
  /* Hellos before TLS 1.3 may end here: no extensions at all. */
  if (c.n) {
    if (get_vec16(&c, &exts) || c.n)
      return fail(p, TUNNEL_EPROTO, "extensions length mismatch");
    while (exts.n) {
      unsigned type;
      cur data;
      const char *why = NULL;
      if (get_u16(&exts, &type) || get_vec16(&exts, &data))
        return fail(p, TUNNEL_EPROTO, "extension overruns the hello");
      /* Duplicates are refused for the extensions read here (RFC 8446
       * 4.2 forbids any); others are skipped without bookkeeping. */
      if (type == EXT_SERVER_NAME) {
        why = have_sni ? "duplicate server_name extension"
                       : parse_server_name(data, &host);
        have_sni = 1;
      } else if (type == EXT_ALPN) {
        why = have_alpn ? "duplicate ALPN extension" : parse_alpn(data, &alpn);
        have_alpn = 1;
      } else if (type == EXT_SUPPORTED_VERSIONS) {
        why = have_versions ? "duplicate supported_versions extension"
                            : parse_versions(data, &max_version);
        have_versions = 1;
      }
      if (why)
        return fail(p, TUNNEL_EPROTO, why);
    }
  }

  char name[TUNNEL__SNI_HOST_MAX + 1];
  size_t name_len = 0;
  if (host.p) {
    const char *why = check_host(host, name, &name_len);
    if (why)
      return fail(p, TUNNEL_EPROTO, why);
  }
  if (alpn.n) {
    p->alpn = tunnel__malloc(p->mem, alpn.n);
    if (!p->alpn)
      return fail(p, TUNNEL_ENOMEM, "out of memory");
    memcpy(p->alpn, alpn.p, alpn.n);
    p->alpn_len = alpn.n;
  }
  p->legacy_version = (uint16_t)legacy;
  p->max_version = max_version;
  if (host.p) {
    memcpy(p->host, name, name_len + 1);
    p->host_len = name_len;
  }
  drop_buf(p);
  p->result = host.p ? TUNNEL__SNI_FOUND : TUNNEL__SNI_NONE;
  return p->result;
}

/* -------------------------------------------------------------- layers */

/* Grows the reassembly buffer for `add` more bytes (buf_len + add <=
 * hs_len), doubling but never past the announced length: memory follows
 * what arrived while copies stay linear. */
static int reserve(tunnel__sni *p, size_t add) {
  size_t need = p->buf_len + add;
  if (need <= p->buf_cap)
    return 0;
  size_t cap = p->buf_cap ? p->buf_cap : BUF_MIN_CAP;
  while (cap < need)
    cap *= 2;
  if (cap > p->hs_len)
    cap = p->hs_len;
  uint8_t *b = tunnel__realloc(p->mem, p->buf, cap);
  if (!b)
    return TUNNEL_ENOMEM;
  p->buf = b;
  p->buf_cap = cap;
  return 0;
}

/* Takes n handshake-layer bytes (the payload of one record, or the part of
 * it in this feed). */
static void on_handshake_bytes(tunnel__sni *p, const uint8_t *d, size_t n) {
  while (p->hs_hdr_len < HS_HDR) {
    if (n == 0)
      return;
    p->hs_hdr[p->hs_hdr_len++] = *d++;
    n--;
    if (p->hs_hdr_len == 1 && p->hs_hdr[0] != HT_CLIENT_HELLO) {
      fail(p, TUNNEL_EPROTO, "first handshake message is not a ClientHello");
      return;
    }
    if (p->hs_hdr_len == HS_HDR) {
      p->hs_len = ((size_t)p->hs_hdr[1] << 16) | ((size_t)p->hs_hdr[2] << 8) |
                  p->hs_hdr[3];
      if (HS_HDR + p->hs_len > p->max_hello) {
        fail(p, TUNNEL_ELIMIT, "ClientHello larger than the limit");
        return;
      }
    }
  }
  if (p->buf_len == 0 && n >= p->hs_len) {
    parse_hello(p, d, p->hs_len); /* whole at hand: no copy */
    return;
  }
  size_t take = p->hs_len - p->buf_len;
  if (take > n)
    take = n;
  if (take == 0)
    return;
  if (reserve(p, take)) {
    fail(p, TUNNEL_ENOMEM, "out of memory");
    return;
  }
  memcpy(p->buf + p->buf_len, d, take);
  p->buf_len += take;
  if (p->buf_len == p->hs_len)
    parse_hello(p, p->buf, p->hs_len);
}

/* Checks the record header byte just stored. The first record decides
 * whether this is TLS at all; a later one that strays is broken TLS. */
static int check_record_byte(tunnel__sni *p, int first) {
  const uint8_t *h = p->rec_hdr;
  int not_tls = first ? TUNNEL_ENOTSUP : TUNNEL_EPROTO;
  switch (p->rec_hdr_len) {
  case 1:
    if (h[0] != CT_HANDSHAKE)
      return fail(p, not_tls,
                  first ? "not a TLS handshake record"
                        : "record type is not handshake");
    break;
  case 2:
    if (h[1] != 3)
      return fail(p, not_tls, "record version is not 3.x");
    break;
  case 3:
    if (h[2] > 0x0f)
      return fail(p, not_tls, "record version is not 3.x");
    break;
  case REC_HDR: {
    size_t n = tunnel__be16(h + 3);
    /* Empty handshake records are forbidden (RFC 8446 5.1); refusing them
     * also bounds the header bytes a peer can add per hello byte. */
    if (n == 0)
      return fail(p, TUNNEL_EPROTO, "empty handshake record");
    if (n > REC_MAX)
      return fail(p, TUNNEL_EPROTO, "record longer than 2^14 + 2048");
    p->rec_left = n;
    p->rec_hdr_len = 0;
    break;
  }
  default:
    break;
  }
  return 0;
}

int tunnel__sni_feed(tunnel__sni *p, const uint8_t *data, size_t len) {
  size_t off = 0;
  while (p->result == TUNNEL__SNI_NEED_MORE && off < len) {
    if (p->rec_left == 0) {
      /* No handshake byte yet: this header opens the first record. */
      int first = p->hs_hdr_len == 0;
      p->rec_hdr[p->rec_hdr_len++] = data[off++];
      check_record_byte(p, first);
      continue;
    }
    size_t n = len - off;
    if (n > p->rec_left)
      n = p->rec_left;
    p->rec_left -= n;
    on_handshake_bytes(p, data + off, n);
    off += n;
  }
  return p->result;
}

int tunnel__sni_alpn_next(const tunnel__sni *p, size_t *pos,
                          const uint8_t **name, size_t *len) {
  /* The list was validated when stored: each length byte fits. */
  if (!p->alpn || *pos >= p->alpn_len)
    return 0;
  size_t n = p->alpn[*pos];
  *name = p->alpn + *pos + 1;
  *len = n;
  *pos += 1 + n;
  return 1;
}
