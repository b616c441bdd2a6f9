#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "ca_policy.h"
#include "support.h"

#define S(x) ((atun_tstamp)(x) * ATUN_NS_PER_S)
#define DAY_NS S(86400)

static const char *const UUID1 = "0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f";

static int failing_rand(uint8_t *dest, size_t len, void *ud) {
  (void)dest;
  (void)len;
  (void)ud;
  return -1;
}
static const atun_rand bad_rand = {failing_rand, NULL};

static atun_testrng rng_state;
static atun_rand test_rand(uint64_t seed) {
  atun_testrng_seed(&rng_state, seed);
  return atun_testrng_as_rand(&rng_state);
}

/* --- settings and names ---------------------------------------------------- */

Test(ca_policy, settings_default) {
  atun_ca_settings s;
  atun_ca_settings_default(&s);
  cr_assert_eq(s.ca_lifetime_ns, 3652 * DAY_NS);
  cr_assert_eq(s.server_lifetime_ns, 365 * DAY_NS);
  cr_assert_eq(s.client_lifetime_ns, 90 * DAY_NS);
  cr_assert_eq(s.backdate_ns, S(300));
  cr_assert_str_eq(s.ca_cn, "atun CA");
  cr_assert_str_eq(s.server_cn, "atun gateway");
}

static int name_ok(const char *s) { return atun_agent_name_valid(s, strlen(s)); }

Test(ca_policy, agent_name) {
  char n[ATUN_AGENT_NAME_MAX + 2];
  memset(n, 'a', sizeof(n));
  cr_assert(atun_agent_name_valid(n, ATUN_AGENT_NAME_MAX));
  cr_assert_not(atun_agent_name_valid(n, ATUN_AGENT_NAME_MAX + 1));
  cr_assert_not(atun_agent_name_valid(n, 0));
  cr_assert(name_ok("a"));
  cr_assert(name_ok("9"));
  cr_assert(name_ok("web-01.prod_eu"));
  cr_assert_not(name_ok("-web"));
  cr_assert_not(name_ok(".web"));
  cr_assert_not(name_ok("_web"));
  cr_assert_not(name_ok("web 1"));
  cr_assert_not(name_ok("web/1"));
  cr_assert_not(name_ok("wéb"));
  cr_assert_not(atun_agent_name_valid("ab\0c", 4));
}

Test(ca_policy, uuid_valid) {
  cr_assert(atun_uuid_valid(UUID1, 36));
  cr_assert_not(atun_uuid_valid(UUID1, 35));
  cr_assert_not(atun_uuid_valid("0B7E6C9E-8D5A-4C3B-9F1E-2A3B4C5D6E7F", 36));
  cr_assert_not(atun_uuid_valid("0b7e6c9e08d5a-4c3b-9f1e-2a3b4c5d6e7f", 36));
  cr_assert_not(atun_uuid_valid("0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7g", 36));
  cr_assert_not(atun_uuid_valid("0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f0", 37));
  char dash_moved[] = "0b7e6c9-e8d5a-4c3b-9f1e-2a3b4c5d6e7f";
  cr_assert_not(atun_uuid_valid(dash_moved, 36));
}

Test(ca_policy, uuid_generate) {
  atun_rand r = test_rand(1);
  char a[ATUN_UUID_STRLEN], b[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_uuid_generate(a, &r), 0);
  cr_assert_eq(atun_uuid_generate(b, &r), 0);
  cr_assert(atun_uuid_valid(a, strlen(a)));
  cr_assert(atun_uuid_valid(b, strlen(b)));
  cr_assert_str_neq(a, b);
  cr_assert_eq(a[14], '4');
  cr_assert(strchr("89ab", a[19]) != NULL);
  cr_assert_eq(atun_uuid_generate(a, &bad_rand), ATUN_ERR_CALLBACK_FAILURE);
  cr_assert_str_eq(a, "");
}

Test(ca_policy, agent_uri) {
  char uri[ATUN_AGENT_URI_LEN + 1], id[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_agent_uri_format(uri, UUID1), 0);
  cr_assert_str_eq(uri, "atun://agent/0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f");
  cr_assert_eq(atun_agent_uri_parse(id, uri, strlen(uri)), 0);
  cr_assert_str_eq(id, UUID1);
  cr_assert_eq(atun_agent_uri_format(uri, "not-a-uuid"), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_agent_uri_format(uri, NULL), ATUN_ERR_INVALID_ARGUMENT);
  const char *bad[] = {
      "urn:uuid:0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f",
      "atun://agent/0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7",
      "atun://agent/0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7F",
      "atun://agent/0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f/",
      "atun://agenT/0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    cr_assert_eq(atun_agent_uri_parse(id, bad[i], strlen(bad[i])),
                 ATUN_ERR_MALFORMED, "%s", bad[i]);
  }
}

Test(ca_policy, dns_name) {
  char label63[64], name[300];
  memset(label63, 'a', 63);
  label63[63] = '\0';
  cr_assert(atun_ca_dns_name_valid("a"));
  cr_assert(atun_ca_dns_name_valid("gw-1.Example.com"));
  cr_assert(atun_ca_dns_name_valid(label63));
  snprintf(name, sizeof(name), "%sa", label63);
  cr_assert_not(atun_ca_dns_name_valid(name));
  /* 3 x 63 + 61 + 3 dots = 253 bytes. */
  snprintf(name, sizeof(name), "%s.%s.%s.%.61s", label63, label63, label63, label63);
  cr_assert_eq(strlen(name), 253);
  cr_assert(atun_ca_dns_name_valid(name));
  strcat(name, "a");
  cr_assert_not(atun_ca_dns_name_valid(name));
  const char *bad[] = {"", ".", "a.", ".a", "a..b", "-a.com", "a-.com",
                       "a_b.com", "a b", "*.example.com"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    cr_assert_not(atun_ca_dns_name_valid(bad[i]), "%s", bad[i]);
  }
}

Test(ca_policy, serial_positive_fixed_length) {
  atun_rand r = test_rand(7);
  atun_cert_profile p;
  uint8_t first[ATUN_CA_SERIAL_LEN];
  for (int i = 0; i < 1000; ++i) {
    cr_assert_eq(atun_ca_serial_generate(&p, &r), 0);
    cr_assert_eq(p.serial_len, ATUN_CA_SERIAL_LEN);
    cr_assert_eq(p.serial[0] & 0xc0, 0x40);
    if (i == 0) memcpy(first, p.serial, sizeof(first));
  }
  cr_assert_neq(memcmp(first, p.serial, sizeof(first)), 0);
  cr_assert_eq(atun_ca_serial_generate(&p, &bad_rand), ATUN_ERR_CALLBACK_FAILURE);
}

/* --- profiles ---------------------------------------------------------------- */

Test(ca_policy, profile_ca) {
  atun_ca_settings s;
  atun_ca_settings_default(&s);
  atun_rand r = test_rand(2);
  atun_cert_profile p;
  atun_tstamp now = S(1700000000) + 123456789;
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), 0);
  cr_assert_eq(p.kind, ATUN_CERT_CA);
  cr_assert_str_eq(p.cn, "atun CA");
  cr_assert(p.is_ca);
  cr_assert_eq(p.key_usage, ATUN_KU_KEY_CERT_SIGN | ATUN_KU_CRL_SIGN);
  cr_assert_eq(p.ext_key_usage, 0);
  cr_assert_eq(p.nsans, 0);
  cr_assert_eq(p.not_before, S(1700000000 - 300));
  cr_assert_eq(p.not_after, S(1700000000) + 3652 * DAY_NS);
  cr_assert_eq(p.serial_len, ATUN_CA_SERIAL_LEN);
}

Test(ca_policy, profile_backdate_saturates_at_epoch) {
  atun_ca_settings s;
  atun_ca_settings_default(&s);
  atun_rand r = test_rand(2);
  atun_cert_profile p;
  cr_assert_eq(atun_ca_profile_ca(&p, &s, S(10), &r), 0);
  cr_assert_eq(p.not_before, 0);
}

Test(ca_policy, profile_bad_settings) {
  atun_rand r = test_rand(2);
  atun_cert_profile p;
  atun_ca_settings s;
  atun_tstamp now = S(1700000000);
  atun_ca_settings_default(&s);
  cr_assert_eq(atun_ca_profile_ca(&p, &s, ATUN_TSTAMP_MAX, &r), ATUN_ERR_INVALID_ARGUMENT);
  s.client_lifetime_ns = ATUN_NS_PER_S - 1;
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), ATUN_ERR_INVALID_ARGUMENT);
  s.client_lifetime_ns = ATUN_NS_PER_S;
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), 0);
  s.backdate_ns = DAY_NS + 1;
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), ATUN_ERR_INVALID_ARGUMENT);
  s.backdate_ns = DAY_NS;
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), 0);
  s.ca_cn[0] = '\0';
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), ATUN_ERR_INVALID_ARGUMENT);
  atun_ca_settings_default(&s);
  memset(s.server_cn, 'x', sizeof(s.server_cn)); /* no terminator */
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), ATUN_ERR_INVALID_ARGUMENT);
  atun_ca_settings_default(&s);
  s.ca_cn[0] = '\n';
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &r), ATUN_ERR_INVALID_ARGUMENT);
  atun_ca_settings_default(&s);
  cr_assert_eq(atun_ca_profile_ca(&p, &s, now, &bad_rand), ATUN_ERR_CALLBACK_FAILURE);
}

Test(ca_policy, profile_server_sans) {
  atun_ca_settings s;
  atun_ca_settings_default(&s);
  atun_rand r = test_rand(3);
  atun_cert_profile p;
  const char *hosts[] = {"GW.Example.com", "10.0.0.1", "2001:db8::1",
                         "gw.example.com", "::ffff:10.0.0.1", "localhost"};
  atun_tstamp now = S(1700000000);
  cr_assert_eq(atun_ca_profile_server(&p, &s, hosts, 6, now, ATUN_TSTAMP_MAX, &r), 0);
  cr_assert_eq(p.kind, ATUN_CERT_SERVER);
  cr_assert_str_eq(p.cn, "atun gateway");
  cr_assert_not(p.is_ca);
  cr_assert_eq(p.ext_key_usage, ATUN_EKU_SERVER_AUTH);
  cr_assert_eq(p.key_usage, ATUN_KU_DIGITAL_SIGNATURE);
  cr_assert_eq(p.not_after, now + 365 * DAY_NS);
  cr_assert_eq(p.nsans, 4);
  cr_assert_eq(p.sans[0].type, ATUN_SAN_DNS);
  cr_assert_str_eq(p.sans[0].name, "gw.example.com");
  cr_assert_eq(p.sans[1].type, ATUN_SAN_IP);
  cr_assert_eq(p.sans[1].ip.family, ATUN_AF_INET);
  cr_assert_eq(p.sans[2].ip.family, ATUN_AF_INET6);
  cr_assert_str_eq(p.sans[3].name, "localhost");
}

Test(ca_policy, profile_server_limits) {
  atun_ca_settings s;
  atun_ca_settings_default(&s);
  atun_rand r = test_rand(3);
  atun_cert_profile p;
  atun_tstamp now = S(1700000000);
  char names[ATUN_CA_SAN_MAX + 1][32];
  const char *hosts[ATUN_CA_SAN_MAX + 2];
  for (int i = 0; i <= ATUN_CA_SAN_MAX; ++i) {
    snprintf(names[i], sizeof(names[i]), "h%d.example", i);
    hosts[i] = names[i];
  }
  hosts[ATUN_CA_SAN_MAX + 1] = names[0];
  cr_assert_eq(atun_ca_profile_server(&p, &s, hosts, ATUN_CA_SAN_MAX, now,
                                      ATUN_TSTAMP_MAX, &r), 0);
  cr_assert_eq(p.nsans, ATUN_CA_SAN_MAX);
  /* A duplicate past the bound is not a new name. */
  const char *dup[ATUN_CA_SAN_MAX + 1];
  memcpy(dup, hosts, sizeof(dup));
  dup[ATUN_CA_SAN_MAX] = names[3];
  cr_assert_eq(atun_ca_profile_server(&p, &s, dup, ATUN_CA_SAN_MAX + 1, now,
                                      ATUN_TSTAMP_MAX, &r), 0);
  cr_assert_eq(atun_ca_profile_server(&p, &s, hosts, ATUN_CA_SAN_MAX + 1, now,
                                      ATUN_TSTAMP_MAX, &r), ATUN_ERR_LIMIT);
  cr_assert_eq(atun_ca_profile_server(&p, &s, hosts, 0, now, ATUN_TSTAMP_MAX, &r),
               ATUN_ERR_INVALID_ARGUMENT);
  const char *bad[] = {"gw.example.com", "bad_name"};
  cr_assert_eq(atun_ca_profile_server(&p, &s, bad, 2, now, ATUN_TSTAMP_MAX, &r),
               ATUN_ERR_BAD_NAME);
  const char *null_host[] = {NULL};
  cr_assert_eq(atun_ca_profile_server(&p, &s, null_host, 1, now, ATUN_TSTAMP_MAX, &r),
               ATUN_ERR_INVALID_ARGUMENT);
}

Test(ca_policy, profile_capped_by_ca) {
  atun_ca_settings s;
  atun_ca_settings_default(&s);
  atun_rand r = test_rand(4);
  atun_cert_profile p;
  atun_tstamp now = S(1700000000);
  const char *hosts[] = {"gw"};
  atun_tstamp ca_end = now + 10 * DAY_NS;
  cr_assert_eq(atun_ca_profile_server(&p, &s, hosts, 1, now, ca_end, &r), 0);
  cr_assert_eq(p.not_after, ca_end);
  cr_assert_eq(atun_ca_profile_client(&p, &s, "a", UUID1, now, ca_end, &r), 0);
  cr_assert_eq(p.not_after, ca_end);
  cr_assert_eq(atun_ca_profile_client(&p, &s, "a", UUID1, ca_end, ca_end, &r),
               ATUN_ERR_EXPIRED);
  cr_assert_eq(atun_ca_profile_client(&p, &s, "a", UUID1, ca_end - 1, ca_end, &r), 0);
  /* A CA ending within the same second as "now" leaves no validity. */
  s.backdate_ns = 0;
  cr_assert_eq(atun_ca_profile_server(&p, &s, hosts, 1, now + 100, now + 500, &r),
               ATUN_ERR_EXPIRED);
}

Test(ca_policy, profile_client) {
  atun_ca_settings s;
  atun_ca_settings_default(&s);
  atun_rand r = test_rand(5);
  atun_cert_profile p;
  atun_tstamp now = S(1700000000);
  cr_assert_eq(atun_ca_profile_client(&p, &s, "db-proxy", UUID1, now, ATUN_TSTAMP_MAX, &r), 0);
  cr_assert_eq(p.kind, ATUN_CERT_CLIENT);
  cr_assert_str_eq(p.cn, "db-proxy");
  cr_assert_eq(p.ext_key_usage, ATUN_EKU_CLIENT_AUTH);
  cr_assert_eq(p.nsans, 1);
  cr_assert_eq(p.sans[0].type, ATUN_SAN_URI);
  cr_assert_eq(p.not_after, now + 90 * DAY_NS);
  char id[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), 0);
  cr_assert_str_eq(id, UUID1);
  cr_assert_eq(atun_ca_profile_client(&p, &s, "bad name", UUID1, now, ATUN_TSTAMP_MAX, &r),
               ATUN_ERR_BAD_NAME);
  cr_assert_eq(atun_ca_profile_client(&p, &s, NULL, UUID1, now, ATUN_TSTAMP_MAX, &r),
               ATUN_ERR_BAD_NAME);
  cr_assert_eq(atun_ca_profile_client(&p, &s, "a", "nope", now, ATUN_TSTAMP_MAX, &r),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ca_profile_client(&p, &s, "a", UUID1, now, ATUN_TSTAMP_MAX, &bad_rand),
               ATUN_ERR_CALLBACK_FAILURE);
}

Test(ca_policy, profile_agent_id_errors) {
  atun_cert_profile p;
  char id[ATUN_UUID_STRLEN];
  memset(&p, 0, sizeof(p));
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), ATUN_ERR_NOT_FOUND);
  p.nsans = 1;
  p.sans[0].type = ATUN_SAN_DNS;
  strcpy(p.sans[0].name, "a.example");
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), ATUN_ERR_NOT_FOUND);
  p.sans[0].type = ATUN_SAN_URI;
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), ATUN_ERR_MALFORMED);
  atun_agent_uri_format(p.sans[0].name, UUID1);
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), 0);
  p.sans[1] = p.sans[0];
  p.nsans = 2;
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), ATUN_ERR_MALFORMED);
}

/* --- SAN encoding ------------------------------------------------------------ */

Test(ca_policy, san_der_known_bytes) {
  atun_cert_profile p;
  memset(&p, 0, sizeof(p));
  p.nsans = 2;
  p.sans[0].type = ATUN_SAN_DNS;
  strcpy(p.sans[0].name, "a.bc");
  p.sans[1].type = ATUN_SAN_IP;
  atun_addr_parse(&p.sans[1].ip, "127.0.0.1");
  static const uint8_t want[] = {0x30, 0x0c, 0x82, 0x04, 'a', '.', 'b', 'c',
                                 0x87, 0x04, 127, 0, 0, 1};
  uint8_t out[64];
  size_t len;
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len), 0);
  cr_assert_eq(len, sizeof(want));
  cr_assert_eq(memcmp(out, want, len), 0);
  for (size_t cap = 0; cap < len; ++cap) {
    cr_assert_eq(atun_cert_profile_san_der(&p, out, cap, &len), ATUN_ERR_NOBUF);
  }
}

static void fill_max_profile(atun_cert_profile *p) {
  memset(p, 0, sizeof(*p));
  p->nsans = ATUN_CA_SAN_MAX;
  for (size_t i = 0; i < ATUN_CA_SAN_MAX; ++i) {
    p->sans[i].type = ATUN_SAN_URI;
    memset(p->sans[i].name, 'u', ATUN_CA_SAN_NAME_MAX);
    p->sans[i].name[0] = (char)('A' + i);
  }
}

Test(ca_policy, san_der_max_profile_round_trip) {
  static atun_cert_profile p, back;
  fill_max_profile(&p);
  uint8_t out[ATUN_CA_SAN_DER_MAX];
  size_t len;
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len), 0);
  cr_assert_eq(out[1], 0x82); /* two-byte length form */
  cr_assert_eq(out[4], 0x86);
  cr_assert_eq(out[5], 0x81); /* one-byte long form for 253 */
  cr_assert_eq(atun_cert_profile_san_parse(&back, out, len), 0);
  cr_assert_eq(back.nsans, ATUN_CA_SAN_MAX);
  for (size_t i = 0; i < ATUN_CA_SAN_MAX; ++i) {
    cr_assert_str_eq(back.sans[i].name, p.sans[i].name);
  }
}

Test(ca_policy, san_der_rejects_bad_entries) {
  atun_cert_profile p;
  uint8_t out[ATUN_CA_SAN_DER_MAX];
  size_t len;
  memset(&p, 0, sizeof(p));
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len),
               ATUN_ERR_INVALID_ARGUMENT);
  p.nsans = 1;
  p.sans[0].type = ATUN_SAN_DNS;
  strcpy(p.sans[0].name, "bad_name");
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len),
               ATUN_ERR_INVALID_ARGUMENT);
  p.sans[0].type = ATUN_SAN_URI;
  strcpy(p.sans[0].name, "a b");
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len),
               ATUN_ERR_INVALID_ARGUMENT);
  p.sans[0].name[0] = '\0';
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len),
               ATUN_ERR_INVALID_ARGUMENT);
  p.sans[0].type = ATUN_SAN_IP; /* family 0 */
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len),
               ATUN_ERR_INVALID_ARGUMENT);
  p.sans[0].type = (atun_san_type)1; /* email: not produced */
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len),
               ATUN_ERR_INVALID_ARGUMENT);
  p.nsans = ATUN_CA_SAN_MAX + 1;
  cr_assert_eq(atun_cert_profile_san_der(&p, out, sizeof(out), &len),
               ATUN_ERR_INVALID_ARGUMENT);
}

Test(ca_policy, san_parse_skips_and_rejects) {
  atun_cert_profile p;
  /* email, otherName (constructed), DNS, IPv6 */
  static const uint8_t mixed[] = {
      0x30, 0x24, 0x81, 0x03, 'a', '@', 'b', 0xa0, 0x03, 0x06, 0x01, 0x00,
      0x82, 0x01, 'x', 0x87, 0x10, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 1};
  uint8_t buf[64];
  memcpy(buf, mixed, sizeof(mixed));
  buf[1] = (uint8_t)(sizeof(mixed) - 2);
  cr_assert_eq(atun_cert_profile_san_parse(&p, buf, sizeof(mixed)), 0);
  cr_assert_eq(p.nsans, 2);
  cr_assert_str_eq(p.sans[0].name, "x");
  cr_assert_eq(p.sans[1].ip.family, ATUN_AF_INET6);
  cr_assert_eq(p.sans[1].ip.bytes[15], 1);
  /* Every truncation fails. */
  for (size_t n = 0; n < sizeof(mixed); ++n) {
    cr_assert_neq(atun_cert_profile_san_parse(&p, buf, n), 0, "n=%zu", n);
  }
  /* A trailing byte after the SEQUENCE. */
  buf[sizeof(mixed)] = 0;
  cr_assert_eq(atun_cert_profile_san_parse(&p, buf, sizeof(mixed) + 1), ATUN_ERR_MALFORMED);

  static const uint8_t empty_name[] = {0x30, 0x02, 0x82, 0x00};
  static const uint8_t nul_name[] = {0x30, 0x04, 0x86, 0x02, 'a', 0};
  static const uint8_t ip5[] = {0x30, 0x07, 0x87, 0x05, 1, 2, 3, 4, 5};
  static const uint8_t indefinite[] = {0x30, 0x80, 0x00, 0x00};
  static const uint8_t long4[] = {0x30, 0x84, 0, 0, 0, 0};
  static const uint8_t not_seq[] = {0x31, 0x00};
  cr_assert_eq(atun_cert_profile_san_parse(&p, empty_name, 4), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_cert_profile_san_parse(&p, nul_name, 6), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_cert_profile_san_parse(&p, ip5, 9), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_cert_profile_san_parse(&p, indefinite, 4), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_cert_profile_san_parse(&p, long4, 6), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_cert_profile_san_parse(&p, not_seq, 2), ATUN_ERR_MALFORMED);
}

Test(ca_policy, san_parse_limits) {
  /* 17 one-byte DNS names: one past the bound. */
  uint8_t buf[2 + 3 * (ATUN_CA_SAN_MAX + 1)];
  buf[0] = 0x30;
  buf[1] = (uint8_t)(sizeof(buf) - 2);
  for (size_t i = 0; i <= ATUN_CA_SAN_MAX; ++i) {
    buf[2 + 3 * i] = 0x82;
    buf[3 + 3 * i] = 1;
    buf[4 + 3 * i] = 'a';
  }
  atun_cert_profile p;
  cr_assert_eq(atun_cert_profile_san_parse(&p, buf, sizeof(buf)), ATUN_ERR_LIMIT);
  buf[1] = (uint8_t)(sizeof(buf) - 5);
  cr_assert_eq(atun_cert_profile_san_parse(&p, buf, sizeof(buf) - 3), 0);
  cr_assert_eq(p.nsans, ATUN_CA_SAN_MAX);
  /* A name one byte past ATUN_CA_SAN_NAME_MAX. */
  uint8_t big[7 + ATUN_CA_SAN_NAME_MAX + 1];
  size_t n = ATUN_CA_SAN_NAME_MAX + 1;
  big[0] = 0x30;
  big[1] = 0x82;
  big[2] = (uint8_t)((n + 3) >> 8);
  big[3] = (uint8_t)(n + 3);
  big[4] = 0x86;
  big[5] = 0x81;
  big[6] = (uint8_t)n;
  memset(big + 7, 'u', sizeof(big) - 7);
  cr_assert_eq(atun_cert_profile_san_parse(&p, big, 7 + n), ATUN_ERR_LIMIT);
}

/* Extensions: basicConstraints, SAN (critical flag present), keyUsage. */
static const uint8_t exts_der[] = {
    0xa3, 0x2c, 0x30, 0x2a,
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x04, 0x05, 0x30, 0x03, 0x01, 0x01, 0xff,
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0x00, 0x04, 0x02, 0x30, 0x00,
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x04, 0x05, 0x03, 0x03, 0x07, 0x06, 0x00};

Test(ca_policy, ext_find_san) {
  const uint8_t *v;
  size_t vlen;
  cr_assert_eq(sizeof(exts_der), 0x2e);
  cr_assert_eq(atun_ca_ext_find_san(exts_der, sizeof(exts_der), &v, &vlen), 0);
  cr_assert_eq(vlen, 2);
  cr_assert_eq(v, exts_der + 30);
  /* The bare SEQUENCE OF Extension works too. */
  cr_assert_eq(atun_ca_ext_find_san(exts_der + 2, sizeof(exts_der) - 2, &v, &vlen), 0);
  for (size_t n = 0; n < sizeof(exts_der); ++n) {
    cr_assert_neq(atun_ca_ext_find_san(exts_der, n, &v, &vlen), 0, "n=%zu", n);
  }
}

Test(ca_policy, ext_find_san_errors) {
  uint8_t e[sizeof(exts_der)];
  const uint8_t *v;
  size_t vlen;
  memcpy(e, exts_der, sizeof(e));
  e[24] = 0x12; /* SAN becomes another extension */
  cr_assert_eq(atun_ca_ext_find_san(e, sizeof(e), &v, &vlen), ATUN_ERR_NOT_FOUND);
  memcpy(e, exts_der, sizeof(e));
  e[10] = 0x11; /* basicConstraints becomes a second SAN */
  cr_assert_eq(atun_ca_ext_find_san(e, sizeof(e), &v, &vlen), ATUN_ERR_MALFORMED);
  memcpy(e, exts_der, sizeof(e));
  e[28] = 0x03; /* SAN value not an OCTET STRING */
  cr_assert_eq(atun_ca_ext_find_san(e, sizeof(e), &v, &vlen), ATUN_ERR_MALFORMED);
  memcpy(e, exts_der, sizeof(e));
  e[20] = 0x05; /* extension id not an OID */
  cr_assert_eq(atun_ca_ext_find_san(e, sizeof(e), &v, &vlen), ATUN_ERR_MALFORMED);
  memcpy(e, exts_der, sizeof(e));
  e[18] = 0x31; /* an Extension that is not a SEQUENCE */
  cr_assert_eq(atun_ca_ext_find_san(e, sizeof(e), &v, &vlen), ATUN_ERR_MALFORMED);
}

/* --- renewal ------------------------------------------------------------------ */

Test(ca_policy, renew_at_two_thirds) {
  cr_assert_eq(atun_ca_renew_at(0, 3), 2);
  cr_assert_eq(atun_ca_renew_at(0, 4), 2);
  cr_assert_eq(atun_ca_renew_at(0, 5), 3);
  cr_assert_eq(atun_ca_renew_at(100, 100), 100);
  cr_assert_eq(atun_ca_renew_at(100, 50), 100);
  cr_assert_eq(atun_ca_renew_at(0, UINT64_MAX), 0xaaaaaaaaaaaaaaaaull);
  atun_tstamp nb = S(1700000000), na = nb + 90 * DAY_NS;
  atun_tstamp at = atun_ca_renew_at(nb, na);
  cr_assert_eq(at, nb + 60 * DAY_NS);
  cr_assert_not(atun_ca_should_renew(nb, na, at - 1));
  cr_assert(atun_ca_should_renew(nb, na, at));
  cr_assert(atun_ca_should_renew(nb, na, na + 1));
  cr_assert_not(atun_ca_should_renew(nb, na, nb));
  /* A year-long server certificate. */
  na = nb + 365 * DAY_NS;
  at = atun_ca_renew_at(nb, na);
  cr_assert_eq(at, nb + (365 * DAY_NS) / 3 * 2);
  cr_assert_not(atun_ca_should_renew(nb, na, at - 1));
  cr_assert(atun_ca_should_renew(nb, na, at));
}

/* --- time --------------------------------------------------------------------- */

static void assert_time(atun_tstamp t, const char *want) {
  uint8_t out[ATUN_CA_TIME_DER_MAX];
  ssize_t n = atun_ca_time_encode(out, sizeof(out), t);
  size_t wl = strlen(want);
  cr_assert_eq(n, (ssize_t)wl + 2, "%s", want);
  cr_assert_eq(out[0], wl == 13 ? 0x17 : 0x18);
  cr_assert_eq(out[1], wl);
  cr_assert_eq(memcmp(out + 2, want, wl), 0, "%.*s vs %s", (int)wl, out + 2, want);
  atun_tstamp back;
  cr_assert_eq(atun_ca_time_decode(&back, out, (size_t)n), 0);
  cr_assert_eq(back, t - t % ATUN_NS_PER_S);
}

Test(ca_policy, time_encode_known) {
  assert_time(0, "700101000000Z");
  assert_time(S(951782400), "000229000000Z");
  assert_time(S(1709251199) + 999999999, "240229235959Z");
  assert_time(S(2524607999), "491231235959Z");
  assert_time(S(2524608000), "20500101000000Z");
  assert_time(S(4107501296), "21000228123456Z");
  assert_time(S(4107542400), "21000301000000Z");
  assert_time(ATUN_TSTAMP_MAX, "25540721233433Z");
  uint8_t out[ATUN_CA_TIME_DER_MAX];
  cr_assert_eq(atun_ca_time_encode(out, 14, 0), ATUN_ERR_NOBUF);
  cr_assert_eq(atun_ca_time_encode(out, 15, 0), 15);
  cr_assert_eq(atun_ca_time_encode(out, 16, S(2524608000)), ATUN_ERR_NOBUF);
}

Test(ca_policy, time_round_trip_random) {
  atun_testrng r;
  atun_testrng_seed(&r, 99);
  uint8_t out[ATUN_CA_TIME_DER_MAX];
  for (int i = 0; i < 20000; ++i) {
    atun_tstamp t = atun_testrng_next(&r);
    ssize_t n = atun_ca_time_encode(out, sizeof(out), t);
    cr_assert_gt(n, 0);
    atun_tstamp back;
    cr_assert_eq(atun_ca_time_decode(&back, out, (size_t)n), 0);
    cr_assert_eq(back, t - t % ATUN_NS_PER_S);
  }
}

static int decode_text(uint8_t tag, const char *text, atun_tstamp *t) {
  uint8_t buf[32];
  size_t n = strlen(text);
  buf[0] = tag;
  buf[1] = (uint8_t)n;
  memcpy(buf + 2, text, n);
  return atun_ca_time_decode(t, buf, n + 2);
}

Test(ca_policy, time_decode_rejects) {
  atun_tstamp t;
  cr_assert_eq(decode_text(0x17, "700101000000Z", &t), 0);
  cr_assert_eq(t, 0);
  cr_assert_eq(decode_text(0x18, "99991231235959Z", &t), 0);
  cr_assert_eq(t, ATUN_TSTAMP_MAX);
  const char *bad_utc[] = {"690101000000Z", "501231235959Z", "701301000000Z",
                           "700001000000Z", "700100000000Z", "700431000000Z",
                           "230229000000Z", "700101240000Z", "700101006000Z",
                           "700101000060Z", "700101000000X", "70010100000aZ",
                           "7001010000Z",   "700101000000+0000"};
  for (size_t i = 0; i < sizeof(bad_utc) / sizeof(bad_utc[0]); ++i) {
    cr_assert_eq(decode_text(0x17, bad_utc[i], &t), ATUN_ERR_MALFORMED, "%s", bad_utc[i]);
  }
  cr_assert_eq(decode_text(0x18, "19691231235959Z", &t), ATUN_ERR_MALFORMED);
  cr_assert_eq(decode_text(0x18, "700101000000Z", &t), ATUN_ERR_MALFORMED);
  cr_assert_eq(decode_text(0x17, "20500101000000Z", &t), ATUN_ERR_MALFORMED);
  cr_assert_eq(decode_text(0x04, "700101000000Z", &t), ATUN_ERR_MALFORMED);
  cr_assert_eq(decode_text(0x18, "20000229000000Z", &t), 0);
  cr_assert_eq(t, S(951782400));
  uint8_t one = 0x17;
  cr_assert_eq(atun_ca_time_decode(&t, &one, 1), ATUN_ERR_MALFORMED);
  uint8_t extra[16] = {0x17, 13};
  memcpy(extra + 2, "700101000000Z", 13);
  cr_assert_eq(atun_ca_time_decode(&t, extra, 16), ATUN_ERR_MALFORMED);
}
