/* The engine's streams (include/tunnel/engine.h): the table that finds
 * them by number, work channels waiting for StartWorkConn, visitors'
 * streams over yamux, and the connections that carry them when the
 * session does not multiplex. */
#include <stdio.h>
#include <string.h>

#include "engine_int.h"
#include "engine_io.h"
#include "log.h"

#define MEM(e) tunnel__eng_mem(e)

typedef tunnel__eng_session eng_session;
typedef tunnel__eng_stream eng_stream;
typedef tunnel__eng_table eng_table;

/* ---------------------------------------------------------- the table */

/* The smallest table; it never shrinks below, so an idle session keeps one
 * small block. */
#define TABLE_MIN 8u

/* Fibonacci hashing: stream numbers are mostly consecutive, and the
 * multiplication spreads them over the whole table. */
static uint32_t table_home(const eng_table *t, uint32_t num) {
  return (uint32_t)(num * 2654435769u) & (t->cap - 1);
}

static eng_stream **table_probe(const eng_table *t, uint32_t num) {
  if (!t->cap)
    return NULL;
  uint32_t mask = t->cap - 1;
  for (uint32_t i = table_home(t, num);; i = (i + 1) & mask) {
    if (!t->slot[i] || t->slot[i]->num == num)
      return &t->slot[i];
  }
}

static void table_put(eng_table *t, eng_stream *st) {
  eng_stream **p = table_probe(t, st->num);
  /* A number met again after 2^32 streams: the next free slot. */
  uint32_t mask = t->cap - 1, i = (uint32_t)(p - t->slot);
  while (t->slot[i])
    i = (i + 1) & mask;
  t->slot[i] = st;
  t->count++;
}

/* Moves the entries to a table of `cap` slots; on failure the table is
 * left as it was. */
static int table_resize(eng_table *t, const tunnel__mem *mem, uint32_t cap) {
  eng_table n = {NULL, cap, 0};
  n.slot = tunnel__calloc(mem, cap, sizeof *n.slot);
  if (!n.slot)
    return TUNNEL_ENOMEM;
  for (uint32_t i = 0; i < t->cap; i++)
    if (t->slot[i])
      table_put(&n, t->slot[i]);
  tunnel__free(mem, t->slot);
  *t = n;
  return 0;
}

/* Room for one more entry, keeping the table at most half full. */
static int table_reserve(eng_table *t, const tunnel__mem *mem) {
  if ((t->count + 1u) * 2u <= t->cap)
    return 0;
  if (t->cap > UINT32_MAX / 4u)
    return TUNNEL_ELIMIT;
  return table_resize(t, mem, t->cap ? t->cap * 2u : TABLE_MIN);
}

static void table_remove(eng_table *t, const tunnel__mem *mem,
                         eng_stream *st) {
  if (!t->cap)
    return;
  uint32_t mask = t->cap - 1, i = table_home(t, st->num);
  while (t->slot[i] && t->slot[i] != st)
    i = (i + 1) & mask;
  if (!t->slot[i])
    return;
  t->slot[i] = NULL;
  t->count--;
  /* Backward shift: entries after the hole that may live in it move up,
   * so a probe never stops early and no tombstones pile up. */
  for (uint32_t j = (i + 1) & mask; t->slot[j]; j = (j + 1) & mask) {
    uint32_t k = table_home(t, t->slot[j]->num);
    if (((i - k) & mask) < ((j - k) & mask)) {
      t->slot[i] = t->slot[j];
      t->slot[j] = NULL;
      i = j;
    }
  }
  /* Gives back what a burst of streams took; a failure keeps the larger
   * table, which works as well. */
  if (t->cap > TABLE_MIN && t->count * 8u < t->cap)
    (void)table_resize(t, mem, t->cap / 2u);
}

/* ------------------------------------------------------------- streams */

eng_stream *tunnel__eng_find_stream(eng_session *s, uint32_t num) {
  eng_stream **p = s ? table_probe(&s->table, num) : NULL;
  return p ? *p : NULL;
}

/* A stream the program may name. */
static eng_stream *find_open(tunnel_engine *e, uint32_t num) {
  eng_stream *st = tunnel__eng_find_stream(e->s, num);
  return st && st->state == TUNNEL__ST_OPEN ? st : NULL;
}

static uint32_t new_num(tunnel_engine *e) {
  uint32_t n = e->next_num++;
  if (e->next_num < 2) /* wrapped: 0 and 1 are never streams */
    e->next_num = 2;
  return n;
}

static void stream_free(eng_stream *st) {
  const tunnel__mem *mem = MEM(st->s->e);
  tunnel__msg_reader_free(&st->reader);
  tunnel__bufq_free(&st->out);
  tunnel__free(mem, st);
}

static void stream_drop(eng_stream *st) {
  eng_session *s = st->s;
  if (st->state == TUNNEL__ST_DGRAM) {
    tunnel__eng_proxy *p = tunnel__eng_proxy_by_id(s->e, st->proxy);
    if (p && p->dgram == st->num)
      p->dgram = 0;
  }
  if (st->state == TUNNEL__ST_CONNECTING || st->state == TUNNEL__ST_WORK)
    s->nworks--;
  else if (tunnel__eng_visiting(st))
    s->nvisits--;
  table_remove(&s->table, MEM(s->e), st);
  if (st->prev)
    st->prev->next = st->next;
  else
    s->streams = st->next;
  if (st->next)
    st->next->prev = st->prev;
  stream_free(st);
}

void tunnel__eng_gone(tunnel_engine *e, uint32_t num, void *user,
                      int status, const char *visit_msg) {
  if (visit_msg ? !e->visit_cb : !e->end_cb)
    return;
  uint32_t prev_num = e->ending_num;
  void *prev_user = e->ending_user;
  e->ending_num = num;
  e->ending_user = user;
  if (visit_msg)
    e->visit_cb(e, num, status, visit_msg, e->ud);
  else
    e->end_cb(e, num, status, e->ud);
  e->ending_num = prev_num;
  e->ending_user = prev_user;
}

static void end_gone(tunnel_engine *e, uint32_t num, void *user, int status) {
  tunnel__eng_gone(e, num, user, status, NULL);
}

static eng_stream *stream_new(eng_session *s) {
  tunnel_engine *e = s->e;
  eng_stream *st = tunnel__calloc(MEM(e), 1, sizeof *st);
  if (!st)
    return NULL;
  /* The table grows first, so a failure costs no stream number. */
  if (table_reserve(&s->table, MEM(e))) {
    tunnel__free(MEM(e), st);
    return NULL;
  }
  st->s = s;
  st->num = new_num(e);
  tunnel__msg_reader_init(&st->reader, MEM(e), e->cfg.max_message_size);
  tunnel__bufq_init(&st->out, MEM(e), TUNNEL__ENG_CONN_CHUNK);
  table_put(&s->table, st);
  st->next = s->streams;
  if (st->next)
    st->next->prev = st;
  s->streams = st;
  return st;
}

eng_stream *tunnel__eng_stream_new(eng_session *s) { return stream_new(s); }

void tunnel__eng_stream_drop(eng_stream *st) { stream_drop(st); }

void tunnel__eng_streams_free(eng_session *s) {
  while (s->streams) {
    eng_stream *st = s->streams;
    s->streams = st->next;
    stream_free(st);
  }
  tunnel__free(MEM(s->e), s->table.slot);
  memset(&s->table, 0, sizeof s->table);
}

/* Bytes from the visitor: to the program, or consumed here when nobody
 * listens (a mux stream would stall otherwise). */
static void deliver(eng_stream *st, const uint8_t *data, size_t len) {
  tunnel_engine *e = st->s->e;
  if (!len)
    return;
  if (e->data_cb)
    e->data_cb(e, st->num, data, len, e->ud);
  else if (st->s->mux)
    tunnel__ymx_consumed(st->s->ymx, st->id, len);
}

void tunnel__eng_deliver(eng_stream *st, const uint8_t *data, size_t len) {
  deliver(st, data, len);
}

/* ------------------------------------------------------- work channels */

/* Finishes a work channel the server will not use or the program refused:
 * mux streams are reset, connections handed back to the program. */
void tunnel__eng_stream_discard(eng_stream *st) {
  eng_session *s = st->s;
  tunnel_engine *e = s->e;
  uint32_t num = st->num;
  if (s->mux) {
    if (!st->ymx_gone)
      tunnel__ymx_reset(s->ymx, st->id);
    stream_drop(st);
    return;
  }
  stream_drop(st);
  if (e->disconnect_cb)
    e->disconnect_cb(e, num, e->ud);
}

static void visitor_name(char *out, size_t cap, const tunnel__msg *m) {
  const char *a = m->src_addr ? m->src_addr : "";
  if (!*a)
    *out = '\0';
  else if (strchr(a, ':'))
    snprintf(out, cap, "[%s]:%u", a, (unsigned)m->src_port);
  else
    snprintf(out, cap, "%s:%u", a, (unsigned)m->src_port);
}

/* StartWorkConn arrived on a work channel; `rest` followed it. */
static void start_work(eng_stream *st, const tunnel__msg *m,
                       const uint8_t *rest, size_t rest_len) {
  eng_session *s = st->s;
  tunnel_engine *e = s->e;
  tunnel__eng_proxy *p = NULL;
  if (m->type == TUNNEL__MSG_START_WORK_CONN && !(m->error && *m->error))
    p = tunnel__eng_proxy_by_name(e, m->proxy_name);
  if (p && (p->withdrawn || e->draining))
    p = NULL; /* a visitor that raced the drain: refused */
  if (!p) {
    const char *why = m->type != TUNNEL__MSG_START_WORK_CONN
                          ? "unexpected message"
                      : m->error && *m->error ? m->error
                                              : "no such proxy";
    tunnel__log(&e->cfg.log, TUNNEL_LOG_DEBUG,
                "engine: work channel dropped (%s)", why);
    tunnel__eng_stream_discard(st);
    return;
  }
  s->nworks--;
  if (p->type == TUNNEL_ENGINE_PROXY_UDP) {
    /* Datagrams from now on: the reader goes on with UDPPackets. */
    tunnel__eng_dgram_start(st, p);
    if (rest_len)
      tunnel__eng_dgram_input(st, rest, rest_len);
    return;
  }
  st->state = TUNNEL__ST_OPEN;
  tunnel__msg_reader_free(&st->reader);
  char visitor[300];
  visitor_name(visitor, sizeof visitor, m);
  uint32_t num = st->num;
  int rc = e->open_cb ? e->open_cb(e, num, p->id, visitor, e->ud)
                      : TUNNEL_EREFUSED;
  if (s->dead)
    return;
  st = find_open(e, num); /* the callback may have closed it */
  if (!st || e->s != s)
    return;
  if (rc < 0) {
    st->state = TUNNEL__ST_WORK; /* so it is discarded as a work channel */
    s->nworks++;
    tunnel__eng_stream_discard(st);
    return;
  }
  deliver(st, rest, rest_len);
}

/* Reads the first message of a channel: StartWorkConn on a work
 * channel, the answer to a visit on the program's own. */
static void work_input(eng_stream *st, const uint8_t *data, size_t len) {
  eng_session *s = st->s;
  tunnel__msg m;
  size_t used = 0;
  int rc = tunnel__msg_reader_feed(&st->reader, data, len, &used, &m);
  if (s->mux) /* the engine used these bytes itself */
    tunnel__ymx_consumed(s->ymx, st->id, used);
  if (rc < 0) {
    tunnel__log(&s->e->cfg.log, TUNNEL_LOG_DEBUG,
                "engine: bad message on a work channel: %s",
                tunnel_strerror(rc));
    if (st->state == TUNNEL__ST_VISIT)
      tunnel__eng_visit_failed(st, TUNNEL_EPROTO, NULL, 1);
    else
      tunnel__eng_stream_discard(st);
    return;
  }
  if (rc == 0)
    return;
  if (st->state == TUNNEL__ST_VISIT)
    tunnel__eng_visit_answered(st, &m, data + used, len - used);
  else
    start_work(st, &m, data + used, len - used);
  tunnel__msg_clear(MEM(s->e), &m);
}

int tunnel__eng_open_send(eng_stream *st, tunnel__bufq *q) {
  eng_session *s = st->s;
  int rc = tunnel__ymx_open(s->ymx, st, &st->id);
  if (rc) {
    stream_drop(st);
    return rc;
  }
  /* A new stream's window (256 KiB at least) takes the whole message. */
  tunnel__iov v[4];
  size_t k = tunnel__bufq_iov(q, v, 4);
  for (size_t i = 0; i < k && rc == 0; i++) {
    size_t w = 0;
    rc = tunnel__ymx_write(s->ymx, st->id, v[i].base, v[i].len, &w);
    if (rc == 0 && w < v[i].len)
      rc = TUNNEL_ENOMEM;
  }
  if (rc)
    tunnel__eng_stream_discard(st);
  return rc;
}

void tunnel__eng_new_work(eng_session *s) {
  tunnel_engine *e = s->e;
  /* Each request costs a stream or a connection: a server asking for more
   * than the limit is not obeyed. */
  if (e->draining)
    return; /* no new visitors */
  if (s->nworks >= e->cfg.max_work_conns) {
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: server asked for more than %u pending work "
                "connections; request ignored",
                (unsigned)e->cfg.max_work_conns);
    return;
  }
  if (!s->mux && !e->connect_cb)
    return;
  eng_stream *st = stream_new(s);
  if (!st) {
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: no memory for a work connection");
    return;
  }
  s->nworks++;
  if (!s->mux) {
    st->state = TUNNEL__ST_CONNECTING;
    e->connect_cb(e, st->num, e->ud);
    return;
  }
  st->state = TUNNEL__ST_WORK;
  tunnel__bufq q;
  tunnel__bufq_init(&q, MEM(e), TUNNEL__ENG_CTL_CHUNK);
  int rc = tunnel__eng_encode_work_conn(e, &q);
  if (rc == 0)
    rc = tunnel__eng_open_send(st, &q);
  else
    stream_drop(st);
  tunnel__bufq_free(&q);
  if (rc)
    tunnel__log(&e->cfg.log, TUNNEL_LOG_WARN,
                "engine: cannot start a work stream: %s", tunnel_strerror(rc));
}

/* ---------------------------------------------------------- yamux glue */

static int ymx_on_stream(tunnel__ymx *y, uint32_t id, void **su, void *ud) {
  (void)y, (void)id, (void)su, (void)ud;
  return TUNNEL_EREFUSED; /* servers never open streams in frp's protocol */
}

static void ymx_on_data(tunnel__ymx *y, uint32_t id, void *su,
                        const uint8_t *data, size_t len, void *ud) {
  eng_session *s = ud;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    /* Control bytes are used as they arrive. */
    tunnel__ymx_consumed(y, id, len);
    tunnel__eng_ctl_input(s, data, len);
    return;
  }
  eng_stream *st = su;
  if (st->state == TUNNEL__ST_WORK || st->state == TUNNEL__ST_VISIT)
    work_input(st, data, len);
  else if (st->state == TUNNEL__ST_OPEN)
    deliver(st, data, len);
  else if (st->state == TUNNEL__ST_DGRAM)
    tunnel__eng_dgram_input(st, data, len);
}

static void ymx_on_fin(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  (void)y, (void)id;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    tunnel__eng_session_down(s, TUNNEL_ECONNRESET, "control stream ended");
    return;
  }
  eng_stream *st = su;
  if (st->state == TUNNEL__ST_WORK || st->state == TUNNEL__ST_DGRAM) {
    tunnel__eng_stream_discard(st); /* the server will not use it */
    return;
  }
  if (tunnel__eng_visiting(st)) {
    tunnel__eng_visit_failed(st, TUNNEL_ECONNRESET, NULL, 1);
    return;
  }
  st->remote_fin = 1;
  if (s->e->end_cb)
    s->e->end_cb(s->e, st->num, 0, s->e->ud);
}

static void ymx_on_rst(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    tunnel__eng_session_down(s, TUNNEL_ECONNRESET, "control stream reset");
    return;
  }
  eng_stream *st = su;
  tunnel_engine *e = s->e;
  uint32_t num = st->num;
  void *user = st->user;
  int open = st->state == TUNNEL__ST_OPEN;
  tunnel__ymx_set_user(y, id, NULL);
  if (tunnel__eng_visiting(st)) {
    tunnel__eng_visit_failed(st, TUNNEL_ECONNRESET, NULL, 0);
    return;
  }
  stream_drop(st);
  if (open)
    end_gone(e, num, user, TUNNEL_ERESET);
}

static void ymx_on_window(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  (void)y, (void)id;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    tunnel__eng_flush_ctl(s);
    return;
  }
  eng_stream *st = su;
  if (st->state == TUNNEL__ST_OPEN && !st->local_fin && s->e->writable_cb)
    s->e->writable_cb(s->e, st->num, s->e->ud);
}

static void ymx_on_close(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  eng_session *s = ud;
  (void)y, (void)id;
  if (s->dead || !su)
    return;
  if (su == &s->ctl) {
    tunnel__eng_session_down(s, TUNNEL_ECONNRESET, "control stream closed");
    return;
  }
  eng_stream *st = su;
  st->ymx_gone = 1; /* both directions finished; the program closes it */
}

static void ymx_on_goaway(tunnel__ymx *y, uint32_t code, void *ud) {
  eng_session *s = ud;
  (void)y;
  tunnel__log(&s->e->cfg.log, TUNNEL_LOG_INFO,
              "engine: server going away (code %u)", (unsigned)code);
}

const tunnel__ymx_callbacks tunnel__eng_ymx_cb = {
    ymx_on_stream, NULL,          ymx_on_data, ymx_on_fin,    ymx_on_rst,
    ymx_on_window, ymx_on_close, NULL,        ymx_on_goaway};

/* ------------------------------------------------ non-mux connections */

int tunnel__eng_conn_recv(eng_session *s, uint32_t conn, const uint8_t *data,
                          size_t len) {
  eng_stream *st = tunnel__eng_find_stream(s, conn);
  if (!st)
    return tunnel__eng_known_conn(s->e, conn) ? 0 : TUNNEL_EINVAL;
  if (st->state == TUNNEL__ST_CONNECTING ||
      st->state == TUNNEL__ST_VCONNECTING)
    return TUNNEL_ESTATE;
  if (st->state == TUNNEL__ST_WORK || st->state == TUNNEL__ST_VISIT)
    work_input(st, data, len);
  else if (st->state == TUNNEL__ST_OPEN && !st->remote_fin)
    deliver(st, data, len);
  else if (st->state == TUNNEL__ST_DGRAM)
    tunnel__eng_dgram_input(st, data, len);
  return 0;
}

size_t tunnel__eng_copy_out(tunnel__bufq *q, uint8_t *buf, size_t cap) {
  size_t got = 0;
  tunnel__iov v[8];
  while (got < cap && q->size) {
    size_t k = tunnel__bufq_iov(q, v, 8), n = 0;
    for (size_t i = 0; i < k && got + n < cap; i++) {
      size_t c = v[i].len < cap - got - n ? v[i].len : cap - got - n;
      memcpy(buf + got + n, v[i].base, c);
      n += c;
    }
    tunnel__bufq_consume(q, n);
    got += n;
  }
  return got;
}

/* `n` bytes of the connection's queue reached the program: a finished
 * stream whose last bytes left goes, a blocked writer may go on. */
static void conn_sent(tunnel_engine *e, eng_stream *st) {
  if (st->state == TUNNEL__ST_DRAIN && !st->out.size) {
    stream_drop(st);
  } else if (st->state == TUNNEL__ST_OPEN && st->want_writable &&
             st->out.size < e->cfg.stream_window) {
    st->want_writable = 0;
    if (e->writable_cb)
      e->writable_cb(e, st->num, e->ud);
  }
}

size_t tunnel__eng_conn_send(eng_session *s, uint32_t conn, uint8_t *buf,
                             size_t cap) {
  eng_stream *st = tunnel__eng_find_stream(s, conn);
  /* A visit's message waits for its connection. */
  if (!st || st->state == TUNNEL__ST_VCONNECTING)
    return 0;
  size_t len = tunnel__eng_copy_out(&st->out, buf, cap);
  conn_sent(s->e, st);
  return len;
}

tunnel__bufq *tunnel__eng_conn_queue(eng_session *s, uint32_t conn) {
  eng_stream *st = tunnel__eng_find_stream(s, conn);
  return st && st->state != TUNNEL__ST_VCONNECTING ? &st->out : NULL;
}

void tunnel__eng_conn_consume(eng_session *s, uint32_t conn, size_t n) {
  eng_stream *st = tunnel__eng_find_stream(s, conn);
  if (!st)
    return;
  tunnel__bufq_consume(&st->out, n < st->out.size ? n : st->out.size);
  conn_sent(s->e, st);
}

int tunnel__engine_stream_frame(tunnel_engine *e, uint32_t stream,
                                size_t len, uint8_t *hdr, size_t *n) {
  *n = 0;
  eng_stream *st = e ? find_open(e, stream) : NULL;
  if (!st || !st->s->mux)
    return TUNNEL_EINVAL;
  if (st->local_fin || st->ymx_gone)
    return TUNNEL_ESTATE;
  return tunnel__ymx_frame_data(st->s->ymx, st->id, len, hdr, n);
}

int tunnel__engine_out_push(tunnel_engine *e, const tunnel__iov *v,
                            size_t n) {
  eng_session *s = e ? e->s : NULL;
  if (!s || !s->mux)
    return TUNNEL_ESTATE;
  return tunnel__ymx_out_push(s->ymx, v, n);
}

int tunnel__engine_stream_set_user(tunnel_engine *e, uint32_t stream,
                                   void *user) {
  eng_stream *st = e ? tunnel__eng_find_stream(e->s, stream) : NULL;
  if (!st)
    return TUNNEL_EINVAL;
  st->user = user;
  return 0;
}

void *tunnel__engine_stream_user(tunnel_engine *e, uint32_t stream) {
  eng_stream *st = tunnel__eng_find_stream(e->s, stream);
  /* A session going down is already detached; its streams end from the
   * dead list. */
  for (eng_session *d = e->dead; !st && d; d = d->next_dead)
    st = tunnel__eng_find_stream(d, stream);
  if (!st && stream == e->ending_num)
    return e->ending_user;
  return st ? st->user : NULL;
}

int tunnel_engine_conn_detach(tunnel_engine *e, uint32_t conn) {
  eng_session *s = e ? e->s : NULL;
  if (!s || s->mux || conn == TUNNEL_ENGINE_CONTROL)
    return TUNNEL_EINVAL;
  eng_stream *st = tunnel__eng_find_stream(s, conn);
  if (!st)
    return TUNNEL_EINVAL;
  if (st->state != TUNNEL__ST_OPEN || st->local_fin || st->remote_fin ||
      st->out.size)
    return TUNNEL_ESTATE;
  stream_drop(st);
  return 0;
}

uint32_t tunnel__eng_conn_next(eng_session *s, uint32_t after,
                               uint32_t best) {
  /* A walk: connections of their own are few (each is a socket), and
   * the order asked for is the numbers', not the table's. */
  for (eng_stream *st = s->streams; st; st = st->next)
    if (st->out.size && st->num > after && st->num < best &&
        st->state != TUNNEL__ST_VCONNECTING)
      best = st->num;
  return best;
}

int tunnel_engine_conn_ready(tunnel_engine *e, uint32_t conn,
                             uint64_t now_ms) {
  if (!e)
    return TUNNEL_EINVAL;
  if (conn == TUNNEL_ENGINE_CONTROL) {
    /* The attempt tunnel_engine_connect() asked for succeeded. */
    if (e->state != TUNNEL__E_CONNECTING || e->s)
      return TUNNEL_ESTATE;
    return tunnel__eng_session_start(e, now_ms);
  }
  eng_session *s = e->s;
  eng_stream *st = s && !s->mux ? tunnel__eng_find_stream(s, conn) : NULL;
  if (!st)
    return s && !s->mux && tunnel__eng_known_conn(e, conn) ? TUNNEL_ESTATE
                                                           : TUNNEL_EINVAL;
  if (st->state == TUNNEL__ST_VCONNECTING) {
    /* NewVisitorConn was queued with the visit: it leaves now. */
    e->now = now_ms;
    st->state = TUNNEL__ST_VISIT;
    return 0;
  }
  if (st->state != TUNNEL__ST_CONNECTING)
    return TUNNEL_ESTATE;
  e->now = now_ms;
  int rc = tunnel__eng_encode_work_conn(e, &st->out);
  if (rc) {
    /* The error says it: the program closes the connection. */
    stream_drop(st);
    return rc;
  }
  st->state = TUNNEL__ST_WORK;
  return 0;
}

int tunnel_engine_conn_closed(tunnel_engine *e, uint32_t conn, int status,
                              uint64_t now_ms) {
  if (!e || status > 0)
    return TUNNEL_EINVAL;
  eng_session *s = e->s;
  if (conn == TUNNEL_ENGINE_CONTROL) {
    if (!s && e->state == TUNNEL__E_CONNECTING) {
      tunnel__eng_enter(e);
      e->now = now_ms;
      tunnel__eng_attempt_failed(e, status ? status : TUNNEL_ECONNRESET,
                                 "cannot connect to the server");
      tunnel__eng_leave(e);
      return 0;
    }
    if (!s)
      return 0;
    tunnel__eng_enter(e);
    e->now = now_ms;
    tunnel__eng_session_down(s, status ? status : TUNNEL_ECONNRESET,
                             "connection to the server lost");
    tunnel__eng_leave(e);
    return 0;
  }
  if (s && s->mux)
    return TUNNEL_EINVAL;
  eng_stream *st = tunnel__eng_find_stream(s, conn);
  if (!st)
    return tunnel__eng_known_conn(e, conn) ? 0 : TUNNEL_EINVAL;
  tunnel__eng_enter(e);
  e->now = now_ms;
  uint32_t num = st->num;
  if (tunnel__eng_visiting(st)) {
    tunnel__eng_visit_failed(st, status ? status : TUNNEL_ECONNRESET, NULL,
                             0);
  } else if (st->state != TUNNEL__ST_OPEN) {
    stream_drop(st);
  } else if (status == 0) {
    /* The server finished sending: the visitor half-closed. */
    if (!st->remote_fin) {
      st->remote_fin = 1;
      if (e->end_cb)
        e->end_cb(e, num, 0, e->ud);
    }
  } else {
    void *user = st->user;
    stream_drop(st);
    end_gone(e, num, user, TUNNEL_ERESET);
  }
  tunnel__eng_leave(e);
  return 0;
}

/* ------------------------------------------------------------ streams API */

int tunnel_engine_stream_write(tunnel_engine *e, uint32_t stream,
                               const uint8_t *data, size_t len,
                               size_t *taken) {
  if (taken)
    *taken = 0;
  if (!e || !taken || (!data && len))
    return TUNNEL_EINVAL;
  eng_stream *st = find_open(e, stream);
  if (!st)
    return TUNNEL_EINVAL;
  if (st->local_fin)
    return TUNNEL_ESTATE;
  eng_session *s = st->s;
  if (s->mux) {
    if (st->ymx_gone)
      return TUNNEL_ESTATE;
    return tunnel__ymx_write(s->ymx, st->id, data, len, taken);
  }
  /* Non-mux: the connection's queue stands for the window. */
  size_t limit = e->cfg.stream_window;
  size_t room = st->out.size < limit ? limit - st->out.size : 0;
  size_t n = len < room ? len : room;
  int rc = n ? tunnel__bufq_append(&st->out, data, n) : 0;
  if (rc)
    return rc;
  *taken = n;
  if (n < len)
    st->want_writable = 1;
  return 0;
}

int tunnel_engine_stream_shutdown(tunnel_engine *e, uint32_t stream) {
  eng_stream *st = e ? find_open(e, stream) : NULL;
  if (!st)
    return TUNNEL_EINVAL;
  if (st->local_fin)
    return 0;
  st->local_fin = 1;
  eng_session *s = st->s;
  if (s->mux) {
    if (!st->ymx_gone && tunnel__ymx_shutdown(s->ymx, st->id) == 1)
      st->ymx_gone = 1;
    return 0;
  }
  tunnel__eng_enter(e);
  /* A connection cannot be half-closed from here: it ends as with frp. */
  st->state = TUNNEL__ST_DRAIN;
  void *user = st->user;
  if (!st->out.size)
    stream_drop(st);
  if (e->disconnect_cb)
    e->disconnect_cb(e, stream, e->ud);
  end_gone(e, stream, user, TUNNEL_ECLOSED);
  tunnel__eng_leave(e);
  return 0;
}

int tunnel_engine_stream_close(tunnel_engine *e, uint32_t stream) {
  eng_stream *st = e ? tunnel__eng_find_stream(e->s, stream) : NULL;
  if (st && tunnel__eng_visiting(st)) {
    /* A visit abandoned before its answer: no callback for it. */
    tunnel__eng_enter(e);
    tunnel__eng_stream_discard(st);
    tunnel__eng_leave(e);
    return 0;
  }
  if (st && st->state != TUNNEL__ST_OPEN)
    st = NULL;
  if (!st)
    return TUNNEL_EINVAL;
  eng_session *s = st->s;
  if (s->mux) {
    if (!st->ymx_gone)
      tunnel__ymx_reset(s->ymx, st->id);
    stream_drop(st);
    return 0;
  }
  tunnel__eng_enter(e);
  st->state = TUNNEL__ST_DRAIN;
  if (!st->out.size)
    stream_drop(st);
  if (e->disconnect_cb)
    e->disconnect_cb(e, stream, e->ud);
  tunnel__eng_leave(e);
  return 0;
}

int tunnel_engine_stream_consumed(tunnel_engine *e, uint32_t stream,
                                  size_t n) {
  eng_stream *st = e ? find_open(e, stream) : NULL;
  if (!st)
    return TUNNEL_EINVAL;
  if (!st->s->mux || st->ymx_gone || !n)
    return 0;
  return tunnel__ymx_consumed(st->s->ymx, st->id, n);
}
