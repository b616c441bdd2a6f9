/*
 * QUIC TLS contexts across server certificate renewals.  A renewal makes a
 * new context for new connections; the old one stays until no connection
 * can use it any more (gw.h, atun_gw_tls_slot, says when that is).  Time
 * here is monotonic.
 */
#include "gw.h"

/* Added to the handshake and idle timeouts before a retired context goes. */
#define TLS_RETIRE_SLACK_NS (10 * ATUN_NS_PER_S)

static int tls_new(atun_gw *gw, atun_quic_tls **ptls) {
  atun_quic_tls_config tc = {.ca = gw->pki->ca_cert, .ca_len = gw->pki->ca_cert_len,
                             .cert = gw->pki->server_cert, .cert_len = gw->pki->server_cert_len,
                             .key = gw->pki->server_key, .key_len = gw->pki->server_key_len};
  return atun_quic_tls_new(ptls, ATUN_QUIC_SERVER, &tc, atun_mem_default());
}

int atun_gw_tls_start(atun_gw *gw) {
  for (size_t i = 0; i < ATUN_GW_TLS_SLOTS; ++i) {
    gw->tls[i].magic = ATUN_GW_TLS_MAGIC;
    gw->tls[i].tls = NULL;
    gw->tls[i].conns = 0;
  }
  gw->tls_current = 0;
  gw->tls[0].retired_at = ATUN_TSTAMP_MAX;
  return tls_new(gw, &gw->tls[0].tls);
}

int atun_gw_tls_reload(atun_gw *gw, atun_tstamp mono) {
  size_t k = 0;
  while (k < ATUN_GW_TLS_SLOTS && gw->tls[k].tls != NULL) ++k;
  if (k == ATUN_GW_TLS_SLOTS) return ATUN_ERR_FULL;
  atun_gw_tls_slot *slot = &gw->tls[k];
  int rv = tls_new(gw, &slot->tls);
  if (rv != 0) return rv;
  slot->conns = 0;
  slot->retired_at = ATUN_TSTAMP_MAX;
  gw->tls[gw->tls_current].retired_at = mono;
  gw->tls_current = k;
  return 0;
}

uint64_t atun_gw_tls_hold_ns(const atun_gw *gw) {
  return gw->quic_settings.handshake_timeout_ns + gw->quic_settings.idle_timeout_ns +
         TLS_RETIRE_SLACK_NS;
}

void atun_gw_tls_housekeeping(atun_gw *gw, atun_tstamp mono) {
  uint64_t hold = atun_gw_tls_hold_ns(gw);
  for (size_t i = 0; i < ATUN_GW_TLS_SLOTS; ++i) {
    atun_gw_tls_slot *s = &gw->tls[i];
    if (i == gw->tls_current || s->tls == NULL || s->conns > 0 || mono - s->retired_at < hold)
      continue;
    atun_quic_tls_del(s->tls);
    s->tls = NULL;
  }
}

void atun_gw_tls_free(atun_gw *gw) {
  for (size_t i = 0; i < ATUN_GW_TLS_SLOTS; ++i) {
    atun_quic_tls_del(gw->tls[i].tls);
    gw->tls[i].tls = NULL;
  }
}
