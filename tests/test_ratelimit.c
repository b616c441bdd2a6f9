#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "ratelimit.h"
#include "support.h"

#define S ATUN_NS_PER_S
#define T0 ((atun_tstamp)5000 * ATUN_NS_PER_S)

typedef struct rig {
  atun_failmem fm;
  atun_testrng rng;
  atun_rand rand;
  atun_ratelimit_settings settings;
  atun_ratelimit *rl;
} rig;

static void rig_open(rig *r) {
  memset(r, 0, sizeof(*r));
  atun_failmem_init(&r->fm, -1);
  atun_testrng_seed(&r->rng, 42);
  r->rand = atun_testrng_as_rand(&r->rng);
  atun_ratelimit_settings_default(&r->settings);
}

static void rig_new(rig *r) {
  cr_assert_eq(atun_ratelimit_new(&r->rl, &r->settings, &r->rand, &r->fm.mem), 0);
}

static void rig_close(rig *r) {
  atun_ratelimit_del(r->rl);
  cr_assert_eq(r->fm.live, 0);
}

static atun_addr A(const char *s) {
  atun_addr a;
  cr_assert_eq(atun_addr_parse(&a, s), 0, "%s", s);
  return a;
}

static int take(rig *r, const char *addr, atun_tstamp ts, uint64_t *wait) {
  atun_addr a = A(addr);
  return atun_ratelimit_take(r->rl, &a, ts, wait);
}

Test(ratelimit, defaults) {
  atun_ratelimit_settings s;
  atun_ratelimit_settings_default(&s);
  cr_assert_eq(s.burst, 5);
  cr_assert_eq(s.interval_ns, 12 * S);
  cr_assert_eq(s.entries_max, 4096);
  cr_assert_eq(s.ipv6_prefix_len, 64);
}

Test(ratelimit, burst_then_one_per_interval) {
  rig r;
  rig_open(&r);
  r.settings.burst = 3;
  r.settings.interval_ns = 10 * S;
  rig_new(&r);
  uint64_t wait = 99;
  for (int i = 0; i < 3; ++i) {
    cr_assert_eq(take(&r, "198.51.100.1", T0, &wait), 0);
    cr_assert_eq(wait, 0);
  }
  cr_assert_eq(take(&r, "198.51.100.1", T0, &wait), ATUN_ERR_WOULDBLOCK);
  cr_assert_eq(wait, 10 * S);
  cr_assert_eq(take(&r, "198.51.100.1", T0 + 4 * S, &wait), ATUN_ERR_WOULDBLOCK);
  cr_assert_eq(wait, 6 * S, "a refusal costs nothing");
  cr_assert_eq(take(&r, "198.51.100.1", T0 + 10 * S - 1, &wait),
               ATUN_ERR_WOULDBLOCK);
  cr_assert_eq(wait, 1);
  cr_assert_eq(take(&r, "198.51.100.1", T0 + 10 * S, &wait), 0);
  cr_assert_eq(take(&r, "198.51.100.1", T0 + 10 * S, &wait), ATUN_ERR_WOULDBLOCK);
  /* A long pause refills to the burst, not beyond. */
  for (int i = 0; i < 3; ++i)
    cr_assert_eq(take(&r, "198.51.100.1", T0 + 1000 * S, NULL), 0);
  cr_assert_eq(take(&r, "198.51.100.1", T0 + 1000 * S, NULL), ATUN_ERR_WOULDBLOCK);
  /* Other sources have their own buckets. */
  cr_assert_eq(take(&r, "198.51.100.2", T0, NULL), 0);
  cr_assert_eq(atun_ratelimit_count(r.rl), 2);
  rig_close(&r);
}

Test(ratelimit, time_going_backwards_refills_nothing) {
  rig r;
  rig_open(&r);
  r.settings.burst = 1;
  r.settings.interval_ns = 10 * S;
  rig_new(&r);
  cr_assert_eq(take(&r, "10.0.0.1", T0, NULL), 0);
  cr_assert_eq(take(&r, "10.0.0.1", T0 - 100 * S, NULL), ATUN_ERR_WOULDBLOCK);
  cr_assert_eq(take(&r, "10.0.0.1", T0 + 9 * S, NULL), ATUN_ERR_WOULDBLOCK);
  cr_assert_eq(take(&r, "10.0.0.1", T0 + 10 * S, NULL), 0);
  rig_close(&r);
}

Test(ratelimit, ipv6_keyed_by_prefix) {
  rig r;
  rig_open(&r);
  r.settings.burst = 1;
  rig_new(&r);
  cr_assert_eq(take(&r, "2001:db8:1:2::1", T0, NULL), 0);
  cr_assert_eq(take(&r, "2001:db8:1:2:ffff::9", T0, NULL), ATUN_ERR_WOULDBLOCK,
               "same /64, same bucket");
  cr_assert_eq(take(&r, "2001:db8:1:3::1", T0, NULL), 0, "next /64");
  rig_close(&r);
  rig_open(&r);
  r.settings.burst = 1;
  r.settings.ipv6_prefix_len = 60;
  rig_new(&r);
  cr_assert_eq(take(&r, "2001:db8:1:2::1", T0, NULL), 0);
  cr_assert_eq(take(&r, "2001:db8:1:f::1", T0, NULL), ATUN_ERR_WOULDBLOCK,
               "same /60");
  cr_assert_eq(take(&r, "2001:db8:1:12::1", T0, NULL), 0, "next /60");
  rig_close(&r);
  rig_open(&r);
  r.settings.burst = 1;
  r.settings.ipv6_prefix_len = 128;
  rig_new(&r);
  cr_assert_eq(take(&r, "2001:db8::1", T0, NULL), 0);
  cr_assert_eq(take(&r, "2001:db8::2", T0, NULL), 0);
  rig_close(&r);
}

Test(ratelimit, ipv4_and_ipv6_do_not_share_keys) {
  rig r;
  rig_open(&r);
  r.settings.burst = 1;
  r.settings.ipv6_prefix_len = 128;
  rig_new(&r);
  /* Same leading bytes, different families. */
  cr_assert_eq(take(&r, "10.0.0.1", T0, NULL), 0);
  cr_assert_eq(take(&r, "a00:1::", T0, NULL), 0);
  cr_assert_eq(atun_ratelimit_count(r.rl), 2);
  rig_close(&r);
}

Test(ratelimit, table_bound_evicts_least_recently_used) {
  rig r;
  rig_open(&r);
  r.settings.burst = 1;
  r.settings.entries_max = 3;
  rig_new(&r);
  cr_assert_eq(take(&r, "10.0.0.1", T0, NULL), 0);
  cr_assert_eq(take(&r, "10.0.0.2", T0, NULL), 0);
  cr_assert_eq(take(&r, "10.0.0.3", T0, NULL), 0);
  cr_assert_eq(atun_ratelimit_count(r.rl), 3);
  cr_assert_eq(atun_ratelimit_evictions(r.rl), 0);
  /* .1 is refused, which counts as use: .2 is now the oldest. */
  cr_assert_eq(take(&r, "10.0.0.1", T0, NULL), ATUN_ERR_WOULDBLOCK);
  cr_assert_eq(take(&r, "10.0.0.4", T0, NULL), 0);
  cr_assert_eq(atun_ratelimit_count(r.rl), 3, "at the bound, never past it");
  cr_assert_eq(atun_ratelimit_evictions(r.rl), 1);
  cr_assert_eq(take(&r, "10.0.0.1", T0, NULL), ATUN_ERR_WOULDBLOCK, ".1 kept");
  cr_assert_eq(take(&r, "10.0.0.3", T0, NULL), ATUN_ERR_WOULDBLOCK, ".3 kept");
  cr_assert_eq(take(&r, "10.0.0.4", T0, NULL), ATUN_ERR_WOULDBLOCK, ".4 kept");
  cr_assert_eq(take(&r, "10.0.0.2", T0, NULL), 0, ".2 was forgotten: full bucket");
  cr_assert_eq(atun_ratelimit_evictions(r.rl), 2);
  rig_close(&r);
}

Test(ratelimit, many_sources_stay_consistent) {
  rig r;
  rig_open(&r);
  r.settings.burst = 2;
  r.settings.entries_max = 64;
  rig_new(&r);
  /* Cycling 100 sources through 64 slots exercises chain unlinking. */
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 100; ++i) {
      char s[32];
      snprintf(s, sizeof(s), "10.1.%d.%d", i / 250, i % 250);
      cr_assert_eq(take(&r, s, T0, NULL), 0, "evicted sources start full");
    }
    cr_assert_eq(atun_ratelimit_count(r.rl), 64);
  }
  /* The 64 most recent are remembered with one token used. */
  for (int i = 36; i < 100; ++i) {
    char s[32];
    snprintf(s, sizeof(s), "10.1.%d.%d", i / 250, i % 250);
    cr_assert_eq(take(&r, s, T0, NULL), 0);
    cr_assert_eq(take(&r, s, T0, NULL), ATUN_ERR_WOULDBLOCK);
  }
  rig_close(&r);
}

Test(ratelimit, bad_arguments) {
  rig r;
  rig_open(&r);
  atun_ratelimit *rl;
  atun_ratelimit_settings good = r.settings;
  cr_assert_eq(atun_ratelimit_new(NULL, &good, &r.rand, &r.fm.mem),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ratelimit_new(&rl, NULL, &r.rand, &r.fm.mem),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ratelimit_new(&rl, &good, NULL, &r.fm.mem),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ratelimit_new(&rl, &good, &r.rand, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_ratelimit_settings bad[8];
  for (int i = 0; i < 8; ++i) bad[i] = good;
  bad[0].burst = 0;
  bad[1].burst = ATUN_RATELIMIT_BURST_MAX + 1;
  bad[2].interval_ns = 0;
  bad[3].interval_ns = ATUN_RATELIMIT_INTERVAL_MAX_NS + 1;
  bad[4].entries_max = 0;
  bad[5].entries_max = ATUN_RATELIMIT_ENTRIES_MAX + 1;
  bad[6].ipv6_prefix_len = 0;
  bad[7].ipv6_prefix_len = 129;
  for (int i = 0; i < 8; ++i)
    cr_assert_eq(atun_ratelimit_new(&rl, &bad[i], &r.rand, &r.fm.mem),
                 ATUN_ERR_INVALID_ARGUMENT, "case %d", i);
  /* The largest settings are accepted (no overflow in burst * interval). */
  atun_ratelimit_settings big = good;
  big.burst = ATUN_RATELIMIT_BURST_MAX;
  big.interval_ns = ATUN_RATELIMIT_INTERVAL_MAX_NS;
  big.entries_max = 1;
  cr_assert_eq(atun_ratelimit_new(&rl, &big, &r.rand, &r.fm.mem), 0);
  atun_addr a = A("10.0.0.1");
  cr_assert_eq(atun_ratelimit_take(rl, &a, T0, NULL), 0);
  cr_assert_eq(atun_ratelimit_take(rl, &a, ATUN_TSTAMP_MAX - 1, NULL), 0);
  atun_ratelimit_del(rl);
  rig_new(&r);
  cr_assert_eq(atun_ratelimit_take(r.rl, &a, ATUN_TSTAMP_MAX, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ratelimit_take(r.rl, NULL, T0, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_addr weird = a;
  weird.family = 9;
  cr_assert_eq(atun_ratelimit_take(r.rl, &weird, T0, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ratelimit_count(r.rl), 0);
  atun_ratelimit_del(NULL);
  rig_close(&r);
}

static int failing_rand(uint8_t *dest, size_t len, void *ud) {
  (void)dest;
  (void)len;
  (void)ud;
  return -1;
}

Test(ratelimit, creation_failures) {
  rig r;
  rig_open(&r);
  atun_ratelimit *rl;
  atun_rand bad = {failing_rand, NULL};
  cr_assert_eq(atun_ratelimit_new(&rl, &r.settings, &bad, &r.fm.mem),
               ATUN_ERR_CALLBACK_FAILURE);
  for (long n = 0; n < 3; ++n) {
    atun_failmem_arm(&r.fm, n, 1);
    cr_assert_eq(atun_ratelimit_new(&rl, &r.settings, &r.rand, &r.fm.mem),
                 ATUN_ERR_NOMEM);
    cr_assert_eq(r.fm.live, 0);
  }
  atun_failmem_arm(&r.fm, -1, 0);
  rig_new(&r);
  rig_close(&r);
}
