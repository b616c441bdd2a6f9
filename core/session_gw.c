/*
 * The gateway's control-session machine; session_gw.h describes the states,
 * the closing rules and which frames are ignored.
 */
#include "session_gw.h"

#include <stdio.h>
#include <string.h>

struct atun_session_gw {
  atun_session_gw_settings settings;
  atun_session_gw_event_fn event_cb;
  void *user_data;
  const atun_mem *mem;
  atun_frame_reader reader;
  atun_outq outq;
  int state;
  int fatal;       /* sticky fatal error, 0 while usable */
  int in_callback; /* the event callback is running */
  int close_pending;
  uint64_t close_error;
  /* The Hello deadline in await_hello, the drain deadline in draining. */
  atun_tstamp timer;
  /* Established only. */
  int online;
  atun_tstamp offline_at; /* last_seen + offline timeout */
  atun_tstamp hb_next;    /* the gateway's next own Heartbeat */
  uint64_t hb_seq;        /* last sent, 0 = none yet */
  atun_tstamp hb_sent_at;
  int hb_acked;
  uint64_t rtt_ns;
  int renew_pending;
};

static const char *const state_names[] = {"idle", "await_hello", "established",
                                          "draining", "closed"};

const char *atun_session_gw_state_name(int state) {
  if (state < 0 || (size_t)state >= sizeof(state_names) / sizeof(state_names[0]))
    return "unknown";
  return state_names[state];
}

void atun_session_gw_settings_default(atun_session_gw_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  settings->min_version = ATUN_PROTO_VERSION_MIN;
  settings->max_version = ATUN_PROTO_VERSION_MAX;
  settings->heartbeat_interval_ns = 10 * ATUN_NS_PER_S;
  settings->offline_timeout_ns = 3 * settings->heartbeat_interval_ns;
  settings->hello_timeout_ns = 10 * ATUN_NS_PER_S;
  settings->drain_timeout_ns = 30 * ATUN_NS_PER_S;
  settings->outq_max = (size_t)128 * 1024;
}

/* --- small helpers ------------------------------------------------------------- */

static int duration_valid(uint64_t ns) {
  return ns > 0 && ns <= ATUN_SESSION_TIMEOUT_MAX_NS;
}

static int settings_valid(const atun_session_gw_settings *s) {
  uint32_t chosen;
  uint64_t hb = s->heartbeat_interval_ns;
  return s->min_version > 0 &&
         atun_version_negotiate(s->min_version, s->max_version,
                                s->min_version, s->max_version, &chosen) == 0 &&
         memchr(s->software_version, 0, sizeof(s->software_version)) != NULL &&
         atun_text_valid(s->software_version, strlen(s->software_version)) &&
         hb >= ATUN_SESSION_HEARTBEAT_MIN_NS &&
         hb <= ATUN_SESSION_HEARTBEAT_MAX_NS && hb % ATUN_NS_PER_MS == 0 &&
         s->offline_timeout_ns >= hb &&
         s->offline_timeout_ns <= ATUN_SESSION_TIMEOUT_MAX_NS &&
         s->offline_timeout_ns % ATUN_NS_PER_MS == 0 &&
         duration_valid(s->hello_timeout_ns) &&
         duration_valid(s->drain_timeout_ns) && s->outq_max >= ATUN_OUTQ_MIN;
}

/* |ts| + |d|, saturating one short of ATUN_TSTAMP_MAX ("never"). */
static atun_tstamp after(atun_tstamp ts, uint64_t d) {
  return ts < ATUN_TSTAMP_MAX - 1 - d ? ts + d : ATUN_TSTAMP_MAX - 1;
}

static int set_fatal(atun_session_gw *g, int err) {
  ATUN_ASSERT(atun_err_is_fatal(err));
  g->fatal = err;
  return err;
}

static int emit(atun_session_gw *g, atun_session_gw_event *ev) {
  g->in_callback = 1;
  int rv = g->event_cb(g, ev, g->user_data);
  g->in_callback = 0;
  return rv != 0 ? set_fatal(g, ATUN_ERR_CALLBACK_FAILURE) : 0;
}

static int emit_simple(atun_session_gw *g, int type) {
  atun_session_gw_event ev = {.type = type};
  return emit(g, &ev);
}

static int set_state(atun_session_gw *g, int state) {
  atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_STATE};
  ev.u.state.old_state = g->state;
  ev.u.state.new_state = state;
  g->state = state;
  if (state == ATUN_SESSION_GW_CLOSED) atun_frame_reader_free(&g->reader);
  return emit(g, &ev);
}

/* Entry check shared by the calls that change the machine. */
static int enter(const atun_session_gw *g, atun_tstamp ts) {
  if (g->fatal != 0) return g->fatal;
  if (g->in_callback) return ATUN_ERR_STATE;
  return ts == ATUN_TSTAMP_MAX ? ATUN_ERR_INVALID_ARGUMENT : 0;
}

static int stream_open(const atun_session_gw *g) {
  return g->state == ATUN_SESSION_GW_AWAIT_HELLO ||
         g->state == ATUN_SESSION_GW_ESTABLISHED ||
         g->state == ATUN_SESSION_GW_DRAINING;
}

static void request_close(atun_session_gw *g, uint64_t app_error) {
  g->close_pending = 1;
  g->close_error = app_error;
}

/* Queues |msg| as one frame.  Returns 0, ATUN_ERR_FULL, ATUN_ERR_NOMEM or an
 * encoding error (only for caller-supplied content). */
static int queue_msg(atun_session_gw *g, const atun_msg *msg) {
  ssize_t size = atun_frame_encoded_size(msg);
  if (size < 0) return (int)size;
  int err = 0;
  uint8_t *p = atun_outq_reserve(&g->outq, (size_t)size, &err);
  if (p == NULL) return err;
  ssize_t n = atun_frame_encode(p, (size_t)size, msg);
  ATUN_ASSERT(n == size);
  atun_outq_commit(&g->outq, (size_t)n);
  return 0;
}

/* Queues Error {|app_error|, |message|} when the stream is open.  A full
 * queue leaves it out: the close carries the same code anyway. */
static int queue_error(atun_session_gw *g, uint64_t app_error,
                       const char *message, uint32_t min, uint32_t max) {
  if (!stream_open(g)) return 0;
  atun_msg msg = {.type = ATUN_FRAME_ERROR};
  msg.u.error.code = app_error;
  msg.u.error.message = (char *)message;
  msg.u.error.supported_min_version = min;
  msg.u.error.supported_max_version = max;
  int rv = queue_msg(g, &msg);
  if (rv == ATUN_ERR_NOMEM) return set_fatal(g, rv);
  return 0;
}

/* Ends the session over |err|: the caller is asked to close with
 * |app_error| and the event names the cause. */
static int finish(atun_session_gw *g, int err, uint64_t app_error, int remote,
                  const char *message) {
  request_close(g, app_error);
  atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_ERROR};
  ev.u.error.err = err;
  ev.u.error.app_error = app_error;
  ev.u.error.remote = remote;
  ev.u.error.message = message;
  int rv = emit(g, &ev);
  return rv != 0 ? rv : set_state(g, ATUN_SESSION_GW_CLOSED);
}

/* As finish(), telling the agent why first. */
static int fail_session(atun_session_gw *g, int err, uint64_t app_error,
                        const char *message) {
  int rv = queue_error(g, app_error, message, 0, 0);
  return rv != 0 ? rv : finish(g, err, app_error, 0, message);
}

static int violation(atun_session_gw *g, uint64_t app_error,
                     const char *message) {
  return fail_session(g, ATUN_ERR_PROTO, app_error, message);
}

/* Queues a frame the machine itself produced.  A full queue means the
 * agent stopped reading: the session is given up as overloaded. */
static int queue_own(atun_session_gw *g, const atun_msg *msg) {
  int rv = queue_msg(g, msg);
  if (rv == ATUN_ERR_FULL)
    return finish(g, ATUN_ERR_FULL, ATUN_APP_OVERLOADED, 0,
                  "outbound queue full");
  /* Every frame the machine builds itself is valid, so only allocation can
   * fail here; anything else is a bug, reported as such in release builds. */
  ATUN_ASSERT(rv == 0 || rv == ATUN_ERR_NOMEM);
  if (rv != 0) return set_fatal(g, rv == ATUN_ERR_NOMEM ? rv : ATUN_ERR_INTERNAL);
  return 0;
}

static const char *text_or_empty(const char *s) { return s != NULL ? s : ""; }

/* --- liveness -------------------------------------------------------------------- */

/* The agent showed a sign of life (Heartbeat, RouteAdvertise). */
static int seen(atun_session_gw *g, atun_tstamp ts) {
  g->offline_at = after(ts, g->settings.offline_timeout_ns);
  if (g->online) return 0;
  g->online = 1;
  return emit_simple(g, ATUN_SESSION_GW_EV_ONLINE);
}

static int send_heartbeat(atun_session_gw *g, atun_tstamp ts) {
  atun_msg msg = {.type = ATUN_FRAME_HEARTBEAT};
  msg.u.heartbeat.seq = g->hb_seq + 1;
  msg.u.heartbeat.sent_at = ts < ATUN_VARINT_MAX ? ts : ATUN_VARINT_MAX;
  /* The agent has no use for the gateway's stream count. */
  msg.u.heartbeat.active_stream_count = 0;
  int rv = queue_own(g, &msg);
  if (rv != 0 || g->state != ATUN_SESSION_GW_ESTABLISHED) return rv;
  ++g->hb_seq;
  g->hb_sent_at = ts;
  g->hb_acked = 0;
  g->hb_next = after(ts, g->settings.heartbeat_interval_ns);
  return 0;
}

/* --- frames in ------------------------------------------------------------------- */

static int refuse_version(atun_session_gw *g) {
  char message[64];
  uint32_t min = g->settings.min_version, max = g->settings.max_version;
  snprintf(message, sizeof(message), "supported protocol versions: %u..%u",
           (unsigned)min, (unsigned)max);
  int rv = queue_error(g, ATUN_APP_VERSION_MISMATCH, message, min, max);
  return rv != 0 ? rv
                 : finish(g, ATUN_ERR_VERSION, ATUN_APP_VERSION_MISMATCH, 0,
                          message);
}

static int on_hello(atun_session_gw *g, atun_tstamp ts, const atun_hello *hello) {
  uint32_t version;
  if (atun_version_negotiate(g->settings.min_version, g->settings.max_version,
                             hello->min_version, hello->max_version,
                             &version) != 0)
    return refuse_version(g);
  atun_msg msg = {.type = ATUN_FRAME_HELLO_ACK};
  atun_hello_ack *ack = &msg.u.hello_ack;
  ack->chosen_version = version;
  ack->heartbeat_interval_ms =
      (uint32_t)(g->settings.heartbeat_interval_ns / ATUN_NS_PER_MS);
  ack->offline_timeout_ms =
      (uint32_t)(g->settings.offline_timeout_ns / ATUN_NS_PER_MS);
  ack->has_agent_id = g->settings.has_agent_id;
  memcpy(ack->agent_id, g->settings.agent_id, sizeof(ack->agent_id));
  memcpy(ack->software_version, g->settings.software_version,
         sizeof(ack->software_version));
  int rv = queue_own(g, &msg);
  if (rv != 0 || g->state != ATUN_SESSION_GW_AWAIT_HELLO) return rv;
  g->online = 1;
  g->offline_at = after(ts, g->settings.offline_timeout_ns);
  g->hb_next = after(ts, g->settings.heartbeat_interval_ns);
  if ((rv = set_state(g, ATUN_SESSION_GW_ESTABLISHED)) != 0) return rv;
  atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_ESTABLISHED};
  ev.u.established.version = version;
  ev.u.established.hello = hello;
  return emit(g, &ev);
}

static int on_advertise(atun_session_gw *g, atun_tstamp ts,
                        const atun_route_advertise *adv) {
  if (g->state == ATUN_SESSION_GW_DRAINING) return 0;
  int rv = seen(g, ts);
  if (rv != 0) return rv;
  atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_ADVERTISE};
  ev.u.advertise = adv;
  return emit(g, &ev);
}

static int on_heartbeat(atun_session_gw *g, atun_tstamp ts,
                        const atun_heartbeat *hb) {
  atun_msg msg = {.type = ATUN_FRAME_HEARTBEAT_ACK};
  msg.u.heartbeat_ack.seq = hb->seq;
  msg.u.heartbeat_ack.echo_sent_at = hb->sent_at;
  int rv = queue_own(g, &msg);
  if (rv != 0 || g->state == ATUN_SESSION_GW_CLOSED) return rv;
  if (g->state == ATUN_SESSION_GW_ESTABLISHED && (rv = seen(g, ts)) != 0)
    return rv;
  atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_HEARTBEAT};
  ev.u.heartbeat.seq = hb->seq;
  ev.u.heartbeat.sent_at = hb->sent_at;
  ev.u.heartbeat.active_streams = hb->active_stream_count;
  ev.u.heartbeat.rtt_ns = g->rtt_ns;
  return emit(g, &ev);
}

static int on_heartbeat_ack(atun_session_gw *g, atun_tstamp ts,
                            const atun_heartbeat_ack *ack) {
  if (ack->seq == 0 || ack->seq > g->hb_seq)
    return violation(g, ATUN_APP_PROTOCOL_VIOLATION,
                     "heartbeat_ack for a heartbeat never sent");
  if (ack->seq == g->hb_seq && !g->hb_acked) {
    g->hb_acked = 1;
    g->rtt_ns = ts >= g->hb_sent_at ? ts - g->hb_sent_at : 0;
  }
  return 0;
}

static int on_goodbye(atun_session_gw *g, atun_tstamp ts,
                      const atun_goodbye *bye) {
  if (g->state == ATUN_SESSION_GW_DRAINING) return 0;
  g->timer = after(ts, g->settings.drain_timeout_ns);
  int rv = set_state(g, ATUN_SESSION_GW_DRAINING);
  if (rv != 0) return rv;
  atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_GOODBYE};
  ev.u.goodbye.reason = bye->reason;
  ev.u.goodbye.message = text_or_empty(bye->message);
  return emit(g, &ev);
}

static int on_renew_request(atun_session_gw *g,
                            const atun_cert_renew_request *req) {
  if (g->state == ATUN_SESSION_GW_DRAINING || g->renew_pending) return 0;
  g->renew_pending = 1;
  atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_RENEW_REQUEST};
  ev.u.renew = req;
  return emit(g, &ev);
}

static int handle_frame(atun_session_gw *g, atun_tstamp ts,
                        const atun_msg *msg) {
  if (g->state == ATUN_SESSION_GW_AWAIT_HELLO) {
    if (msg->type == ATUN_FRAME_HELLO) return on_hello(g, ts, &msg->u.hello);
    return violation(g, ATUN_APP_PROTOCOL_VIOLATION, "frame before hello");
  }
  switch (msg->type) {
  case ATUN_FRAME_HELLO:
    return violation(g, ATUN_APP_PROTOCOL_VIOLATION, "second hello");
  case ATUN_FRAME_ROUTE_ADVERTISE:
    return on_advertise(g, ts, &msg->u.route_advertise);
  case ATUN_FRAME_HEARTBEAT: return on_heartbeat(g, ts, &msg->u.heartbeat);
  case ATUN_FRAME_HEARTBEAT_ACK:
    return on_heartbeat_ack(g, ts, &msg->u.heartbeat_ack);
  case ATUN_FRAME_GOODBYE: return on_goodbye(g, ts, &msg->u.goodbye);
  case ATUN_FRAME_ERROR:
    return finish(g, ATUN_ERR_CLOSED, msg->u.error.code, 1,
                  text_or_empty(msg->u.error.message));
  case ATUN_FRAME_CERT_RENEW_REQUEST:
    return on_renew_request(g, &msg->u.cert_renew_request);
  }
  if (atun_frame_type_is_session(msg->type))
    return violation(g, ATUN_APP_PROTOCOL_VIOLATION,
                     "session frame on the control stream");
  return violation(g, ATUN_APP_PROTOCOL_VIOLATION,
                   "frame type an agent never sends");
}

/* Decodes and handles the frame the reader holds. */
static int take_frame(atun_session_gw *g, atun_tstamp ts) {
  atun_msg msg;
  int rv = atun_frame_reader_decode(&g->reader, &msg, g->mem);
  if (rv == ATUN_ERR_NOMEM) return set_fatal(g, rv);
  if (rv != 0)
    return violation(g, atun_app_error_from_codec(rv), atun_strerror(rv));
  rv = handle_frame(g, ts, &msg);
  atun_msg_free(&msg, g->mem);
  /* One big RouteAdvertise must not pin a megabyte per agent: re-arming an
   * idle reader (it stands between frames here) gives its buffer back. */
  if (rv == 0 && g->reader.buf_cap > ATUN_OUTQ_KEEP) {
    atun_frame_reader_free(&g->reader);
    atun_frame_reader_init(&g->reader, ATUN_CONTROL_PAYLOAD_MAX, g->mem);
  }
  return rv;
}

/* --- public: lifecycle --------------------------------------------------------------- */

int atun_session_gw_new(atun_session_gw **pgw,
                        const atun_session_gw_settings *settings,
                        atun_session_gw_event_fn event_cb, const atun_mem *mem,
                        void *user_data) {
  if (pgw == NULL || settings == NULL || event_cb == NULL || mem == NULL ||
      !settings_valid(settings))
    return ATUN_ERR_INVALID_ARGUMENT;
  atun_session_gw *g = atun_mem_calloc(mem, 1, sizeof(*g));
  if (g == NULL) return ATUN_ERR_NOMEM;
  g->settings = *settings;
  g->event_cb = event_cb;
  g->user_data = user_data;
  g->mem = mem;
  atun_frame_reader_init(&g->reader, ATUN_CONTROL_PAYLOAD_MAX, mem);
  atun_outq_init(&g->outq, settings->outq_max, mem);
  g->state = ATUN_SESSION_GW_IDLE;
  g->timer = ATUN_TSTAMP_MAX;
  *pgw = g;
  return 0;
}

void atun_session_gw_del(atun_session_gw *gw) {
  if (gw == NULL) return;
  atun_frame_reader_free(&gw->reader);
  atun_outq_free(&gw->outq);
  atun_mem_free(gw->mem, gw);
}

/* --- public: transport events -------------------------------------------------------- */

int atun_session_gw_on_transport_connected(atun_session_gw *gw, atun_tstamp ts) {
  int rv = enter(gw, ts);
  if (rv != 0) return rv;
  if (gw->state != ATUN_SESSION_GW_IDLE) return ATUN_ERR_STATE;
  gw->timer = after(ts, gw->settings.hello_timeout_ns);
  return set_state(gw, ATUN_SESSION_GW_AWAIT_HELLO);
}

int atun_session_gw_on_data(atun_session_gw *gw, atun_tstamp ts,
                            const uint8_t *data, size_t datalen) {
  int rv = enter(gw, ts);
  if (rv != 0) return rv;
  if (gw->state == ATUN_SESSION_GW_IDLE) return ATUN_ERR_STATE;
  /* Each pass consumes at least one byte or ends the loop, so |datalen|
   * bounds it. */
  while (rv == 0 && datalen > 0 && stream_open(gw)) {
    ssize_t n = atun_frame_reader_feed(&gw->reader, data, datalen);
    if (n == ATUN_ERR_NOMEM) return set_fatal(gw, ATUN_ERR_NOMEM);
    if (n < 0)
      return violation(gw, atun_app_error_from_codec((int)n),
                       atun_strerror((int)n));
    ATUN_ASSERT(n > 0);
    data += n;
    datalen -= (size_t)n;
    if (atun_frame_reader_ready(&gw->reader)) rv = take_frame(gw, ts);
  }
  return rv;
}

int atun_session_gw_on_stream_closed(atun_session_gw *gw, atun_tstamp ts) {
  int rv = enter(gw, ts);
  if (rv != 0 || gw->state == ATUN_SESSION_GW_CLOSED) return rv;
  if (gw->state == ATUN_SESSION_GW_DRAINING) {
    request_close(gw, ATUN_APP_NO_ERROR);
    return set_state(gw, ATUN_SESSION_GW_CLOSED);
  }
  return finish(gw, ATUN_ERR_CLOSED, ATUN_APP_PROTOCOL_VIOLATION, 0,
                "control stream closed");
}

int atun_session_gw_on_transport_failed(atun_session_gw *gw, atun_tstamp ts) {
  int rv = enter(gw, ts);
  if (rv != 0 || gw->state == ATUN_SESSION_GW_CLOSED) return rv;
  if (gw->state != ATUN_SESSION_GW_DRAINING) {
    atun_session_gw_event ev = {.type = ATUN_SESSION_GW_EV_ERROR};
    ev.u.error.err = ATUN_ERR_CLOSED;
    ev.u.error.app_error = ATUN_APP_NO_ERROR;
    ev.u.error.message = "transport failed";
    if ((rv = emit(gw, &ev)) != 0) return rv;
  }
  return set_state(gw, ATUN_SESSION_GW_CLOSED);
}

/* --- public: timers ------------------------------------------------------------------- */

atun_tstamp atun_session_gw_get_expiry(const atun_session_gw *gw) {
  if (gw->fatal != 0) return ATUN_TSTAMP_MAX;
  switch (gw->state) {
  case ATUN_SESSION_GW_AWAIT_HELLO:
  case ATUN_SESSION_GW_DRAINING: return gw->timer;
  case ATUN_SESSION_GW_ESTABLISHED:
    if (gw->online && gw->offline_at < gw->hb_next) return gw->offline_at;
    return gw->hb_next;
  }
  return ATUN_TSTAMP_MAX;
}

static int established_expiry(atun_session_gw *g, atun_tstamp ts) {
  if (g->online && ts >= g->offline_at) {
    g->online = 0;
    int rv = emit_simple(g, ATUN_SESSION_GW_EV_OFFLINE);
    if (rv != 0) return rv;
  }
  return ts >= g->hb_next ? send_heartbeat(g, ts) : 0;
}

int atun_session_gw_handle_expiry(atun_session_gw *gw, atun_tstamp ts) {
  int rv = enter(gw, ts);
  if (rv != 0 || ts < atun_session_gw_get_expiry(gw)) return rv;
  switch (gw->state) {
  case ATUN_SESSION_GW_AWAIT_HELLO:
    return fail_session(gw, ATUN_ERR_TIMEOUT, ATUN_APP_HANDSHAKE_TIMEOUT,
                        "no hello in time");
  case ATUN_SESSION_GW_ESTABLISHED: return established_expiry(gw, ts);
  }
  /* Idle and closed have no timer, so only the drain deadline is left. */
  ATUN_ASSERT(gw->state == ATUN_SESSION_GW_DRAINING);
  request_close(gw, ATUN_APP_SHUTDOWN);
  return set_state(gw, ATUN_SESSION_GW_CLOSED);
}

/* --- public: requests ------------------------------------------------------------------ */

int atun_session_gw_drain(atun_session_gw *gw, atun_tstamp ts, uint64_t reason) {
  int rv = enter(gw, ts);
  if (rv != 0) return rv;
  if (reason > ATUN_VARINT_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  if (gw->state == ATUN_SESSION_GW_DRAINING ||
      gw->state == ATUN_SESSION_GW_CLOSED)
    return ATUN_ERR_STATE;
  if (gw->state != ATUN_SESSION_GW_ESTABLISHED) {
    request_close(gw, ATUN_APP_SHUTDOWN);
    return set_state(gw, ATUN_SESSION_GW_CLOSED);
  }
  atun_msg msg = {.type = ATUN_FRAME_GOODBYE};
  msg.u.goodbye.reason = reason;
  rv = queue_msg(gw, &msg);
  if (rv == ATUN_ERR_NOMEM) return set_fatal(gw, rv);
  if (rv != 0) {
    /* The agent is not reading: no point waiting for it to take Goodbye. */
    request_close(gw, ATUN_APP_SHUTDOWN);
    return set_state(gw, ATUN_SESSION_GW_CLOSED);
  }
  gw->timer = after(ts, gw->settings.drain_timeout_ns);
  return set_state(gw, ATUN_SESSION_GW_DRAINING);
}

int atun_session_gw_close(atun_session_gw *gw, atun_tstamp ts,
                          uint64_t app_error, const char *message) {
  int rv = enter(gw, ts);
  if (rv != 0) return rv;
  if (gw->state == ATUN_SESSION_GW_CLOSED) return ATUN_ERR_STATE;
  if (app_error > ATUN_VARINT_MAX ||
      (message != NULL && (strlen(message) > ATUN_MESSAGE_MAX ||
                           !atun_text_valid(message, strlen(message)))))
    return ATUN_ERR_INVALID_ARGUMENT;
  if ((rv = queue_error(gw, app_error, message, 0, 0)) != 0) return rv;
  request_close(gw, app_error);
  return set_state(gw, ATUN_SESSION_GW_CLOSED);
}

int atun_session_gw_send_renew_response(atun_session_gw *gw, atun_tstamp ts,
                                        uint64_t status, const uint8_t *cert,
                                        size_t cert_len, const char *message) {
  int rv = enter(gw, ts);
  if (rv != 0) return rv;
  if (!gw->renew_pending || gw->state != ATUN_SESSION_GW_ESTABLISHED)
    return ATUN_ERR_STATE;
  atun_msg msg = {.type = ATUN_FRAME_CERT_RENEW_RESPONSE};
  msg.u.cert_renew_response.status = status;
  msg.u.cert_renew_response.cert = (uint8_t *)cert;
  msg.u.cert_renew_response.cert_len = cert_len;
  msg.u.cert_renew_response.message = (char *)message;
  ssize_t size = atun_frame_encoded_size(&msg);
  if (size < 0) return (int)size;
  if ((rv = queue_own(gw, &msg)) != 0) return rv;
  gw->renew_pending = 0;
  return 0;
}

/* --- public: output and queries --------------------------------------------------------- */

ssize_t atun_session_gw_write(atun_session_gw *gw, uint8_t *dest,
                              size_t destlen) {
  if (gw->fatal != 0) return gw->fatal;
  return (ssize_t)atun_outq_read(&gw->outq, dest, destlen);
}

size_t atun_session_gw_pending(const atun_session_gw *gw) {
  return atun_outq_len(&gw->outq);
}

int atun_session_gw_want_close(const atun_session_gw *gw, uint64_t *papp_error) {
  if (!gw->close_pending) return 0;
  *papp_error = gw->close_error;
  return 1;
}

atun_session_gw_state atun_session_gw_get_state(const atun_session_gw *gw) {
  return (atun_session_gw_state)gw->state;
}

int atun_session_gw_is_online(const atun_session_gw *gw) {
  return gw->state == ATUN_SESSION_GW_ESTABLISHED && gw->online;
}

uint64_t atun_session_gw_get_rtt(const atun_session_gw *gw) {
  return gw->rtt_ns;
}
