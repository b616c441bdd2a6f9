#include "http_json.h"

#include <stdio.h>
#include <string.h>

int atun_http_json_respond(atun_http_response *resp, int status, cJSON *json) {
  if (json == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  if (resp == NULL || status < 200 || status > ATUN_HTTP_STATUS_MAX) {
    cJSON_Delete(json);
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  char *text = cJSON_PrintUnformatted(json);
  cJSON_Delete(json);
  if (text == NULL) return ATUN_ERR_NOMEM;
  int rv = atun_http_response_set_body(resp, status, "application/json", text,
                                       strlen(text));
  cJSON_free(text);
  return rv;
}

int atun_http_json_error(atun_http_response *resp, int status, const char *code,
                         const char *message) {
  if (resp == NULL || status < 400 || status > ATUN_HTTP_STATUS_MAX ||
      code == NULL || code[0] == '\0' || strlen(code) > ATUN_HTTP_JSON_CODE_MAX ||
      message == NULL || strlen(message) > ATUN_HTTP_JSON_MESSAGE_MAX)
    return ATUN_ERR_INVALID_ARGUMENT;
  cJSON *root = cJSON_CreateObject();
  cJSON *err = cJSON_AddObjectToObject(root, "error");
  if (err == NULL || cJSON_AddStringToObject(err, "code", code) == NULL ||
      cJSON_AddStringToObject(err, "message", message) == NULL) {
    cJSON_Delete(root);
    return ATUN_ERR_NOMEM;
  }
  return atun_http_json_respond(resp, status, root);
}

/* "application/json", any case, optionally followed by parameters. */
static int media_type_is_json(const char *ct) {
  static const char want[] = "application/json";
  size_t n = sizeof(want) - 1;
  while (*ct == ' ' || *ct == '\t') ++ct;
  for (size_t i = 0; i < n; ++i) {
    char c = ct[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c + ('a' - 'A'));
    if (c != want[i]) return 0;
  }
  return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t';
}

static int only_space(const char *p, const char *end) {
  for (; p < end; ++p)
    if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') return 0;
  return 1;
}

static int invalid_json(atun_http_response *resp, const char *message) {
  int rv = atun_http_json_error(resp, 400, "invalid_json", message);
  return rv == 0 ? ATUN_ERR_MALFORMED : rv;
}

int atun_http_json_parse_body(const atun_http_request *req,
                              atun_http_response *resp, cJSON **pjson) {
  *pjson = NULL;
  const char *ct = atun_http_request_header(req, "content-type");
  if (ct == NULL || !media_type_is_json(ct)) {
    int rv = atun_http_json_error(resp, 415, "unsupported_media_type",
                                  "Content-Type must be application/json");
    return rv == 0 ? ATUN_ERR_MALFORMED : rv;
  }
  const char *text = (const char *)req->body;
  const char *end = NULL;
  cJSON *json = cJSON_ParseWithLengthOpts(text, req->body_len, &end, 0);
  if (json == NULL) return invalid_json(resp, "body is not valid JSON");
  if (!only_space(end, text + req->body_len)) {
    cJSON_Delete(json);
    return invalid_json(resp, "bytes after the JSON value");
  }
  if (!cJSON_IsObject(json)) {
    cJSON_Delete(json);
    return invalid_json(resp, "body must be a JSON object");
  }
  *pjson = json;
  return 0;
}

static int field_error(atun_http_response *resp, int err, const char *code,
                       const char *message) {
  int rv = atun_http_json_error(resp, 400, code, message);
  return rv == 0 ? err : rv;
}

int atun_http_json_get_string(const cJSON *obj, const char *name, int required,
                              size_t len_max, const char **pvalue,
                              atun_http_response *resp) {
  *pvalue = NULL;
  char message[ATUN_HTTP_JSON_MESSAGE_MAX + 1];
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
  if (item == NULL || cJSON_IsNull(item)) {
    if (!required) return 0;
    snprintf(message, sizeof(message), "missing field '%.64s'", name);
    return field_error(resp, ATUN_ERR_MISSING_FIELD, "missing_field", message);
  }
  size_t len = cJSON_IsString(item) && item->valuestring != NULL
                   ? strlen(item->valuestring)
                   : 0;
  if (len == 0 || len > len_max) {
    snprintf(message, sizeof(message),
             "field '%.64s' must be a string of 1 to %zu bytes", name, len_max);
    return field_error(resp, ATUN_ERR_MALFORMED, "invalid_field", message);
  }
  *pvalue = item->valuestring;
  return 0;
}

int atun_http_json_ratelimit(atun_ratelimit *rl, const atun_http_request *req,
                             atun_http_response *resp) {
  uint64_t wait_ns = 0;
  int rv = atun_ratelimit_take(rl, &req->peer, req->ts, &wait_ns);
  if (rv != ATUN_ERR_WOULDBLOCK) return rv;
  char secs[24];
  snprintf(secs, sizeof(secs), "%llu",
           (unsigned long long)((wait_ns + ATUN_NS_PER_S - 1) / ATUN_NS_PER_S));
  atun_http_json_error(resp, 429, "too_many_requests",
                       "too many requests from this address; retry later");
  atun_http_response_add_header(resp, "Retry-After", secs);
  return ATUN_ERR_WOULDBLOCK;
}
