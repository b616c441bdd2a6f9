/*
 * The simulated gateway: a QUIC server connection and a gateway session
 * machine per agent connection, the registry fed from the session events,
 * the durable part (revocations, enrollment tokens) kept across crashes,
 * and a client that pushes transfers through agents and checks every byte.
 */
#include <stdio.h>
#include <string.h>

#include "world_int.h"

static void conn_service(sim_world *w, sim_gw_conn *c);

static atun_tstamp gts(const sim_world *w) { return sim_node_ts(w, SIM_GW_NODE); }

static uint32_t node_of_id(const uint8_t *id) {
  uint32_t node;
  memcpy(&node, id + 12, 4);
  return node;
}

static sim_gw_conn *slot_conn(sim_world *w, uint32_t slot) { return &w->gw.conns[slot]; }

static uint32_t slot_of(sim_world *w, const sim_gw_conn *c) {
  return (uint32_t)(c - w->gw.conns);
}

/* --- registry glue --------------------------------------------------------- */

static void conn_unregister(sim_world *w, sim_gw_conn *c) {
  if (c->generation == 0 || w->gw.reg == NULL) return;
  int rv = atun_registry_disconnect(w->gw.reg, c->id, c->generation);
  if (rv != 0 && rv != ATUN_ERR_STALE && rv != ATUN_ERR_NOT_FOUND)
    sim_violation(w, "registry disconnect: %s", atun_strerror(rv));
  c->generation = 0;
}

/* A newer connection of the same agent replaces the older ones. */
static void close_older(sim_world *w, sim_gw_conn *c) {
  uint32_t base = (c->agent - 1) * SIM_CONNS_PER_AGENT;
  for (uint32_t i = 0; i < SIM_CONNS_PER_AGENT; ++i) {
    sim_gw_conn *o = slot_conn(w, base + i);
    if (o == c || !o->used || o->session == NULL) continue;
    if (atun_session_gw_get_state(o->session) == ATUN_SESSION_GW_CLOSED) continue;
    atun_session_gw_close(o->session, gts(w), ATUN_APP_REPLACED, "replaced");
  }
}

static void on_established(sim_world *w, sim_gw_conn *c) {
  if (w->gw.revoked[c->agent])
    sim_violation(w, "revoked agent %u established a session", c->agent);
  uint64_t gen;
  char name[32];
  snprintf(name, sizeof(name), "agent-%u", c->agent);
  int rv = atun_registry_connect(w->gw.reg, c->id, name, gts(w), &gen);
  if (rv != 0) {
    atun_session_gw_close(c->session, gts(w), ATUN_APP_INTERNAL, "registry refused");
    return;
  }
  c->generation = gen;
  close_older(w, c);
  ++w->r->handshakes;
  uint64_t sec = w->now / ATUN_NS_PER_S;
  if (sec != w->hs_second) {
    w->hs_second = sec;
    w->hs_in_second = 0;
  }
  if (++w->hs_in_second > w->r->handshake_peak_per_s) w->r->handshake_peak_per_s = w->hs_in_second;
  if (w->gw.incarnation > 1 && w->hs_in_second > w->r->handshake_peak_restart_per_s)
    w->r->handshake_peak_restart_per_s = w->hs_in_second;
}

static void on_advertise(sim_world *w, sim_gw_conn *c, const atun_route_advertise *ad) {
  atun_route_domain doms[8];
  if (ad->domain_count > 8) {
    sim_violation(w, "agent %u advertised %zu domains", c->agent, ad->domain_count);
    return;
  }
  for (size_t i = 0; i < ad->domain_count; ++i) {
    memcpy(doms[i].name, ad->domains[i].name, sizeof(doms[i].name));
    doms[i].auto_detected = ad->domains[i].auto_detected;
  }
  int rv = atun_registry_advertise(w->gw.reg, c->id, c->generation, ad->epoch, ad->subnets,
                                   ad->subnet_count, doms, ad->domain_count, gts(w), NULL);
  if (rv != 0 && rv != ATUN_ERR_STALE)
    sim_violation(w, "advertise of agent %u: %s", c->agent, atun_strerror(rv));
}

static int on_session_event(atun_session_gw *s, const atun_session_gw_event *ev, void *ud) {
  (void)s;
  sim_gw_conn *c = ud;
  sim_world *w = c->w;
  switch (ev->type) {
  case ATUN_SESSION_GW_EV_ESTABLISHED:
    on_established(w, c);
    break;
  case ATUN_SESSION_GW_EV_ADVERTISE:
    on_advertise(w, c, ev->u.advertise);
    break;
  case ATUN_SESSION_GW_EV_HEARTBEAT:
    if (c->generation != 0) {
      uint64_t rtt = ev->u.heartbeat.rtt_ns ? ev->u.heartbeat.rtt_ns : UINT64_MAX;
      int rv = atun_registry_heartbeat(w->gw.reg, c->id, c->generation, gts(w), rtt);
      if (rv < 0 && rv != ATUN_ERR_STALE)
        sim_violation(w, "heartbeat of agent %u: %s", c->agent, atun_strerror(rv));
    }
    break;
  case ATUN_SESSION_GW_EV_GOODBYE:
  case ATUN_SESSION_GW_EV_ERROR:
    conn_unregister(w, c);
    break;
  default:
    break;
  }
  return 0;
}

/* --- transfers: the gateway's client side ----------------------------------- */

/* The transfer a stream belongs to.  A transfer slot is reused once its
 * transfer ended, so the stream id and connection must match too. */
static sim_transfer *transfer_of(sim_world *w, sim_gw_conn *c, int64_t stream, void *sud) {
  sim_transfer *t = sud;
  if (t == NULL || t < w->transfers || t >= w->transfers + SIM_TRANSFERS_MAX) return NULL;
  if (!t->used) return NULL;
  if (t->stream != stream || t->slot != slot_of(w, c) || t->slot_gen != c->gen) {
    sim_violation(w, "stream %lld carries the user data of transfer %llu (stream %lld)",
                  (long long)stream, (unsigned long long)t->id, (long long)t->stream);
    return NULL;
  }
  return t;
}

static void transfer_end(sim_world *w, sim_transfer *t, int ok, const char *why) {
  if (ok) {
    ++w->r->transfers_ok;
  } else {
    ++w->r->transfers_failed;
    sim_log(w, "transfer %llu via agent %u failed: %s (%u/%u verified)",
            (unsigned long long)t->id, t->agent, why, t->verified, t->total);
    if (t->liveness && w->liveness)
      sim_violation(w, "transfer %llu failed after healing: %s", (unsigned long long)t->id, why);
  }
  /* The slot is reused by later transfers: the stream, if it lives on, must
   * not point at it any more. */
  sim_gw_conn *c = t->slot < w->gw.nslots ? slot_conn(w, t->slot) : NULL;
  if (c != NULL && c->used && c->gen == t->slot_gen && c->conn != NULL &&
      atun_quic_stream_set_user_data(c->conn, t->stream, NULL) == 0 && !ok)
    atun_quic_stream_shutdown(c->conn, t->stream, ATUN_APP_CONNECT_FAILED);
  atun_frame_reader_free(&t->reader);
  memset(t, 0, sizeof(*t));
}

/* Checks received bytes against what was sent, in order, each exactly once. */
static int transfer_verify(sim_world *w, sim_transfer *t, const uint8_t *data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (t->verified >= t->sent || data[i] != sim_transfer_byte(t->id, t->verified)) {
      sim_violation(w, "transfer %llu: byte %u differs or was never sent",
                    (unsigned long long)t->id, t->verified);
      return -1;
    }
    ++t->verified;
  }
  w->r->bytes_verified += len;
  return 0;
}

static int transfer_data(sim_world *w, sim_gw_conn *c, sim_transfer *t, const uint8_t *data,
                         size_t len, int fin) {
  atun_quic_stream_consume(c->conn, t->stream, len);
  if (!t->response_ok) {
    ssize_t n = atun_frame_reader_feed(&t->reader, data, len);
    if (n < 0) return (int)n;
    data += n;
    len -= (size_t)n;
    if (!atun_frame_reader_ready(&t->reader)) return fin ? ATUN_ERR_TRUNCATED : 0;
    atun_msg m;
    int rv = atun_frame_reader_decode(&t->reader, &m, w->mem);
    if (rv != 0) return rv;
    int ok = m.type == ATUN_FRAME_CONNECT_RESPONSE && m.u.connect_response.status == 0;
    atun_msg_free(&m, w->mem);
    if (!ok) return ATUN_ERR_DENIED;
    t->response_ok = 1;
  }
  if (transfer_verify(w, t, data, len) != 0) return ATUN_ERR_PROTO;
  if (!fin) return 0;
  /* A FIN before every byte came back would be a silent truncation. */
  if (t->verified != t->total) {
    sim_violation(w, "transfer %llu truncated: FIN after %u of %u bytes",
                  (unsigned long long)t->id, t->verified, t->total);
    return ATUN_ERR_PROTO;
  }
  transfer_end(w, t, 1, "ok");
  return 0;
}

static void transfer_push(sim_world *w, sim_gw_conn *c, sim_transfer *t) {
  while (t->hdr_sent < t->hdr_len) {
    ssize_t n = atun_quic_stream_write(c->conn, t->stream, t->hdr + t->hdr_sent,
                                       t->hdr_len - t->hdr_sent, 0);
    if (n <= 0) return;
    t->hdr_sent += (size_t)n;
  }
  uint8_t buf[4096];
  while (t->sent < t->total) {
    size_t n = t->total - t->sent < sizeof(buf) ? t->total - t->sent : sizeof(buf);
    for (size_t i = 0; i < n; ++i) buf[i] = sim_transfer_byte(t->id, t->sent + (uint32_t)i);
    ssize_t took = atun_quic_stream_write(c->conn, t->stream, buf, n, 0);
    if (took <= 0) return;
    t->sent += (uint32_t)took;
  }
  if (!t->fin_sent && atun_quic_stream_write(c->conn, t->stream, NULL, 0, 1) == 0)
    t->fin_sent = 1;
}

static void transfers_push(sim_world *w, sim_gw_conn *c) {
  uint32_t slot = slot_of(w, c);
  for (int i = 0; i < SIM_TRANSFERS_MAX; ++i) {
    sim_transfer *t = &w->transfers[i];
    if (t->used && t->slot == slot && t->slot_gen == c->gen) transfer_push(w, c, t);
  }
}

static void transfers_fail_conn(sim_world *w, sim_gw_conn *c, const char *why) {
  uint32_t slot = slot_of(w, c);
  for (int i = 0; i < SIM_TRANSFERS_MAX; ++i) {
    sim_transfer *t = &w->transfers[i];
    if (t->used && t->slot == slot && t->slot_gen == c->gen) transfer_end(w, t, 0, why);
  }
}

/* --- QUIC callbacks ----------------------------------------------------------- */

static int cb_peer_verify(atun_quic_conn *conn, const atun_quic_peer *peer, void *ud) {
  (void)conn;
  sim_gw_conn *c = ud;
  sim_world *w = c->w;
  uint8_t id[16];
  /* The agent id is the UUID text of the URI SAN. */
  size_t k = 0;
  for (const char *p = peer->agent_id; *p && k < 32; ++p) {
    if (*p == '-') continue;
    uint8_t v = (uint8_t)(*p <= '9' ? *p - '0' : *p - 'a' + 10);
    if (k % 2 == 0) id[k / 2] = (uint8_t)(v << 4); else id[k / 2] |= v;
    ++k;
  }
  if (k != 32) return ATUN_ERR_INVALID_ARGUMENT;
  uint32_t node = node_of_id(id);
  if (node == 0 || node > w->o.agents || node != c->agent) return ATUN_ERR_INVALID_ARGUMENT;
  if (w->gw.revoked[node]) {
    ++w->r->revoked_refused;
    return ATUN_ERR_REVOKED;
  }
  memcpy(c->id, id, 16);
  c->has_id = 1;
  return 0;
}

static int cb_stream_open(atun_quic_conn *conn, int64_t id, void *ud) {
  sim_gw_conn *c = ud;
  if (c->ctrl >= 0) {
    /* Agents open only the control stream. */
    atun_quic_stream_shutdown(conn, id, ATUN_APP_PROTOCOL_VIOLATION);
    return 0;
  }
  c->ctrl = id;
  atun_session_gw_settings st;
  atun_session_gw_settings_default(&st);
  st.heartbeat_interval_ns = c->w->o.heartbeat_ns;
  st.offline_timeout_ns = 3 * c->w->o.heartbeat_ns;
  st.has_agent_id = 1;
  memcpy(st.agent_id, c->id, 16);
  int rv = atun_session_gw_new(&c->session, &st, on_session_event, c->w->mem, c);
  if (rv != 0) return -1;
  return atun_session_gw_on_transport_connected(c->session, gts(c->w)) == 0 ? 0 : -1;
}

static int cb_stream_data(atun_quic_conn *conn, int64_t id, const uint8_t *data, size_t len,
                          int fin, void *ud, void *sud) {
  sim_gw_conn *c = ud;
  sim_world *w = c->w;
  if (id == c->ctrl && c->session != NULL) {
    atun_quic_stream_consume(conn, id, len);
    int rv = len ? atun_session_gw_on_data(c->session, gts(w), data, len) : 0;
    if (rv == 0 && fin) rv = atun_session_gw_on_stream_closed(c->session, gts(w));
    return rv == 0 ? 0 : -1;
  }
  sim_transfer *t = transfer_of(w, c, id, sud);
  if (t == NULL) {
    atun_quic_stream_consume(conn, id, len);
    return 0;
  }
  int rv = transfer_data(w, c, t, data, len, fin);
  if (rv != 0 && t->used) transfer_end(w, t, 0, atun_strerror(rv));
  return 0;
}

static int cb_stream_reset(atun_quic_conn *conn, int64_t id, uint64_t err, void *ud,
                           void *sud) {
  (void)conn, (void)err;
  sim_gw_conn *c = ud;
  if (id == c->ctrl && c->session != NULL)
    return atun_session_gw_on_stream_closed(c->session, gts(c->w)) == 0 ? 0 : -1;
  sim_transfer *t = transfer_of(c->w, c, id, sud);
  if (t != NULL) transfer_end(c->w, t, 0, "stream reset by the agent");
  return 0;
}

static int cb_stream_acked(atun_quic_conn *conn, int64_t id, size_t n, void *ud, void *sud) {
  (void)conn, (void)id, (void)n;
  sim_gw_conn *c = ud;
  sim_transfer *t = transfer_of(c->w, c, id, sud);
  if (t != NULL) transfer_push(c->w, c, t);
  return 0;
}

static int cb_stream_closed(atun_quic_conn *conn, int64_t id, int has_err, uint64_t err,
                            void *ud, void *sud) {
  (void)conn, (void)id, (void)has_err, (void)err;
  sim_gw_conn *c = ud;
  sim_transfer *t = transfer_of(c->w, c, id, sud);
  if (t != NULL) transfer_end(c->w, t, 0, "stream closed early");
  return 0;
}

static void cb_connection_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                                 void *ud) {
  (void)conn;
  sim_gw_conn *c = ud;
  sim_log(c->w, "gateway: connection of agent %u closed source=%d code=%llu hs=%s", c->agent,
          info->source, (unsigned long long)info->error_code,
          atun_quic_hs_failure_name(info->hs_failure));
}

static const atun_quic_callbacks gw_callbacks = {
    .peer_verify = cb_peer_verify,
    .stream_open = cb_stream_open,
    .stream_data = cb_stream_data,
    .stream_reset = cb_stream_reset,
    .stream_acked = cb_stream_acked,
    .stream_closed = cb_stream_closed,
    .connection_closed = cb_connection_closed,
};

/* --- connection slots -------------------------------------------------------- */

static void conn_free(sim_world *w, sim_gw_conn *c) {
  transfers_fail_conn(w, c, "connection gone");
  conn_unregister(w, c);
  atun_session_gw_del(c->session);
  atun_quic_conn_del(c->conn);
  uint32_t gen = c->gen;
  memset(c, 0, sizeof(*c));
  c->w = w;
  c->gen = gen + 1;
  c->ctrl = -1;
  c->timer_at = ATUN_TSTAMP_MAX;
}

static sim_gw_conn *conn_find(sim_world *w, uint32_t agent, uint16_t port) {
  uint32_t base = (agent - 1) * SIM_CONNS_PER_AGENT;
  for (uint32_t i = 0; i < SIM_CONNS_PER_AGENT; ++i) {
    sim_gw_conn *c = slot_conn(w, base + i);
    if (c->used && c->port == port) return c;
  }
  return NULL;
}

static sim_gw_conn *conn_alloc(sim_world *w, uint32_t agent) {
  uint32_t base = (agent - 1) * SIM_CONNS_PER_AGENT;
  for (uint32_t i = 0; i < SIM_CONNS_PER_AGENT; ++i) {
    sim_gw_conn *c = slot_conn(w, base + i);
    if (!c->used) return c;
  }
  return NULL;
}

static atun_quic_path path_for(uint32_t agent, uint16_t port) {
  atun_quic_path path = {0};
  path.local.addr.family = ATUN_AF_INET;
  path.local.port = SIM_QUIC_PORT;
  path.remote.addr.family = ATUN_AF_INET;
  memcpy(path.remote.addr.bytes, &agent, 4);
  path.remote.port = port;
  return path;
}

static void conn_accept(sim_world *w, uint32_t agent, uint16_t port, const uint8_t *data,
                        size_t len) {
  sim_gw_conn *c = conn_alloc(w, agent);
  if (c == NULL) return; /* the per-agent bound: like a full accept queue */
  c->used = 1;
  c->agent = agent;
  c->port = port;
  c->ctrl = -1;
  c->timer_at = ATUN_TSTAMP_MAX;
  atun_quic_path path = path_for(agent, port);
  atun_quic_conn_config cfg = {.tls = w->gw.tls, .settings = &w->qs,
                               .callbacks = &gw_callbacks, .user_data = c,
                               .mem = w->mem, .rand = w->rand};
  if (atun_quic_conn_server_accept(&c->conn, &cfg, &path, data, len, gts(w)) != 0) {
    c->conn = NULL;
    conn_free(w, c);
    return;
  }
  conn_service(w, c);
}

/* --- driving ---------------------------------------------------------------------- */

static void pump_control(sim_world *w, sim_gw_conn *c) {
  if (c->session == NULL || c->ctrl < 0) return;
  uint8_t buf[16384];
  while (atun_session_gw_pending(c->session) > 0) {
    ssize_t room = atun_quic_stream_writable(c->conn, c->ctrl);
    if (room <= 0) return;
    size_t want = (size_t)room < sizeof(buf) ? (size_t)room : sizeof(buf);
    ssize_t n = atun_session_gw_write(c->session, buf, want);
    if (n <= 0) return;
    ssize_t took = atun_quic_stream_write(c->conn, c->ctrl, buf, (size_t)n, 0);
    ATUN_ASSERT(took == n);
    (void)took;
  }
  (void)w;
}

static void flush_datagrams(sim_world *w, sim_gw_conn *c) {
  atun_quic_path path;
  for (int i = 0; i < 1024; ++i) {
    ssize_t n = atun_quic_conn_write(c->conn, &path, w->dgram + SIM_HDR_LEN,
                                     ATUN_QUIC_DATAGRAM_MAX, gts(w));
    if (n <= 0) return;
    sim_send(w, SIM_GW_NODE, SIM_QUIC_PORT, c->agent, c->port, w->dgram + SIM_HDR_LEN,
             (size_t)n);
  }
  sim_violation(w, "gateway: more than 1024 datagrams in one write burst");
}

static void arm_timer(sim_world *w, sim_gw_conn *c) {
  atun_tstamp exp = atun_quic_conn_get_expiry(c->conn);
  if (c->session != NULL) {
    atun_tstamp s = atun_session_gw_get_expiry(c->session);
    if (s < exp) exp = s;
  }
  if (exp == ATUN_TSTAMP_MAX) return;
  atun_tstamp at = exp > w->gw.skew ? exp - w->gw.skew : 0;
  if (at < w->now) at = w->now;
  if (c->timer_at != ATUN_TSTAMP_MAX && c->timer_at <= at && c->timer_at >= w->now) return;
  c->timer_at = at;
  uint64_t data = (uint64_t)slot_of(w, c) | ((uint64_t)c->gen << 32);
  if (sim_evq_push(&w->q, at, EV_CONN_TIMER, SIM_GW_NODE, (void *)(uintptr_t)data) != 0)
    sim_fatal(w, "conn timer", ATUN_ERR_FULL);
}

static void conn_service(sim_world *w, sim_gw_conn *c) {
  for (int round = 0; round < 4; ++round) {
    pump_control(w, c);
    uint64_t app_error;
    if (c->session != NULL && !c->close_sent &&
        atun_session_gw_want_close(c->session, &app_error)) {
      atun_quic_conn_close(c->conn, app_error, "gateway closing");
      c->close_sent = 1;
    }
    transfers_push(w, c);
    flush_datagrams(w, c);
    if (atun_quic_conn_get_state(c->conn) >= ATUN_QUIC_STATE_CLOSING && c->session != NULL &&
        atun_session_gw_get_state(c->session) != ATUN_SESSION_GW_CLOSED) {
      atun_session_gw_on_transport_failed(c->session, gts(w));
      conn_unregister(w, c);
      continue;
    }
    break;
  }
  if (atun_quic_conn_get_state(c->conn) >= ATUN_QUIC_STATE_CLOSING) {
    conn_unregister(w, c);
    transfers_fail_conn(w, c, "connection closing");
  }
  if (atun_quic_conn_is_done(c->conn)) {
    conn_free(w, c);
    return;
  }
  arm_timer(w, c);
}

void sim_gw_on_conn_timer(sim_world *w, uint32_t slot, uint32_t gen, atun_tstamp at) {
  if (!w->gw.up || slot >= w->gw.nslots) return;
  sim_gw_conn *c = slot_conn(w, slot);
  if (!c->used || c->gen != gen || c->timer_at != at) return;
  if (c->spin_at == w->now) {
    if (++c->spin > SIM_SPIN_MAX) {
      sim_violation(w, "gateway conn of agent %u: timer livelock", c->agent);
      return;
    }
  } else {
    c->spin_at = w->now;
    c->spin = 0;
  }
  c->timer_at = ATUN_TSTAMP_MAX;
  atun_tstamp ts = gts(w);
  if (atun_quic_conn_get_expiry(c->conn) <= ts) atun_quic_conn_handle_expiry(c->conn, ts);
  if (c->session != NULL && atun_session_gw_get_expiry(c->session) <= ts) {
    int rv = atun_session_gw_handle_expiry(c->session, ts);
    if (rv != 0) sim_fatal(w, "gateway session expiry", rv);
  }
  conn_service(w, c);
}

void sim_gw_defer_conn_timer(sim_world *w, uint64_t data, atun_tstamp at, atun_tstamp until) {
  uint32_t slot = (uint32_t)data;
  if (slot >= w->gw.nslots) return;
  sim_gw_conn *c = slot_conn(w, slot);
  if (c->used && c->gen == (uint32_t)(data >> 32) && c->timer_at == at) c->timer_at = until;
}

/* --- enrollment ----------------------------------------------------------------------- */

static void on_enroll(sim_world *w, uint32_t from, const uint8_t *data, size_t len) {
  if (len != 1 + ATUN_TOKEN_SECRET_LEN || data[0] != 0xE5) return;
  const atun_token_store *st = atun_token_memstore_store(w->gw.tokens);
  atun_token_record rec;
  int rv = atun_token_redeem(st, (const char *)data + 1, ATUN_TOKEN_SECRET_LEN, gts(w), &rec);
  if (rv == 0) {
    ++w->r->token_redeemed;
    /* Racers of an earlier race may still be retrying its token, so
     * acceptances are counted per token. */
    sim_token_seen *seen = NULL;
    for (int i = 0; i < SIM_TOKENS_SEEN_MAX && seen == NULL; ++i)
      if (strcmp(w->gw.seen[i].id, rec.id) == 0) seen = &w->gw.seen[i];
    if (seen == NULL) {
      seen = &w->gw.seen[w->gw.seen_next++ % SIM_TOKENS_SEEN_MAX];
      memcpy(seen->id, rec.id, sizeof(seen->id));
      seen->accepted = 0;
    }
    if (++seen->accepted > 1)
      sim_violation(w, "enrollment token %s was accepted %u times", rec.id, seen->accepted);
  } else {
    ++w->r->token_refused;
  }
  uint8_t reply[2] = {0xE6, (uint8_t)(rv == 0 ? 0 : 1)};
  sim_send(w, SIM_GW_NODE, SIM_API_PORT, from, 20000, reply, sizeof(reply));
}

int sim_gw_issue_token(sim_world *w, char *secret) {
  const atun_token_store *st = atun_token_memstore_store(w->gw.tokens);
  atun_tstamp ts = gts(w);
  atun_token_record rec;
  /* Keep the store bounded: expired tokens go first. */
  st->purge(ts, st->user_data);
  int rv = atun_token_issue(st, &w->rand, ts, 60 * ATUN_NS_PER_S, NULL, secret,
                            ATUN_TOKEN_SECRET_STRLEN, &rec);
  if (rv == 0) ++w->r->tokens_issued;
  return rv;
}

/* --- datagrams, lifetime, faults ---------------------------------------------------------- */

void sim_gw_on_datagram(sim_world *w, uint32_t from, uint16_t sport, uint16_t dport,
                        const uint8_t *data, size_t len) {
  if (!w->gw.up) return;
  if (dport == SIM_API_PORT) {
    on_enroll(w, from, data, len);
    return;
  }
  sim_gw_conn *c = conn_find(w, from, sport);
  if (c == NULL) {
    conn_accept(w, from, sport, data, len);
    return;
  }
  atun_quic_path path = path_for(from, sport);
  atun_quic_conn_read(c->conn, &path, data, len, gts(w));
  conn_service(w, c);
}

int sim_gw_init(sim_world *w) {
  sim_gw *g = &w->gw;
  g->nslots = (size_t)w->o.agents * SIM_CONNS_PER_AGENT;
  g->conns = atun_mem_calloc(w->mem, g->nslots ? g->nslots : 1, sizeof(sim_gw_conn));
  g->revoked = atun_mem_calloc(w->mem, (size_t)w->o.agents + 1, 1);
  if (g->conns == NULL || g->revoked == NULL) return ATUN_ERR_NOMEM;
  for (size_t i = 0; i < g->nslots; ++i) {
    g->conns[i].w = w;
    g->conns[i].ctrl = -1;
    g->conns[i].timer_at = ATUN_TSTAMP_MAX;
  }
  int rv = atun_token_memstore_new(&g->tokens, 64, w->mem);
  if (rv != 0) return rv;
  if (w->o.faults.skew_max_ns) g->skew = atun_testrng_below(&w->rng, w->o.faults.skew_max_ns + 1);
  rv = sim_certs_make_leaf(&g->cred, &w->ca, 1, "gateway.sim", NULL, &w->keyrng);
  if (rv != 0) return rv;
  atun_quic_tls_config tc = {.ca = w->ca.der, .ca_len = w->ca.der_len,
                             .cert = g->cred.der, .cert_len = g->cred.der_len,
                             .key = g->cred.key_der, .key_len = g->cred.key_len};
  return atun_quic_tls_new(&g->tls, ATUN_QUIC_SERVER, &tc, w->mem);
}

int sim_gw_start(sim_world *w) {
  atun_registry_settings rs;
  atun_registry_settings_default(&rs);
  rs.max_agents = w->o.agents + 1;
  rs.heartbeat_interval_ns = w->o.heartbeat_ns;
  int rv = atun_registry_new(&w->gw.reg, &rs, NULL, NULL, w->mem);
  if (rv != 0) return rv;
  /* Revocations are durable: the new registry learns them again. */
  for (uint32_t n = 1; n <= w->o.agents; ++n)
    if (w->gw.revoked[n]) atun_registry_revoke(w->gw.reg, w->agents[n].id);
  ++w->gw.incarnation;
  w->gw.up = 1;
  return 0;
}

void sim_gw_crash(sim_world *w) {
  for (size_t i = 0; i < w->gw.nslots; ++i)
    if (w->gw.conns[i].used) conn_free(w, &w->gw.conns[i]);
  atun_registry_del(w->gw.reg);
  w->gw.reg = NULL;
  w->gw.up = 0;
}

void sim_gw_free(sim_world *w) {
  if (w->gw.conns != NULL) sim_gw_crash(w);
  for (int i = 0; i < SIM_TRANSFERS_MAX; ++i)
    if (w->transfers[i].used) transfer_end(w, &w->transfers[i], 0, "teardown");
  atun_token_memstore_del(w->gw.tokens);
  atun_quic_tls_del(w->gw.tls);
  atun_mem_free(w->mem, w->gw.conns);
  atun_mem_free(w->mem, w->gw.revoked);
  memset(&w->gw, 0, sizeof(w->gw));
}

void sim_gw_revoke(sim_world *w, uint32_t node) {
  if (w->gw.revoked[node]) return;
  w->gw.revoked[node] = 1;
  w->agents[node].revoked = 1;
  ++w->r->revocations;
  if (!w->gw.up) return;
  atun_registry_revoke(w->gw.reg, w->agents[node].id);
  uint32_t base = (node - 1) * SIM_CONNS_PER_AGENT;
  for (uint32_t i = 0; i < SIM_CONNS_PER_AGENT; ++i) {
    sim_gw_conn *c = slot_conn(w, base + i);
    if (!c->used) continue;
    if (c->session != NULL && atun_session_gw_get_state(c->session) != ATUN_SESSION_GW_CLOSED)
      atun_session_gw_close(c->session, gts(w), ATUN_APP_REVOKED, "revoked");
    else if (!c->close_sent && atun_quic_conn_close(c->conn, ATUN_APP_REVOKED, "revoked") == 0)
      c->close_sent = 1;
    conn_service(w, c);
  }
}

/* Picks a target inside a random agent's subnet, routes it through the
 * registry like a SOCKS client's request, and opens a stream to the first
 * candidate. */
int sim_gw_start_transfer(sim_world *w, int liveness) {
  if (!w->gw.up || w->o.agents == 0) return ATUN_ERR_STATE;
  sim_transfer *t = NULL;
  for (int i = 0; i < SIM_TRANSFERS_MAX && t == NULL; ++i)
    if (!w->transfers[i].used) t = &w->transfers[i];
  if (t == NULL) return ATUN_ERR_FULL;
  uint32_t node = 1 + (uint32_t)atun_testrng_below(&w->rng, w->o.agents);
  atun_route_target target = {.kind = ATUN_ROUTE_TARGET_ADDR};
  target.addr.family = ATUN_AF_INET;
  target.addr.bytes[0] = 10;
  target.addr.bytes[1] = (uint8_t)(node >> 8);
  target.addr.bytes[2] = (uint8_t)node;
  target.addr.bytes[3] = 7;
  atun_route_candidate cand[4];
  ssize_t n = atun_registry_resolve(w->gw.reg, &target, NULL, gts(w), cand, 4);
  if (n <= 0) return ATUN_ERR_NOT_FOUND;
  /* The registry breaks ties by agent id and reports it in the health. */
  atun_registry_agent_info info;
  if (atun_registry_get(w->gw.reg, cand[0].health.tiebreak, gts(w), &info) != 0)
    return ATUN_ERR_INTERNAL;
  uint32_t agent = node_of_id(info.id);
  if (w->gw.revoked[agent]) sim_violation(w, "revoked agent %u was routed to", agent);
  sim_gw_conn *c = NULL;
  uint32_t base = (agent - 1) * SIM_CONNS_PER_AGENT;
  for (uint32_t i = 0; i < SIM_CONNS_PER_AGENT && c == NULL; ++i) {
    sim_gw_conn *x = slot_conn(w, base + i);
    if (x->used && x->generation != 0 && x->generation == info.generation) c = x;
  }
  if (c == NULL) return ATUN_ERR_NOT_FOUND;
  memset(t, 0, sizeof(*t));
  t->used = 1;
  t->id = ++w->next_transfer_id;
  t->agent = agent;
  t->slot = slot_of(w, c);
  t->slot_gen = c->gen;
  t->liveness = liveness;
  t->total = 1 + (uint32_t)atun_testrng_below(&w->rng, w->o.faults.transfer_bytes_max);
  atun_frame_reader_init(&t->reader, ATUN_SESSION_PAYLOAD_MAX, w->mem);
  atun_msg m = {.type = ATUN_FRAME_CONNECT_REQUEST};
  memcpy(m.u.connect_request.session_id, &t->id, sizeof(t->id));
  m.u.connect_request.target.kind = ATUN_TARGET_ADDR;
  m.u.connect_request.target.addr = target.addr;
  m.u.connect_request.port = 7;
  ssize_t hl = atun_frame_encode(t->hdr, sizeof(t->hdr), &m);
  int rv = hl < 0 ? (int)hl : atun_quic_stream_open(c->conn, &t->stream, t);
  if (rv != 0) {
    atun_frame_reader_free(&t->reader);
    memset(t, 0, sizeof(*t));
    return rv;
  }
  t->hdr_len = (size_t)hl;
  conn_service(w, c);
  return 0;
}

void sim_gw_handle_registry_expiry(sim_world *w) {
  if (!w->gw.up) return;
  atun_tstamp ts = gts(w);
  if (atun_registry_get_expiry(w->gw.reg) <= ts) atun_registry_handle_expiry(w->gw.reg, ts);
}
