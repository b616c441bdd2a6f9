#include "token.h"

#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/sha256.h>

/* Secret material must not outlive its use in a stack frame the compiler
 * reuses; a volatile store keeps the wipe from being optimised away. */
static void wipe(void *p, size_t len) {
  volatile uint8_t *v = p;
  while (len-- > 0) *v++ = 0;
}

int atun_ct_memeq(const void *a, const void *b, size_t len) {
  const volatile uint8_t *pa = a;
  const volatile uint8_t *pb = b;
  unsigned acc = 0;
  for (size_t i = 0; i < len; ++i) acc |= (unsigned)(pa[i] ^ pb[i]);
  /* acc is 0..255: only acc == 0 borrows into bit 8. */
  return (int)(((acc - 1u) >> 8) & 1u);
}

/*
 * Base64url without tables or branches on the data: secrets are decoded and
 * encoded here, and a table lookup indexed by secret bytes leaks through the
 * cache.  range_mask() is all ones when lo <= c <= hi (all values < 256),
 * else zero: each subtraction wraps past bit 31 exactly when its bound holds.
 */
static unsigned range_mask(unsigned c, unsigned lo, unsigned hi) {
  return 0u - ((((lo - 1u - c) & (c - hi - 1u)) >> 31) & 1u);
}

/* The 6-bit value of |c| in the low bits; bit 8 set if |c| is not in the
 * base64url alphabet. */
static unsigned b64_value(unsigned c) {
  unsigned upper = range_mask(c, 'A', 'Z');
  unsigned lower = range_mask(c, 'a', 'z');
  unsigned digit = range_mask(c, '0', '9');
  unsigned dash = range_mask(c, '-', '-');
  unsigned under = range_mask(c, '_', '_');
  unsigned v = (upper & (c - 'A')) | (lower & (c - 'a' + 26u)) |
               (digit & (c - '0' + 52u)) | (dash & 62u) | (under & 63u);
  unsigned valid = upper | lower | digit | dash | under;
  return (v & 63u) | (~valid & 0x100u);
}

static char b64_char(unsigned v) {
  unsigned c = (range_mask(v, 0, 25) & (v + 'A')) |
               (range_mask(v, 26, 51) & (v - 26u + 'a')) |
               (range_mask(v, 52, 61) & (v - 52u + '0')) |
               (range_mask(v, 62, 62) & (unsigned)'-') |
               (range_mask(v, 63, 63) & (unsigned)'_');
  return (char)c;
}

/* Writes ATUN_TOKEN_SECRET_LEN characters and a NUL. */
static void secret_encode(char *out, const uint8_t *in) {
  uint32_t acc = 0;
  unsigned bits = 0;
  size_t n = 0;
  for (size_t i = 0; i < ATUN_TOKEN_SECRET_BYTES; ++i) {
    acc = (acc << 8) | in[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out[n++] = b64_char((acc >> bits) & 63u);
    }
  }
  /* 256 = 42 * 6 + 4: the last character carries 4 bits and 2 zero bits. */
  out[n++] = b64_char((acc << (6 - bits)) & 63u);
  out[n] = '\0';
  ATUN_ASSERT(n == ATUN_TOKEN_SECRET_LEN);
}

int atun_token_secret_decode(uint8_t out[ATUN_TOKEN_SECRET_BYTES],
                             const char *secret, size_t len) {
  if (secret == NULL || len != ATUN_TOKEN_SECRET_LEN) return ATUN_ERR_MALFORMED;
  uint32_t acc = 0;
  unsigned bits = 0;
  unsigned bad = 0;
  size_t n = 0;
  for (size_t i = 0; i < len; ++i) {
    unsigned v = b64_value((unsigned char)secret[i]);
    bad |= v;
    acc = (acc << 6) | (v & 63u);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (uint8_t)(acc >> bits);
    }
  }
  ATUN_ASSERT(n == ATUN_TOKEN_SECRET_BYTES && bits == 2);
  /* Nonzero leftover bits would give a second spelling of the same secret. */
  bad |= (acc & 3u) << 8;
  if ((bad & 0x300u) != 0) {
    wipe(out, ATUN_TOKEN_SECRET_BYTES);
    return ATUN_ERR_MALFORMED;
  }
  return 0;
}

int atun_token_hash(uint8_t out[ATUN_TOKEN_HASH_BYTES],
                    const uint8_t secret[ATUN_TOKEN_SECRET_BYTES]) {
  if (wc_Sha256Hash(secret, ATUN_TOKEN_SECRET_BYTES, out) != 0)
    return ATUN_ERR_INTERNAL;
  return 0;
}

static int is_hex_lower(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

int atun_token_id_valid(const char *id, size_t len) {
  if (id == NULL || len != ATUN_TOKEN_ID_LEN) return 0;
  for (size_t i = 0; i < len; ++i)
    if (!is_hex_lower(id[i])) return 0;
  return 1;
}

static void id_format(char *out, const uint8_t *bytes) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < ATUN_TOKEN_ID_BYTES; ++i) {
    out[2 * i] = hex[bytes[i] >> 4];
    out[2 * i + 1] = hex[bytes[i] & 15];
  }
  out[ATUN_TOKEN_ID_LEN] = '\0';
}

/* NULL means "no name"; otherwise 1..ATUN_TOKEN_NAME_MAX printable ASCII. */
static int name_valid(const char *name) {
  if (name == NULL) return 1;
  size_t i = 0;
  for (; name[i] != '\0'; ++i) {
    if (i == ATUN_TOKEN_NAME_MAX) return 0;
    if (name[i] < 0x20 || name[i] > 0x7e) return 0;
  }
  return i > 0;
}

static int issue_check(const atun_token_store *store, const atun_rand *rand,
                       atun_tstamp ts, uint64_t ttl_ns, const char *name,
                       const char *out_secret, size_t secret_cap) {
  if (store == NULL || rand == NULL || rand->fill == NULL || out_secret == NULL)
    return ATUN_ERR_INVALID_ARGUMENT;
  if (ts == ATUN_TSTAMP_MAX || ttl_ns == 0 || ttl_ns > ATUN_TOKEN_TTL_MAX_NS)
    return ATUN_ERR_INVALID_ARGUMENT;
  /* expires_at must stay below ATUN_TSTAMP_MAX, which means "never". */
  if (ts >= ATUN_TSTAMP_MAX - ttl_ns) return ATUN_ERR_INVALID_ARGUMENT;
  if (!name_valid(name)) return ATUN_ERR_BAD_NAME;
  if (secret_cap < ATUN_TOKEN_SECRET_STRLEN) return ATUN_ERR_NOBUF;
  return 0;
}

/* Draws the secret and the id; fills everything of |rec| but the hash. */
static int issue_draw(const atun_rand *rand, atun_tstamp ts, uint64_t ttl_ns,
                      const char *name, uint8_t *secret,
                      atun_token_record *rec) {
  uint8_t id[ATUN_TOKEN_ID_BYTES];
  if (rand->fill(secret, ATUN_TOKEN_SECRET_BYTES, rand->user_data) != 0 ||
      rand->fill(id, sizeof(id), rand->user_data) != 0)
    return ATUN_ERR_CALLBACK_FAILURE;
  memset(rec, 0, sizeof(*rec));
  id_format(rec->id, id);
  rec->created_at = ts;
  rec->expires_at = ts + ttl_ns;
  rec->used_at = ATUN_TSTAMP_MAX;
  if (name != NULL) memcpy(rec->name, name, strlen(name) + 1);
  return 0;
}

int atun_token_issue(const atun_token_store *store, const atun_rand *rand,
                     atun_tstamp ts, uint64_t ttl_ns, const char *name,
                     char *out_secret, size_t secret_cap,
                     atun_token_record *out_record) {
  if (out_secret != NULL && secret_cap > 0) out_secret[0] = '\0';
  int rv = issue_check(store, rand, ts, ttl_ns, name, out_secret, secret_cap);
  if (rv != 0) return rv;
  uint8_t secret[ATUN_TOKEN_SECRET_BYTES];
  atun_token_record rec;
  rv = issue_draw(rand, ts, ttl_ns, name, secret, &rec);
  if (rv == 0) rv = atun_token_hash(rec.hash, secret);
  if (rv == 0) rv = store->put(&rec, store->user_data);
  if (rv == 0) {
    secret_encode(out_secret, secret);
    if (out_record != NULL) *out_record = rec;
  }
  wipe(secret, sizeof(secret));
  return rv;
}

int atun_token_redeem(const atun_token_store *store, const char *secret,
                      size_t secretlen, atun_tstamp ts,
                      atun_token_record *out_record) {
  if (out_record != NULL) memset(out_record, 0, sizeof(*out_record));
  if (store == NULL || ts == ATUN_TSTAMP_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  uint8_t bytes[ATUN_TOKEN_SECRET_BYTES];
  uint8_t hash[ATUN_TOKEN_HASH_BYTES];
  int rv = atun_token_secret_decode(bytes, secret, secretlen);
  if (rv != 0) return rv;
  rv = atun_token_hash(hash, bytes);
  wipe(bytes, sizeof(bytes));
  if (rv != 0) return rv;
  return store->consume(hash, ts, out_record, store->user_data);
}

/* --- in-memory store ----------------------------------------------------- */

struct atun_token_memstore {
  atun_token_store store; /* user_data points back to this object */
  const atun_mem *mem;
  atun_token_record *recs; /* oldest first */
  size_t count;
  size_t capacity;
};

/* Scans every slot whatever matches, so the time taken does not tell how
 * far into the table a presented hash was found. */
static size_t find_hash(const atun_token_memstore *ms, const uint8_t *hash) {
  size_t found = ms->count;
  for (size_t i = 0; i < ms->count; ++i)
    if (atun_ct_memeq(ms->recs[i].hash, hash, ATUN_TOKEN_HASH_BYTES))
      found = i;
  return found;
}

static size_t find_id(const atun_token_memstore *ms, const char *id) {
  for (size_t i = 0; i < ms->count; ++i)
    if (strcmp(ms->recs[i].id, id) == 0) return i;
  return ms->count;
}

static int ms_put(const atun_token_record *rec, void *ud) {
  atun_token_memstore *ms = ud;
  if (find_hash(ms, rec->hash) != ms->count || find_id(ms, rec->id) != ms->count)
    return ATUN_ERR_EXISTS;
  if (ms->count == ms->capacity) return ATUN_ERR_FULL;
  ms->recs[ms->count++] = *rec;
  return 0;
}

static int ms_consume(const uint8_t hash[ATUN_TOKEN_HASH_BYTES],
                      atun_tstamp ts, atun_token_record *out, void *ud) {
  atun_token_memstore *ms = ud;
  size_t i = find_hash(ms, hash);
  if (i == ms->count) return ATUN_ERR_NOT_FOUND;
  atun_token_record *rec = &ms->recs[i];
  int rv = 0;
  if (rec->used_at != ATUN_TSTAMP_MAX)
    rv = ATUN_ERR_USED;
  else if (ts >= rec->expires_at)
    rv = ATUN_ERR_EXPIRED;
  else
    rec->used_at = ts;
  if (out != NULL) *out = *rec;
  return rv;
}

static ssize_t ms_purge(atun_tstamp ts, void *ud) {
  atun_token_memstore *ms = ud;
  size_t kept = 0;
  for (size_t i = 0; i < ms->count; ++i)
    if (ts < ms->recs[i].expires_at) ms->recs[kept++] = ms->recs[i];
  size_t removed = ms->count - kept;
  ms->count = kept;
  return (ssize_t)removed;
}

static int ms_get(const char *id, atun_token_record *out, void *ud) {
  atun_token_memstore *ms = ud;
  size_t i = find_id(ms, id);
  if (i == ms->count) return ATUN_ERR_NOT_FOUND;
  *out = ms->recs[i];
  return 0;
}

static ssize_t ms_list(atun_token_record *out, size_t cap, size_t offset,
                       void *ud) {
  atun_token_memstore *ms = ud;
  if (offset >= ms->count) return 0;
  size_t n = ms->count - offset;
  if (n > cap) n = cap;
  if (n > 0) memcpy(out, ms->recs + offset, n * sizeof(*out));
  return (ssize_t)n;
}

static int ms_remove(const char *id, void *ud) {
  atun_token_memstore *ms = ud;
  size_t i = find_id(ms, id);
  if (i == ms->count) return ATUN_ERR_NOT_FOUND;
  /* Shift rather than swap: list() promises oldest first. */
  memmove(ms->recs + i, ms->recs + i + 1,
          (ms->count - i - 1) * sizeof(*ms->recs));
  --ms->count;
  return 0;
}

int atun_token_memstore_new(atun_token_memstore **pms, size_t capacity,
                            const atun_mem *mem) {
  if (pms == NULL || mem == NULL || capacity == 0 ||
      capacity > ATUN_TOKEN_MEMSTORE_CAPACITY_MAX)
    return ATUN_ERR_INVALID_ARGUMENT;
  atun_token_memstore *ms = atun_mem_calloc(mem, 1, sizeof(*ms));
  if (ms == NULL) goto fail_ms;
  ms->recs = atun_mem_calloc(mem, capacity, sizeof(*ms->recs));
  if (ms->recs == NULL) goto fail_recs;
  ms->mem = mem;
  ms->capacity = capacity;
  ms->store.user_data = ms;
  ms->store.put = ms_put;
  ms->store.consume = ms_consume;
  ms->store.purge = ms_purge;
  ms->store.get = ms_get;
  ms->store.list = ms_list;
  ms->store.remove = ms_remove;
  *pms = ms;
  return 0;

fail_recs:
  atun_mem_free(mem, ms);
fail_ms:
  return ATUN_ERR_NOMEM;
}

void atun_token_memstore_del(atun_token_memstore *ms) {
  if (ms == NULL) return;
  const atun_mem *mem = ms->mem;
  atun_mem_free(mem, ms->recs);
  atun_mem_free(mem, ms);
}

const atun_token_store *atun_token_memstore_store(atun_token_memstore *ms) {
  return &ms->store;
}

size_t atun_token_memstore_count(const atun_token_memstore *ms) {
  return ms->count;
}
