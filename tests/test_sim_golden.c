/*
 * Golden traces: fixed seeds whose event-trace hash is recorded here.  A
 * change in any timing, datagram size or state machine decision changes the
 * hash; when the change is intended, rerun the printed command and update
 * the constant in the same commit, saying why.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "world.h"

typedef struct golden {
  uint64_t seed;
  const char *scenario;
  uint32_t agents;
  uint64_t duration_s;
  uint64_t trace;
} golden;

static const golden goldens[] = {
    {11, "steady", 4, 60, 0xd30fd6071ffa8c5cULL},
    {12, "mixed", 5, 120, 0xf792b449abbb6f51ULL},
    {13, "lossy_transfer", 3, 60, 0xc169594d86c40464ULL},
};

static void check(const golden *g) {
  sim_options o;
  cr_assert_eq(sim_options_from_seed(&o, g->seed, g->scenario, g->agents,
                                     g->duration_s * 1000000000ULL), 0);
  sim_result r;
  cr_assert_eq(sim_run(&o, &r), 0);
  cr_assert(r.ok, "seed %llu failed: %s", (unsigned long long)g->seed,
            r.nviolations ? r.violations[0] : "no convergence");
  cr_assert_eq(r.trace_hash, g->trace,
               "trace of seed %llu is %016llx, golden %016llx "
               "(atun-sim --seed %llu --scenario %s --agents %u --duration %llu)",
               (unsigned long long)g->seed, (unsigned long long)r.trace_hash,
               (unsigned long long)g->trace, (unsigned long long)g->seed, g->scenario,
               g->agents, (unsigned long long)g->duration_s);
}

Test(sim_golden, steady_seed_11) { check(&goldens[0]); }
Test(sim_golden, mixed_seed_12) { check(&goldens[1]); }
Test(sim_golden, lossy_transfer_seed_13) { check(&goldens[2]); }

Test(sim_options, unknown_scenario_and_bad_faults_are_refused) {
  sim_options o;
  cr_assert_eq(sim_options_from_seed(&o, 1, "nonsense", 3, 0), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(sim_options_from_seed(&o, 1, "mixed", 3, 0), 0);
  cr_assert_eq(sim_options_set_faults(&o, "loss=1000001"), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(sim_options_set_faults(&o, "nosuch=1"), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(sim_options_set_faults(&o, "loss"), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(sim_options_set_faults(&o, "loss=x"), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(sim_options_set_faults(&o, "loss=250000,delay=40,transfer_bytes=4096"), 0);
  cr_assert_eq(o.faults.loss_ppm, 250000);
  cr_assert_eq(o.faults.delay_ns, 40 * 1000000ULL);
  cr_assert_eq(o.faults.transfer_bytes_max, 4096);
}

Test(sim_options, agents_override_keeps_the_other_draws) {
  sim_options a, b;
  cr_assert_eq(sim_options_from_seed(&a, 77, "mixed", 0, 0), 0);
  cr_assert_eq(sim_options_from_seed(&b, 77, "mixed", a.agents + 1, 0), 0);
  cr_assert_eq(b.agents, a.agents + 1);
  b.agents = a.agents;
  cr_assert_eq(memcmp(&a.faults, &b.faults, sizeof(a.faults)), 0);
}

Test(sim_run, refuses_fleet_sizes_out_of_bounds) {
  sim_options o;
  cr_assert_eq(sim_options_from_seed(&o, 1, "steady", 1, 0), 0);
  sim_result r;
  o.agents = 0;
  cr_assert_eq(sim_run(&o, &r), ATUN_ERR_INVALID_ARGUMENT);
  o.agents = SIM_AGENTS_MAX + 1;
  cr_assert_eq(sim_run(&o, &r), ATUN_ERR_INVALID_ARGUMENT);
}
