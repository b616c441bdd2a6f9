/*
 * Exit codes of atun-agent, shared by its commands (the usage text in
 * main.c documents them).
 */
#ifndef ATUN_AGENT_CLI_H
#define ATUN_AGENT_CLI_H

#define AGENT_EXIT_OK 0
#define AGENT_EXIT_FAILURE 1 /* runtime failure: network, files, gateway */
#define AGENT_EXIT_USAGE 2   /* bad command line, config or credentials */
#define AGENT_EXIT_REFUSED 3 /* enrollment refused: do not retry as is */
#define AGENT_EXIT_NOT_RUNNING 4 /* status: no agent runs with this config */

/* `atun-agent enroll ...` and `atun-agent run ...`; |argv|[0] is the
 * command name.  Each returns an exit code. */
int agent_enroll_main(int argc, char **argv);
int agent_run_main(int argc, char **argv);

#endif /* ATUN_AGENT_CLI_H */
