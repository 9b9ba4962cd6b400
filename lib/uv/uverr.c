#include "uverr.h"

#include <uv.h>

#include "tunnel/tunnel.h"

int tunnel__uv_err(int s) {
  switch (s) {
  case 0:
    return 0;
  case UV_ENOMEM:
  case UV_ENOBUFS:
    return TUNNEL_ENOMEM;
  case UV_EINVAL:
    return TUNNEL_EINVAL;
  case UV_ECONNREFUSED:
    return TUNNEL_ECONNREFUSED;
  case UV_ECONNRESET:
  case UV_EPIPE:
  case UV_ECONNABORTED:
    return TUNNEL_ECONNRESET;
  case UV_ETIMEDOUT:
    return TUNNEL_ETIMEDOUT;
  case UV_EADDRINUSE:
    return TUNNEL_EADDRINUSE;
  case UV_EADDRNOTAVAIL:
  case UV_EAFNOSUPPORT:
    return TUNNEL_EADDRNOTAVAIL;
  case UV_ECANCELED:
    return TUNNEL_ECANCELED;
  case UV_EOF:
    return TUNNEL_EEOF;
  case UV_EACCES:
  case UV_EPERM:
    return TUNNEL_EREFUSED;
  case UV_ENOTSUP:
  case UV_ENOSYS:
    return TUNNEL_ENOTSUP;
  case UV_EAI_NONAME:
  case UV_EAI_NODATA:
  case UV_EAI_FAIL:
  case UV_EAI_AGAIN:
  case UV_ENOENT:
    return TUNNEL_ENOTFOUND;
  case UV_EMFILE:
  case UV_ENFILE:
    return TUNNEL_EMFILE;
  case UV_EBUSY:
  case UV_EALREADY:
    return TUNNEL_ESTATE;
  default:
    return TUNNEL_EIO;
  }
}
