#include "certgen.h"

#include <string.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

/* The subjectAltName extension value, and PEM output: ample for a key, a
 * P-256 certificate and a handful of names. */
#define SAN_MAX 2048
#define PEM_MAX 8192
#define SUBJECT_MAX 512

typedef struct rng_src {
  tunnel__tls_entropy_fn fn;
  void *ud;
} rng_src;

static int entropy_cb(void *p, unsigned char *out, size_t n) {
  const rng_src *s = p;
  return s->fn(s->ud, out, n) == 0 ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

void tunnel__certgen_time(uint64_t t, char out[15]) {
  uint64_t days = t / 86400u, rem = t % 86400u;
  /* Civil date from days since 1970-01-01 (proleptic Gregorian): shift the
   * epoch to 0000-03-01 so leap days end each 400-year era. */
  uint64_t z = days + 719468u;
  uint64_t era = z / 146097u, doe = z % 146097u;
  uint64_t yoe = (doe - doe / 1460u + doe / 36524u - doe / 146096u) / 365u;
  uint64_t doy = doe - (365u * yoe + yoe / 4u - yoe / 100u);
  uint64_t mp = (5u * doy + 2u) / 153u;
  unsigned d = (unsigned)(doy - (153u * mp + 2u) / 5u + 1u);
  unsigned m = (unsigned)(mp < 10u ? mp + 3u : mp - 9u);
  uint64_t y = yoe + era * 400u + (m <= 2u);
  unsigned v[6] = {0, m, d, (unsigned)(rem / 3600u),
                   (unsigned)(rem / 60u % 60u), (unsigned)(rem % 60u)};
  if (y > 9999u) {
    memcpy(out, "99991231235959", 15);
    return;
  }
  v[0] = (unsigned)y;
  out[0] = (char)('0' + v[0] / 1000u);
  out[1] = (char)('0' + v[0] / 100u % 10u);
  out[2] = (char)('0' + v[0] / 10u % 10u);
  out[3] = (char)('0' + v[0] % 10u);
  for (int i = 1; i < 6; i++) {
    out[2 + 2 * i] = (char)('0' + v[i] / 10u);
    out[3 + 2 * i] = (char)('0' + v[i] % 10u);
  }
  out[14] = '\0';
}

static int valid_time(const char *s) {
  if (!s || strlen(s) != 14)
    return 0;
  for (int i = 0; i < 14; i++)
    if (s[i] < '0' || s[i] > '9')
      return 0;
  return 1;
}

/* SubjectAltName ::= SEQUENCE OF GeneralName, with dNSName [2] IA5String
 * and iPAddress [7] OCTET STRING (both implicit). mbedTLS 2.28 has no
 * writer for it; the asn1write calls fill `buf` from its end backwards.
 * Returns the length (the value starts at buf + SAN_MAX - len), 0 when there
 * are no names, or a negative mbedTLS error. */
static int san_build(const tunnel__certgen_params *p, unsigned char *buf) {
  unsigned char *c = buf + SAN_MAX;
  int ret;
  size_t len = 0;
  if (p->n_dns + p->n_ips == 0)
    return 0;
  for (size_t i = p->n_ips; i-- > 0;) {
    size_t l = 0;
    MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_raw_buffer(
                                &c, buf, p->ips[i].addr, p->ips[i].len));
    MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_len(&c, buf, l));
    MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_tag(
                                &c, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7));
    len += l;
  }
  for (size_t i = p->n_dns; i-- > 0;) {
    size_t l = 0;
    MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_raw_buffer(
                                &c, buf, (const unsigned char *)p->dns[i],
                                strlen(p->dns[i])));
    MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_len(&c, buf, l));
    MBEDTLS_ASN1_CHK_ADD(l, mbedtls_asn1_write_tag(
                                &c, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2));
    len += l;
  }
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&c, buf, len));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(
                                &c, buf,
                                MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
  return (int)len;
}

/* "CN=<cn>" with commas escaped (mbedTLS's name parser splits on them). */
static int subject_name(const char *cn, char *out, size_t cap) {
  size_t o = 0;
  if (cap < 4)
    return TUNNEL_EINVAL;
  memcpy(out, "CN=", 3);
  o = 3;
  for (const char *s = cn; *s; s++) {
    if (*s == '\\')
      return TUNNEL_EINVAL;
    if (o + 3 > cap)
      return TUNNEL_EINVAL;
    if (*s == ',')
      out[o++] = '\\';
    out[o++] = *s;
  }
  out[o] = '\0';
  return o > 3 ? 0 : TUNNEL_EINVAL;
}

static char *dup_pem(const tunnel__mem *mem, const unsigned char *pem) {
  return tunnel__strdup(mem, (const char *)pem);
}

int tunnel__certgen(const tunnel__certgen_params *p, char **cert_pem,
                    char **key_pem) {
  if (cert_pem)
    *cert_pem = NULL;
  if (key_pem)
    *key_pem = NULL;
  if (!p || !cert_pem || !key_pem || !p->entropy || !p->cn ||
      !valid_time(p->not_before) || !valid_time(p->not_after) ||
      (!p->issuer_cert_pem != !p->issuer_key_pem) || (p->n_dns && !p->dns) ||
      (p->n_ips && !p->ips))
    return TUNNEL_EINVAL;
  for (size_t i = 0; i < p->n_ips; i++)
    if (p->ips[i].len != 4 && p->ips[i].len != 16)
      return TUNNEL_EINVAL;
  for (size_t i = 0; i < p->n_dns; i++)
    if (!p->dns[i] || !*p->dns[i] || strlen(p->dns[i]) > 253)
      return TUNNEL_EINVAL;
  const tunnel__mem *mem = p->mem ? p->mem : tunnel__mem_default();

  char subject[SUBJECT_MAX], issuer[SUBJECT_MAX];
  int rc = subject_name(p->cn, subject, sizeof subject);
  if (rc)
    return rc;

  mbedtls_ctr_drbg_context drbg;
  mbedtls_pk_context key, ikey;
  mbedtls_x509_crt icrt;
  mbedtls_x509write_cert crt;
  mbedtls_mpi serial;
  unsigned char *buf = NULL;
  rng_src src = {p->entropy, p->entropy_ud};
  mbedtls_ctr_drbg_init(&drbg);
  mbedtls_pk_init(&key);
  mbedtls_pk_init(&ikey);
  mbedtls_x509_crt_init(&icrt);
  mbedtls_x509write_crt_init(&crt);
  mbedtls_mpi_init(&serial);

  buf = tunnel__malloc(mem, PEM_MAX);
  if (!buf) {
    rc = TUNNEL_ENOMEM;
    goto out;
  }
  if (mbedtls_ctr_drbg_seed(&drbg, entropy_cb, &src,
                            (const unsigned char *)"libtunnel certgen",
                            17) != 0) {
    rc = TUNNEL_ECRYPTO;
    goto out;
  }

  /* The issuer first: a bad one is the caller's mistake, reported before
   * any key is generated. */
  mbedtls_pk_context *signer = &key;
  if (p->issuer_cert_pem) {
    if (mbedtls_x509_crt_parse(&icrt,
                               (const unsigned char *)p->issuer_cert_pem,
                               strlen(p->issuer_cert_pem) + 1) != 0 ||
#if MBEDTLS_VERSION_MAJOR >= 3
        mbedtls_pk_parse_key(&ikey, (const unsigned char *)p->issuer_key_pem,
                             strlen(p->issuer_key_pem) + 1, NULL, 0,
                             mbedtls_ctr_drbg_random, &drbg) != 0 ||
        mbedtls_pk_check_pair(&icrt.pk, &ikey, mbedtls_ctr_drbg_random,
                              &drbg) != 0 ||
#else
        mbedtls_pk_parse_key(&ikey, (const unsigned char *)p->issuer_key_pem,
                             strlen(p->issuer_key_pem) + 1, NULL, 0) != 0 ||
        mbedtls_pk_check_pair(&icrt.pk, &ikey) != 0 ||
#endif
        mbedtls_x509_dn_gets(issuer, sizeof issuer, &icrt.subject) < 0) {
      rc = TUNNEL_ETLS;
      goto out;
    }
    signer = &ikey;
  } else {
    memcpy(issuer, subject, sizeof issuer);
  }

  if (mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) !=
          0 ||
      mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key),
                          mbedtls_ctr_drbg_random, &drbg) != 0) {
    rc = TUNNEL_ECRYPTO;
    goto out;
  }

  /* A positive 127-bit serial number (RFC 5280: at most 20 octets). */
  unsigned char sn[16];
  if (mbedtls_ctr_drbg_random(&drbg, sn, sizeof sn) != 0) {
    rc = TUNNEL_ECRYPTO;
    goto out;
  }
  sn[0] = (unsigned char)((sn[0] & 0x7f) | 0x40);

  int san_len = san_build(p, buf);
  if (san_len < 0) {
    rc = TUNNEL_EINVAL; /* names too long for SAN_MAX */
    goto out;
  }
  unsigned usage = p->is_ca ? MBEDTLS_X509_KU_KEY_CERT_SIGN |
                                  MBEDTLS_X509_KU_CRL_SIGN |
                                  MBEDTLS_X509_KU_DIGITAL_SIGNATURE
                            : MBEDTLS_X509_KU_DIGITAL_SIGNATURE;
  mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(&crt, &key);
  mbedtls_x509write_crt_set_issuer_key(&crt, signer);
  int ret =
#if MBEDTLS_VERSION_NUMBER >= 0x03040000
      mbedtls_x509write_crt_set_serial_raw(&crt, sn, sizeof sn);
#else
      mbedtls_mpi_read_binary(&serial, sn, sizeof sn);
  if (!ret)
    ret = mbedtls_x509write_crt_set_serial(&crt, &serial);
#endif
  if (!ret)
    ret = mbedtls_x509write_crt_set_subject_name(&crt, subject);
  if (!ret)
    ret = mbedtls_x509write_crt_set_issuer_name(&crt, issuer);
  if (!ret)
    ret = mbedtls_x509write_crt_set_validity(&crt, p->not_before, p->not_after);
  if (!ret)
    ret = mbedtls_x509write_crt_set_basic_constraints(&crt, p->is_ca ? 1 : 0,
                                                      p->is_ca ? 0 : -1);
  if (!ret)
    ret = mbedtls_x509write_crt_set_key_usage(&crt, usage);
  if (!ret)
    ret = mbedtls_x509write_crt_set_subject_key_identifier(&crt);
  if (!ret)
    ret = mbedtls_x509write_crt_set_authority_key_identifier(&crt);
  if (!ret && san_len > 0)
    ret = mbedtls_x509write_crt_set_extension(
        &crt, MBEDTLS_OID_SUBJECT_ALT_NAME,
        MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
        buf + SAN_MAX - san_len, (size_t)san_len);
  if (ret) {
    /* Bad dates or names: mbedTLS parses both. */
    rc = ret == MBEDTLS_ERR_X509_ALLOC_FAILED ? TUNNEL_ENOMEM : TUNNEL_EINVAL;
    goto out;
  }
  if (mbedtls_x509write_crt_pem(&crt, buf, PEM_MAX, mbedtls_ctr_drbg_random,
                                &drbg) != 0) {
    rc = TUNNEL_ECRYPTO;
    goto out;
  }
  *cert_pem = dup_pem(mem, buf);
  if (!*cert_pem) {
    rc = TUNNEL_ENOMEM;
    goto out;
  }
  if (mbedtls_pk_write_key_pem(&key, buf, PEM_MAX) != 0) {
    rc = TUNNEL_ECRYPTO;
    goto out;
  }
  *key_pem = dup_pem(mem, buf);
  rc = *key_pem ? 0 : TUNNEL_ENOMEM;

out:
  if (rc && cert_pem && *cert_pem) {
    tunnel__free(mem, *cert_pem);
    *cert_pem = NULL;
  }
  if (buf) {
    tunnel__wipe(buf, PEM_MAX);
    tunnel__free(mem, buf);
  }
  mbedtls_mpi_free(&serial);
  mbedtls_x509write_crt_free(&crt);
  mbedtls_x509_crt_free(&icrt);
  mbedtls_pk_free(&ikey);
  mbedtls_pk_free(&key);
  mbedtls_ctr_drbg_free(&drbg);
  return rc;
}
