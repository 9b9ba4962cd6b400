/* Secret TCP services (frp's stcp): a client registers a name and a secret
 * key (sk) and gets no public port. A visitor opens a channel of its own to
 * the control port (a connection, or a stream of its logged-in session)
 * whose first message, NewVisitorConn, names the service and proves the
 * key: sign_key = md5hex(sk || decimal timestamp). The server answers
 * NewVisitorConnResp and joins the channel, stream to stream, to a work
 * stream of the service's client, as a TCP proxy's visitor is joined. frp
 * may encrypt the visitor's side with the key (its stream cipher, as on the
 * control channel); compression is refused. */
#include <stdio.h>
#include <string.h>

#include "../crypto.h"
#include "srv.h"
#include "stream.h"
#include "uverr.h"

#define MEM tunnel__srv_mem

/* Per-direction queue marks of a join, as for TCP visitors: reading one
 * side stops while the other's queue is above HIGH, resumes below LOW. */
#define HIGH (256u * 1024u)
#define LOW (64u * 1024u)
/* Bytes ciphered at a time in the server's scratch buffer, which must also
 * hold the IV sent before the first ones. */
#define CRYPT_CHUNK (TUNNEL__SRV_READBUF_SIZE - TUNNEL__CFB_IV_SIZE)
/* Longest name echoed in an error text or a log line. */
#define NAME_SHOWN 255

typedef struct stcp_proxy {
  srv_proxy *p;
  char *sk;
  uint8_t key[TUNNEL__FRP_KEY_SIZE]; /* frp's cipher key, from sk */
  srv_wait *waiting;                 /* visitors waiting for work */
} stcp_proxy;

typedef struct stcp_visitor {
  srv_wait v; /* first: the wait frees the record */
  stcp_proxy *sp;
  tunnel_stream *st;
  char addr[TUNNEL__ADDR_MAX];
  int encrypted;
} stcp_visitor;

/* One direction of a join. */
typedef struct pair_dir {
  srv_pair *pair;
  tunnel_stream *from, *to;
  tunnel__cfb *cfb; /* NULL: bytes pass as they are */
  int reading;      /* reading `from` */
  int eof;          /* `from` finished sending */
  int shut;         /* that end passed on to `to` */
} pair_dir;

struct srv_pair {
  tunnel_server *srv;
  srv_ctl *ctl; /* the service's client, while listed in its pairs */
  srv_pair *prev, *next;
  tunnel_stream *vis, *work;
  pair_dir in, out; /* visitor -> work stream, work stream -> visitor */
  tunnel__traffic *tr;
  tunnel__cfb dec, enc; /* the visitor's side, when it is encrypted */
  int crypto;
  int closing;
  int open; /* streams not yet closed, once closing */
};

/* ------------------------------------------------------------- joins */

static void pair_unlist(srv_pair *pr) {
  srv_ctl *ctl = pr->ctl;
  if (!ctl)
    return;
  if (pr->prev)
    pr->prev->next = pr->next;
  else
    ctl->pairs = pr->next;
  if (pr->next)
    pr->next->prev = pr->prev;
  pr->ctl = NULL;
  pr->prev = pr->next = NULL;
}

static void pair_stream_closed(tunnel_stream *st, void *ud) {
  srv_pair *pr = ud;
  (void)st;
  if (--pr->open)
    return;
  tunnel_server *srv = pr->srv;
  if (pr->crypto) {
    tunnel__cfb_free(&pr->dec);
    tunnel__cfb_free(&pr->enc);
  }
  tunnel__traffic_release(MEM(srv), pr->tr);
  tunnel__free(MEM(srv), pr);
  srv->npairs--;
  tunnel__srv_maybe_finish_close(srv);
}

/* Ends both sides. Unless both directions finished, each peer sees a reset
 * (a stream) or a close (a connection). */
static void pair_finish(srv_pair *pr, int err) {
  if (pr->closing)
    return;
  pr->closing = 1;
  if (err && err != TUNNEL_EEOF)
    tunnel__log(&pr->srv->cfg.log, TUNNEL_LOG_DEBUG,
                "server: secret service visitor ended: %s",
                tunnel_strerror(err));
  pair_unlist(pr);
  pr->open = 2;
  tunnel_stream_close(pr->vis, pair_stream_closed, pr);
  tunnel_stream_close(pr->work, pair_stream_closed, pr);
}

static void pair_failed(tunnel_stream *st, int err, void *ud) {
  (void)st;
  pair_finish(ud, err);
}

static void dir_read(tunnel_stream *st, int status, const uint8_t *data,
                     size_t len, void *ud);

static void dir_written(tunnel_stream *st, int status, void *ud) {
  pair_dir *d = ud;
  srv_pair *pr = d->pair;
  (void)st;
  if (status) {
    pair_finish(pr, status); /* nothing when closing already */
    return;
  }
  if (!d->reading && !d->eof && !pr->closing &&
      tunnel_stream_write_queue_size(d->to) <= LOW) {
    d->reading = 1;
    if (tunnel_stream_read_start(d->from, dir_read, d) != 0)
      pair_finish(pr, TUNNEL_ECLOSED);
  }
}

static void dir_shut(tunnel_stream *st, int status, void *ud) {
  pair_dir *d = ud;
  srv_pair *pr = d->pair;
  (void)st;
  if (status) {
    pair_finish(pr, status);
    return;
  }
  d->shut = 1;
  if (pr->in.shut && pr->out.shut)
    pair_finish(pr, 0);
}

/* Passes `len` bytes through the direction's cipher to `to`, a scratch
 * buffer's worth at a time (writes copy what they queue). */
static int dir_crypt(pair_dir *d, const uint8_t *data, size_t len) {
  uint8_t *buf = d->pair->srv->readbuf;
  int decrypt = d == &d->pair->in;
  while (len) {
    size_t n = len < CRYPT_CHUNK ? len : CRYPT_CHUNK, out_n = 0;
    int rc = decrypt ? tunnel__cfb_decrypt(d->cfb, data, n, buf, &out_n)
                     : tunnel__cfb_encrypt(d->cfb, data, n, buf, &out_n);
    if (rc == 0 && out_n)
      rc = tunnel_stream_write(d->to, buf, out_n, dir_written, d);
    /* Payload bytes: what the visitor's cipher carries, not the IV. */
    if (rc == 0 && decrypt)
      tunnel__traffic_in(d->pair->tr, out_n);
    else if (rc == 0)
      tunnel__traffic_out(d->pair->tr, n);
    if (rc)
      return rc;
    data += n;
    len -= n;
  }
  return 0;
}

static void dir_read(tunnel_stream *st, int status, const uint8_t *data,
                     size_t len, void *ud) {
  pair_dir *d = ud;
  srv_pair *pr = d->pair;
  if (pr->closing)
    return;
  if (status == TUNNEL_EEOF) {
    d->eof = 1;
    d->reading = 0;
    tunnel_stream_read_stop(st);
    int rc = tunnel_stream_shutdown(d->to, dir_shut, d);
    if (rc)
      pair_finish(pr, rc);
    return;
  }
  if (status) {
    pair_finish(pr, status);
    return;
  }
  int rc;
  if (d->cfb) {
    rc = dir_crypt(d, data, len);
  } else {
    if (d == &pr->in)
      tunnel__traffic_in(pr->tr, len);
    else
      tunnel__traffic_out(pr->tr, len);
    rc = tunnel_stream_write(d->to, data, len, dir_written, d);
  }
  if (rc) {
    pair_finish(pr, rc);
    return;
  }
  if (tunnel_stream_write_queue_size(d->to) > HIGH) {
    d->reading = 0;
    tunnel_stream_read_stop(st);
  }
}

static void dir_init(srv_pair *pr, pair_dir *d, tunnel_stream *from,
                     tunnel_stream *to) {
  d->pair = pr;
  d->from = from;
  d->to = to;
  d->reading = 1;
}

/* Joins the visitor's channel to a work stream of the service's client,
 * StartWorkConn already sent on it. Owns both streams from now on. */
static void pair_start(stcp_proxy *sp, tunnel_stream *vis, tunnel_stream *work,
                       int encrypted) {
  srv_proxy *p = sp->p;
  tunnel_server *srv = p->srv;
  srv_pair *pr = tunnel__calloc(MEM(srv), 1, sizeof *pr);
  int rc = pr ? 0 : TUNNEL_ENOMEM;
  if (rc == 0 && encrypted) {
    uint8_t iv[TUNNEL__CFB_IV_SIZE];
    pr->crypto = 1;
    rc = tunnel__uv_err(uv_random(NULL, NULL, iv, sizeof iv, 0, NULL));
    if (rc == 0)
      rc = tunnel__cfb_init_decrypt_key(&pr->dec, sp->key);
    if (rc == 0)
      rc = tunnel__cfb_init_encrypt_key(&pr->enc, sp->key, iv);
  }
  if (rc) {
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: [%s] cannot join a visitor of %s: %s", p->ctl->run_id,
                p->name, tunnel_strerror(rc));
    if (pr && pr->crypto) {
      tunnel__cfb_free(&pr->dec);
      tunnel__cfb_free(&pr->enc);
    }
    tunnel__free(MEM(srv), pr);
    tunnel_stream_close(vis, NULL, NULL);
    tunnel_stream_close(work, NULL, NULL);
    return;
  }
  pr->srv = srv;
  pr->vis = vis;
  pr->work = work;
  dir_init(pr, &pr->in, vis, work);
  dir_init(pr, &pr->out, work, vis);
  if (encrypted) {
    pr->in.cfb = &pr->dec;
    pr->out.cfb = &pr->enc;
  }
  pr->tr = p->traffic;
  tunnel__traffic_hold(pr->tr);
  srv->npairs++;
  pr->ctl = p->ctl;
  pr->next = p->ctl->pairs;
  if (pr->next)
    pr->next->prev = pr;
  p->ctl->pairs = pr;
  tunnel__stream_watch(vis, pair_failed, pr);
  tunnel__stream_watch(work, pair_failed, pr);
  if (tunnel_stream_read_start(vis, dir_read, &pr->in) != 0 ||
      tunnel_stream_read_start(work, dir_read, &pr->out) != 0)
    pair_finish(pr, TUNNEL_ECLOSED);
}

void tunnel__srv_pairs_abort(srv_ctl *ctl) {
  while (ctl->pairs)
    pair_finish(ctl->pairs, TUNNEL_ECLOSED);
}

/* ---------------------------------------------------------- visitors */

static void visitor_got(srv_wait *v, tunnel_stream *work) {
  stcp_visitor *sv = (stcp_visitor *)v;
  stcp_proxy *sp = sv->sp;
  if (tunnel__srv_start_work(sp->p, work, sv->addr, 0, "", 0) != 0) {
    tunnel_stream_close(work, NULL, NULL);
    tunnel_stream_close(sv->st, NULL, NULL);
    return;
  }
  pair_start(sp, sv->st, work, sv->encrypted);
}

static void visitor_drop(srv_wait *v) {
  tunnel_stream_close(((stcp_visitor *)v)->st, NULL, NULL);
}

static stcp_proxy *find_service(tunnel_server *srv, const char *name) {
  for (srv_ctl *c = srv->ctls; c; c = c->next)
    for (srv_proxy *p = c->proxies; !c->dead && p; p = p->next)
      if (p->kind == &tunnel__srv_kind_stcp && strcmp(p->name, name) == 0)
        return p->kind_data;
  return NULL;
}

/* Answers NewVisitorConn with `why` and ends the channel once the peer has
 * read it. `log`: whether this refusal gets a line of its own. */
static void refuse(tunnel_server *srv, tunnel_stream *st, const char *addr,
                   const char *name, const char *why, int log) {
  if (log)
    tunnel__log(&srv->cfg.log, TUNNEL_LOG_WARN,
                "server: visitor connection from %s for [%.*s] refused: %s",
                addr, NAME_SHOWN, name, why);
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_NEW_VISITOR_CONN_RESP);
  tunnel__msg_set_str(MEM(srv), &r.proxy_name, name);
  tunnel__msg_set_str(MEM(srv), &r.error, why);
  tunnel__srv_send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  tunnel_stream_shutdown(st, NULL, NULL);
  tunnel__srv_drain_start(srv, st, addr);
}

/* Whether `m` proves the service's key, within the allowed clock skew (a
 * captured key is only good for that long); else why not. */
static const char *check_sign(tunnel_server *srv, const stcp_proxy *sp,
                              const tunnel__msg *m, char *why, size_t len,
                              const char *name) {
  char want[33];
  int ok =
      m->sign_key && strlen(m->sign_key) == 32 &&
      tunnel__privilege_key(sp->sk, strlen(sp->sk), m->timestamp, want) == 0 &&
      tunnel__ct_equal(want, m->sign_key, 32);
  tunnel__wipe(want, sizeof want);
  if (!ok) {
    snprintf(why, len, "visitor connection of [%.*s] auth failed", NAME_SHOWN,
             name);
    return why;
  }
  uint32_t skew = srv->cfg.auth_max_skew_s;
  int64_t now = tunnel__srv_now_seconds();
  if (skew && (m->timestamp < now - (int64_t)skew ||
               m->timestamp > now + (int64_t)skew)) {
    snprintf(why, len,
             "visitor connection of [%.*s] auth failed: timestamp out of "
             "range (check the clock)",
             NAME_SHOWN, name);
    return why;
  }
  return NULL;
}

void tunnel__srv_on_new_visitor(tunnel_server *srv, srv_sess *sess,
                                tunnel_stream *st, const char *addr,
                                const tunnel__msg *m) {
  const char *name = m->proxy_name ? m->proxy_name : "";
  char why[NAME_SHOWN + 128];
  /* An address out of attempts is refused before any lookup or key
   * check; its refusals are logged once per window. */
  uint32_t wait_s = tunnel__srv_blocked_for(srv, addr, "visitor connection");
  if (wait_s) {
    snprintf(why, sizeof why,
             "too many failed visitor connections from this address; retry "
             "in %u s",
             (unsigned)wait_s);
    TUNNEL__SRV_COUNT(srv, VISITORS_REFUSED_AUTH);
    refuse(srv, st, addr, name, why, 0);
    return;
  }
  if (srv->draining) {
    refuse(srv, st, addr, name, "server is shutting down", 1);
    return;
  }
  /* A session that has not logged in is dropped at the login deadline,
   * and its joined visitors with it. */
  if (sess && !sess->ctl) {
    refuse(srv, st, addr, name,
           "a visitor stream must come in a logged-in session", 1);
    return;
  }
  stcp_proxy *sp = find_service(srv, name);
  if (!sp) {
    /* Not an attempt at the key: a service may be away for a moment (its
     * client reconnecting), which must not block its visitors' address. */
    TUNNEL__SRV_COUNT(srv, VISITORS_REFUSED_NO_TUNNEL);
    snprintf(why, sizeof why, "custom listener for [%.*s] doesn't exist",
             NAME_SHOWN, name);
    refuse(srv, st, addr, name, why, 1);
    return;
  }
  if (check_sign(srv, sp, m, why, sizeof why, name)) {
    TUNNEL__SRV_COUNT(srv, VISITORS_REFUSED_AUTH);
    tunnel__srv_count_failure(srv, addr);
    refuse(srv, st, addr, name, why, 1);
    return;
  }
  if (m->use_compression) {
    snprintf(why, sizeof why,
             "visitor connection of [%.*s] refused: use_compression is not "
             "supported by this server",
             NAME_SHOWN, name);
    refuse(srv, st, addr, name, why, 1);
    return;
  }
  stcp_visitor *sv = tunnel__calloc(MEM(srv), 1, sizeof *sv);
  if (!sv) {
    refuse(srv, st, addr, name, "server out of memory", 1);
    return;
  }
  tunnel__msg r;
  tunnel__msg_init(&r, TUNNEL__MSG_NEW_VISITOR_CONN_RESP);
  int rc = tunnel__msg_set_str(MEM(srv), &r.proxy_name, name);
  if (rc == 0)
    rc = tunnel__srv_send_plain(srv, st, &r);
  tunnel__msg_clear(MEM(srv), &r);
  if (rc) {
    tunnel__free(MEM(srv), sv);
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  srv_proxy *p = sp->p;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_DEBUG,
              "server: [%s] visitor from %s for secret service %s%s",
              p->ctl->run_id, addr, p->name,
              m->use_encryption ? " (encrypted)" : "");
  sv->sp = sp;
  sv->st = st;
  sv->encrypted = m->use_encryption;
  snprintf(sv->addr, sizeof sv->addr, "%s", addr);
  sv->v.got = visitor_got;
  sv->v.drop = visitor_drop;
  tunnel__srv_wait_start(p, &sv->v, &sp->waiting);
}

/* ----------------------------------------------------------- the kind */

static int stcp_open(srv_proxy *p, const tunnel__msg *m, char *remote_addr,
                     size_t ralen, char *err, size_t errlen) {
  tunnel_server *srv = p->srv;
  /* frp would cipher or compress the work stream, which this server
   * carries as it is. */
  if (m->use_encryption || m->use_compression) {
    snprintf(err, errlen,
             "stcp services with use_encryption or use_compression are not "
             "supported by this server (visitors may encrypt their side)");
    return TUNNEL_EINVAL;
  }
  /* Without a key anyone knowing the name could visit. */
  if (!m->sk || !*m->sk) {
    snprintf(err, errlen, "stcp services need a secret key (sk)");
    return TUNNEL_EINVAL;
  }
  stcp_proxy *sp = tunnel__calloc(MEM(srv), 1, sizeof *sp);
  if (!sp || !(sp->sk = tunnel__strdup(MEM(srv), m->sk))) {
    tunnel__free(MEM(srv), sp);
    return TUNNEL_ENOMEM;
  }
  int rc = tunnel__frp_key(sp->sk, strlen(sp->sk), sp->key);
  if (rc) {
    tunnel__wipe_string(sp->sk);
    tunnel__free(MEM(srv), sp->sk);
    tunnel__free(MEM(srv), sp);
    return rc;
  }
  sp->p = p;
  p->kind_data = sp;
  /* No public address: visitors come through the control port. */
  if (ralen)
    remote_addr[0] = '\0';
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO,
              "server: [%s] secret service %s registered", p->ctl->run_id,
              p->name);
  return 0;
}

static void stcp_close(srv_proxy *p) {
  stcp_proxy *sp = p->kind_data;
  tunnel_server *srv = p->srv;
  /* Waiting visitors go; joined ones run on. */
  tunnel__srv_wait_drop_all(p, &sp->waiting);
  tunnel__wipe_string(sp->sk);
  tunnel__free(MEM(srv), sp->sk);
  tunnel__wipe(sp->key, sizeof sp->key);
  tunnel__free(MEM(srv), sp);
  tunnel__srv_proxy_free(p);
}

const srv_kind tunnel__srv_kind_stcp = {"stcp", stcp_open, stcp_close};
