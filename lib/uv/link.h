/* The connection between a client and a server: plain TCP (link_tcp.c) or
 * TLS over TCP (link_tls.c). Sessions and non-mux streams read and write
 * through it with libuv's semantics (try-write, queued writes completing
 * in order, shutdown, close), so TLS stays invisible to them. */
#ifndef TUNNEL_LIB_UV_LINK_H
#define TUNNEL_LIB_UV_LINK_H

#include <uv.h>

#include "../bufq.h"
#include "../mem.h"
#include "sched.h"

typedef struct tunnel__link tunnel__link;
typedef struct tunnel__link_wreq tunnel__link_wreq;
struct tunnel__tls;

/* status 0: `n` bytes of `data` (valid for the call). TUNNEL_EEOF: the
 * peer ended its side. Another negative code: the link failed. Nothing is
 * delivered after EOF or an error. */
typedef void (*tunnel__link_read_cb)(tunnel__link *l, int status,
                                     const uint8_t *data, size_t n, void *ud);
typedef void (*tunnel__link_write_cb)(tunnel__link_wreq *req, int status);
typedef void (*tunnel__link_done_cb)(tunnel__link *l, int status, void *ud);

/* A queued write. The buffers must stay valid until the callback, which
 * fires once, in order, when the bytes have reached the socket (status 0),
 * or with an error, TUNNEL_ECANCELED when the link closed first. */
struct tunnel__link_wreq {
  uv_write_t uv;
  tunnel__link *link;
  tunnel__link_write_cb cb;
  void *data; /* the caller's */
  /* TLS: what is left to encrypt, and where its ciphertext ends. */
  uv_buf_t *bufs;
  uv_buf_t small[4];
  unsigned nbufs, idx;
  size_t off;
  uint64_t end;
  int encrypted;
  tunnel__link_wreq *next;
};

typedef struct tunnel__link_ops {
  void (*read_sync)(tunnel__link *l);
  int (*try_write)(tunnel__link *l, const uv_buf_t *bufs, unsigned n);
  int (*write)(tunnel__link *l, tunnel__link_wreq *req, const uv_buf_t *bufs,
               unsigned n);
  int (*shutdown)(tunnel__link *l);
  void (*close)(tunnel__link *l, int reset);
  void (*free)(tunnel__link *l);
  size_t (*queued)(const tunnel__link *l);
} tunnel__link_ops;

struct tunnel__link {
  const tunnel__link_ops *ops;
  uv_tcp_t *tcp;
  uv_loop_t *loop;
  tunnel__sched *sched;
  tunnel__mem mem;
  uint8_t *rbuf;
  int reading;   /* the owner wants data */
  int ended;     /* EOF or error delivered or pending */
  int error;     /* sticky failure */
  int closing;
  tunnel__link_read_cb read_cb;
  void *read_ud;
  tunnel__link_done_cb shut_cb, close_cb;
  void *shut_ud, *close_ud;
  uv_shutdown_t shut_req;
  struct tunnel__tls *tls; /* NULL for plain links */
  void *impl;              /* the backing's own state */
};

/* A plain link over a connected TCP handle allocated with `mem`; the link
 * owns it from now on, also on failure. */
int tunnel__link_new_tcp(tunnel__link **out, tunnel__sched *sched,
                         const tunnel__mem *mem, uv_tcp_t *tcp);
/* A TLS link: `tls` (owned from now on) is a fresh client or server
 * connection; `marker`: a client sends frp's 0x17 byte first; `prefix`
 * holds bytes already read from the socket (the start of a ClientHello). The handshake runs as soon as the link exists;
 * writes made before it completes go out after it. */
int tunnel__link_new_tls(tunnel__link **out, tunnel__sched *sched,
                         const tunnel__mem *mem, uv_tcp_t *tcp,
                         struct tunnel__tls *tls, int marker,
                         const uint8_t *prefix, size_t len);

/* Reading on or off; data arrives only between the two. Bytes a backing
 * already holds (decrypted records) are delivered from the loop, never
 * from within these calls. */
void tunnel__link_read_start(tunnel__link *l, tunnel__link_read_cb cb,
                             void *ud);
void tunnel__link_read_stop(tunnel__link *l);
/* Takes what can go now without queuing: bytes taken (possibly 0), or an
 * error. */
int tunnel__link_try_write(tunnel__link *l, const uv_buf_t *bufs, unsigned n);
int tunnel__link_write(tunnel__link_wreq *req, tunnel__link *l,
                       const uv_buf_t *bufs, unsigned n,
                       tunnel__link_write_cb cb);
/* Ends this side after the queued writes (TLS: close_notify, then FIN). */
int tunnel__link_shutdown(tunnel__link *l, tunnel__link_done_cb cb, void *ud);
/* Closes (with a reset when `reset`): queued writes complete with
 * TUNNEL_ECANCELED, then `cb` fires and the link is freed. */
void tunnel__link_close(tunnel__link *l, int reset, tunnel__link_done_cb cb,
                        void *ud);
/* A failure that happened while nobody read: the link's own, or the
 * socket's pending error (a reset). 0 when none. */
int tunnel__link_check(tunnel__link *l);
/* Bytes accepted but not yet on the socket. */
size_t tunnel__link_queued(const tunnel__link *l);
/* libuv buffers over `n` queue iovecs; returns their total length. */
size_t tunnel__link_bufs(const tunnel__iov *iov, size_t n, uv_buf_t *bufs);
/* Whether the peer connection uses TLS. */
int tunnel__link_is_tls(const tunnel__link *l);

/* For the backings. */
void tunnel__link_deliver(tunnel__link *l, int status, const uint8_t *data,
                          size_t n);

#endif
