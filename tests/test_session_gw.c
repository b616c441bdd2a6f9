/*
 * The gateway's control-session machine: alone, fed hand-made frames, and
 * wired back to back with the agent's machine in memory (bytes pumped
 * between the two, time advanced by hand).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_agent.h"
#include "session_gw.h"
#include "support.h"
#include "varint.h"

#define MS ATUN_NS_PER_MS
#define SEC ATUN_NS_PER_S
#define T0 (1000 * SEC)

/* --- gateway event recorder -------------------------------------------------------------- */

#define REC_MAX (1 << 15)

typedef struct grec {
  int types[REC_MAX];
  size_t n;
  int fail_type;
  size_t fail_at; /* 1-based event number whose callback fails; 0: none */
  int reenter;
  int reenter_rv;
  uint32_t version;
  char software[ATUN_SOFTWARE_VERSION_MAX + 1];
  uint64_t epoch;
  size_t subnets, domains;
  uint64_t hb_seq;
  uint32_t hb_streams;
  uint64_t hb_rtt;
  uint64_t goodbye_reason;
  int err;
  uint64_t app_error;
  int remote;
  char message[ATUN_MESSAGE_MAX + 1];
  size_t csr_len;
} grec;

static size_t gcount(const grec *r, int type) {
  size_t c = 0;
  for (size_t i = 0; i < r->n; ++i) c += r->types[i] == type;
  return c;
}

static int on_gw_event(atun_session_gw *gw, const atun_session_gw_event *ev,
                       void *ud) {
  grec *r = ud;
  cr_assert_lt(r->n, REC_MAX);
  r->types[r->n++] = ev->type;
  switch (ev->type) {
  case ATUN_SESSION_GW_EV_STATE:
    cr_assert_neq(ev->u.state.old_state, ev->u.state.new_state);
    break;
  case ATUN_SESSION_GW_EV_ESTABLISHED:
    r->version = ev->u.established.version;
    snprintf(r->software, sizeof(r->software), "%s",
             ev->u.established.hello->software_version);
    break;
  case ATUN_SESSION_GW_EV_ADVERTISE:
    r->epoch = ev->u.advertise->epoch;
    r->subnets = ev->u.advertise->subnet_count;
    r->domains = ev->u.advertise->domain_count;
    break;
  case ATUN_SESSION_GW_EV_HEARTBEAT:
    r->hb_seq = ev->u.heartbeat.seq;
    r->hb_streams = ev->u.heartbeat.active_streams;
    r->hb_rtt = ev->u.heartbeat.rtt_ns;
    break;
  case ATUN_SESSION_GW_EV_GOODBYE:
    r->goodbye_reason = ev->u.goodbye.reason;
    cr_assert_not_null(ev->u.goodbye.message);
    break;
  case ATUN_SESSION_GW_EV_ERROR:
    r->err = ev->u.error.err;
    r->app_error = ev->u.error.app_error;
    r->remote = ev->u.error.remote;
    cr_assert_not_null(ev->u.error.message);
    snprintf(r->message, sizeof(r->message), "%s", ev->u.error.message);
    break;
  case ATUN_SESSION_GW_EV_RENEW_REQUEST: r->csr_len = ev->u.renew->csr_len; break;
  }
  if (r->reenter) r->reenter_rv = atun_session_gw_drain(gw, 0, 0);
  return ev->type == r->fail_type || r->n == r->fail_at ? -1 : 0;
}

/* --- agent side recorder (for the pair) ------------------------------------------------------ */

typedef struct arec {
  size_t established, connect_now, rtt, goodbye, error, renew, dead;
  uint64_t rtt_ns;
  int err;
  uint64_t app_error;
  int remote;
  char message[ATUN_MESSAGE_MAX + 1];
  uint64_t renew_status;
} arec;

static int on_agent_event(atun_session_agent *a,
                          const atun_session_agent_event *ev, void *ud) {
  arec *r = ud;
  switch (ev->type) {
  case ATUN_SESSION_AGENT_EV_ESTABLISHED: ++r->established; break;
  case ATUN_SESSION_AGENT_EV_CONNECT_NOW: ++r->connect_now; break;
  case ATUN_SESSION_AGENT_EV_RTT_SAMPLE:
    ++r->rtt;
    r->rtt_ns = ev->u.rtt_ns;
    break;
  case ATUN_SESSION_AGENT_EV_GOODBYE: ++r->goodbye; break;
  case ATUN_SESSION_AGENT_EV_GATEWAY_DEAD: ++r->dead; break;
  case ATUN_SESSION_AGENT_EV_ERROR:
    ++r->error;
    r->err = ev->u.error.err;
    r->app_error = ev->u.error.app_error;
    r->remote = ev->u.error.remote;
    snprintf(r->message, sizeof(r->message), "%s", ev->u.error.message);
    break;
  case ATUN_SESSION_AGENT_EV_RENEW_RESPONSE:
    ++r->renew;
    r->renew_status = ev->u.renew->status;
    break;
  }
  return 0;
}

/* --- gateway alone ------------------------------------------------------------------------- */

typedef struct gfix {
  atun_session_gw_settings settings;
  atun_session_gw *g;
  grec r;
  atun_tstamp now;
} gfix;

static gfix *gfix_new_with(const atun_session_gw_settings *s, const atun_mem *mem) {
  gfix *f = calloc(1, sizeof(*f));
  cr_assert_not_null(f);
  f->settings = *s;
  f->now = T0;
  int rv = atun_session_gw_new(&f->g, &f->settings, on_gw_event, mem, &f->r);
  cr_assert_eq(rv, 0, "new: %s", atun_strerror(rv));
  return f;
}

static gfix *gfix_new(void) {
  atun_session_gw_settings s;
  atun_session_gw_settings_default(&s);
  snprintf(s.software_version, sizeof(s.software_version), "atun-gateway test");
  return gfix_new_with(&s, atun_mem_default());
}

static void gfix_del(gfix *f) {
  atun_session_gw_del(f->g);
  free(f);
}

static int gstate(const gfix *f) { return atun_session_gw_get_state(f->g); }

static void gfeed_msg(gfix *f, const atun_msg *msg) {
  static uint8_t buf[ATUN_CONTROL_PAYLOAD_MAX + ATUN_FRAME_HEADER_MAX];
  ssize_t n = atun_frame_encode(buf, sizeof(buf), msg);
  cr_assert_gt(n, 0, "encode: %s", atun_strerror((int)n));
  cr_assert_eq(atun_session_gw_on_data(f->g, f->now, buf, (size_t)n), 0);
}

static void gfeed_raw(gfix *f, const uint8_t *p, size_t n) {
  cr_assert_eq(atun_session_gw_on_data(f->g, f->now, p, n), 0);
}

static size_t gtake_out(gfix *f, atun_msg *out, size_t max) {
  static uint8_t buf[1 << 20];
  size_t len = 0;
  ssize_t n;
  while ((n = atun_session_gw_write(f->g, buf + len, 5)) > 0) len += (size_t)n;
  cr_assert_eq(n, 0);
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

static void gexpect_one(gfix *f, uint8_t type, atun_msg *out) {
  atun_msg m[8];
  size_t n = gtake_out(f, m, 8);
  cr_assert_eq(n, 1, "expected one %s, got %zu", atun_frame_type_name(type), n);
  cr_assert_eq(m[0].type, type, "got %s", atun_frame_type_name(m[0].type));
  *out = m[0];
}

/* Drops whatever the gateway queued. */
static void gdiscard(gfix *f) {
  uint8_t buf[512];
  while (atun_session_gw_write(f->g, buf, sizeof(buf)) > 0) {
  }
}

static void gexpect_none(gfix *f) {
  atun_msg m[4];
  cr_assert_eq(gtake_out(f, m, 4), 0);
}

static uint64_t gclose_code(gfix *f) {
  uint64_t code = UINT64_MAX;
  cr_assert(atun_session_gw_want_close(f->g, &code), "no close requested");
  return code;
}

static void hello_msg(atun_msg *m, uint32_t min, uint32_t max) {
  memset(m, 0, sizeof(*m));
  m->type = ATUN_FRAME_HELLO;
  m->u.hello.min_version = min;
  m->u.hello.max_version = max;
  snprintf(m->u.hello.software_version, sizeof(m->u.hello.software_version),
           "atun-agent 9");
}

static void gw_establish(gfix *f) {
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), 0);
  atun_msg h;
  hello_msg(&h, 1, 5);
  gfeed_msg(f, &h);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
  atun_msg ack;
  gexpect_one(f, ATUN_FRAME_HELLO_ACK, &ack);
}

static void agent_hb(gfix *f, uint64_t seq, uint32_t streams) {
  atun_msg m = {.type = ATUN_FRAME_HEARTBEAT};
  m.u.heartbeat.seq = seq;
  m.u.heartbeat.sent_at = 77;
  m.u.heartbeat.active_stream_count = streams;
  gfeed_msg(f, &m);
}

/* --- settings, Hello --------------------------------------------------------------------------- */

Test(gw, settings_are_checked) {
  atun_session_gw_settings s;
  atun_session_gw *g;
  grec r = {0};
  const atun_mem *mem = atun_mem_default();
  atun_session_gw_settings_default(&s);
  cr_assert_eq(s.offline_timeout_ns, 3 * s.heartbeat_interval_ns);
  cr_assert_eq(atun_session_gw_new(&g, &s, on_gw_event, mem, &r), 0);
  atun_session_gw_del(g);
  cr_assert_eq(atun_session_gw_new(NULL, &s, on_gw_event, mem, &r),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_gw_new(&g, &s, NULL, mem, &r), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_gw_new(&g, &s, on_gw_event, NULL, &r),
               ATUN_ERR_INVALID_ARGUMENT);
#define EXPECT(field, value, rv_expected)                                        \
  do {                                                                           \
    atun_session_gw_settings_default(&s);                                        \
    s.field = value;                                                             \
    int rv_ = atun_session_gw_new(&g, &s, on_gw_event, mem, &r);                 \
    cr_assert_eq(rv_, rv_expected, #field " = " #value);                         \
    if (rv_ == 0) atun_session_gw_del(g);                                        \
  } while (0)
  EXPECT(min_version, 0, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(max_version, 1, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(heartbeat_interval_ns, ATUN_SESSION_HEARTBEAT_MIN_NS - MS, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(heartbeat_interval_ns, ATUN_SESSION_HEARTBEAT_MIN_NS, 0);
  EXPECT(heartbeat_interval_ns, ATUN_SESSION_HEARTBEAT_MAX_NS + MS, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(heartbeat_interval_ns, 2 * SEC + 1, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(offline_timeout_ns, 10 * SEC - MS, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(offline_timeout_ns, 10 * SEC, 0);
  EXPECT(offline_timeout_ns, 30 * SEC + 1, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(offline_timeout_ns, ATUN_SESSION_TIMEOUT_MAX_NS + MS, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(hello_timeout_ns, 0, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(drain_timeout_ns, ATUN_SESSION_TIMEOUT_MAX_NS + 1, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(outq_max, ATUN_OUTQ_MIN - 1, ATUN_ERR_INVALID_ARGUMENT);
  EXPECT(outq_max, ATUN_OUTQ_MIN, 0);
  EXPECT(software_version[0], '\x7f', ATUN_ERR_INVALID_ARGUMENT);
#undef EXPECT
  cr_assert_eq(r.n, 0);
}

Test(gw, hello_negotiates_the_highest_common_version) {
  atun_session_gw_settings s;
  atun_session_gw_settings_default(&s);
  s.min_version = 2;
  s.max_version = 4;
  s.has_agent_id = 1;
  memset(s.agent_id, 0xab, sizeof(s.agent_id));
  gfix *f = gfix_new_with(&s, atun_mem_default());
  cr_assert_eq(atun_session_gw_on_data(f->g, f->now, (const uint8_t *)"x", 1),
               ATUN_ERR_STATE, "no stream before the transport is up");
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), 0);
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), ATUN_ERR_STATE);
  atun_msg h;
  hello_msg(&h, 1, 3);
  gfeed_msg(f, &h);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
  cr_assert_eq(f->r.version, 3);
  cr_assert_str_eq(f->r.software, "atun-agent 9");
  atun_msg ack;
  gexpect_one(f, ATUN_FRAME_HELLO_ACK, &ack);
  cr_assert_eq(ack.u.hello_ack.chosen_version, 3);
  cr_assert_eq(ack.u.hello_ack.heartbeat_interval_ms, 10000);
  cr_assert_eq(ack.u.hello_ack.offline_timeout_ms, 30000);
  cr_assert_eq(ack.u.hello_ack.has_agent_id, 1);
  cr_assert_eq(ack.u.hello_ack.agent_id[15], 0xab);
  cr_assert(atun_session_gw_is_online(f->g));
  gfix_del(f);
}

Test(gw, version_mismatch_names_the_range_and_closes) {
  gfix *f = gfix_new();
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), 0);
  atun_msg h;
  hello_msg(&h, 3, 7);
  gfeed_msg(f, &h);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_VERSION_MISMATCH);
  cr_assert_eq(f->r.err, ATUN_ERR_VERSION);
  cr_assert_eq(f->r.app_error, ATUN_APP_VERSION_MISMATCH);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_ESTABLISHED), 0);
  atun_msg e;
  gexpect_one(f, ATUN_FRAME_ERROR, &e);
  cr_assert_eq(e.u.error.code, ATUN_APP_VERSION_MISMATCH);
  cr_assert_eq(e.u.error.supported_min_version, ATUN_PROTO_VERSION_MIN);
  cr_assert_eq(e.u.error.supported_max_version, ATUN_PROTO_VERSION_MAX);
  cr_assert_str_eq(e.u.error.message, "supported protocol versions: 2..2");
  atun_msg_free(&e, atun_mem_default());
  cr_assert_eq(atun_session_gw_get_expiry(f->g), ATUN_TSTAMP_MAX);
  gfix_del(f);
}

Test(gw, hello_timeout_at_exactly_the_setting) {
  gfix *f = gfix_new();
  cr_assert_eq(atun_session_gw_get_expiry(f->g), ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), 0);
  cr_assert_eq(atun_session_gw_get_expiry(f->g), f->now + 10 * SEC);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, f->now + 10 * SEC - 1), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_AWAIT_HELLO);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, f->now + 10 * SEC), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_HANDSHAKE_TIMEOUT);
  cr_assert_eq(f->r.err, ATUN_ERR_TIMEOUT);
  atun_msg e;
  gexpect_one(f, ATUN_FRAME_ERROR, &e);
  cr_assert_eq(e.u.error.code, ATUN_APP_HANDSHAKE_TIMEOUT);
  atun_msg_free(&e, atun_mem_default());
  gfix_del(f);
}

/* --- violations ------------------------------------------------------------------------------- */

typedef struct gbad {
  const char *what;
  uint8_t bytes[40];
  size_t len;
  uint64_t app_error;
  int after_hello;
} gbad;

static const gbad gbad_frames[] = {
    {"heartbeat before hello", {0x04, 9, 1, 1, 1, 2, 1, 0, 3, 1, 0}, 11,
     ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"goodbye before hello", {0x06, 3, 1, 1, 0}, 5, ATUN_APP_PROTOCOL_VIOLATION, 0},
    {"unknown type before hello", {0x42, 0}, 2, ATUN_APP_UNKNOWN_FRAME, 0},
    {"malformed hello (min > max)", {0x01, 6, 1, 1, 3, 2, 1, 2}, 8,
     ATUN_APP_MALFORMED_FRAME, 0},
    {"hello missing max", {0x01, 3, 1, 1, 2}, 5, ATUN_APP_MALFORMED_FRAME, 0},
    {"hello with a field cut short", {0x01, 3, 1, 2, 2}, 5, ATUN_APP_MALFORMED_FRAME, 0},
    {"oversize before hello", {0x01, 0x80, 0x10, 0x00, 0x01}, 5,
     ATUN_APP_FRAME_TOO_LARGE, 0},
    {"second hello", {0x01, 6, 1, 1, 2, 2, 1, 2}, 8, ATUN_APP_PROTOCOL_VIOLATION, 1},
    {"hello_ack from an agent", {0x02, 6, 1, 1, 2, 2, 1, 10}, 8,
     ATUN_APP_PROTOCOL_VIOLATION, 1},
    {"cert_renew_response from an agent", {0x09, 3, 1, 1, 2}, 5,
     ATUN_APP_PROTOCOL_VIOLATION, 1},
    {"connect_response on the control stream", {0x11, 3, 1, 1, 0}, 5,
     ATUN_APP_PROTOCOL_VIOLATION, 1},
    {"connect_request on the control stream",
     {0x10, 27, 1, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 2, 1, 22,
      3, 4, 10, 0, 0, 1},
     29, ATUN_APP_PROTOCOL_VIOLATION, 1},
    {"oversize session frame", {0x10, 0x50, 0x01}, 3, ATUN_APP_FRAME_TOO_LARGE, 1},
    {"heartbeat_ack never sent", {0x05, 6, 1, 1, 1, 2, 1, 0}, 8,
     ATUN_APP_PROTOCOL_VIOLATION, 1},
    {"unknown type", {0xc0, 0}, 2, ATUN_APP_UNKNOWN_FRAME, 1},
    {"oversize control frame", {0x03, 0x80, 0x10, 0x00, 0x01}, 5,
     ATUN_APP_FRAME_TOO_LARGE, 1},
    {"malformed advertise (bad prefix)", {0x03, 10, 1, 1, 1, 2, 5, 33, 10, 0, 0, 0}, 12,
     ATUN_APP_MALFORMED_FRAME, 1},
    {"malformed heartbeat (duplicate field)",
     {0x04, 12, 1, 1, 1, 1, 1, 1, 2, 1, 0, 3, 1, 0}, 14, ATUN_APP_MALFORMED_FRAME, 1},
    {"trailing bytes in an integer", {0x04, 10, 1, 2, 1, 0, 2, 1, 0, 3, 1, 0}, 12,
     ATUN_APP_MALFORMED_FRAME, 1},
};

Test(gw, every_protocol_violation_closes_with_its_code) {
  for (size_t i = 0; i < sizeof(gbad_frames) / sizeof(gbad_frames[0]); ++i) {
    const gbad *b = &gbad_frames[i];
    gfix *f = gfix_new();
    if (b->after_hello)
      gw_establish(f);
    else
      cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), 0);
    uint8_t buf[64];
    static const uint8_t hb[] = {0x04, 9, 1, 1, 1, 2, 1, 0, 3, 1, 0};
    memcpy(buf, b->bytes, b->len);
    memcpy(buf + b->len, hb, sizeof(hb));
    gfeed_raw(f, buf, b->len + sizeof(hb));
    cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED, "%s", b->what);
    cr_assert_eq(gclose_code(f), b->app_error, "%s: closed with %s", b->what,
                 atun_app_error_name(gclose_code(f)));
    cr_assert_eq(f->r.app_error, b->app_error, "%s", b->what);
    cr_assert_eq(f->r.remote, 0, "%s", b->what);
    cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_HEARTBEAT), 0,
                 "%s: the frame after it is dropped", b->what);
    atun_msg e;
    gexpect_one(f, ATUN_FRAME_ERROR, &e);
    cr_assert_eq(e.u.error.code, b->app_error, "%s", b->what);
    atun_msg_free(&e, atun_mem_default());
    gfeed_raw(f, hb, sizeof(hb));
    gexpect_none(f);
    cr_assert_eq(atun_session_gw_drain(f->g, f->now, 0), ATUN_ERR_STATE);
    gfix_del(f);
  }
}

/* RouteAdvertise with |subnets| IPv4 /32 entries, built by hand because the
 * encoder refuses to write one over the limit. */
static size_t build_advertise(uint8_t *buf, size_t subnets) {
  size_t payload = 3 + subnets * 7;
  uint8_t *p = buf;
  *p++ = ATUN_FRAME_ROUTE_ADVERTISE;
  p = atun_varint_put(p, payload);
  *p++ = 1, *p++ = 1, *p++ = 1; /* epoch 1 */
  for (size_t i = 0; i < subnets; ++i) {
    *p++ = 2, *p++ = 5, *p++ = 32;
    *p++ = 10, *p++ = (uint8_t)(i >> 16), *p++ = (uint8_t)(i >> 8), *p++ = (uint8_t)i;
  }
  return (size_t)(p - buf);
}

Test(gw, advertisement_list_bound_at_the_bound) {
  static uint8_t buf[64 * 1024];
  gfix *f = gfix_new();
  gw_establish(f);
  gfeed_raw(f, buf, build_advertise(buf, ATUN_SUBNETS_MAX));
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
  cr_assert_eq(f->r.subnets, ATUN_SUBNETS_MAX);
  gfeed_raw(f, buf, build_advertise(buf, ATUN_SUBNETS_MAX + 1));
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_LIMIT_EXCEEDED);
  gfix_del(f);
}

Test(gw, big_advertisement_does_not_pin_the_reader_buffer) {
  static uint8_t buf[64 * 1024];
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_session_gw_settings s;
  atun_session_gw_settings_default(&s);
  gfix *f = gfix_new_with(&s, &fm.mem);
  gw_establish(f);
  size_t base = fm.live_bytes;
  gfeed_raw(f, buf, build_advertise(buf, ATUN_SUBNETS_MAX));
  cr_assert_eq(f->r.subnets, ATUN_SUBNETS_MAX);
  cr_assert_gt(fm.peak_bytes, base + 28000);
  cr_assert_leq(fm.live_bytes, base + ATUN_OUTQ_KEEP);
  gfix_del(f);
  cr_assert_eq(fm.live, 0);
}

/* --- heartbeats, liveness ------------------------------------------------------------------------ */

Test(gw, acks_heartbeats_and_reports_them) {
  gfix *f = gfix_new();
  gw_establish(f);
  agent_hb(f, 5, 12);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_HEARTBEAT), 1);
  cr_assert_eq(f->r.hb_seq, 5);
  cr_assert_eq(f->r.hb_streams, 12);
  cr_assert_eq(f->r.hb_rtt, 0, "no sample yet");
  atun_msg ack;
  gexpect_one(f, ATUN_FRAME_HEARTBEAT_ACK, &ack);
  cr_assert_eq(ack.u.heartbeat_ack.seq, 5);
  cr_assert_eq(ack.u.heartbeat_ack.echo_sent_at, 77);
  gfix_del(f);
}

Test(gw, own_heartbeats_give_rtt) {
  gfix *f = gfix_new();
  gw_establish(f);
  atun_tstamp t = f->now;
  cr_assert_eq(atun_session_gw_get_expiry(f->g), t + 10 * SEC);
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    f->now = t + seq * 10 * SEC;
    agent_hb(f, seq, 0); /* keeps it online */
    atun_msg ack;
    gexpect_one(f, ATUN_FRAME_HEARTBEAT_ACK, &ack);
    cr_assert_eq(atun_session_gw_handle_expiry(f->g, f->now), 0);
    atun_msg hb;
    gexpect_one(f, ATUN_FRAME_HEARTBEAT, &hb);
    cr_assert_eq(hb.u.heartbeat.seq, seq);
    cr_assert_eq(hb.u.heartbeat.sent_at, f->now);
    f->now += 40 * MS;
    atun_msg a = {.type = ATUN_FRAME_HEARTBEAT_ACK};
    a.u.heartbeat_ack.seq = seq;
    a.u.heartbeat_ack.echo_sent_at = hb.u.heartbeat.sent_at;
    gfeed_msg(f, &a);
    gfeed_msg(f, &a); /* a duplicate is ignored */
    cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
    cr_assert_eq(atun_session_gw_get_rtt(f->g), 40 * MS);
  }
  agent_hb(f, 9, 0);
  cr_assert_eq(f->r.hb_rtt, 40 * MS);
  gfix_del(f);
}

Test(gw, offline_at_exactly_the_timeout_and_back) {
  gfix *f = gfix_new();
  gw_establish(f);
  atun_tstamp t = f->now;
  /* Heartbeats at +5 s keep it; silence from there on for 30 s. */
  f->now = t + 5 * SEC;
  agent_hb(f, 1, 0);
  atun_msg ack;
  gexpect_one(f, ATUN_FRAME_HEARTBEAT_ACK, &ack);
  atun_tstamp seen = f->now;
  for (atun_tstamp e; (e = atun_session_gw_get_expiry(f->g)) < seen + 30 * SEC;) {
    cr_assert_eq(atun_session_gw_handle_expiry(f->g, e), 0);
    gdiscard(f);
  }
  cr_assert_eq(atun_session_gw_get_expiry(f->g), seen + 30 * SEC);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, seen + 30 * SEC - 1), 0);
  cr_assert(atun_session_gw_is_online(f->g));
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_OFFLINE), 0);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, seen + 30 * SEC), 0);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_OFFLINE), 1);
  cr_assert_not(atun_session_gw_is_online(f->g));
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED, "offline is not closed");
  /* No second OFFLINE; the heartbeat timer still runs. */
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, seen + 60 * SEC), 0);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_OFFLINE), 1);
  f->now = seen + 61 * SEC;
  agent_hb(f, 2, 0);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_ONLINE), 1);
  cr_assert(atun_session_gw_is_online(f->g));
  cr_assert_eq(atun_session_gw_get_expiry(f->g), seen + 70 * SEC,
               "next own heartbeat comes before the new offline deadline");
  gfix_del(f);
}

Test(gw, an_advertisement_counts_as_seen) {
  gfix *f = gfix_new();
  gw_establish(f);
  f->now += 29 * SEC;
  atun_msg adv = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  adv.u.route_advertise.epoch = 4;
  gfeed_msg(f, &adv);
  cr_assert_eq(f->r.epoch, 4);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, f->now + 30 * SEC - 1), 0);
  cr_assert(atun_session_gw_is_online(f->g));
  gfix_del(f);
}

/* --- goodbye, error, close ------------------------------------------------------------------------- */

Test(gw, goodbye_from_the_agent_drains) {
  gfix *f = gfix_new();
  gw_establish(f);
  atun_msg bye = {.type = ATUN_FRAME_GOODBYE};
  bye.u.goodbye.reason = ATUN_GOODBYE_SHUTDOWN;
  gfeed_msg(f, &bye);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_DRAINING);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_GOODBYE), 1);
  cr_assert_eq(f->r.goodbye_reason, ATUN_GOODBYE_SHUTDOWN);
  cr_assert_not(atun_session_gw_is_online(f->g));
  /* Ignored while draining: advertisements, renewals, another Goodbye. */
  atun_msg adv = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  adv.u.route_advertise.epoch = 9;
  gfeed_msg(f, &adv);
  gfeed_msg(f, &bye);
  static uint8_t csr[] = {0x30, 0x00};
  atun_msg req = {.type = ATUN_FRAME_CERT_RENEW_REQUEST};
  req.u.cert_renew_request.csr = csr;
  req.u.cert_renew_request.csr_len = sizeof(csr);
  gfeed_msg(f, &req);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_ADVERTISE), 0);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_GOODBYE), 1);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_RENEW_REQUEST), 0);
  /* Heartbeats are still acked. */
  agent_hb(f, 1, 0);
  atun_msg ack;
  gexpect_one(f, ATUN_FRAME_HEARTBEAT_ACK, &ack);
  cr_assert_eq(atun_session_gw_get_expiry(f->g), f->now + 30 * SEC);
  cr_assert_eq(atun_session_gw_on_transport_failed(f->g, f->now), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_ERROR), 0, "a drained end is no error");
  gfix_del(f);
}

Test(gw, drain_timeout_and_stream_end) {
  gfix *f = gfix_new();
  gw_establish(f);
  cr_assert_eq(atun_session_gw_drain(f->g, f->now, ATUN_VARINT_MAX + 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_gw_drain(f->g, f->now, ATUN_GOODBYE_RESTART), 0);
  cr_assert_eq(atun_session_gw_drain(f->g, f->now, ATUN_GOODBYE_RESTART), ATUN_ERR_STATE);
  atun_msg bye;
  gexpect_one(f, ATUN_FRAME_GOODBYE, &bye);
  cr_assert_eq(bye.u.goodbye.reason, ATUN_GOODBYE_RESTART);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, f->now + 30 * SEC - 1), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_DRAINING);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, f->now + 30 * SEC), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_SHUTDOWN);
  gfix_del(f);

  f = gfix_new();
  gw_establish(f);
  cr_assert_eq(atun_session_gw_drain(f->g, f->now, 0), 0);
  cr_assert_eq(atun_session_gw_on_stream_closed(f->g, f->now), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_NO_ERROR);
  gfix_del(f);

  f = gfix_new();
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), 0);
  cr_assert_eq(atun_session_gw_drain(f->g, f->now, 0), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_SHUTDOWN);
  gexpect_none(f);
  gfix_del(f);
}

Test(gw, error_from_the_agent_and_lost_streams) {
  gfix *f = gfix_new();
  gw_establish(f);
  atun_msg e = {.type = ATUN_FRAME_ERROR};
  e.u.error.code = ATUN_APP_INTERNAL;
  e.u.error.message = "agent out of memory";
  gfeed_msg(f, &e);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(f->r.remote, 1);
  cr_assert_str_eq(f->r.message, "agent out of memory");
  cr_assert_eq(gclose_code(f), ATUN_APP_INTERNAL);
  gexpect_none(f);
  gfix_del(f);

  f = gfix_new();
  gw_establish(f);
  cr_assert_eq(atun_session_gw_on_stream_closed(f->g, f->now), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(f->r.err, ATUN_ERR_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_PROTOCOL_VIOLATION);
  size_t n = f->r.n;
  cr_assert_eq(atun_session_gw_on_stream_closed(f->g, f->now), 0);
  cr_assert_eq(atun_session_gw_on_transport_failed(f->g, f->now), 0);
  cr_assert_eq(f->r.n, n, "reports after the end change nothing");
  gfix_del(f);

  f = gfix_new();
  gw_establish(f);
  cr_assert_eq(atun_session_gw_on_transport_failed(f->g, f->now), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(f->r.err, ATUN_ERR_CLOSED);
  gfix_del(f);
}

Test(gw, close_for_the_registry) {
  gfix *f = gfix_new();
  gw_establish(f);
  cr_assert_eq(atun_session_gw_close(f->g, f->now, ATUN_VARINT_MAX + 1, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_session_gw_close(f->g, f->now, ATUN_APP_REVOKED, "bad\x01"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
  cr_assert_eq(atun_session_gw_close(f->g, f->now, ATUN_APP_REVOKED, "revoked"), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_REVOKED);
  atun_msg e;
  gexpect_one(f, ATUN_FRAME_ERROR, &e);
  cr_assert_eq(e.u.error.code, ATUN_APP_REVOKED);
  cr_assert_str_eq(e.u.error.message, "revoked");
  atun_msg_free(&e, atun_mem_default());
  cr_assert_eq(atun_session_gw_close(f->g, f->now, ATUN_APP_REVOKED, NULL), ATUN_ERR_STATE);
  gfix_del(f);

  f = gfix_new();
  cr_assert_eq(atun_session_gw_close(f->g, f->now, ATUN_APP_REPLACED, NULL), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  gexpect_none(f);
  gfix_del(f);
}

/* --- renewal ------------------------------------------------------------------------------------ */

Test(gw, renewal_request_and_response) {
  gfix *f = gfix_new();
  gw_establish(f);
  static uint8_t cert[] = {0x30, 0x01, 0x00};
  cr_assert_eq(atun_session_gw_send_renew_response(f->g, f->now, ATUN_CERT_STATUS_OK,
                                                   cert, sizeof(cert), NULL),
               ATUN_ERR_STATE, "nothing asked");
  static uint8_t csr[] = {0x30, 0x02, 0x05, 0x00};
  atun_msg req = {.type = ATUN_FRAME_CERT_RENEW_REQUEST};
  req.u.cert_renew_request.csr = csr;
  req.u.cert_renew_request.csr_len = sizeof(csr);
  gfeed_msg(f, &req);
  gfeed_msg(f, &req); /* while one waits: ignored */
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_RENEW_REQUEST), 1);
  cr_assert_eq(f->r.csr_len, sizeof(csr));
  cr_assert_eq(atun_session_gw_send_renew_response(f->g, f->now, ATUN_CERT_STATUS_OK,
                                                   NULL, 0, NULL),
               ATUN_ERR_MISSING_FIELD);
  cr_assert_eq(atun_session_gw_send_renew_response(f->g, f->now, 99, NULL, 0, NULL),
               ATUN_ERR_MALFORMED);
  gexpect_none(f);
  cr_assert_eq(atun_session_gw_send_renew_response(f->g, f->now, ATUN_CERT_STATUS_OK,
                                                   cert, sizeof(cert), "renewed"),
               0);
  atun_msg resp;
  gexpect_one(f, ATUN_FRAME_CERT_RENEW_RESPONSE, &resp);
  cr_assert_eq(resp.u.cert_renew_response.cert_len, sizeof(cert));
  atun_msg_free(&resp, atun_mem_default());
  cr_assert_eq(atun_session_gw_send_renew_response(f->g, f->now, ATUN_CERT_STATUS_OK,
                                                   cert, sizeof(cert), NULL),
               ATUN_ERR_STATE, "answered already");
  gfeed_msg(f, &req);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_RENEW_REQUEST), 2);
  gfix_del(f);
}

/* --- callbacks and bounds ------------------------------------------------------------------------ */

Test(gw, failing_callback_is_fatal_and_sticky) {
  static const int types[] = {ATUN_SESSION_GW_EV_STATE, ATUN_SESSION_GW_EV_ESTABLISHED,
                              ATUN_SESSION_GW_EV_HEARTBEAT, ATUN_SESSION_GW_EV_OFFLINE};
  for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); ++i) {
    gfix *f = gfix_new();
    f->r.fail_type = types[i];
    static const uint8_t hello[] = {0x01, 6, 1, 1, 2, 2, 1, 2};
    static const uint8_t hb[] = {0x04, 9, 1, 1, 1, 2, 1, 0, 3, 1, 0};
    int rv = atun_session_gw_on_transport_connected(f->g, f->now);
    if (rv == 0) rv = atun_session_gw_on_data(f->g, f->now, hello, sizeof(hello));
    if (rv == 0) rv = atun_session_gw_on_data(f->g, f->now, hb, sizeof(hb));
    if (rv == 0) rv = atun_session_gw_handle_expiry(f->g, f->now + 30 * SEC);
    cr_assert_eq(rv, ATUN_ERR_CALLBACK_FAILURE, "event %d", types[i]);
    uint8_t buf[16];
    cr_assert_eq(atun_session_gw_on_data(f->g, f->now, hb, 1), ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(atun_session_gw_write(f->g, buf, sizeof(buf)), ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(atun_session_gw_close(f->g, f->now, 0, NULL), ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(atun_session_gw_get_expiry(f->g), ATUN_TSTAMP_MAX);
    gfix_del(f);
  }
}

Test(gw, callback_may_not_reenter) {
  gfix *f = gfix_new();
  f->r.reenter = 1;
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, f->now), 0);
  cr_assert_eq(f->r.reenter_rv, ATUN_ERR_STATE);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_AWAIT_HELLO);
  gfix_del(f);
}

Test(gw, outbound_queue_bound_closes_as_overloaded) {
  atun_msg ackm = {.type = ATUN_FRAME_HEARTBEAT_ACK};
  ackm.u.heartbeat_ack.seq = 1;
  ackm.u.heartbeat_ack.echo_sent_at = 77;
  size_t s = (size_t)atun_frame_encoded_size(&ackm);
  size_t k = (ATUN_OUTQ_MIN + s - 1) / s;
  atun_session_gw_settings set;
  atun_session_gw_settings_default(&set);
  set.outq_max = k * s;
  gfix *f = gfix_new_with(&set, atun_mem_default());
  gw_establish(f);
  for (size_t i = 0; i < k; ++i) agent_hb(f, 1, 0);
  cr_assert_eq(atun_session_gw_pending(f->g), set.outq_max);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
  agent_hb(f, 1, 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(f->r.err, ATUN_ERR_FULL);
  cr_assert_eq(gclose_code(f), ATUN_APP_OVERLOADED);
  cr_assert_eq(gcount(&f->r, ATUN_SESSION_GW_EV_HEARTBEAT), k);
  gfix_del(f);
}

/* One scripted life: every call either succeeds or fails with |fatal|,
 * after which the machine only reports that error. */
static int gw_scripted_life(atun_failmem *fm, size_t fail_at, int fatal) {
  atun_session_gw_settings s;
  atun_session_gw_settings_default(&s);
  grec *r = calloc(1, sizeof(*r));
  r->fail_at = fail_at;
  atun_session_gw *g;
  int rv = atun_session_gw_new(&g, &s, on_gw_event, &fm->mem, r);
  if (rv != 0) {
    free(r);
    return rv;
  }
  static uint8_t adv[8192];
  size_t advlen = build_advertise(adv, 1000);
  static const uint8_t hello[] = {0x01, 6, 1, 1, 2, 2, 1, 2};
  static const uint8_t hb[] = {0x04, 9, 1, 1, 1, 2, 1, 0, 3, 1, 0};
  static const uint8_t req[] = {0x08, 4, 1, 2, 0x30, 0x00};
  static const uint8_t cert[] = {0x30, 0x00};
  static const uint8_t goodbye[] = {0x06, 3, 1, 1, 0};
  uint8_t buf[512];
  atun_tstamp now = T0;
  rv = atun_session_gw_on_transport_connected(g, now);
  for (size_t i = 0; rv == 0 && i < sizeof(hello); ++i)
    rv = atun_session_gw_on_data(g, now, hello + i, 1);
  if (rv == 0) rv = atun_session_gw_on_data(g, now, adv, advlen);
  if (rv == 0) rv = atun_session_gw_on_data(g, now, hb, sizeof(hb));
  if (rv == 0) rv = atun_session_gw_on_data(g, now, req, sizeof(req));
  if (rv == 0)
    rv = atun_session_gw_send_renew_response(g, now, ATUN_CERT_STATUS_OK, cert,
                                             sizeof(cert), "ok");
  if (rv == 0) rv = atun_session_gw_handle_expiry(g, now += 10 * SEC);
  while (rv == 0 && atun_session_gw_write(g, buf, sizeof(buf)) > 0) {
  }
  if (rv == 0) rv = atun_session_gw_on_data(g, now, hb, sizeof(hb));
  if (rv == 0) rv = atun_session_gw_handle_expiry(g, now += 30 * SEC);
  if (rv == 0) cr_assert_not(atun_session_gw_is_online(g));
  if (rv == 0) rv = atun_session_gw_on_data(g, now, hb, sizeof(hb));
  if (rv == 0) rv = atun_session_gw_on_data(g, now, goodbye, sizeof(goodbye));
  if (rv == 0) rv = atun_session_gw_handle_expiry(g, now += 30 * SEC);
  if (rv != 0) {
    cr_assert_eq(rv, fatal, "%s", atun_strerror(rv));
    cr_assert_eq(atun_session_gw_handle_expiry(g, now), fatal);
    cr_assert_eq(atun_session_gw_get_expiry(g), ATUN_TSTAMP_MAX);
  } else {
    cr_assert_eq(atun_session_gw_get_state(g), ATUN_SESSION_GW_CLOSED);
  }
  atun_session_gw_del(g);
  free(r);
  return rv;
}

Test(gw, allocation_failure_at_every_index) {
  long index = 0;
  for (;; ++index) {
    atun_failmem fm;
    atun_failmem_init(&fm, index);
    int rv = gw_scripted_life(&fm, 0, ATUN_ERR_NOMEM);
    cr_assert_eq(fm.live, 0, "leak with failure at allocation %ld", index);
    if (fm.failures == 0) {
      cr_assert_eq(rv, 0);
      break;
    }
    cr_assert_eq(rv, ATUN_ERR_NOMEM, "allocation %ld", index);
  }
  cr_assert_gt(index, 4, "the script allocates (%ld)", index);
}

Test(gw, callback_failure_at_every_event) {
  size_t index = 1;
  for (;; ++index) {
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    int rv = gw_scripted_life(&fm, index, ATUN_ERR_CALLBACK_FAILURE);
    cr_assert_eq(fm.live, 0);
    if (rv == 0) break;
    cr_assert_eq(rv, ATUN_ERR_CALLBACK_FAILURE, "event %zu", index);
  }
  cr_assert_gt(index, 10, "the script emits events (%zu)", index);
}

Test(gw, unset_time_is_refused) {
  gfix *f = gfix_new();
  cr_assert_eq(atun_session_gw_on_transport_connected(f->g, ATUN_TSTAMP_MAX),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_IDLE);
  gw_establish(f);
  cr_assert_eq(atun_session_gw_handle_expiry(f->g, ATUN_TSTAMP_MAX),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
  gfix_del(f);
}

Test(gw, drain_into_a_full_queue_closes_at_once) {
  atun_session_gw_settings set;
  atun_session_gw_settings_default(&set);
  set.outq_max = ATUN_OUTQ_MIN;
  gfix *f = gfix_new_with(&set, atun_mem_default());
  gw_establish(f);
  atun_msg ack = {.type = ATUN_FRAME_HEARTBEAT_ACK};
  ack.u.heartbeat_ack.seq = 1;
  ack.u.heartbeat_ack.echo_sent_at = 77;
  size_t ack_size = (size_t)atun_frame_encoded_size(&ack);
  while (atun_session_gw_pending(f->g) + ack_size <= set.outq_max) agent_hb(f, 1, 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_ESTABLISHED);
  cr_assert_eq(atun_session_gw_drain(f->g, f->now, 0xfffffff), 0);
  cr_assert_eq(gstate(f), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gclose_code(f), ATUN_APP_SHUTDOWN);
  gfix_del(f);
}

Test(gw, state_names) {
  cr_assert_str_eq(atun_session_gw_state_name(ATUN_SESSION_GW_AWAIT_HELLO), "await_hello");
  cr_assert_str_eq(atun_session_gw_state_name(5), "unknown");
}

/* --- the pair: agent and gateway back to back -------------------------------------------------- */

typedef struct pair {
  atun_testrng rng;
  atun_rand rand;
  atun_session_agent *a;
  atun_session_gw *g;
  arec ar;
  grec gr;
  atun_tstamp now;
  uint64_t bytes; /* moved either way */
} pair;

static pair *pair_new(const atun_session_agent_settings *as,
                      const atun_session_gw_settings *gs) {
  pair *p = calloc(1, sizeof(*p));
  cr_assert_not_null(p);
  atun_testrng_seed(&p->rng, 11);
  p->rand = atun_testrng_as_rand(&p->rng);
  p->now = T0;
  atun_session_agent_settings ad;
  atun_session_gw_settings gd;
  atun_session_agent_settings_default(&ad);
  atun_session_gw_settings_default(&gd);
  cr_assert_eq(atun_session_agent_new(&p->a, as ? as : &ad, on_agent_event, &p->rand,
                                      atun_mem_default(), &p->ar),
               0);
  cr_assert_eq(atun_session_gw_new(&p->g, gs ? gs : &gd, on_gw_event,
                                   atun_mem_default(), &p->gr),
               0);
  return p;
}

static void pair_del(pair *p) {
  atun_session_agent_del(p->a);
  atun_session_gw_del(p->g);
  free(p);
}

/* Moves queued bytes both ways, in small pieces, until both queues are
 * empty; a close asked by one side is delivered to the other as a
 * transport failure. */
static void pump(pair *p) {
  uint8_t buf[97];
  for (int round = 0; round < 100000; ++round) {
    ssize_t n = atun_session_agent_write(p->a, buf, sizeof(buf));
    cr_assert_geq(n, 0);
    if (n > 0) cr_assert_eq(atun_session_gw_on_data(p->g, p->now, buf, (size_t)n), 0);
    ssize_t m = atun_session_gw_write(p->g, buf, sizeof(buf));
    cr_assert_geq(m, 0);
    if (m > 0) cr_assert_eq(atun_session_agent_on_data(p->a, p->now, buf, (size_t)m), 0);
    p->bytes += (uint64_t)(n + m);
    if (n == 0 && m == 0) break;
  }
  uint64_t code;
  if (atun_session_agent_want_close(p->a, &code) &&
      atun_session_gw_get_state(p->g) != ATUN_SESSION_GW_CLOSED)
    cr_assert_eq(atun_session_gw_on_transport_failed(p->g, p->now), 0);
  if (atun_session_gw_want_close(p->g, &code) &&
      atun_session_agent_get_state(p->a) >= ATUN_SESSION_AGENT_CONNECTING &&
      atun_session_agent_get_state(p->a) <= ATUN_SESSION_AGENT_DRAINING)
    cr_assert_eq(atun_session_agent_on_transport_failed(p->a, p->now), 0);
}

/* Runs both machines' timers up to |until|, pumping after each step. */
static void advance(pair *p, atun_tstamp until) {
  for (int i = 0; i < 100000; ++i) {
    atun_tstamp ea = atun_session_agent_get_expiry(p->a);
    atun_tstamp eg = atun_session_gw_get_expiry(p->g);
    atun_tstamp e = ea < eg ? ea : eg;
    if (e > until) break;
    if (e > p->now) p->now = e;
    cr_assert_eq(atun_session_agent_handle_expiry(p->a, p->now), 0);
    cr_assert_eq(atun_session_gw_handle_expiry(p->g, p->now), 0);
    pump(p);
  }
  p->now = until;
}

static void pair_connect(pair *p) {
  if (atun_session_agent_get_state(p->a) == ATUN_SESSION_AGENT_IDLE)
    cr_assert_eq(atun_session_agent_start(p->a, p->now), 0);
  size_t before = p->ar.connect_now;
  advance(p, atun_session_agent_get_expiry(p->a));
  cr_assert_eq(p->ar.connect_now, before + 1);
  cr_assert_eq(atun_session_gw_on_transport_connected(p->g, p->now), 0);
  cr_assert_eq(atun_session_agent_on_transport_connected(p->a, p->now), 0);
  pump(p);
}

Test(pair, happy_path) {
  atun_session_gw_settings gs;
  atun_session_gw_settings_default(&gs);
  gs.heartbeat_interval_ns = 1 * SEC;
  gs.offline_timeout_ns = 3 * SEC;
  pair *p = pair_new(NULL, &gs);
  atun_prefix nets[1];
  cr_assert_eq(atun_prefix_parse(&nets[0], "192.168.10.0/24"), 0);
  atun_domain doms[1] = {{"corp.example", 1}};
  cr_assert_eq(atun_session_agent_set_routes(p->a, p->now, nets, 1, doms, 1), 0);
  atun_session_agent_set_active_streams(p->a, 3);
  pair_connect(p);
  cr_assert_eq(atun_session_agent_get_state(p->a), ATUN_SESSION_AGENT_ESTABLISHED);
  cr_assert_eq(atun_session_gw_get_state(p->g), ATUN_SESSION_GW_ESTABLISHED);
  cr_assert_eq(p->ar.established, 1);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_ESTABLISHED), 1);
  cr_assert_eq(p->gr.version, ATUN_PROTO_VERSION_MAX);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_ADVERTISE), 1);
  cr_assert_eq(p->gr.epoch, 1);
  cr_assert_eq(p->gr.subnets, 1);
  cr_assert_eq(p->gr.domains, 1);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_HEARTBEAT), 1);
  cr_assert_eq(p->gr.hb_streams, 3);
  cr_assert_eq(p->ar.rtt, 1);

  /* Ten minutes of steady state: one heartbeat a second each way, no
   * offline, no dead peer, no reconnect. */
  atun_tstamp start = p->now;
  advance(p, start + 600 * SEC);
  size_t hbs = gcount(&p->gr, ATUN_SESSION_GW_EV_HEARTBEAT);
  cr_assert_geq(hbs, 600);
  cr_assert_leq(hbs, 602);
  cr_assert_geq(p->ar.rtt, 600);
  cr_assert_eq(p->ar.dead, 0);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_OFFLINE), 0);
  cr_assert_eq(p->ar.connect_now, 1);
  cr_assert(atun_session_gw_is_online(p->g));

  /* Routes change: new epoch, same connection. */
  cr_assert_eq(atun_session_agent_set_routes(p->a, p->now, nets, 1, NULL, 0), 0);
  pump(p);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_ADVERTISE), 2);
  cr_assert_eq(p->gr.epoch, 2);
  cr_assert_eq(p->gr.domains, 0);
  cr_assert_eq(p->ar.connect_now, 1);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_ESTABLISHED), 1);

  /* Certificate renewal through the gateway. */
  static const uint8_t csr[] = {0x30, 0x00};
  static const uint8_t cert[] = {0x30, 0x01, 0x00};
  cr_assert_eq(atun_session_agent_request_renewal(p->a, p->now, csr, sizeof(csr), 0), 0);
  pump(p);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_RENEW_REQUEST), 1);
  cr_assert_eq(atun_session_gw_send_renew_response(p->g, p->now, ATUN_CERT_STATUS_OK,
                                                   cert, sizeof(cert), NULL),
               0);
  pump(p);
  cr_assert_eq(p->ar.renew, 1);
  cr_assert_eq(p->ar.renew_status, ATUN_CERT_STATUS_OK);
  pair_del(p);
}

Test(pair, version_mismatch) {
  atun_session_agent_settings as;
  atun_session_agent_settings_default(&as);
  atun_session_gw_settings gs;
  atun_session_gw_settings_default(&gs);
  /* An agent from the future speaking 3..4 meets a gateway speaking 2. */
  as.min_version = 3;
  as.max_version = 4;
  pair *p = pair_new(&as, &gs);
  pair_connect(p);
  cr_assert_eq(atun_session_gw_get_state(p->g), ATUN_SESSION_GW_CLOSED);
  uint64_t code;
  cr_assert(atun_session_gw_want_close(p->g, &code));
  cr_assert_eq(code, ATUN_APP_VERSION_MISMATCH);
  cr_assert_eq(p->ar.error, 1);
  cr_assert_eq(p->ar.remote, 1);
  cr_assert_eq(p->ar.app_error, ATUN_APP_VERSION_MISMATCH);
  cr_assert_str_eq(p->ar.message, "supported protocol versions: 2..2");
  cr_assert_eq(p->ar.established, 0);
  cr_assert_eq(atun_session_agent_get_state(p->a), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert(atun_session_agent_want_close(p->a, &code));
  cr_assert_eq(code, ATUN_APP_VERSION_MISMATCH);
  pair_del(p);
}

Test(pair, agent_drains) {
  pair *p = pair_new(NULL, NULL);
  pair_connect(p);
  cr_assert_eq(atun_session_agent_drain(p->a, p->now, ATUN_GOODBYE_SHUTDOWN), 0);
  pump(p);
  cr_assert_eq(atun_session_gw_get_state(p->g), ATUN_SESSION_GW_DRAINING);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_GOODBYE), 1);
  cr_assert_eq(atun_session_agent_get_state(p->a), ATUN_SESSION_AGENT_DRAINING);
  /* The agent's streams finish; at its drain timeout it closes. */
  advance(p, p->now + 10 * SEC);
  cr_assert_eq(atun_session_agent_get_state(p->a), ATUN_SESSION_AGENT_CLOSED);
  cr_assert_eq(atun_session_gw_get_state(p->g), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_ERROR), 0);
  cr_assert_eq(p->ar.connect_now, 1, "a drained agent does not come back");
  pair_del(p);
}

Test(pair, gateway_drains_and_the_agent_reconnects) {
  pair *p = pair_new(NULL, NULL);
  pair_connect(p);
  cr_assert_eq(atun_session_gw_drain(p->g, p->now, ATUN_GOODBYE_RESTART), 0);
  pump(p);
  cr_assert_eq(p->ar.goodbye, 1);
  cr_assert_eq(atun_session_agent_get_state(p->a), ATUN_SESSION_AGENT_BACKOFF);
  cr_assert_eq(atun_session_gw_get_state(p->g), ATUN_SESSION_GW_CLOSED);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_ERROR), 0);
  /* A fresh gateway machine for the new connection. */
  atun_session_gw_del(p->g);
  atun_session_gw_settings gs;
  atun_session_gw_settings_default(&gs);
  memset(&p->gr, 0, sizeof(p->gr));
  cr_assert_eq(atun_session_gw_new(&p->g, &gs, on_gw_event, atun_mem_default(), &p->gr), 0);
  pair_connect(p);
  cr_assert_eq(p->ar.established, 2);
  cr_assert_eq(gcount(&p->gr, ATUN_SESSION_GW_EV_ADVERTISE), 1);
  pair_del(p);
}

Test(pair, silent_gateway_is_declared_dead_and_offline_on_both_sides) {
  atun_session_gw_settings gs;
  atun_session_gw_settings_default(&gs);
  gs.heartbeat_interval_ns = 1 * SEC;
  gs.offline_timeout_ns = 3 * SEC;
  pair *p = pair_new(NULL, &gs);
  pair_connect(p);
  atun_tstamp t = p->now;
  /* The link goes dark: timers run, no byte moves.  The gateway last saw
   * heartbeat 1 at t. */
  uint8_t sink[4096];
  for (atun_tstamp now = t; now <= t + 4 * SEC; now += 100 * MS) {
    cr_assert_eq(atun_session_agent_handle_expiry(p->a, now), 0);
    cr_assert_eq(atun_session_gw_handle_expiry(p->g, now), 0);
    while (atun_session_agent_write(p->a, sink, sizeof(sink)) > 0) {
    }
    while (atun_session_gw_write(p->g, sink, sizeof(sink)) > 0) {
    }
    int dead = p->ar.dead > 0;
    /* Heartbeat 1 was acked at t; 2, 3 and 4 go unanswered. */
    cr_assert_eq(dead, now >= t + 4 * SEC, "dead at %llu ms",
                 (unsigned long long)((now - t) / MS));
    int offline = gcount(&p->gr, ATUN_SESSION_GW_EV_OFFLINE) > 0;
    cr_assert_eq(offline, now >= t + 3 * SEC);
  }
  cr_assert_eq(atun_session_agent_get_state(p->a), ATUN_SESSION_AGENT_BACKOFF);
  pair_del(p);
}
