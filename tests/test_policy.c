#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "policy.h"
#include "support.h"

/* --- helpers -------------------------------------------------------------- */

static atun_policy *pol;

static atun_addr A(const char *s) {
  atun_addr a;
  cr_assert_eq(atun_addr_parse(&a, s), 0, "address %s", s);
  return a;
}

static atun_prefix P(const char *s) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, s), 0, "prefix %s", s);
  return p;
}

static atun_domain D(const char *name) {
  atun_domain d;
  memset(&d, 0, sizeof(d));
  snprintf(d.name, sizeof(d.name), "%s", name);
  return d;
}

static void new_policy(const atun_policy_settings *s) {
  cr_assert_eq(atun_policy_new(&pol, s, atun_mem_default()), 0);
}

static void set_subnets(const char *const *list, size_t n) {
  atun_prefix v[16];
  cr_assert_leq(n, 16);
  for (size_t i = 0; i < n; ++i) v[i] = P(list[i]);
  cr_assert_eq(atun_policy_set_routes(pol, v, n, NULL, 0), 0);
}

static int check(const char *addr) {
  atun_addr a = A(addr);
  return atun_policy_check_addr(pol, &a, NULL);
}

static void expect_ok(const char *addr) {
  cr_assert_eq(check(addr), ATUN_CONNECT_OK, "%s should pass", addr);
}

static void expect_denied(const char *addr) {
  cr_assert_eq(check(addr), ATUN_CONNECT_DENIED, "%s should be denied", addr);
}

static void expect_rule(const atun_policy_verdict *v, const char *prefix) {
  atun_prefix want = P(prefix);
  cr_assert_eq(atun_prefix_cmp(&v->rule, &want), 0, "rule for %s", prefix);
}

static void open_default(void) { new_policy(NULL); }
static void close_policy(void) { atun_policy_del(pol); }

TestSuite(addr, .init = open_default, .fini = close_policy);

/* --- addresses ---------------------------------------------------------- */

Test(addr, nothing_advertised_denies_all) {
  expect_denied("10.0.0.1");
  expect_denied("2001:db8::1");
  atun_policy_verdict v;
  atun_addr a = A("10.0.0.1");
  cr_assert_eq(atun_policy_check_addr(pol, &a, &v), ATUN_CONNECT_DENIED);
  cr_assert_eq(v.status, ATUN_CONNECT_DENIED);
  cr_assert_str_eq(v.reason, "outside the advertised subnets");
  cr_assert_eq(v.rule.addr.family, 0);
}

Test(addr, inside_and_outside) {
  const char *subnets[] = {"10.0.0.0/8", "192.168.1.0/24", "fd00:1::/32", "203.0.113.7"};
  set_subnets(subnets, 4);
  expect_ok("10.0.0.0");
  expect_ok("10.255.255.255");
  expect_denied("11.0.0.0");
  expect_denied("9.255.255.255");
  expect_ok("192.168.1.0");
  expect_ok("192.168.1.255");
  expect_denied("192.168.0.255");
  expect_denied("192.168.2.0");
  expect_ok("203.0.113.7");
  expect_denied("203.0.113.6");
  expect_denied("203.0.113.8");
  expect_ok("fd00:1::5");
  expect_ok("fd00:1:ffff:ffff:ffff:ffff:ffff:ffff");
  expect_denied("fd00:2::1");
  /* An IPv4 route never admits an IPv6 address of the same bits. */
  expect_denied("a00:1::");
  atun_policy_verdict v;
  atun_addr a = A("192.168.1.77");
  cr_assert_eq(atun_policy_check_addr(pol, &a, &v), ATUN_CONNECT_OK);
  cr_assert_str_eq(v.reason, "inside an advertised subnet");
  expect_rule(&v, "192.168.1.0/24");
  cr_assert_eq(memcmp(&v.addr, &a, sizeof(a)), 0);
}

Test(addr, deny_wins_over_a_covering_subnet) {
  const char *subnets[] = {"127.0.0.0/8", "169.254.0.0/16", "fe80::/10", "10.0.0.0/8"};
  set_subnets(subnets, 4);
  atun_policy_verdict v;
  atun_addr a = A("127.0.0.1");
  cr_assert_eq(atun_policy_check_addr(pol, &a, &v), ATUN_CONNECT_DENIED);
  cr_assert_str_eq(v.reason, "in the deny list");
  expect_rule(&v, "127.0.0.0/8");
  a = A("169.254.169.254");
  cr_assert_eq(atun_policy_check_addr(pol, &a, &v), ATUN_CONNECT_DENIED);
  expect_rule(&v, "169.254.0.0/16");
  expect_denied("fe80::1");
  expect_ok("10.1.1.1");
}

Test(addr, default_route_still_denies_local_targets) {
  const char *subnets[] = {"0.0.0.0/0", "::/0"};
  set_subnets(subnets, 2);
  expect_ok("8.8.8.8");
  expect_ok("1.0.0.0");
  expect_ok("126.255.255.255");
  expect_ok("128.0.0.0");
  expect_ok("169.253.255.255");
  expect_ok("169.255.0.0");
  expect_ok("2001:db8::1");
  expect_ok("::2");
  expect_ok("fec0::1");
  expect_ok("fd00:ec2::253");
  expect_denied("127.0.0.1");
  expect_denied("127.255.255.255");
  expect_denied("0.0.0.0");
  expect_denied("0.255.255.255");
  expect_denied("169.254.0.1");
  expect_denied("169.254.169.254");
  expect_denied("::1");
  expect_denied("::");
  expect_denied("fe80::1");
  expect_denied("febf:ffff::1");
  expect_denied("fd00:ec2::254");
}

Test(addr, ipv4_mapped_addresses_fold) {
  const char *subnets[] = {"10.0.0.0/8", "::/0"};
  set_subnets(subnets, 2);
  atun_policy_verdict v;
  atun_addr a = A("::ffff:127.0.0.1");
  cr_assert_eq(atun_policy_check_addr(pol, &a, &v), ATUN_CONNECT_DENIED);
  cr_assert_eq(v.addr.family, ATUN_AF_INET);
  expect_rule(&v, "127.0.0.0/8");
  expect_denied("::ffff:169.254.169.254");
  expect_denied("::ffff:0.0.0.0");
  /* Folded to IPv4, the mapped form is judged by the IPv4 routes, not
   * by ::/0. */
  expect_ok("::ffff:10.1.2.3");
  expect_denied("::ffff:11.1.2.3");
}

Test(addr, ipv4_mapped_prefixes_fold) {
  atun_prefix subnets[] = {P("::ffff:10.0.0.0/104"), P("::ffff:0.0.0.0/96")};
  cr_assert_eq(atun_policy_set_routes(pol, subnets, 1, NULL, 0), 0);
  expect_ok("10.9.9.9");
  expect_ok("::ffff:10.9.9.9");
  expect_denied("11.0.0.1");
  /* ::ffff:0:0/96 is all of IPv4, yet the deny list still wins. */
  cr_assert_eq(atun_policy_set_routes(pol, subnets + 1, 1, NULL, 0), 0);
  expect_ok("198.51.100.1");
  expect_denied("127.0.0.1");
  expect_denied("::ffff:127.0.0.1");
}

Test(addr, unknown_family_is_denied) {
  const char *subnets[] = {"0.0.0.0/0"};
  set_subnets(subnets, 1);
  atun_addr a = {0, {10}};
  atun_policy_verdict v;
  cr_assert_eq(atun_policy_check_addr(pol, &a, &v), ATUN_CONNECT_DENIED);
  cr_assert_str_eq(v.reason, "address of unknown family");
}

Test(addr, nested_and_duplicate_subnets_collapse) {
  const char *subnets[] = {"10.1.0.0/16", "10.0.0.0/8", "10.1.2.0/24", "10.0.0.0/8",
                           "192.168.0.0/24", "192.168.1.0/24", "2001:db8::/48",
                           "2001:db8:0:1::/64"};
  set_subnets(subnets, 8);
  cr_assert_eq(atun_policy_nsubnets(pol), 4);
  atun_policy_verdict v;
  atun_addr a = A("10.1.2.3");
  cr_assert_eq(atun_policy_check_addr(pol, &a, &v), ATUN_CONNECT_OK);
  expect_rule(&v, "10.0.0.0/8");
  expect_ok("192.168.1.1");
  expect_ok("2001:db8:0:1::1");
  expect_denied("192.168.2.1");
}

Test(addr, default_deny_list) {
  size_t n;
  const atun_prefix *d = atun_policy_deny_defaults(&n);
  cr_assert_eq(n, ATUN_POLICY_DENY_DEFAULTS);
  const char *want[] = {"0.0.0.0/8",   "::/128",    "127.0.0.0/8",        "::1/128",
                        "169.254.0.0/16", "fe80::/10", "169.254.169.254/32",
                        "fd00:ec2::254/128"};
  for (size_t i = 0; i < n; ++i) {
    atun_prefix p = P(want[i]);
    cr_assert_eq(atun_prefix_cmp(&d[i], &p), 0, "default %zu", i);
    cr_assert(atun_prefix_valid(&d[i]));
  }
  /* The metadata /32 collapses into the link-local /16. */
  cr_assert_eq(atun_policy_ndeny(pol), ATUN_POLICY_DENY_DEFAULTS - 1);
}

Test(addr, routes_replace_and_stay_on_error) {
  const char *first[] = {"10.0.0.0/8"};
  set_subnets(first, 1);
  const char *second[] = {"172.16.0.0/12"};
  set_subnets(second, 1);
  expect_denied("10.0.0.1");
  expect_ok("172.20.0.1");
  /* A bad prefix leaves the routes as they were. */
  atun_prefix bad[2] = {P("192.168.0.0/16"), P("10.0.0.0/8")};
  bad[1].addr.bytes[3] = 1; /* host bit */
  cr_assert_eq(atun_policy_set_routes(pol, bad, 2, NULL, 0), ATUN_ERR_BAD_PREFIX);
  bad[1] = P("10.0.0.0/8");
  bad[1].len = 33;
  cr_assert_eq(atun_policy_set_routes(pol, bad, 2, NULL, 0), ATUN_ERR_BAD_PREFIX);
  atun_domain dbad = D("bad..name");
  cr_assert_eq(atun_policy_set_routes(pol, bad, 1, &dbad, 1), ATUN_ERR_BAD_NAME);
  expect_ok("172.20.0.1");
  expect_denied("192.168.0.1");
  /* Emptying them denies everything again. */
  cr_assert_eq(atun_policy_set_routes(pol, NULL, 0, NULL, 0), 0);
  expect_denied("172.20.0.1");
  cr_assert_eq(atun_policy_nsubnets(pol), 0);
}

Test(addr, route_bounds) {
  static atun_prefix many[ATUN_POLICY_SUBNETS_MAX + 1];
  for (size_t i = 0; i <= ATUN_POLICY_SUBNETS_MAX; ++i) {
    many[i].addr.family = ATUN_AF_INET;
    many[i].addr.bytes[0] = 10;
    many[i].addr.bytes[1] = (uint8_t)(i >> 8);
    many[i].addr.bytes[2] = (uint8_t)i;
    many[i].len = 24;
  }
  cr_assert_eq(atun_policy_set_routes(pol, many, ATUN_POLICY_SUBNETS_MAX + 1, NULL, 0),
               ATUN_ERR_LIMIT);
  cr_assert_eq(atun_policy_set_routes(pol, many, ATUN_POLICY_SUBNETS_MAX, NULL, 0), 0);
  cr_assert_eq(atun_policy_nsubnets(pol), ATUN_POLICY_SUBNETS_MAX);
  expect_ok("10.15.255.1");
  expect_ok("10.0.0.1");
  expect_denied("10.16.0.1");

  static atun_domain doms[ATUN_POLICY_DOMAINS_MAX + 1];
  for (size_t i = 0; i <= ATUN_POLICY_DOMAINS_MAX; ++i)
    snprintf(doms[i].name, sizeof(doms[i].name), "d%zu.example", i);
  cr_assert_eq(atun_policy_set_routes(pol, NULL, 0, doms, ATUN_POLICY_DOMAINS_MAX + 1),
               ATUN_ERR_LIMIT);
  cr_assert_eq(atun_policy_set_routes(pol, NULL, 0, doms, ATUN_POLICY_DOMAINS_MAX), 0);
  cr_assert_eq(atun_policy_ndomains(pol), ATUN_POLICY_DOMAINS_MAX);
  cr_assert_eq(atun_policy_set_routes(pol, NULL, 1, NULL, 0), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_policy_set_routes(pol, NULL, 0, NULL, 1), ATUN_ERR_INVALID_ARGUMENT);
}

/* The binary search over collapsed ranges against a plain linear scan of
 * the lists as given, on random nested prefixes. */
Test(addr, matches_a_linear_model) {
  atun_testrng rng;
  atun_testrng_seed(&rng, 7);
  for (int round = 0; round < 50; ++round) {
    atun_prefix subnets[64];
    size_t n = 1 + (size_t)atun_testrng_below(&rng, 64);
    for (size_t i = 0; i < n; ++i) {
      atun_prefix *p = &subnets[i];
      memset(p, 0, sizeof(*p));
      int v6 = atun_testrng_below(&rng, 4) == 0;
      p->addr.family = v6 ? ATUN_AF_INET6 : ATUN_AF_INET;
      unsigned bits = v6 ? 128 : 32;
      /* Few distinct top bytes, so prefixes nest and overlap often. */
      p->addr.bytes[0] = (uint8_t)(atun_testrng_below(&rng, 3) * 64);
      for (unsigned b = 1; b < bits / 8; ++b)
        p->addr.bytes[b] = (uint8_t)atun_testrng_next(&rng);
      p->len = (uint8_t)atun_testrng_below(&rng, bits + 1);
      for (unsigned b = p->len; b < bits; ++b)
        p->addr.bytes[b / 8] &= (uint8_t)~(0x80 >> (b % 8));
    }
    cr_assert_eq(atun_policy_set_routes(pol, subnets, n, NULL, 0), 0);
    size_t ndeny;
    const atun_prefix *deny = atun_policy_deny_defaults(&ndeny);
    for (int k = 0; k < 400; ++k) {
      const atun_prefix *near = &subnets[atun_testrng_below(&rng, n)];
      atun_addr a = near->addr;
      unsigned bits = a.family == ATUN_AF_INET6 ? 128 : 32;
      /* Flip a few bits, mostly below the prefix length. */
      for (int f = 0; f < 2; ++f) {
        unsigned b = (unsigned)atun_testrng_below(&rng, bits);
        a.bytes[b / 8] ^= (uint8_t)(0x80 >> (b % 8));
      }
      if (k % 50 == 0) a.bytes[0] = 127; /* loopback now and then */
      int allowed = 0, denied = 0;
      for (size_t i = 0; i < n; ++i) allowed |= atun_prefix_contains(&subnets[i], &a);
      for (size_t i = 0; i < ndeny; ++i) denied |= atun_prefix_contains(&deny[i], &a);
      int want = allowed && !denied ? ATUN_CONNECT_OK : ATUN_CONNECT_DENIED;
      cr_assert_eq(atun_policy_check_addr(pol, &a, NULL), want, "round %d probe %d",
                   round, k);
    }
  }
}

/* --- resolved lists --------------------------------------------------------- */

Test(addr, resolved_lists) {
  const char *subnets[] = {"10.0.0.0/8", "fd00::/8"};
  set_subnets(subnets, 2);
  atun_policy_verdict v;
  cr_assert_eq(atun_policy_check_resolved(pol, NULL, 0, &v), ATUN_CONNECT_DNS_FAILURE);
  cr_assert_str_eq(v.reason, "name resolved to no address");
  atun_addr good[3] = {A("10.1.1.1"), A("fd00::7"), A("::ffff:10.2.2.2")};
  cr_assert_eq(atun_policy_check_resolved(pol, good, 0, &v), ATUN_CONNECT_DNS_FAILURE);
  cr_assert_eq(atun_policy_check_resolved(pol, good, 3, &v), ATUN_CONNECT_OK);
  cr_assert_eq(v.addr.family, ATUN_AF_INET); /* the last one, folded */
  expect_rule(&v, "10.0.0.0/8");
  /* One bad address among good ones denies the target. */
  atun_addr mixed[4] = {A("10.1.1.1"), A("fd00::7"), A("8.8.8.8"), A("10.3.3.3")};
  cr_assert_eq(atun_policy_check_resolved(pol, mixed, 4, &v), ATUN_CONNECT_DENIED);
  cr_assert_eq(memcmp(&v.addr, &mixed[2], sizeof(mixed[2])), 0);
  cr_assert_str_eq(v.reason, "outside the advertised subnets");
  cr_assert_eq(v.rule.addr.family, 0);
  /* Rebinding to loopback is caught the same way. */
  atun_addr rebind[2] = {A("10.1.1.1"), A("127.0.0.1")};
  cr_assert_eq(atun_policy_check_resolved(pol, rebind, 2, &v), ATUN_CONNECT_DENIED);
  cr_assert_str_eq(v.reason, "in the deny list");
  cr_assert_eq(atun_policy_check_resolved(pol, rebind, 2, NULL), ATUN_CONNECT_DENIED);
}

Test(addr, resolved_bound) {
  const char *subnets[] = {"10.0.0.0/8"};
  set_subnets(subnets, 1);
  atun_addr many[ATUN_POLICY_RESOLVED_MAX + 1];
  for (size_t i = 0; i <= ATUN_POLICY_RESOLVED_MAX; ++i) many[i] = A("10.0.0.1");
  cr_assert_eq(atun_policy_check_resolved(pol, many, ATUN_POLICY_RESOLVED_MAX, NULL),
               ATUN_CONNECT_OK);
  atun_policy_verdict v;
  cr_assert_eq(atun_policy_check_resolved(pol, many, ATUN_POLICY_RESOLVED_MAX + 1, &v),
               ATUN_CONNECT_DENIED);
  cr_assert_str_eq(v.reason, "too many resolved addresses");
}

/* --- names ------------------------------------------------------------------- */

static void set_domains(const char *const *names, size_t n) {
  atun_domain d[8];
  for (size_t i = 0; i < n; ++i) d[i] = D(names[i]);
  cr_assert_eq(atun_policy_set_routes(pol, NULL, 0, d, n), 0);
}

static int name(const char *s, atun_policy_verdict *v) {
  return atun_policy_check_name(pol, s, strlen(s), v);
}

Test(addr, names_default_any_valid_name) {
  const char *doms[] = {"corp.example"};
  set_domains(doms, 1);
  atun_policy_verdict v;
  cr_assert_eq(name("a.corp.example", &v), ATUN_CONNECT_OK);
  cr_assert_str_eq(v.domain, "corp.example");
  cr_assert_str_eq(v.reason, "under an advertised domain");
  cr_assert_eq(name("www.other.example", &v), ATUN_CONNECT_OK);
  cr_assert_str_empty(v.domain);
  cr_assert_str_eq(v.reason, "host name; its addresses decide");
  const char *bad[] = {"", "a..b", "10.1", "-a.example", "a_b.example", "x.123"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    cr_assert_eq(name(bad[i], &v), ATUN_CONNECT_DENIED, "%s", bad[i]);
    cr_assert_str_eq(v.reason, "not a valid host name");
  }
  cr_assert_eq(atun_policy_check_name(pol, NULL, 0, &v), ATUN_CONNECT_DENIED);
  cr_assert_eq(name("intranet", &v), ATUN_CONNECT_OK);
  cr_assert_eq(name("2130706433", &v), ATUN_CONNECT_DENIED);
  cr_assert_eq(name("a.corp.example", NULL), ATUN_CONNECT_OK);
}

Test(addr, names_under_advertised_domains) {
  close_policy();
  atun_policy_settings s;
  atun_policy_settings_default(&s);
  s.names_require_domain = 1;
  new_policy(&s);
  const char *doms[] = {"Corp.Example.", "b.lab.example", "corp.example", "lab"};
  set_domains(doms, 4);
  cr_assert_eq(atun_policy_ndomains(pol), 3);
  atun_policy_verdict v;
  cr_assert_eq(name("corp.example", &v), ATUN_CONNECT_OK);
  cr_assert_eq(name("A.B.CORP.EXAMPLE.", &v), ATUN_CONNECT_OK);
  cr_assert_str_eq(v.domain, "corp.example");
  cr_assert_eq(name("x.b.lab.example", &v), ATUN_CONNECT_OK);
  cr_assert_str_eq(v.domain, "b.lab.example");
  cr_assert_eq(name("host.lab", &v), ATUN_CONNECT_OK);
  cr_assert_eq(name("badcorp.example", &v), ATUN_CONNECT_DENIED);
  cr_assert_str_eq(v.reason, "outside the advertised domains");
  cr_assert_eq(name("a.lab.example", &v), ATUN_CONNECT_DENIED);
  cr_assert_eq(name("example", &v), ATUN_CONNECT_DENIED);
  cr_assert_eq(name("corp.example.evil", &v), ATUN_CONNECT_DENIED);
  /* No domains at all: every name is outside. */
  cr_assert_eq(atun_policy_set_routes(pol, NULL, 0, NULL, 0), 0);
  cr_assert_eq(name("a.corp.example", NULL), ATUN_CONNECT_DENIED);
}

Test(addr, targets) {
  const char *subnets[] = {"10.0.0.0/8"};
  set_subnets(subnets, 1);
  atun_target t;
  memset(&t, 0, sizeof(t));
  t.kind = ATUN_TARGET_ADDR;
  t.addr = A("10.0.0.9");
  atun_policy_verdict v;
  cr_assert_eq(atun_policy_check_target(pol, &t, &v), ATUN_CONNECT_OK);
  t.addr = A("127.0.0.1");
  cr_assert_eq(atun_policy_check_target(pol, &t, &v), ATUN_CONNECT_DENIED);
  t.kind = ATUN_TARGET_HOST;
  snprintf(t.host, sizeof(t.host), "db.corp.example");
  cr_assert_eq(atun_policy_check_target(pol, &t, &v), ATUN_CONNECT_OK);
  t.kind = 9;
  cr_assert_eq(atun_policy_check_target(pol, &t, &v), ATUN_CONNECT_DENIED);
  cr_assert_str_eq(v.reason, "unknown target kind");
  cr_assert_eq(atun_policy_check_target(pol, &t, NULL), ATUN_CONNECT_DENIED);
}

/* --- settings and allocation -------------------------------------------------- */

Test(settings, extra_deny_prefixes) {
  atun_policy_settings s;
  atun_policy_settings_default(&s);
  atun_prefix extra[] = {P("10.9.0.0/16"), P("::ffff:10.8.0.0/112")};
  s.deny = extra;
  s.ndeny = 2;
  new_policy(&s);
  const char *subnets[] = {"10.0.0.0/8"};
  set_subnets(subnets, 1);
  expect_ok("10.1.0.1");
  expect_denied("10.9.0.1");
  expect_denied("10.8.0.1");
  expect_denied("127.0.0.1");
  close_policy();
}

Test(settings, without_defaults) {
  atun_policy_settings s;
  atun_policy_settings_default(&s);
  s.deny_defaults = 0;
  new_policy(&s);
  cr_assert_eq(atun_policy_ndeny(pol), 0);
  const char *subnets[] = {"127.0.0.0/8"};
  set_subnets(subnets, 1);
  expect_ok("127.0.0.1");
  close_policy();
}

Test(settings, deny_bounds_and_errors) {
  atun_policy_settings s;
  atun_policy_settings_default(&s);
  static atun_prefix many[ATUN_POLICY_DENY_MAX + 1];
  for (size_t i = 0; i <= ATUN_POLICY_DENY_MAX; ++i) {
    many[i].addr.family = ATUN_AF_INET;
    many[i].addr.bytes[0] = 100;
    many[i].addr.bytes[2] = (uint8_t)i;
    many[i].len = 24;
  }
  const atun_mem *mem = atun_mem_default();
  s.deny = many;
  s.ndeny = ATUN_POLICY_DENY_MAX - ATUN_POLICY_DENY_DEFAULTS + 1;
  cr_assert_eq(atun_policy_new(&pol, &s, mem), ATUN_ERR_LIMIT);
  s.ndeny--;
  cr_assert_eq(atun_policy_new(&pol, &s, mem), 0);
  atun_policy_del(pol);
  s.deny_defaults = 0;
  s.ndeny = ATUN_POLICY_DENY_MAX;
  cr_assert_eq(atun_policy_new(&pol, &s, mem), 0);
  cr_assert_eq(atun_policy_ndeny(pol), ATUN_POLICY_DENY_MAX);
  atun_policy_del(pol);
  s.ndeny = ATUN_POLICY_DENY_MAX + 1;
  cr_assert_eq(atun_policy_new(&pol, &s, mem), ATUN_ERR_LIMIT);
  s.deny = NULL;
  s.ndeny = 1;
  cr_assert_eq(atun_policy_new(&pol, &s, mem), ATUN_ERR_INVALID_ARGUMENT);
  atun_prefix bad = P("10.0.0.0/8");
  bad.len = 33;
  s.deny = &bad;
  cr_assert_eq(atun_policy_new(&pol, &s, mem), ATUN_ERR_BAD_PREFIX);
  atun_policy_del(NULL);
}

Test(settings, allocation_failures_in_new) {
  /* The object, then the deny array. */
  for (long k = 0; k < 2; ++k) {
    atun_failmem fm;
    atun_failmem_init(&fm, k);
    atun_policy *p = NULL;
    cr_assert_eq(atun_policy_new(&p, NULL, &fm.mem), ATUN_ERR_NOMEM, "fail at %ld", k);
    cr_assert_null(p);
    cr_assert_eq(fm.live, 0);
  }
}

Test(settings, allocation_failures_in_set_routes) {
  atun_prefix subnets[] = {P("10.0.0.0/8")};
  atun_domain doms[] = {D("corp.example")};
  atun_prefix next[] = {P("172.16.0.0/12")};
  for (long k = 0; k < 2; ++k) {
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    atun_policy *p = NULL;
    cr_assert_eq(atun_policy_new(&p, NULL, &fm.mem), 0);
    cr_assert_eq(atun_policy_set_routes(p, subnets, 1, doms, 1), 0);
    long live = fm.live;
    atun_failmem_arm(&fm, k, 0);
    cr_assert_eq(atun_policy_set_routes(p, next, 1, doms, 1), ATUN_ERR_NOMEM, "at %ld", k);
    cr_assert_eq(fm.live, live);
    /* The old routes still decide. */
    atun_addr a = A("10.0.0.1");
    cr_assert_eq(atun_policy_check_addr(p, &a, NULL), ATUN_CONNECT_OK);
    a = A("172.16.0.1");
    cr_assert_eq(atun_policy_check_addr(p, &a, NULL), ATUN_CONNECT_DENIED);
    atun_failmem_arm(&fm, -1, 0);
    atun_policy_del(p);
    cr_assert_eq(fm.live, 0);
  }
}
