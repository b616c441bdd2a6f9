/*
 * The one HTTPS request of `atun-agent enroll`: a POST to the gateway's API,
 * trusted through the CA pin of the enrollment string (SPEC §5).  Blocking,
 * bounded in time and size: the command runs once and has nothing else to
 * do meanwhile.
 */
#ifndef ATUN_AGENT_ENROLL_HTTP_H
#define ATUN_AGENT_ENROLL_HTTP_H

#include "atun.h"
#include "enroll.h"

/* Largest request body sent (a CSR in JSON is under 1 KiB). */
#define AGENT_HTTPS_BODY_MAX ((size_t)16 * 1024)
/* Room for an error text, NUL included. */
#define AGENT_HTTPS_ERROR_MAX 256

typedef struct agent_https_request {
  const atun_enroll_url *url;    /* scheme https, host, port, path prefix */
  const uint8_t *ca_pin;         /* ATUN_SPKI_PIN_BYTES: the CA's SPKI */
  const char *path;              /* appended to |url|->path */
  const char *bearer;            /* Authorization: Bearer; never logged */
  const char *body;              /* application/json */
  size_t body_len;               /* <= AGENT_HTTPS_BODY_MAX */
  uint64_t timeout_ns;           /* the whole exchange, both handshakes */
  size_t response_max;           /* bound on the response body */
} agent_https_request;

typedef struct agent_https_response {
  int status;     /* HTTP status of the final response */
  char *body;     /* NUL-terminated, |body_len| bytes (atun_mem_default());
                     free with agent_https_response_free() */
  size_t body_len;
  char error[AGENT_HTTPS_ERROR_MAX]; /* why the call failed, for people */
} agent_https_response;

/*
 * Sends |req| and reads the response into |resp| (zeroed first).  An HTTP
 * error status is a response like any other: the call returns 0.
 * Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  a bound of |req| exceeded,
 *   ATUN_ERR_NOT_FOUND         the host name does not resolve,
 *   ATUN_ERR_CLOSED            no TCP connection could be made, or the
 *                              server closed it early,
 *   ATUN_ERR_TIMEOUT           |req|->timeout_ns ran out,
 *   ATUN_ERR_DENIED            the server's chain holds no certificate with
 *                              the pinned key, does not verify against it,
 *                              or its certificate is not a gateway server
 *                              certificate for the URL's host,
 *   ATUN_ERR_PROTO             the TLS handshake failed otherwise,
 *   ATUN_ERR_MALFORMED, ATUN_ERR_LIMIT, ATUN_ERR_TRUNCATED
 *                              the response is not HTTP, too large, or cut,
 *   ATUN_ERR_NOMEM, ATUN_ERR_INTERNAL.
 * |resp|->error says what happened in every failure case.
 */
int agent_https_post(const agent_https_request *req,
                     agent_https_response *resp);

void agent_https_response_free(agent_https_response *resp);

#endif /* ATUN_AGENT_ENROLL_HTTP_H */
