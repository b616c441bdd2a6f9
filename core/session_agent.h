/*
 * The agent side of the control session (SPEC §3, §7), sans-I/O.
 *
 * The machine speaks to its control stream through the interface described
 * in stream.h and never touches QUIC.  It owns the reconnect policy: every
 * connect attempt, the first included, waits a delay drawn by the backoff
 * module, and the caller dials only when the machine asks (event
 * CONNECT_NOW).
 *
 *   idle --start--> backoff --expiry--> connecting --transport up-->
 *   hello_sent --HelloAck--> established
 *
 *   connecting, hello_sent, established --any failure--> backoff
 *   established --drain--> draining --timeout or close--> closed
 *
 * Failures: the transport failing, the control stream ending, an Error or
 * Goodbye from the gateway, a protocol violation by the gateway, no HelloAck
 * within the handshake timeout, the gateway missing heartbeat acks, the
 * outbound queue hitting its bound.  The machine reports each one with an
 * ERROR (or GOODBYE) event, asks for the connection to be closed when it is
 * still up (want_close), and goes to backoff.
 *
 * Established counts only from the gateway's HelloAck: the TLS handshake
 * completing means the gateway has not judged the agent yet (version,
 * revocation), so on_transport_connected() only sends Hello.
 *
 * After HelloAck the agent sends its RouteAdvertise and a first Heartbeat,
 * then a Heartbeat every interval the gateway named (clamped to
 * [ATUN_SESSION_HEARTBEAT_MIN_NS, ATUN_SESSION_HEARTBEAT_MAX_NS]).  Each
 * heartbeat tick checks whether the previous Heartbeat was acked; after
 * |dead_after_missed| ticks in a row without an ack the gateway is dead.  An
 * ack for an older Heartbeat still proves the gateway alive (resets the
 * count) but gives no RTT sample.  The agent acks the gateway's own
 * Heartbeats.
 *
 * Frames the agent ignores rather than closing over: a HeartbeatAck for a
 * Heartbeat already acked (a duplicate or a late one), and every byte that
 * arrives after the machine asked to close the connection.  Everything else
 * that is not expected in the current state closes the connection with a
 * named application error (codec.h): frames a gateway never sends (Hello,
 * RouteAdvertise, CertRenewRequest, session-stream types) and HelloAck
 * twice -> PROTOCOL_VIOLATION, a HeartbeatAck for a sequence number never
 * sent -> PROTOCOL_VIOLATION, anything before HelloAck other than HelloAck,
 * Error or Goodbye -> PROTOCOL_VIOLATION, a HelloAck choosing a version
 * outside the agent's range -> VERSION_MISMATCH, decode errors as
 * atun_app_error_from_codec() maps them.
 *
 * Every call taking |ts| also returns ATUN_ERR_INVALID_ARGUMENT for
 * ts == ATUN_TSTAMP_MAX, and ATUN_ERR_STATE when made from inside the
 * event callback; the machine is then unchanged.
 *
 * Errors at or below ATUN_ERR_FATAL (NOMEM, CALLBACK_FAILURE) leave the
 * machine unusable: every later call returns the same error and the caller
 * should close the connection and atun_session_agent_del() it.
 */
#ifndef ATUN_SESSION_AGENT_H
#define ATUN_SESSION_AGENT_H

#include "atun.h"
#include "backoff.h"
#include "codec.h"
#include "stream.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bounds on the heartbeat interval a gateway may impose; a HelloAck outside
 * them is clamped, so a gateway can neither flood nor silence the agent. */
#define ATUN_SESSION_HEARTBEAT_MIN_NS (100 * ATUN_NS_PER_MS)
#define ATUN_SESSION_HEARTBEAT_MAX_NS (600 * ATUN_NS_PER_S)
/* Bound on |dead_after_missed|. */
#define ATUN_SESSION_MISSED_MAX 16
/* Bound on every duration setting (handshake, drain): an hour. */
#define ATUN_SESSION_TIMEOUT_MAX_NS (3600 * ATUN_NS_PER_S)

typedef enum atun_session_agent_state {
  ATUN_SESSION_AGENT_IDLE = 0,   /* created, not started */
  ATUN_SESSION_AGENT_BACKOFF,    /* waiting before the next connect attempt */
  ATUN_SESSION_AGENT_CONNECTING, /* caller asked to dial; transport not up */
  ATUN_SESSION_AGENT_HELLO_SENT, /* transport up, Hello sent */
  ATUN_SESSION_AGENT_ESTABLISHED,/* HelloAck received */
  ATUN_SESSION_AGENT_DRAINING,   /* Goodbye sent, waiting for the end */
  ATUN_SESSION_AGENT_CLOSED      /* terminal */
} atun_session_agent_state;

/* Returns "idle", "backoff", ... */
const char *atun_session_agent_state_name(int state);

typedef struct atun_session_agent_settings {
  /* Versions offered.  Values outside what this build implements are
   * accepted so that tests and the simulator can stage a mismatch. */
  uint32_t min_version; /* default ATUN_PROTO_VERSION_MIN */
  uint32_t max_version; /* default ATUN_PROTO_VERSION_MAX */
  /* Sent in Hello; "" leaves it out. */
  char software_version[ATUN_SOFTWARE_VERSION_MAX + 1];
  /* From the CONNECT_NOW event to HelloAck.  Default 10 s. */
  uint64_t handshake_timeout_ns;
  /* Heartbeat ticks in a row without an ack before the gateway is dead.
   * 1..ATUN_SESSION_MISSED_MAX, default 3. */
  uint32_t dead_after_missed;
  /* From drain() to giving up on a graceful end.  Default 10 s. */
  uint64_t drain_timeout_ns;
  /* Bound on queued outbound bytes, >= ATUN_OUTQ_MIN.  Default: one
   * largest control frame plus ATUN_OUTQ_MIN. */
  size_t outq_max;
  atun_backoff_settings backoff; /* default atun_backoff_settings_default() */
} atun_session_agent_settings;

void atun_session_agent_settings_default(atun_session_agent_settings *settings);

typedef enum atun_session_agent_event_type {
  ATUN_SESSION_AGENT_EV_STATE = 1,   /* u.state */
  ATUN_SESSION_AGENT_EV_CONNECT_NOW, /* dial the gateway now */
  ATUN_SESSION_AGENT_EV_ESTABLISHED, /* u.established */
  ATUN_SESSION_AGENT_EV_GATEWAY_DEAD,/* u.gateway_dead */
  ATUN_SESSION_AGENT_EV_RTT_SAMPLE,  /* u.rtt_ns */
  ATUN_SESSION_AGENT_EV_ERROR,       /* u.error */
  ATUN_SESSION_AGENT_EV_GOODBYE,     /* u.goodbye: the gateway is leaving */
  ATUN_SESSION_AGENT_EV_RENEW_RESPONSE /* u.renew */
} atun_session_agent_event_type;

typedef struct atun_session_agent_event {
  int type; /* atun_session_agent_event_type */
  union {
    struct {
      int old_state, new_state;
    } state;
    struct {
      uint32_t version;
      uint64_t heartbeat_interval_ns; /* after clamping */
      const atun_hello_ack *hello_ack; /* the frame as received */
    } established;
    struct {
      uint32_t missed;
    } gateway_dead;
    uint64_t rtt_ns;
    struct {
      int err;           /* ATUN_ERR_* naming the cause */
      uint64_t app_error;/* the application error code of the close */
      int remote;        /* 1: the gateway's Error frame, 0: found locally */
      const char *message; /* NUL-terminated, never NULL */
    } error;
    struct {
      uint64_t reason;     /* atun_goodbye_reason */
      const char *message; /* never NULL */
    } goodbye;
    const atun_cert_renew_response *renew;
  } u;
} atun_session_agent_event;

typedef struct atun_session_agent atun_session_agent;

/* Receives every event; pointers in |ev| live until the callback returns.
 * The callback must not call into |agent| (such calls fail with
 * ATUN_ERR_STATE).  A nonzero return makes the call that emitted the event fail with
 * ATUN_ERR_CALLBACK_FAILURE (fatal). */
typedef int (*atun_session_agent_event_fn)(atun_session_agent *agent,
                                           const atun_session_agent_event *ev,
                                           void *user_data);

/* Creates a machine in state idle.  |settings|, |rand| are copied; |mem|
 * must outlive the machine.  Returns 0, ATUN_ERR_INVALID_ARGUMENT (a NULL
 * argument or a setting out of its bounds) or ATUN_ERR_NOMEM. */
int atun_session_agent_new(atun_session_agent **pagent,
                           const atun_session_agent_settings *settings,
                           atun_session_agent_event_fn event_cb,
                           const atun_rand *rand, const atun_mem *mem,
                           void *user_data);

void atun_session_agent_del(atun_session_agent *agent);

/* Leaves idle for backoff: the first connect attempt waits a drawn delay
 * too.  Returns 0, ATUN_ERR_STATE (not idle), or a fatal error. */
int atun_session_agent_start(atun_session_agent *agent, atun_tstamp ts);

/* The transport asked for by CONNECT_NOW is up: queues Hello.  Ignored (0)
 * outside connecting.  Returns 0 or a fatal error. */
int atun_session_agent_on_transport_connected(atun_session_agent *agent,
                                              atun_tstamp ts);

/* Feeds |datalen| bytes read from the control stream.  Bytes while no
 * stream is open (idle, backoff, closed, and connecting: before
 * on_transport_connected()) are dropped, so are those after a close was
 * requested: the machine has left that connection.  A gateway's fault is not an error of this call:
 * it is handled as described at the top.  Returns 0 or a fatal error. */
int atun_session_agent_on_data(atun_session_agent *agent, atun_tstamp ts,
                               const uint8_t *data, size_t datalen);

/* The control stream ended (FIN or reset) while the connection may still
 * be up; the machine asks to close it.  Ignored without a transport.
 * Returns 0 or a fatal error. */
int atun_session_agent_on_stream_closed(atun_session_agent *agent,
                                        atun_tstamp ts);

/* The connection failed or was closed.  Ignored without a transport.
 * Returns 0 or a fatal error. */
int atun_session_agent_on_transport_failed(atun_session_agent *agent,
                                           atun_tstamp ts);

/* The next time atun_session_agent_handle_expiry() must run, or
 * ATUN_TSTAMP_MAX. */
atun_tstamp atun_session_agent_get_expiry(const atun_session_agent *agent);

/* Runs every timer due at |ts|.  Returns 0 or a fatal error. */
int atun_session_agent_handle_expiry(atun_session_agent *agent,
                                     atun_tstamp ts);

/* Replaces the routes to advertise (copied) and bumps the epoch.  When
 * established the new RouteAdvertise goes out on the same connection;
 * otherwise it goes out after the next HelloAck.  Returns 0,
 * ATUN_ERR_STATE (closed), ATUN_ERR_FULL (the RouteAdvertise alone would
 * exceed |outq_max|), a codec encoding error (ATUN_ERR_LIMIT,
 * ATUN_ERR_BAD_PREFIX, ATUN_ERR_BAD_NAME, ATUN_ERR_FRAME_TOO_LARGE, ...;
 * routes and epoch are then unchanged), or a fatal error. */
int atun_session_agent_set_routes(atun_session_agent *agent, atun_tstamp ts,
                                  const atun_prefix *subnets,
                                  size_t subnet_count,
                                  const atun_domain *domains,
                                  size_t domain_count);

/* The stream count reported in the next Heartbeats. */
void atun_session_agent_set_active_streams(atun_session_agent *agent,
                                           uint32_t count);

/* Sends a CertRenewRequest; the answer comes as RENEW_RESPONSE on the same
 * connection (a lost connection loses the request: ask again after the
 * next ESTABLISHED).  Returns 0, ATUN_ERR_STATE (not established, or a
 * request already waits for its answer), ATUN_ERR_FULL (the frame alone
 * exceeds |outq_max|), a codec encoding error, or a fatal error. */
int atun_session_agent_request_renewal(atun_session_agent *agent,
                                       atun_tstamp ts, const uint8_t *csr,
                                       size_t csr_len, int rotate_key);

/* Ends the session for good.  Established: queues Goodbye {|reason|} and
 * drains until the gateway closes, the transport ends, or the drain timeout
 * fires.  Other states go straight to closed (asking to close a transport
 * that is up).  Returns 0, ATUN_ERR_STATE (draining or closed already),
 * ATUN_ERR_INVALID_ARGUMENT (|reason| above ATUN_VARINT_MAX), or a fatal
 * error. */
int atun_session_agent_drain(atun_session_agent *agent, atun_tstamp ts,
                             uint64_t reason);

/* Moves up to |destlen| queued control-stream bytes to |dest| and returns
 * how many (0: nothing queued), or a fatal error. */
ssize_t atun_session_agent_write(atun_session_agent *agent, uint8_t *dest,
                                 size_t destlen);

/* Queued outbound bytes. */
size_t atun_session_agent_pending(const atun_session_agent *agent);

/* Returns 1 and sets |*papp_error| when the caller must close the current
 * connection (after writing what is queued), else 0.  Cleared when the
 * next connect attempt starts. */
int atun_session_agent_want_close(const atun_session_agent *agent,
                                  uint64_t *papp_error);

atun_session_agent_state
atun_session_agent_get_state(const atun_session_agent *agent);

/* Epoch of the current routes (0 before the first set_routes()). */
uint64_t atun_session_agent_get_epoch(const atun_session_agent *agent);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_SESSION_AGENT_H */
