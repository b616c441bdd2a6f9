/*
 * The files `atun-agent enroll` writes, and their order (SPEC §5):
 *
 *   1. the private key, before the gateway is asked anything: a directory
 *      that cannot take it fails the command before the one-time token is
 *      spent;
 *   2. the certificate and the CA certificate, once the gateway answered;
 *   3. the merged config, last: it is what makes the new files count.
 *
 * All three credential files are written atomically, mode 0600, under names
 * that carry the new agent id (agent-<id>.key, agent-<id>.crt,
 * agent-<id>-ca.crt) and with ATUN_FS_NOREPLACE.  So enrolling again never
 * touches the files the current config points to, and a failure at any step
 * removes exactly what this run created and leaves the config as it was:
 * there is no half-enrolled state.
 *
 * The file system is reached through |agent_fs_ops| so that the unit tests
 * can fail any step.
 */
#ifndef ATUN_AGENT_ENROLL_FILES_H
#define ATUN_AGENT_ENROLL_FILES_H

#include <sys/types.h>

#include "atun.h"
#include "ca_policy.h"
#include "config.h"

typedef struct agent_fs_ops {
  /* As atun_fs_write_atomic(). */
  int (*write)(const char *path, const void *data, size_t len, mode_t mode,
               unsigned flags, void *user_data);
  /* Removes |path|; returns 0 or a negative ATUN_ERR_*. */
  int (*remove)(const char *path, void *user_data);
  void *user_data;
} agent_fs_ops;

/* atun_fs_write_atomic() and unlink(2). */
const agent_fs_ops *agent_fs_ops_default(void);

enum { AGENT_FILE_KEY = 0, AGENT_FILE_CERT, AGENT_FILE_CA, AGENT_FILE_COUNT };

typedef struct agent_enroll_files {
  const agent_fs_ops *ops;
  char path[AGENT_FILE_COUNT][ATUN_CONFIG_PATH_MAX + 1];
  unsigned written; /* bit i: this run created path[i] */
} agent_enroll_files;

/* Names the files of agent |id| in the absolute directory |dir|.  Returns 0
 * or ATUN_ERR_INVALID_ARGUMENT (|dir| not absolute, |id| not a UUID, or a
 * path longer than ATUN_CONFIG_PATH_MAX). */
int agent_enroll_files_plan(agent_enroll_files *f, const char *dir,
                            const char *id, const agent_fs_ops *ops);

/* Step 1.  Returns 0 or what |ops|->write returns (ATUN_ERR_EXISTS if the
 * name is taken). */
int agent_enroll_files_write_key(agent_enroll_files *f, const char *pem,
                                 size_t len);

/* Step 2: the certificate, then the CA.  Returns 0 or what |ops|->write
 * returns; what this call wrote stays until rollback. */
int agent_enroll_files_write_certs(agent_enroll_files *f, const char *cert_pem,
                                   size_t cert_len, const char *ca_pem,
                                   size_t ca_len);

/* Step 3: replaces the config at |path| with |len| bytes of |text|, mode
 * |mode|.  Returns 0 or what |ops|->write returns; on failure the old
 * config is intact (the write is atomic). */
int agent_enroll_files_write_config(agent_enroll_files *f, const char *path,
                                    const char *text, size_t len, mode_t mode);

/* Removes every file this run created (never the config), newest first.
 * Returns the number of files that could not be removed. */
size_t agent_enroll_files_rollback(agent_enroll_files *f);

#endif /* ATUN_AGENT_ENROLL_FILES_H */
