/*
 * The enrollment string and its parts under fuzzing.  Byte 0 picks the
 * mode, the rest is the input.
 *
 *   mode 0: an enrollment string.  An accepted one must encode back to the
 *           same text with the blanks around it removed, and any refusal
 *           must leave the output zeroed and give a reason.
 *   mode 1: an API URL.  An accepted one must also be accepted inside an
 *           enrollment string.
 *   mode 2: host:port, with the port optional.  An accepted one is written
 *           out and parsed again to the same host and port.
 *   mode 3: an SPKI pin in any accepted form; written as hex it must parse
 *           back to the same bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "enroll.h"

#define CHECK(cond)       \
  do {                    \
    if (!(cond)) abort(); \
  } while (0)

#define SECRET "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopo"

static int is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void run_string(const char *s, size_t n) {
  atun_enroll_info info;
  const char *why = NULL;
  int rv = atun_enroll_decode(&info, s, n, &why);
  CHECK(why != NULL);
  if (rv != 0) {
    static const atun_enroll_info zero;
    CHECK(why[0] != '\0');
    CHECK(memcmp(&info, &zero, sizeof(zero)) == 0);
    return;
  }
  while (n > 0 && is_blank(s[0])) ++s, --n;
  while (n > 0 && is_blank(s[n - 1])) --n;
  char again[ATUN_ENROLL_STRLEN];
  ssize_t len = atun_enroll_encode(again, sizeof(again), info.url, info.secret,
                                   info.ca_spki_sha256);
  CHECK(len > 0 && (size_t)len == n && memcmp(again, s, n) == 0);
}

static void run_url(const char *s, size_t n) {
  atun_enroll_url u;
  if (atun_enroll_url_parse(&u, s, n, NULL) != 0) return;
  CHECK(u.port != 0);
  CHECK(u.path[0] == '\0' || u.path[0] == '/');
  CHECK(memchr(s, '\0', n) == NULL);
  char url[ATUN_ENROLL_URL_MAX + 1], str[ATUN_ENROLL_STRLEN];
  uint8_t pin[ATUN_SPKI_PIN_BYTES] = {0};
  memcpy(url, s, n);
  url[n] = '\0';
  ssize_t len = atun_enroll_encode(str, sizeof(str), url, SECRET, pin);
  CHECK(len > 0);
  atun_enroll_info info;
  CHECK(atun_enroll_decode(&info, str, (size_t)len, NULL) == 0);
  CHECK(strcmp(info.url, url) == 0 && info.api.port == u.port);
}

static void run_hostport(const char *s, size_t n) {
  atun_target host, again;
  uint16_t port, port2;
  char text[ATUN_HOSTPORT_STRLEN];
  if (atun_hostport_parse(&host, &port, s, n, 1) != 0) return;
  atun_hostport_format(text, &host, port);
  CHECK(atun_hostport_parse(&again, &port2, text, strlen(text), 1) == 0);
  CHECK(port == port2 && memcmp(&host, &again, sizeof(host)) == 0);
}

static void run_pin(const char *s, size_t n) {
  uint8_t pin[ATUN_SPKI_PIN_BYTES], back[ATUN_SPKI_PIN_BYTES];
  char hex[ATUN_SPKI_PIN_HEX_LEN + 1];
  if (atun_spki_pin_parse(pin, s, n) != 0) return;
  atun_spki_pin_format_hex(hex, pin);
  CHECK(atun_spki_pin_parse(back, hex, ATUN_SPKI_PIN_HEX_LEN) == 0);
  CHECK(memcmp(pin, back, sizeof(pin)) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  const char *s = (const char *)data + 1;
  size_t n = size - 1;
  switch (data[0] % 4) {
    case 0: run_string(s, n); break;
    case 1: run_url(s, n); break;
    case 2: run_hostport(s, n); break;
    default: run_pin(s, n);
  }
  return 0;
}
