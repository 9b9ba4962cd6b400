/* TLS settings of tunnel_config: PEM buffers, pin, flags. Files are read
 * when set, so errors surface at the call that named the file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

/* Certificates and keys are small; a larger file is not one. */
#define TLS_FILE_MAX (1024u * 1024u)

static void blob_release(tunnel__blob *b, const tunnel__mem *mem, int wipe) {
  if (b->data && wipe)
    tunnel__wipe(b->data, b->len);
  tunnel__free(mem, b->data);
  b->data = NULL;
  b->len = 0;
}

/* Copies `len` bytes and appends a NUL (mbedTLS wants PEM NUL-terminated). */
static int blob_set(tunnel__blob *b, const tunnel__mem *mem,
                    const uint8_t *data, size_t len) {
  if (len >= TLS_FILE_MAX)
    return TUNNEL_ELIMIT;
  uint8_t *copy = tunnel__malloc(mem, len + 1);
  if (!copy)
    return TUNNEL_ENOMEM;
  if (len)
    memcpy(copy, data, len);
  copy[len] = 0;
  b->data = copy;
  b->len = len + 1;
  return 0;
}

static int blob_read_file(tunnel__blob *b, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return errno == ENOENT ? TUNNEL_ENOTFOUND : TUNNEL_EIO;
  uint8_t *buf = malloc(TLS_FILE_MAX);
  size_t n = buf ? fread(buf, 1, TLS_FILE_MAX, f) : 0;
  int rc = !buf ? TUNNEL_ENOMEM
           : ferror(f) ? TUNNEL_EIO
           : n == TLS_FILE_MAX ? TUNNEL_ELIMIT
                               : blob_set(b, tunnel__mem_default(), buf, n);
  fclose(f);
  if (buf) {
    tunnel__wipe(buf, n);
    free(buf);
  }
  return rc;
}

int tunnel__tls_settings_copy(tunnel__tls_settings *dst,
                              const tunnel__tls_settings *src,
                              const tunnel__mem *mem) {
  *dst = *src;
  dst->ca.data = dst->cert.data = dst->key.data = NULL;
  dst->server_name = NULL;
  if ((src->ca.data && blob_set(&dst->ca, mem, src->ca.data, src->ca.len - 1)) ||
      (src->cert.data &&
       blob_set(&dst->cert, mem, src->cert.data, src->cert.len - 1)) ||
      (src->key.data &&
       blob_set(&dst->key, mem, src->key.data, src->key.len - 1)) ||
      (src->server_name &&
       !(dst->server_name = tunnel__strdup(mem, src->server_name)))) {
    tunnel__tls_settings_release(dst, mem);
    return TUNNEL_ENOMEM;
  }
  return 0;
}

void tunnel__tls_settings_release(tunnel__tls_settings *s,
                                  const tunnel__mem *mem) {
  blob_release(&s->ca, mem, 0);
  blob_release(&s->cert, mem, 0);
  blob_release(&s->key, mem, 1);
  tunnel__free(mem, s->server_name);
  s->server_name = NULL;
  tunnel__wipe(s->pin, sizeof s->pin);
}

int tunnel_config_set_tls(tunnel_config *cfg, int enabled) {
  if (!cfg)
    return TUNNEL_EINVAL;
  cfg->tls.enabled = enabled ? 1 : 0;
  return 0;
}

int tunnel_config_set_tls_ca(tunnel_config *cfg, const uint8_t *pem,
                             size_t len) {
  if (!cfg || (!pem && len))
    return TUNNEL_EINVAL;
  tunnel__blob b = {NULL, 0};
  int rc = pem ? blob_set(&b, tunnel__mem_default(), pem, len) : 0;
  if (rc)
    return rc;
  blob_release(&cfg->tls.ca, tunnel__mem_default(), 0);
  cfg->tls.ca = b;
  return 0;
}

int tunnel_config_set_tls_ca_file(tunnel_config *cfg, const char *path) {
  if (!cfg || !path)
    return TUNNEL_EINVAL;
  tunnel__blob b = {NULL, 0};
  int rc = blob_read_file(&b, path);
  if (rc)
    return rc;
  blob_release(&cfg->tls.ca, tunnel__mem_default(), 0);
  cfg->tls.ca = b;
  return 0;
}

int tunnel_config_set_tls_cert(tunnel_config *cfg, const uint8_t *cert_pem,
                               size_t cert_len, const uint8_t *key_pem,
                               size_t key_len) {
  if (!cfg || (!cert_pem != !key_pem))
    return TUNNEL_EINVAL;
  tunnel__blob c = {NULL, 0}, k = {NULL, 0};
  const tunnel__mem *mem = tunnel__mem_default();
  int rc = 0;
  if (cert_pem && ((rc = blob_set(&c, mem, cert_pem, cert_len)) != 0 ||
                   (rc = blob_set(&k, mem, key_pem, key_len)) != 0)) {
    blob_release(&c, mem, 0);
    return rc;
  }
  blob_release(&cfg->tls.cert, mem, 0);
  blob_release(&cfg->tls.key, mem, 1);
  cfg->tls.cert = c;
  cfg->tls.key = k;
  return 0;
}

int tunnel_config_set_tls_cert_file(tunnel_config *cfg, const char *cert_path,
                                    const char *key_path) {
  if (!cfg || !cert_path || !key_path)
    return TUNNEL_EINVAL;
  const tunnel__mem *mem = tunnel__mem_default();
  tunnel__blob c = {NULL, 0}, k = {NULL, 0};
  int rc = blob_read_file(&c, cert_path);
  if (rc == 0 && (rc = blob_read_file(&k, key_path)) != 0)
    blob_release(&c, mem, 0);
  if (rc)
    return rc;
  blob_release(&cfg->tls.cert, mem, 0);
  blob_release(&cfg->tls.key, mem, 1);
  cfg->tls.cert = c;
  cfg->tls.key = k;
  return 0;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

int tunnel__tls_parse_pin(const char *s, uint8_t out[32]) {
  size_t n = 0;
  int hi = -1;
  for (; *s; s++) {
    if (*s == ':')
      continue;
    int v = hexval(*s);
    if (v < 0 || n == 32)
      return TUNNEL_EINVAL;
    if (hi < 0) {
      hi = v;
    } else {
      out[n++] = (uint8_t)(hi << 4 | v);
      hi = -1;
    }
  }
  return n == 32 && hi < 0 ? 0 : TUNNEL_EINVAL;
}

int tunnel_config_set_tls_pin(tunnel_config *cfg, const char *fingerprint) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (!fingerprint) {
    cfg->tls.has_pin = 0;
    memset(cfg->tls.pin, 0, sizeof cfg->tls.pin);
    return 0;
  }
  uint8_t pin[32];
  if (tunnel__tls_parse_pin(fingerprint, pin) != 0)
    return TUNNEL_EINVAL;
  memcpy(cfg->tls.pin, pin, sizeof pin);
  cfg->tls.has_pin = 1;
  return 0;
}

int tunnel_config_set_tls_insecure(tunnel_config *cfg, int insecure) {
  if (!cfg)
    return TUNNEL_EINVAL;
  cfg->tls.insecure = insecure ? 1 : 0;
  return 0;
}

int tunnel_config_set_tls_server_name(tunnel_config *cfg, const char *name) {
  if (!cfg)
    return TUNNEL_EINVAL;
  if (name && (!*name || strlen(name) > 253))
    return TUNNEL_EINVAL;
  char *copy = name ? tunnel__strdup(tunnel__mem_default(), name) : NULL;
  if (name && !copy)
    return TUNNEL_ENOMEM;
  free(cfg->tls.server_name);
  cfg->tls.server_name = copy;
  return 0;
}

int tunnel_config_set_tls_marker(tunnel_config *cfg, int enabled) {
  if (!cfg)
    return TUNNEL_EINVAL;
  cfg->tls.marker = enabled ? 1 : 0;
  return 0;
}

int tunnel_config_set_tls_only(tunnel_config *cfg, int only) {
  if (!cfg)
    return TUNNEL_EINVAL;
  cfg->tls.only = only ? 1 : 0;
  return 0;
}
