/*
 * Comma-separated list arguments (see opts.h).
 */
#include <string.h>

#include "opts.h"

/* Checks |item| of |len| bytes against the |n| entries of |out|: returns 1
 * if it is new (and stores it as entry |n| when |store|), 0 for a
 * duplicate, or an error. */
typedef int (*item_fn)(void *out, size_t n, const char *item, size_t len,
                       int store);

static void set_bad(char bad[AGENT_OPT_BAD_MAX], const char *item, size_t len) {
  if (len >= AGENT_OPT_BAD_MAX) len = AGENT_OPT_BAD_MAX - 1;
  memcpy(bad, item, len);
  bad[len] = '\0';
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }

static int each_item(const char *s, void *out, size_t max, size_t *count,
                     char bad[AGENT_OPT_BAD_MAX], item_fn fn) {
  *count = 0;
  bad[0] = '\0';
  size_t total = strnlen(s, AGENT_LIST_TEXT_MAX + 1);
  if (total > AGENT_LIST_TEXT_MAX) return ATUN_ERR_LIMIT;
  if (total == 0) return 0; /* "" sets an empty list */
  const char *end = s + total;
  for (const char *p = s; p <= end;) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *stop = comma != NULL ? comma : end;
    const char *a = p, *b = stop;
    while (a < b && is_blank(*a)) ++a;
    while (b > a && is_blank(b[-1])) --b;
    set_bad(bad, a, (size_t)(b - a));
    if (a == b) return ATUN_ERR_INVALID_ARGUMENT;
    /* A duplicate is dropped even at the bound: only new items count. */
    int rv = fn(out, *count, a, (size_t)(b - a), *count < max);
    if (rv < 0) return rv;
    if (rv == 1 && *count == max) return ATUN_ERR_LIMIT;
    *count += (size_t)rv;
    p = stop + 1;
  }
  bad[0] = '\0';
  return 0;
}

static int subnet_item(void *out, size_t n, const char *item, size_t len,
                       int store) {
  atun_prefix *v = out;
  char text[ATUN_PREFIX_STRLEN];
  if (len >= sizeof(text)) return ATUN_ERR_INVALID_ARGUMENT;
  memcpy(text, item, len);
  text[len] = '\0';
  atun_prefix p;
  int rv = atun_prefix_parse(&p, text);
  if (rv != 0) return rv;
  for (size_t j = 0; j < n; ++j)
    if (atun_prefix_cmp(&v[j], &p) == 0) return 0;
  if (store) v[n] = p;
  return 1;
}

int agent_opts_subnets(const char *s, atun_prefix *out, size_t max,
                       size_t *count, char bad[AGENT_OPT_BAD_MAX]) {
  return each_item(s, out, max, count, bad, subnet_item);
}

static int domain_item(void *out, size_t n, const char *item, size_t len,
                       int store) {
  atun_domain *v = out;
  char name[ATUN_NAME_MAX + 1];
  if (atun_name_normalize(name, item, len) != 0 || strchr(name, '.') == NULL)
    return ATUN_ERR_BAD_NAME;
  for (size_t j = 0; j < n; ++j)
    if (strcmp(v[j].name, name) == 0) return 0;
  if (store) {
    memcpy(v[n].name, name, sizeof(name));
    v[n].auto_detected = 0;
  }
  return 1;
}

int agent_opts_domains(const char *s, atun_domain *out, size_t max,
                       size_t *count, char bad[AGENT_OPT_BAD_MAX]) {
  return each_item(s, out, max, count, bad, domain_item);
}
