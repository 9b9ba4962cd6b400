/* TLS links: the sans-I/O engine (lib/tls.c) between the owner and the
 * socket. Writes are encrypted as room allows (a bounded ciphertext queue),
 * so a large or queued write never becomes a large copy; reading stops
 * while the owner does not read, leaving records undecrypted in the
 * engine. */
#include <string.h>

#include "../tls.h"
#include "handle.h"
#include "link.h"
#include "uverr.h"

#define READ_BUF (64u * 1024u)
/* One record's plaintext at most. */
#define PLAIN_BUF (16u * 1024u)
/* Ciphertext queued beyond what the socket took: enough to keep it busy,
 * small enough to bound memory per connection. */
#define OUT_HIGH (256u * 1024u)
/* Plaintext encrypted per engine call. */
#define ENCRYPT_STEP (64u * 1024u)
/* The largest plaintext of one record. */
#define RECORD_MAX 16384u
#define MAX_IOV 16

typedef struct tls_link {
  tunnel__link l;
  tunnel__tls *tls;
  uint8_t *pbuf;
  /* Plaintext gathered into one record: a frame header and the frames of
   * several streams share a record instead of one each (a record costs a
   * header, a tag and a cipher setup). Empty between calls. */
  uint8_t *stage;
  size_t stage_len;
  int uv_reading;
  int established;
  int tcp_eof;   /* the socket ended (with or without close_notify) */
  int marker;    /* frp's 0x17 still to send, ahead of the ClientHello */
  int pending_input; /* the engine may hold records not yet read */
  tunnel__task task;
  /* Ciphertext accounting: `sent` bytes reached the socket ever. */
  uint64_t sent;
  size_t inflight;
  int sock_writing;
  uv_write_t sreq;
  uint8_t marker_byte;
  tunnel__link_wreq *head, *tail; /* write requests, in order */
  /* Shutdown: close_notify once every request is encrypted, then the
   * FIN once it reached the socket. */
  int shut_wanted;
  int notify_queued;
  uint64_t notify_end;
  int fin_started;
} tls_link;

#define T(l) ((tls_link *)(l))

static void flush_sock(tls_link *t);
static void pump(tls_link *t);

/* --------------------------------------------------------- failures */

static void complete_reqs(tls_link *t, int status) {
  while (t->head && !t->l.closing &&
         (status || (t->head->encrypted && t->head->end <= t->sent))) {
    tunnel__link_wreq *r = t->head;
    t->head = r->next;
    if (!t->head)
      t->tail = NULL;
    if (r->bufs != r->small)
      tunnel__free(&t->l.mem, r->bufs);
    r->bufs = NULL;
    r->cb(r, status);
  }
}

static void task_cb(tunnel__task *task);

/* The link failed: pending writes, a pending shutdown and the reader learn
 * it from the loop (as with libuv, no callback runs inside the call that
 * caused it). */
static void fail(tls_link *t, int err) {
  tunnel__link *l = &t->l;
  if (l->error)
    return;
  l->error = err;
  uv_read_stop((uv_stream_t *)l->tcp);
  t->uv_reading = 0;
  tunnel__sched_post(l->sched, &t->task, task_cb);
}

/* Tells the waiting requests and the shutdown of a failure. */
static void settle_failure(tls_link *t) {
  tunnel__link *l = &t->l;
  complete_reqs(t, l->error);
  if (l->shut_cb && !l->closing && !t->fin_started) {
    tunnel__link_done_cb cb = l->shut_cb;
    l->shut_cb = NULL;
    cb(l, l->error, l->shut_ud);
  }
}

/* --------------------------------------------------------- writing */

static void sock_write_cb(uv_write_t *req, int status) {
  tls_link *t = req->data;
  t->sock_writing = 0;
  if (t->l.closing)
    return;
  if (status < 0) {
    fail(t, tunnel__uv_err(status));
    return;
  }
  tunnel__tls_out_consume(t->tls, t->inflight);
  t->sent += t->inflight;
  t->inflight = 0;
  pump(t);
  complete_reqs(t, 0);
  if (!t->l.closing && !t->l.error)
    pump(t); /* callbacks may have written more */
}

static void shut_cb(uv_shutdown_t *req, int status) {
  tunnel__link *l = req->data;
  tunnel__link_done_cb cb = l->shut_cb;
  l->shut_cb = NULL;
  if (cb && !l->closing)
    cb(l, status == 0 ? 0 : tunnel__uv_err(status), l->shut_ud);
}

/* The iovecs of what is to send: frp's marker first while it is pending,
 * then the engine's queue. Returns the engine's bytes among them. */
static size_t out_bufs(tls_link *t, uv_buf_t *bufs, unsigned *n) {
  tunnel__iov iov[MAX_IOV];
  size_t k = tunnel__tls_out_iov(t->tls, iov, MAX_IOV);
  unsigned m = 0;
  if (t->marker)
    bufs[m++] = uv_buf_init((char *)&t->marker_byte, 1);
  *n = m + (unsigned)k;
  return tunnel__link_bufs(iov, k, bufs + m);
}

/* Hands queued ciphertext to the socket: at once what it takes, the rest
 * through one uv_write at a time. */
static void flush_sock(tls_link *t) {
  tunnel__link *l = &t->l;
  while (!t->sock_writing && !l->closing && !l->error) {
    uv_buf_t bufs[MAX_IOV + 1];
    unsigned n;
    size_t total = out_bufs(t, bufs, &n);
    if (total == 0 && !t->marker)
      return;
    int w = uv_try_write((uv_stream_t *)l->tcp, bufs, n);
    if (w < 0 && w != UV_EAGAIN && w != UV_ENOSYS) {
      fail(t, tunnel__uv_err(w));
      return;
    }
    size_t done = w > 0 ? (size_t)w : 0;
    if (t->marker && done) {
      t->marker = 0;
      done--;
    }
    tunnel__tls_out_consume(t->tls, done);
    t->sent += done;
    if (w > 0 && done == total && !t->marker)
      continue;
    /* The socket is full: one request for the rest. */
    total = out_bufs(t, bufs, &n);
    t->sreq.data = t;
    int rc = uv_write(&t->sreq, (uv_stream_t *)l->tcp, bufs, n,
                      sock_write_cb);
    if (rc) {
      fail(t, tunnel__uv_err(rc));
      return;
    }
    t->marker = 0; /* in this request, if it was pending */
    t->sock_writing = 1;
    t->inflight = total; /* the engine's bytes only */
  }
}

static int stage_flush(tls_link *t) {
  if (!t->stage_len)
    return 0;
  size_t taken;
  int rc = tunnel__tls_write(t->tls, t->stage, t->stage_len, &taken);
  t->stage_len = 0;
  return rc;
}

/* Takes up to `n` bytes for encryption, fewer when the ciphertext queue is
 * full (*took). Whole records go straight to the engine; pieces gather in
 * the stage, which the caller flushes before it returns. */
static int seal(tls_link *t, const uint8_t *p, size_t n, size_t *took) {
  *took = 0;
  while (n && tunnel__tls_out_pending(t->tls) < OUT_HIGH) {
    size_t k;
    if (t->stage_len == 0 && n >= RECORD_MAX) {
      size_t len = n - n % RECORD_MAX;
      if (len > ENCRYPT_STEP)
        len = ENCRYPT_STEP;
      int rc = tunnel__tls_write(t->tls, p, len, &k);
      if (rc)
        return rc;
      k = len;
    } else {
      k = RECORD_MAX - t->stage_len;
      if (k > n)
        k = n;
      memcpy(t->stage + t->stage_len, p, k);
      t->stage_len += k;
      if (t->stage_len == RECORD_MAX) {
        int rc = stage_flush(t);
        if (rc)
          return rc;
      }
    }
    p += k;
    n -= k;
    *took += k;
  }
  return 0;
}

/* Encrypts request bytes while the ciphertext queue has room. */
static int encrypt_reqs(tls_link *t) {
  int rc = 0;
  for (tunnel__link_wreq *r = t->head; r && rc == 0; r = r->next) {
    if (r->encrypted)
      continue;
    while (r->idx < r->nbufs) {
      const uv_buf_t *b = &r->bufs[r->idx];
      size_t took = 0;
      rc = seal(t, (const uint8_t *)b->base + r->off, b->len - r->off, &took);
      if (rc)
        break;
      r->off += took;
      if (r->off < b->len)
        break; /* the queue is full */
      r->idx++;
      r->off = 0;
    }
    if (rc || r->idx < r->nbufs)
      break;
    if ((rc = stage_flush(t)) != 0)
      break;
    r->encrypted = 1;
    r->end = t->sent + tunnel__tls_out_pending(t->tls);
  }
  int frc = stage_flush(t);
  return rc ? rc : frc;
}

static int has_unencrypted(const tls_link *t) {
  for (const tunnel__link_wreq *r = t->head; r; r = r->next)
    if (!r->encrypted)
      return 1;
  return 0;
}

/* Moves everything forward: encryption, the socket, the shutdown. Write
 * requests that are done complete from the loop (settled by the caller in
 * a callback context), never inside the call that queued them. */
static void pump(tls_link *t) {
  tunnel__link *l = &t->l;
  for (;;) {
    if (l->closing || l->error || !t->established)
      return;
    int rc = encrypt_reqs(t);
    if (rc == 0 && t->shut_wanted && !t->notify_queued && !t->head) {
      rc = tunnel__tls_close_notify(t->tls);
      t->notify_queued = 1;
      t->notify_end = t->sent + tunnel__tls_out_pending(t->tls);
    }
    if (rc) {
      fail(t, rc);
      return;
    }
    flush_sock(t);
    if (l->closing || l->error)
      return;
    if (t->notify_queued && !t->fin_started && t->sent >= t->notify_end) {
      t->fin_started = 1;
      l->shut_req.data = l;
      rc = uv_shutdown(&l->shut_req, (uv_stream_t *)l->tcp, shut_cb);
      if (rc)
        fail(t, tunnel__uv_err(rc));
      return;
    }
    /* The socket took everything at once: encrypt more now. */
    if (t->sock_writing || !has_unencrypted(t) ||
        tunnel__tls_out_pending(t->tls) >= OUT_HIGH)
      return;
  }
}

/* --------------------------------------------------------- reading */

static void on_established(tls_link *t) {
  t->established = 1;
  /* A client keeps the session so its next connection resumes it; the
   * call is refused on a server, which is fine. */
  tunnel__tls_save_session(t->tls);
  pump(t);
}

/* Runs the engine on the input it holds: the handshake, then records for
 * a reader that wants them. */
static void drain_in(tls_link *t) {
  tunnel__link *l = &t->l;
  if (!t->established && !l->error) {
    int rc = tunnel__tls_handshake(t->tls);
    /* Established: the last flight leaves with the writes queued
     * meanwhile, in one segment (on_established flushes). A resumed client
     * thus sends its Finished and its first message together. */
    if (rc == 0) {
      on_established(t);
    } else {
      if (tunnel__tls_out_pending(t->tls))
        flush_sock(t); /* the next flight, or an alert */
      if (rc != TUNNEL_EAGAIN)
        fail(t, rc);
      else if (t->tcp_eof)
        fail(t, TUNNEL_ECONNRESET);
    }
  }
  while (l->reading && !l->ended && !l->closing) {
    if (l->error) {
      tunnel__link_deliver(l, l->error, NULL, 0);
      break;
    }
    if (!t->established)
      break;
    size_t n = 0;
    int rc = tunnel__tls_read(t->tls, t->pbuf, PLAIN_BUF, &n);
    if (tunnel__tls_out_pending(t->tls))
      flush_sock(t);
    if (rc == 0 && n) {
      tunnel__link_deliver(l, 0, t->pbuf, n);
      continue;
    }
    if (rc == 0 && !t->tcp_eof) {
      t->pending_input = 0; /* needs input */
      break;
    }
    /* The socket's end without close_notify reads as the end too: the
     * protocols inside frame their own data. */
    tunnel__link_deliver(l, rc == 0 || rc == TUNNEL_EEOF ? TUNNEL_EEOF : rc,
                         NULL, 0);
    break;
  }
  if (!l->closing)
    l->ops->read_sync(l);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  tunnel__link *l = h->data;
  (void)hint;
  *buf = uv_buf_init((char *)l->rbuf, READ_BUF);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  tls_link *t = s->data;
  (void)buf;
  if (nread == 0 || t->l.closing)
    return;
  t->pending_input = 1;
  if (nread > 0) {
    /* Records are decrypted from the read buffer itself; what the owner
     * does not read now is copied into the engine before the next read. */
    int rc = tunnel__tls_feed_lend(t->tls, t->l.rbuf, (size_t)nread);
    if (rc)
      fail(t, rc);
  } else if (nread == UV_EOF) {
    t->tcp_eof = 1;
  } else {
    fail(t, tunnel__uv_err((int)nread));
  }
  drain_in(t);
  if (nread > 0) {
    int rc = tunnel__tls_feed_keep(t->tls);
    if (rc && !t->l.closing && !t->l.error)
      fail(t, rc);
  }
  /* Output the engine made (handshake) may have finished writes. */
  if (!t->l.closing && !t->l.error)
    complete_reqs(t, 0);
}

static void task_cb(tunnel__task *task) {
  tls_link *t = (tls_link *)((char *)task - offsetof(tls_link, task));
  if (t->l.error)
    settle_failure(t);
  if (t->l.closing)
    return;
  drain_in(t);
  pump(t);
  complete_reqs(t, 0);
}

/* The socket is read while the handshake runs and while the owner reads;
 * input the engine already holds is processed from the loop first. */
static void tls_read_sync(tunnel__link *l) {
  tls_link *t = T(l);
  int want = !l->closing && !l->error && !t->tcp_eof && !l->ended &&
             (!t->established || l->reading);
  if (want != t->uv_reading) {
    if (want)
      want = uv_read_start((uv_stream_t *)l->tcp, alloc_cb, read_cb) == 0;
    else
      uv_read_stop((uv_stream_t *)l->tcp);
    t->uv_reading = want;
  }
  /* Records held while nobody read, or a failure not yet told. */
  if (l->reading && !l->ended && !l->closing &&
      ((t->established && t->pending_input) || l->error))
    tunnel__sched_post(l->sched, &t->task, task_cb);
}

/* ----------------------------------------------------------- ops */

static int tls_try_write(tunnel__link *l, const uv_buf_t *bufs, unsigned n) {
  tls_link *t = T(l);
  if (!t->established || t->head || t->shut_wanted)
    return 0;
  size_t taken_total = 0;
  int rc = 0;
  for (unsigned i = 0; i < n; i++) {
    size_t took = 0;
    rc = seal(t, (const uint8_t *)bufs[i].base, bufs[i].len, &took);
    taken_total += took;
    if (rc || took < bufs[i].len)
      break;
  }
  if (rc == 0)
    rc = stage_flush(t);
  if (rc) {
    fail(t, rc);
    return rc;
  }
  flush_sock(t);
  return l->error ? l->error : (int)taken_total;
}

static int tls_write(tunnel__link *l, tunnel__link_wreq *req,
                     const uv_buf_t *bufs, unsigned n) {
  tls_link *t = T(l);
  if (t->shut_wanted)
    return TUNNEL_ESTATE;
  req->bufs = req->small;
  if (n > sizeof req->small / sizeof req->small[0] &&
      !(req->bufs = tunnel__malloc(&l->mem, n * sizeof *bufs)))
    return TUNNEL_ENOMEM;
  memcpy(req->bufs, bufs, n * sizeof *bufs);
  req->nbufs = n;
  req->idx = 0;
  req->off = 0;
  req->end = 0;
  req->encrypted = 0;
  if (t->tail)
    t->tail->next = req;
  else
    t->head = req;
  t->tail = req;
  pump(t);
  /* Done already (the socket took it): the callback comes from the loop. */
  if (req->encrypted && req->end <= t->sent)
    tunnel__sched_post(l->sched, &t->task, task_cb);
  return 0;
}

static int tls_shutdown(tunnel__link *l) {
  tls_link *t = T(l);
  t->shut_wanted = 1;
  pump(t);
  return 0;
}

static void closed_cb(uv_handle_t *h) {
  tls_link *t = h->data;
  tunnel__link *l = &t->l;
  /* As libuv does for a closed stream: writes and the shutdown still
   * pending complete with a cancellation, then the close callback. */
  tunnel__link_wreq *r;
  while ((r = t->head) != NULL) {
    t->head = r->next;
    if (r->bufs != r->small)
      tunnel__free(&l->mem, r->bufs);
    r->bufs = NULL;
    r->cb(r, TUNNEL_ECANCELED);
  }
  t->tail = NULL;
  if (l->shut_cb) {
    tunnel__link_done_cb cb = l->shut_cb;
    l->shut_cb = NULL;
    cb(l, TUNNEL_ECANCELED, l->shut_ud);
  }
  if (l->close_cb)
    l->close_cb(l, 0, l->close_ud);
  l->ops->free(l);
}

static void tls_close(tunnel__link *l, int reset) {
  tls_link *t = T(l);
  tunnel__sched_cancel(l->sched, &t->task);
  uv_read_stop((uv_stream_t *)l->tcp);
  t->uv_reading = 0;
  if (!reset || uv_tcp_close_reset(l->tcp, closed_cb) != 0)
    uv_close((uv_handle_t *)l->tcp, closed_cb);
}

static void tls_free(tunnel__link *l) {
  tls_link *t = T(l);
  tunnel__mem mem = l->mem;
  tunnel__sched *sched = l->sched;
  tunnel__tls_free(t->tls);
  tunnel__free(&mem, t->pbuf);
  tunnel__free(&mem, t->stage);
  tunnel__free(&mem, l->rbuf);
  tunnel__free(&mem, l->tcp);
  tunnel__free(&mem, t);
  tunnel__sched_unref(sched); /* may end the owner: last */
}

static size_t tls_queued(const tunnel__link *l) {
  return tunnel__tls_out_pending(T(l)->tls);
}

static const tunnel__link_ops tls_ops = {tls_read_sync, tls_try_write,
                                         tls_write,     tls_shutdown,
                                         tls_close,     tls_free,
                                         tls_queued};

int tunnel__link_new_tls(tunnel__link **out, tunnel__sched *sched,
                         const tunnel__mem *mem, uv_tcp_t *tcp,
                         tunnel__tls *tls, int marker, const uint8_t *prefix,
                         size_t len) {
  *out = NULL;
  tls_link *t = tunnel__calloc(mem, 1, sizeof *t);
  uint8_t *rbuf = t ? tunnel__malloc(mem, READ_BUF) : NULL;
  uint8_t *pbuf = rbuf ? tunnel__malloc(mem, PLAIN_BUF) : NULL;
  uint8_t *stage = pbuf ? tunnel__malloc(mem, RECORD_MAX) : NULL;
  int rc = stage ? 0 : TUNNEL_ENOMEM;
  if (rc == 0 && len)
    rc = tunnel__tls_feed(tls, prefix, len);
  if (rc) {
    tunnel__free(mem, stage);
    tunnel__free(mem, pbuf);
    tunnel__free(mem, rbuf);
    tunnel__free(mem, t);
    tunnel__tls_free(tls);
    tunnel__tcp_close_free(mem, tcp);
    return rc;
  }
  tunnel__link *l = &t->l;
  /* The owner (and the TLS conf it holds) waits for the link's end. */
  tunnel__sched_ref(sched);
  l->ops = &tls_ops;
  l->tcp = tcp;
  l->loop = tcp->loop;
  l->sched = sched;
  l->mem = *mem;
  l->rbuf = rbuf;
  l->tls = tls;
  t->tls = tls;
  t->pbuf = pbuf;
  t->stage = stage;
  t->pending_input = 1;
  tcp->data = t;
  uv_tcp_nodelay(tcp, 1);
  /* frp's marker leaves in the same write as the ClientHello. */
  t->marker = marker;
  t->marker_byte = 0x17;
  /* The handshake starts from the loop, never inside this call. */
  tunnel__sched_post(sched, &t->task, task_cb);
  tls_read_sync(l);
  *out = l;
  return 0;
}
