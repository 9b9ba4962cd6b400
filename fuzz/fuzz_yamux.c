/* Feeds arbitrary bytes to a yamux session, in pieces, while the callbacks
 * answer as an application would (consume, write back, close, reset). */
#include <stdint.h>
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
    if (rc)
      break;
  }
  tunnel__ymx_free(s);
  return 0;
}
