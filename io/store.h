/*
 * The gateway's durable state (SPEC §5) in SQLite: enrolled agents,
 * revocations, enrollment tokens (hashes only) and an audit trail.
 *
 * Every operation that changes more than one row runs in one IMMEDIATE
 * transaction, and no state is cached in the process: each call asks the
 * database.  Several gateway processes may therefore share one database file
 * (WAL mode, a busy timeout for contention), and a later network-backed
 * store only has to provide this same API.
 *
 * Timestamps are wall-clock nanoseconds (they are persisted and must keep
 * their meaning across restarts).  SQLite integers are signed, so stored
 * times must be at most INT64_MAX (year 2262); a later |ts| given to a query
 * is treated as INT64_MAX.  ATUN_TSTAMP_MAX in a record means "not set".
 *
 * Errors: ATUN_ERR_STORE is any SQLite failure (I/O, corruption, a lock
 * still held after the busy timeout); the database stays consistent, since
 * the failed transaction was rolled back.
 */
#ifndef ATUN_STORE_H
#define ATUN_STORE_H

#include "atun.h"
#include "ca_policy.h"
#include "token.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Schema version this code writes, kept in PRAGMA user_version.  A database
 * with a higher version was written by newer code and is refused. */
#define ATUN_STORE_SCHEMA_VERSION 1

#define ATUN_STORE_FINGERPRINT_LEN 32

/* Audit field bounds (bytes, without NUL).  Longer values are refused. */
#define ATUN_AUDIT_ACTOR_MAX 64
#define ATUN_AUDIT_ACTION_MAX 32
#define ATUN_AUDIT_SUBJECT_MAX 128
#define ATUN_AUDIT_DETAIL_MAX 512

/* Fault points, called between the steps of multi-step transactions so
 * tests can fail or kill the process there. */
typedef enum atun_store_fault {
  ATUN_STORE_FAULT_ENROLL_CONSUMED = 1, /* token marked used, no agent yet */
  ATUN_STORE_FAULT_ENROLL_AGENT = 2,    /* agent inserted, no audit row yet */
  ATUN_STORE_FAULT_ENROLL_COMMIT = 3,   /* everything written, not committed */
  ATUN_STORE_FAULT_REVOKE_COMMIT = 4    /* revocation written, not committed */
} atun_store_fault;

typedef struct atun_store_settings {
  int busy_timeout_ms;  /* how long to wait for another writer: 5000 */
  size_t agents_max;    /* agent rows, revoked ones included: 100000 */
  size_t tokens_max;    /* token rows (expired ones until purged): 10000 */
  size_t audit_max;     /* newest audit rows kept; older ones dropped: 100000 */
  /* Test hook: a nonzero return fails the transaction at |point| with
   * ATUN_ERR_STORE.  NULL in production. */
  int (*fault)(atun_store_fault point, void *user_data);
  void *fault_user_data;
} atun_store_settings;

void atun_store_settings_default(atun_store_settings *s);

typedef struct atun_store atun_store;

/*
 * Opens (creating it with mode 0600 if needed) the database at |path| and
 * migrates its schema to ATUN_STORE_SCHEMA_VERSION.  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT (bad settings), ATUN_ERR_VERSION (written by a
 * newer schema), ATUN_ERR_NOMEM or ATUN_ERR_STORE.
 */
int atun_store_open(atun_store **pst, const char *path,
                    const atun_store_settings *settings);

/* Closes |st| (NULL is allowed). */
void atun_store_close(atun_store *st);

/* The schema version of the open database. */
int atun_store_schema_version(atun_store *st);

/* --- agents ----------------------------------------------------------------- */

typedef struct atun_agent_record {
  char id[ATUN_UUID_STRLEN];
  char name[ATUN_AGENT_NAME_STRLEN];
  uint8_t fingerprint[ATUN_STORE_FINGERPRINT_LEN]; /* current certificate */
  uint8_t serial[ATUN_CA_SERIAL_MAX];
  size_t serial_len;
  atun_tstamp cert_not_after;
  atun_tstamp enrolled_at;
  atun_tstamp revoked_at; /* ATUN_TSTAMP_MAX: not revoked */
} atun_agent_record;

/*
 * Enrollment in one transaction: consumes the token whose hash is
 * |token_hash| at |ts| (as atun_store_token_consume), inserts |agent|
 * (its enrolled_at is set to |ts|, revoked_at ignored) and writes an audit
 * row by |actor|.  Either all of it is committed or none.  The token record
 * goes to |token_out| unless it is NULL, on success and on ATUN_ERR_USED /
 * ATUN_ERR_EXPIRED.
 *
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (bad id, name, serial, actor or |ts|),
 * ATUN_ERR_NOT_FOUND / ATUN_ERR_USED / ATUN_ERR_EXPIRED (the token),
 * ATUN_ERR_EXISTS (the id, or the name of a non-revoked agent, is taken),
 * ATUN_ERR_FULL (agents_max reached) or ATUN_ERR_STORE.
 */
int atun_store_enroll(atun_store *st, const uint8_t token_hash[ATUN_TOKEN_HASH_BYTES],
                      atun_tstamp ts, const atun_agent_record *agent,
                      const char *actor, atun_token_record *token_out);

/* Copies the agent |id| into |out|.  Returns 0, ATUN_ERR_NOT_FOUND or
 * ATUN_ERR_STORE. */
int atun_store_agent_get(atun_store *st, const char *id, atun_agent_record *out);

/* Copies at most |cap| agents, skipping |offset|, oldest enrollment first.
 * Returns the number copied or ATUN_ERR_STORE. */
ssize_t atun_store_agent_list(atun_store *st, atun_agent_record *out, size_t cap,
                              size_t offset);

/* Records a renewed certificate for agent |id| (and an audit row).  Returns
 * 0, ATUN_ERR_INVALID_ARGUMENT, ATUN_ERR_NOT_FOUND, ATUN_ERR_REVOKED or
 * ATUN_ERR_STORE. */
int atun_store_agent_renew(atun_store *st, const char *id,
                           const uint8_t fingerprint[ATUN_STORE_FINGERPRINT_LEN],
                           const uint8_t *serial, size_t serial_len,
                           atun_tstamp cert_not_after, atun_tstamp ts,
                           const char *actor);

/* Revokes agent |id| at |ts|: marks it, records its current certificate
 * fingerprint as revoked, and writes an audit row, in one transaction.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT, ATUN_ERR_NOT_FOUND, ATUN_ERR_REVOKED
 * (already revoked; nothing changes) or ATUN_ERR_STORE. */
int atun_store_agent_revoke(atun_store *st, const char *id, atun_tstamp ts,
                            const char *actor);

/* 1 if the agent |id| is revoked or |fingerprint| is a revoked certificate,
 * else 0 (either argument may be NULL).  Returns ATUN_ERR_STORE on failure:
 * callers must treat that as "refuse". */
int atun_store_is_revoked(atun_store *st, const char *id,
                          const uint8_t fingerprint[ATUN_STORE_FINGERPRINT_LEN]);

/* --- tokens -------------------------------------------------------------------- */
/* Same contracts as the callbacks of |atun_token_store| (core/token.h). */

int atun_store_token_put(atun_store *st, const atun_token_record *rec);
int atun_store_token_consume(atun_store *st,
                             const uint8_t hash[ATUN_TOKEN_HASH_BYTES],
                             atun_tstamp ts, atun_token_record *out);
ssize_t atun_store_token_purge(atun_store *st, atun_tstamp ts);
int atun_store_token_get(atun_store *st, const char *id, atun_token_record *out);
ssize_t atun_store_token_list(atun_store *st, atun_token_record *out, size_t cap,
                              size_t offset);
int atun_store_token_remove(atun_store *st, const char *id);

/* |st| as an |atun_token_store|, valid until |st| is closed. */
const atun_token_store *atun_store_token_store(atun_store *st);

/* --- audit ----------------------------------------------------------------------- */

typedef struct atun_audit_record {
  int64_t seq; /* increasing */
  atun_tstamp ts;
  char actor[ATUN_AUDIT_ACTOR_MAX + 1];
  char action[ATUN_AUDIT_ACTION_MAX + 1];
  char subject[ATUN_AUDIT_SUBJECT_MAX + 1];
  char detail[ATUN_AUDIT_DETAIL_MAX + 1];
} atun_audit_record;

/* Appends an audit row; only the newest audit_max rows are kept.  |detail|
 * may be NULL.  Returns 0, ATUN_ERR_INVALID_ARGUMENT (a field too long or
 * missing) or ATUN_ERR_STORE. */
int atun_store_audit_add(atun_store *st, atun_tstamp ts, const char *actor,
                         const char *action, const char *subject,
                         const char *detail);

/* Copies at most |cap| audit rows, skipping |offset|, oldest first.  Returns
 * the number copied or ATUN_ERR_STORE. */
ssize_t atun_store_audit_list(atun_store *st, atun_audit_record *out, size_t cap,
                              size_t offset);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_STORE_H */
