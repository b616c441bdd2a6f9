/*
 * Per-source rate limiting (SPEC §6: "enrollment rate-limited"): one token
 * bucket per source, kept in a table of bounded size.
 *
 * A bucket holds up to |burst| tokens and gains one every |interval_ns|; a
 * request takes one token or is refused with the time until the next token.
 * The bucket is stored as "credit" in nanoseconds (tokens * interval_ns), so
 * refilling is a saturating addition of elapsed time and no division or
 * rounding enters the accounting.
 *
 * Sources are keyed by address.  IPv6 addresses are truncated to
 * |ipv6_prefix_len| bits first: one host usually owns a whole /64, and a
 * per-/128 limit would let it draw a fresh bucket per address.
 *
 * The table holds at most |entries_max| sources.  When it is full, the least
 * recently used source is forgotten; a forgotten source starts again with a
 * full bucket.  So a sender that cycles through more than |entries_max|
 * prefixes can get up to |burst| requests per prefix per cycle: the bound is
 * on memory, and the per-source limit holds for any source that stays in the
 * table.  A caller that needs a global ceiling as well can keep a second
 * limiter and key it with one fixed address.
 *
 * Sans-I/O: time is passed in, the hash key comes from |atun_rand| and memory
 * from |atun_mem|, all of it allocated at creation.
 */
#ifndef ATUN_RATELIMIT_H
#define ATUN_RATELIMIT_H

#include "addr.h"
#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bounds on the settings: a table of up to a million sources (about 64 MiB),
 * a burst of up to 100,000 and intervals of up to a day, which keeps
 * burst * interval_ns (8.64e18 at most) below 2^64. */
#define ATUN_RATELIMIT_ENTRIES_MAX ((size_t)1 << 20)
#define ATUN_RATELIMIT_BURST_MAX 100000u
#define ATUN_RATELIMIT_INTERVAL_MAX_NS ((uint64_t)24 * 3600 * ATUN_NS_PER_S)

typedef struct atun_ratelimit_settings {
  uint32_t burst;          /* bucket size in requests; default 5 */
  uint64_t interval_ns;    /* one request regained per interval; default 12 s */
  size_t entries_max;      /* sources remembered; default 4096 */
  uint8_t ipv6_prefix_len; /* IPv6 key length in bits, 1..128; default 64 */
} atun_ratelimit_settings;

typedef struct atun_ratelimit atun_ratelimit;

/* Fills |settings| with the defaults: 5 requests at once, then one every
 * 12 s (5 a minute), 4096 sources, IPv6 keyed by /64. */
void atun_ratelimit_settings_default(atun_ratelimit_settings *settings);

/* Creates a limiter.  |rand| is called once, for the hash key.  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT (a setting out of its bounds, or a NULL
 * argument), ATUN_ERR_CALLBACK_FAILURE (|rand| failed) or ATUN_ERR_NOMEM. */
int atun_ratelimit_new(atun_ratelimit **prl,
                       const atun_ratelimit_settings *settings,
                       const atun_rand *rand, const atun_mem *mem);

/* Frees |rl| (NULL is allowed). */
void atun_ratelimit_del(atun_ratelimit *rl);

/*
 * Takes one token from the bucket of |src| at |ts|.  Time that runs
 * backwards (|ts| below an earlier call's) refills nothing.  On refusal
 * |*pwait_ns| (if |pwait_ns| is not NULL) is the time until a token is
 * available, between 1 and |interval_ns|; on success it is 0.
 *
 * Returns 0, ATUN_ERR_WOULDBLOCK (no token) or ATUN_ERR_INVALID_ARGUMENT
 * (|ts| unset or |src| of an unknown family).
 */
int atun_ratelimit_take(atun_ratelimit *rl, const atun_addr *src, atun_tstamp ts,
                        uint64_t *pwait_ns);

/* Number of sources in the table (at most entries_max). */
size_t atun_ratelimit_count(const atun_ratelimit *rl);

/* Number of sources forgotten to make room since creation. */
uint64_t atun_ratelimit_evictions(const atun_ratelimit *rl);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_RATELIMIT_H */
