/* Built against an installed tree with pkg-config only. */
#include <tunnel/tunnel.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  tunnel_config *cfg;
  if (tunnel_config_new(&cfg) != 0)
    return 1;
  tunnel_config_free(cfg);
  printf("libtunnel %s\n", tunnel_version_string());
  return strcmp(tunnel_version_string(), TUNNEL_VERSION_STRING) != 0;
}
