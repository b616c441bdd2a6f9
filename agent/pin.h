/*
 * The checks that let the agent trust the gateway's API on first contact
 * (SPEC §5), with nothing but the SHA-256 pin of the CA's
 * SubjectPublicKeyInfo from the enrollment string.  Pure functions over
 * DER certificates: no socket, so the unit tests run them on certificates
 * made by io/ca.  enroll_http.c explains how they fit into the handshakes.
 */
#ifndef ATUN_AGENT_PIN_H
#define ATUN_AGENT_PIN_H

#include "atun.h"
#include "codec.h"
#include "enroll.h"

/* Certificates of a presented chain that are looked at; TLS peers send a
 * handful, and the gateway sends two (its certificate and the CA). */
#define AGENT_PIN_CHAIN_MAX 8

typedef struct agent_der {
  const uint8_t *der;
  size_t len;
} agent_der;

/* Returns the index of the first of the |n| certificates in |chain| whose
 * SubjectPublicKeyInfo hashes to |pin|, or ATUN_ERR_NOT_FOUND (also when
 * none can be read, or |n| is above AGENT_PIN_CHAIN_MAX: a chain that long
 * is no gateway's). */
int agent_pin_find(const agent_der *chain, size_t n,
                   const uint8_t pin[ATUN_SPKI_PIN_BYTES]);

/* Checks that |cert| is signed by |anchor| and valid now (wolfSSL's
 * certificate manager with |anchor| as its only trust root).  |*why| gets a
 * static text on failure.  Returns 0, ATUN_ERR_DENIED (does not verify),
 * ATUN_ERR_MALFORMED (|anchor| is not a usable CA certificate) or
 * ATUN_ERR_NOMEM. */
int agent_pin_verify_issued(const uint8_t *cert, size_t cert_len,
                            const uint8_t *anchor, size_t anchor_len,
                            const char **why);

/* Checks that the already verified server certificate |leaf| is one the CA
 * issued to a gateway (EKU serverAuth: the same CA issues clientAuth
 * certificates to every agent, and no agent may pose as the API) and that
 * it names |host| in a SAN (DNS names case-insensitively, addresses by
 * value).  Returns 0, ATUN_ERR_DENIED or ATUN_ERR_MALFORMED, |*why| set on
 * failure. */
int agent_pin_check_server(const uint8_t *leaf, size_t leaf_len,
                           const atun_target *host, const char **why);

#endif /* ATUN_AGENT_PIN_H */
