#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/memory.h>
#include <wolfssl/wolfcrypt/random.h>

#include "ca.h"
#include "support.h"

#define S(x) ((atun_tstamp)(x) * ATUN_NS_PER_S)
#define DAY_NS S(86400)

static const char *const ID1 = "0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f";
static const char *const ID2 = "11111111-2222-4333-8444-555555555555";

/* The cert manager checks validity against the real clock. */
static atun_tstamp wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return S(ts.tv_sec) + (atun_tstamp)ts.tv_nsec;
}

typedef struct blob {
  uint8_t d[ATUN_CA_DER_MAX];
  size_t n;
} blob;

typedef struct world {
  atun_ca_settings s;
  blob ca_key, ca_cert, srv_key, srv_cert, agent_key;
  atun_ca_issuer ca;
  atun_tstamp now;
} world;

static world w;

static void world_setup(void) {
  memset(&w, 0, sizeof(w));
  atun_ca_settings_default(&w.s);
  w.now = wall_now();
  cr_assert_eq(atun_ca_create(&w.s, w.now, atun_ca_sysrand(), w.ca_key.d,
                              sizeof(w.ca_key.d), &w.ca_key.n, w.ca_cert.d,
                              sizeof(w.ca_cert.d), &w.ca_cert.n), 0);
  w.ca = (atun_ca_issuer){w.ca_cert.d, w.ca_cert.n, w.ca_key.d, w.ca_key.n};
  cr_assert_eq(atun_ca_key_generate(w.srv_key.d, sizeof(w.srv_key.d), &w.srv_key.n), 0);
  cr_assert_eq(atun_ca_key_generate(w.agent_key.d, sizeof(w.agent_key.d),
                                    &w.agent_key.n), 0);
}

static void issue_server(blob *out, atun_tstamp now) {
  const char *hosts[] = {"gw.example.com", "10.0.0.1", "2001:db8::1"};
  cr_assert_eq(atun_ca_server_issue(&w.s, hosts, 3, w.srv_key.d, w.srv_key.n, &w.ca,
                                    now, atun_ca_sysrand(), out->d, sizeof(out->d),
                                    &out->n), 0);
}

/* Agent: key -> CSR DER -> PEM. */
static void make_csr_pem(char *pem, size_t cap, size_t *len, const char *name,
                         const char *id) {
  uint8_t csr[ATUN_CA_DER_MAX];
  size_t csrlen;
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, w.agent_key.n, name, id, csr,
                                sizeof(csr), &csrlen), 0);
  cr_assert_eq(atun_pem_encode(ATUN_PEM_CSR, csr, csrlen, pem, cap, len), 0);
}

static void issue_client(blob *out, atun_cert_profile *prof, const char *name,
                         const char *id) {
  char pem[ATUN_CA_PEM_MAX];
  size_t pemlen;
  make_csr_pem(pem, sizeof(pem), &pemlen, "agent-from-csr", ID2);
  cr_assert_eq(atun_ca_sign_csr(&w.s, pem, pemlen, name, id, &w.ca, w.now,
                                atun_ca_sysrand(), out->d, sizeof(out->d), &out->n,
                                prof), 0);
}

static int chain_verifies(const blob *ca, const blob *leaf) {
  WOLFSSL_CERT_MANAGER *cm = wolfSSL_CertManagerNew();
  cr_assert_not_null(cm);
  cr_assert_eq(wolfSSL_CertManagerLoadCABuffer(cm, ca->d, (long)ca->n,
                                               WOLFSSL_FILETYPE_ASN1), WOLFSSL_SUCCESS);
  int rv = wolfSSL_CertManagerVerifyBuffer(cm, leaf->d, (long)leaf->n,
                                           WOLFSSL_FILETYPE_ASN1);
  wolfSSL_CertManagerFree(cm);
  return rv == WOLFSSL_SUCCESS;
}

TestSuite(ca, .init = world_setup);

Test(ca, key_generate) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX], spki2[ATUN_CA_SPKI_DER_MAX];
  size_t n, n2;
  cr_assert_leq(w.agent_key.n, ATUN_CA_KEY_DER_MAX);
  cr_assert_eq(atun_ca_key_spki(w.agent_key.d, w.agent_key.n, spki, sizeof(spki), &n), 0);
  cr_assert_eq(n, 91);
  cr_assert_eq(atun_ca_key_spki(w.srv_key.d, w.srv_key.n, spki2, sizeof(spki2), &n2), 0);
  cr_assert_neq(memcmp(spki, spki2, n), 0);
  cr_assert_eq(atun_ca_key_spki(w.agent_key.d, w.agent_key.n, spki, 90, &n),
               ATUN_ERR_NOBUF);
  uint8_t small[64];
  cr_assert_eq(atun_ca_key_generate(small, sizeof(small), &n), ATUN_ERR_NOBUF);
}

Test(ca, key_rejects_garbage) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX], key[ATUN_CA_KEY_DER_MAX + 1];
  size_t n;
  cr_assert_eq(atun_ca_key_spki(w.agent_key.d, 0, spki, sizeof(spki), &n),
               ATUN_ERR_MALFORMED);
  memcpy(key, w.agent_key.d, w.agent_key.n);
  key[w.agent_key.n] = 0;
  cr_assert_eq(atun_ca_key_spki(key, w.agent_key.n + 1, spki, sizeof(spki), &n),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_ca_key_spki(key, ATUN_CA_KEY_DER_MAX + 1, spki, sizeof(spki), &n),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_ca_key_spki(w.ca_cert.d, 100, spki, sizeof(spki), &n),
               ATUN_ERR_MALFORMED);
}

Test(ca, pem_round_trip_and_types) {
  char pem[ATUN_CA_PEM_MAX];
  size_t pemlen;
  uint8_t der[ATUN_CA_DER_MAX];
  size_t derlen;
  cr_assert_eq(atun_pem_encode(ATUN_PEM_CERT, w.ca_cert.d, w.ca_cert.n, pem,
                               sizeof(pem), &pemlen), 0);
  cr_assert_eq(strlen(pem), pemlen);
  cr_assert(strncmp(pem, "-----BEGIN CERTIFICATE-----\n", 28) == 0);
  cr_assert_eq(atun_pem_decode(ATUN_PEM_CERT, pem, pemlen, der, sizeof(der), &derlen), 0);
  cr_assert_eq(derlen, w.ca_cert.n);
  cr_assert_eq(memcmp(der, w.ca_cert.d, derlen), 0);
  /* The wrong type is not found. */
  cr_assert_eq(atun_pem_decode(ATUN_PEM_CSR, pem, pemlen, der, sizeof(der), &derlen),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_pem_decode(ATUN_PEM_CERT, pem, pemlen, der, derlen - 1, &derlen),
               ATUN_ERR_NOBUF);
  cr_assert_eq(atun_pem_encode(ATUN_PEM_CERT, w.ca_cert.d, w.ca_cert.n, pem, pemlen,
                               &pemlen), ATUN_ERR_NOBUF);

  cr_assert_eq(atun_pem_encode(ATUN_PEM_KEY, w.ca_key.d, w.ca_key.n, pem, sizeof(pem),
                               &pemlen), 0);
  cr_assert(strstr(pem, "-----BEGIN EC PRIVATE KEY-----") == pem);
  cr_assert_eq(atun_pem_decode(ATUN_PEM_KEY, pem, pemlen, der, sizeof(der), &derlen), 0);
  cr_assert_eq(derlen, w.ca_key.n);
  cr_assert_eq(memcmp(der, w.ca_key.d, derlen), 0);
  cr_assert_eq(atun_pem_decode(ATUN_PEM_KEY, "garbage", 7, der, sizeof(der), &derlen),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_pem_encode(ATUN_PEM_KEY, w.ca_key.d, 0, pem, sizeof(pem), &pemlen),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_pem_encode((atun_pem_type)9, w.ca_key.d, 4, pem, sizeof(pem),
                               &pemlen), ATUN_ERR_INVALID_ARGUMENT);
}

Test(ca, pem_size_bound) {
  static char big[ATUN_CA_PEM_MAX + 2];
  char pem[ATUN_CA_PEM_MAX];
  size_t pemlen;
  make_csr_pem(pem, sizeof(pem), &pemlen, "a", ID1);
  /* Pad with newlines up to the bound exactly: accepted; one more: refused. */
  memset(big, '\n', sizeof(big));
  memcpy(big, pem, pemlen);
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t n;
  cr_assert_eq(atun_ca_csr_verify_pem(big, ATUN_CA_PEM_MAX, spki, sizeof(spki), &n), 0);
  cr_assert_eq(atun_ca_csr_verify_pem(big, ATUN_CA_PEM_MAX + 1, spki, sizeof(spki), &n),
               ATUN_ERR_FRAME_TOO_LARGE);
}

Test(ca, ca_certificate_profile) {
  atun_cert_profile p;
  cr_assert_eq(atun_ca_cert_read(w.ca_cert.d, w.ca_cert.n, &p), 0);
  cr_assert_eq(p.kind, ATUN_CERT_CA);
  cr_assert(p.is_ca);
  cr_assert_str_eq(p.cn, "atun CA");
  cr_assert_eq(p.key_usage, ATUN_KU_KEY_CERT_SIGN | ATUN_KU_CRL_SIGN);
  cr_assert_eq(p.nsans, 0);
  cr_assert_eq(p.serial_len, ATUN_CA_SERIAL_LEN);
  cr_assert_eq(p.serial[0] & 0x80, 0);
  atun_tstamp nb = w.now - w.s.backdate_ns;
  cr_assert_eq(p.not_before, nb - nb % ATUN_NS_PER_S);
  cr_assert_eq(p.not_after - p.not_before, w.s.ca_lifetime_ns + w.s.backdate_ns);
  /* Self-signed and trusted as its own anchor. */
  cr_assert(chain_verifies(&w.ca_cert, &w.ca_cert));
}

Test(ca, server_certificate_round_trip) {
  blob srv;
  issue_server(&srv, w.now);
  cr_assert(chain_verifies(&w.ca_cert, &srv));
  atun_cert_profile p;
  cr_assert_eq(atun_ca_cert_read(srv.d, srv.n, &p), 0);
  cr_assert_eq(p.kind, ATUN_CERT_SERVER);
  cr_assert_not(p.is_ca);
  cr_assert_str_eq(p.cn, "atun gateway");
  cr_assert_eq(p.ext_key_usage, ATUN_EKU_SERVER_AUTH);
  cr_assert_eq(p.key_usage, ATUN_KU_DIGITAL_SIGNATURE);
  cr_assert_eq(p.nsans, 3);
  cr_assert_eq(p.sans[0].type, ATUN_SAN_DNS);
  cr_assert_str_eq(p.sans[0].name, "gw.example.com");
  cr_assert_eq(p.sans[1].type, ATUN_SAN_IP);
  cr_assert_eq(p.sans[1].ip.family, ATUN_AF_INET);
  cr_assert_eq(memcmp(p.sans[1].ip.bytes, "\x0a\x00\x00\x01", 4), 0);
  cr_assert_eq(p.sans[2].ip.family, ATUN_AF_INET6);
  cr_assert_eq(p.sans[2].ip.bytes[15], 1);
  char id[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), ATUN_ERR_NOT_FOUND);
}

Test(ca, server_renewal_keeps_pin) {
  blob a, b;
  issue_server(&a, w.now);
  issue_server(&b, w.now + 250 * DAY_NS);
  uint8_t pa[32], pb[32], pk[32], fa[32], fb[32];
  cr_assert_eq(atun_ca_cert_spki_pin(a.d, a.n, pa), 0);
  cr_assert_eq(atun_ca_cert_spki_pin(b.d, b.n, pb), 0);
  cr_assert_eq(memcmp(pa, pb, 32), 0);
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t n;
  cr_assert_eq(atun_ca_key_spki(w.srv_key.d, w.srv_key.n, spki, sizeof(spki), &n), 0);
  cr_assert_eq(atun_ca_spki_pin(spki, n, pk), 0);
  cr_assert_eq(memcmp(pa, pk, 32), 0);
  cr_assert_eq(atun_ca_cert_fingerprint(a.d, a.n, fa), 0);
  cr_assert_eq(atun_ca_cert_fingerprint(b.d, b.n, fb), 0);
  cr_assert_neq(memcmp(fa, fb, 32), 0);
  atun_cert_profile pra, prb;
  cr_assert_eq(atun_ca_cert_read(a.d, a.n, &pra), 0);
  cr_assert_eq(atun_ca_cert_read(b.d, b.n, &prb), 0);
  cr_assert_eq(prb.not_before - pra.not_before, 250 * DAY_NS);
  cr_assert(atun_ca_should_renew(pra.not_before, pra.not_after, w.now + 250 * DAY_NS));
  cr_assert_not(atun_ca_should_renew(prb.not_before, prb.not_after, w.now + 250 * DAY_NS));
}

Test(ca, client_certificate_round_trip) {
  blob cli;
  atun_cert_profile issued, p;
  issue_client(&cli, &issued, "db-proxy", ID1);
  cr_assert(chain_verifies(&w.ca_cert, &cli));
  cr_assert_eq(atun_ca_cert_read(cli.d, cli.n, &p), 0);
  cr_assert_eq(p.kind, ATUN_CERT_CLIENT);
  /* The enrollment's name and id, not the CSR's. */
  cr_assert_str_eq(p.cn, "db-proxy");
  char id[ATUN_UUID_STRLEN];
  cr_assert_eq(atun_cert_profile_agent_id(&p, id), 0);
  cr_assert_str_eq(id, ID1);
  cr_assert_eq(p.nsans, 1);
  cr_assert_eq(p.ext_key_usage, ATUN_EKU_CLIENT_AUTH);
  cr_assert_eq(p.key_usage, ATUN_KU_DIGITAL_SIGNATURE);
  cr_assert_eq(p.not_before, issued.not_before);
  cr_assert_eq(p.not_after, issued.not_after);
  cr_assert_eq(p.serial_len, issued.serial_len);
  cr_assert_eq(memcmp(p.serial, issued.serial, p.serial_len), 0);
  cr_assert_eq(p.not_after - p.not_before, w.s.client_lifetime_ns + w.s.backdate_ns);
  /* Issued for the agent's key: the pins match. */
  uint8_t spki[ATUN_CA_SPKI_DER_MAX], pin_key[32], pin_cert[32];
  size_t n;
  cr_assert_eq(atun_ca_key_spki(w.agent_key.d, w.agent_key.n, spki, sizeof(spki), &n), 0);
  cr_assert_eq(atun_ca_spki_pin(spki, n, pin_key), 0);
  cr_assert_eq(atun_ca_cert_spki_pin(cli.d, cli.n, pin_cert), 0);
  cr_assert_eq(memcmp(pin_key, pin_cert, 32), 0);
}

Test(ca, serials_are_random_positive_128_bit) {
  blob a, b;
  atun_cert_profile pa, pb;
  issue_client(&a, NULL, "a", ID1);
  issue_client(&b, NULL, "a", ID1);
  cr_assert_eq(atun_ca_cert_read(a.d, a.n, &pa), 0);
  cr_assert_eq(atun_ca_cert_read(b.d, b.n, &pb), 0);
  cr_assert_eq(pa.serial_len, 16);
  cr_assert_eq(pb.serial_len, 16);
  cr_assert_eq(pa.serial[0] & 0x80, 0);
  cr_assert_eq(pb.serial[0] & 0x80, 0);
  cr_assert_neq(memcmp(pa.serial, pb.serial, 16), 0);
}

Test(ca, other_ca_does_not_verify) {
  blob k2, c2, cli;
  cr_assert_eq(atun_ca_create(&w.s, w.now, atun_ca_sysrand(), k2.d, sizeof(k2.d), &k2.n,
                              c2.d, sizeof(c2.d), &c2.n), 0);
  issue_client(&cli, NULL, "a", ID1);
  cr_assert_not(chain_verifies(&c2, &cli));
  cr_assert(chain_verifies(&w.ca_cert, &cli));
}

Test(ca, client_lifetime_capped_by_ca) {
  w.s.ca_lifetime_ns = 30 * DAY_NS;
  cr_assert_eq(atun_ca_create(&w.s, w.now, atun_ca_sysrand(), w.ca_key.d,
                              sizeof(w.ca_key.d), &w.ca_key.n, w.ca_cert.d,
                              sizeof(w.ca_cert.d), &w.ca_cert.n), 0);
  w.ca = (atun_ca_issuer){w.ca_cert.d, w.ca_cert.n, w.ca_key.d, w.ca_key.n};
  blob cli;
  atun_cert_profile ca, p;
  issue_client(&cli, &p, "a", ID1);
  cr_assert_eq(atun_ca_cert_read(w.ca_cert.d, w.ca_cert.n, &ca), 0);
  cr_assert_eq(p.not_after, ca.not_after);
  char pem[ATUN_CA_PEM_MAX];
  size_t pemlen;
  make_csr_pem(pem, sizeof(pem), &pemlen, "a", ID1);
  cr_assert_eq(atun_ca_sign_csr(&w.s, pem, pemlen, "a", ID1, &w.ca, ca.not_after,
                                atun_ca_sysrand(), cli.d, sizeof(cli.d), &cli.n, NULL),
               ATUN_ERR_EXPIRED);
}

Test(ca, sign_csr_argument_errors) {
  char pem[ATUN_CA_PEM_MAX];
  size_t pemlen;
  blob cli;
  make_csr_pem(pem, sizeof(pem), &pemlen, "a", ID1);
  cr_assert_eq(atun_ca_sign_csr(&w.s, pem, pemlen, "bad name", ID1, &w.ca, w.now,
                                atun_ca_sysrand(), cli.d, sizeof(cli.d), &cli.n, NULL),
               ATUN_ERR_BAD_NAME);
  cr_assert_eq(atun_ca_sign_csr(&w.s, pem, pemlen, "a", "x", &w.ca, w.now,
                                atun_ca_sysrand(), cli.d, sizeof(cli.d), &cli.n, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ca_sign_csr(&w.s, pem, pemlen, "a", ID1, &w.ca, w.now,
                                atun_ca_sysrand(), cli.d, 100, &cli.n, NULL),
               ATUN_ERR_NOBUF);
  /* A leaf is not a CA. */
  blob srv;
  issue_server(&srv, w.now);
  atun_ca_issuer fake = {srv.d, srv.n, w.srv_key.d, w.srv_key.n};
  cr_assert_eq(atun_ca_sign_csr(&w.s, pem, pemlen, "a", ID1, &fake, w.now,
                                atun_ca_sysrand(), cli.d, sizeof(cli.d), &cli.n, NULL),
               ATUN_ERR_MALFORMED);
}

Test(ca, mismatched_issuer_pair_refused) {
  blob cli;
  atun_ca_issuer wrong = {w.ca_cert.d, w.ca_cert.n, w.srv_key.d, w.srv_key.n};
  char pem[ATUN_CA_PEM_MAX];
  size_t pemlen;
  make_csr_pem(pem, sizeof(pem), &pemlen, "a", ID1);
  cr_assert_eq(atun_ca_sign_csr(&w.s, pem, pemlen, "a", ID1, &wrong, w.now,
                                atun_ca_sysrand(), cli.d, sizeof(cli.d), &cli.n, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  /* Self-signed: the subject key must be the signing key. */
  atun_cert_profile p;
  cr_assert_eq(atun_ca_profile_ca(&p, &w.s, w.now, atun_ca_sysrand()), 0);
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t n;
  cr_assert_eq(atun_ca_key_spki(w.agent_key.d, w.agent_key.n, spki, sizeof(spki), &n), 0);
  atun_ca_issuer self = {NULL, 0, w.ca_key.d, w.ca_key.n};
  cr_assert_eq(atun_ca_issue(&p, spki, n, &self, cli.d, sizeof(cli.d), &cli.n),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ca_issue(&p, spki, n - 1, &self, cli.d, sizeof(cli.d), &cli.n),
               ATUN_ERR_MALFORMED);
  atun_ca_issuer garbage = {w.agent_key.d, w.agent_key.n, w.ca_key.d, w.ca_key.n};
  cr_assert_eq(atun_ca_issue(&p, spki, n, &garbage, cli.d, sizeof(cli.d), &cli.n),
               ATUN_ERR_MALFORMED);
}

Test(ca, issue_rejects_unencodable_profile) {
  atun_cert_profile p;
  blob out;
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t n;
  cr_assert_eq(atun_ca_key_spki(w.agent_key.d, w.agent_key.n, spki, sizeof(spki), &n), 0);
  cr_assert_eq(atun_ca_profile_client(&p, &w.s, "a", ID1, w.now, ATUN_TSTAMP_MAX,
                                      atun_ca_sysrand()), 0);
  atun_cert_profile bad = p;
  bad.not_after = bad.not_before;
  cr_assert_eq(atun_ca_issue(&bad, spki, n, &w.ca, out.d, sizeof(out.d), &out.n),
               ATUN_ERR_INVALID_ARGUMENT);
  bad = p;
  bad.serial_len = 0;
  cr_assert_eq(atun_ca_issue(&bad, spki, n, &w.ca, out.d, sizeof(out.d), &out.n),
               ATUN_ERR_INVALID_ARGUMENT);
  bad = p;
  bad.cn[0] = '\0';
  cr_assert_eq(atun_ca_issue(&bad, spki, n, &w.ca, out.d, sizeof(out.d), &out.n),
               ATUN_ERR_INVALID_ARGUMENT);
  bad = p;
  strcpy(bad.sans[0].name, "has space");
  cr_assert_eq(atun_ca_issue(&bad, spki, n, &w.ca, out.d, sizeof(out.d), &out.n),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ca_issue(&p, spki, n, &w.ca, out.d, sizeof(out.d), &out.n), 0);
}

/* --- CSR intake ------------------------------------------------------------------ */

Test(ca, csr_verify_returns_agent_key) {
  uint8_t csr[ATUN_CA_DER_MAX], spki[ATUN_CA_SPKI_DER_MAX], want[ATUN_CA_SPKI_DER_MAX];
  size_t csrlen, n, wn;
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, w.agent_key.n, "a", ID1, csr, sizeof(csr),
                                &csrlen), 0);
  cr_assert_eq(atun_ca_csr_verify(csr, csrlen, spki, sizeof(spki), &n), 0);
  cr_assert_eq(atun_ca_key_spki(w.agent_key.d, w.agent_key.n, want, sizeof(want), &wn), 0);
  cr_assert_eq(n, wn);
  cr_assert_eq(memcmp(spki, want, n), 0);
  cr_assert_eq(atun_ca_csr_verify(csr, csrlen, spki, n - 1, &n), ATUN_ERR_NOBUF);
}

Test(ca, csr_make_errors) {
  uint8_t csr[ATUN_CA_DER_MAX];
  size_t n;
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, w.agent_key.n, "bad name", ID1, csr,
                                sizeof(csr), &n), ATUN_ERR_BAD_NAME);
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, w.agent_key.n, "a", "x", csr, sizeof(csr),
                                &n), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, 5, "a", ID1, csr, sizeof(csr), &n),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, w.agent_key.n, "a", ID1, csr, 64, &n),
               ATUN_ERR_NOBUF);
}

Test(ca, tampered_csr_rejected_at_every_byte) {
  uint8_t csr[ATUN_CA_DER_MAX], t[ATUN_CA_DER_MAX], spki[ATUN_CA_SPKI_DER_MAX];
  size_t csrlen, n;
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, w.agent_key.n, "a", ID1, csr, sizeof(csr),
                                &csrlen), 0);
  for (size_t i = 0; i < csrlen; ++i) {
    memcpy(t, csr, csrlen);
    t[i] ^= 0x01;
    int rv = atun_ca_csr_verify(t, csrlen, spki, sizeof(spki), &n);
    cr_assert_neq(rv, 0, "flip at %zu of %zu accepted", i, csrlen);
  }
  /* A trailing byte is not part of what was signed. */
  memcpy(t, csr, csrlen);
  t[csrlen] = 0;
  cr_assert_eq(atun_ca_csr_verify(t, csrlen + 1, spki, sizeof(spki), &n),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_ca_csr_verify(t, ATUN_CA_DER_MAX + 1, spki, sizeof(spki), &n),
               ATUN_ERR_FRAME_TOO_LARGE);
  cr_assert_eq(atun_ca_csr_verify(t, 0, spki, sizeof(spki), &n), ATUN_ERR_MALFORMED);
  /* A certificate is not a CSR. */
  cr_assert_neq(atun_ca_csr_verify(w.ca_cert.d, w.ca_cert.n, spki, sizeof(spki), &n), 0);
}

/* Builds a CSR that carries |pub|'s key but is signed by |signer|. */
static size_t forged_csr(uint8_t *out, size_t cap, ecc_key *pub, ecc_key *signer) {
  WC_RNG rng;
  cr_assert_eq(wc_InitRng(&rng), 0);
  Cert *c = wc_CertNew(NULL);
  cr_assert_not_null(c);
  strcpy(c->subject.commonName, "forged");
  c->sigType = CTC_SHA256wECDSA;
  int n = wc_MakeCertReq(c, out, (word32)cap, NULL, pub);
  cr_assert_gt(n, 0);
  n = wc_SignCert(c->bodySz, c->sigType, out, (word32)cap, NULL, signer, &rng);
  cr_assert_gt(n, 0);
  wc_CertFree(c);
  wc_FreeRng(&rng);
  return (size_t)n;
}

static ecc_key *load_key(const blob *b) {
  ecc_key *k = wc_ecc_key_new(NULL);
  word32 idx = 0;
  cr_assert_not_null(k);
  cr_assert_eq(wc_EccPrivateKeyDecode(b->d, &idx, k, (word32)b->n), 0);
  return k;
}

Test(ca, csr_signed_by_other_key_rejected) {
  ecc_key *agent = load_key(&w.agent_key), *other = load_key(&w.srv_key);
  uint8_t csr[ATUN_CA_DER_MAX], spki[ATUN_CA_SPKI_DER_MAX];
  size_t n;
  size_t len = forged_csr(csr, sizeof(csr), agent, other);
  cr_assert_eq(atun_ca_csr_verify(csr, len, spki, sizeof(spki), &n), ATUN_ERR_MALFORMED);
  /* Control: the same construction with the right key verifies. */
  len = forged_csr(csr, sizeof(csr), agent, agent);
  cr_assert_eq(atun_ca_csr_verify(csr, len, spki, sizeof(spki), &n), 0);
  wc_ecc_key_free(agent);
  wc_ecc_key_free(other);
}

Test(ca, csr_with_other_curve_denied) {
  WC_RNG rng;
  cr_assert_eq(wc_InitRng(&rng), 0);
  ecc_key *k = wc_ecc_key_new(NULL);
  cr_assert_eq(wc_ecc_make_key_ex(&rng, 48, k, ECC_SECP384R1), 0);
  uint8_t csr[ATUN_CA_DER_MAX], spki[ATUN_CA_SPKI_DER_MAX];
  size_t n;
  size_t len = forged_csr(csr, sizeof(csr), k, k);
  cr_assert_eq(atun_ca_csr_verify(csr, len, spki, sizeof(spki), &n), ATUN_ERR_DENIED);
  wc_ecc_key_free(k);
  wc_FreeRng(&rng);
}

/* --- hashes and reading ------------------------------------------------------------ */

Test(ca, fingerprint_is_sha256_of_der) {
  static const uint8_t abc_sha256[32] = {
      0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
      0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
      0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
  uint8_t out[32];
  cr_assert_eq(atun_ca_cert_fingerprint((const uint8_t *)"abc", 3, out), 0);
  cr_assert_eq(memcmp(out, abc_sha256, 32), 0);
  cr_assert_eq(atun_ca_cert_fingerprint(out, 0, out), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ca_cert_fingerprint(out, ATUN_CA_DER_MAX + 1, out),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_ca_spki_pin(out, ATUN_CA_DER_MAX + 1, out), ATUN_ERR_INVALID_ARGUMENT);
}

Test(ca, cert_read_rejects_garbage) {
  atun_cert_profile p;
  uint8_t csr[ATUN_CA_DER_MAX], pin[32];
  size_t csrlen;
  cr_assert_eq(atun_ca_csr_make(w.agent_key.d, w.agent_key.n, "a", ID1, csr, sizeof(csr),
                                &csrlen), 0);
  cr_assert_eq(atun_ca_cert_read(csr, csrlen, &p), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_ca_cert_read(w.ca_key.d, w.ca_key.n, &p), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_ca_cert_read(w.ca_cert.d, w.ca_cert.n - 1, &p), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_ca_cert_read(w.ca_cert.d, ATUN_CA_DER_MAX + 1, &p),
               ATUN_ERR_FRAME_TOO_LARGE);
  cr_assert_eq(atun_ca_cert_spki_pin(csr, csrlen, pin), ATUN_ERR_MALFORMED);
}

Test(ca, sysrand_fills) {
  uint8_t a[64], b[64];
  memset(a, 0, sizeof(a));
  memset(b, 0, sizeof(b));
  const atun_rand *r = atun_ca_sysrand();
  cr_assert_eq(r->fill(a, sizeof(a), r->user_data), 0);
  cr_assert_eq(r->fill(b, sizeof(b), r->user_data), 0);
  cr_assert_neq(memcmp(a, b, sizeof(a)), 0);
}

/* --- allocation failures ------------------------------------------------------------ */

/* wolfSSL's allocator, failing once the countdown reaches zero (-1: never). */
static long alloc_countdown = -1;

static int alloc_allowed(void) {
  if (alloc_countdown == 0) return 0;
  if (alloc_countdown > 0) --alloc_countdown;
  return 1;
}
static void *fail_malloc(size_t n) { return alloc_allowed() ? malloc(n) : NULL; }
static void fail_free(void *p) { free(p); }
static void *fail_realloc(void *p, size_t n) {
  return alloc_allowed() ? realloc(p, n) : NULL;
}

/* Runs |step| with the k-th wolfSSL allocation failing, for every k until
 * the step succeeds: each failure must be a clean error (ASan reports any
 * leak at exit), and the final success must be real. */
static void each_allocation_fails(int (*step)(blob *out), const char *what) {
  cr_assert_eq(wolfSSL_SetAllocators(fail_malloc, fail_free, fail_realloc), 0);
  int rv = -1;
  long k;
  blob out;
  for (k = 0; k < 10000 && rv != 0; ++k) {
    alloc_countdown = k;
    rv = step(&out);
    cr_assert_leq(rv, 0, "%s: k=%ld rv=%d", what, k, rv);
  }
  alloc_countdown = -1;
  cr_assert_eq(rv, 0, "%s never succeeded", what);
  cr_assert_gt(k, 1, "%s: no allocation was failed", what);
}

static int step_create(blob *out) {
  blob key;
  return atun_ca_create(&w.s, w.now, atun_ca_sysrand(), key.d, sizeof(key.d), &key.n,
                        out->d, sizeof(out->d), &out->n);
}

static int step_sign_csr(blob *out) {
  char pem[ATUN_CA_PEM_MAX];
  size_t pemlen;
  uint8_t csr[ATUN_CA_DER_MAX];
  size_t csrlen;
  int rv = atun_ca_csr_make(w.agent_key.d, w.agent_key.n, "a", ID1, csr, sizeof(csr),
                            &csrlen);
  if (rv != 0) return rv;
  rv = atun_pem_encode(ATUN_PEM_CSR, csr, csrlen, pem, sizeof(pem), &pemlen);
  if (rv != 0) return rv;
  return atun_ca_sign_csr(&w.s, pem, pemlen, "a", ID1, &w.ca, w.now, atun_ca_sysrand(),
                          out->d, sizeof(out->d), &out->n, NULL);
}

static int step_server(blob *out) {
  const char *hosts[] = {"gw.example.com", "10.0.0.1"};
  return atun_ca_server_issue(&w.s, hosts, 2, w.srv_key.d, w.srv_key.n, &w.ca, w.now,
                              atun_ca_sysrand(), out->d, sizeof(out->d), &out->n);
}

Test(ca, allocation_failures_are_clean) {
  each_allocation_fails(step_create, "create");
  each_allocation_fails(step_sign_csr, "sign_csr");
  each_allocation_fails(step_server, "server_issue");
  blob cli;
  cr_assert_eq(step_sign_csr(&cli), 0);
  cr_assert(chain_verifies(&w.ca_cert, &cli));
}
