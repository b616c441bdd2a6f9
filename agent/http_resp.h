/*
 * Reading one HTTP/1.1 response, as `atun-agent enroll` gets it from the
 * gateway's API, with Debian's http_parser and stated bounds: the status
 * line and headers at most AGENT_HTTP_HEADER_MAX bytes, the body at most
 * |body_max| bytes (checked against Content-Length before any body byte is
 * kept, and again as chunks arrive).  Interim 1xx responses are skipped.
 * No I/O: bytes go in, a status and a body come out.
 */
#ifndef ATUN_AGENT_HTTP_RESP_H
#define ATUN_AGENT_HTTP_RESP_H

#include <http_parser.h>

#include "atun.h"

#define AGENT_HTTP_HEADER_MAX ((size_t)16 * 1024)
/* Largest |body_max| accepted. */
#define AGENT_HTTP_BODY_LIMIT ((size_t)1 << 20)

typedef struct agent_http_reader {
  const atun_mem *mem;
  http_parser parser;
  http_parser_settings settings;
  size_t header_bytes;
  size_t body_max;
  char *body; /* NUL-terminated, |body_len| bytes, from |mem| */
  size_t body_len;
  size_t body_cap;
  int status;
  int done;
  int error;       /* sticky ATUN_ERR_*, 0 while usable */
  const char *why; /* static text naming the error */
} agent_http_reader;

/* Prepares |r| for one response whose body may hold |body_max| bytes,
 * stored in memory from |mem|.  Returns 0 or ATUN_ERR_INVALID_ARGUMENT (0
 * or above AGENT_HTTP_BODY_LIMIT). */
int agent_http_reader_init(agent_http_reader *r, size_t body_max,
                           const atun_mem *mem);

void agent_http_reader_free(agent_http_reader *r);

/* Feeds |len| received bytes.  Returns 1 once a final (non-1xx) response is
 * complete (later bytes are ignored), 0 when more is needed, or a sticky
 * error: ATUN_ERR_MALFORMED (not HTTP), ATUN_ERR_LIMIT (headers or body
 * above the bounds) or ATUN_ERR_NOMEM; |why| names it. */
int agent_http_reader_feed(agent_http_reader *r, const char *data, size_t len);

/* The server closed the connection: a body without length ends here.
 * Returns 1 (complete) or ATUN_ERR_TRUNCATED / the sticky error. */
int agent_http_reader_eof(agent_http_reader *r);

#endif /* ATUN_AGENT_HTTP_RESP_H */
