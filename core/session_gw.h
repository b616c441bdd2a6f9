/*
 * The gateway side of the control session (SPEC §3, §4), sans-I/O.
 *
 * One machine per agent connection, speaking to the control stream through
 * the interface described in stream.h.  It does not own the registry: what
 * the registry needs (the agent's Hello, advertisements, heartbeats, going
 * offline, leaving) goes to the caller as events.
 *
 *   idle --transport up--> await_hello --Hello--> established
 *   established --Goodbye from the agent, or drain()--> draining
 *   any --violation, Error, timeout, close(), transport gone--> closed
 *
 * Hello: the highest version both sides support wins; with no overlap the
 * gateway answers Error {VERSION_MISMATCH, its supported range} and closes
 * with ATUN_APP_VERSION_MISMATCH.  Otherwise HelloAck carries the chosen
 * version, the heartbeat interval and the offline timeout.  No Hello within
 * |hello_timeout_ns| closes with ATUN_APP_HANDSHAKE_TIMEOUT.
 *
 * Liveness follows the registry's rule (registry.h): the agent is online
 * while ts < last_seen + offline_timeout, where last_seen is the Hello, the
 * last Heartbeat or the last RouteAdvertise.  Reaching the timeout emits
 * OFFLINE; the connection stays (QUIC's idle timeout ends a dead one) and a
 * later Heartbeat or RouteAdvertise emits ONLINE again.  The gateway sends
 * its own Heartbeats on the same interval and takes an RTT sample from each
 * HeartbeatAck, reported in the HEARTBEAT event.
 *
 * Closing over a protocol violation sends Error {code, message} and asks
 * the caller to close the connection with the same application error
 * (codec.h): a frame before Hello, a second Hello, frames an agent never
 * sends (HelloAck, CertRenewResponse) and session-stream frame types on
 * the control stream -> PROTOCOL_VIOLATION, a HeartbeatAck for a Heartbeat
 * never sent -> PROTOCOL_VIOLATION, unknown type -> UNKNOWN_FRAME, oversize
 * -> FRAME_TOO_LARGE, lists over their bound -> LIMIT_EXCEEDED, other
 * decode failures -> MALFORMED_FRAME.
 *
 * Frames ignored rather than fatal: a duplicate or late HeartbeatAck (no
 * RTT sample), a CertRenewRequest while one is waiting for its response
 * (the agent gets the answer to the first), and while draining a
 * RouteAdvertise, a CertRenewRequest or another Goodbye (the agent is on its
 * way out; routing to it has stopped).  Bytes after the machine asked to
 * close are dropped.
 *
 * Every call taking |ts| also returns ATUN_ERR_INVALID_ARGUMENT for
 * ts == ATUN_TSTAMP_MAX, and ATUN_ERR_STATE when made from inside the
 * event callback; the machine is then unchanged.
 *
 * Errors at or below ATUN_ERR_FATAL (NOMEM, CALLBACK_FAILURE) leave the
 * machine unusable: every later call returns the same error; the caller
 * closes the connection with ATUN_APP_INTERNAL and deletes the machine.
 */
#ifndef ATUN_SESSION_GW_H
#define ATUN_SESSION_GW_H

#include "atun.h"
#include "codec.h"
#include "session_agent.h"
#include "stream.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum atun_session_gw_state {
  ATUN_SESSION_GW_IDLE = 0,    /* created, transport not reported up */
  ATUN_SESSION_GW_AWAIT_HELLO, /* waiting for the agent's Hello */
  ATUN_SESSION_GW_ESTABLISHED, /* HelloAck sent */
  ATUN_SESSION_GW_DRAINING,    /* Goodbye sent or received */
  ATUN_SESSION_GW_CLOSED       /* terminal */
} atun_session_gw_state;

/* Returns "idle", "await_hello", ... */
const char *atun_session_gw_state_name(int state);

typedef struct atun_session_gw_settings {
  /* Versions offered.  Values outside what this build implements are
   * accepted so that tests and the simulator can stage a mismatch. */
  uint32_t min_version; /* default ATUN_PROTO_VERSION_MIN */
  uint32_t max_version; /* default ATUN_PROTO_VERSION_MAX */
  /* Sent in HelloAck; "" leaves it out. */
  char software_version[ATUN_SOFTWARE_VERSION_MAX + 1];
  /* The agent id taken from the client certificate, echoed in HelloAck. */
  uint8_t has_agent_id;
  uint8_t agent_id[ATUN_AGENT_ID_LEN];
  /* Told to the agent and used for the gateway's own Heartbeats.  Whole
   * milliseconds within [ATUN_SESSION_HEARTBEAT_MIN_NS,
   * ATUN_SESSION_HEARTBEAT_MAX_NS].  Default 10 s. */
  uint64_t heartbeat_interval_ns;
  /* Silence after which the agent is offline.  Whole milliseconds, at least
   * the interval, at most ATUN_SESSION_TIMEOUT_MAX_NS.  Default 3 intervals
   * (SPEC §4), as the registry counts. */
  uint64_t offline_timeout_ns;
  /* From on_transport_connected() to Hello.  Default 10 s. */
  uint64_t hello_timeout_ns;
  /* From entering draining to closing regardless.  Default 30 s. */
  uint64_t drain_timeout_ns;
  /* Bound on queued outbound bytes, >= ATUN_OUTQ_MIN.  Default 128 KiB. */
  size_t outq_max;
} atun_session_gw_settings;

void atun_session_gw_settings_default(atun_session_gw_settings *settings);

typedef enum atun_session_gw_event_type {
  ATUN_SESSION_GW_EV_STATE = 1,    /* u.state */
  ATUN_SESSION_GW_EV_ESTABLISHED,  /* u.established: register the agent */
  ATUN_SESSION_GW_EV_ADVERTISE,    /* u.advertise */
  ATUN_SESSION_GW_EV_HEARTBEAT,    /* u.heartbeat */
  ATUN_SESSION_GW_EV_OFFLINE,      /* offline timeout reached */
  ATUN_SESSION_GW_EV_ONLINE,       /* seen again after OFFLINE */
  ATUN_SESSION_GW_EV_GOODBYE,      /* u.goodbye: stop routing to the agent */
  ATUN_SESSION_GW_EV_ERROR,        /* u.error: the session is closing */
  ATUN_SESSION_GW_EV_RENEW_REQUEST /* u.renew: answer with
                                      atun_session_gw_send_renew_response() */
} atun_session_gw_event_type;

typedef struct atun_session_gw_event {
  int type; /* atun_session_gw_event_type */
  union {
    struct {
      int old_state, new_state;
    } state;
    struct {
      uint32_t version;
      const atun_hello *hello;
    } established;
    /* Routes as received; the registry applies the epoch rules. */
    const atun_route_advertise *advertise;
    struct {
      uint64_t seq;
      atun_tstamp sent_at;     /* the agent's clock */
      uint32_t active_streams;
      uint64_t rtt_ns;         /* latest gateway-side sample, 0 = none */
    } heartbeat;
    struct {
      uint64_t reason;     /* atun_goodbye_reason */
      const char *message; /* never NULL */
    } goodbye;
    struct {
      int err;             /* ATUN_ERR_* naming the cause */
      uint64_t app_error;  /* the application error code of the close */
      int remote;          /* 1: the agent's Error frame, 0: found locally */
      const char *message; /* never NULL */
    } error;
    const atun_cert_renew_request *renew;
  } u;
} atun_session_gw_event;

typedef struct atun_session_gw atun_session_gw;

/* Receives every event; pointers in |ev| live until the callback returns.
 * The callback must not call into |gw| (such calls fail with
 * ATUN_ERR_STATE).  A nonzero return makes the call
 * that emitted the event fail with ATUN_ERR_CALLBACK_FAILURE (fatal). */
typedef int (*atun_session_gw_event_fn)(atun_session_gw *gw,
                                        const atun_session_gw_event *ev,
                                        void *user_data);

/* Creates a machine in state idle.  |settings| is copied; |mem| must
 * outlive the machine.  Returns 0, ATUN_ERR_INVALID_ARGUMENT (a NULL
 * argument or a setting out of its bounds) or ATUN_ERR_NOMEM. */
int atun_session_gw_new(atun_session_gw **pgw,
                        const atun_session_gw_settings *settings,
                        atun_session_gw_event_fn event_cb, const atun_mem *mem,
                        void *user_data);

void atun_session_gw_del(atun_session_gw *gw);

/* The agent's connection is up and its control stream open: the Hello
 * timeout starts.  Returns 0, ATUN_ERR_STATE (not idle) or a fatal error. */
int atun_session_gw_on_transport_connected(atun_session_gw *gw, atun_tstamp ts);

/* Feeds |datalen| bytes read from the control stream.  Dropped once the
 * machine asked to close.  An agent's fault is not an error of this call:
 * it closes the session as described above.  Returns 0, ATUN_ERR_STATE
 * (idle: on_transport_connected() first) or a fatal error. */
int atun_session_gw_on_data(atun_session_gw *gw, atun_tstamp ts,
                            const uint8_t *data, size_t datalen);

/* The control stream ended (FIN or reset): the session is over and the
 * machine asks to close the connection.  Returns 0 or a fatal error. */
int atun_session_gw_on_stream_closed(atun_session_gw *gw, atun_tstamp ts);

/* The connection is gone.  Returns 0 or a fatal error. */
int atun_session_gw_on_transport_failed(atun_session_gw *gw, atun_tstamp ts);

/* The next time atun_session_gw_handle_expiry() must run, or
 * ATUN_TSTAMP_MAX. */
atun_tstamp atun_session_gw_get_expiry(const atun_session_gw *gw);

/* Runs every timer due at |ts|.  Returns 0 or a fatal error. */
int atun_session_gw_handle_expiry(atun_session_gw *gw, atun_tstamp ts);

/* Graceful end.  Established: queues Goodbye {|reason|} and waits for the
 * agent to close (bounded by |drain_timeout_ns|).  Before that: closes at
 * once with ATUN_APP_SHUTDOWN.  Returns 0, ATUN_ERR_STATE (draining or
 * closed already), ATUN_ERR_INVALID_ARGUMENT (|reason| above
 * ATUN_VARINT_MAX) or a fatal error. */
int atun_session_gw_drain(atun_session_gw *gw, atun_tstamp ts, uint64_t reason);

/* Ends the session now, for the registry's reasons (ATUN_APP_REPLACED,
 * ATUN_APP_REVOKED, ...): queues Error {|app_error|, |message| (may be
 * NULL)} when the stream is open and asks to close with |app_error|.
 * Returns 0, ATUN_ERR_STATE (closed already), ATUN_ERR_INVALID_ARGUMENT
 * (|app_error| above ATUN_VARINT_MAX, |message| not acceptable text or
 * longer than ATUN_MESSAGE_MAX), or a fatal error. */
int atun_session_gw_close(atun_session_gw *gw, atun_tstamp ts,
                          uint64_t app_error, const char *message);

/* Answers the pending RENEW_REQUEST.  |cert| is required for
 * ATUN_CERT_STATUS_OK and must be absent (NULL, 0) otherwise; |message|
 * may be NULL.  Returns 0, ATUN_ERR_STATE (no request pending, or the
 * session has ended), a codec encoding error (the response is then still
 * pending), or a fatal error. */
int atun_session_gw_send_renew_response(atun_session_gw *gw, atun_tstamp ts,
                                        uint64_t status, const uint8_t *cert,
                                        size_t cert_len, const char *message);

/* Moves up to |destlen| queued control-stream bytes to |dest| and returns
 * how many (0: nothing queued), or a fatal error. */
ssize_t atun_session_gw_write(atun_session_gw *gw, uint8_t *dest,
                              size_t destlen);

/* Queued outbound bytes. */
size_t atun_session_gw_pending(const atun_session_gw *gw);

/* Returns 1 and sets |*papp_error| when the caller must close the
 * connection (after writing what is queued), else 0. */
int atun_session_gw_want_close(const atun_session_gw *gw, uint64_t *papp_error);

atun_session_gw_state atun_session_gw_get_state(const atun_session_gw *gw);

/* Nonzero while established and within the offline timeout. */
int atun_session_gw_is_online(const atun_session_gw *gw);

/* Latest gateway-side RTT sample, 0 = none yet. */
uint64_t atun_session_gw_get_rtt(const atun_session_gw *gw);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_SESSION_GW_H */
