// The public headers must be usable from C++ (extern "C", no C-only syntax).
#include <tunnel/tunnel.h>
#include <tunnel/engine.h>
#include <tunnel/uv.h>

#include <cstring>

int main() {
  tunnel_config *cfg = nullptr;
  if (tunnel_config_new(&cfg) != 0)
    return 1;
  int rc = tunnel_config_set_max_streams(cfg, 0) == TUNNEL_ERANGE ? 0 : 1;
  tunnel_config_free(cfg);
  if (std::strcmp(tunnel_err_name(TUNNEL_ENOMEM), "TUNNEL_ENOMEM") != 0)
    return 1;
  return rc;
}
