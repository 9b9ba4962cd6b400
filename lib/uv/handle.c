#include "handle.h"

static void closed(uv_handle_t *h) {
  tunnel__mem *mem = h->data;
  tunnel__free(mem, h);
  tunnel__free(mem, mem);
}

void tunnel__tcp_close_free(const tunnel__mem *mem, uv_tcp_t *tcp) {
  /* The close callback needs the allocator; the handle's data field is the
   * only place to keep it. */
  tunnel__mem *copy = tunnel__malloc(mem, sizeof *copy);
  if (!copy) {
    /* Leak the handle rather than free memory libuv still uses. */
    uv_close((uv_handle_t *)tcp, NULL);
    return;
  }
  *copy = *mem;
  tcp->data = copy;
  uv_close((uv_handle_t *)tcp, closed);
}
