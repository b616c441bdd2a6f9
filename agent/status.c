/*
 * The agent's status file: the writer the daemon calls and the reader of
 * `atun-agent status` (see status.h).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cfgfile.h"
#include "cli.h"
#include "fsutil.h"
#include "log.h"
#include "renew.h"
#include "status.h"
#include "version.h"

#define STATUS_FORMAT 1
#define TIME_STRLEN 32

static const char usage_text[] =
    "usage: atun-agent status [--config PATH] [--json]\n"
    "\n"
    "Prints what the running agent reported last: its connection state and\n"
    "gateway, the routes it advertises and their epoch, open streams, when\n"
    "its certificate expires, and its last warnings and errors.  The agent\n"
    "writes them into status.json in the directory of cert_file (its state\n"
    "directory) when they change and every 5 seconds; run this as root or\n"
    "as the service user.\n"
    "\n"
    "options:\n"
    "  --config PATH   config file (default " AGENT_CONFIG_DEFAULT ")\n"
    "  --json          print the status file as it is\n"
    "  -h, --help      this text\n"
    "\n"
    "exit codes: 0 the agent is running (connected or not: see the state),\n"
    "1 the status file is unreadable or malformed, 2 usage or config error\n"
    "(not enrolled), 4 the agent is not running (never started, stopped, its\n"
    "process is gone, or it has not updated the file for 15 seconds).\n";

/* --- the writer ------------------------------------------------------------------- */

static void add_line(const char *line, void *arr) {
  cJSON_AddItemToArray(arr, cJSON_CreateString(line));
}

void agent_status_capture(void) { atun_log_keep_recent(); }

int agent_status_path(char out[AGENT_STATUS_PATH_MAX], const atun_config_agent *cfg) {
  const char *slash = strrchr(cfg->cert_file, '/');
  if (cfg->cert_file[0] == '\0') return ATUN_ERR_INVALID_ARGUMENT;
  int dirlen = slash == NULL ? 1 : slash == cfg->cert_file ? 1 : (int)(slash - cfg->cert_file);
  const char *dir = slash == NULL ? "." : cfg->cert_file;
  int n = snprintf(out, AGENT_STATUS_PATH_MAX, "%.*s/%s", dirlen, dir, AGENT_STATUS_FILE);
  return n < 0 || n >= AGENT_STATUS_PATH_MAX ? ATUN_ERR_INVALID_ARGUMENT : 0;
}

static void add_time(cJSON *o, const char *key, atun_tstamp wall) {
  if (wall == 0 || wall == ATUN_TSTAMP_MAX) {
    cJSON_AddNullToObject(o, key);
    return;
  }
  char text[TIME_STRLEN];
  time_t s = (time_t)(wall / ATUN_NS_PER_S);
  struct tm tm;
  if (gmtime_r(&s, &tm) == NULL || strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(text, sizeof(text), "%lld", (long long)s);
  cJSON_AddStringToObject(o, key, text);
}

static void add_routes(cJSON *root, const agent_routes *r) {
  cJSON *subnets = cJSON_AddArrayToObject(root, "subnets");
  cJSON *domains = cJSON_AddArrayToObject(root, "domains");
  char text[ATUN_PREFIX_STRLEN];
  for (size_t i = 0; r != NULL && i < r->subnet_count; ++i) {
    atun_prefix_format(text, &r->subnets[i]);
    cJSON_AddItemToArray(subnets, cJSON_CreateString(text));
  }
  for (size_t i = 0; r != NULL && i < r->domain_count; ++i)
    cJSON_AddItemToArray(domains, cJSON_CreateString(r->domains[i].name));
}

static cJSON *status_json(const agent_status_info *info, atun_tstamp wall) {
  cJSON *root = cJSON_CreateObject();
  if (root == NULL) return NULL;
  char gw[ATUN_HOSTPORT_STRLEN];
  atun_hostport_format(gw, &info->cfg->gateway_host, info->cfg->gateway_port);
  cJSON_AddNumberToObject(root, "format", STATUS_FORMAT);
  cJSON_AddStringToObject(root, "version", AGENT_VERSION);
  cJSON_AddNumberToObject(root, "pid", (double)getpid());
  cJSON_AddStringToObject(root, "state", info->state);
  add_time(root, "updated_at", wall);
  cJSON_AddNumberToObject(root, "updated_unix", (double)(wall / ATUN_NS_PER_S));
  cJSON_AddStringToObject(root, "name", info->cfg->name);
  cJSON_AddStringToObject(root, "agent_id", info->cfg->agent_id);
  cJSON_AddStringToObject(root, "gateway", gw);
  add_time(root, "connected_at", info->connected_at);
  cJSON_AddNumberToObject(root, "attempts", info->attempt);
  cJSON_AddNumberToObject(root, "route_epoch", (double)info->epoch);
  add_routes(root, info->routes);
  cJSON_AddNumberToObject(root, "active_streams", (double)info->streams);
  add_time(root, "cert_expires_at", info->cert_not_after);
  cJSON_AddNumberToObject(root, "cert_expires_unix",
                          (double)(info->cert_not_after / ATUN_NS_PER_S));
  cJSON *errs = cJSON_AddArrayToObject(root, "last_errors");
  cJSON_AddNumberToObject(root, "errors_total", (double)atun_log_recent(add_line, errs));
  return root;
}

int agent_status_write(const agent_status_info *info, atun_tstamp wall) {
  char path[AGENT_STATUS_PATH_MAX];
  int rv = agent_status_path(path, info->cfg);
  if (rv != 0) return rv;
  cJSON *root = status_json(info, wall);
  char *text = root != NULL ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  if (text == NULL) return ATUN_ERR_NOMEM;
  rv = atun_fs_write_atomic(path, text, strlen(text), ATUN_FS_MODE_SECRET, 0);
  cJSON_free(text);
  return rv;
}

/* --- the reader ----------------------------------------------------------------------- */

/* Returns 0, 1 for --help, or AGENT_EXIT_USAGE. */
static int parse_args(int argc, char **argv, const char **config, int *json) {
  static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                           {"json", no_argument, NULL, 'j'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  *config = AGENT_CONFIG_DEFAULT;
  *json = 0;
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    if (opt == 'h') return 1;
    if (opt == 'j') {
      *json = 1;
      continue;
    }
    if (opt != 'c') {
      fprintf(stderr, "atun-agent status: bad or incomplete option '%s'\n"
                      "Try 'atun-agent status --help'.\n", argv[optind - 1]);
      return AGENT_EXIT_USAGE;
    }
    *config = optarg;
  }
  if (optind != argc) {
    fprintf(stderr, "atun-agent status: unexpected argument '%s'\n"
                    "Try 'atun-agent status --help'.\n", argv[optind]);
    return AGENT_EXIT_USAGE;
  }
  return 0;
}

static const char *str(const cJSON *o, const char *key) {
  const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
  return s != NULL ? s : "-";
}

static double num(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItem(o, key);
  return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

/* Nonzero when the writer still runs; otherwise |*why| says what it saw. */
static int writer_alive(const cJSON *root, double now_s, const char **why) {
  pid_t pid = (pid_t)num(root, "pid");
  *why = "";
  if (strcmp(str(root, "state"), "stopped") == 0) *why = "stopped";
  else if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH))
    *why = "process gone (crashed or killed)";
  else if (now_s - num(root, "updated_unix") > AGENT_STATUS_STALE_S)
    *why = "not responding (status not updated)";
  return (*why)[0] == '\0';
}

static void print_list(const char *label, const cJSON *arr) {
  const cJSON *it;
  printf("%s", label);
  if (cJSON_GetArraySize(arr) == 0) printf(" (none)");
  cJSON_ArrayForEach(it, arr) printf(" %s", cJSON_IsString(it) ? it->valuestring : "?");
}

static void print_status(const cJSON *root, const char *why, double now_s) {
  int alive = why[0] == '\0';
  printf("%-12s %s (pid %.0f)%s%s, updated %.0f s ago\n", "agent",
         alive ? "running" : "NOT RUNNING", num(root, "pid"), alive ? "" : ": ", why,
         now_s - num(root, "updated_unix"));
  printf("%-12s %s (id %s), version %s\n", "name", str(root, "name"), str(root, "agent_id"),
         str(root, "version"));
  printf("%-12s %s\n", "gateway", str(root, "gateway"));
  printf("%-12s %s", "connection", alive ? str(root, "state") : "none");
  if (alive && cJSON_IsString(cJSON_GetObjectItem(root, "connected_at")))
    printf(" since %s", str(root, "connected_at"));
  printf(" (dials since start: %.0f)\n", num(root, "attempts"));
  printf("%-12s epoch %.0f:", "routes", num(root, "route_epoch"));
  print_list(" subnets", cJSON_GetObjectItem(root, "subnets"));
  print_list(", domains", cJSON_GetObjectItem(root, "domains"));
  printf("\n%-12s %.0f active\n", "streams", num(root, "active_streams"));
  double left = num(root, "cert_expires_unix") - now_s;
  printf("%-12s expires %s (%s %.0f days)\n", "certificate", str(root, "cert_expires_at"),
         left < 0 ? "EXPIRED" : "in", (left < 0 ? -left : left) / 86400.0);
  const cJSON *errs = cJSON_GetObjectItem(root, "last_errors");
  const cJSON *e;
  printf("\nlast warnings and errors (%d shown, %.0f since start)\n", cJSON_GetArraySize(errs),
         num(root, "errors_total"));
  cJSON_ArrayForEach(e, errs) printf("  %s\n", cJSON_IsString(e) ? e->valuestring : "?");
}

static int show(const char *path, int json) {
  char *text = NULL;
  size_t len = 0;
  int rv = agent_file_read(path, AGENT_STATUS_TEXT_MAX, 0, &text, &len);
  if (rv == ATUN_ERR_NOT_FOUND) {
    fprintf(stderr, "atun-agent status: agent not running: no %s (never started with "
                    "this config)\n", path);
    return AGENT_EXIT_NOT_RUNNING;
  }
  if (rv != 0) {
    fprintf(stderr, "atun-agent status: can not read %s: %s\n", path, agent_file_error(rv));
    return AGENT_EXIT_FAILURE;
  }
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (root == NULL || !cJSON_IsNumber(cJSON_GetObjectItem(root, "pid"))) {
    fprintf(stderr, "atun-agent status: %s is not a status file\n", path);
    cJSON_Delete(root);
    free(text);
    return AGENT_EXIT_FAILURE;
  }
  double now_s = (double)(agent_renew_wall_now() / ATUN_NS_PER_S);
  const char *why;
  int alive = writer_alive(root, now_s, &why);
  if (json) fputs(text, stdout);
  else print_status(root, why, now_s);
  cJSON_Delete(root);
  free(text);
  return alive ? AGENT_EXIT_OK : AGENT_EXIT_NOT_RUNNING;
}

int agent_status_main(int argc, char **argv) {
  const char *config;
  int json;
  int rv = parse_args(argc, argv, &config, &json);
  if (rv == 1) {
    fputs(usage_text, stdout);
    return AGENT_EXIT_OK;
  }
  if (rv != 0) return rv;
  atun_config_agent cfg;
  atun_config_error err;
  char msg[AGENT_MSG_MAX];
  if (agent_config_read(&cfg, config, msg, &err) != 0) {
    fprintf(stderr, "atun-agent status: %s\n", msg);
    return AGENT_EXIT_USAGE;
  }
  char path[AGENT_STATUS_PATH_MAX];
  rv = agent_status_path(path, &cfg);
  atun_config_agent_free(&cfg);
  if (rv != 0) {
    fprintf(stderr, "atun-agent status: %s has no cert_file: not enrolled\n", config);
    return AGENT_EXIT_USAGE;
  }
  return show(path, json);
}
