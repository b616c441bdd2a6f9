/*
 * libFuzzer harness: the decoders of the control-stream frames.  The first
 * input byte picks the frame type, the second drives allocation failures,
 * the rest is the payload (see decode_check.h for what is checked).
 */
#include "decode_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t control_types[] = {
    ATUN_FRAME_HELLO,          ATUN_FRAME_HELLO_ACK,
    ATUN_FRAME_ROUTE_ADVERTISE, ATUN_FRAME_HEARTBEAT,
    ATUN_FRAME_HEARTBEAT_ACK,  ATUN_FRAME_GOODBYE,
    ATUN_FRAME_ERROR,          ATUN_FRAME_CERT_RENEW_REQUEST,
    ATUN_FRAME_CERT_RENEW_RESPONSE};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t type = control_types[data[0] % sizeof(control_types)];
  decode_one(type, data[1], data + 2, size - 2);
  decode_frame(data + 2, size - 2);
  return 0;
}
