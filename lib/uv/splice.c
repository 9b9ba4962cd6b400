#include "splice.h"

#include <string.h>
#include <sys/socket.h>

#include "../crypto.h"
#include "handle.h"
#include "stream.h"
#include "uverr.h"

/* Per-direction queue marks. */
#define HIGH (256u * 1024u)
#define LOW (64u * 1024u)
/* Interval of the reset check while the TCP side is not being read. */
#define WATCH_MS 1000

void tunnel__traffic_hold(tunnel__traffic *t) {
  t->refs++;
  t->open++;
  t->all->open++;
}

void tunnel__traffic_unref(const tunnel__mem *mem, tunnel__traffic *t) {
  if (--t->refs == 0)
    tunnel__free(mem, t);
}

void tunnel__traffic_release(const tunnel__mem *mem, tunnel__traffic *t) {
  t->open--;
  t->all->open--;
  tunnel__traffic_unref(mem, t);
}

struct tunnel__splice {
  const tunnel__mem *mem;
  const tunnel__logger *log;
  uv_tcp_t *tcp;
  tunnel_stream *st;
  tunnel__splice_set *set;
  tunnel__traffic *tr; /* NULL: not counted */
  tunnel__splice *prev, *next; /* in set */
  uint8_t *readbuf;
  size_t readbuf_size;
  void (*gone)(void *ud);
  void *gone_ud;
  uv_shutdown_t shut_req;
  /* While the TCP side is not read nothing would see its peer reset it:
   * a slow timer checks the socket's pending error. */
  uv_timer_t watch;
  size_t tcp_pending;   /* bytes queued on the TCP side */
  int tcp_reading;      /* reading from TCP (towards the stream) */
  int st_reading;       /* reading from the stream (towards TCP) */
  int tcp_eof;          /* TCP peer finished sending */
  int st_shut_done;     /* stream FIN sent after tcp_eof */
  int st_eof;           /* stream peer finished sending */
  int tcp_shut_done;    /* TCP FIN sent after st_eof */
  int closing;
  int handles;          /* things still to close before freeing */
  /* frp's use_encryption: the stream side carries AES-CFB (enc: what goes
   * into the stream, dec: what comes out of it). */
  int crypto;
  tunnel__cfb enc, dec;
};

typedef struct {
  uv_write_t req;
  tunnel__splice *sp;
  size_t len;
  uint8_t data[];
} tcp_write;

static void maybe_free(tunnel__splice *sp) {
  if (sp->handles)
    return;
  tunnel__splice_set *set = sp->set;
  if (sp->prev)
    sp->prev->next = sp->next;
  else
    set->head = sp->next;
  if (sp->next)
    sp->next->prev = sp->prev;
  set->count--;
  void (*gone)(void *) = sp->gone;
  void *ud = sp->gone_ud;
  if (sp->tr)
    tunnel__traffic_release(sp->mem, sp->tr);
  if (sp->crypto) {
    tunnel__cfb_free(&sp->enc);
    tunnel__cfb_free(&sp->dec);
  }
  tunnel__free(sp->mem, sp);
  if (gone)
    gone(ud);
}

static void tcp_closed(uv_handle_t *h) {
  tunnel__splice *sp = h->data;
  tunnel__free(sp->mem, sp->tcp);
  sp->handles--;
  maybe_free(sp);
}

static void watch_closed(uv_handle_t *h) {
  tunnel__splice *sp = h->data;
  sp->handles--;
  maybe_free(sp);
}

static void st_closed(tunnel_stream *st, void *ud) {
  tunnel__splice *sp = ud;
  (void)st;
  sp->handles--;
  maybe_free(sp);
}

/* Ends both sides. Unless both directions finished, the stream peer sees a
 * reset and the TCP peer a close. */
static void finish(tunnel__splice *sp, int err) {
  if (sp->closing)
    return;
  sp->closing = 1;
  if (err && err != TUNNEL_EEOF)
    tunnel__log(sp->log, TUNNEL_LOG_DEBUG, "splice: ended: %s",
                tunnel_strerror(err));
  uv_read_stop((uv_stream_t *)sp->tcp);
  sp->handles = 3;
  uv_close((uv_handle_t *)&sp->watch, watch_closed);
  uv_close((uv_handle_t *)sp->tcp, tcp_closed);
  tunnel_stream_close(sp->st, st_closed, sp);
}

static void watch_cb(uv_timer_t *t) {
  tunnel__splice *sp = t->data;
  uv_os_fd_t fd;
  int err = 0;
  socklen_t len = sizeof err;
  if (sp->closing || uv_fileno((uv_handle_t *)sp->tcp, &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0)
    return;
  finish(sp, tunnel__uv_err(uv_translate_sys_error(err)));
}

/* Reading from TCP stops (backpressure, or its peer finished sending). */
static void tcp_pause(tunnel__splice *sp) {
  uv_read_stop((uv_stream_t *)sp->tcp);
  sp->tcp_reading = 0;
  if (!sp->closing)
    uv_timer_start(&sp->watch, watch_cb, WATCH_MS, WATCH_MS);
}

static void check_done(tunnel__splice *sp) {
  if (sp->tcp_eof && sp->st_shut_done && sp->st_eof && sp->tcp_shut_done)
    finish(sp, 0);
}

/* ------------------------------------------------------ TCP -> stream */

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  tunnel__splice *sp = h->data;
  (void)hint;
  *buf = uv_buf_init((char *)sp->readbuf, (unsigned)sp->readbuf_size);
}

static void tcp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void st_shut_cb(tunnel_stream *st, int status, void *ud) {
  tunnel__splice *sp = ud;
  (void)st;
  if (status) {
    finish(sp, status);
    return;
  }
  sp->st_shut_done = 1;
  check_done(sp);
}

static void st_write_cb(tunnel_stream *st, int status, void *ud) {
  tunnel__splice *sp = ud;
  if (status) {
    finish(sp, status); /* no-op when we closed the stream ourselves */
    return;
  }
  if (!sp->tcp_reading && !sp->tcp_eof && !sp->closing &&
      tunnel_stream_write_queue_size(st) <= LOW) {
    sp->tcp_reading = 1;
    uv_timer_stop(&sp->watch);
    uv_read_start((uv_stream_t *)sp->tcp, alloc_cb, tcp_read_cb);
  }
}

static void tcp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  tunnel__splice *sp = s->data;
  (void)buf;
  if (nread == 0)
    return;
  if (nread < 0) {
    tcp_pause(sp);
    if (nread != UV_EOF) {
      finish(sp, tunnel__uv_err((int)nread));
      return;
    }
    sp->tcp_eof = 1;
    int rc = tunnel_stream_shutdown(sp->st, st_shut_cb, sp);
    if (rc)
      finish(sp, rc);
    return;
  }
  if (sp->tr)
    tunnel__traffic_in(sp->tr, (size_t)nread);
  size_t n = (size_t)nread;
  /* In place: the IV went out at the start. */
  int rc = sp->crypto ? tunnel__cfb_encrypt(&sp->enc, sp->readbuf, n,
                                            sp->readbuf, &n)
                      : 0;
  if (rc == 0)
    rc = tunnel_stream_write(sp->st, sp->readbuf, n, st_write_cb, sp);
  if (rc) {
    finish(sp, rc);
    return;
  }
  if (tunnel_stream_write_queue_size(sp->st) > HIGH)
    tcp_pause(sp);
}

/* ------------------------------------------------------ stream -> TCP */

static void st_read_cb(tunnel_stream *st, int status, const uint8_t *data,
                       size_t len, void *ud);

static void tcp_shut_cb(uv_shutdown_t *req, int status) {
  tunnel__splice *sp = req->data;
  if (sp->closing)
    return;
  if (status) {
    finish(sp, tunnel__uv_err(status));
    return;
  }
  sp->tcp_shut_done = 1;
  check_done(sp);
}

static void tcp_write_cb(uv_write_t *req, int status) {
  tcp_write *w = (tcp_write *)req;
  tunnel__splice *sp = w->sp;
  sp->tcp_pending -= w->len;
  tunnel__free(sp->mem, w);
  if (sp->closing)
    return;
  if (status) {
    finish(sp, tunnel__uv_err(status));
    return;
  }
  if (!sp->st_reading && !sp->st_eof && sp->tcp_pending <= LOW) {
    sp->st_reading = 1;
    tunnel_stream_read_start(sp->st, st_read_cb, sp);
  }
}

static int tcp_send(tunnel__splice *sp, const uint8_t *data, size_t len) {
  if (sp->tcp_pending == 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)sp->tcp, &b, 1);
    if (n > 0) {
      data += n;
      len -= (size_t)n;
    } else if (n != UV_EAGAIN) {
      return tunnel__uv_err(n);
    }
  }
  if (!len)
    return 0;
  tcp_write *w = tunnel__malloc(sp->mem, sizeof *w + len);
  if (!w)
    return TUNNEL_ENOMEM;
  w->sp = sp;
  w->len = len;
  memcpy(w->data, data, len);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)sp->tcp, &b, 1, tcp_write_cb);
  if (rc) {
    tunnel__free(sp->mem, w);
    return tunnel__uv_err(rc);
  }
  sp->tcp_pending += len;
  return 0;
}

/* Deciphers through the shared scratch buffer, a buffer's worth at a time
 * (tcp_send copies what the socket does not take at once). */
static int send_decrypted(tunnel__splice *sp, const uint8_t *data,
                          size_t len) {
  while (len) {
    size_t n = len < sp->readbuf_size ? len : sp->readbuf_size, out_n = 0;
    int rc = tunnel__cfb_decrypt(&sp->dec, data, n, sp->readbuf, &out_n);
    if (rc == 0 && out_n)
      rc = tcp_send(sp, sp->readbuf, out_n);
    if (rc)
      return rc;
    if (sp->tr)
      tunnel__traffic_out(sp->tr, out_n); /* payload, not the IV */
    data += n;
    len -= n;
  }
  return 0;
}

static void st_read_cb(tunnel_stream *st, int status, const uint8_t *data,
                       size_t len, void *ud) {
  tunnel__splice *sp = ud;
  if (sp->closing)
    return;
  if (status == TUNNEL_EEOF) {
    sp->st_eof = 1;
    sp->st_reading = 0;
    tunnel_stream_read_stop(st);
    sp->shut_req.data = sp;
    int rc = uv_shutdown(&sp->shut_req, (uv_stream_t *)sp->tcp, tcp_shut_cb);
    if (rc)
      finish(sp, tunnel__uv_err(rc));
    return;
  }
  if (status) {
    finish(sp, status);
    return;
  }
  int rc = sp->crypto ? send_decrypted(sp, data, len) : tcp_send(sp, data, len);
  if (rc == 0 && sp->tr && !sp->crypto)
    tunnel__traffic_out(sp->tr, len);
  if (rc) {
    finish(sp, rc);
    return;
  }
  if (sp->tcp_pending > HIGH) {
    sp->st_reading = 0;
    tunnel_stream_read_stop(st);
  }
}

/* The stream failed while neither direction was waiting on it. */
static void st_failed(tunnel_stream *st, int err, void *ud) {
  (void)st;
  finish(ud, err);
}

int tunnel__splice_start(const tunnel__mem *mem, const tunnel__logger *log,
                         uv_tcp_t *tcp, tunnel_stream *st,
                         const uint8_t *prefix, size_t prefix_len,
                         uint8_t *readbuf, size_t readbuf_size,
                         tunnel__splice_set *set, void (*gone)(void *ud),
                         void *gone_ud) {
  return tunnel__splice_start_counted(mem, log, tcp, st, prefix, prefix_len,
                                      readbuf, readbuf_size, set, gone,
                                      gone_ud, NULL, NULL);
}

int tunnel__splice_start_counted(const tunnel__mem *mem,
                                 const tunnel__logger *log, uv_tcp_t *tcp,
                                 tunnel_stream *st, const uint8_t *prefix,
                                 size_t prefix_len, uint8_t *readbuf,
                                 size_t readbuf_size, tunnel__splice_set *set,
                                 void (*gone)(void *ud), void *gone_ud,
                                 tunnel__traffic *tr, const uint8_t *key) {
  tunnel__splice *sp = tunnel__calloc(mem, 1, sizeof *sp);
  int rc = sp ? 0 : TUNNEL_ENOMEM;
  uint8_t iv[TUNNEL__CFB_IV_SIZE];
  if (rc == 0 && key) {
    sp->crypto = 1;
    rc = tunnel__uv_err(uv_random(NULL, NULL, iv, sizeof iv, 0, NULL));
    if (rc == 0)
      rc = tunnel__cfb_init_encrypt_key(&sp->enc, key, iv);
    if (rc == 0)
      rc = tunnel__cfb_init_decrypt_key(&sp->dec, key);
  }
  if (rc) {
    if (sp && sp->crypto) {
      tunnel__cfb_free(&sp->enc);
      tunnel__cfb_free(&sp->dec);
    }
    tunnel__free(mem, sp);
    tunnel__tcp_close_free(mem, tcp);
    tunnel_stream_close(st, NULL, NULL);
    return rc;
  }
  sp->mem = mem;
  sp->log = log;
  sp->tcp = tcp;
  sp->st = st;
  sp->readbuf = readbuf;
  sp->readbuf_size = readbuf_size;
  sp->gone = gone;
  sp->gone_ud = gone_ud;
  sp->tr = tr;
  if (tr)
    tunnel__traffic_hold(tr);
  uv_timer_init(tcp->loop, &sp->watch);
  sp->watch.data = sp;
  sp->set = set;
  sp->next = set->head;
  if (set->head)
    set->head->prev = sp;
  set->head = sp;
  set->count++;
  tcp->data = sp;
  uv_tcp_nodelay(tcp, 1);
  tunnel__stream_watch(st, st_failed, sp);
  if (sp->crypto) {
    /* The encrypting side speaks first: its IV, in clear. */
    size_t n = 0;
    rc = tunnel__cfb_encrypt(&sp->enc, NULL, 0, iv, &n);
    if (rc == 0)
      rc = tunnel_stream_write(st, iv, n, NULL, NULL);
  }
  if (rc == 0 && prefix_len)
    rc = tcp_send(sp, prefix, prefix_len);
  if (rc == 0)
    rc = tunnel__uv_err(
        uv_read_start((uv_stream_t *)tcp, alloc_cb, tcp_read_cb));
  if (rc == 0)
    rc = tunnel_stream_read_start(st, st_read_cb, sp);
  if (rc) {
    /* Owned now: the failure still tears both down. */
    finish(sp, rc);
    return 0;
  }
  sp->tcp_reading = 1;
  sp->st_reading = 1;
  return 0;
}

void tunnel__splice_abort_all(tunnel__splice_set *set) {
  for (tunnel__splice *sp = set->head; sp; sp = sp->next)
    finish(sp, TUNNEL_ECLOSED);
}
