/*
 * libFuzzer harness: the incremental frame reader.
 *
 * Input: [flags][seed][stream...].  The stream is read twice: once handed
 * over whole (the reference), once in chunks whose sizes come from |seed|
 * and |flags|, with the allocator failing where |flags| says.  Both runs
 * must see the same frames end at the same offsets, each payload must be
 * the stream's own bytes, and the runs must end in the same state; nothing
 * may leak.
 *
 * flags bit 0     session-sized reader (4 KiB) instead of control (1 MiB)
 * flags bits 1-2  largest chunk: 1, 7, 64 or 4096 bytes
 * flags bit 7     fail the allocator after (bits 3-6) allocations
 */
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct run {
  size_t *ends;  /* offset just past each frame */
  size_t frames;
  int result;    /* sticky error, or the end-of-stream verdict */
} run;

static void check_payload(const atun_frame_reader *r, const uint8_t *stream,
                          size_t end) {
  uint8_t type;
  const uint8_t *payload;
  size_t len;
  atun_frame_reader_frame(r, &type, &payload, &len);
  if (len > end || (len > 0 && memcmp(payload, stream + end - len, len) != 0)) {
    abort();
  }
}

/* Runs the decoder over each frame too: reader output is decoder input. */
static void decode_held(const atun_frame_reader *r) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_msg m;
  if (atun_frame_reader_decode(r, &m, &fm.mem) == 0) atun_msg_free(&m, &fm.mem);
  if (fm.live != 0) abort();
}

static size_t next_chunk(atun_testrng *rng, uint8_t flags, size_t left) {
  static const size_t max_chunk[] = {1, 7, 64, 4096};
  size_t n = 1 + (size_t)atun_testrng_below(rng, max_chunk[(flags >> 1) & 3]);
  return n < left ? n : left;
}

/* Feeds |stream| and records where frames end.  With |rng| NULL each call
 * gets everything left, else a random chunk.  Returns 0, or ATUN_ERR_NOMEM
 * if the allocator failed (the run is then incomplete). */
static int feed_all(const uint8_t *stream, size_t len, size_t payload_max,
                    atun_testrng *rng, uint8_t flags, atun_failmem *fm,
                    run *out) {
  atun_frame_reader r;
  if (atun_frame_reader_init(&r, payload_max, &fm->mem) != 0) abort();
  size_t off = 0;
  int rv = 0;
  while (off < len && rv == 0) {
    size_t chunk = rng != NULL ? next_chunk(rng, flags, len - off) : len - off;
    ssize_t n = atun_frame_reader_feed(&r, stream + off, chunk);
    if (n < 0) {
      rv = (int)n;
      break;
    }
    if ((size_t)n > chunk) abort();
    off += (size_t)n;
    if (atun_frame_reader_ready(&r)) {
      check_payload(&r, stream, off);
      if (rng == NULL) decode_held(&r);
      out->ends[out->frames++] = off;
    } else if ((size_t)n != chunk) {
      abort(); /* it may only stop early at the end of a frame */
    }
  }
  out->result = rv != 0 ? rv : atun_frame_reader_eof(&r);
  atun_frame_reader_free(&r);
  return rv == ATUN_ERR_NOMEM ? rv : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t flags = data[0];
  const uint8_t *stream = data + 2;
  size_t len = size - 2;
  size_t payload_max =
      (flags & 1) ? ATUN_SESSION_PAYLOAD_MAX : ATUN_CONTROL_PAYLOAD_MAX;
  /* Every frame takes at least two bytes. */
  run ref = {calloc(len / 2 + 1, sizeof(size_t)), 0, 0};
  run chunked = {calloc(len / 2 + 1, sizeof(size_t)), 0, 0};
  if (ref.ends == NULL || chunked.ends == NULL) abort();

  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  if (feed_all(stream, len, payload_max, NULL, flags, &fm, &ref) != 0) abort();
  if (fm.live != 0) abort();

  atun_testrng rng;
  atun_testrng_seed(&rng, ((uint64_t)flags << 8) | data[1]);
  atun_failmem_init(&fm, (flags & 0x80) ? (long)((flags >> 3) & 0x0f) : -1);
  int rv = feed_all(stream, len, payload_max, &rng, flags, &fm, &chunked);
  if (fm.live != 0) abort();
  if (rv == 0) {
    if (chunked.frames != ref.frames || chunked.result != ref.result) abort();
    if (memcmp(chunked.ends, ref.ends, ref.frames * sizeof(size_t)) != 0) abort();
  } else if (chunked.frames > ref.frames || fm.failures == 0 ||
             memcmp(chunked.ends, ref.ends, chunked.frames * sizeof(size_t))) {
    abort();
  }
  free(ref.ends);
  free(chunked.ends);
  return 0;
}
