/*
 * `atun-agent run`: the control plane of the agent daemon (SPEC §3, §7).
 *
 * Three objects on one libev loop:
 *
 *   atun_session_agent  (core) owns the protocol and the reconnect policy:
 *                       it says when to dial (CONNECT_NOW), what to put on
 *                       the control stream, when to close.
 *   atun_quic_ev        (io) owns the QUIC connection, its socket and its
 *                       timers.
 *   this file           the wiring: dials on request, opens the control
 *                       stream when TLS is up, moves bytes both ways, keeps
 *                       one timer for the session, and turns signals into
 *                       reloads (SIGHUP) and a drain (SIGTERM, SIGINT).
 *
 * After every event |service| runs the same steps: dial if asked, pump the
 * session's output into the stream, close the connection if the session
 * asked, re-arm the session timer, and stop the loop once a drain is over.
 *
 * Streams the gateway opens (proxied TCP connections) go to the data plane
 * (target.h); the connection's end aborts all of them.
 */
#include <ev.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ca.h"
#include "cfgfile.h"
#include "cli.h"
#include "fsutil.h"
#include "log.h"
#include "quic_ev.h"
#include "renew.h"
#include "routes.h"
#include "session_agent.h"
#include "status.h"
#include "target.h"
#include "version.h"

/* Streams a QUIC server opens have the low bit set (RFC 9000 §2.1). */
#define STREAM_BY_SERVER(id) (((id) & 1) != 0)
/* Bytes moved from the session to the control stream per write call. */
#define PUMP_CHUNK 16384
/* How often the status file is looked at: written when something changed,
 * or AGENT_STATUS_REFRESH_S after the last write. */
#define STATUS_TICK_S 1.0
/* After the drain timeout, this much more before the loop is left anyway:
 * the session's own timer ends a drain; this only guards against a bug. */
#define STOP_GRACE_S 2.0

typedef struct agent {
  struct ev_loop *loop;
  const char *config_path;
  atun_config_agent cfg;
  atun_quic_tls *tls;
  atun_quic_settings quic;
  atun_quic_ev *ep;
  atun_session_agent *session;
  agent_dp *dp;
  /* The current connection; NULL between attempts. */
  atun_quic_conn *conn;
  /* A connection the gateway said Goodbye on, kept for its streams
   * (linger_start); NULL when none. */
  atun_quic_conn *linger;
  ev_timer linger_timer; /* drain_timeout after linger_start */
  int linger_closing;    /* CONNECTION_CLOSE asked for |linger| */
  /* Streams the gateway opened and QUIC has not closed yet (all data
   * acked both ways), on |conn| and on |linger|. */
  size_t peer_streams, linger_streams;
  int goodbye;    /* the gateway said Goodbye on |conn| */
  int64_t ctrl;   /* control stream id, -1 while none */
  size_t ctrl_unacked; /* bytes written to |ctrl| the gateway has not acked */
  int close_sent; /* CONNECTION_CLOSE asked for |conn| */
  int told;       /* the session knows |conn| is over */
  int admitted;   /* |conn| got its HelloAck */
  int dial_pending;
  int in_cb;      /* inside a QUIC callback: no dialling there */
  unsigned attempt;
  atun_tstamp backoff_logged; /* expiry already reported */
  int stopping;
  int stopped;
  int exit_code;
  ev_timer timer;
  ev_timer stop_timer;
  ev_signal sig_hup, sig_term, sig_int;
  /* status.json (status.h) */
  ev_timer status_timer;
  agent_routes routes;        /* last advertised */
  atun_tstamp connected_at;   /* wall; ATUN_TSTAMP_MAX while not admitted */
  uint64_t status_sig;        /* what the last write showed, folded */
  atun_tstamp status_written; /* mono */
  int status_failing;         /* the last write failed (logged once) */
} agent;

static const char usage_text[] =
    "usage: atun-agent run [--config PATH]\n"
    "\n"
    "Runs the agent: dials the gateway over QUIC with its certificate,\n"
    "advertises the configured subnets and domains (plus the search domains\n"
    "of resolv.conf when auto_detect_domains is on), and reconnects forever\n"
    "with backoff.  SIGHUP reloads the config and advertises the new routes\n"
    "on the same connection; SIGTERM or SIGINT says Goodbye, lets open\n"
    "streams finish and exits within the drain timeout.\n"
    "\n"
    "Writes status.json next to cert_file for `atun-agent status`.\n"
    "\n"
    "options:\n"
    "  --config PATH   config file (default " AGENT_CONFIG_DEFAULT ")\n"
    "  -h, --help      this text\n"
    "\n"
    "exit codes: 0 stopped by a signal, 1 runtime failure, 2 usage or config\n"
    "error (not enrolled, unreadable key or certificate).\n";

static void service(agent *a);
static void use_renewed_cert(agent *a);

/* The config counts levels up from error, the log up from debug. */
static atun_log_level log_level_of(atun_config_log_level l) {
  return (atun_log_level)(ATUN_LOG_ERROR - (int)l);
}

static atun_tstamp now(const agent *a) { return atun_quic_ev_now(a->loop); }

/* A fatal session error leaves the machine unusable: stop. */
static int session_ok(agent *a, int rv, const char *what) {
  if (rv == 0) return 1;
  atun_log(ATUN_LOG_ERROR, "agent", "fatal", "step=%s error=%s", what,
           atun_strerror(rv));
  a->exit_code = AGENT_EXIT_FAILURE;
  ev_break(a->loop, EVBREAK_ALL);
  return 0;
}

/* Tells the session, once per connection, that the connection is over. */
static void tell_failed(agent *a) {
  if (a->told) return;
  a->told = 1;
  a->connected_at = ATUN_TSTAMP_MAX;
  session_ok(a, atun_session_agent_on_transport_failed(a->session, now(a)),
             "transport_failed");
}

/* --- routes ------------------------------------------------------------------ */

static int build_routes(const atun_config_agent *cfg, agent_routes *r) {
  atun_resolvconf rc;
  int have = 0;
  if (cfg->auto_detect_domains) {
    int rv = agent_routes_read_resolv(&rc, cfg->resolv_conf);
    if (rv == 0)
      have = 1;
    else
      atun_log(ATUN_LOG_WARN, "agent", "resolv_conf_unreadable", "path=%s error=%s",
               cfg->resolv_conf, agent_file_error(rv));
  }
  int rv = agent_routes_build(r, cfg, have ? &rc : NULL, atun_mem_default());
  if (rv == 0 && r->dropped > 0)
    atun_log(ATUN_LOG_WARN, "agent", "domains_dropped", "count=%zu max=%d", r->dropped,
             ATUN_DOMAINS_MAX);
  return rv;
}

/* Gives the session the routes of |cfg|: a new epoch every time.  Returns 0,
 * a non-fatal error (the old routes stay) or a fatal one. */
static int advertise(agent *a, const atun_config_agent *cfg) {
  agent_routes r;
  int rv = build_routes(cfg, &r);
  if (rv != 0) return rv;
  rv = agent_dp_configure(a->dp, cfg, r.subnets, r.subnet_count, r.domains,
                          r.domain_count);
  if (rv == 0)
    rv = atun_session_agent_set_routes(a->session, now(a), r.subnets, r.subnet_count,
                                     r.domains, r.domain_count);
  if (rv != 0) {
    agent_routes_free(&r);
    return rv;
  }
  atun_log(ATUN_LOG_INFO, "agent", "routes", "epoch=%llu subnets=%zu domains=%zu "
           "auto_detected=%zu",
           (unsigned long long)atun_session_agent_get_epoch(a->session),
           r.subnet_count, r.domain_count - r.detected, r.detected);
  agent_routes_free(&a->routes);
  a->routes = r; /* for the status file */
  return 0;
}

/* --- dialling ------------------------------------------------------------------ */

/* The gateway's address.  A name is resolved at every attempt (so a DNS
 * change is followed), rotating through the answers so that one dead
 * address does not block the others.  getaddrinfo blocks the loop; it runs
 * only here, at connect time, when there is no connection to serve. */
static int resolve(agent *a, atun_quic_endpoint *out) {
  const atun_target *h = &a->cfg.gateway_host;
  memset(out, 0, sizeof(*out));
  if (h->kind == ATUN_TARGET_ADDR) {
    out->addr = h->addr;
    out->port = a->cfg.gateway_port;
    return 0;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM};
  struct addrinfo *res = NULL;
  int gai = getaddrinfo(h->host, NULL, &hints, &res);
  if (gai != 0) {
    atun_log(ATUN_LOG_WARN, "agent", "resolve_failed", "host=%s error=%s", h->host,
             gai_strerror(gai));
    return ATUN_ERR_NOT_FOUND;
  }
  size_t n = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) ++n;
  struct addrinfo *pick = res;
  for (size_t i = a->attempt % n; i > 0; --i) pick = pick->ai_next;
  int rv = atun_udp_endpoint_from_sockaddr(out, pick->ai_addr, pick->ai_addrlen);
  freeaddrinfo(res);
  out->port = a->cfg.gateway_port;
  return rv;
}

static void dial(agent *a) {
  a->dial_pending = 0;
  if (a->conn != NULL) {
    /* Still in its closing period: the session has moved on already. */
    a->told = 1;
    atun_quic_ev_abort(a->conn);
    a->conn = NULL;
  }
  /* A new endpoint would take the lingering connection with the old one. */
  if (a->linger == NULL) use_renewed_cert(a);
  a->goodbye = 0;
  a->peer_streams = 0;
  ++a->attempt;
  a->ctrl = -1;
  a->ctrl_unacked = 0;
  a->close_sent = 0;
  a->told = 0;
  a->admitted = 0;
  atun_quic_endpoint remote;
  char addr[ATUN_ADDR_STRLEN] = "-";
  int rv = resolve(a, &remote);
  if (rv == 0) {
    atun_addr_format(addr, &remote.addr);
    rv = atun_quic_ev_connect(a->ep, &remote, &a->conn);
  }
  if (rv != 0) {
    a->conn = NULL;
    atun_log(ATUN_LOG_WARN, "agent", "connect_failed", "address=%s error=%s", addr,
             atun_strerror(rv));
    tell_failed(a);
    return;
  }
  atun_log(ATUN_LOG_INFO, "agent", "connecting", "address=%s port=%u attempt=%u", addr,
           (unsigned)remote.port, a->attempt);
}

/* --- the service step ------------------------------------------------------------ */

static void pump(agent *a) {
  uint8_t buf[PUMP_CHUNK];
  while (a->conn != NULL && a->ctrl >= 0 &&
         atun_session_agent_pending(a->session) > 0) {
    ssize_t room = atun_quic_stream_writable(a->conn, a->ctrl);
    if (room <= 0) return; /* stream_acked brings us back */
    size_t want = (size_t)room < sizeof(buf) ? (size_t)room : sizeof(buf);
    ssize_t n = atun_session_agent_write(a->session, buf, want);
    if (n < 0) {
      session_ok(a, (int)n, "session_write");
      return;
    }
    ssize_t took = atun_quic_stream_write(a->conn, a->ctrl, buf, (size_t)n, 0);
    if (took > 0) a->ctrl_unacked += (size_t)took;
    if (took != n) {
      /* |room| promised the space: a short write means a broken stream. */
      atun_quic_ev_close(a->conn, ATUN_APP_INTERNAL, "control stream write failed");
      a->close_sent = 1;
      return;
    }
  }
}

/* The gateway said Goodbye (it is draining) while streams run on the
 * connection.  The session has moved on to backoff, but the connection
 * stays, without a control stream, until its streams end or drain_timeout
 * passes (the gateway closes it at its own drain deadline anyway); the
 * next dial makes a new one.  New streams on it are refused. */
static void linger_start(agent *a) {
  a->linger = a->conn;
  a->linger_streams = a->peer_streams;
  a->linger_closing = 0;
  a->conn = NULL;
  a->ctrl = -1;
  atun_log(ATUN_LOG_INFO, "agent", "lingering", "streams=%zu timeout_ms=%llu",
           a->linger_streams, (unsigned long long)(a->cfg.drain_timeout_ns / ATUN_NS_PER_MS));
  ev_timer_set(&a->linger_timer, (double)a->cfg.drain_timeout_ns / (double)ATUN_NS_PER_S, 0.);
  ev_timer_start(a->loop, &a->linger_timer);
}

/* Closes the lingering connection; it stays |linger| until deleted, since
 * the endpoint takes no new connection before. */
static void linger_end(agent *a, const char *why) {
  if (a->linger == NULL || a->linger_closing) return;
  a->linger_closing = 1;
  ev_timer_stop(a->loop, &a->linger_timer);
  atun_log(ATUN_LOG_INFO, "agent", "linger_ended", "reason=%s streams=%zu", why,
           a->linger_streams);
  atun_quic_ev_close(a->linger, ATUN_APP_NO_ERROR, why);
}

/* The lingering connection was deleted (closed by us or by the gateway). */
static void linger_gone(agent *a, const atun_quic_conn *conn) {
  if (conn != a->linger) return;
  a->linger = NULL;
  ev_timer_stop(a->loop, &a->linger_timer);
  /* A dial that waited for it runs from the loop. */
  ev_timer_stop(a->loop, &a->timer);
  ev_timer_set(&a->timer, 0., 0.);
  ev_timer_start(a->loop, &a->timer);
}

static void on_linger_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop, (void)revents;
  linger_end(w->data, "drain_timeout");
  service(w->data);
}

static void close_if_asked(agent *a) {
  uint64_t app_error;
  if (a->conn == NULL || a->close_sent ||
      !atun_session_agent_want_close(a->session, &app_error))
    return;
  if (a->goodbye && !a->stopping && a->linger == NULL && a->peer_streams > 0) {
    linger_start(a);
    return;
  }
  a->close_sent = 1;
  atun_quic_ev_close(a->conn, app_error, atun_app_error_name(app_error));
}

static void log_backoff(agent *a, atun_tstamp exp) {
  if (atun_session_agent_get_state(a->session) != ATUN_SESSION_AGENT_BACKOFF ||
      exp == a->backoff_logged)
    return;
  a->backoff_logged = exp;
  atun_tstamp t = now(a);
  atun_log(ATUN_LOG_INFO, "agent", "backoff", "delay_ms=%llu",
           (unsigned long long)(exp > t ? (exp - t) / ATUN_NS_PER_MS : 0));
}

static void arm(agent *a) {
  ev_timer_stop(a->loop, &a->timer);
  atun_tstamp exp = atun_session_agent_get_expiry(a->session);
  if (exp == ATUN_TSTAMP_MAX) return;
  log_backoff(a, exp);
  atun_tstamp t = now(a);
  ev_timer_set(&a->timer, exp > t ? (double)(exp - t) / (double)ATUN_NS_PER_S : 0., 0.);
  ev_timer_start(a->loop, &a->timer);
}

/* The session drains until the gateway closes or the drain timeout fires;
 * it does not know about proxied streams.  Once the gateway has acked
 * Goodbye and no stream is open, nothing is left to wait for: close now,
 * which ends the drain.  A stream is over once QUIC closed it (every byte
 * acked), not when its record ended: the last bytes may still be in
 * flight then. */
static void finish_drain(agent *a) {
  if (!a->stopping || a->conn == NULL || a->close_sent || a->told ||
      atun_session_agent_get_state(a->session) != ATUN_SESSION_AGENT_DRAINING ||
      atun_session_agent_pending(a->session) > 0 || a->ctrl_unacked > 0 ||
      agent_dp_count(a->dp) > 0 || a->peer_streams > 0)
    return;
  a->close_sent = 1;
  atun_quic_ev_close(a->conn, ATUN_APP_SHUTDOWN, "drained");
  tell_failed(a);
}

/* A drain ends once the session is closed and the gateway knows: it closed
 * the connection, or our CONNECTION_CLOSE is on its way. */
static void maybe_stop(agent *a) {
  if (!a->stopping || a->stopped ||
      atun_session_agent_get_state(a->session) != ATUN_SESSION_AGENT_CLOSED)
    return;
  if (a->conn != NULL && !a->told && !a->close_sent) return;
  a->stopped = 1;
  atun_log(ATUN_LOG_INFO, "agent", "stopped", NULL);
  ev_break(a->loop, EVBREAK_ALL);
}

/* Certificate renewal (renew.h); one agent per process. */
static agent_renew renewal;

static void service(agent *a) {
  /* Every stream closed means every byte acked: closing loses nothing. */
  if (a->linger != NULL && a->linger_streams == 0) linger_end(a, "drained");
  /* The endpoint holds one connection: the next waits for the lingering
   * one to end. */
  if (a->dial_pending && a->in_cb == 0 && a->linger == NULL) dial(a);
  session_ok(a, agent_renew_tick(&renewal, &a->cfg, a->session, now(a),
                                 agent_renew_wall_now()), "renewal");
  pump(a);
  close_if_asked(a);
  finish_drain(a);
  if (a->conn != NULL) atun_quic_ev_flush(a->conn);
  arm(a);
  maybe_stop(a);
}

/* --- session events ------------------------------------------------------------------ */

static void log_established(const atun_session_agent_event *ev) {
  atun_log(ATUN_LOG_INFO, "agent", "established", "version=%u heartbeat_ms=%llu",
           (unsigned)ev->u.established.version,
           (unsigned long long)(ev->u.established.heartbeat_interval_ns / ATUN_NS_PER_MS));
}

static void log_error(const atun_session_agent_event *ev) {
  uint64_t code = ev->u.error.app_error;
  /* The transport's end: log_close() has told the story already. */
  atun_log_level level = !ev->u.error.remote && ev->u.error.err == ATUN_ERR_CLOSED &&
                                 code == ATUN_APP_NO_ERROR
                             ? ATUN_LOG_DEBUG
                             : ATUN_LOG_WARN;
  int refused = ev->u.error.remote &&
                (code == ATUN_APP_VERSION_MISMATCH || code == ATUN_APP_REVOKED ||
                 code == ATUN_APP_UNAUTHORIZED);
  atun_log(level, "agent", refused ? "refused" : "session_error",
           "reason=%s remote=%d error=%s message=%s", atun_app_error_name(code),
           ev->u.error.remote, atun_strerror(ev->u.error.err), ev->u.error.message);
}

static int on_session_event(atun_session_agent *s, const atun_session_agent_event *ev,
                            void *ud) {
  agent *a = ud;
  (void)s;
  switch (ev->type) {
  case ATUN_SESSION_AGENT_EV_CONNECT_NOW: a->dial_pending = 1; break;
  case ATUN_SESSION_AGENT_EV_ESTABLISHED:
    a->admitted = 1;
    a->connected_at = agent_renew_wall_now();
    log_established(ev);
    agent_renew_on_established(&renewal);
    break;
  case ATUN_SESSION_AGENT_EV_GATEWAY_DEAD:
    atun_log(ATUN_LOG_WARN, "agent", "gateway_dead", "missed=%u",
             (unsigned)ev->u.gateway_dead.missed);
    break;
  case ATUN_SESSION_AGENT_EV_ERROR: log_error(ev); break;
  case ATUN_SESSION_AGENT_EV_RENEW_RESPONSE:
    (void)agent_renew_on_response(&renewal, &a->cfg, ev->u.renew, agent_renew_wall_now());
    break;
  case ATUN_SESSION_AGENT_EV_GOODBYE:
    a->goodbye = 1;
    atun_log(ATUN_LOG_INFO, "agent", "gateway_goodbye", "reason=%llu message=%s",
             (unsigned long long)ev->u.goodbye.reason, ev->u.goodbye.message);
    break;
  case ATUN_SESSION_AGENT_EV_RTT_SAMPLE:
    atun_log(ATUN_LOG_DEBUG, "agent", "rtt", "rtt_us=%llu",
             (unsigned long long)(ev->u.rtt_ns / 1000));
    break;
  case ATUN_SESSION_AGENT_EV_STATE:
    atun_log(ATUN_LOG_DEBUG, "agent", "state", "from=%s to=%s",
             atun_session_agent_state_name(ev->u.state.old_state),
             atun_session_agent_state_name(ev->u.state.new_state));
    break;
  default: break;
  }
  return 0;
}

/* --- QUIC callbacks ---------------------------------------------------------------------- */

/* Every callback runs the session call, then the service step, and fails
 * the connection only if the session is gone for good. */
static int after(agent *a, int rv, const char *what) {
  if (!session_ok(a, rv, what)) return -1;
  ++a->in_cb;
  service(a);
  --a->in_cb;
  return 0;
}

static int on_handshake(atun_quic_conn *conn, void *ud) {
  agent *a = ud;
  if (conn != a->conn) return 0;
  /* The control stream is the first bidirectional stream, ours.  TLS being
   * up is not acceptance: the gateway judges us in HelloAck. */
  int rv = atun_quic_stream_open(conn, &a->ctrl, NULL);
  if (rv != 0) {
    atun_log(ATUN_LOG_WARN, "agent", "stream_failed", "error=%s", atun_strerror(rv));
    return -1;
  }
  atun_log(ATUN_LOG_INFO, "agent", "connected", "rtt_ms=%llu",
           (unsigned long long)(atun_quic_conn_get_rtt(conn) / ATUN_NS_PER_MS));
  return after(a, atun_session_agent_on_transport_connected(a->session, now(a)),
               "transport_connected");
}

/* Draining (ours, or lingering after the gateway's Goodbye) takes no new
 * streams: the gateway moves on to another candidate. */
static int on_stream_open(atun_quic_conn *conn, int64_t id, void *ud) {
  agent *a = ud;
  if (conn == a->conn) ++a->peer_streams;
  else if (conn == a->linger) ++a->linger_streams;
  if (conn == a->conn && !a->stopping) agent_dp_on_stream_open(a->dp, conn, id);
  else atun_quic_stream_shutdown(conn, id, ATUN_APP_CONNECT_FAILED);
  return 0;
}

static int on_stream_data(atun_quic_conn *conn, int64_t id, const uint8_t *data,
                          size_t len, int fin, void *ud, void *sud) {
  agent *a = ud;
  if (sud != NULL) {
    agent_dp_on_stream_data(a->dp, conn, id, data, len, fin, sud);
    return 0;
  }
  atun_quic_stream_consume(conn, id, len);
  if (conn != a->conn || id != a->ctrl) return 0;
  int rv = len > 0 ? atun_session_agent_on_data(a->session, now(a), data, len) : 0;
  if (rv == 0 && fin) rv = atun_session_agent_on_stream_closed(a->session, now(a));
  return after(a, rv, "control_data");
}

static int on_stream_reset(atun_quic_conn *conn, int64_t id, uint64_t err, void *ud,
                           void *sud) {
  agent *a = ud;
  if (sud != NULL) {
    agent_dp_on_stream_reset(a->dp, err, sud);
    return 0;
  }
  if (conn != a->conn || id != a->ctrl) return 0;
  return after(a, atun_session_agent_on_stream_closed(a->session, now(a)),
               "control_reset");
}

static int on_stream_acked(atun_quic_conn *conn, int64_t id, size_t n, void *ud,
                           void *sud) {
  agent *a = ud;
  (void)sud;
  int ctrl = conn == a->conn && id == a->ctrl;
  if (ctrl) a->ctrl_unacked -= n <= a->ctrl_unacked ? n : a->ctrl_unacked;
  /* Control frames first: the pipes would take all the room this ack
   * freed, and a Heartbeat stuck behind them makes the gateway think us
   * dead. */
  if (conn == a->conn && a->session != NULL &&
      (ctrl || atun_session_agent_pending(a->session) > 0) &&
      after(a, 0, "control_acked") != 0)
    return -1;
  agent_dp_on_acked(a->dp, conn);
  return 0;
}

static int on_stream_closed(atun_quic_conn *conn, int64_t id, int has_error,
                            uint64_t err, void *ud, void *sud) {
  agent *a = ud;
  if (sud != NULL) agent_dp_on_stream_closed(a->dp, has_error, err, sud);
  if (conn == a->conn && id == a->ctrl) a->ctrl = -1;
  if (!STREAM_BY_SERVER(id)) return 0;
  int last = 0;
  if (conn == a->conn && a->peer_streams > 0) last = --a->peer_streams == 0 && a->stopping;
  if (conn == a->linger && a->linger_streams > 0) last = --a->linger_streams == 0;
  if (last) {
    /* A drain or a linger may end now; closing from inside a stream
     * callback is not allowed, so from the loop. */
    ev_timer_stop(a->loop, &a->timer);
    ev_timer_set(&a->timer, 0., 0.);
    ev_timer_start(a->loop, &a->timer);
  }
  return 0;
}

static const char *close_source_name(atun_quic_close_source s) {
  switch (s) {
  case ATUN_QUIC_CLOSE_LOCAL: return "local";
  case ATUN_QUIC_CLOSE_PEER: return "gateway";
  case ATUN_QUIC_CLOSE_IDLE: return "idle_timeout";
  case ATUN_QUIC_CLOSE_TIMEOUT: return "handshake_timeout";
  default: return "dropped";
  }
}

/* A refusal is the gateway (or our pin check) saying no to this agent: a
 * TLS failure, the gateway closing before it admitted us with HelloAck
 * (revoked, unknown identity, over its agent limit), or later over who we
 * are (revoked while connected). */
static void log_close(const atun_quic_close_info *info, int admitted) {
  int judged = info->app && (info->error_code == ATUN_QUIC_ERR_REVOKED ||
                             info->error_code == ATUN_QUIC_ERR_IDENTITY ||
                             info->error_code == ATUN_QUIC_ERR_ALPN);
  int refused = info->hs_failure != ATUN_QUIC_HS_OK ||
                (info->source == ATUN_QUIC_CLOSE_PEER && (!admitted || judged));
  if (refused) {
    const char *reason = info->hs_failure != ATUN_QUIC_HS_OK
                             ? atun_quic_hs_failure_name(info->hs_failure)
                         : info->app ? atun_app_error_name(info->error_code)
                                     : "transport_error";
    atun_log(ATUN_LOG_WARN, "agent", "refused", "reason=%s by=%s detail=%s", reason,
             close_source_name(info->source), info->reason);
    return;
  }
  if (info->app)
    atun_log(ATUN_LOG_INFO, "agent", "disconnected", "by=%s code=%s detail=%s",
             close_source_name(info->source), atun_app_error_name(info->error_code),
             info->reason);
  else
    atun_log(ATUN_LOG_INFO, "agent", "disconnected", "by=%s transport_error=0x%llx detail=%s",
             close_source_name(info->source), (unsigned long long)info->error_code,
             info->reason);
}

static void on_connection_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                                 void *ud) {
  agent *a = ud;
  agent_dp_conn_gone(a->dp, conn);
  if (conn != a->conn) return;
  log_close(info, a->admitted);
  a->ctrl = -1;
  ++a->in_cb;
  tell_failed(a);
  service(a);
  --a->in_cb;
}

static const atun_quic_callbacks quic_callbacks = {
    .handshake_completed = on_handshake,
    .stream_open = on_stream_open,
    .stream_data = on_stream_data,
    .stream_reset = on_stream_reset,
    .stream_acked = on_stream_acked,
    .stream_closed = on_stream_closed,
    .connection_closed = on_connection_closed,
};

static void on_conn_deleted(atun_quic_ev *ep, atun_quic_conn *conn, void *conn_ud,
                            void *ep_ud) {
  agent *a = ep_ud;
  (void)ep, (void)conn_ud;
  agent_dp_conn_gone(a->dp, conn);
  linger_gone(a, conn);
  if (conn != a->conn) return;
  a->conn = NULL;
  a->ctrl = -1;
  if (a->told) return;
  /* Gone without a connection_closed (deleted by the driver). */
  ++a->in_cb;
  tell_failed(a);
  service(a);
  --a->in_cb;
}

/* --- timers and signals -------------------------------------------------------------------- */

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  agent *a = w->data;
  (void)loop, (void)revents;
  atun_tstamp t = now(a);
  if (t >= atun_session_agent_get_expiry(a->session) &&
      !session_ok(a, atun_session_agent_handle_expiry(a->session, t), "expiry"))
    return;
  service(a);
}

static void on_stop_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  agent *a = w->data;
  (void)revents;
  atun_log(ATUN_LOG_WARN, "agent", "drain_overrun", NULL);
  a->exit_code = AGENT_EXIT_FAILURE;
  ev_break(loop, EVBREAK_ALL);
}

static void on_term(struct ev_loop *loop, ev_signal *w, int revents) {
  agent *a = w->data;
  (void)revents;
  if (a->stopping) {
    atun_log(ATUN_LOG_WARN, "agent", "stopped", "reason=%s", "second signal");
    ev_break(loop, EVBREAK_ALL);
    return;
  }
  a->stopping = 1;
  atun_log(ATUN_LOG_INFO, "agent", "draining", "signal=%d timeout_ms=%llu", w->signum,
           (unsigned long long)(a->cfg.drain_timeout_ns / ATUN_NS_PER_MS));
  ev_timer_set(&a->stop_timer,
               (double)a->cfg.drain_timeout_ns / (double)ATUN_NS_PER_S + STOP_GRACE_S, 0.);
  ev_timer_start(loop, &a->stop_timer);
  int rv = atun_session_agent_drain(a->session, now(a), ATUN_GOODBYE_SHUTDOWN);
  if (rv == 0 || !atun_err_is_fatal(rv)) service(a);
  else session_ok(a, rv, "drain");
}

/* Settings a reload cannot change on a live connection; they wait for a
 * restart, and the log says so. */
static void keep_connection_settings(atun_config_agent *fresh,
                                     const atun_config_agent *old) {
  int differs = strcmp(fresh->agent_id, old->agent_id) != 0 ||
                fresh->has_gateway != old->has_gateway ||
                memcmp(&fresh->gateway_host, &old->gateway_host,
                       sizeof(old->gateway_host)) != 0 ||
                fresh->gateway_port != old->gateway_port ||
                strcmp(fresh->key_file, old->key_file) != 0 ||
                strcmp(fresh->cert_file, old->cert_file) != 0 ||
                strcmp(fresh->ca_file, old->ca_file) != 0 ||
                fresh->has_server_spki != old->has_server_spki ||
                memcmp(fresh->server_spki_sha256, old->server_spki_sha256,
                       sizeof(old->server_spki_sha256)) != 0 ||
                fresh->drain_timeout_ns != old->drain_timeout_ns;
  if (differs)
    atun_log(ATUN_LOG_WARN, "agent", "restart_needed",
             "reason=%s", "identity, gateway, credentials or drain_timeout changed");
  memcpy(fresh->name, old->name, sizeof(old->name));
  memcpy(fresh->agent_id, old->agent_id, sizeof(old->agent_id));
  fresh->has_gateway = old->has_gateway;
  fresh->gateway_host = old->gateway_host;
  fresh->gateway_port = old->gateway_port;
  fresh->has_server_spki = old->has_server_spki;
  memcpy(fresh->server_spki_sha256, old->server_spki_sha256,
         sizeof(old->server_spki_sha256));
  fresh->drain_timeout_ns = old->drain_timeout_ns;
  memcpy(fresh->key_file, old->key_file, sizeof(old->key_file));
  memcpy(fresh->cert_file, old->cert_file, sizeof(old->cert_file));
  memcpy(fresh->ca_file, old->ca_file, sizeof(old->ca_file));
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents) {
  agent *a = w->data;
  (void)loop, (void)revents;
  atun_config_agent fresh;
  char msg[AGENT_MSG_MAX];
  if (agent_config_load(&fresh, a->config_path, msg) != 0) {
    atun_log(ATUN_LOG_ERROR, "agent", "reload_failed", "error=%s", msg);
    return;
  }
  keep_connection_settings(&fresh, &a->cfg);
  int rv = advertise(a, &fresh);
  if (rv != 0) {
    atun_config_agent_free(&fresh);
    if (atun_err_is_fatal(rv)) {
      session_ok(a, rv, "set_routes");
      return;
    }
    atun_log(ATUN_LOG_ERROR, "agent", "reload_failed", "error=%s", atun_strerror(rv));
    return;
  }
  atun_config_agent_free(&a->cfg);
  a->cfg = fresh;
  atun_log_set_level(log_level_of(a->cfg.log_level));
  atun_log(ATUN_LOG_INFO, "agent", "reloaded", "path=%s", a->config_path);
  service(a);
}

/* --- the status file --------------------------------------------------------------------- */

/* Validity of cert_file as read at start, until renewal knows better. */
static agent_renew cert_view;

static void status_info(agent *a, agent_status_info *info, const char *state) {
  memset(info, 0, sizeof(*info));
  info->state = state != NULL ? state
                              : atun_session_agent_state_name(
                                    atun_session_agent_get_state(a->session));
  info->cfg = &a->cfg;
  info->routes = &a->routes;
  info->epoch = atun_session_agent_get_epoch(a->session);
  info->streams = agent_dp_count(a->dp);
  info->attempt = a->attempt;
  info->connected_at = a->connected_at;
  const agent_renew *c = renewal.known ? &renewal : &cert_view;
  info->cert_not_after = c->known ? c->not_after : 0;
}

/* |state| NULL: the session's. */
static void status_write(agent *a, const char *state) {
  agent_status_info info;
  status_info(a, &info, state);
  int rv = agent_status_write(&info, agent_renew_wall_now());
  a->status_written = now(a);
  if (rv != 0 && !a->status_failing)
    atun_log(ATUN_LOG_WARN, "agent", "status_write_failed", "error=%s detail=%s",
             atun_strerror(rv), agent_file_error(rv));
  a->status_failing = rv != 0;
}

/* Folds the values whose change should reach the file within a tick. */
static uint64_t status_sig(agent *a) {
  uint64_t h = (uint64_t)atun_session_agent_get_state(a->session);
  h = h * 1000003u ^ atun_session_agent_get_epoch(a->session);
  h = h * 1000003u ^ agent_dp_count(a->dp);
  h = h * 1000003u ^ a->attempt;
  return h * 1000003u ^ a->connected_at;
}

static void on_status_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  agent *a = w->data;
  (void)loop, (void)revents;
  uint64_t sig = status_sig(a);
  if (sig == a->status_sig &&
      now(a) - a->status_written < (atun_tstamp)AGENT_STATUS_REFRESH_S * ATUN_NS_PER_S)
    return;
  a->status_sig = sig;
  status_write(a, NULL);
}

static void status_start(agent *a) {
  agent_renew_init(&cert_view);
  if (agent_renew_load(&cert_view, a->cfg.cert_file) != 0) cert_view.known = 0;
  ev_timer_init(&a->status_timer, on_status_timer, STATUS_TICK_S, STATUS_TICK_S);
  a->status_timer.data = a;
  ev_timer_start(a->loop, &a->status_timer);
  a->status_sig = status_sig(a);
  status_write(a, NULL);
}

static void status_stop(agent *a) {
  ev_timer_stop(a->loop, &a->status_timer);
  status_write(a, "stopped");
}

/* --- start-up ---------------------------------------------------------------------------- */

typedef struct creds {
  char key[ATUN_CA_PEM_MAX];
  size_t key_len;
  char cert[ATUN_CA_PEM_MAX];
  size_t cert_len;
  char ca[ATUN_CA_PEM_MAX];
  size_t ca_len;
} creds;

static int read_cred(const char *what, const char *path, char *buf, size_t *len) {
  int rv = atun_fs_read(path, buf, ATUN_CA_PEM_MAX, len);
  if (rv != 0)
    atun_log(ATUN_LOG_ERROR, "agent", "credentials_unreadable", "file=%s path=%s error=%s",
             what, path, agent_file_error(rv));
  return rv;
}

static int make_tls(agent *a) {
  creds *c = calloc(1, sizeof(*c));
  if (c == NULL) return ATUN_ERR_NOMEM;
  struct stat st;
  if (stat(a->cfg.key_file, &st) == 0 && (st.st_mode & 077) != 0)
    atun_log(ATUN_LOG_WARN, "agent", "key_file_exposed", "path=%s mode=%03o",
             a->cfg.key_file, (unsigned)(st.st_mode & 0777));
  int rv = read_cred("key_file", a->cfg.key_file, c->key, &c->key_len);
  if (rv == 0) rv = read_cred("cert_file", a->cfg.cert_file, c->cert, &c->cert_len);
  if (rv == 0) rv = read_cred("ca_file", a->cfg.ca_file, c->ca, &c->ca_len);
  if (rv == 0) {
    atun_quic_tls_config tc = {
        .ca = (const uint8_t *)c->ca, .ca_len = c->ca_len,
        .cert = (const uint8_t *)c->cert, .cert_len = c->cert_len,
        .key = (const uint8_t *)c->key, .key_len = c->key_len,
        .server_spki_sha256 = a->cfg.has_server_spki ? a->cfg.server_spki_sha256 : NULL};
    rv = atun_quic_tls_new(&a->tls, ATUN_QUIC_CLIENT, &tc, atun_mem_default());
    if (rv != 0)
      atun_log(ATUN_LOG_ERROR, "agent", "credentials_rejected", "error=%s detail=%s",
               atun_strerror(rv), "key, certificate and CA do not form a usable set");
  }
  explicit_bzero(c, sizeof(*c));
  free(c);
  return rv;
}

static int make_session(agent *a) {
  atun_session_agent_settings s;
  atun_session_agent_settings_default(&s);
  snprintf(s.software_version, sizeof(s.software_version), "%s", AGENT_SOFTWARE);
  s.drain_timeout_ns = a->cfg.drain_timeout_ns;
  return atun_session_agent_new(&a->session, &s, on_session_event, atun_ca_sysrand(),
                                atun_mem_default(), a);
}

/* The last stream of a drain ended: the service step (from the loop, not
 * inside the data plane) may close now. */
static void on_dp_count(size_t count, void *ud) {
  agent *a = ud;
  atun_session_agent_set_active_streams(a->session, (uint32_t)count);
  if (count > 0 || !a->stopping) return;
  ev_timer_stop(a->loop, &a->timer);
  ev_timer_set(&a->timer, 0., 0.);
  ev_timer_start(a->loop, &a->timer);
}

static int make_endpoint(agent *a) {
  atun_quic_settings_default(&a->quic);
  /* The gateway picks the heartbeat interval (up to 10 minutes): PINGs keep
   * the connection inside QUIC's idle timeout whatever it picked. */
  a->quic.keep_alive_ns = a->quic.idle_timeout_ns / 2;
  atun_quic_conn_config cc = {.tls = a->tls, .settings = &a->quic,
                              .callbacks = &quic_callbacks, .user_data = a,
                              .mem = atun_mem_default(), .rand = *atun_ca_sysrand()};
  atun_quic_ev_hooks hooks = {.on_closed = on_conn_deleted};
  return atun_quic_ev_client_new(&a->ep, a->loop, NULL, &cc, &hooks, a);
}

/* A renewed certificate is taken up between connections: the endpoint
 * holds the TLS context, so both are built anew from the files.  If that
 * fails the old pair stays (make_tls has logged why). */
static void use_renewed_cert(agent *a) {
  if (!agent_renew_take_installed(&renewal)) return;
  atun_quic_tls *old_tls = a->tls;
  atun_quic_ev *old_ep = a->ep;
  int rv = make_tls(a);
  if (rv == 0) {
    rv = make_endpoint(a);
    if (rv != 0) atun_quic_tls_del(a->tls);
  }
  if (rv != 0) {
    a->tls = old_tls;
    a->ep = old_ep;
    atun_log(ATUN_LOG_WARN, "agent", "cert_reload_failed", "error=%s", atun_strerror(rv));
    return;
  }
  atun_quic_ev_del(old_ep);
  atun_quic_tls_del(old_tls);
  atun_log(ATUN_LOG_INFO, "agent", "cert_reloaded", "path=%s", a->cfg.cert_file);
}

static int load(agent *a) {
  char msg[AGENT_MSG_MAX];
  if (agent_config_load(&a->cfg, a->config_path, msg) != 0) {
    atun_log(ATUN_LOG_ERROR, "agent", "config_invalid", "error=%s", msg);
    return AGENT_EXIT_USAGE;
  }
  atun_log_set_level(log_level_of(a->cfg.log_level));
  atun_config_error err;
  if (atun_config_agent_check_enrolled(&a->cfg, &err) != 0) {
    atun_log(ATUN_LOG_ERROR, "agent", "not_enrolled", "path=%s error=%s",
             a->config_path, err.message);
    return AGENT_EXIT_USAGE;
  }
  /* core/quic checks the chain, not the purpose of the server's
   * certificate: without the pin any certificate of the CA passes, an
   * agent's included. */
  if (!a->cfg.has_server_spki)
    atun_log(ATUN_LOG_WARN, "agent", "no_server_pin", "path=%s detail=%s",
             a->config_path, "server_spki_sha256 unset: any certificate of the CA "
                             "is taken for the gateway");
  return make_tls(a) != 0 ? AGENT_EXIT_USAGE : 0;
}

static void start_watchers(agent *a) {
  ev_timer_init(&a->timer, on_timer, 0., 0.);
  ev_timer_init(&a->stop_timer, on_stop_timer, 0., 0.);
  ev_timer_init(&a->linger_timer, on_linger_timer, 0., 0.);
  a->linger_timer.data = a;
  ev_signal_init(&a->sig_hup, on_hup, SIGHUP);
  ev_signal_init(&a->sig_term, on_term, SIGTERM);
  ev_signal_init(&a->sig_int, on_term, SIGINT);
  a->timer.data = a->stop_timer.data = a;
  a->sig_hup.data = a->sig_term.data = a->sig_int.data = a;
  ev_signal_start(a->loop, &a->sig_hup);
  ev_signal_start(a->loop, &a->sig_term);
  ev_signal_start(a->loop, &a->sig_int);
}

static void stop_watchers(agent *a) {
  ev_timer_stop(a->loop, &a->timer);
  ev_timer_stop(a->loop, &a->stop_timer);
  ev_timer_stop(a->loop, &a->linger_timer);
  ev_signal_stop(a->loop, &a->sig_hup);
  ev_signal_stop(a->loop, &a->sig_term);
  ev_signal_stop(a->loop, &a->sig_int);
}

static int start(agent *a) {
  char gw[ATUN_HOSTPORT_STRLEN];
  atun_hostport_format(gw, &a->cfg.gateway_host, a->cfg.gateway_port);
  atun_log(ATUN_LOG_INFO, "agent", "starting", "version=%s agent_id=%s name=%s gateway=%s",
           AGENT_VERSION, a->cfg.agent_id, a->cfg.name, gw);
  int rv = make_session(a);
  if (rv == 0) rv = make_endpoint(a);
  if (rv == 0)
    rv = agent_dp_new(&a->dp, a->loop, AGENT_DP_SESSIONS_MAX, a->cfg.resolv_conf,
                      on_dp_count, a);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "agent", "start_failed", "error=%s", atun_strerror(rv));
    return AGENT_EXIT_FAILURE;
  }
  rv = advertise(a, &a->cfg);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "agent", "routes_invalid", "error=%s", atun_strerror(rv));
    return AGENT_EXIT_USAGE;
  }
  rv = atun_session_agent_start(a->session, now(a));
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "agent", "start_failed", "error=%s", atun_strerror(rv));
    return AGENT_EXIT_FAILURE;
  }
  start_watchers(a);
  status_start(a);
  service(a);
  ev_run(a->loop, 0);
  stop_watchers(a);
  status_stop(a);
  return a->exit_code;
}

static void teardown(agent *a) {
  /* The loop is over: deleting the connection is no news for the session. */
  a->conn = NULL;
  a->linger = NULL;
  atun_quic_ev_del(a->ep); /* aborts the data plane's pipes first */
  agent_dp_del(a->dp);
  atun_session_agent_del(a->session);
  atun_quic_tls_del(a->tls);
  agent_routes_free(&a->routes);
  atun_config_agent_free(&a->cfg);
}

/* Returns 0, 1 for --help, or AGENT_EXIT_USAGE. */
static int parse_args(agent *a, int argc, char **argv) {
  static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  a->config_path = AGENT_CONFIG_DEFAULT;
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    if (opt == 'h') return 1;
    if (opt != 'c') {
      fprintf(stderr, "atun-agent run: bad or incomplete option '%s'\n"
                      "Try 'atun-agent run --help'.\n", argv[optind - 1]);
      return AGENT_EXIT_USAGE;
    }
    a->config_path = optarg;
  }
  if (optind != argc) {
    fprintf(stderr, "atun-agent run: unexpected argument '%s'\n"
                    "Try 'atun-agent run --help'.\n", argv[optind]);
    return AGENT_EXIT_USAGE;
  }
  return 0;
}

int agent_run_main(int argc, char **argv) {
  agent *a = calloc(1, sizeof(*a));
  if (a == NULL) return AGENT_EXIT_FAILURE;
  a->ctrl = -1;
  a->backoff_logged = ATUN_TSTAMP_MAX;
  a->connected_at = ATUN_TSTAMP_MAX;
  agent_status_capture();
  int rv = parse_args(a, argc, argv);
  if (rv == 1) {
    fputs(usage_text, stdout);
    rv = AGENT_EXIT_OK;
  } else if (rv == 0) {
    rv = load(a);
    a->loop = rv == 0 ? ev_default_loop(EVFLAG_AUTO) : NULL;
    if (rv == 0 && a->loop == NULL) {
      atun_log(ATUN_LOG_ERROR, "agent", "start_failed", "error=%s", "no event loop");
      rv = AGENT_EXIT_FAILURE;
    }
    if (rv == 0) rv = start(a);
    teardown(a);
  }
  free(a);
  return rv;
}
