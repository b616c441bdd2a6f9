#include "addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t family_bytes(uint8_t family) {
  return family == ATUN_AF_INET ? 4 : 16;
}

static unsigned family_bits(uint8_t family) {
  return family == ATUN_AF_INET ? 32 : 128;
}

int atun_addr_parse(atun_addr *out, const char *s) {
  memset(out, 0, sizeof(*out));
  if (s == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  if (inet_pton(AF_INET, s, out->bytes) == 1) {
    out->family = ATUN_AF_INET;
    return 0;
  }
  if (inet_pton(AF_INET6, s, out->bytes) == 1) {
    out->family = ATUN_AF_INET6;
    return 0;
  }
  return ATUN_ERR_INVALID_ARGUMENT;
}

int atun_prefix_parse(atun_prefix *out, const char *s) {
  char buf[ATUN_PREFIX_STRLEN + 1];
  memset(out, 0, sizeof(*out));
  if (s == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  size_t n = strlen(s);
  if (n == 0 || n >= sizeof(buf)) return ATUN_ERR_INVALID_ARGUMENT;
  memcpy(buf, s, n + 1);
  char *slash = strchr(buf, '/');
  long len = -1;
  if (slash != NULL) {
    *slash = '\0';
    const char *digits = slash + 1;
    size_t nd = strlen(digits);
    if (nd == 0 || nd > 3) return ATUN_ERR_BAD_PREFIX;
    for (size_t i = 0; i < nd; ++i)
      if (digits[i] < '0' || digits[i] > '9') return ATUN_ERR_BAD_PREFIX;
    len = strtol(digits, NULL, 10);
  }
  int rv = atun_addr_parse(&out->addr, buf);
  if (rv != 0) return rv;
  unsigned bits = family_bits(out->addr.family);
  if (len < 0) len = (long)bits;
  if ((unsigned long)len > bits) return ATUN_ERR_BAD_PREFIX;
  out->len = (uint8_t)len;
  return atun_prefix_valid(out) ? 0 : ATUN_ERR_BAD_PREFIX;
}

void atun_addr_format(char *buf, const atun_addr *a) {
  int af = a->family == ATUN_AF_INET ? AF_INET : AF_INET6;
  if (inet_ntop(af, a->bytes, buf, ATUN_ADDR_STRLEN) == NULL) buf[0] = '\0';
}

void atun_prefix_format(char *buf, const atun_prefix *p) {
  atun_addr_format(buf, &p->addr);
  size_t n = strlen(buf);
  snprintf(buf + n, ATUN_PREFIX_STRLEN - n, "/%u", (unsigned)p->len);
}

void atun_addr_normalize(atun_addr *a) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (a->family != ATUN_AF_INET6 || memcmp(a->bytes, mapped, 12) != 0) return;
  memmove(a->bytes, a->bytes + 12, 4);
  memset(a->bytes + 4, 0, 12);
  a->family = ATUN_AF_INET;
}

int atun_prefix_contains(const atun_prefix *p, const atun_addr *a) {
  if (p->addr.family != a->family) return 0;
  unsigned full = p->len / 8, rest = p->len % 8;
  if (memcmp(p->addr.bytes, a->bytes, full) != 0) return 0;
  if (rest == 0) return 1;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (p->addr.bytes[full] & mask) == (a->bytes[full] & mask);
}

int atun_prefix_valid(const atun_prefix *p) {
  if (p->addr.family != ATUN_AF_INET && p->addr.family != ATUN_AF_INET6) return 0;
  unsigned bits = family_bits(p->addr.family);
  if (p->len > bits) return 0;
  for (unsigned i = p->len; i < 128; ++i) {
    if (p->addr.bytes[i / 8] & (0x80 >> (i % 8))) return 0;
  }
  return 1;
}

int atun_prefix_cmp(const atun_prefix *a, const atun_prefix *b) {
  if (a->addr.family != b->addr.family) return a->addr.family < b->addr.family ? -1 : 1;
  int c = memcmp(a->addr.bytes, b->addr.bytes, family_bytes(a->addr.family));
  if (c != 0) return c < 0 ? -1 : 1;
  if (a->len != b->len) return a->len < b->len ? -1 : 1;
  return 0;
}
