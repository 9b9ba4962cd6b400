/* End-to-end tests of the HTTP tunnel over loopback: visitors speak HTTP/1.1
 * to the server's public HTTP port, requests are routed by Host to proxies
 * of clients on the same loop, and local services (vh_fixture.c) answer.
 *
 * Usage: test-vhost-http [TEST_NAME]  (default: all tests)
 * Environment: IT_LOG=0..3 prints library log lines up to that level. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vh_fixture.h"

#define BIG (100ull << 20)
/* Library memory while 100 MiB pass: flow control bounds it by a few
 * stream windows and buffers, far below the payload. */
#define BIG_MEM_BOUND (64u << 20)
#define BIG_WAIT_MS 80000u

/* Response i is complete, a 200 from `svc`, answering `url`. */
static void check_reflect(const vt_visitor *v, int i, const char *svc,
                          const char *url) {
  if (i >= v->nresp)
    fail_msg("response %d missing (%d received)", i, v->nresp);
  const vt_msg *m = &v->resps[i];
  if (m->status != 200)
    fail_msg("response %d: status %d, body: %s", i, m->status, m->body);
  const char *xs = vt_hdr_get(m, "X-Service");
  if (!xs || strcmp(xs, svc) != 0)
    fail_msg("response %d came from %s, expected %s", i, xs ? xs : "(none)",
             svc);
  char want[600];
  snprintf(want, sizeof want, "service=%s\n", svc);
  assert_non_null(strstr(m->body, want));
  if (url) {
    snprintf(want, sizeof want, "\nurl=%s\n", url);
    if (!strstr(m->body, want))
      fail_msg("response %d does not answer %s: %s", i, url, m->body);
  }
}

/* The connection was answered by the server itself with `status` and then
 * closed. */
static void check_server_page(const vt_visitor *v, int status) {
  assert_true(vt_visitor_done(v));
  if (v->nresp < 1)
    fail_msg("no response before the connection ended (%llu bytes: %.*s)",
             (unsigned long long)v->rx_total, (int)v->raw_len,
             (const char *)v->raw);
  if (v->resps[0].status != status)
    fail_msg("status %d, expected %d", v->resps[0].status, status);
  assert_int_equal(v->parse_err, 0);
  assert_true(v->rx_eof || v->rx_err == UV_ECONNRESET);
}

/* Two clients, each with its own subdomain and service: each name reaches
 * its own service only, whatever the case and port in the Host. */
static void test_two_clients(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k1 = vt_client_start(&t);
  vt_client *k2 = vt_client_start(&t);
  vt_service *sa = vt_service_new(&t, "alpha-svc");
  vt_service *sb = vt_service_new(&t, "beta-svc");
  vt_service_listen(sa);
  vt_service_listen(sb);
  vt_proxy_opts oa = {.name = "alpha", .local_port = sa->port,
                      .subdomain = "alpha"};
  vt_proxy_opts ob = {.name = "beta", .local_port = sb->port,
                      .subdomain = "beta"};
  vt_proxy *xa = vt_proxy_add(&t, k1, &oa);
  vt_proxy *xb = vt_proxy_add(&t, k2, &ob);
  char ha[128], hb[128];
  assert_string_equal(vt_wait_registered(&t, xa),
                      vt_host(&t, "alpha", ha, sizeof ha));
  assert_string_equal(vt_wait_registered(&t, xb),
                      vt_host(&t, "beta", hb, sizeof hb));

  vt_visitor *v1 = vt_fetch(&t, "GET", ha, "/one", NULL, NULL);
  check_reflect(v1, 0, "alpha-svc", "/one");
  vt_visitor *v2 = vt_fetch(&t, "GET", "beta.localhost", "/two", NULL, NULL);
  check_reflect(v2, 0, "beta-svc", "/two");
  vt_visitor *v3 = vt_fetch(&t, "GET", "ALPHA.LocalHost", "/three", NULL,
                            NULL);
  check_reflect(v3, 0, "alpha-svc", "/three");
  vt_visitor *v4 = vt_fetch(&t, "POST", hb, "/four", NULL, "payload");
  check_reflect(v4, 0, "beta-svc", "/four");
  assert_non_null(strstr(v4->resps[0].body, "body_len=7\n"));
  assert_int_equal(sa->nreqs, 2);
  assert_int_equal(sb->nreqs, 2);
  assert_string_equal(vt_service_req(sa, 1)->url, "/three");
  assert_string_equal(vt_service_req(sb, 1)->method, "POST");
  vt_teardown(&t);
}

/* A proxy that asks for no name gets a random subdomain of the server's
 * domain; the reported name works, and two such proxies get different
 * names. */
static void test_random_subdomain(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k = vt_client_start(&t);
  vt_service *s = vt_service_new(&t, "anon-svc");
  vt_service_listen(s);
  vt_proxy_opts o1 = {.name = "anon1", .local_port = s->port};
  vt_proxy_opts o2 = {.name = "anon2", .local_port = s->port};
  vt_proxy *x1 = vt_proxy_add(&t, k, &o1);
  vt_proxy *x2 = vt_proxy_add(&t, k, &o2);
  char n1[256], n2[256];
  snprintf(n1, sizeof n1, "%s", vt_wait_registered(&t, x1));
  snprintf(n2, sizeof n2, "%s", vt_wait_registered(&t, x2));
  fprintf(stderr, "# random names: %s, %s\n", n1, n2);
  char suffix[64];
  snprintf(suffix, sizeof suffix, ".localhost:%u", t.http_port);
  for (int i = 0; i < 2; i++) {
    const char *n = i ? n2 : n1;
    size_t len = strlen(n), sl = strlen(suffix);
    assert_true(len > sl && strcmp(n + len - sl, suffix) == 0);
    assert_null(strchr(n, ','));
    size_t label = len - sl;
    /* Unguessable: a long label of letters and digits. */
    assert_true(label >= 12);
    for (size_t j = 0; j < label; j++)
      assert_true((n[j] >= 'a' && n[j] <= 'z') || (n[j] >= '0' && n[j] <= '9'));
  }
  assert_string_not_equal(n1, n2);

  vt_visitor *v = vt_fetch(&t, "GET", n1, "/r1", NULL, NULL);
  check_reflect(v, 0, "anon-svc", "/r1");
  /* The name without the port works too. */
  char bare[256];
  snprintf(bare, sizeof bare, "%s", n2);
  *strrchr(bare, ':') = '\0';
  v = vt_fetch(&t, "GET", bare, "/r2", NULL, NULL);
  check_reflect(v, 0, "anon-svc", "/r2");
  /* Another label is not routed. */
  v = vt_fetch(&t, "GET", "abcdefghijklmnop.localhost", "/r3", NULL, NULL);
  check_server_page(v, 404);
  assert_int_equal(s->nreqs, 2);
  vt_teardown(&t);
}

/* Custom domains, wildcards and locations: the exact name beats the
 * wildcards, the deeper wildcard beats the shallower one, and the longest
 * location of a name beats the name's catch-all. */
static void test_custom_and_wildcard(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k1 = vt_client_start(&t);
  vt_client *k2 = vt_client_start(&t);
  vt_service *se = vt_service_new(&t, "exact");
  vt_service *sw = vt_service_new(&t, "wild");
  vt_service *sd = vt_service_new(&t, "deeper");
  vt_service *sa = vt_service_new(&t, "api");
  vt_service_listen(se);
  vt_service_listen(sw);
  vt_service_listen(sd);
  vt_service_listen(sa);
  vt_proxy_opts oe = {.name = "exact", .local_port = se->port,
                      .domains = {"app.example.com"}};
  vt_proxy_opts ow = {.name = "wild", .local_port = sw->port,
                      .domains = {"*.example.com"}};
  vt_proxy_opts od = {.name = "deeper", .local_port = sd->port,
                      .domains = {"*.b.example.com", "other.example.net"}};
  vt_proxy_opts oa = {.name = "api", .local_port = sa->port,
                      .domains = {"app.example.com"},
                      .locations = {"/api"}};
  vt_proxy *xe = vt_proxy_add(&t, k1, &oe);
  vt_proxy *xw = vt_proxy_add(&t, k2, &ow);
  vt_proxy *xd = vt_proxy_add(&t, k1, &od);
  vt_proxy *xa = vt_proxy_add(&t, k2, &oa);
  char want[256];
  snprintf(want, sizeof want, "app.example.com:%u", t.http_port);
  assert_string_equal(vt_wait_registered(&t, xe), want);
  snprintf(want, sizeof want, "*.example.com:%u", t.http_port);
  assert_string_equal(vt_wait_registered(&t, xw), want);
  snprintf(want, sizeof want, "*.b.example.com:%u,other.example.net:%u",
           t.http_port, t.http_port);
  assert_string_equal(vt_wait_registered(&t, xd), want);
  snprintf(want, sizeof want, "app.example.com:%u", t.http_port);
  assert_string_equal(vt_wait_registered(&t, xa), want);

  static const struct {
    const char *host, *path, *svc;
  } cases[] = {
      {"app.example.com", "/", "exact"},
      {"APP.Example.COM:8080", "/index.html", "exact"},
      {"app.example.com", "/api", "api"},
      {"app.example.com", "/api/v1/items?x=1", "api"},
      {"app.example.com", "/apix", "exact"},
      {"foo.example.com", "/", "wild"},
      {"b.example.com", "/", "wild"},
      {"x.b.example.com", "/api", "deeper"},
      {"y.z.b.example.com", "/", "deeper"},
      {"other.example.net", "/", "deeper"},
      {"example.com", "/", NULL},
      {"app.example.org", "/", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    vt_visitor *v = vt_fetch(&t, "GET", cases[i].host, cases[i].path, NULL,
                             NULL);
    if (cases[i].svc)
      check_reflect(v, 0, cases[i].svc, cases[i].path);
    else
      check_server_page(v, 404);
  }
  assert_int_equal(se->nreqs, 3);
  assert_int_equal(sa->nreqs, 2);
  assert_int_equal(sw->nreqs, 2);
  assert_int_equal(sd->nreqs, 3);
  vt_teardown(&t);
}

/* A name another client holds is refused with a message naming it; the
 * holder keeps it, and the refused client stays logged in and can take a
 * free name. */
static void test_name_taken(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k1 = vt_client_start(&t);
  vt_client *k2 = vt_client_start(&t);
  vt_service *s1 = vt_service_new(&t, "holder");
  vt_service *s2 = vt_service_new(&t, "latecomer");
  vt_service_listen(s1);
  vt_service_listen(s2);
  vt_proxy_opts o1 = {.name = "first", .local_port = s1->port,
                      .subdomain = "taken",
                      .domains = {"shop.example.com"}};
  vt_proxy *x1 = vt_proxy_add(&t, k1, &o1);
  vt_wait_registered(&t, x1);

  vt_proxy_opts o2 = {.name = "second", .local_port = s2->port,
                      .subdomain = "taken"};
  vt_proxy *x2 = vt_proxy_add(&t, k2, &o2);
  const char *m2 = vt_wait_refused(&t, x2);
  assert_non_null(strstr(m2, "taken.localhost"));
  assert_non_null(strstr(m2, "already"));

  vt_proxy_opts o3 = {.name = "third", .local_port = s2->port,
                      .domains = {"Shop.Example.com"}};
  vt_proxy *x3 = vt_proxy_add(&t, k2, &o3);
  const char *m3 = vt_wait_refused(&t, x3);
  assert_non_null(strstr(m3, "shop.example.com"));
  assert_non_null(strstr(m3, "already"));

  vt_proxy_opts o4 = {.name = "fourth", .local_port = s2->port,
                      .subdomain = "free"};
  vt_proxy *x4 = vt_proxy_add(&t, k2, &o4);
  vt_wait_registered(&t, x4);
  assert_int_equal(k2->state_calls, 1);
  assert_int_equal(k2->state, 0);

  vt_visitor *v = vt_fetch(&t, "GET", "taken.localhost", "/t", NULL, NULL);
  check_reflect(v, 0, "holder", "/t");
  v = vt_fetch(&t, "GET", "shop.example.com", "/s", NULL, NULL);
  check_reflect(v, 0, "holder", "/s");
  v = vt_fetch(&t, "GET", "free.localhost", "/f", NULL, NULL);
  check_reflect(v, 0, "latecomer", "/f");
  vt_teardown(&t);
}

/* One kept-alive visitor connection: requests to A, then B, then A, each
 * answered by its own service, in order, on the same connection. */
static void test_keepalive_routing(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k1 = vt_client_start(&t);
  vt_client *k2 = vt_client_start(&t);
  vt_service *sa = vt_service_new(&t, "svc-a");
  vt_service *sb = vt_service_new(&t, "svc-b");
  vt_service_listen(sa);
  vt_service_listen(sb);
  vt_proxy_opts oa = {.name = "a", .local_port = sa->port, .subdomain = "a"};
  vt_proxy_opts ob = {.name = "b", .local_port = sb->port, .subdomain = "b"};
  vt_wait_registered(&t, vt_proxy_add(&t, k1, &oa));
  vt_wait_registered(&t, vt_proxy_add(&t, k2, &ob));
  char ha[64], hb[64];
  vt_host(&t, "a", ha, sizeof ha);
  vt_host(&t, "b", hb, sizeof hb);

  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  static const char *const paths[] = {"/first", "/second", "/third",
                                      "/fourth"};
  static const char *const svcs[] = {"svc-a", "svc-b", "svc-a", "svc-a"};
  for (int i = 0; i < 4; i++) {
    vt_visitor_request(v, "GET", svcs[i][4] == 'a' ? ha : hb, paths[i], NULL,
                       NULL);
    VT_WAIT(&t, v->nresp == i + 1 || vt_visitor_done(v));
    check_reflect(v, i, svcs[i], paths[i]);
    assert_false(vt_visitor_done(v));
  }
  assert_int_equal(v->parse_err, 0);
  assert_int_equal(sa->nreqs, 3);
  assert_int_equal(sb->nreqs, 1);
  assert_string_equal(vt_service_req(sa, 0)->url, "/first");
  assert_string_equal(vt_service_req(sb, 0)->url, "/second");
  assert_string_equal(vt_service_req(sa, 1)->url, "/third");
  assert_string_equal(vt_service_req(sa, 2)->url, "/fourth");
  /* A response framed by the end of the service's connection reaches the
   * visitor whole, and then the visitor's connection ends. */
  vt_visitor_request(v, "GET", hb, "/eof-framed", NULL, NULL);
  VT_WAIT(&t, vt_visitor_done(v));
  assert_int_equal(v->parse_err, 0);
  assert_int_equal(v->nresp, 5);
  check_reflect(v, 4, "svc-b", "/eof-framed");
  assert_null(vt_hdr_get(&v->resps[4], "Content-Length"));
  assert_true(v->rx_eof);
  assert_int_equal(sb->nreqs, 2);

  /* A visitor that ends its side after a response: the server lets the
   * connection go. */
  vt_visitor *w = vt_visitor_new(&t, t.http_port);
  vt_visitor_request(w, "GET", ha, "/fifth", NULL, NULL);
  VT_WAIT(&t, w->nresp == 1 || vt_visitor_done(w));
  check_reflect(w, 0, "svc-a", "/fifth");
  vt_visitor_shutdown(w);
  VT_WAIT(&t, vt_visitor_done(w));
  assert_true(w->rx_eof);
  assert_int_equal(w->nresp, 1);
  vt_teardown(&t);
}

/* Appends one request to buf and notes it on the visitor. */
static size_t add_req(vt_visitor *v, char *buf, size_t off, size_t cap,
                      const char *method, const char *host, const char *path,
                      const char *body) {
  int n;
  if (body)
    n = snprintf(buf + off, cap - off,
                 "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %zu\r\n\r\n%s",
                 method, path, host, strlen(body), body);
  else
    n = snprintf(buf + off, cap - off, "%s %s HTTP/1.1\r\nHost: %s\r\n\r\n",
                 method, path, host);
  assert_true(n > 0 && (size_t)n < cap - off);
  vt_visitor_sent(v, method);
  return off + (size_t)n;
}

/* Six requests for two tunnels in one write (one of them with a body, one
 * HEAD): six responses, in order, each from the right service. */
static void test_pipelined(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k1 = vt_client_start(&t);
  vt_client *k2 = vt_client_start(&t);
  vt_service *sa = vt_service_new(&t, "svc-a");
  vt_service *sb = vt_service_new(&t, "svc-b");
  vt_service_listen(sa);
  vt_service_listen(sb);
  vt_proxy_opts oa = {.name = "a", .local_port = sa->port, .subdomain = "a"};
  vt_proxy_opts ob = {.name = "b", .local_port = sb->port, .subdomain = "b"};
  vt_wait_registered(&t, vt_proxy_add(&t, k1, &oa));
  vt_wait_registered(&t, vt_proxy_add(&t, k2, &ob));

  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  char buf[4096];
  size_t n = 0;
  n = add_req(v, buf, n, sizeof buf, "GET", "a.localhost", "/p0", NULL);
  n = add_req(v, buf, n, sizeof buf, "GET", "b.localhost", "/p1", NULL);
  n = add_req(v, buf, n, sizeof buf, "POST", "a.localhost", "/p2",
              "a body in the middle of the pipeline");
  n = add_req(v, buf, n, sizeof buf, "GET", "b.localhost", "/p3", NULL);
  n = add_req(v, buf, n, sizeof buf, "HEAD", "a.localhost", "/p4", NULL);
  n = add_req(v, buf, n, sizeof buf, "GET", "a.localhost", "/p5", NULL);
  vt_visitor_write(v, buf, n);
  VT_WAIT(&t, v->nresp == 6 || vt_visitor_done(v) || v->parse_err);
  assert_int_equal(v->parse_err, 0);
  assert_int_equal(v->nresp, 6);
  check_reflect(v, 0, "svc-a", "/p0");
  check_reflect(v, 1, "svc-b", "/p1");
  check_reflect(v, 2, "svc-a", "/p2");
  assert_non_null(strstr(v->resps[2].body, "body_len=36\n"));
  check_reflect(v, 3, "svc-b", "/p3");
  /* HEAD: headers only. */
  assert_int_equal(v->resps[4].status, 200);
  assert_string_equal(vt_hdr_get(&v->resps[4], "X-Service"), "svc-a");
  assert_int_equal(v->resps[4].body_len, 0);
  assert_non_null(vt_hdr_get(&v->resps[4], "Content-Length"));
  check_reflect(v, 5, "svc-a", "/p5");
  assert_int_equal(sa->nreqs, 4);
  assert_int_equal(sb->nreqs, 2);
  assert_string_equal(vt_service_req(sa, 2)->method, "HEAD");
  vt_teardown(&t);
}

static void report_mem(vt *t, const char *what, uint64_t t0) {
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  fprintf(stderr, "# %s in %.2f s; library memory peak %zu bytes\n", what,
          secs, t->mem.peak);
  if (t->mem.peak >= BIG_MEM_BOUND)
    fail_msg("library memory peaked at %zu bytes (bound %u)", t->mem.peak,
             BIG_MEM_BOUND);
}

/* A 100 MiB request body (Content-Length) arrives whole and intact. */
static void test_post_100mib(void **state) {
  (void)state;
  vt t;
  vt_client *k;
  vt_service *s = vt_simple(&t, NULL, "up", "upload", &k);
  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  uint64_t t0 = uv_hrtime();
  vt_visitor_printf(v,
                    "POST /upload HTTP/1.1\r\nHost: up.localhost\r\n"
                    "Content-Type: application/octet-stream\r\n"
                    "Content-Length: %llu\r\n\r\n",
                    (unsigned long long)BIG);
  vt_visitor_sent(v, "POST");
  vt_visitor_gen(v, BIG, 11, 0);
  IT_WAIT(&t.w, v->nresp == 1 || vt_visitor_done(v), BIG_WAIT_MS);
  check_reflect(v, 0, "upload", "/upload");
  assert_int_equal(v->gen_queued, BIG);
  assert_int_equal(s->nreqs, 1);
  const vt_msg *r = vt_service_req(s, 0);
  assert_int_equal(r->body_len, BIG);
  if (r->body_hash != v->gen_hash)
    fail_msg("body hash %016llx at the service, %016llx sent",
             (unsigned long long)r->body_hash,
             (unsigned long long)v->gen_hash);
  char want[64];
  snprintf(want, sizeof want, "body_hash=%016llx\n",
           (unsigned long long)v->gen_hash);
  assert_non_null(strstr(v->resps[0].body, want));
  report_mem(&t, "100 MiB uploaded", t0);
  vt_teardown(&t);
}

/* A 100 MiB response body arrives whole and intact. */
static void test_download_100mib(void **state) {
  (void)state;
  vt t;
  vt_client *k;
  vt_service *s = vt_simple(&t, NULL, "down", "download", &k);
  s->seed = 12;
  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  uint64_t t0 = uv_hrtime();
  char path[64];
  snprintf(path, sizeof path, "/bytes/%llu", (unsigned long long)BIG);
  vt_visitor_request(v, "GET", "down.localhost", path, NULL, NULL);
  IT_WAIT(&t.w, v->nresp == 1 || vt_visitor_done(v), BIG_WAIT_MS);
  assert_int_equal(v->parse_err, 0);
  assert_int_equal(v->nresp, 1);
  assert_int_equal(v->resps[0].status, 200);
  assert_int_equal(s->dl_done, 1);
  assert_int_equal(s->dl_len, BIG);
  assert_int_equal(v->resps[0].body_len, BIG);
  if (v->resps[0].body_hash != s->dl_hash)
    fail_msg("body hash %016llx received, %016llx sent",
             (unsigned long long)v->resps[0].body_hash,
             (unsigned long long)s->dl_hash);
  /* The same content, generated independently. */
  uint64_t h = FNV_OFFSET;
  uint8_t *chunk = malloc(VT_CHUNK);
  assert_non_null(chunk);
  for (uint64_t off = 0; off < BIG; off += VT_CHUNK) {
    gen_fill(12, off, chunk, VT_CHUNK);
    h = fnv1a(h, chunk, VT_CHUNK);
  }
  free(chunk);
  assert_true(h == s->dl_hash);
  report_mem(&t, "100 MiB downloaded", t0);
  /* The connection is still usable. */
  vt_visitor_request(v, "GET", "down.localhost", "/after", NULL, NULL);
  VT_WAIT(&t, v->nresp == 2 || vt_visitor_done(v));
  check_reflect(v, 1, "download", "/after");
  vt_teardown(&t);
}

/* A chunked response, with chunk extensions and trailers, answered twice
 * on one connection. */
static const char chunked_resp[] =
    "HTTP/1.1 200 OK\r\n"
    "Transfer-Encoding: chunked\r\n"
    "X-Service: chunky\r\n"
    "Trailer: X-Checksum\r\n"
    "\r\n"
    "4\r\nWiki\r\n"
    "5;name=val\r\npedia\r\n"
    "e\r\n in\r\n\r\nchunks.\r\n"
    "1\r\n\n\r\n"
    "0\r\n"
    "X-Checksum: 1234\r\n"
    "\r\n";
static const char chunked_resp_body[] = "Wikipedia in\r\n\r\nchunks.\n";

/* A chunked request body (extensions, an upper- and a lower-case size, a
 * 70000-byte binary chunk, trailers) reaches the service byte for byte,
 * and a chunked response reaches the visitor byte for byte; the
 * connection then carries a second exchange. */
static void test_chunked(void **state) {
  (void)state;
  vt t;
  vt_client *k;
  vt_service *s = vt_simple(&t, NULL, "ch", "chunky", &k);
  s->canned = chunked_resp;
  s->canned_len = strlen(chunked_resp);

  enum { BIGCHUNK = 70000 };
  static uint8_t body[BIGCHUNK + 1024];
  size_t n = 0;
  n += (size_t)sprintf((char *)body + n, "5;ext=1\r\nhello\r\n");
  n += (size_t)sprintf((char *)body + n, "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n");
  n += (size_t)sprintf((char *)body + n, "%x\r\n", (unsigned)BIGCHUNK);
  gen_fill(31, 0, body + n, BIGCHUNK);
  n += BIGCHUNK;
  n += (size_t)sprintf((char *)body + n, "\r\n3 ; a=\"b c\"\r\nxyz\r\n");
  n += (size_t)sprintf((char *)body + n, "0\r\nX-Trailer: yes\r\n\r\n");
  const uint64_t decoded = 5 + 26 + BIGCHUNK + 3;

  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  vt_visitor_printf(v, "POST /chunks HTTP/1.1\r\nHost: ch.localhost\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n");
  vt_visitor_write(v, body, n);
  vt_visitor_sent(v, "POST");
  VT_WAIT(&t, v->nresp == 1 || vt_visitor_done(v) || v->parse_err);
  assert_int_equal(v->parse_err, 0);
  assert_int_equal(v->nresp, 1);
  /* The second exchange proves the server found the end of both the
   * chunked request and the chunked response. */
  vt_visitor_request(v, "GET", "ch.localhost", "/again", NULL, NULL);
  VT_WAIT(&t, v->nresp == 2 || vt_visitor_done(v) || v->parse_err);
  assert_int_equal(v->parse_err, 0);
  assert_int_equal(v->nresp, 2);

  /* Service side: decoded as sent, and the raw body byte for byte. */
  assert_int_equal(s->nreqs, 2);
  const vt_msg *r = vt_service_req(s, 0);
  assert_int_equal(r->body_len, decoded);
  assert_string_equal(vt_service_req(s, 1)->url, "/again");
  const vt_sconn *c = NULL;
  for (const vt_sconn *i = s->conns; i; i = i->next)
    if (i->idx == r->conn)
      c = i;
  assert_non_null(c);
  const uint8_t *end = memmem(c->raw, c->raw_len, "\r\n\r\n", 4);
  assert_non_null(end);
  size_t head_len = (size_t)(end - c->raw) + 4;
  assert_true(c->raw_len >= head_len + n);
  if (memcmp(c->raw + head_len, body, n) != 0)
    fail_msg("the chunked request body was altered on its way");
  /* Visitor side: both responses exactly as the service wrote them. */
  size_t cl = strlen(chunked_resp);
  assert_int_equal(v->raw_len, 2 * cl);
  assert_memory_equal(v->raw, chunked_resp, cl);
  assert_memory_equal(v->raw + cl, chunked_resp, cl);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(v->resps[i].status, 200);
    assert_string_equal(v->resps[i].body, chunked_resp_body);
  }
  vt_teardown(&t);
}

/* HEAD on a kept-alive connection: headers announcing a body that does not
 * come; the GET that follows gets its body. */
static void test_head_then_get(void **state) {
  (void)state;
  vt t;
  vt_client *k;
  vt_service *s = vt_simple(&t, NULL, "hd", "heady", &k);
  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  vt_visitor_request(v, "HEAD", "hd.localhost", "/bytes/5000", NULL, NULL);
  VT_WAIT(&t, v->nresp == 1 || vt_visitor_done(v));
  assert_int_equal(v->nresp, 1);
  assert_int_equal(v->resps[0].status, 200);
  assert_string_equal(vt_hdr_get(&v->resps[0], "Content-Length"), "5000");
  assert_int_equal(v->resps[0].body_len, 0);
  vt_visitor_request(v, "GET", "hd.localhost", "/bytes/5000", NULL, NULL);
  VT_WAIT(&t, v->nresp == 2 || vt_visitor_done(v));
  assert_int_equal(v->parse_err, 0);
  assert_int_equal(v->nresp, 2);
  assert_int_equal(v->resps[1].status, 200);
  assert_int_equal(v->resps[1].body_len, 5000);
  assert_true(v->resps[1].body_hash == s->dl_hash);
  /* Nothing but the two responses came. */
  vt_visitor_request(v, "GET", "hd.localhost", "/third", NULL, NULL);
  VT_WAIT(&t, v->nresp == 3 || vt_visitor_done(v));
  check_reflect(v, 2, "heady", "/third");
  assert_int_equal(s->nreqs, 3);
  assert_string_equal(vt_service_req(s, 0)->method, "HEAD");
  vt_teardown(&t);
}

/* WebSocket-style upgrade: the 101 (with bytes the service sent right
 * after it) comes through, then 1 MiB is echoed raw both ways, and the
 * half-closes pass. */
static void test_websocket(void **state) {
  (void)state;
  vt t;
  vt_client *k;
  vt_service *s = vt_simple(&t, NULL, "ws", "sockety", &k);
  static const char greeting[] = "hello-from-service\n";
  s->greeting = greeting;
  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  v->up_skip = strlen(greeting);
  vt_visitor_printf(v, "GET /chat HTTP/1.1\r\nHost: ws.localhost\r\n"
                       "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n");
  vt_visitor_sent(v, "GET");
  VT_WAIT(&t, v->upgraded || vt_visitor_done(v));
  assert_true(v->upgraded);
  assert_int_equal(v->resps[0].status, 101);
  assert_string_equal(vt_hdr_get(&v->resps[0], "X-Service"), "sockety");
  assert_int_equal(s->nreqs, 1);
  const vt_msg *r = vt_service_req(s, 0);
  assert_true(r->upgrade);
  assert_string_equal(vt_hdr_get(r, "Upgrade"), "websocket");
  assert_non_null(vt_hdr_get(r, "Connection"));
  assert_non_null(strcasestr(vt_hdr_get(r, "Connection"), "upgrade"));
  assert_string_equal(vt_hdr_get(r, "Sec-WebSocket-Key"),
                      "dGhlIHNhbXBsZSBub25jZQ==");

  const uint64_t n = 1u << 20;
  vt_visitor_gen(v, n, 21, 1);
  VT_WAIT(&t, vt_visitor_done(v));
  assert_int_equal(v->rx_err, 0);
  assert_true(v->rx_eof);
  assert_int_equal(v->write_err, 0);
  assert_int_equal(v->gen_queued, n);
  assert_int_equal(v->up_rx, strlen(greeting) + n);
  assert_memory_equal(v->up_head, greeting, strlen(greeting));
  if (v->up_hash != v->gen_hash)
    fail_msg("echoed bytes differ from those sent");
  /* The service saw the visitor's FIN after every byte. */
  const vt_sconn *c = s->conns;
  assert_non_null(c);
  assert_true(c->rx_eof);
  assert_int_equal(c->rx_err, 0);
  vt_teardown(&t);
}

/* 404: a name nobody serves; the server answers with its own page and
 * closes, and the tunnels keep working. */
static void test_404(void **state) {
  (void)state;
  vt t;
  vt_client *k;
  vt_service *s = vt_simple(&t, NULL, "live", "live-svc", &k);
  char h[64];
  vt_visitor *v = vt_fetch(&t, "GET", vt_host(&t, "nobody", h, sizeof h),
                           "/", NULL, NULL);
  check_server_page(v, 404);
  assert_true(v->resps[0].body_len > 0);
  v = vt_fetch(&t, "GET", "example.org", "/", NULL, NULL);
  check_server_page(v, 404);
  v = vt_fetch(&t, "GET", "live.localhost", "/", NULL, NULL);
  check_reflect(v, 0, "live-svc", "/");
  assert_int_equal(s->nreqs, 1);
  vt_teardown(&t);
}

/* In-process accept for an HTTP proxy: with no local address, each
 * visitor's request reaches the program as a tunnel_stream, already
 * rewritten by the server, and the program answers through it. */
typedef struct inproc {
  tunnel_stream *st;
  char req[2048];
  size_t len;
  int answered, closed, accepted, status_calls, status;
} inproc;

static void inproc_closed(tunnel_stream *st, void *ud) {
  (void)st;
  ((inproc *)ud)->closed = 1;
}

static void inproc_read(tunnel_stream *st, int status, const uint8_t *d,
                        size_t n, void *ud) {
  inproc *ip = ud;
  if (status) {
    tunnel_stream_close(st, inproc_closed, ip);
    return;
  }
  if (ip->len + n >= sizeof ip->req)
    n = sizeof ip->req - 1 - ip->len;
  memcpy(ip->req + ip->len, d, n);
  ip->len += n;
  ip->req[ip->len] = '\0';
  if (!ip->answered && strstr(ip->req, "\r\n\r\n")) {
    ip->answered = 1;
    static const char resp[] = "HTTP/1.1 200 OK\r\nX-Service: in-process\r\n"
                               "Content-Length: 11\r\nConnection: close\r\n"
                               "\r\nin-process\n";
    assert_int_equal(tunnel_stream_write(st, (const uint8_t *)resp,
                                         sizeof resp - 1, NULL, NULL),
                     0);
    assert_int_equal(tunnel_stream_shutdown(st, NULL, NULL), 0);
  }
}

static void inproc_accept(tunnel_proxy *p, tunnel_stream *st, void *ud) {
  inproc *ip = ud;
  (void)p;
  ip->accepted++;
  ip->st = st;
  assert_int_equal(tunnel_stream_read_start(st, inproc_read, ip), 0);
}

static void inproc_status(tunnel_proxy *p, int status, const char *msg,
                          void *ud) {
  inproc *ip = ud;
  (void)p, (void)msg;
  ip->status_calls++;
  ip->status = status;
}

static void test_in_process(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k = vt_client_start(&t);
  inproc ip;
  memset(&ip, 0, sizeof ip);
  tunnel_proxy *p;
  assert_int_equal(tunnel_proxy_new(&p, k->c, "inproc", TUNNEL_PROXY_HTTP), 0);
  assert_int_equal(tunnel_proxy_set_subdomain(p, "inproc"), 0);
  assert_int_equal(tunnel_proxy_set_accept_cb(p, inproc_accept, &ip), 0);
  assert_int_equal(tunnel_proxy_set_status_cb(p, inproc_status, &ip), 0);
  assert_int_equal(tunnel_proxy_start(p), 0);
  VT_WAIT(&t, ip.status_calls > 0);
  assert_int_equal(ip.status, 0);
  vt_visitor *v = vt_fetch(&t, "GET", "inproc.localhost", "/hello", NULL,
                           NULL);
  assert_int_equal(ip.accepted, 1);
  if (v->nresp < 1)
    fail_msg("no response to the in-process request");
  assert_int_equal(v->resps[0].status, 200);
  assert_string_equal(vt_hdr_get(&v->resps[0], "X-Service"), "in-process");
  assert_string_equal(v->resps[0].body, "in-process\n");
  /* The program saw the rewritten head. */
  assert_non_null(strstr(ip.req, "GET /hello HTTP/1.1\r\n"));
  assert_non_null(strstr(ip.req, "X-Forwarded-For: 127.0.0.1\r\n"));
  assert_non_null(strstr(ip.req, "X-Forwarded-Proto: http\r\n"));
  VT_WAIT(&t, ip.closed);
  vt_teardown(&t);
}

/* 502: the tunnel exists but its local service is not running. */
static void test_502(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k = vt_client_start(&t);
  uint16_t dead = it_ephemeral_free_port();
  assert_true(dead != 0);
  vt_proxy_opts o = {.name = "dead", .local_port = dead, .subdomain = "dead"};
  vt_wait_registered(&t, vt_proxy_add(&t, k, &o));
  uint64_t t0 = vt_now(&t);
  vt_visitor *v = vt_fetch(&t, "GET", "dead.localhost", "/", NULL, NULL);
  check_server_page(v, 502);
  uint64_t took = vt_now(&t) - t0;
  fprintf(stderr, "# 502 after %llu ms\n", (unsigned long long)took);
  assert_true(took < 5000);
  /* A service that takes the request and hangs up without a word. */
  vt_service *s = vt_service_new(&t, "hangs-up");
  s->hangup = 1;
  vt_service_listen(s);
  vt_proxy_opts oh = {.name = "hang", .local_port = s->port,
                      .subdomain = "hang"};
  vt_wait_registered(&t, vt_proxy_add(&t, k, &oh));
  v = vt_fetch(&t, "GET", "hang.localhost", "/", NULL, NULL);
  check_server_page(v, 502);
  assert_int_equal(s->nreqs, 1);
  assert_int_equal(k->state_calls, 1); /* the session stayed up */
  vt_teardown(&t);
}

/* 504: the service takes the request and never answers; the server gives
 * up at the response timeout. */
static void test_504(void **state) {
  (void)state;
  vt t;
  vt_srv_opts so = {.response_timeout_ms = 500};
  vt_client *k;
  vt_service *s = vt_simple(&t, &so, "mute", "mute-svc", &k);
  s->silent = 1;
  uint64_t t0 = vt_now(&t);
  vt_visitor *v = vt_fetch(&t, "GET", "mute.localhost", "/wait", NULL, NULL);
  check_server_page(v, 504);
  uint64_t took = vt_now(&t) - t0;
  fprintf(stderr, "# 504 after %llu ms\n", (unsigned long long)took);
  assert_true(took >= 450 && took < 5000);
  assert_int_equal(s->nreqs, 1); /* the request did reach the service */
  vt_teardown(&t);
}

/* The response timeout counts from the end of the request: a body that
 * takes longer than it to arrive (half of it, a pause of twice the
 * timeout, the rest) is still answered by the service, not cut off with a
 * 504 while the visitor is sending. */
static void test_slow_request_body(void **state) {
  (void)state;
  vt t;
  vt_srv_opts so = {.response_timeout_ms = 500};
  vt_client *k;
  vt_service *s = vt_simple(&t, &so, "patient", "patient-svc", &k);
  vt_visitor *v = vt_visitor_new(&t, t.http_port);
  vt_visitor_printf(v, "POST /upload HTTP/1.1\r\nHost: patient.localhost\r\n"
                       "Content-Length: 10\r\n\r\n12345");
  vt_visitor_sent(v, "POST");
  it_sleep(&t.w, 1000);
  if (v->nresp)
    fail_msg("answered %d while the request body was still being sent "
             "(the service had %d complete request(s))",
             v->resps[0].status, s->nreqs);
  vt_visitor_printf(v, "67890");
  VT_WAIT(&t, v->nresp == 1 || vt_visitor_done(v));
  check_reflect(v, 0, "patient-svc", "/upload");
  assert_non_null(strstr(v->resps[0].body, "body_len=10\n"));
  vt_teardown(&t);
}

/* 400: a head that is not HTTP, a header line without a colon, an
 * HTTP/1.1 request without Host, Content-Length with Transfer-Encoding,
 * two different Content-Lengths. None reaches the service. */
static void test_400(void **state) {
  (void)state;
  vt t;
  vt_client *k;
  vt_service *s = vt_simple(&t, NULL, "strict", "strict-svc", &k);
  static const char *const bad[] = {
      "\x01\x02 garbage \x7f\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: strict.localhost\r\nNo colon here\r\n\r\n",
      "GET / HTTP/1.1\r\nUser-Agent: test\r\n\r\n",
      /* framings two parsers could read differently */
      "POST / HTTP/1.1\r\nHost: strict.localhost\r\nContent-Length: 3\r\n"
      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: strict.localhost\r\nContent-Length: 3\r\n"
      "Content-Length: 4\r\n\r\nabcd",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    vt_visitor *v = vt_visitor_new(&t, t.http_port);
    vt_visitor_write(v, bad[i], strlen(bad[i]));
    vt_visitor_sent(v, "GET");
    VT_WAIT(&t, vt_visitor_done(v));
    check_server_page(v, 400);
  }
  assert_int_equal(s->nreqs, 0);
  vt_visitor *v = vt_fetch(&t, "GET", "strict.localhost", "/ok", NULL, NULL);
  check_reflect(v, 0, "strict-svc", "/ok");
  vt_teardown(&t);
}

/* 431: a head over the configured maximum (one just under it passes), and
 * a head with more header fields than the server takes. */
static void test_431(void **state) {
  (void)state;
  vt t;
  vt_srv_opts so = {.max_head = 2048};
  vt_client *k;
  vt_service *s = vt_simple(&t, &so, "small", "small-svc", &k);
  char pad[4001];
  memset(pad, 'a', sizeof pad - 1);
  pad[sizeof pad - 1] = '\0';
  char extra[4100];
  snprintf(extra, sizeof extra, "X-Big: %s\r\n", pad);
  vt_visitor *v = vt_fetch(&t, "GET", "small.localhost", "/big", extra, NULL);
  check_server_page(v, 431);
  assert_int_equal(s->nreqs, 0);
  pad[1500] = '\0';
  snprintf(extra, sizeof extra, "X-Big: %s\r\n", pad);
  v = vt_fetch(&t, "GET", "small.localhost", "/fits", extra, NULL);
  check_reflect(v, 0, "small-svc", "/fits");
  assert_int_equal(strlen(vt_hdr_get(vt_service_req(s, 0), "X-Big")), 1500);
  /* Too many header fields, within the byte limit. */
  char many[2048];
  size_t n = 0;
  for (int i = 0; i < 150; i++)
    n += (size_t)snprintf(many + n, sizeof many - n, "X%d: 1\r\n", i);
  assert_true(n < 1500);
  v = vt_fetch(&t, "GET", "small.localhost", "/many", many, NULL);
  check_server_page(v, 431);
  assert_int_equal(s->nreqs, 1);
  vt_teardown(&t);
}

/* Basic auth: no credentials and wrong ones get 401 with a Basic
 * challenge, and never reach the service; the right ones get through. */
static void test_basic_auth(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k = vt_client_start(&t);
  vt_service *s = vt_service_new(&t, "private");
  vt_service_listen(s);
  vt_proxy_opts o = {.name = "private", .local_port = s->port,
                     .subdomain = "private", .user = "alice",
                     .pass = "s3cret"};
  vt_wait_registered(&t, vt_proxy_add(&t, k, &o));
  static const char *const wrong[] = {
      NULL,
      "Authorization: Basic YWxpY2U6d3Jvbmc=\r\n", /* alice:wrong */
      "Authorization: Bearer YWxpY2U6czNjcmV0\r\n",
  };
  for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
    vt_visitor *v = vt_fetch(&t, "GET", "private.localhost", "/secret",
                             wrong[i], NULL);
    check_server_page(v, 401);
    const char *ch = vt_hdr_get(&v->resps[0], "WWW-Authenticate");
    if (!ch || strncasecmp(ch, "Basic", 5) != 0)
      fail_msg("401 without a Basic challenge: %s", ch ? ch : "(none)");
  }
  assert_int_equal(s->nreqs, 0);
  vt_visitor *v = vt_fetch(&t, "GET", "private.localhost", "/secret",
                           "Authorization: Basic YWxpY2U6czNjcmV0\r\n", NULL);
  check_reflect(v, 0, "private", "/secret");
  assert_int_equal(s->nreqs, 1);
  /* Each request of a kept-alive connection is checked on its own. */
  v = vt_visitor_new(&t, t.http_port);
  vt_visitor_request(v, "GET", "private.localhost", "/again",
                     "Authorization: Basic YWxpY2U6czNjcmV0\r\n", NULL);
  VT_WAIT(&t, v->nresp == 1 || vt_visitor_done(v));
  check_reflect(v, 0, "private", "/again");
  vt_visitor_request(v, "GET", "private.localhost", "/sneaky", NULL, NULL);
  VT_WAIT(&t, vt_visitor_done(v));
  assert_int_equal(v->nresp, 2);
  assert_int_equal(v->resps[1].status, 401);
  assert_int_equal(s->nreqs, 2);
  vt_teardown(&t);
}

/* The X-Forwarded-* headers the service sees: For appended to the
 * visitor's chain, Proto "http" whatever the visitor claimed, Host the
 * authority the visitor asked for; a proxy's Host rewrite and extra header
 * replace the visitor's. */
static void test_forwarded_headers(void **state) {
  (void)state;
  vt t;
  vt_init(&t);
  vt_server_start(&t, NULL);
  vt_client *k = vt_client_start(&t);
  vt_service *sf = vt_service_new(&t, "fwd-svc");
  vt_service *sr = vt_service_new(&t, "rw-svc");
  vt_service_listen(sf);
  vt_service_listen(sr);
  vt_proxy_opts of = {.name = "fwd", .local_port = sf->port,
                      .subdomain = "fwd"};
  vt_proxy_opts orw = {.name = "rw", .local_port = sr->port,
                       .subdomain = "rw", .host_rewrite = "backend.internal",
                       .hdr_name = "X-Extra", .hdr_value = "from-proxy"};
  vt_wait_registered(&t, vt_proxy_add(&t, k, &of));
  vt_wait_registered(&t, vt_proxy_add(&t, k, &orw));
  char hf[64], hr[64];
  vt_host(&t, "fwd", hf, sizeof hf);
  vt_host(&t, "rw", hr, sizeof hr);

  vt_visitor *v = vt_fetch(&t, "GET", hf, "/f",
                           "X-Forwarded-For: 203.0.113.7, 198.51.100.2\r\n"
                           "X-Forwarded-Proto: https\r\n"
                           "X-Forwarded-Host: evil.example\r\n"
                           "X-Extra: from-visitor\r\n",
                           NULL);
  check_reflect(v, 0, "fwd-svc", "/f");
  const vt_msg *r = vt_service_req(sf, 0);
  assert_int_equal(vt_hdr_count(r, "X-Forwarded-For"), 1);
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-For"),
                      "203.0.113.7, 198.51.100.2, 127.0.0.1");
  assert_int_equal(vt_hdr_count(r, "X-Forwarded-Proto"), 1);
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-Proto"), "http");
  assert_int_equal(vt_hdr_count(r, "X-Forwarded-Host"), 1);
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-Host"), hf);
  assert_int_equal(vt_hdr_count(r, "Host"), 1);
  assert_string_equal(vt_hdr_get(r, "Host"), hf);
  assert_string_equal(vt_hdr_get(r, "X-Extra"), "from-visitor");

  /* Several X-Forwarded-For fields merge into one list. */
  v = vt_fetch(&t, "GET", hf, "/f2",
               "X-Forwarded-For: 203.0.113.7\r\n"
               "X-Forwarded-For: 198.51.100.2, 192.0.2.1\r\n",
               NULL);
  check_reflect(v, 0, "fwd-svc", "/f2");
  r = vt_service_req(sf, 1);
  assert_int_equal(vt_hdr_count(r, "X-Forwarded-For"), 1);
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-For"),
                      "203.0.113.7, 198.51.100.2, 192.0.2.1, 127.0.0.1");
  /* An absolute target reaches the service in origin form. */
  v = vt_visitor_new(&t, t.http_port);
  vt_visitor_printf(v, "GET http://%s/abs?q=1 HTTP/1.1\r\nHost: %s\r\n"
                       "Connection: close\r\n\r\n", hf, hf);
  vt_visitor_sent(v, "GET");
  VT_WAIT(&t, vt_visitor_done(v));
  check_reflect(v, 0, "fwd-svc", "/abs?q=1");
  r = vt_service_req(sf, 2);
  assert_int_equal(vt_hdr_count(r, "Host"), 1);
  assert_string_equal(vt_hdr_get(r, "Host"), hf);
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-Host"), hf);

  /* Without a chain of its own, the visitor's address alone. */
  v = vt_fetch(&t, "GET", hr, "/r", "X-Extra: from-visitor\r\n", NULL);
  check_reflect(v, 0, "rw-svc", "/r");
  r = vt_service_req(sr, 0);
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-For"), "127.0.0.1");
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-Proto"), "http");
  assert_string_equal(vt_hdr_get(r, "X-Forwarded-Host"), hr);
  assert_int_equal(vt_hdr_count(r, "Host"), 1);
  assert_string_equal(vt_hdr_get(r, "Host"), "backend.internal");
  assert_int_equal(vt_hdr_count(r, "X-Extra"), 1);
  assert_string_equal(vt_hdr_get(r, "X-Extra"), "from-proxy");
  /* The header is set on requests without one too. */
  v = vt_fetch(&t, "GET", hr, "/r2", NULL, NULL);
  check_reflect(v, 0, "rw-svc", "/r2");
  r = vt_service_req(sr, 1);
  assert_string_equal(vt_hdr_get(r, "X-Extra"), "from-proxy");
  assert_string_equal(vt_hdr_get(r, "Host"), "backend.internal");
  vt_teardown(&t);
}

/* A visitor sending its head one byte every 200 ms is cut off at the head
 * timeout (1 s) and told 408, while other visitors are served meanwhile
 * (one sending its head one byte every 5 ms); a connection that sends
 * nothing at all is simply closed at the same timeout. */
static void test_slow_header(void **state) {
  (void)state;
  vt t;
  vt_srv_opts so = {.head_timeout_ms = 1000};
  vt_client *k;
  vt_service *s = vt_simple(&t, &so, "slow", "slow-svc", &k);
  vt_visitor *idle = vt_visitor_new(&t, t.http_port);
  vt_visitor *slow = vt_visitor_new(&t, t.http_port);
  /* Byte by byte but in time: served. */
  vt_visitor *steady = vt_visitor_new(&t, t.http_port);
  vt_visitor_trickle(steady,
                     "GET /steady HTTP/1.1\r\nHost: slow.localhost\r\n"
                     "Connection: close\r\n\r\n",
                     5);
  vt_visitor_sent(steady, "GET");
  vt_visitor_trickle(slow,
                     "GET /slowly HTTP/1.1\r\nHost: slow.localhost\r\n"
                     "User-Agent: a-very-slow-client\r\n\r\n",
                     200);
  vt_visitor_sent(slow, "GET");
  it_sleep(&t.w, 300);
  vt_visitor *fast = vt_fetch(&t, "GET", "slow.localhost", "/quick", NULL,
                              NULL);
  check_reflect(fast, 0, "slow-svc", "/quick");
  VT_WAIT(&t, vt_visitor_done(steady));
  check_reflect(steady, 0, "slow-svc", "/steady");
  assert_false(vt_visitor_done(slow));
  assert_false(vt_visitor_done(idle));
  VT_WAIT(&t, vt_visitor_done(slow) && vt_visitor_done(idle));
  uint64_t took = slow->rx_end_ms - slow->opened_ms;
  fprintf(stderr, "# slow visitor cut off after %llu ms, %zu of %zu bytes "
          "sent, %llu bytes received; idle one after %llu ms\n",
          (unsigned long long)took, slow->trickle_pos, slow->trickle_len,
          (unsigned long long)slow->rx_total,
          (unsigned long long)(idle->rx_end_ms - idle->opened_ms));
  assert_true(took >= 900 && took < 4000);
  assert_true(slow->trickle_pos < slow->trickle_len);
  if (slow->nresp != 1)
    fail_msg("the visitor that sent part of a head got %llu bytes and no "
             "408 response before the close",
             (unsigned long long)slow->rx_total);
  assert_int_equal(slow->resps[0].status, 408);
  took = idle->rx_end_ms - idle->opened_ms;
  assert_true(took >= 900 && took < 4000);
  assert_int_equal(idle->rx_total, 0);
  assert_int_equal(s->nreqs, 2);
  vt_teardown(&t);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_clients),
      cmocka_unit_test(test_random_subdomain),
      cmocka_unit_test(test_custom_and_wildcard),
      cmocka_unit_test(test_name_taken),
      cmocka_unit_test(test_keepalive_routing),
      cmocka_unit_test(test_pipelined),
      cmocka_unit_test(test_post_100mib),
      cmocka_unit_test(test_download_100mib),
      cmocka_unit_test(test_chunked),
      cmocka_unit_test(test_head_then_get),
      cmocka_unit_test(test_websocket),
      cmocka_unit_test(test_in_process),
      cmocka_unit_test(test_404),
      cmocka_unit_test(test_502),
      cmocka_unit_test(test_504),
      cmocka_unit_test(test_slow_request_body),
      cmocka_unit_test(test_400),
      cmocka_unit_test(test_431),
      cmocka_unit_test(test_basic_auth),
      cmocka_unit_test(test_forwarded_headers),
      cmocka_unit_test(test_slow_header),
  };
  return vt_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
