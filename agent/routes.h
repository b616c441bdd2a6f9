/*
 * What the agent advertises (SPEC §3, §7): the configured subnets and
 * domains, plus, when auto_detect_domains is on, the search domains of
 * resolv.conf that the config does not already list (flagged as
 * auto-detected).  Built at start-up and again on every SIGHUP, so an edit
 * of resolv.conf is picked up by a reload too.
 */
#ifndef ATUN_AGENT_ROUTES_H
#define ATUN_AGENT_ROUTES_H

#include "config.h"
#include "resolvconf.h"

typedef struct agent_routes {
  const atun_mem *mem; /* owns the lists */
  atun_prefix *subnets;
  size_t subnet_count;
  atun_domain *domains;
  size_t domain_count;
  size_t detected; /* auto-detected domains added */
  size_t dropped;  /* auto-detected domains left out at ATUN_DOMAINS_MAX */
} agent_routes;

/* Builds |r| from |cfg| and the parsed resolv.conf |rc| (NULL: none),
 * lists allocated from |mem|.  A detected domain equal to a configured one
 * adds nothing; detected ones beyond ATUN_DOMAINS_MAX in all are counted in
 * |dropped|.  Returns 0 or ATUN_ERR_NOMEM (|r| then holds nothing to
 * free). */
int agent_routes_build(agent_routes *r, const atun_config_agent *cfg,
                       const atun_resolvconf *rc, const atun_mem *mem);

void agent_routes_free(agent_routes *r);

/* Reads and parses the resolv.conf at |path| into |out|.  Returns 0 or what
 * atun_fs_read() returns (ATUN_ERR_LIMIT above ATUN_RESOLVCONF_TEXT_MAX). */
int agent_routes_read_resolv(atun_resolvconf *out, const char *path);

#endif /* ATUN_AGENT_ROUTES_H */
