/*
 * Drives one control-session machine (agent or gateway side, chosen by the
 * first input byte) with a sequence of operations read from the input:
 * raw bytes, well-formed frames of every type, time steps, transport
 * events, API calls, drained output, allocation failures and failing
 * callbacks.  Checks: no crash or assertion, only documented errors, the
 * outbound queue within its bound, memory within a stated bound while
 * running and nothing live after the machine is deleted.
 *
 * Input: byte 0 = side (bit 0) and settings variant (bits 1..3); byte 1 =
 * RNG seed; then operations, each an opcode byte and its arguments (missing
 * bytes read as zero).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_agent.h"
#include "session_gw.h"
#include "support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The harness's own checks hold in every build type, NDEBUG included. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* Operations per input: far above what a useful input holds, so only the
 * input length bounds a run. */
#define OPS_MAX 20000
/* Memory a machine may hold at once: its outbound queue, one control frame
 * being read plus its decoded form (at most the same again), and the
 * routes it keeps. */
#define MEM_BOUND(outq_max) ((outq_max) + 3 * ATUN_CONTROL_PAYLOAD_MAX)

typedef struct input {
  const uint8_t *p, *end;
} input;

static uint8_t u8(input *in) { return in->p < in->end ? *in->p++ : 0; }

static uint16_t u16(input *in) {
  uint16_t hi = u8(in);
  return (uint16_t)(hi << 8 | u8(in));
}

static uint64_t u64(input *in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | u8(in);
  return v;
}

/* Takes up to |max| bytes of raw input. */
static size_t take(input *in, const uint8_t **p, size_t max) {
  size_t avail = (size_t)(in->end - in->p);
  size_t n = max < avail ? max : avail;
  *p = in->p;
  in->p += n;
  return n;
}

typedef struct ctx {
  atun_failmem fm;
  atun_testrng rng;
  atun_rand rand;
  atun_session_agent *agent;
  atun_session_gw *gw;
  size_t outq_max;
  int fail_next_event;
  atun_tstamp now;
} ctx;

static int on_agent(atun_session_agent *a, const atun_session_agent_event *ev,
                    void *ud) {
  ctx *c = ud;
  if (ev->type == ATUN_SESSION_AGENT_EV_ERROR)
    CHECK(ev->u.error.message != NULL);
  int fail = c->fail_next_event;
  c->fail_next_event = 0;
  return fail ? -1 : 0;
}

static int on_gw(atun_session_gw *g, const atun_session_gw_event *ev, void *ud) {
  ctx *c = ud;
  if (ev->type == ATUN_SESSION_GW_EV_ADVERTISE)
    CHECK(ev->u.advertise->subnet_count <= ATUN_SUBNETS_MAX);
  int fail = c->fail_next_event;
  c->fail_next_event = 0;
  return fail ? -1 : 0;
}

/* --- frames built from input ------------------------------------------------------------------ */

static void fill_prefixes(input *in, atun_prefix *nets, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    memset(&nets[i], 0, sizeof(nets[i]));
    int v6 = u8(in) & 1;
    nets[i].addr.family = v6 ? ATUN_AF_INET6 : ATUN_AF_INET;
    nets[i].len = v6 ? 64 : 24;
    nets[i].addr.bytes[0] = v6 ? 0xfd : 10;
    nets[i].addr.bytes[1] = u8(in);
    nets[i].addr.bytes[2] = u8(in);
  }
}

/* Builds a well-formed frame of a type picked by the input (any type,
 * either direction: the machines must cope with every one). */
static ssize_t build_frame(input *in, uint8_t *buf, size_t buflen) {
  static atun_prefix nets[64];
  static atun_domain doms[4];
  static uint8_t blob[64];
  atun_msg m;
  memset(&m, 0, sizeof(m));
  m.type = (uint8_t)(1 + u8(in) % 11);
  if (m.type > ATUN_FRAME_CERT_RENEW_RESPONSE) m.type = ATUN_FRAME_CONNECT_REQUEST;
  memset(blob, 0x30, sizeof(blob));
  switch (m.type) {
  case ATUN_FRAME_HELLO:
    m.u.hello.min_version = 1 + u8(in) % 3;
    m.u.hello.max_version = m.u.hello.min_version + u8(in) % 3;
    break;
  case ATUN_FRAME_HELLO_ACK:
    m.u.hello_ack.chosen_version = 1 + u8(in) % 3;
    m.u.hello_ack.heartbeat_interval_ms = 1 + u16(in);
    break;
  case ATUN_FRAME_ROUTE_ADVERTISE: {
    size_t n = u8(in) % 65;
    fill_prefixes(in, nets, n);
    m.u.route_advertise.epoch = u8(in);
    m.u.route_advertise.subnets = nets;
    m.u.route_advertise.subnet_count = n;
    snprintf(doms[0].name, sizeof(doms[0].name), "d%u.example", u8(in));
    m.u.route_advertise.domains = doms;
    m.u.route_advertise.domain_count = u8(in) & 1;
    break;
  }
  case ATUN_FRAME_HEARTBEAT:
    m.u.heartbeat.seq = u8(in);
    m.u.heartbeat.sent_at = u16(in);
    m.u.heartbeat.active_stream_count = u8(in);
    break;
  case ATUN_FRAME_HEARTBEAT_ACK:
    m.u.heartbeat_ack.seq = u8(in);
    m.u.heartbeat_ack.echo_sent_at = u16(in);
    break;
  case ATUN_FRAME_GOODBYE: m.u.goodbye.reason = u8(in); break;
  case ATUN_FRAME_ERROR: m.u.error.code = u8(in); break;
  case ATUN_FRAME_CERT_RENEW_REQUEST:
    m.u.cert_renew_request.csr = blob;
    m.u.cert_renew_request.csr_len = 1 + u8(in) % sizeof(blob);
    break;
  case ATUN_FRAME_CERT_RENEW_RESPONSE:
    m.u.cert_renew_response.status = u8(in) % 5;
    if (m.u.cert_renew_response.status == ATUN_CERT_STATUS_OK) {
      m.u.cert_renew_response.cert = blob;
      m.u.cert_renew_response.cert_len = sizeof(blob);
    }
    break;
  default:
    m.u.connect_request.target.kind = ATUN_TARGET_ADDR;
    m.u.connect_request.target.addr.family = ATUN_AF_INET;
    m.u.connect_request.port = 22;
  }
  return atun_frame_encode(buf, buflen, &m);
}

/* --- checks ---------------------------------------------------------------------------------- */

/* Errors a call may return without the machine being broken. */
static int recoverable(int rv) {
  switch (rv) {
  case 0:
  case ATUN_ERR_STATE:
  case ATUN_ERR_INVALID_ARGUMENT:
  case ATUN_ERR_FULL:
  case ATUN_ERR_MISSING_FIELD:
  case ATUN_ERR_MALFORMED:
  case ATUN_ERR_BAD_NAME:
  case ATUN_ERR_BAD_PREFIX:
  case ATUN_ERR_LIMIT: return 1;
  }
  return 0;
}

/* Returns nonzero when the run must stop (a fatal error). */
static int check(ctx *c, int rv) {
  if (recoverable(rv)) return 0;
  CHECK(rv == ATUN_ERR_NOMEM || rv == ATUN_ERR_CALLBACK_FAILURE);
  return 1;
}

/* --- one step for each side ------------------------------------------------------------------- */

static int feed(ctx *c, const uint8_t *p, size_t n) {
  return c->agent ? atun_session_agent_on_data(c->agent, c->now, p, n)
                  : atun_session_gw_on_data(c->gw, c->now, p, n);
}

static int expire(ctx *c) {
  return c->agent ? atun_session_agent_handle_expiry(c->agent, c->now)
                  : atun_session_gw_handle_expiry(c->gw, c->now);
}

static atun_tstamp expiry(ctx *c) {
  return c->agent ? atun_session_agent_get_expiry(c->agent)
                  : atun_session_gw_get_expiry(c->gw);
}

static int transport(ctx *c, int which) {
  if (c->agent) {
    switch (which) {
    case 0: return atun_session_agent_on_transport_connected(c->agent, c->now);
    case 1: return atun_session_agent_on_stream_closed(c->agent, c->now);
    }
    return atun_session_agent_on_transport_failed(c->agent, c->now);
  }
  switch (which) {
  case 0: return atun_session_gw_on_transport_connected(c->gw, c->now);
  case 1: return atun_session_gw_on_stream_closed(c->gw, c->now);
  }
  return atun_session_gw_on_transport_failed(c->gw, c->now);
}

static int api_call(ctx *c, input *in) {
  static atun_prefix nets[8];
  static const uint8_t blob[] = {0x30, 0x01, 0x00};
  uint8_t what = u8(in);
  if (c->agent) {
    switch (what % 4) {
    case 0: {
      size_t n = u8(in) % 9;
      fill_prefixes(in, nets, n);
      atun_domain dom = {"corp.example", 1};
      return atun_session_agent_set_routes(c->agent, c->now, nets, n, &dom,
                                           u8(in) & 1);
    }
    case 1:
      return atun_session_agent_request_renewal(c->agent, c->now, blob,
                                                u8(in) % 4, u8(in) & 1);
    case 2: atun_session_agent_set_active_streams(c->agent, u16(in)); return 0;
    }
    return atun_session_agent_start(c->agent, c->now);
  }
  switch (what % 2) {
  case 0: {
    uint8_t status = u8(in) % 6;
    int with_cert = u8(in) & 1;
    return atun_session_gw_send_renew_response(c->gw, c->now, status,
                                               with_cert ? blob : NULL,
                                               with_cert ? sizeof(blob) : 0, "m");
  }
  }
  return atun_session_gw_close(c->gw, c->now, u8(in), (u8(in) & 1) ? "bye" : NULL);
}

static int drain(ctx *c, uint64_t reason) {
  return c->agent ? atun_session_agent_drain(c->agent, c->now, reason)
                  : atun_session_gw_drain(c->gw, c->now, reason);
}

static ssize_t write_out(ctx *c, size_t max) {
  static uint8_t sink[65536];
  if (max > sizeof(sink)) max = sizeof(sink);
  return c->agent ? atun_session_agent_write(c->agent, sink, max)
                  : atun_session_gw_write(c->gw, sink, max);
}

static size_t pending(ctx *c) {
  return c->agent ? atun_session_agent_pending(c->agent)
                  : atun_session_gw_pending(c->gw);
}

static int step(ctx *c, input *in) {
  static uint8_t frame[8192];
  const uint8_t *p;
  switch (u8(in) % 10) {
  case 0: {
    size_t n = take(in, &p, u8(in));
    return feed(c, p, n);
  }
  case 1: {
    ssize_t n = build_frame(in, frame, sizeof(frame));
    CHECK(n > 0);
    return feed(c, frame, (size_t)n);
  }
  case 2: {
    /* Up to about two hours per step, from a nanosecond upwards. */
    uint16_t v = u16(in);
    c->now += (uint64_t)v << (u8(in) % 24);
    return expire(c);
  }
  case 3: {
    atun_tstamp e = expiry(c);
    if (e != ATUN_TSTAMP_MAX && e > c->now) c->now = e;
    return expire(c);
  }
  case 4: return transport(c, u8(in) % 3);
  case 5: return drain(c, u8(in));
  case 6: return api_call(c, in);
  case 7: {
    ssize_t n = write_out(c, u16(in));
    return n < 0 ? (int)n : 0;
  }
  case 8: {
    uint8_t v = u8(in);
    atun_failmem_arm(&c->fm, v >> 1, v & 1);
    return 0;
  }
  }
  c->fail_next_event = 1;
  return 0;
}

static void run(ctx *c, input *in) {
  for (int i = 0; i < OPS_MAX && in->p < in->end; ++i) {
    int rv = step(c, in);
    CHECK(pending(c) <= c->outq_max);
    CHECK(c->fm.peak_bytes <= MEM_BOUND(c->outq_max));
    if (check(c, rv)) {
      /* Fatal errors are sticky. */
      CHECK(expire(c) == rv);
      CHECK(expiry(c) == ATUN_TSTAMP_MAX);
      return;
    }
  }
}

static int create(ctx *c, uint8_t variant) {
  if (variant & 1) {
    atun_session_gw_settings s;
    atun_session_gw_settings_default(&s);
    if (variant & 2) {
      s.heartbeat_interval_ns = ATUN_SESSION_HEARTBEAT_MIN_NS;
      s.offline_timeout_ns = 3 * s.heartbeat_interval_ns;
    }
    if (variant & 4) s.outq_max = ATUN_OUTQ_MIN;
    c->outq_max = s.outq_max;
    return atun_session_gw_new(&c->gw, &s, on_gw, &c->fm.mem, c);
  }
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  if (variant & 2) s.dead_after_missed = 1;
  if (variant & 4) s.outq_max = ATUN_OUTQ_MIN;
  if (variant & 8) {
    s.min_version = 1;
    s.max_version = 3;
  }
  c->outq_max = s.outq_max;
  return atun_session_agent_new(&c->agent, &s, on_agent, &c->rand, &c->fm.mem,
                                c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input in = {data, data + size};
  static ctx c;
  memset(&c, 0, sizeof(c));
  atun_failmem_init(&c.fm, -1);
  uint8_t variant = u8(&in);
  atun_testrng_seed(&c.rng, u8(&in));
  c.rand = atun_testrng_as_rand(&c.rng);
  c.now = u64(&in) >> 8; /* any start, far from the end of time */
  if (create(&c, variant) != 0) return 0;
  run(&c, &in);
  atun_session_agent_del(c.agent);
  atun_session_gw_del(c.gw);
  CHECK(c.fm.live == 0);
  return 0;
}
