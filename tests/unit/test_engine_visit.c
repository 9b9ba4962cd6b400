/* The engine's secret services (stcp): proxies registered with their
 * secret, and the program's own visits (tunnel_engine_visit) over a new
 * stream or, without multiplexing, a new connection: the message and its
 * key, the answer, the open stream, refusals, the session's end, timeouts,
 * abandoned visits and limits. Scripted against the in-memory server of
 * test_engine.c, whose harness this file shares. */
#define TEST_ENGINE_HARNESS_ONLY
/* The harness has helpers these tests do not call. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "test_engine.c"

#define SK "service-secret"

/* ------------------------------------------------------------- helpers */

/* What the visit callback heard. */
typedef struct {
  uint32_t stream[16];
  int status[16];
  char msg[16][128];
  int n;
  int close_in_cb; /* close the stream from the callback */
  int write_in_cb; /* write "cb" from the callback */
} visits;

static visits V;

static void cb_visit(tunnel_engine *e, uint32_t stream, int status,
                     const char *msg, void *ud) {
  (void)ud;
  assert_true(V.n < 16);
  V.stream[V.n] = stream;
  V.status[V.n] = status;
  copy_str(V.msg[V.n], sizeof V.msg[0], msg);
  V.n++;
  if (status == 0 && V.close_in_cb)
    assert_int_equal(tunnel_engine_stream_close(e, stream), 0);
  if (status == 0 && V.write_in_cb) {
    size_t taken;
    assert_int_equal(
        tunnel_engine_stream_write(e, stream, (const uint8_t *)"cb", 2, &taken),
        0);
    assert_int_equal(taken, 2);
  }
}

static void cb_connect_fails(tunnel_engine *e, uint32_t conn, void *ud) {
  (void)ud;
  assert_int_equal(tunnel_engine_conn_closed(e, conn, TUNNEL_ECONNREFUSED, 0),
                   0);
}

/* Logged in with visits heard; `proxy` as logged_in's "web". */
static void visit_ready(t *x, int mux) {
  memset(&V, 0, sizeof V);
  logged_in(x, mux, NULL);
  assert_int_equal(tunnel_engine_set_visit_cb(x->e, cb_visit), 0);
}

/* Starts a visit; returns the server-side id of its channel (mux: the new
 * stream; non-mux: the connection, once connected) after checking its
 * NewVisitorConn. */
static uint32_t visit(t *x, const char *name, const char *secret,
                      uint32_t *stream) {
  int before = x->s.nst, nc = x->nconnects;
  assert_int_equal(tunnel_engine_visit(x->e, name, secret, stream), 0);
  assert_true(*stream >= 2);
  if (!x->s.mux) {
    assert_int_equal(x->nconnects, nc + 1);
    assert_int_equal(x->connects[nc], *stream); /* connection == stream */
    /* Nothing leaves before the connection is up. */
    pump(x);
    assert_int_equal(x->s.nst, before);
    assert_int_equal(tunnel_engine_conn_ready(x->e, *stream, x->now), 0);
  }
  pump(x);
  assert_int_equal(x->s.nst, before + 1);
  sstream *st = &x->s.st[before];
  tunnel__msg_reader r;
  tunnel__msg m;
  size_t used;
  tunnel__msg_reader_init(&r, &x->s.mem, 10240);
  assert_int_equal(tunnel__msg_reader_feed(&r, st->buf, st->len, &used, &m), 1);
  assert_int_equal(used, st->len);
  assert_int_equal(m.type, TUNNEL__MSG_NEW_VISITOR_CONN);
  assert_string_equal(m.proxy_name, name);
  assert_string_equal(m.run_id, "0123456789abcdef");
  assert_int_equal(m.timestamp, NOW_S);
  char key[33];
  tunnel__privilege_key(secret, strlen(secret), NOW_S, key);
  assert_string_equal(m.sign_key, key);
  assert_false(m.use_encryption);
  assert_false(m.use_compression);
  tunnel__msg_clear(&x->s.mem, &m);
  tunnel__msg_reader_free(&r);
  st->len = 0;
  return st->id;
}

/* The server's answer on a visit's channel, and bytes after it. */
static void answer(t *x, uint32_t id, const char *name, const char *error,
                   const char *then) {
  tunnel__msg m;
  tunnel__msg_init(&m, TUNNEL__MSG_NEW_VISITOR_CONN_RESP);
  m.proxy_name = (char *)name;
  m.error = (char *)error;
  srv_send(x, id, &m);
  if (then)
    srv_raw(x, id, then, strlen(then));
  pump(x);
}

/* ----------------------------------------------------- secret services */

/* NewProxy of a control connection without multiplexing, decoded from the
 * bytes the engine sends (the harness's server keeps no `sk`). */
static tunnel__ctlcodec REC;
static char REC_TYPE[16], REC_SK[64], REC_NAME[64];
static int64_t REC_PORT = -1;
static int REC_PROXIES;

static int rec_msg(void *ud, const tunnel__msg *m) {
  t *x = ud;
  static const uint8_t iv[16] = {0};
  if (m->type == TUNNEL__MSG_LOGIN)
    assert_int_equal(tunnel__ctlcodec_encrypt(&REC, x->s.key, iv), 0);
  if (m->type == TUNNEL__MSG_NEW_PROXY &&
      strcmp(m->proxy_name, "hidden") == 0) {
    copy_str(REC_TYPE, sizeof REC_TYPE, m->proxy_type);
    copy_str(REC_SK, sizeof REC_SK, m->sk);
    copy_str(REC_NAME, sizeof REC_NAME, m->proxy_name);
    REC_PORT = m->remote_port;
    REC_PROXIES++;
  }
  return 1;
}

static size_t rec_take(t *x, uint32_t conn, uint8_t *buf, size_t cap) {
  size_t n;
  assert_int_equal(tunnel_engine_send(x->e, conn, buf, cap, &n), 0);
  if (conn == TUNNEL_ENGINE_CONTROL && n) {
    size_t used;
    assert_int_equal(tunnel__ctlcodec_feed(&REC, buf, n, &used, rec_msg, x), 0);
  }
  return n;
}

/* An STCP proxy: registered with its type and secret and no port, its
 * options checked, its visitors arriving as a TCP proxy's. */
static void stcp_proxy(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 0);
  assert_int_equal(make_engine(&x), 0);
  tunnel__ctlcodec_init(&REC, &x.s.mem, 10240);
  REC_PROXIES = 0;
  TAKE = rec_take;
  uint32_t tcp, sp;
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "plain", TUNNEL_ENGINE_PROXY_TCP, &tcp), 0);
  assert_int_equal(
      tunnel_engine_add_proxy(x.e, "hidden", TUNNEL_ENGINE_PROXY_STCP, &sp), 0);
  assert_int_equal(tunnel_engine_add_proxy(x.e, "x", 6, NULL), TUNNEL_ENOTSUP);
  /* The secret is STCP's alone; a port is not STCP's. */
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, tcp, SK),
                   TUNNEL_ENOTSUP);
  assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, sp, 7000),
                   TUNNEL_ENOTSUP);
  assert_int_equal(tunnel_engine_proxy_set_subdomain(x.e, sp, "a"),
                   TUNNEL_ENOTSUP);
  char longer[300];
  memset(longer, 'k', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, sp, ""), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, sp, NULL),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, sp, longer),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, 99, SK), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, sp, "first"), 0);
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, sp, SK), 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(REC_PROXIES, 1);
  assert_string_equal(REC_TYPE, "stcp");
  assert_string_equal(REC_SK, SK);
  assert_int_equal(REC_PORT, 0);
  seen_msg *m = last_msg(&x, TUNNEL__MSG_NEW_PROXY);
  assert_string_equal(m->name, "hidden");
  assert_string_equal(m->proxy_type, "stcp");
  /* Registered: fixed. No address in the answer. */
  assert_int_equal(tunnel_engine_proxy_set_secret(x.e, sp, "other"),
                   TUNNEL_ESTATE);
  srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "hidden", NULL);
  pump(&x);
  assert_int_equal(x.nproxy, 1);
  assert_int_equal(x.proxy_ids[0], sp);
  assert_int_equal(x.proxy_status[0], 0);
  assert_string_equal(x.proxy_msg[0], "");
  /* A visitor reaches it as a TCP proxy's does. */
  uint32_t conn = work_channel(&x);
  start_work_conn(&x, conn, "hidden", "knock");
  assert_int_equal(x.nopened, 1);
  assert_int_equal(x.open_proxy, sp);
  assert_int_equal(x.data_len, 5);
  assert_memory_equal(x.data, "knock", 5);
  assert_int_equal(tunnel_engine_stream_count(x.e), 1);
  TAKE = NULL;
  tunnel__ctlcodec_free(&REC);
  teardown_all(&x);
}

/* ---------------------------------------------------------------- visits */

/* A visit over a new stream: the message, the answer with bytes behind it,
 * then a stream like a visitor's: data both ways, counted, half-closed
 * both ways, closed. */
static void visit_mux(void **state) {
  (void)state;
  t x;
  visit_ready(&x, 1);
  uint32_t num;
  uint32_t id = visit(&x, "hidden", SK, &num);
  assert_int_equal(V.n, 0);
  /* Not open yet: the stream calls do not find it, the count skips it. */
  size_t taken;
  assert_int_equal(
      tunnel_engine_stream_write(x.e, num, (const uint8_t *)"x", 1, &taken),
      TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_stream_count(x.e), 0);
  V.write_in_cb = 1;
  answer(&x, id, "hidden", NULL, "hello");
  assert_int_equal(V.n, 1);
  assert_int_equal(V.stream[0], num);
  assert_int_equal(V.status[0], 0);
  assert_string_equal(V.msg[0], "");
  /* The bytes behind the answer, after the callback. */
  assert_int_equal(x.data_len, 5);
  assert_memory_equal(x.data, "hello", 5);
  assert_int_equal(x.data_stream, num);
  assert_int_equal(x.nopened, 0); /* not a visitor of ours */
  assert_int_equal(tunnel_engine_stream_count(x.e), 1);
  assert_int_equal(tunnel_engine_stream_consumed(x.e, num, 5), 0);
  assert_int_equal(
      tunnel_engine_stream_write(x.e, num, (const uint8_t *)"back", 4, &taken),
      0);
  assert_int_equal(taken, 4);
  pump(&x);
  sstream *ss = sfind(&x.s, id);
  assert_int_equal(ss->len, 6);
  assert_memory_equal(ss->buf, "cbback", 6);
  /* Half-closes. */
  assert_int_equal(tunnel_engine_stream_shutdown(x.e, num), 0);
  pump(&x);
  assert_true(ss->fin);
  int ended = x.nended;
  assert_int_equal(tunnel__ymx_shutdown(x.s.y, id) >= 0, 1);
  pump(&x);
  assert_int_equal(x.nended, ended + 1);
  assert_int_equal(x.ended[ended], num);
  assert_int_equal(x.end_status[ended], 0);
  assert_int_equal(tunnel_engine_stream_close(x.e, num), 0);
  assert_int_equal(tunnel_engine_stream_count(x.e), 0);
  /* A second visit gets a stream of its own; closing it from the
   * callback is allowed. */
  V.write_in_cb = 0;
  V.close_in_cb = 1;
  uint32_t num2;
  uint32_t id2 = visit(&x, "hidden", SK, &num2);
  assert_true(num2 != num && id2 != id);
  answer(&x, id2, "hidden", NULL, "ignored");
  assert_int_equal(V.n, 2);
  assert_int_equal(V.status[1], 0);
  assert_int_equal(x.data_len, 5); /* closed before the bytes */
  assert_true(sfind(&x.s, id2)->rst);
  assert_int_equal(tunnel_engine_stream_count(x.e), 0);
  teardown_all(&x);
}

/* A wrong secret and an unknown name: refused with the server's reason,
 * the channel gone; a visit already open goes on. */
static void visit_refused(void **state) {
  (void)state;
  for (int mux = 1; mux >= 0; mux--) {
    t x;
    visit_ready(&x, mux);
    uint32_t ok, bad, unknown;
    uint32_t id_ok = visit(&x, "hidden", SK, &ok);
    answer(&x, id_ok, "hidden", NULL, NULL);
    assert_int_equal(V.status[0], 0);
    uint32_t id_bad = visit(&x, "hidden", "wrong", &bad);
    uint32_t id_unknown = visit(&x, "nosuch", SK, &unknown);
    answer(&x, id_bad, "hidden", "visitor connection of [hidden] auth failed",
           NULL);
    answer(&x, id_unknown, "nosuch",
           "custom listener for [nosuch] doesn't exist", NULL);
    assert_int_equal(V.n, 3);
    assert_int_equal(V.stream[1], bad);
    assert_int_equal(V.status[1], TUNNEL_EREFUSED);
    assert_string_equal(V.msg[1], "visitor connection of [hidden] auth failed");
    assert_int_equal(V.stream[2], unknown);
    assert_int_equal(V.status[2], TUNNEL_EREFUSED);
    assert_string_equal(V.msg[2], "custom listener for [nosuch] doesn't exist");
    /* Gone: reset (mux) or handed back to be closed (non-mux). */
    if (mux) {
      assert_true(sfind(&x.s, id_bad)->rst);
      assert_true(sfind(&x.s, id_unknown)->rst);
    } else {
      assert_int_equal(x.ndisconnects, 2);
      assert_int_equal(x.disconnects[0], bad);
      assert_int_equal(x.disconnects[1], unknown);
    }
    assert_int_equal(tunnel_engine_stream_close(x.e, bad), TUNNEL_EINVAL);
    size_t taken;
    assert_int_equal(tunnel_engine_stream_write(
                         x.e, ok, (const uint8_t *)"still", 5, &taken),
                     0);
    pump(&x);
    sstream *ss = sfind(&x.s, id_ok);
    assert_int_equal(ss->len, 5);
    assert_int_equal(tunnel_engine_stream_count(x.e), 1);
    assert_int_equal(x.nstates, 1); /* the session is untouched */
    teardown_all(&x);
  }
}

/* Without multiplexing: a connection asked for, the message only once it
 * is connected, the answer, then a connection the program may take over
 * (conn_detach); failures of the connection before the answer. */
static void visit_non_mux(void **state) {
  (void)state;
  t x;
  visit_ready(&x, 0);
  uint32_t num;
  uint32_t conn = visit(&x, "hidden", SK, &num);
  assert_int_equal(conn, num);
  assert_int_equal(tunnel_engine_conn_ready(x.e, num, 0), TUNNEL_ESTATE);
  answer(&x, conn, "hidden", NULL, "hi");
  assert_int_equal(V.status[0], 0);
  assert_int_equal(x.data_len, 2);
  assert_int_equal(tunnel_engine_stream_count(x.e), 1);
  /* Taken over by the program, as a visitor's connection. */
  assert_int_equal(tunnel_engine_conn_detach(x.e, num), 0);
  assert_int_equal(tunnel_engine_stream_count(x.e), 0);
  /* The connection cannot be opened. */
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &num), 0);
  assert_int_equal(tunnel_engine_conn_closed(x.e, num, TUNNEL_ECONNREFUSED, 0),
                   0);
  assert_int_equal(V.n, 2);
  assert_int_equal(V.stream[1], num);
  assert_int_equal(V.status[1], TUNNEL_ECONNREFUSED);
  assert_string_equal(V.msg[1], ""); /* the status says it */
  assert_int_equal(tunnel_engine_conn_ready(x.e, num, 0), TUNNEL_ESTATE);
  /* The server closes it without an answer. */
  conn = visit(&x, "hidden", SK, &num);
  assert_int_equal(tunnel_engine_conn_closed(x.e, num, 0, 0), 0);
  assert_int_equal(V.status[2], TUNNEL_ECONNRESET);
  /* A connect callback that fails at once: heard before the call
   * returns, the number already gone. */
  tunnel_engine_set_conn_cbs(x.e, cb_connect_fails, cb_disconnect);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &num), 0);
  assert_int_equal(V.n, 4);
  assert_int_equal(V.stream[3], num);
  assert_int_equal(V.status[3], TUNNEL_ECONNREFUSED);
  assert_int_equal(tunnel_engine_stream_close(x.e, num), TUNNEL_EINVAL);
  tunnel_engine_set_conn_cbs(x.e, cb_connect, cb_disconnect);
  V.n = 3;
  /* The answer split across reads, with garbage after a good start. */
  x.ndisconnects = 0;
  conn = visit(&x, "hidden", SK, &num);
  srv_raw(&x, conn, "3", 1);
  pump(&x);
  assert_int_equal(V.n, 3);
  srv_raw(&x, conn, "\0\0\0\0\0\0\0\x05nope!", 13);
  pump(&x);
  assert_int_equal(V.n, 4);
  assert_int_equal(V.stream[3], num);
  assert_int_equal(V.status[3], TUNNEL_EPROTO);
  assert_int_equal(x.ndisconnects, 1);
  assert_int_equal(x.disconnects[0], num);
  teardown_all(&x);
}

/* The visit's life without an answer: abandoned by the program, timed
 * out, cut by the session's end; a channel the server ends; a message
 * that is not the answer. */
static void visit_unanswered(void **state) {
  (void)state;
  for (int mux = 1; mux >= 0; mux--) {
    t x;
    visit_ready(&x, mux);
    uint32_t a, b, c;
    uint32_t id_a = visit(&x, "hidden", SK, &a);
    /* Abandoned: no callback, the channel goes. */
    assert_int_equal(tunnel_engine_stream_close(x.e, a), 0);
    pump(&x);
    assert_int_equal(V.n, 0);
    if (mux)
      assert_true(sfind(&x.s, id_a)->rst);
    else
      assert_int_equal(x.disconnects[x.ndisconnects - 1], a);
    assert_int_equal(tunnel_engine_stream_close(x.e, a), TUNNEL_EINVAL);
    /* Timed out: the time counts from the next tick. */
    uint64_t next;
    x.now = 1000;
    visit(&x, "hidden", SK, &b);
    assert_int_equal(tunnel_engine_tick(x.e, 1000, &next), 0);
    assert_true(next <= 1000 + 15000);
    assert_int_equal(tunnel_engine_tick(x.e, 1000 + 14999, &next), 0);
    assert_int_equal(V.n, 0);
    assert_int_equal(next, 1000 + 15000);
    assert_int_equal(tunnel_engine_tick(x.e, 1000 + 15000, &next), 0);
    assert_int_equal(V.n, 1);
    assert_int_equal(V.stream[0], b);
    assert_int_equal(V.status[0], TUNNEL_ETIMEDOUT);
    assert_true(next > 1000 + 15000);
    x.now = 16000;
    /* The server ends the channel before answering. */
    uint32_t id_c = visit(&x, "hidden", SK, &c);
    if (mux) {
      tunnel__ymx_shutdown(x.s.y, id_c);
      pump(&x);
    } else {
      assert_int_equal(tunnel_engine_conn_closed(x.e, c, 0, 16000), 0);
    }
    assert_int_equal(V.n, 2);
    assert_int_equal(V.status[1], TUNNEL_ECONNRESET);
    if (mux) {
      /* A reset before the answer. */
      uint32_t r;
      uint32_t id_r = visit(&x, "hidden", SK, &r);
      tunnel__ymx_reset(x.s.y, id_r);
      pump(&x);
      assert_int_equal(V.n, 3);
      assert_int_equal(V.stream[2], r);
      assert_int_equal(V.status[2], TUNNEL_ECONNRESET);
      V.n = 2;
    }
    /* Another message where the answer belongs. */
    uint32_t w;
    uint32_t id_w = visit(&x, "hidden", SK, &w);
    tunnel__msg m;
    tunnel__msg_init(&m, TUNNEL__MSG_START_WORK_CONN);
    m.proxy_name = "hidden";
    srv_send(&x, id_w, &m);
    pump(&x);
    assert_int_equal(V.n, 3);
    assert_int_equal(V.status[2], TUNNEL_EPROTO);
    /* Two waiting when the session ends: both hear it. */
    uint32_t d, e2;
    visit(&x, "hidden", SK, &d);
    visit(&x, "hidden", SK, &e2);
    assert_int_equal(
        tunnel_engine_conn_closed(x.e, TUNNEL_ENGINE_CONTROL, 0, 16000), 0);
    assert_int_equal(V.n, 5);
    assert_int_equal(V.status[3], TUNNEL_ECLOSED);
    assert_int_equal(V.status[4], TUNNEL_ECLOSED);
    assert_true((V.stream[3] == d && V.stream[4] == e2) ||
                (V.stream[3] == e2 && V.stream[4] == d));
    assert_int_equal(x.states[1], TUNNEL_ECONNRESET);
    teardown_all(&x);
  }
}

/* Arguments, states and limits. */
static void visit_rules(void **state) {
  (void)state;
  t x;
  setup_cfg(&x, 1);
  tunnel_config_set_max_work_conns(x.cfg, 2);
  assert_int_equal(make_engine(&x), 0);
  memset(&V, 0, sizeof V);
  tunnel_engine_set_visit_cb(x.e, cb_visit);
  uint32_t num = 77;
  /* Not logged in. */
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &num), TUNNEL_ESTATE);
  assert_int_equal(num, 0);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  pump(&x);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &num), TUNNEL_ESTATE);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  char longer[300];
  memset(longer, 'n', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  assert_int_equal(tunnel_engine_visit(NULL, "hidden", SK, &num),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_visit(x.e, "", SK, &num), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_visit(x.e, NULL, SK, &num), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_visit(x.e, longer, SK, &num), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", "", &num), TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", longer, &num),
                   TUNNEL_EINVAL);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, NULL), TUNNEL_EINVAL);
  /* As many waiting as max_work_conns; an answered one frees a place. */
  uint32_t a, b, c;
  uint32_t id_a = visit(&x, "hidden", SK, &a);
  visit(&x, "hidden", SK, &b);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &c), TUNNEL_ELIMIT);
  answer(&x, id_a, "hidden", NULL, NULL);
  visit(&x, "hidden", SK, &c);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &num), TUNNEL_ELIMIT);
  /* Draining: no new visits; open ones go on. */
  assert_int_equal(tunnel_engine_drain(x.e, 0), 0);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &num), TUNNEL_ESTATE);
  assert_int_equal(tunnel_engine_stream_count(x.e), 1);
  teardown_all(&x);
  /* Without multiplexing the connect callback is required. */
  setup_cfg(&x, 0);
  assert_int_equal(make_engine(&x), 0);
  tunnel_engine_set_conn_cbs(x.e, NULL, cb_disconnect);
  assert_int_equal(tunnel_engine_start(x.e, 0), 0);
  serve_login(&x, "0123456789abcdef");
  pump(&x);
  assert_int_equal(tunnel_engine_visit(x.e, "hidden", SK, &num), TUNNEL_ESTATE);
  teardown_all(&x);
}

/* Out of memory at each allocation of a visit in turn: an error or a
 * visit that works, never a leak or a crash. */
static void visit_oom(void **state) {
  (void)state;
  for (int mux = 1; mux >= 0; mux--) {
    for (size_t k = 1; k < 200; k++) {
      t x;
      visit_ready(&x, mux);
      x.mem.fail_at = x.mem.calls + k;
      uint32_t num = 0;
      LENIENT = 1;
      int rc = tunnel_engine_visit(x.e, "hidden", SK, &num);
      int failed = x.mem.failed;
      if (rc == 0 && !mux)
        tunnel_engine_conn_ready(x.e, num, 0);
      pump(&x);
      x.mem.fail_at = 0;
      LENIENT = 0;
      if (rc)
        assert_true(rc == TUNNEL_ENOMEM || rc == TUNNEL_ELIMIT);
      teardown_all(&x);
      if (!failed)
        break;
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(stcp_proxy),       cmocka_unit_test(visit_mux),
      cmocka_unit_test(visit_refused),    cmocka_unit_test(visit_non_mux),
      cmocka_unit_test(visit_unanswered), cmocka_unit_test(visit_rules),
      cmocka_unit_test(visit_oom),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
