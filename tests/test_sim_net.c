#include <criterion/criterion.h>
#include <string.h>

#include "net.h"

typedef struct got {
  int n;
  uint32_t to[64], from[64];
  atun_tstamp ts[64];
  uint8_t first[64];
  size_t len[64];
} got;

static void on_deliver(uint32_t to, uint32_t from, const uint8_t *data, size_t len,
                       atun_tstamp ts, void *ud) {
  got *g = ud;
  cr_assert_lt(g->n, 64);
  g->to[g->n] = to;
  g->from[g->n] = from;
  g->ts[g->n] = ts;
  g->first[g->n] = len ? data[0] : 0;
  g->len[g->n] = len;
  ++g->n;
}

typedef struct world {
  atun_failmem fm;
  sim_evq q;
  atun_testrng rng;
  sim_net net;
  got g;
} world;

static void setup(world *w, uint32_t nodes, sim_link_params p) {
  memset(w, 0, sizeof(*w));
  atun_failmem_init(&w->fm, -1);
  sim_evq_init(&w->q, &w->fm.mem, 1 << 16);
  atun_testrng_seed(&w->rng, 42);
  cr_assert_eq(sim_net_init(&w->net, &w->fm.mem, &w->q, &w->rng, nodes, &p, on_deliver,
                            &w->g), 0);
}

static void run(world *w) {
  sim_event ev;
  while (sim_evq_pop(&w->q, &ev) == 0) sim_net_on_event(&w->net, &ev);
}

static void teardown(world *w) {
  sim_event ev;
  while (sim_evq_pop(&w->q, &ev) == 0) sim_net_drop_event(&w->net, &ev);
  sim_net_free(&w->net);
  sim_evq_free(&w->q);
  cr_assert_eq(w->fm.live, 0);
}

Test(sim_net, delivers_after_delay_both_ways) {
  world w;
  setup(&w, 3, sim_link_params_default());
  uint8_t b = 9;
  cr_assert_eq(sim_net_send(&w.net, 2, 0, &b, 1, 100), 0);
  cr_assert_eq(sim_net_send(&w.net, 0, 1, &b, 1, 100), 0);
  run(&w);
  cr_assert_eq(w.g.n, 2);
  cr_assert_eq(w.g.ts[0], 100 + 10 * ATUN_NS_PER_MS);
  cr_assert_eq(w.g.to[0], 0);
  cr_assert_eq(w.g.from[0], 2);
  cr_assert_eq(w.g.to[1], 1);
  teardown(&w);
}

Test(sim_net, no_links_between_spokes_or_to_self) {
  world w;
  setup(&w, 3, sim_link_params_default());
  uint8_t b = 0;
  cr_assert_eq(sim_net_send(&w.net, 1, 2, &b, 1, 0), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(sim_net_send(&w.net, 1, 1, &b, 1, 0), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(sim_net_send(&w.net, 1, 3, &b, 1, 0), ATUN_ERR_INVALID_ARGUMENT);
  teardown(&w);
}

Test(sim_net, partition_mtu_and_queue_drop) {
  world w;
  sim_link_params p = sim_link_params_default();
  p.queue_bytes_max = 3000;
  setup(&w, 2, p);
  uint8_t buf[1501] = {0};
  cr_assert_eq(sim_net_send(&w.net, 1, 0, buf, 1501, 0), 0); /* over MTU */
  cr_assert_eq(w.net.stats.drop_mtu, 1);
  cr_assert_eq(sim_net_send(&w.net, 1, 0, buf, 1500, 0), 0);
  cr_assert_eq(sim_net_send(&w.net, 1, 0, buf, 1500, 0), 0); /* exactly at the bound */
  cr_assert_eq(sim_net_send(&w.net, 1, 0, buf, 1, 0), 0);    /* one byte over */
  cr_assert_eq(w.net.stats.drop_queue, 1);
  sim_net_link(&w.net, 1, 0)->p.up = 0;
  cr_assert_eq(sim_net_send(&w.net, 1, 0, buf, 1, 0), 0);
  cr_assert_eq(w.net.stats.drop_down, 1);
  /* The other direction is a separate link: an asymmetric partition. */
  cr_assert_eq(sim_net_send(&w.net, 0, 1, buf, 1, 0), 0);
  run(&w);
  cr_assert_eq(w.g.n, 3);
  teardown(&w);
}

Test(sim_net, bandwidth_serialises_datagrams) {
  world w;
  sim_link_params p = sim_link_params_default();
  p.bandwidth_bps = 8000000; /* 1 byte per microsecond */
  p.delay_ns = 0;
  setup(&w, 2, p);
  uint8_t buf[1000] = {0};
  for (int i = 0; i < 3; ++i) cr_assert_eq(sim_net_send(&w.net, 1, 0, buf, 1000, 0), 0);
  run(&w);
  cr_assert_eq(w.g.n, 3);
  cr_assert_eq(w.g.ts[0], 1000 * 1000);
  cr_assert_eq(w.g.ts[2], 3000 * 1000);
  teardown(&w);
}

Test(sim_net, loss_dup_corrupt_follow_the_seed) {
  world w;
  sim_link_params p = sim_link_params_default();
  p.loss_ppm = 300000;
  p.dup_ppm = 200000;
  p.corrupt_ppm = 200000;
  p.jitter_ns = 50 * ATUN_NS_PER_MS;
  setup(&w, 2, p);
  uint8_t b[8] = {0};
  for (int i = 0; i < 40; ++i) {
    b[0] = (uint8_t)i;
    cr_assert_eq(sim_net_send(&w.net, 0, 1, b, 8, 0), 0);
  }
  run(&w);
  sim_net_stats s = w.net.stats;
  cr_assert_gt(s.drop_loss, 0);
  cr_assert_gt(s.dup, 0);
  cr_assert_gt(s.corrupted, 0);
  cr_assert_eq(s.delivered, 40 - s.drop_loss + s.dup);
  int reordered = 0;
  for (int i = 1; i < w.g.n; ++i) reordered |= w.g.first[i] < w.g.first[i - 1];
  cr_assert(reordered, "jitter should reorder some datagrams");
  /* The same seed gives the same run. */
  got first = w.g;
  teardown(&w);
  setup(&w, 2, p);
  for (int i = 0; i < 40; ++i) {
    b[0] = (uint8_t)i;
    cr_assert_eq(sim_net_send(&w.net, 0, 1, b, 8, 0), 0);
  }
  run(&w);
  cr_assert_eq(w.g.n, first.n);
  cr_assert_eq(memcmp(w.g.ts, first.ts, sizeof(first.ts)), 0);
  cr_assert_eq(memcmp(w.g.first, first.first, sizeof(first.first)), 0);
  teardown(&w);
}

Test(sim_net, in_flight_bound_and_allocation_failure) {
  world w;
  setup(&w, 2, sim_link_params_default());
  w.net.in_flight_max = 2;
  uint8_t b = 1;
  cr_assert_eq(sim_net_send(&w.net, 0, 1, &b, 1, 0), 0);
  cr_assert_eq(sim_net_send(&w.net, 0, 1, &b, 1, 0), 0);
  cr_assert_eq(sim_net_send(&w.net, 0, 1, &b, 1, 0), ATUN_ERR_FULL);
  atun_failmem_arm(&w.fm, 0, 1);
  w.net.in_flight_max = 10;
  cr_assert_eq(sim_net_send(&w.net, 0, 1, &b, 1, 0), ATUN_ERR_NOMEM);
  cr_assert_eq(sim_net_link(&w.net, 0, 1)->queued_bytes, 2);
  teardown(&w);
}

Test(sim_net, init_allocation_failure_leaks_nothing) {
  atun_failmem fm;
  atun_failmem_init(&fm, 1);
  sim_evq q;
  sim_evq_init(&q, &fm.mem, 10);
  atun_testrng rng;
  atun_testrng_seed(&rng, 1);
  sim_net net;
  sim_link_params p = sim_link_params_default();
  cr_assert_eq(sim_net_init(&net, &fm.mem, &q, &rng, 4, &p, on_deliver, NULL), ATUN_ERR_NOMEM);
  cr_assert_eq(fm.live, 0);
}
