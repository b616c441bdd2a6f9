/*
 * Agent certificate renewal (see renew.h).  The decision is pure over the
 * state and a wall time; the file and crypto work happens only when a
 * request is due or an answer arrives, never on the plain periodic step.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fsutil.h"
#include "log.h"
#include "pin.h"
#include "renew.h"

/* Buffers of one step: the key, a PEM file, the CA and a CSR or cert DER.
 * Static (single-threaded daemon) rather than 40 KiB of stack. */
typedef struct renew_bufs {
  char pem[ATUN_CA_PEM_MAX];
  uint8_t key[ATUN_CA_KEY_DER_MAX];
  size_t key_len;
  uint8_t ca[ATUN_CA_DER_MAX];
  size_t ca_len;
  uint8_t der[ATUN_CA_DER_MAX];
  size_t der_len;
} renew_bufs;

static renew_bufs bufs;

void agent_renew_init(agent_renew *r) { memset(r, 0, sizeof(*r)); }

atun_tstamp agent_renew_wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (atun_tstamp)ts.tv_sec * ATUN_NS_PER_S + (atun_tstamp)ts.tv_nsec;
}

int agent_renew_due(const agent_renew *r, atun_tstamp wall) {
  return r->known && !r->outstanding && wall >= r->retry_at &&
         atun_ca_should_renew(r->not_before, r->not_after, wall);
}

void agent_renew_on_established(agent_renew *r) { r->outstanding = 0; }

int agent_renew_take_installed(agent_renew *r) {
  int was = r->installed;
  r->installed = 0;
  return was;
}

/* Reads the PEM file |path| of |type| into |der| (cap ATUN_CA_DER_MAX). */
static int read_pem(const char *path, atun_pem_type type, uint8_t *der,
                    size_t cap, size_t *len) {
  size_t pem_len;
  int rv = atun_fs_read(path, bufs.pem, sizeof(bufs.pem), &pem_len);
  if (rv == 0) rv = atun_pem_decode(type, bufs.pem, pem_len, der, cap, len);
  explicit_bzero(bufs.pem, sizeof(bufs.pem));
  return rv;
}

int agent_renew_load(agent_renew *r, const char *path) {
  atun_cert_profile p;
  int rv = read_pem(path, ATUN_PEM_CERT, bufs.der, sizeof(bufs.der), &bufs.der_len);
  if (rv == 0) rv = atun_ca_cert_read(bufs.der, bufs.der_len, &p);
  if (rv != 0) return rv;
  r->known = 1;
  r->not_before = p.not_before;
  r->not_after = p.not_after;
  return 0;
}

static void format_time(char out[32], atun_tstamp t) {
  time_t s = (time_t)(t / ATUN_NS_PER_S);
  struct tm tm;
  if (gmtime_r(&s, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(out, 32, "%llu", (unsigned long long)s);
}

static void retry_later(agent_renew *r, atun_tstamp wall) {
  r->retry_at = wall + AGENT_RENEW_RETRY_NS;
}

static int send_request(const atun_config_agent *cfg, atun_session_agent *s,
                        atun_tstamp mono) {
  int rv = read_pem(cfg->key_file, ATUN_PEM_KEY, bufs.key, sizeof(bufs.key),
                    &bufs.key_len);
  if (rv == 0)
    rv = atun_ca_csr_make(bufs.key, bufs.key_len, cfg->name, cfg->agent_id, bufs.der,
                          sizeof(bufs.der), &bufs.der_len);
  explicit_bzero(bufs.key, sizeof(bufs.key));
  if (rv == 0)
    rv = atun_session_agent_request_renewal(s, mono, bufs.der, bufs.der_len, 0);
  return rv;
}

int agent_renew_tick(agent_renew *r, const atun_config_agent *cfg,
                     atun_session_agent *s, atun_tstamp mono, atun_tstamp wall) {
  if (atun_session_agent_get_state(s) != ATUN_SESSION_AGENT_ESTABLISHED ||
      r->outstanding || wall < r->retry_at)
    return 0;
  if (!r->known) {
    int rv = agent_renew_load(r, cfg->cert_file);
    if (rv != 0) {
      atun_log(ATUN_LOG_WARN, "agent", "cert_unreadable", "path=%s error=%s",
               cfg->cert_file, atun_strerror(rv));
      retry_later(r, wall);
      return 0;
    }
  }
  if (!agent_renew_due(r, wall)) return 0;
  int rv = send_request(cfg, s, mono);
  if (rv == 0) {
    char until[32];
    format_time(until, r->not_after);
    r->outstanding = 1;
    atun_log(ATUN_LOG_INFO, "agent", "cert_renew_requested", "not_after=%s", until);
    return 0;
  }
  if (atun_err_is_fatal(rv)) return rv;
  atun_log(ATUN_LOG_WARN, "agent", "cert_renew_failed", "step=request error=%s",
           atun_strerror(rv));
  retry_later(r, wall);
  return 0;
}

static int same_key(const uint8_t *cert, size_t len, const uint8_t *key,
                    size_t key_len) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t spki_len;
  uint8_t want[ATUN_SHA256_LEN], got[ATUN_SHA256_LEN];
  return atun_ca_key_spki(key, key_len, spki, sizeof(spki), &spki_len) == 0 &&
         atun_ca_spki_pin(spki, spki_len, want) == 0 &&
         atun_ca_cert_spki_pin(cert, len, got) == 0 &&
         memcmp(want, got, sizeof(want)) == 0;
}

int agent_renew_check_cert(const uint8_t *cert, size_t len, const uint8_t *ca,
                           size_t ca_len, const uint8_t *key, size_t key_len,
                           const char *id, atun_cert_profile *out,
                           const char **why) {
  int rv = agent_pin_verify_issued(cert, len, ca, ca_len, why);
  if (rv != 0) return rv;
  char got[ATUN_UUID_STRLEN];
  if (atun_ca_cert_read(cert, len, out) != 0) {
    *why = "the certificate can not be read";
    return ATUN_ERR_MALFORMED;
  }
  if (out->kind != ATUN_CERT_CLIENT || atun_cert_profile_agent_id(out, got) != 0 ||
      strcmp(got, id) != 0) {
    *why = "not a client certificate for this agent id";
    return ATUN_ERR_DENIED;
  }
  if (!same_key(cert, len, key, key_len)) {
    *why = "the certificate does not hold this agent's key";
    return ATUN_ERR_DENIED;
  }
  return 0;
}

int agent_renew_install(const char *path, const uint8_t *cert, size_t len) {
  size_t pem_len;
  int rv = atun_pem_encode(ATUN_PEM_CERT, cert, len, bufs.pem, sizeof(bufs.pem), &pem_len);
  if (rv == 0) rv = atun_fs_write_atomic(path, bufs.pem, pem_len, 0600, 0);
  return rv;
}

/* Checks and installs an OK answer; |*why| names the failed step. */
static int accept_cert(agent_renew *r, const atun_config_agent *cfg,
                       const atun_cert_renew_response *resp, const char **why) {
  atun_cert_profile p;
  *why = "reading ca_file";
  int rv = read_pem(cfg->ca_file, ATUN_PEM_CERT, bufs.ca, sizeof(bufs.ca), &bufs.ca_len);
  if (rv == 0) {
    *why = "reading key_file";
    rv = read_pem(cfg->key_file, ATUN_PEM_KEY, bufs.key, sizeof(bufs.key), &bufs.key_len);
  }
  if (rv == 0)
    rv = agent_renew_check_cert(resp->cert, resp->cert_len, bufs.ca, bufs.ca_len, bufs.key,
                                bufs.key_len, cfg->agent_id, &p, why);
  explicit_bzero(bufs.key, sizeof(bufs.key));
  if (rv == 0) {
    *why = "writing cert_file";
    rv = agent_renew_install(cfg->cert_file, resp->cert, resp->cert_len);
  }
  if (rv != 0) return rv;
  r->known = 1;
  r->not_before = p.not_before;
  r->not_after = p.not_after;
  r->installed = 1;
  return 0;
}

int agent_renew_on_response(agent_renew *r, const atun_config_agent *cfg,
                            const atun_cert_renew_response *resp,
                            atun_tstamp wall) {
  r->outstanding = 0;
  if (resp->status != ATUN_CERT_STATUS_OK) {
    atun_log(ATUN_LOG_WARN, "agent", "cert_renew_refused", "status=%s message=%s",
             atun_cert_status_name(resp->status),
             resp->message != NULL ? resp->message : "");
    retry_later(r, wall);
    return ATUN_ERR_DENIED;
  }
  const char *why = "";
  int rv = accept_cert(r, cfg, resp, &why);
  if (rv != 0) {
    atun_log(ATUN_LOG_WARN, "agent", "cert_renew_rejected", "error=%s detail=%s",
             atun_strerror(rv), why);
    retry_later(r, wall);
    return rv;
  }
  char until[32];
  format_time(until, r->not_after);
  atun_log(ATUN_LOG_INFO, "agent", "cert_renewed", "not_after=%s path=%s", until,
           cfg->cert_file);
  return 0;
}
