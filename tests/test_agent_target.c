/*
 * The agent's data plane (agent/target.c), the parts that run without a
 * QUIC connection: creation bounds, the policy built from the config (the
 * deny list is the config's whole list), all-or-nothing reconfiguration,
 * the early-data bound and the ConnectResponse encoding.  The stream path
 * itself runs in tests/integration/test_dataplane_agent_basic.sh.
 *
 * The agent sources are not in a library, so the module is compiled in.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "../agent/target.c"

static struct ev_loop *loop;
static agent_dp *dp;
static atun_config_agent cfg;
static size_t last_count = 99;

static void count_cb(size_t count, void *ud) {
  (void)ud;
  last_count = count;
}

static void setup(void) {
  loop = ev_loop_new(EVFLAG_AUTO);
  cr_assert_not_null(loop);
  cr_assert_eq(atun_config_agent_default(&cfg, atun_mem_default()), 0);
  cr_assert_eq(agent_dp_new(&dp, loop, 4, NULL, count_cb, NULL), 0);
}

static void teardown(void) {
  agent_dp_del(dp);
  atun_config_agent_free(&cfg);
  ev_loop_destroy(loop);
}

static atun_prefix pfx(const char *s) {
  atun_prefix p;
  cr_assert_eq(atun_prefix_parse(&p, s), 0, "%s", s);
  return p;
}

static int check(const char *a) {
  atun_addr addr;
  cr_assert_eq(atun_addr_parse(&addr, a), 0, "%s", a);
  return atun_policy_check_addr(dp->policy, &addr, NULL);
}

TestSuite(agent_target, .init = setup, .fini = teardown);

Test(agent_target, new_rejects_bad_arguments) {
  agent_dp *x = NULL;
  cr_assert_eq(agent_dp_new(NULL, loop, 1, NULL, NULL, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_dp_new(&x, NULL, 1, NULL, NULL, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_dp_new(&x, loop, 0, NULL, NULL, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_dp_new(&x, loop, SESSIONS_LIMIT + 1, NULL, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_null(x);
  cr_assert_eq(agent_dp_new(&x, loop, SESSIONS_LIMIT, NULL, NULL, NULL), 0);
  cr_assert_eq(agent_dp_count(x), 0);
  agent_dp_del(x);
}

Test(agent_target, nothing_allowed_before_configure) {
  cr_assert_eq(check("10.0.0.1"), ATUN_CONNECT_DENIED);
  cr_assert_eq(agent_dp_count(dp), 0);
  agent_dp_conn_gone(dp, NULL);
  agent_dp_conn_gone(NULL, NULL);
  cr_assert_eq(last_count, 99, "no record came or went");
}

Test(agent_target, default_deny_list_wins_over_subnets) {
  atun_prefix s[] = {pfx("127.0.0.0/8"), pfx("10.0.0.0/8")};
  cr_assert_eq(agent_dp_configure(dp, &cfg, s, 2, NULL, 0), 0);
  cr_assert_eq(check("10.1.2.3"), ATUN_CONNECT_OK);
  cr_assert_eq(check("127.0.0.1"), ATUN_CONNECT_DENIED);
  cr_assert_eq(check("::ffff:127.0.0.1"), ATUN_CONNECT_DENIED);
  cr_assert_eq(check("11.0.0.1"), ATUN_CONNECT_DENIED);
  cr_assert_eq(dp->connect_timeout_ns, cfg.connect_timeout_ns);
}

Test(agent_target, config_deny_list_replaces_the_defaults) {
  atun_prefix deny[] = {pfx("127.0.0.2/32")};
  cfg.deny_count = 0; /* "deny": [] ... */
  atun_prefix s[] = {pfx("127.0.0.0/8")};
  cr_assert_eq(agent_dp_configure(dp, &cfg, s, 1, NULL, 0), 0);
  cr_assert_eq(check("127.0.0.1"), ATUN_CONNECT_OK);
  cr_assert_eq(check("127.0.0.2"), ATUN_CONNECT_OK);
  atun_prefix *keep = cfg.deny;
  cfg.deny = deny; /* ... and "deny": ["127.0.0.2/32"] */
  cfg.deny_count = 1;
  cr_assert_eq(agent_dp_configure(dp, &cfg, s, 1, NULL, 0), 0);
  cfg.deny = keep;
  cr_assert_eq(check("127.0.0.1"), ATUN_CONNECT_OK);
  cr_assert_eq(check("127.0.0.2"), ATUN_CONNECT_DENIED);
}

Test(agent_target, failed_configure_keeps_the_old_policy) {
  atun_prefix s[] = {pfx("10.0.0.0/8")};
  cr_assert_eq(agent_dp_configure(dp, &cfg, s, 1, NULL, 0), 0);
  atun_policy *before = dp->policy;
  uint64_t timeout = dp->connect_timeout_ns;
  atun_prefix bad = s[0];
  bad.len = 33;
  cfg.connect_timeout_ns = timeout + 1;
  cr_assert_eq(agent_dp_configure(dp, &cfg, &bad, 1, NULL, 0), ATUN_ERR_BAD_PREFIX);
  cr_assert_eq(agent_dp_configure(dp, &cfg, NULL, 1, NULL, 0), ATUN_ERR_INVALID_ARGUMENT);
  atun_domain d = {.name = "bad..name"};
  cr_assert_eq(agent_dp_configure(dp, &cfg, s, 1, &d, 1), ATUN_ERR_BAD_NAME);
  cr_assert_eq(dp->policy, before);
  cr_assert_eq(dp->connect_timeout_ns, timeout);
  cr_assert_eq(check("10.9.9.9"), ATUN_CONNECT_OK);
}

Test(agent_target, early_data_bound_at_the_pipe_limit) {
  static uint8_t big[ATUN_PIPE_EARLY_MAX + 1];
  rec r = {0};
  cr_assert_eq(hold(&r, big, 0), 0);
  cr_assert_null(r.early, "no buffer for nothing");
  cr_assert_eq(hold(&r, big, ATUN_PIPE_EARLY_MAX - 1), 0);
  cr_assert_eq(hold(&r, big, 1), 0);
  cr_assert_eq(r.early_len, ATUN_PIPE_EARLY_MAX);
  cr_assert_eq(hold(&r, big, 1), -1, "one byte over the bound");
  cr_assert_eq(r.early_len, ATUN_PIPE_EARLY_MAX);
  free(r.early);
  rec r2 = {0};
  cr_assert_eq(hold(&r2, big, sizeof(big)), -1);
  cr_assert_null(r2.early);
}

Test(agent_target, early_data_kept_in_order) {
  rec r = {0};
  cr_assert_eq(hold(&r, (const uint8_t *)"abc", 3), 0);
  cr_assert_eq(hold(&r, (const uint8_t *)"de", 2), 0);
  cr_assert_eq(r.early_len, 5);
  cr_assert_eq(memcmp(r.early, "abcde", 5), 0);
  free(r.early);
}

static void roundtrip(int status, const char *msg, const char *want) {
  uint8_t buf[RESPONSE_BUF];
  ssize_t n = encode_response(buf, status, msg);
  cr_assert_gt(n, 0, "status %d", status);
  atun_msg m;
  cr_assert_eq(atun_frame_decode(&m, buf, (size_t)n, atun_mem_default()), 0);
  cr_assert_eq(m.type, ATUN_FRAME_CONNECT_RESPONSE);
  cr_assert_eq(m.u.connect_response.status, (uint64_t)status);
  cr_assert_str_eq(m.u.connect_response.message, want);
  atun_msg_free(&m, atun_mem_default());
}

Test(agent_target, responses_encode_every_status) {
  for (int st = ATUN_CONNECT_OK; st <= ATUN_CONNECT_STATUS_MAX; ++st)
    roundtrip(st, atun_connect_status_name((uint64_t)st), atun_connect_status_name((uint64_t)st));
}

Test(agent_target, long_messages_are_cut) {
  char msg[RESPONSE_MSG_MAX * 2];
  memset(msg, 'x', sizeof(msg) - 1);
  msg[sizeof(msg) - 1] = '\0';
  char want[RESPONSE_MSG_MAX];
  memset(want, 'x', sizeof(want) - 1);
  want[sizeof(want) - 1] = '\0';
  roundtrip(ATUN_CONNECT_DENIED, msg, want);
}

Test(agent_target, unknown_status_does_not_encode) {
  uint8_t buf[RESPONSE_BUF];
  cr_assert_lt(encode_response(buf, ATUN_CONNECT_STATUS_MAX + 1, "x"), 0);
}
