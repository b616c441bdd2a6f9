/*
 * The enrollment string (SPEC §5): the one string an operator pastes into
 * `atun-agent enroll`.  It carries the gateway API's URL, the one-time token
 * secret and the SHA-256 pin of the CA's SubjectPublicKeyInfo, which the
 * agent uses to trust the API before it holds any certificate.
 *
 *   atun1.<secret>.<pin>.<url>
 *
 * "atun" and the format version, then the token secret as issued (43
 * characters of unpadded base64url, see token.h), the pin as 43 characters of
 * unpadded base64url, and the API URL verbatim.  Secret and pin use no '.',
 * so the first three dots split the string unambiguously and the URL (which
 * has dots) stays readable at the end.  Every field has exactly one
 * spelling, so decoding and encoding again gives back the same string.
 * docs/config.md describes the format for operators.
 *
 * The same module parses the pieces the format is built from, which the
 * config model reuses: https URLs, host[:port] and SPKI pins.
 */
#ifndef ATUN_ENROLL_H
#define ATUN_ENROLL_H

#include "atun.h"
#include "codec.h"
#include "token.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATUN_ENROLL_PREFIX "atun1."
#define ATUN_ENROLL_PREFIX_LEN 6
#define ATUN_ENROLL_VERSION 1

/* An SPKI SHA-256 pin, and its text form in the string (unpadded
 * base64url: ceil(32 * 8 / 6) = 43). */
#define ATUN_SPKI_PIN_BYTES 32
#define ATUN_SPKI_PIN_B64_LEN 43
#define ATUN_SPKI_PIN_HEX_LEN 64

/* Longest API URL accepted, in bytes. */
#define ATUN_ENROLL_URL_MAX 512

/* Longest enrollment string: prefix, secret, pin, URL and three dots. */
#define ATUN_ENROLL_STRING_MAX                                   \
  (ATUN_ENROLL_PREFIX_LEN + ATUN_TOKEN_SECRET_LEN + 1 +          \
   ATUN_SPKI_PIN_B64_LEN + 1 + ATUN_ENROLL_URL_MAX)
#define ATUN_ENROLL_STRLEN (ATUN_ENROLL_STRING_MAX + 1)

/* Pasted text may carry blanks and line ends around the string; they are
 * ignored, but no more than this much input is looked at. */
#define ATUN_ENROLL_INPUT_MAX 4096

/* --- hosts and ports ------------------------------------------------------- */

/* Parses a host of |len| bytes into |out|: an IPv4 literal, an IPv6 literal
 * (without brackets) or a DNS name.  A name is lowercased, loses one trailing
 * dot and must pass atun_name_normalize(); its last label must not start
 * with a digit, so nothing a resolver reads as a number ("10.1") passes as a
 * name.  Returns 0, ATUN_ERR_BAD_NAME or ATUN_ERR_INVALID_ARGUMENT (empty or
 * holding a ':' without being an IPv6 literal). */
int atun_host_parse(atun_target *out, const char *s, size_t len);

/* Parses "host:port" of |len| bytes, where host is as for atun_host_parse()
 * and an IPv6 literal must be bracketed ("[::1]:4433").  The port is
 * 1..65535 in decimal without leading zeros; when |port_optional| is nonzero
 * ":port" may be left out and |*port| is then 0.  Returns 0,
 * ATUN_ERR_BAD_NAME (the host) or ATUN_ERR_INVALID_ARGUMENT (anything
 * else). */
int atun_hostport_parse(atun_target *host, uint16_t *port, const char *s,
                        size_t len, int port_optional);

/* Longest text atun_hostport_format() writes, NUL included. */
#define ATUN_HOSTPORT_STRLEN (ATUN_NAME_MAX + 10)

/* Writes "host:port" ("[v6]:port"; just the host when |port| is 0),
 * NUL-terminated, into |buf| of ATUN_HOSTPORT_STRLEN bytes. */
void atun_hostport_format(char buf[ATUN_HOSTPORT_STRLEN],
                          const atun_target *host, uint16_t port);

/* --- URLs ------------------------------------------------------------------ */

/* The parts of an API URL https://host[:port][/path]. */
typedef struct atun_enroll_url {
  atun_target host;
  uint16_t port; /* 443 when the URL names none */
  /* The path without trailing '/' ("" for none): a request path is
   * |path| followed by "/jet/...". */
  char path[ATUN_ENROLL_URL_MAX + 1];
} atun_enroll_url;

/* Checks the URL |url| of |len| bytes and, if |out| is not NULL, fills it.
 * Accepted: "https://" (lowercase), a host as for atun_hostport_parse() with
 * an optional port, then nothing or a path of RFC 3986 path characters
 * (percent escapes included).  No user info, query or fragment, at most
 * ATUN_ENROLL_URL_MAX bytes.  |*reason| (if |reason| is not NULL) gets a
 * static text saying what is wrong.  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT. */
int atun_enroll_url_parse(atun_enroll_url *out, const char *url, size_t len,
                          const char **reason);

/* --- SPKI pins --------------------------------------------------------------- */

/* Parses a pin of |len| bytes written as 64 hex digits (either case), 43
 * characters of unpadded base64url or 44 characters of padded standard
 * base64 (unused low bits zero in both).  Returns 0 or ATUN_ERR_MALFORMED. */
int atun_spki_pin_parse(uint8_t out[ATUN_SPKI_PIN_BYTES], const char *s,
                        size_t len);

/* Writes |pin| as 64 lowercase hex digits and a NUL. */
void atun_spki_pin_format_hex(char out[ATUN_SPKI_PIN_HEX_LEN + 1],
                              const uint8_t pin[ATUN_SPKI_PIN_BYTES]);

/* --- the enrollment string ------------------------------------------------------- */

typedef struct atun_enroll_info {
  char url[ATUN_ENROLL_URL_MAX + 1];        /* verbatim, NUL-terminated */
  atun_enroll_url api;                      /* |url| taken apart */
  char secret[ATUN_TOKEN_SECRET_STRLEN];    /* the token secret text */
  uint8_t ca_spki_sha256[ATUN_SPKI_PIN_BYTES];
} atun_enroll_info;

/*
 * Writes the enrollment string for |url| (NUL-terminated), |secret| (the
 * token secret text, NUL-terminated) and |ca_spki_sha256| into |buf| with a
 * NUL (ATUN_ENROLL_STRLEN bytes always suffice).  Returns its length, or
 * ATUN_ERR_INVALID_ARGUMENT (|url| fails atun_enroll_url_parse(), |secret|
 * is not a well-formed secret) or ATUN_ERR_NOBUF (nothing useful written).
 */
ssize_t atun_enroll_encode(char *buf, size_t buflen, const char *url,
                           const char *secret,
                           const uint8_t ca_spki_sha256[ATUN_SPKI_PIN_BYTES]);

/*
 * Decodes the pasted text |s| of |len| bytes (blanks, tabs and line ends
 * around the string are ignored) into |out|.  On failure |out| is zeroed and
 * |*reason| (if |reason| is not NULL) names the problem in a static text.
 * Returns 0 or
 *   ATUN_ERR_LIMIT      more than ATUN_ENROLL_INPUT_MAX bytes, or a string
 *                       longer than ATUN_ENROLL_STRING_MAX,
 *   ATUN_ERR_VERSION    "atun<n>." with n other than 1,
 *   ATUN_ERR_MALFORMED  anything else: no "atun<n>." prefix, missing parts,
 *                       a bad secret, pin or URL.
 */
int atun_enroll_decode(atun_enroll_info *out, const char *s, size_t len,
                       const char **reason);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_ENROLL_H */
