/*
 * The gateway's state directory: what `init` creates and `run` and
 * `token create` read.
 *
 *   ca.key        CA private key, PEM, 0600
 *   ca.crt        CA certificate, PEM, 0644
 *   server.key    server private key, PEM, 0600 (kept across renewals, so
 *                 SPKI pins of the server stay valid)
 *   server.crt    server certificate, PEM, 0644 (renewed in place)
 *   gateway.db    the SQLite store (io/store.h), 0600
 *   gateway.json  the default config written by init, 0600 (it holds admin
 *                 token hashes)
 *
 * Certificates carry wall-clock times (clock.h).
 */
#ifndef ATUN_GW_STATE_H
#define ATUN_GW_STATE_H

#include "ca.h"
#include "config.h"
#include "store.h"

#define ATUN_GW_CA_KEY "ca.key"
#define ATUN_GW_CA_CERT "ca.crt"
#define ATUN_GW_SERVER_KEY "server.key"
#define ATUN_GW_SERVER_CERT "server.crt"
#define ATUN_GW_STORE_FILE "gateway.db"
#define ATUN_GW_CONFIG_FILE "gateway.json"

/* Room for "<state_dir>/<file>". */
#define ATUN_GW_PATH_MAX (ATUN_CONFIG_PATH_MAX + 32)

/* Writes "|dir|/|file|" into |buf| (ATUN_GW_PATH_MAX bytes).  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT (too long). */
int atun_gw_path(char buf[ATUN_GW_PATH_MAX], const char *dir, const char *file);

/* The CA and the server certificate, DER, with what is read back from
 * them. */
typedef struct atun_gw_pki {
  uint8_t ca_cert[ATUN_CA_DER_MAX];
  size_t ca_cert_len;
  uint8_t ca_key[ATUN_CA_KEY_DER_MAX];
  size_t ca_key_len;
  uint8_t server_cert[ATUN_CA_DER_MAX];
  size_t server_cert_len;
  uint8_t server_key[ATUN_CA_KEY_DER_MAX];
  size_t server_key_len;
  atun_cert_profile ca_profile;
  atun_cert_profile server_profile;
  uint8_t ca_pin[ATUN_SHA256_LEN];     /* SHA-256 of the CA's SPKI */
  uint8_t server_pin[ATUN_SHA256_LEN]; /* SHA-256 of the server's SPKI */
} atun_gw_pki;

/* The CA settings (lifetimes) |cfg| asks for. */
void atun_gw_ca_settings(atun_ca_settings *s, const atun_config_gateway *cfg);

/* Creates a new CA and a server certificate for the |nhosts| names and
 * addresses in |hosts| at wall time |wall|, in memory.  Returns 0 or what
 * atun_ca_create / atun_ca_server_issue / atun_ca_key_generate return. */
int atun_gw_pki_generate(atun_gw_pki *pki, const atun_ca_settings *s,
                         const char *const *hosts, size_t nhosts,
                         atun_tstamp wall);

/* Writes the four PEM files of |pki| into |dir| atomically: keys 0600,
 * certificates 0644.  Without |replace| an existing file is left alone and
 * the call fails with ATUN_ERR_EXISTS.  The path that failed goes to
 * |failed| (ATUN_GW_PATH_MAX bytes).  Returns 0 or what
 * atun_fs_write_atomic returns. */
int atun_gw_pki_write(const atun_gw_pki *pki, const char *dir, int replace,
                      char failed[ATUN_GW_PATH_MAX]);

/* Reads the four files from |dir|, checks that the server key belongs to
 * the server certificate, reads both profiles and computes the pins.  The
 * path that failed goes to |failed|.  Returns 0, ATUN_ERR_NOT_FOUND (a file
 * is missing), ATUN_ERR_MALFORMED (unreadable PEM/DER, key mismatch) or what
 * atun_fs_read returns. */
int atun_gw_pki_load(atun_gw_pki *pki, const char *dir,
                     char failed[ATUN_GW_PATH_MAX]);

/* Renews the server certificate with its own key when it is due at |wall|
 * (atun_ca_should_renew), for the names of |cfg|, and rewrites server.crt
 * in |dir|.  Sets |*renewed| to 1 if it did.  Returns 0 or the error of
 * issuing or writing (|pki| is then unchanged). */
int atun_gw_pki_renew_server(atun_gw_pki *pki, const atun_config_gateway *cfg,
                             const char *dir, atun_tstamp wall, int *renewed);

/* PEM of DER |der| into a buffer the caller frees with free(); NULL on
 * failure.  |len| gets the length without the NUL. */
char *atun_gw_pem(atun_pem_type type, const uint8_t *der, size_t derlen,
                  size_t *len);

/* Loads and parses the config file |path|.  On failure |msg| (|cap| bytes)
 * says what is wrong, naming the file and the key.  Returns 0,
 * ATUN_ERR_NOT_FOUND, ATUN_ERR_NOMEM or a parse error of
 * atun_config_gateway_parse (warnings go to the log). */
int atun_gw_config_load(atun_config_gateway *cfg, const char *path, char *msg,
                        size_t cap);

/* Opens the store of |cfg|'s state directory.  Returns what atun_store_open
 * returns. */
int atun_gw_store_open(atun_store **pst, const atun_config_gateway *cfg);



/* Loads the config at |config_path|, the PKI of its state directory (if
 * |pki| is not NULL) and opens the store (if |pst| is not NULL).  Prints
 * what went wrong to stderr.  Returns 0 or an atun_gw_exit code: USAGE for
 * the config, STATE or RUNTIME for the rest.  On failure nothing is left
 * open. */
int atun_gw_state_open(const char *config_path, atun_config_gateway *cfg, atun_gw_pki *pki,
                       atun_store **pst);
#endif /* ATUN_GW_STATE_H */
