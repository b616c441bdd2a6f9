/*
 * io/tcp: listener, connect outcomes and socket helpers, on loopback only.
 * Outcomes that need a silent or unroutable peer are produced locally:
 *   timeout      a listener with a full accept queue (backlog 0, one
 *                connection parked in it): Linux drops further SYNs, so
 *                the connect hangs until our deadline
 *   unreachable  multicast and broadcast addresses: the kernel refuses a TCP
 *                connect to them with ENETUNREACH before sending anything
 */
#define _GNU_SOURCE /* accept4 */

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "tcp.h"

/* ---- helpers ---------------------------------------------------------- */

static struct ev_loop *loop;

static void setup(void) { loop = ev_loop_new(EVFLAG_AUTO); }
static void teardown(void) {
  ev_loop_destroy(loop);
  atun__tcp_accept4 = accept4;
}

TestSuite(tcp, .init = setup, .fini = teardown, .timeout = 30);

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wakes the loop now and then, so that the conditions below get looked at. */
static void guard_cb(struct ev_loop *l, ev_timer *w, int revents) {
  (void)l;
  (void)w;
  (void)revents;
}

/* Runs the loop until |*count| reaches |target| or |max_s| passed; returns
 * nonzero if it got there. */
static int run_until_count(const int *count, int target, double max_s) {
  double end = now_s() + max_s;
  ev_timer guard;
  ev_timer_init(&guard, guard_cb, 0.01, 0.01);
  ev_timer_start(loop, &guard);
  while (*count < target && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  ev_timer_stop(loop, &guard);
  return *count >= target;
}

static int run_until(const int *flag, double max_s) {
  return run_until_count(flag, 1, max_s);
}

/* Runs the loop for |s| seconds whatever happens. */
static void run_for(double s) {
  int never = 0;
  run_until(&never, s);
}

static atun_tcp_endpoint ep(const char *addr, uint16_t port) {
  atun_tcp_endpoint e;
  memset(&e, 0, sizeof(e));
  cr_assert_eq(atun_addr_parse(&e.addr, addr), 0);
  e.port = port;
  return e;
}

static int has_ipv6(void) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) {
    return 0;
  }
  struct sockaddr_in6 sin6;
  memset(&sin6, 0, sizeof(sin6));
  sin6.sin6_family = AF_INET6;
  sin6.sin6_addr = in6addr_loopback;
  int ok = bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) == 0;
  close(fd);
  return ok;
}

static int nodelay_of(int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
  return v;
}

/* What the accept callback saw. */
typedef struct acc {
  int fds[16];
  atun_tcp_endpoint peers[16];
  int n;
  int refuse;      /* return nonzero */
  int free_inside; /* free the listener from the callback */
  int release_inside; /* close the fd and release it at once */
  int calls;       /* every callback, refused or not */
} acc;

static int accept_cb(atun_tcp_listener *l, int fd, const atun_tcp_endpoint *peer,
                     void *user_data) {
  acc *a = user_data;
  ++a->calls;
  if (a->free_inside && a->refuse) {
    atun_tcp_listener_free(l);
    return 1;
  }
  if (a->refuse) {
    return 1;
  }
  cr_assert_lt(a->n, 16);
  a->fds[a->n] = fd;
  a->peers[a->n] = *peer;
  ++a->n;
  if (a->free_inside) {
    atun_tcp_listener_free(l);
  }
  if (a->release_inside) {
    close(fd);
    atun_tcp_listener_release(l);
  }
  return 0;
}

/* What the connect callback saw. */
typedef struct outcome {
  int done;
  int calls;
  int status;
  int fd;
  int err;
  double at;
} outcome;

static void connect_cb(atun_tcp_connect *c, int status, int fd, int err, void *ud) {
  (void)c;
  outcome *o = ud;
  ++o->calls;
  o->done = 1;
  o->status = status;
  o->fd = fd;
  o->err = err;
  o->at = now_s();
}

/* A blocking client connect to |e| (the kernel completes it into the
 * listener's queue). */
static int raw_connect(const atun_tcp_endpoint *e) {
  struct sockaddr_storage ss;
  socklen_t len;
  cr_assert_eq(atun_tcp_sockaddr(&ss, &len, e), 0);
  int fd = socket(ss.ss_family, SOCK_STREAM, 0);
  cr_assert_geq(fd, 0);
  cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0);
  return fd;
}

/* A loopback port nothing listens on: bound, then closed. */
static uint16_t closed_port(const char *addr) {
  atun_tcp_endpoint e = ep(addr, 0);
  struct sockaddr_storage ss;
  socklen_t len;
  cr_assert_eq(atun_tcp_sockaddr(&ss, &len, &e), 0);
  int fd = socket(ss.ss_family, SOCK_STREAM, 0);
  cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0);
  atun_tcp_endpoint got;
  cr_assert_eq(atun_tcp_local_endpoint(fd, &got), 0);
  close(fd);
  return got.port;
}

/* A listener whose accept queue is full: SYNs to it go unanswered. */
static int blackhole(atun_tcp_endpoint *out, int *parked) {
  atun_tcp_endpoint e = ep("127.0.0.1", 0);
  struct sockaddr_storage ss;
  socklen_t len;
  cr_assert_eq(atun_tcp_sockaddr(&ss, &len, &e), 0);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0);
  cr_assert_eq(listen(fd, 0), 0);
  cr_assert_eq(atun_tcp_local_endpoint(fd, out), 0);
  *parked = raw_connect(out);
  return fd;
}

/* Connects a client to |l| through atun_tcp_connect and waits for both
 * ends.  Returns the client fd; the server fd is a->fds[a->n - 1]. */
static int connect_pair(atun_tcp_listener *l, acc *a, const char *addr) {
  atun_tcp_endpoint to = ep(addr, atun_tcp_listener_local(l)->port);
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  outcome o = {0};
  int before = a->n;
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &to, ATUN_NS_PER_S, connect_cb, &o), 0);
  cr_assert(run_until(&o.done, 5));
  cr_assert_eq(o.status, ATUN_CONNECT_OK);
  cr_assert_geq(o.fd, 0);
  cr_assert(run_until_count(&a->n, before + 1, 5));
  return o.fd;
}

/* ---- listener and connect: ok ------------------------------------------ */

static void ok_roundtrip(const char *listen_addr, const char *connect_addr,
                         uint8_t expect_family) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep(listen_addr, 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  cr_assert_neq(atun_tcp_listener_local(&l)->port, 0);
  int cfd = connect_pair(&l, &a, connect_addr);
  int sfd = a.fds[0];
  cr_assert_eq(a.peers[0].addr.family, expect_family);
  /* NODELAY both ways, non-blocking both ways. */
  cr_assert_eq(nodelay_of(cfd), 1);
  cr_assert_eq(nodelay_of(sfd), 1);
  cr_assert(fcntl(cfd, F_GETFL) & O_NONBLOCK);
  cr_assert(fcntl(sfd, F_GETFL) & O_NONBLOCK);
  /* The peer the listener saw is the client's local endpoint. */
  atun_tcp_endpoint cl;
  cr_assert_eq(atun_tcp_local_endpoint(cfd, &cl), 0);
  cr_assert_eq(cl.port, a.peers[0].port);
  cr_assert_eq(memcmp(cl.addr.bytes, a.peers[0].addr.bytes, 16), 0);
  cr_assert_eq(write(cfd, "ping", 4), 4);
  char buf[8];
  run_for(0.02);
  cr_assert_eq(read(sfd, buf, sizeof(buf)), 4);
  cr_assert_eq(memcmp(buf, "ping", 4), 0);
  atun_tcp_listener_stats st;
  atun_tcp_listener_get_stats(&l, &st);
  cr_assert_eq(st.accepted, 1);
  cr_assert_eq(st.conns, 1);
  close(cfd);
  close(sfd);
  atun_tcp_listener_release(&l);
  atun_tcp_listener_free(&l);
}

Test(tcp, connect_ok_ipv4) { ok_roundtrip("127.0.0.1", "127.0.0.1", ATUN_AF_INET); }

Test(tcp, connect_ok_ipv6) {
  if (!has_ipv6()) {
    cr_skip_test("no IPv6 loopback");
  }
  ok_roundtrip("::1", "::1", ATUN_AF_INET6);
}

Test(tcp, dual_stack_wildcard_reports_ipv4_peers) {
  if (!has_ipv6()) {
    cr_skip_test("no IPv6");
  }
  ok_roundtrip("::", "127.0.0.1", ATUN_AF_INET);
}

Test(tcp, v6only_listener_refuses_ipv4) {
  if (!has_ipv6()) {
    cr_skip_test("no IPv6");
  }
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_listener_settings s;
  atun_tcp_listener_settings_default(&s);
  s.v6only = 1;
  atun_tcp_endpoint local = ep("::", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, &s, accept_cb, &a), 0);
  atun_tcp_endpoint to = ep("127.0.0.1", atun_tcp_listener_local(&l)->port);
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  outcome o = {0};
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &to, ATUN_NS_PER_S, connect_cb, &o), 0);
  cr_assert(run_until(&o.done, 5));
  cr_assert_eq(o.status, ATUN_CONNECT_REFUSED);
  atun_tcp_listener_free(&l);
}

Test(tcp, outcome_comes_from_the_loop_not_from_start) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  atun_tcp_endpoint to = ep("127.0.0.1", atun_tcp_listener_local(&l)->port);
  atun_tcp_endpoint mc = ep("224.0.0.1", 80);
  atun_tcp_connect c1, c2;
  atun_tcp_connect_init(&c1);
  atun_tcp_connect_init(&c2);
  outcome o1 = {0}, o2 = {0};
  cr_assert_eq(atun_tcp_connect_start(&c1, loop, &to, ATUN_NS_PER_S, connect_cb, &o1), 0);
  cr_assert_eq(atun_tcp_connect_start(&c2, loop, &mc, ATUN_NS_PER_S, connect_cb, &o2), 0);
  cr_assert_eq(o1.calls + o2.calls, 0);
  cr_assert(atun_tcp_connect_is_active(&c1));
  cr_assert(atun_tcp_connect_is_active(&c2));
  cr_assert(run_until(&o1.done, 5));
  cr_assert(run_until(&o2.done, 5));
  cr_assert(!atun_tcp_connect_is_active(&c1));
  cr_assert_eq(o1.calls, 1);
  cr_assert_eq(o2.calls, 1);
  close(o1.fd);
  run_for(0.02);
  for (int i = 0; i < a.n; ++i) {
    close(a.fds[i]);
  }
  atun_tcp_listener_free(&l);
}

/* ---- connect failures ------------------------------------------------------ */

static void expect_status(const char *addr, uint16_t port, uint64_t timeout_ns,
                          int status, int err) {
  atun_tcp_endpoint to = ep(addr, port);
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  outcome o = {0};
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &to, timeout_ns, connect_cb, &o), 0);
  cr_assert(run_until(&o.done, 10));
  cr_assert_eq(o.status, status, "%s: status %d", addr, o.status);
  cr_assert_eq(o.fd, -1);
  cr_assert_eq(o.err, err, "%s: errno %d", addr, o.err);
  cr_assert_eq(o.calls, 1);
  run_for(0.05);
  cr_assert_eq(o.calls, 1);
}

Test(tcp, closed_port_is_refused_ipv4) {
  expect_status("127.0.0.1", closed_port("127.0.0.1"), ATUN_NS_PER_S,
                ATUN_CONNECT_REFUSED, ECONNREFUSED);
}

Test(tcp, closed_port_is_refused_ipv6) {
  if (!has_ipv6()) {
    cr_skip_test("no IPv6 loopback");
  }
  expect_status("::1", closed_port("::1"), ATUN_NS_PER_S, ATUN_CONNECT_REFUSED,
                ECONNREFUSED);
}

Test(tcp, multicast_and_broadcast_are_unreachable) {
  expect_status("224.0.0.1", 80, ATUN_NS_PER_S, ATUN_CONNECT_UNREACHABLE, ENETUNREACH);
  expect_status("255.255.255.255", 80, ATUN_NS_PER_S, ATUN_CONNECT_UNREACHABLE,
                ENETUNREACH);
  if (has_ipv6()) {
    expect_status("ff02::1", 80, ATUN_NS_PER_S, ATUN_CONNECT_UNREACHABLE, ENETUNREACH);
  }
}

Test(tcp, silent_peer_times_out_at_the_deadline) {
  atun_tcp_endpoint hole;
  int parked;
  int lfd = blackhole(&hole, &parked);
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  outcome o = {0};
  double t0 = now_s();
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &hole, 200 * ATUN_NS_PER_MS,
                                      connect_cb, &o), 0);
  cr_assert(run_until(&o.done, 10));
  double took = o.at - t0;
  cr_assert_eq(o.status, ATUN_CONNECT_TIMEOUT);
  cr_assert_eq(o.err, 0);
  cr_assert_eq(o.fd, -1);
  cr_assert_geq(took, 0.19, "timed out after %.3f s", took);
  cr_assert_lt(took, 2.0, "timed out after %.3f s", took);
  close(parked);
  close(lfd);
}

Test(tcp, cancel_means_no_callback) {
  atun_tcp_endpoint hole;
  int parked;
  int lfd = blackhole(&hole, &parked);
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  atun_tcp_connect_cancel(&c); /* idle: a no-op */
  outcome o = {0};
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &hole, 50 * ATUN_NS_PER_MS, connect_cb,
                                      &o), 0);
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &hole, 50 * ATUN_NS_PER_MS, connect_cb,
                                      &o), ATUN_ERR_STATE);
  atun_tcp_connect_cancel(&c);
  cr_assert(!atun_tcp_connect_is_active(&c));
  /* An early failure is cancellable too. */
  atun_tcp_endpoint mc = ep("224.0.0.1", 80);
  atun_tcp_connect c2;
  atun_tcp_connect_init(&c2);
  cr_assert_eq(atun_tcp_connect_start(&c2, loop, &mc, ATUN_NS_PER_S, connect_cb, &o), 0);
  atun_tcp_connect_cancel(&c2);
  run_for(0.2);
  cr_assert_eq(o.calls, 0);
  /* And the same storage connects again afterwards. */
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &mc, ATUN_NS_PER_S, connect_cb, &o), 0);
  cr_assert(run_until(&o.done, 5));
  cr_assert_eq(o.status, ATUN_CONNECT_UNREACHABLE);
  close(parked);
  close(lfd);
}

/* A callback that starts the next attempt from the same storage. */
typedef struct retry {
  int attempts;
  int done;
  atun_tcp_endpoint to;
} retry;

static void retry_cb(atun_tcp_connect *c, int status, int fd, int err, void *ud) {
  (void)fd;
  (void)err;
  retry *r = ud;
  cr_assert_eq(status, ATUN_CONNECT_REFUSED);
  if (++r->attempts < 3) {
    cr_assert_eq(atun_tcp_connect_start(c, loop, &r->to, ATUN_NS_PER_S, retry_cb, r), 0);
  } else {
    r->done = 1;
  }
}

Test(tcp, callback_may_restart_the_connect) {
  retry r = {0};
  r.to = ep("127.0.0.1", closed_port("127.0.0.1"));
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &r.to, ATUN_NS_PER_S, retry_cb, &r), 0);
  cr_assert(run_until(&r.done, 5));
  cr_assert_eq(r.attempts, 3);
}

Test(tcp, connect_rejects_bad_arguments) {
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  outcome o = {0};
  atun_tcp_endpoint to = ep("127.0.0.1", 80);
  atun_tcp_endpoint port0 = ep("127.0.0.1", 0);
  atun_tcp_endpoint nofam = to;
  nofam.addr.family = 0;
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &port0, ATUN_NS_PER_S, connect_cb, &o),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &nofam, ATUN_NS_PER_S, connect_cb, &o),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &to, 0, connect_cb, &o),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &to, ATUN_TCP_TIMEOUT_MAX_NS + 1,
                                      connect_cb, &o), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &to, ATUN_NS_PER_S, NULL, &o),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_tcp_connect_start(&c, NULL, &to, ATUN_NS_PER_S, connect_cb, &o),
               ATUN_ERR_INVALID_ARGUMENT);
  run_for(0.02);
  cr_assert_eq(o.calls, 0);
}

Test(tcp, connect_without_descriptors_fails_without_callback) {
  struct rlimit rl;
  cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  /* Fill the table up to a low limit (the child process of this test is
   * the only one affected). */
  rl.rlim_cur = 64;
  cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  int fds[64];
  int n = 0;
  for (int fd; n < 64 && (fd = dup(0)) >= 0;) {
    fds[n++] = fd;
  }
  cr_assert_eq(errno, EMFILE);
  atun_tcp_connect c;
  atun_tcp_connect_init(&c);
  outcome o = {0};
  atun_tcp_endpoint to = ep("127.0.0.1", 80);
  cr_assert_eq(atun_tcp_connect_start(&c, loop, &to, ATUN_NS_PER_S, connect_cb, &o),
               ATUN_ERR_IO);
  cr_assert_eq(errno, EMFILE);
  cr_assert(!atun_tcp_connect_is_active(&c));
  for (int i = 0; i < n; ++i) {
    close(fds[i]);
  }
  run_for(0.02);
  cr_assert_eq(o.calls, 0);
}

Test(tcp, errno_maps_to_connect_status) {
  static const struct {
    int err, status;
  } table[] = {
      {0, ATUN_CONNECT_OK},
      {ECONNREFUSED, ATUN_CONNECT_REFUSED},
      {ECONNRESET, ATUN_CONNECT_REFUSED},
      {ENETUNREACH, ATUN_CONNECT_UNREACHABLE},
      {EHOSTUNREACH, ATUN_CONNECT_UNREACHABLE},
      {ENETDOWN, ATUN_CONNECT_UNREACHABLE},
      {EHOSTDOWN, ATUN_CONNECT_UNREACHABLE},
      {EACCES, ATUN_CONNECT_UNREACHABLE},
      {EPERM, ATUN_CONNECT_UNREACHABLE},
      {ETIMEDOUT, ATUN_CONNECT_TIMEOUT},
      {EADDRNOTAVAIL, ATUN_CONNECT_INTERNAL},
      {EMFILE, ATUN_CONNECT_INTERNAL},
  };
  for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); ++i) {
    cr_assert_eq(atun_tcp_connect_status_from_errno(table[i].err), table[i].status,
                 "errno %d", table[i].err);
  }
}

/* ---- listener bounds ----------------------------------------------------- */

Test(tcp, guard_pauses_at_conns_max_and_release_resumes) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_listener_settings s;
  atun_tcp_listener_settings_default(&s);
  s.conns_max = 2;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, &s, accept_cb, &a), 0);
  const atun_tcp_endpoint *to = atun_tcp_listener_local(&l);
  int c[3];
  for (int i = 0; i < 3; ++i) {
    c[i] = raw_connect(to);
  }
  cr_assert(run_until_count(&a.n, 2, 5));
  run_for(0.05);
  cr_assert_eq(a.n, 2);
  cr_assert(atun_tcp_listener_is_paused(&l));
  atun_tcp_listener_stats st;
  atun_tcp_listener_get_stats(&l, &st);
  cr_assert_eq(st.conns, 2);
  cr_assert_eq(st.full_pauses, 1);
  close(a.fds[0]);
  atun_tcp_listener_release(&l);
  cr_assert(!atun_tcp_listener_is_paused(&l));
  cr_assert(run_until_count(&a.n, 3, 5));
  cr_assert(atun_tcp_listener_is_paused(&l));
  atun_tcp_listener_get_stats(&l, &st);
  cr_assert_eq(st.accepted, 3);
  cr_assert_eq(st.full_pauses, 2);
  for (int i = 0; i < 3; ++i) {
    close(c[i]);
  }
  close(a.fds[1]);
  close(a.fds[2]);
  atun_tcp_listener_free(&l);
}

Test(tcp, accepts_per_event_bounds_one_callback) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_listener_settings s;
  atun_tcp_listener_settings_default(&s);
  s.accepts_per_event = 2;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, &s, accept_cb, &a), 0);
  int c[5];
  for (int i = 0; i < 5; ++i) {
    c[i] = raw_connect(atun_tcp_listener_local(&l));
  }
  ev_run(loop, EVRUN_NOWAIT);
  cr_assert_eq(a.n, 2);
  ev_run(loop, EVRUN_NOWAIT);
  cr_assert_eq(a.n, 4);
  cr_assert(run_until_count(&a.n, 5, 5));
  for (int i = 0; i < 5; ++i) {
    close(c[i]);
    close(a.fds[i]);
  }
  atun_tcp_listener_free(&l);
}

Test(tcp, refused_by_callback_resets_and_does_not_count) {
  acc a = {.refuse = 1};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  int c = raw_connect(atun_tcp_listener_local(&l));
  cr_assert(run_until(&a.calls, 5));
  atun_tcp_listener_stats st;
  atun_tcp_listener_get_stats(&l, &st);
  cr_assert_eq(st.refused, 1);
  cr_assert_eq(st.accepted, 0);
  cr_assert_eq(st.conns, 0);
  char b;
  cr_assert_eq(read(c, &b, 1), -1);
  cr_assert_eq(errno, ECONNRESET);
  close(c);
  atun_tcp_listener_free(&l);
}

Test(tcp, owner_pause_holds_connections_in_the_backlog) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  atun_tcp_listener_set_paused(&l, 1);
  cr_assert(atun_tcp_listener_is_paused(&l));
  int c = raw_connect(atun_tcp_listener_local(&l));
  run_for(0.05);
  cr_assert_eq(a.n, 0);
  atun_tcp_listener_set_paused(&l, 0);
  cr_assert(!atun_tcp_listener_is_paused(&l));
  cr_assert(run_until_count(&a.n, 1, 5));
  close(c);
  close(a.fds[0]);
  atun_tcp_listener_free(&l);
}

Test(tcp, out_of_descriptors_pauses_then_resumes) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_listener_settings s;
  atun_tcp_listener_settings_default(&s);
  s.error_pause_ns = 50 * ATUN_NS_PER_MS;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, &s, accept_cb, &a), 0);
  int c = raw_connect(atun_tcp_listener_local(&l));
  struct rlimit rl;
  cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  rl.rlim_cur = 64;
  cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  int fds[64];
  int n = 0;
  for (int fd; n < 64 && (fd = dup(0)) >= 0;) {
    fds[n++] = fd;
  }
  atun_tcp_listener_stats st;
  double end = now_s() + 5;
  do {
    run_for(0.01);
    atun_tcp_listener_get_stats(&l, &st);
  } while (st.error_pauses == 0 && now_s() < end);
  /* Each retry after the pause meets EMFILE again while fds are short. */
  cr_assert_geq(st.error_pauses, 1);
  cr_assert_eq(a.n, 0);
  cr_assert(atun_tcp_listener_is_paused(&l));
  for (int i = 0; i < n; ++i) {
    close(fds[i]);
  }
  cr_assert(run_until_count(&a.n, 1, 5));
  cr_assert(!atun_tcp_listener_is_paused(&l));
  close(c);
  close(a.fds[0]);
  atun_tcp_listener_free(&l);
}

Test(tcp, listener_freed_inside_the_callback) {
  acc a = {.free_inside = 1};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  atun_tcp_endpoint to = *atun_tcp_listener_local(&l);
  int c1 = raw_connect(&to);
  int c2 = raw_connect(&to);
  cr_assert(run_until_count(&a.n, 1, 5));
  run_for(0.05);
  cr_assert_eq(a.n, 1);
  atun_tcp_listener_free(&l); /* twice: a no-op */
  close(c1);
  close(c2);
  close(a.fds[0]);
}

Test(tcp, listener_errors) {
  acc a = {0};
  atun_tcp_listener l1, l2;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l1, loop, &local, NULL, accept_cb, &a), 0);
  atun_tcp_endpoint same = *atun_tcp_listener_local(&l1);
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &same, NULL, accept_cb, &a),
               ATUN_ERR_EXISTS);
  atun_tcp_listener_settings s;
  atun_tcp_listener_settings_default(&s);
  s.conns_max = 0;
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &local, &s, accept_cb, &a),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_tcp_listener_settings_default(&s);
  s.accepts_per_event = ATUN_TCP_ACCEPTS_PER_EVENT_LIMIT + 1;
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &local, &s, accept_cb, &a),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_tcp_listener_settings_default(&s);
  s.backlog = 0;
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &local, &s, accept_cb, &a),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &local, NULL, NULL, &a),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_tcp_listener_init(NULL, loop, &local, NULL, accept_cb, &a),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_tcp_endpoint nofam = local;
  nofam.addr.family = 9;
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &nofam, NULL, accept_cb, &a),
               ATUN_ERR_INVALID_ARGUMENT);
  /* An address this host does not have. */
  atun_tcp_endpoint foreign = ep("192.0.2.77", 0);
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &foreign, NULL, accept_cb, &a),
               ATUN_ERR_INVALID_ARGUMENT);
  /* Freeing after a failed init touches nothing (fd 0 stays open). */
  atun_tcp_listener_free(&l2);
  cr_assert_neq(fcntl(0, F_GETFD), -1);
  atun_tcp_listener_free(&l1);
  /* The port is free again. */
  cr_assert_eq(atun_tcp_listener_init(&l2, loop, &same, NULL, accept_cb, &a), 0);
  atun_tcp_listener_free(&l2);
}

/* accept4 that fails with |fail_errno| |fail_left| times, then is real. */
static int fail_errno;
static int fail_left;

static int flaky_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  if (fail_left > 0) {
    --fail_left;
    errno = fail_errno;
    return -1;
  }
  return accept4(fd, addr, len, flags);
}

Test(tcp, aborted_connection_in_the_queue_is_skipped) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  int c = raw_connect(atun_tcp_listener_local(&l));
  atun__tcp_accept4 = flaky_accept4;
  fail_errno = ECONNABORTED;
  fail_left = 2;
  cr_assert(run_until(&a.n, 5));
  atun_tcp_listener_stats st;
  atun_tcp_listener_get_stats(&l, &st);
  cr_assert_eq(st.accept_errors, 2);
  cr_assert_eq(st.error_pauses, 0);
  cr_assert_eq(st.accepted, 1);
  close(c);
  close(a.fds[0]);
  atun_tcp_listener_free(&l);
}

Test(tcp, kernel_out_of_buffers_pauses_accepting) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_listener_settings s;
  atun_tcp_listener_settings_default(&s);
  s.error_pause_ns = 100 * ATUN_NS_PER_MS;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, &s, accept_cb, &a), 0);
  int c = raw_connect(atun_tcp_listener_local(&l));
  atun__tcp_accept4 = flaky_accept4;
  fail_errno = ENOBUFS;
  fail_left = 1;
  double t0 = now_s();
  cr_assert(run_until(&a.n, 5));
  cr_assert_geq(now_s() - t0, 0.09);
  atun_tcp_listener_stats st;
  atun_tcp_listener_get_stats(&l, &st);
  cr_assert_eq(st.error_pauses, 1);
  close(c);
  close(a.fds[0]);
  atun_tcp_listener_free(&l);
}

Test(tcp, listener_without_descriptors_fails) {
  struct rlimit rl;
  cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  rl.rlim_cur = 64;
  cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  int fds[64];
  int n = 0;
  for (int fd; n < 64 && (fd = dup(0)) >= 0;) {
    fds[n++] = fd;
  }
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), ATUN_ERR_IO);
  cr_assert_eq(errno, EMFILE);
  atun_tcp_listener_free(&l);
  for (int i = 0; i < n; ++i) {
    close(fds[i]);
  }
}

Test(tcp, freed_and_refused_inside_the_callback) {
  acc a = {.free_inside = 1, .refuse = 1};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  int c = raw_connect(atun_tcp_listener_local(&l));
  cr_assert(run_until(&a.calls, 5));
  char b;
  cr_assert_eq(read(c, &b, 1), -1);
  cr_assert_eq(errno, ECONNRESET);
  close(c);
}

Test(tcp, release_inside_the_callback_keeps_accepting) {
  acc a = {.release_inside = 1};
  atun_tcp_listener l;
  atun_tcp_listener_settings s;
  atun_tcp_listener_settings_default(&s);
  s.conns_max = 1;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, &s, accept_cb, &a), 0);
  int c[3];
  for (int i = 0; i < 3; ++i) {
    c[i] = raw_connect(atun_tcp_listener_local(&l));
  }
  cr_assert(run_until_count(&a.n, 3, 5));
  atun_tcp_listener_stats st;
  atun_tcp_listener_get_stats(&l, &st);
  cr_assert_eq(st.conns, 0);
  cr_assert(!atun_tcp_listener_is_paused(&l));
  for (int i = 0; i < 3; ++i) {
    close(c[i]);
  }
  atun_tcp_listener_free(&l);
}

/* ---- helpers: half-close, reset, addresses -------------------------------- */

Test(tcp, half_close_sends_eof_one_way_only) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  int cfd = connect_pair(&l, &a, "127.0.0.1");
  int sfd = a.fds[0];
  cr_assert_eq(write(cfd, "last", 4), 4);
  cr_assert_eq(atun_tcp_half_close(cfd), 0);
  run_for(0.02);
  char buf[8];
  cr_assert_eq(read(sfd, buf, sizeof(buf)), 4);
  cr_assert_eq(read(sfd, buf, sizeof(buf)), 0); /* EOF */
  /* The other way still works. */
  cr_assert_eq(write(sfd, "back", 4), 4);
  run_for(0.02);
  cr_assert_eq(read(cfd, buf, sizeof(buf)), 4);
  cr_assert_eq(memcmp(buf, "back", 4), 0);
  cr_assert_eq(send(cfd, "x", 1, MSG_NOSIGNAL), -1);
  cr_assert_eq(errno, EPIPE);
  close(cfd);
  close(sfd);
  /* On a socket that is not connected it fails. */
  int u = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_eq(atun_tcp_half_close(u), ATUN_ERR_IO);
  cr_assert_eq(errno, ENOTCONN);
  close(u);
  atun_tcp_listener_free(&l);
}

Test(tcp, reset_gives_the_peer_econnreset) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  int cfd = connect_pair(&l, &a, "127.0.0.1");
  int sfd = a.fds[0];
  cr_assert_eq(write(cfd, "unread", 6), 6);
  run_for(0.02);
  atun_tcp_reset(sfd); /* with unread bytes: a RST either way, now forced */
  run_for(0.02);
  char buf[8];
  cr_assert_eq(read(cfd, buf, sizeof(buf)), -1);
  cr_assert_eq(errno, ECONNRESET);
  close(cfd);
  atun_tcp_reset(-1); /* a no-op */
  atun_tcp_listener_free(&l);
}

Test(tcp, reset_without_pending_data_is_still_a_rst) {
  acc a = {0};
  atun_tcp_listener l;
  atun_tcp_endpoint local = ep("127.0.0.1", 0);
  cr_assert_eq(atun_tcp_listener_init(&l, loop, &local, NULL, accept_cb, &a), 0);
  int cfd = connect_pair(&l, &a, "127.0.0.1");
  atun_tcp_reset(a.fds[0]);
  run_for(0.02);
  char buf[8];
  /* A plain close would read as EOF (0) here. */
  cr_assert_eq(read(cfd, buf, sizeof(buf)), -1);
  cr_assert_eq(errno, ECONNRESET);
  close(cfd);
  atun_tcp_listener_free(&l);
}

Test(tcp, sockaddr_conversions) {
  struct sockaddr_storage ss;
  socklen_t len;
  atun_tcp_endpoint e = ep("10.1.2.3", 8080), back;
  cr_assert_eq(atun_tcp_sockaddr(&ss, &len, &e), 0);
  cr_assert_eq(len, sizeof(struct sockaddr_in));
  cr_assert_eq(atun_tcp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, len), 0);
  cr_assert_eq(back.port, 8080);
  cr_assert_eq(memcmp(&back.addr, &e.addr, sizeof(e.addr)), 0);
  /* IPv4-mapped IPv6 folds to IPv4. */
  atun_tcp_endpoint m = ep("::ffff:10.1.2.3", 8080);
  cr_assert_eq(atun_tcp_sockaddr(&ss, &len, &m), 0);
  cr_assert_eq(len, sizeof(struct sockaddr_in6));
  cr_assert_eq(atun_tcp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, len), 0);
  cr_assert_eq(back.addr.family, ATUN_AF_INET);
  cr_assert_eq(memcmp(back.addr.bytes, e.addr.bytes, 4), 0);
  /* Short or foreign sockaddrs are refused. */
  cr_assert_eq(atun_tcp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss, 8),
               ATUN_ERR_INVALID_ARGUMENT);
  ss.ss_family = AF_UNIX;
  cr_assert_eq(atun_tcp_endpoint_from_sockaddr(&back, (struct sockaddr *)&ss,
                                               sizeof(ss)), ATUN_ERR_INVALID_ARGUMENT);
  e.addr.family = 0;
  cr_assert_eq(atun_tcp_sockaddr(&ss, &len, &e), ATUN_ERR_INVALID_ARGUMENT);
  int u = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_eq(atun_tcp_peer_endpoint(u, &back), ATUN_ERR_IO);
  cr_assert_eq(atun_tcp_set_nodelay(u), 0);
  cr_assert_eq(nodelay_of(u), 1);
  close(u);
  cr_assert_eq(atun_tcp_set_nodelay(-1), ATUN_ERR_IO);
}
