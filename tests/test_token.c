#define _GNU_SOURCE /* memmem */
#include <criterion/criterion.h>
#include <string.h>

#include "support.h"
#include "token.h"

#define SEC ATUN_NS_PER_S
#define T0 ((atun_tstamp)1700000000 * SEC)

/* --- fixtures ----------------------------------------------------------- */

/* An RNG that counts its calls and can fail on the |fail_at|-th (1-based). */
typedef struct counting_rng {
  atun_testrng rng;
  int calls;
  int fail_at;
} counting_rng;

static int counting_fill(uint8_t *dest, size_t len, void *ud) {
  counting_rng *c = ud;
  if (++c->calls == c->fail_at) return -1;
  atun_rand inner = atun_testrng_as_rand(&c->rng);
  return inner.fill(dest, len, inner.user_data);
}

static atun_rand counting_rand(counting_rng *c, uint64_t seed, int fail_at) {
  atun_testrng_seed(&c->rng, seed);
  c->calls = 0;
  c->fail_at = fail_at;
  atun_rand r = {counting_fill, c};
  return r;
}

/* Fills bytes 0, 1, 2, ... continuing across calls. */
static int counter_fill(uint8_t *dest, size_t len, void *ud) {
  uint8_t *next = ud;
  for (size_t i = 0; i < len; ++i) dest[i] = (*next)++;
  return 0;
}

/* Same bytes every call: two issues draw the same secret and id. */
static int constant_fill(uint8_t *dest, size_t len, void *ud) {
  memset(dest, 0x5a, len);
  return 0;
}

static atun_token_memstore *ms;
static const atun_token_store *store;
static atun_testrng rng;
static atun_rand rnd;

static void setup(void) {
  cr_assert_eq(atun_token_memstore_new(&ms, 8, atun_mem_default()), 0);
  store = atun_token_memstore_store(ms);
  atun_testrng_seed(&rng, 42);
  rnd = atun_testrng_as_rand(&rng);
}

static void teardown(void) { atun_token_memstore_del(ms); }

static void issue_ok(atun_tstamp ts, uint64_t ttl, char *secret,
                     atun_token_record *rec) {
  int rv = atun_token_issue(store, &rnd, ts, ttl, NULL, secret,
                            ATUN_TOKEN_SECRET_STRLEN, rec);
  cr_assert_eq(rv, 0, "issue: %s", atun_strerror(rv));
}

static int redeem(const char *secret, atun_tstamp ts) {
  return atun_token_redeem(store, secret, strlen(secret), ts, NULL);
}

/* A store whose every callback fails with |rv| and counts calls. */
typedef struct spy {
  int rv;
  int calls;
} spy;

static int spy_put(const atun_token_record *rec, void *ud) {
  spy *s = ud;
  ++s->calls;
  return s->rv;
}

static int spy_consume(const uint8_t *hash, atun_tstamp ts,
                       atun_token_record *out, void *ud) {
  spy *s = ud;
  ++s->calls;
  return s->rv;
}

static atun_token_store spy_store(spy *s, int rv) {
  s->rv = rv;
  s->calls = 0;
  atun_token_store st;
  memset(&st, 0, sizeof(st));
  st.user_data = s;
  st.put = spy_put;
  st.consume = spy_consume;
  return st;
}

/* --- atun_ct_memeq ------------------------------------------------------ */

Test(ct_memeq, equal_unequal_empty) {
  uint8_t a[33], b[33];
  for (size_t i = 0; i < sizeof(a); ++i) a[i] = b[i] = (uint8_t)(i * 7);
  cr_assert_eq(atun_ct_memeq(a, b, sizeof(a)), 1);
  cr_assert_eq(atun_ct_memeq(a, a, sizeof(a)), 1);
  cr_assert_eq(atun_ct_memeq(NULL, NULL, 0), 1);
  cr_assert_eq(atun_ct_memeq(a, b, 0), 1);
  for (size_t i = 0; i < sizeof(a); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      b[i] ^= (uint8_t)(1u << bit);
      cr_assert_eq(atun_ct_memeq(a, b, sizeof(a)), 0, "byte %zu bit %d", i, bit);
      /* Only the first |i| bytes compared: equal. */
      cr_assert_eq(atun_ct_memeq(a, b, i), 1);
      b[i] ^= (uint8_t)(1u << bit);
    }
  }
  uint8_t z[4] = {0}, f[4] = {0xff, 0xff, 0xff, 0xff};
  cr_assert_eq(atun_ct_memeq(z, f, 4), 0);
}

/* --- secret encoding and hashing ----------------------------------------- */

Test(token, known_answer_encoding_and_hash) {
  atun_token_memstore *m;
  cr_assert_eq(atun_token_memstore_new(&m, 1, atun_mem_default()), 0);
  uint8_t next = 0;
  atun_rand counter = {counter_fill, &next};
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record rec;
  cr_assert_eq(atun_token_issue(atun_token_memstore_store(m), &counter, T0, SEC,
                                NULL, secret, sizeof(secret), &rec),
               0);
  /* Secret bytes 0..31, then id bytes 32..39. */
  cr_assert_str_eq(secret, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
  cr_assert_str_eq(rec.id, "2021222324252627");
  static const uint8_t sha[32] = {
      0x63, 0x0d, 0xcd, 0x29, 0x66, 0xc4, 0x33, 0x66, 0x91, 0x12, 0x54,
      0x48, 0xbb, 0xb2, 0x5b, 0x4f, 0xf4, 0x12, 0xa4, 0x9c, 0x73, 0x2d,
      0xb2, 0xc8, 0xab, 0xc1, 0xb8, 0x58, 0x1b, 0xd7, 0x10, 0xdd};
  cr_assert_arr_eq(rec.hash, sha, 32);
  atun_token_memstore_del(m);
}

Test(token, decode_roundtrip_and_canonical_last_char) {
  uint8_t out[ATUN_TOKEN_SECRET_BYTES];
  const char *ones = "__________________________________________8";
  cr_assert_eq(atun_token_secret_decode(out, ones, 43), 0);
  for (size_t i = 0; i < sizeof(out); ++i) cr_assert_eq(out[i], 0xff);
  /* Same 256 bits, but the unused low bits of the last character set. */
  const char *noncanon[] = {"__________________________________________9",
                            "__________________________________________-",
                            "__________________________________________B"};
  for (size_t i = 0; i < 3; ++i)
    cr_assert_eq(atun_token_secret_decode(out, noncanon[i], 43),
                 ATUN_ERR_MALFORMED, "%s", noncanon[i]);
  const char *zeros = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
  cr_assert_eq(atun_token_secret_decode(out, zeros, 43), 0);
  for (size_t i = 0; i < sizeof(out); ++i) cr_assert_eq(out[i], 0);
}

Test(token, hash_of_zero_secret) {
  uint8_t secret[32] = {0}, hash[32];
  static const uint8_t sha[32] = {
      0x66, 0x68, 0x7a, 0xad, 0xf8, 0x62, 0xbd, 0x77, 0x6c, 0x8f, 0xc1,
      0x8b, 0x8e, 0x9f, 0x8e, 0x20, 0x08, 0x97, 0x14, 0x85, 0x6e, 0xe2,
      0x33, 0xb3, 0x90, 0x2a, 0x59, 0x1d, 0x0d, 0x5f, 0x29, 0x25};
  cr_assert_eq(atun_token_hash(hash, secret), 0);
  cr_assert_arr_eq(hash, sha, 32);
}

Test(token, id_valid) {
  cr_assert(atun_token_id_valid("0123456789abcdef", 16));
  cr_assert_not(atun_token_id_valid("0123456789ABCDEF", 16));
  cr_assert_not(atun_token_id_valid("0123456789abcde", 15));
  cr_assert_not(atun_token_id_valid("0123456789abcdef0", 17));
  cr_assert_not(atun_token_id_valid("0123456789abcdeg", 16));
  cr_assert_not(atun_token_id_valid(NULL, 16));
}

/* --- issue and redeem --------------------------------------------------- */

TestSuite(token_mem, .init = setup, .fini = teardown);

Test(token_mem, issue_then_redeem_once) {
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record rec, got;
  cr_assert_eq(atun_token_issue(store, &rnd, T0, 600 * SEC, "site-a agent",
                                secret, sizeof(secret), &rec),
               0);
  cr_assert_eq(strlen(secret), ATUN_TOKEN_SECRET_LEN);
  cr_assert(atun_token_id_valid(rec.id, strlen(rec.id)));
  cr_assert_eq(rec.created_at, T0);
  cr_assert_eq(rec.expires_at, T0 + 600 * SEC);
  cr_assert_eq(rec.used_at, ATUN_TSTAMP_MAX);
  cr_assert_str_eq(rec.name, "site-a agent");
  cr_assert_eq(atun_token_memstore_count(ms), 1);

  cr_assert_eq(atun_token_redeem(store, secret, strlen(secret), T0 + 5 * SEC, &got),
               0);
  cr_assert_str_eq(got.id, rec.id);
  cr_assert_eq(got.used_at, T0 + 5 * SEC);

  /* The second use fails and reports when the first happened. */
  cr_assert_eq(atun_token_redeem(store, secret, strlen(secret), T0 + 6 * SEC, &got),
               ATUN_ERR_USED);
  cr_assert_eq(got.used_at, T0 + 5 * SEC);
  cr_assert_eq(store->get(rec.id, &got, store->user_data), 0);
  cr_assert_eq(got.used_at, T0 + 5 * SEC);
}

Test(token_mem, tokens_are_independent) {
  char s1[ATUN_TOKEN_SECRET_STRLEN], s2[ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record r1, r2;
  issue_ok(T0, SEC, s1, &r1);
  issue_ok(T0, SEC, s2, &r2);
  cr_assert_str_neq(s1, s2);
  cr_assert_str_neq(r1.id, r2.id);
  cr_assert_eq(redeem(s2, T0), 0);
  cr_assert_eq(redeem(s1, T0), 0);
  cr_assert_eq(redeem(s2, T0), ATUN_ERR_USED);
}

Test(token_mem, expiry_at_the_bound) {
  char a[ATUN_TOKEN_SECRET_STRLEN], b[ATUN_TOKEN_SECRET_STRLEN];
  issue_ok(T0, 500, a, NULL);
  issue_ok(T0, 500, b, NULL);
  /* Valid at expires_at - 1, expired at expires_at. */
  cr_assert_eq(redeem(a, T0 + 499), 0);
  atun_token_record got;
  cr_assert_eq(atun_token_redeem(store, b, 43, T0 + 500, &got), ATUN_ERR_EXPIRED);
  cr_assert_eq(got.used_at, ATUN_TSTAMP_MAX, "an expired token is not consumed");
  cr_assert_eq(redeem(b, T0 + 499), 0, "the failed attempt consumed nothing");
}

Test(token_mem, used_is_reported_before_expired) {
  char s[ATUN_TOKEN_SECRET_STRLEN];
  issue_ok(T0, 10, s, NULL);
  cr_assert_eq(redeem(s, T0), 0);
  cr_assert_eq(redeem(s, T0 + 10), ATUN_ERR_USED);
}

Test(token_mem, unknown_secret_not_found) {
  char s[ATUN_TOKEN_SECRET_STRLEN];
  issue_ok(T0, SEC, s, NULL);
  cr_assert_eq(redeem("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", T0),
               ATUN_ERR_NOT_FOUND);
  /* One character off. */
  s[10] = s[10] == 'A' ? 'B' : 'A';
  cr_assert_eq(redeem(s, T0), ATUN_ERR_NOT_FOUND);
}

Test(token_mem, purge_removes_exactly_the_expired) {
  static const uint64_t ttl[] = {100, 200, 200, 300, 400};
  char s[5][ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record r[5];
  for (int i = 0; i < 5; ++i) issue_ok(T0, ttl[i], s[i], &r[i]);
  cr_assert_eq(redeem(s[1], T0), 0);  /* used, expires at +200 */
  cr_assert_eq(redeem(s[3], T0), 0);  /* used, expires at +300 */

  cr_assert_eq(store->purge(T0 + 99, store->user_data), 0);
  cr_assert_eq(store->purge(T0 + 200, store->user_data), 3);
  cr_assert_eq(atun_token_memstore_count(ms), 2);
  atun_token_record got;
  for (int i = 0; i < 3; ++i)
    cr_assert_eq(store->get(r[i].id, &got, store->user_data), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(store->get(r[3].id, &got, store->user_data), 0);
  cr_assert_eq(store->get(r[4].id, &got, store->user_data), 0);
  /* A used token kept until expiry still says USED; a purged one is gone. */
  cr_assert_eq(redeem(s[3], T0 + 250), ATUN_ERR_USED);
  cr_assert_eq(redeem(s[1], T0 + 250), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(redeem(s[4], T0 + 250), 0);
  cr_assert_eq(store->purge(T0 + 400, store->user_data), 2);
  cr_assert_eq(atun_token_memstore_count(ms), 0);
  cr_assert_eq(store->purge(T0 + 400, store->user_data), 0);
}

Test(token_mem, list_get_remove) {
  char s[3][ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record r[3], out[4];
  for (int i = 0; i < 3; ++i) issue_ok(T0 + (uint64_t)i, SEC, s[i], &r[i]);
  cr_assert_eq(store->list(out, 4, 0, store->user_data), 3);
  for (int i = 0; i < 3; ++i) cr_assert_str_eq(out[i].id, r[i].id);
  cr_assert_eq(store->list(out, 1, 1, store->user_data), 1);
  cr_assert_str_eq(out[0].id, r[1].id);
  cr_assert_eq(store->list(out, 4, 2, store->user_data), 1);
  cr_assert_eq(store->list(out, 4, 3, store->user_data), 0);
  cr_assert_eq(store->list(NULL, 0, 0, store->user_data), 0);

  cr_assert_eq(store->remove(r[1].id, store->user_data), 0);
  cr_assert_eq(store->remove(r[1].id, store->user_data), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(store->get(r[1].id, out, store->user_data), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(redeem(s[1], T0), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(store->list(out, 4, 0, store->user_data), 2);
  cr_assert_str_eq(out[0].id, r[0].id);
  cr_assert_str_eq(out[1].id, r[2].id);
  cr_assert_eq(redeem(s[2], T0), 0);
}

Test(token_mem, put_rejects_duplicate_id_or_hash) {
  atun_token_record rec;
  char sec[ATUN_TOKEN_SECRET_STRLEN];
  issue_ok(T0, SEC, sec, &rec);
  atun_token_record dup = rec;
  dup.hash[0] ^= 1;
  cr_assert_eq(store->put(&dup, store->user_data), ATUN_ERR_EXISTS);
  dup = rec;
  dup.id[0] = dup.id[0] == 'a' ? 'b' : 'a';
  cr_assert_eq(store->put(&dup, store->user_data), ATUN_ERR_EXISTS);
  dup.hash[0] ^= 1;
  cr_assert_eq(store->put(&dup, store->user_data), 0);
  cr_assert_eq(atun_token_memstore_count(ms), 2);
}

Test(token_mem, repeated_rng_output_is_exists) {
  atun_rand same = {constant_fill, NULL};
  char sec[ATUN_TOKEN_SECRET_STRLEN];
  cr_assert_eq(atun_token_issue(store, &same, T0, SEC, NULL, sec, sizeof(sec), NULL), 0);
  cr_assert_eq(atun_token_issue(store, &same, T0, SEC, NULL, sec, sizeof(sec), NULL),
               ATUN_ERR_EXISTS);
  cr_assert_str_empty(sec);
  cr_assert_eq(atun_token_memstore_count(ms), 1);
}

Test(token_mem, secret_never_in_record) {
  for (int n = 0; n < 200; ++n) {
    char sec[ATUN_TOKEN_SECRET_STRLEN];
    atun_token_record rec;
    store->purge(ATUN_TSTAMP_MAX - 1, store->user_data);
    issue_ok(T0, SEC, sec, &rec);
    uint8_t bytes[ATUN_TOKEN_SECRET_BYTES];
    cr_assert_eq(atun_token_secret_decode(bytes, sec, strlen(sec)), 0);
    cr_assert_not(atun_ct_memeq(rec.hash, bytes, sizeof(bytes)));
    /* Neither the raw bytes, nor their text, nor any 8-byte piece of them. */
    for (size_t off = 0; off + 8 <= sizeof(bytes); ++off)
      cr_assert_null(memmem(&rec, sizeof(rec), bytes + off, 8));
    for (size_t off = 0; off + 8 <= ATUN_TOKEN_SECRET_LEN; ++off)
      cr_assert_null(memmem(&rec, sizeof(rec), sec + off, 8));
    uint8_t hash[ATUN_TOKEN_HASH_BYTES];
    cr_assert_eq(atun_token_hash(hash, bytes), 0);
    cr_assert_arr_eq(hash, rec.hash, sizeof(hash));
  }
}

/* --- bounds and failures ------------------------------------------------ */

Test(token_mem, malformed_rejected_before_hashing) {
  spy sp;
  atun_token_store st = spy_store(&sp, 0);
  char good[ATUN_TOKEN_SECRET_STRLEN];
  issue_ok(T0, SEC, good, NULL);
  char buf[64];

  cr_assert_eq(atun_token_redeem(&st, "", 0, T0, NULL), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_token_redeem(&st, NULL, 0, T0, NULL), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_token_redeem(&st, NULL, 43, T0, NULL), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_token_redeem(&st, good, 42, T0, NULL), ATUN_ERR_MALFORMED);
  memcpy(buf, good, 43);
  buf[43] = 'A';
  cr_assert_eq(atun_token_redeem(&st, buf, 44, T0, NULL), ATUN_ERR_MALFORMED);
  buf[43] = '=';
  cr_assert_eq(atun_token_redeem(&st, buf, 44, T0, NULL), ATUN_ERR_MALFORMED);
  /* Every character position, every byte outside the alphabet. */
  for (size_t pos = 0; pos < ATUN_TOKEN_SECRET_LEN; ++pos) {
    for (int c = 0; c < 256; ++c) {
      int in_alphabet = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                        (c >= '0' && c <= '9') || c == '-' || c == '_';
      if (in_alphabet) continue;
      memcpy(buf, good, 43);
      buf[pos] = (char)c;
      cr_assert_eq(atun_token_redeem(&st, buf, 43, T0, NULL), ATUN_ERR_MALFORMED,
                   "pos %zu byte %d", pos, c);
    }
  }
  cr_assert_eq(sp.calls, 0, "the store saw a malformed secret");
  /* The intact secret does reach the store. */
  cr_assert_eq(atun_token_redeem(&st, good, 43, T0, NULL), 0);
  cr_assert_eq(sp.calls, 1);
  cr_assert_eq(redeem(good, T0), 0);
}

Test(token_mem, redeem_arguments) {
  char s[ATUN_TOKEN_SECRET_STRLEN];
  issue_ok(T0, SEC, s, NULL);
  cr_assert_eq(atun_token_redeem(NULL, s, 43, T0, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_redeem(store, s, 43, ATUN_TSTAMP_MAX, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(redeem(s, T0), 0);
}

Test(token_mem, store_errors_propagate) {
  spy sp;
  atun_token_store st = spy_store(&sp, ATUN_ERR_STORE);
  char s[ATUN_TOKEN_SECRET_STRLEN];
  memset(s, 'x', sizeof(s));
  atun_token_record rec;
  cr_assert_eq(atun_token_issue(&st, &rnd, T0, SEC, NULL, s, sizeof(s), &rec),
               ATUN_ERR_STORE);
  cr_assert_str_empty(s, "a secret whose record was not stored leaked out");
  cr_assert_eq(atun_token_redeem(&st, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                 43, T0, NULL),
               ATUN_ERR_STORE);
  cr_assert_eq(sp.calls, 2);
}

Test(token_mem, issue_arguments) {
  char s[ATUN_TOKEN_SECRET_STRLEN + 1];
  const size_t cap = ATUN_TOKEN_SECRET_STRLEN;
  atun_rand nofill = {NULL, NULL};
  cr_assert_eq(atun_token_issue(NULL, &rnd, T0, SEC, NULL, s, cap, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_issue(store, NULL, T0, SEC, NULL, s, cap, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_issue(store, &nofill, T0, SEC, NULL, s, cap, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, NULL, NULL, cap, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_issue(store, &rnd, ATUN_TSTAMP_MAX, SEC, NULL, s, cap, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_issue(store, &rnd, T0, 0, NULL, s, cap, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_issue(store, &rnd, T0, ATUN_TOKEN_TTL_MAX_NS + 1, NULL, s,
                                cap, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  /* expires_at would reach ATUN_TSTAMP_MAX ("never"): refused; one less is fine. */
  cr_assert_eq(atun_token_issue(store, &rnd, ATUN_TSTAMP_MAX - 10, 10, NULL, s, cap,
                                NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_memstore_count(ms), 0);
  cr_assert_eq(atun_token_issue(store, &rnd, ATUN_TSTAMP_MAX - 11, 10, NULL, s, cap,
                                NULL),
               0);
  /* The buffer bound: none at all, one byte short, then exact. */
  s[0] = 'x';
  cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, NULL, s, 0, NULL), ATUN_ERR_NOBUF);
  cr_assert_eq(s[0], 'x', "a zero-capacity buffer was written");
  cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, NULL, s, cap - 1, NULL),
               ATUN_ERR_NOBUF);
  cr_assert_str_empty(s);
  cr_assert_eq(atun_token_issue(store, &rnd, T0, ATUN_TOKEN_TTL_MAX_NS, NULL, s, cap,
                                NULL),
               0);
  cr_assert_eq(atun_token_memstore_count(ms), 2);
}

Test(token_mem, name_bounds) {
  char s[ATUN_TOKEN_SECRET_STRLEN];
  char name[ATUN_TOKEN_NAME_MAX + 2];
  atun_token_record rec;
  memset(name, 'n', ATUN_TOKEN_NAME_MAX + 1);
  name[ATUN_TOKEN_NAME_MAX + 1] = '\0';
  cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, name, s, sizeof(s), NULL),
               ATUN_ERR_BAD_NAME);
  name[ATUN_TOKEN_NAME_MAX] = '\0';
  cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, name, s, sizeof(s), &rec), 0);
  cr_assert_str_eq(rec.name, name);
  static const char *bad[] = {"", "tab\there", "del\x7f", "caf\xc3\xa9", "nl\n"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
    cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, bad[i], s, sizeof(s), NULL),
                 ATUN_ERR_BAD_NAME, "name %zu", i);
  cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, " ~!", s, sizeof(s), &rec), 0);
  cr_assert_eq(atun_token_issue(store, &rnd, T0, SEC, NULL, s, sizeof(s), &rec), 0);
  cr_assert_str_empty(rec.name);
  cr_assert_eq(atun_token_memstore_count(ms), 3);
}

Test(token_mem, rng_failure_stores_nothing) {
  for (int fail_at = 1; fail_at <= 2; ++fail_at) {
    counting_rng c;
    atun_rand r = counting_rand(&c, 7, fail_at);
    char s[ATUN_TOKEN_SECRET_STRLEN] = "stale";
    cr_assert_eq(atun_token_issue(store, &r, T0, SEC, NULL, s, sizeof(s), NULL),
                 ATUN_ERR_CALLBACK_FAILURE, "fail_at %d", fail_at);
    cr_assert_str_empty(s);
    cr_assert_eq(c.calls, fail_at);
    cr_assert_eq(atun_token_memstore_count(ms), 0);
  }
  counting_rng c;
  atun_rand r = counting_rand(&c, 7, 0);
  char s[ATUN_TOKEN_SECRET_STRLEN];
  cr_assert_eq(atun_token_issue(store, &r, T0, SEC, NULL, s, sizeof(s), NULL), 0);
  cr_assert_eq(c.calls, 2, "issue draws the secret and the id, nothing more");
}

Test(token, memstore_capacity_at_the_bound) {
  atun_token_memstore *m;
  cr_assert_eq(atun_token_memstore_new(&m, 3, atun_mem_default()), 0);
  const atun_token_store *st = atun_token_memstore_store(m);
  atun_testrng g;
  atun_testrng_seed(&g, 1);
  atun_rand r = atun_testrng_as_rand(&g);
  char s[ATUN_TOKEN_SECRET_STRLEN];
  for (int i = 0; i < 3; ++i)
    cr_assert_eq(atun_token_issue(st, &r, T0, (uint64_t)(i + 1), NULL, s, sizeof(s),
                                  NULL),
                 0);
  cr_assert_eq(atun_token_issue(st, &r, T0, SEC, NULL, s, sizeof(s), NULL),
               ATUN_ERR_FULL);
  cr_assert_str_empty(s);
  cr_assert_eq(atun_token_memstore_count(m), 3);
  /* Purging the one expired token makes exactly one slot. */
  cr_assert_eq(st->purge(T0 + 1, st->user_data), 1);
  cr_assert_eq(atun_token_issue(st, &r, T0, SEC, NULL, s, sizeof(s), NULL), 0);
  cr_assert_eq(atun_token_redeem(st, s, 43, T0, NULL), 0);
  cr_assert_eq(atun_token_issue(st, &r, T0, SEC, NULL, s, sizeof(s), NULL),
               ATUN_ERR_FULL, "a used token still takes its slot");
  atun_token_memstore_del(m);
}

Test(token, memstore_new_arguments) {
  atun_token_memstore *m = NULL;
  const atun_mem *mem = atun_mem_default();
  cr_assert_eq(atun_token_memstore_new(&m, 0, mem), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_memstore_new(&m, ATUN_TOKEN_MEMSTORE_CAPACITY_MAX + 1, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_memstore_new(NULL, 1, mem), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_token_memstore_new(&m, 1, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_null(m);
  cr_assert_eq(atun_token_memstore_new(&m, ATUN_TOKEN_MEMSTORE_CAPACITY_MAX, mem), 0);
  cr_assert_eq(atun_token_memstore_count(m), 0);
  atun_token_memstore_del(m);
  atun_token_memstore_del(NULL);
}

Test(token, allocation_failure_at_each_index) {
  atun_failmem fm;
  long index = 0;
  atun_token_memstore *m = NULL;
  for (;; ++index) {
    atun_failmem_init(&fm, index);
    int rv = atun_token_memstore_new(&m, 4, &fm.mem);
    if (rv == 0) break;
    cr_assert_eq(rv, ATUN_ERR_NOMEM, "index %ld", index);
    cr_assert_eq(fm.live, 0, "leak after failure at index %ld", index);
    cr_assert_eq(fm.failures, 1);
  }
  cr_assert_eq(index, 2, "the store allocates twice, at creation only");
  /* Issue and redeem never allocate: with the allocator now refusing, both
   * still work. */
  atun_failmem_arm(&fm, 0, 0);
  const atun_token_store *st = atun_token_memstore_store(m);
  atun_testrng g;
  atun_testrng_seed(&g, 3);
  atun_rand r = atun_testrng_as_rand(&g);
  char s[ATUN_TOKEN_SECRET_STRLEN];
  cr_assert_eq(atun_token_issue(st, &r, T0, SEC, NULL, s, sizeof(s), NULL), 0);
  cr_assert_eq(atun_token_redeem(st, s, 43, T0, NULL), 0);
  cr_assert_eq(fm.failures, 0);
  atun_token_memstore_del(m);
  cr_assert_eq(fm.live, 0);
}

Test(token, many_seeds_distinct_and_well_formed) {
  atun_token_memstore *m;
  cr_assert_eq(atun_token_memstore_new(&m, 1024, atun_mem_default()), 0);
  const atun_token_store *st = atun_token_memstore_store(m);
  atun_testrng g;
  atun_testrng_seed(&g, 99);
  atun_rand r = atun_testrng_as_rand(&g);
  char s[ATUN_TOKEN_SECRET_STRLEN];
  for (int i = 0; i < 1024; ++i) {
    cr_assert_eq(atun_token_issue(st, &r, T0, SEC, NULL, s, sizeof(s), NULL), 0);
    uint8_t bytes[ATUN_TOKEN_SECRET_BYTES];
    cr_assert_eq(atun_token_secret_decode(bytes, s, strlen(s)), 0, "%s", s);
  }
  cr_assert_eq(atun_token_memstore_count(m), 1024);
  atun_token_memstore_del(m);
}
