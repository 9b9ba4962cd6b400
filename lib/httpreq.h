/*
 * HTTP/1.x request stream parser and head rewriter, sans-I/O.
 *
 * The server's HTTP vhost reads a visitor connection through one parser.
 * Each request head is buffered (up to a limit) and parsed with http-parser;
 * the caller routes it by its Host, asks for the rewritten head to send to
 * the tunnel, then forwards the body as it arrived, byte for byte (chunk
 * framing and trailers included): body bytes are reported as spans of the
 * caller's buffer and never copied. Keep-alive and pipelining work: after
 * END the same parser reads the next head, which may already be in the
 * buffer.
 *
 * Pull API: tunnel__httpreq_feed() consumes bytes up to the end of the next
 * event and reports that event. The caller may stop after any event (after
 * HEAD, to choose a tunnel asynchronously) and later feed the unconsumed
 * bytes again.
 *
 * Heads are parsed with http-parser, which decides the framing
 * (Content-Length or chunked), with the checks RFC 7230 asks of a gateway
 * added where http-parser is lenient: requests that two parsers could
 * frame differently are refused (Content-Length with Transfer-Encoding,
 * duplicated Content-Length, Transfer-Encoding on HTTP/1.0, chunked not
 * last or given twice, obs-fold, whitespace before a colon, a bare CR).
 * The head is re-serialized from what was parsed, so the tunnel sees the
 * same framing. Bodies go out unchanged, so chunked framing is followed
 * here, strictly: hex sizes, lines ended by CRLF only, extensions and
 * trailers without control characters.
 */
#ifndef TUNNEL_LIB_HTTPREQ_H
#define TUNNEL_LIB_HTTPREQ_H

#include <stddef.h>
#include <stdint.h>

#include "bufq.h"
#include "mem.h"

#define TUNNEL__HTTPREQ_MAX_HEAD (16u * 1024u)
#define TUNNEL__HTTPREQ_MAX_HEADERS 100u

typedef struct tunnel__httpreq tunnel__httpreq;

/* Events returned by tunnel__httpreq_feed(). */
enum {
  TUNNEL__HTTPREQ_MORE = 0, /* all of the input consumed, no event */
  TUNNEL__HTTPREQ_HEAD,     /* a request head is complete */
  TUNNEL__HTTPREQ_BODY,     /* data[0, *used) are body bytes */
  TUNNEL__HTTPREQ_END,      /* the request ended; the next head may follow */
  TUNNEL__HTTPREQ_UPGRADE,  /* what follows the head is another protocol */
  TUNNEL__HTTPREQ_ERROR     /* refuse with tunnel__httpreq_status() */
};

/* One header as received. Names keep their casing; values are without the
 * whitespace around them. Not NUL-terminated. */
typedef struct tunnel__httpreq_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} tunnel__httpreq_header;

/* The current request head. Every pointer stays valid from the HEAD event
 * until the first feed after END (or until the parser is freed). */
typedef struct tunnel__httpreq_head {
  const char *method;     /* "GET", "CONNECT", ... (static storage) */
  int connect;            /* CONNECT: target is host:port */
  unsigned version_minor; /* HTTP/1.x (other majors are refused) */
  const char *target;     /* request target as received */
  size_t target_len;
  int absolute; /* target in absolute form: http://host/path */
  /* Host to route by: from the absolute or CONNECT target, else from the
   * Host header. Lower-cased, port removed, NUL-terminated; an IPv6 literal
   * keeps its brackets ("[::1]"). "" only for HTTP/1.0 without Host, or an
   * empty Host header. */
  const char *host;
  size_t host_len;
  int port; /* from the same place; -1 when absent */
  /* host[:port] as the visitor wrote it (X-Forwarded-Host); "" if none. */
  const char *authority;
  size_t authority_len;
  /* Path of the target without query: "/a/b", "*", "" for CONNECT; "/" for
   * an absolute target without one. */
  const char *path;
  size_t path_len;
  const tunnel__httpreq_header *headers;
  size_t n_headers;
  /* Upgrade request (Connection: upgrade and an Upgrade header) or
   * CONNECT: UPGRADE follows HEAD and the rest of the connection is raw. */
  int upgrade;
  int keep_alive; /* another request may follow on the connection */
  int chunked;    /* Transfer-Encoding ends with chunked */
  int has_content_length;
  uint64_t content_length;
  size_t head_len; /* bytes consumed for this head, empty lines before it
                      included */
} tunnel__httpreq_head;

/* max_head: bytes of one head at most, final empty line included (0: the
 * default; http-parser itself stops at 80 KiB). max_headers: header fields
 * (0: the default). mem NULL: libc. TUNNEL_ENOMEM. */
int tunnel__httpreq_new(tunnel__httpreq **out, const tunnel__mem *mem,
                        size_t max_head, size_t max_headers);
void tunnel__httpreq_free(tunnel__httpreq *r);

/* Consumes bytes up to the next event and returns it; *used is how many
 * bytes of data were consumed (the rest is the caller's to feed again).
 *  MORE    all consumed; a head is still incomplete (it is buffered).
 *  HEAD    tunnel__httpreq_get_head() describes the request. The bytes of
 *          the head are consumed: the tunnel receives the rewritten head.
 *  BODY    data[0, *used) is body as received, to forward unchanged.
 *  END     *used is 0. The request's body is complete.
 *  UPGRADE *used is 0, again at every later call: data is raw bytes for
 *          the tunnel (even a body announced by the head is not parsed).
 *  ERROR   *used is 0, again at every later call. Before HEAD, answer with
 *          tunnel__httpreq_status(); after it, close the connection.
 * TUNNEL_ENOMEM is returned (sticky) when the head could not be buffered.
 * After END of a request without keep-alive, anything but empty lines is
 * an ERROR. */
int tunnel__httpreq_feed(tunnel__httpreq *r, const uint8_t *data, size_t len,
                         size_t *used);

/* The head since HEAD (see tunnel__httpreq_head), else NULL. */
const tunnel__httpreq_head *tunnel__httpreq_get_head(const tunnel__httpreq *r);
/* After ERROR: 400 malformed (or bad or missing Host), 431 head or header
 * count over the limit, 501 unknown transfer coding, 505 not HTTP/1.x.
 * 0 otherwise. */
int tunnel__httpreq_status(const tunnel__httpreq *r);

/* First header named `name` (case-insensitive) or NULL; *count (may be
 * NULL) is how many there are. */
const tunnel__httpreq_header *
tunnel__httpreq_find(const tunnel__httpreq_head *h, const char *name,
                     size_t *count);

typedef struct tunnel__httpreq_kv {
  const char *name;
  const char *value;
} tunnel__httpreq_kv;

/* What the rewrite changes. Every value must be free of control characters
 * (tab allowed) and every name a token, else TUNNEL_EINVAL. */
typedef struct tunnel__httpreq_rewrite_opts {
  /* Appended to X-Forwarded-For: the received fields merge into one list
   * ("a, b" and "c" give "a, b, c, client"). NULL or "": left alone. */
  const char *client_addr;
  /* X-Forwarded-Proto ("http", "https"), replacing the visitor's. */
  const char *proto;
  /* Nonzero: X-Forwarded-Host is the authority the visitor asked for,
   * replacing the visitor's (nothing when there was none). */
  int forwarded_host;
  /* Host header value (host_header_rewrite), NULL keeps it. An absolute
   * target always becomes origin form, with Host set from the target. */
  const char *host;
  /* Set, replacing every received field of the same name. */
  const tunnel__httpreq_kv *set;
  size_t n_set;
  /* Received fields to drop (before the X-Forwarded-* are built, so
   * removing X-Forwarded-For keeps only client_addr). */
  const char *const *remove;
  size_t n_remove;
} tunnel__httpreq_rewrite_opts;

/* Appends the current head, rewritten, to out: request line, headers (in
 * received order and casing; replaced fields where their first occurrence
 * was, new ones at the end, a new Host first), empty line. All of it or
 * nothing. TUNNEL_ESTATE without a current head, TUNNEL_EINVAL, ENOMEM. */
int tunnel__httpreq_rewrite(const tunnel__httpreq *r,
                            const tunnel__httpreq_rewrite_opts *opts,
                            tunnel__bufq *out);

enum {
  TUNNEL__HTTP_AUTH_MATCH = 0,
  TUNNEL__HTTP_AUTH_NONE = 1,    /* no Authorization, or not Basic */
  TUNNEL__HTTP_AUTH_MISMATCH = 2 /* wrong, malformed or repeated */
};

/* Checks "Authorization: Basic base64(user:pass)". The comparison takes the
 * same time whatever the configured or received credentials (they are
 * compared as SHA-256 digests). A user containing ':' never matches (RFC
 * 7617). Returns a TUNNEL__HTTP_AUTH_* or TUNNEL_ECRYPTO. */
int tunnel__httpreq_basic_auth(const tunnel__httpreq_head *h, const char *user,
                               const char *pass);

/* Reason phrase of the statuses below, else NULL. */
const char *tunnel__http_reason(int status);

/* Appends a complete HTTP/1.1 response with a short HTML page and
 * Connection: close, for 400, 401, 403, 404, 408, 413, 414, 421, 431, 500,
 * 501, 502, 503, 504, 505. For 401 it carries WWW-Authenticate: Basic with
 * `realm` (NULL: "Restricted"; no '"', '\' or control characters).
 * TUNNEL_EINVAL or TUNNEL_ENOMEM, nothing appended then. */
int tunnel__http_error_page(int status, const char *realm, tunnel__bufq *out);

#endif
