/*
 * The simulated datagram network: a star of directed links between a hub
 * (node 0, the gateway) and the other nodes (agents), as in the product.  Each
 * direction has its own delay, jitter (which also reorders), loss,
 * duplication, corruption, MTU, bandwidth with a bounded queue, and an up/down
 * switch for partitions.  Every random draw comes from the world's seeded RNG,
 * so a seed fixes which datagram is lost, late or bent.
 */
#ifndef ATUN_SIM_NET_H
#define ATUN_SIM_NET_H

#include "evq.h"
#include "support.h"

#define SIM_EV_DELIVER 1u
#define SIM_PPM 1000000u

typedef struct sim_link_params {
  atun_tstamp delay_ns;
  atun_tstamp jitter_ns;      /* extra delay drawn uniformly in [0, jitter] */
  uint32_t loss_ppm;          /* parts per million */
  uint32_t dup_ppm;
  uint32_t corrupt_ppm;
  uint32_t mtu;               /* larger datagrams are dropped */
  uint64_t bandwidth_bps;     /* 0: unlimited */
  uint32_t queue_bytes_max;   /* tail drop above this many bytes queued or in flight */
  int up;                     /* 0: partitioned, everything dropped */
} sim_link_params;

sim_link_params sim_link_params_default(void);

typedef struct sim_link {
  sim_link_params p;
  atun_tstamp busy_until;     /* serialisation of the bandwidth model */
  atun_tstamp clog_until;     /* clogged: nothing leaves before this */
  uint32_t queued_bytes;
} sim_link;

typedef struct sim_net_stats {
  uint64_t sent, delivered, dup, corrupted;
  uint64_t drop_loss, drop_down, drop_mtu, drop_queue;
  uint64_t bytes_delivered;
} sim_net_stats;

/* Called for every datagram that arrives.  |data| is valid only during the
 * call. */
typedef void (*sim_deliver_fn)(uint32_t to, uint32_t from, const uint8_t *data,
                               size_t len, atun_tstamp ts, void *user_data);

typedef struct sim_net {
  const atun_mem *mem;
  sim_evq *evq;
  atun_testrng *rng;
  uint32_t nnodes;
  sim_link *up;    /* node i -> hub, index i (index 0 unused) */
  sim_link *down;  /* hub -> node i */
  uint64_t in_flight;
  uint64_t in_flight_max; /* the bound on datagrams in flight */
  sim_net_stats stats;
  sim_deliver_fn deliver;
  void *user_data;
} sim_net;

/* Sets up |nnodes| nodes (hub included), every link with |p|.  Returns 0 or
 * ATUN_ERR_NOMEM. */
int sim_net_init(sim_net *net, const atun_mem *mem, sim_evq *evq, atun_testrng *rng,
                 uint32_t nnodes, const sim_link_params *p, sim_deliver_fn deliver,
                 void *user_data);

/* Frees the links and every datagram still in flight (pop them from the
 * event queue first with sim_net_drop_event). */
void sim_net_free(sim_net *net);

/* The link carrying |from| -> |to|; exactly one of them must be the hub. */
sim_link *sim_net_link(sim_net *net, uint32_t from, uint32_t to);

/* Sends one datagram at |now|.  Returns 0 (also when the network drops it),
 * ATUN_ERR_INVALID_ARGUMENT, ATUN_ERR_FULL (too many datagrams in flight) or
 * ATUN_ERR_NOMEM. */
int sim_net_send(sim_net *net, uint32_t from, uint32_t to, const uint8_t *data,
                 size_t len, atun_tstamp now);

/* Handles a SIM_EV_DELIVER event popped from the queue. */
void sim_net_on_event(sim_net *net, const sim_event *ev);

/* Frees the datagram of a SIM_EV_DELIVER event without delivering it. */
void sim_net_drop_event(sim_net *net, const sim_event *ev);

#endif
