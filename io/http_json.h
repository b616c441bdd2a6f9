/*
 * JSON in and out of the HTTPS API (SPEC §6), on cJSON.
 *
 * Every error body has one shape:
 *
 *   {"error": {"code": "<machine-readable>", "message": "<for people>"}}
 *
 * Codes used by the framework: bad_request, not_found, method_not_allowed,
 * request_timeout, length_required, payload_too_large, expectation_failed,
 * headers_too_large, http_version_not_supported, unsupported_media_type,
 * invalid_json, missing_field, invalid_field, too_many_requests, internal,
 * unavailable.  docs/api.md lists them with their statuses.
 *
 * cJSON allocates through its own global hooks, not through |atun_mem|; the
 * bodies built here are copied into the response's allocator.
 */
#ifndef ATUN_HTTP_JSON_H
#define ATUN_HTTP_JSON_H

#include <cjson/cJSON.h>

#include "https.h"
#include "ratelimit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Longest "code" and "message" accepted by atun_http_json_error. */
#define ATUN_HTTP_JSON_CODE_MAX 64
#define ATUN_HTTP_JSON_MESSAGE_MAX 512

/*
 * Sets |resp| to |status| with |json| printed compactly as an
 * application/json body.  Takes |json| in every case (it is deleted before
 * returning).  Returns 0, ATUN_ERR_INVALID_ARGUMENT (|json| NULL or |status|
 * outside 200..599), ATUN_ERR_NOBUF (larger than the response limit) or
 * ATUN_ERR_NOMEM.
 */
int atun_http_json_respond(atun_http_response *resp, int status, cJSON *json);

/*
 * Sets |resp| to |status| with the error body for |code| and |message|.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (|status| outside 400..599, |code|
 * empty or longer than ATUN_HTTP_JSON_CODE_MAX, |message| NULL or longer than
 * ATUN_HTTP_JSON_MESSAGE_MAX) or ATUN_ERR_NOMEM.
 */
int atun_http_json_error(atun_http_response *resp, int status, const char *code,
                         const char *message);

/*
 * Parses the body of |req| as one JSON object.  The Content-Type must be
 * application/json (parameters such as charset allowed).  On success
 * |*pjson| holds the object (the caller deletes it).  On failure |resp| holds
 * the error to send: 415 unsupported_media_type, or 400 invalid_json (not
 * JSON, trailing bytes, or not an object).
 * Returns 0, ATUN_ERR_MALFORMED (|resp| filled) or ATUN_ERR_NOMEM (|resp|
 * may be unset: the framework then answers 500).
 */
int atun_http_json_parse_body(const atun_http_request *req,
                              atun_http_response *resp, cJSON **pjson);

/*
 * Reads member |name| of |obj| as a string of 1..|len_max| bytes without NUL.
 * An absent (or null) member is an error only if |required|; then |*pvalue|
 * is NULL.  On failure |resp| holds 400 missing_field or invalid_field,
 * naming the member.  Returns 0, ATUN_ERR_MISSING_FIELD or
 * ATUN_ERR_MALFORMED (|resp| filled in both cases).
 */
int atun_http_json_get_string(const cJSON *obj, const char *name, int required,
                              size_t len_max, const char **pvalue,
                              atun_http_response *resp);

/*
 * Takes a token for the peer of |req| from |rl| at the request's time.
 * When none is left, |resp| holds 429 too_many_requests with a Retry-After
 * header (whole seconds, rounded up).  Returns 0, ATUN_ERR_WOULDBLOCK
 * (|resp| filled) or ATUN_ERR_INVALID_ARGUMENT (unknown peer family).
 */
int atun_http_json_ratelimit(atun_ratelimit *rl, const atun_http_request *req,
                             atun_http_response *resp);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_HTTP_JSON_H */
