/*
 * The run: options drawn from the seed, the event loop, the fault schedule,
 * and the invariants of the safety and liveness phases.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "world_int.h"

#define MS ATUN_NS_PER_MS
#define SEC ATUN_NS_PER_S
#define CHECK_EVERY_NS (1 * SEC)
#define ROUTE_CHECK_ROUNDS 10
/* Live bytes the core may hold per agent before the run calls it a leak or an
 * unbounded queue: two QUIC connections with full windows would be far more,
 * but a simulated agent moves at most one transfer of 256 KiB at a time. */
#define MEM_PER_AGENT_MAX ((size_t)2 << 20)
#define MEM_BASE_MAX ((size_t)64 << 20)

const char *const sim_scenarios[] = {
    "mixed",         "gateway_restart", "partition", "route_epochs", "failover",
    "token_race",    "revocation",      "lossy_transfer", "storm", "steady", NULL};

/* --- options ------------------------------------------------------------------ */

static uint64_t draw(atun_testrng *r, uint64_t lo, uint64_t hi) {
  return lo + atun_testrng_below(r, hi - lo + 1);
}

static int coin(atun_testrng *r) { return (int)atun_testrng_below(r, 2); }

/* Swarm testing: every fault kind is switched on or off by the seed, and the
 * rates of those switched on are drawn too. */
static void draw_swarm(sim_faults *f, atun_testrng *r) {
  if (coin(r)) f->loss_ppm = (uint32_t)draw(r, 0, 100000);
  if (coin(r)) f->dup_ppm = (uint32_t)draw(r, 0, 20000);
  if (coin(r)) f->corrupt_ppm = (uint32_t)draw(r, 0, 10000);
  f->delay_ns = draw(r, 1, 100) * MS;
  if (coin(r)) f->jitter_ns = draw(r, 0, f->delay_ns / MS) * MS;
  if (coin(r)) {
    f->partition_every_ns = draw(r, 30, 120) * SEC;
    f->partition_len_ns = draw(r, 5, 60) * SEC;
  }
  if (coin(r)) {
    f->gw_crash_every_ns = draw(r, 60, 300) * SEC;
    f->gw_down_ns = draw(r, 1, 30) * SEC;
  }
  if (coin(r)) {
    f->agent_crash_every_ns = draw(r, 10, 60) * SEC;
    f->agent_down_ns = draw(r, 1, 30) * SEC;
  }
  if (coin(r)) f->bandwidth_bps = draw(r, 1, 100) * 1000000;
  if (coin(r)) {
    f->clog_every_ns = draw(r, 20, 120) * SEC;
    f->clog_len_ns = draw(r, 100, 20000) * MS;
  }
  if (coin(r)) {
    f->pause_every_ns = draw(r, 20, 120) * SEC;
    f->pause_len_ns = draw(r, 100, 10000) * MS;
  }
  if (coin(r)) f->route_change_every_ns = draw(r, 5, 60) * SEC;
  if (coin(r)) f->revoke_every_ns = draw(r, 60, 300) * SEC;
  if (coin(r)) f->transfer_every_ns = draw(r, 1, 10) * SEC;
  f->transfer_bytes_max = (uint32_t)draw(r, 1, 256) * 1024;
  if (coin(r)) f->token_race_every_ns = draw(r, 20, 120) * SEC;
  if (coin(r)) f->skew_max_ns = draw(r, 0, 10) * SEC;
}

static void scenario_faults(sim_options *o, atun_testrng *r) {
  sim_faults *f = &o->faults;
  const char *s = o->scenario;
  sim_faults calm = {0};
  calm.delay_ns = draw(r, 1, 50) * MS;
  calm.transfer_bytes_max = 64 * 1024;
  if (strcmp(s, "mixed") == 0) {
    draw_swarm(f, r);
  } else if (strcmp(s, "gateway_restart") == 0) {
    *f = calm;
    o->gw_restart_at_ns = draw(r, 30, 90) * SEC;
    o->gw_restart_down_ns = draw(r, 1, 20) * SEC;
  } else if (strcmp(s, "partition") == 0) {
    *f = calm;
    f->partition_every_ns = draw(r, 10, 40) * SEC;
    f->partition_len_ns = draw(r, 20, 90) * SEC;
  } else if (strcmp(s, "route_epochs") == 0) {
    *f = calm;
    f->route_change_every_ns = draw(r, 1, 5) * SEC;
  } else if (strcmp(s, "failover") == 0) {
    *f = calm;
    o->shared_prefix_agents = (uint32_t)draw(r, 2, 4);
    f->agent_crash_every_ns = draw(r, 10, 30) * SEC;
    f->agent_down_ns = draw(r, 5, 30) * SEC;
    f->transfer_every_ns = 2 * SEC;
  } else if (strcmp(s, "token_race") == 0) {
    *f = calm;
    f->loss_ppm = (uint32_t)draw(r, 0, 200000);
    f->token_race_every_ns = draw(r, 10, 20) * SEC;
    f->gw_crash_every_ns = draw(r, 30, 90) * SEC;
    f->gw_down_ns = draw(r, 1, 5) * SEC;
  } else if (strcmp(s, "revocation") == 0) {
    *f = calm;
    f->revoke_every_ns = draw(r, 10, 40) * SEC;
    f->transfer_every_ns = 2 * SEC;
  } else if (strcmp(s, "lossy_transfer") == 0) {
    *f = calm;
    f->loss_ppm = (uint32_t)draw(r, 100000, 300000);
    f->jitter_ns = draw(r, 5, 50) * MS;
    f->transfer_every_ns = draw(r, 1, 3) * SEC;
    f->transfer_bytes_max = 256 * 1024;
  } else if (strcmp(s, "storm") == 0) {
    *f = calm;
    o->gw_restart_at_ns = 60 * SEC;
    o->gw_restart_down_ns = 10 * SEC;
  } else if (strcmp(s, "steady") == 0) {
    *f = calm;
  }
}

int sim_options_from_seed(sim_options *o, uint64_t seed, const char *scenario,
                          uint32_t agents, uint64_t duration_ns) {
  memset(o, 0, sizeof(*o));
  if (scenario == NULL) scenario = "mixed";
  int known = 0;
  for (int i = 0; sim_scenarios[i] != NULL; ++i) known |= strcmp(sim_scenarios[i], scenario) == 0;
  if (!known) return ATUN_ERR_NOT_FOUND;
  snprintf(o->scenario, sizeof(o->scenario), "%s", scenario);
  o->seed = seed;
  atun_testrng r;
  atun_testrng_seed(&r, seed ^ 0x6f7074696f6e73ULL);
  /* Draw even when overridden, so --agents leaves every other option as
   * the seed made it (the reproduce line names the fleet size). */
  uint32_t drawn = (uint32_t)draw(&r, 2, 12);
  o->agents = agents ? agents : drawn;
  if (strcmp(scenario, "storm") == 0 && agents == 0) o->agents = 1000;
  o->duration_ns = duration_ns ? duration_ns : 300 * SEC;
  o->heartbeat_ns = 10 * SEC;
  /* Convergence bound: a reconnect waits at most the backoff cap (60 s);
   * before that the agent may need 3 missed heartbeats (+1 interval) to see
   * the old gateway dead, or the 30 s idle timeout; then a handshake.  Twice
   * the sum leaves room for one more failed attempt. */
  o->liveness_ns = 2 * (60 * SEC + 4 * o->heartbeat_ns + 30 * SEC);
  scenario_faults(o, &r);
  return 0;
}

static const struct fault_key {
  const char *name;
  size_t off;
  int ppm; /* 1: u32 ppm, 0: u64 time given in ms */
} fault_keys[] = {
    {"loss", offsetof(sim_faults, loss_ppm), 1},
    {"dup", offsetof(sim_faults, dup_ppm), 1},
    {"corrupt", offsetof(sim_faults, corrupt_ppm), 1},
    {"delay", offsetof(sim_faults, delay_ns), 0},
    {"jitter", offsetof(sim_faults, jitter_ns), 0},
    {"partition_every", offsetof(sim_faults, partition_every_ns), 0},
    {"partition_len", offsetof(sim_faults, partition_len_ns), 0},
    {"gw_crash_every", offsetof(sim_faults, gw_crash_every_ns), 0},
    {"gw_down", offsetof(sim_faults, gw_down_ns), 0},
    {"agent_crash_every", offsetof(sim_faults, agent_crash_every_ns), 0},
    {"agent_down", offsetof(sim_faults, agent_down_ns), 0},
    {"clog_every", offsetof(sim_faults, clog_every_ns), 0},
    {"clog_len", offsetof(sim_faults, clog_len_ns), 0},
    {"pause_every", offsetof(sim_faults, pause_every_ns), 0},
    {"pause_len", offsetof(sim_faults, pause_len_ns), 0},
    {"route_change_every", offsetof(sim_faults, route_change_every_ns), 0},
    {"revoke_every", offsetof(sim_faults, revoke_every_ns), 0},
    {"transfer_every", offsetof(sim_faults, transfer_every_ns), 0},
    {"token_race_every", offsetof(sim_faults, token_race_every_ns), 0},
    {"skew_max", offsetof(sim_faults, skew_max_ns), 0},
};

static int set_fault(sim_faults *f, const char *key, size_t keylen, const char *val) {
  char *end;
  unsigned long long v = strtoull(val, &end, 10);
  if (end == val || (*end != '\0' && *end != ',')) return ATUN_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < sizeof(fault_keys) / sizeof(fault_keys[0]); ++i) {
    const struct fault_key *k = &fault_keys[i];
    if (strlen(k->name) != keylen || strncmp(k->name, key, keylen) != 0) continue;
    if (k->ppm) {
      if (v > SIM_PPM) return ATUN_ERR_INVALID_ARGUMENT;
      *(uint32_t *)((char *)f + k->off) = (uint32_t)v;
    } else {
      if (v > 24ULL * 3600 * 1000) return ATUN_ERR_INVALID_ARGUMENT;
      *(uint64_t *)((char *)f + k->off) = v * MS;
    }
    return 0;
  }
  if (keylen == 14 && strncmp(key, "transfer_bytes", 14) == 0 && v >= 1 && v <= (1u << 24)) {
    f->transfer_bytes_max = (uint32_t)v;
    return 0;
  }
  return ATUN_ERR_INVALID_ARGUMENT;
}

int sim_options_set_faults(sim_options *o, const char *spec) {
  const char *p = spec;
  while (*p != '\0') {
    const char *eq = strchr(p, '=');
    if (eq == NULL) return ATUN_ERR_INVALID_ARGUMENT;
    int rv = set_fault(&o->faults, p, (size_t)(eq - p), eq + 1);
    if (rv != 0) return rv;
    const char *comma = strchr(eq, ',');
    if (comma == NULL) break;
    p = comma + 1;
  }
  return 0;
}

void sim_options_print(const sim_options *o, char *buf, size_t buflen) {
  size_t n = (size_t)snprintf(buf, buflen,
                              "seed=%llu scenario=%s agents=%u duration=%llus liveness_bound=%llus "
                              "heartbeat=%llums",
                              (unsigned long long)o->seed, o->scenario, o->agents,
                              (unsigned long long)(o->duration_ns / SEC),
                              (unsigned long long)(o->liveness_ns / SEC),
                              (unsigned long long)(o->heartbeat_ns / MS));
  if (o->gw_restart_at_ns && n < buflen)
    n += (size_t)snprintf(buf + n, buflen - n, " gw_restart_at=%llus gw_restart_down=%llums",
                          (unsigned long long)(o->gw_restart_at_ns / SEC),
                          (unsigned long long)(o->gw_restart_down_ns / MS));
  if (o->shared_prefix_agents && n < buflen)
    n += (size_t)snprintf(buf + n, buflen - n, " shared_prefix_agents=%u", o->shared_prefix_agents);
  for (size_t i = 0; i < sizeof(fault_keys) / sizeof(fault_keys[0]) && n < buflen; ++i) {
    const struct fault_key *k = &fault_keys[i];
    if (k->ppm)
      n += (size_t)snprintf(buf + n, buflen - n, " %s=%uppm", k->name,
                            *(const uint32_t *)((const char *)&o->faults + k->off));
    else
      n += (size_t)snprintf(buf + n, buflen - n, " %s=%llums", k->name,
                            (unsigned long long)(*(const uint64_t *)((const char *)&o->faults +
                                                                     k->off) / MS));
  }
  if (n < buflen)
    snprintf(buf + n, buflen - n, " transfer_bytes=%u", o->faults.transfer_bytes_max);
}

/* --- shared helpers ----------------------------------------------------------------- */

void sim_violation(sim_world *w, const char *fmt, ...) {
  sim_result *r = w->r;
  if (r->nviolations < SIM_VIOLATIONS_MAX) {
    va_list ap;
    va_start(ap, fmt);
    char msg[140];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(r->violations[r->nviolations], sizeof(r->violations[0]), "t=%.3fs %s",
             (double)w->now / SEC, msg);
  }
  ++r->nviolations;
  w->stop = 1;
}

void sim_fatal(sim_world *w, const char *what, int rv) {
  sim_violation(w, "%s failed: %s", what, atun_strerror(rv));
}

void sim_log(sim_world *w, const char *fmt, ...) {
  if (w->o.verbose < 2) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[%10.3f] ", (double)w->now / SEC);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* FNV-1a over the run's observable steps. */
void sim_trace(sim_world *w, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t v[3] = {a, b, c};
  uint64_t h = w->r->trace_hash;
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 8; ++k) {
      h ^= (v[i] >> (8 * k)) & 0xff;
      h *= 0x100000001b3ULL;
    }
  w->r->trace_hash = h;
}

atun_tstamp sim_node_ts(const sim_world *w, uint32_t node) {
  atun_tstamp skew = node == SIM_GW_NODE ? w->gw.skew : w->agents[node].skew;
  /* Node clocks start at 1 s so that no node ever sees time 0 (unset). */
  return w->now + skew + SEC;
}

void sim_send(sim_world *w, uint32_t from, uint16_t sport, uint32_t to, uint16_t dport,
              const uint8_t *payload, size_t len) {
  uint8_t buf[SIM_DGRAM_MAX];
  if (len + SIM_HDR_LEN > sizeof(buf)) {
    sim_violation(w, "datagram of %zu bytes", len);
    return;
  }
  buf[0] = (uint8_t)(sport >> 8);
  buf[1] = (uint8_t)sport;
  buf[2] = (uint8_t)(dport >> 8);
  buf[3] = (uint8_t)dport;
  memcpy(buf + SIM_HDR_LEN, payload, len);
  int rv = sim_net_send(&w->net, from, to, buf, len + SIM_HDR_LEN, w->now);
  if (rv != 0) sim_fatal(w, "net send", rv);
}

/* Routes of agent |node| at route version |version|: its own /24 and a v6
 * /112, a /28 that moves with the version, a shared /16 for the first few
 * agents, and a domain. */
void sim_routes_for(const sim_world *w, uint32_t node, uint32_t version, atun_prefix *subnets,
                    size_t *nsubnets, atun_domain *domains, size_t *ndomains) {
  size_t n = 0;
  memset(subnets, 0, sizeof(atun_prefix) * *nsubnets);
  atun_prefix *p = &subnets[n++];
  p->addr.family = ATUN_AF_INET;
  p->addr.bytes[0] = 10;
  p->addr.bytes[1] = (uint8_t)(node >> 8);
  p->addr.bytes[2] = (uint8_t)node;
  p->len = 24;
  p = &subnets[n++];
  p->addr.family = ATUN_AF_INET6;
  p->addr.bytes[0] = 0xfd;
  p->addr.bytes[10] = (uint8_t)(node >> 8);
  p->addr.bytes[11] = (uint8_t)node;
  p->addr.bytes[13] = (uint8_t)version;
  p->len = 112;
  p = &subnets[n++];
  p->addr.family = ATUN_AF_INET;
  p->addr.bytes[0] = 172;
  p->addr.bytes[1] = (uint8_t)(16 + (version & 15));
  p->addr.bytes[2] = (uint8_t)node;
  p->addr.bytes[3] = (uint8_t)((node >> 8) << 4);
  p->len = 28;
  if (node <= w->o.shared_prefix_agents) {
    p = &subnets[n++];
    p->addr.family = ATUN_AF_INET;
    p->addr.bytes[0] = 192;
    p->addr.bytes[1] = 168;
    p->len = 16;
  }
  *nsubnets = n;
  memset(domains, 0, sizeof(atun_domain));
  snprintf(domains[0].name, sizeof(domains[0].name), "a%u.v%u.sim.example", node, version);
  *ndomains = 1;
}

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

/* Order-independent: the registry may list routes in any order. */
uint64_t sim_routes_hash(const atun_prefix *subnets, size_t nsubnets,
                         const atun_route_domain *domains, size_t ndomains) {
  uint64_t sum = 0;
  for (size_t i = 0; i < nsubnets; ++i) {
    uint64_t h = (uint64_t)subnets[i].addr.family << 8 | subnets[i].len;
    for (int k = 0; k < 16; ++k) h = mix(h ^ subnets[i].addr.bytes[k]);
    sum += mix(h);
  }
  for (size_t i = 0; i < ndomains; ++i) {
    uint64_t h = 0x646f6d;
    for (const char *c = domains[i].name; *c; ++c) h = mix(h ^ (uint8_t)*c);
    sum += mix(h);
  }
  return sum;
}

uint8_t sim_transfer_byte(uint64_t id, uint32_t i) {
  return (uint8_t)(mix(id * 0x9e3779b97f4a7c15ULL + i / 8) >> (8 * (i % 8)));
}

static uint64_t compute_route_hash(const sim_world *w, uint32_t node, uint32_t version) {
  atun_prefix s[8];
  atun_domain d[4];
  atun_route_domain rd[4];
  size_t ns = 8, nd = 4;
  sim_routes_for(w, node, version, s, &ns, d, &nd);
  for (size_t i = 0; i < nd; ++i) {
    memcpy(rd[i].name, d[i].name, sizeof(rd[i].name));
    rd[i].auto_detected = d[i].auto_detected;
  }
  return sim_routes_hash(s, ns, rd, nd);
}

/* Hashes of an agent's route versions, computed once each. */
static uint64_t agent_route_hash(sim_world *w, uint32_t node, uint32_t version) {
  sim_agent *a = &w->agents[node];
  ATUN_ASSERT(version < SIM_ROUTE_VERSIONS_MAX);
  if (a->route_hash[version] == 0) a->route_hash[version] = compute_route_hash(w, node, version);
  return a->route_hash[version];
}

/* --- faults -------------------------------------------------------------------------- */

static void schedule(sim_world *w, atun_tstamp at, uint32_t kind, uint32_t node, uint64_t data) {
  if (sim_evq_push(&w->q, at, kind, node, (void *)(uintptr_t)data) != 0)
    sim_fatal(w, "schedule", ATUN_ERR_FULL);
}

/* Next occurrence of a recurring fault: uniform in [0, 2 * mean], so the
 * mean interval is |mean|. */
static void schedule_fault(sim_world *w, uint64_t mean, uint32_t kind) {
  if (mean == 0 || w->liveness) return;
  atun_tstamp at = w->now + 1 + atun_testrng_below(&w->rng, 2 * mean);
  if (at < w->o.duration_ns) schedule(w, at, EV_FAULT, 0, kind);
}

static uint32_t random_agent(sim_world *w) {
  return 1 + (uint32_t)atun_testrng_below(&w->rng, w->o.agents);
}

static void set_partition(sim_world *w, uint32_t node, int dir, int up) {
  if (node == SIM_GW_NODE) {
    for (uint32_t n = 1; n <= w->o.agents; ++n) set_partition(w, n, dir, up);
    return;
  }
  if (dir & 1) sim_net_link(&w->net, node, SIM_GW_NODE)->p.up = up;
  if (dir & 2) sim_net_link(&w->net, SIM_GW_NODE, node)->p.up = up;
}

static void fault_partition(sim_world *w) {
  /* One node in ten partitions is the gateway cut off from everyone. */
  uint32_t node = atun_testrng_below(&w->rng, 10) == 0 ? SIM_GW_NODE : random_agent(w);
  int dir = 1 + (int)atun_testrng_below(&w->rng, 3);
  set_partition(w, node, dir, 0);
  ++w->r->partitions;
  sim_log(w, "fault: partition node %u dir %d", node, dir);
  atun_tstamp len = 1 + atun_testrng_below(&w->rng, 2 * w->o.faults.partition_len_ns);
  schedule(w, w->now + len, EV_FAULT, node, F_PARTITION_END | (uint64_t)dir << 8);
}

static void fault_clog(sim_world *w) {
  uint32_t node = random_agent(w);
  int up = coin(&w->rng);
  sim_link *l = up ? sim_net_link(&w->net, node, SIM_GW_NODE) : sim_net_link(&w->net, SIM_GW_NODE, node);
  l->clog_until = w->now + 1 + atun_testrng_below(&w->rng, 2 * w->o.faults.clog_len_ns);
  ++w->r->clogs;
  sim_log(w, "fault: clog %s link of agent %u", up ? "up" : "down", node);
}

static void fault_pause(sim_world *w) {
  uint32_t node = atun_testrng_below(&w->rng, 5) == 0 ? SIM_GW_NODE : random_agent(w);
  atun_tstamp until = w->now + 1 + atun_testrng_below(&w->rng, 2 * w->o.faults.pause_len_ns);
  if (node == SIM_GW_NODE) w->gw.paused_until = until;
  else w->agents[node].paused_until = until;
  ++w->r->pauses;
  sim_log(w, "fault: pause node %u", node);
}

static void fault_agent_crash(sim_world *w) {
  sim_agent *a = &w->agents[random_agent(w)];
  if (a->crashed) return;
  sim_agent_crash(a);
  ++w->r->agent_crashes;
  sim_log(w, "fault: agent %u crashes", a->node);
  atun_tstamp down = 1 + atun_testrng_below(&w->rng, 2 * w->o.faults.agent_down_ns);
  schedule(w, w->now + down, EV_FAULT, a->node, F_AGENT_RESTART);
}

static void fault_gw_crash(sim_world *w, atun_tstamp down) {
  if (!w->gw.up) return;
  sim_gw_crash(w);
  ++w->r->gw_crashes;
  sim_log(w, "fault: gateway crashes for %llu ms", (unsigned long long)(down / MS));
  schedule(w, w->now + down, EV_FAULT, 0, F_GW_RESTART);
}

static void fault_revoke(sim_world *w) {
  uint32_t revoked = 0;
  for (uint32_t n = 1; n <= w->o.agents; ++n) revoked += w->gw.revoked[n];
  /* Keep most of the fleet: liveness needs agents to converge. */
  if (2 * (revoked + 1) > w->o.agents) return;
  uint32_t node = random_agent(w);
  sim_log(w, "fault: revoke agent %u", node);
  sim_gw_revoke(w, node);
}

static void fault_token_race(sim_world *w) {
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  if (!w->gw.up || sim_gw_issue_token(w, secret) != 0) return;
  uint32_t racers = (uint32_t)draw(&w->rng, 2, SIM_TOKEN_RACERS_MAX);
  for (uint32_t i = 0; i < racers; ++i) {
    sim_agent *a = &w->agents[random_agent(w)];
    memcpy(a->token, secret, sizeof(secret));
    a->enroll_tries = 0;
    a->enroll_done = 0;
    schedule(w, w->now + atun_testrng_below(&w->rng, 2 * SEC), EV_ENROLL, a->node, 0);
  }
}

static void on_fault(sim_world *w, uint32_t node, uint64_t data) {
  uint32_t kind = (uint32_t)(data & 0xff);
  const sim_faults *f = &w->o.faults;
  switch (kind) {
  case F_GW_CRASH:
    fault_gw_crash(w, 1 + atun_testrng_below(&w->rng, 2 * f->gw_down_ns));
    schedule_fault(w, f->gw_crash_every_ns, F_GW_CRASH);
    break;
  case F_GW_RESTART:
    if (!w->gw.up && sim_gw_start(w) != 0) sim_fatal(w, "gateway restart", ATUN_ERR_NOMEM);
    break;
  case F_AGENT_CRASH:
    fault_agent_crash(w);
    schedule_fault(w, f->agent_crash_every_ns, F_AGENT_CRASH);
    break;
  case F_AGENT_RESTART:
    if (w->agents[node].crashed && sim_agent_start(&w->agents[node]) != 0)
      sim_fatal(w, "agent restart", ATUN_ERR_NOMEM);
    break;
  case F_PARTITION:
    fault_partition(w);
    schedule_fault(w, f->partition_every_ns, F_PARTITION);
    break;
  case F_PARTITION_END:
    set_partition(w, node, (int)(data >> 8), 1);
    break;
  case F_CLOG:
    fault_clog(w);
    schedule_fault(w, f->clog_every_ns, F_CLOG);
    break;
  case F_PAUSE:
    fault_pause(w);
    schedule_fault(w, f->pause_every_ns, F_PAUSE);
  schedule_fault(w, f->clog_every_ns, F_CLOG);
    break;
  case F_ROUTE_CHANGE:
    sim_agent_change_routes(&w->agents[random_agent(w)]);
    schedule_fault(w, f->route_change_every_ns, F_ROUTE_CHANGE);
    break;
  case F_REVOKE:
    fault_revoke(w);
    schedule_fault(w, f->revoke_every_ns, F_REVOKE);
    break;
  case F_TRANSFER:
    sim_gw_start_transfer(w, 0);
    schedule_fault(w, f->transfer_every_ns, F_TRANSFER);
    break;
  case F_TOKEN_RACE:
    fault_token_race(w);
    schedule_fault(w, f->token_race_every_ns, F_TOKEN_RACE);
    break;
  default:
    break;
  }
}

static void schedule_all_faults(sim_world *w) {
  const sim_faults *f = &w->o.faults;
  schedule_fault(w, f->gw_crash_every_ns, F_GW_CRASH);
  schedule_fault(w, f->agent_crash_every_ns, F_AGENT_CRASH);
  schedule_fault(w, f->partition_every_ns, F_PARTITION);
  schedule_fault(w, f->pause_every_ns, F_PAUSE);
  schedule_fault(w, f->clog_every_ns, F_CLOG);
  schedule_fault(w, f->route_change_every_ns, F_ROUTE_CHANGE);
  schedule_fault(w, f->revoke_every_ns, F_REVOKE);
  schedule_fault(w, f->transfer_every_ns, F_TRANSFER);
  schedule_fault(w, f->token_race_every_ns, F_TOKEN_RACE);
  if (w->o.gw_restart_at_ns) {
    schedule(w, w->o.gw_restart_at_ns, EV_FAULT, 0, F_GW_CRASH | 0x100);
  }
}

/* The liveness phase: every link up and clean, every node running. */
static void heal(sim_world *w) {
  w->liveness = 1;
  w->heal_at = w->now;
  sim_link_params clean = sim_link_params_default();
  clean.delay_ns = w->o.faults.delay_ns;
  for (uint32_t n = 1; n <= w->o.agents; ++n) {
    sim_net_link(&w->net, n, SIM_GW_NODE)->p = clean;
    sim_net_link(&w->net, SIM_GW_NODE, n)->p = clean;
    sim_net_link(&w->net, n, SIM_GW_NODE)->clog_until = 0;
    sim_net_link(&w->net, SIM_GW_NODE, n)->clog_until = 0;
    sim_agent *a = &w->agents[n];
    a->paused_until = 0;
    if (a->crashed && sim_agent_start(a) != 0) sim_fatal(w, "agent start", ATUN_ERR_NOMEM);
  }
  w->gw.paused_until = 0;
  if (!w->gw.up && sim_gw_start(w) != 0) sim_fatal(w, "gateway start", ATUN_ERR_NOMEM);
  sim_log(w, "heal: liveness phase starts");
}

/* --- invariants ------------------------------------------------------------------------ */

static int check_agent_routes(sim_world *w, sim_agent *a, int need_current) {
  atun_registry_agent_info info;
  atun_tstamp ts = sim_node_ts(w, SIM_GW_NODE);
  int rv = atun_registry_get(w->gw.reg, a->id, ts, &info);
  if (a->revoked) {
    if (rv == 0 && info.status != ATUN_AGENT_REVOKED)
      sim_violation(w, "revoked agent %u has status %s", a->node,
                    atun_agent_status_name(info.status));
    return 0;
  }
  if (rv != 0 || info.status != ATUN_AGENT_ONLINE) return 0;
  atun_prefix s[8];
  atun_route_domain d[4];
  if (atun_registry_agent_routes(w->gw.reg, a->id, s, 8, d, 4) != 0) {
    sim_violation(w, "agent %u: registry routes unreadable", a->node);
    return 0;
  }
  if (!info.has_route_epoch) return 0;
  uint64_t h = sim_routes_hash(s, info.nsubnets, d, info.ndomains);
  if (need_current) return h == agent_route_hash(w, a->node, a->route_version);
  for (uint32_t v = 0; v <= a->route_version; ++v)
    if (h == agent_route_hash(w, a->node, v)) return 1;
  sim_violation(w, "agent %u: registry routes match no advertisement", a->node);
  return 0;
}

static void check_bounds(sim_world *w) {
  size_t bound = MEM_BASE_MAX + (size_t)w->o.agents * MEM_PER_AGENT_MAX;
  if (w->fm.live_bytes > bound)
    sim_violation(w, "core memory %zu bytes over the bound %zu", w->fm.live_bytes, bound);
  if (w->q.len > SIM_EVENTS_MAX / 2) sim_violation(w, "event queue holds %zu events", w->q.len);
}

static int transfers_pending(const sim_world *w) {
  for (int i = 0; i < SIM_TRANSFERS_MAX; ++i)
    if (w->transfers[i].used) return 1;
  return 0;
}

/* Converged: every agent not revoked is established and online in the
 * registry with its current routes; then a few transfers have gone through. */
static int converged(sim_world *w) {
  uint32_t ok = 0, wanted = 0;
  for (uint32_t n = 1; n <= w->o.agents; ++n) {
    sim_agent *a = &w->agents[n];
    if (a->revoked) continue;
    ++wanted;
    if (sim_agent_online(a) && check_agent_routes(w, a, 1)) ++ok;
  }
  if (ok != wanted) return 0;
  static const int liveness_transfers = 4;
  if (w->next_transfer_id < w->liveness_first_transfer + liveness_transfers) {
    /* Transfers of the fault phase finish first: they hold the simulated
     * targets' stream slots. */
    if (transfers_pending(w)) return 0;
    for (int i = 0; i < 16 && w->next_transfer_id < w->liveness_first_transfer + liveness_transfers; ++i)
      sim_gw_start_transfer(w, 1);
    return 0;
  }
  return !transfers_pending(w);
}

static void on_check(sim_world *w) {
  check_bounds(w);
  if (w->gw.up) {
    sim_gw_handle_registry_expiry(w);
    /* The full route comparison costs a registry walk per agent: every
     * agent is compared once per ROUTE_CHECK_ROUNDS checks, a slice at a
     * time. */
    uint32_t slice = w->o.agents / ROUTE_CHECK_ROUNDS + 1;
    for (uint32_t i = 0; i < slice && !w->stop; ++i) {
      w->route_check_next = w->route_check_next % w->o.agents + 1;
      check_agent_routes(w, &w->agents[w->route_check_next], 0);
    }
  }
  if (!w->liveness && w->now >= w->o.duration_ns) {
    heal(w);
    w->liveness_first_transfer = w->next_transfer_id;
  }
  if (w->liveness && w->gw.up && converged(w)) {
    w->r->converged_after_ns = w->now - w->heal_at;
    w->r->converged = 1;
    w->stop = 1;
    return;
  }
  if (w->liveness && w->now - w->heal_at > w->o.liveness_ns) {
    uint32_t offline = 0, stale = 0, pending = 0;
    for (uint32_t n = 1; n <= w->o.agents; ++n) {
      sim_agent *a = &w->agents[n];
      if (a->revoked) continue;
      if (!sim_agent_online(a)) ++offline;
      else if (!w->gw.up || !check_agent_routes(w, a, 1)) {
        ++stale;
        atun_registry_agent_info info = {0};
        int rv = w->gw.up ? atun_registry_get(w->gw.reg, a->id, sim_node_ts(w, SIM_GW_NODE), &info)
                          : ATUN_ERR_STATE;
        sim_log(w, "agent %u unconverged: registry %s status=%s epoch=%llu(%d) subnets=%zu; "
                "agent epoch=%llu version=%u", n, atun_strerror(rv),
                atun_agent_status_name(info.status), (unsigned long long)info.route_epoch,
                info.has_route_epoch, info.nsubnets,
                (unsigned long long)atun_session_agent_get_epoch(a->session), a->route_version);
      }
    }
    for (int i = 0; i < SIM_TRANSFERS_MAX; ++i) pending += w->transfers[i].used != 0;
    sim_violation(w, "no convergence within %llus after healing: %u agents not established, "
                  "%u without their current routes online, %u transfers pending",
                  (unsigned long long)(w->o.liveness_ns / SEC), offline, stale, pending);
    return;
  }
  schedule(w, w->now + CHECK_EVERY_NS, EV_CHECK, 0, 0);
}

/* --- the event loop ------------------------------------------------------------------- */

static void on_deliver(uint32_t to, uint32_t from, const uint8_t *data, size_t len,
                       atun_tstamp ts, void *ud) {
  sim_world *w = ud;
  (void)ts;
  sim_trace(w, to << 16 | from, len, 1);
  if (len < SIM_HDR_LEN) return;
  uint16_t sport = (uint16_t)(data[0] << 8 | data[1]);
  uint16_t dport = (uint16_t)(data[2] << 8 | data[3]);
  if (to == SIM_GW_NODE)
    sim_gw_on_datagram(w, from, sport, dport, data + SIM_HDR_LEN, len - SIM_HDR_LEN);
  else
    sim_agent_on_datagram(&w->agents[to], sport, dport, data + SIM_HDR_LEN, len - SIM_HDR_LEN);
}

/* A paused process handles nothing: its events wait for the pause to end,
 * in their order. */
static int deferred(sim_world *w, const sim_event *ev) {
  uint32_t node = ev->node;
  if (ev->kind == SIM_EV_DELIVER || ev->kind == EV_AGENT_TIMER || ev->kind == EV_CONN_TIMER) {
    atun_tstamp until = node == SIM_GW_NODE ? w->gw.paused_until : w->agents[node].paused_until;
    if (until > w->now) {
      /* A deferred timer stays the armed one, at its new time. */
      if (ev->kind == EV_AGENT_TIMER && w->agents[node].timer_at == ev->at)
        w->agents[node].timer_at = until;
      if (ev->kind == EV_CONN_TIMER) sim_gw_defer_conn_timer(w, (uint64_t)(uintptr_t)ev->data,
                                                             ev->at, until);
      if (sim_evq_push(&w->q, until, ev->kind, ev->node, ev->data) != 0)
        sim_fatal(w, "defer", ATUN_ERR_FULL);
      return 1;
    }
  }
  return 0;
}

static void dispatch(sim_world *w, const sim_event *ev) {
  if (deferred(w, ev)) return;
  uint64_t data = (uint64_t)(uintptr_t)ev->data;
  switch (ev->kind) {
  case SIM_EV_DELIVER:
    sim_net_on_event(&w->net, ev);
    break;
  case EV_AGENT_TIMER:
    sim_trace(w, ev->at, ev->node, 2);
    /* Only the timer armed last counts: an earlier arming left events
     * behind that must not multiply. */
    if (data == w->agents[ev->node].incarnation && ev->at == w->agents[ev->node].timer_at)
      sim_agent_on_timer(&w->agents[ev->node]);
    break;
  case EV_CONN_TIMER:
    sim_trace(w, ev->at, data, 3);
    sim_gw_on_conn_timer(w, (uint32_t)data, (uint32_t)(data >> 32), ev->at);
    break;
  case EV_FAULT:
    sim_trace(w, ev->at, ev->node << 16 | data, 4);
    if (data == (F_GW_CRASH | 0x100)) fault_gw_crash(w, w->o.gw_restart_down_ns);
    else on_fault(w, ev->node, data);
    break;
  case EV_CHECK:
    on_check(w);
    break;
  case EV_ENROLL:
    sim_agent_enroll_send(&w->agents[ev->node]);
    if (!w->agents[ev->node].enroll_done &&
        w->agents[ev->node].enroll_tries < SIM_ENROLL_TRIES_MAX)
      schedule(w, w->now + SEC, EV_ENROLL, ev->node, 0);
    break;
  default:
    break;
  }
}

static void drain_queue(sim_world *w) {
  sim_event ev;
  while (sim_evq_pop(&w->q, &ev) == 0)
    if (ev.kind == SIM_EV_DELIVER) sim_net_drop_event(&w->net, &ev);
}

static int setup(sim_world *w) {
  atun_testrng_seed(&w->rng, w->o.seed);
  atun_testrng_seed(&w->keyrng, w->o.seed ^ 0x6b657973ULL);
  w->rand = atun_testrng_as_rand(&w->keyrng);
  atun_failmem_init(&w->fm, -1);
  w->mem = &w->fm.mem;
  sim_evq_init(&w->q, w->mem, SIM_EVENTS_MAX);
  sim_link_params lp = sim_link_params_default();
  const sim_faults *f = &w->o.faults;
  lp.delay_ns = f->delay_ns;
  lp.jitter_ns = f->jitter_ns;
  lp.loss_ppm = f->loss_ppm;
  lp.dup_ppm = f->dup_ppm;
  lp.corrupt_ppm = f->corrupt_ppm;
  lp.bandwidth_bps = f->bandwidth_bps;
  int rv = sim_net_init(&w->net, w->mem, &w->q, &w->rng, w->o.agents + 1, &lp, on_deliver, w);
  if (rv != 0) return rv;
  atun_quic_settings_default(&w->qs);
  /* Simulated agents move little data: small windows keep 1,000 of them
   * light. */
  w->qs.stream_window_initial = 256 * 1024;
  w->qs.stream_window_max = 512 * 1024;
  w->qs.conn_window_initial = 1024 * 1024;
  w->qs.conn_window_max = 2 * 1024 * 1024;
  w->qs.stream_send_buffer_max = 512 * 1024;
  w->qs.conn_send_buffer_max = 2 * 1024 * 1024;
  if ((rv = sim_certs_make_ca(&w->ca, &w->keyrng)) != 0) return rv;
  w->agents = atun_mem_calloc(w->mem, (size_t)w->o.agents + 1, sizeof(sim_agent));
  if (w->agents == NULL) return ATUN_ERR_NOMEM;
  if ((rv = sim_gw_init(w)) != 0) return rv;
  for (uint32_t n = 1; n <= w->o.agents; ++n)
    if ((rv = sim_agent_init(w, &w->agents[n], n)) != 0) return rv;
  if ((rv = sim_gw_start(w)) != 0) return rv;
  for (uint32_t n = 1; n <= w->o.agents; ++n)
    if ((rv = sim_agent_start(&w->agents[n])) != 0) return rv;
  schedule_all_faults(w);
  schedule(w, CHECK_EVERY_NS, EV_CHECK, 0, 0);
  return 0;
}

static void teardown(sim_world *w) {
  for (uint32_t n = 1; w->agents != NULL && n <= w->o.agents; ++n) sim_agent_free(&w->agents[n]);
  sim_gw_free(w);
  drain_queue(w);
  atun_mem_free(w->mem, w->agents);
  w->agents = NULL;
  sim_net_free(&w->net);
  sim_evq_free(&w->q);
}

int sim_run(const sim_options *o, sim_result *r) {
  if (o->agents == 0 || o->agents > SIM_AGENTS_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  sim_world *w = calloc(1, sizeof(*w));
  if (w == NULL) return ATUN_ERR_NOMEM;
  memset(r, 0, sizeof(*r));
  r->trace_hash = 0xcbf29ce484222325ULL;
  w->o = *o;
  w->r = r;
  int rv = setup(w);
  if (rv == 0) {
    sim_event ev;
    while (!w->stop && sim_evq_pop(&w->q, &ev) == 0) {
      ATUN_ASSERT(ev.at >= w->now);
      w->now = ev.at;
      ++r->events;
      ++r->events_by_kind[ev.kind < 8 ? ev.kind : 0];
      dispatch(w, &ev);
    }
  }
  r->end_ns = w->now;
  r->net = w->net.stats;
  teardown(w);
  r->mem_peak_bytes = w->fm.peak_bytes;
  r->mem_live_after = w->fm.live;
  if (rv == 0 && w->fm.live != 0) {
    sim_violation(w, "%ld blocks (%zu bytes) still allocated after teardown", w->fm.live,
                  w->fm.live_bytes);
  }
  r->ok = rv == 0 && r->nviolations == 0 && r->converged;
  free(w);
  return rv;
}
