/*
 * The gateway's two clocks, kept apart on purpose.
 *
 *   wall  CLOCK_REALTIME, ns since the UNIX epoch.  For everything that is
 *         persisted or compared with another machine: the store (enrolled_at,
 *         revoked_at, audit rows), enrollment tokens (created_at, expires_at)
 *         and certificate validity.  It may step (NTP, an operator).
 *   mono  CLOCK_MONOTONIC, ns since an arbitrary point of this boot.  For
 *         everything that measures intervals inside this process: QUIC
 *         connections, control sessions, the registry (last_seen, offline
 *         timeouts), rate limits, HTTP timeouts.  It never steps, and it
 *         means nothing after a restart.  io/quic_ev and io/https read the
 *         same clock, so their timestamps mix with these.
 *
 * A monotonic instant is shown to operators as wall time by offsetting it
 * from "now" on both clocks (atun_gw_mono_to_wall).
 */
#ifndef ATUN_GW_CLOCK_H
#define ATUN_GW_CLOCK_H

#include "atun.h"

atun_tstamp atun_gw_wall_now(void);
atun_tstamp atun_gw_mono_now(void);

/* The wall-clock time of monotonic instant |mono| (ATUN_TSTAMP_MAX stays
 * ATUN_TSTAMP_MAX). */
atun_tstamp atun_gw_mono_to_wall(atun_tstamp mono);

/* Writes |wall| as RFC 3339 UTC with seconds ("2026-11-25T17:02:00Z") and a
 * NUL into |buf| (ATUN_GW_TIME_STRLEN bytes). */
#define ATUN_GW_TIME_STRLEN 32
void atun_gw_time_format(char buf[ATUN_GW_TIME_STRLEN], atun_tstamp wall);

#endif /* ATUN_GW_CLOCK_H */
