/* Server statistics end to end over loopback: a server, clients with
 * in-process echo proxies and visitors on blocking sockets, all driven
 * from one thread by pumping the loop. Checks the counters against the
 * traffic, the /metrics text against a strict parser (and the reference
 * parser when python3-prometheus-client is installed), /api/status against
 * the live proxies, and that bad requests to the metrics port get 400
 * while the tunnels keep working. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tunnel/uv.h"

static uv_loop_t loop;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void pump_ms(uint64_t ms) {
  uint64_t end = now_ms() + ms;
  while (now_ms() < end) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
}

/* Runs the loop until `cond` holds; fails the test after 10 s. */
#define PUMP_UNTIL(cond)                                                       \
  do {                                                                         \
    uint64_t end_ = now_ms() + 10000u;                                         \
    while (!(cond) && now_ms() < end_) {                                       \
      uv_run(&loop, UV_RUN_NOWAIT);                                            \
      usleep(500);                                                             \
    }                                                                          \
    assert_true(cond);                                                         \
  } while (0)

static uint64_t stat_of(tunnel_server *srv, int32_t id) {
  uint64_t v = 0;
  assert_int_equal(tunnel_server_stat(srv, id, &v), 0);
  return v;
}

/* ------------------------------------------------------- echo proxies */

static void echo_read(tunnel_stream *st, int status, const uint8_t *data,
                      size_t len, void *ud) {
  (void)ud;
  if (status == 0) {
    tunnel_stream_write(st, data, len, NULL, NULL);
    return;
  }
  if (status == TUNNEL_EEOF)
    tunnel_stream_shutdown(st, NULL, NULL);
  tunnel_stream_read_stop(st);
  tunnel_stream_close(st, NULL, NULL);
}

static void echo_accept(tunnel_proxy *p, tunnel_stream *st, void *ud) {
  (void)p, (void)ud;
  tunnel_stream_read_start(st, echo_read, NULL);
}

typedef struct {
  int status; /* 1: not yet */
  char msg[256];
} status_box;

static void proxy_status(tunnel_proxy *p, int status, const char *message,
                         void *ud) {
  status_box *b = ud;
  (void)p;
  b->status = status;
  snprintf(b->msg, sizeof b->msg, "%s", message ? message : "");
}

static void client_state(tunnel_client *c, int status, const char *message,
                         void *ud) {
  status_box *b = ud;
  (void)c;
  b->status = status;
  snprintf(b->msg, sizeof b->msg, "%s", message ? message : "");
}

static tunnel_client *client_new(const char *token, int pool, uint16_t port,
                                 status_box *st) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_token(cfg, token), 0);
  assert_int_equal(tunnel_config_set_pool_count(cfg, (uint32_t)pool), 0);
  tunnel_client *c;
  assert_int_equal(tunnel_client_new(&c, &loop, cfg), 0);
  tunnel_config_free(cfg);
  st->status = 1;
  tunnel_client_set_state_cb(c, client_state, st);
  assert_int_equal(tunnel_client_connect(c, "127.0.0.1", port), 0);
  return c;
}

static tunnel_proxy *proxy_new(tunnel_client *c, const char *name, int type,
                               status_box *st) {
  tunnel_proxy *p;
  assert_int_equal(tunnel_proxy_new(&p, c, name, type), 0);
  if (type == TUNNEL_PROXY_HTTP)
    assert_int_equal(tunnel_proxy_set_subdomain(p, name), 0);
  st->status = 1;
  tunnel_proxy_set_status_cb(p, proxy_status, st);
  tunnel_proxy_set_accept_cb(p, echo_accept, NULL);
  assert_int_equal(tunnel_proxy_start(p), 0);
  PUMP_UNTIL(st->status != 1);
  assert_int_equal(st->status, 0);
  return p;
}

/* ------------------------------------------------------------ sockets */

static int dial(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  return fd;
}

/* Reads what is there without blocking; -1 at EOF. */
static ssize_t poll_read(int fd, char *buf, size_t cap) {
  ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT);
  if (n == 0)
    return -1;
  if (n < 0)
    return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
  return n;
}

/* A visitor through a TCP proxy: `n` bytes there and back. */
static void visit_echo(uint16_t port, size_t n) {
  int fd = dial(port);
  char *out = malloc(n), *in = malloc(n);
  for (size_t i = 0; i < n; i++)
    out[i] = (char)('a' + i % 26);
  size_t sent = 0, got = 0;
  uint64_t end = now_ms() + 10000u;
  while (got < n && now_ms() < end) {
    if (sent < n) {
      ssize_t w = send(fd, out + sent, n - sent, MSG_DONTWAIT);
      if (w > 0)
        sent += (size_t)w;
    }
    ssize_t r = poll_read(fd, in + got, n - got);
    assert_true(r >= 0);
    got += (size_t)r;
    uv_run(&loop, UV_RUN_NOWAIT);
    if (r == 0)
      usleep(200);
  }
  assert_int_equal(got, n);
  assert_memory_equal(in, out, n);
  close(fd);
  free(out);
  free(in);
}

typedef struct {
  int code;
  char *body;
  size_t body_len;
  int closed; /* the server closed after the response */
} http_resp;

/* Sends `req` raw and reads one response (Content-Length framed). */
static void http_raw(uint16_t port, const char *req, size_t req_len,
                     http_resp *r) {
  int fd = dial(port);
  size_t sent = 0;
  static char buf[1 << 20];
  size_t len = 0;
  memset(r, 0, sizeof *r);
  uint64_t end = now_ms() + 10000u;
  size_t need = (size_t)-1;
  while (now_ms() < end) {
    if (sent < req_len) {
      ssize_t w = send(fd, req + sent, req_len - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w > 0)
        sent += (size_t)w;
      else if (w < 0 && errno != EAGAIN)
        sent = req_len; /* the server closed: read its answer */
    }
    ssize_t n = poll_read(fd, buf + len, sizeof buf - 1 - len);
    if (n < 0) {
      r->closed = 1;
      break;
    }
    len += (size_t)n;
    buf[len] = '\0';
    char *eoh = strstr(buf, "\r\n\r\n");
    if (eoh && need == (size_t)-1) {
      char *cl = strstr(buf, "Content-Length: ");
      assert_non_null(cl);
      need = (size_t)(eoh + 4 - buf) + strtoul(cl + 16, NULL, 10);
    }
    if (need != (size_t)-1 && len >= need) {
      /* Did it close? Give it a moment. */
      for (int i = 0; i < 50 && !r->closed; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        char c;
        ssize_t x = recv(fd, &c, 1, MSG_DONTWAIT);
        if (x == 0)
          r->closed = 1;
        else
          usleep(1000);
      }
      break;
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    if (n == 0)
      usleep(200);
  }
  close(fd);
  assert_true(len > 12);
  assert_int_equal(memcmp(buf, "HTTP/1.1 ", 9), 0);
  r->code = atoi(buf + 9);
  char *eoh = strstr(buf, "\r\n\r\n");
  assert_non_null(eoh);
  assert_true(need != (size_t)-1 && len == need);
  r->body_len = len - (size_t)(eoh + 4 - buf);
  r->body = malloc(r->body_len + 1);
  memcpy(r->body, eoh + 4, r->body_len);
  r->body[r->body_len] = '\0';
}

static void http_get(uint16_t port, const char *path, http_resp *r) {
  char req[512];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                   path);
  http_raw(port, req, (size_t)n, r);
}

/* ----------------------------------------- a strict exposition parser */

#define MAX_SAMPLES 512

typedef struct {
  char key[512]; /* name{labels} as written */
  double value;
} prom_sample;

typedef struct {
  prom_sample s[MAX_SAMPLES];
  size_t n;
} prom;

static int name_ok(const char *s, size_t n) {
  if (!n || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
    return 0;
  for (size_t i = 1; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
      return 0;
  return 1;
}

/* 0 when `text` is valid: every sample after its family's TYPE (and
 * HELP), counters named *_total, labels well formed and escaped, values
 * numbers, no sample twice, every line ended. */
static int prom_parse(const char *text, prom *out) {
  char fam[128] = "", type[256] = "";
  out->n = 0;
  const char *p = text;
  if (!*p || text[strlen(text) - 1] != '\n')
    return -1;
  while (*p) {
    const char *eol = strchr(p, '\n');
    size_t len = (size_t)(eol - p);
    char line[1024];
    if (len == 0 || len >= sizeof line)
      return -2;
    memcpy(line, p, len);
    line[len] = '\0';
    p = eol + 1;
    if (line[0] == '#') {
      char kw[8], name[128], rest[256];
      if (sscanf(line, "# %7s %127s %255[^\n]", kw, name, rest) != 3)
        return -3;
      if (!name_ok(name, strlen(name)))
        return -4;
      if (strcmp(kw, "HELP") == 0) {
        snprintf(fam, sizeof fam, "%s", name);
        type[0] = '\0';
      } else if (strcmp(kw, "TYPE") == 0) {
        if (strcmp(name, fam) != 0)
          return -5;
        if (strcmp(rest, "counter") && strcmp(rest, "gauge"))
          return -6;
        snprintf(type, sizeof type, "%s", rest);
      } else {
        return -7;
      }
      continue;
    }
    size_t nl = strcspn(line, "{ ");
    if (!name_ok(line, nl) || !type[0] || strncmp(line, fam, nl) != 0 ||
        strlen(fam) != nl)
      return -8;
    if (strcmp(type, "counter") == 0 &&
        (nl < 6 || strncmp(line + nl - 6, "_total", 6) != 0))
      return -9;
    const char *q = line + nl;
    if (*q == '{') {
      q++;
      for (;;) {
        size_t ln = strcspn(q, "=");
        if (!name_ok(q, ln) || q[ln] != '=' || q[ln + 1] != '"')
          return -10;
        q += ln + 2;
        while (*q && *q != '"') {
          if (*q == '\\') {
            if (q[1] != '\\' && q[1] != '"' && q[1] != 'n')
              return -11;
            q++;
          } else if (*q == '\n') {
            return -11;
          }
          q++;
        }
        if (*q != '"')
          return -12;
        q++;
        if (*q == ',') {
          q++;
          continue;
        }
        if (*q != '}')
          return -13;
        q++;
        break;
      }
    }
    if (*q != ' ')
      return -14;
    size_t kl = (size_t)(q - line);
    char *end;
    double v = strtod(q + 1, &end);
    if (end == q + 1 || *end != '\0')
      return -15;
    if (out->n == MAX_SAMPLES || kl >= sizeof out->s[0].key)
      return -16;
    for (size_t i = 0; i < out->n; i++)
      if (strlen(out->s[i].key) == kl && strncmp(out->s[i].key, line, kl) == 0)
        return -17;
    memcpy(out->s[out->n].key, line, kl);
    out->s[out->n].key[kl] = '\0';
    out->s[out->n].value = v;
    out->n++;
  }
  return 0;
}

static double prom_get(const prom *m, const char *key) {
  for (size_t i = 0; i < m->n; i++)
    if (strcmp(m->s[i].key, key) == 0)
      return m->s[i].value;
  fail_msg("no sample %s", key);
  return -1;
}

/* The reference parser, when installed: 1 parsed, 0 not installed. */
static int reference_parse(const char *text) {
  /* The distribution's interpreter may not be the first on PATH. */
  static const char *const pys[] = {"python3", "/usr/bin/python3"};
  const char *py = NULL;
  for (size_t i = 0; i < 2 && !py; i++) {
    char probe[128];
    snprintf(probe, sizeof probe,
             "%s -c 'import prometheus_client' >/dev/null 2>&1", pys[i]);
    if (system(probe) == 0)
      py = pys[i];
  }
  if (!py)
    return 0;
  char path[] = "/tmp/tunnel-metrics-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "%s -c 'import sys\nfrom prometheus_client.parser import "
           "text_string_to_metric_families as f\nn=sum(len(x.samples) for x "
           "in f(open(sys.argv[1]).read()))\nsys.exit(0 if n else 1)' %s",
           py, path);
  int rc = system(cmd);
  unlink(path);
  assert_int_equal(rc, 0);
  return 1;
}

static prom *scrape(uint16_t port) {
  static prom m;
  http_resp r;
  http_get(port, "/metrics", &r);
  assert_int_equal(r.code, 200);
  int rc = prom_parse(r.body, &m);
  if (rc)
    fail_msg("metrics rejected (%d):\n%s", rc, r.body);
  if (!reference_parse(r.body))
    print_message("python3-prometheus-client not installed: reference "
                  "parse skipped\n");
  free(r.body);
  return &m;
}

/* /api/status: the names of the proxies listed, sorted, comma-joined. */
static void status_names(uint16_t port, char *out, size_t cap) {
  http_resp r;
  http_get(port, "/api/status", &r);
  assert_int_equal(r.code, 200);
  cJSON *j = cJSON_Parse(r.body);
  assert_non_null(j);
  assert_true(cJSON_IsString(cJSON_GetObjectItem(j, "version")));
  assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "uptime_s")));
  /* Every logged-in client is listed, with or without proxies. */
  cJSON *clients = cJSON_GetObjectItem(j, "clients");
  assert_true(cJSON_IsArray(clients));
  assert_int_equal(
      cJSON_GetArraySize(clients),
      (int)cJSON_GetObjectItem(j, "clients_connected")->valuedouble);
  cJSON *c;
  cJSON_ArrayForEach(c, clients) {
    assert_true(cJSON_IsString(cJSON_GetObjectItem(c, "run_id")));
    assert_true(cJSON_IsString(cJSON_GetObjectItem(c, "version")));
    assert_true(cJSON_GetObjectItem(c, "since")->valuedouble > 1e9);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(c, "proxies")));
  }
  cJSON *arr = cJSON_GetObjectItem(j, "proxies");
  assert_true(cJSON_IsArray(arr));
  const char *names[16];
  int n = 0;
  cJSON *p;
  cJSON_ArrayForEach(p, arr) {
    assert_true(n < 16);
    names[n++] = cJSON_GetObjectItem(p, "name")->valuestring;
    assert_true(cJSON_IsString(cJSON_GetObjectItem(p, "run_id")));
    assert_true(cJSON_IsString(cJSON_GetObjectItem(p, "client_addr")));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(p, "bytes_in")));
    assert_true(cJSON_GetObjectItem(p, "since_unix")->valuedouble > 1e9);
  }
  for (int i = 0; i < n; i++)
    for (int k = i + 1; k < n; k++)
      if (strcmp(names[k], names[i]) < 0) {
        const char *t = names[i];
        names[i] = names[k];
        names[k] = t;
      }
  out[0] = '\0';
  for (int i = 0; i < n; i++)
    snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? "," : "",
             names[i]);
  cJSON_Delete(j);
  free(r.body);
}

/* ---------------------------------------------------------- the cases */

typedef struct {
  const char *name;
  uint64_t in, out, total;
  int found;
} proxy_probe;

static int probe_cb(const tunnel_server_proxy_info *p, void *ud) {
  proxy_probe *pp = ud;
  if (strcmp(tunnel_server_proxy_name(p), pp->name) != 0)
    return 0;
  pp->found = 1;
  pp->in = tunnel_server_proxy_bytes_in(p);
  pp->out = tunnel_server_proxy_bytes_out(p);
  pp->total = tunnel_server_proxy_visitors_total(p);
  assert_int_equal(tunnel_server_proxy_type(p), TUNNEL_PROXY_TCP);
  assert_true(tunnel_server_proxy_public_addr(p)[0] == ':');
  assert_true(strlen(tunnel_server_proxy_run_id(p)) > 0);
  assert_string_equal(tunnel_server_proxy_client_addr(p), "127.0.0.1");
  return 7; /* stops the walk */
}

static void server_closed(tunnel_server *s, void *ud) {
  (void)s;
  *(int *)ud = 1;
}
static void client_closed(tunnel_client *c, void *ud) {
  (void)c;
  (*(int *)ud)++;
}

static void test_end_to_end(void **state) {
  (void)state;
  assert_int_equal(uv_loop_init(&loop), 0);
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_token(cfg, "secret"), 0);
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1"), 0);
  tunnel_server *srv;
  assert_int_equal(tunnel_server_new(&srv, &loop, cfg), 0);
  tunnel_config_free(cfg);
  uint16_t port, mport, hport;
  assert_int_equal(tunnel_server_metrics_port(srv, &mport), TUNNEL_ESTATE);
  assert_int_equal(tunnel_server_listen(srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(srv, &port), 0);
  assert_int_equal(tunnel_server_listen_http(srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_http_port(srv, &hport), 0);
  assert_int_equal(tunnel_server_listen_metrics(srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_listen_metrics(srv, "127.0.0.1", 0),
                   TUNNEL_ESTATE);
  assert_int_equal(tunnel_server_metrics_port(srv, &mport), 0);
  uint64_t v;
  assert_int_equal(tunnel_server_stat(srv, TUNNEL_SERVER_STAT_COUNT_, &v),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_server_stat(srv, -1, &v), TUNNEL_EINVAL);

  /* A wrong token: refused, counted as such. */
  status_box bad;
  tunnel_client *cb = client_new("wrong", 1, port, &bad);
  PUMP_UNTIL(bad.status != 1);
  assert_true(bad.status < 0);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_LOGINS_REFUSED_AUTH), 1);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_LOGINS_OK), 0);

  /* A client with a pool of one: its visitor finds a work connection
   * ready. */
  status_box s1, ps1;
  tunnel_client *c1 = client_new("secret", 1, port, &s1);
  PUMP_UNTIL(s1.status != 1);
  assert_int_equal(s1.status, 0);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_LOGINS_OK), 1);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_CLIENTS), 1);
  tunnel_proxy *echo = proxy_new(c1, "echo", TUNNEL_PROXY_TCP, &ps1);
  uint16_t eport = (uint16_t)atoi(strrchr(ps1.msg, ':') + 1);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_PROXIES_TCP), 1);
  pump_ms(300); /* the pool fills */
  visit_echo(eport, 100000);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_VISITORS_TOTAL), 1);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_POOL_HITS), 1);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_POOL_MISSES), 0);
  /* Payload only: exactly what the visitor sent and got back. */
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_BYTES_IN), 100000);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_BYTES_OUT), 100000);
  PUMP_UNTIL(stat_of(srv, TUNNEL_SERVER_STAT_VISITORS_OPEN) == 0);
  proxy_probe pr = {"echo", 0, 0, 0, 0};
  assert_int_equal(tunnel_server_foreach_proxy(srv, probe_cb, &pr), 7);
  assert_true(pr.found);
  assert_int_equal(pr.in, 100000);
  assert_int_equal(pr.out, 100000);
  assert_int_equal(pr.total, 1);

  /* A client without a pool: its visitor waits for one. An HTTP proxy
   * counts by its type. */
  status_box s2, ps2, ps3;
  tunnel_client *c2 = client_new("secret", 0, port, &s2);
  PUMP_UNTIL(s2.status != 1);
  assert_int_equal(s2.status, 0);
  tunnel_proxy *echo0 = proxy_new(c2, "echo0", TUNNEL_PROXY_TCP, &ps2);
  uint16_t e0port = (uint16_t)atoi(strrchr(ps2.msg, ':') + 1);
  tunnel_proxy *web = proxy_new(c2, "web", TUNNEL_PROXY_HTTP, &ps3);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_PROXIES_TCP), 2);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_PROXIES_HTTP), 1);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_CLIENTS), 2);
  char names[256];
  status_names(mport, names, sizeof names);
  assert_string_equal(names, "echo,echo0,web");

  /* During traffic: a visitor holds its connection open while /metrics is
   * scraped. */
  int held = dial(e0port);
  assert_int_equal(send(held, "abc", 3, 0), 3);
  char back[3];
  size_t got = 0;
  uint64_t end = now_ms() + 10000u;
  while (got < 3 && now_ms() < end) {
    ssize_t r = poll_read(held, back + got, 3 - got);
    assert_true(r >= 0);
    got += (size_t)r;
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(200);
  }
  assert_int_equal(got, 3);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_POOL_MISSES), 1);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_VISITORS_OPEN), 1);
  prom *m = scrape(mport);
  assert_true(prom_get(m, "tunnel_visitors_open") == 1);
  assert_true(prom_get(m, "tunnel_visitors_total") == 2);
  assert_true(prom_get(m, "tunnel_visitor_received_bytes_total") == 100003);
  assert_true(prom_get(m, "tunnel_visitor_sent_bytes_total") == 100003);
  assert_true(prom_get(m, "tunnel_proxies{type=\"tcp\"}") == 2);
  assert_true(prom_get(m, "tunnel_proxies{type=\"http\"}") == 1);
  assert_true(prom_get(m, "tunnel_logins_refused_total{reason=\"auth\"}") == 1);
  /* Every refusal reason is exported, the ones never seen as 0. */
  assert_true(prom_get(m, "tunnel_visitors_refused_total{reason=\"auth\"}") == 0);
  assert_true(prom_get(m, "tunnel_visitors_refused_total{reason=\"limit\"}") == 0);
  assert_true(prom_get(m, "tunnel_logins_total") == 2);
  assert_true(prom_get(m, "tunnel_work_pool_hits_total") == 1);
  assert_true(prom_get(m, "tunnel_work_pool_misses_total") == 1);
  assert_true(prom_get(m, "tunnel_clients") == 2);
  assert_true(prom_get(m, "tunnel_streams_open") >= 2);
  close(held);
  PUMP_UNTIL(stat_of(srv, TUNNEL_SERVER_STAT_VISITORS_OPEN) == 0);

  /* An HTTP visitor for a name nobody serves. */
  http_resp r;
  {
    char req[] = "GET / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n";
    http_raw(hport, req, sizeof req - 1, &r);
    assert_int_equal(r.code, 404);
    free(r.body);
    assert_int_equal(
        stat_of(srv, TUNNEL_SERVER_STAT_VISITORS_REFUSED_NO_TUNNEL), 1);
  }

  /* Proxies going away leave the status and the gauges. */
  assert_int_equal(tunnel_proxy_close(web), 0);
  PUMP_UNTIL(stat_of(srv, TUNNEL_SERVER_STAT_PROXIES_HTTP) == 0);
  status_names(mport, names, sizeof names);
  assert_string_equal(names, "echo,echo0");
  assert_int_equal(tunnel_proxy_close(echo0), 0);
  PUMP_UNTIL(stat_of(srv, TUNNEL_SERVER_STAT_PROXIES_TCP) == 1);
  status_names(mport, names, sizeof names);
  assert_string_equal(names, "echo");

  /* Bad requests to the metrics port: 400 (or 404), and the tunnel goes
   * on. */
  {
    const char junk[] = "NOT HTTP AT ALL\r\n\r\n";
    http_raw(mport, junk, sizeof junk - 1, &r);
    assert_int_equal(r.code, 400);
    assert_true(r.closed);
    free(r.body);
    size_t big = 20000;
    char *req = malloc(big + 64);
    int n = snprintf(req, 64, "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 4);
    http_raw(mport, req, (size_t)n + big + 4, &r);
    assert_int_equal(r.code, 400);
    free(r.body);
    free(req);
    http_get(mport, "/nothing", &r);
    assert_int_equal(r.code, 404);
    free(r.body);
    const char post[] =
        "POST /metrics HTTP/1.1\r\nContent-Length: 2\r\nConnection: "
        "close\r\n\r\nhi";
    http_raw(mport, post, sizeof post - 1, &r);
    assert_int_equal(r.code, 404);
    free(r.body);
  }
  visit_echo(eport, 5000);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_BYTES_IN), 105003);

  /* Keep-alive: two requests on one connection, both answered. */
  {
    const char two[] = "GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    int fd = dial(mport);
    assert_int_equal(send(fd, two, sizeof two - 1, 0), (ssize_t)sizeof two - 1);
    static char buf[1 << 17];
    size_t len = 0;
    int answers = 0;
    uint64_t e2 = now_ms() + 10000u;
    while (answers < 2 && now_ms() < e2) {
      ssize_t k = poll_read(fd, buf + len, sizeof buf - 1 - len);
      assert_true(k >= 0);
      len += (size_t)k;
      buf[len] = '\0';
      answers = 0;
      for (char *q = buf; (q = strstr(q, "HTTP/1.1 200 OK")) != NULL; q++)
        answers++;
      uv_run(&loop, UV_RUN_NOWAIT);
      usleep(200);
    }
    assert_int_equal(answers, 2);
    close(fd);
  }

  int closed = 0, cclosed = 0;
  tunnel_client_close(cb, client_closed, &cclosed);
  tunnel_client_close(c1, client_closed, &cclosed);
  tunnel_client_close(c2, client_closed, &cclosed);
  (void)echo;
  PUMP_UNTIL(cclosed == 3);
  PUMP_UNTIL(stat_of(srv, TUNNEL_SERVER_STAT_CLIENTS) == 0);
  assert_int_equal(stat_of(srv, TUNNEL_SERVER_STAT_PROXIES_TCP), 0);
  assert_int_equal(tunnel_server_close(srv, server_closed, &closed), 0);
  PUMP_UNTIL(closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_end_to_end),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
