/*
 * Round-trip load generator and echo server for bench/run.sh.
 *
 *   bench_pingpong serve --listen IP:PORT [--max-conns N] [--duration S]
 *     An epoll echo server (TCP_NODELAY on every connection).  It holds at
 *     most N connections (refusing more), and exits after S seconds or on
 *     SIGTERM/SIGINT, so a forgotten server never lingers.
 *
 *   bench_pingpong client --connect IP:PORT [--socks5 --target IP:PORT]
 *                         [--count N] [--warmup N] [--size BYTES] [--timeout-ms MS]
 *     One connection with TCP_NODELAY; |warmup| untimed round trips, then
 *     |count| timed ones of |size| bytes, one message in flight.  Every echo
 *     is compared with what was sent.  Prints one line:
 *       pingpong count=N fails=0 p50_us=.. p90_us=.. p99_us=.. max_us=.. mean_us=..
 *     With --socks5 the endpoint is a SOCKS5 server and the connection goes
 *     to --target through it.
 *
 * Exit codes: 0 done, 1 a network step failed or timed out, 2 bad usage.
 */
#define _GNU_SOURCE /* accept4 */
#include <signal.h>
#include <sys/epoll.h>

#include "bench_net.h"

#define COUNT_MAX 10000000u
#define SIZE_MAX_BYTES 65536u
#define CONNS_MAX_LIMIT 1000000u
#define EVENTS_PER_WAIT 256
#define IO_CHUNK 65536

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

typedef struct options {
  const char *mode;
  const char *addr;
  const char *target;
  int socks;
  unsigned long count, warmup, size, timeout_ms, max_conns, duration_s;
} options;

static int usage(int rc) {
  fputs("usage: bench_pingpong serve --listen IP:PORT [--max-conns N] [--duration S]\n"
        "       bench_pingpong client --connect IP:PORT [--socks5 --target IP:PORT]\n"
        "                             [--count N] [--warmup N] [--size BYTES] [--timeout-ms MS]\n"
        "Exit codes: 0 done, 1 network failure or timeout, 2 bad usage.\n",
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
  if (strcmp(k, "--listen") == 0 || strcmp(k, "--connect") == 0) o->addr = v;
  else if (strcmp(k, "--target") == 0) o->target = v;
  else if (strcmp(k, "--count") == 0) return number(v, 1, COUNT_MAX, &o->count);
  else if (strcmp(k, "--warmup") == 0) return number(v, 0, COUNT_MAX, &o->warmup);
  else if (strcmp(k, "--size") == 0) return number(v, 1, SIZE_MAX_BYTES, &o->size);
  else if (strcmp(k, "--timeout-ms") == 0) return number(v, 1, 600000, &o->timeout_ms);
  else if (strcmp(k, "--max-conns") == 0) return number(v, 1, CONNS_MAX_LIMIT, &o->max_conns);
  else if (strcmp(k, "--duration") == 0) return number(v, 1, 86400, &o->duration_s);
  else return -1;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  *o = (options){.count = 10000, .warmup = 200, .size = 64, .timeout_ms = 2000,
                 .max_conns = 8192, .duration_s = 3600};
  if (argc < 2) return -1;
  o->mode = argv[1];
  for (int i = 2; i < argc; ++i) {
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

/* ---- echo server ------------------------------------------------------------ */

/* A connection's unsent echo, kept only while the peer is not reading. */
typedef struct conn {
  int fd;
  uint8_t *pending;
  size_t off, len;
} conn;

typedef struct server {
  int ep, lfd;
  unsigned long nconns, max_conns;
  conn listener;
} server;

static void conn_close(server *s, conn *c) {
  epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->pending);
  free(c);
  --s->nconns;
}

static int conn_watch(server *s, conn *c, uint32_t events, int op) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  return epoll_ctl(s->ep, op, c->fd, &ev);
}

/* Sends what is pending; 1 when drained, 0 when the socket is full, -1 on error. */
static int conn_flush(conn *c) {
  while (c->off < c->len) {
    ssize_t n = write(c->fd, c->pending + c->off, c->len - c->off);
    if (n > 0) c->off += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else return n < 0 && errno == EAGAIN ? 0 : -1;
  }
  c->off = c->len = 0;
  return 1;
}

/* Echoes what is readable.  When the peer stops reading, the rest waits in
 * |pending| and the connection watches for writability instead, so one
 * connection buffers at most IO_CHUNK bytes. */
static void conn_on_read(server *s, conn *c) {
  uint8_t buf[IO_CHUNK];
  for (int round = 0; round < 16; ++round) {
    ssize_t n = read(c->fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      conn_close(s, c);
      return;
    }
    if (c->pending == NULL && (c->pending = malloc(IO_CHUNK)) == NULL) {
      conn_close(s, c);
      return;
    }
    memcpy(c->pending, buf, (size_t)n);
    c->off = 0;
    c->len = (size_t)n;
    int rv = conn_flush(c);
    if (rv < 0 || (rv == 0 && conn_watch(s, c, EPOLLOUT, EPOLL_CTL_MOD) != 0)) {
      conn_close(s, c);
      return;
    }
    if (rv == 0) return;
  }
}

static void conn_on_write(server *s, conn *c) {
  int rv = conn_flush(c);
  if (rv < 0 || (rv == 1 && conn_watch(s, c, EPOLLIN, EPOLL_CTL_MOD) != 0)) conn_close(s, c);
}

static void server_accept(server *s) {
  for (int round = 0; round < 64; ++round) {
    int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    conn *c = s->nconns < s->max_conns ? calloc(1, sizeof(*c)) : NULL;
    if (c == NULL) {
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    if (conn_watch(s, c, EPOLLIN, EPOLL_CTL_ADD) != 0) {
      close(fd);
      free(c);
      continue;
    }
    ++s->nconns;
  }
}

static int server_open(server *s, const options *o) {
  struct sockaddr_in sa;
  if (bench_parse_addr(o->addr, &sa) != 0) return -2;
  bench_raise_nofile(o->max_conns + 64);
  s->max_conns = o->max_conns;
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (s->lfd < 0 || setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(s->lfd, 4096) != 0)
    return bench_fail(o->addr, errno);
  s->ep = epoll_create1(EPOLL_CLOEXEC);
  s->listener.fd = s->lfd;
  if (s->ep < 0 || conn_watch(s, &s->listener, EPOLLIN, EPOLL_CTL_ADD) != 0)
    return bench_fail("epoll", errno);
  return 0;
}

static int serve(const options *o) {
  server s = {0};
  int rv = server_open(&s, o);
  if (rv != 0) return rv == -2 ? usage(2) : (fprintf(stderr, "serve: %s\n", bench_net_err), 1);
  printf("listening %s\n", o->addr);
  fflush(stdout);
  uint64_t deadline = bench_now_ns() + (uint64_t)o->duration_s * 1000000000u;
  struct epoll_event evs[EVENTS_PER_WAIT];
  while (!g_stop && bench_now_ns() < deadline) {
    int n = epoll_wait(s.ep, evs, EVENTS_PER_WAIT, 500);
    for (int i = 0; i < n; ++i) {
      conn *c = evs[i].data.ptr;
      if (c == &s.listener) server_accept(&s);
      else if (evs[i].events & EPOLLOUT) conn_on_write(&s, c);
      else conn_on_read(&s, c);
    }
  }
  return 0;
}

/* ---- client ------------------------------------------------------------------ */

static int client_dest(const options *o, bench_dest *d) {
  memset(d, 0, sizeof(*d));
  d->socks = o->socks;
  if (bench_parse_addr(o->addr, &d->endpoint) != 0) return -1;
  return o->socks ? bench_parse_addr(o->target, &d->target) : 0;
}

static int round_trip(int fd, uint8_t *out, uint8_t *in, size_t size, unsigned long seq,
                      int timeout_ms) {
  memset(out, (int)(seq & 0xff), size);
  out[0] = (uint8_t)(seq >> 8);
  if (bench_write_all(fd, out, size, timeout_ms) != 0 ||
      bench_read_all(fd, in, size, timeout_ms) != 0)
    return -1;
  if (memcmp(out, in, size) != 0) {
    snprintf(bench_net_err, sizeof(bench_net_err), "echo differs at round trip %lu", seq);
    return -1;
  }
  return 0;
}

static int client_loop(int fd, const options *o, uint64_t *rtt) {
  uint8_t out[SIZE_MAX_BYTES], in[SIZE_MAX_BYTES];
  int tmo = (int)o->timeout_ms;
  for (unsigned long i = 0; i < o->warmup; ++i)
    if (round_trip(fd, out, in, o->size, i, tmo) != 0) return -1;
  for (unsigned long i = 0; i < o->count; ++i) {
    uint64_t t0 = bench_now_ns();
    if (round_trip(fd, out, in, o->size, i, tmo) != 0) return -1;
    rtt[i] = bench_now_ns() - t0;
  }
  return 0;
}

static int client(const options *o) {
  bench_dest d;
  if (client_dest(o, &d) != 0) return usage(2);
  uint64_t *rtt = calloc(o->count, sizeof(*rtt));
  if (rtt == NULL) return 1;
  int fd = bench_open(&d, (int)o->timeout_ms);
  int rc = fd < 0 || client_loop(fd, o, rtt) != 0;
  if (rc != 0) fprintf(stderr, "pingpong %s: %s\n", o->addr, bench_net_err);
  else bench_print_pcts("pingpong", rtt, o->count, 0);
  if (fd >= 0) close(fd);
  free(rtt);
  return rc;
}

int main(int argc, char **argv) {
  options o;
  if (argc == 2 && strcmp(argv[1], "--help") == 0) return usage(0);
  if (argc == 2 && strcmp(argv[1], "--version") == 0) return puts("bench_pingpong (atun)"), 0;
  if (parse_args(argc, argv, &o) != 0) return usage(2);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  if (strcmp(o.mode, "serve") == 0) return serve(&o);
  if (strcmp(o.mode, "client") == 0) return client(&o);
  return usage(2);
}
