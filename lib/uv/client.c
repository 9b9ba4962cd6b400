/* tunnel_client: the client engine (include/tunnel/engine.h) over libuv.
 * The engine speaks the protocol; this file owns the sockets (plain or
 * TLS links), moves bytes between them and the engine, keeps its
 * deadlines on a timer, and turns its streams into tunnel_streams. */
#include <stdio.h>
#include <string.h>

#include "../engine_io.h"
#include "../log.h"
#include "client_int.h"
#include "handle.h"
#include "uverr.h"

#define MEM(c) tunnel__client_mem(c)
/* Engine output marks: above HIGH streams stop handing it data; below LOW
 * they resume. They bound memory whatever the number of streams or the
 * size of their windows. */
#define OUT_HIGH (2u * 1024u * 1024u)
#define OUT_LOW (512u * 1024u)
#define MAX_IOV 64
/* Stream writes up to this size are queued and leave together at the end
 * of the loop iteration (one writev for every stream that had something to
 * say); larger ones go to the socket at once, header and payload
 * uncopied. */
#define COALESCE_MAX (16u * 1024u)

/* A connection to the server, by the engine's number: the control one
 * (1) or, without multiplexing, a work connection. */
struct tunnel__cl_conn {
  tunnel_client *c;
  tunnel__cl_conn *next;
  uint32_t num;
  uv_tcp_t *tcp;        /* while connecting */
  tunnel__dial *dial;
  tunnel__link *link;   /* once connected */
  tunnel__link_wreq wreq;
  size_t inflight;      /* bytes of the engine's output being written */
  int writing;
  int dead;             /* the engine is done with it */
  int failed;           /* a write failed; the engine hears it from the loop */
  /* Non-mux: a visitor's stream opened on it during the engine call under
   * way; the bytes that came with StartWorkConn. */
  tunnel_proxy *opened;
  tunnel__bufq prefix;
  /* Non-mux: the program's visit answered on it, to be handed over the
   * same way. */
  tunnel__cl_visit *dialed;
};

typedef struct tunnel__cl_conn cl_conn;

#define CONTAINER(ptr, type, field)                                            \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

static void flush(tunnel_client *c);
static void session_down(tunnel_client *c, int err, const char *why);

static uint64_t now_ms(tunnel_client *c) { return uv_now(c->loop); }

/* --------------------------------------------------------- connections */

static cl_conn *conn_find(tunnel_client *c, uint32_t num) {
  for (cl_conn *k = c->conns; k; k = k->next)
    if (k->num == num && !k->dead)
      return k;
  return NULL;
}

static cl_conn *conn_new(tunnel_client *c, uint32_t num) {
  cl_conn *k = tunnel__calloc(MEM(c), 1, sizeof *k);
  if (!k)
    return NULL;
  k->c = c;
  k->num = num;
  tunnel__bufq_init(&k->prefix, MEM(c), 4096);
  k->next = c->conns;
  c->conns = k;
  c->objects++;
  return k;
}

static void conn_free(cl_conn *k) {
  tunnel_client *c = k->c;
  if (k->dialed) { /* gone before it was handed over */
    tunnel__cl_visit *v = k->dialed;
    k->dialed = NULL;
    tunnel__client_visit_lost(v, TUNNEL_ECLOSED);
  }
  for (cl_conn **pp = &c->conns; *pp; pp = &(*pp)->next) {
    if (*pp == k) {
      *pp = k->next;
      break;
    }
  }
  tunnel__bufq_free(&k->prefix);
  tunnel__free(MEM(c), k);
  c->objects--;
  tunnel__client_maybe_finish_close(c);
}

static void link_closed(tunnel__link *l, int status, void *ud) {
  (void)l, (void)status;
  conn_free(ud);
}

/* Ends a connection now: nothing more is read or written on it. */
static void conn_kill(cl_conn *k) {
  if (k->dead)
    return;
  k->dead = 1;
  tunnel_client *c = k->c;
  if (k->dial) {
    tunnel__dial_cancel(k->dial);
    k->dial = NULL;
  }
  if (k->tcp) {
    tunnel__tcp_close_free(MEM(c), k->tcp);
    k->tcp = NULL;
  }
  if (k->link) {
    /* A write in flight references the engine's queue: closing stops it
     * before the session's memory goes. */
    tunnel__link_close(k->link, 0, link_closed, k);
    k->link = NULL;
    return;
  }
  conn_free(k);
}

/* Why a link failed, for the program: the TLS reason when there is one. */
static const char *link_reason(tunnel__link *l, const char *fallback) {
  if (l && l->tls && *tunnel__tls_error_text(l->tls))
    return tunnel__tls_error_text(l->tls);
  return fallback;
}

/* Non-mux: a visitor's stream opened on `k` during the last engine call.
 * The engine lets go of the connection and the stream becomes the
 * connection itself: bytes, half-close and reset without a copy. */
static int conn_hand_over(cl_conn *k) {
  tunnel_client *c = k->c;
  tunnel_proxy *p = k->opened;
  tunnel__cl_visit *dialed = k->dialed;
  int rc = tunnel_engine_conn_detach(c->eng, k->num);
  if (rc == TUNNEL_ESTATE && k->writing &&
      tunnel__engine_out_pending(c->eng, k->num))
    return 0; /* NewWorkConn still being written: again when it is */
  k->opened = NULL;
  k->dialed = NULL;
  if (rc != 0) {
    /* Ended within the same call (the engine said so). */
    if (dialed)
      tunnel__client_visit_lost(dialed, TUNNEL_ECONNRESET);
    return 0;
  }
  tunnel__link *l = k->link;
  k->link = NULL;
  k->dead = 1;
  tunnel__link_read_stop(l);
  size_t n = k->prefix.size;
  uint8_t *pre = n ? tunnel__malloc(MEM(c), n) : NULL;
  tunnel_stream *st = NULL;
  if (!n || pre) {
    tunnel__iov v[16];
    size_t off = 0;
    while (off < n) {
      size_t cnt = tunnel__bufq_iov(&k->prefix, v, 16), used = 0;
      for (size_t i = 0; i < cnt; i++) {
        memcpy(pre + off, v[i].base, v[i].len);
        off += v[i].len;
        used += v[i].len;
      }
      tunnel__bufq_consume(&k->prefix, used);
    }
    st = tunnel__stream_new_link(&c->sched, MEM(c), l, pre, n);
  } else {
    tunnel__link_close(l, 1, NULL, NULL);
  }
  tunnel__free(MEM(c), pre);
  conn_free(k);
  if (!st) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: no memory for a visitor");
    if (dialed)
      tunnel__client_visit_lost(dialed, TUNNEL_ENOMEM);
    return 1;
  }
  tunnel__stream_list_add(&c->handed, st);
  if (dialed)
    tunnel__client_visit_opened(dialed, st);
  else
    tunnel__client_visitor(p, st);
  return 1;
}

/* After each engine call made from the loop. */
static void after_engine(tunnel_client *c) {
  for (cl_conn *k = c->conns; k;) {
    if ((k->opened || k->dialed) && !k->dead && conn_hand_over(k))
      k = c->conns; /* the list changed */
    else
      k = k->next;
  }
  tunnel__client_flush_soon(c);
}

static void conn_read(tunnel__link *l, int status, const uint8_t *data,
                      size_t n, void *ud) {
  cl_conn *k = ud;
  tunnel_client *c = k->c;
  (void)l;
  if (k->dead)
    return;
  if (status == 0) {
    tunnel_engine_recv(c->eng, k->num, data, n, now_ms(c));
  } else if (k->num == TUNNEL_ENGINE_CONTROL) {
    tunnel_engine_conn_closed(c->eng, k->num,
                              status == TUNNEL_EEOF ? TUNNEL_ECONNRESET
                                                    : status,
                              now_ms(c));
  } else {
    /* A work connection ended before it carried a visitor (after, the
     * stream reads it): the engine is done with it. */
    tunnel_engine_conn_closed(c->eng, k->num,
                              status == TUNNEL_EEOF ? 0 : status, now_ms(c));
    conn_kill(k);
  }
  after_engine(c);
}

static void conn_write_cb(tunnel__link_wreq *req, int status) {
  cl_conn *k = CONTAINER(req, cl_conn, wreq);
  tunnel_client *c = k->c;
  k->writing = 0;
  if (k->dead || status == TUNNEL_ECANCELED)
    return;
  tunnel__engine_out_consume(c->eng, k->num, k->inflight);
  k->inflight = 0;
  if (status < 0) {
    if (k->num == TUNNEL_ENGINE_CONTROL)
      tunnel_engine_conn_closed(c->eng, k->num, status, now_ms(c));
    else {
      tunnel_engine_conn_closed(c->eng, k->num, status, now_ms(c));
      conn_kill(k);
    }
  }
  after_engine(c);
}

/* A write failed. The engine hears it from the loop: this may run inside
 * a stream write of the program's. */
static void conn_failed(cl_conn *k, int err) {
  if (!k->failed)
    k->failed = err;
  tunnel__client_flush_soon(k->c);
}

/* Sends the engine's output for `k`: what the socket takes at once, then
 * one write of the rest straight from the engine's queue. */
static void conn_flush(cl_conn *k) {
  tunnel_client *c = k->c;
  while (!k->writing && !k->dead && !k->failed && k->link) {
    tunnel__iov iov[MAX_IOV];
    uv_buf_t bufs[MAX_IOV];
    size_t n = tunnel__engine_out_iov(c->eng, k->num, iov, MAX_IOV);
    if (!n)
      return;
    size_t total = tunnel__link_bufs(iov, n, bufs);
    int w = tunnel__link_try_write(k->link, bufs, (unsigned)n);
    if (w > 0) {
      tunnel__engine_out_consume(c->eng, k->num, (size_t)w);
      if ((size_t)w == total)
        continue;
    } else if (w < 0) {
      conn_failed(k, w);
      return;
    }
    if (k->dead)
      return;
    n = tunnel__engine_out_iov(c->eng, k->num, iov, MAX_IOV);
    total = tunnel__link_bufs(iov, n, bufs);
    int rc = tunnel__link_write(&k->wreq, k->link, bufs, (unsigned)n,
                                conn_write_cb);
    if (rc) {
      conn_failed(k, rc);
      return;
    }
    k->writing = 1;
    k->inflight = total;
  }
}

/* The link to the server over a connected handle: TLS when configured.
 * Owns `tcp` from now on. */
static int open_link(tunnel_client *c, uv_tcp_t *tcp, tunnel__link **out) {
  if (!c->tls)
    return tunnel__link_new_tcp(out, &c->sched, MEM(c), tcp);
  tunnel__tls *t;
  const char *name = c->cfg.tls.server_name ? c->cfg.tls.server_name : c->host;
  int rc = tunnel__tls_new(&t, c->tls, name);
  if (rc) {
    tunnel__tcp_close_free(MEM(c), tcp);
    return rc;
  }
  return tunnel__link_new_tls(out, &c->sched, MEM(c), tcp, t,
                              c->cfg.tls.marker, NULL, 0);
}

/* `k` is connected: its link reads into the engine. */
static int conn_up(cl_conn *k) {
  tunnel_client *c = k->c;
  uv_tcp_t *tcp = k->tcp;
  k->tcp = NULL;
  int rc = open_link(c, tcp, &k->link);
  if (rc)
    return rc;
  tunnel__link_read_start(k->link, conn_read, k);
  return 0;
}

static void work_connected(tunnel__dial *d, int status, void *ud) {
  cl_conn *k = ud;
  tunnel_client *c = k->c;
  (void)d;
  k->dial = NULL;
  if (status == 0)
    status = conn_up(k);
  if (status == 0)
    status = tunnel_engine_conn_ready(c->eng, k->num, now_ms(c));
  if (status) {
    if (status != TUNNEL_EINVAL && status != TUNNEL_ESTATE)
      tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                  "client: cannot open a work connection: %s",
                  tunnel_strerror(status));
    tunnel_engine_conn_closed(c->eng, k->num, status, now_ms(c));
    conn_kill(k);
  }
  after_engine(c);
}

/* The attempt the engine asked for (connection 1) ended: connected or
 * not, the engine hears it and goes on (login, or a retry later). */
static void server_connected(tunnel__dial *d, int status, void *ud) {
  cl_conn *k = ud;
  tunnel_client *c = k->c;
  (void)d;
  k->dial = NULL;
  if (status == 0)
    status = conn_up(k);
  if (status == 0)
    status = tunnel_engine_conn_ready(c->eng, TUNNEL_ENGINE_CONTROL,
                                      now_ms(c));
  if (status == 0)
    c->state = TUNNEL__C_LOGIN;
  else
    tunnel_engine_conn_closed(c->eng, TUNNEL_ENGINE_CONTROL, status,
                              now_ms(c));
  after_engine(c);
}

/* Opens connection `num` to the server's address. */
static int dial_server(tunnel_client *c, uint32_t num, tunnel__dial_cb cb) {
  cl_conn *k = conn_new(c, num);
  uv_tcp_t *tcp = k ? tunnel__malloc(MEM(c), sizeof *tcp) : NULL;
  if (!tcp) {
    if (k)
      conn_free(k);
    return TUNNEL_ENOMEM;
  }
  uv_tcp_init(c->loop, tcp);
  k->tcp = tcp;
  int rc = tunnel__dial_start(&k->dial, c->loop, MEM(c), tcp, c->host,
                              c->port, cb, k);
  if (rc)
    conn_kill(k);
  return rc;
}

/* ------------------------------------------------------ engine events */

/* Ends the current session (never the client): every connection closes,
 * visitors end, the program hears why. */
static void session_down(tunnel_client *c, int err, const char *why) {
  if (c->state == TUNNEL__C_DOWN || c->state == TUNNEL__C_IDLE)
    return;
  c->state = TUNNEL__C_DOWN;
  uv_timer_stop(&c->timer);
  cl_conn *ctl = conn_find(c, TUNNEL_ENGINE_CONTROL);
  int tls_err = err == TUNNEL_ETLS || err == TUNNEL_ECERTUNTRUSTED ||
                err == TUNNEL_ECERTNAME || err == TUNNEL_ECERTPIN;
  char *reason = c->reason; /* the LOST event that follows says it too */
  snprintf(reason, sizeof c->reason, "%s",
           link_reason(ctl ? ctl->link : NULL, why));
  for (cl_conn *k = c->conns, *next; k; k = next) {
    next = k->next;
    conn_kill(k); /* may free it */
  }
  tunnel__client_joins_abort(c);
  for (tunnel_proxy *p = c->proxies; p; p = p->next)
    tunnel__client_udp_close(p, 0);
  /* A session's visitors end with it, whatever carries them. */
  tunnel__splice_abort_all(&c->splices);
  tunnel__stream_list_fail_all(&c->handed, TUNNEL_ECLOSED);
  /* The state callback is how the program hears of this; the log only
   * records it. */
  tunnel__log(&c->cfg.log,
              c->closing || c->state_cb || c->event_cb ? TUNNEL_LOG_INFO
                                                       : TUNNEL_LOG_WARN,
              "client: %s: %s", reason, tunnel_strerror(err));
  if (!c->closing && c->state_cb)
    c->state_cb(c, err, err == TUNNEL_EAUTH || tls_err ? reason : "",
                c->state_ud);
}

static void on_state(tunnel_engine *e, int status, const char *message,
                     void *ud) {
  tunnel_client *c = ud;
  (void)e;
  if (status < 0) {
    session_down(c, status, message);
    return;
  }
  c->state = TUNNEL__C_READY;
  cl_conn *ctl = conn_find(c, TUNNEL_ENGINE_CONTROL);
  tunnel__link *l = ctl ? ctl->link : NULL;
  if (l && l->tls)
    tunnel__log(&c->cfg.log, TUNNEL_LOG_INFO, "client: TLS %s, %s handshake",
                tunnel__tls_ciphersuite(l->tls),
                tunnel__tls_resumed(l->tls) ? "resumed" : "full");
  tunnel__client_visits_kick(c);
  if (c->state_cb)
    c->state_cb(c, 0, message, c->state_ud);
}

static void on_proxy(tunnel_engine *e, uint32_t proxy, int status,
                     const char *message, void *ud) {
  tunnel_client *c = ud;
  (void)e;
  tunnel_proxy *p = tunnel__client_proxy(c, proxy);
  if (!p || !p->status_cb)
    return;
  if (status == 0 && p->type == TUNNEL_PROXY_STCP) {
    /* No public address: visitors ask for it by name. */
    p->status_cb(p, 0, p->name, p->status_ud);
    return;
  }
  if (status ||
      (p->type != TUNNEL_PROXY_TCP && p->type != TUNNEL_ENGINE_PROXY_UDP)) {
    /* HTTP: the names the server routes to it, "NAME[:PORT][,NAME...]". */
    p->status_cb(p, status, message, p->status_ud);
    return;
  }
  /* frp answers ":PORT" (the server's bind address is not meaningful to
   * the client): the public host is the one we reached the server at. */
  const char *colon = strrchr(message, ':');
  const char *port = colon ? colon + 1 : message;
  char addr[300];
  if (strchr(c->host, ':'))
    snprintf(addr, sizeof addr, "[%s]:%s", c->host, port);
  else
    snprintf(addr, sizeof addr, "%s:%s", c->host, port);
  p->status_cb(p, 0, addr, p->status_ud);
}

static int on_open(tunnel_engine *e, uint32_t stream, uint32_t proxy,
                   const char *visitor, void *ud) {
  tunnel_client *c = ud;
  (void)visitor;
  tunnel_proxy *p = tunnel__client_proxy(c, proxy);
  if (!p || !p->started)
    return TUNNEL_EREFUSED;
  if (!c->cfg.tcp_mux) {
    /* The connection becomes the stream once this engine call returns. */
    cl_conn *k = conn_find(c, stream);
    if (!k)
      return TUNNEL_EREFUSED;
    k->opened = p;
    return 0;
  }
  tunnel_stream *st = tunnel__stream_new_eng(c, &c->sched, MEM(c), stream);
  if (!st)
    return TUNNEL_ENOMEM;
  tunnel__engine_stream_set_user(e, stream, st);
  tunnel__client_visitor(p, st);
  return 0;
}

static void on_data(tunnel_engine *e, uint32_t stream, const uint8_t *data,
                    size_t len, void *ud) {
  tunnel_client *c = ud;
  if (!c->cfg.tcp_mux) {
    cl_conn *k = conn_find(c, stream);
    if (k && (k->opened || k->dialed) &&
        tunnel__bufq_append(&k->prefix, data, len) != 0) {
      tunnel__cl_visit *v = k->dialed;
      k->opened = NULL;
      k->dialed = NULL;
      tunnel_engine_stream_close(e, stream);
      if (v)
        tunnel__client_visit_lost(v, TUNNEL_ENOMEM);
    }
    return;
  }
  tunnel_stream *st = tunnel__engine_stream_user(e, stream);
  if (st)
    tunnel__stream_eng_data(st, data, len);
}

static void on_end(tunnel_engine *e, uint32_t stream, int status, void *ud) {
  tunnel_client *c = ud;
  if (!c->cfg.tcp_mux) {
    cl_conn *k = conn_find(c, stream);
    if (k && status < 0) {
      k->opened = NULL; /* never handed over: the engine closes it */
      if (k->dialed) {
        tunnel__cl_visit *v = k->dialed;
        k->dialed = NULL;
        tunnel__client_visit_lost(v, status);
      }
    }
    return;
  }
  tunnel_stream *st = tunnel__engine_stream_user(e, stream);
  if (st)
    tunnel__stream_eng_end(st, status);
}

static void on_writable(tunnel_engine *e, uint32_t stream, void *ud) {
  (void)ud;
  tunnel_stream *st = tunnel__engine_stream_user(e, stream);
  if (st)
    tunnel__stream_eng_pump(st);
}

static void on_visit(tunnel_engine *e, uint32_t stream, int status,
                     const char *message, void *ud) {
  tunnel_client *c = ud;
  (void)e;
  tunnel__cl_visit *v = tunnel__client_on_visit(c, stream, status, message);
  if (!v)
    return;
  /* Non-mux: the connection becomes the stream once this engine call
   * returns, as a visitor's does. */
  cl_conn *k = conn_find(c, stream);
  if (k)
    k->dialed = v;
  else
    tunnel__client_visit_lost(v, TUNNEL_ECLOSED);
}

static void on_datagram(tunnel_engine *e, uint32_t proxy, const char *ip,
                        uint16_t port, const uint8_t *data, size_t len,
                        void *ud) {
  tunnel_client *c = ud;
  (void)e;
  tunnel_proxy *p = tunnel__client_proxy(c, proxy);
  if (p)
    tunnel__client_datagram(p, ip, port, data, len);
}

static void on_connect(tunnel_engine *e, uint32_t conn, void *ud) {
  tunnel_client *c = ud;
  if (conn == TUNNEL_ENGINE_CONTROL) {
    int rc = dial_server(c, conn, server_connected);
    if (rc)
      tunnel_engine_conn_closed(e, conn, rc, now_ms(c));
    return;
  }
  int rc = dial_server(c, conn, work_connected);
  if (rc) {
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: cannot open a work connection: %s",
                tunnel_strerror(rc));
    tunnel_engine_conn_closed(e, conn, rc, now_ms(c));
  }
}

static void on_disconnect(tunnel_engine *e, uint32_t conn, void *ud) {
  tunnel_client *c = ud;
  (void)e;
  cl_conn *k = conn_find(c, conn);
  if (!k)
    return;
  /* Work channels the server will not use, and an attempt to reach the
   * server that took too long, end this way: what the engine still had
   * for them is not worth waiting for. */
  k->opened = NULL;
  conn_kill(k);
}

static void on_event(tunnel_engine *e, int32_t event, int32_t status,
                     uint32_t delay_ms, const char *message, void *ud) {
  tunnel_client *c = ud;
  (void)e;
  if (event == TUNNEL_EVENT_CONNECTING)
    c->state = TUNNEL__C_CONNECTING;
  /* The link knows more than the engine: a TLS alert, a certificate's
   * fault. */
  if ((event == TUNNEL_EVENT_LOST || event == TUNNEL_EVENT_GAVE_UP) &&
      c->reason[0])
    message = c->reason;
  if (!c->closing && c->event_cb)
    c->event_cb(c, event, status, delay_ms, message, c->event_ud);
}

static int fill_random(uint8_t *out, size_t n, void *ud) {
  (void)ud;
  return uv_random(NULL, NULL, out, n, 0, NULL);
}

static int64_t unix_time(void *ud) {
  (void)ud;
  uv_timeval64_t tv;
  return uv_gettimeofday(&tv) == 0 ? tv.tv_sec : 0;
}

/* ------------------------------------------------------- output, time */

static void timer_cb(uv_timer_t *t) { flush(t->data); }

static void flush(tunnel_client *c) {
  for (cl_conn *k = c->conns; k; k = k->next) {
    if (k->failed && !k->dead) {
      int err = k->failed;
      k->failed = 0;
      tunnel_engine_conn_closed(c->eng, k->num, err, now_ms(c));
      if (k->num != TUNNEL_ENGINE_CONTROL)
        conn_kill(k);
      after_engine(c);
      return; /* after_engine flushes again */
    }
  }
  uint32_t conn = 0;
  while (c->state != TUNNEL__C_DOWN &&
         tunnel_engine_next_output_after(c->eng, conn, &conn)) {
    cl_conn *k = conn_find(c, conn);
    if (k)
      conn_flush(k);
  }
  /* Registrations and heartbeats the tick queued leave on the next pass.
   * Between sessions the tick runs the engine's reconnection. */
  uint64_t next = UINT64_MAX;
  if (!c->closing) {
    tunnel_engine_tick(c->eng, now_ms(c), &next);
    conn = 0;
    while (c->state != TUNNEL__C_DOWN &&
           tunnel_engine_next_output_after(c->eng, conn, &conn)) {
      cl_conn *k = conn_find(c, conn);
      if (k)
        conn_flush(k);
    }
  }
  /* Room may have freed: streams waiting for it go on. */
  while (c->blocked && tunnel__client_has_room(c)) {
    tunnel_stream *st = c->blocked;
    tunnel__client_unblock(c, st);
    tunnel__stream_eng_pump(st);
  }
  if (c->closing)
    return;
  next = tunnel__client_visits_tick(c, next);
  if (next == UINT64_MAX) {
    uv_timer_stop(&c->timer);
    return;
  }
  uint64_t now = now_ms(c);
  uv_timer_start(&c->timer, timer_cb, next > now ? next - now : 0, 0);
}

static void flush_task(tunnel__task *t) {
  flush(CONTAINER(t, tunnel_client, flush_task));
}

void tunnel__client_flush_soon(tunnel_client *c) {
  if (!c->closing)
    tunnel__sched_post(&c->sched, &c->flush_task, flush_task);
}

int tunnel__client_stream_send(tunnel_client *c, uint32_t num,
                               const uint8_t *data, size_t len,
                               size_t *done) {
  *done = 0;
  cl_conn *k = conn_find(c, TUNNEL_ENGINE_CONTROL);
  while (len > COALESCE_MAX && k && k->link && !k->writing && !k->failed &&
         tunnel__engine_out_pending(c->eng, TUNNEL_ENGINE_CONTROL) == 0) {
    uint8_t hdr[TUNNEL__ENGINE_FRAME_HEADER];
    size_t n;
    int rc = tunnel__engine_stream_frame(c->eng, num, len, hdr, &n);
    if (rc || n == 0)
      return *done ? 0 : rc; /* 0 with n == 0: the window is closed */
    uv_buf_t b[2] = {uv_buf_init((char *)hdr, sizeof hdr),
                     uv_buf_init((char *)data, (unsigned)n)};
    int w = tunnel__link_try_write(k->link, b, 2);
    size_t sent = w > 0 ? (size_t)w : 0;
    *done += n;
    data += n;
    len -= n;
    if (sent == sizeof hdr + n)
      continue;
    /* The frame is committed: what did not go out is queued, in order. */
    tunnel__iov rest[2];
    size_t cnt = 0;
    if (sent < sizeof hdr)
      rest[cnt++] = (tunnel__iov){hdr + sent, sizeof hdr - sent};
    size_t poff = sent > sizeof hdr ? sent - sizeof hdr : 0;
    rest[cnt++] = (tunnel__iov){data - n + poff, n - poff};
    if (tunnel__engine_out_push(c->eng, rest, cnt) != 0)
      k->failed = TUNNEL_ENOMEM; /* a torn frame ends the session */
    else if (w < 0)
      k->failed = w;
    if (k->failed) {
      tunnel__client_flush_soon(c);
      return 0;
    }
    /* The rest of the write goes behind it: left for later, it would wait
     * for a window update that a short send never earns. */
    conn_flush(k);
    break;
  }
  if (!len)
    return 0;
  size_t q = 0;
  int rc = tunnel_engine_stream_write(c->eng, num, data, len, &q);
  *done += q;
  if (q)
    tunnel__client_flush_soon(c);
  return *done ? 0 : rc;
}

int tunnel__client_has_room(const tunnel_client *c) {
  return tunnel__engine_out_pending(c->eng, TUNNEL_ENGINE_CONTROL) <
         (c->blocked ? OUT_LOW : OUT_HIGH);
}

void tunnel__client_wait_room(tunnel_client *c, tunnel_stream *st) {
  if (st->blocked)
    return;
  st->blocked = 1;
  st->blocked_next = NULL;
  tunnel_stream **pp = &c->blocked;
  while (*pp)
    pp = &(*pp)->blocked_next;
  *pp = st;
}

void tunnel__client_unblock(tunnel_client *c, tunnel_stream *st) {
  if (!st->blocked)
    return;
  tunnel_stream **pp = &c->blocked;
  while (*pp && *pp != st)
    pp = &(*pp)->blocked_next;
  if (*pp)
    *pp = st->blocked_next;
  st->blocked = 0;
  st->blocked_next = NULL;
}

/* ---------------------------------------------------------------- API */

static void sched_drained(void *ud) { tunnel__client_maybe_finish_close(ud); }

/* Who the client is, shown by the server (frp's hostname, os, arch). */
static void set_identity(tunnel_client *c) {
  char host[256] = "";
  size_t hlen = sizeof host;
  uv_utsname_t un;
  if (uv_os_gethostname(host, &hlen) != 0)
    host[0] = '\0';
  if (uv_os_uname(&un) != 0) {
    tunnel_engine_set_identity(c->eng, host, NULL, NULL);
    return;
  }
  for (char *q = un.sysname; *q; q++)
    if (*q >= 'A' && *q <= 'Z')
      *q = (char)(*q - 'A' + 'a');
  tunnel_engine_set_identity(c->eng, host, un.sysname, un.machine);
}

int tunnel_client_new(tunnel_client **out, uv_loop_t *loop,
                      const tunnel_config *cfg) {
  if (!out || !loop)
    return TUNNEL_EINVAL;
  *out = NULL;
  struct tunnel_config defaults;
  if (!cfg) {
    tunnel__config_defaults(&defaults);
    cfg = &defaults;
  }
  tunnel_client *c = tunnel__calloc(&cfg->mem, 1, sizeof *c);
  if (!c)
    return TUNNEL_ENOMEM;
  int rc = tunnel__config_copy(&c->cfg, cfg);
  if (rc == 0 && !(c->readbuf = tunnel__malloc(MEM(c), TUNNEL__CLIENT_READBUF)))
    rc = TUNNEL_ENOMEM;
  if (rc == 0)
    rc = tunnel_engine_new(&c->eng, cfg, c);
  if (rc == 0 && tunnel__tlsconf_wanted(&c->cfg, 0))
    rc = tunnel__tlsconf_new(&c->tls, &c->cfg, &c->cfg.log, 0);
  if (rc) {
    tunnel_engine_free(c->eng);
    tunnel__free(MEM(c), c->readbuf);
    tunnel__config_release(&c->cfg);
    tunnel__free(&cfg->mem, c);
    return rc;
  }
  tunnel_engine_set_state_cb(c->eng, on_state);
  tunnel_engine_set_proxy_cb(c->eng, on_proxy);
  tunnel_engine_set_stream_cbs(c->eng, on_open, on_data, on_end, on_writable);
  tunnel_engine_set_conn_cbs(c->eng, on_connect, on_disconnect);
  tunnel_engine_set_datagram_cb(c->eng, on_datagram);
  tunnel_engine_set_visit_cb(c->eng, on_visit);
  tunnel_engine_set_event_cb(c->eng, on_event);
  tunnel_engine_set_random_cb(c->eng, fill_random);
  tunnel_engine_set_time_cb(c->eng, unix_time);
  set_identity(c);
  c->loop = loop;
  tunnel__sched_init(&c->sched, loop);
  c->sched.drained = sched_drained;
  c->sched.drained_ud = c;
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->handles = 1;
  *out = c;
  return 0;
}

int tunnel_client_set_state_cb(tunnel_client *c, tunnel_client_state_cb cb,
                               void *ud) {
  if (!c)
    return TUNNEL_EINVAL;
  c->state_cb = cb;
  c->state_ud = ud;
  return 0;
}

int tunnel_client_set_event_cb(tunnel_client *c, tunnel_client_event_cb cb,
                               void *ud) {
  if (!c)
    return TUNNEL_EINVAL;
  c->event_cb = cb;
  c->event_ud = ud;
  return 0;
}

/* From the loop, so the program's callbacks never run inside its own
 * call. */
static void connect_task(tunnel__task *t) {
  tunnel_client *c = CONTAINER(t, tunnel_client, connect_task);
  int rc = tunnel_engine_connect(c->eng, now_ms(c));
  if (rc)
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN, "client: cannot connect: %s",
                tunnel_strerror(rc));
  after_engine(c);
}

int tunnel_client_connect(tunnel_client *c, const char *host, uint16_t port) {
  if (!c || !host || !*host || port == 0)
    return TUNNEL_EINVAL;
  if (c->closing || c->drain_timer || c->connect_task.queued ||
      c->state == TUNNEL__C_CONNECTING || c->state == TUNNEL__C_LOGIN ||
      c->state == TUNNEL__C_READY)
    return TUNNEL_ESTATE;
  char *h = tunnel__strdup(MEM(c), host);
  if (!h)
    return TUNNEL_ENOMEM;
  tunnel__free(MEM(c), c->host);
  c->host = h;
  c->port = port;
  tunnel__sched_post(&c->sched, &c->connect_task, connect_task);
  return 0;
}

static void sched_closed(uv_handle_t *h) {
  tunnel_client *c = CONTAINER(h, tunnel_client, sched.idle);
  tunnel_client_close_cb cb = c->close_cb;
  void *ud = c->close_ud;
  tunnel__mem mem = c->cfg.mem;
  tunnel_engine_free(c->eng);
  tunnel__free(&mem, c->readbuf);
  tunnel__free(&mem, c->host);
  tunnel__tls_conf_free(c->tls); /* every link has ended */
  tunnel__config_release(&c->cfg);
  tunnel__free(&mem, c);
  if (cb)
    cb(c, ud);
}

void tunnel__client_maybe_finish_close(tunnel_client *c) {
  if (!c->closing || c->handles || c->splices.count || c->objects ||
      c->sched.refs || c->sched.closing)
    return;
  tunnel__sched_close(&c->sched, sched_closed);
}

static void drain_timer_closed(uv_handle_t *h) {
  tunnel_client *c = h->data;
  tunnel__free(MEM(c), h);
  c->handles--;
  tunnel__client_maybe_finish_close(c);
}

static void timer_closed(uv_handle_t *h) {
  tunnel_client *c = h->data;
  c->handles--;
  tunnel__client_maybe_finish_close(c);
}

int tunnel_client_close(tunnel_client *c, tunnel_client_close_cb cb,
                        void *ud) {
  if (!c)
    return TUNNEL_EINVAL;
  if (c->closing)
    return TUNNEL_ESTATE;
  c->closing = 1;
  c->close_cb = cb;
  c->close_ud = ud;
  tunnel__sched_cancel(&c->sched, &c->flush_task);
  tunnel__sched_cancel(&c->sched, &c->connect_task);
  tunnel__sched_cancel(&c->sched, &c->visit_task);
  tunnel__client_visitors_free(c);
  if (c->drain_timer) { /* a drain ends now; only this callback fires */
    uv_close((uv_handle_t *)c->drain_timer, drain_timer_closed);
    c->drain_timer = NULL;
  }
  /* The engine ends its session (its streams end with it) and gives up
   * reconnecting; then every connection goes. */
  tunnel_engine_stop(c->eng, now_ms(c));
  session_down(c, TUNNEL_ECANCELED, "client closed");
  tunnel__client_visits_abort(c);
  /* Non-mux joins are connections of their own: no session end reaches
   * them. */
  tunnel__splice_abort_all(&c->splices);
  tunnel__client_proxies_free(c);
  uv_close((uv_handle_t *)&c->timer, timer_closed);
  return 0;
}

/* Visitors still carried: engine streams, joins to local services,
 * whole connections handed over (non-mux), streams handed to the
 * program. */
static int visitors_left(const tunnel_client *c) {
  return tunnel_engine_stream_count(c->eng) > 0 || c->splices.count > 0 ||
         c->joins != NULL || c->handed.head != NULL || c->visits != NULL;
}

static void drain_check(uv_timer_t *t) {
  tunnel_client *c = t->data;
  if (visitors_left(c) && now_ms(c) < c->drain_deadline)
    return;
  if (visitors_left(c))
    tunnel__log(&c->cfg.log, TUNNEL_LOG_WARN,
                "client: drain time over; closing what is left");
  tunnel_client_close_cb cb = c->drain_cb;
  void *ud = c->drain_ud;
  uv_close((uv_handle_t *)c->drain_timer, drain_timer_closed);
  c->drain_timer = NULL;
  tunnel_client_close(c, cb, ud);
}

int tunnel_client_shutdown(tunnel_client *c, uint32_t drain_ms,
                           tunnel_client_close_cb cb, void *ud) {
  if (!c)
    return TUNNEL_EINVAL;
  if (c->closing || c->drain_timer)
    return TUNNEL_ESTATE;
  if (drain_ms == 0)
    return tunnel_client_close(c, cb, ud);
  uv_timer_t *t = tunnel__malloc(MEM(c), sizeof *t);
  if (!t)
    return TUNNEL_ENOMEM;
  tunnel__sched_cancel(&c->sched, &c->connect_task);
  /* Proxies withdrawn now, so their ports are free at once and no new
   * visitor arrives; no reconnection after. */
  tunnel_engine_drain(c->eng, now_ms(c));
  tunnel__client_flush_soon(c);
  uv_timer_init(c->loop, t);
  t->data = c;
  c->handles++;
  c->drain_timer = t;
  c->drain_deadline = now_ms(c) + drain_ms;
  c->drain_cb = cb;
  c->drain_ud = ud;
  /* A drain is short and bounded: polled rather than hooked into every
   * path a visitor can end by. */
  uv_timer_start(t, drain_check, 0, 50);
  return 0;
}
