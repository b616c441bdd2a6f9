#include "certs.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/random.h>

#include <stdio.h>
#include <string.h>

/* The CA's subject, copied into every issued certificate as its issuer. */
#define CA_CN "atun sim CA"

static void fill(atun_testrng *rng, uint8_t *p, size_t n) {
  atun_rand r = atun_testrng_as_rand(rng);
  r.fill(p, n, r.user_data);
}

static int key_from_seed(ed25519_key *key, const uint8_t seed[32]) {
  uint8_t pub[ED25519_PUB_KEY_SIZE];
  if (wc_ed25519_init(key) != 0) return -1;
  if (wc_ed25519_import_private_only(seed, 32, key) != 0 ||
      wc_ed25519_make_public(key, pub, sizeof(pub)) != 0 ||
      wc_ed25519_import_private_key(seed, 32, pub, sizeof(pub), key) != 0) {
    wc_ed25519_free(key);
    return -1;
  }
  return 0;
}

/* A GeneralNames SEQUENCE holding one name of context tag |tag| (2 = dNSName,
 * 6 = uniformResourceIdentifier); short-form lengths are enough here. */
static int put_alt_name(Cert *cert, uint8_t tag, const char *value) {
  size_t n = strlen(value);
  if (n + 4 > sizeof(cert->altNames) || n > 120) return -1;
  cert->altNames[0] = 0x30;
  cert->altNames[1] = (uint8_t)(n + 2);
  cert->altNames[2] = (uint8_t)(0x80 | tag);
  cert->altNames[3] = (uint8_t)n;
  memcpy(cert->altNames + 4, value, n);
  cert->altNamesSz = (int)(n + 4);
  return 0;
}

static void init_cert(Cert *cert, const char *cn, atun_testrng *rng) {
  wc_InitCert(cert);
  cert->sigType = CTC_ED25519;
  cert->daysValid = 3650;
  snprintf(cert->subject.commonName, CTC_NAME_SIZE, "%s", cn);
  snprintf(cert->subject.org, CTC_NAME_SIZE, "%s", "atun simulation");
  /* Serial from the seed, top bit clear so it stays a positive INTEGER. */
  fill(rng, cert->serial, 16);
  cert->serial[0] &= 0x7f;
  cert->serial[0] |= 0x01;
  cert->serialSz = 16;
}

/* Makes and signs |cert| for |subject_key| with |signer|, and stores the DER
 * and the subject's private key in |out|. */
static int finish(sim_cred *out, Cert *cert, ed25519_key *subject_key, ed25519_key *signer) {
  WC_RNG wrng;
  if (wc_InitRng(&wrng) != 0) return ATUN_ERR_INTERNAL;
  int rv = ATUN_ERR_INTERNAL;
  int n = wc_MakeCert_ex(cert, out->der, sizeof(out->der), ED25519_TYPE, subject_key, &wrng);
  if (n < 0) goto done;
  n = wc_SignCert_ex(cert->bodySz, cert->sigType, out->der, sizeof(out->der), ED25519_TYPE,
                     signer, &wrng);
  if (n < 0) goto done;
  out->der_len = (size_t)n;
  n = wc_Ed25519PrivateKeyToDer(subject_key, out->key_der, sizeof(out->key_der));
  if (n < 0) goto done;
  out->key_len = (size_t)n;
  rv = 0;
done:
  wc_FreeRng(&wrng);
  return rv;
}

int sim_certs_make_ca(sim_cred *ca, atun_testrng *rng) {
  memset(ca, 0, sizeof(*ca));
  fill(rng, ca->seed, sizeof(ca->seed));
  ed25519_key key;
  if (key_from_seed(&key, ca->seed) != 0) return ATUN_ERR_INTERNAL;
  Cert cert;
  init_cert(&cert, CA_CN, rng);
  cert.isCA = 1;
  int rv = ATUN_ERR_INTERNAL;
  if (wc_SetKeyUsage(&cert, "keyCertSign,cRLSign") == 0 &&
      wc_SetSubjectKeyIdFromPublicKey_ex(&cert, ED25519_TYPE, &key) == 0)
    rv = finish(ca, &cert, &key, &key);
  wc_ed25519_free(&key);
  return rv;
}

int sim_certs_make_leaf(sim_cred *out, const sim_cred *ca, int server, const char *name,
                        const char *agent_id, atun_testrng *rng) {
  memset(out, 0, sizeof(*out));
  fill(rng, out->seed, sizeof(out->seed));
  ed25519_key key, ca_key;
  if (key_from_seed(&key, out->seed) != 0) return ATUN_ERR_INTERNAL;
  if (key_from_seed(&ca_key, ca->seed) != 0) {
    wc_ed25519_free(&key);
    return ATUN_ERR_INTERNAL;
  }
  Cert cert;
  init_cert(&cert, name, rng);
  char uri[96];
  snprintf(uri, sizeof(uri), "atun://agent/%s", agent_id ? agent_id : "");
  int rv = ATUN_ERR_INTERNAL;
  if (wc_SetIssuerBuffer(&cert, ca->der, (int)ca->der_len) != 0) goto done;
  if (put_alt_name(&cert, server ? 2 : 6, server ? name : uri) != 0) goto done;
  if (wc_SetExtKeyUsage(&cert, server ? "serverAuth" : "clientAuth") != 0) goto done;
  if (wc_SetAuthKeyIdFromPublicKey_ex(&cert, ED25519_TYPE, &ca_key) != 0) goto done;
  rv = finish(out, &cert, &key, &ca_key);
done:
  wc_ed25519_free(&key);
  wc_ed25519_free(&ca_key);
  return rv;
}
