/*
 * Small socket helpers shared by the load generators bench_pingpong and
 * bench_connect: address parsing, a connect bounded in time, a SOCKS5
 * CONNECT (no authentication, RFC 1928), reads and writes bounded in time,
 * and percentile output.  Header-only (static inline) because every
 * bench/bench_<x>.c is built as its own program.
 *
 * Every blocking step waits at most |timeout_ms|; a helper returns 0 on
 * success and -1 on failure or timeout, with a reason in |bench_net_err|.
 */
#ifndef ATUN_BENCH_NET_H
#define ATUN_BENCH_NET_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The last failure, for the one error line a program prints before exiting. */
static char bench_net_err[160];

static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int bench_fail(const char *what, int err) {
  snprintf(bench_net_err, sizeof(bench_net_err), "%s: %s", what,
           err != 0 ? strerror(err) : "timed out");
  return -1;
}

/* Parses "a.b.c.d:port" into |sa|.  Loopback-only tools: IPv4 literals. */
static inline int bench_parse_addr(const char *s, struct sockaddr_in *sa) {
  char host[64];
  const char *colon = strrchr(s, ':');
  if (colon == NULL || (size_t)(colon - s) >= sizeof(host)) return -1;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  char *end;
  unsigned long port = strtoul(colon + 1, &end, 10);
  if (*end != '\0' || port == 0 || port > 65535) return -1;
  memset(sa, 0, sizeof(*sa));
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static inline int bench_wait(int fd, short events, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = events};
  for (;;) {
    int n = poll(&p, 1, timeout_ms);
    if (n > 0) return 0;
    if (n == 0) return bench_fail("poll", 0);
    if (errno != EINTR) return bench_fail("poll", errno);
  }
}

static inline int bench_write_all(int fd, const void *buf, size_t len, int timeout_ms) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n > 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return bench_fail("write", errno);
    if (bench_wait(fd, POLLOUT, timeout_ms) != 0) return -1;
  }
  return 0;
}

static inline int bench_read_all(int fd, void *buf, size_t len, int timeout_ms) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n > 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (n == 0) return bench_fail("read: connection closed by peer", ECONNRESET);
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return bench_fail("read", errno);
    if (bench_wait(fd, POLLIN, timeout_ms) != 0) return -1;
  }
  return 0;
}

/* A non-blocking TCP socket connected to |sa| with TCP_NODELAY set, or -1. */
static inline int bench_connect_tcp(const struct sockaddr_in *sa, int timeout_ms) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return bench_fail("socket", errno);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0 && errno != EINPROGRESS) {
    bench_fail("connect", errno);
    close(fd);
    return -1;
  }
  int err = 0;
  socklen_t el = sizeof(err);
  if (bench_wait(fd, POLLOUT, timeout_ms) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
    if (err != 0) bench_fail("connect", err);
    close(fd);
    return -1;
  }
  return fd;
}

/* The SOCKS5 exchange on a connected |fd|: no authentication, then CONNECT
 * to the IPv4 |target|.  Two round trips, as a strict client does them. */
static inline int bench_socks5(int fd, const struct sockaddr_in *target, int timeout_ms) {
  static const uint8_t hello[3] = {5, 1, 0};
  uint8_t rep[4 + 16 + 2];
  if (bench_write_all(fd, hello, sizeof(hello), timeout_ms) != 0 ||
      bench_read_all(fd, rep, 2, timeout_ms) != 0)
    return -1;
  if (rep[0] != 5 || rep[1] != 0) return bench_fail("socks5: no acceptable method", EPROTO);
  uint8_t req[10] = {5, 1, 0, 1};
  memcpy(req + 4, &target->sin_addr, 4);
  memcpy(req + 8, &target->sin_port, 2);
  if (bench_write_all(fd, req, sizeof(req), timeout_ms) != 0 ||
      bench_read_all(fd, rep, 4, timeout_ms) != 0)
    return -1;
  if (rep[0] != 5 || rep[1] != 0) {
    snprintf(bench_net_err, sizeof(bench_net_err), "socks5: CONNECT refused, reply %u", rep[1]);
    return -1;
  }
  size_t rest = rep[3] == 1 ? 4 + 2 : rep[3] == 4 ? 16 + 2 : 0;
  if (rest == 0) return bench_fail("socks5: unexpected bound address type", EPROTO);
  return bench_read_all(fd, rep + 4, rest, timeout_ms);
}

/* Where a client goes: straight to |endpoint|, or through the SOCKS5 server
 * at |endpoint| to |target| when |socks| is set. */
typedef struct bench_dest {
  struct sockaddr_in endpoint;
  struct sockaddr_in target;
  int socks;
} bench_dest;

static inline int bench_open(const bench_dest *d, int timeout_ms) {
  int fd = bench_connect_tcp(&d->endpoint, timeout_ms);
  if (fd >= 0 && d->socks && bench_socks5(fd, &d->target, timeout_ms) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Raises the open-file limit to at least |want|, up to the hard limit. */
static inline void bench_raise_nofile(rlim_t want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
  rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
}

static inline int bench_cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted |v| of |n| > 0 values. */
static inline uint64_t bench_pct(const uint64_t *v, size_t n, double q) {
  size_t i = (size_t)(q * (double)n + 0.999999);
  if (i == 0) i = 1;
  return v[(i > n ? n : i) - 1];
}

/* Sorts |v| and prints one "NAME count=... p50_us=..." line that
 * bench/run.sh parses. */
static inline void bench_print_pcts(const char *name, uint64_t *v, size_t n, size_t fails) {
  if (n == 0) {
    printf("%s count=0 fails=%zu\n", name, fails);
    return;
  }
  qsort(v, n, sizeof(*v), bench_cmp_u64);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (double)v[i];
  printf("%s count=%zu fails=%zu p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f\n",
         name, n, fails, bench_pct(v, n, 0.50) / 1e3, bench_pct(v, n, 0.90) / 1e3,
         bench_pct(v, n, 0.99) / 1e3, v[n - 1] / 1e3, sum / (double)n / 1e3);
}

#endif
