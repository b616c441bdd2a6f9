/*
 * The agent's control-session machine, driven by hand: frames from a
 * pretend gateway are encoded here, time is advanced explicitly, and what
 * the agent writes is decoded and checked.  The outbound queue of stream.h
 * is tested here as well (it has no .c of its own).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_agent.h"
#include "support.h"

#define MS ATUN_NS_PER_MS
#define SEC ATUN_NS_PER_S
#define T0 (1000 * SEC)

/* --- event recorder ------------------------------------------------------------------ */

#define REC_MAX 4096

typedef struct rec {
  int types[REC_MAX];
  size_t n;
  int fail_type; /* event type whose callback fails; 0: none */
  size_t fail_at; /* 1-based event number whose callback fails; 0: none */
  int reenter;   /* call set_routes from inside the callback */
  int reenter_rv;
  int new_state;
  uint32_t version;
  uint64_t interval_ns;
  uint32_t missed;
  uint64_t rtt_ns;
  int err;
  uint64_t app_error;
  int remote;
  char message[ATUN_MESSAGE_MAX + 1];
  uint64_t goodbye_reason;
  uint64_t renew_status;
  size_t renew_cert_len;
} rec;

static size_t count(const rec *r, int type) {
  size_t c = 0;
  for (size_t i = 0; i < r->n; ++i) c += r->types[i] == type;
  return c;
}

static int on_event(atun_session_agent *a, const atun_session_agent_event *ev,
                    void *ud) {
  rec *r = ud;
  cr_assert_lt(r->n, REC_MAX);
  r->types[r->n++] = ev->type;
  switch (ev->type) {
  case ATUN_SESSION_AGENT_EV_STATE:
    cr_assert_neq(ev->u.state.old_state, ev->u.state.new_state);
    r->new_state = ev->u.state.new_state;
    break;
  case ATUN_SESSION_AGENT_EV_ESTABLISHED:
    r->version = ev->u.established.version;
    r->interval_ns = ev->u.established.heartbeat_interval_ns;
    break;
  case ATUN_SESSION_AGENT_EV_GATEWAY_DEAD: r->missed = ev->u.gateway_dead.missed; break;
  case ATUN_SESSION_AGENT_EV_RTT_SAMPLE: r->rtt_ns = ev->u.rtt_ns; break;
  case ATUN_SESSION_AGENT_EV_ERROR:
    r->err = ev->u.error.err;
    r->app_error = ev->u.error.app_error;
    r->remote = ev->u.error.remote;
    cr_assert_not_null(ev->u.error.message);
    snprintf(r->message, sizeof(r->message), "%s", ev->u.error.message);
    break;
  case ATUN_SESSION_AGENT_EV_GOODBYE:
    r->goodbye_reason = ev->u.goodbye.reason;
    cr_assert_not_null(ev->u.goodbye.message);
    snprintf(r->message, sizeof(r->message), "%s", ev->u.goodbye.message);
    break;
  case ATUN_SESSION_AGENT_EV_RENEW_RESPONSE:
    r->renew_status = ev->u.renew->status;
    r->renew_cert_len = ev->u.renew->cert_len;
    break;
  }
  if (r->reenter) r->reenter_rv = atun_session_agent_set_routes(a, 0, NULL, 0, NULL, 0);
  return ev->type == r->fail_type || r->n == r->fail_at ? -1 : 0;
}

/* --- fixture -------------------------------------------------------------------------- */

typedef struct fix {
  atun_testrng rng;
  atun_rand rand;
  atun_session_agent_settings settings;
  atun_session_agent *a;
  rec r;
  atun_tstamp now;
} fix;

static fix *fix_new_with(const atun_session_agent_settings *settings,
                         const atun_mem *mem, uint64_t seed) {
  fix *f = calloc(1, sizeof(*f));
  cr_assert_not_null(f);
  atun_testrng_seed(&f->rng, seed);
  f->rand = atun_testrng_as_rand(&f->rng);
  f->settings = *settings;
  f->now = T0;
  int rv = atun_session_agent_new(&f->a, &f->settings, on_event, &f->rand, mem,
                                  &f->r);
  cr_assert_eq(rv, 0, "new: %s", atun_strerror(rv));
  return f;
}

static fix *fix_new(void) {
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  snprintf(s.software_version, sizeof(s.software_version), "atun-agent test");
  return fix_new_with(&s, atun_mem_default(), 1);
}

static void fix_del(fix *f) {
  atun_session_agent_del(f->a);
  free(f);
}

static int state(const fix *f) { return atun_session_agent_get_state(f->a); }

/* Encodes |msg| and feeds it at f->now. */
static void feed_msg(fix *f, const atun_msg *msg) {
  static uint8_t buf[ATUN_CONTROL_PAYLOAD_MAX + ATUN_FRAME_HEADER_MAX];
  ssize_t n = atun_frame_encode(buf, sizeof(buf), msg);
  cr_assert_gt(n, 0, "encode: %s", atun_strerror((int)n));
  cr_assert_eq(atun_session_agent_on_data(f->a, f->now, buf, (size_t)n), 0);
}

static void feed_raw(fix *f, const uint8_t *p, size_t n) {
  cr_assert_eq(atun_session_agent_on_data(f->a, f->now, p, n), 0);
}

/* Decodes everything the agent queued into |out| (up to |max| frames). */
static size_t take_out(fix *f, atun_msg *out, size_t max) {
  static uint8_t buf[2 * ATUN_CONTROL_PAYLOAD_MAX];
  size_t len = 0;
  ssize_t n;
  while ((n = atun_session_agent_write(f->a, buf + len, 7)) > 0) len += (size_t)n;
  cr_assert_eq(n, 0);
  cr_assert_eq(atun_session_agent_pending(f->a), 0);
  atun_frame_reader r;
  atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX, atun_mem_default());
  size_t off = 0, k = 0;
  while (off < len) {
    ssize_t used = atun_frame_reader_feed(&r, buf + off, len - off);
    cr_assert_gt(used, 0);
    off += (size_t)used;
    cr_assert(atun_frame_reader_ready(&r));
    cr_assert_lt(k, max);
    cr_assert_eq(atun_frame_reader_decode(&r, &out[k++], atun_mem_default()), 0);
  }
  atun_frame_reader_free(&r);
  return k;
}

static void free_msgs(atun_msg *m, size_t n) {
  for (size_t i = 0; i < n; ++i) atun_msg_free(&m[i], atun_mem_default());
}

/* Takes exactly one queued frame of |type|. */
static void expect_one(fix *f, uint8_t type, atun_msg *out) {
  atun_msg m[8];
  size_t n = take_out(f, m, 8);
  cr_assert_eq(n, 1, "expected one %s, got %zu frames", atun_frame_type_name(type), n);
  cr_assert_eq(m[0].type, type, "got %s", atun_frame_type_name(m[0].type));
  *out = m[0];
}

static void expect_none(fix *f) {
  atun_msg m[4];
  cr_assert_eq(take_out(f, m, 4), 0);
}

static void run_expiry(fix *f) {
  atun_tstamp e = atun_session_agent_get_expiry(f->a);
  cr_assert_neq(e, ATUN_TSTAMP_MAX);
  if (e > f->now) f->now = e;
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, f->now), 0);
}

/* start (or back off) until CONNECT_NOW, then report the transport up. */
static void connect_up(fix *f) {
  if (state(f) == ATUN_SESSION_AGENT_IDLE)
    cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  size_t before = count(&f->r, ATUN_SESSION_AGENT_EV_CONNECT_NOW);
  run_expiry(f);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CONNECTING);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_CONNECT_NOW), before + 1);
  cr_assert_eq(atun_session_agent_on_transport_connected(f->a, f->now), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_HELLO_SENT);
  atun_msg hello;
  expect_one(f, ATUN_FRAME_HELLO, &hello);
}

static void hello_ack(atun_msg *m, uint32_t version, uint32_t interval_ms) {
  memset(m, 0, sizeof(*m));
  m->type = ATUN_FRAME_HELLO_ACK;
  m->u.hello_ack.chosen_version = version;
  m->u.hello_ack.heartbeat_interval_ms = interval_ms;
}

/* Connects and answers Hello; leaves the RouteAdvertise and first
 * Heartbeat queued. */
static void establish_keep(fix *f, uint32_t interval_ms) {
  connect_up(f);
  atun_msg ack;
  hello_ack(&ack, ATUN_PROTO_VERSION_MAX, interval_ms);
  feed_msg(f, &ack);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
}

static void establish(fix *f, uint32_t interval_ms) {
  establish_keep(f, interval_ms);
  atun_msg m[4];
  size_t n = take_out(f, m, 4);
  cr_assert_eq(n, 2);
  cr_assert_eq(m[0].type, ATUN_FRAME_ROUTE_ADVERTISE);
  cr_assert_eq(m[1].type, ATUN_FRAME_HEARTBEAT);
  free_msgs(m, n);
}

static void ack_hb(fix *f, uint64_t seq) {
  atun_msg m = {.type = ATUN_FRAME_HEARTBEAT_ACK};
  m.u.heartbeat_ack.seq = seq;
  m.u.heartbeat_ack.echo_sent_at = 0;
  feed_msg(f, &m);
}

static uint64_t close_code(fix *f) {
  uint64_t code = UINT64_MAX;
  cr_assert(atun_session_agent_want_close(f->a, &code), "no close requested");
  return code;
}

/* The agent gave up the connection with |app_error|, sending Error first
 * when |sent_error|. */
static void expect_failed(fix *f, uint64_t app_error, int sent_error) {
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF, "state %s",
               atun_session_agent_state_name(state(f)));
  cr_assert_eq(close_code(f), app_error, "close code %s",
               atun_app_error_name(close_code(f)));
  cr_assert_eq(f->r.app_error, app_error);
  if (!sent_error) {
    expect_none(f);
    return;
  }
  atun_msg m;
  expect_one(f, ATUN_FRAME_ERROR, &m);
  cr_assert_eq(m.u.error.code, app_error);
  atun_msg_free(&m, atun_mem_default());
}

/* --- the outbound queue (stream.h) --------------------------------------------------------- */

Test(outq, fills_to_the_bound_and_not_past) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_outq q;
  atun_outq_init(&q, 1000, &fm.mem);
  int err = 0;
  uint8_t *p = atun_outq_reserve(&q, 600, &err);
  cr_assert_not_null(p);
  memset(p, 'a', 600);
  atun_outq_commit(&q, 600);
  p = atun_outq_reserve(&q, 400, &err);
  cr_assert_not_null(p);
  memset(p, 'b', 400);
  atun_outq_commit(&q, 400);
  cr_assert_eq(atun_outq_len(&q), 1000);
  cr_assert_leq(q.cap, 1000, "storage never exceeds the bound");
  cr_assert_null(atun_outq_reserve(&q, 1, &err));
  cr_assert_eq(err, ATUN_ERR_FULL);
  cr_assert_eq(atun_outq_len(&q), 1000);
  uint8_t out[1000];
  cr_assert_eq(atun_outq_read(&q, out, 599), 599);
  cr_assert_eq(out[598], 'a');
  /* Room at the front is reused by moving the rest down. */
  p = atun_outq_reserve(&q, 599, &err);
  cr_assert_not_null(p);
  memset(p, 'c', 599);
  atun_outq_commit(&q, 599);
  cr_assert_eq(atun_outq_read(&q, out, sizeof(out)), 1000);
  cr_assert_eq(out[0], 'a');
  cr_assert_eq(out[1], 'b');
  cr_assert_eq(out[401], 'c');
  cr_assert_eq(fm.live, 1, "a small block is kept for the next frames");
  atun_outq_free(&q);
  cr_assert_eq(fm.live, 0);
}

Test(outq, emptied_large_queue_gives_its_storage_back) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_outq q;
  atun_outq_init(&q, 1 << 20, &fm.mem);
  int err = 0;
  uint8_t *p = atun_outq_reserve(&q, ATUN_OUTQ_KEEP + 1, &err);
  cr_assert_not_null(p);
  memset(p, 'x', ATUN_OUTQ_KEEP + 1);
  atun_outq_commit(&q, ATUN_OUTQ_KEEP + 1);
  static uint8_t out[ATUN_OUTQ_KEEP + 1];
  cr_assert_eq(atun_outq_read(&q, out, ATUN_OUTQ_KEEP), ATUN_OUTQ_KEEP);
  cr_assert_eq(fm.live, 1, "kept while bytes remain");
  cr_assert_eq(atun_outq_read(&q, out, 10), 1);
  cr_assert_eq(fm.live, 0);
  cr_assert_eq(atun_outq_read(&q, out, 10), 0);
  atun_outq_free(&q);
}

Test(outq, allocation_failure_leaves_it_unchanged) {
  atun_failmem fm;
  atun_failmem_init(&fm, 1);
  atun_outq q;
  atun_outq_init(&q, 1 << 20, &fm.mem);
  int err = 0;
  uint8_t *p = atun_outq_reserve(&q, 100, &err);
  cr_assert_not_null(p);
  memset(p, 'x', 100);
  atun_outq_commit(&q, 100);
  cr_assert_null(atun_outq_reserve(&q, 1000, &err));
  cr_assert_eq(err, ATUN_ERR_NOMEM);
  uint8_t out[200];
  cr_assert_eq(atun_outq_read(&q, out, sizeof(out)), 100);
  cr_assert_eq(out[99], 'x');
  atun_outq_free(&q);
  cr_assert_eq(fm.live, 0);
}

Test(outq, small_queue_keeps_its_block_and_clear_drops_bytes) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_outq q;
  atun_outq_init(&q, 1 << 20, &fm.mem);
  int err = 0;
  uint8_t *p = atun_outq_reserve(&q, 10, &err);
  memset(p, 'x', 10);
  atun_outq_commit(&q, 10);
  atun_outq_clear(&q);
  cr_assert_eq(atun_outq_len(&q), 0);
  cr_assert_eq(fm.live, 1, "a small block is kept for the next frames");
  atun_outq_free(&q);
  cr_assert_eq(fm.live, 0);
}

/* --- settings and lifecycle --------------------------------------------------------------- */

Test(agent, settings_are_checked) {
  atun_session_agent_settings s;
  atun_testrng rng;
  atun_testrng_seed(&rng, 1);
  atun_rand rand = atun_testrng_as_rand(&rng);
  atun_session_agent *a;
  rec r = {0};
  const atun_mem *mem = atun_mem_default();
  atun_session_agent_settings_default(&s);
  cr_assert_eq(atun_session_agent_new(&a, &s, on_event, &rand, mem, &r), 0);
  atun_session_agent_del(a);
  cr_assert_eq(atun_session_agent_new(NULL, &s, on_event, &rand, mem, &r),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_agent_new(&a, &s, NULL, &rand, mem, &r),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_agent_new(&a, &s, on_event, NULL, mem, &r),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_agent_new(&a, &s, on_event, &rand, NULL, &r),
               ATUN_ERR_INVALID_ARGUMENT);

#define EXPECT_BAD(field, value)                                                  \
  do {                                                                            \
    atun_session_agent_settings_default(&s);                                      \
    s.field = value;                                                              \
    cr_assert_eq(atun_session_agent_new(&a, &s, on_event, &rand, mem, &r),        \
                 ATUN_ERR_INVALID_ARGUMENT, #field " = " #value);                 \
  } while (0)
#define EXPECT_OK(field, value)                                                   \
  do {                                                                            \
    atun_session_agent_settings_default(&s);                                      \
    s.field = value;                                                              \
    cr_assert_eq(atun_session_agent_new(&a, &s, on_event, &rand, mem, &r), 0,     \
                 #field " = " #value);                                            \
    atun_session_agent_del(a);                                                    \
  } while (0)
  EXPECT_BAD(min_version, 0);
  EXPECT_BAD(min_version, ATUN_PROTO_VERSION_MAX + 1);
  EXPECT_BAD(handshake_timeout_ns, 0);
  EXPECT_BAD(handshake_timeout_ns, ATUN_SESSION_TIMEOUT_MAX_NS + 1);
  EXPECT_OK(handshake_timeout_ns, ATUN_SESSION_TIMEOUT_MAX_NS);
  EXPECT_BAD(drain_timeout_ns, 0);
  EXPECT_BAD(drain_timeout_ns, ATUN_SESSION_TIMEOUT_MAX_NS + 1);
  EXPECT_BAD(dead_after_missed, 0);
  EXPECT_BAD(dead_after_missed, ATUN_SESSION_MISSED_MAX + 1);
  EXPECT_OK(dead_after_missed, ATUN_SESSION_MISSED_MAX);
  EXPECT_OK(dead_after_missed, 1);
  EXPECT_BAD(outq_max, ATUN_OUTQ_MIN - 1);
  EXPECT_OK(outq_max, ATUN_OUTQ_MIN);
  EXPECT_BAD(backoff.base_ns, 0);
#undef EXPECT_BAD
#undef EXPECT_OK
  atun_session_agent_settings_default(&s);
  memset(s.software_version, 'v', sizeof(s.software_version));
  cr_assert_eq(atun_session_agent_new(&a, &s, on_event, &rand, mem, &r),
               ATUN_ERR_INVALID_ARGUMENT, "software version without a NUL");
  atun_session_agent_settings_default(&s);
  s.software_version[0] = '\x01';
  cr_assert_eq(atun_session_agent_new(&a, &s, on_event, &rand, mem, &r),
               ATUN_ERR_INVALID_ARGUMENT, "control character in the version");
  cr_assert_eq(r.n, 0);
}

Test(agent, first_attempt_waits_a_drawn_delay) {
  fix *f = fix_new();
  cr_assert_eq(atun_session_agent_get_expiry(f->a), ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  atun_tstamp e = atun_session_agent_get_expiry(f->a);
  cr_assert_geq(e, f->now);
  cr_assert_leq(e, f->now + 1 * SEC, "first delay within [0, 1 s]");
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_CONNECT_NOW), 0);
  if (e > f->now) {
    cr_assert_eq(atun_session_agent_handle_expiry(f->a, e - 1), 0);
    cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF, "not before the deadline");
  }
  cr_assert_eq(atun_session_agent_start(f->a, f->now), ATUN_ERR_STATE);
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, e), 0);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_CONNECT_NOW), 1);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CONNECTING);
  fix_del(f);
}

/* --- handshake ----------------------------------------------------------------------------- */

Test(agent, hello_then_established_only_on_hello_ack) {
  fix *f = fix_new();
  cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
  run_expiry(f);
  /* Bytes before the transport is up belong to no stream. */
  uint8_t junk[3] = {0xff, 0xff, 0xff};
  feed_raw(f, junk, sizeof(junk));
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CONNECTING);
  cr_assert_eq(atun_session_agent_on_transport_connected(f->a, f->now), 0);
  atun_msg hello;
  expect_one(f, ATUN_FRAME_HELLO, &hello);
  cr_assert_eq(hello.u.hello.min_version, ATUN_PROTO_VERSION_MIN);
  cr_assert_eq(hello.u.hello.max_version, ATUN_PROTO_VERSION_MAX);
  cr_assert_str_eq(hello.u.hello.software_version, "atun-agent test");
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_HELLO_SENT);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_ESTABLISHED), 0);
  /* A second "connected" changes nothing. */
  cr_assert_eq(atun_session_agent_on_transport_connected(f->a, f->now), 0);
  expect_none(f);

  atun_msg ack;
  hello_ack(&ack, ATUN_PROTO_VERSION_MAX, 2000);
  /* Delivered one byte at a time: the reader assembles it. */
  uint8_t buf[64];
  ssize_t n = atun_frame_encode(buf, sizeof(buf), &ack);
  for (ssize_t i = 0; i < n; ++i) feed_raw(f, buf + i, 1);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_ESTABLISHED), 1);
  cr_assert_eq(f->r.version, ATUN_PROTO_VERSION_MAX);
  cr_assert_eq(f->r.interval_ns, 2 * SEC);
  atun_msg m[4];
  cr_assert_eq(take_out(f, m, 4), 2);
  cr_assert_eq(m[0].type, ATUN_FRAME_ROUTE_ADVERTISE);
  cr_assert_eq(m[0].u.route_advertise.epoch, 0);
  cr_assert_eq(m[0].u.route_advertise.subnet_count, 0);
  cr_assert_eq(m[1].type, ATUN_FRAME_HEARTBEAT);
  cr_assert_eq(m[1].u.heartbeat.seq, 1);
  cr_assert_eq(m[1].u.heartbeat.sent_at, f->now);
  free_msgs(m, 2);
  cr_assert_eq(atun_session_agent_get_expiry(f->a), f->now + 2 * SEC);
  fix_del(f);
}

Test(agent, handshake_timeout_at_exactly_the_setting) {
  fix *f = fix_new();
  cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
  run_expiry(f);
  atun_tstamp dialled = f->now;
  cr_assert_eq(atun_session_agent_get_expiry(f->a), dialled + 10 * SEC);
  cr_assert_eq(atun_session_agent_on_transport_connected(f->a, f->now), 0);
  atun_msg hello;
  expect_one(f, ATUN_FRAME_HELLO, &hello);
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, dialled + 10 * SEC - 1), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_HELLO_SENT);
  f->now = dialled + 10 * SEC;
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, f->now), 0);
  cr_assert_eq(f->r.err, ATUN_ERR_TIMEOUT);
  expect_failed(f, ATUN_APP_HANDSHAKE_TIMEOUT, 1);
  fix_del(f);
}

Test(agent, timeout_while_connecting_asks_to_abort_the_dial) {
  fix *f = fix_new();
  cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
  run_expiry(f);
  run_expiry(f);
  cr_assert_eq(f->r.err, ATUN_ERR_TIMEOUT);
  expect_failed(f, ATUN_APP_HANDSHAKE_TIMEOUT, 0);
  fix_del(f);
}

Test(agent, hello_ack_outside_the_offered_range) {
  fix *f = fix_new();
  connect_up(f);
  atun_msg ack;
  hello_ack(&ack, ATUN_PROTO_VERSION_MAX + 1, 1000);
  feed_msg(f, &ack);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_ESTABLISHED), 0);
  expect_failed(f, ATUN_APP_VERSION_MISMATCH, 1);
  fix_del(f);
}

Test(agent, gateway_refuses_the_version) {
  fix *f = fix_new();
  connect_up(f);
  atun_msg err = {.type = ATUN_FRAME_ERROR};
  err.u.error.code = ATUN_APP_VERSION_MISMATCH;
  err.u.error.message = "supported protocol versions: 3..4";
  err.u.error.supported_min_version = 3;
  err.u.error.supported_max_version = 4;
  feed_msg(f, &err);
  cr_assert_eq(f->r.remote, 1);
  cr_assert_eq(f->r.err, ATUN_ERR_CLOSED);
  cr_assert_str_eq(f->r.message, "supported protocol versions: 3..4");
  expect_failed(f, ATUN_APP_VERSION_MISMATCH, 0);
  fix_del(f);
}

Test(agent, heartbeat_interval_is_clamped) {
  fix *f = fix_new();
  establish(f, 1);
  cr_assert_eq(f->r.interval_ns, ATUN_SESSION_HEARTBEAT_MIN_NS);
  cr_assert_eq(atun_session_agent_get_expiry(f->a),
               f->now + ATUN_SESSION_HEARTBEAT_MIN_NS);
  fix_del(f);
  f = fix_new();
  establish(f, UINT32_MAX);
  cr_assert_eq(f->r.interval_ns, ATUN_SESSION_HEARTBEAT_MAX_NS);
  fix_del(f);
}

/* --- heartbeats ------------------------------------------------------------------------------ */

Test(agent, heartbeats_on_schedule_with_rtt) {
  fix *f = fix_new();
  atun_session_agent_set_active_streams(f->a, 7);
  establish(f, 1000);
  atun_tstamp t = f->now;
  for (uint64_t seq = 1; seq <= 10; ++seq) {
    f->now = t + (seq - 1) * SEC + 25 * MS;
    ack_hb(f, seq);
    cr_assert_eq(f->r.rtt_ns, 25 * MS);
    cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_RTT_SAMPLE), seq);
    cr_assert_eq(atun_session_agent_get_expiry(f->a), t + seq * SEC);
    cr_assert_eq(atun_session_agent_handle_expiry(f->a, t + seq * SEC - 1), 0);
    expect_none(f);
    f->now = t + seq * SEC;
    run_expiry(f);
    atun_msg hb;
    expect_one(f, ATUN_FRAME_HEARTBEAT, &hb);
    cr_assert_eq(hb.u.heartbeat.seq, seq + 1);
    cr_assert_eq(hb.u.heartbeat.sent_at, f->now);
    cr_assert_eq(hb.u.heartbeat.active_stream_count, 7);
  }
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_GATEWAY_DEAD), 0);
  fix_del(f);
}

static void dead_after(uint32_t missed_max) {
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  s.dead_after_missed = missed_max;
  fix *f = fix_new_with(&s, atun_mem_default(), 3);
  establish(f, 1000);
  atun_tstamp t = f->now;
  for (uint32_t k = 1; k < missed_max; ++k) {
    f->now = t + k * SEC;
    run_expiry(f);
    atun_msg hb;
    expect_one(f, ATUN_FRAME_HEARTBEAT, &hb);
  }
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, t + missed_max * SEC - 1), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_GATEWAY_DEAD), 0);
  f->now = t + missed_max * SEC;
  run_expiry(f);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_GATEWAY_DEAD), 1);
  cr_assert_eq(f->r.missed, missed_max);
  cr_assert_eq(f->r.err, ATUN_ERR_TIMEOUT);
  expect_failed(f, ATUN_APP_HEARTBEAT_TIMEOUT, 1);
  fix_del(f);
}

Test(agent, gateway_dead_at_exactly_the_missed_bound) {
  dead_after(3);
  dead_after(1);
  dead_after(ATUN_SESSION_MISSED_MAX);
}

Test(agent, one_ack_short_of_the_bound_keeps_the_gateway) {
  fix *f = fix_new();
  establish(f, 1000);
  atun_tstamp t = f->now;
  /* Two misses, then the third heartbeat is acked: the count starts over. */
  for (int k = 1; k <= 2; ++k) {
    f->now = t + (uint64_t)k * SEC;
    run_expiry(f);
    atun_msg hb;
    expect_one(f, ATUN_FRAME_HEARTBEAT, &hb);
  }
  ack_hb(f, 3);
  for (int k = 3; k <= 5; ++k) {
    f->now = t + (uint64_t)k * SEC;
    run_expiry(f);
    atun_msg hb;
    expect_one(f, ATUN_FRAME_HEARTBEAT, &hb);
  }
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  f->now = t + 6 * SEC;
  run_expiry(f);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_GATEWAY_DEAD), 1);
  fix_del(f);
}

Test(agent, late_ack_proves_life_without_rtt) {
  fix *f = fix_new();
  establish(f, 1000);
  atun_tstamp t = f->now;
  for (int k = 1; k <= 2; ++k) {
    f->now = t + (uint64_t)k * SEC;
    run_expiry(f);
    atun_msg hb;
    expect_one(f, ATUN_FRAME_HEARTBEAT, &hb);
  }
  ack_hb(f, 1); /* late: heartbeat 3 is out already */
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_RTT_SAMPLE), 0);
  for (int k = 3; k <= 4; ++k) {
    f->now = t + (uint64_t)k * SEC;
    run_expiry(f);
    atun_msg hb;
    expect_one(f, ATUN_FRAME_HEARTBEAT, &hb);
  }
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  f->now = t + 5 * SEC;
  run_expiry(f);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  fix_del(f);
}

Test(agent, duplicate_ack_is_ignored) {
  fix *f = fix_new();
  establish(f, 1000);
  f->now += 5 * MS;
  ack_hb(f, 1);
  ack_hb(f, 1);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_RTT_SAMPLE), 1);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  expect_none(f);
  fix_del(f);
}

Test(agent, acks_the_gateways_heartbeats) {
  fix *f = fix_new();
  establish(f, 1000);
  atun_msg hb = {.type = ATUN_FRAME_HEARTBEAT};
  hb.u.heartbeat.seq = 42;
  hb.u.heartbeat.sent_at = 123456789;
  feed_msg(f, &hb);
  atun_msg ack;
  expect_one(f, ATUN_FRAME_HEARTBEAT_ACK, &ack);
  cr_assert_eq(ack.u.heartbeat_ack.seq, 42);
  cr_assert_eq(ack.u.heartbeat_ack.echo_sent_at, 123456789);
  fix_del(f);
}

/* --- routes ------------------------------------------------------------------------------- */

static atun_prefix prefix(const char *s) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, s), 0);
  return p;
}

Test(agent, set_routes_bumps_the_epoch_without_reconnecting) {
  fix *f = fix_new();
  atun_prefix nets[2] = {prefix("10.0.0.0/8"), prefix("fd00::/16")};
  atun_domain doms[1] = {{"corp.example", 1}};
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, nets, 1, NULL, 0), 0);
  cr_assert_eq(atun_session_agent_get_epoch(f->a), 1);
  expect_none(f);
  establish_keep(f, 1000);
  atun_msg m[4];
  size_t n = take_out(f, m, 4);
  cr_assert_eq(n, 2);
  cr_assert_eq(m[0].u.route_advertise.epoch, 1);
  cr_assert_eq(m[0].u.route_advertise.subnet_count, 1);
  free_msgs(m, n);
  size_t connects = count(&f->r, ATUN_SESSION_AGENT_EV_CONNECT_NOW);
  size_t states = count(&f->r, ATUN_SESSION_AGENT_EV_STATE);

  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, nets, 2, doms, 1), 0);
  cr_assert_eq(atun_session_agent_get_epoch(f->a), 2);
  atun_msg adv;
  expect_one(f, ATUN_FRAME_ROUTE_ADVERTISE, &adv);
  cr_assert_eq(adv.u.route_advertise.epoch, 2);
  cr_assert_eq(adv.u.route_advertise.subnet_count, 2);
  cr_assert_eq(adv.u.route_advertise.domain_count, 1);
  cr_assert_str_eq(adv.u.route_advertise.domains[0].name, "corp.example");
  cr_assert_eq(adv.u.route_advertise.domains[0].auto_detected, 1);
  atun_msg_free(&adv, atun_mem_default());
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_CONNECT_NOW), connects);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_STATE), states);

  /* Withdrawing everything is a change too. */
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, NULL, 0, NULL, 0), 0);
  expect_one(f, ATUN_FRAME_ROUTE_ADVERTISE, &adv);
  cr_assert_eq(adv.u.route_advertise.epoch, 3);
  cr_assert_eq(adv.u.route_advertise.subnet_count, 0);
  fix_del(f);
}

Test(agent, bad_routes_change_nothing) {
  fix *f = fix_new();
  establish(f, 1000);
  atun_prefix bad = prefix("10.0.0.0/8");
  bad.len = 40;
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, &bad, 1, NULL, 0),
               ATUN_ERR_BAD_PREFIX);
  atun_domain bad_name = {"-bad-.example", 0};
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, NULL, 0, &bad_name, 1),
               ATUN_ERR_BAD_NAME);
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, NULL, 1, NULL, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  static atun_prefix many[ATUN_SUBNETS_MAX + 1];
  for (size_t i = 0; i < ATUN_SUBNETS_MAX + 1; ++i) {
    many[i] = prefix("10.0.0.0/8");
    many[i].addr.bytes[1] = (uint8_t)i;
    many[i].addr.bytes[2] = (uint8_t)(i >> 8);
    many[i].len = 24;
  }
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, many,
                                             ATUN_SUBNETS_MAX + 1, NULL, 0),
               ATUN_ERR_LIMIT);
  cr_assert_eq(atun_session_agent_get_epoch(f->a), 0);
  expect_none(f);
  /* At the bound it goes out. */
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, many,
                                             ATUN_SUBNETS_MAX, NULL, 0),
               0);
  atun_msg adv;
  expect_one(f, ATUN_FRAME_ROUTE_ADVERTISE, &adv);
  cr_assert_eq(adv.u.route_advertise.subnet_count, ATUN_SUBNETS_MAX);
  atun_msg_free(&adv, atun_mem_default());
  fix_del(f);
}

Test(agent, advertisement_larger_than_the_queue_is_refused) {
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  s.outq_max = ATUN_OUTQ_MIN;
  fix *f = fix_new_with(&s, atun_mem_default(), 1);
  static atun_domain doms[ATUN_DOMAINS_MAX];
  for (size_t i = 0; i < ATUN_DOMAINS_MAX; ++i)
    snprintf(doms[i].name, sizeof(doms[i].name), "h%zu.%s.%s.example", i,
             "a-label-of-fifty-characters-more-or-less-aaaaaaaaa",
             "a-label-of-fifty-characters-more-or-less-bbbbbbbbb");
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, NULL, 0, doms,
                                             ATUN_DOMAINS_MAX),
               ATUN_ERR_FULL);
  cr_assert_eq(atun_session_agent_get_epoch(f->a), 0);
  fix_del(f);
}

/* --- the gateway's faults --------------------------------------------------------------------- */

typedef struct bad_frame {
  const char *what;
  uint8_t bytes[32];
  size_t len;
  uint64_t app_error;
  int before_ack; /* fed in hello_sent rather than established */
} bad_frame;

/* Frames a gateway must not send, as raw bytes: type, length, payload
 * (field id, field length, value). */
static const bad_frame bad_frames[] = {
    {"hello", {0x01, 6, 1, 1, 2, 2, 1, 2}, 8, ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"route_advertise", {0x03, 3, 1, 1, 5}, 5, ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"cert_renew_request", {0x08, 3, 1, 1, 0x30}, 5, ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"cert_renew_response unasked", {0x09, 3, 1, 1, 2}, 5,
     ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"connect_response", {0x11, 3, 1, 1, 0}, 5, ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"second hello_ack", {0x02, 6, 1, 1, 2, 2, 1, 10}, 8,
     ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"heartbeat_ack never sent", {0x05, 6, 1, 1, 9, 2, 1, 0}, 8,
     ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"heartbeat_ack seq 0", {0x05, 6, 1, 1, 0, 2, 1, 0}, 8,
     ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"unknown type", {0x7f, 0}, 2, ATUN_APP_UNKNOWN_FRAME, 0},
    {"oversize", {0x06, 0x80, 0x10, 0x00, 0x01}, 5, ATUN_APP_FRAME_TOO_LARGE, 0},
    {"malformed: field runs past the end", {0x04, 3, 1, 5, 1}, 5,
     ATUN_APP_MALFORMED_FRAME, 0},
    {"malformed: missing field", {0x04, 3, 1, 1, 1}, 5, ATUN_APP_MALFORMED_FRAME, 0},
    {"heartbeat before hello_ack", {0x04, 9, 1, 1, 1, 2, 1, 0, 3, 1, 0}, 11,
     ATUN_APP_PROTOCOL_VIOLATION, 1},
    {"malformed hello_ack", {0x02, 3, 1, 1, 2}, 5, ATUN_APP_MALFORMED_FRAME, 1},
    {"unknown type before hello_ack", {0x00}, 1, ATUN_APP_UNKNOWN_FRAME, 1},
};

Test(agent, every_gateway_violation_closes_with_its_code) {
  for (size_t i = 0; i < sizeof(bad_frames) / sizeof(bad_frames[0]); ++i) {
    const bad_frame *b = &bad_frames[i];
    fix *f = fix_new();
    if (b->before_ack)
      connect_up(f);
    else
      establish(f, 1000);
    /* The frame is followed by a valid heartbeat that must be ignored. */
    uint8_t buf[64];
    memcpy(buf, b->bytes, b->len);
    static const uint8_t hb[] = {0x04, 9, 1, 1, 1, 2, 1, 0, 3, 1, 0};
    memcpy(buf + b->len, hb, sizeof(hb));
    feed_raw(f, buf, b->len + sizeof(hb));
    cr_assert_eq(f->r.remote, 0, "%s", b->what);
    cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF, "%s", b->what);
    cr_assert_eq(close_code(f), b->app_error, "%s: closed with %s", b->what,
                 atun_app_error_name(close_code(f)));
    atun_msg m;
    expect_one(f, ATUN_FRAME_ERROR, &m);
    cr_assert_eq(m.u.error.code, b->app_error, "%s", b->what);
    atun_msg_free(&m, atun_mem_default());
    /* Later bytes of that connection are dropped. */
    feed_raw(f, hb, sizeof(hb));
    expect_none(f);
    fix_del(f);
  }
}

Test(agent, connect_request_on_the_control_stream) {
  fix *f = fix_new();
  establish(f, 1000);
  atun_msg m = {.type = ATUN_FRAME_CONNECT_REQUEST};
  m.u.connect_request.target.kind = ATUN_TARGET_ADDR;
  cr_assert_eq(atun_addr_parse(&m.u.connect_request.target.addr, "10.1.2.3"), 0);
  m.u.connect_request.port = 22;
  feed_msg(f, &m);
  expect_failed(f, ATUN_APP_PROTOCOL_VIOLATION, 1);
  fix_del(f);
}

Test(agent, error_and_goodbye_from_the_gateway) {
  fix *f = fix_new();
  establish(f, 1000);
  atun_msg err = {.type = ATUN_FRAME_ERROR};
  err.u.error.code = ATUN_APP_REVOKED;
  feed_msg(f, &err);
  cr_assert_eq(f->r.remote, 1);
  cr_assert_str_eq(f->r.message, "");
  expect_failed(f, ATUN_APP_REVOKED, 0);

  establish(f, 1000);
  atun_msg bye = {.type = ATUN_FRAME_GOODBYE};
  bye.u.goodbye.reason = ATUN_GOODBYE_RESTART;
  bye.u.goodbye.message = "upgrade";
  feed_msg(f, &bye);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_GOODBYE), 1);
  cr_assert_eq(f->r.goodbye_reason, ATUN_GOODBYE_RESTART);
  cr_assert_str_eq(f->r.message, "upgrade");
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert_eq(close_code(f), ATUN_APP_NO_ERROR);
  expect_none(f);
  /* The next attempt starts clean. */
  establish(f, 1000);
  uint64_t code;
  cr_assert_not(atun_session_agent_want_close(f->a, &code));
  fix_del(f);
}

Test(agent, transport_loss_and_stream_end) {
  fix *f = fix_new();
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_on_transport_failed(f->a, f->now), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert_eq(f->r.err, ATUN_ERR_CLOSED);
  uint64_t code;
  cr_assert_not(atun_session_agent_want_close(f->a, &code));
  /* A stale report about the old connection is ignored. */
  size_t n = f->r.n;
  cr_assert_eq(atun_session_agent_on_transport_failed(f->a, f->now), 0);
  cr_assert_eq(atun_session_agent_on_stream_closed(f->a, f->now), 0);
  cr_assert_eq(f->r.n, n);

  establish(f, 1000);
  cr_assert_eq(atun_session_agent_on_stream_closed(f->a, f->now), 0);
  cr_assert_eq(f->r.err, ATUN_ERR_CLOSED);
  expect_failed(f, ATUN_APP_PROTOCOL_VIOLATION, 0);
  fix_del(f);
}

/* --- backoff -------------------------------------------------------------------------------- */

/* Fails |attempts| connections in a row (transport failure right after
 * CONNECT_NOW) and checks each delay against the SPEC ceiling. */
Test(agent, backoff_delays_stay_inside_the_spec_bounds) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    atun_session_agent_settings s;
    atun_session_agent_settings_default(&s);
    fix *f = fix_new_with(&s, atun_mem_default(), seed);
    cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
    uint64_t ceiling = 1 * SEC;
    for (int attempt = 0; attempt < 12; ++attempt) {
      atun_tstamp e = atun_session_agent_get_expiry(f->a);
      cr_assert_geq(e, f->now);
      cr_assert_leq(e - f->now, ceiling, "attempt %d: delay %llu > %llu", attempt,
                    (unsigned long long)(e - f->now), (unsigned long long)ceiling);
      f->now = e;
      cr_assert_eq(atun_session_agent_handle_expiry(f->a, f->now), 0);
      cr_assert_eq(state(f), ATUN_SESSION_AGENT_CONNECTING);
      f->now += 1 * MS;
      cr_assert_eq(atun_session_agent_on_transport_failed(f->a, f->now), 0);
      ceiling = ceiling * 2 > 60 * SEC ? 60 * SEC : ceiling * 2;
    }
    fix_del(f);
  }
}

/* Backs off five times, then holds a connection for |up_ns| and drops
 * it; returns the delay drawn after that. */
static uint64_t delay_after_connection(uint64_t seed, uint64_t up_ns) {
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  s.dead_after_missed = ATUN_SESSION_MISSED_MAX;
  fix *f = fix_new_with(&s, atun_mem_default(), seed);
  cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
  for (int i = 0; i < 5; ++i) {
    run_expiry(f);
    cr_assert_eq(atun_session_agent_on_transport_failed(f->a, f->now), 0);
  }
  establish(f, 600000);
  f->now += up_ns;
  cr_assert_eq(atun_session_agent_on_transport_failed(f->a, f->now), 0);
  uint64_t d = atun_session_agent_get_expiry(f->a) - f->now;
  fix_del(f);
  return d;
}

Test(agent, backoff_resets_after_thirty_seconds_up) {
  int above_base = 0;
  for (uint64_t seed = 1; seed <= 64; ++seed) {
    cr_assert_leq(delay_after_connection(seed, 30 * SEC), 1 * SEC);
    uint64_t d = delay_after_connection(seed, 30 * SEC - 1);
    cr_assert_leq(d, 60 * SEC);
    above_base |= d > 1 * SEC;
  }
  cr_assert(above_base, "a shorter connection keeps the grown ceiling");
}

/* --- drain ------------------------------------------------------------------------------------ */

Test(agent, drain_sends_goodbye_then_closes_when_the_gateway_does) {
  fix *f = fix_new();
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, ATUN_VARINT_MAX + 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, ATUN_GOODBYE_SHUTDOWN), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_DRAINING);
  atun_msg bye;
  expect_one(f, ATUN_FRAME_GOODBYE, &bye);
  cr_assert_eq(bye.u.goodbye.reason, ATUN_GOODBYE_SHUTDOWN);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, 0), ATUN_ERR_STATE);
  /* No heartbeats while draining, but the gateway's are still acked. */
  cr_assert_eq(atun_session_agent_get_expiry(f->a), f->now + 10 * SEC);
  atun_msg hb = {.type = ATUN_FRAME_HEARTBEAT};
  hb.u.heartbeat.seq = 1;
  feed_msg(f, &hb);
  atun_msg ack;
  expect_one(f, ATUN_FRAME_HEARTBEAT_ACK, &ack);
  /* The gateway answers with its own Goodbye and closes. */
  atun_msg gbye = {.type = ATUN_FRAME_GOODBYE};
  feed_msg(f, &gbye);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED);
  cr_assert_eq(close_code(f), ATUN_APP_NO_ERROR);
  cr_assert_eq(atun_session_agent_get_expiry(f->a), ATUN_TSTAMP_MAX);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_CONNECT_NOW), 1, "no reconnect");
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, NULL, 0, NULL, 0),
               ATUN_ERR_STATE);
  fix_del(f);
}

Test(agent, drain_ends_at_the_timeout_or_with_the_transport) {
  fix *f = fix_new();
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, ATUN_GOODBYE_SHUTDOWN), 0);
  atun_tstamp t = f->now;
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, t + 10 * SEC - 1), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_DRAINING);
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, t + 10 * SEC), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED);
  cr_assert_eq(close_code(f), ATUN_APP_SHUTDOWN);
  fix_del(f);

  f = fix_new();
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, ATUN_GOODBYE_SHUTDOWN), 0);
  cr_assert_eq(atun_session_agent_on_transport_failed(f->a, f->now), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED);
  fix_del(f);

  f = fix_new();
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, ATUN_GOODBYE_SHUTDOWN), 0);
  cr_assert_eq(atun_session_agent_on_stream_closed(f->a, f->now), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED);
  cr_assert_eq(close_code(f), ATUN_APP_NO_ERROR);
  fix_del(f);

  /* A violation while draining ends it too, without a reconnect. */
  f = fix_new();
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, ATUN_GOODBYE_SHUTDOWN), 0);
  atun_msg bye;
  expect_one(f, ATUN_FRAME_GOODBYE, &bye);
  static const uint8_t unknown[] = {0x7f, 0};
  feed_raw(f, unknown, sizeof(unknown));
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED);
  cr_assert_eq(close_code(f), ATUN_APP_UNKNOWN_FRAME);
  fix_del(f);
}

Test(agent, drain_before_established_closes_at_once) {
  fix *f = fix_new();
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, 0), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED);
  uint64_t code;
  cr_assert_not(atun_session_agent_want_close(f->a, &code));
  cr_assert_eq(atun_session_agent_start(f->a, f->now), ATUN_ERR_STATE);
  fix_del(f);

  f = fix_new();
  connect_up(f);
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, 0), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED);
  cr_assert_eq(close_code(f), ATUN_APP_NO_ERROR);
  expect_none(f);
  fix_del(f);
}

/* --- renewal ------------------------------------------------------------------------------------ */

Test(agent, renewal_request_and_response) {
  fix *f = fix_new();
  static const uint8_t csr[] = {0x30, 0x03, 0x02, 0x01, 0x01};
  cr_assert_eq(atun_session_agent_request_renewal(f->a, f->now, csr, sizeof(csr), 0),
               ATUN_ERR_STATE);
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_request_renewal(f->a, f->now, csr, 0, 0),
               ATUN_ERR_MISSING_FIELD);
  cr_assert_eq(atun_session_agent_request_renewal(f->a, f->now, csr, sizeof(csr), 1), 0);
  cr_assert_eq(atun_session_agent_request_renewal(f->a, f->now, csr, sizeof(csr), 1),
               ATUN_ERR_STATE, "one request at a time");
  atun_msg req;
  expect_one(f, ATUN_FRAME_CERT_RENEW_REQUEST, &req);
  cr_assert_eq(req.u.cert_renew_request.csr_len, sizeof(csr));
  cr_assert_eq(req.u.cert_renew_request.rotate_key, 1);
  atun_msg_free(&req, atun_mem_default());
  static uint8_t cert[] = {0x30, 0x01, 0x00};
  atun_msg resp = {.type = ATUN_FRAME_CERT_RENEW_RESPONSE};
  resp.u.cert_renew_response.status = ATUN_CERT_STATUS_OK;
  resp.u.cert_renew_response.cert = cert;
  resp.u.cert_renew_response.cert_len = sizeof(cert);
  feed_msg(f, &resp);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_RENEW_RESPONSE), 1);
  cr_assert_eq(f->r.renew_status, ATUN_CERT_STATUS_OK);
  cr_assert_eq(f->r.renew_cert_len, sizeof(cert));
  /* A second response was never asked for. */
  feed_msg(f, &resp);
  expect_failed(f, ATUN_APP_PROTOCOL_VIOLATION, 1);
  fix_del(f);
}

/* --- callbacks ------------------------------------------------------------------------------------ */

Test(agent, failing_callback_is_fatal_and_sticky) {
  static const int types[] = {ATUN_SESSION_AGENT_EV_STATE,
                              ATUN_SESSION_AGENT_EV_CONNECT_NOW,
                              ATUN_SESSION_AGENT_EV_ESTABLISHED,
                              ATUN_SESSION_AGENT_EV_RTT_SAMPLE};
  for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); ++i) {
    fix *f = fix_new();
    f->r.fail_type = types[i];
    int rv = atun_session_agent_start(f->a, f->now);
    atun_msg ack;
    hello_ack(&ack, ATUN_PROTO_VERSION_MAX, 1000);
    uint8_t buf[64];
    ssize_t n = atun_frame_encode(buf, sizeof(buf), &ack);
    if (rv == 0) rv = atun_session_agent_handle_expiry(f->a, atun_session_agent_get_expiry(f->a));
    if (rv == 0) rv = atun_session_agent_on_transport_connected(f->a, f->now);
    if (rv == 0) rv = atun_session_agent_on_data(f->a, f->now, buf, (size_t)n);
    if (rv == 0) {
      static const uint8_t ack1[] = {0x05, 6, 1, 1, 1, 2, 1, 0};
      rv = atun_session_agent_on_data(f->a, f->now + 1, ack1, sizeof(ack1));
    }
    cr_assert_eq(rv, ATUN_ERR_CALLBACK_FAILURE, "event %d", types[i]);
    cr_assert_eq(atun_session_agent_handle_expiry(f->a, f->now), ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(atun_session_agent_on_data(f->a, f->now, buf, 1), ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(atun_session_agent_drain(f->a, f->now, 0), ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(atun_session_agent_write(f->a, buf, sizeof(buf)), ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(atun_session_agent_get_expiry(f->a), ATUN_TSTAMP_MAX);
    fix_del(f);
  }
}

static int broken_rng(uint8_t *dest, size_t destlen, void *ud) { return -1; }

Test(agent, failing_rng_is_fatal) {
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  atun_rand rand = {broken_rng, NULL};
  rec r = {0};
  atun_session_agent *a;
  cr_assert_eq(atun_session_agent_new(&a, &s, on_event, &rand, atun_mem_default(), &r), 0);
  cr_assert_eq(atun_session_agent_start(a, T0), ATUN_ERR_CALLBACK_FAILURE);
  cr_assert_eq(atun_session_agent_get_expiry(a), ATUN_TSTAMP_MAX);
  cr_assert_eq(r.n, 0);
  atun_session_agent_del(a);
}

Test(agent, callback_may_not_reenter) {
  fix *f = fix_new();
  f->r.reenter = 1;
  cr_assert_eq(atun_session_agent_start(f->a, f->now), 0);
  cr_assert_eq(f->r.reenter_rv, ATUN_ERR_STATE);
  cr_assert_eq(atun_session_agent_get_epoch(f->a), 0);
  f->r.reenter = 0;
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, NULL, 0, NULL, 0), 0);
  fix_del(f);
}

/* --- bounds ------------------------------------------------------------------------------------ */

Test(agent, outbound_queue_bound_gives_the_connection_up) {
  /* A HeartbeatAck of fixed size: the queue is sized to hold exactly k of
   * them, the (k+1)-th finds it full. */
  atun_msg ackm = {.type = ATUN_FRAME_HEARTBEAT_ACK};
  ackm.u.heartbeat_ack.seq = 1000;
  ackm.u.heartbeat_ack.echo_sent_at = 1000;
  size_t s = (size_t)atun_frame_encoded_size(&ackm);
  size_t k = (ATUN_OUTQ_MIN + s - 1) / s;
  atun_session_agent_settings set;
  atun_session_agent_settings_default(&set);
  set.outq_max = k * s;
  fix *f = fix_new_with(&set, atun_mem_default(), 1);
  establish(f, 1000);
  atun_msg hb = {.type = ATUN_FRAME_HEARTBEAT};
  hb.u.heartbeat.seq = 1000;
  hb.u.heartbeat.sent_at = 1000;
  for (size_t i = 0; i < k; ++i) feed_msg(f, &hb);
  cr_assert_eq(atun_session_agent_pending(f->a), set.outq_max, "filled to the bound");
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  feed_msg(f, &hb);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert_eq(f->r.err, ATUN_ERR_FULL);
  cr_assert_eq(close_code(f), ATUN_APP_OVERLOADED);
  cr_assert_eq(atun_session_agent_pending(f->a), set.outq_max);
  fix_del(f);
}

/* One scripted life: every call either succeeds or fails with |fatal|
 * (allocation or callback failure), after which the machine only reports
 * that error. */
static int scripted_life(atun_failmem *fm, size_t fail_at, int fatal) {
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  atun_testrng rng;
  atun_testrng_seed(&rng, 5);
  atun_rand rand = atun_testrng_as_rand(&rng);
  rec *r = calloc(1, sizeof(*r));
  r->fail_at = fail_at;
  atun_session_agent *a;
  int rv = atun_session_agent_new(&a, &s, on_event, &rand, &fm->mem, r);
  if (rv != 0) {
    cr_assert_eq(rv, ATUN_ERR_NOMEM);
    free(r);
    return rv;
  }
  atun_prefix nets[2] = {prefix("10.0.0.0/8"), prefix("fd00::/16")};
  atun_domain doms[1] = {{"corp.example", 0}};
  atun_tstamp now = T0;
  uint8_t buf[4096];
  static const uint8_t hello_ack_bytes[] = {0x02, 7, 1, 1, 2, 2, 2, 0x43, 0xe8};
  static const uint8_t hb[] = {0x04, 9, 1, 1, 1, 2, 1, 0, 3, 1, 0};
  static const uint8_t ack1[] = {0x05, 6, 1, 1, 1, 2, 1, 0};
  static const uint8_t resp[] = {0x09, 3, 1, 1, 3};
  static const uint8_t csr[] = {0x30, 0x00};
  static const uint8_t goodbye[] = {0x06, 3, 1, 1, 1};
  rv = atun_session_agent_set_routes(a, now, nets, 1, NULL, 0);
  if (rv == 0) rv = atun_session_agent_start(a, now);
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now = atun_session_agent_get_expiry(a));
  if (rv == 0) rv = atun_session_agent_on_transport_connected(a, now);
  for (size_t i = 0; rv == 0 && i < sizeof(hello_ack_bytes); ++i)
    rv = atun_session_agent_on_data(a, now, hello_ack_bytes + i, 1);
  if (rv == 0) cr_assert_eq(atun_session_agent_get_state(a), ATUN_SESSION_AGENT_ESTABLISHED);
  if (rv == 0) rv = atun_session_agent_on_data(a, now, hb, sizeof(hb));
  if (rv == 0) rv = atun_session_agent_on_data(a, now, ack1, sizeof(ack1));
  if (rv == 0) rv = atun_session_agent_on_data(a, now, goodbye, sizeof(goodbye));
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now = atun_session_agent_get_expiry(a));
  if (rv == 0) rv = atun_session_agent_on_transport_connected(a, now);
  if (rv == 0) rv = atun_session_agent_on_data(a, now, hello_ack_bytes, sizeof(hello_ack_bytes));
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now += 1000 * MS);
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now += 1000 * MS);
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now += 1000 * MS);
  if (rv == 0) cr_assert_eq(atun_session_agent_get_state(a), ATUN_SESSION_AGENT_BACKOFF);
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now = atun_session_agent_get_expiry(a));
  if (rv == 0) rv = atun_session_agent_on_transport_connected(a, now);
  if (rv == 0) rv = atun_session_agent_on_data(a, now, hello_ack_bytes, sizeof(hello_ack_bytes));
  if (rv == 0) rv = atun_session_agent_request_renewal(a, now, csr, sizeof(csr), 0);
  if (rv == 0) rv = atun_session_agent_on_data(a, now, resp, sizeof(resp));
  if (rv == 0) rv = atun_session_agent_set_routes(a, now, nets, 2, doms, 1);
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now += 1000 * MS);
  while (rv == 0 && atun_session_agent_write(a, buf, sizeof(buf)) > 0) {
  }
  if (rv == 0) rv = atun_session_agent_on_transport_failed(a, now);
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now = atun_session_agent_get_expiry(a));
  if (rv == 0) rv = atun_session_agent_on_transport_connected(a, now);
  if (rv == 0) rv = atun_session_agent_on_data(a, now, hello_ack_bytes, sizeof(hello_ack_bytes));
  if (rv == 0) rv = atun_session_agent_drain(a, now, 0);
  if (rv == 0) rv = atun_session_agent_handle_expiry(a, now += 10 * SEC);
  if (rv != 0) {
    cr_assert_eq(rv, fatal, "%s", atun_strerror(rv));
    cr_assert_eq(atun_session_agent_handle_expiry(a, now), fatal);
    cr_assert_eq(atun_session_agent_get_expiry(a), ATUN_TSTAMP_MAX);
  } else {
    cr_assert_eq(atun_session_agent_get_state(a), ATUN_SESSION_AGENT_CLOSED);
  }
  atun_session_agent_del(a);
  free(r);
  return rv;
}

Test(agent, allocation_failure_at_every_index) {
  long index = 0;
  for (;; ++index) {
    atun_failmem fm;
    atun_failmem_init(&fm, index);
    int rv = scripted_life(&fm, 0, ATUN_ERR_NOMEM);
    cr_assert_eq(fm.live, 0, "leak with failure at allocation %ld", index);
    if (fm.failures == 0) {
      cr_assert_eq(rv, 0);
      break;
    }
    cr_assert_eq(rv, ATUN_ERR_NOMEM, "allocation %ld", index);
  }
  cr_assert_gt(index, 5, "the script allocates (%ld)", index);
}

Test(agent, callback_failure_at_every_event) {
  size_t index = 1;
  for (;; ++index) {
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    int rv = scripted_life(&fm, index, ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(fm.live, 0);
    if (rv == 0) break;
    cr_assert_eq(rv, ATUN_ERR_CALLBACK_FAILURE, "event %zu", index);
  }
  cr_assert_gt(index, 30, "the script emits events (%zu)", index);
}

Test(agent, unset_time_is_refused) {
  fix *f = fix_new();
  cr_assert_eq(atun_session_agent_start(f->a, ATUN_TSTAMP_MAX), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_IDLE);
  establish(f, 1000);
  cr_assert_eq(atun_session_agent_handle_expiry(f->a, ATUN_TSTAMP_MAX),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_agent_on_data(f->a, ATUN_TSTAMP_MAX, (const uint8_t *)"", 0),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  fix_del(f);
}

Test(agent, goodbye_before_hello_ack) {
  fix *f = fix_new();
  connect_up(f);
  atun_msg bye = {.type = ATUN_FRAME_GOODBYE};
  bye.u.goodbye.reason = ATUN_GOODBYE_ADMIN;
  feed_msg(f, &bye);
  cr_assert_eq(count(&f->r, ATUN_SESSION_AGENT_EV_GOODBYE), 1);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert_eq(close_code(f), ATUN_APP_NO_ERROR);
  fix_del(f);
}

/* Establishes, then fills the queue with acks nobody drains until not
 * one more fits. */
static fix *fix_full_queue(void) {
  atun_session_agent_settings set;
  atun_session_agent_settings_default(&set);
  set.outq_max = ATUN_OUTQ_MIN;
  fix *f = fix_new_with(&set, atun_mem_default(), 1);
  establish(f, 1000);
  atun_msg hb = {.type = ATUN_FRAME_HEARTBEAT};
  atun_msg ack = {.type = ATUN_FRAME_HEARTBEAT_ACK};
  size_t ack_size = (size_t)atun_frame_encoded_size(&ack);
  while (atun_session_agent_pending(f->a) + ack_size <= set.outq_max) feed_msg(f, &hb);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_ESTABLISHED);
  return f;
}

Test(agent, requests_into_a_full_queue_give_the_connection_up) {
  static const uint8_t csr[64] = {0x30};
  fix *f = fix_full_queue();
  cr_assert_eq(atun_session_agent_request_renewal(f->a, f->now, csr, sizeof(csr), 0), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert_eq(close_code(f), ATUN_APP_OVERLOADED);
  fix_del(f);

  static atun_prefix nets[16];
  for (size_t i = 0; i < 16; ++i) nets[i] = prefix("fd00::/16");
  f = fix_full_queue();
  cr_assert_eq(atun_session_agent_set_routes(f->a, f->now, nets, 16, NULL, 0), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert_eq(close_code(f), ATUN_APP_OVERLOADED);
  cr_assert_eq(atun_session_agent_get_epoch(f->a), 1, "kept for the next connection");
  fix_del(f);

  f = fix_full_queue();
  f->now += 1;
  cr_assert_eq(atun_session_agent_drain(f->a, f->now, 0xfffffff), 0);
  cr_assert_eq(state(f), ATUN_SESSION_AGENT_CLOSED, "no wait for a peer that does not read");
  cr_assert_eq(close_code(f), ATUN_APP_SHUTDOWN);
  fix_del(f);
}

Test(agent, state_names) {
  cr_assert_str_eq(atun_session_agent_state_name(ATUN_SESSION_AGENT_HELLO_SENT),
                   "hello_sent");
  cr_assert_str_eq(atun_session_agent_state_name(ATUN_SESSION_AGENT_CLOSED), "closed");
  cr_assert_str_eq(atun_session_agent_state_name(99), "unknown");
  cr_assert_str_eq(atun_session_agent_state_name(-1), "unknown");
}
