#include "yamux.h"

#include <string.h>

#include "wire.h"

/* Largest payload put in one data frame: bounds how long one stream can hold
 * the transport before another stream's frame gets a turn. */
#define MAX_DATA_FRAME (256u * 1024u)

/* Peer stream ids below the highest one seen that can still be opened. */
#define PEER_ID_WINDOW 1024u

typedef struct ymx_stream {
  struct ymx_stream *next; /* hash chain */
  uint32_t id;
  uint8_t local_fin;
  uint8_t remote_fin;
  uint8_t acked; /* our SYN acknowledged (streams we opened) */
  uint32_t send_window;
  uint32_t recv_window; /* bytes the peer may still send */
  uint32_t credit;      /* window not granted: consumed, or withheld */
  uint32_t unconsumed;  /* delivered but not yet reported consumed */
  void *user;
} ymx_stream;

struct tunnel__ymx {
  tunnel__mem mem;
  const tunnel__logger *log;
  tunnel__ymx_callbacks cb;
  void *ud;

  int is_client;
  uint32_t max_streams;
  uint32_t window;
  uint32_t max_backlog;
  uint64_t budget;            /* 0: no session budget */
  tunnel__ymx_budget *shared; /* NULL: none */
  uint64_t buffered;          /* outstanding receive credit, all streams */
  uint64_t held;              /* of which received and not yet consumed */
  uint32_t regrant_from;      /* bucket where the next regrant starts */

  uint32_t next_id;      /* next id we open */
  uint32_t last_peer_id; /* highest id the peer opened */
  /* Which of the PEER_ID_WINDOW peer ids up to last_peer_id were opened,
   * bit (id >> 1) % PEER_ID_WINDOW: SYNs may arrive out of order. */
  uint64_t peer_ids[PEER_ID_WINDOW / 64];
  ymx_stream **buckets;
  uint32_t nbuckets; /* power of two */
  uint32_t nstreams;

  tunnel__bufq out;
  size_t backlog; /* peer-triggered bytes queued since the queue last drained */

  int error;
  int local_goaway;
  int remote_goaway;

  /* Frame parser. */
  uint8_t hdr[TUNNEL__YMX_HEADER_SIZE];
  size_t hdr_len;
  uint32_t payload_left;
  uint32_t payload_id; /* stream the payload belongs to; 0: discard */
  uint16_t payload_flags;
};

/* ------------------------------------------------------------- budget */

/* Every change to a stream's outstanding receive credit goes through these,
 * so the session total and the shared counter stay exact. */
static void hold(tunnel__ymx *s, uint64_t n) {
  s->buffered += n;
  if (s->shared)
    s->shared->used += n;
}

static void release(tunnel__ymx *s, uint64_t n) {
  s->buffered -= n;
  if (s->shared)
    s->shared->used -= n;
}

/* Bytes received and not yet consumed: what memory actually holds. */
static void held_add(tunnel__ymx *s, uint64_t n) {
  s->held += n;
  if (s->shared)
    s->shared->held += n;
}

static void held_sub(tunnel__ymx *s, uint64_t n) {
  s->held -= n;
  if (s->shared)
    s->shared->held -= n;
}

/* What the peer may still send on the stream plus what it sent that was not
 * consumed, counting a data frame's payload still on its way. With credit
 * this always adds up to the configured window, until the peer's FIN. */
static uint64_t outstanding(const tunnel__ymx *s, const ymx_stream *st) {
  uint64_t out = (uint64_t)st->recv_window + st->unconsumed;
  if (s->payload_left && s->payload_id == st->id)
    out += s->payload_left;
  return out;
}

/* New streams are refused on what is really held, not on window granted
 * and unused: idle streams must not lock new ones out. */
static int over_budget(const tunnel__ymx *s) {
  return (s->budget && s->held > s->budget) ||
         (s->shared && s->shared->held > s->shared->limit);
}

/* How much of the stream's credit may be granted now: all of it without a
 * budget; else what keeps both totals within their budgets, but at least
 * what brings the stream back to the initial window. */
static uint32_t grantable(const tunnel__ymx *s, const ymx_stream *st) {
  if (!s->budget && !s->shared)
    return st->credit;
  uint64_t room = UINT64_MAX;
  if (s->budget)
    room = s->budget > s->buffered ? s->budget - s->buffered : 0;
  if (s->shared) {
    uint64_t used = s->shared->used, limit = s->shared->limit;
    uint64_t shared_room = limit > used ? limit - used : 0;
    if (shared_room < room)
      room = shared_room;
  }
  uint64_t out = outstanding(s, st);
  uint64_t floor =
      out < TUNNEL__YMX_INITIAL_WINDOW ? TUNNEL__YMX_INITIAL_WINDOW - out : 0;
  uint64_t g = room > floor ? room : floor;
  return g < st->credit ? (uint32_t)g : st->credit;
}

/* Batching: one update per quarter window keeps the pipe full without a
 * frame per read. A grant cut short by a budget goes out once it is a
 * quarter of the initial window: a stream down to three quarters of its
 * initial window then always gets an update, so it cannot stall. */
static int worth_granting(const tunnel__ymx *s, const ymx_stream *st,
                          uint32_t g) {
  return g >= s->window / 4 ||
         (g < st->credit && g >= TUNNEL__YMX_INITIAL_WINDOW / 4);
}

/* ------------------------------------------------------------- streams */

static ymx_stream *find(const tunnel__ymx *s, uint32_t id) {
  for (ymx_stream *st = s->buckets[id & (s->nbuckets - 1)]; st; st = st->next)
    if (st->id == id)
      return st;
  return NULL;
}

static int grow(tunnel__ymx *s) {
  uint32_t n = s->nbuckets * 2;
  ymx_stream **b = tunnel__calloc(&s->mem, n, sizeof *b);
  if (!b)
    return TUNNEL_ENOMEM;
  for (uint32_t i = 0; i < s->nbuckets; i++) {
    ymx_stream *st = s->buckets[i];
    while (st) {
      ymx_stream *next = st->next;
      st->next = b[st->id & (n - 1)];
      b[st->id & (n - 1)] = st;
      st = next;
    }
  }
  tunnel__free(&s->mem, s->buckets);
  s->buckets = b;
  s->nbuckets = n;
  return 0;
}

static ymx_stream *stream_add(tunnel__ymx *s, uint32_t id, void *user) {
  if (s->nstreams >= s->nbuckets && grow(s) != 0)
    return NULL;
  ymx_stream *st = tunnel__calloc(&s->mem, 1, sizeof *st);
  if (!st)
    return NULL;
  st->id = id;
  st->send_window = TUNNEL__YMX_INITIAL_WINDOW;
  /* The spec's initial window; the rest is credit, granted by open_grant(). */
  st->recv_window = TUNNEL__YMX_INITIAL_WINDOW;
  st->credit = s->window - TUNNEL__YMX_INITIAL_WINDOW;
  hold(s, TUNNEL__YMX_INITIAL_WINDOW);
  st->user = user;
  st->next = s->buckets[id & (s->nbuckets - 1)];
  s->buckets[id & (s->nbuckets - 1)] = st;
  s->nstreams++;
  return st;
}

static void stream_remove(tunnel__ymx *s, ymx_stream *st) {
  ymx_stream **pp = &s->buckets[st->id & (s->nbuckets - 1)];
  while (*pp != st)
    pp = &(*pp)->next;
  *pp = st->next;
  s->nstreams--;
  release(s, outstanding(s, st));
  held_sub(s, st->unconsumed);
  tunnel__free(&s->mem, st);
}

/* ------------------------------------------------------------- output */

static int emit(tunnel__ymx *s, uint8_t type, uint16_t flags, uint32_t id,
                uint32_t length) {
  uint8_t h[TUNNEL__YMX_HEADER_SIZE];
  h[0] = 0;
  h[1] = type;
  tunnel__put16(h + 2, flags);
  tunnel__put32(h + 4, id);
  tunnel__put32(h + 8, length);
  return tunnel__bufq_append(&s->out, h, sizeof h);
}

/* A frame the peer made us send (ping reply, refusal). A peer that keeps
 * asking while never reading our output is cut off instead of growing the
 * queue without bound. */
static int emit_reply(tunnel__ymx *s, uint8_t type, uint16_t flags,
                      uint32_t id, uint32_t length) {
  if (s->backlog + TUNNEL__YMX_HEADER_SIZE > s->max_backlog)
    return TUNNEL_ELIMIT;
  int rc = emit(s, type, flags, id, length);
  if (rc == 0)
    s->backlog += TUNNEL__YMX_HEADER_SIZE;
  return rc;
}

/* Grants what the budgets allow of the stream's credit, if worth a frame.
 * Nothing changes when the update cannot be queued. */
static int grant(tunnel__ymx *s, ymx_stream *st) {
  uint32_t g = grantable(s, st);
  if (!worth_granting(s, st, g))
    return 0;
  int rc = emit(s, TUNNEL__YMX_WINDOW_UPDATE, 0, st->id, g);
  if (rc)
    return rc;
  st->recv_window += g;
  st->credit -= g;
  hold(s, g);
  return 0;
}

/* Queues a new stream's SYN or ACK (`flags`), carrying whatever window
 * beyond the initial one the budgets allow. */
static int open_grant(tunnel__ymx *s, ymx_stream *st, uint16_t flags,
                      int peer_triggered) {
  uint32_t g = grantable(s, st);
  int rc = peer_triggered
               ? emit_reply(s, TUNNEL__YMX_WINDOW_UPDATE, flags, st->id, g)
               : emit(s, TUNNEL__YMX_WINDOW_UPDATE, flags, st->id, g);
  if (rc)
    return rc;
  st->recv_window += g;
  st->credit -= g;
  hold(s, g);
  return 0;
}

static int fail(tunnel__ymx *s, int err, const char *why) {
  if (s->error)
    return s->error;
  s->error = err;
  tunnel__log(s->log, TUNNEL_LOG_WARN, "yamux: %s: %s", why,
              tunnel_strerror(err));
  uint32_t code = err == TUNNEL_ENOMEM ? TUNNEL__YMX_GOAWAY_INTERNAL
                                       : TUNNEL__YMX_GOAWAY_PROTOCOL;
  /* Best effort: if even this cannot be queued the transport just closes. */
  (void)emit(s, TUNNEL__YMX_GOAWAY, 0, 0, code);
  s->local_goaway = 1;
  return err;
}

/* --------------------------------------------------------------- setup */

int tunnel__ymx_new(tunnel__ymx **out, const tunnel__ymx_config *cfg,
                    const tunnel__ymx_callbacks *cb, void *user_data) {
  if (!out || !cfg || !cb)
    return TUNNEL_EINVAL;
  *out = NULL;
  if (cfg->window < TUNNEL__YMX_INITIAL_WINDOW || cfg->max_streams == 0)
    return TUNNEL_EINVAL;
  const tunnel__mem *mem = cfg->mem ? cfg->mem : tunnel__mem_default();
  tunnel__ymx *s = tunnel__calloc(mem, 1, sizeof *s);
  if (!s)
    return TUNNEL_ENOMEM;
  s->mem = *mem;
  s->nbuckets = 16;
  s->buckets = tunnel__calloc(&s->mem, s->nbuckets, sizeof *s->buckets);
  if (!s->buckets) {
    tunnel__free(mem, s);
    return TUNNEL_ENOMEM;
  }
  s->log = cfg->log;
  s->cb = *cb;
  s->ud = user_data;
  s->is_client = cfg->is_client;
  s->max_streams = cfg->max_streams;
  s->window = cfg->window;
  s->max_backlog = cfg->max_backlog ? cfg->max_backlog : 1024u * 1024u;
  s->budget = cfg->budget;
  s->shared = cfg->shared;
  s->next_id = cfg->is_client ? 1 : 2;
  tunnel__bufq_init(&s->out, &s->mem,
                    cfg->out_chunk ? cfg->out_chunk : 64u * 1024u);
  *out = s;
  return 0;
}

void tunnel__ymx_free(tunnel__ymx *s) {
  if (!s)
    return;
  release(s, s->buffered);
  held_sub(s, s->held);
  for (uint32_t i = 0; i < s->nbuckets; i++) {
    ymx_stream *st = s->buckets[i];
    while (st) {
      ymx_stream *next = st->next;
      tunnel__free(&s->mem, st);
      st = next;
    }
  }
  tunnel__free(&s->mem, s->buckets);
  tunnel__bufq_free(&s->out);
  tunnel__mem mem = s->mem;
  tunnel__free(&mem, s);
}

/* -------------------------------------------------------------- input */

static int is_peer_id(const tunnel__ymx *s, uint32_t id) {
  /* Client ids are odd. */
  return id != 0 && ((id & 1u) == (s->is_client ? 0u : 1u));
}

/* The peer's frame closed a stream: notify and forget. */
static void peer_closed(tunnel__ymx *s, ymx_stream *st) {
  uint32_t id = st->id;
  void *user = st->user;
  stream_remove(s, st);
  if (s->cb.on_close)
    s->cb.on_close(s, id, user, s->ud);
}

/* Records that the peer opened `id`; 0 if it had already. HashiCorp's yamux
 * allocates an id before queueing its SYN, so streams opened concurrently
 * announce themselves out of order (seen against Go yamux with 100
 * concurrent OpenStream calls): a lower id may follow a higher one. Reuse is
 * detected for the PEER_ID_WINDOW ids below the highest; an older id cannot
 * be told from a late one and is accepted unless live, as Go yamux does. */
static int peer_id_new(tunnel__ymx *s, uint32_t id) {
  uint32_t bit = (id >> 1) & (PEER_ID_WINDOW - 1);
  if (id > s->last_peer_id) {
    if ((id - s->last_peer_id) / 2 >= PEER_ID_WINDOW) {
      memset(s->peer_ids, 0, sizeof s->peer_ids);
    } else {
      /* The ids skipped over enter the window unopened. */
      for (uint32_t k = s->last_peer_id + 2; k < id; k += 2) {
        uint32_t b = (k >> 1) & (PEER_ID_WINDOW - 1);
        s->peer_ids[b / 64] &= ~((uint64_t)1 << (b % 64));
      }
    }
    s->last_peer_id = id;
  } else if ((s->last_peer_id - id) / 2 >= PEER_ID_WINDOW) {
    return find(s, id) == NULL;
  } else if (s->peer_ids[bit / 64] & ((uint64_t)1 << (bit % 64))) {
    return 0;
  }
  s->peer_ids[bit / 64] |= (uint64_t)1 << (bit % 64);
  return 1;
}

/* Opens a stream the peer asked for. Returns the stream, NULL when it was
 * refused (the frame's remaining effects are then dropped), or sets *err. */
static ymx_stream *incoming(tunnel__ymx *s, uint32_t id, int *err) {
  if (!is_peer_id(s, id) || !peer_id_new(s, id)) {
    *err = fail(s, TUNNEL_EPROTO, "stream id reused or of the wrong parity");
    return NULL;
  }
  if (s->local_goaway || s->nstreams >= s->max_streams || over_budget(s)) {
    tunnel__log(s->log, TUNNEL_LOG_DEBUG, "yamux: refusing stream %lu",
                (unsigned long)id);
    *err = emit_reply(s, TUNNEL__YMX_WINDOW_UPDATE, TUNNEL__YMX_RST, id, 0);
    if (*err)
      *err = fail(s, *err, "refusals piling up");
    return NULL;
  }
  ymx_stream *st = stream_add(s, id, NULL);
  if (!st) {
    *err = fail(s, TUNNEL_ENOMEM, "cannot allocate stream");
    return NULL;
  }
  st->acked = 1;
  /* ACK first, so anything the accept callback writes follows it; the ACK
   * also grants the window beyond the spec's initial 256 KiB. */
  /* Peer-triggered like a ping reply: a peer opening streams while never
   * reading is bounded by the backlog too. */
  *err = open_grant(s, st, TUNNEL__YMX_ACK, 1);
  if (*err) {
    stream_remove(s, st);
    *err = fail(s, *err, "cannot queue ACK");
    return NULL;
  }
  void *user = NULL;
  int rc = s->cb.on_stream ? s->cb.on_stream(s, id, &user, s->ud) : 0;
  if (s->error) {
    *err = s->error;
    return NULL;
  }
  st = find(s, id); /* the callback may have reset it */
  if (!st)
    return NULL;
  if (rc < 0) {
    stream_remove(s, st);
    *err = emit_reply(s, TUNNEL__YMX_WINDOW_UPDATE, TUNNEL__YMX_RST, id, 0);
    if (*err)
      *err = fail(s, *err, "refusals piling up");
    return NULL;
  }
  if (user)
    st->user = user;
  return st;
}

static int on_fin(tunnel__ymx *s, ymx_stream *st) {
  if (st->remote_fin)
    return fail(s, TUNNEL_EPROTO, "second FIN on a stream");
  st->remote_fin = 1;
  /* The peer may send nothing more: its window no longer counts. */
  release(s, st->recv_window);
  st->recv_window = 0;
  uint32_t id = st->id;
  if (s->cb.on_fin)
    s->cb.on_fin(s, id, st->user, s->ud);
  if (s->error)
    return s->error;
  st = find(s, id);
  if (st && st->local_fin)
    peer_closed(s, st);
  return 0;
}

static void on_rst(tunnel__ymx *s, ymx_stream *st) {
  uint32_t id = st->id;
  if (s->cb.on_rst)
    s->cb.on_rst(s, id, st->user, s->ud);
  st = find(s, id);
  if (st)
    peer_closed(s, st);
}

/* Handles a complete header. Sets up payload delivery for data frames. */
static int frame(tunnel__ymx *s) {
  const uint8_t *h = s->hdr;
  uint8_t version = h[0], type = h[1];
  uint16_t flags = tunnel__be16(h + 2);
  uint32_t id = tunnel__be32(h + 4);
  uint32_t length = tunnel__be32(h + 8);

  if (version != 0)
    return fail(s, TUNNEL_EPROTO, "unsupported version");

  switch (type) {
  case TUNNEL__YMX_PING:
    if (id != 0)
      return fail(s, TUNNEL_EPROTO, "ping on a stream");
    if (flags & TUNNEL__YMX_SYN) {
      int rc = emit_reply(s, TUNNEL__YMX_PING, TUNNEL__YMX_ACK, 0, length);
      return rc ? fail(s, rc, "ping replies piling up") : 0;
    }
    if (s->cb.on_ping)
      s->cb.on_ping(s, length, s->ud);
    return s->error;
  case TUNNEL__YMX_GOAWAY:
    if (id != 0)
      return fail(s, TUNNEL_EPROTO, "go away on a stream");
    s->remote_goaway = 1;
    if (s->cb.on_goaway)
      s->cb.on_goaway(s, length, s->ud);
    return s->error;
  case TUNNEL__YMX_DATA:
  case TUNNEL__YMX_WINDOW_UPDATE:
    break;
  default:
    return fail(s, TUNNEL_EPROTO, "unknown frame type");
  }

  if (id == 0)
    return fail(s, TUNNEL_EPROTO, "stream frame on stream 0");

  int is_data = type == TUNNEL__YMX_DATA;
  ymx_stream *st;
  if (flags & TUNNEL__YMX_SYN) {
    int err = 0;
    st = incoming(s, id, &err);
    if (err)
      return err;
  } else {
    st = find(s, id);
    if (!st) {
      /* Never opened: misuse. Opened and since closed: a frame that crossed
       * our RST or FIN in flight, which is legal and dropped. */
      int unopened = is_peer_id(s, id) ? id > s->last_peer_id
                                       : id >= s->next_id;
      if (unopened)
        return fail(s, TUNNEL_EPROTO, "frame for a stream never opened");
    }
  }

  if (st && (flags & TUNNEL__YMX_ACK) && !st->acked && !is_peer_id(s, id)) {
    st->acked = 1;
    if (s->cb.on_ack)
      s->cb.on_ack(s, id, st->user, s->ud);
    if (s->error)
      return s->error;
    st = find(s, id);
  }

  if (st && (flags & TUNNEL__YMX_RST)) {
    on_rst(s, st);
    st = NULL;
    if (s->error)
      return s->error;
  }

  if (!is_data) {
    if (st && length) {
      if ((uint64_t)st->send_window + length > UINT32_MAX)
        return fail(s, TUNNEL_EPROTO, "send window overflow");
      st->send_window += length;
      if (!st->local_fin && s->cb.on_window) {
        s->cb.on_window(s, id, st->user, s->ud);
        if (s->error)
          return s->error;
        st = find(s, id);
      }
    }
    if (st && (flags & TUNNEL__YMX_FIN))
      return on_fin(s, st);
    return 0;
  }

  if (st && length) {
    if (st->remote_fin)
      return fail(s, TUNNEL_EPROTO, "data after FIN");
    if (length > st->recv_window)
      return fail(s, TUNNEL_EPROTO, "data beyond the receive window");
    st->recv_window -= length;
  }
  s->payload_left = length;
  s->payload_id = st ? id : 0;
  s->payload_flags = st ? flags : 0;
  if (length == 0 && st && (flags & TUNNEL__YMX_FIN))
    return on_fin(s, st);
  return 0;
}

static int payload(tunnel__ymx *s, const uint8_t *p, size_t n) {
  s->payload_left -= (uint32_t)n;
  ymx_stream *st = s->payload_id ? find(s, s->payload_id) : NULL;
  if (st) {
    st->unconsumed += (uint32_t)n; /* only what was delivered can be consumed */
    held_add(s, n);
  }
  if (st && s->cb.on_data) {
    s->cb.on_data(s, st->id, st->user, p, n, s->ud);
    if (s->error)
      return s->error;
    st = s->payload_left ? NULL : find(s, s->payload_id);
  }
  if (s->payload_left == 0) {
    if (st && (s->payload_flags & TUNNEL__YMX_FIN))
      return on_fin(s, st);
  }
  return 0;
}

int tunnel__ymx_recv(tunnel__ymx *s, const uint8_t *data, size_t len) {
  if (s->error)
    return s->error;
  while (len) {
    if (s->payload_left) {
      size_t n = len < s->payload_left ? len : s->payload_left;
      int rc = payload(s, data, n);
      data += n;
      len -= n;
      if (rc)
        return rc;
      continue;
    }
    size_t need = TUNNEL__YMX_HEADER_SIZE - s->hdr_len;
    size_t n = len < need ? len : need;
    memcpy(s->hdr + s->hdr_len, data, n);
    s->hdr_len += n;
    data += n;
    len -= n;
    if (s->hdr_len < TUNNEL__YMX_HEADER_SIZE)
      break;
    s->hdr_len = 0;
    int rc = frame(s);
    if (rc)
      return rc;
  }
  return s->error;
}

/* ------------------------------------------------------------- output */

size_t tunnel__ymx_out_pending(const tunnel__ymx *s) { return s->out.size; }

size_t tunnel__ymx_out_iov(const tunnel__ymx *s, tunnel__iov *iov,
                           size_t max) {
  return tunnel__bufq_iov(&s->out, iov, max);
}

void tunnel__ymx_out_consume(tunnel__ymx *s, size_t n) {
  tunnel__bufq_consume(&s->out, n);
  if (s->out.size == 0)
    s->backlog = 0;
}

/* -------------------------------------------------------- application */

static int usable(const tunnel__ymx *s, uint32_t id, ymx_stream **st) {
  if (s->error)
    return s->error;
  *st = find(s, id);
  return *st ? 0 : TUNNEL_ECLOSED;
}

int tunnel__ymx_open(tunnel__ymx *s, void *stream_user, uint32_t *id_out) {
  if (!s || !id_out)
    return TUNNEL_EINVAL;
  if (s->error)
    return s->error;
  if (s->local_goaway || s->remote_goaway)
    return TUNNEL_EGOAWAY;
  if (s->nstreams >= s->max_streams)
    return TUNNEL_ELIMIT;
  if (s->next_id > UINT32_MAX - 2)
    return TUNNEL_ELIMIT; /* ids exhausted: the session must be replaced */
  uint32_t id = s->next_id;
  ymx_stream *st = stream_add(s, id, stream_user);
  if (!st)
    return TUNNEL_ENOMEM;
  int rc = open_grant(s, st, TUNNEL__YMX_SYN, 0);
  if (rc) {
    stream_remove(s, st);
    return rc;
  }
  s->next_id += 2;
  *id_out = id;
  return 0;
}

int tunnel__ymx_set_user(tunnel__ymx *s, uint32_t id, void *stream_user) {
  ymx_stream *st;
  int rc = usable(s, id, &st);
  if (rc == 0)
    st->user = stream_user;
  return rc;
}

int tunnel__ymx_write(tunnel__ymx *s, uint32_t id, const uint8_t *data,
                      size_t len, size_t *written) {
  ymx_stream *st;
  *written = 0;
  int rc = usable(s, id, &st);
  if (rc)
    return rc;
  if (st->local_fin)
    return TUNNEL_ESTATE;
  while (len && st->send_window) {
    size_t n = len;
    if (n > st->send_window)
      n = st->send_window;
    if (n > MAX_DATA_FRAME)
      n = MAX_DATA_FRAME;
    uint8_t h[TUNNEL__YMX_HEADER_SIZE];
    h[0] = 0;
    h[1] = TUNNEL__YMX_DATA;
    tunnel__put16(h + 2, 0);
    tunnel__put32(h + 4, id);
    tunnel__put32(h + 8, (uint32_t)n);
    tunnel__iov v[2] = {{h, sizeof h}, {data, n}};
    if ((rc = tunnel__bufq_appendv(&s->out, v, 2)) != 0)
      return *written ? 0 : rc;
    st->send_window -= (uint32_t)n;
    data += n;
    len -= n;
    *written += n;
  }
  return 0;
}

int tunnel__ymx_frame_data(tunnel__ymx *s, uint32_t id, size_t len,
                           uint8_t hdr[TUNNEL__YMX_HEADER_SIZE], size_t *n) {
  ymx_stream *st;
  *n = 0;
  int rc = usable(s, id, &st);
  if (rc)
    return rc;
  if (st->local_fin)
    return TUNNEL_ESTATE;
  if (s->out.size)
    return TUNNEL_ESTATE; /* the frame would overtake queued bytes */
  size_t k = len;
  if (k > st->send_window)
    k = st->send_window;
  if (k > MAX_DATA_FRAME)
    k = MAX_DATA_FRAME;
  if (k == 0)
    return 0;
  hdr[0] = 0;
  hdr[1] = TUNNEL__YMX_DATA;
  tunnel__put16(hdr + 2, 0);
  tunnel__put32(hdr + 4, id);
  tunnel__put32(hdr + 8, (uint32_t)k);
  st->send_window -= (uint32_t)k;
  *n = k;
  return 0;
}

int tunnel__ymx_out_push(tunnel__ymx *s, const tunnel__iov *v, size_t n) {
  return tunnel__bufq_appendv(&s->out, v, n);
}

int64_t tunnel__ymx_send_window(const tunnel__ymx *s, uint32_t id) {
  ymx_stream *st;
  int rc = usable(s, id, &st);
  if (rc)
    return rc;
  return st->local_fin ? 0 : st->send_window;
}

int tunnel__ymx_consumed(tunnel__ymx *s, uint32_t id, size_t n) {
  ymx_stream *st;
  int rc = usable(s, id, &st);
  if (rc)
    return rc;
  if (n > st->unconsumed)
    return TUNNEL_EINVAL;
  st->unconsumed -= (uint32_t)n;
  held_sub(s, n);
  release(s, n);
  if (st->remote_fin)
    return 0; /* the peer sends nothing more: no window to reopen */
  st->credit += (uint32_t)n;
  if ((rc = grant(s, st)) != 0) {
    /* Undone, so the call may be retried. */
    st->credit -= (uint32_t)n;
    st->unconsumed += (uint32_t)n;
    held_add(s, n);
    hold(s, n);
  }
  return rc;
}

void tunnel__ymx_regrant(tunnel__ymx *s) {
  if (s->error)
    return;
  /* Each call starts one bucket further on, so budget freed a little at a
   * time does not always go to the same streams. */
  uint32_t first = s->regrant_from & (s->nbuckets - 1);
  for (uint32_t k = 0; k < s->nbuckets; k++) {
    uint32_t b = (first + k) & (s->nbuckets - 1);
    for (ymx_stream *st = s->buckets[b]; st; st = st->next) {
      if (st->remote_fin || !st->credit)
        continue;
      if (grant(s, st) != 0)
        return; /* out of memory: the credit waits for the next call */
    }
  }
  s->regrant_from = first + 1;
}

uint64_t tunnel__ymx_buffered(const tunnel__ymx *s) { return s->buffered; }

int tunnel__ymx_shutdown(tunnel__ymx *s, uint32_t id) {
  ymx_stream *st;
  int rc = usable(s, id, &st);
  if (rc)
    return rc;
  if (st->local_fin)
    return TUNNEL_ESTATE;
  if ((rc = emit(s, TUNNEL__YMX_WINDOW_UPDATE, TUNNEL__YMX_FIN, id, 0)) != 0)
    return rc;
  st->local_fin = 1;
  if (st->remote_fin) {
    stream_remove(s, st);
    return 1;
  }
  return 0;
}

int tunnel__ymx_reset(tunnel__ymx *s, uint32_t id) {
  ymx_stream *st;
  int rc = usable(s, id, &st);
  if (rc)
    return rc;
  if ((rc = emit(s, TUNNEL__YMX_WINDOW_UPDATE, TUNNEL__YMX_RST, id, 0)) != 0)
    return rc;
  stream_remove(s, st);
  return 1;
}

int tunnel__ymx_ping(tunnel__ymx *s, uint32_t opaque) {
  if (s->error)
    return s->error;
  return emit(s, TUNNEL__YMX_PING, TUNNEL__YMX_SYN, 0, opaque);
}

int tunnel__ymx_goaway(tunnel__ymx *s, uint32_t code) {
  if (s->error)
    return s->error;
  if (s->local_goaway)
    return TUNNEL_ESTATE;
  int rc = emit(s, TUNNEL__YMX_GOAWAY, 0, 0, code);
  if (rc == 0)
    s->local_goaway = 1;
  return rc;
}

void tunnel__ymx_set_max_streams(tunnel__ymx *s, uint32_t n) {
  s->max_streams = n ? n : 1;
}

uint32_t tunnel__ymx_stream_count(const tunnel__ymx *s) { return s->nstreams; }

int tunnel__ymx_error(const tunnel__ymx *s) { return s->error; }

int tunnel__ymx_remote_goaway(const tunnel__ymx *s) { return s->remote_goaway; }
