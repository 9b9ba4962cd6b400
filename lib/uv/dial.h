/* Resolves a host (numeric addresses skip the resolver) and connects a TCP
 * handle to it, trying each address in turn. */
#ifndef TUNNEL_LIB_UV_DIAL_H
#define TUNNEL_LIB_UV_DIAL_H

#include <uv.h>

#include "../mem.h"

typedef struct tunnel__dial tunnel__dial;
/* status 0: `tcp` is connected. Called exactly once unless canceled. */
typedef void (*tunnel__dial_cb)(tunnel__dial *d, int status, void *ud);

/* `tcp` must be initialised and must stay open until the callback (or
 * until tunnel__dial_cancel, after which the owner may close it). */
int tunnel__dial_start(tunnel__dial **out, uv_loop_t *loop,
                       const tunnel__mem *mem, uv_tcp_t *tcp,
                       const char *host, uint16_t port, tunnel__dial_cb cb,
                       void *ud);
/* The callback will not be called; the dial frees itself when its pending
 * requests finish. */
void tunnel__dial_cancel(tunnel__dial *d);

/* Parses a numeric IPv4/IPv6 address. */
int tunnel__parse_addr(const char *host, uint16_t port,
                       struct sockaddr_storage *out);
/* Formats the numeric address and port of `sa`. */
void tunnel__format_addr(const struct sockaddr *sa, char *host, size_t hlen,
                         uint16_t *port);

#endif
