/*
 * `atun-gateway init`: a new state directory with a CA, a server
 * certificate, the store and a default config.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth.h"
#include "clock.h"
#include "cmds.h"
#include "enroll.h"
#include "fsutil.h"
#include "state.h"

static const char init_usage[] =
    "Usage: atun-gateway init --state-dir DIR --hostname NAME [--hostname NAME...]\n"
    "                         [--ip ADDR...] [--api-listen ADDR:PORT]\n"
    "                         [--quic-listen ADDR:PORT] [--force]\n"
    "\n"
    "Creates in DIR (made if missing, mode 0700):\n"
    "  ca.key, ca.crt          the CA (ECDSA P-256, long-lived)\n"
    "  server.key, server.crt  the server certificate for every --hostname and --ip\n"
    "  gateway.db              the store (agents, tokens, revocations, audit)\n"
    "  gateway.json            a default config naming DIR, with one admin token\n"
    "Keys and the config are written atomically with mode 0600.  Prints the CA's\n"
    "SPKI SHA-256 pin and the admin token (shown only once).\n"
    "\n"
    "Options:\n"
    "  --state-dir DIR          where to create the files (required)\n"
    "  --hostname NAME          DNS name of the gateway, repeatable; the first name\n"
    "                           (or address) is what agents are told to dial\n"
    "  --ip ADDR                IP address of the gateway, repeatable\n"
    "  --api-listen ADDR:PORT   HTTPS API address (default 127.0.0.1:8443)\n"
    "  --quic-listen ADDR:PORT  QUIC address (default [::]:4433)\n"
    "  --force                  replace an existing CA, certificates and config;\n"
    "                           the store is kept (revocations stay), but agents\n"
    "                           enrolled with the old CA must enroll again\n"
    "  -h, --help, -V, --version\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 a CA already exists.\n";

typedef struct init_opts {
  const char *state_dir;
  const char *hosts[ATUN_CONFIG_SERVER_NAMES_MAX];
  size_t nhosts;
  int has_api, has_quic, force;
  atun_quic_endpoint api, quic;
} init_opts;

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("atun-gateway init: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\n(see atun-gateway init --help)\n", stderr);
  return ATUN_GW_EXIT_USAGE;
}

static int add_host(init_opts *o, const char *h, int is_ip) {
  atun_addr a;
  if (is_ip ? atun_addr_parse(&a, h) != 0 : !atun_ca_dns_name_valid(h))
    return usage_error(is_ip ? "not an IP address: \"%s\"" : "not a DNS host name: \"%s\"", h);
  if (o->nhosts == ATUN_CONFIG_SERVER_NAMES_MAX)
    return usage_error("more than %d names and addresses", ATUN_CONFIG_SERVER_NAMES_MAX);
  o->hosts[o->nhosts++] = h;
  return 0;
}

static int parse_listen(atun_quic_endpoint *e, const char *s) {
  atun_target t;
  if (atun_hostport_parse(&t, &e->port, s, strlen(s), 0) != 0 || t.kind != ATUN_TARGET_ADDR)
    return usage_error("expected an IP address and port such as 127.0.0.1:8443, not \"%s\"", s);
  e->addr = t.addr;
  return 0;
}

static int parse_args(init_opts *o, int argc, char **argv) {
  static const struct option longopts[] = {
      {"state-dir", required_argument, NULL, 'd'}, {"hostname", required_argument, NULL, 'n'},
      {"ip", required_argument, NULL, 'i'},        {"api-listen", required_argument, NULL, 'a'},
      {"quic-listen", required_argument, NULL, 'q'}, {"force", no_argument, NULL, 'f'},
      {"help", no_argument, NULL, 'h'},            {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0}};
  int c, rv = 0;
  memset(o, 0, sizeof(*o));
  while (rv == 0 && (c = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
    switch (c) {
      case 'd': o->state_dir = optarg; break;
      case 'n': rv = add_host(o, optarg, 0); break;
      case 'i': rv = add_host(o, optarg, 1); break;
      case 'a': o->has_api = 1; rv = parse_listen(&o->api, optarg); break;
      case 'q': o->has_quic = 1; rv = parse_listen(&o->quic, optarg); break;
      case 'f': o->force = 1; break;
      case 'h': fputs(init_usage, stdout); return -1;
      case 'V': atun_gw_print_version(); return -1;
      default: return usage_error("bad option");
    }
  }
  if (rv != 0) return rv;
  if (optind < argc) return usage_error("unexpected argument \"%s\"", argv[optind]);
  if (o->state_dir == NULL) return usage_error("--state-dir is required");
  if (o->nhosts == 0) return usage_error("at least one --hostname or --ip is required");
  return 0;
}

static int exists(const char *dir, const char *file) {
  char path[ATUN_GW_PATH_MAX];
  struct stat st;
  return atun_gw_path(path, dir, file) == 0 && lstat(path, &st) == 0;
}

/* Makes the directory and turns it into an absolute path for the config,
 * so that the gateway can be started from anywhere. */
static int prepare_dir(const char *dir, char abs[PATH_MAX]) {
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "atun-gateway init: %s: %s\n", dir, strerror(errno));
    return ATUN_GW_EXIT_RUNTIME;
  }
  if (realpath(dir, abs) == NULL) {
    fprintf(stderr, "atun-gateway init: %s: %s\n", dir, strerror(errno));
    return ATUN_GW_EXIT_RUNTIME;
  }
  if (strlen(abs) > ATUN_CONFIG_PATH_MAX - 32) {
    fprintf(stderr, "atun-gateway init: %s: path too long\n", abs);
    return ATUN_GW_EXIT_USAGE;
  }
  return 0;
}

static int write_config(const init_opts *o, const char *dir, atun_config_gateway *cfg,
                        char secret[ATUN_GW_ADMIN_SECRET_STRLEN]) {
  atun_config_admin_token admin;
  char path[ATUN_GW_PATH_MAX], *text = NULL;
  size_t len;
  int rv = atun_gw_admin_secret_new(secret, admin.sha256, atun_ca_sysrand());
  if (rv != 0) return rv;
  snprintf(admin.name, sizeof(admin.name), "admin");
  admin.scopes = ATUN_CONFIG_SCOPE_READ | ATUN_CONFIG_SCOPE_WRITE;
  /* The struct borrows |admin| only for serializing; it owns no list. */
  cfg->admin_tokens = &admin;
  cfg->admin_token_count = 1;
  rv = atun_config_gateway_serialize(cfg, &text, &len);
  cfg->admin_tokens = NULL;
  cfg->admin_token_count = 0;
  if (rv == 0) rv = atun_gw_path(path, dir, ATUN_GW_CONFIG_FILE);
  if (rv == 0)
    rv = atun_fs_write_atomic(path, text, len, ATUN_FS_MODE_SECRET,
                              o->force ? 0 : ATUN_FS_NOREPLACE);
  atun_mem_free(cfg->mem, text);
  return rv;
}

static void fill_config(const init_opts *o, const char *dir, atun_config_gateway *cfg) {
  atun_config_gateway_default(cfg, NULL);
  /* prepare_dir() checked the length. */
  memcpy(cfg->state_dir, dir, strlen(dir) + 1);
  for (size_t i = 0; i < o->nhosts; ++i) {
    atun_target t;
    /* Stored in the form the config reader gives back (lowercase names,
     * canonical addresses). */
    atun_host_parse(&t, o->hosts[i], strlen(o->hosts[i]));
    if (t.kind == ATUN_TARGET_ADDR)
      atun_addr_format(cfg->server_names[i], &t.addr);
    else
      snprintf(cfg->server_names[i], sizeof(cfg->server_names[i]), "%s", t.host);
  }
  cfg->server_name_count = o->nhosts;
  if (o->has_api) cfg->api_listen = o->api;
  if (o->has_quic) cfg->quic_listen = o->quic;
}

static int fail_step(const char *what, int err) {
  fprintf(stderr, "atun-gateway init: %s: %s", what, atun_strerror(err));
  if (err == ATUN_ERR_EXISTS) fputs(" (use --force to replace it)", stderr);
  fputc('\n', stderr);
  return err == ATUN_ERR_EXISTS ? ATUN_GW_EXIT_STATE : ATUN_GW_EXIT_RUNTIME;
}

static void report(const char *dir, const atun_gw_pki *pki, const atun_config_gateway *cfg,
                   const char *secret) {
  char until[ATUN_GW_TIME_STRLEN], pin[ATUN_SPKI_PIN_HEX_LEN + 1], url[ATUN_ENROLL_URL_MAX + 1];
  atun_gw_time_format(until, pki->ca_profile.not_after);
  printf("created %s/%s (CA key, mode 0600)\n", dir, ATUN_GW_CA_KEY);
  printf("created %s/%s (CA certificate, valid until %s)\n", dir, ATUN_GW_CA_CERT, until);
  atun_gw_time_format(until, pki->server_profile.not_after);
  printf("created %s/%s (server key, mode 0600)\n", dir, ATUN_GW_SERVER_KEY);
  printf("created %s/%s (server certificate for", dir, ATUN_GW_SERVER_CERT);
  for (size_t i = 0; i < cfg->server_name_count; ++i)
    printf("%s %s", i ? "," : "", cfg->server_names[i]);
  printf(", valid until %s)\n", until);
  printf("created %s/%s (store, mode 0600)\n", dir, ATUN_GW_STORE_FILE);
  printf("created %s/%s (config, mode 0600)\n", dir, ATUN_GW_CONFIG_FILE);
  atun_spki_pin_format_hex(pin, pki->ca_pin);
  atun_config_gateway_api_url(cfg, url);
  printf("ca_spki_sha256 %s\n", pin);
  printf("api_url %s\n", url);
  printf("admin_token %s\n", secret);
  printf("(the admin token has scopes read and write and is shown only now; the\n"
         " config keeps its SHA-256)\n");
}

static int init_files(const init_opts *o, const char *dir, atun_gw_pki *pki,
                      atun_config_gateway *cfg, char *secret) {
  char failed[ATUN_GW_PATH_MAX];
  atun_ca_settings s;
  atun_gw_ca_settings(&s, cfg);
  int rv = atun_gw_pki_generate(pki, &s, o->hosts, o->nhosts, atun_gw_wall_now());
  if (rv != 0) return fail_step("creating the CA and server certificate", rv);
  rv = atun_gw_pki_write(pki, dir, o->force, failed);
  if (rv != 0) return fail_step(failed, rv);
  atun_store *st;
  rv = atun_gw_store_open(&st, cfg);
  if (rv != 0) {
    atun_gw_path(failed, dir, ATUN_GW_STORE_FILE);
    fail_step(failed, rv);
    return atun_gw_exit_for(rv);
  }
  atun_store_audit_add(st, atun_gw_wall_now(), "cli", "init", "ca", o->force ? "force" : NULL);
  atun_store_close(st);
  rv = write_config(o, dir, cfg, secret);
  if (rv != 0) {
    atun_gw_path(failed, dir, ATUN_GW_CONFIG_FILE);
    return fail_step(failed, rv);
  }
  return 0;
}

int atun_gw_cmd_init(int argc, char **argv) {
  init_opts o;
  int rv = parse_args(&o, argc, argv);
  if (rv != 0) return rv < 0 ? ATUN_GW_EXIT_OK : rv;
  char dir[PATH_MAX];
  if ((rv = prepare_dir(o.state_dir, dir)) != 0) return rv;
  if (!o.force && (exists(dir, ATUN_GW_CA_KEY) || exists(dir, ATUN_GW_CA_CERT))) {
    fprintf(stderr,
            "atun-gateway init: %s already holds a CA; refusing to replace it "
            "(--force replaces it, and every enrolled agent must enroll again)\n",
            dir);
    return ATUN_GW_EXIT_STATE;
  }
  atun_gw_pki *pki = calloc(1, sizeof(*pki));
  atun_config_gateway cfg;
  char secret[ATUN_GW_ADMIN_SECRET_STRLEN];
  if (pki == NULL) return fail_step("memory", ATUN_ERR_NOMEM);
  fill_config(&o, dir, &cfg);
  rv = init_files(&o, dir, pki, &cfg, secret);
  if (rv == 0) report(dir, pki, &cfg, secret);
  memset(secret, 0, sizeof(secret));
  memset(pki, 0, sizeof(*pki));
  free(pki);
  atun_config_gateway_free(&cfg);
  return rv;
}
