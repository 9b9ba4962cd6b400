#include "httpreq.h"

#include <http_parser.h>
#include <mbedtls/base64.h>
#include <mbedtls/sha256.h>
#include <mbedtls/version.h>
#include <stdio.h>
#include <string.h>

#include "crypto.h"

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define sha256_starts mbedtls_sha256_starts
#define sha256_update mbedtls_sha256_update
#define sha256_finish mbedtls_sha256_finish
#else
#define sha256_starts mbedtls_sha256_starts_ret
#define sha256_update mbedtls_sha256_update_ret
#define sha256_finish mbedtls_sha256_finish_ret
#endif

enum { ST_HEAD, ST_BODY, ST_END, ST_UPGRADE, ST_ERROR };
enum { CB_NONE, CB_FIELD, CB_VALUE };

/* Chunked body framing (RFC 7230 4.1), one state per byte position. */
enum {
  C_SIZE_START, /* first hex digit of chunk-size */
  C_SIZE,       /* more hex digits, ';', BWS or CR */
  C_SIZE_WS,    /* BWS after chunk-size: only ';' may follow */
  C_EXT,        /* chunk-ext up to CR */
  C_SIZE_LF,
  C_DATA,
  C_DATA_CR,
  C_DATA_LF,
  C_TRAILER_START, /* a trailer field or the final CR */
  C_TRAILER_NAME,
  C_TRAILER_VALUE,
  C_TRAILER_LF,
  C_END_LF
};

/* A header while the head is still arriving: offsets, because the head
 * buffer may move when it grows. */
typedef struct hdr_rec {
  size_t name_off, name_len, value_off, value_len;
} hdr_rec;

struct tunnel__httpreq {
  const tunnel__mem *mem;
  http_parser parser;
  size_t max_head;
  size_t max_headers;
  int state;
  int err;    /* sticky TUNNEL_ENOMEM */
  int status; /* ERROR */
  int have_head;
  int stale;   /* the head belongs to an ended request: drop it on next feed */
  int closing; /* the ended request had no keep-alive */

  /* Callback context: a callback pointer `at` is at head offset
   * base_off + (at - base). */
  const char *base;
  size_t base_off;
  int last_cb;
  int too_many;
  int nomem;
  int head_done;

  /* Body framing: bytes left (of the Content-Length or of the chunk). */
  uint64_t remaining;
  int chunk_state;

  uint8_t *buf; /* the raw head */
  size_t len, cap;
  int url_seen;
  size_t url_off, url_len;
  hdr_rec *recs;
  tunnel__httpreq_header *hdrs;
  size_t nrec, cap_rec;
  char *host;
  size_t host_cap;
  tunnel__httpreq_head head;
};

/* ------------------------------------------------------------- helpers */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int eq_nocase(const char *a, size_t alen, const char *b, size_t blen) {
  if (alen != blen)
    return 0;
  for (size_t i = 0; i < alen; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
      return 0;
  return 1;
}

static int is_tchar(int c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
      (c >= '0' && c <= '9'))
    return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(const char *s, size_t n) {
  if (n == 0)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!is_tchar((unsigned char)s[i]))
      return 0;
  return 1;
}

/* Octets a field value or chunk extension may hold: VCHAR, obs-text, SP,
 * HTAB; never CR, LF or another control. */
static int text_char(int c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static int is_ows(int c) { return c == ' ' || c == '\t'; }

static void trim(const char **s, size_t *n) {
  while (*n && is_ows((unsigned char)(*s)[0])) {
    (*s)++;
    (*n)--;
  }
  while (*n && is_ows((unsigned char)(*s)[*n - 1]))
    (*n)--;
}

/* A value we are asked to write: no control character but tab, so nothing
 * can end the line or the head early. */
static int value_ok(const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      return 0;
  }
  return 1;
}

/* ------------------------------------------------------------ callbacks */

static size_t off_of(const tunnel__httpreq *r, const char *at) {
  return r->base_off + (size_t)(at - r->base);
}

static int on_message_begin(http_parser *p) {
  tunnel__httpreq *r = p->data;
  r->nrec = 0;
  r->url_seen = 0;
  r->url_off = r->url_len = 0;
  r->last_cb = CB_NONE;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  tunnel__httpreq *r = p->data;
  size_t off = off_of(r, at);
  if (!r->url_seen) {
    r->url_seen = 1;
    r->url_off = off;
  }
  r->url_len = off + n - r->url_off;
  return 0;
}

static int grow_recs(tunnel__httpreq *r) {
  size_t cap = r->cap_rec ? r->cap_rec * 2 : 16;
  if (cap > r->max_headers)
    cap = r->max_headers;
  hdr_rec *recs = tunnel__realloc(r->mem, r->recs, cap * sizeof *recs);
  if (!recs)
    return TUNNEL_ENOMEM;
  r->recs = recs;
  tunnel__httpreq_header *h = tunnel__realloc(r->mem, r->hdrs, cap * sizeof *h);
  if (!h)
    return TUNNEL_ENOMEM;
  r->hdrs = h;
  r->cap_rec = cap;
  return 0;
}

/* http-parser only ever sees heads (bodies are framed below), so every
 * field here belongs to the head. */
static int on_header_field(http_parser *p, const char *at, size_t n) {
  tunnel__httpreq *r = p->data;
  size_t off = off_of(r, at);
  if (r->last_cb != CB_FIELD) {
    if (r->nrec == r->max_headers) {
      r->too_many = 1;
      return -1;
    }
    if (r->nrec == r->cap_rec && grow_recs(r) != 0) {
      r->nomem = 1;
      return -1;
    }
    hdr_rec *h = &r->recs[r->nrec++];
    h->name_off = off;
    h->value_off = off + n;
    h->value_len = 0;
    r->last_cb = CB_FIELD;
  }
  hdr_rec *h = &r->recs[r->nrec - 1];
  h->name_len = off + n - h->name_off;
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  tunnel__httpreq *r = p->data;
  if (r->nrec == 0)
    return 0;
  hdr_rec *h = &r->recs[r->nrec - 1];
  size_t off = off_of(r, at);
  if (r->last_cb != CB_VALUE) {
    h->value_off = off;
    r->last_cb = CB_VALUE;
  }
  h->value_len = off + n - h->value_off;
  return 0;
}

/* Pausing here stops http_parser_execute() before the head's final LF,
 * which gives the caller its chance to route the request. */
static int on_headers_complete(http_parser *p) {
  tunnel__httpreq *r = p->data;
  r->head_done = 1;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
};

/* ------------------------------------------------------- lifetime, state */

static void parser_reset(tunnel__httpreq *r) {
  http_parser_init(&r->parser, HTTP_REQUEST);
  r->parser.data = r;
}

int tunnel__httpreq_new(tunnel__httpreq **out, const tunnel__mem *mem,
                        size_t max_head, size_t max_headers) {
  *out = NULL;
  if (!mem)
    mem = tunnel__mem_default();
  tunnel__httpreq *r = tunnel__calloc(mem, 1, sizeof *r);
  if (!r)
    return TUNNEL_ENOMEM;
  r->mem = mem;
  r->max_head = max_head ? max_head : TUNNEL__HTTPREQ_MAX_HEAD;
  r->max_headers = max_headers ? max_headers : TUNNEL__HTTPREQ_MAX_HEADERS;
  parser_reset(r);
  r->state = ST_HEAD;
  *out = r;
  return 0;
}

void tunnel__httpreq_free(tunnel__httpreq *r) {
  if (!r)
    return;
  tunnel__free(r->mem, r->buf);
  tunnel__free(r->mem, r->recs);
  tunnel__free(r->mem, r->hdrs);
  tunnel__free(r->mem, r->host);
  tunnel__free(r->mem, r);
}

const tunnel__httpreq_head *tunnel__httpreq_get_head(const tunnel__httpreq *r) {
  return r->have_head ? &r->head : NULL;
}

int tunnel__httpreq_status(const tunnel__httpreq *r) {
  return r->state == ST_ERROR && !r->err ? r->status : 0;
}

const tunnel__httpreq_header *
tunnel__httpreq_find(const tunnel__httpreq_head *h, const char *name,
                     size_t *count) {
  const tunnel__httpreq_header *first = NULL;
  size_t n = 0, nl = strlen(name);
  for (size_t i = 0; i < h->n_headers; i++) {
    if (eq_nocase(h->headers[i].name, h->headers[i].name_len, name, nl)) {
      if (!first)
        first = &h->headers[i];
      n++;
    }
  }
  if (count)
    *count = n;
  return first;
}

/* Whether the request switches protocols after its head: CONNECT, or an
 * Upgrade header with "upgrade" among the Connection tokens. Decided from
 * the parsed fields rather than taken from http-parser, whose scan of the
 * raw bytes can disagree with what the re-serialized head says. */
static int wants_upgrade(const tunnel__httpreq_head *h) {
  if (h->connect)
    return 1;
  size_t nup = 0;
  tunnel__httpreq_find(h, "upgrade", &nup);
  if (!nup)
    return 0;
  for (size_t i = 0; i < h->n_headers; i++) {
    const tunnel__httpreq_header *f = &h->headers[i];
    if (!eq_nocase(f->name, f->name_len, "connection", 10))
      continue;
    const char *v = f->value, *end = f->value + f->value_len;
    while (v < end) {
      const char *comma = memchr(v, ',', (size_t)(end - v));
      const char *tok_end = comma ? comma : end;
      const char *a = v, *b = tok_end;
      while (a < b && (*a == ' ' || *a == '\t'))
        a++;
      while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
        b--;
      if (eq_nocase(a, (size_t)(b - a), "upgrade", 7))
        return 1;
      v = comma ? comma + 1 : end;
    }
  }
  return 0;
}

static int fail(tunnel__httpreq *r, int status) {
  r->state = ST_ERROR;
  r->status = status;
  r->have_head = 0;
  return TUNNEL__HTTPREQ_ERROR;
}

static int fail_errno(tunnel__httpreq *r) {
  if (r->nomem) {
    r->state = ST_ERROR;
    r->err = TUNNEL_ENOMEM;
    r->have_head = 0;
    return TUNNEL_ENOMEM;
  }
  enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
  if (r->too_many || e == HPE_HEADER_OVERFLOW)
    return fail(r, 431);
  return fail(r, 400);
}

/* ---------------------------------------------------------- head checks */

/* authority = host [":" port], as RFC 3986 but with a stricter reg-name
 * (letters, digits, '-', '.', '_', '~': what names are routed by). Sets
 * *hlen (host part, brackets kept) and *port (-1 when absent or empty). */
static int parse_authority(const char *s, size_t n, size_t *hlen, int *port) {
  size_t i = 0;
  if (n && s[0] == '[') {
    for (i = 1; i < n && s[i] != ']'; i++) {
      int c = lower((unsigned char)s[i]);
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == ':' ||
            c == '.'))
        return -1;
    }
    if (i == n || i < 3) /* no ']', or "[]" / "[x]" */
      return -1;
    i++;
  } else {
    for (; i < n && s[i] != ':'; i++) {
      int c = (unsigned char)s[i];
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~'))
        return -1;
    }
    if (i == 0)
      return -1;
  }
  *hlen = i;
  *port = -1;
  if (i == n)
    return 0;
  if (s[i] != ':')
    return -1;
  long v = 0;
  size_t digits = n - i - 1;
  if (digits > 5)
    return -1;
  for (i++; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  if (v > 65535)
    return -1;
  if (digits)
    *port = (int)v;
  return 0;
}

/* Line structure of the raw head, which http-parser accepts too loosely for
 * a gateway: a CR not followed by LF (it may even take "\r\rX" for the end
 * of the head) and obs-fold (RFC 7230 3.2.4: reject or unfold; we reject,
 * as rewriting would otherwise change what a folded field means). */
static int lines_ok(const uint8_t *b, size_t n) {
  size_t i = 0;
  while (i < n && (b[i] == '\r' || b[i] == '\n'))
    i++;
  int first = 1;
  while (i < n) {
    if (!first && (b[i] == ' ' || b[i] == '\t'))
      return 0;
    for (; i < n && b[i] != '\n'; i++)
      if (b[i] == '\r' && (i + 1 == n || b[i + 1] != '\n'))
        return 0;
    i++;
    first = 0;
  }
  return 1;
}

/* The request line exactly: method SP target SP "HTTP/1." DIGIT, then
 * the line end (http-parser also takes "HXXP/1.1" or several spaces). */
static int request_line_ok(const tunnel__httpreq *r) {
  const char *b = (const char *)r->buf;
  size_t n = r->len, i = 0;
  while (i < n && (b[i] == '\r' || b[i] == '\n'))
    i++;
  const char *m = http_method_str((enum http_method)r->parser.method);
  size_t ml = strlen(m);
  if (i + ml + 1 != r->url_off || memcmp(b + i, m, ml) != 0 || b[i + ml] != ' ')
    return 0;
  size_t j = r->url_off + r->url_len;
  if (n - j < 10 || memcmp(b + j, " HTTP/1.", 8) != 0 || b[j + 8] < '0' ||
      b[j + 8] > '9')
    return 0;
  j += 9;
  if (j < n && b[j] == '\r')
    j++;
  return j < n && b[j] == '\n';
}

/* Transfer-Encoding as RFC 7230 3.3.3 reads it, compared with what
 * http-parser decided: any disagreement is a framing ambiguity. Returns 0
 * or the status to answer. */
static int te_check(const tunnel__httpreq *r, const tunnel__httpreq_head *h) {
  size_t ntok = 0, nchunked = 0;
  int last_chunked = 0, any = 0;
  for (size_t i = 0; i < h->n_headers; i++) {
    const tunnel__httpreq_header *f = &h->headers[i];
    if (!eq_nocase(f->name, f->name_len, "transfer-encoding", 17))
      continue;
    any = 1;
    const char *v = f->value;
    size_t left = f->value_len;
    while (left) {
      const char *comma = memchr(v, ',', left);
      size_t tl = comma ? (size_t)(comma - v) : left;
      const char *t = v;
      size_t tn = tl;
      trim(&t, &tn);
      if (tn) {
        ntok++;
        last_chunked = eq_nocase(t, tn, "chunked", 7);
        nchunked += (size_t)last_chunked;
      }
      v += tl;
      left -= tl;
      if (left) {
        v++;
        left--;
      }
    }
  }
  int parser_chunked = (r->parser.flags & F_CHUNKED) != 0;
  if (!any)
    return parser_chunked ? 400 : 0;
  if (h->version_minor == 0 || ntok == 0 || nchunked > 1 ||
      last_chunked != parser_chunked)
    return 400;
  if (!last_chunked) /* only codings we cannot frame */
    return nchunked ? 400 : 501;
  return 0;
}

/* Copies the routing host, lower-cased and NUL-terminated. */
static int set_host(tunnel__httpreq *r, const char *s, size_t n) {
  if (n + 1 > r->host_cap) {
    char *p = tunnel__realloc(r->mem, r->host, n + 1);
    if (!p)
      return TUNNEL_ENOMEM;
    r->host = p;
    r->host_cap = n + 1;
  }
  for (size_t i = 0; i < n; i++)
    r->host[i] = (char)lower((unsigned char)s[i]);
  r->host[n] = '\0';
  r->head.host = r->host;
  r->head.host_len = n;
  return 0;
}

static void path_of(const char *s, size_t n, const char **path, size_t *plen) {
  size_t i = 0;
  while (i < n && s[i] != '?' && s[i] != '#')
    i++;
  *path = s;
  *plen = i;
}

/* Fills r->head from the buffered head. Returns 0, a status, or
 * TUNNEL_ENOMEM. */
static int build_head(tunnel__httpreq *r) {
  tunnel__httpreq_head *h = &r->head;
  const http_parser *p = &r->parser;
  const char *b = (const char *)r->buf;
  memset(h, 0, sizeof *h);
  if (p->http_major != 1)
    return 505;
  if (!r->url_seen || r->url_len == 0 || !lines_ok(r->buf, r->len) ||
      !request_line_ok(r))
    return 400;
  for (size_t i = 0; i < r->nrec; i++) {
    const hdr_rec *rec = &r->recs[i];
    tunnel__httpreq_header *f = &r->hdrs[i];
    f->name = b + rec->name_off;
    f->name_len = rec->name_len;
    f->value = b + rec->value_off;
    f->value_len = rec->value_len;
    trim(&f->value, &f->value_len);
    /* http-parser lets "Host : x" through (RFC 7230 3.2.4 says 400), and
     * does not check the first octet of a value. */
    if (!is_token(f->name, f->name_len))
      return 400;
    for (size_t j = 0; j < f->value_len; j++)
      if (!text_char((unsigned char)f->value[j]))
        return 400;
  }
  h->headers = r->hdrs;
  h->n_headers = r->nrec;
  h->method = http_method_str((enum http_method)p->method);
  h->connect = p->method == HTTP_CONNECT;
  h->version_minor = p->http_minor;
  h->target = b + r->url_off;
  h->target_len = r->url_len;
  for (size_t i = 0; i < h->target_len; i++) {
    unsigned char c = (unsigned char)h->target[i];
    if (c <= 0x20 || c == 0x7f)
      return 400;
  }
  h->upgrade = wants_upgrade(h);
  h->keep_alive = http_should_keep_alive(p);
  h->chunked = (p->flags & F_CHUNKED) != 0;
  h->has_content_length = (p->flags & F_CONTENTLENGTH) != 0;
  h->content_length = h->has_content_length ? p->content_length : 0;
  h->head_len = r->len;
  int st = te_check(r, h);
  if (st)
    return st;

  size_t nhost = 0;
  const tunnel__httpreq_header *hf = tunnel__httpreq_find(h, "host", &nhost);
  if (nhost > 1)
    return 400;
  const char *auth = NULL;
  size_t alen = 0, hlen = 0;
  int port = -1;
  const char *t = h->target;
  size_t tn = h->target_len;
  if (h->connect) {
    /* authority-form: host and port both required */
    if (parse_authority(t, tn, &hlen, &port) != 0 || port < 0)
      return 400;
    auth = t;
    alen = tn;
    h->path = t + tn;
    h->path_len = 0;
  } else if (t[0] == '/') {
    path_of(t, tn, &h->path, &h->path_len);
  } else if (tn == 1 && t[0] == '*') {
    h->path = t;
    h->path_len = 1;
  } else {
    /* absolute-form: its authority wins over Host (RFC 7230 5.4) */
    size_t i = 0;
    while (i < tn && t[i] != ':')
      i++;
    if (!(eq_nocase(t, i, "http", 4) || eq_nocase(t, i, "https", 5)) ||
        tn - i < 3 || memcmp(t + i, "://", 3) != 0)
      return 400;
    auth = t + i + 3;
    const char *end = auth;
    while (end < t + tn && *end != '/' && *end != '?' && *end != '#')
      end++;
    alen = (size_t)(end - auth);
    /* userinfo ('@') fails the host syntax: RFC 7230 2.7.1 */
    if (parse_authority(auth, alen, &hlen, &port) != 0)
      return 400;
    h->absolute = 1;
    if (end < t + tn && *end == '/') {
      path_of(end, (size_t)(t + tn - end), &h->path, &h->path_len);
    } else {
      h->path = "/";
      h->path_len = 1;
    }
  }
  if (!auth && hf) {
    auth = hf->value;
    alen = hf->value_len;
    if (alen && parse_authority(auth, alen, &hlen, &port) != 0)
      return 400;
  }
  if (!auth) {
    if (h->version_minor >= 1) /* RFC 7230 5.4 */
      return 400;
    auth = "";
  }
  h->authority = auth;
  h->authority_len = alen;
  h->port = port;
  if (set_host(r, auth, hlen) != 0)
    return TUNNEL_ENOMEM;
  return 0;
}

/* ------------------------------------------------------------- feeding */

static int reserve(tunnel__httpreq *r, size_t need) {
  if (need <= r->cap)
    return 0;
  size_t cap = r->cap ? r->cap : 512;
  while (cap < need)
    cap *= 2;
  if (cap > r->max_head)
    cap = r->max_head;
  uint8_t *b = tunnel__realloc(r->mem, r->buf, cap);
  if (!b)
    return TUNNEL_ENOMEM;
  r->buf = b;
  r->cap = cap;
  return 0;
}

static int nomem(tunnel__httpreq *r) {
  r->nomem = 1;
  return fail_errno(r);
}

static int feed_head(tunnel__httpreq *r, const uint8_t *data, size_t len,
                     size_t *used) {
  if (r->stale) {
    r->stale = 0;
    r->have_head = 0;
    r->len = 0;
    r->nrec = 0;
    parser_reset(r);
  }
  if (r->closing) {
    /* RFC 7230 6.6: no request after one that closes the connection
     * (http-parser would parse on). */
    for (size_t i = 0; i < len; i++)
      if (data[i] != '\r' && data[i] != '\n')
        return fail(r, 400);
    *used = len;
    return TUNNEL__HTTPREQ_MORE;
  }
  if (len == 0)
    return TUNNEL__HTTPREQ_MORE;
  /* Never more than fits under the limit: that bounds both our copy and
   * how far http-parser reads. */
  size_t room = r->max_head - r->len;
  size_t n = len < room ? len : room;
  if (reserve(r, r->len + n) != 0)
    return nomem(r);
  r->base = (const char *)data;
  r->base_off = r->len;
  r->head_done = 0;
  size_t k = http_parser_execute(&r->parser, &settings, (const char *)data, n);
  enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
  if (e == HPE_PAUSED && r->head_done) {
    /* Stopped on the head's last byte (k < n), which must be its final LF:
     * http-parser takes any byte after a CR for one. */
    memcpy(r->buf + r->len, data, k + 1);
    r->len += k + 1;
    if (data[k] != '\n')
      return fail(r, 400);
    int st = build_head(r);
    if (st == TUNNEL_ENOMEM)
      return nomem(r);
    if (st)
      return fail(r, st);
    /* The body is framed here, not by http-parser, which accepts chunk
     * framing that other parsers would read differently; it restarts
     * with the next head. */
    r->have_head = 1;
    if (r->head.upgrade) {
      r->state = ST_UPGRADE;
    } else if (r->head.chunked) {
      r->chunk_state = C_SIZE_START;
      r->state = ST_BODY;
    } else if (r->head.content_length) {
      r->remaining = r->head.content_length;
      r->state = ST_BODY;
    } else {
      r->state = ST_END;
    }
    *used = k + 1;
    return TUNNEL__HTTPREQ_HEAD;
  }
  if (e != HPE_OK || k != n)
    return fail_errno(r);
  memcpy(r->buf + r->len, data, n);
  r->len += n;
  if (r->len == r->max_head)
    return fail(r, 431);
  *used = n;
  return TUNNEL__HTTPREQ_MORE;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = lower(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Follows the chunked framing over data; *n is how many bytes belong to
 * this body. Returns 1 when the body ended, 0 when more is needed, -1 on a
 * framing error. Only CRLF ends a line: with bare LF or CR accepted here,
 * the tunnel's parser could see other chunk boundaries than ours. */
static int chunked_scan(tunnel__httpreq *r, const uint8_t *data, size_t len,
                        size_t *n) {
  size_t i = 0;
  int st = r->chunk_state;
  int rc = 0;
  while (i < len && rc == 0) {
    int c = data[i];
    switch (st) {
    case C_SIZE_START:
    case C_SIZE: {
      int h = hexval(c);
      if (st == C_SIZE_START)
        r->remaining = 0;
      if (h >= 0) {
        if (r->remaining > (UINT64_MAX >> 4))
          rc = -1;
        r->remaining = (r->remaining << 4) | (uint64_t)h;
        st = C_SIZE;
      } else if (st == C_SIZE_START) {
        rc = -1;
      } else if (c == ';') {
        st = C_EXT;
      } else if (c == ' ' || c == '\t') {
        st = C_SIZE_WS;
      } else if (c == '\r') {
        st = C_SIZE_LF;
      } else {
        rc = -1;
      }
      break;
    }
    case C_SIZE_WS:
      if (c == ';')
        st = C_EXT;
      else if (c != ' ' && c != '\t')
        rc = -1;
      break;
    case C_EXT:
      if (c == '\r')
        st = C_SIZE_LF;
      else if (!text_char(c))
        rc = -1;
      break;
    case C_SIZE_LF:
      if (c != '\n')
        rc = -1;
      else
        st = r->remaining ? C_DATA : C_TRAILER_START;
      break;
    case C_DATA: {
      size_t take = len - i;
      if ((uint64_t)take > r->remaining)
        take = (size_t)r->remaining;
      r->remaining -= take;
      i += take;
      if (r->remaining == 0)
        st = C_DATA_CR;
      continue;
    }
    case C_DATA_CR:
      if (c != '\r')
        rc = -1;
      st = C_DATA_LF;
      break;
    case C_DATA_LF:
      if (c != '\n')
        rc = -1;
      st = C_SIZE_START;
      break;
    case C_TRAILER_START:
      if (c == '\r')
        st = C_END_LF;
      else if (is_tchar(c))
        st = C_TRAILER_NAME;
      else /* obs-fold or junk */
        rc = -1;
      break;
    case C_TRAILER_NAME:
      if (c == ':')
        st = C_TRAILER_VALUE;
      else if (!is_tchar(c))
        rc = -1;
      break;
    case C_TRAILER_VALUE:
      if (c == '\r')
        st = C_TRAILER_LF;
      else if (!text_char(c))
        rc = -1;
      break;
    case C_TRAILER_LF:
      if (c != '\n')
        rc = -1;
      st = C_TRAILER_START;
      break;
    default: /* C_END_LF */
      rc = c == '\n' ? 1 : -1;
      break;
    }
    i++;
  }
  r->chunk_state = st;
  *n = i;
  return rc;
}

static int feed_body(tunnel__httpreq *r, const uint8_t *data, size_t len,
                     size_t *used) {
  if (len == 0)
    return TUNNEL__HTTPREQ_MORE;
  size_t n;
  if (r->head.chunked) {
    int rc = chunked_scan(r, data, len, &n);
    if (rc < 0)
      return fail(r, 400);
    if (rc == 1)
      r->state = ST_END;
  } else {
    n = (uint64_t)len < r->remaining ? len : (size_t)r->remaining;
    r->remaining -= n;
    if (r->remaining == 0)
      r->state = ST_END;
  }
  *used = n;
  return TUNNEL__HTTPREQ_BODY;
}

int tunnel__httpreq_feed(tunnel__httpreq *r, const uint8_t *data, size_t len,
                         size_t *used) {
  *used = 0;
  switch (r->state) {
  case ST_HEAD:
    return feed_head(r, data, len, used);
  case ST_BODY:
    return feed_body(r, data, len, used);
  case ST_END:
    r->state = ST_HEAD;
    r->stale = 1;
    r->closing = !r->head.keep_alive;
    return TUNNEL__HTTPREQ_END;
  case ST_UPGRADE:
    return TUNNEL__HTTPREQ_UPGRADE;
  default:
    return r->err ? r->err : TUNNEL__HTTPREQ_ERROR;
  }
}

/* -------------------------------------------------------------- rewrite */

static int name_in(const char *name, size_t n, const char *const *list,
                   size_t count) {
  for (size_t i = 0; i < count; i++)
    if (eq_nocase(name, n, list[i], strlen(list[i])))
      return 1;
  return 0;
}

static int name_in_set(const char *name, size_t n,
                       const tunnel__httpreq_rewrite_opts *o) {
  for (size_t i = 0; i < o->n_set; i++)
    if (eq_nocase(name, n, o->set[i].name, strlen(o->set[i].name)))
      return 1;
  return 0;
}

/* The fields the rewrite produces itself. */
enum { M_HOST, M_XFF, M_XFP, M_XFH, M__COUNT };
static const char *const m_names[M__COUNT] = {
    "Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"};

typedef struct rw {
  tunnel__iov *v;
  size_t n;
} rw;

static void put(rw *w, const void *p, size_t n) {
  if (n) {
    w->v[w->n].base = p;
    w->v[w->n].len = n;
    w->n++;
  }
}

static void put_str(rw *w, const char *s) { put(w, s, strlen(s)); }

static void put_field(rw *w, const char *name, size_t nl, const char *value,
                      size_t vl) {
  put(w, name, nl);
  put(w, ": ", 2);
  put(w, value, vl);
  put(w, "\r\n", 2);
}

/* X-Forwarded-For: every received list element, in order, then ours. */
static void put_xff(rw *w, const tunnel__httpreq_head *h, size_t from,
                    const char *client) {
  put_str(w, m_names[M_XFF]);
  put(w, ": ", 2);
  for (size_t j = from; j < h->n_headers; j++) {
    const tunnel__httpreq_header *f = &h->headers[j];
    if (f->value_len && eq_nocase(f->name, f->name_len, m_names[M_XFF], 15)) {
      put(w, f->value, f->value_len);
      put(w, ", ", 2);
    }
  }
  put_str(w, client);
  put(w, "\r\n", 2);
}

int tunnel__httpreq_rewrite(const tunnel__httpreq *r,
                            const tunnel__httpreq_rewrite_opts *o,
                            tunnel__bufq *out) {
  static const tunnel__httpreq_rewrite_opts none;
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
  if (!h)
    return TUNNEL_ESTATE;
  if (!o)
    o = &none;
  const char *client =
      o->client_addr && *o->client_addr ? o->client_addr : NULL;
  const char *proto = o->proto && *o->proto ? o->proto : NULL;
  if ((client && !value_ok(client)) || (proto && !value_ok(proto)) ||
      (o->host && !value_ok(o->host)))
    return TUNNEL_EINVAL;
  for (size_t i = 0; i < o->n_set; i++)
    if (!o->set[i].name || !o->set[i].value ||
        !is_token(o->set[i].name, strlen(o->set[i].name)) ||
        !value_ok(o->set[i].value))
      return TUNNEL_EINVAL;
  for (size_t i = 0; i < o->n_remove; i++)
    if (!o->remove[i])
      return TUNNEL_EINVAL;

  /* Value of each produced field, NULL when not produced. */
  const char *mv[M__COUNT] = {NULL};
  size_t ml[M__COUNT] = {0};
  if (o->host) {
    mv[M_HOST] = o->host;
    ml[M_HOST] = strlen(o->host);
  } else if (h->absolute) {
    mv[M_HOST] = h->authority;
    ml[M_HOST] = h->authority_len;
  }
  mv[M_XFF] = client;
  if (proto) {
    mv[M_XFP] = proto;
    ml[M_XFP] = strlen(proto);
  }
  if (o->forwarded_host && h->authority_len) {
    mv[M_XFH] = h->authority;
    ml[M_XFH] = h->authority_len;
  }
  for (int m = 0; m < M__COUNT; m++)
    if (mv[m] && name_in_set(m_names[m], strlen(m_names[m]), o))
      mv[m] = NULL; /* an explicit value wins */

  /* Pieces: request line 5, a received field 4 (or 2 when merged into
   * X-Forwarded-For), a set field 4, a produced one 4 (XFF 4 plus the
   * merged ones), the final CRLF. */
  size_t nv = 8 + 6 * h->n_headers + 4 * o->n_set + 6 * M__COUNT + 4;
  size_t bytes = nv * sizeof(tunnel__iov) + o->n_set + 1;
  tunnel__iov *v = tunnel__malloc(r->mem, bytes);
  if (!v)
    return TUNNEL_ENOMEM;
  uint8_t *set_done = (uint8_t *)(v + nv);
  memset(set_done, 0, o->n_set);
  int m_done[M__COUNT] = {0};
  rw w = {v, 0};

  put_str(&w, h->method);
  put(&w, " ", 1);
  if (h->absolute) {
    /* origin form: what follows the target's authority, "/" first */
    const char *rest = h->authority + h->authority_len;
    size_t rl = (size_t)(h->target + h->target_len - rest);
    if (rl == 0 || rest[0] != '/')
      put(&w, "/", 1);
    put(&w, rest, rl);
  } else {
    put(&w, h->target, h->target_len);
  }
  char ver[16];
  int vn = snprintf(ver, sizeof ver, " HTTP/1.%u\r\n", h->version_minor);
  put(&w, ver, (size_t)vn);

  /* A new Host goes first, where clients put it. */
  if (mv[M_HOST]) {
    int present = 0;
    for (size_t i = 0; i < h->n_headers && !present; i++) {
      const tunnel__httpreq_header *f = &h->headers[i];
      present = eq_nocase(f->name, f->name_len, "host", 4) &&
                !name_in(f->name, f->name_len, o->remove, o->n_remove);
    }
    if (!present) {
      put_field(&w, m_names[M_HOST], 4, mv[M_HOST], ml[M_HOST]);
      m_done[M_HOST] = 1;
    }
  }

  for (size_t i = 0; i < h->n_headers; i++) {
    const tunnel__httpreq_header *f = &h->headers[i];
    if (name_in_set(f->name, f->name_len, o)) {
      for (size_t s = 0; s < o->n_set; s++) {
        const char *sn = o->set[s].name;
        if (!set_done[s] && eq_nocase(f->name, f->name_len, sn, strlen(sn))) {
          put_field(&w, sn, strlen(sn), o->set[s].value,
                    strlen(o->set[s].value));
          set_done[s] = 1;
        }
      }
      continue;
    }
    if (name_in(f->name, f->name_len, o->remove, o->n_remove))
      continue;
    int m = 0;
    while (m < M__COUNT &&
           !eq_nocase(f->name, f->name_len, m_names[m], strlen(m_names[m])))
      m++;
    if (m < M__COUNT && mv[m]) {
      if (!m_done[m]) {
        if (m == M_XFF)
          put_xff(&w, h, i, client);
        else
          put_field(&w, f->name, f->name_len, mv[m], ml[m]);
        m_done[m] = 1;
      }
      continue;
    }
    put_field(&w, f->name, f->name_len, f->value, f->value_len);
  }

  for (size_t s = 0; s < o->n_set; s++)
    if (!set_done[s])
      put_field(&w, o->set[s].name, strlen(o->set[s].name), o->set[s].value,
                strlen(o->set[s].value));
  for (int m = 0; m < M__COUNT; m++) {
    if (!mv[m] || m_done[m])
      continue;
    if (m == M_XFF)
      put_xff(&w, h, h->n_headers, client);
    else
      put_field(&w, m_names[m], strlen(m_names[m]), mv[m], ml[m]);
  }
  put(&w, "\r\n", 2);

  int rc = tunnel__bufq_appendv(out, v, w.n);
  tunnel__free(r->mem, v);
  return rc;
}

/* ----------------------------------------------------------- basic auth */

static int b64_char(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '+' || c == '/';
}

/* RFC 4648 base64 with padding, and nothing else (mbedTLS would also skip
 * spaces and line breaks). */
static int b64_ok(const char *s, size_t n) {
  if (n == 0 || n % 4)
    return 0;
  size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
  for (size_t i = 0; i < n - pad; i++)
    if (!b64_char((unsigned char)s[i]))
      return 0;
  return 1;
}

static int sha256_of(const char *s, uint8_t out[32]) {
  mbedtls_sha256_context c;
  mbedtls_sha256_init(&c);
  int rc = sha256_starts(&c, 0);
  if (!rc)
    rc = sha256_update(&c, (const unsigned char *)s, strlen(s));
  if (!rc)
    rc = sha256_finish(&c, out);
  mbedtls_sha256_free(&c);
  return rc;
}

/* Decodes the credentials in blocks, hashing the user-id (up to the first
 * ':') and the password apart, so no buffer is needed whatever their
 * length. Returns 1 if a ':' was seen, 0 if not, -1 on error. */
static int hash_credentials(const char *s, size_t n, mbedtls_sha256_context *u,
                            mbedtls_sha256_context *p) {
  int in_pass = 0;
  for (size_t off = 0; off < n; off += 64) {
    size_t blk = n - off < 64 ? n - off : 64;
    unsigned char d[48];
    size_t dl = 0;
    if (mbedtls_base64_decode(d, sizeof d, &dl, (const unsigned char *)s + off,
                              blk) != 0)
      return -1;
    size_t i = 0;
    if (!in_pass) {
      const unsigned char *colon = memchr(d, ':', dl);
      i = colon ? (size_t)(colon - d) : dl;
      if (i && sha256_update(u, d, i) != 0)
        return -1;
      if (colon) {
        in_pass = 1;
        i++;
      }
    }
    if (in_pass && dl > i && sha256_update(p, d + i, dl - i) != 0)
      return -1;
  }
  return in_pass;
}

int tunnel__httpreq_basic_auth(const tunnel__httpreq_head *h, const char *user,
                               const char *pass) {
  size_t count = 0;
  const tunnel__httpreq_header *f =
      tunnel__httpreq_find(h, "authorization", &count);
  if (!f)
    return TUNNEL__HTTP_AUTH_NONE;
  const char *s = f->value;
  size_t n = f->value_len, sl = 0;
  while (sl < n && s[sl] != ' ' && s[sl] != '\t')
    sl++;
  if (!eq_nocase(s, sl, "basic", 5))
    return count > 1 ? TUNNEL__HTTP_AUTH_MISMATCH : TUNNEL__HTTP_AUTH_NONE;
  if (count > 1)
    return TUNNEL__HTTP_AUTH_MISMATCH;
  s += sl;
  n -= sl;
  trim(&s, &n);
  if (!b64_ok(s, n))
    return TUNNEL__HTTP_AUTH_MISMATCH;

  uint8_t want_u[32], want_p[32], got_u[32], got_p[32];
  if (sha256_of(user ? user : "", want_u) != 0 ||
      sha256_of(pass ? pass : "", want_p) != 0)
    return TUNNEL_ECRYPTO;
  mbedtls_sha256_context cu, cp;
  mbedtls_sha256_init(&cu);
  mbedtls_sha256_init(&cp);
  int rc = sha256_starts(&cu, 0) || sha256_starts(&cp, 0) ? -1 : 0;
  if (!rc)
    rc = hash_credentials(s, n, &cu, &cp);
  if (rc == 1)
    rc = sha256_finish(&cu, got_u) || sha256_finish(&cp, got_p) ? -1 : 1;
  mbedtls_sha256_free(&cu);
  mbedtls_sha256_free(&cp);
  if (rc < 0) /* a decoding failure is a malformed credential */
    return TUNNEL__HTTP_AUTH_MISMATCH;
  if (rc == 0)
    return TUNNEL__HTTP_AUTH_MISMATCH;
  /* No early exit: both halves are compared whatever the first gives. */
  int ok =
      tunnel__ct_equal(got_u, want_u, 32) & tunnel__ct_equal(got_p, want_p, 32);
  return ok ? TUNNEL__HTTP_AUTH_MATCH : TUNNEL__HTTP_AUTH_MISMATCH;
}

/* ---------------------------------------------------------- error pages */

static const struct {
  int status;
  const char *reason;
} reasons[] = {
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {408, "Request Timeout"},
    {413, "Payload Too Large"},
    {414, "URI Too Long"},
    {421, "Misdirected Request"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

const char *tunnel__http_reason(int status) {
  for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
    if (reasons[i].status == status)
      return reasons[i].reason;
  return NULL;
}

int tunnel__http_error_page(int status, const char *realm, tunnel__bufq *out) {
  const char *reason = tunnel__http_reason(status);
  if (!reason)
    return TUNNEL_EINVAL;
  if (!realm)
    realm = "Restricted";
  if (!value_ok(realm) || strpbrk(realm, "\"\\"))
    return TUNNEL_EINVAL;
  char body[256], head[256];
  int bl = snprintf(body, sizeof body,
                    "<!DOCTYPE html>\n<html><head><title>%d %s</title></head>"
                    "\n<body><h1>%d %s</h1></body></html>\n",
                    status, reason, status, reason);
  int hl = snprintf(head, sizeof head,
                    "HTTP/1.1 %d %s\r\n"
                    "Content-Type: text/html; charset=utf-8\r\n"
                    "Content-Length: %d\r\n"
                    "Connection: close\r\n",
                    status, reason, bl);
  static const char auth_pre[] = "WWW-Authenticate: Basic realm=\"";
  static const char auth_post[] = "\"\r\n";
  tunnel__iov v[6];
  size_t n = 0;
  v[n++] = (tunnel__iov){(const uint8_t *)head, (size_t)hl};
  if (status == 401) {
    v[n++] = (tunnel__iov){(const uint8_t *)auth_pre, sizeof auth_pre - 1};
    v[n++] = (tunnel__iov){(const uint8_t *)realm, strlen(realm)};
    v[n++] = (tunnel__iov){(const uint8_t *)auth_post, sizeof auth_post - 1};
  }
  v[n++] = (tunnel__iov){(const uint8_t *)"\r\n", 2};
  v[n++] = (tunnel__iov){(const uint8_t *)body, (size_t)bl};
  return tunnel__bufq_appendv(out, v, n);
}
