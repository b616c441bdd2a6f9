/*
 * Pin and certificate checks of the first contact (see pin.h).  wolfSSL's
 * certificate manager does the signature and validity work; the policy
 * (which key, which purpose, which name) is read back with io/ca.
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <string.h>
#include <strings.h>

#include "ca.h"
#include "pin.h"

int agent_pin_find(const agent_der *chain, size_t n,
                   const uint8_t pin[ATUN_SPKI_PIN_BYTES]) {
  if (n > AGENT_PIN_CHAIN_MAX) return ATUN_ERR_NOT_FOUND;
  for (size_t i = 0; i < n; ++i) {
    uint8_t got[ATUN_SHA256_LEN];
    /* A certificate that does not parse, or holds a key of another kind,
     * can not be the CA: skip it rather than fail the chain. */
    if (atun_ca_cert_spki_pin(chain[i].der, chain[i].len, got) != 0) continue;
    if (memcmp(got, pin, ATUN_SPKI_PIN_BYTES) == 0) return (int)i;
  }
  return ATUN_ERR_NOT_FOUND;
}

int agent_pin_verify_issued(const uint8_t *cert, size_t cert_len,
                            const uint8_t *anchor, size_t anchor_len,
                            const char **why) {
  if (cert_len == 0 || cert_len > ATUN_CA_DER_MAX || anchor_len == 0 ||
      anchor_len > ATUN_CA_DER_MAX) {
    *why = "certificate size out of bounds";
    return ATUN_ERR_MALFORMED;
  }
  WOLFSSL_CERT_MANAGER *cm = wolfSSL_CertManagerNew();
  if (cm == NULL) {
    *why = "out of memory";
    return ATUN_ERR_NOMEM;
  }
  int rv = 0;
  if (wolfSSL_CertManagerLoadCABuffer(cm, anchor, (long)anchor_len,
                                      WOLFSSL_FILETYPE_ASN1) !=
      WOLFSSL_SUCCESS) {
    *why = "the CA certificate can not be used as a trust anchor";
    rv = ATUN_ERR_MALFORMED;
  } else if (wolfSSL_CertManagerVerifyBuffer(cm, cert, (long)cert_len,
                                             WOLFSSL_FILETYPE_ASN1) !=
             WOLFSSL_SUCCESS) {
    *why = "certificate not signed by the pinned CA, or not valid now";
    rv = ATUN_ERR_DENIED;
  }
  wolfSSL_CertManagerFree(cm);
  return rv;
}

static int san_names_host(const atun_cert_san *san, const atun_target *host) {
  if (host->kind == ATUN_TARGET_ADDR) {
    /* ::ffff:a.b.c.d is the address a.b.c.d, whichever way it is written. */
    atun_addr want = host->addr, have = san->ip;
    atun_addr_normalize(&want);
    atun_addr_normalize(&have);
    size_t n = want.family == ATUN_AF_INET ? 4 : 16;
    return san->type == ATUN_SAN_IP && have.family == want.family &&
           memcmp(have.bytes, want.bytes, n) == 0;
  }
  return san->type == ATUN_SAN_DNS && strcasecmp(san->name, host->host) == 0;
}

int agent_pin_check_server(const uint8_t *leaf, size_t leaf_len,
                           const atun_target *host, const char **why) {
  atun_cert_profile p;
  if (atun_ca_cert_read(leaf, leaf_len, &p) != 0) {
    *why = "the server certificate can not be read";
    return ATUN_ERR_MALFORMED;
  }
  if (p.is_ca || !(p.ext_key_usage & ATUN_EKU_SERVER_AUTH)) {
    *why = "the certificate presented is not a gateway server certificate";
    return ATUN_ERR_DENIED;
  }
  for (size_t i = 0; i < p.nsans; ++i)
    if (san_names_host(&p.sans[i], host)) return 0;
  *why = "the server certificate does not name the host of the API URL";
  return ATUN_ERR_DENIED;
}
