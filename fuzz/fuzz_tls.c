/* Feeds arbitrary bytes to a server TLS engine as a client would send them,
 * before and during the handshake. Input: a selector byte (bit 0: the
 * server requires client certificates; bit 1: tickets off), two split
 * points, then the client's bytes, fed in three pieces with the handshake
 * run after each. Whatever happens, the engine must answer with a defined
 * result, keep errors sticky, and free cleanly. The first byte also goes
 * through tunnel__tls_sniff. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "certgen.h"
#include "tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      abort();                                                                 \
  } while (0)

/* Fixed entropy: runs are reproducible. */
static int entropy(void *ud, uint8_t *out, size_t n) {
  uint32_t *s = ud;
  for (size_t i = 0; i < n; i++) {
    *s = *s * 1664525u + 1013904223u;
    out[i] = (uint8_t)(*s >> 24);
  }
  return 0;
}

static tunnel__tls_conf *confs[4];

/* A self-signed server; with `client_ca`, one that requires client
 * certificates under a CA made here. */
static tunnel__tls_conf *make_conf(int client_ca, int no_tickets) {
  static uint32_t seed = 1;
  char *cert = NULL, *key = NULL;
  tunnel__tls_settings s;
  memset(&s, 0, sizeof s);
  if (client_ca) {
    tunnel__certgen_params g;
    memset(&g, 0, sizeof g);
    g.entropy = entropy;
    g.entropy_ud = &seed;
    g.cn = "fuzz CA";
    g.is_ca = 1;
    g.not_before = "20200101000000";
    g.not_after = "20400101000000";
    CHECK(tunnel__certgen(&g, &cert, &key) == 0);
    s.ca.data = (uint8_t *)cert;
    s.ca.len = strlen(cert) + 1;
  }
  tunnel__tls_conf_params p;
  memset(&p, 0, sizeof p);
  p.is_server = 1;
  p.entropy = entropy;
  p.entropy_ud = &seed;
  p.settings = &s;
  p.now_s = 1700000000u;
  p.no_tickets = no_tickets;
  tunnel__tls_conf *c = NULL;
  CHECK(tunnel__tls_conf_new(&c, &p, NULL, 0) == 0);
  if (key)
    tunnel__wipe(key, strlen(key) + 1);
  free(key);
  free(cert);
  return c;
}

static int valid_result(int rc) {
  return rc == 0 || rc == TUNNEL_EAGAIN || rc == TUNNEL_ETLS ||
         rc == TUNNEL_ELIMIT || rc == TUNNEL_ECERTUNTRUSTED ||
         rc == TUNNEL_ENOMEM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!confs[0]) {
    for (int i = 0; i < 4; i++)
      confs[i] = make_conf(i & 1, i >> 1);
  }
  if (size == 0)
    return 0;
  int sn = tunnel__tls_sniff(data[0]);
  CHECK(sn == (data[0] == 0x16   ? TUNNEL__SNIFF_TLS
               : data[0] == 0x17 ? TUNNEL__SNIFF_TLS_MARKER
                                 : TUNNEL__SNIFF_PLAIN));
  if (size < 3)
    return 0;
  tunnel__tls_conf *c = confs[data[0] & 3];
  size_t a = data[1], b = data[2];
  data += 3;
  size -= 3;
  /* Split points scaled over the input. */
  a = a * size / 255;
  b = b * size / 255;
  if (a > b) {
    size_t t = a;
    a = b;
    b = t;
  }
  tunnel__tls *t = NULL;
  CHECK(tunnel__tls_new(&t, c, NULL) == 0);
  size_t cut[4] = {0, a, b, size};
  int rc = TUNNEL_EAGAIN;
  for (int i = 0; i < 3; i++) {
    /* Each piece in a buffer of its own: reading past it trips ASan. */
    size_t n = cut[i + 1] - cut[i];
    uint8_t *piece = malloc(n ? n : 1);
    CHECK(piece != NULL);
    memcpy(piece, data + cut[i], n);
    int frc = tunnel__tls_feed(t, piece, n);
    free(piece);
    CHECK(valid_result(frc));
    rc = tunnel__tls_handshake(t);
    CHECK(valid_result(rc));
    if (frc)
      CHECK(rc == frc); /* feed errors are sticky */
    /* Output is whole records. */
    tunnel__iov v[4];
    size_t k = tunnel__tls_out_iov(t, v, 4);
    CHECK(k == 0 || v[0].len > 0);
    tunnel__tls_out_consume(t, tunnel__tls_out_pending(t));
    if (rc != TUNNEL_EAGAIN)
      break;
  }
  if (rc != 0 && rc != TUNNEL_EAGAIN) {
    CHECK(tunnel__tls_error_text(t)[0] != '\0');
    CHECK(tunnel__tls_handshake(t) == rc);
    uint8_t buf[16];
    size_t n = 1;
    CHECK(tunnel__tls_read(t, buf, sizeof buf, &n) == rc && n == 0);
    CHECK(tunnel__tls_write(t, buf, 1, &n) == rc && n == 0);
  } else if (rc == 0) {
    uint8_t buf[256];
    size_t n;
    int r = tunnel__tls_read(t, buf, sizeof buf, &n);
    CHECK(valid_result(r) || r == TUNNEL_EEOF);
  }
  tunnel__tls_free(t);
  return 0;
}
