#include "tunnel/tunnel.h"

uint32_t tunnel_version(void) { return TUNNEL_VERSION_HEX; }

const char *tunnel_version_string(void) { return TUNNEL_VERSION_STRING; }
