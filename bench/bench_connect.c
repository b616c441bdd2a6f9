/*
 * Connection load generator for bench/run.sh, against an echo server
 * (bench_pingpong serve) behind the endpoint.
 *
 *   bench_connect --connect IP:PORT [--socks5 --target IP:PORT]
 *                 [--count N] [--timeout-ms MS]
 *     Connect -> first byte: |count| times, one after the other, open a new
 *     connection (with the SOCKS5 exchange when --socks5), send one byte and
 *     wait for its echo; the clock runs from before socket() to the echo.
 *     Prints one line:
 *       connect count=N fails=F p50_us=.. p90_us=.. p99_us=.. max_us=.. mean_us=..
 *     Exits 1 when more than 1% of the attempts failed.
 *
 *   bench_connect --connect IP:PORT [--socks5 --target IP:PORT] --hold N
 *                 [--hold-max S] [--timeout-ms MS]
 *     Opens N connections and proves each with a one-byte echo, prints
 *     "ready N", then keeps them open and idle until SIGTERM/SIGINT or S
 *     seconds (default 300), so that the memory of idle connections can be
 *     read from outside.
 *
 * Exit codes: 0 done, 1 failures (see above) or a held connection failed,
 * 2 bad usage.
 */
#include <signal.h>

#include "bench_net.h"

#define COUNT_MAX 1000000u
#define HOLD_MAX 200000u

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

typedef struct options {
  const char *addr;
  const char *target;
  int socks;
  unsigned long count, hold, hold_max_s, timeout_ms;
} options;

static int usage(int rc) {
  fputs("usage: bench_connect --connect IP:PORT [--socks5 --target IP:PORT]\n"
        "                     [--count N | --hold N [--hold-max S]] [--timeout-ms MS]\n"
        "Exit codes: 0 done, 1 more than 1% failed (or a held connection failed),\n"
        "2 bad usage.\n",
        rc == 0 ? stdout : stderr);
  return rc;
}

static int number(const char *s, unsigned long lo, unsigned long hi, unsigned long *out) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || end == s || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int parse_opt(options *o, const char *k, const char *v) {
  if (strcmp(k, "--connect") == 0) o->addr = v;
  else if (strcmp(k, "--target") == 0) o->target = v;
  else if (strcmp(k, "--count") == 0) return number(v, 1, COUNT_MAX, &o->count);
  else if (strcmp(k, "--hold") == 0) return number(v, 1, HOLD_MAX, &o->hold);
  else if (strcmp(k, "--hold-max") == 0) return number(v, 1, 86400, &o->hold_max_s);
  else if (strcmp(k, "--timeout-ms") == 0) return number(v, 1, 600000, &o->timeout_ms);
  else return -1;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  *o = (options){.count = 1000, .hold_max_s = 300, .timeout_ms = 2000};
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--socks5") == 0) {
      o->socks = 1;
      continue;
    }
    if (i + 1 >= argc || parse_opt(o, argv[i], argv[i + 1]) != 0) return -1;
    ++i;
  }
  if (o->addr == NULL || (o->socks && o->target == NULL)) return -1;
  return 0;
}

/* A new connection proven by a one-byte echo, or -1. */
static int open_proven(const bench_dest *d, int timeout_ms) {
  int fd = bench_open(d, timeout_ms);
  if (fd < 0) return -1;
  uint8_t b = 0x5a, r = 0;
  int rv = bench_write_all(fd, &b, 1, timeout_ms);
  if (rv == 0) rv = bench_read_all(fd, &r, 1, timeout_ms);
  if (rv == 0 && r != b) rv = bench_fail("echo differs", EPROTO);
  if (rv != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int run_connects(const bench_dest *d, const options *o) {
  uint64_t *lat = calloc(o->count, sizeof(*lat));
  if (lat == NULL) return 1;
  size_t ok = 0, fails = 0;
  for (unsigned long i = 0; i < o->count && !g_stop; ++i) {
    uint64_t t0 = bench_now_ns();
    int fd = open_proven(d, (int)o->timeout_ms);
    uint64_t t1 = bench_now_ns();
    if (fd < 0) {
      ++fails;
      continue;
    }
    lat[ok++] = t1 - t0;
    close(fd);
  }
  if (fails != 0) fprintf(stderr, "connect %s: %zu failed, last: %s\n", o->addr, fails, bench_net_err);
  bench_print_pcts("connect", lat, ok, fails);
  free(lat);
  return fails * 100 > o->count || ok == 0;
}

/* Sleeps until a signal or |max_s| seconds; 1 if a held connection broke
 * (the peer closed it or it failed), so idle figures are never taken from
 * connections that are gone. */
static int hold_idle(const int *fds, unsigned long n, unsigned long max_s) {
  uint64_t deadline = bench_now_ns() + (uint64_t)max_s * 1000000000u;
  while (!g_stop && bench_now_ns() < deadline) {
    usleep(200000);
    for (unsigned long i = 0; i < n; ++i) {
      struct pollfd p = {.fd = fds[i], .events = POLLIN};
      if (poll(&p, 1, 0) > 0) {
        fprintf(stderr, "hold: connection %lu closed or failed while idle\n", i);
        return 1;
      }
    }
  }
  return 0;
}

static int run_hold(const bench_dest *d, const options *o) {
  int *fds = calloc(o->hold, sizeof(*fds));
  if (fds == NULL) return 1;
  bench_raise_nofile(o->hold + 64);
  unsigned long n = 0;
  int rc = 0;
  for (; n < o->hold && !g_stop; ++n) {
    if ((fds[n] = open_proven(d, (int)o->timeout_ms)) < 0) {
      fprintf(stderr, "hold: connection %lu: %s\n", n, bench_net_err);
      rc = 1;
      break;
    }
  }
  if (rc == 0) {
    printf("ready %lu\n", n);
    fflush(stdout);
    rc = hold_idle(fds, n, o->hold_max_s);
  }
  for (unsigned long i = 0; i < n; ++i) close(fds[i]);
  free(fds);
  return rc;
}

int main(int argc, char **argv) {
  options o;
  if (argc == 2 && strcmp(argv[1], "--help") == 0) return usage(0);
  if (argc == 2 && strcmp(argv[1], "--version") == 0) return puts("bench_connect (atun)"), 0;
  if (parse_args(argc, argv, &o) != 0) return usage(2);
  bench_dest d = {.socks = o.socks};
  if (bench_parse_addr(o.addr, &d.endpoint) != 0 ||
      (o.socks && bench_parse_addr(o.target, &d.target) != 0))
    return usage(2);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  return o.hold != 0 ? run_hold(&d, &o) : run_connects(&d, &o);
}
