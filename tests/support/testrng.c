#include "support.h"

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void atun_testrng_seed(atun_testrng *r, uint64_t seed) {
  for (int i = 0; i < 4; ++i) r->s[i] = splitmix64(&seed);
}

uint64_t atun_testrng_next(atun_testrng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

uint64_t atun_testrng_below(atun_testrng *r, uint64_t n) {
  /* Rejection sampling keeps the draw unbiased. */
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t v;
  do {
    v = atun_testrng_next(r);
  } while (v >= limit);
  return v % n;
}

static int fill(uint8_t *dest, size_t destlen, void *ud) {
  atun_testrng *r = ud;
  while (destlen > 0) {
    uint64_t v = atun_testrng_next(r);
    size_t n = destlen < 8 ? destlen : 8;
    for (size_t i = 0; i < n; ++i) dest[i] = (uint8_t)(v >> (8 * i));
    dest += n;
    destlen -= n;
  }
  return 0;
}

atun_rand atun_testrng_as_rand(atun_testrng *r) {
  atun_rand rnd = {fill, r};
  return rnd;
}
