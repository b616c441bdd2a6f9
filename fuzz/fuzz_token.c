/*
 * Enrollment tokens under fuzzing.  The first byte picks a mode:
 *
 *   even: the rest is a presented secret.  It must be accepted exactly when
 *         it is canonical base64url of 32 bytes; an accepted string must come
 *         back unchanged when issued again from its own bytes; redeeming it
 *         against a store holding one known token gives 0 only for that
 *         token's secret, NOT_FOUND for any other well-formed one.
 *   odd:  the rest is a program of store operations (issue, redeem, advance
 *         time, purge, remove, redeem garbage) whose results are checked
 *         against a small model: a secret succeeds at most once, never after
 *         expiry, and nothing comes back after purge or remove.
 *
 * The known token is drawn from a fixed seed, so the corpus can hold its
 * secret and reach the success path.
 */
#include <stdlib.h>
#include <string.h>

#include "support.h"
#include "token.h"

#define SEC ATUN_NS_PER_S
#define T0 ((atun_tstamp)1700000000 * SEC)
#define KNOWN_SEED 1
#define MODEL_MAX 8
#define STORE_CAP 4

#define CHECK(cond)  \
  do {               \
    if (!(cond)) abort(); \
  } while (0)

static int in_alphabet(uint8_t c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The acceptance rule, written out plainly as a second opinion: the right
 * length, the right alphabet, and a last character carrying only the 4 bits
 * left of 256 (its value a multiple of 4). */
static int expect_well_formed(const uint8_t *s, size_t n) {
  if (n != ATUN_TOKEN_SECRET_LEN) return 0;
  for (size_t i = 0; i < n; ++i)
    if (!in_alphabet(s[i])) return 0;
  return ((strchr(alphabet, s[n - 1]) - alphabet) & 3) == 0;
}

/* Replays fixed bytes: the secret to re-encode, then an id of zeros. */
typedef struct replay_rng {
  const uint8_t *secret;
  int calls;
} replay_rng;

static int replay_fill(uint8_t *dest, size_t len, void *ud) {
  replay_rng *r = ud;
  if (r->calls++ == 0 && len == ATUN_TOKEN_SECRET_BYTES)
    memcpy(dest, r->secret, len);
  else
    memset(dest, 0, len);
  return 0;
}

static void check_roundtrip(const uint8_t bytes[ATUN_TOKEN_SECRET_BYTES],
                            const uint8_t *text) {
  atun_token_memstore *ms;
  CHECK(atun_token_memstore_new(&ms, 1, atun_mem_default()) == 0);
  const atun_token_store *st = atun_token_memstore_store(ms);
  replay_rng rr = {bytes, 0};
  atun_rand r = {replay_fill, &rr};
  char again[ATUN_TOKEN_SECRET_STRLEN];
  CHECK(atun_token_issue(st, &r, T0, SEC, NULL, again, sizeof(again), NULL) == 0);
  CHECK(memcmp(again, text, ATUN_TOKEN_SECRET_LEN) == 0);
  CHECK(atun_token_redeem(st, (const char *)text, ATUN_TOKEN_SECRET_LEN, T0, NULL) == 0);
  CHECK(atun_token_redeem(st, again, ATUN_TOKEN_SECRET_LEN, T0, NULL) == ATUN_ERR_USED);
  atun_token_memstore_del(ms);
}

static void run_parse(const uint8_t *s, size_t n) {
  atun_token_memstore *ms;
  CHECK(atun_token_memstore_new(&ms, 1, atun_mem_default()) == 0);
  const atun_token_store *st = atun_token_memstore_store(ms);
  atun_testrng g;
  atun_testrng_seed(&g, KNOWN_SEED);
  atun_rand r = atun_testrng_as_rand(&g);
  char known[ATUN_TOKEN_SECRET_STRLEN];
  CHECK(atun_token_issue(st, &r, T0, SEC, NULL, known, sizeof(known), NULL) == 0);

  uint8_t bytes[ATUN_TOKEN_SECRET_BYTES];
  int ok = atun_token_secret_decode(bytes, (const char *)s, n) == 0;
  CHECK(ok == expect_well_formed(s, n));
  int rv = atun_token_redeem(st, (const char *)s, n, T0, NULL);
  if (!ok) {
    CHECK(rv == ATUN_ERR_MALFORMED);
  } else {
    int is_known = memcmp(s, known, ATUN_TOKEN_SECRET_LEN) == 0;
    CHECK(rv == (is_known ? 0 : ATUN_ERR_NOT_FOUND));
    check_roundtrip(bytes, s);
  }
  atun_token_memstore_del(ms);
}

/* --- operation programs ----------------------------------------------- */

typedef struct model_token {
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  char id[ATUN_TOKEN_ID_STRLEN];
  atun_tstamp expires_at;
  int used;
  int present;
} model_token;

/* Every token in the store is followed by the model (issue stops at
 * MODEL_MAX), so every result can be predicted exactly. */
typedef struct world {
  const atun_token_store *st;
  atun_rand rand;
  atun_tstamp now;
  model_token tok[MODEL_MAX];
  size_t ntok;
  size_t present;
} world;

static void op_issue(world *w, uint8_t arg) {
  if (w->ntok == MODEL_MAX) return;
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record rec;
  uint64_t ttl = (uint64_t)(arg + 1) * SEC / 4;
  int rv = atun_token_issue(w->st, &w->rand, w->now, ttl, NULL, secret,
                            sizeof(secret), &rec);
  if (w->present == STORE_CAP) {
    CHECK(rv == ATUN_ERR_FULL && secret[0] == '\0');
    return;
  }
  CHECK(rv == 0 && rec.expires_at == w->now + ttl);
  model_token *t = &w->tok[w->ntok++];
  memcpy(t->secret, secret, sizeof(secret));
  memcpy(t->id, rec.id, sizeof(rec.id));
  t->expires_at = rec.expires_at;
  t->used = 0;
  t->present = 1;
  ++w->present;
}

static model_token *model_find(world *w, const uint8_t *s, size_t len) {
  if (len != ATUN_TOKEN_SECRET_LEN) return NULL;
  for (size_t i = 0; i < w->ntok; ++i)
    if (memcmp(w->tok[i].secret, s, len) == 0) return &w->tok[i];
  return NULL;
}

static void redeem_checked(world *w, const uint8_t *s, size_t len) {
  uint8_t bytes[ATUN_TOKEN_SECRET_BYTES];
  model_token *t = model_find(w, s, len);
  int want;
  if (atun_token_secret_decode(bytes, (const char *)s, len) != 0)
    want = ATUN_ERR_MALFORMED;
  else if (t == NULL || !t->present)
    want = ATUN_ERR_NOT_FOUND;
  else if (t->used)
    want = ATUN_ERR_USED;
  else if (w->now >= t->expires_at)
    want = ATUN_ERR_EXPIRED;
  else
    want = 0;
  CHECK(atun_token_redeem(w->st, (const char *)s, len, w->now, NULL) == want);
  if (want == 0) t->used = 1;
}

static void op_purge(world *w) {
  ssize_t gone = 0;
  for (size_t i = 0; i < w->ntok; ++i) {
    if (w->tok[i].present && w->now >= w->tok[i].expires_at) {
      w->tok[i].present = 0;
      ++gone;
    }
  }
  CHECK(w->st->purge(w->now, w->st->user_data) == gone);
  w->present -= (size_t)gone;
}

static void op_remove(world *w, uint8_t arg) {
  if (w->ntok == 0) return;
  model_token *t = &w->tok[arg % w->ntok];
  int rv = w->st->remove(t->id, w->st->user_data);
  CHECK(rv == (t->present ? 0 : ATUN_ERR_NOT_FOUND));
  if (rv == 0) --w->present;
  t->present = 0;
}

/* Runs one operation at |p| and returns the position after it.  Each takes
 * at least one byte, so a program of n bytes runs at most n operations. */
static const uint8_t *step(world *w, const uint8_t *p, const uint8_t *end) {
  uint8_t op = *p++;
  uint8_t arg = p < end ? *p++ : 0;
  switch (op % 6) {
    case 0: op_issue(w, arg); break;
    case 1:
      if (w->ntok > 0) {
        const char *sec = w->tok[arg % w->ntok].secret;
        redeem_checked(w, (const uint8_t *)sec, ATUN_TOKEN_SECRET_LEN);
      }
      break;
    case 2: w->now += (uint64_t)arg * SEC / 8; break;
    case 3: op_purge(w); break;
    case 4: op_remove(w, arg); break;
    default: {
      /* |arg| bytes of presented text follow, as many as there are. */
      size_t len = (size_t)(end - p) < arg ? (size_t)(end - p) : arg;
      redeem_checked(w, p, len);
      p += len;
    }
  }
  return p;
}

static void run_ops(const uint8_t *p, size_t n) {
  const uint8_t *end = p + n;
  atun_failmem fm;
  /* The first byte decides which allocation of the store fails, if any. */
  atun_failmem_init(&fm, p < end ? (long)(*p++ % 4) - 1 : -1);
  atun_token_memstore *ms;
  int rv = atun_token_memstore_new(&ms, STORE_CAP, &fm.mem);
  if (rv != 0) {
    CHECK(rv == ATUN_ERR_NOMEM && fm.live == 0);
    return;
  }
  atun_testrng g;
  atun_testrng_seed(&g, 2);
  world w;
  memset(&w, 0, sizeof(w));
  w.st = atun_token_memstore_store(ms);
  w.rand = atun_testrng_as_rand(&g);
  w.now = T0;
  while (p < end) p = step(&w, p, end);
  CHECK(atun_token_memstore_count(ms) == w.present);
  atun_token_memstore_del(ms);
  CHECK(fm.live == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  if ((data[0] & 1) == 0)
    run_parse(data + 1, size - 1);
  else
    run_ops(data + 1, size - 1);
  return 0;
}
