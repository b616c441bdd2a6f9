#include <criterion/criterion.h>
#include <string.h>

#include "backoff.h"
#include "support.h"

#define SEC ATUN_NS_PER_S
#define MS ATUN_NS_PER_MS
#define T0 ((atun_tstamp)1000 * SEC)

#define SEEDS 1000
#define STEPS 20

static uint64_t ceiling_at(int k) {
  return k >= 6 ? 60 * SEC : SEC << k;
}

/* Hands out 64-bit values from a script, big-endian as the backoff reads
 * them, then fails; counts calls. */
typedef struct script_rng {
  const uint64_t *values;
  size_t count;
  size_t calls;
} script_rng;

static int script_fill(uint8_t *dest, size_t len, void *ud) {
  script_rng *s = ud;
  if (len != 8 || s->calls == s->count) return -1;
  uint64_t v = s->values[s->calls++];
  for (int i = 7; i >= 0; --i, v >>= 8) dest[i] = (uint8_t)v;
  return 0;
}

static int zero_fill(uint8_t *dest, size_t len, void *ud) {
  memset(dest, 0, len);
  return 0;
}

static int ones_fill(uint8_t *dest, size_t len, void *ud) {
  ++*(int *)ud;
  memset(dest, 0xff, len);
  return 0;
}

static void init_default(atun_backoff *b, const atun_rand *r) {
  atun_backoff_settings s;
  atun_backoff_settings_default(&s);
  cr_assert_eq(atun_backoff_init(b, &s, r), 0);
}

static uint64_t next_ok(atun_backoff *b, atun_tstamp ts) {
  uint64_t d = UINT64_MAX;
  int rv = atun_backoff_next(b, ts, &d);
  cr_assert_eq(rv, 0, "next: %s", atun_strerror(rv));
  return d;
}

Test(backoff, default_settings) {
  atun_backoff_settings s;
  atun_backoff_settings_default(&s);
  cr_assert_eq(s.base_ns, 1 * SEC);
  cr_assert_eq(s.cap_ns, 60 * SEC);
  cr_assert_eq(s.stable_ns, 30 * SEC);
}

Test(backoff, settings_validation) {
  atun_rand r = {zero_fill, NULL};
  atun_rand nofill = {NULL, NULL};
  atun_backoff b;
  atun_backoff_settings d, s;
  atun_backoff_settings_default(&d);
  const uint64_t max = ATUN_BACKOFF_DURATION_MAX_NS;

  s = d, s.base_ns = 0;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), ATUN_ERR_INVALID_ARGUMENT);
  s = d, s.cap_ns = s.base_ns - 1;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), ATUN_ERR_INVALID_ARGUMENT);
  s = d, s.cap_ns = max + 1;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), ATUN_ERR_INVALID_ARGUMENT);
  s = d, s.stable_ns = 0;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), ATUN_ERR_INVALID_ARGUMENT);
  s = d, s.stable_ns = max + 1;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_backoff_init(&b, &d, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_backoff_init(&b, &d, &nofill), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_backoff_init(&b, NULL, &r), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_backoff_init(NULL, &d, &r), ATUN_ERR_INVALID_ARGUMENT);

  /* The bounds themselves are accepted. */
  s = d, s.cap_ns = s.base_ns;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), 0);
  s.base_ns = 1, s.cap_ns = max, s.stable_ns = max;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), 0);
  s.stable_ns = 1;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), 0);
}

Test(backoff, initial_state) {
  atun_rand r = {zero_fill, NULL};
  atun_backoff b;
  init_default(&b, &r);
  cr_assert_eq(atun_backoff_get_expiry(&b), ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_backoff_attempt(&b), 0);
}

/* Step k (from 0) waits within [0, min(60 s, 1 s * 2^k)], for every seed. */
Test(backoff, every_step_within_its_ceiling) {
  for (uint64_t seed = 0; seed < SEEDS; ++seed) {
    atun_testrng g;
    atun_testrng_seed(&g, seed);
    atun_rand r = atun_testrng_as_rand(&g);
    atun_backoff b;
    init_default(&b, &r);
    atun_tstamp ts = T0;
    for (int k = 0; k < STEPS; ++k) {
      uint64_t d = next_ok(&b, ts);
      cr_assert_leq(d, ceiling_at(k), "seed %lu step %d: %lu", (unsigned long)seed,
                    k, (unsigned long)d);
      cr_assert_eq(atun_backoff_get_expiry(&b), ts + d);
      cr_assert_eq(atun_backoff_attempt(&b), (uint64_t)k + 1);
      ts += d;
    }
  }
}

/* The mean of each step over the seeds is close to half its ceiling, and the
 * draws reach both ends of the range: full jitter, not "cap/2 + jitter".
 * With 1000 draws the mean's standard deviation is 0.9 % of the ceiling;
 * the bounds are 11 of them away, and the seeds are fixed anyway. */
Test(backoff, spread_is_full_jitter) {
  double sum[STEPS] = {0};
  uint64_t lo[STEPS], hi[STEPS] = {0};
  for (int k = 0; k < STEPS; ++k) lo[k] = UINT64_MAX;
  for (uint64_t seed = 0; seed < SEEDS; ++seed) {
    atun_testrng g;
    atun_testrng_seed(&g, 0x5eed0000 + seed);
    atun_rand r = atun_testrng_as_rand(&g);
    atun_backoff b;
    init_default(&b, &r);
    for (int k = 0; k < STEPS; ++k) {
      uint64_t d = next_ok(&b, T0);
      sum[k] += (double)d;
      if (d < lo[k]) lo[k] = d;
      if (d > hi[k]) hi[k] = d;
    }
  }
  for (int k = 0; k < STEPS; ++k) {
    double c = (double)ceiling_at(k);
    double mean = sum[k] / SEEDS;
    cr_assert(mean > 0.4 * c && mean < 0.6 * c, "step %d mean %.3f of ceiling", k,
              mean / c);
    cr_assert_lt((double)lo[k], 0.02 * c, "step %d", k);
    cr_assert_gt((double)hi[k], 0.98 * c, "step %d", k);
  }
}

Test(backoff, cap_reached_and_kept_for_thousands_of_attempts) {
  atun_testrng g;
  atun_testrng_seed(&g, 5);
  atun_rand r = atun_testrng_as_rand(&g);
  atun_backoff b;
  init_default(&b, &r);
  for (int k = 0; k < 6; ++k) {
    cr_assert_eq(b.ceiling_ns, ceiling_at(k));
    next_ok(&b, T0);
  }
  uint64_t hi = 0;
  for (int k = 6; k < 5000; ++k) {
    cr_assert_eq(b.ceiling_ns, 60 * SEC, "step %d", k);
    uint64_t d = next_ok(&b, T0);
    cr_assert_leq(d, 60 * SEC);
    if (d > hi) hi = d;
  }
  cr_assert_gt(hi, 59 * SEC);
  cr_assert_eq(atun_backoff_attempt(&b), 5000);
}

/* The smallest base and the largest cap: 46 doublings, then saturation; no
 * step may wrap around. */
Test(backoff, doubling_never_overflows) {
  atun_testrng g;
  atun_testrng_seed(&g, 6);
  atun_rand r = atun_testrng_as_rand(&g);
  atun_backoff_settings s = {1, ATUN_BACKOFF_DURATION_MAX_NS, 30 * SEC};
  atun_backoff b;
  cr_assert_eq(atun_backoff_init(&b, &s, &r), 0);
  uint64_t prev = 0;
  for (int k = 0; k < 3000; ++k) {
    cr_assert_geq(b.ceiling_ns, prev, "ceiling shrank at step %d", k);
    cr_assert_leq(b.ceiling_ns, s.cap_ns);
    prev = b.ceiling_ns;
    cr_assert_leq(next_ok(&b, T0), s.cap_ns);
  }
  cr_assert_eq(b.ceiling_ns, s.cap_ns);
}

Test(backoff, reset_exactly_at_30s_of_stable_connection) {
  atun_testrng g;
  atun_testrng_seed(&g, 8);
  atun_rand r = atun_testrng_as_rand(&g);
  atun_backoff b;
  init_default(&b, &r);
  for (int k = 0; k < 4; ++k) next_ok(&b, T0);
  cr_assert_eq(atun_backoff_attempt(&b), 4);

  /* Up 29.999 s: not stable, the next wait keeps growing. */
  cr_assert_eq(atun_backoff_connected(&b, T0), 0);
  cr_assert_eq(atun_backoff_get_expiry(&b), ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_backoff_disconnected(&b, T0 + 30 * SEC - MS), 0);
  cr_assert_eq(atun_backoff_attempt(&b), 4);
  cr_assert_eq(b.ceiling_ns, 16 * SEC);

  /* One nanosecond short still does not reset. */
  cr_assert_eq(atun_backoff_connected(&b, T0), 0);
  cr_assert_eq(atun_backoff_disconnected(&b, T0 + 30 * SEC - 1), 0);
  cr_assert_eq(atun_backoff_attempt(&b), 4);

  /* Exactly 30 s: back to the first step. */
  cr_assert_eq(atun_backoff_connected(&b, T0), 0);
  cr_assert_eq(atun_backoff_disconnected(&b, T0 + 30 * SEC), 0);
  cr_assert_eq(atun_backoff_attempt(&b), 0);
  cr_assert_eq(b.ceiling_ns, SEC);
  cr_assert_leq(next_ok(&b, T0 + 30 * SEC), SEC);
  cr_assert_eq(atun_backoff_attempt(&b), 1);
}

Test(backoff, flapping_connection_keeps_backing_off) {
  atun_testrng g;
  atun_testrng_seed(&g, 9);
  atun_rand r = atun_testrng_as_rand(&g);
  atun_backoff b;
  init_default(&b, &r);
  atun_tstamp ts = T0;
  for (int k = 0; k < STEPS; ++k) {
    uint64_t d = next_ok(&b, ts);
    cr_assert_leq(d, ceiling_at(k));
    ts += d;
    cr_assert_eq(atun_backoff_connected(&b, ts), 0);
    ts += 10 * SEC;
    cr_assert_eq(atun_backoff_disconnected(&b, ts), 0);
  }
  cr_assert_eq(atun_backoff_attempt(&b), STEPS);
}

Test(backoff, clock_going_backwards_is_not_stable) {
  atun_rand r = {zero_fill, NULL};
  atun_backoff b;
  init_default(&b, &r);
  next_ok(&b, T0);
  cr_assert_eq(atun_backoff_connected(&b, T0), 0);
  cr_assert_eq(atun_backoff_disconnected(&b, T0 - 1), 0);
  cr_assert_eq(atun_backoff_attempt(&b), 1);
}

Test(backoff, rng_failure_leaves_state_unchanged) {
  uint64_t values[] = {123};
  script_rng s = {values, 1, 0};
  atun_rand r = {script_fill, &s};
  atun_backoff b;
  init_default(&b, &r);
  cr_assert_eq(next_ok(&b, T0), 123);
  atun_backoff before = b;
  uint64_t d = 77;
  cr_assert_eq(atun_backoff_next(&b, T0 + SEC, &d), ATUN_ERR_CALLBACK_FAILURE);
  cr_assert_eq(d, 77);
  cr_assert_eq(memcmp(&before, &b, sizeof(b)), 0);
  cr_assert_eq(atun_backoff_get_expiry(&b), T0 + 123);
  /* A working RNG again: the same step is drawn. */
  s.calls = 0;
  values[0] = 5;
  cr_assert_eq(next_ok(&b, T0 + SEC), 5);
  cr_assert_eq(atun_backoff_attempt(&b), 2);
}

/* The rejection bound of the draw: the largest multiple of n = ceiling + 1
 * is the first value rejected, the one below it the last accepted, and it
 * maps to the ceiling itself: the range is closed. */
Test(backoff, rejection_sampling_boundary) {
  const uint64_t n = SEC + 1;
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t values[] = {limit, UINT64_MAX, limit - 1};
  script_rng s = {values, 3, 0};
  atun_rand r = {script_fill, &s};
  atun_backoff b;
  init_default(&b, &r);
  cr_assert_eq(next_ok(&b, T0), SEC);
  cr_assert_eq(s.calls, 3);
}

Test(backoff, stuck_rng_fails_after_bounded_tries) {
  int calls = 0;
  atun_rand r = {ones_fill, &calls};
  atun_backoff b;
  init_default(&b, &r);
  uint64_t d;
  cr_assert_eq(atun_backoff_next(&b, T0, &d), ATUN_ERR_CALLBACK_FAILURE);
  cr_assert_eq(calls, ATUN_BACKOFF_DRAW_TRIES_MAX);
  cr_assert_eq(atun_backoff_attempt(&b), 0);
  cr_assert_eq(atun_backoff_get_expiry(&b), ATUN_TSTAMP_MAX);
}

Test(backoff, state_errors) {
  atun_rand r = {zero_fill, NULL};
  atun_backoff b;
  init_default(&b, &r);
  uint64_t d;
  cr_assert_eq(atun_backoff_disconnected(&b, T0), ATUN_ERR_STATE);
  cr_assert_eq(atun_backoff_next(&b, ATUN_TSTAMP_MAX, &d), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_backoff_connected(&b, ATUN_TSTAMP_MAX), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_backoff_connected(&b, T0), 0);
  cr_assert_eq(atun_backoff_connected(&b, T0), ATUN_ERR_STATE);
  cr_assert_eq(atun_backoff_next(&b, T0, &d), ATUN_ERR_STATE);
  cr_assert_eq(atun_backoff_disconnected(&b, ATUN_TSTAMP_MAX),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_backoff_disconnected(&b, T0), 0);
  cr_assert_eq(atun_backoff_disconnected(&b, T0), ATUN_ERR_STATE);
  cr_assert_eq(next_ok(&b, T0), 0);
}

Test(backoff, deadline_never_reads_as_unset) {
  uint64_t values[] = {SEC, 0};
  script_rng s = {values, 2, 0};
  atun_rand r = {script_fill, &s};
  atun_backoff b;
  init_default(&b, &r);
  cr_assert_eq(next_ok(&b, ATUN_TSTAMP_MAX - 1), SEC);
  cr_assert_eq(atun_backoff_get_expiry(&b), ATUN_TSTAMP_MAX - 1);
  cr_assert_eq(next_ok(&b, ATUN_TSTAMP_MAX - 1), 0);
  cr_assert_eq(atun_backoff_get_expiry(&b), ATUN_TSTAMP_MAX - 1);
}

Test(backoff, redraw_replaces_deadline) {
  uint64_t values[] = {400, 100};
  script_rng s = {values, 2, 0};
  atun_rand r = {script_fill, &s};
  atun_backoff b;
  init_default(&b, &r);
  next_ok(&b, T0);
  cr_assert_eq(atun_backoff_get_expiry(&b), T0 + 400);
  next_ok(&b, T0 + 1);
  cr_assert_eq(atun_backoff_get_expiry(&b), T0 + 101);
  cr_assert_eq(atun_backoff_attempt(&b), 2);
}
