/*
 * `atun-agent enroll`: turns an enrollment string into an enrolled agent
 * (SPEC §5).
 *
 *   check everything local first    arguments, the string, the config file
 *                                   (a dry-run merge), the state directory
 *   make the identity               UUID, P-256 key, CSR; the key never
 *                                   leaves this process except into its file
 *   write the key                   before the one-time token is spent
 *   ask the gateway                 enroll_http.c: pinned HTTPS POST
 *   check the answer                it must be for this id, this key, the
 *                                   pinned CA, and verify against that CA
 *   write certificate, CA, config   config last (enroll_files.h)
 *
 * Any failure after the first file write removes what this run wrote.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ca.h"
#include "cfgfile.h"
#include "cli.h"
#include "enroll_check.h"
#include "enroll_files.h"
#include "enroll_http.h"
#include "enroll_resp.h"
#include "fsutil.h"
#include "log.h"
#include "opts.h"
#include "routes.h"

#define ENROLL_PATH "/jet/agent-tunnel/enroll"
#define ENROLL_TIMEOUT_DEFAULT_NS (30 * ATUN_NS_PER_S)
/* The answer holds two certificates in PEM: a few KiB. */
#define ENROLL_ANSWER_MAX ((size_t)64 * 1024)
/* A key PEM is about 230 bytes. */
#define KEY_PEM_MAX 1024
#define HOSTNAME_MAX 253

typedef struct enroll_opts {
  const char *string; /* "-": read from stdin */
  const char *name;
  const char *subnets; /* NULL: not given */
  const char *domains;
  const char *config;
  const char *state_dir;
  const char *resolv_conf;
  uint64_t timeout_ns;
} enroll_opts;

typedef struct enroll_ctx {
  enroll_opts o;
  atun_enroll_info info;
  char id[ATUN_UUID_STRLEN];
  char name[ATUN_AGENT_NAME_STRLEN];
  char dir[PATH_MAX];
  atun_prefix *subnets;
  size_t nsubnets;
  atun_domain *domains;
  size_t ndomains;
  char *config_text;
  size_t config_len;
  mode_t config_mode;
  uint8_t key_der[ATUN_CA_KEY_DER_MAX];
  size_t key_len;
  uint8_t key_pin[ATUN_SHA256_LEN];
  char key_pem[KEY_PEM_MAX];
  size_t key_pem_len;
  char csr_pem[ATUN_CA_PEM_MAX];
  agent_enroll_files files;
  agent_enroll_answer answer;
  agent_enroll_issued issued;
} enroll_ctx;

static const char usage_text[] =
    "usage: atun-agent enroll <enrollment-string | -> --name NAME [options]\n"
    "\n"
    "Enrolls this agent with the gateway named in the enrollment string: makes\n"
    "a P-256 key (it never leaves this machine), asks the gateway's CA for a\n"
    "certificate over HTTPS pinned to the CA in the string, writes key,\n"
    "certificate and CA (mode 0600) and merges the result into the config\n"
    "file, keeping every setting enrollment does not own.  Give \"-\" to read\n"
    "the string from standard input (keeps the secret out of the process\n"
    "list and the shell history).\n"
    "\n"
    "options:\n"
    "  --name NAME                 agent name (1-63 of A-Z a-z 0-9 . _ -)\n"
    "  --advertise-subnets LIST    CIDRs to advertise, comma-separated (\"\" = none)\n"
    "  --advertise-domains LIST    domains to advertise, comma-separated\n"
    "  --config PATH               config file to create or update\n"
    "                              (default " AGENT_CONFIG_DEFAULT ")\n"
    "  --state-dir DIR             where key and certificates go\n"
    "                              (default: the config file's directory)\n"
    "  --resolv-conf PATH          resolv.conf shown in the summary of\n"
    "                              auto-detected domains (default: the config's)\n"
    "  --timeout DURATION          bound on the exchange with the gateway\n"
    "                              (default 30s)\n"
    "  -h, --help                  this text\n"
    "\n"
    "exit codes: 0 enrolled, 1 runtime failure (network, files, gateway error;\n"
    "a retry may work), 2 usage or config error, 3 enrollment refused (token\n"
    "unknown, used or expired, or the gateway does not match the pin).\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "atun-agent enroll: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\nTry 'atun-agent enroll --help'.\n");
  va_end(ap);
  return AGENT_EXIT_USAGE;
}

/* --- arguments ----------------------------------------------------------- */

enum { OPT_NAME = 256, OPT_SUBNETS, OPT_DOMAINS, OPT_CONFIG, OPT_STATE_DIR,
       OPT_RESOLV, OPT_TIMEOUT };

static int take_opt(enroll_opts *o, int opt, const char *arg) {
  switch (opt) {
  case OPT_NAME: o->name = arg; return 0;
  case OPT_SUBNETS: o->subnets = arg; return 0;
  case OPT_DOMAINS: o->domains = arg; return 0;
  case OPT_CONFIG: o->config = arg; return 0;
  case OPT_STATE_DIR: o->state_dir = arg; return 0;
  case OPT_RESOLV: o->resolv_conf = arg; return 0;
  case OPT_TIMEOUT: {
    uint64_t ms;
    if (atun_config_duration_parse(&ms, arg, strlen(arg)) != 0 || ms == 0 ||
        ms > 3600 * 1000)
      return usage_error("bad --timeout '%s' (1ms..1h, e.g. 30s)", arg);
    o->timeout_ns = ms * ATUN_NS_PER_MS;
    return 0;
  }
  }
  return usage_error("unknown option");
}

/* Returns 0, 1 for --help, or AGENT_EXIT_USAGE. */
static int parse_args(enroll_opts *o, int argc, char **argv) {
  static const struct option longopts[] = {
      {"name", required_argument, NULL, OPT_NAME},
      {"advertise-subnets", required_argument, NULL, OPT_SUBNETS},
      {"advertise-domains", required_argument, NULL, OPT_DOMAINS},
      {"config", required_argument, NULL, OPT_CONFIG},
      {"state-dir", required_argument, NULL, OPT_STATE_DIR},
      {"resolv-conf", required_argument, NULL, OPT_RESOLV},
      {"timeout", required_argument, NULL, OPT_TIMEOUT},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  memset(o, 0, sizeof(*o));
  o->config = AGENT_CONFIG_DEFAULT;
  o->timeout_ns = ENROLL_TIMEOUT_DEFAULT_NS;
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    if (opt == 'h') return 1;
    if (opt == '?') return usage_error("bad or incomplete option '%s'", argv[optind - 1]);
    int rv = take_opt(o, opt, optarg);
    if (rv != 0) return rv;
  }
  if (optind + 1 != argc)
    return usage_error("expected exactly one enrollment string");
  o->string = argv[optind];
  if (o->name == NULL) return usage_error("--name is required");
  return 0;
}

static int parse_lists(enroll_ctx *c) {
  char bad[AGENT_OPT_BAD_MAX];
  c->subnets = calloc(ATUN_SUBNETS_MAX, sizeof(*c->subnets));
  c->domains = calloc(ATUN_DOMAINS_MAX, sizeof(*c->domains));
  if (c->subnets == NULL || c->domains == NULL) return AGENT_EXIT_FAILURE;
  if (c->o.subnets != NULL &&
      agent_opts_subnets(c->o.subnets, c->subnets, ATUN_SUBNETS_MAX,
                         &c->nsubnets, bad) != 0)
    return usage_error(bad[0] ? "bad subnet '%s' in --advertise-subnets"
                              : "--advertise-subnets: too many subnets%s", bad);
  if (c->o.domains != NULL &&
      agent_opts_domains(c->o.domains, c->domains, ATUN_DOMAINS_MAX,
                         &c->ndomains, bad) != 0)
    return usage_error(bad[0] ? "bad domain '%s' in --advertise-domains"
                              : "--advertise-domains: too many domains%s", bad);
  return 0;
}

static int read_string(enroll_ctx *c) {
  char buf[ATUN_ENROLL_INPUT_MAX + 2];
  const char *s = c->o.string;
  size_t len;
  if (strcmp(s, "-") == 0) {
    len = fread(buf, 1, sizeof(buf) - 1, stdin);
    buf[len] = '\0';
    s = buf;
  } else {
    len = strlen(s);
  }
  const char *reason = "";
  int rv = atun_enroll_decode(&c->info, s, len, &reason);
  explicit_bzero(buf, sizeof(buf));
  if (rv != 0) return usage_error("bad enrollment string: %s", reason);
  return 0;
}

/* --- local preparation ------------------------------------------------------ */

static int read_config(enroll_ctx *c) {
  int rv = agent_file_read(c->o.config, ATUN_CONFIG_TEXT_MAX, 1, &c->config_text,
                           &c->config_len);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "enroll", "config_unreadable", "path=%s error=%s",
             c->o.config, agent_file_error(rv));
    return AGENT_EXIT_USAGE;
  }
  struct stat st;
  c->config_mode = stat(c->o.config, &st) == 0 ? (st.st_mode & 07777)
                                               : ATUN_FS_MODE_SECRET;
  return 0;
}

static int state_dir(enroll_ctx *c) {
  char parent[PATH_MAX];
  const char *dir = c->o.state_dir;
  if (dir == NULL) {
    snprintf(parent, sizeof(parent), "%s", c->o.config);
    char *slash = strrchr(parent, '/');
    if (slash == NULL)
      snprintf(parent, sizeof(parent), ".");
    else
      slash[slash == parent ? 1 : 0] = '\0';
    dir = parent;
  }
  /* Absolute paths go into the config: the daemon may run elsewhere. */
  if (realpath(dir, c->dir) == NULL) {
    atun_log(ATUN_LOG_ERROR, "enroll", "state_dir_unusable", "path=%s error=%s", dir,
             strerror(errno));
    return AGENT_EXIT_USAGE;
  }
  return 0;
}

static int make_identity(enroll_ctx *c) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spki_len;
  uint8_t csr[ATUN_CA_DER_MAX];
  size_t csr_len, csr_pem_len;
  if (atun_uuid_generate(c->id, atun_ca_sysrand()) != 0 ||
      atun_ca_key_generate(c->key_der, sizeof(c->key_der), &c->key_len) != 0 ||
      atun_ca_key_spki(c->key_der, c->key_len, spki, sizeof(spki), &spki_len) != 0 ||
      atun_ca_spki_pin(spki, spki_len, c->key_pin) != 0 ||
      atun_pem_encode(ATUN_PEM_KEY, c->key_der, c->key_len, c->key_pem,
                      sizeof(c->key_pem), &c->key_pem_len) != 0 ||
      atun_ca_csr_make(c->key_der, c->key_len, c->name, c->id, csr, sizeof(csr),
                       &csr_len) != 0 ||
      atun_pem_encode(ATUN_PEM_CSR, csr, csr_len, c->csr_pem, sizeof(c->csr_pem),
                      &csr_pem_len) != 0) {
    atun_log(ATUN_LOG_ERROR, "enroll", "identity_failed",
             "error=%s", "key, UUID or CSR generation failed");
    return AGENT_EXIT_FAILURE;
  }
  return 0;
}

static void enrollment_of(const enroll_ctx *c, atun_config_enrollment *e,
                          const char *gateway, const uint8_t *server_pin) {
  memset(e, 0, sizeof(*e));
  e->agent_id = c->id;
  e->name = c->name;
  e->gateway = gateway;
  e->key_file = c->files.path[AGENT_FILE_KEY];
  e->cert_file = c->files.path[AGENT_FILE_CERT];
  e->ca_file = c->files.path[AGENT_FILE_CA];
  memcpy(e->server_spki_sha256, server_pin, ATUN_SPKI_PIN_BYTES);
  e->set_subnets = c->o.subnets != NULL;
  e->subnets = c->subnets;
  e->subnet_count = c->nsubnets;
  e->set_domains = c->o.domains != NULL;
  e->domains = c->domains;
  e->domain_count = c->ndomains;
}

/* Merges the enrollment into the config text; |warn| logs the warnings
 * (unknown keys) of the file, once per run. */
static int merge(const enroll_ctx *c, const char *gateway, const uint8_t *pin,
                 int warn, char **out, size_t *outlen) {
  atun_config_enrollment e;
  enrollment_of(c, &e, gateway, pin);
  atun_config_error err;
  int rv = atun_config_merge_enrollment(c->config_text, c->config_len, &e,
                                        atun_mem_default(), out, outlen, &err);
  if (warn) agent_config_log_warnings(&err, c->o.config);
  if (rv != 0)
    atun_log(ATUN_LOG_ERROR, "enroll", "config_rejected", "path=%s error=%s",
             c->o.config, err.message);
  return rv;
}

/* The token is one-time: everything that can fail locally fails here,
 * before the gateway is asked.  A merge with stand-in values finds a
 * config file enrollment could not update. */
static int prepare(enroll_ctx *c) {
  if (!atun_agent_name_valid(c->o.name, strlen(c->o.name)))
    return usage_error("bad --name '%s' (1-63 of A-Z a-z 0-9 . _ -, starting "
                       "with a letter or digit)", c->o.name);
  snprintf(c->name, sizeof(c->name), "%s", c->o.name);
  int rv = parse_lists(c);
  if (rv == 0) rv = read_string(c);
  if (rv == 0) rv = read_config(c);
  if (rv == 0) rv = state_dir(c);
  if (rv == 0) rv = make_identity(c);
  if (rv != 0) return rv;
  if (agent_enroll_files_plan(&c->files, c->dir, c->id, agent_fs_ops_default()) != 0)
    return usage_error("state directory path too long: %s", c->dir);
  static const uint8_t zero_pin[ATUN_SPKI_PIN_BYTES];
  char *text = NULL;
  size_t len;
  rv = merge(c, "gateway.invalid:443", zero_pin, 1, &text, &len);
  atun_mem_free(atun_mem_default(), text);
  return rv != 0 ? AGENT_EXIT_USAGE : 0;
}

/* --- the exchange ------------------------------------------------------------- */

static char *request_body(const enroll_ctx *c, size_t *len) {
  char host[HOSTNAME_MAX + 2] = "";
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  int ok = cJSON_AddStringToObject(o, "agent_id", c->id) != NULL &&
           cJSON_AddStringToObject(o, "agent_name", c->name) != NULL &&
           cJSON_AddStringToObject(o, "csr_pem", c->csr_pem) != NULL;
  /* The host name only helps the operator read the agent list; leave out
   * anything odd rather than fail over it. */
  if (ok && gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0' &&
      strlen(host) <= HOSTNAME_MAX && atun_text_valid(host, strlen(host)))
    ok = cJSON_AddStringToObject(o, "hostname", host) != NULL;
  char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
  cJSON_Delete(o);
  if (text != NULL) *len = strlen(text);
  return text;
}

static int http_failed(int rv, const agent_https_response *resp) {
  atun_log(ATUN_LOG_ERROR, "enroll", rv == ATUN_ERR_DENIED ? "refused" : "failed",
           "error=%s", resp->error);
  return rv == ATUN_ERR_DENIED ? AGENT_EXIT_REFUSED : AGENT_EXIT_FAILURE;
}

static int answer_failed(int outcome, const agent_enroll_answer *a) {
  if (outcome == AGENT_ENROLL_BAD_ANSWER) {
    atun_log(ATUN_LOG_ERROR, "enroll", "bad_answer", "status=%d error=%s", a->status,
             a->why);
    return AGENT_EXIT_FAILURE;
  }
  int refused = outcome == AGENT_ENROLL_REFUSED;
  atun_log(ATUN_LOG_ERROR, "enroll", refused ? "refused" : "failed",
           "status=%d code=%s message=%s", a->status, a->code, a->message);
  return refused ? AGENT_EXIT_REFUSED : AGENT_EXIT_FAILURE;
}

static int ask_gateway(enroll_ctx *c) {
  size_t body_len = 0;
  char *body = request_body(c, &body_len);
  if (body == NULL) {
    atun_log(ATUN_LOG_ERROR, "enroll", "failed", "error=%s", "out of memory");
    return AGENT_EXIT_FAILURE;
  }
  agent_https_request req = {.url = &c->info.api, .ca_pin = c->info.ca_spki_sha256,
                             .path = ENROLL_PATH, .bearer = c->info.secret,
                             .body = body, .body_len = body_len,
                             .timeout_ns = c->o.timeout_ns,
                             .response_max = ENROLL_ANSWER_MAX};
  agent_https_response resp;
  atun_log(ATUN_LOG_INFO, "enroll", "contacting", "url=%s agent_id=%s name=%s",
           c->info.url, c->id, c->name);
  int rv = agent_https_post(&req, &resp);
  cJSON_free(body);
  if (rv != 0) return http_failed(rv, &resp);
  int outcome = agent_enroll_answer_parse(&c->answer, resp.status, resp.body,
                                          resp.body_len);
  agent_https_response_free(&resp);
  return outcome == AGENT_ENROLL_OK ? 0 : answer_failed(outcome, &c->answer);
}

/* The gateway decides the name (a token may carry one): the config
 * follows the certificate. */
static int check_answer(enroll_ctx *c) {
  const char *why = agent_enroll_check(&c->answer, c->id, c->key_pin,
                                       c->info.ca_spki_sha256, &c->issued);
  if (why != NULL) {
    atun_log(ATUN_LOG_ERROR, "enroll", "bad_answer", "error=%s", why);
    return AGENT_EXIT_FAILURE;
  }
  if (strcmp(c->issued.name, c->name) != 0) {
    atun_log(ATUN_LOG_WARN, "enroll", "name_changed", "requested=%s issued=%s",
             c->name, c->issued.name);
    memcpy(c->name, c->issued.name, sizeof(c->name));
  }
  return 0;
}

/* --- writing ------------------------------------------------------------------ */

static int write_failed(const char *path, int rv) {
  atun_log(ATUN_LOG_ERROR, "enroll", "write_failed", "file=%s error=%s", path,
           agent_file_error(rv));
  return AGENT_EXIT_FAILURE;
}

static int commit(enroll_ctx *c) {
  agent_enroll_files *f = &c->files;
  int rv = agent_enroll_files_write_certs(f, c->issued.cert_pem, c->issued.cert_pem_len,
                                          c->issued.ca_pem, c->issued.ca_pem_len);
  if (rv != 0) {
    int which = (f->written & (1u << AGENT_FILE_CERT)) ? AGENT_FILE_CA : AGENT_FILE_CERT;
    return write_failed(f->path[which], rv);
  }
  char *text = NULL;
  size_t len = 0;
  if (merge(c, c->answer.quic_endpoint, c->answer.server_spki_sha256, 0, &text, &len) !=
      0)
    return AGENT_EXIT_FAILURE;
  rv = agent_enroll_files_write_config(f, c->o.config, text, len, c->config_mode);
  atun_mem_free(atun_mem_default(), text);
  return rv != 0 ? write_failed(c->o.config, rv) : 0;
}

/* Tells the operator what the agent will advertise once running. */
static void summary(const enroll_ctx *c) {
  printf("enrolled agent %s (id %s) with gateway %s\n", c->name, c->id,
         c->answer.quic_endpoint);
  printf("config:      %s\nkey:         %s\ncertificate: %s\nca:          %s\n",
         c->o.config, c->files.path[AGENT_FILE_KEY], c->files.path[AGENT_FILE_CERT],
         c->files.path[AGENT_FILE_CA]);
  atun_config_agent cfg;
  atun_config_error err;
  char msg[AGENT_MSG_MAX];
  /* Its warnings were the merge's business; it checked the same text. */
  if (agent_config_read(&cfg, c->o.config, msg, &err) != 0) return;
  atun_resolvconf rc;
  const char *rpath = c->o.resolv_conf ? c->o.resolv_conf : cfg.resolv_conf;
  int have_rc = cfg.auto_detect_domains && agent_routes_read_resolv(&rc, rpath) == 0;
  agent_routes r;
  if (agent_routes_build(&r, &cfg, have_rc ? &rc : NULL, atun_mem_default()) == 0) {
    printf("advertises:  %zu subnet(s), %zu domain(s)", r.subnet_count,
           r.domain_count - r.detected);
    if (cfg.auto_detect_domains)
      printf(" + %zu auto-detected from %s%s", r.detected, rpath,
             have_rc ? "" : " (unreadable now)");
    printf("\nrun it with: atun-agent run --config %s\n", c->o.config);
    agent_routes_free(&r);
  }
  atun_config_agent_free(&cfg);
}

static int enroll(enroll_ctx *c) {
  int rv = prepare(c);
  if (rv != 0) return rv;
  rv = agent_enroll_files_write_key(&c->files, c->key_pem, c->key_pem_len);
  if (rv != 0) return write_failed(c->files.path[AGENT_FILE_KEY], rv);
  rv = ask_gateway(c);
  if (rv == 0) rv = check_answer(c);
  if (rv == 0) rv = commit(c);
  if (rv != 0) {
    size_t left = agent_enroll_files_rollback(&c->files);
    if (left > 0)
      atun_log(ATUN_LOG_ERROR, "enroll", "cleanup_failed", "files_left=%zu dir=%s",
               left, c->dir);
    return rv;
  }
  atun_log(ATUN_LOG_INFO, "enroll", "enrolled", "agent_id=%s name=%s gateway=%s config=%s",
           c->id, c->name, c->answer.quic_endpoint, c->o.config);
  summary(c);
  return AGENT_EXIT_OK;
}

int agent_enroll_main(int argc, char **argv) {
  enroll_ctx *c = calloc(1, sizeof(*c));
  if (c == NULL) return AGENT_EXIT_FAILURE;
  int rv = parse_args(&c->o, argc, argv);
  if (rv == 1) {
    fputs(usage_text, stdout);
    rv = AGENT_EXIT_OK;
  } else if (rv == 0) {
    rv = enroll(c);
  }
  free(c->subnets);
  free(c->domains);
  free(c->config_text);
  /* The secret and the private key die with the process, but not in freed
   * heap memory. */
  explicit_bzero(c, sizeof(*c));
  free(c);
  return rv;
}
