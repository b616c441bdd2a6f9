/*
 * The gateway's certificate authority and the agent's half of enrollment,
 * on wolfCrypt (SPEC §5).  Policy (names, lifetimes, serials, SANs) comes
 * from core/ca_policy; this module only encodes, signs, parses and hashes.
 *
 * Keys are ECDSA P-256, held as DER (SEC1 "EC PRIVATE KEY" with the public
 * point) in caller buffers; nothing here keeps state between calls.  Inputs
 * are bounded before any parsing: DER at most ATUN_CA_DER_MAX bytes, PEM at
 * most ATUN_CA_PEM_MAX.
 *
 * Every function returns 0 or a negative ATUN_ERR_*.  ATUN_ERR_INTERNAL means
 * wolfCrypt failed where it should not (RNG, signing).
 */
#ifndef ATUN_CA_H
#define ATUN_CA_H

#include "atun.h"
#include "ca_policy.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest PEM text accepted (a CSR PEM is about 600 bytes). */
#define ATUN_CA_PEM_MAX 16384
/* Largest certificate or CSR DER produced or accepted. */
#define ATUN_CA_DER_MAX 8192
/* Buffer sizes for a P-256 private key DER (121 bytes) and SPKI (91). */
#define ATUN_CA_KEY_DER_MAX 160
#define ATUN_CA_SPKI_DER_MAX 128
#define ATUN_SHA256_LEN 32

typedef enum atun_pem_type {
  ATUN_PEM_CERT = 1, /* CERTIFICATE */
  ATUN_PEM_CSR = 2,  /* CERTIFICATE REQUEST */
  ATUN_PEM_KEY = 3   /* EC PRIVATE KEY */
} atun_pem_type;

/* The CA's own material, both DER. */
typedef struct atun_ca_issuer {
  const uint8_t *cert;
  size_t certlen;
  const uint8_t *key;
  size_t keylen;
} atun_ca_issuer;

/* An atun_rand backed by the kernel's getrandom(2), for serials and UUIDs
 * outside tests. */
const atun_rand *atun_ca_sysrand(void);

/* Encodes |der| of |derlen| bytes as PEM of |type| into |out| (cap |cap|),
 * NUL-terminated; the length without the NUL goes to |outlen|.  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT or ATUN_ERR_NOBUF. */
int atun_pem_encode(atun_pem_type type, const uint8_t *der, size_t derlen,
                    char *out, size_t cap, size_t *outlen);

/* Decodes the first PEM block of |type| in |pem| of |pemlen| bytes into |der|
 * (cap |cap|).  Returns 0, ATUN_ERR_FRAME_TOO_LARGE (|pemlen| >
 * ATUN_CA_PEM_MAX), ATUN_ERR_MALFORMED or ATUN_ERR_NOBUF. */
int atun_pem_decode(atun_pem_type type, const char *pem, size_t pemlen,
                    uint8_t *der, size_t cap, size_t *derlen);

/* Generates a P-256 private key into |der| (cap >= ATUN_CA_KEY_DER_MAX).
 * Returns 0, ATUN_ERR_NOBUF, ATUN_ERR_NOMEM or ATUN_ERR_INTERNAL. */
int atun_ca_key_generate(uint8_t *der, size_t cap, size_t *derlen);

/* Writes the SubjectPublicKeyInfo of private key |key| into |spki|.  Returns
 * 0, ATUN_ERR_MALFORMED (not a P-256 key DER), ATUN_ERR_NOBUF or
 * ATUN_ERR_NOMEM. */
int atun_ca_key_spki(const uint8_t *key, size_t keylen, uint8_t *spki,
                     size_t cap, size_t *spkilen);

/*
 * Encodes and signs a certificate for |profile| whose subject key is the
 * P-256 SubjectPublicKeyInfo |spki|.  With |issuer|->cert NULL the
 * certificate is self-signed by |issuer|->key, which must then be the key of
 * |spki|; otherwise the issuer name and authority key id come from
 * |issuer|->cert.  Writes the DER into |out|.
 *
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (|profile| cannot be encoded, or a
 * self-signed profile whose |spki| is not the issuer's key), ATUN_ERR_MALFORMED
 * (|spki|, issuer key or issuer certificate unreadable), ATUN_ERR_NOBUF,
 * ATUN_ERR_NOMEM or ATUN_ERR_INTERNAL.
 */
int atun_ca_issue(const atun_cert_profile *profile, const uint8_t *spki,
                  size_t spkilen, const atun_ca_issuer *issuer, uint8_t *out,
                  size_t cap, size_t *outlen);

/* Gateway init: generates the CA key into |key| and its self-signed
 * certificate (profile from |s| at |now|, wall-clock ns) into |cert|.
 * Returns what atun_ca_profile_ca, atun_ca_key_generate and atun_ca_issue
 * return. */
int atun_ca_create(const atun_ca_settings *s, atun_tstamp now,
                   const atun_rand *rand, uint8_t *key, size_t keycap,
                   size_t *keylen, uint8_t *cert, size_t certcap,
                   size_t *certlen);

/* Issues (or renews: pass the same |server_key|, so the SPKI pin stays
 * valid) the gateway's server certificate for |hosts|, signed by |ca|.
 * Returns ATUN_ERR_MALFORMED (unreadable CA certificate or server key) or
 * what atun_ca_profile_server and atun_ca_issue return. */
int atun_ca_server_issue(const atun_ca_settings *s, const char *const *hosts,
                         size_t nhosts, const uint8_t *server_key,
                         size_t server_keylen, const atun_ca_issuer *ca,
                         atun_tstamp now, const atun_rand *rand, uint8_t *out,
                         size_t cap, size_t *outlen);

/*
 * Agent side: a CSR signed by private key |key|, with CN |name| and the URI
 * SAN atun://agent/|id|.  The CA does not trust either (it uses the
 * enrollment's), they only make the request readable.
 * Returns 0, ATUN_ERR_BAD_NAME, ATUN_ERR_INVALID_ARGUMENT (|id|),
 * ATUN_ERR_MALFORMED (|key|), ATUN_ERR_NOBUF, ATUN_ERR_NOMEM or
 * ATUN_ERR_INTERNAL.
 */
int atun_ca_csr_make(const uint8_t *key, size_t keylen, const char *name,
                     const char *id, uint8_t *out, size_t cap, size_t *outlen);

/*
 * CA side: parses the CSR DER |csr| of |len| bytes, checks its signature
 * against the key it carries (proof of possession), and writes that key's
 * SubjectPublicKeyInfo into |spki|.  Nothing else of the CSR is used.
 * Returns 0, ATUN_ERR_FRAME_TOO_LARGE (|len| > ATUN_CA_DER_MAX),
 * ATUN_ERR_MALFORMED (not exactly one CSR, a bad signature, or a point off
 * the curve), ATUN_ERR_DENIED (a key other than P-256), ATUN_ERR_NOBUF or
 * ATUN_ERR_NOMEM.
 */
int atun_ca_csr_verify(const uint8_t *csr, size_t len, uint8_t *spki,
                       size_t cap, size_t *spkilen);

/* The same for a PEM CSR: more than ATUN_CA_PEM_MAX bytes are refused
 * (ATUN_ERR_FRAME_TOO_LARGE) before decoding. */
int atun_ca_csr_verify_pem(const char *pem, size_t len, uint8_t *spki,
                           size_t cap, size_t *spkilen);

/* Enrollment: verifies the CSR PEM |csr_pem| and issues a client certificate
 * for its key only, with CN |name| and id |id| from the enrollment (the CSR's
 * own subject is ignored), signed by |ca|.  The profile used goes to
 * |profile_out| unless it is NULL (serial and expiry for the store).
 * Returns what atun_ca_csr_verify_pem, atun_ca_profile_client and
 * atun_ca_issue return, or ATUN_ERR_MALFORMED (unreadable CA). */
int atun_ca_sign_csr(const atun_ca_settings *s, const char *csr_pem,
                     size_t csrlen, const char *name, const char *id,
                     const atun_ca_issuer *ca, atun_tstamp now,
                     const atun_rand *rand, uint8_t *out, size_t cap,
                     size_t *outlen, atun_cert_profile *profile_out);

/* SHA-256 of the certificate DER |cert| (its fingerprint).  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT (empty or above ATUN_CA_DER_MAX) or
 * ATUN_ERR_INTERNAL. */
int atun_ca_cert_fingerprint(const uint8_t *cert, size_t len,
                             uint8_t out[ATUN_SHA256_LEN]);

/* SHA-256 of the certificate's SubjectPublicKeyInfo DER (the pin carried in
 * enrollment strings).  Returns 0, ATUN_ERR_FRAME_TOO_LARGE,
 * ATUN_ERR_MALFORMED, ATUN_ERR_DENIED (not a P-256 key, the only kind this
 * CA issues for) or ATUN_ERR_NOMEM. */
int atun_ca_cert_spki_pin(const uint8_t *cert, size_t len,
                          uint8_t out[ATUN_SHA256_LEN]);

/* SHA-256 of a SubjectPublicKeyInfo DER.  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT (above ATUN_CA_DER_MAX) or ATUN_ERR_INTERNAL. */
int atun_ca_spki_pin(const uint8_t *spki, size_t len,
                     uint8_t out[ATUN_SHA256_LEN]);

/*
 * Reads certificate DER |cert| back into |out|: CN, serial, validity, CA
 * flag, key usages and the DNS, IP and URI SANs (other SAN types are
 * skipped).  |out|->kind is ATUN_CERT_CA for a CA, else SERVER or CLIENT by
 * EKU (0 when neither).  The signature is not checked here: only call it on
 * a certificate that was verified or that this gateway wrote.
 * Returns 0, ATUN_ERR_FRAME_TOO_LARGE, ATUN_ERR_MALFORMED, ATUN_ERR_LIMIT (a
 * CN, serial, SAN or SAN count beyond the profile's bounds) or
 * ATUN_ERR_NOMEM.  Use atun_cert_profile_agent_id() for the agent id.
 */
int atun_ca_cert_read(const uint8_t *cert, size_t len, atun_cert_profile *out);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_CA_H */
