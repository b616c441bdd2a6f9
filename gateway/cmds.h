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
  ATUN_GW_EXIT_STATE = 3    /* state directory in the wrong state */
} atun_gw_exit;

/* Each takes the arguments after the program name (|argv[0]| is the
 * command's own name) and returns an atun_gw_exit code. */
int atun_gw_cmd_init(int argc, char **argv);
int atun_gw_cmd_token(int argc, char **argv);
int atun_gw_cmd_run(int argc, char **argv);

/* Prints "atun-gateway <version>" to stdout; returns ATUN_GW_EXIT_OK. */
int atun_gw_print_version(void);

/* Maps an error of loading config, state or store to an exit code. */
int atun_gw_exit_for(int err);

#endif /* ATUN_GW_CMDS_H */
