/* httpd: a small, fast keep-alive HTTP/1.1 server for bench/run.sh (libuv,
 * one thread), the service behind every path of the HTTP benchmark.
 *
 *   httpd [PORT]
 *       Serves 127.0.0.1:PORT (0 or none: any free port) and prints
 *       "listening on 127.0.0.1:PORT" on stdout.
 *
 * Every request gets "200 OK" with the same 13-byte text body. Requests
 * may be pipelined; they are answered in order, all the answers to one
 * read in one write. A Content-Length body is read and dropped. The
 * connection stays open (HTTP/1.1, or HTTP/1.0 with "Connection:
 * keep-alive") unless the request says "Connection: close". Anything it
 * cannot frame (chunked bodies, a head over 16 KiB, no HTTP version) gets
 * 400 and the connection is closed.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

#define BUF_CAP (16 * 1024)

static const char ok_resp[] = "HTTP/1.1 200 OK\r\n"
                              "Content-Type: text/plain\r\n"
                              "Content-Length: 13\r\n"
                              "\r\n"
                              "Hello, world\n";
static const char close_hdr[] = "Connection: close\r\n";
static const char bad_resp[] = "HTTP/1.1 400 Bad Request\r\n"
                               "Content-Length: 0\r\n"
                               "Connection: close\r\n"
                               "\r\n";

typedef struct {
  uv_tcp_t tcp;
  size_t len;      /* bytes in buf */
  size_t skip;     /* body bytes still to drop */
  int closing;     /* close once the queued writes are done */
  int writes;      /* writes in flight */
  char buf[BUF_CAP];
} hconn;

typedef struct {
  uv_write_t req;
  hconn *c;
  uv_buf_t b;
  char data[];
} hwrite;

static void h_closed(uv_handle_t *h) { free(h); }

static void h_close(hconn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, h_closed);
}

static void h_written(uv_write_t *req, int status) {
  hwrite *w = req->data;
  hconn *c = w->c;
  free(w);
  c->writes--;
  if (status != 0 || (c->closing && c->writes == 0))
    h_close(c);
}

/* Sends out[0..n): what the socket takes now, the rest queued. */
static void h_send(hconn *c, const char *out, size_t n) {
  uv_buf_t b = uv_buf_init((char *)out, (unsigned)n);
  int done = c->writes ? 0 : uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (done < 0)
    done = 0;
  if ((size_t)done == n) {
    if (c->closing && c->writes == 0)
      h_close(c);
    return;
  }
  hwrite *w = malloc(sizeof *w + n - (size_t)done);
  if (!w) {
    h_close(c);
    return;
  }
  memcpy(w->data, out + done, n - (size_t)done);
  w->c = c;
  w->req.data = w;
  w->b = uv_buf_init(w->data, (unsigned)(n - (size_t)done));
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->b, 1, h_written) != 0) {
    free(w);
    h_close(c);
    return;
  }
  c->writes++;
}

/* The value of header `name` in head[0..len), or NULL; *vlen its length. */
static const char *header(const char *head, size_t len, const char *name,
                          size_t *vlen) {
  size_t nl = strlen(name);
  const char *end = head + len;
  const char *p = memchr(head, '\n', len);
  while (p && p + 1 < end) {
    const char *line = p + 1;
    const char *eol = memchr(line, '\n', (size_t)(end - line));
    if (!eol)
      break;
    if ((size_t)(eol - line) > nl && line[nl] == ':' &&
        strncasecmp(line, name, nl) == 0) {
      const char *v = line + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t'))
        v++;
      const char *ve = eol;
      while (ve > v && isspace((unsigned char)ve[-1]))
        ve--;
      *vlen = (size_t)(ve - v);
      return v;
    }
    p = eol;
  }
  return NULL;
}

static void h_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)hint;
  hconn *c = (hconn *)h;
  *b = uv_buf_init(c->buf + c->len, (unsigned)(BUF_CAP - c->len));
}

static void h_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
  hconn *c = (hconn *)s;
  (void)b;
  if (nread < 0) {
    h_close(c);
    return;
  }
  if (nread == 0 || c->closing)
    return;
  c->len += (size_t)nread;
  /* Answers to every complete request of this read, sent together. */
  char out[64 * (sizeof ok_resp + sizeof close_hdr)];
  size_t on = 0;
  size_t pos = 0;
  for (;;) {
    if (c->skip) {
      size_t k = c->len - pos < c->skip ? c->len - pos : c->skip;
      c->skip -= k;
      pos += k;
      if (c->skip)
        break;
    }
    const char *head = c->buf + pos;
    size_t avail = c->len - pos;
    const char *e = NULL;
    for (size_t i = 0; i + 4 <= avail && !e; i++)
      if (memcmp(head + i, "\r\n\r\n", 4) == 0)
        e = head + i;
    if (!e) {
      if (avail == BUF_CAP) { /* a head that does not fit */
        c->closing = 1;
        h_send(c, bad_resp, sizeof bad_resp - 1);
        return;
      }
      break;
    }
    size_t hl = (size_t)(e + 4 - head);
    const char *le = memchr(head, '\n', hl);
    int http10 = le - head >= 9 && memcmp(le - 9, "HTTP/1.0", 8) == 0;
    int http11 = le - head >= 9 && memcmp(le - 9, "HTTP/1.1", 8) == 0;
    size_t vl;
    const char *te = header(head, hl, "Transfer-Encoding", &vl);
    if ((!http10 && !http11) || te) {
      c->closing = 1;
      h_send(c, bad_resp, sizeof bad_resp - 1);
      return;
    }
    const char *cl = header(head, hl, "Content-Length", &vl);
    if (cl)
      c->skip = strtoul(cl, NULL, 10);
    const char *conn = header(head, hl, "Connection", &vl);
    int close_after = http10 ? !(conn && vl == 10 &&
                                 strncasecmp(conn, "keep-alive", 10) == 0)
                             : (conn && vl == 5 &&
                                strncasecmp(conn, "close", 5) == 0);
    pos += hl;
    if (close_after) {
      /* The status line, then Connection: close, then the rest. */
      size_t sl = sizeof "HTTP/1.1 200 OK\r\n" - 1;
      memcpy(out + on, ok_resp, sl);
      memcpy(out + on + sl, close_hdr, sizeof close_hdr - 1);
      memcpy(out + on + sl + sizeof close_hdr - 1, ok_resp + sl,
             sizeof ok_resp - 1 - sl);
      on += sizeof ok_resp - 1 + sizeof close_hdr - 1;
      c->closing = 1;
      break;
    }
    memcpy(out + on, ok_resp, sizeof ok_resp - 1);
    on += sizeof ok_resp - 1;
    if (on + sizeof ok_resp + sizeof close_hdr > sizeof out) {
      h_send(c, out, on); /* a long pipeline: flush and go on */
      on = 0;
      if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    }
  }
  memmove(c->buf, c->buf + pos, c->len - pos);
  c->len -= pos;
  if (on)
    h_send(c, out, on);
  else if (c->closing && c->writes == 0)
    h_close(c);
}

static void h_conn(uv_stream_t *l, int status) {
  if (status < 0)
    return;
  hconn *c = calloc(1, sizeof *c);
  if (!c)
    return;
  uv_tcp_init(l->loop, &c->tcp);
  if (uv_accept(l, (uv_stream_t *)&c->tcp) == 0) {
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, h_alloc, h_read);
  } else {
    uv_close((uv_handle_t *)&c->tcp, h_closed);
  }
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  if (argc > 2 || port < 0 || port > 65535) {
    fprintf(stderr, "usage: httpd [PORT]\n");
    return 2;
  }
  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t l;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  uv_tcp_init(loop, &l);
  int rc = uv_tcp_bind(&l, (struct sockaddr *)&a, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&l, 4096, h_conn);
  if (rc) {
    fprintf(stderr, "httpd: %s\n", uv_strerror(rc));
    return 1;
  }
  int len = sizeof a;
  uv_tcp_getsockname(&l, (struct sockaddr *)&a, &len);
  printf("listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}
