/*
 * Structured log lines (SPEC §8): one logfmt line per event, to stderr by
 * default.
 *
 *   ts=2026-11-25T17:02:00.123Z level=info component=gateway
 *       event=agent_connected agent_id=0b7e... reason="peer went away"
 *
 * (one line in reality).  Fields come from a printf format whose words are
 * "key=value-conversions", separated by single spaces:
 *
 *   atun_log(ATUN_LOG_INFO, "gateway", "agent_connected",
 *            "agent_id=%s rtt_ms=%.1f streams=%zu", id, rtt, n);
 *
 * Each value is formatted on its own, then quoted when it is empty or holds
 * a space, '"', '=', '\\' or a control character; inside quotes '"' and '\\'
 * are backslash-escaped, \n \r \t spelled out and other control bytes written
 * as \xNN, so a value can never start a new line or forge a field.  Keys are
 * reduced to [A-Za-z0-9_.-] (others become '_').
 *
 * A field whose key contains "token", "secret", "key", "password", "passwd",
 * "authorization" or "cookie" (any case) is written as key=<redacted>: the
 * value is never formatted.  Over-redaction ("monkey") is the safe side.
 *
 * Bounds: a value is cut at ATUN_LOG_VALUE_MAX bytes and a line at
 * ATUN_LOG_LINE_MAX bytes (newline included); a cut value ends in "...",
 * fields that no longer fit are left out, and the line then ends with
 * "truncated=1".  At most ATUN_LOG_FIELDS_MAX fields per line.
 *
 * The level and the sink are process-wide and not thread-safe: the daemons
 * log from their one loop thread.  Wall-clock time is fine here (io/).
 */
#ifndef ATUN_LOG_H
#define ATUN_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATUN_LOG_LINE_MAX 2048
#define ATUN_LOG_VALUE_MAX 512
#define ATUN_LOG_FIELDS_MAX 32

typedef enum atun_log_level {
  ATUN_LOG_DEBUG = 0,
  ATUN_LOG_INFO = 1,
  ATUN_LOG_WARN = 2,
  ATUN_LOG_ERROR = 3
} atun_log_level;

#if defined(__GNUC__)
#define ATUN_LOG_PRINTF(fmt_idx, arg_idx) \
  __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define ATUN_LOG_PRINTF(fmt_idx, arg_idx)
#endif

/* "debug", "info", "warn", "error"; "?" for anything else. */
const char *atun_log_level_name(atun_log_level level);

/* Parses "debug", "info", "warn"/"warning" or "error" (any case) into
 * |*out|.  Returns 0 or ATUN_ERR_INVALID_ARGUMENT. */
int atun_log_level_parse(const char *s, atun_log_level *out);

/* Lines below |level| are dropped (default: ATUN_LOG_INFO). */
void atun_log_set_level(atun_log_level level);
atun_log_level atun_log_get_level(void);

/* Nonzero when a line at |level| would be written: guard costly
 * arguments with it. */
int atun_log_enabled(atun_log_level level);

/* Where finished lines go: |line| of |len| bytes ends with '\n' (and is
 * also NUL-terminated).  NULL restores the default, a write(2) to stderr. */
typedef void (*atun_log_sink_fn)(atun_log_level level, const char *line,
                                 size_t len, void *user_data);
void atun_log_set_sink(atun_log_sink_fn fn, void *user_data);

/* Recent problems, for a status report.  atun_log_keep_recent() installs a
 * sink that writes every line to stderr as the default does and keeps the
 * last ATUN_LOG_RECENT_MAX lines of level warn or worse, each without its
 * newline and cut to ATUN_LOG_RECENT_LEN - 1 bytes. */
#define ATUN_LOG_RECENT_MAX 8
#define ATUN_LOG_RECENT_LEN 512
void atun_log_keep_recent(void);

/* Calls |fn| with each kept line, oldest first.  Returns how many lines of
 * level warn or worse were logged since atun_log_keep_recent() (more than
 * were kept when the ring went round). */
uint64_t atun_log_recent(void (*fn)(const char *line, void *user_data), void *user_data);

/* Nonzero if a field named |key| is written as <redacted>. */
int atun_log_key_is_secret(const char *key, size_t len);

/* Writes one line at |level| for |component| and |event| with the fields of
 * |fmt| (NULL or "" for none), if |level| passes the filter. */
void atun_log(atun_log_level level, const char *component, const char *event,
              const char *fmt, ...) ATUN_LOG_PRINTF(4, 5);
void atun_logv(atun_log_level level, const char *component,
               const char *event, const char *fmt, va_list ap)
    ATUN_LOG_PRINTF(4, 0);

/* Formats the line atun_log would write, with time |wall_ns| (ns since the
 * UNIX epoch), into |buf| of |cap| bytes (NUL-terminated; a |cap| below
 * ATUN_LOG_LINE_MAX + 1 bounds the line further).  No level filter.
 * Returns the line length, newline included, or 0 if |cap| < 64. */
size_t atun_log_format(char *buf, size_t cap, atun_tstamp wall_ns,
                       atun_log_level level, const char *component,
                       const char *event, const char *fmt, ...)
    ATUN_LOG_PRINTF(7, 8);
size_t atun_log_vformat(char *buf, size_t cap, atun_tstamp wall_ns,
                        atun_log_level level, const char *component,
                        const char *event, const char *fmt, va_list ap)
    ATUN_LOG_PRINTF(7, 0);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_LOG_H */
