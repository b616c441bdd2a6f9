#include <criterion/criterion.h>

#include "evq.h"
#include "support.h"

Test(sim_evq, pops_in_time_then_push_order) {
  sim_evq q;
  sim_evq_init(&q, atun_mem_default(), 1000);
  atun_testrng rng;
  atun_testrng_seed(&rng, 7);
  for (uint32_t i = 0; i < 500; ++i)
    cr_assert_eq(sim_evq_push(&q, atun_testrng_below(&rng, 20), 0, i, NULL), 0);
  sim_event prev = {0}, ev;
  for (int i = 0; i < 500; ++i) {
    cr_assert_eq(sim_evq_pop(&q, &ev), 0);
    if (i > 0) {
      cr_assert(ev.at > prev.at || (ev.at == prev.at && ev.seq > prev.seq));
      /* Same time: scheduling order, which is the node number here. */
      if (ev.at == prev.at) cr_assert_gt(ev.node, prev.node);
    }
    prev = ev;
  }
  cr_assert_eq(sim_evq_pop(&q, &ev), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(sim_evq_next_at(&q), ATUN_TSTAMP_MAX);
  sim_evq_free(&q);
}

Test(sim_evq, bound_is_an_error_at_the_bound) {
  sim_evq q;
  sim_evq_init(&q, atun_mem_default(), 3);
  for (int i = 0; i < 3; ++i) cr_assert_eq(sim_evq_push(&q, 5, 0, 0, NULL), 0);
  cr_assert_eq(sim_evq_push(&q, 1, 0, 0, NULL), ATUN_ERR_FULL);
  cr_assert_eq(sim_evq_next_at(&q), 5);
  sim_evq_free(&q);
}

Test(sim_evq, allocation_failure_keeps_queue_usable) {
  atun_failmem fm;
  atun_failmem_init(&fm, 0);
  sim_evq q;
  sim_evq_init(&q, &fm.mem, 100);
  cr_assert_eq(sim_evq_push(&q, 1, 0, 0, NULL), ATUN_ERR_NOMEM);
  atun_failmem_arm(&fm, -1, 0);
  cr_assert_eq(sim_evq_push(&q, 1, 0, 0, NULL), 0);
  sim_evq_free(&q);
  cr_assert_eq(fm.live, 0);
}
