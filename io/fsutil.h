/*
 * Whole-file reads and atomic writes for keys, certificates and config.
 *
 * An atomic write never leaves a half-written file under the final name: the
 * data goes to a temporary file in the same directory, is flushed to disk,
 * renamed over the target, and the directory entry is flushed too.  After a
 * crash the path holds either the old content or the new one.
 *
 * On failure these functions keep |errno| from the failing system call, so a
 * caller can log strerror(errno) next to the atun error.
 */
#ifndef ATUN_FSUTIL_H
#define ATUN_FSUTIL_H

#include <sys/types.h>

#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Modes for secrets (keys, state) and for public material. */
#define ATUN_FS_MODE_SECRET 0600
#define ATUN_FS_MODE_PUBLIC 0644

/* Longest path accepted (the temporary name adds a suffix to it). */
#define ATUN_FS_PATH_MAX 4000

/* Flags of atun_fs_write_atomic. */
#define ATUN_FS_NOREPLACE 0x1u /* fail with ATUN_ERR_EXISTS if |path| exists */

/*
 * Writes |len| bytes of |data| to |path| atomically with permission bits
 * exactly |mode| (the umask does not apply).  With ATUN_FS_NOREPLACE an
 * existing file is left alone, so a second `init` cannot overwrite a CA key.
 * No temporary file is left behind, whatever the outcome.  An error from the
 * final directory flush means the new content is in place but may not
 * survive a crash.
 *
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (empty or too long path),
 * ATUN_ERR_EXISTS, ATUN_ERR_NOT_FOUND (the directory does not exist),
 * ATUN_ERR_DENIED (permission) or ATUN_ERR_STORE (any other I/O failure).
 */
int atun_fs_write_atomic(const char *path, const void *data, size_t len,
                         mode_t mode, unsigned flags);

/*
 * Reads the whole regular file |path| into |buf| of |cap| bytes; its size
 * goes to |len|.  A file larger than |cap| is refused without reading it all.
 *
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (not a regular file, bad path),
 * ATUN_ERR_NOT_FOUND, ATUN_ERR_DENIED, ATUN_ERR_LIMIT (larger than |cap|) or
 * ATUN_ERR_STORE.
 */
int atun_fs_read(const char *path, void *buf, size_t cap, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_FSUTIL_H */
