/*
 * The simulator's event queue: a binary min-heap ordered by (time, sequence).
 * The sequence number is assigned at push, so two events due at the same
 * virtual time always run in the order they were scheduled — one seed, one
 * run.
 */
#ifndef ATUN_SIM_EVQ_H
#define ATUN_SIM_EVQ_H

#include "atun.h"

typedef struct sim_event {
  atun_tstamp at;
  uint64_t seq;
  uint32_t kind;   /* meaning is up to the caller */
  uint32_t node;
  void *data;      /* owned by the caller */
} sim_event;

typedef struct sim_evq {
  const atun_mem *mem;
  sim_event *heap;
  size_t len;
  size_t cap;
  size_t cap_max; /* the bound: push beyond it is ATUN_ERR_FULL */
  uint64_t next_seq;
} sim_evq;

/* Initialises |q| holding at most |cap_max| events. */
void sim_evq_init(sim_evq *q, const atun_mem *mem, size_t cap_max);
void sim_evq_free(sim_evq *q);

/* Schedules an event.  Returns 0, ATUN_ERR_FULL or ATUN_ERR_NOMEM. */
int sim_evq_push(sim_evq *q, atun_tstamp at, uint32_t kind, uint32_t node, void *data);

/* Removes the earliest event into |out|.  Returns 0 or ATUN_ERR_NOT_FOUND when
 * the queue is empty. */
int sim_evq_pop(sim_evq *q, sim_event *out);

/* Time of the earliest event, or ATUN_TSTAMP_MAX when empty. */
atun_tstamp sim_evq_next_at(const sim_evq *q);

#endif
