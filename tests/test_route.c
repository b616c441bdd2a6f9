/*
 * Route table tests: fixed cases for the matching rules, then random route
 * sets, replace/remove sequences and allocation failures checked against a
 * brute-force model that scans every route.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "support.h"

/* --- helpers -------------------------------------------------------------- */

#define NAGENTS 12

static atun_route_health g_health[NAGENTS + 200];
static long g_health_calls;

static void health_cb(uint32_t agent, atun_route_health *h, void *ud) {
  (void)ud;
  ++g_health_calls;
  *h = g_health[agent];
}

static void health_all_equal(size_t n) {
  memset(g_health, 0, sizeof(g_health));
  for (size_t i = 0; i < n; ++i)
    g_health[i].eligible = 1;
}

static atun_prefix P(const char *s) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, s), 0, "parse %s", s);
  return p;
}

static atun_route_domain D(const char *s) {
  atun_route_domain d;
  memset(&d, 0, sizeof(d));
  snprintf(d.name, sizeof(d.name), "%s", s);
  return d;
}

static atun_route_target T(const char *s) {
  atun_route_target t;
  cr_assert_eq(atun_route_target_parse(&t, s), 0, "target %s", s);
  return t;
}

static ssize_t look(atun_route_table *t, const char *target,
                    atun_route_candidate *out, size_t cap) {
  atun_route_target tg = T(target);
  return atun_route_table_lookup(t, &tg, health_cb, NULL, out, cap);
}

static atun_route_table *table_new(const atun_mem *mem) {
  atun_route_table *t = NULL;
  cr_assert_eq(atun_route_table_new(&t, NULL, mem), 0);
  return t;
}

static void expect_prefix(const atun_route_candidate *c, uint32_t agent,
                          const char *prefix) {
  atun_prefix p = P(prefix);
  cr_expect_eq(c->agent, agent, "agent %u != %u for %s", c->agent, agent,
               prefix);
  cr_expect_eq(c->match, ATUN_ROUTE_MATCH_PREFIX);
  char buf[ATUN_PREFIX_STRLEN];
  atun_prefix_format(buf, &c->prefix);
  cr_expect_eq(atun_prefix_cmp(&c->prefix, &p), 0, "prefix %s != %s", buf,
               prefix);
}

static void expect_domain(const atun_route_candidate *c, uint32_t agent,
                          const char *domain) {
  cr_expect_eq(c->agent, agent, "agent %u != %u for %s", c->agent, agent,
               domain);
  cr_expect_eq(c->match, ATUN_ROUTE_MATCH_DOMAIN);
  cr_expect_str_eq(c->domain, domain);
}

/* --- names and targets ---------------------------------------------------- */

Test(route_names, normalize_rules) {
  char out[ATUN_ROUTE_NAME_MAX + 1];
  cr_expect_eq(atun_route_name_normalize(out, "Corp.Example.", 13), 12);
  cr_expect_str_eq(out, "corp.example");
  cr_expect_eq(atun_route_name_normalize(out, "a_b-1", 5), 5);
  const char *bad[] = {"", ".", "a..b", ".a", "a b", "a/b", "a..", "\x80"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
    cr_expect_eq(atun_route_name_normalize(out, bad[i], strlen(bad[i])),
                 ATUN_ERR_BAD_NAME, "%s", bad[i]);
  cr_expect_eq(atun_route_name_normalize(out, NULL, 0), ATUN_ERR_BAD_NAME);
}

Test(route_names, length_bounds_at_the_bound) {
  char name[300], out[ATUN_ROUTE_NAME_MAX + 1];
  /* A 63-byte label passes, 64 does not. */
  memset(name, 'a', 63);
  cr_expect_eq(atun_route_name_normalize(out, name, 63), 63);
  memset(name, 'a', 64);
  cr_expect_eq(atun_route_name_normalize(out, name, 64), ATUN_ERR_BAD_NAME);
  /* 253 bytes (labels of 63 and a last one of 61) pass, 254 do not; a
   * trailing dot does not count. */
  memset(name, 'a', sizeof(name));
  for (size_t i = 63; i < sizeof(name); i += 64)
    name[i] = '.';
  cr_expect_eq(atun_route_name_normalize(out, name, 253), 253);
  cr_expect_eq(atun_route_name_normalize(out, name, 254), ATUN_ERR_BAD_NAME);
  name[253] = '.';
  cr_expect_eq(atun_route_name_normalize(out, name, 254), 253);
}

Test(route_names, target_parse) {
  atun_route_target t;
  cr_assert_eq(atun_route_target_parse(&t, "10.1.2.3"), 0);
  cr_expect_eq(t.kind, ATUN_ROUTE_TARGET_ADDR);
  cr_expect_eq(t.addr.family, ATUN_AF_INET);
  cr_assert_eq(atun_route_target_parse(&t, "[2001:db8::1]"), 0);
  cr_expect_eq(t.addr.family, ATUN_AF_INET6);
  cr_assert_eq(atun_route_target_parse(&t, "::ffff:10.0.0.1"), 0);
  cr_expect_eq(t.addr.family, ATUN_AF_INET, "mapped IPv6 folds to IPv4");
  cr_expect_eq(t.addr.bytes[0], 10);
  cr_assert_eq(atun_route_target_parse(&t, "Host.Corp.Example."), 0);
  cr_expect_eq(t.kind, ATUN_ROUTE_TARGET_NAME);
  cr_expect_eq(t.namelen, 18);
  cr_expect_eq(atun_route_target_parse(&t, "bad..name"), ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_route_target_parse(&t, ""), ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_route_target_parse(&t, "[::1"), ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_route_target_parse(&t, NULL), ATUN_ERR_INVALID_ARGUMENT);
}

/* --- fixed cases ---------------------------------------------------------- */

Test(route, longest_prefix_first_then_broader) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  atun_prefix a0[] = {P("0.0.0.0/0")};
  atun_prefix a1[] = {P("10.0.0.0/8")};
  atun_prefix a2[] = {P("10.1.0.0/16"), P("10.1.2.3/32")};
  cr_assert_eq(atun_route_table_replace(t, 0, a0, 1, NULL, 0), 0);
  cr_assert_eq(atun_route_table_replace(t, 1, a1, 1, NULL, 0), 0);
  cr_assert_eq(atun_route_table_replace(t, 2, a2, 2, NULL, 0), 0);
  atun_route_candidate c[8];
  cr_assert_eq(look(t, "10.1.2.3", c, 8), 3);
  expect_prefix(&c[0], 2, "10.1.2.3/32"); /* agent 2 once, at its /32 */
  expect_prefix(&c[1], 1, "10.0.0.0/8");
  expect_prefix(&c[2], 0, "0.0.0.0/0");
  cr_assert_eq(look(t, "10.1.9.9", c, 8), 3);
  expect_prefix(&c[0], 2, "10.1.0.0/16");
  cr_assert_eq(look(t, "192.168.1.1", c, 8), 1);
  expect_prefix(&c[0], 0, "0.0.0.0/0");
  cr_expect_eq(look(t, "2001:db8::1", c, 8), 0, "IPv4 routes never match IPv6");
  /* The list is cut at |cap|, best first. */
  cr_assert_eq(look(t, "10.1.2.3", c, 2), 2);
  expect_prefix(&c[1], 1, "10.0.0.0/8");
  atun_route_table_del(t);
}

Test(route, ipv6_full_length_and_default) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  atun_prefix a0[] = {P("::/0"), P("2001:db8::/32")};
  atun_prefix a1[] = {P("2001:db8::1/128"), P("2001:db8:0:1::/64")};
  cr_assert_eq(atun_route_table_replace(t, 0, a0, 2, NULL, 0), 0);
  cr_assert_eq(atun_route_table_replace(t, 1, a1, 2, NULL, 0), 0);
  atun_route_candidate c[8];
  cr_assert_eq(look(t, "2001:db8::1", c, 8), 2);
  expect_prefix(&c[0], 1, "2001:db8::1/128");
  expect_prefix(&c[1], 0, "2001:db8::/32");
  cr_assert_eq(look(t, "2001:db8::2", c, 8), 1);
  expect_prefix(&c[0], 0, "2001:db8::/32");
  cr_assert_eq(look(t, "2001:db8:0:1:ffff::", c, 8), 2);
  expect_prefix(&c[0], 1, "2001:db8:0:1::/64");
  cr_assert_eq(look(t, "fe80::1", c, 8), 1);
  expect_prefix(&c[0], 0, "::/0");
  cr_expect_eq(look(t, "10.0.0.1", c, 8), 0);
  atun_route_table_del(t);
}

Test(route, ipv4_mapped_targets_and_prefixes_fold) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  atun_prefix a0[] = {P("10.0.0.0/8")};
  atun_prefix a1[] = {P("::ffff:10.1.0.0/112")}; /* = 10.1.0.0/16 */
  atun_prefix a2[] = {P("::/0")};                /* IPv6 only */
  cr_assert_eq(atun_route_table_replace(t, 0, a0, 1, NULL, 0), 0);
  cr_assert_eq(atun_route_table_replace(t, 1, a1, 1, NULL, 0), 0);
  cr_assert_eq(atun_route_table_replace(t, 2, a2, 1, NULL, 0), 0);
  atun_route_candidate c[8];
  cr_assert_eq(look(t, "::ffff:10.1.2.3", c, 8), 2);
  expect_prefix(&c[0], 1, "10.1.0.0/16");
  expect_prefix(&c[1], 0, "10.0.0.0/8");
  /* A target struct filled by hand with a mapped address folds too. */
  atun_route_target tg;
  memset(&tg, 0, sizeof(tg));
  tg.kind = ATUN_ROUTE_TARGET_ADDR;
  cr_assert_eq(atun_addr_parse(&tg.addr, "::ffff:10.9.9.9"), 0);
  cr_assert_eq(atun_route_table_lookup(t, &tg, health_cb, NULL, c, 8), 1);
  expect_prefix(&c[0], 0, "10.0.0.0/8");
  atun_prefix got[1];
  cr_assert_eq(atun_route_table_agent_routes(t, 1, got, 1, NULL, 0), 0);
  atun_prefix want = P("10.1.0.0/16");
  cr_expect_eq(atun_prefix_cmp(&got[0], &want), 0);
  atun_route_table_del(t);
}

Test(route, same_prefix_health_order) {
  atun_route_table *t = table_new(atun_mem_default());
  memset(g_health, 0, sizeof(g_health));
  atun_prefix p[] = {P("10.0.0.0/8")};
  atun_prefix broad[] = {P("0.0.0.0/0")};
  for (uint32_t a = 0; a < 7; ++a)
    cr_assert_eq(atun_route_table_replace(t, a, p, 1, NULL, 0), 0);
  cr_assert_eq(atun_route_table_replace(t, 7, broad, 1, NULL, 0), 0);
  for (uint32_t a = 0; a < 8; ++a)
    g_health[a].eligible = 1;
  g_health[0].active_streams = 5; /* most loaded */
  g_health[1].active_streams = 1, g_health[1].rtt_ns = 900;
  g_health[2].active_streams = 1, g_health[2].rtt_ns = 100; /* best */
  g_health[3].active_streams = 1, g_health[3].rtt_ns = 500;
  g_health[3].tiebreak[0] = 2;
  g_health[4].active_streams = 1, g_health[4].rtt_ns = 500;
  g_health[4].tiebreak[0] = 1; /* beats 3 */
  g_health[5].eligible = 0;    /* skipped */
  g_health[6].active_streams = 1, g_health[6].rtt_ns = 500;
  g_health[6].tiebreak[0] = 1; /* ties 4: handle */
  atun_route_candidate c[16];
  cr_assert_eq(look(t, "10.2.3.4", c, 16), 7);
  uint32_t want[] = {2, 4, 6, 3, 1, 0, 7};
  for (size_t i = 0; i < 7; ++i)
    cr_expect_eq(c[i].agent, want[i], "slot %zu", i);
  expect_prefix(&c[6], 7, "0.0.0.0/0");
  cr_expect_eq(c[0].health.rtt_ns, 100, "health is reported back");
  /* A full buffer keeps the best ones of the route. */
  cr_assert_eq(look(t, "10.2.3.4", c, 3), 3);
  for (size_t i = 0; i < 3; ++i)
    cr_expect_eq(c[i].agent, want[i]);
  atun_route_table_del(t);
}

Test(route, ineligible_agents_fall_back_to_broader) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  atun_prefix a0[] = {P("10.1.0.0/16")};
  atun_prefix a1[] = {P("10.0.0.0/8")};
  cr_assert_eq(atun_route_table_replace(t, 0, a0, 1, NULL, 0), 0);
  cr_assert_eq(atun_route_table_replace(t, 1, a1, 1, NULL, 0), 0);
  g_health[0].eligible = 0;
  atun_route_candidate c[4];
  cr_assert_eq(look(t, "10.1.1.1", c, 4), 1);
  expect_prefix(&c[0], 1, "10.0.0.0/8");
  g_health[1].eligible = 0;
  cr_expect_eq(look(t, "10.1.1.1", c, 4), 0);
  atun_route_table_del(t);
}

Test(route, domain_suffix_on_label_boundary) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  atun_route_domain d0[] = {D("corp.example")};
  atun_route_domain d1[] = {D("A.Corp.Example.")}; /* stored normalized */
  atun_route_domain d2[] = {D("example")};
  cr_assert_eq(atun_route_table_replace(t, 0, NULL, 0, d0, 1), 0);
  cr_assert_eq(atun_route_table_replace(t, 1, NULL, 0, d1, 1), 0);
  cr_assert_eq(atun_route_table_replace(t, 2, NULL, 0, d2, 1), 0);
  atun_route_candidate c[8];
  cr_assert_eq(look(t, "x.a.corp.example", c, 8), 3);
  expect_domain(&c[0], 1, "a.corp.example");
  expect_domain(&c[1], 0, "corp.example");
  expect_domain(&c[2], 2, "example");
  cr_assert_eq(look(t, "corp.example", c, 8), 2, "the suffix itself matches");
  expect_domain(&c[0], 0, "corp.example");
  cr_assert_eq(look(t, "CORP.EXAMPLE.", c, 8), 2, "case and trailing dot");
  expect_domain(&c[0], 0, "corp.example");
  cr_assert_eq(look(t, "badcorp.example", c, 8), 1, "never badcorp.example");
  expect_domain(&c[0], 2, "example");
  cr_expect_eq(look(t, "example.org", c, 8), 0);
  cr_expect_eq(look(t, "xexample", c, 8), 0);
  atun_route_domain got[1];
  cr_assert_eq(atun_route_table_agent_routes(t, 1, NULL, 0, got, 1), 0);
  cr_expect_str_eq(got[0].name, "a.corp.example");
  atun_route_table_del(t);
}

Test(route, names_and_addresses_use_separate_tables) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  atun_prefix p[] = {P("10.0.0.0/8")};
  atun_route_domain d[] = {D("corp.example")};
  cr_assert_eq(atun_route_table_replace(t, 0, p, 1, d, 1), 0);
  atun_route_candidate c[4];
  cr_expect_eq(look(t, "10.0.0.1", c, 4), 1);
  cr_expect_eq(c[0].domain[0], '\0');
  cr_expect_eq(look(t, "h.corp.example", c, 4), 1);
  cr_expect_eq(c[0].prefix.len, 0);
  cr_expect_eq(atun_route_table_size(t), 2);
  cr_expect_eq(atun_route_table_agent_nprefixes(t, 0), 1);
  cr_expect_eq(atun_route_table_agent_ndomains(t, 0), 1);
  atun_route_table_del(t);
}

Test(route, duplicates_collapse_and_auto_detected_kept) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  atun_prefix p[] = {P("10.0.0.0/8"), P("10.0.0.0/8"), P("::ffff:10.0.0.0/104"),
                     P("10.1.0.0/16")};
  atun_route_domain d[] = {D("corp.example"), D("CORP.example."),
                           D("b.example")};
  d[2].auto_detected = 1;
  cr_assert_eq(atun_route_table_replace(t, 0, p, 4, d, 3), 0);
  cr_expect_eq(atun_route_table_size(t), 4);
  atun_prefix gp[2];
  atun_route_domain gd[2];
  cr_assert_eq(atun_route_table_agent_routes(t, 0, gp, 2, gd, 2), 0);
  cr_expect_eq(atun_prefix_cmp(&gp[0], &p[0]), 0);
  cr_expect_eq(atun_prefix_cmp(&gp[1], &p[3]), 0);
  cr_expect_str_eq(gd[0].name, "corp.example");
  cr_expect_eq(gd[0].auto_detected, 0);
  cr_expect_str_eq(gd[1].name, "b.example");
  cr_expect_eq(gd[1].auto_detected, 1);
  cr_expect_eq(atun_route_table_agent_routes(t, 0, gp, 1, gd, 2),
               ATUN_ERR_NOBUF);
  cr_expect_eq(atun_route_table_agent_routes(t, 0, gp, 2, gd, 1),
               ATUN_ERR_NOBUF);
  atun_route_candidate c[4];
  cr_expect_eq(look(t, "10.0.0.1", c, 4), 1);
  atun_route_table_del(t);
}

Test(route, replace_and_remove) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_route_table *t = table_new(&fm.mem);
  long base = fm.live;
  health_all_equal(NAGENTS);
  atun_prefix p1[] = {P("10.0.0.0/8"), P("10.1.0.0/16")};
  atun_prefix p2[] = {P("10.1.0.0/16"), P("192.168.0.0/16")};
  atun_route_domain d[] = {D("corp.example")};
  cr_assert_eq(atun_route_table_replace(t, 3, p1, 2, d, 1), 0);
  cr_assert_eq(atun_route_table_replace(t, 3, p2, 2, NULL, 0), 0);
  atun_route_candidate c[4];
  cr_expect_eq(look(t, "10.2.0.1", c, 4), 0, "old route gone");
  cr_expect_eq(look(t, "10.1.0.1", c, 4), 1, "shared route kept");
  cr_expect_eq(look(t, "192.168.3.3", c, 4), 1);
  cr_expect_eq(look(t, "a.corp.example", c, 4), 0);
  cr_expect_eq(atun_route_table_size(t), 2);
  cr_assert_eq(atun_route_table_replace(t, 3, NULL, 0, NULL, 0), 0);
  cr_expect_eq(atun_route_table_size(t), 0);
  cr_expect_eq(fm.live, base, "an empty agent holds no memory");
  cr_assert_eq(atun_route_table_replace(t, 3, p1, 2, d, 1), 0);
  cr_assert_eq(atun_route_table_remove(t, 3), 0);
  cr_assert_eq(atun_route_table_remove(t, 3), 0, "removing twice is a no-op");
  cr_expect_eq(look(t, "10.1.0.1", c, 4), 0);
  cr_expect_eq(fm.live, base, "remove frees every node");
  atun_route_table_del(t);
  cr_expect_eq(fm.live, 0);
}

Test(route, argument_errors) {
  atun_route_table *t = table_new(atun_mem_default());
  atun_route_settings s;
  atun_route_settings_default(&s);
  atun_prefix bad = P("10.0.0.0/8");
  bad.len = 6; /* host bits now set */
  atun_prefix ok = P("10.0.0.0/8");
  atun_route_domain badd = D("a..b");
  cr_expect_eq(atun_route_table_replace(t, s.max_agents, &ok, 1, NULL, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_route_table_replace(t, 0, NULL, 1, NULL, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_route_table_replace(t, 0, NULL, 0, NULL, 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_route_table_replace(t, 0, &bad, 1, NULL, 0),
               ATUN_ERR_BAD_PREFIX);
  cr_expect_eq(atun_route_table_replace(t, 0, &ok, 1, &badd, 1),
               ATUN_ERR_BAD_NAME);
  cr_expect_eq(atun_route_table_size(t), 0,
               "a refused replace changes nothing");
  cr_expect_eq(atun_route_table_remove(t, s.max_agents),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_route_table_agent_routes(t, s.max_agents, NULL, 0, NULL, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_route_table_agent_nprefixes(t, s.max_agents), 0);
  cr_expect_eq(atun_route_table_agent_ndomains(t, s.max_agents), 0);
  atun_route_candidate c[2];
  atun_route_target tg = T("10.0.0.1");
  cr_expect_eq(atun_route_table_lookup(t, &tg, health_cb, NULL, c, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_route_table_lookup(t, &tg, NULL, NULL, c, 2),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_eq(atun_route_table_lookup(t, NULL, health_cb, NULL, c, 2),
               ATUN_ERR_INVALID_ARGUMENT);
  tg.kind = 9;
  cr_expect_eq(atun_route_table_lookup(t, &tg, health_cb, NULL, c, 2),
               ATUN_ERR_INVALID_ARGUMENT);
  tg.kind = ATUN_ROUTE_TARGET_ADDR;
  tg.addr.family = 5;
  cr_expect_eq(atun_route_table_lookup(t, &tg, health_cb, NULL, c, 2),
               ATUN_ERR_INVALID_ARGUMENT);
  tg.kind = ATUN_ROUTE_TARGET_NAME;
  tg.name = "a..b";
  tg.namelen = 4;
  cr_expect_eq(atun_route_table_lookup(t, &tg, health_cb, NULL, c, 2),
               ATUN_ERR_BAD_NAME);
  atun_route_table_del(t);
  atun_route_table_del(NULL);
}

Test(route, settings_validation) {
  atun_route_table *t = NULL;
  atun_route_settings s;
  atun_route_settings_default(&s);
  s.max_agents = 0;
  cr_expect_eq(atun_route_table_new(&t, &s, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_route_settings_default(&s);
  s.max_routes = 0;
  cr_expect_eq(atun_route_table_new(&t, &s, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_route_settings_default(&s);
  s.max_subnets_per_agent = ATUN_ROUTE_SUBNETS_MAX + 1;
  cr_expect_eq(atun_route_table_new(&t, &s, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_route_settings_default(&s);
  s.max_domains_per_agent = ATUN_ROUTE_DOMAINS_MAX + 1;
  cr_expect_eq(atun_route_table_new(&t, &s, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_route_settings_default(&s);
  s.max_agents = ATUN_ROUTE_AGENTS_MAX + 1;
  cr_expect_eq(atun_route_table_new(&t, &s, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_expect_null(t);
}

Test(route, health_order_is_total) {
  atun_route_health a = {1, 2, 300, {0}}, b = a;
  cr_expect_eq(atun_route_health_cmp(&a, 4, &b, 4), 0);
  cr_expect_eq(atun_route_health_cmp(&a, 4, &b, 5), -1);
  b.tiebreak[15] = 1;
  cr_expect_eq(atun_route_health_cmp(&a, 9, &b, 5), -1);
  b.rtt_ns = 299;
  cr_expect_eq(atun_route_health_cmp(&a, 4, &b, 5), 1);
  b.active_streams = 3;
  cr_expect_eq(atun_route_health_cmp(&a, 4, &b, 5), -1);
}

/* --- bounds --------------------------------------------------------------- */

static atun_prefix nth_v4(uint32_t i, unsigned len) {
  atun_prefix p;
  memset(&p, 0, sizeof(p));
  p.addr.family = ATUN_AF_INET;
  uint32_t v = (10u << 24) | (i << (32 - len));
  for (int b = 0; b < 4; ++b)
    p.addr.bytes[b] = (uint8_t)(v >> (24 - 8 * b));
  p.len = (uint8_t)len;
  return p;
}

Test(route_bounds, per_agent_limits_at_the_bound) {
  atun_route_table *t = table_new(atun_mem_default());
  static atun_prefix p[ATUN_ROUTE_SUBNETS_MAX + 1];
  static atun_route_domain d[ATUN_ROUTE_DOMAINS_MAX + 1];
  for (uint32_t i = 0; i <= ATUN_ROUTE_SUBNETS_MAX; ++i)
    p[i] = nth_v4(i, 24);
  for (uint32_t i = 0; i <= ATUN_ROUTE_DOMAINS_MAX; ++i) {
    memset(&d[i], 0, sizeof(d[i]));
    snprintf(d[i].name, sizeof(d[i].name), "d%u.example", i);
  }
  cr_expect_eq(
      atun_route_table_replace(t, 0, p, ATUN_ROUTE_SUBNETS_MAX + 1, NULL, 0),
      ATUN_ERR_LIMIT);
  cr_expect_eq(
      atun_route_table_replace(t, 0, NULL, 0, d, ATUN_ROUTE_DOMAINS_MAX + 1),
      ATUN_ERR_LIMIT);
  cr_assert_eq(atun_route_table_replace(t, 0, p, ATUN_ROUTE_SUBNETS_MAX, d,
                                        ATUN_ROUTE_DOMAINS_MAX),
               0);
  cr_expect_eq(atun_route_table_size(t),
               ATUN_ROUTE_SUBNETS_MAX + ATUN_ROUTE_DOMAINS_MAX);
  health_all_equal(NAGENTS);
  atun_route_candidate c[2];
  cr_expect_eq(look(t, "10.15.255.1", c, 2), 1);
  cr_expect_eq(look(t, "x.d1023.example", c, 2), 1);
  atun_route_table_del(t);
}

Test(route_bounds, total_routes_at_the_bound) {
  atun_route_settings s;
  atun_route_settings_default(&s);
  s.max_routes = 10;
  atun_route_table *t = NULL;
  cr_assert_eq(atun_route_table_new(&t, &s, atun_mem_default()), 0);
  atun_prefix p[12];
  for (uint32_t i = 0; i < 12; ++i)
    p[i] = nth_v4(i, 16);
  atun_route_domain d[] = {D("a.example"), D("b.example")};
  cr_assert_eq(atun_route_table_replace(t, 0, p, 4, d, 2), 0);
  cr_expect_eq(atun_route_table_replace(t, 1, p, 5, NULL, 0), ATUN_ERR_FULL);
  cr_expect_eq(atun_route_table_size(t), 6, "refused replace changes nothing");
  cr_assert_eq(atun_route_table_replace(t, 1, p, 4, NULL, 0), 0,
               "exactly at the bound");
  cr_expect_eq(atun_route_table_size(t), 10);
  /* Duplicates do not count; replacing one's own routes frees their room. */
  atun_prefix dup[] = {p[0], p[0], p[0], p[1], p[1]};
  cr_expect_eq(atun_route_table_replace(t, 1, dup, 5, NULL, 0), 0);
  cr_expect_eq(atun_route_table_size(t), 8);
  cr_expect_eq(atun_route_table_replace(t, 0, p, 8, NULL, 0), 0);
  cr_expect_eq(atun_route_table_size(t), 10);
  cr_expect_eq(atun_route_table_replace(t, 0, p, 9, NULL, 0), ATUN_ERR_FULL);
  atun_route_table_del(t);
}

Test(route_bounds, lookup_cap_is_clamped) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(100);
  atun_prefix p[] = {P("10.0.0.0/8")};
  for (uint32_t a = 0; a < 100; ++a)
    cr_assert_eq(atun_route_table_replace(t, a, p, 1, NULL, 0), 0);
  atun_route_candidate c[100];
  cr_expect_eq(look(t, "10.0.0.1", c, 100), ATUN_ROUTE_CANDIDATES_MAX);
  cr_expect_eq(look(t, "10.0.0.1", c, ATUN_ROUTE_CANDIDATES_MAX),
               ATUN_ROUTE_CANDIDATES_MAX);
  for (size_t i = 0; i < ATUN_ROUTE_CANDIDATES_MAX; ++i)
    cr_expect_eq(c[i].agent, i, "equal health: handle order");
  atun_route_table_del(t);
}

/* --- reference model ------------------------------------------------------ */

#define MODEL_P 40
#define MODEL_D 12

typedef struct model {
  atun_prefix p[NAGENTS][MODEL_P];
  size_t np[NAGENTS];
  char d[NAGENTS][MODEL_D][ATUN_ROUTE_NAME_MAX + 1];
  uint8_t auto_detected[NAGENTS][MODEL_D];
  size_t nd[NAGENTS];
} model;

static void mask_prefix(atun_prefix *p) {
  for (unsigned i = p->len; i < 128; ++i)
    p->addr.bytes[i / 8] &= (uint8_t) ~(0x80 >> (i % 8));
}

static atun_prefix model_norm_prefix(atun_prefix p) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (p.addr.family == ATUN_AF_INET6 && p.len >= 96 &&
      memcmp(p.addr.bytes, mapped, 12) == 0) {
    memmove(p.addr.bytes, p.addr.bytes + 12, 4);
    memset(p.addr.bytes + 4, 0, 12);
    p.addr.family = ATUN_AF_INET;
    p.len -= 96;
  }
  return p;
}

static void model_norm_name(char *out, const char *in) {
  size_t n = strlen(in);
  if (n > 0 && in[n - 1] == '.') --n;
  for (size_t i = 0; i < n; ++i)
    out[i] = (in[i] >= 'A' && in[i] <= 'Z') ? (char)(in[i] + 32) : in[i];
  out[n] = '\0';
}

static void model_replace(model *m, uint32_t a, const atun_prefix *p, size_t np,
                          const atun_route_domain *d, size_t nd) {
  m->np[a] = 0;
  for (size_t i = 0; i < np; ++i) {
    atun_prefix q = model_norm_prefix(p[i]);
    int dup = 0;
    for (size_t j = 0; j < m->np[a]; ++j)
      dup |= atun_prefix_cmp(&q, &m->p[a][j]) == 0;
    if (!dup) m->p[a][m->np[a]++] = q;
  }
  m->nd[a] = 0;
  for (size_t i = 0; i < nd; ++i) {
    char name[ATUN_ROUTE_NAME_MAX + 1];
    model_norm_name(name, d[i].name);
    int dup = 0;
    for (size_t j = 0; j < m->nd[a]; ++j)
      dup |= strcmp(name, m->d[a][j]) == 0;
    if (dup) continue;
    strcpy(m->d[a][m->nd[a]], name);
    m->auto_detected[a][m->nd[a]++] = d[i].auto_detected;
  }
}

typedef struct ref_match {
  uint32_t agent;
  unsigned specificity; /* prefix length or name length */
  atun_prefix prefix;
  const char *domain;
} ref_match;

static int ref_cmp(const void *x, const void *y) {
  const ref_match *a = x, *b = y;
  if (a->specificity != b->specificity)
    return a->specificity > b->specificity ? -1 : 1;
  return atun_route_health_cmp(&g_health[a->agent], a->agent,
                               &g_health[b->agent], b->agent);
}

static int suffix_matches(const char *name, const char *suffix) {
  size_t n = strlen(name), s = strlen(suffix);
  if (s > n) return 0;
  if (strcmp(name + n - s, suffix) != 0) return 0;
  return s == n || name[n - s - 1] == '.';
}

/* Brute force: every route of every agent is checked. */
static size_t ref_lookup(const model *m, const atun_route_target *tg,
                         atun_route_candidate *out, size_t cap) {
  static ref_match matches[NAGENTS * (MODEL_P + MODEL_D)];
  size_t nm = 0;
  char name[ATUN_ROUTE_NAME_MAX + 2];
  atun_addr a = tg->addr;
  atun_addr_normalize(&a);
  if (tg->kind == ATUN_ROUTE_TARGET_NAME) {
    memcpy(name, tg->name, tg->namelen);
    name[tg->namelen] = '\0';
    model_norm_name(name, name);
  }
  for (uint32_t ag = 0; ag < NAGENTS; ++ag) {
    if (tg->kind == ATUN_ROUTE_TARGET_ADDR) {
      for (size_t i = 0; i < m->np[ag]; ++i)
        if (atun_prefix_contains(&m->p[ag][i], &a))
          matches[nm++] = (ref_match){ag, m->p[ag][i].len, m->p[ag][i], NULL};
    } else {
      for (size_t i = 0; i < m->nd[ag]; ++i)
        if (suffix_matches(name, m->d[ag][i]))
          matches[nm++] = (ref_match){
              ag, (unsigned)strlen(m->d[ag][i]), {{0, {0}}, 0}, m->d[ag][i]};
    }
  }
  qsort(matches, nm, sizeof(matches[0]), ref_cmp);
  size_t n = 0;
  for (size_t i = 0; i < nm && n < cap; ++i) {
    if (!g_health[matches[i].agent].eligible) continue;
    int seen = 0;
    for (size_t j = 0; j < n; ++j)
      seen |= out[j].agent == matches[i].agent;
    if (seen) continue;
    memset(&out[n], 0, sizeof(out[n]));
    out[n].agent = matches[i].agent;
    out[n].health = g_health[matches[i].agent];
    if (matches[i].domain != NULL) {
      out[n].match = ATUN_ROUTE_MATCH_DOMAIN;
      strcpy(out[n].domain, matches[i].domain);
    } else {
      out[n].match = ATUN_ROUTE_MATCH_PREFIX;
      out[n].prefix = matches[i].prefix;
    }
    ++n;
  }
  return n;
}

/* --- random inputs -------------------------------------------------------- */

/* Few distinct byte values, so random prefixes nest and collide often. */
static uint8_t rand_byte(atun_testrng *r) {
  static const uint8_t v[] = {0, 1, 10, 128, 255};
  return v[atun_testrng_below(r, sizeof(v))];
}

static atun_addr rand_addr(atun_testrng *r) {
  atun_addr a;
  memset(&a, 0, sizeof(a));
  uint64_t kind = atun_testrng_below(r, 10);
  if (kind < 5) {
    a.family = ATUN_AF_INET;
    for (int i = 0; i < 4; ++i)
      a.bytes[i] = rand_byte(r);
  } else {
    a.family = ATUN_AF_INET6;
    a.bytes[0] = 0x20;
    for (int i = 1; i < 16; ++i)
      a.bytes[i] = rand_byte(r);
    if (kind >= 8) { /* IPv4-mapped */
      memset(a.bytes, 0, 10);
      a.bytes[10] = a.bytes[11] = 0xff;
    }
  }
  return a;
}

static atun_prefix rand_prefix(atun_testrng *r) {
  atun_prefix p;
  memset(&p, 0, sizeof(p));
  p.addr = rand_addr(r);
  unsigned bits = p.addr.family == ATUN_AF_INET ? 32 : 128;
  p.len = (uint8_t)atun_testrng_below(r, bits + 1);
  if (p.addr.bytes[10] == 0xff && atun_testrng_below(r, 2))
    p.len = (uint8_t)(96 + atun_testrng_below(r, 33));
  mask_prefix(&p);
  return p;
}

static void rand_name(atun_testrng *r, char *out, size_t maxlabels) {
  static const char *labels[] = {"a", "b", "corp", "badcorp", "example", "x-1"};
  size_t n = 1 + atun_testrng_below(r, maxlabels);
  out[0] = '\0';
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) strcat(out, ".");
    strcat(out, labels[atun_testrng_below(r, 6)]);
  }
  for (char *c = out; *c; ++c)
    if (atun_testrng_below(r, 4) == 0 && *c >= 'a' && *c <= 'z')
      *c = (char)(*c - 32);
  if (atun_testrng_below(r, 4) == 0) strcat(out, ".");
}

static void rand_health(atun_testrng *r) {
  for (size_t a = 0; a < NAGENTS; ++a) {
    atun_route_health *h = &g_health[a];
    memset(h, 0, sizeof(*h));
    h->eligible = atun_testrng_below(r, 5) != 0;
    h->active_streams = (uint32_t)atun_testrng_below(r, 3);
    h->rtt_ns = atun_testrng_below(r, 3) * 1000;
    h->tiebreak[0] = (uint8_t)atun_testrng_below(r, 2);
    h->tiebreak[15] = (uint8_t)atun_testrng_below(r, 2);
  }
}

typedef struct advert {
  atun_prefix p[MODEL_P];
  size_t np;
  atun_route_domain d[MODEL_D];
  size_t nd;
} advert;

static void rand_advert(atun_testrng *r, advert *ad, size_t maxp, size_t maxd) {
  memset(ad, 0, sizeof(*ad));
  ad->np = atun_testrng_below(r, maxp + 1);
  ad->nd = atun_testrng_below(r, maxd + 1);
  for (size_t i = 0; i < ad->np; ++i)
    ad->p[i] = rand_prefix(r);
  for (size_t i = 0; i < ad->nd; ++i) {
    rand_name(r, ad->d[i].name, 3);
    ad->d[i].auto_detected = (uint8_t)atun_testrng_below(r, 2);
  }
}

static void rand_target(atun_testrng *r, atun_route_target *tg, char *namebuf) {
  memset(tg, 0, sizeof(*tg));
  if (atun_testrng_below(r, 3) == 0) {
    rand_name(r, namebuf, 4);
    tg->kind = ATUN_ROUTE_TARGET_NAME;
    tg->name = namebuf;
    tg->namelen = strlen(namebuf);
  } else {
    tg->kind = ATUN_ROUTE_TARGET_ADDR;
    tg->addr = rand_addr(r);
  }
}

static void check_same(const atun_route_candidate *got, ssize_t ngot,
                       const atun_route_candidate *want, size_t nwant,
                       const char *what) {
  cr_assert_eq(ngot, (ssize_t)nwant, "%s: %zd candidates, want %zu", what, ngot,
               nwant);
  for (size_t i = 0; i < nwant; ++i) {
    cr_assert_eq(got[i].agent, want[i].agent, "%s: slot %zu agent", what, i);
    cr_assert_eq(got[i].match, want[i].match, "%s: slot %zu kind", what, i);
    cr_assert_eq(atun_prefix_cmp(&got[i].prefix, &want[i].prefix), 0,
                 "%s: slot %zu prefix", what, i);
    cr_assert_str_eq(got[i].domain, want[i].domain, "%s: slot %zu domain", what,
                     i);
    cr_assert_eq(
        memcmp(&got[i].health, &want[i].health, sizeof(want[i].health)), 0,
        "%s: slot %zu health", what, i);
  }
}

/* How many checked lookups found several candidates over more than one
 * route: the random inputs must exercise the ordering, not just agree on
 * empty answers. */
static long g_rich_lookups;

static void check_lookup(const atun_route_table *t, const model *m,
                         const atun_route_target *tg, size_t cap) {
  atun_route_candidate got[NAGENTS], want[NAGENTS];
  ssize_t n = atun_route_table_lookup(t, tg, health_cb, NULL, got, cap);
  size_t nw = ref_lookup(m, tg, want, cap);
  if (nw >= 3 && want[0].prefix.len + strlen(want[0].domain) !=
                     want[nw - 1].prefix.len + strlen(want[nw - 1].domain))
    ++g_rich_lookups;
  char what[300];
  if (tg->kind == ATUN_ROUTE_TARGET_NAME)
    snprintf(what, sizeof(what), "name %.*s cap %zu", (int)tg->namelen,
             tg->name, cap);
  else {
    char buf[ATUN_ADDR_STRLEN];
    atun_addr_format(buf, &tg->addr);
    snprintf(what, sizeof(what), "addr %s cap %zu", buf, cap);
  }
  check_same(got, n, want, nw, what);
}

static void check_agent_routes(const atun_route_table *t, const model *m,
                               uint32_t a) {
  atun_prefix p[MODEL_P];
  atun_route_domain d[MODEL_D];
  cr_assert_eq(atun_route_table_agent_nprefixes(t, a), m->np[a]);
  cr_assert_eq(atun_route_table_agent_ndomains(t, a), m->nd[a]);
  cr_assert_eq(atun_route_table_agent_routes(t, a, p, MODEL_P, d, MODEL_D), 0);
  for (size_t i = 0; i < m->np[a]; ++i)
    cr_assert_eq(atun_prefix_cmp(&p[i], &m->p[a][i]), 0, "agent %u prefix %zu",
                 a, i);
  for (size_t i = 0; i < m->nd[a]; ++i) {
    cr_assert_str_eq(d[i].name, m->d[a][i]);
    cr_assert_eq(d[i].auto_detected, m->auto_detected[a][i]);
  }
}

/* Every agent's routes, the size, and a lookup at every advertised route
 * (its own address, so every route is hit) plus random targets. */
static void check_table(const atun_route_table *t, const model *m,
                        atun_testrng *r) {
  size_t total = 0;
  for (uint32_t a = 0; a < NAGENTS; ++a) {
    check_agent_routes(t, m, a);
    total += m->np[a] + m->nd[a];
  }
  cr_assert_eq(atun_route_table_size(t), total);
  for (uint32_t a = 0; a < NAGENTS; ++a) {
    for (size_t i = 0; i < m->np[a]; ++i) {
      atun_route_target tg = {ATUN_ROUTE_TARGET_ADDR, m->p[a][i].addr, NULL, 0};
      check_lookup(t, m, &tg, NAGENTS);
    }
    for (size_t i = 0; i < m->nd[a]; ++i) {
      atun_route_target tg = {
          ATUN_ROUTE_TARGET_NAME, {0, {0}}, m->d[a][i], strlen(m->d[a][i])};
      check_lookup(t, m, &tg, NAGENTS);
    }
  }
  char namebuf[64];
  for (int q = 0; q < 20; ++q) {
    atun_route_target tg;
    rand_target(r, &tg, namebuf);
    check_lookup(t, m, &tg, 1 + atun_testrng_below(r, NAGENTS));
  }
}

/* --- random tests --------------------------------------------------------- */

Test(route_random, matches_reference_over_replace_remove_sequences) {
  static model m;
  long lookups = 0;
  g_rich_lookups = 0;
  for (uint64_t seed = 1; seed <= 24; ++seed) {
    atun_testrng r;
    atun_testrng_seed(&r, seed);
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    atun_route_table *t = table_new(&fm.mem);
    memset(&m, 0, sizeof(m));
    rand_health(&r);
    for (int op = 0; op < 150; ++op) {
      uint32_t a = (uint32_t)atun_testrng_below(&r, NAGENTS);
      if (atun_testrng_below(&r, 6) == 0) {
        cr_assert_eq(atun_route_table_remove(t, a), 0);
        model_replace(&m, a, NULL, 0, NULL, 0);
      } else {
        advert ad;
        rand_advert(&r, &ad, MODEL_P, MODEL_D);
        cr_assert_eq(atun_route_table_replace(t, a, ad.p, ad.np, ad.d, ad.nd),
                     0);
        model_replace(&m, a, ad.p, ad.np, ad.d, ad.nd);
      }
      if (atun_testrng_below(&r, 8) == 0) rand_health(&r);
      check_agent_routes(t, &m, a);
      char namebuf[64];
      for (int q = 0; q < 20; ++q, ++lookups) {
        atun_route_target tg;
        rand_target(&r, &tg, namebuf);
        check_lookup(t, &m, &tg, 1 + atun_testrng_below(&r, NAGENTS));
      }
    }
    check_table(t, &m, &r);
    /* Emptying every agent returns the table to its initial footprint. */
    for (uint32_t a = 0; a < NAGENTS; ++a)
      atun_route_table_remove(t, a);
    cr_assert_eq(atun_route_table_size(t), 0);
    atun_route_table_del(t);
    cr_assert_eq(fm.live, 0, "seed %lu leaks %ld blocks", (unsigned long)seed,
                 fm.live);
  }
  cr_expect_gt(lookups, 50000);
  cr_expect_gt(g_rich_lookups, lookups / 10, "only %ld rich lookups",
               g_rich_lookups);
}

Test(route_random, failed_allocation_at_every_index_changes_nothing) {
  static model m;
  for (uint64_t seed = 100; seed < 106; ++seed) {
    atun_testrng r;
    atun_testrng_seed(&r, seed);
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    atun_route_table *t = table_new(&fm.mem);
    memset(&m, 0, sizeof(m));
    rand_health(&r);
    for (uint32_t a = 0; a < NAGENTS; ++a) {
      advert ad;
      rand_advert(&r, &ad, 20, 6);
      cr_assert_eq(atun_route_table_replace(t, a, ad.p, ad.np, ad.d, ad.nd), 0);
      model_replace(&m, a, ad.p, ad.np, ad.d, ad.nd);
    }
    for (int trial = 0; trial < 12; ++trial) {
      uint32_t a = (uint32_t)atun_testrng_below(&r, NAGENTS);
      advert ad;
      rand_advert(&r, &ad, MODEL_P, MODEL_D);
      long live = fm.live;
      int rv = ATUN_ERR_NOMEM;
      long k;
      for (k = 0; rv != 0; ++k) {
        atun_failmem_arm(&fm, k, 0);
        rv = atun_route_table_replace(t, a, ad.p, ad.np, ad.d, ad.nd);
        atun_failmem_arm(&fm, -1, 0);
        if (rv == 0) break;
        cr_assert_eq(rv, ATUN_ERR_NOMEM);
        cr_assert_eq(fm.live, live, "seed %lu k %ld: %ld blocks leaked",
                     (unsigned long)seed, k, fm.live - live);
        check_table(t, &m, &r);
      }
      model_replace(&m, a, ad.p, ad.np, ad.d, ad.nd);
      check_table(t, &m, &r);
    }
    atun_route_table_del(t);
    cr_assert_eq(fm.live, 0);
  }
}

/* Many distinct domains coming and going: probe runs in the domain hash
 * wrap around its end and get holes punched into them. */
Test(route_random, domain_churn_against_reference) {
  static model m;
  atun_testrng r;
  atun_testrng_seed(&r, 11);
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_route_table *t = table_new(&fm.mem);
  memset(&m, 0, sizeof(m));
  health_all_equal(NAGENTS);
  for (int op = 0; op < 3000; ++op) {
    uint32_t a = (uint32_t)atun_testrng_below(&r, NAGENTS);
    advert ad;
    memset(&ad, 0, sizeof(ad));
    ad.nd = atun_testrng_below(&r, MODEL_D + 1);
    for (size_t i = 0; i < ad.nd; ++i)
      snprintf(ad.d[i].name, sizeof(ad.d[i].name), "h%u.example",
               (unsigned)atun_testrng_below(&r, 400));
    cr_assert_eq(atun_route_table_replace(t, a, NULL, 0, ad.d, ad.nd), 0);
    model_replace(&m, a, NULL, 0, ad.d, ad.nd);
    if (op % 100 == 0) check_table(t, &m, &r);
    char name[32];
    snprintf(name, sizeof(name), "x.h%u.example",
             (unsigned)atun_testrng_below(&r, 400));
    atun_route_target tg = {
        ATUN_ROUTE_TARGET_NAME, {0, {0}}, name, strlen(name)};
    check_lookup(t, &m, &tg, NAGENTS);
  }
  check_table(t, &m, &r);
  atun_route_table_del(t);
  cr_assert_eq(fm.live, 0);
}

Test(route_random, table_new_fails_cleanly_at_every_index) {
  for (long k = 0;; ++k) {
    atun_failmem fm;
    atun_failmem_init(&fm, k);
    atun_route_table *t = NULL;
    int rv = atun_route_table_new(&t, NULL, &fm.mem);
    if (rv == 0) {
      cr_expect_gt(k, 0);
      atun_route_table_del(t);
      cr_assert_eq(fm.live, 0);
      break;
    }
    cr_assert_eq(rv, ATUN_ERR_NOMEM);
    cr_assert_eq(fm.live, 0, "k %ld", k);
  }
}

/* Many agents and routes in one table: the trie against the scan on the
 * routes' own addresses and on random ones. */
Test(route_random, larger_table_against_reference) {
  static model m;
  atun_testrng r;
  atun_testrng_seed(&r, 7);
  atun_route_table *t = table_new(atun_mem_default());
  memset(&m, 0, sizeof(m));
  rand_health(&r);
  for (uint32_t a = 0; a < NAGENTS; ++a) {
    advert ad;
    memset(&ad, 0, sizeof(ad));
    ad.np = MODEL_P;
    ad.nd = MODEL_D;
    for (size_t i = 0; i < MODEL_P; ++i) {
      ad.p[i].addr.family = ATUN_AF_INET;
      uint64_t v = atun_testrng_next(&r);
      memcpy(ad.p[i].addr.bytes, &v, 4);
      ad.p[i].len = (uint8_t)(8 + atun_testrng_below(&r, 25));
      mask_prefix(&ad.p[i]);
    }
    for (size_t i = 0; i < MODEL_D; ++i)
      rand_name(&r, ad.d[i].name, 3);
    cr_assert_eq(atun_route_table_replace(t, a, ad.p, ad.np, ad.d, ad.nd), 0);
    model_replace(&m, a, ad.p, ad.np, ad.d, ad.nd);
  }
  for (int round = 0; round < 5; ++round) {
    rand_health(&r);
    check_table(t, &m, &r);
  }
  atun_route_table_del(t);
}

/* --- the IPv4 index ------------------------------------------------------- */

/* The index holds the nodes at /4, /8 and /12 and, per /16, the first node
 * at or below /16.  These tests put routes on both sides of those lines
 * (and on them) and check every one of their edges against the model. */

static atun_prefix v4_prefix(uint32_t v, unsigned len) {
  atun_prefix p;
  memset(&p, 0, sizeof(p));
  p.addr.family = ATUN_AF_INET;
  if (len < 32) v &= len == 0 ? 0 : ~(uint32_t)0 << (32 - len);
  for (int b = 0; b < 4; ++b)
    p.addr.bytes[b] = (uint8_t)(v >> (24 - 8 * b));
  p.len = (uint8_t)len;
  return p;
}

static uint32_t v4_value(const atun_addr *a) {
  return (uint32_t)a->bytes[0] << 24 | (uint32_t)a->bytes[1] << 16 |
         (uint32_t)a->bytes[2] << 8 | a->bytes[3];
}

/* Bases whose keys share their top 12, 15, 16 or 17 bits, plus the two ends
 * of the address space, so that nodes split at, above and below /16. */
static atun_prefix rand_edge_prefix(atun_testrng *r) {
  static const uint32_t bases[] = {
      0x0a000000, 0x0a010000, 0x0a00ffff, 0x0a008000, 0x0a0f0000,
      0x0a100000, 0x0a000100, 0x00000000, 0xffffffff, 0x0affff80};
  static const uint8_t lens[] = {0,  1,  4,  7,  8,  11, 12, 14, 15,
                                 16, 17, 19, 20, 23, 24, 28, 31, 32};
  uint32_t v = bases[atun_testrng_below(r, sizeof(bases) / sizeof(bases[0]))];
  if (atun_testrng_below(r, 3) == 0)
    v ^= (uint32_t)1 << atun_testrng_below(r, 32);
  return v4_prefix(v, lens[atun_testrng_below(r, sizeof(lens))]);
}

/* A lookup at the first and last address of |p| and just outside both. */
static void check_v4_edges_of(const atun_route_table *t, const model *m,
                              const atun_prefix *p) {
  uint32_t first = v4_value(&p->addr);
  uint32_t host = p->len == 0 ? ~(uint32_t)0 : ~(~(uint32_t)0 << (32 - p->len));
  uint32_t last = first | host;
  uint32_t at[] = {first, last, first - 1, last + 1}; /* wraps at the ends */
  for (size_t i = 0; i < 4; ++i) {
    atun_route_target tg = {ATUN_ROUTE_TARGET_ADDR, v4_prefix(at[i], 32).addr,
                            NULL, 0};
    check_lookup(t, m, &tg, NAGENTS);
  }
}

static void check_v4_edges(const atun_route_table *t, const model *m) {
  for (uint32_t a = 0; a < NAGENTS; ++a)
    for (size_t i = 0; i < m->np[a]; ++i)
      check_v4_edges_of(t, m, &m->p[a][i]);
}

static void rand_edge_advert(atun_testrng *r, advert *ad, size_t maxp) {
  memset(ad, 0, sizeof(*ad));
  ad->np = atun_testrng_below(r, maxp + 1);
  for (size_t i = 0; i < ad->np; ++i)
    ad->p[i] = rand_edge_prefix(r);
}

Test(route_v4_index, fixed_lengths_around_the_direct_level) {
  atun_route_table *t = table_new(atun_mem_default());
  health_all_equal(NAGENTS);
  const char *routes[] = {"0.0.0.0/0",   "10.0.0.0/8",    "10.0.0.0/15",
                          "10.0.0.0/16", "10.0.128.0/17", "10.0.128.7/32",
                          "10.1.0.0/16", "10.1.2.0/24",   "255.255.255.255/32",
                          "0.0.0.0/32"};
  for (uint32_t a = 0; a < 10; ++a) {
    atun_prefix p = P(routes[a]);
    cr_assert_eq(atun_route_table_replace(t, a, &p, 1, NULL, 0), 0);
  }
  atun_route_candidate c[NAGENTS];
  cr_assert_eq(look(t, "10.0.128.7", c, NAGENTS), 6);
  const char *want[] = {"10.0.128.7/32", "10.0.128.0/17", "10.0.0.0/16",
                        "10.0.0.0/15",   "10.0.0.0/8",    "0.0.0.0/0"};
  uint32_t agents[] = {5, 4, 3, 2, 1, 0};
  for (size_t i = 0; i < 6; ++i)
    expect_prefix(&c[i], agents[i], want[i]);
  cr_assert_eq(look(t, "10.0.127.255", c, NAGENTS), 4, "below the /17");
  expect_prefix(&c[0], 3, "10.0.0.0/16");
  cr_assert_eq(look(t, "10.1.2.255", c, NAGENTS), 5, "/15 spans two /16s");
  expect_prefix(&c[0], 7, "10.1.2.0/24");
  expect_prefix(&c[1], 6, "10.1.0.0/16");
  expect_prefix(&c[2], 2, "10.0.0.0/15");
  cr_assert_eq(look(t, "10.2.0.0", c, NAGENTS), 2);
  expect_prefix(&c[0], 1, "10.0.0.0/8");
  cr_assert_eq(look(t, "255.255.255.255", c, NAGENTS), 2, "last /16 entry");
  expect_prefix(&c[0], 8, "255.255.255.255/32");
  cr_assert_eq(look(t, "0.0.0.0", c, NAGENTS), 2, "first /16 entry");
  expect_prefix(&c[0], 9, "0.0.0.0/32");
  cr_assert_eq(look(t, "0.0.0.1", c, NAGENTS), 1);
  expect_prefix(&c[0], 0, "0.0.0.0/0");
  /* Dropping the /16 and /15 in the middle leaves the /17 reachable. */
  cr_assert_eq(atun_route_table_remove(t, 3), 0);
  cr_assert_eq(atun_route_table_remove(t, 2), 0);
  cr_assert_eq(look(t, "10.0.200.1", c, NAGENTS), 3);
  expect_prefix(&c[0], 4, "10.0.128.0/17");
  expect_prefix(&c[1], 1, "10.0.0.0/8");
  atun_route_table_del(t);
}

/* Adding and then removing an agent's routes returns the table to the same
 * blocks, whether its nodes land above, on or below /16 or split an edge
 * that crosses it.  (Lists it shared keep the room they grew, as after a
 * failed replace, so only an empty table is back to the same bytes.) */
Test(route_v4_index, removal_restores_the_previous_state) {
  static model m;
  atun_testrng r;
  atun_testrng_seed(&r, 21);
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_route_table *t = table_new(&fm.mem);
  memset(&m, 0, sizeof(m));
  long live0 = fm.live;
  size_t bytes0 = fm.live_bytes;
  rand_health(&r);
  for (int round = 0; round < 300; ++round) {
    uint32_t base = (uint32_t)atun_testrng_below(&r, NAGENTS - 1);
    advert ad;
    rand_edge_advert(&r, &ad, 8);
    cr_assert_eq(atun_route_table_replace(t, base, ad.p, ad.np, NULL, 0), 0);
    model_replace(&m, base, ad.p, ad.np, NULL, 0);
    /* The last agent comes and goes. */
    uint32_t extra = NAGENTS - 1;
    long live = fm.live;
    rand_edge_advert(&r, &ad, 6);
    cr_assert_eq(atun_route_table_replace(t, extra, ad.p, ad.np, NULL, 0), 0);
    model_replace(&m, extra, ad.p, ad.np, NULL, 0);
    check_v4_edges(t, &m);
    cr_assert_eq(atun_route_table_remove(t, extra), 0);
    model_replace(&m, extra, NULL, 0, NULL, 0);
    cr_assert_eq(fm.live, live, "round %d: %ld blocks left", round,
                 fm.live - live);
    /* Where the removed routes were, lookups see only what is left. */
    for (size_t i = 0; i < ad.np; ++i)
      check_v4_edges_of(t, &m, &ad.p[i]);
    check_v4_edges(t, &m);
  }
  for (uint32_t a = 0; a < NAGENTS; ++a)
    cr_assert_eq(atun_route_table_remove(t, a), 0);
  cr_expect_eq(fm.live, live0, "an empty table is back to its first blocks");
  cr_expect_eq(fm.live_bytes, bytes0);
  atun_route_table_del(t);
  cr_assert_eq(fm.live, 0);
}

Test(route_v4_index, failed_allocation_at_every_index_changes_nothing) {
  static model m;
  atun_testrng r;
  atun_testrng_seed(&r, 33);
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_route_table *t = table_new(&fm.mem);
  memset(&m, 0, sizeof(m));
  rand_health(&r);
  long failures = 0;
  for (int trial = 0; trial < 60; ++trial) {
    uint32_t a = (uint32_t)atun_testrng_below(&r, NAGENTS);
    advert ad;
    rand_edge_advert(&r, &ad, 16);
    long live = fm.live;
    int rv = ATUN_ERR_NOMEM;
    for (long k = 0; rv != 0; ++k) {
      atun_failmem_arm(&fm, k, 0);
      rv = atun_route_table_replace(t, a, ad.p, ad.np, NULL, 0);
      atun_failmem_arm(&fm, -1, 0);
      if (rv == 0) break;
      ++failures;
      cr_assert_eq(rv, ATUN_ERR_NOMEM);
      cr_assert_eq(fm.live, live, "trial %d k %ld: %ld blocks leaked", trial, k,
                   fm.live - live);
      check_agent_routes(t, &m, a);
      check_v4_edges(t, &m);
      for (size_t i = 0; i < ad.np; ++i)
        check_v4_edges_of(t, &m, &ad.p[i]);
    }
    model_replace(&m, a, ad.p, ad.np, NULL, 0);
    check_v4_edges(t, &m);
  }
  cr_expect_gt(failures, 200, "only %ld failed updates", failures);
  atun_route_table_del(t);
  cr_assert_eq(fm.live, 0);
}

/* The index is allocated with the first IPv4 route and freed with the last,
 * including when the replace that would have brought it fails. */
Test(route_v4_index, index_lives_with_the_ipv4_routes) {
  const size_t index_bytes = 69904 * sizeof(void *);
  atun_route_settings s;
  atun_route_settings_default(&s);
  s.max_routes = 3;
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_route_table *t = NULL;
  cr_assert_eq(atun_route_table_new(&t, &s, &fm.mem), 0);
  health_all_equal(NAGENTS);
  long live0 = fm.live;
  size_t bytes0 = fm.live_bytes;
  cr_expect_lt(bytes0, index_bytes, "an empty table has no index");
  atun_prefix v6[] = {P("2001:db8::/32")};
  atun_prefix v4[] = {P("10.0.0.0/8"), P("10.1.0.0/16")};
  atun_prefix many[] = {P("10.0.0.0/8"), P("10.1.0.0/16"), P("10.2.0.0/16"),
                        P("10.3.0.0/16")};
  /* IPv6 alone needs no index. */
  cr_assert_eq(atun_route_table_replace(t, 0, v6, 1, NULL, 0), 0);
  cr_expect_lt(fm.live_bytes, bytes0 + index_bytes);
  long live6 = fm.live;
  size_t bytes6 = fm.live_bytes;
  /* Refusals on the first IPv4 routes free the index they allocated. */
  atun_failmem_arm(&fm, 0, 1);
  cr_expect_eq(atun_route_table_replace(t, 1, v4, 2, NULL, 0), ATUN_ERR_NOMEM);
  cr_expect_eq(fm.failures, 1);
  cr_expect_eq(fm.live, live6);
  cr_expect_eq(atun_route_table_replace(t, 1, many, 4, NULL, 0), ATUN_ERR_FULL);
  cr_expect_eq(fm.live, live6);
  cr_expect_eq(fm.live_bytes, bytes6);
  atun_route_candidate c[4];
  cr_expect_eq(look(t, "10.1.0.1", c, 4), 0, "an IPv4 lookup with no index");
  /* With IPv4 routes it is there. */
  cr_assert_eq(atun_route_table_replace(t, 1, v4, 2, NULL, 0), 0);
  cr_expect_geq(fm.live_bytes, bytes6 + index_bytes);
  cr_expect_eq(look(t, "10.1.0.1", c, 4), 1);
  expect_prefix(&c[0], 1, "10.1.0.0/16");
  /* The agent moving to IPv6 only takes the index away. */
  cr_assert_eq(atun_route_table_replace(t, 1, v6, 1, NULL, 0), 0);
  cr_expect_lt(fm.live_bytes, bytes6 + index_bytes);
  cr_expect_eq(look(t, "10.1.0.1", c, 4), 0);
  cr_expect_eq(look(t, "2001:db8::1", c, 4), 2);
  cr_assert_eq(atun_route_table_remove(t, 1), 0);
  cr_assert_eq(atun_route_table_remove(t, 0), 0);
  cr_expect_eq(fm.live, live0);
  cr_expect_eq(fm.live_bytes, bytes0);
  atun_route_table_del(t);
  cr_assert_eq(fm.live, 0);
}
