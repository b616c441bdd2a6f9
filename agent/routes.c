/*
 * The advertisement of the agent (see routes.h).
 */
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "routes.h"

static int listed(const atun_domain *v, size_t n, const char *name) {
  for (size_t i = 0; i < n; ++i)
    if (strcmp(v[i].name, name) == 0) return 1;
  return 0;
}

int agent_routes_build(agent_routes *r, const atun_config_agent *cfg,
                       const atun_resolvconf *rc, const atun_mem *mem) {
  memset(r, 0, sizeof(*r));
  r->mem = mem;
  size_t nd = cfg->advertise_domain_count;
  size_t extra = rc != NULL ? rc->ndomains : 0;
  /* calloc(0) may return NULL: always ask for one entry at least. */
  r->subnets = atun_mem_calloc(mem, cfg->advertise_subnet_count + 1, sizeof(atun_prefix));
  r->domains = atun_mem_calloc(mem, nd + extra + 1, sizeof(atun_domain));
  if (r->subnets == NULL || r->domains == NULL) {
    agent_routes_free(r);
    return ATUN_ERR_NOMEM;
  }
  if (cfg->advertise_subnet_count > 0)
    memcpy(r->subnets, cfg->advertise_subnets,
           cfg->advertise_subnet_count * sizeof(atun_prefix));
  r->subnet_count = cfg->advertise_subnet_count;
  if (nd > 0) memcpy(r->domains, cfg->advertise_domains, nd * sizeof(atun_domain));
  r->domain_count = nd;
  for (size_t i = 0; i < extra; ++i) {
    const atun_domain *d = &rc->domains[i];
    if (listed(r->domains, r->domain_count, d->name)) continue;
    if (r->domain_count == ATUN_DOMAINS_MAX) {
      ++r->dropped;
      continue;
    }
    r->domains[r->domain_count] = *d;
    r->domains[r->domain_count++].auto_detected = 1;
    ++r->detected;
  }
  return 0;
}

void agent_routes_free(agent_routes *r) {
  if (r->mem != NULL) {
    atun_mem_free(r->mem, r->subnets);
    atun_mem_free(r->mem, r->domains);
  }
  memset(r, 0, sizeof(*r));
}

int agent_routes_read_resolv(atun_resolvconf *out, const char *path) {
  char *text = malloc(ATUN_RESOLVCONF_TEXT_MAX);
  if (text == NULL) return ATUN_ERR_NOMEM;
  size_t len = 0;
  int rv = atun_fs_read(path, text, ATUN_RESOLVCONF_TEXT_MAX, &len);
  if (rv == 0) rv = atun_resolvconf_parse(out, text, len);
  free(text);
  return rv;
}
