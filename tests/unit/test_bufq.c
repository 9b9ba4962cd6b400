#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bufq.h"

static size_t drain(tunnel__bufq *q, uint8_t *out, size_t max_iov) {
  size_t total = 0;
  while (q->size) {
    tunnel__iov iov[8];
    size_t n = tunnel__bufq_iov(q, iov, max_iov);
    assert_true(n > 0);
    memcpy(out + total, iov[0].base, iov[0].len);
    total += iov[0].len;
    tunnel__bufq_consume(q, iov[0].len);
  }
  return total;
}

static void fifo_order_across_chunks(void **state) {
  (void)state;
  tunnel__bufq q;
  tunnel__bufq_init(&q, tunnel__mem_default(), 16);
  uint8_t in[1000], out[1000];
  for (size_t i = 0; i < sizeof in; i++)
    in[i] = (uint8_t)(i * 7);
  size_t off = 0, step = 1;
  while (off < sizeof in) {
    size_t n = step < sizeof in - off ? step : sizeof in - off;
    assert_int_equal(tunnel__bufq_append(&q, in + off, n), 0);
    off += n;
    step = step * 3 % 97 + 1;
  }
  assert_int_equal(q.size, sizeof in);
  assert_int_equal(drain(&q, out, 8), sizeof in);
  assert_memory_equal(in, out, sizeof in);
  tunnel__bufq_free(&q);
}

static void queued_bytes_do_not_move_on_append(void **state) {
  (void)state;
  tunnel__bufq q;
  tunnel__bufq_init(&q, tunnel__mem_default(), 64);
  assert_int_equal(tunnel__bufq_append(&q, "abcdef", 6), 0);
  tunnel__iov before;
  assert_int_equal(tunnel__bufq_iov(&q, &before, 1), 1);
  for (int i = 0; i < 100; i++)
    assert_int_equal(tunnel__bufq_append(&q, "0123456789", 10), 0);
  tunnel__iov after;
  tunnel__bufq_iov(&q, &after, 1);
  assert_ptr_equal(before.base, after.base);
  assert_memory_equal(after.base, "abcdef", 6);
  tunnel__bufq_consume(&q, q.size);
  assert_int_equal(q.size, 0);
  assert_int_equal(tunnel__bufq_iov(&q, &after, 1), 0);
  /* Reuse after a full drain. */
  assert_int_equal(tunnel__bufq_append(&q, "xy", 2), 0);
  tunnel__bufq_iov(&q, &after, 1);
  assert_int_equal(after.len, 2);
  tunnel__bufq_free(&q);
}

static int fail_after;
static void *counting_malloc(size_t n, void *ud) {
  (void)ud;
  if (fail_after-- <= 0)
    return NULL;
  return test_malloc(n);
}
static void *counting_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return test_realloc(p, n);
}
static void counting_free(void *p, void *ud) {
  (void)ud;
  test_free(p);
}

static void oom_leaves_queue_unchanged(void **state) {
  (void)state;
  tunnel__mem m = {counting_malloc, counting_realloc, counting_free, NULL};
  tunnel__bufq q;
  tunnel__bufq_init(&q, &m, 8);
  fail_after = 1;
  assert_int_equal(tunnel__bufq_append(&q, "12345678", 8), 0);
  assert_int_equal(tunnel__bufq_append(&q, "abc", 3), TUNNEL_ENOMEM);
  assert_int_equal(q.size, 8);
  uint8_t out[16];
  assert_int_equal(drain(&q, out, 1), 8);
  assert_memory_equal(out, "12345678", 8);
  tunnel__bufq_free(&q);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fifo_order_across_chunks),
      cmocka_unit_test(queued_bytes_do_not_move_on_append),
      cmocka_unit_test(oom_leaves_queue_unchanged),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
