#include "mux.h"

#include <string.h>

#include "../log.h"
#include "handle.h"
#include "link.h"
#include "stream.h"
#include "uverr.h"

/* Output queue marks: above HIGH streams stop handing data to the session;
 * below LOW they resume. They bound memory per session whatever the number
 * of streams or the size of their windows. */
#define OUT_HIGH (2u * 1024u * 1024u)
#define OUT_LOW (512u * 1024u)
#define MAX_IOV 64
/* Writes up to this size are queued and leave together at the end of the
 * loop iteration: under load one writev carries the frames of every
 * stream that had something to say, instead of one syscall each. Larger
 * ones go to the socket at once, header and payload uncopied. */
#define COALESCE_MAX (16u * 1024u)

struct tunnel__mux {
  uv_tcp_t *tcp;       /* until started: then the link owns it */
  tunnel__link *link;  /* from start */
  tunnel__link_wreq wreq;
  uv_loop_t *loop;
  tunnel__sched *sched;
  tunnel__mem mem;
  const tunnel__mem *stream_mem; /* the owner's: streams outlive the mux */
  tunnel__logger log;
  tunnel__ymx *ymx;
  tunnel__mux_callbacks cb;
  void *ud;

  uint64_t last_rx;
  size_t inflight; /* bytes of the write in progress */
  int writing;
  int started;
  int ended;   /* on_end fired or suppressed */
  int closing; /* tunnel__mux_close called */
  int end_err;

  tunnel_stream *streams; /* all live streams */
  tunnel_stream *blocked; /* waiting for output room */
  tunnel__task flush_task;
  tunnel__task end_task;
};

#define CONTAINER(ptr, type, field)                                            \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

static void flush(tunnel__mux *m);
static void end(tunnel__mux *m, int err);

/* ------------------------------------------------------ yamux callbacks */

static int y_stream(tunnel__ymx *y, uint32_t id, void **su, void *ud) {
  tunnel__mux *m = ud;
  (void)y;
  if (m->closing || !m->cb.on_stream)
    return TUNNEL_EREFUSED;
  tunnel_stream *st = tunnel__stream_new(m, m->sched, m->stream_mem, id);
  if (!st)
    return TUNNEL_ENOMEM;
  st->next = m->streams;
  if (m->streams)
    m->streams->prev = st;
  m->streams = st;
  *su = st;
  m->cb.on_stream(m, st, m->ud);
  return 0;
}

static void y_data(tunnel__ymx *y, uint32_t id, void *su, const uint8_t *d,
                   size_t n, void *ud) {
  (void)y, (void)id, (void)ud;
  if (su)
    tunnel__stream_on_data(su, d, n);
}

static void y_fin(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  (void)y, (void)id, (void)ud;
  if (su)
    tunnel__stream_on_fin(su);
}

static void y_rst(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  (void)y, (void)id, (void)ud;
  if (su)
    tunnel__stream_on_fail(su, TUNNEL_ERESET);
}

static void y_window(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  (void)y, (void)id, (void)ud;
  if (su)
    tunnel__stream_pump(su);
}

static void y_close(tunnel__ymx *y, uint32_t id, void *su, void *ud) {
  (void)y, (void)id, (void)ud;
  if (su)
    tunnel__stream_on_forgotten(su);
}

static void y_ping(tunnel__ymx *y, uint32_t opaque, void *ud) {
  tunnel__mux *m = ud;
  (void)y;
  if (m->cb.on_ping && !m->closing)
    m->cb.on_ping(m, opaque, m->ud);
}

static void y_goaway(tunnel__ymx *y, uint32_t code, void *ud) {
  tunnel__mux *m = ud;
  (void)y;
  /* A normal GoAway only stops new streams; an error one ends the session,
   * as the peer will not process anything more. */
  if (code != TUNNEL__YMX_GOAWAY_NORMAL)
    end(m, TUNNEL_EPROTO);
}

static const tunnel__ymx_callbacks ymx_cb = {
    y_stream, NULL, y_data, y_fin, y_rst, y_window, y_close, y_ping, y_goaway};

/* ---------------------------------------------------------------- life */

int tunnel__mux_new(tunnel__mux **out, uv_loop_t *loop, tunnel__sched *sched,
                    const struct tunnel_config *cfg, int is_client,
                    uv_tcp_t *tcp, const tunnel__mux_callbacks *cb, void *ud) {
  return tunnel__mux_new_budgeted(out, loop, sched, cfg, is_client, tcp, NULL,
                                  cb, ud);
}

int tunnel__mux_new_budgeted(tunnel__mux **out, uv_loop_t *loop,
                             tunnel__sched *sched,
                             const struct tunnel_config *cfg, int is_client,
                             uv_tcp_t *tcp, struct tunnel__ymx_budget *shared,
                             const tunnel__mux_callbacks *cb, void *ud) {
  *out = NULL;
  tunnel__mux *m = tunnel__calloc(&cfg->mem, 1, sizeof *m);
  if (!m) {
    if (tcp)
      tunnel__tcp_close_free(&cfg->mem, tcp);
    return TUNNEL_ENOMEM;
  }
  m->mem = cfg->mem;
  m->stream_mem = &cfg->mem;
  m->log = cfg->log;
  m->loop = loop;
  m->sched = sched;
  m->cb = *cb;
  m->ud = ud;
  tunnel__ymx_config yc = {is_client, cfg->max_streams, cfg->stream_window,
                           cfg->max_control_backlog, &m->mem, &m->log,
                           cfg->session_buffer, shared};
  int rc = tunnel__ymx_new(&m->ymx, &yc, &ymx_cb, m);
  if (rc) {
    tunnel__free(&m->mem, m);
    if (tcp)
      tunnel__tcp_close_free(&cfg->mem, tcp);
    return rc;
  }
  m->tcp = tcp;
  *out = m;
  return 0;
}

uv_tcp_t *tunnel__mux_tcp(tunnel__mux *m) { return m->tcp; }

tunnel__link *tunnel__mux_link(tunnel__mux *m) { return m->link; }

tunnel__ymx *tunnel__mux_session(tunnel__mux *m) { return m->ymx; }

uint64_t tunnel__mux_last_rx(const tunnel__mux *m) { return m->last_rx; }

void tunnel__mux_set_max_streams(tunnel__mux *m, uint32_t n) {
  tunnel__ymx_set_max_streams(m->ymx, n);
}

uint32_t tunnel__mux_stream_count(const tunnel__mux *m) {
  return tunnel__ymx_stream_count(m->ymx);
}

static void fail_streams(tunnel__mux *m, int err) {
  /* Streams outlive the session: detach them so their owners can still
   * close them. */
  while (m->streams) {
    tunnel_stream *st = m->streams;
    m->streams = st->next;
    st->prev = st->next = NULL;
    st->mux = NULL;
    st->blocked = 0;
    tunnel__stream_on_fail(st, err);
  }
  m->blocked = NULL;
}

static void end_task(tunnel__task *t) {
  tunnel__mux *m = CONTAINER(t, tunnel__mux, end_task);
  if (!m->closing && m->cb.on_end)
    m->cb.on_end(m, m->end_err, m->ud);
}

/* Ends the session once: streams fail now, on_end fires from the loop. */
static void end(tunnel__mux *m, int err) {
  if (m->ended)
    return;
  m->ended = 1;
  m->end_err = err;
  tunnel__log(&m->log, TUNNEL_LOG_DEBUG, "mux: session ended: %s",
              tunnel_err_name(err));
  if (m->link)
    tunnel__link_read_stop(m->link);
  fail_streams(m, err == TUNNEL_EEOF ? TUNNEL_ECONNRESET : err);
  tunnel__sched_post(m->sched, &m->end_task, end_task);
}

static void release(tunnel__mux *m) {
  tunnel__ymx_free(m->ymx);
  tunnel__mem mem = m->mem;
  tunnel__free(&mem, m);
}

static void link_closed_cb(tunnel__link *l, int status, void *ud) {
  (void)l, (void)status;
  release(ud);
}

void tunnel__mux_close(tunnel__mux *m) {
  if (!m || m->closing)
    return;
  m->closing = 1;
  m->ended = 1;
  tunnel__sched_cancel(m->sched, &m->flush_task);
  tunnel__sched_cancel(m->sched, &m->end_task);
  /* ECANCELED stays the stream owner's own close; for its streams the
   * session is simply gone. */
  fail_streams(m, TUNNEL_ECLOSED);
  /* A pending write completes with TUNNEL_ECANCELED before the link's
   * close callback. */
  if (m->link) {
    tunnel__link_close(m->link, 0, link_closed_cb, m);
  } else {
    if (m->tcp)
      tunnel__tcp_close_free(&m->mem, m->tcp);
    release(m);
  }
}

/* ------------------------------------------------------------- reading */

static void feed(tunnel__mux *m, const uint8_t *data, size_t n) {
  int rc = tunnel__ymx_recv(m->ymx, data, n);
  if (rc)
    tunnel__log(&m->log, TUNNEL_LOG_WARN, "mux: closing session: %s",
                tunnel_strerror(rc));
  /* Replies and window updates leave with the iteration's other frames;
   * the GoAway on error at once, before the transport goes. */
  if (rc) {
    flush(m);
    end(m, rc);
  } else if (tunnel__ymx_out_pending(m->ymx)) {
    tunnel__mux_flush_soon(m);
  }
}

/* The session consumes each read synchronously and streams copy what
 * they cannot deliver at once: the link's buffer is reused at once. */
static void read_cb(tunnel__link *l, int status, const uint8_t *data,
                    size_t n, void *ud) {
  tunnel__mux *m = ud;
  (void)l;
  if (status == 0) {
    m->last_rx = uv_now(m->loop);
    feed(m, data, n);
  } else {
    end(m, status);
  }
}

int tunnel__mux_start_on(tunnel__mux *m, tunnel__link *link,
                         const uint8_t *prefix, size_t len) {
  if (m->started || (m->tcp && link->tcp != m->tcp))
    return TUNNEL_ESTATE;
  m->started = 1;
  m->link = link;
  m->tcp = NULL;
  m->last_rx = uv_now(m->loop);
  tunnel__link_read_start(m->link, read_cb, m);
  if (len)
    feed(m, prefix, len);
  flush(m);
  return 0;
}

int tunnel__mux_start(tunnel__mux *m, const uint8_t *prefix, size_t len) {
  if (m->started)
    return TUNNEL_ESTATE;
  tunnel__link *link;
  uv_tcp_t *tcp = m->tcp;
  /* The link owns the handle from now on, also when this fails. */
  m->tcp = NULL;
  int rc = tunnel__link_new_tcp(&link, m->sched, &m->mem, tcp);
  if (rc) {
    m->started = 1;
    m->ended = 1;
    return rc;
  }
  m->tcp = tcp;
  return tunnel__mux_start_on(m, link, prefix, len);
}

/* ------------------------------------------------------------- writing */

static void wake_blocked(tunnel__mux *m) {
  while (m->blocked && tunnel__mux_has_room(m)) {
    tunnel_stream *st = m->blocked;
    m->blocked = st->blocked_next;
    st->blocked_next = NULL;
    st->blocked = 0;
    tunnel__stream_pump(st);
  }
}

static void write_cb(tunnel__link_wreq *req, int status) {
  tunnel__mux *m = CONTAINER(req, tunnel__mux, wreq);
  m->writing = 0;
  if (m->closing)
    return;
  tunnel__ymx_out_consume(m->ymx, m->inflight);
  m->inflight = 0;
  if (status < 0) {
    end(m, status);
    return;
  }
  flush(m);
  wake_blocked(m);
}

static void flush(tunnel__mux *m) {
  if (m->writing || m->closing || !m->started)
    return;
  if (m->ended && !tunnel__ymx_error(m->ymx))
    return; /* transport gone; an error GoAway is still worth a try */
  while (tunnel__ymx_out_pending(m->ymx)) {
    tunnel__iov iov[MAX_IOV];
    uv_buf_t bufs[MAX_IOV];
    size_t n = tunnel__ymx_out_iov(m->ymx, iov, MAX_IOV);
    size_t total = tunnel__link_bufs(iov, n, bufs);
    /* Try the cheap path first: most writes complete at once. */
    int w = tunnel__link_try_write(m->link, bufs, (unsigned)n);
    if (w > 0) {
      tunnel__ymx_out_consume(m->ymx, (size_t)w);
      if ((size_t)w == total)
        continue;
    } else if (w < 0) {
      end(m, w);
      return;
    }
    n = tunnel__ymx_out_iov(m->ymx, iov, MAX_IOV);
    total = tunnel__link_bufs(iov, n, bufs);
    int rc = tunnel__link_write(&m->wreq, m->link, bufs, (unsigned)n,
                                write_cb);
    if (rc) {
      end(m, rc);
      return;
    }
    m->writing = 1;
    m->inflight = total;
    return;
  }
  wake_blocked(m);
}

int tunnel__mux_send(tunnel__mux *m, uint32_t id, const uint8_t *data,
                     size_t len, size_t *done) {
  tunnel__ymx *y = m->ymx;
  *done = 0;
  while (len > COALESCE_MAX && !m->writing && m->started && !m->ended &&
         tunnel__ymx_out_pending(y) == 0) {
    uint8_t hdr[TUNNEL__YMX_HEADER_SIZE];
    size_t n;
    int rc = tunnel__ymx_frame_data(y, id, len, hdr, &n);
    if (rc)
      return *done ? 0 : rc;
    if (n == 0)
      return 0; /* window closed */
    uv_buf_t b[2] = {uv_buf_init((char *)hdr, sizeof hdr),
                     uv_buf_init((char *)data, (unsigned)n)};
    int w = tunnel__link_try_write(m->link, b, 2);
    size_t sent = w > 0 ? (size_t)w : 0;
    *done += n;
    if (sent < sizeof hdr + n) {
      /* The frame is committed: queue what did not go out, in order. */
      tunnel__iov rest[2];
      size_t k = 0;
      if (sent < sizeof hdr)
        rest[k++] = (tunnel__iov){hdr + sent, sizeof hdr - sent};
      size_t poff = sent > sizeof hdr ? sent - sizeof hdr : 0;
      rest[k++] = (tunnel__iov){data + poff, n - poff};
      if (tunnel__ymx_out_push(y, rest, k) != 0) {
        /* A torn frame cannot be recovered: the session is over. */
        end(m, TUNNEL_ENOMEM);
        return 0;
      }
      if (w < 0) {
        end(m, w);
        return 0;
      }
      flush(m);
      /* The rest of the window goes behind it now: left for later, it
       * would wait for a window update that a short send never earns. */
      data += n;
      len -= n;
      break;
    }
    data += n;
    len -= n;
  }
  if (!len)
    return 0;
  /* Something is queued or being written: go behind it. */
  size_t q = 0;
  int rc = tunnel__ymx_write(y, id, data, len, &q);
  *done += q;
  if (q)
    tunnel__mux_flush_soon(m);
  return *done ? 0 : rc;
}

static void flush_task(tunnel__task *t) {
  flush(CONTAINER(t, tunnel__mux, flush_task));
}

void tunnel__mux_flush_soon(tunnel__mux *m) {
  if (!m->writing && !m->closing)
    tunnel__sched_post(m->sched, &m->flush_task, flush_task);
}

int tunnel__mux_has_room(const tunnel__mux *m) {
  return tunnel__ymx_out_pending(m->ymx) < (m->blocked ? OUT_LOW : OUT_HIGH);
}

void tunnel__mux_wait_room(tunnel__mux *m, tunnel_stream *st) {
  if (st->blocked)
    return;
  st->blocked = 1;
  st->blocked_next = NULL;
  tunnel_stream **pp = &m->blocked;
  while (*pp)
    pp = &(*pp)->blocked_next;
  *pp = st;
}

void tunnel__mux_detach(tunnel__mux *m, tunnel_stream *st) {
  if (st->blocked) {
    tunnel_stream **pp = &m->blocked;
    while (*pp && *pp != st)
      pp = &(*pp)->blocked_next;
    if (*pp)
      *pp = st->blocked_next;
    st->blocked = 0;
  }
  if (st->prev)
    st->prev->next = st->next;
  else if (m->streams == st)
    m->streams = st->next;
  if (st->next)
    st->next->prev = st->prev;
  st->prev = st->next = NULL;
  st->mux = NULL;
}

/* ---------------------------------------------------------- operations */

int tunnel__mux_open(tunnel__mux *m, tunnel_stream **out) {
  if (m->ended || m->closing)
    return TUNNEL_ECLOSED;
  uint32_t id;
  int rc = tunnel__ymx_open(m->ymx, NULL, &id);
  if (rc)
    return rc;
  tunnel_stream *st = tunnel__stream_new(m, m->sched, m->stream_mem, id);
  if (!st) {
    tunnel__ymx_reset(m->ymx, id);
    tunnel__mux_flush_soon(m);
    return TUNNEL_ENOMEM;
  }
  tunnel__ymx_set_user(m->ymx, id, st);
  st->next = m->streams;
  if (m->streams)
    m->streams->prev = st;
  m->streams = st;
  tunnel__mux_flush_soon(m);
  *out = st;
  return 0;
}

int tunnel__mux_ping(tunnel__mux *m, uint32_t opaque) {
  if (m->ended || m->closing)
    return TUNNEL_ECLOSED;
  int rc = tunnel__ymx_ping(m->ymx, opaque);
  if (rc == 0)
    tunnel__mux_flush_soon(m);
  return rc;
}

void tunnel__mux_regrant(tunnel__mux *m) {
  if (m->ended || m->closing)
    return;
  tunnel__ymx_regrant(m->ymx);
  if (tunnel__ymx_out_pending(m->ymx))
    tunnel__mux_flush_soon(m);
}

int tunnel__mux_goaway(tunnel__mux *m) {
  if (m->ended || m->closing)
    return TUNNEL_ECLOSED;
  int rc = tunnel__ymx_goaway(m->ymx, TUNNEL__YMX_GOAWAY_NORMAL);
  if (rc == 0)
    tunnel__mux_flush_soon(m);
  return rc;
}
