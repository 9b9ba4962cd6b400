/* Closing handles nobody else owns. */
#ifndef TUNNEL_LIB_UV_HANDLE_H
#define TUNNEL_LIB_UV_HANDLE_H

#include <uv.h>

#include "../mem.h"

/* Closes `tcp` (allocated with `mem`) and frees it once libuv is done. */
void tunnel__tcp_close_free(const tunnel__mem *mem, uv_tcp_t *tcp);

#endif
