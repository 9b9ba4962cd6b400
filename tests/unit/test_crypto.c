/* Known answers computed independently on the build machine:
 *   md5:    python3 hashlib.md5(token + str(ts).encode()).hexdigest()
 *   pbkdf2: python3 hashlib.pbkdf2_hmac('sha1', token, b'frp', 64, 16)
 *   cfb:    openssl enc -aes-128-cfb -K <key> -iv <iv> -nopad
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "crypto.h"

static void unhex(const char *hex, uint8_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
}

static void privilege_key_known_answers(void **state) {
  (void)state;
  static const struct {
    const char *token;
    size_t len;
    int64_t ts;
    const char *hex;
  } v[] = {
      {"", 0, 0, "cfcd208495d565ef66e7dff9f98764da"},
      {"123456", 6, 1700000000, "0537ef113282c8d47f39f43f72db6e77"},
      /* token_len is honoured past an embedded NUL; negative timestamps
       * format with a '-' as strconv.FormatInt does. */
      {"s3cr\0t", 6, -42, "777c372bc2c3e7453d51e96a59205d1f"},
      {"token", 5, INT64_MAX, "415dba987c6e0db97f590325d61032d3"},
      {"token", 5, INT64_MIN, "f7e826664d852bad0ca6d609836f9788"},
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    char out[33];
    memset(out, 'x', sizeof out);
    assert_int_equal(tunnel__privilege_key(v[i].token, v[i].len, v[i].ts, out),
                     0);
    assert_string_equal(out, v[i].hex);
  }
}

static void frp_key_known_answers(void **state) {
  (void)state;
  static const struct {
    const char *token;
    const char *hex;
  } v[] = {
      {"", "cdc9dc4c472c37331281df4c232a8407"},
      {"token", "c16a8f63832926cee123eea29f95d670"},
      {"frp-secret-\xe4\xb8\xad", "b2ab2075f541e89be5478b40a4f880a9"},
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    uint8_t key[16], want[16];
    unhex(v[i].hex, want, 16);
    assert_int_equal(tunnel__frp_key(v[i].token, strlen(v[i].token), key), 0);
    assert_memory_equal(key, want, 16);
  }
  uint8_t key[16], want[16];
  unhex("cdc9dc4c472c37331281df4c232a8407", want, 16);
  assert_int_equal(tunnel__frp_key(NULL, 0, key), 0);
  assert_memory_equal(key, want, 16);
}

/* openssl enc -aes-128-cfb -K c16a8f63...d670 (frp key of "token")
 *   -iv 000102030405060708090a0b0c0d0e0f -nopad, plaintext bytes 0..99. */
static const char cfb_ct_hex[] =
    "6aeec1c130e8f246c5d932887d2e0a35b6210b1db9c4e7c34f6402909d121641"
    "6caa53ce786c2dc07e184d92e82eb5fbefcdabc6c860ab096178ac9ebe6bcae4"
    "756aec7b9701d8f1ddeaf4aac6e4893f936e97607304a32828037e6b8f27b75a"
    "046e632b";
#define PT_LEN 100

static void fixture(uint8_t pt[PT_LEN], uint8_t wire[16 + PT_LEN]) {
  for (size_t i = 0; i < PT_LEN; i++)
    pt[i] = (uint8_t)i;
  for (size_t i = 0; i < 16; i++)
    wire[i] = (uint8_t)i;
  unhex(cfb_ct_hex, wire + 16, PT_LEN);
}

/* Deterministic split sizes 1..37 so blocks straddle calls. */
static size_t next_step(size_t *s) {
  *s = (*s * 7 + 3) % 37;
  return *s + 1;
}

static void cfb_encrypt_matches_openssl_any_split(void **state) {
  (void)state;
  uint8_t pt[PT_LEN], wire[16 + PT_LEN], iv[16];
  fixture(pt, wire);
  memcpy(iv, wire, 16);
  for (size_t seed = 0; seed < 37; seed++) {
    tunnel__cfb c;
    assert_int_equal(tunnel__cfb_init_encrypt(&c, "token", 5, iv), 0);
    uint8_t out[16 + PT_LEN];
    size_t off = 0, o = 0, s = seed;
    while (off < PT_LEN) {
      size_t n = next_step(&s);
      if (n > PT_LEN - off)
        n = PT_LEN - off;
      size_t got;
      assert_int_equal(tunnel__cfb_encrypt(&c, pt + off, n, out + o, &got), 0);
      assert_int_equal(got, n + (off == 0 ? 16 : 0));
      off += n;
      o += got;
    }
    assert_int_equal(o, sizeof wire);
    assert_memory_equal(out, wire, sizeof wire);
    tunnel__cfb_free(&c);
  }
}

static void cfb_decrypt_matches_openssl_any_split(void **state) {
  (void)state;
  uint8_t pt[PT_LEN], wire[16 + PT_LEN], key[16];
  fixture(pt, wire);
  assert_int_equal(tunnel__frp_key("token", 5, key), 0);
  for (size_t seed = 0; seed < 37; seed++) {
    tunnel__cfb c;
    assert_int_equal(tunnel__cfb_init_decrypt_key(&c, key), 0);
    uint8_t out[16 + PT_LEN];
    size_t off = 0, o = 0, s = seed;
    while (off < sizeof wire) {
      size_t n = next_step(&s);
      if (n > sizeof wire - off)
        n = sizeof wire - off;
      size_t got;
      assert_int_equal(tunnel__cfb_decrypt(&c, wire + off, n, out + o, &got),
                       0);
      assert_true(got <= n);
      off += n;
      o += got;
    }
    assert_int_equal(o, PT_LEN);
    assert_memory_equal(out, pt, PT_LEN);
    tunnel__cfb_free(&c);
  }
}

static void cfb_in_place(void **state) {
  (void)state;
  uint8_t pt[PT_LEN], wire[16 + PT_LEN];
  fixture(pt, wire);
  /* Decrypt in place, first chunk carrying the IV and some data. */
  for (size_t first = 0; first <= 40; first++) {
    uint8_t buf[16 + PT_LEN];
    memcpy(buf, wire, sizeof buf);
    tunnel__cfb c;
    assert_int_equal(tunnel__cfb_init_decrypt(&c, "token", 5), 0);
    uint8_t plain[PT_LEN];
    size_t got, o = 0;
    assert_int_equal(tunnel__cfb_decrypt(&c, buf, first, buf, &got), 0);
    assert_int_equal(got, first > 16 ? first - 16 : 0);
    memcpy(plain, buf, got);
    o += got;
    uint8_t *rest = buf + first;
    assert_int_equal(
        tunnel__cfb_decrypt(&c, rest, sizeof buf - first, rest, &got), 0);
    memcpy(plain + o, rest, got);
    o += got;
    assert_int_equal(o, PT_LEN);
    assert_memory_equal(plain, pt, PT_LEN);
    tunnel__cfb_free(&c);
  }
  /* Encrypt in place: the first call shifts the data to make room. */
  uint8_t buf[16 + PT_LEN];
  memcpy(buf, pt, PT_LEN);
  tunnel__cfb c;
  assert_int_equal(tunnel__cfb_init_encrypt(&c, "token", 5, wire), 0);
  size_t got;
  assert_int_equal(tunnel__cfb_encrypt(&c, buf, 10, buf, &got), 0);
  assert_int_equal(got, 26);
  memcpy(buf + 26, pt + 10, PT_LEN - 10);
  assert_int_equal(
      tunnel__cfb_encrypt(&c, buf + 26, PT_LEN - 10, buf + 26, &got), 0);
  assert_int_equal(got, PT_LEN - 10);
  assert_memory_equal(buf, wire, sizeof wire);
  tunnel__cfb_free(&c);
}

static void cfb_round_trip_and_misuse(void **state) {
  (void)state;
  uint8_t key[16], iv[16], msg[300], ct[316], back[316];
  for (size_t i = 0; i < sizeof msg; i++)
    msg[i] = (uint8_t)(i * 31 + 7);
  memset(iv, 0xa5, sizeof iv);
  assert_int_equal(tunnel__frp_key("another token", 13, key), 0);
  tunnel__cfb e, d;
  assert_int_equal(tunnel__cfb_init_encrypt_key(&e, key, iv), 0);
  assert_int_equal(tunnel__cfb_init_decrypt_key(&d, key), 0);
  size_t n;
  /* An empty first write still emits the IV, as frp's writer does. */
  assert_int_equal(tunnel__cfb_encrypt(&e, msg, 0, ct, &n), 0);
  assert_int_equal(n, 16);
  assert_memory_equal(ct, iv, 16);
  size_t m;
  assert_int_equal(tunnel__cfb_encrypt(&e, msg, sizeof msg, ct + 16, &m), 0);
  assert_int_equal(m, sizeof msg);
  assert_int_equal(tunnel__cfb_decrypt(&d, ct, 0, back, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(tunnel__cfb_decrypt(&d, ct, sizeof ct, back, &n), 0);
  assert_int_equal(n, sizeof msg);
  assert_memory_equal(back, msg, sizeof msg);
  /* Direction is enforced. */
  assert_int_equal(tunnel__cfb_decrypt(&e, ct, 1, back, &n), TUNNEL_EINVAL);
  assert_int_equal(tunnel__cfb_encrypt(&d, msg, 1, back, &n), TUNNEL_EINVAL);
  tunnel__cfb_free(&e);
  tunnel__cfb_free(&d);
  /* A wrong token decrypts to garbage, not to the message. */
  assert_int_equal(tunnel__cfb_init_decrypt(&d, "wrong", 5), 0);
  assert_int_equal(tunnel__cfb_decrypt(&d, ct, sizeof ct, back, &n), 0);
  assert_memory_not_equal(back, msg, sizeof msg);
  tunnel__cfb_free(&d);
  assert_int_equal(tunnel__cfb_init_decrypt_key(&d, NULL), TUNNEL_EINVAL);
  tunnel__cfb_free(&d);
}

static void ct_equal_cases(void **state) {
  (void)state;
  uint8_t a[64], b[64];
  for (size_t i = 0; i < sizeof a; i++)
    a[i] = b[i] = (uint8_t)i;
  assert_int_equal(tunnel__ct_equal(a, b, sizeof a), 1);
  assert_int_equal(tunnel__ct_equal(a, b, 0), 1);
  for (size_t i = 0; i < sizeof a; i++) {
    for (unsigned bit = 0; bit < 8; bit++) {
      b[i] ^= (uint8_t)(1u << bit);
      assert_int_equal(tunnel__ct_equal(a, b, sizeof a), 0);
      b[i] ^= (uint8_t)(1u << bit);
    }
  }
  assert_int_equal(tunnel__ct_equal("0537ef11", "0537ef11", 8), 1);
  assert_int_equal(tunnel__ct_equal("0537ef11", "0537ef12", 8), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(privilege_key_known_answers),
      cmocka_unit_test(frp_key_known_answers),
      cmocka_unit_test(cfb_encrypt_matches_openssl_any_split),
      cmocka_unit_test(cfb_decrypt_matches_openssl_any_split),
      cmocka_unit_test(cfb_in_place),
      cmocka_unit_test(cfb_round_trip_and_misuse),
      cmocka_unit_test(ct_equal_cases),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
