/*
 * Fuzzes one HTTP/1.1 connection of the API server without TLS or sockets:
 * arbitrary bytes go through the session (http_parser, limits, router, JSON
 * handlers) as a plaintext request stream.
 *
 * Input: byte 0 picks the allocation from which on all fail (0: none),
 * byte 1 seeds how the stream is cut into reads, how time moves between them
 * and how much of the output the "peer" takes each time (see drive()); the
 * rest is the stream.
 *
 * Checked on every run: the output parses as a sequence of HTTP responses;
 * every error body is {"error": {"code": string, "message": string}}; every
 * response was logged once; nothing leaks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_json.h"
#include "https.h"
#include "ratelimit.h"
#include "support.h"

#define CHECK(cond)                                                                \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
      abort();                                                                     \
    }                                                                              \
  } while (0)

#define MS ATUN_NS_PER_MS
#define LOGGED_MAX 256
#define BODY_MAX 16384

/* ---- handlers ---- */

static atun_ratelimit *limiter;

static int h_hello(const atun_http_request *req, atun_http_response *resp,
                   void *ud) {
  (void)req;
  (void)ud;
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return ATUN_ERR_NOMEM;
  cJSON_AddStringToObject(o, "hello", "world");
  return atun_http_json_respond(resp, 200, o);
}

static int h_agent(const atun_http_request *req, atun_http_response *resp,
                   void *ud) {
  (void)ud;
  CHECK(req->id != NULL && req->id[0] != '\0' && strchr(req->id, '/') == NULL);
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return ATUN_ERR_NOMEM;
  cJSON_AddStringToObject(o, "id", req->id);
  cJSON_AddStringToObject(o, "authorization",
                          atun_http_request_header(req, "authorization") ? "yes"
                                                                         : "no");
  return atun_http_json_respond(resp, 200, o);
}

static int h_echo(const atun_http_request *req, atun_http_response *resp,
                  void *ud) {
  (void)ud;
  CHECK(req->body[req->body_len] == '\0');
  cJSON *body;
  int rv = atun_http_json_parse_body(req, resp, &body);
  if (rv != 0) return rv == ATUN_ERR_MALFORMED ? 0 : rv;
  const char *name, *host;
  rv = atun_http_json_get_string(body, "name", 1, 64, &name, resp);
  if (rv == 0) rv = atun_http_json_get_string(body, "host", 0, 64, &host, resp);
  if (rv == 0) {
    cJSON *o = cJSON_CreateObject();
    if (o != NULL) cJSON_AddStringToObject(o, "name", name);
    rv = o != NULL ? atun_http_json_respond(resp, 201, o) : ATUN_ERR_NOMEM;
  } else if (rv == ATUN_ERR_MALFORMED || rv == ATUN_ERR_MISSING_FIELD) {
    rv = 0;
  }
  cJSON_Delete(body);
  return rv;
}

static int h_limited(const atun_http_request *req, atun_http_response *resp,
                     void *ud) {
  (void)ud;
  int rv = atun_http_json_ratelimit(limiter, req, resp);
  if (rv == ATUN_ERR_WOULDBLOCK) return 0;
  if (rv != 0) return rv;
  return atun_http_response_set_body(resp, 204, "text/plain", NULL, 0);
}

static int h_fail(const atun_http_request *req, atun_http_response *resp,
                  void *ud) {
  (void)req;
  (void)resp;
  (void)ud;
  return ATUN_ERR_INTERNAL;
}

/* ---- checking the output stream ---- */

typedef struct checker {
  http_parser parser;
  int statuses[LOGGED_MAX]; /* from the access log, in order */
  int head[LOGGED_MAX];     /* the request was HEAD: no body follows */
  int nlogged;
  int nseen; /* final responses parsed */
  int status;
  char body[BODY_MAX + 1];
  size_t body_len;
} checker;

static void on_access(const atun_http_access *e, void *ud) {
  checker *c = ud;
  CHECK(e->status >= 200 && e->status <= 599);
  CHECK(e->method != NULL && e->path != NULL && e->response_bytes > 0);
  if (c->nlogged < LOGGED_MAX) {
    c->statuses[c->nlogged] = e->status;
    c->head[c->nlogged] = strcmp(e->method, "HEAD") == 0;
  }
  ++c->nlogged;
}

static int r_headers_complete(http_parser *p) {
  checker *c = p->data;
  c->status = (int)p->status_code;
  c->body_len = 0;
  if (c->status / 100 == 1) return 0;
  CHECK(c->nseen < c->nlogged);
  CHECK(c->nseen >= LOGGED_MAX || c->statuses[c->nseen] == c->status);
  return c->nseen < LOGGED_MAX && c->head[c->nseen] ? 1 : 0;
}

static int r_body(http_parser *p, const char *at, size_t n) {
  checker *c = p->data;
  if (c->body_len + n <= BODY_MAX) memcpy(c->body + c->body_len, at, n);
  c->body_len += n;
  return 0;
}

static void check_error_body(const checker *c) {
  cJSON *j = cJSON_ParseWithLength(c->body, c->body_len);
  if (j == NULL) return; /* cJSON itself may run out of memory: not ours */
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  CHECK(cJSON_GetArraySize(j) == 1 && cJSON_IsObject(e));
  CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "code")));
  CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")));
  cJSON_Delete(j);
}

static int r_message_complete(http_parser *p) {
  checker *c = p->data;
  if (c->status / 100 == 1) return 0;
  CHECK(c->body_len <= BODY_MAX);
  c->body[c->body_len] = '\0';
  int head = c->nseen < LOGGED_MAX && c->head[c->nseen];
  if (c->status >= 400 && !head) check_error_body(c);
  ++c->nseen;
  return 0;
}

static const http_parser_settings response_settings = {
    .on_headers_complete = r_headers_complete,
    .on_body = r_body,
    .on_message_complete = r_message_complete,
};

/* ---- driving the session ---- */

static uint32_t next(uint32_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

static void take_output(atun_http_session *s, checker *c, size_t max,
                        atun_tstamp ts) {
  const uint8_t *p;
  size_t n = atun_http_session_output(s, &p);
  if (n > max) n = max;
  if (n == 0) return;
  size_t parsed =
      http_parser_execute(&c->parser, &response_settings, (const char *)p, n);
  CHECK(HTTP_PARSER_ERRNO(&c->parser) == HPE_OK && parsed == n);
  atun_http_session_output_consumed(s, n, ts);
}

static void setup(atun_http_router *r) {
  CHECK(atun_http_router_add(r, "GET", "/hello", h_hello, NULL) == 0);
  CHECK(atun_http_router_add(r, "GET", "/agents/{id}", h_agent, NULL) == 0);
  CHECK(atun_http_router_add(r, "DELETE", "/agents/{id}", h_agent, NULL) == 0);
  CHECK(atun_http_router_add(r, "POST", "/agents/resolve-target", h_echo, NULL) ==
        0);
  CHECK(atun_http_router_add(r, "POST", "/echo", h_echo, NULL) == 0);
  CHECK(atun_http_router_add(r, "POST", "/enroll", h_limited, NULL) == 0);
  CHECK(atun_http_router_add(r, "GET", "/fail", h_fail, NULL) == 0);
}

static void settings_for(atun_http_settings *st) {
  atun_http_settings_default(st);
  st->header_bytes_max = 1024;
  st->headers_max = 16;
  st->body_bytes_max = 4096;
  st->response_bytes_max = 8192;
  st->header_timeout_ns = 300 * MS;
  st->body_timeout_ns = 300 * MS;
  st->idle_timeout_ns = 500 * MS;
  st->write_timeout_ns = 200 * MS;
  st->requests_per_conn_max = 20;
}

/* Feeds the stream in reads of seeded sizes while time passes.  |mode|
 * (input byte 1): bit 7 feeds everything at once, bit 6 makes time jump by
 * up to 300 ms (past the timeouts) instead of creeping by 1 ms. */
static void drive(atun_http_session *s, checker *c, const uint8_t *data, size_t len,
                  uint8_t mode, atun_tstamp *pts) {
  uint32_t seed = 0x9e3779b9u ^ mode;
  size_t off = 0;
  for (int guard = 0; guard < 100000 && !atun_http_session_done(s); ++guard) {
    uint32_t r = next(&seed);
    /* Once the stream is used up, time goes on until the session ends. */
    size_t n = (mode & 0x80) ? len - off : 1 + (r >> 20) % 64;
    if (n > len - off) n = len - off;
    if (n > 0) off += atun_http_session_feed(s, data + off, n, *pts);
    take_output(s, c, (r >> 12) % 4 == 0 ? 7 : SIZE_MAX, *pts);
    if (mode & 0x40)
      *pts += (r & 3) == 0 ? (atun_tstamp)((r >> 2) % 300) * MS : 0;
    else
      *pts += MS;
    atun_http_session_handle_expiry(s, *pts);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_http_router *router;
  CHECK(atun_http_router_new(&router, &fm.mem) == 0);
  setup(router);
  checker *c = calloc(1, sizeof(*c));
  CHECK(c != NULL);
  http_parser_init(&c->parser, HTTP_RESPONSE);
  c->parser.data = c;
  atun_http_router_set_access_log(router, on_access, c);
  atun_testrng rng;
  atun_testrng_seed(&rng, data[1]);
  atun_rand rand = atun_testrng_as_rand(&rng);
  atun_ratelimit_settings rs;
  atun_ratelimit_settings_default(&rs);
  rs.burst = 2;
  rs.entries_max = 4;
  CHECK(atun_ratelimit_new(&limiter, &rs, &rand, &fm.mem) == 0);
  if (data[0] != 0) atun_failmem_arm(&fm, data[0] - 1, 0);

  atun_http_settings st;
  settings_for(&st);
  atun_addr peer;
  atun_addr_parse(&peer, "203.0.113.9");
  atun_tstamp ts = 1000 * ATUN_NS_PER_S;
  atun_http_session s;
  if (atun_http_session_init(&s, &st, router, &peer, 5555, ts, &fm.mem) == 0) {
    drive(&s, c, data + 2, size - 2, data[1], &ts);
    atun_http_session_eof(&s, ts);
    take_output(&s, c, SIZE_MAX, ts);
    atun_http_session_handle_expiry(&s, ts + 10 * ATUN_NS_PER_S);
    take_output(&s, c, SIZE_MAX, ts);
    CHECK(atun_http_session_done(&s));
    CHECK(c->nseen <= c->nlogged);
    atun_http_session_free(&s);
  }
  atun_ratelimit_del(limiter);
  limiter = NULL;
  atun_http_router_del(router);
  free(c);
  CHECK(fm.live == 0);
  return 0;
}
