/* tunnel-server: the public side. Accepts tunnel clients and opens the
 * public ports their proxies ask for. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tunnel/uv.h>

#include "cli_common.h"
#include "cli_config.h"

static const char usage[] =
    "usage: tunnel-server [-c FILE] [--control HOST:PORT] [--bind HOST] [--ports LO-HI]\n"
    "                     [--token TOKEN | --token-file FILE]\n"
    "                     [--max-clients N] [--max-proxies N]\n"
    "                     [--heartbeat-timeout S] [--auth-max-skew S]\n"
    "                     [--login-limit N/S] [--require-signed-work-conns]\n"
    "                     [--http HOST:PORT] [--metrics HOST:PORT]\n"
    "                     [--https HOST:PORT] [--domain DOMAIN]\n"
    "                     [--tls-cert FILE --tls-key FILE] [--tls-ca FILE]\n"
    "                     [--tls-only | --no-tls] [--drain-ms N] [--verbose]\n"
    "  -c, --config FILE  frp server configuration, INI (frps.ini) or JSON\n"
    "             (frps.json); flags, then $TUNNEL_TOKEN, then the file\n"
    "  --control  where clients connect (default 0.0.0.0:7000; repeat for\n"
    "             more addresses, up to 4: --control 0.0.0.0:7000\n"
    "             --control [::]:7000)\n"
    "  --bind     address of the public listeners (default 0.0.0.0)\n"
    "  --ports    public ports clients may use or be given (default 1024-65535)\n"
    "  --token    shared secret (none = no auth); visible to other local\n"
    "             users in the process list: prefer --token-file\n"
    "  --token-file FILE  the secret is the first line of FILE (keep it\n"
    "             mode 600); precedence: --token, then --token-file, then\n"
    "             $TUNNEL_TOKEN\n"
    "  --max-clients N        clients logged in at once (default 1024)\n"
    "  --max-proxies N        proxies per client (default 128)\n"
    "  --heartbeat-timeout S  drop a client silent for S seconds (default 90;\n"
    "                         0: never)\n"
    "  --auth-max-skew S      accept signed timestamps within S seconds of\n"
    "                         this clock (default 900; 0: any age)\n"
    "  --login-limit N/S      N failed logins per S seconds per address\n"
    "                         (IPv6: per /64), then refused until one is\n"
    "                         earned back (default 5/60; 0/60: no limit)\n"
    "  --require-signed-work-conns  refuse unsigned non-mux work connections\n"
    "                         (a stock frpc needs authenticate_new_work_conns)\n"
    "  --http HOST:PORT  public HTTP port: requests routed by Host\n"
    "  --https HOST:PORT public HTTPS port: TLS routed by server name (SNI)\n"
    "  --domain   names NAME.DOMAIN go to subdomain NAME (default localhost)\n"
    "  --metrics HOST:PORT  GET /metrics (Prometheus) and /api/status (JSON)\n"
    "             for operators; keep it off public addresses\n"
    "  --tls-cert FILE, --tls-key FILE  certificate chain and key (PEM) for\n"
    "             TLS clients; without them a self-signed certificate is\n"
    "             made at start and its fingerprint printed (for --tls-pin)\n"
    "  --tls-ca FILE  require client certificates signed by this CA (PEM)\n"
    "  --tls-only refuse clients that do not use TLS\n"
    "  --no-tls   plain connections only\n"
    "  --drain-ms N  on SIGINT/SIGTERM, let transfers under way finish for up\n"
    "             to N ms (default 5000; 0: close at once); a second signal\n"
    "             closes at once\n"
    "  --verbose  log connections and proxies (twice: debug)\n"
    "\n"
    "Example INI file (frp's legacy format):\n"
    "  [common]\n"
    "  bind_addr = 0.0.0.0\n"
    "  bind_port = 7000\n"
    "  proxy_bind_addr = 0.0.0.0\n"
    "  vhost_http_port = 80\n"
    "  vhost_https_port = 443\n"
    "  subdomain_host = tunnel.example.com\n"
    "  allow_ports = 2000-3000, 3001, 3002-9000   ; one range once joined\n"
    "  max_ports_per_client = 10\n"
    "  token = SECRET                 ; keep the file mode 600\n"
    "  authenticate_new_work_conns = true\n"
    "  tls_only = true\n"
    "  tls_cert_file = server.crt\n"
    "  tls_key_file = server.key\n"
    "  tls_trusted_ca_file = ca.pem\n"
    "  heartbeat_timeout = 90\n"
    "  log_level = info\n"
    "\n"
    "The same as JSON (frp's current format):\n"
    "  {\"bindAddr\": \"0.0.0.0\", \"bindPort\": 7000,\n"
    "   \"proxyBindAddr\": \"0.0.0.0\",\n"
    "   \"vhostHTTPPort\": 80, \"vhostHTTPSPort\": 443,\n"
    "   \"subDomainHost\": \"tunnel.example.com\",\n"
    "   \"allowPorts\": [{\"start\": 2000, \"end\": 3000}, {\"single\": 3001},\n"
    "                  {\"start\": 3002, \"end\": 9000}],\n"
    "   \"maxPortsPerClient\": 10,\n"
    "   \"auth\": {\"token\": \"SECRET\", \"additionalScopes\": [\"NewWorkConns\"]},\n"
    "   \"transport\": {\"heartbeatTimeout\": 90,\n"
    "     \"tls\": {\"force\": true, \"certFile\": \"server.crt\",\n"
    "             \"keyFile\": \"server.key\", \"trustedCaFile\": \"ca.pem\"}},\n"
    "   \"log\": {\"level\": \"info\"}}\n"
    "Unknown keys are warned about; TOML files are not read.\n";

static tunnel_server *server;
static uv_signal_t sigint_h, sigterm_h;

static uint32_t drain_ms = 5000;
static int draining;

static void close_signals(void) {
  if (!uv_is_closing((uv_handle_t *)&sigint_h)) {
    uv_close((uv_handle_t *)&sigint_h, NULL);
    uv_close((uv_handle_t *)&sigterm_h, NULL);
  }
}

/* The drain has ended and the server is gone: nothing keeps the loop. */
static void on_drained(tunnel_server *srv, void *ud) {
  (void)srv, (void)ud;
  close_signals();
}

/* The first signal drains: transfers under way finish, nothing new is
 * taken. A second one (or --drain-ms 0) closes at once. */
static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (!draining && drain_ms) {
    draining = 1;
    fprintf(stderr,
            "tunnel-server: signal %d, draining (up to %lu ms; signal again "
            "to stop now)\n",
            signum, (unsigned long)drain_ms);
    if (tunnel_server_shutdown(server, drain_ms, on_drained, NULL) == 0)
      return;
  }
  fprintf(stderr, "tunnel-server: signal %d, shutting down\n", signum);
  close_signals();
  tunnel_server_close(server, NULL, NULL);
}

static int fail(const char *what, int rc) {
  fprintf(stderr, "tunnel-server: %s: %s\n", what, tunnel_strerror(rc));
  return 1;
}

static int run(int argc, char **argv, cli_server_conf *fc) {
  char hosts[4][256] = {"0.0.0.0"};
  uint16_t ports[4] = {7000};
  int ncontrol = 0;
  const char *bind = NULL;
  char *token_arg = NULL;
  const char *token_file = NULL;
  uint32_t lo = 1024, hi = 65535;
  uint32_t login_failures = 5, login_window_s = 60;
  uint32_t max_clients = 1024, max_proxies = 128, hb_timeout = 90,
           skew = 900;
  int require_signed = 0;
  char http_host[256] = "", https_host[256] = "";
  char metrics_host[256] = "";
  uint16_t metrics_port = 0;
  uint16_t http_port = 0, https_port = 0;
  const char *domain = NULL;
  const char *tls_cert = NULL, *tls_key = NULL, *tls_ca = NULL;
  int use_tls = 1, tls_only = 0;
  int verbose = 0;
  const char *config = NULL;
  /* The file first, so that the flags override it. */
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config"))
      config = argv[i + 1];
  if (config) {
    if (cli_server_conf_load("tunnel-server", config, fc) != 0)
      return 2;
    if (fc->bind_addr)
      snprintf(hosts[0], sizeof hosts[0], "%s", fc->bind_addr);
    if (fc->bind_port >= 0)
      ports[0] = (uint16_t)fc->bind_port;
    bind = fc->proxy_bind_addr;
    /* frp serves its HTTP(S) ports on the proxies' address. */
    const char *vh = bind ? bind : hosts[0];
    if (fc->vhost_http_port > 0) {
      snprintf(http_host, sizeof http_host, "%s", vh);
      http_port = (uint16_t)fc->vhost_http_port;
    }
    if (fc->vhost_https_port > 0) {
      snprintf(https_host, sizeof https_host, "%s", vh);
      https_port = (uint16_t)fc->vhost_https_port;
    }
    domain = fc->subdomain_host;
    if (fc->ports_lo > 0) {
      lo = (uint32_t)fc->ports_lo;
      hi = (uint32_t)fc->ports_hi;
    }
    if (fc->max_proxies > 0)
      max_proxies = (uint32_t)fc->max_proxies;
    if (fc->tls_only >= 0)
      tls_only = fc->tls_only;
    tls_cert = fc->tls_cert;
    tls_key = fc->tls_key;
    tls_ca = fc->tls_ca;
    if (fc->heartbeat_timeout >= 0)
      hb_timeout = (uint32_t)fc->heartbeat_timeout;
    if (fc->require_signed >= 0)
      require_signed = fc->require_signed;
    if (fc->verbose >= 0)
      verbose = fc->verbose;
  }
  int file_control = 1; /* the file's address until --control is given */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(usage, stdout);
      return 0;
    } else if (!strcmp(a, "--version")) {
      printf("tunnel-server %s\n", tunnel_version_string());
      return 0;
    } else if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && v) {
      i++; /* read above */
    } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
      verbose++;
    } else if (!strcmp(a, "--control") && v) {
      if (file_control) {
        /* Flags replace the file's address rather than add to it. */
        file_control = 0;
        ncontrol = 0;
      }
      if (ncontrol == 4 || cli_parse_hostport(v, hosts[ncontrol],
                                              sizeof hosts[0],
                                              &ports[ncontrol]) != 0) {
        fprintf(stderr, "tunnel-server: bad or too many --control '%s'\n",
                v);
        return 2;
      }
      ncontrol++;
      i++;
    } else if (!strcmp(a, "--bind") && v) {
      bind = v;
      i++;
    } else if (!strcmp(a, "--ports") && v) {
      char buf[32];
      const char *dash = strchr(v, '-');
      if (!dash || (size_t)(dash - v) >= sizeof buf ||
          (memcpy(buf, v, (size_t)(dash - v)), buf[dash - v] = '\0',
           cli_parse_u32(buf, 65535, &lo) != 0) ||
          cli_parse_u32(dash + 1, 65535, &hi) != 0 || lo == 0 || lo > hi) {
        fprintf(stderr, "tunnel-server: bad --ports '%s' (want LO-HI)\n", v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--token") && v) {
      token_arg = argv[i + 1];
      i++;
    } else if (!strcmp(a, "--token-file") && v) {
      token_file = v;
      i++;
    } else if (!strcmp(a, "--login-limit") && v) {
      char buf[16];
      const char *slash = strchr(v, '/');
      if (!slash || (size_t)(slash - v) >= sizeof buf ||
          (memcpy(buf, v, (size_t)(slash - v)), buf[slash - v] = '\0',
           cli_parse_u32(buf, 1000000, &login_failures) != 0) ||
          cli_parse_u32(slash + 1, 86400, &login_window_s) != 0 ||
          login_window_s == 0) {
        fprintf(stderr, "tunnel-server: bad --login-limit '%s' (want N/S, "
                        "S 1-86400)\n", v);
        return 2;
      }
      i++;
    } else if ((!strcmp(a, "--http") || !strcmp(a, "--https")) && v) {
      int tls = !strcmp(a, "--https");
      if (cli_parse_hostport(v, tls ? https_host : http_host,
                             sizeof http_host,
                             tls ? &https_port : &http_port) != 0) {
        fprintf(stderr, "tunnel-server: bad %s '%s'\n", a, v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--metrics") && v) {
      if (cli_parse_hostport(v, metrics_host, sizeof metrics_host,
                             &metrics_port) != 0) {
        fprintf(stderr, "tunnel-server: bad --metrics '%s'\n", v);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--domain") && v) {
      domain = v;
      i++;
    } else if ((!strcmp(a, "--tls-cert") || !strcmp(a, "--tls-key") ||
                !strcmp(a, "--tls-ca")) &&
               v) {
      *(!strcmp(a, "--tls-cert")  ? &tls_cert
        : !strcmp(a, "--tls-key") ? &tls_key
                                  : &tls_ca) = v;
      i++;
    } else if (!strcmp(a, "--tls-only")) {
      tls_only = 1;
    } else if (!strcmp(a, "--no-tls")) {
      use_tls = 0;
    } else if (!strcmp(a, "--require-signed-work-conns")) {
      require_signed = 1;
    } else if (!strcmp(a, "--drain-ms") && v) {
      if (cli_parse_u32(v, 86400000u, &drain_ms) != 0) {
        fprintf(stderr, "tunnel-server: bad --drain-ms '%s'\n", v);
        return 2;
      }
      i++;
    } else if ((!strcmp(a, "--max-clients") || !strcmp(a, "--max-proxies") ||
                !strcmp(a, "--heartbeat-timeout") ||
                !strcmp(a, "--auth-max-skew")) &&
               v) {
      uint32_t *dst = !strcmp(a, "--max-clients")   ? &max_clients
                      : !strcmp(a, "--max-proxies") ? &max_proxies
                      : !strcmp(a, "--auth-max-skew") ? &skew
                                                      : &hb_timeout;
      if (cli_parse_u32(v, 315360000u, dst) != 0) {
        fprintf(stderr, "tunnel-server: bad %s '%s'\n", a, v);
        return 2;
      }
      i++;
    } else {
      fprintf(stderr, "tunnel-server: unknown or incomplete argument '%s'\n%s",
              a, usage);
      return 2;
    }
  }
  if (!tls_cert != !tls_key || (!use_tls && (tls_cert || tls_ca || tls_only))) {
    fprintf(stderr, "tunnel-server: --tls-cert and --tls-key go together, "
                    "and TLS options do not go with --no-tls\n");
    return 2;
  }
  char *token;
  if (cli_token("tunnel-server", token_arg, token_file, &token) != 0)
    return 2;
  if (!token && fc->token) {
    /* Neither a flag nor the environment: the file's. */
    token = fc->token;
    fc->token = NULL;
  }
  if (!token || !*token)
    fprintf(stderr, "tunnel-server: warning: no token set, any client may "
                    "log in\n");

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
                        "tunnel-server");
  rc = tunnel_config_set_token(cfg, token);
  cli_secret_free(token); /* the config holds the only copy now */
  if (rc != 0 ||
      (rc = tunnel_config_set_port_range(cfg, (uint16_t)lo, (uint16_t)hi)) ||
      (bind && (rc = tunnel_config_set_proxy_bind_addr(cfg, bind)) != 0) ||
      (rc = tunnel_config_set_max_clients(cfg, max_clients)) != 0 ||
      (rc = tunnel_config_set_max_proxies(cfg, max_proxies)) != 0 ||
      (rc = tunnel_config_set_heartbeat(cfg, 0, hb_timeout)) != 0 ||
      (rc = tunnel_config_set_auth_max_skew(cfg, skew)) != 0 ||
      (rc = tunnel_config_set_login_limits(cfg, login_failures,
                                           login_window_s * 1000u)) != 0 ||
      (rc = tunnel_config_set_require_signed_work_conns(cfg, require_signed)) ||
      (domain && (rc = tunnel_config_set_subdomain_host(cfg, domain)) != 0) ||
      (rc = tunnel_config_set_tls(cfg, use_tls)) != 0 ||
      (rc = tunnel_config_set_tls_only(cfg, tls_only)) != 0)
    return fail("config", rc);
  if (tls_cert && (rc = tunnel_config_set_tls_cert_file(cfg, tls_cert,
                                                        tls_key)) != 0) {
    fprintf(stderr, "tunnel-server: cannot read %s or %s: %s\n", tls_cert,
            tls_key, tunnel_strerror(rc));
    return 1;
  }
  if (tls_ca && (rc = tunnel_config_set_tls_ca_file(cfg, tls_ca)) != 0) {
    fprintf(stderr, "tunnel-server: cannot read %s: %s\n", tls_ca,
            tunnel_strerror(rc));
    return 1;
  }
  rc = tunnel_server_new(&server, loop, cfg);
  tunnel_config_free(cfg);
  if (rc)
    return fail("server", rc);
  if (ncontrol == 0)
    ncontrol = 1; /* the default address */
  for (int k = 0; k < ncontrol; k++) {
    const char *host = hosts[k];
    uint16_t port = ports[k];
    rc = tunnel_server_listen(server, host, port);
    if (rc) {
      fprintf(stderr, "tunnel-server: cannot listen on %s:%u: %s\n", host,
              port, tunnel_strerror(rc));
      tunnel_server_close(server, NULL, NULL);
      uv_run(loop, UV_RUN_DEFAULT);
      return 1;
    }
    /* Port 0 on the first address: the others share what it got. */
    if (k == 0 && port == 0) {
      tunnel_server_port(server, &port);
      for (int j = 1; j < ncontrol; j++)
        if (ports[j] == 0)
          ports[j] = port;
    }
    printf(strchr(host, ':') ? "listening on [%s]:%u\n"
                             : "listening on %s:%u\n",
           host, port);
  }
  for (int tls = 0; tls < 2; tls++) {
    const char *h = tls ? https_host : http_host;
    if (!*h)
      continue;
    uint16_t vp = 0;
    rc = tls ? tunnel_server_listen_https(server, h, https_port)
             : tunnel_server_listen_http(server, h, http_port);
    if (rc == 0)
      rc = tls ? tunnel_server_https_port(server, &vp)
               : tunnel_server_http_port(server, &vp);
    if (rc) {
      fprintf(stderr, "tunnel-server: cannot listen for %s on %s: %s\n",
              tls ? "HTTPS" : "HTTP", h, tunnel_strerror(rc));
      tunnel_server_close(server, NULL, NULL);
      uv_run(loop, UV_RUN_DEFAULT);
      return 1;
    }
    printf(strchr(h, ':') ? "%s on [%s]:%u\n" : "%s on %s:%u\n",
           tls ? "https" : "http", h, vp);
  }
  if (*metrics_host) {
    rc = tunnel_server_listen_metrics(server, metrics_host, metrics_port);
    if (rc == 0)
      rc = tunnel_server_metrics_port(server, &metrics_port);
    if (rc) {
      fprintf(stderr, "tunnel-server: cannot listen for metrics on %s: %s\n",
              metrics_host, tunnel_strerror(rc));
      tunnel_server_close(server, NULL, NULL);
      uv_run(loop, UV_RUN_DEFAULT);
      return 1;
    }
    printf(strchr(metrics_host, ':') ? "metrics on [%s]:%u\n"
                                     : "metrics on %s:%u\n",
           metrics_host, metrics_port);
  }
  char fp[96];
  if (use_tls && tunnel_server_tls_fingerprint(server, fp, sizeof fp) == 0)
    printf("tls certificate%s sha256 %s\n", tls_cert ? "" : " (generated)",
           fp);
  fflush(stdout);

  uv_signal_init(loop, &sigint_h);
  uv_signal_init(loop, &sigterm_h);
  uv_signal_start(&sigint_h, on_signal, SIGINT);
  uv_signal_start(&sigterm_h, on_signal, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  cli_server_conf fc;
  cli_server_conf_init(&fc);
  int rc = run(argc, argv, &fc);
  cli_server_conf_free(&fc);
  return rc;
}
