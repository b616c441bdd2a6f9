/*
 * io/dns against a fake DNS server on 127.0.0.1, served by the test's own
 * loop: a UDP socket that answers from a fixed table of names.  Nothing
 * leaves the machine: every resolver here is given the fake server (or a
 * resolv.conf naming only loopback), and /etc/hosts lookups read a hosts
 * file of the test's own ($CARES_HOSTS).
 *
 * Names the fake server knows:
 *   a.test        A 192.0.2.1, AAAA 2001:db8::1
 *   v4.test       A 192.0.2.2, no AAAA
 *   many.test     20 A records (more than ATUN_DNS_ADDRS_MAX)
 *   dup.test      A 192.0.2.5 twice, AAAA ::ffff:192.0.2.5 (the same)
 *   empty.test    neither A nor AAAA (NOERROR, no answer)
 *   host.corp.test  A 192.0.2.8 (reached through a search domain)
 *   fail.test     SERVFAIL
 *   silent.test   never answered
 *   slow.test     answered after |slow_ms|
 *   anything else NXDOMAIN
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "codec.h"
#include "dns.h"
#include "support.h"

/* ---- the fake server --------------------------------------------------------- */

#define SLOW_MAX 16

typedef struct delayed {
  ev_timer timer;
  uint8_t buf[512];
  size_t len;
  struct sockaddr_storage to;
  socklen_t tolen;
  int used;
} delayed;

typedef struct fake_dns {
  int fd;
  ev_io io;
  atun_tcp_endpoint ep;
  int queries;       /* every query received */
  int queries_a;     /* of type A */
  int queries_aaaa;
  char last[256];
  double slow_s;
  delayed slow[SLOW_MAX];
} fake_dns;

static struct ev_loop *loop;
static fake_dns S;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads the question name into |out| (dotted, lowercase).  Returns the
 * offset after QNAME, or 0 when malformed. */
static size_t read_qname(const uint8_t *m, size_t len, char *out, size_t cap) {
  size_t off = 12, o = 0;
  while (off < len && m[off] != 0) {
    size_t l = m[off++];
    if (l > 63 || off + l > len || o + l + 2 > cap) {
      return 0;
    }
    if (o > 0) {
      out[o++] = '.';
    }
    for (size_t i = 0; i < l; ++i) {
      char c = (char)m[off + i];
      out[o++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    off += l;
  }
  out[o] = '\0';
  return off < len ? off + 1 : 0;
}

static size_t put_rr(uint8_t *r, size_t n, uint16_t type, const void *rdata,
                     uint16_t rdlen) {
  const uint8_t head[] = {0xc0, 0x0c, (uint8_t)(type >> 8), (uint8_t)type, 0, 1,
                          0, 0, 0, 60, (uint8_t)(rdlen >> 8), (uint8_t)rdlen};
  memcpy(r + n, head, sizeof(head));
  memcpy(r + n + sizeof(head), rdata, rdlen);
  return n + sizeof(head) + rdlen;
}

static void add_a(uint8_t *r, size_t *n, int *an, const char *text) {
  uint8_t b[4];
  cr_assert_eq(inet_pton(AF_INET, text, b), 1);
  *n = put_rr(r, *n, 1, b, 4);
  ++*an;
}

static void add_aaaa(uint8_t *r, size_t *n, int *an, const char *text) {
  uint8_t b[16];
  cr_assert_eq(inet_pton(AF_INET6, text, b), 1);
  *n = put_rr(r, *n, 28, b, 16);
  ++*an;
}

/* Fills the answer section for |name| / |qtype|.  Returns the rcode, or -1
 * for "do not answer". */
static int answer(const char *name, uint16_t qtype, uint8_t *r, size_t *n, int *an) {
  int a = qtype == 1, aaaa = qtype == 28;
  if (strcmp(name, "silent.test") == 0) {
    return -1;
  }
  if (strcmp(name, "fail.test") == 0) {
    return 2;
  }
  if (strcmp(name, "a.test") == 0 || strcmp(name, "slow.test") == 0) {
    if (a) add_a(r, n, an, "192.0.2.1");
    if (aaaa) add_aaaa(r, n, an, "2001:db8::1");
    return 0;
  }
  if (strcmp(name, "v4.test") == 0) {
    if (a) add_a(r, n, an, "192.0.2.2");
    return 0;
  }
  if (strcmp(name, "host.corp.test") == 0) {
    if (a) add_a(r, n, an, "192.0.2.8");
    return 0;
  }
  if (strcmp(name, "many.test") == 0) {
    for (int i = 0; a && i < 20; ++i) {
      char t[32];
      snprintf(t, sizeof(t), "198.51.100.%d", i + 1);
      add_a(r, n, an, t);
    }
    return 0;
  }
  if (strcmp(name, "dup.test") == 0) {
    if (a) add_a(r, n, an, "192.0.2.5");
    if (a) add_a(r, n, an, "192.0.2.5");
    if (aaaa) add_aaaa(r, n, an, "::ffff:192.0.2.5");
    return 0;
  }
  if (strcmp(name, "empty.test") == 0) {
    return 0;
  }
  return 3;
}

static void delayed_cb(struct ev_loop *l, ev_timer *w, int revents) {
  (void)l;
  (void)revents;
  delayed *d = w->data;
  sendto(S.fd, d->buf, d->len, 0, (struct sockaddr *)&d->to, d->tolen);
  d->used = 0;
}

static void send_later(const uint8_t *r, size_t n, const struct sockaddr_storage *to,
                       socklen_t tolen) {
  for (int i = 0; i < SLOW_MAX; ++i) {
    delayed *d = &S.slow[i];
    if (!d->used) {
      d->used = 1;
      memcpy(d->buf, r, n);
      d->len = n;
      d->to = *to;
      d->tolen = tolen;
      ev_timer_init(&d->timer, delayed_cb, S.slow_s, 0.);
      d->timer.data = d;
      ev_timer_start(loop, &d->timer);
      return;
    }
  }
  cr_assert_fail("too many slow answers");
}

static void server_cb(struct ev_loop *l, ev_io *w, int revents) {
  (void)l;
  (void)w;
  (void)revents;
  uint8_t m[512], r[1024];
  struct sockaddr_storage from;
  socklen_t fl = sizeof(from);
  ssize_t len = recvfrom(S.fd, m, sizeof(m), 0, (struct sockaddr *)&from, &fl);
  if (len < 12) {
    return;
  }
  ++S.queries;
  char name[256];
  size_t qend = read_qname(m, (size_t)len, name, sizeof(name));
  cr_assert(qend != 0 && qend + 4 <= (size_t)len, "malformed query");
  snprintf(S.last, sizeof(S.last), "%s", name);
  uint16_t qtype = (uint16_t)(m[qend] << 8 | m[qend + 1]);
  S.queries_a += qtype == 1;
  S.queries_aaaa += qtype == 28;
  /* Header and question echoed; answers follow. */
  size_t n = qend + 4;
  memcpy(r, m, n);
  int an = 0;
  int rcode = answer(name, qtype, r, &n, &an);
  if (rcode < 0) {
    return;
  }
  r[2] = (uint8_t)(0x80 | (m[2] & 0x01)); /* QR, RD copied */
  r[3] = (uint8_t)(0x80 | rcode);         /* RA, rcode */
  r[4] = 0, r[5] = 1;                     /* QDCOUNT */
  r[6] = (uint8_t)(an >> 8), r[7] = (uint8_t)an;
  memset(r + 8, 0, 4);
  if (strcmp(name, "slow.test") == 0) {
    send_later(r, n, &from, fl);
    return;
  }
  sendto(S.fd, r, n, 0, (struct sockaddr *)&from, fl);
}

/* A UDP socket on 127.0.0.1 that reads queries and never answers. */
static int mute_socket(atun_tcp_endpoint *ep) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  socklen_t len = sizeof(sin);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
  memset(ep, 0, sizeof(*ep));
  ep->addr.family = ATUN_AF_INET;
  memcpy(ep->addr.bytes, &sin.sin_addr, 4);
  ep->port = ntohs(sin.sin_port);
  return fd;
}

/* Serves the fake from |fd| (bound to |ep|) instead. */
static void fake_move(int fd, const atun_tcp_endpoint *ep) {
  ev_io_stop(loop, &S.io);
  close(S.fd);
  S.fd = fd;
  if (ep != NULL) {
    S.ep = *ep;
  }
  ev_io_set(&S.io, fd, EV_READ);
  ev_io_start(loop, &S.io);
}

static char hosts_path[64];
static char resolv_path[64];

static void setup(void) {
  loop = ev_loop_new(EVFLAG_AUTO);
  memset(&S, 0, sizeof(S));
  S.fd = mute_socket(&S.ep);
  S.slow_s = 0.1;
  ev_io_init(&S.io, server_cb, S.fd, EV_READ);
  ev_io_start(loop, &S.io);
  /* The hosts file c-ares reads, instead of the system's. */
  snprintf(hosts_path, sizeof(hosts_path), "/tmp/atun-dns-hosts-%d", (int)getpid());
  FILE *f = fopen(hosts_path, "w");
  cr_assert_not_null(f);
  fprintf(f, "192.0.2.9 hosted.test\n");
  fclose(f);
  setenv("CARES_HOSTS", hosts_path, 1);
  resolv_path[0] = '\0';
}

static void teardown(void) {
  ev_io_stop(loop, &S.io);
  for (int i = 0; i < SLOW_MAX; ++i) {
    if (S.slow[i].used) {
      ev_timer_stop(loop, &S.slow[i].timer);
    }
  }
  close(S.fd);
  ev_loop_destroy(loop);
  unlink(hosts_path);
  if (resolv_path[0] != '\0') {
    unlink(resolv_path);
  }
}

TestSuite(dns, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---------------------------------------------------------------- */

typedef struct got {
  int calls;
  atun_dns_result r;
  int in_resolve; /* set around atun_dns_resolve: a callback inside fails */
} got;

static int in_resolve;

static void on_result(atun_dns_query *q, const atun_dns_result *r, void *ud) {
  (void)q;
  got *g = ud;
  cr_assert(!in_resolve, "callback inside atun_dns_resolve");
  ++g->calls;
  g->r = *r;

}

static atun_dns_settings test_settings(void) {
  atun_dns_settings s;
  atun_dns_settings_default(&s);
  s.servers = &S.ep;
  s.nservers = 1;
  s.use_hosts = 0;
  s.use_search = 0;
  s.timeout_ns = 2 * ATUN_NS_PER_S;
  s.try_timeout_ns = 500 * ATUN_NS_PER_MS;
  return s;
}

static atun_dns *make(const atun_dns_settings *s) {
  atun_dns *dns = NULL;
  cr_assert_eq(atun_dns_new(&dns, loop, s, NULL), 0);
  return dns;
}

static int resolve(atun_dns *dns, atun_dns_query *q, const char *name, got *g) {
  in_resolve = 1;
  int rv = atun_dns_resolve(dns, q, name, on_result, g);
  in_resolve = 0;
  return rv;
}

static int run_until_calls(const got *g, int n, double max_s) {
  double end = now_s() + max_s;
  while (g->calls < n && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  return g->calls >= n;
}

static void run_for(double s) {
  double end = now_s() + s;
  while (now_s() < end) {
    ev_run(loop, EVRUN_NOWAIT);
    usleep(1000);
  }
}

static int has_addr(const atun_dns_result *r, const char *text) {
  atun_addr a;
  cr_assert_eq(atun_addr_parse(&a, text), 0);
  for (size_t i = 0; i < r->naddrs; ++i) {
    if (r->addrs[i].family == a.family && memcmp(r->addrs[i].bytes, a.bytes, 16) == 0) {
      return 1;
    }
  }
  return 0;
}

/* Resolves |name| with the test settings and returns the result. */
static atun_dns_result lookup(const char *name) {
  atun_dns_settings s = test_settings();
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  cr_assert_eq(resolve(dns, &q, name, &g), 0);
  cr_assert(atun_dns_query_is_active(&q));
  cr_assert(run_until_calls(&g, 1, 10), "no answer for %s", name);
  cr_assert(!atun_dns_query_is_active(&q));
  run_for(0.02);
  cr_assert_eq(g.calls, 1);
  atun_dns_stats st;
  atun_dns_get_stats(dns, &st);
  cr_assert_eq(st.queries, 1);
  atun_dns_del(dns);
  return g.r;
}

/* ---- answers --------------------------------------------------------------------- */

Test(dns, a_and_aaaa) {
  atun_dns_result r = lookup("a.test");
  cr_assert_eq(r.status, ATUN_CONNECT_OK);
  cr_assert_eq(r.reason, ATUN_DNS_OK);
  cr_assert_eq(r.naddrs, 2);
  cr_assert(has_addr(&r, "192.0.2.1"));
  cr_assert(has_addr(&r, "2001:db8::1"));
  cr_assert_eq(r.dropped, 0);
  cr_assert_geq(S.queries_a, 1);
  cr_assert_geq(S.queries_aaaa, 1);
}

Test(dns, a_only) {
  atun_dns_result r = lookup("v4.test");
  cr_assert_eq(r.status, ATUN_CONNECT_OK);
  cr_assert_eq(r.naddrs, 1);
  cr_assert(has_addr(&r, "192.0.2.2"));
}

Test(dns, answers_are_capped_at_the_bound) {
  atun_dns_result r = lookup("many.test");
  cr_assert_eq(r.status, ATUN_CONNECT_OK);
  cr_assert_eq(r.naddrs, ATUN_DNS_ADDRS_MAX);
  cr_assert_eq(r.dropped, 20 - ATUN_DNS_ADDRS_MAX);
}

Test(dns, duplicates_and_mapped_addresses_fold) {
  atun_dns_result r = lookup("dup.test");
  cr_assert_eq(r.status, ATUN_CONNECT_OK);
  cr_assert_eq(r.naddrs, 1);
  cr_assert(has_addr(&r, "192.0.2.5"));
  cr_assert_eq(r.addrs[0].family, ATUN_AF_INET);
}

Test(dns, nxdomain_is_a_dns_failure) {
  atun_dns_result r = lookup("nope.test");
  cr_assert_eq(r.status, ATUN_CONNECT_DNS_FAILURE);
  cr_assert_eq(r.reason, ATUN_DNS_NXDOMAIN);
  cr_assert_eq(r.naddrs, 0);
}

Test(dns, no_address_is_a_dns_failure) {
  atun_dns_result r = lookup("empty.test");
  cr_assert_eq(r.status, ATUN_CONNECT_DNS_FAILURE);
  cr_assert_eq(r.reason, ATUN_DNS_NODATA);
}

Test(dns, servfail_is_a_dns_failure) {
  atun_dns_result r = lookup("fail.test");
  cr_assert_eq(r.status, ATUN_CONNECT_DNS_FAILURE);
  cr_assert_eq(r.reason, ATUN_DNS_SERVER);
}

/* ---- timeouts ---------------------------------------------------------------------- */

Test(dns, silence_hits_the_query_deadline) {
  atun_dns_settings s = test_settings();
  s.timeout_ns = 200 * ATUN_NS_PER_MS;
  s.try_timeout_ns = 400 * ATUN_NS_PER_MS; /* c-ares alone would wait 1.2 s */
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  double t0 = now_s();
  cr_assert_eq(resolve(dns, &q, "silent.test", &g), 0);
  cr_assert(run_until_calls(&g, 1, 5));
  double took = now_s() - t0;
  cr_assert_eq(g.r.status, ATUN_CONNECT_DNS_FAILURE);
  cr_assert_eq(g.r.reason, ATUN_DNS_TIMEOUT);
  cr_assert_geq(took, 0.19);
  cr_assert_lt(took, 1.0, "took %.3f s", took);
  atun_dns_stats st;
  atun_dns_get_stats(dns, &st);
  cr_assert_eq(st.timeouts, 1);
  cr_assert_eq(st.failed, 1);
  /* c-ares still runs it, into a detached ticket, then lets go. */
  cr_assert_eq(st.detached, 1);
  cr_assert_eq(st.in_flight, 1);
  double end = now_s() + 5;
  while (st.in_flight > 0 && now_s() < end) {
    run_for(0.05);
    atun_dns_get_stats(dns, &st);
  }
  cr_assert_eq(st.detached, 0);
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(g.calls, 1);
  atun_dns_del(dns);
}

Test(dns, resolver_giving_up_first_is_a_timeout_too) {
  atun_dns_settings s = test_settings();
  s.timeout_ns = 5 * ATUN_NS_PER_S;
  s.try_timeout_ns = 50 * ATUN_NS_PER_MS;
  s.tries = 1;
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  cr_assert_eq(resolve(dns, &q, "silent.test", &g), 0);
  cr_assert(run_until_calls(&g, 1, 3));
  cr_assert_eq(g.r.status, ATUN_CONNECT_DNS_FAILURE);
  cr_assert_eq(g.r.reason, ATUN_DNS_TIMEOUT);
  atun_dns_stats st;
  atun_dns_get_stats(dns, &st);
  cr_assert_eq(st.timeouts, 0); /* not our deadline: c-ares' */
  cr_assert_eq(st.in_flight, 0);
  atun_dns_del(dns);
}

/* ---- cancellation ---------------------------------------------------------------- */

Test(dns, cancelled_query_never_calls_back) {
  atun_dns_settings s = test_settings();
  atun_dns *dns = make(&s);
  /* Heap storage freed right after the cancel: a late write would show
   * under ASan. */
  atun_dns_query *q = malloc(sizeof(*q));
  atun_dns_query_init(q);
  got g = {0};
  cr_assert_eq(resolve(dns, q, "slow.test", &g), 0);
  atun_dns_cancel(q);
  cr_assert(!atun_dns_query_is_active(q));
  free(q);
  /* The answer comes (after 100 ms) and goes nowhere. */
  atun_dns_stats st;
  double end = now_s() + 5;
  do {
    run_for(0.05);
    atun_dns_get_stats(dns, &st);
  } while (st.in_flight > 0 && now_s() < end);
  cr_assert_eq(g.calls, 0);
  cr_assert_geq(S.queries, 1);
  cr_assert_eq(st.cancelled, 1);
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(st.detached, 0);
  atun_dns_del(dns);
}

Test(dns, cancelled_storage_can_resolve_again) {
  atun_dns_settings s = test_settings();
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  atun_dns_cancel(&q); /* idle: a no-op */
  got first = {0}, second = {0};
  cr_assert_eq(resolve(dns, &q, "slow.test", &first), 0);
  cr_assert_eq(resolve(dns, &q, "a.test", &second), ATUN_ERR_STATE);
  atun_dns_cancel(&q);
  cr_assert_eq(resolve(dns, &q, "v4.test", &second), 0);
  cr_assert(run_until_calls(&second, 1, 5));
  run_for(0.3);
  cr_assert_eq(first.calls, 0);
  cr_assert_eq(second.calls, 1);
  cr_assert(has_addr(&second.r, "192.0.2.2"));
  atun_dns_del(dns);
}

Test(dns, delete_with_queries_in_flight_calls_nobody) {
  atun_dns_settings s = test_settings();
  s.use_hosts = 1;
  atun_dns *dns = make(&s);
  atun_dns_query q1, q2, q3;
  atun_dns_query_init(&q1);
  atun_dns_query_init(&q2);
  atun_dns_query_init(&q3);
  got g = {0};
  cr_assert_eq(resolve(dns, &q1, "silent.test", &g), 0);
  cr_assert_eq(resolve(dns, &q2, "slow.test", &g), 0);
  /* Answered from the hosts file already, waiting for the loop. */
  cr_assert_eq(resolve(dns, &q3, "hosted.test", &g), 0);
  atun_dns_stats st;
  atun_dns_get_stats(dns, &st);
  cr_assert_eq(st.in_flight, 2);
  atun_dns_del(dns);
  cr_assert(!atun_dns_query_is_active(&q1));
  cr_assert(!atun_dns_query_is_active(&q2));
  cr_assert(!atun_dns_query_is_active(&q3));
  run_for(0.3);
  cr_assert_eq(g.calls, 0);
}

/* ---- re-entrancy ---------------------------------------------------------------- */

typedef struct chain {
  atun_dns *dns;
  atun_dns_query q;
  int calls;
  atun_dns_result last;
} chain;

static void chain_cb(atun_dns_query *q, const atun_dns_result *r, void *ud) {
  chain *c = ud;
  ++c->calls;
  c->last = *r;
  if (c->calls < 3) {
    /* The same storage, from inside its own callback. */
    cr_assert_eq(atun_dns_resolve(c->dns, q, c->calls == 1 ? "v4.test" : "nope.test",
                                  chain_cb, c), 0);
    /* The result we were handed is still intact. */
    cr_assert_eq(r->status, c->last.status);
  }
}

Test(dns, callback_may_start_the_next_query) {
  atun_dns_settings s = test_settings();
  chain c = {0};
  c.dns = make(&s);
  atun_dns_query_init(&c.q);
  cr_assert_eq(atun_dns_resolve(c.dns, &c.q, "a.test", chain_cb, &c), 0);
  double end = now_s() + 5;
  while (c.calls < 3 && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  cr_assert_eq(c.calls, 3);
  cr_assert_eq(c.last.reason, ATUN_DNS_NXDOMAIN);
  atun_dns_del(c.dns);
}

/* ---- bounds ---------------------------------------------------------------------- */

Test(dns, queries_max_counts_detached_tickets) {
  atun_dns_settings s = test_settings();
  s.queries_max = 2;
  s.try_timeout_ns = 100 * ATUN_NS_PER_MS;
  s.tries = 1;
  atun_dns *dns = make(&s);
  atun_dns_query q[3];
  got g = {0};
  for (int i = 0; i < 3; ++i) {
    atun_dns_query_init(&q[i]);
  }
  cr_assert_eq(resolve(dns, &q[0], "silent.test", &g), 0);
  cr_assert_eq(resolve(dns, &q[1], "silent.test", &g), 0);
  cr_assert_eq(resolve(dns, &q[2], "a.test", &g), ATUN_ERR_FULL);
  cr_assert(!atun_dns_query_is_active(&q[2]));
  atun_dns_cancel(&q[0]);
  /* Still held by c-ares. */
  cr_assert_eq(resolve(dns, &q[2], "a.test", &g), ATUN_ERR_FULL);
  cr_assert(run_until_calls(&g, 1, 3)); /* q[1]: c-ares gives up */
  run_for(0.05);
  atun_dns_stats st;
  atun_dns_get_stats(dns, &st);
  cr_assert_eq(st.in_flight, 0);
  cr_assert_eq(resolve(dns, &q[2], "a.test", &g), 0);
  cr_assert(run_until_calls(&g, 2, 3));
  cr_assert_eq(g.r.status, ATUN_CONNECT_OK);
  atun_dns_del(dns);
}

Test(dns, socket_table_bound_refuses_sockets) {
  /* Two servers: the first never answers, the second is the fake.  With
   * one socket slot c-ares can not reach the second one. */
  atun_tcp_endpoint servers[2];
  int mute = mute_socket(&servers[0]);
  servers[1] = S.ep;
  atun_dns_settings s = test_settings();
  s.servers = servers;
  s.nservers = 2;
  s.try_timeout_ns = 50 * ATUN_NS_PER_MS;
  s.tries = 1;
  s.sockets_max = 1;
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  cr_assert_eq(resolve(dns, &q, "a.test", &g), 0);
  cr_assert(run_until_calls(&g, 1, 5));
  cr_assert_eq(g.r.status, ATUN_CONNECT_DNS_FAILURE);
  atun_dns_stats st;
  atun_dns_get_stats(dns, &st);
  cr_assert_geq(st.sockets_refused, 1);
  cr_assert_leq(st.sockets, 1);
  cr_assert_eq(S.queries, 0);
  atun_dns_del(dns);
  /* Two slots: the second server answers. */
  s.sockets_max = 2;
  dns = make(&s);
  got g2 = {0};
  cr_assert_eq(resolve(dns, &q, "a.test", &g2), 0);
  cr_assert(run_until_calls(&g2, 1, 5));
  cr_assert_eq(g2.r.status, ATUN_CONNECT_OK);
  atun_dns_get_stats(dns, &st);
  cr_assert_eq(st.sockets_refused, 0);
  atun_dns_del(dns);
  close(mute);
}

/* ---- configuration -------------------------------------------------------------- */

Test(dns, hosts_file_first_when_asked) {
  atun_dns_settings s = test_settings();
  s.use_hosts = 1;
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  cr_assert_eq(resolve(dns, &q, "hosted.test", &g), 0);
  cr_assert_eq(g.calls, 0);
  cr_assert(run_until_calls(&g, 1, 5));
  cr_assert_eq(g.r.status, ATUN_CONNECT_OK);
  cr_assert(has_addr(&g.r, "192.0.2.9"));
  cr_assert_eq(S.queries, 0);
  atun_dns_del(dns);
  /* Without hosts the name goes to DNS, which does not know it. */
  s.use_hosts = 0;
  dns = make(&s);
  got g2 = {0};
  cr_assert_eq(resolve(dns, &q, "hosted.test", &g2), 0);
  cr_assert(run_until_calls(&g2, 1, 5));
  cr_assert_eq(g2.r.reason, ATUN_DNS_NXDOMAIN);
  cr_assert_geq(S.queries, 1);
  atun_dns_del(dns);
}

static void write_resolv_conf(const char *text) {
  snprintf(resolv_path, sizeof(resolv_path), "/tmp/atun-dns-resolv-%d", (int)getpid());
  FILE *f = fopen(resolv_path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
}

Test(dns, search_domains_from_resolv_conf) {
  write_resolv_conf("nameserver 127.0.0.1\nsearch corp.test\n");
  atun_dns_settings s = test_settings();
  s.resolv_conf = resolv_path;
  s.use_search = 1;
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  cr_assert_eq(resolve(dns, &q, "host", &g), 0);
  cr_assert(run_until_calls(&g, 1, 5));
  cr_assert_eq(g.r.status, ATUN_CONNECT_OK);
  cr_assert(has_addr(&g.r, "192.0.2.8"));
  atun_dns_del(dns);
  /* Search off: "host" is asked as is, and does not exist. */
  s.use_search = 0;
  dns = make(&s);
  got g2 = {0};
  cr_assert_eq(resolve(dns, &q, "host", &g2), 0);
  cr_assert(run_until_calls(&g2, 1, 5));
  cr_assert_eq(g2.r.reason, ATUN_DNS_NXDOMAIN);
  cr_assert_str_eq(S.last, "host");
  atun_dns_del(dns);
}

Test(dns, nameservers_come_from_resolv_conf) {
  /* resolv.conf has no port syntax, so the fake server moves to
   * 127.0.0.1:53 for this test (where binding it is allowed). */
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_port = htons(53);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
    close(fd);
    cr_skip_test("can not bind 127.0.0.1:53 (%s)", strerror(errno));
  }
  fake_move(fd, NULL);
  write_resolv_conf("nameserver 127.0.0.1\n");
  atun_dns_settings s;
  atun_dns_settings_default(&s); /* no servers given: the file's */
  s.resolv_conf = resolv_path;
  s.use_hosts = 0;
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  cr_assert_eq(resolve(dns, &q, "a.test", &g), 0);
  cr_assert(run_until_calls(&g, 1, 5));
  cr_assert_eq(g.r.status, ATUN_CONNECT_OK);
  cr_assert_eq(g.r.naddrs, 2);
  cr_assert_geq(S.queries, 2);
  atun_dns_del(dns);
}

Test(dns, ipv6_nameserver) {
  int fd = socket(AF_INET6, SOCK_DGRAM, 0);
  struct sockaddr_in6 sin6;
  memset(&sin6, 0, sizeof(sin6));
  sin6.sin6_family = AF_INET6;
  sin6.sin6_addr = in6addr_loopback;
  if (fd < 0 || bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) != 0) {
    cr_skip_test("no IPv6 loopback");
  }
  socklen_t len = sizeof(sin6);
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin6, &len), 0);
  atun_tcp_endpoint ep;
  memset(&ep, 0, sizeof(ep));
  ep.addr.family = ATUN_AF_INET6;
  memcpy(ep.addr.bytes, &sin6.sin6_addr, 16);
  ep.port = ntohs(sin6.sin6_port);
  fake_move(fd, &ep);
  atun_dns_result r = lookup("a.test");
  cr_assert_eq(r.status, ATUN_CONNECT_OK);
  cr_assert_eq(r.naddrs, 2);
  cr_assert_geq(S.queries, 2);
}

Test(dns, a_label_over_63_bytes_is_a_bad_name) {
  char name[80];
  memset(name, 'x', 64);
  strcpy(name + 64, ".test");
  atun_dns_result r = lookup(name);
  cr_assert_eq(r.status, ATUN_CONNECT_DNS_FAILURE);
  cr_assert_eq(r.reason, ATUN_DNS_BAD_NAME);
  cr_assert_eq(S.queries, 0);
}

Test(dns, default_settings_start_and_stop) {
  /* The system's resolv.conf is read; nothing is asked. */
  atun_dns *dns = NULL;
  cr_assert_eq(atun_dns_new(&dns, loop, NULL, NULL), 0);
  atun_dns_stats st;
  atun_dns_get_stats(dns, &st);
  cr_assert_eq(st.sockets, 0);
  atun_dns_del(dns);
}

Test(dns, settings_are_checked) {
  atun_dns *dns = NULL;
  atun_dns_settings s;
  atun_tcp_endpoint nine[ATUN_DNS_SERVERS_MAX + 1];
  for (size_t i = 0; i < ATUN_DNS_SERVERS_MAX + 1; ++i) {
    nine[i] = S.ep;
  }
#define BAD(expr)                                                              \
  do {                                                                         \
    s = test_settings();                                                       \
    expr;                                                                      \
    cr_assert_eq(atun_dns_new(&dns, loop, &s, NULL), ATUN_ERR_INVALID_ARGUMENT, \
                 #expr);                                                       \
  } while (0)
  BAD(s.timeout_ns = 0);
  BAD(s.timeout_ns = ATUN_DNS_TIMEOUT_MAX_NS + 1);
  BAD(s.try_timeout_ns = ATUN_NS_PER_MS - 1);
  BAD(s.tries = 0);
  BAD(s.tries = ATUN_DNS_TRIES_LIMIT + 1);
  BAD(s.queries_max = 0);
  BAD(s.queries_max = ATUN_DNS_QUERIES_LIMIT + 1);
  BAD(s.sockets_max = 0);
  BAD(s.sockets_max = ATUN_DNS_SOCKETS_LIMIT + 1);
  BAD((s.servers = nine, s.nservers = ATUN_DNS_SERVERS_MAX + 1));
  BAD((s.servers = NULL, s.nservers = 1));
  BAD(nine[0].addr.family = 0; s.servers = nine);
#undef BAD
  cr_assert_eq(atun_dns_new(NULL, loop, NULL, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_dns_new(&dns, NULL, NULL, NULL), ATUN_ERR_INVALID_ARGUMENT);
  /* A resolv.conf that is not there. */
  s = test_settings();
  s.resolv_conf = "/nonexistent/atun/resolv.conf";
  int rv = atun_dns_new(&dns, loop, &s, NULL);
  if (rv == 0) {
    /* c-ares treats a missing file as empty: defaults, still loopback. */
    atun_dns_del(dns);
  } else {
    cr_assert_eq(rv, ATUN_ERR_IO);
  }
}

Test(dns, resolve_arguments_are_checked) {
  atun_dns_settings s = test_settings();
  atun_dns *dns = make(&s);
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  char longname[ATUN_DNS_NAME_MAX + 2];
  memset(longname, 'a', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = '\0';
  cr_assert_eq(resolve(dns, &q, "", &g), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(resolve(dns, &q, longname, &g), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(resolve(dns, &q, NULL, &g), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(resolve(NULL, &q, "a.test", &g), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_dns_resolve(dns, &q, "a.test", NULL, &g), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(resolve(dns, NULL, "a.test", &g), ATUN_ERR_INVALID_ARGUMENT);
  run_for(0.02);
  cr_assert_eq(g.calls, 0);
  cr_assert_eq(S.queries, 0);
  atun_dns_del(dns);
  atun_dns_del(NULL);
}

Test(dns, allocation_failures) {
  atun_dns_settings s = test_settings();
  /* The resolver: each allocation in turn fails, nothing leaks. */
  for (long n = 0; n < 2; ++n) {
    atun_failmem fm;
    atun_failmem_init(&fm, n);
    atun_dns *dns = NULL;
    cr_assert_eq(atun_dns_new(&dns, loop, &s, &fm.mem), ATUN_ERR_NOMEM);
    cr_assert_eq(fm.live, 0);
  }
  atun_failmem fm;
  atun_failmem_init(&fm, 2);
  atun_dns *dns = NULL;
  cr_assert_eq(atun_dns_new(&dns, loop, &s, &fm.mem), 0);
  /* The ticket. */
  atun_dns_query q;
  atun_dns_query_init(&q);
  got g = {0};
  cr_assert_eq(resolve(dns, &q, "a.test", &g), ATUN_ERR_NOMEM);
  cr_assert(!atun_dns_query_is_active(&q));
  atun_failmem_arm(&fm, -1, 0);
  cr_assert_eq(resolve(dns, &q, "a.test", &g), 0);
  cr_assert(run_until_calls(&g, 1, 5));
  cr_assert_eq(g.calls, 1);
  cr_assert_eq(g.r.status, ATUN_CONNECT_OK);
  atun_dns_del(dns);
  cr_assert_eq(fm.live, 0);
}

Test(dns, reason_names) {
  cr_assert_str_eq(atun_dns_reason_name(ATUN_DNS_OK), "ok");
  cr_assert_str_eq(atun_dns_reason_name(ATUN_DNS_NXDOMAIN), "nxdomain");
  cr_assert_str_eq(atun_dns_reason_name(ATUN_DNS_NODATA), "no_data");
  cr_assert_str_eq(atun_dns_reason_name(ATUN_DNS_TIMEOUT), "timeout");
  cr_assert_str_eq(atun_dns_reason_name(ATUN_DNS_SERVER), "server_failure");
  cr_assert_str_eq(atun_dns_reason_name(ATUN_DNS_BAD_NAME), "bad_name");
  cr_assert_str_eq(atun_dns_reason_name(ATUN_DNS_NOMEM), "nomem");
  cr_assert_str_eq(atun_dns_reason_name(-1), "unknown");
}
