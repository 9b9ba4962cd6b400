#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <mbedtls/base64.h>

#include "httpreq.h"

/* ------------------------------------------------------------- helpers */

/* Allocator that fails every call after the first `fail_after`; cmocka
 * reports any block left allocated at the end of a test. */
static long fail_after = -1;
static void *t_malloc(size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  return test_malloc(n);
}
static void *t_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  return test_realloc(p, n);
}
static void t_free(void *p, void *ud) {
  (void)ud;
  test_free(p);
}
static const tunnel__mem tmem = {t_malloc, t_realloc, t_free, NULL};

/* Allocator that tracks the bytes it has live and their peak. */
typedef union counted_hdr {
  size_t size;
  max_align_t align;
} counted_hdr;
static size_t live_bytes, peak_bytes;
static void *c_malloc(size_t n, void *ud) {
  (void)ud;
  counted_hdr *h = test_malloc(sizeof *h + n);
  h->size = n;
  live_bytes += n;
  if (live_bytes > peak_bytes)
    peak_bytes = live_bytes;
  return h + 1;
}
static void *c_realloc(void *p, size_t n, void *ud) {
  if (!p)
    return c_malloc(n, ud);
  counted_hdr *h = (counted_hdr *)p - 1;
  size_t old = h->size;
  h = test_realloc(h, sizeof *h + n);
  h->size = n;
  live_bytes = live_bytes - old + n;
  if (live_bytes > peak_bytes)
    peak_bytes = live_bytes;
  return h + 1;
}
static void c_free(void *p, void *ud) {
  (void)ud;
  if (!p)
    return;
  counted_hdr *h = (counted_hdr *)p - 1;
  live_bytes -= h->size;
  test_free(h);
}
static const tunnel__mem cmem = {c_malloc, c_realloc, c_free, NULL};

static tunnel__httpreq *new_req(size_t max_head, size_t max_headers) {
  tunnel__httpreq *r;
  assert_int_equal(tunnel__httpreq_new(&r, &tmem, max_head, max_headers), 0);
  return r;
}

static int feed_str(tunnel__httpreq *r, const char *s, size_t *used) {
  return tunnel__httpreq_feed(r, (const uint8_t *)s, strlen(s), used);
}

/* Copies the queue into a NUL-terminated test_malloc'd string. */
static char *drain(tunnel__bufq *q) {
  char *out = test_malloc(q->size + 1);
  size_t len = 0;
  while (q->size) {
    tunnel__iov iov[4];
    size_t n = tunnel__bufq_iov(q, iov, 4);
    assert_true(n > 0);
    memcpy(out + len, iov[0].base, iov[0].len);
    len += iov[0].len;
    tunnel__bufq_consume(q, iov[0].len);
  }
  out[len] = '\0';
  return out;
}

/* Rewrites the current head and compares with `want`. */
static void check_rewrite(tunnel__httpreq *r,
                          const tunnel__httpreq_rewrite_opts *o,
                          const char *want) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  assert_int_equal(tunnel__httpreq_rewrite(r, o, &q), 0);
  char *got = drain(&q);
  assert_string_equal(got, want);
  test_free(got);
  tunnel__bufq_free(&q);
}

/* Parses one complete head and returns the parser positioned after it. */
static tunnel__httpreq *parse_head(const char *s) {
  tunnel__httpreq *r = new_req(0, 0);
  size_t used;
  assert_int_equal(feed_str(r, s, &used), TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(used, strlen(s));
  return r;
}

/* Status of the ERROR a complete request gets, whole and byte by byte. */
static int status_of(const char *s) {
  int st[2];
  for (int pass = 0; pass < 2; pass++) {
    tunnel__httpreq *r = new_req(0, 0);
    size_t off = 0, len = strlen(s), used;
    int rc = TUNNEL__HTTPREQ_MORE;
    while (off < len) {
      size_t n = pass ? 1 : len - off;
      rc = tunnel__httpreq_feed(r, (const uint8_t *)s + off, n, &used);
      off += used;
      if (rc != TUNNEL__HTTPREQ_MORE && rc != TUNNEL__HTTPREQ_HEAD)
        break;
    }
    st[pass] = rc == TUNNEL__HTTPREQ_ERROR ? tunnel__httpreq_status(r) : -rc;
    tunnel__httpreq_free(r);
  }
  assert_int_equal(st[0], st[1]);
  return st[0];
}

/* Transcript of a stream fed in pieces: one line per event, body bytes
 * merged across consecutive BODY events, raw bytes after UPGRADE. */
typedef struct tx {
  char s[16384];
  size_t n;
  int in_body;
} tx;

static void tx_add(tx *t, const char *p, size_t n) {
  assert_true(t->n + n < sizeof t->s);
  memcpy(t->s + t->n, p, n);
  t->n += n;
  t->s[t->n] = '\0';
}

static void tx_printf(tx *t, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  assert_true(n > 0 && (size_t)n < sizeof line);
  tx_add(t, line, (size_t)n);
}

static void tx_head(tx *t, const tunnel__httpreq_head *h) {
  tx_printf(t,
            "HEAD %s %.*s host=%s port=%d auth=%.*s path=%.*s up=%d "
            "ka=%d ch=%d cl=%d:%llu hl=%zu n=%zu\n",
            h->method, (int)h->target_len, h->target, h->host, h->port,
            (int)h->authority_len, h->authority, (int)h->path_len, h->path,
            h->upgrade, h->keep_alive, h->chunked, h->has_content_length,
            (unsigned long long)h->content_length, h->head_len, h->n_headers);
}

/* Feeds data[0, len) in pieces ending at the `cuts` (ascending, < len). */
static void run_cuts(const char *data, size_t len, const size_t *cuts,
                     size_t ncuts, tx *t) {
  tunnel__httpreq *r = new_req(0, 0);
  memset(t, 0, sizeof *t);
  size_t off = 0;
  for (size_t c = 0; c <= ncuts; c++) {
    size_t end = c < ncuts ? cuts[c] : len;
    for (;;) {
      size_t used;
      int rc = tunnel__httpreq_feed(r, (const uint8_t *)data + off, end - off,
                                    &used);
      assert_true(used <= end - off);
      if (rc == TUNNEL__HTTPREQ_BODY) {
        assert_true(used > 0);
        if (!t->in_body)
          tx_add(t, "BODY ", 5);
        t->in_body = 1;
        tx_add(t, data + off, used);
        off += used;
        continue;
      }
      if (t->in_body && rc != TUNNEL__HTTPREQ_MORE)
        tx_add(t, "\n", 1);
      if (rc != TUNNEL__HTTPREQ_MORE)
        t->in_body = 0;
      off += used;
      if (rc == TUNNEL__HTTPREQ_MORE) {
        assert_int_equal(off, end);
        break;
      }
      if (rc == TUNNEL__HTTPREQ_HEAD) {
        tx_head(t, tunnel__httpreq_get_head(r));
      } else if (rc == TUNNEL__HTTPREQ_END) {
        assert_int_equal(used, 0);
        tx_add(t, "END\n", 4);
      } else if (rc == TUNNEL__HTTPREQ_UPGRADE) {
        assert_int_equal(used, 0);
        tx_add(t, "UPGRADE ", 8);
        tx_add(t, data + off, len - off);
        tunnel__httpreq_free(r);
        return;
      } else {
        assert_int_equal(rc, TUNNEL__HTTPREQ_ERROR);
        tx_printf(t, "ERROR %d\n", tunnel__httpreq_status(r));
        tunnel__httpreq_free(r);
        return;
      }
    }
  }
  if (t->in_body)
    tx_add(t, "\n", 1);
  tunnel__httpreq_free(r);
}

/* The transcript does not depend on where the input is cut: whole, at
 * every single offset, and one byte at a time. */
static void check_all_splits(const char *data, const char *want) {
  size_t len = strlen(data);
  static tx whole, part;
  run_cuts(data, len, NULL, 0, &whole);
  if (want)
    assert_string_equal(whole.s, want);
  for (size_t k = 1; k < len; k++) {
    run_cuts(data, len, &k, 1, &part);
    assert_string_equal(part.s, whole.s);
  }
  size_t *cuts = test_malloc(len * sizeof *cuts);
  for (size_t k = 1; k < len; k++)
    cuts[k - 1] = k;
  run_cuts(data, len, cuts, len - 1, &part);
  assert_string_equal(part.s, whole.s);
  test_free(cuts);
}

/* --------------------------------------------------------------- tests */

static void simple_get(void **state) {
  (void)state;
  const char *req = "GET /index.html?x=1 HTTP/1.1\r\n"
                    "Host: Example.COM:8080\r\n"
                    "User-Agent:  t/1 \r\n"
                    "\r\n";
  tunnel__httpreq *r = new_req(0, 0);
  assert_null(tunnel__httpreq_get_head(r));
  size_t used;
  assert_int_equal(feed_str(r, req, &used), TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(used, strlen(req));
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
  assert_non_null(h);
  assert_string_equal(h->method, "GET");
  assert_false(h->connect);
  assert_int_equal(h->version_minor, 1);
  assert_int_equal(h->target_len, 15);
  assert_memory_equal(h->target, "/index.html?x=1", 15);
  assert_false(h->absolute);
  assert_string_equal(h->host, "example.com");
  assert_int_equal(h->host_len, 11);
  assert_int_equal(h->port, 8080);
  assert_int_equal(h->authority_len, 16);
  assert_memory_equal(h->authority, "Example.COM:8080", 16);
  assert_int_equal(h->path_len, 11);
  assert_memory_equal(h->path, "/index.html", 11);
  assert_int_equal(h->n_headers, 2);
  assert_int_equal(h->headers[1].name_len, 10);
  assert_memory_equal(h->headers[1].name, "User-Agent", 10);
  assert_int_equal(h->headers[1].value_len, 3);
  assert_memory_equal(h->headers[1].value, "t/1", 3);
  assert_false(h->upgrade);
  assert_true(h->keep_alive);
  assert_false(h->chunked);
  assert_false(h->has_content_length);
  assert_int_equal(h->head_len, strlen(req));
  size_t count;
  const tunnel__httpreq_header *f =
      tunnel__httpreq_find(h, "user-agent", &count);
  assert_ptr_equal(f, &h->headers[1]);
  assert_int_equal(count, 1);
  assert_null(tunnel__httpreq_find(h, "cookie", &count));
  assert_int_equal(count, 0);

  check_rewrite(r, NULL,
                "GET /index.html?x=1 HTTP/1.1\r\n"
                "Host: Example.COM:8080\r\n"
                "User-Agent: t/1\r\n"
                "\r\n");
  /* No body: END at once, without input; the head lasts until then. */
  assert_int_equal(tunnel__httpreq_feed(r, NULL, 0, &used),
                   TUNNEL__HTTPREQ_END);
  assert_int_equal(used, 0);
  assert_non_null(tunnel__httpreq_get_head(r));
  assert_int_equal(tunnel__httpreq_feed(r, NULL, 0, &used),
                   TUNNEL__HTTPREQ_MORE);
  assert_null(tunnel__httpreq_get_head(r));
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  assert_int_equal(tunnel__httpreq_rewrite(r, NULL, &q), TUNNEL_ESTATE);
  tunnel__bufq_free(&q);
  tunnel__httpreq_free(r);
  tunnel__httpreq_free(NULL);
}

static void keep_alive_pipelined(void **state) {
  (void)state;
  const char *h1 = "GET /a HTTP/1.1\r\nHost: one\r\n\r\n";
  const char *h2 = "POST /b HTTP/1.1\r\nHost: two\r\nContent-Length: 5\r\n\r\n";
  const char *h3 =
      "GET /c HTTP/1.1\r\nHost: three\r\nConnection: close\r\n\r\n";
  char buf[512];
  snprintf(buf, sizeof buf, "%s%shello%s", h1, h2, h3);
  const uint8_t *p = (const uint8_t *)buf;
  size_t len = strlen(buf), off = 0, used;
  tunnel__httpreq *r = new_req(0, 0);

  assert_int_equal(tunnel__httpreq_feed(r, p, len, &used),
                   TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(used, strlen(h1));
  assert_string_equal(tunnel__httpreq_get_head(r)->host, "one");
  off += used;
  assert_int_equal(tunnel__httpreq_feed(r, p + off, len - off, &used),
                   TUNNEL__HTTPREQ_END);
  assert_int_equal(used, 0);

  assert_int_equal(tunnel__httpreq_feed(r, p + off, len - off, &used),
                   TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(used, strlen(h2));
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
  assert_string_equal(h->host, "two");
  assert_true(h->has_content_length);
  assert_int_equal(h->content_length, 5);
  off += used;
  /* The body span stops at the message end, not at the buffer end. */
  assert_int_equal(tunnel__httpreq_feed(r, p + off, len - off, &used),
                   TUNNEL__HTTPREQ_BODY);
  assert_int_equal(used, 5);
  assert_ptr_equal(p + off, (const uint8_t *)buf + strlen(h1) + strlen(h2));
  assert_memory_equal(p + off, "hello", 5);
  off += used;
  assert_int_equal(tunnel__httpreq_feed(r, p + off, len - off, &used),
                   TUNNEL__HTTPREQ_END);
  assert_int_equal(used, 0);

  assert_int_equal(tunnel__httpreq_feed(r, p + off, len - off, &used),
                   TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(used, strlen(h3));
  h = tunnel__httpreq_get_head(r);
  assert_string_equal(h->host, "three");
  assert_false(h->keep_alive);
  off += used;
  assert_int_equal(off, len);
  assert_int_equal(tunnel__httpreq_feed(r, p + off, 0, &used),
                   TUNNEL__HTTPREQ_END);
  /* After a closing request, empty lines are ignored, anything else is an
   * error. */
  assert_int_equal(feed_str(r, "\r\n", &used), TUNNEL__HTTPREQ_MORE);
  assert_int_equal(used, 2);
  assert_int_equal(feed_str(r, "GET / HTTP/1.1\r\n", &used),
                   TUNNEL__HTTPREQ_ERROR);
  assert_int_equal(used, 0);
  tunnel__httpreq_free(r);
}

static void split_at_every_offset(void **state) {
  (void)state;
  check_all_splits(
      "GET /a HTTP/1.1\r\nHost: one\r\n\r\n"
      "\r\n" /* an empty line between requests is tolerated */
      "POST /b HTTP/1.1\r\nHost: Two:81\r\nContent-Length: 5\r\n\r\nhello"
      "PUT /c HTTP/1.1\r\nHost: three\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\n\r\n"
      "GET /d HTTP/1.0\r\n\r\n",
      "HEAD GET /a host=one port=-1 auth=one path=/a up=0 ka=1 ch=0 cl=0:0 "
      "hl=30 n=1\n"
      "END\n"
      "HEAD POST /b host=two port=81 auth=Two:81 path=/b up=0 ka=1 ch=0 "
      "cl=1:5 hl=55 n=2\n"
      "BODY hello\n"
      "END\n"
      "HEAD PUT /c host=three port=-1 auth=three path=/c up=0 ka=1 ch=1 "
      "cl=0:0 hl=60 n=2\n"
      "BODY 3\r\nabc\r\n0\r\n\r\n\n"
      "END\n"
      "HEAD GET /d host= port=-1 auth= path=/d up=0 ka=0 ch=0 cl=0:0 hl=19 "
      "n=0\n"
      "END\n");
  check_all_splits("GET /chat HTTP/1.1\r\nHost: ws.example\r\n"
                   "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
                   "\r\n\x81\x02hi",
                   "HEAD GET /chat host=ws.example port=-1 auth=ws.example "
                   "path=/chat up=1 ka=1 ch=0 cl=0:0 hl=93 n=3\n"
                   "UPGRADE \x81\x02hi");
  check_all_splits("GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                   "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                   "\r\n\r\nzz\r\n",
                   "HEAD GET / host=a port=-1 auth=a path=/ up=0 ka=1 ch=0 "
                   "cl=0:0 hl=27 n=1\n"
                   "END\n"
                   "HEAD POST / host=a port=-1 auth=a path=/ up=0 ka=1 ch=1 "
                   "cl=0:0 hl=56 n=2\n"
                   "ERROR 400\n");
}

static void chunked_body_byte_exact(void **state) {
  (void)state;
  const char *head = "POST /up HTTP/1.1\r\nHost: a\r\n"
                     "Transfer-Encoding: gzip, chunked\r\n\r\n";
  const char *body = "5;name=val\r\nhello\r\n"
                     "6 ; q=\"x\"\r\n world\r\n"
                     "0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n";
  const char *next = "GET /n HTTP/1.1\r\nHost: b\r\n\r\n";
  char buf[512];
  snprintf(buf, sizeof buf, "%s%s%s", head, body, next);
  char want[1024];
  snprintf(want, sizeof want,
           "HEAD POST /up host=a port=-1 auth=a path=/up up=0 ka=1 ch=1 "
           "cl=0:0 hl=%zu n=2\nBODY %s\nEND\n"
           "HEAD GET /n host=b port=-1 auth=b path=/n up=0 ka=1 ch=0 cl=0:0 "
           "hl=%zu n=1\nEND\n",
           strlen(head), body, strlen(next));
  check_all_splits(buf, want);

  /* Trailers are body bytes: the head keeps its own fields only. */
  tunnel__httpreq *r = new_req(0, 0);
  size_t len = strlen(buf), off = 0, used;
  assert_int_equal(tunnel__httpreq_feed(r, (const uint8_t *)buf, len, &used),
                   TUNNEL__HTTPREQ_HEAD);
  off += used;
  assert_int_equal(
      tunnel__httpreq_feed(r, (const uint8_t *)buf + off, len - off, &used),
      TUNNEL__HTTPREQ_BODY);
  assert_int_equal(used, strlen(body));
  assert_int_equal(tunnel__httpreq_get_head(r)->n_headers, 2);
  assert_null(
      tunnel__httpreq_find(tunnel__httpreq_get_head(r), "x-trailer", NULL));
  tunnel__httpreq_free(r);
}

/* Chunk framing is checked strictly: the body goes out unchanged, so it
 * must read the same to any parser behind the tunnel. */
static void chunked_framing_strict(void **state) {
  (void)state;
  static const struct {
    const char *body;
    int ok;
  } cases[] = {
      {"5\r\nhello\r\n0\r\n\r\n", 1},
      {"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n", 1},
      {"5 ;x=1\r\nhello\r\n0;last\r\n\r\n", 1},
      {"00005\r\nhello\r\n0\r\nA: 1\r\nB:\r\n\r\n", 1},
      {"5\r\nhelloXY0\r\n\r\n", 0}, /* no CRLF after data */
      {"5\r\nhello\n0\r\n\r\n", 0}, /* bare LF after data */
      {"5\r\nhelloX\n0\r\n\r\n", 0},
      {"5\r\nhello\rX0\r\n\r\n", 0},
      {"5;a\nb\r\nhello\r\n0\r\n\r\n", 0}, /* LF in an extension */
      {"5\nhello\r\n0\r\n\r\n", 0},        /* bare LF after size */
      {"5\rXhello\r\n0\r\n\r\n", 0},       /* bare CR after size */
      {" 5\r\nhello\r\n0\r\n\r\n", 0},
      {"5 \r\nhello\r\n0\r\n\r\n", 0},
      {"0x5\r\nhello\r\n0\r\n\r\n", 0},
      {"-5\r\nhello\r\n0\r\n\r\n", 0},
      {"\r\n", 0},
      {"10000000000000000\r\n", 0},   /* 2^64 */
      {"0\r\nA: b\r\n c\r\n\r\n", 0}, /* folded trailer */
      {"0\r\nAb\r\n\r\n", 0},
      {"0\r\nA b: 1\r\n\r\n", 0},
      {"0\r\nA: \x01\r\n\r\n", 0},
      {"0\r\n\rX", 0},
      {"0\r\n\n", 0},
      {"5;\x7f\r\nhello\r\n0\r\n\r\n", 0},
  };
  const char *head = "POST / HTTP/1.1\r\nHost: a\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n";
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s", head, cases[i].body);
    static tx t;
    run_cuts(buf, strlen(buf), NULL, 0, &t);
    static const char head_line[] =
        "HEAD POST / host=a port=-1 auth=a path=/ up=0 ka=1 ch=1 cl=0:0 "
        "hl=56 n=2\n";
    char want[512];
    snprintf(want, sizeof want, "%sBODY %s\nEND\n", head_line, cases[i].body);
    size_t tl = strlen(t.s);
    int ok = cases[i].ok
                 ? strcmp(t.s, want) == 0
                 : strncmp(t.s, head_line, sizeof head_line - 1) == 0 &&
                       tl > 10 && strcmp(t.s + tl - 10, "ERROR 400\n") == 0;
    if (!ok)
      fail_msg("case %zu: %s", i, t.s);
  }
  assert_int_equal(status_of("GET / HXXP/1.1\r\nHost: a\r\n\r\n"), 400);
  assert_int_equal(status_of("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  assert_int_equal(status_of("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400);
}

static void large_body_constant_memory(void **state) {
  (void)state;
  const uint64_t total = 100ull << 20;
  char head[128];
  snprintf(head, sizeof head,
           "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %llu\r\n\r\n",
           (unsigned long long)total);
  live_bytes = peak_bytes = 0;
  tunnel__httpreq *r;
  assert_int_equal(tunnel__httpreq_new(&r, &cmem, 0, 0), 0);
  size_t used;
  assert_int_equal(feed_str(r, head, &used), TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(tunnel__httpreq_get_head(r)->content_length, total);
  size_t after_head = live_bytes;

  enum { CHUNK = 65536 };
  uint8_t *chunk = malloc(CHUNK);
  assert_non_null(chunk);
  memset(chunk, 'x', CHUNK);
  uint64_t body = 0;
  size_t events = 0;
  while (body < total) {
    assert_int_equal(tunnel__httpreq_feed(r, chunk, CHUNK, &used),
                     TUNNEL__HTTPREQ_BODY);
    assert_true(used > 0 && used <= CHUNK);
    body += used;
    events++;
    assert_int_equal(live_bytes, after_head);
  }
  assert_int_equal(body, total);
  assert_int_equal(events, total / CHUNK);
  assert_int_equal(tunnel__httpreq_feed(r, chunk, CHUNK, &used),
                   TUNNEL__HTTPREQ_END);
  assert_int_equal(used, 0);
  /* A body ending mid-buffer: its span stops there. */
  char buf[256];
  snprintf(buf, sizeof buf,
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET");
  assert_int_equal(feed_str(r, buf, &used), TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(feed_str(r, buf + used, &used), TUNNEL__HTTPREQ_BODY);
  assert_int_equal(used, 3);
  free(chunk);
  /* Nothing but the head is ever held: well under 16 KiB here. */
  assert_true(peak_bytes < 16384);
  tunnel__httpreq_free(r);
  assert_int_equal(live_bytes, 0);
}

static void absolute_form(void **state) {
  (void)state;
  tunnel__httpreq *r =
      parse_head("GET http://Example.com:8080/p/q?x=1 HTTP/1.1\r\n"
                 "Host: other.org\r\nAccept: */*\r\n\r\n");
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
  assert_true(h->absolute);
  assert_string_equal(h->host, "example.com");
  assert_int_equal(h->port, 8080);
  assert_int_equal(h->path_len, 4);
  assert_memory_equal(h->path, "/p/q", 4);
  /* Origin form to the tunnel, Host from the target (RFC 7230 5.4). */
  check_rewrite(r, NULL,
                "GET /p/q?x=1 HTTP/1.1\r\n"
                "Host: Example.com:8080\r\n"
                "Accept: */*\r\n\r\n");
  tunnel__httpreq_rewrite_opts o = {.host = "backend.local"};
  check_rewrite(r, &o,
                "GET /p/q?x=1 HTTP/1.1\r\n"
                "Host: backend.local\r\n"
                "Accept: */*\r\n\r\n");
  tunnel__httpreq_free(r);

  r = parse_head("GET https://a.b?q HTTP/1.1\r\n\r\n");
  h = tunnel__httpreq_get_head(r);
  assert_string_equal(h->host, "a.b");
  assert_int_equal(h->path_len, 1);
  check_rewrite(r, NULL, "GET /?q HTTP/1.1\r\nHost: a.b\r\n\r\n");
  tunnel__httpreq_free(r);

  r = parse_head("OPTIONS HTTP://A.B HTTP/1.1\r\nHost: c\r\n\r\n");
  check_rewrite(r, NULL, "OPTIONS / HTTP/1.1\r\nHost: A.B\r\n\r\n");
  tunnel__httpreq_free(r);

  assert_int_equal(status_of("GET ftp://a.b/ HTTP/1.1\r\nHost: a\r\n\r\n"),
                   400);
  assert_int_equal(status_of("GET http://u:p@a.b/ HTTP/1.1\r\nHost: a\r\n\r\n"),
                   400);
  assert_int_equal(status_of("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

static void host_forms(void **state) {
  (void)state;
  static const struct {
    const char *value;
    const char *host;
    int port;
  } ok[] = {
      {"EXAMPLE.com", "example.com", -1},
      {"a.b:80", "a.b", 80},
      {"a.b:", "a.b", -1},
      {"[::1]:8080", "[::1]", 8080},
      {"[2001:DB8::1]", "[2001:db8::1]", -1},
      {"10.0.0.1:65535", "10.0.0.1", 65535},
      {"", "", -1},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    char req[256];
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n",
             ok[i].value);
    tunnel__httpreq *r = parse_head(req);
    const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
    assert_string_equal(h->host, ok[i].host);
    assert_int_equal(h->port, ok[i].port);
    assert_int_equal(h->authority_len, strlen(ok[i].value));
    tunnel__httpreq_free(r);
  }
  static const char *const bad[] = {
      "a b", "a:99999", "a:8x",     "[::1",         "[::1]x", "a@b",
      ":80", "[]:1",    "a:123456", "\xc3\xa9.com", "a/b",    "[g::1]",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char req[256];
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
    assert_int_equal(status_of(req), 400);
  }
  assert_int_equal(status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
                   400);
}

static void host_required_on_1_1(void **state) {
  (void)state;
  assert_int_equal(status_of("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"), 400);
  tunnel__httpreq *r = parse_head("GET / HTTP/1.0\r\n\r\n");
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
  assert_int_equal(h->version_minor, 0);
  assert_string_equal(h->host, "");
  assert_int_equal(h->authority_len, 0);
  assert_false(h->keep_alive);
  tunnel__httpreq_rewrite_opts o = {.forwarded_host = 1};
  check_rewrite(r, &o, "GET / HTTP/1.0\r\n\r\n");
  /* A Host rewrite adds the field, first. */
  o.host = "svc";
  check_rewrite(r, &o, "GET / HTTP/1.0\r\nHost: svc\r\n\r\n");
  tunnel__httpreq_free(r);
  r = parse_head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  assert_true(tunnel__httpreq_get_head(r)->keep_alive);
  tunnel__httpreq_free(r);
}

static void head_limits(void **state) {
  (void)state;
  const char *req = "GET /0123456789 HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789"
                    "\r\n\r\n";
  size_t len = strlen(req), used;
  /* Exactly at the limit is fine; one byte less is 431. */
  for (int pass = 0; pass < 2; pass++) {
    tunnel__httpreq *r = new_req(len, 0);
    size_t off = 0;
    int rc;
    do {
      rc = tunnel__httpreq_feed(r, (const uint8_t *)req + off,
                                pass ? 1 : len - off, &used);
      off += used;
    } while (rc == TUNNEL__HTTPREQ_MORE);
    assert_int_equal(rc, TUNNEL__HTTPREQ_HEAD);
    tunnel__httpreq_free(r);

    r = new_req(len - 1, 0);
    off = 0;
    do {
      rc = tunnel__httpreq_feed(r, (const uint8_t *)req + off,
                                pass ? 1 : len - off, &used);
      off += used;
    } while (rc == TUNNEL__HTTPREQ_MORE && off < len);
    assert_int_equal(rc, TUNNEL__HTTPREQ_ERROR);
    assert_int_equal(tunnel__httpreq_status(r), 431);
    assert_true(off < len);
    /* Sticky. */
    assert_int_equal(tunnel__httpreq_feed(r, (const uint8_t *)req, len, &used),
                     TUNNEL__HTTPREQ_ERROR);
    assert_int_equal(used, 0);
    tunnel__httpreq_free(r);
  }

  /* The default limit, with a head that never ends. */
  tunnel__httpreq *r = new_req(0, 0);
  char junk[1024];
  memset(junk, 'a', sizeof junk);
  assert_int_equal(feed_str(r, "GET / HTTP/1.1\r\nX-Long: ", &used),
                   TUNNEL__HTTPREQ_MORE);
  size_t total = used;
  int rc;
  while ((rc = tunnel__httpreq_feed(r, (const uint8_t *)junk, sizeof junk,
                                    &used)) == TUNNEL__HTTPREQ_MORE)
    total += used;
  assert_int_equal(rc, TUNNEL__HTTPREQ_ERROR);
  assert_int_equal(tunnel__httpreq_status(r), 431);
  assert_true(total <= TUNNEL__HTTPREQ_MAX_HEAD);
  tunnel__httpreq_free(r);

  /* Header count. */
  const char *three = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
  const char *four =
      "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  r = new_req(0, 3);
  assert_int_equal(feed_str(r, three, &used), TUNNEL__HTTPREQ_HEAD);
  tunnel__httpreq_free(r);
  r = new_req(0, 3);
  assert_int_equal(feed_str(r, four, &used), TUNNEL__HTTPREQ_ERROR);
  assert_int_equal(tunnel__httpreq_status(r), 431);
  tunnel__httpreq_free(r);
}

static void upgrade_and_connect(void **state) {
  (void)state;
  const char *ws = "GET /chat HTTP/1.1\r\n"
                   "Host: server.example.com\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n";
  char buf[512];
  size_t hl = strlen(ws);
  memcpy(buf, ws, hl);
  memcpy(buf + hl, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
  tunnel__httpreq *r = new_req(0, 0);
  size_t used;
  assert_int_equal(
      tunnel__httpreq_feed(r, (const uint8_t *)buf, hl + 11, &used),
      TUNNEL__HTTPREQ_HEAD);
  assert_int_equal(used, hl);
  assert_true(tunnel__httpreq_get_head(r)->upgrade);
  tunnel__httpreq_rewrite_opts o = {.client_addr = "192.0.2.1"};
  check_rewrite(r, &o,
                "GET /chat HTTP/1.1\r\n"
                "Host: server.example.com\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "X-Forwarded-For: 192.0.2.1\r\n\r\n");
  for (int i = 0; i < 2; i++) {
    assert_int_equal(
        tunnel__httpreq_feed(r, (const uint8_t *)buf + hl, 11, &used),
        TUNNEL__HTTPREQ_UPGRADE);
    assert_int_equal(used, 0);
  }
  tunnel__httpreq_free(r);

  r = parse_head("CONNECT Example.com:443 HTTP/1.1\r\nHost: x:1\r\n\r\n");
  const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
  assert_true(h->connect);
  assert_true(h->upgrade);
  assert_string_equal(h->host, "example.com");
  assert_int_equal(h->port, 443);
  assert_int_equal(h->path_len, 0);
  check_rewrite(r, NULL,
                "CONNECT Example.com:443 HTTP/1.1\r\nHost: x:1\r\n"
                "\r\n");
  assert_int_equal(feed_str(r, "\x16\x03\x01", &used), TUNNEL__HTTPREQ_UPGRADE);
  tunnel__httpreq_free(r);
  assert_int_equal(status_of("CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n"),
                   400);

  /* The decision follows the parsed tokens: whitespace around them, a
   * list, or case do not change it, so the rewritten head (which trims
   * values) says the same as the received one. */
  r = parse_head("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                 "Connection: keep-alive,\tUpgrade\t\r\n\r\n");
  assert_true(tunnel__httpreq_get_head(r)->upgrade);
  tunnel__httpreq_free(r);
  r = parse_head("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                 "Connection: upgraded, close\r\n\r\n");
  assert_false(tunnel__httpreq_get_head(r)->upgrade);
  tunnel__httpreq_free(r);

  /* Upgrade without Connection: upgrade is an ordinary request. */
  check_all_splits("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
                   "HEAD GET / host=a port=-1 auth=a path=/ up=0 ka=1 ch=0 "
                   "cl=0:0 hl=41 n=2\nEND\n");
}

static void forwarded_headers(void **state) {
  (void)state;
  tunnel__httpreq *r = parse_head("POST /x HTTP/1.1\r\n"
                                  "X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\n"
                                  "host: Site.Example\r\n"
                                  "X-Forwarded-Proto: https\r\n"
                                  "x-forwarded-for: 3.3.3.3\r\n"
                                  "X-Forwarded-Host: evil\r\n"
                                  "Content-Length: 0\r\n"
                                  "X-Forwarded-For:\r\n"
                                  "\r\n");
  tunnel__httpreq_rewrite_opts o = {
      .client_addr = "4.4.4.4", .proto = "http", .forwarded_host = 1};
  check_rewrite(r, &o,
                "POST /x HTTP/1.1\r\n"
                "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4\r\n"
                "host: Site.Example\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: Site.Example\r\n"
                "Content-Length: 0\r\n"
                "\r\n");
  /* Removing the visitor's chain keeps only the address we saw. */
  const char *rm[] = {"x-forwarded-for", "X-FORWARDED-HOST"};
  o.remove = rm;
  o.n_remove = 2;
  o.forwarded_host = 0;
  check_rewrite(r, &o,
                "POST /x HTTP/1.1\r\n"
                "host: Site.Example\r\n"
                "X-Forwarded-Proto: http\r\n"
                "Content-Length: 0\r\n"
                "X-Forwarded-For: 4.4.4.4\r\n"
                "\r\n");
  /* Nothing asked: the head goes out as received (normalized). */
  check_rewrite(r, NULL,
                "POST /x HTTP/1.1\r\n"
                "X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\n"
                "host: Site.Example\r\n"
                "X-Forwarded-Proto: https\r\n"
                "x-forwarded-for: 3.3.3.3\r\n"
                "X-Forwarded-Host: evil\r\n"
                "Content-Length: 0\r\n"
                "X-Forwarded-For: \r\n"
                "\r\n");
  tunnel__httpreq_free(r);

  r = parse_head("GET / HTTP/1.1\r\nHost: a:8\r\n\r\n");
  tunnel__httpreq_rewrite_opts o2 = {
      .client_addr = "2001:db8::1", .proto = "https", .forwarded_host = 1};
  check_rewrite(r, &o2,
                "GET / HTTP/1.1\r\nHost: a:8\r\n"
                "X-Forwarded-For: 2001:db8::1\r\n"
                "X-Forwarded-Proto: https\r\n"
                "X-Forwarded-Host: a:8\r\n\r\n");
  tunnel__httpreq_free(r);
}

static void host_rewrite_set_remove(void **state) {
  (void)state;
  tunnel__httpreq *r = parse_head("GET /p HTTP/1.1\r\n"
                                  "User-Agent: ua\r\n"
                                  "HOST: Public.Example\r\n"
                                  "x-custom: a\r\n"
                                  "Cookie: c=1\r\n"
                                  "X-Custom: b\r\n"
                                  "cookie: d=2\r\n"
                                  "Accept: */*\r\n\r\n");
  const tunnel__httpreq_kv set[] = {
      {"X-Custom", "one"}, {"X-New", "v\tw"}, {"X-Forwarded-Proto", "wss"}};
  const char *rm[] = {"COOKIE"};
  tunnel__httpreq_rewrite_opts o = {.host = "127.0.0.1:8080",
                                    .proto = "http",
                                    .forwarded_host = 1,
                                    .set = set,
                                    .n_set = 3,
                                    .remove = rm,
                                    .n_remove = 1};
  check_rewrite(r, &o,
                "GET /p HTTP/1.1\r\n"
                "User-Agent: ua\r\n"
                "HOST: 127.0.0.1:8080\r\n"
                "X-Custom: one\r\n"
                "Accept: */*\r\n"
                "X-New: v\tw\r\n"
                "X-Forwarded-Proto: wss\r\n"
                "X-Forwarded-Host: Public.Example\r\n"
                "\r\n");
  /* The routing host is unchanged by any of it. */
  assert_string_equal(tunnel__httpreq_get_head(r)->host, "public.example");
  tunnel__httpreq_free(r);
}

static void smuggling_refused(void **state) {
  (void)state;
  static const struct {
    const char *req;
    int status;
  } cases[] = {
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
       "Transfer-Encoding: chunked\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
       "Content-Length: 3\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
       "Content-Length: 3\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
       "Content-Length: 4\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\n"
       "Content-Length: 99999999999999999999999\r\n\r\n",
       400},
      /* obs-fold, also of a framing header */
      {"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
       " , chunked\r\n\r\n",
       400},
      {"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400},
      /* whitespace before the colon */
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
       400},
      /* chunked not last, twice, or split over fields */
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n"
       "\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
       "Transfer-Encoding: gzip\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked"
       "\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400},
      {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      /* codings nobody can frame */
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
       501},
      /* bare CR */
      {"GET / HTTP/1.1\r\nHost: a\r\n\rX", 400},
      {"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400},
      /* control characters */
      {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\nX: \x14"
       "a\r\n\r\n",
       400},
      {"GET / HTTP/1.1\r\nHost: a\r\nX:\x7f\r\n\r\n", 400},
      {"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      /* versions */
      {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
      {"GET /\r\n\r\n", 505},
      {"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (status_of(cases[i].req) != cases[i].status)
      fail_msg("case %zu: status %d, want %d", i, status_of(cases[i].req),
               cases[i].status);
  }
  /* NUL anywhere in the head. */
  static const char nul[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
  tunnel__httpreq *rn = new_req(0, 0);
  size_t nused;
  assert_int_equal(
      tunnel__httpreq_feed(rn, (const uint8_t *)nul, sizeof nul - 1, &nused),
      TUNNEL__HTTPREQ_ERROR);
  assert_int_equal(tunnel__httpreq_status(rn), 400);
  tunnel__httpreq_free(rn);
  /* The only accepted Transfer-Encoding ends with a single chunked. */
  tunnel__httpreq *r = parse_head("POST / HTTP/1.1\r\nHost: a\r\n"
                                  "Transfer-Encoding: gzip\r\n"
                                  "Transfer-Encoding: Chunked\r\n\r\n");
  assert_true(tunnel__httpreq_get_head(r)->chunked);
  tunnel__httpreq_free(r);
  /* Bare LF line ends are accepted; the tunnel gets CRLF. */
  r = parse_head("GET / HTTP/1.1\nHost: a\nX: 1\n\n");
  check_rewrite(r, NULL, "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n");
  tunnel__httpreq_free(r);
  /* A malformed chunk after the head: ERROR, to close. */
  r = parse_head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                 "\r\n\r\n");
  size_t used;
  assert_int_equal(feed_str(r, "zz\r\n", &used), TUNNEL__HTTPREQ_ERROR);
  assert_int_equal(used, 0);
  assert_null(tunnel__httpreq_get_head(r));
  tunnel__httpreq_free(r);
}

static void rewrite_rejects_injection(void **state) {
  (void)state;
  tunnel__httpreq *r = parse_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  static const tunnel__httpreq_kv bad_sets[][1] = {
      {{"X-A", "1\r\nX-Evil: 1"}},
      {{"X-A", "1\nX"}},
      {{"X-A", "1\rX"}},
      {{"X-A", "\x7f"}},
      {{"X-A", "a\x01"}},
      {{"Bad Name", "1"}},
      {{"X:", "1"}},
      {{"", "1"}},
      {{"X\r\nY", "1"}},
      {{NULL, "1"}},
      {{"X-A", NULL}},
  };
  for (size_t i = 0; i < sizeof bad_sets / sizeof bad_sets[0]; i++) {
    tunnel__httpreq_rewrite_opts o = {.set = bad_sets[i], .n_set = 1};
    assert_int_equal(tunnel__httpreq_rewrite(r, &o, &q), TUNNEL_EINVAL);
    assert_int_equal(q.size, 0);
  }
  tunnel__httpreq_rewrite_opts o = {.host = "a\r\nX-Evil: 1"};
  assert_int_equal(tunnel__httpreq_rewrite(r, &o, &q), TUNNEL_EINVAL);
  tunnel__httpreq_rewrite_opts o2 = {.client_addr = "1.2.3.4\r\n"};
  assert_int_equal(tunnel__httpreq_rewrite(r, &o2, &q), TUNNEL_EINVAL);
  tunnel__httpreq_rewrite_opts o3 = {.proto = "http\n"};
  assert_int_equal(tunnel__httpreq_rewrite(r, &o3, &q), TUNNEL_EINVAL);
  const char *rm[] = {NULL};
  tunnel__httpreq_rewrite_opts o4 = {.remove = rm, .n_remove = 1};
  assert_int_equal(tunnel__httpreq_rewrite(r, &o4, &q), TUNNEL_EINVAL);
  assert_int_equal(q.size, 0);
  tunnel__bufq_free(&q);
  tunnel__httpreq_free(r);
}

static char *auth_request(const char *scheme, const char *cred) {
  unsigned char b64[512];
  size_t bl = 0;
  assert_int_equal(mbedtls_base64_encode(b64, sizeof b64, &bl,
                                         (const unsigned char *)cred,
                                         strlen(cred)),
                   0);
  char *req = test_malloc(1024);
  snprintf(req, 1024,
           "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: %s %.*s"
           "\r\n\r\n",
           scheme, (int)bl, b64);
  return req;
}

static int auth_of(const char *req, const char *user, const char *pass) {
  tunnel__httpreq *r = parse_head(req);
  int rc = tunnel__httpreq_basic_auth(tunnel__httpreq_get_head(r), user, pass);
  tunnel__httpreq_free(r);
  return rc;
}

static void basic_auth(void **state) {
  (void)state;
  char *req = auth_request("Basic", "alice:s3cr:et");
  assert_int_equal(auth_of(req, "alice", "s3cr:et"), TUNNEL__HTTP_AUTH_MATCH);
  assert_int_equal(auth_of(req, "alice", "s3cr"), TUNNEL__HTTP_AUTH_MISMATCH);
  assert_int_equal(auth_of(req, "alic", "s3cr:et"), TUNNEL__HTTP_AUTH_MISMATCH);
  assert_int_equal(auth_of(req, "alice:s3cr", "et"),
                   TUNNEL__HTTP_AUTH_MISMATCH);
  test_free(req);
  req = auth_request("basic", "bob:");
  assert_int_equal(auth_of(req, "bob", ""), TUNNEL__HTTP_AUTH_MATCH);
  assert_int_equal(auth_of(req, "bob", NULL), TUNNEL__HTTP_AUTH_MATCH);
  assert_int_equal(auth_of(req, "bob", "x"), TUNNEL__HTTP_AUTH_MISMATCH);
  test_free(req);
  /* Longer than one decoding block. */
  char cred[320], pass[300];
  memset(pass, 'p', 250);
  pass[250] = '\0';
  snprintf(cred, sizeof cred, "user:%s", pass);
  req = auth_request("Basic", cred);
  assert_int_equal(auth_of(req, "user", pass), TUNNEL__HTTP_AUTH_MATCH);
  pass[249] = 'q';
  assert_int_equal(auth_of(req, "user", pass), TUNNEL__HTTP_AUTH_MISMATCH);
  test_free(req);
  req = auth_request("Basic", "nocolon");
  assert_int_equal(auth_of(req, "nocolon", ""), TUNNEL__HTTP_AUTH_MISMATCH);
  test_free(req);
  req = auth_request("Bearer", "alice:pw");
  assert_int_equal(auth_of(req, "alice", "pw"), TUNNEL__HTTP_AUTH_NONE);
  test_free(req);

  assert_int_equal(auth_of("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "a", "b"),
                   TUNNEL__HTTP_AUTH_NONE);
  static const char *const malformed[] = {
      "Basic",           "Basic !!!!",          "Basic YWxpY2U6cHc",
      "Basic YW=xpY2U6", "Basic YWxp Y2U6cHc=", "Basic ====",
  };
  for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
    char r2[256];
    snprintf(r2, sizeof r2,
             "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: %s\r\n\r\n",
             malformed[i]);
    assert_int_equal(auth_of(r2, "alice", "pw"), TUNNEL__HTTP_AUTH_MISMATCH);
  }
  /* "alice:pw" twice is still refused. */
  assert_int_equal(auth_of("GET / HTTP/1.1\r\nHost: a\r\n"
                           "Authorization: Basic YWxpY2U6cHc=\r\n"
                           "Authorization: Basic YWxpY2U6cHc=\r\n\r\n",
                           "alice", "pw"),
                   TUNNEL__HTTP_AUTH_MISMATCH);
  assert_int_equal(auth_of("GET / HTTP/1.1\r\nHost: a\r\n"
                           "Authorization:   Basic   YWxpY2U6cHc=  \r\n\r\n",
                           "alice", "pw"),
                   TUNNEL__HTTP_AUTH_MATCH);
}

static void error_pages(void **state) {
  (void)state;
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  static const int statuses[] = {400, 401, 404, 431, 502, 504, 501, 505};
  for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
    int st = statuses[i];
    assert_int_equal(tunnel__http_error_page(st, "tunnel", &q), 0);
    char *page = drain(&q);
    char line[128];
    snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", st,
             tunnel__http_reason(st));
    assert_memory_equal(page, line, strlen(line));
    assert_non_null(strstr(page, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(page, "\r\nContent-Type: text/html"));
    const char *body = strstr(page, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    unsigned long cl = 0;
    const char *c = strstr(page, "\r\nContent-Length: ");
    assert_non_null(c);
    assert_true(c < body);
    cl = strtoul(c + 18, NULL, 10);
    assert_int_equal(cl, strlen(body));
    snprintf(line, sizeof line, "<h1>%d %s</h1>", st, tunnel__http_reason(st));
    assert_non_null(strstr(body, line));
    const char *auth = strstr(page, "WWW-Authenticate: Basic realm=\"tunnel\""
                                    "\r\n");
    if (st == 401)
      assert_true(auth != NULL && auth < body);
    else
      assert_null(auth);
    test_free(page);
  }
  assert_int_equal(tunnel__http_error_page(401, NULL, &q), 0);
  char *page = drain(&q);
  assert_non_null(strstr(page, "realm=\"Restricted\"\r\n"));
  test_free(page);
  assert_string_equal(tunnel__http_reason(431),
                      "Request Header Fields Too Large");
  assert_null(tunnel__http_reason(299));
  assert_int_equal(tunnel__http_error_page(299, NULL, &q), TUNNEL_EINVAL);
  assert_int_equal(tunnel__http_error_page(401, "a\"b", &q), TUNNEL_EINVAL);
  assert_int_equal(tunnel__http_error_page(401, "a\r\nb", &q), TUNNEL_EINVAL);
  assert_int_equal(q.size, 0);
  tunnel__bufq_free(&q);
}

/* Every allocation failing in turn: ENOMEM or success, never a leak (cmocka
 * checks) or a half-written head. */
static void out_of_memory(void **state) {
  (void)state;
  const char *req = "GET /p HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n"
                    "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n"
                    "H: 8\r\nI: 9\r\nJ: 10\r\nK: 11\r\nL: 12\r\nM: 13\r\n"
                    "N: 14\r\nO: 15\r\nP: 16\r\nQ: 17\r\n\r\n";
  int succeeded = 0;
  for (long k = 0; k < 64 && !succeeded; k++) {
    fail_after = k;
    tunnel__httpreq *r;
    if (tunnel__httpreq_new(&r, &tmem, 0, 0) != 0) {
      fail_after = -1;
      continue;
    }
    size_t used;
    int rc = feed_str(r, req, &used);
    if (rc == TUNNEL_ENOMEM) {
      assert_int_equal(used, 0);
      assert_int_equal(feed_str(r, req, &used), TUNNEL_ENOMEM);
    } else {
      assert_int_equal(rc, TUNNEL__HTTPREQ_HEAD);
      tunnel__bufq q;
      tunnel__bufq_init(&q, &tmem, 64);
      tunnel__httpreq_rewrite_opts o = {.client_addr = "2.2.2.2"};
      rc = tunnel__httpreq_rewrite(r, &o, &q);
      if (rc == 0)
        succeeded = 1;
      else
        assert_int_equal(rc, TUNNEL_ENOMEM);
      fail_after = -1;
      if (rc != 0)
        assert_int_equal(q.size, 0);
      tunnel__bufq_free(&q);
    }
    fail_after = -1;
    tunnel__httpreq_free(r);
  }
  assert_true(succeeded);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(simple_get),
      cmocka_unit_test(keep_alive_pipelined),
      cmocka_unit_test(split_at_every_offset),
      cmocka_unit_test(chunked_body_byte_exact),
      cmocka_unit_test(chunked_framing_strict),
      cmocka_unit_test(large_body_constant_memory),
      cmocka_unit_test(absolute_form),
      cmocka_unit_test(host_forms),
      cmocka_unit_test(host_required_on_1_1),
      cmocka_unit_test(head_limits),
      cmocka_unit_test(upgrade_and_connect),
      cmocka_unit_test(forwarded_headers),
      cmocka_unit_test(host_rewrite_set_remove),
      cmocka_unit_test(smuggling_refused),
      cmocka_unit_test(rewrite_rejects_injection),
      cmocka_unit_test(basic_auth),
      cmocka_unit_test(error_pages),
      cmocka_unit_test(out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
