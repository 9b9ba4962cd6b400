/* Feeds arbitrary bytes to a yamux session, in pieces, while the callbacks
 * answer as an application would (consume, write back, close, reset).
 * Mode bit 32 gives the session receive budgets (and bit 64 regrants after
 * every piece); their accounting is checked after every piece. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "yamux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
  uint8_t mode;
} app;

static int on_stream(tunnel__ymx *s, uint32_t id, void **su, void *ud) {
  app *a = ud;
  (void)s;
  (void)su;
  return (id & a->mode & 4) ? -1 : 0;
}

static void on_data(tunnel__ymx *s, uint32_t id, void *su, const uint8_t *d,
                    size_t n, void *ud) {
  app *a = ud;
  (void)su;
  size_t w;
  tunnel__ymx_write(s, id, d, n, &w);
  if (a->mode & 1)
    tunnel__ymx_consumed(s, id, n);
  if ((a->mode & 2) && n && d[0] == 'R')
    tunnel__ymx_reset(s, id);
}

static void on_fin(tunnel__ymx *s, uint32_t id, void *su, void *ud) {
  (void)su;
  (void)ud;
  tunnel__ymx_shutdown(s, id);
}

static void on_window(tunnel__ymx *s, uint32_t id, void *su, void *ud) {
  (void)su;
  (void)ud;
  size_t w;
  static const uint8_t msg[] = "window";
  tunnel__ymx_write(s, id, msg, sizeof msg, &w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  app a = {data[0]};
  size_t step = (size_t)data[1] + 1;
  data += 2;
  size -= 2;
  tunnel__ymx_callbacks cb = {0};
  cb.on_stream = on_stream;
  cb.on_data = on_data;
  cb.on_fin = on_fin;
  cb.on_window = on_window;
  tunnel__ymx_config cfg = {0};
  cfg.is_client = a.mode & 8;
  cfg.max_streams = 8;
  cfg.window = TUNNEL__YMX_INITIAL_WINDOW;
  cfg.max_backlog = 4096;
  /* Stands for other sessions' share of the shared counter. */
  const uint64_t others = 1000;
  tunnel__ymx_budget shared = {others, 3 * TUNNEL__YMX_INITIAL_WINDOW};
  int budgeted = a.mode & 32;
  if (budgeted) {
    cfg.window = 4 * TUNNEL__YMX_INITIAL_WINDOW;
    cfg.budget = 2 * TUNNEL__YMX_INITIAL_WINDOW;
    cfg.shared = &shared;
  }
  tunnel__ymx *s;
  if (tunnel__ymx_new(&s, &cfg, &cb, &a) != 0)
    return 0;
  uint32_t id;
  if (a.mode & 16)
    tunnel__ymx_open(s, NULL, &id);
  while (size) {
    size_t n = size < step ? size : step;
    int rc = tunnel__ymx_recv(s, data, n);
    data += n;
    size -= n;
    /* Drain like a transport would, in part, to exercise the queue. */
    tunnel__iov iov[4];
    size_t k = tunnel__ymx_out_iov(s, iov, 4);
    if (k)
      tunnel__ymx_out_consume(s, iov[0].len);
    if (a.mode & 64)
      tunnel__ymx_regrant(s);
    /* Each stream holds at most its window; with budgets, the session at
     * most its budget plus an initial window per stream, and the shared
     * counter exactly what it had plus the session's total. */
    uint64_t held = tunnel__ymx_buffered(s);
    uint64_t streams = tunnel__ymx_stream_count(s);
    if (held > streams * cfg.window)
      abort();
    if (budgeted && (held > cfg.budget + streams * TUNNEL__YMX_INITIAL_WINDOW ||
                     shared.used != others + held))
      abort();
    if (rc)
      break;
  }
  tunnel__ymx_free(s);
  if (shared.used != others)
    abort();
  return 0;
}
