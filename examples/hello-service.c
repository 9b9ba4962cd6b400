/* hello-service: a tiny local HTTP service for the demo. Answers every
 * connection with one greeting and closes. Prints its address on stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

static const char reply[] = "HTTP/1.0 200 OK\r\n"
                            "Content-Type: text/plain\r\n"
                            "Content-Length: 29\r\n"
                            "\r\n"
                            "Hello from behind the tunnel\n";

typedef struct {
  uv_tcp_t tcp;
  uv_write_t wr;
  char buf[1024];
  int answered;
} conn;

static void closed(uv_handle_t *h) { free(h); }

static void written(uv_write_t *w, int status) {
  (void)status;
  uv_close((uv_handle_t *)w->handle, closed);
}

static void alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)hint;
  conn *c = (conn *)h;
  *b = uv_buf_init(c->buf, sizeof c->buf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  conn *c = (conn *)s;
  (void)b;
  if (n < 0) {
    if (!c->answered)
      uv_close((uv_handle_t *)s, closed);
    return;
  }
  /* Answer once the request head is in (or on the first bytes of it). */
  if (n > 0 && !c->answered) {
    c->answered = 1;
    uv_read_stop(s);
    uv_buf_t out = uv_buf_init((char *)reply, sizeof reply - 1);
    uv_write(&c->wr, s, &out, 1, written);
  }
}

static void on_conn(uv_stream_t *l, int status) {
  if (status < 0)
    return;
  conn *c = calloc(1, sizeof *c);
  if (!c)
    return;
  uv_tcp_init(l->loop, &c->tcp);
  if (uv_accept(l, (uv_stream_t *)&c->tcp) == 0)
    uv_read_start((uv_stream_t *)&c->tcp, alloc, on_read);
  else
    uv_close((uv_handle_t *)&c->tcp, closed);
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t l;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  uv_tcp_init(loop, &l);
  int rc = uv_tcp_bind(&l, (struct sockaddr *)&a, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&l, 128, on_conn);
  if (rc) {
    fprintf(stderr, "hello-service: %s\n", uv_strerror(rc));
    return 1;
  }
  int len = sizeof a;
  uv_tcp_getsockname(&l, (struct sockaddr *)&a, &len);
  printf("127.0.0.1:%d\n", ntohs(a.sin_port));
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}
