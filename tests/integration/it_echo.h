/* A TCP echo service for the integration tests, on 127.0.0.1: every byte
 * comes back; the peer's end (EOF) is passed on with a half-close once the
 * echoes queued before it are written, and the connection closes when
 * that is done or on any error. Reading pauses while too much is queued,
 * so a peer that does not read holds the echo's memory bounded. Include
 * <cmocka.h> first. Everything is static inline so that each test program
 * uses what it needs without unused-function warnings. */
#ifndef TUNNEL_TESTS_IT_ECHO_H
#define TUNNEL_TESTS_IT_ECHO_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "it_common.h"

typedef struct it_echo it_echo;

typedef struct it_echo_conn {
  uv_tcp_t tcp;
  uv_shutdown_t shut;
  it_echo *echo;
  struct it_echo_conn *next, *prev;
  size_t queued; /* echoed bytes not yet written */
  int paused, eof;
} it_echo_conn;

struct it_echo {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uint16_t port; /* kept after a close: it_echo_listen(e, e->port) reopens */
  int listening; /* from the listen until the listener's close callback */
  /* Reading stops once more than `pause_above` bytes are queued and
   * resumes below `resume_below`: (0, 1) keeps one write in flight. */
  size_t pause_above, resume_below;
  it_echo_conn *conns; /* open (or closing) connections */
  int nconns;
};

typedef struct it_echo_write {
  uv_write_t req;
  it_echo_conn *c;
  size_t n;
  char data[];
} it_echo_write;

static inline void it_echo_init(it_echo *e, uv_loop_t *loop) {
  memset(e, 0, sizeof *e);
  e->loop = loop;
  e->pause_above = 4u << 20;
  e->resume_below = 1u << 20;
}

static inline void it_echo_set_window(it_echo *e, size_t pause_above,
                                      size_t resume_below) {
  e->pause_above = pause_above;
  e->resume_below = resume_below;
}

static inline void it_echo_conn_closed(uv_handle_t *h) {
  it_echo_conn *c = h->data;
  it_echo *e = c->echo;
  if (c->prev)
    c->prev->next = c->next;
  else
    e->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  e->nconns--;
  free(c);
}

static inline void it_echo_conn_close(it_echo_conn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, it_echo_conn_closed);
}

static inline void it_echo_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  /* Every read is copied into its write at once: one buffer serves all. */
  static char buf[256 * 1024];
  (void)h, (void)hint;
  *b = uv_buf_init(buf, sizeof buf);
}

static inline void it_echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static inline void it_echo_written(uv_write_t *r, int status) {
  it_echo_write *w = (it_echo_write *)r;
  it_echo_conn *c = w->c;
  c->queued -= w->n;
  free(w);
  if (status < 0) {
    it_echo_conn_close(c);
    return;
  }
  if (c->paused && c->queued < c->echo->resume_below &&
      !uv_is_closing((uv_handle_t *)&c->tcp)) {
    c->paused = 0;
    if (uv_read_start((uv_stream_t *)&c->tcp, it_echo_alloc, it_echo_read))
      it_echo_conn_close(c);
  }
}

static inline void it_echo_shut(uv_shutdown_t *r, int status) {
  (void)status;
  it_echo_conn_close(r->data);
}

static inline void it_echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  it_echo_conn *c = s->data;
  if (n == UV_EOF && !c->eof) {
    /* libuv runs the shutdown after the writes queued before it. */
    c->eof = 1;
    uv_read_stop(s);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, s, it_echo_shut) != 0)
      it_echo_conn_close(c);
    return;
  }
  if (n < 0) {
    it_echo_conn_close(c);
    return;
  }
  if (n == 0)
    return;
  it_echo_write *w = malloc(sizeof *w + (size_t)n);
  assert_non_null(w);
  w->c = c;
  w->n = (size_t)n;
  memcpy(w->data, b->base, (size_t)n);
  uv_buf_t out = uv_buf_init(w->data, (unsigned)n);
  if (uv_write(&w->req, s, &out, 1, it_echo_written) != 0) {
    free(w);
    it_echo_conn_close(c);
    return;
  }
  c->queued += (size_t)n;
  if (c->queued > c->echo->pause_above) {
    c->paused = 1;
    uv_read_stop(s);
  }
}

static inline void it_echo_accept(uv_stream_t *l, int status) {
  it_echo *e = l->data;
  if (status < 0)
    return;
  it_echo_conn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->echo = e;
  uv_tcp_init(e->loop, &c->tcp);
  c->tcp.data = c;
  c->next = e->conns;
  if (e->conns)
    e->conns->prev = c;
  e->conns = c;
  e->nconns++;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, it_echo_alloc, it_echo_read) != 0)
    it_echo_conn_close(c);
}

/* Listens on 127.0.0.1:port (0: a port of the kernel's choice); returns
 * the port, also in e->port. */
static inline uint16_t it_echo_listen(it_echo *e, uint16_t port) {
  assert_false(e->listening);
  uv_tcp_init(e->loop, &e->listener);
  e->listener.data = e;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  assert_int_equal(uv_tcp_bind(&e->listener, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&e->listener, 128, it_echo_accept),
                   0);
  int len = sizeof a;
  assert_int_equal(
      uv_tcp_getsockname(&e->listener, (struct sockaddr *)&a, &len), 0);
  e->port = ntohs(a.sin_port);
  e->listening = 1;
  return e->port;
}

static inline void it_echo_listener_closed(uv_handle_t *h) {
  ((it_echo *)h->data)->listening = 0;
}

/* Closes the listener and every connection, and runs the loop until all of
 * them are gone (within IT_WAIT_MS): nothing of the echo keeps the loop
 * alive afterwards. */
static inline void it_echo_close(it_echo *e, it_waiter *w) {
  if (e->listening && !uv_is_closing((uv_handle_t *)&e->listener))
    uv_close((uv_handle_t *)&e->listener, it_echo_listener_closed);
  for (it_echo_conn *c = e->conns; c; c = c->next)
    it_echo_conn_close(c);
  IT_WAIT(w, !e->listening && e->nconns == 0, IT_WAIT_MS);
}

#endif
