/*
 * libFuzzer harness: the session-stream header decoders (ConnectRequest,
 * ConnectResponse), which face the peer before any policy check.  The first
 * input byte picks the type, the second drives allocation failures, the
 * rest is the payload (see decode_check.h for what is checked).
 */
#include "decode_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t type = (data[0] & 1) ? ATUN_FRAME_CONNECT_RESPONSE
                               : ATUN_FRAME_CONNECT_REQUEST;
  decode_one(type, data[1], data + 2, size - 2);
  decode_frame(data + 2, size - 2);
  return 0;
}
