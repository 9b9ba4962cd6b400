/* Arbitrary server bytes into a started engine. Byte 0 picks the mode (bit
 * 0: non-mux) and what the program does (bit 1: consume at once, bit 2:
 * write back, bit 3: close on data, bit 4: refuse visitors, bit 5:
 * shutdown on the visitor's FIN, bit 6: a piece starting with 'D' starts a
 * drain, bit 7: one starting with 'S' stops the engine and connects again;
 * whatever the mode, one starting with 'V' visits a secret service);
 * byte 1 the piece size. In non-mux mode each piece goes to a connection
 * picked by its first byte, every connection the engine asks for
 * (connection 1 too, when it reconnects) is reported ready, and pieces
 * starting with 0xff report a connection closed. The clock advances with
 * every piece so heartbeats, deadlines and reconnections fire. Output is
 * drained each time. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tunnel/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
  uint8_t mode;
  uint32_t conns[64];
  int nconns;
  uint32_t pending[8];
  int npending;
} app;

static int on_open(tunnel_engine *e, uint32_t stream, uint32_t proxy,
                   const char *visitor, void *ud) {
  app *a = ud;
  (void)e, (void)stream, (void)proxy, (void)visitor;
  return (a->mode & 16) ? TUNNEL_EREFUSED : 0;
}

static void on_data(tunnel_engine *e, uint32_t stream, const uint8_t *d,
                    size_t n, void *ud) {
  app *a = ud;
  size_t taken;
  if (a->mode & 4)
    tunnel_engine_stream_write(e, stream, d, n, &taken);
  if (a->mode & 2)
    tunnel_engine_stream_consumed(e, stream, n);
  if ((a->mode & 8) && n && d[0] == 'C')
    tunnel_engine_stream_close(e, stream);
}

static void on_end(tunnel_engine *e, uint32_t stream, int status, void *ud) {
  app *a = ud;
  if (status == 0 && (a->mode & 32))
    tunnel_engine_stream_shutdown(e, stream);
  else if (status == 0)
    tunnel_engine_stream_close(e, stream);
}

static void on_writable(tunnel_engine *e, uint32_t stream, void *ud) {
  static const uint8_t msg[] = "more";
  size_t taken;
  (void)ud;
  tunnel_engine_stream_write(e, stream, msg, sizeof msg, &taken);
}

static void on_connect(tunnel_engine *e, uint32_t conn, void *ud) {
  app *a = ud;
  (void)e;
  if (a->npending < 8)
    a->pending[a->npending++] = conn;
  else
    tunnel_engine_conn_closed(e, conn, TUNNEL_ECONNREFUSED, 0);
}

static int rnd(uint8_t *out, size_t n, void *ud) {
  (void)ud;
  memset(out, 0x5a, n);
  return 0;
}

static int64_t clock_s(void *ud) {
  (void)ud;
  return 1700000000;
}

static void drain(tunnel_engine *e) {
  uint32_t conn;
  int guard = 0;
  while (tunnel_engine_next_output(e, &conn) == 1 && guard++ < 1000) {
    uint8_t buf[4096];
    size_t n;
    tunnel_engine_send(e, conn, buf, sizeof buf, &n);
    if (!n)
      break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  app a;
  memset(&a, 0, sizeof a);
  a.mode = data[0];
  size_t step = (size_t)data[1] + 1;
  data += 2;
  size -= 2;
  tunnel_config *cfg;
  if (tunnel_config_new(&cfg))
    return 0;
  tunnel_config_set_token(cfg, "fuzz");
  tunnel_config_set_tcp_mux(cfg, !(a.mode & 1));
  tunnel_config_set_stream_window(cfg, 256u * 1024u);
  tunnel_config_set_max_work_conns(cfg, 8);
  tunnel_config_set_heartbeat(cfg, 1, 3);
  tunnel_engine *e;
  int rc = tunnel_engine_new(&e, cfg, &a);
  tunnel_config_free(cfg);
  if (rc)
    return 0;
  tunnel_engine_set_stream_cbs(e, on_open, on_data, on_end, on_writable);
  tunnel_engine_set_conn_cbs(e, on_connect, NULL);
  tunnel_engine_set_random_cb(e, rnd);
  tunnel_engine_set_time_cb(e, clock_s);
  uint32_t p;
  tunnel_engine_add_proxy(e, "tcp", TUNNEL_ENGINE_PROXY_TCP, &p);
  tunnel_engine_add_proxy(e, "web", TUNNEL_ENGINE_PROXY_HTTP, &p);
  tunnel_engine_proxy_set_subdomain(e, p, "app");
  uint64_t now = 0;
  tunnel_engine_start(e, now);
  drain(e);
  while (size) {
    size_t n = size < step ? size : step;
    now += 100;
    for (int i = 0; i < a.npending; i++) {
      tunnel_engine_conn_ready(e, a.pending[i], now);
      if (a.nconns < 64)
        a.conns[a.nconns++] = a.pending[i];
    }
    a.npending = 0;
    uint32_t conn = TUNNEL_ENGINE_CONTROL;
    if ((a.mode & 1) && a.nconns && data[0] < 0x80)
      conn = a.conns[data[0] % a.nconns];
    if ((a.mode & 1) && data[0] == 0xff && a.nconns)
      tunnel_engine_conn_closed(e, a.conns[data[n - 1] % a.nconns],
                                n & 1 ? TUNNEL_ECONNRESET : 0, now);
    else
      tunnel_engine_recv(e, conn, data, n, now);
    if (data[0] == 'V') {
      uint32_t visit;
      tunnel_engine_visit(e, "svc", "secret", &visit);
    }
    if ((a.mode & 64) && data[0] == 'D')
      tunnel_engine_drain(e, now);
    if ((a.mode & 128) && data[0] == 'S') {
      tunnel_engine_stop(e, now);
      a.npending = 0; /* the stop forgot every connection */
      tunnel_engine_connect(e, now);
    }
    uint64_t next;
    tunnel_engine_tick(e, now, &next);
    drain(e);
    data += n;
    size -= n;
  }
  tunnel_engine_conn_closed(e, TUNNEL_ENGINE_CONTROL, 0, now);
  tunnel_engine_free(e);
  return 0;
}
