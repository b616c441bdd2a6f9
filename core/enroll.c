#include "enroll.h"

#include <stdio.h>
#include <string.h>

#include "addr.h"

/* Room for the longest IPv6 text form, the embedded-IPv4 one included
 * ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" is 45 bytes). */
#define ADDR_TEXT_MAX 63

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char b64std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The decoded secret is only a validity check here; it must not linger. */
static void wipe(void *p, size_t len) {
  volatile uint8_t *v = p;
  while (len-- > 0) *v++ = 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* --- hosts and ports ------------------------------------------------------- */

/* Parses the IP literal |s| of |len| bytes, which must be of |family|. */
static int addr_literal(atun_addr *out, const char *s, size_t len, int family) {
  char buf[ADDR_TEXT_MAX + 1];
  if (len == 0 || len > ADDR_TEXT_MAX || memchr(s, '\0', len) != NULL)
    return ATUN_ERR_INVALID_ARGUMENT;
  memcpy(buf, s, len);
  buf[len] = '\0';
  if (atun_addr_parse(out, buf) != 0 || out->family != family)
    return ATUN_ERR_INVALID_ARGUMENT;
  return 0;
}

int atun_host_parse(atun_target *out, const char *s, size_t len) {
  memset(out, 0, sizeof(*out));
  if (s == NULL || len == 0) return ATUN_ERR_INVALID_ARGUMENT;
  if (memchr(s, ':', len) != NULL) {
    if (addr_literal(&out->addr, s, len, ATUN_AF_INET6) != 0)
      return ATUN_ERR_INVALID_ARGUMENT;
    out->kind = ATUN_TARGET_ADDR;
    return 0;
  }
  if (addr_literal(&out->addr, s, len, ATUN_AF_INET) == 0) {
    out->kind = ATUN_TARGET_ADDR;
    return 0;
  }
  memset(&out->addr, 0, sizeof(out->addr));
  if (atun_name_normalize(out->host, s, len) != 0) return ATUN_ERR_BAD_NAME;
  /* A numeric last label would make a resolver read the name as an address
   * ("10.1", "0x7f.1"), slipping past the name rules. */
  const char *dot = strrchr(out->host, '.');
  const char *last = dot != NULL ? dot + 1 : out->host;
  if (is_digit(last[0])) {
    memset(out, 0, sizeof(*out));
    return ATUN_ERR_BAD_NAME;
  }
  out->kind = ATUN_TARGET_HOST;
  return 0;
}

/* 1..65535, decimal, no sign, no leading zero. */
static int port_parse(uint16_t *port, const char *s, size_t len) {
  if (len == 0 || len > 5 || s[0] == '0') return ATUN_ERR_INVALID_ARGUMENT;
  uint32_t v = 0;
  for (size_t i = 0; i < len; ++i) {
    if (!is_digit(s[i])) return ATUN_ERR_INVALID_ARGUMENT;
    v = v * 10 + (uint32_t)(s[i] - '0');
  }
  if (v > 65535) return ATUN_ERR_INVALID_ARGUMENT;
  *port = (uint16_t)v;
  return 0;
}

/* Splits |s| into the host part and what follows it (":port" or nothing),
 * parsing the host.  A bracketed host must be an IPv6 literal. */
static int host_part(atun_target *host, const char *s, size_t len,
                     size_t *hostlen) {
  if (s[0] == '[') {
    const char *close = memchr(s, ']', len);
    if (close == NULL) return ATUN_ERR_INVALID_ARGUMENT;
    *hostlen = (size_t)(close - s) + 1;
    memset(host, 0, sizeof(*host));
    if (addr_literal(&host->addr, s + 1, *hostlen - 2, ATUN_AF_INET6) != 0)
      return ATUN_ERR_INVALID_ARGUMENT;
    host->kind = ATUN_TARGET_ADDR;
    return 0;
  }
  const char *colon = memchr(s, ':', len);
  *hostlen = colon != NULL ? (size_t)(colon - s) : len;
  /* A second colon means an IPv6 literal without its brackets. */
  if (colon != NULL && memchr(colon + 1, ':', len - *hostlen - 1) != NULL)
    return ATUN_ERR_INVALID_ARGUMENT;
  return atun_host_parse(host, s, *hostlen);
}

int atun_hostport_parse(atun_target *host, uint16_t *port, const char *s,
                        size_t len, int port_optional) {
  memset(host, 0, sizeof(*host));
  *port = 0;
  if (s == NULL || len == 0) return ATUN_ERR_INVALID_ARGUMENT;
  size_t hostlen;
  int rv = host_part(host, s, len, &hostlen);
  if (rv == 0 && hostlen == len && !port_optional) rv = ATUN_ERR_INVALID_ARGUMENT;
  if (rv == 0 && hostlen < len) {
    if (s[hostlen] != ':') rv = ATUN_ERR_INVALID_ARGUMENT;
    else rv = port_parse(port, s + hostlen + 1, len - hostlen - 1);
  }
  if (rv != 0) {
    memset(host, 0, sizeof(*host));
    *port = 0;
  }
  return rv;
}

void atun_hostport_format(char buf[ATUN_HOSTPORT_STRLEN],
                          const atun_target *host, uint16_t port) {
  char addr[ATUN_ADDR_STRLEN];
  const char *open = "", *close = "", *text = host->host;
  if (host->kind == ATUN_TARGET_ADDR) {
    atun_addr_format(addr, &host->addr);
    text = addr;
    if (host->addr.family == ATUN_AF_INET6) {
      open = "[";
      close = "]";
    }
  }
  if (port == 0)
    snprintf(buf, ATUN_HOSTPORT_STRLEN, "%s%s%s", open, text, close);
  else
    snprintf(buf, ATUN_HOSTPORT_STRLEN, "%s%s%s:%u", open, text, close,
             (unsigned)port);
}

/* --- URLs ------------------------------------------------------------------ */

/* RFC 3986 pchar plus '/', percent escapes checked by the caller. */
static int path_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
         strchr("-._~!$&'()*+,;=:@/", c) != NULL;
}

static const char *path_check(const char *p, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (p[i] == '%') {
      if (len - i < 3 || hex_value(p[i + 1]) < 0 || hex_value(p[i + 2]) < 0)
        return "the API URL has a bad percent escape";
      i += 2;
    } else if (p[i] == '\0' || !path_char_ok(p[i])) {
      return "the API URL path has a character that needs escaping";
    }
  }
  return NULL;
}

static const char *url_check(atun_enroll_url *u, const char *url, size_t len) {
  static const char scheme[] = "https://";
  const size_t slen = sizeof(scheme) - 1;
  if (len == 0) return "the API URL is empty";
  if (len > ATUN_ENROLL_URL_MAX) return "the API URL is longer than 512 bytes";
  if (len >= 7 && memcmp(url, "http://", 7) == 0)
    return "the API URL must use https, not http";
  if (len < slen || memcmp(url, scheme, slen) != 0)
    return "the API URL must start with https://";
  if (memchr(url, '?', len) != NULL || memchr(url, '#', len) != NULL)
    return "the API URL may not have a query or fragment";
  const char *auth = url + slen;
  const char *end = url + len;
  const char *slash = memchr(auth, '/', (size_t)(end - auth));
  const char *auth_end = slash != NULL ? slash : end;
  if (memchr(auth, '@', (size_t)(auth_end - auth)) != NULL)
    return "the API URL may not hold a user name";
  if (auth == auth_end ||
      atun_hostport_parse(&u->host, &u->port, auth, (size_t)(auth_end - auth), 1) != 0)
    return "the API URL has a bad host or port";
  if (u->port == 0) u->port = 443;
  const char *why = path_check(auth_end, (size_t)(end - auth_end));
  if (why != NULL) return why;
  size_t plen = (size_t)(end - auth_end);
  while (plen > 0 && auth_end[plen - 1] == '/') --plen;
  memcpy(u->path, auth_end, plen);
  u->path[plen] = '\0';
  return NULL;
}

int atun_enroll_url_parse(atun_enroll_url *out, const char *url, size_t len,
                          const char **reason) {
  atun_enroll_url scratch;
  atun_enroll_url *u = out != NULL ? out : &scratch;
  memset(u, 0, sizeof(*u));
  const char *why = url == NULL ? "no API URL" : url_check(u, url, len);
  if (reason != NULL) *reason = why != NULL ? why : "";
  if (why == NULL) return 0;
  memset(u, 0, sizeof(*u));
  return ATUN_ERR_INVALID_ARGUMENT;
}

/* --- SPKI pins --------------------------------------------------------------- */

static int b64_value(const char *alphabet, char c) {
  if (c == '\0') return -1;
  const char *p = strchr(alphabet, c);
  return p != NULL ? (int)(p - alphabet) : -1;
}

/* Decodes exactly ATUN_SPKI_PIN_B64_LEN characters of |alphabet|; the two
 * leftover bits must be zero so that each pin has one spelling. */
static int b64_decode_pin(uint8_t out[ATUN_SPKI_PIN_BYTES], const char *s,
                          const char *alphabet) {
  uint32_t acc = 0;
  unsigned bits = 0;
  size_t n = 0;
  for (size_t i = 0; i < ATUN_SPKI_PIN_B64_LEN; ++i) {
    int v = b64_value(alphabet, s[i]);
    if (v < 0) return ATUN_ERR_MALFORMED;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (uint8_t)(acc >> bits);
    }
  }
  ATUN_ASSERT(n == ATUN_SPKI_PIN_BYTES && bits == 2);
  return (acc & 3u) == 0 ? 0 : ATUN_ERR_MALFORMED;
}

static void b64url_encode_pin(char out[ATUN_SPKI_PIN_B64_LEN],
                              const uint8_t pin[ATUN_SPKI_PIN_BYTES]) {
  uint32_t acc = 0;
  unsigned bits = 0;
  size_t n = 0;
  for (size_t i = 0; i < ATUN_SPKI_PIN_BYTES; ++i) {
    acc = (acc << 8) | pin[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out[n++] = b64url_alphabet[(acc >> bits) & 63u];
    }
  }
  out[n++] = b64url_alphabet[(acc << (6 - bits)) & 63u];
  ATUN_ASSERT(n == ATUN_SPKI_PIN_B64_LEN);
}

static int hex_decode_pin(uint8_t out[ATUN_SPKI_PIN_BYTES], const char *s) {
  for (size_t i = 0; i < ATUN_SPKI_PIN_BYTES; ++i) {
    int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return ATUN_ERR_MALFORMED;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

int atun_spki_pin_parse(uint8_t out[ATUN_SPKI_PIN_BYTES], const char *s,
                        size_t len) {
  uint8_t pin[ATUN_SPKI_PIN_BYTES];
  int rv = ATUN_ERR_MALFORMED;
  if (s == NULL) return rv;
  if (len == ATUN_SPKI_PIN_HEX_LEN)
    rv = hex_decode_pin(pin, s);
  else if (len == ATUN_SPKI_PIN_B64_LEN)
    rv = b64_decode_pin(pin, s, b64url_alphabet);
  else if (len == ATUN_SPKI_PIN_B64_LEN + 1 && s[len - 1] == '=')
    rv = b64_decode_pin(pin, s, b64std_alphabet);
  if (rv == 0) memcpy(out, pin, sizeof(pin));
  return rv;
}

void atun_spki_pin_format_hex(char out[ATUN_SPKI_PIN_HEX_LEN + 1],
                              const uint8_t pin[ATUN_SPKI_PIN_BYTES]) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < ATUN_SPKI_PIN_BYTES; ++i) {
    out[2 * i] = digits[pin[i] >> 4];
    out[2 * i + 1] = digits[pin[i] & 15];
  }
  out[ATUN_SPKI_PIN_HEX_LEN] = '\0';
}

/* --- the enrollment string ------------------------------------------------------- */

static int secret_valid(const char *secret, size_t len) {
  uint8_t bytes[ATUN_TOKEN_SECRET_BYTES];
  int ok = atun_token_secret_decode(bytes, secret, len) == 0;
  wipe(bytes, sizeof(bytes));
  return ok;
}

ssize_t atun_enroll_encode(char *buf, size_t buflen, const char *url,
                           const char *secret,
                           const uint8_t ca_spki_sha256[ATUN_SPKI_PIN_BYTES]) {
  if (buf != NULL && buflen > 0) buf[0] = '\0';
  if (url == NULL || secret == NULL || ca_spki_sha256 == NULL)
    return ATUN_ERR_INVALID_ARGUMENT;
  size_t urllen = strnlen(url, ATUN_ENROLL_URL_MAX + 1);
  if (atun_enroll_url_parse(NULL, url, urllen, NULL) != 0 ||
      !secret_valid(secret, strnlen(secret, ATUN_TOKEN_SECRET_STRLEN)))
    return ATUN_ERR_INVALID_ARGUMENT;
  size_t total = ATUN_ENROLL_PREFIX_LEN + ATUN_TOKEN_SECRET_LEN + 1 +
                 ATUN_SPKI_PIN_B64_LEN + 1 + urllen;
  if (buf == NULL || buflen <= total) return ATUN_ERR_NOBUF;
  char *p = buf;
  memcpy(p, ATUN_ENROLL_PREFIX, ATUN_ENROLL_PREFIX_LEN);
  p += ATUN_ENROLL_PREFIX_LEN;
  memcpy(p, secret, ATUN_TOKEN_SECRET_LEN);
  p += ATUN_TOKEN_SECRET_LEN;
  *p++ = '.';
  b64url_encode_pin(p, ca_spki_sha256);
  p += ATUN_SPKI_PIN_B64_LEN;
  *p++ = '.';
  memcpy(p, url, urllen);
  p[urllen] = '\0';
  return (ssize_t)total;
}

static int is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Checks "atun<digits>." at the start of |s|.  Returns 0, ATUN_ERR_VERSION
 * or ATUN_ERR_MALFORMED. */
static int version_check(const char *s, size_t len, const char **why) {
  size_t i = 4;
  if (len < 4 || memcmp(s, "atun", 4) != 0) {
    *why = "not an enrollment string (it starts with atun1.)";
    return ATUN_ERR_MALFORMED;
  }
  while (i < len && i < 12 && is_digit(s[i])) ++i;
  if (i == 4 || i == len || s[i] != '.') {
    *why = "not an enrollment string (it starts with atun1.)";
    return ATUN_ERR_MALFORMED;
  }
  if (i != 5 || s[4] != '0' + ATUN_ENROLL_VERSION) {
    *why = "enrollment string of an unsupported version (this build reads atun1.)";
    return ATUN_ERR_VERSION;
  }
  return 0;
}

/* Takes the dot-terminated field at |*p| (before |end|). */
static int next_field(const char **p, const char *end, const char **field,
                      size_t *flen) {
  const char *dot = memchr(*p, '.', (size_t)(end - *p));
  if (dot == NULL) return 0;
  *field = *p;
  *flen = (size_t)(dot - *p);
  *p = dot + 1;
  return 1;
}

static int fields_decode(atun_enroll_info *out, const char *s, const char *end,
                         const char **why) {
  const char *secret, *pin;
  size_t secretlen, pinlen;
  if (!next_field(&s, end, &secret, &secretlen) ||
      !next_field(&s, end, &pin, &pinlen)) {
    *why = "incomplete enrollment string (atun1.<secret>.<pin>.<url>)";
    return ATUN_ERR_MALFORMED;
  }
  if (secretlen != ATUN_TOKEN_SECRET_LEN || !secret_valid(secret, secretlen)) {
    *why = "the token secret is not 43 characters of base64url";
    return ATUN_ERR_MALFORMED;
  }
  if (pinlen != ATUN_SPKI_PIN_B64_LEN ||
      b64_decode_pin(out->ca_spki_sha256, pin, b64url_alphabet) != 0) {
    *why = "the CA pin is not 43 characters of base64url (32 bytes)";
    return ATUN_ERR_MALFORMED;
  }
  size_t urllen = (size_t)(end - s);
  if (atun_enroll_url_parse(&out->api, s, urllen, why) != 0)
    return ATUN_ERR_MALFORMED;
  memcpy(out->secret, secret, secretlen);
  out->secret[secretlen] = '\0';
  memcpy(out->url, s, urllen);
  out->url[urllen] = '\0';
  return 0;
}

static int decode(atun_enroll_info *out, const char *s, size_t len,
                  const char **why) {
  if (s == NULL) {
    *why = "no enrollment string";
    return ATUN_ERR_MALFORMED;
  }
  if (len > ATUN_ENROLL_INPUT_MAX) {
    *why = "input longer than 4096 bytes";
    return ATUN_ERR_LIMIT;
  }
  while (len > 0 && is_blank(s[0])) ++s, --len;
  while (len > 0 && is_blank(s[len - 1])) --len;
  if (len > ATUN_ENROLL_STRING_MAX) {
    *why = "enrollment string too long";
    return ATUN_ERR_LIMIT;
  }
  int rv = version_check(s, len, why);
  if (rv != 0) return rv;
  return fields_decode(out, s + ATUN_ENROLL_PREFIX_LEN, s + len, why);
}

int atun_enroll_decode(atun_enroll_info *out, const char *s, size_t len,
                       const char **reason) {
  const char *why = "";
  memset(out, 0, sizeof(*out));
  int rv = decode(out, s, len, &why);
  if (rv != 0) wipe(out, sizeof(*out));
  if (reason != NULL) *reason = why;
  return rv;
}
