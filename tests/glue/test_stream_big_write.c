/* A single write of more than 4 GiB to a stream over a whole TCP
 * connection (frp's non-mux mode) arrives whole and in order, and its
 * callback reports success only then: libuv describes a buffer with an
 * unsigned int length, so a larger write must go out as several buffers,
 * never truncated. The source is an anonymous mapping (zero pages cost no
 * memory) with markers near both ends and across the 4 GiB boundary.
 * Internal API over real loopback sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "config.h"
#include "uv/sched.h"
#include "uv/stream.h"

#define TOTAL ((size_t)4 << 30 | 12345u) /* 4 GiB + a bit */
#define MARKS 4

static const size_t mark_at[MARKS] = {0, ((size_t)1 << 32) - 2,
                                      (size_t)1 << 32, TOTAL - 8};

typedef struct fixture {
  uv_loop_t loop;
  tunnel__sched sched;
  tunnel_config *cfg;
  uv_tcp_t listener, peer;
  uv_timer_t deadline;
  uv_connect_t conn;
  uv_tcp_t *tcp;
  tunnel_stream *st;
  uint8_t *src;
  uint8_t rbuf[256 * 1024];
  size_t got;
  int marks_ok, write_status, write_done, timed_out, closed;
} fixture;

static uint8_t mark_byte(size_t off) { return (uint8_t)(0xA5u ^ (off * 31u)); }

static void on_peer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  fixture *f = h->data;
  (void)hint;
  *b = uv_buf_init((char *)f->rbuf, sizeof f->rbuf);
}

static void on_peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  fixture *f = s->data;
  (void)b;
  if (n < 0) {
    uv_read_stop(s);
    return;
  }
  for (int i = 0; i < MARKS; i++)
    for (size_t k = 0; k < 8; k++) {
      size_t off = mark_at[i] + k;
      if (off >= f->got && off < f->got + (size_t)n &&
          f->rbuf[off - f->got] == mark_byte(off))
        f->marks_ok++;
    }
  f->got += (size_t)n;
  if (f->got >= TOTAL && f->write_done)
    uv_stop(&f->loop);
}

static void on_write(tunnel_stream *st, int status, void *ud) {
  fixture *f = ud;
  (void)st;
  f->write_status = status;
  f->write_done = 1;
  if (f->got >= TOTAL)
    uv_stop(&f->loop);
}

static void on_accept(uv_stream_t *l, int status) {
  fixture *f = l->data;
  assert_int_equal(status, 0);
  assert_int_equal(uv_tcp_init(&f->loop, &f->peer), 0);
  f->peer.data = f;
  assert_int_equal(uv_accept(l, (uv_stream_t *)&f->peer), 0);
  uv_read_start((uv_stream_t *)&f->peer, on_peer_alloc, on_peer_read);
}

static void on_connect(uv_connect_t *req, int status) {
  fixture *f = req->data;
  assert_int_equal(status, 0);
  f->st = tunnel__stream_new_tcp(&f->sched, &f->cfg->mem, f->tcp, NULL, 0);
  assert_non_null(f->st);
  assert_int_equal(tunnel_stream_write(f->st, f->src, TOTAL, on_write, f), 0);
  /* Nothing was lost in the accounting either. */
  assert_true(tunnel_stream_write_queue_size(f->st) <= TOTAL);
}

static void on_deadline(uv_timer_t *t) {
  fixture *f = t->data;
  f->timed_out = 1;
  uv_stop(&f->loop);
}

static void on_stream_closed(tunnel_stream *st, void *ud) {
  (void)st;
  ((fixture *)ud)->closed = 1;
}

static void test_write_over_4gib(void **state) {
  (void)state;
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->src = mmap(NULL, TOTAL, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  assert_true(f->src != MAP_FAILED);
  for (int i = 0; i < MARKS; i++)
    for (size_t k = 0; k < 8; k++)
      f->src[mark_at[i] + k] = mark_byte(mark_at[i] + k);

  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(tunnel_config_new(&f->cfg), 0);
  assert_int_equal(tunnel__sched_init(&f->sched, &f->loop), 0);
  assert_int_equal(uv_tcp_init(&f->loop, &f->listener), 0);
  f->listener.data = f;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&f->listener, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 4, on_accept), 0);
  int alen = sizeof a;
  uv_tcp_getsockname(&f->listener, (struct sockaddr *)&a, &alen);
  f->tcp = malloc(sizeof *f->tcp);
  assert_non_null(f->tcp);
  assert_int_equal(uv_tcp_init(&f->loop, f->tcp), 0);
  f->conn.data = f;
  assert_int_equal(
      uv_tcp_connect(&f->conn, f->tcp, (struct sockaddr *)&a, on_connect), 0);
  uv_timer_init(&f->loop, &f->deadline);
  f->deadline.data = f;
  uv_timer_start(&f->deadline, on_deadline, 120000, 0);

  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_false(f->timed_out);
  assert_int_equal(f->write_status, 0);
  assert_true(f->write_done);
  assert_true(f->got == TOTAL);
  assert_int_equal(f->marks_ok, MARKS * 8);

  tunnel_stream_close(f->st, on_stream_closed, f);
  uv_close((uv_handle_t *)&f->peer, NULL);
  uv_close((uv_handle_t *)&f->listener, NULL);
  uv_close((uv_handle_t *)&f->deadline, NULL);
  while (!f->closed)
    uv_run(&f->loop, UV_RUN_ONCE);
  tunnel__sched_close(&f->sched, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  tunnel_config_free(f->cfg);
  munmap(f->src, TOTAL);
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_write_over_4gib),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
