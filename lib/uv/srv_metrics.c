/* The operators' port: GET /metrics (Prometheus text format 0.0.4) and
 * GET /api/status (JSON) over HTTP/1.1. A user of the public statistics
 * API only; its connections are bounded in number, head size, pending
 * output and time, and share nothing with the tunnels but the loop. */
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../reqhead.h"
#include "dial.h"
#include "srv.h"
#include "uverr.h"

#define MEM tunnel__srv_mem

#define MAX_CONNS 32u
/* A request (head and any body) larger than this is refused. */
#define MAX_REQUEST 8192u
/* Idle or incomplete request: closed after this long. */
#define TIMEOUT_MS 10000u
/* A peer that does not read its answers is dropped past this. */
#define MAX_PENDING (4u * 1024u * 1024u)

typedef struct mconn mconn;

struct srv_metrics {
  tunnel_server *srv;
  uv_tcp_t listener;
  uint16_t port;
  mconn *conns;
  uint32_t nconns;
};

struct mconn {
  srv_metrics *m;
  mconn *prev, *next;
  uv_tcp_t tcp;
  uv_timer_t timer;
  tunnel__reqhead req;
  int closing;
  int handles;
  char buf[4096];
};

/* ------------------------------------------------------------ buffer */

typedef struct {
  const tunnel__mem *mem;
  char *p;
  size_t len, cap;
  int failed;
} mbuf;

static void mb_put(mbuf *b, const char *s, size_t n) {
  if (b->failed)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = tunnel__realloc(b->mem, b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void mb_puts(mbuf *b, const char *s) { mb_put(b, s, strlen(s)); }

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 2, 3)))
#endif
static void mb_printf(mbuf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) {
    b->failed = 1;
    return;
  }
  mb_put(b, tmp, (size_t)n);
}

/* A label value: backslash, double quote and newline escaped. */
static void mb_label(mbuf *b, const char *v) {
  for (; v && *v; v++) {
    if (*v == '\\')
      mb_puts(b, "\\\\");
    else if (*v == '"')
      mb_puts(b, "\\\"");
    else if (*v == '\n')
      mb_puts(b, "\\n");
    else
      mb_put(b, v, 1);
  }
}

/* ----------------------------------------------------------- /metrics */

static uint64_t get_stat(const tunnel_server *srv, int32_t id) {
  uint64_t v = 0;
  (void)tunnel_server_stat(srv, id, &v);
  return v;
}

static void family(mbuf *b, const char *name, const char *type,
                   const char *help) {
  mb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(mbuf *b, const char *name, const char *label,
                   const char *value, uint64_t v) {
  if (label)
    mb_printf(b, "%s{%s=\"%s\"} %llu\n", name, label, value,
              (unsigned long long)v);
  else
    mb_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void one(mbuf *b, const tunnel_server *srv, const char *name,
                const char *type, const char *help, int32_t id) {
  family(b, name, type, help);
  sample(b, name, NULL, NULL, get_stat(srv, id));
}

typedef struct {
  const char *value;
  int32_t id;
} labelled;

static void several(mbuf *b, const tunnel_server *srv, const char *name,
                    const char *type, const char *help, const char *label,
                    const labelled *l, size_t n) {
  family(b, name, type, help);
  for (size_t i = 0; i < n; i++)
    sample(b, name, label, l[i].value, get_stat(srv, l[i].id));
}

static const char *type_name(int type) {
  return type == TUNNEL_PROXY_HTTP    ? "http"
         : type == TUNNEL_PROXY_HTTPS ? "https"
         : type == TUNNEL_PROXY_UDP   ? "udp"
         : type == TUNNEL_PROXY_STCP  ? "stcp"
                                      : "tcp";
}

/* Per-proxy samples of one family. */
typedef struct {
  mbuf *b;
  const char *name;
  uint64_t (*get)(const tunnel_server_proxy_info *p);
} proxy_walk;

static int proxy_sample(const tunnel_server_proxy_info *p, void *ud) {
  proxy_walk *w = ud;
  mb_printf(w->b, "%s{proxy=\"", w->name);
  mb_label(w->b, tunnel_server_proxy_name(p));
  mb_printf(w->b, "\",type=\"%s\",run_id=\"",
            type_name(tunnel_server_proxy_type(p)));
  mb_label(w->b, tunnel_server_proxy_run_id(p));
  mb_printf(w->b, "\"} %llu\n", (unsigned long long)w->get(p));
  return 0;
}

static void per_proxy(mbuf *b, const tunnel_server *srv, const char *name,
                      const char *type, const char *help,
                      uint64_t (*get)(const tunnel_server_proxy_info *p)) {
  family(b, name, type, help);
  proxy_walk w = {b, name, get};
  tunnel_server_foreach_proxy(srv, proxy_sample, &w);
}

/* Resident memory and open descriptors, where /proc tells them. */
static void process_metrics(mbuf *b) {
#ifdef __linux__
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long long size = 0, resident = 0;
  long page = sysconf(_SC_PAGESIZE);
  if (f) {
    if (fscanf(f, "%llu %llu", &size, &resident) == 2 && page > 0) {
      family(b, "process_resident_memory_bytes", "gauge",
             "Resident memory size in bytes.");
      sample(b, "process_resident_memory_bytes", NULL, NULL,
             resident * (unsigned long long)page);
    }
    fclose(f);
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      n += e->d_name[0] != '.';
    closedir(d);
    family(b, "process_open_fds", "gauge", "Number of open file descriptors.");
    sample(b, "process_open_fds", NULL, NULL, n > 0 ? n - 1 : 0); /* ours */
  }
#else
  (void)b;
#endif
}

static void render_metrics(mbuf *b, const tunnel_server *srv,
                           uint64_t uptime_ms) {
  family(b, "tunnel_build_info", "gauge", "Version of the server.");
  mb_puts(b, "tunnel_build_info{version=\"");
  mb_label(b, tunnel_version_string());
  mb_puts(b, "\"} 1\n");
  family(b, "tunnel_uptime_seconds", "gauge", "Seconds since the server started.");
  sample(b, "tunnel_uptime_seconds", NULL, NULL, uptime_ms / 1000u);
  one(b, srv, "tunnel_clients", "gauge", "Clients logged in.",
      TUNNEL_SERVER_STAT_CLIENTS);
  one(b, srv, "tunnel_logins_total", "counter", "Logins accepted.",
      TUNNEL_SERVER_STAT_LOGINS_OK);
  static const labelled refused[] = {
      {"auth", TUNNEL_SERVER_STAT_LOGINS_REFUSED_AUTH},
      {"rate_limited", TUNNEL_SERVER_STAT_LOGINS_REFUSED_RATE},
      {"too_many_clients", TUNNEL_SERVER_STAT_LOGINS_REFUSED_CLIENTS},
      {"other", TUNNEL_SERVER_STAT_LOGINS_REFUSED_OTHER}};
  several(b, srv, "tunnel_logins_refused_total", "counter",
          "Logins refused, by reason.", "reason", refused, 4);
  static const labelled proxies[] = {
      {"tcp", TUNNEL_SERVER_STAT_PROXIES_TCP},
      {"http", TUNNEL_SERVER_STAT_PROXIES_HTTP},
      {"https", TUNNEL_SERVER_STAT_PROXIES_HTTPS},
      {"stcp", TUNNEL_SERVER_STAT_PROXIES_STCP}};
  several(b, srv, "tunnel_proxies", "gauge", "Proxies registered, by type.",
          "type", proxies, 4);
  one(b, srv, "tunnel_visitors_open", "gauge",
      "Visitor connections carried by a work connection now.",
      TUNNEL_SERVER_STAT_VISITORS_OPEN);
  one(b, srv, "tunnel_visitors_total", "counter",
      "Visitors that asked a tunnel for a work connection.",
      TUNNEL_SERVER_STAT_VISITORS_TOTAL);
  static const labelled vrefused[] = {
      {"no_tunnel", TUNNEL_SERVER_STAT_VISITORS_REFUSED_NO_TUNNEL},
      {"limit", TUNNEL_SERVER_STAT_VISITORS_REFUSED_LIMIT},
      {"auth", TUNNEL_SERVER_STAT_VISITORS_REFUSED_AUTH}};
  several(b, srv, "tunnel_visitors_refused_total", "counter",
          "Visitors refused, by reason.", "reason", vrefused, 3);
  one(b, srv, "tunnel_visitor_received_bytes_total", "counter",
      "Bytes received from visitors.", TUNNEL_SERVER_STAT_BYTES_IN);
  one(b, srv, "tunnel_visitor_sent_bytes_total", "counter",
      "Bytes sent to visitors.", TUNNEL_SERVER_STAT_BYTES_OUT);
  one(b, srv, "tunnel_streams_open", "gauge",
      "Multiplexed streams open in client sessions.",
      TUNNEL_SERVER_STAT_STREAMS_OPEN);
  one(b, srv, "tunnel_work_pool_hits_total", "counter",
      "Visitors given a pooled work connection at once.",
      TUNNEL_SERVER_STAT_POOL_HITS);
  one(b, srv, "tunnel_work_pool_misses_total", "counter",
      "Visitors that waited for a work connection.",
      TUNNEL_SERVER_STAT_POOL_MISSES);
  static const labelled unauth[] = {
      {"shed", TUNNEL_SERVER_STAT_UNAUTH_SHED},
      {"timeout", TUNNEL_SERVER_STAT_UNAUTH_TIMED_OUT}};
  several(b, srv, "tunnel_unauthenticated_dropped_total", "counter",
          "Unauthenticated connections dropped, by reason.", "reason", unauth,
          2);
  static const labelled tls[] = {
      {"full", TUNNEL_SERVER_STAT_TLS_FULL},
      {"resumed", TUNNEL_SERVER_STAT_TLS_RESUMED},
      {"failed", TUNNEL_SERVER_STAT_TLS_FAILED}};
  several(b, srv, "tunnel_tls_handshakes_total", "counter",
          "TLS handshakes of clients, by result.", "result", tls, 3);
  per_proxy(b, srv, "tunnel_proxy_received_bytes_total", "counter",
            "Bytes received from the proxy's visitors.",
            tunnel_server_proxy_bytes_in);
  per_proxy(b, srv, "tunnel_proxy_sent_bytes_total", "counter",
            "Bytes sent to the proxy's visitors.",
            tunnel_server_proxy_bytes_out);
  per_proxy(b, srv, "tunnel_proxy_visitors_open", "gauge",
            "The proxy's visitor connections carried now.",
            tunnel_server_proxy_visitors_open);
  per_proxy(b, srv, "tunnel_proxy_visitors_total", "counter",
            "The proxy's visitors.", tunnel_server_proxy_visitors_total);
  process_metrics(b);
}

/* -------------------------------------------------------- /api/status */

static int status_proxy(const tunnel_server_proxy_info *p, void *ud) {
  cJSON *arr = ud;
  cJSON *o = cJSON_CreateObject();
  if (!o || !cJSON_AddItemToArray(arr, o))
    return o ? (cJSON_Delete(o), TUNNEL_ENOMEM) : TUNNEL_ENOMEM;
  int ok =
      cJSON_AddStringToObject(o, "name", tunnel_server_proxy_name(p)) &&
      cJSON_AddStringToObject(o, "type",
                              type_name(tunnel_server_proxy_type(p))) &&
      cJSON_AddStringToObject(o, "public_addr",
                              tunnel_server_proxy_public_addr(p)) &&
      cJSON_AddStringToObject(o, "run_id", tunnel_server_proxy_run_id(p)) &&
      cJSON_AddStringToObject(o, "client_addr",
                              tunnel_server_proxy_client_addr(p)) &&
      cJSON_AddNumberToObject(o, "since_ms",
                              (double)tunnel_server_proxy_since_ms(p)) &&
      cJSON_AddNumberToObject(o, "since_unix",
                              (double)tunnel_server_proxy_since_unix(p)) &&
      cJSON_AddNumberToObject(o, "bytes_in",
                              (double)tunnel_server_proxy_bytes_in(p)) &&
      cJSON_AddNumberToObject(o, "bytes_out",
                              (double)tunnel_server_proxy_bytes_out(p)) &&
      cJSON_AddNumberToObject(o, "visitors_open",
                              (double)tunnel_server_proxy_visitors_open(p)) &&
      cJSON_AddNumberToObject(o, "visitors_total",
                              (double)tunnel_server_proxy_visitors_total(p));
  return ok ? 0 : TUNNEL_ENOMEM;
}

/* Clients are those of the proxies (run id, address), with a count of
 * all, proxies or not. */
static int status_client(const tunnel_server_client_info *c, void *ud) {
  cJSON *arr = ud;
  cJSON *o = cJSON_CreateObject();
  if (!o || !cJSON_AddItemToArray(arr, o))
    return o ? (cJSON_Delete(o), TUNNEL_ENOMEM) : TUNNEL_ENOMEM;
  int ok =
      cJSON_AddStringToObject(o, "run_id", tunnel_server_client_run_id(c)) &&
      cJSON_AddStringToObject(o, "addr", tunnel_server_client_addr(c)) &&
      cJSON_AddStringToObject(o, "version",
                              tunnel_server_client_version(c)) &&
      cJSON_AddNumberToObject(
          o, "since", (double)tunnel_server_client_since_unix(c)) &&
      cJSON_AddNumberToObject(o, "proxies",
                              (double)tunnel_server_client_proxies(c));
  return ok ? 0 : TUNNEL_ENOMEM;
}

static void render_status(mbuf *b, const tunnel_server *srv,
                          uint64_t uptime_ms) {
  cJSON *root = cJSON_CreateObject();
  cJSON *proxies = NULL, *clients = NULL;
  int ok =
      root &&
      cJSON_AddStringToObject(root, "version", tunnel_version_string()) &&
      cJSON_AddNumberToObject(root, "uptime_s", (double)(uptime_ms / 1000u)) &&
      cJSON_AddNumberToObject(root, "clients_connected",
                              (double)get_stat(srv, TUNNEL_SERVER_STAT_CLIENTS)) &&
      (clients = cJSON_AddArrayToObject(root, "clients")) != NULL &&
      (proxies = cJSON_AddArrayToObject(root, "proxies")) != NULL &&
      tunnel_server_foreach_client(srv, status_client, clients) == 0 &&
      tunnel_server_foreach_proxy(srv, status_proxy, proxies) == 0;
  char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (!text) {
    b->failed = 1;
    return;
  }
  mb_puts(b, text);
  mb_puts(b, "\n");
  cJSON_free(text);
}

/* ------------------------------------------------------- connections */

static void conn_handle_closed(uv_handle_t *h) {
  mconn *c = h->data;
  tunnel_server *srv = c->m->srv;
  srv->handles--;
  if (--c->handles == 0)
    tunnel__free(MEM(srv), c);
  tunnel__srv_maybe_finish_close(srv);
}

static void conn_close(mconn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  srv_metrics *m = c->m;
  if (c->prev)
    c->prev->next = c->next;
  else
    m->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  m->nconns--;
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

typedef struct {
  uv_write_t req;
  mconn *c;
  char *data;
} mwrite;

static void write_cb(uv_write_t *req, int status) {
  mwrite *w = (mwrite *)req;
  mconn *c = w->c;
  tunnel__free(MEM(c->m->srv), w->data);
  tunnel__free(MEM(c->m->srv), w);
  if (status)
    conn_close(c);
}

static void last_write_cb(uv_write_t *req, int status) {
  mwrite *w = (mwrite *)req;
  mconn *c = w->c;
  (void)status;
  tunnel__free(MEM(c->m->srv), w->data);
  tunnel__free(MEM(c->m->srv), w);
  conn_close(c);
}

/* Queues a whole response; `keep`: the connection stays open. */
static void respond(mconn *c, int code, const char *reason,
                    const char *type, const char *body, size_t body_len,
                    int keep) {
  tunnel_server *srv = c->m->srv;
  mbuf b = {MEM(srv), NULL, 0, 0, 0};
  mb_printf(&b,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: %s\r\n\r\n",
            code, reason, type, body_len, keep ? "keep-alive" : "close");
  mb_put(&b, body, body_len);
  mwrite *w = b.failed ? NULL : tunnel__malloc(MEM(srv), sizeof *w);
  if (!w) {
    tunnel__free(MEM(srv), b.p);
    conn_close(c);
    return;
  }
  w->c = c;
  w->data = b.p;
  uv_buf_t ub = uv_buf_init(b.p, (unsigned)b.len);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1,
                    keep ? write_cb : last_write_cb);
  if (rc) {
    tunnel__free(MEM(srv), b.p);
    tunnel__free(MEM(srv), w);
    conn_close(c);
    return;
  }
  if (!keep)
    uv_read_stop((uv_stream_t *)&c->tcp);
  else if (c->tcp.write_queue_size > MAX_PENDING)
    conn_close(c);
}

static void respond_text(mconn *c, int code, const char *reason,
                         const char *text) {
  respond(c, code, reason, "text/plain; charset=utf-8", text, strlen(text),
          0);
}

/* A whole request was parsed: answer it. */
static void serve(mconn *c) {
  tunnel_server *srv = c->m->srv;
  int keep = tunnel__reqhead_keep_alive(&c->req);
  const char *target = c->req.target;
  if (c->req.target_long) {
    respond_text(c, 400, "Bad Request", "request target too long\n");
    return;
  }
  size_t path_len = strcspn(target, "?#");
  int is_get = tunnel__reqhead_method(&c->req) == HTTP_GET;
  int metrics = path_len == 8 && memcmp(target, "/metrics", 8) == 0;
  int status = path_len == 11 && memcmp(target, "/api/status", 11) == 0;
  if (!is_get || (!metrics && !status)) {
    respond(c, 404, "Not Found", "text/plain; charset=utf-8", "not found\n",
            10, keep);
    return;
  }
  uint64_t uptime = uv_now(srv->loop) - srv->started_ms;
  mbuf b = {MEM(srv), NULL, 0, 0, 0};
  if (metrics)
    render_metrics(&b, srv, uptime);
  else
    render_status(&b, srv, uptime);
  if (b.failed) {
    tunnel__free(MEM(srv), b.p);
    respond_text(c, 500, "Internal Server Error", "out of memory\n");
    return;
  }
  respond(c, 200, "OK",
          metrics ? "text/plain; version=0.0.4; charset=utf-8"
                  : "application/json",
          b.p ? b.p : "", b.len, keep);
  tunnel__free(MEM(srv), b.p);
}

static void on_timeout(uv_timer_t *t) { conn_close(t->data); }

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  mconn *c = h->data;
  (void)hint;
  *buf = uv_buf_init(c->buf, sizeof c->buf);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  mconn *c = s->data;
  (void)buf;
  if (nread == 0 || c->closing)
    return;
  if (nread < 0) {
    conn_close(c);
    return;
  }
  const char *data = c->buf;
  size_t len = (size_t)nread;
  while (len && !c->closing) {
    size_t used;
    tunnel__reqhead_event ev = tunnel__reqhead_feed(&c->req, data, len, &used);
    data += used;
    len -= used;
    if (ev == TUNNEL__REQHEAD_MORE)
      break;
    if (ev != TUNNEL__REQHEAD_REQUEST) {
      respond_text(c, 400, "Bad Request",
                   ev == TUNNEL__REQHEAD_TOO_LARGE ? "request too large\n"
                                                   : "malformed request\n");
      return;
    }
    uv_timer_start(&c->timer, on_timeout, TIMEOUT_MS, 0);
    serve(c);
    if (!c->closing && !tunnel__reqhead_keep_alive(&c->req))
      return; /* closing after the answer */
  }
}

static void on_connection(uv_stream_t *l, int status) {
  srv_metrics *m = l->data;
  tunnel_server *srv = m->srv;
  if (status < 0 || srv->closing)
    return;
  mconn *c = tunnel__calloc(MEM(srv), 1, sizeof *c);
  if (!c)
    return;
  c->m = m;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles = 2;
  srv->handles += 2;
  c->next = m->conns;
  if (m->conns)
    m->conns->prev = c;
  m->conns = c;
  m->nconns++;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0 || m->nconns > MAX_CONNS) {
    conn_close(c);
    return;
  }
  tunnel__reqhead_init(&c->req, MAX_REQUEST);
  uv_timer_start(&c->timer, on_timeout, TIMEOUT_MS, 0);
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0)
    conn_close(c);
}

/* ---------------------------------------------------------------- API */

static void listener_closed(uv_handle_t *h) {
  srv_metrics *m = h->data;
  tunnel_server *srv = m->srv;
  tunnel__free(MEM(srv), m);
  srv->handles--;
  tunnel__srv_maybe_finish_close(srv);
}

void tunnel__srv_metrics_close(tunnel_server *srv) {
  srv_metrics *m = srv->metrics;
  if (!m)
    return;
  srv->metrics = NULL;
  while (m->conns)
    conn_close(m->conns);
  uv_close((uv_handle_t *)&m->listener, listener_closed);
}

int tunnel_server_listen_metrics(tunnel_server *srv, const char *host,
                                 uint16_t port) {
  if (!srv || !host)
    return TUNNEL_EINVAL;
  if (srv->closing || srv->metrics)
    return TUNNEL_ESTATE;
  struct sockaddr_storage ss;
  int rc = tunnel__parse_addr(host, port, &ss);
  if (rc)
    return rc;
  srv_metrics *m = tunnel__calloc(MEM(srv), 1, sizeof *m);
  if (!m)
    return TUNNEL_ENOMEM;
  m->srv = srv;
  uv_tcp_init(srv->loop, &m->listener);
  m->listener.data = m;
  srv->handles++;
  rc = uv_tcp_bind(&m->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&m->listener, 64, on_connection);
  int len = sizeof ss;
  if (rc == 0)
    rc = uv_tcp_getsockname(&m->listener, (struct sockaddr *)&ss, &len);
  if (rc) {
    uv_close((uv_handle_t *)&m->listener, listener_closed);
    return tunnel__uv_err(rc);
  }
  char addr[64];
  tunnel__format_addr((struct sockaddr *)&ss, addr, sizeof addr, &m->port);
  srv->metrics = m;
  tunnel__log(&srv->cfg.log, TUNNEL_LOG_INFO, "server: metrics on %s:%u",
              host, m->port);
  return 0;
}

int tunnel_server_metrics_port(const tunnel_server *srv, uint16_t *port) {
  if (!srv || !port)
    return TUNNEL_EINVAL;
  if (!srv->metrics)
    return TUNNEL_ESTATE;
  *port = srv->metrics->port;
  return 0;
}
