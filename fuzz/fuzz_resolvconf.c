/*
 * libFuzzer harness: the resolv.conf parser.
 *
 * Input: the file's text.  Every domain that comes out must be valid
 * (normalizes to itself, at least two labels, last label not starting with
 * a digit), unique and flagged auto-detected, within the bound.  Two
 * rewrites of the text are checked against the first answer:
 *   - a comment line appended changes nothing;
 *   - a search line prepended changes nothing if the text has a winning
 *     line of its own (the last line wins), and is the whole answer if not.
 */
#include <stdlib.h>
#include <string.h>

#include "resolvconf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)          \
  do {                       \
    if (!(cond)) abort();    \
  } while (0)

static const char trailer[] = "\n# trailing comment search x.example\n";
static const char leader[] = "search leader.example\n";

static void check_valid(const atun_resolvconf *rc) {
  CHECK(rc->ndomains <= ATUN_RESOLVCONF_DOMAINS_MAX);
  CHECK(!rc->truncated || rc->ndomains == ATUN_RESOLVCONF_DOMAINS_MAX);
  CHECK((rc->source == ATUN_RESOLVCONF_NONE) == (rc->line == 0));
  CHECK(rc->source != ATUN_RESOLVCONF_NONE ||
        (rc->ndomains == 0 && rc->nrejected == 0));
  for (size_t i = 0; i < rc->ndomains; ++i) {
    const char *name = rc->domains[i].name;
    char again[ATUN_NAME_MAX + 1];
    CHECK(rc->domains[i].auto_detected == 1);
    CHECK(atun_name_normalize(again, name, strlen(name)) == 0);
    CHECK(strcmp(again, name) == 0);
    const char *dot = strrchr(name, '.');
    CHECK(dot != NULL && !(dot[1] >= '0' && dot[1] <= '9'));
    for (size_t j = 0; j < i; ++j) CHECK(strcmp(rc->domains[j].name, name) != 0);
  }
  CHECK(rc->source != ATUN_RESOLVCONF_DOMAIN || rc->ndomains + rc->nrejected <= 1);
}

static int same_domains(const atun_resolvconf *a, const atun_resolvconf *b) {
  if (a->ndomains != b->ndomains || a->nrejected != b->nrejected ||
      a->truncated != b->truncated || a->source != b->source) {
    return 0;
  }
  for (size_t i = 0; i < a->ndomains; ++i)
    if (strcmp(a->domains[i].name, b->domains[i].name) != 0) return 0;
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static atun_resolvconf rc, rc2;
  const char *text = (const char *)data;
  int rv = atun_resolvconf_parse(&rc, text, size);
  if (size > ATUN_RESOLVCONF_TEXT_MAX) {
    CHECK(rv == ATUN_ERR_LIMIT);
    return 0;
  }
  CHECK(rv == 0);
  check_valid(&rc);
  if (size > ATUN_RESOLVCONF_TEXT_MAX - sizeof(leader) - sizeof(trailer)) return 0;

  char *buf = malloc(size + sizeof(leader) + sizeof(trailer));
  CHECK(buf != NULL);
  memcpy(buf, text, size);
  memcpy(buf + size, trailer, sizeof(trailer) - 1);
  CHECK(atun_resolvconf_parse(&rc2, buf, size + sizeof(trailer) - 1) == 0);
  CHECK(same_domains(&rc, &rc2) && rc.line == rc2.line);

  memcpy(buf, leader, sizeof(leader) - 1);
  memcpy(buf + sizeof(leader) - 1, text, size);
  CHECK(atun_resolvconf_parse(&rc2, buf, size + sizeof(leader) - 1) == 0);
  if (rc.source != ATUN_RESOLVCONF_NONE) {
    CHECK(same_domains(&rc, &rc2) && rc2.line == rc.line + 1);
  } else {
    CHECK(rc2.ndomains == 1 && strcmp(rc2.domains[0].name, "leader.example") == 0);
  }
  free(buf);
  return 0;
}
