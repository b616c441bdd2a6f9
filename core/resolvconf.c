#include "resolvconf.h"

#include <string.h>

#define KEYWORD_LEN 6 /* "domain" and "search" alike */

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

/* If |line| (|n| bytes) is |keyword| followed by a blank and a value,
 * returns the offset of the value, else 0 (a value never starts at 0).  A
 * comment line starts with '#' or ';' and so never matches. */
static size_t keyword_value(const char *line, size_t n, const char *keyword) {
  if (n <= KEYWORD_LEN || memcmp(line, keyword, KEYWORD_LEN) != 0 ||
      !is_blank(line[KEYWORD_LEN])) {
    return 0;
  }
  size_t i = KEYWORD_LEN;
  while (i < n && is_blank(line[i])) ++i;
  return i < n ? i : 0;
}

/* Same rule as the codec's host names: a last label starting with a digit
 * is how an address literal would look. */
static int last_label_ok(const char *name) {
  const char *last = strrchr(name, '.') + 1;
  return !(last[0] >= '0' && last[0] <= '9');
}

static void add_word(atun_resolvconf *out, const char *word, size_t n) {
  char name[ATUN_NAME_MAX + 1];
  if (atun_name_normalize(name, word, n) != 0 || strchr(name, '.') == NULL ||
      !last_label_ok(name)) {
    ++out->nrejected;
    return;
  }
  for (size_t i = 0; i < out->ndomains; ++i)
    if (strcmp(out->domains[i].name, name) == 0) return;
  if (out->ndomains == ATUN_RESOLVCONF_DOMAINS_MAX) {
    out->truncated = 1;
    return;
  }
  atun_domain *d = &out->domains[out->ndomains++];
  memcpy(d->name, name, strlen(name) + 1);
  d->auto_detected = 1;
}

/* Splits the winning value at blanks; bounded by its length. */
static void take_words(atun_resolvconf *out, const char *p, size_t n,
                       int first_only) {
  size_t i = 0;
  for (;;) {
    while (i < n && is_blank(p[i])) ++i;
    if (i == n) return;
    size_t start = i;
    while (i < n && !is_blank(p[i])) ++i;
    if (p[start] == '#' || p[start] == ';') return;
    add_word(out, p + start, i - start);
    if (first_only) return;
  }
}

int atun_resolvconf_parse(atun_resolvconf *out, const char *text, size_t len) {
  if (text == NULL && len > 0) return ATUN_ERR_INVALID_ARGUMENT;
  if (len > ATUN_RESOLVCONF_TEXT_MAX) return ATUN_ERR_LIMIT;
  memset(out, 0, sizeof(*out));
  const char *value = NULL;
  size_t valuelen = 0;
  size_t lineno = 0;
  for (size_t pos = 0; pos < len;) {
    const char *line = text + pos;
    const char *nl = memchr(line, '\n', len - pos);
    size_t full = nl != NULL ? (size_t)(nl - line) : len - pos;
    const char *nul = memchr(line, '\0', full);
    size_t n = nul != NULL ? (size_t)(nul - line) : full;
    pos += full + (nl != NULL);
    ++lineno;
    size_t at = keyword_value(line, n, "domain");
    uint8_t source = ATUN_RESOLVCONF_DOMAIN;
    if (at == 0) {
      at = keyword_value(line, n, "search");
      source = ATUN_RESOLVCONF_SEARCH;
    }
    if (at == 0) continue;
    value = line + at;
    valuelen = n - at;
    out->source = source;
    out->line = lineno;
  }
  if (value != NULL)
    take_words(out, value, valuelen, out->source == ATUN_RESOLVCONF_DOMAIN);
  return 0;
}
