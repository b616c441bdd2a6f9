/*
 * The incremental frame reader declared in codec.h: type byte, length
 * varint, payload, each possibly split across any number of feed calls.
 */
#include <string.h>

#include "codec.h"

enum { R_TYPE, R_LEN, R_PAYLOAD, R_READY };

int atun_frame_reader_init(atun_frame_reader *r, size_t payload_max,
                           const atun_mem *mem) {
  if (payload_max > ATUN_CONTROL_PAYLOAD_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  memset(r, 0, sizeof(*r));
  r->mem = mem;
  r->payload_max = payload_max;
  r->state = R_TYPE;
  return 0;
}

void atun_frame_reader_free(atun_frame_reader *r) {
  atun_mem_free(r->mem, r->buf);
  r->buf = NULL;
  r->buf_cap = 0;
}

static int fail(atun_frame_reader *r, int err) {
  r->error = err;
  return err;
}

static int read_type(atun_frame_reader *r, uint8_t b) {
  if (!atun_frame_type_known(b)) return fail(r, ATUN_ERR_UNKNOWN_TYPE);
  r->type = b;
  r->len_have = 0;
  r->len_need = 1;
  r->state = R_LEN;
  return 0;
}

/* The limit is enforced the moment the length is known, so an oversized
 * frame is refused before a single payload byte is stored. */
static int read_len(atun_frame_reader *r, uint8_t b) {
  if (r->len_have == 0) r->len_need = (uint8_t)atun_varint_len_from_first(b);
  r->len_bytes[r->len_have++] = b;
  if (r->len_have < r->len_need) return 0;
  const uint8_t *p = r->len_bytes;
  uint64_t len;
  int rv = atun_varint_get(&p, r->len_bytes + r->len_have, &len);
  ATUN_ASSERT(rv == 0);
  size_t limit = atun_frame_payload_max(r->type);
  if (r->payload_max < limit) limit = r->payload_max;
  if (len > limit) return fail(r, ATUN_ERR_FRAME_TOO_LARGE);
  r->payload_len = (size_t)len;
  r->payload_have = 0;
  r->state = len == 0 ? R_READY : R_PAYLOAD;
  return rv;
}

/* Grows the buffer to hold |need| bytes: geometrically, to keep the copies
 * linear, but never past the announced payload length. */
static int reserve(atun_frame_reader *r, size_t need) {
  if (need <= r->buf_cap) return 0;
  size_t cap = r->buf_cap * 2;
  if (cap < need) cap = need;
  if (cap > r->payload_len) cap = r->payload_len;
  uint8_t *p = atun_mem_realloc(r->mem, r->buf, cap);
  if (p == NULL) return fail(r, ATUN_ERR_NOMEM);
  r->buf = p;
  r->buf_cap = cap;
  return 0;
}

static ssize_t read_payload(atun_frame_reader *r, const uint8_t *data,
                            size_t datalen) {
  size_t n = r->payload_len - r->payload_have;
  if (n > datalen) n = datalen;
  int rv = reserve(r, r->payload_have + n);
  if (rv != 0) return rv;
  memcpy(r->buf + r->payload_have, data, n);
  r->payload_have += n;
  if (r->payload_have == r->payload_len) r->state = R_READY;
  return (ssize_t)n;
}

/* Consumes what the current state can take from |data| (at least one byte). */
static ssize_t step(atun_frame_reader *r, const uint8_t *data, size_t datalen) {
  int rv;
  switch (r->state) {
  case R_TYPE: rv = read_type(r, data[0]); break;
  case R_LEN: rv = read_len(r, data[0]); break;
  default:
    ATUN_ASSERT(r->state == R_PAYLOAD);
    return read_payload(r, data, datalen);
  }
  return rv != 0 ? rv : 1;
}

ssize_t atun_frame_reader_feed(atun_frame_reader *r, const uint8_t *data,
                               size_t datalen) {
  if (r->error != 0) return r->error;
  if (r->state == R_READY) r->state = R_TYPE;
  size_t used = 0;
  while (used < datalen && r->state != R_READY) {
    ssize_t n = step(r, data + used, datalen - used);
    if (n < 0) return n;
    used += (size_t)n;
  }
  return (ssize_t)used;
}

int atun_frame_reader_ready(const atun_frame_reader *r) {
  return r->error == 0 && r->state == R_READY;
}

void atun_frame_reader_frame(const atun_frame_reader *r, uint8_t *type,
                             const uint8_t **payload, size_t *payloadlen) {
  ATUN_ASSERT(atun_frame_reader_ready(r));
  *type = r->type;
  *payload = r->buf;
  *payloadlen = r->payload_len;
}

int atun_frame_reader_decode(const atun_frame_reader *r, atun_msg *msg,
                             const atun_mem *mem) {
  if (!atun_frame_reader_ready(r)) return ATUN_ERR_STATE;
  return atun_msg_decode(msg, r->type, r->buf, r->payload_len, mem);
}

int atun_frame_reader_eof(const atun_frame_reader *r) {
  if (r->error != 0) return r->error;
  return (r->state == R_TYPE || r->state == R_READY) ? 0 : ATUN_ERR_TRUNCATED;
}
