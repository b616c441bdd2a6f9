#include <criterion/criterion.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "certs.h"

static sim_cred ca, leaf, leaf2;

Test(sim_certs, leaf_chains_to_ca_and_keys_follow_the_seed) {
  atun_testrng rng;
  atun_testrng_seed(&rng, 99);
  cr_assert_eq(sim_certs_make_ca(&ca, &rng), 0);
  cr_assert_eq(sim_certs_make_leaf(&leaf, &ca, 0, "agent-1",
                                   "0a0b0c0d-0000-4000-8000-000000000001", &rng), 0);
  WOLFSSL_CERT_MANAGER *cm = wolfSSL_CertManagerNew();
  cr_assert_not_null(cm);
  cr_assert_eq(wolfSSL_CertManagerLoadCABuffer(cm, ca.der, (long)ca.der_len,
                                               WOLFSSL_FILETYPE_ASN1), WOLFSSL_SUCCESS);
  cr_assert_eq(wolfSSL_CertManagerVerifyBuffer(cm, leaf.der, (long)leaf.der_len,
                                               WOLFSSL_FILETYPE_ASN1), WOLFSSL_SUCCESS);
  /* A certificate of another CA does not verify. */
  sim_cred other_ca;
  cr_assert_eq(sim_certs_make_ca(&other_ca, &rng), 0);
  cr_assert_eq(sim_certs_make_leaf(&leaf2, &other_ca, 1, "gw.sim", NULL, &rng), 0);
  cr_assert_neq(wolfSSL_CertManagerVerifyBuffer(cm, leaf2.der, (long)leaf2.der_len,
                                                WOLFSSL_FILETYPE_ASN1), WOLFSSL_SUCCESS);
  wolfSSL_CertManagerFree(cm);
  /* Same seed, same keys (dates aside, the certificates have equal sizes). */
  sim_cred ca2, leafb;
  atun_testrng_seed(&rng, 99);
  cr_assert_eq(sim_certs_make_ca(&ca2, &rng), 0);
  cr_assert_eq(sim_certs_make_leaf(&leafb, &ca2, 0, "agent-1",
                                   "0a0b0c0d-0000-4000-8000-000000000001", &rng), 0);
  cr_assert_eq(memcmp(ca.seed, ca2.seed, 32), 0);
  cr_assert_eq(leaf.key_len, leafb.key_len);
  cr_assert_eq(memcmp(leaf.key_der, leafb.key_der, leaf.key_len), 0);
  cr_assert_eq(leaf.der_len, leafb.der_len);
}

Test(sim_certs, overlong_names_are_refused) {
  atun_testrng rng;
  atun_testrng_seed(&rng, 1);
  cr_assert_eq(sim_certs_make_ca(&ca, &rng), 0);
  char name[200];
  memset(name, 'a', sizeof(name) - 1);
  name[sizeof(name) - 1] = '\0';
  cr_assert_eq(sim_certs_make_leaf(&leaf, &ca, 1, name, NULL, &rng), ATUN_ERR_INTERNAL);
}
