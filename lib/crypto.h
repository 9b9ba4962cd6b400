/*
 * frp authentication and stream encryption, sans-I/O (mbedTLS primitives).
 *
 * - privilege_key: hex(md5(token || decimal timestamp)), as frp's
 *   util.GetAuthKey, sent in Login, NewWorkConn and Ping.
 * - Encrypted control stream (golib/crypto with frp's salt): AES-128-CFB
 *   with full 128-bit feedback (Go's cipher.NewCFBEncrypter), key =
 *   PBKDF2-HMAC-SHA1(token, "frp", 64 iterations, 16 bytes). Each direction
 *   has its own context; the writer sends its random IV in clear first.
 *
 * The caller supplies IVs (this module has no randomness source). Key
 * derivation costs 64 HMACs: derive once with tunnel__frp_key() and use the
 * *_key init variants per connection.
 */
#ifndef TUNNEL_LIB_CRYPTO_H
#define TUNNEL_LIB_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/aes.h>

#include "tunnel/tunnel.h"

#define TUNNEL__FRP_KEY_SIZE 16
#define TUNNEL__CFB_IV_SIZE 16

/* Lower-case hex MD5 of token followed by the decimal timestamp (a leading
 * '-' when negative), NUL-terminated. 0 or TUNNEL_ECRYPTO. */
int tunnel__privilege_key(const char *token, size_t token_len,
                          int64_t timestamp, char out_hex[33]);

/* 1 if the n bytes at a and b are equal, else 0; time depends on n only. */
int tunnel__ct_equal(const void *a, const void *b, size_t n);

/* PBKDF2-HMAC-SHA1(token, "frp", 64, 16). 0, TUNNEL_ENOMEM or
 * TUNNEL_ECRYPTO. */
int tunnel__frp_key(const char *token, size_t token_len,
                    uint8_t key[TUNNEL__FRP_KEY_SIZE]);

/* One direction of an encrypted stream. Exposed so it can be embedded. */
typedef struct tunnel__cfb {
  mbedtls_aes_context aes;
  uint8_t iv[TUNNEL__CFB_IV_SIZE]; /* CFB feedback register */
  size_t iv_off;                   /* offset into the current block */
  uint8_t iv_have;                 /* decrypt: IV bytes received so far */
  uint8_t iv_sent;                 /* encrypt: IV already emitted */
  uint8_t encrypt;                 /* direction */
} tunnel__cfb;

/* Inits return 0, TUNNEL_EINVAL, TUNNEL_ENOMEM or TUNNEL_ECRYPTO. Whatever
 * the result, tunnel__cfb_free() must be called afterwards. */
int tunnel__cfb_init_encrypt_key(tunnel__cfb *c,
                                 const uint8_t key[TUNNEL__FRP_KEY_SIZE],
                                 const uint8_t iv[TUNNEL__CFB_IV_SIZE]);
int tunnel__cfb_init_decrypt_key(tunnel__cfb *c,
                                 const uint8_t key[TUNNEL__FRP_KEY_SIZE]);
/* Same, deriving the key from the token. The caller supplies a random IV. */
int tunnel__cfb_init_encrypt(tunnel__cfb *c, const char *token,
                             size_t token_len,
                             const uint8_t iv[TUNNEL__CFB_IV_SIZE]);
/* The IV is read from the first 16 bytes of ciphertext. */
int tunnel__cfb_init_decrypt(tunnel__cfb *c, const char *token,
                             size_t token_len);

/* Encrypts n bytes. The first call emits the IV before the ciphertext (as
 * frp's writer does), so out must hold n + 16 bytes then, n afterwards;
 * *out_n is set. out == in works (with room for the IV on the first call);
 * other overlaps do not. TUNNEL_EINVAL on a decrypting context. */
int tunnel__cfb_encrypt(tunnel__cfb *c, const uint8_t *in, size_t n,
                        uint8_t *out, size_t *out_n);
/* Decrypts n bytes, first consuming the IV, so *out_n may be less than n
 * (out must hold n bytes). out == in works; other overlaps do not.
 * TUNNEL_EINVAL on an encrypting context. */
int tunnel__cfb_decrypt(tunnel__cfb *c, const uint8_t *in, size_t n,
                        uint8_t *out, size_t *out_n);
/* Wipes the key schedule and state. */
void tunnel__cfb_free(tunnel__cfb *c);

#endif
