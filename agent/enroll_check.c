/*
 * The enrollment answer against the agent's own facts (see
 * enroll_check.h).
 */
#include <string.h>

#include "enroll_check.h"
#include "pin.h"

static int decode_pem(const char *pem, uint8_t *der, size_t *len, char *out,
                      size_t *outlen) {
  if (atun_pem_decode(ATUN_PEM_CERT, pem, strlen(pem), der, ATUN_CA_DER_MAX, len) != 0)
    return -1;
  return atun_pem_encode(ATUN_PEM_CERT, der, *len, out, ATUN_CA_PEM_MAX, outlen);
}

static int pin_is(const uint8_t *der, size_t len, const uint8_t *pin) {
  uint8_t got[ATUN_SHA256_LEN];
  return atun_ca_cert_spki_pin(der, len, got) == 0 &&
         memcmp(got, pin, ATUN_SHA256_LEN) == 0;
}

const char *agent_enroll_check(const agent_enroll_answer *a, const char *id,
                               const uint8_t key_pin[ATUN_SHA256_LEN],
                               const uint8_t ca_pin[ATUN_SPKI_PIN_BYTES],
                               agent_enroll_issued *out) {
  atun_cert_profile p;
  char cert_id[ATUN_UUID_STRLEN];
  const char *why = NULL;
  memset(out, 0, sizeof(*out));
  if (strcmp(a->agent_id, id) != 0) return "the answer names another agent id";
  if (decode_pem(a->ca_cert_pem, out->ca_der, &out->ca_len, out->ca_pem,
                 &out->ca_pem_len) != 0 ||
      decode_pem(a->client_cert_pem, out->cert_der, &out->cert_len, out->cert_pem,
                 &out->cert_pem_len) != 0)
    return "a certificate in the answer is not PEM";
  if (!pin_is(out->ca_der, out->ca_len, ca_pin))
    return "ca_cert_pem is not the CA pinned by the enrollment string";
  if (!pin_is(out->cert_der, out->cert_len, key_pin))
    return "the certificate is not for this agent's key";
  if (atun_ca_cert_read(out->cert_der, out->cert_len, &p) != 0 ||
      atun_cert_profile_agent_id(&p, cert_id) != 0 || strcmp(cert_id, id) != 0)
    return "the certificate does not carry this agent's id";
  if (p.is_ca || !(p.ext_key_usage & ATUN_EKU_CLIENT_AUTH))
    return "the certificate is not a client certificate";
  if (!atun_agent_name_valid(p.cn, strlen(p.cn)))
    return "the certificate's name is not an agent name";
  if (agent_pin_verify_issued(out->cert_der, out->cert_len, out->ca_der, out->ca_len,
                              &why) != 0)
    return why;
  memcpy(out->name, p.cn, strlen(p.cn) + 1);
  return NULL;
}
