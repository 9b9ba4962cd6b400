/* yamux session core: two sessions wired back to back in memory, and raw
 * frames scripted in and checked out. No sockets, no clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wire.h"
#include "yamux.h"

/* ------------------------------------------------------------ harness */

#define MAX_EV 256

typedef struct peer {
  tunnel__ymx *s;
  int auto_consume;
  int refuse;
  uint32_t accepted[MAX_EV];
  int naccepted;
  uint8_t data[1 << 20];
  size_t ndata;
  int fins, rsts, closes, acks, windows, goaways;
  uint32_t last_goaway;
  uint32_t pings[MAX_EV];
  int npings;
} peer;

static int cb_stream(tunnel__ymx *s, uint32_t id, void **su, void *ud) {
  peer *p = ud;
  (void)s;
  (void)su;
  if (p->refuse)
    return TUNNEL_EREFUSED;
  p->accepted[p->naccepted++] = id;
  return 0;
}
static void cb_ack(tunnel__ymx *s, uint32_t id, void *su, void *ud) {
  (void)s, (void)id, (void)su;
  ((peer *)ud)->acks++;
}
static void cb_data(tunnel__ymx *s, uint32_t id, void *su, const uint8_t *d,
                    size_t n, void *ud) {
  peer *p = ud;
  (void)su;
  assert_true(p->ndata + n <= sizeof p->data);
  memcpy(p->data + p->ndata, d, n);
  p->ndata += n;
  if (p->auto_consume)
    assert_int_equal(tunnel__ymx_consumed(s, id, n), 0);
}
static void cb_fin(tunnel__ymx *s, uint32_t id, void *su, void *ud) {
  (void)s, (void)id, (void)su;
  ((peer *)ud)->fins++;
}
static void cb_rst(tunnel__ymx *s, uint32_t id, void *su, void *ud) {
  (void)s, (void)id, (void)su;
  ((peer *)ud)->rsts++;
}
static void cb_window(tunnel__ymx *s, uint32_t id, void *su, void *ud) {
  (void)s, (void)id, (void)su;
  ((peer *)ud)->windows++;
}
static void cb_close(tunnel__ymx *s, uint32_t id, void *su, void *ud) {
  (void)s, (void)id, (void)su;
  ((peer *)ud)->closes++;
}
static void cb_ping(tunnel__ymx *s, uint32_t opaque, void *ud) {
  peer *p = ud;
  (void)s;
  p->pings[p->npings++] = opaque;
}
static void cb_goaway(tunnel__ymx *s, uint32_t code, void *ud) {
  peer *p = ud;
  (void)s;
  p->goaways++;
  p->last_goaway = code;
}

static const tunnel__ymx_callbacks callbacks = {
    cb_stream, cb_ack, cb_data, cb_fin, cb_rst, cb_window, cb_close, cb_ping,
    cb_goaway};

static peer *peer_new(int is_client, uint32_t window, uint32_t max_streams) {
  peer *p = calloc(1, sizeof *p);
  assert_non_null(p);
  p->auto_consume = 1;
  tunnel__ymx_config cfg = {is_client, max_streams, window, 4096, NULL, NULL};
  assert_int_equal(tunnel__ymx_new(&p->s, &cfg, &callbacks, p), 0);
  return p;
}

static void peer_free(peer *p) {
  tunnel__ymx_free(p->s);
  free(p);
}

/* Moves everything `from` has queued into `to`. */
static int pump_one(peer *from, peer *to) {
  int moved = 0;
  while (tunnel__ymx_out_pending(from->s)) {
    tunnel__iov iov[16];
    size_t n = tunnel__ymx_out_iov(from->s, iov, 16);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
      int rc = tunnel__ymx_recv(to->s, iov[i].base, iov[i].len);
      total += iov[i].len;
      if (rc) {
        tunnel__ymx_out_consume(from->s, total);
        return rc;
      }
    }
    tunnel__ymx_out_consume(from->s, total);
    moved = 1;
  }
  return moved;
}

static void pump(peer *a, peer *b) {
  for (int i = 0; i < 100; i++) {
    int x = pump_one(a, b), y = pump_one(b, a);
    assert_true(x >= 0 && y >= 0);
    if (!x && !y)
      return;
  }
  fail_msg("sessions did not settle");
}

/* Takes what `p` has queued as one flat byte string. */
static size_t take_out(peer *p, uint8_t *buf, size_t max) {
  size_t n = 0;
  while (tunnel__ymx_out_pending(p->s)) {
    tunnel__iov iov;
    tunnel__ymx_out_iov(p->s, &iov, 1);
    assert_true(n + iov.len <= max);
    memcpy(buf + n, iov.base, iov.len);
    n += iov.len;
    tunnel__ymx_out_consume(p->s, iov.len);
  }
  return n;
}

static void hdr(uint8_t *h, uint8_t type, uint16_t flags, uint32_t id,
                uint32_t len) {
  h[0] = 0;
  h[1] = type;
  tunnel__put16(h + 2, flags);
  tunnel__put32(h + 4, id);
  tunnel__put32(h + 8, len);
}

static void expect_frame(const uint8_t *h, uint8_t type, uint16_t flags,
                         uint32_t id, uint32_t len) {
  assert_int_equal(h[0], 0);
  assert_int_equal(h[1], type);
  assert_int_equal(tunnel__be16(h + 2), flags);
  assert_int_equal(tunnel__be32(h + 4), id);
  assert_int_equal(tunnel__be32(h + 8), len);
}

/* -------------------------------------------------------------- tests */

static void open_write_fin_both_ways(void **state) {
  (void)state;
  peer *c = peer_new(1, 1u << 20, 16), *s = peer_new(0, 1u << 20, 16);
  uint32_t id;
  assert_int_equal(tunnel__ymx_open(c->s, NULL, &id), 0);
  assert_int_equal(id, 1);
  size_t w;
  assert_int_equal(tunnel__ymx_write(c->s, id, (const uint8_t *)"ping", 4, &w),
                   0);
  assert_int_equal(w, 4);
  pump(c, s);
  assert_int_equal(s->naccepted, 1);
  assert_int_equal(s->accepted[0], 1);
  assert_int_equal(c->acks, 1);
  assert_int_equal(s->ndata, 4);
  assert_memory_equal(s->data, "ping", 4);
  assert_int_equal(tunnel__ymx_write(s->s, id, (const uint8_t *)"pong", 4, &w),
                   0);
  assert_int_equal(tunnel__ymx_shutdown(s->s, id), 0);
  pump(c, s);
  assert_memory_equal(c->data, "pong", 4);
  assert_int_equal(c->fins, 1);
  assert_int_equal(tunnel__ymx_shutdown(c->s, id), 1);
  assert_int_equal(tunnel__ymx_stream_count(c->s), 0);
  pump(c, s);
  assert_int_equal(s->fins, 1);
  assert_int_equal(s->closes, 1);
  assert_int_equal(tunnel__ymx_stream_count(s->s), 0);
  peer_free(c);
  peer_free(s);
}

static void bad_version_answered_with_goaway(void **state) {
  (void)state;
  peer *s = peer_new(0, 1u << 20, 16);
  uint8_t h[12], out[64];
  hdr(h, TUNNEL__YMX_PING, TUNNEL__YMX_SYN, 0, 1);
  h[0] = 1;
  assert_int_equal(tunnel__ymx_recv(s->s, h, sizeof h), TUNNEL_EPROTO);
  assert_int_equal(take_out(s, out, sizeof out), 12);
  expect_frame(out, TUNNEL__YMX_GOAWAY, 0, 0, TUNNEL__YMX_GOAWAY_PROTOCOL);
  /* Sticky: nothing more is processed. */
  hdr(h, TUNNEL__YMX_PING, TUNNEL__YMX_SYN, 0, 1);
  assert_int_equal(tunnel__ymx_recv(s->s, h, sizeof h), TUNNEL_EPROTO);
  assert_int_equal(tunnel__ymx_out_pending(s->s), 0);
  peer_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(open_write_fin_both_ways),
      cmocka_unit_test(bad_version_answered_with_goaway),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
