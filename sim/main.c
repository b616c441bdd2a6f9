/*
 * atun-sim: runs the deterministic simulation for one seed (or a range of
 * seeds) and reports what it saw.  Exit codes: 0 every run passed, 1 an
 * invariant broke or the fleet did not converge, 2 usage, 3 two runs of one
 * seed differed, 4 the simulator itself failed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "world.h"

#define SEC 1000000000.0

static void usage(FILE *f) {
  fprintf(f,
          "usage: atun-sim [--seed N] [--seeds A-B] [--scenario NAME] [--agents N]\n"
          "                [--duration SECONDS] [--faults k=v,...] [--twice] [--verbose]\n"
          "\n"
          "Runs the gateway, a fleet of agents, real QUIC connections and the core\n"
          "state machines over a simulated network with a virtual clock.  One seed\n"
          "fixes the whole run; a failing run prints the command that replays it.\n"
          "\n"
          "  --seed N          the seed (default 1)\n"
          "  --seeds A-B       run every seed from A to B\n"
          "  --scenario NAME   one of:");
  for (int i = 0; sim_scenarios[i] != NULL; ++i) fprintf(f, " %s", sim_scenarios[i]);
  fprintf(f,
          "\n"
          "  --agents N        fleet size (default: drawn from the seed, 2..12)\n"
          "  --duration S      simulated seconds of the fault phase (default 300)\n"
          "  --faults k=v,...  override fault rates: loss, dup, corrupt (ppm);\n"
          "                    delay, jitter, *_every, *_len, *_down, skew_max (ms);\n"
          "                    transfer_bytes\n"
          "  --twice           run each seed twice and compare the trace hashes\n"
          "  --verbose         print the options and the result of every run;\n"
          "                    twice: also log every event of note\n"
          "  --help, --version\n"
          "\n"
          "exit codes: 0 passed, 1 invariant broken or no convergence, 2 usage,\n"
          "            3 nondeterminism, 4 simulator failure\n");
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') return -1;
  *out = v;
  return 0;
}

typedef struct args {
  uint64_t seed_lo, seed_hi;
  const char *scenario;
  uint64_t agents, duration_s;
  const char *faults;
  int twice, verbose;
} args;

static int parse_args(int argc, char **argv, args *a) {
  memset(a, 0, sizeof(*a));
  a->seed_lo = a->seed_hi = 1;
  for (int i = 1; i < argc; ++i) {
    const char *k = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(k, "--help") == 0) {
      usage(stdout);
      exit(0);
    } else if (strcmp(k, "--version") == 0) {
      printf("atun-sim 0.1.0\n");
      exit(0);
    } else if (strcmp(k, "--twice") == 0) {
      a->twice = 1;
    } else if (strcmp(k, "--verbose") == 0) {
      ++a->verbose;
    } else if (v == NULL) {
      return -1;
    } else if (strcmp(k, "--seed") == 0) {
      if (parse_u64(v, &a->seed_lo) != 0) return -1;
      a->seed_hi = a->seed_lo;
      ++i;
    } else if (strcmp(k, "--seeds") == 0) {
      char lo[32];
      const char *dash = strchr(v, '-');
      if (dash == NULL || (size_t)(dash - v) >= sizeof(lo)) return -1;
      memcpy(lo, v, (size_t)(dash - v));
      lo[dash - v] = '\0';
      if (parse_u64(lo, &a->seed_lo) != 0 || parse_u64(dash + 1, &a->seed_hi) != 0 ||
          a->seed_hi < a->seed_lo)
        return -1;
      ++i;
    } else if (strcmp(k, "--scenario") == 0) {
      a->scenario = v;
      ++i;
    } else if (strcmp(k, "--agents") == 0) {
      if (parse_u64(v, &a->agents) != 0 || a->agents == 0 || a->agents > SIM_AGENTS_MAX) return -1;
      ++i;
    } else if (strcmp(k, "--duration") == 0) {
      if (parse_u64(v, &a->duration_s) != 0 || a->duration_s == 0 || a->duration_s > 86400)
        return -1;
      ++i;
    } else if (strcmp(k, "--faults") == 0) {
      a->faults = v;
      ++i;
    } else {
      return -1;
    }
  }
  return 0;
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / SEC;
}

static void print_result(const sim_options *o, const sim_result *r, double wall) {
  double simsec = (double)r->end_ns / SEC;
  printf("result: %s seed=%llu trace=%016llx sim_time=%.1fs converged_after=%.1fs events=%llu\n",
         r->ok ? "PASS" : "FAIL", (unsigned long long)o->seed, (unsigned long long)r->trace_hash,
         simsec, (double)r->converged_after_ns / SEC, (unsigned long long)r->events);
  printf("  sessions=%llu reconnects=%llu peak_handshakes_per_s=%llu (after a gateway restart %llu) "
         "transfers ok=%llu "
         "failed=%llu bytes_verified=%llu\n",
         (unsigned long long)r->handshakes, (unsigned long long)r->reconnects,
         (unsigned long long)r->handshake_peak_per_s,
         (unsigned long long)r->handshake_peak_restart_per_s, (unsigned long long)r->transfers_ok,
         (unsigned long long)r->transfers_failed, (unsigned long long)r->bytes_verified);
  printf("  faults: gw_crashes=%llu agent_crashes=%llu partitions=%llu clogs=%llu pauses=%llu "
         "route_changes=%llu revocations=%llu revoked_refused=%llu tokens=%llu redeemed=%llu "
         "refused=%llu\n",
         (unsigned long long)r->gw_crashes, (unsigned long long)r->agent_crashes,
         (unsigned long long)r->partitions, (unsigned long long)r->clogs,
         (unsigned long long)r->pauses,
         (unsigned long long)r->route_changes, (unsigned long long)r->revocations,
         (unsigned long long)r->revoked_refused, (unsigned long long)r->tokens_issued,
         (unsigned long long)r->token_redeemed, (unsigned long long)r->token_refused);
  printf("  net: sent=%llu delivered=%llu lost=%llu dup=%llu corrupted=%llu down=%llu\n",
         (unsigned long long)r->net.sent, (unsigned long long)r->net.delivered,
         (unsigned long long)r->net.drop_loss, (unsigned long long)r->net.dup,
         (unsigned long long)r->net.corrupted, (unsigned long long)r->net.drop_down);
  printf("  memory: core peak=%zu bytes, left after teardown=%ld blocks\n", r->mem_peak_bytes,
         r->mem_live_after);
  printf("  speed: %.2f s wall, %.0f simulated s per wall s, %.0f agent-s per wall s\n", wall,
         wall > 0 ? simsec / wall : 0.0, wall > 0 ? simsec * o->agents / wall : 0.0);
  printf("  events: deliveries=%llu agent_timers=%llu conn_timers=%llu faults=%llu checks=%llu\n",
         (unsigned long long)r->events_by_kind[1], (unsigned long long)r->events_by_kind[2],
         (unsigned long long)r->events_by_kind[3], (unsigned long long)r->events_by_kind[4],
         (unsigned long long)r->events_by_kind[5]);
  for (int i = 0; i < r->nviolations && i < SIM_VIOLATIONS_MAX; ++i)
    printf("  violation: %s\n", r->violations[i]);
}

static void print_repro(const sim_options *o, const args *a) {
  printf("reproduce: atun-sim --seed %llu --scenario %s --agents %u --duration %llu",
         (unsigned long long)o->seed, o->scenario, o->agents,
         (unsigned long long)(o->duration_ns / 1000000000ULL));
  if (a->faults) printf(" --faults %s", a->faults);
  printf(" --verbose --verbose\n");
}

static int run_seed(const args *a, uint64_t seed) {
  sim_options o;
  if (sim_options_from_seed(&o, seed, a->scenario, (uint32_t)a->agents,
                            a->duration_s * 1000000000ULL) != 0) {
    fprintf(stderr, "atun-sim: unknown scenario '%s'\n", a->scenario);
    return 2;
  }
  if (a->faults && sim_options_set_faults(&o, a->faults) != 0) {
    fprintf(stderr, "atun-sim: bad --faults '%s'\n", a->faults);
    return 2;
  }
  o.verbose = a->verbose;
  char line[2048];
  sim_options_print(&o, line, sizeof(line));
  printf("options: %s\n", line);
  fflush(stdout);
  sim_result r, r2;
  double t0 = wall_now();
  if (sim_run(&o, &r) != 0) {
    printf("atun-sim: the simulator failed for seed %llu\n", (unsigned long long)seed);
    return 4;
  }
  print_result(&o, &r, wall_now() - t0);
  if (!r.ok) {
    print_repro(&o, a);
    return 1;
  }
  if (a->twice) {
    o.verbose = 0;
    if (sim_run(&o, &r2) != 0) return 4;
    if (r2.trace_hash != r.trace_hash || r2.events != r.events) {
      printf("nondeterminism: seed %llu gave trace %016llx then %016llx\n",
             (unsigned long long)seed, (unsigned long long)r.trace_hash,
             (unsigned long long)r2.trace_hash);
      print_repro(&o, a);
      return 3;
    }
    printf("  determinism: second run gave the same trace\n");
  }
  return 0;
}

int main(int argc, char **argv) {
  args a;
  if (parse_args(argc, argv, &a) != 0) {
    usage(stderr);
    return 2;
  }
  int worst = 0;
  unsigned passed = 0, failed = 0;
  for (uint64_t s = a.seed_lo; s <= a.seed_hi; ++s) {
    int rv = run_seed(&a, s);
    if (rv == 2) return 2;
    if (rv == 0) ++passed;
    else ++failed;
    if (rv > worst) worst = rv;
    if (s == UINT64_MAX) break;
  }
  printf("%u passed, %u failed\n", passed, failed);
  return worst;
}
