/* accept4() */
#define _GNU_SOURCE

#include "https.h"

#include <wolfssl/options.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfio.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "http_json.h"

/* ======================================================================
 * Settings
 * ====================================================================== */

void atun_http_settings_default(atun_http_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  settings->header_bytes_max = 8192;
  settings->headers_max = 64;
  settings->body_bytes_max = 65536;
  settings->response_bytes_max = (size_t)4 << 20;
  settings->header_timeout_ns = 10 * ATUN_NS_PER_S;
  settings->body_timeout_ns = 30 * ATUN_NS_PER_S;
  settings->idle_timeout_ns = 60 * ATUN_NS_PER_S;
  settings->write_timeout_ns = 30 * ATUN_NS_PER_S;
  settings->requests_per_conn_max = 1000;
}

static int timeout_valid(uint64_t ns) {
  return ns >= 1 && ns <= ATUN_HTTP_TIMEOUT_MAX_NS;
}

static int http_settings_valid(const atun_http_settings *s) {
  return s->header_bytes_max >= ATUN_HTTP_HEADER_BYTES_MIN &&
         s->header_bytes_max <= ATUN_HTTP_HEADER_BYTES_LIMIT &&
         s->headers_max >= 1 && s->headers_max <= ATUN_HTTP_HEADERS_LIMIT &&
         s->body_bytes_max <= ATUN_HTTP_BODY_BYTES_LIMIT &&
         s->response_bytes_max >= ATUN_HTTP_RESPONSE_BYTES_MIN &&
         s->response_bytes_max <= ATUN_HTTP_RESPONSE_BYTES_LIMIT &&
         timeout_valid(s->header_timeout_ns) && timeout_valid(s->body_timeout_ns) &&
         timeout_valid(s->idle_timeout_ns) && timeout_valid(s->write_timeout_ns) &&
         s->requests_per_conn_max >= 1;
}

/* Deadlines saturate instead of wrapping past ATUN_TSTAMP_MAX ("never"). */
static atun_tstamp ts_add(atun_tstamp ts, uint64_t ns) {
  return ts >= ATUN_TSTAMP_MAX - ns ? ATUN_TSTAMP_MAX - 1 : ts + ns;
}

/* ======================================================================
 * Small text helpers
 * ====================================================================== */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c; }

static int str_ieq(const char *a, const char *b) {
  for (; *a != '\0' && *b != '\0'; ++a, ++b)
    if (lower((unsigned char)*a) != lower((unsigned char)*b)) return 0;
  return *a == *b;
}

static int mem_ieq(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return 0;
  return 1;
}

/* RFC 9110 tchar. */
static int is_tchar(int c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return 1;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(const char *s) {
  if (*s == '\0') return 0;
  for (; *s != '\0'; ++s)
    if (!is_tchar((unsigned char)*s)) return 0;
  return 1;
}

/* Visible ASCII, no space: what a path or pattern may hold. */
static int is_vchar(int c) { return c > 0x20 && c < 0x7f; }

static const char *reason_phrase(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: break;
  }
  return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
}

/* ======================================================================
 * Responses
 * ====================================================================== */

static void response_reset(atun_http_response *resp) {
  atun_mem_free(resp->mem, resp->body);
  resp->body = NULL;
  resp->body_len = 0;
  resp->status = 0;
  resp->content_type[0] = '\0';
  resp->headers_len = 0;
  resp->close = 0;
}

static int content_type_valid(const char *ct) {
  size_t n = strlen(ct);
  if (n == 0 || n > ATUN_HTTP_CONTENT_TYPE_MAX) return 0;
  for (size_t i = 0; i < n; ++i)
    if (ct[i] < 0x20 || ct[i] > 0x7e) return 0;
  return 1;
}

int atun_http_response_set_body(atun_http_response *resp, int status,
                                const char *content_type, const void *body,
                                size_t len) {
  if (resp == NULL || status < 200 || status > ATUN_HTTP_STATUS_MAX ||
      content_type == NULL || !content_type_valid(content_type) ||
      (body == NULL && len > 0) || (status == 204 && len > 0))
    return ATUN_ERR_INVALID_ARGUMENT;
  if (len > resp->body_max) return ATUN_ERR_NOBUF;
  char *copy = atun_mem_malloc(resp->mem, len + 1);
  if (copy == NULL) return ATUN_ERR_NOMEM;
  if (len > 0) memcpy(copy, body, len);
  copy[len] = '\0';
  atun_mem_free(resp->mem, resp->body);
  resp->body = copy;
  resp->body_len = len;
  resp->status = status;
  memcpy(resp->content_type, content_type, strlen(content_type) + 1);
  return 0;
}

static int header_reserved(const char *name) {
  return str_ieq(name, "content-length") || str_ieq(name, "content-type") ||
         str_ieq(name, "connection") || str_ieq(name, "transfer-encoding");
}

static int header_value_valid(const char *v) {
  for (; *v != '\0'; ++v) {
    unsigned char c = (unsigned char)*v;
    if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
  }
  return 1;
}

int atun_http_response_add_header(atun_http_response *resp, const char *name,
                                  const char *value) {
  if (resp == NULL || name == NULL || value == NULL || !is_token(name) ||
      header_reserved(name) || !header_value_valid(value))
    return ATUN_ERR_INVALID_ARGUMENT;
  size_t room = sizeof(resp->headers) - resp->headers_len;
  int n =
      snprintf(resp->headers + resp->headers_len, room, "%s: %s\r\n", name, value);
  if (n < 0 || (size_t)n >= room) {
    resp->headers[resp->headers_len] = '\0';
    return ATUN_ERR_FULL;
  }
  resp->headers_len += (size_t)n;
  return 0;
}

void atun_http_response_set_close(atun_http_response *resp) { resp->close = 1; }

/* ======================================================================
 * Router
 * ====================================================================== */

typedef struct route {
  char method[ATUN_HTTP_METHOD_MAX + 1];
  char pattern[ATUN_HTTP_PATTERN_MAX + 1];
  size_t prefix_len; /* bytes before "{id}", or the whole pattern */
  size_t suffix_len; /* bytes after "{id}" */
  int has_id;
  atun_http_handler handler;
  void *user_data;
} route;

struct atun_http_router {
  const atun_mem *mem;
  route routes[ATUN_HTTP_ROUTES_MAX];
  size_t nroutes;
  atun_http_access_fn log_fn;
  void *log_user_data;
  uint64_t by_status[ATUN_HTTP_STATUS_MAX - ATUN_HTTP_STATUS_MIN + 1];
};

int atun_http_router_new(atun_http_router **prouter, const atun_mem *mem) {
  if (prouter == NULL || mem == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  atun_http_router *r = atun_mem_calloc(mem, 1, sizeof(*r));
  if (r == NULL) return ATUN_ERR_NOMEM;
  r->mem = mem;
  *prouter = r;
  return 0;
}

void atun_http_router_del(atun_http_router *router) {
  if (router == NULL) return;
  atun_mem_free(router->mem, router);
}

static int method_valid(const char *m) {
  size_t n = strlen(m);
  if (n == 0 || n > ATUN_HTTP_METHOD_MAX) return 0;
  for (size_t i = 0; i < n; ++i)
    if (m[i] < 'A' || m[i] > 'Z') return 0;
  return 1;
}

/* Fills the split of |r| from its pattern; 0 or -1 if the pattern is not
 * acceptable. */
static int pattern_parse(route *r) {
  const char *p = r->pattern;
  size_t n = strlen(p);
  if (n == 0 || p[0] != '/') return -1;
  for (size_t i = 0; i < n; ++i)
    if (!is_vchar((unsigned char)p[i]) || strchr("?#%", p[i]) != NULL) return -1;
  const char *id = strstr(p, "{id}");
  r->has_id = id != NULL;
  r->prefix_len = id != NULL ? (size_t)(id - p) : n;
  r->suffix_len = id != NULL ? n - r->prefix_len - 4 : 0;
  /* No brace outside the one "{id}", which must fill a whole segment. */
  for (size_t i = 0; i < n; ++i) {
    int in_id = id != NULL && i >= r->prefix_len && i < r->prefix_len + 4;
    if (!in_id && (p[i] == '{' || p[i] == '}')) return -1;
  }
  if (id != NULL && (id[-1] != '/' || (id[4] != '\0' && id[4] != '/'))) return -1;
  return 0;
}

int atun_http_router_add(atun_http_router *router, const char *method,
                         const char *pattern, atun_http_handler handler,
                         void *user_data) {
  if (router == NULL || method == NULL || pattern == NULL || handler == NULL ||
      !method_valid(method) || strlen(pattern) > ATUN_HTTP_PATTERN_MAX)
    return ATUN_ERR_INVALID_ARGUMENT;
  route r;
  memset(&r, 0, sizeof(r));
  memcpy(r.method, method, strlen(method) + 1);
  memcpy(r.pattern, pattern, strlen(pattern) + 1);
  if (pattern_parse(&r) != 0) return ATUN_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < router->nroutes; ++i)
    if (strcmp(router->routes[i].method, method) == 0 &&
        strcmp(router->routes[i].pattern, pattern) == 0)
      return ATUN_ERR_EXISTS;
  if (router->nroutes == ATUN_HTTP_ROUTES_MAX) return ATUN_ERR_FULL;
  r.handler = handler;
  r.user_data = user_data;
  router->routes[router->nroutes++] = r;
  return 0;
}

void atun_http_router_set_access_log(atun_http_router *router,
                                     atun_http_access_fn fn, void *user_data) {
  router->log_fn = fn;
  router->log_user_data = user_data;
}

uint64_t atun_http_router_status_count(const atun_http_router *router, int status) {
  if (status < ATUN_HTTP_STATUS_MIN || status > ATUN_HTTP_STATUS_MAX) return 0;
  return router->by_status[status - ATUN_HTTP_STATUS_MIN];
}

/* Nonzero if |path| (|n| bytes) is |r|'s resource; a captured id goes to
 * |id| (ATUN_HTTP_ID_MAX + 1 bytes). */
static int route_matches(const route *r, const char *path, size_t n, char *id) {
  if (!r->has_id) return n == r->prefix_len && memcmp(path, r->pattern, n) == 0;
  if (n < r->prefix_len + r->suffix_len + 1) return 0;
  size_t idlen = n - r->prefix_len - r->suffix_len;
  const char *idp = path + r->prefix_len;
  if (idlen > ATUN_HTTP_ID_MAX || memchr(idp, '/', idlen) != NULL) return 0;
  if (memcmp(path, r->pattern, r->prefix_len) != 0 ||
      memcmp(idp + idlen, r->pattern + r->prefix_len + 4, r->suffix_len) != 0)
    return 0;
  memcpy(id, idp, idlen);
  id[idlen] = '\0';
  return 1;
}

/* Appends |method| to the comma-separated |allow| unless it is there. */
static void allow_add(char *allow, size_t cap, const char *method) {
  size_t mlen = strlen(method);
  for (const char *p = allow; *p != '\0';) {
    size_t len = strcspn(p, ",");
    if (len == mlen && memcmp(p, method, mlen) == 0) return;
    p += len;
    while (*p == ',' || *p == ' ') ++p;
  }
  size_t used = strlen(allow);
  snprintf(allow + used, cap - used, "%s%s", used > 0 ? ", " : "", method);
}

/*
 * Looks |method| |path| up, exact routes first (see https.h).  Returns the
 * route, or NULL with |allow| holding the methods the path does support
 * ("" when the path is unknown).
 */
static const route *router_lookup(const atun_http_router *router,
                                  const char *method, const char *path, char *id,
                                  char *allow, size_t allow_cap) {
  size_t n = strlen(path);
  allow[0] = '\0';
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < router->nroutes; ++i) {
      const route *r = &router->routes[i];
      if (r->has_id != pass || !route_matches(r, path, n, id)) continue;
      if (strcmp(r->method, method) == 0) return r;
      allow_add(allow, allow_cap, r->method);
    }
    if (allow[0] != '\0') return NULL;
  }
  return NULL;
}

static void router_record(atun_http_router *router, const atun_http_access *entry) {
  if (entry->status >= ATUN_HTTP_STATUS_MIN &&
      entry->status <= ATUN_HTTP_STATUS_MAX)
    ++router->by_status[entry->status - ATUN_HTTP_STATUS_MIN];
  if (router->log_fn != NULL) router->log_fn(entry, router->log_user_data);
}

/* ======================================================================
 * Requests
 * ====================================================================== */

const char *atun_http_request_header(const atun_http_request *req,
                                     const char *name) {
  if (req == NULL || name == NULL) return NULL;
  for (size_t i = 0; i < req->nheaders; ++i)
    if (str_ieq(req->headers[i].name, name)) return req->headers[i].value;
  return NULL;
}

int atun_http_request_bearer(const atun_http_request *req, const char **ptoken,
                             size_t *plen) {
  const char *v = atun_http_request_header(req, "authorization");
  if (v == NULL) return ATUN_ERR_NOT_FOUND;
  if (strlen(v) < 7 || !mem_ieq(v, "bearer ", 7)) return ATUN_ERR_MALFORMED;
  v += 7;
  while (*v == ' ') ++v;
  size_t n = strcspn(v, " \t");
  if (n == 0 || v[n] != '\0') return ATUN_ERR_MALFORMED;
  *ptoken = v;
  *plen = n;
  return 0;
}

/* ======================================================================
 * Session: HTTP/1.1 over bytes
 * ====================================================================== */

enum {
  S_IDLE,       /* waiting for the first byte of a request */
  S_HEADERS,    /* inside the request line or headers */
  S_BODY,       /* headers done, body not complete */
  S_RESPONDING, /* response pending; then the next request */
  S_CLOSING,    /* last response pending; then close */
  S_CLOSED
};

enum { CB_NONE, CB_URL, CB_FIELD, CB_VALUE };

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* An empty body still has its terminating NUL without an allocation. */
static uint8_t empty_body[1];

static atun_http_session *session_of(http_parser *p) { return p->data; }

static void reject(atun_http_session *s, int status, const char *code,
                   const char *message) {
  if (s->reject_status != 0) return;
  s->reject_status = status;
  s->reject_code = code;
  s->reject_message = message;
}

static int out_append(atun_http_session *s, const void *data, size_t len) {
  uint8_t *p = atun_mem_realloc(s->mem, s->out, s->out_len + len);
  if (p == NULL) return ATUN_ERR_NOMEM;
  memcpy(p + s->out_len, data, len);
  s->out = p;
  s->out_len += len;
  return 0;
}

static void out_drop(atun_http_session *s) {
  atun_mem_free(s->mem, s->out);
  s->out = NULL;
  s->out_len = s->out_off = 0;
}

/* Header text lives in |hbuf|, which never moves, so pointers into it taken
 * while parsing stay valid.  The text kept (with its NULs) is always shorter
 * than the raw header bytes, which feed_step() bounds by header_bytes_max:
 * these checks are the memory-safety net, not the limit itself. */
static int text_append(atun_http_session *s, const char *at, size_t n) {
  if (n >= s->settings.header_bytes_max - s->hlen) {
    reject(s, 431, "headers_too_large", "request header section too large");
    return -1;
  }
  memcpy(s->hbuf + s->hlen, at, n);
  s->hlen += n;
  return 0;
}

static int text_end(atun_http_session *s) {
  if (s->hlen >= s->settings.header_bytes_max) {
    reject(s, 431, "headers_too_large", "request header section too large");
    return -1;
  }
  s->hbuf[s->hlen++] = '\0';
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  atun_http_session *s = session_of(p);
  s->last_cb = CB_URL;
  return text_append(s, at, n);
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  atun_http_session *s = session_of(p);
  if (s->last_cb != CB_FIELD) {
    if (text_end(s) != 0) return -1; /* ends the URL or the previous value */
    if (s->nhdrs == s->settings.headers_max) {
      reject(s, 431, "headers_too_large", "too many header lines");
      return -1;
    }
    s->hdrs[s->nhdrs].name = s->hbuf + s->hlen;
    s->hdrs[s->nhdrs].value = "";
    ++s->nhdrs;
  }
  s->last_cb = CB_FIELD;
  return text_append(s, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  atun_http_session *s = session_of(p);
  if (s->last_cb == CB_FIELD) {
    if (text_end(s) != 0) return -1;
    s->hdrs[s->nhdrs - 1].value = s->hbuf + s->hlen;
  }
  s->last_cb = CB_VALUE;
  return text_append(s, at, n);
}

/* Ends the header text: NUL after the last value, trailing blanks cut,
 * names checked (the lenient parser lets a space into a name). */
static int headers_finish(atun_http_session *s) {
  if (s->last_cb == CB_FIELD || s->hlen == 0) {
    reject(s, 400, "bad_request", "malformed request");
    return -1;
  }
  if (text_end(s) != 0) return -1;
  for (size_t i = 0; i < s->nhdrs; ++i) {
    char *v = (char *)s->hdrs[i].value;
    size_t n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) v[--n] = '\0';
    if (!is_token(s->hdrs[i].name) || !header_value_valid(v)) {
      reject(s, 400, "bad_request", "malformed header");
      return -1;
    }
  }
  return 0;
}

/* Splits the request target (in place, at the start of |hbuf|) into path
 * and query. */
static int target_parse(atun_http_session *s) {
  struct http_parser_url u;
  http_parser_url_init(&u);
  size_t len = strlen(s->hbuf);
  if (http_parser_parse_url(s->hbuf, len, 0, &u) != 0 ||
      !(u.field_set & (1u << UF_PATH)))
    return -1;
  char *path = s->hbuf + u.field_data[UF_PATH].off;
  size_t plen = u.field_data[UF_PATH].len;
  if (plen == 0 || path[0] != '/') return -1;
  for (size_t i = 0; i < plen; ++i)
    if (!is_vchar((unsigned char)path[i])) return -1;
  s->req.query = "";
  if (u.field_set & (1u << UF_QUERY)) {
    char *q = s->hbuf + u.field_data[UF_QUERY].off;
    q[u.field_data[UF_QUERY].len] = '\0';
    s->req.query = q;
  }
  /* The query (if any) starts after this byte, so cutting here is safe. */
  path[plen] = '\0';
  s->req.path = path;
  return 0;
}

static size_t header_count(const atun_http_session *s, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < s->nhdrs; ++i) n += str_ieq(s->hdrs[i].name, name);
  return n;
}

/* Expect: 100-continue earns an interim response; other expectations are
 * refused.  HTTP/1.0 clients can not send Expect meaningfully: ignored. */
static int expect_handle(atun_http_session *s, uint64_t body_len) {
  const char *v = atun_http_request_header(&s->req, "expect");
  if (v == NULL || s->parser.http_minor == 0) return 0;
  if (!str_ieq(v, "100-continue")) {
    reject(s, 417, "expectation_failed", "only 100-continue is supported");
    return -1;
  }
  if (body_len == 0) return 0;
  if (out_append(s, continue_line, sizeof(continue_line) - 1) != 0) {
    reject(s, 503, "unavailable", "out of memory");
    return -1;
  }
  return 0;
}

static int body_prepare(atun_http_session *s) {
  http_parser *p = &s->parser;
  if (p->flags & F_CHUNKED) {
    reject(s, 411, "length_required",
           "chunked bodies are not accepted; send Content-Length");
    return -1;
  }
  uint64_t cl = p->content_length == ULLONG_MAX ? 0 : p->content_length;
  if (cl > s->settings.body_bytes_max) {
    reject(s, 413, "payload_too_large", "request body too large");
    return -1;
  }
  if (expect_handle(s, cl) != 0) return -1;
  s->body = cl == 0 ? empty_body : atun_mem_malloc(s->mem, (size_t)cl + 1);
  if (s->body == NULL) {
    reject(s, 503, "unavailable", "out of memory");
    return -1;
  }
  s->body_cap = (size_t)cl;
  s->body[0] = '\0';
  return 0;
}

static int on_headers_complete(http_parser *p) {
  atun_http_session *s = session_of(p);
  if (headers_finish(s) != 0) return -1;
  s->req.method = http_method_str((enum http_method)p->method);
  s->req.headers = s->hdrs;
  s->req.nheaders = s->nhdrs;
  if (p->http_major != 1) {
    reject(s, 505, "http_version_not_supported", "only HTTP/1.x is served");
    return -1;
  }
  if (target_parse(s) != 0) {
    reject(s, 400, "bad_request", "malformed request target");
    return -1;
  }
  /* RFC 9112 3.2: exactly one Host in HTTP/1.1; and a repeated header that
   * decides authorization or parsing would mean different things to
   * different readers. */
  size_t hosts = header_count(s, "host");
  if (hosts > 1 || (hosts == 0 && p->http_minor > 0) ||
      header_count(s, "authorization") > 1 || header_count(s, "content-type") > 1) {
    reject(s, 400, "bad_request",
           "missing or repeated Host, or repeated "
           "Authorization or Content-Type header");
    return -1;
  }
  if (body_prepare(s) != 0) return -1;
  s->state = S_BODY;
  s->deadline = ts_add(s->now, s->settings.body_timeout_ns);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  atun_http_session *s = session_of(p);
  /* http_parser never passes more than Content-Length bytes. */
  ATUN_ASSERT(n <= s->body_cap - s->body_len);
  memcpy(s->body + s->body_len, at, n);
  s->body_len += n;
  s->body[s->body_len] = '\0';
  return 0;
}

static int on_message_complete(http_parser *p) {
  atun_http_session *s = session_of(p);
  s->complete = 1;
  /* One request at a time: the parser stops right after this message and
   * the caller keeps whatever follows. */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

int atun_http_session_init(atun_http_session *s, const atun_http_settings *settings,
                           atun_http_router *router, const atun_addr *peer,
                           uint16_t peer_port, atun_tstamp ts,
                           const atun_mem *mem) {
  if (s == NULL || settings == NULL || router == NULL || mem == NULL ||
      ts == ATUN_TSTAMP_MAX || !http_settings_valid(settings))
    return ATUN_ERR_INVALID_ARGUMENT;
  memset(s, 0, sizeof(*s));
  s->hbuf = atun_mem_malloc(mem, settings->header_bytes_max);
  s->hdrs = atun_mem_calloc(mem, settings->headers_max, sizeof(atun_http_header));
  if (s->hbuf == NULL || s->hdrs == NULL) {
    atun_mem_free(mem, s->hbuf);
    atun_mem_free(mem, s->hdrs);
    return ATUN_ERR_NOMEM;
  }
  s->settings = *settings;
  s->router = router;
  s->mem = mem;
  http_parser_init(&s->parser, HTTP_REQUEST);
  s->parser.data = s;
  s->state = S_IDLE;
  s->deadline = ts_add(ts, settings->header_timeout_ns);
  if (peer != NULL) s->req.peer = *peer;
  s->req.peer_port = peer_port;
  s->resp.mem = mem;
  s->resp.body_max = settings->response_bytes_max;
  return 0;
}

static void request_reset(atun_http_session *s) {
  if (s->body != empty_body) atun_mem_free(s->mem, s->body);
  s->body = NULL;
  s->body_len = s->body_cap = 0;
  s->hlen = 0;
  s->nhdrs = 0;
  s->last_cb = CB_NONE;
  s->header_bytes = 0;
  s->complete = 0;
  s->reject_status = 0;
  s->reject_code = s->reject_message = NULL;
  atun_addr peer = s->req.peer;
  uint16_t port = s->req.peer_port;
  memset(&s->req, 0, sizeof(s->req));
  s->req.peer = peer;
  s->req.peer_port = port;
  response_reset(&s->resp);
}

void atun_http_session_free(atun_http_session *s) {
  if (s == NULL || s->hbuf == NULL) return;
  request_reset(s);
  out_drop(s);
  atun_mem_free(s->mem, s->hbuf);
  atun_mem_free(s->mem, s->hdrs);
  s->hbuf = NULL;
  s->hdrs = NULL;
}

/* Writes status line and headers into |head|; returns the length or 0 if
 * they do not fit. */
static size_t head_format(const atun_http_session *s, char *head, size_t cap,
                          int status, const char *ctype, size_t body_len) {
  /* A 204 carries neither a body nor a Content-Length (RFC 9110 8.6). */
  char content[ATUN_HTTP_CONTENT_TYPE_MAX + 64] = "";
  if (status != 204)
    snprintf(content, sizeof(content),
             "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, body_len);
  int n = snprintf(head, cap,
                   "HTTP/1.1 %d %s\r\n"
                   "%s"
                   "Cache-Control: no-store\r\n"
                   "X-Content-Type-Options: nosniff\r\n"
                   "Connection: %s\r\n"
                   "%.*s\r\n",
                   status, reason_phrase(status), content,
                   s->close_after ? "close" : "keep-alive",
                   (int)s->resp.headers_len, s->resp.headers);
  return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

/* Serializes the response into the output.  Returns the bytes queued, or 0
 * if nothing could be (no status: an error body could not be allocated). */
static size_t response_queue(atun_http_session *s) {
  const atun_http_response *r = &s->resp;
  if (r->status == 0) return 0;
  char head[ATUN_HTTP_RESPONSE_HEADERS_BYTES_MAX + 512];
  size_t hlen =
      head_format(s, head, sizeof(head), r->status, r->content_type, r->body_len);
  /* HEAD gets the length a GET would have, not the bytes.  The parser's
   * method is only a guess until the request line is complete. */
  int head_only = s->req.method != NULL && s->parser.method == HTTP_HEAD;
  size_t send_len = head_only ? 0 : r->body_len;
  if (hlen == 0 || out_append(s, head, hlen) != 0) return 0;
  if (send_len > 0 && out_append(s, r->body, send_len) != 0) return 0;
  return hlen + send_len;
}

static void session_log(atun_http_session *s, int status, size_t bytes,
                        atun_tstamp ts) {
  atun_http_access e;
  e.method = s->req.method != NULL ? s->req.method : "-";
  e.path = s->req.path != NULL ? s->req.path : "-";
  e.status = status;
  e.duration_ns = ts >= s->started ? ts - s->started : 0;
  e.peer = &s->req.peer;
  e.peer_port = s->req.peer_port;
  e.body_bytes = s->body_len;
  e.response_bytes = bytes;
  router_record(s->router, &e);
}

/* Queues the response in |s->resp|, which the session answers with a 500
 * if it exceeds response_bytes_max. */
static void response_finish(atun_http_session *s, atun_tstamp ts) {
  if (s->resp.close) s->close_after = 1;
  size_t before = s->out_len;
  size_t n = response_queue(s);
  if (n > s->settings.response_bytes_max) {
    s->out_len = before;
    response_reset(&s->resp);
    atun_http_json_error(&s->resp, 500, "internal", "response too large");
    n = response_queue(s);
  }
  if (n == 0) {
    /* Out of memory even for an error: give up the connection. */
    out_drop(s);
    s->state = S_CLOSED;
    return;
  }
  s->state = s->close_after ? S_CLOSING : S_RESPONDING;
  s->deadline = ts_add(ts, s->settings.write_timeout_ns);
  session_log(s, s->resp.status, n, ts);
}

/* Answers a request the framework refuses, then closes. */
static void respond_error(atun_http_session *s, int status, const char *code,
                          const char *message, atun_tstamp ts) {
  response_reset(&s->resp);
  atun_http_json_error(&s->resp, status, code, message);
  s->close_after = 1;
  response_finish(s, ts);
}

static void respond_route(atun_http_session *s) {
  char allow[256];
  const route *r = router_lookup(s->router, s->req.method, s->req.path, s->id,
                                 allow, sizeof(allow));
  if (r != NULL) {
    s->req.id = r->has_id ? s->id : NULL;
    int rv = r->handler(&s->req, &s->resp, r->user_data);
    if (rv != 0 || s->resp.status == 0) {
      response_reset(&s->resp);
      atun_http_json_error(&s->resp, 500, "internal", "internal error");
    }
  } else if (allow[0] != '\0') {
    atun_http_json_error(&s->resp, 405, "method_not_allowed",
                         "method not allowed for this path");
    atun_http_response_add_header(&s->resp, "Allow", allow);
  } else {
    atun_http_json_error(&s->resp, 404, "not_found", "no such path");
  }
}

static void dispatch(atun_http_session *s, atun_tstamp ts) {
  s->complete = 0;
  s->req.body = s->body;
  s->req.body_len = s->body_len;
  s->req.ts = ts;
  ++s->requests;
  /* An upgrade request leaves the parser in the other protocol: serve it
   * as plain HTTP and end the connection. */
  if (!http_should_keep_alive(&s->parser) || s->parser.upgrade ||
      s->requests >= s->settings.requests_per_conn_max)
    s->close_after = 1;
  respond_route(s);
  response_finish(s, ts);
}

static void parse_failed(atun_http_session *s, atun_tstamp ts) {
  enum http_errno e = HTTP_PARSER_ERRNO(&s->parser);
  if (s->reject_status != 0)
    respond_error(s, s->reject_status, s->reject_code, s->reject_message, ts);
  else if (e == HPE_HEADER_OVERFLOW)
    respond_error(s, 431, "headers_too_large", "request header section too large",
                  ts);
  else
    respond_error(s, 400, "bad_request", http_errno_description(e), ts);
}

static void request_begin(atun_http_session *s, atun_tstamp ts) {
  s->state = S_HEADERS;
  s->started = ts;
  /* The first request's header time runs from the session start. */
  if (s->requests > 0) s->deadline = ts_add(ts, s->settings.header_timeout_ns);
}

static int reading(const atun_http_session *s) { return s->state <= S_BODY; }

/* Runs the parser over one slice; the header phase is cut at the header
 * budget so that its end is found exactly. */
static size_t feed_step(atun_http_session *s, const uint8_t *data, size_t len,
                        atun_tstamp ts) {
  if (s->state == S_IDLE) request_begin(s, ts);
  size_t chunk = len;
  if (s->state == S_HEADERS) {
    size_t room = s->settings.header_bytes_max - s->header_bytes;
    ATUN_ASSERT(room > 0);
    if (chunk > room) chunk = room;
  }
  size_t n =
      http_parser_execute(&s->parser, &parser_settings, (const char *)data, chunk);
  if (s->state == S_HEADERS) s->header_bytes += n;
  if (s->complete)
    dispatch(s, ts);
  else if (HTTP_PARSER_ERRNO(&s->parser) != HPE_OK)
    parse_failed(s, ts);
  else if (s->state == S_HEADERS && s->header_bytes == s->settings.header_bytes_max)
    respond_error(s, 431, "headers_too_large", "request header section too large",
                  ts);
  return n;
}

size_t atun_http_session_feed(atun_http_session *s, const uint8_t *data, size_t len,
                              atun_tstamp ts) {
  if (s->state >= S_CLOSING) return len;
  s->now = ts;
  size_t done = 0;
  while (done < len && s->out_len == 0 && reading(s))
    done += feed_step(s, data + done, len - done, ts);
  return s->state >= S_CLOSING ? len : done;
}

size_t atun_http_session_output(const atun_http_session *s, const uint8_t **pdata) {
  if (s->out == NULL) {
    *pdata = NULL;
    return 0;
  }
  *pdata = s->out + s->out_off;
  return s->out_len - s->out_off;
}

/* The response went out: get ready for the next request. */
static void session_next(atun_http_session *s, atun_tstamp ts) {
  request_reset(s);
  http_parser_pause(&s->parser, 0);
  s->state = S_IDLE;
  s->deadline = ts_add(ts, s->settings.idle_timeout_ns);
}

void atun_http_session_output_consumed(atun_http_session *s, size_t n,
                                       atun_tstamp ts) {
  ATUN_ASSERT(n <= s->out_len - s->out_off);
  s->out_off += n;
  if (s->out_off < s->out_len) return;
  out_drop(s);
  if (s->state == S_RESPONDING)
    session_next(s, ts);
  else if (s->state == S_CLOSING)
    s->state = S_CLOSED;
}

void atun_http_session_eof(atun_http_session *s, atun_tstamp ts) {
  (void)ts;
  if (s->state == S_RESPONDING) {
    s->state = S_CLOSING;
    return;
  }
  if (s->state == S_CLOSING) return;
  /* A partial request can not be finished any more; nobody waits for an
   * interim response. */
  out_drop(s);
  s->state = S_CLOSED;
}

atun_tstamp atun_http_session_expiry(const atun_http_session *s) {
  return s->state == S_CLOSED ? ATUN_TSTAMP_MAX : s->deadline;
}

void atun_http_session_handle_expiry(atun_http_session *s, atun_tstamp ts) {
  if (s->state == S_CLOSED || ts < s->deadline) return;
  if ((s->state == S_HEADERS || s->state == S_BODY) && s->out_len == 0) {
    respond_error(s, 408, "request_timeout", "request not received in time", ts);
    return;
  }
  /* Idle, or a peer that does not read what it is sent: close quietly. */
  out_drop(s);
  s->state = S_CLOSED;
}

int atun_http_session_closing(const atun_http_session *s) {
  return s->state >= S_CLOSING;
}

int atun_http_session_done(const atun_http_session *s) {
  return s->state == S_CLOSED;
}

/* ======================================================================
 * Server: libev + wolfSSL
 * ====================================================================== */

enum { P_HANDSHAKE, P_OPEN, P_LINGER };

typedef struct conn conn;

struct conn {
  atun_https_server *srv;
  conn *prev, *next;
  int fd;
  WOLFSSL *ssl;
  ev_io io;
  ev_timer timer;
  int phase;
  int peer_eof;
  int write_blocked;    /* wolfSSL holds part of a record it could not send */
  atun_tstamp deadline; /* handshake or linger deadline */
  atun_addr peer;
  uint16_t peer_port;
  int http_ready;
  atun_http_session http;
  size_t in_off, in_len;
  size_t linger_bytes;
  uint8_t in[ATUN_HTTPS_READ_BYTES];
};

typedef struct listener {
  atun_https_server *srv;
  int fd;
  ev_io io;
} listener;

struct atun_https_server {
  struct ev_loop *loop;
  atun_https_settings settings;
  atun_http_router *router;
  const atun_mem *mem;
  WOLFSSL_CTX *ctx;
  listener listeners[ATUN_HTTPS_LISTENERS_MAX];
  size_t nlisteners;
  ev_timer accept_pause;
  conn *conns;
  atun_https_stats stats;
  int stopped;
};

void atun_https_settings_default(atun_https_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  atun_http_settings_default(&settings->http);
  settings->connections_max = 128;
  settings->handshake_timeout_ns = 10 * ATUN_NS_PER_S;
  settings->linger_timeout_ns = 2 * ATUN_NS_PER_S;
  settings->backlog = 128;
}

static int https_settings_valid(const atun_https_settings *s) {
  return http_settings_valid(&s->http) && s->connections_max >= 1 &&
         s->connections_max <= ATUN_HTTPS_CONNECTIONS_LIMIT &&
         timeout_valid(s->handshake_timeout_ns) &&
         timeout_valid(s->linger_timeout_ns) && s->backlog >= 1;
}

static atun_tstamp now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (atun_tstamp)t.tv_sec * ATUN_NS_PER_S + (atun_tstamp)t.tv_nsec;
}

/* ---- connections ---- */

static void conn_close(conn *c) {
  atun_https_server *srv = c->srv;
  ev_io_stop(srv->loop, &c->io);
  ev_timer_stop(srv->loop, &c->timer);
  if (c->http_ready) atun_http_session_free(&c->http);
  wolfSSL_free(c->ssl);
  close(c->fd);
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  --srv->stats.open;
  atun_mem_free(srv->mem, c);
}

static void conn_want(conn *c, int events) {
  if (ev_is_active(&c->io) && c->io.events == events) return;
  ev_io_stop(c->srv->loop, &c->io);
  ev_io_set(&c->io, c->fd, events);
  ev_io_start(c->srv->loop, &c->io);
}

static void conn_timer_update(conn *c, atun_tstamp now) {
  atun_tstamp dl =
      c->phase == P_OPEN ? atun_http_session_expiry(&c->http) : c->deadline;
  ev_timer_stop(c->srv->loop, &c->timer);
  if (dl == ATUN_TSTAMP_MAX) return;
  double delay = dl > now ? (double)(dl - now) / (double)ATUN_NS_PER_S : 0.;
  ev_timer_set(&c->timer, delay, 0.);
  ev_timer_start(c->srv->loop, &c->timer);
}

/* Sends close_notify, stops sending and drains the peer for a while; see
 * linger_timeout_ns. */
static void conn_linger(conn *c, atun_tstamp now) {
  /* Nothing more can be said on a stream cut inside a record (a write
   * timeout), nor to a peer that has gone. */
  if (c->peer_eof || c->write_blocked) {
    conn_close(c);
    return;
  }
  wolfSSL_shutdown(c->ssl);
  shutdown(c->fd, SHUT_WR);
  c->phase = P_LINGER;
  c->deadline = ts_add(now, c->srv->settings.linger_timeout_ns);
  conn_want(c, EV_READ);
  conn_timer_update(c, now);
}

static void conn_linger_read(conn *c) {
  for (int i = 0; i < ATUN_HTTPS_IO_ROUNDS_MAX; ++i) {
    ssize_t n = recv(c->fd, c->in, sizeof(c->in), 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      return;
    if (n <= 0) break;
    c->linger_bytes += (size_t)n;
    if (c->linger_bytes > ATUN_HTTPS_LINGER_BYTES_MAX) break;
  }
  conn_close(c);
}

/* Outcome of a TLS call that did not succeed: 0 when it must wait for the
 * socket (the watcher is set), -1 when the connection is broken. */
static int conn_tls_wait(conn *c, int rv) {
  int err = wolfSSL_get_error(c->ssl, rv);
  if (err == WOLFSSL_ERROR_WANT_READ)
    conn_want(c, EV_READ);
  else if (err == WOLFSSL_ERROR_WANT_WRITE)
    conn_want(c, EV_WRITE);
  else
    return -1;
  return 0;
}

/* Sends pending output.  Returns 1 when all of it is gone, 0 when waiting
 * for the socket, -1 when the connection was closed. */
static int conn_flush(conn *c, atun_tstamp now) {
  const uint8_t *p;
  size_t len;
  while ((len = atun_http_session_output(&c->http, &p)) > 0) {
    /* Same pointer and length on a retry after WANT_WRITE, as wolfSSL asks:
     * the output does not change until it has been taken. */
    size_t chunk = len < ATUN_HTTPS_WRITE_BYTES ? len : ATUN_HTTPS_WRITE_BYTES;
    int n = wolfSSL_write(c->ssl, p, (int)chunk);
    c->write_blocked = n <= 0;
    if (n > 0) {
      atun_http_session_output_consumed(&c->http, (size_t)n, now);
      continue;
    }
    if (conn_tls_wait(c, n) == 0) return 0;
    conn_close(c);
    return -1;
  }
  return 1;
}

/* Reads one TLS record's worth.  Returns 1 with input, 0 when waiting, -1
 * when the connection was closed. */
static int conn_read(conn *c, atun_tstamp now) {
  int n = wolfSSL_read(c->ssl, c->in, (int)sizeof(c->in));
  if (n > 0) {
    c->in_off = 0;
    c->in_len = (size_t)n;
    return 1;
  }
  int err = wolfSSL_get_error(c->ssl, n);
  if (err == WOLFSSL_ERROR_ZERO_RETURN || err == SOCKET_PEER_CLOSED_E ||
      (n == 0 && err != WOLFSSL_ERROR_WANT_READ &&
       err != WOLFSSL_ERROR_WANT_WRITE)) {
    c->peer_eof = 1;
    atun_http_session_eof(&c->http, now);
    return 1;
  }
  if (conn_tls_wait(c, n) == 0) return 0;
  conn_close(c);
  return -1;
}

/* One step of the request cycle.  Returns 1 to go on, 0 when waiting, -1
 * when the connection is gone. */
static int conn_step(conn *c, atun_tstamp now) {
  int rv = conn_flush(c, now);
  if (rv <= 0) return rv;
  if (atun_http_session_done(&c->http)) {
    conn_linger(c, now);
    return -1;
  }
  if (c->in_off < c->in_len) {
    size_t n = atun_http_session_feed(&c->http, c->in + c->in_off,
                                      c->in_len - c->in_off, now);
    const uint8_t *p;
    if (n == 0 && atun_http_session_output(&c->http, &p) == 0 &&
        !atun_http_session_done(&c->http)) {
      /* The session took nothing and said nothing: never spin on it. */
      conn_close(c);
      return -1;
    }
    c->in_off += n;
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    return 1;
  }
  if (c->peer_eof) {
    conn_close(c);
    return -1;
  }
  return conn_read(c, now);
}

static void conn_process(conn *c, atun_tstamp now) {
  for (int i = 0; i < ATUN_HTTPS_IO_ROUNDS_MAX; ++i) {
    int rv = conn_step(c, now);
    if (rv < 0) return;
    if (rv == 0) {
      conn_timer_update(c, now);
      return;
    }
  }
  /* Out of rounds with work left: come back after the other watchers. */
  conn_timer_update(c, now);
  ev_feed_event(c->srv->loop, &c->io, EV_CUSTOM);
}

static void conn_established(conn *c, atun_tstamp now) {
  atun_https_server *srv = c->srv;
  if (atun_http_session_init(&c->http, &srv->settings.http, srv->router, &c->peer,
                             c->peer_port, now, srv->mem) != 0) {
    conn_close(c);
    return;
  }
  c->http_ready = 1;
  c->phase = P_OPEN;
  conn_process(c, now);
}

static void conn_handshake(conn *c, atun_tstamp now) {
  int rv = wolfSSL_accept(c->ssl);
  if (rv == WOLFSSL_SUCCESS) {
    conn_established(c, now);
    return;
  }
  if (conn_tls_wait(c, rv) != 0) {
    ++c->srv->stats.handshake_failures;
    conn_close(c);
    return;
  }
  conn_timer_update(c, now);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  conn *c = w->data;
  atun_tstamp now = now_ns();
  if (c->phase == P_HANDSHAKE)
    conn_handshake(c, now);
  else if (c->phase == P_OPEN)
    conn_process(c, now);
  else
    conn_linger_read(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  conn *c = w->data;
  atun_tstamp now = now_ns();
  if (c->phase == P_OPEN) {
    atun_http_session_handle_expiry(&c->http, now);
    conn_process(c, now);
    return;
  }
  if (now < c->deadline) {
    conn_timer_update(c, now);
    return;
  }
  if (c->phase == P_HANDSHAKE) ++c->srv->stats.handshake_timeouts;
  conn_close(c);
}

static void peer_from_sockaddr(conn *c, const struct sockaddr_storage *ss) {
  memset(&c->peer, 0, sizeof(c->peer));
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    c->peer.family = ATUN_AF_INET;
    memcpy(c->peer.bytes, &sin->sin_addr, 4);
    c->peer_port = ntohs(sin->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    c->peer.family = ATUN_AF_INET6;
    memcpy(c->peer.bytes, &sin6->sin6_addr, 16);
    c->peer_port = ntohs(sin6->sin6_port);
    atun_addr_normalize(&c->peer);
  }
}

static int conn_new(atun_https_server *srv, int fd,
                    const struct sockaddr_storage *ss, atun_tstamp now) {
  conn *c = atun_mem_calloc(srv->mem, 1, sizeof(*c));
  if (c == NULL) return ATUN_ERR_NOMEM;
  c->ssl = wolfSSL_new(srv->ctx);
  if (c->ssl == NULL || wolfSSL_set_fd(c->ssl, fd) != WOLFSSL_SUCCESS) {
    wolfSSL_free(c->ssl);
    atun_mem_free(srv->mem, c);
    return ATUN_ERR_NOMEM;
  }
  /* A peer that resets the connection must not raise SIGPIPE. */
  wolfSSL_SetIOWriteFlags(c->ssl, MSG_NOSIGNAL);
  char alpn[] = "http/1.1";
  wolfSSL_UseALPN(c->ssl, alpn, sizeof(alpn) - 1,
                  WOLFSSL_ALPN_CONTINUE_ON_MISMATCH);
  c->srv = srv;
  c->fd = fd;
  peer_from_sockaddr(c, ss);
  c->phase = P_HANDSHAKE;
  c->deadline = ts_add(now, srv->settings.handshake_timeout_ns);
  ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
  c->io.data = c;
  ev_timer_init(&c->timer, conn_timer_cb, 0., 0.);
  c->timer.data = c;
  c->next = srv->conns;
  if (srv->conns != NULL) srv->conns->prev = c;
  srv->conns = c;
  ++srv->stats.open;
  ++srv->stats.accepted;
  ev_io_start(srv->loop, &c->io);
  conn_timer_update(c, now);
  return 0;
}

/* ---- listeners ---- */

static void listeners_set(atun_https_server *srv, int on) {
  for (size_t i = 0; i < srv->nlisteners; ++i) {
    if (on)
      ev_io_start(srv->loop, &srv->listeners[i].io);
    else
      ev_io_stop(srv->loop, &srv->listeners[i].io);
  }
}

/* Out of descriptors or memory: a readable listener would spin the loop,
 * so stop accepting for a moment. */
static void accept_pause(atun_https_server *srv) {
  ++srv->stats.accept_pauses;
  listeners_set(srv, 0);
  ev_timer_set(&srv->accept_pause,
               (double)ATUN_HTTPS_ACCEPT_PAUSE_NS / (double)ATUN_NS_PER_S, 0.);
  ev_timer_start(srv->loop, &srv->accept_pause);
}

static void accept_resume_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  atun_https_server *srv = w->data;
  if (!srv->stopped) listeners_set(srv, 1);
}

static void accept_one(atun_https_server *srv, int fd,
                       const struct sockaddr_storage *ss) {
  if (srv->stats.open >= srv->settings.connections_max) {
    ++srv->stats.refused;
    close(fd);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (conn_new(srv, fd, ss, now_ns()) != 0) {
    ++srv->stats.refused;
    close(fd);
  }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  listener *l = w->data;
  for (int i = 0; i < ATUN_HTTPS_ACCEPTS_MAX; ++i) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd =
        accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      accept_one(l->srv, fd, &ss);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
      accept_pause(l->srv);
    return;
  }
}

static int sockaddr_parse(const char *host, uint16_t port,
                          struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof(*ss));
  struct sockaddr_in *sin = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    *len = sizeof(*sin);
    return 0;
  }
  if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    *len = sizeof(*sin6);
    return 0;
  }
  return ATUN_ERR_INVALID_ARGUMENT;
}

static int errno_to_error(int e) {
  switch (e) {
  case EADDRINUSE: return ATUN_ERR_EXISTS;
  case EACCES:
  case EPERM: return ATUN_ERR_DENIED;
  case EADDRNOTAVAIL:
  case EAFNOSUPPORT: return ATUN_ERR_INVALID_ARGUMENT;
  default: return ATUN_ERR_INTERNAL;
  }
}

static int listen_socket(const struct sockaddr_storage *ss, socklen_t len,
                         int backlog, uint16_t *pport) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      (ss->ss_family == AF_INET6 &&
       setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
      bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, backlog) != 0 ||
      getsockname(fd, (struct sockaddr *)&bound, &blen) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  *pport =
      ntohs(ss->ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                     : ((struct sockaddr_in6 *)&bound)->sin6_port);
  return fd;
}

int atun_https_server_listen(atun_https_server *srv, const char *host,
                             uint16_t port, uint16_t *pport) {
  if (srv == NULL || host == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  if (srv->stopped) return ATUN_ERR_STATE;
  if (srv->nlisteners == ATUN_HTTPS_LISTENERS_MAX) return ATUN_ERR_FULL;
  struct sockaddr_storage ss;
  socklen_t len;
  if (sockaddr_parse(host, port, &ss, &len) != 0) return ATUN_ERR_INVALID_ARGUMENT;
  uint16_t bound_port = 0;
  int fd = listen_socket(&ss, len, srv->settings.backlog, &bound_port);
  if (fd < 0) return errno_to_error(errno);
  listener *l = &srv->listeners[srv->nlisteners++];
  l->srv = srv;
  l->fd = fd;
  ev_io_init(&l->io, accept_cb, fd, EV_READ);
  l->io.data = l;
  ev_io_start(srv->loop, &l->io);
  if (pport != NULL) *pport = bound_port;
  return 0;
}

/* ---- server ---- */

/* AEAD with forward secrecy only; TLS 1.3 suites first. */
static const char cipher_list[] =
    "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
    "TLS13-CHACHA20-POLY1305-SHA256:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-CHACHA20-POLY1305";

/* The public point of an ECC key in X9.63 form; 0 or -1.  (|type| is the
 * first member, at the same place whatever the mp_int size.) */
static int ecc_pub_x963(ecc_key *key, uint8_t *out, word32 *len) {
  if (key->type == ECC_PRIVATEKEY_ONLY && wc_ecc_make_pub(key, NULL) != 0)
    return -1;
  return wc_ecc_export_x963(key, out, len) == 0 ? 0 : -1;
}

/* Both keys are allocated by wolfSSL: ecc_key holds mp_ints whose size the
 * installed headers do not reproduce (see io/ca.c), so it is never declared
 * here. */
static int ecc_points_equal(const uint8_t *spki, word32 spki_len,
                            const uint8_t *kder, word32 klen) {
  ecc_key *pub = wc_ecc_key_new(NULL);
  ecc_key *priv = wc_ecc_key_new(NULL);
  uint8_t p1[160], p2[160];
  word32 l1 = sizeof(p1), l2 = sizeof(p2), i1 = 0, i2 = 0;
  int rv = -1;
  if (pub != NULL && priv != NULL &&
      wc_EccPublicKeyDecode(spki, &i1, pub, spki_len) == 0)
    rv = wc_EccPrivateKeyDecode(kder, &i2, priv, klen) == 0 &&
         ecc_pub_x963(pub, p1, &l1) == 0 && ecc_pub_x963(priv, p2, &l2) == 0 &&
         l1 == l2 && memcmp(p1, p2, l1) == 0;
  wc_ecc_key_free(pub);
  wc_ecc_key_free(priv);
  return rv;
}

/*
 * wolfSSL_CTX_check_private_key() in this wolfSSL accepts an ECC key that is
 * not the certificate's, which would only show up as failed handshakes; so
 * compare the public points here.  Returns 1 (same key), 0 (different or
 * unreadable) or -1 (not an ECC certificate: left to wolfSSL's check).
 */
static int ecc_key_matches(const char *cert_pem, size_t cert_len,
                           const char *key_pem, size_t key_len) {
  uint8_t spki[1024], kder[1024];
  int spki_len = (int)sizeof(spki);
  WOLFSSL_X509 *x = wolfSSL_X509_load_certificate_buffer(
      (const unsigned char *)cert_pem, (int)cert_len, WOLFSSL_FILETYPE_PEM);
  int got = x != NULL &&
            wolfSSL_X509_get_pubkey_buffer(x, spki, &spki_len) == WOLFSSL_SUCCESS;
  wolfSSL_X509_free(x);
  if (!got) return 0;
  int klen = wc_KeyPemToDer((const unsigned char *)key_pem, (int)key_len, kder,
                            (int)sizeof(kder), NULL);
  if (klen <= 0) return 0;
  return ecc_points_equal(spki, (word32)spki_len, kder, (word32)klen);
}

static int ctx_setup(WOLFSSL_CTX *ctx, const char *cert_pem, size_t cert_len,
                     const char *key_pem, size_t key_len) {
  if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_cipher_list(ctx, cipher_list) != WOLFSSL_SUCCESS)
    return ATUN_ERR_INTERNAL;
  if (cert_len > LONG_MAX || key_len > LONG_MAX ||
      wolfSSL_CTX_use_certificate_chain_buffer_format(
          ctx, (const unsigned char *)cert_pem, (long)cert_len,
          WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_use_PrivateKey_buffer(ctx, (const unsigned char *)key_pem,
                                        (long)key_len,
                                        WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS ||
      ecc_key_matches(cert_pem, cert_len, key_pem, key_len) == 0)
    return ATUN_ERR_MALFORMED;
  return 0;
}

int atun_https_server_new(atun_https_server **psrv, struct ev_loop *loop,
                          const atun_https_settings *settings,
                          atun_http_router *router, const char *cert_pem,
                          size_t cert_len, const char *key_pem, size_t key_len,
                          const atun_mem *mem) {
  if (psrv == NULL || loop == NULL || settings == NULL || router == NULL ||
      cert_pem == NULL || key_pem == NULL || mem == NULL ||
      !https_settings_valid(settings))
    return ATUN_ERR_INVALID_ARGUMENT;
  if (wolfSSL_Init() != WOLFSSL_SUCCESS) return ATUN_ERR_INTERNAL;
  atun_https_server *srv = atun_mem_calloc(mem, 1, sizeof(*srv));
  int rv = ATUN_ERR_NOMEM;
  if (srv == NULL) goto fail_init;
  srv->ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
  if (srv->ctx == NULL) goto fail_srv;
  rv = ctx_setup(srv->ctx, cert_pem, cert_len, key_pem, key_len);
  if (rv != 0) goto fail_ctx;
  srv->loop = loop;
  srv->settings = *settings;
  srv->router = router;
  srv->mem = mem;
  ev_timer_init(&srv->accept_pause, accept_resume_cb, 0., 0.);
  srv->accept_pause.data = srv;
  *psrv = srv;
  return 0;
fail_ctx:
  wolfSSL_CTX_free(srv->ctx);
fail_srv:
  atun_mem_free(mem, srv);
fail_init:
  wolfSSL_Cleanup();
  return rv;
}

void atun_https_server_stop(atun_https_server *srv) {
  if (srv->stopped) return;
  srv->stopped = 1;
  listeners_set(srv, 0);
  ev_timer_stop(srv->loop, &srv->accept_pause);
  for (size_t i = 0; i < srv->nlisteners; ++i) close(srv->listeners[i].fd);
  srv->nlisteners = 0;
  while (srv->conns != NULL) conn_close(srv->conns);
}

void atun_https_server_del(atun_https_server *srv) {
  if (srv == NULL) return;
  atun_https_server_stop(srv);
  wolfSSL_CTX_free(srv->ctx);
  atun_mem_free(srv->mem, srv);
  wolfSSL_Cleanup();
}

void atun_https_server_stats(const atun_https_server *srv, atun_https_stats *out) {
  *out = srv->stats;
}
