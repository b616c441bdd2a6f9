#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ratelimit.h"
#include "registry.h"
#include "session_agent.h"
#include "session_gw.h"

#define MS_PER_S ((uint64_t)1000)
#define MS_PER_MIN (60 * MS_PER_S)
#define MS_PER_HOUR (60 * MS_PER_MIN)
#define MS_PER_DAY (24 * MS_PER_HOUR)

/* Key paths in messages ("forwards[12].listen"); longer ones are cut. */
#define PATH_TEXT_MAX 160
/* Values and unknown keys quoted in messages are cut to this many bytes. */
#define SHOW_MAX 64
/* Nesting the writer produces: top, list, item, list inside the item. */
#define JW_DEPTH_MAX 8

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* ======================================================================
 * Messages
 * ====================================================================== */

typedef struct pctx {
  const atun_mem *mem;
  atun_config_error *err;
  char path[PATH_TEXT_MAX];
  size_t pathlen;
} pctx;

/* Copies at most SHOW_MAX bytes of |s| for a message, with anything but
 * printable ASCII (and '"') shown as '?', so logs stay one clean line. */
static void show(char out[SHOW_MAX + 4], const char *s, size_t len) {
  size_t n = len < SHOW_MAX ? len : SHOW_MAX;
  for (size_t i = 0; i < n; ++i) {
    char c = s[i];
    out[i] = (c >= 0x20 && c < 0x7f && c != '"') ? c : '?';
  }
  if (n < len) memcpy(out + n, "...", 3), n += 3;
  out[n] = '\0';
}

/* Appends what fits of |part| to the key path; returns the length to go
 * back to with path_pop(). */
static size_t path_append(pctx *c, const char *part) {
  size_t mark = c->pathlen;
  size_t n = strlen(part);
  size_t room = sizeof(c->path) - 1 - c->pathlen;
  if (n > room) n = room;
  memcpy(c->path + c->pathlen, part, n);
  c->pathlen += n;
  c->path[c->pathlen] = '\0';
  return mark;
}

static size_t path_key(pctx *c, const char *key) {
  char shown[SHOW_MAX + 4];
  size_t mark = c->pathlen;
  show(shown, key, strlen(key));
  if (c->pathlen > 0) path_append(c, ".");
  path_append(c, shown);
  return mark;
}

static size_t path_index(pctx *c, size_t i) {
  char num[32];
  snprintf(num, sizeof(num), "[%zu]", i);
  return path_append(c, num);
}

static void path_pop(pctx *c, size_t mark) {
  c->pathlen = mark;
  c->path[mark] = '\0';
}

/* Copies what fits of |s| to |buf| at |off|; returns the new length. */
static size_t append(char *buf, size_t cap, size_t off, const char *s) {
  size_t n = strlen(s);
  if (n > cap - 1 - off) n = cap - 1 - off;
  memcpy(buf + off, s, n);
  buf[off + n] = '\0';
  return off + n;
}

/* Records "<path>: <message>" unless an earlier failure is recorded, and
 * returns |rv| so callers can write `return fail(...)`. */
__attribute__((format(printf, 3, 4)))
static int fail(pctx *c, int rv, const char *fmt, ...) {
  if (c->err->message[0] != '\0') return rv;
  char msg[ATUN_CONFIG_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  char *out = c->err->message;
  size_t off = 0;
  if (c->pathlen > 0) {
    off = append(out, sizeof(c->err->message), off, c->path);
    off = append(out, sizeof(c->err->message), off, ": ");
  }
  append(out, sizeof(c->err->message), off, msg);
  return rv;
}

static void warn_unknown(pctx *c) {
  atun_config_error *e = c->err;
  if (e->warning_count == ATUN_CONFIG_WARNINGS_MAX) {
    ++e->warnings_dropped;
    return;
  }
  snprintf(e->warnings[e->warning_count++], ATUN_CONFIG_MSG_MAX,
           "%s: unknown key, ignored", c->path);
}

static void pctx_init(pctx *c, const atun_mem *mem, atun_config_error *err) {
  memset(c, 0, sizeof(*c));
  c->mem = mem;
  c->err = err;
  memset(err, 0, sizeof(*err));
}

const char *atun_config_log_level_name(int level) {
  switch (level) {
    case ATUN_CONFIG_LOG_ERROR: return "error";
    case ATUN_CONFIG_LOG_WARN: return "warn";
    case ATUN_CONFIG_LOG_INFO: return "info";
    case ATUN_CONFIG_LOG_DEBUG: return "debug";
    default: return "unknown";
  }
}

/* ======================================================================
 * Strict JSON syntax check
 *
 * cJSON accepts more than RFC 8259 (raw control characters, "+1", "01",
 * trailing bytes, invalid UTF-8) and cannot say where a file is wrong.  This
 * scanner decides what is JSON, reports a line and column, and finds the
 * byte spans of top-level members for the merge.
 * ====================================================================== */

typedef struct jscan {
  const char *start, *p, *end;
  const char *errpos;
  const char *what;
} jscan;

static int scan_fail(jscan *s, const char *at, const char *what) {
  s->errpos = at;
  s->what = what;
  return -1;
}

static void skip_ws(jscan *s) {
  while (s->p < s->end &&
         (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
    ++s->p;
}

/* Length of the UTF-8 sequence at |p| (no overlong forms, surrogates or
 * values above U+10FFFF), 0 if invalid. */
static size_t utf8_len(const uint8_t *p, const uint8_t *end) {
  size_t n;
  uint32_t cp, min;
  if (p[0] < 0x80) return 1;
  if ((p[0] & 0xe0) == 0xc0) n = 2, cp = p[0] & 0x1fu, min = 0x80;
  else if ((p[0] & 0xf0) == 0xe0) n = 3, cp = p[0] & 0x0fu, min = 0x800;
  else if ((p[0] & 0xf8) == 0xf0) n = 4, cp = p[0] & 0x07u, min = 0x10000;
  else return 0;
  if ((size_t)(end - p) < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

static int hex4(const char *p, const char *end, uint32_t *v) {
  if (end - p < 4) return -1;
  *v = 0;
  for (int i = 0; i < 4; ++i) {
    char c = p[i];
    int d = is_digit(c) ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    *v = (*v << 4) | (uint32_t)d;
  }
  return 0;
}

/* Checks the escape at |q| (a backslash); returns the position after it or
 * NULL.  "\u0000" is refused: cJSON's C strings would end there, silently
 * cutting a path or a name. */
static const char *scan_escape(jscan *s, const char *q) {
  uint32_t u, lo;
  if (s->end - q < 2) return scan_fail(s, q, "unterminated string"), NULL;
  if (strchr("\"\\/bfnrt", q[1]) != NULL && q[1] != '\0') return q + 2;
  if (q[1] != 'u') return scan_fail(s, q, "bad escape in a string"), NULL;
  if (hex4(q + 2, s->end, &u) != 0) return scan_fail(s, q, "bad \\u escape"), NULL;
  if (u == 0) return scan_fail(s, q, "\\u0000 is not allowed"), NULL;
  if (u >= 0xdc00 && u <= 0xdfff)
    return scan_fail(s, q, "unpaired UTF-16 surrogate"), NULL;
  if (u < 0xd800 || u > 0xdbff) return q + 6;
  if (s->end - q < 12 || q[6] != '\\' || q[7] != 'u' ||
      hex4(q + 8, s->end, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
    return scan_fail(s, q, "unpaired UTF-16 surrogate"), NULL;
  return q + 12;
}

static int scan_string(jscan *s) {
  const char *q = s->p + 1;
  for (;;) {
    if (q >= s->end) return scan_fail(s, s->p, "unterminated string");
    uint8_t c = (uint8_t)*q;
    if (c == '"') break;
    if (c < 0x20) return scan_fail(s, q, "control character in a string");
    if (c == '\\') {
      q = scan_escape(s, q);
      if (q == NULL) return -1;
    } else {
      size_t n = utf8_len((const uint8_t *)q, (const uint8_t *)s->end);
      if (n == 0) return scan_fail(s, q, "invalid UTF-8");
      q += n;
    }
  }
  s->p = q + 1;
  return 0;
}

static const char *digits(const char *p, const char *end) {
  while (p < end && is_digit(*p)) ++p;
  return p;
}

static int scan_number(jscan *s) {
  const char *p = s->p, *end = s->end, *d;
  if (p < end && *p == '-') ++p;
  if (p < end && *p == '0') ++p;
  else if ((d = digits(p, end)) > p) p = d;
  else return scan_fail(s, s->p, "bad number");
  if (p < end && *p == '.') {
    d = digits(p + 1, end);
    if (d == p + 1) return scan_fail(s, p, "bad number");
    p = d;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    ++p;
    if (p < end && (*p == '+' || *p == '-')) ++p;
    d = digits(p, end);
    if (d == p) return scan_fail(s, p, "bad number");
    p = d;
  }
  if (p - s->p > ATUN_CONFIG_NUMBER_MAX)
    return scan_fail(s, s->p, "number longer than 63 characters");
  s->p = p;
  return 0;
}

static int scan_literal(jscan *s, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
    return scan_fail(s, s->p, "unexpected character");
  s->p += n;
  return 0;
}

static int scan_value(jscan *s, int depth);

/* |s->p| is just inside the opening bracket. */
static int scan_items(jscan *s, int depth, char close, int is_object) {
  skip_ws(s);
  if (s->p < s->end && *s->p == close) {
    ++s->p;
    return 0;
  }
  for (;;) {
    skip_ws(s);
    if (is_object) {
      if (s->p >= s->end || *s->p != '"')
        return scan_fail(s, s->p, "expected a key string");
      if (scan_string(s) != 0) return -1;
      skip_ws(s);
      if (s->p >= s->end || *s->p != ':') return scan_fail(s, s->p, "expected ':'");
      ++s->p;
      skip_ws(s);
    }
    if (scan_value(s, depth) != 0) return -1;
    skip_ws(s);
    if (s->p < s->end && *s->p == ',') {
      ++s->p;
      continue;
    }
    if (s->p < s->end && *s->p == close) {
      ++s->p;
      return 0;
    }
    return scan_fail(s, s->p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

static int scan_value(jscan *s, int depth) {
  if (s->p >= s->end) return scan_fail(s, s->p, "unexpected end of text");
  switch (*s->p) {
    case '{':
    case '[':
      if (depth >= ATUN_CONFIG_DEPTH_MAX)
        return scan_fail(s, s->p, "nested deeper than 64 levels");
      ++s->p;
      return scan_items(s, depth + 1, s->p[-1] == '{' ? '}' : ']', s->p[-1] == '{');
    case '"': return scan_string(s);
    case 't': return scan_literal(s, "true");
    case 'f': return scan_literal(s, "false");
    case 'n': return scan_literal(s, "null");
    default:
      if (*s->p == '-' || is_digit(*s->p)) return scan_number(s);
      return scan_fail(s, s->p, "unexpected character");
  }
}

/* Checks the whole text; on failure writes "line L, column C: ..." (bytes,
 * both counted from 1) into |c|'s error. */
static int scan_document(pctx *c, const char *text, size_t len, const char *what) {
  jscan s = {text, text, text + len, NULL, NULL};
  skip_ws(&s);
  int rv = scan_value(&s, 0);
  if (rv == 0) {
    skip_ws(&s);
    if (s.p != s.end) rv = scan_fail(&s, s.p, "text after the end of the JSON value");
  }
  if (rv == 0) return 0;
  unsigned long line = 1, col = 1;
  for (const char *p = text; p < s.errpos; ++p) {
    if (*p == '\n') ++line, col = 1;
    else ++col;
  }
  return fail(c, ATUN_ERR_MALFORMED, "%sline %lu, column %lu: %s", what, line,
              col, s.what);
}

/* ======================================================================
 * JSON writer: output through |atun_mem|, bounded by ATUN_CONFIG_TEXT_MAX
 * ====================================================================== */

enum { JW_NONE = 0, JW_OBJECT, JW_ARRAY };

typedef struct jw {
  const atun_mem *mem;
  char *buf;
  size_t len, cap;
  int err;
  const char *nl;   /* line break; NULL writes everything on one line */
  size_t nllen;
  const char *unit; /* one level of indentation */
  size_t unitlen;
  int depth;
  uint8_t kind[JW_DEPTH_MAX];
  size_t count[JW_DEPTH_MAX];
} jw;

static void jw_init(jw *w, const atun_mem *mem) {
  memset(w, 0, sizeof(*w));
  w->mem = mem;
  w->nl = "\n";
  w->nllen = 1;
  w->unit = "  ";
  w->unitlen = 2;
}

static void jw_put(jw *w, const char *s, size_t n) {
  if (w->err != 0) return;
  if (n > ATUN_CONFIG_TEXT_MAX - w->len) {
    w->err = ATUN_ERR_LIMIT;
    return;
  }
  if (w->len + n + 1 > w->cap) {
    size_t cap = w->cap < 1024 ? 1024 : w->cap;
    while (cap < w->len + n + 1) cap *= 2;
    if (cap > ATUN_CONFIG_TEXT_MAX + 1) cap = ATUN_CONFIG_TEXT_MAX + 1;
    char *b = atun_mem_realloc(w->mem, w->buf, cap);
    if (b == NULL) {
      w->err = ATUN_ERR_NOMEM;
      return;
    }
    w->buf = b;
    w->cap = cap;
  }
  memcpy(w->buf + w->len, s, n);
  w->len += n;
  w->buf[w->len] = '\0';
}

static void jw_puts(jw *w, const char *s) { jw_put(w, s, strlen(s)); }

static void jw_newline(jw *w) {
  if (w->nl == NULL) return;
  jw_put(w, w->nl, w->nllen);
  for (int d = 0; d < w->depth; ++d) jw_put(w, w->unit, w->unitlen);
}

/* Before each member or item of the current container. */
static void jw_sep(jw *w) {
  if (w->count[w->depth]++ > 0) jw_put(w, ",", 1);
  jw_newline(w);
}

static void jw_value_start(jw *w) {
  if (w->kind[w->depth] == JW_ARRAY) jw_sep(w);
}

static void jw_open(jw *w, char bracket) {
  jw_value_start(w);
  jw_put(w, &bracket, 1);
  ATUN_ASSERT(w->depth + 1 < JW_DEPTH_MAX);
  ++w->depth;
  w->kind[w->depth] = bracket == '{' ? JW_OBJECT : JW_ARRAY;
  w->count[w->depth] = 0;
}

static void jw_close(jw *w, char bracket) {
  size_t had = w->count[w->depth];
  --w->depth;
  if (had > 0) jw_newline(w);
  jw_put(w, &bracket, 1);
}

/* Every string written has passed a check that refuses control
 * characters, so only quotes and backslashes need escaping. */
static void jw_quoted(jw *w, const char *s) {
  jw_put(w, "\"", 1);
  const char *run = s;
  for (; *s != '\0'; ++s) {
    ATUN_ASSERT((uint8_t)*s >= 0x20);
    if (*s != '"' && *s != '\\') continue;
    jw_put(w, run, (size_t)(s - run));
    jw_put(w, "\\", 1);
    run = s;
  }
  jw_put(w, run, (size_t)(s - run));
  jw_put(w, "\"", 1);
}

static void jw_key(jw *w, const char *key) {
  jw_sep(w);
  jw_quoted(w, key);
  jw_puts(w, w->nl != NULL ? ": " : ":");
}

static void jw_str(jw *w, const char *s) {
  jw_value_start(w);
  jw_quoted(w, s);
}

static void jw_u64(jw *w, uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
  jw_value_start(w);
  jw_puts(w, buf);
}

static void jw_bool(jw *w, int b) {
  jw_value_start(w);
  jw_puts(w, b ? "true" : "false");
}

/* Hands the text over (NUL-terminated) or frees it on error. */
static int jw_finish(jw *w, char **out, size_t *outlen) {
  if (w->err == 0 && w->buf == NULL) jw_put(w, "", 0);
  if (w->err != 0) {
    atun_mem_free(w->mem, w->buf);
    return w->err;
  }
  *out = w->buf;
  if (outlen != NULL) *outlen = w->len;
  return 0;
}

/* ======================================================================
 * Durations
 * ====================================================================== */

int atun_config_duration_parse(uint64_t *ms, const char *s, size_t len) {
  static const struct { const char *name; uint64_t ms; } units[] = {
      {"ms", 1}, {"s", MS_PER_S}, {"m", MS_PER_MIN}, {"h", MS_PER_HOUR},
      {"d", MS_PER_DAY}};
  size_t i = 0;
  uint64_t v = 0;
  if (s == NULL) return ATUN_ERR_MALFORMED;
  /* The value check inside the loop also bounds the number of digits. */
  while (i < len && is_digit(s[i]) && v <= ATUN_CONFIG_DURATION_MAX_MS)
    v = v * 10 + (uint64_t)(s[i++] - '0');
  if (i == 0 || v > ATUN_CONFIG_DURATION_MAX_MS) return ATUN_ERR_MALFORMED;
  for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); ++u) {
    size_t ulen = strlen(units[u].name);
    if (len - i != ulen || memcmp(s + i, units[u].name, ulen) != 0) continue;
    if (v > ATUN_CONFIG_DURATION_MAX_MS / units[u].ms) return ATUN_ERR_MALFORMED;
    *ms = v * units[u].ms;
    return 0;
  }
  return ATUN_ERR_MALFORMED;
}

ssize_t atun_config_duration_format(char *buf, size_t buflen, uint64_t ms) {
  static const struct { const char *name; uint64_t ms; } units[] = {
      {"d", MS_PER_DAY}, {"h", MS_PER_HOUR}, {"m", MS_PER_MIN},
      {"s", MS_PER_S}, {"ms", 1}};
  size_t u = 0;
  if (ms == 0) u = 3; /* "0s" reads better than "0d" */
  while (ms % units[u].ms != 0) ++u;
  int n = snprintf(buf, buflen, "%llu%s",
                   (unsigned long long)(ms / units[u].ms), units[u].name);
  if (n < 0 || (size_t)n >= buflen) {
    if (buflen > 0) buf[0] = '\0';
    return ATUN_ERR_NOBUF;
  }
  return n;
}

/* ======================================================================
 * Typed values
 * ====================================================================== */

static int want_string(pctx *c, const cJSON *v, const char **s, size_t *len) {
  /* Set on every path: the optimizer can not tell that fail() returns
   * nonzero, and callers read these only on success. */
  *s = "";
  *len = 0;
  if (!cJSON_IsString(v) || v->valuestring == NULL)
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected a string");
  *s = v->valuestring;
  *len = strlen(*s);
  return 0;
}

/* A string of 1..|max| bytes without control characters into |out|. */
static int take_text(pctx *c, const cJSON *v, size_t max, char *out) {
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (len == 0) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "must not be empty");
  if (len > max)
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "longer than %zu bytes", max);
  if (!atun_text_valid(s, len))
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "holds a control character");
  memcpy(out, s, len + 1);
  return 0;
}

/* Nonzero if |v| is a JSON number holding an integer in [lo, hi]. */
static int number_in(const cJSON *v, uint64_t lo, uint64_t hi, uint64_t *out) {
  if (!cJSON_IsNumber(v)) return 0;
  double d = v->valuedouble;
  if (!(d >= (double)lo && d <= (double)hi) || (double)(uint64_t)d != d) return 0;
  *out = (uint64_t)d;
  return 1;
}

static int take_uint(pctx *c, const cJSON *v, uint64_t lo, uint64_t hi,
                     uint64_t *out) {
  if (number_in(v, lo, hi, out)) return 0;
  return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected an integer from %llu to %llu",
              (unsigned long long)lo, (unsigned long long)hi);
}

static int take_duration(pctx *c, const cJSON *v, uint64_t lo_ms,
                         uint64_t hi_ms, uint64_t *out_ns) {
  uint64_t ms = 0;
  int ok = cJSON_IsNumber(v)
               ? number_in(v, 0, ATUN_CONFIG_DURATION_MAX_MS, &ms)
               : cJSON_IsString(v) &&
                     atun_config_duration_parse(&ms, v->valuestring,
                                                strlen(v->valuestring)) == 0;
  if (!ok)
    return fail(c, ATUN_ERR_INVALID_ARGUMENT,
                "expected a duration: milliseconds, or a string such as "
                "\"500ms\", \"10s\", \"5m\", \"24h\", \"90d\"");
  if (ms < lo_ms || ms > hi_ms) {
    char lo[32], hi[32];
    atun_config_duration_format(lo, sizeof(lo), lo_ms);
    atun_config_duration_format(hi, sizeof(hi), hi_ms);
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "must be between %s and %s", lo, hi);
  }
  *out_ns = ms * ATUN_NS_PER_MS;
  return 0;
}

static int take_listen(pctx *c, const cJSON *v, atun_quic_endpoint *out) {
  const char *s;
  size_t len;
  atun_target host;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (atun_hostport_parse(&host, &out->port, s, len, 0) != 0 ||
      host.kind != ATUN_TARGET_ADDR) {
    char shown[SHOW_MAX + 4];
    show(shown, s, len);
    return fail(c, ATUN_ERR_INVALID_ARGUMENT,
                "\"%s\" is not an IP address and port such as 127.0.0.1:8443 "
                "or [::]:4433", shown);
  }
  out->addr = host.addr;
  return 0;
}

/* "" leaves |*has| 0; anything else must be host:port. */
static int take_hostport(pctx *c, const cJSON *v, uint8_t *has,
                         atun_target *host, uint16_t *port) {
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  *has = 0;
  memset(host, 0, sizeof(*host));
  *port = 0;
  if (len == 0) return 0;
  rv = atun_hostport_parse(host, port, s, len, 0);
  if (rv != 0) {
    char shown[SHOW_MAX + 4];
    show(shown, s, len);
    return fail(c, rv, "\"%s\" is not host:port such as gw.example.com:4433 "
                "or [2001:db8::1]:4433", shown);
  }
  *has = 1;
  return 0;
}

/* Nonzero if |s| ends in "/<len>" with a length its family allows. */
static int prefix_len_fits(const char *s, size_t len) {
  const char *slash = memchr(s, '/', len);
  if (slash == NULL) return 0;
  size_t nd = len - (size_t)(slash + 1 - s);
  unsigned v = 0;
  if (nd == 0 || nd > 3) return 0;
  for (size_t i = 1; i <= nd; ++i) {
    if (!is_digit(slash[i])) return 0;
    v = v * 10 + (unsigned)(slash[i] - '0');
  }
  return v <= (memchr(s, ':', len) != NULL ? 128u : 32u);
}

static int take_prefix(pctx *c, const cJSON *v, atun_prefix *out) {
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  rv = len > 0 && len < ATUN_PREFIX_STRLEN ? atun_prefix_parse(out, s)
                                           : ATUN_ERR_INVALID_ARGUMENT;
  if (rv == 0) return 0;
  char shown[SHOW_MAX + 4];
  show(shown, s, len);
  if (rv != ATUN_ERR_BAD_PREFIX)
    return fail(c, ATUN_ERR_BAD_PREFIX, "not an address prefix: %s", shown);
  /* atun_prefix_parse() says BAD_PREFIX for both; a length that fits its
   * family leaves host bits as the reason. */
  if (prefix_len_fits(s, len))
    return fail(c, ATUN_ERR_BAD_PREFIX, "host bits set in %s", shown);
  return fail(c, ATUN_ERR_BAD_PREFIX, "bad prefix length in %s", shown);
}

/* A domain: "name" or {"name": ..., "auto_detected": bool}. */
static int take_domain_name(pctx *c, const cJSON *v, atun_domain *out) {
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (atun_name_normalize(out->name, s, len) == 0) return 0;
  char shown[SHOW_MAX + 4];
  show(shown, s, len);
  return fail(c, ATUN_ERR_BAD_NAME, "not a valid domain name: \"%s\"", shown);
}

/* ======================================================================
 * Field tables: one description drives both parsing and writing
 * ====================================================================== */

enum {
  F_TEXT = 1, /* char[hi + 1] holding 1..hi bytes of text */
  F_BOOL,     /* uint8_t */
  F_U32,      /* uint32_t in [lo, hi] */
  F_U16,      /* uint16_t in [lo, hi] */
  F_DURATION, /* uint64_t ns, [lo, hi] in ms */
  F_LISTEN,   /* atun_quic_endpoint */
  F_LOG,      /* atun_config_log_level */
  F_OBJECT,   /* nested object described by |sub| over the same struct */
  F_CUSTOM    /* |parse|, and |write| or the string at |off| */
};

typedef int (*parse_fn)(pctx *c, const cJSON *v, void *obj);
typedef void (*write_fn)(jw *w, const void *obj);

typedef struct fieldset fieldset;

typedef struct field {
  const char *key;
  uint8_t type;
  uint8_t required; /* inside list items only */
  size_t off;
  uint64_t lo, hi;
  parse_fn parse;
  write_fn write; /* NULL: the value is the string at |off| */
  const fieldset *sub;
} field;

struct fieldset {
  const field *fields;
  size_t n;
};

#define FIELDSET(arr) {arr, sizeof(arr) / sizeof(arr[0])}

static int parse_fields(pctx *c, const cJSON *obj, const fieldset *fs,
                        void *target);

static int parse_log_level(pctx *c, const cJSON *v, atun_config_log_level *out) {
  if (cJSON_IsString(v)) {
    for (int l = ATUN_CONFIG_LOG_ERROR; l <= ATUN_CONFIG_LOG_DEBUG; ++l) {
      if (strcmp(v->valuestring, atun_config_log_level_name(l)) == 0) {
        *out = (atun_config_log_level)l;
        return 0;
      }
    }
  }
  return fail(c, ATUN_ERR_INVALID_ARGUMENT,
              "expected \"error\", \"warn\", \"info\" or \"debug\"");
}

static int parse_field(pctx *c, const field *f, const cJSON *v, void *obj) {
  char *at = (char *)obj + f->off;
  uint64_t u = 0;
  int rv;
  switch (f->type) {
    case F_TEXT: return take_text(c, v, f->hi, at);
    case F_BOOL:
      if (!cJSON_IsBool(v)) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected true or false");
      *(uint8_t *)at = cJSON_IsTrue(v) ? 1 : 0;
      return 0;
    case F_U32:
    case F_U16:
      rv = take_uint(c, v, f->lo, f->hi, &u);
      if (rv == 0 && f->type == F_U32) *(uint32_t *)at = (uint32_t)u;
      if (rv == 0 && f->type == F_U16) *(uint16_t *)at = (uint16_t)u;
      return rv;
    case F_DURATION: return take_duration(c, v, f->lo, f->hi, (uint64_t *)at);
    case F_LISTEN: return take_listen(c, v, (atun_quic_endpoint *)at);
    case F_LOG: return parse_log_level(c, v, (atun_config_log_level *)at);
    case F_OBJECT: return parse_fields(c, v, f->sub, at);
    default: return f->parse(c, v, obj);
  }
}

static size_t field_find(const fieldset *fs, const char *key) {
  size_t i = 0;
  while (i < fs->n && strcmp(fs->fields[i].key, key) != 0) ++i;
  return i;
}

/* Walks the members of |obj|: known keys once each, unknown ones warned
 * about, required ones present. */
static int parse_fields(pctx *c, const cJSON *obj, const fieldset *fs,
                        void *target) {
  uint64_t seen = 0;
  ATUN_ASSERT(fs->n <= 64);
  if (!cJSON_IsObject(obj)) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected an object");
  for (const cJSON *it = obj->child; it != NULL; it = it->next) {
    size_t i = field_find(fs, it->string);
    size_t mark = path_key(c, it->string);
    int rv = 0;
    if (i == fs->n)
      warn_unknown(c);
    else if (seen & ((uint64_t)1 << i))
      rv = fail(c, ATUN_ERR_INVALID_ARGUMENT, "duplicate key");
    else
      rv = parse_field(c, &fs->fields[i], it, target);
    seen |= i < fs->n ? (uint64_t)1 << i : 0;
    path_pop(c, mark);
    if (rv != 0) return rv;
  }
  for (size_t i = 0; i < fs->n; ++i) {
    if (fs->fields[i].required && !(seen & ((uint64_t)1 << i)))
      return fail(c, ATUN_ERR_MISSING_FIELD, "missing \"%s\"", fs->fields[i].key);
  }
  return 0;
}

static void write_duration(jw *w, uint64_t ns) {
  char buf[32];
  atun_config_duration_format(buf, sizeof(buf), ns / ATUN_NS_PER_MS);
  jw_str(w, buf);
}

static void write_listen(jw *w, const atun_quic_endpoint *e) {
  atun_target t = {.kind = ATUN_TARGET_ADDR, .addr = e->addr};
  char buf[ATUN_HOSTPORT_STRLEN];
  atun_hostport_format(buf, &t, e->port);
  jw_str(w, buf);
}

static void write_fields(jw *w, const fieldset *fs, const void *obj);

static void write_value(jw *w, const field *f, const void *obj) {
  const char *at = (const char *)obj + f->off;
  switch (f->type) {
    case F_TEXT: jw_str(w, at); break;
    case F_BOOL: jw_bool(w, *(const uint8_t *)at); break;
    case F_U32: jw_u64(w, *(const uint32_t *)at); break;
    case F_U16: jw_u64(w, *(const uint16_t *)at); break;
    case F_DURATION: write_duration(w, *(const uint64_t *)at); break;
    case F_LISTEN: write_listen(w, (const atun_quic_endpoint *)at); break;
    case F_LOG:
      jw_str(w, atun_config_log_level_name(*(const atun_config_log_level *)at));
      break;
    case F_OBJECT: write_fields(w, f->sub, at); break;
    default:
      if (f->write != NULL) f->write(w, obj);
      else jw_str(w, at);
  }
}

static void write_fields(jw *w, const fieldset *fs, const void *obj) {
  jw_open(w, '{');
  for (size_t i = 0; i < fs->n; ++i) {
    jw_key(w, fs->fields[i].key);
    write_value(w, &fs->fields[i], obj);
  }
  jw_close(w, '}');
}

/* ======================================================================
 * Lists
 * ====================================================================== */

typedef int (*item_fn)(pctx *c, const cJSON *v, void *item);

/* Parses the array |v| of at most |max| items of |size| bytes into a new
 * block from |c|->mem (NULL when empty). */
static int parse_list(pctx *c, const cJSON *v, size_t max, size_t size,
                      item_fn fn, void **items, size_t *count) {
  if (!cJSON_IsArray(v)) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected an array");
  size_t n = (size_t)cJSON_GetArraySize(v);
  if (n > max)
    return fail(c, ATUN_ERR_LIMIT, "%zu entries, at most %zu allowed", n, max);
  char *block = NULL;
  if (n > 0 && (block = atun_mem_calloc(c->mem, n, size)) == NULL)
    return fail(c, ATUN_ERR_NOMEM, "out of memory");
  size_t i = 0;
  for (const cJSON *it = v->child; it != NULL; it = it->next, ++i) {
    size_t mark = path_index(c, i);
    int rv = fn(c, it, block + i * size);
    path_pop(c, mark);
    if (rv != 0) {
      atun_mem_free(c->mem, block);
      return rv;
    }
  }
  *items = block;
  *count = n;
  return 0;
}

/* Replaces the list at |*items|/|*count| with the one in |v|. */
static int replace_list(pctx *c, const cJSON *v, size_t max, size_t size,
                        item_fn fn, void **items, size_t *count) {
  void *fresh = NULL;
  size_t n = 0;
  int rv = parse_list(c, v, max, size, fn, &fresh, &n);
  if (rv != 0) return rv;
  atun_mem_free(c->mem, *items);
  *items = fresh;
  *count = n;
  return 0;
}

static int item_prefix(pctx *c, const cJSON *v, void *item) {
  return take_prefix(c, v, item);
}

static void write_prefixes(jw *w, const atun_prefix *p, size_t n) {
  char buf[ATUN_PREFIX_STRLEN];
  jw_open(w, '[');
  for (size_t i = 0; i < n; ++i) {
    atun_prefix_format(buf, &p[i]);
    jw_str(w, buf);
  }
  jw_close(w, ']');
}

static int domain_name(pctx *c, const cJSON *v, void *obj) {
  return take_domain_name(c, v, obj);
}

/* Read only: write_domains() chooses the form a domain is written in. */
static const field domain_fields[] = {
    {"name", F_CUSTOM, 1, 0, 0, 0, domain_name, NULL, NULL},
    {"auto_detected", F_BOOL, 0, offsetof(atun_domain, auto_detected), 0, 0, NULL, NULL,
     NULL},
};
static const fieldset domain_set = FIELDSET(domain_fields);

static int item_domain(pctx *c, const cJSON *v, void *item) {
  if (cJSON_IsString(v)) return take_domain_name(c, v, item);
  if (!cJSON_IsObject(v))
    return fail(c, ATUN_ERR_INVALID_ARGUMENT,
                "expected a domain name or {\"name\": ..., \"auto_detected\": ...}");
  return parse_fields(c, v, &domain_set, item);
}

/* A domain someone configured is a plain string; one found by
 * auto-detection keeps its flag in the object form. */
static void write_domains(jw *w, const atun_domain *d, size_t n) {
  jw_open(w, '[');
  for (size_t i = 0; i < n; ++i) {
    if (!d[i].auto_detected) {
      jw_str(w, d[i].name);
      continue;
    }
    jw_open(w, '{');
    jw_key(w, "name");
    jw_str(w, d[i].name);
    jw_key(w, "auto_detected");
    jw_bool(w, 1);
    jw_close(w, '}');
  }
  jw_close(w, ']');
}

/* ======================================================================
 * Reading a document
 * ====================================================================== */

static int parse_text(pctx *c, const char *text, size_t len, cJSON **root) {
  *root = NULL;
  if (text == NULL) len = 0, text = "";
  if (len > ATUN_CONFIG_TEXT_MAX)
    return fail(c, ATUN_ERR_LIMIT, "config text of %zu bytes, at most %zu", len,
                ATUN_CONFIG_TEXT_MAX);
  int rv = scan_document(c, text, len, "");
  if (rv != 0) return rv;
  /* The text is known to be JSON cJSON reads, so NULL means no memory. */
  *root = cJSON_ParseWithLength(text, len);
  if (*root == NULL) return fail(c, ATUN_ERR_NOMEM, "out of memory");
  if (!cJSON_IsObject(*root))
    return fail(c, ATUN_ERR_MALFORMED, "the top level must be an object");
  return 0;
}

/* ======================================================================
 * Agent
 * ====================================================================== */

static const char *const deny_default[] = {
    "127.0.0.0/8",        "::1/128",          /* loopback */
    "169.254.0.0/16",     "fe80::/10",        /* link-local */
    "169.254.169.254/32", "fd00:ec2::254/128" /* cloud metadata */
};
#define DENY_DEFAULT_COUNT (sizeof(deny_default) / sizeof(deny_default[0]))

static int agent_name(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (len > 0 && !atun_agent_name_valid(s, len)) {
    char shown[SHOW_MAX + 4];
    show(shown, s, len);
    return fail(c, ATUN_ERR_BAD_NAME,
                "\"%s\" is not an agent name (1 to 63 letters, digits, '.', "
                "'_' or '-', starting with a letter or digit)", shown);
  }
  memcpy(a->name, s, len + 1);
  return 0;
}

static int agent_id(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (len > 0 && !atun_uuid_valid(s, len))
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "not a lowercase UUID");
  memcpy(a->agent_id, s, len + 1);
  return 0;
}

static int agent_gateway(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  return take_hostport(c, v, &a->has_gateway, &a->gateway_host, &a->gateway_port);
}

static void write_hostport(jw *w, int has, const atun_target *host, uint16_t port) {
  char buf[ATUN_HOSTPORT_STRLEN] = "";
  if (has) atun_hostport_format(buf, host, port);
  jw_str(w, buf);
}

static void write_agent_gateway(jw *w, const void *obj) {
  const atun_config_agent *a = obj;
  write_hostport(w, a->has_gateway, &a->gateway_host, a->gateway_port);
}

static int agent_server_name(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  const char *s;
  size_t len;
  atun_target t;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0 || len == 0) {
    a->server_name[0] = '\0';
    return rv;
  }
  if (atun_host_parse(&t, s, len) != 0 || t.kind != ATUN_TARGET_HOST) {
    char shown[SHOW_MAX + 4];
    show(shown, s, len);
    return fail(c, ATUN_ERR_BAD_NAME, "\"%s\" is not a DNS name", shown);
  }
  memcpy(a->server_name, t.host, sizeof(a->server_name));
  return 0;
}

static int agent_spki(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  a->has_server_spki = 0;
  if (len == 0) return 0;
  if (atun_spki_pin_parse(a->server_spki_sha256, s, len) != 0)
    return fail(c, ATUN_ERR_INVALID_ARGUMENT,
                "expected a SHA-256 pin: 64 hex digits, or 43 (base64url) or "
                "44 (base64) characters");
  a->has_server_spki = 1;
  return 0;
}

static void write_agent_spki(jw *w, const void *obj) {
  const atun_config_agent *a = obj;
  char hex[ATUN_SPKI_PIN_HEX_LEN + 1] = "";
  if (a->has_server_spki) atun_spki_pin_format_hex(hex, a->server_spki_sha256);
  jw_str(w, hex);
}

static int agent_subnets(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  return replace_list(c, v, ATUN_SUBNETS_MAX, sizeof(atun_prefix), item_prefix,
                      (void **)&a->advertise_subnets, &a->advertise_subnet_count);
}

static void write_agent_subnets(jw *w, const void *obj) {
  const atun_config_agent *a = obj;
  write_prefixes(w, a->advertise_subnets, a->advertise_subnet_count);
}

static int agent_domains(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  return replace_list(c, v, ATUN_DOMAINS_MAX, sizeof(atun_domain), item_domain,
                      (void **)&a->advertise_domains, &a->advertise_domain_count);
}

static void write_agent_domains(jw *w, const void *obj) {
  const atun_config_agent *a = obj;
  write_domains(w, a->advertise_domains, a->advertise_domain_count);
}

static int agent_deny(pctx *c, const cJSON *v, void *obj) {
  atun_config_agent *a = obj;
  return replace_list(c, v, ATUN_CONFIG_DENY_MAX, sizeof(atun_prefix),
                      item_prefix, (void **)&a->deny, &a->deny_count);
}

static void write_agent_deny(jw *w, const void *obj) {
  const atun_config_agent *a = obj;
  write_prefixes(w, a->deny, a->deny_count);
}

#define TIMEOUT_MIN_MS 1
#define TIMEOUT_MAX_MS (ATUN_SESSION_TIMEOUT_MAX_NS / ATUN_NS_PER_MS)

#define AGENT_CUSTOM(key, p, w) {key, F_CUSTOM, 0, 0, 0, 0, p, w, NULL}
#define AGENT_STRING(key, p, member) \
  {key, F_CUSTOM, 0, offsetof(atun_config_agent, member), 0, 0, p, NULL, NULL}
#define AGENT_FIELD(key, type, member, lo, hi) \
  {key, type, 0, offsetof(atun_config_agent, member), lo, hi, NULL, NULL, NULL}

/* The order here is the order of a written file. */
static const field agent_fields[] = {
    AGENT_STRING("name", agent_name, name),
    AGENT_STRING("agent_id", agent_id, agent_id),
    AGENT_CUSTOM("gateway", agent_gateway, write_agent_gateway),
    AGENT_STRING("server_name", agent_server_name, server_name),
    AGENT_FIELD("key_file", F_TEXT, key_file, 0, ATUN_CONFIG_PATH_MAX),
    AGENT_FIELD("cert_file", F_TEXT, cert_file, 0, ATUN_CONFIG_PATH_MAX),
    AGENT_FIELD("ca_file", F_TEXT, ca_file, 0, ATUN_CONFIG_PATH_MAX),
    AGENT_CUSTOM("server_spki_sha256", agent_spki, write_agent_spki),
    AGENT_CUSTOM("advertise_subnets", agent_subnets, write_agent_subnets),
    AGENT_CUSTOM("advertise_domains", agent_domains, write_agent_domains),
    AGENT_FIELD("auto_detect_domains", F_BOOL, auto_detect_domains, 0, 0),
    AGENT_FIELD("resolv_conf", F_TEXT, resolv_conf, 0, ATUN_CONFIG_PATH_MAX),
    AGENT_CUSTOM("deny", agent_deny, write_agent_deny),
    AGENT_FIELD("connect_timeout", F_DURATION, connect_timeout_ns,
                TIMEOUT_MIN_MS, TIMEOUT_MAX_MS),
    AGENT_FIELD("drain_timeout", F_DURATION, drain_timeout_ns, TIMEOUT_MIN_MS,
                TIMEOUT_MAX_MS),
    AGENT_FIELD("log_level", F_LOG, log_level, 0, 0),
};
static const fieldset agent_set = FIELDSET(agent_fields);

static const atun_mem *mem_or_default(const atun_mem *mem) {
  return mem != NULL ? mem : atun_mem_default();
}

int atun_config_agent_default(atun_config_agent *cfg, const atun_mem *mem) {
  atun_session_agent_settings s;
  memset(cfg, 0, sizeof(*cfg));
  cfg->mem = mem_or_default(mem);
  cfg->deny = atun_mem_calloc(cfg->mem, DENY_DEFAULT_COUNT, sizeof(atun_prefix));
  if (cfg->deny == NULL) return ATUN_ERR_NOMEM;
  for (size_t i = 0; i < DENY_DEFAULT_COUNT; ++i) {
    int rv = atun_prefix_parse(&cfg->deny[i], deny_default[i]);
    ATUN_ASSERT(rv == 0);
    (void)rv;
  }
  cfg->deny_count = DENY_DEFAULT_COUNT;
  snprintf(cfg->key_file, sizeof(cfg->key_file), "/var/lib/atun-agent/agent.key");
  snprintf(cfg->cert_file, sizeof(cfg->cert_file), "/var/lib/atun-agent/agent.crt");
  snprintf(cfg->ca_file, sizeof(cfg->ca_file), "/var/lib/atun-agent/ca.crt");
  snprintf(cfg->resolv_conf, sizeof(cfg->resolv_conf), "/etc/resolv.conf");
  cfg->auto_detect_domains = 1;
  cfg->connect_timeout_ns = 10 * ATUN_NS_PER_S;
  atun_session_agent_settings_default(&s);
  cfg->drain_timeout_ns = s.drain_timeout_ns;
  cfg->log_level = ATUN_CONFIG_LOG_INFO;
  return 0;
}

void atun_config_agent_free(atun_config_agent *cfg) {
  if (cfg->mem != NULL) {
    atun_mem_free(cfg->mem, cfg->advertise_subnets);
    atun_mem_free(cfg->mem, cfg->advertise_domains);
    atun_mem_free(cfg->mem, cfg->deny);
  }
  memset(cfg, 0, sizeof(*cfg));
}

int atun_config_agent_parse(atun_config_agent *cfg, const char *text,
                            size_t len, const atun_mem *mem,
                            atun_config_error *err) {
  atun_config_error scratch;
  pctx c;
  cJSON *root;
  pctx_init(&c, mem_or_default(mem), err != NULL ? err : &scratch);
  memset(cfg, 0, sizeof(*cfg));
  int rv = parse_text(&c, text, len, &root);
  if (rv == 0 && atun_config_agent_default(cfg, c.mem) != 0)
    rv = fail(&c, ATUN_ERR_NOMEM, "out of memory");
  if (rv == 0) rv = parse_fields(&c, root, &agent_set, cfg);
  cJSON_Delete(root);
  if (rv != 0) atun_config_agent_free(cfg);
  return rv;
}

static int serialize(const fieldset *fs, const void *cfg, const atun_mem *mem,
                     char **out, size_t *outlen) {
  jw w;
  jw_init(&w, mem);
  write_fields(&w, fs, cfg);
  jw_put(&w, "\n", 1);
  return jw_finish(&w, out, outlen);
}

int atun_config_agent_serialize(const atun_config_agent *cfg, char **out,
                                size_t *outlen) {
  return serialize(&agent_set, cfg, mem_or_default(cfg->mem), out, outlen);
}

int atun_config_agent_check_enrolled(const atun_config_agent *cfg,
                                     atun_config_error *err) {
  atun_config_error scratch;
  pctx c;
  pctx_init(&c, cfg->mem, err != NULL ? err : &scratch);
  const char *missing = cfg->name[0] == '\0'       ? "name"
                        : cfg->agent_id[0] == '\0' ? "agent_id"
                        : !cfg->has_gateway        ? "gateway"
                                                   : NULL;
  if (missing == NULL) return 0;
  return fail(&c, ATUN_ERR_MISSING_FIELD,
              "%s: not set (enroll the agent with `atun-agent enroll`)", missing);
}

/* ======================================================================
 * Gateway
 * ====================================================================== */

static int gw_quic_public(pctx *c, const cJSON *v, void *obj) {
  atun_config_gateway *g = obj;
  return take_hostport(c, v, &g->has_quic_public, &g->quic_public_host,
                       &g->quic_public_port);
}

static void write_gw_quic_public(jw *w, const void *obj) {
  const atun_config_gateway *g = obj;
  write_hostport(w, g->has_quic_public, &g->quic_public_host, g->quic_public_port);
}

static int gw_api_url(pctx *c, const cJSON *v, void *obj) {
  atun_config_gateway *g = obj;
  const char *s, *why;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (len > 0 && atun_enroll_url_parse(NULL, s, len, &why) != 0)
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "%s", why);
  memcpy(g->api_public_url, s, len + 1);
  return 0;
}

/* A server certificate name: a DNS name or an IP literal, kept in its
 * canonical text form. */
static int server_name_item(pctx *c, const cJSON *v, char out[ATUN_NAME_MAX + 1]) {
  const char *s;
  size_t len;
  atun_target t;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (atun_host_parse(&t, s, len) != 0) {
    char shown[SHOW_MAX + 4];
    show(shown, s, len);
    return fail(c, ATUN_ERR_BAD_NAME, "\"%s\" is neither a DNS name nor an IP address",
                shown);
  }
  if (t.kind == ATUN_TARGET_ADDR)
    atun_addr_format(out, &t.addr);
  else
    memcpy(out, t.host, ATUN_NAME_MAX + 1);
  return 0;
}

static int gw_server_names(pctx *c, const cJSON *v, void *obj) {
  atun_config_gateway *g = obj;
  if (!cJSON_IsArray(v)) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected an array");
  size_t n = (size_t)cJSON_GetArraySize(v);
  if (n == 0) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "at least one name is needed");
  if (n > ATUN_CONFIG_SERVER_NAMES_MAX)
    return fail(c, ATUN_ERR_LIMIT, "%zu entries, at most %d allowed", n,
                ATUN_CONFIG_SERVER_NAMES_MAX);
  size_t i = 0;
  for (const cJSON *it = v->child; it != NULL; it = it->next, ++i) {
    size_t mark = path_index(c, i);
    int rv = server_name_item(c, it, g->server_names[i]);
    path_pop(c, mark);
    if (rv != 0) return rv;
  }
  g->server_name_count = n;
  return 0;
}

static void write_gw_server_names(jw *w, const void *obj) {
  const atun_config_gateway *g = obj;
  jw_open(w, '[');
  for (size_t i = 0; i < g->server_name_count; ++i) jw_str(w, g->server_names[i]);
  jw_close(w, ']');
}

/* --- socks5 users ----------------------------------------------------------- */

static const field user_fields[] = {
    {"username", F_TEXT, 1, offsetof(atun_config_socks5_user, username), 0,
     ATUN_CONFIG_CREDENTIAL_MAX, NULL, NULL, NULL},
    {"password", F_TEXT, 1, offsetof(atun_config_socks5_user, password), 0,
     ATUN_CONFIG_CREDENTIAL_MAX, NULL, NULL, NULL},
};
static const fieldset user_set = FIELDSET(user_fields);

static int item_user(pctx *c, const cJSON *v, void *item) {
  return parse_fields(c, v, &user_set, item);
}

static int gw_users(pctx *c, const cJSON *v, void *obj) {
  atun_config_gateway *g = obj;
  return replace_list(c, v, ATUN_CONFIG_SOCKS5_USERS_MAX,
                      sizeof(atun_config_socks5_user), item_user,
                      (void **)&g->socks5_users, &g->socks5_user_count);
}

static void write_gw_users(jw *w, const void *obj) {
  const atun_config_gateway *g = obj;
  jw_open(w, '[');
  for (size_t i = 0; i < g->socks5_user_count; ++i)
    write_fields(w, &user_set, &g->socks5_users[i]);
  jw_close(w, ']');
}

#define GW_FIELD(key, type, member, lo, hi) \
  {key, type, 0, offsetof(atun_config_gateway, member), lo, hi, NULL, NULL, NULL}
#define GW_CUSTOM(key, p, w) {key, F_CUSTOM, 0, 0, 0, 0, p, w, NULL}
#define GW_STRING(key, p, member) \
  {key, F_CUSTOM, 0, offsetof(atun_config_gateway, member), 0, 0, p, NULL, NULL}

static const field socks5_fields[] = {
    GW_FIELD("enabled", F_BOOL, socks5_enabled, 0, 0),
    GW_FIELD("listen", F_LISTEN, socks5_listen, 0, 0),
    GW_CUSTOM("users", gw_users, write_gw_users),
};
static const fieldset socks5_set = FIELDSET(socks5_fields);

/* --- forwards ----------------------------------------------------------------- */

static int fwd_target(pctx *c, const cJSON *v, void *obj) {
  atun_config_forward *f = obj;
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  rv = atun_host_parse(&f->target, s, len);
  if (rv == 0) return 0;
  char shown[SHOW_MAX + 4];
  show(shown, s, len);
  return fail(c, ATUN_ERR_BAD_NAME, "\"%s\" is neither an IP address nor a host name",
              shown);
}

static void write_fwd_target(jw *w, const void *obj) {
  char buf[ATUN_HOSTPORT_STRLEN];
  const atun_config_forward *f = obj;
  if (f->target.kind == ATUN_TARGET_ADDR) {
    atun_addr_format(buf, &f->target.addr); /* no brackets: the port is apart */
    jw_str(w, buf);
  } else {
    jw_str(w, f->target.host);
  }
}

static int fwd_agent(pctx *c, const cJSON *v, void *obj) {
  atun_config_forward *f = obj;
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (len > 0 && !atun_agent_name_valid(s, len)) {
    char shown[SHOW_MAX + 4];
    show(shown, s, len);
    return fail(c, ATUN_ERR_BAD_NAME, "\"%s\" is neither an agent id nor an agent name",
                shown);
  }
  memcpy(f->agent, s, len + 1);
  return 0;
}

static const field forward_fields[] = {
    {"listen", F_LISTEN, 1, offsetof(atun_config_forward, listen), 0, 0, NULL, NULL, NULL},
    {"target", F_CUSTOM, 1, 0, 0, 0, fwd_target, write_fwd_target, NULL},
    {"port", F_U16, 1, offsetof(atun_config_forward, port), 1, 65535, NULL, NULL, NULL},
    {"agent", F_CUSTOM, 0, offsetof(atun_config_forward, agent), 0, 0, fwd_agent, NULL, NULL},
};
static const fieldset forward_set = FIELDSET(forward_fields);

static int item_forward(pctx *c, const cJSON *v, void *item) {
  return parse_fields(c, v, &forward_set, item);
}

static int gw_forwards(pctx *c, const cJSON *v, void *obj) {
  atun_config_gateway *g = obj;
  return replace_list(c, v, ATUN_CONFIG_FORWARDS_MAX, sizeof(atun_config_forward),
                      item_forward, (void **)&g->forwards, &g->forward_count);
}

static void write_gw_forwards(jw *w, const void *obj) {
  const atun_config_gateway *g = obj;
  jw_open(w, '[');
  for (size_t i = 0; i < g->forward_count; ++i)
    write_fields(w, &forward_set, &g->forwards[i]);
  jw_close(w, ']');
}

/* --- admin tokens -------------------------------------------------------------- */

static int token_name(pctx *c, const cJSON *v, void *obj) {
  atun_config_admin_token *t = obj;
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  int ok = len >= 1 && len <= ATUN_CONFIG_ADMIN_NAME_MAX;
  for (size_t i = 0; ok && i < len; ++i) ok = s[i] >= 0x20 && s[i] < 0x7f;
  if (!ok)
    return fail(c, ATUN_ERR_BAD_NAME, "expected 1 to 64 printable ASCII characters");
  memcpy(t->name, s, len + 1);
  return 0;
}

static int token_hash(pctx *c, const cJSON *v, void *obj) {
  atun_config_admin_token *t = obj;
  const char *s;
  size_t len;
  int rv = want_string(c, v, &s, &len);
  if (rv != 0) return rv;
  if (len != ATUN_SPKI_PIN_HEX_LEN || atun_spki_pin_parse(t->sha256, s, len) != 0)
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected 64 hex digits (a SHA-256)");
  return 0;
}

static void write_token_hash(jw *w, const void *obj) {
  char hex[ATUN_SPKI_PIN_HEX_LEN + 1];
  atun_spki_pin_format_hex(hex, ((const atun_config_admin_token *)obj)->sha256);
  jw_str(w, hex);
}

static int token_scope(pctx *c, const cJSON *v, unsigned *scopes) {
  unsigned bit = 0;
  if (cJSON_IsString(v) && strcmp(v->valuestring, "read") == 0) bit = ATUN_CONFIG_SCOPE_READ;
  if (cJSON_IsString(v) && strcmp(v->valuestring, "write") == 0) bit = ATUN_CONFIG_SCOPE_WRITE;
  if (bit == 0) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected \"read\" or \"write\"");
  if (*scopes & bit) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "duplicate scope");
  *scopes |= bit;
  return 0;
}

static int token_scopes(pctx *c, const cJSON *v, void *obj) {
  atun_config_admin_token *t = obj;
  if (!cJSON_IsArray(v)) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "expected an array");
  t->scopes = 0;
  size_t i = 0;
  for (const cJSON *it = v->child; it != NULL; it = it->next, ++i) {
    size_t mark = path_index(c, i);
    int rv = token_scope(c, it, &t->scopes);
    path_pop(c, mark);
    if (rv != 0) return rv;
  }
  if (t->scopes == 0) return fail(c, ATUN_ERR_INVALID_ARGUMENT, "at least one scope is needed");
  return 0;
}

static void write_token_scopes(jw *w, const void *obj) {
  unsigned scopes = ((const atun_config_admin_token *)obj)->scopes;
  jw_open(w, '[');
  if (scopes & ATUN_CONFIG_SCOPE_READ) jw_str(w, "read");
  if (scopes & ATUN_CONFIG_SCOPE_WRITE) jw_str(w, "write");
  jw_close(w, ']');
}

static const field token_fields[] = {
    {"name", F_CUSTOM, 1, offsetof(atun_config_admin_token, name), 0, 0, token_name, NULL,
     NULL},
    {"sha256", F_CUSTOM, 1, 0, 0, 0, token_hash, write_token_hash, NULL},
    {"scopes", F_CUSTOM, 1, 0, 0, 0, token_scopes, write_token_scopes, NULL},
};
static const fieldset token_set = FIELDSET(token_fields);

static int item_token(pctx *c, const cJSON *v, void *item) {
  return parse_fields(c, v, &token_set, item);
}

static int gw_tokens(pctx *c, const cJSON *v, void *obj) {
  atun_config_gateway *g = obj;
  return replace_list(c, v, ATUN_CONFIG_ADMIN_TOKENS_MAX,
                      sizeof(atun_config_admin_token), item_token,
                      (void **)&g->admin_tokens, &g->admin_token_count);
}

static void write_gw_tokens(jw *w, const void *obj) {
  const atun_config_gateway *g = obj;
  jw_open(w, '[');
  for (size_t i = 0; i < g->admin_token_count; ++i)
    write_fields(w, &token_set, &g->admin_tokens[i]);
  jw_close(w, ']');
}

/* --- limits ----------------------------------------------------------------------- */

#define LIMIT_FIELD(key, type, member, lo, hi) \
  {key, type, 0, offsetof(atun_config_limits, member), lo, hi, NULL, NULL, NULL}

static const field limits_fields[] = {
    LIMIT_FIELD("max_agents", F_U32, max_agents, 1, 1000000),
    LIMIT_FIELD("max_streams_per_agent", F_U32, max_streams_per_agent, 1, 65536),
    LIMIT_FIELD("client_max_connections", F_U32, client_max_connections, 1, 1000000),
    LIMIT_FIELD("api_max_connections", F_U32, api_max_connections, 1, 65536),
    LIMIT_FIELD("api_max_request_bytes", F_U32, api_max_request_bytes, 1024,
                (uint64_t)64 << 20),
    LIMIT_FIELD("api_header_timeout", F_DURATION, api_header_timeout_ns,
                TIMEOUT_MIN_MS, TIMEOUT_MAX_MS),
    LIMIT_FIELD("enroll_burst", F_U32, enroll_burst, 1, ATUN_RATELIMIT_BURST_MAX),
    LIMIT_FIELD("enroll_interval", F_DURATION, enroll_interval_ns, 1,
                ATUN_RATELIMIT_INTERVAL_MAX_NS / ATUN_NS_PER_MS),
};
static const fieldset limits_set = FIELDSET(limits_fields);

/* --- the gateway table --------------------------------------------------------------- */

#define HEARTBEAT_MIN_MS (ATUN_SESSION_HEARTBEAT_MIN_NS / ATUN_NS_PER_MS)
#define HEARTBEAT_MAX_MS (ATUN_SESSION_HEARTBEAT_MAX_NS / ATUN_NS_PER_MS)
#define TOKEN_TTL_MAX_MS (ATUN_TOKEN_TTL_MAX_NS / ATUN_NS_PER_MS)

static const field gateway_fields[] = {
    GW_FIELD("state_dir", F_TEXT, state_dir, 0, ATUN_CONFIG_PATH_MAX),
    GW_FIELD("log_level", F_LOG, log_level, 0, 0),
    GW_FIELD("quic_listen", F_LISTEN, quic_listen, 0, 0),
    GW_CUSTOM("quic_public_endpoint", gw_quic_public, write_gw_quic_public),
    GW_FIELD("api_listen", F_LISTEN, api_listen, 0, 0),
    GW_STRING("api_public_url", gw_api_url, api_public_url),
    GW_CUSTOM("server_names", gw_server_names, write_gw_server_names),
    GW_FIELD("heartbeat_interval", F_DURATION, heartbeat_interval_ns,
             HEARTBEAT_MIN_MS, HEARTBEAT_MAX_MS),
    GW_FIELD("offline_missed_heartbeats", F_U32, offline_missed_heartbeats, 1,
             ATUN_SESSION_MISSED_MAX),
    GW_FIELD("drain_timeout", F_DURATION, drain_timeout_ns, TIMEOUT_MIN_MS,
             TIMEOUT_MAX_MS),
    GW_FIELD("client_cert_lifetime", F_DURATION, client_cert_lifetime_ns,
             MS_PER_HOUR, 3650 * MS_PER_DAY),
    GW_FIELD("server_cert_lifetime", F_DURATION, server_cert_lifetime_ns,
             MS_PER_DAY, 3650 * MS_PER_DAY),
    GW_FIELD("ca_lifetime", F_DURATION, ca_lifetime_ns, MS_PER_DAY,
             36500 * MS_PER_DAY),
    GW_FIELD("enroll_token_ttl", F_DURATION, enroll_token_ttl_ns, MS_PER_S,
             TOKEN_TTL_MAX_MS),
    {"socks5", F_OBJECT, 0, 0, 0, 0, NULL, NULL, &socks5_set},
    GW_CUSTOM("forwards", gw_forwards, write_gw_forwards),
    GW_CUSTOM("admin_tokens", gw_tokens, write_gw_tokens),
    {"limits", F_OBJECT, 0, offsetof(atun_config_gateway, limits), 0, 0, NULL,
     NULL, &limits_set},
};
static const fieldset gateway_set = FIELDSET(gateway_fields);

static void listen_set(atun_quic_endpoint *e, const char *addr, uint16_t port) {
  int rv = atun_addr_parse(&e->addr, addr);
  ATUN_ASSERT(rv == 0);
  (void)rv;
  e->port = port;
}

int atun_config_gateway_default(atun_config_gateway *cfg, const atun_mem *mem) {
  static const char *const names[] = {"localhost", "127.0.0.1", "::1"};
  atun_registry_settings reg;
  atun_session_gw_settings gw;
  atun_ca_settings ca;
  atun_ratelimit_settings rl;
  atun_quic_settings quic;
  atun_registry_settings_default(&reg);
  atun_session_gw_settings_default(&gw);
  atun_ca_settings_default(&ca);
  atun_ratelimit_settings_default(&rl);
  atun_quic_settings_default(&quic);

  memset(cfg, 0, sizeof(*cfg));
  cfg->mem = mem_or_default(mem);
  snprintf(cfg->state_dir, sizeof(cfg->state_dir), "/var/lib/atun-gateway");
  cfg->log_level = ATUN_CONFIG_LOG_INFO;
  listen_set(&cfg->quic_listen, "::", 4433);
  listen_set(&cfg->api_listen, "127.0.0.1", 8443);
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i)
    snprintf(cfg->server_names[i], sizeof(cfg->server_names[i]), "%s", names[i]);
  cfg->server_name_count = sizeof(names) / sizeof(names[0]);
  cfg->heartbeat_interval_ns = reg.heartbeat_interval_ns;
  cfg->offline_missed_heartbeats = reg.missed_heartbeats_max;
  cfg->drain_timeout_ns = gw.drain_timeout_ns;
  cfg->client_cert_lifetime_ns = ca.client_lifetime_ns;
  cfg->server_cert_lifetime_ns = ca.server_lifetime_ns;
  cfg->ca_lifetime_ns = ca.ca_lifetime_ns;
  cfg->enroll_token_ttl_ns = 3600 * ATUN_NS_PER_S;
  cfg->socks5_enabled = 1;
  listen_set(&cfg->socks5_listen, "127.0.0.1", 1080);
  cfg->limits.max_agents = reg.max_agents;
  cfg->limits.max_streams_per_agent = (uint32_t)quic.max_streams_bidi;
  cfg->limits.client_max_connections = 4096;
  cfg->limits.api_max_connections = 256;
  cfg->limits.api_max_request_bytes = 65536;
  cfg->limits.api_header_timeout_ns = 10 * ATUN_NS_PER_S;
  cfg->limits.enroll_burst = rl.burst;
  cfg->limits.enroll_interval_ns = rl.interval_ns;
  return 0;
}

void atun_config_gateway_free(atun_config_gateway *cfg) {
  if (cfg->mem != NULL) {
    atun_mem_free(cfg->mem, cfg->socks5_users);
    atun_mem_free(cfg->mem, cfg->forwards);
    atun_mem_free(cfg->mem, cfg->admin_tokens);
  }
  memset(cfg, 0, sizeof(*cfg));
}

/* --- checks across keys ------------------------------------------------------------- */

static int endpoint_equal(const atun_quic_endpoint *a, const atun_quic_endpoint *b) {
  return a->port == b->port && a->addr.family == b->addr.family &&
         memcmp(a->addr.bytes, b->addr.bytes, sizeof(a->addr.bytes)) == 0;
}

/* Sets the key path of a failure found after parsing. */
__attribute__((format(printf, 2, 3)))
static void path_set(pctx *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(c->path, sizeof(c->path), fmt, ap);
  va_end(ap);
  c->pathlen = n < 0 ? 0 : (size_t)n < sizeof(c->path) ? (size_t)n : sizeof(c->path) - 1;
}

/* Every TCP listener (API, SOCKS5, forwards) needs its own address. */
static int check_tcp_listeners(pctx *c, const atun_config_gateway *g) {
  char text[ATUN_HOSTPORT_STRLEN];
  for (size_t i = 0; i < g->forward_count; ++i) {
    const atun_quic_endpoint *e = &g->forwards[i].listen;
    const char *clash = endpoint_equal(e, &g->api_listen) ? "api_listen"
                        : g->socks5_enabled && endpoint_equal(e, &g->socks5_listen)
                            ? "socks5.listen"
                            : NULL;
    size_t j = 0;
    while (clash == NULL && j < i && !endpoint_equal(e, &g->forwards[j].listen)) ++j;
    if (clash == NULL && j == i) continue;
    atun_target t = {.kind = ATUN_TARGET_ADDR, .addr = e->addr};
    atun_hostport_format(text, &t, e->port);
    path_set(c, "forwards[%zu].listen", i);
    if (clash != NULL)
      return fail(c, ATUN_ERR_INVALID_ARGUMENT, "%s is also %s", text, clash);
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "%s is also forwards[%zu].listen", text, j);
  }
  if (g->socks5_enabled && endpoint_equal(&g->socks5_listen, &g->api_listen)) {
    path_set(c, "socks5.listen");
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "same address as api_listen");
  }
  return 0;
}

static int check_unique(pctx *c, const atun_config_gateway *g) {
  for (size_t i = 0; i < g->socks5_user_count; ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (strcmp(g->socks5_users[i].username, g->socks5_users[j].username) != 0) continue;
      path_set(c, "socks5.users[%zu].username", i);
      return fail(c, ATUN_ERR_INVALID_ARGUMENT, "duplicate of users[%zu]", j);
    }
  }
  for (size_t i = 0; i < g->admin_token_count; ++i) {
    const atun_config_admin_token *t = &g->admin_tokens[i];
    for (size_t j = 0; j < i; ++j) {
      int same_name = strcmp(t->name, g->admin_tokens[j].name) == 0;
      if (!same_name && memcmp(t->sha256, g->admin_tokens[j].sha256, 32) != 0) continue;
      path_set(c, "admin_tokens[%zu].%s", i, same_name ? "name" : "sha256");
      return fail(c, ATUN_ERR_INVALID_ARGUMENT, "duplicate of admin_tokens[%zu]", j);
    }
  }
  return 0;
}

static int check_gateway(pctx *c, const atun_config_gateway *g) {
  char a[32], b[32];
  if (g->heartbeat_interval_ns * g->offline_missed_heartbeats >
      ATUN_SESSION_TIMEOUT_MAX_NS) {
    atun_config_duration_format(a, sizeof(a), g->heartbeat_interval_ns / ATUN_NS_PER_MS);
    path_set(c, "offline_missed_heartbeats");
    return fail(c, ATUN_ERR_INVALID_ARGUMENT,
                "%u heartbeats of %s exceed the 1h offline timeout limit",
                (unsigned)g->offline_missed_heartbeats, a);
  }
  const char *longer = g->client_cert_lifetime_ns > g->ca_lifetime_ns ? "client_cert_lifetime"
                       : g->server_cert_lifetime_ns > g->ca_lifetime_ns
                           ? "server_cert_lifetime"
                           : NULL;
  if (longer != NULL) {
    atun_config_duration_format(b, sizeof(b), g->ca_lifetime_ns / ATUN_NS_PER_MS);
    path_set(c, "%s", longer);
    return fail(c, ATUN_ERR_INVALID_ARGUMENT, "longer than ca_lifetime (%s)", b);
  }
  int rv = check_tcp_listeners(c, g);
  return rv != 0 ? rv : check_unique(c, g);
}

int atun_config_gateway_parse(atun_config_gateway *cfg, const char *text,
                              size_t len, const atun_mem *mem,
                              atun_config_error *err) {
  atun_config_error scratch;
  pctx c;
  cJSON *root;
  pctx_init(&c, mem_or_default(mem), err != NULL ? err : &scratch);
  atun_config_gateway_default(cfg, c.mem);
  int rv = parse_text(&c, text, len, &root);
  if (rv == 0) rv = parse_fields(&c, root, &gateway_set, cfg);
  if (rv == 0) rv = check_gateway(&c, cfg);
  cJSON_Delete(root);
  if (rv != 0) atun_config_gateway_free(cfg);
  return rv;
}

int atun_config_gateway_serialize(const atun_config_gateway *cfg, char **out,
                                  size_t *outlen) {
  return serialize(&gateway_set, cfg, mem_or_default(cfg->mem), out, outlen);
}

static void first_server_name(const atun_config_gateway *cfg, atun_target *t) {
  ATUN_ASSERT(cfg->server_name_count > 0);
  const char *name = cfg->server_names[0];
  int rv = atun_host_parse(t, name, strlen(name));
  ATUN_ASSERT(rv == 0);
  (void)rv;
}

void atun_config_gateway_quic_endpoint(const atun_config_gateway *cfg,
                                       char buf[ATUN_HOSTPORT_STRLEN]) {
  atun_target t;
  if (cfg->has_quic_public) {
    atun_hostport_format(buf, &cfg->quic_public_host, cfg->quic_public_port);
    return;
  }
  first_server_name(cfg, &t);
  atun_hostport_format(buf, &t, cfg->quic_listen.port);
}

void atun_config_gateway_api_url(const atun_config_gateway *cfg,
                                 char buf[ATUN_ENROLL_URL_MAX + 1]) {
  char hostport[ATUN_HOSTPORT_STRLEN];
  atun_target t;
  if (cfg->api_public_url[0] != '\0') {
    memcpy(buf, cfg->api_public_url, ATUN_ENROLL_URL_MAX + 1);
    return;
  }
  first_server_name(cfg, &t);
  atun_hostport_format(hostport, &t, cfg->api_listen.port);
  snprintf(buf, ATUN_ENROLL_URL_MAX + 1, "https://%s", hostport);
}

/* ======================================================================
 * Merging an enrollment into an existing agent config
 * ====================================================================== */

/* The keys enrollment owns, in the order of a written file. */
static const char *const owned_keys[] = {
    "name", "agent_id", "gateway", "key_file", "cert_file", "ca_file",
    "server_spki_sha256", "advertise_subnets", "advertise_domains"};
#define OWNED_COUNT (sizeof(owned_keys) / sizeof(owned_keys[0]))
#define OWNED_SUBNETS 7
#define OWNED_DOMAINS 8

/* Runs the parser of agent key |key| on the C string |s|, so a value from
 * the command line or the API is checked (and reported) exactly like the
 * same value in a file. */
static int apply_string(pctx *c, atun_config_agent *a, const char *key,
                        const char *s) {
  cJSON v;
  size_t i = field_find(&agent_set, key);
  size_t mark = path_key(c, key);
  int rv;
  ATUN_ASSERT(i < agent_set.n);
  memset(&v, 0, sizeof(v));
  v.type = cJSON_String;
  v.valuestring = (char *)(uintptr_t)s;
  if (s == NULL || s[0] == '\0')
    rv = fail(c, ATUN_ERR_INVALID_ARGUMENT, "must not be empty");
  else
    rv = parse_field(c, &agent_set.fields[i], &v, a);
  path_pop(c, mark);
  return rv;
}

static int apply_subnets(pctx *c, atun_config_agent *a,
                         const atun_config_enrollment *enr) {
  if (enr->subnet_count > ATUN_SUBNETS_MAX)
    return fail(c, ATUN_ERR_LIMIT, "advertise_subnets: %zu entries, at most %d allowed",
                enr->subnet_count, ATUN_SUBNETS_MAX);
  for (size_t i = 0; i < enr->subnet_count; ++i) {
    if (!atun_prefix_valid(&enr->subnets[i]))
      return fail(c, ATUN_ERR_BAD_PREFIX,
                  "advertise_subnets[%zu]: bad length or host bits set", i);
  }
  if (enr->subnet_count == 0) return 0;
  a->advertise_subnets = atun_mem_calloc(c->mem, enr->subnet_count, sizeof(atun_prefix));
  if (a->advertise_subnets == NULL) return fail(c, ATUN_ERR_NOMEM, "out of memory");
  memcpy(a->advertise_subnets, enr->subnets, enr->subnet_count * sizeof(atun_prefix));
  a->advertise_subnet_count = enr->subnet_count;
  return 0;
}

static int apply_domains(pctx *c, atun_config_agent *a,
                         const atun_config_enrollment *enr) {
  if (enr->domain_count > ATUN_DOMAINS_MAX)
    return fail(c, ATUN_ERR_LIMIT, "advertise_domains: %zu entries, at most %d allowed",
                enr->domain_count, ATUN_DOMAINS_MAX);
  if (enr->domain_count == 0) return 0;
  a->advertise_domains = atun_mem_calloc(c->mem, enr->domain_count, sizeof(atun_domain));
  if (a->advertise_domains == NULL) return fail(c, ATUN_ERR_NOMEM, "out of memory");
  a->advertise_domain_count = enr->domain_count;
  for (size_t i = 0; i < enr->domain_count; ++i) {
    const atun_domain *d = &enr->domains[i];
    atun_domain *out = &a->advertise_domains[i];
    if (atun_name_normalize(out->name, d->name, strnlen(d->name, sizeof(d->name))) != 0 ||
        d->auto_detected > 1)
      return fail(c, ATUN_ERR_BAD_NAME, "advertise_domains[%zu]: not a valid domain", i);
    out->auto_detected = d->auto_detected;
  }
  return 0;
}

/* Fills |a| (holding the defaults) with what |enr| sets. */
static int apply_enrollment(pctx *c, atun_config_agent *a,
                            const atun_config_enrollment *enr) {
  const char *values[] = {enr->name,     enr->agent_id,  enr->gateway,
                          enr->key_file, enr->cert_file, enr->ca_file};
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); ++i) {
    int rv = apply_string(c, a, owned_keys[i], values[i]);
    if (rv != 0) return rv;
  }
  memcpy(a->server_spki_sha256, enr->server_spki_sha256, ATUN_SPKI_PIN_BYTES);
  a->has_server_spki = 1;
  int rv = enr->set_subnets ? apply_subnets(c, a, enr) : 0;
  return rv != 0 ? rv : enr->set_domains ? apply_domains(c, a, enr) : 0;
}

/* Compares the raw key text (between the quotes) with the ASCII |want|,
 * decoding escapes, so "n\u0061me" is "name" as for any JSON reader. */
static int key_equals(const char *raw, const char *end, const char *want) {
  static const char plain[] = "\"\\/bfnrt";
  static const char value[] = "\"\\/\b\f\n\r\t";
  while (raw < end) {
    char ch = *raw++;
    if (ch == '\\') {
      uint32_t u;
      if (*raw == 'u') {
        if (hex4(raw + 1, end, &u) != 0 || u >= 0x80) return 0;
        ch = (char)u;
        raw += 5;
      } else {
        const char *e = strchr(plain, *raw);
        ATUN_ASSERT(e != NULL && *raw != '\0');
        ch = value[e - plain];
        ++raw;
      }
    }
    if (*want == '\0' || *want++ != ch) return 0;
  }
  return *want == '\0';
}

typedef struct jmember {
  const char *kstart, *kend; /* the key with its quotes */
  const char *vstart, *vend;
} jmember;

/* Steps to the next top-level member of a checked document; |s->p| is after
 * the '{' or after the previous value.  Returns 0 at the closing brace. */
static int member_next(jscan *s, jmember *m) {
  skip_ws(s);
  if (*s->p == ',') ++s->p, skip_ws(s);
  if (*s->p == '}') return 0;
  m->kstart = s->p;
  int rv = scan_string(s);
  m->kend = s->p;
  skip_ws(s);
  ++s->p; /* ':' */
  skip_ws(s);
  m->vstart = s->p;
  rv |= scan_value(s, 1);
  m->vend = s->p;
  ATUN_ASSERT(rv == 0);
  (void)rv;
  return 1;
}

/* How the file lays out its members, learnt from the first one. */
typedef struct layout {
  const char *lead; /* text before a member: line break and indentation */
  size_t leadlen;
  const char *colon; /* between key and value */
  size_t colonlen;
} layout;

static void layout_learn(layout *l, jw *w, const char *open, const jmember *m) {
  const char *ws = open + 1;
  const char *nl = NULL;
  for (const char *p = ws; p < m->kstart; ++p)
    if (*p == '\n') nl = p;
  l->colon = m->kend;
  l->colonlen = (size_t)(m->vstart - m->kend);
  if (nl == NULL) { /* everything on one line: keep it that way */
    l->lead = ws;
    l->leadlen = (size_t)(m->kstart - ws);
    w->nl = NULL;
    return;
  }
  const char *brk = (nl > ws && nl[-1] == '\r') ? nl - 1 : nl;
  l->lead = brk;
  l->leadlen = (size_t)(m->kstart - brk);
  w->nl = brk;
  w->nllen = (size_t)(nl + 1 - brk);
  w->unit = nl + 1;
  w->unitlen = (size_t)(m->kstart - (nl + 1));
}

static void write_owned(jw *w, size_t k, const atun_config_agent *a) {
  /* Values sit one level in, like the member they belong to. */
  w->depth = 1;
  w->kind[1] = JW_NONE;
  w->count[1] = 0;
  write_value(w, &agent_set.fields[field_find(&agent_set, owned_keys[k])], a);
  w->depth = 0;
}

static int owned_index(const jmember *m, unsigned wanted) {
  for (size_t k = 0; k < OWNED_COUNT; ++k)
    if ((wanted & (1u << k)) && key_equals(m->kstart + 1, m->kend - 1, owned_keys[k]))
      return (int)k;
  return -1;
}

/* Rewrites the owned members of the checked object text in place and adds
 * the missing ones after the last member. */
static int splice(pctx *c, const char *text, size_t len, unsigned wanted,
                  const atun_config_agent *a, char **out, size_t *outlen) {
  jscan s = {text, text, text + len, NULL, NULL};
  jw w;
  jmember m;
  layout l;
  const char *pos = text, *last_end = NULL, *open;
  unsigned todo = wanted;
  jw_init(&w, c->mem);
  skip_ws(&s);
  open = s.p++;
  while (member_next(&s, &m)) {
    if (last_end == NULL) layout_learn(&l, &w, open, &m);
    int k = owned_index(&m, todo);
    if (k >= 0) {
      jw_put(&w, pos, (size_t)(m.vstart - pos));
      write_owned(&w, (size_t)k, a);
      pos = m.vend;
      todo &= ~(1u << k);
    }
    last_end = m.vend;
  }
  if (last_end == NULL) { /* "{}": write the members the default way */
    jw_put(&w, text, (size_t)(open - text));
    jw_open(&w, '{');
    for (size_t k = 0; k < OWNED_COUNT; ++k) {
      if (!(todo & (1u << k))) continue;
      jw_key(&w, owned_keys[k]);
      write_value(&w, &agent_set.fields[field_find(&agent_set, owned_keys[k])], a);
    }
    jw_close(&w, '}');
    pos = s.p + 1;
  } else {
    jw_put(&w, pos, (size_t)(last_end - pos));
    pos = last_end;
    for (size_t k = 0; k < OWNED_COUNT; ++k) {
      if (!(todo & (1u << k))) continue;
      jw_put(&w, ",", 1);
      jw_put(&w, l.lead, l.leadlen);
      jw_quoted(&w, owned_keys[k]);
      jw_put(&w, l.colon, l.colonlen);
      write_owned(&w, k, a);
    }
  }
  jw_put(&w, pos, (size_t)(text + len - pos));
  int rv = jw_finish(&w, out, outlen);
  if (rv == ATUN_ERR_LIMIT)
    return fail(c, rv, "the merged config would exceed %zu bytes", ATUN_CONFIG_TEXT_MAX);
  return rv != 0 ? fail(c, rv, "out of memory") : 0;
}

static int is_blank_text(const char *text, size_t len) {
  for (size_t i = 0; i < len; ++i)
    if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r') return 0;
  return 1;
}

static int merge_text(pctx *c, const char *text, size_t len,
                      const atun_config_enrollment *enr, char **out, size_t *outlen) {
  atun_config_agent a;
  unsigned wanted = (1u << OWNED_SUBNETS) - 1;
  int rv;
  if (enr->set_subnets) wanted |= 1u << OWNED_SUBNETS;
  if (enr->set_domains) wanted |= 1u << OWNED_DOMAINS;
  if (atun_config_agent_default(&a, c->mem) != 0) return fail(c, ATUN_ERR_NOMEM, "out of memory");
  rv = apply_enrollment(c, &a, enr);
  if (rv == 0 && is_blank_text(text, len)) {
    rv = atun_config_agent_serialize(&a, out, outlen);
    if (rv != 0) rv = fail(c, rv, "out of memory");
  } else if (rv == 0) {
    rv = splice(c, text, len, wanted, &a, out, outlen);
  }
  atun_config_agent_free(&a);
  return rv;
}

/* Syntax and shape of the existing file. */
static int check_existing(pctx *c, const char *text, size_t len) {
  if (len > ATUN_CONFIG_TEXT_MAX)
    return fail(c, ATUN_ERR_LIMIT, "existing config of %zu bytes, at most %zu", len,
                ATUN_CONFIG_TEXT_MAX);
  if (is_blank_text(text, len)) return 0;
  int rv = scan_document(c, text, len, "existing config: ");
  if (rv != 0) return rv;
  jscan s = {text, text, text + len, NULL, NULL};
  skip_ws(&s);
  if (*s.p != '{')
    return fail(c, ATUN_ERR_MALFORMED, "existing config: the top level must be an object");
  return 0;
}

int atun_config_merge_enrollment(const char *existing, size_t len,
                                 const atun_config_enrollment *enr,
                                 const atun_mem *mem, char **out,
                                 size_t *outlen, atun_config_error *err) {
  atun_config_error scratch;
  atun_config_agent check;
  pctx c;
  size_t n = 0;
  pctx_init(&c, mem_or_default(mem), err != NULL ? err : &scratch);
  *out = NULL;
  if (existing == NULL) existing = "", len = 0;
  int rv = check_existing(&c, existing, len);
  if (rv == 0) rv = merge_text(&c, existing, len, enr, out, &n);
  if (rv != 0) return rv;
  /* Never hand back a file the agent would refuse to start with. */
  rv = atun_config_agent_parse(&check, *out, n, c.mem, c.err);
  atun_config_agent_free(&check);
  if (rv != 0) {
    atun_mem_free(c.mem, *out);
    *out = NULL;
    return rv;
  }
  if (outlen != NULL) *outlen = n;
  return 0;
}
