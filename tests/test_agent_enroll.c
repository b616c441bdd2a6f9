/*
 * `atun-agent enroll` without the network: classifying the gateway's answer
 * (agent/enroll_resp.c), checking it against the agent's own key, id and
 * CA pin (agent/enroll_check.c), and the order and rollback of the files it
 * writes (agent/enroll_files.c).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../agent/enroll_check.c"
#include "../agent/enroll_files.c"
#include "../agent/enroll_resp.c"
#include "../agent/pin.c"

#define S(x) ((atun_tstamp)(x) * ATUN_NS_PER_S)

static const char *const ID = "0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f";
static const char *const ID2 = "11111111-2222-4333-8444-555555555555";
static const char *const HEXPIN =
    "5e72db8965ba568ca94f9ea26a1c2e04568e2ff3ae5500bb41d16bf020d4141c";

/* --- fixtures: a CA and an agent with its issued certificate --------------- */

typedef struct fixture {
  atun_ca_settings s;
  uint8_t ca_key[ATUN_CA_KEY_DER_MAX], ca_cert[ATUN_CA_DER_MAX];
  size_t ca_key_len, ca_cert_len;
  uint8_t key[ATUN_CA_KEY_DER_MAX];
  size_t key_len;
  uint8_t key_pin[ATUN_SHA256_LEN], ca_pin[ATUN_SHA256_LEN];
  char ca_pem[ATUN_CA_PEM_MAX], cert_pem[ATUN_CA_PEM_MAX];
} fixture;

static fixture fx, fx2;
static agent_enroll_answer ans;
static agent_enroll_issued issued;

static atun_tstamp wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return S(ts.tv_sec) + (atun_tstamp)ts.tv_nsec;
}

static void pem_of(atun_pem_type t, const uint8_t *der, size_t len, char *out) {
  size_t n;
  cr_assert_eq(atun_pem_encode(t, der, len, out, ATUN_CA_PEM_MAX, &n), 0);
}

/* Issues a certificate for the key of |f| (or of |key_of| if not NULL) with
 * agent id |id|, signed by the CA of |f|, as PEM into |out|. */
static void issue(fixture *f, const fixture *key_of, const char *name, const char *id,
                  char *out) {
  const fixture *k = key_of ? key_of : f;
  uint8_t csr[ATUN_CA_DER_MAX], cert[ATUN_CA_DER_MAX];
  size_t csr_len, cert_len;
  char csr_pem[ATUN_CA_PEM_MAX];
  cr_assert_eq(atun_ca_csr_make(k->key, k->key_len, name, id, csr, sizeof(csr), &csr_len),
               0);
  pem_of(ATUN_PEM_CSR, csr, csr_len, csr_pem);
  atun_ca_issuer ca = {f->ca_cert, f->ca_cert_len, f->ca_key, f->ca_key_len};
  cr_assert_eq(atun_ca_sign_csr(&f->s, csr_pem, strlen(csr_pem), name, id, &ca, wall_now(),
                                atun_ca_sysrand(), cert, sizeof(cert), &cert_len, NULL),
               0);
  pem_of(ATUN_PEM_CERT, cert, cert_len, out);
}

static void fixture_make(fixture *f) {
  memset(f, 0, sizeof(*f));
  atun_ca_settings_default(&f->s);
  cr_assert_eq(atun_ca_create(&f->s, wall_now(), atun_ca_sysrand(), f->ca_key,
                              sizeof(f->ca_key), &f->ca_key_len, f->ca_cert,
                              sizeof(f->ca_cert), &f->ca_cert_len), 0);
  cr_assert_eq(atun_ca_key_generate(f->key, sizeof(f->key), &f->key_len), 0);
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spki_len;
  cr_assert_eq(atun_ca_key_spki(f->key, f->key_len, spki, sizeof(spki), &spki_len), 0);
  cr_assert_eq(atun_ca_spki_pin(spki, spki_len, f->key_pin), 0);
  cr_assert_eq(atun_ca_cert_spki_pin(f->ca_cert, f->ca_cert_len, f->ca_pin), 0);
  pem_of(ATUN_PEM_CERT, f->ca_cert, f->ca_cert_len, f->ca_pem);
  issue(f, NULL, "edge-1", ID, f->cert_pem);
}

/* The JSON of a successful answer carrying |cert| and |ca|. */
static char *ok_body(const char *id, const char *cert, const char *ca) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "agent_id", id);
  cJSON_AddStringToObject(o, "client_cert_pem", cert);
  cJSON_AddStringToObject(o, "ca_cert_pem", ca);
  cJSON_AddStringToObject(o, "quic_endpoint", "GW.example.com:4433");
  cJSON_AddStringToObject(o, "server_spki_sha256", HEXPIN);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  cr_assert_not_null(s);
  return s;
}

static cJSON *ok_obj(void) {
  char *b = ok_body(ID, "a", "b");
  cJSON *o = cJSON_Parse(b);
  cJSON_free(b);
  cr_assert_not_null(o);
  return o;
}

/* Expects |o| with member |name| set to |v| (NULL: removed) to be refused. */
static void expect_bad_member(cJSON *o, const char *name, cJSON *v, const char *what);

static int parse(int status, const char *body) {
  return agent_enroll_answer_parse(&ans, status, body, body ? strlen(body) : 0);
}

/* --- the answer ----------------------------------------------------------------- */

TestSuite(agent_answer);

Test(agent_answer, ok) {
  char *b = ok_body(ID, "-----BEGIN CERTIFICATE-----x", "-----BEGIN CERTIFICATE-----y");
  cr_assert_eq(parse(201, b), AGENT_ENROLL_OK);
  cr_assert_str_eq(ans.agent_id, ID);
  cr_assert_str_eq(ans.quic_endpoint, "gw.example.com:4433");
  cr_assert_str_eq(ans.client_cert_pem, "-----BEGIN CERTIFICATE-----x");
  cr_assert_eq(ans.server_spki_sha256[0], 0x5e);
  cr_assert_eq(ans.server_spki_sha256[31], 0x1c);
  cJSON_free(b);
}

static void expect_bad(const char *body, const char *what) {
  cr_assert_eq(parse(200, body), AGENT_ENROLL_BAD_ANSWER, "%s", what);
  cr_assert_not_null(ans.why, "%s", what);
}

static void expect_bad_member(cJSON *o, const char *name, cJSON *v, const char *what) {
  cJSON_DeleteItemFromObjectCaseSensitive(o, name);
  if (v != NULL) cJSON_AddItemToObject(o, name, v);
  char *s = cJSON_PrintUnformatted(o);
  expect_bad(s, what);
  cJSON_free(s);
  cJSON_Delete(o);
}

Test(agent_answer, every_field_is_required_and_checked) {
  expect_bad("", "empty");
  expect_bad("[]", "array");
  expect_bad("{\"agent_id\":", "not JSON");
  const char *fields[] = {"agent_id", "client_cert_pem", "ca_cert_pem", "quic_endpoint",
                          "server_spki_sha256"};
  for (size_t i = 0; i < 5; ++i) {
    expect_bad_member(ok_obj(), fields[i], NULL, fields[i]);
    expect_bad_member(ok_obj(), fields[i], cJSON_CreateNumber(1), fields[i]);
  }
  expect_bad("{\"agent_id\":\"nope\",\"client_cert_pem\":\"a\",\"ca_cert_pem\":\"b\","
             "\"quic_endpoint\":\"h:1\",\"server_spki_sha256\":\"x\"}", "uuid");
}

Test(agent_answer, endpoint_and_pin_are_checked) {
  const char *bad_ep[] = {"gw.example.com", "gw.example.com:0", "[::1", "a b:1"};
  for (size_t i = 0; i < 4; ++i)
    expect_bad_member(ok_obj(), "quic_endpoint", cJSON_CreateString(bad_ep[i]), bad_ep[i]);
  expect_bad_member(ok_obj(), "server_spki_sha256", cJSON_CreateString("abcd"), "pin");
}

Test(agent_answer, pem_length_bound) {
  char *at = malloc(ATUN_CA_PEM_MAX + 2);
  memset(at, 'p', ATUN_CA_PEM_MAX);
  at[ATUN_CA_PEM_MAX] = '\0';
  char *b = ok_body(ID, at, "b");
  cr_assert_eq(parse(200, b), AGENT_ENROLL_OK);
  cr_assert_eq(strlen(ans.client_cert_pem), ATUN_CA_PEM_MAX);
  cJSON_free(b);
  at[ATUN_CA_PEM_MAX] = 'p';
  at[ATUN_CA_PEM_MAX + 1] = '\0';
  b = ok_body(ID, "a", at);
  expect_bad(b, "ca pem above the bound");
  cJSON_free(b);
  b = ok_body(ID, "", "b");
  expect_bad(b, "empty pem");
  cJSON_free(b);
  free(at);
}

Test(agent_answer, client_errors_are_refusals) {
  int statuses[] = {400, 401, 403, 404, 409, 410};
  for (size_t i = 0; i < 6; ++i) {
    cr_assert_eq(parse(statuses[i],
                       "{\"error\":{\"code\":\"invalid_token\",\"message\":\"used\"}}"),
                 AGENT_ENROLL_REFUSED);
    cr_assert_str_eq(ans.code, "invalid_token");
    cr_assert_str_eq(ans.message, "used");
    cr_assert_eq(ans.status, statuses[i]);
  }
}

Test(agent_answer, transient_errors_may_be_retried) {
  int statuses[] = {408, 429, 500, 502, 503, 599};
  for (size_t i = 0; i < 6; ++i)
    cr_assert_eq(parse(statuses[i], "{\"error\":{\"code\":\"x\",\"message\":\"y\"}}"),
                 AGENT_ENROLL_RETRY, "%d", statuses[i]);
}

Test(agent_answer, other_statuses_are_bad_answers) {
  cr_assert_eq(parse(302, ""), AGENT_ENROLL_BAD_ANSWER);
  cr_assert_eq(parse(101, ""), AGENT_ENROLL_BAD_ANSWER);
  cr_assert_eq(parse(600, ""), AGENT_ENROLL_BAD_ANSWER);
}

Test(agent_answer, error_bodies_of_any_shape) {
  cr_assert_eq(parse(403, "<html>forbidden</html>"), AGENT_ENROLL_REFUSED);
  cr_assert_str_eq(ans.code, "");
  cr_assert_eq(parse(403, "{\"error\":\"flat\"}"), AGENT_ENROLL_REFUSED);
  cr_assert_str_eq(ans.code, "");
  cr_assert_eq(parse(403, NULL), AGENT_ENROLL_REFUSED);
}

Test(agent_answer, error_text_is_made_printable_and_bounded) {
  char msg[AGENT_ENROLL_MESSAGE_MAX + 100];
  memset(msg, 'm', sizeof(msg) - 1);
  msg[sizeof(msg) - 1] = '\0';
  cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
  cJSON_AddStringToObject(e, "code", "bad\x1b[31mcode");
  cJSON_AddStringToObject(e, "message", msg);
  char *s = cJSON_PrintUnformatted(o);
  cr_assert_eq(parse(401, s), AGENT_ENROLL_REFUSED);
  cr_assert_str_eq(ans.code, "bad?[31mcode");
  cr_assert_eq(strlen(ans.message), AGENT_ENROLL_MESSAGE_MAX);
  cJSON_free(s);
  cJSON_Delete(o);
}

/* --- the answer against the agent's facts ------------------------------------------- */

static void check_setup(void) {
  fixture_make(&fx);
  fixture_make(&fx2);
}

TestSuite(agent_check, .init = check_setup);

static const char *check(const char *id, const char *cert, const char *ca) {
  char *b = ok_body(id, cert, ca);
  cr_assert_eq(parse(200, b), AGENT_ENROLL_OK);
  cJSON_free(b);
  return agent_enroll_check(&ans, ID, fx.key_pin, fx.ca_pin, &issued);
}

Test(agent_check, the_right_answer_passes) {
  cr_assert_null(check(ID, fx.cert_pem, fx.ca_pem));
  cr_assert_str_eq(issued.name, "edge-1");
  cr_assert_eq(issued.ca_len, fx.ca_cert_len);
  cr_assert(memcmp(issued.ca_der, fx.ca_cert, fx.ca_cert_len) == 0);
  cr_assert_str_eq(issued.ca_pem, fx.ca_pem);
  cr_assert_eq(issued.cert_pem_len, strlen(issued.cert_pem));
}

Test(agent_check, text_around_the_pem_is_dropped) {
  char wrapped[ATUN_CA_PEM_MAX + 64];
  snprintf(wrapped, sizeof(wrapped), "junk before\n%sjunk after\n", fx.cert_pem);
  cr_assert_null(check(ID, wrapped, fx.ca_pem));
  cr_assert_str_eq(issued.cert_pem, fx.cert_pem);
}

Test(agent_check, another_agent_id_in_the_answer) {
  cr_assert_not_null(check(ID2, fx.cert_pem, fx.ca_pem));
}

Test(agent_check, not_pem) {
  cr_assert_not_null(check(ID, "hello", fx.ca_pem));
  cr_assert_not_null(check(ID, fx.cert_pem, "hello"));
}

Test(agent_check, a_ca_other_than_the_pinned_one) {
  /* Consistent in itself (a certificate and its CA), just not ours. */
  cr_assert_not_null(check(ID, fx2.cert_pem, fx2.ca_pem));
}

Test(agent_check, a_certificate_for_another_key) {
  char cert[ATUN_CA_PEM_MAX];
  issue(&fx, &fx2, "edge-1", ID, cert);
  cr_assert_not_null(check(ID, cert, fx.ca_pem));
}

Test(agent_check, a_certificate_for_another_id) {
  char cert[ATUN_CA_PEM_MAX];
  issue(&fx, NULL, "edge-1", ID2, cert);
  cr_assert_not_null(check(ID, cert, fx.ca_pem));
}

Test(agent_check, a_certificate_the_pinned_ca_did_not_sign) {
  /* Our key and id, signed by another CA, sent with our CA. */
  char cert[ATUN_CA_PEM_MAX];
  issue(&fx2, &fx, "edge-1", ID, cert);
  cr_assert_not_null(check(ID, cert, fx.ca_pem));
}

Test(agent_check, the_ca_certificate_is_no_client_certificate) {
  cr_assert_not_null(check(ID, fx.ca_pem, fx.ca_pem));
}

Test(agent_check, the_issued_name_is_reported) {
  char cert[ATUN_CA_PEM_MAX];
  issue(&fx, NULL, "renamed.by-token", ID, cert);
  cr_assert_null(check(ID, cert, fx.ca_pem));
  cr_assert_str_eq(issued.name, "renamed.by-token");
}

/* --- files: order and rollback ---------------------------------------------------- */

typedef struct faulty {
  int writes;      /* calls so far */
  int fail_at;     /* the call that fails (1-based), 0 = none */
  int removes_fail;
  char log[8][ATUN_CONFIG_PATH_MAX + 1];
} faulty;

static int faulty_write(const char *path, const void *data, size_t len, mode_t mode,
                        unsigned flags, void *ud) {
  faulty *f = ud;
  int n = f->writes++;
  if (n < 8) snprintf(f->log[n], sizeof(f->log[n]), "%s", path);
  if (f->fail_at == n + 1) return ATUN_ERR_STORE;
  return atun_fs_write_atomic(path, data, len, mode, flags);
}

static int faulty_remove(const char *path, void *ud) {
  faulty *f = ud;
  if (f->removes_fail) return ATUN_ERR_DENIED;
  return agent_fs_ops_default()->remove(path, NULL);
}

static char dir[64];
static char config[128];

static void files_setup(void) {
  snprintf(dir, sizeof(dir), "/tmp/atun-agent-test.XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(config, sizeof(config), "%s/agent.json", dir);
  cr_assert_eq(atun_fs_write_atomic(config, "{\"keep\": 1}\n", 12, 0640, 0), 0);
}

static size_t entries(void) {
  DIR *d = opendir(dir);
  cr_assert_not_null(d);
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) ++n;
  closedir(d);
  return n;
}

static void files_teardown(void) {
  DIR *d = opendir(dir);
  if (d == NULL) return;
  char path[512];
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    if (e->d_name[0] != '.') unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

TestSuite(agent_files, .init = files_setup, .fini = files_teardown);

static void config_untouched(void) {
  char buf[64];
  size_t len;
  cr_assert_eq(atun_fs_read(config, buf, sizeof(buf), &len), 0);
  cr_assert_eq(len, 12);
  cr_assert(memcmp(buf, "{\"keep\": 1}\n", 12) == 0);
}

/* Runs the enrollment's writes in order; returns the step that failed (1
 * key, 2 certificate, 3 CA, 4 config) or 0. */
static int run_steps(agent_enroll_files *f) {
  if (agent_enroll_files_write_key(f, "K", 1) != 0) return 1;
  int rv = agent_enroll_files_write_certs(f, "C", 1, "A", 1);
  if (rv != 0) return (f->written & (1u << AGENT_FILE_CERT)) ? 3 : 2;
  if (agent_enroll_files_write_config(f, config, "{\"new\": 1}\n", 11, 0640) != 0) return 4;
  return 0;
}

Test(agent_files, plan_names_the_files_by_agent_id) {
  agent_enroll_files f;
  cr_assert_eq(agent_enroll_files_plan(&f, dir, ID, agent_fs_ops_default()), 0);
  char want[256];
  snprintf(want, sizeof(want), "%s/agent-%s.key", dir, ID);
  cr_assert_str_eq(f.path[AGENT_FILE_KEY], want);
  snprintf(want, sizeof(want), "%s/agent-%s-ca.crt", dir, ID);
  cr_assert_str_eq(f.path[AGENT_FILE_CA], want);
  cr_assert_eq(agent_enroll_files_plan(&f, "/", ID, agent_fs_ops_default()), 0);
  snprintf(want, sizeof(want), "/agent-%s.crt", ID);
  cr_assert_str_eq(f.path[AGENT_FILE_CERT], want);
}

Test(agent_files, plan_refuses_what_could_not_be_written) {
  agent_enroll_files f;
  cr_assert_eq(agent_enroll_files_plan(&f, "relative", ID, agent_fs_ops_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_enroll_files_plan(&f, dir, "not-a-uuid", agent_fs_ops_default()),
               ATUN_ERR_INVALID_ARGUMENT);
  /* The longest directory whose CA file name still fits, and one more. */
  char longdir[ATUN_CONFIG_PATH_MAX + 2];
  size_t fit = ATUN_CONFIG_PATH_MAX - strlen("/agent-") - ATUN_UUID_LEN - strlen("-ca.crt");
  memset(longdir, 'd', fit);
  longdir[0] = '/';
  longdir[fit] = '\0';
  cr_assert_eq(agent_enroll_files_plan(&f, longdir, ID, agent_fs_ops_default()), 0);
  longdir[fit] = 'd';
  longdir[fit + 1] = '\0';
  cr_assert_eq(agent_enroll_files_plan(&f, longdir, ID, agent_fs_ops_default()),
               ATUN_ERR_INVALID_ARGUMENT);
}

Test(agent_files, all_steps_in_order) {
  faulty ft = {0};
  agent_fs_ops ops = {faulty_write, faulty_remove, &ft};
  agent_enroll_files f;
  cr_assert_eq(agent_enroll_files_plan(&f, dir, ID, &ops), 0);
  cr_assert_eq(run_steps(&f), 0);
  cr_assert_eq(ft.writes, 4);
  cr_assert_str_eq(ft.log[0], f.path[AGENT_FILE_KEY]);
  cr_assert_str_eq(ft.log[1], f.path[AGENT_FILE_CERT]);
  cr_assert_str_eq(ft.log[2], f.path[AGENT_FILE_CA]);
  cr_assert_str_eq(ft.log[3], config);
  struct stat st;
  for (int i = 0; i < AGENT_FILE_COUNT; ++i) {
    cr_assert_eq(stat(f.path[i], &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "%s", f.path[i]);
  }
  cr_assert_eq(stat(config, &st), 0);
  cr_assert_eq(st.st_mode & 0777, 0640);
  cr_assert_eq(entries(), 4);
}

Test(agent_files, a_failure_at_any_step_leaves_the_old_state) {
  for (int step = 1; step <= 4; ++step) {
    faulty ft = {.fail_at = step};
    agent_fs_ops ops = {faulty_write, faulty_remove, &ft};
    agent_enroll_files f;
    cr_assert_eq(agent_enroll_files_plan(&f, dir, ID, &ops), 0);
    cr_assert_eq(run_steps(&f), step);
    cr_assert_eq(agent_enroll_files_rollback(&f), 0);
    cr_assert_eq(f.written, 0);
    cr_assert_eq(entries(), 1, "step %d", step);
    config_untouched();
  }
}

Test(agent_files, an_existing_file_is_never_replaced) {
  agent_enroll_files f;
  cr_assert_eq(agent_enroll_files_plan(&f, dir, ID, agent_fs_ops_default()), 0);
  cr_assert_eq(atun_fs_write_atomic(f.path[AGENT_FILE_KEY], "old", 3, 0600, 0), 0);
  cr_assert_eq(agent_enroll_files_write_key(&f, "new", 3), ATUN_ERR_EXISTS);
  /* Not ours: a rollback leaves it. */
  cr_assert_eq(agent_enroll_files_rollback(&f), 0);
  char buf[8];
  size_t len;
  cr_assert_eq(atun_fs_read(f.path[AGENT_FILE_KEY], buf, sizeof(buf), &len), 0);
  cr_assert_eq(len, 3);
  cr_assert(memcmp(buf, "old", 3) == 0);
}

Test(agent_files, rollback_reports_what_it_could_not_remove) {
  faulty ft = {.fail_at = 4};
  agent_fs_ops ops = {faulty_write, faulty_remove, &ft};
  agent_enroll_files f;
  cr_assert_eq(agent_enroll_files_plan(&f, dir, ID, &ops), 0);
  cr_assert_eq(run_steps(&f), 4);
  ft.removes_fail = 1;
  cr_assert_eq(agent_enroll_files_rollback(&f), 3);
  cr_assert_eq(f.written, 7u);
  ft.removes_fail = 0;
  cr_assert_eq(agent_enroll_files_rollback(&f), 0);
  cr_assert_eq(entries(), 1);
}
