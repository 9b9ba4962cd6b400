/* The TLS engine's lent input (read in place, kept on demand) and the TLS
 * link over a socket pair: a resumed client's Finished leaves with its
 * first message, and a reader that stops mid-read loses nothing. The
 * link's peer is an engine the test drives by hand over a SOCK_SEQPACKET
 * pair, so every write the link makes arrives as one message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "tls.h"
#include "uv/link.h"
#include "uv/sched.h"

/* ------------------------------------------------------------- helpers */

/* libc underneath; `fail_next` makes the next allocation fail. */
static int fail_next;
static void *t_malloc(size_t n, void *ud) {
  (void)ud;
  if (fail_next) {
    fail_next = 0;
    return NULL;
  }
  return malloc(n);
}
static void *t_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (fail_next) {
    fail_next = 0;
    return NULL;
  }
  return realloc(p, n);
}
static void t_free(void *p, void *ud) {
  (void)ud;
  free(p);
}
static const tunnel__mem tmem = {t_malloc, t_realloc, t_free, NULL};

static int entropy(void *ud, uint8_t *out, size_t n) {
  uint64_t *s = ud;
  for (size_t i = 0; i < n; i++) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    out[i] = (uint8_t)(*s >> 24);
  }
  return 0;
}
static uint64_t ent_state = 0x2545f4914f6cdd1dull;

/* A self-signed server and a client pinning its certificate, made once. */
static tunnel__tls_conf *sconf, *cconf;

static int group_setup(void **state) {
  (void)state;
  tunnel__tls_settings s;
  memset(&s, 0, sizeof s);
  tunnel__tls_conf_params p = {0};
  p.is_server = 1;
  p.mem = &tmem;
  p.entropy = entropy;
  p.entropy_ud = &ent_state;
  p.settings = &s;
  p.now_s = (uint64_t)time(NULL);
  char err[200];
  if (tunnel__tls_conf_new(&sconf, &p, err, sizeof err) != 0)
    return -1;
  s.has_pin = 1;
  if (tunnel__tls_conf_fingerprint(sconf, s.pin) != 0)
    return -1;
  p.is_server = 0;
  return tunnel__tls_conf_new(&cconf, &p, err, sizeof err) == 0 ? 0 : -1;
}
static int group_teardown(void **state) {
  (void)state;
  tunnel__tls_conf_free(cconf);
  tunnel__tls_conf_free(sconf);
  return 0;
}

/* Takes everything `from` has queued, in one buffer (caller frees). */
static uint8_t *take_out(tunnel__tls *from, size_t *n) {
  *n = tunnel__tls_out_pending(from);
  uint8_t *b = malloc(*n ? *n : 1);
  assert_non_null(b);
  size_t off = 0;
  while (tunnel__tls_out_pending(from)) {
    tunnel__iov v;
    assert_int_equal(tunnel__tls_out_iov(from, &v, 1), 1);
    memcpy(b + off, v.base, v.len);
    off += v.len;
    tunnel__tls_out_consume(from, v.len);
  }
  return b;
}

/* Hands `from`'s output to `to` lent, in pieces of `step` bytes (0: at
 * once), keeping each piece and scribbling over it afterwards: the engine
 * must not read a loan once kept. */
static void lend_all(tunnel__tls *from, tunnel__tls *to, size_t step) {
  size_t n;
  uint8_t *b = take_out(from, &n);
  for (size_t off = 0; off < n;) {
    size_t k = step && step < n - off ? step : n - off;
    assert_int_equal(tunnel__tls_feed_lend(to, b + off, k), 0);
    if (!tunnel__tls_is_established(to))
      (void)tunnel__tls_handshake(to);
    assert_int_equal(tunnel__tls_feed_keep(to), 0);
    memset(b + off, 0xA5, k);
    off += k;
  }
  free(b);
}

static void handshake(tunnel__tls *c, tunnel__tls *s, size_t step) {
  int rc_c = TUNNEL_EAGAIN, rc_s = TUNNEL_EAGAIN;
  for (int i = 0; i < 20 && (rc_c || rc_s); i++) {
    if (rc_c)
      rc_c = tunnel__tls_handshake(c);
    lend_all(c, s, step);
    if (rc_s)
      rc_s = tunnel__tls_handshake(s);
    lend_all(s, c, step);
  }
  assert_int_equal(rc_c, 0);
  assert_int_equal(rc_s, 0);
}

/* A full handshake whose session the client conf keeps. */
static void save_a_session(void) {
  tunnel__tls *c, *s;
  assert_int_equal(tunnel__tls_new(&c, cconf, NULL), 0);
  assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
  handshake(c, s, 0);
  assert_int_equal(tunnel__tls_save_session(c), 0);
  tunnel__tls_free(c);
  tunnel__tls_free(s);
}

static void fill(uint8_t *p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (uint8_t)(seed >> 16);
  }
}

static void write_all(tunnel__tls *t, const uint8_t *p, size_t n) {
  size_t taken;
  assert_int_equal(tunnel__tls_write(t, p, n, &taken), 0);
  assert_int_equal(taken, n);
}

/* Reads whatever `t` can decrypt now into `out` (at most cap bytes). */
static size_t read_now(tunnel__tls *t, uint8_t *out, size_t cap) {
  size_t got = 0;
  while (got < cap) {
    size_t n = 0;
    assert_int_equal(tunnel__tls_read(t, out + got, cap - got, &n), 0);
    if (!n)
      break;
    got += n;
  }
  return got;
}

/* --------------------------------------------------------- engine tests */

/* Handshakes and data through loans alone, whole and in small pieces. */
static void lend_handshake_and_data(void **state) {
  (void)state;
  static const size_t steps[] = {0, 1, 7, 300};
  static uint8_t msg[50000], got[50000];
  fill(msg, sizeof msg, 1);
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    tunnel__tls *c, *s;
    assert_int_equal(tunnel__tls_new(&c, cconf, NULL), 0);
    assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
    handshake(c, s, steps[i]);
    write_all(s, msg, sizeof msg);
    size_t n;
    uint8_t *b = take_out(s, &n);
    size_t have = 0;
    for (size_t off = 0; off < n;) {
      size_t k = steps[i] && steps[i] < n - off ? steps[i] : n - off;
      assert_int_equal(tunnel__tls_feed_lend(c, b + off, k), 0);
      have += read_now(c, got + have, sizeof got - have);
      assert_int_equal(tunnel__tls_feed_keep(c), 0);
      memset(b + off, 0xA5, k);
      off += k;
    }
    free(b);
    assert_int_equal(have, sizeof msg);
    assert_memory_equal(got, msg, sizeof msg);
    tunnel__tls_free(c);
    tunnel__tls_free(s);
  }
}

/* A loan read in part: the rest is kept (the loan's memory may then
 * change), and input fed or lent later comes after it. */
static void lend_partial_then_more(void **state) {
  (void)state;
  tunnel__tls *c, *s;
  assert_int_equal(tunnel__tls_new(&c, cconf, NULL), 0);
  assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
  handshake(c, s, 0);
  uint8_t rec[4][1000], got[1000];
  for (int i = 0; i < 4; i++)
    fill(rec[i], sizeof rec[i], 100u + (uint32_t)i);
  /* Three records in one loan; one read takes one record. */
  for (int i = 0; i < 3; i++)
    write_all(s, rec[i], sizeof rec[i]);
  size_t n1;
  uint8_t *b1 = take_out(s, &n1);
  assert_int_equal(tunnel__tls_feed_lend(c, b1, n1), 0);
  size_t n = 0;
  assert_int_equal(tunnel__tls_read(c, got, sizeof got, &n), 0);
  assert_int_equal(n, 1000);
  assert_memory_equal(got, rec[0], 1000);
  /* A second loan keeps the first's rest first. */
  write_all(s, rec[3], sizeof rec[3]);
  size_t n2;
  uint8_t *b2 = take_out(s, &n2);
  assert_int_equal(tunnel__tls_feed_lend(c, b2, n2 - 10), 0);
  memset(b1, 0xA5, n1);
  assert_int_equal(tunnel__tls_read(c, got, sizeof got, &n), 0);
  assert_int_equal(n, 1000);
  assert_memory_equal(got, rec[1], 1000);
  /* A feed keeps the second loan first; its last bytes complete it. */
  assert_int_equal(tunnel__tls_feed(c, b2 + n2 - 10, 10), 0);
  memset(b2, 0xA5, n2);
  assert_int_equal(tunnel__tls_read(c, got, sizeof got, &n), 0);
  assert_int_equal(n, 1000);
  assert_memory_equal(got, rec[2], 1000);
  assert_int_equal(tunnel__tls_read(c, got, sizeof got, &n), 0);
  assert_int_equal(n, 1000);
  assert_memory_equal(got, rec[3], 1000);
  assert_int_equal(tunnel__tls_read(c, got, sizeof got, &n), 0);
  assert_int_equal(n, 0);
  /* Keeping without a loan does nothing. */
  assert_int_equal(tunnel__tls_feed_keep(c), 0);
  free(b1);
  free(b2);
  tunnel__tls_free(c);
  tunnel__tls_free(s);
}

/* Lent bytes count against the handshake's input bound, with those
 * held. */
static void lend_bound(void **state) {
  (void)state;
  enum { M = TUNNEL__TLS_HANDSHAKE_INPUT_MAX };
  static uint8_t junk[M + 1];
  tunnel__tls *s;
  assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
  assert_int_equal(tunnel__tls_feed_lend(s, junk, M + 1), TUNNEL_ELIMIT);
  assert_int_equal(tunnel__tls_feed_keep(s), TUNNEL_ELIMIT); /* sticky */
  tunnel__tls_free(s);
  /* Held and lent add up: M bytes pass, one more does not. */
  assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
  assert_int_equal(tunnel__tls_feed(s, junk, M - 100), 0);
  assert_int_equal(tunnel__tls_feed_lend(s, junk, 99), 0);
  assert_int_equal(tunnel__tls_feed_lend(s, junk, 1), 0);
  assert_int_equal(tunnel__tls_feed_lend(s, junk, 1), TUNNEL_ELIMIT);
  tunnel__tls_free(s);
  assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
  assert_int_equal(tunnel__tls_feed_lend(s, junk, M), 0);
  assert_int_equal(tunnel__tls_feed(s, junk, 1), TUNNEL_ELIMIT);
  tunnel__tls_free(s);
}

/* Keeping needs memory; without it the stream is broken for good. */
static void lend_keep_out_of_memory(void **state) {
  (void)state;
  tunnel__tls *c, *s;
  assert_int_equal(tunnel__tls_new(&c, cconf, NULL), 0);
  assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
  handshake(c, s, 0);
  uint8_t a[3000], got[3000];
  fill(a, sizeof a, 7);
  write_all(s, a, 1000);
  write_all(s, a + 1000, 2000);
  size_t n;
  uint8_t *b = take_out(s, &n);
  assert_int_equal(tunnel__tls_feed_lend(c, b, n), 0);
  size_t k = 0;
  assert_int_equal(tunnel__tls_read(c, got, sizeof got, &k), 0);
  assert_int_equal(k, 1000);
  fail_next = 1;
  assert_int_equal(tunnel__tls_feed_keep(c), TUNNEL_ENOMEM);
  fail_next = 0;
  assert_int_equal(tunnel__tls_read(c, got, sizeof got, &k), TUNNEL_ENOMEM);
  assert_int_equal(tunnel__tls_feed(c, b, 1), TUNNEL_ENOMEM);
  assert_string_equal(tunnel__tls_error_text(c), "out of memory");
  free(b);
  tunnel__tls_free(c);
  tunnel__tls_free(s);
}

/* A resumed client keeps the saved session and resumes again. */
static void resumed_keeps_session(void **state) {
  (void)state;
  save_a_session();
  for (int i = 0; i < 3; i++) {
    tunnel__tls *c, *s;
    assert_int_equal(tunnel__tls_new(&c, cconf, NULL), 0);
    assert_int_equal(tunnel__tls_new(&s, sconf, NULL), 0);
    handshake(c, s, 0);
    assert_int_equal(tunnel__tls_resumed(c), 1);
    assert_int_equal(tunnel__tls_resumed(s), 1);
    assert_int_equal(tunnel__tls_save_session(c), 0);
    assert_int_equal(tunnel__tls_save_session(s), TUNNEL_ESTATE);
    tunnel__tls_free(c);
    tunnel__tls_free(s);
  }
}

/* ----------------------------------------------------------- link tests */

typedef struct fixture {
  uv_loop_t loop;
  tunnel__sched sched;
  int fd;             /* the test's end of the pair */
  tunnel__link *link; /* over the other end */
  tunnel__tls *peer;  /* the server engine behind `fd` */
  uint8_t *got;       /* what the link delivered */
  size_t got_len, got_cap;
  size_t stop_after; /* the reader stops once this much arrived (0: never) */
  int status;        /* first non-zero read status */
  int writes_done, write_status;
  int closed;
} fixture;

static void fx_open(fixture *f) {
  memset(f, 0, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(tunnel__sched_init(&f->sched, &f->loop), 0);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  f->fd = sv[1];
  uv_tcp_t *tcp = tunnel__malloc(&tmem, sizeof *tcp);
  assert_non_null(tcp);
  assert_int_equal(uv_tcp_init(&f->loop, tcp), 0);
  assert_int_equal(uv_tcp_open(tcp, sv[0]), 0);
  tunnel__tls *t;
  assert_int_equal(tunnel__tls_new(&t, cconf, NULL), 0);
  assert_int_equal(
      tunnel__link_new_tls(&f->link, &f->sched, &tmem, tcp, t, 0, NULL, 0), 0);
  assert_int_equal(tunnel__tls_new(&f->peer, sconf, NULL), 0);
  f->got_cap = 1 << 20;
  f->got = malloc(f->got_cap);
  assert_non_null(f->got);
}

static void closed_cb(tunnel__link *l, int status, void *ud) {
  (void)l;
  (void)status;
  ((fixture *)ud)->closed = 1;
}
static void sched_closed(uv_handle_t *h) { (void)h; }

static void fx_close(fixture *f) {
  tunnel__link_close(f->link, 0, closed_cb, f);
  while (!f->closed)
    uv_run(&f->loop, UV_RUN_ONCE);
  tunnel__sched_close(&f->sched, sched_closed);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  close(f->fd);
  tunnel__tls_free(f->peer);
  free(f->got);
}

/* Runs the loop until the link wrote a message; returns it (caller
 * frees). */
static uint8_t *next_message(fixture *f, size_t *n) {
  static uint8_t buf[1 << 17];
  for (int i = 0; i < 2000; i++) {
    uv_run(&f->loop, UV_RUN_NOWAIT);
    struct pollfd p = {f->fd, POLLIN, 0};
    if (poll(&p, 1, 1) == 1) {
      ssize_t r = recv(f->fd, buf, sizeof buf, 0);
      assert_true(r > 0);
      uint8_t *m = malloc((size_t)r);
      assert_non_null(m);
      memcpy(m, buf, (size_t)r);
      *n = (size_t)r;
      return m;
    }
  }
  fail_msg("the link wrote nothing");
  return NULL;
}

/* Sends what the peer engine queued, in messages of at most `max`. */
static void peer_send(fixture *f, size_t max) {
  size_t n;
  uint8_t *b = take_out(f->peer, &n);
  for (size_t off = 0; off < n;) {
    size_t k = n - off < max ? n - off : max;
    assert_int_equal(send(f->fd, b + off, k, 0), (ssize_t)k);
    off += k;
  }
  free(b);
}

static void on_read(tunnel__link *l, int status, const uint8_t *data,
                    size_t n, void *ud) {
  fixture *f = ud;
  if (status) {
    if (!f->status)
      f->status = status;
    return;
  }
  assert_true(f->got_len + n <= f->got_cap);
  memcpy(f->got + f->got_len, data, n);
  f->got_len += n;
  if (f->stop_after && f->got_len >= f->stop_after)
    tunnel__link_read_stop(l);
}

static void on_write(tunnel__link_wreq *req, int status) {
  fixture *f = req->data;
  f->writes_done++;
  if (status && !f->write_status)
    f->write_status = status;
}

/* Plays the server's side of the handshake; returns the client's last
 * flight (caller frees). */
static uint8_t *peer_handshake(fixture *f, size_t *n) {
  size_t hello_len;
  uint8_t *hello = next_message(f, &hello_len);
  assert_int_equal(tunnel__tls_feed(f->peer, hello, hello_len), 0);
  free(hello);
  assert_int_equal(tunnel__tls_handshake(f->peer), TUNNEL_EAGAIN);
  peer_send(f, 1 << 16);
  return next_message(f, n);
}

/* A resumed client's Finished and the message written before the
 * handshake ended leave in one write. */
static void link_finished_with_first_write(void **state) {
  (void)state;
  save_a_session();
  fixture f;
  fx_open(&f);
  static const char hello[] = "NewWorkConn, say";
  tunnel__link_wreq req;
  memset(&req, 0, sizeof req);
  req.data = &f;
  uv_buf_t b = uv_buf_init((char *)hello, sizeof hello);
  assert_int_equal(tunnel__link_write(&req, f.link, &b, 1, on_write), 0);
  size_t n;
  uint8_t *last = peer_handshake(&f, &n);
  assert_int_equal(tunnel__tls_feed(f.peer, last, n), 0);
  free(last);
  assert_int_equal(tunnel__tls_handshake(f.peer), 0);
  assert_int_equal(tunnel__tls_resumed(f.peer), 1);
  uint8_t got[64];
  assert_int_equal(read_now(f.peer, got, sizeof got), sizeof hello);
  assert_memory_equal(got, hello, sizeof hello);
  for (int i = 0; i < 100 && !f.writes_done; i++)
    uv_run(&f.loop, UV_RUN_NOWAIT);
  assert_int_equal(f.writes_done, 1);
  assert_int_equal(f.write_status, 0);
  fx_close(&f);
}

/* Records that arrive while the owner has stopped reading stay in the
 * engine (the read buffer is reused meanwhile) and come out in order
 * once it reads again. */
static void link_stalled_reader(void **state) {
  (void)state;
  fixture f;
  fx_open(&f);
  size_t n;
  uint8_t *last = peer_handshake(&f, &n);
  assert_int_equal(tunnel__tls_feed(f.peer, last, n), 0);
  free(last);
  assert_int_equal(tunnel__tls_handshake(f.peer), 0);
  peer_send(&f, 1 << 16); /* the server's Finished, after a full one */
  /* Less than the pair's socket buffer holds: the test's sends block. */
  static uint8_t data[120000];
  fill(data, sizeof data, 42);
  /* Records of 1 to 16 KiB, sent several to a message. */
  for (size_t off = 0, k = 1; off < sizeof data; off += k, k = k * 7 % 16384 + 1) {
    if (k > sizeof data - off)
      k = sizeof data - off;
    write_all(f.peer, data + off, k);
  }
  peer_send(&f, 40000);
  f.stop_after = 1;
  tunnel__link_read_start(f.link, on_read, &f);
  for (int i = 0; i < 50; i++)
    uv_run(&f.loop, UV_RUN_NOWAIT);
  assert_true(f.got_len > 0 && f.got_len < sizeof data);
  /* More arrives while nobody reads. */
  write_all(f.peer, data, 1000);
  peer_send(&f, 1 << 16);
  for (int i = 0; i < 50; i++)
    uv_run(&f.loop, UV_RUN_NOWAIT);
  size_t stalled = f.got_len;
  f.stop_after = 0;
  tunnel__link_read_start(f.link, on_read, &f);
  for (int i = 0; i < 5000 && f.got_len < sizeof data + 1000; i++) {
    uv_run(&f.loop, UV_RUN_NOWAIT);
    if (f.got_len == stalled)
      poll(NULL, 0, 1);
  }
  assert_int_equal(f.status, 0);
  assert_int_equal(f.got_len, sizeof data + 1000);
  assert_memory_equal(f.got, data, sizeof data);
  assert_memory_equal(f.got + sizeof data, data, 1000);
  fx_close(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(lend_handshake_and_data),
      cmocka_unit_test(lend_partial_then_more),
      cmocka_unit_test(lend_bound),
      cmocka_unit_test(lend_keep_out_of_memory),
      cmocka_unit_test(resumed_keeps_session),
      cmocka_unit_test(link_finished_with_first_write),
      cmocka_unit_test(link_stalled_reader),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
