/*
 * What makes an enrollment answer this agent's (SPEC §5): the CA it sends
 * is the one pinned by the enrollment string, the certificate is for this
 * agent's key and id, a client certificate, and signed by that CA.  Any
 * other answer is refused, even a well-formed one: the gateway could be
 * misconfigured, or answering for another request.
 */
#ifndef ATUN_AGENT_ENROLL_CHECK_H
#define ATUN_AGENT_ENROLL_CHECK_H

#include "ca.h"
#include "enroll_resp.h"

typedef struct agent_enroll_issued {
  uint8_t cert_der[ATUN_CA_DER_MAX];
  size_t cert_len;
  uint8_t ca_der[ATUN_CA_DER_MAX];
  size_t ca_len;
  /* Both written back from the DER: one clean PEM block each, nothing the
   * gateway may have put around them. */
  char cert_pem[ATUN_CA_PEM_MAX];
  size_t cert_pem_len;
  char ca_pem[ATUN_CA_PEM_MAX];
  size_t ca_pem_len;
  /* The certificate's CN: the name the gateway knows the agent by. */
  char name[ATUN_AGENT_NAME_STRLEN];
} agent_enroll_issued;

/* Checks the answer |a| against agent |id|, the SPKI pin of its key
 * |key_pin| and the CA pin of the enrollment string |ca_pin|, filling
 * |out|.  Returns NULL when all holds, else a static text saying what does
 * not. */
const char *agent_enroll_check(const agent_enroll_answer *a, const char *id,
                               const uint8_t key_pin[ATUN_SHA256_LEN],
                               const uint8_t ca_pin[ATUN_SPKI_PIN_BYTES],
                               agent_enroll_issued *out);

#endif /* ATUN_AGENT_ENROLL_CHECK_H */
