/*
 * The gateway's answer to POST /jet/agent-tunnel/enroll (SPEC §6), taken
 * apart and classified.  Pure: the HTTP status and body in, fields or the
 * API's error out.
 *
 *   2xx   {agent_id, client_cert_pem, ca_cert_pem, quic_endpoint,
 *          server_spki_sha256}: every field required and checked.
 *   4xx   refused: {"error": {"code", "message"}}; retrying with the same
 *         enrollment string cannot help (unknown, used or expired token, a
 *         request the gateway found invalid).
 *   408, 429, 5xx
 *         a transient failure: a new attempt may work (with a new token if
 *         the gateway consumed this one).
 *   other statuses, or an unusable 2xx body: a bad answer.
 */
#ifndef ATUN_AGENT_ENROLL_RESP_H
#define ATUN_AGENT_ENROLL_RESP_H

#include "atun.h"
#include "ca.h"
#include "ca_policy.h"
#include "enroll.h"

/* Kept of an API error's code and message (longer ones are cut). */
#define AGENT_ENROLL_CODE_MAX 64
#define AGENT_ENROLL_MESSAGE_MAX 512

typedef enum agent_enroll_outcome {
  AGENT_ENROLL_OK = 0,
  AGENT_ENROLL_REFUSED = 1,
  AGENT_ENROLL_RETRY = 2,
  AGENT_ENROLL_BAD_ANSWER = 3
} agent_enroll_outcome;

typedef struct agent_enroll_answer {
  int status;
  /* AGENT_ENROLL_OK */
  char agent_id[ATUN_UUID_STRLEN];
  char client_cert_pem[ATUN_CA_PEM_MAX + 1];
  char ca_cert_pem[ATUN_CA_PEM_MAX + 1];
  char quic_endpoint[ATUN_HOSTPORT_STRLEN]; /* checked host:port */
  uint8_t server_spki_sha256[ATUN_SPKI_PIN_BYTES];
  /* REFUSED and RETRY: the API's error, printable ASCII ("" if absent) */
  char code[AGENT_ENROLL_CODE_MAX + 1];
  char message[AGENT_ENROLL_MESSAGE_MAX + 1];
  /* BAD_ANSWER: what is wrong (static text) */
  const char *why;
} agent_enroll_answer;

/* Classifies the answer of HTTP |status| with |body| of |len| bytes (NUL
 * not needed) into |out| (overwritten) and returns the outcome.  cJSON
 * does not tell a parse error from a failed allocation, so running out of
 * memory reads as an unusable body. */
int agent_enroll_answer_parse(agent_enroll_answer *out, int status,
                              const char *body, size_t len);

#endif /* ATUN_AGENT_ENROLL_RESP_H */
