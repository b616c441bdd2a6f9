/*
 * The enrollment client's HTTP response reader (agent/http_resp.c): every
 * way a response can be framed, and every bound at the bound.  And the
 * requests agent/enroll_http.c refuses before opening any socket.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../agent/enroll_http.c"
#include "../agent/http_resp.c"
#include "../agent/pin.c"
#include "support.h"

#define MEM atun_mem_default()

static agent_http_reader r;

static void teardown(void) { agent_http_reader_free(&r); }

TestSuite(agent_http, .fini = teardown);

static int feed(const char *s) { return agent_http_reader_feed(&r, s, strlen(s)); }

Test(agent_http, content_length_in_one_piece) {
  cr_assert_eq(agent_http_reader_init(&r, 1024, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), 1);
  cr_assert_eq(r.status, 200);
  cr_assert_eq(r.body_len, 5);
  cr_assert_str_eq(r.body, "hello");
}

Test(agent_http, byte_by_byte) {
  const char *s = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                  "Content-Length: 2\r\n\r\n{}";
  cr_assert_eq(agent_http_reader_init(&r, 1024, MEM), 0);
  size_t n = strlen(s);
  for (size_t i = 0; i + 1 < n; ++i)
    cr_assert_eq(agent_http_reader_feed(&r, s + i, 1), 0, "at %zu", i);
  cr_assert_eq(agent_http_reader_feed(&r, s + n - 1, 1), 1);
  cr_assert_eq(r.status, 201);
  cr_assert_str_eq(r.body, "{}");
}

Test(agent_http, chunked_body) {
  cr_assert_eq(agent_http_reader_init(&r, 1024, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"), 1);
  cr_assert_str_eq(r.body, "abcdefg");
}

Test(agent_http, body_ends_with_the_connection) {
  cr_assert_eq(agent_http_reader_init(&r, 1024, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\noops"),
               0);
  cr_assert_eq(agent_http_reader_eof(&r), 1);
  cr_assert_eq(r.status, 500);
  cr_assert_str_eq(r.body, "oops");
}

Test(agent_http, empty_body) {
  cr_assert_eq(agent_http_reader_init(&r, 1024, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 204 No Content\r\n\r\n"), 1);
  cr_assert_eq(r.status, 204);
  cr_assert_eq(r.body_len, 0);
}

Test(agent_http, interim_responses_are_skipped) {
  cr_assert_eq(agent_http_reader_init(&r, 1024, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 100 Continue\r\n\r\n"), 0);
  cr_assert_eq(feed("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"), 1);
  cr_assert_eq(r.status, 403);
  cr_assert_str_eq(r.body, "no");
}

Test(agent_http, bytes_after_the_response_are_ignored) {
  cr_assert_eq(agent_http_reader_init(&r, 1024, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 500 No\r\n"), 1);
  cr_assert_eq(feed("garbage"), 1);
  cr_assert_eq(r.status, 200);
  cr_assert_str_eq(r.body, "x");
}

Test(agent_http, body_at_the_bound) {
  char buf[256];
  cr_assert_eq(agent_http_reader_init(&r, 10, MEM), 0);
  snprintf(buf, sizeof(buf), "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
  cr_assert_eq(feed(buf), 1);
  cr_assert_eq(r.body_len, 10);
}

Test(agent_http, declared_length_above_the_bound) {
  cr_assert_eq(agent_http_reader_init(&r, 10, MEM), 0);
  /* Refused from the header alone: no body byte is needed. */
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"), ATUN_ERR_LIMIT);
  cr_assert_eq(r.body_len, 0);
  /* Sticky. */
  cr_assert_eq(feed("0123456789a"), ATUN_ERR_LIMIT);
  cr_assert_eq(agent_http_reader_eof(&r), ATUN_ERR_LIMIT);
}

Test(agent_http, chunked_body_above_the_bound) {
  cr_assert_eq(agent_http_reader_init(&r, 10, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "a\r\n0123456789\r\n"), 0);
  cr_assert_eq(feed("1\r\nx\r\n"), ATUN_ERR_LIMIT);
}

Test(agent_http, unframed_body_above_the_bound) {
  cr_assert_eq(agent_http_reader_init(&r, 4, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\n\r\n0123"), 0);
  cr_assert_eq(feed("4"), ATUN_ERR_LIMIT);
}

static char *headers_of(size_t total) {
  /* "HTTP/1.1 200 OK\r\n" then one header, padded so that status text,
   * names and values add up to |total| counted bytes. */
  char *s = malloc(total + 256);
  cr_assert_not_null(s);
  size_t value = total - strlen("OK") - strlen("X");
  int n = sprintf(s, "HTTP/1.1 200 OK\r\nX: ");
  memset(s + n, 'v', value);
  strcpy(s + n + value, "\r\nContent-Length: 0\r\n\r\n");
  return s;
}

Test(agent_http, headers_at_and_above_the_bound) {
  /* Content-Length and its value count too. */
  size_t extra = strlen("Content-Length") + strlen("0");
  char *at = headers_of(AGENT_HTTP_HEADER_MAX - extra);
  cr_assert_eq(agent_http_reader_init(&r, 16, MEM), 0);
  cr_assert_eq(feed(at), 1);
  agent_http_reader_free(&r);
  free(at);
  char *above = headers_of(AGENT_HTTP_HEADER_MAX - extra + 1);
  cr_assert_eq(agent_http_reader_init(&r, 16, MEM), 0);
  cr_assert_eq(feed(above), ATUN_ERR_LIMIT);
  free(above);
}

Test(agent_http, not_http) {
  cr_assert_eq(agent_http_reader_init(&r, 16, MEM), 0);
  cr_assert_eq(feed("SSH-2.0-OpenSSH\r\n"), ATUN_ERR_MALFORMED);
  cr_assert_not_null(r.why);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\n\r\n"), ATUN_ERR_MALFORMED);
}

Test(agent_http, cut_short) {
  cr_assert_eq(agent_http_reader_init(&r, 16, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"), 0);
  cr_assert_eq(agent_http_reader_eof(&r), ATUN_ERR_TRUNCATED);
}

Test(agent_http, closed_before_any_byte) {
  cr_assert_eq(agent_http_reader_init(&r, 16, MEM), 0);
  cr_assert_eq(agent_http_reader_eof(&r), ATUN_ERR_TRUNCATED);
}

Test(agent_http, bounds_of_init) {
  cr_assert_eq(agent_http_reader_init(&r, 0, MEM), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_http_reader_init(&r, AGENT_HTTP_BODY_LIMIT + 1, MEM),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(agent_http_reader_init(&r, AGENT_HTTP_BODY_LIMIT, MEM), 0);
}

Test(agent_http, empty_feed_is_not_eof) {
  cr_assert_eq(agent_http_reader_init(&r, 16, MEM), 0);
  cr_assert_eq(feed("HTTP/1.1 200 OK\r\n\r\nab"), 0);
  cr_assert_eq(agent_http_reader_feed(&r, "", 0), 0);
  cr_assert_eq(feed("c"), 0);
  cr_assert_eq(agent_http_reader_eof(&r), 1);
  cr_assert_str_eq(r.body, "abc");
}

/* Feeds a 5000-byte body in 1000-byte pieces; returns the last result. */
static int feed_body(void) {
  char piece[1000];
  memset(piece, 'b', sizeof(piece));
  int rv = feed("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n");
  for (int i = 0; i < 5 && rv == 0; ++i) rv = agent_http_reader_feed(&r, piece, sizeof(piece));
  return rv;
}

Test(agent_http, out_of_memory_for_the_body) {
  atun_failmem fm;
  /* The body grows to 1, 2, 4 and 8 KiB: each step can fail, nothing leaks
   * and the error sticks. */
  for (long ok = 0; ok < 4; ++ok) {
    atun_failmem_init(&fm, ok);
    cr_assert_eq(agent_http_reader_init(&r, 8192, &fm.mem), 0);
    cr_assert_eq(feed_body(), ATUN_ERR_NOMEM, "after %ld", ok);
    cr_assert_eq(agent_http_reader_feed(&r, "x", 1), ATUN_ERR_NOMEM);
    agent_http_reader_free(&r);
    cr_assert_eq(fm.live, 0);
  }
  atun_failmem_init(&fm, 4);
  cr_assert_eq(agent_http_reader_init(&r, 8192, &fm.mem), 0);
  cr_assert_eq(feed_body(), 1);
  cr_assert_eq(r.body_len, 5000);
  agent_http_reader_free(&r);
  cr_assert_eq(fm.live, 0);
}

/* --- requests refused before any socket ------------------------------------------ */

static atun_enroll_url url;
static const uint8_t pin[ATUN_SPKI_PIN_BYTES];

static agent_https_request good_request(void) {
  const char *u = "https://127.0.0.1:1/api";
  cr_assert_eq(atun_enroll_url_parse(&url, u, strlen(u), NULL), 0);
  agent_https_request req = {.url = &url, .ca_pin = pin, .path = "/jet/agent-tunnel/enroll",
                             .bearer = "secret", .body = "{}", .body_len = 2,
                             .timeout_ns = ATUN_NS_PER_S, .response_max = 1024};
  return req;
}

static void expect_refused(const agent_https_request *req, const char *what) {
  agent_https_response resp;
  cr_assert_eq(agent_https_post(req, &resp), ATUN_ERR_INVALID_ARGUMENT, "%s", what);
  cr_assert_str_eq(resp.error, "invalid request");
  cr_assert_null(resp.body);
}

Test(agent_https, bad_requests_never_reach_the_network) {
  agent_https_request req = good_request();
  req.bearer = "secret\r\nX-Injected: 1";
  expect_refused(&req, "CR LF in the secret");
  req = good_request();
  req.path = "jet";
  expect_refused(&req, "relative path");
  req = good_request();
  req.body_len = AGENT_HTTPS_BODY_MAX + 1;
  expect_refused(&req, "body above the bound");
  req = good_request();
  req.timeout_ns = 0;
  expect_refused(&req, "no time");
  req = good_request();
  req.timeout_ns = 3600 * ATUN_NS_PER_S + 1;
  expect_refused(&req, "more than an hour");
  req = good_request();
  req.response_max = AGENT_HTTP_BODY_LIMIT + 1;
  expect_refused(&req, "response bound above the limit");
  req = good_request();
  req.ca_pin = NULL;
  expect_refused(&req, "no pin");
}

Test(agent_https, request_text) {
  agent_https_request req = good_request();
  const char *u = "https://[::1]:8443/base";
  cr_assert_eq(atun_enroll_url_parse(&url, u, strlen(u), NULL), 0);
  size_t len = 0;
  char *text = request_text(&req, &len);
  cr_assert_not_null(text);
  cr_assert_eq(len, strlen(text));
  const char *line = "POST /base/jet/agent-tunnel/enroll HTTP/1.1\r\n";
  cr_assert(strncmp(text, line, strlen(line)) == 0, "%s", text);
  cr_assert_not_null(strstr(text, "\r\nHost: [::1]:8443\r\n"));
  cr_assert_not_null(strstr(text, "\r\nAuthorization: Bearer secret\r\n"));
  cr_assert_not_null(strstr(text, "\r\nContent-Length: 2\r\n"));
  cr_assert_not_null(strstr(text, "\r\nConnection: close\r\n"));
  cr_assert(len > 6 && memcmp(text + len - 6, "\r\n\r\n{}", 6) == 0);
  free(text);
}
