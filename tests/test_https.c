/*
 * The HTTPS framework: the byte-level session (routing, limits, timeouts,
 * errors, allocation failures) driven directly with virtual time, then the
 * real server over TLS on 127.0.0.1 in a libev loop on its own thread,
 * talked to with curl and with a raw wolfSSL client.
 */
#include <criterion/criterion.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "http_json.h"
#include "https.h"
#include "ratelimit.h"
#include "support.h"

#define MS ATUN_NS_PER_MS
#define T0 ((atun_tstamp)1000 * ATUN_NS_PER_S)

/* ======================================================================
 * Handlers shared by the session and server tests
 * ====================================================================== */

static atun_ratelimit *test_rl;

static int h_hello(const atun_http_request *req, atun_http_response *resp,
                   void *ud) {
  (void)req;
  (void)ud;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "hello", "world");
  return atun_http_json_respond(resp, 200, o);
}

static int h_agent(const atun_http_request *req, atun_http_response *resp,
                   void *ud) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", req->id);
  cJSON_AddStringToObject(o, "method", req->method);
  cJSON_AddStringToObject(o, "query", req->query);
  cJSON_AddStringToObject(o, "tag", ud != NULL ? ud : "");
  return atun_http_json_respond(resp, 200, o);
}

static int h_echo(const atun_http_request *req, atun_http_response *resp,
                  void *ud) {
  (void)ud;
  cJSON *body;
  int rv = atun_http_json_parse_body(req, resp, &body);
  if (rv == ATUN_ERR_MALFORMED) return 0;
  if (rv != 0) return rv;
  const char *name;
  rv = atun_http_json_get_string(body, "name", 1, 8, &name, resp);
  if (rv == 0) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    rv = atun_http_json_respond(resp, 201, o);
  } else {
    rv = 0;
  }
  cJSON_Delete(body);
  return rv;
}

/* Answers with the body length: the body-limit tests use raw bytes. */
static int h_size(const atun_http_request *req, atun_http_response *resp,
                  void *ud) {
  (void)ud;
  char text[32];
  int n = snprintf(text, sizeof(text), "%zu", req->body_len);
  cr_assert_eq(req->body[req->body_len], 0);
  return atun_http_response_set_body(resp, 200, "text/plain", text, (size_t)n);
}

static int h_fail(const atun_http_request *req, atun_http_response *resp,
                  void *ud) {
  (void)req;
  (void)ud;
  atun_http_json_error(resp, 418, "x", "half-built");
  return ATUN_ERR_INTERNAL;
}

static int h_nothing(const atun_http_request *req, atun_http_response *resp,
                     void *ud) {
  (void)req;
  (void)resp;
  (void)ud;
  return 0;
}

static int h_big(const atun_http_request *req, atun_http_response *resp, void *ud) {
  (void)req;
  size_t n = *(const size_t *)ud;
  char *buf = calloc(1, n);
  memset(buf, 'x', n);
  int rv = atun_http_response_set_body(resp, 200, "text/plain", buf, n);
  free(buf);
  return rv;
}

static int h_headers(const atun_http_request *req, atun_http_response *resp,
                     void *ud) {
  (void)ud;
  cJSON *o = cJSON_CreateObject();
  const char *auth = atun_http_request_header(req, "AUTHORIZATION");
  const char *ct = atun_http_request_header(req, "content-type");
  const char *tok;
  size_t toklen;
  int rv = atun_http_request_bearer(req, &tok, &toklen);
  cJSON_AddStringToObject(o, "authorization", auth ? auth : "(none)");
  cJSON_AddStringToObject(o, "content_type", ct ? ct : "(none)");
  cJSON_AddNumberToObject(o, "bearer_rv", rv);
  if (rv == 0) {
    char t[64];
    snprintf(t, sizeof(t), "%.*s", (int)toklen, tok);
    cJSON_AddStringToObject(o, "bearer", t);
  }
  char peer[ATUN_ADDR_STRLEN];
  atun_addr_format(peer, &req->peer);
  cJSON_AddStringToObject(o, "peer", peer);
  atun_http_response_add_header(resp, "X-Test", "yes");
  return atun_http_json_respond(resp, 200, o);
}

static int h_limited(const atun_http_request *req, atun_http_response *resp,
                     void *ud) {
  (void)ud;
  int rv = atun_http_json_ratelimit(test_rl, req, resp);
  if (rv == ATUN_ERR_WOULDBLOCK) return 0;
  if (rv != 0) return rv;
  return atun_http_json_respond(resp, 200, cJSON_CreateObject());
}

static int h_close(const atun_http_request *req, atun_http_response *resp,
                   void *ud) {
  atun_http_response_set_close(resp);
  return h_hello(req, resp, ud);
}

static size_t big_size;

static void routes_add(atun_http_router *r) {
  cr_assert_eq(atun_http_router_add(r, "GET", "/hello", h_hello, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/jet/agent-tunnel/agents/{id}",
                                    h_agent, "get"),
               0);
  cr_assert_eq(atun_http_router_add(r, "DELETE", "/jet/agent-tunnel/agents/{id}",
                                    h_agent, "delete"),
               0);
  cr_assert_eq(atun_http_router_add(r, "POST",
                                    "/jet/agent-tunnel/agents/resolve-target",
                                    h_hello, NULL),
               0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/a/{id}/b", h_agent, "mid"), 0);
  cr_assert_eq(atun_http_router_add(r, "POST", "/echo", h_echo, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "POST", "/size", h_size, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/fail", h_fail, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/nothing", h_nothing, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/big", h_big, &big_size), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/headers", h_headers, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "POST", "/enroll", h_limited, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/close", h_close, NULL), 0);
}

/* ======================================================================
 * Session harness
 * ====================================================================== */

typedef struct logged {
  int n;
  char method[16][16];
  char path[16][64];
  int status[16];
  uint64_t duration_ns[16];
  size_t body_bytes[16];
  size_t response_bytes[16];
} logged;

static void log_hook(const atun_http_access *e, void *ud) {
  logged *l = ud;
  if (l->n >= 16) return;
  snprintf(l->method[l->n], sizeof(l->method[0]), "%s", e->method);
  snprintf(l->path[l->n], sizeof(l->path[0]), "%s", e->path);
  l->status[l->n] = e->status;
  l->duration_ns[l->n] = e->duration_ns;
  l->body_bytes[l->n] = e->body_bytes;
  l->response_bytes[l->n] = e->response_bytes;
  ++l->n;
}

typedef struct rig {
  atun_failmem fm;
  atun_http_router *router;
  atun_http_settings settings;
  atun_http_session s;
  logged log;
  char *out; /* everything the session produced */
  size_t out_len;
} rig;

static void rig_open(rig *r) {
  memset(r, 0, sizeof(*r));
  atun_failmem_init(&r->fm, -1);
  cr_assert_eq(atun_http_router_new(&r->router, &r->fm.mem), 0);
  routes_add(r->router);
  atun_http_router_set_access_log(r->router, log_hook, &r->log);
  atun_http_settings_default(&r->settings);
  r->settings.header_bytes_max = 512;
  r->settings.headers_max = 8;
  r->settings.response_bytes_max = 4096;
  r->settings.header_timeout_ns = 100 * MS;
  r->settings.body_timeout_ns = 200 * MS;
  r->settings.idle_timeout_ns = 300 * MS;
  r->settings.write_timeout_ns = 400 * MS;
  r->settings.requests_per_conn_max = 100;
}

static void rig_start(rig *r, atun_tstamp ts) {
  atun_addr peer;
  cr_assert_eq(atun_addr_parse(&peer, "192.0.2.7"), 0);
  cr_assert_eq(atun_http_session_init(&r->s, &r->settings, r->router, &peer, 40000,
                                      ts, &r->fm.mem),
               0);
}

static void rig_close(rig *r) {
  atun_http_session_free(&r->s);
  atun_http_router_del(r->router);
  free(r->out);
  cr_assert_eq(r->fm.live, 0, "leaked %ld blocks", r->fm.live);
}

/* Takes all output (as a peer that reads at once would). */
static void drain(rig *r, atun_tstamp ts) {
  const uint8_t *p;
  size_t n;
  while ((n = atun_http_session_output(&r->s, &p)) > 0) {
    r->out = realloc(r->out, r->out_len + n + 1);
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
    r->out[r->out_len] = '\0';
    atun_http_session_output_consumed(&r->s, n, ts);
  }
}

/* Feeds |len| bytes, draining between requests; returns bytes taken. */
static size_t send_bytes(rig *r, const void *data, size_t len, atun_tstamp ts) {
  const uint8_t *p = data;
  size_t done = 0;
  for (int guard = 0; guard < 10000 && done < len; ++guard) {
    size_t n = atun_http_session_feed(&r->s, p + done, len - done, ts);
    done += n;
    const uint8_t *o;
    if (n == 0 && atun_http_session_output(&r->s, &o) == 0) break;
    drain(r, ts);
  }
  drain(r, ts);
  return done;
}

static size_t send_str(rig *r, const char *text, atun_tstamp ts) {
  return send_bytes(r, text, strlen(text), ts);
}

static void out_reset(rig *r) {
  free(r->out);
  r->out = NULL;
  r->out_len = 0;
}

/* Status of the |i|th response in |text| (0 if absent). */
static int status_at(const char *text, int i) {
  const char *p = text;
  for (; p != NULL; ++p) {
    p = strstr(p, "HTTP/1.1 ");
    if (p == NULL) return 0;
    if (strncmp(p + 9, "100 ", 4) == 0) continue;
    if (i-- == 0) return atoi(p + 9);
  }
  return 0;
}

static int responses(const char *text) {
  int n = 0;
  while (status_at(text, n) != 0) ++n;
  return n;
}

/* Body of the last response in |text|. */
static const char *last_body(const char *text) {
  const char *b = NULL;
  for (const char *p = text; (p = strstr(p, "\r\n\r\n")) != NULL; p += 4) b = p + 4;
  return b;
}

static cJSON *last_json(const char *text) {
  const char *b = last_body(text);
  cr_assert_not_null(b);
  cJSON *j = cJSON_Parse(b);
  cr_assert_not_null(j, "not JSON: %s", b);
  return j;
}

/* Asserts the error shape: exactly {"error": {"code": code, "message": str}}. */
static void assert_error(const char *text, const char *code) {
  cJSON *j = last_json(text);
  cr_assert_eq(cJSON_GetArraySize(j), 1, "%s", text);
  cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  cr_assert(cJSON_IsObject(e), "%s", text);
  cr_assert_eq(cJSON_GetArraySize(e), 2);
  cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
  cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
  cr_assert(cJSON_IsString(c) && cJSON_IsString(m), "%s", text);
  cr_assert_str_eq(c->valuestring, code, "%s", text);
  cr_assert_gt(strlen(m->valuestring), 0);
  cJSON_Delete(j);
}

static const char *json_str(const char *text, const char *key) {
  static char buf[256];
  cJSON *j = last_json(text);
  cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
  cr_assert(cJSON_IsString(v), "%s in %s", key, text);
  snprintf(buf, sizeof(buf), "%s", v->valuestring);
  cJSON_Delete(j);
  return buf;
}

/* ======================================================================
 * Session: routing
 * ====================================================================== */

Test(https_session, routes_exact_path) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  cr_assert_eq(send_str(&r, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", T0), 32);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_str_eq(last_body(r.out), "{\"hello\":\"world\"}");
  cr_assert_not_null(strstr(r.out, "Connection: keep-alive\r\n"));
  cr_assert_not_null(strstr(r.out, "Content-Type: application/json\r\n"));
  cr_assert_not_null(strstr(r.out, "Content-Length: 17\r\n"));
  cr_assert_not(atun_http_session_closing(&r.s));
  rig_close(&r);
}

Test(https_session, captures_id_segment) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r, "GET /jet/agent-tunnel/agents/ab-12?x=1 HTTP/1.1\r\nHost: t\r\n\r\n",
           T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_str_eq(json_str(r.out, "id"), "ab-12");
  cr_assert_str_eq(json_str(r.out, "tag"), "get");
  cr_assert_str_eq(json_str(r.out, "query"), "x=1");
  out_reset(&r);
  send_str(&r, "DELETE /jet/agent-tunnel/agents/ab-12 HTTP/1.1\r\nHost: t\r\n\r\n",
           T0);
  cr_assert_str_eq(json_str(r.out, "tag"), "delete");
  out_reset(&r);
  send_str(&r, "GET /a/mid-id/b HTTP/1.1\r\nHost: t\r\n\r\n", T0);
  cr_assert_str_eq(json_str(r.out, "id"), "mid-id");
  out_reset(&r);
  /* Absolute-form target: the path is what is routed. */
  send_str(
      &r,
      "GET http://example/jet/agent-tunnel/agents/z HTTP/1.1\r\nHost: t\r\n\r\n",
      T0);
  cr_assert_str_eq(json_str(r.out, "id"), "z");
  rig_close(&r);
}

Test(https_session, id_bounds) {
  rig r;
  rig_open(&r);
  r.settings.header_bytes_max = 1024;
  rig_start(&r, T0);
  char req[512], id[ATUN_HTTP_ID_MAX + 2];
  memset(id, 'i', sizeof(id) - 1);
  id[ATUN_HTTP_ID_MAX] = '\0';
  snprintf(req, sizeof(req),
           "GET /jet/agent-tunnel/agents/%s HTTP/1.1\r\nHost: t\r\n\r\n", id);
  send_str(&r, req, T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_str_eq(json_str(r.out, "id"), id);
  id[ATUN_HTTP_ID_MAX] = 'i';
  id[ATUN_HTTP_ID_MAX + 1] = '\0';
  snprintf(req, sizeof(req),
           "GET /jet/agent-tunnel/agents/%s HTTP/1.1\r\nHost: t\r\n\r\n", id);
  send_str(&r, req, T0);
  cr_assert_eq(status_at(r.out, 1), 404);
  const char *none[] = {
      "GET /jet/agent-tunnel/agents/ HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /jet/agent-tunnel/agents/a/b HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /jet/agent-tunnel/agents HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /a//b HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /hello/ HTTP/1.1\r\nHost: t\r\n\r\n"};
  for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); ++i) {
    out_reset(&r);
    send_str(&r, none[i], T0);
    cr_assert_eq(status_at(r.out, 0), 404, "%s", none[i]);
    assert_error(r.out, "not_found");
  }
  rig_close(&r);
}

Test(https_session, not_found_is_byte_exact) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", T0);
  const char *want =
      "HTTP/1.1 404 Not Found\r\n"
      "Content-Type: application/json\r\n"
      "Content-Length: 55\r\n"
      "Cache-Control: no-store\r\n"
      "X-Content-Type-Options: nosniff\r\n"
      "Connection: keep-alive\r\n"
      "\r\n"
      "{\"error\":{\"code\":\"not_found\",\"message\":\"no such path\"}}";
  cr_assert_str_eq(r.out, want);
  rig_close(&r);
}

Test(https_session, wrong_method_is_405_with_allow) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r,
           "PUT /jet/agent-tunnel/agents/x HTTP/1.1\r\nHost: t\r\nContent-Length: "
           "0\r\n\r\n",
           T0);
  cr_assert_eq(status_at(r.out, 0), 405);
  cr_assert_not_null(strstr(r.out, "\r\nAllow: GET, DELETE\r\n"), "%s", r.out);
  assert_error(r.out, "method_not_allowed");
  cr_assert_not(atun_http_session_closing(&r.s));
  out_reset(&r);
  /* The exact route owns its path: no fall-through to "{id}". */
  send_str(
      &r, "GET /jet/agent-tunnel/agents/resolve-target HTTP/1.1\r\nHost: t\r\n\r\n",
      T0);
  cr_assert_eq(status_at(r.out, 0), 405);
  cr_assert_not_null(strstr(r.out, "\r\nAllow: POST\r\n"));
  out_reset(&r);
  send_str(
      &r,
      "POST /jet/agent-tunnel/agents/resolve-target HTTP/1.1\r\nHost: t\r\n\r\n",
      T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  rig_close(&r);
}

Test(https_session, head_sends_length_without_body) {
  rig r;
  rig_open(&r);
  cr_assert_eq(atun_http_router_add(r.router, "HEAD", "/hello", h_hello, NULL), 0);
  rig_start(&r, T0);
  send_str(&r, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n", T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_not_null(strstr(r.out, "Content-Length: 17\r\n"));
  cr_assert_str_eq(last_body(r.out), "");
  rig_close(&r);
}

Test(https_session, headers_lookup_and_bearer) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(
      &r,
      "GET /headers HTTP/1.1\r\nHost: t\r\nauthorization:   bearer  tok-1  \r\n"
      "CONTENT-TYPE: text/x\r\n\r\n",
      T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_str_eq(json_str(r.out, "authorization"), "bearer  tok-1");
  cr_assert_str_eq(json_str(r.out, "content_type"), "text/x");
  cr_assert_str_eq(json_str(r.out, "bearer"), "tok-1");
  cr_assert_str_eq(json_str(r.out, "peer"), "192.0.2.7");
  cr_assert_not_null(strstr(r.out, "\r\nX-Test: yes\r\n"));
  const struct {
    const char *hdr;
    int rv;
  } cases[] = {{"", ATUN_ERR_NOT_FOUND},
               {"Authorization: Basic abc\r\n", ATUN_ERR_MALFORMED},
               {"Authorization: Bearer\r\n", ATUN_ERR_MALFORMED},
               {"Authorization: Bearer \r\n", ATUN_ERR_MALFORMED},
               {"Authorization: Bearer a b\r\n", ATUN_ERR_MALFORMED}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    char req[256];
    snprintf(req, sizeof(req), "GET /headers HTTP/1.1\r\nHost: t\r\n%s\r\n",
             cases[i].hdr);
    out_reset(&r);
    send_str(&r, req, T0);
    cJSON *j = last_json(r.out);
    cr_assert_eq(cJSON_GetObjectItem(j, "bearer_rv")->valueint, cases[i].rv, "%s",
                 cases[i].hdr);
    cJSON_Delete(j);
  }
  rig_close(&r);
}

Test(https_session, access_log_and_counters) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  cr_assert_eq(atun_http_session_feed(&r.s, (const uint8_t *)"GET /hel", 8, T0), 8);
  send_str(&r, "lo HTTP/1.1\r\nHost: t\r\n\r\n", T0 + 5 * MS);
  send_str(&r, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", T0 + 6 * MS);
  send_str(&r, "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
           T0 + 7 * MS);
  cr_assert_eq(r.log.n, 3);
  cr_assert_str_eq(r.log.method[0], "GET");
  cr_assert_str_eq(r.log.path[0], "/hello");
  cr_assert_eq(r.log.status[0], 200);
  cr_assert_eq(r.log.duration_ns[0], 5 * MS);
  cr_assert_eq(r.log.status[1], 404);
  cr_assert_eq(r.log.duration_ns[1], 0);
  cr_assert_eq(r.log.body_bytes[2], 3);
  cr_assert_eq(
      r.log.response_bytes[2],
      strlen(strstr(r.out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain")));
  cr_assert_eq(atun_http_router_status_count(r.router, 200), 2);
  cr_assert_eq(atun_http_router_status_count(r.router, 404), 1);
  cr_assert_eq(atun_http_router_status_count(r.router, 500), 0);
  cr_assert_eq(atun_http_router_status_count(r.router, 99), 0);
  cr_assert_eq(atun_http_router_status_count(r.router, 600), 0);
  out_reset(&r);
  /* Errors found by the parser are logged too, with what is known. */
  send_str(&r, "BAD\x01\r\n\r\n", T0 + 8 * MS);
  cr_assert_eq(r.log.n, 4);
  cr_assert_str_eq(r.log.method[3], "-");
  cr_assert_str_eq(r.log.path[3], "-");
  cr_assert_eq(r.log.status[3], 400);
  rig_close(&r);
}

/* ======================================================================
 * Session: keep-alive, pipelining, closing
 * ====================================================================== */

Test(https_session, pipelined_requests_answered_one_at_a_time) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  const char *two =
      "GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n";
  size_t first = strlen("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  size_t n = atun_http_session_feed(&r.s, (const uint8_t *)two, strlen(two), T0);
  cr_assert_eq(n, first, "takes exactly the first request");
  /* Output pending: nothing more is taken. */
  cr_assert_eq(
      atun_http_session_feed(&r.s, (const uint8_t *)two + n, strlen(two) - n, T0),
      0);
  drain(&r, T0);
  n += atun_http_session_feed(&r.s, (const uint8_t *)two + n, strlen(two) - n, T0);
  cr_assert_eq(n, strlen(two));
  drain(&r, T0);
  cr_assert_eq(responses(r.out), 2);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_eq(status_at(r.out, 1), 404);
  rig_close(&r);
}

Test(https_session, byte_at_a_time_gives_same_bytes) {
  rig a, b;
  rig_open(&a);
  rig_open(&b);
  rig_start(&a, T0);
  rig_start(&b, T0);
  const char *req =
      "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      "Content-Length: 15\r\n\r\n{\"name\":\"abc\"}\n"
      "GET /jet/agent-tunnel/agents/q HTTP/1.1\r\nHost: t\r\n\r\n";
  send_str(&a, req, T0);
  for (size_t i = 0; req[i] != '\0'; ++i) send_bytes(&b, req + i, 1, T0);
  cr_assert_eq(responses(a.out), 2);
  cr_assert_eq(status_at(a.out, 0), 201);
  cr_assert_str_eq(a.out, b.out);
  rig_close(&a);
  rig_close(&b);
}

Test(https_session, http10_and_connection_close_end_the_connection) {
  const char *reqs[] = {
      "GET /hello HTTP/1.0\r\n\r\n",
      "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
      "GET /close HTTP/1.1\r\nHost: t\r\n\r\n",
      "GET /hello HTTP/1.1\r\nHost: t\r\nUpgrade: x\r\nConnection: "
      "upgrade\r\n\r\n"};
  for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); ++i) {
    rig r;
    rig_open(&r);
    rig_start(&r, T0);
    cr_assert_eq(
        atun_http_session_feed(&r.s, (const uint8_t *)reqs[i], strlen(reqs[i]), T0),
        strlen(reqs[i]));
    cr_assert(atun_http_session_closing(&r.s));
    cr_assert_not(atun_http_session_done(&r.s));
    drain(&r, T0);
    cr_assert(atun_http_session_done(&r.s), "%s", reqs[i]);
    cr_assert_eq(status_at(r.out, 0), 200);
    cr_assert_not_null(strstr(r.out, "Connection: close\r\n"));
    cr_assert_eq(atun_http_session_expiry(&r.s), ATUN_TSTAMP_MAX);
    /* A closing session swallows input and answers nothing. */
    cr_assert_eq(atun_http_session_feed(&r.s, (const uint8_t *)"GET", 3, T0), 3);
    rig_close(&r);
  }
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", T0);
  cr_assert_not_null(strstr(r.out, "Connection: keep-alive\r\n"));
  cr_assert_not(atun_http_session_closing(&r.s));
  rig_close(&r);
}

Test(https_session, requests_per_connection_bound) {
  rig r;
  rig_open(&r);
  r.settings.requests_per_conn_max = 3;
  rig_start(&r, T0);
  const char *req = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
  for (int i = 0; i < 2; ++i) {
    send_str(&r, req, T0);
    cr_assert_not(atun_http_session_closing(&r.s));
  }
  cr_assert_null(strstr(r.out, "Connection: close"));
  send_str(&r, req, T0);
  cr_assert_eq(responses(r.out), 3);
  cr_assert_not_null(strstr(r.out, "Connection: close\r\n"));
  cr_assert(atun_http_session_done(&r.s));
  rig_close(&r);
}

Test(https_session, eof_mid_request_and_after_response) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  atun_http_session_feed(&r.s, (const uint8_t *)"GET /he", 7, T0);
  atun_http_session_eof(&r.s, T0);
  cr_assert(atun_http_session_done(&r.s));
  rig_close(&r);
  rig_open(&r);
  rig_start(&r, T0);
  const char *req = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
  atun_http_session_feed(&r.s, (const uint8_t *)req, strlen(req), T0);
  atun_http_session_eof(&r.s, T0);
  cr_assert_not(atun_http_session_done(&r.s), "the answer still goes out");
  atun_http_session_eof(&r.s, T0);
  drain(&r, T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert(atun_http_session_done(&r.s));
  rig_close(&r);
}

/* ======================================================================
 * Session: limits, each at the bound and one past it
 * ====================================================================== */

/* A request whose header section (request line to blank line) is exactly
 * |total| bytes, padded with an X-Pad header. */
static char *request_of_header_size(size_t total) {
  const char *line = "GET /hello HTTP/1.1\r\nHost: t\r\n";
  size_t fixed = strlen(line) + strlen("X-Pad: \r\n") + 2;
  cr_assert_geq(total, fixed);
  char *req = malloc(total + 1);
  size_t pad = total - fixed;
  int n = sprintf(req, "%sX-Pad: ", line);
  memset(req + n, 'p', pad);
  memcpy(req + n + pad, "\r\n\r\n", 5);
  cr_assert_eq(strlen(req), total);
  return req;
}

Test(https_session, header_bytes_at_bound_and_past_it) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  char *ok = request_of_header_size(r.settings.header_bytes_max);
  send_str(&r, ok, T0);
  cr_assert_eq(status_at(r.out, 0), 200, "%s", r.out);
  out_reset(&r);
  /* Byte by byte too: the bound does not depend on how bytes arrive. */
  for (size_t i = 0; ok[i] != '\0'; ++i) send_bytes(&r, ok + i, 1, T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  free(ok);
  out_reset(&r);
  char *over = request_of_header_size(r.settings.header_bytes_max + 1);
  send_str(&r, over, T0);
  cr_assert_eq(status_at(r.out, 0), 431);
  assert_error(r.out, "headers_too_large");
  cr_assert(atun_http_session_done(&r.s));
  free(over);
  rig_close(&r);
}

Test(https_session, header_bytes_past_bound_without_end) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  /* A header section that never ends is refused once it reaches the bound. */
  char *junk = malloc(r.settings.header_bytes_max * 2);
  int n = sprintf(junk, "GET /hello HTTP/1.1\r\nHost: t\r\nX: ");
  memset(junk + n, 'a', r.settings.header_bytes_max * 2 - (size_t)n);
  size_t taken = atun_http_session_feed(&r.s, (const uint8_t *)junk,
                                        r.settings.header_bytes_max - 1, T0);
  cr_assert_eq(taken, r.settings.header_bytes_max - 1);
  const uint8_t *o;
  cr_assert_eq(atun_http_session_output(&r.s, &o), 0);
  atun_http_session_feed(&r.s, (const uint8_t *)junk + taken,
                         r.settings.header_bytes_max, T0);
  drain(&r, T0);
  cr_assert_eq(status_at(r.out, 0), 431);
  free(junk);
  rig_close(&r);
}

Test(https_session, header_lines_at_bound_and_past_it) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  char req[512];
  /* Host is one of the lines. */
  for (size_t lines = r.settings.headers_max; lines <= r.settings.headers_max + 1;
       ++lines) {
    int n = sprintf(req, "GET /hello HTTP/1.1\r\nHost: t\r\n");
    for (size_t i = 1; i < lines; ++i) n += sprintf(req + n, "H%zu: v\r\n", i);
    sprintf(req + n, "\r\n");
    send_str(&r, req, T0);
  }
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_eq(status_at(r.out, 1), 431);
  assert_error(r.out, "headers_too_large");
  rig_close(&r);
}

static char *post_of_body_size(size_t body) {
  char *req = malloc(body + 128);
  int n = sprintf(
      req, "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", body);
  memset(req + n, 'b', body);
  req[n + body] = '\0';
  return req;
}

Test(https_session, body_at_bound_and_past_it) {
  rig r;
  rig_open(&r);
  cr_assert_eq(r.settings.body_bytes_max, 65536, "the default is 64 KiB");
  rig_start(&r, T0);
  char *ok = post_of_body_size(65536);
  send_str(&r, ok, T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_str_eq(last_body(r.out), "65536");
  free(ok);
  out_reset(&r);
  /* 413 is decided from the header alone: no body byte has been sent. */
  const char *over =
      "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 65537\r\n\r\n";
  cr_assert_eq(
      atun_http_session_feed(&r.s, (const uint8_t *)over, strlen(over), T0),
      strlen(over));
  drain(&r, T0);
  cr_assert_eq(status_at(r.out, 0), 413);
  assert_error(r.out, "payload_too_large");
  cr_assert(atun_http_session_done(&r.s));
  rig_close(&r);
}

Test(https_session, chunked_body_is_411) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r,
           "POST /size HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
           "chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
           T0);
  cr_assert_eq(status_at(r.out, 0), 411);
  assert_error(r.out, "length_required");
  cr_assert_eq(responses(r.out), 1);
  cr_assert(atun_http_session_done(&r.s));
  rig_close(&r);
}

Test(https_session, expect_100_continue) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  const char *head = "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: "
                     "4\r\nExpect: 100-Continue\r\n\r\n";
  cr_assert_eq(
      atun_http_session_feed(&r.s, (const uint8_t *)head, strlen(head), T0),
      strlen(head));
  drain(&r, T0);
  cr_assert_str_eq(r.out, "HTTP/1.1 100 Continue\r\n\r\n");
  send_str(&r, "abcd", T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_str_eq(last_body(r.out), "4");
  out_reset(&r);
  /* Too large: the 413 comes instead of the 100. */
  send_str(&r,
           "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\nExpect: "
           "100-continue\r\n\r\n",
           T0);
  cr_assert_null(strstr(r.out, "100 Continue"));
  cr_assert_eq(status_at(r.out, 0), 413);
  rig_close(&r);
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r,
           "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: "
           "other\r\n\r\nx",
           T0);
  cr_assert_eq(status_at(r.out, 0), 417);
  assert_error(r.out, "expectation_failed");
  rig_close(&r);
}

Test(https_session, malformed_requests_are_400) {
  const struct {
    const char *req;
    int status;
  } cases[] = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /hello HTTP/1.1\r\nHost: t\r\nHo st: x\r\n\r\n", 400},
      {"GET /hel\tlo HTTP/1.1\r\nHost: t\r\n\r\n", 400},
      {"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400},
      {"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: "
       "1\r\n\r\nx",
       400},
      {"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400},
      {"POST /size HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
      {"GET /hello HTTP/1.1\r\nHost: t\r\nAuthorization: a\r\nAuthorization: "
       "b\r\n\r\n",
       400},
      {"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
      {"GET /hello HTTP/1.1\r\n\r\n", 400},
      {"GET /hello HTTP/1.1\r\nHost: t\r\nX: \x01\r\n\r\n", 400},
      {"GET /hello HTTP/2.0\r\n\r\n", 505},
      {"CONNECT example:443 HTTP/1.1\r\nHost: t\r\n\r\n", 400},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    rig r;
    rig_open(&r);
    rig_start(&r, T0);
    send_str(&r, cases[i].req, T0);
    cr_assert_eq(status_at(r.out, 0), cases[i].status, "case %zu: %s", i, r.out);
    cr_assert_eq(responses(r.out), 1);
    assert_error(r.out, cases[i].status == 505 ? "http_version_not_supported"
                                               : "bad_request");
    cr_assert(atun_http_session_done(&r.s), "case %zu closes", i);
    rig_close(&r);
  }
}

/* ======================================================================
 * Session: time limits
 * ====================================================================== */

Test(https_session, slow_headers_get_408_at_the_deadline) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  const char *req = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
  send_str(&r, req, T0);
  atun_tstamp t1 = T0 + 1000 * MS;
  send_str(&r, "GET /hel", t1);
  cr_assert_eq(atun_http_session_expiry(&r.s), t1 + 100 * MS);
  atun_http_session_handle_expiry(&r.s, t1 + 100 * MS - 1);
  drain(&r, t1);
  cr_assert_eq(responses(r.out), 1, "nothing before the deadline");
  atun_http_session_handle_expiry(&r.s, t1 + 100 * MS);
  cr_assert(atun_http_session_closing(&r.s));
  drain(&r, t1 + 100 * MS);
  cr_assert_eq(status_at(r.out, 1), 408);
  assert_error(r.out, "request_timeout");
  cr_assert(atun_http_session_done(&r.s));
  rig_close(&r);
}

Test(https_session, slow_body_gets_408_at_the_deadline) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r, "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
           T0 + 10 * MS);
  cr_assert_eq(atun_http_session_expiry(&r.s), T0 + 210 * MS);
  send_str(&r, "def", T0 + 200 * MS);
  atun_http_session_handle_expiry(&r.s, T0 + 209 * MS);
  cr_assert_eq(r.out, NULL);
  atun_http_session_handle_expiry(&r.s, T0 + 210 * MS);
  drain(&r, T0 + 210 * MS);
  cr_assert_eq(status_at(r.out, 0), 408);
  rig_close(&r);
}

Test(https_session, first_request_header_time_counts_from_start) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  cr_assert_eq(atun_http_session_expiry(&r.s), T0 + 100 * MS);
  send_str(&r, "GET", T0 + 90 * MS);
  cr_assert_eq(atun_http_session_expiry(&r.s), T0 + 100 * MS);
  rig_close(&r);
  /* A connection that never sends anything is closed without a word. */
  rig_open(&r);
  rig_start(&r, T0);
  atun_http_session_handle_expiry(&r.s, T0 + 100 * MS);
  cr_assert(atun_http_session_done(&r.s));
  const uint8_t *o;
  cr_assert_eq(atun_http_session_output(&r.s, &o), 0);
  rig_close(&r);
}

Test(https_session, idle_keepalive_closes_quietly) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  send_str(&r, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", T0 + 50 * MS);
  cr_assert_eq(atun_http_session_expiry(&r.s), T0 + 350 * MS);
  atun_http_session_handle_expiry(&r.s, T0 + 349 * MS);
  cr_assert_not(atun_http_session_closing(&r.s));
  atun_http_session_handle_expiry(&r.s, T0 + 350 * MS);
  cr_assert(atun_http_session_done(&r.s));
  cr_assert_eq(responses(r.out), 1);
  rig_close(&r);
}

Test(https_session, unread_response_hits_write_timeout) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  const char *req = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
  atun_http_session_feed(&r.s, (const uint8_t *)req, strlen(req), T0);
  const uint8_t *o;
  size_t n = atun_http_session_output(&r.s, &o);
  cr_assert_gt(n, 10);
  atun_http_session_output_consumed(&r.s, 10, T0 + 1 * MS);
  cr_assert_eq(atun_http_session_expiry(&r.s), T0 + 400 * MS);
  atun_http_session_handle_expiry(&r.s, T0 + 400 * MS);
  cr_assert(atun_http_session_done(&r.s));
  cr_assert_eq(atun_http_session_output(&r.s, &o), 0, "the rest is dropped");
  rig_close(&r);
}

Test(https_session, unread_interim_response_closes_at_deadline) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  const char *head = "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: "
                     "4\r\nExpect: 100-continue\r\n\r\n";
  atun_http_session_feed(&r.s, (const uint8_t *)head, strlen(head), T0);
  atun_http_session_handle_expiry(&r.s, T0 + 200 * MS);
  cr_assert(atun_http_session_done(&r.s));
  rig_close(&r);
}

/* ======================================================================
 * Session: handler outcomes and JSON helpers
 * ====================================================================== */

Test(https_session, handler_failures_become_500) {
  const char *paths[] = {"/fail", "/nothing"};
  for (size_t i = 0; i < 2; ++i) {
    rig r;
    rig_open(&r);
    rig_start(&r, T0);
    char req[64];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", paths[i]);
    send_str(&r, req, T0);
    cr_assert_eq(status_at(r.out, 0), 500);
    assert_error(r.out, "internal");
    cr_assert_not(atun_http_session_closing(&r.s));
    rig_close(&r);
  }
}

Test(https_session, response_size_bound) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  /* Body at the limit: set_body accepts it, headers push it over: 500. */
  big_size = r.settings.response_bytes_max;
  send_str(&r, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n", T0);
  cr_assert_eq(status_at(r.out, 0), 500);
  assert_error(r.out, "internal");
  out_reset(&r);
  big_size = r.settings.response_bytes_max + 1;
  send_str(&r, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n", T0);
  cr_assert_eq(status_at(r.out, 0), 500);
  out_reset(&r);
  big_size = 1000;
  send_str(&r, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n", T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_eq(strlen(last_body(r.out)), 1000);
  rig_close(&r);
}

static void post_json(rig *r, const char *ctype, const char *body) {
  char req[512];
  snprintf(req, sizeof(req),
           "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\nContent-Length: "
           "%zu\r\n\r\n%s",
           ctype, strlen(body), body);
  out_reset(r);
  send_str(r, req, T0);
}

Test(https_session, json_body_handling) {
  rig r;
  rig_open(&r);
  rig_start(&r, T0);
  post_json(&r, "application/json", "{\"name\":\"abc\"}");
  cr_assert_eq(status_at(r.out, 0), 201);
  cr_assert_str_eq(json_str(r.out, "name"), "abc");
  post_json(&r, "Application/JSON; charset=utf-8", " {\"name\":\"12345678\"} \r\n");
  cr_assert_eq(status_at(r.out, 0), 201);
  const struct {
    const char *ctype, *body;
    int status;
    const char *code;
  } cases[] = {
      {"text/plain", "{\"name\":\"abc\"}", 415, "unsupported_media_type"},
      {"application/jsonx", "{\"name\":\"abc\"}", 415, "unsupported_media_type"},
      {"application/json", "{\"name\":", 400, "invalid_json"},
      {"application/json", "", 400, "invalid_json"},
      {"application/json", "{} {}", 400, "invalid_json"},
      {"application/json", "[1]", 400, "invalid_json"},
      {"application/json", "{}", 400, "missing_field"},
      {"application/json", "{\"name\":null}", 400, "missing_field"},
      {"application/json", "{\"name\":1}", 400, "invalid_field"},
      {"application/json", "{\"name\":\"\"}", 400, "invalid_field"},
      {"application/json", "{\"name\":\"123456789\"}", 400, "invalid_field"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    post_json(&r, cases[i].ctype, cases[i].body);
    cr_assert_eq(status_at(r.out, 0), cases[i].status, "case %zu", i);
    assert_error(r.out, cases[i].code);
    cr_assert_not(atun_http_session_closing(&r.s));
  }
  out_reset(&r);
  send_str(&r, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", T0);
  assert_error(r.out, "unsupported_media_type");
  rig_close(&r);
}

Test(https_session, rate_limited_handler_gets_429) {
  rig r;
  rig_open(&r);
  atun_testrng rng;
  atun_testrng_seed(&rng, 7);
  atun_rand rand = atun_testrng_as_rand(&rng);
  atun_ratelimit_settings rs;
  atun_ratelimit_settings_default(&rs);
  rs.burst = 2;
  rs.interval_ns = 1500 * MS;
  cr_assert_eq(atun_ratelimit_new(&test_rl, &rs, &rand, &r.fm.mem), 0);
  rig_start(&r, T0);
  const char *req = "POST /enroll HTTP/1.1\r\nHost: t\r\n\r\n";
  send_str(&r, req, T0);
  send_str(&r, req, T0);
  send_str(&r, req, T0);
  cr_assert_eq(status_at(r.out, 0), 200);
  cr_assert_eq(status_at(r.out, 1), 200);
  cr_assert_eq(status_at(r.out, 2), 429);
  assert_error(r.out, "too_many_requests");
  cr_assert_not_null(strstr(r.out, "\r\nRetry-After: 2\r\n"), "1.5 s rounds up");
  out_reset(&r);
  send_str(&r, req, T0 + 1500 * MS);
  cr_assert_eq(status_at(r.out, 0), 200);
  atun_ratelimit_del(test_rl);
  test_rl = NULL;
  rig_close(&r);
}

Test(https_session, response_helpers_reject_bad_input) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_http_response resp;
  memset(&resp, 0, sizeof(resp));
  resp.mem = &fm.mem;
  resp.body_max = 16;
  cr_assert_eq(atun_http_response_set_body(&resp, 199, "a/b", "x", 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_set_body(&resp, 600, "a/b", "x", 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_set_body(&resp, 200, "", "x", 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_set_body(&resp, 200, "a\r\nb", "x", 1),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_set_body(&resp, 200, "a/b", NULL, 1),
               ATUN_ERR_INVALID_ARGUMENT);
  char big[17] = {0};
  cr_assert_eq(atun_http_response_set_body(&resp, 200, "a/b", big, 17),
               ATUN_ERR_NOBUF);
  cr_assert_eq(atun_http_response_set_body(&resp, 200, "a/b", big, 16), 0);
  atun_failmem_arm(&fm, 0, 1);
  cr_assert_eq(atun_http_response_set_body(&resp, 200, "a/b", "x", 1),
               ATUN_ERR_NOMEM);
  cr_assert_eq(resp.body_len, 16, "the earlier body stays");
  cr_assert_eq(atun_http_response_add_header(&resp, "Content-Length", "1"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_add_header(&resp, "connection", "x"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_add_header(&resp, "Bad Name", "x"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_add_header(&resp, "", "x"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_add_header(&resp, "X", "a\r\nInjected: 1"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_response_add_header(&resp, "X", "tab\tok"), 0);
  char value[ATUN_HTTP_RESPONSE_HEADERS_BYTES_MAX];
  memset(value, 'v', sizeof(value) - 1);
  value[sizeof(value) - 1] = '\0';
  size_t before = resp.headers_len;
  cr_assert_eq(atun_http_response_add_header(&resp, "X", value), ATUN_ERR_FULL);
  cr_assert_eq(resp.headers_len, before);
  cr_assert_eq(atun_http_json_error(&resp, 399, "c", "m"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_json_error(&resp, 400, "", "m"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_json_error(&resp, 400, "c", NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  char code[ATUN_HTTP_JSON_CODE_MAX + 2];
  memset(code, 'c', sizeof(code) - 1);
  code[sizeof(code) - 1] = '\0';
  cr_assert_eq(atun_http_json_error(&resp, 400, code, "m"),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_json_respond(&resp, 200, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_json_respond(&resp, 100, cJSON_CreateObject()),
               ATUN_ERR_INVALID_ARGUMENT);
  cJSON *big_json = cJSON_CreateObject();
  cJSON_AddStringToObject(big_json, "k", "0123456789abcdef");
  cr_assert_eq(atun_http_json_respond(&resp, 200, big_json), ATUN_ERR_NOBUF);
  atun_mem_free(&fm.mem, resp.body);
  cr_assert_eq(fm.live, 0);
}

/* ======================================================================
 * Session and router: setup errors and allocation failures
 * ====================================================================== */

static int h_dummy(const atun_http_request *req, atun_http_response *resp,
                   void *ud) {
  (void)req;
  (void)resp;
  (void)ud;
  return 0;
}

Test(https_router, add_validates_patterns_and_bounds) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_http_router *r;
  cr_assert_eq(atun_http_router_new(NULL, &fm.mem), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_router_new(&r, &fm.mem), 0);
  const char *bad[] = {"",     "x",          "/a?b",   "/a#b",   "/a%20",
                       "/a b", "/{id}/{id}", "/a{id}", "/{id}x", "/{ix}",
                       "/a}",  "/a{",        "/a/{id"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
    cr_assert_eq(atun_http_router_add(r, "GET", bad[i], h_dummy, NULL),
                 ATUN_ERR_INVALID_ARGUMENT, "%s", bad[i]);
  const char *bad_methods[] = {"", "get", "GET ", "VERYLONGMETHODNAME"};
  for (size_t i = 0; i < sizeof(bad_methods) / sizeof(bad_methods[0]); ++i)
    cr_assert_eq(atun_http_router_add(r, bad_methods[i], "/", h_dummy, NULL),
                 ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_http_router_add(r, "GET", "/", NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  char longp[ATUN_HTTP_PATTERN_MAX + 2];
  memset(longp, 'a', sizeof(longp) - 1);
  longp[0] = '/';
  longp[sizeof(longp) - 1] = '\0';
  cr_assert_eq(atun_http_router_add(r, "GET", longp, h_dummy, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  longp[ATUN_HTTP_PATTERN_MAX] = '\0';
  cr_assert_eq(atun_http_router_add(r, "GET", longp, h_dummy, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/{id}", h_dummy, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/x/{id}/y", h_dummy, NULL), 0);
  cr_assert_eq(atun_http_router_add(r, "GET", "/{id}", h_dummy, NULL),
               ATUN_ERR_EXISTS);
  for (size_t i = 3; i < ATUN_HTTP_ROUTES_MAX; ++i) {
    char p[32];
    snprintf(p, sizeof(p), "/r%zu", i);
    cr_assert_eq(atun_http_router_add(r, "GET", p, h_dummy, NULL), 0);
  }
  cr_assert_eq(atun_http_router_add(r, "GET", "/one-more", h_dummy, NULL),
               ATUN_ERR_FULL);
  atun_http_router_del(r);
  atun_failmem_arm(&fm, 0, 1);
  cr_assert_eq(atun_http_router_new(&r, &fm.mem), ATUN_ERR_NOMEM);
  cr_assert_eq(fm.live, 0);
}

Test(https_session, init_validates_settings) {
  rig r;
  rig_open(&r);
  atun_http_settings good = r.settings;
  struct {
    size_t *field;
    size_t value;
  } sizes[] = {
      {&r.settings.header_bytes_max, ATUN_HTTP_HEADER_BYTES_MIN - 1},
      {&r.settings.header_bytes_max, ATUN_HTTP_HEADER_BYTES_LIMIT + 1},
      {&r.settings.headers_max, 0},
      {&r.settings.headers_max, ATUN_HTTP_HEADERS_LIMIT + 1},
      {&r.settings.body_bytes_max, ATUN_HTTP_BODY_BYTES_LIMIT + 1},
      {&r.settings.response_bytes_max, ATUN_HTTP_RESPONSE_BYTES_MIN - 1},
      {&r.settings.response_bytes_max, ATUN_HTTP_RESPONSE_BYTES_LIMIT + 1},
  };
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    r.settings = good;
    *sizes[i].field = sizes[i].value;
    cr_assert_eq(
        atun_http_session_init(&r.s, &r.settings, r.router, NULL, 0, T0, &r.fm.mem),
        ATUN_ERR_INVALID_ARGUMENT, "%zu", i);
  }
  uint64_t *times[] = {&r.settings.header_timeout_ns, &r.settings.body_timeout_ns,
                       &r.settings.idle_timeout_ns, &r.settings.write_timeout_ns};
  for (size_t i = 0; i < 4; ++i) {
    r.settings = good;
    *times[i] = 0;
    cr_assert_eq(
        atun_http_session_init(&r.s, &r.settings, r.router, NULL, 0, T0, &r.fm.mem),
        ATUN_ERR_INVALID_ARGUMENT);
    *times[i] = ATUN_HTTP_TIMEOUT_MAX_NS + 1;
    cr_assert_eq(
        atun_http_session_init(&r.s, &r.settings, r.router, NULL, 0, T0, &r.fm.mem),
        ATUN_ERR_INVALID_ARGUMENT);
  }
  r.settings = good;
  r.settings.requests_per_conn_max = 0;
  cr_assert_eq(
      atun_http_session_init(&r.s, &r.settings, r.router, NULL, 0, T0, &r.fm.mem),
      ATUN_ERR_INVALID_ARGUMENT);
  r.settings = good;
  cr_assert_eq(atun_http_session_init(&r.s, &r.settings, r.router, NULL, 0,
                                      ATUN_TSTAMP_MAX, &r.fm.mem),
               ATUN_ERR_INVALID_ARGUMENT);
  for (long n = 0; n < 2; ++n) {
    atun_failmem_arm(&r.fm, n, 1);
    cr_assert_eq(
        atun_http_session_init(&r.s, &r.settings, r.router, NULL, 0, T0, &r.fm.mem),
        ATUN_ERR_NOMEM);
  }
  atun_failmem_arm(&r.fm, -1, 0);
  rig_start(&r, T0);
  rig_close(&r);
}

/* Every allocation of a full request cycle fails in turn: the session
 * answers correctly, answers with an error, or closes; it never leaks. */
Test(https_session, allocation_failures_are_contained) {
  const char *req =
      "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      "Content-Length: 14\r\nExpect: 100-continue\r\n\r\n{\"name\":\"abc\"}"
      "GET /jet/agent-tunnel/agents/7 HTTP/1.1\r\nHost: t\r\n\r\n";
  int saw_ok = 0, saw_error = 0, saw_closed = 0;
  for (long run = 0; run < 80; ++run) {
    long fail = run / 2;
    rig r;
    rig_open(&r);
    rig_start(&r, T0);
    /* One failure, or every allocation from that point on. */
    atun_failmem_arm(&r.fm, fail, (int)(run % 2));
    send_str(&r, req, T0);
    if (atun_http_session_done(&r.s) && r.out == NULL)
      ++saw_closed;
    else if (status_at(r.out, 0) == 201 && status_at(r.out, 1) == 200)
      ++saw_ok;
    else
      ++saw_error;
    if (r.out != NULL) {
      int st = status_at(r.out, 0);
      cr_assert(st == 201 || st == 500 || st == 503, "run %ld: %s", run, r.out);
    }
    rig_close(&r);
  }
  cr_assert_gt(saw_ok, 0);
  cr_assert_gt(saw_error, 0);
  cr_assert_gt(saw_closed, 0);
}

/* ======================================================================
 * Server over TLS
 * ====================================================================== */

static char cert_pem[4096], key_pem[1024];
static size_t cert_len, key_len;

/* A P-256 private key as PEM into |pem|; returns its length.  The key is
 * allocated by wolfSSL: the installed headers do not give ecc_key the size
 * the library uses (see io/ca.c). */
static size_t make_key(WC_RNG *rng, ecc_key **pkey, char *pem, size_t cap) {
  uint8_t der[256];
  ecc_key *key = wc_ecc_key_new(NULL);
  cr_assert_not_null(key);
  cr_assert_eq(wc_ecc_make_key(rng, 32, key), 0);
  int n = wc_EccKeyToDer(key, der, sizeof(der));
  cr_assert_gt(n, 0);
  int pn =
      wc_DerToPem(der, (word32)n, (byte *)pem, (word32)cap, ECC_PRIVATEKEY_TYPE);
  cr_assert_gt(pn, 0);
  *pkey = key;
  return (size_t)pn;
}

/* A self-signed P-256 certificate for "localhost", made once per process. */
static void make_cert(void) {
  if (cert_len > 0) return;
  WC_RNG rng;
  ecc_key *key;
  Cert cert;
  uint8_t der[2048];
  cr_assert_eq(wc_InitRng(&rng), 0);
  key_len = make_key(&rng, &key, key_pem, sizeof(key_pem));
  cr_assert_eq(wc_InitCert(&cert), 0);
  snprintf(cert.subject.commonName, CTC_NAME_SIZE, "localhost");
  cert.sigType = CTC_SHA256wECDSA;
  cert.daysValid = 2;
  int n = wc_MakeCert_ex(&cert, der, sizeof(der), ECC_TYPE, key, &rng);
  cr_assert_gt(n, 0);
  n = wc_SignCert_ex(cert.bodySz, cert.sigType, der, sizeof(der), ECC_TYPE, key,
                     &rng);
  cr_assert_gt(n, 0);
  int pn =
      wc_DerToPem(der, (word32)n, (byte *)cert_pem, sizeof(cert_pem), CERT_TYPE);
  cr_assert_gt(pn, 0);
  cert_len = (size_t)pn;
  wc_ecc_key_free(key);
  wc_FreeRng(&rng);
}

typedef struct fixture {
  atun_failmem fm;
  atun_http_router *router;
  struct ev_loop *loop;
  ev_async stop;
  pthread_t thread;
  atun_https_server *srv;
  atun_https_settings settings;
  uint16_t port;
  int listen6;    /* also listen on ::1, same port as 127.0.0.1 */
  uint16_t port6; /* 0 when IPv6 loopback is missing */
  /* Read after the loop thread ended. */
  atun_https_stats stats;
  uint64_t count[ATUN_HTTP_STATUS_MAX + 1];
} fixture;

static void stop_cb(struct ev_loop *loop, ev_async *w, int revents) {
  (void)revents;
  fixture *f = w->data;
  atun_https_server_stop(f->srv);
  ev_break(loop, EVBREAK_ALL);
}

static void *loop_main(void *arg) {
  fixture *f = arg;
  ev_run(f->loop, 0);
  return NULL;
}

static void quiet_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

static void fixture_settings(fixture *f) {
  memset(f, 0, sizeof(*f));
  atun_https_settings_default(&f->settings);
  f->settings.http.header_timeout_ns = 2000 * MS;
  f->settings.http.idle_timeout_ns = 2000 * MS;
  f->settings.linger_timeout_ns = 200 * MS;
  f->settings.handshake_timeout_ns = 2000 * MS;
}

static void fixture_start(fixture *f) {
  quiet_sigpipe();
  make_cert();
  atun_failmem_init(&f->fm, -1);
  cr_assert_eq(atun_http_router_new(&f->router, &f->fm.mem), 0);
  routes_add(f->router);
  f->loop = ev_loop_new(EVFLAG_AUTO);
  cr_assert_not_null(f->loop);
  cr_assert_eq(atun_https_server_new(&f->srv, f->loop, &f->settings, f->router,
                                     cert_pem, cert_len, key_pem, key_len,
                                     &f->fm.mem),
               0);
  cr_assert_eq(atun_https_server_listen(f->srv, "127.0.0.1", 0, &f->port), 0);
  cr_assert_gt(f->port, 0);
  /* IPv6 sockets are IPv6-only, so the IPv4 port is free on ::1. */
  if (f->listen6 &&
      atun_https_server_listen(f->srv, "::1", f->port, &f->port6) != 0)
    f->port6 = 0;
  ev_async_init(&f->stop, stop_cb);
  f->stop.data = f;
  ev_async_start(f->loop, &f->stop);
  cr_assert_eq(pthread_create(&f->thread, NULL, loop_main, f), 0);
}

static void fixture_stop(fixture *f) {
  ev_async_send(f->loop, &f->stop);
  pthread_join(f->thread, NULL);
  atun_https_server_stats(f->srv, &f->stats);
  cr_assert_eq(f->stats.open, 0, "stop closes every connection");
  atun_https_server_del(f->srv);
  for (int st = ATUN_HTTP_STATUS_MIN; st <= ATUN_HTTP_STATUS_MAX; ++st)
    f->count[st] = atun_http_router_status_count(f->router, st);
  ev_async_stop(f->loop, &f->stop);
  ev_loop_destroy(f->loop);
  atun_http_router_del(f->router);
  cr_assert_eq(f->fm.live, 0, "server leaked %ld blocks", f->fm.live);
}

/* Runs a shell command line and returns its standard output. */
static char *sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *sh(const char *fmt, ...) {
  char cmd[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  size_t n;
  while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) len += n;
  out[len] = '\0';
  pclose(p);
  return out;
}

static double elapsed_s(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) +
         (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* ---- a raw TLS client ---- */

typedef struct client {
  int fd;
  WOLFSSL_CTX *ctx;
  WOLFSSL *ssl;
} client;

/* Receive buffer for new client sockets (0: the kernel's autotuning). */
static int client_rcvbuf;

static int tcp_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(fd, 0);
  if (client_rcvbuf > 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &client_rcvbuf, sizeof(client_rcvbuf));
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  return fd;
}

/* Returns 0 once TLS is up, -1 if the server refused it. */
static int client_open_method(client *c, uint16_t port, WOLFSSL_METHOD *method) {
  memset(c, 0, sizeof(*c));
  c->fd = tcp_connect(port);
  c->ctx = wolfSSL_CTX_new(method);
  cr_assert_not_null(c->ctx);
  wolfSSL_CTX_set_verify(c->ctx, WOLFSSL_VERIFY_NONE, NULL);
  c->ssl = wolfSSL_new(c->ctx);
  wolfSSL_set_fd(c->ssl, c->fd);
  return wolfSSL_connect(c->ssl) == WOLFSSL_SUCCESS ? 0 : -1;
}

static int client_open(client *c, uint16_t port) {
  return client_open_method(c, port, wolfSSLv23_client_method());
}

static void client_close(client *c) {
  wolfSSL_free(c->ssl);
  wolfSSL_CTX_free(c->ctx);
  close(c->fd);
}

static void client_send(client *c, const char *data, size_t len) {
  cr_assert_eq(wolfSSL_write(c->ssl, data, (int)len), (int)len);
}

static void client_send_str(client *c, const char *text) {
  client_send(c, text, strlen(text));
}

/* Reads until |stop| appears in the text, the peer closes, or 5 s pass.
 * Returns the bytes read; |*closed| tells whether the peer closed. */
static size_t client_read(client *c, char *buf, size_t cap, const char *stop,
                          int *closed) {
  size_t len = 0;
  *closed = 0;
  buf[0] = '\0';
  while (len + 1 < cap) {
    int n = wolfSSL_read(c->ssl, buf + len, (int)(cap - len - 1));
    if (n <= 0) {
      *closed = 1;
      break;
    }
    len += (size_t)n;
    buf[len] = '\0';
    if (stop != NULL && strstr(buf, stop) != NULL) break;
  }
  return len;
}

/* Reads exactly one response (headers, then Content-Length bytes). */
static void client_response(client *c, char *buf, size_t cap) {
  int closed;
  size_t len = client_read(c, buf, cap, "\r\n\r\n", &closed);
  const char *end = strstr(buf, "\r\n\r\n");
  const char *cl = strstr(buf, "Content-Length: ");
  cr_assert(end != NULL && cl != NULL, "no response: %s", buf);
  size_t want = (size_t)(end + 4 - buf) + (size_t)atoi(cl + 16);
  cr_assert_lt(want, cap);
  while (len < want && !closed) {
    int n = wolfSSL_read(c->ssl, buf + len, (int)(want - len));
    if (n <= 0) break;
    len += (size_t)n;
  }
  buf[len] = '\0';
  cr_assert_eq(len, want, "short response: %s", buf);
}

/* ---- server tests ---- */

Test(https_server, routes_errors_and_json_over_curl) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  char *out =
      sh("curl -sk --max-time 5 -w ' %%{http_code}' https://127.0.0.1:%u/hello",
         f.port);
  cr_assert_str_eq(out, "{\"hello\":\"world\"} 200");
  free(out);
  out = sh("curl -sk --max-time 5 -w ' %%{http_code}' https://127.0.0.1:%u/nope",
           f.port);
  cr_assert_str_eq(
      out, "{\"error\":{\"code\":\"not_found\",\"message\":\"no such path\"}} 404");
  free(out);
  out = sh("curl -sk --max-time 5 -i -X POST "
           "https://127.0.0.1:%u/jet/agent-tunnel/agents/x",
           f.port);
  cr_assert_not_null(strstr(out, "HTTP/1.1 405"), "%s", out);
  cr_assert_not_null(strstr(out, "Allow: GET, DELETE"), "%s", out);
  free(out);
  out = sh("curl -sk --max-time 5 -H 'Content-Type: application/json' "
           "-d '{\"name\":\"web\"}' -w ' %%{http_code}' https://127.0.0.1:%u/echo",
           f.port);
  cr_assert_str_eq(out, "{\"name\":\"web\"} 201");
  free(out);
  fixture_stop(&f);
  cr_assert_eq(f.count[200], 1);
  cr_assert_eq(f.count[201], 1);
  cr_assert_eq(f.count[404], 1);
  cr_assert_eq(f.count[405], 1);
  cr_assert_eq(f.stats.accepted, 4);
}

Test(https_server, keepalive_two_urls_one_connection) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  char *out = sh(
      "curl -sk --max-time 5 -w ' %%{num_connects}\\n' "
      "https://127.0.0.1:%u/hello https://127.0.0.1:%u/jet/agent-tunnel/agents/k",
      f.port, f.port);
  cr_assert_str_eq(
      out, "{\"hello\":\"world\"} 1\n"
           "{\"id\":\"k\",\"method\":\"GET\",\"query\":\"\",\"tag\":\"get\"} 0\n");
  free(out);
  fixture_stop(&f);
  cr_assert_eq(f.stats.accepted, 1);
  cr_assert_eq(f.count[200], 2);
}

Test(https_server, pipelined_requests_over_tls) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  const char *two = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /nope "
                    "HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
  client_send_str(&c, two);
  char buf[2048];
  int closed;
  client_read(&c, buf, sizeof(buf), NULL, &closed);
  cr_assert(closed);
  cr_assert_eq(responses(buf), 2, "%s", buf);
  cr_assert_eq(status_at(buf, 0), 200);
  cr_assert_eq(status_at(buf, 1), 404);
  client_close(&c);
  fixture_stop(&f);
}

Test(https_server, tls_versions) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  cr_assert_str_eq(wolfSSL_get_version(c.ssl), "TLSv1.3", "1.3 preferred");
  client_close(&c);
  cr_assert_eq(client_open_method(&c, f.port, wolfTLSv1_2_client_method()), 0);
  cr_assert_str_eq(wolfSSL_get_version(c.ssl), "TLSv1.2");
  client_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  char buf[1024];
  client_response(&c, buf, sizeof(buf));
  cr_assert_eq(status_at(buf, 0), 200);
  client_close(&c);
  fixture_stop(&f);
}

#define BODY_CMD                                                                   \
  "head -c %d /dev/zero | tr '\\\\0' b | curl -sk --max-time 5 "                   \
  "-H 'Content-Type: text/plain' --data-binary @- -w ' %%{http_code}' "            \
  "https://127.0.0.1:%u/size"

Test(https_server, body_64k_ok_and_one_more_is_413) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  char *out = sh(BODY_CMD, 65536, f.port);
  cr_assert_str_eq(out, "65536 200");
  free(out);
  out = sh(BODY_CMD, 65537, f.port);
  cr_assert_str_eq(out, "{\"error\":{\"code\":\"payload_too_large\","
                        "\"message\":\"request body too large\"}} 413");
  free(out);
  fixture_stop(&f);
  cr_assert_eq(f.count[413], 1);
}

/* The header bound over TLS, with the default 8 KiB. */
Test(https_server, header_size_at_bound_and_431_past_it) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  size_t max = f.settings.http.header_bytes_max;
  char buf[4096];
  int closed;
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  char *ok = request_of_header_size(max);
  client_send_str(&c, ok);
  client_response(&c, buf, sizeof(buf));
  cr_assert_eq(status_at(buf, 0), 200, "%s", buf);
  char *over = request_of_header_size(max + 1);
  client_send_str(&c, over);
  client_read(&c, buf, sizeof(buf), NULL, &closed);
  cr_assert(closed, "the connection ends after a 431");
  cr_assert_eq(status_at(buf, 0), 431, "%s", buf);
  assert_error(buf, "headers_too_large");
  free(ok);
  free(over);
  client_close(&c);
  fixture_stop(&f);
}

Test(https_server, malformed_request_is_400_and_closed) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  /* "H" is where HEAD starts: the error must still carry its body. */
  client_send_str(&c, "HELLO THERE\r\n\r\n");
  char buf[1024];
  int closed;
  client_read(&c, buf, sizeof(buf), NULL, &closed);
  cr_assert(closed);
  cr_assert_eq(status_at(buf, 0), 400, "%s", buf);
  assert_error(buf, "bad_request");
  client_close(&c);
  fixture_stop(&f);
}

Test(https_server, slow_client_gets_408_in_time) {
  fixture f;
  fixture_settings(&f);
  f.settings.http.header_timeout_ns = 300 * MS;
  fixture_start(&f);
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  client_send_str(&c, "GET /hello HTTP/1.1\r\nHost: slow");
  char buf[1024];
  int closed;
  client_read(&c, buf, sizeof(buf), NULL, &closed);
  double dt = elapsed_s(&t0);
  cr_assert(closed);
  cr_assert_eq(status_at(buf, 0), 408, "%s", buf);
  assert_error(buf, "request_timeout");
  cr_assert_not_null(strstr(buf, "Connection: close\r\n"));
  cr_assert(dt >= 0.25 && dt < 1.5, "408 after %.3f s", dt);
  client_close(&c);
  fixture_stop(&f);
}

Test(https_server, slow_body_gets_408_in_time) {
  fixture f;
  fixture_settings(&f);
  f.settings.http.body_timeout_ns = 300 * MS;
  fixture_start(&f);
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const char *req =
      "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly a few";
  client_send_str(&c, req);
  char buf[1024];
  int closed;
  client_read(&c, buf, sizeof(buf), NULL, &closed);
  double dt = elapsed_s(&t0);
  cr_assert_eq(status_at(buf, 0), 408, "%s", buf);
  cr_assert(closed);
  cr_assert(dt >= 0.25 && dt < 1.5, "408 after %.3f s", dt);
  client_close(&c);
  fixture_stop(&f);
}

Test(https_server, handshake_time_is_bounded) {
  fixture f;
  fixture_settings(&f);
  f.settings.handshake_timeout_ns = 300 * MS;
  fixture_start(&f);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int fd = tcp_connect(f.port);
  char b;
  ssize_t n = recv(fd, &b, 1, 0);
  double dt = elapsed_s(&t0);
  cr_assert_eq(n, 0, "closed without a byte");
  cr_assert(dt >= 0.25 && dt < 1.5, "closed after %.3f s", dt);
  close(fd);
  fixture_stop(&f);
  cr_assert_eq(f.stats.handshake_timeouts, 1);
}

Test(https_server, garbage_instead_of_tls_is_a_handshake_failure) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  int fd = tcp_connect(f.port);
  const char *plain = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
  cr_assert_eq(send(fd, plain, strlen(plain), MSG_NOSIGNAL),
               (ssize_t)strlen(plain));
  char buf[256];
  while (recv(fd, buf, sizeof(buf), 0) > 0) {
  }
  close(fd);
  fixture_stop(&f);
  cr_assert_eq(f.stats.handshake_failures, 1);
}

Test(https_server, idle_keepalive_connection_is_closed) {
  fixture f;
  fixture_settings(&f);
  f.settings.http.idle_timeout_ns = 300 * MS;
  fixture_start(&f);
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  client_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  char buf[1024];
  client_response(&c, buf, sizeof(buf));
  cr_assert_eq(status_at(buf, 0), 200);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int closed;
  size_t n = client_read(&c, buf, sizeof(buf), NULL, &closed);
  double dt = elapsed_s(&t0);
  cr_assert(closed);
  cr_assert_eq(n, 0, "closed without a response");
  cr_assert(dt >= 0.25 && dt < 1.5, "closed after %.3f s", dt);
  client_close(&c);
  fixture_stop(&f);
}

Test(https_server, requests_per_connection_then_close) {
  fixture f;
  fixture_settings(&f);
  f.settings.http.requests_per_conn_max = 2;
  fixture_start(&f);
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  char buf[1024];
  client_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  client_response(&c, buf, sizeof(buf));
  cr_assert_not_null(strstr(buf, "Connection: keep-alive"));
  client_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  int closed;
  client_read(&c, buf, sizeof(buf), NULL, &closed);
  cr_assert(closed);
  cr_assert_eq(status_at(buf, 0), 200);
  cr_assert_not_null(strstr(buf, "Connection: close"));
  client_close(&c);
  fixture_stop(&f);
}

/* Polls until the server has seen |n| accepted connections, for at most 2 s. */
static int wait_until(int (*cond)(void *), void *arg) {
  for (int i = 0; i < 200; ++i) {
    if (cond(arg)) return 1;
    usleep(10000);
  }
  return 0;
}

static int try_request(void *arg) {
  uint16_t port = *(uint16_t *)arg;
  client c;
  int ok = 0;
  if (client_open(&c, port) == 0) {
    client_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    char buf[1024];
    client_response(&c, buf, sizeof(buf));
    ok = status_at(buf, 0) == 200;
  }
  client_close(&c);
  return ok;
}

Test(https_server, connections_beyond_the_limit_are_refused) {
  fixture f;
  fixture_settings(&f);
  f.settings.connections_max = 2;
  fixture_start(&f);
  client a, b, extra;
  cr_assert_eq(client_open(&a, f.port), 0);
  cr_assert_eq(client_open(&b, f.port), 0);
  cr_assert_eq(client_open(&extra, f.port), -1, "third connection refused");
  client_close(&extra);
  /* The two in service still work. */
  char buf[1024];
  client_send_str(&a, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  client_response(&a, buf, sizeof(buf));
  cr_assert_eq(status_at(buf, 0), 200);
  client_close(&a);
  /* A freed slot serves again once the server has seen the close. */
  cr_assert(wait_until(try_request, &f.port));
  client_close(&b);
  fixture_stop(&f);
  cr_assert_geq(f.stats.refused, 1);
}

Test(https_server, rate_limit_429_over_curl) {
  fixture f;
  fixture_settings(&f);
  atun_testrng rng;
  atun_testrng_seed(&rng, 11);
  atun_rand rand = atun_testrng_as_rand(&rng);
  atun_ratelimit_settings rs;
  atun_ratelimit_settings_default(&rs);
  rs.burst = 2;
  rs.interval_ns = 60 * ATUN_NS_PER_S;
  cr_assert_eq(atun_ratelimit_new(&test_rl, &rs, &rand, atun_mem_default()), 0);
  fixture_start(&f);
  char *out = sh("for i in 1 2 3; do curl -sk --max-time 5 -X POST -o /dev/null "
                 "-w '%%{http_code} ' https://127.0.0.1:%u/enroll; done; "
                 "curl -sk --max-time 5 -X POST -i https://127.0.0.1:%u/enroll",
                 f.port, f.port);
  cr_assert_eq(strncmp(out, "200 200 429 HTTP/1.1 429", 24), 0, "%s", out);
  cr_assert_not_null(strstr(out, "Retry-After: "), "%s", out);
  assert_error(out, "too_many_requests");
  free(out);
  fixture_stop(&f);
  atun_ratelimit_del(test_rl);
  test_rl = NULL;
}

Test(https_server, ipv6_listener) {
  fixture f;
  fixture_settings(&f);
  f.listen6 = 1;
  fixture_start(&f);
  if (f.port6 == 0) {
    fixture_stop(&f);
    cr_skip_test("no IPv6 loopback on this machine");
  }
  char *out = sh("curl -sik --max-time 5 https://[::1]:%u/headers", f.port6);
  cr_assert_str_eq(json_str(out, "peer"), "::1");
  free(out);
  out = sh("curl -sik --max-time 5 https://127.0.0.1:%u/headers", f.port);
  cr_assert_str_eq(json_str(out, "peer"), "127.0.0.1");
  free(out);
  fixture_stop(&f);
  cr_assert_eq(f.count[200], 2);
}

Test(https_server, stop_with_connections_open_frees_everything) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  client idle, partial, body;
  cr_assert_eq(client_open(&idle, f.port), 0);
  cr_assert_eq(client_open(&partial, f.port), 0);
  cr_assert_eq(client_open(&body, f.port), 0);
  client_send_str(&partial, "GET /hel");
  const char *req =
      "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc";
  client_send_str(&body, req);
  int half = tcp_connect(f.port); /* TCP only, handshake pending */
  usleep(100000);
  fixture_stop(&f); /* asserts no connection and no block is left */
  cr_assert_eq(f.stats.accepted, 4);
  char buf[64];
  int closed;
  client_read(&partial, buf, sizeof(buf), NULL, &closed);
  cr_assert(closed);
  client_close(&idle);
  client_close(&partial);
  client_close(&body);
  close(half);
}

Test(https_server, setup_errors) {
  quiet_sigpipe();
  make_cert();
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_http_router *router;
  cr_assert_eq(atun_http_router_new(&router, &fm.mem), 0);
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  atun_https_settings st;
  atun_https_settings_default(&st);
  atun_https_server *srv;
  cr_assert_eq(atun_https_server_new(&srv, NULL, &st, router, cert_pem, cert_len,
                                     key_pem, key_len, &fm.mem),
               ATUN_ERR_INVALID_ARGUMENT);
  st.connections_max = 0;
  cr_assert_eq(atun_https_server_new(&srv, loop, &st, router, cert_pem, cert_len,
                                     key_pem, key_len, &fm.mem),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_https_settings_default(&st);
  st.handshake_timeout_ns = 0;
  cr_assert_eq(atun_https_server_new(&srv, loop, &st, router, cert_pem, cert_len,
                                     key_pem, key_len, &fm.mem),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_https_settings_default(&st);
  cr_assert_eq(atun_https_server_new(&srv, loop, &st, router, "junk", 4, key_pem,
                                     key_len, &fm.mem),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_https_server_new(&srv, loop, &st, router, cert_pem, cert_len,
                                     "junk", 4, &fm.mem),
               ATUN_ERR_MALFORMED);
  /* A key that is not the certificate's. */
  WC_RNG rng;
  ecc_key *other;
  char other_pem[1024];
  cr_assert_eq(wc_InitRng(&rng), 0);
  size_t other_len = make_key(&rng, &other, other_pem, sizeof(other_pem));
  wc_ecc_key_free(other);
  wc_FreeRng(&rng);
  cr_assert_eq(atun_https_server_new(&srv, loop, &st, router, cert_pem, cert_len,
                                     other_pem, other_len, &fm.mem),
               ATUN_ERR_MALFORMED);
  atun_failmem_arm(&fm, 0, 1);
  cr_assert_eq(atun_https_server_new(&srv, loop, &st, router, cert_pem, cert_len,
                                     key_pem, key_len, &fm.mem),
               ATUN_ERR_NOMEM);
  cr_assert_eq(fm.live, 1, "only the router is left");
  cr_assert_eq(atun_https_server_new(&srv, loop, &st, router, cert_pem, cert_len,
                                     key_pem, key_len, &fm.mem),
               0);
  uint16_t port, port2;
  cr_assert_eq(atun_https_server_listen(srv, "localhost", 0, &port),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_https_server_listen(srv, "192.0.2.1", 0, &port),
               ATUN_ERR_INVALID_ARGUMENT, "not a local address");
  cr_assert_eq(atun_https_server_listen(srv, "127.0.0.1", 0, &port), 0);
  cr_assert_eq(atun_https_server_listen(srv, "127.0.0.1", port, &port2),
               ATUN_ERR_EXISTS);
  for (int i = 1; i < ATUN_HTTPS_LISTENERS_MAX; ++i)
    cr_assert_eq(atun_https_server_listen(srv, "127.0.0.1", 0, NULL), 0);
  cr_assert_eq(atun_https_server_listen(srv, "127.0.0.1", 0, &port2),
               ATUN_ERR_FULL);
  atun_https_server_stop(srv);
  atun_https_server_stop(srv);
  cr_assert_eq(atun_https_server_listen(srv, "127.0.0.1", 0, &port2),
               ATUN_ERR_STATE);
  atun_https_server_del(srv);
  atun_https_server_del(NULL);
  atun_http_router_del(router);
  ev_loop_destroy(loop);
  cr_assert_eq(fm.live, 0);
}

/* A response larger than the socket buffers goes out in pieces as the
 * client reads; the server waits for writability in between. */
Test(https_server, large_response_goes_out_as_the_client_reads) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  big_size = 3u << 20;
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  client_send_str(&c, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
  usleep(200000); /* let the server fill the socket buffers and wait */
  size_t cap = big_size + 4096;
  char *buf = malloc(cap);
  client_response(&c, buf, cap);
  cr_assert_eq(status_at(buf, 0), 200);
  cr_assert_eq(strlen(last_body(buf)), big_size);
  free(buf);
  client_close(&c);
  fixture_stop(&f);
}

/* The response (8 MiB) is larger than what the kernel buffers between the
 * two ends (a 4 MiB send buffer at most here, a 64 KiB receive buffer), so
 * a client that does not read leaves it pending until the write timeout. */
Test(https_server, unread_response_is_dropped_after_write_timeout) {
  fixture f;
  fixture_settings(&f);
  f.settings.http.write_timeout_ns = 300 * MS;
  f.settings.http.response_bytes_max = 16u << 20;
  fixture_start(&f);
  big_size = 8u << 20;
  client_rcvbuf = 65536;
  client c;
  cr_assert_eq(client_open(&c, f.port), 0);
  client_send_str(&c, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
  usleep(600000);
  size_t total = 0;
  char buf[16384];
  int n;
  while ((n = wolfSSL_read(c.ssl, buf, sizeof(buf))) > 0) total += (size_t)n;
  cr_assert_lt(total, big_size, "the response was cut: %zu bytes", total);
  client_close(&c);
  fixture_stop(&f);
}

/* Fills every free descriptor but |spare|; returns how many it took. */
static int fds_fill(int *fds, int cap, int spare) {
  int n = 0;
  while (n < cap && (fds[n] = dup(0)) >= 0) ++n;
  cr_assert_eq(errno, EMFILE);
  cr_assert_geq(n, spare);
  for (int i = 0; i < spare; ++i) close(fds[--n]);
  return n;
}

Test(https_server, descriptor_exhaustion_pauses_accept_then_recovers) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = 256;
  cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  static int fds[256];
  /* Five free: two connections take two each (client and server side),
   * the third client socket takes the last one. */
  int nfds = fds_fill(fds, 256, 5);
  client a, b;
  cr_assert_eq(client_open(&a, f.port), 0);
  cr_assert_eq(client_open(&b, f.port), 0);
  int third = tcp_connect(f.port);
  usleep(50000);    /* the server tries to accept it and runs out */
  client_close(&a); /* frees one descriptor on each side */
  client c;
  memset(&c, 0, sizeof(c));
  c.fd = third;
  c.ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
  wolfSSL_CTX_set_verify(c.ctx, WOLFSSL_VERIFY_NONE, NULL);
  c.ssl = wolfSSL_new(c.ctx);
  wolfSSL_set_fd(c.ssl, c.fd);
  cr_assert_eq(wolfSSL_connect(c.ssl), WOLFSSL_SUCCESS, "served after the pause");
  char buf[1024];
  client_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
  client_response(&c, buf, sizeof(buf));
  cr_assert_eq(status_at(buf, 0), 200);
  client_close(&c);
  client_close(&b);
  for (int i = 0; i < nfds; ++i) close(fds[i]);
  fixture_stop(&f);
  cr_assert_geq(f.stats.accept_pauses, 1);
}

/* The loop thread sleeps in epoll until the client connects, so arming the
 * allocator from here before connecting orders the two. */
Test(https_server, allocation_failures_at_accept_and_after_handshake) {
  fixture f;
  fixture_settings(&f);
  fixture_start(&f);
  client c;
  atun_failmem_arm(&f.fm, 0, 1); /* the connection object */
  cr_assert_eq(client_open(&c, f.port), -1);
  client_close(&c);
  atun_failmem_arm(&f.fm, 1, 1); /* the session, once TLS is up */
  cr_assert_eq(client_open(&c, f.port), 0);
  char buf[256];
  int closed;
  client_read(&c, buf, sizeof(buf), NULL, &closed);
  cr_assert(closed);
  client_close(&c);
  cr_assert(wait_until(try_request, &f.port), "later connections are served");
  fixture_stop(&f);
  cr_assert_eq(f.stats.refused, 1);
}
