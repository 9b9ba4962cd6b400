/* The engine's HTTP proxy options, proxy removal, connections handed over
 * to the program (tunnel_engine_conn_detach), held proxies and output taken
 * without a copy (lib/engine_io.h), scripted against the in-memory server
 * of test_engine.c, whose harness this file shares. */
#define TEST_ENGINE_HARNESS_ONLY
/* The harness has helpers these tests do not call. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "test_engine.c"

#include "engine_io.h"

/* ------------------------------------------------------------- helpers */

/* The latest message of `type` naming proxy `name`. */
static seen_msg *msg_named(t *x, uint8_t type, const char *name) {
  for (int i = x->s.nmsgs - 1; i >= 0; i--)
    if (x->s.msgs[i].type == type && strcmp(x->s.msgs[i].name, name) == 0)
      return &x->s.msgs[i];
  return NULL;
}

/* The value a Go peer keeps for header `name` (the last one) from a
 * captured "name=value;" list, or NULL. */
static const char *header_value(const seen_msg *m, const char *name,
                                char *out, size_t cap) {
  const char *found = NULL;
  size_t n = strlen(name);
  for (const char *p = m->headers; *p;) {
    const char *end = strchr(p, ';');
    assert_non_null(end);
    if (strncmp(p, name, n) == 0 && p[n] == '=') {
      snprintf(out, cap, "%.*s", (int)(end - p - n - 1), p + n + 1);
      found = out;
    }
    p = end + 1;
  }
  return found;
}

/* Starts the session and serves the login on a fresh server. */
static void login_again(t *x) {
  srv_free(&x->s);
  srv_init(&x->s, x->s.mux);
  assert_int_equal(tunnel_engine_start(x->e, x->now), 0);
  serve_login(x, "0123456789abcdef");
  pump(x);
}

/* ------------------------------------------------------ proxy options */

/* Locations, Host rewrite, basic authentication and headers: HTTP only,
 * refused when they could break an HTTP head, carried in NewProxy, fixed
 * while registered and open again for the next login. */
static void http_options(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  uint32_t tcp, h, s;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "ssh", TUNNEL_ENGINE_PROXY_TCP, &tcp), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_HTTP, &h), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "tls", TUNNEL_ENGINE_PROXY_HTTPS, &s), 0);
  const uint32_t other[2] = {tcp, s};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(tunnel_engine_proxy_add_location(x.e, other[i], "/api"),
                     TUNNEL_ENOTSUP);
    assert_int_equal(
        tunnel_engine_proxy_set_host_rewrite(x.e, other[i], "backend"),
        TUNNEL_ENOTSUP);
    assert_int_equal(
        tunnel_engine_proxy_set_basic_auth(x.e, other[i], "alice", "pw"),
        TUNNEL_ENOTSUP);
    assert_int_equal(
        tunnel_engine_proxy_set_header(x.e, other[i], "X-From", "tunnel"),
        TUNNEL_ENOTSUP);
  }
  /* Values that would end a header line, and proxies that do not exist. */
  const char *bad_paths[] = {NULL, "", "api", "/a\r\nX-Evil: 1", "/a\n"};
  for (size_t i = 0; i < sizeof bad_paths / sizeof *bad_paths; i++)
    assert_int_equal(tunnel_engine_proxy_add_location(x.e, h, bad_paths[i]),
                     TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_add_location(NULL, h, "/api"),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_add_location(x.e, 99, "/api"),
                   TUNNEL_EINVAL);
  const char *bad_hosts[] = {NULL, "", "a\rb", "a\nb"};
  for (size_t i = 0; i < sizeof bad_hosts / sizeof *bad_hosts; i++)
    assert_int_equal(tunnel_engine_proxy_set_host_rewrite(x.e, h, bad_hosts[i]),
                     TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_host_rewrite(x.e, 99, "b.local"),
                   TUNNEL_EINVAL);
  const char *bad_auth[][2] = {{NULL, "pw"},     {"", "pw"},
                               {"al:ice", "pw"}, {"alice", NULL},
                               {"al\nice", "pw"}, {"alice", "p\r\nw"}};
  for (size_t i = 0; i < sizeof bad_auth / sizeof *bad_auth; i++)
    assert_int_equal(tunnel_engine_proxy_set_basic_auth(x.e, h, bad_auth[i][0],
                                                        bad_auth[i][1]),
                     TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_basic_auth(x.e, 99, "alice", "pw"),
                   TUNNEL_EINVAL);
  const char *bad_headers[][2] = {{NULL, "v"},     {"", "v"},
                                  {"X-A:", "v"},   {"X-A\r\n", "v"},
                                  {"X-A", NULL},   {"X-A", "v\r\nX-Evil: 1"},
                                  {"X-A", "v\n"}};
  for (size_t i = 0; i < sizeof bad_headers / sizeof *bad_headers; i++)
    assert_int_equal(tunnel_engine_proxy_set_header(x.e, h, bad_headers[i][0],
                                                    bad_headers[i][1]),
                     TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, 99, "X-A", "v"),
                   TUNNEL_EINVAL);
  /* Accepted: locations accumulate, the Host and the credentials are
   * replaced by a later call. */
  assert_int_equal(tunnel_engine_proxy_add_location(x.e, h, "/api"), 0);
  assert_int_equal(tunnel_engine_proxy_add_location(x.e, h, "/static"), 0);
  assert_int_equal(
      tunnel_engine_proxy_set_host_rewrite(x.e, h, "internal.local"), 0);
  assert_int_equal(
      tunnel_engine_proxy_set_host_rewrite(x.e, h, "backend.local"), 0);
  assert_int_equal(tunnel_engine_proxy_set_basic_auth(x.e, h, "bob", "x"), 0);
  assert_int_equal(
      tunnel_engine_proxy_set_basic_auth(x.e, h, "alice", "s3:cr et"), 0);
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, h, "X-From", "tunnel"),
                   0);
  /* Logging in: nothing is registered before LoginResp, so options still
   * go with the registration. */
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  assert_int_equal(tunnel_engine_proxy_add_location(x.e, h, "/late"), 0);
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, h, "X-Env", "prod"), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 3);
  seen_msg *m = msg_named(&x, TUNNEL__MSG_NEW_PROXY, "web");
  assert_non_null(m);
  assert_string_equal(m->proxy_type, "http");
  assert_string_equal(m->locations, "/api,/static,/late");
  assert_string_equal(m->host_rewrite, "backend.local");
  assert_string_equal(m->http_user, "alice");
  assert_string_equal(m->http_pwd, "s3:cr et");
  assert_string_equal(m->headers, "X-From=tunnel;X-Env=prod;");
  /* The refused calls left nothing on the other proxies either. */
  const char *others[2] = {"ssh", "tls"};
  for (int i = 0; i < 2; i++) {
    m = msg_named(&x, TUNNEL__MSG_NEW_PROXY, others[i]);
    assert_non_null(m);
    assert_string_equal(m->locations, "");
    assert_string_equal(m->host_rewrite, "");
    assert_string_equal(m->http_user, "");
    assert_string_equal(m->http_pwd, "");
    assert_string_equal(m->headers, "");
  }
  assert_string_equal(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "tls")->proxy_type,
                      "https");
  /* Registered in the running session: fixed. A type without the option
   * still says so. */
  assert_int_equal(tunnel_engine_proxy_add_location(x.e, h, "/more"),
                   TUNNEL_ESTATE);
  assert_int_equal(tunnel_engine_proxy_set_host_rewrite(x.e, h, "b2.local"),
                   TUNNEL_ESTATE);
  assert_int_equal(tunnel_engine_proxy_set_basic_auth(x.e, h, "carol", "pw"),
                   TUNNEL_ESTATE);
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, h, "X-B", "1"),
                   TUNNEL_ESTATE);
  assert_int_equal(tunnel_engine_proxy_add_location(x.e, tcp, "/api"),
                   TUNNEL_ENOTSUP);
  /* The session ends: the options may change before the next login. */
  assert_int_equal(
      tunnel_engine_conn_closed(x.e, TUNNEL_ENGINE_CONTROL, 0, 0), 0);
  assert_int_equal(x.states[1], TUNNEL_ECONNRESET);
  assert_int_equal(tunnel_engine_proxy_set_host_rewrite(x.e, h, "next.local"),
                   0);
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, h, "X-Env", "staging"),
                   0);
  login_again(&x);
  assert_int_equal(x.states[2], 0);
  m = msg_named(&x, TUNNEL__MSG_NEW_PROXY, "web");
  assert_non_null(m);
  assert_string_equal(m->host_rewrite, "next.local");
  assert_string_equal(m->locations, "/api,/static,/late");
  assert_string_equal(m->http_user, "alice");
  char v[32];
  assert_non_null(header_value(m, "X-Env", v, sizeof v));
  assert_string_equal(v, "staging");
  assert_non_null(header_value(m, "X-From", v, sizeof v));
  assert_string_equal(v, "tunnel");
  teardown_all(&x);
}

/* Proxies declared during a session take their options until the next
 * output call; a held one waits for its release, then the next output call
 * or tick registers it. */
static void held_and_late_proxies(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 0);
  assert_int_equal(make_engine(&x), 0);
  uint32_t pre, late, held, never;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "pre", TUNNEL_ENGINE_PROXY_HTTP, &pre), 0);
  assert_int_equal(tunnel__engine_proxy_hold(x.e, pre, 1), 0);
  assert_int_equal(tunnel__engine_proxy_hold(x.e, 99, 1), TUNNEL_EINVAL);
  assert_int_equal(tunnel__engine_proxy_hold(NULL, pre, 1), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(x.states[0], 0);
  /* Held at login: not registered. */
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 0);
  /* Declared now, set up before the next output call. */
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "late", TUNNEL_ENGINE_PROXY_HTTP, &late),
      0);
  assert_int_equal(tunnel_engine_proxy_add_location(x.e, late, "/v1"), 0);
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, late, "X-A", "1"), 0);
  pump(&x);
  seen_msg *m = msg_named(&x, TUNNEL__MSG_NEW_PROXY, "late");
  assert_non_null(m);
  assert_string_equal(m->locations, "/v1");
  assert_string_equal(m->headers, "X-A=1;");
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, late, "X-B", "2"),
                   TUNNEL_ESTATE);
  /* Held: neither output calls nor ticks register it, and it can still be
   * set up. */
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "held", TUNNEL_ENGINE_PROXY_HTTP, &held),
      0);
  assert_int_equal(tunnel__engine_proxy_hold(x.e, held, 1), 0);
  pump(&x);
  uint64_t next;
  assert_int_equal(tunnel_engine_tick(x.e, 0, &next), 0);
  pump(&x);
  assert_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "held"));
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 1);
  assert_int_equal(tunnel_engine_proxy_set_host_rewrite(x.e, held, "h.local"),
                   0);
  /* Released: a tick registers it, before any output call. */
  assert_int_equal(tunnel__engine_proxy_hold(x.e, held, 0), 0);
  assert_int_equal(tunnel__engine_out_pending(x.e, TUNNEL_ENGINE_CONTROL), 0);
  assert_int_equal(tunnel_engine_tick(x.e, 0, &next), 0);
  assert_true(tunnel__engine_out_pending(x.e, TUNNEL_ENGINE_CONTROL) > 0);
  pump(&x);
  m = msg_named(&x, TUNNEL__MSG_NEW_PROXY, "held");
  assert_non_null(m);
  assert_string_equal(m->host_rewrite, "h.local");
  assert_int_equal(tunnel_engine_proxy_set_host_rewrite(x.e, held, "x.local"),
                   TUNNEL_ESTATE);
  /* Held since before the login, released now: the next output call. */
  assert_int_equal(tunnel__engine_proxy_hold(x.e, pre, 0), 0);
  uint32_t conn;
  assert_int_equal(tunnel_engine_next_output(x.e, &conn), 1);
  assert_int_equal(conn, TUNNEL_ENGINE_CONTROL);
  pump(&x);
  assert_non_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "pre"));
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 3);
  /* Removed while held: it was never registered, nothing to close. */
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "never", TUNNEL_ENGINE_PROXY_TCP, &never),
      0);
  assert_int_equal(tunnel__engine_proxy_hold(x.e, never, 1), 0);
  pump(&x);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, never), 0);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 3);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_CLOSE_PROXY), 0);
  assert_int_equal(tunnel__engine_proxy_hold(x.e, never, 0), TUNNEL_EINVAL);
  teardown_all(&x);
}

/* -------------------------------------------------------- removal */

/* A registered proxy removed: CloseProxy names it, its number is gone,
 * its open stream goes on, a work channel handed to it is reset and frees
 * its place in the pool, and the name can be declared again. */
static void remove_registered_proxy(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(tunnel_config_set_max_work_conns(x.cfg, 1), 0);
  assert_int_equal(make_engine(&x), 0);
  uint32_t p, q;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, &p), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "site", TUNNEL_ENGINE_PROXY_HTTP, &q), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 2);
  /* A visitor on "web", and a work channel parked. */
  uint32_t id1 = work_channel(&x);
  start_work_conn(&x, id1, "web", "hi");
  assert_int_equal(x.nopened, 1);
  assert_int_equal(x.open_proxy, p);
  uint32_t id2 = work_channel(&x);
  /* The pool is full (limit 1): a request is not obeyed. */
  int nst = x.s.nst;
  srv_msg(&x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
  pump(&x);
  assert_int_equal(x.s.nst, nst);
  /* Removed: CloseProxy follows its registration. */
  assert_int_equal(tunnel_engine_remove_proxy(x.e, p), 0);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_CLOSE_PROXY), 1);
  assert_int_equal(x.s.msgs[x.s.nmsgs - 1].type, TUNNEL__MSG_CLOSE_PROXY);
  assert_string_equal(x.s.msgs[x.s.nmsgs - 1].name, "web");
  /* The number is gone. */
  assert_int_equal(tunnel_engine_remove_proxy(x.e, p), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, p, 7000),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel__engine_proxy_hold(x.e, p, 1), TUNNEL_EINVAL);
  /* A late answer to its registration reaches nobody. */
  srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", ":6000");
  pump(&x);
  assert_int_equal(x.nproxy, 0);
  /* The visitor's stream goes on both ways. */
  size_t taken;
  assert_int_equal(tunnel_engine_stream_write(x.e, x.opened[0],
                                              (const uint8_t *)"ok", 2,
                                              &taken),
                   0);
  assert_int_equal(taken, 2);
  pump(&x);
  assert_int_equal(sfind(&x.s, id1)->len, 2);
  assert_memory_equal(sfind(&x.s, id1)->buf, "ok", 2);
  size_t before = x.data_len;
  srv_raw(&x, id1, "more", 4);
  pump(&x);
  assert_int_equal(x.data_len, before + 4);
  assert_int_equal(x.data_stream, x.opened[0]);
  /* A work channel the server hands to the removed proxy: reset, and
   * nobody is asked to open it. */
  start_work_conn(&x, id2, "web", "GET /");
  assert_int_equal(sfind(&x.s, id2)->rst, 1);
  assert_int_equal(x.nopened, 1);
  assert_int_equal(x.data_len, before + 4);
  /* It no longer takes the pool's place: the next request is obeyed. */
  uint32_t id3 = work_channel(&x);
  /* The name is free: declared again, registered again, a new number. */
  uint32_t p2;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, &p2), 0);
  assert_true(p2 != p && p2 != q);
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 3);
  assert_string_equal(last_msg(&x, TUNNEL__MSG_NEW_PROXY)->name, "web");
  start_work_conn(&x, id3, "web", NULL);
  assert_int_equal(x.nopened, 2);
  assert_int_equal(x.open_proxy, p2);
  /* The other proxy was left alone. */
  assert_int_equal(tunnel_engine_proxy_set_header(x.e, q, "X-A", "1"),
                   TUNNEL_ESTATE);
  teardown_all(&x);
}

/* A proxy the server never registered is removed silently: before the
 * session, during the login, after the session ended. */
static void remove_unregistered_proxy(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  uint32_t a, b, c, d;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "a", TUNNEL_ENGINE_PROXY_TCP, &a), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "b", TUNNEL_ENGINE_PROXY_TCP, &b), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "c", TUNNEL_ENGINE_PROXY_HTTP, &c), 0);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, a), 0);
  assert_int_equal(tunnel_engine_remove_proxy(NULL, b), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, b), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 1);
  assert_non_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "c"));
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_CLOSE_PROXY), 0);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, c), 0);
  pump(&x);
  assert_non_null(msg_named(&x, TUNNEL__MSG_CLOSE_PROXY, "c"));
  /* Registered in a session that has ended: nothing to tell. */
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "d", TUNNEL_ENGINE_PROXY_TCP, &d), 0);
  pump(&x);
  assert_non_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "d"));
  assert_int_equal(
      tunnel_engine_conn_closed(x.e, TUNNEL_ENGINE_CONTROL, 0, 0), 0);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, d), 0);
  /* None is left: the next login registers nothing. */
  login_again(&x);
  assert_int_equal(x.states[2], 0);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 0);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_CLOSE_PROXY), 0);
  teardown_all(&x);
}

/* Without multiplexing: CloseProxy on connection 1, and a work connection
 * handed to the removed proxy goes back to the program. */
static void remove_proxy_non_mux(void **state) {
  (void)state;
  t x;
  uint32_t p = logged_in(&x, 0, NULL);
  uint32_t parked = work_channel(&x);
  uint32_t conn = work_channel(&x);
  start_work_conn(&x, conn, "web", NULL);
  assert_int_equal(x.nopened, 1);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, p), 0);
  pump(&x);
  assert_non_null(msg_named(&x, TUNNEL__MSG_CLOSE_PROXY, "web"));
  start_work_conn(&x, parked, "web", "GET /");
  assert_int_equal(x.nopened, 1);
  assert_int_equal(x.ndisconnects, 1);
  assert_int_equal(x.disconnects[0], parked);
  assert_int_equal(x.data_len, 0);
  /* The engine is done with it: its end is no news. */
  assert_int_equal(tunnel_engine_conn_closed(x.e, parked, 0, 0), 0);
  assert_int_equal(x.nended, 0);
  /* The open stream goes on. */
  size_t taken;
  assert_int_equal(tunnel_engine_stream_write(
                       x.e, conn, (const uint8_t *)"200", 3, &taken),
                   0);
  pump(&x);
  assert_int_equal(sfind(&x.s, conn)->len, 3);
  assert_memory_equal(sfind(&x.s, conn)->buf, "200", 3);
  teardown_all(&x);
}

/* ---------------------------------------------------------- detaching */

/* Only a non-mux connection carrying an open stream can be detached. */
static void detach_refused(void **state) {
  (void)state;
  t x;
  logged_in(&x, 1, NULL);
  uint32_t id = work_channel(&x);
  start_work_conn(&x, id, "web", NULL);
  uint32_t st = x.opened[0];
  assert_int_equal(tunnel_engine_conn_detach(x.e, st), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_conn_detach(x.e, TUNNEL_ENGINE_CONTROL),
                   TUNNEL_EINVAL);
  /* Refused, the stream is the engine's as before. */
  size_t taken;
  assert_int_equal(
      tunnel_engine_stream_write(x.e, st, (const uint8_t *)"ok", 2, &taken),
      0);
  assert_int_equal(taken, 2);
  teardown_all(&x);
  setup_cfg(&x, 0);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel_engine_conn_detach(x.e, 2), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_conn_detach(NULL, 2), TUNNEL_EINVAL);
  teardown_all(&x);
}

static void detach_non_mux(void **state) {
  (void)state;
  t x;
  logged_in(&x, 0, NULL);
  assert_int_equal(tunnel_engine_conn_detach(x.e, TUNNEL_ENGINE_CONTROL),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_conn_detach(x.e, 0), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_conn_detach(x.e, 999), TUNNEL_EINVAL);
  /* Not a visitor's yet: connecting, then waiting for StartWorkConn. */
  srv_msg(&x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
  pump(&x);
  assert_int_equal(x.nconnects, 1);
  uint32_t conn = x.connects[0];
  assert_int_equal(tunnel_engine_conn_detach(x.e, conn), TUNNEL_ESTATE);
  assert_int_equal(tunnel_engine_conn_ready(x.e, conn, 0), 0);
  assert_int_equal(tunnel_engine_conn_detach(x.e, conn), TUNNEL_ESTATE);
  pump(&x);
  assert_int_equal(sfind(&x.s, conn)->buf[0], TUNNEL__MSG_NEW_WORK_CONN);
  sfind(&x.s, conn)->len = 0;
  start_work_conn(&x, conn, "web", "GET /");
  assert_int_equal(x.nopened, 1);
  assert_int_equal(x.opened[0], conn);
  assert_int_equal(x.data_len, 5);
  /* Bytes still queued for it: they go first. */
  size_t taken;
  assert_int_equal(tunnel_engine_stream_write(
                       x.e, conn, (const uint8_t *)"HTTP/1.1", 8, &taken),
                   0);
  assert_int_equal(tunnel_engine_conn_detach(x.e, conn), TUNNEL_ESTATE);
  pump(&x);
  assert_int_equal(sfind(&x.s, conn)->len, 8);
  assert_int_equal(tunnel_engine_conn_detach(x.e, conn), 0);
  /* The connection is the program's: the engine neither reads nor writes
   * it, and names it no more. */
  int ended = x.nended, gone = x.ndisconnects, writable = x.writable;
  assert_int_equal(
      tunnel_engine_recv(x.e, conn, (const uint8_t *)"body", 4, 0), 0);
  assert_int_equal(x.data_len, 5);
  assert_int_equal(tunnel_engine_stream_write(
                       x.e, conn, (const uint8_t *)"x", 1, &taken),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_stream_consumed(x.e, conn, 0), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_stream_shutdown(x.e, conn), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_stream_close(x.e, conn), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_conn_detach(x.e, conn), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_conn_ready(x.e, conn, 0), TUNNEL_ESTATE);
  uint32_t c;
  assert_int_equal(tunnel_engine_next_output(x.e, &c), 0);
  uint8_t buf[16];
  size_t len = 1;
  assert_int_equal(tunnel_engine_send(x.e, conn, buf, sizeof buf, &len), 0);
  assert_int_equal(len, 0);
  assert_int_equal(tunnel__engine_out_pending(x.e, conn), 0);
  assert_int_equal(tunnel_engine_conn_closed(x.e, conn, 0, 0), 0);
  assert_int_equal(
      tunnel_engine_conn_closed(x.e, conn, TUNNEL_ECONNRESET, 0), 0);
  assert_int_equal(x.nended, ended);
  assert_int_equal(x.ndisconnects, gone);
  assert_int_equal(x.writable, writable);
  /* The visitor finished: too late to hand the connection over. */
  uint32_t c2 = work_channel(&x);
  start_work_conn(&x, c2, "web", NULL);
  assert_int_equal(tunnel_engine_conn_closed(x.e, c2, 0, 0), 0);
  assert_int_equal(x.nended, ended + 1);
  assert_int_equal(tunnel_engine_conn_detach(x.e, c2), TUNNEL_ESTATE);
  assert_int_equal(tunnel_engine_stream_close(x.e, c2), 0);
  /* Shut down with bytes still queued: too late as well. */
  uint32_t c3 = work_channel(&x);
  start_work_conn(&x, c3, "web", NULL);
  assert_int_equal(tunnel_engine_stream_write(
                       x.e, c3, (const uint8_t *)"bye", 3, &taken),
                   0);
  assert_int_equal(tunnel_engine_stream_shutdown(x.e, c3), 0);
  assert_int_equal(tunnel_engine_conn_detach(x.e, c3), TUNNEL_ESTATE);
  pump(&x);
  assert_int_equal(sfind(&x.s, c3)->len, 3);
  assert_int_equal(tunnel_engine_conn_detach(x.e, c3), TUNNEL_EINVAL);
  /* The session ends: the stream the engine still has ends with it, the
   * detached one does not. */
  uint32_t c4 = work_channel(&x);
  start_work_conn(&x, c4, "web", NULL);
  assert_int_equal(tunnel_engine_conn_detach(x.e, c4), 0);
  uint32_t c5 = work_channel(&x);
  start_work_conn(&x, c5, "web", NULL);
  ended = x.nended;
  assert_int_equal(
      tunnel_engine_conn_closed(x.e, TUNNEL_ENGINE_CONTROL, 0, 0), 0);
  assert_int_equal(x.nended, ended + 1);
  assert_int_equal(x.ended[ended], c5);
  assert_int_equal(x.end_status[ended], TUNNEL_ECLOSED);
  teardown_all(&x);
}

/* ---------------------------------------------------------- zero copy */

/* What each run of the wire script put on each connection. */
#define WIRE_CONNS 16
typedef struct {
  uint8_t *b;
  size_t n;
} wire;
static wire WIRE[2][WIRE_CONNS];
static int RUN;
static size_t STEP;

static void wire_add(uint32_t conn, const uint8_t *b, size_t n) {
  assert_true(conn < WIRE_CONNS);
  wire *w = &WIRE[RUN][conn];
  w->b = realloc(w->b, w->n + n + 1);
  assert_non_null(w->b);
  memcpy(w->b + w->n, b, n);
  w->n += n;
}

static size_t take_send(t *x, uint32_t conn, uint8_t *buf, size_t cap) {
  size_t n;
  assert_int_equal(tunnel_engine_send(x->e, conn, buf, cap, &n), 0);
  wire_add(conn, buf, n);
  return n;
}

/* Takes output the way lib/uv does: iovecs over the queue, consumed in
 * pieces of varying size (a byte, a frame's worth, more than queued). */
static size_t take_iov(t *x, uint32_t conn, uint8_t *buf, size_t cap) {
  static const size_t steps[] = {1, 7, 4096, 13, 100000, 3, 65536};
  size_t want = steps[STEP++ % (sizeof steps / sizeof *steps)];
  if (want > cap)
    want = cap;
  size_t pending = tunnel__engine_out_pending(x->e, conn);
  tunnel__iov v[3];
  size_t k = tunnel__engine_out_iov(x->e, conn, v, 3), all = 0, got = 0;
  assert_true(k <= 3);
  for (size_t i = 0; i < k; i++) {
    assert_true(v[i].len > 0);
    all += v[i].len;
    size_t c = v[i].len < want - got ? v[i].len : want - got;
    memcpy(buf + got, v[i].base, c);
    got += c;
  }
  assert_true(all <= pending);
  assert_true(pending == 0 || got > 0);
  tunnel__engine_out_consume(x->e, conn, got);
  assert_int_equal(tunnel__engine_out_pending(x->e, conn), pending - got);
  wire_add(conn, buf, got);
  return got;
}

/* Login, registrations, a visitor's stream with more than a window of data
 * each way, a heartbeat, the stream's end, a removal. */
static void wire_script(t *x, int mux) {
  static uint8_t big[300 * 1024];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (uint8_t)(i * 31 + i / 251);
  logged_in(x, mux, NULL);
  uint32_t h;
  assert_int_equal(
      tunnel_engine_add_proxy(x->e, "site", TUNNEL_ENGINE_PROXY_HTTP, &h), 0);
  assert_int_equal(tunnel_engine_proxy_add_location(x->e, h, "/api"), 0);
  assert_int_equal(tunnel_engine_proxy_set_basic_auth(x->e, h, "u", "p"), 0);
  pump(x);
  uint32_t id = work_channel(x);
  start_work_conn(x, id, "web", "hello");
  uint32_t st = x->opened[0];
  size_t off = 0;
  for (int round = 0; off < sizeof big && round < 8; round++) {
    size_t taken;
    assert_int_equal(tunnel_engine_stream_write(x->e, st, big + off,
                                                sizeof big - off, &taken),
                     0);
    off += taken;
    pump(x);
  }
  assert_int_equal(off, sizeof big);
  srv_raw(x, id, big, 100 * 1024);
  pump(x);
  assert_int_equal(tunnel_engine_stream_consumed(x->e, st, x->data_len), 0);
  assert_int_equal(tunnel_engine_tick(x->e, 30000, NULL), 0);
  pump(x);
  assert_int_equal(tunnel_engine_stream_shutdown(x->e, st), 0);
  pump(x);
  if (mux)
    assert_int_equal(tunnel_engine_stream_close(x->e, st), 0);
  assert_int_equal(tunnel_engine_remove_proxy(x->e, h), 0);
  pump(x);
  assert_int_equal(count_msgs(x, TUNNEL__MSG_PING), 1);
  assert_non_null(msg_named(x, TUNNEL__MSG_CLOSE_PROXY, "site"));
  seen_msg *m = msg_named(x, TUNNEL__MSG_NEW_PROXY, "site");
  assert_non_null(m);
  assert_string_equal(m->locations, "/api");
  /* The server got the visitor's bytes in order. */
  sstream *ss = sfind(&x->s, id);
  assert_int_equal(ss->len, sizeof big);
  assert_memory_equal(ss->buf, big, sizeof big);
  assert_int_equal(x->data_len, 5 + 100 * 1024);
  assert_memory_equal(x->data + 5, big, 100 * 1024);
  assert_int_equal(tunnel_engine_next_output(x->e, &id), 0);
}

/* The zero-copy calls give exactly the bytes tunnel_engine_send() gives,
 * connection by connection, however the program slices them. */
static void zero_copy_same_bytes(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    static t x;
    for (RUN = 0; RUN < 2; RUN++) {
      TAKE = RUN ? take_iov : take_send;
      STEP = 0;
      wire_script(&x, mux);
      teardown_all(&x);
      TAKE = NULL;
    }
    int conns = 0;
    for (int c = 0; c < WIRE_CONNS; c++) {
      assert_int_equal(WIRE[0][c].n, WIRE[1][c].n);
      if (WIRE[0][c].n) {
        conns++;
        assert_memory_equal(WIRE[0][c].b, WIRE[1][c].b, WIRE[0][c].n);
      }
      for (int r = 0; r < 2; r++) {
        free(WIRE[r][c].b);
        WIRE[r][c].b = NULL;
        WIRE[r][c].n = 0;
      }
    }
    /* Mux: connection 1 alone; otherwise the work connection too. */
    assert_int_equal(conns, mux ? 1 : 2);
  }
}

/* Iovecs stay valid while more output queues behind them; consuming part
 * leaves the rest, in order, for whichever way takes it next. */
static void zero_copy_iov_stable(void **state) {
  (void)state;
  static uint8_t more[200 * 1024];
  for (size_t i = 0; i < sizeof more; i++)
    more[i] = (uint8_t)(i * 7 + 1);
  for (int mux = 0; mux < 2; mux++) {
    static t x;
    logged_in(&x, mux, NULL);
    /* Nothing queued, nothing to name, no session: nothing. */
    assert_int_equal(tunnel__engine_out_pending(x.e, TUNNEL_ENGINE_CONTROL),
                     0);
    assert_int_equal(tunnel__engine_out_pending(x.e, 999), 0);
    tunnel__iov v[16];
    assert_int_equal(tunnel__engine_out_iov(x.e, 999, v, 16), 0);
    tunnel__engine_out_consume(x.e, 999, 10);
    uint32_t id = work_channel(&x);
    start_work_conn(&x, id, "web", NULL);
    uint32_t st = x.opened[0];
    uint32_t conn = mux ? TUNNEL_ENGINE_CONTROL : st;
    if (mux)
      assert_int_equal(tunnel__engine_out_pending(x.e, st), 0);
    uint8_t first[1000];
    for (size_t i = 0; i < sizeof first; i++)
      first[i] = (uint8_t)(i * 31);
    size_t taken;
    assert_int_equal(
        tunnel_engine_stream_write(x.e, st, first, sizeof first, &taken), 0);
    size_t pending = tunnel__engine_out_pending(x.e, conn);
    assert_true(pending >= sizeof first); /* plus a frame header (mux) */
    size_t k = tunnel__engine_out_iov(x.e, conn, v, 16), total = 0;
    static uint8_t snap[2048];
    for (size_t i = 0; i < k; i++) {
      assert_true(total + v[i].len <= sizeof snap);
      memcpy(snap + total, v[i].base, v[i].len);
      total += v[i].len;
    }
    assert_int_equal(total, pending);
    assert_memory_equal(snap + pending - sizeof first, first, sizeof first);
    /* More behind it: what was queued stays where it was. */
    assert_int_equal(
        tunnel_engine_stream_write(x.e, st, more, sizeof more, &taken), 0);
    assert_int_equal(taken, sizeof more);
    assert_true(tunnel__engine_out_pending(x.e, conn) > pending + sizeof more -
                                                           1);
    for (size_t i = 0, off = 0; i < k; off += v[i].len, i++)
      assert_memory_equal(v[i].base, snap + off, v[i].len);
    /* Five bytes left; the rest follows them. */
    tunnel__engine_out_consume(x.e, conn, 5);
    tunnel__iov w;
    assert_int_equal(tunnel__engine_out_iov(x.e, conn, &w, 1), 1);
    assert_true(w.len > 0);
    size_t cmp = w.len < total - 5 ? w.len : total - 5;
    assert_memory_equal(w.base, snap + 5, cmp);
    /* The server gets those five bytes, then the rest by copy. */
    if (mux)
      assert_int_equal(tunnel__ymx_recv(x.s.y, snap, 5), 0);
    else
      sappend(sfind(&x.s, conn), snap, 5);
    pump(&x);
    sstream *ss = sfind(&x.s, id);
    assert_int_equal(ss->len, sizeof first + sizeof more);
    assert_memory_equal(ss->buf, first, sizeof first);
    assert_memory_equal(ss->buf + sizeof first, more, sizeof more);
    teardown_all(&x);
  }
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  assert_int_equal(tunnel__engine_out_pending(x.e, TUNNEL_ENGINE_CONTROL), 0);
  tunnel__iov v;
  assert_int_equal(tunnel__engine_out_iov(x.e, TUNNEL_ENGINE_CONTROL, &v, 1),
                   0);
  tunnel__engine_out_consume(x.e, TUNNEL_ENGINE_CONTROL, 1);
  teardown_all(&x);
}

/* One visitor's stream without multiplexing: "bye" written, the stream
 * shut down (draining), its bytes taken by copy or without. */
static void drain_one(t *x, int zero_copy) {
  uint32_t conn = work_channel(x);
  start_work_conn(x, conn, "web", NULL);
  size_t taken;
  assert_int_equal(tunnel_engine_stream_write(
                       x->e, conn, (const uint8_t *)"bye", 3, &taken),
                   0);
  assert_int_equal(tunnel_engine_stream_shutdown(x->e, conn), 0);
  assert_int_equal(x->disconnects[x->ndisconnects - 1], conn);
  uint32_t c;
  if (!zero_copy) {
    pump(x);
  } else {
    tunnel__engine_out_consume(x->e, conn, 2);
    assert_int_equal(tunnel__engine_out_pending(x->e, conn), 1);
    assert_int_equal(tunnel_engine_next_output(x->e, &c), 1);
    assert_int_equal(c, conn);
    tunnel__engine_out_consume(x->e, conn, 1);
    assert_int_equal(tunnel__engine_out_pending(x->e, conn), 0);
  }
  assert_int_equal(tunnel_engine_next_output(x->e, &c), 0);
}

/* Without multiplexing: consuming a draining stream's last bytes forgets
 * it as tunnel_engine_send() does, and a writer the window stopped hears
 * that it may go on once bytes left. */
static void zero_copy_drain_and_writable(void **state) {
  (void)state;
  static t x;
  logged_in(&x, 0, NULL);
  /* The heap after a stream drained by copy, twice (steady), then after
   * one drained without a copy: the same, so nothing was kept of it. */
  drain_one(&x, 0);
  drain_one(&x, 0);
  size_t live = x.mem.live;
  drain_one(&x, 0);
  assert_int_equal(x.mem.live, live);
  drain_one(&x, 1);
  assert_int_equal(x.mem.live, live);
  /* A writer stopped by the window. */
  uint32_t conn = work_channel(&x);
  start_work_conn(&x, conn, "web", NULL);
  static uint8_t big[300 * 1024];
  memset(big, 'w', sizeof big);
  size_t taken;
  assert_int_equal(
      tunnel_engine_stream_write(x.e, conn, big, sizeof big, &taken), 0);
  assert_int_equal(taken, 256 * 1024);
  assert_int_equal(x.writable, 0);
  tunnel__engine_out_consume(x.e, conn, 1);
  assert_int_equal(x.writable, 1);
  /* Once: it was not stopped again since. */
  tunnel__engine_out_consume(x.e, conn, 1000);
  assert_int_equal(x.writable, 1);
  assert_int_equal(tunnel_engine_stream_write(x.e, conn, big, 1001, &taken),
                   0);
  assert_int_equal(taken, 1001);
  assert_int_equal(tunnel_engine_stream_write(x.e, conn, big, 1, &taken), 0);
  assert_int_equal(taken, 0);
  tunnel__engine_out_consume(x.e, conn, 100);
  assert_int_equal(x.writable, 2);
  assert_int_equal(tunnel__engine_out_pending(x.e, conn), 256 * 1024 - 100);
  teardown_all(&x);
}

/* ------------------------------------------------------------- memory */

/* HTTP options, a held proxy and a removal with the Nth allocation
 * failing, for every N: each call succeeds or says TUNNEL_ENOMEM, what it
 * accepted is what NewProxy carries, and nothing leaks. */
static int oom_options_run(size_t fail_at, int mux) {
  t x;
  setup_cfg(&x, mux);
  LENIENT = 1;
  x.mem.fail_at = fail_at;
  int rc = make_engine(&x);
  uint32_t p, q;
  if (rc == 0)
    rc = tunnel_engine_add_proxy(x.e, "site", TUNNEL_ENGINE_PROXY_HTTP, &p);
  if (rc == 0)
    rc = tunnel_engine_add_proxy(x.e, "ssh", TUNNEL_ENGINE_PROXY_TCP, &q);
  if (rc) {
    assert_int_equal(rc, TUNNEL_ENOMEM);
    goto out;
  }
  int loc1 = tunnel_engine_proxy_add_location(x.e, p, "/api");
  int loc2 = tunnel_engine_proxy_add_location(x.e, p, "/v2");
  int host = tunnel_engine_proxy_set_host_rewrite(x.e, p, "b.local");
  int auth = tunnel_engine_proxy_set_basic_auth(x.e, p, "alice", "pw");
  int hdr1 = tunnel_engine_proxy_set_header(x.e, p, "X-A", "1");
  int hdr2 = tunnel_engine_proxy_set_header(x.e, p, "X-B", "2");
  const int all[] = {loc1, loc2, host, auth, hdr1, hdr2};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    assert_true(all[i] == 0 || all[i] == TUNNEL_ENOMEM);
  assert_int_equal(tunnel__engine_proxy_hold(x.e, q, 1), 0);
  if (tunnel_engine_start(x.e, 0) != 0)
    goto out;
  pump(&x);
  if (!last_msg(&x, TUNNEL__MSG_LOGIN))
    goto out;
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  if (x.nstates != 1 || x.states[0] != 0)
    goto out;
  seen_msg *m = msg_named(&x, TUNNEL__MSG_NEW_PROXY, "site");
  if (m) {
    assert_int_equal(strstr(m->locations, "/api") != NULL, loc1 == 0);
    assert_int_equal(strstr(m->locations, "/v2") != NULL, loc2 == 0);
    assert_int_equal(strcmp(m->host_rewrite, "b.local") == 0, host == 0);
    if (auth == 0) {
      assert_string_equal(m->http_user, "alice");
      assert_string_equal(m->http_pwd, "pw");
    }
    assert_int_equal(strstr(m->headers, "X-A=1;") != NULL, hdr1 == 0);
    assert_int_equal(strstr(m->headers, "X-B=2;") != NULL, hdr2 == 0);
  }
  assert_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "ssh"));
  assert_int_equal(tunnel__engine_proxy_hold(x.e, q, 0), 0);
  pump(&x);
  rc = tunnel_engine_remove_proxy(x.e, p);
  assert_true(rc == 0 || rc == TUNNEL_ENOMEM);
  /* Told or not, the proxy is gone. */
  assert_int_equal(tunnel_engine_remove_proxy(x.e, p), TUNNEL_EINVAL);
  pump(&x);
  if (rc == 0 && x.nstates == 1)
    assert_non_null(msg_named(&x, TUNNEL__MSG_CLOSE_PROXY, "site"));
out:;
  int failed = x.mem.failed;
  LENIENT = 0;
  teardown_all(&x); /* asserts nothing leaked */
  return failed;
}

static void oom_options(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    size_t n = 1;
    while (oom_options_run(n, mux))
      n++;
    assert_true(n > 20);
  }
}

/* -------------------------------------------- removal from a callback */

/* Proxies the program forgets when a session fails. */
static uint32_t FORGET[4];
static int NFORGET;

static void cb_state_forget(tunnel_engine *e, int status, const char *msg,
                            void *ud) {
  cb_state(e, status, msg, ud);
  if (status >= 0)
    return;
  for (int i = 0; i < NFORGET; i++)
    tunnel_engine_remove_proxy(e, FORGET[i]);
  NFORGET = 0;
}

/* Registering a proxy overflows the control backlog (the server does not
 * read), the session fails while the engine walks its proxies, and the
 * state callback removes the proxy being registered. */
static void remove_in_state_cb_while_registering(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 0);
  assert_int_equal(tunnel_config_set_max_control_backlog(x.cfg, 4096), 0);
  assert_int_equal(make_engine(&x), 0);
  tunnel_engine_set_state_cb(x.e, cb_state_forget);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, NULL), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(x.states[0], 0);
  uint32_t big;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "big", TUNNEL_ENGINE_PROXY_HTTP, &big), 0);
  char name[256];
  for (int i = 0; i < 24; i++) {
    snprintf(name, sizeof name, "d%02d-%0200d.example.com", i, 0);
    assert_int_equal(tunnel_engine_proxy_add_domain(x.e, big, name), 0);
  }
  FORGET[0] = big;
  NFORGET = 1;
  uint32_t conn;
  assert_int_equal(tunnel_engine_next_output(x.e, &conn), 0);
  assert_int_equal(x.nstates, 2);
  assert_int_equal(x.states[1], TUNNEL_ELIMIT);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, big), TUNNEL_EINVAL);
  /* The next session registers what is left. */
  login_again(&x);
  assert_int_equal(x.states[2], 0);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 1);
  assert_non_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "web"));
  teardown_all(&x);
}

/* The CloseProxy of a removal cannot be queued (no memory), the session
 * fails inside tunnel_engine_remove_proxy(), and the state callback
 * removes the same proxy. */
static void remove_in_state_cb_while_removing(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  assert_int_equal(make_engine(&x), 0);
  tunnel_engine_set_state_cb(x.e, cb_state_forget);
  uint32_t p, q;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, &p), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "ssh", TUNNEL_ENGINE_PROXY_TCP, &q), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(x.states[0], 0);
  FORGET[0] = p;
  NFORGET = 1;
  x.mem.fail_at = x.mem.calls + 1;
  assert_int_equal(tunnel_engine_remove_proxy(x.e, p), TUNNEL_ENOMEM);
  x.mem.fail_at = 0;
  assert_int_equal(x.nstates, 2);
  assert_int_equal(x.states[1], TUNNEL_ENOMEM);
  assert_int_equal(tunnel_engine_remove_proxy(x.e, p), TUNNEL_EINVAL);
  login_again(&x);
  assert_int_equal(count_msgs(&x, TUNNEL__MSG_NEW_PROXY), 1);
  assert_non_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "ssh"));
  teardown_all(&x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(http_options),
      cmocka_unit_test(held_and_late_proxies),
      cmocka_unit_test(remove_registered_proxy),
      cmocka_unit_test(remove_unregistered_proxy),
      cmocka_unit_test(remove_proxy_non_mux),
      cmocka_unit_test(detach_refused),
      cmocka_unit_test(detach_non_mux),
      cmocka_unit_test(zero_copy_same_bytes),
      cmocka_unit_test(zero_copy_iov_stable),
      cmocka_unit_test(zero_copy_drain_and_writable),
      cmocka_unit_test(oom_options),
      /* Last: a failure here may take the process down. */
      cmocka_unit_test(remove_in_state_cb_while_registering),
      cmocka_unit_test(remove_in_state_cb_while_removing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
