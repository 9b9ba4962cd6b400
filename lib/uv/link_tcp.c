/* Plain links: libuv's TCP calls, one to one. */
#include "handle.h"
#include "link.h"
#include "uverr.h"

/* Large reads, few syscalls; one buffer per link, as every read is
 * consumed (or copied) synchronously by the owner. */
#define READ_BUF (64u * 1024u)

typedef struct tcp_link {
  tunnel__link l;
  int uv_reading;
} tcp_link;

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  tunnel__link *l = h->data;
  (void)hint;
  *buf = uv_buf_init((char *)l->rbuf, READ_BUF);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  tunnel__link *l = s->data;
  (void)buf;
  if (nread == 0 || l->ended)
    return;
  if (nread > 0) {
    tunnel__link_deliver(l, 0, l->rbuf, (size_t)nread);
    return;
  }
  uv_read_stop(s);
  ((tcp_link *)l)->uv_reading = 0;
  tunnel__link_deliver(l, nread == UV_EOF ? TUNNEL_EEOF
                                          : tunnel__uv_err((int)nread),
                       NULL, 0);
}

static void tcp_read_sync(tunnel__link *l) {
  tcp_link *t = (tcp_link *)l;
  int want = l->reading && !l->ended && !l->closing;
  if (want == t->uv_reading)
    return;
  if (want && uv_read_start((uv_stream_t *)l->tcp, alloc_cb, read_cb) != 0)
    return;
  if (!want)
    uv_read_stop((uv_stream_t *)l->tcp);
  t->uv_reading = want;
}

static int tcp_try_write(tunnel__link *l, const uv_buf_t *bufs, unsigned n) {
  int w = uv_try_write((uv_stream_t *)l->tcp, bufs, n);
  if (w >= 0)
    return w;
  if (w == UV_EAGAIN || w == UV_ENOSYS)
    return 0;
  return tunnel__uv_err(w);
}

static void write_cb(uv_write_t *uvreq, int status) {
  tunnel__link_wreq *req = (tunnel__link_wreq *)uvreq;
  req->cb(req, status == 0           ? 0
               : status == UV_ECANCELED ? TUNNEL_ECANCELED
                                        : tunnel__uv_err(status));
}

static int tcp_write(tunnel__link *l, tunnel__link_wreq *req,
                     const uv_buf_t *bufs, unsigned n) {
  return tunnel__uv_err(
      uv_write(&req->uv, (uv_stream_t *)l->tcp, bufs, n, write_cb));
}

static void shut_cb(uv_shutdown_t *req, int status) {
  tunnel__link *l = req->data;
  tunnel__link_done_cb cb = l->shut_cb;
  if (cb)
    cb(l, status == 0           ? 0
          : status == UV_ECANCELED ? TUNNEL_ECANCELED
                                   : tunnel__uv_err(status),
       l->shut_ud);
}

static int tcp_shutdown(tunnel__link *l) {
  l->shut_req.data = l;
  return tunnel__uv_err(
      uv_shutdown(&l->shut_req, (uv_stream_t *)l->tcp, shut_cb));
}

static void closed_cb(uv_handle_t *h) {
  tunnel__link *l = h->data;
  if (l->close_cb)
    l->close_cb(l, 0, l->close_ud);
  l->ops->free(l);
}

static void tcp_close(tunnel__link *l, int reset) {
  uv_read_stop((uv_stream_t *)l->tcp);
  ((tcp_link *)l)->uv_reading = 0;
  /* Pending writes and the shutdown complete with UV_ECANCELED first. */
  if (!reset || uv_tcp_close_reset(l->tcp, closed_cb) != 0)
    uv_close((uv_handle_t *)l->tcp, closed_cb);
}

static void tcp_free(tunnel__link *l) {
  tunnel__mem mem = l->mem;
  tunnel__free(&mem, l->tcp);
  tunnel__free(&mem, l->rbuf);
  tunnel__free(&mem, l);
}

static size_t tcp_queued(const tunnel__link *l) {
  return l->tcp->write_queue_size;
}

static const tunnel__link_ops tcp_ops = {tcp_read_sync, tcp_try_write,
                                         tcp_write,     tcp_shutdown,
                                         tcp_close,     tcp_free,
                                         tcp_queued};

int tunnel__link_new_tcp(tunnel__link **out, tunnel__sched *sched,
                         const tunnel__mem *mem, uv_tcp_t *tcp) {
  *out = NULL;
  tcp_link *t = tunnel__calloc(mem, 1, sizeof *t);
  uint8_t *rbuf = t ? tunnel__malloc(mem, READ_BUF) : NULL;
  if (!rbuf) {
    tunnel__free(mem, t);
    tunnel__tcp_close_free(mem, tcp);
    return TUNNEL_ENOMEM;
  }
  tunnel__link *l = &t->l;
  l->ops = &tcp_ops;
  l->tcp = tcp;
  l->loop = tcp->loop;
  l->sched = sched;
  l->mem = *mem;
  l->rbuf = rbuf;
  tcp->data = l;
  uv_tcp_nodelay(tcp, 1);
  *out = l;
  return 0;
}
