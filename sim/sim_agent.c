/*
 * A simulated agent: the real agent session machine and a real QUIC client
 * connection, wired the way the agent daemon wires them, with an echo
 * target behind it for the gateway's transfers.
 */
#include <stdio.h>
#include <string.h>

#include "world_int.h"

static void agent_service(sim_agent *a);

static atun_tstamp ats(const sim_agent *a) { return sim_node_ts(a->w, a->node); }

/* --- echo streams (the simulated TCP target) ------------------------------- */

static sim_echo *echo_find(sim_agent *a, int64_t id) {
  for (int i = 0; i < SIM_ECHO_STREAMS_MAX; ++i)
    if (a->echo[i].used && a->echo[i].id == id) return &a->echo[i];
  return NULL;
}

static void echo_free(sim_agent *a, sim_echo *e) {
  atun_frame_reader_free(&e->reader);
  atun_mem_free(a->w->mem, e->buf);
  memset(e, 0, sizeof(*e));
}

static void echo_free_all(sim_agent *a) {
  for (int i = 0; i < SIM_ECHO_STREAMS_MAX; ++i)
    if (a->echo[i].used) echo_free(a, &a->echo[i]);
}

static int echo_append(sim_agent *a, sim_echo *e, const uint8_t *data, size_t len) {
  if (e->len + len > e->cap) {
    size_t cap = e->cap ? e->cap : 4096;
    while (cap < e->len + len) cap *= 2;
    uint8_t *p = atun_mem_realloc(a->w->mem, e->buf, cap);
    if (p == NULL) return ATUN_ERR_NOMEM;
    e->buf = p;
    e->cap = cap;
  }
  memcpy(e->buf + e->len, data, len);
  e->len += len;
  return 0;
}

/* Moves buffered echo bytes into the QUIC stream; only what the stream took
 * is consumed, so the gateway's credit follows the target's pace. */
static void echo_flush(sim_agent *a, sim_echo *e) {
  if (e->len > 0) {
    ssize_t n = atun_quic_stream_write(a->conn, e->id, e->buf, e->len, 0);
    if (n > 0) {
      memmove(e->buf, e->buf + n, e->len - (size_t)n);
      e->len -= (size_t)n;
      atun_quic_stream_consume(a->conn, e->id, (size_t)n);
    }
  }
  if (e->fin_in && e->len == 0 && !e->fin_out) {
    if (atun_quic_stream_write(a->conn, e->id, NULL, 0, 1) == 0) e->fin_out = 1;
  }
}

/* The header is a ConnectRequest; everything after it is echoed. */
static int echo_header(sim_agent *a, sim_echo *e, const uint8_t **data, size_t *len) {
  ssize_t n = atun_frame_reader_feed(&e->reader, *data, *len);
  if (n < 0) return (int)n;
  atun_quic_stream_consume(a->conn, e->id, (size_t)n);
  *data += n;
  *len -= (size_t)n;
  if (!atun_frame_reader_ready(&e->reader)) return 0;
  atun_msg m;
  int rv = atun_frame_reader_decode(&e->reader, &m, a->w->mem);
  if (rv != 0) return rv;
  int is_req = m.type == ATUN_FRAME_CONNECT_REQUEST;
  atun_msg_free(&m, a->w->mem);
  if (!is_req) return ATUN_ERR_PROTO;
  atun_msg resp = {.type = ATUN_FRAME_CONNECT_RESPONSE};
  resp.u.connect_response.status = ATUN_CONNECT_OK;
  uint8_t buf[64];
  ssize_t fl = atun_frame_encode(buf, sizeof(buf), &resp);
  if (fl < 0 || atun_quic_stream_write(a->conn, e->id, buf, (size_t)fl, 0) != fl)
    return ATUN_ERR_INTERNAL;
  e->header_done = 1;
  return 0;
}

static int echo_data(sim_agent *a, sim_echo *e, const uint8_t *data, size_t len, int fin) {
  if (!e->header_done) {
    int rv = echo_header(a, e, &data, &len);
    if (rv != 0) return rv;
    if (!e->header_done) {
      if (fin) return ATUN_ERR_TRUNCATED;
      return 0;
    }
  }
  if (len > 0 && echo_append(a, e, data, len) != 0) return ATUN_ERR_NOMEM;
  if (fin) e->fin_in = 1;
  echo_flush(a, e);
  return 0;
}

/* --- QUIC callbacks ------------------------------------------------------- */

static int cb_handshake_completed(atun_quic_conn *conn, void *ud) {
  sim_agent *a = ud;
  /* The control stream is the first bidirectional stream, opened by the
   * agent.  TLS completing is not acceptance: Hello/HelloAck decide. */
  if (atun_quic_stream_open(conn, &a->ctrl, NULL) != 0) return -1;
  return atun_session_agent_on_transport_connected(a->session, ats(a)) == 0 ? 0 : -1;
}

static int cb_stream_open(atun_quic_conn *conn, int64_t id, void *ud) {
  sim_agent *a = ud;
  for (int i = 0; i < SIM_ECHO_STREAMS_MAX; ++i) {
    sim_echo *e = &a->echo[i];
    if (e->used) continue;
    memset(e, 0, sizeof(*e));
    e->used = 1;
    e->id = id;
    atun_frame_reader_init(&e->reader, ATUN_SESSION_PAYLOAD_MAX, a->w->mem);
    return 0;
  }
  /* A bound of the simulated target: refuse the stream like a full backlog. */
  atun_quic_stream_shutdown(conn, id, ATUN_APP_OVERLOADED);
  return 0;
}

static int cb_stream_data(atun_quic_conn *conn, int64_t id, const uint8_t *data,
                          size_t len, int fin, void *ud, void *sud) {
  sim_agent *a = ud;
  (void)sud;
  if (id == a->ctrl) {
    atun_quic_stream_consume(conn, id, len);
    int rv = len ? atun_session_agent_on_data(a->session, ats(a), data, len) : 0;
    if (rv == 0 && fin) rv = atun_session_agent_on_stream_closed(a->session, ats(a));
    return rv == 0 ? 0 : -1;
  }
  sim_echo *e = echo_find(a, id);
  if (e == NULL) {
    atun_quic_stream_consume(conn, id, len);
    return 0;
  }
  if (echo_data(a, e, data, len, fin) != 0) {
    atun_quic_stream_consume(conn, id, len);
    atun_quic_stream_shutdown(conn, id, ATUN_APP_MALFORMED_FRAME);
  }
  return 0;
}

static int cb_stream_acked(atun_quic_conn *conn, int64_t id, size_t n, void *ud, void *sud) {
  (void)conn, (void)n, (void)sud;
  sim_agent *a = ud;
  sim_echo *e = echo_find(a, id);
  if (e != NULL) echo_flush(a, e);
  return 0;
}

static int cb_stream_reset(atun_quic_conn *conn, int64_t id, uint64_t err, void *ud,
                           void *sud) {
  (void)err, (void)sud;
  sim_agent *a = ud;
  if (id == a->ctrl)
    return atun_session_agent_on_stream_closed(a->session, ats(a)) == 0 ? 0 : -1;
  atun_quic_stream_shutdown(conn, id, ATUN_APP_TARGET_RESET);
  return 0;
}

static int cb_stream_closed(atun_quic_conn *conn, int64_t id, int has_err, uint64_t err,
                            void *ud, void *sud) {
  (void)conn, (void)has_err, (void)err, (void)sud;
  sim_agent *a = ud;
  sim_echo *e = echo_find(a, id);
  if (e != NULL) echo_free(a, e);
  return 0;
}

static void cb_connection_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                                 void *ud) {
  (void)conn;
  sim_agent *a = ud;
  sim_log(a->w, "agent %u: connection closed source=%d code=%llu hs=%s", a->node,
          info->source, (unsigned long long)info->error_code,
          atun_quic_hs_failure_name(info->hs_failure));
}

static const atun_quic_callbacks agent_callbacks = {
    .handshake_completed = cb_handshake_completed,
    .stream_open = cb_stream_open,
    .stream_data = cb_stream_data,
    .stream_reset = cb_stream_reset,
    .stream_acked = cb_stream_acked,
    .stream_closed = cb_stream_closed,
    .connection_closed = cb_connection_closed,
};

/* --- connection lifetime ---------------------------------------------------- */

static void drop_conn(sim_agent *a) {
  if (a->conn == NULL) return;
  echo_free_all(a);
  atun_quic_conn_del(a->conn);
  a->conn = NULL;
  a->ctrl = -1;
  a->close_sent = 0;
  a->told = 0;
}

static int dial(sim_agent *a) {
  drop_conn(a);
  /* A new UDP socket per attempt: a fresh source port. */
  a->port = a->port >= 59999 ? 10000 : (uint16_t)(a->port + 1);
  atun_quic_path path = {0};
  path.local.addr.family = ATUN_AF_INET;
  memcpy(path.local.addr.bytes, &a->node, 4);
  path.local.port = a->port;
  path.remote.addr.family = ATUN_AF_INET;
  path.remote.port = SIM_QUIC_PORT;
  atun_quic_conn_config cfg = {.tls = a->tls, .settings = &a->w->qs,
                               .callbacks = &agent_callbacks, .user_data = a,
                               .mem = a->w->mem, .rand = a->w->rand};
  return atun_quic_conn_client_new(&a->conn, &cfg, &path, ats(a));
}

static int on_session_event(atun_session_agent *s, const atun_session_agent_event *ev,
                            void *ud) {
  (void)s;
  sim_agent *a = ud;
  switch (ev->type) {
  case ATUN_SESSION_AGENT_EV_CONNECT_NOW:
    if (dial(a) != 0) sim_fatal(a->w, "agent dial", -1);
    break;
  case ATUN_SESSION_AGENT_EV_ESTABLISHED:
    ++a->established;
    if (a->established > 1) ++a->w->r->reconnects;
    break;
  case ATUN_SESSION_AGENT_EV_ERROR:
    sim_log(a->w, "agent %u: session error %s (%s)", a->node,
            atun_app_error_name(ev->u.error.app_error), ev->u.error.message);
    break;
  default:
    break;
  }
  return 0;
}

static void set_routes(sim_agent *a) {
  atun_prefix subnets[8];
  atun_domain domains[4];
  size_t ns = 8, nd = 4;
  sim_routes_for(a->w, a->node, a->route_version, subnets, &ns, domains, &nd);
  int rv = atun_session_agent_set_routes(a->session, ats(a), subnets, ns, domains, nd);
  if (rv != 0) sim_fatal(a->w, "set_routes", rv);
}

int sim_agent_init(sim_world *w, sim_agent *a, uint32_t node) {
  memset(a, 0, sizeof(*a));
  a->w = w;
  a->node = node;
  a->ctrl = -1;
  a->port = 9999;
  a->timer_at = ATUN_TSTAMP_MAX;
  /* Agent ids carry the node number so a registry entry maps back. */
  atun_testrng_as_rand(&w->keyrng).fill(a->id, sizeof(a->id), &w->keyrng);
  memcpy(a->id + 12, &node, 4);
  a->id[6] = (uint8_t)((a->id[6] & 0x0f) | 0x40);
  a->id[8] = (uint8_t)((a->id[8] & 0x3f) | 0x80);
  static const char hex[] = "0123456789abcdef";
  char *p = a->id_str;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
    *p++ = hex[a->id[i] >> 4];
    *p++ = hex[a->id[i] & 15];
  }
  *p = '\0';
  snprintf(a->name, sizeof(a->name), "agent-%u", node);
  if (w->o.faults.skew_max_ns)
    a->skew = atun_testrng_below(&w->rng, w->o.faults.skew_max_ns + 1);
  int rv = sim_certs_make_leaf(&a->cred, &w->ca, 0, a->name, a->id_str, &w->keyrng);
  if (rv != 0) return rv;
  atun_quic_tls_config tc = {.ca = w->ca.der, .ca_len = w->ca.der_len,
                             .cert = a->cred.der, .cert_len = a->cred.der_len,
                             .key = a->cred.key_der, .key_len = a->cred.key_len};
  return atun_quic_tls_new(&a->tls, ATUN_QUIC_CLIENT, &tc, w->mem);
}

int sim_agent_start(sim_agent *a) {
  atun_session_agent_settings st;
  atun_session_agent_settings_default(&st);
  snprintf(st.software_version, sizeof(st.software_version), "atun-sim agent");
  ++a->incarnation;
  a->crashed = 0;
  int rv = atun_session_agent_new(&a->session, &st, on_session_event, &a->w->rand,
                                  a->w->mem, a);
  if (rv != 0) return rv;
  set_routes(a);
  rv = atun_session_agent_start(a->session, ats(a));
  if (rv != 0) return rv;
  agent_service(a);
  return 0;
}

void sim_agent_crash(sim_agent *a) {
  drop_conn(a);
  atun_session_agent_del(a->session);
  a->session = NULL;
  a->crashed = 1;
  a->timer_at = ATUN_TSTAMP_MAX;
}

void sim_agent_free(sim_agent *a) {
  sim_agent_crash(a);
  atun_quic_tls_del(a->tls);
  a->tls = NULL;
}

int sim_agent_online(const sim_agent *a) {
  return a->session != NULL &&
         atun_session_agent_get_state(a->session) == ATUN_SESSION_AGENT_ESTABLISHED;
}

void sim_agent_change_routes(sim_agent *a) {
  if (a->route_version + 1 >= SIM_ROUTE_VERSIONS_MAX) return;
  ++a->route_version;
  ++a->w->r->route_changes;
  if (a->session == NULL) return;
  set_routes(a);
  agent_service(a);
}

/* --- driving -------------------------------------------------------------------- */

static void pump_control(sim_agent *a) {
  if (a->conn == NULL || a->ctrl < 0) return;
  uint8_t buf[16384];
  while (atun_session_agent_pending(a->session) > 0) {
    ssize_t room = atun_quic_stream_writable(a->conn, a->ctrl);
    if (room <= 0) return;
    size_t want = (size_t)room < sizeof(buf) ? (size_t)room : sizeof(buf);
    ssize_t n = atun_session_agent_write(a->session, buf, want);
    if (n <= 0) return;
    ssize_t took = atun_quic_stream_write(a->conn, a->ctrl, buf, (size_t)n, 0);
    ATUN_ASSERT(took == n);
    (void)took;
  }
}

static void flush_datagrams(sim_agent *a) {
  atun_quic_path path;
  for (int i = 0; i < 1024; ++i) {
    ssize_t n = atun_quic_conn_write(a->conn, &path, a->w->dgram + SIM_HDR_LEN,
                                     ATUN_QUIC_DATAGRAM_MAX, ats(a));
    if (n <= 0) return;
    sim_send(a->w, a->node, a->port, SIM_GW_NODE, SIM_QUIC_PORT, a->w->dgram + SIM_HDR_LEN,
             (size_t)n);
  }
  sim_violation(a->w, "agent %u: more than 1024 datagrams in one write burst", a->node);
}

static void arm_timer(sim_agent *a) {
  atun_tstamp exp = atun_session_agent_get_expiry(a->session);
  if (a->conn != NULL) {
    atun_tstamp q = atun_quic_conn_get_expiry(a->conn);
    if (q < exp) exp = q;
  }
  if (exp == ATUN_TSTAMP_MAX) return;
  /* Local expiry to global time. */
  atun_tstamp at = exp > a->skew ? exp - a->skew : 0;
  if (at < a->w->now) at = a->w->now;
  if (a->timer_at != ATUN_TSTAMP_MAX && a->timer_at <= at && a->timer_at >= a->w->now) return;
  a->timer_at = at;
  if (sim_evq_push(&a->w->q, at, EV_AGENT_TIMER, a->node,
                   (void *)(uintptr_t)a->incarnation) != 0)
    sim_fatal(a->w, "agent timer", ATUN_ERR_FULL);
}

/* Tells the session once that its connection is over (closed by either
 * side, timed out, or refused). */
static void tell_failed(sim_agent *a) {
  if (a->told) return;
  a->told = 1;
  int rv = atun_session_agent_on_transport_failed(a->session, ats(a));
  if (rv != 0) sim_fatal(a->w, "agent transport failed", rv);
}

static void agent_service(sim_agent *a) {
  if (a->session == NULL) return;
  for (int round = 0; round < 4; ++round) {
    pump_control(a);
    uint64_t app_error;
    if (a->conn != NULL && !a->close_sent &&
        atun_session_agent_want_close(a->session, &app_error)) {
      atun_quic_conn_close(a->conn, app_error, "agent closing");
      a->close_sent = 1;
    }
    for (int i = 0; a->conn != NULL && i < SIM_ECHO_STREAMS_MAX; ++i)
      if (a->echo[i].used) echo_flush(a, &a->echo[i]);
    if (a->conn != NULL) flush_datagrams(a);
    if (a->conn != NULL && !a->told &&
        atun_quic_conn_get_state(a->conn) >= ATUN_QUIC_STATE_CLOSING) {
      tell_failed(a);
      continue; /* the session may have queued or asked for more */
    }
    break;
  }
  if (a->conn != NULL && atun_quic_conn_is_done(a->conn)) {
    tell_failed(a);
    drop_conn(a);
  }
  arm_timer(a);
}

void sim_agent_on_datagram(sim_agent *a, uint16_t sport, uint16_t dport,
                           const uint8_t *data, size_t len) {
  if (a->crashed) return;
  if (sport == SIM_API_PORT) {
    if (len >= 1 && data[0] == 0xE6) a->enroll_done = 1;
    return;
  }
  if (a->conn == NULL || dport != a->port) return;
  atun_quic_path path = {0};
  path.local.addr.family = ATUN_AF_INET;
  memcpy(path.local.addr.bytes, &a->node, 4);
  path.local.port = a->port;
  path.remote.addr.family = ATUN_AF_INET;
  path.remote.port = SIM_QUIC_PORT;
  atun_quic_conn_read(a->conn, &path, data, len, ats(a));
  agent_service(a);
}

void sim_agent_on_timer(sim_agent *a) {
  if (a->session == NULL) return;
  if (a->spin_at == a->w->now) {
    if (++a->spin > SIM_SPIN_MAX) {
      sim_violation(a->w, "agent %u: timer livelock at %llu ns", a->node,
                    (unsigned long long)a->w->now);
      return;
    }
  } else {
    a->spin_at = a->w->now;
    a->spin = 0;
  }
  a->timer_at = ATUN_TSTAMP_MAX;
  atun_tstamp ts = ats(a);
  if (a->conn != NULL && atun_quic_conn_get_expiry(a->conn) <= ts)
    atun_quic_conn_handle_expiry(a->conn, ts);
  if (atun_session_agent_get_expiry(a->session) <= ts) {
    int rv = atun_session_agent_handle_expiry(a->session, ts);
    if (rv != 0) sim_fatal(a->w, "agent expiry", rv);
  }
  agent_service(a);
}

void sim_agent_enroll_send(sim_agent *a) {
  if (a->crashed || a->enroll_done || a->token[0] == '\0') return;
  if (a->enroll_tries >= SIM_ENROLL_TRIES_MAX) return;
  ++a->enroll_tries;
  uint8_t msg[1 + ATUN_TOKEN_SECRET_LEN];
  msg[0] = 0xE5;
  memcpy(msg + 1, a->token, ATUN_TOKEN_SECRET_LEN);
  sim_send(a->w, a->node, 20000, SIM_GW_NODE, SIM_API_PORT, msg, sizeof(msg));
}
