/* Feeds an HTTP request stream, cut into pieces, to the request parser.
 * Input: [cut pattern][options] then the stream. Checks that consumption
 * stays within each piece, that every consumed byte belongs to a head or a
 * body (head_len and Content-Length agree with what was consumed), and that
 * each rewritten head parses back to the same request. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x)) {                                                                \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #x);                  \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static uint8_t *flatten(tunnel__bufq *q, size_t *len) {
  uint8_t *out = malloc(q->size + 1);
  CHECK(out != NULL);
  *len = 0;
  while (q->size) {
    tunnel__iov iov[4];
    size_t n = tunnel__bufq_iov(q, iov, 4);
    CHECK(n > 0);
    memcpy(out + *len, iov[0].base, iov[0].len);
    *len += iov[0].len;
    tunnel__bufq_consume(q, iov[0].len);
  }
  return out;
}

/* The rewritten head must be one complete head that parses to the same
 * method, version, framing and (rewritten) host. */
static void check_rewrite(const tunnel__httpreq *r,
                          const tunnel__httpreq_head *h, uint8_t opt) {
  const tunnel__mem *mem = tunnel__mem_default();
  static const tunnel__httpreq_kv set[] = {{"X-Fuzz", "1"},
                                           {"x-forwarded-proto", "h"}};
  static const char *const rm[] = {"cookie", "x-forwarded-for"};
  tunnel__httpreq_rewrite_opts o = {0};
  if (opt & 1)
    o.client_addr = "192.0.2.1";
  if (opt & 2)
    o.proto = "https";
  o.forwarded_host = (opt & 4) != 0;
  if (opt & 8)
    o.host = "Backend.Example:8080";
  if (opt & 16) {
    o.set = set;
    o.n_set = 2;
  }
  if (opt & 32) {
    o.remove = rm;
    o.n_remove = 2;
  }
  tunnel__bufq q;
  tunnel__bufq_init(&q, mem, 256);
  CHECK(tunnel__httpreq_rewrite(r, &o, &q) == 0);
  size_t len;
  uint8_t *out = flatten(&q, &len);
  tunnel__bufq_free(&q);
  CHECK(len >= 4 && memcmp(out + len - 4, "\r\n\r\n", 4) == 0);

  tunnel__httpreq *back;
  CHECK(tunnel__httpreq_new(&back, mem, 80000, 100000) == 0);
  size_t used;
  int rc = tunnel__httpreq_feed(back, out, len, &used);
  CHECK(rc == TUNNEL__HTTPREQ_HEAD);
  CHECK(used == len);
  const tunnel__httpreq_head *b = tunnel__httpreq_get_head(back);
  CHECK(strcmp(b->method, h->method) == 0);
  CHECK(b->version_minor == h->version_minor);
  CHECK(b->chunked == h->chunked);
  CHECK(b->has_content_length == h->has_content_length);
  CHECK(b->content_length == h->content_length);
  CHECK(b->upgrade == h->upgrade);
  CHECK(!b->absolute);
  if (o.host && !h->connect) {
    CHECK(strcmp(b->host, "backend.example") == 0 && b->port == 8080);
  } else {
    CHECK(strcmp(b->host, h->host) == 0 && b->port == h->port);
  }
  CHECK(b->path_len == h->path_len);
  CHECK(memcmp(b->path, h->path, h->path_len) == 0);
  tunnel__httpreq_free(back);
  free(out);

  (void)tunnel__httpreq_basic_auth(h, "user", "pass");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  uint8_t cut = data[0], opt = data[1];
  data += 2;
  size -= 2;
  size_t max_head = (opt & 64) ? 48 + (size_t)(cut & 0x1f) * 16 : 0;
  size_t max_headers = (opt & 128) ? 1 + (cut >> 5) : 0;
  tunnel__httpreq *r;
  CHECK(tunnel__httpreq_new(&r, tunnel__mem_default(), max_head, max_headers) ==
        0);

  size_t pos = 0, head_acc = 0, body_acc = 0;
  uint32_t lcg = cut;
  int done = 0, have_head = 0;
  uint64_t cl = 0;
  int framed_by_cl = 0;
  while (!done) {
    /* Next piece end: whole, fixed steps, bytes, or pseudo-random. */
    size_t step;
    switch (cut & 3) {
    case 0:
      step = size;
      break;
    case 1:
      step = (size_t)(cut >> 2) + 1;
      break;
    case 2:
      step = 1;
      break;
    default:
      lcg = lcg * 1103515245u + 12345u;
      step = (lcg >> 16) % 97 + 1;
      break;
    }
    size_t end = size - pos < step ? size : pos + step;
    for (;;) {
      size_t avail = end - pos, used;
      int rc = tunnel__httpreq_feed(r, data + pos, avail, &used);
      CHECK(rc >= 0);
      CHECK(used <= avail);
      if (rc == TUNNEL__HTTPREQ_MORE) {
        CHECK(used == avail);
        head_acc += used;
        pos += used;
        break;
      }
      if (rc == TUNNEL__HTTPREQ_HEAD) {
        const tunnel__httpreq_head *h = tunnel__httpreq_get_head(r);
        CHECK(h != NULL && used > 0);
        head_acc += used;
        CHECK(h->head_len == head_acc);
        head_acc = 0;
        body_acc = 0;
        CHECK(h->host_len == strlen(h->host));
        CHECK(!(h->chunked && h->has_content_length));
        have_head = 1;
        framed_by_cl = !h->chunked;
        cl = h->content_length;
        check_rewrite(r, h, opt);
      } else if (rc == TUNNEL__HTTPREQ_BODY) {
        CHECK(have_head && used > 0);
        body_acc += used;
        CHECK(!framed_by_cl || body_acc <= cl);
      } else if (rc == TUNNEL__HTTPREQ_END) {
        CHECK(have_head && used == 0);
        CHECK(!framed_by_cl || body_acc == cl);
        CHECK(tunnel__httpreq_get_head(r) != NULL);
        have_head = 0;
      } else if (rc == TUNNEL__HTTPREQ_UPGRADE) {
        CHECK(used == 0 && tunnel__httpreq_get_head(r) != NULL);
        done = 1;
        break;
      } else {
        CHECK(rc == TUNNEL__HTTPREQ_ERROR && used == 0);
        int st = tunnel__httpreq_status(r);
        CHECK(st == 400 || st == 431 || st == 501 || st == 505);
        tunnel__bufq q;
        tunnel__bufq_init(&q, tunnel__mem_default(), 0);
        CHECK(tunnel__http_error_page(st, NULL, &q) == 0 && q.size > 0);
        tunnel__bufq_free(&q);
        done = 1;
        break;
      }
      pos += used;
    }
    if (pos == size)
      done = 1;
  }
  tunnel__httpreq_free(r);
  return 0;
}
