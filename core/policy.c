#include "policy.h"

#include <stdlib.h>
#include <string.h>

#define MAPPED_PREFIX_LEN 96

typedef char domain_name[ATUN_NAME_MAX + 1];

/* Sorted by start address, no prefix inside another: disjoint ranges. */
typedef struct prefix_set {
  atun_prefix *v;
  size_t n;
} prefix_set;

struct atun_policy {
  const atun_mem *mem;
  int names_require_domain;
  prefix_set deny;
  prefix_set allow;
  domain_name *domains; /* sorted, unique */
  size_t ndomains;
};

static const atun_prefix deny_defaults[ATUN_POLICY_DENY_DEFAULTS] = {
    {{ATUN_AF_INET, {0}}, 8},
    {{ATUN_AF_INET6, {0}}, 128},
    {{ATUN_AF_INET, {127}}, 8},
    {{ATUN_AF_INET6, {[15] = 1}}, 128},
    {{ATUN_AF_INET, {169, 254}}, 16},
    {{ATUN_AF_INET6, {0xfe, 0x80}}, 10},
    {{ATUN_AF_INET, {169, 254, 169, 254}}, 32},
    {{ATUN_AF_INET6, {0xfd, 0x00, 0x0e, 0xc2, [14] = 0x02, [15] = 0x54}}, 128},
};

void atun_policy_settings_default(atun_policy_settings *settings) {
  settings->deny = NULL;
  settings->ndeny = 0;
  settings->deny_defaults = 1;
  settings->names_require_domain = 0;
}

const atun_prefix *atun_policy_deny_defaults(size_t *n) {
  *n = ATUN_POLICY_DENY_DEFAULTS;
  return deny_defaults;
}

/* --- prefix sets ----------------------------------------------------------------- */

/* An IPv4-mapped IPv6 prefix of length >= 96 is an IPv4 prefix in disguise;
 * addresses are folded the same way before lookup. */
static void prefix_fold(atun_prefix *p) {
  if (p->addr.family != ATUN_AF_INET6 || p->len < MAPPED_PREFIX_LEN) return;
  atun_addr a = p->addr;
  atun_addr_normalize(&a);
  if (a.family != ATUN_AF_INET) return;
  p->addr = a;
  p->len = (uint8_t)(p->len - MAPPED_PREFIX_LEN);
}

static int prefix_qcmp(const void *a, const void *b) {
  return atun_prefix_cmp(a, b);
}

/* Sorted by start then length, a prefix that contains the start of a later
 * one contains all of it (aligned blocks either nest or are disjoint), and
 * the kept ones are disjoint, so only the last kept can cover the next. */
static size_t drop_covered(atun_prefix *v, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    if (k > 0 && atun_prefix_contains(&v[k - 1], &v[i].addr)) continue;
    v[k++] = v[i];
  }
  return k;
}

/* Builds a set from two source lists (either may be empty).  On success
 * |*out| owns a new array (NULL when empty). */
static int set_build(const atun_mem *mem, prefix_set *out, const atun_prefix *a,
                     size_t na, const atun_prefix *b, size_t nb) {
  out->v = NULL;
  out->n = 0;
  size_t n = na + nb;
  for (size_t i = 0; i < n; ++i) {
    if (!atun_prefix_valid(i < na ? &a[i] : &b[i - na])) return ATUN_ERR_BAD_PREFIX;
  }
  if (n == 0) return 0;
  atun_prefix *v = atun_mem_malloc(mem, n * sizeof(*v));
  if (v == NULL) return ATUN_ERR_NOMEM;
  for (size_t i = 0; i < n; ++i) {
    v[i] = i < na ? a[i] : b[i - na];
    prefix_fold(&v[i]);
  }
  qsort(v, n, sizeof(*v), prefix_qcmp);
  out->v = v;
  out->n = drop_covered(v, n);
  return 0;
}

static int start_cmp(const atun_prefix *p, const atun_addr *a) {
  if (p->addr.family != a->family) return p->addr.family < a->family ? -1 : 1;
  return memcmp(p->addr.bytes, a->bytes, a->family == ATUN_AF_INET ? 4 : 16);
}

/* The ranges are disjoint, so the only one that can hold |a| is the last
 * one starting at or before it. */
static const atun_prefix *set_find(const prefix_set *s, const atun_addr *a) {
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (start_cmp(&s->v[mid], a) <= 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) return NULL;
  const atun_prefix *p = &s->v[lo - 1];
  return atun_prefix_contains(p, a) ? p : NULL;
}

/* --- domains --------------------------------------------------------------------- */

static int name_qcmp(const void *a, const void *b) { return strcmp(a, b); }

static int domains_build(const atun_mem *mem, domain_name **out, size_t *nout,
                         const atun_domain *domains, size_t n) {
  *out = NULL;
  *nout = 0;
  if (n == 0) return 0;
  domain_name *v = atun_mem_malloc(mem, n * sizeof(*v));
  if (v == NULL) return ATUN_ERR_NOMEM;
  for (size_t i = 0; i < n; ++i) {
    const char *name = domains[i].name;
    if (atun_name_normalize(v[i], name, strnlen(name, sizeof(domains[i].name))) != 0) {
      atun_mem_free(mem, v);
      return ATUN_ERR_BAD_NAME;
    }
  }
  qsort(v, n, sizeof(*v), name_qcmp);
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    if (k > 0 && strcmp(v[k - 1], v[i]) == 0) continue;
    if (k != i) memcpy(v[k], v[i], sizeof(v[k]));
    ++k;
  }
  *out = v;
  *nout = k;
  return 0;
}

/* The longest advertised domain |name| falls under, trying the name itself
 * and then each suffix that starts after a dot. */
static const char *domain_find(const atun_policy *p, const char *name) {
  if (p->ndomains == 0) return NULL;
  for (const char *s = name; s != NULL;) {
    const domain_name *hit =
        bsearch(s, p->domains, p->ndomains, sizeof(*p->domains), name_qcmp);
    if (hit != NULL) return *hit;
    const char *dot = strchr(s, '.');
    s = dot != NULL ? dot + 1 : NULL;
  }
  return NULL;
}

/* --- object ---------------------------------------------------------------------- */

int atun_policy_new(atun_policy **ppolicy, const atun_policy_settings *settings,
                    const atun_mem *mem) {
  atun_policy_settings defaults;
  if (settings == NULL) {
    atun_policy_settings_default(&defaults);
    settings = &defaults;
  }
  if (settings->deny == NULL && settings->ndeny > 0) return ATUN_ERR_INVALID_ARGUMENT;
  size_t ndef = settings->deny_defaults ? ATUN_POLICY_DENY_DEFAULTS : 0;
  if (settings->ndeny > ATUN_POLICY_DENY_MAX - ndef) return ATUN_ERR_LIMIT;
  atun_policy *p = atun_mem_calloc(mem, 1, sizeof(*p));
  if (p == NULL) return ATUN_ERR_NOMEM;
  p->mem = mem;
  p->names_require_domain = settings->names_require_domain;
  int rv = set_build(mem, &p->deny, deny_defaults, ndef, settings->deny,
                     settings->ndeny);
  if (rv != 0) {
    atun_mem_free(mem, p);
    return rv;
  }
  *ppolicy = p;
  return 0;
}

void atun_policy_del(atun_policy *policy) {
  if (policy == NULL) return;
  atun_mem_free(policy->mem, policy->deny.v);
  atun_mem_free(policy->mem, policy->allow.v);
  atun_mem_free(policy->mem, policy->domains);
  atun_mem_free(policy->mem, policy);
}

int atun_policy_set_routes(atun_policy *policy, const atun_prefix *subnets,
                           size_t nsubnets, const atun_domain *domains,
                           size_t ndomains) {
  if ((subnets == NULL && nsubnets > 0) || (domains == NULL && ndomains > 0))
    return ATUN_ERR_INVALID_ARGUMENT;
  if (nsubnets > ATUN_POLICY_SUBNETS_MAX || ndomains > ATUN_POLICY_DOMAINS_MAX)
    return ATUN_ERR_LIMIT;
  prefix_set allow;
  int rv = set_build(policy->mem, &allow, subnets, nsubnets, NULL, 0);
  if (rv != 0) return rv;
  domain_name *names;
  size_t nnames;
  rv = domains_build(policy->mem, &names, &nnames, domains, ndomains);
  if (rv != 0) {
    atun_mem_free(policy->mem, allow.v);
    return rv;
  }
  atun_mem_free(policy->mem, policy->allow.v);
  atun_mem_free(policy->mem, policy->domains);
  policy->allow = allow;
  policy->domains = names;
  policy->ndomains = nnames;
  return 0;
}

size_t atun_policy_nsubnets(const atun_policy *policy) { return policy->allow.n; }
size_t atun_policy_ndomains(const atun_policy *policy) { return policy->ndomains; }
size_t atun_policy_ndeny(const atun_policy *policy) { return policy->deny.n; }

/* --- checks ---------------------------------------------------------------------- */

static int decide(atun_policy_verdict *v, int status, const char *reason,
                  const atun_prefix *rule) {
  if (v == NULL) return status;
  v->status = status;
  v->reason = reason;
  if (rule != NULL) v->rule = *rule;
  return status;
}

static void verdict_clear(atun_policy_verdict *v) {
  if (v != NULL) memset(v, 0, sizeof(*v));
}

/* Checks |a| without clearing |v|, so a list check can keep its fields. */
static int check_one(const atun_policy *p, const atun_addr *addr,
                     atun_policy_verdict *v) {
  atun_addr a = *addr;
  atun_addr_normalize(&a);
  if (v != NULL) v->addr = a;
  if (a.family != ATUN_AF_INET && a.family != ATUN_AF_INET6)
    return decide(v, ATUN_CONNECT_DENIED, "address of unknown family", NULL);
  const atun_prefix *rule = set_find(&p->deny, &a);
  if (rule != NULL) return decide(v, ATUN_CONNECT_DENIED, "in the deny list", rule);
  rule = set_find(&p->allow, &a);
  if (rule == NULL)
    return decide(v, ATUN_CONNECT_DENIED, "outside the advertised subnets", NULL);
  return decide(v, ATUN_CONNECT_OK, "inside an advertised subnet", rule);
}

int atun_policy_check_addr(const atun_policy *policy, const atun_addr *addr,
                           atun_policy_verdict *verdict) {
  verdict_clear(verdict);
  return check_one(policy, addr, verdict);
}

/* Same rule as the codec's host names: a last label starting with a digit
 * would be read as an IPv4 address by the resolver. */
static int host_ok(const char *host) {
  const char *dot = strrchr(host, '.');
  const char *last = dot != NULL ? dot + 1 : host;
  return !(last[0] >= '0' && last[0] <= '9');
}

int atun_policy_check_name(const atun_policy *policy, const char *name,
                           size_t namelen, atun_policy_verdict *verdict) {
  verdict_clear(verdict);
  char host[ATUN_NAME_MAX + 1];
  if (name == NULL || atun_name_normalize(host, name, namelen) != 0 || !host_ok(host))
    return decide(verdict, ATUN_CONNECT_DENIED, "not a valid host name", NULL);
  const char *domain = domain_find(policy, host);
  if (domain != NULL) {
    if (verdict != NULL) memcpy(verdict->domain, domain, strlen(domain) + 1);
    return decide(verdict, ATUN_CONNECT_OK, "under an advertised domain", NULL);
  }
  if (policy->names_require_domain)
    return decide(verdict, ATUN_CONNECT_DENIED, "outside the advertised domains", NULL);
  return decide(verdict, ATUN_CONNECT_OK, "host name; its addresses decide", NULL);
}

int atun_policy_check_resolved(const atun_policy *policy, const atun_addr *addrs,
                               size_t n, atun_policy_verdict *verdict) {
  verdict_clear(verdict);
  if (n == 0 || addrs == NULL)
    return decide(verdict, ATUN_CONNECT_DNS_FAILURE, "name resolved to no address",
                  NULL);
  if (n > ATUN_POLICY_RESOLVED_MAX)
    return decide(verdict, ATUN_CONNECT_DENIED, "too many resolved addresses", NULL);
  int status = ATUN_CONNECT_OK;
  for (size_t i = 0; i < n && status == ATUN_CONNECT_OK; ++i) {
    if (verdict != NULL) memset(&verdict->rule, 0, sizeof(verdict->rule));
    status = check_one(policy, &addrs[i], verdict);
  }
  return status;
}

int atun_policy_check_target(const atun_policy *policy, const atun_target *target,
                             atun_policy_verdict *verdict) {
  if (target->kind == ATUN_TARGET_ADDR)
    return atun_policy_check_addr(policy, &target->addr, verdict);
  if (target->kind == ATUN_TARGET_HOST)
    return atun_policy_check_name(policy, target->host,
                                  strnlen(target->host, sizeof(target->host)),
                                  verdict);
  verdict_clear(verdict);
  return decide(verdict, ATUN_CONNECT_DENIED, "unknown target kind", NULL);
}
