/* tunnel-serve-http: serves HTTP from inside the program through the
 * tunnel, with no local port at all: each visitor arrives as a
 * tunnel_stream (in-process accept, the agent-SDK model). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>
#include <tunnel/uv.h>

#include "cli_common.h"

static const char usage[] =
    "usage: tunnel-serve-http [--server HOST:PORT]\n"
    "                         [--token TOKEN | --token-file FILE]\n"
    "                         [--remote-port N] [--name NAME]\n"
    "The token comes from --token, else the first line of --token-file\n"
    "(keep it mode 600), else $TUNNEL_TOKEN.\n"
    "Prints the public address (tcp://HOST:PORT) on stdout; every HTTP\n"
    "request to it is answered by this process.\n";

static tunnel_client *client;
static uv_signal_t sigint_h, sigterm_h;
static int exit_code;
static unsigned long served;

typedef struct visit {
  tunnel_stream *st;
  http_parser parser;
  char url[512];
  size_t url_len;
  int responded;
} visit;

static void closed(tunnel_stream *st, void *ud) {
  (void)st;
  free(ud);
}

static void finish(visit *v) {
  tunnel_stream_read_stop(v->st);
  tunnel_stream_close(v->st, closed, v);
}

static int on_url(http_parser *p, const char *at, size_t len) {
  visit *v = p->data;
  size_t room = sizeof v->url - 1 - v->url_len;
  if (len > room)
    len = room;
  memcpy(v->url + v->url_len, at, len);
  v->url_len += len;
  v->url[v->url_len] = '\0';
  return 0;
}

static void shut_done(tunnel_stream *st, int status, void *ud) {
  (void)st, (void)status, (void)ud;
}

static int on_complete(http_parser *p) {
  visit *v = p->data;
  char body[700], head[256];
  int blen = snprintf(body, sizeof body,
                      "Hello from inside the program (request %lu): %s %s\n",
                      ++served, http_method_str(p->method), v->url);
  int hlen = snprintf(head, sizeof head,
                      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n",
                      blen);
  v->responded = 1;
  /* A failed write means the stream failed: the read callback then sees
   * the error and closes it. */
  if (tunnel_stream_write(v->st, (const uint8_t *)head, (size_t)hlen, NULL,
                          NULL) == 0 &&
      tunnel_stream_write(v->st, (const uint8_t *)body, (size_t)blen, NULL,
                          NULL) == 0)
    tunnel_stream_shutdown(v->st, shut_done, NULL);
  return 1; /* one request per connection: stop parsing */
}

static const http_parser_settings settings = {
    .on_url = on_url, .on_message_complete = on_complete};

static void on_read(tunnel_stream *st, int status, const uint8_t *data,
                    size_t len, void *ud) {
  visit *v = ud;
  (void)st;
  if (status) {
    /* EOF after our answer (or a reset): the exchange is over. */
    finish(v);
    return;
  }
  if (v->responded)
    return; /* ignore anything after the one request */
  size_t n = http_parser_execute(&v->parser, &settings, (const char *)data,
                                 len);
  if (!v->responded && (n != len || HTTP_PARSER_ERRNO(&v->parser) != HPE_OK)) {
    static const char bad[] = "HTTP/1.1 400 Bad Request\r\n"
                              "Content-Length: 0\r\nConnection: close\r\n\r\n";
    v->responded = 1;
    tunnel_stream_write(v->st, (const uint8_t *)bad, sizeof bad - 1, NULL,
                        NULL);
    tunnel_stream_shutdown(v->st, shut_done, NULL);
  }
}

static void on_accept(tunnel_proxy *p, tunnel_stream *st, void *ud) {
  (void)p, (void)ud;
  visit *v = calloc(1, sizeof *v);
  if (!v) {
    tunnel_stream_close(st, NULL, NULL);
    return;
  }
  v->st = st;
  http_parser_init(&v->parser, HTTP_REQUEST);
  v->parser.data = v;
  if (tunnel_stream_read_start(st, on_read, v) != 0)
    finish(v);
}

static void stop(int code) {
  exit_code = code;
  if (uv_is_closing((uv_handle_t *)&sigint_h))
    return;
  uv_close((uv_handle_t *)&sigint_h, NULL);
  uv_close((uv_handle_t *)&sigterm_h, NULL);
  tunnel_client_close(client, NULL, NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h, (void)signum;
  stop(0);
}

static void on_state(tunnel_client *c, int status, const char *msg,
                     void *ud) {
  (void)c, (void)ud;
  if (status == 0)
    return;
  fprintf(stderr, "tunnel-serve-http: %s%s%s\n", tunnel_strerror(status),
          *msg ? ": " : "", msg);
  stop(1);
}

static void on_proxy(tunnel_proxy *p, int status, const char *msg, void *ud) {
  (void)p, (void)ud;
  if (status == 0) {
    printf("tcp://%s\n", msg);
    fflush(stdout);
  } else {
    fprintf(stderr, "tunnel-serve-http: proxy refused: %s\n", msg);
    stop(1);
  }
}

int main(int argc, char **argv) {
  char host[256] = "127.0.0.1";
  uint16_t port = 7000, rport = 0;
  char *token_arg = NULL;
  const char *token_file = NULL;
  const char *name = "serve-http";
  uint32_t v32;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help")) {
      fputs(usage, stdout);
      return 0;
    } else if (!strcmp(a, "--server") && v &&
               cli_parse_hostport(v, host, sizeof host, &port) == 0) {
      i++;
    } else if (!strcmp(a, "--token") && v) {
      token_arg = argv[i + 1];
      i++;
    } else if (!strcmp(a, "--token-file") && v) {
      token_file = v;
      i++;
    } else if (!strcmp(a, "--remote-port") && v &&
               cli_parse_u32(v, 65535, &v32) == 0) {
      rport = (uint16_t)v32;
      i++;
    } else if (!strcmp(a, "--name") && v) {
      name = v;
      i++;
    } else {
      fprintf(stderr, "tunnel-serve-http: bad argument '%s'\n%s", a, usage);
      return 2;
    }
  }
  char *token;
  if (cli_token("tunnel-serve-http", token_arg, token_file, &token) != 0)
    return 2;
  /* A visitor resetting mid-write must not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  uv_loop_t *loop = uv_default_loop();
  tunnel_config *cfg;
  tunnel_proxy *p;
  int rc = tunnel_config_new(&cfg);
  if (rc == 0)
    rc = tunnel_config_set_token(cfg, token);
  cli_secret_free(token); /* the config holds the only copy now */
  if (rc == 0)
    rc = tunnel_client_new(&client, loop, cfg);
  tunnel_config_free(cfg);
  if (rc == 0)
    rc = tunnel_client_set_state_cb(client, on_state, NULL);
  if (rc == 0)
    rc = tunnel_proxy_new(&p, client, name, TUNNEL_PROXY_TCP);
  if (rc == 0)
    rc = tunnel_proxy_set_remote_port(p, rport);
  if (rc == 0)
    rc = tunnel_proxy_set_accept_cb(p, on_accept, NULL);
  if (rc == 0)
    rc = tunnel_proxy_set_status_cb(p, on_proxy, NULL);
  if (rc == 0)
    rc = tunnel_proxy_start(p);
  if (rc == 0)
    rc = tunnel_client_connect(client, host, port);
  if (rc) {
    fprintf(stderr, "tunnel-serve-http: %s\n", tunnel_strerror(rc));
    return 1;
  }
  uv_signal_init(loop, &sigint_h);
  uv_signal_init(loop, &sigterm_h);
  uv_signal_start(&sigint_h, on_signal, SIGINT);
  uv_signal_start(&sigterm_h, on_signal, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0 ? exit_code : 1;
}
