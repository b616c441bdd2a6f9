#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "socks5.h"
#include "support.h"

#define SEC ATUN_NS_PER_S
#define T0 ((atun_tstamp)1000 * SEC)

/* --- fixtures ----------------------------------------------------------- */

static atun_socks5_server *srv;
static atun_socks5_conn conn;

static const atun_socks5_user alice = {"alice", 5, "s3cret", 6};
static const atun_socks5_user plus_user = {"a+b", 3, "pw", 2};

static atun_socks5_server *server(const atun_socks5_user *users, size_t n,
                                  int allow_pin) {
  atun_socks5_settings s;
  atun_socks5_settings_default(&s);
  s.allow_pin = allow_pin;
  atun_socks5_server *out = NULL;
  cr_assert_eq(atun_socks5_server_new(&out, &s, users, n, atun_mem_default()), 0);
  return out;
}

static void open_noauth(void) {
  srv = server(NULL, 0, 1);
  atun_socks5_conn_init(&conn, srv, T0);
}

static void open_auth(void) {
  atun_socks5_user users[2] = {alice, plus_user};
  srv = server(users, 2, 1);
  atun_socks5_conn_init(&conn, srv, T0);
}

static void close_server(void) { atun_socks5_server_del(srv); }

static ssize_t feed(const void *p, size_t n) {
  return atun_socks5_conn_feed(&conn, srv, p, n);
}

/* Feeds |n| bytes and expects all of them taken. */
static void feed_ok(const void *p, size_t n) {
  cr_assert_eq(feed(p, n), (ssize_t)n);
}

/* Compares the queued output with |want| and drains it. */
static void expect_out(const void *want, size_t n) {
  size_t len;
  const uint8_t *out = atun_socks5_conn_out(&conn, &len);
  cr_assert_eq(len, n, "queued %zu bytes, expected %zu", len, n);
  if (n > 0) cr_assert_eq(memcmp(out, want, n), 0);
  atun_socks5_conn_out_consume(&conn, n);
}

static void expect_closing(int reason, ssize_t err) {
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_CLOSING);
  cr_assert_eq(atun_socks5_conn_close_reason(&conn), reason, "reason %s",
               atun_socks5_close_reason_name(atun_socks5_conn_close_reason(&conn)));
  /* Sticky: later input is refused with the same error. */
  cr_assert_eq(feed("\x05", 1), err);
  cr_assert_null(atun_socks5_conn_request(&conn));
}

/* Builds a user/pass message into |buf| and returns its length. */
static size_t auth_msg(uint8_t *buf, const char *user, size_t ulen,
                       const char *pass, size_t plen) {
  buf[0] = 0x01;
  buf[1] = (uint8_t)ulen;
  memcpy(buf + 2, user, ulen);
  buf[2 + ulen] = (uint8_t)plen;
  memcpy(buf + 3 + ulen, pass, plen);
  return 3 + ulen + plen;
}

/* Builds a CONNECT request for a domain into |buf|. */
static size_t domain_req(uint8_t *buf, const char *name, size_t n, uint16_t port) {
  buf[0] = 5;
  buf[1] = 1;
  buf[2] = 0;
  buf[3] = 3;
  buf[4] = (uint8_t)n;
  memcpy(buf + 5, name, n);
  buf[5 + n] = (uint8_t)(port >> 8);
  buf[6 + n] = (uint8_t)port;
  return 7 + n;
}

static const uint8_t greet_none[] = {5, 1, 0};
static const uint8_t greet_userpass[] = {5, 1, 2};
static const uint8_t chose_none[] = {5, 0};
static const uint8_t chose_userpass[] = {5, 2};
static const uint8_t chose_nothing[] = {5, 0xff};
static const uint8_t auth_good[] = {1, 0};
static const uint8_t auth_bad[] = {1, 1};
static const uint8_t req_v4[] = {5, 1, 0, 1, 10, 1, 2, 3, 0x01, 0xbb};

static const uint8_t *rep(uint8_t code) {
  static uint8_t buf[10];
  const uint8_t r[10] = {5, code, 0, 1, 0, 0, 0, 0, 0, 0};
  memcpy(buf, r, sizeof(buf));
  return buf;
}

/* Greeting (no auth) and acceptance, leaving the conn waiting for a
 * request. */
static void greet_noauth(void) {
  feed_ok(greet_none, sizeof(greet_none));
  expect_out(chose_none, 2);
}

/* Greets with username/password and sends |user| / |pass|; returns what
 * the feed of the authentication message returned. */
static ssize_t send_login(const char *user, const char *pass) {
  feed_ok(greet_userpass, sizeof(greet_userpass));
  expect_out(chose_userpass, 2);
  uint8_t buf[ATUN_SOCKS5_MSG_MAX];
  size_t n = auth_msg(buf, user, strlen(user), pass, strlen(pass));
  ssize_t rv = feed(buf, n);
  cr_assert(rv == (ssize_t)n || rv < 0);
  return rv;
}

static void login(const char *user, const char *pass) {
  cr_assert_gt(send_login(user, pass), 0, "login %s", user);
  expect_out(auth_good, 2);
}

/* The login fails with an RFC 1929 failure status and closes. */
static void login_refused(const char *user, const char *pass, int reason) {
  cr_assert_eq(send_login(user, pass), ATUN_ERR_DENIED, "login %s", user);
  expect_out(auth_bad, 2);
  expect_closing(reason, ATUN_ERR_DENIED);
}

static const atun_socks5_request *request_domain(const char *name, size_t n) {
  uint8_t buf[300];
  size_t len = domain_req(buf, name, n, 80);
  feed_ok(buf, len);
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_CONNECT);
  return atun_socks5_conn_request(&conn);
}

/* --- greeting and methods -------------------------------------------------- */

TestSuite(greeting, .init = open_noauth, .fini = close_server);

Test(greeting, no_auth_full_path) {
  greet_noauth();
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_HANDSHAKE);
  cr_assert_null(atun_socks5_conn_request(&conn));
  feed_ok(req_v4, sizeof(req_v4));
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_CONNECT);
  const atun_socks5_request *r = atun_socks5_conn_request(&conn);
  cr_assert_not_null(r);
  cr_assert_eq(r->target.kind, ATUN_TARGET_ADDR);
  cr_assert_eq(r->target.addr.family, ATUN_AF_INET);
  cr_assert_eq(memcmp(r->target.addr.bytes, "\x0a\x01\x02\x03", 4), 0);
  cr_assert_eq(r->port, 443);
  cr_assert_str_empty(r->pin);
  cr_assert_str_empty(r->user);
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_OK, NULL, 0), 0);
  expect_out(rep(0), 10);
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_ESTABLISHED);
  cr_assert_not_null(atun_socks5_conn_request(&conn));
  cr_assert_eq(atun_socks5_conn_close_reason(&conn), ATUN_SOCKS5_CLOSE_NONE);
  /* The tunnel's bytes are not the machine's. */
  cr_assert_eq(feed("data", 4), 0);
  cr_assert_eq(atun_socks5_conn_expiry(&conn), ATUN_TSTAMP_MAX);
}

Test(greeting, zero_methods_is_refused) {
  const uint8_t g[] = {5, 0};
  cr_assert_eq(feed(g, sizeof(g)), ATUN_ERR_DENIED);
  expect_out(chose_nothing, 2);
  expect_closing(ATUN_SOCKS5_CLOSE_NO_METHOD, ATUN_ERR_DENIED);
}

Test(greeting, unknown_methods_only) {
  const uint8_t g[] = {5, 3, 0x01, 0x03, 0x80};
  cr_assert_eq(feed(g, sizeof(g)), ATUN_ERR_DENIED);
  expect_out(chose_nothing, 2);
  expect_closing(ATUN_SOCKS5_CLOSE_NO_METHOD, ATUN_ERR_DENIED);
}

Test(greeting, all_255_methods) {
  uint8_t g[2 + 255];
  g[0] = 5;
  g[1] = 255;
  for (int i = 0; i < 255; ++i) g[2 + i] = (uint8_t)(254 - i); /* 0xfe..0x00 */
  feed_ok(g, sizeof(g));
  /* 0x02 is offered too, and preferred: it may carry a pin. */
  expect_out(chose_userpass, 2);
}

Test(greeting, userpass_preferred_without_users) {
  const uint8_t g[] = {5, 2, 0, 2};
  feed_ok(g, sizeof(g));
  expect_out(chose_userpass, 2);
}

Test(greeting, bad_version_closes_on_first_byte) {
  /* SOCKS4 and HTTP both fail on byte one, without waiting for more. */
  cr_assert_eq(feed("\x04", 1), ATUN_ERR_PROTO);
  expect_out(NULL, 0);
  expect_closing(ATUN_SOCKS5_CLOSE_BAD_VERSION, ATUN_ERR_PROTO);
}

Test(greeting, http_request_is_refused) {
  const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  cr_assert_eq(feed(http, strlen(http)), ATUN_ERR_PROTO);
  expect_out(NULL, 0);
  expect_closing(ATUN_SOCKS5_CLOSE_BAD_VERSION, ATUN_ERR_PROTO);
}

Test(greeting, empty_feed_is_harmless) {
  cr_assert_eq(feed(NULL, 0), 0);
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_HANDSHAKE);
  feed_ok("\x05", 1);
  cr_assert_eq(feed(NULL, 0), 0);
  feed_ok("\x01", 1);
  feed_ok("\x00", 1);
  expect_out(chose_none, 2);
}

Test(greeting, noauth_method_refused_with_users) {
  close_server();
  open_auth();
  cr_assert_eq(feed(greet_none, sizeof(greet_none)), ATUN_ERR_DENIED);
  expect_out(chose_nothing, 2);
  expect_closing(ATUN_SOCKS5_CLOSE_NO_METHOD, ATUN_ERR_DENIED);
}

/* --- authentication ------------------------------------------------------------ */

TestSuite(auth, .init = open_auth, .fini = close_server);

Test(auth, good_password) {
  const uint8_t g[] = {5, 2, 0, 2};
  feed_ok(g, sizeof(g));
  expect_out(chose_userpass, 2);
  uint8_t buf[64];
  size_t n = auth_msg(buf, "alice", 5, "s3cret", 6);
  feed_ok(buf, n);
  expect_out(auth_good, 2);
  feed_ok(req_v4, sizeof(req_v4));
  const atun_socks5_request *r = atun_socks5_conn_request(&conn);
  cr_assert_str_eq(r->user, "alice");
  cr_assert_str_empty(r->pin);
}

Test(auth, wrong_password) {
  login_refused("alice", "s3creT", ATUN_SOCKS5_CLOSE_AUTH_FAILED);
}

Test(auth, password_prefix_and_extension_fail) {
  login_refused("alice", "s3cre", ATUN_SOCKS5_CLOSE_AUTH_FAILED);
  atun_socks5_conn_init(&conn, srv, T0);
  login_refused("alice", "s3cret!", ATUN_SOCKS5_CLOSE_AUTH_FAILED);
}

Test(auth, unknown_user) {
  login_refused("mallory", "s3cret", ATUN_SOCKS5_CLOSE_AUTH_FAILED);
}

Test(auth, empty_user_and_password) {
  feed_ok(greet_userpass, sizeof(greet_userpass));
  expect_out(chose_userpass, 2);
  const uint8_t a[] = {1, 0, 0};
  cr_assert_eq(feed(a, sizeof(a)), ATUN_ERR_DENIED);
  expect_out(auth_bad, 2);
  expect_closing(ATUN_SOCKS5_CLOSE_AUTH_FAILED, ATUN_ERR_DENIED);
}

Test(auth, bad_subnegotiation_version) {
  feed_ok(greet_userpass, sizeof(greet_userpass));
  expect_out(chose_userpass, 2);
  cr_assert_eq(feed("\x05\x05", 2), ATUN_ERR_PROTO);
  expect_out(NULL, 0);
  expect_closing(ATUN_SOCKS5_CLOSE_BAD_VERSION, ATUN_ERR_PROTO);
}

Test(auth, user_with_plus_is_taken_whole) {
  login("a+b", "pw");
  feed_ok(req_v4, sizeof(req_v4));
  const atun_socks5_request *r = atun_socks5_conn_request(&conn);
  cr_assert_str_eq(r->user, "a+b");
  cr_assert_str_empty(r->pin);
}

Test(auth, user_with_plus_and_pin) {
  login("a+b+edge-1", "pw");
  feed_ok(req_v4, sizeof(req_v4));
  const atun_socks5_request *r = atun_socks5_conn_request(&conn);
  cr_assert_str_eq(r->user, "a+b");
  cr_assert_str_eq(r->pin, "edge-1");
}

Test(auth, pin_after_user) {
  login("alice+db-agent", "s3cret");
  feed_ok(req_v4, sizeof(req_v4));
  const atun_socks5_request *r = atun_socks5_conn_request(&conn);
  cr_assert_str_eq(r->user, "alice");
  cr_assert_str_eq(r->pin, "db-agent");
}

Test(auth, pin_with_wrong_password) {
  login_refused("alice+db-agent", "nope", ATUN_SOCKS5_CLOSE_AUTH_FAILED);
}

Test(auth, pin_without_user) {
  login_refused("+db-agent", "s3cret", ATUN_SOCKS5_CLOSE_AUTH_FAILED);
}

Test(auth, invalid_pin_with_good_password) {
  login_refused("alice+db agent", "s3cret", ATUN_SOCKS5_CLOSE_BAD_PIN);
}

Test(auth, pin_refused_when_disabled) {
  close_server();
  srv = server(&alice, 1, 0);
  atun_socks5_conn_init(&conn, srv, T0);
  login_refused("alice+db-agent", "s3cret", ATUN_SOCKS5_CLOSE_BAD_PIN);
}

Test(auth, longest_fields) {
  /* A 255-byte user name and password, the largest client message. */
  char name[255], pass[255];
  memset(name, 'u', sizeof(name));
  memset(pass, 'p', sizeof(pass));
  atun_socks5_user u = {name, 255, pass, 255};
  close_server();
  srv = server(&u, 1, 1);
  atun_socks5_conn_init(&conn, srv, T0);
  feed_ok(greet_userpass, sizeof(greet_userpass));
  expect_out(chose_userpass, 2);
  uint8_t buf[ATUN_SOCKS5_MSG_MAX];
  size_t n = auth_msg(buf, name, 255, pass, 255);
  cr_assert_eq(n, ATUN_SOCKS5_MSG_MAX);
  feed_ok(buf, n);
  expect_out(auth_good, 2);
  feed_ok(req_v4, sizeof(req_v4));
  cr_assert_eq(strlen(atun_socks5_conn_request(&conn)->user), 255);
}

/* --- pins without users --------------------------------------------------------- */

TestSuite(pin, .init = open_noauth, .fini = close_server);

static void expect_pin(const char *user, const char *pin) {
  atun_socks5_conn_init(&conn, srv, T0);
  login(user, "ignored");
  feed_ok(req_v4, sizeof(req_v4));
  const atun_socks5_request *r = atun_socks5_conn_request(&conn);
  cr_assert_str_eq(r->pin, pin, "user %s", user);
  cr_assert_str_empty(r->user);
}

static void expect_bad_pin(const char *user) {
  atun_socks5_conn_init(&conn, srv, T0);
  login_refused(user, "x", ATUN_SOCKS5_CLOSE_BAD_PIN);
}

Test(pin, forms) {
  expect_pin("+db-agent", "db-agent");
  expect_pin("whoever+edge.eu_1", "edge.eu_1");
  expect_pin("x+y+edge", "edge");
  expect_pin("anything", "");
  expect_pin("6f1c2a9e-3b4d-4c5e-8f70-123456789abc",
             ""); /* no separator: ignored */
  expect_pin("+6f1c2a9e-3b4d-4c5e-8f70-123456789abc",
             "6f1c2a9e-3b4d-4c5e-8f70-123456789abc");
}

Test(pin, bounds_and_charset) {
  char user[80];
  user[0] = '+';
  memset(user + 1, 'a', ATUN_AGENT_NAME_MAX);
  user[1 + ATUN_AGENT_NAME_MAX] = '\0';
  expect_pin(user, user + 1); /* 63 bytes: the longest name */
  user[1 + ATUN_AGENT_NAME_MAX] = 'a';
  user[2 + ATUN_AGENT_NAME_MAX] = '\0';
  expect_bad_pin(user); /* 64 */
  expect_bad_pin("x+");
  expect_bad_pin("+-leading-dash");
  expect_bad_pin("+a/b");
  expect_bad_pin("+caf\xc3\xa9");
}

Test(pin, disabled) {
  close_server();
  srv = server(NULL, 0, 0);
  expect_bad_pin("+db-agent");
  expect_pin("plain-name", "");
}

Test(pin, empty_password_accepted_without_users) {
  feed_ok(greet_userpass, sizeof(greet_userpass));
  expect_out(chose_userpass, 2);
  const uint8_t a[] = {1, 3, '+', 'd', 'b', 0};
  feed_ok(a, sizeof(a));
  expect_out(auth_good, 2);
  feed_ok(req_v4, sizeof(req_v4));
  cr_assert_str_eq(atun_socks5_conn_request(&conn)->pin, "db");
}

/* --- requests ---------------------------------------------------------------------- */

TestSuite(request, .init = open_noauth, .fini = close_server);

Test(request, ipv6) {
  greet_noauth();
  uint8_t r[22] = {5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8};
  r[19] = 1;
  r[20] = 0x1f;
  r[21] = 0x90;
  feed_ok(r, sizeof(r));
  const atun_socks5_request *q = atun_socks5_conn_request(&conn);
  cr_assert_eq(q->target.kind, ATUN_TARGET_ADDR);
  cr_assert_eq(q->target.addr.family, ATUN_AF_INET6);
  cr_assert_eq(memcmp(q->target.addr.bytes, r + 4, 16), 0);
  cr_assert_eq(q->port, 8080);
}

Test(request, ipv4_mapped_ipv6_is_folded) {
  greet_noauth();
  const uint8_t r[22] = {5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
                         127, 0, 0, 1, 0, 22};
  feed_ok(r, sizeof(r));
  const atun_socks5_request *q = atun_socks5_conn_request(&conn);
  cr_assert_eq(q->target.addr.family, ATUN_AF_INET);
  cr_assert_eq(memcmp(q->target.addr.bytes, "\x7f\0\0\x01", 4), 0);
}

Test(request, domain_is_normalized) {
  greet_noauth();
  const atun_socks5_request *q = request_domain("Git.Corp.Example.", 17);
  cr_assert_eq(q->target.kind, ATUN_TARGET_HOST);
  cr_assert_str_eq(q->target.host, "git.corp.example");
  cr_assert_eq(q->port, 80);
}

Test(request, domain_ip_literals_become_addresses) {
  greet_noauth();
  const atun_socks5_request *q = request_domain("10.9.8.7", 8);
  cr_assert_eq(q->target.kind, ATUN_TARGET_ADDR);
  cr_assert_eq(q->target.addr.family, ATUN_AF_INET);
  cr_assert_eq(memcmp(q->target.addr.bytes, "\x0a\x09\x08\x07", 4), 0);

  atun_socks5_conn_init(&conn, srv, T0);
  greet_noauth();
  q = request_domain("[fd00::1]", 9);
  cr_assert_eq(q->target.kind, ATUN_TARGET_ADDR);
  cr_assert_eq(q->target.addr.family, ATUN_AF_INET6);
  cr_assert_eq(q->target.addr.bytes[0], 0xfd);
  cr_assert_eq(q->target.addr.bytes[15], 1);

  atun_socks5_conn_init(&conn, srv, T0);
  greet_noauth();
  q = request_domain("::ffff:10.0.0.1", 15);
  cr_assert_eq(q->target.addr.family, ATUN_AF_INET);
  cr_assert_eq(memcmp(q->target.addr.bytes, "\x0a\0\0\x01", 4), 0);
}

Test(request, single_label_name) {
  greet_noauth();
  const atun_socks5_request *q = request_domain("Intranet", 8);
  cr_assert_eq(q->target.kind, ATUN_TARGET_HOST);
  cr_assert_str_eq(q->target.host, "intranet");
}

Test(request, longest_valid_name) {
  /* 253 bytes: four labels of 63 and a dot between each, then ".a" */
  char name[256];
  size_t n = 0;
  for (int l = 0; l < 3; ++l) {
    memset(name + n, 'a' + l, 63);
    n += 63;
    name[n++] = '.';
  }
  memset(name + n, 'x', 61);
  n += 61;
  cr_assert_eq(n, 253);
  greet_noauth();
  const atun_socks5_request *q = request_domain(name, n);
  cr_assert_eq(strlen(q->target.host), 253);
}

static void expect_bad_domain(const char *name, size_t n, uint16_t port, uint8_t code) {
  atun_socks5_conn_init(&conn, srv, T0);
  greet_noauth();
  uint8_t buf[300];
  size_t len = domain_req(buf, name, n, port);
  cr_assert_eq(feed(buf, len), ATUN_ERR_PROTO, "name %.*s", (int)n, name);
  expect_out(rep(code), 10);
  expect_closing(ATUN_SOCKS5_CLOSE_BAD_TARGET, ATUN_ERR_PROTO);
}

Test(request, unusable_domains) {
  char big[255];
  memset(big, 'a', sizeof(big));
  for (size_t i = 50; i < sizeof(big); i += 50) big[i] = '.';
  expect_bad_domain(big, 255, 80, 0x04);     /* above 253 */
  expect_bad_domain("a..b", 4, 80, 0x04);
  expect_bad_domain("under_score.example", 19, 80, 0x04);
  expect_bad_domain("nul\0.example", 12, 80, 0x04);
  expect_bad_domain("10.1", 4, 80, 0x04);    /* inet_aton would take it */
  expect_bad_domain("0x7f.1", 6, 80, 0x04);
  expect_bad_domain("2130706433", 10, 80, 0x04);
  expect_bad_domain("[not.an.address]", 16, 80, 0x04);
  expect_bad_domain("[]", 2, 80, 0x04);
  expect_bad_domain("-x.example", 10, 80, 0x04);
  expect_bad_domain("ok.example", 10, 0, 0x02); /* port 0 */
}

Test(request, empty_domain_is_answered_at_once) {
  greet_noauth();
  const uint8_t r[] = {5, 1, 0, 3, 0};
  cr_assert_eq(feed(r, sizeof(r)), ATUN_ERR_PROTO);
  expect_out(rep(0x04), 10);
  expect_closing(ATUN_SOCKS5_CLOSE_BAD_TARGET, ATUN_ERR_PROTO);
}

Test(request, ipv4_port_zero) {
  greet_noauth();
  const uint8_t r[] = {5, 1, 0, 1, 10, 0, 0, 1, 0, 0};
  cr_assert_eq(feed(r, sizeof(r)), ATUN_ERR_PROTO);
  expect_out(rep(0x02), 10);
  expect_closing(ATUN_SOCKS5_CLOSE_BAD_TARGET, ATUN_ERR_PROTO);
}

Test(request, unsupported_commands) {
  const uint8_t cmds[] = {ATUN_SOCKS5_CMD_BIND, ATUN_SOCKS5_CMD_UDP_ASSOCIATE, 0, 9};
  for (size_t i = 0; i < sizeof(cmds); ++i) {
    atun_socks5_conn_init(&conn, srv, T0);
    greet_noauth();
    uint8_t r[10];
    memcpy(r, req_v4, sizeof(r));
    r[1] = cmds[i];
    /* Answered on the command byte; the rest is never read. */
    cr_assert_eq(feed(r, sizeof(r)), ATUN_ERR_PROTO);
    expect_out(rep(0x07), 10);
    expect_closing(ATUN_SOCKS5_CLOSE_BAD_COMMAND, ATUN_ERR_PROTO);
  }
}

Test(request, unknown_address_type) {
  const uint8_t types[] = {0, 2, 5, 0xff};
  for (size_t i = 0; i < sizeof(types); ++i) {
    atun_socks5_conn_init(&conn, srv, T0);
    greet_noauth();
    const uint8_t r[] = {5, 1, 0, types[i]};
    cr_assert_eq(feed(r, sizeof(r)), ATUN_ERR_PROTO);
    expect_out(rep(0x08), 10);
    expect_closing(ATUN_SOCKS5_CLOSE_BAD_ATYP, ATUN_ERR_PROTO);
  }
}

Test(request, bad_version) {
  greet_noauth();
  cr_assert_eq(feed("\x04\x01\x00\x01", 4), ATUN_ERR_PROTO);
  expect_out(NULL, 0);
  expect_closing(ATUN_SOCKS5_CLOSE_BAD_VERSION, ATUN_ERR_PROTO);
}

Test(request, reserved_byte_ignored) {
  greet_noauth();
  uint8_t r[10];
  memcpy(r, req_v4, sizeof(r));
  r[2] = 0x7f;
  feed_ok(r, sizeof(r));
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_CONNECT);
}

/* --- chunking and pipelining ---------------------------------------------------------- */

TestSuite(stream, .init = open_auth, .fini = close_server);

/* greeting + auth + domain request, as one buffer. */
static size_t whole_handshake(uint8_t *buf) {
  size_t n = 0;
  const uint8_t g[] = {5, 2, 0, 2};
  memcpy(buf, g, sizeof(g));
  n += sizeof(g);
  n += auth_msg(buf + n, "alice+db-agent", 14, "s3cret", 6);
  n += domain_req(buf + n, "Intranet.Corp.Example", 21, 8443);
  return n;
}

static const uint8_t handshake_out[] = {5, 2, 1, 0};

static void expect_intranet(void) {
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_CONNECT);
  const atun_socks5_request *r = atun_socks5_conn_request(&conn);
  cr_assert_str_eq(r->target.host, "intranet.corp.example");
  cr_assert_eq(r->port, 8443);
  cr_assert_str_eq(r->pin, "db-agent");
  cr_assert_str_eq(r->user, "alice");
}

Test(stream, one_byte_at_a_time) {
  uint8_t buf[128];
  size_t n = whole_handshake(buf);
  for (size_t i = 0; i < n; ++i) {
    cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_HANDSHAKE, "byte %zu", i);
    cr_assert_eq(feed(buf + i, 1), 1, "byte %zu", i);
  }
  expect_intranet();
  expect_out(handshake_out, sizeof(handshake_out));
}

Test(stream, every_split_point) {
  uint8_t buf[128];
  size_t n = whole_handshake(buf);
  for (size_t cut = 0; cut <= n; ++cut) {
    atun_socks5_conn_init(&conn, srv, T0);
    feed_ok(buf, cut);
    feed_ok(buf + cut, n - cut);
    expect_intranet();
    expect_out(handshake_out, sizeof(handshake_out));
  }
}

Test(stream, pipelined_data_stays_with_caller) {
  uint8_t buf[160];
  size_t n = whole_handshake(buf);
  const char early[] = "GET / HTTP/1.1\r\n\r\n";
  memcpy(buf + n, early, sizeof(early) - 1);
  cr_assert_eq(feed(buf, n + sizeof(early) - 1), (ssize_t)n);
  expect_intranet();
  /* The queue holds every reply even when the caller never drains it. */
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_OK, NULL, 0), 0);
  uint8_t want[4 + 10];
  memcpy(want, handshake_out, 4);
  memcpy(want + 4, rep(0), 10);
  expect_out(want, sizeof(want));
  cr_assert_eq(feed(buf + n, sizeof(early) - 1), 0);
}

Test(stream, pipelined_byte_by_byte_stops_at_request_end) {
  uint8_t buf[160];
  size_t n = whole_handshake(buf);
  buf[n] = 'X';
  size_t taken = 0;
  for (size_t i = 0; i <= n; ++i) taken += (size_t)feed(buf + i, 1);
  cr_assert_eq(taken, n);
  expect_intranet();
}

Test(stream, worst_case_output_fits) {
  /* Method + auth status + an IPv6 bound reply, never drained. */
  uint8_t buf[128];
  size_t n = whole_handshake(buf);
  feed_ok(buf, n);
  atun_addr bound = {ATUN_AF_INET6, {0x20, 0x01, [15] = 9}};
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_OK, &bound, 1080), 0);
  size_t len;
  const uint8_t *out = atun_socks5_conn_out(&conn, &len);
  cr_assert_eq(len, 4 + ATUN_SOCKS5_REPLY_MAX);
  cr_assert_leq(len, ATUN_SOCKS5_OUT_MAX);
  cr_assert_eq(out[4 + 3], ATUN_SOCKS5_ATYP_IPV6);
  cr_assert_eq(memcmp(out + 8, bound.bytes, 16), 0);
  cr_assert_eq(out[24], 1080 >> 8);
  cr_assert_eq(out[25], 1080 & 0xff);
}

Test(stream, out_consume_partial_and_clamped) {
  uint8_t buf[128];
  size_t n = whole_handshake(buf);
  feed_ok(buf, n);
  atun_socks5_conn_out_consume(&conn, 1);
  expect_out(handshake_out + 1, 3);
  atun_socks5_conn_out_consume(&conn, 100);
  expect_out(NULL, 0);
}

/* --- replies ---------------------------------------------------------------------------- */

TestSuite(reply, .init = open_noauth, .fini = close_server);

Test(reply, status_mapping) {
  const struct {
    uint64_t status;
    uint8_t code;
  } table[] = {
      {ATUN_CONNECT_OK, 0x00},          {ATUN_CONNECT_DENIED, 0x02},
      {ATUN_CONNECT_DNS_FAILURE, 0x04}, {ATUN_CONNECT_UNREACHABLE, 0x03},
      {ATUN_CONNECT_REFUSED, 0x05},     {ATUN_CONNECT_TIMEOUT, 0x06},
      {ATUN_CONNECT_INTERNAL, 0x01},    {ATUN_CONNECT_STATUS_MAX + 1, 0x01},
      {UINT64_MAX, 0x01},
  };
  for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); ++i)
    cr_assert_eq(atun_socks5_reply_code(table[i].status), table[i].code, "status %zu", i);
}

Test(reply, each_status_through_the_connection) {
  for (uint64_t s = 0; s <= ATUN_CONNECT_STATUS_MAX; ++s) {
    atun_socks5_conn_init(&conn, srv, T0);
    greet_noauth();
    feed_ok(req_v4, sizeof(req_v4));
    cr_assert_eq(atun_socks5_conn_reply(&conn, s, NULL, 0), 0);
    expect_out(rep(atun_socks5_reply_code(s)), 10);
    if (s == ATUN_CONNECT_OK) {
      cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_ESTABLISHED);
    } else {
      expect_closing(ATUN_SOCKS5_CLOSE_CONNECT_FAILED, ATUN_ERR_CLOSED);
    }
  }
}

Test(reply, bad_calls) {
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_OK, NULL, 0), ATUN_ERR_STATE);
  greet_noauth();
  feed_ok(req_v4, sizeof(req_v4));
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_STATUS_MAX + 1, NULL, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_addr bad = {0, {0}};
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_OK, &bad, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_CONNECT);
  expect_out(NULL, 0);
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_REFUSED, NULL, 0), 0);
  cr_assert_eq(atun_socks5_conn_reply(&conn, ATUN_CONNECT_OK, NULL, 0), ATUN_ERR_STATE);
}

Test(reply, encode_bounds) {
  uint8_t buf[ATUN_SOCKS5_REPLY_MAX];
  atun_addr v4 = {ATUN_AF_INET, {192, 0, 2, 1}};
  atun_addr v6 = {ATUN_AF_INET6, {0xfe, 0x80, [15] = 1}};
  cr_assert_eq(atun_socks5_reply_encode(buf, 9, 0, &v4, 1), ATUN_ERR_NOBUF);
  cr_assert_eq(atun_socks5_reply_encode(buf, 10, 0, &v4, 0x1234), 10);
  const uint8_t want4[] = {5, 0, 0, 1, 192, 0, 2, 1, 0x12, 0x34};
  cr_assert_eq(memcmp(buf, want4, 10), 0);
  cr_assert_eq(atun_socks5_reply_encode(buf, 21, 5, &v6, 1), ATUN_ERR_NOBUF);
  cr_assert_eq(atun_socks5_reply_encode(buf, 22, 5, &v6, 1), 22);
  cr_assert_eq(buf[1], 5);
  cr_assert_eq(buf[3], 4);
  atun_addr bad = {7, {0}};
  cr_assert_eq(atun_socks5_reply_encode(buf, sizeof(buf), 0, &bad, 1),
               ATUN_ERR_INVALID_ARGUMENT);
}

/* --- timeout -------------------------------------------------------------------------------- */

TestSuite(timeout, .init = open_noauth, .fini = close_server);

Test(timeout, handshake_deadline) {
  atun_tstamp deadline = T0 + ATUN_SOCKS5_HANDSHAKE_TIMEOUT_NS;
  cr_assert_eq(atun_socks5_conn_expiry(&conn), deadline);
  feed_ok("\x05\x01", 2);
  cr_assert_eq(atun_socks5_conn_handle_expiry(&conn, deadline - 1), 0);
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_HANDSHAKE);
  cr_assert_eq(atun_socks5_conn_handle_expiry(&conn, deadline), ATUN_ERR_TIMEOUT);
  expect_out(NULL, 0);
  expect_closing(ATUN_SOCKS5_CLOSE_TIMEOUT, ATUN_ERR_TIMEOUT);
  cr_assert_eq(atun_socks5_conn_expiry(&conn), ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_socks5_conn_handle_expiry(&conn, deadline + SEC), 0);
}

Test(timeout, request_stage_is_the_callers) {
  greet_noauth();
  feed_ok(req_v4, sizeof(req_v4));
  cr_assert_eq(atun_socks5_conn_expiry(&conn), ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_socks5_conn_handle_expiry(&conn, ATUN_TSTAMP_MAX), 0);
  cr_assert_eq(atun_socks5_conn_state(&conn), ATUN_SOCKS5_CONNECT);
}

Test(timeout, deadline_saturates) {
  atun_socks5_conn_init(&conn, srv, ATUN_TSTAMP_MAX - 1);
  cr_assert_eq(atun_socks5_conn_expiry(&conn), ATUN_TSTAMP_MAX);
}

Test(timeout, custom_timeout) {
  close_server();
  atun_socks5_settings s;
  atun_socks5_settings_default(&s);
  s.handshake_timeout_ns = 3 * SEC;
  cr_assert_eq(atun_socks5_server_new(&srv, &s, NULL, 0, atun_mem_default()), 0);
  atun_socks5_conn_init(&conn, srv, T0);
  cr_assert_eq(atun_socks5_conn_expiry(&conn), T0 + 3 * SEC);
}

/* --- server -------------------------------------------------------------------------------- */

Test(server, bad_arguments) {
  atun_socks5_server *s = NULL;
  const atun_mem *mem = atun_mem_default();
  atun_socks5_settings st;
  atun_socks5_settings_default(&st);
  st.handshake_timeout_ns = 0;
  cr_assert_eq(atun_socks5_server_new(&s, &st, NULL, 0, mem), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_socks5_server_new(&s, NULL, NULL, 1, mem), ATUN_ERR_INVALID_ARGUMENT);
  char long_field[256];
  memset(long_field, 'x', sizeof(long_field));
  const atun_socks5_user bad[] = {
      {"", 0, "p", 1},        {"u", 1, "", 0},        {NULL, 1, "p", 1},
      {"u", 1, NULL, 1},      {long_field, 256, "p", 1}, {"u", 1, long_field, 256},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
    cr_assert_eq(atun_socks5_server_new(&s, NULL, &bad[i], 1, mem),
                 ATUN_ERR_INVALID_ARGUMENT, "user %zu", i);
  const atun_socks5_user dup[] = {alice, {"alice", 5, "other", 5}};
  cr_assert_eq(atun_socks5_server_new(&s, NULL, dup, 2, mem), ATUN_ERR_EXISTS);
  cr_assert_null(s);
}

Test(server, user_count_bound) {
  static atun_socks5_user users[ATUN_SOCKS5_USERS_MAX + 1];
  static char names[ATUN_SOCKS5_USERS_MAX + 1][8];
  for (size_t i = 0; i <= ATUN_SOCKS5_USERS_MAX; ++i) {
    int n = snprintf(names[i], sizeof(names[i]), "u%zu", i);
    users[i] = (atun_socks5_user){names[i], (size_t)n, "pw", 2};
  }
  atun_socks5_server *s = NULL;
  cr_assert_eq(atun_socks5_server_new(&s, NULL, users, ATUN_SOCKS5_USERS_MAX + 1,
                                      atun_mem_default()),
               ATUN_ERR_LIMIT);
  cr_assert_eq(atun_socks5_server_new(&s, NULL, users, ATUN_SOCKS5_USERS_MAX,
                                      atun_mem_default()),
               0);
  cr_assert_eq(atun_socks5_server_nusers(s), ATUN_SOCKS5_USERS_MAX);
  /* The last user authenticates like the first. */
  srv = s;
  atun_socks5_conn_init(&conn, srv, T0);
  login("u255", "pw");
  atun_socks5_server_del(s);
  atun_socks5_server_del(NULL);
}

Test(server, allocation_failures) {
  atun_socks5_user users[2] = {alice, plus_user};
  for (size_t nusers = 0; nusers <= 2; nusers += 2) {
    long need = nusers > 0 ? 2 : 1;
    for (long k = 0; k < need; ++k) {
      atun_failmem fm;
      atun_failmem_init(&fm, k);
      atun_socks5_server *s = NULL;
      cr_assert_eq(atun_socks5_server_new(&s, NULL, users, nusers, &fm.mem),
                   ATUN_ERR_NOMEM, "users %zu fail at %ld", nusers, k);
      cr_assert_null(s);
      cr_assert_eq(fm.live, 0);
    }
    atun_failmem fm;
    atun_failmem_init(&fm, need);
    atun_socks5_server *s = NULL;
    cr_assert_eq(atun_socks5_server_new(&s, NULL, users, nusers, &fm.mem), 0);
    cr_assert_eq(fm.live, need);
    atun_socks5_server_del(s);
    cr_assert_eq(fm.live, 0);
  }
}

Test(server, close_reason_names) {
  const char *names[] = {"none",       "bad_version", "no_method", "auth_failed",
                         "bad_pin",    "bad_command", "bad_atyp",  "bad_target",
                         "timeout",    "connect_failed"};
  for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); ++i)
    cr_assert_str_eq(atun_socks5_close_reason_name(i), names[i]);
  cr_assert_str_eq(atun_socks5_close_reason_name(10), "unknown");
  cr_assert_str_eq(atun_socks5_close_reason_name(-1), "unknown");
}

Test(server, swapping_servers_mid_handshake) {
  /* The greeting is answered under a server without users; the reload
   * brings users, and the authentication is checked against them. */
  atun_socks5_server *open = server(NULL, 0, 1);
  atun_socks5_server *locked = server(&alice, 1, 1);
  atun_socks5_conn_init(&conn, open, T0);
  cr_assert_eq(atun_socks5_conn_feed(&conn, open, greet_userpass, 3), 3);
  uint8_t buf[64];
  size_t n = auth_msg(buf, "bob", 3, "x", 1);
  cr_assert_eq(atun_socks5_conn_feed(&conn, locked, buf, n), ATUN_ERR_DENIED);
  cr_assert_eq(atun_socks5_conn_close_reason(&conn), ATUN_SOCKS5_CLOSE_AUTH_FAILED);
  atun_socks5_server_del(open);
  atun_socks5_server_del(locked);
}
