/* Feeds arbitrary bytes to the ClientHello parser in several splits: one
 * byte at a time, then chunks whose sizes derive from the first input byte.
 * Every split must reach the same verdict at the same byte, with the same
 * host name, versions, ALPN list and reason; a found name must obey the
 * documented syntax. The second byte picks the size limit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      abort();                                                                 \
  } while (0)

/* The verdict and the span of the feed that produced it: bytes before
 * `from` had been fed without one, `at` bytes with it (both 0 if none). */
typedef struct run {
  int rc;
  size_t from;
  size_t at;
} run;

static run feed_chunks(tunnel__sni *p, const uint8_t *d, size_t n, uint8_t sel,
                       size_t fixed) {
  size_t off = 0;
  run r = {TUNNEL__SNI_NEED_MORE, 0, 0};
  uint32_t x = sel * 2654435761u + 1;
  while (off < n) {
    size_t k = fixed;
    if (k == 0) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      k = 1 + x % (sel & 1 ? 7 : 600); /* small or record-sized pieces */
    }
    if (k > n - off)
      k = n - off;
    /* Each piece in a buffer of its own size: reading past the piece
     * given, not only past the input, trips AddressSanitizer. */
    uint8_t *piece = malloc(k);
    CHECK(piece != NULL);
    memcpy(piece, d + off, k);
    r.rc = tunnel__sni_feed(p, piece, k);
    free(piece);
    if (r.rc != TUNNEL__SNI_NEED_MORE) {
      r.from = off;
      r.at = off + k;
      break;
    }
    off += k;
  }
  return r;
}

static void check_host(const tunnel__sni *p) {
  CHECK(p->host_len >= 1 && p->host_len <= TUNNEL__SNI_HOST_MAX);
  CHECK(strlen(p->host) == p->host_len);
  CHECK(p->host[0] != '.' && p->host[p->host_len - 1] != '.');
  size_t label = 0;
  for (size_t i = 0; i < p->host_len; i++) {
    char c = p->host[i];
    if (c == '.') {
      CHECK(label > 0);
      label = 0;
      continue;
    }
    CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-');
    CHECK(++label <= 63);
  }
}

static void same(const tunnel__sni *a, const tunnel__sni *b) {
  CHECK(a->result == b->result);
  CHECK(a->why == b->why);
  CHECK(a->host_len == b->host_len);
  CHECK(memcmp(a->host, b->host, a->host_len) == 0);
  CHECK(a->max_version == b->max_version);
  CHECK(a->legacy_version == b->legacy_version);
  CHECK(a->alpn_len == b->alpn_len);
  CHECK(a->alpn_len == 0 || memcmp(a->alpn, b->alpn, a->alpn_len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  uint8_t sel = data[0];
  size_t max = data[1] ? 64u * data[1] : 0; /* 0: the default */
  data += 2;
  size -= 2;
  const tunnel__mem *mem = tunnel__mem_default();

  tunnel__sni ref;
  tunnel__sni_init(&ref, mem, max);
  run r = feed_chunks(&ref, data, size, 0, 1);
  CHECK(r.rc == ref.result);
  if (r.rc == TUNNEL__SNI_FOUND)
    check_host(&ref);
  else
    CHECK(ref.host_len == 0);
  CHECK((r.rc < 0) == (ref.why != NULL));
  if (r.rc != TUNNEL__SNI_NEED_MORE) {
    /* The verdict is sticky: more bytes change nothing. */
    CHECK(tunnel__sni_feed(&ref, data, size) == r.rc);
  }
  size_t pos = 0, total = 0, len;
  const uint8_t *name;
  while (tunnel__sni_alpn_next(&ref, &pos, &name, &len)) {
    CHECK(len >= 1 && name + len <= ref.alpn + ref.alpn_len);
    total += 1 + len;
  }
  CHECK(total == ref.alpn_len);

  const size_t fixed[] = {(size_t)sel + 1, 0};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
    tunnel__sni p;
    tunnel__sni_init(&p, mem, max);
    run s = feed_chunks(&p, data, size, sel, fixed[i]);
    CHECK(s.rc == r.rc);
    /* The verdict lands in the chunk holding the deciding byte. */
    if (r.rc != TUNNEL__SNI_NEED_MORE)
      CHECK(s.from < r.at && r.at <= s.at);
    same(&ref, &p);
    tunnel__sni_free(&p);
  }
  tunnel__sni_free(&ref);
  return 0;
}
