#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <mbedtls/ssl.h>

#include "sni.h"
#include "wire.h"

/* ------------------------------------------------------------- helpers */

/* Allocator that fails the call numbered `fail_after` (0 = the next one),
 * counts calls, and tracks live bytes through a size header. cmocka reports
 * any block left allocated at the end of a test. */
typedef union counted_hdr {
  size_t size;
  max_align_t align;
} counted_hdr;
static long fail_after = -1;
static size_t allocs, live_bytes, peak_bytes;
static void *c_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  allocs++;
  counted_hdr *h = p ? (counted_hdr *)p - 1 : NULL;
  size_t old = h ? h->size : 0;
  h = h ? test_realloc(h, sizeof *h + n) : test_malloc(sizeof *h + n);
  h->size = n;
  live_bytes = live_bytes - old + n;
  if (live_bytes > peak_bytes)
    peak_bytes = live_bytes;
  return h + 1;
}
static void *c_malloc(size_t n, void *ud) { return c_realloc(NULL, n, ud); }
static void c_free(void *p, void *ud) {
  (void)ud;
  if (!p)
    return;
  counted_hdr *h = (counted_hdr *)p - 1;
  live_bytes -= h->size;
  test_free(h);
}
static const tunnel__mem cmem = {c_malloc, c_realloc, c_free, NULL};

static void reset_counters(void) {
  fail_after = -1;
  allocs = live_bytes = peak_bytes = 0;
}
static int setup(void **state) {
  (void)state;
  reset_counters();
  return 0;
}

/* Deterministic pseudo-random numbers for chunk sizes and hello bytes. */
static uint32_t rnd_state = 12345;
static uint32_t rnd(void) {
  rnd_state ^= rnd_state << 13;
  rnd_state ^= rnd_state >> 17;
  rnd_state ^= rnd_state << 5;
  return rnd_state;
}

/* Byte builder with nested length prefixes. */
typedef struct bb {
  uint8_t b[40000];
  size_t n;
  size_t mark[8];
  int width[8];
  int depth;
} bb;

static void put8(bb *o, unsigned v) {
  assert_true(o->n < sizeof o->b);
  o->b[o->n++] = (uint8_t)v;
}
static void put16(bb *o, unsigned v) {
  put8(o, v >> 8);
  put8(o, v);
}
static void putn(bb *o, const void *p, size_t n) {
  assert_true(o->n + n <= sizeof o->b);
  memcpy(o->b + o->n, p, n);
  o->n += n;
}
static void fill(bb *o, uint8_t v, size_t n) {
  assert_true(o->n + n <= sizeof o->b);
  memset(o->b + o->n, v, n);
  o->n += n;
}
/* Opens a vector whose length prefix is `width` bytes; close() writes it. */
static void open_(bb *o, int width) {
  o->mark[o->depth] = o->n;
  o->width[o->depth++] = width;
  fill(o, 0, (size_t)width);
}
static void close_(bb *o) {
  int d = --o->depth, w = o->width[d];
  size_t m = o->mark[d], len = o->n - m - (size_t)w;
  for (int i = w - 1; i >= 0; i--, len >>= 8)
    o->b[m + (size_t)i] = (uint8_t)len;
}

/* A ClientHello handshake message, header included. */
typedef struct spec {
  const char *host; /* NULL: no server_name extension */
  size_t host_len;  /* 0: strlen(host) */
  int tls13;        /* supported_versions, key_share and friends */
  int alpn;         /* h2, http/1.1 */
  int no_exts;      /* end after the compression methods */
  size_t sid_len;
  size_t fillers;    /* unknown extensions of filler_len bytes each */
  size_t filler_len; /* (types 0x1000 + index) */
  int pad;           /* a padding extension, last ... */
  size_t pad_len;    /* ... of this many bytes */
} spec;

static void begin_hello(bb *o, size_t sid_len) {
  put8(o, 1);
  open_(o, 3);
  put16(o, 0x0303);
  for (int i = 0; i < 32; i++)
    put8(o, rnd());
  put8(o, (unsigned)sid_len);
  for (size_t i = 0; i < sid_len; i++)
    put8(o, rnd());
  open_(o, 2);
  put16(o, 0x1301);
  put16(o, 0xc02f);
  put16(o, 0x009c);
  close_(o);
  put8(o, 1);
  put8(o, 0);
}

static void add_sni(bb *o, const char *host, size_t len) {
  put16(o, 0);
  open_(o, 2);
  open_(o, 2);
  put8(o, 0);
  open_(o, 2);
  putn(o, host, len);
  close_(o);
  close_(o);
  close_(o);
}

static void add_alpn(bb *o) {
  put16(o, 16);
  open_(o, 2);
  open_(o, 2);
  put8(o, 2);
  putn(o, "h2", 2);
  put8(o, 8);
  putn(o, "http/1.1", 8);
  close_(o);
  close_(o);
}

static void build(bb *o, const spec *s) {
  memset(o, 0, sizeof *o);
  begin_hello(o, s->sid_len);
  if (!s->no_exts) {
    open_(o, 2);
    if (s->tls13) { /* as a browser orders them: GREASE first */
      put16(o, 0x3a3a);
      put16(o, 0);
    }
    if (s->host)
      add_sni(o, s->host, s->host_len ? s->host_len : strlen(s->host));
    put16(o, 10); /* supported_groups: x25519, secp256r1 */
    open_(o, 2);
    open_(o, 2);
    put16(o, 0x001d);
    put16(o, 0x0017);
    close_(o);
    close_(o);
    if (s->alpn)
      add_alpn(o);
    if (s->tls13) {
      put16(o, 51); /* key_share: one x25519 share */
      open_(o, 2);
      open_(o, 2);
      put16(o, 0x001d);
      open_(o, 2);
      for (int i = 0; i < 32; i++)
        put8(o, rnd());
      close_(o);
      close_(o);
      close_(o);
      put16(o, 45); /* psk_key_exchange_modes: psk_dhe_ke */
      open_(o, 2);
      open_(o, 1);
      put8(o, 1);
      close_(o);
      close_(o);
      put16(o, 43); /* supported_versions: GREASE, 1.3, 1.2 */
      open_(o, 2);
      open_(o, 1);
      put16(o, 0x7a7a);
      put16(o, 0x0304);
      put16(o, 0x0303);
      close_(o);
      close_(o);
    }
    for (size_t i = 0; i < s->fillers; i++) {
      put16(o, 0x1000 + (unsigned)i);
      open_(o, 2);
      fill(o, (uint8_t)i, s->filler_len);
      close_(o);
    }
    if (s->pad) {
      put16(o, 21);
      open_(o, 2);
      fill(o, 0, s->pad_len);
      close_(o);
    }
    close_(o);
  }
  close_(o);
  assert_int_equal(o->depth, 0);
}

/* Wraps a handshake message into records: the first ones of the given
 * sizes, the rest in records of at most 2^14 bytes. */
static void wrap(bb *out, const uint8_t *hs, size_t n, const size_t *frags,
                 size_t nfrags) {
  memset(out, 0, sizeof *out);
  size_t off = 0, i = 0;
  while (off < n) {
    size_t k = i < nfrags ? frags[i] : 16384;
    if (k > n - off)
      k = n - off;
    put8(out, 22);
    put16(out, 0x0301);
    put16(out, (unsigned)k);
    putn(out, hs + off, k);
    off += k;
    i++;
  }
}

static void record(bb *out, const bb *hs) { wrap(out, hs->b, hs->n, NULL, 0); }

/* Feeds a copy in a buffer of the exact size, so AddressSanitizer catches
 * any read past what was given. Not inlined: an optimising GCC would carry
 * a caller's "length - 1" range in here and call the malloc too large. */
__attribute__((noinline)) static int feed_exact(tunnel__sni *p, const uint8_t *d, size_t n) {
  uint8_t *copy = malloc(n ? n : 1);
  assert_non_null(copy);
  if (n)
    memcpy(copy, d, n);
  int rc = tunnel__sni_feed(p, copy, n);
  free(copy);
  return rc;
}

static int parse(tunnel__sni *p, const uint8_t *d, size_t n, size_t max) {
  tunnel__sni_init(p, &cmem, max);
  return feed_exact(p, d, n);
}

/* Parses once and frees, for verdict-only checks. */
static int verdict(const uint8_t *d, size_t n) {
  tunnel__sni p;
  int rc = parse(&p, d, n, 0);
  tunnel__sni_free(&p);
  return rc;
}

static void assert_same(const tunnel__sni *a, const tunnel__sni *b) {
  assert_int_equal(a->result, b->result);
  assert_ptr_equal(a->why, b->why);
  assert_int_equal(a->host_len, b->host_len);
  assert_memory_equal(a->host, b->host, a->host_len + 1);
  assert_int_equal(a->legacy_version, b->legacy_version);
  assert_int_equal(a->max_version, b->max_version);
  assert_int_equal(a->alpn_len, b->alpn_len);
  if (a->alpn_len)
    assert_memory_equal(a->alpn, b->alpn, a->alpn_len);
}

/* Feeds d in chunks chosen by next_size, each an exact copy. */
static void feed_chunks(tunnel__sni *p, const uint8_t *d, size_t n,
                        size_t (*next_size)(size_t *state), size_t state) {
  tunnel__sni_init(p, &cmem, 0);
  for (size_t off = 0; off < n;) {
    size_t k = next_size(&state);
    if (k > n - off)
      k = n - off;
    feed_exact(p, d + off, k);
    off += k;
  }
}
static size_t one(size_t *s) {
  (void)s;
  return 1;
}
static size_t random_small(size_t *s) {
  (void)s;
  return 1 + rnd() % 13;
}
static size_t random_large(size_t *s) {
  (void)s;
  return 1 + rnd() % 700;
}

/* Every way of cutting the bytes must give the same verdict and results:
 * all at once, every two-piece split, byte by byte, random chunks. */
static void check_splits(const uint8_t *d, size_t n) {
  tunnel__sni ref, p;
  parse(&ref, d, n, 0);
  for (size_t i = 1; i < n; i++) {
    tunnel__sni_init(&p, &cmem, 0);
    int rc = feed_exact(&p, d, i);
    assert_true(rc == TUNNEL__SNI_NEED_MORE || rc == ref.result);
    feed_exact(&p, d + i, n - i);
    assert_same(&ref, &p);
    tunnel__sni_free(&p);
  }
  feed_chunks(&p, d, n, one, 0);
  assert_same(&ref, &p);
  tunnel__sni_free(&p);
  for (int k = 0; k < 8; k++) {
    feed_chunks(&p, d, n, k % 2 ? random_large : random_small, 0);
    assert_same(&ref, &p);
    tunnel__sni_free(&p);
  }
  tunnel__sni_free(&ref);
}

/* Every strict prefix of a complete hello is undecided. */
static void check_truncations(const uint8_t *d, size_t n, size_t step) {
  for (size_t i = 0; i < n; i += step)
    assert_int_equal(verdict(d, i), TUNNEL__SNI_NEED_MORE);
  assert_int_equal(verdict(d, n - 1), TUNNEL__SNI_NEED_MORE);
}

/* Expects FOUND with `host`, or NONE when host is NULL. */
static void expect(const uint8_t *d, size_t n, const char *host) {
  tunnel__sni p;
  int rc = parse(&p, d, n, 0);
  if (host) {
    assert_int_equal(rc, TUNNEL__SNI_FOUND);
    assert_string_equal(p.host, host);
    assert_int_equal(p.host_len, strlen(host));
  } else {
    assert_int_equal(rc, TUNNEL__SNI_NONE);
    assert_int_equal(p.host_len, 0);
  }
  assert_null(p.why);
  tunnel__sni_free(&p);
}

static void expect_err(const uint8_t *d, size_t n, int err) {
  tunnel__sni p;
  assert_int_equal(parse(&p, d, n, 0), err);
  assert_non_null(p.why);
  assert_int_equal(p.host_len, 0);
  tunnel__sni_free(&p);
}

/* ---------------------------------------------- hellos written by mbedTLS */

typedef struct capture {
  bb *out;
} capture;

static int cap_send(void *ctx, const unsigned char *b, size_t n) {
  capture *c = ctx;
  putn(c->out, b, n);
  return (int)n;
}
static int cap_recv(void *ctx, unsigned char *b, size_t n) {
  (void)ctx;
  (void)b;
  (void)n;
  return MBEDTLS_ERR_SSL_WANT_READ;
}
static int det_rng(void *ctx, unsigned char *out, size_t n) {
  (void)ctx;
  for (size_t i = 0; i < n; i++)
    out[i] = (unsigned char)rnd();
  return 0;
}

/* What an mbedTLS 2.28 client sends first: its ClientHello records. */
static void mbed_hello(bb *out, const char *host, const char **alpn) {
  mbedtls_ssl_config conf;
  mbedtls_ssl_context ssl;
  capture cap = {out};
  memset(out, 0, sizeof *out);
  mbedtls_ssl_config_init(&conf);
  mbedtls_ssl_init(&ssl);
  assert_int_equal(mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT,
                                               MBEDTLS_SSL_TRANSPORT_STREAM,
                                               MBEDTLS_SSL_PRESET_DEFAULT),
                   0);
  mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_NONE);
  mbedtls_ssl_conf_rng(&conf, det_rng, NULL);
  if (alpn)
    assert_int_equal(mbedtls_ssl_conf_alpn_protocols(&conf, alpn), 0);
  assert_int_equal(mbedtls_ssl_setup(&ssl, &conf), 0);
  if (host)
    assert_int_equal(mbedtls_ssl_set_hostname(&ssl, host), 0);
  mbedtls_ssl_set_bio(&ssl, &cap, cap_send, cap_recv, NULL);
  assert_int_equal(mbedtls_ssl_handshake(&ssl), MBEDTLS_ERR_SSL_WANT_READ);
  mbedtls_ssl_free(&ssl);
  mbedtls_ssl_config_free(&conf);
  assert_true(out->n > 5 && out->b[0] == 22);
}

static const char *alpn_h2[] = {"h2", "http/1.1", NULL};

static void mbedtls_with_sni(void **state) {
  (void)state;
  static bb h;
  mbed_hello(&h, "example.com", NULL);
  tunnel__sni p;
  assert_int_equal(parse(&p, h.b, h.n, 0), TUNNEL__SNI_FOUND);
  assert_string_equal(p.host, "example.com");
  assert_int_equal(p.legacy_version, 0x0303);
  assert_int_equal(p.max_version, 0x0303);
  assert_null(p.alpn);
  size_t pos = 0, len;
  const uint8_t *name;
  assert_int_equal(tunnel__sni_alpn_next(&p, &pos, &name, &len), 0);
  tunnel__sni_free(&p);
  check_splits(h.b, h.n);
  check_truncations(h.b, h.n, 1);
}

static void mbedtls_without_sni(void **state) {
  (void)state;
  static bb h;
  mbed_hello(&h, NULL, NULL);
  expect(h.b, h.n, NULL);
  check_splits(h.b, h.n);
  check_truncations(h.b, h.n, 1);
}

static void mbedtls_with_alpn(void **state) {
  (void)state;
  static bb h;
  mbed_hello(&h, "api.example.org", alpn_h2);
  tunnel__sni p;
  assert_int_equal(parse(&p, h.b, h.n, 0), TUNNEL__SNI_FOUND);
  assert_string_equal(p.host, "api.example.org");
  size_t pos = 0, len;
  const uint8_t *name;
  assert_int_equal(tunnel__sni_alpn_next(&p, &pos, &name, &len), 1);
  assert_int_equal(len, 2);
  assert_memory_equal(name, "h2", 2);
  assert_int_equal(tunnel__sni_alpn_next(&p, &pos, &name, &len), 1);
  assert_int_equal(len, 8);
  assert_memory_equal(name, "http/1.1", 8);
  assert_int_equal(tunnel__sni_alpn_next(&p, &pos, &name, &len), 0);
  tunnel__sni_free(&p);
  check_splits(h.b, h.n);
}

/* mbedTLS sends the name as given; the parser normalises or refuses it. */
static void mbedtls_names(void **state) {
  (void)state;
  static bb h;
  mbed_hello(&h, "WWW.Example.COM", NULL);
  expect(h.b, h.n, "www.example.com");
  mbed_hello(&h, "example.com.", NULL);
  expect(h.b, h.n, "example.com");
  mbed_hello(&h, "exa_mple.com", NULL);
  expect_err(h.b, h.n, TUNNEL_EPROTO);
  mbed_hello(&h, "example.com:443", NULL);
  expect_err(h.b, h.n, TUNNEL_EPROTO);
}

/* The same mbedTLS hello cut into records of every size from 1 byte up:
 * the handshake header and the extensions straddle record boundaries. */
static void mbedtls_refragmented(void **state) {
  (void)state;
  static bb h, r;
  mbed_hello(&h, "frag.example.net", alpn_h2);
  const uint8_t *hs = h.b + 5;
  size_t n = tunnel__be16(h.b + 3);
  assert_int_equal(n + 5, h.n);
  for (size_t size = 1; size <= n; size += size < 16 ? 1 : 37) {
    size_t frags[2048];
    size_t nf = 0;
    for (size_t off = 0; off < n && nf < 2048; off += size)
      frags[nf++] = size;
    wrap(&r, hs, n, frags, nf);
    expect(r.b, r.n, "frag.example.net");
  }
  size_t two[] = {2, 9000}; /* the handshake header split */
  wrap(&r, hs, n, two, 2);
  expect(r.b, r.n, "frag.example.net");
  check_splits(r.b, r.n);
}

/* --------------------------------------------------- hand-built hellos */

static void tls13_style(void **state) {
  (void)state;
  static bb hs, r;
  spec s = {.host = "Mail.Example.Com", .tls13 = 1, .alpn = 1, .sid_len = 32};
  build(&hs, &s);
  record(&r, &hs);
  tunnel__sni p;
  assert_int_equal(parse(&p, r.b, r.n, 0), TUNNEL__SNI_FOUND);
  assert_string_equal(p.host, "mail.example.com");
  assert_int_equal(p.legacy_version, 0x0303);
  assert_int_equal(p.max_version, 0x0304);
  assert_int_equal(p.alpn_len, 12);
  tunnel__sni_free(&p);
  check_splits(r.b, r.n);
  check_truncations(r.b, r.n, 1);
}

static void split_over_records(void **state) {
  (void)state;
  static bb hs, r;
  spec s = {.host = "split.example", .tls13 = 1, .alpn = 1, .sid_len = 32};
  build(&hs, &s);
  size_t two[] = {hs.n / 2};
  wrap(&r, hs.b, hs.n, two, 1);
  assert_int_equal(r.n, hs.n + 10);
  expect(r.b, r.n, "split.example");
  check_splits(r.b, r.n);
  check_truncations(r.b, r.n, 1);
  size_t three[] = {3, hs.n / 2}; /* header split, then the body */
  wrap(&r, hs.b, hs.n, three, 2);
  assert_int_equal(r.n, hs.n + 15);
  expect(r.b, r.n, "split.example");
  check_splits(r.b, r.n);
  check_truncations(r.b, r.n, 1);
}

/* Sets the handshake length field to the given body length. */
static void set_hs_len(bb *hs, size_t body) {
  hs->b[1] = (uint8_t)(body >> 16);
  hs->b[2] = (uint8_t)(body >> 8);
  hs->b[3] = (uint8_t)body;
}

/* Hellos of exactly the limit, with a few large or thousands of small
 * extensions, spread over records; one byte more is refused as soon as the
 * handshake header says so. */
static void near_the_limit(void **state) {
  (void)state;
  static bb hs, r;
  static const spec shapes[] = {
      {.host = "big.example",
       .tls13 = 1,
       .alpn = 1,
       .fillers = 60,
       .filler_len = 200,
       .pad = 1},
      {.host = "many.example", .tls13 = 1, .fillers = 3000, .pad = 1},
  };
  for (size_t k = 0; k < 2; k++) {
    spec s = shapes[k];
    build(&hs, &s);
    assert_true(hs.n <= TUNNEL__SNI_DEFAULT_MAX);
    s.pad_len = TUNNEL__SNI_DEFAULT_MAX - hs.n;
    build(&hs, &s);
    assert_int_equal(hs.n, TUNNEL__SNI_DEFAULT_MAX);
    size_t frags[] = {10000};
    wrap(&r, hs.b, hs.n, frags, 1);
    assert_int_equal(r.n, hs.n + 10);
    expect(r.b, r.n, s.host);
    check_splits(r.b, r.n);
    check_truncations(r.b, r.n, 61);

    /* One byte over: ELIMIT on the last byte of the handshake header. */
    set_hs_len(&hs, hs.n - 4 + 1);
    put8(&hs, 0);
    wrap(&r, hs.b, hs.n, frags, 1);
    tunnel__sni p;
    assert_int_equal(parse(&p, r.b, 8, 0), TUNNEL__SNI_NEED_MORE);
    assert_int_equal(feed_exact(&p, r.b + 8, 1), TUNNEL_ELIMIT);
    tunnel__sni_free(&p);
    expect_err(r.b, r.n, TUNNEL_ELIMIT);
  }

  /* A configured limit applies the same way. */
  spec small = {.host = "a.example"};
  build(&hs, &small);
  record(&r, &hs);
  tunnel__sni p;
  assert_int_equal(parse(&p, r.b, r.n, hs.n), TUNNEL__SNI_FOUND);
  tunnel__sni_free(&p);
  assert_int_equal(parse(&p, r.b, r.n, hs.n - 1), TUNNEL_ELIMIT);
  tunnel__sni_free(&p);
}

static void no_extensions_or_no_sni(void **state) {
  (void)state;
  static bb hs, r;
  spec s = {.no_exts = 1};
  build(&hs, &s);
  record(&r, &hs);
  tunnel__sni p;
  assert_int_equal(parse(&p, r.b, r.n, 0), TUNNEL__SNI_NONE);
  assert_int_equal(p.max_version, 0x0303);
  tunnel__sni_free(&p);
  check_splits(r.b, r.n);
  spec t = {.tls13 = 1, .alpn = 1};
  build(&hs, &t);
  record(&r, &hs);
  assert_int_equal(parse(&p, r.b, r.n, 0), TUNNEL__SNI_NONE);
  assert_int_equal(p.max_version, 0x0304);
  assert_non_null(p.alpn);
  tunnel__sni_free(&p);
  check_splits(r.b, r.n);
}

/* Builds a record holding a hello whose only extension is `ext`. */
static void hello_with_ext(bb *r, const uint8_t *ext, size_t n) {
  static bb hs;
  memset(&hs, 0, sizeof hs);
  begin_hello(&hs, 0);
  open_(&hs, 2);
  putn(&hs, ext, n);
  close_(&hs);
  close_(&hs);
  record(r, &hs);
}

/* Writes labels of the given lengths ('a'..'z' cycling), joined by dots,
 * with a trailing dot if asked. */
static void make_name(char *out, const size_t *labels, size_t n, int dot) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (i)
      out[o++] = '.';
    for (size_t j = 0; j < labels[i]; j++, o++)
      out[o] = (char)('a' + o % 26);
  }
  if (dot)
    out[o++] = '.';
  out[o] = '\0';
}

static void host_name_rules(void **state) {
  (void)state;
  static bb hs, r;
  char name[300], want[300];
  spec s = {.host = name};
  /* 255 bytes: four labels of 63. */
  static const size_t l255[] = {63, 63, 63, 63};
  make_name(name, l255, 4, 0);
  assert_int_equal(strlen(name), 255);
  build(&hs, &s);
  record(&r, &hs);
  expect(r.b, r.n, name);
  check_splits(r.b, r.n);
  /* 256 bytes, every label valid: too long. */
  static const size_t l256[] = {63, 63, 63, 62, 1};
  make_name(name, l256, 5, 0);
  assert_int_equal(strlen(name), 256);
  build(&hs, &s);
  record(&r, &hs);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  /* 255 bytes and a trailing dot: 256 on the wire, too long. */
  make_name(name, l255, 4, 1);
  build(&hs, &s);
  record(&r, &hs);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  /* 254 bytes and a trailing dot: 255 on the wire, 254 reported. */
  static const size_t l254[] = {63, 63, 63, 62};
  make_name(want, l254, 4, 0);
  make_name(name, l254, 4, 1);
  build(&hs, &s);
  record(&r, &hs);
  expect(r.b, r.n, want);

  static const struct {
    const char *wire;
    const char *want; /* NULL: an error */
  } cases[] = {
      {"EXAMPLE.com", "example.com"},
      {"Example.COM.", "example.com"},
      {"x", "x"},
      {"x-1.b-2.c", "x-1.b-2.c"},
      {"1.2.3.4", "1.2.3.4"},
      {"xn--bcher-kva.example", "xn--bcher-kva.example"},
      {".", NULL},
      {"..", NULL},
      {"a..b", NULL},
      {".a", NULL},
      {"a..", NULL},
      {"under_score.example", NULL},
      {"sp ace.example", NULL},
      {"slash/example", NULL},
      {"host:443", NULL},
      {"star.*.example", NULL},
      {"tab\t.example", NULL},
      {"caf\xc3\xa9.example", NULL},
      {"evil.example\r\nX-Injected: 1", NULL},
      {"percent%2e.example", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    spec c = {.host = cases[i].wire};
    build(&hs, &c);
    record(&r, &hs);
    if (cases[i].want)
      expect(r.b, r.n, cases[i].want);
    else
      expect_err(r.b, r.n, TUNNEL_EPROTO);
  }
  /* Labels: 63 bytes pass, 64 do not; NUL inside a name is refused. */
  memset(name, 'b', 63);
  memcpy(name + 63, ".example", 9);
  spec l = {.host = name};
  build(&hs, &l);
  record(&r, &hs);
  expect(r.b, r.n, name);
  memset(name, 'b', 64);
  memcpy(name + 64, ".example", 9);
  build(&hs, &l);
  record(&r, &hs);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  spec z = {.host = "a\0b.example", .host_len = 11};
  build(&hs, &z);
  record(&r, &hs);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  memset(&hs, 0, sizeof hs); /* an empty host_name */
  begin_hello(&hs, 0);
  open_(&hs, 2);
  add_sni(&hs, "", 0);
  close_(&hs);
  close_(&hs);
  record(&r, &hs);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
}

static void server_name_structure(void **state) {
  (void)state;
  static bb r;
  /* An unknown name type is skipped; the host_name after it counts. */
  static const uint8_t skip_unknown[] = {
      0, 0, 0, 14, 0, 12, 7, 0, 3, 'x', 'y', 'z', 0, 0, 3, 'a', '.', 'b'};
  hello_with_ext(&r, skip_unknown, sizeof skip_unknown);
  expect(r.b, r.n, "a.b");
  static const uint8_t only_unknown[] = {0, 0, 0, 7, 0, 5, 7, 0, 2, 'x', 'y'};
  hello_with_ext(&r, only_unknown, sizeof only_unknown);
  expect(r.b, r.n, NULL);
  static const uint8_t two_hosts[] = {0, 0,   0,   12, 0, 10, 0,   0,
                                      2, 'a', 'b', 0,  0, 2,  'c', 'd'};
  hello_with_ext(&r, two_hosts, sizeof two_hosts);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t dup_ext[] = {0, 0, 0, 6, 0, 4, 0, 0, 1, 'a',
                                    0, 0, 0, 6, 0, 4, 0, 0, 1, 'b'};
  hello_with_ext(&r, dup_ext, sizeof dup_ext);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  /* A second server_name extension is refused even when the first named
   * no host. */
  static const uint8_t dup_unknown[] = {0, 0, 0, 6, 0, 4, 7, 0, 1, 'a',
                                        0, 0, 0, 6, 0, 4, 0, 0, 1, 'b'};
  hello_with_ext(&r, dup_unknown, sizeof dup_unknown);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t empty_list[] = {0, 0, 0, 2, 0, 0};
  hello_with_ext(&r, empty_list, sizeof empty_list);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t empty_ext[] = {0, 0, 0, 0};
  hello_with_ext(&r, empty_ext, sizeof empty_ext);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t list_short[] = {0, 0, 0, 6, 0, 3, 0, 0, 1, 'a'};
  hello_with_ext(&r, list_short, sizeof list_short);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t list_trailing[] = {0, 0, 0, 7, 0, 4, 0, 0, 1, 'a', 9};
  hello_with_ext(&r, list_trailing, sizeof list_trailing);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t list_long[] = {0, 0, 0, 6, 0, 5, 0, 0, 1, 'a'};
  hello_with_ext(&r, list_long, sizeof list_long);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t name_over[] = {0, 0, 0, 6, 0, 4, 0, 0, 2, 'a'};
  hello_with_ext(&r, name_over, sizeof name_over);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t ext_over[] = {0, 0, 0, 7, 0, 4, 0, 0, 1, 'a'};
  hello_with_ext(&r, ext_over, sizeof ext_over);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
}

static void other_extensions(void **state) {
  (void)state;
  static bb r;
  tunnel__sni p;
  static const uint8_t alpn_dup[] = {0, 16, 0, 5, 0, 3, 2, 'h', '2',
                                     0, 16, 0, 5, 0, 3, 2, 'h', '2'};
  hello_with_ext(&r, alpn_dup, sizeof alpn_dup);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t alpn_empty_name[] = {0, 16, 0, 5, 0, 3, 0, 1, 'x'};
  hello_with_ext(&r, alpn_empty_name, sizeof alpn_empty_name);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t alpn_empty[] = {0, 16, 0, 2, 0, 0};
  hello_with_ext(&r, alpn_empty, sizeof alpn_empty);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t alpn_over[] = {0, 16, 0, 5, 0, 3, 3, 'h', '2'};
  hello_with_ext(&r, alpn_over, sizeof alpn_over);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t sv_odd[] = {0, 43, 0, 4, 3, 3, 4, 3};
  hello_with_ext(&r, sv_odd, sizeof sv_odd);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t sv_trailing[] = {0, 43, 0, 4, 2, 3, 4, 9};
  hello_with_ext(&r, sv_trailing, sizeof sv_trailing);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t alpn_trailing[] = {0, 16, 0, 6, 0, 3, 2, 'h', '2', 9};
  hello_with_ext(&r, alpn_trailing, sizeof alpn_trailing);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t sv_empty[] = {0, 43, 0, 1, 0};
  hello_with_ext(&r, sv_empty, sizeof sv_empty);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t sv_short[] = {0, 43, 0, 3, 4, 3, 4};
  hello_with_ext(&r, sv_short, sizeof sv_short);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  static const uint8_t sv_ok[] = {0, 43, 0, 5, 4, 3, 1, 3, 3};
  hello_with_ext(&r, sv_ok, sizeof sv_ok);
  assert_int_equal(parse(&p, r.b, r.n, 0), TUNNEL__SNI_NONE);
  assert_int_equal(p.max_version, 0x0303);
  tunnel__sni_free(&p);
  static const uint8_t sv_dup[] = {0, 43, 0, 3, 2, 3, 4, 0, 43, 0, 3, 2, 3, 3};
  hello_with_ext(&r, sv_dup, sizeof sv_dup);
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  /* Only GREASE and a draft version: nothing 3.x is offered. */
  static const uint8_t sv_none[] = {0, 43, 0, 5, 4, 0x2a, 0x2a, 0x7f, 0x1c};
  hello_with_ext(&r, sv_none, sizeof sv_none);
  assert_int_equal(parse(&p, r.b, r.n, 0), TUNNEL__SNI_NONE);
  assert_int_equal(p.max_version, 0);
  tunnel__sni_free(&p);
  /* Unknown extensions, repeated or empty, are not inspected. */
  static const uint8_t unknown[] = {0xff, 1, 0, 0, 0xff, 1, 0, 1, 9,
                                    0,    0, 0, 5, 0,    3, 0, 0, 0};
  hello_with_ext(&r, unknown, sizeof unknown);
  expect_err(r.b, r.n, TUNNEL_EPROTO); /* host name of length 0 */
  static const uint8_t unknown_ok[] = {0xff, 1, 0, 0, 0xff, 1, 0, 1, 9};
  hello_with_ext(&r, unknown_ok, sizeof unknown_ok);
  expect(r.b, r.n, NULL);
}

/* Field by field: each ClientHello rule refuses what breaks it. */
static void hello_structure(void **state) {
  (void)state;
  static bb hs, r;
  spec s = {.host = "ok.example", .sid_len = 32};

  build(&hs, &s);
  hs.b[4] = 2; /* legacy_version 2.3 */
  record(&r, &hs);
  expect_err(r.b, r.n, TUNNEL_EPROTO);

  /* Vectors with consistent lengths: only the rule itself can refuse. */
  static const struct {
    size_t sid, cs, comp;
    int ok;
  } fields[] = {
      {32, 2, 1, 1}, {0, 2, 1, 1}, {33, 2, 1, 0}, {255, 2, 1, 0}, {0, 0, 1, 0},
      {0, 5, 1, 0},  {0, 1, 1, 0}, {0, 2, 0, 0},  {0, 2, 3, 1},
  };
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    memset(&hs, 0, sizeof hs);
    put8(&hs, 1);
    open_(&hs, 3);
    put16(&hs, 0x0303);
    fill(&hs, 7, 32);
    put8(&hs, (unsigned)fields[i].sid);
    fill(&hs, 1, fields[i].sid);
    put16(&hs, (unsigned)fields[i].cs);
    fill(&hs, 0x13, fields[i].cs);
    put8(&hs, (unsigned)fields[i].comp);
    fill(&hs, 0, fields[i].comp);
    open_(&hs, 2);
    add_sni(&hs, "f.example", 9);
    close_(&hs);
    close_(&hs);
    record(&r, &hs);
    if (fields[i].ok)
      expect(r.b, r.n, "f.example");
    else
      expect_err(r.b, r.n, TUNNEL_EPROTO);
  }

  /* Session id of 32 passes; a stray byte after the extensions does not,
   * nor does a single byte where the extensions length would be. */
  build(&hs, &s);
  record(&r, &hs);
  expect(r.b, r.n, "ok.example");
  for (int extra = 1; extra <= 2; extra++) {
    build(&hs, &s);
    if (extra == 2) {
      hs.n = 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2; /* cut before extensions */
      put8(&hs, 0);
    } else {
      put8(&hs, 0);
    }
    set_hs_len(&hs, hs.n - 4);
    record(&r, &hs);
    expect_err(r.b, r.n, TUNNEL_EPROTO);
  }

  /* Empty and truncated bodies. */
  static const uint8_t empty[] = {22, 3, 1, 0, 4, 1, 0, 0, 0};
  expect_err(empty, sizeof empty, TUNNEL_EPROTO);
  static const uint8_t tiny[] = {22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3};
  expect_err(tiny, sizeof tiny, TUNNEL_EPROTO);
}

static void not_tls(void **state) {
  (void)state;
  static const char http[] = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
  tunnel__sni p;
  /* Decided on the first byte. */
  assert_int_equal(parse(&p, (const uint8_t *)http, 1, 0), TUNNEL_ENOTSUP);
  tunnel__sni_free(&p);
  expect_err((const uint8_t *)http, sizeof http - 1, TUNNEL_ENOTSUP);
  /* SSLv2-compatible hello: 2-byte length with the top bit, type 1. */
  static const uint8_t v2[] = {0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15,
                               0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x2f};
  expect_err(v2, sizeof v2, TUNNEL_ENOTSUP);
  static const uint8_t alert[] = {21, 3, 3, 0, 2, 2, 40};
  expect_err(alert, sizeof alert, TUNNEL_ENOTSUP);
  static const uint8_t appdata[] = {23, 3, 3, 0, 1, 0};
  expect_err(appdata, sizeof appdata, TUNNEL_ENOTSUP);
  static const uint8_t major2[] = {22, 2, 0};
  expect_err(major2, sizeof major2, TUNNEL_ENOTSUP);
  static const uint8_t minor[] = {22, 3, 0x10};
  expect_err(minor, sizeof minor, TUNNEL_ENOTSUP);
  static const uint8_t ok_minor[] = {22, 3, 0, 0, 1};
  assert_int_equal(verdict(ok_minor, sizeof ok_minor), TUNNEL__SNI_NEED_MORE);
  /* A ServerHello or any other message first is broken TLS. */
  static const uint8_t server_hello[] = {22, 3, 3, 0, 4, 2, 0, 0, 70};
  expect_err(server_hello, sizeof server_hello, TUNNEL_EPROTO);
  static const uint8_t empty_rec[] = {22, 3, 1, 0, 0};
  expect_err(empty_rec, sizeof empty_rec, TUNNEL_EPROTO);
  static const uint8_t long_rec[] = {22, 3, 1, 0x48, 0x01};
  expect_err(long_rec, sizeof long_rec, TUNNEL_EPROTO);
  static const uint8_t max_rec[] = {22, 3, 1, 0x48, 0x00, 1};
  assert_int_equal(verdict(max_rec, sizeof max_rec), TUNNEL__SNI_NEED_MORE);

  /* A second record of another type, or empty, is broken TLS. */
  static bb hs, r;
  spec s = {.host = "x.example"};
  build(&hs, &s);
  size_t frags[] = {10};
  wrap(&r, hs.b, hs.n, frags, 1);
  r.b[15] = 20; /* ChangeCipherSpec */
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  wrap(&r, hs.b, hs.n, frags, 1);
  r.b[16] = 4;
  expect_err(r.b, r.n, TUNNEL_EPROTO);
  wrap(&r, hs.b, hs.n, frags, 1);
  r.b[18] = 0;
  r.b[19] = 0;
  expect_err(r.b, r.n, TUNNEL_EPROTO);
}

/* +1, -1, top bit flipped, 0, 0xff: lengths grow, shrink, jump, vanish. */
static uint8_t mutate(uint8_t v, int how) {
  switch (how) {
  case 0:
    return (uint8_t)(v + 1);
  case 1:
    return (uint8_t)(v - 1);
  case 2:
    return (uint8_t)(v ^ 0x80);
  case 3:
    return 0;
  default:
    return 0xff;
  }
}

/* Every byte of real hellos, changed in several ways: the verdict is an
 * error, NEED_MORE or a valid result, identical whether fed whole or byte
 * by byte; exact-size copies let ASan prove nothing is read past them. */
static void corruptions(void **state) {
  (void)state;
  static bb h[3], hs, m;
  mbed_hello(&h[0], "corrupt.example", alpn_h2);
  spec s = {.host = "c.example", .tls13 = 1, .alpn = 1, .sid_len = 32};
  build(&hs, &s);
  record(&h[1], &hs);
  size_t frags[] = {4, 50};
  wrap(&h[2], hs.b, hs.n, frags, 2);
  enum { N_MUTATIONS = 5 };
  for (int k = 0; k < 3; k++) {
    for (size_t i = 0; i < h[k].n; i++) {
      for (int d = 0; d < N_MUTATIONS; d++) {
        memcpy(&m, &h[k], sizeof m);
        m.b[i] = mutate(m.b[i], d);
        tunnel__sni a, b;
        int rc = parse(&a, m.b, m.n, 0);
        feed_chunks(&b, m.b, m.n, one, 0);
        assert_same(&a, &b);
        if (rc == TUNNEL__SNI_FOUND)
          assert_true(a.host_len > 0 && a.host[a.host_len] == '\0');
        assert_true(rc == TUNNEL__SNI_NEED_MORE || rc == TUNNEL__SNI_FOUND ||
                    rc == TUNNEL__SNI_NONE || rc == TUNNEL_EPROTO ||
                    rc == TUNNEL_ENOTSUP || rc == TUNNEL_ELIMIT);
        tunnel__sni_free(&a);
        tunnel__sni_free(&b);
      }
    }
  }
}

/* ------------------------------------------------------ memory, verdicts */

static void copies_only_when_split(void **state) {
  (void)state;
  static bb hs, r;
  spec s = {.host = "m.example", .tls13 = 1};
  build(&hs, &s);
  record(&r, &hs);
  reset_counters();
  tunnel__sni p;
  assert_int_equal(parse(&p, r.b, r.n, 0), TUNNEL__SNI_FOUND);
  assert_int_equal(allocs, 0); /* parsed in place */
  tunnel__sni_free(&p);

  /* Split: one buffer, at most the message size, gone after the verdict. */
  reset_counters();
  tunnel__sni_init(&p, &cmem, 0);
  assert_int_equal(feed_exact(&p, r.b, 100), TUNNEL__SNI_NEED_MORE);
  assert_int_equal(feed_exact(&p, r.b + 100, r.n - 100), TUNNEL__SNI_FOUND);
  assert_true(peak_bytes <= hs.n - 4);
  assert_int_equal(live_bytes, 0);
  tunnel__sni_free(&p);

  /* A peer announcing 16 KiB and trickling bytes holds little memory. */
  reset_counters();
  static const uint8_t head[] = {22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc};
  tunnel__sni_init(&p, &cmem, 0);
  assert_int_equal(feed_exact(&p, head, sizeof head), TUNNEL__SNI_NEED_MORE);
  for (int i = 0; i < 100; i++)
    assert_int_equal(feed_exact(&p, (const uint8_t *)"\3", 1),
                     TUNNEL__SNI_NEED_MORE);
  assert_true(live_bytes <= 512);
  for (int i = 0; i < 2000; i++)
    assert_int_equal(feed_exact(&p, (const uint8_t *)"\3", 1),
                     TUNNEL__SNI_NEED_MORE);
  assert_true(live_bytes <= 4096);
  assert_true(allocs <= 4); /* growth by doubling: copies stay linear */
  tunnel__sni_free(&p);
  assert_int_equal(live_bytes, 0);
}

static void out_of_memory(void **state) {
  (void)state;
  static bb hs, r;
  spec s = {.host = "oom.example", .alpn = 1};
  build(&hs, &s);
  record(&r, &hs);
  /* Split hello: the reassembly buffer fails, then the ALPN copy. */
  size_t calls = 0;
  for (long n = 0;; n++) {
    reset_counters();
    fail_after = n;
    tunnel__sni p;
    tunnel__sni_init(&p, &cmem, 0);
    feed_exact(&p, r.b, 20);
    int rc = feed_exact(&p, r.b + 20, r.n - 20);
    tunnel__sni_free(&p);
    assert_int_equal(live_bytes, 0);
    if (rc == TUNNEL__SNI_FOUND)
      break;
    assert_int_equal(rc, TUNNEL_ENOMEM);
    assert_int_equal(p.host_len, 0);
    calls++;
  }
  assert_true(calls >= 2);
}

static void verdicts_are_sticky(void **state) {
  (void)state;
  static bb hs, r;
  spec s = {.host = "sticky.example"};
  build(&hs, &s);
  record(&r, &hs);
  tunnel__sni p;
  assert_int_equal(parse(&p, r.b, r.n, 0), TUNNEL__SNI_FOUND);
  assert_int_equal(feed_exact(&p, (const uint8_t *)"GET", 3),
                   TUNNEL__SNI_FOUND);
  assert_string_equal(p.host, "sticky.example");
  tunnel__sni_free(&p);
  assert_int_equal(parse(&p, (const uint8_t *)"G", 1, 0), TUNNEL_ENOTSUP);
  assert_int_equal(feed_exact(&p, r.b, r.n), TUNNEL_ENOTSUP);
  tunnel__sni_free(&p);
  /* Bytes after the hello (a ChangeCipherSpec, early data) are ignored. */
  static const uint8_t ccs[] = {20, 3, 3, 0, 1, 1};
  putn(&r, ccs, sizeof ccs);
  expect(r.b, r.n, "sticky.example");
  check_splits(r.b, r.n);
  /* Empty feeds change nothing. */
  tunnel__sni_init(&p, &cmem, 0);
  assert_int_equal(tunnel__sni_feed(&p, NULL, 0), TUNNEL__SNI_NEED_MORE);
  tunnel__sni_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(mbedtls_with_sni, setup),
      cmocka_unit_test_setup(mbedtls_without_sni, setup),
      cmocka_unit_test_setup(mbedtls_with_alpn, setup),
      cmocka_unit_test_setup(mbedtls_names, setup),
      cmocka_unit_test_setup(mbedtls_refragmented, setup),
      cmocka_unit_test_setup(tls13_style, setup),
      cmocka_unit_test_setup(split_over_records, setup),
      cmocka_unit_test_setup(near_the_limit, setup),
      cmocka_unit_test_setup(no_extensions_or_no_sni, setup),
      cmocka_unit_test_setup(host_name_rules, setup),
      cmocka_unit_test_setup(server_name_structure, setup),
      cmocka_unit_test_setup(other_extensions, setup),
      cmocka_unit_test_setup(hello_structure, setup),
      cmocka_unit_test_setup(not_tls, setup),
      cmocka_unit_test_setup(corruptions, setup),
      cmocka_unit_test_setup(copies_only_when_split, setup),
      cmocka_unit_test_setup(out_of_memory, setup),
      cmocka_unit_test_setup(verdicts_are_sticky, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
