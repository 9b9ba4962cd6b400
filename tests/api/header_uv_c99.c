/* <tunnel/uv.h> under strict C99. libuv's own header needs POSIX types
 * (pthread_rwlock_t), hence the feature macro, as for any libuv program. */
#define _POSIX_C_SOURCE 200809L
#include <tunnel/uv.h>
#include <tunnel/uv.h> /* include guards */

int main(void) {
  /* NULL handles are refused, never dereferenced. */
  if (tunnel_stream_write_queue_size(NULL) != 0)
    return 1;
  if (tunnel_server_client_count(NULL) != 0)
    return 1;
  return tunnel_proxy_name(NULL) == NULL ? 0 : 1;
}
