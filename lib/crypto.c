#include "crypto.h"

#include <string.h>

#include <mbedtls/md.h>
#include <mbedtls/md5.h>
#include <mbedtls/pkcs5.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/version.h>

/* mbedTLS 3 renamed the int-returning MD5 calls (2.x's *_ret) and, from
 * 3.3, offers PBKDF2 without a caller-managed md context. */
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define md5_starts mbedtls_md5_starts
#define md5_update mbedtls_md5_update
#define md5_finish mbedtls_md5_finish
#else
#define md5_starts mbedtls_md5_starts_ret
#define md5_update mbedtls_md5_update_ret
#define md5_finish mbedtls_md5_finish_ret
#endif

static const char frp_salt[] = "frp";
enum { FRP_PBKDF2_ITERATIONS = 64 };

/* Decimal text of v into buf (at least 21 bytes), NUL-terminated; returns
 * its length. Not printf: newlib-nano's has no 64-bit conversions (it would
 * print "ld"), and its <inttypes.h> may lack PRId64 under GCC's <stdint.h>. */
static size_t fmt_i64(char *buf, int64_t v) {
  char rev[20];
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  size_t n = 0, len = 0;
  do {
    rev[n++] = (char)('0' + (int)(u % 10));
    u /= 10;
  } while (u);
  if (v < 0)
    buf[len++] = '-';
  while (n)
    buf[len++] = rev[--n];
  buf[len] = '\0';
  return len;
}

int tunnel__privilege_key(const char *token, size_t token_len,
                          int64_t timestamp, char out_hex[33]) {
  static const char hex[] = "0123456789abcdef";
  char num[24];
  size_t nl = fmt_i64(num, timestamp);
  uint8_t d[16];
  mbedtls_md5_context ctx;
  mbedtls_md5_init(&ctx);
  int rc = md5_starts(&ctx);
  if (!rc && token_len)
    rc = md5_update(&ctx, (const unsigned char *)token, token_len);
  if (!rc)
    rc = md5_update(&ctx, (const unsigned char *)num, nl);
  if (!rc)
    rc = md5_finish(&ctx, d);
  mbedtls_md5_free(&ctx);
  if (rc) {
    out_hex[0] = '\0';
    return TUNNEL_ECRYPTO;
  }
  for (size_t i = 0; i < sizeof d; i++) {
    out_hex[2 * i] = hex[d[i] >> 4];
    out_hex[2 * i + 1] = hex[d[i] & 15];
  }
  out_hex[32] = '\0';
  mbedtls_platform_zeroize(d, sizeof d);
  return 0;
}

int tunnel__ct_equal(const void *a, const void *b, size_t n) {
  /* volatile keeps the compiler from ending the loop at the first
   * difference. */
  const volatile uint8_t *x = a, *y = b;
  unsigned d = 0;
  for (size_t i = 0; i < n; i++)
    d |= (unsigned)(x[i] ^ y[i]);
  return (int)(1u & ((d - 1u) >> 8));
}

int tunnel__frp_key(const char *token, size_t token_len,
                    uint8_t key[TUNNEL__FRP_KEY_SIZE]) {
  const unsigned char *pw = (const unsigned char *)(token ? token : "");
  int rc;
#if MBEDTLS_VERSION_NUMBER >= 0x03030000
  rc = mbedtls_pkcs5_pbkdf2_hmac_ext(
      MBEDTLS_MD_SHA1, pw, token_len, (const unsigned char *)frp_salt,
      sizeof frp_salt - 1, FRP_PBKDF2_ITERATIONS, TUNNEL__FRP_KEY_SIZE, key);
#else
  const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA1);
  if (!info)
    return TUNNEL_ECRYPTO;
  mbedtls_md_context_t md;
  mbedtls_md_init(&md);
  rc = mbedtls_md_setup(&md, info, 1);
  if (!rc)
    rc = mbedtls_pkcs5_pbkdf2_hmac(
        &md, pw, token_len, (const unsigned char *)frp_salt,
        sizeof frp_salt - 1, FRP_PBKDF2_ITERATIONS, TUNNEL__FRP_KEY_SIZE, key);
  mbedtls_md_free(&md);
#endif
  if (rc == MBEDTLS_ERR_MD_ALLOC_FAILED)
    return TUNNEL_ENOMEM;
  return rc ? TUNNEL_ECRYPTO : 0;
}

static int cfb_init(tunnel__cfb *c, const uint8_t *key, int encrypt) {
  memset(c, 0, sizeof *c);
  mbedtls_aes_init(&c->aes);
  c->encrypt = (uint8_t)encrypt;
  /* CFB runs the block cipher forwards in both directions. */
  if (!key || mbedtls_aes_setkey_enc(&c->aes, key, 128) != 0)
    return key ? TUNNEL_ECRYPTO : TUNNEL_EINVAL;
  return 0;
}

int tunnel__cfb_init_encrypt_key(tunnel__cfb *c,
                                 const uint8_t key[TUNNEL__FRP_KEY_SIZE],
                                 const uint8_t iv[TUNNEL__CFB_IV_SIZE]) {
  int rc = cfb_init(c, key, 1);
  if (rc)
    return rc;
  if (!iv)
    return TUNNEL_EINVAL;
  memcpy(c->iv, iv, TUNNEL__CFB_IV_SIZE);
  return 0;
}

int tunnel__cfb_init_decrypt_key(tunnel__cfb *c,
                                 const uint8_t key[TUNNEL__FRP_KEY_SIZE]) {
  return cfb_init(c, key, 0);
}

int tunnel__cfb_init_encrypt(tunnel__cfb *c, const char *token,
                             size_t token_len,
                             const uint8_t iv[TUNNEL__CFB_IV_SIZE]) {
  uint8_t key[TUNNEL__FRP_KEY_SIZE];
  int rc = tunnel__frp_key(token, token_len, key);
  if (rc) {
    cfb_init(c, NULL, 1); /* leaves a context that is safe to free */
    return rc;
  }
  rc = tunnel__cfb_init_encrypt_key(c, key, iv);
  mbedtls_platform_zeroize(key, sizeof key);
  return rc;
}

int tunnel__cfb_init_decrypt(tunnel__cfb *c, const char *token,
                             size_t token_len) {
  uint8_t key[TUNNEL__FRP_KEY_SIZE];
  int rc = tunnel__frp_key(token, token_len, key);
  if (rc) {
    cfb_init(c, NULL, 0);
    return rc;
  }
  rc = tunnel__cfb_init_decrypt_key(c, key);
  mbedtls_platform_zeroize(key, sizeof key);
  return rc;
}

int tunnel__cfb_encrypt(tunnel__cfb *c, const uint8_t *in, size_t n,
                        uint8_t *out, size_t *out_n) {
  *out_n = 0;
  if (!c->encrypt)
    return TUNNEL_EINVAL;
  size_t pre = 0;
  if (!c->iv_sent) {
    /* Shift the plaintext first so that out == in works: the IV goes in
     * front of the data it precedes. */
    if (n)
      memmove(out + TUNNEL__CFB_IV_SIZE, in, n);
    memcpy(out, c->iv, TUNNEL__CFB_IV_SIZE);
    in = out + TUNNEL__CFB_IV_SIZE;
    pre = TUNNEL__CFB_IV_SIZE;
    c->iv_sent = 1;
  }
  if (n && mbedtls_aes_crypt_cfb128(&c->aes, MBEDTLS_AES_ENCRYPT, n, &c->iv_off,
                                    c->iv, in, out + pre) != 0)
    return TUNNEL_ECRYPTO;
  *out_n = pre + n;
  return 0;
}

int tunnel__cfb_decrypt(tunnel__cfb *c, const uint8_t *in, size_t n,
                        uint8_t *out, size_t *out_n) {
  *out_n = 0;
  if (c->encrypt)
    return TUNNEL_EINVAL;
  if (!n)
    return 0;
  if (c->iv_have < TUNNEL__CFB_IV_SIZE) {
    size_t k = TUNNEL__CFB_IV_SIZE - c->iv_have;
    if (k > n)
      k = n;
    memcpy(c->iv + c->iv_have, in, k);
    c->iv_have = (uint8_t)(c->iv_have + k);
    n -= k;
    if (!n)
      return 0;
    /* Move the ciphertext after the IV to the start of out, then decrypt
     * in place: correct for out == in without relying on the order in
     * which mbedTLS touches the bytes. */
    memmove(out, in + k, n);
    in = out;
  }
  if (n && mbedtls_aes_crypt_cfb128(&c->aes, MBEDTLS_AES_DECRYPT, n, &c->iv_off,
                                    c->iv, in, out) != 0)
    return TUNNEL_ECRYPTO;
  *out_n = n;
  return 0;
}

void tunnel__cfb_free(tunnel__cfb *c) {
  mbedtls_aes_free(&c->aes); /* zeroizes the key schedule */
  mbedtls_platform_zeroize(c, sizeof *c);
}
