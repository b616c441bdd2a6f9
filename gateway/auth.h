/*
 * Admin bearer tokens of the management API (SPEC §6).
 *
 * The config holds, per token, a name, the SHA-256 of the secret text as it
 * is sent after "Bearer " and its scopes (read, write).  A presented token
 * is hashed and compared with every configured hash in constant time
 * (atun_ct_memeq), without stopping at a match, so the time taken does not
 * say which token (or how much of one) matched.
 */
#ifndef ATUN_GW_AUTH_H
#define ATUN_GW_AUTH_H

#include "config.h"

/* Admin secrets made by `init`: 32 random bytes as 43 characters of
 * unpadded base64url, prefixed so that a leaked one is recognisable. */
#define ATUN_GW_ADMIN_PREFIX "atunadm_"
#define ATUN_GW_ADMIN_SECRET_LEN (8 + 43)
#define ATUN_GW_ADMIN_SECRET_STRLEN (ATUN_GW_ADMIN_SECRET_LEN + 1)

/* A bearer token longer than this is refused without hashing. */
#define ATUN_GW_BEARER_MAX 1024

typedef enum atun_gw_auth_result {
  ATUN_GW_AUTH_OK = 0,
  ATUN_GW_AUTH_MISSING = 1, /* no or unreadable Authorization header: 401 */
  ATUN_GW_AUTH_INVALID = 2, /* no configured token has this hash: 401 */
  ATUN_GW_AUTH_SCOPE = 3    /* known token without |scope|: 403 */
} atun_gw_auth_result;

/* Checks |bearer| (|len| bytes; NULL = none was sent) against the |n|
 * |tokens| for |scope| (ATUN_CONFIG_SCOPE_*).  On OK and SCOPE, |*name|
 * points at the matching token's name. */
atun_gw_auth_result atun_gw_auth_check(const atun_config_admin_token *tokens, size_t n,
                                       const char *bearer, size_t len, unsigned scope,
                                       const char **name);

/* Makes a new admin secret (NUL-terminated) and its hash.  Returns 0,
 * ATUN_ERR_CALLBACK_FAILURE (|rand| failed) or ATUN_ERR_INTERNAL. */
int atun_gw_admin_secret_new(char out[ATUN_GW_ADMIN_SECRET_STRLEN], uint8_t sha256[32],
                             const atun_rand *rand);

/* Unpadded base64url of |len| bytes into |out| (4 * ceil(len / 3) + 1 bytes
 * suffice), NUL-terminated; returns the text length. */
size_t atun_gw_base64url(char *out, const uint8_t *in, size_t len);

#endif /* ATUN_GW_AUTH_H */
