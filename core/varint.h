/*
 * QUIC variable-length integers (RFC 9000, section 16): the two high bits of
 * the first byte give the length (1, 2, 4 or 8 bytes), the rest is the value
 * in network byte order.  The codec uses them for frame lengths, field ids,
 * field lengths and integer values.
 */
#ifndef ATUN_VARINT_H
#define ATUN_VARINT_H

#include "atun.h"

/* Largest value a varint can carry: 2^62 - 1. */
#define ATUN_VARINT_MAX ((uint64_t)0x3fffffffffffffffULL)
/* Longest encoding in bytes. */
#define ATUN_VARINT_LEN_MAX 8

/* Returns the number of bytes the minimal encoding of |v| takes (1, 2, 4 or
 * 8).  |v| must be <= ATUN_VARINT_MAX. */
size_t atun_varint_len(uint64_t v);

/* Returns the encoded length announced by the first byte |b| of a varint. */
size_t atun_varint_len_from_first(uint8_t b);

/* Writes the minimal encoding of |v| (<= ATUN_VARINT_MAX) at |dest|, which
 * must hold atun_varint_len(v) bytes, and returns the byte after it. */
uint8_t *atun_varint_put(uint8_t *dest, uint64_t v);

/* Reads a varint from |*src| (not beyond |end|) into |*out| and advances
 * |*src|.  Longer-than-minimal encodings are accepted, as RFC 9000 allows.
 * Returns 0 or ATUN_ERR_TRUNCATED (|*src| is then left unchanged). */
int atun_varint_get(const uint8_t **src, const uint8_t *end, uint64_t *out);

#endif /* ATUN_VARINT_H */
