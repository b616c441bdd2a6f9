/*
 * libFuzzer harness: the SOCKS5 server state machine.
 *
 * Input: [flags][seed][status][stream...].  The stream is a client's bytes.
 * It is fed twice: whole (the reference), then in chunks whose sizes come
 * from |seed| and |flags|.  Both runs must take the same number of bytes
 * (unless the input is refused), end in the same state with the same close reason and error, queue the
 * same output and parse the same request; a chunk may only be cut short
 * when the handshake is over.  A parsed request must satisfy the rules the
 * rest of the gateway relies on, and the reply to it (status byte, mod 8:
 * 7 is out of range) must land in the output as encoded.
 *
 * flags bit 0     the server has users (alice / s3cret, a+b / pw)
 * flags bit 1     pins allowed
 * flags bits 2-3  largest chunk: 1, 3, 17 or 600 bytes
 * flags bit 7     server allocation fails after (bits 4-5) allocations
 */
#include <stdlib.h>
#include <string.h>

#include "socks5.h"
#include "support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)          \
  do {                       \
    if (!(cond)) abort();    \
  } while (0)

#define T0 ((atun_tstamp)1000 * ATUN_NS_PER_S)

typedef struct run {
  size_t taken;
  ssize_t error; /* the last negative feed result, 0 if none */
  int state;
  int reason;
  uint8_t out[ATUN_SOCKS5_OUT_MAX];
  size_t outlen;
  atun_socks5_request req;
} run;

static size_t next_chunk(atun_testrng *rng, uint8_t flags, size_t left) {
  static const size_t max_chunk[] = {1, 3, 17, 600};
  size_t n = 1 + (size_t)atun_testrng_below(rng, max_chunk[(flags >> 2) & 3]);
  return n < left ? n : left;
}

static void check_request(const atun_socks5_request *r) {
  CHECK(r->port != 0);
  if (r->target.kind == ATUN_TARGET_ADDR) {
    atun_addr folded = r->target.addr;
    atun_addr_normalize(&folded);
    CHECK(r->target.addr.family == ATUN_AF_INET ||
          r->target.addr.family == ATUN_AF_INET6);
    CHECK(memcmp(&folded, &r->target.addr, sizeof(folded)) == 0);
  } else {
    CHECK(r->target.kind == ATUN_TARGET_HOST);
    char again[ATUN_NAME_MAX + 1];
    size_t n = strlen(r->target.host);
    CHECK(atun_name_normalize(again, r->target.host, n) == 0);
    CHECK(strcmp(again, r->target.host) == 0);
    const char *dot = strrchr(again, '.');
    const char *last = dot != NULL ? dot + 1 : again;
    CHECK(!(last[0] >= '0' && last[0] <= '9'));
  }
  size_t pinlen = strlen(r->pin);
  CHECK(pinlen == 0 || atun_agent_name_valid(r->pin, pinlen));
}

/* Feeds |stream| whole (|rng| NULL) or in random chunks. */
static void feed_all(const atun_socks5_server *srv, const uint8_t *stream,
                     size_t len, atun_testrng *rng, uint8_t flags, run *out) {
  atun_socks5_conn c;
  atun_socks5_conn_init(&c, srv, T0);
  memset(out, 0, sizeof(*out));
  size_t off = 0;
  while (off < len) {
    size_t chunk = rng != NULL ? next_chunk(rng, flags, len - off) : len - off;
    ssize_t n = atun_socks5_conn_feed(&c, srv, stream + off, chunk);
    if (n < 0) {
      out->error = n;
      CHECK(atun_socks5_conn_state(&c) == ATUN_SOCKS5_CLOSING);
      break;
    }
    CHECK((size_t)n <= chunk);
    off += (size_t)n;
    if ((size_t)n < chunk) {
      CHECK(atun_socks5_conn_state(&c) == ATUN_SOCKS5_CONNECT);
      break;
    }
    CHECK(atun_socks5_conn_handle_expiry(&c, T0) == 0);
  }
  out->taken = off;
  out->state = atun_socks5_conn_state(&c);
  out->reason = atun_socks5_conn_close_reason(&c);
  const uint8_t *o = atun_socks5_conn_out(&c, &out->outlen);
  CHECK(out->outlen <= ATUN_SOCKS5_OUT_MAX);
  memcpy(out->out, o, out->outlen);
  const atun_socks5_request *r = atun_socks5_conn_request(&c);
  CHECK((r != NULL) == (out->state == ATUN_SOCKS5_CONNECT));
  if (r != NULL) {
    check_request(r);
    out->req = *r;
  }
}

static int same_request(const atun_socks5_request *a, const atun_socks5_request *b) {
  return a->target.kind == b->target.kind &&
         memcmp(&a->target.addr, &b->target.addr, sizeof(a->target.addr)) == 0 &&
         strcmp(a->target.host, b->target.host) == 0 && a->port == b->port &&
         strcmp(a->pin, b->pin) == 0 && strcmp(a->user, b->user) == 0;
}

/* Answers a parsed request and checks the reply bytes. */
static void check_reply(const atun_socks5_server *srv, const uint8_t *stream,
                        size_t taken, uint8_t status) {
  atun_socks5_conn c;
  atun_socks5_conn_init(&c, srv, T0);
  CHECK(atun_socks5_conn_feed(&c, srv, stream, taken) == (ssize_t)taken);
  size_t before;
  atun_socks5_conn_out(&c, &before);
  int rv = atun_socks5_conn_reply(&c, status, NULL, 0);
  if (status > ATUN_CONNECT_STATUS_MAX) {
    CHECK(rv == ATUN_ERR_INVALID_ARGUMENT);
    return;
  }
  CHECK(rv == 0);
  size_t len;
  const uint8_t *out = atun_socks5_conn_out(&c, &len);
  uint8_t want[ATUN_SOCKS5_REPLY_MAX];
  ssize_t n = atun_socks5_reply_encode(want, sizeof(want),
                                       atun_socks5_reply_code(status), NULL, 0);
  CHECK(n > 0 && len == before + (size_t)n);
  CHECK(memcmp(out + before, want, (size_t)n) == 0);
  CHECK(atun_socks5_conn_state(&c) ==
        (status == ATUN_CONNECT_OK ? ATUN_SOCKS5_ESTABLISHED : ATUN_SOCKS5_CLOSING));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3) return 0;
  uint8_t flags = data[0];
  const uint8_t *stream = data + 3;
  size_t len = size - 3;

  static const atun_socks5_user users[] = {{"alice", 5, "s3cret", 6},
                                           {"a+b", 3, "pw", 2}};
  atun_socks5_settings st;
  atun_socks5_settings_default(&st);
  st.allow_pin = (flags >> 1) & 1;
  size_t nusers = (flags & 1) ? 2 : 0;
  atun_failmem fm;
  atun_failmem_init(&fm, (flags & 0x80) ? (long)((flags >> 4) & 3) : -1);
  atun_socks5_server *srv = NULL;
  int rv = atun_socks5_server_new(&srv, &st, users, nusers, &fm.mem);
  if (rv != 0) {
    CHECK(rv == ATUN_ERR_NOMEM && fm.failures > 0 && fm.live == 0);
    return 0;
  }

  run ref, chunked;
  feed_all(srv, stream, len, NULL, flags, &ref);
  atun_testrng rng;
  atun_testrng_seed(&rng, ((uint64_t)flags << 8) | data[1]);
  feed_all(srv, stream, len, &rng, flags, &chunked);

  /* After an error the count of bytes taken says nothing (the connection
   * closes), so it is compared only on the way to a request. */
  CHECK(ref.error == chunked.error);
  CHECK(ref.error != 0 || ref.taken == chunked.taken);
  CHECK(ref.state == chunked.state && ref.reason == chunked.reason);
  CHECK(ref.outlen == chunked.outlen &&
        memcmp(ref.out, chunked.out, ref.outlen) == 0);
  CHECK((ref.state == ATUN_SOCKS5_CLOSING) == (ref.reason != ATUN_SOCKS5_CLOSE_NONE));
  if (ref.state == ATUN_SOCKS5_CONNECT) {
    CHECK(same_request(&ref.req, &chunked.req));
    check_reply(srv, stream, ref.taken, data[2] % 8);
  }
  atun_socks5_server_del(srv);
  CHECK(fm.live == 0);
  return 0;
}
