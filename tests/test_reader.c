/*
 * The incremental frame reader: any chunking yields the same frames, it
 * stops right after each frame, limits bite before buffering, memory is
 * bounded and allocation failures leak nothing.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "support.h"
#include "varint.h"

#define STREAM_CAP 4096
#define FRAMES_MAX 16

typedef struct stream {
  uint8_t b[STREAM_CAP];
  size_t n;
  size_t ends[FRAMES_MAX]; /* offset just past each frame */
  size_t frames;
} stream;

static void add(stream *s, const atun_msg *m) {
  ssize_t n = atun_frame_encode(s->b + s->n, STREAM_CAP - s->n, m);
  cr_assert_gt(n, 0);
  s->n += (size_t)n;
  s->ends[s->frames++] = s->n;
}

static void add_raw(stream *s, const void *p, size_t n) {
  memcpy(s->b + s->n, p, n);
  s->n += n;
  s->ends[s->frames++] = s->n;
}

/* A control stream with frames of several sizes, an empty-payload frame
 * (which does not decode, but frames fine) and a heartbeat long enough to
 * need a two-byte length. */
static void control_stream(stream *s) {
  memset(s, 0, sizeof(*s));
  atun_msg m = {.type = ATUN_FRAME_HELLO};
  m.u.hello = (atun_hello){2, 2, "atun-agent 0.1.0"};
  add(s, &m);
  m = (atun_msg){.type = ATUN_FRAME_HEARTBEAT};
  m.u.heartbeat = (atun_heartbeat){1, 2, 3};
  add(s, &m);
  add_raw(s, "\x04\x00", 2);
  m = (atun_msg){.type = ATUN_FRAME_GOODBYE};
  char text[300];
  memset(text, 'g', sizeof(text) - 1);
  text[sizeof(text) - 1] = '\0';
  m.u.goodbye = (atun_goodbye){ATUN_GOODBYE_SHUTDOWN, text};
  add(s, &m);
  m = (atun_msg){.type = ATUN_FRAME_HEARTBEAT_ACK};
  m.u.heartbeat_ack = (atun_heartbeat_ack){1, 2};
  add(s, &m);
}

/* Checks the frame held by |r| is frame |i| of |s|. */
static void check_frame(const atun_frame_reader *r, const stream *s, size_t i) {
  size_t start = i == 0 ? 0 : s->ends[i - 1];
  uint8_t type;
  const uint8_t *payload;
  size_t len;
  atun_frame_reader_frame(r, &type, &payload, &len);
  cr_assert_eq(type, s->b[start], "frame %zu", i);
  size_t hdr = 1 + atun_varint_len_from_first(s->b[start + 1]);
  cr_assert_eq(len, s->ends[i] - start - hdr, "frame %zu", i);
  if (len > 0) cr_assert_arr_eq(payload, s->b + start + hdr, len);
}

/* Feeds |s| in chunks drawn from |rng| (or one byte at a time if NULL) and
 * checks every frame comes out, each exactly where it ends. */
static void feed_chunked(const stream *s, size_t payload_max, atun_testrng *rng) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_frame_reader r;
  cr_assert_eq(atun_frame_reader_init(&r, payload_max, &fm.mem), 0);
  size_t off = 0, chunk_end = 0, got = 0;
  while (off < s->n) {
    if (off == chunk_end) {
      size_t len = rng ? 1 + (size_t)atun_testrng_below(rng, 64) : 1;
      chunk_end = off + len < s->n ? off + len : s->n;
    }
    ssize_t n = atun_frame_reader_feed(&r, s->b + off, chunk_end - off);
    cr_assert_geq(n, 0, "%s", atun_strerror((int)n));
    off += (size_t)n;
    if (atun_frame_reader_ready(&r)) {
      cr_assert_eq(off, s->ends[got], "frame %zu must end at %zu, not %zu", got,
                   s->ends[got], off);
      check_frame(&r, s, got++);
    } else {
      cr_assert_eq(off, chunk_end);
    }
  }
  cr_assert_eq(got, s->frames);
  cr_assert_eq(atun_frame_reader_eof(&r), 0);
  atun_frame_reader_free(&r);
  cr_assert_eq(fm.live, 0);
}

Test(reader, whole_stream_in_one_chunk) {
  stream s;
  control_stream(&s);
  atun_frame_reader r;
  cr_assert_eq(atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX,
                                      atun_mem_default()), 0);
  size_t off = 0;
  for (size_t i = 0; i < s.frames; ++i) {
    ssize_t n = atun_frame_reader_feed(&r, s.b + off, s.n - off);
    cr_assert_gt(n, 0);
    off += (size_t)n;
    cr_assert_eq(off, s.ends[i], "stops right after frame %zu", i);
    cr_assert(atun_frame_reader_ready(&r));
    check_frame(&r, &s, i);
  }
  cr_assert_eq(atun_frame_reader_feed(&r, s.b + off, 0), 0);
  cr_assert(!atun_frame_reader_ready(&r));
  atun_frame_reader_free(&r);
}

Test(reader, one_byte_at_a_time) {
  stream s;
  control_stream(&s);
  feed_chunked(&s, ATUN_CONTROL_PAYLOAD_MAX, NULL);
}

Test(reader, random_chunkings) {
  stream s;
  control_stream(&s);
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    atun_testrng rng;
    atun_testrng_seed(&rng, seed);
    feed_chunked(&s, ATUN_CONTROL_PAYLOAD_MAX, &rng);
  }
}

Test(reader, decodes_held_frame) {
  stream s;
  control_stream(&s);
  atun_frame_reader r;
  atun_msg m;
  atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX, atun_mem_default());
  cr_assert_eq(atun_frame_reader_decode(&r, &m, atun_mem_default()),
               ATUN_ERR_STATE);
  cr_assert_eq(atun_frame_reader_feed(&r, s.b, s.n), (ssize_t)s.ends[0]);
  cr_assert_eq(atun_frame_reader_decode(&r, &m, atun_mem_default()), 0);
  cr_assert_eq(m.type, ATUN_FRAME_HELLO);
  cr_assert_str_eq(m.u.hello.software_version, "atun-agent 0.1.0");
  /* The next feed drops the held frame. */
  cr_assert_gt(atun_frame_reader_feed(&r, s.b + s.ends[0], 1), 0);
  cr_assert(!atun_frame_reader_ready(&r));
  cr_assert_eq(atun_frame_reader_decode(&r, &m, atun_mem_default()),
               ATUN_ERR_STATE);
  atun_frame_reader_free(&r);
}

Test(reader, session_stream_leaves_raw_bytes) {
  static const char raw[] = "SSH-2.0-OpenSSH_9.2\r\n";
  stream s;
  memset(&s, 0, sizeof(s));
  atun_msg m = {.type = ATUN_FRAME_CONNECT_REQUEST};
  memset(m.u.connect_request.session_id, 0x5a, ATUN_SESSION_ID_LEN);
  m.u.connect_request.port = 22;
  m.u.connect_request.target.kind = ATUN_TARGET_HOST;
  strcpy(m.u.connect_request.target.host, "bastion.corp.example");
  add(&s, &m);
  memcpy(s.b + s.n, raw, sizeof(raw));
  for (size_t split = 1; split <= s.ends[0] + sizeof(raw); ++split) {
    atun_frame_reader r;
    atun_frame_reader_init(&r, ATUN_SESSION_PAYLOAD_MAX, atun_mem_default());
    size_t total = s.ends[0] + sizeof(raw);
    size_t off = (size_t)atun_frame_reader_feed(&r, s.b, split);
    if (!atun_frame_reader_ready(&r)) {
      off += (size_t)atun_frame_reader_feed(&r, s.b + off, total - off);
    }
    cr_assert(atun_frame_reader_ready(&r), "split %zu", split);
    cr_assert_eq(off, s.ends[0], "split %zu consumed %zu", split, off);
    atun_msg out;
    cr_assert_eq(atun_frame_reader_decode(&r, &out, atun_mem_default()), 0);
    cr_assert_str_eq(out.u.connect_request.target.host, "bastion.corp.example");
    atun_frame_reader_free(&r);
  }
}

/* Feeds |hdr| one byte at a time and expects every byte accepted except
 * the last, which fails with |want|; nothing may be allocated. */
static void reject_header(size_t payload_max, const uint8_t *hdr, size_t n,
                          int want) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_frame_reader r;
  atun_frame_reader_init(&r, payload_max, &fm.mem);
  for (size_t i = 0; i + 1 < n; ++i) {
    cr_assert_eq(atun_frame_reader_feed(&r, hdr + i, 1), 1, "byte %zu", i);
  }
  cr_assert_eq(atun_frame_reader_feed(&r, hdr + n - 1, 1), want);
  /* Sticky, also at the end of the stream. */
  cr_assert_eq(atun_frame_reader_feed(&r, hdr, 1), want);
  cr_assert_eq(atun_frame_reader_eof(&r), want);
  cr_assert(!atun_frame_reader_ready(&r));
  cr_assert_eq(fm.allocs, 0);
  atun_frame_reader_free(&r);
}

Test(reader, limits_checked_on_the_length) {
  /* Control: 1 MiB + 1. */
  static const uint8_t ctl_over[] = {0x03, 0x80, 0x10, 0x00, 0x01};
  reject_header(ATUN_CONTROL_PAYLOAD_MAX, ctl_over, 5, ATUN_ERR_FRAME_TOO_LARGE);
  /* The largest varint. */
  static const uint8_t huge[] = {0x03, 0xff, 0xff, 0xff, 0xff,
                                 0xff, 0xff, 0xff, 0xff};
  reject_header(ATUN_CONTROL_PAYLOAD_MAX, huge, 9, ATUN_ERR_FRAME_TOO_LARGE);
  /* Session frames: 4097 on either reader. */
  static const uint8_t sess_over[] = {0x10, 0x50, 0x01};
  reject_header(ATUN_CONTROL_PAYLOAD_MAX, sess_over, 3, ATUN_ERR_FRAME_TOO_LARGE);
  reject_header(ATUN_SESSION_PAYLOAD_MAX, sess_over, 3, ATUN_ERR_FRAME_TOO_LARGE);
  /* A control type on a session-sized reader. */
  static const uint8_t hb_over[] = {0x04, 0x50, 0x01};
  reject_header(ATUN_SESSION_PAYLOAD_MAX, hb_over, 3, ATUN_ERR_FRAME_TOO_LARGE);
  /* Unknown types, refused on their first byte. */
  static const uint8_t unknown[] = {0x0a, 0x12, 0x00, 0xff};
  for (size_t i = 0; i < sizeof(unknown); ++i) {
    reject_header(ATUN_CONTROL_PAYLOAD_MAX, unknown + i, 1, ATUN_ERR_UNKNOWN_TYPE);
  }
}

/* Feeds a frame of type |type| announcing |len| bytes and delivers them. */
static void accept_at_limit(size_t payload_max, uint8_t type, size_t len) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_frame_reader r;
  atun_frame_reader_init(&r, payload_max, &fm.mem);
  uint8_t hdr[ATUN_FRAME_HEADER_MAX] = {type};
  size_t hdrlen = (size_t)(atun_varint_put(hdr + 1, len) - hdr);
  cr_assert_eq(atun_frame_reader_feed(&r, hdr, hdrlen), (ssize_t)hdrlen);
  uint8_t *body = calloc(1, len);
  cr_assert_eq(atun_frame_reader_feed(&r, body, 10), 10);
  /* Only what arrived is buffered, not the announced length. */
  cr_assert_eq(fm.live_bytes, 10);
  cr_assert_eq(atun_frame_reader_feed(&r, body + 10, len - 10),
               (ssize_t)(len - 10));
  cr_assert(atun_frame_reader_ready(&r));
  cr_assert_leq(fm.live_bytes, len);
  free(body);
  atun_frame_reader_free(&r);
  cr_assert_eq(fm.live, 0);
}

Test(reader, accepts_exactly_the_limits) {
  accept_at_limit(ATUN_CONTROL_PAYLOAD_MAX, ATUN_FRAME_ROUTE_ADVERTISE,
                  ATUN_CONTROL_PAYLOAD_MAX);
  accept_at_limit(ATUN_SESSION_PAYLOAD_MAX, ATUN_FRAME_CONNECT_REQUEST,
                  ATUN_SESSION_PAYLOAD_MAX);
  accept_at_limit(ATUN_SESSION_PAYLOAD_MAX, ATUN_FRAME_HEARTBEAT,
                  ATUN_SESSION_PAYLOAD_MAX);
}

Test(reader, buffer_bounded_in_small_chunks) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_frame_reader r;
  atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX, &fm.mem);
  static const uint8_t hdr[] = {0x03, 0x80, 0x01, 0x00, 0x00}; /* 64 KiB */
  size_t len = 65536;
  cr_assert_eq(atun_frame_reader_feed(&r, hdr, sizeof(hdr)), 5);
  uint8_t chunk[1000] = {0};
  size_t have = 0;
  while (have < len) {
    size_t n = len - have < sizeof(chunk) ? len - have : sizeof(chunk);
    cr_assert_eq(atun_frame_reader_feed(&r, chunk, n), (ssize_t)n);
    have += n;
    cr_assert_leq(fm.live_bytes, len);
  }
  cr_assert(atun_frame_reader_ready(&r));
  cr_assert_eq(r.buf_cap, len);
  atun_frame_reader_free(&r);
  cr_assert_eq(fm.live, 0);
}

Test(reader, eof_between_and_inside_frames) {
  stream s;
  control_stream(&s);
  atun_frame_reader r;
  /* Frame 3, the Goodbye, has a two-byte length: cut after the type, inside
   * the length, right after it, and inside the payload. */
  size_t start = s.ends[2];
  static const size_t cuts[] = {1, 2, 3, 10};
  for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); ++i) {
    atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX, atun_mem_default());
    cr_assert_eq(atun_frame_reader_feed(&r, s.b + start, cuts[i]),
                 (ssize_t)cuts[i]);
    cr_assert(!atun_frame_reader_ready(&r));
    cr_assert_eq(atun_frame_reader_eof(&r), ATUN_ERR_TRUNCATED, "cut %zu",
                 cuts[i]);
    atun_frame_reader_free(&r);
  }
  atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX, atun_mem_default());
  cr_assert_eq(atun_frame_reader_eof(&r), 0);
  cr_assert_eq(atun_frame_reader_feed(&r, s.b + start, s.n - start),
               (ssize_t)(s.ends[3] - start));
  cr_assert_eq(atun_frame_reader_eof(&r), 0);
  atun_frame_reader_free(&r);
}

Test(reader, empty_payload_frame) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_frame_reader r;
  atun_frame_reader_init(&r, ATUN_SESSION_PAYLOAD_MAX, &fm.mem);
  cr_assert_eq(atun_frame_reader_feed(&r, (const uint8_t *)"\x11\x00\x11", 3), 2);
  cr_assert(atun_frame_reader_ready(&r));
  uint8_t type;
  const uint8_t *payload;
  size_t len;
  atun_frame_reader_frame(&r, &type, &payload, &len);
  cr_assert_eq(type, ATUN_FRAME_CONNECT_RESPONSE);
  cr_assert_eq(len, 0);
  atun_msg m;
  cr_assert_eq(atun_frame_reader_decode(&r, &m, &fm.mem), ATUN_ERR_MISSING_FIELD);
  cr_assert_eq(fm.allocs, 0);
  atun_frame_reader_free(&r);
}

Test(reader, init_rejects_oversized_limit) {
  atun_frame_reader r;
  cr_assert_eq(atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX + 1,
                                      atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
}

/* Fails the allocator at each allocation in turn while the stream arrives
 * in small chunks (so the buffer grows several times): each run reports
 * ATUN_ERR_NOMEM, stays failed, and leaks nothing once freed. */
Test(reader, allocation_failure_every_index) {
  stream s;
  control_stream(&s);
  long k;
  for (k = 0;; ++k) {
    atun_failmem fm;
    atun_failmem_init(&fm, k);
    atun_frame_reader r;
    atun_frame_reader_init(&r, ATUN_CONTROL_PAYLOAD_MAX, &fm.mem);
    size_t off = 0;
    ssize_t n = 0;
    while (off < s.n) {
      size_t len = s.n - off < 7 ? s.n - off : 7;
      n = atun_frame_reader_feed(&r, s.b + off, len);
      if (n < 0) break;
      off += (size_t)n;
    }
    if (n < 0) {
      cr_assert_eq(n, ATUN_ERR_NOMEM);
      cr_assert_eq(atun_frame_reader_feed(&r, s.b, 1), ATUN_ERR_NOMEM);
      cr_assert_eq(atun_frame_reader_eof(&r), ATUN_ERR_NOMEM);
    }
    atun_frame_reader_free(&r);
    cr_assert_eq(fm.live, 0, "k=%ld", k);
    if (n >= 0) {
      cr_assert_eq(fm.failures, 0);
      break;
    }
  }
  cr_assert_gt(k, 2, "the buffer should have grown several times");
}
