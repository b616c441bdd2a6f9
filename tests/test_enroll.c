/*
 * The enrollment string, and the host, URL and pin parsers it is built from.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "enroll.h"
#include "support.h"

/* A canonical secret (43 chars, last one a multiple of 4 in the alphabet)
 * and a pin whose base64url is below. */
#define SECRET "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopo"
static const uint8_t PIN[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
#define PIN_B64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
#define PIN_B64STD "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define PIN_HEX "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define URL "https://gw.example.com:8443"
#define GOOD "atun1." SECRET "." PIN_B64 "." URL

static int decode_str(atun_enroll_info *info, const char *s, const char **why) {
  return atun_enroll_decode(info, s, strlen(s), why);
}

static void assert_zeroed(const atun_enroll_info *info) {
  static const atun_enroll_info zero;
  cr_assert(memcmp(info, &zero, sizeof(zero)) == 0);
}

/* --- the string ------------------------------------------------------------ */

Test(enroll, encode_gives_the_documented_layout) {
  char buf[ATUN_ENROLL_STRLEN];
  ssize_t n = atun_enroll_encode(buf, sizeof(buf), URL, SECRET, PIN);
  cr_assert_eq(n, (ssize_t)strlen(GOOD));
  cr_assert_str_eq(buf, GOOD);
}

Test(enroll, decode_round_trip) {
  atun_enroll_info info;
  const char *why = NULL;
  cr_assert_eq(decode_str(&info, GOOD, &why), 0);
  cr_assert_str_eq(why, "");
  cr_assert_str_eq(info.url, URL);
  cr_assert_str_eq(info.secret, SECRET);
  cr_assert(memcmp(info.ca_spki_sha256, PIN, 32) == 0);
  cr_assert_eq(info.api.host.kind, ATUN_TARGET_HOST);
  cr_assert_str_eq(info.api.host.host, "gw.example.com");
  cr_assert_eq(info.api.port, 8443);
  cr_assert_str_eq(info.api.path, "");
  char again[ATUN_ENROLL_STRLEN];
  cr_assert_gt(atun_enroll_encode(again, sizeof(again), info.url, info.secret,
                                  info.ca_spki_sha256), 0);
  cr_assert_str_eq(again, GOOD);
}

Test(enroll, decode_ignores_blanks_around) {
  atun_enroll_info info;
  cr_assert_eq(decode_str(&info, " \t\r\n" GOOD "\r\n", NULL), 0);
  cr_assert_str_eq(info.url, URL);
}

Test(enroll, round_trip_over_random_values) {
  static const char *const urls[] = {
      "https://gw.example.com", "https://10.0.0.1:1", "https://[2001:db8::1]:65535/a/b",
      "https://gw/x%20y/", "https://a-b.c:443/~u/p;q=1"};
  static const char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  atun_testrng rng;
  atun_testrng_seed(&rng, 7);
  for (int round = 0; round < 500; ++round) {
    char secret[ATUN_TOKEN_SECRET_STRLEN];
    uint8_t pin[32];
    for (int i = 0; i < ATUN_TOKEN_SECRET_LEN; ++i)
      secret[i] = alphabet[atun_testrng_below(&rng, 64)];
    secret[ATUN_TOKEN_SECRET_LEN - 1] = alphabet[4 * atun_testrng_below(&rng, 16)];
    secret[ATUN_TOKEN_SECRET_LEN] = '\0';
    for (int i = 0; i < 32; ++i) pin[i] = (uint8_t)atun_testrng_next(&rng);
    const char *url = urls[round % 5];
    char s[ATUN_ENROLL_STRLEN], again[ATUN_ENROLL_STRLEN];
    cr_assert_gt(atun_enroll_encode(s, sizeof(s), url, secret, pin), 0);
    atun_enroll_info info;
    cr_assert_eq(decode_str(&info, s, NULL), 0, "%s", s);
    cr_assert_str_eq(info.secret, secret);
    cr_assert(memcmp(info.ca_spki_sha256, pin, 32) == 0);
    cr_assert_str_eq(info.url, url);
    cr_assert_gt(atun_enroll_encode(again, sizeof(again), info.url, info.secret,
                                    info.ca_spki_sha256), 0);
    cr_assert_str_eq(again, s);
  }
}

typedef struct bad_case {
  const char *text;
  int rv;
  const char *why; /* substring of the reason */
} bad_case;

Test(enroll, malformed_variants_are_refused_with_a_reason) {
  static const bad_case cases[] = {
      {"", ATUN_ERR_MALFORMED, "not an enrollment string"},
      {"   ", ATUN_ERR_MALFORMED, "not an enrollment string"},
      {"atun", ATUN_ERR_MALFORMED, "not an enrollment string"},
      {"atun1", ATUN_ERR_MALFORMED, "not an enrollment string"},
      {"btun1." SECRET "." PIN_B64 "." URL, ATUN_ERR_MALFORMED, "not an enrollment"},
      {"ATUN1." SECRET "." PIN_B64 "." URL, ATUN_ERR_MALFORMED, "not an enrollment"},
      {"atunx." SECRET "." PIN_B64 "." URL, ATUN_ERR_MALFORMED, "not an enrollment"},
      {"atun2." SECRET "." PIN_B64 "." URL, ATUN_ERR_VERSION, "unsupported version"},
      {"atun10." SECRET "." PIN_B64 "." URL, ATUN_ERR_VERSION, "unsupported version"},
      {"atun01." SECRET "." PIN_B64 "." URL, ATUN_ERR_VERSION, "unsupported version"},
      {"atun0." SECRET "." PIN_B64 "." URL, ATUN_ERR_VERSION, "unsupported version"},
      {"atun99999999999." SECRET, ATUN_ERR_MALFORMED, "not an enrollment"},
      {"atun1." SECRET, ATUN_ERR_MALFORMED, "incomplete"},
      {"atun1." SECRET "." PIN_B64, ATUN_ERR_MALFORMED, "incomplete"},
      {"atun1." SECRET "." PIN_B64 ".", ATUN_ERR_MALFORMED, "empty"},
      {"atun1..." URL, ATUN_ERR_MALFORMED, "secret"},
      /* secret: short, long, outside the alphabet, non-canonical last char */
      {"atun1.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop." PIN_B64 "." URL,
       ATUN_ERR_MALFORMED, "secret"},
      {"atun1.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqA." PIN_B64 "." URL,
       ATUN_ERR_MALFORMED, "secret"},
      {"atun1.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop+." PIN_B64 "." URL,
       ATUN_ERR_MALFORMED, "secret"},
      {"atun1.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopr." PIN_B64 "." URL,
       ATUN_ERR_MALFORMED, "secret"},
      /* pin: short, long (33 bytes), padded, standard alphabet, low bits */
      {"atun1." SECRET ".AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh." URL,
       ATUN_ERR_MALFORMED, "pin"},
      {"atun1." SECRET ".AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ." URL,
       ATUN_ERR_MALFORMED, "pin"},
      {"atun1." SECRET "." PIN_B64STD "." URL, ATUN_ERR_MALFORMED, "pin"},
      {"atun1." SECRET ".AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+." URL,
       ATUN_ERR_MALFORMED, "pin"},
      {"atun1." SECRET ".AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9." URL,
       ATUN_ERR_MALFORMED, "pin"},
      /* URL */
      {"atun1." SECRET "." PIN_B64 ".http://gw.example.com", ATUN_ERR_MALFORMED,
       "must use https"},
      {"atun1." SECRET "." PIN_B64 ".ftp://gw", ATUN_ERR_MALFORMED, "https://"},
      {"atun1." SECRET "." PIN_B64 ".HTTPS://gw", ATUN_ERR_MALFORMED, "https://"},
      {"atun1." SECRET "." PIN_B64 ".https://", ATUN_ERR_MALFORMED, "host"},
      {"atun1." SECRET "." PIN_B64 ".https://u@gw", ATUN_ERR_MALFORMED, "user"},
      {"atun1." SECRET "." PIN_B64 ".https://gw/?a", ATUN_ERR_MALFORMED, "query"},
      {"atun1." SECRET "." PIN_B64 ".https://gw/#a", ATUN_ERR_MALFORMED, "fragment"},
      {"atun1." SECRET "." PIN_B64 ".https://gw:0", ATUN_ERR_MALFORMED, "port"},
      {"atun1." SECRET "." PIN_B64 ".https://gw:65536", ATUN_ERR_MALFORMED, "port"},
      {"atun1." SECRET "." PIN_B64 ".https://gw:0443", ATUN_ERR_MALFORMED, "port"},
      {"atun1." SECRET "." PIN_B64 ".https://gw:", ATUN_ERR_MALFORMED, "port"},
      {"atun1." SECRET "." PIN_B64 ".https://::1:443", ATUN_ERR_MALFORMED, "host"},
      {"atun1." SECRET "." PIN_B64 ".https://[1.2.3.4]:443", ATUN_ERR_MALFORMED, "host"},
      {"atun1." SECRET "." PIN_B64 ".https://-gw.example", ATUN_ERR_MALFORMED, "host"},
      {"atun1." SECRET "." PIN_B64 ".https://10.1", ATUN_ERR_MALFORMED, "host"},
      {"atun1." SECRET "." PIN_B64 ".https://gw/a%2", ATUN_ERR_MALFORMED, "percent"},
      {"atun1." SECRET "." PIN_B64 ".https://gw/a%zz", ATUN_ERR_MALFORMED, "percent"},
      {"atun1." SECRET "." PIN_B64 ".https://gw/a b", ATUN_ERR_MALFORMED, "escaping"},
      {"atun1." SECRET "." PIN_B64 ".https://gw/a\"b", ATUN_ERR_MALFORMED, "escaping"},
      {"atun1." SECRET "." PIN_B64 ".https://gw/a\nb", ATUN_ERR_MALFORMED, "escaping"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    atun_enroll_info info;
    const char *why = NULL;
    int rv = decode_str(&info, cases[i].text, &why);
    cr_assert_eq(rv, cases[i].rv, "case %zu (%s): %d", i, cases[i].text, rv);
    cr_assert_not_null(why);
    cr_assert(strstr(why, cases[i].why) != NULL, "case %zu: reason \"%s\"", i, why);
    assert_zeroed(&info);
  }
}

Test(enroll, nul_inside_is_refused) {
  char s[] = GOOD;
  s[sizeof(s) - 5] = '\0';
  atun_enroll_info info;
  cr_assert_eq(atun_enroll_decode(&info, s, sizeof(s) - 1, NULL), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_enroll_decode(&info, NULL, 3, NULL), ATUN_ERR_MALFORMED);
}

/* "https://" + host + "/" + path filler up to |len| bytes. */
static void make_url(char *out, size_t len) {
  strcpy(out, "https://gw.example.com/");
  size_t n = strlen(out);
  memset(out + n, 'p', len - n);
  out[len] = '\0';
}

Test(enroll, url_length_bound) {
  char url[ATUN_ENROLL_URL_MAX + 2];
  char s[ATUN_ENROLL_STRLEN + 16];
  atun_enroll_info info;
  const char *why;

  make_url(url, ATUN_ENROLL_URL_MAX);
  ssize_t n = atun_enroll_encode(s, ATUN_ENROLL_STRLEN, url, SECRET, PIN);
  cr_assert_eq(n, ATUN_ENROLL_STRING_MAX);
  cr_assert_eq(decode_str(&info, s, NULL), 0);
  cr_assert_str_eq(info.url, url);

  make_url(url, ATUN_ENROLL_URL_MAX + 1);
  cr_assert_eq(atun_enroll_encode(s, sizeof(s), url, SECRET, PIN),
               ATUN_ERR_INVALID_ARGUMENT);
  snprintf(s, sizeof(s), "atun1.%s.%s.%s", SECRET, PIN_B64, url);
  cr_assert_eq(decode_str(&info, s, &why), ATUN_ERR_LIMIT);
  assert_zeroed(&info);
}

Test(enroll, input_bound) {
  static char big[ATUN_ENROLL_INPUT_MAX + 2];
  atun_enroll_info info;
  /* At the bound blanks are trimmed and the string inside decodes. */
  memset(big, ' ', sizeof(big));
  memcpy(big, GOOD, strlen(GOOD));
  cr_assert_eq(atun_enroll_decode(&info, big, ATUN_ENROLL_INPUT_MAX, NULL), 0);
  cr_assert_eq(atun_enroll_decode(&info, big, ATUN_ENROLL_INPUT_MAX + 1, NULL),
               ATUN_ERR_LIMIT);
  assert_zeroed(&info);
}

Test(enroll, encode_buffer_bound) {
  char buf[ATUN_ENROLL_STRLEN];
  size_t need = strlen(GOOD) + 1;
  cr_assert_eq(atun_enroll_encode(buf, need - 1, URL, SECRET, PIN), ATUN_ERR_NOBUF);
  cr_assert_str_eq(buf, "");
  cr_assert_eq(atun_enroll_encode(buf, need, URL, SECRET, PIN), (ssize_t)need - 1);
  cr_assert_eq(atun_enroll_encode(NULL, 0, URL, SECRET, PIN), ATUN_ERR_NOBUF);
}

Test(enroll, encode_checks_its_inputs) {
  char buf[ATUN_ENROLL_STRLEN];
  cr_assert_eq(atun_enroll_encode(buf, sizeof(buf), "http://gw", SECRET, PIN),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_enroll_encode(buf, sizeof(buf), URL, "short", PIN),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_enroll_encode(buf, sizeof(buf), URL,
                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopr", PIN),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_enroll_encode(buf, sizeof(buf), NULL, SECRET, PIN),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_enroll_encode(buf, sizeof(buf), URL, NULL, PIN),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_enroll_encode(buf, sizeof(buf), URL, SECRET, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
}

/* --- URLs ------------------------------------------------------------------ */

Test(enroll, url_parts) {
  atun_enroll_url u;
  const char *why;
  const char *url = "https://GW.Example.com./api/v1//";
  cr_assert_eq(atun_enroll_url_parse(&u, url, strlen(url), &why), 0);
  cr_assert_str_eq(u.host.host, "gw.example.com");
  cr_assert_eq(u.port, 443);
  cr_assert_str_eq(u.path, "/api/v1");

  url = "https://[2001:db8::5]:9443";
  cr_assert_eq(atun_enroll_url_parse(&u, url, strlen(url), NULL), 0);
  cr_assert_eq(u.host.kind, ATUN_TARGET_ADDR);
  cr_assert_eq(u.host.addr.family, ATUN_AF_INET6);
  cr_assert_eq(u.port, 9443);
  cr_assert_str_eq(u.path, "");

  url = "https://192.0.2.7/";
  cr_assert_eq(atun_enroll_url_parse(&u, url, strlen(url), NULL), 0);
  cr_assert_eq(u.host.addr.family, ATUN_AF_INET);
  cr_assert_str_eq(u.path, "");

  cr_assert_eq(atun_enroll_url_parse(&u, NULL, 0, &why), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(why, "no API URL");
  cr_assert_eq(atun_enroll_url_parse(NULL, URL, strlen(URL), NULL), 0);
}

/* --- hosts and ports ---------------------------------------------------------- */

Test(enroll, hostport_accepts) {
  static const struct {
    const char *in;
    int optional;
    const char *formatted;
    uint16_t port;
  } ok[] = {
      {"gw.example.com:4433", 0, "gw.example.com:4433", 4433},
      {"GW.Example.COM.:1", 0, "gw.example.com:1", 1},
      {"[::1]:65535", 0, "[::1]:65535", 65535},
      {"192.0.2.1:80", 0, "192.0.2.1:80", 80},
      {"[2001:DB8::1]", 1, "[2001:db8::1]", 0},
      {"host", 1, "host", 0},
  };
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); ++i) {
    atun_target t;
    uint16_t port = 7;
    char buf[ATUN_HOSTPORT_STRLEN];
    cr_assert_eq(atun_hostport_parse(&t, &port, ok[i].in, strlen(ok[i].in), ok[i].optional),
                 0, "%s", ok[i].in);
    cr_assert_eq(port, ok[i].port);
    atun_hostport_format(buf, &t, port);
    cr_assert_str_eq(buf, ok[i].formatted);
  }
}

Test(enroll, hostport_refuses) {
  static const struct {
    const char *in;
    int rv;
  } bad[] = {
      {"", ATUN_ERR_INVALID_ARGUMENT},        {"host", ATUN_ERR_INVALID_ARGUMENT},
      {"::1:4433", ATUN_ERR_INVALID_ARGUMENT}, {"[::1]", ATUN_ERR_INVALID_ARGUMENT},
      {"[::1", ATUN_ERR_INVALID_ARGUMENT},    {"[1.2.3.4]:1", ATUN_ERR_INVALID_ARGUMENT},
      {"[]:1", ATUN_ERR_INVALID_ARGUMENT},    {"[::1]x1", ATUN_ERR_INVALID_ARGUMENT},
      {"h:0", ATUN_ERR_INVALID_ARGUMENT},     {"h:65536", ATUN_ERR_INVALID_ARGUMENT},
      {"h:", ATUN_ERR_INVALID_ARGUMENT},      {":443", ATUN_ERR_INVALID_ARGUMENT},
      {"h:+1", ATUN_ERR_INVALID_ARGUMENT},    {"h:123456", ATUN_ERR_INVALID_ARGUMENT},
      {"a..b:1", ATUN_ERR_BAD_NAME},          {"a_b:1", ATUN_ERR_BAD_NAME},
      {"x.10:1", ATUN_ERR_BAD_NAME},          {"1.2.3:1", ATUN_ERR_BAD_NAME},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    atun_target t;
    uint16_t port = 7;
    cr_assert_eq(atun_hostport_parse(&t, &port, bad[i].in, strlen(bad[i].in), 0),
                 bad[i].rv, "%s", bad[i].in);
    cr_assert_eq(port, 0);
    cr_assert_eq(t.kind, 0);
  }
}

Test(enroll, host_parse_kinds) {
  atun_target t;
  cr_assert_eq(atun_host_parse(&t, "::ffff:1.2.3.4", 14), 0);
  cr_assert_eq(t.addr.family, ATUN_AF_INET6);
  cr_assert_eq(atun_host_parse(&t, "10.0.0.1", 8), 0);
  cr_assert_eq(t.kind, ATUN_TARGET_ADDR);
  cr_assert_eq(atun_host_parse(&t, "db", 2), 0);
  cr_assert_eq(t.kind, ATUN_TARGET_HOST);
  cr_assert_eq(atun_host_parse(&t, "db\0x", 4), ATUN_ERR_BAD_NAME);
  cr_assert_eq(atun_host_parse(&t, ":::", 3), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_host_parse(&t, NULL, 0), ATUN_ERR_INVALID_ARGUMENT);
}

/* --- pins ------------------------------------------------------------------------ */

Test(enroll, pin_forms) {
  static const char *const forms[] = {PIN_HEX, PIN_B64, PIN_B64STD,
      "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"};
  for (size_t i = 0; i < 4; ++i) {
    uint8_t pin[32];
    cr_assert_eq(atun_spki_pin_parse(pin, forms[i], strlen(forms[i])), 0, "%s", forms[i]);
    cr_assert(memcmp(pin, PIN, 32) == 0);
  }
  char hex[ATUN_SPKI_PIN_HEX_LEN + 1];
  atun_spki_pin_format_hex(hex, PIN);
  cr_assert_str_eq(hex, PIN_HEX);
}

Test(enroll, pin_refused) {
  static const char *const bad[] = {
      "", "00", PIN_HEX "00",
      "x00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1",
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9",  /* low bits set */
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+",  /* '+' in base64url */
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh-=", /* '-' in base64 */
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8A", /* 44 without '=' */
  };
  uint8_t pin[32];
  memset(pin, 0xaa, sizeof(pin));
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
    cr_assert_eq(atun_spki_pin_parse(pin, bad[i], strlen(bad[i])), ATUN_ERR_MALFORMED,
                 "%s", bad[i]);
  cr_assert_eq(pin[0], 0xaa, "a refused pin leaves the output alone");
  cr_assert_eq(atun_spki_pin_parse(pin, NULL, 64), ATUN_ERR_MALFORMED);
}
