/*
 * logfmt lines: layout, quoting, escaping, level filter, redaction of
 * secret-named fields, and the value and line bounds.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* 2026-11-25T17:02:00.123Z */
static atun_tstamp t0(void) {
  struct tm tm = {.tm_year = 126, .tm_mon = 10, .tm_mday = 25, .tm_hour = 17,
                  .tm_min = 2, .tm_sec = 0};
  return (atun_tstamp)timegm(&tm) * ATUN_NS_PER_S + 123 * ATUN_NS_PER_MS + 999;
}

static char buf[ATUN_LOG_LINE_MAX + 64];

#define FMT(...) atun_log_format(buf, sizeof(buf), t0(), __VA_ARGS__)

/* The part of the line after the four fixed fields. */
static const char *fields(void) {
  const char *p = strstr(buf, " event=");
  cr_assert_not_null(p);
  p = strchr(p + 1, ' ');
  return p == NULL ? "" : p + 1;
}

Test(log, layout) {
  size_t n = FMT(ATUN_LOG_INFO, "gateway", "agent_connected",
                 "agent_id=%s reason=%s streams=%zu", "0b7e", "peer went away",
                 (size_t)3);
  const char *want =
      "ts=2026-11-25T17:02:00.123Z level=info component=gateway "
      "event=agent_connected agent_id=0b7e reason=\"peer went away\" streams=3\n";
  cr_assert_str_eq(buf, want);
  cr_assert_eq(n, strlen(want));
  FMT(ATUN_LOG_ERROR, "agent", "boot", NULL);
  cr_assert_str_eq(buf, "ts=2026-11-25T17:02:00.123Z level=error component=agent "
                        "event=boot\n");
  FMT(ATUN_LOG_DEBUG, "a b", "", NULL);
  cr_assert_str_eq(buf, "ts=2026-11-25T17:02:00.123Z level=debug "
                        "component=\"a b\" event=\"\"\n");
}

Test(log, quoting_and_escaping) {
  FMT(ATUN_LOG_WARN, "c", "e", "a=%s b=%s c=%s d=%s e=%s f=%s", "", "x=y",
      "say \"hi\"", "back\\slash", "t\tn\nr\r", "\x01\x7f\x1b[31m");
  cr_assert_str_eq(fields(), "a=\"\" b=\"x=y\" c=\"say \\\"hi\\\"\" "
                             "d=\"back\\\\slash\" e=\"t\\tn\\nr\\r\" "
                             "f=\"\\x01\\x7f\\x1b[31m\"\n");
  /* No raw control byte, and one line only. */
  cr_assert_eq(strchr(buf, '\n'), buf + strlen(buf) - 1);
  for (const char *p = buf; *p; ++p) cr_assert(*p == '\n' || (unsigned char)*p >= 0x20);
  /* UTF-8 passes untouched and unquoted. */
  FMT(ATUN_LOG_INFO, "c", "e", "name=%s", "z\xc3\xbcrich");
  cr_assert_str_eq(fields(), "name=z\xc3\xbcrich\n");
}

Test(log, keys_and_format_words) {
  FMT(ATUN_LOG_INFO, "c", "e", "we\"ird=%d  =%d plain lit=x%dy pct=%d%%", 1, 2, 3, 4);
  cr_assert_str_eq(fields(), "we_ird=1 _=2 plain=\"\" lit=x3y pct=4%\n");
  /* volatile: the compiler would refuse a NULL it can see. */
  static const char *volatile nothing;
  FMT(ATUN_LOG_INFO, "c", "e", "null=%s after=%d", nothing, 7);
  cr_assert_str_eq(fields(), "null=(null) after=7\n");
}

Test(log, argument_types) {
  long long ll = -5;
  unsigned long ul = 6;
  short sh = 7;
  FMT(ATUN_LOG_INFO, "c", "e",
      "a=%d b=%lld c=%zu d=%.2f e=%s f=%c g=%*d h=%.*s i=%lu j=%hd k=%jd l=%Lg "
      "m=%x n=%td",
      1, ll, (size_t)42, 2.5, "s", 'q', 4, 9, 2, "abc", ul, sh, (intmax_t)8,
      (long double)1.5, 255u, (ptrdiff_t)-3);
  cr_assert_str_eq(fields(), "a=1 b=-5 c=42 d=2.50 e=s f=q g=\"   9\" h=ab i=6 j=7 "
                             "k=8 l=1.5 m=ff n=-3\n");
}

Test(log, secrets_are_redacted) {
  const char *secret = "s3cr3t-VALUE";
  FMT(ATUN_LOG_INFO, "c", "e",
      "token=%s api_key=%s Authorization=%s password=%s client_secret=%s "
      "passwd=%s cookie=%s credentials=%s enroll_token=%d/%s/%f after=%s",
      secret, secret, secret, secret, secret, secret, secret, secret, 3, secret,
      1.0, "kept");
  cr_assert_null(strstr(buf, "s3cr3t"), "%s", buf);
  cr_assert_str_eq(fields(),
                   "token=<redacted> api_key=<redacted> Authorization=<redacted> "
                   "password=<redacted> client_secret=<redacted> passwd=<redacted> "
                   "cookie=<redacted> credentials=<redacted> enroll_token=<redacted> "
                   "after=kept\n");
  cr_assert(atun_log_key_is_secret("TOKEN", 5));
  cr_assert(atun_log_key_is_secret("x-Api-Key", 9));
  cr_assert_not(atun_log_key_is_secret("agent_id", 8));
  cr_assert_not(atun_log_key_is_secret("tok", 3));
  cr_assert_not(atun_log_key_is_secret(NULL, 0));
  /* Only the first |len| bytes count. */
  cr_assert_not(atun_log_key_is_secret("mytoken", 2));
}

Test(log, value_bound) {
  static char big[ATUN_LOG_VALUE_MAX * 3];
  memset(big, 'v', sizeof(big) - 1);
  FMT(ATUN_LOG_INFO, "c", "e", "big=%s next=%d", big, 1);
  const char *f = fields();
  cr_assert_eq(strncmp(f, "big=", 4), 0);
  const char *sp = strchr(f, ' ');
  cr_assert_not_null(sp);
  cr_assert_eq((size_t)(sp - f), 4 + ATUN_LOG_VALUE_MAX + 3);
  cr_assert_eq(strncmp(sp - 3, "...", 3), 0);
  cr_assert_str_eq(sp, " next=1\n");
  /* Exactly at the bound: not cut. */
  big[ATUN_LOG_VALUE_MAX] = '\0';
  FMT(ATUN_LOG_INFO, "c", "e", "big=%s", big);
  cr_assert_eq(strlen(fields()), 4 + ATUN_LOG_VALUE_MAX + 1);
  cr_assert_null(strstr(buf, "..."));
  /* A quoted value keeps its closing quote after the ellipsis. */
  memset(big, ' ', ATUN_LOG_VALUE_MAX + 10);
  big[ATUN_LOG_VALUE_MAX + 10] = '\0';
  FMT(ATUN_LOG_INFO, "c", "e", "sp=%s", big);
  cr_assert_eq(strncmp(buf + strlen(buf) - 6, " ...\"\n", 6), 0, "%s", buf);
}

Test(log, line_bound) {
  static char v[ATUN_LOG_VALUE_MAX + 1];
  memset(v, 'x', ATUN_LOG_VALUE_MAX);
  size_t n = FMT(ATUN_LOG_INFO, "c", "e", "a=%s b=%s c=%s d=%s e=%s f=%d", v, v, v,
                 v, v, 9);
  cr_assert_leq(n, ATUN_LOG_LINE_MAX);
  cr_assert_eq(strlen(buf), n);
  cr_assert_eq(buf[n - 1], '\n');
  cr_assert_eq(strncmp(buf + n - 13, " truncated=1\n", 13), 0, "%s", buf + n - 40);
  cr_assert_null(strstr(buf, " f=9"));
  /* Escaping multiplies bytes: still bounded, never a half escape. */
  static char ctl[ATUN_LOG_VALUE_MAX + 1];
  memset(ctl, 0x01, ATUN_LOG_VALUE_MAX);
  n = FMT(ATUN_LOG_INFO, "c", "e", "a=%s b=%s c=%s", ctl, ctl, ctl);
  cr_assert_leq(n, ATUN_LOG_LINE_MAX);
  cr_assert_not_null(strstr(buf, "...\" truncated=1\n"), "%s", buf + n - 40);
  /* A small buffer bounds the line further. */
  char small[100];
  n = atun_log_format(small, sizeof(small), t0(), ATUN_LOG_INFO, "c", "e", "a=%s", v);
  cr_assert_leq(n, sizeof(small) - 1);
  cr_assert_eq(strlen(small), n);
  cr_assert_eq(small[n - 1], '\n');
  cr_assert_eq(atun_log_format(small, 63, t0(), ATUN_LOG_INFO, "c", "e", NULL), 0);
  cr_assert_eq(atun_log_format(NULL, 100, t0(), ATUN_LOG_INFO, "c", "e", NULL), 0);
}

Test(log, fields_bound) {
  FMT(ATUN_LOG_INFO, "c", "e",
      "a=1 a=2 a=3 a=4 a=5 a=6 a=7 a=8 a=9 a=10 a=11 a=12 a=13 a=14 a=15 a=16 "
      "a=17 a=18 a=19 a=20 a=21 a=22 a=23 a=24 a=25 a=26 a=27 a=28 a=29 a=30 "
      "a=31 a=32 a=33");
  cr_assert_not_null(strstr(buf, " a=32 truncated=1\n"), "%s", buf);
  cr_assert_null(strstr(buf, "a=33"));
}

Test(log, pointer_and_long_words) {
  int x;
  FMT(ATUN_LOG_INFO, "c", "e", "p=%p n=%d", (void *)&x, 5);
  cr_assert_eq(strncmp(fields(), "p=0x", 4), 0, "%s", buf);
  cr_assert_not_null(strstr(buf, " n=5\n"));
  /* A word too long to format alone is replaced, its argument skipped. */
  FMT(ATUN_LOG_INFO, "c", "e",
      "w=%d" "................................................................"
      "................................................................"
      "................................................................"
      "................................................................ n=%d",
      1, 2);
  cr_assert_str_eq(fields(), "w=? n=2\n");
}

Test(log, unsupported_conversion_stops) {
  int sink = 0;
  FMT(ATUN_LOG_INFO, "c", "e", "a=%d b=%n c=%d", 1, &sink, 3);
  cr_assert_str_eq(fields(), "a=1 b=? truncated=1\n");
  cr_assert_eq(sink, 0);
}

typedef struct capture {
  int lines;
  atun_log_level level;
  char last[ATUN_LOG_LINE_MAX + 1];
} capture;

static void capture_sink(atun_log_level level, const char *line, size_t len, void *ud) {
  capture *c = ud;
  cr_assert_eq(line[len - 1], '\n');
  cr_assert_eq(line[len], '\0');
  ++c->lines;
  c->level = level;
  memcpy(c->last, line, len + 1);
}

Test(log, level_filter_and_sink) {
  capture c = {0};
  atun_log_set_sink(capture_sink, &c);
  cr_assert_eq(atun_log_get_level(), ATUN_LOG_INFO);
  atun_log(ATUN_LOG_DEBUG, "c", "dropped", NULL);
  cr_assert_eq(c.lines, 0);
  atun_log(ATUN_LOG_INFO, "c", "kept", "n=%d", 1);
  cr_assert_eq(c.lines, 1);
  cr_assert_not_null(strstr(c.last, "level=info component=c event=kept n=1\n"));
  atun_log_set_level(ATUN_LOG_WARN);
  cr_assert_not(atun_log_enabled(ATUN_LOG_INFO));
  cr_assert(atun_log_enabled(ATUN_LOG_ERROR));
  atun_log(ATUN_LOG_INFO, "c", "dropped", NULL);
  atun_log(ATUN_LOG_ERROR, "c", "kept", NULL);
  cr_assert_eq(c.lines, 2);
  cr_assert_eq(c.level, ATUN_LOG_ERROR);
  /* Out-of-range levels are ignored. */
  atun_log_set_level((atun_log_level)9);
  cr_assert_eq(atun_log_get_level(), ATUN_LOG_WARN);
  cr_assert_not(atun_log_enabled((atun_log_level)9));
  atun_log_set_level(ATUN_LOG_DEBUG);
  atun_log(ATUN_LOG_DEBUG, "c", "kept", NULL);
  cr_assert_eq(c.lines, 3);
  atun_log_set_sink(NULL, NULL);
  atun_log(ATUN_LOG_DEBUG, "c", "to_stderr", NULL);
  cr_assert_eq(c.lines, 3);
}

Test(log, level_names) {
  atun_log_level l;
  const char *ok[] = {"debug", "INFO", "Warn", "warning", "error"};
  atun_log_level want[] = {ATUN_LOG_DEBUG, ATUN_LOG_INFO, ATUN_LOG_WARN, ATUN_LOG_WARN,
                           ATUN_LOG_ERROR};
  for (size_t i = 0; i < 5; ++i) {
    cr_assert_eq(atun_log_level_parse(ok[i], &l), 0);
    cr_assert_eq(l, want[i]);
  }
  cr_assert_eq(atun_log_level_parse("verbose", &l), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_log_level_parse("", &l), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_log_level_parse(NULL, &l), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(atun_log_level_name(ATUN_LOG_WARN), "warn");
  cr_assert_str_eq(atun_log_level_name((atun_log_level)7), "?");
}

static void collect(const char *line, void *ud) {
  char (*out)[ATUN_LOG_RECENT_LEN] = ud;
  static size_t n;
  if (line == NULL) { n = 0; return; }
  snprintf(out[n++ % 16], ATUN_LOG_RECENT_LEN, "%s", line);
}

/* The last ATUN_LOG_RECENT_MAX warnings and errors are kept, oldest first,
 * without their newline and cut to the bound; info lines are not. */
Test(log, recent_problems_are_kept_for_status) {
  atun_log_keep_recent();
  atun_log_set_level(ATUN_LOG_DEBUG);
  cr_assert_eq(atun_log_recent(collect, NULL), 0);
  for (int i = 0; i < ATUN_LOG_RECENT_MAX + 2; ++i) {
    atun_log(ATUN_LOG_INFO, "test", "noise", "i=%d", i);
    atun_log(i % 2 ? ATUN_LOG_ERROR : ATUN_LOG_WARN, "test", "trouble", "i=%d", i);
  }
  static char got[16][ATUN_LOG_RECENT_LEN];
  collect(NULL, got);
  cr_assert_eq(atun_log_recent(collect, got), ATUN_LOG_RECENT_MAX + 2);
  for (int k = 0; k < ATUN_LOG_RECENT_MAX; ++k) {
    char want[32];
    snprintf(want, sizeof(want), "i=%d", k + 2); /* the two oldest went */
    cr_assert(strstr(got[k], "event=trouble") != NULL, "%s", got[k]);
    cr_assert(strstr(got[k], want) != NULL, "line %d: %s", k, got[k]);
    cr_assert(strchr(got[k], '\n') == NULL);
  }
  /* A long line is cut to the bound, NUL included. */
  char big[2 * ATUN_LOG_RECENT_LEN];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  atun_log(ATUN_LOG_WARN, "test", "long", "v=%s", big);
  collect(NULL, got);
  atun_log_recent(collect, got);
  cr_assert_eq(strlen(got[ATUN_LOG_RECENT_MAX - 1]), ATUN_LOG_RECENT_LEN - 1);
  atun_log_set_sink(NULL, NULL);
  atun_log_set_level(ATUN_LOG_INFO);
}
