#include "auth.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>

#include <string.h>

#include "token.h"

atun_gw_auth_result atun_gw_auth_check(const atun_config_admin_token *tokens, size_t n,
                                       const char *bearer, size_t len, unsigned scope,
                                       const char **name) {
  uint8_t hash[32];
  *name = NULL;
  if (bearer == NULL || len == 0 || len > ATUN_GW_BEARER_MAX) return ATUN_GW_AUTH_MISSING;
  if (wc_Sha256Hash((const uint8_t *)bearer, (word32)len, hash) != 0)
    return ATUN_GW_AUTH_INVALID;
  const atun_config_admin_token *match = NULL;
  for (size_t i = 0; i < n; ++i) {
    /* No early exit: every configured hash is compared. */
    int eq = atun_ct_memeq(hash, tokens[i].sha256, sizeof(hash));
    if (eq && match == NULL) match = &tokens[i];
  }
  if (match == NULL) return ATUN_GW_AUTH_INVALID;
  *name = match->name;
  return (match->scopes & scope) == scope ? ATUN_GW_AUTH_OK : ATUN_GW_AUTH_SCOPE;
}

size_t atun_gw_base64url(char *out, const uint8_t *in, size_t len) {
  static const char abc[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16;
    size_t rest = len - i;
    if (rest > 1) v |= (uint32_t)in[i + 1] << 8;
    if (rest > 2) v |= in[i + 2];
    out[o++] = abc[(v >> 18) & 63];
    out[o++] = abc[(v >> 12) & 63];
    if (rest > 1) out[o++] = abc[(v >> 6) & 63];
    if (rest > 2) out[o++] = abc[v & 63];
  }
  out[o] = '\0';
  return o;
}

int atun_gw_admin_secret_new(char out[ATUN_GW_ADMIN_SECRET_STRLEN], uint8_t sha256[32],
                             const atun_rand *rand) {
  uint8_t raw[32];
  if (rand->fill(raw, sizeof(raw), rand->user_data) != 0) return ATUN_ERR_CALLBACK_FAILURE;
  memcpy(out, ATUN_GW_ADMIN_PREFIX, 8);
  atun_gw_base64url(out + 8, raw, sizeof(raw));
  memset(raw, 0, sizeof(raw));
  if (wc_Sha256Hash((const uint8_t *)out, ATUN_GW_ADMIN_SECRET_LEN, sha256) != 0)
    return ATUN_ERR_INTERNAL;
  return 0;
}
