/*
 * The config model under fuzzing.  Byte 0 picks the mode, byte 1 the
 * allocation that fails (0xff: none), the rest is the config text.
 *
 *   mode 0, 1: parse as an agent (0) or gateway (1) config.  An accepted
 *              text is written out, read back and written again: both
 *              written texts must be equal.  A refused one must say why.
 *   mode 2:    merge a fixed enrollment into the text.  A text that loads
 *              as an agent config must merge; a merged text must load,
 *              carry the enrollment, and merge again into itself unchanged.
 *
 * At every failing allocation the result must be ATUN_ERR_NOMEM with no
 * block left behind.
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "support.h"

#define CHECK(cond)       \
  do {                    \
    if (!(cond)) abort(); \
  } while (0)

#define UUID "0f8fad5b-d9cb-469f-a165-70867728950e"

typedef int (*parse_fn)(void *cfg, const char *text, size_t len,
                        const atun_mem *mem, atun_config_error *err);
typedef int (*write_fn)(const void *cfg, char **out, size_t *outlen);
typedef void (*free_fn)(void *cfg);

typedef struct model {
  parse_fn parse;
  write_fn write;
  free_fn release;
} model;

static int agent_parse(void *cfg, const char *t, size_t n, const atun_mem *m,
                       atun_config_error *e) {
  return atun_config_agent_parse(cfg, t, n, m, e);
}
static int agent_write(const void *cfg, char **out, size_t *n) {
  return atun_config_agent_serialize(cfg, out, n);
}
static void agent_release(void *cfg) { atun_config_agent_free(cfg); }
static int gw_parse(void *cfg, const char *t, size_t n, const atun_mem *m,
                    atun_config_error *e) {
  return atun_config_gateway_parse(cfg, t, n, m, e);
}
static int gw_write(const void *cfg, char **out, size_t *n) {
  return atun_config_gateway_serialize(cfg, out, n);
}
static void gw_release(void *cfg) { atun_config_gateway_free(cfg); }

static const model models[2] = {{agent_parse, agent_write, agent_release},
                                {gw_parse, gw_write, gw_release}};

/* Both structs fit; the harness never needs both at once. */
typedef union any_config {
  atun_config_agent agent;
  atun_config_gateway gateway;
} any_config;

static void check_message(const atun_config_error *err, int rv) {
  CHECK(memchr(err->message, '\0', sizeof(err->message)) != NULL);
  CHECK((rv == 0) == (err->message[0] == '\0'));
  CHECK(err->warning_count <= ATUN_CONFIG_WARNINGS_MAX);
}

static void run_parse(const model *m, const char *text, size_t len, atun_failmem *fm) {
  any_config cfg, again;
  atun_config_error err;
  char *t1, *t2;
  size_t n1, n2;
  int rv = m->parse(&cfg, text, len, &fm->mem, &err);
  check_message(&err, rv);
  if (rv != 0) {
    CHECK(fm->live == 0);
    return;
  }
  rv = m->write(&cfg, &t1, &n1);
  m->release(&cfg);
  if (rv != 0) {
    CHECK(rv == ATUN_ERR_NOMEM && fm->live == 0);
    return;
  }
  CHECK(strlen(t1) == n1);
  CHECK(m->parse(&again, t1, n1, atun_mem_default(), &err) == 0);
  CHECK(m->write(&again, &t2, &n2) == 0);
  CHECK(n1 == n2 && memcmp(t1, t2, n1) == 0);
  m->release(&again);
  free(t2);
  atun_mem_free(&fm->mem, t1);
  CHECK(fm->live == 0);
}

static atun_config_enrollment enrollment(atun_prefix *subnet) {
  atun_config_enrollment e;
  memset(&e, 0, sizeof(e));
  e.agent_id = UUID;
  e.name = "edge-1";
  e.gateway = "[2001:db8::1]:4433";
  e.key_file = "/var/lib/atun-agent/agent.key";
  e.cert_file = "/var/lib/atun-agent/agent.crt";
  e.ca_file = "/var/lib/atun-agent/ca.crt";
  memset(e.server_spki_sha256, 0xab, sizeof(e.server_spki_sha256));
  CHECK(atun_prefix_parse(subnet, "10.0.0.0/8") == 0);
  e.set_subnets = 1;
  e.subnets = subnet;
  e.subnet_count = 1;
  return e;
}

static void check_merged(const char *out, size_t n, const atun_config_enrollment *e) {
  atun_config_agent a;
  atun_config_error err;
  char *again;
  size_t n2;
  CHECK(atun_config_agent_parse(&a, out, n, NULL, &err) == 0);
  CHECK(strcmp(a.agent_id, e->agent_id) == 0 && strcmp(a.name, e->name) == 0);
  CHECK(a.advertise_subnet_count == 1);
  CHECK(atun_config_agent_check_enrolled(&a, NULL) == 0);
  atun_config_agent_free(&a);
  CHECK(atun_config_merge_enrollment(out, n, e, NULL, &again, &n2, &err) == 0);
  CHECK(n2 == n && memcmp(again, out, n) == 0);
  free(again);
}

static void run_merge(const char *text, size_t len, atun_failmem *fm) {
  atun_prefix subnet;
  atun_config_enrollment e = enrollment(&subnet);
  atun_config_agent plain;
  atun_config_error err;
  char *out = NULL;
  size_t n = 0;
  int loads = atun_config_agent_parse(&plain, text, len, NULL, &err) == 0;
  atun_config_agent_free(&plain);
  int rv = atun_config_merge_enrollment(text, len, &e, &fm->mem, &out, &n, &err);
  check_message(&err, rv);
  if (rv != 0) {
    CHECK(out == NULL && fm->live == 0);
    CHECK(!loads || rv == ATUN_ERR_NOMEM || rv == ATUN_ERR_LIMIT);
    return;
  }
  check_merged(out, n, &e);
  atun_mem_free(&fm->mem, out);
  CHECK(fm->live == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  atun_failmem fm;
  atun_failmem_init(&fm, data[1] == 0xff ? -1 : (long)data[1]);
  const char *text = (const char *)data + 2;
  size_t len = size - 2;
  switch (data[0] % 3) {
    case 0:
    case 1: run_parse(&models[data[0] % 3], text, len, &fm); break;
    default: run_merge(text, len, &fm);
  }
  return 0;
}
