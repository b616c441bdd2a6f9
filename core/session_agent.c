/*
 * The agent's control-session machine; session_agent.h describes the
 * states, the failures and which frames are ignored.
 */
#include "session_agent.h"

#include <string.h>

struct atun_session_agent {
  atun_session_agent_settings settings;
  atun_session_agent_event_fn event_cb;
  void *user_data;
  const atun_mem *mem;
  atun_backoff backoff;
  atun_frame_reader reader;
  atun_outq outq;
  int state;
  int fatal;       /* sticky fatal error, 0 while usable */
  int in_callback; /* the event callback is running */
  int close_pending;
  uint64_t close_error;
  int backoff_connected; /* atun_backoff_connected() called for this link */
  /* The one timer of the current state: the dial in backoff, the handshake
   * deadline until HelloAck, the next heartbeat tick when established, the
   * drain deadline when draining. */
  atun_tstamp timer;
  /* Heartbeats of the current connection. */
  uint64_t hb_interval_ns;
  uint64_t hb_seq; /* last sent, 0 = none yet */
  atun_tstamp hb_sent_at;
  int hb_acked;
  uint32_t missed;
  uint32_t active_streams;
  int renew_pending;
  /* Routes, owned copies. */
  uint64_t epoch;
  atun_prefix *subnets;
  size_t subnet_count;
  atun_domain *domains;
  size_t domain_count;
};

static const char *const state_names[] = {
    "idle", "backoff", "connecting", "hello_sent", "established", "draining",
    "closed"};

const char *atun_session_agent_state_name(int state) {
  if (state < 0 || (size_t)state >= sizeof(state_names) / sizeof(state_names[0]))
    return "unknown";
  return state_names[state];
}

void atun_session_agent_settings_default(atun_session_agent_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  settings->min_version = ATUN_PROTO_VERSION_MIN;
  settings->max_version = ATUN_PROTO_VERSION_MAX;
  settings->handshake_timeout_ns = 10 * ATUN_NS_PER_S;
  settings->dead_after_missed = 3;
  settings->drain_timeout_ns = 10 * ATUN_NS_PER_S;
  settings->outq_max =
      ATUN_CONTROL_PAYLOAD_MAX + ATUN_FRAME_HEADER_MAX + ATUN_OUTQ_MIN;
  atun_backoff_settings_default(&settings->backoff);
}

/* --- small helpers ------------------------------------------------------------- */

static int duration_valid(uint64_t ns) {
  return ns > 0 && ns <= ATUN_SESSION_TIMEOUT_MAX_NS;
}

static int settings_valid(const atun_session_agent_settings *s) {
  uint32_t chosen;
  atun_msg hello = {.type = ATUN_FRAME_HELLO};
  hello.u.hello.min_version = s->min_version;
  hello.u.hello.max_version = s->max_version;
  memcpy(hello.u.hello.software_version, s->software_version,
         sizeof(hello.u.hello.software_version));
  return s->min_version > 0 &&
         atun_version_negotiate(s->min_version, s->max_version,
                                s->min_version, s->max_version, &chosen) == 0 &&
         memchr(s->software_version, 0, sizeof(s->software_version)) != NULL &&
         atun_frame_encoded_size(&hello) > 0 &&
         duration_valid(s->handshake_timeout_ns) &&
         duration_valid(s->drain_timeout_ns) && s->dead_after_missed >= 1 &&
         s->dead_after_missed <= ATUN_SESSION_MISSED_MAX &&
         s->outq_max >= ATUN_OUTQ_MIN;
}

/* |ts| + |d|, saturating one short of ATUN_TSTAMP_MAX ("never"). */
static atun_tstamp after(atun_tstamp ts, uint64_t d) {
  return ts < ATUN_TSTAMP_MAX - 1 - d ? ts + d : ATUN_TSTAMP_MAX - 1;
}

static int set_fatal(atun_session_agent *a, int err) {
  ATUN_ASSERT(atun_err_is_fatal(err));
  a->fatal = err;
  return err;
}

static int emit(atun_session_agent *a, atun_session_agent_event *ev) {
  a->in_callback = 1;
  int rv = a->event_cb(a, ev, a->user_data);
  a->in_callback = 0;
  return rv != 0 ? set_fatal(a, ATUN_ERR_CALLBACK_FAILURE) : 0;
}

static int emit_simple(atun_session_agent *a, int type) {
  atun_session_agent_event ev = {.type = type};
  return emit(a, &ev);
}

static int set_state(atun_session_agent *a, int state) {
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_STATE};
  ev.u.state.old_state = a->state;
  ev.u.state.new_state = state;
  a->state = state;
  return emit(a, &ev);
}

/* Entry check shared by the calls that change the machine. */
static int enter(const atun_session_agent *a, atun_tstamp ts) {
  if (a->fatal != 0) return a->fatal;
  if (a->in_callback) return ATUN_ERR_STATE;
  return ts == ATUN_TSTAMP_MAX ? ATUN_ERR_INVALID_ARGUMENT : 0;
}

static int has_transport(const atun_session_agent *a) {
  return a->state == ATUN_SESSION_AGENT_CONNECTING ||
         a->state == ATUN_SESSION_AGENT_HELLO_SENT ||
         a->state == ATUN_SESSION_AGENT_ESTABLISHED ||
         a->state == ATUN_SESSION_AGENT_DRAINING;
}

static int stream_open(const atun_session_agent *a) {
  return has_transport(a) && a->state != ATUN_SESSION_AGENT_CONNECTING;
}

/* Forgets a half-read frame and gives its buffer back: the next bytes come
 * from another connection, or from none. */
static void reader_reset(atun_session_agent *a) {
  atun_frame_reader_free(&a->reader);
  atun_frame_reader_init(&a->reader, ATUN_CONTROL_PAYLOAD_MAX, a->mem);
}

static void request_close(atun_session_agent *a, uint64_t app_error) {
  a->close_pending = 1;
  a->close_error = app_error;
}

/* Queues |msg| as one frame.  Returns 0, ATUN_ERR_FULL, ATUN_ERR_NOMEM or an
 * encoding error (only for caller-supplied content). */
static int queue_msg(atun_session_agent *a, const atun_msg *msg) {
  ssize_t size = atun_frame_encoded_size(msg);
  if (size < 0) return (int)size;
  int err = 0;
  uint8_t *p = atun_outq_reserve(&a->outq, (size_t)size, &err);
  if (p == NULL) return err;
  ssize_t n = atun_frame_encode(p, (size_t)size, msg);
  ATUN_ASSERT(n == size);
  atun_outq_commit(&a->outq, (size_t)n);
  return 0;
}

/* --- leaving a connection -------------------------------------------------------- */

/* The connection is over: back off before the next attempt, or, when the
 * agent was draining, stop for good. */
static int end_connection(atun_session_agent *a, atun_tstamp ts) {
  reader_reset(a);
  a->renew_pending = 0;
  if (a->state == ATUN_SESSION_AGENT_DRAINING)
    return set_state(a, ATUN_SESSION_AGENT_CLOSED);
  if (a->backoff_connected) {
    a->backoff_connected = 0;
    /* Cannot fail: connected, and |ts| was checked on entry. */
    int rv = atun_backoff_disconnected(&a->backoff, ts);
    ATUN_ASSERT(rv == 0);
    (void)rv;
  }
  uint64_t delay;
  int rv = atun_backoff_next(&a->backoff, ts, &delay);
  if (rv != 0) return set_fatal(a, ATUN_ERR_CALLBACK_FAILURE);
  a->timer = atun_backoff_get_expiry(&a->backoff);
  return set_state(a, ATUN_SESSION_AGENT_BACKOFF);
}

/* Gives the connection up over |err|.  With |send_error| the gateway first
 * hears why in an Error frame (left out if the queue has no room: the
 * connection closes with the same code anyway). */
static int fail_connection(atun_session_agent *a, atun_tstamp ts, int err,
                           uint64_t app_error, int send_error,
                           const char *message) {
  if (send_error && stream_open(a)) {
    atun_msg msg = {.type = ATUN_FRAME_ERROR};
    msg.u.error.code = app_error;
    msg.u.error.message = (char *)message;
    int rv = queue_msg(a, &msg);
    if (rv == ATUN_ERR_NOMEM) return set_fatal(a, rv);
  }
  request_close(a, app_error);
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_ERROR};
  ev.u.error.err = err;
  ev.u.error.app_error = app_error;
  ev.u.error.message = message;
  int rv = emit(a, &ev);
  if (rv != 0) return rv;
  return end_connection(a, ts);
}

static int violation(atun_session_agent *a, atun_tstamp ts, uint64_t app_error,
                     const char *message) {
  return fail_connection(a, ts, ATUN_ERR_PROTO, app_error, 1, message);
}

/* Queues a frame the machine itself produced.  A full queue means the
 * gateway stopped reading: the connection is given up as overloaded. */
static int queue_own(atun_session_agent *a, atun_tstamp ts,
                     const atun_msg *msg) {
  int rv = queue_msg(a, msg);
  if (rv == ATUN_ERR_FULL)
    return fail_connection(a, ts, ATUN_ERR_FULL, ATUN_APP_OVERLOADED, 0,
                           "outbound queue full");
  /* Every frame the machine builds itself is valid, so only allocation can
   * fail here; anything else is a bug, reported as such in release builds. */
  ATUN_ASSERT(rv == 0 || rv == ATUN_ERR_NOMEM);
  if (rv != 0) return set_fatal(a, rv == ATUN_ERR_NOMEM ? rv : ATUN_ERR_INTERNAL);
  return 0;
}

/* --- frames out ------------------------------------------------------------------ */

static void advertise_msg(const atun_session_agent *a, atun_msg *msg) {
  memset(msg, 0, sizeof(*msg));
  msg->type = ATUN_FRAME_ROUTE_ADVERTISE;
  msg->u.route_advertise.epoch = a->epoch;
  msg->u.route_advertise.subnets = a->subnets;
  msg->u.route_advertise.subnet_count = a->subnet_count;
  msg->u.route_advertise.domains = a->domains;
  msg->u.route_advertise.domain_count = a->domain_count;
}

static int send_heartbeat(atun_session_agent *a, atun_tstamp ts) {
  atun_msg msg = {.type = ATUN_FRAME_HEARTBEAT};
  msg.u.heartbeat.seq = a->hb_seq + 1;
  /* The wire carries 62 bits; the RTT comes from |hb_sent_at| anyway. */
  msg.u.heartbeat.sent_at = ts < ATUN_VARINT_MAX ? ts : ATUN_VARINT_MAX;
  msg.u.heartbeat.active_stream_count = a->active_streams;
  int rv = queue_own(a, ts, &msg);
  if (rv != 0 || a->state != ATUN_SESSION_AGENT_ESTABLISHED) return rv;
  ++a->hb_seq;
  a->hb_sent_at = ts;
  a->hb_acked = 0;
  a->timer = after(ts, a->hb_interval_ns);
  return 0;
}

/* --- frames in ------------------------------------------------------------------- */

static uint64_t clamp_interval(uint32_t ms) {
  uint64_t ns = (uint64_t)ms * ATUN_NS_PER_MS;
  if (ns < ATUN_SESSION_HEARTBEAT_MIN_NS) return ATUN_SESSION_HEARTBEAT_MIN_NS;
  if (ns > ATUN_SESSION_HEARTBEAT_MAX_NS) return ATUN_SESSION_HEARTBEAT_MAX_NS;
  return ns;
}

static int on_hello_ack(atun_session_agent *a, atun_tstamp ts,
                        const atun_hello_ack *ack) {
  if (ack->chosen_version < a->settings.min_version ||
      ack->chosen_version > a->settings.max_version)
    return violation(a, ts, ATUN_APP_VERSION_MISMATCH,
                     "hello_ack chose a version outside the offered range");
  int rv = atun_backoff_connected(&a->backoff, ts);
  ATUN_ASSERT(rv == 0);
  a->backoff_connected = 1;
  a->hb_interval_ns = clamp_interval(ack->heartbeat_interval_ms);
  a->hb_seq = 0;
  a->missed = 0;
  atun_msg adv;
  advertise_msg(a, &adv);
  if ((rv = set_state(a, ATUN_SESSION_AGENT_ESTABLISHED)) != 0 ||
      (rv = queue_own(a, ts, &adv)) != 0 ||
      a->state != ATUN_SESSION_AGENT_ESTABLISHED ||
      (rv = send_heartbeat(a, ts)) != 0 ||
      a->state != ATUN_SESSION_AGENT_ESTABLISHED)
    return rv;
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_ESTABLISHED};
  ev.u.established.version = ack->chosen_version;
  ev.u.established.heartbeat_interval_ns = a->hb_interval_ns;
  ev.u.established.hello_ack = ack;
  return emit(a, &ev);
}

static int on_heartbeat_ack(atun_session_agent *a, atun_tstamp ts,
                            const atun_heartbeat_ack *ack) {
  if (ack->seq == 0 || ack->seq > a->hb_seq)
    return violation(a, ts, ATUN_APP_PROTOCOL_VIOLATION,
                     "heartbeat_ack for a heartbeat never sent");
  a->missed = 0;
  if (ack->seq != a->hb_seq || a->hb_acked) return 0;
  a->hb_acked = 1;
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_RTT_SAMPLE};
  ev.u.rtt_ns = ts >= a->hb_sent_at ? ts - a->hb_sent_at : 0;
  return emit(a, &ev);
}

static int on_heartbeat(atun_session_agent *a, atun_tstamp ts,
                        const atun_heartbeat *hb) {
  atun_msg msg = {.type = ATUN_FRAME_HEARTBEAT_ACK};
  msg.u.heartbeat_ack.seq = hb->seq;
  msg.u.heartbeat_ack.echo_sent_at = hb->sent_at;
  return queue_own(a, ts, &msg);
}

static const char *text_or_empty(const char *s) { return s != NULL ? s : ""; }

static int on_goodbye(atun_session_agent *a, atun_tstamp ts,
                      const atun_goodbye *bye) {
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_GOODBYE};
  ev.u.goodbye.reason = bye->reason;
  ev.u.goodbye.message = text_or_empty(bye->message);
  request_close(a, ATUN_APP_NO_ERROR);
  int rv = emit(a, &ev);
  return rv != 0 ? rv : end_connection(a, ts);
}

static int on_error(atun_session_agent *a, atun_tstamp ts,
                    const atun_error_frame *ef) {
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_ERROR};
  ev.u.error.err = ATUN_ERR_CLOSED;
  ev.u.error.app_error = ef->code;
  ev.u.error.remote = 1;
  ev.u.error.message = text_or_empty(ef->message);
  /* Closing with the gateway's own code keeps both sides' logs in step. */
  request_close(a, ef->code);
  int rv = emit(a, &ev);
  return rv != 0 ? rv : end_connection(a, ts);
}

static int on_renew_response(atun_session_agent *a, atun_tstamp ts,
                             const atun_cert_renew_response *resp) {
  if (!a->renew_pending)
    return violation(a, ts, ATUN_APP_PROTOCOL_VIOLATION,
                     "cert_renew_response without a request");
  a->renew_pending = 0;
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_RENEW_RESPONSE};
  ev.u.renew = resp;
  return emit(a, &ev);
}

/* Before HelloAck the gateway may only answer Hello, refuse, or leave. */
static int handle_early(atun_session_agent *a, atun_tstamp ts,
                        const atun_msg *msg) {
  switch (msg->type) {
  case ATUN_FRAME_HELLO_ACK: return on_hello_ack(a, ts, &msg->u.hello_ack);
  case ATUN_FRAME_GOODBYE: return on_goodbye(a, ts, &msg->u.goodbye);
  case ATUN_FRAME_ERROR: return on_error(a, ts, &msg->u.error);
  }
  return violation(a, ts, ATUN_APP_PROTOCOL_VIOLATION, "frame before hello_ack");
}

static int handle_frame(atun_session_agent *a, atun_tstamp ts,
                        const atun_msg *msg) {
  if (a->state == ATUN_SESSION_AGENT_HELLO_SENT) return handle_early(a, ts, msg);
  switch (msg->type) {
  case ATUN_FRAME_HEARTBEAT: return on_heartbeat(a, ts, &msg->u.heartbeat);
  case ATUN_FRAME_HEARTBEAT_ACK:
    return on_heartbeat_ack(a, ts, &msg->u.heartbeat_ack);
  case ATUN_FRAME_GOODBYE: return on_goodbye(a, ts, &msg->u.goodbye);
  case ATUN_FRAME_ERROR: return on_error(a, ts, &msg->u.error);
  case ATUN_FRAME_CERT_RENEW_RESPONSE:
    return on_renew_response(a, ts, &msg->u.cert_renew_response);
  case ATUN_FRAME_HELLO_ACK:
    return violation(a, ts, ATUN_APP_PROTOCOL_VIOLATION, "second hello_ack");
  }
  return violation(a, ts, ATUN_APP_PROTOCOL_VIOLATION,
                   "frame type a gateway never sends");
}

/* Decodes and handles the frame the reader holds. */
static int take_frame(atun_session_agent *a, atun_tstamp ts) {
  atun_msg msg;
  int rv = atun_frame_reader_decode(&a->reader, &msg, a->mem);
  if (rv == ATUN_ERR_NOMEM) return set_fatal(a, rv);
  if (rv != 0)
    return violation(a, ts, atun_app_error_from_codec(rv), atun_strerror(rv));
  rv = handle_frame(a, ts, &msg);
  atun_msg_free(&msg, a->mem);
  return rv;
}

/* --- public: lifecycle --------------------------------------------------------------- */

int atun_session_agent_new(atun_session_agent **pagent,
                           const atun_session_agent_settings *settings,
                           atun_session_agent_event_fn event_cb,
                           const atun_rand *rand, const atun_mem *mem,
                           void *user_data) {
  if (pagent == NULL || settings == NULL || event_cb == NULL || rand == NULL ||
      mem == NULL || !settings_valid(settings))
    return ATUN_ERR_INVALID_ARGUMENT;
  atun_backoff backoff;
  if (atun_backoff_init(&backoff, &settings->backoff, rand) != 0)
    return ATUN_ERR_INVALID_ARGUMENT;
  atun_session_agent *a = atun_mem_calloc(mem, 1, sizeof(*a));
  if (a == NULL) return ATUN_ERR_NOMEM;
  a->settings = *settings;
  a->event_cb = event_cb;
  a->user_data = user_data;
  a->mem = mem;
  a->backoff = backoff;
  atun_frame_reader_init(&a->reader, ATUN_CONTROL_PAYLOAD_MAX, mem);
  atun_outq_init(&a->outq, settings->outq_max, mem);
  a->state = ATUN_SESSION_AGENT_IDLE;
  a->timer = ATUN_TSTAMP_MAX;
  *pagent = a;
  return 0;
}

void atun_session_agent_del(atun_session_agent *agent) {
  if (agent == NULL) return;
  atun_frame_reader_free(&agent->reader);
  atun_outq_free(&agent->outq);
  atun_mem_free(agent->mem, agent->subnets);
  atun_mem_free(agent->mem, agent->domains);
  atun_mem_free(agent->mem, agent);
}

int atun_session_agent_start(atun_session_agent *agent, atun_tstamp ts) {
  int rv = enter(agent, ts);
  if (rv != 0) return rv;
  if (agent->state != ATUN_SESSION_AGENT_IDLE) return ATUN_ERR_STATE;
  return end_connection(agent, ts);
}

/* --- public: transport events -------------------------------------------------------- */

int atun_session_agent_on_transport_connected(atun_session_agent *agent,
                                              atun_tstamp ts) {
  int rv = enter(agent, ts);
  if (rv != 0 || agent->state != ATUN_SESSION_AGENT_CONNECTING) return rv;
  atun_msg msg = {.type = ATUN_FRAME_HELLO};
  msg.u.hello.min_version = agent->settings.min_version;
  msg.u.hello.max_version = agent->settings.max_version;
  memcpy(msg.u.hello.software_version, agent->settings.software_version,
         sizeof(msg.u.hello.software_version));
  if ((rv = queue_own(agent, ts, &msg)) != 0 ||
      agent->state != ATUN_SESSION_AGENT_CONNECTING)
    return rv;
  return set_state(agent, ATUN_SESSION_AGENT_HELLO_SENT);
}

int atun_session_agent_on_data(atun_session_agent *agent, atun_tstamp ts,
                               const uint8_t *data, size_t datalen) {
  int rv = enter(agent, ts);
  /* Each pass consumes at least one byte or ends the loop, so |datalen|
   * bounds it. */
  while (rv == 0 && datalen > 0 && stream_open(agent)) {
    ssize_t n = atun_frame_reader_feed(&agent->reader, data, datalen);
    if (n == ATUN_ERR_NOMEM) return set_fatal(agent, ATUN_ERR_NOMEM);
    if (n < 0)
      return violation(agent, ts, atun_app_error_from_codec((int)n),
                       atun_strerror((int)n));
    ATUN_ASSERT(n > 0);
    data += n;
    datalen -= (size_t)n;
    if (atun_frame_reader_ready(&agent->reader)) rv = take_frame(agent, ts);
  }
  return rv;
}

int atun_session_agent_on_stream_closed(atun_session_agent *agent,
                                        atun_tstamp ts) {
  int rv = enter(agent, ts);
  if (rv != 0 || !has_transport(agent)) return rv;
  if (agent->state == ATUN_SESSION_AGENT_DRAINING) {
    request_close(agent, ATUN_APP_NO_ERROR);
    return end_connection(agent, ts);
  }
  return fail_connection(agent, ts, ATUN_ERR_CLOSED, ATUN_APP_PROTOCOL_VIOLATION,
                         0, "control stream closed");
}

int atun_session_agent_on_transport_failed(atun_session_agent *agent,
                                           atun_tstamp ts) {
  int rv = enter(agent, ts);
  if (rv != 0 || !has_transport(agent)) return rv;
  if (agent->state == ATUN_SESSION_AGENT_DRAINING)
    return end_connection(agent, ts);
  atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_ERROR};
  ev.u.error.err = ATUN_ERR_CLOSED;
  ev.u.error.app_error = ATUN_APP_NO_ERROR;
  ev.u.error.message = "transport failed";
  if ((rv = emit(agent, &ev)) != 0) return rv;
  return end_connection(agent, ts);
}

/* --- public: timers ------------------------------------------------------------------- */

atun_tstamp atun_session_agent_get_expiry(const atun_session_agent *agent) {
  if (agent->fatal != 0 || agent->state == ATUN_SESSION_AGENT_IDLE ||
      agent->state == ATUN_SESSION_AGENT_CLOSED)
    return ATUN_TSTAMP_MAX;
  return agent->timer;
}

static int connect_now(atun_session_agent *a, atun_tstamp ts) {
  reader_reset(a);
  atun_outq_clear(&a->outq);
  a->close_pending = 0;
  a->close_error = 0;
  a->timer = after(ts, a->settings.handshake_timeout_ns);
  int rv = set_state(a, ATUN_SESSION_AGENT_CONNECTING);
  return rv != 0 ? rv : emit_simple(a, ATUN_SESSION_AGENT_EV_CONNECT_NOW);
}

static int heartbeat_tick(atun_session_agent *a, atun_tstamp ts) {
  if (!a->hb_acked && ++a->missed >= a->settings.dead_after_missed) {
    atun_session_agent_event ev = {.type = ATUN_SESSION_AGENT_EV_GATEWAY_DEAD};
    ev.u.gateway_dead.missed = a->missed;
    int rv = emit(a, &ev);
    if (rv != 0) return rv;
    return fail_connection(a, ts, ATUN_ERR_TIMEOUT, ATUN_APP_HEARTBEAT_TIMEOUT,
                           1, "no heartbeat_ack from the gateway");
  }
  return send_heartbeat(a, ts);
}

int atun_session_agent_handle_expiry(atun_session_agent *agent,
                                     atun_tstamp ts) {
  int rv = enter(agent, ts);
  if (rv != 0 || ts < atun_session_agent_get_expiry(agent)) return rv;
  switch (agent->state) {
  case ATUN_SESSION_AGENT_BACKOFF: return connect_now(agent, ts);
  case ATUN_SESSION_AGENT_CONNECTING:
  case ATUN_SESSION_AGENT_HELLO_SENT:
    return fail_connection(agent, ts, ATUN_ERR_TIMEOUT,
                           ATUN_APP_HANDSHAKE_TIMEOUT, 1, "no hello_ack in time");
  case ATUN_SESSION_AGENT_ESTABLISHED: return heartbeat_tick(agent, ts);
  }
  /* Idle and closed have no timer, so only the drain deadline is left. */
  ATUN_ASSERT(agent->state == ATUN_SESSION_AGENT_DRAINING);
  request_close(agent, ATUN_APP_SHUTDOWN);
  return end_connection(agent, ts);
}

/* --- public: requests ------------------------------------------------------------------ */

static int copy_routes(atun_session_agent *a, const atun_prefix *subnets,
                       size_t subnet_count, const atun_domain *domains,
                       size_t domain_count) {
  atun_prefix *s = NULL;
  atun_domain *d = NULL;
  if (subnet_count > 0) {
    s = atun_mem_calloc(a->mem, subnet_count, sizeof(*s));
    if (s == NULL) return ATUN_ERR_NOMEM;
    memcpy(s, subnets, subnet_count * sizeof(*s));
  }
  if (domain_count > 0) {
    d = atun_mem_calloc(a->mem, domain_count, sizeof(*d));
    if (d == NULL) {
      atun_mem_free(a->mem, s);
      return ATUN_ERR_NOMEM;
    }
    memcpy(d, domains, domain_count * sizeof(*d));
  }
  atun_mem_free(a->mem, a->subnets);
  atun_mem_free(a->mem, a->domains);
  a->subnets = s;
  a->subnet_count = subnet_count;
  a->domains = d;
  a->domain_count = domain_count;
  return 0;
}

int atun_session_agent_set_routes(atun_session_agent *agent, atun_tstamp ts,
                                  const atun_prefix *subnets,
                                  size_t subnet_count,
                                  const atun_domain *domains,
                                  size_t domain_count) {
  int rv = enter(agent, ts);
  if (rv != 0) return rv;
  if (agent->state == ATUN_SESSION_AGENT_CLOSED) return ATUN_ERR_STATE;
  if ((subnet_count > 0 && subnets == NULL) ||
      (domain_count > 0 && domains == NULL))
    return ATUN_ERR_INVALID_ARGUMENT;
  atun_msg msg = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  msg.u.route_advertise.epoch = agent->epoch + 1;
  msg.u.route_advertise.subnets = (atun_prefix *)subnets;
  msg.u.route_advertise.subnet_count = subnet_count;
  msg.u.route_advertise.domains = (atun_domain *)domains;
  msg.u.route_advertise.domain_count = domain_count;
  ssize_t size = atun_frame_encoded_size(&msg);
  if (size < 0) return (int)size;
  if ((size_t)size > agent->settings.outq_max) return ATUN_ERR_FULL;
  rv = copy_routes(agent, subnets, subnet_count, domains, domain_count);
  if (rv != 0) return set_fatal(agent, rv);
  ++agent->epoch;
  if (agent->state != ATUN_SESSION_AGENT_ESTABLISHED) return 0;
  advertise_msg(agent, &msg);
  return queue_own(agent, ts, &msg);
}

void atun_session_agent_set_active_streams(atun_session_agent *agent,
                                           uint32_t count) {
  agent->active_streams = count;
}

int atun_session_agent_request_renewal(atun_session_agent *agent,
                                       atun_tstamp ts, const uint8_t *csr,
                                       size_t csr_len, int rotate_key) {
  int rv = enter(agent, ts);
  if (rv != 0) return rv;
  if (agent->state != ATUN_SESSION_AGENT_ESTABLISHED || agent->renew_pending)
    return ATUN_ERR_STATE;
  atun_msg msg = {.type = ATUN_FRAME_CERT_RENEW_REQUEST};
  msg.u.cert_renew_request.csr = (uint8_t *)csr;
  msg.u.cert_renew_request.csr_len = csr_len;
  msg.u.cert_renew_request.rotate_key = rotate_key ? 1 : 0;
  ssize_t size = atun_frame_encoded_size(&msg);
  if (size < 0) return (int)size;
  if ((size_t)size > agent->settings.outq_max) return ATUN_ERR_FULL;
  if ((rv = queue_own(agent, ts, &msg)) != 0 ||
      agent->state != ATUN_SESSION_AGENT_ESTABLISHED)
    return rv;
  agent->renew_pending = 1;
  return 0;
}

int atun_session_agent_drain(atun_session_agent *agent, atun_tstamp ts,
                             uint64_t reason) {
  int rv = enter(agent, ts);
  if (rv != 0) return rv;
  if (reason > ATUN_VARINT_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  switch (agent->state) {
  case ATUN_SESSION_AGENT_DRAINING:
  case ATUN_SESSION_AGENT_CLOSED: return ATUN_ERR_STATE;
  case ATUN_SESSION_AGENT_ESTABLISHED: break;
  default:
    if (has_transport(agent)) request_close(agent, ATUN_APP_NO_ERROR);
    return set_state(agent, ATUN_SESSION_AGENT_CLOSED);
  }
  atun_msg msg = {.type = ATUN_FRAME_GOODBYE};
  msg.u.goodbye.reason = reason;
  rv = queue_msg(agent, &msg);
  if (rv == ATUN_ERR_NOMEM) return set_fatal(agent, rv);
  if (rv != 0) {
    /* The gateway is not reading: no point waiting for it to take Goodbye. */
    request_close(agent, ATUN_APP_SHUTDOWN);
    return set_state(agent, ATUN_SESSION_AGENT_CLOSED);
  }
  agent->timer = after(ts, agent->settings.drain_timeout_ns);
  return set_state(agent, ATUN_SESSION_AGENT_DRAINING);
}

/* --- public: output and queries --------------------------------------------------------- */

ssize_t atun_session_agent_write(atun_session_agent *agent, uint8_t *dest,
                                 size_t destlen) {
  if (agent->fatal != 0) return agent->fatal;
  return (ssize_t)atun_outq_read(&agent->outq, dest, destlen);
}

size_t atun_session_agent_pending(const atun_session_agent *agent) {
  return atun_outq_len(&agent->outq);
}

int atun_session_agent_want_close(const atun_session_agent *agent,
                                  uint64_t *papp_error) {
  if (!agent->close_pending) return 0;
  *papp_error = agent->close_error;
  return 1;
}

atun_session_agent_state
atun_session_agent_get_state(const atun_session_agent *agent) {
  return (atun_session_agent_state)agent->state;
}

uint64_t atun_session_agent_get_epoch(const atun_session_agent *agent) {
  return agent->epoch;
}
