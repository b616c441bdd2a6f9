#include "ratelimit.h"

#include <string.h>

/* Index meaning "no entry" in hash chains and in the recency list. */
#define NIL UINT32_MAX
#define KEY_LEN 17 /* family byte + 16 address bytes */

typedef struct entry {
  uint8_t key[KEY_LEN];
  uint32_t hnext; /* next entry in the same hash chain */
  uint32_t newer; /* recency list, toward the most recent */
  uint32_t older;
  uint64_t credit_ns; /* tokens * interval_ns, at most credit_max_ns */
  atun_tstamp last;   /* latest |ts| seen for this source */
} entry;

struct atun_ratelimit {
  atun_ratelimit_settings settings;
  const atun_mem *mem;
  uint64_t credit_max_ns;
  uint64_t k0, k1; /* hash key */
  entry *entries;  /* entries_max slots, the first |used| in use */
  size_t used;
  uint32_t *heads; /* hash chain heads, mask + 1 of them */
  size_t mask;
  uint32_t newest, oldest;
  uint64_t evictions;
};

void atun_ratelimit_settings_default(atun_ratelimit_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  settings->burst = 5;
  settings->interval_ns = 12 * ATUN_NS_PER_S;
  settings->entries_max = 4096;
  settings->ipv6_prefix_len = 64;
}

static int settings_valid(const atun_ratelimit_settings *s) {
  return s->burst >= 1 && s->burst <= ATUN_RATELIMIT_BURST_MAX &&
         s->interval_ns >= 1 && s->interval_ns <= ATUN_RATELIMIT_INTERVAL_MAX_NS &&
         s->entries_max >= 1 && s->entries_max <= ATUN_RATELIMIT_ENTRIES_MAX &&
         s->ipv6_prefix_len >= 1 && s->ipv6_prefix_len <= 128;
}

/* Twice the entries, rounded up to a power of two: chains stay short on
 * average even when the table is full. */
static size_t bucket_count(size_t entries) {
  size_t n = 1;
  while (n < 2 * entries) n <<= 1;
  return n;
}

int atun_ratelimit_new(atun_ratelimit **prl,
                       const atun_ratelimit_settings *settings,
                       const atun_rand *rand, const atun_mem *mem) {
  if (prl == NULL || settings == NULL || rand == NULL || rand->fill == NULL ||
      mem == NULL || !settings_valid(settings))
    return ATUN_ERR_INVALID_ARGUMENT;
  uint8_t seed[16];
  if (rand->fill(seed, sizeof(seed), rand->user_data) != 0)
    return ATUN_ERR_CALLBACK_FAILURE;
  atun_ratelimit *rl = atun_mem_calloc(mem, 1, sizeof(*rl));
  if (rl == NULL) return ATUN_ERR_NOMEM;
  size_t nb = bucket_count(settings->entries_max);
  rl->entries = atun_mem_calloc(mem, settings->entries_max, sizeof(entry));
  rl->heads = atun_mem_malloc(mem, nb * sizeof(uint32_t));
  if (rl->entries == NULL || rl->heads == NULL) {
    atun_mem_free(mem, rl->entries);
    atun_mem_free(mem, rl->heads);
    atun_mem_free(mem, rl);
    return ATUN_ERR_NOMEM;
  }
  memset(rl->heads, 0xff, nb * sizeof(uint32_t));
  rl->settings = *settings;
  rl->mem = mem;
  rl->credit_max_ns = (uint64_t)settings->burst * settings->interval_ns;
  memcpy(&rl->k0, seed, 8);
  memcpy(&rl->k1, seed + 8, 8);
  rl->mask = nb - 1;
  rl->newest = rl->oldest = NIL;
  *prl = rl;
  return 0;
}

void atun_ratelimit_del(atun_ratelimit *rl) {
  if (rl == NULL) return;
  atun_mem_free(rl->mem, rl->entries);
  atun_mem_free(rl->mem, rl->heads);
  atun_mem_free(rl->mem, rl);
}

size_t atun_ratelimit_count(const atun_ratelimit *rl) { return rl->used; }

uint64_t atun_ratelimit_evictions(const atun_ratelimit *rl) {
  return rl->evictions;
}

/* Builds the table key: IPv4 whole, IPv6 cut to ipv6_prefix_len bits. */
static int make_key(const atun_ratelimit *rl, const atun_addr *src,
                    uint8_t key[KEY_LEN]) {
  memset(key, 0, KEY_LEN);
  key[0] = src->family;
  if (src->family == ATUN_AF_INET) {
    memcpy(key + 1, src->bytes, 4);
    return 0;
  }
  if (src->family != ATUN_AF_INET6) return ATUN_ERR_INVALID_ARGUMENT;
  unsigned bits = rl->settings.ipv6_prefix_len;
  memcpy(key + 1, src->bytes, bits / 8);
  if (bits % 8 != 0)
    key[1 + bits / 8] = (uint8_t)(src->bytes[bits / 8] & (0xffu << (8 - bits % 8)));
  return 0;
}

static uint64_t fmix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

/* A keyed mix, not a cryptographic hash: the random key keeps a sender from
 * predicting collisions offline, and the chains can not grow past
 * entries_max whatever it does. */
static size_t key_hash(const atun_ratelimit *rl, const uint8_t key[KEY_LEN]) {
  uint64_t w0, w1;
  memcpy(&w0, key + 1, 8);
  memcpy(&w1, key + 9, 8);
  uint64_t h = fmix(rl->k0 ^ key[0]);
  h = fmix(h ^ w0 ^ rl->k1);
  h = fmix(h ^ w1 ^ rl->k0);
  return (size_t)(h & rl->mask);
}

static uint32_t chain_find(const atun_ratelimit *rl, size_t bucket,
                           const uint8_t key[KEY_LEN]) {
  for (uint32_t i = rl->heads[bucket]; i != NIL; i = rl->entries[i].hnext)
    if (memcmp(rl->entries[i].key, key, KEY_LEN) == 0) return i;
  return NIL;
}

static void chain_unlink(atun_ratelimit *rl, uint32_t idx) {
  uint32_t *link = &rl->heads[key_hash(rl, rl->entries[idx].key)];
  while (*link != idx) {
    ATUN_ASSERT(*link != NIL);
    link = &rl->entries[*link].hnext;
  }
  *link = rl->entries[idx].hnext;
}

static void lru_unlink(atun_ratelimit *rl, uint32_t idx) {
  entry *e = &rl->entries[idx];
  if (e->newer != NIL)
    rl->entries[e->newer].older = e->older;
  else
    rl->newest = e->older;
  if (e->older != NIL)
    rl->entries[e->older].newer = e->newer;
  else
    rl->oldest = e->newer;
}

static void lru_push_newest(atun_ratelimit *rl, uint32_t idx) {
  entry *e = &rl->entries[idx];
  e->newer = NIL;
  e->older = rl->newest;
  if (rl->newest != NIL) rl->entries[rl->newest].newer = idx;
  rl->newest = idx;
  if (rl->oldest == NIL) rl->oldest = idx;
}

/* A free slot, or the least recently used one once the table is full. */
static uint32_t slot_take(atun_ratelimit *rl) {
  if (rl->used < rl->settings.entries_max) return (uint32_t)rl->used++;
  uint32_t idx = rl->oldest;
  ATUN_ASSERT(idx != NIL);
  chain_unlink(rl, idx);
  lru_unlink(rl, idx);
  ++rl->evictions;
  return idx;
}

static uint32_t entry_insert(atun_ratelimit *rl, size_t bucket,
                             const uint8_t key[KEY_LEN], atun_tstamp ts) {
  uint32_t idx = slot_take(rl);
  entry *e = &rl->entries[idx];
  memcpy(e->key, key, KEY_LEN);
  e->credit_ns = rl->credit_max_ns;
  e->last = ts;
  e->hnext = rl->heads[bucket];
  rl->heads[bucket] = idx;
  lru_push_newest(rl, idx);
  return idx;
}

static void refill(const atun_ratelimit *rl, entry *e, atun_tstamp ts) {
  if (ts <= e->last) return;
  uint64_t elapsed = ts - e->last;
  e->last = ts;
  if (elapsed >= rl->credit_max_ns - e->credit_ns)
    e->credit_ns = rl->credit_max_ns;
  else
    e->credit_ns += elapsed;
}

int atun_ratelimit_take(atun_ratelimit *rl, const atun_addr *src, atun_tstamp ts,
                        uint64_t *pwait_ns) {
  if (pwait_ns != NULL) *pwait_ns = 0;
  uint8_t key[KEY_LEN];
  if (src == NULL || ts == ATUN_TSTAMP_MAX || make_key(rl, src, key) != 0)
    return ATUN_ERR_INVALID_ARGUMENT;
  size_t bucket = key_hash(rl, key);
  uint32_t idx = chain_find(rl, bucket, key);
  if (idx == NIL) {
    idx = entry_insert(rl, bucket, key, ts);
  } else {
    /* A refused source is touched too: evicting it would hand it a full
     * bucket, so active senders, limited or not, are the ones kept. */
    lru_unlink(rl, idx);
    lru_push_newest(rl, idx);
    refill(rl, &rl->entries[idx], ts);
  }
  entry *e = &rl->entries[idx];
  uint64_t cost = rl->settings.interval_ns;
  if (e->credit_ns >= cost) {
    e->credit_ns -= cost;
    return 0;
  }
  if (pwait_ns != NULL) *pwait_ns = cost - e->credit_ns;
  return ATUN_ERR_WOULDBLOCK;
}
