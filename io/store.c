#include "store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct atun_store {
  sqlite3 *db;
  atun_store_settings settings;
  atun_token_store tokens;
};

/* Migrations: entry v moves a database from version v to v + 1.  Applied in
 * order, each in its own transaction; never edit a released entry, append a
 * new one. */
static const char *const migrations[ATUN_STORE_SCHEMA_VERSION] = {
    "CREATE TABLE agents ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  serial TEXT NOT NULL,"
    "  cert_not_after INTEGER NOT NULL,"
    "  enrolled_at INTEGER NOT NULL,"
    "  revoked_at INTEGER);"
    /* Names identify agents for operators and pins: unique among the live. */
    "CREATE UNIQUE INDEX agents_live_name ON agents(name)"
    "  WHERE revoked_at IS NULL;"
    "CREATE TABLE revoked_certs ("
    "  fingerprint TEXT PRIMARY KEY,"
    "  agent_id TEXT NOT NULL,"
    "  revoked_at INTEGER NOT NULL);"
    "CREATE TABLE tokens ("
    "  id TEXT PRIMARY KEY,"
    "  hash BLOB NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  expires_at INTEGER NOT NULL,"
    "  used_at INTEGER);"
    "CREATE INDEX tokens_expires ON tokens(expires_at);"
    "CREATE TABLE audit ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  ts INTEGER NOT NULL,"
    "  actor TEXT NOT NULL,"
    "  action TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  detail TEXT NOT NULL);",
};

void atun_store_settings_default(atun_store_settings *s) {
  memset(s, 0, sizeof(*s));
  s->busy_timeout_ms = 5000;
  s->agents_max = 100000;
  s->tokens_max = 10000;
  s->audit_max = 100000;
}

/* --- small helpers ---------------------------------------------------------- */

static int sql_err(int rc) {
  if (rc == SQLITE_NOMEM) return ATUN_ERR_NOMEM;
  if ((rc & 0xff) == SQLITE_CONSTRAINT) return ATUN_ERR_EXISTS;
  return ATUN_ERR_STORE;
}

static int exec(atun_store *st, const char *sql) {
  int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? 0 : sql_err(rc);
}

/* IMMEDIATE takes the write lock up front: a deferred transaction that
 * upgrades later can fail with SQLITE_BUSY without waiting. */
static int begin(atun_store *st) { return exec(st, "BEGIN IMMEDIATE"); }

static int commit(atun_store *st) {
  int rv = exec(st, "COMMIT");
  if (rv != 0) exec(st, "ROLLBACK");
  return rv;
}

/* Ends a transaction: commits when |rv| is 0, else rolls back.  Returns the
 * final outcome. */
static int finish(atun_store *st, int rv) {
  if (rv == 0) return commit(st);
  exec(st, "ROLLBACK");
  return rv;
}

static int prepare(atun_store *st, const char *sql, sqlite3_stmt **out) {
  int rc = sqlite3_prepare_v2(st->db, sql, -1, out, NULL);
  return rc == SQLITE_OK ? 0 : sql_err(rc);
}

/* Steps a statement that returns no row, then finalizes it. */
static int run(sqlite3_stmt *s) {
  int rc = sqlite3_step(s);
  sqlite3_finalize(s);
  return rc == SQLITE_DONE ? 0 : sql_err(rc);
}

static int fault(atun_store *st, atun_store_fault point) {
  if (st->settings.fault == NULL) return 0;
  return st->settings.fault(point, st->settings.fault_user_data) == 0
             ? 0 : ATUN_ERR_STORE;
}

static int ts_storable(atun_tstamp t) { return t <= (atun_tstamp)INT64_MAX; }

static sqlite3_int64 ts_query(atun_tstamp t) {
  return ts_storable(t) ? (sqlite3_int64)t : INT64_MAX;
}

static void bind_ts(sqlite3_stmt *s, int i, atun_tstamp t) {
  if (t == ATUN_TSTAMP_MAX) {
    sqlite3_bind_null(s, i);
  } else {
    sqlite3_bind_int64(s, i, ts_query(t));
  }
}

static atun_tstamp col_ts(sqlite3_stmt *s, int i) {
  if (sqlite3_column_type(s, i) == SQLITE_NULL) return ATUN_TSTAMP_MAX;
  sqlite3_int64 v = sqlite3_column_int64(s, i);
  return v < 0 ? 0 : (atun_tstamp)v;
}

static void bind_text(sqlite3_stmt *s, int i, const char *text) {
  sqlite3_bind_text(s, i, text, -1, SQLITE_TRANSIENT);
}

/* Copies a text column; a value that does not fit was not written by us. */
static int col_text(sqlite3_stmt *s, int i, char *out, size_t cap) {
  const unsigned char *t = sqlite3_column_text(s, i);
  size_t n = (size_t)sqlite3_column_bytes(s, i);
  if (t == NULL || n >= cap) return ATUN_ERR_STORE;
  memcpy(out, t, n);
  out[n] = '\0';
  return 0;
}

static void hex_encode(char *out, const uint8_t *b, size_t n) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 0x0f];
  }
  out[2 * n] = '\0';
}

static int hex_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Decodes a hex column into |out| (cap |cap|). */
static int col_hex(sqlite3_stmt *s, int i, uint8_t *out, size_t cap,
                   size_t *len) {
  char text[2 * ATUN_CA_SERIAL_MAX + 2 * ATUN_STORE_FINGERPRINT_LEN + 1];
  if (col_text(s, i, text, sizeof(text)) != 0) return ATUN_ERR_STORE;
  size_t n = strlen(text);
  if (n % 2 != 0 || n / 2 > cap) return ATUN_ERR_STORE;
  for (size_t k = 0; k < n / 2; ++k) {
    int hi = hex_nibble(text[2 * k]), lo = hex_nibble(text[2 * k + 1]);
    if (hi < 0 || lo < 0) return ATUN_ERR_STORE;
    out[k] = (uint8_t)(hi << 4 | lo);
  }
  *len = n / 2;
  return 0;
}

static int count_rows(atun_store *st, const char *sql, size_t *out) {
  sqlite3_stmt *s;
  int rv = prepare(st, sql, &s);
  if (rv != 0) return rv;
  int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) *out = (size_t)sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return rc == SQLITE_ROW ? 0 : sql_err(rc);
}

static int text_ok(const char *t, size_t max) {
  return t != NULL && t[0] != '\0' && strnlen(t, max + 1) <= max;
}

/* --- open and migrate ---------------------------------------------------------- */

static int user_version(atun_store *st, int *out) {
  sqlite3_stmt *s;
  int rv = prepare(st, "PRAGMA user_version", &s);
  if (rv != 0) return rv;
  int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) *out = sqlite3_column_int(s, 0);
  sqlite3_finalize(s);
  return rc == SQLITE_ROW ? 0 : sql_err(rc);
}

/* Applies one migration if the version is still |*v| once the write lock is
 * held (another process may have migrated meanwhile). */
static int migrate_step(atun_store *st, int *v) {
  int rv = begin(st);
  if (rv != 0) return rv;
  rv = user_version(st, v);
  if (rv == 0 && *v > ATUN_STORE_SCHEMA_VERSION) rv = ATUN_ERR_VERSION;
  if (rv == 0 && *v < ATUN_STORE_SCHEMA_VERSION) {
    char pragma[64];
    rv = exec(st, migrations[*v]);
    snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", *v + 1);
    if (rv == 0) rv = exec(st, pragma);
    if (rv == 0) ++*v;
  }
  return finish(st, rv);
}

static int migrate(atun_store *st) {
  int v = 0;
  for (int i = 0; i <= ATUN_STORE_SCHEMA_VERSION; ++i) {
    int rv = migrate_step(st, &v);
    if (rv != 0) return rv;
    if (v == ATUN_STORE_SCHEMA_VERSION) return 0;
  }
  return ATUN_ERR_INTERNAL;
}

static int configure(atun_store *st) {
  if (sqlite3_busy_timeout(st->db, st->settings.busy_timeout_ms) != SQLITE_OK) {
    return ATUN_ERR_STORE;
  }
  sqlite3_stmt *s;
  int rv = prepare(st, "PRAGMA journal_mode = WAL", &s);
  if (rv != 0) return rv;
  int rc = sqlite3_step(s);
  const unsigned char *mode = rc == SQLITE_ROW ? sqlite3_column_text(s, 0) : NULL;
  rv = mode != NULL && strcmp((const char *)mode, "wal") == 0 ? 0 : ATUN_ERR_STORE;
  sqlite3_finalize(s);
  /* FULL: a commit (a consumed token, a revocation) survives power loss. */
  return rv != 0 ? rv : exec(st, "PRAGMA synchronous = FULL");
}

/* SQLite creates files with the umask's mode; create it 0600 first so the
 * -wal and -shm files, which copy the database's mode, are private too. */
static int create_private(const char *path) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ATUN_ERR_STORE;
  close(fd);
  return 0;
}

static int settings_valid(const atun_store_settings *s) {
  return s->busy_timeout_ms >= 0 && s->agents_max > 0 && s->tokens_max > 0 &&
         s->audit_max > 0;
}

static void token_store_init(atun_store *st);

int atun_store_open(atun_store **pst, const char *path,
                    const atun_store_settings *settings) {
  *pst = NULL;
  if (path == NULL || path[0] == '\0' || !settings_valid(settings)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int rv = create_private(path);
  if (rv != 0) return rv;
  atun_store *st = calloc(1, sizeof(*st));
  if (st == NULL) return ATUN_ERR_NOMEM;
  st->settings = *settings;
  int rc = sqlite3_open_v2(path, &st->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
  rv = rc == SQLITE_OK ? configure(st) : sql_err(rc);
  if (rv == 0) rv = migrate(st);
  if (rv != 0) {
    atun_store_close(st);
    return rv;
  }
  token_store_init(st);
  *pst = st;
  return 0;
}

void atun_store_close(atun_store *st) {
  if (st == NULL) return;
  sqlite3_close(st->db);
  free(st);
}

int atun_store_schema_version(atun_store *st) {
  int v;
  return user_version(st, &v) == 0 ? v : ATUN_ERR_STORE;
}

/* --- audit ------------------------------------------------------------------------ */

static int audit_valid(const char *actor, const char *action,
                       const char *subject, const char *detail) {
  return text_ok(actor, ATUN_AUDIT_ACTOR_MAX) &&
         text_ok(action, ATUN_AUDIT_ACTION_MAX) &&
         text_ok(subject, ATUN_AUDIT_SUBJECT_MAX) &&
         (detail == NULL || strnlen(detail, ATUN_AUDIT_DETAIL_MAX + 1) <=
                                ATUN_AUDIT_DETAIL_MAX);
}

/* Inserts a row and drops what falls past audit_max; inside a transaction.
 * Sequence numbers never repeat and only the oldest rows are deleted, so they
 * stay contiguous and the cut is exact. */
static int audit_insert(atun_store *st, atun_tstamp ts, const char *actor,
                        const char *action, const char *subject,
                        const char *detail) {
  sqlite3_stmt *s;
  int rv = prepare(st,
                   "INSERT INTO audit (ts, actor, action, subject, detail)"
                   " VALUES (?1, ?2, ?3, ?4, ?5)", &s);
  if (rv != 0) return rv;
  sqlite3_bind_int64(s, 1, ts_query(ts));
  bind_text(s, 2, actor);
  bind_text(s, 3, action);
  bind_text(s, 4, subject);
  bind_text(s, 5, detail == NULL ? "" : detail);
  rv = run(s);
  if (rv != 0) return rv;
  rv = prepare(st,
               "DELETE FROM audit WHERE seq <= (SELECT max(seq) FROM audit) - ?1",
               &s);
  if (rv != 0) return rv;
  sqlite3_bind_int64(s, 1, (sqlite3_int64)st->settings.audit_max);
  return run(s);
}

int atun_store_audit_add(atun_store *st, atun_tstamp ts, const char *actor,
                         const char *action, const char *subject,
                         const char *detail) {
  if (!audit_valid(actor, action, subject, detail) || !ts_storable(ts)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int rv = begin(st);
  if (rv != 0) return rv;
  return finish(st, audit_insert(st, ts, actor, action, subject, detail));
}

static int audit_row(sqlite3_stmt *s, atun_audit_record *r) {
  r->seq = sqlite3_column_int64(s, 0);
  r->ts = col_ts(s, 1);
  if (col_text(s, 2, r->actor, sizeof(r->actor)) != 0 ||
      col_text(s, 3, r->action, sizeof(r->action)) != 0 ||
      col_text(s, 4, r->subject, sizeof(r->subject)) != 0 ||
      col_text(s, 5, r->detail, sizeof(r->detail)) != 0) {
    return ATUN_ERR_STORE;
  }
  return 0;
}

/* Runs a paged SELECT (?1 = limit, ?2 = offset) and converts each row. */
static ssize_t list_rows(atun_store *st, const char *sql, void *out,
                         size_t elem, size_t cap, size_t offset,
                         int (*row)(sqlite3_stmt *, void *)) {
  if (cap == 0) return 0;
  sqlite3_stmt *s;
  int rv = prepare(st, sql, &s);
  if (rv != 0) return rv;
  sqlite3_bind_int64(s, 1, cap > INT64_MAX ? INT64_MAX : (sqlite3_int64)cap);
  sqlite3_bind_int64(s, 2, offset > INT64_MAX ? INT64_MAX : (sqlite3_int64)offset);
  size_t n = 0;
  int rc = SQLITE_DONE;
  while (rv == 0 && n < cap && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    rv = row(s, (uint8_t *)out + n * elem);
    if (rv == 0) ++n;
  }
  if (rv == 0 && n < cap && rc != SQLITE_DONE) rv = sql_err(rc);
  sqlite3_finalize(s);
  return rv != 0 ? rv : (ssize_t)n;
}

static int audit_row_cb(sqlite3_stmt *s, void *out) { return audit_row(s, out); }

ssize_t atun_store_audit_list(atun_store *st, atun_audit_record *out, size_t cap,
                              size_t offset) {
  return list_rows(st,
                   "SELECT seq, ts, actor, action, subject, detail FROM audit"
                   " ORDER BY seq LIMIT ?1 OFFSET ?2",
                   out, sizeof(*out), cap, offset, audit_row_cb);
}

/* --- tokens -------------------------------------------------------------------------- */

#define TOKEN_COLUMNS "id, hash, name, created_at, expires_at, used_at"

static int token_row(sqlite3_stmt *s, atun_token_record *r) {
  memset(r, 0, sizeof(*r));
  if (col_text(s, 0, r->id, sizeof(r->id)) != 0 ||
      sqlite3_column_bytes(s, 1) != ATUN_TOKEN_HASH_BYTES ||
      col_text(s, 2, r->name, sizeof(r->name)) != 0) {
    return ATUN_ERR_STORE;
  }
  memcpy(r->hash, sqlite3_column_blob(s, 1), ATUN_TOKEN_HASH_BYTES);
  r->created_at = col_ts(s, 3);
  r->expires_at = col_ts(s, 4);
  r->used_at = col_ts(s, 5);
  return 0;
}

static int token_row_cb(sqlite3_stmt *s, void *out) { return token_row(s, out); }

static int token_valid(const atun_token_record *r) {
  size_t namelen = strnlen(r->name, sizeof(r->name));
  return atun_token_id_valid(r->id, strnlen(r->id, sizeof(r->id))) &&
         namelen < sizeof(r->name) && ts_storable(r->created_at) &&
         ts_storable(r->expires_at) &&
         (r->used_at == ATUN_TSTAMP_MAX || ts_storable(r->used_at));
}

static int token_insert(atun_store *st, const atun_token_record *r) {
  size_t n;
  int rv = count_rows(st, "SELECT count(*) FROM tokens", &n);
  if (rv != 0) return rv;
  if (n >= st->settings.tokens_max) return ATUN_ERR_FULL;
  sqlite3_stmt *s;
  rv = prepare(st, "INSERT INTO tokens (" TOKEN_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
               &s);
  if (rv != 0) return rv;
  bind_text(s, 1, r->id);
  sqlite3_bind_blob(s, 2, r->hash, ATUN_TOKEN_HASH_BYTES, SQLITE_TRANSIENT);
  bind_text(s, 3, r->name);
  bind_ts(s, 4, r->created_at);
  bind_ts(s, 5, r->expires_at);
  bind_ts(s, 6, r->used_at);
  return run(s);
}

int atun_store_token_put(atun_store *st, const atun_token_record *rec) {
  if (!token_valid(rec)) return ATUN_ERR_INVALID_ARGUMENT;
  int rv = begin(st);
  if (rv != 0) return rv;
  return finish(st, token_insert(st, rec));
}

/* Fetches the token with |hash|; returns 0, ATUN_ERR_NOT_FOUND or an error. */
static int token_by_hash(atun_store *st, const uint8_t *hash,
                         atun_token_record *out) {
  sqlite3_stmt *s;
  int rv = prepare(st, "SELECT " TOKEN_COLUMNS " FROM tokens WHERE hash = ?1", &s);
  if (rv != 0) return rv;
  sqlite3_bind_blob(s, 1, hash, ATUN_TOKEN_HASH_BYTES, SQLITE_TRANSIENT);
  int rc = sqlite3_step(s);
  rv = rc == SQLITE_ROW ? token_row(s, out)
                        : rc == SQLITE_DONE ? ATUN_ERR_NOT_FOUND : sql_err(rc);
  sqlite3_finalize(s);
  return rv;
}

/*
 * The one statement that makes a token used: the WHERE clause is the whole
 * decision, so of two concurrent callers only one can change the row.  When
 * it changes nothing, a second look only explains why.
 */
static int token_consume(atun_store *st, const uint8_t *hash, atun_tstamp ts,
                         atun_token_record *out) {
  atun_token_record rec;
  sqlite3_stmt *s;
  int rv = prepare(st,
                   "UPDATE tokens SET used_at = ?1 WHERE hash = ?2"
                   " AND used_at IS NULL AND expires_at > ?1"
                   " RETURNING " TOKEN_COLUMNS, &s);
  if (rv != 0) return rv;
  sqlite3_bind_int64(s, 1, ts_query(ts));
  sqlite3_bind_blob(s, 2, hash, ATUN_TOKEN_HASH_BYTES, SQLITE_TRANSIENT);
  int rc = sqlite3_step(s);
  int changed = rc == SQLITE_ROW;
  if (changed) {
    rv = token_row(s, &rec);
    rc = sqlite3_step(s);
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) return sql_err(rc);
  if (rv != 0) return rv;
  if (!changed) {
    rv = token_by_hash(st, hash, &rec);
    if (rv != 0) return rv;
    rv = rec.used_at != ATUN_TSTAMP_MAX ? ATUN_ERR_USED : ATUN_ERR_EXPIRED;
  }
  if (out != NULL) *out = rec;
  return rv;
}

int atun_store_token_consume(atun_store *st,
                             const uint8_t hash[ATUN_TOKEN_HASH_BYTES],
                             atun_tstamp ts, atun_token_record *out) {
  return token_consume(st, hash, ts, out);
}

ssize_t atun_store_token_purge(atun_store *st, atun_tstamp ts) {
  sqlite3_stmt *s;
  int rv = prepare(st, "DELETE FROM tokens WHERE expires_at <= ?1", &s);
  if (rv != 0) return rv;
  sqlite3_bind_int64(s, 1, ts_query(ts));
  rv = run(s);
  return rv != 0 ? rv : (ssize_t)sqlite3_changes(st->db);
}

int atun_store_token_get(atun_store *st, const char *id, atun_token_record *out) {
  sqlite3_stmt *s;
  int rv = prepare(st, "SELECT " TOKEN_COLUMNS " FROM tokens WHERE id = ?1", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, id);
  int rc = sqlite3_step(s);
  rv = rc == SQLITE_ROW ? token_row(s, out)
                        : rc == SQLITE_DONE ? ATUN_ERR_NOT_FOUND : sql_err(rc);
  sqlite3_finalize(s);
  return rv;
}

ssize_t atun_store_token_list(atun_store *st, atun_token_record *out, size_t cap,
                              size_t offset) {
  return list_rows(st,
                   "SELECT " TOKEN_COLUMNS " FROM tokens"
                   " ORDER BY created_at, rowid LIMIT ?1 OFFSET ?2",
                   out, sizeof(*out), cap, offset, token_row_cb);
}

int atun_store_token_remove(atun_store *st, const char *id) {
  sqlite3_stmt *s;
  int rv = prepare(st, "DELETE FROM tokens WHERE id = ?1", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, id);
  rv = run(s);
  if (rv != 0) return rv;
  return sqlite3_changes(st->db) == 1 ? 0 : ATUN_ERR_NOT_FOUND;
}

/* The |atun_token_store| adapter. */
static int ts_put(const atun_token_record *rec, void *ud) {
  return atun_store_token_put(ud, rec);
}
static int ts_consume(const uint8_t hash[ATUN_TOKEN_HASH_BYTES], atun_tstamp ts,
                      atun_token_record *out, void *ud) {
  return atun_store_token_consume(ud, hash, ts, out);
}
static ssize_t ts_purge(atun_tstamp ts, void *ud) {
  return atun_store_token_purge(ud, ts);
}
static int ts_get(const char *id, atun_token_record *out, void *ud) {
  return atun_store_token_get(ud, id, out);
}
static ssize_t ts_list(atun_token_record *out, size_t cap, size_t offset,
                       void *ud) {
  return atun_store_token_list(ud, out, cap, offset);
}
static int ts_remove(const char *id, void *ud) {
  return atun_store_token_remove(ud, id);
}

static void token_store_init(atun_store *st) {
  st->tokens.user_data = st;
  st->tokens.put = ts_put;
  st->tokens.consume = ts_consume;
  st->tokens.purge = ts_purge;
  st->tokens.get = ts_get;
  st->tokens.list = ts_list;
  st->tokens.remove = ts_remove;
}

const atun_token_store *atun_store_token_store(atun_store *st) {
  return &st->tokens;
}

/* --- agents -------------------------------------------------------------------------- */

#define AGENT_COLUMNS \
  "id, name, fingerprint, serial, cert_not_after, enrolled_at, revoked_at"

#define FP_HEX_LEN (2 * ATUN_STORE_FINGERPRINT_LEN)

static int id_valid(const char *id) {
  return id != NULL && atun_uuid_valid(id, strnlen(id, ATUN_UUID_STRLEN));
}

static int agent_row(sqlite3_stmt *s, atun_agent_record *r) {
  memset(r, 0, sizeof(*r));
  size_t fplen;
  if (col_text(s, 0, r->id, sizeof(r->id)) != 0 ||
      col_text(s, 1, r->name, sizeof(r->name)) != 0 ||
      col_hex(s, 2, r->fingerprint, sizeof(r->fingerprint), &fplen) != 0 ||
      fplen != ATUN_STORE_FINGERPRINT_LEN ||
      col_hex(s, 3, r->serial, sizeof(r->serial), &r->serial_len) != 0) {
    return ATUN_ERR_STORE;
  }
  r->cert_not_after = col_ts(s, 4);
  r->enrolled_at = col_ts(s, 5);
  r->revoked_at = col_ts(s, 6);
  return 0;
}

static int agent_row_cb(sqlite3_stmt *s, void *out) { return agent_row(s, out); }

int atun_store_agent_get(atun_store *st, const char *id, atun_agent_record *out) {
  sqlite3_stmt *s;
  int rv = prepare(st, "SELECT " AGENT_COLUMNS " FROM agents WHERE id = ?1", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, id);
  int rc = sqlite3_step(s);
  rv = rc == SQLITE_ROW ? agent_row(s, out)
                        : rc == SQLITE_DONE ? ATUN_ERR_NOT_FOUND : sql_err(rc);
  sqlite3_finalize(s);
  return rv;
}

ssize_t atun_store_agent_list(atun_store *st, atun_agent_record *out, size_t cap,
                              size_t offset) {
  return list_rows(st,
                   "SELECT " AGENT_COLUMNS " FROM agents"
                   " ORDER BY enrolled_at, rowid LIMIT ?1 OFFSET ?2",
                   out, sizeof(*out), cap, offset, agent_row_cb);
}

static int cert_fields_valid(const uint8_t *serial, size_t serial_len,
                             atun_tstamp not_after) {
  return serial != NULL && serial_len > 0 && serial_len <= ATUN_CA_SERIAL_MAX &&
         ts_storable(not_after);
}

static int enroll_valid(const atun_agent_record *a, atun_tstamp ts,
                        const char *actor) {
  return id_valid(a->id) &&
         atun_agent_name_valid(a->name, strnlen(a->name, sizeof(a->name))) &&
         cert_fields_valid(a->serial, a->serial_len, a->cert_not_after) &&
         ts_storable(ts) && text_ok(actor, ATUN_AUDIT_ACTOR_MAX);
}

static int agent_insert(atun_store *st, const atun_agent_record *a,
                        atun_tstamp ts) {
  size_t n;
  int rv = count_rows(st, "SELECT count(*) FROM agents", &n);
  if (rv != 0) return rv;
  if (n >= st->settings.agents_max) return ATUN_ERR_FULL;
  char fp[FP_HEX_LEN + 1], serial[2 * ATUN_CA_SERIAL_MAX + 1];
  hex_encode(fp, a->fingerprint, ATUN_STORE_FINGERPRINT_LEN);
  hex_encode(serial, a->serial, a->serial_len);
  sqlite3_stmt *s;
  rv = prepare(st,
               "INSERT INTO agents (" AGENT_COLUMNS ")"
               " VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, a->id);
  bind_text(s, 2, a->name);
  bind_text(s, 3, fp);
  bind_text(s, 4, serial);
  sqlite3_bind_int64(s, 5, ts_query(a->cert_not_after));
  sqlite3_bind_int64(s, 6, ts_query(ts));
  return run(s);
}

static int enroll_steps(atun_store *st, const uint8_t *hash, atun_tstamp ts,
                        const atun_agent_record *agent, const char *actor,
                        atun_token_record *tok) {
  int rv = token_consume(st, hash, ts, tok);
  if (rv == 0) rv = fault(st, ATUN_STORE_FAULT_ENROLL_CONSUMED);
  if (rv == 0) rv = agent_insert(st, agent, ts);
  if (rv == 0) rv = fault(st, ATUN_STORE_FAULT_ENROLL_AGENT);
  if (rv == 0) {
    char detail[ATUN_AUDIT_DETAIL_MAX + 1], fp[FP_HEX_LEN + 1];
    hex_encode(fp, agent->fingerprint, ATUN_STORE_FINGERPRINT_LEN);
    snprintf(detail, sizeof(detail), "name=%s token=%s fingerprint=%s",
             agent->name, tok->id, fp);
    rv = audit_insert(st, ts, actor, "enroll", agent->id, detail);
  }
  if (rv == 0) rv = fault(st, ATUN_STORE_FAULT_ENROLL_COMMIT);
  return rv;
}

int atun_store_enroll(atun_store *st, const uint8_t token_hash[ATUN_TOKEN_HASH_BYTES],
                      atun_tstamp ts, const atun_agent_record *agent,
                      const char *actor, atun_token_record *token_out) {
  if (!enroll_valid(agent, ts, actor)) return ATUN_ERR_INVALID_ARGUMENT;
  atun_token_record tok;
  int rv = begin(st);
  if (rv != 0) return rv;
  rv = finish(st, enroll_steps(st, token_hash, ts, agent, actor, &tok));
  if (token_out != NULL &&
      (rv == 0 || rv == ATUN_ERR_USED || rv == ATUN_ERR_EXPIRED)) {
    *token_out = tok;
  }
  return rv;
}

/* Reads the revocation state and current fingerprint of agent |id|. */
static int agent_state(atun_store *st, const char *id, char fp[FP_HEX_LEN + 1]) {
  sqlite3_stmt *s;
  int rv = prepare(st, "SELECT revoked_at, fingerprint FROM agents WHERE id = ?1", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, id);
  int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    rv = sqlite3_column_type(s, 0) != SQLITE_NULL ? ATUN_ERR_REVOKED
                                                  : col_text(s, 1, fp, FP_HEX_LEN + 1);
  } else {
    rv = rc == SQLITE_DONE ? ATUN_ERR_NOT_FOUND : sql_err(rc);
  }
  sqlite3_finalize(s);
  return rv;
}

static int renew_steps(atun_store *st, const char *id, const char *fp,
                       const char *serial, atun_tstamp not_after,
                       atun_tstamp ts, const char *actor) {
  char old[FP_HEX_LEN + 1];
  int rv = agent_state(st, id, old);
  if (rv != 0) return rv;
  sqlite3_stmt *s;
  rv = prepare(st,
               "UPDATE agents SET fingerprint = ?2, serial = ?3, cert_not_after = ?4"
               " WHERE id = ?1", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, id);
  bind_text(s, 2, fp);
  bind_text(s, 3, serial);
  sqlite3_bind_int64(s, 4, ts_query(not_after));
  rv = run(s);
  char detail[ATUN_AUDIT_DETAIL_MAX + 1];
  snprintf(detail, sizeof(detail), "fingerprint=%s previous=%s", fp, old);
  return rv != 0 ? rv : audit_insert(st, ts, actor, "renew", id, detail);
}

int atun_store_agent_renew(atun_store *st, const char *id,
                           const uint8_t fingerprint[ATUN_STORE_FINGERPRINT_LEN],
                           const uint8_t *serial, size_t serial_len,
                           atun_tstamp cert_not_after, atun_tstamp ts,
                           const char *actor) {
  if (!id_valid(id) || fingerprint == NULL ||
      !cert_fields_valid(serial, serial_len, cert_not_after) ||
      !ts_storable(ts) || !text_ok(actor, ATUN_AUDIT_ACTOR_MAX)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  char fp[FP_HEX_LEN + 1], sh[2 * ATUN_CA_SERIAL_MAX + 1];
  hex_encode(fp, fingerprint, ATUN_STORE_FINGERPRINT_LEN);
  hex_encode(sh, serial, serial_len);
  int rv = begin(st);
  if (rv != 0) return rv;
  return finish(st, renew_steps(st, id, fp, sh, cert_not_after, ts, actor));
}

static int revoke_steps(atun_store *st, const char *id, atun_tstamp ts,
                        const char *actor) {
  char fp[FP_HEX_LEN + 1];
  int rv = agent_state(st, id, fp);
  if (rv != 0) return rv;
  sqlite3_stmt *s;
  rv = prepare(st, "UPDATE agents SET revoked_at = ?2 WHERE id = ?1", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, id);
  sqlite3_bind_int64(s, 2, ts_query(ts));
  rv = run(s);
  if (rv != 0) return rv;
  rv = prepare(st,
               "INSERT OR IGNORE INTO revoked_certs (fingerprint, agent_id, revoked_at)"
               " VALUES (?1, ?2, ?3)", &s);
  if (rv != 0) return rv;
  bind_text(s, 1, fp);
  bind_text(s, 2, id);
  sqlite3_bind_int64(s, 3, ts_query(ts));
  rv = run(s);
  char detail[ATUN_AUDIT_DETAIL_MAX + 1];
  snprintf(detail, sizeof(detail), "fingerprint=%s", fp);
  if (rv == 0) rv = audit_insert(st, ts, actor, "revoke", id, detail);
  return rv != 0 ? rv : fault(st, ATUN_STORE_FAULT_REVOKE_COMMIT);
}

int atun_store_agent_revoke(atun_store *st, const char *id, atun_tstamp ts,
                            const char *actor) {
  if (!id_valid(id) || !ts_storable(ts) || !text_ok(actor, ATUN_AUDIT_ACTOR_MAX)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int rv = begin(st);
  if (rv != 0) return rv;
  return finish(st, revoke_steps(st, id, ts, actor));
}

int atun_store_is_revoked(atun_store *st, const char *id,
                          const uint8_t fingerprint[ATUN_STORE_FINGERPRINT_LEN]) {
  sqlite3_stmt *s;
  int rv = prepare(st,
                   "SELECT EXISTS (SELECT 1 FROM agents WHERE id = ?1"
                   "                 AND revoked_at IS NOT NULL)"
                   "    OR EXISTS (SELECT 1 FROM revoked_certs WHERE fingerprint = ?2)",
                   &s);
  if (rv != 0) return rv;
  if (id != NULL) bind_text(s, 1, id);
  if (fingerprint != NULL) {
    char fp[FP_HEX_LEN + 1];
    hex_encode(fp, fingerprint, ATUN_STORE_FINGERPRINT_LEN);
    bind_text(s, 2, fp);
  }
  int rc = sqlite3_step(s);
  rv = rc == SQLITE_ROW ? sqlite3_column_int(s, 0) != 0 : sql_err(rc);
  sqlite3_finalize(s);
  return rv;
}
