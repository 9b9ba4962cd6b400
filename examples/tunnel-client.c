/* tunnel-client: the private side. Logs in to a tunnel-server and exposes a
 * local service: on a public port (tcp, udp), under a public name on the
 * server's HTTP (http) or HTTPS (https) port, or as a secret service only
 * clients that know its secret reach (stcp); and visits such services
 * through a local port (visit). */
#include <signal.h>
#include <stdio.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>

#include <tunnel/uv.h>

#include "cli_common.h"
#include "cli_config.h"

static const char usage[] =
    "usage: tunnel-client [-c FILE] [--server HOST:PORT]\n"
    "                     [--token TOKEN | --token-file FILE] [--no-mux]\n"
    "                     [--pool N] [--keepalive MS,MS] [--verbose]\n"
    "                     [--reconnect MS,MS | --no-reconnect] [--drain-ms MS]\n"
    "                     [--tls [--ca FILE | --tls-pin SHA256 |\n"
    "                      --tls-insecure] [--tls-cert FILE --tls-key FILE]\n"
    "                      [--tls-server-name NAME] [--no-tls-marker]]\n"
    "                     tcp LOCAL [--remote-port N] [--name NAME]\n"
    "                     udp LOCAL [--remote-port N] [--name NAME]\n"
    "                   | http LOCAL [--subdomain NAME | --hostname FQDN ...]\n"
    "                       [--host-rewrite HOST] [--basic-auth USER:PASS]\n"
    "                       [--name NAME]\n"
    "                   | https LOCAL [--subdomain NAME | --hostname FQDN ...]\n"
    "                       [--name NAME]\n"
    "                   | stcp LOCAL [--name NAME] (--secret KEY |\n"
    "                       --secret-file FILE)\n"
    "                   | visit NAME (--secret KEY | --secret-file FILE)\n"
    "                       --bind [HOST:]PORT\n"
    "                     [tcp|udp|http|https|stcp LOCAL [...] | visit ...]\n"
    "  -c, --config FILE  frp client configuration, INI (frpc.ini) or JSON\n"
    "                 (frpc.json); flags, then environment variables, then\n"
    "                 the file; its proxies run next to those given here\n"
    "  --server       default 127.0.0.1:7000 or $TUNNEL_SERVER\n"
    "  --token        shared secret; visible to other local users in the\n"
    "                 process list: prefer --token-file\n"
    "  --token-file   FILE whose first line is the secret (keep it mode\n"
    "                 600); precedence: --token, then --token-file, then\n"
    "                 $TUNNEL_TOKEN\n"
    "  --no-mux       one TCP connection per visitor instead of one shared\n"
    "  --pool N       work connections kept ready (default 1)\n"
    "  --keepalive I,T  probe the server after I ms of silence, give the link\n"
    "                 up after T ms (default 10000,30000; 0,0: off)\n"
    "  --reconnect FIRST,MAX  after a lost connection wait FIRST ms, doubled\n"
    "                 at each failure up to MAX, randomised (default\n"
    "                 500,30000); --no-reconnect: exit instead\n"
    "  --drain-ms MS  on SIGINT/SIGTERM withdraw the proxies and let visitors\n"
    "                 under way finish for up to MS ms (default 5000; 0: exit\n"
    "                 at once); a second signal exits at once\n"
    "  --tls          encrypt the connection to the server (recommended\n"
    "                 beyond a trusted network); the server is verified\n"
    "                 against the system CAs and its name\n"
    "  --ca FILE      verify against this CA (PEM) instead\n"
    "  --tls-pin SHA256  accept only the certificate with this fingerprint\n"
    "                 (as tunnel-server prints it)\n"
    "  --tls-insecure accept any certificate (unsafe: tests only)\n"
    "  --tls-cert FILE, --tls-key FILE  client certificate, for servers\n"
    "                 that require one\n"
    "  --tls-server-name NAME  name to verify (default: the server host)\n"
    "  --no-tls-marker  no frp 0x17 byte before TLS (frps >= 0.50 only)\n"
    "  any --tls-* or --ca option implies --tls\n"
    "  LOCAL          PORT or HOST:PORT (host defaults to 127.0.0.1)\n"
    "  --remote-port  public port wanted (default 0: the server picks)\n"
    "  --name         proxy name, unique on the server (default: generated)\n"
    "  --subdomain    public name NAME.DOMAIN (DOMAIN: the server's)\n"
    "  --hostname     public name (repeatable; \"*.example.com\" wildcards)\n"
    "                 without either, the server picks an unguessable name\n"
    "  --host-rewrite Host header the local service sees\n"
    "  --basic-auth   visitors must log in with these credentials\n"
    "  stcp           a secret service: no public address; visitors that\n"
    "                 know NAME and the secret reach it through their own\n"
    "                 client (visit, or frpc's stcp visitors)\n"
    "  visit NAME     a local port for the secret service NAME (of another\n"
    "                 client of the same server); each connection to it is\n"
    "                 carried to the service\n"
    "  --secret       the secret service's key (visible in the process\n"
    "                 list: prefer --secret-file)\n"
    "  --secret-file  FILE whose first line is the key (mode 600); --secret\n"
    "                 wins over it\n"
    "  --bind         the visitor's local address (host defaults to\n"
    "                 127.0.0.1; port 0: one the system picks)\n"
    "Each tcp, udp, http, https, stcp or visit word starts another proxy; the\n"
    "options after it (--name, --remote-port, --secret, ...) are that one's.\n"
    "On success the public address is printed alone on stdout: tcp://HOST:PORT,\n"
    "udp://HOST:PORT, or http(s)://NAME[:PORT], one line per name\n"
    "(again after a reconnection); stcp://NAME for a secret service; and\n"
    "tcp://HOST:PORT for a visitor's local port, once logged in. A lost\n"
    "connection is re-established with backoff; a refused login or proxy, a\n"
    "server certificate that fails verification, or a first connection that\n"
    "fails, ends the program with status 1.\n"
    "\n"
    "Example INI file (frp's legacy format):\n"
    "  [common]\n"
    "  server_addr = tunnel.example.com\n"
    "  server_port = 7000\n"
    "  token = SECRET                 ; keep the file mode 600\n"
    "  tcp_mux = true\n"
    "  pool_count = 1\n"
    "  tls_enable = true\n"
    "  tls_trusted_ca_file = ca.pem   ; also tls_cert_file, tls_key_file,\n"
    "                                 ; tls_server_name\n"
    "  heartbeat_interval = 30\n"
    "  heartbeat_timeout = 90\n"
    "  log_level = info\n"
    "  [ssh]\n"
    "  type = tcp\n"
    "  local_ip = 127.0.0.1\n"
    "  local_port = 22\n"
    "  remote_port = 6000\n"
    "  [web]\n"
    "  type = http\n"
    "  local_port = 8080\n"
    "  subdomain = web\n"
    "  custom_domains = www.example.com, example.com\n"
    "  locations = /, /api\n"
    "  host_header_rewrite = app.internal\n"
    "  http_user = admin\n"
    "  http_pwd = PASSWORD\n"
    "  header_X-From-Tunnel = yes\n"
    "  [site]\n"
    "  type = https\n"
    "  local_port = 8443\n"
    "  custom_domains = secure.example.com\n"
    "  [db]\n"
    "  type = stcp\n"
    "  sk = DB-SECRET\n"
    "  local_port = 5432\n"
    "  [other-db]                     ; another client's secret service\n"
    "  type = stcp\n"
    "  role = visitor\n"
    "  server_name = db2\n"
    "  sk = DB2-SECRET\n"
    "  bind_addr = 127.0.0.1\n"
    "  bind_port = 15432\n"
    "\n"
    "The same as JSON (frp's current format):\n"
    "  {\"serverAddr\": \"tunnel.example.com\", \"serverPort\": 7000,\n"
    "   \"auth\": {\"token\": \"SECRET\"}, \"log\": {\"level\": \"info\"},\n"
    "   \"transport\": {\"tcpMux\": true, \"poolCount\": 1,\n"
    "     \"heartbeatInterval\": 30, \"heartbeatTimeout\": 90,\n"
    "     \"tls\": {\"enable\": true, \"trustedCaFile\": \"ca.pem\"}},\n"
    "   \"proxies\": [\n"
    "     {\"name\": \"ssh\", \"type\": \"tcp\", \"localIP\": \"127.0.0.1\",\n"
    "      \"localPort\": 22, \"remotePort\": 6000},\n"
    "     {\"name\": \"web\", \"type\": \"http\", \"localPort\": 8080,\n"
    "      \"subdomain\": \"web\",\n"
    "      \"customDomains\": [\"www.example.com\", \"example.com\"],\n"
    "      \"locations\": [\"/\", \"/api\"], \"hostHeaderRewrite\": \"app.internal\",\n"
    "      \"httpUser\": \"admin\", \"httpPassword\": \"PASSWORD\",\n"
    "      \"requestHeaders\": {\"set\": {\"X-From-Tunnel\": \"yes\"}}},\n"
    "     {\"name\": \"site\", \"type\": \"https\", \"localPort\": 8443,\n"
    "      \"customDomains\": [\"secure.example.com\"]},\n"
    "     {\"name\": \"db\", \"type\": \"stcp\", \"secretKey\": \"DB-SECRET\",\n"
    "      \"localPort\": 5432}],\n"
    "   \"visitors\": [\n"
    "     {\"name\": \"other-db\", \"type\": \"stcp\", \"serverName\": \"db2\",\n"
    "      \"secretKey\": \"DB2-SECRET\", \"bindAddr\": \"127.0.0.1\",\n"
    "      \"bindPort\": 15432}]}\n"
    "Unknown keys are warned about; TOML files are not read.\n";

static tunnel_client *client;
/* Visitors' local ports, printed once logged in. */
typedef struct cli_visitor {
  tunnel_visitor *v;
  const char *host;
} cli_visitor;
static cli_visitor *visitors;
static size_t nvisitors;
static uv_signal_t sigint_h, sigterm_h;
static uint32_t drain_ms = 5000;
static int logged_in_once;
static int exit_code;
static int stopping;
static int draining;

static void close_signals(void) {
  if (uv_is_closing((uv_handle_t *)&sigint_h))
    return;
  uv_close((uv_handle_t *)&sigint_h, NULL);
  uv_close((uv_handle_t *)&sigterm_h, NULL);
}

static void stop(int code) {
  if (stopping)
    return;
  stopping = 1;
  exit_code = code;
  close_signals();
  if (client)
    tunnel_client_close(client, NULL, NULL);
}

static void drained(tunnel_client *c, void *ud) {
  (void)c, (void)ud;
  client = NULL; /* freed */
  stopping = 1;
  close_signals();
}

/* The first signal drains: proxies are withdrawn at once and visitors
 * under way may finish for a while. A second one exits now. */
static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (!draining && drain_ms && client) {
    draining = 1;
    fprintf(stderr,
            "tunnel-client: signal %d, draining for up to %u ms (again to "
            "exit now)\n",
            signum, (unsigned)drain_ms);
    if (tunnel_client_shutdown(client, drain_ms, drained, NULL) == 0)
      return;
  }
  fprintf(stderr, "tunnel-client: signal %d, shutting down\n", signum);
  stop(0);
}

/* The library connects and reconnects; this only reports it, and turns a
 * first connection that fails into an exit (like frpc: a typo in the
 * address should not loop). */
static void on_event(tunnel_client *c, int32_t event, int32_t status,
                     uint32_t delay_ms, const char *msg, void *ud) {
  (void)c, (void)ud;
  int tls = status == TUNNEL_ECERTUNTRUSTED || status == TUNNEL_ECERTNAME ||
            status == TUNNEL_ECERTPIN || status == TUNNEL_ETLS;
  switch (event) {
  case TUNNEL_EVENT_LOGGED_IN:
    fprintf(stderr, "tunnel-client: logged in (run id %s)\n", msg);
    if (!logged_in_once) {
      for (size_t i = 0; i < nvisitors; i++) {
        uint16_t port = 0;
        tunnel_visitor_port(visitors[i].v, &port);
        const char *h = visitors[i].host;
        printf(strchr(h, ':') ? "tcp://[%s]:%u\n" : "tcp://%s:%u\n", h,
               (unsigned)port);
      }
      fflush(stdout);
    }
    logged_in_once = 1;
    return;
  case TUNNEL_EVENT_LOST:
    if (status == TUNNEL_EAUTH)
      fprintf(stderr, "tunnel-client: login refused by the server: %s\n",
              msg);
    else if (tls)
      fprintf(stderr, "tunnel-client: TLS with the server failed: %s\n",
              msg && *msg ? msg : tunnel_strerror(status));
    else
      fprintf(stderr, "tunnel-client: %s: %s\n",
              logged_in_once ? "disconnected" : "cannot reach the server",
              tunnel_strerror(status));
    if (!logged_in_once)
      stop(1);
    return;
  case TUNNEL_EVENT_RETRYING:
    fprintf(stderr, "tunnel-client: reconnecting in %u.%u s\n",
            (unsigned)(delay_ms / 1000), (unsigned)(delay_ms % 1000 / 100));
    return;
  case TUNNEL_EVENT_GAVE_UP:
    if (!stopping && !draining) {
      fprintf(stderr, "tunnel-client: giving up: %s\n",
              tunnel_strerror(status));
      stop(1);
    }
    return;
  default:
    return;
  }
}

static void on_proxy(tunnel_proxy *p, int status, const char *msg, void *ud) {
  const char *scheme = ud;
  if (status == 0 && (!strcmp(scheme, "tcp") || !strcmp(scheme, "udp"))) {
    printf("%s://%s\n", scheme, msg);
    fflush(stdout);
    return;
  }
  if (status == 0) {
    /* "NAME[:PORT],NAME[:PORT]...": one URL a line. */
    for (const char *s = msg; *s;) {
      size_t n = strcspn(s, ",");
      printf("%s://%.*s\n", scheme, (int)n, s);
      s += n + (s[n] == ',');
    }
    fflush(stdout);
    return;
  }
  if (status == TUNNEL_EAGAIN) {
    /* Refused after a reconnection although accepted before: the library
     * asks again until the server lets the old registration go. */
    fprintf(stderr,
            "tunnel-client: proxy %s refused after reconnecting (%s); "
            "retrying\n",
            tunnel_proxy_name(p), msg);
    return;
  }
  fprintf(stderr, "tunnel-client: proxy %s refused by the server: %s\n",
          tunnel_proxy_name(p), msg);
  stop(1);
}

static int fail(const char *what, int rc) {
  fprintf(stderr, "tunnel-client: %s: %s\n", what, tunnel_strerror(rc));
  return 1;
}

static const char *const kind_names[] = {"",    "tcp", "http",
                                         "https", "udp", "stcp"};

/* The proxy the command line's proxy options apply to: the one its last
 * tcp/http/https word started, or (options before any such word) a new one
 * whose kind that word gives later. */
static cli_proxy_conf *cli_proxy(cli_client_conf *fc, long *cur) {
  if (*cur < 0) {
    if (!cli_client_conf_add_proxy(fc))
      return NULL;
    *cur = (long)fc->nproxies - 1;
  }
  return &fc->proxies[*cur];
}

static int set_str_arg(char **dst, const char *v) {
  char *s = strdup(v);
  if (!s)
    return -1;
  free(*dst);
  *dst = s;
  return 0;
}

/* A visitor's local port. 0, or 1 after printing why. */
static int add_visitor(const cli_proxy_conf *pc) {
  const char *host = pc->bind_addr ? pc->bind_addr : "127.0.0.1";
  cli_visitor *nv = realloc(visitors, (nvisitors + 1) * sizeof *nv);
  if (!nv)
    return fail("visitor", TUNNEL_ENOMEM);
  visitors = nv;
  tunnel_visitor *v;
  int rc = tunnel_visitor_new(&v, client, pc->server_name, pc->sk);
  if (rc)
    return fail("visitor", rc);
  rc = tunnel_visitor_listen(v, host, (uint16_t)pc->bind_port);
  if (rc) {
    fprintf(stderr, "tunnel-client: cannot listen on %s:%d for %s: %s\n",
            host, (int)pc->bind_port, pc->server_name, tunnel_strerror(rc));
    return 1;
  }
  visitors[nvisitors].v = v;
  visitors[nvisitors++].host = host;
  return 0;
}

/* Registers one proxy with the client. 0, or 1 after printing why. */
static int add_proxy(const cli_proxy_conf *pc) {
  tunnel_proxy *p;
  int rc;
  if (pc->visitor)
    return add_visitor(pc);
  const char *kind = kind_names[pc->type];
  if ((rc = tunnel_proxy_new(&p, client, pc->name, pc->type)) != 0 ||
      (rc = tunnel_proxy_set_local(p, pc->local_ip ? pc->local_ip
                                                   : "127.0.0.1",
                                   (uint16_t)pc->local_port)) != 0 ||
      ((pc->type == TUNNEL_PROXY_TCP || pc->type == TUNNEL_PROXY_UDP) &&
       (rc = tunnel_proxy_set_remote_port(
            p, (uint16_t)(pc->remote_port < 0 ? 0 : pc->remote_port))) !=
           0) ||
      (rc = tunnel_proxy_set_status_cb(p, on_proxy, (void *)kind)) != 0)
    return fail("proxy", rc);
  if (pc->subdomain && (rc = tunnel_proxy_set_subdomain(p, pc->subdomain)))
    return fail("subdomain", rc);
  for (size_t i = 0; i < pc->ndomains; i++)
    if ((rc = tunnel_proxy_add_domain(p, pc->domains[i])) != 0)
      return fail("hostname", rc);
  for (size_t i = 0; i < pc->nlocations; i++)
    if ((rc = tunnel_proxy_add_location(p, pc->locations[i])) != 0)
      return fail("location", rc);
  for (size_t i = 0; i < pc->nheaders; i++)
    if ((rc = tunnel_proxy_set_header(p, pc->header_names[i],
                                      pc->header_values[i])) != 0)
      return fail("header", rc);
  if (pc->host_rewrite &&
      (rc = tunnel_proxy_set_host_rewrite(p, pc->host_rewrite)) != 0)
    return fail("host rewrite", rc);
  if (pc->http_user && (rc = tunnel_proxy_set_basic_auth(
                            p, pc->http_user, pc->http_password)) != 0)
    return fail("basic auth", rc);
  if (pc->sk && (rc = tunnel_proxy_set_secret(p, pc->sk)) != 0)
    return fail("secret", rc);
  if ((rc = tunnel_proxy_start(p)) != 0)
    return fail("proxy", rc);
  return 0;
}

/* "A,B": two numbers of milliseconds (at most a day each). */
static int parse_pair(const char *v, uint32_t *a, uint32_t *b) {
  const char *comma = strchr(v, ',');
  char first[16];
  size_t fl = comma ? (size_t)(comma - v) : 0;
  if (!comma || fl == 0 || fl >= sizeof first)
    return -1;
  memcpy(first, v, fl);
  first[fl] = '\0';
  if (cli_parse_u32(first, 86400000u, a) != 0 ||
      cli_parse_u32(comma + 1, 86400000u, b) != 0)
    return -1;
  return 0;
}

/* Not inlined: the token file reader's 4 KiB buffer would otherwise stay in
 * run()'s frame, under every callback of the event loop, and add a page to
 * the stack the process keeps. */
static __attribute__((noinline)) int get_token(char *arg, const char *file,
                                               char **out) {
  return cli_token("tunnel-client", arg, file, out);
}

static int run(int argc, char **argv, cli_client_conf *fc) {
  char shost[256] = "127.0.0.1";
  uint16_t sport = 7000;
  const char *env_server = getenv("TUNNEL_SERVER");
  char *token_arg = NULL;
  const char *token_file = NULL;
  uint32_t pool = 1, v32;
  uint32_t ka_interval = 10000, ka_timeout = 30000;
  uint32_t rc_initial = 500, rc_max = 30000;
  int reconnect = 1;
  int mux = 1, verbose = 0;
  int tls = 0, tls_insecure = 0, tls_marker = 1;
  const char *tls_ca = NULL, *tls_pin = NULL, *tls_cert = NULL,
             *tls_key = NULL, *tls_name = NULL;
  uint32_t hb_interval = 30, hb_timeout = 90;
  const char *config = NULL;
  /* The file first, so that the environment and the flags override it. */
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config"))
      config = argv[i + 1];
  size_t nfile = 0;
  if (config) {
    if (cli_client_conf_load("tunnel-client", config, fc) != 0)
      return 2;
    nfile = fc->nproxies;
    if (fc->server_addr)
      snprintf(shost, sizeof shost, "%s", fc->server_addr);
    if (fc->server_port >= 0)
      sport = (uint16_t)fc->server_port;
    if (fc->pool_count >= 0)
      pool = (uint32_t)fc->pool_count;
    if (fc->tcp_mux >= 0)
      mux = fc->tcp_mux;
    if (fc->tls >= 0)
      tls = fc->tls;
    if (fc->tls_marker >= 0)
      tls_marker = fc->tls_marker;
    tls_ca = fc->tls_ca;
    tls_cert = fc->tls_cert;
    tls_key = fc->tls_key;
    tls_name = fc->tls_server_name;
    if (fc->heartbeat_interval >= 0)
      hb_interval = (uint32_t)fc->heartbeat_interval;
    if (fc->heartbeat_timeout >= 0)
      hb_timeout = (uint32_t)fc->heartbeat_timeout;
    if (fc->verbose >= 0)
      verbose = fc->verbose;
  }
  if (env_server && *env_server &&
      cli_parse_hostport(env_server, shost, sizeof shost, &sport) != 0) {
    fprintf(stderr, "tunnel-client: bad $TUNNEL_SERVER '%s'\n", env_server);
    return 2;
  }
  long cur = -1; /* the command line's current proxy */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    cli_proxy_conf *pc = NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(usage, stdout);
      return 0;
    } else if (!strcmp(a, "--version")) {
      printf("tunnel-client %s\n", tunnel_version_string());
      return 0;
    } else if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && v) {
      i++; /* read above */
    } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
      verbose++;
    } else if (!strcmp(a, "--server") && v) {
      if (cli_parse_hostport(v, shost, sizeof shost, &sport) != 0 ||
          sport == 0) {
        fprintf(stderr, "tunnel-client: bad --server '%s'\n", v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--token") && v) {
      token_arg = argv[i + 1];
      i++;
    } else if (!strcmp(a, "--token-file") && v) {
      token_file = v;
      i++;
    } else if (!strcmp(a, "--tls")) {
      tls = 1;
    } else if (!strcmp(a, "--tls-insecure")) {
      tls = tls_insecure = 1;
    } else if (!strcmp(a, "--no-tls-marker")) {
      tls = 1;
      tls_marker = 0;
    } else if ((!strcmp(a, "--ca") || !strcmp(a, "--tls-pin") ||
                !strcmp(a, "--tls-cert") || !strcmp(a, "--tls-key") ||
                !strcmp(a, "--tls-server-name")) &&
               v) {
      *(!strcmp(a, "--ca")         ? &tls_ca
        : !strcmp(a, "--tls-pin")  ? &tls_pin
        : !strcmp(a, "--tls-cert") ? &tls_cert
        : !strcmp(a, "--tls-key")  ? &tls_key
                                   : &tls_name) = v;
      tls = 1;
      i++;
    } else if (!strcmp(a, "--no-mux")) {
      mux = 0;
    } else if (!strcmp(a, "--keepalive") && v) {
      if (parse_pair(v, &ka_interval, &ka_timeout) != 0 ||
          (ka_interval && ka_timeout && ka_timeout <= ka_interval)) {
        fprintf(stderr,
                "tunnel-client: bad --keepalive '%s' (I,T in ms, T > I)\n",
                v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--reconnect") && v) {
      if (parse_pair(v, &rc_initial, &rc_max) != 0 || rc_initial == 0 ||
          rc_max < rc_initial) {
        fprintf(stderr,
                "tunnel-client: bad --reconnect '%s' (FIRST,MAX in ms, "
                "0 < FIRST <= MAX)\n",
                v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--no-reconnect")) {
      reconnect = 0;
    } else if (!strcmp(a, "--drain-ms") && v) {
      if (cli_parse_u32(v, 3600000u, &drain_ms) != 0) {
        fprintf(stderr, "tunnel-client: bad --drain-ms '%s' (ms)\n", v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--pool") && v) {
      if (cli_parse_u32(v, 100, &pool) != 0) {
        fprintf(stderr, "tunnel-client: bad --pool '%s' (0-100)\n", v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "visit") && v) {
      if (cur >= 0 && fc->proxies[cur].type)
        cur = -1;
      if (!(pc = cli_proxy(fc, &cur)))
        goto oom;
      pc->type = TUNNEL_PROXY_STCP;
      pc->visitor = 1;
      if (!*v || strlen(v) > 255) {
        fprintf(stderr, "tunnel-client: bad visit NAME '%s'\n", v);
        return 2;
      }
      if (set_str_arg(&pc->server_name, v))
        goto oom;
      i++;
    } else if (!strcmp(a, "--secret") && v) {
      if (!*v || strlen(v) > 255) {
        fprintf(stderr, "tunnel-client: bad --secret (1-255 bytes)\n");
        return 2;
      }
      if (!(pc = cli_proxy(fc, &cur)))
        goto oom;
      cli_secret_free(pc->sk);
      pc->sk = strdup(v);
      /* The process list no longer shows it. */
      cli_wipe_string(argv[i + 1]);
      if (!pc->sk)
        goto oom;
      i++;
    } else if (!strcmp(a, "--secret-file") && v) {
      if (!(pc = cli_proxy(fc, &cur)))
        goto oom;
      if (!pc->sk) { /* --secret wins, before or after */
        if (!(pc->sk =
                  cli_read_secret_file("tunnel-client", "secret file", v)))
          return 2;
        if (strlen(pc->sk) > 255) {
          fprintf(stderr, "tunnel-client: secret file '%s': longer than 255 "
                          "bytes\n", v);
          return 2;
        }
      }
      i++;
    } else if (!strcmp(a, "--bind") && v) {
      uint16_t bport;
      char bhost[256] = "127.0.0.1";
      if (cli_parse_hostport(v, bhost, sizeof bhost, &bport) != 0) {
        fprintf(stderr, "tunnel-client: bad --bind '%s' ([HOST:]PORT)\n", v);
        return 2;
      }
      if (!(pc = cli_proxy(fc, &cur)) || set_str_arg(&pc->bind_addr, bhost))
        goto oom;
      pc->bind_port = bport;
      i++;
    } else if ((!strcmp(a, "tcp") || !strcmp(a, "http") ||
                !strcmp(a, "https") || !strcmp(a, "udp") ||
                !strcmp(a, "stcp")) &&
               v) {
      /* A kind word starts a proxy, unless options before it began one. */
      if (cur >= 0 && fc->proxies[cur].type)
        cur = -1;
      uint16_t lport;
      char lhost[256] = "127.0.0.1";
      if (!(pc = cli_proxy(fc, &cur)))
        goto oom;
      pc->type = a[0] == 't'   ? TUNNEL_PROXY_TCP
                 : a[0] == 'u' ? TUNNEL_PROXY_UDP
                 : a[0] == 's' ? TUNNEL_PROXY_STCP
                 : a[4]        ? TUNNEL_PROXY_HTTPS
                               : TUNNEL_PROXY_HTTP;
      if (cli_parse_hostport(v, lhost, sizeof lhost, &lport) != 0 ||
          lport == 0) {
        fprintf(stderr, "tunnel-client: bad LOCAL '%s' (PORT or HOST:PORT)\n",
                v);
        return 2;
      }
      pc->local_port = lport;
      if (set_str_arg(&pc->local_ip, lhost))
        goto oom;
      i++;
    } else if (!strcmp(a, "--remote-port") && v) {
      if (cli_parse_u32(v, 65535, &v32) != 0) {
        fprintf(stderr, "tunnel-client: bad --remote-port '%s'\n", v);
        return 2;
      }
      if (!(pc = cli_proxy(fc, &cur)))
        goto oom;
      pc->remote_port = (int32_t)v32;
      i++;
    } else if ((!strcmp(a, "--name") || !strcmp(a, "--subdomain") ||
                !strcmp(a, "--host-rewrite")) &&
               v) {
      if (!(pc = cli_proxy(fc, &cur)) ||
          set_str_arg(a[2] == 'n'   ? &pc->name
                      : a[2] == 's' ? &pc->subdomain
                                    : &pc->host_rewrite,
                      v))
        goto oom;
      i++;
    } else if (!strcmp(a, "--hostname") && v) {
      if (!(pc = cli_proxy(fc, &cur)) ||
          cli_conf_list_add(&pc->domains, &pc->ndomains, v))
        goto oom;
      i++;
    } else if (!strcmp(a, "--basic-auth") && v && strchr(v, ':')) {
      size_t ulen = (size_t)(strchr(v, ':') - v);
      if (ulen == 0 || ulen >= 256) {
        fprintf(stderr, "tunnel-client: --basic-auth: %s\n",
                tunnel_strerror(TUNNEL_EINVAL));
        return 1;
      }
      if (!(pc = cli_proxy(fc, &cur)))
        goto oom;
      free(pc->http_user);
      free(pc->http_password);
      pc->http_user = strndup(v, ulen);
      pc->http_password = strdup(v + ulen + 1);
      if (!pc->http_user || !pc->http_password)
        goto oom;
      i++;
    } else {
      fprintf(stderr, "tunnel-client: unknown or incomplete argument '%s'\n%s",
              a, usage);
      return 2;
    }
  }
  if (fc->nproxies == 0 || fc->proxies[fc->nproxies - 1].type == 0) {
    fprintf(stderr, "tunnel-client: nothing to expose\n%s", usage);
    return 2;
  }
  /* The file's proxies were checked as it was read; these are the
   * command line's. */
  for (size_t k = nfile; k < fc->nproxies; k++) {
    cli_proxy_conf *pc = &fc->proxies[k];
    int type = pc->type;
    int port_kind = type == TUNNEL_PROXY_TCP || type == TUNNEL_PROXY_UDP;
    int stcp = type == TUNNEL_PROXY_STCP;
    if (((port_kind || stcp) && (pc->subdomain || pc->ndomains ||
                                 pc->host_rewrite || pc->http_user)) ||
        ((!port_kind || pc->visitor) && pc->remote_port >= 0) ||
        (type == TUNNEL_PROXY_HTTPS && (pc->host_rewrite || pc->http_user)) ||
        (!stcp && pc->sk) || (!pc->visitor && pc->bind_addr) ||
        (pc->visitor && pc->name)) {
      fprintf(stderr, "tunnel-client: option not valid for a%s\n%s",
              pc->visitor ? " visit" : stcp ? " stcp proxy"
              : type == TUNNEL_PROXY_HTTP   ? "n http proxy"
              : type == TUNNEL_PROXY_HTTPS  ? "n https proxy"
              : type == TUNNEL_PROXY_UDP    ? " udp proxy"
                                            : " tcp proxy",
              usage);
      return 2;
    }
    if (stcp && !pc->sk) {
      fprintf(stderr, "tunnel-client: %s needs --secret or --secret-file\n",
              pc->visitor ? "visit" : "stcp");
      return 2;
    }
    if (pc->visitor) {
      if (pc->bind_port < 0) {
        fprintf(stderr, "tunnel-client: visit needs --bind [HOST:]PORT\n");
        return 2;
      }
      continue;
    }
    if (!pc->name) {
      char gen[64];
      uint8_t r[3] = {0};
      uv_random(NULL, NULL, r, sizeof r, 0, NULL);
      snprintf(gen, sizeof gen, "%s-%d-%02x%02x%02x", kind_names[type],
               (int)pc->local_port, r[0], r[1], r[2]);
      if (set_str_arg(&pc->name, gen))
        goto oom;
    }
  }

  if (!tls_cert != !tls_key) {
    fprintf(stderr, "tunnel-client: --tls-cert and --tls-key go together\n");
    return 2;
  }
  if (tls_insecure)
    fprintf(stderr,
            "tunnel-client: WARNING: --tls-insecure: the server is not "
            "verified; anyone on the path can read and change this "
            "tunnel's traffic\n");
  else if (!tls && !cli_is_loopback(shost))
    fprintf(stderr, "tunnel-client: note: the connection to %s is not "
                    "encrypted; use --tls beyond a trusted network\n",
            shost);
  char *token;
  if (get_token(token_arg, token_file, &token) != 0)
    return 2;
  if (!token && fc->token) {
    /* Neither a flag nor the environment: the file's. */
    token = fc->token;
    fc->token = NULL;
  }

  /* A visitor resetting mid-write must not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  uv_loop_t *loop = uv_default_loop();
  tunnel_config *cfg;
  int rc = tunnel_config_new(&cfg);
  if (rc) {
    cli_secret_free(token);
    return fail("config", rc);
  }
  tunnel_config_set_log(cfg, cli_log,
                        verbose >= 2   ? TUNNEL_LOG_DEBUG
                        : verbose == 1 ? TUNNEL_LOG_INFO
                                       : TUNNEL_LOG_WARN,
                        "tunnel-client");
  rc = tunnel_config_set_token(cfg, token);
  cli_secret_free(token); /* the config holds the only copy now */
  if (rc != 0 ||
      (rc = tunnel_config_set_pool_count(cfg, pool)) != 0 ||
      (rc = tunnel_config_set_keepalive(cfg, ka_interval, ka_timeout)) != 0 ||
      (rc = tunnel_config_set_reconnect(cfg, reconnect, rc_initial, rc_max,
                                        0)) != 0 ||
      (rc = tunnel_config_set_tcp_mux(cfg, mux)) != 0 ||
      (rc = tunnel_config_set_heartbeat(cfg, hb_interval, hb_timeout)) != 0 ||
      (rc = tunnel_config_set_tls(cfg, tls)) != 0 ||
      (rc = tunnel_config_set_tls_insecure(cfg, tls_insecure)) != 0 ||
      (rc = tunnel_config_set_tls_marker(cfg, tls_marker)) != 0)
    return fail("config", rc);
  if (tls_ca && (rc = tunnel_config_set_tls_ca_file(cfg, tls_ca)) != 0) {
    fprintf(stderr, "tunnel-client: cannot read %s: %s\n", tls_ca,
            tunnel_strerror(rc));
    return 1;
  }
  if (tls_cert && (rc = tunnel_config_set_tls_cert_file(cfg, tls_cert,
                                                        tls_key)) != 0) {
    fprintf(stderr, "tunnel-client: cannot read %s or %s: %s\n", tls_cert,
            tls_key, tunnel_strerror(rc));
    return 1;
  }
  if (tls_pin && (rc = tunnel_config_set_tls_pin(cfg, tls_pin)) != 0)
    return fail("--tls-pin (want 64 hex digits, colons allowed)", rc);
  if (tls_name && (rc = tunnel_config_set_tls_server_name(cfg, tls_name)))
    return fail("--tls-server-name", rc);
  rc = tunnel_client_new(&client, loop, cfg);
  tunnel_config_free(cfg);
  if (rc == TUNNEL_ENOTSUP && !mux) {
    fprintf(stderr, "tunnel-client: --no-mux is not available in this "
                    "version\n");
    return 1;
  }
  if (rc)
    return fail("client", rc);
  tunnel_client_set_event_cb(client, on_event, NULL);
  for (size_t k = 0; k < fc->nproxies; k++)
    if (add_proxy(&fc->proxies[k]) != 0)
      return 1;
  uv_signal_init(loop, &sigint_h);
  uv_signal_init(loop, &sigterm_h);
  uv_signal_start(&sigint_h, on_signal, SIGINT);
  uv_signal_start(&sigterm_h, on_signal, SIGTERM);
  rc = tunnel_client_connect(client, shost, sport);
  if (rc) {
    fprintf(stderr, "tunnel-client: cannot connect to %s:%u: %s\n", shost,
            sport, tunnel_strerror(rc));
    stop(1);
  }
  uv_run(loop, UV_RUN_DEFAULT);
  if (uv_loop_close(loop) != 0)
    return 1;
  return exit_code;

oom:
  fprintf(stderr, "tunnel-client: out of memory\n");
  return 1;
}

/* An idle client should cost little memory; these settings remove costs
 * that are not the tunnel's own. */
static void trim_footprint(void) {
  /* glibc formats into an 8 KiB array on the stack for each fprintf to an
   * unbuffered stream, and gives stdout a 4 KiB heap buffer: small line
   * buffers keep the messages line by line without either. */
  static char out_buf[256], err_buf[256];
  setvbuf(stdout, out_buf, _IOLBF, sizeof out_buf);
  setvbuf(stderr, err_buf, _IOLBF, sizeof err_buf);
  /* libuv resolves host names on its thread pool, which starts 4 threads
   * at the first lookup. This program's lookups are few and short (the
   * server's name per connection to it, a local host given by name per
   * visitor): one thread suffices. A setting in the environment is kept. */
  setenv("UV_THREADPOOL_SIZE", "1", 0);
#if defined(__GLIBC__) && defined(M_ARENA_MAX)
  /* The pool thread's lookups would otherwise open a second malloc arena
   * for the life of the process; they are few and short. */
  mallopt(M_ARENA_MAX, 1);
#endif
}

int main(int argc, char **argv) {
  trim_footprint();
  cli_client_conf fc;
  cli_client_conf_init(&fc);
  int rc = run(argc, argv, &fc);
  cli_client_conf_free(&fc);
  free(visitors);
  return rc;
}
