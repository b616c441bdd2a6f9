/*
 * The HTTPS/1.1 server the management API (SPEC §6) runs on.
 *
 * Three layers, each usable without the next:
 *
 *   atun_http_router   method + path pattern -> handler; access log hook and
 *                      per-status counters.  Shared by every connection.
 *   atun_http_session  one connection's HTTP/1.1 state without any I/O: bytes
 *                      in (atun_http_session_feed), response bytes out
 *                      (atun_http_session_output), time passed in, one expiry
 *                      to arm a timer from.  Tests and the fuzzer drive it
 *                      directly.
 *   atun_https_server  the libev + wolfSSL adapter: listening sockets, TLS,
 *                      one connection object per client embedding its ev_io,
 *                      its ev_timer and its session.
 *
 * Behaviour fixed here (docs/api.md has the operator's view):
 * - One request at a time per connection.  Pipelined bytes wait unparsed
 *   until the previous response has been taken by the peer; no input is read
 *   while output is pending, so a client that does not read can not make the
 *   server buffer anything.
 * - Bodies need Content-Length.  A chunked request body is refused with 411
 *   (no API request needs streaming, and a declared length lets 413 be sent
 *   before any body byte is read).  Content-Length above body_bytes_max gets
 *   413 from the header alone.  "Expect: 100-continue" is answered with
 *   100 Continue once the headers pass every check.
 * - Every error the framework produces has the JSON shape
 *   {"error": {"code": "...", "message": "..."}}.  Errors found while
 *   parsing (400, 408, 411, 413, 417, 431, 505) close the connection after
 *   the response; routing errors (404, 405) and handler responses keep it.
 * - Paths are matched as sent: no percent-decoding, no dot-segment removal,
 *   no trailing-slash folding.  A route is an exact path or a path with one
 *   "{id}" segment.  Exact routes win: a path that equals an exact route is
 *   that route's resource even if a "{id}" route would also match it.
 * - The connection limit is enforced at accept: a connection beyond
 *   connections_max is accepted and closed at once, before any TLS, so an
 *   overload costs no handshake and holds no memory.
 */
#ifndef ATUN_HTTPS_H
#define ATUN_HTTPS_H

#include <http_parser.h>

#include "addr.h"
#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

/* ---- limits ------------------------------------------------------------- */

#define ATUN_HTTP_ROUTES_MAX 64
#define ATUN_HTTP_PATTERN_MAX 128                 /* bytes of a route pattern */
#define ATUN_HTTP_METHOD_MAX 15                   /* bytes of a method name */
#define ATUN_HTTP_ID_MAX 128                      /* bytes of a captured {id} */
#define ATUN_HTTP_RESPONSE_HEADERS_BYTES_MAX 1024 /* extra response headers */
#define ATUN_HTTP_CONTENT_TYPE_MAX 127
#define ATUN_HTTP_STATUS_MIN 100
#define ATUN_HTTP_STATUS_MAX 599

/* Bounds of the settings, checked at init. */
#define ATUN_HTTP_HEADER_BYTES_MIN 256
#define ATUN_HTTP_HEADER_BYTES_LIMIT 65536 /* below http_parser's own 80 KiB */
#define ATUN_HTTP_HEADERS_LIMIT 1024
#define ATUN_HTTP_BODY_BYTES_LIMIT ((size_t)64 << 20)
#define ATUN_HTTP_RESPONSE_BYTES_MIN 1024
#define ATUN_HTTP_RESPONSE_BYTES_LIMIT ((size_t)256 << 20)
#define ATUN_HTTP_TIMEOUT_MAX_NS ((uint64_t)24 * 3600 * ATUN_NS_PER_S)

typedef struct atun_http_settings {
  /* Request line plus header lines, the blank line included; beyond: 431. */
  size_t header_bytes_max; /* default 8192 */
  size_t headers_max;      /* header lines; beyond: 431; default 64 */
  size_t body_bytes_max;   /* Content-Length beyond: 413; default 65536 */
  /* A handler's response beyond this (headers included) becomes a 500. */
  size_t response_bytes_max; /* default 4 MiB */
  /* First byte of a request to the end of its headers (for the first request
   * of a connection: session start to the end of its headers).  On expiry a
   * started request gets 408; a connection that sent nothing is closed
   * without a response. */
  uint64_t header_timeout_ns; /* default 10 s */
  uint64_t body_timeout_ns;   /* end of headers to end of body: 408; 30 s */
  /* Wait for the next request on a kept-alive connection; then close
   * without a response. */
  uint64_t idle_timeout_ns; /* default 60 s */
  /* A response not taken by the peer within this time: close at once. */
  uint64_t write_timeout_ns; /* default 30 s */
  /* The response to this request carries "Connection: close". */
  uint32_t requests_per_conn_max; /* default 1000 */
} atun_http_settings;

void atun_http_settings_default(atun_http_settings *settings);

/* ---- requests and responses ---------------------------------------------- */

typedef struct atun_http_header {
  const char *name;  /* as sent (a token) */
  const char *value; /* leading and trailing blanks removed */
} atun_http_header;

/* What a handler sees.  Every pointer is valid during the handler call only. */
typedef struct atun_http_request {
  const char *method;  /* "GET", "POST", ... */
  const char *path;    /* starts with '/', no query, not decoded */
  const char *query;   /* after '?', "" when absent, not decoded */
  const char *id;      /* the "{id}" segment, NULL for an exact route */
  const uint8_t *body; /* |body_len| bytes followed by a NUL */
  size_t body_len;
  const atun_http_header *headers;
  size_t nheaders;
  atun_addr peer; /* IPv4-mapped IPv6 folded to IPv4 */
  uint16_t peer_port;
  atun_tstamp ts; /* when the request was complete */
} atun_http_request;

/* The value of the first header named |name| (ASCII case-insensitive), or
 * NULL. */
const char *atun_http_request_header(const atun_http_request *req,
                                     const char *name);

/* Finds "Authorization: Bearer <token>" (scheme case-insensitive) and points
 * |*ptoken| at the token, |*plen| its length.  Returns 0,
 * ATUN_ERR_NOT_FOUND (no Authorization header) or ATUN_ERR_MALFORMED
 * (another scheme, or an empty token). */
int atun_http_request_bearer(const atun_http_request *req, const char **ptoken,
                             size_t *plen);

/* What a handler fills, through the functions below (and the JSON helpers
 * of http_json.h).  The fields are private. */
typedef struct atun_http_response {
  const atun_mem *mem;
  size_t body_max;
  int status; /* 0 until a body is set */
  char *body;
  size_t body_len;
  char content_type[ATUN_HTTP_CONTENT_TYPE_MAX + 1];
  char headers[ATUN_HTTP_RESPONSE_HEADERS_BYTES_MAX];
  size_t headers_len;
  int close;
} atun_http_response;

/* Sets the status and a copy of |body| (|len| bytes, NULL allowed when |len|
 * is 0) sent with |content_type|.  Replaces an earlier body.  A 204 must
 * have no body and is sent without Content-Type and Content-Length.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (|status| outside 200..599, a body
 * with 204, |content_type| empty, too long or not printable ASCII),
 * ATUN_ERR_NOBUF (|len| above the session's response_bytes_max) or
 * ATUN_ERR_NOMEM. */
int atun_http_response_set_body(atun_http_response *resp, int status,
                                const char *content_type, const void *body,
                                size_t len);

/* Adds the header "|name|: |value|".  Content-Length, Content-Type,
 * Connection and Transfer-Encoding belong to the framework.  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT (|name| not a token or reserved, |value| with a
 * control character other than tab) or ATUN_ERR_FULL (more than
 * ATUN_HTTP_RESPONSE_HEADERS_BYTES_MAX bytes of extra headers). */
int atun_http_response_add_header(atun_http_response *resp, const char *name,
                                  const char *value);

/* Closes the connection after this response. */
void atun_http_response_set_close(atun_http_response *resp);

/* ---- router --------------------------------------------------------------- */

/*
 * A handler fills |resp| and returns 0.  Returning nonzero, or returning 0
 * with no status set, replaces whatever it set with a 500 "internal" error.
 * Handlers run synchronously on the loop thread.
 */
typedef int (*atun_http_handler)(const atun_http_request *req,
                                 atun_http_response *resp, void *user_data);

/* One line of the access log, given once per response the server sends. */
typedef struct atun_http_access {
  const char *method; /* "-" when the request line was not understood */
  const char *path;   /* "-" likewise */
  int status;
  uint64_t duration_ns; /* first byte of the request to response queued */
  const atun_addr *peer;
  uint16_t peer_port;
  size_t body_bytes;     /* request body */
  size_t response_bytes; /* status line, headers and body */
} atun_http_access;

typedef void (*atun_http_access_fn)(const atun_http_access *entry, void *user_data);

typedef struct atun_http_router atun_http_router;

/* Returns 0, ATUN_ERR_INVALID_ARGUMENT or ATUN_ERR_NOMEM. */
int atun_http_router_new(atun_http_router **prouter, const atun_mem *mem);

/* Frees |router| (NULL allowed).  No session or server may still use it. */
void atun_http_router_del(atun_http_router *router);

/*
 * Routes |method| requests for |pattern| to |handler|.  |pattern| starts with
 * '/', holds no '?', '#', '%' or control characters and at most one "{id}",
 * which must be a whole segment ("/agents/{id}", "/a/{id}/b").  A captured
 * id is 1..ATUN_HTTP_ID_MAX bytes without '/'.  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT, ATUN_ERR_EXISTS (same method and pattern) or
 * ATUN_ERR_FULL (ATUN_HTTP_ROUTES_MAX routes).
 */
int atun_http_router_add(atun_http_router *router, const char *method,
                         const char *pattern, atun_http_handler handler,
                         void *user_data);

/* Sets (or clears, with NULL) the access log hook. */
void atun_http_router_set_access_log(atun_http_router *router,
                                     atun_http_access_fn fn, void *user_data);

/* Responses sent with |status| so far (0 outside 100..599). */
uint64_t atun_http_router_status_count(const atun_http_router *router, int status);

/* ---- session: HTTP/1.1 over a byte stream, no I/O ------------------------ */

/* Caller-owned storage; every field is private. */
typedef struct atun_http_session {
  http_parser parser;
  atun_http_settings settings;
  atun_http_router *router;
  const atun_mem *mem;
  int state;
  atun_tstamp deadline;
  atun_tstamp now;     /* |ts| of the feed call being parsed */
  atun_tstamp started; /* first byte of the current request */
  uint32_t requests;
  size_t header_bytes; /* header-phase bytes of the current request */
  char *hbuf;          /* URL and header text, header_bytes_max bytes */
  size_t hlen;
  size_t url_len;
  atun_http_header *hdrs; /* headers_max entries, offsets until complete */
  size_t nhdrs;
  int last_cb;
  int complete;
  int close_after;
  uint8_t *body;
  size_t body_len, body_cap;
  int reject_status;
  const char *reject_code;
  const char *reject_message;
  uint8_t *out;
  size_t out_len, out_off;
  atun_http_request req;
  char id[ATUN_HTTP_ID_MAX + 1];
  atun_http_response resp;
} atun_http_session;

/*
 * Prepares |s| for a connection from |peer| (NULL: unknown) port |peer_port|
 * that starts at |ts|.  |settings| is copied; |router| must outlive |s|.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (a setting out of bounds, |ts| unset)
 * or ATUN_ERR_NOMEM.  On error there is nothing to free.
 */
int atun_http_session_init(atun_http_session *s, const atun_http_settings *settings,
                           atun_http_router *router, const atun_addr *peer,
                           uint16_t peer_port, atun_tstamp ts, const atun_mem *mem);

/* Releases what |s| holds. */
void atun_http_session_free(atun_http_session *s);

/*
 * Parses up to |len| bytes received at |ts|, running at most one handler.
 * Returns how many bytes were taken: fewer than |len| when a response is
 * pending (the rest is the next pipelined request: feed it again once the
 * output is drained), 0 while any output is pending, |len| once the session
 * is closing (the rest is discarded).
 */
size_t atun_http_session_feed(atun_http_session *s, const uint8_t *data, size_t len,
                              atun_tstamp ts);

/* Points |*pdata| at the pending output and returns its length (0: none). */
size_t atun_http_session_output(const atun_http_session *s, const uint8_t **pdata);

/* The peer took |n| bytes of the output at |ts|. */
void atun_http_session_output_consumed(atun_http_session *s, size_t n,
                                       atun_tstamp ts);

/* The peer ended its side of the stream at |ts|.  A response that is
 * pending is still sent; otherwise the session closes. */
void atun_http_session_eof(atun_http_session *s, atun_tstamp ts);

/* The next deadline, ATUN_TSTAMP_MAX when none. */
atun_tstamp atun_http_session_expiry(const atun_http_session *s);

/* Acts on an expired deadline at |ts| (nothing if none is due). */
void atun_http_session_handle_expiry(atun_http_session *s, atun_tstamp ts);

/* Nonzero when the connection should be closed once the pending output (if
 * any) is sent. */
int atun_http_session_closing(const atun_http_session *s);

/* Nonzero when the connection should be closed now: nothing more will be
 * produced and nothing is pending. */
int atun_http_session_done(const atun_http_session *s);

/* ---- server: libev + wolfSSL --------------------------------------------- */

#define ATUN_HTTPS_LISTENERS_MAX 4
#define ATUN_HTTPS_CONNECTIONS_LIMIT 65536
/* Bytes read from or written to TLS at a time: one record. */
#define ATUN_HTTPS_READ_BYTES 16384
#define ATUN_HTTPS_WRITE_BYTES 16384
/* Reads or writes per connection per event, so one busy client can not
 * starve the loop. */
#define ATUN_HTTPS_IO_ROUNDS_MAX 16
/* Connections accepted per listener event. */
#define ATUN_HTTPS_ACCEPTS_MAX 32
/* Pause after accept() runs out of descriptors or memory. */
#define ATUN_HTTPS_ACCEPT_PAUSE_NS (100 * ATUN_NS_PER_MS)
/* Bytes discarded while lingering before the close. */
#define ATUN_HTTPS_LINGER_BYTES_MAX ((size_t)256 << 10)

typedef struct atun_https_settings {
  atun_http_settings http;
  size_t connections_max;        /* default 128; beyond: closed at accept */
  uint64_t handshake_timeout_ns; /* TCP accept to TLS established; 10 s */
  /* After the last response of a connection the server sends close_notify,
   * shuts down its sending side and reads (and drops) what the client still
   * sends for up to this long, so that closing with unread input (a 413, for
   * instance) does not reset the connection before the client has read the
   * response. */
  uint64_t linger_timeout_ns; /* default 2 s */
  int backlog;                /* listen(2) backlog; default 128 */
} atun_https_settings;

void atun_https_settings_default(atun_https_settings *settings);

typedef struct atun_https_stats {
  uint64_t accepted; /* connections taken into service */
  uint64_t refused;  /* closed at accept (limit or no memory) */
  uint64_t handshake_failures;
  uint64_t handshake_timeouts;
  uint64_t accept_pauses; /* out of descriptors or memory at accept */
  size_t open;            /* connections open now */
} atun_https_stats;

typedef struct atun_https_server atun_https_server;

/*
 * Creates a server on |loop| serving |router| with the certificate chain
 * |cert_pem| (leaf first) and private key |key_pem|, PEM buffers of the given
 * lengths (copied by wolfSSL).  TLS 1.2 and 1.3, AEAD ECDHE suites only.
 * Listens nowhere until atun_https_server_listen().  Returns 0,
 * ATUN_ERR_INVALID_ARGUMENT (a NULL argument or a setting out of bounds),
 * ATUN_ERR_MALFORMED (the certificate or key can not be loaded, or do not
 * match), ATUN_ERR_NOMEM or ATUN_ERR_INTERNAL (wolfSSL failed).
 */
int atun_https_server_new(atun_https_server **psrv, struct ev_loop *loop,
                          const atun_https_settings *settings,
                          atun_http_router *router, const char *cert_pem,
                          size_t cert_len, const char *key_pem, size_t key_len,
                          const atun_mem *mem);

/*
 * Listens on the numeric IPv4 or IPv6 address |host| (an IPv6 socket is
 * IPv6-only, so "::" and "0.0.0.0" can both be used), port |port| (0: an
 * ephemeral port).  The bound port goes to |*pport| unless it is NULL.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (|host| not a numeric address or not
 * local), ATUN_ERR_FULL (ATUN_HTTPS_LISTENERS_MAX listeners), ATUN_ERR_STATE
 * (stopped), ATUN_ERR_EXISTS (address in use), ATUN_ERR_DENIED (not
 * permitted) or ATUN_ERR_INTERNAL (another socket error; errno tells which).
 */
int atun_https_server_listen(atun_https_server *srv, const char *host,
                             uint16_t port, uint16_t *pport);

/* Stops accepting and closes every connection at once (a pending response
 * is dropped).  Must run on the loop thread.  Calling it again does
 * nothing. */
void atun_https_server_stop(atun_https_server *srv);

/* Stops |srv| if needed and frees it (NULL allowed). */
void atun_https_server_del(atun_https_server *srv);

void atun_https_server_stats(const atun_https_server *srv, atun_https_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_HTTPS_H */
