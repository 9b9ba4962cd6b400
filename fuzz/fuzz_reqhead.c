/* Feeds arbitrary bytes to the request reader of the metrics port, whole
 * and in pieces whose sizes come from the first byte: both must see the
 * same sequence of events and targets; a target is always NUL-terminated
 * within its buffer, and the byte budget is never overrun. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reqhead.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      abort();                                                                 \
  } while (0)

#define MAX_EVENTS 64

typedef struct trace {
  int n;
  int ev[MAX_EVENTS];
  int method[MAX_EVENTS];
  char target[MAX_EVENTS][TUNNEL__REQHEAD_TARGET_MAX];
} trace;

static void run(const uint8_t *d, size_t n, size_t piece, trace *t) {
  tunnel__reqhead r;
  tunnel__reqhead_init(&r, 1024);
  memset(t, 0, sizeof *t);
  size_t off = 0;
  while (off < n && t->n < MAX_EVENTS) {
    size_t len = piece && n - off > piece ? piece : n - off;
    size_t used = 0;
    tunnel__reqhead_event ev =
        tunnel__reqhead_feed(&r, (const char *)d + off, len, &used);
    CHECK(used <= len);
    CHECK(r.bytes <= 1024 + len);
    off += used;
    if (ev == TUNNEL__REQHEAD_MORE) {
      CHECK(used == len);
      continue;
    }
    CHECK(strlen(r.target) == r.target_len);
    CHECK(r.target_len < TUNNEL__REQHEAD_TARGET_MAX);
    t->ev[t->n] = ev;
    t->method[t->n] = ev == TUNNEL__REQHEAD_REQUEST
                          ? tunnel__reqhead_method(&r)
                          : -1;
    memcpy(t->target[t->n], r.target, r.target_len + 1);
    t->n++;
    if (ev != TUNNEL__REQHEAD_REQUEST)
      break; /* the connection closes */
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t piece = 1 + data[0] % 17;
  static trace whole, split;
  run(data + 1, size - 1, 0, &whole);
  run(data + 1, size - 1, piece, &split);
  /* Splitting never changes what the requests were. A request and an
   * error are told apart the same way; only where a size error is noticed
   * may differ by one piece, so compare up to the first error. */
  int n = whole.n < split.n ? whole.n : split.n;
  for (int i = 0; i < n; i++) {
    if (whole.ev[i] != TUNNEL__REQHEAD_REQUEST ||
        split.ev[i] != TUNNEL__REQHEAD_REQUEST)
      break;
    CHECK(whole.method[i] == split.method[i]);
    CHECK(strcmp(whole.target[i], split.target[i]) == 0);
  }
  return 0;
}
