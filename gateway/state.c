#include "state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "cmds.h"
#include "log.h"

int atun_gw_path(char buf[ATUN_GW_PATH_MAX], const char *dir, const char *file) {
  int n = snprintf(buf, ATUN_GW_PATH_MAX, "%s/%s", dir, file);
  return n > 0 && n < ATUN_GW_PATH_MAX ? 0 : ATUN_ERR_INVALID_ARGUMENT;
}

void atun_gw_ca_settings(atun_ca_settings *s, const atun_config_gateway *cfg) {
  atun_ca_settings_default(s);
  s->ca_lifetime_ns = cfg->ca_lifetime_ns;
  s->server_lifetime_ns = cfg->server_cert_lifetime_ns;
  s->client_lifetime_ns = cfg->client_cert_lifetime_ns;
}

static int pins_and_profiles(atun_gw_pki *pki) {
  int rv = atun_ca_cert_read(pki->ca_cert, pki->ca_cert_len, &pki->ca_profile);
  if (rv == 0) rv = atun_ca_cert_read(pki->server_cert, pki->server_cert_len, &pki->server_profile);
  if (rv == 0) rv = atun_ca_cert_spki_pin(pki->ca_cert, pki->ca_cert_len, pki->ca_pin);
  if (rv == 0)
    rv = atun_ca_cert_spki_pin(pki->server_cert, pki->server_cert_len, pki->server_pin);
  return rv;
}

int atun_gw_pki_generate(atun_gw_pki *pki, const atun_ca_settings *s,
                         const char *const *hosts, size_t nhosts,
                         atun_tstamp wall) {
  const atun_rand *rand = atun_ca_sysrand();
  memset(pki, 0, sizeof(*pki));
  int rv = atun_ca_create(s, wall, rand, pki->ca_key, sizeof(pki->ca_key), &pki->ca_key_len,
                          pki->ca_cert, sizeof(pki->ca_cert), &pki->ca_cert_len);
  if (rv == 0)
    rv = atun_ca_key_generate(pki->server_key, sizeof(pki->server_key), &pki->server_key_len);
  if (rv != 0) return rv;
  atun_ca_issuer ca = {pki->ca_cert, pki->ca_cert_len, pki->ca_key, pki->ca_key_len};
  rv = atun_ca_server_issue(s, hosts, nhosts, pki->server_key, pki->server_key_len, &ca, wall,
                            rand, pki->server_cert, sizeof(pki->server_cert),
                            &pki->server_cert_len);
  return rv != 0 ? rv : pins_and_profiles(pki);
}

char *atun_gw_pem(atun_pem_type type, const uint8_t *der, size_t derlen, size_t *len) {
  /* Base64 grows 4/3, plus line ends every 64 characters and the armour. */
  size_t cap = derlen * 2 + 128;
  char *pem = malloc(cap);
  if (pem != NULL && atun_pem_encode(type, der, derlen, pem, cap, len) != 0) {
    free(pem);
    pem = NULL;
  }
  return pem;
}

static int write_pem(const char *dir, const char *file, atun_pem_type type,
                     const uint8_t *der, size_t len, mode_t mode, int replace,
                     char failed[ATUN_GW_PATH_MAX]) {
  int rv = atun_gw_path(failed, dir, file);
  if (rv != 0) return rv;
  size_t pemlen;
  char *pem = atun_gw_pem(type, der, len, &pemlen);
  if (pem == NULL) return ATUN_ERR_NOMEM;
  rv = atun_fs_write_atomic(failed, pem, pemlen, mode, replace ? 0 : ATUN_FS_NOREPLACE);
  /* The key material must not linger in freed heap memory. */
  memset(pem, 0, pemlen);
  free(pem);
  return rv;
}

int atun_gw_pki_write(const atun_gw_pki *pki, const char *dir, int replace,
                      char failed[ATUN_GW_PATH_MAX]) {
  /* Keys first: a CA certificate on disk without its key would look like a
   * finished init. */
  int rv = write_pem(dir, ATUN_GW_CA_KEY, ATUN_PEM_KEY, pki->ca_key, pki->ca_key_len,
                     ATUN_FS_MODE_SECRET, replace, failed);
  if (rv == 0)
    rv = write_pem(dir, ATUN_GW_SERVER_KEY, ATUN_PEM_KEY, pki->server_key,
                   pki->server_key_len, ATUN_FS_MODE_SECRET, replace, failed);
  if (rv == 0)
    rv = write_pem(dir, ATUN_GW_CA_CERT, ATUN_PEM_CERT, pki->ca_cert, pki->ca_cert_len,
                   ATUN_FS_MODE_PUBLIC, replace, failed);
  if (rv == 0)
    rv = write_pem(dir, ATUN_GW_SERVER_CERT, ATUN_PEM_CERT, pki->server_cert,
                   pki->server_cert_len, ATUN_FS_MODE_PUBLIC, replace, failed);
  return rv;
}

static int read_pem(const char *dir, const char *file, atun_pem_type type, uint8_t *der,
                    size_t cap, size_t *derlen, char failed[ATUN_GW_PATH_MAX]) {
  char pem[ATUN_CA_PEM_MAX];
  size_t len;
  int rv = atun_gw_path(failed, dir, file);
  if (rv == 0) rv = atun_fs_read(failed, pem, sizeof(pem), &len);
  if (rv == 0) rv = atun_pem_decode(type, pem, len, der, cap, derlen);
  memset(pem, 0, sizeof(pem));
  if (rv == ATUN_ERR_NOBUF || rv == ATUN_ERR_FRAME_TOO_LARGE || rv == ATUN_ERR_LIMIT)
    rv = ATUN_ERR_MALFORMED;
  return rv;
}

/* The server key must be the key of the server certificate, or TLS setup
 * fails later with a less helpful message. */
static int check_server_key(const atun_gw_pki *pki) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX], pin[ATUN_SHA256_LEN];
  size_t spkilen;
  int rv = atun_ca_key_spki(pki->server_key, pki->server_key_len, spki, sizeof(spki), &spkilen);
  if (rv == 0) rv = atun_ca_spki_pin(spki, spkilen, pin);
  if (rv != 0) return ATUN_ERR_MALFORMED;
  return memcmp(pin, pki->server_pin, sizeof(pin)) == 0 ? 0 : ATUN_ERR_MALFORMED;
}

int atun_gw_pki_load(atun_gw_pki *pki, const char *dir, char failed[ATUN_GW_PATH_MAX]) {
  memset(pki, 0, sizeof(*pki));
  int rv = read_pem(dir, ATUN_GW_CA_CERT, ATUN_PEM_CERT, pki->ca_cert, sizeof(pki->ca_cert),
                    &pki->ca_cert_len, failed);
  if (rv == 0)
    rv = read_pem(dir, ATUN_GW_CA_KEY, ATUN_PEM_KEY, pki->ca_key, sizeof(pki->ca_key),
                  &pki->ca_key_len, failed);
  if (rv == 0)
    rv = read_pem(dir, ATUN_GW_SERVER_CERT, ATUN_PEM_CERT, pki->server_cert,
                  sizeof(pki->server_cert), &pki->server_cert_len, failed);
  if (rv == 0)
    rv = read_pem(dir, ATUN_GW_SERVER_KEY, ATUN_PEM_KEY, pki->server_key,
                  sizeof(pki->server_key), &pki->server_key_len, failed);
  if (rv != 0) return rv;
  rv = pins_and_profiles(pki);
  if (rv == 0) rv = check_server_key(pki);
  if (rv != 0) {
    atun_gw_path(failed, dir, ATUN_GW_SERVER_KEY);
    return ATUN_ERR_MALFORMED;
  }
  return 0;
}

int atun_gw_pki_renew_server(atun_gw_pki *pki, const atun_config_gateway *cfg,
                             const char *dir, atun_tstamp wall, int *renewed) {
  *renewed = 0;
  const atun_cert_profile *p = &pki->server_profile;
  if (!atun_ca_should_renew(p->not_before, p->not_after, wall)) return 0;
  atun_ca_settings s;
  atun_gw_ca_settings(&s, cfg);
  const char *hosts[ATUN_CONFIG_SERVER_NAMES_MAX];
  for (size_t i = 0; i < cfg->server_name_count; ++i) hosts[i] = cfg->server_names[i];
  atun_ca_issuer ca = {pki->ca_cert, pki->ca_cert_len, pki->ca_key, pki->ca_key_len};
  uint8_t cert[ATUN_CA_DER_MAX];
  size_t certlen;
  atun_cert_profile profile;
  int rv = atun_ca_server_issue(&s, hosts, cfg->server_name_count, pki->server_key,
                                pki->server_key_len, &ca, wall, atun_ca_sysrand(), cert,
                                sizeof(cert), &certlen);
  if (rv == 0) rv = atun_ca_cert_read(cert, certlen, &profile);
  char path[ATUN_GW_PATH_MAX];
  if (rv == 0)
    rv = write_pem(dir, ATUN_GW_SERVER_CERT, ATUN_PEM_CERT, cert, certlen, ATUN_FS_MODE_PUBLIC,
                   1, path);
  if (rv != 0) return rv;
  memcpy(pki->server_cert, cert, certlen);
  pki->server_cert_len = certlen;
  pki->server_profile = profile;
  *renewed = 1;
  return 0;
}

int atun_gw_config_load(atun_config_gateway *cfg, const char *path, char *msg, size_t cap) {
  size_t len;
  char *text = malloc(ATUN_CONFIG_TEXT_MAX);
  if (text == NULL) {
    snprintf(msg, cap, "%s: out of memory", path);
    return ATUN_ERR_NOMEM;
  }
  int rv = atun_fs_read(path, text, ATUN_CONFIG_TEXT_MAX, &len);
  if (rv != 0) {
    snprintf(msg, cap, "%s: %s", path,
             rv == ATUN_ERR_LIMIT ? "larger than 1 MiB" : strerror(errno));
    free(text);
    return rv == ATUN_ERR_NOT_FOUND ? rv : ATUN_ERR_INVALID_ARGUMENT;
  }
  atun_config_error err;
  rv = atun_config_gateway_parse(cfg, text, len, NULL, &err);
  free(text);
  for (size_t i = 0; i < err.warning_count; ++i)
    atun_log(ATUN_LOG_WARN, "config", "config_warning", "file=%s warning=%s", path,
             err.warnings[i]);
  if (rv != 0) snprintf(msg, cap, "%s: %s", path, err.message);
  return rv;
}

int atun_gw_store_open(atun_store **pst, const atun_config_gateway *cfg) {
  char path[ATUN_GW_PATH_MAX];
  atun_store_settings s;
  atun_store_settings_default(&s);
  int rv = atun_gw_path(path, cfg->state_dir, ATUN_GW_STORE_FILE);
  return rv != 0 ? rv : atun_store_open(pst, path, &s);
}

static int state_fail(const char *what, int err) {
  fprintf(stderr, "atun-gateway: %s: %s\n", what, atun_strerror(err));
  return atun_gw_exit_for(err);
}

int atun_gw_state_open(const char *config_path, atun_config_gateway *cfg, atun_gw_pki *pki,
                       atun_store **pst) {
  char msg[ATUN_CONFIG_MSG_MAX + ATUN_GW_PATH_MAX];
  int rv = atun_gw_config_load(cfg, config_path, msg, sizeof(msg));
  if (rv != 0) {
    fprintf(stderr, "atun-gateway: %s\n", msg);
    return rv == ATUN_ERR_NOMEM ? ATUN_GW_EXIT_RUNTIME : ATUN_GW_EXIT_USAGE;
  }
  char failed[ATUN_GW_PATH_MAX] = "";
  if (pki != NULL && (rv = atun_gw_pki_load(pki, cfg->state_dir, failed)) != 0) {
    atun_config_gateway_free(cfg);
    if (rv != ATUN_ERR_NOT_FOUND) return state_fail(failed, rv);
    fprintf(stderr, "atun-gateway: %s is missing: run `atun-gateway init` first\n", failed);
    return ATUN_GW_EXIT_STATE;
  }
  if (pst != NULL && (rv = atun_gw_store_open(pst, cfg)) != 0) {
    atun_gw_path(failed, cfg->state_dir, ATUN_GW_STORE_FILE);
    atun_config_gateway_free(cfg);
    return state_fail(failed, rv);
  }
  return 0;
}
