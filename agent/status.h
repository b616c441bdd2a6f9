/*
 * The agent's status file and `atun-agent status`.
 *
 * The agent has no API, so the daemon writes status.json next to its
 * certificate (the directory of cert_file: the state directory `enroll
 * --state-dir` filled), atomically, mode 0600: at start, at most once a
 * second while something changes (connection state, route epoch, stream
 * count), at least every AGENT_STATUS_REFRESH_S, and a last time with
 * state "stopped" on exit.  `status` reads it; a pid that is gone, a
 * "stopped" state or a file older than AGENT_STATUS_STALE_S mean the
 * daemon is not running (exit AGENT_EXIT_NOT_RUNNING).
 */
#ifndef ATUN_AGENT_STATUS_H
#define ATUN_AGENT_STATUS_H

#include "config.h"
#include "routes.h"

#define AGENT_STATUS_FILE "status.json"
#define AGENT_STATUS_REFRESH_S 5
#define AGENT_STATUS_STALE_S (3 * AGENT_STATUS_REFRESH_S)
/* Room for "<directory of cert_file>/status.json". */
#define AGENT_STATUS_PATH_MAX (ATUN_CONFIG_PATH_MAX + 16)
/* Largest status file `status` reads. */
#define AGENT_STATUS_TEXT_MAX ((size_t)256 * 1024)

/* What the daemon knows, handed to agent_status_write(). */
typedef struct agent_status_info {
  const char *state;             /* session state name, or "stopped" */
  const atun_config_agent *cfg;  /* name, id, gateway */
  const agent_routes *routes;    /* last advertised; NULL: none yet */
  uint64_t epoch;                /* route epoch */
  size_t streams;                /* proxied connections open */
  unsigned attempt;              /* dials since start */
  atun_tstamp connected_at;      /* wall; ATUN_TSTAMP_MAX: not admitted */
  atun_tstamp cert_not_after;    /* wall; 0: unknown */
} agent_status_info;

/* Routes log lines through a sink that still writes them to stderr and
 * keeps the last warnings and errors for the status file. */
void agent_status_capture(void);

/* The status file for |cfg| into |out|.  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT (no cert_file, or the path is too long). */
int agent_status_path(char out[AGENT_STATUS_PATH_MAX], const atun_config_agent *cfg);

/* Writes the file for |info| at wall time |wall| (ns).  Returns 0 or what
 * atun_fs_write_atomic returns, ATUN_ERR_NOMEM. */
int agent_status_write(const agent_status_info *info, atun_tstamp wall);

/* `atun-agent status [--config PATH] [--json]`; |argv|[0] is "status".
 * Returns AGENT_EXIT_OK (running), AGENT_EXIT_FAILURE (file unreadable),
 * AGENT_EXIT_USAGE or AGENT_EXIT_NOT_RUNNING. */
int agent_status_main(int argc, char **argv);

#endif /* ATUN_AGENT_STATUS_H */
