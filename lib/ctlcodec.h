/* frp control messages over a byte stream, sans-I/O: framing, and once
 * switched on, frp's AES-128-CFB encryption (each direction starts with its
 * own IV in clear). Holds no transport: bytes go in through
 * tunnel__ctlcodec_feed() and encoded messages are appended to a queue the
 * caller owns. */
#ifndef TUNNEL_LIB_CTLCODEC_H
#define TUNNEL_LIB_CTLCODEC_H

#include <stddef.h>
#include <stdint.h>

#include "bufq.h"
#include "crypto.h"
#include "mem.h"
#include "msg.h"

/* A whole message (valid for the call). Return 1 for more, 0 to stop: the
 * codec is not touched again by this feed, so the handler may free it. */
typedef int (*tunnel__ctlcodec_msg_fn)(void *ud, const tunnel__msg *m);

typedef struct tunnel__ctlcodec {
  const tunnel__mem *mem;
  tunnel__msg_reader reader;
  int encrypted;
  int failed; /* sticky: a cipher stream cannot resynchronise */
  tunnel__cfb enc;
  tunnel__cfb dec;
  tunnel__bufq frame; /* encoding scratch */
} tunnel__ctlcodec;

void tunnel__ctlcodec_init(tunnel__ctlcodec *c, const tunnel__mem *mem,
                           uint32_t max_body);
/* Wipes and frees what the codec holds. */
void tunnel__ctlcodec_free(tunnel__ctlcodec *c);
/* Both directions are encrypted from the next byte on: what is sent
 * starts with `iv`, what arrives with the peer's IV. */
int tunnel__ctlcodec_encrypt(tunnel__ctlcodec *c,
                             const uint8_t key[TUNNEL__FRP_KEY_SIZE],
                             const uint8_t iv[TUNNEL__CFB_IV_SIZE]);
/* Frames (and encrypts) `m` onto `out`. On error the codec is failed when
 * encrypted (the cipher stream may have advanced past bytes never sent). */
int tunnel__ctlcodec_encode(tunnel__ctlcodec *c, const tunnel__msg *m,
                            tunnel__bufq *out);
/* Parses messages out of `data`, calling `fn` for each. *used says how many
 * bytes were taken: all of them unless `fn` stopped (while unencrypted, the
 * bytes after the message that stopped it belong to whoever reads next). A
 * handler may switch encryption on; the bytes after its message are then
 * decrypted. Returns 0 or the error (a bad message, TUNNEL_ENOMEM), after
 * which the codec is failed. */
int tunnel__ctlcodec_feed(tunnel__ctlcodec *c, const uint8_t *data,
                          size_t len, size_t *used, tunnel__ctlcodec_msg_fn fn,
                          void *ud);

#endif
