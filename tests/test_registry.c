/*
 * Registry tests.  Time is driven by hand: every call takes |ts| and the
 * tests pick it.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "registry.h"
#include "support.h"

#define S ATUN_NS_PER_S
#define T0 (1000 * S)

static uint8_t ID[8][ATUN_REGISTRY_ID_LEN];

static void ids_init(void) {
  for (int i = 0; i < 8; ++i) {
    memset(ID[i], 0, sizeof(ID[i]));
    ID[i][0] = 0xa0;
    ID[i][15] = (uint8_t)i;
  }
}

static atun_registry *reg_new(const atun_registry_settings *s,
                              const atun_registry_callbacks *cb, void *ud,
                              const atun_mem *mem) {
  atun_registry *reg = NULL;
  cr_assert_eq(atun_registry_new(&reg, s, cb, ud, mem), 0);
  return reg;
}

static uint64_t conn(atun_registry *reg, int i, const char *name,
                     atun_tstamp ts) {
  uint64_t gen = 0;
  cr_assert_eq(atun_registry_connect(reg, ID[i], name, ts, &gen), 0);
  cr_assert_neq(gen, 0);
  return gen;
}

static atun_prefix P(const char *s) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, s), 0, "parse %s", s);
  return p;
}

static atun_route_domain D(const char *s) {
  atun_route_domain d;
  memset(&d, 0, sizeof(d));
  snprintf(d.name, sizeof(d.name), "%s", s);
  return d;
}

static int adv(atun_registry *reg, int i, uint64_t gen, uint64_t epoch,
               const char *prefix, atun_tstamp ts) {
  atun_prefix p = P(prefix);
  atun_advertise_outcome out = 0;
  int rv =
      atun_registry_advertise(reg, ID[i], gen, epoch, &p, 1, NULL, 0, ts, &out);
  return rv != 0 ? rv : (int)out;
}

static ssize_t resolve(const atun_registry *reg, const char *target,
                       const atun_registry_pin *pin, atun_tstamp ts,
                       atun_route_candidate *out, size_t cap) {
  atun_route_target tg;
  cr_assert_eq(atun_route_target_parse(&tg, target), 0);
  return atun_registry_resolve(reg, &tg, pin, ts, out, cap);
}

static atun_registry_agent_info info_of(const atun_registry *reg, int i,
                                        atun_tstamp ts) {
  atun_registry_agent_info info;
  cr_assert_eq(atun_registry_get(reg, ID[i], ts, &info), 0);
  return info;
}

TestSuite(registry, .init = ids_init);
TestSuite(registry_bounds, .init = ids_init);
TestSuite(registry_random, .init = ids_init);

/* --- connections ---------------------------------------------------------- */

Test(registry, connect_then_listing) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g0 = conn(reg, 0, "alpha", T0);
  uint64_t g1 = conn(reg, 1, "beta", T0 + 1);
  cr_expect_neq(g0, g1);
  cr_expect_eq(atun_registry_count(reg), 2);
  atun_registry_agent_info in = info_of(reg, 0, T0);
  cr_expect_str_eq(in.name, "alpha");
  cr_expect_eq(in.status, ATUN_AGENT_ONLINE);
  cr_expect_eq(in.connected, 1);
  cr_expect_eq(in.generation, g0);
  cr_expect_eq(in.last_seen, T0);
  cr_expect_eq(in.rtt_ns, UINT64_MAX);
  cr_expect_eq(in.has_route_epoch, 0);
  cr_expect_eq(memcmp(in.id, ID[0], 16), 0);
  uint32_t cursor = 0;
  int seen = 0;
  while (atun_registry_next(reg, &cursor, T0, &in) == 0)
    ++seen;
  cr_expect_eq(seen, 2);
  cr_expect_eq(atun_registry_next(reg, &cursor, T0, &in), ATUN_ERR_NOT_FOUND);
  cr_expect_eq(atun_registry_get(reg, ID[5], T0, &in), ATUN_ERR_NOT_FOUND);
  cr_expect_str_eq(atun_agent_status_name(ATUN_AGENT_ONLINE), "online");
  cr_expect_str_eq(atun_agent_status_name(ATUN_AGENT_OFFLINE), "offline");
  cr_expect_str_eq(atun_agent_status_name(ATUN_AGENT_REVOKED), "revoked");
  cr_expect_str_eq(atun_agent_status_name(0), "unknown");
  atun_registry_del(reg);
  atun_registry_del(NULL);
}

Test(registry, old_connection_cleanup_never_touches_new_one) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t old = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, old, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  uint64_t cur = conn(reg, 0, "alpha-renamed", T0 + S);
  cr_expect_gt(cur, old);
  cr_assert_eq(adv(reg, 0, cur, 1, "10.1.0.0/16", T0 + S),
               ATUN_ADVERTISE_REPLACED);
  /* The old connection's late messages and its cleanup all bounce. */
  cr_expect_eq(adv(reg, 0, old, 9, "0.0.0.0/0", T0 + 2 * S), ATUN_ERR_STALE);
  cr_expect_eq(atun_registry_heartbeat(reg, ID[0], old, T0 + 2 * S, 5),
               ATUN_ERR_STALE);
  cr_expect_eq(atun_registry_set_active_streams(reg, ID[0], old, 7),
               ATUN_ERR_STALE);
  cr_expect_eq(atun_registry_disconnect(reg, ID[0], old), ATUN_ERR_STALE);
  atun_registry_agent_info in = info_of(reg, 0, T0 + 2 * S);
  cr_expect_eq(in.connected, 1);
  cr_expect_eq(in.generation, cur);
  cr_expect_eq(in.status, ATUN_AGENT_ONLINE);
  cr_expect_eq(in.active_streams, 0);
  cr_expect_eq(in.rtt_ns, UINT64_MAX);
  cr_expect_eq(in.last_seen, T0 + S);
  cr_expect_str_eq(in.name, "alpha-renamed");
  cr_expect_eq(in.nsubnets, 1);
  atun_route_candidate c[4];
  cr_assert_eq(resolve(reg, "10.1.2.3", NULL, T0 + 2 * S, c, 4), 1);
  cr_expect_eq(c[0].prefix.len, 16);
  cr_expect_eq(resolve(reg, "10.2.0.1", NULL, T0 + 2 * S, c, 4), 0,
               "the old connection's routes went with it");
  cr_expect_eq(atun_registry_disconnect(reg, ID[0], 0), ATUN_ERR_STALE);
  cr_expect_eq(atun_registry_disconnect(reg, ID[1], cur), ATUN_ERR_NOT_FOUND);
  cr_expect_eq(atun_registry_disconnect(reg, ID[0], cur), 0);
  atun_registry_del(reg);
}

Test(registry, new_connection_starts_without_routes_and_epoch) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, g, 50, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  g = conn(reg, 0, "alpha", T0 + S);
  atun_registry_agent_info in = info_of(reg, 0, T0 + S);
  cr_expect_eq(in.nsubnets, 0);
  cr_expect_eq(in.has_route_epoch, 0);
  /* A restarted agent counting from 1 again is accepted. */
  cr_expect_eq(adv(reg, 0, g, 1, "10.0.0.0/8", T0 + S),
               ATUN_ADVERTISE_REPLACED);
  atun_registry_del(reg);
}

Test(registry, disconnect_keeps_record_drops_routes) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, g, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  cr_assert_eq(atun_registry_set_active_streams(reg, ID[0], g, 3), 0);
  cr_assert_eq(atun_registry_disconnect(reg, ID[0], g), 0);
  atun_registry_agent_info in = info_of(reg, 0, T0 + 1);
  cr_expect_eq(in.status, ATUN_AGENT_OFFLINE);
  cr_expect_eq(in.connected, 0);
  cr_expect_eq(in.generation, 0);
  cr_expect_eq(in.nsubnets, 0);
  cr_expect_eq(in.active_streams, 0);
  cr_expect_eq(in.last_seen, T0, "last_seen survives for listing");
  cr_expect_eq(atun_registry_disconnect(reg, ID[0], g), ATUN_ERR_STALE);
  cr_expect_eq(adv(reg, 0, g, 2, "10.0.0.0/8", T0), ATUN_ERR_STALE);
  cr_expect_eq(atun_registry_get_expiry(reg), ATUN_TSTAMP_MAX);
  atun_route_candidate c[2];
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0 + 1, c, 2), 0);
  atun_registry_del(reg);
}

/* --- epochs --------------------------------------------------------------- */

Test(registry, epoch_higher_equal_lower) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, g, 5, "10.0.0.0/8", T0 + 1 * S),
               ATUN_ADVERTISE_REPLACED);
  atun_registry_agent_info in = info_of(reg, 0, T0 + S);
  cr_expect_eq(in.route_epoch, 5);
  cr_expect_eq(in.last_seen, T0 + S);
  /* Equal: last_seen moves, routes stay even though these differ. */
  cr_assert_eq(adv(reg, 0, g, 5, "192.168.0.0/16", T0 + 2 * S),
               ATUN_ADVERTISE_REFRESHED);
  in = info_of(reg, 0, T0 + 2 * S);
  cr_expect_eq(in.last_seen, T0 + 2 * S);
  atun_prefix got[2];
  cr_assert_eq(atun_registry_agent_routes(reg, ID[0], got, 2, NULL, 0), 0);
  atun_prefix want = P("10.0.0.0/8");
  cr_expect_eq(atun_prefix_cmp(&got[0], &want), 0);
  /* Lower: nothing changes at all. */
  cr_assert_eq(adv(reg, 0, g, 4, "172.16.0.0/12", T0 + 3 * S),
               ATUN_ADVERTISE_IGNORED);
  in = info_of(reg, 0, T0 + 3 * S);
  cr_expect_eq(in.last_seen, T0 + 2 * S);
  cr_expect_eq(in.route_epoch, 5);
  cr_assert_eq(atun_registry_agent_routes(reg, ID[0], got, 2, NULL, 0), 0);
  cr_expect_eq(atun_prefix_cmp(&got[0], &want), 0);
  /* Higher: replaced. */
  cr_assert_eq(adv(reg, 0, g, 6, "172.16.0.0/12", T0 + 4 * S),
               ATUN_ADVERTISE_REPLACED);
  atun_route_candidate c[2];
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0 + 4 * S, c, 2), 0);
  cr_expect_eq(resolve(reg, "172.16.0.1", NULL, T0 + 4 * S, c, 2), 1);
  /* The outcome pointer is optional. */
  atun_prefix p = P("10.0.0.0/8");
  cr_expect_eq(atun_registry_advertise(reg, ID[0], g, 7, &p, 1, NULL, 0,
                                       T0 + 5 * S, NULL),
               0);
  atun_registry_del(reg);
}

Test(registry, refused_advertisement_keeps_epoch_and_routes) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, g, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  atun_route_domain bad = D("bad..name");
  atun_advertise_outcome out;
  cr_expect_eq(
      atun_registry_advertise(reg, ID[0], g, 2, NULL, 0, &bad, 1, T0 + S, &out),
      ATUN_ERR_BAD_NAME);
  atun_registry_agent_info in = info_of(reg, 0, T0 + S);
  cr_expect_eq(in.route_epoch, 1);
  cr_expect_eq(in.nsubnets, 1);
  cr_expect_eq(in.last_seen, T0);
  cr_expect_eq(adv(reg, 0, g, 2, "10.0.0.0/8", T0 + S), ATUN_ADVERTISE_REPLACED,
               "epoch 2 was not taken by the refused one");
  atun_registry_del(reg);
}

/* --- liveness ------------------------------------------------------------- */

typedef struct offline_log {
  int n;
  uint32_t handles[8];
  uint8_t last_id[16];
  atun_tstamp last_seen[8];
  int fail_at; /* 1-based call that fails, 0 = never */
} offline_log;

static int on_offline(const uint8_t *id, uint32_t handle, atun_tstamp last_seen,
                      void *ud) {
  offline_log *log = ud;
  cr_assert_lt(log->n, 8);
  memcpy(log->last_id, id, 16);
  log->last_seen[log->n] = last_seen;
  log->handles[log->n++] = handle;
  return log->n == log->fail_at ? -1 : 0;
}

Test(registry, offline_exactly_at_the_timeout) {
  offline_log log = {0};
  atun_registry_callbacks cb = {on_offline};
  atun_registry *reg = reg_new(NULL, &cb, &log, atun_mem_default());
  uint64_t timeout = atun_registry_offline_timeout(reg);
  cr_assert_eq(timeout, 30 * S, "default: 3 missed 10 s heartbeats");
  uint64_t g = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, g, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  atun_route_candidate c[2];
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + timeout);
  /* One nanosecond before the timeout: still online. */
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0 + timeout - 1, c, 2), 1);
  cr_expect_eq(info_of(reg, 0, T0 + timeout - 1).status, ATUN_AGENT_ONLINE);
  cr_assert_eq(atun_registry_handle_expiry(reg, T0 + timeout - 1), 0);
  cr_expect_eq(log.n, 0);
  /* At the timeout: offline, with or without handle_expiry. */
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0 + timeout, c, 2), 0);
  cr_expect_eq(info_of(reg, 0, T0 + timeout).status, ATUN_AGENT_OFFLINE);
  cr_assert_eq(atun_registry_handle_expiry(reg, T0 + timeout), 0);
  cr_expect_eq(log.n, 1);
  cr_expect_eq(memcmp(log.last_id, ID[0], 16), 0);
  cr_expect_eq(log.last_seen[0], T0);
  cr_expect_eq(atun_registry_get_expiry(reg), ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_registry_handle_expiry(reg, T0 + 2 * timeout), 0);
  cr_expect_eq(log.n, 1, "reported once");
  /* A late heartbeat on the same connection brings it back, routes and all. */
  cr_expect_eq(atun_registry_heartbeat(reg, ID[0], g, T0 + 2 * timeout, 2000),
               1);
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0 + 2 * timeout, c, 2), 1);
  cr_expect_eq(c[0].health.rtt_ns, 2000);
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + 3 * timeout);
  cr_expect_eq(
      atun_registry_heartbeat(reg, ID[0], g, T0 + 2 * timeout + S, UINT64_MAX),
      0, "already online");
  cr_expect_eq(info_of(reg, 0, T0).rtt_ns, 2000, "no sample keeps the RTT");
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + 3 * timeout + S);
  atun_registry_del(reg);
}

Test(registry, equal_epoch_refresh_counts_as_seen) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t timeout = atun_registry_offline_timeout(reg);
  uint64_t g = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, g, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  cr_assert_eq(atun_registry_handle_expiry(reg, T0 + timeout), 0);
  cr_assert_eq(adv(reg, 0, g, 1, "10.0.0.0/8", T0 + timeout + 1),
               ATUN_ADVERTISE_REFRESHED);
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + 2 * timeout + 1);
  atun_route_candidate c[2];
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0 + timeout + 1, c, 2), 1);
  atun_registry_del(reg);
}

Test(registry, expiry_in_deadline_order_and_callback_failure) {
  offline_log log = {0};
  log.fail_at = 2;
  atun_registry_callbacks cb = {on_offline};
  atun_registry_settings s;
  atun_registry_settings_default(&s);
  s.heartbeat_interval_ns = S;
  s.missed_heartbeats_max = 2;
  atun_registry *reg = reg_new(&s, &cb, &log, atun_mem_default());
  cr_assert_eq(atun_registry_offline_timeout(reg), 2 * S);
  uint64_t g[4];
  for (int i = 0; i < 4; ++i)
    g[i] = conn(reg, i, "agent", T0);
  /* Deadlines: 2 at T0+2s, 0 at +3s, 3 at +4s, 1 at +5s. */
  cr_assert_eq(
      atun_registry_heartbeat(reg, ID[0], g[0], T0 + 1 * S, UINT64_MAX), 0);
  cr_assert_eq(
      atun_registry_heartbeat(reg, ID[1], g[1], T0 + 3 * S, UINT64_MAX), 0);
  cr_assert_eq(
      atun_registry_heartbeat(reg, ID[3], g[3], T0 + 2 * S, UINT64_MAX), 0);
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + 2 * S);
  cr_expect_eq(atun_registry_handle_expiry(reg, T0 + 10 * S),
               ATUN_ERR_CALLBACK_FAILURE);
  cr_expect_eq(log.n, 2);
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + 4 * S,
               "the failing report counts as done");
  cr_expect_eq(atun_registry_handle_expiry(reg, T0 + 10 * S), 0);
  cr_assert_eq(log.n, 4);
  atun_registry_agent_info in;
  uint32_t order[] = {2, 0, 3, 1};
  for (int i = 0; i < 4; ++i) {
    cr_assert_eq(atun_registry_get(reg, ID[order[i]], T0, &in), 0);
    cr_expect_eq(log.handles[i], in.handle, "report %d", i);
  }
  /* Disconnect and forget take agents out of the expiry set. */
  cr_assert_eq(
      atun_registry_heartbeat(reg, ID[0], g[0], T0 + 20 * S, UINT64_MAX), 1);
  cr_assert_eq(
      atun_registry_heartbeat(reg, ID[1], g[1], T0 + 21 * S, UINT64_MAX), 1);
  cr_assert_eq(atun_registry_disconnect(reg, ID[0], g[0]), 0);
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + 23 * S);
  cr_assert_eq(atun_registry_forget(reg, ID[1]), 0);
  cr_expect_eq(atun_registry_get_expiry(reg), ATUN_TSTAMP_MAX);
  atun_registry_del(reg);
}

/* An agent leaving from inside the expiry heap: the item moved into its
 * place can be earlier than its new parent and must rise, or a later
 * deadline would be reported as the earliest. */
Test(registry, expiry_order_survives_inner_removal) {
  offline_log log = {0};
  atun_registry_callbacks cb = {on_offline};
  atun_registry *reg = reg_new(NULL, &cb, &log, atun_mem_default());
  uint64_t timeout = atun_registry_offline_timeout(reg);
  uint64_t g[7];
  for (int i = 0; i < 7; ++i)
    g[i] = conn(reg, i, "agent", T0);
  /* Shapes the heap so agent 6, the last item, lands under agent 3. */
  cr_assert_eq(atun_registry_heartbeat(reg, ID[1], g[1], T0 + 10, UINT64_MAX),
               0);
  cr_assert_eq(atun_registry_heartbeat(reg, ID[3], g[3], T0 + 5, UINT64_MAX),
               0);
  cr_assert_eq(atun_registry_heartbeat(reg, ID[4], g[4], T0 + 7, UINT64_MAX),
               0);
  cr_assert_eq(atun_registry_disconnect(reg, ID[1], g[1]), 0);
  int later[] = {0, 2, 5};
  for (int i = 0; i < 3; ++i)
    cr_assert_eq(atun_registry_heartbeat(reg, ID[later[i]], g[later[i]],
                                         T0 + 20, UINT64_MAX),
                 0);
  cr_expect_eq(atun_registry_get_expiry(reg), T0 + timeout,
               "agent 6 is earliest");
  cr_assert_eq(atun_registry_handle_expiry(reg, T0 + 100 * S), 0);
  cr_assert_eq(log.n, 6);
  for (int i = 1; i < 6; ++i)
    cr_expect_leq(log.last_seen[i - 1], log.last_seen[i], "report %d in order",
                  i);
  atun_registry_del(reg);
}

/* --- revocation ----------------------------------------------------------- */

Test(registry, revoked_never_routes_and_cannot_reconnect) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g = conn(reg, 0, "alpha", T0);
  cr_assert_eq(adv(reg, 0, g, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  cr_assert_eq(atun_registry_revoke(reg, ID[0]), 0);
  atun_route_candidate c[2];
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0, c, 2), 0);
  atun_registry_agent_info in = info_of(reg, 0, T0);
  cr_expect_eq(in.status, ATUN_AGENT_REVOKED);
  cr_expect_eq(in.nsubnets, 0);
  cr_expect_eq(in.connected, 0);
  cr_expect_eq(atun_registry_heartbeat(reg, ID[0], g, T0, UINT64_MAX),
               ATUN_ERR_STALE);
  cr_expect_eq(adv(reg, 0, g, 2, "10.0.0.0/8", T0), ATUN_ERR_STALE);
  uint64_t g2 = 0;
  cr_expect_eq(atun_registry_connect(reg, ID[0], "alpha", T0 + S, &g2),
               ATUN_ERR_REVOKED);
  cr_expect_eq(g2, 0);
  cr_expect_eq(atun_registry_revoke(reg, ID[0]), 0, "twice is a no-op");
  cr_expect_eq(atun_registry_get_expiry(reg), ATUN_TSTAMP_MAX);
  /* An id never seen can be revoked ahead of its first connect. */
  cr_assert_eq(atun_registry_revoke(reg, ID[1]), 0);
  cr_expect_eq(atun_registry_connect(reg, ID[1], "beta", T0, &g2),
               ATUN_ERR_REVOKED);
  in = info_of(reg, 1, T0);
  cr_expect_eq(in.status, ATUN_AGENT_REVOKED);
  cr_expect_eq(in.last_seen, ATUN_TSTAMP_MAX);
  /* Pins do not bring it back either. */
  atun_registry_pin pin = {ATUN_REGISTRY_PIN_ID, {0}, NULL};
  memcpy(pin.id, ID[0], 16);
  cr_expect_eq(resolve(reg, "10.0.0.1", &pin, T0, c, 2), 0);
  /* Forgetting drops the record and with it the refusal. */
  cr_assert_eq(atun_registry_forget(reg, ID[0]), 0);
  cr_expect_eq(atun_registry_forget(reg, ID[0]), ATUN_ERR_NOT_FOUND);
  conn(reg, 0, "alpha", T0 + 2 * S);
  atun_registry_del(reg);
}

/* --- resolve: health and pins --------------------------------------------- */

Test(registry, health_order_from_streams_and_rtt) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g[4];
  for (int i = 0; i < 4; ++i) {
    g[i] = conn(reg, i, "agent", T0);
    cr_assert_eq(adv(reg, i, g[i], 1, "10.0.0.0/8", T0),
                 ATUN_ADVERTISE_REPLACED);
  }
  cr_assert_eq(atun_registry_set_active_streams(reg, ID[0], g[0], 4), 0);
  cr_assert_eq(atun_registry_heartbeat(reg, ID[1], g[1], T0, 300), 0);
  cr_assert_eq(atun_registry_heartbeat(reg, ID[2], g[2], T0, 100), 0);
  cr_assert_eq(atun_registry_heartbeat(reg, ID[3], g[3], T0, 100), 0);
  atun_route_candidate c[4];
  cr_assert_eq(resolve(reg, "10.0.0.1", NULL, T0, c, 4), 4);
  /* 2 and 3 tie on streams and RTT: the lower id (2) wins. */
  atun_registry_agent_info in;
  int want[] = {2, 3, 1, 0};
  for (int i = 0; i < 4; ++i) {
    cr_assert_eq(atun_registry_get(reg, ID[want[i]], T0, &in), 0);
    cr_expect_eq(c[i].agent, in.handle, "slot %d", i);
    cr_expect_eq(memcmp(c[i].health.tiebreak, ID[want[i]], 16), 0);
  }
  atun_registry_del(reg);
}

Test(registry, pins_by_id_and_name) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g0 = conn(reg, 0, "alpha", T0);
  uint64_t g1 = conn(reg, 1, "beta", T0);
  uint64_t g2 = conn(reg, 2, "gamma", T0);
  uint64_t g3 = conn(reg, 3, "gamma", T0);
  cr_assert_eq(adv(reg, 0, g0, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  cr_assert_eq(adv(reg, 1, g1, 1, "10.0.0.0/8", T0), ATUN_ADVERTISE_REPLACED);
  cr_assert_eq(adv(reg, 2, g2, 1, "192.168.0.0/16", T0),
               ATUN_ADVERTISE_REPLACED);
  cr_assert_eq(atun_registry_set_active_streams(reg, ID[0], g0, 9), 0);
  cr_assert_eq(atun_registry_set_active_streams(reg, ID[3], g3, 1), 0);
  atun_route_candidate c[8];
  cr_assert_eq(resolve(reg, "10.0.0.1", NULL, T0, c, 8), 2);
  uint32_t h0 = info_of(reg, 0, T0).handle, h1 = info_of(reg, 1, T0).handle;
  uint32_t h2 = info_of(reg, 2, T0).handle, h3 = info_of(reg, 3, T0).handle;
  cr_expect_eq(c[0].agent, h1);
  /* By id: only that agent, with the route that matched. */
  atun_registry_pin pin = {ATUN_REGISTRY_PIN_ID, {0}, NULL};
  memcpy(pin.id, ID[0], 16);
  cr_assert_eq(resolve(reg, "10.0.0.1", &pin, T0, c, 8), 1);
  cr_expect_eq(c[0].agent, h0);
  cr_expect_eq(c[0].match, ATUN_ROUTE_MATCH_PREFIX);
  /* By name: same. */
  atun_registry_pin byname = {ATUN_REGISTRY_PIN_NAME, {0}, "alpha"};
  cr_assert_eq(resolve(reg, "10.0.0.1", &byname, T0, c, 8), 1);
  cr_expect_eq(c[0].agent, h0);
  /* A pinned agent without a matching route is still offered; the agent
   * enforces its own routes. */
  memcpy(pin.id, ID[1], 16);
  cr_assert_eq(resolve(reg, "host.elsewhere", &pin, T0, c, 8), 1);
  cr_expect_eq(c[0].agent, h1);
  cr_expect_eq(c[0].match, ATUN_ROUTE_MATCH_PIN);
  /* A shared name: routed agents first, then the rest in health order. */
  byname.name = "gamma";
  cr_assert_eq(resolve(reg, "192.168.1.1", &byname, T0, c, 8), 2);
  cr_expect_eq(c[0].agent, h2);
  cr_expect_eq(c[0].match, ATUN_ROUTE_MATCH_PREFIX);
  cr_expect_eq(c[1].agent, h3);
  cr_expect_eq(c[1].match, ATUN_ROUTE_MATCH_PIN);
  cr_assert_eq(resolve(reg, "10.9.9.9", &byname, T0, c, 8), 2);
  cr_expect_eq(c[0].agent, h2, "fewer streams first");
  cr_expect_eq(c[1].agent, h3);
  cr_assert_eq(resolve(reg, "10.9.9.9", &byname, T0, c, 1), 1, "cut at cap");
  cr_expect_eq(c[0].agent, h2);
  cr_assert_eq(resolve(reg, "192.168.1.1", &byname, T0, c, 1), 1);
  cr_expect_eq(c[0].match, ATUN_ROUTE_MATCH_PREFIX);
  /* A full list still takes a better pinned agent found later. */
  cr_assert_eq(atun_registry_set_active_streams(reg, ID[2], g2, 5), 0);
  cr_assert_eq(resolve(reg, "10.9.9.9", &byname, T0, c, 1), 1);
  cr_expect_eq(c[0].agent, h3);
  /* Pinned but offline: nothing. */
  cr_assert_eq(atun_registry_disconnect(reg, ID[1], g1), 0);
  cr_expect_eq(resolve(reg, "10.0.0.1", &pin, T0, c, 8), 0);
  /* Unknown or malformed pins. */
  memcpy(pin.id, ID[7], 16);
  cr_expect_eq(resolve(reg, "10.0.0.1", &pin, T0, c, 8), ATUN_ERR_NOT_FOUND);
  byname.name = "nobody";
  cr_expect_eq(resolve(reg, "10.0.0.1", &byname, T0, c, 8), ATUN_ERR_NOT_FOUND);
  byname.name = NULL;
  cr_expect_eq(resolve(reg, "10.0.0.1", &byname, T0, c, 8),
               ATUN_ERR_INVALID_ARGUMENT);
  byname.kind = 9;
  byname.name = "alpha";
  cr_expect_eq(resolve(reg, "10.0.0.1", &byname, T0, c, 8),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_registry_pin none = {ATUN_REGISTRY_PIN_NONE, {0}, NULL};
  cr_expect_eq(resolve(reg, "10.0.0.1", &none, T0, c, 8), 1);
  cr_expect_eq(resolve(reg, "10.0.0.1", NULL, T0, c, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_registry_del(reg);
}

Test(registry, domains_and_listing_of_routes) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g = conn(reg, 0, "alpha", T0);
  atun_prefix p[] = {P("10.0.0.0/8"), P("2001:db8::/32")};
  atun_route_domain d[] = {D("Corp.Example."), D("lab.example")};
  d[1].auto_detected = 1;
  atun_advertise_outcome out;
  cr_assert_eq(atun_registry_advertise(reg, ID[0], g, 3, p, 2, d, 2, T0, &out),
               0);
  atun_registry_agent_info in = info_of(reg, 0, T0);
  cr_expect_eq(in.nsubnets, 2);
  cr_expect_eq(in.ndomains, 2);
  atun_prefix gp[2];
  atun_route_domain gd[2];
  cr_assert_eq(atun_registry_agent_routes(reg, ID[0], gp, 2, gd, 2), 0);
  cr_expect_str_eq(gd[0].name, "corp.example");
  cr_expect_eq(gd[1].auto_detected, 1);
  cr_expect_eq(atun_registry_agent_routes(reg, ID[0], gp, 1, gd, 2),
               ATUN_ERR_NOBUF);
  cr_expect_eq(atun_registry_agent_routes(reg, ID[4], gp, 2, gd, 2),
               ATUN_ERR_NOT_FOUND);
  atun_route_candidate c[2];
  cr_assert_eq(resolve(reg, "db.CORP.example", NULL, T0, c, 2), 1);
  cr_expect_str_eq(c[0].domain, "corp.example");
  cr_expect_eq(resolve(reg, "db.badcorp.example", NULL, T0, c, 2), 0);
  atun_registry_del(reg);
}

Test(registry, argument_checks) {
  atun_registry *reg = reg_new(NULL, NULL, NULL, atun_mem_default());
  uint64_t g;
  char name[ATUN_REGISTRY_NAME_MAX + 2];
  memset(name, 'n', sizeof(name));
  name[ATUN_REGISTRY_NAME_MAX] = '\0';
  cr_expect_eq(atun_registry_connect(reg, ID[0], name, T0, &g), 0,
               "64 bytes fit");
  name[ATUN_REGISTRY_NAME_MAX] = 'n';
  name[ATUN_REGISTRY_NAME_MAX + 1] = '\0';
  cr_expect_eq(atun_registry_connect(reg, ID[1], name, T0, &g),
               ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_registry_connect(reg, ID[1], "", T0, &g),
               ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_registry_connect(reg, ID[1], "a\nb", T0, &g),
               ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_registry_connect(reg, ID[1], "a\x7f", T0, &g),
               ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_registry_connect(reg, ID[1], NULL, T0, &g),
               ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_registry_connect(reg, NULL, "x", T0, &g),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_registry_connect(reg, ID[1], "x", T0, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_registry_count(reg), 1);
  cr_expect_eq(atun_registry_disconnect(reg, NULL, 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_registry_heartbeat(reg, ID[3], 1, T0, 0),
               ATUN_ERR_NOT_FOUND);
  cr_expect_eq(atun_registry_set_active_streams(reg, ID[3], 1, 0),
               ATUN_ERR_NOT_FOUND);
  cr_expect_eq(atun_registry_revoke(reg, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_registry_forget(reg, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_registry_forget(reg, ID[3]), ATUN_ERR_NOT_FOUND);
  atun_registry_agent_info in;
  cr_expect_eq(atun_registry_get(reg, NULL, T0, &in),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_registry_agent_routes(reg, NULL, NULL, 0, NULL, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_registry_del(reg);
}

Test(registry, settings_validation) {
  atun_registry *reg = NULL;
  atun_registry_settings s;
  atun_registry_settings_default(&s);
  s.max_agents = 0;
  cr_expect_eq(atun_registry_new(&reg, &s, NULL, NULL, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_registry_settings_default(&s);
  s.heartbeat_interval_ns = 0;
  cr_expect_eq(atun_registry_new(&reg, &s, NULL, NULL, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_registry_settings_default(&s);
  s.missed_heartbeats_max = 0;
  cr_expect_eq(atun_registry_new(&reg, &s, NULL, NULL, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_registry_settings_default(&s);
  s.heartbeat_interval_ns = UINT64_MAX / 2;
  cr_expect_eq(atun_registry_new(&reg, &s, NULL, NULL, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT, "timeout overflows");
  atun_registry_settings_default(&s);
  s.max_agents = ATUN_REGISTRY_AGENTS_MAX + 1;
  cr_expect_eq(atun_registry_new(&reg, &s, NULL, NULL, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_registry_settings_default(&s);
  s.route.max_routes = 0;
  cr_expect_eq(atun_registry_new(&reg, &s, NULL, NULL, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_null(reg);
}

/* --- bounds --------------------------------------------------------------- */

Test(registry_bounds, max_agents_at_the_bound) {
  atun_registry_settings s;
  atun_registry_settings_default(&s);
  s.max_agents = 3;
  atun_registry *reg = reg_new(&s, NULL, NULL, atun_mem_default());
  for (int i = 0; i < 3; ++i)
    conn(reg, i, "a", T0);
  uint64_t g;
  cr_expect_eq(atun_registry_connect(reg, ID[3], "d", T0, &g), ATUN_ERR_FULL);
  cr_expect_eq(atun_registry_revoke(reg, ID[3]), ATUN_ERR_FULL);
  cr_expect_eq(atun_registry_count(reg), 3);
  /* A known id reconnects even when full. */
  conn(reg, 1, "b", T0 + S);
  uint32_t freed = info_of(reg, 1, T0).handle;
  cr_assert_eq(atun_registry_forget(reg, ID[1]), 0);
  conn(reg, 3, "d", T0);
  cr_expect_eq(info_of(reg, 3, T0).handle, freed, "the slot is reused");
  cr_expect_eq(atun_registry_count(reg), 3);
  atun_registry_del(reg);
}

Test(registry_bounds, routes_per_agent_and_total_at_the_bound) {
  atun_registry_settings s;
  atun_registry_settings_default(&s);
  s.route.max_routes = ATUN_ROUTE_SUBNETS_MAX + ATUN_ROUTE_DOMAINS_MAX + 1;
  atun_registry *reg = reg_new(&s, NULL, NULL, atun_mem_default());
  static atun_prefix p[ATUN_ROUTE_SUBNETS_MAX + 1];
  static atun_route_domain d[ATUN_ROUTE_DOMAINS_MAX + 1];
  for (uint32_t i = 0; i <= ATUN_ROUTE_SUBNETS_MAX; ++i) {
    memset(&p[i], 0, sizeof(p[i]));
    p[i].addr.family = ATUN_AF_INET;
    p[i].addr.bytes[0] = 10;
    p[i].addr.bytes[1] = (uint8_t)(i >> 8);
    p[i].addr.bytes[2] = (uint8_t)i;
    p[i].len = 24;
  }
  for (uint32_t i = 0; i <= ATUN_ROUTE_DOMAINS_MAX; ++i) {
    memset(&d[i], 0, sizeof(d[i]));
    snprintf(d[i].name, sizeof(d[i].name), "d%u.example", i);
  }
  uint64_t g = conn(reg, 0, "a", T0);
  atun_advertise_outcome out;
  cr_expect_eq(atun_registry_advertise(reg, ID[0], g, 1, p,
                                       ATUN_ROUTE_SUBNETS_MAX + 1, NULL, 0, T0,
                                       &out),
               ATUN_ERR_LIMIT);
  cr_expect_eq(atun_registry_advertise(reg, ID[0], g, 1, NULL, 0, d,
                                       ATUN_ROUTE_DOMAINS_MAX + 1, T0, &out),
               ATUN_ERR_LIMIT);
  cr_assert_eq(atun_registry_advertise(reg, ID[0], g, 1, p,
                                       ATUN_ROUTE_SUBNETS_MAX, d,
                                       ATUN_ROUTE_DOMAINS_MAX, T0, &out),
               0);
  cr_expect_eq(out, ATUN_ADVERTISE_REPLACED);
  /* One route of room left in the table. */
  uint64_t g1 = conn(reg, 1, "b", T0);
  cr_expect_eq(
      atun_registry_advertise(reg, ID[1], g1, 1, p, 2, NULL, 0, T0, &out),
      ATUN_ERR_FULL);
  cr_expect_eq(
      atun_registry_advertise(reg, ID[1], g1, 1, p, 1, NULL, 0, T0, &out), 0);
  atun_registry_del(reg);
}

/* --- allocation failures -------------------------------------------------- */

Test(registry_bounds, new_fails_cleanly_at_every_index) {
  for (long k = 0;; ++k) {
    atun_failmem fm;
    atun_failmem_init(&fm, k);
    atun_registry *reg = NULL;
    int rv = atun_registry_new(&reg, NULL, NULL, NULL, &fm.mem);
    if (rv == 0) {
      atun_registry_del(reg);
      cr_assert_eq(fm.live, 0);
      break;
    }
    cr_assert_eq(rv, ATUN_ERR_NOMEM);
    cr_assert_eq(fm.live, 0, "k %ld", k);
  }
}

/* Connects enough agents to grow the slot array several times, failing
 * every allocation index of every connect and advertisement once. */
Test(registry_bounds, failures_at_every_index_change_nothing) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_registry_settings s;
  atun_registry_settings_default(&s);
  s.max_agents = 100;
  atun_registry *reg = reg_new(&s, NULL, NULL, &fm.mem);
  uint8_t id[16] = {0};
  int failures = 0;
  for (int i = 0; i < 70; ++i) {
    id[0] = (uint8_t)i;
    long live = fm.live;
    size_t count = atun_registry_count(reg);
    uint64_t g = 0;
    int rv;
    for (long k = 0;; ++k) {
      atun_failmem_arm(&fm, k, 0);
      rv = atun_registry_connect(reg, id, "agent", T0, &g);
      atun_failmem_arm(&fm, -1, 0);
      if (rv == 0) break;
      ++failures;
      cr_assert_eq(rv, ATUN_ERR_NOMEM);
      cr_assert_eq(fm.live, live);
      cr_assert_eq(atun_registry_count(reg), count);
      atun_registry_agent_info in;
      cr_assert_eq(atun_registry_get(reg, id, T0, &in), ATUN_ERR_NOT_FOUND);
    }
    atun_prefix p[3] = {P("10.0.0.0/8"), P("10.1.0.0/16"), P("2001:db8::/32")};
    p[1].addr.bytes[2] = (uint8_t)i;
    p[1].len = 24;
    atun_route_domain d[] = {D("corp.example"), D("x.example")};
    d[1].name[0] = (char)('a' + i % 26);
    atun_advertise_outcome out;
    for (uint64_t epoch = 1; epoch <= 2; ++epoch) {
      live = fm.live;
      for (long k = 0;; ++k) {
        atun_failmem_arm(&fm, k, 0);
        rv = atun_registry_advertise(reg, id, g, epoch, p, 4 - epoch, d, 2, T0,
                                     &out);
        atun_failmem_arm(&fm, -1, 0);
        if (rv == 0) break;
        ++failures;
        cr_assert_eq(rv, ATUN_ERR_NOMEM);
        cr_assert_eq(fm.live, live);
        atun_registry_agent_info in;
        cr_assert_eq(atun_registry_get(reg, id, T0, &in), 0);
        cr_assert_eq(in.has_route_epoch, epoch == 2);
        cr_assert_eq(in.nsubnets, epoch == 2 ? 3 : 0);
      }
    }
  }
  cr_expect_gt(failures, 200);
  /* Every agent still resolves. */
  atun_route_candidate c[64];
  atun_route_target tg;
  cr_assert_eq(atun_route_target_parse(&tg, "10.9.9.9"), 0);
  cr_expect_eq(atun_registry_resolve(reg, &tg, NULL, T0, c, 64), 64);
  atun_registry_del(reg);
  cr_expect_eq(fm.live, 0);
}

/* --- random sequences against a model ------------------------------------- */

#define POOL 96

typedef struct mrec {
  int present, connected, revoked, reported;
  uint64_t gen;
  atun_tstamp last_seen;
} mrec;

static int g_offline_calls;

static int count_offline(const uint8_t *id, uint32_t handle,
                         atun_tstamp last_seen, void *ud) {
  mrec *m = ud;
  int i = id[1] | (id[2] << 8);
  cr_assert(m[i].present && m[i].connected && !m[i].reported);
  m[i].reported = 1;
  ++g_offline_calls;
  return 0;
}

static void pool_id(uint8_t *id, int i) {
  memset(id, 0x5a, 16);
  id[1] = (uint8_t)i;
  id[2] = (uint8_t)(i >> 8);
}

Test(registry_random, operations_against_model) {
  static mrec m[POOL];
  atun_registry_callbacks cb = {count_offline};
  atun_registry_settings s;
  atun_registry_settings_default(&s);
  s.max_agents = 48;
  s.heartbeat_interval_ns = S;
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    memset(m, 0, sizeof(m));
    atun_testrng r;
    atun_testrng_seed(&r, seed);
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    atun_registry *reg = reg_new(&s, &cb, m, &fm.mem);
    uint64_t timeout = atun_registry_offline_timeout(reg);
    atun_tstamp ts = T0;
    size_t present = 0;
    for (int op = 0; op < 3000; ++op) {
      int i = (int)atun_testrng_below(&r, POOL);
      uint8_t id[16];
      pool_id(id, i);
      mrec *x = &m[i];
      ts += atun_testrng_below(&r, S / 2);
      uint64_t gen =
          x->gen - (atun_testrng_below(&r, 5) == 0); /* sometimes stale */
      uint64_t g = 0;
      int rv;
      switch (atun_testrng_below(&r, 7)) {
      case 0:
      case 1:
        rv = atun_registry_connect(reg, id, "n", ts, &g);
        if (x->revoked) {
          cr_assert_eq(rv, ATUN_ERR_REVOKED);
        } else if (!x->present && present == s.max_agents) {
          cr_assert_eq(rv, ATUN_ERR_FULL);
        } else {
          cr_assert_eq(rv, 0);
          cr_assert_gt(g, x->gen);
          present += !x->present;
          *x = (mrec){1, 1, 0, 0, g, ts};
        }
        break;
      case 2:
        rv = atun_registry_heartbeat(reg, id, gen, ts, UINT64_MAX);
        if (!x->present) {
          cr_assert_eq(rv, ATUN_ERR_NOT_FOUND);
        } else if (!x->connected || gen != x->gen) {
          cr_assert_eq(rv, ATUN_ERR_STALE);
        } else {
          cr_assert_eq(rv, x->reported);
          x->reported = 0;
          x->last_seen = ts;
        }
        break;
      case 3:
        rv = atun_registry_disconnect(reg, id, gen);
        if (!x->present) {
          cr_assert_eq(rv, ATUN_ERR_NOT_FOUND);
        } else if (!x->connected || gen != x->gen) {
          cr_assert_eq(rv, ATUN_ERR_STALE);
        } else {
          cr_assert_eq(rv, 0);
          x->connected = 0;
        }
        break;
      case 4:
        if (atun_testrng_below(&r, 4) != 0) break;
        rv = atun_registry_revoke(reg, id);
        if (!x->present && present == s.max_agents) {
          cr_assert_eq(rv, ATUN_ERR_FULL);
        } else {
          cr_assert_eq(rv, 0);
          present += !x->present;
          x->present = 1, x->revoked = 1, x->connected = 0;
        }
        break;
      case 5:
        rv = atun_registry_forget(reg, id);
        cr_assert_eq(rv, x->present ? 0 : ATUN_ERR_NOT_FOUND);
        present -= x->present;
        x->present = 0, x->revoked = 0, x->connected = 0;
        break;
      default:
        cr_assert_eq(atun_registry_handle_expiry(reg, ts), 0);
        break;
      }
      /* The expiry is the earliest deadline of the unreported online ones. */
      atun_tstamp want = ATUN_TSTAMP_MAX;
      for (int j = 0; j < POOL; ++j)
        if (m[j].present && m[j].connected && !m[j].reported &&
            m[j].last_seen + timeout < want)
          want = m[j].last_seen + timeout;
      cr_assert_eq(atun_registry_get_expiry(reg), want, "seed %lu op %d",
                   (unsigned long)seed, op);
      cr_assert_eq(atun_registry_count(reg), present);
    }
    for (int j = 0; j < POOL; ++j) {
      uint8_t id[16];
      pool_id(id, j);
      atun_registry_agent_info in;
      int rv = atun_registry_get(reg, id, ts, &in);
      cr_assert_eq(rv, m[j].present ? 0 : ATUN_ERR_NOT_FOUND);
      if (rv != 0) continue;
      int online =
          m[j].connected && !m[j].revoked && ts < m[j].last_seen + timeout;
      cr_assert_eq(in.status, m[j].revoked ? ATUN_AGENT_REVOKED
                              : online     ? ATUN_AGENT_ONLINE
                                           : ATUN_AGENT_OFFLINE);
    }
    atun_registry_del(reg);
    cr_assert_eq(fm.live, 0);
  }
  cr_expect_gt(g_offline_calls, 100);
}
