#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fsutil.h"
#include "store.h"
#include "support.h"
#include "token.h"

#define S(x) ((atun_tstamp)(x) * ATUN_NS_PER_S)
#define T0 S(1700000000)

static const char *const ID1 = "0b7e6c9e-8d5a-4c3b-9f1e-2a3b4c5d6e7f";
static const char *const ID2 = "11111111-2222-4333-8444-555555555555";
static const char *const ID3 = "99999999-2222-4333-8444-555555555555";

static char dir[64];
static char dbpath[128];

static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (d == NULL) return;
  struct dirent *e;
  char p[512];
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
      remove_tree(p);
    } else {
      unlink(p);
    }
  }
  closedir(d);
  rmdir(path);
}

static void tmp_setup(void) {
  strcpy(dir, "/tmp/atun-store-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(dbpath, sizeof(dbpath), "%s/state.db", dir);
}

static void tmp_teardown(void) { remove_tree(dir); }

static size_t dir_entries(const char *path) {
  DIR *d = opendir(path);
  cr_assert_not_null(d);
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) ++n;
  }
  closedir(d);
  return n;
}

static atun_store *open_store(const atun_store_settings *s) {
  atun_store_settings def;
  if (s == NULL) {
    atun_store_settings_default(&def);
    s = &def;
  }
  atun_store *st;
  cr_assert_eq(atun_store_open(&st, dbpath, s), 0);
  return st;
}

static atun_token_record token_rec(int i, atun_tstamp created, atun_tstamp expires) {
  atun_token_record r;
  memset(&r, 0, sizeof(r));
  snprintf(r.id, sizeof(r.id), "%016x", i);
  memset(r.hash, i, sizeof(r.hash));
  r.created_at = created;
  r.expires_at = expires;
  r.used_at = ATUN_TSTAMP_MAX;
  snprintf(r.name, sizeof(r.name), "token %d", i);
  return r;
}

static atun_agent_record agent_rec(const char *id, const char *name, uint8_t fp) {
  atun_agent_record a;
  memset(&a, 0, sizeof(a));
  strcpy(a.id, id);
  strcpy(a.name, name);
  memset(a.fingerprint, fp, sizeof(a.fingerprint));
  a.serial_len = 16;
  memset(a.serial, 0x42, 16);
  a.cert_not_after = T0 + S(86400);
  a.revoked_at = ATUN_TSTAMP_MAX;
  return a;
}

static void put_token(atun_store *st, int i, atun_tstamp expires) {
  atun_token_record r = token_rec(i, T0, expires);
  cr_assert_eq(atun_store_token_put(st, &r), 0);
}

static void hash_of(uint8_t h[32], int i) { memset(h, i, 32); }

TestSuite(fsutil, .init = tmp_setup, .fini = tmp_teardown);
TestSuite(store, .init = tmp_setup, .fini = tmp_teardown);

/* --- fsutil ------------------------------------------------------------------- */

Test(fsutil, atomic_write_mode_content_no_temp) {
  char path[128], buf[64];
  size_t len;
  struct stat st;
  snprintf(path, sizeof(path), "%s/ca.key", dir);
  mode_t old = umask(022);
  cr_assert_eq(atun_fs_write_atomic(path, "secret", 6, ATUN_FS_MODE_SECRET, 0), 0);
  umask(old);
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0600);
  cr_assert_eq(atun_fs_read(path, buf, sizeof(buf), &len), 0);
  cr_assert_eq(len, 6);
  cr_assert_eq(memcmp(buf, "secret", 6), 0);
  cr_assert_eq(dir_entries(dir), 1);
  /* Replacing keeps one file, with the new content and mode. */
  cr_assert_eq(atun_fs_write_atomic(path, "public!", 7, ATUN_FS_MODE_PUBLIC, 0), 0);
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0644);
  cr_assert_eq(atun_fs_read(path, buf, sizeof(buf), &len), 0);
  cr_assert_eq(len, 7);
  cr_assert_eq(dir_entries(dir), 1);
}

Test(fsutil, noreplace_keeps_existing) {
  char path[128], buf[16];
  size_t len;
  snprintf(path, sizeof(path), "%s/ca.key", dir);
  cr_assert_eq(atun_fs_write_atomic(path, "one", 3, 0600, ATUN_FS_NOREPLACE), 0);
  cr_assert_eq(atun_fs_write_atomic(path, "two", 3, 0600, ATUN_FS_NOREPLACE),
               ATUN_ERR_EXISTS);
  cr_assert_eq(atun_fs_read(path, buf, sizeof(buf), &len), 0);
  cr_assert_eq(memcmp(buf, "one", 3), 0);
  cr_assert_eq(dir_entries(dir), 1);
}

Test(fsutil, failures_leave_nothing_behind) {
  char path[128];
  snprintf(path, sizeof(path), "%s/missing/ca.key", dir);
  cr_assert_eq(atun_fs_write_atomic(path, "x", 1, 0600, 0), ATUN_ERR_NOT_FOUND);
  /* Renaming a file over a directory fails after the temp file exists. */
  snprintf(path, sizeof(path), "%s/sub", dir);
  cr_assert_eq(mkdir(path, 0700), 0);
  cr_assert_eq(atun_fs_write_atomic(path, "x", 1, 0600, 0), ATUN_ERR_STORE);
  cr_assert_eq(dir_entries(dir), 1);
  cr_assert_eq(atun_fs_write_atomic("", "x", 1, 0600, 0), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_fs_write_atomic(NULL, "x", 1, 0600, 0), ATUN_ERR_INVALID_ARGUMENT);
  static char longpath[ATUN_FS_PATH_MAX + 2];
  memset(longpath, 'a', ATUN_FS_PATH_MAX + 1);
  cr_assert_eq(atun_fs_write_atomic(longpath, "x", 1, 0600, 0), ATUN_ERR_INVALID_ARGUMENT);
}

Test(fsutil, relative_path_in_cwd) {
  char cwd[512];
  cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
  cr_assert_eq(chdir(dir), 0);
  int rv = atun_fs_write_atomic("rel.txt", "abc", 3, 0600, 0);
  cr_assert_eq(chdir(cwd), 0);
  cr_assert_eq(rv, 0);
  cr_assert_eq(dir_entries(dir), 1);
}

Test(fsutil, read_bounds) {
  char path[128], buf[8];
  size_t len = 99;
  snprintf(path, sizeof(path), "%s/f", dir);
  cr_assert_eq(atun_fs_write_atomic(path, "12345678", 8, 0600, 0), 0);
  cr_assert_eq(atun_fs_read(path, buf, 8, &len), 0);
  cr_assert_eq(len, 8);
  cr_assert_eq(atun_fs_read(path, buf, 7, &len), ATUN_ERR_LIMIT);
  cr_assert_eq(atun_fs_write_atomic(path, "", 0, 0600, 0), 0);
  cr_assert_eq(atun_fs_read(path, buf, 8, &len), 0);
  cr_assert_eq(len, 0);
  snprintf(path, sizeof(path), "%s/none", dir);
  cr_assert_eq(atun_fs_read(path, buf, 8, &len), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_fs_read(dir, buf, 8, &len), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_fs_read("", buf, 8, &len), ATUN_ERR_INVALID_ARGUMENT);
}

/* --- open and schema ---------------------------------------------------------- */

Test(store, creates_private_database_and_migrates) {
  atun_store *st = open_store(NULL);
  cr_assert_eq(atun_store_schema_version(st), ATUN_STORE_SCHEMA_VERSION);
  put_token(st, 1, T0 + S(60));
  struct stat sb;
  cr_assert_eq(stat(dbpath, &sb), 0);
  cr_assert_eq(sb.st_mode & 0777, 0600);
  char wal[160];
  snprintf(wal, sizeof(wal), "%s-wal", dbpath);
  cr_assert_eq(stat(wal, &sb), 0); /* WAL mode */
  cr_assert_eq(sb.st_mode & 0777, 0600);
  atun_store_close(st);
  /* Reopening an existing database keeps its rows and version. */
  st = open_store(NULL);
  cr_assert_eq(atun_store_schema_version(st), ATUN_STORE_SCHEMA_VERSION);
  atun_token_record r;
  cr_assert_eq(atun_store_token_get(st, "0000000000000001", &r), 0);
  atun_store_close(st);
}

Test(store, migrates_empty_existing_file) {
  FILE *f = fopen(dbpath, "w");
  cr_assert_not_null(f);
  fclose(f);
  atun_store *st = open_store(NULL);
  cr_assert_eq(atun_store_schema_version(st), ATUN_STORE_SCHEMA_VERSION);
  atun_store_close(st);
}

Test(store, refuses_newer_schema) {
  atun_store *st = open_store(NULL);
  atun_store_close(st);
  sqlite3 *db;
  cr_assert_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
  cr_assert_eq(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  atun_store_settings s;
  atun_store_settings_default(&s);
  cr_assert_eq(atun_store_open(&st, dbpath, &s), ATUN_ERR_VERSION);
  cr_assert_null(st);
}

Test(store, open_errors) {
  atun_store_settings s;
  atun_store *st;
  atun_store_settings_default(&s);
  s.tokens_max = 0;
  cr_assert_eq(atun_store_open(&st, dbpath, &s), ATUN_ERR_INVALID_ARGUMENT);
  atun_store_settings_default(&s);
  cr_assert_eq(atun_store_open(&st, "", &s), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_store_open(&st, "/nonexistent-dir/x.db", &s), ATUN_ERR_STORE);
  /* Not a database. */
  FILE *f = fopen(dbpath, "w");
  fputs("this is not an sqlite database, just some text that is long enough", f);
  fclose(f);
  cr_assert_eq(atun_store_open(&st, dbpath, &s), ATUN_ERR_STORE);
  atun_store_close(NULL);
}

/* --- tokens -------------------------------------------------------------------- */

Test(store, token_put_get_list_remove) {
  atun_store *st = open_store(NULL);
  for (int i = 1; i <= 3; ++i) put_token(st, i, T0 + S(60));
  atun_token_record r = token_rec(1, T0, T0 + S(60)), got[4];
  cr_assert_eq(atun_store_token_put(st, &r), ATUN_ERR_EXISTS);
  r = token_rec(9, T0, T0 + S(60));
  memset(r.hash, 2, 32); /* hash of token 2 */
  cr_assert_eq(atun_store_token_put(st, &r), ATUN_ERR_EXISTS);
  cr_assert_eq(atun_store_token_get(st, "0000000000000002", &got[0]), 0);
  cr_assert_str_eq(got[0].name, "token 2");
  cr_assert_eq(got[0].created_at, T0);
  cr_assert_eq(got[0].expires_at, T0 + S(60));
  cr_assert_eq(got[0].used_at, ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_store_token_list(st, got, 4, 0), 3);
  cr_assert_str_eq(got[2].id, "0000000000000003");
  cr_assert_eq(atun_store_token_list(st, got, 2, 2), 1);
  cr_assert_str_eq(got[0].id, "0000000000000003");
  cr_assert_eq(atun_store_token_list(st, got, 2, 5), 0);
  cr_assert_eq(atun_store_token_list(st, got, 0, 0), 0);
  cr_assert_eq(atun_store_token_remove(st, "0000000000000002"), 0);
  cr_assert_eq(atun_store_token_remove(st, "0000000000000002"), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_store_token_get(st, "0000000000000002", &got[0]), ATUN_ERR_NOT_FOUND);
  atun_store_close(st);
}

Test(store, token_put_validation_and_bound) {
  atun_store_settings s;
  atun_store_settings_default(&s);
  s.tokens_max = 3;
  atun_store *st = open_store(&s);
  atun_token_record r = token_rec(1, T0, T0 + S(60));
  strcpy(r.id, "not-hex");
  cr_assert_eq(atun_store_token_put(st, &r), ATUN_ERR_INVALID_ARGUMENT);
  r = token_rec(1, T0, (atun_tstamp)INT64_MAX + 1);
  cr_assert_eq(atun_store_token_put(st, &r), ATUN_ERR_INVALID_ARGUMENT);
  r = token_rec(1, T0, (atun_tstamp)INT64_MAX);
  cr_assert_eq(atun_store_token_put(st, &r), 0);
  put_token(st, 2, T0 + S(60));
  put_token(st, 3, T0 + S(60));
  r = token_rec(4, T0, T0 + S(60));
  cr_assert_eq(atun_store_token_put(st, &r), ATUN_ERR_FULL);
  /* Purging expired rows makes room again. */
  cr_assert_eq(atun_store_token_purge(st, T0 + S(60)), 2);
  cr_assert_eq(atun_store_token_put(st, &r), 0);
  atun_store_close(st);
}

Test(store, token_consume_once_expired_unknown) {
  atun_store *st = open_store(NULL);
  put_token(st, 1, T0 + S(60));
  put_token(st, 2, T0 + S(60));
  uint8_t h[32];
  atun_token_record out;
  hash_of(h, 1);
  /* The last instant before expiry still works... */
  cr_assert_eq(atun_store_token_consume(st, h, T0 + S(60) - 1, &out), 0);
  cr_assert_eq(out.used_at, T0 + S(60) - 1);
  cr_assert_str_eq(out.id, "0000000000000001");
  cr_assert_eq(atun_store_token_consume(st, h, T0 + S(1), &out), ATUN_ERR_USED);
  cr_assert_eq(out.used_at, T0 + S(60) - 1);
  /* ...and USED is reported before EXPIRED. */
  cr_assert_eq(atun_store_token_consume(st, h, T0 + S(61), NULL), ATUN_ERR_USED);
  hash_of(h, 2);
  cr_assert_eq(atun_store_token_consume(st, h, T0 + S(60), &out), ATUN_ERR_EXPIRED);
  cr_assert_eq(out.used_at, ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_store_token_consume(st, h, ATUN_TSTAMP_MAX, NULL), ATUN_ERR_EXPIRED);
  hash_of(h, 3);
  cr_assert_eq(atun_store_token_consume(st, h, T0, &out), ATUN_ERR_NOT_FOUND);
  atun_store_close(st);
}

Test(store, token_purge) {
  atun_store *st = open_store(NULL);
  put_token(st, 1, T0 + S(10));
  put_token(st, 2, T0 + S(20));
  put_token(st, 3, T0 + S(30));
  uint8_t h[32];
  hash_of(h, 3);
  cr_assert_eq(atun_store_token_consume(st, h, T0, NULL), 0);
  cr_assert_eq(atun_store_token_purge(st, T0 + S(10) - 1), 0);
  cr_assert_eq(atun_store_token_purge(st, T0 + S(20)), 2);
  /* The used token that has not expired stays, so reuse still says USED. */
  cr_assert_eq(atun_store_token_consume(st, h, T0 + S(25), NULL), ATUN_ERR_USED);
  cr_assert_eq(atun_store_token_purge(st, T0 + S(30)), 1);
  cr_assert_eq(atun_store_token_consume(st, h, T0 + S(25), NULL), ATUN_ERR_NOT_FOUND);
  atun_store_close(st);
}

Test(store, used_token_stays_used_across_restart) {
  atun_store *st = open_store(NULL);
  put_token(st, 1, T0 + S(60));
  uint8_t h[32];
  hash_of(h, 1);
  cr_assert_eq(atun_store_token_consume(st, h, T0, NULL), 0);
  atun_store_close(st);
  st = open_store(NULL);
  cr_assert_eq(atun_store_token_consume(st, h, T0 + S(1), NULL), ATUN_ERR_USED);
  atun_store_close(st);
}

Test(store, token_store_adapter_with_core_tokens) {
  atun_store *st = open_store(NULL);
  const atun_token_store *ts = atun_store_token_store(st);
  atun_testrng rng;
  atun_testrng_seed(&rng, 5);
  atun_rand r = atun_testrng_as_rand(&rng);
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record rec, got;
  cr_assert_eq(atun_token_issue(ts, &r, T0, S(3600), "lab", secret, sizeof(secret), &rec), 0);
  cr_assert_eq(ts->get(rec.id, &got, ts->user_data), 0);
  cr_assert_str_eq(got.name, "lab");
  atun_token_record list[2];
  cr_assert_eq(ts->list(list, 2, 0, ts->user_data), 1);
  cr_assert_eq(atun_token_redeem(ts, secret, strlen(secret), T0 + S(1), &got), 0);
  cr_assert_eq(atun_token_redeem(ts, secret, strlen(secret), T0 + S(2), &got),
               ATUN_ERR_USED);
  cr_assert_eq(ts->purge(T0 + S(3600), ts->user_data), 1);
  cr_assert_eq(ts->remove(rec.id, ts->user_data), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_token_issue(ts, &r, T0, S(60), NULL, secret, sizeof(secret), &rec), 0);
  cr_assert_eq(ts->remove(rec.id, ts->user_data), 0);
  atun_store_close(st);
}

/* Forks |n| processes that each open the database and consume token |tok| at
 * the same moment (released together through a pipe).  Returns how many
 * succeeded; every other one must have seen ATUN_ERR_USED. */
static int race_consumers(int n, int tok) {
  int go[2];
  cr_assert_eq(pipe(go), 0);
  pid_t pids[16];
  for (int i = 0; i < n; ++i) {
    pids[i] = fork();
    cr_assert_geq(pids[i], 0);
    if (pids[i] == 0) {
      close(go[1]);
      atun_store_settings s;
      atun_store_settings_default(&s);
      atun_store *st;
      if (atun_store_open(&st, dbpath, &s) != 0) _exit(3);
      char c;
      if (read(go[0], &c, 1) != 0) _exit(4);
      uint8_t h[32];
      hash_of(h, tok);
      int rv = atun_store_token_consume(st, h, T0, NULL);
      atun_store_close(st);
      _exit(rv == 0 ? 0 : rv == ATUN_ERR_USED ? 1 : 2);
    }
  }
  close(go[0]);
  usleep(100000); /* let every child reach the barrier */
  close(go[1]);   /* EOF releases all readers at once */
  int won = 0;
  for (int i = 0; i < n; ++i) {
    int status;
    cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
    cr_assert(WIFEXITED(status));
    int code = WEXITSTATUS(status);
    cr_assert(code == 0 || code == 1, "child exit %d", code);
    won += code == 0;
  }
  return won;
}

Test(store, concurrent_consumers_exactly_one_wins) {
  atun_store *st = open_store(NULL);
  for (int t = 1; t <= 4; ++t) put_token(st, t, T0 + S(60));
  atun_store_close(st);
  for (int t = 1; t <= 4; ++t) cr_assert_eq(race_consumers(8, t), 1, "token %d", t);
}

/* --- enrollment ------------------------------------------------------------------ */

static int agent_count(atun_store *st) {
  atun_agent_record out[8];
  ssize_t n = atun_store_agent_list(st, out, 8, 0);
  cr_assert_geq(n, 0);
  return (int)n;
}

static int audit_count(atun_store *st) {
  static atun_audit_record out[16];
  ssize_t n = atun_store_audit_list(st, out, 16, 0);
  cr_assert_geq(n, 0);
  return (int)n;
}

Test(store, enroll_commits_everything) {
  atun_store *st = open_store(NULL);
  put_token(st, 1, T0 + S(60));
  uint8_t h[32];
  hash_of(h, 1);
  atun_agent_record a = agent_rec(ID1, "web-1", 0xaa), got;
  atun_token_record tok;
  cr_assert_eq(atun_store_enroll(st, h, T0 + S(5), &a, "enroll-api", &tok), 0);
  cr_assert_eq(tok.used_at, T0 + S(5));
  cr_assert_eq(atun_store_agent_get(st, ID1, &got), 0);
  cr_assert_str_eq(got.name, "web-1");
  cr_assert_eq(got.enrolled_at, T0 + S(5));
  cr_assert_eq(got.revoked_at, ATUN_TSTAMP_MAX);
  cr_assert_eq(got.cert_not_after, a.cert_not_after);
  cr_assert_eq(got.serial_len, 16);
  cr_assert_eq(memcmp(got.serial, a.serial, 16), 0);
  cr_assert_eq(memcmp(got.fingerprint, a.fingerprint, 32), 0);
  atun_audit_record au[2];
  cr_assert_eq(atun_store_audit_list(st, au, 2, 0), 1);
  cr_assert_str_eq(au[0].action, "enroll");
  cr_assert_str_eq(au[0].subject, ID1);
  cr_assert_str_eq(au[0].actor, "enroll-api");
  cr_assert(strstr(au[0].detail, "token=0000000000000001") != NULL);
  /* The token is spent. */
  a = agent_rec(ID2, "web-2", 0xbb);
  cr_assert_eq(atun_store_enroll(st, h, T0 + S(6), &a, "enroll-api", &tok), ATUN_ERR_USED);
  cr_assert_eq(atun_store_agent_get(st, ID2, &got), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_store_agent_get(st, "nope", &got), ATUN_ERR_NOT_FOUND);
  atun_store_close(st);
}

Test(store, enroll_conflict_keeps_token) {
  atun_store *st = open_store(NULL);
  put_token(st, 1, T0 + S(60));
  put_token(st, 2, T0 + S(60));
  put_token(st, 3, T0 + S(60));
  uint8_t h[32];
  atun_agent_record a = agent_rec(ID1, "web-1", 0xaa);
  hash_of(h, 1);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), 0);
  /* Same id: refused, and the second token is still usable. */
  hash_of(h, 2);
  a = agent_rec(ID1, "other", 0xbb);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_EXISTS);
  atun_token_record t;
  cr_assert_eq(atun_store_token_get(st, "0000000000000002", &t), 0);
  cr_assert_eq(t.used_at, ATUN_TSTAMP_MAX);
  /* Same name as a live agent: refused; once revoked, the name is free. */
  a = agent_rec(ID2, "web-1", 0xbb);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_EXISTS);
  cr_assert_eq(atun_store_agent_revoke(st, ID1, T0 + S(1), "admin"), 0);
  cr_assert_eq(atun_store_enroll(st, h, T0 + S(2), &a, "api", NULL), 0);
  cr_assert_eq(agent_count(st), 2);
  atun_store_close(st);
}

Test(store, enroll_validation_and_bound) {
  atun_store_settings s;
  atun_store_settings_default(&s);
  s.agents_max = 2;
  atun_store *st = open_store(&s);
  for (int i = 1; i <= 3; ++i) put_token(st, i, T0 + S(60));
  uint8_t h[32];
  hash_of(h, 1);
  atun_agent_record a = agent_rec("bad-id", "x", 1);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_INVALID_ARGUMENT);
  a = agent_rec(ID1, "bad name", 1);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_INVALID_ARGUMENT);
  a = agent_rec(ID1, "x", 1);
  a.serial_len = 0;
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_INVALID_ARGUMENT);
  a.serial_len = ATUN_CA_SERIAL_MAX + 1;
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_INVALID_ARGUMENT);
  a = agent_rec(ID1, "x", 1);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "", NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_store_enroll(st, h, ATUN_TSTAMP_MAX, &a, "api", NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), 0);
  hash_of(h, 2);
  a = agent_rec(ID2, "y", 2);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), 0);
  hash_of(h, 3);
  a = agent_rec(ID3, "z", 3);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_FULL);
  atun_token_record t;
  cr_assert_eq(atun_store_token_get(st, "0000000000000003", &t), 0);
  cr_assert_eq(t.used_at, ATUN_TSTAMP_MAX);
  hash_of(h, 4);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_NOT_FOUND);
  atun_store_close(st);
}

typedef struct fault_plan {
  atun_store_fault at;
  int kill;
  int hits;
} fault_plan;

static int fault_hook(atun_store_fault point, void *ud) {
  fault_plan *p = ud;
  if (point != p->at) return 0;
  ++p->hits;
  if (p->kill) raise(SIGKILL);
  return 1;
}

/* Neither half of an enrollment may survive alone. */
static void assert_nothing_enrolled(void) {
  atun_store *st = open_store(NULL);
  atun_token_record t;
  atun_agent_record a;
  cr_assert_eq(atun_store_token_get(st, "0000000000000001", &t), 0);
  cr_assert_eq(t.used_at, ATUN_TSTAMP_MAX);
  cr_assert_eq(atun_store_agent_get(st, ID1, &a), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(audit_count(st), 0);
  /* And the enrollment can still happen. */
  uint8_t h[32];
  hash_of(h, 1);
  a = agent_rec(ID1, "web-1", 0xaa);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), 0);
  atun_store_close(st);
}

static const atun_store_fault enroll_points[] = {ATUN_STORE_FAULT_ENROLL_CONSUMED,
                                                 ATUN_STORE_FAULT_ENROLL_AGENT,
                                                 ATUN_STORE_FAULT_ENROLL_COMMIT};

Test(store, enroll_failure_between_steps_rolls_back) {
  for (size_t i = 0; i < 3; ++i) {
    remove_tree(dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    atun_store *st = open_store(NULL);
    put_token(st, 1, T0 + S(60));
    atun_store_close(st);
    fault_plan plan = {enroll_points[i], 0, 0};
    atun_store_settings s;
    atun_store_settings_default(&s);
    s.fault = fault_hook;
    s.fault_user_data = &plan;
    st = open_store(&s);
    uint8_t h[32];
    hash_of(h, 1);
    atun_agent_record a = agent_rec(ID1, "web-1", 0xaa);
    cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), ATUN_ERR_STORE);
    cr_assert_eq(plan.hits, 1);
    atun_store_close(st);
    assert_nothing_enrolled();
  }
}

/* A child process enrolls and is killed with SIGKILL at |at| (0: not
 * killed).  Returns the child's wait status. */
static int enroll_in_child(atun_store_fault at) {
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    fault_plan plan = {at, 1, 0};
    atun_store_settings s;
    atun_store_settings_default(&s);
    s.fault = at != 0 ? fault_hook : NULL;
    s.fault_user_data = &plan;
    atun_store *st;
    if (atun_store_open(&st, dbpath, &s) != 0) _exit(3);
    uint8_t h[32];
    hash_of(h, 1);
    atun_agent_record a = agent_rec(ID1, "web-1", 0xaa);
    _exit(atun_store_enroll(st, h, T0, &a, "api", NULL) == 0 ? 0 : 2);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  return status;
}

Test(store, enroll_killed_mid_transaction_rolls_back) {
  for (size_t i = 0; i < 3; ++i) {
    remove_tree(dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    atun_store *st = open_store(NULL);
    put_token(st, 1, T0 + S(60));
    atun_store_close(st);
    int status = enroll_in_child(enroll_points[i]);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_nothing_enrolled();
  }
  /* Control: without the kill, both halves are there after a restart. */
  remove_tree(dir);
  cr_assert_eq(mkdir(dir, 0700), 0);
  atun_store *st = open_store(NULL);
  put_token(st, 1, T0 + S(60));
  atun_store_close(st);
  int status = enroll_in_child(0);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  st = open_store(NULL);
  atun_token_record t;
  atun_agent_record a;
  cr_assert_eq(atun_store_token_get(st, "0000000000000001", &t), 0);
  cr_assert_eq(t.used_at, T0);
  cr_assert_eq(atun_store_agent_get(st, ID1, &a), 0);
  atun_store_close(st);
}

/* --- revocation and renewal ------------------------------------------------------- */

static atun_store *store_with_agent(const atun_store_settings *s) {
  atun_store *st = open_store(s);
  put_token(st, 1, T0 + S(60));
  uint8_t h[32];
  hash_of(h, 1);
  atun_agent_record a = agent_rec(ID1, "web-1", 0xaa);
  cr_assert_eq(atun_store_enroll(st, h, T0, &a, "api", NULL), 0);
  return st;
}

Test(store, revoke_persists_by_id_and_fingerprint) {
  atun_store *st = store_with_agent(NULL);
  uint8_t fp[32], other[32];
  memset(fp, 0xaa, 32);
  memset(other, 0xbb, 32);
  cr_assert_eq(atun_store_is_revoked(st, ID1, fp), 0);
  cr_assert_eq(atun_store_agent_revoke(st, ID1, T0 + S(10), "admin"), 0);
  cr_assert_eq(atun_store_agent_revoke(st, ID1, T0 + S(11), "admin"), ATUN_ERR_REVOKED);
  cr_assert_eq(atun_store_agent_revoke(st, ID2, T0, "admin"), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_store_agent_revoke(st, "x", T0, "admin"), ATUN_ERR_INVALID_ARGUMENT);
  atun_store_close(st);
  st = open_store(NULL);
  cr_assert_eq(atun_store_is_revoked(st, ID1, NULL), 1);
  cr_assert_eq(atun_store_is_revoked(st, NULL, fp), 1);
  cr_assert_eq(atun_store_is_revoked(st, ID2, fp), 1);
  cr_assert_eq(atun_store_is_revoked(st, ID2, other), 0);
  cr_assert_eq(atun_store_is_revoked(st, NULL, NULL), 0);
  atun_agent_record a;
  cr_assert_eq(atun_store_agent_get(st, ID1, &a), 0);
  cr_assert_eq(a.revoked_at, T0 + S(10));
  atun_audit_record au[4];
  cr_assert_eq(atun_store_audit_list(st, au, 4, 0), 2);
  cr_assert_str_eq(au[1].action, "revoke");
  cr_assert_str_eq(au[1].actor, "admin");
  atun_store_close(st);
}

Test(store, revoke_failure_rolls_back) {
  fault_plan plan = {ATUN_STORE_FAULT_REVOKE_COMMIT, 0, 0};
  atun_store_settings s;
  atun_store_settings_default(&s);
  s.fault = fault_hook;
  s.fault_user_data = &plan;
  atun_store *st = store_with_agent(&s);
  cr_assert_eq(atun_store_agent_revoke(st, ID1, T0 + S(10), "admin"), ATUN_ERR_STORE);
  cr_assert_eq(plan.hits, 1);
  uint8_t fp[32];
  memset(fp, 0xaa, 32);
  cr_assert_eq(atun_store_is_revoked(st, ID1, fp), 0);
  cr_assert_eq(audit_count(st), 1);
  atun_store_close(st);
}

Test(store, renew_updates_certificate) {
  atun_store *st = store_with_agent(NULL);
  uint8_t fp[32], serial[16];
  memset(fp, 0xcc, 32);
  memset(serial, 0x55, 16);
  cr_assert_eq(atun_store_agent_renew(st, ID1, fp, serial, 16, T0 + S(999), T0 + S(5),
                                      "agent"), 0);
  atun_agent_record a;
  cr_assert_eq(atun_store_agent_get(st, ID1, &a), 0);
  cr_assert_eq(memcmp(a.fingerprint, fp, 32), 0);
  cr_assert_eq(memcmp(a.serial, serial, 16), 0);
  cr_assert_eq(a.cert_not_after, T0 + S(999));
  cr_assert_eq(audit_count(st), 2);
  cr_assert_eq(atun_store_agent_renew(st, ID2, fp, serial, 16, T0, T0, "agent"),
               ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_store_agent_renew(st, ID1, fp, serial, 0, T0, T0, "agent"),
               ATUN_ERR_INVALID_ARGUMENT);
  /* Revocation covers the renewed certificate, and stops further renewals. */
  cr_assert_eq(atun_store_agent_revoke(st, ID1, T0 + S(6), "admin"), 0);
  cr_assert_eq(atun_store_is_revoked(st, NULL, fp), 1);
  cr_assert_eq(atun_store_agent_renew(st, ID1, fp, serial, 16, T0, T0, "agent"),
               ATUN_ERR_REVOKED);
  atun_store_close(st);
}

/* --- audit ------------------------------------------------------------------------- */

Test(store, audit_keeps_newest_rows) {
  atun_store_settings s;
  atun_store_settings_default(&s);
  s.audit_max = 5;
  atun_store *st = open_store(&s);
  for (int i = 0; i < 8; ++i) {
    char subject[16];
    snprintf(subject, sizeof(subject), "s%d", i);
    cr_assert_eq(atun_store_audit_add(st, T0 + (atun_tstamp)i, "op", "test", subject,
                                      i % 2 ? NULL : "d"), 0);
  }
  atun_audit_record au[8];
  cr_assert_eq(atun_store_audit_list(st, au, 8, 0), 5);
  cr_assert_str_eq(au[0].subject, "s3");
  cr_assert_str_eq(au[4].subject, "s7");
  cr_assert_eq(au[4].seq - au[0].seq, 4);
  cr_assert_eq(au[4].ts, T0 + 7);
  cr_assert_str_eq(au[4].detail, "");
  cr_assert_eq(atun_store_audit_list(st, au, 2, 4), 1);
  atun_store_close(st);
}

Test(store, audit_field_bounds) {
  atun_store *st = open_store(NULL);
  char actor[ATUN_AUDIT_ACTOR_MAX + 2], action[ATUN_AUDIT_ACTION_MAX + 2];
  char subject[ATUN_AUDIT_SUBJECT_MAX + 2], detail[ATUN_AUDIT_DETAIL_MAX + 2];
  memset(actor, 'a', sizeof(actor));
  memset(action, 'b', sizeof(action));
  memset(subject, 'c', sizeof(subject));
  memset(detail, 'd', sizeof(detail));
  actor[ATUN_AUDIT_ACTOR_MAX] = action[ATUN_AUDIT_ACTION_MAX] = '\0';
  subject[ATUN_AUDIT_SUBJECT_MAX] = detail[ATUN_AUDIT_DETAIL_MAX] = '\0';
  cr_assert_eq(atun_store_audit_add(st, T0, actor, action, subject, detail), 0);
  atun_audit_record au;
  cr_assert_eq(atun_store_audit_list(st, &au, 1, 0), 1);
  cr_assert_eq(strlen(au.detail), ATUN_AUDIT_DETAIL_MAX);
  actor[ATUN_AUDIT_ACTOR_MAX] = 'a';
  actor[ATUN_AUDIT_ACTOR_MAX + 1] = '\0';
  cr_assert_eq(atun_store_audit_add(st, T0, actor, action, subject, detail),
               ATUN_ERR_INVALID_ARGUMENT);
  actor[ATUN_AUDIT_ACTOR_MAX] = '\0';
  detail[ATUN_AUDIT_DETAIL_MAX] = 'd';
  detail[ATUN_AUDIT_DETAIL_MAX + 1] = '\0';
  cr_assert_eq(atun_store_audit_add(st, T0, actor, action, subject, detail),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_store_audit_add(st, T0, actor, "", subject, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_store_audit_add(st, T0, NULL, action, subject, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_store_audit_add(st, (atun_tstamp)INT64_MAX + 1, actor, action,
                                    subject, NULL), ATUN_ERR_INVALID_ARGUMENT);
  atun_store_close(st);
}

Test(store, agent_list_paging) {
  atun_store *st = open_store(NULL);
  const char *ids[] = {ID1, ID2, ID3};
  const char *names[] = {"a", "b", "c"};
  for (int i = 0; i < 3; ++i) {
    put_token(st, i + 1, T0 + S(60));
    uint8_t h[32];
    hash_of(h, i + 1);
    atun_agent_record a = agent_rec(ids[i], names[i], (uint8_t)i);
    cr_assert_eq(atun_store_enroll(st, h, T0 + S(i), &a, "api", NULL), 0);
  }
  atun_agent_record out[3];
  cr_assert_eq(atun_store_agent_list(st, out, 3, 0), 3);
  cr_assert_str_eq(out[0].name, "a");
  cr_assert_str_eq(out[2].name, "c");
  cr_assert_eq(atun_store_agent_list(st, out, 2, 1), 2);
  cr_assert_str_eq(out[0].name, "b");
  cr_assert_eq(atun_store_agent_list(st, out, 2, 3), 0);
  atun_store_close(st);
}
