/*
 * The gateway's status file and `atun-gateway status`.
 *
 * The running gateway writes <state_dir>/status.json (mode 0600, atomic
 * rename) at start, every STATUS_REFRESH_S, after a reload, when a drain
 * starts and when it stops.  `status` reads it, so it needs no admin token
 * and no API reachable from where it runs, only read access to the state
 * directory (root or the service user).  The file names its writer's pid:
 * a pid that is gone, a file older than STATUS_STALE_S or a "stopped"
 * state mean the daemon is not running, and `status` says so with its own
 * exit code.
 *
 * atun_log_keep_recent() passes every line to stderr as before and keeps
 * the last ATUN_LOG_RECENT_MAX warn and error lines for the file.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "clock.h"
#include "cmds.h"
#include "fsutil.h"
#include "gw.h"
#include "log.h"
#include "socks.h"

#define STATUS_FILE "status.json"
#define STATUS_FORMAT 1
#define STATUS_REFRESH_S 5.0
/* Older than this (three refreshes) and the writer is taken for hung. */
#define STATUS_STALE_S 15
/* Agents written into the file; the counts cover all of them. */
#define STATUS_AGENTS_MAX 1000
#define STATUS_PAGE 100
#define STATUS_LISTENERS_MAX 64
#define STATUS_TEXT_MAX ((size_t)4 << 20)

static const char status_usage[] =
    "Usage: atun-gateway status --config PATH [--json]\n"
    "\n"
    "Prints what the running gateway reported last: agents (online, offline,\n"
    "revoked) with their routes and streams, agent connections and client\n"
    "connections, the client listeners (SOCKS5, forwards), when the CA and\n"
    "the server certificate expire, and the last warnings and errors.\n"
    "\n"
    "The gateway writes this into status.json in its state directory every\n"
    "5 seconds, so run this as root or as the service user.  It needs no\n"
    "admin token and works whatever api_listen is.\n"
    "\n"
    "Options:\n"
    "  --config PATH   the gateway config (its state_dir holds status.json)\n"
    "  --json          print the status file as it is\n"
    "  -h, --help, -V, --version\n"
    "\n"
    "Exit codes: 0 the gateway is running, 1 the status file is unreadable\n"
    "or malformed, 2 usage or config error, 4 the gateway is not running\n"
    "(never started here, stopped, its process is gone, or it has not\n"
    "updated the file for 15 seconds).\n";

/* --- the writer (in the daemon) ------------------------------------------------------------ */

static struct {
  atun_gw *gw;
  ev_timer timer;
  atun_tstamp started; /* wall */
} wr;

static void add_time(cJSON *o, const char *key, atun_tstamp wall) {
  char text[ATUN_GW_TIME_STRLEN];
  atun_gw_time_format(text, wall);
  cJSON_AddStringToObject(o, key, text);
}

static void add_endpoint(cJSON *o, const char *key, const atun_addr *addr, uint16_t port) {
  char text[ATUN_HOSTPORT_STRLEN];
  atun_target t = {.kind = ATUN_TARGET_ADDR, .addr = *addr};
  atun_hostport_format(text, &t, port);
  cJSON_AddStringToObject(o, key, text);
}

static void add_listeners(atun_gw *gw, cJSON *root) {
  atun_gw_listener_info info[STATUS_LISTENERS_MAX];
  size_t n = atun_gw_dataplane_listeners(gw, info, STATUS_LISTENERS_MAX);
  cJSON *arr = cJSON_AddArrayToObject(root, "listeners");
  for (size_t i = 0; i < n && i < STATUS_LISTENERS_MAX; ++i) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", info[i].fwd != NULL ? "forward" : "socks5");
    add_endpoint(o, "listen", &info[i].listen.addr, info[i].listen.port);
    if (info[i].fwd != NULL) {
      char text[ATUN_HOSTPORT_STRLEN];
      atun_hostport_format(text, &info[i].fwd->target, info[i].fwd->port);
      cJSON_AddStringToObject(o, "target", text);
      cJSON_AddStringToObject(o, "agent", info[i].fwd->agent);
    }
    cJSON_AddNumberToObject(o, "clients", (double)info[i].clients);
    cJSON_AddItemToArray(arr, o);
  }
  cJSON_AddNumberToObject(root, "listeners_omitted",
                          (double)(n > STATUS_LISTENERS_MAX ? n - STATUS_LISTENERS_MAX : 0));
}

typedef struct agent_counts {
  size_t by_status[3]; /* online, offline, revoked */
  size_t total, streams;
} agent_counts;

static void count_agent(agent_counts *c, const cJSON *o) {
  const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(o, "status"));
  int i = st == NULL ? 1 : strcmp(st, "online") == 0 ? 0 : strcmp(st, "revoked") == 0 ? 2 : 1;
  ++c->by_status[i];
  ++c->total;
  c->streams += (size_t)cJSON_GetNumberValue(cJSON_GetObjectItem(o, "active_streams"));
}

/* Every enrolled agent is counted; the first STATUS_AGENTS_MAX are listed.
 * Returns 0 or what atun_store_agent_list returns. */
static int add_agents(atun_gw *gw, cJSON *root, atun_tstamp mono) {
  atun_agent_record recs[STATUS_PAGE];
  agent_counts c = {{0}, 0, 0};
  cJSON *arr = cJSON_AddArrayToObject(root, "agents");
  for (size_t offset = 0;; offset += STATUS_PAGE) {
    ssize_t n = atun_store_agent_list(gw->store, recs, STATUS_PAGE, offset);
    if (n < 0) return (int)n;
    for (ssize_t i = 0; i < n; ++i) {
      cJSON *o = atun_gw_api_agent_json(gw, &recs[i], mono);
      if (o == NULL) continue;
      count_agent(&c, o);
      if (c.total <= STATUS_AGENTS_MAX) cJSON_AddItemToArray(arr, o);
      else cJSON_Delete(o);
    }
    if ((size_t)n < STATUS_PAGE) break;
  }
  cJSON_AddNumberToObject(root, "agents_online", (double)c.by_status[0]);
  cJSON_AddNumberToObject(root, "agents_offline", (double)c.by_status[1]);
  cJSON_AddNumberToObject(root, "agents_revoked", (double)c.by_status[2]);
  cJSON_AddNumberToObject(root, "agents_omitted",
                          (double)(c.total > STATUS_AGENTS_MAX ? c.total - STATUS_AGENTS_MAX : 0));
  cJSON_AddNumberToObject(root, "streams", (double)c.streams);
  return 0;
}

static void add_line(const char *line, void *arr) {
  cJSON_AddItemToArray(arr, cJSON_CreateString(line));
}

static void add_errors(cJSON *root) {
  cJSON *arr = cJSON_AddArrayToObject(root, "last_errors");
  cJSON_AddNumberToObject(root, "errors_total", (double)atun_log_recent(add_line, arr));
}

static cJSON *status_json(atun_gw *gw, const char *state) {
  atun_tstamp wall = atun_gw_wall_now();
  cJSON *root = cJSON_CreateObject();
  if (root == NULL) return NULL;
  cJSON_AddNumberToObject(root, "format", STATUS_FORMAT);
  cJSON_AddStringToObject(root, "version", ATUN_GW_VERSION);
  cJSON_AddNumberToObject(root, "pid", (double)getpid());
  cJSON_AddStringToObject(root, "state", state);
  add_time(root, "updated_at", wall);
  cJSON_AddNumberToObject(root, "updated_unix", (double)(wall / ATUN_NS_PER_S));
  add_time(root, "started_at", wr.started);
  add_endpoint(root, "quic_listen", &gw->cfg.quic_listen.addr, gw->cfg.quic_listen.port);
  add_endpoint(root, "api_listen", &gw->cfg.api_listen.addr, gw->api_port);
  add_time(root, "ca_expires_at", gw->pki->ca_profile.not_after);
  cJSON_AddNumberToObject(root, "ca_expires_unix",
                          (double)(gw->pki->ca_profile.not_after / ATUN_NS_PER_S));
  add_time(root, "server_cert_expires_at", gw->pki->server_profile.not_after);
  cJSON_AddNumberToObject(root, "server_cert_expires_unix",
                          (double)(gw->pki->server_profile.not_after / ATUN_NS_PER_S));
  cJSON_AddNumberToObject(root, "agent_connections", (double)gw->nconns);
  cJSON_AddNumberToObject(root, "client_connections", (double)gw->dp_counts.clients);
  add_listeners(gw, root);
  int rv = add_agents(gw, root, atun_gw_mono_now());
  if (rv != 0) cJSON_AddStringToObject(root, "agents_error", atun_strerror(rv));
  add_errors(root);
  return root;
}

void atun_gw_status_write(atun_gw *gw, const char *state) {
  char path[ATUN_GW_PATH_MAX];
  if (atun_gw_path(path, gw->cfg.state_dir, STATUS_FILE) != 0) return;
  cJSON *root = status_json(gw, state);
  char *text = root != NULL ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  int rv = text != NULL ? atun_fs_write_atomic(path, text, strlen(text), ATUN_FS_MODE_SECRET, 0)
                        : ATUN_ERR_NOMEM;
  cJSON_free(text);
  /* Logged at debug only: a warning here would land in the next file. */
  if (rv != 0)
    atun_log(ATUN_LOG_DEBUG, "gateway", "status_write_failed", "path=%s error=%s", path,
             atun_strerror(rv));
}

static void on_status_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop, (void)revents;
  atun_gw *gw = w->data;
  atun_gw_status_write(gw, gw->draining ? "draining" : "running");
}

void atun_gw_status_capture(void) { atun_log_keep_recent(); }

void atun_gw_status_start(atun_gw *gw) {
  wr.gw = gw;
  wr.started = atun_gw_wall_now();
  ev_timer_init(&wr.timer, on_status_timer, STATUS_REFRESH_S, STATUS_REFRESH_S);
  wr.timer.data = gw;
  ev_timer_start(gw->loop, &wr.timer);
  atun_gw_status_write(gw, "running");
}

void atun_gw_status_stop(atun_gw *gw) {
  ev_timer_stop(gw->loop, &wr.timer);
  atun_gw_status_write(gw, "stopped");
}

/* --- the reader (`atun-gateway status`) ------------------------------------------------------- */

static int parse_args(int argc, char **argv, const char **config, int *json) {
  static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                           {"json", no_argument, NULL, 'j'},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
  int c;
  *config = NULL;
  *json = 0;
  while ((c = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
    switch (c) {
      case 'c': *config = optarg; break;
      case 'j': *json = 1; break;
      case 'h': fputs(status_usage, stdout); return -1;
      case 'V': atun_gw_print_version(); return -1;
      default: fputs("(see atun-gateway status --help)\n", stderr); return ATUN_GW_EXIT_USAGE;
    }
  }
  if (optind < argc || *config == NULL) {
    fputs("atun-gateway status: --config PATH is required (see --help)\n", stderr);
    return ATUN_GW_EXIT_USAGE;
  }
  return 0;
}

static const char *str(const cJSON *o, const char *key) {
  const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
  return s != NULL ? s : "?";
}

static double num(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItem(o, key);
  return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

static void print_expiry(const char *label, const cJSON *root, const char *key, double now_s) {
  char unix_key[64];
  snprintf(unix_key, sizeof(unix_key), "%s_expires_unix", key);
  char at_key[64];
  snprintf(at_key, sizeof(at_key), "%s_expires_at", key);
  double left = num(root, unix_key) - now_s;
  printf("%-12s expires %s (%s %.0f days)\n", label, str(root, at_key),
         left < 0 ? "EXPIRED" : "in", (left < 0 ? -left : left) / 86400.0);
}

static void print_list(const cJSON *arr, const char *key) {
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    const char *s = cJSON_IsString(it) ? it->valuestring : str(it, key);
    printf(" %s", s);
  }
}

static void print_agents(const cJSON *root) {
  const cJSON *a;
  printf("\nagents\n");
  cJSON_ArrayForEach(a, cJSON_GetObjectItem(root, "agents")) {
    printf("  %-20s %-8s id %s  streams %.0f  cert expires %s\n    routes:", str(a, "name"),
           str(a, "status"), str(a, "id"), num(a, "active_streams"), str(a, "cert_expires_at"));
    print_list(cJSON_GetObjectItem(a, "subnets"), NULL);
    print_list(cJSON_GetObjectItem(a, "domains"), "name");
    printf("\n");
  }
  if (num(root, "agents_omitted") > 0)
    printf("  (%.0f more not listed)\n", num(root, "agents_omitted"));
}

static void print_listeners(const cJSON *root) {
  const cJSON *l;
  const char *label = "listeners";
  cJSON_ArrayForEach(l, cJSON_GetObjectItem(root, "listeners")) {
    printf("%-12s %-7s %s", label, str(l, "kind"), str(l, "listen"));
    if (cJSON_GetObjectItem(l, "target") != NULL) {
      const char *agent = str(l, "agent");
      printf(" -> %s%s%s", str(l, "target"), agent[0] != '\0' ? " via " : "", agent);
    }
    printf(" (%.0f clients)\n", num(l, "clients"));
    label = "";
  }
  if (num(root, "listeners_omitted") > 0)
    printf("%-12s (%.0f more not listed)\n", label, num(root, "listeners_omitted"));
}

static void print_errors(const cJSON *root) {
  const cJSON *e;
  const cJSON *arr = cJSON_GetObjectItem(root, "last_errors");
  printf("\nlast warnings and errors (%d shown, %.0f since start)\n", cJSON_GetArraySize(arr),
         num(root, "errors_total"));
  cJSON_ArrayForEach(e, arr) printf("  %s\n", cJSON_IsString(e) ? e->valuestring : "?");
}

/* Nonzero when the writer still runs: not "stopped", its pid exists and
 * the file is fresh.  Otherwise |*why| says what was seen. */
static int writer_alive(const cJSON *root, double now_s, const char **why) {
  pid_t pid = (pid_t)num(root, "pid");
  *why = "";
  if (strcmp(str(root, "state"), "stopped") == 0) *why = "stopped";
  else if (pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH))
    *why = "process gone (crashed or killed)";
  else if (now_s - num(root, "updated_unix") > STATUS_STALE_S)
    *why = "not responding (status not updated)";
  return (*why)[0] == '\0';
}

static void print_status(const cJSON *root, int alive, const char *why, double now_s) {
  printf("%-12s %s (pid %.0f)%s%s, updated %.0f s ago\n", "gateway",
         alive ? str(root, "state") : "NOT RUNNING", num(root, "pid"), alive ? "" : ": ",
         alive ? "" : why, now_s - num(root, "updated_unix"));
  printf("%-12s %s, started %s\n", "version", str(root, "version"), str(root, "started_at"));
  printf("%-12s quic %s/udp, api %s/tcp\n", "listening", str(root, "quic_listen"),
         str(root, "api_listen"));
  print_expiry("ca", root, "ca", now_s);
  print_expiry("server cert", root, "server_cert", now_s);
  printf("%-12s %.0f online, %.0f offline, %.0f revoked\n", "agents",
         num(root, "agents_online"), num(root, "agents_offline"), num(root, "agents_revoked"));
  printf("%-12s %.0f agent connections, %.0f client connections, %.0f streams\n", "sessions",
         num(root, "agent_connections"), num(root, "client_connections"), num(root, "streams"));
  print_listeners(root);
  print_agents(root);
  print_errors(root);
}

/* Reads and parses the status file at |path|.  Returns 0, an exit code,
 * with a message on stderr. */
static int load_status(const char *path, char **text, cJSON **root) {
  size_t len = 0;
  *text = malloc(STATUS_TEXT_MAX + 1);
  if (*text == NULL) return ATUN_GW_EXIT_RUNTIME;
  int rv = atun_fs_read(path, *text, STATUS_TEXT_MAX, &len);
  if (rv == ATUN_ERR_NOT_FOUND) {
    fprintf(stderr, "atun-gateway status: gateway not running: no %s (it was never "
            "started with this state_dir)\n", path);
    return ATUN_GW_EXIT_NOT_RUNNING;
  }
  if (rv != 0) {
    fprintf(stderr, "atun-gateway status: can not read %s: %s (%s)\n", path, atun_strerror(rv),
            strerror(errno));
    return ATUN_GW_EXIT_RUNTIME;
  }
  (*text)[len] = '\0';
  *root = cJSON_ParseWithLength(*text, len);
  if (*root == NULL || !cJSON_IsNumber(cJSON_GetObjectItem(*root, "pid"))) {
    fprintf(stderr, "atun-gateway status: %s is not a status file\n", path);
    return ATUN_GW_EXIT_RUNTIME;
  }
  return 0;
}

int atun_gw_cmd_status(int argc, char **argv) {
  const char *config;
  int json;
  int rv = parse_args(argc, argv, &config, &json);
  if (rv != 0) return rv < 0 ? ATUN_GW_EXIT_OK : rv;
  atun_config_gateway cfg;
  char msg[ATUN_CONFIG_MSG_MAX + ATUN_GW_PATH_MAX];
  if (atun_gw_config_load(&cfg, config, msg, sizeof(msg)) != 0) {
    fprintf(stderr, "atun-gateway status: %s\n", msg);
    return ATUN_GW_EXIT_USAGE;
  }
  char path[ATUN_GW_PATH_MAX];
  rv = atun_gw_path(path, cfg.state_dir, STATUS_FILE);
  atun_config_gateway_free(&cfg);
  if (rv != 0) return ATUN_GW_EXIT_USAGE;
  char *text = NULL;
  cJSON *root = NULL;
  rv = load_status(path, &text, &root);
  if (rv == 0) {
    double now_s = (double)(atun_gw_wall_now() / ATUN_NS_PER_S);
    const char *why = "";
    int alive = writer_alive(root, now_s, &why);
    if (json) fputs(text, stdout);
    else print_status(root, alive, why, now_s);
    rv = alive ? ATUN_GW_EXIT_OK : ATUN_GW_EXIT_NOT_RUNNING;
  }
  cJSON_Delete(root);
  free(text);
  return rv;
}
