/* The TLS configuration of a client or server, built from tunnel_config
 * with what only the glue has: the OS's entropy, the wall clock and the
 * system's CA bundle. */
#ifndef TUNNEL_LIB_UV_TLSCONF_H
#define TUNNEL_LIB_UV_TLSCONF_H

#include "../config.h"
#include "../tls.h"

/* Whether `cfg` asks for TLS in that role (a server with a certificate
 * always does). */
int tunnel__tlsconf_wanted(const struct tunnel_config *cfg, int is_server);
/* Builds the conf; on failure logs why through cfg's logger and returns
 * TUNNEL_ETLS (or TUNNEL_ENOMEM). `log` must outlive the conf. */
int tunnel__tlsconf_new(tunnel__tls_conf **out,
                        const struct tunnel_config *cfg, tunnel__logger *log,
                        int is_server);

#endif
