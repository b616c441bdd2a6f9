/*
 * Test and fuzz support: an allocator that fails on request and counts what is
 * still live, and a small seeded RNG.  Never linked into the daemons.
 */
#ifndef ATUN_TEST_SUPPORT_H
#define ATUN_TEST_SUPPORT_H

#include "atun.h"

/* An allocator in the SQLite manner: the first |fail_after| allocations
 * succeed, then every one fails (or only the next one if |fail_once|).
 * |fail_after| < 0 never fails.  It tracks live blocks so a test can assert
 * that nothing leaked. */
typedef struct atun_failmem {
  atun_mem mem;
  long fail_after;
  int fail_once;
  long allocs;      /* successful allocations so far */
  long failures;    /* refused allocations so far */
  long live;        /* blocks not yet freed */
  size_t live_bytes;
  size_t peak_bytes;
} atun_failmem;

void atun_failmem_init(atun_failmem *fm, long fail_after);
/* Arms the allocator again: |fail_after| more allocations succeed. */
void atun_failmem_arm(atun_failmem *fm, long fail_after, int fail_once);

/* xoshiro256** seeded by splitmix64: fast, reproducible, not for secrets. */
typedef struct atun_testrng {
  uint64_t s[4];
} atun_testrng;

void atun_testrng_seed(atun_testrng *r, uint64_t seed);
uint64_t atun_testrng_next(atun_testrng *r);
/* Uniform in [0, n); n > 0. */
uint64_t atun_testrng_below(atun_testrng *r, uint64_t n);
/* An atun_rand backed by |r|. */
atun_rand atun_testrng_as_rand(atun_testrng *r);

#endif
