/* frp control messages over a tunnel stream: framing, and once switched on,
 * frp's AES-128-CFB encryption (random IV first, each direction). Also used
 * unencrypted to read the first message of a new stream and hand the rest
 * of the stream on. */
#ifndef TUNNEL_LIB_UV_CTLCHAN_H
#define TUNNEL_LIB_UV_CTLCHAN_H

#include "../crypto.h"
#include "../log.h"
#include "../msg.h"
#include "stream.h"

typedef struct tunnel__ctlchan tunnel__ctlchan;

/* A whole message arrived (owned by the channel; valid for the call).
 * Return 1 to keep reading, 0 to stop and leave the following bytes in the
 * stream for its next reader; a handler that frees the channel must return
 * 0 (and the error callback may free it). On error (`err` < 0: bad message, stream
 * failed, EOF as TUNNEL_EEOF) `m` is NULL and nothing more arrives. */
typedef int (*tunnel__ctlchan_msg_cb)(tunnel__ctlchan *ch, int err,
                                      const tunnel__msg *m, void *ud);

struct tunnel__ctlchan {
  tunnel_stream *st;
  const tunnel__mem *mem;
  tunnel__msg_reader reader;
  tunnel__ctlchan_msg_cb cb;
  void *ud;
  int encrypted;
  int failed;
  tunnel__cfb enc;
  tunnel__cfb dec;
  /* Separate buffers: a message handler may send while parsing goes on. */
  uint8_t *rbuf; /* decrypted input */
  size_t rcap;
  uint8_t *wbuf; /* framed (and encrypted) output */
  size_t wcap;
  tunnel__bufq frame; /* encoding buffer */
};

void tunnel__ctlchan_init(tunnel__ctlchan *ch, tunnel_stream *st,
                          const tunnel__mem *mem, uint32_t max_body);
void tunnel__ctlchan_free(tunnel__ctlchan *ch);
int tunnel__ctlchan_read(tunnel__ctlchan *ch, tunnel__ctlchan_msg_cb cb,
                         void *ud);
/* From now on both directions are encrypted with the token's key. */
int tunnel__ctlchan_encrypt(tunnel__ctlchan *ch, const char *token);
int tunnel__ctlchan_send(tunnel__ctlchan *ch, const tunnel__msg *m);

#endif
