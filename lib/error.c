#include "tunnel/tunnel.h"

const char *tunnel_strerror(int err) {
  switch (err) {
  case TUNNEL_OK:
    return "success";
#define TUNNEL__ERR_DESC(name, value, desc)                                    \
  case TUNNEL_##name:                                                          \
    return desc;
    TUNNEL_ERRNO_MAP(TUNNEL__ERR_DESC)
#undef TUNNEL__ERR_DESC
  default:
    return "unknown error";
  }
}

const char *tunnel_err_name(int err) {
  switch (err) {
  case TUNNEL_OK:
    return "TUNNEL_OK";
#define TUNNEL__ERR_NAME(name, value, desc)                                    \
  case TUNNEL_##name:                                                          \
    return "TUNNEL_" #name;
    TUNNEL_ERRNO_MAP(TUNNEL__ERR_NAME)
#undef TUNNEL__ERR_NAME
  default:
    return "TUNNEL_EUNKNOWN";
  }
}
