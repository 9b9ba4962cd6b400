#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "msg.h"
#include "wire.h"

/* ------------------------------------------------------------- helpers */

/* Allocator that fails every call after the first `fail_after`; cmocka's
 * test_* functions report any block left allocated at the end of a test. */
static long fail_after = -1;
static size_t allocs;
static void *t_malloc(size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  allocs++;
  return test_malloc(n);
}
static void *t_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  allocs++;
  return test_realloc(p, n);
}
static void t_free(void *p, void *ud) {
  (void)ud;
  test_free(p);
}
static const tunnel__mem tmem = {t_malloc, t_realloc, t_free, NULL};

/* Allocator that tracks the bytes it has live, for memory bounds. Each
 * block carries its size in a header. */
typedef union counted_hdr {
  size_t size;
  max_align_t align;
} counted_hdr;
static size_t live_bytes;
static void *c_malloc(size_t n, void *ud) {
  (void)ud;
  counted_hdr *h = test_malloc(sizeof *h + n);
  h->size = n;
  live_bytes += n;
  return h + 1;
}
static void *c_realloc(void *p, size_t n, void *ud) {
  if (!p)
    return c_malloc(n, ud);
  counted_hdr *h = (counted_hdr *)p - 1;
  size_t old = h->size;
  h = test_realloc(h, sizeof *h + n);
  h->size = n;
  live_bytes = live_bytes - old + n;
  return h + 1;
}
static void c_free(void *p, void *ud) {
  (void)ud;
  if (!p)
    return;
  counted_hdr *h = (counted_hdr *)p - 1;
  live_bytes -= h->size;
  test_free(h);
}
static const tunnel__mem cmem = {c_malloc, c_realloc, c_free, NULL};

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

static uint8_t *encode(const tunnel__msg *m, size_t *len) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  assert_int_equal(tunnel__msg_encode(&tmem, m, &q), 0);
  uint8_t *out = flatten(&q, len);
  tunnel__bufq_free(&q);
  assert_true(*len >= TUNNEL__MSG_HEADER_SIZE);
  assert_int_equal(out[0], m->type);
  assert_int_equal(tunnel__be64(out + 1), *len - TUNNEL__MSG_HEADER_SIZE);
  return out;
}

static int decode_str(uint8_t type, const char *json, tunnel__msg *out) {
  return tunnel__msg_decode(&tmem, type, (const uint8_t *)json, strlen(json),
                            out);
}

#define TRY(x)                                                                 \
  do {                                                                         \
    int rc_ = (x);                                                             \
    if (rc_)                                                                   \
      return rc_;                                                              \
  } while (0)
#define S(field, v) TRY(tunnel__msg_set_str(mem, &m->field, v))

/* Fills every field the type carries, with values that exercise escaping,
 * non-ASCII text and integer limits. */
static int build(const tunnel__mem *mem, uint8_t type, tunnel__msg *m) {
  tunnel__msg_init(m, type);
  switch (type) {
  case TUNNEL__MSG_LOGIN:
    S(version, "0.52.3");
    S(hostname, "host \"quoted\" \\ back");
    S(os, "linux");
    S(arch, "amd64");
    S(user, "us\xc3\xa9r <&>");
    S(privilege_key, "0537ef113282c8d47f39f43f72db6e77");
    m->timestamp = 9007199254740991; /* 2^53 - 1 */
    S(run_id, "a1b2c3");
    TRY(tunnel__msg_map_add(mem, &m->metas, "k1", "v1"));
    TRY(tunnel__msg_map_add(mem, &m->metas, "\xe4\xb8\xad", "\n\t\x01"));
    m->pool_count = 5;
    break;
  case TUNNEL__MSG_LOGIN_RESP:
    S(version, "0.52.3");
    S(run_id, "a1b2c3");
    S(error, "bad token \xe2\x80\xa8 line sep");
    break;
  case TUNNEL__MSG_NEW_PROXY:
    S(proxy_name, "web");
    S(proxy_type, "http");
    m->use_encryption = true;
    m->use_compression = true;
    S(bandwidth_limit, "1MB");
    S(bandwidth_limit_mode, "server");
    S(group, "grp");
    S(group_key, "gk");
    TRY(tunnel__msg_map_add(mem, &m->metas, "a", "1"));
    m->remote_port = 6000;
    TRY(tunnel__msg_strs_push(mem, &m->custom_domains, "a.example.com"));
    TRY(tunnel__msg_strs_push(mem, &m->custom_domains, "b.example.com"));
    S(subdomain, "sub");
    TRY(tunnel__msg_strs_push(mem, &m->locations, ""));
    TRY(tunnel__msg_strs_push(mem, &m->locations, "/api"));
    S(http_user, "u");
    S(http_pwd, "p\xf0\x9f\x98\x80");
    S(host_header_rewrite, "internal");
    TRY(tunnel__msg_map_add(mem, &m->headers, "X-From", "frp"));
    TRY(tunnel__msg_map_add(mem, &m->headers, "X-Empty", ""));
    S(route_by_http_user, "u");
    S(sk, "secret");
    TRY(tunnel__msg_strs_push(mem, &m->allow_users, "*"));
    S(multiplexer, "httpconnect");
    break;
  case TUNNEL__MSG_NEW_PROXY_RESP:
    S(proxy_name, "web");
    S(remote_addr, ":6000");
    S(error, "port in use");
    break;
  case TUNNEL__MSG_CLOSE_PROXY:
    S(proxy_name, "web");
    break;
  case TUNNEL__MSG_NEW_WORK_CONN:
    S(run_id, "a1b2c3");
    S(privilege_key, "cfcd208495d565ef66e7dff9f98764da");
    m->timestamp = -9007199254740991;
    break;
  case TUNNEL__MSG_START_WORK_CONN:
    S(proxy_name, "ssh");
    S(src_addr, "203.0.113.9");
    S(dst_addr, "198.51.100.1");
    m->src_port = 1;
    m->dst_port = 65535;
    S(error, "e");
    break;
  case TUNNEL__MSG_NEW_VISITOR_CONN:
    S(run_id, "r");
    S(proxy_name, "stcp");
    S(sign_key, "sig");
    m->timestamp = 1700000000;
    m->use_encryption = true;
    m->use_compression = true;
    break;
  case TUNNEL__MSG_NEW_VISITOR_CONN_RESP:
    S(proxy_name, "stcp");
    S(error, "denied");
    break;
  case TUNNEL__MSG_PING:
    S(privilege_key, "k");
    m->timestamp = 1;
    break;
  case TUNNEL__MSG_PONG:
    S(error, "x");
    break;
  default:
    break;
  }
  return 0;
}

static const uint8_t all_types[] = {
    TUNNEL__MSG_LOGIN,
    TUNNEL__MSG_LOGIN_RESP,
    TUNNEL__MSG_NEW_PROXY,
    TUNNEL__MSG_NEW_PROXY_RESP,
    TUNNEL__MSG_CLOSE_PROXY,
    TUNNEL__MSG_NEW_WORK_CONN,
    TUNNEL__MSG_REQ_WORK_CONN,
    TUNNEL__MSG_START_WORK_CONN,
    TUNNEL__MSG_NEW_VISITOR_CONN,
    TUNNEL__MSG_NEW_VISITOR_CONN_RESP,
    TUNNEL__MSG_PING,
    TUNNEL__MSG_PONG,
    TUNNEL__MSG_UDP_PACKET,
    TUNNEL__MSG_NAT_HOLE_VISITOR,
    TUNNEL__MSG_NAT_HOLE_CLIENT,
    TUNNEL__MSG_NAT_HOLE_RESP,
    TUNNEL__MSG_NAT_HOLE_SID,
    TUNNEL__MSG_NAT_HOLE_REPORT,
};
#define NTYPES (sizeof all_types / sizeof all_types[0])

/* --------------------------------------------------------------- tests */

static void type_names(void **state) {
  (void)state;
  static const struct {
    uint8_t t;
    const char *name;
  } v[] = {{'o', "Login"},          {'1', "LoginResp"},
           {'p', "NewProxy"},       {'2', "NewProxyResp"},
           {'c', "CloseProxy"},     {'w', "NewWorkConn"},
           {'r', "ReqWorkConn"},    {'s', "StartWorkConn"},
           {'v', "NewVisitorConn"}, {'3', "NewVisitorConnResp"},
           {'h', "Ping"},           {'4', "Pong"},
           {'u', "UDPPacket"},      {'i', "NatHoleVisitor"},
           {'n', "NatHoleClient"},  {'m', "NatHoleResp"},
           {'5', "NatHoleSid"},     {'6', "NatHoleReport"}};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
    assert_string_equal(tunnel__msg_type_name(v[i].t), v[i].name);
  size_t known = 0;
  for (unsigned t = 0; t < 256; t++)
    known += tunnel__msg_type_name((uint8_t)t) != NULL;
  assert_int_equal(known, sizeof v / sizeof v[0]);
  assert_null(tunnel__msg_type_name('x'));
  assert_null(tunnel__msg_type_name(0));
}

static void round_trip_every_type(void **state) {
  (void)state;
  for (size_t i = 0; i < NTYPES; i++) {
    tunnel__msg m, d;
    assert_int_equal(build(&tmem, all_types[i], &m), 0);
    size_t len;
    uint8_t *wire = encode(&m, &len);
    assert_int_equal(tunnel__msg_decode(&tmem, all_types[i],
                                        wire + TUNNEL__MSG_HEADER_SIZE,
                                        len - TUNNEL__MSG_HEADER_SIZE, &d),
                     0);
    assert_true(tunnel__msg_equal(&m, &d));
    /* Decoding then encoding again gives the same bytes. */
    size_t len2;
    uint8_t *wire2 = encode(&d, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(wire2, wire, len);
    test_free(wire);
    test_free(wire2);
    tunnel__msg_clear(&tmem, &m);
    tunnel__msg_clear(&tmem, &d);
    assert_int_equal(m.type, all_types[i]); /* clear keeps the type */
  }
}

static void encode_login_exact_bytes(void **state) {
  (void)state;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_LOGIN);
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.version, "0.52.3"), 0);
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.hostname, ""), 0); /* empty */
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.os, "linux"), 0);
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.arch, "amd64"), 0);
  /* user stays NULL, run_id is empty: both omitted. */
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.run_id, ""), 0);
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.privilege_key,
                                       "0537ef113282c8d47f39f43f72db6e77"),
                   0);
  m.timestamp = 1700000000;
  assert_int_equal(tunnel__msg_map_add(&tmem, &m.metas, "id", "7"), 0);
  assert_int_equal(tunnel__msg_map_add(&tmem, &m.metas, "zone", "eu"), 0);
  m.pool_count = 1;
  /* Fields of other types are not part of a Login. */
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.proxy_name, "ignored"), 0);
  m.use_encryption = true;
  /* Go's json.Marshal of frp's Login with the same values gives this plus
   * "client_spec":{} (a struct, which omitempty never omits). */
  static const char want[] =
      "o\x00\x00\x00\x00\x00\x00\x00\xa8"
      "{\"version\":\"0.52.3\",\"os\":\"linux\",\"arch\":\"amd64\","
      "\"privilege_key\":\"0537ef113282c8d47f39f43f72db6e77\","
      "\"timestamp\":1700000000,\"metas\":{\"id\":\"7\",\"zone\":\"eu\"},"
      "\"pool_count\":1}";
  size_t len;
  uint8_t *wire = encode(&m, &len);
  assert_int_equal(len, sizeof want - 1);
  assert_memory_equal(wire, want, len);
  test_free(wire);
  tunnel__msg_clear(&tmem, &m);

  /* All zero: an empty object, as Go sends ReqWorkConn and Pong. */
  tunnel__msg_init(&m, TUNNEL__MSG_PONG);
  wire = encode(&m, &len);
  assert_int_equal(len, 11);
  assert_memory_equal(wire, "4\x00\x00\x00\x00\x00\x00\x00\x02{}", 11);
  test_free(wire);

  tunnel__msg_init(&m, 'x');
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  assert_int_equal(tunnel__msg_encode(&tmem, &m, &q), TUNNEL_EINVAL);
  assert_int_equal(q.size, 0);
  tunnel__bufq_free(&q);
}

static void encode_escapes_like_go(void **state) {
  (void)state;
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_PONG);
  /* Controls, HTML characters, U+2028, and invalid UTF-8 (each bad byte
   * becomes U+FFFD, a truncated sequence at the end too). */
  assert_int_equal(tunnel__msg_set_str(&tmem, &m.error,
                                       "\"\\/\b\f\n\r\t\x01\x1f<>&\x7f"
                                       "\xe2\x80\xa8\xe2\x80\xa9"
                                       "a\xff"
                                       "b\xc0\xaf\xed\xa0\x80\xc3"),
                   0);
  static const char want[] =
      "{\"error\":\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\\u003c\\u003e"
      "\\u0026\x7f\\u2028\\u2029a\\ufffdb\\ufffd\\ufffd\\ufffd\\ufffd"
      "\\ufffd\\ufffd\"}";
  size_t len;
  uint8_t *wire = encode(&m, &len);
  assert_int_equal(len - TUNNEL__MSG_HEADER_SIZE, sizeof want - 1);
  assert_memory_equal(wire + TUNNEL__MSG_HEADER_SIZE, want, sizeof want - 1);
  test_free(wire);
  tunnel__msg_clear(&tmem, &m);
}

/* Bodies produced by Go 1.19 encoding/json from structs with frp's tags
 * (pkg/msg/msg.go). Re-encoding them gives Go's bytes back. */
static const char go_new_proxy[] =
    "{\"proxy_name\":\"web\",\"proxy_type\":\"http\",\"use_encryption\":true,"
    "\"use_compression\":true,\"bandwidth_limit\":\"1MB\","
    "\"bandwidth_limit_mode\":\"client\",\"group\":\"g\",\"group_key\":\"gk\","
    "\"metas\":{\"a\":\"1\",\"b\":\"2\"},\"custom_domains\":[\"a.example.com\","
    "\"b.example.com\"],\"subdomain\":\"web\",\"locations\":[\"\",\"/api\"],"
    "\"http_user\":\"u\",\"http_pwd\":\"p\\u003c\\u0026\\u003e\","
    "\"host_header_rewrite\":\"internal\",\"headers\":{\"X-From\":\"frp\"},"
    "\"route_by_http_user\":\"u\",\"sk\":\"secret\",\"allow_users\":[\"*\"],"
    "\"multiplexer\":\"httpconnect\"}";
static const char go_new_proxy_resp[] =
    "{\"proxy_name\":\"ssh\",\"error\":\"port \\\"6000\\\" \\u003cin "
    "use\\u003e "
    "\\u0026 taken\\n\\t\\u0001\\u2028\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\"}";
static const char go_start_work_conn[] =
    "{\"proxy_name\":\"ssh\",\"src_addr\":\"203.0.113.9\","
    "\"dst_addr\":\"198.51.100.1\",\"src_port\":51234,\"dst_port\":65535}";
static const char go_visitor[] =
    "{\"run_id\":\"abc\",\"proxy_name\":\"stcp\",\"sign_key\":\"k\","
    "\"timestamp\":9007199254740991,\"use_encryption\":true}";

static void reencode_matches(uint8_t type, const char *json) {
  tunnel__msg m;
  assert_int_equal(decode_str(type, json, &m), 0);
  size_t len;
  uint8_t *wire = encode(&m, &len);
  assert_int_equal(len - TUNNEL__MSG_HEADER_SIZE, strlen(json));
  assert_memory_equal(wire + TUNNEL__MSG_HEADER_SIZE, json, strlen(json));
  test_free(wire);
  tunnel__msg_clear(&tmem, &m);
}

static void decode_go_bodies(void **state) {
  (void)state;
  tunnel__msg m;
  /* Stock frpc's Login, including the client_spec object we ignore. */
  assert_int_equal(
      decode_str(TUNNEL__MSG_LOGIN,
                 "{\"version\":\"0.52.3\",\"os\":\"linux\",\"arch\":\"amd64\","
                 "\"privilege_key\":\"0537ef113282c8d47f39f43f72db6e77\","
                 "\"timestamp\":1700000000,\"metas\":{\"id\":\"7\",\"zone\":"
                 "\"eu\"},\"client_spec\":{},\"pool_count\":1}",
                 &m),
      0);
  assert_string_equal(m.version, "0.52.3");
  assert_null(m.hostname);
  assert_string_equal(m.os, "linux");
  assert_string_equal(m.arch, "amd64");
  assert_string_equal(m.privilege_key, "0537ef113282c8d47f39f43f72db6e77");
  assert_int_equal(m.timestamp, 1700000000);
  assert_int_equal(m.metas.n, 2);
  assert_string_equal(tunnel__msg_map_get(&m.metas, "zone"), "eu");
  assert_string_equal(tunnel__msg_map_get(&m.metas, "id"), "7");
  assert_null(tunnel__msg_map_get(&m.metas, "ID"));
  assert_int_equal(m.pool_count, 1);
  tunnel__msg_clear(&tmem, &m);

  assert_int_equal(decode_str(TUNNEL__MSG_NEW_PROXY, go_new_proxy, &m), 0);
  assert_string_equal(m.http_pwd, "p<&>");
  assert_int_equal(m.custom_domains.n, 2);
  assert_string_equal(m.custom_domains.v[1], "b.example.com");
  assert_int_equal(m.locations.n, 2);
  assert_string_equal(m.locations.v[0], "");
  assert_true(m.use_encryption && m.use_compression);
  assert_int_equal(m.remote_port, 0);
  assert_string_equal(tunnel__msg_map_get(&m.headers, "X-From"), "frp");
  tunnel__msg_clear(&tmem, &m);

  assert_int_equal(
      decode_str(TUNNEL__MSG_NEW_PROXY_RESP, go_new_proxy_resp, &m), 0);
  assert_string_equal(m.error, "port \"6000\" <in use> & taken\n\t\x01"
                               "\xe2\x80\xa8\xc3\xa9\xe4\xb8\xad"
                               "\xf0\x9f\x98\x80");
  tunnel__msg_clear(&tmem, &m);

  assert_int_equal(
      decode_str(TUNNEL__MSG_START_WORK_CONN, go_start_work_conn, &m), 0);
  assert_int_equal(m.src_port, 51234);
  assert_int_equal(m.dst_port, 65535);
  tunnel__msg_clear(&tmem, &m);

  assert_int_equal(decode_str(TUNNEL__MSG_NEW_VISITOR_CONN, go_visitor, &m), 0);
  assert_int_equal(m.timestamp, 9007199254740991);
  tunnel__msg_clear(&tmem, &m);

  reencode_matches(TUNNEL__MSG_NEW_PROXY, go_new_proxy);
  reencode_matches(TUNNEL__MSG_NEW_PROXY_RESP, go_new_proxy_resp);
  reencode_matches(TUNNEL__MSG_START_WORK_CONN, go_start_work_conn);
  reencode_matches(TUNNEL__MSG_NEW_VISITOR_CONN, go_visitor);
  reencode_matches(TUNNEL__MSG_REQ_WORK_CONN, "{}");
}

static void decode_go_semantics(void **state) {
  (void)state;
  tunnel__msg m;
  /* Unknown keys of any shape are ignored, whitespace is allowed, null
   * leaves a field unset, and keys of other message types are unknown. */
  assert_int_equal(
      decode_str(TUNNEL__MSG_START_WORK_CONN,
                 " {\n\t\"future\": {\"x\": [1, 2.5e-3, {\"y\": null}], "
                 "\"z\": \"\\u00e9\"},\r\n \"proxy_name\" : \"p\", "
                 "\"src_addr\": null, \"timestamp\": \"not ours\", "
                 "\"metas\": 7, \"n\": -0.5, \"b\": false } \n",
                 &m),
      0);
  assert_string_equal(m.proxy_name, "p");
  assert_null(m.src_addr);
  assert_int_equal(m.timestamp, 0);
  tunnel__msg_clear(&tmem, &m);

  /* Keys match exactly. */
  assert_int_equal(decode_str(TUNNEL__MSG_CLOSE_PROXY,
                              "{\"Proxy_Name\":1,\"proxy_name\":\"x\"}", &m),
                   0);
  assert_string_equal(m.proxy_name, "x");
  tunnel__msg_clear(&tmem, &m);

  /* Last duplicate wins; arrays are replaced; maps merge (as Go does). */
  assert_int_equal(
      decode_str(TUNNEL__MSG_NEW_PROXY,
                 "{\"proxy_name\":\"a\",\"proxy_name\":\"b\","
                 "\"locations\":[\"1\",\"2\"],\"locations\":[\"3\"],"
                 "\"headers\":{\"k\":\"1\",\"j\":null},"
                 "\"headers\":{\"k\":\"2\"},\"custom_domains\":[null],"
                 "\"use_encryption\":true,\"use_encryption\":false}",
                 &m),
      0);
  assert_string_equal(m.proxy_name, "b");
  assert_int_equal(m.locations.n, 1);
  assert_string_equal(m.locations.v[0], "3");
  assert_int_equal(m.headers.n, 3);
  assert_string_equal(tunnel__msg_map_get(&m.headers, "k"), "2");
  assert_string_equal(tunnel__msg_map_get(&m.headers, "j"), "");
  assert_int_equal(m.custom_domains.n, 1);
  assert_string_equal(m.custom_domains.v[0], "");
  assert_false(m.use_encryption);
  tunnel__msg_clear(&tmem, &m);

  /* Invalid UTF-8 becomes U+FFFD per byte; escapes decode, surrogate pairs
   * combine. */
  assert_int_equal(decode_str(TUNNEL__MSG_PONG,
                              "{\"error\":\"a\xff\xc3 \\u00e9\\ud83d\\ude00"
                              "\\/\"}",
                              &m),
                   0);
  assert_string_equal(m.error, "a\xef\xbf\xbd\xef\xbf\xbd \xc3\xa9"
                               "\xf0\x9f\x98\x80/");
  tunnel__msg_clear(&tmem, &m);

  /* Integer limits: +-(2^53 - 1) exactly; -0 and 1.0 are integral. */
  assert_int_equal(
      decode_str(TUNNEL__MSG_PING, "{\"timestamp\":-9007199254740991}", &m), 0);
  assert_int_equal(m.timestamp, -9007199254740991);
  assert_int_equal(decode_str(TUNNEL__MSG_PING, "{\"timestamp\":-0}", &m), 0);
  assert_int_equal(m.timestamp, 0);
  assert_int_equal(
      decode_str(TUNNEL__MSG_START_WORK_CONN, "{\"src_port\":0}", &m), 0);
  assert_int_equal(
      decode_str(TUNNEL__MSG_NEW_PROXY, "{\"remote_port\":1.0}", &m), 0);
  assert_int_equal(m.remote_port, 1);

  /* Types without typed fields accept any object. */
  assert_int_equal(decode_str(TUNNEL__MSG_UDP_PACKET,
                              "{\"c\":\"aGk=\",\"l\":{\"IP\":\"127.0.0.1\","
                              "\"Port\":53,\"Zone\":\"\"},\"r\":null}",
                              &m),
                   0);
  assert_int_equal(m.type, TUNNEL__MSG_UDP_PACKET);
  assert_int_equal(decode_str(TUNNEL__MSG_NAT_HOLE_RESP,
                              "{\"sid\":\"s\",\"detect_behavior\":{}}", &m),
                   0);
}

/* Strings Go decodes with U+FFFD substitutions: escaped surrogates that
 * are not a high one followed at once by an escaped low one (each such
 * escape becomes one U+FFFD), and bytes that are not UTF-8 (each becomes
 * one U+FFFD). The expected values are what Go's encoding/json produces. */
#define FFFD "\xef\xbf\xbd"
static void decode_invalid_text_like_go(void **state) {
  (void)state;
  static const struct {
    const char *in; /* between the quotes of a JSON string */
    const char *want;
  } cases[] = {
      {"\\ud800", FFFD},
      {"\\udbff", FFFD},
      {"\\udc00", FFFD},
      {"\\uDFFF", FFFD},
      {"a\\ud800b", "a" FFFD "b"},
      {"\\ud800\\u0041", FFFD "A"},
      {"\\ud800\\n", FFFD "\n"},
      {"\\ud800\\\\u0041", FFFD "\\u0041"},
      {"\\ud800\\ud800", FFFD FFFD},
      {"\\udc00\\ud800", FFFD FFFD},
      {"\\udc00\\udc00", FFFD FFFD},
      {"\\ud800\\ud800\\udc00", FFFD "\xf0\x90\x80\x80"},
      {"\\ud83d\\ude00\\udc00", "\xf0\x9f\x98\x80" FFFD},
      {"\\ud83d \\ude00", FFFD " " FFFD},
      {"\\ue000\\ud7ff", "\xee\x80\x80\xed\x9f\xbf"},
      /* Valid pairs, at either end of the string and in upper case. */
      {"\\ud83d\\ude00", "\xf0\x9f\x98\x80"},
      {"x\\uD83D\\uDE00", "x\xf0\x9f\x98\x80"},
      {"\\ud800\\udc00", "\xf0\x90\x80\x80"},
      {"\\udbff\\udfff", "\xf4\x8f\xbf\xbf"},
      /* Raw bytes: an encoded surrogate, overlong forms, beyond U+10FFFF,
       * stray continuation bytes, sequences cut short. */
      {"\xed\xa0\x80", FFFD FFFD FFFD},
      {"\xc0\xaf", FFFD FFFD},
      {"\xe0\x80\xaf", FFFD FFFD FFFD},
      {"\xf4\x90\x80\x80", FFFD FFFD FFFD FFFD},
      {"\x80\xbf", FFFD FFFD},
      {"\xe4\xb8", FFFD FFFD},
      {"\xe4\xb8"
       "A",
       FFFD FFFD "A"},
      {"\xf0\x9f\x98", FFFD FFFD FFFD},
      {"\xfe\xff", FFFD FFFD},
      /* Both kinds together; U+FFFD itself, raw and escaped, is kept. */
      {"\xff\\udc00" FFFD "\\ufffd", FFFD FFFD FFFD FFFD},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char json[128];
    snprintf(json, sizeof json, "{\"error\":\"%s\"}", cases[i].in);
    tunnel__msg m;
    int rc = decode_str(TUNNEL__MSG_PONG, json, &m);
    if (rc != 0)
      fail_msg("case %zu (%s): rc %d", i, json, rc);
    if (strcmp(m.error, cases[i].want) != 0)
      fail_msg("case %zu (%s): wrong bytes", i, json);
    tunnel__msg_clear(&tmem, &m);
  }

  /* In keys and values of maps, in arrays, and in keys that then match no
   * field (Go compares the decoded key). */
  tunnel__msg m;
  assert_int_equal(
      decode_str(TUNNEL__MSG_NEW_PROXY,
                 "{\"headers\":{\"\\ud800\":\"\\udc00x\"},"
                 "\"custom_domains\":[\"a\\udfff\",\"\\ud83d\\ude00\"],"
                 "\"proxy_name\\ud800\":\"no\",\"proxy_name\":\"\\ud800\"}",
                 &m),
      0);
  assert_int_equal(m.headers.n, 1);
  assert_string_equal(m.headers.v[0].key, FFFD);
  assert_string_equal(m.headers.v[0].value, FFFD "x");
  assert_int_equal(m.custom_domains.n, 2);
  assert_string_equal(m.custom_domains.v[0], "a" FFFD);
  assert_string_equal(m.custom_domains.v[1], "\xf0\x9f\x98\x80");
  assert_string_equal(m.proxy_name, FFFD);
  /* It re-encodes as Go would: U+FFFD as its UTF-8 bytes. */
  size_t len;
  uint8_t *wire = encode(&m, &len);
  static const char want[] =
      "{\"proxy_name\":\"" FFFD "\",\"custom_domains\":[\"a" FFFD
      "\",\"\xf0\x9f\x98\x80\"],\"headers\":{\"" FFFD "\":\"" FFFD "x\"}}";
  assert_int_equal(len - TUNNEL__MSG_HEADER_SIZE, sizeof want - 1);
  assert_memory_equal(wire + TUNNEL__MSG_HEADER_SIZE, want, sizeof want - 1);
  test_free(wire);
  tunnel__msg_clear(&tmem, &m);

  /* Through a reader, whole and split inside the escape. */
  static const char body[] = "{\"error\":\"\\ud800\\ud83d\\ude00\"}";
  uint8_t frame[TUNNEL__MSG_HEADER_SIZE + sizeof body - 1];
  frame[0] = TUNNEL__MSG_PONG;
  tunnel__put64(frame + 1, sizeof body - 1);
  memcpy(frame + TUNNEL__MSG_HEADER_SIZE, body, sizeof body - 1);
  for (size_t split = 1; split <= sizeof frame; split++) {
    tunnel__msg_reader r;
    tunnel__msg_reader_init(&r, &tmem, 64);
    size_t used, used2 = 0;
    int rc = tunnel__msg_reader_feed(&r, frame, split, &used, &m);
    if (rc == 0)
      rc = tunnel__msg_reader_feed(&r, frame + used, sizeof frame - used,
                                   &used2, &m);
    assert_int_equal(rc, 1);
    assert_int_equal(used + used2, sizeof frame);
    assert_string_equal(m.error, FFFD "\xf0\x9f\x98\x80");
    tunnel__msg_clear(&tmem, &m);
    tunnel__msg_reader_free(&r);
  }
}

static void expect_eproto(uint8_t type, const char *json, size_t len) {
  tunnel__msg m;
  memset(&m, 0x5a, sizeof m);
  assert_int_equal(
      tunnel__msg_decode(&tmem, type, (const uint8_t *)json, len, &m),
      TUNNEL_EPROTO);
  /* Nothing to free after an error (clearing is still allowed). */
  tunnel__msg empty;
  tunnel__msg_init(&empty, type);
  assert_memory_equal(&m, &empty, sizeof m);
  tunnel__msg_clear(&tmem, &m);
}
#define EPROTO_STR(type, s) expect_eproto(type, s, sizeof s - 1)

static void decode_errors(void **state) {
  (void)state;
  /* Unknown type letter. */
  EPROTO_STR('x', "{}");
  EPROTO_STR(0, "{}");
  /* Invalid JSON, including what cJSON alone would accept. */
  EPROTO_STR('o', "");
  EPROTO_STR('o', "   ");
  EPROTO_STR('o', "{");
  EPROTO_STR('o', "{\"version\":}");
  EPROTO_STR('o', "{\"version\":\"x\",}");
  EPROTO_STR('o', "{\"version\" \"x\"}");
  EPROTO_STR('o', "{} x");
  EPROTO_STR('o', "{}{}");
  EPROTO_STR('o', "\xef\xbb\xbf{}");
  EPROTO_STR('o', "\x01{}");
  EPROTO_STR('o', "{\"a\":1}\x00");
  EPROTO_STR('o', "{\"timestamp\":01}");
  EPROTO_STR('o', "{\"timestamp\":1.}");
  EPROTO_STR('o', "{\"timestamp\":.5}");
  EPROTO_STR('o', "{\"timestamp\":+1}");
  EPROTO_STR('o', "{\"timestamp\":1e}");
  EPROTO_STR('o', "{\"timestamp\":-}");
  EPROTO_STR('o', "{\"timestamp\":NaN}");
  EPROTO_STR('o', "{\"timestamp\":Infinity}");
  EPROTO_STR('o', "{\"version\":\"a\x01"
                  "b\"}");
  EPROTO_STR('o', "{\"version\":\"a\nb\"}");
  EPROTO_STR('o', "{\"version\":\"a\x00"
                  "b\"}");
  EPROTO_STR('o', "{\"version\":\"a\\u0000b\"}");
  EPROTO_STR('o', "{\"version\":\"\\uzzzz\"}");
  EPROTO_STR('o', "{\"version\":\"a\\u00zzb\"}");
  EPROTO_STR('o', "{\"version\":\"a\\u-001b\"}");
  EPROTO_STR('o', "{\"version\":\"\\u12\"}");
  EPROTO_STR('o', "{\"version\":\"\\u\"}");
  EPROTO_STR('o', "{\"version\":\"\\ud800\\uzzzz\"}");
  EPROTO_STR('o', "{\"version\":\"\\ud800\\u0000\"}");
  EPROTO_STR('o', "{\"version\":\"\\ud800\\q\"}");
  EPROTO_STR('o', "{\"version\":\"\\ud800\\\"}");
  EPROTO_STR('o', "{\"version\":\"\\ud800}");
  EPROTO_STR('o', "{\"version\":\"\\ud800\"");
  EPROTO_STR('o', "{\"\\ud800\":\"\\ud800\",}");
  EPROTO_STR('o', "{\"version\":\"\\x41\"}");
  EPROTO_STR('o', "{\"version\":'x'}");
  EPROTO_STR('o', "{\"version\":\"x}");
  EPROTO_STR('o', "{version:\"x\"}");
  EPROTO_STR('o', "{\"a\":tru}");
  /* Not an object. */
  EPROTO_STR('o', "[]");
  EPROTO_STR('o', "\"s\"");
  EPROTO_STR('o', "1");
  EPROTO_STR('o', "null");
  EPROTO_STR('o', "true");
  EPROTO_STR('r', "[{}]");
  /* Fields of the wrong JSON type. */
  EPROTO_STR('o', "{\"version\":1}");
  EPROTO_STR('o', "{\"version\":true}");
  EPROTO_STR('o', "{\"version\":[\"x\"]}");
  EPROTO_STR('o', "{\"version\":{}}");
  EPROTO_STR('o', "{\"timestamp\":\"1\"}");
  EPROTO_STR('o', "{\"timestamp\":true}");
  EPROTO_STR('o', "{\"timestamp\":1.5}");
  EPROTO_STR('o', "{\"timestamp\":1e300}");
  EPROTO_STR('o', "{\"timestamp\":9007199254740992}");
  EPROTO_STR('o', "{\"timestamp\":-9007199254740992}");
  EPROTO_STR('o', "{\"timestamp\":9223372036854775808}");
  EPROTO_STR('o', "{\"pool_count\":[]}");
  EPROTO_STR('o', "{\"metas\":[]}");
  EPROTO_STR('o', "{\"metas\":\"a\"}");
  EPROTO_STR('o', "{\"metas\":{\"a\":1}}");
  EPROTO_STR('o', "{\"metas\":{\"a\":{}}}");
  EPROTO_STR('p', "{\"use_encryption\":1}");
  EPROTO_STR('p', "{\"use_encryption\":\"true\"}");
  EPROTO_STR('p', "{\"custom_domains\":\"a\"}");
  EPROTO_STR('p', "{\"custom_domains\":{}}");
  EPROTO_STR('p', "{\"custom_domains\":[\"a\",1]}");
  EPROTO_STR('p', "{\"locations\":[[]]}");
  EPROTO_STR('p', "{\"headers\":{\"a\":\"b\",\"c\":false}}");
  EPROTO_STR('p', "{\"remote_port\":\"80\"}");
  EPROTO_STR('s', "{\"src_port\":-1}");
  EPROTO_STR('s', "{\"src_port\":65536}");
  EPROTO_STR('s', "{\"dst_port\":80.5}");
  EPROTO_STR('s', "{\"dst_port\":\"80\"}");
  /* An error after earlier fields were decoded frees them. */
  EPROTO_STR('p', "{\"proxy_name\":\"a\",\"custom_domains\":[\"x\"],"
                  "\"headers\":{\"k\":\"v\"},\"remote_port\":true}");
}

/* Several messages as one byte stream. */
static uint8_t *stream_of_all(size_t *len, size_t *nmsg) {
  tunnel__bufq q;
  tunnel__bufq_init(&q, &tmem, 64);
  *nmsg = 0;
  for (size_t i = 0; i < NTYPES; i++) {
    tunnel__msg m;
    assert_int_equal(build(&tmem, all_types[i], &m), 0);
    assert_int_equal(tunnel__msg_encode(&tmem, &m, &q), 0);
    tunnel__msg_clear(&tmem, &m);
    ++*nmsg;
  }
  uint8_t *out = flatten(&q, len);
  tunnel__bufq_free(&q);
  return out;
}

static void check_nth(size_t i, const tunnel__msg *got) {
  tunnel__msg want;
  assert_int_equal(build(&tmem, all_types[i], &want), 0);
  assert_true(tunnel__msg_equal(&want, got));
  tunnel__msg_clear(&tmem, &want);
}

static void reader_byte_at_a_time(void **state) {
  (void)state;
  size_t len, nmsg, seen = 0;
  uint8_t *s = stream_of_all(&len, &nmsg);
  tunnel__msg_reader r;
  tunnel__msg_reader_init(&r, &tmem, 4096);
  for (size_t i = 0; i < len; i++) {
    size_t used;
    tunnel__msg m;
    int rc = tunnel__msg_reader_feed(&r, s + i, 1, &used, &m);
    assert_true(rc == 0 || rc == 1);
    assert_int_equal(used, 1);
    if (rc == 1) {
      check_nth(seen++, &m);
      tunnel__msg_clear(&tmem, &m);
    }
  }
  assert_int_equal(seen, nmsg);
  tunnel__msg_reader_free(&r);
  test_free(s);
}

static void reader_chunks(void **state) {
  (void)state;
  size_t len, nmsg;
  uint8_t *s = stream_of_all(&len, &nmsg);
  /* Whole stream at once (no copies) and odd chunk sizes (buffered). */
  const size_t chunks[] = {1, 2, 3, 8, 9, 10, 17, 63, 64, 100, 1000, len};
  for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
    size_t chunk = chunks[c];
    tunnel__msg_reader r;
    tunnel__msg_reader_init(&r, &tmem, 4096);
    size_t off = 0, seen = 0;
    while (off < len) {
      size_t n = len - off < chunk ? len - off : chunk;
      size_t used;
      tunnel__msg m;
      int rc = tunnel__msg_reader_feed(&r, s + off, n, &used, &m);
      assert_true(rc == 0 || rc == 1);
      assert_true(used <= n);
      if (rc == 0)
        assert_int_equal(used, n);
      off += used;
      if (rc == 1) {
        check_nth(seen++, &m);
        tunnel__msg_clear(&tmem, &m);
      }
    }
    assert_int_equal(seen, nmsg);
    tunnel__msg_reader_free(&r);
  }
  test_free(s);
}

static void reader_stops_at_message_end(void **state) {
  (void)state;
  tunnel__msg m;
  assert_int_equal(build(&tmem, TUNNEL__MSG_START_WORK_CONN, &m), 0);
  size_t len;
  uint8_t *wire = encode(&m, &len);
  tunnel__msg_clear(&tmem, &m);
  static const char raw[] = "SSH-2.0-OpenSSH_9.2\r\n";
  uint8_t *buf = test_malloc(len + sizeof raw);
  memcpy(buf, wire, len);
  memcpy(buf + len, raw, sizeof raw);
  /* In one piece, and split inside the header and inside the body. */
  size_t splits[] = {len + sizeof raw, 5, TUNNEL__MSG_HEADER_SIZE + 3};
  for (size_t k = 0; k < 3; k++) {
    tunnel__msg_reader r;
    tunnel__msg_reader_init(&r, &tmem, 1024);
    size_t used, total = 0;
    int rc = tunnel__msg_reader_feed(&r, buf, splits[k], &used, &m);
    total += used;
    if (rc == 0) {
      assert_int_equal(used, splits[k]);
      rc = tunnel__msg_reader_feed(&r, buf + total, len + sizeof raw - total,
                                   &used, &m);
      total += used;
    }
    assert_int_equal(rc, 1);
    assert_int_equal(total, len);
    assert_memory_equal(buf + total, raw, sizeof raw);
    check_nth(7, &m);
    assert_int_equal(all_types[7], TUNNEL__MSG_START_WORK_CONN);
    tunnel__msg_clear(&tmem, &m);
    tunnel__msg_reader_free(&r);
  }
  test_free(buf);
  test_free(wire);
}

static void reader_errors_are_sticky(void **state) {
  (void)state;
  tunnel__msg m;
  size_t used;
  tunnel__msg_reader r;

  /* Unknown type: refused after one byte. */
  tunnel__msg_reader_init(&r, &tmem, 64);
  assert_int_equal(
      tunnel__msg_reader_feed(&r, (const uint8_t *)"x", 1, &used, &m),
      TUNNEL_EPROTO);
  assert_int_equal(
      tunnel__msg_reader_feed(&r, (const uint8_t *)"o", 1, &used, &m),
      TUNNEL_EPROTO);
  assert_int_equal(used, 0);
  tunnel__msg_reader_free(&r);

  /* Length above the limit: refused from the header alone. */
  static const uint8_t big[] = {'o', 0, 0, 0, 0, 0, 0, 0, 65};
  tunnel__msg_reader_init(&r, &tmem, 64);
  assert_int_equal(tunnel__msg_reader_feed(&r, big, sizeof big, &used, &m),
                   TUNNEL_ELIMIT);
  assert_int_equal(tunnel__msg_reader_feed(&r, big, 1, &used, &m),
                   TUNNEL_ELIMIT);
  tunnel__msg_reader_free(&r);

  /* Negative length, and one that is negative only as int64. */
  static const uint8_t neg[] = {'o',  0xff, 0xff, 0xff, 0xff,
                                0xff, 0xff, 0xff, 0xfe};
  static const uint8_t top[] = {'o', 0x80, 0, 0, 0, 0, 0, 0, 2};
  tunnel__msg_reader_init(&r, &tmem, UINT32_MAX);
  assert_int_equal(tunnel__msg_reader_feed(&r, neg, sizeof neg, &used, &m),
                   TUNNEL_ELIMIT);
  tunnel__msg_reader_free(&r);
  tunnel__msg_reader_init(&r, &tmem, UINT32_MAX);
  assert_int_equal(tunnel__msg_reader_feed(&r, top, sizeof top, &used, &m),
                   TUNNEL_ELIMIT);
  tunnel__msg_reader_free(&r);

  /* Exactly the limit is fine. */
  static const uint8_t at[] = "4\0\0\0\0\0\0\0\x0a{        }";
  tunnel__msg_reader_init(&r, &tmem, 10);
  assert_int_equal(tunnel__msg_reader_feed(&r, at, sizeof at - 1, &used, &m),
                   1);
  assert_int_equal(used, sizeof at - 1);
  tunnel__msg_clear(&tmem, &m);
  tunnel__msg_reader_free(&r);
  /* Header alone, then an empty feed, then the body. */
  tunnel__msg_reader_init(&r, &tmem, 10);
  assert_int_equal(tunnel__msg_reader_feed(&r, at, 9, &used, &m), 0);
  assert_int_equal(used, 9);
  assert_int_equal(tunnel__msg_reader_feed(&r, NULL, 0, &used, &m), 0);
  assert_int_equal(used, 0);
  assert_int_equal(
      tunnel__msg_reader_feed(&r, at + 9, sizeof at - 10, &used, &m), 1);
  assert_int_equal(used, 10);
  tunnel__msg_clear(&tmem, &m);
  tunnel__msg_reader_free(&r);

  /* Empty body and bad JSON: the decode error sticks too. */
  static const uint8_t empty[] = {'r', 0, 0, 0, 0, 0, 0, 0, 0};
  tunnel__msg_reader_init(&r, &tmem, 10);
  assert_int_equal(tunnel__msg_reader_feed(&r, empty, sizeof empty, &used, &m),
                   TUNNEL_EPROTO);
  tunnel__msg_reader_free(&r);
  static const uint8_t bad[] = "p\0\0\0\0\0\0\0\x10{\"proxy_name\":1}4";
  tunnel__msg_reader_init(&r, &tmem, 100);
  assert_int_equal(tunnel__msg_reader_feed(&r, bad, 12, &used, &m), 0);
  assert_int_equal(
      tunnel__msg_reader_feed(&r, bad + 12, sizeof bad - 13, &used, &m),
      TUNNEL_EPROTO);
  assert_int_equal(
      tunnel__msg_reader_feed(&r, (const uint8_t *)"4", 1, &used, &m),
      TUNNEL_EPROTO);
  tunnel__msg_reader_free(&r);

  /* Freeing a reader holding a partial body releases it. */
  tunnel__msg_reader_init(&r, &tmem, 100);
  assert_int_equal(tunnel__msg_reader_feed(&r, bad, 15, &used, &m), 0);
  tunnel__msg_reader_free(&r);
}

/* A header announcing a large body pins no memory until the body arrives,
 * and a body trickled in holds about what arrived, not what was announced:
 * many idle peers each announcing the limit cannot exhaust memory. */
static void reader_memory_follows_arrival(void **state) {
  (void)state;
  enum { BIG = 200000 };
  /* A Pong whose error string fills exactly BIG bytes of body. */
  static const char pre[] = "{\"error\":\"", post[] = "\"}";
  size_t len = TUNNEL__MSG_HEADER_SIZE + BIG;
  uint8_t *frame = test_malloc(len);
  frame[0] = TUNNEL__MSG_PONG;
  tunnel__put64(frame + 1, BIG);
  uint8_t *body = frame + TUNNEL__MSG_HEADER_SIZE;
  memcpy(body, pre, sizeof pre - 1);
  for (size_t i = sizeof pre - 1; i < BIG - (sizeof post - 1); i++)
    body[i] = (uint8_t)('a' + i % 26);
  memcpy(body + BIG - (sizeof post - 1), post, sizeof post - 1);

  tunnel__msg_reader r;
  tunnel__msg_reader_init(&r, &cmem, BIG);
  tunnel__msg m;
  size_t used;
  assert_int_equal(live_bytes, 0);
  assert_int_equal(
      tunnel__msg_reader_feed(&r, frame, TUNNEL__MSG_HEADER_SIZE, &used, &m),
      0);
  assert_true(live_bytes < 1024);
  /* One byte at a time: memory stays within twice what arrived (plus a
   * small first block), and the message decodes exactly. */
  int rc = 0;
  for (size_t i = 0; i < BIG; i++) {
    rc = tunnel__msg_reader_feed(&r, body + i, 1, &used, &m);
    assert_int_equal(used, 1);
    if (rc == 1) {
      assert_int_equal(i, BIG - 1);
      break;
    }
    assert_int_equal(rc, 0);
    if (live_bytes > 2 * (i + 1) + 512)
      fail_msg("%zu body bytes arrived, %zu bytes held", i + 1, live_bytes);
  }
  assert_int_equal(rc, 1);
  size_t n = BIG - (sizeof pre - 1) - (sizeof post - 1);
  assert_int_equal(strlen(m.error), n);
  assert_memory_equal(m.error, body + sizeof pre - 1, n);
  tunnel__msg_clear(&cmem, &m);
  assert_int_equal(live_bytes, 0); /* the buffer went with the message */

  /* A message in one piece is decoded in place: no allocation beyond what
   * decoding it directly costs. */
  allocs = 0;
  assert_int_equal(tunnel__msg_decode(&tmem, TUNNEL__MSG_PONG, body, BIG, &m),
                   0);
  size_t direct = allocs;
  tunnel__msg_clear(&tmem, &m);
  tunnel__msg_reader rt;
  tunnel__msg_reader_init(&rt, &tmem, BIG);
  allocs = 0;
  assert_int_equal(tunnel__msg_reader_feed(&rt, frame, len, &used, &m), 1);
  assert_int_equal(used, len);
  assert_int_equal(allocs, direct);
  tunnel__msg_clear(&tmem, &m);
  tunnel__msg_reader_free(&rt);

  /* Freeing a reader that holds a partial body releases it all. */
  assert_int_equal(tunnel__msg_reader_feed(&r, frame, len / 2, &used, &m), 0);
  assert_true(live_bytes > 0 && live_bytes <= len);
  tunnel__msg_reader_free(&r);
  assert_int_equal(live_bytes, 0);
  test_free(frame);
}

static void helpers(void **state) {
  (void)state;
  tunnel__msg a, b;
  tunnel__msg_init(&a, TUNNEL__MSG_PING);
  tunnel__msg_init(&b, TUNNEL__MSG_PING);
  /* NULL and "" are the same message on the wire. */
  assert_int_equal(tunnel__msg_set_str(&tmem, &a.privilege_key, ""), 0);
  assert_true(tunnel__msg_equal(&a, &b));
  assert_int_equal(tunnel__msg_set_str(&tmem, &a.privilege_key, "k"), 0);
  assert_false(tunnel__msg_equal(&a, &b));
  assert_int_equal(tunnel__msg_set_str(&tmem, &a.privilege_key, NULL), 0);
  assert_null(a.privilege_key);
  b.type = TUNNEL__MSG_PONG;
  assert_false(tunnel__msg_equal(&a, &b));
  tunnel__msg_map map = {NULL, 0};
  assert_int_equal(tunnel__msg_map_add(&tmem, &map, "k", "1"), 0);
  assert_int_equal(tunnel__msg_map_add(&tmem, &map, "k", "2"), 0);
  assert_string_equal(tunnel__msg_map_get(&map, "k"), "2");
  assert_null(tunnel__msg_map_get(&map, "K"));
  a.headers = map;
  tunnel__msg_clear(&tmem, &a);
  assert_null(a.headers.v);
  assert_int_equal(a.type, TUNNEL__MSG_PING);
  /* Integers beyond 2^53 still encode exactly (Go peers accept them). */
  tunnel__msg_init(&a, TUNNEL__MSG_PING);
  a.timestamp = INT64_MIN;
  size_t len;
  uint8_t *wire = encode(&a, &len);
  static const char want[] = "{\"timestamp\":-9223372036854775808}";
  assert_int_equal(len - TUNNEL__MSG_HEADER_SIZE, sizeof want - 1);
  assert_memory_equal(wire + TUNNEL__MSG_HEADER_SIZE, want, sizeof want - 1);
  test_free(wire);
}

/* Every allocation point fails once in turn: the call reports
 * TUNNEL_ENOMEM, leaks nothing, and the next attempt can succeed. */
static void out_of_memory(void **state) {
  (void)state;
  for (size_t i = 0; i < NTYPES; i++) {
    uint8_t type = all_types[i];
    /* Building (setters). */
    for (long n = 0;; n++) {
      tunnel__msg m;
      fail_after = n;
      int rc = build(&tmem, type, &m);
      fail_after = -1;
      tunnel__msg_clear(&tmem, &m);
      if (rc == 0)
        break;
      assert_int_equal(rc, TUNNEL_ENOMEM);
    }
    tunnel__msg m;
    assert_int_equal(build(&tmem, type, &m), 0);
    size_t len;
    uint8_t *wire = encode(&m, &len);
    /* Encoding: all or nothing. */
    for (long n = 0;; n++) {
      tunnel__bufq q;
      tunnel__bufq_init(&q, &tmem, 16);
      fail_after = n;
      int rc = tunnel__msg_encode(&tmem, &m, &q);
      fail_after = -1;
      if (rc == 0) {
        assert_int_equal(q.size, len);
        tunnel__bufq_free(&q);
        break;
      }
      assert_int_equal(rc, TUNNEL_ENOMEM);
      assert_int_equal(q.size, 0);
      tunnel__bufq_free(&q);
    }
    /* Decoding through a reader, in two pieces so the body is buffered. */
    for (long n = 0;; n++) {
      tunnel__msg_reader r;
      tunnel__msg_reader_init(&r, &tmem, 4096);
      tunnel__msg d;
      size_t used, used2 = 0;
      fail_after = n;
      int rc = tunnel__msg_reader_feed(&r, wire, len / 2 + 5, &used, &d);
      if (rc == 0)
        rc = tunnel__msg_reader_feed(&r, wire + used, len - used, &used2, &d);
      fail_after = -1;
      tunnel__msg_reader_free(&r);
      if (rc == 1) {
        assert_int_equal(used + used2, len);
        assert_true(tunnel__msg_equal(&m, &d));
        tunnel__msg_clear(&tmem, &d);
        break;
      }
      assert_int_equal(rc, TUNNEL_ENOMEM);
    }
    test_free(wire);
    tunnel__msg_clear(&tmem, &m);
  }
  /* Decoding directly, with duplicated maps merging. */
  static const char dup[] = "{\"metas\":{\"a\":\"1\",\"b\":\"\\u00ff\"},"
                            "\"metas\":{\"c\":null},\"version\":\"x\xff\","
                            "\"user\":\"\\udc00\"}";
  for (long n = 0;; n++) {
    tunnel__msg m;
    fail_after = n;
    int rc = decode_str(TUNNEL__MSG_LOGIN, dup, &m);
    fail_after = -1;
    if (rc == 0) {
      assert_int_equal(m.metas.n, 3);
      assert_string_equal(m.version, "x\xef\xbf\xbd");
      assert_string_equal(m.user, "\xef\xbf\xbd");
      tunnel__msg_clear(&tmem, &m);
      break;
    }
    assert_int_equal(rc, TUNNEL_ENOMEM);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(type_names),
      cmocka_unit_test(round_trip_every_type),
      cmocka_unit_test(encode_login_exact_bytes),
      cmocka_unit_test(encode_escapes_like_go),
      cmocka_unit_test(decode_go_bodies),
      cmocka_unit_test(decode_go_semantics),
      cmocka_unit_test(decode_errors),
      cmocka_unit_test(decode_invalid_text_like_go),
      cmocka_unit_test(reader_byte_at_a_time),
      cmocka_unit_test(reader_chunks),
      cmocka_unit_test(reader_stops_at_message_end),
      cmocka_unit_test(reader_errors_are_sticky),
      cmocka_unit_test(reader_memory_follows_arrival),
      cmocka_unit_test(helpers),
      cmocka_unit_test(out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
