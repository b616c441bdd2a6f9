/*
 * Agent certificate renewal (agent/renew.c): when a request is due, what
 * the periodic step sends on an established session, which certificates an
 * answer may install, and the atomic swap of cert_file in a temporary
 * directory.  Certificates come from io/ca; the checks use the real clock
 * (the certificate manager does).
 *
 * The agent sources are not in a library, so the modules are compiled in.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../agent/pin.c"
#include "../agent/renew.c"
#include "support.h"

#define S(x) ((atun_tstamp)(x) * ATUN_NS_PER_S)
#define DAY_NS S(86400)
#define MONO_T0 S(1000)

static const char *const ID = "0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f";
static const char *const OTHER_ID = "1b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f";

typedef struct blob {
  uint8_t d[ATUN_CA_DER_MAX];
  size_t n;
} blob;

typedef struct pki {
  atun_ca_settings s;
  blob ca_key, ca_cert, agent_key;
  atun_ca_issuer ca;
} pki;

static pki w, other;
static char dir[64];
static atun_config_agent cfg;

/* A client certificate for |id| with |key|, issued |age_ns| ago by |p|. */
static void issue(const pki *p, const blob *key, const char *id, uint64_t age_ns,
                  blob *out) {
  atun_cert_profile prof, ca;
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spki_len;
  cr_assert_eq(atun_ca_key_spki(key->d, key->n, spki, sizeof(spki), &spki_len), 0);
  cr_assert_eq(atun_ca_cert_read(p->ca_cert.d, p->ca_cert.n, &ca), 0);
  cr_assert_eq(atun_ca_profile_client(&prof, &p->s, "edge-1", id,
                                      agent_renew_wall_now() - age_ns, ca.not_after,
                                      atun_ca_sysrand()), 0);
  cr_assert_eq(atun_ca_issue(&prof, spki, spki_len, &p->ca, out->d, sizeof(out->d),
                             &out->n), 0);
}

static void pki_make(pki *p) {
  memset(p, 0, sizeof(*p));
  atun_ca_settings_default(&p->s);
  atun_tstamp then = agent_renew_wall_now() - 200 * DAY_NS;
  cr_assert_eq(atun_ca_create(&p->s, then, atun_ca_sysrand(), p->ca_key.d,
                              sizeof(p->ca_key.d), &p->ca_key.n, p->ca_cert.d,
                              sizeof(p->ca_cert.d), &p->ca_cert.n), 0);
  p->ca = (atun_ca_issuer){p->ca_cert.d, p->ca_cert.n, p->ca_key.d, p->ca_key.n};
  cr_assert_eq(atun_ca_key_generate(p->agent_key.d, sizeof(p->agent_key.d),
                                    &p->agent_key.n), 0);
}

static void write_pem(const char *path, atun_pem_type type, const blob *b) {
  static char pem[ATUN_CA_PEM_MAX];
  size_t n;
  cr_assert_eq(atun_pem_encode(type, b->d, b->n, pem, sizeof(pem), &n), 0);
  cr_assert_eq(atun_fs_write_atomic(path, pem, n, 0600, 0), 0);
}

static void read_cert_file(blob *out) {
  static char pem[ATUN_CA_PEM_MAX];
  size_t n;
  cr_assert_eq(atun_fs_read(cfg.cert_file, pem, sizeof(pem), &n), 0);
  cr_assert_eq(atun_pem_decode(ATUN_PEM_CERT, pem, n, out->d, sizeof(out->d), &out->n), 0);
}

/* An enrolled agent in a temporary directory, its certificate |age_ns| old. */
static void files_make(uint64_t age_ns) {
  blob cert;
  memset(&cfg, 0, sizeof(cfg));
  snprintf(cfg.name, sizeof(cfg.name), "edge-1");
  snprintf(cfg.agent_id, sizeof(cfg.agent_id), "%s", ID);
  snprintf(cfg.key_file, sizeof(cfg.key_file), "%s/agent.key", dir);
  snprintf(cfg.cert_file, sizeof(cfg.cert_file), "%s/agent.crt", dir);
  snprintf(cfg.ca_file, sizeof(cfg.ca_file), "%s/ca.crt", dir);
  write_pem(cfg.key_file, ATUN_PEM_KEY, &w.agent_key);
  write_pem(cfg.ca_file, ATUN_PEM_CERT, &w.ca_cert);
  issue(&w, &w.agent_key, ID, age_ns, &cert);
  write_pem(cfg.cert_file, ATUN_PEM_CERT, &cert);
}

static void setup(void) {
  pki_make(&w);
  pki_make(&other);
  snprintf(dir, sizeof(dir), "/tmp/atun-renew-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  files_make(0);
}

static void rm_if(const char *path) { (void)unlink(path); }

static void teardown(void) {
  rm_if(cfg.key_file);
  rm_if(cfg.cert_file);
  rm_if(cfg.ca_file);
  rmdir(dir);
}

TestSuite(agent_renew, .init = setup, .fini = teardown);

/* --- the decision --------------------------------------------------------- */

static agent_renew known(atun_tstamp nb, atun_tstamp na) {
  agent_renew r;
  agent_renew_init(&r);
  r.known = 1;
  r.not_before = nb;
  r.not_after = na;
  return r;
}

Test(agent_renew, due_at_two_thirds_of_the_lifetime) {
  agent_renew r = known(S(3000), S(6000));
  cr_assert_not(agent_renew_due(&r, S(4999)));
  cr_assert(agent_renew_due(&r, S(5000)));
  cr_assert(agent_renew_due(&r, S(7000)), "expired is due too");
}

Test(agent_renew, never_due_while_unknown_outstanding_or_waiting) {
  agent_renew r;
  agent_renew_init(&r);
  cr_assert_not(agent_renew_due(&r, S(9000)));
  r = known(S(3000), S(6000));
  r.outstanding = 1;
  cr_assert_not(agent_renew_due(&r, S(5500)));
  agent_renew_on_established(&r);
  cr_assert(agent_renew_due(&r, S(5500)), "a lost request may be asked again");
  r.retry_at = S(5600);
  cr_assert_not(agent_renew_due(&r, S(5599)));
  cr_assert(agent_renew_due(&r, S(5600)));
}

Test(agent_renew, load_reads_the_validity) {
  agent_renew r;
  agent_renew_init(&r);
  cr_assert_eq(agent_renew_load(&r, cfg.cert_file), 0);
  cr_assert(r.known);
  cr_assert_eq(r.not_after - r.not_before, w.s.client_lifetime_ns + w.s.backdate_ns);
  cr_assert_not(agent_renew_due(&r, agent_renew_wall_now()));
}

Test(agent_renew, load_failures) {
  agent_renew r;
  agent_renew_init(&r);
  char path[96];
  snprintf(path, sizeof(path), "%s/missing.crt", dir);
  cr_assert_neq(agent_renew_load(&r, path), 0);
  cr_assert_eq(agent_renew_load(&r, cfg.key_file), ATUN_ERR_MALFORMED, "not a cert");
  cr_assert_not(r.known);
}

/* --- the checks on an issued certificate ---------------------------------- */

static int check(const blob *cert, const pki *ca, const blob *key) {
  atun_cert_profile p;
  const char *why = NULL;
  int rv = agent_renew_check_cert(cert->d, cert->n, ca->ca_cert.d, ca->ca_cert.n, key->d,
                                  key->n, ID, &p, &why);
  if (rv != 0) cr_assert_not_null(why);
  return rv;
}

Test(agent_renew, check_accepts_our_certificate) {
  blob c;
  issue(&w, &w.agent_key, ID, 0, &c);
  cr_assert_eq(check(&c, &w, &w.agent_key), 0);
}

Test(agent_renew, check_refuses_another_ca_id_or_key) {
  blob c;
  issue(&other, &w.agent_key, ID, 0, &c);
  cr_assert_eq(check(&c, &w, &w.agent_key), ATUN_ERR_DENIED, "other CA");
  issue(&w, &w.agent_key, OTHER_ID, 0, &c);
  cr_assert_eq(check(&c, &w, &w.agent_key), ATUN_ERR_DENIED, "other id");
  issue(&w, &other.agent_key, ID, 0, &c);
  cr_assert_eq(check(&c, &w, &w.agent_key), ATUN_ERR_DENIED, "other key");
  issue(&w, &w.agent_key, ID, 100 * DAY_NS, &c);
  cr_assert_eq(check(&c, &w, &w.agent_key), ATUN_ERR_DENIED, "expired");
  blob junk = {.d = {0x30, 0x03, 0x02, 0x01, 0x01}, .n = 5};
  cr_assert_neq(check(&junk, &w, &w.agent_key), 0);
}

/* --- the file swap -------------------------------------------------------- */

Test(agent_renew, install_replaces_the_file_with_mode_0600) {
  blob c, back;
  issue(&w, &w.agent_key, ID, 0, &c);
  chmod(cfg.cert_file, 0644);
  cr_assert_eq(agent_renew_install(cfg.cert_file, c.d, c.n), 0);
  struct stat st;
  cr_assert_eq(stat(cfg.cert_file, &st), 0);
  cr_assert_eq(st.st_mode & 0777, 0600);
  read_cert_file(&back);
  cr_assert_eq(back.n, c.n);
  cr_assert_eq(memcmp(back.d, c.d, c.n), 0);
}

Test(agent_renew, install_failures) {
  blob c;
  issue(&w, &w.agent_key, ID, 0, &c);
  char path[96];
  snprintf(path, sizeof(path), "%s/no/such/dir.crt", dir);
  cr_assert_neq(agent_renew_install(path, c.d, c.n), 0);
  static uint8_t huge[ATUN_CA_DER_MAX + 1];
  cr_assert_eq(agent_renew_install(cfg.cert_file, huge, sizeof(huge)),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_renew_install(cfg.cert_file, c.d, 0), ATUN_ERR_INVALID_ARGUMENT);
  blob back;
  read_cert_file(&back);
  cr_assert_neq(back.n, 0, "the old file is still there");
}

/* --- answers -------------------------------------------------------------- */

static atun_cert_renew_response ok(blob *c) {
  return (atun_cert_renew_response){.status = ATUN_CERT_STATUS_OK, .cert = c->d,
                                    .cert_len = c->n};
}

Test(agent_renew, ok_answer_installs_and_moves_not_after) {
  files_make(70 * DAY_NS);
  agent_renew r;
  agent_renew_init(&r);
  cr_assert_eq(agent_renew_load(&r, cfg.cert_file), 0);
  atun_tstamp old_after = r.not_after;
  r.outstanding = 1;
  blob c, back;
  issue(&w, &w.agent_key, ID, 0, &c);
  atun_cert_renew_response resp = ok(&c);
  cr_assert_eq(agent_renew_on_response(&r, &cfg, &resp, agent_renew_wall_now()), 0);
  cr_assert_not(r.outstanding);
  cr_assert_gt(r.not_after, old_after);
  read_cert_file(&back);
  cr_assert_eq(memcmp(back.d, c.d, c.n), 0);
  cr_assert_not(agent_renew_due(&r, agent_renew_wall_now()));
  cr_assert(agent_renew_take_installed(&r));
  cr_assert_not(agent_renew_take_installed(&r), "reported once");
}

Test(agent_renew, refusal_waits_the_retry_delay) {
  agent_renew r = known(S(3000), S(6000));
  r.outstanding = 1;
  atun_cert_renew_response resp = {.status = ATUN_CERT_STATUS_RETRY_LATER,
                                   .message = (char *)"busy"};
  cr_assert_eq(agent_renew_on_response(&r, &cfg, &resp, S(5000)), ATUN_ERR_DENIED);
  cr_assert_not(r.outstanding);
  cr_assert_eq(r.retry_at, S(5000) + AGENT_RENEW_RETRY_NS);
  cr_assert_not(agent_renew_due(&r, S(5000) + AGENT_RENEW_RETRY_NS - 1));
  cr_assert(agent_renew_due(&r, S(5000) + AGENT_RENEW_RETRY_NS));
}

Test(agent_renew, bad_certificate_leaves_the_file_alone) {
  blob before, c, after;
  read_cert_file(&before);
  issue(&w, &other.agent_key, ID, 0, &c);
  agent_renew r = known(S(3000), S(6000));
  atun_cert_renew_response resp = ok(&c);
  cr_assert_eq(agent_renew_on_response(&r, &cfg, &resp, S(5000)), ATUN_ERR_DENIED);
  cr_assert_eq(r.not_after, S(6000));
  cr_assert_eq(r.retry_at, S(5000) + AGENT_RENEW_RETRY_NS);
  cr_assert_not(agent_renew_take_installed(&r));
  read_cert_file(&after);
  cr_assert_eq(after.n, before.n);
  cr_assert_eq(memcmp(after.d, before.d, before.n), 0);
}

Test(agent_renew, unreadable_ca_or_key_is_a_failure) {
  blob c;
  issue(&w, &w.agent_key, ID, 0, &c);
  atun_cert_renew_response resp = ok(&c);
  agent_renew r = known(S(3000), S(6000));
  unlink(cfg.ca_file);
  cr_assert_neq(agent_renew_on_response(&r, &cfg, &resp, S(5000)), 0);
  write_pem(cfg.ca_file, ATUN_PEM_CERT, &w.ca_cert);
  unlink(cfg.key_file);
  cr_assert_neq(agent_renew_on_response(&r, &cfg, &resp, S(5000)), 0);
  cr_assert_eq(r.not_after, S(6000));
}

/* --- the periodic step on a real session ---------------------------------- */

static int on_event(atun_session_agent *s, const atun_session_agent_event *ev, void *ud) {
  (void)s, (void)ev, (void)ud;
  return 0;
}

static atun_testrng rng;
static atun_rand rnd;

static atun_session_agent *session_new(void) {
  atun_session_agent_settings st;
  atun_session_agent_settings_default(&st);
  atun_testrng_seed(&rng, 7);
  rnd = atun_testrng_as_rand(&rng);
  atun_session_agent *s = NULL;
  cr_assert_eq(atun_session_agent_new(&s, &st, on_event, &rnd, atun_mem_default(), NULL), 0);
  return s;
}

static void drain_out(atun_session_agent *s) {
  uint8_t buf[4096];
  while (atun_session_agent_write(s, buf, sizeof(buf)) > 0) {}
}

static void establish(atun_session_agent *s) {
  cr_assert_eq(atun_session_agent_start(s, MONO_T0), 0);
  atun_tstamp t = atun_session_agent_get_expiry(s);
  cr_assert_eq(atun_session_agent_handle_expiry(s, t), 0);
  cr_assert_eq(atun_session_agent_on_transport_connected(s, t), 0);
  drain_out(s);
  atun_msg ack = {.type = ATUN_FRAME_HELLO_ACK};
  ack.u.hello_ack.chosen_version = ATUN_PROTO_VERSION_MAX;
  ack.u.hello_ack.heartbeat_interval_ms = 30000;
  static uint8_t buf[1024];
  ssize_t n = atun_frame_encode(buf, sizeof(buf), &ack);
  cr_assert_gt(n, 0);
  cr_assert_eq(atun_session_agent_on_data(s, t, buf, (size_t)n), 0);
  cr_assert_eq(atun_session_agent_get_state(s), ATUN_SESSION_AGENT_ESTABLISHED);
  drain_out(s);
}

Test(agent_renew, tick_asks_once_when_due) {
  files_make(70 * DAY_NS);
  atun_session_agent *s = session_new();
  agent_renew r;
  agent_renew_init(&r);
  atun_tstamp wall = agent_renew_wall_now();
  cr_assert_eq(agent_renew_tick(&r, &cfg, s, MONO_T0, wall), 0);
  cr_assert_not(r.known, "nothing happens before the session is established");
  establish(s);
  cr_assert_eq(agent_renew_tick(&r, &cfg, s, MONO_T0, wall), 0);
  cr_assert(r.outstanding);
  cr_assert_gt(atun_session_agent_pending(s), 0, "the request is queued");
  drain_out(s);
  cr_assert_eq(agent_renew_tick(&r, &cfg, s, MONO_T0, wall), 0);
  cr_assert_eq(atun_session_agent_pending(s), 0, "one request at a time");
  atun_session_agent_del(s);
}

Test(agent_renew, tick_does_nothing_for_a_young_certificate) {
  atun_session_agent *s = session_new();
  establish(s);
  agent_renew r;
  agent_renew_init(&r);
  cr_assert_eq(agent_renew_tick(&r, &cfg, s, MONO_T0, agent_renew_wall_now()), 0);
  cr_assert(r.known);
  cr_assert_not(r.outstanding);
  cr_assert_eq(atun_session_agent_pending(s), 0);
  atun_session_agent_del(s);
}

Test(agent_renew, tick_failures_wait_the_retry_delay) {
  atun_session_agent *s = session_new();
  establish(s);
  agent_renew r;
  agent_renew_init(&r);
  atun_tstamp wall = agent_renew_wall_now();
  unlink(cfg.cert_file);
  cr_assert_eq(agent_renew_tick(&r, &cfg, s, MONO_T0, wall), 0);
  cr_assert_not(r.known);
  cr_assert_eq(r.retry_at, wall + AGENT_RENEW_RETRY_NS);
  files_make(70 * DAY_NS);
  unlink(cfg.key_file);
  wall = r.retry_at;
  cr_assert_eq(agent_renew_tick(&r, &cfg, s, MONO_T0, wall), 0);
  cr_assert(r.known);
  cr_assert_not(r.outstanding);
  cr_assert_eq(r.retry_at, wall + AGENT_RENEW_RETRY_NS);
  cr_assert_eq(atun_session_agent_pending(s), 0);
  atun_session_agent_del(s);
}
