/*
 * Agent certificate renewal over the control stream (SPEC §3, §5): the
 * CertRenewRequest's CSR is signed for the identity the agent connected
 * with, and the store learns the new certificate (and audits it).
 */
#include <stdlib.h>

#include "clock.h"
#include "codec.h"
#include "gw.h"

uint64_t atun_gw_renew_sign(atun_gw *gw, const char *id, const char *name, const uint8_t *csr,
                            size_t len, uint8_t *der, size_t *derlen, atun_tstamp *until) {
  atun_ca_settings s;
  atun_cert_profile prof;
  uint8_t fp[ATUN_SHA256_LEN];
  size_t pemlen;
  *until = ATUN_TSTAMP_MAX;
  if (len == 0 || len > ATUN_CA_DER_MAX) return ATUN_CERT_STATUS_BAD_CSR;
  char *pem = atun_gw_pem(ATUN_PEM_CSR, csr, len, &pemlen);
  if (pem == NULL) return ATUN_CERT_STATUS_INTERNAL;
  atun_gw_ca_settings(&s, &gw->cfg);
  atun_ca_issuer ca = {gw->pki->ca_cert, gw->pki->ca_cert_len, gw->pki->ca_key,
                       gw->pki->ca_key_len};
  atun_tstamp wall = atun_gw_wall_now();
  int rv = atun_ca_sign_csr(&s, pem, pemlen, name, id, &ca, wall, atun_ca_sysrand(), der,
                            ATUN_CA_DER_MAX, derlen, &prof);
  free(pem);
  if (rv == ATUN_ERR_MALFORMED || rv == ATUN_ERR_DENIED || rv == ATUN_ERR_FRAME_TOO_LARGE)
    return ATUN_CERT_STATUS_BAD_CSR;
  if (rv == 0) rv = atun_ca_cert_fingerprint(der, *derlen, fp);
  /* The store refuses a revoked agent: the check and the write are one
   * transaction, so a DELETE racing with the renewal can not lose. */
  if (rv == 0)
    rv = atun_store_agent_renew(gw->store, id, fp, prof.serial, prof.serial_len, prof.not_after,
                                wall, "agent");
  if (rv == ATUN_ERR_REVOKED || rv == ATUN_ERR_NOT_FOUND) return ATUN_CERT_STATUS_DENIED;
  if (rv != 0) return ATUN_CERT_STATUS_INTERNAL;
  *until = prof.not_after;
  return ATUN_CERT_STATUS_OK;
}
