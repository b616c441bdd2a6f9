/*
 * Agent certificate renewal (SPEC §3, §5).  While the session is
 * established, once the certificate in use has lived two thirds of its
 * lifetime (wall clock), the agent sends a CertRenewRequest with a CSR for
 * the same key.  At most one request waits for its answer; a refusal, a
 * rejected certificate or a local failure waits AGENT_RENEW_RETRY_NS before
 * the next attempt, and a lost connection loses the request (the next
 * ESTABLISHED may ask again at once).  An accepted certificate must chain
 * to our CA, name our agent id and carry our public key; it then replaces
 * cert_file atomically (mode 0600).
 *
 * The live connection keeps the certificate it was made with; the daemon
 * rebuilds its credentials before the next dial (agent_renew_take_installed).
 */
#ifndef ATUN_AGENT_RENEW_H
#define ATUN_AGENT_RENEW_H

#include "ca.h"
#include "codec.h"
#include "config.h"
#include "session_agent.h"

/* Delay after a failed or refused renewal before the next request: long
 * enough not to load the gateway's CA, short against a lifetime of >= 1 h. */
#define AGENT_RENEW_RETRY_NS (60 * ATUN_NS_PER_S)

typedef struct agent_renew {
  int known;              /* validity of the certificate in use was read */
  atun_tstamp not_before; /* wall clock, of the certificate in use */
  atun_tstamp not_after;
  int outstanding;        /* a request waits for its answer */
  atun_tstamp retry_at;   /* wall clock: no request before */
  int installed;          /* a new cert_file awaits the next connection */
} agent_renew;

void agent_renew_init(agent_renew *r);

/* The real-time clock in ns (certificate times are wall clock). */
atun_tstamp agent_renew_wall_now(void);

/* Nonzero when a request should go out at wall time |wall|: the validity
 * is known, nothing is outstanding, the retry delay is over and the
 * certificate is due (atun_ca_should_renew). */
int agent_renew_due(const agent_renew *r, atun_tstamp wall);

/* A new connection was admitted: a request of the old one is lost. */
void agent_renew_on_established(agent_renew *r);

/* Nonzero once after each certificate installed by
 * agent_renew_on_response: the caller reloads its credentials. */
int agent_renew_take_installed(agent_renew *r);

/* Reads the validity of the PEM certificate |path| into |r|.  Returns 0,
 * what atun_fs_read returns, ATUN_ERR_MALFORMED or what atun_ca_cert_read
 * returns. */
int agent_renew_load(agent_renew *r, const char *path);

/* The periodic step: when |s| is established and agent_renew_due() says
 * so, builds a CSR from |cfg|'s key and identity and asks |s| (monotonic
 * time |mono|).  Local failures are logged and retried later.  Returns 0
 * or a fatal session error (the caller stops). */
int agent_renew_tick(agent_renew *r, const atun_config_agent *cfg,
                     atun_session_agent *s, atun_tstamp mono, atun_tstamp wall);

/* Checks a certificate the gateway issued: |cert| of |len| bytes verifies
 * against the CA |ca| (valid now), is a client certificate for agent |id|
 * and holds the public key of private key |key|.  Its profile goes to
 * |out|, a static reason to |*why| on failure.  Returns 0, ATUN_ERR_DENIED,
 * ATUN_ERR_MALFORMED or ATUN_ERR_NOMEM. */
int agent_renew_check_cert(const uint8_t *cert, size_t len, const uint8_t *ca,
                           size_t ca_len, const uint8_t *key, size_t key_len,
                           const char *id, atun_cert_profile *out,
                           const char **why);

/* Writes DER |cert| of |len| bytes as PEM over |path|, atomically, mode
 * 0600.  Returns 0, ATUN_ERR_INVALID_ARGUMENT (|len| 0 or above
 * ATUN_CA_DER_MAX) or what atun_fs_write_atomic returns. */
int agent_renew_install(const char *path, const uint8_t *cert, size_t len);

/* Handles the gateway's answer at wall time |wall|: a refusal is logged
 * with its status name, an OK certificate is checked against |cfg|'s CA,
 * key and agent id and installed over cert_file.  Returns 0 when the new
 * certificate is in place, ATUN_ERR_DENIED for a refusal, or the error of
 * the failed step (all retried after AGENT_RENEW_RETRY_NS). */
int agent_renew_on_response(agent_renew *r, const atun_config_agent *cfg,
                            const atun_cert_renew_response *resp,
                            atun_tstamp wall);

#endif /* ATUN_AGENT_RENEW_H */
