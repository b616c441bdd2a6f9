/*
 * logfmt lines; see log.h.  Each field value is formatted alone: the format
 * is split into words, each word's value part is handed to vsnprintf with a
 * copy of the argument list, and the arguments it used are then stepped
 * over by type.  That is what lets every value be quoted and escaped on its
 * own, and lets a secret's value be skipped without ever being formatted.
 */
#include "log.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Room kept at the end of every line for " truncated=1". */
static const char truncated_mark[] = " truncated=1";
#define MARK_LEN (sizeof(truncated_mark) - 1)
/* A format word longer than this is not formatted ("?"). */
#define SPEC_MAX 256
#define KEY_MAX 64

static atun_log_level g_level = ATUN_LOG_INFO;
static atun_log_sink_fn g_sink;
static void *g_sink_ud;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *atun_log_level_name(atun_log_level level) {
  if ((unsigned)level > ATUN_LOG_ERROR) return "?";
  return level_names[level];
}

int atun_log_level_parse(const char *s, atun_log_level *out) {
  if (s == NULL || out == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  for (int i = ATUN_LOG_DEBUG; i <= ATUN_LOG_ERROR; ++i) {
    if (strcasecmp(s, level_names[i]) == 0) {
      *out = (atun_log_level)i;
      return 0;
    }
  }
  if (strcasecmp(s, "warning") == 0) {
    *out = ATUN_LOG_WARN;
    return 0;
  }
  return ATUN_ERR_INVALID_ARGUMENT;
}

void atun_log_set_level(atun_log_level level) {
  if ((unsigned)level <= ATUN_LOG_ERROR) g_level = level;
}

atun_log_level atun_log_get_level(void) { return g_level; }

int atun_log_enabled(atun_log_level level) {
  return (unsigned)level <= ATUN_LOG_ERROR && level >= g_level;
}

void atun_log_set_sink(atun_log_sink_fn fn, void *user_data) {
  g_sink = fn;
  g_sink_ud = fn ? user_data : NULL;
}

/* --- redaction ---------------------------------------------------------------------------- */

static const char *const secret_words[] = {"token", "secret", "key", "passw",
                                           "authorization", "cookie",
                                           "credential"};

static int contains_nocase(const char *s, size_t len, const char *word) {
  size_t wl = strlen(word);
  for (size_t i = 0; i + wl <= len; ++i) {
    if (strncasecmp(s + i, word, wl) == 0) return 1;
  }
  return 0;
}

int atun_log_key_is_secret(const char *key, size_t len) {
  if (key == NULL) return 0;
  for (size_t i = 0; i < sizeof(secret_words) / sizeof(secret_words[0]); ++i) {
    if (contains_nocase(key, len, secret_words[i])) return 1;
  }
  return 0;
}

/* --- the line ------------------------------------------------------------------------------ */

typedef struct line {
  char *buf;
  size_t len;
  size_t limit; /* bytes allowed before the final '\n' */
  int truncated;
} line;

static int byte_needs_quote(unsigned char c) {
  return c <= 0x20 || c == 0x7f || c == '"' || c == '=' || c == '\\';
}

static int value_needs_quote(const char *v, size_t n) {
  if (n == 0) return 1;
  for (size_t i = 0; i < n; ++i) {
    if (byte_needs_quote((unsigned char)v[i])) return 1;
  }
  return 0;
}

/* The escaped form of one byte inside quotes into |out| (room for 4). */
static size_t escape_byte(unsigned char c, char *out) {
  static const char hex[] = "0123456789abcdef";
  switch (c) {
  case '"': memcpy(out, "\\\"", 2); return 2;
  case '\\': memcpy(out, "\\\\", 2); return 2;
  case '\n': memcpy(out, "\\n", 2); return 2;
  case '\r': memcpy(out, "\\r", 2); return 2;
  case '\t': memcpy(out, "\\t", 2); return 2;
  default: break;
  }
  if (c < 0x20 || c == 0x7f) {
    out[0] = '\\';
    out[1] = 'x';
    out[2] = hex[c >> 4];
    out[3] = hex[c & 15];
    return 4;
  }
  out[0] = (char)c;
  return 1;
}

/* Writes value |v| of |n| bytes encoded into |out| of |room| bytes: quoted
 * if needed, cut with "..." when it exceeds ATUN_LOG_VALUE_MAX or |room|
 * (then |*room_cut| is set).  Returns the length, or 0 when not even a cut
 * value fits. */
static size_t encode_value(char *out, size_t room, const char *v, size_t n,
                           int *room_cut) {
  size_t q = value_needs_quote(v, n) ? 1 : 0;
  int cut = n > ATUN_LOG_VALUE_MAX;
  if (cut) n = ATUN_LOG_VALUE_MAX;
  size_t tail = 3 + q; /* "..." and the closing quote */
  *room_cut = 0;
  if (room < q + tail) return 0;
  size_t len = 0;
  if (q) out[len++] = '"';
  for (size_t i = 0; i < n; ++i) {
    char esc[4];
    size_t el = 1;
    if (q) el = escape_byte((unsigned char)v[i], esc);
    else esc[0] = v[i];
    /* After the last byte only the closing quote follows, not "...". */
    size_t after = (i + 1 == n && !cut) ? q : tail;
    if (len + el + after > room) {
      cut = 1;
      *room_cut = 1;
      break;
    }
    memcpy(out + len, esc, el);
    len += el;
  }
  if (cut) {
    memcpy(out + len, "...", 3);
    len += 3;
  }
  if (q) out[len++] = '"';
  return len;
}

static void put_raw(line *l, const char *s, size_t n) {
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

/* Appends " key=value" (no leading space for the first field).  A field
 * that does not fit at all is left out; one cut for lack of room ends the
 * line.  Either marks the line truncated. */
static void put_field(line *l, const char *key, size_t keylen, const char *v,
                      size_t vn) {
  if (keylen == 0) {
    key = "_";
    keylen = 1;
  }
  if (keylen > KEY_MAX) keylen = KEY_MAX;
  size_t sep = l->len > 0 ? 1 : 0;
  size_t head = sep + keylen + 1;
  if (l->truncated || l->len + MARK_LEN + head >= l->limit) {
    l->truncated = 1;
    return;
  }
  size_t avail = l->limit - MARK_LEN - l->len;
  int room_cut;
  char *p = l->buf + l->len;
  size_t vlen = encode_value(p + head, avail - head, v, vn, &room_cut);
  if (vlen == 0) {
    l->truncated = 1;
    return;
  }
  if (sep) p[0] = ' ';
  for (size_t i = 0; i < keylen; ++i) {
    char c = key[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    p[sep + i] = ok ? c : '_';
  }
  p[sep + keylen] = '=';
  l->len += head + vlen;
  if (room_cut) l->truncated = 1;
}

static void put_str_field(line *l, const char *key, const char *v) {
  if (v == NULL) v = "";
  put_field(l, key, strlen(key), v, strlen(v));
}

/* --- format words ------------------------------------------------------------------------ */

typedef enum arg_kind {
  A_NONE,
  A_INT,
  A_LONG,
  A_LLONG,
  A_INTMAX,
  A_SSIZE,
  A_PTRDIFF,
  A_DOUBLE,
  A_LDOUBLE,
  A_PTR,
  A_BAD
} arg_kind;

static arg_kind int_kind(const char *len) {
  if (strcmp(len, "l") == 0) return A_LONG;
  if (strcmp(len, "ll") == 0 || strcmp(len, "q") == 0) return A_LLONG;
  if (strcmp(len, "j") == 0) return A_INTMAX;
  if (strcmp(len, "z") == 0) return A_SSIZE;
  if (strcmp(len, "t") == 0) return A_PTRDIFF;
  if (len[0] == '\0' || strcmp(len, "h") == 0 || strcmp(len, "hh") == 0)
    return A_INT;
  return A_BAD;
}

static void skip_arg(va_list *ap, arg_kind k) {
  switch (k) {
  case A_INT: (void)va_arg(*ap, int); break;
  case A_LONG: (void)va_arg(*ap, long); break;
  case A_LLONG: (void)va_arg(*ap, long long); break;
  case A_INTMAX: (void)va_arg(*ap, intmax_t); break;
  case A_SSIZE: (void)va_arg(*ap, ssize_t); break;
  case A_PTRDIFF: (void)va_arg(*ap, ptrdiff_t); break;
  case A_DOUBLE: (void)va_arg(*ap, double); break;
  case A_LDOUBLE: (void)va_arg(*ap, long double); break;
  case A_PTR: (void)va_arg(*ap, const void *); break;
  default: break;
  }
}

/* Parses the conversion at |*pp| (just after a '%') and steps |ap| over the
 * arguments it takes (signedness does not change the size, so an unsigned
 * value is stepped over as its signed twin); a NULL string argument sets
 * |*null_str|.  Returns 0, or -1 for a conversion this logger does not
 * format (%n, wide strings, unknown ones). */
static int step_conversion(const char **pp, const char *end, va_list *ap,
                           int *null_str) {
  const char *p = *pp;
  while (p < end && strchr("-+ #0'", *p) != NULL) ++p;
  if (p < end && *p == '*') {
    skip_arg(ap, A_INT);
    ++p;
  }
  while (p < end && *p >= '0' && *p <= '9') ++p;
  if (p < end && *p == '.') {
    ++p;
    if (p < end && *p == '*') {
      skip_arg(ap, A_INT);
      ++p;
    }
    while (p < end && *p >= '0' && *p <= '9') ++p;
  }
  char len[3] = {0};
  size_t ln = 0;
  while (p < end && ln < 2 && strchr("hlLjztq", *p) != NULL) len[ln++] = *p++;
  if (p >= end) return -1;
  char conv = *p++;
  *pp = p;
  arg_kind k = A_BAD;
  if (conv == '%' && ln == 0) k = A_NONE;
  else if (strchr("diouxX", conv) != NULL) k = int_kind(len);
  else if (strchr("eEfFgGaA", conv) != NULL)
    k = ln == 0 ? A_DOUBLE : (strcmp(len, "L") == 0 ? A_LDOUBLE : A_BAD);
  else if (conv == 'c' && ln == 0) k = A_INT;
  else if (conv == 'p' && ln == 0) k = A_PTR;
  else if (conv == 's' && ln == 0) {
    if (va_arg(*ap, const char *) == NULL) *null_str = 1;
    return 0;
  }
  if (k == A_BAD) return -1;
  skip_arg(ap, k);
  return 0;
}

/* Steps |ap| over every argument the value spec [p, end) takes.  Returns 0
 * or -1 (see step_conversion); after -1 |ap| is of no further use. */
static int step_spec(const char *p, const char *end, va_list *ap,
                     int *null_str) {
  while (p < end) {
    if (*p++ != '%') continue;
    if (step_conversion(&p, end, ap, null_str) != 0) return -1;
  }
  return 0;
}

/* Formats the value spec [spec, end) with the arguments at |ap| (not
 * stepped) into |val| of |cap| bytes.  Returns the untruncated length, or
 * -1 if the spec can not be formatted safely. */
static int format_value(char *val, size_t cap, const char *spec,
                        const char *end, va_list ap) {
  size_t speclen = (size_t)(end - spec);
  char fmt[SPEC_MAX + 1];
  int null_str = 0;
  va_list c;
  va_copy(c, ap);
  int ok = step_spec(spec, end, &c, &null_str) == 0;
  va_end(c);
  if (!ok || speclen > SPEC_MAX) return -1;
  /* A NULL for %s is undefined behaviour; say so instead of formatting. */
  if (null_str) return snprintf(val, cap, "(null)");
  memcpy(fmt, spec, speclen);
  fmt[speclen] = '\0';
  va_copy(c, ap);
  /* |fmt| is a slice of the caller's format, which the compiler checked
   * against the arguments at the call (ATUN_LOG_PRINTF). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
  int n = vsnprintf(val, cap, fmt, c);
#pragma GCC diagnostic pop
  va_end(c);
  return n;
}

/* Formats one word "key=spec" of the format; returns -1 when the rest of
 * the arguments can no longer be trusted. */
static int put_word(line *l, const char *w, const char *end, va_list *ap) {
  const char *eq = memchr(w, '=', (size_t)(end - w));
  size_t keylen = eq ? (size_t)(eq - w) : (size_t)(end - w);
  const char *spec = eq ? eq + 1 : end;
  int null_str = 0;
  if (atun_log_key_is_secret(w, keylen)) {
    put_field(l, w, keylen, "<redacted>", 10);
    return step_spec(spec, end, ap, &null_str);
  }
  char val[ATUN_LOG_VALUE_MAX + 2];
  int n = format_value(val, sizeof(val), spec, end, *ap);
  if (step_spec(spec, end, ap, &null_str) != 0) {
    put_field(l, w, keylen, "?", 1);
    return -1;
  }
  if (n < 0) {
    put_field(l, w, keylen, "?", 1);
    return 0;
  }
  size_t vn = (size_t)n < sizeof(val) - 1 ? (size_t)n : sizeof(val) - 1;
  put_field(l, w, keylen, val, vn);
  return 0;
}

static void put_words(line *l, const char *fmt, va_list ap) {
  if (fmt == NULL) return;
  va_list c;
  va_copy(c, ap);
  const char *p = fmt;
  size_t fields = 0;
  while (*p != '\0') {
    while (*p == ' ') ++p;
    if (*p == '\0') break;
    const char *end = strchr(p, ' ');
    if (end == NULL) end = p + strlen(p);
    if (fields++ == ATUN_LOG_FIELDS_MAX) {
      l->truncated = 1;
      break;
    }
    if (put_word(l, p, end, &c) != 0) {
      l->truncated = 1;
      break;
    }
    p = end;
  }
  va_end(c);
}

static void put_ts(line *l, atun_tstamp wall_ns) {
  time_t secs = (time_t)(wall_ns / ATUN_NS_PER_S);
  unsigned ms = (unsigned)((wall_ns % ATUN_NS_PER_S) / ATUN_NS_PER_MS);
  struct tm tm;
  char v[96]; /* room for any int, so the compiler sees no truncation */
  if (gmtime_r(&secs, &tm) == NULL) {
    put_str_field(l, "ts", "?");
    return;
  }
  snprintf(v, sizeof(v), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ",
           tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
           tm.tm_min, tm.tm_sec, ms);
  put_str_field(l, "ts", v);
}

size_t atun_log_vformat(char *buf, size_t cap, atun_tstamp wall_ns,
                        atun_log_level level, const char *component,
                        const char *event, const char *fmt, va_list ap) {
  if (buf == NULL || cap < 64) return 0;
  line l = {.buf = buf, .len = 0, .truncated = 0};
  size_t max = cap - 1 < ATUN_LOG_LINE_MAX ? cap - 1 : ATUN_LOG_LINE_MAX;
  l.limit = max - 1; /* the '\n' */
  put_ts(&l, wall_ns);
  put_str_field(&l, "level", atun_log_level_name(level));
  put_str_field(&l, "component", component);
  put_str_field(&l, "event", event);
  put_words(&l, fmt, ap);
  if (l.truncated) put_raw(&l, truncated_mark, MARK_LEN);
  buf[l.len++] = '\n';
  buf[l.len] = '\0';
  return l.len;
}

size_t atun_log_format(char *buf, size_t cap, atun_tstamp wall_ns,
                       atun_log_level level, const char *component,
                       const char *event, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t n = atun_log_vformat(buf, cap, wall_ns, level, component, event, fmt, ap);
  va_end(ap);
  return n;
}

static void write_stderr(const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(STDERR_FILENO, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

static struct {
  char lines[ATUN_LOG_RECENT_MAX][ATUN_LOG_RECENT_LEN];
  uint64_t total; /* kept so far; the ring holds the last ones */
} recent;

static void recent_sink(atun_log_level level, const char *text, size_t len, void *ud) {
  (void)ud;
  write_stderr(text, len);
  if (level < ATUN_LOG_WARN) return;
  char *slot = recent.lines[recent.total++ % ATUN_LOG_RECENT_MAX];
  size_t keep = len > 0 && text[len - 1] == '\n' ? len - 1 : len;
  if (keep >= ATUN_LOG_RECENT_LEN) keep = ATUN_LOG_RECENT_LEN - 1;
  memcpy(slot, text, keep);
  slot[keep] = '\0';
}

void atun_log_keep_recent(void) {
  recent.total = 0;
  atun_log_set_sink(recent_sink, NULL);
}

uint64_t atun_log_recent(void (*fn)(const char *text, void *user_data), void *user_data) {
  uint64_t first = recent.total > ATUN_LOG_RECENT_MAX ? recent.total - ATUN_LOG_RECENT_MAX : 0;
  for (uint64_t i = first; i < recent.total; ++i) fn(recent.lines[i % ATUN_LOG_RECENT_MAX], user_data);
  return recent.total;
}

static atun_tstamp wall_now(void) {
  struct timespec t;
  if (clock_gettime(CLOCK_REALTIME, &t) != 0) return 0;
  return (atun_tstamp)t.tv_sec * ATUN_NS_PER_S + (atun_tstamp)t.tv_nsec;
}

void atun_logv(atun_log_level level, const char *component,
               const char *event, const char *fmt, va_list ap) {
  if (!atun_log_enabled(level)) return;
  char buf[ATUN_LOG_LINE_MAX + 1];
  size_t n = atun_log_vformat(buf, sizeof(buf), wall_now(), level, component,
                              event, fmt, ap);
  if (g_sink != NULL) g_sink(level, buf, n, g_sink_ud);
  else write_stderr(buf, n);
}

void atun_log(atun_log_level level, const char *component, const char *event,
              const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  atun_logv(level, component, event, fmt, ap);
  va_end(ap);
}
