/*
 * Credentials for simulated nodes: an Ed25519 CA, a gateway certificate and
 * agent certificates with the URI SAN atun://agent/<uuid>.
 *
 * Ed25519 because its signatures have a fixed length and need no randomness:
 * with keys derived from the run's seed, the TLS handshake flights have the
 * same sizes in every run of a seed, so the event trace (times and datagram
 * sizes) repeats even when handshake packets are lost.  (ECDSA signatures
 * vary in length by a byte or two, and wolfSSL draws their nonces from its
 * own RNG.)
 */
#ifndef ATUN_SIM_CERTS_H
#define ATUN_SIM_CERTS_H

#include "support.h"

#define SIM_CERT_DER_MAX 1024
#define SIM_KEY_DER_MAX 128

typedef struct sim_cred {
  uint8_t der[SIM_CERT_DER_MAX]; /* certificate */
  size_t der_len;
  uint8_t key_der[SIM_KEY_DER_MAX]; /* PKCS#8 private key */
  size_t key_len;
  uint8_t seed[32]; /* Ed25519 private key seed, to sign with */
} sim_cred;

/* A self-signed CA.  Returns 0 or ATUN_ERR_INTERNAL. */
int sim_certs_make_ca(sim_cred *ca, atun_testrng *rng);

/* A certificate signed by |ca|: a server certificate for DNS name |name|
 * when |server|, else a client certificate with CN |name| and URI SAN
 * atun://agent/|agent_id|.  Returns 0 or ATUN_ERR_INTERNAL. */
int sim_certs_make_leaf(sim_cred *out, const sim_cred *ca, int server,
                        const char *name, const char *agent_id,
                        atun_testrng *rng);

#endif
