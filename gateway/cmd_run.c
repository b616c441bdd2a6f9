/*
 * `atun-gateway run`: the daemon.  One libev loop with the QUIC listener
 * (agents.c), the HTTPS API (api.c), the registry's expiry and these
 * timers and signals:
 *
 *   housekeeping  every minute: expired enrollment tokens purged, retired
 *                 QUIC TLS contexts freed, a postponed TLS swap retried
 *   renew         daily (and once at start): the server certificate is
 *                 renewed with its own key at 2/3 of its lifetime
 *   SIGTERM/INT   stop accepting, Goodbye to every agent, wait for them to
 *                 leave (at most drain_timeout), exit 0; a second signal
 *                 exits at once
 *   SIGHUP        reload the config: log level, admin tokens, SOCKS5 users
 *                 and listener, forwards (see on_reload)
 *   status        every few seconds: status.json in the state directory
 *                 (cmd_status.c)
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cmds.h"
#include "gw.h"
#include "log.h"
#include "socks.h"

#define HOUSEKEEPING_S 60.0
#define RENEW_CHECK_S (24.0 * 3600.0)
/* How often the drain looks whether every agent left. */
#define DRAIN_POLL_S 0.05
/* The sessions close what is left at drain_timeout (with a CONNECTION_CLOSE);
 * the process waits this much longer for those closes to go out. */
#define DRAIN_GRACE_NS (1 * ATUN_NS_PER_S)

static const char run_usage[] =
    "Usage: atun-gateway run --config PATH\n"
    "\n"
    "Runs the gateway: the QUIC listener for agents (quic_listen) and the HTTPS\n"
    "management API (api_listen), with the CA and store of the config's\n"
    "state_dir.  Logs logfmt lines to stderr.\n"
    "\n"
    "Signals: SIGTERM or SIGINT drain (no new clients or agents, Goodbye to\n"
    "every agent, open sessions get at most drain_timeout) and exit 0; a\n"
    "second one exits at once.  SIGHUP reloads log_level, admin_tokens,\n"
    "socks5 (users, enabled, listen) and forwards without dropping agents or\n"
    "sessions: removed listeners stop accepting while their connections go on.\n"
    "An invalid file is refused whole (config_reload_failed names the key);\n"
    "other changed keys wait for a restart (config_restart_needed).\n"
    "\n"
    "Writes status.json into state_dir every 5 s for `atun-gateway status`.\n"
    "\n"
    "Options:\n"
    "  --config PATH   the gateway config written by `atun-gateway init`\n"
    "  -h, --help, -V, --version\n"
    "\n"
    "Exit codes: 0 stopped by a signal, 1 runtime failure (a listener could not\n"
    "be opened, the store failed), 2 usage or config error, 3 state directory\n"
    "not initialized or unreadable.\n";

static atun_log_level log_level_of(atun_config_log_level l) {
  switch (l) {
    case ATUN_CONFIG_LOG_ERROR: return ATUN_LOG_ERROR;
    case ATUN_CONFIG_LOG_WARN: return ATUN_LOG_WARN;
    case ATUN_CONFIG_LOG_DEBUG: return ATUN_LOG_DEBUG;
    default: return ATUN_LOG_INFO;
  }
}

static int parse_args(int argc, char **argv, const char **config) {
  static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
  int c;
  *config = NULL;
  while ((c = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
    switch (c) {
      case 'c': *config = optarg; break;
      case 'h': fputs(run_usage, stdout); return -1;
      case 'V': atun_gw_print_version(); return -1;
      default: fputs("(see atun-gateway run --help)\n", stderr); return ATUN_GW_EXIT_USAGE;
    }
  }
  if (optind < argc || *config == NULL) {
    fputs("atun-gateway run: --config PATH is required (see --help)\n", stderr);
    return ATUN_GW_EXIT_USAGE;
  }
  return 0;
}

/* --- server certificate renewal ------------------------------------------------------- */

static void renew_check(atun_gw *gw) {
  int renewed = 0;
  int rv = atun_gw_pki_renew_server(gw->pki, &gw->cfg, gw->cfg.state_dir, atun_gw_wall_now(),
                                    &renewed);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "gateway", "server_cert_renewal_failed", "error=%s",
             atun_strerror(rv));
    return;
  }
  if (!renewed) return;
  char until[ATUN_GW_TIME_STRLEN];
  atun_gw_time_format(until, gw->pki->server_profile.not_after);
  ++gw->metrics.server_renewals;
  atun_log(ATUN_LOG_INFO, "gateway", "server_cert_renewed", "expires=%s", until);
  if (gw->quic == NULL) return; /* at start: the listeners load it anyway */
  gw->tls_reload_pending = atun_gw_tls_reload(gw, atun_gw_mono_now()) != 0;
  /* io/https has no certificate reload: the API server is made again.  Open
   * API connections are cut; clients retry. */
  atun_gw_api_stop(gw);
  atun_https_server_del(gw->https);
  gw->https = NULL;
  atun_gw_api_start(gw);
}

static void on_renew(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop, (void)revents;
  renew_check(w->data);
}

static void on_housekeeping(struct ev_loop *loop, ev_timer *w, int revents) {
  atun_gw *gw = w->data;
  (void)loop, (void)revents;
  ssize_t purged = atun_store_token_purge(gw->store, atun_gw_wall_now());
  if (purged > 0)
    atun_log(ATUN_LOG_DEBUG, "gateway", "tokens_purged", "count=%zd", purged);
  atun_tstamp mono = atun_gw_mono_now();
  atun_gw_tls_housekeeping(gw, mono);
  if (gw->tls_reload_pending) gw->tls_reload_pending = atun_gw_tls_reload(gw, mono) != 0;
}

/* --- signals ------------------------------------------------------------------------------ */

static void on_drain_poll(struct ev_loop *loop, ev_timer *w, int revents) {
  atun_gw *gw = w->data;
  (void)revents;
  size_t open = atun_gw_agents_open(gw);
  if (open > 0 && atun_gw_mono_now() < gw->drain_deadline) return;
  if (open > 0)
    atun_log(ATUN_LOG_WARN, "gateway", "drain_timeout", "connections_left=%zu", open);
  ev_break(loop, EVBREAK_ALL);
}

static void on_stop(struct ev_loop *loop, ev_signal *w, int revents) {
  atun_gw *gw = w->data;
  (void)revents;
  if (gw->draining) {
    atun_log(ATUN_LOG_WARN, "gateway", "shutdown_forced", "signal=%d", w->signum);
    ev_break(loop, EVBREAK_ALL);
    return;
  }
  atun_log(ATUN_LOG_INFO, "gateway", "shutdown_started", "signal=%d agents=%zu", w->signum,
           gw->nconns);
  gw->drain_deadline = atun_gw_mono_now() + gw->cfg.drain_timeout_ns + DRAIN_GRACE_NS;
  atun_gw_api_stop(gw);
  atun_gw_dataplane_pause(gw);
  atun_gw_agents_drain(gw);
  atun_gw_status_write(gw, "draining");
  ev_timer_set(&gw->drain, 0.0, DRAIN_POLL_S);
  ev_timer_again(loop, &gw->drain);
}

static int endpoint_differs(const atun_quic_endpoint *a, const atun_quic_endpoint *b) {
  return a->port != b->port || a->addr.family != b->addr.family ||
         memcmp(a->addr.bytes, b->addr.bytes, sizeof(a->addr.bytes)) != 0;
}

static int limits_differ(const atun_config_limits *a, const atun_config_limits *b) {
  return a->max_agents != b->max_agents || a->max_streams_per_agent != b->max_streams_per_agent ||
         a->client_max_connections != b->client_max_connections ||
         a->api_max_connections != b->api_max_connections ||
         a->api_max_request_bytes != b->api_max_request_bytes ||
         a->api_header_timeout_ns != b->api_header_timeout_ns ||
         a->enroll_burst != b->enroll_burst || a->enroll_interval_ns != b->enroll_interval_ns;
}

static int names_differ(const atun_config_gateway *a, const atun_config_gateway *b) {
  if (a->server_name_count != b->server_name_count) return 1;
  for (size_t i = 0; i < a->server_name_count; ++i)
    if (strcmp(a->server_names[i], b->server_names[i]) != 0) return 1;
  return 0;
}

/* Names the keys of |fresh| that differ from the running |cur| and that
 * only a restart applies, into |out| (comma-separated; "" when none). */
static void restart_keys(const atun_config_gateway *cur, const atun_config_gateway *fresh,
                         char *out, size_t cap) {
  struct {
    const char *key;
    int differs;
  } keys[] = {
      {"state_dir", strcmp(cur->state_dir, fresh->state_dir) != 0},
      {"quic_listen", endpoint_differs(&cur->quic_listen, &fresh->quic_listen)},
      {"api_listen", endpoint_differs(&cur->api_listen, &fresh->api_listen)},
      {"server_names", names_differ(cur, fresh)},
      {"heartbeat_interval", cur->heartbeat_interval_ns != fresh->heartbeat_interval_ns},
      {"offline_missed_heartbeats",
       cur->offline_missed_heartbeats != fresh->offline_missed_heartbeats},
      {"drain_timeout", cur->drain_timeout_ns != fresh->drain_timeout_ns},
      {"limits", limits_differ(&cur->limits, &fresh->limits)},
  };
  size_t len = 0;
  out[0] = '\0';
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); ++i) {
    if (!keys[i].differs) continue;
    int n = snprintf(out + len, cap - len, "%s%s", len > 0 ? "," : "", keys[i].key);
    if (n < 0 || (size_t)n >= cap - len) return;
    len += (size_t)n;
  }
}

#define SWAP(type, a, b) \
  do {                   \
    type tmp_ = (a);     \
    (a) = (b);           \
    (b) = tmp_;          \
  } while (0)

/* Moves what a reload changes from |fresh| into |cur|; |fresh| gets the old
 * lists, for its owner to free. */
static void take_reloadable(atun_config_gateway *cur, atun_config_gateway *fresh) {
  SWAP(atun_config_admin_token *, cur->admin_tokens, fresh->admin_tokens);
  SWAP(size_t, cur->admin_token_count, fresh->admin_token_count);
  SWAP(atun_config_socks5_user *, cur->socks5_users, fresh->socks5_users);
  SWAP(size_t, cur->socks5_user_count, fresh->socks5_user_count);
  SWAP(atun_config_forward *, cur->forwards, fresh->forwards);
  SWAP(size_t, cur->forward_count, fresh->forward_count);
  cur->socks5_enabled = fresh->socks5_enabled;
  cur->socks5_listen = fresh->socks5_listen;
  cur->log_level = fresh->log_level;
}

/* What changes without a restart is taken from the new file: log level,
 * admin tokens, the SOCKS5 users and listener, the forwards.  A broken
 * file is refused whole and the old config stays.  Agents and sessions
 * are not touched; client listeners are reconciled by
 * atun_gw_dataplane_reload().  While draining nothing is taken: a new
 * listener would accept clients. */
static void on_reload(struct ev_loop *loop, ev_signal *w, int revents) {
  atun_gw *gw = w->data;
  atun_config_gateway fresh;
  char msg[ATUN_CONFIG_MSG_MAX + ATUN_GW_PATH_MAX];
  char later[256];
  (void)loop, (void)revents;
  if (atun_gw_config_load(&fresh, gw->config_path, msg, sizeof(msg)) != 0) {
    atun_log(ATUN_LOG_ERROR, "gateway", "config_reload_failed", "error=%s", msg);
    return;
  }
  if (gw->draining) {
    atun_log(ATUN_LOG_WARN, "gateway", "config_reload_ignored", "reason=%s", "draining");
    atun_config_gateway_free(&fresh);
    return;
  }
  int rv = atun_gw_dataplane_reload(gw, &fresh);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "gateway", "config_reload_failed", "error=%s key=%s",
             atun_strerror(rv), "socks5.users");
    atun_config_gateway_free(&fresh);
    return;
  }
  restart_keys(&gw->cfg, &fresh, later, sizeof(later));
  take_reloadable(&gw->cfg, &fresh);
  atun_config_gateway_free(&fresh);
  atun_log_set_level(log_level_of(gw->cfg.log_level));
  if (later[0] != '\0')
    atun_log(ATUN_LOG_WARN, "gateway", "config_restart_needed", "keys=%s", later);
  atun_log(ATUN_LOG_INFO, "gateway", "config_reloaded",
           "log_level=%s admin_tokens=%zu socks5_users=%zu forwards=%zu",
           atun_config_log_level_name(gw->cfg.log_level), gw->cfg.admin_token_count,
           gw->cfg.socks5_user_count, gw->cfg.forward_count);
  atun_gw_status_write(gw, "running");
}

/* --- start and stop ------------------------------------------------------------------------- */

static void watchers_start(atun_gw *gw) {
  ev_signal_init(&gw->sigterm, on_stop, SIGTERM);
  ev_signal_init(&gw->sigint, on_stop, SIGINT);
  ev_signal_init(&gw->sighup, on_reload, SIGHUP);
  ev_timer_init(&gw->housekeeping, on_housekeeping, HOUSEKEEPING_S, HOUSEKEEPING_S);
  ev_timer_init(&gw->renew, on_renew, RENEW_CHECK_S, RENEW_CHECK_S);
  ev_init(&gw->drain, on_drain_poll);
  gw->sigterm.data = gw->sigint.data = gw->sighup.data = gw;
  gw->housekeeping.data = gw->renew.data = gw->drain.data = gw;
  ev_signal_start(gw->loop, &gw->sigterm);
  ev_signal_start(gw->loop, &gw->sigint);
  ev_signal_start(gw->loop, &gw->sighup);
  ev_timer_start(gw->loop, &gw->housekeeping);
  ev_timer_start(gw->loop, &gw->renew);
}

static void watchers_stop(atun_gw *gw) {
  ev_signal_stop(gw->loop, &gw->sigterm);
  ev_signal_stop(gw->loop, &gw->sigint);
  ev_signal_stop(gw->loop, &gw->sighup);
  ev_timer_stop(gw->loop, &gw->housekeeping);
  ev_timer_stop(gw->loop, &gw->renew);
  ev_timer_stop(gw->loop, &gw->drain);
}

static int serve(atun_gw *gw) {
  int rv = atun_gw_api_init(gw);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "gateway", "api_init_failed", "error=%s", atun_strerror(rv));
    return ATUN_GW_EXIT_RUNTIME;
  }
  if (atun_gw_agents_start(gw) != 0 || atun_gw_api_start(gw) != 0 ||
      atun_gw_dataplane_start(gw) != 0)
    return ATUN_GW_EXIT_RUNTIME;
  watchers_start(gw);
  atun_log(ATUN_LOG_INFO, "gateway", "gateway_started", "version=%s state_dir=%s",
           ATUN_GW_VERSION, gw->cfg.state_dir);
  atun_gw_status_start(gw);
  ev_run(gw->loop, 0);
  watchers_stop(gw);
  atun_gw_status_stop(gw);
  return ATUN_GW_EXIT_OK;
}

int atun_gw_cmd_run(int argc, char **argv) {
  static atun_gw gw;
  const char *config;
  int rv = parse_args(argc, argv, &config);
  if (rv != 0) return rv < 0 ? ATUN_GW_EXIT_OK : rv;
  gw.config_path = config;
  atun_gw_status_capture();
  gw.pki = calloc(1, sizeof(*gw.pki));
  if (gw.pki == NULL) return ATUN_GW_EXIT_RUNTIME;
  rv = atun_gw_state_open(config, &gw.cfg, gw.pki, &gw.store);
  if (rv != 0) {
    free(gw.pki);
    return rv;
  }
  atun_log_set_level(log_level_of(gw.cfg.log_level));
  /* A write to an API client that went away must be an error, not death. */
  signal(SIGPIPE, SIG_IGN);
  renew_check(&gw);
  gw.loop = ev_default_loop(0);
  rv = gw.loop != NULL ? serve(&gw) : ATUN_GW_EXIT_RUNTIME;
  atun_gw_api_free(&gw);
  atun_gw_dataplane_stop(&gw);
  atun_gw_agents_stop(&gw);
  atun_store_close(gw.store);
  atun_config_gateway_free(&gw.cfg);
  memset(gw.pki, 0, sizeof(*gw.pki));
  free(gw.pki);
  atun_log(rv == 0 ? ATUN_LOG_INFO : ATUN_LOG_ERROR, "gateway", "gateway_stopped", "exit=%d", rv);
  return rv;
}
