/*
 * One bounded HTTP response over http_parser (see http_resp.h).
 */
#include <string.h>

#include "http_resp.h"

static agent_http_reader *reader_of(http_parser *p) { return p->data; }

static int fail(agent_http_reader *r, int err, const char *why) {
  if (r->error == 0) {
    r->error = err;
    r->why = why;
  }
  return -1;
}

static int count_header(http_parser *p, const char *at, size_t n) {
  agent_http_reader *r = reader_of(p);
  (void)at;
  if (n > AGENT_HTTP_HEADER_MAX - r->header_bytes)
    return fail(r, ATUN_ERR_LIMIT, "response headers too large");
  r->header_bytes += n;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  agent_http_reader *r = reader_of(p);
  /* Decided on the declared length, before the body arrives. */
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > r->body_max)
    return fail(r, ATUN_ERR_LIMIT, "response body too large");
  return 0;
}

static int grow(agent_http_reader *r, size_t need) {
  if (need <= r->body_cap) return 0;
  size_t cap = r->body_cap ? r->body_cap : 1024;
  while (cap < need) cap *= 2;
  if (cap > r->body_max + 1) cap = r->body_max + 1;
  char *p = atun_mem_realloc(r->mem, r->body, cap);
  if (p == NULL) return ATUN_ERR_NOMEM;
  r->body = p;
  r->body_cap = cap;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  agent_http_reader *r = reader_of(p);
  if (n > r->body_max - r->body_len)
    return fail(r, ATUN_ERR_LIMIT, "response body too large");
  if (grow(r, r->body_len + n + 1) != 0)
    return fail(r, ATUN_ERR_NOMEM, "out of memory");
  memcpy(r->body + r->body_len, at, n);
  r->body_len += n;
  r->body[r->body_len] = '\0';
  return 0;
}

static int on_message_complete(http_parser *p) {
  agent_http_reader *r = reader_of(p);
  if (p->status_code < 200) {
    /* 100 Continue and friends announce the answer; they are not it. */
    r->header_bytes = 0;
    r->body_len = 0;
    return 0;
  }
  r->status = (int)p->status_code;
  r->done = 1;
  /* Whatever follows on the connection is not ours to parse. */
  http_parser_pause(p, 1);
  return 0;
}

int agent_http_reader_init(agent_http_reader *r, size_t body_max,
                           const atun_mem *mem) {
  memset(r, 0, sizeof(*r));
  r->mem = mem;
  if (body_max == 0 || body_max > AGENT_HTTP_BODY_LIMIT)
    return ATUN_ERR_INVALID_ARGUMENT;
  http_parser_init(&r->parser, HTTP_RESPONSE);
  r->parser.data = r;
  http_parser_settings_init(&r->settings);
  r->settings.on_status = count_header;
  r->settings.on_header_field = count_header;
  r->settings.on_header_value = count_header;
  r->settings.on_headers_complete = on_headers_complete;
  r->settings.on_body = on_body;
  r->settings.on_message_complete = on_message_complete;
  r->body_max = body_max;
  return 0;
}

void agent_http_reader_free(agent_http_reader *r) {
  if (r->mem != NULL) atun_mem_free(r->mem, r->body);
  r->mem = NULL;
  r->body = NULL;
  r->body_len = r->body_cap = 0;
}

static int after_execute(agent_http_reader *r) {
  if (r->done) return 1;
  if (r->error != 0) return r->error;
  if (HTTP_PARSER_ERRNO(&r->parser) != HPE_OK) {
    r->error = ATUN_ERR_MALFORMED;
    r->why = http_errno_description(HTTP_PARSER_ERRNO(&r->parser));
    return r->error;
  }
  return 0;
}

int agent_http_reader_feed(agent_http_reader *r, const char *data, size_t len) {
  if (r->done) return 1;
  if (r->error != 0) return r->error;
  if (len == 0) return 0; /* a zero length means EOF to http_parser */
  http_parser_execute(&r->parser, &r->settings, data, len);
  return after_execute(r);
}

int agent_http_reader_eof(agent_http_reader *r) {
  if (r->done) return 1;
  if (r->error != 0) return r->error;
  http_parser_execute(&r->parser, &r->settings, NULL, 0);
  if (r->done) return 1;
  if (r->error != 0) return r->error;
  /* http_parser calls an early end HPE_INVALID_EOF_STATE: a cut, for us. */
  r->error = ATUN_ERR_TRUNCATED;
  r->why = "connection closed before the response ended";
  return r->error;
}
