/* Helpers for the hostile-input integration tests: a deterministic PRNG, a
 * byte builder for hand-made yamux frames and frp messages, a scanner for
 * the yamux frames a server sends back, and "attackers": raw libuv TCP
 * connections that send chosen bytes and record what happens to them.
 * Everything is static inline (see it_common.h). Include <cmocka.h> first. */
#ifndef TUNNEL_TESTS_IT_HOSTILE_H
#define TUNNEL_TESTS_IT_HOSTILE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "it_common.h"

/* ----------------------------------------------------------------- PRNG */

/* splitmix64: fixed seeds give the same "random" attack on every run. */
typedef struct it_rng {
  uint64_t s;
} it_rng;

static inline uint64_t it_rng_next(it_rng *r) {
  uint64_t x = (r->s += 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static inline void it_rng_fill(it_rng *r, uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)it_rng_next(r);
}

/* --------------------------------------------------------- byte builder */

typedef struct it_buf {
  uint8_t *p;
  size_t len, cap;
} it_buf;

static inline void it_buf_reserve(it_buf *b, size_t more) {
  if (b->len + more <= b->cap)
    return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + more)
    cap *= 2;
  uint8_t *p = realloc(b->p, cap);
  if (!p)
    abort(); /* test infrastructure: no sensible recovery */
  b->p = p;
  b->cap = cap;
}

static inline void it_buf_put(it_buf *b, const void *d, size_t n) {
  if (!n)
    return;
  it_buf_reserve(b, n);
  memcpy(b->p + b->len, d, n);
  b->len += n;
}

static inline void it_buf_str(it_buf *b, const char *s) {
  it_buf_put(b, s, strlen(s));
}

static inline void it_buf_rand(it_buf *b, it_rng *r, size_t n) {
  it_buf_reserve(b, n);
  it_rng_fill(r, b->p + b->len, n);
  b->len += n;
}

static inline void it_buf_free(it_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

static inline void it_put_be(uint8_t *p, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

static inline uint64_t it_get_be(const uint8_t *p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++)
    v = (v << 8) | p[i];
  return v;
}

/* yamux frame types and flags (docs/PROTOCOL.md section 2). */
enum { IT_YD = 0, IT_YW = 1, IT_YP = 2, IT_YG = 3 };
enum { IT_SYN = 1, IT_ACK = 2, IT_FIN = 4, IT_RST = 8 };

/* One yamux header, any field value (the point is to send bad ones). */
static inline void it_ymx(it_buf *b, uint8_t ver, uint8_t type,
                          uint16_t flags, uint32_t id, uint32_t len) {
  uint8_t h[12];
  h[0] = ver;
  h[1] = type;
  it_put_be(h + 2, flags, 2);
  it_put_be(h + 4, id, 4);
  it_put_be(h + 8, len, 4);
  it_buf_put(b, h, sizeof h);
}

/* A data frame carrying `n` bytes. */
static inline void it_ymx_data(it_buf *b, uint32_t id, uint16_t flags,
                               const void *d, size_t n) {
  it_ymx(b, 0, IT_YD, flags, id, (uint32_t)n);
  it_buf_put(b, d, n);
}

/* frp message header: type byte and a big-endian int64 length (any value,
 * negative ones included). */
static inline void it_frp_hdr(it_buf *b, uint8_t type, uint64_t len) {
  uint8_t h[9];
  h[0] = type;
  it_put_be(h + 1, len, 8);
  it_buf_put(b, h, sizeof h);
}

/* A whole frp message with a literal body. */
static inline void it_frp(it_buf *b, uint8_t type, const char *body) {
  it_frp_hdr(b, type, strlen(body));
  it_buf_str(b, body);
}

/* ------------------------------------------------ scanning server output */

#define IT_SCAN_IDS 32

/* What a server sent on a yamux connection. Data of the stream `want_id`
 * is collected into `data` (when given). */
typedef struct it_ymx_scan {
  int frames;
  int truncated; /* output ends inside a frame */
  int bad;       /* a frame no yamux peer may send (version, type) */
  int goaway;
  uint32_t goaway_code;
  int frames_after_goaway;
  int ping_acks;
  uint32_t ping_ack_value;
  uint32_t rst[IT_SCAN_IDS], ack[IT_SCAN_IDS], fin[IT_SCAN_IDS];
  int nrst, nack, nfin;
} it_ymx_scan;

static inline void it_scan_note(uint32_t *v, int *n, uint32_t id) {
  if (*n < IT_SCAN_IDS)
    v[(*n)++] = id;
}

static inline int it_scan_has(const uint32_t *v, int n, uint32_t id) {
  for (int i = 0; i < n; i++)
    if (v[i] == id)
      return 1;
  return 0;
}

static inline void it_ymx_scan_bytes(const uint8_t *p, size_t n,
                                     uint32_t want_id, it_buf *data,
                                     it_ymx_scan *s) {
  memset(s, 0, sizeof *s);
  size_t off = 0;
  while (off < n) {
    if (n - off < 12) {
      s->truncated = 1;
      return;
    }
    const uint8_t *h = p + off;
    uint8_t type = h[1];
    uint16_t flags = (uint16_t)it_get_be(h + 2, 2);
    uint32_t id = (uint32_t)it_get_be(h + 4, 4);
    uint32_t len = (uint32_t)it_get_be(h + 8, 4);
    off += 12;
    s->frames++;
    if (s->goaway)
      s->frames_after_goaway++;
    if (h[0] != 0 || type > IT_YG)
      s->bad++;
    if (type == IT_YD) {
      if (n - off < len) {
        s->truncated = 1;
        len = (uint32_t)(n - off);
      }
      if (data && id == want_id)
        it_buf_put(data, p + off, len);
      off += len;
    }
    if (type == IT_YP && (flags & IT_ACK)) {
      s->ping_acks++;
      s->ping_ack_value = len;
    }
    if (type == IT_YG) {
      s->goaway++;
      s->goaway_code = len;
    }
    if (type == IT_YD || type == IT_YW) {
      if (flags & IT_RST)
        it_scan_note(s->rst, &s->nrst, id);
      if (flags & IT_ACK)
        it_scan_note(s->ack, &s->nack, id);
      if (flags & IT_FIN)
        it_scan_note(s->fin, &s->nfin, id);
    }
  }
}

/* ------------------------------------------------------------- attackers */

/* A raw TCP connection to the server under attack. It sends `tx` once
 * connected, reads (and keeps up to IT_ATK_KEEP bytes of) whatever comes
 * back, and records when and how the server ended it. */
#define IT_ATK_KEEP (256u * 1024u)

typedef struct it_atk it_atk;

struct it_atk {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_timer_t timer;
  uv_loop_t *loop;
  it_atk *next; /* owner's list */
  const char *name;
  it_buf tx;    /* sent once connected */
  int hold_tx;  /* connect only; the test sends later */
  int reset_on_connect; /* connect, then abort with RST at once */
  int close_after_tx;   /* close as soon as tx has been written */
  int no_read;  /* never read: the server's replies pile up */
  /* flood: keep sending `flood_unit` until the connection fails, or, when
   * `flood_gen` is set, whatever it appends to `flood_chunk` at each call
   * (content that cannot repeat, such as an encrypted stream) */
  it_buf flood_unit;
  void (*flood_gen)(it_atk *a, it_buf *chunk);
  it_buf flood_chunk;
  uint64_t flood_max, flood_sent, flood_inflight;
  void *ud; /* the test's, for flood_gen */
  int connected, conn_status;
  uint64_t t_start, t_connect, t_sent, t_end; /* loop ms */
  it_buf rx;
  uint64_t rx_total;
  int eof, rerr, werr;
  unsigned writes_pending;
  /* ticks: write tick_unit periodically (keepalives, or probes after EOF);
   * with tick_bytewise, one byte of it per tick, then stop (a slow sender);
   * dead: a write failed, so the server's socket is gone */
  it_buf tick_unit;
  int tick_bytewise;
  size_t tick_pos;
  int ticking;
  uint64_t t_dead;
  int dead;
  int closing, handles_closed, closed;
  uint8_t rbuf[16384];
};

typedef struct it_atk_wreq {
  uv_write_t req;
  it_atk *a;
  size_t len;
  uint8_t data[];
} it_atk_wreq;

static inline uint64_t it_now(uv_loop_t *loop) {
  uv_update_time(loop);
  return uv_now(loop);
}

/* The server ended the connection (EOF, reset, or a failed write). */
static inline int it_atk_ended(const it_atk *a) {
  return a->eof || a->rerr || a->werr;
}

static inline void it_atk_handle_closed(uv_handle_t *h) {
  it_atk *a = h->data;
  if (++a->handles_closed == 2)
    a->closed = 1;
}

static inline void it_atk_close(it_atk *a) {
  if (a->closing)
    return;
  a->closing = 1;
  uv_close((uv_handle_t *)&a->tcp, it_atk_handle_closed);
  uv_close((uv_handle_t *)&a->timer, it_atk_handle_closed);
}

static inline void it_atk_mark_end(it_atk *a) {
  if (!a->t_end)
    a->t_end = it_now(a->loop);
}

static inline void it_atk_flood_pump(it_atk *a);

static inline int it_atk_flooding(const it_atk *a) {
  return a->flood_unit.len || a->flood_gen;
}

static inline void it_atk_on_write(uv_write_t *req, int status) {
  it_atk_wreq *w = (it_atk_wreq *)req;
  it_atk *a = w->a;
  a->writes_pending--;
  if (it_atk_flooding(a))
    a->flood_inflight -= w->len;
  free(w);
  if (status < 0) {
    if (!a->werr && status != UV_ECANCELED) {
      a->werr = status;
      it_atk_mark_end(a);
      if (a->ticking && !a->dead) {
        a->dead = 1;
        a->t_dead = it_now(a->loop);
      }
    }
    return;
  }
  /* The attack's last byte left: closes are timed from here (ticks after
   * the end do not count). */
  if (a->writes_pending == 0 && !a->hold_tx && !a->t_end && !a->ticking)
    a->t_sent = it_now(a->loop);
  if (it_atk_flooding(a) && !a->closing)
    it_atk_flood_pump(a);
  if (a->close_after_tx && a->writes_pending == 0)
    it_atk_close(a);
}

/* Queues a copy of `d`. A failure to queue counts as the server's close. */
static inline void it_atk_write(it_atk *a, const void *d, size_t n) {
  if (a->closing || a->werr || n == 0)
    return;
  it_atk_wreq *w = malloc(sizeof *w + n);
  if (!w)
    abort();
  w->a = a;
  w->len = n;
  memcpy(w->data, d, n);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
  int rc = uv_write(&w->req, (uv_stream_t *)&a->tcp, &b, 1, it_atk_on_write);
  if (rc) {
    free(w);
    a->werr = rc;
    it_atk_mark_end(a);
    return;
  }
  a->writes_pending++;
  if (it_atk_flooding(a))
    a->flood_inflight += n;
}

static inline void it_atk_flood_pump(it_atk *a) {
  while (!a->werr && !a->closing && a->flood_sent < a->flood_max &&
         a->flood_inflight < (1u << 20)) {
    const it_buf *unit = &a->flood_unit;
    if (a->flood_gen) {
      a->flood_chunk.len = 0;
      a->flood_gen(a, &a->flood_chunk);
      unit = &a->flood_chunk;
    }
    if (!unit->len)
      return;
    it_atk_write(a, unit->p, unit->len);
    a->flood_sent += unit->len;
  }
}

static inline void it_atk_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  it_atk *a = h->data;
  (void)hint;
  *b = uv_buf_init((char *)a->rbuf, sizeof a->rbuf);
}

static inline void it_atk_on_read(uv_stream_t *s, ssize_t n,
                                  const uv_buf_t *b) {
  it_atk *a = s->data;
  if (n == 0)
    return;
  if (n > 0) {
    size_t keep = (size_t)n;
    if (a->rx.len + keep > IT_ATK_KEEP)
      keep = a->rx.len < IT_ATK_KEEP ? IT_ATK_KEEP - a->rx.len : 0;
    it_buf_put(&a->rx, b->base, keep);
    a->rx_total += (uint64_t)n;
    return;
  }
  uv_read_stop(s);
  it_atk_mark_end(a);
  if (n == UV_EOF)
    a->eof = 1;
  else
    a->rerr = (int)n;
}

static inline void it_atk_start_reading(it_atk *a) {
  if (!a->no_read && !a->closing)
    uv_read_start((uv_stream_t *)&a->tcp, it_atk_alloc, it_atk_on_read);
}

/* Sends `tx` (held back with hold_tx) now. */
static inline void it_atk_send_tx(it_atk *a) {
  a->hold_tx = 0;
  if (a->tx.len)
    it_atk_write(a, a->tx.p, a->tx.len);
  else
    a->t_sent = it_now(a->loop);
  it_atk_flood_pump(a);
}

static inline void it_atk_on_connect(uv_connect_t *req, int status) {
  it_atk *a = req->data;
  a->connected = status == 0;
  a->conn_status = status;
  a->t_connect = it_now(a->loop);
  if (status) {
    a->rerr = status;
    it_atk_mark_end(a);
    return;
  }
  if (a->reset_on_connect) {
    a->closing = 1;
    if (uv_tcp_close_reset(&a->tcp, it_atk_handle_closed) != 0)
      uv_close((uv_handle_t *)&a->tcp, it_atk_handle_closed);
    uv_close((uv_handle_t *)&a->timer, it_atk_handle_closed);
    return;
  }
  it_atk_start_reading(a);
  if (!a->hold_tx)
    it_atk_send_tx(a);
}

/* Creates and connects an attacker to dst_ip:port (NULL: 127.0.0.1; "::1"
 * reaches a server that also listens there from another address), linked
 * on *list. The caller fills tx (and options) before the loop runs again.
 * `rcvbuf` > 0
 * shrinks the socket's receive buffer before connecting, so that a peer
 * that never reads stops absorbing the server's output early. */
static inline it_atk *it_atk_new_from(uv_loop_t *loop, it_atk **list,
                                      const char *name, uint16_t port,
                                      int rcvbuf, const char *dst_ip) {
  it_atk *a = calloc(1, sizeof *a);
  if (!a)
    abort();
  a->loop = loop;
  a->name = name;
  uv_tcp_init(loop, &a->tcp);
  uv_timer_init(loop, &a->timer);
  a->tcp.data = a;
  a->timer.data = a;
  a->creq.data = a;
  a->next = *list;
  *list = a;
  a->t_start = it_now(loop);
  int v6 = dst_ip && strchr(dst_ip, ':');
  if (rcvbuf > 0) {
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
      abort();
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (uv_tcp_open(&a->tcp, fd) != 0)
      abort();
  }
  struct sockaddr_storage ss;
  if (v6)
    uv_ip6_addr(dst_ip, port, (struct sockaddr_in6 *)&ss);
  else
    uv_ip4_addr(dst_ip ? dst_ip : "127.0.0.1", port,
                (struct sockaddr_in *)&ss);
  int rc = uv_tcp_connect(&a->creq, &a->tcp, (const struct sockaddr *)&ss,
                          it_atk_on_connect);
  if (rc) {
    a->conn_status = rc;
    a->rerr = rc;
    a->t_end = a->t_start;
  }
  return a;
}

static inline it_atk *it_atk_new(uv_loop_t *loop, it_atk **list,
                                 const char *name, uint16_t port,
                                 int rcvbuf) {
  return it_atk_new_from(loop, list, name, port, rcvbuf, NULL);
}

static inline void it_atk_tick_cb(uv_timer_t *t) {
  it_atk *a = t->data;
  if (a->dead || a->closing)
    return;
  static const uint8_t x = 'x';
  if (a->tick_bytewise) {
    if (a->tick_pos >= a->tick_unit.len) {
      uv_timer_stop(&a->timer);
      return;
    }
    it_atk_write(a, a->tick_unit.p + a->tick_pos++, 1);
  } else if (a->tick_unit.len) {
    it_atk_write(a, a->tick_unit.p, a->tick_unit.len);
  } else {
    it_atk_write(a, &x, 1);
  }
  if (a->werr && !a->dead) {
    a->dead = 1;
    a->t_dead = it_now(a->loop);
  }
}

/* Writes `tick_unit` (default: one byte) every `period` ms until a write
 * fails. */
static inline void it_atk_tick(it_atk *a, unsigned period) {
  if (a->ticking || a->closing)
    return;
  a->ticking = 1;
  if (a->werr) {
    a->dead = 1;
    a->t_dead = it_now(a->loop);
    return;
  }
  uv_timer_start(&a->timer, it_atk_tick_cb, period, period);
}

/* After EOF: a write fails only once the server's socket is gone (its
 * kernel answers with RST), so probing tells a server that merely
 * half-closed from one that let the connection go. */
static inline void it_atk_probe(it_atk *a) { it_atk_tick(a, 100); }

/* Milliseconds from the last byte sent to the server's close. */
static inline uint64_t it_atk_close_ms(const it_atk *a) {
  uint64_t from = a->t_sent ? a->t_sent : a->t_connect;
  return a->t_end >= from ? a->t_end - from : 0;
}

static inline const char *it_atk_how(const it_atk *a) {
  if (a->eof)
    return "EOF";
  if (a->rerr)
    return uv_err_name(a->rerr);
  if (a->werr)
    return uv_err_name(a->werr);
  return "open";
}

static inline void it_atk_free_all(it_atk **list) {
  while (*list) {
    it_atk *a = *list;
    *list = a->next;
    it_buf_free(&a->tx);
    it_buf_free(&a->rx);
    it_buf_free(&a->flood_unit);
    it_buf_free(&a->flood_chunk);
    it_buf_free(&a->tick_unit);
    free(a);
  }
}

#endif
