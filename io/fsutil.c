#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP_SUFFIX ".tmp.XXXXXX"

static int errno_to_atun(int e) {
  switch (e) {
  case ENOENT:
  case ENOTDIR: return ATUN_ERR_NOT_FOUND;
  case EACCES:
  case EPERM:
  case EROFS: return ATUN_ERR_DENIED;
  case EEXIST: return ATUN_ERR_EXISTS;
  default: return ATUN_ERR_STORE;
  }
}

static int write_all(int fd, const uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Flushes the directory holding |path| so a rename or link in it survives a
 * crash. */
static int sync_parent_dir(const char *path) {
  char dir[ATUN_FS_PATH_MAX + 1];
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    memcpy(dir, ".", 2);
  } else if (slash == path) {
    memcpy(dir, "/", 2);
  } else {
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rv = fsync(fd);
  int saved = errno;
  close(fd);
  errno = saved;
  return rv;
}

/* Writes and flushes the temporary file; it is closed on return. */
static int fill_tmp(int fd, const void *data, size_t len, mode_t mode) {
  int rv = 0;
  if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != 0 ||
      fsync(fd) != 0) {
    rv = -1;
  }
  int saved = errno;
  if (close(fd) != 0 && rv == 0) return -1;
  errno = saved;
  return rv;
}

/* Moves |tmp| to |path|: a hard link when an existing file must be kept
 * (link fails with EEXIST), else a rename over it. */
static int publish(const char *tmp, const char *path, unsigned flags) {
  if ((flags & ATUN_FS_NOREPLACE) == 0) return rename(tmp, path);
  if (link(tmp, path) != 0) return -1;
  unlink(tmp);
  return 0;
}

int atun_fs_write_atomic(const char *path, const void *data, size_t len,
                         mode_t mode, unsigned flags) {
  size_t plen = path == NULL ? 0 : strnlen(path, ATUN_FS_PATH_MAX + 1);
  if (plen == 0 || plen > ATUN_FS_PATH_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  char tmp[ATUN_FS_PATH_MAX + sizeof(TMP_SUFFIX)];
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, TMP_SUFFIX, sizeof(TMP_SUFFIX));
  int fd = mkstemp(tmp);
  if (fd < 0) return errno_to_atun(errno);
  if (fill_tmp(fd, data, len, mode) != 0 || publish(tmp, path, flags) != 0) {
    int saved = errno;
    unlink(tmp);
    errno = saved;
    return errno_to_atun(saved);
  }
  return sync_parent_dir(path) == 0 ? 0 : errno_to_atun(errno);
}

static int read_all(int fd, uint8_t *p, size_t want, size_t *got) {
  *got = 0;
  while (*got < want) {
    ssize_t n = read(fd, p + *got, want - *got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;
    *got += (size_t)n;
  }
  return 0;
}

int atun_fs_read(const char *path, void *buf, size_t cap, size_t *len) {
  if (path == NULL || path[0] == '\0') return ATUN_ERR_INVALID_ARGUMENT;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_to_atun(errno);
  struct stat st;
  int rv = 0;
  if (fstat(fd, &st) != 0) {
    rv = errno_to_atun(errno);
  } else if (!S_ISREG(st.st_mode)) {
    rv = ATUN_ERR_INVALID_ARGUMENT;
  } else if ((uint64_t)st.st_size > cap) {
    rv = ATUN_ERR_LIMIT;
  } else {
    /* Read one byte past |cap| when there is room, so a file that grew
     * since fstat is still caught. */
    uint8_t extra;
    size_t got = 0, more = 0;
    if (read_all(fd, buf, cap, &got) != 0 ||
        (got == cap && read_all(fd, &extra, 1, &more) != 0)) {
      rv = errno_to_atun(errno);
    } else if (more != 0) {
      rv = ATUN_ERR_LIMIT;
    } else {
      *len = got;
    }
  }
  int saved = errno;
  close(fd);
  errno = saved;
  return rv;
}
