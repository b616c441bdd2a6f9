#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"

void atun_gw_text_init(atun_gw_text *t, size_t max) {
  memset(t, 0, sizeof(*t));
  t->max = max;
}

void atun_gw_text_free(atun_gw_text *t) {
  free(t->buf);
  memset(t, 0, sizeof(*t));
}

static int text_reserve(atun_gw_text *t, size_t need) {
  if (need <= t->cap) return 0;
  if (need > t->max) return -1;
  size_t cap = t->cap < 1024 ? 1024 : t->cap;
  while (cap < need) cap = cap > t->max / 2 ? t->max : cap * 2;
  char *p = realloc(t->buf, cap);
  if (p == NULL) return -1;
  t->buf = p;
  t->cap = cap;
  return 0;
}

void atun_gw_text_printf(atun_gw_text *t, const char *fmt, ...) {
  if (t->failed) return;
  va_list ap;
  va_start(ap, fmt);
  char small[256];
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  if (n < 0 || text_reserve(t, t->len + (size_t)n + 1) != 0) {
    t->failed = 1;
    return;
  }
  if ((size_t)n < sizeof(small)) {
    memcpy(t->buf + t->len, small, (size_t)n + 1);
  } else {
    va_start(ap, fmt);
    vsnprintf(t->buf + t->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  t->len += (size_t)n;
}

const char *atun_gw_enroll_result_name(int result) {
  static const char *const names[ATUN_GW_ENROLL_RESULTS] = {
      "ok", "bad_request", "bad_token", "conflict", "rate_limited", "error"};
  return result >= 0 && result < ATUN_GW_ENROLL_RESULTS ? names[result] : "unknown";
}

static void header(atun_gw_text *t, const char *name, const char *type, const char *help) {
  atun_gw_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Counts of stored agents by status: revoked from the store, online from
 * the registry, offline the rest.  Pages through the store so the memory
 * used does not grow with the number of agents. */
#define AGENT_PAGE 256

static int count_agents(atun_gw *gw, atun_tstamp mono, uint64_t counts[4]) {
  static atun_agent_record page[AGENT_PAGE];
  size_t offset = 0;
  for (;;) {
    ssize_t n = atun_store_agent_list(gw->store, page, AGENT_PAGE, offset);
    if (n < 0) return (int)n;
    for (ssize_t i = 0; i < n; ++i) {
      uint8_t id[16];
      atun_registry_agent_info info;
      int status = ATUN_AGENT_OFFLINE;
      if (page[i].revoked_at != ATUN_TSTAMP_MAX)
        status = ATUN_AGENT_REVOKED;
      else if (atun_gw_uuid_parse(id, page[i].id, strlen(page[i].id)) == 0 &&
               atun_registry_get(gw->reg, id, mono, &info) == 0)
        status = info.status;
      ++counts[status & 3];
    }
    if ((size_t)n < AGENT_PAGE) return 0;
    offset += (size_t)n;
  }
}

static void render_agents(atun_gw *gw, atun_gw_text *t, const uint64_t counts[4],
                          atun_tstamp mono) {
  header(t, "atun_gateway_agents", "gauge", "Enrolled agents by status.");
  for (int s = ATUN_AGENT_ONLINE; s <= ATUN_AGENT_REVOKED; ++s)
    atun_gw_text_printf(t, "atun_gateway_agents{status=\"%s\"} %llu\n",
                        atun_agent_status_name(s), (unsigned long long)counts[s]);
  uint64_t streams = 0;
  uint32_t cursor = 0;
  atun_registry_agent_info info;
  while (atun_registry_next(gw->reg, &cursor, mono, &info) == 0) streams += info.active_streams;
  header(t, "atun_gateway_active_streams", "gauge",
         "Streams the agents report open (last heartbeat).");
  atun_gw_text_printf(t, "atun_gateway_active_streams %llu\n", (unsigned long long)streams);
}

static void render_quic(atun_gw *gw, atun_gw_text *t) {
  const atun_gw_metrics *m = &gw->metrics;
  atun_quic_ev_stats st;
  memset(&st, 0, sizeof(st));
  if (gw->quic != NULL) atun_quic_ev_get_stats(gw->quic, &st);
  header(t, "atun_gateway_handshake_failures_total", "counter",
         "Agent connections refused or lost before admission, by reason.");
  for (int r = 0; r < ATUN_GW_HS_REASONS; ++r)
    atun_gw_text_printf(t, "atun_gateway_handshake_failures_total{reason=\"%s\"} %llu\n",
                        r == 0 ? "other" : atun_quic_hs_failure_name((atun_quic_hs_failure)r),
                        (unsigned long long)m->hs_failures[r]);
  header(t, "atun_gateway_quic_connections", "gauge", "QUIC connections open.");
  atun_gw_text_printf(t, "atun_gateway_quic_connections %zu\n", st.conns_open);
  header(t, "atun_gateway_agent_connections_total", "counter",
         "Agent connections admitted (certificate and revocation checks passed).");
  atun_gw_text_printf(t, "atun_gateway_agent_connections_total %llu\n",
                      (unsigned long long)m->connections_admitted);
  header(t, "atun_gateway_agent_connections_replaced_total", "counter",
         "Connections closed because a newer one of the same agent arrived.");
  atun_gw_text_printf(t, "atun_gateway_agent_connections_replaced_total %llu\n",
                      (unsigned long long)m->connections_replaced);
  header(t, "atun_gateway_quic_bytes_total", "counter", "UDP payload bytes of the QUIC listener.");
  atun_gw_text_printf(t, "atun_gateway_quic_bytes_total{direction=\"in\"} %llu\n",
                      (unsigned long long)st.udp.bytes_in);
  atun_gw_text_printf(t, "atun_gateway_quic_bytes_total{direction=\"out\"} %llu\n",
                      (unsigned long long)st.udp.bytes_out);
  header(t, "atun_gateway_quic_datagrams_dropped_total", "counter",
         "Datagrams dropped: unknown connection id, undecodable, send queue full.");
  atun_gw_text_printf(t, "atun_gateway_quic_datagrams_dropped_total %llu\n",
                      (unsigned long long)(st.unknown_cid + st.undecodable + st.udp.send_dropped +
                                           st.udp.recv_truncated));
}

static void render_dataplane(atun_gw *gw, atun_gw_text *t) {
  const atun_gw_dp_counters *d = &gw->dp_counts;
  header(t, "atun_gateway_client_connects_total", "counter",
         "Client connections by outcome of the connect through an agent.");
  for (int r = 0; r < ATUN_GW_CONNECT_RESULTS; ++r)
    atun_gw_text_printf(t, "atun_gateway_client_connects_total{result=\"%s\"} %llu\n",
                        r == ATUN_GW_CONNECT_NO_AGENT ? "no_agent"
                                                      : atun_connect_status_name((uint64_t)r),
                        (unsigned long long)d->connects[r]);
  header(t, "atun_gateway_client_handshake_failures_total", "counter",
         "SOCKS5 clients closed before a complete request.");
  atun_gw_text_printf(t, "atun_gateway_client_handshake_failures_total %llu\n",
                      (unsigned long long)d->handshake_failures);
  header(t, "atun_gateway_tunnel_bytes_total", "counter",
         "Bytes through finished client connections.");
  atun_gw_text_printf(t, "atun_gateway_tunnel_bytes_total{direction=\"up\"} %llu\n",
                      (unsigned long long)d->bytes_up);
  atun_gw_text_printf(t, "atun_gateway_tunnel_bytes_total{direction=\"down\"} %llu\n",
                      (unsigned long long)d->bytes_down);
  header(t, "atun_gateway_client_connections", "gauge", "Client connections open.");
  atun_gw_text_printf(t, "atun_gateway_client_connections %zu\n", d->clients);
}

static void render_api(atun_gw *gw, atun_gw_text *t) {
  const atun_gw_metrics *m = &gw->metrics;
  header(t, "atun_gateway_api_requests_total", "counter", "API responses by HTTP status.");
  for (int code = 100; code <= 599; ++code) {
    uint64_t n = gw->router != NULL ? atun_http_router_status_count(gw->router, code) : 0;
    if (n > 0)
      atun_gw_text_printf(t, "atun_gateway_api_requests_total{code=\"%d\"} %llu\n", code,
                          (unsigned long long)n);
  }
  header(t, "atun_gateway_enrollments_total", "counter", "Enrollment requests by result.");
  for (int r = 0; r < ATUN_GW_ENROLL_RESULTS; ++r)
    atun_gw_text_printf(t, "atun_gateway_enrollments_total{result=\"%s\"} %llu\n",
                        atun_gw_enroll_result_name(r), (unsigned long long)m->enrollments[r]);
  static const char *const renew[ATUN_GW_RENEW_RESULTS] = {"ok", "refused", "error"};
  header(t, "atun_gateway_agent_cert_renewals_total", "counter",
         "Agent certificate renewals over the control stream, by result.");
  for (int r = 0; r < ATUN_GW_RENEW_RESULTS; ++r)
    atun_gw_text_printf(t, "atun_gateway_agent_cert_renewals_total{result=\"%s\"} %llu\n",
                        renew[r], (unsigned long long)m->agent_renewals[r]);
  header(t, "atun_gateway_server_cert_renewals_total", "counter",
         "Server certificate renewals (same key).");
  atun_gw_text_printf(t, "atun_gateway_server_cert_renewals_total %llu\n",
                      (unsigned long long)m->server_renewals);
  header(t, "atun_gateway_revocations_total", "counter", "Agents revoked through the API.");
  atun_gw_text_printf(t, "atun_gateway_revocations_total %llu\n",
                      (unsigned long long)m->revocations);
  header(t, "atun_gateway_enrollment_tokens_issued_total", "counter",
         "Enrollment tokens issued through the API.");
  atun_gw_text_printf(t, "atun_gateway_enrollment_tokens_issued_total %llu\n",
                      (unsigned long long)m->tokens_issued);
}

int atun_gw_metrics_render(atun_gw *gw, atun_gw_text *out, atun_tstamp mono) {
  uint64_t counts[4] = {0, 0, 0, 0};
  int rv = count_agents(gw, mono, counts);
  if (rv != 0) return rv;
  render_agents(gw, out, counts, mono);
  render_quic(gw, out);
  render_api(gw, out);
  render_dataplane(gw, out);
  return 0;
}
