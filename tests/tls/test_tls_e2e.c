/* End-to-end TLS between tunnel clients and a tunnel server over loopback
 * sockets, one uv loop per case: certificate verification (CA, host name,
 * IP address, pin, insecure), client certificates, TLS-only servers, the
 * 0x17 marker, session resumption and garbage handshakes. Certificates are
 * made at run time (lib/certgen.h); everything else goes through the public
 * API. Each case ends by closing everything, checking that the library
 * returned all memory it took through the configured allocator and that
 * uv_loop_close succeeds.
 *
 * Usage: test-tls-e2e [TEST_NAME]  (default: all tests)
 * Environment: IT_LOG=0..3 prints library log lines up to that level
 * (default 1: errors and warnings) on stderr. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <tunnel/uv.h>

#include "certgen.h"
#include "it_common.h"
#include "it_data.h"

#define BULK_BYTES (32u << 20)
#define SMALL_BYTES (256u << 10)
#define CHUNK (64u * 1024u)
/* A peer keeps at most this much queued in libuv before waiting for write
 * completions. */
#define INFLIGHT_MAX (1u << 20)
#define BULK_WAIT_MS 90000u
#define MAX_CLIENTS 6

static int print_level = TUNNEL_LOG_WARN;

/* ------------------------------------------------------- certificates */

typedef struct pem {
  char *cert, *key;
} pem;

/* Server CA and its server certificate (SANs "localhost" and 127.0.0.1), a
 * CA nobody configured, the CA for client certificates, one client
 * certificate signed by it and one signed by the wrong CA. */
static pem ca, other_ca, srv_cert, client_ca, cli_good, cli_bad;

static int entropy(void *ud, uint8_t *out, size_t n) {
  (void)ud;
  return uv_random(NULL, NULL, out, n, 0, NULL) == 0 ? 0 : TUNNEL_EIO;
}

static void gen(pem *out, const char *cn, int is_ca, const pem *issuer,
                int sans) {
  static const char *const dns[] = {"localhost"};
  static const tunnel__certgen_ip ip = {{127, 0, 0, 1}, 4};
  uint64_t now = (uint64_t)time(NULL);
  char nb[15], na[15];
  tunnel__certgen_time(now - 3600, nb);
  tunnel__certgen_time(now + 86400, na);
  tunnel__certgen_params p = {0};
  p.entropy = entropy;
  p.cn = cn;
  p.is_ca = is_ca;
  p.not_before = nb;
  p.not_after = na;
  if (sans) {
    p.dns = dns;
    p.n_dns = 1;
    p.ips = &ip;
    p.n_ips = 1;
  }
  if (issuer) {
    p.issuer_cert_pem = issuer->cert;
    p.issuer_key_pem = issuer->key;
  }
  assert_int_equal(tunnel__certgen(&p, &out->cert, &out->key), 0);
}

static void pem_free(pem *p) {
  if (p->key)
    tunnel__wipe(p->key, strlen(p->key) + 1);
  free(p->key);
  free(p->cert);
  p->cert = p->key = NULL;
}

static int group_setup(void **state) {
  (void)state;
  gen(&ca, "e2e server CA", 1, NULL, 0);
  gen(&other_ca, "e2e unrelated CA", 1, NULL, 0);
  gen(&srv_cert, "localhost", 0, &ca, 1);
  gen(&client_ca, "e2e client CA", 1, NULL, 0);
  gen(&cli_good, "client good", 0, &client_ca, 0);
  gen(&cli_bad, "client bad", 0, &other_ca, 0);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  pem_free(&ca);
  pem_free(&other_ca);
  pem_free(&srv_cert);
  pem_free(&client_ca);
  pem_free(&cli_good);
  pem_free(&cli_bad);
  return 0;
}

/* ------------------------------------------------------------ logging */

/* Every line a client or the server logs, kept for the assertions. */
typedef struct logbuf {
  const char *who;
  char *text;
  size_t len, cap;
} logbuf;

static void log_sink(int level, const char *msg, void *ud) {
  logbuf *b = ud;
  if (level <= print_level)
    fprintf(stderr, "[%s] %s: %s\n", b->who, tunnel_log_level_name(level),
            msg);
  size_t n = strlen(msg);
  if (b->len + n + 2 > b->cap) {
    size_t cap = (b->cap ? b->cap * 2 : 4096) + n + 2;
    char *t = realloc(b->text, cap);
    assert_non_null(t);
    b->text = t;
    b->cap = cap;
  }
  memcpy(b->text + b->len, msg, n);
  b->len += n;
  b->text[b->len++] = '\n';
  b->text[b->len] = '\0';
}

/* Lines containing every one of the (up to two) fragments. */
static int log_count(const logbuf *b, const char *a, const char *c) {
  int n = 0;
  for (const char *line = b->text; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    char tmp[1024];
    size_t k = len < sizeof tmp - 1 ? len : sizeof tmp - 1;
    memcpy(tmp, line, k);
    tmp[k] = '\0';
    if (strstr(tmp, a) && (!c || strstr(tmp, c)))
      n++;
    line = end ? end + 1 : NULL;
  }
  return n;
}

/* ------------------------------------------------------------ fixture */

typedef struct fx fx;

/* One TCP endpoint: a visitor, a connection of the echo service, or a raw
 * peer of the control port. */
typedef struct peer {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  fx *f;
  struct peer *next;
  int echo;               /* write back what arrives, half-close on EOF */
  int sniff;              /* record the first byte, then close */
  const uint8_t *first;   /* raw bytes sent once connected */
  size_t first_len;
  uint64_t tx_total, tx_queued, tx_inflight, tx_hash;
  uint32_t seed;
  uint64_t rx_bytes, rx_hash;
  uint64_t opened_ms, ended_ms;
  int conn_status, reading, rx_eof, rx_err, write_err;
  int shut_req, shut_done, closing, closed;
  uint8_t rbuf[CHUNK];
} peer;

typedef struct cl {
  fx *f;
  tunnel_client *c;
  logbuf log;
  int state_calls, seen, state;
  char msg[256];
  int closed;
  tunnel_proxy *p;
  int px_calls, px_status;
  uint16_t px_port;
} cl;

struct fx {
  uv_loop_t loop;
  it_waiter w;
  memstat mem;
  uint16_t lo, hi;
  tunnel_server *srv;
  uint16_t srv_port;
  int srv_closed;
  logbuf srv_log;
  char pin[96];
  uv_tcp_t svc;     /* the echo service, or a sniffer */
  uint16_t svc_port;
  int svc_sniff, svc_closed;
  int sniffed;      /* first byte seen by the sniffer, -1: none yet */
  cl cls[MAX_CLIENTS];
  int ncls;
  peer *peers;
};

#define WAIT(f, cond) IT_WAIT(&(f)->w, cond, IT_WAIT_MS)

static uint64_t now_ms(fx *f) {
  uv_update_time(&f->loop);
  return uv_now(&f->loop);
}

/* ------------------------------------------------------------- peers */

typedef struct wreq {
  uv_write_t req;
  peer *p;
  size_t len;
  uint8_t data[];
} wreq;

static void peer_pump(peer *p);
static void peer_read_start(peer *p);

static void peer_closed_cb(uv_handle_t *h) { ((peer *)h->data)->closed = 1; }

static void peer_close(peer *p) {
  if (p->closing)
    return;
  p->closing = 1;
  if (!p->ended_ms)
    p->ended_ms = now_ms(p->f);
  uv_close((uv_handle_t *)&p->tcp, peer_closed_cb);
}

static int peer_wants_shut(const peer *p) { return p->echo || p->tx_total; }

static void peer_maybe_close(peer *p) {
  if ((p->rx_eof && (p->shut_done || !peer_wants_shut(p))) || p->rx_err)
    peer_close(p);
}

static peer *peer_new(fx *f) {
  peer *p = calloc(1, sizeof *p);
  assert_non_null(p);
  p->f = f;
  p->tx_hash = p->rx_hash = FNV_OFFSET;
  uv_tcp_init(&f->loop, &p->tcp);
  p->tcp.data = p;
  p->opened_ms = now_ms(f);
  p->next = f->peers;
  f->peers = p;
  return p;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  peer *p = req->data;
  (void)status;
  p->shut_done = 1;
  peer_maybe_close(p);
}

static void peer_shutdown(peer *p) {
  if (p->shut_req || p->closing)
    return;
  p->shut_req = 1;
  p->sreq.data = p;
  if (uv_shutdown(&p->sreq, (uv_stream_t *)&p->tcp, on_shutdown) != 0) {
    p->shut_done = 1;
    peer_maybe_close(p);
  }
}

static void on_write(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  peer *p = w->p;
  p->tx_inflight -= w->len;
  free(w);
  if (status && !p->write_err)
    p->write_err = status;
  if (status || p->closing)
    return;
  peer_pump(p);
  /* An echoing peer paused reading while its writes were backed up. */
  if (p->echo && !p->reading && p->tx_inflight <= INFLIGHT_MAX / 2)
    peer_read_start(p);
}

static void peer_write(peer *p, const uint8_t *data, size_t n, int gen) {
  if (p->closing || n == 0)
    return;
  wreq *w = malloc(sizeof *w + n);
  assert_non_null(w);
  w->p = p;
  w->len = n;
  if (gen)
    gen_fill(p->seed, p->tx_queued, w->data, n);
  else
    memcpy(w->data, data, n);
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
  if (uv_write(&w->req, (uv_stream_t *)&p->tcp, &b, 1, on_write) != 0) {
    free(w);
    if (!p->write_err)
      p->write_err = -1;
    return;
  }
  p->tx_inflight += n;
  if (gen) {
    p->tx_hash = fnv1a(p->tx_hash, w->data, n);
    p->tx_queued += n;
  }
}

/* Queues generated bytes up to the in-flight limit, then half-closes. */
static void peer_pump(peer *p) {
  while (p->tx_queued < p->tx_total && p->tx_inflight < INFLIGHT_MAX &&
         !p->write_err && !p->closing) {
    uint64_t left = p->tx_total - p->tx_queued;
    peer_write(p, NULL, left < CHUNK ? (size_t)left : CHUNK, 1);
  }
  if (p->tx_total && p->tx_queued == p->tx_total)
    peer_shutdown(p);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  peer *p = h->data;
  (void)hint;
  *b = uv_buf_init((char *)p->rbuf, sizeof p->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  peer *p = s->data;
  if (n == 0)
    return;
  if (n > 0) {
    const uint8_t *d = (const uint8_t *)b->base;
    if (p->sniff) {
      if (p->f->sniffed < 0)
        p->f->sniffed = d[0];
      peer_close(p);
      return;
    }
    p->rx_bytes += (uint64_t)n;
    p->rx_hash = fnv1a(p->rx_hash, d, (size_t)n);
    if (p->echo) {
      peer_write(p, d, (size_t)n, 0);
      if (p->tx_inflight > INFLIGHT_MAX) {
        uv_read_stop(s);
        p->reading = 0;
      }
    }
    return;
  }
  uv_read_stop(s);
  p->reading = 0;
  p->ended_ms = now_ms(p->f);
  if (n == UV_EOF) {
    p->rx_eof = 1;
    if (p->echo)
      peer_shutdown(p);
  } else {
    p->rx_err = (int)n;
  }
  peer_maybe_close(p);
}

static void peer_read_start(peer *p) {
  if (p->closing || p->rx_eof || p->rx_err)
    return;
  p->reading = 1;
  assert_int_equal(uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read),
                   0);
}

static void on_connect(uv_connect_t *req, int status) {
  peer *p = req->data;
  p->conn_status = status ? status : 1;
  if (status) {
    p->rx_err = status;
    peer_close(p);
    return;
  }
  peer_read_start(p);
  if (p->first)
    peer_write(p, p->first, p->first_len, 0);
  peer_pump(p);
}

/* A TCP client of 127.0.0.1:port sending `bytes` generated bytes (then a
 * half-close), or the raw `first` bytes when `bytes` is 0. */
static peer *peer_connect(fx *f, uint16_t port, uint64_t bytes, uint32_t seed,
                          const uint8_t *first, size_t first_len) {
  peer *p = peer_new(f);
  p->tx_total = bytes;
  p->seed = seed;
  p->first = first;
  p->first_len = first_len;
  struct sockaddr_in a;
  assert_int_equal(uv_ip4_addr("127.0.0.1", port, &a), 0);
  p->creq.data = p;
  assert_int_equal(uv_tcp_connect(&p->creq, &p->tcp,
                                  (const struct sockaddr *)&a, on_connect),
                   0);
  return p;
}

static void on_svc_conn(uv_stream_t *l, int status) {
  fx *f = l->data;
  if (status < 0)
    return;
  peer *p = peer_new(f);
  p->echo = !f->svc_sniff;
  p->sniff = f->svc_sniff;
  assert_int_equal(uv_accept(l, (uv_stream_t *)&p->tcp), 0);
  peer_read_start(p);
}

/* The local service on 127.0.0.1: an echo, or a sniffer that records the
 * first byte a connection sends. */
static void svc_start(fx *f, int sniff) {
  struct sockaddr_in a;
  int len = sizeof a;
  f->svc_sniff = sniff;
  f->sniffed = -1;
  uv_tcp_init(&f->loop, &f->svc);
  f->svc.data = f;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
  assert_int_equal(uv_tcp_bind(&f->svc, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&f->svc, 128, on_svc_conn), 0);
  assert_int_equal(
      uv_tcp_getsockname(&f->svc, (struct sockaddr *)&a, &len), 0);
  f->svc_port = ntohs(a.sin_port);
}

/* ----------------------------------------------------- server, clients */

static void fx_init(fx *f) {
  memset(f, 0, sizeof *f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  it_waiter_init(&f->w, &f->loop);
  it_pick_range(&f->lo, &f->hi);
  f->srv_log.who = "server";
  svc_start(f, 0);
}

static tunnel_config *cfg_new(fx *f, logbuf *log, int level) {
  tunnel_config *cfg;
  assert_int_equal(tunnel_config_new(&cfg), 0);
  assert_int_equal(tunnel_config_set_allocator(cfg, mem_malloc, mem_realloc,
                                               mem_free, &f->mem),
                   0);
  assert_int_equal(tunnel_config_set_log(cfg, log_sink, level, log), 0);
  assert_int_equal(tunnel_config_set_token(cfg, "tls-e2e"), 0);
  return cfg;
}

/* Server config: TLS on; `with_cert` uses the CA-signed certificate, else
 * one is generated. */
static tunnel_config *srv_cfg(fx *f, int with_cert) {
  tunnel_config *cfg = cfg_new(f, &f->srv_log, TUNNEL_LOG_DEBUG);
  assert_int_equal(tunnel_config_set_proxy_bind_addr(cfg, "127.0.0.1"), 0);
  assert_int_equal(tunnel_config_set_port_range(cfg, f->lo, f->hi), 0);
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  if (with_cert)
    assert_int_equal(
        tunnel_config_set_tls_cert(
            cfg, (const uint8_t *)srv_cert.cert, strlen(srv_cert.cert),
            (const uint8_t *)srv_cert.key, strlen(srv_cert.key)),
        0);
  return cfg;
}

static void srv_start(fx *f, tunnel_config *cfg) {
  assert_int_equal(tunnel_server_new(&f->srv, &f->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_server_listen(f->srv, "127.0.0.1", 0), 0);
  assert_int_equal(tunnel_server_port(f->srv, &f->srv_port), 0);
  if (tunnel_server_tls_fingerprint(f->srv, f->pin, sizeof f->pin) == 0)
    assert_int_equal(strlen(f->pin), 95);
}

/* A client slot and its config; the case adds its TLS settings. */
static tunnel_config *cl_cfg(fx *f, cl **out, const char *who) {
  assert_true(f->ncls < MAX_CLIENTS);
  cl *k = &f->cls[f->ncls++];
  memset(k, 0, sizeof *k);
  k->f = f;
  k->log.who = who;
  *out = k;
  return cfg_new(f, &k->log, TUNNEL_LOG_DEBUG);
}

static void on_state(tunnel_client *c, int status, const char *msg,
                     void *ud) {
  cl *k = ud;
  (void)c;
  k->state_calls++;
  k->state = status;
  snprintf(k->msg, sizeof k->msg, "%s", msg ? msg : "(null)");
}

static void cl_start(cl *k, tunnel_config *cfg) {
  assert_int_equal(tunnel_client_new(&k->c, &k->f->loop, cfg), 0);
  tunnel_config_free(cfg);
  assert_int_equal(tunnel_client_set_state_cb(k->c, on_state, k), 0);
  assert_int_equal(tunnel_client_connect(k->c, "127.0.0.1", k->f->srv_port),
                   0);
}

/* Waits for the client's next state callback (each is consumed once). */
static void next_state(fx *f, cl *k) {
  WAIT(f, k->state_calls > k->seen);
  k->seen++;
}

static void wait_login(fx *f, cl *k) {
  next_state(f, k);
  if (k->state != 0)
    fail_msg("[%s] login failed: %s (%s)", k->log.who,
             tunnel_err_name(k->state), k->msg);
}

/* Waits for a refusal and returns its code; the message is printed. */
static int wait_refused(fx *f, cl *k) {
  next_state(f, k);
  if (k->state == 0)
    fail_msg("[%s] logged in, expected a refusal", k->log.who);
  fprintf(stderr, "# [%s] refused as expected: %s: %s\n", k->log.who,
          tunnel_err_name(k->state), k->msg);
  return k->state;
}

static void on_px_status(tunnel_proxy *p, int status, const char *msg,
                         void *ud) {
  cl *k = ud;
  (void)p;
  k->px_calls++;
  k->px_status = status;
  const char *colon = status == 0 && msg ? strrchr(msg, ':') : NULL;
  k->px_port = colon ? (uint16_t)atoi(colon + 1) : 0;
}

/* A TCP proxy of client `k` to the echo service; returns its public port. */
static uint16_t cl_proxy(fx *f, cl *k) {
  char name[64];
  snprintf(name, sizeof name, "echo-%s", k->log.who);
  assert_int_equal(tunnel_proxy_new(&k->p, k->c, name, TUNNEL_PROXY_TCP), 0);
  assert_int_equal(tunnel_proxy_set_local(k->p, "127.0.0.1", f->svc_port), 0);
  assert_int_equal(tunnel_proxy_set_status_cb(k->p, on_px_status, k), 0);
  assert_int_equal(tunnel_proxy_start(k->p), 0);
  WAIT(f, k->px_calls > 0);
  assert_int_equal(k->px_status, 0);
  assert_true(k->px_port >= f->lo && k->px_port <= f->hi);
  return k->px_port;
}

/* Sends `bytes` through each of the proxies `ports` at once and checks
 * that every byte came back intact (up through the tunnel to the echo
 * service, and back down). */
static void echo_through(fx *f, const uint16_t *ports, int n, uint64_t bytes) {
  peer *v[MAX_CLIENTS];
  assert_true(n <= MAX_CLIENTS);
  for (int i = 0; i < n; i++)
    v[i] = peer_connect(f, ports[i], bytes, 0x5eed0000u + (uint32_t)i, NULL,
                        0);
  for (int i = 0; i < n; i++) {
    IT_WAIT(&f->w, v[i]->closed, BULK_WAIT_MS);
    assert_int_equal(v[i]->rx_err, 0);
    assert_int_equal(v[i]->write_err, 0);
    assert_int_equal(v[i]->tx_queued, bytes);
    assert_int_equal(v[i]->rx_bytes, bytes);
    assert_true(v[i]->rx_hash == v[i]->tx_hash);
  }
}

static void echo_one(fx *f, uint16_t port, uint64_t bytes) {
  echo_through(f, &port, 1, bytes);
}

static void on_cl_closed(tunnel_client *c, void *ud) {
  (void)c;
  ((cl *)ud)->closed = 1;
}

static void on_srv_closed(tunnel_server *s, void *ud) {
  (void)s;
  ((fx *)ud)->srv_closed = 1;
}

static void on_svc_closed(uv_handle_t *h) { ((fx *)h->data)->svc_closed = 1; }

/* Closes everything, checks that nothing leaked. */
static void fx_finish(fx *f) {
  for (int i = 0; i < f->ncls; i++)
    if (f->cls[i].c)
      assert_int_equal(tunnel_client_close(f->cls[i].c, on_cl_closed,
                                           &f->cls[i]),
                       0);
  for (int i = 0; i < f->ncls; i++)
    if (f->cls[i].c)
      WAIT(f, f->cls[i].closed);
  if (f->srv) {
    assert_int_equal(tunnel_server_close(f->srv, on_srv_closed, f), 0);
    WAIT(f, f->srv_closed);
  }
  uv_close((uv_handle_t *)&f->svc, on_svc_closed);
  for (peer *p = f->peers; p; p = p->next)
    peer_close(p);
  assert_int_equal(it_waiter_finish(&f->w, IT_WAIT_MS), 0);
  assert_int_equal(f->mem.cur, 0);
  while (f->peers) {
    peer *p = f->peers;
    f->peers = p->next;
    free(p);
  }
  for (int i = 0; i < f->ncls; i++)
    free(f->cls[i].log.text);
  free(f->srv_log.text);
}

static void trust(tunnel_config *cfg, const pem *anchor) {
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_ca(cfg, (const uint8_t *)anchor->cert,
                                            strlen(anchor->cert)),
                   0);
}

/* -------------------------------------------------------------- cases */

/* Verified against the CA: once by the IP address dialed (IP SAN), once
 * by the name "localhost" (DNS SAN, sent as SNI); 32 MiB each way through
 * each client's proxy at the same time. */
static void ca_verified(int mux) {
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 1));
  cl *by_ip, *by_name;
  tunnel_config *cfg = cl_cfg(&f, &by_ip, "by-ip");
  trust(cfg, &ca);
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, mux), 0);
  cl_start(by_ip, cfg);
  cfg = cl_cfg(&f, &by_name, "by-name");
  trust(cfg, &ca);
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, mux), 0);
  assert_int_equal(tunnel_config_set_tls_server_name(cfg, "localhost"), 0);
  cl_start(by_name, cfg);
  wait_login(&f, by_ip);
  wait_login(&f, by_name);
  uint16_t ports[2] = {cl_proxy(&f, by_ip), cl_proxy(&f, by_name)};
  echo_through(&f, ports, 2, BULK_BYTES);
  /* Both really ran TLS. */
  assert_int_equal(log_count(&by_ip->log, "client: TLS ", "handshake"), 1);
  assert_int_equal(log_count(&by_name->log, "client: TLS ", "handshake"), 1);
  fx_finish(&f);
}

static void test_ca_mux(void **state) {
  (void)state;
  ca_verified(1);
}

static void test_ca_nonmux(void **state) {
  (void)state;
  ca_verified(0);
}

/* A client trusting another CA is refused with the reason; the server
 * stays healthy and admits a good client right after. */
static void test_wrong_ca(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 1));
  cl *bad, *good;
  tunnel_config *cfg = cl_cfg(&f, &bad, "wrong-ca");
  trust(cfg, &other_ca);
  cl_start(bad, cfg);
  assert_int_equal(wait_refused(&f, bad), TUNNEL_ECERTUNTRUSTED);
  assert_non_null(strstr(bad->msg, "certificate not trusted ("));
  /* The reason in parentheses is not empty. */
  assert_true(strlen(strstr(bad->msg, "(")) > 2);
  WAIT(&f, log_count(&f.srv_log, "TLS connection from 127.0.0.1", "failed"));
  cfg = cl_cfg(&f, &good, "good");
  trust(cfg, &ca);
  cl_start(good, cfg);
  wait_login(&f, good);
  assert_int_equal(tunnel_server_client_count(f.srv), 1);
  echo_one(&f, cl_proxy(&f, good), SMALL_BYTES);
  fx_finish(&f);
}

static void test_wrong_name(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 1));
  cl *k;
  tunnel_config *cfg = cl_cfg(&f, &k, "wrong-name");
  trust(cfg, &ca);
  assert_int_equal(tunnel_config_set_tls_server_name(cfg, "other.example"), 0);
  cl_start(k, cfg);
  assert_int_equal(wait_refused(&f, k), TUNNEL_ECERTNAME);
  assert_non_null(strstr(k->msg, "server name"));
  fx_finish(&f);
}

/* The generated certificate pinned by its fingerprint. */
static void test_pin_match(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 0));
  cl *k;
  tunnel_config *cfg = cl_cfg(&f, &k, "pin");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_pin(cfg, f.pin), 0);
  cl_start(k, cfg);
  wait_login(&f, k);
  echo_one(&f, cl_proxy(&f, k), SMALL_BYTES);
  fx_finish(&f);
}

/* A pin alone decides, also over a CA-signed certificate the client has no
 * anchor for; one wrong digit refuses it. */
static void test_pin_mismatch(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 1));
  cl *ok, *bad;
  tunnel_config *cfg = cl_cfg(&f, &ok, "pin-ok");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_pin(cfg, f.pin), 0);
  cl_start(ok, cfg);
  wait_login(&f, ok);
  char wrong[96];
  memcpy(wrong, f.pin, sizeof wrong);
  wrong[0] = wrong[0] == 'A' ? 'B' : 'A';
  cfg = cl_cfg(&f, &bad, "pin-bad");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_pin(cfg, wrong), 0);
  cl_start(bad, cfg);
  assert_int_equal(wait_refused(&f, bad), TUNNEL_ECERTPIN);
  assert_non_null(strstr(bad->msg, "pin"));
  assert_int_equal(tunnel_server_client_count(f.srv), 1);
  fx_finish(&f);
}

static void test_insecure(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 0));
  cl *k;
  tunnel_config *cfg = cl_cfg(&f, &k, "insecure");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_insecure(cfg, 1), 0);
  cl_start(k, cfg);
  wait_login(&f, k);
  echo_one(&f, cl_proxy(&f, k), SMALL_BYTES);
  fx_finish(&f);
}

static tunnel_config *cl_with_cert(fx *f, cl **k, const char *who,
                                   const pem *cert) {
  tunnel_config *cfg = cl_cfg(f, k, who);
  trust(cfg, &ca);
  if (cert)
    assert_int_equal(tunnel_config_set_tls_cert(
                         cfg, (const uint8_t *)cert->cert, strlen(cert->cert),
                         (const uint8_t *)cert->key, strlen(cert->key)),
                     0);
  return cfg;
}

/* A server requiring client certificates: none, or one from another CA,
 * is refused (the server logs why); a certificate from its CA works. */
static void test_client_cert(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  tunnel_config *scfg = srv_cfg(&f, 1);
  assert_int_equal(tunnel_config_set_tls_ca(scfg,
                                            (const uint8_t *)client_ca.cert,
                                            strlen(client_ca.cert)),
                   0);
  srv_start(&f, scfg);
  cl *none, *bad, *good;
  tunnel_config *cfg_none = cl_with_cert(&f, &none, "no-cert", NULL);
  cl_start(none, cfg_none);
  wait_refused(&f, none);
  WAIT(&f, log_count(&f.srv_log, "TLS connection from", "failed") == 1);
  tunnel_config *cfg_bad = cl_with_cert(&f, &bad, "bad-cert", &cli_bad);
  cl_start(bad, cfg_bad);
  wait_refused(&f, bad);
  WAIT(&f, log_count(&f.srv_log, "TLS connection from", "failed") == 2);
  assert_int_equal(
      log_count(&f.srv_log, "failed", "client certificate not trusted"), 1);
  tunnel_config *cfg_good = cl_with_cert(&f, &good, "good-cert", &cli_good);
  cl_start(good, cfg_good);
  wait_login(&f, good);
  echo_one(&f, cl_proxy(&f, good), SMALL_BYTES);
  assert_int_equal(log_count(&f.srv_log, "TLS connection from", "failed"), 2);
  fx_finish(&f);
}

/* TLS-only refuses a plain client with a log line; otherwise plain and TLS
 * clients share the port. */
static void test_tls_only(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  tunnel_config *scfg = srv_cfg(&f, 0);
  assert_int_equal(tunnel_config_set_tls_only(scfg, 1), 0);
  srv_start(&f, scfg);
  cl *plain;
  tunnel_config *cfg_plain = cl_cfg(&f, &plain, "plain-refused");
  cl_start(plain, cfg_plain);
  wait_refused(&f, plain);
  assert_int_equal(log_count(&f.srv_log, "plain connection from",
                             "accepts TLS only"),
                   1);
  assert_int_equal(tunnel_server_client_count(f.srv), 0);
  fx_finish(&f);

  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 0));
  cl *tls;
  cfg_plain = cl_cfg(&f, &plain, "plain");
  cl_start(plain, cfg_plain);
  tunnel_config *cfg = cl_cfg(&f, &tls, "tls");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_pin(cfg, f.pin), 0);
  cl_start(tls, cfg);
  wait_login(&f, plain);
  wait_login(&f, tls);
  uint16_t ports[2] = {cl_proxy(&f, plain), cl_proxy(&f, tls)};
  echo_through(&f, ports, 2, 4u << 20);
  assert_int_equal(log_count(&plain->log, "client: TLS ", NULL), 0);
  assert_int_equal(log_count(&tls->log, "client: TLS ", "handshake"), 1);
  assert_int_equal(log_count(&f.srv_log, "accepts TLS only", NULL), 0);
  fx_finish(&f);
}

/* The first byte on the wire is 0x17 with the marker (the default) and a
 * ClientHello's 0x16 without; the server takes both. The sniffer stands in
 * for the server first, then the same client connects for real. */
static void test_marker(void **state) {
  (void)state;
  for (int marker = 0; marker <= 1; marker++) {
    fx f;
    fx_init(&f);
    srv_start(&f, srv_cfg(&f, 0));
    f.svc_sniff = 1; /* the echo service sniffs until the real login */
    cl *k;
    tunnel_config *cfg = cl_cfg(&f, &k, marker ? "marker" : "no-marker");
    assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
    assert_int_equal(tunnel_config_set_tls_pin(cfg, f.pin), 0);
    if (!marker)
      assert_int_equal(tunnel_config_set_tls_marker(cfg, 0), 0);
    assert_int_equal(tunnel_client_new(&k->c, &f.loop, cfg), 0);
    tunnel_config_free(cfg);
    assert_int_equal(tunnel_client_set_state_cb(k->c, on_state, k), 0);
    assert_int_equal(tunnel_client_connect(k->c, "127.0.0.1", f.svc_port), 0);
    wait_refused(&f, k);
    assert_int_equal(f.sniffed, marker ? 0x17 : 0x16);
    assert_int_equal(tunnel_client_connect(k->c, "127.0.0.1", f.srv_port), 0);
    wait_login(&f, k);
    f.svc_sniff = 0;
    echo_one(&f, cl_proxy(&f, k), SMALL_BYTES);
    fx_finish(&f);
  }
}

/* A mux client reconnecting resumes its TLS session: the server drops it
 * for silence (no heartbeats), the same client connects again. */
static void test_resumption(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  tunnel_config *scfg = srv_cfg(&f, 0);
  assert_int_equal(tunnel_config_set_heartbeat(scfg, 0, 1), 0);
  srv_start(&f, scfg);
  cl *k;
  tunnel_config *cfg = cl_cfg(&f, &k, "resume");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_pin(cfg, f.pin), 0);
  assert_int_equal(tunnel_config_set_heartbeat(cfg, 0, 0), 0);
  cl_start(k, cfg);
  wait_login(&f, k);
  assert_int_equal(log_count(&k->log, "client: TLS ", "full handshake"), 1);
  assert_int_equal(log_count(&k->log, "client: TLS ", "resumed handshake"), 0);
  next_state(&f, k); /* dropped for silence */
  assert_true(k->state < 0);
  assert_int_equal(tunnel_client_connect(k->c, "127.0.0.1", f.srv_port), 0);
  wait_login(&f, k);
  assert_int_equal(log_count(&k->log, "client: TLS ", "full handshake"), 1);
  assert_int_equal(log_count(&k->log, "client: TLS ", "resumed handshake"), 1);
  assert_int_equal(log_count(&f.srv_log, "server: TLS from", "resumed"), 1);
  fx_finish(&f);
}

/* Non-mux: every work connection after the control connection resumes. */
static void test_resumption_nonmux(void **state) {
  (void)state;
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 0));
  cl *k;
  tunnel_config *cfg = cl_cfg(&f, &k, "resume-nonmux");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_pin(cfg, f.pin), 0);
  assert_int_equal(tunnel_config_set_tcp_mux(cfg, 0), 0);
  assert_int_equal(tunnel_config_set_pool_count(cfg, 3), 0);
  cl_start(k, cfg);
  wait_login(&f, k);
  uint16_t port = cl_proxy(&f, k);
  /* The pool (3 connections) plus one per visitor below. */
  uint16_t ports[4] = {port, port, port, port};
  echo_through(&f, ports, 4, SMALL_BYTES);
  WAIT(&f, log_count(&f.srv_log, "server: TLS from", "resumed handshake") >= 4);
  assert_int_equal(log_count(&f.srv_log, "server: TLS from", "full handshake"),
                   1);
  fx_finish(&f);
}

/* Garbage after a ClientHello's first byte is dropped at once; a marker
 * followed by silence waits for the identification timeout; neither
 * disturbs a good client meanwhile. */
static void test_handshake_garbage(void **state) {
  (void)state;
  static const uint8_t junk[] = {0x16, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x42,
                                 'G',  'E',  'T',  ' ',  '/',  ' ',  'H',
                                 'T',  'T',  'P',  '/',  '1',  '.',  '1'};
  static const uint8_t marker[] = {0x17};
  fx f;
  fx_init(&f);
  srv_start(&f, srv_cfg(&f, 0));
  peer *stall = peer_connect(&f, f.srv_port, 0, 0, marker, sizeof marker);
  peer *garbage = peer_connect(&f, f.srv_port, 0, 0, junk, sizeof junk);
  cl *k;
  tunnel_config *cfg = cl_cfg(&f, &k, "good");
  assert_int_equal(tunnel_config_set_tls(cfg, 1), 0);
  assert_int_equal(tunnel_config_set_tls_pin(cfg, f.pin), 0);
  cl_start(k, cfg);
  WAIT(&f, garbage->closed);
  assert_int_equal(garbage->conn_status, 1);
  assert_true(garbage->rx_bytes <= 7); /* at most an alert */
  fprintf(stderr, "# garbage closed after %u ms\n",
          (unsigned)(garbage->ended_ms - garbage->opened_ms));
  assert_true(garbage->ended_ms - garbage->opened_ms < 2000);
  wait_login(&f, k);
  echo_one(&f, cl_proxy(&f, k), 1u << 20);
  assert_false(stall->rx_eof || stall->rx_err); /* still waiting */
  assert_int_equal(tunnel_server_client_count(f.srv), 1);
  fx_finish(&f);
}

int main(int argc, char **argv) {
  const char *lv = getenv("IT_LOG");
  if (lv && *lv >= '0' && *lv <= '3')
    print_level = *lv - '0';
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest all[] = {
      cmocka_unit_test(test_ca_mux),
      cmocka_unit_test(test_ca_nonmux),
      cmocka_unit_test(test_wrong_ca),
      cmocka_unit_test(test_wrong_name),
      cmocka_unit_test(test_pin_match),
      cmocka_unit_test(test_pin_mismatch),
      cmocka_unit_test(test_insecure),
      cmocka_unit_test(test_client_cert),
      cmocka_unit_test(test_tls_only),
      cmocka_unit_test(test_marker),
      cmocka_unit_test(test_resumption),
      cmocka_unit_test(test_resumption_nonmux),
      cmocka_unit_test(test_handshake_garbage),
  };
  if (argc > 1) {
    size_t i, n = sizeof all / sizeof all[0];
    for (i = 0; i < n && strcmp(all[i].name, argv[1]) != 0; i++)
      ;
    if (i == n) {
      fprintf(stderr, "no test named %s\n", argv[1]);
      return 2;
    }
    cmocka_set_test_filter(argv[1]);
  }
  return cmocka_run_group_tests(all, group_setup, group_teardown);
}
