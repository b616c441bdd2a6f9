/*
 * atun-gateway: command line entry.
 *
 * Exit codes (the README lists them too):
 *   0  success (run: stopped by SIGTERM/SIGINT after draining)
 *   1  runtime failure: I/O, the store, a socket that can not be opened,
 *      a crypto failure
 *   2  usage or configuration error: unknown option, missing argument,
 *      invalid config file or value
 *   3  state error: a CA already exists (init without --force), the state
 *      directory is not initialized or unreadable, the store was written by
 *      a newer version
 *   4  status: the gateway is not running
 */
#include <stdio.h>
#include <string.h>

#include "atun.h"
#include "cmds.h"

static const char usage[] =
    "Usage: atun-gateway <command> [options]\n"
    "\n"
    "The atun gateway: agents dial in over QUIC with mutual TLS; operators\n"
    "enroll them against the gateway's own CA and manage them over HTTPS.\n"
    "\n"
    "Commands:\n"
    "  init           create the CA, the server certificate, the store and a\n"
    "                 default config in a state directory\n"
    "  token create   issue a one-time enrollment token; prints the\n"
    "                 enrollment string for `atun-agent enroll`\n"
    "  run            run the gateway (QUIC listener and HTTPS API)\n"
    "  status         print what the running gateway reports: agents, routes,\n"
    "                 sessions, certificate expiry, last errors\n"
    "\n"
    "Options:\n"
    "  -h, --help     show this text (every command has its own --help)\n"
    "  -V, --version  show the version\n"
    "\n"
    "Exit codes:\n"
    "  0  success\n"
    "  1  runtime failure (I/O, store, socket, crypto)\n"
    "  2  usage or configuration error\n"
    "  3  state error (CA already exists, state directory not initialized,\n"
    "     store written by a newer version)\n"
    "  4  status: the gateway is not running\n";

int atun_gw_print_version(void) {
  printf("atun-gateway %s\n", ATUN_GW_VERSION);
  return ATUN_GW_EXIT_OK;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return ATUN_GW_EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage, stdout);
    return ATUN_GW_EXIT_OK;
  }
  if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) return atun_gw_print_version();
  if (strcmp(cmd, "init") == 0) return atun_gw_cmd_init(argc - 1, argv + 1);
  if (strcmp(cmd, "token") == 0) return atun_gw_cmd_token(argc - 1, argv + 1);
  if (strcmp(cmd, "run") == 0) return atun_gw_cmd_run(argc - 1, argv + 1);
  if (strcmp(cmd, "status") == 0) return atun_gw_cmd_status(argc - 1, argv + 1);
  fprintf(stderr, "atun-gateway: unknown command \"%s\"\n\n%s", cmd, usage);
  return ATUN_GW_EXIT_USAGE;
}

int atun_gw_exit_for(int err) {
  switch (err) {
    case 0: return ATUN_GW_EXIT_OK;
    case ATUN_ERR_NOT_FOUND:
    case ATUN_ERR_MALFORMED:
    case ATUN_ERR_VERSION:
    case ATUN_ERR_EXISTS:
    case ATUN_ERR_DENIED:
    case ATUN_ERR_INVALID_ARGUMENT:
      return ATUN_GW_EXIT_STATE;
    default:
      return ATUN_GW_EXIT_RUNTIME;
  }
}
