/*
 * The subcommands of atun-gateway and the exit codes they share (main.c's
 * usage text documents them for operators).
 */
#ifndef ATUN_GW_CMDS_H
#define ATUN_GW_CMDS_H

#define ATUN_GW_VERSION "0.1.0"

typedef enum atun_gw_exit {
  ATUN_GW_EXIT_OK = 0,
  ATUN_GW_EXIT_RUNTIME = 1, /* I/O, store, socket or crypto failure */
  ATUN_GW_EXIT_USAGE = 2,   /* bad command line or invalid config */
  ATUN_GW_EXIT_STATE = 3,   /* state directory in the wrong state */
  ATUN_GW_EXIT_NOT_RUNNING = 4 /* status: no gateway runs on this state */
} atun_gw_exit;

struct atun_gw;

/* Each takes the arguments after the program name (|argv[0]| is the
 * command's own name) and returns an atun_gw_exit code. */
int atun_gw_cmd_init(int argc, char **argv);
int atun_gw_cmd_token(int argc, char **argv);
int atun_gw_cmd_run(int argc, char **argv);
int atun_gw_cmd_status(int argc, char **argv);

/* The status file of the running gateway (cmd_status.c).  _capture puts
 * the log sink in place that keeps the last warnings and errors for it
 * (lines still go to stderr); _start writes the file and rewrites it
 * every few seconds; _write writes it at once with |state| ("running",
 * "draining"); _stop writes the final "stopped" one. */
void atun_gw_status_capture(void);
void atun_gw_status_start(struct atun_gw *gw);
void atun_gw_status_write(struct atun_gw *gw, const char *state);
void atun_gw_status_stop(struct atun_gw *gw);

/* Prints "atun-gateway <version>" to stdout; returns ATUN_GW_EXIT_OK. */
int atun_gw_print_version(void);

/* Maps an error of loading config, state or store to an exit code. */
int atun_gw_exit_for(int err);

#endif /* ATUN_GW_CMDS_H */
