/*
 * The agent's first-contact checks (agent/pin.c) on certificates made by
 * io/ca: which certificate of a chain carries the pin, whether a
 * certificate verifies against that anchor, and whether the leaf is a
 * gateway server certificate for the URL's host.
 *
 * The agent sources are not in a library, so the module is compiled in.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <time.h>

#include "../agent/pin.c"

#define S(x) ((atun_tstamp)(x) * ATUN_NS_PER_S)
#define DAY_NS S(86400)

static const char *const ID = "0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f";

typedef struct blob {
  uint8_t d[ATUN_CA_DER_MAX];
  size_t n;
} blob;

typedef struct pki {
  atun_ca_settings s;
  blob ca_key, ca_cert, srv_key, srv_cert, agent_key, agent_cert;
  atun_ca_issuer ca;
  uint8_t ca_pin[ATUN_SHA256_LEN];
  uint8_t srv_pin[ATUN_SHA256_LEN];
} pki;

static pki w, other;

/* The certificate manager checks validity against the real clock. */
static atun_tstamp wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return S(ts.tv_sec) + (atun_tstamp)ts.tv_nsec;
}

static void issue_server(pki *p, blob *out, atun_tstamp now) {
  const char *hosts[] = {"gw.example.com", "127.0.0.1", "::1"};
  cr_assert_eq(atun_ca_server_issue(&p->s, hosts, 3, p->srv_key.d, p->srv_key.n, &p->ca,
                                    now, atun_ca_sysrand(), out->d, sizeof(out->d),
                                    &out->n), 0);
}

static void issue_client(pki *p) {
  atun_cert_profile prof;
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spki_len;
  cr_assert_eq(atun_ca_key_spki(p->agent_key.d, p->agent_key.n, spki, sizeof(spki),
                                &spki_len), 0);
  atun_cert_profile ca;
  cr_assert_eq(atun_ca_cert_read(p->ca_cert.d, p->ca_cert.n, &ca), 0);
  cr_assert_eq(atun_ca_profile_client(&prof, &p->s, "edge-1", ID, wall_now(),
                                      ca.not_after, atun_ca_sysrand()), 0);
  cr_assert_eq(atun_ca_issue(&prof, spki, spki_len, &p->ca, p->agent_cert.d,
                             sizeof(p->agent_cert.d), &p->agent_cert.n), 0);
}

/* A CA made |age_ns| ago, its server certificate issued then too. */
static void pki_make(pki *p, uint64_t age_ns) {
  memset(p, 0, sizeof(*p));
  atun_ca_settings_default(&p->s);
  atun_tstamp then = wall_now() - age_ns;
  cr_assert_eq(atun_ca_create(&p->s, then, atun_ca_sysrand(), p->ca_key.d,
                              sizeof(p->ca_key.d), &p->ca_key.n, p->ca_cert.d,
                              sizeof(p->ca_cert.d), &p->ca_cert.n), 0);
  p->ca = (atun_ca_issuer){p->ca_cert.d, p->ca_cert.n, p->ca_key.d, p->ca_key.n};
  cr_assert_eq(atun_ca_key_generate(p->srv_key.d, sizeof(p->srv_key.d), &p->srv_key.n), 0);
  cr_assert_eq(atun_ca_key_generate(p->agent_key.d, sizeof(p->agent_key.d),
                                    &p->agent_key.n), 0);
  issue_server(p, &p->srv_cert, then);
  issue_client(p);
  cr_assert_eq(atun_ca_cert_spki_pin(p->ca_cert.d, p->ca_cert.n, p->ca_pin), 0);
  cr_assert_eq(atun_ca_cert_spki_pin(p->srv_cert.d, p->srv_cert.n, p->srv_pin), 0);
}

static void setup(void) {
  pki_make(&w, 0);
  pki_make(&other, 0);
}

TestSuite(agent_pin, .init = setup);

/* --- agent_pin_find ------------------------------------------------------- */

Test(agent_pin, finds_the_ca_in_a_leaf_first_chain) {
  agent_der chain[2] = {{w.srv_cert.d, w.srv_cert.n}, {w.ca_cert.d, w.ca_cert.n}};
  cr_assert_eq(agent_pin_find(chain, 2, w.ca_pin), 1);
  cr_assert_eq(agent_pin_find(chain, 2, w.srv_pin), 0);
}

Test(agent_pin, a_chain_without_the_pinned_key_is_not_found) {
  agent_der chain[2] = {{w.srv_cert.d, w.srv_cert.n}, {w.ca_cert.d, w.ca_cert.n}};
  cr_assert_eq(agent_pin_find(chain, 2, other.ca_pin), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(agent_pin_find(chain, 0, w.ca_pin), ATUN_ERR_NOT_FOUND);
}

Test(agent_pin, unreadable_certificates_are_skipped) {
  static const uint8_t junk[] = {0x30, 0x03, 0x02, 0x01, 0x00};
  agent_der chain[3] = {{junk, sizeof(junk)}, {junk, 0}, {w.ca_cert.d, w.ca_cert.n}};
  cr_assert_eq(agent_pin_find(chain, 3, w.ca_pin), 2);
}

Test(agent_pin, chain_length_bound) {
  agent_der chain[AGENT_PIN_CHAIN_MAX + 1];
  for (size_t i = 0; i < AGENT_PIN_CHAIN_MAX + 1; ++i)
    chain[i] = (agent_der){w.srv_cert.d, w.srv_cert.n};
  chain[AGENT_PIN_CHAIN_MAX - 1] = (agent_der){w.ca_cert.d, w.ca_cert.n};
  /* At the bound the CA is found; one more certificate and the chain is
   * refused whole. */
  cr_assert_eq(agent_pin_find(chain, AGENT_PIN_CHAIN_MAX, w.ca_pin),
               AGENT_PIN_CHAIN_MAX - 1);
  cr_assert_eq(agent_pin_find(chain, AGENT_PIN_CHAIN_MAX + 1, w.ca_pin),
               ATUN_ERR_NOT_FOUND);
}

/* --- agent_pin_verify_issued ------------------------------------------------ */

Test(agent_pin, certificates_of_the_anchor_verify) {
  const char *why = NULL;
  cr_assert_eq(agent_pin_verify_issued(w.srv_cert.d, w.srv_cert.n, w.ca_cert.d,
                                       w.ca_cert.n, &why), 0);
  cr_assert_eq(agent_pin_verify_issued(w.agent_cert.d, w.agent_cert.n, w.ca_cert.d,
                                       w.ca_cert.n, &why), 0);
}

Test(agent_pin, another_cas_certificate_is_denied) {
  const char *why = NULL;
  cr_assert_eq(agent_pin_verify_issued(other.srv_cert.d, other.srv_cert.n, w.ca_cert.d,
                                       w.ca_cert.n, &why), ATUN_ERR_DENIED);
  cr_assert_not_null(why);
}

Test(agent_pin, an_expired_certificate_is_denied) {
  /* Server certificates live a year: one issued two years ago is over. */
  pki old;
  pki_make(&old, 2 * 365 * DAY_NS);
  const char *why = NULL;
  cr_assert_eq(agent_pin_verify_issued(old.srv_cert.d, old.srv_cert.n, old.ca_cert.d,
                                       old.ca_cert.n, &why), ATUN_ERR_DENIED);
}

Test(agent_pin, a_leaf_is_no_anchor) {
  const char *why = NULL;
  int rv = agent_pin_verify_issued(w.srv_cert.d, w.srv_cert.n, w.srv_cert.d,
                                   w.srv_cert.n, &why);
  cr_assert(rv == ATUN_ERR_MALFORMED || rv == ATUN_ERR_DENIED, "rv %d", rv);
}

Test(agent_pin, sizes_are_bounded) {
  const char *why = NULL;
  cr_assert_eq(agent_pin_verify_issued(w.srv_cert.d, 0, w.ca_cert.d, w.ca_cert.n, &why),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(agent_pin_verify_issued(w.srv_cert.d, w.srv_cert.n, w.ca_cert.d, 0, &why),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(agent_pin_verify_issued(w.srv_cert.d, ATUN_CA_DER_MAX + 1, w.ca_cert.d,
                                       w.ca_cert.n, &why), ATUN_ERR_MALFORMED);
  static const uint8_t junk[] = {1, 2, 3, 4};
  cr_assert_eq(agent_pin_verify_issued(w.srv_cert.d, w.srv_cert.n, junk, sizeof(junk),
                                       &why), ATUN_ERR_MALFORMED);
}

/* --- agent_pin_check_server --------------------------------------------------- */

static atun_target host(const char *s) {
  atun_target t;
  cr_assert_eq(atun_host_parse(&t, s, strlen(s)), 0, "%s", s);
  return t;
}

Test(agent_pin, the_server_certificate_names_its_hosts) {
  const char *why = NULL;
  const char *ok[] = {"gw.example.com", "GW.Example.COM", "127.0.0.1", "::1",
                      "::ffff:127.0.0.1"};
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); ++i) {
    atun_target t = host(ok[i]);
    cr_assert_eq(agent_pin_check_server(w.srv_cert.d, w.srv_cert.n, &t, &why), 0, "%s",
                 ok[i]);
  }
}

Test(agent_pin, other_hosts_are_denied) {
  const char *why = NULL;
  const char *bad[] = {"example.com", "x.gw.example.com", "127.0.0.2", "::2",
                       "localhost"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    atun_target t = host(bad[i]);
    why = NULL;
    cr_assert_eq(agent_pin_check_server(w.srv_cert.d, w.srv_cert.n, &t, &why),
                 ATUN_ERR_DENIED, "%s", bad[i]);
    cr_assert_not_null(why);
  }
}

Test(agent_pin, an_agent_certificate_can_not_pose_as_the_api) {
  /* Signed by the pinned CA, but clientAuth: an enrolled agent's. */
  const char *why = NULL;
  atun_target t = host("gw.example.com");
  cr_assert_eq(agent_pin_check_server(w.agent_cert.d, w.agent_cert.n, &t, &why),
               ATUN_ERR_DENIED);
  cr_assert_eq(agent_pin_check_server(w.ca_cert.d, w.ca_cert.n, &t, &why),
               ATUN_ERR_DENIED);
}

Test(agent_pin, an_unreadable_leaf_is_malformed) {
  static const uint8_t junk[] = {0x30, 0x00};
  const char *why = NULL;
  atun_target t = host("gw.example.com");
  cr_assert_eq(agent_pin_check_server(junk, sizeof(junk), &t, &why), ATUN_ERR_MALFORMED);
  cr_assert_not_null(why);
}
