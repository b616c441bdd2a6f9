/*
 * The agent's list arguments (agent/opts.c) and its advertisement built from
 * the config and resolv.conf (agent/routes.c), bounds included.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../agent/opts.c"
#include "../agent/routes.c"
#include "support.h"

static atun_prefix subnets[ATUN_SUBNETS_MAX];
static atun_domain domains[ATUN_DOMAINS_MAX];
static char bad[AGENT_OPT_BAD_MAX];
static size_t n;

/* --- subnets ---------------------------------------------------------------- */

Test(agent_opts, subnets_with_blanks_and_duplicates) {
  cr_assert_eq(agent_opts_subnets(" 10.0.0.0/8 ,2001:db8::/32,\t10.0.0.0/8,192.0.2.1",
                                  subnets, ATUN_SUBNETS_MAX, &n, bad), 0);
  cr_assert_eq(n, 3);
  char text[ATUN_PREFIX_STRLEN];
  atun_prefix_format(text, &subnets[0]);
  cr_assert_str_eq(text, "10.0.0.0/8");
  atun_prefix_format(text, &subnets[1]);
  cr_assert_str_eq(text, "2001:db8::/32");
  atun_prefix_format(text, &subnets[2]);
  cr_assert_str_eq(text, "192.0.2.1/32");
  cr_assert_str_eq(bad, "");
}

Test(agent_opts, the_empty_string_is_the_empty_list) {
  n = 99;
  cr_assert_eq(agent_opts_subnets("", subnets, ATUN_SUBNETS_MAX, &n, bad), 0);
  cr_assert_eq(n, 0);
}

Test(agent_opts, bad_subnets_are_named) {
  cr_assert_eq(agent_opts_subnets("10.0.0.0/8,10.0.0.1/8", subnets, 8, &n, bad),
               ATUN_ERR_BAD_PREFIX);
  cr_assert_str_eq(bad, "10.0.0.1/8");
  cr_assert_eq(agent_opts_subnets("10.0.0.0/8,,", subnets, 8, &n, bad),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(bad, "");
  cr_assert_eq(agent_opts_subnets("10.0.0.0/8, ", subnets, 8, &n, bad),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_opts_subnets("corp.example", subnets, 8, &n, bad),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(bad, "corp.example");
}

Test(agent_opts, a_long_bad_item_is_cut_in_the_message) {
  char item[300];
  memset(item, '1', sizeof(item) - 1);
  item[sizeof(item) - 1] = '\0';
  cr_assert_eq(agent_opts_subnets(item, subnets, 8, &n, bad), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(strlen(bad), AGENT_OPT_BAD_MAX - 1);
}

/* "10.<i/256>.<i%256>.0/24" for i < |count|, comma-separated. */
static char *subnet_list(size_t count) {
  char *s = malloc(count * 20 + 1);
  cr_assert_not_null(s);
  size_t off = 0;
  for (size_t i = 0; i < count; ++i)
    off += (size_t)sprintf(s + off, "%s10.%zu.%zu.0/24", i ? "," : "", i / 256, i % 256);
  s[off] = '\0';
  return s;
}

Test(agent_opts, subnet_count_bound) {
  char *at = subnet_list(ATUN_SUBNETS_MAX);
  cr_assert_eq(agent_opts_subnets(at, subnets, ATUN_SUBNETS_MAX, &n, bad), 0);
  cr_assert_eq(n, ATUN_SUBNETS_MAX);
  free(at);
  char *above = subnet_list(ATUN_SUBNETS_MAX + 1);
  cr_assert_eq(agent_opts_subnets(above, subnets, ATUN_SUBNETS_MAX, &n, bad),
               ATUN_ERR_LIMIT);
  free(above);
}

Test(agent_opts, a_duplicate_at_the_bound_is_not_counted) {
  cr_assert_eq(agent_opts_subnets("10.0.0.0/8,10.0.0.0/8", subnets, 1, &n, bad), 0);
  cr_assert_eq(n, 1);
  cr_assert_eq(agent_opts_subnets("10.0.0.0/8,11.0.0.0/8", subnets, 1, &n, bad),
               ATUN_ERR_LIMIT);
}

Test(agent_opts, list_text_bound) {
  size_t len = AGENT_LIST_TEXT_MAX + 1;
  char *s = malloc(len + 1);
  memset(s, ' ', len);
  s[len] = '\0';
  cr_assert_eq(agent_opts_subnets(s, subnets, ATUN_SUBNETS_MAX, &n, bad), ATUN_ERR_LIMIT);
  free(s);
}

/* --- domains ------------------------------------------------------------------ */

Test(agent_opts, domains_are_normalized_and_deduplicated) {
  cr_assert_eq(agent_opts_domains("Corp.Example., lab.example,corp.example", domains,
                                  ATUN_DOMAINS_MAX, &n, bad), 0);
  cr_assert_eq(n, 2);
  cr_assert_str_eq(domains[0].name, "corp.example");
  cr_assert_str_eq(domains[1].name, "lab.example");
  cr_assert_eq(domains[0].auto_detected, 0);
}

Test(agent_opts, bad_domains) {
  const char *bad_lists[] = {"localhost", "a..b", "-a.example", "a b.example", ",x.example"};
  for (size_t i = 0; i < 5; ++i) {
    int rv = agent_opts_domains(bad_lists[i], domains, ATUN_DOMAINS_MAX, &n, bad);
    cr_assert(rv == ATUN_ERR_BAD_NAME || rv == ATUN_ERR_INVALID_ARGUMENT, "%s",
              bad_lists[i]);
  }
  cr_assert_eq(agent_opts_domains("ok.example,localhost", domains, 4, &n, bad),
               ATUN_ERR_BAD_NAME);
  cr_assert_str_eq(bad, "localhost");
}

Test(agent_opts, domain_count_bound) {
  char *s = malloc(3 * 16 + 1);
  strcpy(s, "a.example,b.example,c.example");
  cr_assert_eq(agent_opts_domains(s, domains, 3, &n, bad), 0);
  cr_assert_eq(n, 3);
  strcat(s, ",d.example");
  cr_assert_eq(agent_opts_domains(s, domains, 3, &n, bad), ATUN_ERR_LIMIT);
  free(s);
}

/* --- routes --------------------------------------------------------------------- */

static atun_config_agent cfg;
static agent_routes routes;

static void routes_setup(void) { cr_assert_eq(atun_config_agent_default(&cfg, NULL), 0); }

static void routes_teardown(void) {
  agent_routes_free(&routes);
  atun_config_agent_free(&cfg);
}

TestSuite(agent_routes, .init = routes_setup, .fini = routes_teardown);

static void set_domains(size_t count) {
  atun_mem_free(cfg.mem, cfg.advertise_domains);
  cfg.advertise_domains = atun_mem_calloc(cfg.mem, count + 1, sizeof(atun_domain));
  for (size_t i = 0; i < count; ++i)
    snprintf(cfg.advertise_domains[i].name, sizeof(cfg.advertise_domains[i].name),
             "d%zu.example", i);
  cfg.advertise_domain_count = count;
}

static void parse_resolv(atun_resolvconf *rc, const char *text) {
  cr_assert_eq(atun_resolvconf_parse(rc, text, strlen(text)), 0);
}

Test(agent_routes, configured_only) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0.0/8"), 0);
  cfg.advertise_subnets = atun_mem_calloc(cfg.mem, 1, sizeof(p));
  cfg.advertise_subnets[0] = p;
  cfg.advertise_subnet_count = 1;
  set_domains(1);
  cr_assert_eq(agent_routes_build(&routes, &cfg, NULL, atun_mem_default()), 0);
  cr_assert_eq(routes.subnet_count, 1);
  cr_assert_eq(atun_prefix_cmp(&routes.subnets[0], &p), 0);
  cr_assert_eq(routes.domain_count, 1);
  cr_assert_eq(routes.detected, 0);
}

Test(agent_routes, nothing_at_all) {
  cr_assert_eq(agent_routes_build(&routes, &cfg, NULL, atun_mem_default()), 0);
  cr_assert_eq(routes.subnet_count, 0);
  cr_assert_eq(routes.domain_count, 0);
}

Test(agent_routes, detected_domains_are_added_once_and_flagged) {
  set_domains(2); /* d0.example, d1.example */
  atun_resolvconf rc;
  parse_resolv(&rc, "nameserver 10.0.0.1\nsearch d1.example corp.example lab.example\n");
  cr_assert_eq(agent_routes_build(&routes, &cfg, &rc, atun_mem_default()), 0);
  cr_assert_eq(routes.domain_count, 4);
  cr_assert_eq(routes.detected, 2);
  cr_assert_str_eq(routes.domains[1].name, "d1.example");
  cr_assert_eq(routes.domains[1].auto_detected, 0, "configured wins");
  cr_assert_str_eq(routes.domains[2].name, "corp.example");
  cr_assert_eq(routes.domains[2].auto_detected, 1);
  cr_assert_str_eq(routes.domains[3].name, "lab.example");
}

Test(agent_routes, domain_bound) {
  set_domains(ATUN_DOMAINS_MAX - 1);
  atun_resolvconf rc;
  parse_resolv(&rc, "search corp.example lab.example\n");
  cr_assert_eq(agent_routes_build(&routes, &cfg, &rc, atun_mem_default()), 0);
  cr_assert_eq(routes.domain_count, ATUN_DOMAINS_MAX);
  cr_assert_eq(routes.detected, 1);
  cr_assert_eq(routes.dropped, 1);
  cr_assert_str_eq(routes.domains[ATUN_DOMAINS_MAX - 1].name, "corp.example");
}

Test(agent_routes, read_resolv_from_a_file) {
  char path[] = "/tmp/atun-agent-resolv.XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  const char *text = "domain Corp.Example\n";
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  atun_resolvconf rc;
  cr_assert_eq(agent_routes_read_resolv(&rc, path), 0);
  cr_assert_eq(rc.ndomains, 1);
  cr_assert_str_eq(rc.domains[0].name, "corp.example");
  unlink(path);
  cr_assert_eq(agent_routes_read_resolv(&rc, path), ATUN_ERR_NOT_FOUND);
}

Test(agent_routes, resolv_size_bound) {
  char path[] = "/tmp/atun-agent-resolv.XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  char *big = malloc(ATUN_RESOLVCONF_TEXT_MAX + 1);
  memset(big, '#', ATUN_RESOLVCONF_TEXT_MAX + 1);
  cr_assert_eq(write(fd, big, ATUN_RESOLVCONF_TEXT_MAX), (ssize_t)ATUN_RESOLVCONF_TEXT_MAX);
  atun_resolvconf rc;
  cr_assert_eq(agent_routes_read_resolv(&rc, path), 0, "at the bound");
  cr_assert_eq(write(fd, big, 1), 1);
  close(fd);
  cr_assert_eq(agent_routes_read_resolv(&rc, path), ATUN_ERR_LIMIT);
  free(big);
  unlink(path);
}

Test(agent_routes, out_of_memory) {
  set_domains(2);
  atun_resolvconf rc;
  parse_resolv(&rc, "search corp.example\n");
  for (long ok = 0; ok < 2; ++ok) {
    atun_failmem fm;
    atun_failmem_init(&fm, ok);
    cr_assert_eq(agent_routes_build(&routes, &cfg, &rc, &fm.mem), ATUN_ERR_NOMEM);
    cr_assert_eq(fm.live, 0);
    cr_assert_null(routes.domains);
    agent_routes_free(&routes);
  }
  atun_failmem fm;
  atun_failmem_init(&fm, 2);
  cr_assert_eq(agent_routes_build(&routes, &cfg, &rc, &fm.mem), 0);
  cr_assert_eq(routes.domain_count, 3);
  agent_routes_free(&routes);
  cr_assert_eq(fm.live, 0);
}
