/*
 * The UDP adapter on loopback: batches both ways on 127.0.0.1 and ::1, GSO,
 * a dual-stack [::] socket, the receive and send bounds, and the error
 * paths.  Loopback never makes sendmmsg say EAGAIN, so the blocked-queue
 * tests swap in a sendmmsg that does (atun__udp_sendmmsg).
 */
#define _GNU_SOURCE

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "support.h"
#include "udp.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define RX_MAX 512
#define RUN_TIMEOUT_S 3.0

typedef struct rx {
  size_t n;      /* datagrams delivered */
  size_t calls;  /* recv callbacks */
  size_t writable;
  size_t lens[RX_MAX];
  uint8_t first[RX_MAX]; /* first byte of each */
  int content_ok;
  size_t max_run; /* most datagrams in one callback */
  atun_quic_path last_path;
  atun_udp *del_me; /* delete this socket from the callback */
} rx;

/* Datagram |i| is |len| bytes of (i + k) & 0xff. */
static void fill(uint8_t *p, size_t len, size_t i) {
  for (size_t k = 0; k < len; ++k) p[k] = (uint8_t)(i + k);
}

static int check(const uint8_t *p, size_t len, uint8_t i) {
  for (size_t k = 0; k < len; ++k)
    if (p[k] != (uint8_t)(i + k)) return 0;
  return 1;
}

static void on_recv(atun_udp *udp, const atun_udp_datagram *d, size_t n, void *ud) {
  rx *r = ud;
  ++r->calls;
  if (n > r->max_run) r->max_run = n;
  for (size_t i = 0; i < n; ++i) {
    if (r->n < RX_MAX) {
      r->lens[r->n] = d[i].len;
      r->first[r->n] = d[i].data[0];
      if (!check(d[i].data, d[i].len, d[i].data[0])) r->content_ok = 0;
    }
    ++r->n;
    r->last_path = d[i].path;
  }
  if (r->del_me == udp) atun_udp_del(udp);
}

static void on_writable(atun_udp *udp, void *ud) {
  (void)udp;
  ++((rx *)ud)->writable;
}

static const atun_udp_callbacks cbs = {.recv = on_recv, .writable = on_writable};

static struct ev_loop *loop;

static void setup(void) { loop = ev_loop_new(EVFLAG_AUTO); }
static void teardown(void) {
  ev_loop_destroy(loop);
  atun__udp_sendmmsg = sendmmsg;
}

TestSuite(udp, .init = setup, .fini = teardown, .timeout = 30);

static void timeout_cb(struct ev_loop *l, ev_timer *w, int revents) {
  (void)l;
  (void)revents;
  *(int *)w->data = 1;
}

/* Runs the loop until |*counter| >= |want| or the timeout. */
static void run_until(const size_t *counter, size_t want) {
  int expired = 0;
  ev_timer t;
  ev_timer_init(&t, timeout_cb, RUN_TIMEOUT_S, 0.);
  t.data = &expired;
  ev_timer_start(loop, &t);
  while (*counter < want && !expired) ev_run(loop, EVRUN_ONCE);
  ev_timer_stop(loop, &t);
}

static atun_quic_endpoint ep_of(const char *addr, uint16_t port) {
  atun_quic_endpoint ep = {.port = port};
  cr_assert_eq(atun_addr_parse(&ep.addr, addr), 0);
  return ep;
}

/* Opens a socket on |addr|; returns 0 or the error (for skips). */
static int open_udp(atun_udp **u, const char *addr, const atun_udp_settings *s, rx *r) {
  atun_quic_endpoint ep = ep_of(addr, 0);
  return atun_udp_new(u, loop, s, &ep, &cbs, r, NULL);
}

static atun_quic_path to(const atun_udp *dst) {
  atun_udp_info info;
  atun_udp_get_info(dst, &info);
  atun_quic_path p = {0};
  p.remote = info.local;
  return p;
}

static void exchange(const char *addr) {
  rx ra = {.content_ok = 1}, rb = {.content_ok = 1};
  atun_udp *a, *b;
  int rv = open_udp(&a, addr, NULL, &ra);
  if (rv == ATUN_ERR_INVALID_ARGUMENT) cr_skip_test("%s not available", addr);
  cr_assert_eq(rv, 0);
  cr_assert_eq(open_udp(&b, addr, NULL, &rb), 0);
  atun_quic_path pb = to(b);
  uint8_t buf[1500];
  const size_t N = 200;
  for (size_t i = 0; i < N; ++i) {
    size_t len = 1 + (i * 37) % 1400;
    fill(buf, len, i);
    cr_assert_eq(atun_udp_send(a, &pb, buf, len), 0);
  }
  cr_assert_eq(atun_udp_flush(a), 0);
  run_until(&rb.n, N);
  cr_assert_eq(rb.n, N);
  cr_assert(rb.content_ok);
  for (size_t i = 0; i < N; ++i) {
    cr_assert_eq(rb.lens[i], 1 + (i * 37) % 1400, "datagram %zu", i);
    cr_assert_eq(rb.first[i], (uint8_t)i);
  }
  /* Batched: far fewer calls than datagrams, both ways. */
  cr_assert_lt(rb.calls, N / 4);
  atun_udp_stats st;
  atun_udp_get_stats(a, &st);
  cr_assert_eq(st.datagrams_out, N);
  cr_assert_lt(st.send_calls, N / 4);
  cr_assert_eq(st.queued, 0);
  /* Addresses: the sender as the receiver saw it, and back. */
  atun_udp_info ia, ib;
  atun_udp_get_info(a, &ia);
  atun_udp_get_info(b, &ib);
  cr_assert_eq(rb.last_path.remote.port, ia.local.port);
  cr_assert_eq(memcmp(&rb.last_path.remote.addr, &ia.local.addr, sizeof(atun_addr)), 0);
  cr_assert_eq(memcmp(&rb.last_path.local, &ib.local, sizeof(ib.local)), 0);
  atun_quic_path back = {.remote = rb.last_path.remote};
  cr_assert_eq(atun_udp_send(b, &back, buf, 10), 0);
  atun_udp_flush(b);
  run_until(&ra.n, 1);
  cr_assert_eq(ra.n, 1);
  atun_udp_del(a);
  atun_udp_del(b);
}

Test(udp, exchange_ipv4) { exchange("127.0.0.1"); }
Test(udp, exchange_ipv6) { exchange("::1"); }

Test(udp, buffers_reported) {
  rx r = {0};
  atun_udp *u;
  cr_assert_eq(open_udp(&u, "127.0.0.1", NULL, &r), 0);
  atun_udp_info info;
  atun_udp_get_info(u, &info);
  cr_log_info("rcvbuf %zu sndbuf %zu gso %d", info.rcvbuf_bytes, info.sndbuf_bytes,
              info.gso);
  cr_assert_gt(info.rcvbuf_bytes, 0);
  cr_assert_gt(info.sndbuf_bytes, 0);
  cr_assert_eq(info.dual_stack, 0);
  cr_assert_eq(info.pktinfo, 0);
  cr_assert_neq(info.local.port, 0);
  atun_udp_del(u);
}

/* Datagrams to a peer that does not read are the kernel's to drop: the
 * sender neither blocks nor keeps them. */
Test(udp, peer_not_reading) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  cr_assert_geq(fd, 0);
  int small = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
  socklen_t len = sizeof(sin);
  cr_assert_eq(bind(fd, (struct sockaddr *)&sin, len), 0);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
  rx r = {0};
  atun_udp *u;
  cr_assert_eq(open_udp(&u, "127.0.0.1", NULL, &r), 0);
  atun_quic_path p = {.remote = ep_of("127.0.0.1", ntohs(sin.sin_port))};
  uint8_t buf[1400] = {0};
  for (int i = 0; i < 300; ++i) cr_assert_eq(atun_udp_send(u, &p, buf, sizeof(buf)), 0);
  cr_assert_eq(atun_udp_flush(u), 0);
  atun_udp_stats st;
  atun_udp_get_stats(u, &st);
  cr_assert_eq(st.datagrams_out, 300);
  cr_assert_eq(st.queued, 0);
  size_t got = 0;
  while (recv(fd, buf, sizeof(buf), 0) > 0) ++got;
  cr_assert_lt(got, 300);
  atun_udp_del(u);
  close(fd);
}

static int fail_errno;
static int fail_count; /* calls left to fail; -1: all */
static int gso_seen;

static int has_gso(const struct msghdr *mh) {
  for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR((struct msghdr *)mh, c))
    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_SEGMENT) return 1;
  return 0;
}

static int failing_sendmmsg(int fd, struct mmsghdr *m, unsigned n, int flags) {
  if (fail_count != 0) {
    if (fail_count > 0) --fail_count;
    errno = fail_errno;
    return -1;
  }
  return sendmmsg(fd, m, n, flags);
}

static int gso_refusing_sendmmsg(int fd, struct mmsghdr *m, unsigned n, int flags) {
  if (has_gso(&m[0].msg_hdr)) {
    ++gso_seen;
    errno = EIO;
    return -1;
  }
  return sendmmsg(fd, m, n, flags);
}

Test(udp, queue_bound_and_writable) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp_settings s;
  atun_udp_settings_default(&s);
  s.send_queue_max = 8;
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", &s, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", NULL, &rb), 0);
  atun_quic_path pb = to(b);
  atun__udp_sendmmsg = failing_sendmmsg;
  fail_errno = EAGAIN;
  fail_count = 1;
  uint8_t buf[100];
  for (size_t i = 0; i < 8; ++i) {
    fill(buf, sizeof(buf), i);
    cr_assert_eq(atun_udp_send(a, &pb, buf, sizeof(buf)), 0);
  }
  /* The eighth filled a batch (the queue bound), the kernel said EAGAIN. */
  atun_udp_stats st;
  atun_udp_get_stats(a, &st);
  cr_assert_eq(st.send_blocked, 1);
  cr_assert_eq(st.queued, 8);
  cr_assert_eq(atun_udp_send_room(a), 0);
  size_t cap;
  cr_assert_null(atun_udp_send_reserve(a, &cap));
  cr_assert_eq(atun_udp_send(a, &pb, buf, sizeof(buf)), ATUN_ERR_FULL);
  cr_assert_eq(atun_udp_send(a, &pb, buf, sizeof(buf)), ATUN_ERR_FULL);
  /* Flushing while blocked waits for EV_WRITE. */
  cr_assert_eq(atun_udp_flush(a), 8);
  atun_udp_get_stats(a, &st);
  cr_assert_eq(st.send_dropped, 2);
  cr_assert_eq(st.datagrams_out, 0);
  run_until(&rb.n, 8);
  cr_assert_eq(rb.n, 8);
  cr_assert(rb.content_ok);
  for (size_t i = 0; i < 8; ++i) cr_assert_eq(rb.first[i], (uint8_t)i);
  cr_assert_eq(ra.writable, 1);
  atun_udp_get_stats(a, &st);
  cr_assert_eq(st.datagrams_out, 8);
  cr_assert_eq(st.queued, 0);
  cr_assert_eq(atun_udp_send_room(a), 8);
  atun_udp_del(a);
  atun_udp_del(b);
}

Test(udp, send_error_drops) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", NULL, &rb), 0);
  atun_quic_path pb = to(b);
  atun__udp_sendmmsg = failing_sendmmsg;
  fail_errno = EPERM;
  fail_count = 1;
  uint8_t buf[50] = {0};
  /* Different sizes: no GSO grouping, one message per datagram. */
  cr_assert_eq(atun_udp_send(a, &pb, buf, 10), 0);
  cr_assert_eq(atun_udp_send(a, &pb, buf, 20), 0);
  cr_assert_eq(atun_udp_send(a, &pb, buf, 30), 0);
  cr_assert_eq(atun_udp_flush(a), 0);
  atun_udp_stats st;
  atun_udp_get_stats(a, &st);
  cr_assert_eq(st.send_errors, 1);
  cr_assert_eq(st.datagrams_out, 2);
  run_until(&rb.n, 2);
  cr_assert_eq(rb.n, 2);
  cr_assert_eq(rb.lens[0], 20);
  atun_udp_del(a);
  atun_udp_del(b);
}

static void gso_burst(atun_udp *a, const atun_quic_path *pb, size_t n, size_t seg,
                      size_t last) {
  uint8_t buf[1500];
  for (size_t i = 0; i < n; ++i) {
    size_t len = i + 1 == n ? last : seg;
    size_t cap;
    uint8_t *p = atun_udp_send_reserve(a, &cap);
    cr_assert_not_null(p);
    cr_assert_eq(cap, 1500);
    fill(buf, len, i);
    memcpy(p, buf, len);
    cr_assert_eq(atun_udp_send_commit(a, pb, len), 0);
  }
  atun_udp_flush(a);
}

Test(udp, gso_on_loopback) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", NULL, &rb), 0);
  atun_udp_info info;
  atun_udp_get_info(a, &info);
  if (!info.gso) cr_skip_test("no UDP_SEGMENT in this kernel");
  atun_quic_path pb = to(b);
  gso_burst(a, &pb, 100, 1200, 333);
  run_until(&rb.n, 100);
  cr_assert_eq(rb.n, 100);
  cr_assert(rb.content_ok);
  for (size_t i = 0; i < 100; ++i) {
    cr_assert_eq(rb.lens[i], i == 99 ? 333 : 1200, "datagram %zu", i);
    cr_assert_eq(rb.first[i], (uint8_t)i);
  }
  atun_udp_stats st;
  atun_udp_get_stats(a, &st);
  cr_assert_gt(st.gso_sends, 0);
  cr_assert_eq(st.datagrams_out, 100);
  cr_log_info("100 datagrams in %lu sendmmsg calls, %lu GSO messages",
              (unsigned long)st.send_calls, (unsigned long)st.gso_sends);
  atun_udp_del(a);
  atun_udp_del(b);
}

Test(udp, gso_refused_falls_back) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", NULL, &rb), 0);
  atun_udp_info info;
  atun_udp_get_info(a, &info);
  if (!info.gso) cr_skip_test("no UDP_SEGMENT in this kernel");
  atun__udp_sendmmsg = gso_refusing_sendmmsg;
  atun_quic_path pb = to(b);
  gso_burst(a, &pb, 40, 1000, 1000);
  run_until(&rb.n, 40);
  cr_assert_eq(rb.n, 40);
  cr_assert(rb.content_ok);
  cr_assert_eq(gso_seen, 1);
  atun_udp_get_info(a, &info);
  cr_assert_eq(info.gso, 0);
  atun_udp_stats st;
  atun_udp_get_stats(a, &st);
  cr_assert_eq(st.send_errors, 0);
  cr_assert_eq(st.gso_sends, 0);
  atun_udp_del(a);
  atun_udp_del(b);
}

Test(udp, gso_off_by_setting) {
  rx r = {0};
  atun_udp_settings s;
  atun_udp_settings_default(&s);
  s.gso = 0;
  atun_udp *u;
  cr_assert_eq(open_udp(&u, "127.0.0.1", &s, &r), 0);
  atun_udp_info info;
  atun_udp_get_info(u, &info);
  cr_assert_eq(info.gso, 0);
  atun_udp_del(u);
}

/* A GSO burst to a receiver with UDP_GRO: the kernel may hand it over as
 * few large messages; the callback still sees every datagram, in order,
 * with its own length. */
Test(udp, gro_splits_coalesced_messages) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", NULL, &rb), 0);
  atun_udp_info ia, ib;
  atun_udp_get_info(a, &ia);
  atun_udp_get_info(b, &ib);
  if (!ia.gso || !ib.gro) cr_skip_test("no UDP_SEGMENT / UDP_GRO in this kernel");
  atun_quic_path pb = to(b);
  gso_burst(a, &pb, 100, 1200, 333);
  run_until(&rb.n, 100);
  cr_assert_eq(rb.n, 100);
  cr_assert(rb.content_ok);
  for (size_t i = 0; i < 100; ++i) {
    cr_assert_eq(rb.lens[i], i == 99 ? 333 : 1200, "datagram %zu", i);
    cr_assert_eq(rb.first[i], (uint8_t)i);
  }
  atun_udp_stats st;
  atun_udp_get_stats(b, &st);
  cr_assert_eq(st.datagrams_in, 100);
  cr_assert_eq(st.bytes_in, 99 * 1200 + 333);
  cr_assert_gt(st.gro_recvs, 0);
  cr_log_info("100 datagrams arrived in %lu callbacks, %lu coalesced messages",
              (unsigned long)rb.calls, (unsigned long)st.gro_recvs);
  atun_udp_del(a);
  atun_udp_del(b);
}

Test(udp, gro_off_by_setting) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp_settings s;
  atun_udp_settings_default(&s);
  s.gro = 0;
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", &s, &rb), 0);
  atun_udp_info info;
  atun_udp_get_info(b, &info);
  cr_assert_eq(info.gro, 0);
  atun_quic_path pb = to(b);
  gso_burst(a, &pb, 50, 1000, 1000);
  run_until(&rb.n, 50);
  cr_assert_eq(rb.n, 50);
  cr_assert(rb.content_ok);
  atun_udp_stats st;
  atun_udp_get_stats(b, &st);
  cr_assert_eq(st.gro_recvs, 0);
  atun_udp_del(a);
  atun_udp_del(b);
}

/* The per-datagram bound holds for coalesced segments too. */
Test(udp, gro_segment_above_bound_dropped) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp_settings s;
  atun_udp_settings_default(&s);
  s.recv_datagram_max = 1000;
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", &s, &rb), 0);
  atun_quic_path pb = to(b);
  gso_burst(a, &pb, 10, 1001, 1001);
  gso_burst(a, &pb, 5, 1000, 1000);
  run_until(&rb.n, 5);
  cr_assert_eq(rb.n, 5);
  cr_assert(rb.content_ok);
  for (size_t i = 0; i < 5; ++i) cr_assert_eq(rb.lens[i], 1000);
  atun_udp_stats st;
  atun_udp_get_stats(b, &st);
  cr_assert_eq(st.recv_truncated, 10);
  cr_assert_eq(st.datagrams_in, 5);
  atun_udp_del(a);
  atun_udp_del(b);
}

/* However many datagrams one recvmmsg brings, the callback gets them in
 * runs of a bounded size. */
Test(udp, gro_delivery_runs_bounded) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", NULL, &rb), 0);
  atun_udp_info ia, ib;
  atun_udp_get_info(a, &ia);
  atun_udp_get_info(b, &ib);
  if (!ia.gso || !ib.gro) cr_skip_test("no UDP_SEGMENT / UDP_GRO in this kernel");
  atun_quic_path pb = to(b);
  for (int k = 0; k < 10; ++k) gso_burst(a, &pb, 64, 100, 100);
  run_until(&rb.n, 640);
  cr_assert_eq(rb.n, 640);
  cr_assert(rb.content_ok);
  cr_assert_leq(rb.max_run, 256);
  cr_log_info("640 datagrams in %lu callbacks, largest run %lu", (unsigned long)rb.calls,
              (unsigned long)rb.max_run);
  atun_udp_del(a);
  atun_udp_del(b);
}

/* A wildcard socket learns where each datagram was sent and answers from
 * there: IPv4 on 0.0.0.0, and IPv4 on a dual-stack [::] socket. */
static void wildcard(const char *any) {
  rx rs = {.content_ok = 1}, rc = {.content_ok = 1};
  atun_udp *srv, *cli;
  if (open_udp(&srv, any, NULL, &rs) != 0) cr_skip_test("no socket on %s", any);
  cr_assert_eq(open_udp(&cli, "127.0.0.1", NULL, &rc), 0);
  atun_udp_info is, ic;
  atun_udp_get_info(srv, &is);
  atun_udp_get_info(cli, &ic);
  cr_assert_eq(is.dual_stack, strchr(any, ':') != NULL);
  cr_assert(is.pktinfo);
  atun_quic_path p = {.remote = ep_of("127.0.0.1", is.local.port)};
  uint8_t buf[64];
  fill(buf, sizeof(buf), 5);
  cr_assert_eq(atun_udp_send(cli, &p, buf, sizeof(buf)), 0);
  atun_udp_flush(cli);
  run_until(&rs.n, 1);
  cr_assert_eq(rs.n, 1);
  /* An IPv4 peer (folded from ::ffff:127.0.0.1 on [::]); the local
   * address from pktinfo, not the wildcard. */
  cr_assert_eq(rs.last_path.remote.addr.family, ATUN_AF_INET);
  cr_assert_eq(rs.last_path.remote.port, ic.local.port);
  atun_quic_endpoint lo = ep_of("127.0.0.1", is.local.port);
  cr_assert_eq(memcmp(&rs.last_path.local, &lo, sizeof(lo)), 0);
  /* The answer leaves from that address, to the IPv4 peer. */
  cr_assert_eq(atun_udp_send(srv, &rs.last_path, buf, sizeof(buf)), 0);
  atun_udp_flush(srv);
  run_until(&rc.n, 1);
  cr_assert_eq(rc.n, 1);
  cr_assert_eq(memcmp(&rc.last_path.remote, &lo, sizeof(lo)), 0);
  atun_udp_del(srv);
  atun_udp_del(cli);
}

Test(udp, dual_stack) { wildcard("::"); }
Test(udp, wildcard_ipv4) { wildcard("0.0.0.0"); }

Test(udp, truncated_datagrams_dropped) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp_settings s;
  atun_udp_settings_default(&s);
  s.recv_datagram_max = ATUN_UDP_DATAGRAM_MIN;
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", &s, &rb), 0);
  atun_quic_path pb = to(b);
  uint8_t buf[200];
  fill(buf, sizeof(buf), 0);
  cr_assert_eq(atun_udp_send(a, &pb, buf, ATUN_UDP_DATAGRAM_MIN + 1), 0);
  cr_assert_eq(atun_udp_send(a, &pb, buf, ATUN_UDP_DATAGRAM_MIN), 0);
  atun_udp_flush(a);
  run_until(&rb.n, 1);
  cr_assert_eq(rb.n, 1);
  cr_assert_eq(rb.lens[0], ATUN_UDP_DATAGRAM_MIN);
  atun_udp_stats st;
  atun_udp_get_stats(b, &st);
  cr_assert_eq(st.recv_truncated, 1);
  cr_assert_eq(st.datagrams_in, 1);
  atun_udp_del(a);
  atun_udp_del(b);
}

Test(udp, receive_batches_bounded) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp_settings s;
  atun_udp_settings_default(&s);
  s.recv_batches_max = 1;
  s.gro = 0; /* coalescing would put more datagrams into one message */
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", &s, &rb), 0);
  atun_quic_path pb = to(b);
  uint8_t buf[100];
  for (size_t i = 0; i < 100; ++i) {
    fill(buf, sizeof(buf), i);
    cr_assert_eq(atun_udp_send(a, &pb, buf, sizeof(buf) - (i & 1)), 0);
  }
  cr_assert_eq(atun_udp_flush(a), 0);
  /* One readiness event, one recvmmsg of ATUN_UDP_BATCH. */
  ev_run(loop, EVRUN_ONCE);
  cr_assert_eq(rb.calls, 1);
  cr_assert_eq(rb.n, ATUN_UDP_BATCH);
  run_until(&rb.n, 100);
  cr_assert_eq(rb.n, 100);
  cr_assert_geq(rb.calls, 4);
  atun_udp_del(a);
  atun_udp_del(b);
}

Test(udp, delete_from_callback) {
  rx ra = {0}, rb = {.content_ok = 1};
  atun_udp *a, *b;
  cr_assert_eq(open_udp(&a, "127.0.0.1", NULL, &ra), 0);
  cr_assert_eq(open_udp(&b, "127.0.0.1", NULL, &rb), 0);
  rb.del_me = b;
  atun_quic_path pb = to(b);
  uint8_t buf[10] = {0};
  for (int i = 0; i < 5; ++i) cr_assert_eq(atun_udp_send(a, &pb, buf, sizeof(buf)), 0);
  atun_udp_flush(a);
  run_until(&rb.calls, 1);
  cr_assert_eq(rb.calls, 1);
  /* Gone: nothing more is delivered. */
  cr_assert_eq(atun_udp_send(a, &pb, buf, sizeof(buf)), 0);
  atun_udp_flush(a);
  ev_run(loop, EVRUN_NOWAIT);
  cr_assert_eq(rb.calls, 1);
  atun_udp_del(a);
}

Test(udp, invalid_arguments) {
  rx r = {0};
  atun_udp *u = NULL;
  atun_udp_settings s;
  atun_quic_endpoint lo = ep_of("127.0.0.1", 0);
  atun_udp_callbacks none = {0};
  cr_assert_eq(atun_udp_new(NULL, loop, NULL, &lo, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_new(&u, NULL, NULL, &lo, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_new(&u, loop, NULL, NULL, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_new(&u, loop, NULL, &lo, &none, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
  atun_quic_endpoint bad = lo;
  bad.addr.family = 9;
  cr_assert_eq(atun_udp_new(&u, loop, NULL, &bad, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
  size_t *fields[] = {&s.recv_datagram_max, &s.send_datagram_max, &s.send_queue_max,
                      &s.recv_batches_max};
  size_t low[] = {ATUN_UDP_DATAGRAM_MIN - 1, ATUN_UDP_DATAGRAM_MIN - 1, 0, 0};
  size_t high[] = {ATUN_UDP_DATAGRAM_LIMIT + 1, ATUN_UDP_DATAGRAM_LIMIT + 1,
                   ATUN_UDP_QUEUE_LIMIT + 1, ATUN_UDP_BATCHES_LIMIT + 1};
  for (size_t i = 0; i < 4; ++i) {
    atun_udp_settings_default(&s);
    *fields[i] = low[i];
    cr_assert_eq(atun_udp_new(&u, loop, &s, &lo, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
    *fields[i] = high[i];
    cr_assert_eq(atun_udp_new(&u, loop, &s, &lo, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
  }
  atun_udp_settings_default(&s);
  s.rcvbuf_bytes = ATUN_UDP_SOCKBUF_LIMIT + 1;
  cr_assert_eq(atun_udp_new(&u, loop, &s, &lo, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);
  /* Not a local address. */
  atun_quic_endpoint far = ep_of("192.0.2.1", 0);
  cr_assert_eq(atun_udp_new(&u, loop, NULL, &far, &cbs, &r, NULL), ATUN_ERR_INVALID_ARGUMENT);

  cr_assert_eq(atun_udp_new(&u, loop, NULL, &lo, &cbs, &r, NULL), 0);
  atun_udp_info info;
  atun_udp_get_info(u, &info);
  /* The port is taken. */
  atun_udp *dup = NULL;
  cr_assert_eq(atun_udp_new(&dup, loop, NULL, &info.local, &cbs, &r, NULL), ATUN_ERR_EXISTS);
  cr_assert_null(dup);
  atun_quic_path p = {.remote = ep_of("127.0.0.1", 9)};
  uint8_t buf[1600] = {0};
  cr_assert_eq(atun_udp_send_commit(u, &p, 10), ATUN_ERR_INVALID_ARGUMENT); /* no slot */
  cr_assert_eq(atun_udp_send(u, &p, buf, 0), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_send(u, &p, buf, 1501), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_send(u, NULL, buf, 10), ATUN_ERR_INVALID_ARGUMENT);
  atun_quic_path p6 = {.remote = ep_of("::1", 9)};
  cr_assert_eq(atun_udp_send(u, &p6, buf, 10), ATUN_ERR_INVALID_ARGUMENT);
  size_t cap;
  cr_assert_not_null(atun_udp_send_reserve(u, &cap));
  cr_assert_eq(atun_udp_send_commit(u, &p, cap + 1), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_send_commit(u, &p, 0), ATUN_ERR_INVALID_ARGUMENT);
  atun_udp_stats st;
  atun_udp_get_stats(u, &st);
  cr_assert_eq(st.queued, 0);
  cr_assert_eq(atun_udp_fd(NULL), -1);
  cr_assert_geq(atun_udp_fd(u), 0);
  atun_udp_del(u);
  atun_udp_del(NULL);
}

Test(udp, address_conversion) {
  struct sockaddr_storage ss;
  socklen_t len;
  atun_quic_endpoint v4 = ep_of("10.1.2.3", 4433), v6 = ep_of("2001:db8::7", 53), back;
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(&ss, &len, &v4, AF_INET), 0);
  cr_assert_eq(len, sizeof(struct sockaddr_in));
  cr_assert_eq(atun_udp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, len), 0);
  cr_assert_eq(memcmp(&back, &v4, sizeof(v4)), 0);
  /* IPv4 on an IPv6 socket: mapped, and folded back. */
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(&ss, &len, &v4, AF_INET6), 0);
  cr_assert_eq(len, sizeof(struct sockaddr_in6));
  const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
  cr_assert(IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr));
  cr_assert_eq(atun_udp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, len), 0);
  cr_assert_eq(memcmp(&back, &v4, sizeof(v4)), 0);
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(&ss, &len, &v6, AF_INET6), 0);
  cr_assert_eq(atun_udp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, len), 0);
  cr_assert_eq(memcmp(&back, &v6, sizeof(v6)), 0);
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(&ss, &len, &v6, AF_INET),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(&ss, &len, &v6, AF_UNIX),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(NULL, &len, &v6, AF_INET6),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_udp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, 4),
               ATUN_ERR_INVALID_ARGUMENT);
  ss.ss_family = AF_UNIX;
  cr_assert_eq(atun_udp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, sizeof(ss)),
               ATUN_ERR_INVALID_ARGUMENT);
}

Test(udp, allocation_failures) {
  atun_quic_endpoint lo = ep_of("127.0.0.1", 0);
  rx r = {0};
  int ok = 0;
  for (long n = 0; n < 10 && !ok; ++n) {
    atun_failmem fm;
    atun_failmem_init(&fm, n);
    atun_udp *u = NULL;
    int rv = atun_udp_new(&u, loop, NULL, &lo, &cbs, &r, &fm.mem);
    if (rv == 0) {
      ok = 1;
      atun_udp_del(u);
    } else {
      cr_assert_eq(rv, ATUN_ERR_NOMEM, "after %ld allocations: %d", n, rv);
    }
    cr_assert_eq(fm.live, 0);
  }
  cr_assert(ok);
}
