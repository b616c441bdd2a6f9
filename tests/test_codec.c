/*
 * Wire codec: round trips, golden bytes, every rejection, allocation
 * failures.  The frame reader has its own file, test_reader.c.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "support.h"
#include "varint.h"

/* Large enough for a RouteAdvertise at both list limits. */
#define BIG (ATUN_CONTROL_PAYLOAD_MAX + ATUN_FRAME_HEADER_MAX)

static uint8_t *big_buf(void) {
  uint8_t *p = malloc(BIG);
  cr_assert_not_null(p);
  return p;
}

/* --- payload building by hand ---------------------------------------------------- */

typedef struct pb {
  uint8_t b[8192];
  size_t n;
} pb;

static void pb_varint(pb *p, uint64_t v) {
  p->n = (size_t)(atun_varint_put(p->b + p->n, v) - p->b);
}

static void pb_raw(pb *p, const void *v, size_t n) {
  memcpy(p->b + p->n, v, n);
  p->n += n;
}

static void pb_field(pb *p, uint64_t id, const void *v, size_t n) {
  pb_varint(p, id);
  pb_varint(p, n);
  pb_raw(p, v, n);
}

static void pb_uint(pb *p, uint64_t id, uint64_t v) {
  pb_varint(p, id);
  pb_varint(p, atun_varint_len(v));
  pb_varint(p, v);
}

static void pb_str(pb *p, uint64_t id, const char *s) {
  pb_field(p, id, s, strlen(s));
}

static int dec(atun_msg *m, uint8_t type, const pb *p) {
  return atun_msg_decode(m, type, p->b, p->n, atun_mem_default());
}

/* Decodes a hand-built payload and expects |want|; frees on success. */
static void expect(uint8_t type, const pb *p, int want) {
  atun_msg m;
  int rv = dec(&m, type, p);
  cr_assert_eq(rv, want, "type 0x%02x: got %d (%s), want %d (%s)", type, rv,
               atun_strerror(rv), want, atun_strerror(want));
  if (rv == 0) atun_msg_free(&m, atun_mem_default());
}

/* --- encode helpers ------------------------------------------------------------- */

/* Encodes |m| into |buf| and checks the size function agrees. */
static size_t enc(const atun_msg *m, uint8_t *buf, size_t cap) {
  ssize_t size = atun_frame_encoded_size(m);
  ssize_t n = atun_frame_encode(buf, cap, m);
  cr_assert_gt(n, 0, "encode: %s", atun_strerror((int)n));
  cr_assert_eq(n, size);
  return (size_t)n;
}

static void expect_enc_err(const atun_msg *m, int want) {
  uint8_t buf[64];
  cr_assert_eq(atun_frame_encoded_size(m), want, "size: got %zd want %d",
               atun_frame_encoded_size(m), want);
  cr_assert_eq(atun_frame_encode(buf, sizeof(buf), m), want);
}

/* Encodes, decodes the frame again and returns the decoded message. */
static void roundtrip(const atun_msg *in, atun_msg *out) {
  uint8_t *buf = big_buf();
  size_t n = enc(in, buf, BIG);
  int rv = atun_frame_decode(out, buf, n, atun_mem_default());
  cr_assert_eq(rv, 0, "decode: %s", atun_strerror(rv));
  cr_assert_eq(out->type, in->type);
  free(buf);
}

static void str_eq_opt(const char *a, const char *b) {
  if (a == NULL || a[0] == '\0') {
    cr_assert(b == NULL || b[0] == '\0');
  } else {
    cr_assert_not_null(b);
    cr_assert_str_eq(a, b);
  }
}

/* --- versions, varints, names ------------------------------------------------------ */

Test(codec, version_negotiate) {
  uint32_t v = 0;
  cr_assert_eq(atun_version_negotiate(2, 2, 2, 2, &v), 0);
  cr_assert_eq(v, 2);
  cr_assert_eq(atun_version_negotiate(1, 5, 3, 9, &v), 0);
  cr_assert_eq(v, 5);
  cr_assert_eq(atun_version_negotiate(3, 9, 1, 4, &v), 0);
  cr_assert_eq(v, 4);
  cr_assert_eq(atun_version_negotiate(2, 2, 3, 4, &v), ATUN_ERR_VERSION);
  cr_assert_eq(atun_version_negotiate(3, 4, 1, 2, &v), ATUN_ERR_VERSION);
  cr_assert_eq(atun_version_negotiate(3, 2, 1, 4, &v),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_version_negotiate(1, 4, 3, 2, &v),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(ATUN_ALPN, "atun/2");
  cr_assert_eq(strlen(ATUN_ALPN), ATUN_ALPN_LEN);
  cr_assert_eq(ATUN_ALPN_WIRE[0], ATUN_ALPN_LEN);
  cr_assert_eq(ATUN_PROTO_VERSION_MIN, 2);
  cr_assert_eq(ATUN_PROTO_VERSION_MAX, 2);
}

Test(codec, varint_boundaries) {
  static const struct {
    uint64_t v;
    size_t len;
  } cases[] = {{0, 1},          {63, 1},         {64, 2},
               {16383, 2},      {16384, 4},      {1073741823, 4},
               {1073741824, 8}, {ATUN_VARINT_MAX, 8}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    uint8_t buf[8];
    cr_assert_eq(atun_varint_len(cases[i].v), cases[i].len);
    uint8_t *end = atun_varint_put(buf, cases[i].v);
    cr_assert_eq((size_t)(end - buf), cases[i].len);
    cr_assert_eq(atun_varint_len_from_first(buf[0]), cases[i].len);
    for (size_t cut = 0; cut < cases[i].len; ++cut) {
      const uint8_t *p = buf;
      uint64_t v;
      cr_assert_eq(atun_varint_get(&p, buf + cut, &v), ATUN_ERR_TRUNCATED);
      cr_assert_eq(p, buf);
    }
    const uint8_t *p = buf;
    uint64_t v = 0;
    cr_assert_eq(atun_varint_get(&p, end, &v), 0);
    cr_assert_eq(v, cases[i].v);
    cr_assert_eq(p, end);
  }
}

Test(codec, varint_rfc9000_examples) {
  /* RFC 9000 appendix A.1, including a non-minimal two-byte 37. */
  static const uint8_t e8[] = {0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c};
  static const uint8_t e4[] = {0x9d, 0x7f, 0x3e, 0x7d};
  static const uint8_t e2[] = {0x7b, 0xbd};
  static const uint8_t e2nm[] = {0x40, 0x25};
  const uint8_t *p;
  uint64_t v;
  p = e8;
  cr_assert_eq(atun_varint_get(&p, e8 + 8, &v), 0);
  cr_assert_eq(v, 151288809941952652ULL);
  p = e4;
  cr_assert_eq(atun_varint_get(&p, e4 + 4, &v), 0);
  cr_assert_eq(v, 494878333);
  p = e2;
  cr_assert_eq(atun_varint_get(&p, e2 + 2, &v), 0);
  cr_assert_eq(v, 15293);
  p = e2nm;
  cr_assert_eq(atun_varint_get(&p, e2nm + 2, &v), 0);
  cr_assert_eq(v, 37);
}

static int name_rv(const char *in) {
  char out[ATUN_NAME_MAX + 1];
  return atun_name_normalize(out, in, strlen(in));
}

static char *repeat(char *dst, char c, size_t n) {
  memset(dst, c, n);
  dst[n] = '\0';
  return dst;
}

/* A name of exactly |total| characters made of 63-character labels. */
static void long_name(char *dst, size_t total) {
  for (size_t i = 0; i < total; ++i) dst[i] = (i % 64 == 63) ? '.' : 'a';
  if (dst[total - 1] == '.') dst[total - 1] = 'b';
  dst[total] = '\0';
}

Test(codec, name_rules) {
  char out[ATUN_NAME_MAX + 1];
  char buf[600];
  cr_assert_eq(atun_name_normalize(out, "Corp.Example.", 13), 0);
  cr_assert_str_eq(out, "corp.example");
  cr_assert_eq(name_rv("a-b.x1"), 0);
  cr_assert_eq(name_rv("lan"), 0);
  cr_assert_eq(name_rv(""), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("."), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a..b"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv(".a"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a.."), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("-a.b"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a-.b"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a.b-"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a.-b"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a_b.c"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a b.c"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("a\tb.c"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("caf\xc3\xa9.example"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv("bad\xff.example"), ATUN_ERR_BAD_NAME);
  cr_assert_eq(atun_name_normalize(out, "a\0b", 3), ATUN_ERR_BAD_NAME);
  cr_assert_eq(name_rv(repeat(buf, 'a', 63)), 0);
  cr_assert_eq(name_rv(repeat(buf, 'a', 64)), ATUN_ERR_BAD_NAME);
  long_name(buf, 253);
  cr_assert_eq(name_rv(buf), 0);
  strcat(buf, ".");
  cr_assert_eq(name_rv(buf), 0); /* 254 with the trailing dot */
  long_name(buf, 254);
  cr_assert_eq(name_rv(buf), ATUN_ERR_BAD_NAME);
}

Test(codec, text_rules) {
  static const char *const good[] = {"", "plain", "caf\xc3\xa9",
                                     "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                     "\xef\xbf\xbd"};
  static const char *const bad[] = {
      "\xc0\xaf",          /* overlong '/' */
      "\xe0\x80\xaf",      /* overlong, 3 bytes */
      "\xf0\x80\x80\xaf",  /* overlong, 4 bytes */
      "\xed\xa0\x80",      /* surrogate */
      "\xf4\x90\x80\x80",  /* above U+10FFFF */
      "\xf5\x80\x80\x80",  /* invalid lead */
      "\x80",              /* lone continuation */
      "\xc3",              /* cut sequence */
      "\xe2\x82",          /* cut sequence */
      "\xc3\x28",          /* bad continuation */
      "line\nbreak", "tab\t", "esc\x1b[0m", "del\x7f",
      "\xc2\x85",          /* C1 NEL */
      "\xc2\x9f"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); ++i) {
    cr_assert(atun_text_valid(good[i], strlen(good[i])), "good %zu", i);
  }
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    cr_assert(!atun_text_valid(bad[i], strlen(bad[i])), "bad %zu", i);
  }
  cr_assert(!atun_text_valid("a\0b", 3));
}

Test(codec, names_and_error_mapping) {
  cr_assert_str_eq(atun_frame_type_name(ATUN_FRAME_HELLO), "hello");
  cr_assert_str_eq(atun_frame_type_name(ATUN_FRAME_CONNECT_RESPONSE),
                   "connect_response");
  cr_assert_str_eq(atun_frame_type_name(0x0a), "unknown");
  for (int t = 0; t < 256; ++t) {
    int known = atun_frame_type_known((uint8_t)t);
    cr_assert_eq(known, strcmp(atun_frame_type_name((uint8_t)t), "unknown") != 0);
    cr_assert_eq(atun_frame_payload_max((uint8_t)t) != 0, known);
  }
  cr_assert_eq(atun_frame_payload_max(ATUN_FRAME_CONNECT_REQUEST),
               ATUN_SESSION_PAYLOAD_MAX);
  cr_assert_eq(atun_frame_payload_max(ATUN_FRAME_HELLO), ATUN_CONTROL_PAYLOAD_MAX);
  cr_assert(atun_frame_type_is_session(ATUN_FRAME_CONNECT_RESPONSE));
  cr_assert(!atun_frame_type_is_session(ATUN_FRAME_HEARTBEAT));

  cr_assert_str_eq(atun_app_error_name(ATUN_APP_NO_ERROR), "no_error");
  cr_assert_str_eq(atun_app_error_name(ATUN_APP_PROTOCOL_VIOLATION),
                   "protocol_violation");
  cr_assert_str_eq(atun_app_error_name(ATUN_APP_OVERLOADED), "overloaded");
  cr_assert_str_eq(atun_app_error_name(ATUN_APP_OVERLOADED + 1), "unknown");
  cr_assert_str_eq(atun_connect_status_name(ATUN_CONNECT_DNS_FAILURE),
                   "dns_failure");
  cr_assert_str_eq(atun_connect_status_name(7), "unknown");
  cr_assert_str_eq(atun_cert_status_name(ATUN_CERT_STATUS_RETRY_LATER),
                   "retry_later");
  cr_assert_str_eq(atun_cert_status_name(5), "unknown");

  static const struct {
    int err;
    uint64_t app;
  } map[] = {{0, ATUN_APP_NO_ERROR},
             {ATUN_ERR_FRAME_TOO_LARGE, ATUN_APP_FRAME_TOO_LARGE},
             {ATUN_ERR_UNKNOWN_TYPE, ATUN_APP_UNKNOWN_FRAME},
             {ATUN_ERR_LIMIT, ATUN_APP_LIMIT_EXCEEDED},
             {ATUN_ERR_VERSION, ATUN_APP_VERSION_MISMATCH},
             {ATUN_ERR_TRUNCATED, ATUN_APP_MALFORMED_FRAME},
             {ATUN_ERR_MALFORMED, ATUN_APP_MALFORMED_FRAME},
             {ATUN_ERR_BAD_PREFIX, ATUN_APP_MALFORMED_FRAME},
             {ATUN_ERR_BAD_NAME, ATUN_APP_MALFORMED_FRAME},
             {ATUN_ERR_MISSING_FIELD, ATUN_APP_MALFORMED_FRAME},
             {ATUN_ERR_TRAILING, ATUN_APP_MALFORMED_FRAME},
             {ATUN_ERR_PROTO, ATUN_APP_PROTOCOL_VIOLATION},
             {ATUN_ERR_STATE, ATUN_APP_PROTOCOL_VIOLATION},
             {ATUN_ERR_NOMEM, ATUN_APP_INTERNAL},
             {ATUN_ERR_INTERNAL, ATUN_APP_INTERNAL}};
  for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); ++i) {
    cr_assert_eq(atun_app_error_from_codec(map[i].err), map[i].app, "%d",
                 map[i].err);
  }
}

/* --- round trips ---------------------------------------------------------------- */

Test(codec, roundtrip_hello) {
  atun_msg in = {.type = ATUN_FRAME_HELLO};
  atun_msg out;
  in.u.hello.min_version = 2;
  in.u.hello.max_version = 7;
  strcpy(in.u.hello.software_version, "atun-agent 0.1.0 (caf\xc3\xa9)");
  roundtrip(&in, &out);
  cr_assert_eq(out.u.hello.min_version, 2);
  cr_assert_eq(out.u.hello.max_version, 7);
  cr_assert_str_eq(out.u.hello.software_version, in.u.hello.software_version);
  in.u.hello.software_version[0] = '\0';
  in.u.hello.max_version = UINT32_MAX;
  roundtrip(&in, &out);
  cr_assert_eq(out.u.hello.max_version, UINT32_MAX);
  cr_assert_str_eq(out.u.hello.software_version, "");
}

Test(codec, roundtrip_hello_ack) {
  atun_msg in = {.type = ATUN_FRAME_HELLO_ACK};
  atun_msg out;
  atun_hello_ack *a = &in.u.hello_ack;
  a->chosen_version = 2;
  a->heartbeat_interval_ms = 15000;
  roundtrip(&in, &out);
  cr_assert_eq(out.u.hello_ack.chosen_version, 2);
  cr_assert_eq(out.u.hello_ack.heartbeat_interval_ms, 15000);
  cr_assert_eq(out.u.hello_ack.offline_timeout_ms, 0);
  cr_assert_eq(out.u.hello_ack.has_agent_id, 0);
  a->offline_timeout_ms = 45000;
  a->has_agent_id = 1;
  for (int i = 0; i < ATUN_AGENT_ID_LEN; ++i) a->agent_id[i] = (uint8_t)(0xa0 + i);
  strcpy(a->software_version, "atun-gateway 0.1.0");
  roundtrip(&in, &out);
  cr_assert_eq(out.u.hello_ack.offline_timeout_ms, 45000);
  cr_assert_eq(out.u.hello_ack.has_agent_id, 1);
  cr_assert_arr_eq(out.u.hello_ack.agent_id, a->agent_id, ATUN_AGENT_ID_LEN);
  cr_assert_str_eq(out.u.hello_ack.software_version, "atun-gateway 0.1.0");
}

static void prefix(atun_prefix *p, const char *text) {
  cr_assert_eq(atun_prefix_parse(p, text), 0, "%s", text);
}

Test(codec, roundtrip_route_advertise) {
  atun_prefix subnets[4];
  atun_domain domains[2] = {{"Corp.Example.", 0}, {"lan", 1}};
  prefix(&subnets[0], "10.0.0.0/8");
  prefix(&subnets[1], "192.168.1.7/32");
  prefix(&subnets[2], "2001:db8::/32");
  prefix(&subnets[3], "::/0");
  atun_msg in = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  in.u.route_advertise = (atun_route_advertise){
      .epoch = ATUN_VARINT_MAX, .subnets = subnets, .subnet_count = 4,
      .domains = domains, .domain_count = 2};
  atun_msg out;
  roundtrip(&in, &out);
  const atun_route_advertise *r = &out.u.route_advertise;
  cr_assert_eq(r->epoch, ATUN_VARINT_MAX);
  cr_assert_eq(r->subnet_count, 4);
  for (int i = 0; i < 4; ++i) {
    cr_assert_eq(atun_prefix_cmp(&r->subnets[i], &subnets[i]), 0);
  }
  cr_assert_eq(r->domain_count, 2);
  cr_assert_str_eq(r->domains[0].name, "corp.example");
  cr_assert_eq(r->domains[0].auto_detected, 0);
  cr_assert_str_eq(r->domains[1].name, "lan");
  cr_assert_eq(r->domains[1].auto_detected, 1);
  atun_msg_free(&out, atun_mem_default());
  cr_assert_null(out.u.route_advertise.subnets);
}

Test(codec, roundtrip_route_advertise_empty) {
  atun_msg in = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  in.u.route_advertise.epoch = 1;
  atun_msg out;
  roundtrip(&in, &out);
  cr_assert_eq(out.u.route_advertise.epoch, 1);
  cr_assert_eq(out.u.route_advertise.subnet_count, 0);
  cr_assert_eq(out.u.route_advertise.domain_count, 0);
  cr_assert_null(out.u.route_advertise.subnets);
  cr_assert_null(out.u.route_advertise.domains);
  atun_msg_free(&out, atun_mem_default());
}

/* An advertisement with |subnets| IPv6 /128s and |domains| names of the
 * longest length, the largest a version 2 frame gets. */
static atun_msg max_advertise(size_t subnets, size_t domains) {
  atun_msg m = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  atun_route_advertise *r = &m.u.route_advertise;
  r->epoch = 9;
  r->subnets = calloc(subnets ? subnets : 1, sizeof(*r->subnets));
  r->domains = calloc(domains ? domains : 1, sizeof(*r->domains));
  cr_assert(r->subnets != NULL && r->domains != NULL);
  for (size_t i = 0; i < subnets; ++i) {
    r->subnets[i].addr.family = ATUN_AF_INET6;
    r->subnets[i].addr.bytes[0] = 0xfd;
    r->subnets[i].addr.bytes[14] = (uint8_t)(i >> 8);
    r->subnets[i].addr.bytes[15] = (uint8_t)i;
    r->subnets[i].len = 128;
  }
  for (size_t i = 0; i < domains; ++i) {
    long_name(r->domains[i].name, ATUN_NAME_MAX);
    /* Distinct names: the index in hex letters leads the first label. */
    for (int k = 0; k < 4; ++k) {
      r->domains[i].name[k] = (char)('a' + ((i >> (4 * k)) & 0xf));
    }
    r->domains[i].auto_detected = (uint8_t)(i & 1);
  }
  r->subnet_count = subnets;
  r->domain_count = domains;
  return m;
}

static void free_max_advertise(atun_msg *m) {
  free(m->u.route_advertise.subnets);
  free(m->u.route_advertise.domains);
}

Test(codec, route_advertise_at_limits) {
  atun_msg in = max_advertise(ATUN_SUBNETS_MAX, ATUN_DOMAINS_MAX);
  atun_msg out;
  roundtrip(&in, &out);
  const atun_route_advertise *r = &out.u.route_advertise;
  cr_assert_eq(r->subnet_count, ATUN_SUBNETS_MAX);
  cr_assert_eq(r->domain_count, ATUN_DOMAINS_MAX);
  cr_assert_eq(memcmp(r->subnets, in.u.route_advertise.subnets,
                      ATUN_SUBNETS_MAX * sizeof(atun_prefix)), 0);
  for (size_t i = 0; i < ATUN_DOMAINS_MAX; ++i) {
    cr_assert_str_eq(r->domains[i].name, in.u.route_advertise.domains[i].name);
    cr_assert_eq(r->domains[i].auto_detected, i & 1);
  }
  cr_assert_lt(atun_frame_encoded_size(&in), (ssize_t)ATUN_CONTROL_PAYLOAD_MAX);
  atun_msg_free(&out, atun_mem_default());
  free_max_advertise(&in);
}

/* Encodes |m| with one more list entry than the encoder allows, by gluing
 * a raw field onto a legal payload, and checks the decoder refuses it. */
static void over_limit(atun_msg *m, const void *extra, size_t extralen) {
  uint8_t *buf = big_buf();
  size_t n = enc(m, buf, BIG);
  const uint8_t *p = buf + 1;
  uint64_t len;
  cr_assert_eq(atun_varint_get(&p, buf + n, &len), 0);
  memcpy(buf + n, extra, extralen);
  atun_msg out;
  int rv = atun_msg_decode(&out, m->type, p, (size_t)len + extralen,
                           atun_mem_default());
  cr_assert_eq(rv, ATUN_ERR_LIMIT, "%s", atun_strerror(rv));
  free(buf);
}

Test(codec, route_advertise_over_limits) {
  static const uint8_t subnet[] = {2, 5, 8, 10, 0, 0, 0};
  static const uint8_t domain[] = {3, 3, 1, 1, 'x'};
  atun_msg in = max_advertise(ATUN_SUBNETS_MAX, 0);
  over_limit(&in, subnet, sizeof(subnet));
  in.u.route_advertise.subnet_count = ATUN_SUBNETS_MAX + 1;
  expect_enc_err(&in, ATUN_ERR_LIMIT);
  free_max_advertise(&in);

  in = max_advertise(0, ATUN_DOMAINS_MAX);
  over_limit(&in, domain, sizeof(domain));
  in.u.route_advertise.domain_count = ATUN_DOMAINS_MAX + 1;
  expect_enc_err(&in, ATUN_ERR_LIMIT);
  free_max_advertise(&in);
}

Test(codec, roundtrip_heartbeats) {
  atun_msg in = {.type = ATUN_FRAME_HEARTBEAT};
  atun_msg out;
  in.u.heartbeat = (atun_heartbeat){UINT64_C(1) << 40, 123456789012345ULL, 77};
  roundtrip(&in, &out);
  cr_assert_eq(out.u.heartbeat.seq, UINT64_C(1) << 40);
  cr_assert_eq(out.u.heartbeat.sent_at, 123456789012345ULL);
  cr_assert_eq(out.u.heartbeat.active_stream_count, 77);

  in.type = ATUN_FRAME_HEARTBEAT_ACK;
  in.u.heartbeat_ack = (atun_heartbeat_ack){5, 0};
  roundtrip(&in, &out);
  cr_assert_eq(out.u.heartbeat_ack.seq, 5);
  cr_assert_eq(out.u.heartbeat_ack.echo_sent_at, 0);
}

Test(codec, roundtrip_goodbye_and_error) {
  atun_msg in = {.type = ATUN_FRAME_GOODBYE};
  atun_msg out;
  in.u.goodbye.reason = ATUN_GOODBYE_SHUTDOWN;
  in.u.goodbye.message = "draining for 30 s";
  roundtrip(&in, &out);
  cr_assert_eq(out.u.goodbye.reason, ATUN_GOODBYE_SHUTDOWN);
  cr_assert_str_eq(out.u.goodbye.message, "draining for 30 s");
  atun_msg_free(&out, atun_mem_default());
  in.u.goodbye = (atun_goodbye){999, NULL}; /* future reasons pass */
  roundtrip(&in, &out);
  cr_assert_eq(out.u.goodbye.reason, 999);
  cr_assert_null(out.u.goodbye.message);

  in.type = ATUN_FRAME_ERROR;
  in.u.error = (atun_error_frame){ATUN_APP_VERSION_MISMATCH,
                                  "no common version", 2, 3};
  roundtrip(&in, &out);
  cr_assert_eq(out.u.error.code, ATUN_APP_VERSION_MISMATCH);
  cr_assert_str_eq(out.u.error.message, "no common version");
  cr_assert_eq(out.u.error.supported_min_version, 2);
  cr_assert_eq(out.u.error.supported_max_version, 3);
  atun_msg_free(&out, atun_mem_default());
  in.u.error = (atun_error_frame){ATUN_APP_INTERNAL, "", 0, 0};
  roundtrip(&in, &out);
  cr_assert_null(out.u.error.message);
  cr_assert_eq(out.u.error.supported_min_version, 0);
}

Test(codec, roundtrip_cert_renew) {
  uint8_t der[ATUN_CSR_MAX];
  for (size_t i = 0; i < sizeof(der); ++i) der[i] = (uint8_t)(i * 7);
  atun_msg in = {.type = ATUN_FRAME_CERT_RENEW_REQUEST};
  atun_msg out;
  in.u.cert_renew_request = (atun_cert_renew_request){der, sizeof(der), 1};
  roundtrip(&in, &out);
  cr_assert_eq(out.u.cert_renew_request.csr_len, sizeof(der));
  cr_assert_arr_eq(out.u.cert_renew_request.csr, der, sizeof(der));
  cr_assert_eq(out.u.cert_renew_request.rotate_key, 1);
  atun_msg_free(&out, atun_mem_default());

  in.type = ATUN_FRAME_CERT_RENEW_RESPONSE;
  in.u.cert_renew_response =
      (atun_cert_renew_response){ATUN_CERT_STATUS_OK, der, 1, "renewed"};
  roundtrip(&in, &out);
  cr_assert_eq(out.u.cert_renew_response.status, ATUN_CERT_STATUS_OK);
  cr_assert_eq(out.u.cert_renew_response.cert_len, 1);
  cr_assert_eq(out.u.cert_renew_response.cert[0], der[0]);
  cr_assert_str_eq(out.u.cert_renew_response.message, "renewed");
  atun_msg_free(&out, atun_mem_default());
  for (uint64_t s = 1; s <= ATUN_CERT_STATUS_MAX; ++s) {
    in.u.cert_renew_response = (atun_cert_renew_response){s, NULL, 0, NULL};
    roundtrip(&in, &out);
    cr_assert_eq(out.u.cert_renew_response.status, s);
    cr_assert_null(out.u.cert_renew_response.cert);
  }
}

static atun_msg connect_request(void) {
  atun_msg m = {.type = ATUN_FRAME_CONNECT_REQUEST};
  for (int i = 0; i < ATUN_SESSION_ID_LEN; ++i) {
    m.u.connect_request.session_id[i] = (uint8_t)i;
  }
  m.u.connect_request.port = 22;
  m.u.connect_request.target.kind = ATUN_TARGET_ADDR;
  cr_assert_eq(atun_addr_parse(&m.u.connect_request.target.addr,
                               "192.168.1.10"), 0);
  return m;
}

Test(codec, roundtrip_connect_request_every_target) {
  static const char *const addrs[] = {"192.168.1.10", "0.0.0.0", "2001:db8::1",
                                      "::"};
  atun_msg in = connect_request();
  atun_msg out;
  for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); ++i) {
    cr_assert_eq(atun_addr_parse(&in.u.connect_request.target.addr, addrs[i]), 0);
    roundtrip(&in, &out);
    const atun_connect_request *c = &out.u.connect_request;
    cr_assert_eq(c->target.kind, ATUN_TARGET_ADDR);
    cr_assert_eq(memcmp(&c->target.addr, &in.u.connect_request.target.addr,
                        sizeof(atun_addr)), 0, "%s", addrs[i]);
    cr_assert_eq(c->port, 22);
    cr_assert_arr_eq(c->session_id, in.u.connect_request.session_id,
                     ATUN_SESSION_ID_LEN);
  }
  in.u.connect_request.target.kind = ATUN_TARGET_HOST;
  strcpy(in.u.connect_request.target.host, "DB.Corp.Example.");
  in.u.connect_request.port = 65535;
  roundtrip(&in, &out);
  cr_assert_eq(out.u.connect_request.target.kind, ATUN_TARGET_HOST);
  cr_assert_str_eq(out.u.connect_request.target.host, "db.corp.example");
  cr_assert_eq(out.u.connect_request.port, 65535);
}

Test(codec, connect_request_folds_mapped_ipv4) {
  atun_msg in = connect_request();
  atun_msg out;
  cr_assert_eq(atun_addr_parse(&in.u.connect_request.target.addr,
                               "::ffff:10.1.2.3"), 0);
  cr_assert_eq(in.u.connect_request.target.addr.family, ATUN_AF_INET6);
  roundtrip(&in, &out);
  atun_addr want;
  cr_assert_eq(atun_addr_parse(&want, "10.1.2.3"), 0);
  cr_assert_eq(out.u.connect_request.target.addr.family, ATUN_AF_INET);
  cr_assert_eq(memcmp(&out.u.connect_request.target.addr, &want, sizeof(want)), 0);
}

Test(codec, roundtrip_connect_response_every_status) {
  atun_msg in = {.type = ATUN_FRAME_CONNECT_RESPONSE};
  atun_msg out;
  for (uint64_t s = 0; s <= ATUN_CONNECT_STATUS_MAX; ++s) {
    in.u.connect_response.status = s;
    in.u.connect_response.message = s % 2 ? (char *)atun_connect_status_name(s) : NULL;
    roundtrip(&in, &out);
    cr_assert_eq(out.u.connect_response.status, s);
    str_eq_opt(in.u.connect_response.message, out.u.connect_response.message);
    atun_msg_free(&out, atun_mem_default());
  }
  in.u.connect_response.status = ATUN_CONNECT_STATUS_MAX + 1;
  expect_enc_err(&in, ATUN_ERR_MALFORMED);
}

/* --- golden bytes ----------------------------------------------------------------- */

static void golden(const atun_msg *m, const uint8_t *want, size_t wantlen) {
  uint8_t buf[512];
  size_t n = enc(m, buf, sizeof(buf));
  cr_assert_eq(n, wantlen, "length %zu, want %zu", n, wantlen);
  cr_assert_arr_eq(buf, want, wantlen);
}

Test(codec, golden_hello) {
  static const uint8_t want[] = {0x01, 0x10, 0x01, 0x01, 0x02, 0x02, 0x01, 0x02,
                                 0x03, 0x08, 'a',  't',  'u',  'n',  '/',  '0',
                                 '.',  '1'};
  atun_msg m = {.type = ATUN_FRAME_HELLO};
  m.u.hello.min_version = 2;
  m.u.hello.max_version = 2;
  strcpy(m.u.hello.software_version, "atun/0.1");
  golden(&m, want, sizeof(want));
}

Test(codec, golden_heartbeat) {
  static const uint8_t want[] = {0x04, 0x0c, 0x01, 0x01, 0x01, 0x02, 0x04,
                                 0xbb, 0x9a, 0xca, 0x00, 0x03, 0x01, 0x03};
  atun_msg m = {.type = ATUN_FRAME_HEARTBEAT};
  m.u.heartbeat = (atun_heartbeat){1, 1000000000, 3};
  golden(&m, want, sizeof(want));
}

Test(codec, golden_route_advertise) {
  static const uint8_t want[] = {
      0x03, 0x37,
      0x01, 0x01, 0x07,
      0x02, 0x05, 0x08, 0x0a, 0x00, 0x00, 0x00,
      0x02, 0x11, 0x20, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0x03, 0x0e, 0x01, 0x0c, 'c', 'o', 'r', 'p', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e',
      0x03, 0x08, 0x01, 0x03, 'l', 'a', 'n', 0x02, 0x01, 0x01};
  atun_prefix subnets[2];
  atun_domain domains[2] = {{"corp.example", 0}, {"LAN.", 1}};
  prefix(&subnets[0], "10.0.0.0/8");
  prefix(&subnets[1], "2001:db8::/32");
  atun_msg m = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  m.u.route_advertise = (atun_route_advertise){7, subnets, 2, domains, 2};
  golden(&m, want, sizeof(want));
}

Test(codec, golden_connect_request) {
  static const uint8_t want_addr[] = {
      0x10, 0x1b, 0x01, 0x10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
      0x02, 0x01, 0x16, 0x03, 0x04, 0xc0, 0xa8, 0x01, 0x0a};
  static const uint8_t want_host[] = {
      0x10, 0x27, 0x01, 0x10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
      0x02, 0x02, 0x55, 0x38, 0x04, 0x0f, 'd', 'b', '.', 'c', 'o', 'r', 'p', '.',
      'e', 'x', 'a', 'm', 'p', 'l', 'e'};
  atun_msg m = connect_request();
  golden(&m, want_addr, sizeof(want_addr));
  m.u.connect_request.target.kind = ATUN_TARGET_HOST;
  strcpy(m.u.connect_request.target.host, "db.corp.example");
  m.u.connect_request.port = 5432;
  golden(&m, want_host, sizeof(want_host));
}

Test(codec, golden_connect_response) {
  static const uint8_t want[] = {0x11, 0x17, 0x01, 0x01, 0x03, 0x02, 0x12,
                                 'c', 'o', 'n', 'n', 'e', 'c', 't', 'i', 'o', 'n',
                                 ' ', 'r', 'e', 'f', 'u', 's', 'e', 'd'};
  atun_msg m = {.type = ATUN_FRAME_CONNECT_RESPONSE};
  m.u.connect_response.status = ATUN_CONNECT_REFUSED;
  m.u.connect_response.message = "connection refused";
  golden(&m, want, sizeof(want));
  atun_msg out;
  cr_assert_eq(atun_frame_decode(&out, want, sizeof(want), atun_mem_default()), 0);
  cr_assert_eq(out.u.connect_response.status, ATUN_CONNECT_REFUSED);
  cr_assert_str_eq(out.u.connect_response.message, "connection refused");
  atun_msg_free(&out, atun_mem_default());
}

/* --- truncation and framing ------------------------------------------------------------ */

/* One of each message kind with every optional part present. */
static size_t sample_frames(atun_msg *out, atun_prefix *subnets,
                            atun_domain *domains, uint8_t *der) {
  size_t n = 0;
  out[n] = (atun_msg){.type = ATUN_FRAME_HELLO};
  out[n].u.hello = (atun_hello){2, 3, "atun-agent 1.0"};
  out[++n] = (atun_msg){.type = ATUN_FRAME_HELLO_ACK};
  out[n].u.hello_ack = (atun_hello_ack){2, 10000, 30000, 1, {1, 2}, "gw"};
  prefix(&subnets[0], "172.16.0.0/12");
  prefix(&subnets[1], "fd00::/8");
  domains[0] = (atun_domain){"corp.example", 1};
  out[++n] = (atun_msg){.type = ATUN_FRAME_ROUTE_ADVERTISE};
  out[n].u.route_advertise = (atun_route_advertise){300, subnets, 2, domains, 1};
  out[++n] = (atun_msg){.type = ATUN_FRAME_HEARTBEAT};
  out[n].u.heartbeat = (atun_heartbeat){70000, 5000000000ULL, 12};
  out[++n] = (atun_msg){.type = ATUN_FRAME_HEARTBEAT_ACK};
  out[n].u.heartbeat_ack = (atun_heartbeat_ack){70000, 5000000000ULL};
  out[++n] = (atun_msg){.type = ATUN_FRAME_GOODBYE};
  out[n].u.goodbye = (atun_goodbye){ATUN_GOODBYE_RESTART, "restart"};
  out[++n] = (atun_msg){.type = ATUN_FRAME_ERROR};
  out[n].u.error = (atun_error_frame){ATUN_APP_VERSION_MISMATCH, "versions", 2, 2};
  out[++n] = (atun_msg){.type = ATUN_FRAME_CERT_RENEW_REQUEST};
  out[n].u.cert_renew_request = (atun_cert_renew_request){der, 40, 1};
  out[++n] = (atun_msg){.type = ATUN_FRAME_CERT_RENEW_RESPONSE};
  out[n].u.cert_renew_response =
      (atun_cert_renew_response){ATUN_CERT_STATUS_OK, der, 30, "ok"};
  out[++n] = connect_request();
  out[++n] = connect_request();
  out[n].u.connect_request.target.kind = ATUN_TARGET_HOST;
  strcpy(out[n].u.connect_request.target.host, "host.corp.example");
  out[++n] = (atun_msg){.type = ATUN_FRAME_CONNECT_RESPONSE};
  out[n].u.connect_response = (atun_connect_response){ATUN_CONNECT_DENIED, "no route"};
  return n + 1;
}

#define SAMPLES 12

Test(codec, truncation_at_every_byte) {
  atun_msg msgs[SAMPLES];
  atun_prefix subnets[2];
  atun_domain domains[1];
  uint8_t der[40] = {0x30, 0x26};
  cr_assert_eq(sample_frames(msgs, subnets, domains, der), SAMPLES);
  for (size_t i = 0; i < SAMPLES; ++i) {
    uint8_t buf[512];
    size_t n = enc(&msgs[i], buf, sizeof(buf));
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    for (size_t cut = 0; cut < n; ++cut) {
      atun_msg out;
      /* Exact-size copies let ASan see any read past the cut. */
      uint8_t *copy = malloc(cut ? cut : 1);
      memcpy(copy, buf, cut);
      cr_assert_eq(atun_frame_decode(&out, copy, cut, &fm.mem),
                   ATUN_ERR_TRUNCATED, "msg %zu cut %zu", i, cut);
      free(copy);
    }
    cr_assert_eq(fm.live, 0);
    cr_assert_eq(fm.allocs, 0);
  }
}

/* Cutting the payload itself (as if its length were wrong) yields an error,
 * or at a field boundary a shorter message; either way nothing leaks. */
Test(codec, payload_cut_at_every_byte) {
  atun_msg msgs[SAMPLES];
  atun_prefix subnets[2];
  atun_domain domains[1];
  uint8_t der[40] = {0x30, 0x26};
  sample_frames(msgs, subnets, domains, der);
  for (size_t i = 0; i < SAMPLES; ++i) {
    uint8_t buf[512];
    size_t n = enc(&msgs[i], buf, sizeof(buf));
    size_t hdr = 1 + atun_varint_len_from_first(buf[1]);
    atun_failmem fm;
    atun_failmem_init(&fm, -1);
    int errors = 0;
    for (size_t cut = 0; cut < n - hdr; ++cut) {
      atun_msg out;
      uint8_t *copy = malloc(cut ? cut : 1);
      memcpy(copy, buf + hdr, cut);
      int rv = atun_msg_decode(&out, buf[0], copy, cut, &fm.mem);
      free(copy);
      if (rv == 0) {
        atun_msg_free(&out, &fm.mem);
      } else {
        ++errors;
        /* MALFORMED: an Error frame cut between the two range halves. */
        cr_assert(rv == ATUN_ERR_TRUNCATED || rv == ATUN_ERR_MISSING_FIELD ||
                      rv == ATUN_ERR_MALFORMED,
                  "msg %zu cut %zu: %s", i, cut, atun_strerror(rv));
      }
    }
    cr_assert_gt(errors, 0);
    cr_assert_eq(fm.live, 0);
  }
}

Test(codec, frame_errors) {
  atun_msg m;
  const atun_mem *mem = atun_mem_default();
  static const uint8_t unknown[] = {0x0a, 0x00};
  cr_assert_eq(atun_frame_decode(&m, unknown, 2, mem), ATUN_ERR_UNKNOWN_TYPE);
  static const uint8_t zero_type[] = {0x00, 0x00};
  cr_assert_eq(atun_frame_decode(&m, zero_type, 2, mem), ATUN_ERR_UNKNOWN_TYPE);
  cr_assert_eq(atun_msg_decode(&m, 0x12, NULL, 0, mem), ATUN_ERR_UNKNOWN_TYPE);
  /* 1 MiB + 1 announced: refused without looking at the (absent) payload. */
  static const uint8_t too_big[] = {0x03, 0x80, 0x10, 0x00, 0x01};
  cr_assert_eq(atun_frame_decode(&m, too_big, 5, mem), ATUN_ERR_FRAME_TOO_LARGE);
  static const uint8_t session_big[] = {0x10, 0x50, 0x01};
  cr_assert_eq(atun_frame_decode(&m, session_big, 3, mem),
               ATUN_ERR_FRAME_TOO_LARGE);
  static const uint8_t huge[] = {0x04, 0xff, 0xff, 0xff, 0xff,
                                 0xff, 0xff, 0xff, 0xff};
  cr_assert_eq(atun_frame_decode(&m, huge, 9, mem), ATUN_ERR_FRAME_TOO_LARGE);
  static const uint8_t empty_hb[] = {0x04, 0x00};
  cr_assert_eq(atun_frame_decode(&m, empty_hb, 2, mem), ATUN_ERR_MISSING_FIELD);
  static const uint8_t trailing[] = {0x05, 0x06, 0x01, 0x01, 0x01,
                                     0x02, 0x01, 0x02, 0xee};
  cr_assert_eq(atun_frame_decode(&m, trailing, 9, mem), ATUN_ERR_TRAILING);
  cr_assert_eq(atun_frame_decode(&m, trailing, 8, mem), 0);
  cr_assert_eq(m.u.heartbeat_ack.echo_sent_at, 2);
  uint8_t *big = calloc(1, ATUN_SESSION_PAYLOAD_MAX + 1);
  cr_assert_eq(atun_msg_decode(&m, ATUN_FRAME_CONNECT_RESPONSE, big,
                               ATUN_SESSION_PAYLOAD_MAX + 1, mem),
               ATUN_ERR_FRAME_TOO_LARGE);
  free(big);
}

Test(codec, encode_errors) {
  atun_msg m = {.type = 0x0b};
  expect_enc_err(&m, ATUN_ERR_UNKNOWN_TYPE);
  m = (atun_msg){.type = ATUN_FRAME_HELLO};
  m.u.hello = (atun_hello){3, 2, ""};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  m.u.hello = (atun_hello){2, 2, "bad\x01"};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  memset(m.u.hello.software_version, 'v', sizeof(m.u.hello.software_version));
  expect_enc_err(&m, ATUN_ERR_LIMIT);
  m = (atun_msg){.type = ATUN_FRAME_HELLO_ACK};
  m.u.hello_ack.chosen_version = 2;
  expect_enc_err(&m, ATUN_ERR_MALFORMED); /* heartbeat interval 0 */
  m = (atun_msg){.type = ATUN_FRAME_HEARTBEAT};
  m.u.heartbeat.seq = ATUN_VARINT_MAX + 1;
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
}

Test(codec, encode_nobuf_at_every_length) {
  atun_msg msgs[SAMPLES];
  atun_prefix subnets[2];
  atun_domain domains[1];
  uint8_t der[40] = {0x30, 0x26};
  sample_frames(msgs, subnets, domains, der);
  for (size_t i = 0; i < SAMPLES; ++i) {
    ssize_t size = atun_frame_encoded_size(&msgs[i]);
    cr_assert_gt(size, 0);
    for (size_t cap = 0; cap < (size_t)size; ++cap) {
      uint8_t *buf = malloc(cap ? cap : 1);
      cr_assert_eq(atun_frame_encode(cap ? buf : NULL, cap, &msgs[i]),
                   ATUN_ERR_NOBUF, "msg %zu cap %zu", i, cap);
      free(buf);
    }
  }
}

/* --- field-level rejections ---------------------------------------------------------------- */

Test(codec, integer_fields_fill_exactly) {
  pb p = {.n = 0};
  uint8_t two[] = {0x02, 0x00}; /* varint 2 then a stray byte */
  pb_field(&p, 1, two, 2);
  pb_uint(&p, 2, 2);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_TRAILING);
  p.n = 0;
  uint8_t cut[] = {0x40}; /* a two-byte varint in a one-byte field */
  pb_field(&p, 1, cut, 1);
  pb_uint(&p, 2, 2);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_field(&p, 1, "", 0);
  pb_uint(&p, 2, 2);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  uint8_t nonminimal[] = {0x40, 0x02}; /* allowed, as in RFC 9000 */
  pb_field(&p, 1, nonminimal, 2);
  pb_uint(&p, 2, 2);
  expect(ATUN_FRAME_HELLO, &p, 0);
  p.n = 0;
  pb_uint(&p, 1, 2);
  pb_uint(&p, 2, (uint64_t)UINT32_MAX + 1);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_MALFORMED);
}

Test(codec, field_header_truncated) {
  pb p = {.n = 0};
  pb_uint(&p, 1, 2);
  pb_uint(&p, 2, 2);
  pb_varint(&p, 9); /* an id with no length */
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_TRUNCATED);
  p.n -= 1;
  pb_varint(&p, 9);
  pb_varint(&p, 5); /* a length past the end */
  pb_raw(&p, "ab", 2);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_TRUNCATED);
}

Test(codec, duplicate_scalar_fields) {
  pb p = {.n = 0};
  pb_uint(&p, 1, 2);
  pb_uint(&p, 2, 2);
  pb_uint(&p, 1, 2);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 1, 1);
  pb_uint(&p, 2, 3);
  pb_uint(&p, 3, 4);
  pb_uint(&p, 2, 3);
  expect(ATUN_FRAME_HEARTBEAT, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 1, 0);
  pb_str(&p, 2, "a");
  pb_str(&p, 2, "b");
  expect(ATUN_FRAME_GOODBYE, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_field(&p, 1, "x", 1);
  pb_field(&p, 1, "y", 1);
  expect(ATUN_FRAME_CERT_RENEW_REQUEST, &p, ATUN_ERR_MALFORMED);
  /* Repeated list fields are fine; a repeated epoch is not. */
  p.n = 0;
  pb_uint(&p, 1, 1);
  pb_field(&p, 2, (uint8_t[]){8, 10, 0, 0, 0}, 5);
  pb_field(&p, 2, (uint8_t[]){8, 11, 0, 0, 0}, 5);
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, 0);
  pb_uint(&p, 1, 2);
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, ATUN_ERR_MALFORMED);
  /* Inside a domain entry as well. */
  p.n = 0;
  pb_uint(&p, 1, 1);
  pb_field(&p, 3, (uint8_t[]){1, 1, 'a', 1, 1, 'b'}, 6);
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, ATUN_ERR_MALFORMED);
}

Test(codec, unknown_fields_skipped) {
  pb p = {.n = 0};
  pb_str(&p, 60, "future");
  pb_uint(&p, 1, 2);
  pb_field(&p, ATUN_VARINT_MAX, "\x00\x01\x02", 3);
  pb_uint(&p, 2, 2);
  pb_uint(&p, 64, 1);
  pb_uint(&p, 64, 1); /* unknown ids may repeat */
  pb_field(&p, 0, "", 0);
  atun_msg m;
  cr_assert_eq(dec(&m, ATUN_FRAME_HELLO, &p), 0);
  cr_assert_eq(m.u.hello.min_version, 2);
  cr_assert_eq(m.u.hello.max_version, 2);
  p.n = 0;
  pb_uint(&p, 1, 4);
  pb_field(&p, 3, (uint8_t[]){9, 1, 'z', 1, 2, 'c', 'd', 2, 1, 0}, 10);
  cr_assert_eq(dec(&m, ATUN_FRAME_ROUTE_ADVERTISE, &p), 0);
  cr_assert_eq(m.u.route_advertise.domain_count, 1);
  cr_assert_str_eq(m.u.route_advertise.domains[0].name, "cd");
  atun_msg_free(&m, atun_mem_default());
}

/* Forward compatibility for every message: an unknown field before and
 * after the known ones changes nothing in what decodes. */
Test(codec, unknown_fields_skipped_in_every_message) {
  atun_msg msgs[SAMPLES];
  atun_prefix subnets[2];
  atun_domain domains[1];
  uint8_t der[40] = {0x30, 0x26};
  sample_frames(msgs, subnets, domains, der);
  for (size_t i = 0; i < SAMPLES; ++i) {
    uint8_t buf[512], again[512];
    size_t n = enc(&msgs[i], buf, sizeof(buf));
    size_t hdr = 1 + atun_varint_len_from_first(buf[1]);
    pb p = {.n = 0};
    pb_str(&p, 40, "added in version 3");
    pb_raw(&p, buf + hdr, n - hdr);
    pb_uint(&p, 41, 7);
    atun_msg out;
    cr_assert_eq(dec(&out, buf[0], &p), 0, "msg %zu", i);
    cr_assert_eq(enc(&out, again, sizeof(again)), n);
    cr_assert_arr_eq(again, buf, n);
    atun_msg_free(&out, atun_mem_default());
  }
}

Test(codec, missing_fields) {
  pb p = {.n = 0};
  static const uint8_t types[] = {
      ATUN_FRAME_HELLO, ATUN_FRAME_HELLO_ACK, ATUN_FRAME_ROUTE_ADVERTISE,
      ATUN_FRAME_HEARTBEAT, ATUN_FRAME_HEARTBEAT_ACK, ATUN_FRAME_GOODBYE,
      ATUN_FRAME_ERROR, ATUN_FRAME_CERT_RENEW_REQUEST,
      ATUN_FRAME_CERT_RENEW_RESPONSE, ATUN_FRAME_CONNECT_REQUEST,
      ATUN_FRAME_CONNECT_RESPONSE};
  for (size_t i = 0; i < sizeof(types); ++i) {
    expect(types[i], &p, ATUN_ERR_MISSING_FIELD);
  }
  pb_uint(&p, 1, 2);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_MISSING_FIELD);
  expect(ATUN_FRAME_HELLO_ACK, &p, ATUN_ERR_MISSING_FIELD);
  expect(ATUN_FRAME_HEARTBEAT_ACK, &p, ATUN_ERR_MISSING_FIELD);
  pb_uint(&p, 2, 2);
  expect(ATUN_FRAME_HEARTBEAT, &p, ATUN_ERR_MISSING_FIELD);
  /* A domain entry without a name. */
  p.n = 0;
  pb_uint(&p, 1, 1);
  pb_field(&p, 3, (uint8_t[]){2, 1, 1}, 3);
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, ATUN_ERR_MISSING_FIELD);
  /* ConnectRequest without any target. */
  p.n = 0;
  pb_field(&p, 1, "0123456789abcdef", 16);
  pb_uint(&p, 2, 80);
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, ATUN_ERR_MISSING_FIELD);
  pb_field(&p, 3, "\x0a\x00\x00\x01", 4);
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, 0);
}

static void subnet_case(const uint8_t *v, size_t n, int want) {
  pb p = {.n = 0};
  pb_uint(&p, 1, 1);
  pb_field(&p, 2, v, n);
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, want);
}

Test(codec, subnet_rejections) {
  uint8_t v6[17] = {128};
  subnet_case((uint8_t[]){32, 1, 2, 3, 4}, 5, 0);
  subnet_case((uint8_t[]){0, 0, 0, 0, 0}, 5, 0);
  subnet_case((uint8_t[]){33, 1, 2, 3, 4}, 5, ATUN_ERR_BAD_PREFIX);
  subnet_case((uint8_t[]){255, 1, 2, 3, 4}, 5, ATUN_ERR_BAD_PREFIX);
  subnet_case((uint8_t[]){8, 10, 0, 0, 1}, 5, ATUN_ERR_BAD_PREFIX);
  subnet_case((uint8_t[]){0, 0, 0, 0, 1}, 5, ATUN_ERR_BAD_PREFIX);
  subnet_case(v6, 17, 0);
  v6[0] = 129;
  subnet_case(v6, 17, ATUN_ERR_BAD_PREFIX);
  v6[0] = 64;
  v6[9] = 1;
  subnet_case(v6, 17, ATUN_ERR_BAD_PREFIX);
  v6[0] = 80;
  subnet_case(v6, 17, 0);
  subnet_case(v6, 16, ATUN_ERR_MALFORMED);
  subnet_case(v6, 6, ATUN_ERR_MALFORMED);
  subnet_case(v6, 0, ATUN_ERR_MALFORMED);

  atun_prefix bad[1];
  memset(bad, 0, sizeof(bad));
  bad[0].addr.family = ATUN_AF_INET;
  bad[0].len = 33;
  atun_msg m = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  m.u.route_advertise = (atun_route_advertise){1, bad, 1, NULL, 0};
  expect_enc_err(&m, ATUN_ERR_BAD_PREFIX);
  bad[0].len = 24;
  bad[0].addr.bytes[3] = 1;
  expect_enc_err(&m, ATUN_ERR_BAD_PREFIX);
  bad[0].addr.family = 5;
  expect_enc_err(&m, ATUN_ERR_BAD_PREFIX);
}

static void domain_case(const char *name, int want) {
  pb p = {.n = 0};
  pb nested = {.n = 0};
  pb_str(&nested, 1, name);
  pb_uint(&p, 1, 1);
  pb_field(&p, 3, nested.b, nested.n);
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, want);
}

Test(codec, domain_rejections) {
  char buf[300];
  domain_case("corp.example", 0);
  domain_case("corp.example.", 0);
  domain_case("", ATUN_ERR_BAD_NAME);
  domain_case("a..b", ATUN_ERR_BAD_NAME);
  domain_case("caf\xc3\xa9.example", ATUN_ERR_BAD_NAME);
  domain_case("\xff\xfe", ATUN_ERR_BAD_NAME);
  domain_case("a\nb", ATUN_ERR_BAD_NAME);
  domain_case(repeat(buf, 'a', 64), ATUN_ERR_BAD_NAME);
  long_name(buf, 254);
  domain_case(buf, ATUN_ERR_BAD_NAME);
  long_name(buf, 253);
  domain_case(buf, 0);

  pb p = {.n = 0};
  pb_uint(&p, 1, 1);
  pb_field(&p, 3, (uint8_t[]){1, 1, 'a', 2, 1, 2}, 6); /* flag 2 */
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 1, 1);
  pb_field(&p, 3, (uint8_t[]){1, 5, 'a'}, 3); /* nested cut */
  expect(ATUN_FRAME_ROUTE_ADVERTISE, &p, ATUN_ERR_TRUNCATED);

  atun_domain d[1] = {{"bad_name", 0}};
  atun_msg m = {.type = ATUN_FRAME_ROUTE_ADVERTISE};
  m.u.route_advertise = (atun_route_advertise){1, NULL, 0, d, 1};
  expect_enc_err(&m, ATUN_ERR_BAD_NAME);
  d[0] = (atun_domain){"ok", 2};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
}

static void host_case(const char *host, int want) {
  pb p = {.n = 0};
  pb_field(&p, 1, "0123456789abcdef", 16);
  pb_uint(&p, 2, 443);
  pb_str(&p, 4, host);
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, want);
}

Test(codec, connect_request_rejections) {
  char buf[300];
  host_case("intranet.corp", 0);
  host_case("web1", 0);
  host_case("10.0.0.1", ATUN_ERR_BAD_NAME);
  host_case("127.1", ATUN_ERR_BAD_NAME);
  host_case("0x7f000001", ATUN_ERR_BAD_NAME);
  host_case("a.9b", ATUN_ERR_BAD_NAME);
  host_case("", ATUN_ERR_BAD_NAME);
  host_case("..", ATUN_ERR_BAD_NAME);
  host_case("x\x7fy", ATUN_ERR_BAD_NAME);
  host_case("\xe2\x82\xac.example", ATUN_ERR_BAD_NAME);
  host_case(repeat(buf, 'h', 64), ATUN_ERR_BAD_NAME);
  long_name(buf, 254);
  host_case(buf, ATUN_ERR_BAD_NAME);

  pb p = {.n = 0};
  pb_field(&p, 1, "0123456789abcdef", 16);
  pb_uint(&p, 2, 443);
  pb_field(&p, 3, "\x0a\x00\x00\x01", 4);
  pb_str(&p, 4, "also.host");
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_field(&p, 1, "0123456789abcdef", 16);
  pb_uint(&p, 2, 443);
  pb_field(&p, 3, "\x0a\x00\x00", 3);
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_field(&p, 1, "0123456789abcde", 15);
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 2, 0);
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 2, 65536);
  expect(ATUN_FRAME_CONNECT_REQUEST, &p, ATUN_ERR_MALFORMED);

  atun_msg m = connect_request();
  m.u.connect_request.port = 0;
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  m = connect_request();
  m.u.connect_request.target.kind = 9;
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  m.u.connect_request.target.kind = ATUN_TARGET_ADDR;
  m.u.connect_request.target.addr.family = 0;
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  m.u.connect_request.target.kind = ATUN_TARGET_HOST;
  strcpy(m.u.connect_request.target.host, "1.2.3.4");
  expect_enc_err(&m, ATUN_ERR_BAD_NAME);
}

static void text_case(uint8_t type, uint64_t status, uint64_t id,
                      const char *text, size_t len, int want) {
  pb p = {.n = 0};
  pb_uint(&p, 1, status);
  pb_field(&p, id, text, len);
  expect(type, &p, want);
}

Test(codec, text_field_rejections) {
  static char msg[ATUN_MESSAGE_MAX + 1];
  memset(msg, 'm', sizeof(msg));
  uint8_t types[] = {ATUN_FRAME_GOODBYE, ATUN_FRAME_ERROR,
                     ATUN_FRAME_CONNECT_RESPONSE};
  for (size_t i = 0; i < sizeof(types); ++i) {
    text_case(types[i], 1, 2, "fine \xe2\x9c\x93", 8, 0);
    text_case(types[i], 1, 2, "", 0, 0);
    text_case(types[i], 1, 2, "bad \xc3", 5, ATUN_ERR_MALFORMED);
    text_case(types[i], 1, 2, "ctl\r\n", 5, ATUN_ERR_MALFORMED);
    text_case(types[i], 1, 2, "nul\0x", 5, ATUN_ERR_MALFORMED);
    text_case(types[i], 1, 2, msg, ATUN_MESSAGE_MAX, 0);
    text_case(types[i], 1, 2, msg, ATUN_MESSAGE_MAX + 1, ATUN_ERR_LIMIT);
  }
  text_case(ATUN_FRAME_CERT_RENEW_RESPONSE, 2, 3, "bad\x1b", 4, ATUN_ERR_MALFORMED);

  pb p = {.n = 0};
  pb_uint(&p, 1, 2);
  pb_uint(&p, 2, 2);
  pb_field(&p, 3, msg, ATUN_SOFTWARE_VERSION_MAX + 1);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_LIMIT);
  p.n = 0;
  pb_uint(&p, 1, 2);
  pb_uint(&p, 2, 2);
  pb_field(&p, 3, "\xed\xa0\x80", 3);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_MALFORMED);

  atun_msg m = {.type = ATUN_FRAME_GOODBYE};
  m.u.goodbye.message = "bad \xc3";
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  msg[ATUN_MESSAGE_MAX] = '\0';
  m.u.goodbye.message = msg;
  cr_assert_gt(atun_frame_encoded_size(&m), ATUN_MESSAGE_MAX);
  static char longer[ATUN_MESSAGE_MAX + 2];
  memset(longer, 'm', ATUN_MESSAGE_MAX + 1);
  m.u.goodbye.message = longer;
  expect_enc_err(&m, ATUN_ERR_LIMIT);
}

Test(codec, semantic_rejections) {
  pb p = {.n = 0};
  pb_uint(&p, 1, 3);
  pb_uint(&p, 2, 2);
  expect(ATUN_FRAME_HELLO, &p, ATUN_ERR_MALFORMED); /* min > max */
  p.n = 0;
  pb_uint(&p, 1, 2);
  pb_uint(&p, 2, 0);
  expect(ATUN_FRAME_HELLO_ACK, &p, ATUN_ERR_MALFORMED); /* interval 0 */
  p.n = 0;
  pb_uint(&p, 1, 2);
  pb_uint(&p, 2, 1000);
  pb_field(&p, 4, "short", 5);
  expect(ATUN_FRAME_HELLO_ACK, &p, ATUN_ERR_MALFORMED); /* agent id length */
  p.n = 0;
  pb_uint(&p, 1, ATUN_APP_VERSION_MISMATCH);
  pb_uint(&p, 3, 2);
  expect(ATUN_FRAME_ERROR, &p, ATUN_ERR_MALFORMED); /* half a range */
  pb_uint(&p, 4, 1);
  expect(ATUN_FRAME_ERROR, &p, ATUN_ERR_MALFORMED); /* min > max */
  p.n = 0;
  pb_uint(&p, 1, ATUN_APP_VERSION_MISMATCH);
  pb_uint(&p, 4, 0);
  expect(ATUN_FRAME_ERROR, &p, ATUN_ERR_MALFORMED); /* version 0 */

  p.n = 0;
  pb_uint(&p, 1, ATUN_CERT_STATUS_OK);
  expect(ATUN_FRAME_CERT_RENEW_RESPONSE, &p, ATUN_ERR_MISSING_FIELD);
  p.n = 0;
  pb_uint(&p, 1, ATUN_CERT_STATUS_DENIED);
  pb_field(&p, 2, "\x30", 1);
  expect(ATUN_FRAME_CERT_RENEW_RESPONSE, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 1, ATUN_CERT_STATUS_MAX + 1);
  expect(ATUN_FRAME_CERT_RENEW_RESPONSE, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 1, ATUN_CERT_STATUS_OK);
  pb_field(&p, 2, "", 0);
  expect(ATUN_FRAME_CERT_RENEW_RESPONSE, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_uint(&p, 1, ATUN_CONNECT_STATUS_MAX + 1);
  expect(ATUN_FRAME_CONNECT_RESPONSE, &p, ATUN_ERR_MALFORMED);
  p.n = 0;
  pb_field(&p, 1, "\x30", 1);
  pb_uint(&p, 2, 2);
  expect(ATUN_FRAME_CERT_RENEW_REQUEST, &p, ATUN_ERR_MALFORMED); /* flag 2 */

  atun_msg m = {.type = ATUN_FRAME_ERROR};
  m.u.error = (atun_error_frame){1, NULL, 0, 2};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  m.u.error = (atun_error_frame){1, NULL, 3, 2};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
}

Test(codec, blob_bounds) {
  static uint8_t der[ATUN_CERT_MAX + 1];
  atun_msg m = {.type = ATUN_FRAME_CERT_RENEW_REQUEST};
  m.u.cert_renew_request = (atun_cert_renew_request){der, 0, 0};
  expect_enc_err(&m, ATUN_ERR_MISSING_FIELD);
  m.u.cert_renew_request.csr_len = ATUN_CSR_MAX + 1;
  expect_enc_err(&m, ATUN_ERR_LIMIT);
  m.u.cert_renew_request.csr_len = ATUN_CSR_MAX;
  atun_msg out;
  roundtrip(&m, &out);
  atun_msg_free(&out, atun_mem_default());

  m = (atun_msg){.type = ATUN_FRAME_CERT_RENEW_RESPONSE};
  m.u.cert_renew_response = (atun_cert_renew_response){0, der, ATUN_CERT_MAX + 1, NULL};
  expect_enc_err(&m, ATUN_ERR_LIMIT);
  m.u.cert_renew_response = (atun_cert_renew_response){0, NULL, 0, NULL};
  expect_enc_err(&m, ATUN_ERR_MISSING_FIELD);
  m.u.cert_renew_response = (atun_cert_renew_response){1, der, 3, NULL};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  m.u.cert_renew_response = (atun_cert_renew_response){9, NULL, 0, NULL};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);
  m = (atun_msg){.type = ATUN_FRAME_CERT_RENEW_REQUEST};
  m.u.cert_renew_request = (atun_cert_renew_request){der, 1, 3};
  expect_enc_err(&m, ATUN_ERR_MALFORMED);

  /* Decoding: a CSR one byte over is refused before it is copied. */
  uint8_t *buf = big_buf();
  uint8_t *p = buf;
  p = atun_varint_put(p, 1);
  p = atun_varint_put(p, ATUN_CSR_MAX + 1);
  memset(p, 0x30, ATUN_CSR_MAX + 1);
  p += ATUN_CSR_MAX + 1;
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  cr_assert_eq(atun_msg_decode(&out, ATUN_FRAME_CERT_RENEW_REQUEST, buf,
                               (size_t)(p - buf), &fm.mem), ATUN_ERR_LIMIT);
  cr_assert_eq(fm.allocs, 0);
  free(buf);
}

Test(codec, session_frame_size_limit) {
  /* A ConnectResponse padded with an unknown field to exactly 4 KiB is
   * fine; one byte more is refused. */
  pb p = {.n = 0};
  static uint8_t pad[ATUN_SESSION_PAYLOAD_MAX];
  pb_uint(&p, 1, 0);
  size_t hdr = 1 + 2; /* id 9 and a two-byte length */
  size_t padlen = ATUN_SESSION_PAYLOAD_MAX - p.n - hdr;
  pb_varint(&p, 9);
  p.n = (size_t)(atun_varint_put(p.b + p.n, padlen) - p.b);
  pb_raw(&p, pad, padlen);
  cr_assert_eq(p.n, ATUN_SESSION_PAYLOAD_MAX);
  expect(ATUN_FRAME_CONNECT_RESPONSE, &p, 0);
  pb_raw(&p, "", 1);
  expect(ATUN_FRAME_CONNECT_RESPONSE, &p, ATUN_ERR_FRAME_TOO_LARGE);
}

/* --- allocation failures --------------------------------------------------------------- */

/* Decodes |frame| with the allocator failing at allocation 0, 1, 2, ...
 * until decoding succeeds: every earlier run must report ATUN_ERR_NOMEM and
 * leave nothing allocated. */
static void alloc_failure_loop(const uint8_t *frame, size_t len, long min_allocs) {
  long k;
  for (k = 0;; ++k) {
    atun_failmem fm;
    atun_failmem_init(&fm, k);
    atun_msg m;
    int rv = atun_frame_decode(&m, frame, len, &fm.mem);
    if (rv == 0) {
      cr_assert_eq(fm.failures, 0);
      atun_msg_free(&m, &fm.mem);
      cr_assert_eq(fm.live, 0);
      break;
    }
    cr_assert_eq(rv, ATUN_ERR_NOMEM, "k=%ld: %s", k, atun_strerror(rv));
    cr_assert_eq(fm.live, 0, "k=%ld leaked %ld", k, fm.live);
  }
  cr_assert_eq(k, min_allocs, "allocations: %ld", k);
}

Test(codec, allocation_failure_every_index) {
  atun_msg msgs[SAMPLES];
  atun_prefix subnets[2];
  atun_domain domains[1];
  uint8_t der[40] = {0x30, 0x26};
  sample_frames(msgs, subnets, domains, der);
  /* Allocations each sample needs: lists, strings and blobs only. */
  static const long allocs[SAMPLES] = {0, 0, 2, 0, 0, 1, 1, 1, 2, 0, 0, 1};
  for (size_t i = 0; i < SAMPLES; ++i) {
    uint8_t buf[512];
    size_t n = enc(&msgs[i], buf, sizeof(buf));
    alloc_failure_loop(buf, n, allocs[i]);
  }
}

Test(codec, allocation_failure_at_limits) {
  atun_msg in = max_advertise(ATUN_SUBNETS_MAX, ATUN_DOMAINS_MAX);
  uint8_t *buf = big_buf();
  size_t n = enc(&in, buf, BIG);
  alloc_failure_loop(buf, n, 2);
  free(buf);
  free_max_advertise(&in);
}
