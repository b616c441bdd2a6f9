#include "clock.h"

#include <stdio.h>
#include <time.h>

static atun_tstamp read_clock(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (atun_tstamp)t.tv_sec * ATUN_NS_PER_S + (atun_tstamp)t.tv_nsec;
}

atun_tstamp atun_gw_wall_now(void) { return read_clock(CLOCK_REALTIME); }

atun_tstamp atun_gw_mono_now(void) { return read_clock(CLOCK_MONOTONIC); }

atun_tstamp atun_gw_mono_to_wall(atun_tstamp mono) {
  if (mono == ATUN_TSTAMP_MAX) return ATUN_TSTAMP_MAX;
  atun_tstamp now_mono = atun_gw_mono_now();
  atun_tstamp now_wall = atun_gw_wall_now();
  if (mono >= now_mono) return now_wall + (mono - now_mono);
  uint64_t ago = now_mono - mono;
  return ago < now_wall ? now_wall - ago : 0;
}

void atun_gw_time_format(char buf[ATUN_GW_TIME_STRLEN], atun_tstamp wall) {
  time_t secs = (time_t)(wall / ATUN_NS_PER_S);
  struct tm tm;
  if (wall == ATUN_TSTAMP_MAX || gmtime_r(&secs, &tm) == NULL ||
      strftime(buf, ATUN_GW_TIME_STRLEN, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(buf, ATUN_GW_TIME_STRLEN, "-");
}
