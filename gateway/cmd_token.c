/*
 * `atun-gateway token create`: one enrollment token, printed as the one
 * enrollment string an operator pastes into `atun-agent enroll`.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cmds.h"
#include "enroll.h"
#include "state.h"

static const char token_usage[] =
    "Usage: atun-gateway token create --config PATH [--ttl DURATION] [--name NAME]\n"
    "\n"
    "Issues a one-time enrollment token into the store and prints one enrollment\n"
    "string (atun1.<secret>.<CA pin>.<API URL>) on stdout: give it to\n"
    "`atun-agent enroll`.  The gateway keeps only a hash of the secret.\n"
    "\n"
    "Options:\n"
    "  --config PATH    the gateway config (its state_dir holds the store and CA)\n"
    "  --ttl DURATION   lifetime such as 30m, 24h, 7d (at most 30d; default:\n"
    "                   enroll_token_ttl of the config)\n"
    "  --name NAME      a label for listings and the audit trail (printable ASCII,\n"
    "                   at most 64 bytes)\n"
    "  -h, --help, -V, --version\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage or config error, 3 state\n"
    "directory not initialized.\n";

typedef struct token_opts {
  const char *config;
  const char *name;
  int has_ttl;
  uint64_t ttl_ns;
} token_opts;

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("atun-gateway token: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\n(see atun-gateway token create --help)\n", stderr);
  return ATUN_GW_EXIT_USAGE;
}

static int parse_ttl(token_opts *o, const char *s) {
  uint64_t ms;
  if (atun_config_duration_parse(&ms, s, strlen(s)) != 0 || ms == 0 ||
      ms > ATUN_TOKEN_TTL_MAX_NS / ATUN_NS_PER_MS)
    return usage_error("--ttl: expected a duration from 1s to 30d such as 1h, not \"%s\"", s);
  o->has_ttl = 1;
  o->ttl_ns = ms * ATUN_NS_PER_MS;
  return 0;
}

static int parse_args(token_opts *o, int argc, char **argv) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'}, {"ttl", required_argument, NULL, 't'},
      {"name", required_argument, NULL, 'n'},   {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0}};
  int c, rv = 0;
  memset(o, 0, sizeof(*o));
  if (argc < 2 || strcmp(argv[1], "create") != 0) {
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
      fputs(token_usage, stdout);
      return -1;
    }
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
      atun_gw_print_version();
      return -1;
    }
    return usage_error("expected `token create`");
  }
  argc -= 1;
  argv += 1;
  while (rv == 0 && (c = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
    switch (c) {
      case 'c': o->config = optarg; break;
      case 't': rv = parse_ttl(o, optarg); break;
      case 'n': o->name = optarg; break;
      case 'h': fputs(token_usage, stdout); return -1;
      case 'V': atun_gw_print_version(); return -1;
      default: return usage_error("bad option");
    }
  }
  if (rv != 0) return rv;
  if (optind < argc) return usage_error("unexpected argument \"%s\"", argv[optind]);
  if (o->config == NULL) return usage_error("--config is required");
  if (o->name != NULL && !(strlen(o->name) >= 1 && strlen(o->name) <= ATUN_TOKEN_NAME_MAX))
    return usage_error("--name: 1 to 64 printable ASCII bytes, not \"%s\"", o->name);
  return 0;
}

static int issue(const token_opts *o, const atun_config_gateway *cfg, const atun_gw_pki *pki,
                 atun_store *st) {
  char secret[ATUN_TOKEN_SECRET_STRLEN], url[ATUN_ENROLL_URL_MAX + 1];
  char text[ATUN_ENROLL_STRLEN], until[ATUN_GW_TIME_STRLEN], detail[160];
  atun_token_record rec;
  atun_tstamp wall = atun_gw_wall_now();
  /* Expired tokens go first, so the store's token bound is about live ones. */
  atun_store_token_purge(st, wall);
  int rv = atun_token_issue(atun_store_token_store(st), atun_ca_sysrand(), wall,
                            o->has_ttl ? o->ttl_ns : cfg->enroll_token_ttl_ns, o->name, secret,
                            sizeof(secret), &rec);
  if (rv == ATUN_ERR_BAD_NAME) return usage_error("--name: not printable ASCII: \"%s\"", o->name);
  if (rv != 0) {
    fprintf(stderr, "atun-gateway token: issuing the token: %s\n", atun_strerror(rv));
    return ATUN_GW_EXIT_RUNTIME;
  }
  atun_config_gateway_api_url(cfg, url);
  ssize_t n = atun_enroll_encode(text, sizeof(text), url, secret, pki->ca_pin);
  memset(secret, 0, sizeof(secret));
  if (n < 0) {
    atun_store_token_remove(st, rec.id);
    fprintf(stderr, "atun-gateway token: api_public_url \"%s\" can not go into an "
            "enrollment string: %s\n", url, atun_strerror((int)n));
    return ATUN_GW_EXIT_USAGE;
  }
  atun_gw_time_format(until, rec.expires_at);
  snprintf(detail, sizeof(detail), "expires=%s name=%s", until, rec.name);
  atun_store_audit_add(st, wall, "cli", "token_create", rec.id, detail);
  printf("%s\n", text);
  fprintf(stderr, "token %s%s%s expires %s (one use)\n", rec.id, rec.name[0] ? " name=" : "",
          rec.name, until);
  memset(text, 0, sizeof(text));
  return 0;
}

int atun_gw_cmd_token(int argc, char **argv) {
  token_opts o;
  int rv = parse_args(&o, argc, argv);
  if (rv != 0) return rv < 0 ? ATUN_GW_EXIT_OK : rv;
  atun_config_gateway cfg;
  atun_store *st;
  atun_gw_pki *pki = calloc(1, sizeof(*pki));
  if (pki == NULL) return ATUN_GW_EXIT_RUNTIME;
  rv = atun_gw_state_open(o.config, &cfg, pki, &st);
  if (rv == 0) {
    rv = issue(&o, &cfg, pki, st);
    atun_store_close(st);
    atun_config_gateway_free(&cfg);
  }
  memset(pki, 0, sizeof(*pki));
  free(pki);
  return rv;
}
