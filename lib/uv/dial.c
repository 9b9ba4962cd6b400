#include "dial.h"

#include <stdio.h>
#include <string.h>

#include "tunnel/tunnel.h"
#include "uverr.h"

struct tunnel__dial {
  uv_getaddrinfo_t gai;
  uv_connect_t conn;
  uv_loop_t *loop;
  const tunnel__mem *mem;
  uv_tcp_t *tcp;
  tunnel__dial_cb cb;
  void *ud;
  struct addrinfo *res;  /* resolver results */
  struct addrinfo *next; /* next address to try */
  uint16_t port;
  int canceled;
  int pending; /* requests in flight */
};

int tunnel__parse_addr(const char *host, uint16_t port,
                       struct sockaddr_storage *out) {
  memset(out, 0, sizeof *out);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0)
    return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) == 0)
    return 0;
  return TUNNEL_EINVAL;
}

void tunnel__format_addr(const struct sockaddr *sa, char *host, size_t hlen,
                         uint16_t *port) {
  host[0] = '\0';
  *port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    uv_ip4_name(in, host, hlen);
    *port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(in6, host, hlen);
    *port = ntohs(in6->sin6_port);
  }
}

static void finish(tunnel__dial *d, int status) {
  if (d->pending)
    return;
  if (d->res)
    uv_freeaddrinfo(d->res);
  d->res = NULL;
  tunnel__dial_cb cb = d->canceled ? NULL : d->cb;
  void *ud = d->ud;
  tunnel__free(d->mem, d);
  if (cb)
    cb(d, status, ud);
}

static void connect_cb(uv_connect_t *req, int status);

static int try_next(tunnel__dial *d) {
  while (d->next) {
    struct addrinfo *ai = d->next;
    d->next = ai->ai_next;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
      continue;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    ((struct sockaddr_in *)&ss)->sin_port = htons(d->port);
    int rc = uv_tcp_connect(&d->conn, d->tcp, (struct sockaddr *)&ss,
                            connect_cb);
    if (rc == 0) {
      d->pending++;
      return 0;
    }
  }
  return TUNNEL_ECONNREFUSED;
}

static void connect_cb(uv_connect_t *req, int status) {
  tunnel__dial *d = req->data;
  d->pending--;
  if (status == 0 || d->canceled || status == UV_ECANCELED) {
    finish(d, tunnel__uv_err(status));
    return;
  }
  /* A failed connect leaves the handle reusable for the next address only
   * on some platforms; Linux allows it. */
  if (d->next && try_next(d) == 0)
    return;
  finish(d, tunnel__uv_err(status));
}

static void resolved_cb(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  tunnel__dial *d = req->data;
  d->pending--;
  d->res = res;
  d->next = res;
  if (d->canceled) {
    finish(d, TUNNEL_ECANCELED);
    return;
  }
  if (status) {
    finish(d, tunnel__uv_err(status));
    return;
  }
  int rc = try_next(d);
  if (rc)
    finish(d, rc);
}

int tunnel__dial_start(tunnel__dial **out, uv_loop_t *loop,
                       const tunnel__mem *mem, uv_tcp_t *tcp,
                       const char *host, uint16_t port, tunnel__dial_cb cb,
                       void *ud) {
  if (!host || !*host || port == 0)
    return TUNNEL_EINVAL;
  tunnel__dial *d = tunnel__calloc(mem, 1, sizeof *d);
  if (!d)
    return TUNNEL_ENOMEM;
  d->loop = loop;
  d->mem = mem;
  d->tcp = tcp;
  d->cb = cb;
  d->ud = ud;
  d->port = port;
  d->gai.data = d;
  d->conn.data = d;
  struct sockaddr_storage ss;
  int rc;
  if (tunnel__parse_addr(host, port, &ss) == 0) {
    rc = tunnel__uv_err(
        uv_tcp_connect(&d->conn, tcp, (struct sockaddr *)&ss, connect_cb));
  } else {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = tunnel__uv_err(
        uv_getaddrinfo(loop, &d->gai, resolved_cb, host, NULL, &hints));
  }
  if (rc) {
    tunnel__free(mem, d);
    return rc;
  }
  d->pending = 1;
  if (out)
    *out = d;
  return 0;
}

void tunnel__dial_cancel(tunnel__dial *d) {
  if (!d)
    return;
  d->canceled = 1;
  uv_cancel((uv_req_t *)&d->gai);
}
