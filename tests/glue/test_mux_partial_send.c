/* A single stream write larger than one frame, made while the socket takes
 * only part of it (tiny socket buffers; both ends share one loop, so the
 * peer cannot read during the call), must arrive whole: the bytes beyond
 * the first frame must not wait for a window update that so short a send
 * never earns. Internal API over real loopback sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "config.h"
#include "uv/mux.h"
#include "uv/sched.h"
#include "uv/stream.h"

#define PAYLOAD (300u * 1024u) /* more than one 256 KiB frame */

typedef struct fixture {
  uv_loop_t loop;
  tunnel__sched sched;
  tunnel_config *cfg;
  uv_tcp_t listener;
  uv_timer_t timer, deadline;
  tunnel__mux *client, *server;
  uv_tcp_t *client_tcp, *server_tcp;
  uv_connect_t conn;
  tunnel_stream *tx, *rx;
  uint8_t *data;
  size_t got;
  int eof, mismatch, timed_out;
} fixture;

static void small_buffers(uv_handle_t *h, int optname) {
  uv_os_fd_t fd;
  int size = 4096;
  assert_int_equal(uv_fileno(h, &fd), 0);
  assert_int_equal(setsockopt(fd, SOL_SOCKET, optname, &size, sizeof size), 0);
}

static void on_rx(tunnel_stream *st, int status, const uint8_t *d, size_t n,
                  void *ud) {
  fixture *f = ud;
  (void)st;
  if (status == TUNNEL_EEOF) {
    f->eof = 1;
    uv_stop(&f->loop);
    return;
  }
  assert_int_equal(status, 0);
  if (f->got + n > PAYLOAD || memcmp(f->data + f->got, d, n) != 0)
    f->mismatch = 1;
  f->got += n;
  /* Half-close only once everything arrived: a shutdown queued right
   * after the write would push the stalled bytes out and hide a stall. */
  if (f->got == PAYLOAD)
    assert_int_equal(tunnel_stream_shutdown(f->tx, NULL, NULL), 0);
}

static void on_server_stream(tunnel__mux *m, tunnel_stream *st, void *ud) {
  fixture *f = ud;
  (void)m;
  f->rx = st;
  assert_int_equal(tunnel_stream_read_start(st, on_rx, f), 0);
}

static void on_end(tunnel__mux *m, int err, void *ud) {
  (void)m, (void)err, (void)ud;
}

static const tunnel__mux_callbacks server_cb = {on_server_stream, NULL, on_end};
static const tunnel__mux_callbacks client_cb = {NULL, NULL, on_end};

/* One write of the whole payload, once the SYN has left the queue and the
 * peer's ACK (with its window grant) is in, so the zero-copy path is taken
 * and nothing else is due to arrive. */
static void write_payload(uv_timer_t *t) {
  fixture *f = t->data;
  assert_int_equal(
      tunnel_stream_write(f->tx, f->data, PAYLOAD, NULL, NULL), 0);
}

static void on_connect(uv_connect_t *req, int status) {
  fixture *f = req->data;
  assert_int_equal(status, 0);
  small_buffers((uv_handle_t *)f->client_tcp, SO_SNDBUF);
  assert_int_equal(tunnel__mux_start(f->client, NULL, 0), 0);
  assert_int_equal(tunnel__mux_open(f->client, &f->tx), 0);
  uv_timer_start(&f->timer, write_payload, 100, 0);
}

static void on_accept(uv_stream_t *l, int status) {
  fixture *f = l->data;
  assert_int_equal(status, 0);
  assert_int_equal(uv_accept(l, (uv_stream_t *)f->server_tcp), 0);
  assert_int_equal(tunnel__mux_start(f->server, NULL, 0), 0);
}

static void on_deadline(uv_timer_t *t) {
  fixture *f = t->data;
  f->timed_out = 1;
  uv_stop(&f->loop);
}

static void partial_send_delivers_everything(void **state) {
  (void)state;
  fixture f;
  memset(&f, 0, sizeof f);
  f.data = malloc(PAYLOAD);
  assert_non_null(f.data);
  for (size_t i = 0; i < PAYLOAD; i++)
    f.data[i] = (uint8_t)(i * 131u + (i >> 9));
  assert_int_equal(uv_loop_init(&f.loop), 0);
  assert_int_equal(tunnel__sched_init(&f.sched, &f.loop), 0);
  assert_int_equal(tunnel_config_new(&f.cfg), 0);

  f.client_tcp = malloc(sizeof *f.client_tcp);
  f.server_tcp = malloc(sizeof *f.server_tcp);
  assert_non_null(f.client_tcp);
  assert_non_null(f.server_tcp);
  uv_tcp_init(&f.loop, f.client_tcp);
  uv_tcp_init(&f.loop, f.server_tcp);
  assert_int_equal(tunnel__mux_new(&f.client, &f.loop, &f.sched, f.cfg, 1,
                                   f.client_tcp, &client_cb, &f),
                   0);
  assert_int_equal(tunnel__mux_new(&f.server, &f.loop, &f.sched, f.cfg, 0,
                                   f.server_tcp, &server_cb, &f),
                   0);

  struct sockaddr_in addr;
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  uv_tcp_init(&f.loop, &f.listener);
  f.listener.data = &f;
  assert_int_equal(uv_tcp_bind(&f.listener, (struct sockaddr *)&addr, 0), 0);
  /* Set before listen so accepted sockets inherit a small window. */
  small_buffers((uv_handle_t *)&f.listener, SO_RCVBUF);
  assert_int_equal(uv_listen((uv_stream_t *)&f.listener, 1, on_accept), 0);
  uv_tcp_getsockname(&f.listener, (struct sockaddr *)&bound, &len);

  uv_timer_init(&f.loop, &f.timer);
  uv_timer_init(&f.loop, &f.deadline);
  f.timer.data = f.deadline.data = &f;
  uv_timer_start(&f.deadline, on_deadline, 5000, 0);
  f.conn.data = &f;
  assert_int_equal(uv_tcp_connect(&f.conn, f.client_tcp,
                                  (struct sockaddr *)&bound, on_connect),
                   0);
  uv_run(&f.loop, UV_RUN_DEFAULT);

  int timed_out = f.timed_out, eof = f.eof, mismatch = f.mismatch;
  size_t got = f.got;

  if (f.tx)
    tunnel_stream_close(f.tx, NULL, NULL);
  if (f.rx)
    tunnel_stream_close(f.rx, NULL, NULL);
  tunnel__mux_close(f.client);
  tunnel__mux_close(f.server);
  uv_close((uv_handle_t *)&f.listener, NULL);
  uv_close((uv_handle_t *)&f.timer, NULL);
  uv_close((uv_handle_t *)&f.deadline, NULL);
  tunnel__sched_close(&f.sched, NULL);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f.loop), 0);
  tunnel_config_free(f.cfg);
  free(f.data);

  if (timed_out)
    fail_msg("stalled: %zu of %u bytes arrived, no FIN", got, PAYLOAD);
  assert_false(mismatch);
  assert_int_equal(got, PAYLOAD);
  assert_true(eof);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(partial_send_delivers_everything),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
