/* End-to-end tests of the HTTPS tunnel over loopback: TLS visitors reach
 * the server's public HTTPS port, are routed by the server name of their
 * ClientHello (SNI) to an HTTPS proxy, and complete their handshake with the
 * client's local TLS service, which holds the certificate. The TLS peers
 * are mbedTLS over blocking sockets (every call bounded by socket
 * timeouts), each in a thread of its own, while the uv loop runs the
 * server and the client. The certificate is generated at run time.
 *
 * Usage: test-vhost-https [TEST_NAME]  (default: all tests)
 * Environment: IT_LOG=0..3 prints library log lines up to that level. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "vh_fixture.h"

#define NAME "secure.localhost"
/* Every blocking socket call of the TLS peers gives up after this. */
#define IO_TIMEOUT_S 10
#define PIECE (16u * 1024u)

/* ---------------------------------------------------------- certificate */

typedef struct rng {
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
} rng;

static void rng_init(rng *r, const char *pers) {
  mbedtls_entropy_init(&r->entropy);
  mbedtls_ctr_drbg_init(&r->drbg);
  assert_int_equal(mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func,
                                         &r->entropy,
                                         (const unsigned char *)pers,
                                         strlen(pers)),
                   0);
}

static void rng_free(rng *r) {
  mbedtls_ctr_drbg_free(&r->drbg);
  mbedtls_entropy_free(&r->entropy);
}

typedef struct tls_id {
  mbedtls_pk_context key;
  mbedtls_x509_crt crt;
} tls_id;

static void fmt_time(time_t when, char out[16]) {
  struct tm tm;
  gmtime_r(&when, &tm);
  strftime(out, 16, "%Y%m%d%H%M%S", &tm);
}

/* A self-signed P-256 certificate for `cn`, valid from yesterday for a
 * month. */
static void tls_id_make(tls_id *id, const char *cn) {
  rng r;
  rng_init(&r, "vhost-cert");
  mbedtls_pk_init(&id->key);
  assert_int_equal(mbedtls_pk_setup(&id->key, mbedtls_pk_info_from_type(
                                                  MBEDTLS_PK_ECKEY)),
                   0);
  assert_int_equal(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1,
                                       mbedtls_pk_ec(id->key),
                                       mbedtls_ctr_drbg_random, &r.drbg),
                   0);
  mbedtls_x509write_cert w;
  mbedtls_x509write_crt_init(&w);
  mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(&w, &id->key);
  mbedtls_x509write_crt_set_issuer_key(&w, &id->key);
  char dn[300];
  snprintf(dn, sizeof dn, "CN=%s,O=libtunnel vhost test", cn);
  assert_int_equal(mbedtls_x509write_crt_set_subject_name(&w, dn), 0);
  assert_int_equal(mbedtls_x509write_crt_set_issuer_name(&w, dn), 0);
  mbedtls_mpi serial;
  mbedtls_mpi_init(&serial);
  assert_int_equal(mbedtls_mpi_lset(&serial, 1 + (it_random32() >> 1)), 0);
  assert_int_equal(mbedtls_x509write_crt_set_serial(&w, &serial), 0);
  char from[16], to[16];
  time_t now = time(NULL);
  fmt_time(now - 86400, from);
  fmt_time(now + 30 * 86400, to);
  assert_int_equal(mbedtls_x509write_crt_set_validity(&w, from, to), 0);
  assert_int_equal(mbedtls_x509write_crt_set_basic_constraints(&w, 1, 0), 0);
  unsigned char pem[4096];
  assert_int_equal(mbedtls_x509write_crt_pem(&w, pem, sizeof pem,
                                             mbedtls_ctr_drbg_random,
                                             &r.drbg),
                   0);
  mbedtls_x509_crt_init(&id->crt);
  assert_int_equal(mbedtls_x509_crt_parse(&id->crt, pem,
                                          strlen((char *)pem) + 1),
                   0);
  mbedtls_mpi_free(&serial);
  mbedtls_x509write_crt_free(&w);
  rng_free(&r);
}

static void tls_id_free(tls_id *id) {
  mbedtls_x509_crt_free(&id->crt);
  mbedtls_pk_free(&id->key);
}

/* ------------------------------------------------------ blocking sockets */

/* The socket of a TLS peer; `split` bytes are sent in 3-byte writes,
 * 2 ms apart (the ClientHello arrives in pieces). */
typedef struct sock {
  int fd;
  size_t split;
} sock;

static int bio_send(void *ctx, const unsigned char *buf, size_t len) {
  sock *sk = ctx;
  int fd = sk->fd;
  if (sk->split) {
    len = len < 3 ? len : 3;
    len = len < sk->split ? len : sk->split;
    struct timespec ts = {.tv_nsec = 2000000};
    nanosleep(&ts, NULL);
  }
  ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
  if (n > 0 && sk->split)
    sk->split -= (size_t)n;
  if (n >= 0)
    return (int)n;
  if (errno == EINTR)
    return MBEDTLS_ERR_SSL_WANT_WRITE;
  if (errno == EPIPE || errno == ECONNRESET)
    return MBEDTLS_ERR_NET_CONN_RESET;
  if (errno == EAGAIN || errno == EWOULDBLOCK)
    return MBEDTLS_ERR_SSL_TIMEOUT;
  return MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len) {
  int fd = ((sock *)ctx)->fd;
  ssize_t n = recv(fd, buf, len, 0);
  if (n >= 0)
    return (int)n; /* 0: the peer closed */
  if (errno == EINTR)
    return MBEDTLS_ERR_SSL_WANT_READ;
  if (errno == ECONNRESET)
    return MBEDTLS_ERR_NET_CONN_RESET;
  if (errno == EAGAIN || errno == EWOULDBLOCK)
    return MBEDTLS_ERR_SSL_TIMEOUT;
  return MBEDTLS_ERR_NET_RECV_FAILED;
}

static void set_timeouts(int fd) {
  struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int handshake(mbedtls_ssl_context *ssl) {
  int rc;
  do
    rc = mbedtls_ssl_handshake(ssl);
  while (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE);
  return rc;
}

static int write_all(mbedtls_ssl_context *ssl, const uint8_t *p, size_t n) {
  while (n) {
    int rc = mbedtls_ssl_write(ssl, p, n);
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
      continue;
    if (rc <= 0)
      return rc ? rc : -1;
    p += rc;
    n -= (size_t)rc;
  }
  return 0;
}

static const char *tls_err(int rc, char *buf, size_t cap) {
  mbedtls_strerror(rc, buf, cap);
  return buf;
}

/* ---------------------------------------------------- local TLS service */

/* The client's local service: accepts connections one after the other,
 * completes the TLS handshake with the generated certificate, records the
 * server name and ALPN protocol the visitor asked for, and echoes. */
typedef struct backend {
  int lfd;
  uint16_t port;
  tls_id *id;
  const char *alpn[3];
  pthread_t th;
  atomic_int stop;
  atomic_int accepted, finished;
  pthread_mutex_t mu;
  /* guarded by mu: the latest connection */
  int handshakes;
  int hs_rc;
  char sni[256];
  char alpn_got[32];
  uint64_t echoed;
} backend;

static int backend_sni(void *ud, mbedtls_ssl_context *ssl,
                       const unsigned char *name, size_t len) {
  backend *b = ud;
  (void)ssl;
  pthread_mutex_lock(&b->mu);
  snprintf(b->sni, sizeof b->sni, "%.*s", (int)len, (const char *)name);
  pthread_mutex_unlock(&b->mu);
  return 0;
}

static void backend_conn(backend *b, mbedtls_ssl_config *conf, int fd) {
  sock sk = {.fd = fd};
  mbedtls_ssl_context ssl;
  mbedtls_ssl_init(&ssl);
  set_timeouts(fd);
  pthread_mutex_lock(&b->mu);
  b->sni[0] = '\0';
  b->alpn_got[0] = '\0';
  b->echoed = 0;
  pthread_mutex_unlock(&b->mu);
  int rc = mbedtls_ssl_setup(&ssl, conf);
  if (rc == 0) {
    mbedtls_ssl_set_bio(&ssl, &sk, bio_send, bio_recv, NULL);
    rc = handshake(&ssl);
  }
  pthread_mutex_lock(&b->mu);
  b->hs_rc = rc;
  if (rc == 0) {
    b->handshakes++;
    const char *a = mbedtls_ssl_get_alpn_protocol(&ssl);
    snprintf(b->alpn_got, sizeof b->alpn_got, "%s", a ? a : "");
  }
  pthread_mutex_unlock(&b->mu);
  if (rc == 0) {
    uint8_t buf[PIECE];
    for (;;) {
      int n = mbedtls_ssl_read(&ssl, buf, sizeof buf);
      if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE)
        continue;
      if (n <= 0 || write_all(&ssl, buf, (size_t)n) != 0)
        break;
      pthread_mutex_lock(&b->mu);
      b->echoed += (uint64_t)n;
      pthread_mutex_unlock(&b->mu);
    }
    mbedtls_ssl_close_notify(&ssl);
  }
  mbedtls_ssl_free(&ssl);
  close(fd);
}

static void *backend_main(void *arg) {
  backend *b = arg;
  rng r;
  rng_init(&r, "vhost-backend");
  mbedtls_ssl_config conf;
  mbedtls_ssl_config_init(&conf);
  int ok = mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_SERVER,
                                       MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT) == 0;
  mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &r.drbg);
  ok = ok && mbedtls_ssl_conf_own_cert(&conf, &b->id->crt, &b->id->key) == 0;
  ok = ok && mbedtls_ssl_conf_alpn_protocols(&conf, b->alpn) == 0;
  mbedtls_ssl_conf_sni(&conf, backend_sni, b);
  while (ok && !atomic_load(&b->stop)) {
    struct pollfd pfd = {.fd = b->lfd, .events = POLLIN};
    if (poll(&pfd, 1, 50) <= 0)
      continue;
    int fd = accept(b->lfd, NULL, NULL);
    if (fd < 0)
      continue;
    atomic_fetch_add(&b->accepted, 1);
    backend_conn(b, &conf, fd);
    atomic_fetch_add(&b->finished, 1);
  }
  mbedtls_ssl_config_free(&conf);
  rng_free(&r);
  return NULL;
}

static void backend_start(backend *b, tls_id *id) {
  memset(b, 0, sizeof *b);
  b->id = id;
  b->alpn[0] = "h2";
  b->alpn[1] = "http/1.1";
  b->alpn[2] = NULL;
  pthread_mutex_init(&b->mu, NULL);
  b->lfd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(b->lfd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  assert_int_equal(bind(b->lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(b->lfd, 16), 0);
  assert_int_equal(getsockname(b->lfd, (struct sockaddr *)&a, &len), 0);
  b->port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&b->th, NULL, backend_main, b), 0);
}

static void backend_stop(backend *b) {
  atomic_store(&b->stop, 1);
  pthread_join(b->th, NULL);
  close(b->lfd);
  pthread_mutex_destroy(&b->mu);
}

/* ----------------------------------------------------------- TLS visitor */

/* One TLS connection to the server's HTTPS port, run in a thread: the
 * handshake with `sni` (NULL: none) and the ALPN list, then `payload`
 * bytes echoed in 16 KiB round trips. */
typedef struct visit {
  uint16_t port;
  const char *sni;
  const char *alpn[3];
  tls_id *ca;
  uint64_t payload;
  size_t split; /* the first bytes sent 3 at a time */
  uv_async_t *wake;
  /* results */
  int connect_err;
  int hs_rc;
  uint32_t verify;
  char alpn_got[32];
  uint64_t sent, echoed, tx_hash, rx_hash;
  int io_rc;
  uint64_t hs_ms;
  atomic_int done;
} visit;

static uint64_t mono_ms(void) { return uv_hrtime() / 1000000u; }

static void visit_run(visit *v) {
  v->tx_hash = v->rx_hash = FNV_OFFSET;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    v->connect_err = errno;
    return;
  }
  set_timeouts(fd);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(v->port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    v->connect_err = errno;
    close(fd);
    return;
  }
  rng r;
  rng_init(&r, "vhost-visitor");
  mbedtls_ssl_config conf;
  mbedtls_ssl_context ssl;
  mbedtls_ssl_config_init(&conf);
  mbedtls_ssl_init(&ssl);
  int rc = mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT,
                                       MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT);
  mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &r.drbg);
  mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
  mbedtls_ssl_conf_ca_chain(&conf, &v->ca->crt, NULL);
  if (rc == 0 && v->alpn[0])
    rc = mbedtls_ssl_conf_alpn_protocols(&conf, v->alpn);
  if (rc == 0)
    rc = mbedtls_ssl_setup(&ssl, &conf);
  if (rc == 0 && v->sni)
    rc = mbedtls_ssl_set_hostname(&ssl, v->sni);
  uint64_t t0 = mono_ms();
  sock sk = {.fd = fd, .split = v->split};
  if (rc == 0) {
    mbedtls_ssl_set_bio(&ssl, &sk, bio_send, bio_recv, NULL);
    rc = handshake(&ssl);
  }
  v->hs_ms = mono_ms() - t0;
  v->hs_rc = rc;
  v->verify = mbedtls_ssl_get_verify_result(&ssl);
  if (rc == 0) {
    const char *p = mbedtls_ssl_get_alpn_protocol(&ssl);
    snprintf(v->alpn_got, sizeof v->alpn_got, "%s", p ? p : "");
    uint8_t out[PIECE], in[PIECE];
    while (v->sent < v->payload && v->io_rc == 0) {
      size_t n = v->payload - v->sent < PIECE ? (size_t)(v->payload - v->sent)
                                              : PIECE;
      gen_fill(41, v->sent, out, n);
      v->tx_hash = fnv1a(v->tx_hash, out, n);
      v->io_rc = write_all(&ssl, out, n);
      if (v->io_rc)
        break;
      v->sent += n;
      size_t got = 0;
      while (got < n) {
        int m = mbedtls_ssl_read(&ssl, in, n - got);
        if (m == MBEDTLS_ERR_SSL_WANT_READ || m == MBEDTLS_ERR_SSL_WANT_WRITE)
          continue;
        if (m <= 0) {
          v->io_rc = m ? m : -1;
          break;
        }
        v->rx_hash = fnv1a(v->rx_hash, in, (size_t)m);
        got += (size_t)m;
        v->echoed += (uint64_t)m;
      }
    }
    mbedtls_ssl_close_notify(&ssl);
  }
  mbedtls_ssl_free(&ssl);
  mbedtls_ssl_config_free(&conf);
  rng_free(&r);
  close(fd);
}

static void *visit_main(void *arg) {
  visit *v = arg;
  visit_run(v);
  atomic_store(&v->done, 1);
  uv_async_send(v->wake);
  return NULL;
}

/* ----------------------------------------------------------- fixture */

typedef struct tls_fx {
  vt t;
  vt_client *k;
  tls_id id;
  backend b;
  uv_async_t wake;
} tls_fx;

static void on_wake(uv_async_t *a) { (void)a; }

/* Server, client, local TLS service and an HTTPS proxy for NAME. */
static void fx_start(tls_fx *f) {
  vt_init(&f->t);
  vt_server_start(&f->t, NULL);
  f->k = vt_client_start(&f->t);
  tls_id_make(&f->id, NAME);
  backend_start(&f->b, &f->id);
  assert_int_equal(uv_async_init(&f->t.loop, &f->wake, on_wake), 0);
  vt_proxy_opts o = {.name = "secure", .type = TUNNEL_PROXY_HTTPS,
                     .local_port = f->b.port, .subdomain = "secure"};
  vt_proxy *x = vt_proxy_add(&f->t, f->k, &o);
  char want[128];
  snprintf(want, sizeof want, NAME ":%u", f->t.https_port);
  assert_string_equal(vt_wait_registered(&f->t, x), want);
}

static void fx_stop(tls_fx *f) {
  uv_close((uv_handle_t *)&f->wake, NULL);
  vt_teardown(&f->t);
  backend_stop(&f->b);
  tls_id_free(&f->id);
}

/* Runs one TLS visitor while the loop serves the tunnel. */
static void fx_visit(tls_fx *f, visit *v) {
  v->port = f->t.https_port;
  v->ca = &f->id;
  v->wake = &f->wake;
  atomic_store(&v->done, 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, visit_main, v), 0);
  IT_WAIT(&f->t.w, atomic_load(&v->done), (IO_TIMEOUT_S + 20) * 1000u);
  pthread_join(th, NULL);
  char e[128];
  fprintf(stderr, "# TLS visitor (SNI %s): handshake %s in %llu ms, ALPN "
          "[%s], %llu of %llu bytes echoed\n",
          v->sni ? v->sni : "none",
          v->hs_rc ? tls_err(v->hs_rc, e, sizeof e) : "ok",
          (unsigned long long)v->hs_ms, v->alpn_got,
          (unsigned long long)v->echoed, (unsigned long long)v->payload);
}

/* The backend finished with `n` connections. */
static void wait_backend(tls_fx *f, int n) {
  VT_WAIT(&f->t, atomic_load(&f->b.finished) >= n);
}

/* The visitor's connection was closed by the server before any TLS
 * answer, promptly, and no connection reached the local service. */
static void check_closed_early(tls_fx *f, const visit *v, int backend_conns) {
  char e[128];
  assert_int_equal(v->connect_err, 0);
  if (v->hs_rc != MBEDTLS_ERR_SSL_CONN_EOF &&
      v->hs_rc != MBEDTLS_ERR_NET_CONN_RESET)
    fail_msg("expected the connection closed during the handshake, got %s",
             v->hs_rc ? tls_err(v->hs_rc, e, sizeof e) : "a handshake");
  assert_true(v->hs_ms < 3000);
  /* Give a misrouted connection time to show up at the service. */
  it_sleep(&f->t.w, 200);
  assert_int_equal(atomic_load(&f->b.accepted), backend_conns);
}

/* SNI names the proxy: the handshake completes with the local service's
 * certificate (verified against it, host name included) and 1 MiB is
 * echoed through. */
static void test_https_sni(void **state) {
  (void)state;
  tls_fx f;
  fx_start(&f);
  visit v = {.sni = NAME, .alpn = {"http/1.1"}, .payload = 1u << 20};
  fx_visit(&f, &v);
  char e[128];
  if (v.hs_rc)
    fail_msg("handshake failed: %s (verify flags %#x)",
             tls_err(v.hs_rc, e, sizeof e), v.verify);
  assert_int_equal(v.verify, 0);
  assert_int_equal(v.io_rc, 0);
  assert_int_equal(v.echoed, v.payload);
  assert_true(v.rx_hash == v.tx_hash);
  wait_backend(&f, 1);
  pthread_mutex_lock(&f.b.mu);
  assert_int_equal(f.b.handshakes, 1);
  assert_string_equal(f.b.sni, NAME);
  assert_int_equal(f.b.echoed, v.payload);
  pthread_mutex_unlock(&f.b.mu);
  /* The name is case-insensitive. */
  visit v2 = {.sni = "SECURE.LocalHost", .payload = 4096};
  fx_visit(&f, &v2);
  assert_int_equal(v2.hs_rc, 0);
  assert_int_equal(v2.echoed, v2.payload);
  assert_true(v2.rx_hash == v2.tx_hash);
  wait_backend(&f, 2);
  /* The same name on the HTTP port is another route: an HTTP proxy may
   * hold it, and each port keeps its own. */
  vt_service *hs = vt_service_new(&f.t, "plain-http");
  vt_service_listen(hs);
  vt_proxy_opts ho = {.name = "secure-http", .local_port = hs->port,
                      .subdomain = "secure"};
  vt_proxy *hx = vt_proxy_add(&f.t, f.k, &ho);
  char want[128];
  snprintf(want, sizeof want, NAME ":%u", f.t.http_port);
  assert_string_equal(vt_wait_registered(&f.t, hx), want);
  vt_visitor *hv = vt_fetch(&f.t, "GET", NAME, "/", NULL, NULL);
  assert_int_equal(hv->nresp, 1);
  assert_int_equal(hv->resps[0].status, 200);
  assert_string_equal(vt_hdr_get(&hv->resps[0], "X-Service"), "plain-http");
  /* A ClientHello that arrives a few bytes at a time. */
  visit v3 = {.sni = NAME, .payload = 4096, .split = 200};
  fx_visit(&f, &v3);
  assert_int_equal(v3.hs_rc, 0);
  assert_int_equal(v3.echoed, v3.payload);
  wait_backend(&f, 3);
  fx_stop(&f);
}

/* A server name nobody serves: the connection is closed, and nothing
 * reaches the local service; the tunnel keeps working. */
static void test_https_unknown_sni(void **state) {
  (void)state;
  tls_fx f;
  fx_start(&f);
  visit v = {.sni = "nobody.localhost", .payload = 1024};
  fx_visit(&f, &v);
  check_closed_early(&f, &v, 0);
  visit v2 = {.sni = "secure.example.com", .payload = 1024};
  fx_visit(&f, &v2);
  check_closed_early(&f, &v2, 0);
  /* A name an HTTP proxy holds is not an HTTPS route. */
  vt_proxy_opts ho = {.name = "plain", .local_port = f.b.port,
                      .subdomain = "plain"};
  vt_wait_registered(&f.t, vt_proxy_add(&f.t, f.k, &ho));
  visit v3 = {.sni = "plain.localhost", .payload = 1024};
  fx_visit(&f, &v3);
  check_closed_early(&f, &v3, 0);
  visit ok = {.sni = NAME, .payload = 1024};
  fx_visit(&f, &ok);
  assert_int_equal(ok.hs_rc, 0);
  assert_int_equal(ok.echoed, ok.payload);
  wait_backend(&f, 1);
  fx_stop(&f);
}

/* A ClientHello without a server name: closed, nothing reaches the local
 * service. */
static void test_https_no_sni(void **state) {
  (void)state;
  tls_fx f;
  fx_start(&f);
  visit v = {.sni = NULL, .payload = 1024};
  fx_visit(&f, &v);
  check_closed_early(&f, &v, 0);
  visit ok = {.sni = NAME, .payload = 1024};
  fx_visit(&f, &ok);
  assert_int_equal(ok.hs_rc, 0);
  assert_int_equal(ok.echoed, ok.payload);
  wait_backend(&f, 1);
  fx_stop(&f);
}

/* ALPN passes untouched: offered "h2", the local service sees it and
 * chooses it; offered only "http/1.1", it gets that. */
static void test_https_alpn_h2(void **state) {
  (void)state;
  tls_fx f;
  fx_start(&f);
  visit v = {.sni = NAME, .alpn = {"h2", "http/1.1"}, .payload = 65536};
  fx_visit(&f, &v);
  assert_int_equal(v.hs_rc, 0);
  assert_string_equal(v.alpn_got, "h2");
  assert_int_equal(v.echoed, v.payload);
  wait_backend(&f, 1);
  pthread_mutex_lock(&f.b.mu);
  assert_string_equal(f.b.alpn_got, "h2");
  assert_string_equal(f.b.sni, NAME);
  pthread_mutex_unlock(&f.b.mu);
  visit v2 = {.sni = NAME, .alpn = {"http/1.1"}, .payload = 65536};
  fx_visit(&f, &v2);
  assert_int_equal(v2.hs_rc, 0);
  assert_string_equal(v2.alpn_got, "http/1.1");
  wait_backend(&f, 2);
  pthread_mutex_lock(&f.b.mu);
  assert_string_equal(f.b.alpn_got, "http/1.1");
  pthread_mutex_unlock(&f.b.mu);
  fx_stop(&f);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_https_sni),
      cmocka_unit_test(test_https_unknown_sni),
      cmocka_unit_test(test_https_no_sni),
      cmocka_unit_test(test_https_alpn_h2),
  };
  return vt_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
