/*
 * Shared by the decoder harnesses (fuzz_decode_control.c and
 * fuzz_decode_session.c), included by each, so the two can spend their
 * time on different frame types while checking the same properties:
 *
 *   - decoding never crashes, returns 0 or a documented error, and leaks
 *     nothing, also when the allocator fails at an input-chosen point;
 *   - whatever decodes re-encodes (the encoder accepts everything the
 *     decoder produces, and the size function is exact);
 *   - the re-encoded frame decodes again and encodes to the same bytes
 *     (the encoding is canonical, so byte equality is message equality).
 *
 * Input layout: [type selector][allocation knob][payload...].
 */
#ifndef ATUN_FUZZ_DECODE_CHECK_H
#define ATUN_FUZZ_DECODE_CHECK_H

#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "support.h"

static int decode_error_expected(int rv) {
  switch (rv) {
  case ATUN_ERR_TRUNCATED:
  case ATUN_ERR_MALFORMED:
  case ATUN_ERR_FRAME_TOO_LARGE:
  case ATUN_ERR_LIMIT:
  case ATUN_ERR_BAD_PREFIX:
  case ATUN_ERR_BAD_NAME:
  case ATUN_ERR_MISSING_FIELD:
  case ATUN_ERR_TRAILING:
  case ATUN_ERR_NOMEM: return 1;
  }
  return 0;
}

/* Allocation knob: below 0x80 the allocator never fails; otherwise the low
 * bits say how many allocations succeed first. */
static long decode_fail_after(uint8_t knob) {
  return knob < 0x80 ? -1 : (long)(knob & 0x0f);
}

static void check_reencode(const atun_msg *m) {
  ssize_t size = atun_frame_encoded_size(m);
  if (size <= 0) abort();
  uint8_t *a = malloc((size_t)size);
  uint8_t *b = malloc((size_t)size);
  if (a == NULL || b == NULL) abort();
  if (atun_frame_encode(a, (size_t)size, m) != size) abort();
  if (atun_frame_encode(a, (size_t)size - 1, m) != ATUN_ERR_NOBUF) abort();
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_msg again;
  if (atun_frame_decode(&again, a, (size_t)size, &fm.mem) != 0) abort();
  if (atun_frame_encode(b, (size_t)size, &again) != size) abort();
  if (memcmp(a, b, (size_t)size) != 0) abort();
  atun_msg_free(&again, &fm.mem);
  if (fm.live != 0) abort();
  free(a);
  free(b);
}

static void decode_one(uint8_t type, uint8_t knob, const uint8_t *payload,
                       size_t len) {
  atun_failmem fm;
  atun_failmem_init(&fm, decode_fail_after(knob));
  atun_msg m;
  int rv = atun_msg_decode(&m, type, payload, len, &fm.mem);
  if (rv == 0) {
    check_reencode(&m);
    atun_msg_free(&m, &fm.mem);
  } else if (!decode_error_expected(rv) ||
             (rv == ATUN_ERR_NOMEM && fm.failures == 0)) {
    abort();
  }
  if (fm.live != 0) abort();
}

/* The same bytes read as one whole frame exercise the frame-level checks. */
static void decode_frame(const uint8_t *data, size_t size) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_msg m;
  int rv = atun_frame_decode(&m, data, size, &fm.mem);
  if (rv == 0) atun_msg_free(&m, &fm.mem);
  if (fm.live != 0) abort();
}

#endif
