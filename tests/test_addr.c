#include <criterion/criterion.h>
#include <string.h>

#include "addr.h"

static atun_prefix P(const char *s) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, s), 0, "parse %s", s);
  return p;
}

static atun_addr A(const char *s) {
  atun_addr a;
  cr_assert_eq(atun_addr_parse(&a, s), 0, "parse %s", s);
  return a;
}

Test(addr, parse_and_format_round_trip) {
  const char *cases[] = {"10.0.0.0/8", "0.0.0.0/0", "192.168.1.7/32", "::/0",
                         "2001:db8::/32", "2001:db8::1/128", "fe80::/10"};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    atun_prefix p = P(cases[i]);
    char buf[ATUN_PREFIX_STRLEN];
    atun_prefix_format(buf, &p);
    cr_assert_str_eq(buf, cases[i]);
  }
}

Test(addr, bare_address_is_host_prefix) {
  cr_assert_eq(P("10.1.2.3").len, 32);
  cr_assert_eq(P("::1").len, 128);
}

Test(addr, rejects_bad_prefixes) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0.0/33"), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(atun_prefix_parse(&p, "::/129"), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0.1/8"), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0.0/"), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0.0/-1"), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0.0/1000"), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0.0/8x"), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(atun_prefix_parse(&p, "10.0.0/8"), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_prefix_parse(&p, ""), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_prefix_parse(&p, NULL), ATUN_ERR_INVALID_ARGUMENT);
  char longstr[ATUN_PREFIX_STRLEN + 2];
  memset(longstr, '1', sizeof(longstr) - 1);
  longstr[sizeof(longstr) - 1] = '\0';
  cr_assert_eq(atun_prefix_parse(&p, longstr), ATUN_ERR_INVALID_ARGUMENT);
  atun_addr a;
  cr_assert_eq(atun_addr_parse(&a, "example.com"), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_addr_parse(&a, NULL), ATUN_ERR_INVALID_ARGUMENT);
}

Test(addr, contains_respects_family_and_bits) {
  atun_prefix p = P("10.128.0.0/9");
  cr_assert(atun_prefix_contains(&p, &(atun_addr){0}) == 0);
  atun_addr in = A("10.200.1.1"), out = A("10.127.255.255"), v6 = A("::a80:1");
  cr_assert(atun_prefix_contains(&p, &in));
  cr_assert_not(atun_prefix_contains(&p, &out));
  cr_assert_not(atun_prefix_contains(&p, &v6));
  atun_prefix all = P("0.0.0.0/0");
  cr_assert(atun_prefix_contains(&all, &out));
  atun_prefix host = P("2001:db8::1/128");
  atun_addr h1 = A("2001:db8::1"), h2 = A("2001:db8::2");
  cr_assert(atun_prefix_contains(&host, &h1));
  cr_assert_not(atun_prefix_contains(&host, &h2));
}

Test(addr, normalize_folds_mapped_ipv4_only) {
  atun_addr a = A("::ffff:192.0.2.1");
  atun_addr_normalize(&a);
  cr_assert_eq(a.family, ATUN_AF_INET);
  atun_addr want = A("192.0.2.1");
  cr_assert_eq(memcmp(&a, &want, sizeof(a)), 0);
  atun_addr b = A("::192.0.2.1");
  atun_addr_normalize(&b);
  cr_assert_eq(b.family, ATUN_AF_INET6);
  atun_addr c = A("192.0.2.1");
  atun_addr_normalize(&c);
  cr_assert_eq(memcmp(&c, &want, sizeof(c)), 0);
}

Test(addr, valid_and_cmp) {
  atun_prefix p = P("10.0.0.0/8");
  cr_assert(atun_prefix_valid(&p));
  p.addr.bytes[3] = 1;
  cr_assert_not(atun_prefix_valid(&p));
  p = P("10.0.0.0/8");
  p.len = 33;
  cr_assert_not(atun_prefix_valid(&p));
  p.addr.family = 5;
  cr_assert_not(atun_prefix_valid(&p));
  atun_prefix a = P("10.0.0.0/8"), b = P("10.0.0.0/16"), c = P("11.0.0.0/8"), d = P("::/0");
  cr_assert_lt(atun_prefix_cmp(&a, &b), 0);
  cr_assert_gt(atun_prefix_cmp(&b, &a), 0);
  cr_assert_lt(atun_prefix_cmp(&a, &c), 0);
  cr_assert_gt(atun_prefix_cmp(&c, &a), 0);
  cr_assert_lt(atun_prefix_cmp(&a, &d), 0);
  cr_assert_gt(atun_prefix_cmp(&d, &a), 0);
  cr_assert_eq(atun_prefix_cmp(&a, &a), 0);
}

Test(err, every_code_has_a_distinct_text) {
  cr_assert_str_eq(atun_strerror(ATUN_OK), "success");
  cr_assert_str_eq(atun_strerror(12345), "unknown error");
  const char *seen[600] = {0};
  for (int code = ATUN_ERR_INTERNAL; code <= ATUN_ERR_INVALID_ARGUMENT; ++code) {
    const char *s = atun_strerror(code);
    if (strcmp(s, "unknown error") == 0) continue;
    for (int j = 0; j < 600; ++j) cr_assert(seen[j] == NULL || strcmp(seen[j], s) != 0);
    seen[-code] = s;
  }
  cr_assert(atun_err_is_fatal(ATUN_ERR_NOMEM));
  cr_assert(atun_err_is_fatal(ATUN_ERR_FATAL));
  cr_assert_not(atun_err_is_fatal(ATUN_ERR_TRUNCATED));
}

Test(mem, default_allocator_works) {
  const atun_mem *m = atun_mem_default();
  char *p = atun_mem_malloc(m, 8);
  cr_assert_not_null(p);
  p = atun_mem_realloc(m, p, 64);
  cr_assert_not_null(p);
  atun_mem_free(m, p);
  int *z = atun_mem_calloc(m, 4, sizeof(int));
  cr_assert_not_null(z);
  cr_assert_eq(z[0] | z[1] | z[2] | z[3], 0);
  atun_mem_free(m, z);
}
