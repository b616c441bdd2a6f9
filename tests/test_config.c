/*
 * The config model: defaults, every key's checks, bounds, syntax errors,
 * writing back, and the enrollment merge.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "support.h"

#define UUID "0f8fad5b-d9cb-469f-a165-70867728950e"
#define PIN_HEX "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define HASH2 "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"

static atun_config_error err;

static int agent_parse(atun_config_agent *cfg, const char *json) {
  return atun_config_agent_parse(cfg, json, strlen(json), NULL, &err);
}

static int gw_parse(atun_config_gateway *cfg, const char *json) {
  return atun_config_gateway_parse(cfg, json, strlen(json), NULL, &err);
}

static int has_prefix(const atun_prefix *list, size_t n, const char *text) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, text), 0);
  for (size_t i = 0; i < n; ++i)
    if (atun_prefix_cmp(&list[i], &p) == 0) return 1;
  return 0;
}

static void endpoint_is(const atun_quic_endpoint *e, const char *text) {
  atun_target t = {.kind = ATUN_TARGET_ADDR, .addr = e->addr};
  char buf[ATUN_HOSTPORT_STRLEN];
  atun_hostport_format(buf, &t, e->port);
  cr_assert_str_eq(buf, text);
}

/* A growing text buffer for generated configs. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->p = realloc(b->p, b->cap);
    cr_assert_not_null(b->p);
  }
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
}

__attribute__((format(printf, 2, 3)))
static void sb_addf(sbuf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  sb_add(b, tmp);
}

/* ======================================================================
 * Defaults
 * ====================================================================== */

Test(config, agent_defaults) {
  atun_config_agent a;
  cr_assert_eq(atun_config_agent_default(&a, NULL), 0);
  cr_assert_str_eq(a.name, "");
  cr_assert_str_eq(a.agent_id, "");
  cr_assert_eq(a.has_gateway, 0);
  cr_assert_eq(a.has_server_spki, 0);
  cr_assert_str_eq(a.key_file, "/var/lib/atun-agent/agent.key");
  cr_assert_str_eq(a.cert_file, "/var/lib/atun-agent/agent.crt");
  cr_assert_str_eq(a.ca_file, "/var/lib/atun-agent/ca.crt");
  cr_assert_str_eq(a.resolv_conf, "/etc/resolv.conf");
  cr_assert_eq(a.auto_detect_domains, 1);
  cr_assert_eq(a.advertise_subnet_count, 0);
  cr_assert_eq(a.advertise_domain_count, 0);
  cr_assert_eq(a.deny_count, 6);
  static const char *const deny[] = {"127.0.0.0/8", "::1/128", "169.254.0.0/16",
                                     "fe80::/10", "169.254.169.254/32",
                                     "fd00:ec2::254/128"};
  for (size_t i = 0; i < 6; ++i) cr_assert(has_prefix(a.deny, a.deny_count, deny[i]));
  cr_assert_eq(a.connect_timeout_ns, 10 * ATUN_NS_PER_S);
  cr_assert_eq(a.drain_timeout_ns, 10 * ATUN_NS_PER_S);
  cr_assert_eq(a.log_level, ATUN_CONFIG_LOG_INFO);
  atun_config_agent_free(&a);
  atun_config_agent_free(&a); /* a freed config is zeroed and frees again */
}

Test(config, gateway_defaults) {
  atun_config_gateway g;
  cr_assert_eq(atun_config_gateway_default(&g, NULL), 0);
  cr_assert_str_eq(g.state_dir, "/var/lib/atun-gateway");
  endpoint_is(&g.quic_listen, "[::]:4433");
  endpoint_is(&g.api_listen, "127.0.0.1:8443");
  endpoint_is(&g.socks5_listen, "127.0.0.1:1080");
  cr_assert_eq(g.socks5_enabled, 1);
  cr_assert_eq(g.server_name_count, 3);
  cr_assert_str_eq(g.server_names[0], "localhost");
  cr_assert_eq(g.heartbeat_interval_ns, 10 * ATUN_NS_PER_S);
  cr_assert_eq(g.offline_missed_heartbeats, 3);
  cr_assert_eq(g.client_cert_lifetime_ns, 90ull * 86400 * ATUN_NS_PER_S);
  cr_assert_eq(g.enroll_token_ttl_ns, 3600 * ATUN_NS_PER_S);
  cr_assert_eq(g.limits.max_agents, 4096);
  cr_assert_eq(g.limits.max_streams_per_agent, 1024);
  cr_assert_eq(g.limits.enroll_burst, 5);
  cr_assert_eq(g.forward_count + g.socks5_user_count + g.admin_token_count, 0);
  char buf[ATUN_ENROLL_URL_MAX + 1];
  atun_config_gateway_quic_endpoint(&g, buf);
  cr_assert_str_eq(buf, "localhost:4433");
  atun_config_gateway_api_url(&g, buf);
  cr_assert_str_eq(buf, "https://localhost:8443");
  atun_config_gateway_free(&g);
}

Test(config, empty_object_gives_the_defaults) {
  atun_config_agent a;
  atun_config_gateway g;
  cr_assert_eq(agent_parse(&a, " {} \n"), 0);
  cr_assert_eq(a.deny_count, 6);
  cr_assert_eq(err.warning_count, 0);
  cr_assert_str_eq(err.message, "");
  atun_config_agent_free(&a);
  cr_assert_eq(gw_parse(&g, "{}"), 0);
  cr_assert_eq(g.limits.api_max_connections, 256);
  atun_config_gateway_free(&g);
}

Test(config, defaults_written_and_read_back) {
  atun_config_agent a, a2;
  atun_config_gateway g, g2;
  char *t1, *t2;
  size_t n1, n2;
  atun_config_agent_default(&a, NULL);
  cr_assert_eq(atun_config_agent_serialize(&a, &t1, &n1), 0);
  cr_assert_eq(n1, strlen(t1));
  cr_assert_eq(agent_parse(&a2, t1), 0, "%s", err.message);
  cr_assert_eq(atun_config_agent_serialize(&a2, &t2, &n2), 0);
  cr_assert_str_eq(t1, t2);
  cr_assert(strstr(t1, "\"connect_timeout\": \"10s\"") != NULL);
  cr_assert(strstr(t1, "\"deny\": [\n    \"127.0.0.0/8\",") != NULL, "%s", t1);
  free(t1);
  free(t2);
  atun_config_agent_free(&a);
  atun_config_agent_free(&a2);

  atun_config_gateway_default(&g, NULL);
  cr_assert_eq(atun_config_gateway_serialize(&g, &t1, &n1), 0);
  cr_assert_eq(gw_parse(&g2, t1), 0, "%s", err.message);
  cr_assert_eq(atun_config_gateway_serialize(&g2, &t2, &n2), 0);
  cr_assert_str_eq(t1, t2);
  cr_assert(strstr(t1, "\"client_cert_lifetime\": \"90d\"") != NULL, "%s", t1);
  free(t1);
  free(t2);
  atun_config_gateway_free(&g);
  atun_config_gateway_free(&g2);
}

/* ======================================================================
 * Full configs
 * ====================================================================== */

static const char full_agent[] =
    "{\n"
    "  \"name\": \"edge-1\",\n"
    "  \"agent_id\": \"" UUID "\",\n"
    "  \"gateway\": \"GW.Example.com:4433\",\n"
    "  \"server_name\": \"gw.example.com.\",\n"
    "  \"key_file\": \"/etc/atun/k\",\n"
    "  \"cert_file\": \"/etc/atun/c\",\n"
    "  \"ca_file\": \"/etc/atun/ca\",\n"
    "  \"server_spki_sha256\": \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\",\n"
    "  \"advertise_subnets\": [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"],\n"
    "  \"advertise_domains\": [\"Corp.Example.\", {\"name\": \"lab.example\", "
    "\"auto_detected\": true}],\n"
    "  \"auto_detect_domains\": false,\n"
    "  \"resolv_conf\": \"/run/resolv.conf\",\n"
    "  \"deny\": [\"127.0.0.0/8\"],\n"
    "  \"connect_timeout\": 2500,\n"
    "  \"drain_timeout\": \"5m\",\n"
    "  \"log_level\": \"debug\"\n"
    "}\n";

Test(config, full_agent_config) {
  atun_config_agent a, a2;
  cr_assert_eq(agent_parse(&a, full_agent), 0, "%s", err.message);
  cr_assert_str_eq(a.name, "edge-1");
  cr_assert_str_eq(a.agent_id, UUID);
  cr_assert_eq(a.has_gateway, 1);
  cr_assert_str_eq(a.gateway_host.host, "gw.example.com");
  cr_assert_eq(a.gateway_port, 4433);
  cr_assert_str_eq(a.server_name, "gw.example.com");
  cr_assert_eq(a.has_server_spki, 1);
  cr_assert_eq(a.server_spki_sha256[31], 31);
  cr_assert_eq(a.advertise_subnet_count, 3);
  cr_assert(has_prefix(a.advertise_subnets, 3, "192.0.2.7/32"));
  cr_assert_eq(a.advertise_domain_count, 2);
  cr_assert_str_eq(a.advertise_domains[0].name, "corp.example");
  cr_assert_eq(a.advertise_domains[0].auto_detected, 0);
  cr_assert_eq(a.advertise_domains[1].auto_detected, 1);
  cr_assert_eq(a.auto_detect_domains, 0);
  cr_assert_eq(a.deny_count, 1);
  cr_assert_eq(a.connect_timeout_ns, 2500 * ATUN_NS_PER_MS);
  cr_assert_eq(a.drain_timeout_ns, 300 * ATUN_NS_PER_S);
  cr_assert_eq(a.log_level, ATUN_CONFIG_LOG_DEBUG);
  cr_assert_eq(atun_config_agent_check_enrolled(&a, &err), 0);

  char *t1, *t2;
  cr_assert_eq(atun_config_agent_serialize(&a, &t1, NULL), 0);
  cr_assert(strstr(t1, "\"server_spki_sha256\": \"" PIN_HEX "\"") != NULL);
  cr_assert(strstr(t1, "\"connect_timeout\": \"2500ms\"") != NULL);
  cr_assert(strstr(t1, "\"gateway\": \"gw.example.com:4433\"") != NULL);
  cr_assert(strstr(t1, "\"auto_detected\": true") != NULL);
  cr_assert_eq(agent_parse(&a2, t1), 0, "%s", err.message);
  cr_assert_eq(atun_config_agent_serialize(&a2, &t2, NULL), 0);
  cr_assert_str_eq(t1, t2);
  free(t1);
  free(t2);
  atun_config_agent_free(&a);
  atun_config_agent_free(&a2);
}

Test(config, check_enrolled_names_the_missing_key) {
  atun_config_agent a;
  cr_assert_eq(agent_parse(&a, "{}"), 0);
  cr_assert_eq(atun_config_agent_check_enrolled(&a, &err), ATUN_ERR_MISSING_FIELD);
  cr_assert(strncmp(err.message, "name: not set", 13) == 0, "%s", err.message);
  cr_assert_eq(atun_config_agent_check_enrolled(&a, NULL), ATUN_ERR_MISSING_FIELD);
  atun_config_agent_free(&a);
  cr_assert_eq(agent_parse(&a, "{\"name\": \"n\"}"), 0);
  atun_config_agent_check_enrolled(&a, &err);
  cr_assert(strncmp(err.message, "agent_id: not set", 17) == 0, "%s", err.message);
  atun_config_agent_free(&a);
  cr_assert_eq(agent_parse(&a, "{\"name\": \"n\", \"agent_id\": \"" UUID "\"}"), 0);
  atun_config_agent_check_enrolled(&a, &err);
  cr_assert(strncmp(err.message, "gateway: not set", 16) == 0, "%s", err.message);
  atun_config_agent_free(&a);
}

static const char full_gateway[] =
    "{\n"
    "  \"state_dir\": \"/srv/atun\",\n"
    "  \"log_level\": \"warn\",\n"
    "  \"quic_listen\": \"0.0.0.0:5000\",\n"
    "  \"quic_public_endpoint\": \"tunnel.example.com:443\",\n"
    "  \"api_listen\": \"[::1]:9443\",\n"
    "  \"api_public_url\": \"https://api.example.com/atun\",\n"
    "  \"server_names\": [\"Tunnel.Example.com\", \"2001:DB8::1\", \"192.0.2.1\"],\n"
    "  \"heartbeat_interval\": \"5s\",\n"
    "  \"offline_missed_heartbeats\": 4,\n"
    "  \"drain_timeout\": \"1m\",\n"
    "  \"client_cert_lifetime\": \"30d\",\n"
    "  \"server_cert_lifetime\": \"180d\",\n"
    "  \"ca_lifetime\": \"7300d\",\n"
    "  \"enroll_token_ttl\": \"15m\",\n"
    "  \"socks5\": {\"enabled\": true, \"listen\": \"127.0.0.1:1081\",\n"
    "             \"users\": [{\"username\": \"alice\", \"password\": \"s3cret pass\"}]},\n"
    "  \"forwards\": [\n"
    "    {\"listen\": \"127.0.0.1:15432\", \"target\": \"DB.corp.example\", \"port\": 5432},\n"
    "    {\"listen\": \"127.0.0.1:13389\", \"target\": \"10.1.2.3\", \"port\": 3389,\n"
    "     \"agent\": \"edge-1\"},\n"
    "    {\"listen\": \"[::1]:2222\", \"target\": \"2001:db8::22\", \"port\": 22}\n"
    "  ],\n"
    "  \"admin_tokens\": [{\"name\": \"ops team\", \"sha256\": \"" PIN_HEX "\",\n"
    "                     \"scopes\": [\"write\", \"read\"]},\n"
    "                    {\"name\": \"dash\", \"sha256\": \"" HASH2 "\",\n"
    "                     \"scopes\": [\"read\"]}],\n"
    "  \"limits\": {\"max_agents\": 100, \"max_streams_per_agent\": 50,\n"
    "             \"client_max_connections\": 77, \"api_max_connections\": 8,\n"
    "             \"api_max_request_bytes\": 2048, \"api_header_timeout\": \"3s\",\n"
    "             \"enroll_burst\": 2, \"enroll_interval\": \"30s\"}\n"
    "}\n";

static char *full_gateway_text(void) { return strdup(full_gateway); }

Test(config, full_gateway_config) {
  atun_config_gateway g, g2;
  char *text = full_gateway_text();
  cr_assert_eq(gw_parse(&g, text), 0, "%s", err.message);
  cr_assert_str_eq(g.state_dir, "/srv/atun");
  cr_assert_eq(g.log_level, ATUN_CONFIG_LOG_WARN);
  endpoint_is(&g.quic_listen, "0.0.0.0:5000");
  endpoint_is(&g.api_listen, "[::1]:9443");
  cr_assert_eq(g.server_name_count, 3);
  cr_assert_str_eq(g.server_names[0], "tunnel.example.com");
  cr_assert_str_eq(g.server_names[1], "2001:db8::1");
  cr_assert_eq(g.heartbeat_interval_ns, 5 * ATUN_NS_PER_S);
  cr_assert_eq(g.offline_missed_heartbeats, 4);
  cr_assert_eq(g.socks5_user_count, 1);
  cr_assert_str_eq(g.socks5_users[0].password, "s3cret pass");
  cr_assert_eq(g.forward_count, 3);
  cr_assert_str_eq(g.forwards[0].target.host, "db.corp.example");
  cr_assert_eq(g.forwards[1].target.kind, ATUN_TARGET_ADDR);
  cr_assert_str_eq(g.forwards[1].agent, "edge-1");
  cr_assert_eq(g.forwards[2].port, 22);
  cr_assert_eq(g.admin_token_count, 2);
  cr_assert_eq(g.admin_tokens[0].scopes, ATUN_CONFIG_SCOPE_READ | ATUN_CONFIG_SCOPE_WRITE);
  cr_assert_eq(g.admin_tokens[1].scopes, ATUN_CONFIG_SCOPE_READ);
  cr_assert_eq(g.limits.max_agents, 100);
  cr_assert_eq(g.limits.api_header_timeout_ns, 3 * ATUN_NS_PER_S);
  cr_assert_eq(g.limits.enroll_interval_ns, 30 * ATUN_NS_PER_S);
  char buf[ATUN_ENROLL_URL_MAX + 1];
  atun_config_gateway_quic_endpoint(&g, buf);
  cr_assert_str_eq(buf, "tunnel.example.com:443");
  atun_config_gateway_api_url(&g, buf);
  cr_assert_str_eq(buf, "https://api.example.com/atun");

  char *t1, *t2;
  cr_assert_eq(atun_config_gateway_serialize(&g, &t1, NULL), 0);
  cr_assert_eq(gw_parse(&g2, t1), 0, "%s\n%s", err.message, t1);
  cr_assert_eq(atun_config_gateway_serialize(&g2, &t2, NULL), 0);
  cr_assert_str_eq(t1, t2);
  cr_assert(strstr(t1, "\"scopes\": [\n        \"read\",\n        \"write\"\n      ]") != NULL,
            "%s", t1);
  free(t1);
  free(t2);
  free(text);
  atun_config_gateway_free(&g);
  atun_config_gateway_free(&g2);
}

Test(config, derived_endpoints_bracket_ipv6) {
  atun_config_gateway g;
  cr_assert_eq(gw_parse(&g, "{\"server_names\": [\"2001:db8::9\"], "
                            "\"api_listen\": \"0.0.0.0:443\"}"), 0);
  char buf[ATUN_ENROLL_URL_MAX + 1];
  atun_config_gateway_quic_endpoint(&g, buf);
  cr_assert_str_eq(buf, "[2001:db8::9]:4433");
  atun_config_gateway_api_url(&g, buf);
  cr_assert_str_eq(buf, "https://[2001:db8::9]:443");
  atun_config_gateway_free(&g);
}

/* ======================================================================
 * Every key's checks
 * ====================================================================== */

typedef struct bad_case {
  const char *json;
  int rv;
  const char *msg; /* the message must start with this */
} bad_case;

static void run_agent_cases(const bad_case *cases, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    atun_config_agent a;
    memset(&a, 0x5a, sizeof(a));
    int rv = agent_parse(&a, cases[i].json);
    cr_assert_eq(rv, cases[i].rv, "case %zu %s: %d %s", i, cases[i].json, rv, err.message);
    cr_assert(strncmp(err.message, cases[i].msg, strlen(cases[i].msg)) == 0,
              "case %zu: \"%s\" does not start with \"%s\"", i, err.message, cases[i].msg);
    cr_assert_null(a.deny, "a failed parse leaves nothing to free");
    cr_assert_null(a.mem);
  }
}

static void run_gw_cases(const bad_case *cases, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    atun_config_gateway g;
    int rv = gw_parse(&g, cases[i].json);
    cr_assert_eq(rv, cases[i].rv, "case %zu %s: %d %s", i, cases[i].json, rv, err.message);
    cr_assert(strncmp(err.message, cases[i].msg, strlen(cases[i].msg)) == 0,
              "case %zu: \"%s\" does not start with \"%s\"", i, err.message, cases[i].msg);
    cr_assert_null(g.forwards);
    cr_assert_null(g.mem);
  }
}

#define INVAL ATUN_ERR_INVALID_ARGUMENT

Test(config, agent_key_failures) {
  static const bad_case cases[] = {
      {"{\"name\": 5}", INVAL, "name: expected a string"},
      {"{\"name\": \"-edge\"}", ATUN_ERR_BAD_NAME, "name: \"-edge\" is not an agent name"},
      {"{\"name\": \"a b\"}", ATUN_ERR_BAD_NAME, "name: \"a b\" is not an agent name"},
      {"{\"name\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
       ATUN_ERR_BAD_NAME, "name: "},
      {"{\"agent_id\": \"0F8FAD5B-D9CB-469F-A165-70867728950E\"}", INVAL,
       "agent_id: not a lowercase UUID"},
      {"{\"agent_id\": null}", INVAL, "agent_id: expected a string"},
      {"{\"gateway\": \"gw.example.com\"}", INVAL,
       "gateway: \"gw.example.com\" is not host:port"},
      {"{\"gateway\": \"gw_1:4433\"}", ATUN_ERR_BAD_NAME, "gateway: \"gw_1:4433\""},
      {"{\"gateway\": \"::1:4433\"}", INVAL, "gateway: "},
      {"{\"server_name\": \"192.0.2.1\"}", ATUN_ERR_BAD_NAME,
       "server_name: \"192.0.2.1\" is not a DNS name"},
      {"{\"server_name\": []}", INVAL, "server_name: expected a string"},
      {"{\"key_file\": \"\"}", INVAL, "key_file: must not be empty"},
      {"{\"cert_file\": \"a\\nb\"}", INVAL, "cert_file: holds a control character"},
      {"{\"ca_file\": 1}", INVAL, "ca_file: expected a string"},
      {"{\"server_spki_sha256\": \"abc\"}", INVAL, "server_spki_sha256: expected a SHA-256"},
      {"{\"advertise_subnets\": \"10.0.0.0/8\"}", INVAL, "advertise_subnets: expected an array"},
      {"{\"advertise_subnets\": [\"10.0.0.0/8\", \"192.168.0.0/16\", \"10.0.0.1/8\"]}",
       ATUN_ERR_BAD_PREFIX, "advertise_subnets[2]: host bits set in 10.0.0.1/8"},
      {"{\"advertise_subnets\": [\"10.0.0.0/33\"]}", ATUN_ERR_BAD_PREFIX,
       "advertise_subnets[0]: bad prefix length in 10.0.0.0/33"},
      {"{\"advertise_subnets\": [\"10.0.0.0/x\"]}", ATUN_ERR_BAD_PREFIX,
       "advertise_subnets[0]: bad prefix length in 10.0.0.0/x"},
      {"{\"advertise_subnets\": [\"fe80::1/10\"]}", ATUN_ERR_BAD_PREFIX,
       "advertise_subnets[0]: host bits set in fe80::1/10"},
      {"{\"advertise_subnets\": [\"banana\"]}", ATUN_ERR_BAD_PREFIX,
       "advertise_subnets[0]: not an address prefix: banana"},
      {"{\"advertise_subnets\": [\"\"]}", ATUN_ERR_BAD_PREFIX,
       "advertise_subnets[0]: not an address prefix"},
      {"{\"advertise_subnets\": [10]}", INVAL, "advertise_subnets[0]: expected a string"},
      {"{\"advertise_domains\": [\"ok.example\", \"bad..name\"]}", ATUN_ERR_BAD_NAME,
       "advertise_domains[1]: not a valid domain name: \"bad..name\""},
      {"{\"advertise_domains\": [{\"auto_detected\": true}]}", ATUN_ERR_MISSING_FIELD,
       "advertise_domains[0]: missing \"name\""},
      {"{\"advertise_domains\": [{\"name\": \"a.b\", \"auto_detected\": 1}]}", INVAL,
       "advertise_domains[0].auto_detected: expected true or false"},
      {"{\"advertise_domains\": [{\"name\": \"a.b\", \"name\": \"c.d\"}]}", INVAL,
       "advertise_domains[0].name: duplicate key"},
      {"{\"advertise_domains\": [7]}", INVAL, "advertise_domains[0]: expected a domain name"},
      {"{\"auto_detect_domains\": \"yes\"}", INVAL,
       "auto_detect_domains: expected true or false"},
      {"{\"resolv_conf\": false}", INVAL, "resolv_conf: expected a string"},
      {"{\"deny\": [\"::1/129\"]}", ATUN_ERR_BAD_PREFIX, "deny[0]: bad prefix length in ::1/129"},
      {"{\"deny\": {}}", INVAL, "deny: expected an array"},
      {"{\"connect_timeout\": \"0s\"}", INVAL, "connect_timeout: must be between 1ms and 1h"},
      {"{\"connect_timeout\": 0}", INVAL, "connect_timeout: must be between 1ms and 1h"},
      {"{\"connect_timeout\": \"61m\"}", INVAL, "connect_timeout: must be between 1ms and 1h"},
      {"{\"connect_timeout\": \"ten\"}", INVAL, "connect_timeout: expected a duration"},
      {"{\"drain_timeout\": 1.5}", INVAL, "drain_timeout: expected a duration"},
      {"{\"drain_timeout\": -1}", INVAL, "drain_timeout: expected a duration"},
      {"{\"drain_timeout\": true}", INVAL, "drain_timeout: expected a duration"},
      {"{\"log_level\": \"verbose\"}", INVAL, "log_level: expected \"error\""},
      {"{\"log_level\": 2}", INVAL, "log_level: expected \"error\""},
      {"{\"name\": \"a\", \"name\": \"b\"}", INVAL, "name: duplicate key"},
      {"[]", ATUN_ERR_MALFORMED, "the top level must be an object"},
      {"\"x\"", ATUN_ERR_MALFORMED, "the top level must be an object"},
  };
  run_agent_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

Test(config, gateway_key_failures) {
  static const bad_case cases[] = {
      {"{\"state_dir\": \"\"}", INVAL, "state_dir: must not be empty"},
      {"{\"log_level\": \"trace\"}", INVAL, "log_level: expected"},
      {"{\"quic_listen\": \"localhost:4433\"}", INVAL,
       "quic_listen: \"localhost:4433\" is not an IP address and port"},
      {"{\"quic_listen\": \"[::]:0\"}", INVAL, "quic_listen: "},
      {"{\"quic_listen\": \"[::]\"}", INVAL, "quic_listen: "},
      {"{\"quic_listen\": 4433}", INVAL, "quic_listen: expected a string"},
      {"{\"quic_public_endpoint\": \"tunnel\"}", INVAL, "quic_public_endpoint: \"tunnel\""},
      {"{\"api_listen\": \"1.2.3.4\"}", INVAL, "api_listen: "},
      {"{\"api_public_url\": \"http://gw:8443\"}", INVAL,
       "api_public_url: the API URL must use https"},
      {"{\"api_public_url\": \"https://gw/?q\"}", INVAL, "api_public_url: the API URL may not"},
      {"{\"server_names\": []}", INVAL, "server_names: at least one name is needed"},
      {"{\"server_names\": \"gw\"}", INVAL, "server_names: expected an array"},
      {"{\"server_names\": [\"gw\", \"bad_name\"]}", ATUN_ERR_BAD_NAME,
       "server_names[1]: \"bad_name\" is neither"},
      {"{\"server_names\": [1]}", INVAL, "server_names[0]: expected a string"},
      {"{\"heartbeat_interval\": \"50ms\"}", INVAL,
       "heartbeat_interval: must be between 100ms and 10m"},
      {"{\"heartbeat_interval\": \"11m\"}", INVAL, "heartbeat_interval: must be between"},
      {"{\"offline_missed_heartbeats\": 0}", INVAL,
       "offline_missed_heartbeats: expected an integer from 1 to 16"},
      {"{\"offline_missed_heartbeats\": 17}", INVAL, "offline_missed_heartbeats: expected"},
      {"{\"offline_missed_heartbeats\": 2.5}", INVAL, "offline_missed_heartbeats: expected"},
      {"{\"offline_missed_heartbeats\": \"3\"}", INVAL, "offline_missed_heartbeats: expected"},
      {"{\"heartbeat_interval\": \"10m\", \"offline_missed_heartbeats\": 7}", INVAL,
       "offline_missed_heartbeats: 7 heartbeats of 10m exceed"},
      {"{\"drain_timeout\": \"2h\"}", INVAL, "drain_timeout: must be between 1ms and 1h"},
      {"{\"client_cert_lifetime\": \"30m\"}", INVAL,
       "client_cert_lifetime: must be between 1h and 3650d"},
      {"{\"server_cert_lifetime\": \"12h\"}", INVAL,
       "server_cert_lifetime: must be between 1d and 3650d"},
      {"{\"ca_lifetime\": \"12h\"}", INVAL, "ca_lifetime: must be between 1d and 36500d"},
      {"{\"ca_lifetime\": \"36501d\"}", INVAL, "ca_lifetime: expected a duration"},
      {"{\"ca_lifetime\": \"365d\", \"client_cert_lifetime\": \"366d\"}", INVAL,
       "client_cert_lifetime: longer than ca_lifetime (365d)"},
      {"{\"ca_lifetime\": \"365d\", \"server_cert_lifetime\": \"366d\"}", INVAL,
       "server_cert_lifetime: longer than ca_lifetime (365d)"},
      {"{\"enroll_token_ttl\": \"31d\"}", INVAL, "enroll_token_ttl: must be between 1s and 30d"},
      {"{\"enroll_token_ttl\": \"999ms\"}", INVAL, "enroll_token_ttl: must be between"},
      {"{\"socks5\": 5}", INVAL, "socks5: expected an object"},
      {"{\"socks5\": {\"enabled\": \"yes\"}}", INVAL, "socks5.enabled: expected true or false"},
      {"{\"socks5\": {\"listen\": \"x\"}}", INVAL, "socks5.listen: \"x\" is not"},
      {"{\"socks5\": {\"users\": {}}}", INVAL, "socks5.users: expected an array"},
      {"{\"socks5\": {\"users\": [{\"username\": \"a\"}]}}", ATUN_ERR_MISSING_FIELD,
       "socks5.users[0]: missing \"password\""},
      {"{\"socks5\": {\"users\": [{\"username\": \"\", \"password\": \"p\"}]}}", INVAL,
       "socks5.users[0].username: must not be empty"},
      {"{\"socks5\": {\"users\": [{\"username\": \"a\", \"password\": \"\\u0007\"}]}}", INVAL,
       "socks5.users[0].password: holds a control character"},
      {"{\"socks5\": {\"users\": [{\"username\": \"a\", \"password\": \"p\"},"
       " {\"username\": \"a\", \"password\": \"q\"}]}}", INVAL,
       "socks5.users[1].username: duplicate of users[0]"},
      {"{\"socks5\": {\"users\": [5]}}", INVAL, "socks5.users[0]: expected an object"},
      {"{\"socks5\": {\"listen\": \"127.0.0.1:8443\"}}", INVAL,
       "socks5.listen: same address as api_listen"},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:9000\", \"target\": \"db\", \"port\": 0}]}",
       INVAL, "forwards[0].port: expected an integer from 1 to 65535"},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:9000\", \"target\": \"db\", \"port\": 65536}]}",
       INVAL, "forwards[0].port: expected an integer from 1 to 65535"},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:9000\", \"target\": \"10.1\", \"port\": 1}]}",
       ATUN_ERR_BAD_NAME, "forwards[0].target: \"10.1\" is neither"},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:9000\", \"port\": 1}]}",
       ATUN_ERR_MISSING_FIELD, "forwards[0]: missing \"target\""},
      {"{\"forwards\": [{\"target\": \"db\", \"port\": 1}]}", ATUN_ERR_MISSING_FIELD,
       "forwards[0]: missing \"listen\""},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:9000\", \"target\": \"db\"}]}",
       ATUN_ERR_MISSING_FIELD, "forwards[0]: missing \"port\""},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:9000\", \"target\": \"db\", \"port\": 1,"
       " \"agent\": \"no spaces\"}]}", ATUN_ERR_BAD_NAME, "forwards[0].agent: \"no spaces\""},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:9000\", \"target\": \"db\", \"port\": 1},"
       " {\"listen\": \"127.0.0.1:9000\", \"target\": \"db\", \"port\": 2}]}", INVAL,
       "forwards[1].listen: 127.0.0.1:9000 is also forwards[0].listen"},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:8443\", \"target\": \"db\", \"port\": 1}]}",
       INVAL, "forwards[0].listen: 127.0.0.1:8443 is also api_listen"},
      {"{\"forwards\": [{\"listen\": \"127.0.0.1:1080\", \"target\": \"db\", \"port\": 1}]}",
       INVAL, "forwards[0].listen: 127.0.0.1:1080 is also socks5.listen"},
      {"{\"forwards\": [[]]}", INVAL, "forwards[0]: expected an object"},
      {"{\"admin_tokens\": [{\"name\": \"\", \"sha256\": \"" PIN_HEX "\","
       " \"scopes\": [\"read\"]}]}",
       ATUN_ERR_BAD_NAME, "admin_tokens[0].name: expected 1 to 64 printable"},
      {"{\"admin_tokens\": [{\"name\": \"\\u00e9\", \"sha256\": \"" PIN_HEX "\","
       " \"scopes\": [\"read\"]}]}",
       ATUN_ERR_BAD_NAME, "admin_tokens[0].name: expected 1 to 64 printable"},
      {"{\"admin_tokens\": [{\"name\": \"a\","
       " \"sha256\": \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\","
       " \"scopes\": [\"read\"]}]}", INVAL, "admin_tokens[0].sha256: expected 64 hex digits"},
      {"{\"admin_tokens\": [{\"name\": \"a\", \"sha256\": \"" PIN_HEX "\", \"scopes\": []}]}",
       INVAL, "admin_tokens[0].scopes: at least one scope is needed"},
      {"{\"admin_tokens\": [{\"name\": \"a\", \"sha256\": \"" PIN_HEX "\","
       " \"scopes\": [\"admin\"]}]}",
       INVAL, "admin_tokens[0].scopes[0]: expected \"read\" or \"write\""},
      {"{\"admin_tokens\": [{\"name\": \"a\", \"sha256\": \"" PIN_HEX "\","
       " \"scopes\": [\"read\", \"read\"]}]}", INVAL, "admin_tokens[0].scopes[1]: duplicate scope"},
      {"{\"admin_tokens\": [{\"name\": \"a\", \"sha256\": \"" PIN_HEX "\", \"scopes\": \"read\"}]}",
       INVAL, "admin_tokens[0].scopes: expected an array"},
      {"{\"admin_tokens\": [{\"name\": \"a\", \"sha256\": \"" PIN_HEX "\", \"scopes\": [\"read\"]},"
       " {\"name\": \"a\", \"sha256\": \"" PIN_HEX "\", \"scopes\": [\"read\"]}]}", INVAL,
       "admin_tokens[1].name: duplicate of admin_tokens[0]"},
      {"{\"admin_tokens\": [{\"name\": \"a\", \"sha256\": \"" PIN_HEX "\", \"scopes\": [\"read\"]},"
       " {\"name\": \"b\", \"sha256\": \"" PIN_HEX "\", \"scopes\": [\"read\"]}]}", INVAL,
       "admin_tokens[1].sha256: duplicate of admin_tokens[0]"},
      {"{\"limits\": []}", INVAL, "limits: expected an object"},
      {"{\"limits\": {\"max_agents\": 0}}", INVAL, "limits.max_agents: expected an integer from 1"},
      {"{\"limits\": {\"max_streams_per_agent\": 65537}}", INVAL, "limits.max_streams_per_agent: "},
      {"{\"limits\": {\"client_max_connections\": 1e7}}", INVAL, "limits.client_max_connections: "},
      {"{\"limits\": {\"api_max_connections\": 0}}", INVAL, "limits.api_max_connections: "},
      {"{\"limits\": {\"api_max_request_bytes\": 100}}", INVAL,
       "limits.api_max_request_bytes: expected an integer from 1024 to 67108864"},
      {"{\"limits\": {\"api_header_timeout\": \"0ms\"}}", INVAL, "limits.api_header_timeout: "},
      {"{\"limits\": {\"enroll_burst\": 1000001}}", INVAL, "limits.enroll_burst: "},
      {"{\"limits\": {\"enroll_interval\": \"25h\"}}", INVAL,
       "limits.enroll_interval: must be between 1ms and 1d"},
      {"{\"limits\": {\"max_agents\": 5, \"max_agents\": 6}}", INVAL,
       "limits.max_agents: duplicate key"},
  };
  run_gw_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

Test(config, accepted_edge_values) {
  atun_config_gateway g;
  cr_assert_eq(gw_parse(&g, "{\"heartbeat_interval\": \"100ms\", "
                            "\"offline_missed_heartbeats\": 16, "
                            "\"limits\": {\"client_max_connections\": 1e6}}"), 0,
               "%s", err.message);
  cr_assert_eq(g.limits.client_max_connections, 1000000);
  atun_config_gateway_free(&g);
  /* 10 minutes times 6 is exactly the one-hour ceiling. */
  cr_assert_eq(gw_parse(&g, "{\"heartbeat_interval\": \"10m\", "
                            "\"offline_missed_heartbeats\": 6}"), 0, "%s", err.message);
  atun_config_gateway_free(&g);
  /* SOCKS5 may share the API's address while it is off. */
  cr_assert_eq(gw_parse(&g, "{\"socks5\": {\"enabled\": false, "
                            "\"listen\": \"127.0.0.1:8443\"}}"), 0, "%s", err.message);
  atun_config_gateway_free(&g);
}

/* ======================================================================
 * Unknown keys and syntax
 * ====================================================================== */

Test(config, unknown_keys_warn) {
  atun_config_gateway g;
  cr_assert_eq(gw_parse(&g, "{\"colour\": \"blue\", \"limits\": {\"speed\": 1},"
                            " \"forwards\": [{\"listen\": \"127.0.0.1:1\", \"target\": \"h\","
                            " \"port\": 1, \"note\": {\"x\": [1]}}]}"), 0, "%s", err.message);
  cr_assert_eq(err.warning_count, 3);
  cr_assert_str_eq(err.warnings[0], "colour: unknown key, ignored");
  cr_assert_str_eq(err.warnings[1], "limits.speed: unknown key, ignored");
  cr_assert_str_eq(err.warnings[2], "forwards[0].note: unknown key, ignored");
  cr_assert_str_eq(err.message, "");
  atun_config_gateway_free(&g);
}

Test(config, warnings_bound) {
  sbuf b = {0};
  sb_add(&b, "{");
  for (int i = 0; i < ATUN_CONFIG_WARNINGS_MAX + 3; ++i)
    sb_addf(&b, "%s\"k%d\": %d", i ? ", " : "", i, i);
  sb_add(&b, "}");
  atun_config_agent a;
  cr_assert_eq(agent_parse(&a, b.p), 0);
  cr_assert_eq(err.warning_count, ATUN_CONFIG_WARNINGS_MAX);
  cr_assert_eq(err.warnings_dropped, 3);
  cr_assert_str_eq(err.warnings[ATUN_CONFIG_WARNINGS_MAX - 1], "k15: unknown key, ignored");
  atun_config_agent_free(&a);
  free(b.p);
}

Test(config, unknown_key_shown_safely) {
  atun_config_agent a;
  char json[400];
  char tail[197];
  memset(tail, 'x', 196);
  tail[196] = '\0';
  snprintf(json, sizeof(json), "{\"ab\\u0001\\\"%s\": 1}", tail);
  cr_assert_eq(agent_parse(&a, json), 0);
  cr_assert_eq(err.warning_count, 1);
  cr_assert(strncmp(err.warnings[0], "ab??xxxx", 8) == 0, "%s", err.warnings[0]);
  cr_assert(strstr(err.warnings[0], "...: unknown key") != NULL, "%s", err.warnings[0]);
  atun_config_agent_free(&a);
}

Test(config, syntax_errors_name_line_and_column) {
  static const bad_case cases[] = {
      {"", ATUN_ERR_MALFORMED, "line 1, column 1: unexpected end of text"},
      {"{\n  \"name\": tru\n}", ATUN_ERR_MALFORMED, "line 2, column 11: unexpected character"},
      {"{\"a\": 1,}", ATUN_ERR_MALFORMED, "line 1, column 9: expected a key string"},
      {"{\"a\" 1}", ATUN_ERR_MALFORMED, "line 1, column 6: expected ':'"},
      {"{\"a\": [1 2]}", ATUN_ERR_MALFORMED, "line 1, column 10: expected ',' or ']'"},
      {"{\"a\": 1 \"b\": 2}", ATUN_ERR_MALFORMED, "line 1, column 9: expected ',' or '}'"},
      {"{} x", ATUN_ERR_MALFORMED, "line 1, column 4: text after the end"},
      {"{\"a\": \"x\ty\"}", ATUN_ERR_MALFORMED, "line 1, column 9: control character"},
      {"{\"a\": \"\xff\"}", ATUN_ERR_MALFORMED, "line 1, column 8: invalid UTF-8"},
      {"{\"a\": \"\xc0\x80\"}", ATUN_ERR_MALFORMED, "line 1, column 8: invalid UTF-8"},
      {"{\"a\": \"\xed\xa0\x80\"}", ATUN_ERR_MALFORMED, "line 1, column 8: invalid UTF-8"},
      {"{\"a\": \"\\u0000\"}", ATUN_ERR_MALFORMED, "line 1, column 8: \\u0000 is not allowed"},
      {"{\"a\": \"\\ud800\"}", ATUN_ERR_MALFORMED, "line 1, column 8: unpaired UTF-16"},
      {"{\"a\": \"\\udc00\"}", ATUN_ERR_MALFORMED, "line 1, column 8: unpaired UTF-16"},
      {"{\"a\": \"\\ud800\\u0041\"}", ATUN_ERR_MALFORMED, "line 1, column 8: unpaired"},
      {"{\"a\": \"\\x\"}", ATUN_ERR_MALFORMED, "line 1, column 8: bad escape"},
      {"{\"a\": \"\\u12g4\"}", ATUN_ERR_MALFORMED, "line 1, column 8: bad \\u escape"},
      {"{\"a\": \"abc", ATUN_ERR_MALFORMED, "line 1, column 7: unterminated string"},
      {"{\"a\": +1}", ATUN_ERR_MALFORMED, "line 1, column 7: unexpected character"},
      {"{\"a\": 01}", ATUN_ERR_MALFORMED, "line 1, column 8: expected ',' or '}'"},
      {"{\"a\": 1.}", ATUN_ERR_MALFORMED, "line 1, column 8: bad number"},
      {"{\"a\": 1e}", ATUN_ERR_MALFORMED, "line 1, column 9: bad number"},
      {"{\"a\": -}", ATUN_ERR_MALFORMED, "line 1, column 7: bad number"},
      {"{\"a\": .5}", ATUN_ERR_MALFORMED, "line 1, column 7: unexpected character"},
      {"\xef\xbb\xbf{}", ATUN_ERR_MALFORMED, "line 1, column 1: unexpected character"},
      {"{\"a\": nul}", ATUN_ERR_MALFORMED, "line 1, column 7: unexpected character"},
      {"{\"a\": [}", ATUN_ERR_MALFORMED, "line 1, column 8: unexpected character"},
      {"{\r\n\r\n  \"a\": ?}", ATUN_ERR_MALFORMED, "line 3, column 8: unexpected character"},
  };
  run_agent_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

Test(config, nul_byte_in_text) {
  atun_config_agent a;
  static const char text[] = "{\"a\": 1}\0";
  cr_assert_eq(atun_config_agent_parse(&a, text, sizeof(text) - 1, NULL, &err),
               ATUN_ERR_MALFORMED);
  cr_assert(strstr(err.message, "text after the end") != NULL);
  cr_assert_eq(atun_config_agent_parse(&a, NULL, 5, NULL, NULL), ATUN_ERR_MALFORMED);
}

static char *nested(int depth) {
  sbuf b = {0};
  sb_add(&b, "{\"x\": ");
  for (int i = 1; i < depth; ++i) sb_add(&b, "[");
  for (int i = 1; i < depth; ++i) sb_add(&b, "]");
  sb_add(&b, "}");
  return b.p;
}

Test(config, nesting_bound) {
  atun_config_agent a;
  char *ok = nested(ATUN_CONFIG_DEPTH_MAX);
  char *over = nested(ATUN_CONFIG_DEPTH_MAX + 1);
  cr_assert_eq(agent_parse(&a, ok), 0, "%s", err.message);
  atun_config_agent_free(&a);
  cr_assert_eq(agent_parse(&a, over), ATUN_ERR_MALFORMED);
  cr_assert(strstr(err.message, "nested deeper than 64") != NULL, "%s", err.message);
  free(ok);
  free(over);
}

Test(config, number_length_bound) {
  atun_config_agent a;
  char json[200];
  char digits[80];
  memset(digits, '1', sizeof(digits));
  digits[ATUN_CONFIG_NUMBER_MAX] = '\0';
  snprintf(json, sizeof(json), "{\"n\": %s}", digits);
  cr_assert_eq(agent_parse(&a, json), 0, "%s", err.message);
  atun_config_agent_free(&a);
  digits[ATUN_CONFIG_NUMBER_MAX] = '1';
  digits[ATUN_CONFIG_NUMBER_MAX + 1] = '\0';
  snprintf(json, sizeof(json), "{\"n\": %s}", digits);
  cr_assert_eq(agent_parse(&a, json), ATUN_ERR_MALFORMED);
  cr_assert(strstr(err.message, "number longer than 63") != NULL);
}

Test(config, text_size_bound) {
  atun_config_agent a;
  size_t n = ATUN_CONFIG_TEXT_MAX + 1;
  char *text = malloc(n);
  memset(text, ' ', n);
  memcpy(text, "{}", 2);
  cr_assert_eq(atun_config_agent_parse(&a, text, ATUN_CONFIG_TEXT_MAX, NULL, &err), 0);
  atun_config_agent_free(&a);
  cr_assert_eq(atun_config_agent_parse(&a, text, n, NULL, &err), ATUN_ERR_LIMIT);
  cr_assert(strstr(err.message, "at most 1048576") != NULL, "%s", err.message);
  free(text);
}

Test(config, escaped_keys_and_values_are_decoded) {
  atun_config_agent a;
  cr_assert_eq(agent_parse(&a, "{\"n\\u0061me\": \"edge\\u002d1\", "
                               "\"key_file\": \"/k\\/\\u00e9\\ud83d\\ude00\"}"), 0,
               "%s", err.message);
  cr_assert_str_eq(a.name, "edge-1");
  cr_assert_str_eq(a.key_file, "/k/\xc3\xa9\xf0\x9f\x98\x80");
  char *t;
  cr_assert_eq(atun_config_agent_serialize(&a, &t, NULL), 0);
  cr_assert(strstr(t, "\"key_file\": \"/k/\xc3\xa9\xf0\x9f\x98\x80\"") != NULL);
  free(t);
  atun_config_agent_free(&a);
}

Test(config, raw_utf8_is_kept) {
  atun_config_agent a;
  cr_assert_eq(agent_parse(&a, "{\"key_file\": \"/k/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}"), 0,
               "%s", err.message);
  cr_assert_str_eq(a.key_file, "/k/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  atun_config_agent_free(&a);
  /* A 4-byte sequence above U+10FFFF, and one cut short. */
  cr_assert_eq(agent_parse(&a, "{\"k\": \"\xf4\x90\x80\x80\"}"), ATUN_ERR_MALFORMED);
  cr_assert_eq(agent_parse(&a, "{\"k\": \"\xe2\x82\"}"), ATUN_ERR_MALFORMED);
}

Test(config, log_level_names) {
  cr_assert_str_eq(atun_config_log_level_name(ATUN_CONFIG_LOG_ERROR), "error");
  cr_assert_str_eq(atun_config_log_level_name(ATUN_CONFIG_LOG_WARN), "warn");
  cr_assert_str_eq(atun_config_log_level_name(ATUN_CONFIG_LOG_INFO), "info");
  cr_assert_str_eq(atun_config_log_level_name(ATUN_CONFIG_LOG_DEBUG), "debug");
  cr_assert_str_eq(atun_config_log_level_name(99), "unknown");
}

Test(config, writer_escapes_quotes_and_backslashes) {
  atun_config_gateway g, g2;
  cr_assert_eq(gw_parse(&g, "{\"socks5\": {\"users\": [{\"username\": \"a\\\"b\","
                            " \"password\": \"c\\\\d\"}]}}"), 0, "%s", err.message);
  cr_assert_str_eq(g.socks5_users[0].username, "a\"b");
  char *t;
  cr_assert_eq(atun_config_gateway_serialize(&g, &t, NULL), 0);
  cr_assert(strstr(t, "\"username\": \"a\\\"b\"") != NULL, "%s", t);
  cr_assert(strstr(t, "\"password\": \"c\\\\d\"") != NULL, "%s", t);
  cr_assert_eq(gw_parse(&g2, t), 0);
  cr_assert_str_eq(g2.socks5_users[0].password, "c\\d");
  free(t);
  atun_config_gateway_free(&g);
  atun_config_gateway_free(&g2);
}

/* ======================================================================
 * Durations
 * ====================================================================== */

Test(config, duration_parse) {
  static const struct {
    const char *s;
    uint64_t ms;
  } ok[] = {{"0s", 0},          {"0ms", 0},           {"1ms", 1},
            {"10s", 10000},     {"5m", 300000},       {"24h", 86400000},
            {"90d", 7776000000}, {"010s", 10000},     {"36500d", ATUN_CONFIG_DURATION_MAX_MS},
            {"3153600000000ms", ATUN_CONFIG_DURATION_MAX_MS}};
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); ++i) {
    uint64_t ms = 7;
    cr_assert_eq(atun_config_duration_parse(&ms, ok[i].s, strlen(ok[i].s)), 0, "%s", ok[i].s);
    cr_assert_eq(ms, ok[i].ms, "%s", ok[i].s);
  }
  static const char *const bad[] = {
      "", "s", "10", "10 s", " 10s", "10s ", "-1s", "+1s", "1.5s", "10S", "10sec",
      "1e3s", "1h30m", "36501d", "3153600000001ms", "876001h",
      "99999999999999999999999999s", "0x10s", "ms"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    uint64_t ms = 7;
    cr_assert_eq(atun_config_duration_parse(&ms, bad[i], strlen(bad[i])), ATUN_ERR_MALFORMED,
                 "%s", bad[i]);
    cr_assert_eq(ms, 7);
  }
  uint64_t ms;
  cr_assert_eq(atun_config_duration_parse(&ms, "10s\0", 4), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_config_duration_parse(&ms, NULL, 0), ATUN_ERR_MALFORMED);
}

Test(config, duration_format) {
  static const struct {
    uint64_t ms;
    const char *s;
  } cases[] = {{0, "0s"},         {1, "1ms"},        {999, "999ms"},
               {1000, "1s"},      {1500, "1500ms"},  {90000, "90s"},
               {3600000, "1h"},   {86400000, "1d"},  {129600000, "36h"},
               {ATUN_CONFIG_DURATION_MAX_MS, "36500d"}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    char buf[32];
    uint64_t back;
    cr_assert_eq(atun_config_duration_format(buf, sizeof(buf), cases[i].ms),
                 (ssize_t)strlen(cases[i].s));
    cr_assert_str_eq(buf, cases[i].s);
    cr_assert_eq(atun_config_duration_parse(&back, buf, strlen(buf)), 0);
    cr_assert_eq(back, cases[i].ms);
  }
  char small[3];
  cr_assert_eq(atun_config_duration_format(small, sizeof(small), 1000), 2);
  cr_assert_eq(atun_config_duration_format(small, sizeof(small), 10000), ATUN_ERR_NOBUF);
  cr_assert_str_eq(small, "");
}

Test(config, durations_as_numbers) {
  atun_config_agent a;
  cr_assert_eq(agent_parse(&a, "{\"connect_timeout\": 1e3, \"drain_timeout\": 3600000}"), 0,
               "%s", err.message);
  cr_assert_eq(a.connect_timeout_ns, ATUN_NS_PER_S);
  cr_assert_eq(a.drain_timeout_ns, 3600 * ATUN_NS_PER_S);
  atun_config_agent_free(&a);
  cr_assert_eq(agent_parse(&a, "{\"drain_timeout\": 3600001}"), INVAL);
  cr_assert_eq(agent_parse(&a, "{\"drain_timeout\": 1e400}"), INVAL);
  cr_assert_eq(agent_parse(&a, "{\"drain_timeout\": 1.0e-3}"), INVAL);
}

/* ======================================================================
 * List bounds: at the bound and one over
 * ====================================================================== */

typedef void (*item_gen)(sbuf *b, int i);

static char *list_doc(const char *key, int n, item_gen gen, const char *extra) {
  sbuf b = {0};
  sb_addf(&b, "{%s\"%s\": [", extra, key);
  for (int i = 0; i < n; ++i) {
    if (i > 0) sb_add(&b, ",");
    gen(&b, i);
  }
  sb_add(&b, "]}");
  return b.p;
}

static void gen_subnet(sbuf *b, int i) { sb_addf(b, "\"10.%d.%d.0/24\"", i / 256, i % 256); }
static void gen_domain(sbuf *b, int i) { sb_addf(b, "\"d%d.example\"", i); }
static void gen_forward(sbuf *b, int i) {
  sb_addf(b, "{\"listen\": \"127.0.0.2:%d\", \"target\": \"h%d\", \"port\": 80}", 10000 + i, i);
}
static void gen_user(sbuf *b, int i) {
  sb_addf(b, "{\"username\": \"u%d\", \"password\": \"p\"}", i);
}
static void gen_token(sbuf *b, int i) {
  sb_addf(b, "{\"name\": \"t%d\", \"sha256\": \"%064x\", \"scopes\": [\"read\"]}", i, i);
}
static void gen_server_name(sbuf *b, int i) { sb_addf(b, "\"gw%d.example\"", i); }

static void agent_bound(const char *key, int max, item_gen gen, size_t off_count) {
  atun_config_agent a;
  char *doc = list_doc(key, max, gen, "");
  cr_assert_eq(agent_parse(&a, doc), 0, "%s: %s", key, err.message);
  cr_assert_eq(*(size_t *)((char *)&a + off_count), (size_t)max);
  atun_config_agent_free(&a);
  free(doc);
  doc = list_doc(key, max + 1, gen, "");
  cr_assert_eq(agent_parse(&a, doc), ATUN_ERR_LIMIT, "%s", key);
  char want[128];
  snprintf(want, sizeof(want), "%s: %d entries, at most %d allowed", key, max + 1, max);
  cr_assert_str_eq(err.message, want);
  free(doc);
}

Test(config, agent_list_bounds) {
  agent_bound("advertise_subnets", ATUN_SUBNETS_MAX, gen_subnet,
              offsetof(atun_config_agent, advertise_subnet_count));
  agent_bound("advertise_domains", ATUN_DOMAINS_MAX, gen_domain,
              offsetof(atun_config_agent, advertise_domain_count));
  agent_bound("deny", ATUN_CONFIG_DENY_MAX, gen_subnet, offsetof(atun_config_agent, deny_count));
}

static void gw_bound(const char *key, const char *extra, const char *close, int max,
                     item_gen gen, size_t off_count) {
  atun_config_gateway g;
  for (int over = 0; over <= 1; ++over) {
    char *doc = list_doc(key, max + over, gen, extra);
    sbuf b = {0};
    sb_add(&b, doc);
    b.p[--b.len] = '\0'; /* drop the final '}' to close |extra| first */
    sb_add(&b, close);
    sb_add(&b, "}");
    int rv = gw_parse(&g, b.p);
    if (!over) {
      cr_assert_eq(rv, 0, "%s: %s", key, err.message);
      cr_assert_eq(*(size_t *)((char *)&g + off_count), (size_t)max);
      atun_config_gateway_free(&g);
    } else {
      cr_assert_eq(rv, ATUN_ERR_LIMIT, "%s: %s", key, err.message);
      cr_assert(strstr(err.message, "entries, at most") != NULL, "%s", err.message);
    }
    free(doc);
    free(b.p);
  }
}

Test(config, gateway_list_bounds) {
  gw_bound("forwards", "", "", ATUN_CONFIG_FORWARDS_MAX, gen_forward,
           offsetof(atun_config_gateway, forward_count));
  gw_bound("admin_tokens", "", "", ATUN_CONFIG_ADMIN_TOKENS_MAX, gen_token,
           offsetof(atun_config_gateway, admin_token_count));
  gw_bound("server_names", "", "", ATUN_CONFIG_SERVER_NAMES_MAX, gen_server_name,
           offsetof(atun_config_gateway, server_name_count));
  gw_bound("users", "\"socks5\": {", "}", ATUN_CONFIG_SOCKS5_USERS_MAX, gen_user,
           offsetof(atun_config_gateway, socks5_user_count));
}

Test(config, string_length_bounds) {
  atun_config_agent a;
  atun_config_gateway g;
  char path[ATUN_CONFIG_PATH_MAX + 2];
  char json[ATUN_CONFIG_PATH_MAX + 64];
  memset(path, 'p', sizeof(path));
  path[0] = '/';
  path[ATUN_CONFIG_PATH_MAX] = '\0';
  snprintf(json, sizeof(json), "{\"key_file\": \"%s\"}", path);
  cr_assert_eq(agent_parse(&a, json), 0);
  cr_assert_eq(strlen(a.key_file), ATUN_CONFIG_PATH_MAX);
  atun_config_agent_free(&a);
  path[ATUN_CONFIG_PATH_MAX] = 'p';
  path[ATUN_CONFIG_PATH_MAX + 1] = '\0';
  snprintf(json, sizeof(json), "{\"key_file\": \"%s\"}", path);
  cr_assert_eq(agent_parse(&a, json), INVAL);
  cr_assert_str_eq(err.message, "key_file: longer than 1023 bytes");

  char cred[ATUN_CONFIG_CREDENTIAL_MAX + 2];
  memset(cred, 'c', sizeof(cred));
  cred[ATUN_CONFIG_CREDENTIAL_MAX] = '\0';
  snprintf(json, sizeof(json),
           "{\"socks5\": {\"users\": [{\"username\": \"%s\", \"password\": \"%s\"}]}}", cred, cred);
  cr_assert_eq(gw_parse(&g, json), 0);
  atun_config_gateway_free(&g);
  cred[ATUN_CONFIG_CREDENTIAL_MAX] = 'c';
  cred[ATUN_CONFIG_CREDENTIAL_MAX + 1] = '\0';
  snprintf(json, sizeof(json),
           "{\"socks5\": {\"users\": [{\"username\": \"u\", \"password\": \"%s\"}]}}", cred);
  cr_assert_eq(gw_parse(&g, json), INVAL);
  cr_assert_str_eq(err.message, "socks5.users[0].password: longer than 255 bytes");

  char name[ATUN_CONFIG_ADMIN_NAME_MAX + 2];
  memset(name, 'n', sizeof(name));
  name[ATUN_CONFIG_ADMIN_NAME_MAX] = '\0';
  snprintf(json, sizeof(json), "{\"admin_tokens\": [{\"name\": \"%s\", \"sha256\": \"" PIN_HEX
           "\", \"scopes\": [\"read\"]}]}", name);
  cr_assert_eq(gw_parse(&g, json), 0);
  atun_config_gateway_free(&g);
  name[ATUN_CONFIG_ADMIN_NAME_MAX] = 'n';
  name[ATUN_CONFIG_ADMIN_NAME_MAX + 1] = '\0';
  snprintf(json, sizeof(json), "{\"admin_tokens\": [{\"name\": \"%s\", \"sha256\": \"" PIN_HEX
           "\", \"scopes\": [\"read\"]}]}", name);
  cr_assert_eq(gw_parse(&g, json), ATUN_ERR_BAD_NAME);
}

/* ======================================================================
 * Merge
 * ====================================================================== */

static const atun_prefix *two_subnets(void) {
  static atun_prefix p[2];
  atun_prefix_parse(&p[0], "10.20.0.0/16");
  atun_prefix_parse(&p[1], "2001:db8:1::/48");
  return p;
}

static atun_config_enrollment enrollment(void) {
  atun_config_enrollment e;
  memset(&e, 0, sizeof(e));
  e.agent_id = UUID;
  e.name = "edge-7";
  e.gateway = "gw.example.com:4433";
  e.key_file = "/etc/atun/agent.key";
  e.cert_file = "/etc/atun/agent.crt";
  e.ca_file = "/etc/atun/ca.crt";
  for (int i = 0; i < 32; ++i) e.server_spki_sha256[i] = (uint8_t)i;
  return e;
}

static char *merge_ok(const char *existing, const atun_config_enrollment *e) {
  char *out = NULL;
  size_t n = 0;
  int rv = atun_config_merge_enrollment(existing, strlen(existing), e, NULL, &out, &n, &err);
  cr_assert_eq(rv, 0, "%d %s", rv, err.message);
  cr_assert_eq(n, strlen(out));
  return out;
}

static void assert_enrolled(const char *text, const atun_config_enrollment *e) {
  atun_config_agent a;
  cr_assert_eq(agent_parse(&a, text), 0, "%s", err.message);
  cr_assert_str_eq(a.name, e->name);
  cr_assert_str_eq(a.agent_id, e->agent_id);
  cr_assert_str_eq(a.gateway_host.host, "gw.example.com");
  cr_assert_str_eq(a.key_file, e->key_file);
  cr_assert_str_eq(a.cert_file, e->cert_file);
  cr_assert_str_eq(a.ca_file, e->ca_file);
  cr_assert(memcmp(a.server_spki_sha256, e->server_spki_sha256, 32) == 0);
  cr_assert_eq(atun_config_agent_check_enrolled(&a, NULL), 0);
  atun_config_agent_free(&a);
}

/* Each |parts| entry must appear in |text| in this order. */
static void assert_in_order(const char *text, const char *const *parts, size_t n) {
  const char *at = text;
  for (size_t i = 0; i < n; ++i) {
    const char *hit = strstr(at, parts[i]);
    cr_assert_not_null(hit, "missing or out of order: %s\n--- in:\n%s", parts[i], text);
    at = hit + strlen(parts[i]);
  }
}

static const char foreign_file[] =
    "{\n"
    "  \"comment\": \"managed by hand; see wiki\",\n"
    "  \"name\": \"old-name\",\n"
    "  \"x_tuning\": {\"nested\": {\"deep\": [1, 2.50, -0, 1e+10, 123456789012345678901234567890]},"
    " \"flag\": null},\n"
    "  \"advertise_subnets\": [\"192.168.0.0/16\"],\n"
    "  \"x_list\": [ {\"a\" : \"b\"} , [ ] , \"\\u00e9\\n\" ],\n"
    "  \"log_level\": \"debug\",\n"
    "  \"deny\":[\"127.0.0.0/8\"],\n"
    "  \"zz_last\": true\n"
    "}\n";

Test(merge, keeps_foreign_keys_byte_for_byte) {
  atun_config_enrollment e = enrollment();
  char *out = merge_ok(foreign_file, &e);
  static const char *const kept[] = {
      "{\n  \"comment\": \"managed by hand; see wiki\",\n  \"name\": \"edge-7\",\n",
      "  \"x_tuning\": {\"nested\": {\"deep\": [1, 2.50, -0, 1e+10, "
      "123456789012345678901234567890]}, \"flag\": null},\n",
      "  \"advertise_subnets\": [\"192.168.0.0/16\"],\n",
      "  \"x_list\": [ {\"a\" : \"b\"} , [ ] , \"\\u00e9\\n\" ],\n",
      "  \"log_level\": \"debug\",\n  \"deny\":[\"127.0.0.0/8\"],\n  \"zz_last\": true,\n",
      "  \"agent_id\": \"" UUID "\",\n",
      "  \"gateway\": \"gw.example.com:4433\",\n",
      "  \"key_file\": \"/etc/atun/agent.key\",\n",
      "  \"cert_file\": \"/etc/atun/agent.crt\",\n",
      "  \"ca_file\": \"/etc/atun/ca.crt\",\n",
      "  \"server_spki_sha256\": \"" PIN_HEX "\"\n}\n"};
  assert_in_order(out, kept, sizeof(kept) / sizeof(kept[0]));
  assert_enrolled(out, &e);
  cr_assert_eq(err.warning_count, 4, "comment, x_tuning, x_list, zz_last: %zu",
               err.warning_count);
  free(out);
}

Test(merge, warnings_report_foreign_keys) {
  atun_config_enrollment e = enrollment();
  char *out = merge_ok("{\"colour\": 1}", &e);
  cr_assert_eq(err.warning_count, 1);
  cr_assert_str_eq(err.warnings[0], "colour: unknown key, ignored");
  free(out);
}

Test(merge, replaces_lists_only_when_given) {
  atun_config_enrollment e = enrollment();
  atun_domain d = {.name = "Corp.Example", .auto_detected = 0};
  e.set_subnets = 1;
  e.subnets = two_subnets();
  e.subnet_count = 2;
  e.set_domains = 1;
  e.domains = &d;
  e.domain_count = 1;
  char *out = merge_ok(foreign_file, &e);
  static const char *const parts[] = {
      "  \"advertise_subnets\": [\n    \"10.20.0.0/16\",\n    \"2001:db8:1::/48\"\n  ],\n",
      "  \"x_list\"",
      "  \"advertise_domains\": [\n    \"corp.example\"\n  ]\n}\n"};
  assert_in_order(out, parts, 3);
  cr_assert_null(strstr(out, "192.168.0.0/16"));
  free(out);

  /* Given but empty: the file's list is emptied. */
  e.subnet_count = 0;
  e.set_domains = 0;
  out = merge_ok(foreign_file, &e);
  cr_assert(strstr(out, "\"advertise_subnets\": [],") != NULL, "%s", out);
  cr_assert_null(strstr(out, "advertise_domains"));
  free(out);
}

Test(merge, empty_or_blank_text_gives_a_full_config) {
  atun_config_enrollment e = enrollment();
  static const char *const blanks[] = {"", " \n\t\r\n"};
  for (int i = 0; i < 2; ++i) {
    char *out = merge_ok(blanks[i], &e);
    assert_enrolled(out, &e);
    atun_config_agent a;
    char *written;
    cr_assert_eq(agent_parse(&a, out), 0);
    cr_assert_eq(err.warning_count, 0);
    cr_assert_eq(atun_config_agent_serialize(&a, &written, NULL), 0);
    cr_assert_str_eq(out, written, "a fresh file is exactly the written form");
    cr_assert(strstr(out, "\"deny\": [") != NULL);
    cr_assert(strstr(out, "\"resolv_conf\"") != NULL);
    free(written);
    atun_config_agent_free(&a);
    free(out);
  }
  char *out = NULL;
  cr_assert_eq(atun_config_merge_enrollment(NULL, 0, &e, NULL, &out, NULL, &err), 0);
  assert_enrolled(out, &e);
  free(out);
}

Test(merge, into_empty_object) {
  atun_config_enrollment e = enrollment();
  char *out = merge_ok("  { \n }  \n", &e);
  cr_assert(strncmp(out, "  {\n  \"name\": \"edge-7\",\n  \"agent_id\"", 36) == 0, "%s", out);
  cr_assert(strstr(out, "\"" PIN_HEX "\"\n}  \n") != NULL, "%s", out);
  assert_enrolled(out, &e);
  free(out);
}

Test(merge, follows_the_file_layout) {
  atun_config_enrollment e = enrollment();
  atun_domain d = {.name = "lab.example", .auto_detected = 1};
  e.set_domains = 1;
  e.domains = &d;
  e.domain_count = 1;
  /* four spaces and CRLF */
  char *out = merge_ok("{\r\n    \"log_level\" : \"warn\"\r\n}\r\n", &e);
  cr_assert(strstr(out, "\"log_level\" : \"warn\",\r\n    \"name\" : \"edge-7\",\r\n") != NULL,
            "%s", out);
  cr_assert(strstr(out, "\"advertise_domains\" : [\r\n        {\r\n            \"name\": "
                        "\"lab.example\",\r\n            \"auto_detected\": true\r\n"
                        "        }\r\n    ]\r\n}\r\n") != NULL, "%s", out);
  assert_enrolled(out, &e);
  free(out);
  /* one line */
  out = merge_ok("{\"log_level\":\"warn\"}", &e);
  cr_assert(strncmp(out, "{\"log_level\":\"warn\",\"name\":\"edge-7\",\"agent_id\":", 46) == 0,
            "%s", out);
  cr_assert(strstr(out, "\"advertise_domains\":[{\"name\":\"lab.example\","
                        "\"auto_detected\":true}]}") != NULL, "%s", out);
  assert_enrolled(out, &e);
  free(out);
}

Test(merge, replaces_owned_values_of_any_type_in_place) {
  atun_config_enrollment e = enrollment();
  char *out = merge_ok("{\"gateway\": {\"old\": [1, 2]}, \"name\\/x\": 2, \"name\": 5,"
                       " \"n\\u0061me2\": 1, \"agent\\u005fid\": null}", &e);
  static const char *const parts[] = {"{\"gateway\": \"gw.example.com:4433\"",
                                      "\"name\\/x\": 2", "\"name\": \"edge-7\"",
                                      "\"n\\u0061me2\": 1", "\"agent\\u005fid\": \"" UUID "\""};
  assert_in_order(out, parts, 5);
  cr_assert_null(strstr(out, "\"agent_id\""), "the escaped key was the owned one");
  assert_enrolled(out, &e);
  free(out);
}

Test(merge, twice_is_the_same_as_once) {
  atun_config_enrollment e = enrollment();
  e.set_subnets = 1;
  e.subnets = two_subnets();
  e.subnet_count = 2;
  char *once = merge_ok(foreign_file, &e);
  char *twice = merge_ok(once, &e);
  cr_assert_str_eq(once, twice);
  free(once);
  free(twice);
}

Test(merge, refuses_what_is_not_a_json_object) {
  atun_config_enrollment e = enrollment();
  static const bad_case cases[] = {
      {"{\"name\": ", ATUN_ERR_MALFORMED, "existing config: line 1, column 10: unexpected end"},
      {"not json", ATUN_ERR_MALFORMED, "existing config: line 1, column 1"},
      {"{\"a\": 1} {}", ATUN_ERR_MALFORMED, "existing config: line 1, column 10: text after"},
      {"[1, 2]", ATUN_ERR_MALFORMED, "existing config: the top level must be an object"},
      {"null", ATUN_ERR_MALFORMED, "existing config: the top level must be an object"},
      {"{\"name\": \"a\", \"name\": \"b\"}", INVAL, "name: duplicate key"},
      {"{\"deny\": [\"10.0.0.1/8\"]}", ATUN_ERR_BAD_PREFIX, "deny[0]: host bits set in 10.0.0.1/8"},
      {"{\"log_level\": 1}", INVAL, "log_level: expected"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    char *out = (char *)1;
    int rv = atun_config_merge_enrollment(cases[i].json, strlen(cases[i].json), &e, NULL,
                                          &out, NULL, &err);
    cr_assert_eq(rv, cases[i].rv, "case %zu: %d %s", i, rv, err.message);
    cr_assert_null(out);
    cr_assert(strncmp(err.message, cases[i].msg, strlen(cases[i].msg)) == 0,
              "case %zu: \"%s\"", i, err.message);
  }
}

Test(merge, refuses_bad_enrollment_values) {
  static const atun_domain bad_domain = {.name = "bad..domain"};
  static const atun_prefix bad_prefix = {.addr = {.family = 4, .bytes = {10, 0, 0, 1}},
                                         .len = 8};
  for (int i = 0; i < 11; ++i) {
    atun_config_enrollment e = enrollment();
    int want = INVAL;
    const char *msg = NULL;
    switch (i) {
      case 0: e.agent_id = "nope"; msg = "agent_id: not a lowercase UUID"; break;
      case 1: e.name = ""; msg = "name: must not be empty"; break;
      case 2: e.name = "bad name"; want = ATUN_ERR_BAD_NAME; msg = "name: \"bad name\""; break;
      case 3: e.gateway = "gw.example.com"; msg = "gateway: \"gw.example.com\" is not"; break;
      case 4: e.key_file = NULL; msg = "key_file: must not be empty"; break;
      case 5: e.cert_file = "a\tb"; msg = "cert_file: holds a control character"; break;
      case 6:
        e.set_subnets = 1;
        e.subnets = &bad_prefix;
        e.subnet_count = 1;
        want = ATUN_ERR_BAD_PREFIX;
        msg = "advertise_subnets[0]: bad length or host bits set";
        break;
      case 7:
        e.set_subnets = 1;
        e.subnets = two_subnets();
        e.subnet_count = ATUN_SUBNETS_MAX + 1;
        want = ATUN_ERR_LIMIT;
        msg = "advertise_subnets: 4097 entries, at most 4096 allowed";
        break;
      case 8:
        e.set_domains = 1;
        e.domains = &bad_domain;
        e.domain_count = 1;
        want = ATUN_ERR_BAD_NAME;
        msg = "advertise_domains[0]: not a valid domain";
        break;
      case 9:
        e.set_domains = 1;
        e.domains = &bad_domain;
        e.domain_count = ATUN_DOMAINS_MAX + 1;
        want = ATUN_ERR_LIMIT;
        msg = "advertise_domains: 1025 entries, at most 1024 allowed";
        break;
      default: {
        static char longpath[ATUN_CONFIG_PATH_MAX + 2];
        memset(longpath, 'p', ATUN_CONFIG_PATH_MAX + 1);
        e.ca_file = longpath;
        msg = "ca_file: longer than 1023 bytes";
      }
    }
    char *out = (char *)1;
    int rv = atun_config_merge_enrollment("{}", 2, &e, NULL, &out, NULL, &err);
    cr_assert_eq(rv, want, "case %d: %d %s", i, rv, err.message);
    cr_assert_null(out);
    cr_assert(strncmp(err.message, msg, strlen(msg)) == 0, "case %d: %s", i, err.message);
  }
}

Test(merge, list_bounds_at_the_bound) {
  atun_config_enrollment e = enrollment();
  atun_prefix *p = calloc(ATUN_SUBNETS_MAX, sizeof(*p));
  atun_domain *d = calloc(ATUN_DOMAINS_MAX, sizeof(*d));
  for (int i = 0; i < ATUN_SUBNETS_MAX; ++i) {
    char text[32];
    snprintf(text, sizeof(text), "10.%d.%d.0/24", i / 256, i % 256);
    cr_assert_eq(atun_prefix_parse(&p[i], text), 0);
  }
  for (int i = 0; i < ATUN_DOMAINS_MAX; ++i) snprintf(d[i].name, sizeof(d[i].name), "d%d.ex", i);
  e.set_subnets = e.set_domains = 1;
  e.subnets = p;
  e.subnet_count = ATUN_SUBNETS_MAX;
  e.domains = d;
  e.domain_count = ATUN_DOMAINS_MAX;
  char *out = merge_ok("{}", &e);
  atun_config_agent a;
  cr_assert_eq(agent_parse(&a, out), 0);
  cr_assert_eq(a.advertise_subnet_count, ATUN_SUBNETS_MAX);
  cr_assert_eq(a.advertise_domain_count, ATUN_DOMAINS_MAX);
  atun_config_agent_free(&a);
  free(out);
  free(p);
  free(d);
}

Test(merge, size_bounds) {
  atun_config_enrollment e = enrollment();
  size_t n = ATUN_CONFIG_TEXT_MAX + 1;
  char *text = malloc(n);
  char *out = (char *)1;
  memset(text, ' ', n);
  memcpy(text, "{}", 2);
  cr_assert_eq(atun_config_merge_enrollment(text, n, &e, NULL, &out, NULL, &err),
               ATUN_ERR_LIMIT);
  cr_assert_null(out);
  cr_assert(strstr(err.message, "existing config of 1048577 bytes") != NULL, "%s", err.message);
  /* Within the bound, but the added keys push the result over it. */
  cr_assert_eq(atun_config_merge_enrollment(text, n - 1, &e, NULL, &out, NULL, &err),
               ATUN_ERR_LIMIT);
  cr_assert_null(out);
  cr_assert(strstr(err.message, "would exceed") != NULL, "%s", err.message);
  free(text);
}

/* ======================================================================
 * Allocation failures: every allocation through |atun_mem| may fail, and
 * nothing leaks at any of them
 * ====================================================================== */

typedef int (*alloc_op)(const atun_mem *mem);

static void fail_each_allocation(alloc_op op) {
  long index = 0;
  for (;; ++index) {
    atun_failmem fm;
    atun_failmem_init(&fm, index);
    int rv = op(&fm.mem);
    cr_assert_eq(fm.live, 0, "leak after failing allocation %ld", index);
    if (rv == 0) break;
    cr_assert_eq(rv, ATUN_ERR_NOMEM, "allocation %ld: %d %s", index, rv, err.message);
    cr_assert(fm.failures > 0);
  }
  cr_assert_gt(index, 0, "the operation allocates");
}

static int op_agent_default(const atun_mem *mem) {
  atun_config_agent a;
  int rv = atun_config_agent_default(&a, mem);
  atun_config_agent_free(&a);
  return rv;
}

static int op_agent_round_trip(const atun_mem *mem) {
  atun_config_agent a;
  char *text;
  int rv = atun_config_agent_parse(&a, full_agent, strlen(full_agent), mem, &err);
  if (rv != 0) return rv;
  rv = atun_config_agent_serialize(&a, &text, NULL);
  if (rv == 0) atun_mem_free(mem, text);
  atun_config_agent_free(&a);
  return rv;
}

static int op_gateway_round_trip(const atun_mem *mem) {
  atun_config_gateway g;
  char *text, *full = full_gateway_text();
  int rv = atun_config_gateway_parse(&g, full, strlen(full), mem, &err);
  free(full);
  if (rv != 0) return rv;
  rv = atun_config_gateway_serialize(&g, &text, NULL);
  if (rv == 0) atun_mem_free(mem, text);
  atun_config_gateway_free(&g);
  return rv;
}

static int op_merge(const atun_mem *mem, const char *existing) {
  atun_config_enrollment e = enrollment();
  atun_domain d = {.name = "corp.example"};
  char *out;
  e.set_subnets = e.set_domains = 1;
  e.subnets = two_subnets();
  e.subnet_count = 2;
  e.domains = &d;
  e.domain_count = 1;
  int rv = atun_config_merge_enrollment(existing, strlen(existing), &e, mem, &out, NULL, &err);
  if (rv == 0) atun_mem_free(mem, out);
  return rv;
}

static int op_merge_fresh(const atun_mem *mem) { return op_merge(mem, ""); }
static int op_merge_splice(const atun_mem *mem) { return op_merge(mem, foreign_file); }

Test(alloc, agent_default) { fail_each_allocation(op_agent_default); }
Test(alloc, agent_parse_and_serialize) { fail_each_allocation(op_agent_round_trip); }
Test(alloc, gateway_parse_and_serialize) { fail_each_allocation(op_gateway_round_trip); }
Test(alloc, merge_into_nothing) { fail_each_allocation(op_merge_fresh); }
Test(alloc, merge_into_a_file) { fail_each_allocation(op_merge_splice); }

Test(alloc, a_failed_parse_frees_everything) {
  atun_failmem fm;
  atun_config_agent a;
  atun_failmem_init(&fm, -1);
  const char *bad = "{\"advertise_subnets\": [\"10.0.0.0/8\"], \"deny\": [\"x\"]}";
  cr_assert_eq(atun_config_agent_parse(&a, bad, strlen(bad), &fm.mem, &err),
               ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(fm.live, 0);
  cr_assert_gt(fm.allocs, 1);
}
