/* What every link does the same way, whatever carries its bytes. */
#include "link.h"

#include <sys/socket.h>

#include "uverr.h"

void tunnel__link_read_start(tunnel__link *l, tunnel__link_read_cb cb,
                             void *ud) {
  l->read_cb = cb;
  l->read_ud = ud;
  l->reading = 1;
  l->ops->read_sync(l);
}

void tunnel__link_read_stop(tunnel__link *l) {
  l->reading = 0;
  l->ops->read_sync(l);
}

void tunnel__link_deliver(tunnel__link *l, int status, const uint8_t *data,
                          size_t n) {
  if (status) {
    l->ended = 1;
    if (status != TUNNEL_EEOF && !l->error)
      l->error = status;
  }
  if (l->read_cb)
    l->read_cb(l, status, data, n, l->read_ud);
}

int tunnel__link_try_write(tunnel__link *l, const uv_buf_t *bufs,
                           unsigned n) {
  if (l->closing)
    return TUNNEL_ECLOSED;
  if (l->error)
    return l->error;
  return l->ops->try_write(l, bufs, n);
}

int tunnel__link_write(tunnel__link_wreq *req, tunnel__link *l,
                       const uv_buf_t *bufs, unsigned n,
                       tunnel__link_write_cb cb) {
  if (l->closing)
    return TUNNEL_ECLOSED;
  if (l->error)
    return l->error;
  req->link = l;
  req->cb = cb;
  req->next = NULL;
  return l->ops->write(l, req, bufs, n);
}

int tunnel__link_shutdown(tunnel__link *l, tunnel__link_done_cb cb,
                          void *ud) {
  if (l->closing || l->shut_cb)
    return TUNNEL_ESTATE;
  if (l->error)
    return l->error;
  l->shut_cb = cb;
  l->shut_ud = ud;
  int rc = l->ops->shutdown(l);
  if (rc)
    l->shut_cb = NULL;
  return rc;
}

void tunnel__link_close(tunnel__link *l, int reset, tunnel__link_done_cb cb,
                        void *ud) {
  if (l->closing)
    return;
  l->closing = 1;
  l->reading = 0;
  l->read_cb = NULL;
  l->close_cb = cb;
  l->close_ud = ud;
  l->ops->close(l, reset);
}

int tunnel__link_check(tunnel__link *l) {
  if (l->error)
    return l->error;
  uv_os_fd_t fd;
  int err = 0;
  socklen_t len = sizeof err;
  if (l->closing || uv_fileno((uv_handle_t *)l->tcp, &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0)
    return 0;
  return tunnel__uv_err(uv_translate_sys_error(err));
}

size_t tunnel__link_queued(const tunnel__link *l) {
  return l->ops->queued(l);
}

int tunnel__link_is_tls(const tunnel__link *l) { return l->tls != NULL; }

size_t tunnel__link_bufs(const tunnel__iov *iov, size_t n, uv_buf_t *bufs) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    bufs[i] = uv_buf_init((char *)iov[i].base, (unsigned)iov[i].len);
    total += iov[i].len;
  }
  return total;
}
