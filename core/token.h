/*
 * Enrollment tokens (SPEC §5): one-time secrets that let an agent obtain its
 * first certificate.
 *
 * The operator is handed the secret once, as ATUN_TOKEN_SECRET_LEN characters
 * of unpadded base64url (256 random bits).  The gateway keeps only a record
 * holding the SHA-256 of the decoded secret bytes, so a leaked database does
 * not let anyone enroll.  Each token also has a short random public id (hex)
 * so it can be listed, looked up and deleted without the secret.
 *
 * Persistence is behind |atun_token_store|, a small table of callbacks: the
 * durable store (io/) and the in-memory store below (tests, simulator) both
 * implement it.  Timestamps in records are persisted, so a durable store's
 * caller must pass a clock that keeps its meaning across restarts (wall-clock
 * nanoseconds), not a per-boot monotonic one.
 */
#ifndef ATUN_TOKEN_H
#define ATUN_TOKEN_H

#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Random bytes in a secret, and the text length of its unpadded base64url
 * form: ceil(32 * 8 / 6) = 43 characters. */
#define ATUN_TOKEN_SECRET_BYTES 32
#define ATUN_TOKEN_SECRET_LEN 43
/* Buffer size for the secret text, terminating NUL included. */
#define ATUN_TOKEN_SECRET_STRLEN (ATUN_TOKEN_SECRET_LEN + 1)

#define ATUN_TOKEN_HASH_BYTES 32

/* The public id: 8 random bytes as 16 lowercase hex digits. */
#define ATUN_TOKEN_ID_BYTES 8
#define ATUN_TOKEN_ID_LEN (2 * ATUN_TOKEN_ID_BYTES)
#define ATUN_TOKEN_ID_STRLEN (ATUN_TOKEN_ID_LEN + 1)

/* Optional operator label: 1..ATUN_TOKEN_NAME_MAX printable ASCII bytes
 * (0x20..0x7e).  It ends up in JSON, logs and SQL, each of which escapes it;
 * ASCII keeps every one of those free of encoding questions. */
#define ATUN_TOKEN_NAME_MAX 64
#define ATUN_TOKEN_NAME_STRLEN (ATUN_TOKEN_NAME_MAX + 1)

/* An enrollment token is meant to be used within hours; a month is the
 * longest lifetime accepted. */
#define ATUN_TOKEN_TTL_MAX_NS ((uint64_t)30 * 24 * 3600 * ATUN_NS_PER_S)

/* What is stored about a token.  It never contains the secret.  A token is
 * expired at any |ts| >= |expires_at|. */
typedef struct atun_token_record {
  char id[ATUN_TOKEN_ID_STRLEN];         /* NUL-terminated hex */
  uint8_t hash[ATUN_TOKEN_HASH_BYTES];   /* SHA-256 of the secret bytes */
  atun_tstamp created_at;
  atun_tstamp expires_at;                /* created_at + ttl */
  atun_tstamp used_at;                   /* ATUN_TSTAMP_MAX: not used yet */
  char name[ATUN_TOKEN_NAME_STRLEN];     /* "" when the token has no name */
} atun_token_record;

/*
 * The persistence interface.  Every callback gets |user_data| back.  Each
 * call must be atomic on its own: in particular two concurrent |consume|
 * calls for one hash must never both return 0, and a consumed token must stay
 * consumed across restarts of a durable store.
 */
typedef struct atun_token_store {
  void *user_data;

  /* Stores a copy of |rec| (a fresh, unused token).  Returns 0,
   * ATUN_ERR_EXISTS (the id or the hash is already stored), ATUN_ERR_FULL (the
   * store's capacity is reached), ATUN_ERR_NOMEM or ATUN_ERR_STORE. */
  int (*put)(const atun_token_record *rec, void *user_data);

  /* Finds the token whose hash equals |hash| and, if it is neither used nor
   * expired at |ts|, marks it used at |ts|.  Copies the record as it is after
   * the call into |out| when |out| is not NULL and the token exists.  Returns
   * 0, ATUN_ERR_NOT_FOUND, ATUN_ERR_USED (checked before expiry, so a used
   * token reports USED until it is purged), ATUN_ERR_EXPIRED or
   * ATUN_ERR_STORE. */
  int (*consume)(const uint8_t hash[ATUN_TOKEN_HASH_BYTES], atun_tstamp ts,
                 atun_token_record *out, void *user_data);

  /* Deletes every token expired at |ts| (used or not; a used token that has
   * not expired is kept, so reuse reports ATUN_ERR_USED until then).  Returns
   * the number deleted or ATUN_ERR_STORE. */
  ssize_t (*purge)(atun_tstamp ts, void *user_data);

  /* Copies the token with public id |id| (NUL-terminated) into |out|.
   * Returns 0, ATUN_ERR_NOT_FOUND or ATUN_ERR_STORE. */
  int (*get)(const char *id, atun_token_record *out, void *user_data);

  /* Copies at most |cap| tokens, skipping the first |offset|, into |out|, in
   * a stable order (oldest first).  Returns the number copied (0 past the
   * end) or ATUN_ERR_STORE. */
  ssize_t (*list)(atun_token_record *out, size_t cap, size_t offset,
                  void *user_data);

  /* Deletes the token with public id |id|, used or not.  Returns 0,
   * ATUN_ERR_NOT_FOUND or ATUN_ERR_STORE. */
  int (*remove)(const char *id, void *user_data);
} atun_token_store;

/* Compares |len| bytes of |a| and |b| in time that depends only on |len|.
 * Returns 1 if they are equal (always for |len| == 0), else 0. */
int atun_ct_memeq(const void *a, const void *b, size_t len);

/* Decodes a presented secret of |len| bytes (no NUL needed) into
 * |out|.  Only the canonical form is accepted: exactly ATUN_TOKEN_SECRET_LEN
 * characters of the base64url alphabet, no padding, unused low bits zero.
 * Returns 0 or ATUN_ERR_MALFORMED. */
int atun_token_secret_decode(uint8_t out[ATUN_TOKEN_SECRET_BYTES],
                             const char *secret, size_t len);

/* Writes the SHA-256 of |secret| into |out|.  Returns 0 or
 * ATUN_ERR_INTERNAL (the hash function failed). */
int atun_token_hash(uint8_t out[ATUN_TOKEN_HASH_BYTES],
                    const uint8_t secret[ATUN_TOKEN_SECRET_BYTES]);

/* Nonzero if |id| of |len| bytes is a well-formed public id. */
int atun_token_id_valid(const char *id, size_t len);

/*
 * Creates a token valid from |ts| for |ttl_ns| (1..ATUN_TOKEN_TTL_MAX_NS),
 * labelled |name| (NULL: no name), and stores its record in |store|.  The
 * secret text, NUL-terminated, goes to |out_secret| (|secret_cap| >=
 * ATUN_TOKEN_SECRET_STRLEN); it exists nowhere else afterwards.  The stored
 * record is copied to |out_record| unless it is NULL.  On any error nothing
 * is stored and |out_secret| holds an empty string (if it has room).
 *
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (|ts| unset, |ttl_ns| out of range or
 * |ts| + |ttl_ns| overflows), ATUN_ERR_BAD_NAME, ATUN_ERR_NOBUF,
 * ATUN_ERR_CALLBACK_FAILURE (|rand| failed), ATUN_ERR_INTERNAL, or what
 * |store|->put returns.
 */
int atun_token_issue(const atun_token_store *store, const atun_rand *rand,
                     atun_tstamp ts, uint64_t ttl_ns, const char *name,
                     char *out_secret, size_t secret_cap,
                     atun_token_record *out_record);

/*
 * Redeems the presented |secret| of |secretlen| bytes at |ts|: rejects a
 * malformed string before hashing, then consumes the token atomically.  On
 * success and on ATUN_ERR_USED / ATUN_ERR_EXPIRED the record goes to
 * |out_record| unless it is NULL (for audit logs; it holds no secret).
 *
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (|ts| unset), ATUN_ERR_MALFORMED,
 * ATUN_ERR_INTERNAL, or what |store|->consume returns (ATUN_ERR_NOT_FOUND,
 * ATUN_ERR_USED, ATUN_ERR_EXPIRED, ATUN_ERR_STORE).
 */
int atun_token_redeem(const atun_token_store *store, const char *secret,
                      size_t secretlen, atun_tstamp ts,
                      atun_token_record *out_record);

/*
 * The in-memory store: a fixed-capacity table allocated once, for tests and
 * the simulator.  Lookups scan the whole table, comparing every hash in
 * constant time; that is linear per call, so the capacity is kept where a
 * full table still redeems in about 0.1 ms.  A gateway uses the durable
 * store, which indexes the hash.
 */
#define ATUN_TOKEN_MEMSTORE_CAPACITY_MAX 4096

typedef struct atun_token_memstore atun_token_memstore;

/* Creates a store for up to |capacity| (1..ATUN_TOKEN_MEMSTORE_CAPACITY_MAX)
 * tokens, all memory taken from |mem| here.  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT or ATUN_ERR_NOMEM. */
int atun_token_memstore_new(atun_token_memstore **pms, size_t capacity,
                            const atun_mem *mem);

/* Frees |ms| (NULL is allowed). */
void atun_token_memstore_del(atun_token_memstore *ms);

/* The store interface of |ms|, valid until |ms| is deleted. */
const atun_token_store *atun_token_memstore_store(atun_token_memstore *ms);

/* Number of tokens held. */
size_t atun_token_memstore_count(const atun_token_memstore *ms);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_TOKEN_H */
