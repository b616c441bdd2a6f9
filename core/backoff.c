#include "backoff.h"

#include <string.h>

void atun_backoff_settings_default(atun_backoff_settings *settings) {
  settings->base_ns = 1 * ATUN_NS_PER_S;
  settings->cap_ns = 60 * ATUN_NS_PER_S;
  settings->stable_ns = 30 * ATUN_NS_PER_S;
}

static int settings_valid(const atun_backoff_settings *s) {
  return s->base_ns > 0 && s->base_ns <= s->cap_ns &&
         s->cap_ns <= ATUN_BACKOFF_DURATION_MAX_NS && s->stable_ns > 0 &&
         s->stable_ns <= ATUN_BACKOFF_DURATION_MAX_NS;
}

int atun_backoff_init(atun_backoff *b, const atun_backoff_settings *settings,
                      const atun_rand *rand) {
  if (b == NULL || settings == NULL || rand == NULL || rand->fill == NULL ||
      !settings_valid(settings))
    return ATUN_ERR_INVALID_ARGUMENT;
  memset(b, 0, sizeof(*b));
  b->settings = *settings;
  b->rand = *rand;
  b->ceiling_ns = settings->base_ns;
  b->connected_at = ATUN_TSTAMP_MAX;
  b->deadline = ATUN_TSTAMP_MAX;
  return 0;
}

/* Uniform in [0, max] by rejection: accepting only values below the largest
 * multiple of max + 1 keeps every outcome equally likely. */
static int draw_upto(const atun_rand *rand, uint64_t max, uint64_t *out) {
  uint64_t n = max + 1; /* max <= ATUN_BACKOFF_DURATION_MAX_NS: no wrap */
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  for (int i = 0; i < ATUN_BACKOFF_DRAW_TRIES_MAX; ++i) {
    uint8_t buf[8];
    if (rand->fill(buf, sizeof(buf), rand->user_data) != 0)
      return ATUN_ERR_CALLBACK_FAILURE;
    uint64_t v = 0;
    for (size_t k = 0; k < sizeof(buf); ++k) v = (v << 8) | buf[k];
    if (v < limit) {
      *out = v % n;
      return 0;
    }
  }
  return ATUN_ERR_CALLBACK_FAILURE;
}

int atun_backoff_next(atun_backoff *b, atun_tstamp ts, uint64_t *pdelay_ns) {
  if (ts == ATUN_TSTAMP_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  if (b->connected_at != ATUN_TSTAMP_MAX) return ATUN_ERR_STATE;
  uint64_t delay;
  int rv = draw_upto(&b->rand, b->ceiling_ns, &delay);
  if (rv != 0) return rv;
  /* Doubling saturates at the cap, so thousands of attempts never overflow. */
  const uint64_t cap = b->settings.cap_ns;
  b->ceiling_ns = b->ceiling_ns > cap / 2 ? cap : b->ceiling_ns * 2;
  ++b->attempt;
  /* ts + delay may only reach ATUN_TSTAMP_MAX, which reads as "no dial";
   * stop one short. */
  b->deadline = ts < ATUN_TSTAMP_MAX - delay ? ts + delay : ATUN_TSTAMP_MAX - 1;
  *pdelay_ns = delay;
  return 0;
}

atun_tstamp atun_backoff_get_expiry(const atun_backoff *b) {
  return b->deadline;
}

int atun_backoff_connected(atun_backoff *b, atun_tstamp ts) {
  if (ts == ATUN_TSTAMP_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  if (b->connected_at != ATUN_TSTAMP_MAX) return ATUN_ERR_STATE;
  b->connected_at = ts;
  b->deadline = ATUN_TSTAMP_MAX;
  return 0;
}

int atun_backoff_disconnected(atun_backoff *b, atun_tstamp ts) {
  if (ts == ATUN_TSTAMP_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  if (b->connected_at == ATUN_TSTAMP_MAX) return ATUN_ERR_STATE;
  if (ts >= b->connected_at && ts - b->connected_at >= b->settings.stable_ns) {
    b->ceiling_ns = b->settings.base_ns;
    b->attempt = 0;
  }
  b->connected_at = ATUN_TSTAMP_MAX;
  return 0;
}

uint64_t atun_backoff_attempt(const atun_backoff *b) { return b->attempt; }
