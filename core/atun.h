/*
 * atun core: the types every core module shares.
 *
 * The core is sans-I/O: it never reads a clock, a socket, a file or a global
 * RNG.  Time comes in as |atun_tstamp| (nanoseconds, monotonic, chosen by the
 * caller), randomness through |atun_rand|, memory through |atun_mem|.
 */
#ifndef ATUN_ATUN_H
#define ATUN_ATUN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nanoseconds on the caller's monotonic clock.  UINT64_MAX means "unset" /
 * "never". */
typedef uint64_t atun_tstamp;
#define ATUN_TSTAMP_MAX UINT64_MAX
#define ATUN_NS_PER_MS ((uint64_t)1000000)
#define ATUN_NS_PER_S ((uint64_t)1000000000)

/* Error codes.  Every failing core function returns one of these (negative).
 * Codes at or below ATUN_ERR_FATAL mean the object that returned them can not
 * be used any more. */
typedef enum atun_error {
  ATUN_OK = 0,
  ATUN_ERR_INVALID_ARGUMENT = -201,
  ATUN_ERR_NOBUF = -202,          /* caller's output buffer too small */
  ATUN_ERR_TRUNCATED = -203,      /* input ends inside a field or frame */
  ATUN_ERR_MALFORMED = -204,      /* bytes that can not be a valid encoding */
  ATUN_ERR_FRAME_TOO_LARGE = -205,/* a length above the protocol limit */
  ATUN_ERR_UNKNOWN_TYPE = -206,   /* frame type this version does not know */
  ATUN_ERR_LIMIT = -207,          /* a count above the protocol limit */
  ATUN_ERR_BAD_PREFIX = -208,     /* CIDR prefix length wrong for its family */
  ATUN_ERR_BAD_NAME = -209,       /* domain or host name not acceptable */
  ATUN_ERR_MISSING_FIELD = -210,  /* a required field is absent */
  ATUN_ERR_TRAILING = -211,       /* bytes after the end of a complete value */
  ATUN_ERR_VERSION = -212,        /* no common protocol version */
  ATUN_ERR_NOT_FOUND = -213,
  ATUN_ERR_EXISTS = -214,
  ATUN_ERR_FULL = -215,           /* a stated bound was reached */
  ATUN_ERR_EXPIRED = -216,
  ATUN_ERR_USED = -217,           /* one-time item already consumed */
  ATUN_ERR_STALE = -218,          /* refers to an older generation / epoch */
  ATUN_ERR_REVOKED = -219,
  ATUN_ERR_STATE = -220,          /* call not valid in the object's state */
  ATUN_ERR_PROTO = -221,          /* peer broke the protocol */
  ATUN_ERR_DENIED = -222,
  ATUN_ERR_TIMEOUT = -223,
  ATUN_ERR_CLOSED = -224,
  ATUN_ERR_WOULDBLOCK = -225,     /* no room now; try again later */
  ATUN_ERR_STORE = -226,          /* the persistence callback failed */
  ATUN_ERR_IO = -227,             /* a system call failed; errno tells more */
  /* Fatal errors below this line. */
  ATUN_ERR_FATAL = -500,
  ATUN_ERR_NOMEM = -501,
  ATUN_ERR_CALLBACK_FAILURE = -502,
  ATUN_ERR_INTERNAL = -503
} atun_error;

/* Returns a static, human-readable text for |code|. */
const char *atun_strerror(int code);

/* Returns nonzero if |code| is fatal for the object that returned it. */
int atun_err_is_fatal(int code);

/* Injectable allocator, same contract as the C library functions.  |user_data|
 * is passed back to every call. */
typedef struct atun_mem {
  void *user_data;
  void *(*malloc)(size_t size, void *user_data);
  void (*free)(void *ptr, void *user_data);
  void *(*calloc)(size_t nmemb, size_t size, void *user_data);
  void *(*realloc)(void *ptr, size_t size, void *user_data);
} atun_mem;

/* The C library's allocator. */
const atun_mem *atun_mem_default(void);

void *atun_mem_malloc(const atun_mem *mem, size_t size);
void atun_mem_free(const atun_mem *mem, void *ptr);
void *atun_mem_calloc(const atun_mem *mem, size_t nmemb, size_t size);
void *atun_mem_realloc(const atun_mem *mem, void *ptr, size_t size);

/* Randomness source: fill |dest| with |destlen| random bytes.  Returns 0 or a
 * nonzero value on failure. */
typedef int (*atun_rand_fn)(uint8_t *dest, size_t destlen, void *user_data);

typedef struct atun_rand {
  atun_rand_fn fill;
  void *user_data;
} atun_rand;

/* Asserts stay on outside release builds (NDEBUG), and always in fuzz and
 * simulation builds, which never define NDEBUG. */
#include <assert.h>
#define ATUN_ASSERT(cond) assert(cond)

#ifdef __cplusplus
}
#endif

#endif /* ATUN_ATUN_H */
