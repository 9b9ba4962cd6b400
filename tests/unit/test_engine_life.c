/* The client engine's connection over its life (lib/engine_life.c):
 * attempts through the connect callback, reconnection with backoff and
 * jitter, giving up, the run id asked for again, proxies registered again
 * and asked for again after a refusal, the program's stop and the graceful
 * drain; scripted against the in-memory server of test_engine.c, whose
 * harness this file shares. */
#define TEST_ENGINE_HARNESS_ONLY
/* The harness has helpers these tests do not call. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "test_engine.c"

#define RUN1 "0123456789abcdef"
#define RUN2 "fedcba9876543210"
/* Small delays keep the scripts short; the login timeout also bounds an
 * attempt nobody answers. */
#define INITIAL 100u
#define MAXD 1000u
#define LOGIN_TO 2000u
/* RETRYING's status is not part of the contract. */
#define ANY INT32_MIN

/* ------------------------------------------------------------- journal */

/* What the program heard, in order: state callback reports ('S'), events
 * ('E'), requests for a connection ('C') and connections the engine is
 * finished with ('D'; `status` holds the connection's number). */
#define MAXJ 256
typedef struct {
  char kind;
  int32_t event;
  int32_t status;
  uint32_t delay;
  uint64_t at;
  char msg[64];
} jentry;

static jentry J[MAXJ];
static int NJ;
/* Requests for connection 1, and how many of them the script answered. */
static int ASKED, ANSWERED;
/* Set by a test: what the state callback does on a loss, and how the
 * connect callback answers a request for connection 1 from inside. */
static int (*ON_LOSS)(tunnel_engine *e, uint64_t now);
static int SYNC_ANSWER; /* 0: later; 1: ready; negative: failed so */

/* The random callback's state: a fixed LCG, so every run draws the same
 * delays, spread over their windows. */
static uint32_t LCG;

static void journal(char kind, int32_t event, int32_t status, uint32_t delay,
                    const char *msg) {
  assert_true(NJ < MAXJ);
  jentry *j = &J[NJ++];
  memset(j, 0, sizeof *j);
  j->kind = kind;
  j->event = event;
  j->status = status;
  j->delay = delay;
  j->at = T->now;
  copy_str(j->msg, sizeof j->msg, msg);
}

static void life_state(tunnel_engine *e, int status, const char *msg,
                       void *ud) {
  t *x = ud;
  journal('S', 0, status, 0, msg);
  cb_state(e, status, msg, ud);
  if (status < 0 && ON_LOSS)
    assert_int_equal(ON_LOSS(e, x->now), 0);
}

static void life_event(tunnel_engine *e, int32_t event, int32_t status,
                       uint32_t delay_ms, const char *message, void *ud) {
  (void)e, (void)ud;
  assert_non_null(message);
  assert_true(event >= TUNNEL_EVENT_CONNECTING &&
              event <= TUNNEL_EVENT_DRAINING);
  assert_string_not_equal(tunnel_client_event_name(event), "unknown");
  journal('E', event, status, delay_ms, message);
}

static void life_connect(tunnel_engine *e, uint32_t conn, void *ud) {
  t *x = ud;
  journal('C', 0, (int32_t)conn, 0, NULL);
  cb_connect(e, conn, ud);
  if (conn != TUNNEL_ENGINE_CONTROL)
    return;
  ASKED++;
  if (SYNC_ANSWER > 0) {
    ANSWERED = ASKED;
    assert_int_equal(tunnel_engine_conn_ready(e, conn, x->now), 0);
  } else if (SYNC_ANSWER < 0) {
    ANSWERED = ASKED;
    assert_int_equal(tunnel_engine_conn_closed(e, conn, SYNC_ANSWER, x->now),
                     0);
  }
}

static void life_disconnect(tunnel_engine *e, uint32_t conn, void *ud) {
  journal('D', 0, (int32_t)conn, 0, NULL);
  cb_disconnect(e, conn, ud);
}

static int life_random(uint8_t *out, size_t n, void *ud) {
  (void)ud;
  for (size_t i = 0; i < n; i++) {
    LCG = LCG * 1103515245u + 12345u;
    out[i] = (uint8_t)(LCG >> 16);
  }
  return 0;
}

/* Journal queries. */
static int count_kind(char kind, int32_t event) {
  int n = 0;
  for (int i = 0; i < NJ; i++)
    n += J[i].kind == kind && (kind != 'E' || J[i].event == event);
  return n;
}

static int count_events(int32_t event) { return count_kind('E', event); }

static void expect_at(int i, char kind, int32_t event, int32_t status) {
  assert_true(i < NJ);
  assert_int_equal(J[i].kind, kind);
  if (kind == 'E')
    assert_int_equal(J[i].event, event);
  if (status != ANY)
    assert_int_equal(J[i].status, status);
}

/* How often connection `conn` was asked for since journal entry `from`. */
static int requests_since(int from, uint32_t conn) {
  int n = 0;
  for (int i = from; i < NJ; i++)
    n += J[i].kind == 'C' && J[i].status == (int32_t)conn;
  return n;
}

/* -------------------------------------------------------------- script */

/* An engine that connects through the connect callback, reconnection on. */
static void life_setup(t *x, int mux, uint32_t initial, uint32_t max,
                       uint32_t attempts) {
  setup_cfg(x, mux);
  assert_int_equal(
      tunnel_config_set_reconnect(x->cfg, 1, initial, max, attempts), 0);
  assert_int_equal(tunnel_config_set_login_timeout(x->cfg, LOGIN_TO), 0);
  NJ = 0;
  ASKED = ANSWERED = 0;
  ON_LOSS = NULL;
  SYNC_ANSWER = 0;
  LCG = 12345u;
  assert_int_equal(make_engine(x), 0);
  tunnel_engine_set_state_cb(x->e, life_state);
  tunnel_engine_set_conn_cbs(x->e, life_connect, life_disconnect);
  tunnel_engine_set_event_cb(x->e, life_event);
  tunnel_engine_set_random_cb(x->e, life_random);
}

/* A fresh server behind the next connection: what the old one still had
 * for the client went with it. */
static void new_server(t *x) {
  for (int i = 0; i < NQ; i++)
    free(Q[i].b);
  NQ = 0;
  int mux = x->s.mux;
  srv_free(&x->s);
  srv_init(&x->s, mux);
}

static uint64_t tick_at(t *x, uint64_t now) {
  uint64_t next = 0;
  x->now = now;
  assert_int_equal(tunnel_engine_tick(x->e, now, &next), 0);
  return next;
}

/* tunnel_engine_connect at `now`: CONNECTING, then connection 1 asked
 * for, with the attempt's deadline as the next tick. */
static void connect_now(t *x, uint64_t now) {
  int mark = NJ;
  x->now = now;
  assert_int_equal(tunnel_engine_connect(x->e, now), 0);
  assert_int_equal(NJ, mark + 2);
  expect_at(mark, 'E', TUNNEL_EVENT_CONNECTING, 0);
  expect_at(mark + 1, 'C', 0, TUNNEL_ENGINE_CONTROL);
  assert_int_equal(tick_at(x, now), now + LOGIN_TO);
}

/* The entries from `mark` on are a loss and a retry: the state callback,
 * LOST, RETRYING with a delay in [lo, hi], and the tick's deadline at the
 * retry. Returns the delay. */
static uint32_t expect_retry(t *x, int mark, int err, uint32_t lo,
                             uint32_t hi) {
  assert_int_equal(NJ, mark + 3);
  expect_at(mark, 'S', 0, err);
  expect_at(mark + 1, 'E', TUNNEL_EVENT_LOST, err);
  expect_at(mark + 2, 'E', TUNNEL_EVENT_RETRYING, ANY);
  uint32_t d = J[mark + 2].delay;
  assert_in_range(d, lo, hi);
  assert_int_equal(tick_at(x, x->now), x->now + d);
  assert_int_equal(NJ, mark + 3);
  return d;
}

/* The attempt under way fails with `err` at `now`. */
static uint32_t fail_attempt(t *x, uint64_t now, int err, uint32_t lo,
                             uint32_t hi) {
  int mark = NJ;
  assert_int_equal(ASKED, ANSWERED + 1);
  ANSWERED = ASKED;
  x->now = now;
  assert_int_equal(
      tunnel_engine_conn_closed(x->e, TUNNEL_ENGINE_CONTROL, err, now), 0);
  return expect_retry(x, mark, err, lo, hi);
}

/* Nothing happens until the delay is over, then connection 1 is asked for
 * again. */
static void await_retry(t *x, uint64_t from, uint32_t delay) {
  int mark = NJ;
  int asked = ASKED;
  if (delay > 1)
    assert_int_equal(tick_at(x, from + delay - 1), from + delay);
  assert_int_equal(NJ, mark);
  assert_int_equal(ASKED, asked);
  assert_int_equal(tick_at(x, from + delay), from + delay + LOGIN_TO);
  assert_int_equal(NJ, mark + 2);
  expect_at(mark, 'E', TUNNEL_EVENT_CONNECTING, 0);
  expect_at(mark + 1, 'C', 0, TUNNEL_ENGINE_CONTROL);
  assert_int_equal(ASKED, asked + 1);
}

/* Connection 1 is up at `now`: the Login goes out (with `old_run_id`),
 * the server answers with `run_id`; the state callback, then LOGGED_IN. */
static void login_at(t *x, uint64_t now, const char *old_run_id,
                     const char *run_id) {
  assert_int_equal(ASKED, ANSWERED + 1);
  ANSWERED = ASKED;
  new_server(x);
  x->now = now;
  assert_int_equal(tunnel_engine_conn_ready(x->e, TUNNEL_ENGINE_CONTROL, now),
                   0);
  int mark = NJ;
  serve_login(x, run_id);
  assert_string_equal(last_msg(x, TUNNEL__MSG_LOGIN)->run_id, old_run_id);
  assert_int_equal(count_msgs(x, TUNNEL__MSG_LOGIN), 1);
  assert_int_equal(pump(x), 0);
  assert_int_equal(NJ, mark + 2);
  expect_at(mark, 'S', 0, 0);
  assert_string_equal(J[mark].msg, run_id);
  expect_at(mark + 1, 'E', TUNNEL_EVENT_LOGGED_IN, 0);
  assert_string_equal(J[mark + 1].msg, run_id);
}

/* Connection 1 of a running session is lost at `now`. */
static uint32_t lose_session(t *x, uint64_t now, uint32_t lo, uint32_t hi) {
  int mark = NJ;
  x->now = now;
  assert_int_equal(tunnel_engine_conn_closed(x->e, TUNNEL_ENGINE_CONTROL,
                                             TUNNEL_ECONNRESET, now),
                   0);
  return expect_retry(x, mark, TUNNEL_ECONNRESET, lo, hi);
}

/* The latest message of `type` naming proxy `name`; how many there are. */
static seen_msg *msg_named(t *x, uint8_t type, const char *name) {
  for (int i = x->s.nmsgs - 1; i >= 0; i--)
    if (x->s.msgs[i].type == type && strcmp(x->s.msgs[i].name, name) == 0)
      return &x->s.msgs[i];
  return NULL;
}

static int count_named(t *x, uint8_t type, const char *name) {
  int n = 0;
  for (int i = 0; i < x->s.nmsgs; i++)
    n += x->s.msgs[i].type == type && strcmp(x->s.msgs[i].name, name) == 0;
  return n;
}

/* Logged in through tunnel_engine_connect with proxy "web" (remote port
 * 6000) accepted. */
static uint32_t life_logged_in(t *x, int mux) {
  life_setup(x, mux, INITIAL, MAXD, 0);
  uint32_t p;
  assert_int_equal(
      tunnel_engine_add_proxy(x->e, "web", TUNNEL_ENGINE_PROXY_TCP, &p), 0);
  assert_int_equal(tunnel_engine_proxy_set_remote_port(x->e, p, 6000), 0);
  connect_now(x, 0);
  login_at(x, 10, "", RUN1);
  assert_non_null(msg_named(x, TUNNEL__MSG_NEW_PROXY, "web"));
  srv_msg(x, TUNNEL__MSG_NEW_PROXY_RESP, "web", ":6000");
  assert_int_equal(pump(x), 0);
  assert_int_equal(x->nproxy, 1);
  assert_int_equal(x->proxy_status[0], 0);
  return p;
}

/* --------------------------------------------------------------- tests */

/* tunnel_engine_connect asks for connection 1 and says CONNECTING; the
 * connection's readiness starts the login; LOGGED_IN follows the state
 * callback. Connecting again is refused while an attempt or a session is
 * under way, and without a connect or random callback. */
static void connect_and_login(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    assert_int_equal(tunnel_engine_connect(NULL, 0), TUNNEL_EINVAL);
    tunnel_engine_set_conn_cbs(x.e, NULL, life_disconnect);
    assert_int_equal(tunnel_engine_connect(x.e, 0), TUNNEL_ESTATE);
    tunnel_engine_set_conn_cbs(x.e, life_connect, life_disconnect);
    tunnel_engine_set_random_cb(x.e, NULL);
    assert_int_equal(tunnel_engine_connect(x.e, 0), TUNNEL_ESTATE);
    tunnel_engine_set_random_cb(x.e, life_random);
    assert_int_equal(NJ, 0);
    /* Connection 1 that nobody asked for. */
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 0), TUNNEL_ESTATE);
    /* Idle: nothing to wait for. */
    assert_int_equal(tick_at(&x, 0), UINT64_MAX);

    connect_now(&x, 5);
    assert_int_equal(x.nconnects, 1);
    assert_int_equal(x.connects[0], TUNNEL_ENGINE_CONTROL);
    assert_int_equal(tunnel_engine_connect(x.e, 6), TUNNEL_ESTATE);
    /* Nothing goes out before the connection is up. */
    uint32_t conn;
    assert_int_equal(tunnel_engine_next_output(x.e, &conn), 0);
    assert_int_equal(x.nstates, 0);

    /* Up: the login starts; asking again or reporting it twice is
     * refused. */
    ANSWERED = ASKED;
    new_server(&x);
    x.now = 20;
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 20), 0);
    assert_int_equal(tunnel_engine_next_output(x.e, &conn), 1);
    assert_int_equal(conn, TUNNEL_ENGINE_CONTROL);
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 20), TUNNEL_ESTATE);
    assert_int_equal(tunnel_engine_connect(x.e, 20), TUNNEL_ESTATE);
    /* The login's own deadline replaces the attempt's. */
    assert_int_equal(tick_at(&x, 20), 20 + LOGIN_TO);
    int mark = NJ;
    serve_login(&x, RUN1);
    seen_msg *lg = last_msg(&x, TUNNEL__MSG_LOGIN);
    assert_string_equal(lg->run_id, "");
    assert_int_equal(lg->timestamp, NOW_S);
    assert_int_equal(pump(&x), 0);
    assert_int_equal(NJ, mark + 2);
    expect_at(mark, 'S', 0, 0);
    expect_at(mark + 1, 'E', TUNNEL_EVENT_LOGGED_IN, 0);
    assert_string_equal(J[mark + 1].msg, RUN1);
    assert_int_equal(x.nstates, 1);
    assert_int_equal(x.states[0], 0);
    assert_int_equal(tunnel_engine_connect(x.e, 30), TUNNEL_ESTATE);
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 30), TUNNEL_ESTATE);
    /* A session: the next deadline is the heartbeat. */
    assert_int_equal(tick_at(&x, 30), 20 + 30000);
    /* One request in all. */
    assert_int_equal(count_kind('C', 0), 1);
    assert_int_equal(NJ, mark + 2);
    teardown_all(&x);
  }
}

/* Attempts that fail: each loss reports the error, then a delay drawn in
 * [ceiling/2, ceiling] where the ceiling doubles from the initial delay
 * up to the maximum; nothing is asked before the delay is over, and
 * connection 1 is asked for again once it is. */
static void backoff_ceilings(void **state) {
  (void)state;
  static const uint32_t ceiling[] = {100, 200, 400, 800, 1000, 1000, 1000, 1000};
  const int n = (int)(sizeof ceiling / sizeof *ceiling);
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    connect_now(&x, 0);
    uint64_t at = 0;
    int below = 0;
    for (int k = 0; k < n; k++) {
      at += 3; /* refused a little after the request */
      const int errs[] = {TUNNEL_ECONNREFUSED, TUNNEL_ETLS,
                          TUNNEL_EADDRNOTAVAIL};
      uint32_t d = fail_attempt(&x, at, errs[k % 3], ceiling[k] / 2,
                                ceiling[k]);
      assert_int_equal(J[NJ - 1].at, at);
      below += d < ceiling[k];
      await_retry(&x, at, d);
      at += d;
    }
    /* The delays are spread, not all the ceiling. */
    assert_true(below > 0);
    assert_int_equal(x.nconnects, n + 1);
    for (int i = 0; i < x.nconnects; i++)
      assert_int_equal(x.connects[i], TUNNEL_ENGINE_CONTROL);
    /* No session yet: the program was never told to close anything. */
    assert_int_equal(x.ndisconnects, 0);
    assert_int_equal(count_events(TUNNEL_EVENT_GAVE_UP), 0);
    teardown_all(&x);
  }
}

/* A delay that reaches its maximum at once: initial == max. */
static void backoff_flat(void **state) {
  (void)state;
  t x;
  life_setup(&x, 1, 300, 300, 0);
  connect_now(&x, 0);
  uint64_t at = 0;
  for (int k = 0; k < 4; k++) {
    uint32_t d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 150, 300);
    await_retry(&x, at, d);
    at += d;
  }
  teardown_all(&x);
}

/* An attempt nobody answers (a SYN into the void): abandoned at the login
 * timeout, the disconnect callback closing connection 1, then LOST with
 * TUNNEL_ETIMEDOUT and a retry. Late news of it is ignored. A connection
 * up whose login gets no answer is a failure too. */
static void attempt_times_out(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    connect_now(&x, 100);
    assert_int_equal(tick_at(&x, 100 + LOGIN_TO - 1), 100 + LOGIN_TO);
    assert_int_equal(x.ndisconnects, 0);
    int mark = NJ;
    tick_at(&x, 100 + LOGIN_TO);
    ANSWERED = ASKED;
    assert_int_equal(NJ, mark + 4);
    expect_at(mark, 'D', 0, TUNNEL_ENGINE_CONTROL);
    assert_int_equal(x.ndisconnects, 1);
    assert_int_equal(x.disconnects[0], TUNNEL_ENGINE_CONTROL);
    uint32_t d = expect_retry(&x, mark + 1, TUNNEL_ETIMEDOUT, 50, 100);
    uint64_t at = 100 + LOGIN_TO;
    /* The program's socket reports its end later: nothing more. */
    mark = NJ;
    assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNREFUSED,
                                               at + 1),
                     0);
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, at + 1),
                     TUNNEL_ESTATE);
    assert_int_equal(NJ, mark);
    assert_int_equal(tick_at(&x, at + 1), at + d);
    await_retry(&x, at, d);
    at += d;
    /* Up, but the Login is never answered: the login timeout. */
    ANSWERED = ASKED;
    new_server(&x);
    x.now = at;
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, at), 0);
    pump(&x);
    assert_non_null(last_msg(&x, TUNNEL__MSG_LOGIN));
    assert_int_equal(tick_at(&x, at + LOGIN_TO - 1), at + LOGIN_TO);
    mark = NJ;
    tick_at(&x, at + LOGIN_TO);
    d = expect_retry(&x, mark, TUNNEL_ETIMEDOUT, 100, 200);
    at += LOGIN_TO;
    await_retry(&x, at, d);
    teardown_all(&x);
  }
}

/* A session that stayed up 10 s starts the delays over; a shorter one
 * lets them keep growing. The loss found by a tick (the server's silence)
 * has its retry as that tick's deadline. */
static void stable_session_resets(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    connect_now(&x, 0);
    uint64_t at = 0;
    uint32_t d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 50, 100);
    await_retry(&x, at, d);
    at += d;
    d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 100, 200);
    await_retry(&x, at, d);
    at += d;
    login_at(&x, at, "", RUN1);
    /* Up 9,999 ms: short; the ceiling goes on to 400. */
    at += 9999;
    d = lose_session(&x, at, 200, 400);
    await_retry(&x, at, d);
    at += d;
    login_at(&x, at, RUN1, RUN1);
    /* Up exactly 10 s: stable; the first delay again. */
    at += 10000;
    d = lose_session(&x, at, 50, 100);
    await_retry(&x, at, d);
    at += d;
    /* And doubling from there. */
    d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 100, 200);
    await_retry(&x, at, d);
    at += d;
    /* A long session ended by the server's silence (heartbeat timeout,
     * 90 s by default), found by a tick. */
    login_at(&x, at, RUN1, RUN1);
    uint64_t up = at;
    int mark = NJ;
    uint64_t next = tick_at(&x, up + 90000);
    d = J[NJ - 1].delay;
    assert_int_equal(NJ, mark + 3);
    expect_at(mark, 'S', 0, TUNNEL_ETIMEDOUT);
    expect_at(mark + 1, 'E', TUNNEL_EVENT_LOST, TUNNEL_ETIMEDOUT);
    expect_at(mark + 2, 'E', TUNNEL_EVENT_RETRYING, ANY);
    assert_in_range(d, 50, 100);
    assert_int_equal(next, up + 90000 + d);
    await_retry(&x, up + 90000, d);
    teardown_all(&x);
  }
}

/* A refused login and a server certificate that fails verification give
 * up at once (GAVE_UP with the error), and so does a canceled attempt;
 * nothing is asked for again however far time goes. A refused heartbeat
 * in a session too. The program may still connect again. */
static void final_errors_give_up(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    connect_now(&x, 0);
    ANSWERED = ASKED;
    new_server(&x);
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 0), 0);
    pump(&x);
    int mark = NJ;
    srv_msg(&x, TUNNEL__MSG_LOGIN_RESP, NULL, "token mismatch");
    assert_int_equal(pump(&x), TUNNEL_EAUTH);
    assert_int_equal(NJ, mark + 3);
    expect_at(mark, 'S', 0, TUNNEL_EAUTH);
    assert_string_equal(J[mark].msg, "token mismatch");
    expect_at(mark + 1, 'E', TUNNEL_EVENT_LOST, TUNNEL_EAUTH);
    assert_string_equal(J[mark + 1].msg, "token mismatch");
    expect_at(mark + 2, 'E', TUNNEL_EVENT_GAVE_UP, TUNNEL_EAUTH);
    assert_int_equal(tick_at(&x, 1), UINT64_MAX);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    assert_int_equal(tick_at(&x, UINT64_MAX / 2), UINT64_MAX);
    assert_int_equal(NJ, mark + 3);
    assert_int_equal(x.nconnects, 1);

    /* Attempts failing on the certificate, or canceled. */
    const int final[] = {TUNNEL_ECERTUNTRUSTED, TUNNEL_ECERTNAME,
                         TUNNEL_ECERTPIN, TUNNEL_ECANCELED};
    uint64_t at = 100;
    for (size_t i = 0; i < sizeof final / sizeof *final; i++, at += 100) {
      connect_now(&x, at);
      ANSWERED = ASKED;
      mark = NJ;
      x.now = at + 1;
      assert_int_equal(tunnel_engine_conn_closed(x.e, 1, final[i], at + 1),
                       0);
      assert_int_equal(NJ, mark + 3);
      expect_at(mark, 'S', 0, final[i]);
      expect_at(mark + 1, 'E', TUNNEL_EVENT_LOST, final[i]);
      expect_at(mark + 2, 'E', TUNNEL_EVENT_GAVE_UP, final[i]);
      assert_int_equal(tick_at(&x, at + 50000), UINT64_MAX);
      assert_int_equal(NJ, mark + 3);
    }
    assert_int_equal(count_events(TUNNEL_EVENT_RETRYING), 0);

    /* Logged in, then the server refuses a heartbeat. */
    connect_now(&x, at);
    login_at(&x, at, "", RUN1);
    mark = NJ;
    srv_msg(&x, TUNNEL__MSG_PONG, "token expired", NULL);
    assert_int_equal(pump(&x), TUNNEL_EAUTH);
    assert_int_equal(NJ, mark + 3);
    expect_at(mark, 'S', 0, TUNNEL_EAUTH);
    expect_at(mark + 1, 'E', TUNNEL_EVENT_LOST, TUNNEL_EAUTH);
    expect_at(mark + 2, 'E', TUNNEL_EVENT_GAVE_UP, TUNNEL_EAUTH);
    assert_int_equal(tick_at(&x, at + 86400000), UINT64_MAX);
    assert_int_equal(count_events(TUNNEL_EVENT_RETRYING), 0);
    assert_int_equal(x.nconnects, 6);
    teardown_all(&x);
  }
}

/* max_attempts N: N attempts in a row that do not log in end it, with the
 * last error; a login in between starts the count over. Every kind of
 * failure counts: refused, abandoned, login unanswered. */
static void attempts_run_out(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 3);
    connect_now(&x, 0);
    uint64_t at = 0;
    uint32_t d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 50, 100);
    await_retry(&x, at, d);
    at += d;
    d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 100, 200);
    await_retry(&x, at, d);
    at += d;
    /* The third attempt logs in: the count starts over. */
    login_at(&x, at, "", RUN1);
    at += 50;
    d = lose_session(&x, at, 200, 400);
    await_retry(&x, at, d);
    at += d;
    /* 1: abandoned at its deadline. */
    int mark = NJ;
    tick_at(&x, at + LOGIN_TO);
    ANSWERED = ASKED;
    expect_at(mark, 'D', 0, TUNNEL_ENGINE_CONTROL);
    at += LOGIN_TO;
    d = expect_retry(&x, mark + 1, TUNNEL_ETIMEDOUT, 400, 800);
    await_retry(&x, at, d);
    at += d;
    /* 2: up, the Login unanswered. */
    ANSWERED = ASKED;
    new_server(&x);
    x.now = at;
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, at), 0);
    pump(&x);
    mark = NJ;
    tick_at(&x, at + LOGIN_TO);
    at += LOGIN_TO;
    d = expect_retry(&x, mark, TUNNEL_ETIMEDOUT, 500, 1000);
    await_retry(&x, at, d);
    at += d;
    /* 3: refused. The end, with that error. */
    mark = NJ;
    ANSWERED = ASKED;
    x.now = at;
    assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_EADDRNOTAVAIL,
                                               at),
                     0);
    assert_int_equal(NJ, mark + 3);
    expect_at(mark, 'S', 0, TUNNEL_EADDRNOTAVAIL);
    expect_at(mark + 1, 'E', TUNNEL_EVENT_LOST, TUNNEL_EADDRNOTAVAIL);
    expect_at(mark + 2, 'E', TUNNEL_EVENT_GAVE_UP, TUNNEL_EADDRNOTAVAIL);
    assert_int_equal(tick_at(&x, at + 86400000), UINT64_MAX);
    assert_int_equal(NJ, mark + 3);
    assert_int_equal(count_events(TUNNEL_EVENT_GAVE_UP), 1);

    /* The program's tunnel_engine_connect gives it N more. */
    connect_now(&x, at + 10);
    at += 10;
    for (uint32_t k = 0, ceiling = INITIAL; k < 2; k++, ceiling *= 2) {
      d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, ceiling / 2, ceiling);
      await_retry(&x, at, d);
      at += d;
    }
    mark = NJ;
    ANSWERED = ASKED;
    assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNRESET, at),
                     0);
    assert_int_equal(NJ, mark + 3);
    expect_at(mark + 2, 'E', TUNNEL_EVENT_GAVE_UP, TUNNEL_ECONNRESET);
    assert_int_equal(count_events(TUNNEL_EVENT_GAVE_UP), 2);
    teardown_all(&x);
  }
}

/* Reconnection off: the engine still connects when told to, and a lost
 * session is given up at once. */
static void reconnect_off(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    tunnel_engine_free(x.e);
    x.e = NULL;
    assert_int_equal(tunnel_config_set_reconnect(x.cfg, 0, 0, 0, 0), 0);
    assert_int_equal(make_engine(&x), 0);
    tunnel_engine_set_state_cb(x.e, life_state);
    tunnel_engine_set_conn_cbs(x.e, life_connect, life_disconnect);
    tunnel_engine_set_event_cb(x.e, life_event);
    connect_now(&x, 0);
    login_at(&x, 5, "", RUN1);
    int mark = NJ;
    x.now = 20000;
    assert_int_equal(
        tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNRESET, 20000), 0);
    assert_int_equal(NJ, mark + 3);
    expect_at(mark, 'S', 0, TUNNEL_ECONNRESET);
    expect_at(mark + 1, 'E', TUNNEL_EVENT_LOST, TUNNEL_ECONNRESET);
    expect_at(mark + 2, 'E', TUNNEL_EVENT_GAVE_UP, TUNNEL_ECONNRESET);
    assert_int_equal(tick_at(&x, 99999), UINT64_MAX);
    assert_int_equal(x.nconnects, 1);
    teardown_all(&x);
  }
}

/* Each Login after the first asks for the run id of the session before,
 * so that a server still holding it hands it over. */
static void run_id_reused(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    connect_now(&x, 0);
    login_at(&x, 1, "", RUN1);
    uint32_t d = lose_session(&x, 20000, 50, 100);
    await_retry(&x, 20000, d);
    /* The first reconnection fails: the run id is kept. */
    uint64_t at = 20000 + d;
    d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 100, 200);
    await_retry(&x, at, d);
    at += d;
    /* The server hands out another one this time. */
    login_at(&x, at, RUN1, RUN2);
    at += 20000;
    d = lose_session(&x, at, 50, 100);
    await_retry(&x, at, d);
    at += d;
    login_at(&x, at, RUN2, RUN2);
    /* Work connections carry the current one. */
    srv_msg(&x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
    pump(&x);
    if (!mux) {
      assert_int_equal(x.connects[x.nconnects - 1], 2);
      assert_int_equal(tunnel_engine_conn_ready(x.e, 2, at), 0);
      pump(&x);
    }
    sstream *st = &x.s.st[1];
    tunnel__msg_reader r;
    tunnel__msg m;
    size_t used;
    tunnel__msg_reader_init(&r, &x.s.mem, 10240);
    assert_int_equal(
        tunnel__msg_reader_feed(&r, st->buf, st->len, &used, &m), 1);
    assert_int_equal(m.type, TUNNEL__MSG_NEW_WORK_CONN);
    assert_string_equal(m.run_id, RUN2);
    tunnel__msg_clear(&x.s.mem, &m);
    tunnel__msg_reader_free(&r);
    teardown_all(&x);
  }
}

/* Proxies register again after a reconnection with the same remote port.
 * One the server had accepted and now refuses is reported with
 * TUNNEL_EAGAIN and asked for again after a growing delay until accepted;
 * one refused the first time is TUNNEL_EREFUSED, final for the session. */
static void proxies_after_reconnection(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    uint32_t web, db;
    assert_int_equal(
        tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, &web), 0);
    assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, web, 6000), 0);
    assert_int_equal(
        tunnel_engine_add_proxy(x.e, "db", TUNNEL_ENGINE_PROXY_TCP, &db), 0);
    assert_int_equal(tunnel_engine_proxy_set_remote_port(x.e, db, 6001), 0);
    connect_now(&x, 0);
    login_at(&x, 1, "", RUN1);
    assert_int_equal(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "web")->remote_port,
                     6000);
    assert_int_equal(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "db")->remote_port,
                     6001);
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", ":6000");
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "db", "port 6001 already used");
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.nproxy, 2);
    assert_int_equal(x.proxy_ids[0], web);
    assert_int_equal(x.proxy_status[0], 0);
    assert_string_equal(x.proxy_msg[0], ":6000");
    assert_int_equal(x.proxy_ids[1], db);
    assert_int_equal(x.proxy_status[1], TUNNEL_EREFUSED);
    assert_string_equal(x.proxy_msg[1], "port 6001 already used");
    /* Refused the first time: never asked again in this session. */
    assert_int_equal(tick_at(&x, 2), 1 + 30000);
    for (uint64_t at = 100; at < 20000; at += 1900) {
      tick_at(&x, at);
      pump(&x);
    }
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "db"), 1);

    /* Lost; the next session registers both again. */
    uint32_t d = lose_session(&x, 20000, 50, 100);
    await_retry(&x, 20000, d);
    uint64_t at = 20000 + d, up = at;
    login_at(&x, at, RUN1, RUN1);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), 1);
    assert_int_equal(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "web")->remote_port,
                     6000);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "db"), 1);
    /* The old session still holds web's port. */
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", "port 6000 already used");
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "db", "port 6001 already used");
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.nproxy, 4);
    assert_int_equal(x.proxy_ids[2], web);
    assert_int_equal(x.proxy_status[2], TUNNEL_EAGAIN);
    assert_string_equal(x.proxy_msg[2], "port 6000 already used");
    assert_int_equal(x.proxy_ids[3], db);
    assert_int_equal(x.proxy_status[3], TUNNEL_EREFUSED);
    /* Asked again after a delay in [initial/2, initial], then a longer
     * one. */
    const uint32_t lo[] = {50, 100}, hi[] = {100, 200};
    for (int k = 0; k < 2; k++) {
      uint64_t due = tick_at(&x, at);
      assert_in_range(due, at + lo[k], at + hi[k]);
      pump(&x);
      assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), k + 1);
      assert_int_equal(tick_at(&x, due - 1), due);
      pump(&x);
      assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), k + 1);
      tick_at(&x, due);
      pump(&x);
      assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), k + 2);
      assert_int_equal(
          msg_named(&x, TUNNEL__MSG_NEW_PROXY, "web")->remote_port, 6000);
      at = due;
      if (k == 0) {
        srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", "port still used");
        assert_int_equal(pump(&x), 0);
        assert_int_equal(x.proxy_status[x.nproxy - 1], TUNNEL_EAGAIN);
      }
    }
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", ":6000");
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.nproxy, 6);
    assert_int_equal(x.proxy_ids[5], web);
    assert_int_equal(x.proxy_status[5], 0);
    assert_string_equal(x.proxy_msg[5], ":6000");
    /* Accepted: nothing more to ask; db was never asked again. */
    assert_int_equal(tick_at(&x, at + 1), up + 30000);
    pump(&x);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), 3);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "db"), 1);

    /* A session lost while web waits for its next request: the session
     * after asks for it with the login, not at the old time. */
    at += 10;
    lose_session(&x, at, 1, MAXD);
    connect_now(&x, at);
    login_at(&x, at, RUN1, RUN1);
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", "port 6000 already used");
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.proxy_status[x.nproxy - 1], TUNNEL_EAGAIN);
    assert_true(tick_at(&x, at) > at);
    lose_session(&x, at, 1, MAXD);
    connect_now(&x, at);
    login_at(&x, at, RUN1, RUN1);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), 1);
    teardown_all(&x);
  }
}

/* A port the server chose is asked for again after a reconnection, so the
 * public address stays; refused three times, the server chooses anew. */
static void chosen_port_asked_again(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    uint32_t p;
    assert_int_equal(
        tunnel_engine_add_proxy(x.e, "auto", TUNNEL_ENGINE_PROXY_TCP, &p), 0);
    connect_now(&x, 0);
    login_at(&x, 1, "", RUN1);
    assert_int_equal(
        msg_named(&x, TUNNEL__MSG_NEW_PROXY, "auto")->remote_port, 0);
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "auto", ":7001");
    assert_int_equal(pump(&x), 0);
    assert_string_equal(x.proxy_msg[0], ":7001");
    uint32_t d = lose_session(&x, 100, 50, 100);
    await_retry(&x, 100, d);
    uint64_t at = 100 + d;
    login_at(&x, at, RUN1, RUN1);
    /* 7001 at the login and at two retries, then any port. */
    const int64_t want[] = {7001, 7001, 7001, 0};
    for (int k = 0; k < 4; k++) {
      assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "auto"), k + 1);
      assert_int_equal(
          msg_named(&x, TUNNEL__MSG_NEW_PROXY, "auto")->remote_port, want[k]);
      if (k == 3)
        break;
      srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "auto", "port 7001 taken");
      assert_int_equal(pump(&x), 0);
      assert_int_equal(x.proxy_status[x.nproxy - 1], TUNNEL_EAGAIN);
      at = tick_at(&x, at);
      tick_at(&x, at);
      pump(&x);
    }
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "auto", ":7002");
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.proxy_status[x.nproxy - 1], 0);
    assert_string_equal(x.proxy_msg[x.nproxy - 1], ":7002");
    /* The next reconnection asks for the new one (a short session: the
     * delay grows). */
    d = lose_session(&x, at + 10, 100, 200);
    await_retry(&x, at + 10, d);
    login_at(&x, at + 10 + d, RUN1, RUN1);
    assert_int_equal(
        msg_named(&x, TUNNEL__MSG_NEW_PROXY, "auto")->remote_port, 7002);
    teardown_all(&x);
  }
}

/* tunnel_engine_connect during the delay makes the attempt at once and
 * starts the delays over; tunnel_engine_start (the program connected by
 * itself) supersedes the delay too. */
static void connect_or_start_during_wait(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    connect_now(&x, 0);
    uint32_t d = fail_attempt(&x, 0, TUNNEL_ECONNREFUSED, 50, 100);
    await_retry(&x, 0, d);
    uint64_t at = d;
    d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 100, 200);
    /* Waiting for at + d: the program connects now. */
    connect_now(&x, at + 1);
    int mark = NJ;
    assert_int_equal(tick_at(&x, at + d), at + 1 + LOGIN_TO);
    assert_int_equal(NJ, mark);
    /* The delays start over. */
    at += d;
    d = fail_attempt(&x, at, TUNNEL_ECONNREFUSED, 50, 100);
    /* Waiting again: this time the program connects by itself and
     * starts the session. */
    new_server(&x);
    x.now = at + 2;
    assert_int_equal(tunnel_engine_start(x.e, at + 2), 0);
    assert_int_equal(tunnel_engine_start(x.e, at + 2), TUNNEL_ESTATE);
    assert_int_equal(tunnel_engine_connect(x.e, at + 2), TUNNEL_ESTATE);
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, at + 2),
                     TUNNEL_ESTATE);
    mark = NJ;
    assert_int_equal(tick_at(&x, at + d), at + 2 + LOGIN_TO);
    assert_int_equal(NJ, mark);
    serve_login(&x, RUN1);
    assert_int_equal(pump(&x), 0);
    assert_int_equal(NJ, mark + 2);
    expect_at(mark, 'S', 0, 0);
    expect_at(mark + 1, 'E', TUNNEL_EVENT_LOGGED_IN, 0);
    assert_int_equal(tick_at(&x, at + 5000), at + d + 30000);
    assert_int_equal(requests_since(0, TUNNEL_ENGINE_CONTROL), 3);
    teardown_all(&x);
  }
}

/* tunnel_engine_stop during the delay (nothing asked any more), during an
 * attempt (the disconnect callback closes connection 1) and during a
 * session (the state callback says TUNNEL_ECANCELED, streams end, no
 * reconnection). The program may connect again afterwards. */
static void stop_everywhere(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    assert_int_equal(tunnel_engine_stop(NULL, 0), TUNNEL_EINVAL);
    /* Idle: nothing to stop. */
    assert_int_equal(tunnel_engine_stop(x.e, 0), 0);
    assert_int_equal(NJ, 0);
    /* During the delay. */
    connect_now(&x, 0);
    uint32_t d = fail_attempt(&x, 0, TUNNEL_ECONNREFUSED, 50, 100);
    int mark = NJ;
    x.now = 10;
    assert_int_equal(tunnel_engine_stop(x.e, 10), 0);
    assert_int_equal(NJ, mark);
    assert_int_equal(tick_at(&x, d), UINT64_MAX);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    assert_int_equal(NJ, mark);
    assert_int_equal(x.ndisconnects, 0);

    /* During an attempt: connection 1 is closed by the program; its late
     * news changes nothing. */
    connect_now(&x, 100);
    mark = NJ;
    x.now = 150;
    assert_int_equal(tunnel_engine_stop(x.e, 150), 0);
    assert_int_equal(NJ, mark + 1);
    expect_at(mark, 'D', 0, TUNNEL_ENGINE_CONTROL);
    ANSWERED = ASKED;
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 160), TUNNEL_ESTATE);
    assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNREFUSED,
                                               160),
                     0);
    assert_int_equal(tick_at(&x, 100 + LOGIN_TO), UINT64_MAX);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    assert_int_equal(NJ, mark + 1);
    assert_int_equal(x.nstates, 1); /* the first failure only */

    /* During the login (connection up, no answer yet). */
    connect_now(&x, 200);
    ANSWERED = ASKED;
    new_server(&x);
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 200), 0);
    pump(&x);
    mark = NJ;
    x.now = 210;
    assert_int_equal(tunnel_engine_stop(x.e, 210), 0);
    assert_int_equal(NJ, mark + 1);
    expect_at(mark, 'S', 0, TUNNEL_ECANCELED);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    uint32_t conn;
    assert_int_equal(tunnel_engine_next_output(x.e, &conn), 0);

    /* During a session with a proxy and an open stream. */
    uint32_t p;
    assert_int_equal(
        tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, &p), 0);
    connect_now(&x, 300);
    login_at(&x, 300, "", RUN1);
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", ":6000");
    pump(&x);
    uint32_t id = work_channel(&x);
    start_work_conn(&x, id, "web", "hi");
    assert_int_equal(x.nopened, 1);
    assert_int_equal(tunnel_engine_stream_count(x.e), 1);
    mark = NJ;
    int ended = x.nended;
    x.now = 400;
    assert_int_equal(tunnel_engine_stop(x.e, 400), 0);
    assert_int_equal(x.nended, ended + 1);
    assert_int_equal(x.ended[ended], x.opened[0]);
    assert_int_equal(x.end_status[ended], TUNNEL_ECLOSED);
    assert_int_equal(tunnel_engine_stream_count(x.e), 0);
    assert_true(NJ > mark);
    expect_at(mark, 'S', 0, TUNNEL_ECANCELED);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    assert_int_equal(count_events(TUNNEL_EVENT_RETRYING), 1);
    assert_int_equal(count_events(TUNNEL_EVENT_GAVE_UP), 0);
    for (int i = mark; i < NJ; i++)
      assert_true(J[i].kind != 'C');
    /* Stopping again is harmless. */
    assert_int_equal(tunnel_engine_stop(x.e, 500), 0);

    /* Connecting again: a new attempt, the proxy registers again. */
    connect_now(&x, 1000);
    login_at(&x, 1000, RUN1, RUN1);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), 1);
    teardown_all(&x);
  }
}

/* A stop from inside the state callback at a loss: no retry. */
static int stop_in_cb(tunnel_engine *e, uint64_t now) {
  return tunnel_engine_stop(e, now);
}

/* A connect from inside the state callback at a loss: asked at once. */
static int connect_in_cb(tunnel_engine *e, uint64_t now) {
  ON_LOSS = NULL;
  return tunnel_engine_connect(e, now);
}

/* Callbacks may call the engine: the connect callback answers at once
 * (ready, or failed), the state callback stops or connects at a loss. */
static void answers_from_callbacks(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    /* Refused from inside: LOST and RETRYING before connect returns. */
    SYNC_ANSWER = TUNNEL_ECONNREFUSED;
    x.now = 0;
    assert_int_equal(tunnel_engine_connect(x.e, 0), 0);
    assert_int_equal(NJ, 5);
    expect_at(0, 'E', TUNNEL_EVENT_CONNECTING, 0);
    expect_at(1, 'C', 0, TUNNEL_ENGINE_CONTROL);
    uint32_t d = expect_retry(&x, 2, TUNNEL_ECONNREFUSED, 50, 100);
    /* Again from the tick that retries: its deadline is the next retry. */
    int mark = NJ;
    uint64_t next = tick_at(&x, d);
    assert_int_equal(NJ, mark + 5);
    uint32_t d2 = J[NJ - 1].delay;
    expect_at(mark + 4, 'E', TUNNEL_EVENT_RETRYING, ANY);
    assert_in_range(d2, 100, 200);
    assert_int_equal(next, d + d2);
    /* Ready from inside: the login goes out. */
    SYNC_ANSWER = 1;
    new_server(&x);
    uint64_t at = d + d2;
    mark = NJ;
    assert_int_equal(tick_at(&x, at), at + LOGIN_TO);
    assert_int_equal(NJ, mark + 2);
    SYNC_ANSWER = 0;
    serve_login(&x, RUN1);
    assert_int_equal(pump(&x), 0);
    assert_int_equal(count_events(TUNNEL_EVENT_LOGGED_IN), 1);

    /* Stopped from the state callback at the loss: no retry, no give-up. */
    ON_LOSS = stop_in_cb;
    mark = NJ;
    x.now = at + 10;
    assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNRESET,
                                               at + 10),
                     0);
    expect_at(mark, 'S', 0, TUNNEL_ECONNRESET);
    for (int i = mark + 1; i < NJ; i++)
      assert_true(J[i].kind == 'E' && J[i].event == TUNNEL_EVENT_LOST);
    assert_int_equal(tick_at(&x, at + 99999), UINT64_MAX);
    assert_int_equal(count_events(TUNNEL_EVENT_GAVE_UP), 0);

    /* Connected again from the state callback at the loss: asked at once,
     * no delay. */
    ON_LOSS = connect_in_cb;
    connect_now(&x, at + 100000);
    mark = NJ;
    int retrying = count_events(TUNNEL_EVENT_RETRYING);
    ANSWERED = ASKED;
    x.now = at + 100001;
    assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNREFUSED,
                                               at + 100001),
                     0);
    assert_int_equal(requests_since(mark, TUNNEL_ENGINE_CONTROL), 1);
    assert_int_equal(count_events(TUNNEL_EVENT_RETRYING), retrying);
    assert_int_equal(count_events(TUNNEL_EVENT_GAVE_UP), 0);
    assert_int_equal(tick_at(&x, at + 100001), at + 100001 + LOGIN_TO);
    teardown_all(&x);
  }
}

/* The graceful drain: CloseProxy for the proxy, DRAINING, the waiting work
 * channel dropped, new work refused (a StartWorkConn that raced the drain
 * included), the open stream going on until the program closes it, and no
 * reconnection after the session ends. */
static void drain_session(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_logged_in(&x, mux);
    uint32_t id1 = work_channel(&x);
    start_work_conn(&x, id1, "web", "hi");
    assert_int_equal(x.nopened, 1);
    uint32_t stream = x.opened[0];
    uint32_t id2 = work_channel(&x);
    assert_int_equal(tunnel_engine_stream_count(x.e), 1);
    int nst = x.s.nst, nconnects = x.nconnects, ndis = x.ndisconnects;
    int mark = NJ;
    x.now = 500;
    assert_int_equal(tunnel_engine_drain(x.e, 500), 0);
    assert_int_equal(count_events(TUNNEL_EVENT_DRAINING), 1);
    expect_at(mark, 'E', TUNNEL_EVENT_DRAINING, 0);
    if (!mux) {
      /* The waiting connection goes back to the program. */
      assert_int_equal(x.ndisconnects, ndis + 1);
      assert_int_equal(x.disconnects[ndis], id2);
    }
    /* The server starts a visitor on the waiting channel before it hears
     * of the drain. */
    start_work_conn(&x, id2, "web", "late");
    assert_int_equal(x.nopened, 1);
    assert_int_equal(msg_named(&x, TUNNEL__MSG_CLOSE_PROXY, "web")->type,
                     TUNNEL__MSG_CLOSE_PROXY);
    assert_int_equal(count_msgs(&x, TUNNEL__MSG_CLOSE_PROXY), 1);
    if (mux)
      assert_true(sfind(&x.s, id2)->rst);
    /* Asked for more work: ignored. */
    srv_msg(&x, TUNNEL__MSG_REQ_WORK_CONN, NULL, NULL);
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.s.nst, nst);
    assert_int_equal(x.nconnects, nconnects);
    assert_int_equal(x.nopened, 1);
    /* Draining again changes nothing. */
    assert_int_equal(tunnel_engine_drain(x.e, 510), 0);
    assert_int_equal(count_events(TUNNEL_EVENT_DRAINING), 1);
    pump(&x);
    assert_int_equal(count_msgs(&x, TUNNEL__MSG_CLOSE_PROXY), 1);
    /* The open stream goes on both ways. */
    size_t taken;
    assert_int_equal(tunnel_engine_stream_write(x.e, stream,
                                                (const uint8_t *)"yo", 2,
                                                &taken),
                     0);
    assert_int_equal(taken, 2);
    assert_int_equal(pump(&x), 0);
    sstream *st = sfind(&x.s, id1);
    assert_true(st->len >= 2);
    assert_memory_equal(st->buf + st->len - 2, "yo", 2);
    x.data_len = 0;
    srv_raw(&x, id1, "more", 4);
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.data_len, 4);
    assert_memory_equal(x.data, "more", 4);
    assert_int_equal(x.data_stream, stream);
    assert_int_equal(tunnel_engine_stream_count(x.e), 1);
    assert_int_equal(tunnel_engine_stream_consumed(x.e, stream, 4), 0);
    assert_int_equal(tunnel_engine_stream_close(x.e, stream), 0);
    assert_int_equal(tunnel_engine_stream_count(x.e), 0);
    pump(&x);
    /* The session ends: not reconnected. */
    mark = NJ;
    x.now = 600;
    assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNRESET,
                                               600),
                     0);
    expect_at(mark, 'S', 0, TUNNEL_ECONNRESET);
    assert_int_equal(count_events(TUNNEL_EVENT_RETRYING), 0);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    assert_int_equal(requests_since(mark, TUNNEL_ENGINE_CONTROL), 0);

    /* Connecting again starts afresh: the proxy registers, work is
     * obeyed. */
    connect_now(&x, 700);
    login_at(&x, 700, RUN1, RUN1);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), 1);
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", ":6000");
    assert_int_equal(pump(&x), 0);
    work_channel(&x);
    teardown_all(&x);
  }
}

/* A drain while a proxy waits to be asked for again (refused after a
 * reconnection): the proxy is withdrawn, so the tick's deadline must not
 * stay at its old request time (the program would spin), and it is never
 * sent. */
static void drain_with_request_pending(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_logged_in(&x, mux);
    uint32_t d = lose_session(&x, 20000, 50, 100);
    await_retry(&x, 20000, d);
    uint64_t at = 20000 + d;
    login_at(&x, at, RUN1, RUN1);
    srv_msg(&x, TUNNEL__MSG_NEW_PROXY_RESP, "web", "port 6000 already used");
    assert_int_equal(pump(&x), 0);
    assert_int_equal(x.proxy_status[x.nproxy - 1], TUNNEL_EAGAIN);
    uint64_t due = tick_at(&x, at);
    assert_true(due > at && due < at + 1000);
    x.now = at + 1;
    assert_int_equal(tunnel_engine_drain(x.e, at + 1), 0);
    pump(&x);
    assert_true(tick_at(&x, due) > due);
    assert_true(tick_at(&x, due + 5) > due + 5);
    pump(&x);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), 1);
    teardown_all(&x);
  }
}

/* tunnel_engine_start after a drain and a stop is a fresh start: the
 * proxies the drain withdrew register again, as with
 * tunnel_engine_connect. */
static void start_after_drain(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_logged_in(&x, mux);
    x.now = 500;
    assert_int_equal(tunnel_engine_drain(x.e, 500), 0);
    pump(&x);
    assert_int_equal(count_msgs(&x, TUNNEL__MSG_CLOSE_PROXY), 1);
    assert_int_equal(tunnel_engine_stop(x.e, 510), 0);
    new_server(&x);
    x.now = 520;
    assert_int_equal(tunnel_engine_start(x.e, 520), 0);
    serve_login(&x, RUN1);
    assert_int_equal(pump(&x), 0);
    assert_int_equal(count_named(&x, TUNNEL__MSG_NEW_PROXY, "web"), 1);
    teardown_all(&x);
  }
}

/* A drain without a session is a stop: idle, waiting, connecting, logging
 * in. */
static void drain_without_session(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    t x;
    life_setup(&x, mux, INITIAL, MAXD, 0);
    assert_int_equal(tunnel_engine_drain(NULL, 0), TUNNEL_EINVAL);
    assert_int_equal(tunnel_engine_drain(x.e, 0), 0);
    assert_int_equal(NJ, 0);
    /* Waiting. */
    connect_now(&x, 0);
    fail_attempt(&x, 0, TUNNEL_ECONNREFUSED, 50, 100);
    int mark = NJ;
    assert_int_equal(tunnel_engine_drain(x.e, 1), 0);
    assert_int_equal(NJ, mark);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    assert_int_equal(NJ, mark);
    /* Connecting. */
    connect_now(&x, 100);
    mark = NJ;
    assert_int_equal(tunnel_engine_drain(x.e, 101), 0);
    ANSWERED = ASKED;
    assert_int_equal(NJ, mark + 1);
    expect_at(mark, 'D', 0, TUNNEL_ENGINE_CONTROL);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    /* Logging in. */
    connect_now(&x, 200);
    ANSWERED = ASKED;
    new_server(&x);
    assert_int_equal(tunnel_engine_conn_ready(x.e, 1, 200), 0);
    pump(&x);
    mark = NJ;
    assert_int_equal(tunnel_engine_drain(x.e, 201), 0);
    assert_int_equal(NJ, mark + 1);
    expect_at(mark, 'S', 0, TUNNEL_ECANCELED);
    assert_int_equal(tick_at(&x, 86400000), UINT64_MAX);
    assert_int_equal(count_events(TUNNEL_EVENT_DRAINING), 0);
    assert_int_equal(count_events(TUNNEL_EVENT_RETRYING), 1);
    teardown_all(&x);
  }
}

/* ------------------------------------------------------- out of memory */

/* Plays the program until the engine has logged in: answers each request
 * for connection 1 (ready, or closed with the error readiness returned),
 * serves logins (checking the run id asked for; NULL: "" or RUN1), and
 * waits out the deadlines. 1 once logged in, 0 when it gave up or the
 * rounds ran out. */
static int drive_to_login(t *x, const char *old_run_id) {
  int logged = count_events(TUNNEL_EVENT_LOGGED_IN);
  for (int round = 0; round < 64; round++) {
    if (ASKED > ANSWERED) {
      ANSWERED = ASKED;
      new_server(x);
      int rc = tunnel_engine_conn_ready(x->e, 1, x->now);
      if (rc) {
        assert_int_equal(rc, TUNNEL_ENOMEM);
        tunnel_engine_conn_closed(x->e, 1, rc, x->now);
        continue;
      }
      pump(x);
      seen_msg *lg = last_msg(x, TUNNEL__MSG_LOGIN);
      if (lg) {
        /* A session that failed after the server's answer still names
         * the run id it was given. */
        if (old_run_id)
          assert_string_equal(lg->run_id, old_run_id);
        else
          assert_true(!*lg->run_id || strcmp(lg->run_id, RUN1) == 0);
        serve_login(x, RUN1);
        pump(x);
      }
    }
    if (count_events(TUNNEL_EVENT_LOGGED_IN) > logged)
      return 1;
    uint64_t next = tick_at(x, x->now);
    if (ASKED > ANSWERED)
      continue;
    if (next == UINT64_MAX)
      return 0;
    tick_at(x, next);
  }
  return 0;
}

/* connect, a failure, the retry, the login, a loss, the retry and the
 * second login, with the Nth allocation failing. */
static int oom_life_run(size_t fail_at, int mux) {
  t x;
  life_setup(&x, mux, INITIAL, MAXD, 0);
  tunnel_engine_free(x.e); /* again, counted from the first allocation */
  x.e = NULL;
  LENIENT = 1;
  x.mem.calls = 0;
  x.mem.fail_at = fail_at;
  int rc = make_engine(&x);
  if (rc) {
    assert_int_equal(rc, TUNNEL_ENOMEM);
    goto out;
  }
  tunnel_engine_set_state_cb(x.e, life_state);
  tunnel_engine_set_conn_cbs(x.e, life_connect, life_disconnect);
  tunnel_engine_set_event_cb(x.e, life_event);
  tunnel_engine_set_random_cb(x.e, life_random);
  uint32_t p;
  rc = tunnel_engine_add_proxy(x.e, "web", TUNNEL_ENGINE_PROXY_TCP, &p);
  if (rc) {
    assert_int_equal(rc, TUNNEL_ENOMEM);
    goto out;
  }
  assert_int_equal(tunnel_engine_connect(x.e, 0), 0);
  ANSWERED = ASKED;
  assert_int_equal(
      tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNREFUSED, 0), 0);
  assert_int_equal(count_events(TUNNEL_EVENT_RETRYING), 1);
  /* One allocation fails in all: the engine always gets there. */
  assert_true(drive_to_login(&x, NULL));
  x.now += 20000;
  assert_int_equal(tunnel_engine_conn_closed(x.e, 1, TUNNEL_ECONNRESET,
                                             x.now),
                   0);
  assert_true(drive_to_login(&x, RUN1));
  assert_non_null(msg_named(&x, TUNNEL__MSG_NEW_PROXY, "web"));
  assert_int_equal(count_events(TUNNEL_EVENT_GAVE_UP), 0);
out:;
  int failed = x.mem.failed;
  LENIENT = 0;
  teardown_all(&x); /* asserts nothing leaked */
  return failed;
}

static void oom_reconnect_cycle(void **state) {
  (void)state;
  for (int mux = 0; mux < 2; mux++) {
    size_t n = 1;
    while (oom_life_run(n, mux))
      n++;
    print_message("mux %d: %zu allocation points\n", mux, n - 1);
    assert_true(n > 10);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(connect_and_login),
      cmocka_unit_test(backoff_ceilings),
      cmocka_unit_test(backoff_flat),
      cmocka_unit_test(attempt_times_out),
      cmocka_unit_test(stable_session_resets),
      cmocka_unit_test(final_errors_give_up),
      cmocka_unit_test(attempts_run_out),
      cmocka_unit_test(reconnect_off),
      cmocka_unit_test(run_id_reused),
      cmocka_unit_test(proxies_after_reconnection),
      cmocka_unit_test(chosen_port_asked_again),
      cmocka_unit_test(connect_or_start_during_wait),
      cmocka_unit_test(stop_everywhere),
      cmocka_unit_test(answers_from_callbacks),
      cmocka_unit_test(drain_session),
      cmocka_unit_test(drain_without_session),
      cmocka_unit_test(drain_with_request_pending),
      cmocka_unit_test(start_after_drain),
      cmocka_unit_test(oom_reconnect_cycle),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
