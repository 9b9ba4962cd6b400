#include "ctlchan.h"

#include <string.h>

#include "uverr.h"

void tunnel__ctlchan_init(tunnel__ctlchan *ch, tunnel_stream *st,
                          const tunnel__mem *mem, uint32_t max_body) {
  memset(ch, 0, sizeof *ch);
  ch->st = st;
  ch->mem = mem;
  tunnel__msg_reader_init(&ch->reader, mem, max_body);
  tunnel__bufq_init(&ch->frame, mem, 1024);
}

void tunnel__ctlchan_free(tunnel__ctlchan *ch) {
  tunnel__msg_reader_free(&ch->reader);
  tunnel__bufq_free(&ch->frame);
  /* Plaintext of the messages seen last, keys (Ping, NewWorkConn) too. */
  if (ch->rbuf)
    tunnel__wipe(ch->rbuf, ch->rcap);
  if (ch->wbuf)
    tunnel__wipe(ch->wbuf, ch->wcap);
  tunnel__free(ch->mem, ch->rbuf);
  tunnel__free(ch->mem, ch->wbuf);
  if (ch->encrypted) {
    tunnel__cfb_free(&ch->enc);
    tunnel__cfb_free(&ch->dec);
  }
  ch->rbuf = ch->wbuf = NULL;
  ch->encrypted = 0;
}

static uint8_t *grow(const tunnel__mem *mem, uint8_t **buf, size_t *cap,
                     size_t n) {
  if (n > *cap) {
    uint8_t *p = tunnel__realloc(mem, *buf, n);
    if (!p)
      return NULL;
    *buf = p;
    *cap = n;
  }
  return *buf;
}

static void fail(tunnel__ctlchan *ch, int err) {
  if (ch->failed)
    return;
  ch->failed = 1;
  ch->cb(ch, err, NULL, ch->ud);
}

/* Parses messages out of plaintext; returns bytes used. */
static size_t parse(tunnel__ctlchan *ch, const uint8_t *p, size_t n) {
  size_t off = 0;
  while (off < n && !ch->failed) {
    tunnel__msg m;
    size_t used = 0;
    int rc = tunnel__msg_reader_feed(&ch->reader, p + off, n - off, &used, &m);
    off += used;
    if (rc < 0) {
      fail(ch, rc);
      return n;
    }
    if (rc == 0)
      break;
    const tunnel__mem *mem = ch->mem;
    tunnel_stream *st = ch->st;
    unsigned gen = st->read_gen;
    int more = ch->cb(ch, 0, &m, ch->ud);
    tunnel__msg_clear(mem, &m);
    if (!more) {
      /* The handler may have freed the channel. Unless it named the next
       * reader, nobody reads until someone does: the message may have ended
       * exactly where this chunk did. */
      if (st->read_gen == gen)
        tunnel_stream_read_stop(st);
      return off;
    }
  }
  return off;
}

static size_t take(tunnel_stream *st, int status, const uint8_t *data,
                   size_t len, void *ud) {
  tunnel__ctlchan *ch = ud;
  (void)st;
  if (ch->failed)
    return len;
  if (status) {
    fail(ch, status);
    return 0;
  }
  if (!ch->encrypted)
    return parse(ch, data, len);
  /* A cipher stream cannot be handed on mid-way: every byte is taken. */
  uint8_t *plain = grow(ch->mem, &ch->rbuf, &ch->rcap, len);
  size_t plain_n = 0;
  if (!plain) {
    fail(ch, TUNNEL_ENOMEM);
    return len;
  }
  int rc = tunnel__cfb_decrypt(&ch->dec, data, len, plain, &plain_n);
  if (rc) {
    fail(ch, rc);
    return len;
  }
  parse(ch, plain, plain_n);
  return len;
}

int tunnel__ctlchan_read(tunnel__ctlchan *ch, tunnel__ctlchan_msg_cb cb,
                         void *ud) {
  ch->cb = cb;
  ch->ud = ud;
  return tunnel__stream_take_start(ch->st, take, ch);
}

int tunnel__ctlchan_encrypt(tunnel__ctlchan *ch, const char *token) {
  uint8_t iv[16];
  int rc = tunnel__uv_err(uv_random(NULL, NULL, iv, sizeof iv, 0, NULL));
  if (rc)
    return rc;
  size_t tlen = token ? strlen(token) : 0;
  rc = tunnel__cfb_init_encrypt(&ch->enc, token ? token : "", tlen, iv);
  if (rc)
    return rc;
  rc = tunnel__cfb_init_decrypt(&ch->dec, token ? token : "", tlen);
  if (rc) {
    tunnel__cfb_free(&ch->enc);
    return rc;
  }
  ch->encrypted = 1;
  return 0;
}

int tunnel__ctlchan_send(tunnel__ctlchan *ch, const tunnel__msg *m) {
  int rc = tunnel__msg_encode(ch->mem, m, &ch->frame);
  if (rc)
    return rc;
  /* Messages are small: gather the frame into one buffer. */
  size_t n = ch->frame.size;
  uint8_t *buf = grow(ch->mem, &ch->wbuf, &ch->wcap, 2 * n + 16);
  if (!buf) {
    tunnel__bufq_consume(&ch->frame, n);
    return TUNNEL_ENOMEM;
  }
  size_t off = 0;
  tunnel__iov iov[8];
  while (ch->frame.size) {
    size_t k = tunnel__bufq_iov(&ch->frame, iov, 8);
    for (size_t i = 0; i < k; i++) {
      memcpy(buf + off, iov[i].base, iov[i].len);
      off += iov[i].len;
      tunnel__bufq_consume(&ch->frame, iov[i].len);
    }
  }
  size_t out_n = n;
  if (ch->encrypted) {
    /* Ciphertext goes after the plaintext in the same buffer; the IV
     * (first message only) precedes it. */
    rc = tunnel__cfb_encrypt(&ch->enc, buf, n, buf + n, &out_n);
    if (rc)
      return rc;
    buf += n;
  }
  return tunnel_stream_write(ch->st, buf, out_n, NULL, NULL);
}
