/* Compiled as C99 with -pedantic-errors: the public headers must stay
 * portable to strict consumers and binding generators. */
#include <tunnel/tunnel.h>
#include <tunnel/tunnel.h> /* include guards */
#include <tunnel/engine.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  if (tunnel_version() != TUNNEL_VERSION_HEX)
    return 1;
  if (strcmp(tunnel_version_string(), TUNNEL_VERSION_STRING) != 0)
    return 1;
  if (strcmp(tunnel_err_name(TUNNEL_EPROTO), "TUNNEL_EPROTO") != 0)
    return 1;
  printf("%s\n", tunnel_strerror(TUNNEL_EINVAL));
  return 0;
}
