#include "ctlcodec.h"

#include <string.h>

/* Plaintext is produced in pieces this size on the stack, so decryption
 * needs no buffer that a peer could make grow. */
#define PIECE 512

void tunnel__ctlcodec_init(tunnel__ctlcodec *c, const tunnel__mem *mem,
                           uint32_t max_body) {
  memset(c, 0, sizeof *c);
  c->mem = mem;
  tunnel__msg_reader_init(&c->reader, mem, max_body);
  /* Control messages are a few hundred bytes: small chunks keep an idle
   * channel small. */
  tunnel__bufq_init(&c->frame, mem, 512);
}

void tunnel__ctlcodec_free(tunnel__ctlcodec *c) {
  tunnel__msg_reader_free(&c->reader);
  tunnel__bufq_free(&c->frame);
  if (c->encrypted) {
    tunnel__cfb_free(&c->enc);
    tunnel__cfb_free(&c->dec);
  }
  c->encrypted = 0;
}

int tunnel__ctlcodec_encrypt(tunnel__ctlcodec *c,
                             const uint8_t key[TUNNEL__FRP_KEY_SIZE],
                             const uint8_t iv[TUNNEL__CFB_IV_SIZE]) {
  if (c->encrypted)
    return TUNNEL_ESTATE;
  int rc = tunnel__cfb_init_encrypt_key(&c->enc, key, iv);
  if (rc) {
    tunnel__cfb_free(&c->enc);
    return rc;
  }
  rc = tunnel__cfb_init_decrypt_key(&c->dec, key);
  if (rc) {
    tunnel__cfb_free(&c->enc);
    tunnel__cfb_free(&c->dec);
    return rc;
  }
  c->encrypted = 1;
  return 0;
}

static int frame_out(tunnel__ctlcodec *c, tunnel__bufq *out) {
  tunnel__iov iov[4];
  while (c->frame.size) {
    size_t k = tunnel__bufq_iov(&c->frame, iov, 4);
    for (size_t i = 0; i < k; i++) {
      const uint8_t *p = iov[i].base;
      size_t left = iov[i].len;
      while (left) {
        uint8_t buf[PIECE + TUNNEL__CFB_IV_SIZE];
        size_t n = left < PIECE ? left : PIECE, out_n = n;
        const uint8_t *src = p;
        if (c->encrypted) {
          int rc = tunnel__cfb_encrypt(&c->enc, p, n, buf, &out_n);
          if (rc)
            return rc;
          src = buf;
        }
        int rc = tunnel__bufq_append(out, src, out_n);
        tunnel__wipe(buf, sizeof buf);
        if (rc)
          return rc;
        p += n;
        left -= n;
        tunnel__bufq_consume(&c->frame, n);
      }
    }
  }
  return 0;
}

int tunnel__ctlcodec_encode(tunnel__ctlcodec *c, const tunnel__msg *m,
                            tunnel__bufq *out) {
  if (c->failed)
    return TUNNEL_ESTATE;
  int rc = tunnel__msg_encode(c->mem, m, &c->frame);
  if (rc)
    return rc;
  if (!c->encrypted) {
    /* Unencrypted: all or nothing, so a failure leaves the stream whole. */
    size_t n = c->frame.size;
    tunnel__iov iov[8];
    size_t k = tunnel__bufq_iov(&c->frame, iov, 8);
    size_t got = 0;
    for (size_t i = 0; i < k; i++)
      got += iov[i].len;
    if (got == n)
      rc = tunnel__bufq_appendv(out, iov, k);
    else
      rc = frame_out(c, out);
    tunnel__bufq_consume(&c->frame, c->frame.size);
    return rc;
  }
  rc = frame_out(c, out);
  if (rc) {
    c->failed = 1;
    tunnel__bufq_consume(&c->frame, c->frame.size);
  }
  return rc;
}

/* Feeds plaintext to the framer. Returns 1 when all of it was taken, 0
 * when the handler stopped (*used then counts the bytes before the stop),
 * or an error. */
static int parse(tunnel__ctlcodec *c, const uint8_t *p, size_t n,
                 size_t *used, tunnel__ctlcodec_msg_fn fn, void *ud) {
  size_t off = 0;
  while (off < n) {
    tunnel__msg m;
    size_t k = 0;
    int rc = tunnel__msg_reader_feed(&c->reader, p + off, n - off, &k, &m);
    off += k;
    if (rc < 0)
      return rc;
    if (rc == 0)
      break;
    const tunnel__mem *mem = c->mem;
    int more = fn(ud, &m);
    tunnel__msg_clear(mem, &m);
    if (!more) {
      *used = off;
      return 0;
    }
  }
  *used = n;
  return 1;
}

int tunnel__ctlcodec_feed(tunnel__ctlcodec *c, const uint8_t *data,
                          size_t len, size_t *used, tunnel__ctlcodec_msg_fn fn,
                          void *ud) {
  *used = 0;
  if (c->failed)
    return TUNNEL_ESTATE;
  size_t off = 0;
  while (off < len) {
    if (!c->encrypted) {
      /* One message at a time: its handler may switch encryption on for
       * the bytes that follow it. */
      tunnel__msg m;
      size_t k = 0;
      int rc =
          tunnel__msg_reader_feed(&c->reader, data + off, len - off, &k, &m);
      off += k;
      if (rc < 0) {
        c->failed = 1;
        *used = len;
        return rc;
      }
      if (rc == 0)
        break;
      const tunnel__mem *mem = c->mem;
      int more = fn(ud, &m);
      tunnel__msg_clear(mem, &m);
      if (!more) {
        *used = off;
        return 0;
      }
      continue;
    }
    uint8_t buf[PIECE];
    size_t n = len - off < PIECE ? len - off : PIECE, plain = 0;
    int rc = tunnel__cfb_decrypt(&c->dec, data + off, n, buf, &plain);
    off += n;
    size_t k = 0;
    if (rc == 0)
      rc = parse(c, buf, plain, &k, fn, ud);
    tunnel__wipe(buf, plain);
    if (rc < 0) {
      c->failed = 1;
      *used = len;
      return rc;
    }
    if (rc == 0) {
      /* Stopped: a cipher stream cannot be handed on, so nobody reads
       * this codec again. */
      *used = off;
      return 0;
    }
  }
  *used = len;
  return 0;
}
