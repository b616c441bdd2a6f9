/*
 * Reconnect backoff for the agent (SPEC §7): exponential from 1 s, doubling,
 * capped at 60 s, full jitter, reset once a connection has stayed up 30 s.
 *
 * Every attempt waits, the first one included: attempt k (counted from 0
 * since the last reset) waits a delay drawn uniformly, to the nanosecond,
 * from [0, min(cap, base * 2^k)].  So the very first dial after start-up (or
 * after a stable connection drops) waits 0..1 s.  That costs half a second on
 * average and spreads a fleet of agents that all restart at once (a gateway
 * outage, a mass upgrade) over a second instead of a single instant.
 *
 * The object is sans-I/O: the caller passes |ts|, arms its timer from
 * atun_backoff_get_expiry() and dials when it fires.
 *
 *   init -> next -> (dial) -> connected -> disconnected -> next -> ...
 *                      \-> (dial failed) -> next -> ...
 */
#ifndef ATUN_BACKOFF_H
#define ATUN_BACKOFF_H

#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bound for every duration setting: a day.  Keeps deadline arithmetic
 * far from overflow and rejects a unit mistake (seconds given as ns * 1e9). */
#define ATUN_BACKOFF_DURATION_MAX_NS ((uint64_t)24 * 3600 * ATUN_NS_PER_S)

/* A uniform draw rejects a 64-bit random value with probability below
 * 2^-17 for any allowed cap (2^-28 for 60 s); this many rejections in a row
 * means the RNG is broken, not unlucky. */
#define ATUN_BACKOFF_DRAW_TRIES_MAX 64

typedef struct atun_backoff_settings {
  uint64_t base_ns;   /* ceiling of the first draw; default 1 s */
  uint64_t cap_ns;    /* ceiling of every draw; default 60 s */
  uint64_t stable_ns; /* connected this long resets the backoff; 30 s */
} atun_backoff_settings;

typedef struct atun_backoff {
  atun_backoff_settings settings;
  atun_rand rand;
  uint64_t ceiling_ns;      /* upper bound of the next draw */
  uint64_t attempt;         /* delays drawn since the last reset */
  atun_tstamp connected_at; /* ATUN_TSTAMP_MAX while not connected */
  atun_tstamp deadline;     /* ATUN_TSTAMP_MAX when no dial is pending */
} atun_backoff;

/* Fills |settings| with the SPEC values: 1 s, 60 s, 30 s. */
void atun_backoff_settings_default(atun_backoff_settings *settings);

/* Prepares |b| (caller-owned storage, nothing to free) in the disconnected
 * state with no dial pending.  |settings| and |rand| are copied.  Requires
 * 0 < base_ns <= cap_ns <= ATUN_BACKOFF_DURATION_MAX_NS and
 * 0 < stable_ns <= ATUN_BACKOFF_DURATION_MAX_NS.  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT. */
int atun_backoff_init(atun_backoff *b, const atun_backoff_settings *settings,
                      const atun_rand *rand);

/* Draws the delay before the next dial, stores it in |*pdelay_ns| and sets
 * the deadline to |ts| + delay.  Calling it again before dialling replaces
 * the pending deadline and counts as another attempt.  On error |b| is
 * unchanged and the call may be retried.  Returns 0, ATUN_ERR_STATE
 * (connected), ATUN_ERR_INVALID_ARGUMENT (|ts| unset) or
 * ATUN_ERR_CALLBACK_FAILURE (the RNG failed, or gave
 * ATUN_BACKOFF_DRAW_TRIES_MAX unusable values in a row). */
int atun_backoff_next(atun_backoff *b, atun_tstamp ts, uint64_t *pdelay_ns);

/* When to dial: the pending deadline, or ATUN_TSTAMP_MAX. */
atun_tstamp atun_backoff_get_expiry(const atun_backoff *b);

/* The dial succeeded at |ts|: clears the deadline.  The backoff is not reset
 * yet: a connection that drops quickly keeps backing off.  Returns 0,
 * ATUN_ERR_STATE (already connected) or ATUN_ERR_INVALID_ARGUMENT (|ts|
 * unset). */
int atun_backoff_connected(atun_backoff *b, atun_tstamp ts);

/* The connection ended at |ts|.  If it had been up for at least stable_ns,
 * the backoff starts over from base_ns; a clock that went backwards counts
 * as not stable.  Returns 0, ATUN_ERR_STATE (not connected) or
 * ATUN_ERR_INVALID_ARGUMENT (|ts| unset). */
int atun_backoff_disconnected(atun_backoff *b, atun_tstamp ts);

/* Delays drawn since the last reset. */
uint64_t atun_backoff_attempt(const atun_backoff *b);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_BACKOFF_H */
