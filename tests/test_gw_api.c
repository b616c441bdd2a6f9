/*
 * The gateway's API handlers, admin token checks and metrics text, driven
 * without sockets: requests go through an atun_http_session (bytes in,
 * bytes out) into the router the gateway builds, backed by a real store in
 * a temporary directory, a real CA and a registry fed directly.
 *
 * The gateway's sources are compiled into this test; the QUIC listener
 * (agents.c) is replaced by a stub that records what revocation asked of
 * it.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../gateway/api.c"
#include "../gateway/auth.c"
#include "../gateway/clock.c"
#include "../gateway/metrics.c"
#include "../gateway/renew.c"
#include "../gateway/state.c"
#include "../gateway/tls.c"
#include "../gateway/uuid.c"

#define S ATUN_NS_PER_S
#define T0 ((atun_tstamp)5000 * S)

/* --- stubs for the QUIC side and main.c --------------------------------------------- */

static size_t stub_closes;
static uint8_t stub_closed_id[16];
static uint64_t stub_closed_app;

size_t atun_gw_agents_close(atun_gw *g, const uint8_t *id, uint64_t app_error,
                            const char *reason) {
  (void)g, (void)reason;
  ++stub_closes;
  memcpy(stub_closed_id, id, 16);
  stub_closed_app = app_error;
  return 1;
}

int atun_gw_exit_for(int err) { return err == 0 ? 0 : 1; }

/* --- fixture ---------------------------------------------------------------------------- */

static atun_gw gw;
static char dir[64];
static atun_config_admin_token tokens[3];
static int fault_at; /* atun_store_fault to fail at, 0 = none */

static const char *const ADMIN = "admin-secret-for-tests";
static const char *const READER = "reader-secret-for-tests";
static const char *const WRITER = "writer-secret-for-tests";

/* Log lines of the current test, kept to check what is (not) written. */
static char logbuf[1 << 16];
static size_t loglen;

static void log_capture(atun_log_level level, const char *line, size_t len, void *ud) {
  (void)level, (void)ud;
  if (loglen + len < sizeof(logbuf)) {
    memcpy(logbuf + loglen, line, len);
    loglen += len;
    logbuf[loglen] = '\0';
  }
}

static int store_fault(atun_store_fault point, void *ud) {
  (void)ud;
  return (int)point == fault_at;
}

static void add_token(size_t i, const char *name, const char *secret, unsigned scopes) {
  snprintf(tokens[i].name, sizeof(tokens[i].name), "%s", name);
  wc_Sha256Hash((const uint8_t *)secret, (word32)strlen(secret), tokens[i].sha256);
  tokens[i].scopes = scopes;
}

static void setup(void) {
  memset(&gw, 0, sizeof(gw));
  stub_closes = 0;
  fault_at = 0;
  loglen = 0;
  logbuf[0] = '\0';
  atun_log_set_sink(log_capture, NULL);
  snprintf(dir, sizeof(dir), "/tmp/atun-gwapi.XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  atun_config_gateway_default(&gw.cfg, NULL);
  snprintf(gw.cfg.state_dir, sizeof(gw.cfg.state_dir), "%s", dir);
  snprintf(gw.cfg.server_names[0], sizeof(gw.cfg.server_names[0]), "gw.example");
  gw.cfg.server_name_count = 1;
  gw.cfg.api_listen.port = 8443;
  gw.cfg.quic_listen.port = 4433;
  gw.cfg.limits.enroll_burst = 3;
  gw.cfg.limits.enroll_interval_ns = 10 * S;
  add_token(0, "admin", ADMIN, ATUN_CONFIG_SCOPE_READ | ATUN_CONFIG_SCOPE_WRITE);
  add_token(1, "reader", READER, ATUN_CONFIG_SCOPE_READ);
  add_token(2, "writer", WRITER, ATUN_CONFIG_SCOPE_WRITE);
  gw.cfg.admin_tokens = tokens;
  gw.cfg.admin_token_count = 3;

  gw.pki = calloc(1, sizeof(*gw.pki));
  cr_assert_not_null(gw.pki);
  atun_ca_settings cs;
  atun_gw_ca_settings(&cs, &gw.cfg);
  const char *hosts[] = {"gw.example", "127.0.0.1"};
  cr_assert_eq(atun_gw_pki_generate(gw.pki, &cs, hosts, 2, atun_gw_wall_now()), 0);

  char path[ATUN_GW_PATH_MAX];
  atun_store_settings ss;
  atun_store_settings_default(&ss);
  ss.fault = store_fault;
  cr_assert_eq(atun_gw_path(path, dir, ATUN_GW_STORE_FILE), 0);
  cr_assert_eq(atun_store_open(&gw.store, path, &ss), 0);
  cr_assert_eq(atun_registry_new(&gw.reg, NULL, NULL, NULL, atun_mem_default()), 0);
  cr_assert_eq(atun_gw_api_init(&gw), 0);
}

static void teardown(void) {
  atun_log_set_sink(NULL, NULL);
  atun_gw_api_free(&gw);
  atun_gw_tls_free(&gw);
  atun_registry_del(gw.reg);
  atun_store_close(gw.store);
  free(gw.pki);
  gw.cfg.admin_tokens = NULL;
  gw.cfg.admin_token_count = 0;
  atun_config_gateway_free(&gw.cfg);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  cr_assert_eq(system(cmd), 0);
}

/* --- one request through a session -------------------------------------------------------- */

typedef struct reply {
  int status;
  char head[4096];
  char *body; /* NUL-terminated copy */
  cJSON *json;
} reply;

static void reply_free(reply *r) {
  free(r->body);
  cJSON_Delete(r->json);
  memset(r, 0, sizeof(*r));
}

static void call_at(reply *r, atun_tstamp ts, const char *method, const char *path,
                    const char *bearer, const char *body) {
  static char raw[1 << 17];
  int n = snprintf(raw, sizeof(raw), "%s %s HTTP/1.1\r\nHost: gw.example\r\n", method, path);
  if (bearer != NULL) n += snprintf(raw + n, sizeof(raw) - (size_t)n, "Authorization: Bearer %s\r\n", bearer);
  if (body != NULL)
    n += snprintf(raw + n, sizeof(raw) - (size_t)n,
                  "Content-Type: application/json\r\nContent-Length: %zu\r\n", strlen(body));
  n += snprintf(raw + n, sizeof(raw) - (size_t)n, "\r\n%s", body != NULL ? body : "");
  cr_assert_lt((size_t)n, sizeof(raw));

  atun_http_session s;
  atun_http_settings hs;
  atun_http_settings_default(&hs);
  atun_addr peer;
  atun_addr_parse(&peer, "192.0.2.7");
  cr_assert_eq(atun_http_session_init(&s, &hs, gw.router, &peer, 40000, ts, atun_mem_default()), 0);
  cr_assert_eq(atun_http_session_feed(&s, (const uint8_t *)raw, (size_t)n, ts), (size_t)n);
  const uint8_t *out;
  size_t len = atun_http_session_output(&s, &out);
  cr_assert_gt(len, 12);
  memset(r, 0, sizeof(*r));
  cr_assert_eq(sscanf((const char *)out, "HTTP/1.1 %d", &r->status), 1);
  const char *sep = NULL;
  for (size_t i = 0; sep == NULL && i + 4 <= len; ++i)
    if (memcmp(out + i, "\r\n\r\n", 4) == 0) sep = (const char *)out + i;
  cr_assert_not_null(sep);
  size_t hlen = (size_t)(sep - (const char *)out);
  cr_assert_lt(hlen, sizeof(r->head));
  memcpy(r->head, out, hlen);
  size_t blen = len - hlen - 4;
  r->body = calloc(1, blen + 1);
  memcpy(r->body, sep + 4, blen);
  if (strstr(r->head, "application/json") != NULL) r->json = cJSON_Parse(r->body);
  atun_http_session_output_consumed(&s, len, ts);
  atun_http_session_free(&s);
}

static void call(reply *r, const char *method, const char *path, const char *bearer,
                 const char *body) {
  call_at(r, T0, method, path, bearer, body);
}

static const char *jstr(const reply *r, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->json, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Asserts |status| and, for errors, the one error shape with |code|. */
static void expect(const reply *r, int status, const char *code) {
  cr_assert_eq(r->status, status, "status %d, wanted %d: %s", r->status, status, r->body);
  if (code == NULL) return;
  cr_assert_not_null(r->json, "error body is not JSON: %s", r->body);
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(r->json, "error");
  cr_assert(cJSON_IsObject(e));
  cr_assert_eq(cJSON_GetArraySize(r->json), 1);
  cr_assert_eq(cJSON_GetArraySize(e), 2);
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
  cr_assert(cJSON_IsString(c) && cJSON_IsString(m) && m->valuestring[0] != '\0');
  cr_assert_str_eq(c->valuestring, code);
}

/* --- helpers: tokens, CSRs, enrollment bodies ------------------------------------------------- */

static void issue_token(char secret[ATUN_TOKEN_SECRET_STRLEN]) {
  cr_assert_eq(atun_token_issue(atun_store_token_store(gw.store), atun_ca_sysrand(),
                                atun_gw_wall_now(), 3600 * S, NULL, secret,
                                ATUN_TOKEN_SECRET_STRLEN, NULL), 0);
}

static char *csr_pem(const char *name) {
  uint8_t key[ATUN_CA_KEY_DER_MAX], der[ATUN_CA_DER_MAX];
  size_t keylen, derlen, pemlen;
  cr_assert_eq(atun_ca_key_generate(key, sizeof(key), &keylen), 0);
  cr_assert_eq(atun_ca_csr_make(key, keylen, name, "11111111-2222-4333-8444-555555555555", der,
                                sizeof(der), &derlen), 0);
  char *pem = atun_gw_pem(ATUN_PEM_CSR, der, derlen, &pemlen);
  cr_assert_not_null(pem);
  return pem;
}

static char *enroll_body(const char *id, const char *name, const char *csr) {
  cJSON *o = cJSON_CreateObject();
  if (id != NULL) cJSON_AddStringToObject(o, "agent_id", id);
  if (name != NULL) cJSON_AddStringToObject(o, "agent_name", name);
  if (csr != NULL) cJSON_AddStringToObject(o, "csr_pem", csr);
  char *text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return text;
}

static const char *const ID1 = "0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
static const char *const ID2 = "9f3c1e2d-4b5a-4c6d-8e7f-a0b1c2d3e4f5";

/* Enrolls |id| as |name| through the API; returns the status. */
static int enroll(const char *id, const char *name) {
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  issue_token(secret);
  char *csr = csr_pem(name);
  char *body = enroll_body(id, name, csr);
  reply r;
  call(&r, "POST", API_PREFIX "/enroll", secret, body);
  int status = r.status;
  reply_free(&r);
  free(body);
  free(csr);
  return status;
}

static size_t audit_count(const char *actor, const char *action) {
  atun_audit_record rows[64];
  ssize_t n = atun_store_audit_list(gw.store, rows, 64, 0);
  cr_assert_geq(n, 0);
  size_t k = 0;
  for (ssize_t i = 0; i < n; ++i)
    if (strcmp(rows[i].actor, actor) == 0 && strcmp(rows[i].action, action) == 0) ++k;
  return k;
}

/* ========================================================================================
 * Admin tokens, base64url, UUIDs, the text buffer
 * ======================================================================================== */

Test(gw_auth, check_results) {
  atun_config_admin_token t[2];
  memset(t, 0, sizeof(t));
  snprintf(t[0].name, sizeof(t[0].name), "r");
  wc_Sha256Hash((const uint8_t *)"aaa", 3, t[0].sha256);
  t[0].scopes = ATUN_CONFIG_SCOPE_READ;
  snprintf(t[1].name, sizeof(t[1].name), "w");
  wc_Sha256Hash((const uint8_t *)"bbb", 3, t[1].sha256);
  t[1].scopes = ATUN_CONFIG_SCOPE_WRITE | ATUN_CONFIG_SCOPE_READ;
  const char *name;
  cr_assert_eq(atun_gw_auth_check(t, 2, "aaa", 3, ATUN_CONFIG_SCOPE_READ, &name), ATUN_GW_AUTH_OK);
  cr_assert_str_eq(name, "r");
  cr_assert_eq(atun_gw_auth_check(t, 2, "aaa", 3, ATUN_CONFIG_SCOPE_WRITE, &name),
               ATUN_GW_AUTH_SCOPE);
  cr_assert_str_eq(name, "r");
  cr_assert_eq(atun_gw_auth_check(t, 2, "bbb", 3, ATUN_CONFIG_SCOPE_WRITE, &name), ATUN_GW_AUTH_OK);
  cr_assert_str_eq(name, "w");
  cr_assert_eq(atun_gw_auth_check(t, 2, "aab", 3, ATUN_CONFIG_SCOPE_READ, &name),
               ATUN_GW_AUTH_INVALID);
  cr_assert_null(name);
  cr_assert_eq(atun_gw_auth_check(t, 2, "aa", 2, ATUN_CONFIG_SCOPE_READ, &name),
               ATUN_GW_AUTH_INVALID);
  cr_assert_eq(atun_gw_auth_check(t, 2, NULL, 0, ATUN_CONFIG_SCOPE_READ, &name),
               ATUN_GW_AUTH_MISSING);
  cr_assert_eq(atun_gw_auth_check(t, 0, "aaa", 3, ATUN_CONFIG_SCOPE_READ, &name),
               ATUN_GW_AUTH_INVALID);
  /* At the bound a token is hashed; one byte more is refused unread. */
  char big[ATUN_GW_BEARER_MAX + 1];
  memset(big, 'x', sizeof(big));
  cr_assert_eq(atun_gw_auth_check(t, 2, big, ATUN_GW_BEARER_MAX, ATUN_CONFIG_SCOPE_READ, &name),
               ATUN_GW_AUTH_INVALID);
  cr_assert_eq(atun_gw_auth_check(t, 2, big, sizeof(big), ATUN_CONFIG_SCOPE_READ, &name),
               ATUN_GW_AUTH_MISSING);
}

Test(gw_auth, base64url_vectors) {
  /* RFC 4648 section 10, in the URL alphabet without padding. */
  static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  static const char *const want[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
  char out[16];
  for (size_t i = 0; i < 7; ++i) {
    cr_assert_eq(atun_gw_base64url(out, (const uint8_t *)in[i], strlen(in[i])), strlen(want[i]));
    cr_assert_str_eq(out, want[i]);
  }
  const uint8_t hi[] = {0xfb, 0xff, 0xbf};
  atun_gw_base64url(out, hi, 3);
  cr_assert_str_eq(out, "-_-_");
}

Test(gw_auth, admin_secret) {
  char a[ATUN_GW_ADMIN_SECRET_STRLEN], b[ATUN_GW_ADMIN_SECRET_STRLEN];
  uint8_t ha[32], hb[32], check[32];
  cr_assert_eq(atun_gw_admin_secret_new(a, ha, atun_ca_sysrand()), 0);
  cr_assert_eq(atun_gw_admin_secret_new(b, hb, atun_ca_sysrand()), 0);
  cr_assert_eq(strlen(a), ATUN_GW_ADMIN_SECRET_LEN);
  cr_assert_eq(strncmp(a, ATUN_GW_ADMIN_PREFIX, 8), 0);
  cr_assert_str_neq(a, b);
  wc_Sha256Hash((const uint8_t *)a, (word32)strlen(a), check);
  cr_assert_eq(memcmp(check, ha, 32), 0);
}

static int failing_rand(uint8_t *dest, size_t len, void *ud) {
  (void)dest, (void)len, (void)ud;
  return -1;
}

Test(gw_auth, admin_secret_rand_failure) {
  char a[ATUN_GW_ADMIN_SECRET_STRLEN];
  uint8_t h[32];
  atun_rand bad = {failing_rand, NULL};
  cr_assert_eq(atun_gw_admin_secret_new(a, h, &bad), ATUN_ERR_CALLBACK_FAILURE);
}

Test(gw_util, uuid_round_trip) {
  uint8_t id[16];
  char text[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_gw_uuid_parse(id, ID1, strlen(ID1)), 0);
  cr_assert_eq(id[0], 0x0b);
  cr_assert_eq(id[15], 0x5b);
  atun_gw_uuid_format(text, id);
  cr_assert_str_eq(text, ID1);
  cr_assert_eq(atun_gw_uuid_parse(id, "0B7E3F4A-1C2D-4E5F-8A9B-0C1D2E3F4A5B", 36),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_gw_uuid_parse(id, ID1, 35), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_gw_uuid_parse(id, "resolve-target", 14), ATUN_ERR_MALFORMED);
}

Test(gw_util, text_bound) {
  atun_gw_text t;
  atun_gw_text_init(&t, 2048);
  char big[600];
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  atun_gw_text_printf(&t, "%s", big); /* longer than the small buffer */
  atun_gw_text_printf(&t, "%s", big);
  atun_gw_text_printf(&t, "%s", big);
  cr_assert_eq(t.len, 3 * 599);
  cr_assert_not(t.failed);
  cr_assert_eq(strlen(t.buf), t.len);
  /* The fourth would need 2397 bytes with the NUL: above the bound. */
  atun_gw_text_printf(&t, "%s", big);
  cr_assert(t.failed);
  cr_assert_eq(t.len, 3 * 599);
  atun_gw_text_printf(&t, "x");
  cr_assert_eq(t.len, 3 * 599);
  atun_gw_text_free(&t);
}

Test(gw_util, query_uint) {
  size_t v = 7;
  cr_assert_eq(query_uint("", "limit", 10, &v), 0);
  cr_assert_eq(v, 7);
  cr_assert_eq(query_uint("limit=10", "limit", 10, &v), 0);
  cr_assert_eq(v, 10);
  cr_assert_eq(query_uint("limit=11", "limit", 10, &v), -1);
  cr_assert_eq(query_uint("a=1&limit=3&b=2", "limit", 10, &v), 0);
  cr_assert_eq(v, 3);
  cr_assert_eq(query_uint("limit=", "limit", 10, &v), -1);
  cr_assert_eq(query_uint("limit=-1", "limit", 10, &v), -1);
  cr_assert_eq(query_uint("limit=1234567890", "limit", 2000000000, &v), -1);
  cr_assert_eq(query_uint("limits=5", "limit", 10, &v), 0);
  cr_assert_eq(v, 3);
}

/* ========================================================================================
 * Authentication on the endpoints
 * ======================================================================================== */

TestSuite(gw_api, .init = setup, .fini = teardown);

Test(gw_api, bearer_and_scopes) {
  reply r;
  call(&r, "GET", API_PREFIX "/agents", NULL, NULL);
  expect(&r, 401, "unauthorized");
  cr_assert_not_null(strstr(r.head, "WWW-Authenticate: Bearer"));
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents", "nope", NULL);
  expect(&r, 401, "unauthorized");
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents", WRITER, NULL);
  expect(&r, 403, "forbidden");
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents", READER, NULL);
  expect(&r, 200, NULL);
  reply_free(&r);
  call(&r, "POST", API_PREFIX "/tokens", READER, "{}");
  expect(&r, 403, "forbidden");
  reply_free(&r);
  call(&r, "DELETE", API_PREFIX "/agents/" "0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", READER, NULL);
  expect(&r, 403, "forbidden");
  reply_free(&r);
  call(&r, "GET", "/metrics", NULL, NULL);
  expect(&r, 401, "unauthorized");
  reply_free(&r);
  /* An admin token is no enrollment token. */
  call(&r, "POST", API_PREFIX "/enroll", ADMIN, "{}");
  expect(&r, 401, "unauthorized");
  reply_free(&r);
}

/* ========================================================================================
 * Enrollment
 * ======================================================================================== */

Test(gw_api, enroll_issues_a_certificate) {
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  issue_token(secret);
  char *csr = csr_pem("ignored-cn");
  char *body = enroll_body(ID1, "site-a", csr);
  reply r;
  call(&r, "POST", API_PREFIX "/enroll", secret, body);
  expect(&r, 200, NULL);
  cr_assert_str_eq(jstr(&r, "agent_id"), ID1);
  cr_assert_str_eq(jstr(&r, "quic_endpoint"), "gw.example:4433");
  char pin[ATUN_SPKI_PIN_HEX_LEN + 1];
  atun_spki_pin_format_hex(pin, gw.pki->server_pin);
  cr_assert_str_eq(jstr(&r, "server_spki_sha256"), pin);
  /* The certificate names the enrollment's identity, not the CSR's. */
  uint8_t der[ATUN_CA_DER_MAX];
  size_t derlen;
  const char *cert = jstr(&r, "client_cert_pem");
  cr_assert_eq(atun_pem_decode(ATUN_PEM_CERT, cert, strlen(cert), der, sizeof(der), &derlen), 0);
  atun_cert_profile p;
  char id[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_ca_cert_read(der, derlen, &p), 0);
  cr_assert_str_eq(p.cn, "site-a");
  cr_assert_eq(p.kind, ATUN_CERT_CLIENT);
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), 0);
  cr_assert_str_eq(id, ID1);
  /* Stored with the certificate's fingerprint, audited as "enrollment". */
  atun_agent_record rec;
  uint8_t fp[32];
  cr_assert_eq(atun_store_agent_get(gw.store, ID1, &rec), 0);
  cr_assert_eq(atun_ca_cert_fingerprint(der, derlen, fp), 0);
  cr_assert_eq(memcmp(rec.fingerprint, fp, 32), 0);
  cr_assert_eq(rec.cert_not_after, p.not_after);
  cr_assert_eq(audit_count("enrollment", "enroll"), 1);
  cr_assert_eq(gw.metrics.enrollments[ATUN_GW_ENROLL_OK], 1);
  reply_free(&r);
  /* The token is spent. */
  call(&r, "POST", API_PREFIX "/enroll", secret, body);
  expect(&r, 401, "invalid_token");
  cr_assert_eq(gw.metrics.enrollments[ATUN_GW_ENROLL_BAD_TOKEN], 1);
  reply_free(&r);
  /* One line per event, and the secret in none of them. */
  char want[128];
  snprintf(want, sizeof(want), "event=agent_enrolled agent_id=%s", ID1);
  cr_assert_not_null(strstr(logbuf, want));
  cr_assert_not_null(strstr(logbuf, "event=enrollment_refused"));
  cr_assert_null(strstr(logbuf, secret));
  free(body);
  free(csr);
}

Test(gw_api, enroll_refusals_keep_the_token) {
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  issue_token(secret);
  char *csr = csr_pem("x");
  struct {
    const char *body;
    const char *code;
  } cases[] = {
      {"{\"agent_id\":", "invalid_json"},
      {"[]", "invalid_json"},
      {"{\"agent_name\":\"a\",\"csr_pem\":\"x\"}", "missing_field"},
      {"{\"agent_id\":7,\"agent_name\":\"a\",\"csr_pem\":\"x\"}", "invalid_field"},
      {"{\"agent_id\":\"0B7E3F4A-1C2D-4E5F-8A9B-0C1D2E3F4A5B\",\"agent_name\":\"a\","
       "\"csr_pem\":\"x\"}", "invalid_field"},
      {"{\"agent_id\":\"0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b\",\"agent_name\":\"-a\","
       "\"csr_pem\":\"x\"}", "invalid_field"},
      {"{\"agent_id\":\"0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b\",\"agent_name\":\"a\","
       "\"csr_pem\":\"not a csr\"}", "invalid_field"},
      {"{\"agent_id\":\"0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b\",\"agent_name\":\"a\","
       "\"csr_pem\":\"x\",\"hostname\":\"a\\u0001b\"}", "invalid_field"},
  };
  reply r;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    /* Each case at its own second: the burst of 3 would refuse the rest. */
    call_at(&r, T0 + (atun_tstamp)i * 20 * S, "POST", API_PREFIX "/enroll", secret,
            cases[i].body);
    expect(&r, 400, cases[i].code);
    reply_free(&r);
  }
  cr_assert_eq(gw.metrics.enrollments[ATUN_GW_ENROLL_BAD_REQUEST], 8);
  call_at(&r, T0 + 1000 * S, "POST", API_PREFIX "/enroll", "short", "{}");
  expect(&r, 401, "unauthorized");
  reply_free(&r);
  char *body = enroll_body(ID1, "site-a", csr);
  call_at(&r, T0 + 2000 * S, "POST", API_PREFIX "/enroll", secret, body);
  expect(&r, 200, NULL);
  reply_free(&r);
  free(body);
  free(csr);
}

Test(gw_api, enroll_conflict_keeps_the_token) {
  cr_assert_eq(enroll(ID1, "site-a"), 200);
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  issue_token(secret);
  char *csr = csr_pem("x");
  char *same_id = enroll_body(ID1, "site-b", csr);
  char *same_name = enroll_body(ID2, "site-a", csr);
  char *fresh = enroll_body(ID2, "site-b", csr);
  reply r;
  call(&r, "POST", API_PREFIX "/enroll", secret, same_id);
  expect(&r, 409, "conflict");
  reply_free(&r);
  call(&r, "POST", API_PREFIX "/enroll", secret, same_name);
  expect(&r, 409, "conflict");
  reply_free(&r);
  cr_assert_eq(gw.metrics.enrollments[ATUN_GW_ENROLL_CONFLICT], 2);
  call_at(&r, T0 + 100 * S, "POST", API_PREFIX "/enroll", secret, fresh);
  expect(&r, 200, NULL);
  reply_free(&r);
  free(same_id);
  free(same_name);
  free(fresh);
  free(csr);
}

Test(gw_api, enroll_store_failure_rolls_back) {
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  issue_token(secret);
  char *csr = csr_pem("x");
  char *body = enroll_body(ID1, "site-a", csr);
  reply r;
  fault_at = ATUN_STORE_FAULT_ENROLL_COMMIT;
  call(&r, "POST", API_PREFIX "/enroll", secret, body);
  expect(&r, 500, "internal");
  reply_free(&r);
  cr_assert_eq(gw.metrics.enrollments[ATUN_GW_ENROLL_ERROR], 1);
  atun_agent_record rec;
  cr_assert_eq(atun_store_agent_get(gw.store, ID1, &rec), ATUN_ERR_NOT_FOUND);
  fault_at = 0;
  call(&r, "POST", API_PREFIX "/enroll", secret, body);
  expect(&r, 200, NULL);
  reply_free(&r);
  free(body);
  free(csr);
}

Test(gw_api, enroll_rate_limit_at_the_bound) {
  reply r;
  /* The burst (3) passes to the token check; the fourth is refused. */
  for (int i = 0; i < 3; ++i) {
    call(&r, "POST", API_PREFIX "/enroll", NULL, "{}");
    expect(&r, 401, "unauthorized");
    reply_free(&r);
  }
  call(&r, "POST", API_PREFIX "/enroll", NULL, "{}");
  expect(&r, 429, "too_many_requests");
  cr_assert_not_null(strstr(r.head, "Retry-After: 10"));
  reply_free(&r);
  cr_assert_eq(gw.metrics.enrollments[ATUN_GW_ENROLL_RATE_LIMITED], 1);
  /* One interval later exactly one more request passes. */
  call_at(&r, T0 + 10 * S, "POST", API_PREFIX "/enroll", NULL, "{}");
  expect(&r, 401, "unauthorized");
  reply_free(&r);
  call_at(&r, T0 + 10 * S, "POST", API_PREFIX "/enroll", NULL, "{}");
  expect(&r, 429, "too_many_requests");
  reply_free(&r);
  /* Management endpoints are not limited. */
  call(&r, "GET", API_PREFIX "/agents", READER, NULL);
  expect(&r, 200, NULL);
  reply_free(&r);
}

/* ========================================================================================
 * Tokens
 * ======================================================================================== */

Test(gw_api, token_create) {
  reply r;
  call(&r, "POST", API_PREFIX "/tokens", WRITER, "{\"ttl\":\"2h\",\"name\":\"site-a\"}");
  expect(&r, 201, NULL);
  atun_enroll_info info;
  const char *s = jstr(&r, "enrollment_string");
  cr_assert_eq(atun_enroll_decode(&info, s, strlen(s), NULL), 0);
  cr_assert_str_eq(info.url, "https://gw.example:8443");
  cr_assert_eq(memcmp(info.ca_spki_sha256, gw.pki->ca_pin, 32), 0);
  atun_token_record rec;
  cr_assert_eq(atun_store_token_get(gw.store, jstr(&r, "id"), &rec), 0);
  cr_assert_eq(rec.expires_at - rec.created_at, 2 * 3600 * S);
  cr_assert_str_eq(rec.name, "site-a");
  cr_assert_eq(audit_count("writer", "token_create"), 1);
  reply_free(&r);
  cr_assert_null(strstr(logbuf, info.secret));
  cr_assert_not_null(strstr(logbuf, "event=token_created"));
  /* The secret redeems once. */
  cr_assert_eq(atun_token_redeem(atun_store_token_store(gw.store), info.secret,
                                 strlen(info.secret), atun_gw_wall_now(), NULL), 0);
  call(&r, "POST", API_PREFIX "/tokens", ADMIN, NULL);
  expect(&r, 201, NULL);
  cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(r.json, "name")));
  reply_free(&r);
  call(&r, "POST", API_PREFIX "/tokens", ADMIN, "{\"ttl\":1000}");
  expect(&r, 201, NULL);
  reply_free(&r);
  cr_assert_eq(gw.metrics.tokens_issued, 3);
}

Test(gw_api, token_create_refusals) {
  static const char *const bad[] = {
      "{\"ttl\":\"31d\"}", "{\"ttl\":0}",   "{\"ttl\":1.5}", "{\"ttl\":\"1 h\"}",
      "{\"ttl\":true}",    "{\"name\":5}", "{\"name\":\"\"}", "{\"name\":\"caf\\u00e9\"}",
  };
  reply r;
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    call(&r, "POST", API_PREFIX "/tokens", ADMIN, bad[i]);
    expect(&r, 400, "invalid_field");
    reply_free(&r);
  }
  /* The longest ttl and name pass. */
  call(&r, "POST", API_PREFIX "/tokens", ADMIN,
       "{\"ttl\":\"30d\",\"name\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}");
  expect(&r, 201, NULL);
  reply_free(&r);
  cr_assert_eq(gw.metrics.tokens_issued, 1);
}

/* ========================================================================================
 * Agents: list, get, delete, resolve
 * ======================================================================================== */

/* Registers |id| as connected with routes, as a session would. */
static void connect_agent(const char *id, const char *name, const char *subnet,
                          const char *domain) {
  uint8_t raw[16];
  uint64_t gen;
  cr_assert_eq(atun_gw_uuid_parse(raw, id, strlen(id)), 0);
  cr_assert_eq(atun_registry_connect(gw.reg, raw, name, T0, &gen), 0);
  atun_prefix p;
  atun_route_domain d;
  memset(&d, 0, sizeof(d));
  cr_assert_eq(atun_prefix_parse(&p, subnet), 0);
  snprintf(d.name, sizeof(d.name), "%s", domain);
  cr_assert_eq(atun_registry_advertise(gw.reg, raw, gen, 4, &p, 1, &d, 1, T0, NULL), 0);
  cr_assert_eq(atun_registry_heartbeat(gw.reg, raw, gen, T0, 2 * ATUN_NS_PER_MS), 0);
}

static const cJSON *agent_at(const reply *r, int i) {
  return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r->json, "agents"), i);
}

static const char *field(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

Test(gw_api, agents_list_and_get) {
  cr_assert_eq(enroll(ID1, "site-a"), 200);
  cr_assert_eq(enroll(ID2, "site-b"), 200);
  connect_agent(ID2, "site-b", "10.2.0.0/16", "corp.example");
  reply r;
  call(&r, "GET", API_PREFIX "/agents", READER, NULL);
  expect(&r, 200, NULL);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "agents")), 2);
  const cJSON *a = agent_at(&r, 0), *b = agent_at(&r, 1);
  cr_assert_str_eq(field(a, "id"), ID1);
  cr_assert_str_eq(field(a, "status"), "offline");
  cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "last_seen")));
  cr_assert_str_eq(field(b, "status"), "online");
  cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b, "connected")));
  cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(b, "subnets"), 0)->valuestring,
                   "10.2.0.0/16");
  cr_assert_eq(cJSON_GetObjectItemCaseSensitive(b, "route_epoch")->valuedouble, 4);
  cr_assert_eq(cJSON_GetObjectItemCaseSensitive(b, "rtt_ms")->valuedouble, 2.0);
  cr_assert_null(cJSON_GetObjectItemCaseSensitive(r.json, "next_offset"));
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents?limit=1&offset=1", READER, NULL);
  expect(&r, 200, NULL);
  cr_assert_str_eq(field(agent_at(&r, 0), "id"), ID2);
  cr_assert_eq(cJSON_GetObjectItemCaseSensitive(r.json, "next_offset")->valuedouble, 2);
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents?limit=1001", READER, NULL);
  expect(&r, 400, "invalid_field");
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents/0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", READER, NULL);
  expect(&r, 200, NULL);
  cr_assert_str_eq(jstr(&r, "name"), "site-a");
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents/00000000-0000-4000-8000-000000000000", READER, NULL);
  expect(&r, 404, "not_found");
  reply_free(&r);
  call(&r, "GET", API_PREFIX "/agents/nope", READER, NULL);
  expect(&r, 404, "not_found");
  reply_free(&r);
}

Test(gw_api, delete_revokes) {
  cr_assert_eq(enroll(ID1, "site-a"), 200);
  connect_agent(ID1, "site-a", "10.1.0.0/16", "corp.example");
  reply r;
  call(&r, "DELETE", API_PREFIX "/agents/0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", WRITER, NULL);
  expect(&r, 200, NULL);
  cr_assert_str_eq(jstr(&r, "status"), "revoked");
  cr_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r.json, "revoked_at")));
  reply_free(&r);
  /* Durable, audited under the token's name, the live connection closed. */
  atun_agent_record rec;
  cr_assert_eq(atun_store_agent_get(gw.store, ID1, &rec), 0);
  cr_assert_neq(rec.revoked_at, ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_store_is_revoked(gw.store, ID1, NULL), 1);
  cr_assert_eq(atun_store_is_revoked(gw.store, NULL, rec.fingerprint), 1);
  cr_assert_eq(audit_count("writer", "revoke"), 1);
  uint8_t raw[16];
  atun_gw_uuid_parse(raw, ID1, 36);
  cr_assert_eq(stub_closes, 1);
  cr_assert_eq(memcmp(stub_closed_id, raw, 16), 0);
  cr_assert_eq(stub_closed_app, ATUN_APP_REVOKED);
  cr_assert_eq(gw.metrics.revocations, 1);
  char want[160];
  snprintf(want, sizeof(want), "event=agent_revoked agent_id=%s agent_name=site-a by=writer", ID1);
  cr_assert_not_null(strstr(logbuf, want));
  /* The registry routes to it no more. */
  atun_route_target t;
  atun_route_candidate cand[4];
  cr_assert_eq(atun_route_target_parse(&t, "10.1.2.3"), 0);
  cr_assert_eq(atun_registry_resolve(gw.reg, &t, NULL, T0, cand, 4), 0);
  call(&r, "DELETE", API_PREFIX "/agents/0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", ADMIN, NULL);
  expect(&r, 409, "already_revoked");
  reply_free(&r);
  call(&r, "DELETE", API_PREFIX "/agents/9f3c1e2d-4b5a-4c6d-8e7f-a0b1c2d3e4f5", ADMIN, NULL);
  expect(&r, 404, "not_found");
  reply_free(&r);
  cr_assert_eq(stub_closes, 1);
}

Test(gw_api, resolve_target) {
  cr_assert_eq(enroll(ID1, "site-a"), 200);
  cr_assert_eq(enroll(ID2, "site-b"), 200);
  connect_agent(ID1, "site-a", "10.0.0.0/8", "example");
  connect_agent(ID2, "site-b", "10.2.0.0/16", "corp.example");
  reply r;
  call(&r, "POST", API_PREFIX "/agents/resolve-target", READER, "{\"target\":\"10.2.3.4\"}");
  expect(&r, 200, NULL);
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(r.json, "candidates");
  cr_assert_eq(cJSON_GetArraySize(c), 2);
  /* Longest prefix first, the broader one after it. */
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 0), "agent_id"), ID2);
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 0), "route"), "10.2.0.0/16");
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 0), "agent_name"), "site-b");
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 1), "route"), "10.0.0.0/8");
  cr_assert_str_eq(jstr(&r, "kind"), "address");
  reply_free(&r);
  call(&r, "POST", API_PREFIX "/agents/resolve-target", READER, "{\"target\":\"DB.Corp.Example.\"}");
  expect(&r, 200, NULL);
  c = cJSON_GetObjectItemCaseSensitive(r.json, "candidates");
  cr_assert_eq(cJSON_GetArraySize(c), 2);
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 0), "match"), "domain");
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 0), "route"), "corp.example");
  reply_free(&r);
  /* A pin by name keeps only that agent. */
  call(&r, "POST", API_PREFIX "/agents/resolve-target", READER,
       "{\"target\":\"10.2.3.4\",\"agent\":\"site-a\"}");
  expect(&r, 200, NULL);
  c = cJSON_GetObjectItemCaseSensitive(r.json, "candidates");
  cr_assert_eq(cJSON_GetArraySize(c), 1);
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 0), "agent_id"), ID1);
  reply_free(&r);
  call(&r, "POST", API_PREFIX "/agents/resolve-target", READER, "{\"target\":\"192.168.1.1\"}");
  expect(&r, 200, NULL);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r.json, "candidates")), 0);
  reply_free(&r);
  static const char *const bad[] = {"{\"target\":\"no spaces\"}", "{\"target\":[]}",
                                    "{\"target\":\"10.0.0.1\",\"agent\":\"-x\"}"};
  for (size_t i = 0; i < 3; ++i) {
    call(&r, "POST", API_PREFIX "/agents/resolve-target", READER, bad[i]);
    expect(&r, 400, "invalid_field");
    reply_free(&r);
  }
  call(&r, "POST", API_PREFIX "/agents/resolve-target", READER, "{}");
  expect(&r, 400, "missing_field");
  reply_free(&r);
}

/* ========================================================================================
 * Metrics and health
 * ======================================================================================== */

/* Every sample line is "name{labels} value" or "name value". */
static void check_exposition(const char *text) {
  char line[512];
  const char *p = text;
  size_t samples = 0;
  while (*p != '\0') {
    const char *nl = strchr(p, '\n');
    cr_assert_not_null(nl, "unterminated line");
    size_t n = (size_t)(nl - p);
    cr_assert_lt(n, sizeof(line));
    memcpy(line, p, n);
    line[n] = '\0';
    p = nl + 1;
    if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) continue;
    char *sp = strrchr(line, ' ');
    cr_assert_not_null(sp, "no value: %s", line);
    char *end;
    strtod(sp + 1, &end);
    cr_assert(*end == '\0' && end != sp + 1, "bad value: %s", line);
    cr_assert(line[0] >= 'a' && line[0] <= 'z', "bad name: %s", line);
    char *brace = strchr(line, '{');
    if (brace != NULL) cr_assert_eq(sp[-1], '}', "bad labels: %s", line);
    ++samples;
  }
  cr_assert_gt(samples, 20);
}

Test(gw_api, metrics_text) {
  cr_assert_eq(enroll(ID1, "site-a"), 200);
  cr_assert_eq(enroll(ID2, "site-b"), 200);
  connect_agent(ID2, "site-b", "10.2.0.0/16", "corp.example");
  reply r;
  call(&r, "DELETE", API_PREFIX "/agents/0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", ADMIN, NULL);
  reply_free(&r);
  gw.metrics.hs_failures[ATUN_QUIC_HS_UNKNOWN_CA] = 4;
  call(&r, "GET", "/metrics", READER, NULL);
  expect(&r, 200, NULL);
  cr_assert_not_null(strstr(r.head, "Content-Type: text/plain; version=0.0.4"));
  check_exposition(r.body);
  cr_assert_not_null(strstr(r.body, "\natun_gateway_agents{status=\"online\"} 1\n"));
  cr_assert_not_null(strstr(r.body, "\natun_gateway_agents{status=\"revoked\"} 1\n"));
  cr_assert_not_null(strstr(r.body, "\natun_gateway_agents{status=\"offline\"} 0\n"));
  cr_assert_not_null(
      strstr(r.body, "\natun_gateway_handshake_failures_total{reason=\"unknown_ca\"} 4\n"));
  cr_assert_not_null(strstr(r.body, "\natun_gateway_enrollments_total{result=\"ok\"} 2\n"));
  cr_assert_not_null(strstr(r.body, "\natun_gateway_api_requests_total{code=\"200\"} 3\n"));
  cr_assert_not_null(strstr(r.body, "\natun_gateway_revocations_total 1\n"));
  reply_free(&r);
}

Test(gw_api, ready_reports_unavailable) {
  reply r;
  call(&r, "GET", "/health/ready", NULL, NULL);
  expect(&r, 503, "unavailable"); /* no QUIC listener in this test */
  reply_free(&r);
  gw.draining = 1;
  call(&r, "GET", "/health/ready", NULL, NULL);
  expect(&r, 503, "unavailable");
  cr_assert_not_null(strstr(r.body, "shutting down"));
  reply_free(&r);
}

/* ========================================================================================
 * Certificate renewal: agents over the control stream, the gateway's own
 * ======================================================================================== */

static size_t csr_der(uint8_t *der, const char *name, const char *id) {
  uint8_t key[ATUN_CA_KEY_DER_MAX];
  size_t keylen, len;
  cr_assert_eq(atun_ca_key_generate(key, sizeof(key), &keylen), 0);
  cr_assert_eq(atun_ca_csr_make(key, keylen, name, id, der, ATUN_CA_DER_MAX, &len), 0);
  return len;
}

Test(gw_api, agent_renewal) {
  cr_assert_eq(enroll(ID1, "site-a"), 200);
  atun_agent_record before, after;
  cr_assert_eq(atun_store_agent_get(gw.store, ID1, &before), 0);
  uint8_t csr[ATUN_CA_DER_MAX], der[ATUN_CA_DER_MAX];
  size_t derlen;
  atun_tstamp until;
  /* The CSR claims another identity; the certificate gets the connection's. */
  size_t len = csr_der(csr, "impostor", ID2);
  cr_assert_eq(atun_gw_renew_sign(&gw, ID1, "site-a", csr, len, der, &derlen, &until),
               ATUN_CERT_STATUS_OK);
  atun_cert_profile p;
  char id[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_ca_cert_read(der, derlen, &p), 0);
  cr_assert_str_eq(p.cn, "site-a");
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), 0);
  cr_assert_str_eq(id, ID1);
  cr_assert_eq(until, p.not_after);
  cr_assert_eq(atun_store_agent_get(gw.store, ID1, &after), 0);
  uint8_t fp[32];
  atun_ca_cert_fingerprint(der, derlen, fp);
  cr_assert_eq(memcmp(after.fingerprint, fp, 32), 0);
  cr_assert_neq(memcmp(after.fingerprint, before.fingerprint, 32), 0);
  cr_assert_eq(audit_count("agent", "renew"), 1);
  /* Garbage, an empty and an oversize CSR. */
  uint8_t junk[16] = {0x30, 0x03, 0x02, 0x01, 0x01};
  cr_assert_eq(atun_gw_renew_sign(&gw, ID1, "site-a", junk, sizeof(junk), der, &derlen, &until),
               ATUN_CERT_STATUS_BAD_CSR);
  cr_assert_eq(until, ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_gw_renew_sign(&gw, ID1, "site-a", csr, 0, der, &derlen, &until),
               ATUN_CERT_STATUS_BAD_CSR);
  cr_assert_eq(atun_gw_renew_sign(&gw, ID1, "site-a", csr, ATUN_CA_DER_MAX + 1, der, &derlen,
                                  &until), ATUN_CERT_STATUS_BAD_CSR);
  /* An unknown agent, then a revoked one, are denied. */
  cr_assert_eq(atun_gw_renew_sign(&gw, ID2, "site-b", csr, len, der, &derlen, &until),
               ATUN_CERT_STATUS_DENIED);
  cr_assert_eq(atun_store_agent_revoke(gw.store, ID1, atun_gw_wall_now(), "admin"), 0);
  cr_assert_eq(atun_gw_renew_sign(&gw, ID1, "site-a", csr, len, der, &derlen, &until),
               ATUN_CERT_STATUS_DENIED);
  cr_assert_eq(audit_count("agent", "renew"), 1);
}

Test(gw_api, server_renewal_keeps_the_key) {
  atun_ca_settings cs;
  atun_gw_ca_settings(&cs, &gw.cfg);
  const char *hosts[] = {"gw.example"};
  atun_tstamp now = atun_gw_wall_now();
  atun_gw_pki *old = calloc(1, sizeof(*old)), *loaded = calloc(1, sizeof(*loaded));
  cr_assert_not_null(old);
  cr_assert_not_null(loaded);
  /* Issued 300 days ago for a year: two thirds are gone. */
  cr_assert_eq(atun_gw_pki_generate(old, &cs, hosts, 1, now - 300 * 24 * 3600 * S), 0);
  char failed[ATUN_GW_PATH_MAX];
  cr_assert_eq(atun_gw_pki_write(old, dir, 0, failed), 0);
  cr_assert_eq(atun_gw_pki_write(old, dir, 0, failed), ATUN_ERR_EXISTS);
  uint8_t pin[32];
  memcpy(pin, old->server_pin, 32);
  atun_tstamp old_until = old->server_profile.not_after;
  int renewed = 0;
  cr_assert_eq(atun_gw_pki_renew_server(old, &gw.cfg, dir, now, &renewed), 0);
  cr_assert_eq(renewed, 1);
  cr_assert_gt(old->server_profile.not_after, old_until);
  cr_assert_eq(atun_gw_pki_load(loaded, dir, failed), 0);
  cr_assert_eq(loaded->server_cert_len, old->server_cert_len);
  cr_assert_eq(memcmp(loaded->server_cert, old->server_cert, old->server_cert_len), 0);
  cr_assert_eq(memcmp(loaded->server_pin, pin, 32), 0, "the pin changed");
  /* Fresh now: nothing to do. */
  cr_assert_eq(atun_gw_pki_renew_server(loaded, &gw.cfg, dir, now, &renewed), 0);
  cr_assert_eq(renewed, 0);
  free(old);
  free(loaded);
}

Test(gw_api, pki_load_refusals) {
  atun_gw_pki *pki = calloc(1, sizeof(*pki)), *other = calloc(1, sizeof(*other));
  char failed[ATUN_GW_PATH_MAX], path[ATUN_GW_PATH_MAX];
  cr_assert_eq(atun_gw_pki_load(pki, dir, failed), ATUN_ERR_NOT_FOUND);
  cr_assert_not_null(strstr(failed, "ca.crt"));
  cr_assert_eq(atun_gw_pki_write(gw.pki, dir, 0, failed), 0);
  cr_assert_eq(atun_gw_pki_load(pki, dir, failed), 0);
  cr_assert_eq(memcmp(pki->ca_pin, gw.pki->ca_pin, 32), 0);
  /* A server key that is not the certificate's. */
  atun_ca_settings cs;
  atun_gw_ca_settings(&cs, &gw.cfg);
  const char *hosts[] = {"x.example"};
  cr_assert_eq(atun_gw_pki_generate(other, &cs, hosts, 1, atun_gw_wall_now()), 0);
  memcpy(pki->server_key, other->server_key, other->server_key_len);
  pki->server_key_len = other->server_key_len;
  cr_assert_eq(atun_gw_pki_write(pki, dir, 1, failed), 0);
  cr_assert_eq(atun_gw_pki_load(pki, dir, failed), ATUN_ERR_MALFORMED);
  cr_assert_not_null(strstr(failed, "server.key"));
  /* A file that is no PEM. */
  atun_gw_path(path, dir, ATUN_GW_CA_CERT);
  FILE *f = fopen(path, "w");
  fputs("not a certificate\n", f);
  fclose(f);
  cr_assert_eq(atun_gw_pki_load(pki, dir, failed), ATUN_ERR_MALFORMED);
  free(pki);
  free(other);
}

/* ========================================================================================
 * QUIC TLS contexts across renewals: the slot bound
 * ======================================================================================== */

Test(gw_api, tls_slots_bound) {
  atun_quic_settings_default(&gw.quic_settings);
  cr_assert_eq(atun_gw_tls_start(&gw), 0);
  uint64_t hold = atun_gw_tls_hold_ns(&gw);
  cr_assert_geq(hold, gw.quic_settings.handshake_timeout_ns + gw.quic_settings.idle_timeout_ns);
  for (size_t i = 1; i < ATUN_GW_TLS_SLOTS; ++i) {
    cr_assert_eq(atun_gw_tls_reload(&gw, T0 + i), 0);
    cr_assert_eq(gw.tls_current, i);
  }
  cr_assert_eq(atun_gw_tls_reload(&gw, T0 + 10), ATUN_ERR_FULL);
  cr_assert_eq(gw.tls_current, ATUN_GW_TLS_SLOTS - 1);
  /* Slot 0 retired at T0 + 1, slot 1 at T0 + 2 and still serves one. */
  gw.tls[1].conns = 1;
  atun_gw_tls_housekeeping(&gw, T0 + 1 + hold - 1);
  cr_assert_not_null(gw.tls[0].tls, "freed before the hold ended");
  cr_assert_eq(atun_gw_tls_reload(&gw, T0 + 20), ATUN_ERR_FULL);
  atun_gw_tls_housekeeping(&gw, T0 + 2 + hold);
  cr_assert_null(gw.tls[0].tls);
  cr_assert_not_null(gw.tls[1].tls, "freed while a connection uses it");
  cr_assert_not_null(gw.tls[ATUN_GW_TLS_SLOTS - 1].tls, "the current one was freed");
  cr_assert_eq(atun_gw_tls_reload(&gw, T0 + 30), 0);
  cr_assert_eq(gw.tls_current, 0);
  gw.tls[1].conns = 0;
  atun_gw_tls_housekeeping(&gw, T0 + 100 + hold);
  for (size_t i = 1; i < ATUN_GW_TLS_SLOTS; ++i) cr_assert_null(gw.tls[i].tls);
  cr_assert_not_null(gw.tls[0].tls);
}

Test(gw_api, resolve_shows_at_most_the_bound) {
  char id[ATUN_UUID_STRLEN], name[16];
  for (int i = 0; i < RESOLVE_CANDIDATES_MAX + 4; ++i) {
    snprintf(id, sizeof(id), "00000000-0000-4000-8000-%012d", i);
    snprintf(name, sizeof(name), "a%d", i);
    connect_agent(id, name, "10.9.0.0/16", "many.example");
  }
  reply r;
  call(&r, "POST", API_PREFIX "/agents/resolve-target", READER, "{\"target\":\"10.9.1.1\"}");
  expect(&r, 200, NULL);
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(r.json, "candidates");
  cr_assert_eq(cJSON_GetArraySize(c), RESOLVE_CANDIDATES_MAX);
  /* Equal health: the agent id decides, lowest first. */
  cr_assert_str_eq(field(cJSON_GetArrayItem(c, 0), "agent_id"),
                   "00000000-0000-4000-8000-000000000000");
  reply_free(&r);
}
