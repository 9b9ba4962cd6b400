/*
 * TLS engine over mbedTLS, sans-I/O.
 *
 * The engine owns no socket and no clock. Ciphertext from the peer goes in
 * through tunnel__tls_feed() (or is lent: tunnel__tls_feed_lend());
 * ciphertext for the peer accumulates in an output queue read with
 * tunnel__tls_out_iov() / tunnel__tls_out_consume(). Plaintext comes out
 * of tunnel__tls_read() and goes in through tunnel__tls_write(). mbedTLS's
 * own allocations (record buffers, parsed certificates, handshake state)
 * use its default calloc; the engine's structures and queues use the
 * tunnel__mem allocator of the conf.
 *
 * Protocol: TLS 1.2 (and TLS 1.3 with mbedTLS 3 built with it), ECDHE with
 * ECDSA or RSA certificates, AEAD suites only (CHACHA20-POLY1305 preferred
 * in TLS 1.2, where mbedTLS runs it faster, then AES-128-GCM, AES-256-GCM),
 * groups x25519, secp256r1, secp384r1. Renegotiation is refused. Records
 * carry up to 16 KiB.
 *
 * Memory: mbedTLS 2.28 gives each connection fixed input and output record
 * buffers of about 16.3 KiB each (Debian's build leaves
 * MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH off), about 40 KB in all once
 * established. The engine's own queues release their chunks whenever they
 * run empty, so an idle connection holds none.
 *
 * Verification by the client, in order of precedence:
 * - a pin: only the SHA-256 of the leaf certificate's DER decides (no CA,
 *   name or date check); a mismatch fails with TUNNEL_ECERTPIN;
 * - insecure: nothing is checked;
 * - otherwise the chain must lead to settings->ca (or, when that is empty,
 *   to the system bundle) and the leaf must carry the server name.
 *   A server name that is an IP literal is not sent as SNI (RFC 6066 forbids
 *   it) and is checked against the leaf's iPAddress subjectAltNames by the
 *   engine, since mbedTLS 2.28 compares names only with DNS entries and CN.
 * A server with settings->ca requires a client certificate chaining to it.
 *
 * Everything here runs on one thread; a conf and its connections must not be
 * used concurrently.
 */
#ifndef TUNNEL_LIB_TLS_H
#define TUNNEL_LIB_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "bufq.h"
#include "config.h"
#include "log.h"
#include "mem.h"

/* Input held while the handshake is incomplete: a 64 KiB socket read on top
 * of one partial record (at most 2^14 + 2048 + 5 bytes). */
#define TUNNEL__TLS_HANDSHAKE_INPUT_MAX (64u * 1024u + 18437u)
/* Session tickets: keys rotate and tickets expire after this many seconds;
 * the server's session-id cache keeps entries as long. */
#define TUNNEL__TLS_TICKET_LIFETIME_S (12u * 3600u)
/* Sessions the server's id cache holds at most. */
#define TUNNEL__TLS_CACHE_ENTRIES 256
/* Certificate the server makes for itself when none is configured. */
#define TUNNEL__TLS_SELF_CN "libtunnel"
#define TUNNEL__TLS_SELF_YEARS 10

typedef struct tunnel__tls_conf tunnel__tls_conf; /* shared by every connection of a client or server */
typedef struct tunnel__tls tunnel__tls;           /* one connection */

/* Entropy source: fills `n` bytes, returns 0 or a negative TUNNEL_E*. The
 * conf seeds one CTR_DRBG from it and calls it again to reseed, so it must
 * stay usable for the conf's lifetime. */
typedef int (*tunnel__tls_entropy_fn)(void *ud, uint8_t *out, size_t n);

typedef struct tunnel__tls_conf_params {
  int is_server;
  const tunnel__mem *mem; /* NULL: libc */
  tunnel__tls_entropy_fn entropy;
  void *entropy_ud;
  /* ca/cert/key blobs (PEM, NUL-terminated, len counts the NUL), pin,
   * insecure. Parsed by tunnel__tls_conf_new, not kept. */
  const tunnel__tls_settings *settings;
  /* Client: PEM bundle used when settings->ca is empty and neither pin nor
   * insecure is set; may be NULL. Must be NUL-terminated (len counts it). */
  const uint8_t *system_ca;
  size_t system_ca_len;
  tunnel__logger *log; /* may be NULL; must outlive the conf */
  /* Wall clock, seconds since the epoch: the start of the self-signed
   * certificate's validity and of the first ticket key period. */
  uint64_t now_s;
  /* 1: no session tickets (a server issues none, a client asks for none);
   * resumption then goes through the server's session-id cache. */
  int no_tickets;
} tunnel__tls_conf_params;

/* Creates the configuration shared by the connections of one client or
 * server. A server without a certificate in settings generates a
 * self-signed ECDSA P-256 certificate for CN "libtunnel", valid from an hour
 * before now_s for 10 years. Errors: TUNNEL_EINVAL (params), TUNNEL_ENOMEM,
 * TUNNEL_ECRYPTO (entropy source failed), TUNNEL_ETLS with a message in
 * `err` (cert/key unparsable, key does not match cert, CA unparsable, client
 * without any trust anchor and neither pin nor insecure...). `err` may be
 * NULL. */
int tunnel__tls_conf_new(tunnel__tls_conf **out,
                         const tunnel__tls_conf_params *p, char *err,
                         size_t errlen);
/* Frees the conf; every connection made from it must be freed first. */
void tunnel__tls_conf_free(tunnel__tls_conf *c);
/* Server: rotates the session ticket keys when TUNNEL__TLS_TICKET_LIFETIME_S
 * passed since the last rotation (tickets under the previous key stay valid
 * one more period; older ones fall back to a full handshake). Call it now and
 * then with the wall clock; a no-op for clients. mbedTLS also ages tickets
 * and its own keys by its platform clock. Returns 1 when it rotated, 0 if not
 * yet, or a negative TUNNEL_E* (the old keys then stay in use). */
int tunnel__tls_conf_tick(tunnel__tls_conf *c, uint64_t now_s);
/* SHA-256 of this side's certificate (DER). TUNNEL_ENOTFOUND for a client
 * without a certificate. */
int tunnel__tls_conf_fingerprint(const tunnel__tls_conf *c, uint8_t out[32]);
/* "AB:CD:..." (95 chars + NUL); truncated to fit `len`, always terminated
 * when len > 0. */
#define TUNNEL__TLS_FINGERPRINT_TEXT 96
void tunnel__tls_fingerprint_format(const uint8_t fp[32], char *out,
                                    size_t len);

/* New connection. Client: `server_name` is sent as SNI and checked against
 * the certificate (unless pinned or insecure); an IP literal is not sent and
 * is checked against iPAddress SANs; NULL sends none and checks none (only
 * allowed with a pin or insecure: TUNNEL_EINVAL otherwise). A session saved
 * on the conf (tunnel__tls_save_session) is offered for resumption. Server:
 * `server_name` is ignored. */
int tunnel__tls_new(tunnel__tls **out, tunnel__tls_conf *c,
                    const char *server_name);
void tunnel__tls_free(tunnel__tls *t); /* NULL ok */

/* Ciphertext received from the peer; copied (the engine keeps no pointer).
 * While the handshake is incomplete, more than
 * TUNNEL__TLS_HANDSHAKE_INPUT_MAX bytes held fails with TUNNEL_ELIMIT
 * (sticky). Returns 0, TUNNEL_ENOMEM, or the connection's sticky error. */
int tunnel__tls_feed(tunnel__tls *t, const uint8_t *data, size_t n);
/* The same without the copy: the engine reads `data` in place, after the
 * input it holds, until tunnel__tls_feed_keep(), which copies what it has
 * not taken yet and must come before `data` changes or goes. Meant for a
 * socket read that is lent, processed (handshake, reads: records are
 * usually all taken then) and kept before the next read. Same bound and
 * errors as tunnel__tls_feed; a feed or loan during a loan keeps the
 * first loan first. */
int tunnel__tls_feed_lend(tunnel__tls *t, const uint8_t *data, size_t n);
/* Ends the loan: 0, or TUNNEL_ENOMEM (sticky: the unread bytes are lost),
 * or the connection's sticky error. A no-op without a loan. */
int tunnel__tls_feed_keep(tunnel__tls *t);
/* Runs the handshake as far as the input allows: 0 when complete (also on
 * later calls), TUNNEL_EAGAIN when it needs more input (check
 * tunnel__tls_out_pending: the handshake produces output too), or an error:
 * TUNNEL_ECERTUNTRUSTED / TUNNEL_ECERTNAME / TUNNEL_ECERTPIN (client
 * verification; a chain that fails for other reasons than the name is
 * ECERTUNTRUSTED even if the name is wrong too; the server reports
 * ECERTUNTRUSTED when a required client certificate is untrusted or
 * missing), TUNNEL_ENOMEM, TUNNEL_ETLS otherwise. Errors are sticky; the
 * engine queues a fatal alert for the peer when mbedTLS did not. */
int tunnel__tls_handshake(tunnel__tls *t);
int tunnel__tls_is_established(const tunnel__tls *t);
/* One-line reason of the last error, "" if none. */
const char *tunnel__tls_error_text(const tunnel__tls *t);
/* Negotiated suite name (mbedTLS's spelling) once established, else "". */
const char *tunnel__tls_ciphersuite(const tunnel__tls *t);
/* Decrypted bytes into buf[0..cap). Drives the handshake first if needed.
 * *n = 0 with return 0: none yet (need input). TUNNEL_EEOF after the peer's
 * close_notify (sticky). Errors as tunnel__tls_handshake (TUNNEL_ETLS on a
 * bad record: MAC failure etc). */
int tunnel__tls_read(tunnel__tls *t, uint8_t *buf, size_t cap, size_t *n);
/* Encrypts `len` bytes (split into records of at most 16 KiB) into the
 * output queue; *taken = len on success, 0 otherwise. TUNNEL_EAGAIN while
 * the handshake is incomplete (the call drives it first), TUNNEL_ECLOSED
 * after tunnel__tls_close_notify, TUNNEL_ENOMEM (fatal: a record may be
 * half queued), or the sticky error. */
int tunnel__tls_write(tunnel__tls *t, const uint8_t *data, size_t len,
                      size_t *taken);
/* Queues close_notify; later writes fail with TUNNEL_ECLOSED. Reading
 * continues until the peer's close_notify. */
int tunnel__tls_close_notify(tunnel__tls *t);
/* Ciphertext to send: bytes queued, iovecs over them (returns how many), and
 * consume `n` (<= pending) once the socket took them. */
size_t tunnel__tls_out_pending(const tunnel__tls *t);
size_t tunnel__tls_out_iov(const tunnel__tls *t, tunnel__iov *iov, size_t max);
void tunnel__tls_out_consume(tunnel__tls *t, size_t n);

/* Client, after the handshake: keeps this connection's session (ticket or
 * id) in the conf, replacing any saved one, so the next tunnel__tls_new on
 * the conf offers it. A connection that resumed leaves the saved session
 * in place (returns 0). TUNNEL_ESTATE if not established or on a server. */
int tunnel__tls_save_session(tunnel__tls *t);
/* 1 when this (completed) handshake resumed a session, else 0. */
int tunnel__tls_resumed(const tunnel__tls *t);

/* First byte on a server's control port. */
enum {
  TUNNEL__SNIFF_PLAIN,
  TUNNEL__SNIFF_TLS,       /* 0x16: a ClientHello record, keep the byte */
  TUNNEL__SNIFF_TLS_MARKER /* 0x17: frp's marker byte, consume it */
};
int tunnel__tls_sniff(uint8_t first);

#endif
