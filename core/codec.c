/*
 * Encoders and decoders of the version 2 frames.  docs/protocol.md is the
 * byte-level reference; the field ids below are on the wire and must never
 * be renumbered.
 */
#include <string.h>

#include "codec.h"

/* --- field ids ------------------------------------------------------------------ */

enum { HELLO_MIN = 1, HELLO_MAX = 2, HELLO_SOFTWARE = 3 };
enum {
  ACK_CHOSEN = 1,
  ACK_HEARTBEAT = 2,
  ACK_OFFLINE = 3,
  ACK_AGENT_ID = 4,
  ACK_SOFTWARE = 5
};
enum { ROUTE_EPOCH = 1, ROUTE_SUBNET = 2, ROUTE_DOMAIN = 3 };
enum { DOMAIN_NAME = 1, DOMAIN_AUTO = 2 };
enum { HB_SEQ = 1, HB_SENT_AT = 2, HB_STREAMS = 3 };
enum { HBACK_SEQ = 1, HBACK_ECHO = 2 };
enum { BYE_REASON = 1, BYE_MESSAGE = 2 };
enum { ERR_CODE = 1, ERR_MESSAGE = 2, ERR_MIN = 3, ERR_MAX = 4 };
enum { CSR_DER = 1, CSR_ROTATE = 2 };
enum { CERT_STATUS = 1, CERT_DER = 2, CERT_MESSAGE = 3 };
enum { CONN_SESSION = 1, CONN_PORT = 2, CONN_ADDR = 3, CONN_HOST = 4 };
enum { RESP_STATUS = 1, RESP_MESSAGE = 2 };

#define BIT(id) ((uint64_t)1 << (id))

/* Subnet value: prefix length byte followed by the whole address. */
#define SUBNET4_LEN 5
#define SUBNET6_LEN 17

/* --- frame types, names --------------------------------------------------------- */

int atun_frame_type_known(uint8_t type) {
  return (type >= ATUN_FRAME_HELLO && type <= ATUN_FRAME_CERT_RENEW_RESPONSE) ||
         atun_frame_type_is_session(type);
}

int atun_frame_type_is_session(uint8_t type) {
  return type == ATUN_FRAME_CONNECT_REQUEST || type == ATUN_FRAME_CONNECT_RESPONSE;
}

size_t atun_frame_payload_max(uint8_t type) {
  if (!atun_frame_type_known(type)) return 0;
  return atun_frame_type_is_session(type) ? ATUN_SESSION_PAYLOAD_MAX
                                          : ATUN_CONTROL_PAYLOAD_MAX;
}

const char *atun_frame_type_name(uint8_t type) {
  switch (type) {
  case ATUN_FRAME_HELLO: return "hello";
  case ATUN_FRAME_HELLO_ACK: return "hello_ack";
  case ATUN_FRAME_ROUTE_ADVERTISE: return "route_advertise";
  case ATUN_FRAME_HEARTBEAT: return "heartbeat";
  case ATUN_FRAME_HEARTBEAT_ACK: return "heartbeat_ack";
  case ATUN_FRAME_GOODBYE: return "goodbye";
  case ATUN_FRAME_ERROR: return "error";
  case ATUN_FRAME_CERT_RENEW_REQUEST: return "cert_renew_request";
  case ATUN_FRAME_CERT_RENEW_RESPONSE: return "cert_renew_response";
  case ATUN_FRAME_CONNECT_REQUEST: return "connect_request";
  case ATUN_FRAME_CONNECT_RESPONSE: return "connect_response";
  }
  return "unknown";
}

static const char *const app_error_names[] = {
    "no_error",          "internal",          "protocol_violation",
    "malformed_frame",   "frame_too_large",   "unknown_frame",
    "limit_exceeded",    "version_mismatch",  "revoked",
    "unauthorized",      "handshake_timeout", "heartbeat_timeout",
    "shutdown",          "replaced",          "connect_failed",
    "target_reset",      "overloaded"};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

const char *atun_app_error_name(uint64_t code) {
  return code < COUNT_OF(app_error_names) ? app_error_names[code] : "unknown";
}

uint64_t atun_app_error_from_codec(int err) {
  switch (err) {
  case 0: return ATUN_APP_NO_ERROR;
  case ATUN_ERR_FRAME_TOO_LARGE: return ATUN_APP_FRAME_TOO_LARGE;
  case ATUN_ERR_UNKNOWN_TYPE: return ATUN_APP_UNKNOWN_FRAME;
  case ATUN_ERR_LIMIT: return ATUN_APP_LIMIT_EXCEEDED;
  case ATUN_ERR_VERSION: return ATUN_APP_VERSION_MISMATCH;
  case ATUN_ERR_TRUNCATED:
  case ATUN_ERR_MALFORMED:
  case ATUN_ERR_BAD_PREFIX:
  case ATUN_ERR_BAD_NAME:
  case ATUN_ERR_MISSING_FIELD:
  case ATUN_ERR_TRAILING: return ATUN_APP_MALFORMED_FRAME;
  case ATUN_ERR_PROTO:
  case ATUN_ERR_STATE: return ATUN_APP_PROTOCOL_VIOLATION;
  }
  return ATUN_APP_INTERNAL;
}

static const char *const cert_status_names[] = {"ok", "bad_csr", "denied",
                                                "retry_later", "internal"};

const char *atun_cert_status_name(uint64_t status) {
  return status < COUNT_OF(cert_status_names) ? cert_status_names[status]
                                              : "unknown";
}

static const char *const connect_status_names[] = {
    "ok", "denied", "dns_failure", "refused", "unreachable", "timeout",
    "internal"};

const char *atun_connect_status_name(uint64_t status) {
  return status < COUNT_OF(connect_status_names) ? connect_status_names[status]
                                                 : "unknown";
}

int atun_version_negotiate(uint32_t local_min, uint32_t local_max,
                           uint32_t peer_min, uint32_t peer_max,
                           uint32_t *chosen) {
  if (local_min > local_max || peer_min > peer_max) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  uint32_t hi = local_max < peer_max ? local_max : peer_max;
  uint32_t lo = local_min > peer_min ? local_min : peer_min;
  if (hi < lo) return ATUN_ERR_VERSION;
  *chosen = hi;
  return 0;
}

/* --- text and names ------------------------------------------------------------- */

/* Decodes one UTF-8 sequence at |p| into |*cp|; returns its length, or 0 if
 * it is not the shortest form of a scalar value. */
static size_t utf8_next(const uint8_t *p, const uint8_t *end, uint32_t *cp) {
  uint8_t b = p[0];
  size_t n;
  uint32_t min;
  if (b < 0x80) {
    *cp = b;
    return 1;
  }
  if (b >= 0xc2 && b <= 0xdf) {
    n = 2, min = 0x80, *cp = b & 0x1f;
  } else if ((b & 0xf0) == 0xe0) {
    n = 3, min = 0x800, *cp = b & 0x0f;
  } else if (b >= 0xf0 && b <= 0xf4) {
    n = 4, min = 0x10000, *cp = b & 0x07;
  } else {
    return 0;
  }
  if ((size_t)(end - p) < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    *cp = (*cp << 6) | (p[i] & 0x3f);
  }
  if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff)) return 0;
  return n;
}

int atun_text_valid(const char *s, size_t len) {
  const uint8_t *p = (const uint8_t *)s;
  const uint8_t *end = p + len;
  while (p < end) {
    uint32_t cp;
    size_t n = utf8_next(p, end, &cp);
    /* Control characters would let a peer forge log lines or metrics. */
    if (n == 0 || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) return 0;
    p += n;
  }
  return 1;
}

static int name_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '-';
}

static char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

int atun_name_normalize(char *out, const char *in, size_t inlen) {
  if (inlen > 0 && in[inlen - 1] == '.') --inlen;
  if (inlen == 0 || inlen > ATUN_NAME_MAX) return ATUN_ERR_BAD_NAME;
  size_t label = 0;
  for (size_t i = 0; i < inlen; ++i) {
    char c = in[i];
    if (c == '.') {
      if (label == 0 || in[i - 1] == '-') return ATUN_ERR_BAD_NAME;
      label = 0;
    } else if (!name_char_ok(c) || (c == '-' && label == 0) ||
               ++label > ATUN_LABEL_MAX) {
      return ATUN_ERR_BAD_NAME;
    }
    out[i] = ascii_lower(c);
  }
  if (label == 0 || in[inlen - 1] == '-') return ATUN_ERR_BAD_NAME;
  out[inlen] = '\0';
  return 0;
}

/* A host name target must not look like a number in its last label: the
 * resolver would read "10.1", "0x7f.1" or "2130706433" as an IPv4 address,
 * bypassing the name rules.  Addresses travel as ATUN_TARGET_ADDR. */
static int host_normalize(char *out, const char *in, size_t inlen) {
  int rv = atun_name_normalize(out, in, inlen);
  if (rv != 0) return rv;
  const char *dot = strrchr(out, '.');
  const char *last = dot != NULL ? dot + 1 : out;
  return (last[0] >= '0' && last[0] <= '9') ? ATUN_ERR_BAD_NAME : 0;
}

/* --- writing -------------------------------------------------------------------- */

/* An output cursor.  With |base| NULL it only counts: the size functions run
 * the very same encoders, so the size they report is exact by construction.
 * Errors are sticky so encoders read as a flat list of fields. */
typedef struct wbuf {
  uint8_t *base;
  size_t cap;
  size_t len;
  int err;
} wbuf;

static void fail(wbuf *w, int err) {
  if (w->err == 0) w->err = err;
}

static void put_raw(wbuf *w, const void *src, size_t n) {
  if (w->base != NULL && w->len <= w->cap && n <= w->cap - w->len && n > 0) {
    memcpy(w->base + w->len, src, n);
  }
  w->len += n;
}

static void put_varint(wbuf *w, uint64_t v) {
  uint8_t tmp[ATUN_VARINT_LEN_MAX];
  if (v > ATUN_VARINT_MAX) {
    fail(w, ATUN_ERR_MALFORMED);
    return;
  }
  put_raw(w, tmp, (size_t)(atun_varint_put(tmp, v) - tmp));
}

static void put_uint(wbuf *w, uint64_t id, uint64_t v) {
  /* An out-of-range |v| fails in the last put_varint(); the length written
   * before it only has to stay in range. */
  put_varint(w, id);
  put_varint(w, v <= ATUN_VARINT_MAX ? atun_varint_len(v) : 1);
  put_varint(w, v);
}

static void put_bytes(wbuf *w, uint64_t id, const void *p, size_t n) {
  put_varint(w, id);
  put_varint(w, n);
  put_raw(w, p, n);
}

/* Writes an optional text field; NULL or "" leave it out. */
static void put_text(wbuf *w, uint64_t id, const char *s, size_t max) {
  if (s == NULL || s[0] == '\0') return;
  size_t n = strnlen(s, max + 1);
  if (n > max) {
    fail(w, ATUN_ERR_LIMIT);
  } else if (!atun_text_valid(s, n)) {
    fail(w, ATUN_ERR_MALFORMED);
  } else {
    put_bytes(w, id, s, n);
  }
}

/* Writes a required DER blob of 1..|max| bytes. */
static void put_blob(wbuf *w, uint64_t id, const uint8_t *p, size_t n,
                     size_t max) {
  if (p == NULL || n == 0) {
    fail(w, ATUN_ERR_MISSING_FIELD);
  } else if (n > max) {
    fail(w, ATUN_ERR_LIMIT);
  } else {
    put_bytes(w, id, p, n);
  }
}

typedef int (*normalize_fn)(char *out, const char *in, size_t inlen);

static void put_name(wbuf *w, uint64_t id, const char *name, size_t cap,
                     normalize_fn normalize) {
  char norm[ATUN_NAME_MAX + 1];
  int rv = normalize(norm, name, strnlen(name, cap));
  if (rv != 0) {
    fail(w, rv);
  } else {
    put_bytes(w, id, norm, strlen(norm));
  }
}

static void put_flag(wbuf *w, uint64_t id, uint8_t flag) {
  if (flag > 1) fail(w, ATUN_ERR_MALFORMED);
  if (flag) put_uint(w, id, 1);
}

/* --- encoders --------------------------------------------------------------------- */

static void enc_hello(wbuf *w, const atun_hello *m) {
  if (m->min_version > m->max_version) fail(w, ATUN_ERR_MALFORMED);
  put_uint(w, HELLO_MIN, m->min_version);
  put_uint(w, HELLO_MAX, m->max_version);
  put_text(w, HELLO_SOFTWARE, m->software_version, ATUN_SOFTWARE_VERSION_MAX);
}

static void enc_hello_ack(wbuf *w, const atun_hello_ack *m) {
  if (m->heartbeat_interval_ms == 0) fail(w, ATUN_ERR_MALFORMED);
  put_uint(w, ACK_CHOSEN, m->chosen_version);
  put_uint(w, ACK_HEARTBEAT, m->heartbeat_interval_ms);
  if (m->offline_timeout_ms != 0) {
    put_uint(w, ACK_OFFLINE, m->offline_timeout_ms);
  }
  if (m->has_agent_id) {
    put_bytes(w, ACK_AGENT_ID, m->agent_id, ATUN_AGENT_ID_LEN);
  }
  put_text(w, ACK_SOFTWARE, m->software_version, ATUN_SOFTWARE_VERSION_MAX);
}

static void enc_subnet(wbuf *w, const atun_prefix *p) {
  uint8_t v[SUBNET6_LEN];
  if (!atun_prefix_valid(p)) {
    fail(w, ATUN_ERR_BAD_PREFIX);
    return;
  }
  size_t n = p->addr.family == ATUN_AF_INET ? SUBNET4_LEN : SUBNET6_LEN;
  v[0] = p->len;
  memcpy(v + 1, p->addr.bytes, n - 1);
  put_bytes(w, ROUTE_SUBNET, v, n);
}

static void enc_domain_body(wbuf *w, const atun_domain *d) {
  put_name(w, DOMAIN_NAME, d->name, sizeof(d->name), atun_name_normalize);
  put_flag(w, DOMAIN_AUTO, d->auto_detected);
}

/* A domain is a nested field sequence, so its length is measured first. */
static void enc_domain(wbuf *w, const atun_domain *d) {
  wbuf count = {NULL, 0, 0, 0};
  enc_domain_body(&count, d);
  if (count.err != 0) {
    fail(w, count.err);
    return;
  }
  put_varint(w, ROUTE_DOMAIN);
  put_varint(w, count.len);
  enc_domain_body(w, d);
}

static void enc_route_advertise(wbuf *w, const atun_route_advertise *m) {
  if (m->subnet_count > ATUN_SUBNETS_MAX || m->domain_count > ATUN_DOMAINS_MAX) {
    fail(w, ATUN_ERR_LIMIT);
    return;
  }
  put_uint(w, ROUTE_EPOCH, m->epoch);
  for (size_t i = 0; i < m->subnet_count && w->err == 0; ++i) {
    enc_subnet(w, &m->subnets[i]);
  }
  for (size_t i = 0; i < m->domain_count && w->err == 0; ++i) {
    enc_domain(w, &m->domains[i]);
  }
}

static void enc_heartbeat(wbuf *w, const atun_heartbeat *m) {
  put_uint(w, HB_SEQ, m->seq);
  put_uint(w, HB_SENT_AT, m->sent_at);
  put_uint(w, HB_STREAMS, m->active_stream_count);
}

static void enc_heartbeat_ack(wbuf *w, const atun_heartbeat_ack *m) {
  put_uint(w, HBACK_SEQ, m->seq);
  put_uint(w, HBACK_ECHO, m->echo_sent_at);
}

static void enc_goodbye(wbuf *w, const atun_goodbye *m) {
  put_uint(w, BYE_REASON, m->reason);
  put_text(w, BYE_MESSAGE, m->message, ATUN_MESSAGE_MAX);
}

static void enc_error(wbuf *w, const atun_error_frame *m) {
  put_uint(w, ERR_CODE, m->code);
  put_text(w, ERR_MESSAGE, m->message, ATUN_MESSAGE_MAX);
  if (m->supported_min_version == 0 && m->supported_max_version == 0) return;
  if (m->supported_min_version == 0 ||
      m->supported_min_version > m->supported_max_version) {
    fail(w, ATUN_ERR_MALFORMED);
  }
  put_uint(w, ERR_MIN, m->supported_min_version);
  put_uint(w, ERR_MAX, m->supported_max_version);
}

static void enc_cert_renew_request(wbuf *w, const atun_cert_renew_request *m) {
  put_blob(w, CSR_DER, m->csr, m->csr_len, ATUN_CSR_MAX);
  put_flag(w, CSR_ROTATE, m->rotate_key);
}

static void enc_cert_renew_response(wbuf *w,
                                    const atun_cert_renew_response *m) {
  if (m->status > ATUN_CERT_STATUS_MAX) fail(w, ATUN_ERR_MALFORMED);
  put_uint(w, CERT_STATUS, m->status);
  if (m->status == ATUN_CERT_STATUS_OK) {
    put_blob(w, CERT_DER, m->cert, m->cert_len, ATUN_CERT_MAX);
  } else if (m->cert != NULL || m->cert_len != 0) {
    fail(w, ATUN_ERR_MALFORMED);
  }
  put_text(w, CERT_MESSAGE, m->message, ATUN_MESSAGE_MAX);
}

static void enc_target(wbuf *w, const atun_target *t) {
  if (t->kind == ATUN_TARGET_HOST) {
    put_name(w, CONN_HOST, t->host, sizeof(t->host), host_normalize);
  } else if (t->kind == ATUN_TARGET_ADDR && t->addr.family == ATUN_AF_INET) {
    put_bytes(w, CONN_ADDR, t->addr.bytes, 4);
  } else if (t->kind == ATUN_TARGET_ADDR && t->addr.family == ATUN_AF_INET6) {
    put_bytes(w, CONN_ADDR, t->addr.bytes, 16);
  } else {
    fail(w, ATUN_ERR_MALFORMED);
  }
}

static void enc_connect_request(wbuf *w, const atun_connect_request *m) {
  if (m->port == 0) fail(w, ATUN_ERR_MALFORMED);
  put_bytes(w, CONN_SESSION, m->session_id, ATUN_SESSION_ID_LEN);
  put_uint(w, CONN_PORT, m->port);
  enc_target(w, &m->target);
}

static void enc_connect_response(wbuf *w, const atun_connect_response *m) {
  if (m->status > ATUN_CONNECT_STATUS_MAX) fail(w, ATUN_ERR_MALFORMED);
  put_uint(w, RESP_STATUS, m->status);
  put_text(w, RESP_MESSAGE, m->message, ATUN_MESSAGE_MAX);
}

static void enc_payload(wbuf *w, const atun_msg *msg) {
  switch (msg->type) {
  case ATUN_FRAME_HELLO: enc_hello(w, &msg->u.hello); break;
  case ATUN_FRAME_HELLO_ACK: enc_hello_ack(w, &msg->u.hello_ack); break;
  case ATUN_FRAME_ROUTE_ADVERTISE:
    enc_route_advertise(w, &msg->u.route_advertise);
    break;
  case ATUN_FRAME_HEARTBEAT: enc_heartbeat(w, &msg->u.heartbeat); break;
  case ATUN_FRAME_HEARTBEAT_ACK:
    enc_heartbeat_ack(w, &msg->u.heartbeat_ack);
    break;
  case ATUN_FRAME_GOODBYE: enc_goodbye(w, &msg->u.goodbye); break;
  case ATUN_FRAME_ERROR: enc_error(w, &msg->u.error); break;
  case ATUN_FRAME_CERT_RENEW_REQUEST:
    enc_cert_renew_request(w, &msg->u.cert_renew_request);
    break;
  case ATUN_FRAME_CERT_RENEW_RESPONSE:
    enc_cert_renew_response(w, &msg->u.cert_renew_response);
    break;
  case ATUN_FRAME_CONNECT_REQUEST:
    enc_connect_request(w, &msg->u.connect_request);
    break;
  default:
    ATUN_ASSERT(msg->type == ATUN_FRAME_CONNECT_RESPONSE);
    enc_connect_response(w, &msg->u.connect_response);
    break;
  }
}

/* The payload is measured before it is written because its length leads. */
static ssize_t encode_frame(wbuf *w, const atun_msg *msg) {
  size_t limit = atun_frame_payload_max(msg->type);
  if (limit == 0) return ATUN_ERR_UNKNOWN_TYPE;
  wbuf count = {NULL, 0, 0, 0};
  enc_payload(&count, msg);
  if (count.err != 0) return count.err;
  if (count.len > limit) return ATUN_ERR_FRAME_TOO_LARGE;
  put_raw(w, &msg->type, 1);
  put_varint(w, count.len);
  enc_payload(w, msg);
  ATUN_ASSERT(w->err == 0);
  if (w->base != NULL && w->len > w->cap) return ATUN_ERR_NOBUF;
  return (ssize_t)w->len;
}

ssize_t atun_frame_encode(uint8_t *buf, size_t buflen, const atun_msg *msg) {
  wbuf w = {buf, buflen, 0, 0};
  ATUN_ASSERT(buf != NULL || buflen == 0);
  if (buf == NULL) {
    /* Counting mode would not notice a missing buffer. */
    ssize_t n = encode_frame(&w, msg);
    return n < 0 ? n : ATUN_ERR_NOBUF;
  }
  return encode_frame(&w, msg);
}

ssize_t atun_frame_encoded_size(const atun_msg *msg) {
  wbuf w = {NULL, 0, 0, 0};
  return encode_frame(&w, msg);
}

/* --- reading fields ---------------------------------------------------------------- */

/* A field sequence being read: a frame payload or a nested value.  |seen|
 * has a bit per known field id met so far (ids here are all below 64). */
typedef struct fields {
  const uint8_t *p;
  const uint8_t *end;
  uint64_t seen;
} fields;

typedef struct span {
  const uint8_t *p;
  size_t n;
} span;

/* Reads the next field.  Returns 1 with |*id| and |*v| set, 0 at the end of
 * the sequence, or ATUN_ERR_TRUNCATED. */
static int next_field(fields *f, uint64_t *id, span *v) {
  uint64_t len;
  if (f->p == f->end) return 0;
  if (atun_varint_get(&f->p, f->end, id) != 0 ||
      atun_varint_get(&f->p, f->end, &len) != 0 ||
      len > (uint64_t)(f->end - f->p)) {
    return ATUN_ERR_TRUNCATED;
  }
  v->p = f->p;
  v->n = (size_t)len;
  f->p += len;
  return 1;
}

/* Marks known field |id| as seen; a second occurrence is malformed. */
static int once(fields *f, uint64_t id) {
  ATUN_ASSERT(id < 64);
  if (f->seen & BIT(id)) return ATUN_ERR_MALFORMED;
  f->seen |= BIT(id);
  return 0;
}

static int require(const fields *f, uint64_t mask) {
  return (f->seen & mask) == mask ? 0 : ATUN_ERR_MISSING_FIELD;
}

/* An integer value: one varint filling the field exactly, within [lo, hi]. */
static int val_uint(span v, uint64_t lo, uint64_t hi, uint64_t *out) {
  const uint8_t *p = v.p;
  if (atun_varint_get(&p, v.p + v.n, out) != 0) return ATUN_ERR_MALFORMED;
  if (p != v.p + v.n) return ATUN_ERR_TRAILING;
  return (*out < lo || *out > hi) ? ATUN_ERR_MALFORMED : 0;
}

static int take_u64(fields *f, uint64_t id, span v, uint64_t *out) {
  int rv = once(f, id);
  return rv != 0 ? rv : val_uint(v, 0, ATUN_VARINT_MAX, out);
}

static int take_u32(fields *f, uint64_t id, span v, uint64_t lo,
                    uint32_t *out) {
  uint64_t x;
  int rv = once(f, id);
  if (rv == 0) rv = val_uint(v, lo, UINT32_MAX, &x);
  if (rv == 0) *out = (uint32_t)x;
  return rv;
}

static int take_flag(fields *f, uint64_t id, span v, uint8_t *out) {
  uint64_t x;
  int rv = once(f, id);
  if (rv == 0) rv = val_uint(v, 0, 1, &x);
  if (rv == 0) *out = (uint8_t)x;
  return rv;
}

static int take_fixed(fields *f, uint64_t id, span v, uint8_t *out,
                      size_t len) {
  int rv = once(f, id);
  if (rv != 0) return rv;
  if (v.n != len) return ATUN_ERR_MALFORMED;
  memcpy(out, v.p, len);
  return 0;
}

static int check_text(span v, size_t max) {
  if (v.n > max) return ATUN_ERR_LIMIT;
  return atun_text_valid((const char *)v.p, v.n) ? 0 : ATUN_ERR_MALFORMED;
}

/* Text into an inline array of |max| + 1 bytes. */
static int take_text_inline(fields *f, uint64_t id, span v, char *out,
                            size_t max) {
  int rv = once(f, id);
  if (rv == 0) rv = check_text(v, max);
  if (rv != 0) return rv;
  memcpy(out, v.p, v.n);
  out[v.n] = '\0';
  return 0;
}

/* Text into an allocated string; an empty value stays NULL. */
static int take_text_alloc(fields *f, uint64_t id, span v,
                           const atun_mem *mem, char **out) {
  int rv = once(f, id);
  if (rv == 0) rv = check_text(v, ATUN_MESSAGE_MAX);
  if (rv != 0 || v.n == 0) return rv;
  *out = atun_mem_malloc(mem, v.n + 1);
  if (*out == NULL) return ATUN_ERR_NOMEM;
  memcpy(*out, v.p, v.n);
  (*out)[v.n] = '\0';
  return 0;
}

static int take_blob(fields *f, uint64_t id, span v, size_t max,
                     const atun_mem *mem, uint8_t **out, size_t *outlen) {
  int rv = once(f, id);
  if (rv != 0) return rv;
  if (v.n == 0) return ATUN_ERR_MALFORMED;
  if (v.n > max) return ATUN_ERR_LIMIT;
  *out = atun_mem_malloc(mem, v.n);
  if (*out == NULL) return ATUN_ERR_NOMEM;
  memcpy(*out, v.p, v.n);
  *outlen = v.n;
  return 0;
}

/* Everything a field handler needs besides the field itself. */
typedef struct dctx {
  atun_msg *msg;
  const atun_mem *mem;
  size_t subnets;  /* entries filled so far */
  size_t domains;
} dctx;

typedef int (*field_fn)(fields *f, uint64_t id, span v, dctx *d);

/* Runs |fn| over every field of |f|; unknown ids are the handler's to skip. */
static int walk(fields *f, field_fn fn, dctx *d) {
  for (;;) {
    uint64_t id;
    span v;
    int rv = next_field(f, &id, &v);
    if (rv <= 0) return rv;
    rv = fn(f, id, v, d);
    if (rv != 0) return rv;
  }
}

static int walk_span(span v, field_fn fn, dctx *d, fields *f) {
  f->p = v.p;
  f->end = v.p + v.n;
  f->seen = 0;
  return walk(f, fn, d);
}

/* --- decoders ---------------------------------------------------------------------- */

static int hello_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_hello *m = &d->msg->u.hello;
  switch (id) {
  case HELLO_MIN: return take_u32(f, id, v, 0, &m->min_version);
  case HELLO_MAX: return take_u32(f, id, v, 0, &m->max_version);
  case HELLO_SOFTWARE:
    return take_text_inline(f, id, v, m->software_version,
                            ATUN_SOFTWARE_VERSION_MAX);
  }
  return 0;
}

static int dec_hello(fields *f, span v, dctx *d) {
  int rv = walk_span(v, hello_field, d, f);
  if (rv == 0) rv = require(f, BIT(HELLO_MIN) | BIT(HELLO_MAX));
  if (rv != 0) return rv;
  const atun_hello *m = &d->msg->u.hello;
  return m->min_version > m->max_version ? ATUN_ERR_MALFORMED : 0;
}

static int hello_ack_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_hello_ack *m = &d->msg->u.hello_ack;
  switch (id) {
  case ACK_CHOSEN: return take_u32(f, id, v, 0, &m->chosen_version);
  case ACK_HEARTBEAT: return take_u32(f, id, v, 1, &m->heartbeat_interval_ms);
  case ACK_OFFLINE: return take_u32(f, id, v, 0, &m->offline_timeout_ms);
  case ACK_AGENT_ID:
    m->has_agent_id = 1;
    return take_fixed(f, id, v, m->agent_id, ATUN_AGENT_ID_LEN);
  case ACK_SOFTWARE:
    return take_text_inline(f, id, v, m->software_version,
                            ATUN_SOFTWARE_VERSION_MAX);
  }
  return 0;
}

static int dec_hello_ack(fields *f, span v, dctx *d) {
  int rv = walk_span(v, hello_ack_field, d, f);
  return rv != 0 ? rv : require(f, BIT(ACK_CHOSEN) | BIT(ACK_HEARTBEAT));
}

static int take_subnet(span v, atun_prefix *out) {
  if (v.n != SUBNET4_LEN && v.n != SUBNET6_LEN) return ATUN_ERR_MALFORMED;
  memset(out, 0, sizeof(*out));
  out->addr.family = v.n == SUBNET4_LEN ? ATUN_AF_INET : ATUN_AF_INET6;
  out->len = v.p[0];
  memcpy(out->addr.bytes, v.p + 1, v.n - 1);
  return atun_prefix_valid(out) ? 0 : ATUN_ERR_BAD_PREFIX;
}

static int domain_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_domain *dom = &d->msg->u.route_advertise.domains[d->domains];
  switch (id) {
  case DOMAIN_NAME: {
    int rv = once(f, id);
    return rv != 0 ? rv
                   : atun_name_normalize(dom->name, (const char *)v.p, v.n);
  }
  case DOMAIN_AUTO: return take_flag(f, id, v, &dom->auto_detected);
  }
  return 0;
}

static int take_domain(span v, dctx *d) {
  fields nested;
  int rv = walk_span(v, domain_field, d, &nested);
  return rv != 0 ? rv : require(&nested, BIT(DOMAIN_NAME));
}

static int route_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_route_advertise *m = &d->msg->u.route_advertise;
  switch (id) {
  case ROUTE_EPOCH: return take_u64(f, id, v, &m->epoch);
  case ROUTE_SUBNET: return take_subnet(v, &m->subnets[d->subnets++]);
  case ROUTE_DOMAIN: {
    int rv = take_domain(v, d);
    ++d->domains;
    return rv;
  }
  }
  return 0;
}

/* Counts the list entries first so the limits are checked, and the arrays
 * sized exactly, before anything is allocated. */
static int count_entries(span v, size_t *subnets, size_t *domains) {
  fields f = {v.p, v.p + v.n, 0};
  uint64_t id;
  span field;
  int rv;
  *subnets = *domains = 0;
  while ((rv = next_field(&f, &id, &field)) > 0) {
    *subnets += id == ROUTE_SUBNET;
    *domains += id == ROUTE_DOMAIN;
  }
  if (rv != 0) return rv;
  if (*subnets > ATUN_SUBNETS_MAX || *domains > ATUN_DOMAINS_MAX) {
    return ATUN_ERR_LIMIT;
  }
  return 0;
}

static int alloc_lists(atun_route_advertise *m, size_t subnets, size_t domains,
                       const atun_mem *mem) {
  if (subnets > 0) {
    m->subnets = atun_mem_calloc(mem, subnets, sizeof(*m->subnets));
    if (m->subnets == NULL) return ATUN_ERR_NOMEM;
  }
  if (domains > 0) {
    m->domains = atun_mem_calloc(mem, domains, sizeof(*m->domains));
    if (m->domains == NULL) return ATUN_ERR_NOMEM;
  }
  m->subnet_count = subnets;
  m->domain_count = domains;
  return 0;
}

static int dec_route_advertise(fields *f, span v, dctx *d) {
  atun_route_advertise *m = &d->msg->u.route_advertise;
  size_t subnets, domains;
  int rv = count_entries(v, &subnets, &domains);
  if (rv == 0) rv = alloc_lists(m, subnets, domains, d->mem);
  if (rv == 0) rv = walk_span(v, route_field, d, f);
  return rv != 0 ? rv : require(f, BIT(ROUTE_EPOCH));
}

static int heartbeat_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_heartbeat *m = &d->msg->u.heartbeat;
  switch (id) {
  case HB_SEQ: return take_u64(f, id, v, &m->seq);
  case HB_SENT_AT: return take_u64(f, id, v, &m->sent_at);
  case HB_STREAMS: return take_u32(f, id, v, 0, &m->active_stream_count);
  }
  return 0;
}

static int dec_heartbeat(fields *f, span v, dctx *d) {
  int rv = walk_span(v, heartbeat_field, d, f);
  return rv != 0 ? rv
                 : require(f, BIT(HB_SEQ) | BIT(HB_SENT_AT) | BIT(HB_STREAMS));
}

static int heartbeat_ack_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_heartbeat_ack *m = &d->msg->u.heartbeat_ack;
  switch (id) {
  case HBACK_SEQ: return take_u64(f, id, v, &m->seq);
  case HBACK_ECHO: return take_u64(f, id, v, &m->echo_sent_at);
  }
  return 0;
}

static int dec_heartbeat_ack(fields *f, span v, dctx *d) {
  int rv = walk_span(v, heartbeat_ack_field, d, f);
  return rv != 0 ? rv : require(f, BIT(HBACK_SEQ) | BIT(HBACK_ECHO));
}

static int goodbye_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_goodbye *m = &d->msg->u.goodbye;
  switch (id) {
  case BYE_REASON: return take_u64(f, id, v, &m->reason);
  case BYE_MESSAGE: return take_text_alloc(f, id, v, d->mem, &m->message);
  }
  return 0;
}

static int dec_goodbye(fields *f, span v, dctx *d) {
  int rv = walk_span(v, goodbye_field, d, f);
  return rv != 0 ? rv : require(f, BIT(BYE_REASON));
}

static int error_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_error_frame *m = &d->msg->u.error;
  switch (id) {
  case ERR_CODE: return take_u64(f, id, v, &m->code);
  case ERR_MESSAGE: return take_text_alloc(f, id, v, d->mem, &m->message);
  case ERR_MIN: return take_u32(f, id, v, 1, &m->supported_min_version);
  case ERR_MAX: return take_u32(f, id, v, 1, &m->supported_max_version);
  }
  return 0;
}

static int dec_error(fields *f, span v, dctx *d) {
  const atun_error_frame *m = &d->msg->u.error;
  int rv = walk_span(v, error_field, d, f);
  if (rv == 0) rv = require(f, BIT(ERR_CODE));
  if (rv != 0) return rv;
  /* The supported range comes as a pair or not at all. */
  int halves = !!(f->seen & BIT(ERR_MIN)) + !!(f->seen & BIT(ERR_MAX));
  if (halves == 1 || m->supported_min_version > m->supported_max_version) {
    return ATUN_ERR_MALFORMED;
  }
  return 0;
}

static int csr_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_cert_renew_request *m = &d->msg->u.cert_renew_request;
  switch (id) {
  case CSR_DER:
    return take_blob(f, id, v, ATUN_CSR_MAX, d->mem, &m->csr, &m->csr_len);
  case CSR_ROTATE: return take_flag(f, id, v, &m->rotate_key);
  }
  return 0;
}

static int dec_cert_renew_request(fields *f, span v, dctx *d) {
  int rv = walk_span(v, csr_field, d, f);
  return rv != 0 ? rv : require(f, BIT(CSR_DER));
}

static int cert_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_cert_renew_response *m = &d->msg->u.cert_renew_response;
  switch (id) {
  case CERT_STATUS:
    return take_u64(f, id, v, &m->status);
  case CERT_DER:
    return take_blob(f, id, v, ATUN_CERT_MAX, d->mem, &m->cert, &m->cert_len);
  case CERT_MESSAGE: return take_text_alloc(f, id, v, d->mem, &m->message);
  }
  return 0;
}

static int dec_cert_renew_response(fields *f, span v, dctx *d) {
  const atun_cert_renew_response *m = &d->msg->u.cert_renew_response;
  int rv = walk_span(v, cert_field, d, f);
  if (rv == 0) rv = require(f, BIT(CERT_STATUS));
  if (rv != 0) return rv;
  if (m->status > ATUN_CERT_STATUS_MAX) return ATUN_ERR_MALFORMED;
  int has_cert = m->cert != NULL;
  if (m->status == ATUN_CERT_STATUS_OK && !has_cert) {
    return ATUN_ERR_MISSING_FIELD;
  }
  return m->status != ATUN_CERT_STATUS_OK && has_cert ? ATUN_ERR_MALFORMED : 0;
}

static int take_target_addr(span v, atun_target *t) {
  if (v.n != 4 && v.n != 16) return ATUN_ERR_MALFORMED;
  t->kind = ATUN_TARGET_ADDR;
  t->addr.family = v.n == 4 ? ATUN_AF_INET : ATUN_AF_INET6;
  memcpy(t->addr.bytes, v.p, v.n);
  /* Policy checks compare against IPv4 routes, so ::ffff:a.b.c.d is
   * folded here once rather than in every consumer. */
  atun_addr_normalize(&t->addr);
  return 0;
}

static int connect_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_connect_request *m = &d->msg->u.connect_request;
  uint32_t port = 0;
  int rv;
  switch (id) {
  case CONN_SESSION:
    return take_fixed(f, id, v, m->session_id, ATUN_SESSION_ID_LEN);
  case CONN_PORT:
    rv = take_u32(f, id, v, 1, &port);
    if (rv == 0 && port > UINT16_MAX) rv = ATUN_ERR_MALFORMED;
    m->port = (uint16_t)port;
    return rv;
  case CONN_ADDR:
  case CONN_HOST:
    /* Exactly one target: a second one, of either kind, is malformed. */
    if (f->seen & (BIT(CONN_ADDR) | BIT(CONN_HOST))) return ATUN_ERR_MALFORMED;
    f->seen |= BIT(id);
    if (id == CONN_ADDR) return take_target_addr(v, &m->target);
    m->target.kind = ATUN_TARGET_HOST;
    return host_normalize(m->target.host, (const char *)v.p, v.n);
  }
  return 0;
}

static int dec_connect_request(fields *f, span v, dctx *d) {
  int rv = walk_span(v, connect_field, d, f);
  if (rv == 0) rv = require(f, BIT(CONN_SESSION) | BIT(CONN_PORT));
  if (rv == 0 && !(f->seen & (BIT(CONN_ADDR) | BIT(CONN_HOST)))) {
    rv = ATUN_ERR_MISSING_FIELD;
  }
  return rv;
}

static int response_field(fields *f, uint64_t id, span v, dctx *d) {
  atun_connect_response *m = &d->msg->u.connect_response;
  switch (id) {
  case RESP_STATUS: return take_u64(f, id, v, &m->status);
  case RESP_MESSAGE: return take_text_alloc(f, id, v, d->mem, &m->message);
  }
  return 0;
}

static int dec_connect_response(fields *f, span v, dctx *d) {
  int rv = walk_span(v, response_field, d, f);
  if (rv == 0) rv = require(f, BIT(RESP_STATUS));
  if (rv == 0 && d->msg->u.connect_response.status > ATUN_CONNECT_STATUS_MAX) {
    rv = ATUN_ERR_MALFORMED;
  }
  return rv;
}

typedef int (*decode_fn)(fields *f, span v, dctx *d);

static decode_fn decoder_for(uint8_t type) {
  switch (type) {
  case ATUN_FRAME_HELLO: return dec_hello;
  case ATUN_FRAME_HELLO_ACK: return dec_hello_ack;
  case ATUN_FRAME_ROUTE_ADVERTISE: return dec_route_advertise;
  case ATUN_FRAME_HEARTBEAT: return dec_heartbeat;
  case ATUN_FRAME_HEARTBEAT_ACK: return dec_heartbeat_ack;
  case ATUN_FRAME_GOODBYE: return dec_goodbye;
  case ATUN_FRAME_ERROR: return dec_error;
  case ATUN_FRAME_CERT_RENEW_REQUEST: return dec_cert_renew_request;
  case ATUN_FRAME_CERT_RENEW_RESPONSE: return dec_cert_renew_response;
  case ATUN_FRAME_CONNECT_REQUEST: return dec_connect_request;
  case ATUN_FRAME_CONNECT_RESPONSE: return dec_connect_response;
  }
  return NULL;
}

int atun_msg_decode(atun_msg *msg, uint8_t type, const uint8_t *payload,
                    size_t payloadlen, const atun_mem *mem) {
  /* An empty payload may come as NULL; pointer arithmetic on NULL is
   * undefined even with a zero offset. */
  static const uint8_t empty[1];
  if (payload == NULL) payload = empty;
  memset(msg, 0, sizeof(*msg));
  msg->type = type;
  decode_fn fn = decoder_for(type);
  if (fn == NULL) return ATUN_ERR_UNKNOWN_TYPE;
  if (payloadlen > atun_frame_payload_max(type)) {
    return ATUN_ERR_FRAME_TOO_LARGE;
  }
  fields f;
  dctx d = {msg, mem, 0, 0};
  span v = {payload, payloadlen};
  int rv = fn(&f, v, &d);
  if (rv != 0) atun_msg_free(msg, mem);
  return rv;
}

int atun_frame_decode(atun_msg *msg, const uint8_t *buf, size_t buflen,
                      const atun_mem *mem) {
  uint64_t len;
  memset(msg, 0, sizeof(*msg));
  if (buflen == 0) return ATUN_ERR_TRUNCATED;
  const uint8_t *p = buf + 1;
  const uint8_t *end = buf + buflen;
  if (!atun_frame_type_known(buf[0])) return ATUN_ERR_UNKNOWN_TYPE;
  if (atun_varint_get(&p, end, &len) != 0) return ATUN_ERR_TRUNCATED;
  if (len > atun_frame_payload_max(buf[0])) return ATUN_ERR_FRAME_TOO_LARGE;
  if (len > (uint64_t)(end - p)) return ATUN_ERR_TRUNCATED;
  if (len < (uint64_t)(end - p)) return ATUN_ERR_TRAILING;
  return atun_msg_decode(msg, buf[0], p, (size_t)len, mem);
}

void atun_msg_free(atun_msg *msg, const atun_mem *mem) {
  switch (msg->type) {
  case ATUN_FRAME_ROUTE_ADVERTISE:
    atun_mem_free(mem, msg->u.route_advertise.subnets);
    atun_mem_free(mem, msg->u.route_advertise.domains);
    break;
  case ATUN_FRAME_GOODBYE: atun_mem_free(mem, msg->u.goodbye.message); break;
  case ATUN_FRAME_ERROR: atun_mem_free(mem, msg->u.error.message); break;
  case ATUN_FRAME_CERT_RENEW_REQUEST:
    atun_mem_free(mem, msg->u.cert_renew_request.csr);
    break;
  case ATUN_FRAME_CERT_RENEW_RESPONSE:
    atun_mem_free(mem, msg->u.cert_renew_response.cert);
    atun_mem_free(mem, msg->u.cert_renew_response.message);
    break;
  case ATUN_FRAME_CONNECT_RESPONSE:
    atun_mem_free(mem, msg->u.connect_response.message);
    break;
  }
  uint8_t type = msg->type;
  memset(msg, 0, sizeof(*msg));
  msg->type = type;
}
