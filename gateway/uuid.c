#include <stdio.h>

#include "gw.h"

static int nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

int atun_gw_uuid_parse(uint8_t out[16], const char *s, size_t len) {
  if (!atun_uuid_valid(s, len)) return ATUN_ERR_MALFORMED;
  size_t k = 0;
  for (size_t i = 0; i < len; ++i) {
    if (s[i] == '-') continue;
    int v = nibble(s[i]);
    if (v < 0) return ATUN_ERR_MALFORMED;
    if (k % 2 == 0)
      out[k / 2] = (uint8_t)(v << 4);
    else
      out[k / 2] |= (uint8_t)v;
    ++k;
  }
  return k == 32 ? 0 : ATUN_ERR_MALFORMED;
}

void atun_gw_uuid_format(char out[ATUN_UUID_STRLEN], const uint8_t id[16]) {
  static const char digits[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = digits[id[i] >> 4];
    out[o++] = digits[id[i] & 15];
  }
  out[o] = '\0';
}
