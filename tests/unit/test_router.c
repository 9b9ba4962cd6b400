#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "router.h"

static const uint8_t seed_a[16] = {1, 2,  3,  4,  5,  6,  7,  8,
                                   9, 10, 11, 12, 13, 14, 15, 16};

/* Distinct addresses to route to. */
static int T[8];

static tunnel__router *new_router(void) {
  tunnel__router *r;
  assert_int_equal(tunnel__router_new(&r, NULL, seed_a), 0);
  return r;
}

static void *look(tunnel__router *r, const char *host, const char *path) {
  return tunnel__router_lookup(r, host, strlen(host), path,
                               path ? strlen(path) : 0);
}

/* ---------------------------------------------------------------- SipHash */

/* The reference implementation's vectors_sip64: key 00..0f, message
 * 00 01 .. (n-1) for n = 0..63, output little-endian. */
static const uint8_t sip64[64][8] = {
    {0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72},
    {0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74},
    {0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d},
    {0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85},
    {0xb7, 0x87, 0x71, 0x27, 0xe0, 0x94, 0x27, 0xcf},
    {0x8d, 0xa6, 0x99, 0xcd, 0x64, 0x55, 0x76, 0x18},
    {0xce, 0xe3, 0xfe, 0x58, 0x6e, 0x46, 0xc9, 0xcb},
    {0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab},
    {0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93},
    {0xb0, 0xe4, 0xa9, 0x0b, 0xdf, 0x82, 0x00, 0x9e},
    {0xf3, 0xb9, 0xdd, 0x94, 0xc5, 0xbb, 0x5d, 0x7a},
    {0xa7, 0xad, 0x6b, 0x22, 0x46, 0x2f, 0xb3, 0xf4},
    {0xfb, 0xe5, 0x0e, 0x86, 0xbc, 0x8f, 0x1e, 0x75},
    {0x90, 0x3d, 0x84, 0xc0, 0x27, 0x56, 0xea, 0x14},
    {0xee, 0xf2, 0x7a, 0x8e, 0x90, 0xca, 0x23, 0xf7},
    {0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1},
    {0xdb, 0x9b, 0xc2, 0x57, 0x7f, 0xcc, 0x2a, 0x3f},
    {0x94, 0x47, 0xbe, 0x2c, 0xf5, 0xe9, 0x9a, 0x69},
    {0x9c, 0xd3, 0x8d, 0x96, 0xf0, 0xb3, 0xc1, 0x4b},
    {0xbd, 0x61, 0x79, 0xa7, 0x1d, 0xc9, 0x6d, 0xbb},
    {0x98, 0xee, 0xa2, 0x1a, 0xf2, 0x5c, 0xd6, 0xbe},
    {0xc7, 0x67, 0x3b, 0x2e, 0xb0, 0xcb, 0xf2, 0xd0},
    {0x88, 0x3e, 0xa3, 0xe3, 0x95, 0x67, 0x53, 0x93},
    {0xc8, 0xce, 0x5c, 0xcd, 0x8c, 0x03, 0x0c, 0xa8},
    {0x94, 0xaf, 0x49, 0xf6, 0xc6, 0x50, 0xad, 0xb8},
    {0xea, 0xb8, 0x85, 0x8a, 0xde, 0x92, 0xe1, 0xbc},
    {0xf3, 0x15, 0xbb, 0x5b, 0xb8, 0x35, 0xd8, 0x17},
    {0xad, 0xcf, 0x6b, 0x07, 0x63, 0x61, 0x2e, 0x2f},
    {0xa5, 0xc9, 0x1d, 0xa7, 0xac, 0xaa, 0x4d, 0xde},
    {0x71, 0x65, 0x95, 0x87, 0x66, 0x50, 0xa2, 0xa6},
    {0x28, 0xef, 0x49, 0x5c, 0x53, 0xa3, 0x87, 0xad},
    {0x42, 0xc3, 0x41, 0xd8, 0xfa, 0x92, 0xd8, 0x32},
    {0xce, 0x7c, 0xf2, 0x72, 0x2f, 0x51, 0x27, 0x71},
    {0xe3, 0x78, 0x59, 0xf9, 0x46, 0x23, 0xf3, 0xa7},
    {0x38, 0x12, 0x05, 0xbb, 0x1a, 0xb0, 0xe0, 0x12},
    {0xae, 0x97, 0xa1, 0x0f, 0xd4, 0x34, 0xe0, 0x15},
    {0xb4, 0xa3, 0x15, 0x08, 0xbe, 0xff, 0x4d, 0x31},
    {0x81, 0x39, 0x62, 0x29, 0xf0, 0x90, 0x79, 0x02},
    {0x4d, 0x0c, 0xf4, 0x9e, 0xe5, 0xd4, 0xdc, 0xca},
    {0x5c, 0x73, 0x33, 0x6a, 0x76, 0xd8, 0xbf, 0x9a},
    {0xd0, 0xa7, 0x04, 0x53, 0x6b, 0xa9, 0x3e, 0x0e},
    {0x92, 0x59, 0x58, 0xfc, 0xd6, 0x42, 0x0c, 0xad},
    {0xa9, 0x15, 0xc2, 0x9b, 0xc8, 0x06, 0x73, 0x18},
    {0x95, 0x2b, 0x79, 0xf3, 0xbc, 0x0a, 0xa6, 0xd4},
    {0xf2, 0x1d, 0xf2, 0xe4, 0x1d, 0x45, 0x35, 0xf9},
    {0x87, 0x57, 0x75, 0x19, 0x04, 0x8f, 0x53, 0xa9},
    {0x10, 0xa5, 0x6c, 0xf5, 0xdf, 0xcd, 0x9a, 0xdb},
    {0xeb, 0x75, 0x09, 0x5c, 0xcd, 0x98, 0x6c, 0xd0},
    {0x51, 0xa9, 0xcb, 0x9e, 0xcb, 0xa3, 0x12, 0xe6},
    {0x96, 0xaf, 0xad, 0xfc, 0x2c, 0xe6, 0x66, 0xc7},
    {0x72, 0xfe, 0x52, 0x97, 0x5a, 0x43, 0x64, 0xee},
    {0x5a, 0x16, 0x45, 0xb2, 0x76, 0xd5, 0x92, 0xa1},
    {0xb2, 0x74, 0xcb, 0x8e, 0xbf, 0x87, 0x87, 0x0a},
    {0x6f, 0x9b, 0xb4, 0x20, 0x3d, 0xe7, 0xb3, 0x81},
    {0xea, 0xec, 0xb2, 0xa3, 0x0b, 0x22, 0xa8, 0x7f},
    {0x99, 0x24, 0xa4, 0x3c, 0xc1, 0x31, 0x57, 0x24},
    {0xbd, 0x83, 0x8d, 0x3a, 0xaf, 0xbf, 0x8d, 0xb7},
    {0x0b, 0x1a, 0x2a, 0x32, 0x65, 0xd5, 0x1a, 0xea},
    {0x13, 0x50, 0x79, 0xa3, 0x23, 0x1c, 0xe6, 0x60},
    {0x93, 0x2b, 0x28, 0x46, 0xe4, 0xd7, 0x06, 0x66},
    {0xe1, 0x91, 0x5f, 0x5c, 0xb1, 0xec, 0xa4, 0x6c},
    {0xf3, 0x25, 0x96, 0x5c, 0xa1, 0x6d, 0x62, 0x9f},
    {0x57, 0x5f, 0xf2, 0x8e, 0x60, 0x38, 0x1b, 0xe5},
    {0x72, 0x45, 0x06, 0xeb, 0x4c, 0x32, 0x8a, 0x95},
};

static void siphash_reference_vectors(void **state) {
  (void)state;
  uint8_t key[16], msg[64];
  for (int i = 0; i < 16; i++)
    key[i] = (uint8_t)i;
  for (int i = 0; i < 64; i++)
    msg[i] = (uint8_t)i;
  for (size_t n = 0; n < 64; n++) {
    uint64_t want = 0;
    for (int b = 7; b >= 0; b--)
      want = want << 8 | sip64[n][b];
    assert_int_equal(tunnel__siphash24(key, msg, n), want);
  }
}

static void hash_depends_on_seed(void **state) {
  (void)state;
  uint8_t other[16];
  memcpy(other, seed_a, sizeof other);
  other[15] ^= 0x80;
  const char *name = "app.example.com";
  uint64_t a = tunnel__siphash24(seed_a, name, strlen(name));
  uint64_t b = tunnel__siphash24(other, name, strlen(name));
  assert_true(a != b);
  /* Both routers still find what they hold. */
  tunnel__router *r1 = new_router(), *r2;
  assert_int_equal(tunnel__router_new(&r2, NULL, other), 0);
  assert_int_equal(tunnel__router_add(r1, name, NULL, &T[0]), 0);
  assert_int_equal(tunnel__router_add(r2, name, NULL, &T[1]), 0);
  assert_ptr_equal(look(r1, name, "/"), &T[0]);
  assert_ptr_equal(look(r2, name, "/"), &T[1]);
  tunnel__router_free(r1);
  tunnel__router_free(r2);
}

/* ---------------------------------------------------------------- routing */

static void exact_and_wildcard(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  assert_int_equal(tunnel__router_add(r, "app.example.com", "", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, "*.example.com", "", &T[1]), 0);
  assert_ptr_equal(look(r, "app.example.com", "/"), &T[0]);
  assert_ptr_equal(look(r, "x.example.com", "/"), &T[1]);
  assert_ptr_equal(look(r, "a.b.example.com", "/"), &T[1]);
  assert_ptr_equal(look(r, "a.app.example.com", "/"), &T[1]);
  assert_null(look(r, "example.com", "/"));
  assert_null(look(r, "xexample.com", "/"));
  assert_null(look(r, "example.com.evil.net", "/"));
  assert_null(look(r, "app.example.co", "/"));
  assert_int_equal(tunnel__router_count(r), 2);
  tunnel__router_free(r);
}

static void most_specific_wildcard_wins(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  assert_int_equal(tunnel__router_add(r, "*.example.com", NULL, &T[1]), 0);
  assert_int_equal(tunnel__router_add(r, "*.b.example.com", NULL, &T[2]), 0);
  assert_int_equal(tunnel__router_add(r, "*", NULL, &T[3]), 0);
  assert_ptr_equal(look(r, "a.b.example.com", "/"), &T[2]);
  assert_ptr_equal(look(r, "x.a.b.example.com", "/"), &T[2]);
  /* *.b.example.com needs a label under b.example.com. */
  assert_ptr_equal(look(r, "b.example.com", "/"), &T[1]);
  assert_ptr_equal(look(r, "c.example.com", "/"), &T[1]);
  /* "*" catches the rest, and only the rest. */
  assert_ptr_equal(look(r, "example.com", "/"), &T[3]);
  assert_ptr_equal(look(r, "other.org", "/"), &T[3]);
  assert_ptr_equal(look(r, "localhost", NULL), &T[3]);
  tunnel__router_free(r);
}

static void deepest_host_walks_every_suffix(void **state) {
  (void)state;
  /* 127 one-byte labels: 253 bytes, the longest name. */
  char host[254];
  for (int i = 0; i < 127; i++) {
    host[2 * i] = 'a';
    host[2 * i + 1] = '.';
  }
  host[253] = '\0';
  host[252] = 'z';
  tunnel__router *r = new_router();
  assert_null(look(r, host, "/"));
  assert_int_equal(tunnel__router_add(r, "*.z", NULL, &T[0]), 0);
  uint64_t before = tunnel__router_probes(r);
  assert_ptr_equal(look(r, host, "/"), &T[0]);
  /* The exact name and 126 wildcards before "*.z" matched. */
  uint64_t probes = tunnel__router_probes(r) - before;
  assert_true(probes >= 127 && probes <= 127 * 4);
  assert_int_equal(tunnel__router_add(r, host, NULL, &T[1]), 0);
  assert_ptr_equal(look(r, host, "/"), &T[1]);
  /* One byte more is not a name. */
  char longer[256];
  snprintf(longer, sizeof longer, "b%s", host);
  assert_null(look(r, longer, "/"));
  tunnel__router_free(r);
}

static void longest_location_on_segment_boundaries(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  const char *h = "web.example.com";
  assert_int_equal(tunnel__router_add(r, h, "/api", &T[1]), 0);
  assert_int_equal(tunnel__router_add(r, h, "", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, h, "/api/v2", &T[2]), 0);
  assert_int_equal(tunnel__router_add(r, h, "/static/", &T[3]), 0);
  assert_int_equal(tunnel__router_count(r), 4);

  assert_ptr_equal(look(r, h, "/api"), &T[1]);
  assert_ptr_equal(look(r, h, "/api/"), &T[1]);
  assert_ptr_equal(look(r, h, "/api/x"), &T[1]);
  assert_ptr_equal(look(r, h, "/api?q=1"), &T[1]);
  assert_ptr_equal(look(r, h, "/apix"), &T[0]);
  assert_ptr_equal(look(r, h, "/api/v2"), &T[2]);
  assert_ptr_equal(look(r, h, "/api/v2/users"), &T[2]);
  assert_ptr_equal(look(r, h, "/api/v20"), &T[1]);
  assert_ptr_equal(look(r, h, "/static/"), &T[3]);
  assert_ptr_equal(look(r, h, "/static/app.js"), &T[3]);
  assert_ptr_equal(look(r, h, "/static"), &T[0]);
  assert_ptr_equal(look(r, h, "/"), &T[0]);
  assert_ptr_equal(look(r, h, NULL), &T[0]);
  assert_ptr_equal(look(r, h, "/API"), &T[0]); /* paths keep their case */
  /* Only the given length of the path counts. */
  assert_ptr_equal(tunnel__router_lookup(r, h, strlen(h), "/apix", 4), &T[1]);
  tunnel__router_free(r);
}

static void slash_location_and_no_default(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  const char *h = "web.example.com";
  assert_int_equal(tunnel__router_add(r, h, "/", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, h, "/news", &T[1]), 0);
  assert_ptr_equal(look(r, h, "/"), &T[0]);
  assert_ptr_equal(look(r, h, "/about"), &T[0]);
  assert_ptr_equal(look(r, h, "/news/today"), &T[1]);
  /* No "" route: a request target that is not a path matches nothing. */
  assert_null(look(r, h, "*"));
  assert_null(look(r, h, NULL));
  tunnel__router_free(r);
}

static void unmatched_location_falls_to_wildcard(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  assert_int_equal(tunnel__router_add(r, "app.example.com", "/api", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, "*.example.com", "/", &T[1]), 0);
  assert_ptr_equal(look(r, "app.example.com", "/api/x"), &T[0]);
  assert_ptr_equal(look(r, "app.example.com", "/other"), &T[1]);
  assert_null(look(r, "app.example.com", ""));
  tunnel__router_free(r);
}

static void names_are_case_insensitive(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  assert_int_equal(tunnel__router_add(r, "App.Example.COM", "/X", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, "*.EXAMPLE.com", NULL, &T[1]), 0);
  assert_ptr_equal(look(r, "app.example.com", "/X"), &T[0]);
  assert_ptr_equal(look(r, "APP.EXAMPLE.COM", "/X/y"), &T[0]);
  assert_ptr_equal(look(r, "Other.Example.Com", "/"), &T[1]);
  assert_ptr_equal(tunnel__router_find(r, "app.example.com", "/X"), &T[0]);
  assert_null(tunnel__router_find(r, "app.example.com", "/x"));
  assert_int_equal(tunnel__router_add(r, "APP.example.com", "/X", &T[2]),
                   TUNNEL_EEXIST);
  assert_int_equal(tunnel__router_remove(r, "app.EXAMPLE.com", "/X"), 0);
  assert_int_equal(tunnel__router_count(r), 1);
  tunnel__router_free(r);
}

static void invalid_names_and_locations(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  char label64[80], name254[264], name253[260];
  memset(label64, 'a', 64);
  strcpy(label64 + 64, ".com");
  /* 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 */
  memset(name253, 'b', 253);
  name253[63] = name253[127] = name253[191] = '.';
  name253[253] = '\0';
  snprintf(name254, sizeof name254, "c.%s", name253 + 1); /* 254 bytes */
  const char *bad[] = {"",          "a..b",      ".a",       "a.",
                       "a b.com",   "a:80",      "a/b",      "*x.com",
                       "a.*.com",   "*.",        "*.*.com",  "**.com",
                       "x*.com",    "caf\xc3\xa9.com", label64, name254};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(tunnel__router_add(r, bad[i], NULL, &T[0]),
                     TUNNEL_EINVAL);
    assert_int_equal(tunnel__router_remove(r, bad[i], NULL), TUNNEL_EINVAL);
  }
  assert_int_equal(tunnel__router_add(r, "ok.com", "api", &T[0]),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel__router_add(r, "ok.com", NULL, NULL), TUNNEL_EINVAL);
  assert_int_equal(tunnel__router_add(r, NULL, NULL, &T[0]), TUNNEL_EINVAL);
  assert_int_equal(tunnel__router_count(r), 0);

  /* Limits themselves are fine. */
  strcpy(label64 + 63, ".com");
  assert_int_equal(tunnel__router_add(r, label64, NULL, &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, name253, NULL, &T[1]), 0);
  assert_int_equal(tunnel__router_add(r, "under_score-1.x", NULL, &T[2]), 0);
  assert_ptr_equal(look(r, name253, "/"), &T[1]);
  assert_ptr_equal(look(r, "UNDER_SCORE-1.X", "/"), &T[2]);

  /* Hosts that are not names match nothing, not even "*". */
  assert_int_equal(tunnel__router_add(r, "*", NULL, &T[3]), 0);
  assert_null(look(r, "", "/"));
  assert_null(look(r, "ok.com:80", "/"));
  assert_null(look(r, "ok.com.", "/"));
  assert_null(look(r, "*.x", "/"));
  assert_null(look(r, "*", "/"));
  assert_null(look(r, name254, "/"));
  assert_null(tunnel__router_lookup(r, "a\0b", 3, "/", 1));
  assert_ptr_equal(look(r, "ok.com", "/"), &T[3]);
  /* A host slice ends where the caller says (e.g. before ":port"). */
  assert_ptr_equal(tunnel__router_lookup(r, "under_score-1.x:8080", 15, "/", 1),
                   &T[2]);
  tunnel__router_free(r);
}

static void add_remove_readd(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  const char *h = "svc.example.com";
  assert_int_equal(tunnel__router_add(r, h, "/a", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, h, "/a", &T[1]), TUNNEL_EEXIST);
  assert_int_equal(tunnel__router_add(r, h, "/a", &T[0]), TUNNEL_EEXIST);
  assert_ptr_equal(tunnel__router_find(r, h, "/a"), &T[0]);
  assert_int_equal(tunnel__router_add(r, h, "/b", &T[1]), 0);
  assert_int_equal(tunnel__router_add(r, h, NULL, &T[2]), 0);
  assert_int_equal(tunnel__router_add(r, h, "", &T[3]), TUNNEL_EEXIST);
  assert_int_equal(tunnel__router_count(r), 3);

  assert_int_equal(tunnel__router_remove(r, h, "/a"), 0);
  assert_int_equal(tunnel__router_remove(r, h, "/a"), TUNNEL_ENOTFOUND);
  assert_int_equal(tunnel__router_remove(r, "nope.example.com", "/a"),
                   TUNNEL_ENOTFOUND);
  assert_ptr_equal(look(r, h, "/a/x"), &T[2]);
  assert_ptr_equal(look(r, h, "/b"), &T[1]);
  assert_int_equal(tunnel__router_count(r), 2);

  assert_int_equal(tunnel__router_remove(r, h, NULL), 0);
  assert_int_equal(tunnel__router_remove(r, h, "/b"), 0);
  assert_int_equal(tunnel__router_count(r), 0);
  assert_null(look(r, h, "/b"));
  assert_null(tunnel__router_find(r, h, "/b"));

  assert_int_equal(tunnel__router_add(r, h, "/a", &T[4]), 0);
  assert_ptr_equal(look(r, h, "/a"), &T[4]);
  assert_null(look(r, h, "/b"));
  tunnel__router_free(r);
}

static void remove_by_target(void **state) {
  (void)state;
  tunnel__router *r = new_router();
  assert_int_equal(tunnel__router_add(r, "a.example.com", "/x", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, "a.example.com", "/y", &T[1]), 0);
  assert_int_equal(tunnel__router_add(r, "a.example.com", "", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, "b.example.com", "", &T[0]), 0);
  assert_int_equal(tunnel__router_add(r, "*.example.com", "", &T[1]), 0);
  assert_int_equal(tunnel__router_remove_target(r, &T[0]), 3);
  assert_int_equal(tunnel__router_remove_target(r, &T[0]), 0);
  assert_int_equal(tunnel__router_count(r), 2);
  assert_ptr_equal(look(r, "a.example.com", "/y"), &T[1]);
  assert_ptr_equal(look(r, "a.example.com", "/x"), &T[1]); /* wildcard */
  assert_ptr_equal(look(r, "b.example.com", "/"), &T[1]);
  assert_null(tunnel__router_find(r, "b.example.com", ""));
  tunnel__router_free(r);
}

/* ------------------------------------------------------------------ scale */

#define MANY 10000

static void name_of(char *buf, size_t cap, int i) {
  snprintf(buf, cap, "host%d.example.com", i);
}

/* Adds n names and returns the average probes of a hit lookup of each. */
static double average_hit_probes(tunnel__router *r, int n, int *targets) {
  char name[64];
  for (int i = 0; i < n; i++) {
    name_of(name, sizeof name, i);
    assert_int_equal(tunnel__router_add(r, name, NULL, &targets[i]), 0);
  }
  assert_int_equal(tunnel__router_count(r), (size_t)n);
  uint64_t before = tunnel__router_probes(r);
  for (int i = 0; i < n; i++) {
    name_of(name, sizeof name, i);
    assert_ptr_equal(look(r, name, "/"), &targets[i]);
  }
  return (double)(tunnel__router_probes(r) - before) / n;
}

static void many_names_constant_probes(void **state) {
  (void)state;
  int *targets = calloc(MANY, sizeof *targets);
  assert_non_null(targets);
  tunnel__router *small = new_router(), *big = new_router();
  double p_small = average_hit_probes(small, 10, targets);
  double p_big = average_hit_probes(big, MANY, targets);
  /* A half-full linear-probing table averages 1.5 probes a hit; a list
   * would average thousands. */
  assert_true(p_big < 3.0);
  assert_true(p_big < 3.0 * (p_small > 1.0 ? p_small : 1.0));

  /* A miss with no wildcard held: the host, two wildcards, "*". */
  uint64_t before = tunnel__router_probes(big);
  for (int i = 0; i < 1000; i++) {
    char name[64];
    snprintf(name, sizeof name, "absent%d.example.com", i);
    assert_null(look(big, name, "/"));
  }
  double per_search = (double)(tunnel__router_probes(big) - before) / 4000;
  assert_true(per_search < 4.0);
  tunnel__router_free(small);
  tunnel__router_free(big);
  free(targets);
}

static void removals_keep_others_reachable(void **state) {
  (void)state;
  int *targets = calloc(MANY, sizeof *targets);
  assert_non_null(targets);
  tunnel__router *r = new_router();
  char name[64];
  for (int i = 0; i < MANY; i++) {
    name_of(name, sizeof name, i);
    assert_int_equal(tunnel__router_add(r, name, NULL, &targets[i]), 0);
  }
  /* Every third by name; every seventh of the rest shares one target. */
  size_t left = MANY, shared = 0;
  for (int i = 0; i < MANY; i++) {
    name_of(name, sizeof name, i);
    if (i % 3 == 0) {
      assert_int_equal(tunnel__router_remove(r, name, NULL), 0);
      left--;
    } else if (i % 7 == 0) {
      assert_int_equal(tunnel__router_remove(r, name, NULL), 0);
      assert_int_equal(tunnel__router_add(r, name, NULL, &T[5]), 0);
      shared++;
    }
  }
  assert_int_equal(tunnel__router_count(r), left);
  for (int i = 0; i < MANY; i++) {
    name_of(name, sizeof name, i);
    void *want = i % 3 == 0 ? NULL : i % 7 == 0 ? (void *)&T[5] : &targets[i];
    assert_ptr_equal(look(r, name, "/"), want);
  }
  assert_int_equal(tunnel__router_remove_target(r, &T[5]), shared);
  left -= shared;
  assert_int_equal(tunnel__router_count(r), left);
  for (int i = 0; i < MANY; i++) {
    name_of(name, sizeof name, i);
    void *want = i % 3 == 0 || i % 7 == 0 ? NULL : &targets[i];
    assert_ptr_equal(look(r, name, "/"), want);
  }
  /* Empty it (the table shrinks on the way), then fill it again. */
  for (int i = 0; i < MANY; i++) {
    name_of(name, sizeof name, i);
    int rc = tunnel__router_remove(r, name, NULL);
    assert_int_equal(rc, i % 3 == 0 || i % 7 == 0 ? TUNNEL_ENOTFOUND : 0);
  }
  assert_int_equal(tunnel__router_count(r), 0);
  uint64_t before = tunnel__router_probes(r);
  assert_null(look(r, "host1.example.com", "/"));
  /* Four searches, one probe each: nothing is left behind. */
  assert_int_equal(tunnel__router_probes(r) - before, 4);
  for (int i = 0; i < 100; i++) {
    name_of(name, sizeof name, i);
    assert_int_equal(tunnel__router_add(r, name, NULL, &targets[i]), 0);
  }
  for (int i = 0; i < 100; i++) {
    name_of(name, sizeof name, i);
    assert_ptr_equal(look(r, name, "/"), &targets[i]);
  }
  tunnel__router_free(r);
  free(targets);
}

/* ------------------------------------------------------------------- OOM */

typedef struct fail_alloc {
  long budget; /* allocations left before failing; < 0: unlimited */
  long live;
} fail_alloc;

static void *fa_malloc(size_t size, void *ud) {
  fail_alloc *fa = ud;
  if (fa->budget == 0)
    return NULL;
  if (fa->budget > 0)
    fa->budget--;
  fa->live++;
  return malloc(size);
}

static void *fa_realloc(void *ptr, size_t size, void *ud) {
  fail_alloc *fa = ud;
  if (fa->budget == 0)
    return NULL;
  if (fa->budget > 0)
    fa->budget--;
  if (!ptr)
    fa->live++;
  return realloc(ptr, size);
}

static void fa_free(void *ptr, void *ud) {
  fail_alloc *fa = ud;
  fa->live--;
  free(ptr);
}

static void out_of_memory_leaves_router_unchanged(void **state) {
  (void)state;
  fail_alloc fa = {-1, 0};
  tunnel__mem mem = {fa_malloc, fa_realloc, fa_free, &fa};
  tunnel__router *r;
  assert_int_equal(tunnel__router_new(&r, &mem, seed_a), 0);
  char name[64];
  /* 8 names fill half of the 16 slots: a 9th grows the table. */
  for (int i = 0; i < 8; i++) {
    name_of(name, sizeof name, i);
    assert_int_equal(tunnel__router_add(r, name, "/a", &T[0]), 0);
  }
  const struct {
    const char *name, *loc;
  } cases[] = {{"host8.example.com", "/a"},  /* new name, table grows */
               {"host1.example.com", "/b"},  /* routes 1 -> 2 */
               {"host1.example.com", "/c"},  /* routes 2 -> 4 */
               {"host1.example.com", "/d"}}; /* room left */
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    int rc = TUNNEL_ENOMEM;
    for (long budget = 0; rc == TUNNEL_ENOMEM; budget++) {
      size_t count = tunnel__router_count(r);
      long live = fa.live;
      fa.budget = budget;
      rc = tunnel__router_add(r, cases[c].name, cases[c].loc, &T[1]);
      fa.budget = -1;
      if (rc == TUNNEL_ENOMEM) {
        assert_int_equal(tunnel__router_count(r), count);
        assert_int_equal(fa.live, live);
        assert_null(tunnel__router_find(r, cases[c].name, cases[c].loc));
      }
      assert_true(budget < 10);
    }
    assert_int_equal(rc, 0);
    assert_ptr_equal(tunnel__router_find(r, cases[c].name, cases[c].loc),
                     &T[1]);
  }
  for (int i = 0; i < 8; i++) {
    name_of(name, sizeof name, i);
    assert_ptr_equal(look(r, name, "/a"), &T[0]);
  }
  tunnel__router_free(r);
  assert_int_equal(fa.live, 0);

  fa.budget = 1; /* the router, not its slots */
  r = (tunnel__router *)&fa;
  assert_int_equal(tunnel__router_new(&r, &mem, seed_a), TUNNEL_ENOMEM);
  assert_null(r);
  assert_int_equal(fa.live, 0);
}

/* ---------------------------------------------------------- random labels */

static int symbol_value(char c) {
  static const char alphabet[] = "abcdefghijkmnpqrstuvwxyz23456789";
  const char *p = strchr(alphabet, c);
  return c && p ? (int)(p - alphabet) : -1;
}

static void random_label_format(void **state) {
  (void)state;
  uint8_t bytes[TUNNEL__ROUTER_LABEL_MAX_BYTES + 1];
  char out[80];
  for (size_t i = 0; i < sizeof bytes; i++)
    bytes[i] = (uint8_t)(i * 37 + 11);

  for (size_t n = TUNNEL__ROUTER_LABEL_MIN_BYTES;
       n <= TUNNEL__ROUTER_LABEL_MAX_BYTES; n++) {
    int len = tunnel__router_random_label(bytes, n, out, sizeof out);
    assert_int_equal(len, (int)TUNNEL__ROUTER_LABEL_LEN(n));
    assert_int_equal(strlen(out), (size_t)len);
    assert_true(len <= 63);
    /* Decoding the symbols gives back every input bit, then zero padding. */
    uint8_t back[TUNNEL__ROUTER_LABEL_MAX_BYTES + 1] = {0};
    size_t bit = 0;
    for (int i = 0; i < len; i++) {
      int v = symbol_value(out[i]);
      assert_true(v >= 0);
      for (int b = 4; b >= 0; b--, bit++)
        if (v >> b & 1) {
          assert_true(bit < n * 8);
          back[bit / 8] |= (uint8_t)(0x80 >> (bit % 8));
        }
    }
    assert_memory_equal(back, bytes, n);
  }

  memset(bytes, 0, 8);
  assert_int_equal(tunnel__router_random_label(bytes, 8, out, 14), 13);
  assert_string_equal(out, "aaaaaaaaaaaaa");
  memset(bytes, 0xff, 8);
  assert_int_equal(tunnel__router_random_label(bytes, 8, out, 14), 13);
  assert_string_equal(out, "9999999999998");

  /* A label is a valid name part. */
  tunnel__router *r = new_router();
  char name[96];
  bytes[3] = 0x42;
  assert_int_equal(tunnel__router_random_label(bytes, 16, out, sizeof out),
                   26);
  snprintf(name, sizeof name, "%s.example.com", out);
  assert_int_equal(tunnel__router_add(r, name, NULL, &T[0]), 0);
  assert_ptr_equal(look(r, name, "/"), &T[0]);
  tunnel__router_free(r);

  assert_int_equal(tunnel__router_random_label(bytes, 7, out, sizeof out),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel__router_random_label(bytes, 40, out, sizeof out),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel__router_random_label(NULL, 8, out, sizeof out),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel__router_random_label(bytes, 8, out, 13),
                   TUNNEL_ERANGE);
}

static void random_labels_differ(void **state) {
  (void)state;
  /* Inputs one bit apart give distinct labels: no bit is dropped. */
  uint8_t bytes[8] = {0};
  char first[16], other[16];
  assert_int_equal(tunnel__router_random_label(bytes, 8, first, sizeof first),
                   13);
  for (int bit = 0; bit < 64; bit++) {
    bytes[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    assert_int_equal(
        tunnel__router_random_label(bytes, 8, other, sizeof other), 13);
    assert_string_not_equal(first, other);
    bytes[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(siphash_reference_vectors),
      cmocka_unit_test(hash_depends_on_seed),
      cmocka_unit_test(exact_and_wildcard),
      cmocka_unit_test(most_specific_wildcard_wins),
      cmocka_unit_test(deepest_host_walks_every_suffix),
      cmocka_unit_test(longest_location_on_segment_boundaries),
      cmocka_unit_test(slash_location_and_no_default),
      cmocka_unit_test(unmatched_location_falls_to_wildcard),
      cmocka_unit_test(names_are_case_insensitive),
      cmocka_unit_test(invalid_names_and_locations),
      cmocka_unit_test(add_remove_readd),
      cmocka_unit_test(remove_by_target),
      cmocka_unit_test(many_names_constant_probes),
      cmocka_unit_test(removals_keep_others_reachable),
      cmocka_unit_test(out_of_memory_leaves_router_unchanged),
      cmocka_unit_test(random_label_format),
      cmocka_unit_test(random_labels_differ),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
