/*
 * atun-agent: enrolls with a gateway, then runs as the agent daemon
 * (SPEC §1, §5, §7).  This file only dispatches to the commands.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "status.h"
#include "version.h"

static const char usage_text[] =
    "usage: atun-agent <command> [options]\n"
    "\n"
    "commands:\n"
    "  enroll <string> --name NAME   enroll with a gateway (see enroll --help)\n"
    "  run [--config PATH]           run the agent (see run --help)\n"
    "  status [--config PATH]        what the running agent reports: connection,\n"
    "                                routes, streams, certificate expiry, last\n"
    "                                errors (see status --help)\n"
    "\n"
    "  -h, --help                    this text\n"
    "  -V, --version                 print the version\n"
    "\n"
    "exit codes:\n"
    "  0  success (run: stopped by SIGTERM or SIGINT after draining)\n"
    "  1  runtime failure (network, files, the gateway failed)\n"
    "  2  usage or configuration error (bad arguments, bad config, not enrolled)\n"
    "  3  enrollment refused (token unknown, used or expired, or the gateway's\n"
    "     certificate does not match the pin): retrying as is will not help\n"
    "  4  status: the agent is not running\n";

int main(int argc, char **argv) {
  /* A peer that closes first must not kill the process with SIGPIPE. */
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    fputs(usage_text, stderr);
    return AGENT_EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage_text, stdout);
    return AGENT_EXIT_OK;
  }
  if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
    printf("%s\n", AGENT_SOFTWARE);
    return AGENT_EXIT_OK;
  }
  if (strcmp(cmd, "enroll") == 0) return agent_enroll_main(argc - 1, argv + 1);
  if (strcmp(cmd, "run") == 0) return agent_run_main(argc - 1, argv + 1);
  if (strcmp(cmd, "status") == 0) return agent_status_main(argc - 1, argv + 1);
  fprintf(stderr, "atun-agent: unknown command '%s'\n\n%s", cmd, usage_text);
  return AGENT_EXIT_USAGE;
}
