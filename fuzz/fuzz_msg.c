/* Feeds arbitrary bytes, in pieces, to an frp message reader with a small
 * body limit. Every decoded message must re-encode, decode back to an equal
 * message, and encode again to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      abort();                                                                 \
  } while (0)

/* Encodes m and returns the framed bytes in a fresh buffer. */
static uint8_t *encode(const tunnel__mem *mem, const tunnel__msg *m,
                       size_t *len) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, mem, 128);
  CHECK(tunnel__msg_encode(mem, m, &q) == 0);
  uint8_t *out = malloc(q.size + 1);
  CHECK(out != NULL);
  *len = 0;
  while (q.size) {
    tunnel__iov iov[4];
    size_t n = tunnel__bufq_iov(&q, iov, 4);
    CHECK(n > 0);
    memcpy(out + *len, iov[0].base, iov[0].len);
    *len += iov[0].len;
    tunnel__bufq_consume(&q, iov[0].len);
  }
  tunnel__bufq_free(&q);
  CHECK(*len >= TUNNEL__MSG_HEADER_SIZE && out[0] == m->type);
  return out;
}

static void check_round_trip(const tunnel__mem *mem, const tunnel__msg *m) {
  CHECK(tunnel__msg_type_name(m->type) != NULL);
  size_t len;
  uint8_t *wire = encode(mem, m, &len);
  tunnel__msg back;
  CHECK(tunnel__msg_decode(mem, wire[0], wire + TUNNEL__MSG_HEADER_SIZE,
                           len - TUNNEL__MSG_HEADER_SIZE, &back) == 0);
  CHECK(back.type == m->type);
  CHECK(tunnel__msg_equal(m, &back));
  size_t len2;
  uint8_t *wire2 = encode(mem, &back, &len2);
  CHECK(len2 == len && memcmp(wire, wire2, len) == 0);
  free(wire);
  free(wire2);
  tunnel__msg_clear(mem, &back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  size_t step = (size_t)data[0] + 1;
  uint32_t max_body = 64u + 16u * data[1]; /* 64..4144 */
  data += 2;
  size -= 2;
  const tunnel__mem *mem = tunnel__mem_default();
  tunnel__msg_reader r;
  tunnel__msg_reader_init(&r, mem, max_body);
  while (size) {
    size_t n = size < step ? size : step, used;
    tunnel__msg m;
    int rc = tunnel__msg_reader_feed(&r, data, n, &used, &m);
    CHECK(used <= n);
    data += used;
    size -= used;
    if (rc < 0)
      break;
    if (rc == 1) {
      check_round_trip(mem, &m);
      tunnel__msg_clear(mem, &m);
    } else {
      CHECK(used == n);
    }
  }
  tunnel__msg_reader_free(&r);
  return 0;
}
