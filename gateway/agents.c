/*
 * The agent side of the gateway: the QUIC listener (io/quic_ev), one
 * control session (core/session_gw) per admitted connection, and the
 * registry fed from the session events.
 *
 * A connection goes through three stages, told apart by its user data:
 *
 *   handshake   user data = the TLS slot it was accepted with
 *               (atun_gw_tls_slot); a TLS failure here is a handshake
 *               failure without an agent id.
 *   verified    peer_verify ran: user data = an atun_gw_conn, made for
 *               every connection that gets this far (refused ones too, so
 *               the log line of the refusal can name the agent).  It is
 *               freed in on_closed, which io/quic_ev calls exactly once for
 *               every connection it made.
 *   session     the agent opened its control stream: an atun_session_gw
 *               runs it; ESTABLISHED registers the connection in the
 *               registry and replaces an older connection of the agent.
 *
 * Session callbacks must not call into their own session, so what they
 * decide (close on a registry refusal, answer a renewal) is recorded in the
 * connection and done by conn_service() once the session call returned.
 *
 * Time here is monotonic (clock.h), except for certificates and the store.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cmds.h"
#include "gw.h"
#include "log.h"
#include "session_gw.h"
#include "socks.h"

#define CONN_MAGIC 0x67776331u
/* Control-stream bytes moved per pump step. */
#define PUMP_CHUNK 16384
/* Disconnected registry records forgotten at once when the registry is
 * full. */
#define REGISTRY_EVICT_BATCH 256
/* An agent may ask for a certificate at most this often per connection. */
#define RENEW_INTERVAL_NS (10 * ATUN_NS_PER_S)

struct atun_gw_conn {
  uint32_t magic;
  atun_gw *gw;
  atun_gw_conn *prev, *next;
  atun_quic_conn *conn;
  atun_gw_tls_slot *slot;
  atun_session_gw *session;
  ev_timer timer; /* the session's expiry */
  int64_t ctrl;   /* control stream, -1 until the agent opens it */
  uint8_t id[16];
  char id_text[ATUN_UUID_STRLEN];
  char name[ATUN_AGENT_NAME_STRLEN];
  const char *refused; /* why peer_verify refused it, NULL if admitted */
  uint64_t generation; /* registry connection, 0 when not registered */
  uint64_t close_app;  /* deferred close: app error ... */
  const char *close_reason; /* ... and reason; NULL = none pending */
  int close_sent;      /* the QUIC close was asked for */
  int closed;          /* connection_closed was reported */
  int renew_pending;   /* a CertRenewRequest waits for its answer */
  uint8_t *renew_csr;  /* its CSR (DER); NULL if the copy failed */
  size_t renew_csr_len;
  atun_tstamp renew_last;
  uint32_t handle;          /* route-table handle while registered */
  atun_gw_streams streams;  /* session streams the gateway opened */
  int close_pending;        /* the registry reported the agent offline */
};

static void conn_service(atun_gw_conn *c);
static void request_close(atun_gw_conn *c, uint64_t app, const char *reason);

static atun_gw *gw_of(atun_quic_conn *conn) {
  return atun_quic_ev_get_user_data(atun_quic_ev_of(conn));
}

/* The user data is a TLS slot or a connection; both start with their magic
 * (a pointer to a struct points to its first member). */
static atun_gw_conn *as_conn(void *ud) {
  return ud != NULL && *(const uint32_t *)ud == CONN_MAGIC ? ud : NULL;
}

/* --- registry ------------------------------------------------------------------------ */

static void registry_rearm(atun_gw *gw) {
  atun_tstamp exp = atun_registry_get_expiry(gw->reg);
  ev_timer_stop(gw->loop, &gw->reg_timer);
  if (exp == ATUN_TSTAMP_MAX) return;
  atun_tstamp now = atun_gw_mono_now();
  double after = exp > now ? (double)(exp - now) / 1e9 : 0.0;
  ev_timer_set(&gw->reg_timer, after, 0.0);
  ev_timer_start(gw->loop, &gw->reg_timer);
}

static int on_registry_offline(const uint8_t *id, uint32_t handle, atun_tstamp last_seen,
                               void *ud) {
  atun_gw *gw = ud;
  char text[ATUN_UUID_STRLEN];
  atun_registry_agent_info info;
  (void)handle;
  atun_gw_uuid_format(text, id);
  const char *name = atun_registry_get(gw->reg, id, last_seen, &info) == 0 ? info.name : "";
  atun_log(ATUN_LOG_WARN, "gateway", "agent_offline",
           "agent_id=%s agent_name=%s silent_ms=%llu", text, name,
           (unsigned long long)(atun_registry_offline_timeout(gw->reg) / ATUN_NS_PER_MS));
  /* Draining, the gateway said Goodbye: an agent that stays for its
   * streams sends no more heartbeats, and its silence is no reason to cut
   * transfers the drain lets finish (the drain deadline bounds them). */
  if (gw->draining) return 0;
  /* Left alone, the connection would linger until the QUIC idle timeout
   * (30 s) with its clients hanging on an agent that stopped answering.
   * Closing it resets every client at once, and the agent, if it was only
   * slow, reconnects as a new generation. */
  for (atun_gw_conn *c = gw->conns; c != NULL; c = c->next) {
    if (c->closed || c->generation == 0 || memcmp(c->id, id, 16) != 0) continue;
    request_close(c, ATUN_APP_HEARTBEAT_TIMEOUT, "heartbeat timeout");
    c->close_pending = 1; /* not here: closing reenters the registry */
    break;
  }
  return 0;
}

static void on_registry_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  atun_gw *gw = w->data;
  (void)loop, (void)revents;
  atun_registry_handle_expiry(gw->reg, atun_gw_mono_now());
  registry_rearm(gw);
  atun_gw_conn *next;
  for (atun_gw_conn *c = gw->conns; c != NULL; c = next) {
    next = c->next; /* a flush may delete |c| */
    if (!c->close_pending) continue;
    c->close_pending = 0;
    conn_service(c);
  }
}

static void conn_unregister(atun_gw_conn *c) {
  if (c->generation == 0) return;
  atun_registry_disconnect(c->gw->reg, c->id, c->generation);
  c->generation = 0;
  registry_rearm(c->gw);
}

/* --- session events ---------------------------------------------------------------------- */

static void request_close(atun_gw_conn *c, uint64_t app, const char *reason) {
  if (c->close_reason != NULL) return;
  c->close_app = app;
  c->close_reason = reason;
}

/* A newer connection of the same agent won: the older ones go. */
static void close_older(atun_gw_conn *c) {
  for (atun_gw_conn *o = c->gw->conns; o != NULL; o = o->next) {
    if (o == c || o->closed || o->refused != NULL || memcmp(o->id, c->id, 16) != 0) continue;
    o->generation = 0; /* stale now: the registry entry belongs to |c| */
    request_close(o, ATUN_APP_REPLACED, "replaced by a newer connection");
    ++c->gw->metrics.connections_replaced;
    atun_log(ATUN_LOG_INFO, "gateway", "agent_connection_replaced", "agent_id=%s", c->id_text);
    conn_service(o);
  }
}

/* The registry keeps the record of a disconnected agent (for listing) until
 * it is forgotten; once it is full, those records make room for connected
 * agents.  The store stays the authority on who exists and who is revoked.
 * Returns the number forgotten. */
static size_t registry_evict(atun_gw *gw, atun_tstamp now) {
  uint8_t ids[REGISTRY_EVICT_BATCH][16];
  size_t n = 0;
  uint32_t cursor = 0;
  atun_registry_agent_info info;
  while (n < REGISTRY_EVICT_BATCH && atun_registry_next(gw->reg, &cursor, now, &info) == 0)
    if (!info.connected) memcpy(ids[n++], info.id, 16);
  for (size_t i = 0; i < n; ++i) atun_registry_forget(gw->reg, ids[i]);
  if (n > 0) atun_log(ATUN_LOG_INFO, "gateway", "registry_evicted", "records=%zu", n);
  return n;
}

static void on_established(atun_gw_conn *c, const atun_session_gw_event *ev) {
  atun_gw *gw = c->gw;
  uint64_t gen;
  atun_tstamp now = atun_gw_mono_now();
  int rv = atun_registry_connect(gw->reg, c->id, c->name, now, &gen);
  if (rv == ATUN_ERR_FULL && registry_evict(gw, now) > 0)
    rv = atun_registry_connect(gw->reg, c->id, c->name, now, &gen);
  if (rv != 0) {
    atun_log(ATUN_LOG_WARN, "gateway", "agent_refused", "agent_id=%s reason=%s", c->id_text,
             atun_strerror(rv));
    request_close(c, rv == ATUN_ERR_REVOKED ? ATUN_APP_REVOKED : ATUN_APP_OVERLOADED,
                  rv == ATUN_ERR_REVOKED ? "revoked" : "registry full");
    return;
  }
  c->generation = gen;
  atun_registry_agent_info info;
  if (atun_registry_get(gw->reg, c->id, now, &info) == 0) c->handle = info.handle;
  close_older(c);
  registry_rearm(gw);
  atun_log(ATUN_LOG_INFO, "gateway", "agent_connected",
           "agent_id=%s agent_name=%s version=%u software=%s generation=%llu", c->id_text,
           c->name, (unsigned)ev->u.established.version,
           ev->u.established.hello->software_version, (unsigned long long)gen);
}

static void on_advertise(atun_gw_conn *c, const atun_route_advertise *ad) {
  atun_gw *gw = c->gw;
  atun_advertise_outcome out = ATUN_ADVERTISE_IGNORED;
  if (c->generation == 0) return;
  /* Same layout, different types: the codec's domains become route
   * domains by field copy (route.h). */
  for (size_t i = 0; i < ad->domain_count && i < ATUN_DOMAINS_MAX; ++i) {
    memcpy(gw->domains[i].name, ad->domains[i].name, sizeof(gw->domains[i].name));
    gw->domains[i].auto_detected = ad->domains[i].auto_detected;
  }
  int rv = atun_registry_advertise(gw->reg, c->id, c->generation, ad->epoch, ad->subnets,
                                   ad->subnet_count, gw->domains, ad->domain_count,
                                   atun_gw_mono_now(), &out);
  if (rv != 0 && rv != ATUN_ERR_STALE) {
    atun_log(ATUN_LOG_WARN, "gateway", "routes_refused", "agent_id=%s epoch=%llu error=%s",
             c->id_text, (unsigned long long)ad->epoch, atun_strerror(rv));
    return;
  }
  if (rv == 0 && out == ATUN_ADVERTISE_REPLACED)
    atun_log(ATUN_LOG_INFO, "gateway", "routes_advertised",
             "agent_id=%s epoch=%llu subnets=%zu domains=%zu", c->id_text,
             (unsigned long long)ad->epoch, ad->subnet_count, ad->domain_count);
  registry_rearm(gw);
}

static void on_heartbeat(atun_gw_conn *c, const atun_session_gw_event *ev) {
  if (c->generation == 0) return;
  uint64_t rtt = ev->u.heartbeat.rtt_ns != 0 ? ev->u.heartbeat.rtt_ns : UINT64_MAX;
  int rv = atun_registry_heartbeat(c->gw->reg, c->id, c->generation, atun_gw_mono_now(), rtt);
  if (rv == 1)
    atun_log(ATUN_LOG_INFO, "gateway", "agent_online", "agent_id=%s agent_name=%s", c->id_text,
             c->name);
  if (rv >= 0)
    atun_registry_set_active_streams(c->gw->reg, c->id, c->generation, c->streams.count);
  registry_rearm(c->gw);
}

static void keep_renewal(atun_gw_conn *c, const atun_cert_renew_request *r) {
  free(c->renew_csr);
  c->renew_csr = malloc(r->csr_len);
  c->renew_csr_len = r->csr_len;
  c->renew_pending = 1;
  if (c->renew_csr != NULL) memcpy(c->renew_csr, r->csr, r->csr_len);
}

static int on_session_event(atun_session_gw *s, const atun_session_gw_event *ev, void *ud) {
  atun_gw_conn *c = ud;
  (void)s;
  switch (ev->type) {
    case ATUN_SESSION_GW_EV_ESTABLISHED: on_established(c, ev); break;
    case ATUN_SESSION_GW_EV_ADVERTISE: on_advertise(c, ev->u.advertise); break;
    case ATUN_SESSION_GW_EV_HEARTBEAT: on_heartbeat(c, ev); break;
    case ATUN_SESSION_GW_EV_GOODBYE:
      atun_log(ATUN_LOG_INFO, "gateway", "agent_goodbye", "agent_id=%s reason=%llu message=%s",
               c->id_text, (unsigned long long)ev->u.goodbye.reason, ev->u.goodbye.message);
      conn_unregister(c);
      break;
    case ATUN_SESSION_GW_EV_ERROR:
      atun_log(ev->u.error.remote ? ATUN_LOG_INFO : ATUN_LOG_WARN, "gateway", "session_error",
               "agent_id=%s code=%s remote=%d message=%s", c->id_text,
               atun_app_error_name(ev->u.error.app_error), ev->u.error.remote,
               ev->u.error.message);
      conn_unregister(c);
      break;
    case ATUN_SESSION_GW_EV_RENEW_REQUEST: keep_renewal(c, ev->u.renew); break;
    default: break; /* STATE, OFFLINE, ONLINE: the registry reports those */
  }
  return 0;
}

/* --- certificate renewal over the control stream ------------------------------------------ */

static void renew_answer(atun_gw_conn *c) {
  atun_tstamp now = atun_gw_mono_now(), until = ATUN_TSTAMP_MAX;
  uint8_t *der = malloc(ATUN_CA_DER_MAX);
  size_t derlen = 0;
  uint64_t status = ATUN_CERT_STATUS_INTERNAL;
  if (c->renew_last != 0 && now - c->renew_last < RENEW_INTERVAL_NS)
    status = ATUN_CERT_STATUS_RETRY_LATER;
  else if (der != NULL && c->renew_csr != NULL)
    status = atun_gw_renew_sign(c->gw, c->id_text, c->name, c->renew_csr, c->renew_csr_len, der,
                                &derlen, &until);
  /* Only work done counts against the interval; refusals are cheap. */
  if (status != ATUN_CERT_STATUS_RETRY_LATER) c->renew_last = now;
  int ok = status == ATUN_CERT_STATUS_OK;
  atun_session_gw_send_renew_response(c->session, now, status, ok ? der : NULL, ok ? derlen : 0,
                                      NULL);
  int result = ok ? ATUN_GW_RENEW_OK
               : status == ATUN_CERT_STATUS_INTERNAL ? ATUN_GW_RENEW_ERROR
                                                     : ATUN_GW_RENEW_REFUSED;
  ++c->gw->metrics.agent_renewals[result];
  char text[ATUN_GW_TIME_STRLEN];
  atun_gw_time_format(text, until);
  atun_log(ok ? ATUN_LOG_INFO : ATUN_LOG_WARN, "gateway", "agent_cert_renewal",
           "agent_id=%s status=%s expires=%s", c->id_text, atun_cert_status_name(status), text);
  free(der);
  free(c->renew_csr);
  c->renew_csr = NULL;
  c->renew_pending = 0;
}

/* --- driving one connection -------------------------------------------------------------- */

static void pump_control(atun_gw_conn *c) {
  uint8_t buf[PUMP_CHUNK];
  while (c->session != NULL && c->ctrl >= 0 && atun_session_gw_pending(c->session) > 0) {
    ssize_t room = atun_quic_stream_writable(c->conn, c->ctrl);
    if (room <= 0) return; /* resumes on stream_acked */
    size_t want = (size_t)room < sizeof(buf) ? (size_t)room : sizeof(buf);
    ssize_t n = atun_session_gw_write(c->session, buf, want);
    if (n <= 0) return;
    ssize_t took = atun_quic_stream_write(c->conn, c->ctrl, buf, (size_t)n, 0);
    if (took != n) {
      /* |room| said it fits; anything else means the stream is gone. */
      request_close(c, ATUN_APP_INTERNAL, "control stream write failed");
      return;
    }
  }
}

static void session_rearm(atun_gw_conn *c) {
  ev_timer_stop(c->gw->loop, &c->timer);
  if (c->session == NULL) return;
  atun_tstamp exp = atun_session_gw_get_expiry(c->session);
  if (exp == ATUN_TSTAMP_MAX) return;
  atun_tstamp now = atun_gw_mono_now();
  ev_timer_set(&c->timer, exp > now ? (double)(exp - now) / 1e9 : 0.0, 0.0);
  ev_timer_start(c->gw->loop, &c->timer);
}

/* Does what the last call into the session decided, then writes. */
static void conn_service(atun_gw_conn *c) {
  if (c->closed) return;
  atun_tstamp now = atun_gw_mono_now();
  if (c->session != NULL && c->renew_pending) renew_answer(c);
  if (c->close_reason != NULL && c->session != NULL &&
      atun_session_gw_get_state(c->session) != ATUN_SESSION_GW_CLOSED)
    atun_session_gw_close(c->session, now, c->close_app, c->close_reason);
  pump_control(c);
  uint64_t app;
  if (!c->close_sent && c->session != NULL && atun_session_gw_want_close(c->session, &app)) {
    c->close_sent = 1;
    atun_quic_ev_close(c->conn, app, atun_app_error_name(app));
  } else if (!c->close_sent && c->session == NULL && c->close_reason != NULL) {
    c->close_sent = 1;
    atun_quic_ev_close(c->conn, c->close_app, c->close_reason);
  }
  if (c->close_sent) conn_unregister(c);
  session_rearm(c);
  atun_quic_ev_flush(c->conn);
}

/* A session call failed fatally: the session is unusable. */
static void session_check(atun_gw_conn *c, int rv) {
  if (rv == 0 || !atun_err_is_fatal(rv)) return;
  atun_log(ATUN_LOG_ERROR, "gateway", "session_failed", "agent_id=%s error=%s", c->id_text,
           atun_strerror(rv));
  conn_unregister(c);
  if (!c->close_sent) {
    c->close_sent = 1;
    atun_quic_ev_close(c->conn, ATUN_APP_INTERNAL, "internal");
  }
}

static void on_session_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  atun_gw_conn *c = w->data;
  (void)loop, (void)revents;
  session_check(c, atun_session_gw_handle_expiry(c->session, atun_gw_mono_now()));
  conn_service(c);
}

/* --- QUIC callbacks ----------------------------------------------------------------------- */

static void conn_link(atun_gw *gw, atun_gw_conn *c) {
  c->next = gw->conns;
  if (gw->conns != NULL) gw->conns->prev = c;
  gw->conns = c;
  ++gw->nconns;
}

static void conn_unlink(atun_gw_conn *c) {
  atun_gw *gw = c->gw;
  if (c->prev != NULL) c->prev->next = c->next;
  else gw->conns = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  --gw->nconns;
}

/* Admission: the certificate chains to the CA (TLS checked that); now the
 * durable store decides.  A store failure refuses. */
static const char *admission(atun_gw *gw, const atun_quic_peer *peer, atun_agent_record *rec,
                             int *err) {
  int rv = atun_store_is_revoked(gw->store, peer->agent_id, peer->cert_sha256);
  if (rv == 1) return *err = ATUN_ERR_REVOKED, "revoked";
  if (rv < 0) return *err = rv, "store_error";
  rv = atun_store_agent_get(gw->store, peer->agent_id, rec);
  if (rv == ATUN_ERR_NOT_FOUND) return *err = rv, "unknown_agent";
  if (rv != 0) return *err = rv, "store_error";
  if (gw->draining) return *err = ATUN_ERR_STATE, "shutting_down";
  return NULL;
}

static int cb_peer_verify(atun_quic_conn *conn, const atun_quic_peer *peer, void *ud) {
  atun_gw *gw = gw_of(conn);
  atun_gw_tls_slot *slot = ud;
  ATUN_ASSERT(slot != NULL && slot->magic == ATUN_GW_TLS_MAGIC);
  atun_gw_conn *c = calloc(1, sizeof(*c));
  if (c == NULL) return ATUN_ERR_NOMEM;
  c->magic = CONN_MAGIC;
  c->gw = gw;
  c->conn = conn;
  c->slot = slot;
  c->ctrl = -1;
  ev_timer_init(&c->timer, on_session_timer, 0.0, 0.0);
  c->timer.data = c;
  memcpy(c->id_text, peer->agent_id, ATUN_UUID_LEN);
  atun_gw_uuid_parse(c->id, c->id_text, ATUN_UUID_LEN);
  ++slot->conns;
  conn_link(gw, c);
  atun_quic_ev_conn_set_user_data(conn, c);
  atun_agent_record rec;
  int err = 0;
  c->refused = admission(gw, peer, &rec, &err);
  if (c->refused != NULL) return err;
  memcpy(c->name, rec.name, sizeof(c->name));
  return 0;
}

static int cb_handshake_completed(atun_quic_conn *conn, void *ud) {
  atun_gw_conn *c = as_conn(ud);
  (void)conn;
  if (c == NULL) return 0;
  ++c->gw->metrics.connections_admitted;
  atun_log(ATUN_LOG_DEBUG, "gateway", "agent_handshake_completed", "agent_id=%s", c->id_text);
  return 0;
}

static int session_start(atun_gw_conn *c) {
  const atun_config_gateway *cfg = &c->gw->cfg;
  atun_session_gw_settings s;
  atun_session_gw_settings_default(&s);
  snprintf(s.software_version, sizeof(s.software_version), "atun-gateway %s", ATUN_GW_VERSION);
  s.has_agent_id = 1;
  memcpy(s.agent_id, c->id, sizeof(s.agent_id));
  s.heartbeat_interval_ns = cfg->heartbeat_interval_ns;
  s.offline_timeout_ns = cfg->heartbeat_interval_ns * cfg->offline_missed_heartbeats;
  s.drain_timeout_ns = cfg->drain_timeout_ns;
  int rv = atun_session_gw_new(&c->session, &s, on_session_event, atun_mem_default(), c);
  if (rv == 0) rv = atun_session_gw_on_transport_connected(c->session, atun_gw_mono_now());
  return rv;
}

static int cb_stream_open(atun_quic_conn *conn, int64_t sid, void *ud) {
  atun_gw_conn *c = as_conn(ud);
  if (c == NULL || c->refused != NULL) return -1;
  if (c->ctrl >= 0) {
    /* Agents open only the control stream; the gateway opens the rest. */
    atun_quic_stream_shutdown(conn, sid, ATUN_APP_PROTOCOL_VIOLATION);
    return 0;
  }
  c->ctrl = sid;
  int rv = session_start(c);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "gateway", "session_failed", "agent_id=%s error=%s",
             c->id_text, atun_strerror(rv));
    return -1;
  }
  conn_service(c);
  return 0;
}

static int cb_stream_data(atun_quic_conn *conn, int64_t sid, const uint8_t *data, size_t len,
                          int fin, void *ud, void *sud) {
  atun_gw_conn *c = as_conn(ud);
  if (c != NULL && sid != c->ctrl && sud != NULL) {
    /* A session stream: its pipe consumes what the client socket took. */
    atun_gw_client_on_stream_data(sud, data, len, fin);
    return 0;
  }
  atun_quic_stream_consume(conn, sid, len);
  if (c == NULL || sid != c->ctrl || c->session == NULL) return 0;
  atun_tstamp now = atun_gw_mono_now();
  int rv = len > 0 ? atun_session_gw_on_data(c->session, now, data, len) : 0;
  if (rv == 0 && fin) rv = atun_session_gw_on_stream_closed(c->session, now);
  session_check(c, rv);
  conn_service(c);
  return 0;
}

static int cb_stream_reset(atun_quic_conn *conn, int64_t sid, uint64_t err, void *ud, void *sud) {
  atun_gw_conn *c = as_conn(ud);
  (void)conn;
  if (c != NULL && sid != c->ctrl && sud != NULL) {
    atun_gw_client_on_stream_reset(sud, err);
    return 0;
  }
  if (c == NULL || sid != c->ctrl || c->session == NULL) return 0;
  session_check(c, atun_session_gw_on_stream_closed(c->session, atun_gw_mono_now()));
  conn_service(c);
  return 0;
}

static int cb_stream_acked(atun_quic_conn *conn, int64_t sid, size_t n, void *ud, void *sud) {
  atun_gw_conn *c = as_conn(ud);
  (void)conn, (void)n, (void)sud;
  if (c == NULL) return 0;
  /* The send buffer is shared: any ack may give every waiting pipe room.
   * Control frames go first: pipes take all the room an ack frees, and a
   * heartbeat answer stuck behind them makes the agent give up on us. */
  if (sid == c->ctrl || (c->session != NULL && atun_session_gw_pending(c->session) > 0))
    conn_service(c);
  atun_gw_streams_on_writable(&c->streams);
  return 0;
}

static int cb_stream_closed(atun_quic_conn *conn, int64_t sid, int has_error, uint64_t app_error,
                            void *ud, void *sud) {
  atun_gw_conn *c = as_conn(ud);
  (void)conn;
  if (c != NULL && sid != c->ctrl && sud != NULL)
    atun_gw_client_on_stream_closed(sud, has_error, app_error);
  return 0;
}

static void log_refused(atun_gw *gw, const atun_gw_conn *c, const atun_quic_close_info *info) {
  int reason = info->hs_failure;
  if (reason < 0 || reason >= ATUN_GW_HS_REASONS) reason = 0;
  ++gw->metrics.hs_failures[reason];
  if (c != NULL) {
    /* Refused by admission: the certificate was good, the agent is known. */
    atun_log(ATUN_LOG_WARN, "gateway", "handshake_refused", "reason=%s agent_id=%s",
             c->refused, c->id_text);
    return;
  }
  atun_log(ATUN_LOG_WARN, "gateway", "handshake_refused", "reason=%s detail=%s",
           reason != 0 ? atun_quic_hs_failure_name(info->hs_failure) : "closed_before_admission",
           info->reason);
}

static void cb_connection_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                                 void *ud) {
  atun_gw *gw = gw_of(conn);
  atun_gw_conn *c = as_conn(ud);
  if (c == NULL || c->refused != NULL) {
    log_refused(gw, c, info);
    if (c != NULL) c->closed = 1;
    return;
  }
  c->closed = 1;
  atun_gw_streams_conn_gone(gw, &c->streams);
  if (c->session != NULL) atun_session_gw_on_transport_failed(c->session, atun_gw_mono_now());
  conn_unregister(c);
  ev_timer_stop(gw->loop, &c->timer);
  atun_log(ATUN_LOG_INFO, "gateway", "agent_disconnected",
           "agent_id=%s agent_name=%s by=%s code=%s detail=%s", c->id_text, c->name,
           info->source == ATUN_QUIC_CLOSE_LOCAL  ? "gateway"
           : info->source == ATUN_QUIC_CLOSE_PEER ? "agent"
                                                  : "timeout",
           info->app ? atun_app_error_name(info->error_code) : "transport", info->reason);
}

static const atun_quic_callbacks gw_callbacks = {
    .peer_verify = cb_peer_verify,
    .handshake_completed = cb_handshake_completed,
    .stream_open = cb_stream_open,
    .stream_data = cb_stream_data,
    .stream_reset = cb_stream_reset,
    .stream_acked = cb_stream_acked,
    .stream_closed = cb_stream_closed,
    .connection_closed = cb_connection_closed,
};

/* --- endpoint hooks ------------------------------------------------------------------------- */

static int on_accept(atun_quic_ev *ep, const atun_quic_path *path, atun_quic_conn_config *config,
                     void *ud) {
  atun_gw *gw = ud;
  (void)ep, (void)path;
  if (gw->draining) return -1;
  atun_gw_tls_slot *slot = &gw->tls[gw->tls_current];
  config->tls = slot->tls;
  config->user_data = slot;
  return 0;
}

static void on_closed(atun_quic_ev *ep, atun_quic_conn *conn, void *conn_ud, void *ud) {
  atun_gw_conn *c = as_conn(conn_ud);
  (void)ep, (void)conn, (void)ud;
  if (c == NULL) return;
  atun_gw_streams_conn_gone(c->gw, &c->streams);
  conn_unregister(c);
  ev_timer_stop(c->gw->loop, &c->timer);
  atun_session_gw_del(c->session);
  --c->slot->conns;
  conn_unlink(c);
  free(c->renew_csr);
  c->magic = 0;
  free(c);
}

/* --- lifetime -------------------------------------------------------------------------------- */

static int registry_start(atun_gw *gw) {
  atun_registry_settings rs;
  atun_registry_settings_default(&rs);
  rs.max_agents = gw->cfg.limits.max_agents < ATUN_REGISTRY_AGENTS_MAX
                      ? gw->cfg.limits.max_agents
                      : ATUN_REGISTRY_AGENTS_MAX;
  rs.heartbeat_interval_ns = gw->cfg.heartbeat_interval_ns;
  rs.missed_heartbeats_max = gw->cfg.offline_missed_heartbeats;
  atun_registry_callbacks cb = {.offline = on_registry_offline};
  ev_timer_init(&gw->reg_timer, on_registry_timer, 0.0, 0.0);
  gw->reg_timer.data = gw;
  gw->domains = calloc(ATUN_DOMAINS_MAX, sizeof(*gw->domains));
  if (gw->domains == NULL) return ATUN_ERR_NOMEM;
  return atun_registry_new(&gw->reg, &rs, &cb, gw, atun_mem_default());
}

static int listen_start(atun_gw *gw) {
  atun_quic_ev_settings es;
  atun_quic_ev_settings_default(&es);
  /* Room for every agent plus one replacement each, within the driver's
   * limit. */
  size_t want = (size_t)gw->cfg.limits.max_agents * 2 + 64;
  es.conns_max = want < ATUN_QUIC_EV_CONNS_LIMIT ? want : ATUN_QUIC_EV_CONNS_LIMIT;
  atun_quic_settings_default(&gw->quic_settings);
  gw->quic_settings.max_streams_bidi = gw->cfg.limits.max_streams_per_agent;
  /* A connection silent for a whole offline timeout is the session's to
   * judge (it reports the agent offline and keeps the connection), so QUIC
   * must not drop it earlier: idle timeout >= offline timeout + a beat. */
  uint64_t quiet = gw->cfg.heartbeat_interval_ns * (gw->cfg.offline_missed_heartbeats + 1);
  if (quiet > gw->quic_settings.idle_timeout_ns) gw->quic_settings.idle_timeout_ns = quiet;
  atun_quic_conn_config tmpl = {.tls = gw->tls[0].tls, .settings = &gw->quic_settings,
                                .callbacks = &gw_callbacks, .user_data = NULL,
                                .mem = atun_mem_default(), .rand = *atun_ca_sysrand()};
  atun_quic_ev_hooks hooks = {.on_accept = on_accept, .on_closed = on_closed};
  return atun_quic_ev_server_new(&gw->quic, gw->loop, &es, &gw->cfg.quic_listen, &tmpl, &hooks,
                                 gw);
}

int atun_gw_agents_start(atun_gw *gw) {
  char addr[ATUN_ADDR_STRLEN];
  int rv = registry_start(gw);
  if (rv == 0) rv = atun_gw_tls_start(gw);
  if (rv == 0) rv = listen_start(gw);
  atun_addr_format(addr, &gw->cfg.quic_listen.addr);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "gateway", "quic_listen_failed", "address=%s port=%u error=%s",
             addr, (unsigned)gw->cfg.quic_listen.port, atun_strerror(rv));
    return rv;
  }
  atun_quic_endpoint local;
  atun_quic_ev_get_local(gw->quic, &local);
  atun_log(ATUN_LOG_INFO, "gateway", "quic_listening", "address=%s port=%u", addr,
           (unsigned)local.port);
  return 0;
}

void atun_gw_agents_stop(atun_gw *gw) {
  atun_quic_ev_del(gw->quic);
  gw->quic = NULL;
  atun_gw_tls_free(gw);
  if (gw->loop != NULL) ev_timer_stop(gw->loop, &gw->reg_timer);
  atun_registry_del(gw->reg);
  gw->reg = NULL;
  free(gw->domains);
  gw->domains = NULL;
}

size_t atun_gw_agents_close(atun_gw *gw, const uint8_t *id, uint64_t app_error,
                            const char *reason) {
  size_t n = 0;
  atun_gw_conn *next;
  for (atun_gw_conn *c = gw->conns; c != NULL; c = next) {
    next = c->next; /* a flush outside a callback may delete |c| */
    if (c->closed || memcmp(c->id, id, 16) != 0) continue;
    request_close(c, app_error, reason);
    conn_service(c);
    ++n;
  }
  return n;
}

void atun_gw_agents_drain(atun_gw *gw) {
  gw->draining = 1;
  atun_tstamp now = atun_gw_mono_now();
  atun_gw_conn *next;
  for (atun_gw_conn *c = gw->conns; c != NULL; c = next) {
    next = c->next; /* a flush outside a callback may delete |c| */
    if (c->closed) continue;
    if (c->session == NULL ||
        atun_session_gw_drain(c->session, now, ATUN_GOODBYE_SHUTDOWN) == ATUN_ERR_STATE)
      request_close(c, ATUN_APP_SHUTDOWN, "shutting down");
    conn_service(c);
  }
}

size_t atun_gw_agents_open(const atun_gw *gw) {
  atun_quic_ev_stats st;
  if (gw->quic == NULL) return 0;
  atun_quic_ev_get_stats(gw->quic, &st);
  return st.conns_open;
}

int atun_gw_agents_link(atun_gw *gw, uint32_t handle, atun_gw_agent_link *out) {
  /* Linear in the open connections; a handle index would replace this if
   * connects per second times agents ever shows up in a profile. */
  for (atun_gw_conn *c = gw->conns; c != NULL; c = c->next) {
    if (c->closed || c->close_sent || c->generation == 0 || c->handle != handle) continue;
    out->conn = c->conn;
    out->streams = &c->streams;
    memcpy(out->id, c->id, sizeof(out->id));
    out->generation = c->generation;
    return 0;
  }
  return ATUN_ERR_NOT_FOUND;
}
