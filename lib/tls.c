#include "tls.h"

#include <stdio.h>
#include <string.h>

#ifdef _WIN32
#include <ws2tcpip.h>
#else
#include <arpa/inet.h>
#endif

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#if MBEDTLS_VERSION_MAJOR >= 3 &&                                              \
    (defined(MBEDTLS_USE_PSA_CRYPTO) || defined(MBEDTLS_SSL_PROTO_TLS1_3))
#include <psa/crypto.h>
#define TLS_NEED_PSA 1
#endif

#include "certgen.h"
#include "crypto.h"

/* The handshake state and the last record's bytes are plain fields in
 * mbedTLS 2 and private (but stable) ones in 3. The engine reads the state to
 * tell a resumed handshake (which skips the certificate) from a full one,
 * and the record to name the alert a peer sent. */
#if MBEDTLS_VERSION_MAJOR >= 3
#define SSL_FIELD(ssl, f) ((ssl)->MBEDTLS_PRIVATE(f))
#else
#define SSL_FIELD(ssl, f) ((ssl)->f)
#endif

enum { VERIFY_CA, VERIFY_PIN, VERIFY_INSECURE };

/* AEAD only, ECDHE only. */
static const int suites[] = {
#if MBEDTLS_VERSION_MAJOR >= 3 && defined(MBEDTLS_SSL_PROTO_TLS1_3)
    MBEDTLS_TLS1_3_AES_128_GCM_SHA256,
    MBEDTLS_TLS1_3_AES_256_GCM_SHA384,
    MBEDTLS_TLS1_3_CHACHA20_POLY1305_SHA256,
#endif
    /* ChaCha20-Poly1305 first, with or without AES-NI: mbedTLS 2.28's GCM
     * makes a cipher-layer call and a carry-less multiply per 16-byte
     * block, so even where it uses AES-NI and PCLMULQDQ its records run at
     * about 0.6x the speed of its portable ChaCha20-Poly1305 (measured on
     * an AMD EPYC with both: 155 vs 245 MB/s of 16 KiB records, AES-128
     * and AES-256 alike). In TLS 1.2 an mbedTLS server picks by this
     * order, and Go's takes a client's ChaCha20 first as a sign that the
     * client lacks AES hardware. */
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0};

/* mbedTLS 3.2 replaced the curve and version setters. */
#if MBEDTLS_VERSION_NUMBER >= 0x03020000
#define TLS_IANA_GROUPS 1
#endif

#ifdef TLS_IANA_GROUPS
static const uint16_t groups[] = {MBEDTLS_SSL_IANA_TLS_GROUP_X25519,
                                  MBEDTLS_SSL_IANA_TLS_GROUP_SECP256R1,
                                  MBEDTLS_SSL_IANA_TLS_GROUP_SECP384R1,
                                  MBEDTLS_SSL_IANA_TLS_GROUP_NONE};
#else
static const mbedtls_ecp_group_id groups[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};
#endif

struct tunnel__tls_conf {
  const tunnel__mem *mem;
  tunnel__logger *log;
  int is_server;
  int verify;
  int no_tickets;
  uint8_t pin[32];
  tunnel__tls_entropy_fn entropy;
  void *entropy_ud;
  mbedtls_ctr_drbg_context drbg;
  mbedtls_ssl_config ssl;
  mbedtls_x509_crt ca;
  mbedtls_x509_crt own;
  mbedtls_pk_context key;
  int has_own;
  uint8_t fp[32];
  /* Server: two ticket contexts, the current one issuing and the previous
   * one still accepted, swapped by tunnel__tls_conf_tick. */
  mbedtls_ssl_ticket_context tk[2];
  int tk_cur;
  int tk_prev_ok;
  uint64_t tk_since;
  mbedtls_ssl_cache_context cache;
  /* Client: the session offered to the next connection. */
  mbedtls_ssl_session session;
  int has_session;
};

struct tunnel__tls {
  tunnel__tls_conf *conf;
  mbedtls_ssl_context ssl;
  tunnel__bufq in;  /* ciphertext fed, not yet taken by mbedTLS */
  /* Ciphertext lent by the caller, read in place after `in`. */
  const uint8_t *lent;
  size_t lent_len;
  tunnel__bufq out; /* ciphertext for the peer */
  int err;          /* sticky error */
  int established;
  int eof;          /* peer's close_notify seen */
  int closed_write; /* our close_notify queued */
  int offered;      /* client: a saved session was offered */
  int full;         /* the handshake went through the certificate */
  int resumed;
  int oom;          /* queueing output failed */
  int sent_alert;
  int pin_failed;
  uint32_t vflags; /* verification flags seen on any chain element */
  uint8_t ip[16];
  size_t ip_len; /* client: server name is an IP literal */
  char why[192];
};

/* ------------------------------------------------------------- helpers */

static void set_err(char *err, size_t errlen, const char *fmt, const char *a,
                    int ret) {
  if (!err || !errlen)
    return;
  char m[96] = "";
#if defined(MBEDTLS_ERROR_C)
  if (ret)
    mbedtls_strerror(ret, m, sizeof m);
#else
  if (ret)
    snprintf(m, sizeof m, "mbedTLS error -0x%04x", (unsigned)-ret);
#endif
  snprintf(err, errlen, fmt, a, m);
}

static int sha256(const uint8_t *d, size_t n, uint8_t out[32]) {
#if MBEDTLS_VERSION_MAJOR >= 3
  return mbedtls_sha256(d, n, out, 0);
#else
  return mbedtls_sha256_ret(d, n, out, 0);
#endif
}

static int conf_entropy(void *p, unsigned char *out, size_t n) {
  const tunnel__tls_conf *c = p;
  return c->entropy(c->entropy_ud, out, n) == 0
             ? 0
             : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

/* Ticket callbacks: issue with the current keys, accept the previous ones
 * too. A ticket under a key name the context does not know fails before
 * anything is decrypted, so the second try sees the ticket intact. */
static int ticket_write(void *p, const mbedtls_ssl_session *s,
                        unsigned char *start, const unsigned char *end,
                        size_t *tlen, uint32_t *lifetime) {
  tunnel__tls_conf *c = p;
  return mbedtls_ssl_ticket_write(&c->tk[c->tk_cur], s, start, end, tlen,
                                  lifetime);
}

static int ticket_parse(void *p, mbedtls_ssl_session *s, unsigned char *buf,
                        size_t len) {
  tunnel__tls_conf *c = p;
  int ret = mbedtls_ssl_ticket_parse(&c->tk[c->tk_cur], s, buf, len);
  /* mbedTLS reports an unknown key name as an expired ticket. */
  if ((ret == MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED ||
       ret == MBEDTLS_ERR_SSL_INVALID_MAC) &&
      c->tk_prev_ok)
    ret = mbedtls_ssl_ticket_parse(&c->tk[1 - c->tk_cur], s, buf, len);
  return ret;
}

static int ticket_setup(tunnel__tls_conf *c, int i) {
  return mbedtls_ssl_ticket_setup(&c->tk[i], mbedtls_ctr_drbg_random,
                                  &c->drbg, MBEDTLS_CIPHER_AES_256_GCM,
                                  TUNNEL__TLS_TICKET_LIFETIME_S);
}

static int self_signed(tunnel__tls_conf *c, uint64_t now, char *err,
                       size_t errlen) {
  char nb[15], na[15], *cert = NULL, *key = NULL;
  static const char *const dns[] = {TUNNEL__TLS_SELF_CN};
  /* An hour of slack for clocks behind ours; 10 years with leap days. */
  tunnel__certgen_time(now > 3600 ? now - 3600 : 0, nb);
  tunnel__certgen_time(now + (uint64_t)TUNNEL__TLS_SELF_YEARS * 36525u * 864u,
                       na);
  tunnel__certgen_params g = {0};
  g.mem = c->mem;
  g.entropy = c->entropy;
  g.entropy_ud = c->entropy_ud;
  g.cn = TUNNEL__TLS_SELF_CN;
  g.dns = dns;
  g.n_dns = 1;
  g.not_before = nb;
  g.not_after = na;
  int rc = tunnel__certgen(&g, &cert, &key);
  if (rc) {
    set_err(err, errlen, "generating a certificate: %s%s",
            tunnel_strerror(rc), 0);
    return rc;
  }
  int ret = mbedtls_x509_crt_parse(&c->own, (const unsigned char *)cert,
                                   strlen(cert) + 1);
  if (!ret)
#if MBEDTLS_VERSION_MAJOR >= 3
    ret = mbedtls_pk_parse_key(&c->key, (const unsigned char *)key,
                               strlen(key) + 1, NULL, 0,
                               mbedtls_ctr_drbg_random, &c->drbg);
#else
    ret = mbedtls_pk_parse_key(&c->key, (const unsigned char *)key,
                               strlen(key) + 1, NULL, 0);
#endif
  tunnel__wipe(key, strlen(key) + 1);
  tunnel__free(c->mem, key);
  tunnel__free(c->mem, cert);
  if (ret) {
    set_err(err, errlen, "%sgenerated certificate: %s", "", ret);
    return TUNNEL_ETLS;
  }
  return 0;
}

/* ---------------------------------------------------------------- conf */

void tunnel__tls_conf_free(tunnel__tls_conf *c) {
  if (!c)
    return;
  mbedtls_ssl_config_free(&c->ssl);
  mbedtls_ssl_ticket_free(&c->tk[0]);
  mbedtls_ssl_ticket_free(&c->tk[1]);
  mbedtls_ssl_cache_free(&c->cache);
  mbedtls_ssl_session_free(&c->session);
  mbedtls_x509_crt_free(&c->ca);
  mbedtls_x509_crt_free(&c->own);
  mbedtls_pk_free(&c->key);
  mbedtls_ctr_drbg_free(&c->drbg);
  tunnel__wipe(c->pin, sizeof c->pin);
  tunnel__free(c->mem, c);
}

/* A blob holding more than its NUL; an empty one counts as unset. */
static int blob_set(const tunnel__blob *b) { return b->data && b->len > 1; }
static int blob_ok(const tunnel__blob *b) {
  return blob_set(b) && b->data[b->len - 1] == 0;
}

int tunnel__tls_conf_new(tunnel__tls_conf **out,
                         const tunnel__tls_conf_params *p, char *err,
                         size_t errlen) {
  if (err && errlen)
    err[0] = '\0';
  if (!out)
    return TUNNEL_EINVAL;
  *out = NULL;
  if (!p || !p->entropy || !p->settings) {
    set_err(err, errlen, "%sinvalid parameters%s", "", 0);
    return TUNNEL_EINVAL;
  }
  const tunnel__tls_settings *s = p->settings;
  const tunnel__mem *mem = p->mem ? p->mem : tunnel__mem_default();
  tunnel__tls_conf *c = tunnel__calloc(mem, 1, sizeof *c);
  if (!c)
    return TUNNEL_ENOMEM;
  c->mem = mem;
  c->log = p->log;
  c->is_server = p->is_server ? 1 : 0;
  c->no_tickets = p->no_tickets ? 1 : 0;
  c->entropy = p->entropy;
  c->entropy_ud = p->entropy_ud;
  c->tk_since = p->now_s;
  mbedtls_ctr_drbg_init(&c->drbg);
  mbedtls_ssl_config_init(&c->ssl);
  mbedtls_x509_crt_init(&c->ca);
  mbedtls_x509_crt_init(&c->own);
  mbedtls_pk_init(&c->key);
  mbedtls_ssl_ticket_init(&c->tk[0]);
  mbedtls_ssl_ticket_init(&c->tk[1]);
  mbedtls_ssl_cache_init(&c->cache);
  mbedtls_ssl_session_init(&c->session);

  int rc = TUNNEL_ETLS, ret;
#ifdef TLS_NEED_PSA
  if (psa_crypto_init() != PSA_SUCCESS) {
    rc = TUNNEL_ECRYPTO;
    set_err(err, errlen, "%scrypto init failed%s", "", 0);
    goto fail;
  }
#endif
  if ((ret = mbedtls_ctr_drbg_seed(&c->drbg, conf_entropy, c,
                                   (const unsigned char *)"libtunnel tls",
                                   13)) != 0) {
    rc = TUNNEL_ECRYPTO;
    set_err(err, errlen, "%sseeding the random generator: %s", "", ret);
    goto fail;
  }

  /* Own certificate: configured, or (server) generated. */
  if (blob_set(&s->cert) || blob_set(&s->key)) {
    if (!blob_ok(&s->cert) || !blob_ok(&s->key)) {
      set_err(err, errlen, "%scertificate and key must both be set%s", "", 0);
      goto fail;
    }
    if ((ret = mbedtls_x509_crt_parse(&c->own, s->cert.data, s->cert.len))) {
      set_err(err, errlen, "%scertificate unparsable: %s", "", ret);
      goto fail;
    }
#if MBEDTLS_VERSION_MAJOR >= 3
    ret = mbedtls_pk_parse_key(&c->key, s->key.data, s->key.len, NULL, 0,
                               mbedtls_ctr_drbg_random, &c->drbg);
#else
    ret = mbedtls_pk_parse_key(&c->key, s->key.data, s->key.len, NULL, 0);
#endif
    if (ret) {
      set_err(err, errlen, "%skey unparsable: %s", "", ret);
      goto fail;
    }
#if MBEDTLS_VERSION_MAJOR >= 3
    ret = mbedtls_pk_check_pair(&c->own.pk, &c->key, mbedtls_ctr_drbg_random,
                                &c->drbg);
#else
    ret = mbedtls_pk_check_pair(&c->own.pk, &c->key);
#endif
    if (ret) {
      set_err(err, errlen, "%skey does not match the certificate%s", "", 0);
      goto fail;
    }
    c->has_own = 1;
  } else if (c->is_server) {
    if ((rc = self_signed(c, p->now_s, err, errlen)) != 0)
      goto fail;
    rc = TUNNEL_ETLS;
    c->has_own = 1;
  }
  if (c->has_own && sha256(c->own.raw.p, c->own.raw.len, c->fp) != 0) {
    rc = TUNNEL_ECRYPTO;
    goto fail;
  }

  /* Trust anchors. */
  if (blob_set(&s->ca)) {
    if (!blob_ok(&s->ca) ||
        (ret = mbedtls_x509_crt_parse(&c->ca, s->ca.data, s->ca.len)) != 0) {
      set_err(err, errlen, "%sCA unparsable: %s", "", blob_ok(&s->ca) ? ret : 0);
      goto fail;
    }
  }
  if (c->is_server) {
    c->verify = VERIFY_CA;
  } else if (s->has_pin) {
    c->verify = VERIFY_PIN;
    memcpy(c->pin, s->pin, sizeof c->pin);
  } else if (s->insecure) {
    c->verify = VERIFY_INSECURE;
  } else {
    c->verify = VERIFY_CA;
    /* A bundle may hold certificates mbedTLS cannot parse (it returns how
     * many it skipped); one usable anchor is enough. */
    if (!blob_set(&s->ca) && p->system_ca && p->system_ca_len &&
        p->system_ca[p->system_ca_len - 1] == 0)
      (void)mbedtls_x509_crt_parse(&c->ca, p->system_ca, p->system_ca_len);
    if (c->ca.version == 0) {
      set_err(err, errlen,
              "%sno trust anchor: set a CA, a pin or insecure%s", "", 0);
      goto fail;
    }
  }

  if ((ret = mbedtls_ssl_config_defaults(
           &c->ssl, c->is_server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
           MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT)) != 0) {
    set_err(err, errlen, "%sconfiguration: %s", "", ret);
    goto fail;
  }
  mbedtls_ssl_conf_rng(&c->ssl, mbedtls_ctr_drbg_random, &c->drbg);
  mbedtls_ssl_conf_ciphersuites(&c->ssl, suites);
#ifdef TLS_IANA_GROUPS
  mbedtls_ssl_conf_groups(&c->ssl, groups);
  mbedtls_ssl_conf_min_tls_version(&c->ssl, MBEDTLS_SSL_VERSION_TLS1_2);
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
  mbedtls_ssl_conf_max_tls_version(&c->ssl, MBEDTLS_SSL_VERSION_TLS1_3);
#endif
#else
  mbedtls_ssl_conf_curves(&c->ssl, groups);
  mbedtls_ssl_conf_min_version(&c->ssl, MBEDTLS_SSL_MAJOR_VERSION_3,
                               MBEDTLS_SSL_MINOR_VERSION_3);
#endif
  mbedtls_ssl_conf_renegotiation(&c->ssl, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
  if (c->has_own &&
      (ret = mbedtls_ssl_conf_own_cert(&c->ssl, &c->own, &c->key)) != 0) {
    rc = TUNNEL_ENOMEM;
    goto fail;
  }
  if (c->ca.version != 0)
    mbedtls_ssl_conf_ca_chain(&c->ssl, &c->ca, NULL);

  if (c->is_server) {
    /* A CA on a server means client certificates are required. */
    mbedtls_ssl_conf_authmode(&c->ssl, c->ca.version
                                           ? MBEDTLS_SSL_VERIFY_REQUIRED
                                           : MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_cache_set_max_entries(&c->cache, TUNNEL__TLS_CACHE_ENTRIES);
#if defined(MBEDTLS_HAVE_TIME)
    mbedtls_ssl_cache_set_timeout(&c->cache, TUNNEL__TLS_TICKET_LIFETIME_S);
#endif
    mbedtls_ssl_conf_session_cache(&c->ssl, &c->cache, mbedtls_ssl_cache_get,
                                   mbedtls_ssl_cache_set);
    if (!c->no_tickets) {
      if ((ret = ticket_setup(c, 0)) != 0) {
        set_err(err, errlen, "%ssession tickets: %s", "", ret);
        goto fail;
      }
      mbedtls_ssl_conf_session_tickets_cb(&c->ssl, ticket_write, ticket_parse,
                                          c);
    }
  } else {
    /* Pin: the verify callback decides, so mbedTLS must not fail first on
     * a chain without anchors. */
    mbedtls_ssl_conf_authmode(&c->ssl, c->verify == VERIFY_CA
                                           ? MBEDTLS_SSL_VERIFY_REQUIRED
                                       : c->verify == VERIFY_PIN
                                           ? MBEDTLS_SSL_VERIFY_OPTIONAL
                                           : MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_session_tickets(&c->ssl,
                                     c->no_tickets
                                         ? MBEDTLS_SSL_SESSION_TICKETS_DISABLED
                                         : MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
  }

  if (c->is_server && tunnel__log_enabled(c->log, TUNNEL_LOG_INFO) &&
      !blob_set(&s->cert)) {
    char fp[TUNNEL__TLS_FINGERPRINT_TEXT];
    tunnel__tls_fingerprint_format(c->fp, fp, sizeof fp);
    tunnel__log(c->log, TUNNEL_LOG_INFO,
                "tls: generated a self-signed certificate, SHA-256 %s", fp);
  }
  *out = c;
  return 0;

fail:
  tunnel__tls_conf_free(c);
  return rc;
}

int tunnel__tls_conf_tick(tunnel__tls_conf *c, uint64_t now_s) {
  if (!c)
    return TUNNEL_EINVAL;
  if (!c->is_server || c->no_tickets)
    return 0;
  if (now_s < c->tk_since) {
    c->tk_since = now_s; /* the clock went back: restart the period */
    return 0;
  }
  if (now_s - c->tk_since < TUNNEL__TLS_TICKET_LIFETIME_S)
    return 0;
  int next = 1 - c->tk_cur;
  mbedtls_ssl_ticket_free(&c->tk[next]);
  mbedtls_ssl_ticket_init(&c->tk[next]);
  c->tk_prev_ok = 0;
  if (ticket_setup(c, next) != 0)
    return TUNNEL_ECRYPTO;
  c->tk_cur = next;
  c->tk_prev_ok = 1;
  c->tk_since = now_s;
  return 1;
}

int tunnel__tls_conf_fingerprint(const tunnel__tls_conf *c, uint8_t out[32]) {
  if (!c || !out)
    return TUNNEL_EINVAL;
  if (!c->has_own)
    return TUNNEL_ENOTFOUND;
  memcpy(out, c->fp, 32);
  return 0;
}

void tunnel__tls_fingerprint_format(const uint8_t fp[32], char *out,
                                    size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  char tmp[TUNNEL__TLS_FINGERPRINT_TEXT];
  if (!out || !len)
    return;
  for (size_t i = 0; i < 32; i++) {
    tmp[3 * i] = hex[fp[i] >> 4];
    tmp[3 * i + 1] = hex[fp[i] & 15];
    tmp[3 * i + 2] = i == 31 ? '\0' : ':';
  }
  size_t n = len - 1 < 95 ? len - 1 : 95;
  memcpy(out, tmp, n);
  out[n] = '\0';
}

/* ------------------------------------------------------------ transport */

static int send_cb(void *p, const unsigned char *buf, size_t len) {
  tunnel__tls *t = p;
  /* mbedTLS flushes whole records, so each call starts with a header. */
  if (len && buf[0] == MBEDTLS_SSL_MSG_ALERT)
    t->sent_alert = 1;
  if (tunnel__bufq_append(&t->out, buf, len) != 0) {
    t->oom = 1;
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  }
  return (int)len;
}

/* Input not yet taken by mbedTLS: the queue, then the loan. */
static size_t in_avail(const tunnel__tls *t) {
  return t->in.size + t->lent_len;
}

static int recv_cb(void *p, unsigned char *buf, size_t len) {
  tunnel__tls *t = p;
  if (in_avail(t) == 0)
    return MBEDTLS_ERR_SSL_WANT_READ;
  size_t got = 0;
  while (got < len && t->in.size) {
    tunnel__iov v;
    tunnel__bufq_iov(&t->in, &v, 1);
    size_t k = v.len < len - got ? v.len : len - got;
    memcpy(buf + got, v.base, k);
    tunnel__bufq_consume(&t->in, k);
    got += k;
  }
  if (t->in.size == 0)
    tunnel__bufq_free(&t->in); /* an idle connection keeps no chunk */
  if (got < len && t->lent_len) {
    size_t k = t->lent_len < len - got ? t->lent_len : len - got;
    memcpy(buf + got, t->lent, k);
    t->lent += k;
    t->lent_len -= k;
    got += k;
  }
  return (int)got;
}

/* Certificate checks mbedTLS does not do: the pin, and IP literals against
 * iPAddress SANs. Called from the chain's top down to the leaf (depth 0). */
static int san_has_ip(const mbedtls_x509_crt *crt, const uint8_t *ip,
                      size_t n) {
  for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s;
       s = s->next)
    if (s->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && s->buf.len == n &&
        memcmp(s->buf.p, ip, n) == 0)
      return 1;
  return 0;
}

static int verify_cb(void *p, mbedtls_x509_crt *crt, int depth,
                     uint32_t *flags) {
  tunnel__tls *t = p;
  if (!t->conf->is_server && t->conf->verify == VERIFY_PIN) {
    *flags = 0;
    if (depth > 0)
      return 0;
    uint8_t d[32];
    if (sha256(crt->raw.p, crt->raw.len, d) != 0 ||
        !tunnel__ct_equal(d, t->conf->pin, sizeof d)) {
      t->pin_failed = 1;
      return MBEDTLS_ERR_X509_FATAL_ERROR; /* aborts the handshake */
    }
    return 0;
  }
  if (depth == 0 && t->ip_len && !san_has_ip(crt, t->ip, t->ip_len))
    *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
  t->vflags |= *flags;
  return 0;
}

/* ----------------------------------------------------------- connection */

int tunnel__tls_new(tunnel__tls **out, tunnel__tls_conf *c,
                    const char *server_name) {
  if (!out || !c)
    return TUNNEL_EINVAL;
  *out = NULL;
  if (!c->is_server && !server_name && c->verify == VERIFY_CA)
    return TUNNEL_EINVAL;
  if (server_name && strlen(server_name) > 255)
    return TUNNEL_EINVAL;
  tunnel__tls *t = tunnel__calloc(c->mem, 1, sizeof *t);
  if (!t)
    return TUNNEL_ENOMEM;
  t->conf = c;
  tunnel__bufq_init(&t->in, c->mem, 0);
  /* Room for a full record and its header, tag and nonce. */
  tunnel__bufq_init(&t->out, c->mem, 16384 + 512);
  mbedtls_ssl_init(&t->ssl);
  int ret = mbedtls_ssl_setup(&t->ssl, &c->ssl);
  if (!ret && !c->is_server && server_name) {
    uint8_t ip[16];
    if (inet_pton(AF_INET, server_name, ip) == 1)
      t->ip_len = 4;
    else if (inet_pton(AF_INET6, server_name, ip) == 1)
      t->ip_len = 16;
    memcpy(t->ip, ip, t->ip_len);
    /* An IP literal is neither SNI nor a name mbedTLS can check; NULL
     * also tells mbedTLS 3 that skipping its name check is deliberate. */
    ret = mbedtls_ssl_set_hostname(&t->ssl, t->ip_len ? NULL : server_name);
  } else if (!ret && !c->is_server) {
    ret = mbedtls_ssl_set_hostname(&t->ssl, NULL);
  }
  if (!ret && !c->is_server && c->has_session) {
    /* A session that cannot be set is not worth failing for. */
    if (mbedtls_ssl_set_session(&t->ssl, &c->session) == 0)
      t->offered = 1;
  }
  if (ret) {
    tunnel__tls_free(t);
    return ret == MBEDTLS_ERR_SSL_ALLOC_FAILED ? TUNNEL_ENOMEM : TUNNEL_ETLS;
  }
  mbedtls_ssl_set_verify(&t->ssl, verify_cb, t);
  mbedtls_ssl_set_bio(&t->ssl, t, send_cb, recv_cb, NULL);
  *out = t;
  return 0;
}

void tunnel__tls_free(tunnel__tls *t) {
  if (!t)
    return;
  mbedtls_ssl_free(&t->ssl);
  tunnel__bufq_free(&t->in);
  tunnel__bufq_free(&t->out);
  tunnel__free(t->conf->mem, t);
}

int tunnel__tls_feed_keep(tunnel__tls *t) {
  const uint8_t *p = t->lent;
  size_t n = t->lent_len;
  t->lent = NULL;
  t->lent_len = 0;
  if (t->err)
    return t->err;
  if (n && tunnel__bufq_append(&t->in, p, n) != 0) {
    /* The bytes are gone: the stream cannot go on. */
    snprintf(t->why, sizeof t->why, "out of memory");
    return t->err = TUNNEL_ENOMEM;
  }
  return 0;
}

/* Checks `n` more bytes against the handshake's input bound; new input
 * goes after any loan, so that is kept first. */
static int feed_check(tunnel__tls *t, size_t n) {
  if (t->err)
    return t->err;
  int rc = tunnel__tls_feed_keep(t);
  if (rc)
    return rc;
  if (!t->established &&
      (n > TUNNEL__TLS_HANDSHAKE_INPUT_MAX ||
       t->in.size > TUNNEL__TLS_HANDSHAKE_INPUT_MAX - n)) {
    snprintf(t->why, sizeof t->why, "too much input during the handshake");
    return t->err = TUNNEL_ELIMIT;
  }
  return 0;
}

int tunnel__tls_feed(tunnel__tls *t, const uint8_t *data, size_t n) {
  if (!n)
    return t->err;
  int rc = feed_check(t, n);
  return rc ? rc : tunnel__bufq_append(&t->in, data, n);
}

int tunnel__tls_feed_lend(tunnel__tls *t, const uint8_t *data, size_t n) {
  if (!n)
    return t->err;
  int rc = feed_check(t, n);
  if (rc)
    return rc;
  t->lent = data;
  t->lent_len = n;
  return 0;
}

static const char *alert_name(unsigned a) {
  switch (a) {
  case MBEDTLS_SSL_ALERT_MSG_CLOSE_NOTIFY: return "close notify";
  case MBEDTLS_SSL_ALERT_MSG_UNEXPECTED_MESSAGE: return "unexpected message";
  case MBEDTLS_SSL_ALERT_MSG_BAD_RECORD_MAC: return "bad record MAC";
  case MBEDTLS_SSL_ALERT_MSG_RECORD_OVERFLOW: return "record overflow";
  case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE: return "handshake failure";
  case MBEDTLS_SSL_ALERT_MSG_BAD_CERT: return "bad certificate";
  case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT: return "unsupported certificate";
  case MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED: return "certificate revoked";
  case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED: return "certificate expired";
  case MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN: return "certificate unknown";
  case MBEDTLS_SSL_ALERT_MSG_ILLEGAL_PARAMETER: return "illegal parameter";
  case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA: return "unknown CA";
  case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED: return "access denied";
  case MBEDTLS_SSL_ALERT_MSG_DECODE_ERROR: return "decode error";
  case MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR: return "decrypt error";
  case MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION: return "protocol version";
  case MBEDTLS_SSL_ALERT_MSG_INSUFFICIENT_SECURITY:
    return "insufficient security";
  case MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR: return "internal error";
  case MBEDTLS_SSL_ALERT_MSG_USER_CANCELED: return "user canceled";
  case MBEDTLS_SSL_ALERT_MSG_NO_RENEGOTIATION: return "no renegotiation";
  case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_EXT: return "unsupported extension";
  case MBEDTLS_SSL_ALERT_MSG_UNRECOGNIZED_NAME: return "unrecognized name";
  case 116: return "certificate required";
  case MBEDTLS_SSL_ALERT_MSG_NO_APPLICATION_PROTOCOL:
    return "no application protocol";
  default: return NULL;
  }
}

/* Words for the verification flags, most telling first. */
static const char *vflags_text(uint32_t f) {
  if (f & MBEDTLS_X509_BADCERT_EXPIRED)
    return "expired";
  if (f & MBEDTLS_X509_BADCERT_FUTURE)
    return "not yet valid";
  if (f & MBEDTLS_X509_BADCERT_REVOKED)
    return "revoked";
  if (f & MBEDTLS_X509_BADCERT_NOT_TRUSTED)
    return "unknown issuer";
  if (f & MBEDTLS_X509_BADCERT_MISSING)
    return "missing";
  if (f & (MBEDTLS_X509_BADCERT_BAD_MD | MBEDTLS_X509_BADCERT_BAD_PK |
           MBEDTLS_X509_BADCERT_BAD_KEY))
    return "weak algorithm or key";
  if (f & (MBEDTLS_X509_BADCERT_KEY_USAGE | MBEDTLS_X509_BADCERT_EXT_KEY_USAGE |
           MBEDTLS_X509_BADCERT_NS_CERT_TYPE))
    return "usage not allowed";
  return "invalid";
}

/* Makes `ret` the connection's sticky error, with its reason, and makes sure
 * the peer hears a fatal alert unless it sent one or we already did. */
static int fail(tunnel__tls *t, int ret) {
  int code = TUNNEL_ETLS;
  unsigned alert = MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE;
  int tell = !t->sent_alert;
  const char *when = t->established ? "TLS" : "TLS handshake";
  if (t->oom || ret == MBEDTLS_ERR_SSL_ALLOC_FAILED) {
    code = TUNNEL_ENOMEM;
    tell = 0;
    snprintf(t->why, sizeof t->why, "%s: out of memory", when);
  } else if (t->pin_failed) {
    code = TUNNEL_ECERTPIN;
    alert = MBEDTLS_SSL_ALERT_MSG_BAD_CERT;
    snprintf(t->why, sizeof t->why, "certificate does not match the pin");
  } else if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
    uint32_t f = t->vflags;
    if (f & ~(uint32_t)MBEDTLS_X509_BADCERT_CN_MISMATCH || !f) {
      code = TUNNEL_ECERTUNTRUSTED;
      alert = MBEDTLS_SSL_ALERT_MSG_BAD_CERT;
      snprintf(t->why, sizeof t->why, "%scertificate not trusted (%s)",
               t->conf->is_server ? "client " : "", vflags_text(f));
    } else {
      code = TUNNEL_ECERTNAME;
      alert = MBEDTLS_SSL_ALERT_MSG_BAD_CERT;
      snprintf(t->why, sizeof t->why,
               "certificate does not match the server name");
    }
  } else if (ret == MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE) {
    code = TUNNEL_ECERTUNTRUSTED;
    snprintf(t->why, sizeof t->why, "client certificate required");
  } else if (ret == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
    unsigned a = SSL_FIELD(&t->ssl, in_msg)[1];
    const char *name = alert_name(a);
    tell = 0;
    if (name)
      snprintf(t->why, sizeof t->why, "peer sent alert: %s", name);
    else
      snprintf(t->why, sizeof t->why, "peer sent alert %u", a);
  } else if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
    tell = 0;
    snprintf(t->why, sizeof t->why, "peer closed during the handshake");
  } else {
    char m[128] = "";
#if defined(MBEDTLS_ERROR_C)
    mbedtls_strerror(ret, m, sizeof m);
#else
    snprintf(m, sizeof m, "mbedTLS error -0x%04x", (unsigned)-ret);
#endif
    snprintf(t->why, sizeof t->why, "%s failed: %s", when, m);
    if (ret == MBEDTLS_ERR_SSL_INVALID_MAC)
      alert = MBEDTLS_SSL_ALERT_MSG_BAD_RECORD_MAC;
    else if (ret == MBEDTLS_ERR_SSL_INVALID_RECORD)
      alert = MBEDTLS_SSL_ALERT_MSG_DECODE_ERROR;
    else if (t->established)
      alert = MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR;
  }
  if (tell)
    (void)mbedtls_ssl_send_alert_message(&t->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                         (unsigned char)alert);
  if (t->oom)
    code = TUNNEL_ENOMEM;
  tunnel__log(t->conf->log, TUNNEL_LOG_DEBUG, "tls: %s", t->why);
  return t->err = code;
}

int tunnel__tls_handshake(tunnel__tls *t) {
  if (t->err)
    return t->err;
  while (!t->established) {
    if (SSL_FIELD(&t->ssl, state) == MBEDTLS_SSL_HANDSHAKE_OVER) {
      t->established = 1;
      t->resumed = !t->full && (t->conf->is_server || t->offered);
      tunnel__log(t->conf->log, TUNNEL_LOG_DEBUG, "tls: %s, %s",
                  t->resumed ? "resumed" : "established",
                  mbedtls_ssl_get_ciphersuite(&t->ssl));
      break;
    }
    int ret = mbedtls_ssl_handshake_step(&t->ssl);
    /* Both sides pass this state in a full handshake only. */
    if (SSL_FIELD(&t->ssl, state) == MBEDTLS_SSL_SERVER_CERTIFICATE)
      t->full = 1;
    if (ret == MBEDTLS_ERR_SSL_WANT_READ)
      return TUNNEL_EAGAIN;
    if (ret)
      return fail(t, ret);
  }
  return 0;
}

int tunnel__tls_is_established(const tunnel__tls *t) {
  return t->established && !t->err;
}

const char *tunnel__tls_error_text(const tunnel__tls *t) { return t->why; }

const char *tunnel__tls_ciphersuite(const tunnel__tls *t) {
  return t->established ? mbedtls_ssl_get_ciphersuite(&t->ssl) : "";
}

int tunnel__tls_read(tunnel__tls *t, uint8_t *buf, size_t cap, size_t *n) {
  *n = 0;
  if (t->err)
    return t->err;
  if (t->eof)
    return TUNNEL_EEOF;
  if (!t->established) {
    int rc = tunnel__tls_handshake(t);
    if (rc)
      return rc == TUNNEL_EAGAIN ? 0 : rc;
  }
  if (cap == 0)
    return 0;
  for (;;) {
    size_t before = in_avail(t);
    int ret = mbedtls_ssl_read(&t->ssl, buf, cap);
    if (ret > 0) {
      *n = (size_t)ret;
      return 0;
    }
    if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
      t->eof = 1;
      return TUNNEL_EEOF;
    }
#ifdef MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET
    if (ret == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
      continue;
#endif
    if (ret != 0 && ret != MBEDTLS_ERR_SSL_WANT_READ)
      return fail(t, ret);
    /* A record that was not data (an empty one, a refused renegotiation)
     * consumed input: there may be data behind it. */
    if (in_avail(t) == 0 || in_avail(t) == before)
      return 0;
  }
}

int tunnel__tls_write(tunnel__tls *t, const uint8_t *data, size_t len,
                      size_t *taken) {
  *taken = 0;
  if (t->err)
    return t->err;
  if (t->closed_write)
    return TUNNEL_ECLOSED;
  if (!t->established) {
    int rc = tunnel__tls_handshake(t);
    if (rc)
      return rc;
  }
  size_t off = 0;
  while (off < len) {
    int ret = mbedtls_ssl_write(&t->ssl, data + off, len - off);
    if (ret <= 0)
      return fail(t, ret ? ret : MBEDTLS_ERR_SSL_INTERNAL_ERROR);
    off += (size_t)ret;
  }
  *taken = len;
  return 0;
}

int tunnel__tls_close_notify(tunnel__tls *t) {
  if (t->err)
    return t->err;
  if (!t->established)
    return TUNNEL_ESTATE;
  if (t->closed_write)
    return 0;
  int ret = mbedtls_ssl_close_notify(&t->ssl);
  if (ret)
    return fail(t, ret);
  t->closed_write = 1;
  return 0;
}

size_t tunnel__tls_out_pending(const tunnel__tls *t) { return t->out.size; }

size_t tunnel__tls_out_iov(const tunnel__tls *t, tunnel__iov *iov,
                           size_t max) {
  return tunnel__bufq_iov(&t->out, iov, max);
}

void tunnel__tls_out_consume(tunnel__tls *t, size_t n) {
  tunnel__bufq_consume(&t->out, n);
  /* The queue's spare chunk would cost an idle connection 16 KiB. */
  if (t->out.size == 0)
    tunnel__bufq_free(&t->out);
}

int tunnel__tls_save_session(tunnel__tls *t) {
  tunnel__tls_conf *c = t->conf;
  if (c->is_server || !t->established || t->err)
    return TUNNEL_ESTATE;
  /* A resumed connection leaves the saved session alone: the ticket a
   * server renews on resumption keeps the session's first start (mbedTLS
   * and Go do so), so the saved ticket lasts as long, and the copy would
   * parse the peer's certificate again on every work connection. */
  if (t->resumed && c->has_session)
    return 0;
  mbedtls_ssl_session_free(&c->session);
  mbedtls_ssl_session_init(&c->session);
  c->has_session = 0;
  int ret = mbedtls_ssl_get_session(&t->ssl, &c->session);
  if (ret) {
    mbedtls_ssl_session_free(&c->session);
    mbedtls_ssl_session_init(&c->session);
    return ret == MBEDTLS_ERR_SSL_ALLOC_FAILED ? TUNNEL_ENOMEM : TUNNEL_ETLS;
  }
  c->has_session = 1;
  return 0;
}

int tunnel__tls_resumed(const tunnel__tls *t) {
  return t->established && t->resumed;
}

int tunnel__tls_sniff(uint8_t first) {
  if (first == MBEDTLS_SSL_MSG_HANDSHAKE)
    return TUNNEL__SNIFF_TLS;
  if (first == MBEDTLS_SSL_MSG_APPLICATION_DATA)
    return TUNNEL__SNIFF_TLS_MARKER;
  return TUNNEL__SNIFF_PLAIN;
}
