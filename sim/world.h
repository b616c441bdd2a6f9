/*
 * The simulated world: one gateway and a fleet of agents running the real
 * core (session machines, registry, route table, tokens) over real ngtcp2 +
 * wolfSSL connections, on the simulated network of net.h, with a virtual
 * clock.  Nothing here reads a real clock or touches a socket.
 *
 * A run has two phases.  The safety phase injects faults (network faults,
 * partitions, crashes and restarts, pauses, route changes, revocations,
 * transfers, enrollment races) while the invariants are checked.  The
 * liveness phase heals everything and must converge within a stated bound:
 * every agent that was not revoked is online with its current routes, and
 * every transfer started has finished.
 *
 * One u64 seed decides every choice: the fault rates (swarm testing: each
 * seed switches some fault kinds off), every fault's time and target, every
 * dropped, late, duplicated or corrupted datagram, and the keys.  The trace
 * hash summarises the run (event times, kinds, nodes and datagram sizes) so
 * that two runs of one seed can be compared.
 */
#ifndef ATUN_SIM_WORLD_H
#define ATUN_SIM_WORLD_H

#include "net.h"

/* Bounds of a run. */
#define SIM_AGENTS_MAX 4096
#define SIM_EVENTS_MAX ((size_t)1 << 22)
#define SIM_VIOLATIONS_MAX 16
#define SIM_TRANSFERS_MAX 256

typedef struct sim_faults {
  uint32_t loss_ppm;
  uint32_t dup_ppm;
  uint32_t corrupt_ppm;
  uint64_t delay_ns;          /* one-way base delay */
  uint64_t jitter_ns;         /* extra delay in [0, jitter]: reorders */
  uint64_t bandwidth_bps;     /* 0: unlimited */
  uint64_t partition_every_ns;/* mean time between partitions, 0 = off */
  uint64_t partition_len_ns;  /* mean partition length */
  uint64_t gw_crash_every_ns; /* mean time between gateway crashes */
  uint64_t gw_down_ns;        /* mean gateway downtime */
  uint64_t agent_crash_every_ns; /* fleet-wide mean between agent crashes */
  uint64_t agent_down_ns;
  uint64_t clog_every_ns;     /* mean between clogged links (held, not lost) */
  uint64_t clog_len_ns;
  uint64_t pause_every_ns;    /* fleet-wide mean between process pauses */
  uint64_t pause_len_ns;
  uint64_t route_change_every_ns; /* fleet-wide */
  uint64_t revoke_every_ns;   /* fleet-wide */
  uint64_t transfer_every_ns; /* mean between transfers started */
  uint32_t transfer_bytes_max;
  uint64_t token_race_every_ns; /* mean between enrollment races */
  uint64_t skew_max_ns;       /* per-node clock offset in [0, max] */
} sim_faults;

typedef struct sim_options {
  uint64_t seed;
  char scenario[32];
  uint32_t agents;
  uint64_t duration_ns;   /* safety phase, simulated */
  uint64_t liveness_ns;   /* bound on convergence after healing */
  uint64_t heartbeat_ns;  /* gateway's heartbeat interval */
  uint64_t gw_restart_at_ns; /* scripted gateway crash (0 = none) */
  uint64_t gw_restart_down_ns;
  uint32_t shared_prefix_agents; /* agents advertising one common prefix */
  sim_faults faults;
  int verbose;
} sim_options;

typedef struct sim_result {
  int ok;                 /* no violation and converged */
  int converged;
  uint64_t trace_hash;
  atun_tstamp end_ns;     /* simulated time at the end */
  atun_tstamp converged_after_ns; /* liveness phase length until converged */
  uint64_t events;
  uint64_t events_by_kind[8]; /* deliveries, agent timers, conn timers, ... */
  uint64_t handshakes;    /* control sessions established */
  uint64_t handshake_peak_per_s;
  uint64_t handshake_peak_restart_per_s; /* after the first gateway restart */
  uint64_t reconnects;
  uint64_t transfers_ok, transfers_failed;
  uint64_t bytes_verified;
  uint64_t tokens_issued, token_redeemed, token_refused;
  uint64_t revocations, revoked_refused;
  uint64_t gw_crashes, agent_crashes, partitions, clogs, pauses, route_changes;
  sim_net_stats net;
  size_t mem_peak_bytes;
  long mem_live_after;    /* blocks left after teardown: must be 0 */
  int nviolations;
  char violations[SIM_VIOLATIONS_MAX][160];
} sim_result;

/* Fills |o| from |seed|: the swarm draw of fault kinds and rates for the
 * named scenario (NULL or "mixed": everything may happen).  Returns 0 or
 * ATUN_ERR_NOT_FOUND for an unknown scenario. */
int sim_options_from_seed(sim_options *o, uint64_t seed, const char *scenario,
                          uint32_t agents, uint64_t duration_ns);

/* Overrides single fault rates from "key=value,key=value" (values in ppm
 * for rates, ms for times).  Returns 0 or ATUN_ERR_INVALID_ARGUMENT. */
int sim_options_set_faults(sim_options *o, const char *spec);

/* Writes the options as one line of key=value pairs. */
void sim_options_print(const sim_options *o, char *buf, size_t buflen);

/* Names of the scenarios, NULL-terminated. */
extern const char *const sim_scenarios[];

/* Runs the world described by |o| to the end and fills |r|.  Returns 0 (see
 * r->ok for the verdict) or an error that stopped the run itself
 * (ATUN_ERR_NOMEM, ATUN_ERR_INTERNAL). */
int sim_run(const sim_options *o, sim_result *r);

#endif
