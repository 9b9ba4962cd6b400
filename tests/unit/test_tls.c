/* The TLS engine and certificate generation, in memory: two engines wired
 * back to back, the test moving the bytes. Certificates are generated at run
 * time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <mbedtls/sha256.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

#include "certgen.h"
#include "tls.h"

/* ------------------------------------------------------------- helpers */

/* Allocator that fails the call numbered `fail_after` (0 = the next one),
 * tracks live bytes through a size header; cmocka reports any block left
 * allocated at the end of a test. */
typedef union counted_hdr {
  size_t size;
  max_align_t align;
} counted_hdr;
static long fail_after = -1;
static size_t allocs, live_bytes;
static void *c_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (fail_after >= 0 && fail_after-- == 0)
    return NULL;
  allocs++;
  counted_hdr *h = p ? (counted_hdr *)p - 1 : NULL;
  size_t old = h ? h->size : 0;
  h = h ? test_realloc(h, sizeof *h + n) : test_malloc(sizeof *h + n);
  h->size = n;
  live_bytes = live_bytes - old + n;
  return h + 1;
}
static void *c_malloc(size_t n, void *ud) { return c_realloc(NULL, n, ud); }
static void c_free(void *p, void *ud) {
  (void)ud;
  if (!p)
    return;
  counted_hdr *h = (counted_hdr *)p - 1;
  live_bytes -= h->size;
  test_free(h);
}
static const tunnel__mem cmem = {c_malloc, c_realloc, c_free, NULL};

static int setup(void **state) {
  (void)state;
  fail_after = -1;
  allocs = live_bytes = 0;
  return 0;
}
static int teardown(void **state) {
  (void)state;
  assert_int_equal(live_bytes, 0);
  return 0;
}

/* Deterministic entropy: the tests need no real randomness. */
static int entropy(void *ud, uint8_t *out, size_t n) {
  uint64_t *s = ud;
  for (size_t i = 0; i < n; i++) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    out[i] = (uint8_t)(*s >> 24);
  }
  return 0;
}
static uint64_t ent_state = 0x9e3779b97f4a7c15ull;
static int failing_entropy(void *ud, uint8_t *out, size_t n) {
  (void)ud;
  (void)out;
  (void)n;
  return TUNNEL_EIO;
}

/* Certificates made once for every test. */
typedef struct pem_pair {
  char *cert;
  char *key;
} pem_pair;
static pem_pair ca1, ca2, srv, srv_expired, cli1, cli2;
static uint64_t now_s;

static void gen(pem_pair *out, const char *cn, int is_ca, const pem_pair *issuer,
                uint64_t from, uint64_t to, int sans) {
  static const char *const dns[] = {"server.test", "alt.server.test"};
  tunnel__certgen_ip ips[2] = {{{127, 0, 0, 1}, 4}, {{0}, 16}};
  ips[1].addr[15] = 1; /* ::1 */
  char nb[15], na[15];
  tunnel__certgen_time(from, nb);
  tunnel__certgen_time(to, na);
  tunnel__certgen_params p = {0};
  p.entropy = entropy;
  p.entropy_ud = &ent_state;
  p.cn = cn;
  p.is_ca = is_ca;
  p.not_before = nb;
  p.not_after = na;
  if (sans) {
    p.dns = dns;
    p.n_dns = 2;
    p.ips = ips;
    p.n_ips = 2;
  }
  if (issuer) {
    p.issuer_cert_pem = issuer->cert;
    p.issuer_key_pem = issuer->key;
  }
  assert_int_equal(tunnel__certgen(&p, &out->cert, &out->key), 0);
}

static void free_pair(pem_pair *p) {
  free(p->cert);
  if (p->key)
    tunnel__wipe(p->key, strlen(p->key) + 1);
  free(p->key);
}

static int group_setup(void **state) {
  (void)state;
  now_s = (uint64_t)time(NULL);
  uint64_t a = now_s - 86400, b = now_s + 86400 * 365;
  gen(&ca1, "Test CA one", 1, NULL, a, b, 0);
  gen(&ca2, "Test CA, two", 1, NULL, a, b, 0);
  gen(&srv, "server.test", 0, &ca1, a, b, 1);
  gen(&srv_expired, "server.test", 0, &ca1, a - 86400 * 30, a, 1);
  gen(&cli1, "client one", 0, &ca1, a, b, 0);
  gen(&cli2, "client two", 0, &ca2, a, b, 0);
  return 0;
}
static int group_teardown(void **state) {
  (void)state;
  free_pair(&ca1);
  free_pair(&ca2);
  free_pair(&srv);
  free_pair(&srv_expired);
  free_pair(&cli1);
  free_pair(&cli2);
  return 0;
}

static tunnel__blob blob(const char *s) {
  tunnel__blob b = {(uint8_t *)(uintptr_t)s, s ? strlen(s) + 1 : 0};
  if (!s)
    b.data = NULL;
  return b;
}

typedef struct side_opts {
  const char *ca;
  const pem_pair *own;
  int pin_of_srv;    /* client: pin the server certificate */
  int pin_wrong;     /* client: pin something else */
  int insecure;
  int no_tickets;
} side_opts;

static tunnel__tls_conf *conf_make(int is_server, const side_opts *o,
                                   const tunnel__tls_conf *pin_src) {
  tunnel__tls_settings s;
  memset(&s, 0, sizeof s);
  s.ca = blob(o->ca);
  if (o->own) {
    s.cert = blob(o->own->cert);
    s.key = blob(o->own->key);
  }
  s.insecure = o->insecure;
  if (o->pin_of_srv || o->pin_wrong) {
    s.has_pin = 1;
    if (pin_src)
      assert_int_equal(tunnel__tls_conf_fingerprint(pin_src, s.pin), 0);
    if (o->pin_wrong)
      s.pin[7] ^= 1;
  }
  tunnel__tls_conf_params p = {0};
  p.is_server = is_server;
  p.mem = &cmem;
  p.entropy = entropy;
  p.entropy_ud = &ent_state;
  p.settings = &s;
  p.now_s = now_s;
  p.no_tickets = o->no_tickets;
  tunnel__tls_conf *c = NULL;
  char err[200];
  int rc = tunnel__tls_conf_new(&c, &p, err, sizeof err);
  if (rc)
    fail_msg("conf: %d %s", rc, err);
  return c;
}

/* Moves everything `from` has queued into `to`, in pieces of `step` bytes
 * (0: as queued). Returns the bytes moved; a refused feed stops it. */
static size_t xfer(tunnel__tls *from, tunnel__tls *to, size_t step, int *feed_rc) {
  size_t moved = 0;
  while (tunnel__tls_out_pending(from)) {
    tunnel__iov v;
    assert_int_equal(tunnel__tls_out_iov(from, &v, 1), 1);
    size_t k = step && step < v.len ? step : v.len;
    int rc = tunnel__tls_feed(to, v.base, k);
    if (feed_rc)
      *feed_rc = rc;
    tunnel__tls_out_consume(from, k);
    moved += k;
    if (rc)
      break;
  }
  return moved;
}

typedef struct pair {
  tunnel__tls *c, *s;
  int rc_c, rc_s;
  int feed_rc; /* the first refused feed */
} pair;

static void handshake(pair *x, size_t step) {
  x->rc_c = x->rc_s = TUNNEL_EAGAIN;
  x->feed_rc = 0;
  for (int i = 0; i < 10000; i++) {
    int frc = 0;
    if (x->rc_c == TUNNEL_EAGAIN)
      x->rc_c = tunnel__tls_handshake(x->c);
    size_t m = xfer(x->c, x->s, step, &frc);
    if (frc && !x->feed_rc)
      x->feed_rc = frc;
    if (x->rc_s == TUNNEL_EAGAIN)
      x->rc_s = tunnel__tls_handshake(x->s);
    m += xfer(x->s, x->c, step, &frc);
    if (frc && !x->feed_rc)
      x->feed_rc = frc;
    if (m == 0 && (x->rc_c != TUNNEL_EAGAIN || x->rc_s != TUNNEL_EAGAIN)) {
      /* One side is done or failed; let the other consume what it got. */
      if (x->rc_c == TUNNEL_EAGAIN)
        x->rc_c = tunnel__tls_handshake(x->c);
      if (x->rc_s == TUNNEL_EAGAIN)
        x->rc_s = tunnel__tls_handshake(x->s);
      if (!tunnel__tls_out_pending(x->c) && !tunnel__tls_out_pending(x->s))
        return;
    } else if (m == 0) {
      return;
    }
  }
}

static void pair_open(pair *x, tunnel__tls_conf *cc, tunnel__tls_conf *sc,
                      const char *name) {
  assert_int_equal(tunnel__tls_new(&x->c, cc, name), 0);
  assert_int_equal(tunnel__tls_new(&x->s, sc, NULL), 0);
}
static void pair_close(pair *x) {
  tunnel__tls_free(x->c);
  tunnel__tls_free(x->s);
}

/* Runs a whole handshake between fresh confs; returns the client's and
 * server's results and texts through x (freed here). */
static void one_shot(const side_opts *co, const side_opts *so, const char *name,
                     int *rc_c, int *rc_s, char *why_c, char *why_s) {
  tunnel__tls_conf *sc = conf_make(1, so, NULL);
  tunnel__tls_conf *cc = conf_make(0, co, sc);
  pair x;
  pair_open(&x, cc, sc, name);
  handshake(&x, 0);
  *rc_c = x.rc_c;
  *rc_s = x.rc_s;
  snprintf(why_c, 200, "%s", tunnel__tls_error_text(x.c));
  snprintf(why_s, 200, "%s", tunnel__tls_error_text(x.s));
  pair_close(&x);
  tunnel__tls_conf_free(cc);
  tunnel__tls_conf_free(sc);
}

static uint32_t fnv(uint32_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 16777619u;
  return h;
}

/* Sends `total` bytes each way at once and checks both arrive intact. */
static void exchange(pair *x, size_t total, size_t feed_step) {
  static uint8_t chunk[70000], rbuf[20000];
  uint32_t sent[2] = {2166136261u, 2166136261u};
  uint32_t got[2] = {2166136261u, 2166136261u};
  size_t wrote[2] = {0, 0}, read[2] = {0, 0};
  tunnel__tls *ep[2] = {x->c, x->s};
  uint32_t r = 7;
  while (read[0] < total || read[1] < total) {
    for (int d = 0; d < 2; d++) {
      if (wrote[d] < total) {
        size_t k = total - wrote[d] < sizeof chunk ? total - wrote[d] : sizeof chunk;
        k = k > 97 ? k - r % 97 : k; /* odd sizes */
        for (size_t i = 0; i < k; i++) {
          r = r * 1103515245u + 12345u;
          chunk[i] = (uint8_t)(r >> 16);
        }
        size_t taken = 0;
        assert_int_equal(tunnel__tls_write(ep[d], chunk, k, &taken), 0);
        assert_int_equal(taken, k);
        sent[d] = fnv(sent[d], chunk, k);
        wrote[d] += k;
      }
    }
    int frc = 0;
    xfer(x->c, x->s, feed_step, &frc);
    assert_int_equal(frc, 0);
    xfer(x->s, x->c, feed_step, &frc);
    assert_int_equal(frc, 0);
    for (int d = 0; d < 2; d++) {
      tunnel__tls *rd = ep[1 - d];
      for (;;) {
        size_t n = 0;
        assert_int_equal(tunnel__tls_read(rd, rbuf, sizeof rbuf, &n), 0);
        if (!n)
          break;
        got[d] = fnv(got[d], rbuf, n);
        read[d] += n;
      }
    }
  }
  assert_int_equal(read[0], total);
  assert_int_equal(read[1], total);
  assert_int_equal(sent[0], got[0]);
  assert_int_equal(sent[1], got[1]);
}

/* --------------------------------------------------------------- tests */

static void ca_verified_and_data(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  tunnel__tls_conf *cc = conf_make(0, &co, sc);
  pair x;
  pair_open(&x, cc, sc, "server.test");
  assert_int_equal(tunnel__tls_is_established(x.c), 0);
  assert_string_equal(tunnel__tls_ciphersuite(x.c), "");
  handshake(&x, 0);
  assert_int_equal(x.rc_c, 0);
  assert_int_equal(x.rc_s, 0);
  assert_int_equal(tunnel__tls_is_established(x.c), 1);
  assert_int_equal(tunnel__tls_is_established(x.s), 1);
  assert_int_equal(tunnel__tls_resumed(x.c), 0);
  assert_int_equal(tunnel__tls_resumed(x.s), 0);
  assert_string_equal(tunnel__tls_ciphersuite(x.c),
                      "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256");
  assert_string_equal(tunnel__tls_error_text(x.c), "");
  exchange(&x, 1024 * 1024, 0);
  /* Nothing left: reading returns no bytes and no error. */
  size_t n = 1;
  uint8_t b[16];
  assert_int_equal(tunnel__tls_read(x.c, b, sizeof b, &n), 0);
  assert_int_equal(n, 0);
  pair_close(&x);
  tunnel__tls_conf_free(cc);
  tunnel__tls_conf_free(sc);
}

static void name_and_ip_checks(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  static const struct {
    const char *name;
    int rc;
  } cases[] = {
      {"alt.server.test", 0},        {"ALT.Server.Test", 0},
      {"other.test", TUNNEL_ECERTNAME}, {"127.0.0.1", 0},
      {"::1", 0},                    {"127.0.0.2", TUNNEL_ECERTNAME},
      {"::2", TUNNEL_ECERTNAME},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int rc_c, rc_s;
    char wc[200], ws[200];
    one_shot(&co, &so, cases[i].name, &rc_c, &rc_s, wc, ws);
    if (rc_c != cases[i].rc)
      fail_msg("%s: %d (%s)", cases[i].name, rc_c, wc);
    if (cases[i].rc) {
      assert_string_equal(wc, "certificate does not match the server name");
      assert_int_equal(rc_s, TUNNEL_ETLS); /* the client's alert */
      assert_non_null(strstr(ws, "peer sent alert: bad certificate"));
    } else {
      assert_int_equal(rc_s, 0);
    }
  }
}

static void untrusted(void **state) {
  (void)state;
  int rc_c, rc_s;
  char wc[200], ws[200];
  side_opts so = {.own = &srv}, co = {.ca = ca2.cert};
  one_shot(&co, &so, "server.test", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, TUNNEL_ECERTUNTRUSTED);
  assert_string_equal(wc, "certificate not trusted (unknown issuer)");
  assert_int_equal(rc_s, TUNNEL_ETLS);
  /* Wrong CA and wrong name: the chain is the graver fault. */
  one_shot(&co, &so, "other.test", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, TUNNEL_ECERTUNTRUSTED);
  /* Expired, from the right CA. */
  side_opts so2 = {.own = &srv_expired}, co2 = {.ca = ca1.cert};
  one_shot(&co2, &so2, "server.test", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, TUNNEL_ECERTUNTRUSTED);
  assert_string_equal(wc, "certificate not trusted (expired)");
  /* A self-signed server against a CA bundle. */
  side_opts so3 = {0};
  one_shot(&co2, &so3, "libtunnel", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, TUNNEL_ECERTUNTRUSTED);
}

static void pins_and_insecure(void **state) {
  (void)state;
  int rc_c, rc_s;
  char wc[200], ws[200];
  side_opts so = {0}; /* self-signed */
  side_opts pin_ok = {.pin_of_srv = 1}, pin_bad = {.pin_wrong = 1},
            insecure = {.insecure = 1};
  one_shot(&pin_ok, &so, "anything", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, 0);
  assert_int_equal(rc_s, 0);
  one_shot(&pin_ok, &so, NULL, &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, 0);
  one_shot(&pin_ok, &so, "10.1.2.3", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, 0);
  one_shot(&pin_bad, &so, "anything", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, TUNNEL_ECERTPIN);
  assert_string_equal(wc, "certificate does not match the pin");
  assert_int_equal(rc_s, TUNNEL_ETLS);
  one_shot(&insecure, &so, "anything", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, 0);
  assert_int_equal(rc_s, 0);
  /* The pin overrides a CA that would refuse the server. */
  side_opts so2 = {.own = &srv}, pin_ca = {.ca = ca2.cert, .pin_of_srv = 1};
  one_shot(&pin_ca, &so2, "wrong.name", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, 0);
}

static void client_certificates(void **state) {
  (void)state;
  int rc_c, rc_s;
  char wc[200], ws[200];
  side_opts so = {.own = &srv, .ca = ca1.cert};
  side_opts none = {.ca = ca1.cert}, good = {.ca = ca1.cert, .own = &cli1},
            wrong = {.ca = ca1.cert, .own = &cli2};
  one_shot(&good, &so, "server.test", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, 0);
  assert_int_equal(rc_s, 0);
  one_shot(&none, &so, "server.test", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_s, TUNNEL_ECERTUNTRUSTED);
  assert_string_equal(ws, "client certificate required");
  assert_int_equal(rc_c, TUNNEL_ETLS);
  assert_non_null(strstr(wc, "peer sent alert"));
  one_shot(&wrong, &so, "server.test", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_s, TUNNEL_ECERTUNTRUSTED);
  assert_string_equal(ws, "client certificate not trusted (unknown issuer)");
  assert_int_equal(rc_c, TUNNEL_ETLS);
  assert_non_null(strstr(wc, "peer sent alert"));
  /* The same client certificate against its own CA (whose name needs
   * escaping when certificates are issued under it). */
  side_opts so2 = {.own = &srv, .ca = ca2.cert};
  one_shot(&wrong, &so2, "server.test", &rc_c, &rc_s, wc, ws);
  assert_int_equal(rc_c, 0);
  assert_int_equal(rc_s, 0);
}

/* Two handshakes on the same confs; returns the second's resumed flags. */
static void resume_run(tunnel__tls_conf *cc, tunnel__tls_conf *sc, int save,
                       int *res_c, int *res_s) {
  pair x;
  pair_open(&x, cc, sc, "server.test");
  handshake(&x, 0);
  assert_int_equal(x.rc_c, 0);
  assert_int_equal(x.rc_s, 0);
  *res_c = tunnel__tls_resumed(x.c);
  *res_s = tunnel__tls_resumed(x.s);
  if (save) {
    assert_int_equal(tunnel__tls_save_session(x.c), 0);
    assert_int_equal(tunnel__tls_save_session(x.s), TUNNEL_ESTATE);
  }
  exchange(&x, 5000, 0);
  pair_close(&x);
}

static void resumption(void **state) {
  (void)state;
  for (int no_tickets = 0; no_tickets < 2; no_tickets++) {
    side_opts so = {.own = &srv, .no_tickets = no_tickets},
              co = {.ca = ca1.cert, .no_tickets = no_tickets};
    tunnel__tls_conf *sc = conf_make(1, &so, NULL);
    tunnel__tls_conf *cc = conf_make(0, &co, sc);
    int rc_c, rc_s;
    resume_run(cc, sc, 0, &rc_c, &rc_s);
    assert_int_equal(rc_c + rc_s, 0);
    resume_run(cc, sc, 1, &rc_c, &rc_s); /* nothing saved yet: full */
    assert_int_equal(rc_c + rc_s, 0);
    resume_run(cc, sc, 0, &rc_c, &rc_s);
    assert_int_equal(rc_c, 1);
    assert_int_equal(rc_s, 1);
    resume_run(cc, sc, 1, &rc_c, &rc_s); /* still the saved session */
    assert_int_equal(rc_c + rc_s, 2);
    /* Another server does not know the session: a full handshake. */
    tunnel__tls_conf *sc2 = conf_make(1, &so, NULL);
    resume_run(cc, sc2, 0, &rc_c, &rc_s);
    assert_int_equal(rc_c + rc_s, 0);
    tunnel__tls_conf_free(sc2);
    tunnel__tls_conf_free(cc);
    tunnel__tls_conf_free(sc);
  }
}

static void ticket_rotation(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  tunnel__tls_conf *cc = conf_make(0, &co, sc);
  int rc_c, rc_s;
  resume_run(cc, sc, 1, &rc_c, &rc_s);
  assert_int_equal(tunnel__tls_conf_tick(sc, now_s + 10), 0);
  assert_int_equal(tunnel__tls_conf_tick(cc, now_s + 99999), 0);
  assert_int_equal(
      tunnel__tls_conf_tick(sc, now_s + TUNNEL__TLS_TICKET_LIFETIME_S), 1);
  /* A ticket under the previous keys still resumes. */
  resume_run(cc, sc, 0, &rc_c, &rc_s);
  assert_int_equal(rc_c + rc_s, 2);
  assert_int_equal(
      tunnel__tls_conf_tick(sc, now_s + 2 * TUNNEL__TLS_TICKET_LIFETIME_S), 1);
  resume_run(cc, sc, 1, &rc_c, &rc_s);
  assert_int_equal(rc_c + rc_s, 0);
  /* The fresh ticket is under the current keys. */
  resume_run(cc, sc, 0, &rc_c, &rc_s);
  assert_int_equal(rc_c + rc_s, 2);
  tunnel__tls_conf_free(cc);
  tunnel__tls_conf_free(sc);
}

static void garbage(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  tunnel__tls_conf *cc = conf_make(0, &co, sc);
#define J(s) {s, sizeof s - 1}
  static const struct {
    const char *d;
    size_t n;
  } junk[] = {
      J("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
      J("\x16\x03\x01\x00\x05hello"),
      J("\x16\x03\x03\xff\xff"), /* oversized record: refused at once */
      J("\x17\x03\x03\x00\x10 0123456789abcde"), /* data first */
      J("\x15\x03\x03\x00\x02\x02\x28"),      /* a fatal alert */
      J("\x16\x03\x03\x00\x04\x01\x00\x00\x00"), /* empty ClientHello */
  };
#undef J
  for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
    tunnel__tls *s;
    assert_int_equal(tunnel__tls_new(&s, sc, NULL), 0);
    assert_int_equal(tunnel__tls_feed(s, (const uint8_t *)junk[i].d, junk[i].n),
                     0);
    int rc = tunnel__tls_handshake(s);
    if (rc != TUNNEL_ETLS)
      fail_msg("junk %zu: %d", i, rc);
    assert_true(tunnel__tls_error_text(s)[0] != '\0');
    /* Sticky. */
    assert_int_equal(tunnel__tls_handshake(s), TUNNEL_ETLS);
    assert_int_equal(tunnel__tls_feed(s, (const uint8_t *)"x", 1), TUNNEL_ETLS);
    tunnel__tls_free(s);
  }
  /* Within the handshake: the server's flight with a flipped byte. Every
   * position either fails cleanly or (for bytes nobody checks until
   * later) leaves the handshake pending or done. */
  for (size_t pos = 0; pos < 2000; pos += 37) {
    pair x;
    pair_open(&x, cc, sc, "server.test");
    assert_int_equal(tunnel__tls_handshake(x.c), TUNNEL_EAGAIN);
    xfer(x.c, x.s, 0, NULL);
    assert_int_equal(tunnel__tls_handshake(x.s), TUNNEL_EAGAIN);
    size_t n = tunnel__tls_out_pending(x.s);
    uint8_t *flight = malloc(n);
    size_t off = 0;
    tunnel__iov v[8];
    size_t k = tunnel__tls_out_iov(x.s, v, 8);
    for (size_t i = 0; i < k; i++) {
      memcpy(flight + off, v[i].base, v[i].len);
      off += v[i].len;
    }
    tunnel__tls_out_consume(x.s, n);
    if (pos < n)
      flight[pos] ^= 0x5a;
    assert_int_equal(tunnel__tls_feed(x.c, flight, n), 0);
    int rc = tunnel__tls_handshake(x.c);
    assert_true(rc == TUNNEL_ETLS || rc == TUNNEL_EAGAIN ||
                rc == TUNNEL_ECERTUNTRUSTED || rc == TUNNEL_ECERTNAME);
    if (pos < n && rc == TUNNEL_EAGAIN) {
      /* Undetected so far: the Finished exchange must catch it. */
      xfer(x.c, x.s, 0, NULL);
      int rs = tunnel__tls_handshake(x.s);
      assert_true(rs == TUNNEL_ETLS || rs == TUNNEL_EAGAIN);
    }
    free(flight);
    pair_close(&x);
  }
  tunnel__tls_conf_free(cc);
  tunnel__tls_conf_free(sc);
}

static void tampered_record(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  tunnel__tls_conf *cc = conf_make(0, &co, sc);
  pair x;
  pair_open(&x, cc, sc, "server.test");
  handshake(&x, 0);
  assert_int_equal(x.rc_c, 0);
  size_t taken;
  assert_int_equal(tunnel__tls_write(x.c, (const uint8_t *)"hello", 5, &taken), 0);
  tunnel__iov v;
  tunnel__tls_out_iov(x.c, &v, 1);
  uint8_t rec[64];
  assert_true(v.len <= sizeof rec);
  memcpy(rec, v.base, v.len);
  rec[v.len - 1] ^= 1; /* the tag */
  assert_int_equal(tunnel__tls_feed(x.s, rec, v.len), 0);
  size_t n;
  uint8_t buf[64];
  assert_int_equal(tunnel__tls_read(x.s, buf, sizeof buf, &n), TUNNEL_ETLS);
  assert_int_equal(n, 0);
  assert_non_null(strstr(tunnel__tls_error_text(x.s), "TLS failed"));
  assert_int_equal(tunnel__tls_write(x.s, buf, 1, &taken), TUNNEL_ETLS);
  pair_close(&x);
  tunnel__tls_conf_free(cc);
  tunnel__tls_conf_free(sc);
}

static void input_bound(void **state) {
  (void)state;
  side_opts so = {.own = &srv};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  tunnel__tls *s;
  assert_int_equal(tunnel__tls_new(&s, sc, NULL), 0);
  static uint8_t junk[32768];
  memset(junk, 0x16, sizeof junk);
  size_t fed = 0;
  int rc = 0;
  while ((rc = tunnel__tls_feed(s, junk, sizeof junk)) == 0)
    fed += sizeof junk;
  assert_int_equal(rc, TUNNEL_ELIMIT);
  assert_true(fed <= TUNNEL__TLS_HANDSHAKE_INPUT_MAX);
  assert_true(fed + sizeof junk > TUNNEL__TLS_HANDSHAKE_INPUT_MAX);
  assert_int_equal(tunnel__tls_handshake(s), TUNNEL_ELIMIT);
  tunnel__tls_free(s);
  /* One huge feed is refused too. */
  assert_int_equal(tunnel__tls_new(&s, sc, NULL), 0);
  uint8_t *big = calloc(1, TUNNEL__TLS_HANDSHAKE_INPUT_MAX + 1);
  assert_int_equal(
      tunnel__tls_feed(s, big, TUNNEL__TLS_HANDSHAKE_INPUT_MAX + 1),
      TUNNEL_ELIMIT);
  free(big);
  tunnel__tls_free(s);
  tunnel__tls_conf_free(sc);
}

static void close_notify(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  tunnel__tls_conf *cc = conf_make(0, &co, sc);
  pair x;
  pair_open(&x, cc, sc, "server.test");
  assert_int_equal(tunnel__tls_close_notify(x.c), TUNNEL_ESTATE);
  handshake(&x, 0);
  size_t taken, n;
  uint8_t buf[64];
  assert_int_equal(tunnel__tls_write(x.c, (const uint8_t *)"bye", 3, &taken), 0);
  assert_int_equal(tunnel__tls_close_notify(x.c), 0);
  assert_int_equal(tunnel__tls_close_notify(x.c), 0);
  assert_int_equal(tunnel__tls_write(x.c, (const uint8_t *)"x", 1, &taken),
                   TUNNEL_ECLOSED);
  xfer(x.c, x.s, 0, NULL);
  assert_int_equal(tunnel__tls_read(x.s, buf, sizeof buf, &n), 0);
  assert_int_equal(n, 3);
  assert_memory_equal(buf, "bye", 3);
  assert_int_equal(tunnel__tls_read(x.s, buf, sizeof buf, &n), TUNNEL_EEOF);
  assert_int_equal(tunnel__tls_read(x.s, buf, sizeof buf, &n), TUNNEL_EEOF);
  /* The server can still answer, then close its side. */
  assert_int_equal(tunnel__tls_write(x.s, (const uint8_t *)"ok", 2, &taken), 0);
  assert_int_equal(tunnel__tls_close_notify(x.s), 0);
  xfer(x.s, x.c, 0, NULL);
  assert_int_equal(tunnel__tls_read(x.c, buf, sizeof buf, &n), 0);
  assert_int_equal(n, 2);
  assert_int_equal(tunnel__tls_read(x.c, buf, sizeof buf, &n), TUNNEL_EEOF);
  pair_close(&x);
  tunnel__tls_conf_free(cc);
  tunnel__tls_conf_free(sc);
}

static void one_byte_feeds(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  tunnel__tls_conf *cc = conf_make(0, &co, sc);
  pair x;
  pair_open(&x, cc, sc, "server.test");
  handshake(&x, 1);
  assert_int_equal(x.rc_c, 0);
  assert_int_equal(x.rc_s, 0);
  exchange(&x, 40000, 1);
  pair_close(&x);
  /* Resumed, in 1-byte feeds too. */
  pair_open(&x, cc, sc, "server.test");
  handshake(&x, 3);
  assert_int_equal(tunnel__tls_save_session(x.c), 0);
  pair_close(&x);
  pair_open(&x, cc, sc, "server.test");
  handshake(&x, 1);
  assert_int_equal(x.rc_c, 0);
  assert_int_equal(tunnel__tls_resumed(x.c), 1);
  assert_int_equal(tunnel__tls_resumed(x.s), 1);
  exchange(&x, 3000, 1);
  pair_close(&x);
  tunnel__tls_conf_free(cc);
  tunnel__tls_conf_free(sc);
}

static void sniff(void **state) {
  (void)state;
  assert_int_equal(tunnel__tls_sniff(0x16), TUNNEL__SNIFF_TLS);
  assert_int_equal(tunnel__tls_sniff(0x17), TUNNEL__SNIFF_TLS_MARKER);
  for (int b = 0; b < 256; b++)
    if (b != 0x16 && b != 0x17)
      assert_int_equal(tunnel__tls_sniff((uint8_t)b), TUNNEL__SNIFF_PLAIN);
}

static void fingerprints(void **state) {
  (void)state;
  uint8_t fp[32];
  for (int i = 0; i < 32; i++)
    fp[i] = (uint8_t)(i * 8 + 7);
  char out[TUNNEL__TLS_FINGERPRINT_TEXT];
  tunnel__tls_fingerprint_format(fp, out, sizeof out);
  assert_string_equal(out, "07:0F:17:1F:27:2F:37:3F:47:4F:57:5F:67:6F:77:7F:"
                           "87:8F:97:9F:A7:AF:B7:BF:C7:CF:D7:DF:E7:EF:F7:FF");
  char small[6];
  tunnel__tls_fingerprint_format(fp, small, sizeof small);
  assert_string_equal(small, "07:0F");

  /* The conf's fingerprint is the SHA-256 of its certificate's DER. */
  side_opts so = {.own = &srv};
  tunnel__tls_conf *sc = conf_make(1, &so, NULL);
  assert_int_equal(tunnel__tls_conf_fingerprint(sc, fp), 0);
  mbedtls_x509_crt crt;
  mbedtls_x509_crt_init(&crt);
  assert_int_equal(mbedtls_x509_crt_parse(&crt, (const uint8_t *)srv.cert,
                                          strlen(srv.cert) + 1), 0);
  uint8_t d[32];
#if MBEDTLS_VERSION_MAJOR >= 3
  assert_int_equal(mbedtls_sha256(crt.raw.p, crt.raw.len, d, 0), 0);
#else
  assert_int_equal(mbedtls_sha256_ret(crt.raw.p, crt.raw.len, d, 0), 0);
#endif
  assert_memory_equal(fp, d, 32);
  mbedtls_x509_crt_free(&crt);
  tunnel__tls_conf_free(sc);
  side_opts co = {.insecure = 1};
  tunnel__tls_conf *cc = conf_make(0, &co, NULL);
  assert_int_equal(tunnel__tls_conf_fingerprint(cc, fp), TUNNEL_ENOTFOUND);
  tunnel__tls_conf_free(cc);
}

static int conf_rc(int is_server, const char *ca, const char *cert,
                   const char *key, const char *sys, char *err) {
  tunnel__tls_settings s;
  memset(&s, 0, sizeof s);
  s.ca = blob(ca);
  s.cert = blob(cert);
  s.key = blob(key);
  tunnel__tls_conf_params p = {0};
  p.is_server = is_server;
  p.mem = &cmem;
  p.entropy = entropy;
  p.entropy_ud = &ent_state;
  p.settings = &s;
  p.now_s = now_s;
  p.system_ca = (const uint8_t *)sys;
  p.system_ca_len = sys ? strlen(sys) + 1 : 0;
  tunnel__tls_conf *c = NULL;
  int rc = tunnel__tls_conf_new(&c, &p, err, 200);
  if (rc == 0) {
    assert_non_null(c);
    tunnel__tls_conf_free(c);
  } else {
    assert_null(c);
  }
  return rc;
}

static void conf_errors(void **state) {
  (void)state;
  char err[200];
  assert_int_equal(conf_rc(1, NULL, "junk", "junk", NULL, err), TUNNEL_ETLS);
  assert_non_null(strstr(err, "certificate unparsable"));
  assert_int_equal(conf_rc(1, NULL, srv.cert, "junk", NULL, err), TUNNEL_ETLS);
  assert_non_null(strstr(err, "key unparsable"));
  assert_int_equal(conf_rc(1, NULL, srv.cert, cli1.key, NULL, err),
                   TUNNEL_ETLS);
  assert_string_equal(err, "key does not match the certificate");
  assert_int_equal(conf_rc(1, NULL, srv.cert, NULL, NULL, err), TUNNEL_ETLS);
  assert_int_equal(conf_rc(1, "not a CA", srv.cert, srv.key, NULL, err),
                   TUNNEL_ETLS);
  assert_non_null(strstr(err, "CA unparsable"));
  assert_int_equal(conf_rc(0, NULL, NULL, NULL, NULL, err), TUNNEL_ETLS);
  assert_non_null(strstr(err, "no trust anchor"));
  assert_int_equal(conf_rc(0, NULL, NULL, NULL, "garbage only", err),
                   TUNNEL_ETLS);
  /* A system bundle with one good certificate among junk is usable. */
  size_t l = strlen(ca1.cert) + 64;
  char *bundle = malloc(l);
  snprintf(bundle, l, "%s\nstray text\n", ca1.cert);
  assert_int_equal(conf_rc(0, NULL, NULL, NULL, bundle, err), 0);
  /* An empty CA setting falls back to the bundle. */
  assert_int_equal(conf_rc(0, "", NULL, NULL, bundle, err), 0);
  assert_int_equal(conf_rc(0, "", NULL, NULL, NULL, err), TUNNEL_ETLS);
  free(bundle);
  assert_int_equal(conf_rc(0, ca1.cert, cli1.cert, cli1.key, NULL, err), 0);

  tunnel__tls_settings s;
  memset(&s, 0, sizeof s);
  tunnel__tls_conf_params p = {0};
  p.is_server = 1;
  p.mem = &cmem;
  p.entropy = failing_entropy;
  p.settings = &s;
  tunnel__tls_conf *c = NULL;
  assert_int_equal(tunnel__tls_conf_new(&c, &p, err, sizeof err),
                   TUNNEL_ECRYPTO);
  p.entropy = NULL;
  assert_int_equal(tunnel__tls_conf_new(&c, &p, NULL, 0), TUNNEL_EINVAL);

  /* A client verifying against a CA needs a name. */
  side_opts co = {.ca = ca1.cert};
  tunnel__tls_conf *cc = conf_make(0, &co, NULL);
  tunnel__tls *t = NULL;
  assert_int_equal(tunnel__tls_new(&t, cc, NULL), TUNNEL_EINVAL);
  assert_null(t);
  tunnel__tls_conf_free(cc);
}

static void certgen_checks(void **state) {
  (void)state;
  char out[15];
  tunnel__certgen_time(0, out);
  assert_string_equal(out, "19700101000000");
  tunnel__certgen_time(951782400u + 3661u, out); /* 2000-02-29 01:01:01 */
  assert_string_equal(out, "20000229010101");
  tunnel__certgen_time(4102444799u, out);
  assert_string_equal(out, "20991231235959");
  tunnel__certgen_time(UINT64_MAX / 2, out);
  assert_string_equal(out, "99991231235959");

  /* The generated certificate carries what was asked for. */
  mbedtls_x509_crt crt;
  mbedtls_x509_crt_init(&crt);
  assert_int_equal(mbedtls_x509_crt_parse(&crt, (const uint8_t *)srv.cert,
                                          strlen(srv.cert) + 1), 0);
  char dn[128];
  assert_true(mbedtls_x509_dn_gets(dn, sizeof dn, &crt.subject) > 0);
  assert_string_equal(dn, "CN=server.test");
  assert_true(mbedtls_x509_dn_gets(dn, sizeof dn, &crt.issuer) > 0);
  assert_string_equal(dn, "CN=Test CA one");
  assert_int_equal(crt.ca_istrue, 0);
  int names = 0;
  for (const mbedtls_x509_sequence *q = &crt.subject_alt_names; q; q = q->next)
    names++;
  assert_int_equal(names, 4);
  mbedtls_x509_crt_free(&crt);
  mbedtls_x509_crt_init(&crt);
  assert_int_equal(mbedtls_x509_crt_parse(&crt, (const uint8_t *)ca2.cert,
                                          strlen(ca2.cert) + 1), 0);
  assert_int_equal(crt.ca_istrue, 1);
  assert_true(mbedtls_x509_dn_gets(dn, sizeof dn, &crt.subject) > 0);
  assert_string_equal(dn, "CN=Test CA\\, two");
  mbedtls_x509_crt_free(&crt);

  /* Parameter errors. */
  char *cert = NULL, *key = NULL;
  tunnel__certgen_params p = {0};
  p.mem = &cmem;
  p.entropy = entropy;
  p.entropy_ud = &ent_state;
  p.cn = "x";
  p.not_before = "20200101000000";
  p.not_after = "2030010100000";
  assert_int_equal(tunnel__certgen(&p, &cert, &key), TUNNEL_EINVAL);
  p.not_after = "20300101000000";
  tunnel__certgen_ip bad = {{1, 2, 3}, 3};
  p.ips = &bad;
  p.n_ips = 1;
  assert_int_equal(tunnel__certgen(&p, &cert, &key), TUNNEL_EINVAL);
  p.n_ips = 0;
  p.issuer_cert_pem = ca1.cert;
  p.issuer_key_pem = ca2.key;
  assert_int_equal(tunnel__certgen(&p, &cert, &key), TUNNEL_ETLS);
  p.issuer_cert_pem = p.issuer_key_pem = NULL;
  p.entropy = failing_entropy;
  assert_int_equal(tunnel__certgen(&p, &cert, &key), TUNNEL_ECRYPTO);
  assert_null(cert);
  assert_null(key);
  p.entropy = entropy;
  assert_int_equal(tunnel__certgen(&p, &cert, &key), 0);
  tunnel__wipe(key, strlen(key) + 1);
  tunnel__free(&cmem, key);
  tunnel__free(&cmem, cert);
}

/* Every allocation of ours failing in turn, through conf creation and a
 * handshake with data: errors come back, nothing leaks (cmocka checks). */
static void out_of_memory(void **state) {
  (void)state;
  side_opts so = {.own = &srv}, co = {.ca = ca1.cert};
  int completed = 0;
  static const uint8_t b4[4] = {1, 2, 3, 4};
  long k = 0;
  for (; k < 400 && !completed; k++) {
    fail_after = k;
    tunnel__tls_settings s;
    memset(&s, 0, sizeof s);
    s.cert = blob(srv.cert);
    s.key = blob(srv.key);
    tunnel__tls_conf_params p = {0};
    p.is_server = 1;
    p.mem = &cmem;
    p.entropy = entropy;
    p.entropy_ud = &ent_state;
    p.settings = &s;
    p.now_s = now_s;
    tunnel__tls_conf *sc = NULL, *cc = NULL;
    if (tunnel__tls_conf_new(&sc, &p, NULL, 0) != 0)
      continue;
    (void)so;
    memset(&s, 0, sizeof s);
    s.ca = blob(co.ca);
    p.is_server = 0;
    if (tunnel__tls_conf_new(&cc, &p, NULL, 0) != 0) {
      tunnel__tls_conf_free(sc);
      continue;
    }
    pair x = {0};
    if (tunnel__tls_new(&x.c, cc, "server.test") == 0 &&
        tunnel__tls_new(&x.s, sc, NULL) == 0) {
      handshake(&x, 0);
      size_t taken;
      if (x.rc_c == 0 && x.rc_s == 0) {
        int wrc = tunnel__tls_write(x.c, (const uint8_t *)"ping", 4, &taken);
        if (wrc == 0) {
          int frc = 0;
          xfer(x.c, x.s, 0, &frc);
          uint8_t b[8];
          size_t n = 0;
          if (frc == 0 && tunnel__tls_read(x.s, b, sizeof b, &n) == 0 && n == 4)
            completed = fail_after >= 0; /* no failure injected */
        } else {
          assert_int_equal(wrc, TUNNEL_ENOMEM);
          assert_int_equal(tunnel__tls_write(x.c, b4, 1, &taken), TUNNEL_ENOMEM);
        }
      } else {
        /* The side that ran out reports it; the other waits or hears an
         * alert. */
        assert_true(x.rc_c == TUNNEL_ENOMEM || x.rc_s == TUNNEL_ENOMEM ||
                    x.feed_rc == TUNNEL_ENOMEM);
        assert_true(x.rc_c == TUNNEL_ENOMEM || x.rc_c == TUNNEL_ETLS ||
                    x.rc_c == TUNNEL_EAGAIN || x.rc_c == 0);
        assert_true(x.rc_s == TUNNEL_ENOMEM || x.rc_s == TUNNEL_ETLS ||
                    x.rc_s == TUNNEL_EAGAIN || x.rc_s == 0);
      }
    }
    pair_close(&x);
    tunnel__tls_conf_free(cc);
    tunnel__tls_conf_free(sc);
  }
  fail_after = -1;
  assert_true(completed);
  /* Confs, engines, queues: every one of them was made to fail once. */
  assert_true(k > 10);
  print_message("allocation failures injected: %ld\n", k - 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(ca_verified_and_data, setup, teardown),
      cmocka_unit_test_setup_teardown(name_and_ip_checks, setup, teardown),
      cmocka_unit_test_setup_teardown(untrusted, setup, teardown),
      cmocka_unit_test_setup_teardown(pins_and_insecure, setup, teardown),
      cmocka_unit_test_setup_teardown(client_certificates, setup, teardown),
      cmocka_unit_test_setup_teardown(resumption, setup, teardown),
      cmocka_unit_test_setup_teardown(ticket_rotation, setup, teardown),
      cmocka_unit_test_setup_teardown(garbage, setup, teardown),
      cmocka_unit_test_setup_teardown(tampered_record, setup, teardown),
      cmocka_unit_test_setup_teardown(input_bound, setup, teardown),
      cmocka_unit_test_setup_teardown(close_notify, setup, teardown),
      cmocka_unit_test_setup_teardown(one_byte_feeds, setup, teardown),
      cmocka_unit_test_setup_teardown(sniff, setup, teardown),
      cmocka_unit_test_setup_teardown(fingerprints, setup, teardown),
      cmocka_unit_test_setup_teardown(conf_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(certgen_checks, setup, teardown),
      cmocka_unit_test_setup_teardown(out_of_memory, setup, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
