/* libuv error codes mapped to ours: foreign codes never leak through the
 * public API. */
#ifndef TUNNEL_LIB_UV_UVERR_H
#define TUNNEL_LIB_UV_UVERR_H

int tunnel__uv_err(int uv_status);

#endif
