/*
 * TLS ClientHello parser for routing by server name, sans-I/O.
 *
 * The HTTPS listener forwards TLS untouched; it only needs the host name the
 * client asks for. Bytes are fed as they arrive, in any split. The parser
 * follows the record layer (content type 22, version 3.x, at most
 * 2^14 + 2048 payload bytes, never empty) and reassembles the first
 * handshake message, which may span several records, then checks the
 * ClientHello structurally: every length must match exactly what encloses
 * it. TLS 1.0 to 1.3 hellos share this format.
 *
 * The caller keeps its bytes (it forwards all of them once routed), so the
 * parser copies as little as it can: a handshake message found whole inside
 * one record of one feed is parsed in place; otherwise its bytes are
 * gathered in a buffer that grows with what arrived, never beyond the
 * announced length, itself bounded by the size limit. A peer that announces
 * a large hello and sends little costs little.
 *
 * The host name reaches routing tables and logs, so it is held to DNS
 * syntax: bytes in [A-Za-z0-9.-], labels of 1..63 bytes, 1..255 bytes in
 * all. One trailing dot is removed and letters are lower-cased. A name that
 * breaks these rules is an error, not a miss.
 *
 * Bytes after the end of the ClientHello are not examined.
 */
#ifndef TUNNEL_LIB_SNI_H
#define TUNNEL_LIB_SNI_H

#include <stddef.h>
#include <stdint.h>

#include "mem.h"

/* Results of tunnel__sni_feed() besides negative errors. */
enum {
  TUNNEL__SNI_NEED_MORE = 0, /* no verdict yet: feed more bytes */
  TUNNEL__SNI_FOUND = 1,     /* a valid ClientHello naming a host */
  TUNNEL__SNI_NONE = 2       /* a valid ClientHello without a host name */
};

/* Default bound on the ClientHello handshake message, header included. */
#define TUNNEL__SNI_DEFAULT_MAX 16384
/* Longest host name accepted on the wire (before the trailing dot goes). */
#define TUNNEL__SNI_HOST_MAX 255

typedef struct tunnel__sni {
  const tunnel__mem *mem;
  size_t max_hello;
  int result;      /* sticky once not NEED_MORE */
  const char *why; /* static text: which check failed, or NULL */

  /* Record layer. */
  uint8_t rec_hdr[5];
  uint8_t rec_hdr_len;
  size_t rec_left; /* payload bytes still due in the current record */

  /* Handshake layer: header, then the body, buffered only when split. */
  uint8_t hs_hdr[4];
  uint8_t hs_hdr_len;
  size_t hs_len; /* announced body length */
  uint8_t *buf;
  size_t buf_len;
  size_t buf_cap;

  /* Results, valid once the ClientHello is complete (FOUND or NONE). */
  char host[TUNNEL__SNI_HOST_MAX + 1]; /* lower-case, NUL-terminated */
  size_t host_len;                     /* 0 unless FOUND */
  uint16_t legacy_version;             /* the hello's own version field */
  /* Highest 3.x version offered: from supported_versions when present
   * (GREASE and unknown values skipped; 0 if none is 3.x), otherwise the
   * legacy version. 0x0304 is TLS 1.3. */
  uint16_t max_version;
  uint8_t *alpn; /* ALPN protocol_name_list as on the wire, or NULL */
  size_t alpn_len;
} tunnel__sni;

/* max_hello bounds the handshake message (4-byte header included); 0 means
 * TUNNEL__SNI_DEFAULT_MAX. No allocation. */
void tunnel__sni_init(tunnel__sni *p, const tunnel__mem *mem, size_t max_hello);
/* Releases buffers; the results other than ALPN stay readable. */
void tunnel__sni_free(tunnel__sni *p);

/* Consumes the next bytes of the connection. Returns NEED_MORE, FOUND or
 * NONE, or a negative error; the first verdict is returned again by every
 * later call, whatever it is given. Errors, each detected as soon as the
 * bytes that prove it have arrived:
 *   TUNNEL_ENOTSUP  not TLS: the first record header is not a handshake
 *                   record of version 3.x (an SSLv2-compatible hello
 *                   included);
 *   TUNNEL_EPROTO   TLS, but not a well-formed ClientHello, or an invalid
 *                   host name;
 *   TUNNEL_ELIMIT   the ClientHello is announced longer than max_hello;
 *   TUNNEL_ENOMEM.
 * p->why then says which check failed, for logs. */
int tunnel__sni_feed(tunnel__sni *p, const uint8_t *data, size_t len);

/* Walks the ALPN protocol names the client offered (opaque bytes, 1..255
 * each; not NUL-terminated). Start with *pos = 0. Returns 1 with the next
 * name, 0 after the last one or when the hello carried no ALPN. */
int tunnel__sni_alpn_next(const tunnel__sni *p, size_t *pos,
                          const uint8_t **name, size_t *len);

#endif
