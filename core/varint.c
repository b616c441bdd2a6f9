#include "varint.h"

size_t atun_varint_len(uint64_t v) {
  ATUN_ASSERT(v <= ATUN_VARINT_MAX);
  if (v < 0x40) return 1;
  if (v < 0x4000) return 2;
  if (v < 0x40000000) return 4;
  return 8;
}

size_t atun_varint_len_from_first(uint8_t b) { return (size_t)1 << (b >> 6); }

uint8_t *atun_varint_put(uint8_t *dest, uint64_t v) {
  size_t n = atun_varint_len(v);
  /* The length code is log2 of the byte count, i.e. 0, 1, 2 or 3. */
  uint8_t code = (uint8_t)(n == 1 ? 0 : n == 2 ? 1 : n == 4 ? 2 : 3);
  for (size_t i = n; i > 0; --i) {
    dest[i - 1] = (uint8_t)v;
    v >>= 8;
  }
  dest[0] |= (uint8_t)(code << 6);
  return dest + n;
}

int atun_varint_get(const uint8_t **src, const uint8_t *end, uint64_t *out) {
  const uint8_t *p = *src;
  if (p >= end) return ATUN_ERR_TRUNCATED;
  size_t n = atun_varint_len_from_first(p[0]);
  if ((size_t)(end - p) < n) return ATUN_ERR_TRUNCATED;
  uint64_t v = p[0] & 0x3f;
  for (size_t i = 1; i < n; ++i) v = (v << 8) | p[i];
  *out = v;
  *src = p + n;
  return 0;
}
