/*
 * The enrollment answer (see enroll_resp.h), on cJSON.
 */
#include <cjson/cJSON.h>

#include <string.h>

#include "enroll_resp.h"

/* Copies |s| into |out| (room |cap|) keeping printable ASCII only: the text
 * came from the network and ends up on a terminal. */
static void copy_printable(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; s != NULL && *s != '\0' && n + 1 < cap; ++s)
    out[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
  out[n] = '\0';
}

static const char *string_member(const cJSON *obj, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void read_error(agent_enroll_answer *out, const cJSON *root) {
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
  if (!cJSON_IsObject(err)) return;
  copy_printable(out->code, sizeof(out->code), string_member(err, "code"));
  copy_printable(out->message, sizeof(out->message), string_member(err, "message"));
}

static int bad(agent_enroll_answer *out, const char *why) {
  out->why = why;
  return AGENT_ENROLL_BAD_ANSWER;
}

static int copy_pem(char *out, size_t cap, const char *pem) {
  size_t n = pem != NULL ? strlen(pem) : 0;
  if (n == 0 || n >= cap) return -1;
  memcpy(out, pem, n + 1);
  return 0;
}

static int read_ok(agent_enroll_answer *out, const cJSON *root) {
  const char *id = string_member(root, "agent_id");
  const char *cert = string_member(root, "client_cert_pem");
  const char *ca = string_member(root, "ca_cert_pem");
  const char *ep = string_member(root, "quic_endpoint");
  const char *pin = string_member(root, "server_spki_sha256");
  if (id == NULL || cert == NULL || ca == NULL || ep == NULL || pin == NULL)
    return bad(out, "a required field is missing or not a string");
  if (!atun_uuid_valid(id, strlen(id))) return bad(out, "agent_id is not a UUID");
  memcpy(out->agent_id, id, ATUN_UUID_STRLEN);
  if (copy_pem(out->client_cert_pem, sizeof(out->client_cert_pem), cert) != 0 ||
      copy_pem(out->ca_cert_pem, sizeof(out->ca_cert_pem), ca) != 0)
    return bad(out, "a certificate field is empty or too long");
  atun_target host;
  uint16_t port;
  if (atun_hostport_parse(&host, &port, ep, strlen(ep), 0) != 0)
    return bad(out, "quic_endpoint is not host:port");
  atun_hostport_format(out->quic_endpoint, &host, port);
  if (atun_spki_pin_parse(out->server_spki_sha256, pin, strlen(pin)) != 0)
    return bad(out, "server_spki_sha256 is not a SHA-256 pin");
  return AGENT_ENROLL_OK;
}

static int classify(int status) {
  if (status >= 200 && status < 300) return AGENT_ENROLL_OK;
  if (status == 408 || status == 429 || (status >= 500 && status < 600))
    return AGENT_ENROLL_RETRY;
  if (status >= 400 && status < 500) return AGENT_ENROLL_REFUSED;
  return AGENT_ENROLL_BAD_ANSWER;
}

int agent_enroll_answer_parse(agent_enroll_answer *out, int status,
                              const char *body, size_t len) {
  memset(out, 0, sizeof(*out));
  out->status = status;
  int kind = classify(status);
  if (kind == AGENT_ENROLL_BAD_ANSWER) return bad(out, "unexpected HTTP status");
  cJSON *root = len > 0 ? cJSON_ParseWithLength(body, len) : NULL;
  int rv = kind;
  if (kind == AGENT_ENROLL_OK) {
    rv = cJSON_IsObject(root) ? read_ok(out, root)
                              : bad(out, "the body is not a JSON object");
  } else if (cJSON_IsObject(root)) {
    /* An error without the documented body still is an error. */
    read_error(out, root);
  }
  cJSON_Delete(root);
  return rv;
}
