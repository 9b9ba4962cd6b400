#include "tlsconf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "uverr.h"

/* Where Debian, Fedora, Alpine and the BSDs keep the bundle. */
static const char *const ca_paths[] = {
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
};

#define CA_BUNDLE_MAX (16u * 1024u * 1024u)

static int entropy(void *ud, uint8_t *out, size_t n) {
  (void)ud;
  return tunnel__uv_err(uv_random(NULL, NULL, out, n, 0, NULL));
}

/* The bundle, NUL-terminated (mbedTLS parses PEM only so), or NULL. */
static uint8_t *read_bundle(const tunnel__mem *mem, size_t *len) {
  const char *env = getenv("SSL_CERT_FILE");
  size_t npaths = sizeof ca_paths / sizeof ca_paths[0];
  for (size_t i = env && *env ? 0 : 1; i <= npaths; i++) {
    const char *path = i == 0 ? env : ca_paths[i - 1];
    FILE *f = fopen(path, "rb");
    if (!f)
      continue;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
      if (n + 65536 + 1 > cap) {
        size_t ncap = cap ? cap * 2 : 256u * 1024u;
        uint8_t *nb = ncap <= CA_BUNDLE_MAX ? tunnel__realloc(mem, buf, ncap)
                                            : NULL;
        if (!nb)
          break;
        buf = nb;
        cap = ncap;
      }
      size_t got = fread(buf + n, 1, cap - n - 1, f);
      n += got;
      if (got == 0)
        break;
    }
    int ok = buf && !ferror(f) && feof(f) && n > 0;
    fclose(f);
    if (ok) {
      buf[n] = 0;
      *len = n + 1;
      return buf;
    }
    tunnel__free(mem, buf);
  }
  return NULL;
}

int tunnel__tlsconf_wanted(const struct tunnel_config *cfg, int is_server) {
  return cfg->tls.enabled || (is_server && cfg->tls.cert.data);
}

int tunnel__tlsconf_new(tunnel__tls_conf **out,
                        const struct tunnel_config *cfg, tunnel__logger *log,
                        int is_server) {
  *out = NULL;
  const tunnel__tls_settings *s = &cfg->tls;
  size_t ca_len = 0;
  uint8_t *ca = NULL;
  if (!is_server && !s->ca.data && !s->has_pin && !s->insecure) {
    ca = read_bundle(&cfg->mem, &ca_len);
    if (!ca) {
      tunnel__log(log, TUNNEL_LOG_ERROR,
                  "tls: no CA bundle found (set SSL_CERT_FILE, a CA file, "
                  "or a pin)");
      return TUNNEL_ETLS;
    }
  }
  uv_timeval64_t tv;
  uint64_t now = uv_gettimeofday(&tv) == 0 && tv.tv_sec > 0
                     ? (uint64_t)tv.tv_sec
                     : 0;
  tunnel__tls_conf_params p = {0};
  p.is_server = is_server;
  p.mem = &cfg->mem;
  p.entropy = entropy;
  p.settings = s;
  p.system_ca = ca;
  p.system_ca_len = ca_len;
  p.log = log;
  p.now_s = now;
  char err[256] = "";
  int rc = tunnel__tls_conf_new(out, &p, err, sizeof err);
  tunnel__free(&cfg->mem, ca);
  if (rc)
    tunnel__log(log, TUNNEL_LOG_ERROR, "tls: %s",
                *err ? err : tunnel_strerror(rc));
  return rc == TUNNEL_ENOMEM ? rc : rc ? TUNNEL_ETLS : 0;
}
