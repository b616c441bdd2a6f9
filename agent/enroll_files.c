/*
 * Credential files of an enrollment, written in order and rolled back as a
 * unit (see enroll_files.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "enroll_files.h"
#include "fsutil.h"

static int fs_write(const char *path, const void *data, size_t len, mode_t mode,
                    unsigned flags, void *user_data) {
  (void)user_data;
  return atun_fs_write_atomic(path, data, len, mode, flags);
}

static int fs_remove(const char *path, void *user_data) {
  (void)user_data;
  if (unlink(path) == 0 || errno == ENOENT) return 0;
  return errno == EACCES || errno == EPERM ? ATUN_ERR_DENIED : ATUN_ERR_STORE;
}

static const agent_fs_ops default_ops = {fs_write, fs_remove, NULL};

const agent_fs_ops *agent_fs_ops_default(void) { return &default_ops; }

int agent_enroll_files_plan(agent_enroll_files *f, const char *dir,
                            const char *id, const agent_fs_ops *ops) {
  static const char *const suffix[AGENT_FILE_COUNT] = {".key", ".crt", "-ca.crt"};
  memset(f, 0, sizeof(*f));
  f->ops = ops;
  if (dir == NULL || dir[0] != '/' || id == NULL ||
      !atun_uuid_valid(id, strlen(id)))
    return ATUN_ERR_INVALID_ARGUMENT;
  /* "/" alone must not become "//agent-...". */
  const char *sep = dir[strlen(dir) - 1] == '/' ? "" : "/";
  for (int i = 0; i < AGENT_FILE_COUNT; ++i) {
    int n = snprintf(f->path[i], sizeof(f->path[i]), "%s%sagent-%s%s", dir, sep,
                     id, suffix[i]);
    if (n < 0 || (size_t)n >= sizeof(f->path[i])) return ATUN_ERR_INVALID_ARGUMENT;
  }
  return 0;
}

static int write_one(agent_enroll_files *f, int which, const char *data,
                     size_t len) {
  int rv = f->ops->write(f->path[which], data, len, ATUN_FS_MODE_SECRET,
                         ATUN_FS_NOREPLACE, f->ops->user_data);
  if (rv == 0) f->written |= 1u << which;
  return rv;
}

int agent_enroll_files_write_key(agent_enroll_files *f, const char *pem,
                                 size_t len) {
  return write_one(f, AGENT_FILE_KEY, pem, len);
}

int agent_enroll_files_write_certs(agent_enroll_files *f, const char *cert_pem,
                                   size_t cert_len, const char *ca_pem,
                                   size_t ca_len) {
  int rv = write_one(f, AGENT_FILE_CERT, cert_pem, cert_len);
  return rv != 0 ? rv : write_one(f, AGENT_FILE_CA, ca_pem, ca_len);
}

int agent_enroll_files_write_config(agent_enroll_files *f, const char *path,
                                    const char *text, size_t len, mode_t mode) {
  return f->ops->write(path, text, len, mode, 0, f->ops->user_data);
}

size_t agent_enroll_files_rollback(agent_enroll_files *f) {
  size_t left = 0;
  for (int i = AGENT_FILE_COUNT - 1; i >= 0; --i) {
    if (!(f->written & (1u << i))) continue;
    if (f->ops->remove(f->path[i], f->ops->user_data) != 0) {
      ++left;
      continue;
    }
    f->written &= ~(1u << i);
  }
  return left;
}
