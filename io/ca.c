/*
 * wolfCrypt binding of the CA.  Two traps shape this file:
 *
 * - ecc_key holds mp_ints whose size depends on build macros that the
 *   installed options.h may not repeat (the library saw __uint128_t, the
 *   header does not say so), so an ecc_key declared here can be smaller than
 *   the one the library writes.  Keys are therefore always allocated by the
 *   library (wc_ecc_key_new), never declared or sized here.
 * - wolfSSL is not built with sanitizers, so an over-read inside it goes
 *   unnoticed in tests.  Text inputs are copied into NUL-terminated buffers
 *   of a stated size before wolfSSL sees them.
 */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/random.h>

#include "ca.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

/* A P-256 SubjectPublicKeyInfo is always 91 bytes with this 26-byte head:
 * SEQUENCE, AlgorithmIdentifier {id-ecPublicKey, prime256v1}, BIT STRING
 * header.  Comparing it is the whole key-type check. */
#define P256_SPKI_LEN 91
static const uint8_t p256_spki_head[26] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

static int spki_is_p256(const uint8_t *spki, size_t len) {
  return len == P256_SPKI_LEN &&
         memcmp(spki, p256_spki_head, sizeof(p256_spki_head)) == 0;
}

/* Generation and signing: a wolfCrypt error is ours or the machine's. */
static int gen_err(int wc) {
  switch (wc) {
  case MEMORY_E: return ATUN_ERR_NOMEM;
  case BUFFER_E: return ATUN_ERR_NOBUF;
  default: return ATUN_ERR_INTERNAL;
  }
}

/* Parsing: a wolfCrypt error means the input was bad. */
static int parse_err(int wc) {
  return wc == MEMORY_E ? ATUN_ERR_NOMEM : ATUN_ERR_MALFORMED;
}

static word32 cap32(size_t cap) {
  return cap > ATUN_CA_DER_MAX ? ATUN_CA_DER_MAX : (word32)cap;
}

/* --- randomness ----------------------------------------------------------- */

static int sysrand_fill(uint8_t *dest, size_t len, void *user_data) {
  (void)user_data;
  while (len > 0) {
    ssize_t n = getrandom(dest, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    dest += n;
    len -= (size_t)n;
  }
  return 0;
}

static const atun_rand sysrand = {sysrand_fill, NULL};

const atun_rand *atun_ca_sysrand(void) { return &sysrand; }

/* --- PEM ------------------------------------------------------------------ */

static int pem_wc_type(atun_pem_type type) {
  switch (type) {
  case ATUN_PEM_CERT: return CERT_TYPE;
  case ATUN_PEM_CSR: return CERTREQ_TYPE;
  case ATUN_PEM_KEY: return ECC_PRIVATEKEY_TYPE;
  }
  return -1;
}

int atun_pem_encode(atun_pem_type type, const uint8_t *der, size_t derlen,
                    char *out, size_t cap, size_t *outlen) {
  int wtype = pem_wc_type(type);
  if (wtype < 0 || derlen == 0 || derlen > ATUN_CA_DER_MAX) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  /* wolfSSL reports a short buffer as a bad argument: measure first. */
  int n = wc_DerToPem(der, (word32)derlen, NULL, 0, wtype);
  if (n <= 0) return gen_err(n);
  if ((size_t)n >= cap) return ATUN_ERR_NOBUF;
  n = wc_DerToPem(der, (word32)derlen, (byte *)out, (word32)n, wtype);
  if (n <= 0) return gen_err(n);
  out[n] = '\0';
  *outlen = (size_t)n;
  return 0;
}

int atun_pem_decode(atun_pem_type type, const char *pem, size_t pemlen,
                    uint8_t *der, size_t cap, size_t *derlen) {
  int wtype = pem_wc_type(type);
  if (wtype < 0 || pem == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  if (pemlen > ATUN_CA_PEM_MAX) return ATUN_ERR_FRAME_TOO_LARGE;
  char buf[ATUN_CA_PEM_MAX + 1];
  memcpy(buf, pem, pemlen);
  buf[pemlen] = '\0';
  byte tmp[ATUN_CA_DER_MAX];
  int n = type == ATUN_PEM_KEY
              ? wc_KeyPemToDer((const byte *)buf, (int)pemlen, tmp, sizeof(tmp),
                               NULL)
              : wc_CertPemToDer((const byte *)buf, (int)pemlen, tmp,
                                sizeof(tmp), wtype);
  int rv = n <= 0 ? (n == 0 ? ATUN_ERR_MALFORMED : parse_err(n))
                  : (size_t)n > cap ? ATUN_ERR_NOBUF : 0;
  if (rv == 0) {
    memcpy(der, tmp, (size_t)n);
    *derlen = (size_t)n;
  }
  if (type == ATUN_PEM_KEY) {
    explicit_bzero(buf, pemlen);
    explicit_bzero(tmp, sizeof(tmp));
  }
  return rv;
}

/* --- keys ------------------------------------------------------------------ */

/* Writes the SPKI of |k|; a key without its public point is malformed. */
static int key_spki(ecc_key *k, uint8_t *spki, size_t cap, size_t *spkilen) {
  byte tmp[ATUN_CA_SPKI_DER_MAX];
  int n = wc_EccPublicKeyToDer(k, tmp, sizeof(tmp), 1);
  if (n <= 0) return parse_err(n);
  if (!spki_is_p256(tmp, (size_t)n)) return ATUN_ERR_MALFORMED;
  if ((size_t)n > cap) return ATUN_ERR_NOBUF;
  memcpy(spki, tmp, (size_t)n);
  *spkilen = (size_t)n;
  return 0;
}

/* Loads a P-256 private key DER that must fill |len| exactly. */
static int key_load_private(ecc_key **pk, const uint8_t *der, size_t len) {
  *pk = NULL;
  if (der == NULL || len == 0 || len > ATUN_CA_KEY_DER_MAX) {
    return ATUN_ERR_MALFORMED;
  }
  ecc_key *k = wc_ecc_key_new(NULL);
  if (k == NULL) return ATUN_ERR_NOMEM;
  word32 idx = 0;
  int rv = wc_EccPrivateKeyDecode(der, &idx, k, (word32)len);
  if (rv == 0 && idx != len) rv = ASN_PARSE_E;
  if (rv == 0) {
    uint8_t spki[ATUN_CA_SPKI_DER_MAX];
    size_t spkilen;
    rv = key_spki(k, spki, sizeof(spki), &spkilen);
  } else {
    rv = parse_err(rv);
  }
  if (rv != 0) {
    wc_ecc_key_free(k);
    return rv;
  }
  *pk = k;
  return 0;
}

static int key_load_public(ecc_key **pk, const uint8_t *spki, size_t len) {
  *pk = NULL;
  if (spki == NULL || !spki_is_p256(spki, len)) return ATUN_ERR_MALFORMED;
  ecc_key *k = wc_ecc_key_new(NULL);
  if (k == NULL) return ATUN_ERR_NOMEM;
  word32 idx = 0;
  int rv = wc_EccPublicKeyDecode(spki, &idx, k, (word32)len);
  /* A point off the curve is no key at all, whatever a signature says. */
  if (rv == 0 && (idx != len || wc_ecc_check_key(k) != 0)) rv = ASN_PARSE_E;
  if (rv != 0) {
    wc_ecc_key_free(k);
    return parse_err(rv);
  }
  *pk = k;
  return 0;
}

/* Exports |k| as DER through a buffer of the largest size, so a short
 * caller buffer is reported as such (wolfSSL calls it a bad argument). */
static int key_export(ecc_key *k, uint8_t *der, size_t cap, size_t *derlen) {
  byte tmp[ATUN_CA_KEY_DER_MAX];
  int rv = 0;
  int n = wc_EccKeyToDer(k, tmp, sizeof(tmp));
  if (n <= 0) {
    rv = n == 0 ? ATUN_ERR_INTERNAL : gen_err(n);
  } else if ((size_t)n > cap) {
    rv = ATUN_ERR_NOBUF;
  } else {
    memcpy(der, tmp, (size_t)n);
    *derlen = (size_t)n;
  }
  explicit_bzero(tmp, sizeof(tmp));
  return rv;
}

int atun_ca_key_generate(uint8_t *der, size_t cap, size_t *derlen) {
  WC_RNG rng;
  if (wc_InitRng(&rng) != 0) return ATUN_ERR_INTERNAL;
  int rv;
  ecc_key *k = wc_ecc_key_new(NULL);
  if (k == NULL) {
    rv = ATUN_ERR_NOMEM;
    goto fail_key;
  }
  rv = wc_ecc_make_key_ex(&rng, 32, k, ECC_SECP256R1);
  rv = rv != 0 ? gen_err(rv) : key_export(k, der, cap, derlen);
  wc_ecc_key_free(k);
fail_key:
  wc_FreeRng(&rng);
  return rv;
}

int atun_ca_key_spki(const uint8_t *key, size_t keylen, uint8_t *spki,
                     size_t cap, size_t *spkilen) {
  ecc_key *k;
  int rv = key_load_private(&k, key, keylen);
  if (rv != 0) return rv;
  rv = key_spki(k, spki, cap, spkilen);
  wc_ecc_key_free(k);
  return rv;
}

/* --- parsing --------------------------------------------------------------- */

/* Nonzero if |der| is exactly one DER SEQUENCE: wolfSSL would accept bytes
 * after it, and a CSR or certificate with a tail is not what was signed. */
static int der_single_sequence(const uint8_t *der, size_t len) {
  if (len < 2 || der[0] != 0x30) return 0;
  size_t n = der[1], hdr = 2;
  if (n & 0x80) {
    size_t nbytes = n & 0x7f;
    if (nbytes == 0 || nbytes > 2 || len < 2 + nbytes) return 0;
    n = 0;
    for (size_t i = 0; i < nbytes; ++i) n = (n << 8) | der[2 + i];
    hdr += nbytes;
  }
  return hdr + n == len;
}

static int check_der_input(const uint8_t *der, size_t len) {
  if (len > ATUN_CA_DER_MAX) return ATUN_ERR_FRAME_TOO_LARGE;
  if (der == NULL || !der_single_sequence(der, len)) return ATUN_ERR_MALFORMED;
  return 0;
}

/* Copies the P-256 SPKI out of a parsed certificate or CSR. */
static int decoded_spki(const DecodedCert *d, uint8_t *spki, size_t cap,
                        size_t *spkilen) {
  if (d->keyOID != ECDSAk || !spki_is_p256(d->publicKey, d->pubKeySize)) {
    return ATUN_ERR_DENIED;
  }
  if (cap < d->pubKeySize) return ATUN_ERR_NOBUF;
  memcpy(spki, d->publicKey, d->pubKeySize);
  *spkilen = d->pubKeySize;
  return 0;
}

int atun_ca_csr_verify(const uint8_t *csr, size_t len, uint8_t *spki,
                       size_t cap, size_t *spkilen) {
  int rv = check_der_input(csr, len);
  if (rv != 0) return rv;
  DecodedCert d;
  InitDecodedCert(&d, csr, (word32)len, NULL);
  /* VERIFY on a request checks its signature with the key inside it. */
  rv = ParseCert(&d, CERTREQ_TYPE, VERIFY, NULL);
  rv = rv != 0 ? parse_err(rv) : decoded_spki(&d, spki, cap, spkilen);
  FreeDecodedCert(&d);
  if (rv != 0) return rv;
  ecc_key *k;
  rv = key_load_public(&k, spki, *spkilen);
  if (rv == 0) wc_ecc_key_free(k);
  return rv;
}

int atun_ca_csr_verify_pem(const char *pem, size_t len, uint8_t *spki,
                           size_t cap, size_t *spkilen) {
  uint8_t der[ATUN_CA_DER_MAX];
  size_t derlen;
  int rv = atun_pem_decode(ATUN_PEM_CSR, pem, len, der, sizeof(der), &derlen);
  if (rv != 0) return rv == ATUN_ERR_NOBUF ? ATUN_ERR_FRAME_TOO_LARGE : rv;
  return atun_ca_csr_verify(der, derlen, spki, cap, spkilen);
}

static int cert_spki(const uint8_t *cert, size_t len, uint8_t *spki,
                     size_t cap, size_t *spkilen) {
  int rv = check_der_input(cert, len);
  if (rv != 0) return rv;
  DecodedCert d;
  InitDecodedCert(&d, cert, (word32)len, NULL);
  rv = ParseCert(&d, CERT_TYPE, NO_VERIFY, NULL);
  rv = rv != 0 ? parse_err(rv) : decoded_spki(&d, spki, cap, spkilen);
  FreeDecodedCert(&d);
  return rv;
}

int atun_ca_spki_pin(const uint8_t *spki, size_t len,
                     uint8_t out[ATUN_SHA256_LEN]) {
  if (len > ATUN_CA_DER_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  return wc_Sha256Hash(spki, (word32)len, out) == 0 ? 0 : ATUN_ERR_INTERNAL;
}

int atun_ca_cert_spki_pin(const uint8_t *cert, size_t len,
                          uint8_t out[ATUN_SHA256_LEN]) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spkilen;
  int rv = cert_spki(cert, len, spki, sizeof(spki), &spkilen);
  return rv != 0 ? rv : atun_ca_spki_pin(spki, spkilen, out);
}

int atun_ca_cert_fingerprint(const uint8_t *cert, size_t len,
                             uint8_t out[ATUN_SHA256_LEN]) {
  if (cert == NULL || len == 0 || len > ATUN_CA_DER_MAX) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  return wc_Sha256Hash(cert, (word32)len, out) == 0 ? 0 : ATUN_ERR_INTERNAL;
}

static unsigned ku_from_wc(word16 ku) {
  return ((ku & KEYUSE_DIGITAL_SIG) ? ATUN_KU_DIGITAL_SIGNATURE : 0u) |
         ((ku & KEYUSE_KEY_CERT_SIGN) ? ATUN_KU_KEY_CERT_SIGN : 0u) |
         ((ku & KEYUSE_CRL_SIGN) ? ATUN_KU_CRL_SIGN : 0u);
}

static unsigned eku_from_wc(byte eku) {
  return ((eku & EXTKEYUSE_SERVER_AUTH) ? ATUN_EKU_SERVER_AUTH : 0u) |
         ((eku & EXTKEYUSE_CLIENT_AUTH) ? ATUN_EKU_CLIENT_AUTH : 0u);
}

static atun_cert_kind kind_of(const atun_cert_profile *p) {
  if (p->is_ca) return ATUN_CERT_CA;
  if (p->ext_key_usage & ATUN_EKU_SERVER_AUTH) return ATUN_CERT_SERVER;
  if (p->ext_key_usage & ATUN_EKU_CLIENT_AUTH) return ATUN_CERT_CLIENT;
  return (atun_cert_kind)0;
}

/* The SANs come from our own reader: wolfSSL 5.5.4 drops IP SANs unless it
 * was built with WOLFSSL_IP_ALT_NAME. */
static int decoded_sans(const DecodedCert *d, atun_cert_profile *out) {
  const uint8_t *san;
  size_t sanlen;
  out->nsans = 0;
  if (d->extensions == NULL || d->extensionsSz <= 0) return 0;
  int rv = atun_ca_ext_find_san(d->extensions, (size_t)d->extensionsSz, &san,
                                &sanlen);
  if (rv == ATUN_ERR_NOT_FOUND) return 0;
  return rv != 0 ? rv : atun_cert_profile_san_parse(out, san, sanlen);
}

static int decoded_profile(const DecodedCert *d, atun_cert_profile *out) {
  if (d->subjectCNLen < 0 || d->subjectCNLen > ATUN_CA_CN_MAX ||
      d->serialSz < 0 || d->serialSz > ATUN_CA_SERIAL_MAX) {
    return ATUN_ERR_LIMIT;
  }
  if (d->subjectCN != NULL) memcpy(out->cn, d->subjectCN, (size_t)d->subjectCNLen);
  memcpy(out->serial, d->serial, (size_t)d->serialSz);
  out->serial_len = (size_t)d->serialSz;
  if (d->beforeDate == NULL || d->afterDate == NULL ||
      atun_ca_time_decode(&out->not_before, d->beforeDate,
                          (size_t)d->beforeDateLen) != 0 ||
      atun_ca_time_decode(&out->not_after, d->afterDate,
                          (size_t)d->afterDateLen) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  out->is_ca = d->isCA ? 1 : 0;
  out->key_usage = ku_from_wc(d->extKeyUsage);
  out->ext_key_usage = eku_from_wc(d->extExtKeyUsage);
  out->kind = kind_of(out);
  return decoded_sans(d, out);
}

int atun_ca_cert_read(const uint8_t *cert, size_t len, atun_cert_profile *out) {
  memset(out, 0, sizeof(*out));
  int rv = check_der_input(cert, len);
  if (rv != 0) return rv;
  DecodedCert d;
  InitDecodedCert(&d, cert, (word32)len, NULL);
  rv = ParseCert(&d, CERT_TYPE, NO_VERIFY, NULL);
  rv = rv != 0 ? parse_err(rv) : decoded_profile(&d, out);
  FreeDecodedCert(&d);
  if (rv != 0) memset(out, 0, sizeof(*out));
  return rv;
}

/* --- issuing --------------------------------------------------------------- */

static word16 ku_to_wc(unsigned ku) {
  return (word16)(((ku & ATUN_KU_DIGITAL_SIGNATURE) ? KEYUSE_DIGITAL_SIG : 0) |
                  ((ku & ATUN_KU_KEY_CERT_SIGN) ? KEYUSE_KEY_CERT_SIGN : 0) |
                  ((ku & ATUN_KU_CRL_SIGN) ? KEYUSE_CRL_SIGN : 0));
}

static byte eku_to_wc(unsigned eku) {
  return (byte)(((eku & ATUN_EKU_SERVER_AUTH) ? EXTKEYUSE_SERVER_AUTH : 0) |
                ((eku & ATUN_EKU_CLIENT_AUTH) ? EXTKEYUSE_CLIENT_AUTH : 0));
}

static int cert_fill_validity(Cert *c, const atun_cert_profile *p) {
  if (p->not_after <= p->not_before) return ATUN_ERR_INVALID_ARGUMENT;
  ssize_t nb = atun_ca_time_encode(c->beforeDate, sizeof(c->beforeDate),
                                   p->not_before);
  ssize_t na = atun_ca_time_encode(c->afterDate, sizeof(c->afterDate),
                                   p->not_after);
  if (nb < 0 || na < 0) return ATUN_ERR_INTERNAL;
  c->beforeDateSz = (int)nb;
  c->afterDateSz = (int)na;
  return 0;
}

/* Copies everything the profile decides into |c|. */
static int cert_fill(Cert *c, const atun_cert_profile *p) {
  size_t cnlen = strnlen(p->cn, sizeof(p->cn));
  if (p->serial_len == 0 || p->serial_len > CTC_SERIAL_SIZE || cnlen == 0 ||
      cnlen >= sizeof(p->cn)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int rv = cert_fill_validity(c, p);
  if (rv != 0) return rv;
  c->sigType = CTC_SHA256wECDSA;
  memcpy(c->serial, p->serial, p->serial_len);
  c->serialSz = (int)p->serial_len;
  memcpy(c->subject.commonName, p->cn, cnlen + 1);
  c->subject.commonNameEnc = CTC_UTF8;
  c->isCA = p->is_ca ? 1 : 0;
  c->keyUsage = ku_to_wc(p->key_usage);
  c->extKeyUsage = eku_to_wc(p->ext_key_usage);
  if (p->nsans > 0) {
    size_t sanlen;
    rv = atun_cert_profile_san_der(p, c->altNames, sizeof(c->altNames),
                                   &sanlen);
    if (rv != 0) return rv == ATUN_ERR_NOBUF ? ATUN_ERR_INVALID_ARGUMENT : rv;
    c->altNamesSz = (int)sanlen;
  }
  return 0;
}

/* Issuer name and key identifiers.  The issuer key must belong to the
 * issuer certificate (or, self-signed, to the subject): a mismatched pair
 * would sign certificates nobody can verify. */
static int cert_fill_issuer(Cert *c, ecc_key *subject, ecc_key *isk,
                            const uint8_t *spki, size_t spkilen,
                            const atun_ca_issuer *issuer) {
  uint8_t ispki[ATUN_CA_SPKI_DER_MAX], want[ATUN_CA_SPKI_DER_MAX];
  size_t ispkilen, wantlen;
  int rv = key_spki(isk, ispki, sizeof(ispki), &ispkilen);
  if (rv != 0) return rv;
  if (issuer->cert == NULL) {
    memcpy(want, spki, spkilen);
    wantlen = spkilen;
  } else {
    rv = cert_spki(issuer->cert, issuer->certlen, want, sizeof(want), &wantlen);
    if (rv != 0) return ATUN_ERR_MALFORMED;
  }
  if (wantlen != ispkilen || memcmp(want, ispki, wantlen) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (wc_SetSubjectKeyIdFromPublicKey_ex(c, ECC_TYPE, subject) != 0) {
    return ATUN_ERR_INTERNAL;
  }
  if (issuer->cert == NULL) {
    c->selfSigned = 1;
    return wc_SetAuthKeyIdFromPublicKey_ex(c, ECC_TYPE, isk) == 0
               ? 0 : ATUN_ERR_INTERNAL;
  }
  c->selfSigned = 0;
  if (wc_SetIssuerBuffer(c, issuer->cert, (int)issuer->certlen) != 0 ||
      wc_SetAuthKeyIdFromCert(c, issuer->cert, (int)issuer->certlen) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  return 0;
}

/* Encodes the body of |c| for |subject| and signs it with |isk|. */
static int cert_sign(Cert *c, ecc_key *subject, ecc_key *isk, uint8_t *out,
                     size_t cap, size_t *outlen) {
  WC_RNG rng;
  if (wc_InitRng(&rng) != 0) return ATUN_ERR_INTERNAL;
  int n = wc_MakeCert(c, out, cap32(cap), NULL, subject, &rng);
  if (n > 0) {
    n = wc_SignCert(c->bodySz, c->sigType, out, cap32(cap), NULL, isk, &rng);
  }
  wc_FreeRng(&rng);
  if (n <= 0) return n == 0 ? ATUN_ERR_INTERNAL : gen_err(n);
  *outlen = (size_t)n;
  return 0;
}

int atun_ca_issue(const atun_cert_profile *profile, const uint8_t *spki,
                  size_t spkilen, const atun_ca_issuer *issuer, uint8_t *out,
                  size_t cap, size_t *outlen) {
  ecc_key *subject, *isk;
  int rv = key_load_public(&subject, spki, spkilen);
  if (rv != 0) return rv;
  rv = key_load_private(&isk, issuer->key, issuer->keylen);
  if (rv != 0) goto fail_issuer_key;
  Cert *c = wc_CertNew(NULL);
  if (c == NULL) {
    rv = ATUN_ERR_NOMEM;
    goto fail_cert;
  }
  rv = cert_fill(c, profile);
  if (rv == 0) rv = cert_fill_issuer(c, subject, isk, spki, spkilen, issuer);
  if (rv == 0) rv = cert_sign(c, subject, isk, out, cap, outlen);
  wc_CertFree(c);
fail_cert:
  wc_ecc_key_free(isk);
fail_issuer_key:
  wc_ecc_key_free(subject);
  return rv;
}

int atun_ca_create(const atun_ca_settings *s, atun_tstamp now,
                   const atun_rand *rand, uint8_t *key, size_t keycap,
                   size_t *keylen, uint8_t *cert, size_t certcap,
                   size_t *certlen) {
  atun_cert_profile p;
  int rv = atun_ca_profile_ca(&p, s, now, rand);
  if (rv != 0) return rv;
  rv = atun_ca_key_generate(key, keycap, keylen);
  if (rv != 0) return rv;
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spkilen;
  rv = atun_ca_key_spki(key, *keylen, spki, sizeof(spki), &spkilen);
  if (rv != 0) return rv;
  atun_ca_issuer self = {NULL, 0, key, *keylen};
  return atun_ca_issue(&p, spki, spkilen, &self, cert, certcap, certlen);
}

/* The CA's expiry, which caps what it issues. */
static int ca_not_after(const atun_ca_issuer *ca, atun_tstamp *out) {
  atun_cert_profile cap;
  if (ca->cert == NULL || atun_ca_cert_read(ca->cert, ca->certlen, &cap) != 0 ||
      !cap.is_ca) {
    return ATUN_ERR_MALFORMED;
  }
  *out = cap.not_after;
  return 0;
}

int atun_ca_server_issue(const atun_ca_settings *s, const char *const *hosts,
                         size_t nhosts, const uint8_t *server_key,
                         size_t server_keylen, const atun_ca_issuer *ca,
                         atun_tstamp now, const atun_rand *rand, uint8_t *out,
                         size_t cap, size_t *outlen) {
  atun_tstamp ca_end;
  int rv = ca_not_after(ca, &ca_end);
  if (rv != 0) return rv;
  atun_cert_profile p;
  rv = atun_ca_profile_server(&p, s, hosts, nhosts, now, ca_end, rand);
  if (rv != 0) return rv;
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spkilen;
  rv = atun_ca_key_spki(server_key, server_keylen, spki, sizeof(spki),
                        &spkilen);
  if (rv != 0) return rv;
  return atun_ca_issue(&p, spki, spkilen, ca, out, cap, outlen);
}

int atun_ca_sign_csr(const atun_ca_settings *s, const char *csr_pem,
                     size_t csrlen, const char *name, const char *id,
                     const atun_ca_issuer *ca, atun_tstamp now,
                     const atun_rand *rand, uint8_t *out, size_t cap,
                     size_t *outlen, atun_cert_profile *profile_out) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spkilen;
  int rv = atun_ca_csr_verify_pem(csr_pem, csrlen, spki, sizeof(spki),
                                  &spkilen);
  if (rv != 0) return rv;
  atun_tstamp ca_end;
  rv = ca_not_after(ca, &ca_end);
  if (rv != 0) return rv;
  atun_cert_profile p;
  rv = atun_ca_profile_client(&p, s, name, id, now, ca_end, rand);
  if (rv != 0) return rv;
  rv = atun_ca_issue(&p, spki, spkilen, ca, out, cap, outlen);
  if (rv == 0 && profile_out != NULL) *profile_out = p;
  return rv;
}

/* --- agent side ------------------------------------------------------------ */

static int csr_fill(Cert *c, const char *name, const char *id) {
  if (name == NULL ||
      !atun_agent_name_valid(name, strnlen(name, ATUN_AGENT_NAME_STRLEN))) {
    return ATUN_ERR_BAD_NAME;
  }
  atun_cert_profile p;
  memset(&p, 0, sizeof(p));
  p.nsans = 1;
  p.sans[0].type = ATUN_SAN_URI;
  if (atun_agent_uri_format(p.sans[0].name, id) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  size_t sanlen;
  int rv = atun_cert_profile_san_der(&p, c->altNames, sizeof(c->altNames),
                                     &sanlen);
  if (rv != 0) return ATUN_ERR_INTERNAL;
  c->altNamesSz = (int)sanlen;
  memcpy(c->subject.commonName, name, strlen(name) + 1);
  c->subject.commonNameEnc = CTC_UTF8;
  c->sigType = CTC_SHA256wECDSA;
  /* PKCS#10 knows only version 0; wc_InitCert's default is X.509 v3's 2. */
  c->version = 0;
  return 0;
}

int atun_ca_csr_make(const uint8_t *key, size_t keylen, const char *name,
                     const char *id, uint8_t *out, size_t cap, size_t *outlen) {
  ecc_key *k;
  int rv = key_load_private(&k, key, keylen);
  if (rv != 0) return rv;
  Cert *c = wc_CertNew(NULL);
  if (c == NULL) {
    rv = ATUN_ERR_NOMEM;
    goto fail_cert;
  }
  rv = csr_fill(c, name, id);
  if (rv != 0) goto fail_fill;
  WC_RNG rng;
  if (wc_InitRng(&rng) != 0) {
    rv = ATUN_ERR_INTERNAL;
    goto fail_fill;
  }
  int n = wc_MakeCertReq(c, out, cap32(cap), NULL, k);
  if (n > 0) {
    n = wc_SignCert(c->bodySz, c->sigType, out, cap32(cap), NULL, k, &rng);
  }
  wc_FreeRng(&rng);
  if (n > 0) {
    *outlen = (size_t)n;
  } else {
    rv = n == 0 ? ATUN_ERR_INTERNAL : gen_err(n);
  }
fail_fill:
  wc_CertFree(c);
fail_cert:
  wc_ecc_key_free(k);
  return rv;
}
