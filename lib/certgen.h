/*
 * X.509 certificate generation (mbedTLS), sans-I/O: an EC P-256 key and a
 * certificate for it, self-signed or signed by a given CA. The caller
 * supplies the validity window (no clock here) and the entropy source.
 */
#ifndef TUNNEL_LIB_CERTGEN_H
#define TUNNEL_LIB_CERTGEN_H

#include <stddef.h>
#include <stdint.h>

#include "mem.h"
#include "tls.h"

/* One iPAddress subjectAltName: 4 (IPv4) or 16 (IPv6) bytes, network order. */
typedef struct tunnel__certgen_ip {
  uint8_t addr[16];
  uint8_t len;
} tunnel__certgen_ip;

typedef struct tunnel__certgen_params {
  const tunnel__mem *mem; /* for the returned PEM strings; NULL: libc */
  tunnel__tls_entropy_fn entropy; /* key and serial number */
  void *entropy_ud;
  const char *cn;                 /* subject CN; required */
  const char *const *dns;         /* DNS subjectAltNames */
  size_t n_dns;
  const tunnel__certgen_ip *ips;  /* iPAddress subjectAltNames */
  size_t n_ips;
  int is_ca;                      /* basicConstraints CA:TRUE (and keyCertSign) */
  const char *not_before;         /* "YYYYMMDDhhmmss", UTC */
  const char *not_after;
  /* Issuer: both NULL for self-signed, else PEM, NUL-terminated. */
  const char *issuer_cert_pem;
  const char *issuer_key_pem;
} tunnel__certgen_params;

/* Generates the key and certificate as NUL-terminated PEM strings allocated
 * with p->mem; the caller frees both and wipes the key (tunnel__wipe over
 * strlen + 1) first. Errors: TUNNEL_EINVAL (params: missing CN, bad IP
 * length, malformed dates), TUNNEL_ENOMEM, TUNNEL_ECRYPTO (entropy, key
 * generation or signing failed), TUNNEL_ETLS (issuer cert or key unparsable
 * or not a pair). */
int tunnel__certgen(const tunnel__certgen_params *p, char **cert_pem,
                    char **key_pem);

/* Formats `t` seconds since the epoch (UTC) as "YYYYMMDDhhmmss" for the
 * dates above; years past 9999 are clamped to 99991231235959. */
void tunnel__certgen_time(uint64_t t, char out[15]);

#endif
