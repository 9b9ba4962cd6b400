/* The bulk base64 codec against RFC 4648's vectors, the inputs Go's
 * StdEncoding refuses, and mbedTLS's own codec on random data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <mbedtls/base64.h>

#include "base64.h"
#include "tunnel/tunnel.h"

static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba",
                                    "foobar"};
static const char *const coded[] = {"",         "Zg==",     "Zm8=",
                                    "Zm9v",     "Zm9vYg==", "Zm9vYmE=",
                                    "Zm9vYmFy"};

static int decode(const char *in, uint8_t *out, size_t cap, size_t *olen) {
  return tunnel__b64_decode(out, cap, olen, (const uint8_t *)in, strlen(in));
}

static void rfc_vectors(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    uint8_t enc[16], dec[16];
    size_t n = strlen(plain[i]), olen = 99;
    assert_int_equal(tunnel__b64_len(n), strlen(coded[i]));
    tunnel__b64_encode(enc, (const uint8_t *)plain[i], n);
    assert_memory_equal(enc, coded[i], strlen(coded[i]));
    assert_int_equal(decode(coded[i], dec, sizeof dec, &olen), 0);
    assert_int_equal(olen, n);
    assert_memory_equal(dec, plain[i], n);
  }
}

static void line_breaks_skipped(void **state) {
  (void)state;
  uint8_t out[16];
  size_t olen;
  assert_int_equal(decode("Zm9v\r\nYmFy\n", out, sizeof out, &olen), 0);
  assert_int_equal(olen, 6);
  assert_memory_equal(out, "foobar", 6);
  assert_int_equal(decode("Zg=\n=", out, sizeof out, &olen), 0);
  assert_int_equal(olen, 1);
  assert_int_equal(decode("\r\n", out, sizeof out, &olen), 0);
  assert_int_equal(olen, 0);
}

static void refused(void **state) {
  (void)state;
  static const char *const bad[] = {
      "Zg",       /* short last group */
      "Zm9",      /* short last group */
      "Z===",     /* too much padding */
      "====",     /* padding alone */
      "Zg=",      /* padding cut short */
      "Zg==Zg==", /* data after the padding */
      "Zg=a",     /* a character after the padding */
      "Zm 9v",    /* a space */
      "Zm\t9v",   /* a tab */
      "Zm9v-_==", /* the URL alphabet */
      "Zm9v\x80", /* not ASCII */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint8_t out[16];
    size_t olen = 99;
    if (decode(bad[i], out, sizeof out, &olen) != TUNNEL_EPROTO)
      fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(olen, 0);
  }
  /* No room: refused, never written past `cap`. */
  uint8_t out[2];
  size_t olen;
  assert_int_equal(decode("Zm9v", out, sizeof out, &olen), TUNNEL_EPROTO);
}

static void same_as_mbedtls(void **state) {
  (void)state;
  srand(7);
  for (int round = 0; round < 500; round++) {
    size_t n = (size_t)(rand() % 3000);
    uint8_t *in = malloc(n + 1), *ours = malloc(tunnel__b64_len(n) + 1),
            *theirs = malloc(tunnel__b64_len(n) + 1), *back = malloc(n + 3);
    assert_non_null(in);
    for (size_t i = 0; i < n; i++)
      in[i] = (uint8_t)rand();
    size_t tlen = 0, olen = 0;
    tunnel__b64_encode(ours, in, n);
    assert_int_equal(mbedtls_base64_encode(theirs, tunnel__b64_len(n) + 1,
                                           &tlen, in, n),
                     0);
    assert_int_equal(tlen, tunnel__b64_len(n));
    assert_memory_equal(ours, theirs, tlen);
    assert_int_equal(tunnel__b64_decode(back, n + 3, &olen, ours, tlen), 0);
    assert_int_equal(olen, n);
    if (n)
      assert_memory_equal(back, in, n);
    free(in);
    free(ours);
    free(theirs);
    free(back);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(rfc_vectors),
      cmocka_unit_test(line_breaks_skipped),
      cmocka_unit_test(refused),
      cmocka_unit_test(same_as_mbedtls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
