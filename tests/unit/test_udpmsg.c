#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "msg.h"
#include "udpmsg.h"
#include "wire.h"

/* ------------------------------------------------------------- helpers */

/* Allocator that fails every call after the first `fail_after` and counts
 * live blocks; cmocka's test_* functions report any block left allocated at
 * the end of a test. */
static long fail_after = -1;
static size_t allocs, live;
static void *t_malloc(size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  allocs++;
  live++;
  return test_malloc(n);
}
static void *t_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  allocs++;
  if (!p)
    live++;
  return test_realloc(p, n);
}
static void t_free(void *p, void *ud) {
  (void)ud;
  if (p)
    live--;
  test_free(p);
}
static const tunnel__mem tmem = {t_malloc, t_realloc, t_free, NULL};

/* Copies the queue into a test_malloc'd buffer and empties it. */
static uint8_t *flatten(tunnel__bufq *q, size_t *len) {
  uint8_t *out = test_malloc(q->size + 1);
  *len = 0;
  while (q->size) {
    tunnel__iov iov[4];
    size_t n = tunnel__bufq_iov(q, iov, 4);
    assert_true(n > 0);
    memcpy(out + *len, iov[0].base, iov[0].len);
    *len += iov[0].len;
    tunnel__bufq_consume(q, iov[0].len);
  }
  return out;
}

/* Encodes one datagram; checks the frame header and the size estimate. */
static uint8_t *encode(const uint8_t *data, size_t n, const char *ip,
                       uint16_t port, size_t *len) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 256);
  assert_int_equal(tunnel__udp_encode(&tmem, data, n, ip, port, &q), 0);
  uint8_t *out = flatten(&q, len);
  tunnel__bufq_free(&q);
  assert_true(*len > TUNNEL__MSG_HEADER_SIZE);
  assert_int_equal(out[0], TUNNEL__MSG_UDP_PACKET);
  assert_int_equal(tunnel__be64(out + 1), *len - TUNNEL__MSG_HEADER_SIZE);
  /* An upper bound, close enough to size a buffer by. */
  size_t est = tunnel__udp_encoded_size(n, ip);
  assert_true(est >= *len);
  assert_true(est <= *len + 8);
  return out;
}

static int decode_str(const char *json, tunnel__udp_packet *p) {
  return tunnel__udp_decode(&tmem, (const uint8_t *)json, strlen(json), p);
}

static uint8_t *pattern(size_t n) {
  uint8_t *p = test_malloc(n + 1);
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(i * 131u + 7u + (i >> 8));
  return p;
}

static void check_packet(const tunnel__udp_packet *p, const uint8_t *data,
                         size_t n, const char *ip, uint16_t port) {
  assert_int_equal(p->len, n);
  if (n)
    assert_memory_equal(p->data, data, n);
  else
    assert_null(p->data);
  assert_string_equal(p->ip, ip);
  assert_int_equal(p->port, port);
}

/* --------------------------------------------------------------- codec */

static const struct {
  const char *ip;
  uint16_t port;
} addrs[] = {
    {"127.0.0.1", 5000}, {"0.0.0.0", 0},         {"::1", 65535},
    {"2001:db8::1", 53}, {"fe80::1%eth0", 5353}, {"::ffff:10.0.0.1", 1},
    {"fe80::a:b%12", 9},
};
#define NADDRS (sizeof addrs / sizeof addrs[0])

static void round_trip(void **state) {
  (void)state;
  static const size_t sizes[] = {0, 1, 2, 3, 1400, TUNNEL__UDP_MAX_PAYLOAD};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    uint8_t *data = pattern(sizes[s]);
    for (size_t a = 0; a < NADDRS; a++) {
      size_t len;
      uint8_t *wire = encode(data, sizes[s], addrs[a].ip, addrs[a].port, &len);
      tunnel__udp_packet p;
      assert_int_equal(tunnel__udp_decode(&tmem, wire + TUNNEL__MSG_HEADER_SIZE,
                                          len - TUNNEL__MSG_HEADER_SIZE, &p),
                       0);
      check_packet(&p, data, sizes[s], addrs[a].ip, addrs[a].port);
      tunnel__udp_packet_free(&tmem, &p);
      assert_int_equal(p.len, 0);
      assert_null(p.data);
      test_free(wire);
    }
    test_free(data);
  }
}

/* The bytes Go's encoding/json writes for frp's msg.UDPPacket with Content
 * and RemoteAddr set (a *net.UDPAddr: IP as text, the zone apart). */
static void encode_exact_bytes_like_go(void **state) {
  (void)state;
  static const struct {
    const char *data;
    const char *ip;
    uint16_t port;
    const char *json;
  } cases[] = {
      {"hi", "127.0.0.1", 5000,
       "{\"c\":\"aGk=\",\"r\":{\"IP\":\"127.0.0.1\",\"Port\":5000,"
       "\"Zone\":\"\"}}"},
      {"\xfb\xff", "::1", 53,
       "{\"c\":\"+/8=\",\"r\":{\"IP\":\"::1\",\"Port\":53,\"Zone\":\"\"}}"},
      {"abc", "fe80::1%eth0", 0,
       "{\"c\":\"YWJj\",\"r\":{\"IP\":\"fe80::1\",\"Port\":0,"
       "\"Zone\":\"eth0\"}}"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t n = strlen(cases[i].data), len;
    uint8_t *wire = encode((const uint8_t *)cases[i].data, n, cases[i].ip,
                           cases[i].port, &len);
    size_t want = strlen(cases[i].json);
    assert_int_equal(len, TUNNEL__MSG_HEADER_SIZE + want);
    assert_memory_equal(wire + TUNNEL__MSG_HEADER_SIZE, cases[i].json, want);
    test_free(wire);
  }
}

static void encode_rejects(void **state) {
  (void)state;
  uint8_t *data = pattern(TUNNEL__UDP_MAX_PAYLOAD + 1);
  static const char *const bad_ips[] = {
      NULL,
      "",
      "1.2.3.4 ",
      " 1.2.3.4",
      "1.2.3.4\"",
      "1.2\\3",
      "1.2.3.4\n",
      "%eth0",
      "fe80::1%a%b",
      "fe80::1%",
      "\xc3\xa9",
      "1.2.3.4\x7f",
      "0123456789012345678901234567890123456789012345678901234567890123",
  };
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  allocs = 0;
  /* One byte over the largest UDP payload. */
  assert_int_equal(tunnel__udp_encode(&tmem, data, TUNNEL__UDP_MAX_PAYLOAD + 1,
                                      "127.0.0.1", 1, &q),
                   TUNNEL_EINVAL);
  assert_int_equal(
      tunnel__udp_encode(&tmem, data, SIZE_MAX, "127.0.0.1", 1, &q),
      TUNNEL_EINVAL);
  for (size_t i = 0; i < sizeof bad_ips / sizeof bad_ips[0]; i++)
    assert_int_equal(tunnel__udp_encode(&tmem, data, 4, bad_ips[i], 1, &q),
                     TUNNEL_EINVAL);
  assert_int_equal(q.size, 0);
  assert_int_equal(allocs, 0);
  /* 63 characters still fit. */
  static const char ip63[] =
      "fe80::1%0123456789012345678901234567890123456789012345678901234";
  assert_int_equal(sizeof ip63 - 1, TUNNEL__UDP_IP_MAX - 1);
  size_t len;
  uint8_t *wire = encode(data, 4, ip63, 1, &len);
  tunnel__udp_packet p;
  assert_int_equal(tunnel__udp_decode(&tmem, wire + TUNNEL__MSG_HEADER_SIZE,
                                      len - TUNNEL__MSG_HEADER_SIZE, &p),
                   0);
  check_packet(&p, data, 4, ip63, 1);
  tunnel__udp_packet_free(&tmem, &p);
  test_free(wire);
  tunnel__bufq_free(&q);
  test_free(data);
}

/* Bodies as frp writes them: current versions omit empty fields; older ones
 * had no omitempty and wrote "l":null. */
static void decode_stock_frp(void **state) {
  (void)state;
  static const struct {
    const char *json;
    const char *data;
    const char *ip;
    uint16_t port;
  } cases[] = {
      {"{\"c\":\"aGk=\",\"r\":{\"IP\":\"127.0.0.1\",\"Port\":5000,"
       "\"Zone\":\"\"}}",
       "hi", "127.0.0.1", 5000},
      {"{\"c\":\"aGk=\",\"l\":null,\"r\":{\"IP\":\"10.1.2.3\",\"Port\":40000,"
       "\"Zone\":\"\"}}",
       "hi", "10.1.2.3", 40000},
      /* Empty datagram: Go omits "c". */
      {"{\"r\":{\"IP\":\"::1\",\"Port\":53,\"Zone\":\"\"}}", "", "::1", 53},
      {"{\"c\":null,\"l\":null,\"r\":{\"IP\":\"::1\",\"Port\":53,"
       "\"Zone\":\"\"}}",
       "", "::1", 53},
      {"{\"c\":\"\",\"r\":{\"IP\":\"::1\",\"Port\":53,\"Zone\":\"\"}}", "",
       "::1", 53},
      {"{\"c\":\"YWJj\",\"r\":{\"IP\":\"fe80::1\",\"Port\":9,"
       "\"Zone\":\"eth0\"}}",
       "abc", "fe80::1%eth0", 9},
      /* "l" is ignored; only the sender matters. */
      {"{\"c\":\"YQ==\",\"l\":{\"IP\":\"1.1.1.1\",\"Port\":2,\"Zone\":\"\"},"
       "\"r\":{\"IP\":\"2.2.2.2\",\"Port\":3,\"Zone\":\"\"}}",
       "a", "2.2.2.2", 3},
      /* Key order, extra keys, whitespace, "\/" and missing Zone. */
      {" \r\n\t{ \"x\" : [1, {\"y\": \"}\"}] , \"r\" : { \"Zone\" : \"\" , "
       "\"Port\" : 7 , \"Extra\" : true , \"IP\" : \"1.2.3.4\" } ,\n"
       "\"c\" : \"\\/w==\" } \n",
       "\xff", "1.2.3.4", 7},
      {"{\"c\":\"YWJj\",\"r\":{\"IP\":\"1.2.3.4\",\"Port\":65535}}", "abc",
       "1.2.3.4", 65535},
      /* Sender absent or null: no address. */
      {"{\"c\":\"YWJj\"}", "abc", "", 0},
      {"{\"c\":\"YWJj\",\"r\":null}", "abc", "", 0},
      {"{}", "", "", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tunnel__udp_packet p;
    int rc = decode_str(cases[i].json, &p);
    if (rc != 0)
      fail_msg("case %zu: %d for %s", i, rc, cases[i].json);
    check_packet(&p, (const uint8_t *)cases[i].data, strlen(cases[i].data),
                 cases[i].ip, cases[i].port);
    tunnel__udp_packet_free(&tmem, &p);
  }
}

/* Go's base64 decoder skips line breaks; a payload of none is empty (and
 * then no buffer is handed out: data is NULL when len is 0). */
static void decode_line_breaks_like_go(void **state) {
  (void)state;
  static const struct {
    const char *json;
    const char *data;
  } cases[] = {
      {"{\"c\":\"aG\\nk=\",\"r\":{\"IP\":\"::1\",\"Port\":1}}", "hi"},
      {"{\"c\":\"aGk=\\r\\n\",\"r\":{\"IP\":\"::1\",\"Port\":1}}", "hi"},
      {"{\"c\":\"\\n\",\"r\":{\"IP\":\"::1\",\"Port\":1}}", ""},
      {"{\"c\":\"\\r\\n\\n\",\"r\":{\"IP\":\"::1\",\"Port\":1}}", ""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tunnel__udp_packet p;
    assert_int_equal(decode_str(cases[i].json, &p), 0);
    check_packet(&p, (const uint8_t *)cases[i].data, strlen(cases[i].data),
                 "::1", 1);
    tunnel__udp_packet_free(&tmem, &p);
  }
}

/* Every body a test expects refused is tried; each one accepted is listed
 * (non-printable bytes as \xNN) and the test fails at its end. */
static int missed;
static void expect_eproto(const char *json, size_t len) {
  tunnel__udp_packet p;
  memset(&p, 0xa5, sizeof p);
  size_t before = live;
  int rc = tunnel__udp_decode(&tmem, (const uint8_t *)json, len, &p);
  if (rc != TUNNEL_EPROTO) {
    if (rc == 0)
      tunnel__udp_packet_free(&tmem, &p);
    missed++;
    print_error("%d (not TUNNEL_EPROTO) for ", rc);
    for (size_t i = 0; i < len; i++) {
      unsigned char c = (unsigned char)json[i];
      if (c >= 0x20 && c < 0x7f)
        print_error("%c", c);
      else
        print_error("\\x%02x", c);
    }
    print_error("\n");
    return;
  }
  /* Nothing to free. */
  assert_null(p.data);
  assert_int_equal(p.len, 0);
  assert_int_equal(live, before);
}
static void all_refused(void) {
  int n = missed;
  missed = 0;
  if (n)
    fail_msg("%d bodies accepted", n);
}
#define EPROTO_STR(s) expect_eproto(s, sizeof(s) - 1)

static char *payload_json(size_t n) {
  uint8_t *data = pattern(n);
  size_t len;
  uint8_t *wire = encode(data, n, "1.2.3.4", 1, &len);
  test_free(data);
  char *json = test_malloc(len - TUNNEL__MSG_HEADER_SIZE + 1);
  memcpy(json, wire + TUNNEL__MSG_HEADER_SIZE, len - TUNNEL__MSG_HEADER_SIZE);
  json[len - TUNNEL__MSG_HEADER_SIZE] = '\0';
  test_free(wire);
  return json;
}

#define R "\"r\":{\"IP\":\"1.2.3.4\",\"Port\":1,\"Zone\":\"\"}"

static void decode_rejects_payload(void **state) {
  (void)state;
  /* The largest payload passes; one more byte, or more base64, fails. */
  char *json = payload_json(TUNNEL__UDP_MAX_PAYLOAD);
  tunnel__udp_packet p;
  assert_int_equal(decode_str(json, &p), 0);
  assert_int_equal(p.len, TUNNEL__UDP_MAX_PAYLOAD);
  tunnel__udp_packet_free(&tmem, &p);
  test_free(json);

  size_t n = TUNNEL__UDP_MAX_PAYLOAD + 1;
  size_t blen = (n + 2) / 3 * 4;
  char *big = test_malloc(blen + 64);
  int w = snprintf(big, 64, "{\"c\":\"");
  uint8_t *data = pattern(n);
  for (size_t i = 0; i < n / 3; i++) { /* 65508 = 3 * 21836 */
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrst"
                                "uvwxyz0123456789+/";
    uint32_t v = (uint32_t)data[3 * i] << 16 | (uint32_t)data[3 * i + 1] << 8 |
                 data[3 * i + 2];
    for (int k = 0; k < 4; k++)
      big[w + 4 * i + (size_t)k] = alpha[(v >> (18 - 6 * k)) & 63];
  }
  assert_int_equal(n % 3, 0);
  memcpy(big + (size_t)w + blen, "\"}", 3);
  expect_eproto(big, strlen(big));
  /* More characters than the largest payload needs. */
  memcpy(big + (size_t)w + blen, "AA==\"}", 7);
  expect_eproto(big, strlen(big));
  test_free(big);
  test_free(data);
  all_refused();
}

static void decode_rejects_base64(void **state) {
  (void)state;
  /* What Go's base64.StdEncoding refuses. */
  EPROTO_STR("{\"c\":\"aGk\"," R "}");      /* padding missing */
  EPROTO_STR("{\"c\":\"a\"," R "}");        /* a lone character */
  EPROTO_STR("{\"c\":\"aGkaa\"," R "}");    /* a partial last group */
  EPROTO_STR("{\"c\":\"aGk==\"," R "}");    /* too much padding */
  EPROTO_STR("{\"c\":\"aGk=aGk=\"," R "}"); /* data after padding */
  EPROTO_STR("{\"c\":\"a===\"," R "}");
  EPROTO_STR("{\"c\":\"====\"," R "}");
  EPROTO_STR("{\"c\":\"aG*=\"," R "}");
  EPROTO_STR("{\"c\":\"aG-_\"," R "}"); /* URL alphabet */
  EPROTO_STR("{\"c\":\"aG k=\"," R "}");
  EPROTO_STR("{\"c\":\"aGk= \"," R "}");
  EPROTO_STR("{\"c\":\" aGk=\"," R "}");
  EPROTO_STR("{\"c\":\"aGk\\u00e9\"," R "}");
  /* The wrong JSON type. */
  EPROTO_STR("{\"c\":5," R "}");
  EPROTO_STR("{\"c\":true," R "}");
  EPROTO_STR("{\"c\":[\"aGk=\"]," R "}");
  EPROTO_STR("{\"c\":{}," R "}");
  all_refused();
}

static void decode_rejects_address(void **state) {
  (void)state;
  /* IP: quotes, spaces, controls, non-ASCII, too long, wrong type. */
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\\\"\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"\\\"1.2.3.4\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4 \",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\" 1.2.3.4\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2. 3.4\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\\n\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\\\\\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"\\u00e9\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"0123456789012345678901234567890123456789012345"
             "678901234567890123\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1\",\"Port\":1,\"Zone\":\"0123456789012"
             "3456789012345678901234567890123456789012345\"}}");
  EPROTO_STR("{\"r\":{\"IP\":1234,\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":[\"1.2.3.4\"],\"Port\":1,\"Zone\":\"\"}}");
  /* The zone travels in "Zone" only: Go's net.IP refuses a '%', and an IP
   * ending in one would come back without it once re-encoded. */
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1%\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1%eth0\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1%eth0\",\"Port\":1,\"Zone\":\"eth1\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"\",\"Port\":1,\"Zone\":\"eth0\"}}");
  /* Zone: the same characters, and no second zone. */
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1\",\"Port\":1,\"Zone\":\"et h0\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1\",\"Port\":1,\"Zone\":\"a\\\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1\",\"Port\":1,\"Zone\":\"a%b\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"fe80::1\",\"Port\":1,\"Zone\":7}}");
  /* Port: out of range, fractional, not a number. */
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":65536,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":-1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":1.5,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":65535.5,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":-0.5,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":1e10,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":\"80\",\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":true,\"Zone\":\"\"}}");
  /* Address of the wrong shape. */
  EPROTO_STR("{\"r\":\"1.2.3.4:5\"}");
  EPROTO_STR("{\"r\":[]}");
  EPROTO_STR("{\"r\":5}");
  all_refused();
}

static void decode_rejects_shape(void **state) {
  (void)state;
  /* Non-object bodies. */
  EPROTO_STR("");
  EPROTO_STR("   ");
  EPROTO_STR("null");
  EPROTO_STR("[]");
  EPROTO_STR("[{\"c\":\"aGk=\"}]");
  EPROTO_STR("\"aGk=\"");
  EPROTO_STR("5");
  EPROTO_STR("true");
  /* Incomplete or broken JSON. */
  EPROTO_STR("{");
  EPROTO_STR("{\"c\":\"aGk=\"");
  EPROTO_STR("{\"c\":\"aGk=}");
  EPROTO_STR("{\"c\" \"aGk=\"}");
  EPROTO_STR("{\"c\":\"aGk=\",}");
  EPROTO_STR("{c:\"aGk=\"}");
  /* Trailing garbage after the object. */
  EPROTO_STR("{\"c\":\"aGk=\"," R "}x");
  EPROTO_STR("{\"c\":\"aGk=\"," R "}{}");
  EPROTO_STR("{\"c\":\"aGk=\"," R "} \n ,");
  EPROTO_STR("{}}");
  expect_eproto("{}\0", 3);
  expect_eproto("{\"c\":\"aGk=\"}\0 ", 14);
  all_refused();
}

/* JSON Go's decoder refuses and cJSON alone would take: control bytes
 * between tokens (cJSON skips every byte up to a space), raw control
 * characters in strings, a byte order mark, "\u0000" cutting a string
 * short, a number with a leading zero. */
static void decode_strict_json_like_go(void **state) {
  (void)state;
  expect_eproto("{\"c\":\"aGk=\"\0}", 13);
  EPROTO_STR("{\"c\":\x01\"aGk=\"}");
  EPROTO_STR("{\x1f}");
  EPROTO_STR("\xef\xbb\xbf{\"c\":\"aGk=\"}");
  EPROTO_STR("{\"c\":\"aG\nk=\"}");
  EPROTO_STR("{\"c\":\"aGk=\x01\"}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\\u0000x\",\"Port\":1,\"Zone\":\"\"}}");
  EPROTO_STR("{\"r\":{\"IP\":\"1.2.3.4\",\"Port\":01,\"Zone\":\"\"}}");
  all_refused();
}

/* Every allocation point fails once in turn: the call reports
 * TUNNEL_ENOMEM, leaks nothing, leaves the queue untouched, and a later
 * attempt succeeds. */
static void out_of_memory(void **state) {
  (void)state;
  static const size_t sizes[] = {0, 3, 1400, TUNNEL__UDP_MAX_PAYLOAD};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    uint8_t *data = pattern(sizes[s]);
    size_t len;
    uint8_t *wire = encode(data, sizes[s], "fe80::1%eth0", 7, &len);
    int failed = 0;
    /* Encoding into a queue already holding bytes (all or nothing), with a
     * chunk size that makes the message span chunks. */
    for (long n = 0;; n++) {
      tunnel__bufq q;
      tunnel__bufq_init(&q, &tmem, 100);
      assert_int_equal(tunnel__bufq_append(&q, "xyz", 3), 0);
      fail_after = n;
      int rc = tunnel__udp_encode(&tmem, data, sizes[s], "fe80::1%eth0", 7, &q);
      fail_after = -1;
      if (rc == 0) {
        assert_int_equal(q.size, 3 + len);
        tunnel__bufq_free(&q);
        break;
      }
      failed++;
      assert_int_equal(rc, TUNNEL_ENOMEM);
      assert_int_equal(q.size, 3);
      tunnel__bufq_free(&q);
    }
    assert_true(failed > 0);
    /* Decoding. */
    failed = 0;
    for (long n = 0;; n++) {
      tunnel__udp_packet p;
      fail_after = n;
      int rc = tunnel__udp_decode(&tmem, wire + TUNNEL__MSG_HEADER_SIZE,
                                  len - TUNNEL__MSG_HEADER_SIZE, &p);
      fail_after = -1;
      if (rc == 0) {
        check_packet(&p, data, sizes[s], "fe80::1%eth0", 7);
        tunnel__udp_packet_free(&tmem, &p);
        break;
      }
      failed++;
      assert_int_equal(rc, TUNNEL_ENOMEM);
      assert_null(p.data);
    }
    assert_true(sizes[s] == 0 ? failed == 0 : failed > 0);
    /* Framing through a reader in three pieces, so the body is buffered and
     * grows; an allocation failure sticks. */
    failed = 0;
    for (long n = 0;; n++) {
      tunnel__msg_reader r;
      tunnel__msg_reader_init(&r, &tmem, 1u << 20);
      uint8_t type = 0;
      const uint8_t *body = NULL;
      size_t blen = 0, off = 0, used;
      size_t cuts[] = {len / 3, 2 * len / 3 + 1, len};
      int rc = 0;
      fail_after = n;
      for (size_t k = 0; k < 3 && rc == 0; k++) {
        rc = tunnel__msg_reader_next(&r, wire + off, cuts[k] - off, &used,
                                     &type, &body, &blen);
        off += used;
      }
      fail_after = -1;
      if (rc == 1) {
        assert_int_equal(off, len);
        assert_int_equal(type, TUNNEL__MSG_UDP_PACKET);
        assert_int_equal(blen, len - TUNNEL__MSG_HEADER_SIZE);
        assert_memory_equal(body, wire + TUNNEL__MSG_HEADER_SIZE, blen);
        tunnel__msg_reader_free(&r);
        break;
      }
      failed++;
      assert_int_equal(rc, TUNNEL_ENOMEM);
      assert_int_equal(
          tunnel__msg_reader_next(&r, wire, 1, &used, &type, &body, &blen),
          TUNNEL_ENOMEM);
      assert_int_equal(used, 0);
      tunnel__msg_reader_free(&r);
    }
    assert_true(failed > 0);
    assert_int_equal(live, 0);
    test_free(wire);
    test_free(data);
  }
}

/* ---------------------------------------------------------- raw reader */

/* Three UDP packets and a Ping as one stream. */
static uint8_t *stream(size_t *len, uint8_t **payload, size_t *plen) {
  *plen = 1400;
  *payload = pattern(*plen);
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 512);
  assert_int_equal(
      tunnel__udp_encode(&tmem, *payload, *plen, "10.0.0.1", 1000, &q), 0);
  assert_int_equal(tunnel__udp_encode(&tmem, NULL, 0, "::1", 2000, &q), 0);
  tunnel__msg ping;
  tunnel__msg_init(&ping, TUNNEL__MSG_PING);
  ping.timestamp = 42;
  assert_int_equal(tunnel__msg_encode(&tmem, &ping, &q), 0);
  assert_int_equal(
      tunnel__udp_encode(&tmem, *payload, 5, "fe80::1%eth0", 3000, &q), 0);
  uint8_t *out = flatten(&q, len);
  tunnel__bufq_free(&q);
  return out;
}

/* Checks the i-th message of stream() as the framer handed it out. */
static void check_body(size_t i, uint8_t type, const uint8_t *body, size_t blen,
                       const uint8_t *payload) {
  static const char *const ips[] = {"10.0.0.1", "::1", NULL, "fe80::1%eth0"};
  static const uint16_t ports[] = {1000, 2000, 0, 3000};
  static const size_t lens[] = {1400, 0, 0, 5};
  assert_true(i < 4);
  assert_non_null(body);
  if (i == 2) {
    assert_int_equal(type, TUNNEL__MSG_PING);
    static const char want[] = "{\"timestamp\":42}";
    assert_int_equal(blen, sizeof want - 1);
    assert_memory_equal(body, want, blen);
    return;
  }
  assert_int_equal(type, TUNNEL__MSG_UDP_PACKET);
  tunnel__udp_packet p;
  assert_int_equal(tunnel__udp_decode(&tmem, body, blen, &p), 0);
  check_packet(&p, payload, lens[i], ips[i], ports[i]);
  tunnel__udp_packet_free(&tmem, &p);
}

/* Split into pieces of every size from 1 to past a message: each body is
 * whole and intact when handed out (and a body split over feeds is the
 * reader's copy, released by the next call); bytes after a message are left
 * alone. */
static void reader_next_splits(void **state) {
  (void)state;
  uint8_t *payload;
  size_t len, plen;
  uint8_t *s = stream(&len, &payload, &plen);
  for (size_t chunk = 1; chunk <= len; chunk += chunk < 40 ? 1 : 97) {
    tunnel__msg_reader r;
    tunnel__msg_reader_init(&r, &tmem, 4096);
    size_t off = 0, seen = 0, end = chunk;
    while (off < len) {
      if (end > len)
        end = len;
      size_t used;
      uint8_t type;
      const uint8_t *body = NULL;
      size_t blen = 0;
      size_t before = live;
      int rc = tunnel__msg_reader_next(&r, s + off, end - off, &used, &type,
                                       &body, &blen);
      assert_true(used <= end - off);
      off += used;
      if (rc == 0) {
        assert_int_equal(off, end);
        end += chunk;
        continue;
      }
      assert_int_equal(rc, 1);
      int copied = !(body >= s && body < s + len);
      /* Feeding again before looking would invalidate the body: look first,
       * then let an empty call release the reader's copy. */
      check_body(seen++, type, body, blen, payload);
      if (blen == 0 || !copied)
        assert_int_equal(live, before);
      assert_int_equal(
          tunnel__msg_reader_next(&r, NULL, 0, &used, &type, &body, &blen), 0);
      assert_int_equal(used, 0);
      assert_int_equal(live, 0);
      if (off == end)
        end += chunk;
    }
    assert_int_equal(seen, 4);
    tunnel__msg_reader_free(&r);
  }
  test_free(s);
  test_free(payload);
}

/* A body split over many one-byte feeds is the reader's copy, valid until
 * the next call on that reader whatever happens in between. */
static void reader_next_body_lifetime(void **state) {
  (void)state;
  uint8_t *payload;
  size_t len, plen;
  uint8_t *s = stream(&len, &payload, &plen);
  tunnel__msg_reader r;
  tunnel__msg_reader_init(&r, &tmem, 4096);
  size_t off = 0, used;
  uint8_t type;
  const uint8_t *body;
  size_t blen;
  int rc = 0;
  while (rc == 0) {
    rc = tunnel__msg_reader_next(&r, s + off, 1, &used, &type, &body, &blen);
    assert_int_equal(used, 1);
    off += used;
  }
  assert_int_equal(rc, 1);
  assert_true(body < s || body >= s + len); /* the reader's own copy */
  assert_int_equal(live, 1);
  /* A second reader over the rest cannot disturb it. */
  tunnel__msg_reader r2;
  tunnel__msg_reader_init(&r2, &tmem, 4096);
  const uint8_t *body2;
  size_t blen2;
  uint8_t type2;
  assert_int_equal(tunnel__msg_reader_next(&r2, s + off, len - off, &used,
                                           &type2, &body2, &blen2),
                   1);
  check_body(1, type2, body2, blen2, payload);
  tunnel__msg_reader_free(&r2);
  check_body(0, type, body, blen, payload);
  /* The next call goes on with the following message. */
  assert_int_equal(tunnel__msg_reader_next(&r, s + off, len - off, &used, &type,
                                           &body, &blen),
                   1);
  check_body(1, type, body, blen, payload);
  off += used;
  /* Freeing a reader that holds a handed-out body releases it. */
  rc = 0;
  while (rc == 0) {
    rc = tunnel__msg_reader_next(&r, s + off, 1, &used, &type, &body, &blen);
    off += used;
  }
  assert_int_equal(rc, 1);
  check_body(2, type, body, blen, payload);
  assert_int_equal(live, 1);
  tunnel__msg_reader_free(&r);
  assert_int_equal(live, 0);
  test_free(s);
  test_free(payload);
}

/* In one piece a body is handed out in place, with no allocation. */
static void reader_next_in_place(void **state) {
  (void)state;
  uint8_t *payload;
  size_t len, plen;
  uint8_t *s = stream(&len, &payload, &plen);
  tunnel__msg_reader r;
  tunnel__msg_reader_init(&r, &tmem, 4096);
  allocs = 0;
  size_t off = 0;
  for (size_t i = 0; i < 4; i++) {
    size_t used, blen;
    uint8_t type;
    const uint8_t *body;
    assert_int_equal(tunnel__msg_reader_next(&r, s + off, len - off, &used,
                                             &type, &body, &blen),
                     1);
    assert_int_equal(tunnel__be64(s + off + 1), blen);
    off += used;
    if (blen)
      assert_ptr_equal(body, s + off - blen);
    assert_int_equal(allocs, 0);
    check_body(i, type, body, blen, payload);
    allocs = 0;
  }
  assert_int_equal(off, len);
  tunnel__msg_reader_free(&r);
  test_free(s);
  test_free(payload);
}

static void reader_next_errors(void **state) {
  (void)state;
  tunnel__msg_reader r;
  size_t used, blen;
  uint8_t type;
  const uint8_t *body;

  /* Unknown type byte: refused at once, and for good. */
  tunnel__msg_reader_init(&r, &tmem, 64);
  assert_int_equal(tunnel__msg_reader_next(&r, (const uint8_t *)"xu", 2, &used,
                                           &type, &body, &blen),
                   TUNNEL_EPROTO);
  assert_int_equal(used, 1);
  assert_int_equal(tunnel__msg_reader_next(&r, (const uint8_t *)"u", 1, &used,
                                           &type, &body, &blen),
                   TUNNEL_EPROTO);
  assert_int_equal(used, 0);
  tunnel__msg_reader_free(&r);

  /* Above the limit, after a partial body of the previous message. */
  static const uint8_t two[] = "u\0\0\0\0\0\0\0\x02{}u\0\0\0\0\0\0\0\x41";
  tunnel__msg_reader_init(&r, &tmem, 64);
  assert_int_equal(
      tunnel__msg_reader_next(&r, two, 10, &used, &type, &body, &blen), 0);
  assert_int_equal(tunnel__msg_reader_next(&r, two + 10, sizeof two - 11, &used,
                                           &type, &body, &blen),
                   1);
  assert_int_equal(used, 1);
  assert_int_equal(blen, 2);
  assert_memory_equal(body, "{}", 2);
  assert_int_equal(tunnel__msg_reader_next(&r, two + 11, sizeof two - 12, &used,
                                           &type, &body, &blen),
                   TUNNEL_ELIMIT);
  assert_int_equal(used, TUNNEL__MSG_HEADER_SIZE);
  assert_int_equal(live, 0);
  assert_int_equal(
      tunnel__msg_reader_next(&r, two, 1, &used, &type, &body, &blen),
      TUNNEL_ELIMIT);
  tunnel__msg_reader_free(&r);

  /* An empty body is handed out (a non-NULL pointer, length 0); the framer
   * does not judge JSON. */
  static const uint8_t empty[] = "u\0\0\0\0\0\0\0\0r\0\0\0\0\0\0\0\x03x]\"";
  tunnel__msg_reader_init(&r, &tmem, 64);
  assert_int_equal(tunnel__msg_reader_next(&r, empty, sizeof empty - 1, &used,
                                           &type, &body, &blen),
                   1);
  assert_int_equal(used, TUNNEL__MSG_HEADER_SIZE);
  assert_int_equal(type, TUNNEL__MSG_UDP_PACKET);
  assert_non_null(body);
  assert_int_equal(blen, 0);
  assert_int_equal(tunnel__msg_reader_next(&r, empty + used,
                                           sizeof empty - 1 - used, &used,
                                           &type, &body, &blen),
                   1);
  assert_int_equal(type, TUNNEL__MSG_REQ_WORK_CONN);
  assert_int_equal(blen, 3);
  assert_memory_equal(body, "x]\"", 3);
  tunnel__msg_reader_free(&r);
}

/* tunnel__msg_reader_feed, built on the raw framer, shares a reader with
 * reader_next: the two take turns, over pieces of many sizes. */
static void reader_feed_and_next_mix(void **state) {
  (void)state;
  uint8_t *payload;
  size_t len, plen;
  uint8_t *s = stream(&len, &payload, &plen);
  for (size_t chunk = 1; chunk <= len; chunk = chunk * 3 + 1) {
    tunnel__msg_reader r;
    tunnel__msg_reader_init(&r, &tmem, 4096);
    size_t off = 0, seen = 0;
    while (off < len) {
      size_t n = len - off < chunk ? len - off : chunk, used;
      int rc;
      if (seen == 0 || seen == 3) {
        uint8_t type;
        const uint8_t *body;
        size_t blen;
        rc =
            tunnel__msg_reader_next(&r, s + off, n, &used, &type, &body, &blen);
        if (rc == 1)
          check_body(seen, type, body, blen, payload);
      } else {
        tunnel__msg m;
        rc = tunnel__msg_reader_feed(&r, s + off, n, &used, &m);
        if (rc == 1) {
          /* UDPPacket bodies are checked to be objects and dropped. */
          assert_int_equal(m.type, seen == 1 ? TUNNEL__MSG_UDP_PACKET
                                             : TUNNEL__MSG_PING);
          if (seen == 2)
            assert_int_equal(m.timestamp, 42);
          tunnel__msg_clear(&tmem, &m);
        }
      }
      assert_true(rc == 0 || rc == 1);
      if (rc == 0)
        assert_int_equal(used, n);
      if (rc == 1)
        seen++;
      off += used;
    }
    assert_int_equal(seen, 4);
    tunnel__msg_reader_free(&r);
    assert_int_equal(live, 0);
  }
  test_free(s);
  test_free(payload);
}

/* A failed test may leave counts behind; each test starts afresh. */
static int reset(void **state) {
  (void)state;
  fail_after = -1;
  allocs = live = 0;
  missed = 0;
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(round_trip, reset),
      cmocka_unit_test_setup(encode_exact_bytes_like_go, reset),
      cmocka_unit_test_setup(encode_rejects, reset),
      cmocka_unit_test_setup(decode_stock_frp, reset),
      cmocka_unit_test_setup(decode_line_breaks_like_go, reset),
      cmocka_unit_test_setup(decode_rejects_payload, reset),
      cmocka_unit_test_setup(decode_rejects_base64, reset),
      cmocka_unit_test_setup(decode_rejects_address, reset),
      cmocka_unit_test_setup(decode_rejects_shape, reset),
      cmocka_unit_test_setup(decode_strict_json_like_go, reset),
      cmocka_unit_test_setup(out_of_memory, reset),
      cmocka_unit_test_setup(reader_next_splits, reset),
      cmocka_unit_test_setup(reader_next_body_lifetime, reset),
      cmocka_unit_test_setup(reader_next_in_place, reset),
      cmocka_unit_test_setup(reader_next_errors, reset),
      cmocka_unit_test_setup(reader_feed_and_next_mix, reset),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
