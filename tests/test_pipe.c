/*
 * io/pipe against a fake stream: a send buffer of |send_cap| bytes the test
 * acknowledges when it likes, and a peer that delivers at most |window|
 * bytes beyond what the pipe consumed (QUIC flow control), or ignores the
 * window when a test wants a misbehaving peer.  The TCP side is a real
 * loopback connection whose far end ("app") the test reads and writes.
 *
 * Bytes carry their position (pat_a: app -> stream, pat_b: stream -> app),
 * so every byte is checked in place: loss, duplication and reordering all
 * show, not just a different total.  Every wait is bounded.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "ca.h"
#include "codec.h"
#include "pipe.h"
#include "quic_ev.h"
#include "support.h"
#include "tcp.h"

#define KIB ((size_t)1024)
#define MIB ((size_t)1 << 20)

static uint8_t pat_a(uint64_t i) { return (uint8_t)((i * 2654435761u) >> 13); }
static uint8_t pat_b(uint64_t i) { return (uint8_t)((i * 40503u + (i >> 9)) >> 3); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the fake stream ------------------------------------------------------ */

typedef struct fake {
  atun_pipe *pipe;
  /* pipe -> stream (what the pipe writes) */
  size_t send_cap;
  size_t unacked;
  uint64_t received;
  uint64_t bad_a;    /* bytes not matching pat_a at their position */
  uint64_t overrun;  /* writes longer than writable() said */
  int fin;
  int quirky;        /* every 7th write takes half of what fits */
  uint64_t writes;
  ssize_t writable_err;
  ssize_t write_err;
  int wouldblock_writes; /* this many writes say WOULDBLOCK despite room */
  int consume_err;
  /* stream -> pipe (the peer) */
  uint64_t total_b;  /* bytes the peer sends */
  int send_fin_b;    /* and a FIN after them */
  size_t window;
  int ignore_window;
  uint64_t delivered;
  uint64_t consumed;
  uint64_t over_consumed;
  size_t outstanding_peak;
  int peer_fin_sent;
  int auto_ack;
  int peer_paused;
  /* other calls */
  int shutdowns;
  uint64_t shutdown_code;
  int flushes;
  int closed;               /* on_stream_closed was called */
  int calls_after_closed;   /* writable/write/shutdown after it */
  int calls;                /* every op */
  void (*flush_hook)(struct fake *f);
} fake;

static ssize_t f_writable(void *s) {
  fake *f = s;
  ++f->calls;
  f->calls_after_closed += f->closed;
  if (f->writable_err != 0) {
    return f->writable_err;
  }
  return (ssize_t)(f->send_cap - f->unacked);
}

static ssize_t f_write(void *s, const uint8_t *data, size_t len, int fin) {
  fake *f = s;
  ++f->calls;
  f->calls_after_closed += f->closed;
  if (f->write_err != 0) {
    return f->write_err;
  }
  cr_assert(!f->fin, "write after FIN");
  if (f->wouldblock_writes > 0 && len > 0) {
    --f->wouldblock_writes;
    return ATUN_ERR_WOULDBLOCK;
  }
  size_t room = f->send_cap - f->unacked;
  if (len > room) {
    ++f->overrun;
  }
  if (len > 0 && room == 0) {
    return ATUN_ERR_WOULDBLOCK;
  }
  size_t n = len < room ? len : room;
  if (f->quirky && ++f->writes % 7 == 0 && n > 1) {
    n /= 2;
  }
  for (size_t i = 0; i < n; ++i) {
    f->bad_a += data[i] != pat_a(f->received + i);
  }
  f->received += n;
  f->unacked += n;
  if (fin && n == len) {
    f->fin = 1;
  }
  return (ssize_t)n;
}

static int f_consume(void *s, size_t n) {
  fake *f = s;
  ++f->calls;
  if (f->consume_err != 0) {
    return f->consume_err;
  }
  if (f->consumed + n > f->delivered) {
    ++f->over_consumed;
  }
  f->consumed += n;
  return 0;
}

static int f_shutdown(void *s, uint64_t code) {
  fake *f = s;
  ++f->calls;
  f->calls_after_closed += f->closed;
  ++f->shutdowns;
  f->shutdown_code = code;
  return 0;
}

static void f_flush(void *s) {
  fake *f = s;
  ++f->calls;
  ++f->flushes;
  if (f->flush_hook != NULL) {
    f->flush_hook(f);
  }
}

static const atun_pipe_stream_ops fake_ops = {f_writable, f_write, f_consume, f_shutdown,
                                              f_flush};

/* The peer delivers what the window allows, in pieces of up to 16 KiB. */
static void peer_deliver(fake *f) {
  static uint8_t buf[16384];
  while (!f->peer_fin_sent && !f->peer_paused && f->pipe != NULL &&
         atun_pipe_get_end(f->pipe) == ATUN_PIPE_END_NONE) {
    size_t outstanding = (size_t)(f->delivered - f->consumed);
    size_t room = f->ignore_window ? sizeof(buf)
                  : outstanding < f->window ? f->window - outstanding : 0;
    uint64_t left = f->total_b - f->delivered;
    size_t n = room < sizeof(buf) ? room : sizeof(buf);
    n = left < n ? (size_t)left : n;
    int fin = f->send_fin_b && f->delivered + n == f->total_b;
    if (n == 0 && !fin) {
      return;
    }
    for (size_t i = 0; i < n; ++i) {
      buf[i] = pat_b(f->delivered + i);
    }
    f->delivered += n;
    f->peer_fin_sent = fin;
    atun_pipe_on_stream_data(f->pipe, buf, n, fin);
    outstanding = (size_t)(f->delivered - f->consumed);
    if (outstanding > f->outstanding_peak) {
      f->outstanding_peak = outstanding;
    }
  }
}

/* Acknowledges everything.  Like an owner whose other streams' acks free
 * connection room, it also nudges a waiting pipe with nothing unacked. */
static void peer_ack(fake *f) {
  if (f->auto_ack && f->pipe != NULL &&
      (f->unacked > 0 || atun_pipe_waits_for_room(f->pipe))) {
    f->unacked = 0;
    atun_pipe_on_stream_writable(f->pipe);
  }
}

/* ---- the app end of the TCP connection ---------------------------------- */

typedef struct app {
  int fd;
  ev_io rio, wio;
  uint8_t (*tx_pat)(uint64_t); /* what it sends, by position */
  uint8_t (*rx_pat)(uint64_t); /* what it expects */
  uint64_t total_a; /* bytes to send */
  uint64_t sent;
  int half_close;   /* shutdown(SHUT_WR) after total_a */
  int shut;
  uint64_t got;
  uint64_t bad_b;
  int eof;
  int err;          /* read error (ECONNRESET) */
  int werr;         /* send error */
  size_t read_chunk;
} app;

/* ---- one world per test ---------------------------------------------------- */

static struct ev_loop *loop;
static ev_check checker;
static ev_idle spinner;
static fake F;
static app A;
static atun_pipe P;
static atun_failmem FM;
static int closes;
static int close_end;
static size_t buffered_max_seen;

static void check_cb(struct ev_loop *l, ev_check *w, int revents) {
  (void)l;
  (void)w;
  (void)revents;
  if (F.pipe != NULL && atun_pipe_get_end(F.pipe) == ATUN_PIPE_END_NONE) {
    atun_pipe_stats st;
    atun_pipe_get_stats(F.pipe, &st);
    if (st.buffered > buffered_max_seen) {
      buffered_max_seen = st.buffered;
    }
  }
  peer_ack(&F);
  peer_deliver(&F);
}

static void idle_cb(struct ev_loop *l, ev_idle *w, int revents) {
  (void)l;
  (void)w;
  (void)revents;
}

static void app_read_cb(struct ev_loop *l, ev_io *w, int revents) {
  (void)revents;
  app *a = w->data;
  static uint8_t buf[65536];
  size_t want = a->read_chunk < sizeof(buf) ? a->read_chunk : sizeof(buf);
  ssize_t n = read(a->fd, buf, want);
  if (n > 0) {
    for (ssize_t i = 0; i < n; ++i) {
      a->bad_b += buf[i] != a->rx_pat(a->got + (uint64_t)i);
    }
    a->got += (uint64_t)n;
  } else if (n == 0) {
    a->eof = 1;
    ev_io_stop(l, w);
  } else if (errno != EAGAIN) {
    a->err = errno;
    ev_io_stop(l, w);
  }
}

static void app_write_cb(struct ev_loop *l, ev_io *w, int revents) {
  (void)revents;
  app *a = w->data;
  static uint8_t buf[65536];
  if (a->sent < a->total_a) {
    uint64_t left = a->total_a - a->sent;
    size_t n = left < sizeof(buf) ? (size_t)left : sizeof(buf);
    for (size_t i = 0; i < n; ++i) {
      buf[i] = a->tx_pat(a->sent + i);
    }
    ssize_t k = send(a->fd, buf, n, MSG_NOSIGNAL);
    if (k > 0) {
      a->sent += (uint64_t)k;
    } else if (k < 0 && errno != EAGAIN) {
      a->werr = errno;
      ev_io_stop(l, w);
      return;
    }
  }
  if (a->sent == a->total_a) {
    if (a->half_close && !a->shut) {
      cr_assert_eq(shutdown(a->fd, SHUT_WR), 0);
      a->shut = 1;
    }
    ev_io_stop(l, w);
  }
}

static void app_reading(app *a, int on) {
  if (on) {
    ev_io_start(loop, &a->rio);
  } else {
    ev_io_stop(loop, &a->rio);
  }
}

static void app_set_reading(int on) { app_reading(&A, on); }

static void app_start_writing(void) { ev_io_start(loop, &A.wio); }

static void on_close(atun_pipe *p, int end, void *ud) {
  (void)ud;
  cr_assert_eq(p, &P);
  ++closes;
  close_end = end;
}

/* A loopback connection: |*pipe_fd| for the pipe, |a|->fd for the app.
 * |small| shrinks the kernel buffers so backpressure shows quickly. */
static void tcp_pair_for(app *a, int *pipe_fd, int small) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  cr_assert_eq(listen(lfd, 1), 0);
  socklen_t len = sizeof(sin);
  cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (small) {
    int v = 4096;
    cr_assert_eq(setsockopt(c, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v)), 0);
  }
  cr_assert_eq(connect(c, (struct sockaddr *)&sin, sizeof(sin)), 0);
  int s = accept(lfd, NULL, NULL);
  cr_assert_geq(s, 0);
  close(lfd);
  if (small) {
    int v = 4096;
    cr_assert_eq(setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v)), 0);
  }
  cr_assert_eq(fcntl(s, F_SETFL, O_NONBLOCK), 0);
  cr_assert_eq(fcntl(c, F_SETFL, O_NONBLOCK), 0);
  cr_assert_eq(atun_tcp_set_nodelay(s), 0);
  *pipe_fd = s;
  a->fd = c;
  ev_io_init(&a->rio, app_read_cb, c, EV_READ);
  a->rio.data = a;
  ev_io_init(&a->wio, app_write_cb, c, EV_WRITE);
  a->wio.data = a;
}

static void tcp_pair(int *pipe_fd, int small) { tcp_pair_for(&A, pipe_fd, small); }

static void app_init(app *a) {
  memset(a, 0, sizeof(*a));
  a->fd = -1;
  a->read_chunk = 65536;
  a->tx_pat = pat_a;
  a->rx_pat = pat_b;
}

static void app_free(app *a) {
  if (a->fd >= 0) {
    ev_io_stop(loop, &a->rio);
    ev_io_stop(loop, &a->wio);
    close(a->fd);
    a->fd = -1;
  }
}

static void setup(void) {
  loop = ev_loop_new(EVFLAG_AUTO);
  memset(&F, 0, sizeof(F));
  app_init(&A);
  memset(&P, 0, sizeof(P));
  closes = 0;
  close_end = -1;
  buffered_max_seen = 0;
  atun_failmem_init(&FM, -1);
  F.send_cap = 256 * KIB;
  F.window = 256 * KIB;
  F.auto_ack = 1;
  ev_check_init(&checker, check_cb);
  ev_check_start(loop, &checker);
  ev_idle_init(&spinner, idle_cb);
  ev_idle_start(loop, &spinner);
}

static void teardown(void) {
  atun_pipe_abort(&P);
  app_free(&A);
  ev_check_stop(loop, &checker);
  ev_idle_stop(loop, &spinner);
  ev_loop_destroy(loop);
}

TestSuite(pipe, .init = setup, .fini = teardown, .timeout = 120);

static void pipe_start(const atun_pipe_settings *s, const uint8_t *early, size_t early_len,
                       int small) {
  int fd;
  tcp_pair(&fd, small);
  atun_pipe_config c = {.loop = loop, .fd = fd, .ops = &fake_ops, .stream = &F,
                        .on_close = on_close, .early = early, .early_len = early_len,
                        .settings = s, .mem = &FM.mem};
  cr_assert_eq(atun_pipe_start(&P, &c), 0);
  F.pipe = &P;
}

typedef int (*pred_fn)(void);

static int run_until(pred_fn pred, double max_s) {
  double end = now_s() + max_s;
  while (!pred() && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  return pred();
}

static void run_for(double s) {
  double end = now_s() + s;
  while (now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
}

static int closed(void) { return closes > 0; }
static int app_done_of(const app *a) { return a->eof || a->err != 0; }
static int app_done(void) { return app_done_of(&A); }
static int all_done(void) { return closes > 0 && app_done(); }

/* ---- byte-exact transfer ------------------------------------------------- */

static void transfer(uint64_t each_way, int quirky) {
  F.total_b = each_way;
  F.send_fin_b = 1;
  F.quirky = quirky;
  A.total_a = each_way;
  A.half_close = 1;
  pipe_start(NULL, NULL, 0, 0);
  app_set_reading(1);
  app_start_writing();
  double t0 = now_s();
  cr_assert(run_until(all_done, 60), "stuck: app got %llu, stream got %llu",
            (unsigned long long)A.got, (unsigned long long)F.received);
  double took = now_s() - t0;
  cr_assert_eq(close_end, ATUN_PIPE_END_DONE);
  cr_assert_eq(A.err, 0);
  cr_assert_eq(A.got, each_way);
  cr_assert_eq(A.bad_b, 0);
  cr_assert_eq(F.received, each_way);
  cr_assert_eq(F.bad_a, 0);
  cr_assert(F.fin);
  cr_assert_eq(F.overrun, 0, "the pipe wrote beyond writable()");
  cr_assert_eq(F.consumed, F.delivered);
  cr_assert_eq(F.over_consumed, 0);
  cr_assert_leq(F.outstanding_peak, F.window);
  cr_assert_eq(F.shutdowns, 0);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.bytes_tcp_to_stream, each_way);
  cr_assert_eq(st.bytes_stream_to_tcp, each_way);
  cr_assert_leq(st.buffered_peak, F.window);
  cr_assert_eq(st.buffered, 0);
  cr_assert_eq(FM.live, 0, "pipe memory left: %ld blocks", FM.live);
  cr_log_info("%llu bytes each way in %.2f s (%.0f MB/s each way), backlog peak %zu, "
              "pipe heap peak %zu, room waits %llu",
              (unsigned long long)each_way, took, (double)each_way / took / 1e6,
              st.buffered_peak, FM.peak_bytes, (unsigned long long)st.room_waits);
  /* on_close ran once; nothing more comes. */
  run_for(0.02);
  cr_assert_eq(closes, 1);
}

Test(pipe, sixteen_mib_each_way_byte_exact) { transfer(16 * MIB, 0); }

Test(pipe, short_stream_writes_lose_nothing) { transfer(4 * MIB, 1); }

/* ---- memory bound and backpressure -------------------------------------- */

static int peer_blocked(void) {
  return F.delivered - F.consumed == F.window || F.delivered == F.total_b;
}

Test(pipe, slow_reader_bounds_the_backlog_and_holds_credit) {
  F.window = 64 * KIB;
  F.total_b = 4 * MIB;
  F.send_fin_b = 1;
  pipe_start(NULL, NULL, 0, 1);
  /* The app does not read: the kernel buffers fill, then the backlog. */
  cr_assert(run_until(peer_blocked, 10));
  run_for(0.1);
  uint64_t consumed = F.consumed;
  uint64_t delivered = F.delivered;
  run_for(0.2);
  /* No credit while the socket takes nothing: the peer is stuck. */
  cr_assert_eq(F.consumed, consumed);
  cr_assert_eq(F.delivered, delivered);
  cr_assert_lt(F.delivered, F.total_b);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_gt(st.buffered, 0);
  cr_assert_leq(st.buffered, F.window);
  cr_assert_gt(st.tcp_blocked, 0);
  /* Heap: the backlog's chunks and nothing else (no pending data). */
  size_t chunk = ATUN_PIPE_CHUNK_SIZE + 2 * sizeof(void *);
  cr_assert_leq(FM.live_bytes, (F.window / ATUN_PIPE_CHUNK_SIZE + 1) * chunk);
  /* A slow reader now: small reads, all of it arrives in order. */
  A.read_chunk = 4096;
  app_set_reading(1);
  cr_assert(run_until(app_done, 60));
  cr_assert_eq(A.got, F.total_b);
  cr_assert_eq(A.bad_b, 0);
  cr_assert(A.eof);
  cr_assert_leq(buffered_max_seen, F.window);
  cr_assert_leq(F.outstanding_peak, F.window);
  atun_pipe_get_stats(&P, &st);
  cr_assert_leq(st.buffered_peak, F.window);
  cr_assert_leq(FM.peak_bytes, (F.window / ATUN_PIPE_CHUNK_SIZE + 1) * chunk);
  cr_assert_eq(F.consumed, F.total_b);
}

static int room_wait(void) { return atun_pipe_waits_for_room(&P); }

Test(pipe, no_stream_room_stops_reading_the_socket) {
  F.send_cap = 32 * KIB;
  F.auto_ack = 0;
  A.total_a = 8 * MIB;
  pipe_start(NULL, NULL, 0, 1);
  app_start_writing();
  cr_assert(run_until(room_wait, 10));
  run_for(0.1);
  /* Exactly what fit, no byte more; the rest stays in the kernel and the
   * app's sends block. */
  cr_assert_eq(F.received, 32 * KIB);
  cr_assert_eq(F.overrun, 0);
  cr_assert_lt(A.sent, A.total_a);
  cr_assert_eq(FM.live, 0, "the pipe holds TCP bytes of its own");
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.room_waits, 1);
  /* Room again: reading resumes from the loop. */
  F.unacked = 0;
  atun_pipe_on_stream_writable(&P);
  cr_assert(!atun_pipe_waits_for_room(&P));
  cr_assert_eq(F.received, 32 * KIB, "read inside on_stream_writable");
  F.auto_ack = 1;
  double end = now_s() + 30;
  while (F.received < A.total_a && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  cr_assert_eq(F.received, A.total_a);
  cr_assert_eq(F.bad_a, 0);
  cr_assert_eq(F.overrun, 0);
}

/* ---- half-close ----------------------------------------------------------- */

static int fake_fin(void) { return F.fin; }

Test(pipe, tcp_eof_first_then_stream_fin) {
  A.total_a = 1000;
  A.half_close = 1;
  pipe_start(NULL, NULL, 0, 0);
  app_set_reading(1);
  app_start_writing();
  cr_assert(run_until(fake_fin, 5));
  cr_assert_eq(F.received, 1000);
  run_for(0.05);
  cr_assert_eq(closes, 0);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_NONE);
  /* The other direction still carries data, then its FIN ends it all. */
  F.total_b = 300 * KIB;
  F.send_fin_b = 1;
  cr_assert(run_until(all_done, 10));
  cr_assert_eq(close_end, ATUN_PIPE_END_DONE);
  cr_assert_eq(A.got, 300 * KIB);
  cr_assert_eq(A.bad_b, 0);
  cr_assert(A.eof);
  cr_assert_eq(F.shutdowns, 0);
  cr_assert_eq(F.consumed, F.delivered);
}

Test(pipe, stream_fin_first_then_tcp_eof) {
  F.total_b = 5000;
  F.send_fin_b = 1;
  pipe_start(NULL, NULL, 0, 0);
  app_set_reading(1);
  cr_assert(run_until(app_done, 5));
  cr_assert(A.eof);
  cr_assert_eq(A.got, 5000);
  cr_assert_eq(closes, 0);
  /* The app still talks after reading EOF. */
  A.total_a = 200 * KIB;
  A.half_close = 1;
  app_start_writing();
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_DONE);
  cr_assert_eq(F.received, 200 * KIB);
  cr_assert_eq(F.bad_a, 0);
  cr_assert(F.fin);
}

Test(pipe, stream_fin_waits_for_the_backlog) {
  F.window = 128 * KIB;
  F.total_b = 1 * MIB;
  F.send_fin_b = 1;
  pipe_start(NULL, NULL, 0, 1);
  cr_assert(run_until(peer_blocked, 5));
  app_set_reading(1);
  cr_assert(run_until(app_done, 30));
  /* EOF only after every byte. */
  cr_assert(A.eof);
  cr_assert_eq(A.got, F.total_b);
  cr_assert_eq(A.bad_b, 0);
}

/* ---- resets and abort ------------------------------------------------------- */

/* A backlog waiting for an app that does not read. */
static void with_backlog(void) {
  F.window = 64 * KIB;
  F.total_b = 4 * MIB;
  pipe_start(NULL, NULL, 0, 1);
  cr_assert(run_until(peer_blocked, 10));
  run_for(0.05);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_gt(st.buffered, 0);
}

Test(pipe, tcp_reset_resets_the_stream_and_returns_credit) {
  with_backlog();
  atun_tcp_reset(A.fd);
  A.fd = -1;
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_TCP_RESET);
  cr_assert_eq(F.shutdowns, 1);
  cr_assert_eq(F.shutdown_code, ATUN_APP_TARGET_RESET);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert(st.sys_errno == ECONNRESET || st.sys_errno == EPIPE, "errno %d",
            st.sys_errno);
  /* Every delivered byte was consumed, sent or not. */
  cr_assert_eq(F.consumed, F.delivered);
  cr_assert_eq(F.over_consumed, 0);
  cr_assert_eq(FM.live, 0);
}

Test(pipe, tcp_reset_while_reading_is_seen_by_the_read) {
  A.total_a = 10000;
  pipe_start(NULL, NULL, 0, 0);
  app_start_writing();
  double end = now_s() + 5;
  while (F.received < 10000 && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  cr_assert_eq(F.received, 10000);
  atun_tcp_reset(A.fd);
  A.fd = -1;
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_TCP_RESET);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.sys_errno, ECONNRESET);
  cr_assert_eq(F.shutdown_code, ATUN_APP_TARGET_RESET);
}

Test(pipe, stream_reset_resets_tcp) {
  with_backlog();
  atun_pipe_on_stream_reset(&P, 0x42);
  /* Ended at once, reported from the loop. */
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_STREAM_RESET);
  cr_assert_eq(closes, 0);
  cr_assert_eq(F.shutdowns, 1);
  cr_assert_eq(F.shutdown_code, 0x42);
  cr_assert_eq(F.consumed, F.delivered);
  cr_assert_eq(FM.live, 0);
  app_set_reading(1);
  cr_assert(run_until(all_done, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_RESET);
  cr_assert_eq(A.err, ECONNRESET);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.app_error, 0x42);
  /* Late events change nothing; late data is consumed. */
  uint64_t c0 = F.consumed;
  uint8_t junk[10] = {0};
  atun_pipe_on_stream_data(&P, junk, sizeof(junk), 0);
  cr_assert_eq(F.consumed, c0 + 10);
  atun_pipe_on_stream_reset(&P, 1);
  atun_pipe_on_stream_writable(&P);
  atun_pipe_on_stream_closed(&P, 1, 1);
  cr_assert_eq(F.shutdowns, 1);
  run_for(0.02);
  cr_assert_eq(closes, 1);
}

Test(pipe, abort_resets_tcp_and_never_calls_back) {
  with_backlog();
  int calls = F.calls;
  atun_pipe_abort(&P);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_ABORTED);
  cr_assert_eq(F.calls, calls, "abort touched the dead stream");
  cr_assert_eq(FM.live, 0);
  F.pipe = NULL;
  app_set_reading(1);
  cr_assert(run_until(app_done, 5));
  cr_assert_eq(A.err, ECONNRESET);
  run_for(0.05);
  cr_assert_eq(closes, 0);
  atun_pipe_abort(&P); /* twice: a no-op */
}

Test(pipe, abort_cancels_a_pending_close) {
  F.total_b = 10;
  F.send_fin_b = 1;
  A.total_a = 10;
  A.half_close = 1;
  pipe_start(NULL, NULL, 0, 0);
  app_set_reading(1);
  app_start_writing();
  double end = now_s() + 5;
  while (atun_pipe_get_end(&P) == ATUN_PIPE_END_NONE && now_s() < end) {
    ev_run(loop, EVRUN_NOWAIT);
  }
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_DONE);
  if (closes == 0) {
    atun_pipe_abort(&P);
    run_for(0.05);
    cr_assert_eq(closes, 0);
  }
}

Test(pipe, owner_reset_shuts_down_the_stream_without_callback) {
  with_backlog();
  atun_pipe_reset(&P, ATUN_APP_SHUTDOWN);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_RESET);
  cr_assert_eq(F.shutdown_code, ATUN_APP_SHUTDOWN);
  cr_assert_eq(F.consumed, F.delivered);
  app_set_reading(1);
  cr_assert(run_until(app_done, 5));
  cr_assert_eq(A.err, ECONNRESET);
  run_for(0.05);
  cr_assert_eq(closes, 0);
  cr_assert_eq(FM.live, 0);
}

/* ---- stream closes -------------------------------------------------------------- */

Test(pipe, clean_stream_close_lets_the_backlog_drain) {
  F.window = 64 * KIB;
  F.total_b = 2 * MIB;
  F.send_fin_b = 1;
  A.total_a = 100;
  A.half_close = 1;
  pipe_start(NULL, NULL, 0, 1);
  app_start_writing();
  cr_assert(run_until(fake_fin, 5));
  double end = now_s() + 10;
  while (!F.peer_fin_sent && now_s() < end) {
    /* The app reads only now and then: the FIN arrives with a backlog. */
    app_set_reading(1);
    ev_run(loop, EVRUN_ONCE);
    app_set_reading(0);
    run_for(0.001);
  }
  cr_assert(F.peer_fin_sent);
  F.closed = 1;
  atun_pipe_on_stream_closed(&P, 0, 0);
  app_set_reading(1);
  cr_assert(run_until(all_done, 30));
  cr_assert_eq(close_end, ATUN_PIPE_END_DONE);
  cr_assert_eq(A.got, F.total_b);
  cr_assert_eq(A.bad_b, 0);
  cr_assert_eq(F.consumed, F.total_b);
  cr_assert_eq(F.calls_after_closed, 0);
}

Test(pipe, stream_closed_with_error_is_a_reset) {
  pipe_start(NULL, NULL, 0, 0);
  F.closed = 1;
  atun_pipe_on_stream_closed(&P, 1, 0x0f);
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_RESET);
  cr_assert_eq(F.calls_after_closed, 0, "shutdown on a closed stream");
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.app_error, 0x0f);
  app_set_reading(1);
  cr_assert(run_until(app_done, 5));
  cr_assert_eq(A.err, ECONNRESET);
}

Test(pipe, stream_closed_early_is_an_error) {
  pipe_start(NULL, NULL, 0, 0);
  F.closed = 1;
  atun_pipe_on_stream_closed(&P, 0, 0);
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_ERROR);
  cr_assert_eq(F.calls_after_closed, 0);
}

/* ---- failures -------------------------------------------------------------------- */

Test(pipe, peer_beyond_the_bound_is_an_overflow) {
  atun_pipe_settings s;
  atun_pipe_settings_default(&s);
  s.backlog_max = ATUN_PIPE_CHUNK_SIZE;
  F.ignore_window = 1;
  F.total_b = 16 * MIB;
  int fd;
  tcp_pair(&fd, 1);
  atun_pipe_config c = {.loop = loop, .fd = fd, .ops = &fake_ops, .stream = &F,
                        .on_close = on_close, .settings = &s, .mem = &FM.mem};
  cr_assert_eq(atun_pipe_start(&P, &c), 0);
  F.pipe = &P;
  cr_assert(run_until(closed, 10));
  cr_assert_eq(close_end, ATUN_PIPE_END_OVERFLOW);
  cr_assert_eq(F.shutdown_code, ATUN_APP_OVERLOADED);
  cr_assert_eq(F.consumed, F.delivered);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_leq(st.buffered_peak, s.backlog_max);
  cr_assert_eq(FM.live, 0);
}

Test(pipe, backlog_allocation_failure_ends_the_pipe) {
  F.window = 256 * KIB;
  F.total_b = 4 * MIB;
  atun_failmem_arm(&FM, 3, 0);
  pipe_start(NULL, NULL, 0, 1);
  cr_assert(run_until(closed, 10));
  cr_assert_eq(close_end, ATUN_PIPE_END_NOMEM);
  cr_assert_eq(F.shutdown_code, ATUN_APP_INTERNAL);
  cr_assert_eq(F.consumed, F.delivered);
  cr_assert_eq(FM.live, 0);
  cr_assert_gt(FM.failures, 0);
}

Test(pipe, stream_refusing_writes_is_a_stream_error) {
  A.total_a = 1000;
  F.writable_err = ATUN_ERR_STATE;
  pipe_start(NULL, NULL, 0, 0);
  app_start_writing();
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_ERROR);
  cr_assert_eq(F.shutdown_code, ATUN_APP_INTERNAL);
}

Test(pipe, failed_write_is_a_stream_error) {
  A.total_a = 1000;
  F.write_err = ATUN_ERR_NOMEM;
  pipe_start(NULL, NULL, 0, 0);
  app_start_writing();
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_ERROR);
}

Test(pipe, failed_consume_is_a_stream_error) {
  F.total_b = 1000;
  F.consume_err = ATUN_ERR_NOMEM;
  pipe_start(NULL, NULL, 0, 0);
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_ERROR);
}

Test(pipe, failed_consume_while_draining_the_backlog) {
  with_backlog();
  F.consume_err = ATUN_ERR_NOMEM;
  app_set_reading(1);
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_ERROR);
  cr_assert_eq(FM.live, 0);
}

Test(pipe, data_after_fin_is_a_stream_error) {
  pipe_start(NULL, NULL, 0, 0);
  atun_pipe_on_stream_data(&P, NULL, 0, 1);
  uint8_t b[3] = {1, 2, 3};
  F.delivered = 3;
  atun_pipe_on_stream_data(&P, b, 3, 0);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_STREAM_ERROR);
  cr_assert_eq(F.consumed, 3);
  cr_assert(run_until(closed, 5));
}

static int app_shut(void) { return A.shut; }

Test(pipe, refused_fin_is_a_stream_error) {
  A.total_a = 10;
  A.half_close = 1;
  pipe_start(NULL, NULL, 0, 0);
  app_start_writing();
  double end = now_s() + 5;
  while (F.received < 10 && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  cr_assert_eq(F.received, 10);
  F.write_err = ATUN_ERR_STATE; /* the FIN write fails */
  cr_assert(run_until(app_shut, 5));
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_STREAM_ERROR);
  cr_assert(!F.fin);
}

Test(pipe, stream_saying_wouldblock_despite_room_loses_nothing) {
  F.wouldblock_writes = 3;
  A.total_a = 300 * KIB;
  A.half_close = 1;
  pipe_start(NULL, NULL, 0, 0);
  app_start_writing();
  cr_assert(run_until(fake_fin, 10));
  cr_assert_eq(F.received, A.total_a);
  cr_assert_eq(F.bad_a, 0);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_geq(st.room_waits, 1);
  cr_assert_eq(F.wouldblock_writes, 0);
  cr_assert_eq(FM.live, 0);
}

Test(pipe, no_memory_for_refused_bytes_ends_the_pipe) {
  F.wouldblock_writes = 1;
  A.total_a = 1000;
  pipe_start(NULL, NULL, 0, 0);
  atun_failmem_arm(&FM, 0, 0);
  app_start_writing();
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_NOMEM);
  cr_assert_eq(F.shutdown_code, ATUN_APP_INTERNAL);
  cr_assert_eq(FM.live, 0);
}

Test(pipe, stream_failing_after_a_pause_is_a_stream_error) {
  /* Two ways: writable() fails when room is announced, or the write of
   * the bytes kept back fails. */
  for (int way = 0; way < 2; ++way) {
    memset(&P, 0, sizeof(P));
    app_free(&A);
    app_init(&A);
    memset(&F, 0, sizeof(F));
    closes = 0;
    F.send_cap = 100;
    A.total_a = 1000;
    uint8_t early[300];
    for (size_t i = 0; i < sizeof(early); ++i) {
      early[i] = pat_a(i);
    }
    pipe_start(NULL, early, way == 1 ? sizeof(early) : 0, 0);
    app_start_writing();
    cr_assert(run_until(room_wait, 5));
    if (way == 0) {
      F.writable_err = ATUN_ERR_NOT_FOUND;
    } else {
      F.write_err = ATUN_ERR_NOMEM;
    }
    F.unacked = 0;
    atun_pipe_on_stream_writable(&P);
    cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_STREAM_ERROR, "way %d", way);
    cr_assert(run_until(closed, 5));
    cr_assert_eq(FM.live, 0);
  }
}

Test(pipe, half_close_on_a_reset_socket_is_a_tcp_reset) {
  pipe_start(NULL, NULL, 0, 0);
  atun_tcp_reset(A.fd);
  A.fd = -1;
  usleep(20000); /* the RST lands; the pipe has not looked yet */
  atun_pipe_on_stream_data(&P, NULL, 0, 1);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_TCP_RESET);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.sys_errno, ENOTCONN);
  cr_assert(run_until(closed, 5));
}

Test(pipe, reset_seen_while_writing_the_backlog) {
  /* Reading is paused (no stream room), so only the writer can notice. */
  F.send_cap = 4096;
  F.auto_ack = 0;
  A.total_a = 64 * KIB;
  F.window = 64 * KIB;
  F.total_b = 4 * MIB;
  pipe_start(NULL, NULL, 0, 1);
  app_start_writing();
  cr_assert(run_until(room_wait, 5));
  cr_assert(run_until(peer_blocked, 5));
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_gt(st.buffered, 0);
  atun_tcp_reset(A.fd);
  ev_io_stop(loop, &A.wio);
  A.fd = -1;
  cr_assert(run_until(closed, 5));
  cr_assert_eq(close_end, ATUN_PIPE_END_TCP_RESET);
  atun_pipe_get_stats(&P, &st);
  cr_assert(st.sys_errno == ECONNRESET || st.sys_errno == EPIPE, "errno %d",
            st.sys_errno);
  cr_assert_eq(F.consumed, F.delivered);
}

Test(pipe, data_for_a_reset_socket_is_a_tcp_reset) {
  /* The read watcher is off: the pipe learns of the RST from its write,
   * made at the end of the loop round. */
  pipe_start(NULL, NULL, 0, 0);
  ev_io_stop(loop, &P.rio);
  atun_tcp_reset(A.fd);
  A.fd = -1;
  usleep(20000);
  uint8_t b[100] = {0};
  F.delivered = sizeof(b);
  atun_pipe_on_stream_data(&P, b, sizeof(b), 0);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_NONE);
  ev_run(loop, EVRUN_NOWAIT);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_TCP_RESET);
  cr_assert_eq(F.consumed, sizeof(b));
  cr_assert_eq(F.shutdown_code, ATUN_APP_TARGET_RESET);
  cr_assert(run_until(closed, 5));
}

Test(pipe, deliveries_of_one_round_leave_in_one_write) {
  pipe_start(NULL, NULL, 0, 0);
  ev_io_stop(loop, &P.rio);
  uint8_t b[30 * 400]; /* below a fresh socket's send buffer */
  for (size_t i = 0; i < sizeof(b); ++i) {
    b[i] = pat_b(i);
  }
  F.delivered = F.total_b = sizeof(b); /* the fake peer sends no more */
  for (size_t i = 0; i < 30; ++i) {
    atun_pipe_on_stream_data(&P, b + i * 400, 400, 0);
  }
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.buffered, sizeof(b));
  cr_assert_eq(F.consumed, 0); /* credit only for what the socket took */
  uint8_t got[sizeof(b) + 1];
  cr_assert_eq(recv(A.fd, got, sizeof(got), 0), -1); /* nothing sent yet */
  ev_run(loop, EVRUN_NOWAIT);
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.tcp_writes, 1, "writes %llu", (unsigned long long)st.tcp_writes);
  cr_assert_eq(st.buffered, 0, "buffered %zu blocked %llu end %d", st.buffered,
               (unsigned long long)st.tcp_blocked, st.end);
  cr_assert_eq(F.consumed, sizeof(b));
  cr_assert_eq(FM.live, 0); /* the chunks went as they drained */
  size_t n = 0;
  for (int i = 0; i < 100 && n < sizeof(b); ++i) {
    ssize_t k = recv(A.fd, got + n, sizeof(got) - n, 0);
    if (k > 0) n += (size_t)k;
  }
  cr_assert_eq(n, sizeof(b));
  cr_assert(memcmp(got, b, sizeof(b)) == 0);
}

Test(pipe, full_socket_sends_everything_to_the_backlog) {
  int fd;
  tcp_pair(&fd, 1);
  /* Fill the socket before the pipe sees it. */
  uint8_t junk[4096];
  memset(junk, 0, sizeof(junk));
  size_t stuffed = 0;
  for (ssize_t n; (n = send(fd, junk, sizeof(junk), MSG_NOSIGNAL)) > 0;) {
    stuffed += (size_t)n;
  }
  cr_assert_eq(errno, EAGAIN);
  atun_pipe_config c = {.loop = loop, .fd = fd, .ops = &fake_ops, .stream = &F,
                        .on_close = on_close, .mem = &FM.mem};
  cr_assert_eq(atun_pipe_start(&P, &c), 0);
  uint8_t b[40000];
  for (size_t i = 0; i < sizeof(b); ++i) {
    b[i] = pat_b(i);
  }
  F.delivered = sizeof(b);
  atun_pipe_on_stream_data(&P, b, sizeof(b), 1);
  atun_pipe_stats st;
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.tcp_blocked, 0); /* nothing written before the round ends */
  ev_run(loop, EVRUN_NOWAIT);
  atun_pipe_get_stats(&P, &st);
  cr_assert_eq(st.tcp_blocked, 1);
  cr_assert_eq(st.tcp_writes, 0);
  cr_assert_eq(st.buffered, sizeof(b));
  cr_assert_eq(F.consumed, 0);
  cr_assert_eq(FM.live, 3); /* 40000 bytes: three chunks */
  /* The app drains the stuffing, then sees the bytes and the FIN. */
  uint8_t sink[4096];
  double end = now_s() + 5;
  while (stuffed > 0 && now_s() < end) {
    ssize_t n = read(A.fd, sink, stuffed < sizeof(sink) ? stuffed : sizeof(sink));
    if (n > 0) {
      stuffed -= (size_t)n;
    }
    ev_run(loop, EVRUN_NOWAIT);
  }
  cr_assert_eq(stuffed, 0);
  app_set_reading(1);
  cr_assert(run_until(app_done, 5));
  cr_assert_eq(A.got, sizeof(b));
  cr_assert_eq(A.bad_b, 0);
  cr_assert(A.eof);
  cr_assert_eq(F.consumed, sizeof(b));
}

Test(pipe, backlog_allocation_is_all_or_nothing) {
  int fd;
  tcp_pair(&fd, 1);
  uint8_t junk[4096] = {0};
  while (send(fd, junk, sizeof(junk), MSG_NOSIGNAL) > 0) {
  }
  atun_pipe_config c = {.loop = loop, .fd = fd, .ops = &fake_ops, .stream = &F,
                        .on_close = on_close, .mem = &FM.mem};
  cr_assert_eq(atun_pipe_start(&P, &c), 0);
  atun_failmem_arm(&FM, 2, 0); /* two of the three chunks */
  static uint8_t b[40000];
  F.delivered = sizeof(b);
  atun_pipe_on_stream_data(&P, b, sizeof(b), 0);
  cr_assert_eq(atun_pipe_get_end(&P), ATUN_PIPE_END_NOMEM);
  cr_assert_eq(FM.live, 0);
  cr_assert_eq(F.consumed, sizeof(b));
  cr_assert(run_until(closed, 5));
}

Test(pipe, calls_on_idle_or_aborted_pipes_do_nothing) {
  atun_pipe idle;
  memset(&idle, 0, sizeof(idle));
  uint8_t b[4] = {0};
  atun_pipe_on_stream_data(&idle, b, sizeof(b), 1);
  atun_pipe_on_stream_writable(&idle);
  atun_pipe_on_stream_reset(&idle, 1);
  atun_pipe_on_stream_closed(&idle, 1, 1);
  atun_pipe_reset(&idle, 1);
  atun_pipe_abort(&idle);
  cr_assert(!atun_pipe_waits_for_room(&idle));
  cr_assert_eq(atun_pipe_get_end(&idle), ATUN_PIPE_END_NONE);
  pipe_start(NULL, NULL, 0, 0);
  atun_pipe_abort(&P);
  int calls = F.calls;
  atun_pipe_on_stream_data(&P, b, sizeof(b), 0);
  atun_pipe_reset(&P, 1);
  cr_assert_eq(F.calls, calls, "a dead stream was called");
  run_for(0.02);
  cr_assert_eq(closes, 0);
}

/* ---- early data ---------------------------------------------------------------- */

Test(pipe, early_data_goes_first) {
  uint8_t early[100];
  for (size_t i = 0; i < sizeof(early); ++i) {
    early[i] = pat_a(i);
  }
  /* The app's bytes continue the pattern after the early ones. */
  A.total_a = 50000;
  A.sent = sizeof(early);
  A.half_close = 1;
  pipe_start(NULL, early, sizeof(early), 0);
  cr_assert_eq(F.received, sizeof(early));
  cr_assert_eq(FM.live, 0, "early data kept after the stream took it");
  app_start_writing();
  cr_assert(run_until(fake_fin, 5));
  cr_assert_eq(F.received, A.total_a);
  cr_assert_eq(F.bad_a, 0);
}

Test(pipe, early_data_waits_for_room) {
  uint8_t early[ATUN_PIPE_EARLY_MAX];
  for (size_t i = 0; i < sizeof(early); ++i) {
    early[i] = pat_a(i);
  }
  F.send_cap = 1000;
  F.auto_ack = 0;
  A.total_a = 100000;
  A.sent = sizeof(early);
  A.half_close = 1;
  pipe_start(NULL, early, sizeof(early), 0);
  cr_assert_eq(F.received, 1000);
  cr_assert(atun_pipe_waits_for_room(&P));
  cr_assert_eq(FM.live, 1);
  app_start_writing();
  run_for(0.05);
  cr_assert_eq(F.received, 1000, "socket read before the early data went");
  F.auto_ack = 1;
  cr_assert(run_until(fake_fin, 10));
  cr_assert_eq(F.received, A.total_a);
  cr_assert_eq(F.bad_a, 0);
  cr_assert_eq(FM.live, 0);
}

Test(pipe, early_data_meeting_a_full_stream) {
  uint8_t early[100];
  for (size_t i = 0; i < sizeof(early); ++i) {
    early[i] = pat_a(i);
  }
  F.send_cap = 0;
  pipe_start(NULL, early, sizeof(early), 0);
  cr_assert_eq(F.received, 0);
  cr_assert(atun_pipe_waits_for_room(&P));
  F.send_cap = 1000;
  atun_pipe_on_stream_writable(&P);
  cr_assert_eq(F.received, sizeof(early));
  cr_assert_eq(F.bad_a, 0);
  cr_assert(!atun_pipe_waits_for_room(&P));
}

Test(pipe, eof_behind_pending_early_data) {
  uint8_t early[5000];
  for (size_t i = 0; i < sizeof(early); ++i) {
    early[i] = pat_a(i);
  }
  F.send_cap = 1000;
  F.auto_ack = 0;
  A.half_close = 1;
  A.total_a = A.sent = sizeof(early);
  pipe_start(NULL, early, sizeof(early), 0);
  app_start_writing(); /* only the half-close */
  run_for(0.05);
  cr_assert(!F.fin);
  F.auto_ack = 1;
  cr_assert(run_until(fake_fin, 5));
  cr_assert_eq(F.received, sizeof(early));
  cr_assert_eq(F.bad_a, 0);
}

/* ---- start ------------------------------------------------------------------------ */

Test(pipe, start_rejects_bad_configs_and_keeps_the_fd) {
  int fd;
  tcp_pair(&fd, 0);
  uint8_t big[ATUN_PIPE_EARLY_MAX + 1] = {0};
  atun_pipe_stream_ops partial = fake_ops;
  partial.flush = NULL;
  atun_pipe_settings bad;
  atun_pipe_settings_default(&bad);
  bad.backlog_max = ATUN_PIPE_CHUNK_SIZE - 1;
  atun_pipe_settings bad2;
  atun_pipe_settings_default(&bad2);
  bad2.read_max = ATUN_PIPE_READ_MAX + 1;
  atun_pipe_settings bad3;
  atun_pipe_settings_default(&bad3);
  bad3.reads_per_event = 0;
  atun_pipe_config ok = {.loop = loop, .fd = fd, .ops = &fake_ops, .stream = &F,
                         .on_close = on_close, .mem = &FM.mem};
  atun_pipe_config c[9];
  for (size_t i = 0; i < 9; ++i) {
    c[i] = ok;
  }
  c[0].loop = NULL;
  c[1].fd = -1;
  c[2].ops = NULL;
  c[3].ops = &partial;
  c[4].on_close = NULL;
  c[5].early = big;
  c[5].early_len = sizeof(big);
  c[6].early_len = 3; /* NULL early */
  c[7].settings = &bad;
  c[8].settings = &bad2;
  for (size_t i = 0; i < 9; ++i) {
    cr_assert_eq(atun_pipe_start(&P, &c[i]), ATUN_ERR_INVALID_ARGUMENT, "config %zu", i);
    atun_pipe_abort(&P); /* a failed start: nothing to free */
  }
  c[0] = ok;
  c[0].settings = &bad3;
  cr_assert_eq(atun_pipe_start(&P, &c[0]), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_pipe_start(&P, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(F.calls, 0);
  /* Early data the stream refuses, or no memory for it. */
  uint8_t early[10] = {0};
  c[0] = ok;
  c[0].early = early;
  c[0].early_len = sizeof(early);
  F.write_err = ATUN_ERR_STATE;
  cr_assert_eq(atun_pipe_start(&P, &c[0]), ATUN_ERR_STATE);
  F.write_err = 0;
  atun_failmem_arm(&FM, 0, 1);
  cr_assert_eq(atun_pipe_start(&P, &c[0]), ATUN_ERR_NOMEM);
  cr_assert_eq(F.received, 0);
  cr_assert_eq(FM.live, 0);
  /* The fd is still the caller's, open and usable. */
  cr_assert_neq(fcntl(fd, F_GETFD), -1);
  cr_assert_eq(atun_pipe_start(&P, &ok), 0);
  F.pipe = &P;
  run_for(0.02);
  cr_assert_eq(closes, 0);
}

/* ---- re-entrancy: the owner frees the pipe --------------------------------------- */

static atun_pipe *heap_pipe;

static void free_in_close(atun_pipe *p, int end, void *ud) {
  (void)end;
  (void)ud;
  ++closes;
  cr_assert_eq(p, heap_pipe);
  free(p);
  heap_pipe = NULL;
  F.pipe = NULL;
}

Test(pipe, owner_frees_the_pipe_in_on_close) {
  heap_pipe = calloc(1, sizeof(atun_pipe));
  int fd;
  tcp_pair(&fd, 0);
  atun_pipe_config c = {.loop = loop, .fd = fd, .ops = &fake_ops, .stream = &F,
                        .on_close = free_in_close, .mem = &FM.mem};
  cr_assert_eq(atun_pipe_start(heap_pipe, &c), 0);
  F.pipe = heap_pipe;
  F.total_b = 100;
  F.send_fin_b = 1;
  A.total_a = 100;
  A.half_close = 1;
  app_set_reading(1);
  app_start_writing();
  cr_assert(run_until(all_done, 5));
  cr_assert_null(heap_pipe);
  cr_assert_eq(closes, 1);
}

static void abort_and_free_in_flush(fake *f) {
  (void)f;
  if (heap_pipe != NULL) {
    atun_pipe_abort(heap_pipe);
    free(heap_pipe);
    heap_pipe = NULL;
    F.pipe = NULL;
  }
}

/* The connection dies inside a flush: the owner aborts and frees the pipe
 * right there, and the pipe must not touch itself afterwards (ASan would
 * report it). */
static void free_in_flush(int from_socket) {
  heap_pipe = calloc(1, sizeof(atun_pipe));
  int fd;
  tcp_pair(&fd, 0);
  atun_pipe_config c = {.loop = loop, .fd = fd, .ops = &fake_ops, .stream = &F,
                        .on_close = on_close, .mem = &FM.mem};
  cr_assert_eq(atun_pipe_start(heap_pipe, &c), 0);
  F.pipe = heap_pipe;
  F.flush_hook = abort_and_free_in_flush;
  if (from_socket) {
    A.total_a = 100000;
    app_start_writing();
  } else {
    F.total_b = 100000;
  }
  double end = now_s() + 5;
  while (heap_pipe != NULL && now_s() < end) {
    ev_run(loop, EVRUN_ONCE);
  }
  cr_assert_null(heap_pipe);
  run_for(0.05);
  cr_assert_eq(closes, 0);
  cr_assert_eq(FM.live, 0);
}

Test(pipe, freed_inside_flush_after_a_socket_read) { free_in_flush(1); }

Test(pipe, freed_inside_flush_after_stream_data) { free_in_flush(0); }

Test(pipe, end_names) {
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_NONE), "none");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_STREAM_ERROR), "stream_error");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_NOMEM), "nomem");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_RESET), "reset");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_DONE), "done");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_TCP_RESET), "tcp_reset");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_STREAM_RESET), "stream_reset");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_OVERFLOW), "overflow");
  cr_assert_str_eq(atun_pipe_end_name(ATUN_PIPE_END_ABORTED), "aborted");
  cr_assert_str_eq(atun_pipe_end_name(99), "unknown");
}

/* ---- over real QUIC: atun_pipe_quic_ops end to end ---------------------------
 *
 * app_c <-TCP-> pipe (client conn) <-QUIC on 127.0.0.1-> pipe (server conn)
 * <-TCP-> app_s, both endpoints driven by io/quic_ev in this loop.  The
 * client opens the stream once the handshake is done; the server's pipe
 * starts when the stream shows up.  Small stream windows make flow control
 * bite. */

#define Q_WINDOW_MAX ((uint64_t)1 << 20)

typedef struct side {
  atun_pipe pipe;
  atun_pipe_quic pq;
  app *a;
  int started;
  int closes;
  int end;
  const uint8_t *early;
  size_t early_len;
} side;

static struct {
  uint8_t ca_key[ATUN_CA_KEY_DER_MAX], ca[ATUN_CA_DER_MAX];
  uint8_t srv_key[ATUN_CA_KEY_DER_MAX], srv[ATUN_CA_DER_MAX];
  uint8_t ag_key[ATUN_CA_KEY_DER_MAX], ag[ATUN_CA_DER_MAX];
  size_t ca_key_n, ca_n, srv_key_n, srv_n, ag_key_n, ag_n;
} K;

static side SC, SS;
static app AC, AS;

static atun_tstamp wall_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (atun_tstamp)t.tv_sec * ATUN_NS_PER_S + (atun_tstamp)t.tv_nsec;
}

static void make_keys(void) {
  atun_ca_settings cs;
  atun_ca_settings_default(&cs);
  atun_tstamp now = wall_ns();
  const atun_rand *r = atun_ca_sysrand();
  cr_assert_eq(atun_ca_create(&cs, now, r, K.ca_key, sizeof(K.ca_key), &K.ca_key_n, K.ca,
                              sizeof(K.ca), &K.ca_n), 0);
  atun_ca_issuer ca = {K.ca, K.ca_n, K.ca_key, K.ca_key_n};
  const char *hosts[] = {"127.0.0.1"};
  cr_assert_eq(atun_ca_key_generate(K.srv_key, sizeof(K.srv_key), &K.srv_key_n), 0);
  cr_assert_eq(atun_ca_server_issue(&cs, hosts, 1, K.srv_key, K.srv_key_n, &ca, now, r,
                                    K.srv, sizeof(K.srv), &K.srv_n), 0);
  const char *id = "0b6e3c52-7d1a-4f09-9a3b-5c8d2e1f4a07";
  cr_assert_eq(atun_ca_key_generate(K.ag_key, sizeof(K.ag_key), &K.ag_key_n), 0);
  uint8_t csr[ATUN_CA_DER_MAX];
  char pem[ATUN_CA_PEM_MAX];
  size_t csr_n, pem_n;
  cr_assert_eq(atun_ca_csr_make(K.ag_key, K.ag_key_n, "pipe-agent", id, csr, sizeof(csr),
                                &csr_n), 0);
  cr_assert_eq(atun_pem_encode(ATUN_PEM_CSR, csr, csr_n, pem, sizeof(pem), &pem_n), 0);
  cr_assert_eq(atun_ca_sign_csr(&cs, pem, pem_n, "pipe-agent", id, &ca, now, r, K.ag,
                                sizeof(K.ag), &K.ag_n, NULL), 0);
}

static void side_close_cb(atun_pipe *p, int end, void *ud) {
  side *s = ud;
  cr_assert_eq(p, &s->pipe);
  ++s->closes;
  s->end = end;
}

static int side_start(side *s, atun_quic_conn *conn, int64_t sid) {
  int fd;
  tcp_pair_for(s->a, &fd, 0);
  s->pq.conn = conn;
  s->pq.stream_id = sid;
  atun_pipe_settings ps;
  atun_pipe_settings_default(&ps);
  ps.backlog_max = (size_t)Q_WINDOW_MAX; /* the stream's largest window */
  atun_pipe_config c = {.loop = loop, .fd = fd, .ops = &atun_pipe_quic_ops,
                        .stream = &s->pq, .on_close = side_close_cb, .user_data = s,
                        .early = s->early, .early_len = s->early_len,
                        .settings = &ps, .mem = &FM.mem};
  int rv = atun_pipe_start(&s->pipe, &c);
  s->started = rv == 0;
  return rv;
}

static int q_handshake(atun_quic_conn *conn, void *ud) {
  if (ud != &SC) {
    return 0;
  }
  int64_t sid;
  if (atun_quic_stream_open(conn, &sid, &SC) != 0) {
    return -1;
  }
  return side_start(&SC, conn, sid);
}

static int q_stream_open(atun_quic_conn *conn, int64_t sid, void *ud) {
  if (ud != &SS || SS.started) {
    return -1;
  }
  if (atun_quic_stream_set_user_data(conn, sid, &SS) != 0) {
    return -1;
  }
  return side_start(&SS, conn, sid);
}

static int q_data(atun_quic_conn *conn, int64_t sid, const uint8_t *data, size_t len,
                  int fin, void *ud, void *sud) {
  (void)conn;
  (void)sid;
  (void)ud;
  side *s = sud;
  atun_pipe_on_stream_data(&s->pipe, data, len, fin);
  return 0;
}

static int q_reset(atun_quic_conn *conn, int64_t sid, uint64_t code, void *ud, void *sud) {
  (void)conn;
  (void)sid;
  (void)ud;
  atun_pipe_on_stream_reset(&((side *)sud)->pipe, code);
  return 0;
}

static int q_acked(atun_quic_conn *conn, int64_t sid, size_t n, void *ud, void *sud) {
  (void)conn;
  (void)sid;
  (void)n;
  (void)ud;
  atun_pipe_on_stream_writable(&((side *)sud)->pipe);
  return 0;
}

static int q_closed(atun_quic_conn *conn, int64_t sid, int has_error, uint64_t code,
                    void *ud, void *sud) {
  (void)conn;
  (void)sid;
  (void)ud;
  atun_pipe_on_stream_closed(&((side *)sud)->pipe, has_error, code);
  return 0;
}

static void q_conn_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                          void *ud) {
  (void)conn;
  (void)info;
  atun_pipe_abort(&((side *)ud)->pipe);
}

typedef struct qworld {
  atun_quic_tls *stls, *ctls;
  atun_quic_ev *srv, *cli;
  atun_testrng rng;
  atun_quic_settings qs;
} qworld;

static qworld Q;

static void quic_up(void) {
  make_keys();
  memset(&SC, 0, sizeof(SC));
  memset(&SS, 0, sizeof(SS));
  app_init(&AC);
  app_init(&AS);
  SC.a = &AC;
  SS.a = &AS;
  /* app_c sends pat_a and expects pat_b; app_s the other way round. */
  AS.tx_pat = pat_b;
  AS.rx_pat = pat_a;
  atun_quic_tls_config st = {.ca = K.ca, .ca_len = K.ca_n, .cert = K.srv,
                             .cert_len = K.srv_n, .key = K.srv_key,
                             .key_len = K.srv_key_n};
  atun_quic_tls_config ct = {.ca = K.ca, .ca_len = K.ca_n, .cert = K.ag,
                             .cert_len = K.ag_n, .key = K.ag_key, .key_len = K.ag_key_n};
  cr_assert_eq(atun_quic_tls_new(&Q.stls, ATUN_QUIC_SERVER, &st, atun_mem_default()), 0);
  cr_assert_eq(atun_quic_tls_new(&Q.ctls, ATUN_QUIC_CLIENT, &ct, atun_mem_default()), 0);
  atun_testrng_seed(&Q.rng, 11);
  atun_quic_settings_default(&Q.qs);
  Q.qs.stream_window_initial = 256 * KIB;
  Q.qs.stream_window_max = Q_WINDOW_MAX;
  Q.qs.conn_window_initial = 512 * KIB;
  Q.qs.conn_window_max = 2 * Q_WINDOW_MAX;
  Q.qs.stream_send_buffer_max = 512 * KIB;
  static const atun_quic_callbacks cb = {.handshake_completed = q_handshake,
                                         .stream_open = q_stream_open,
                                         .stream_data = q_data,
                                         .stream_reset = q_reset,
                                         .stream_acked = q_acked,
                                         .stream_closed = q_closed,
                                         .connection_closed = q_conn_closed};
  atun_quic_ev_settings es;
  atun_quic_ev_settings_default(&es);
  atun_quic_conn_config sc = {.tls = Q.stls, .settings = &Q.qs, .callbacks = &cb,
                              .user_data = &SS, .mem = atun_mem_default(),
                              .rand = atun_testrng_as_rand(&Q.rng)};
  atun_quic_endpoint lo;
  memset(&lo, 0, sizeof(lo));
  cr_assert_eq(atun_addr_parse(&lo.addr, "127.0.0.1"), 0);
  cr_assert_eq(atun_quic_ev_server_new(&Q.srv, loop, &es, &lo, &sc, NULL, NULL), 0);
  atun_quic_endpoint srv_ep;
  cr_assert_eq(atun_quic_ev_get_local(Q.srv, &srv_ep), 0);
  atun_quic_conn_config cc = sc;
  cc.tls = Q.ctls;
  cc.user_data = &SC;
  cr_assert_eq(atun_quic_ev_client_new(&Q.cli, loop, &es, &cc, NULL, NULL), 0);
  cr_assert_eq(atun_quic_ev_connect(Q.cli, &srv_ep, NULL), 0);
}

static void quic_down(void) {
  atun_pipe_abort(&SC.pipe);
  atun_pipe_abort(&SS.pipe);
  atun_quic_ev_del(Q.cli);
  atun_quic_ev_del(Q.srv);
  atun_quic_tls_del(Q.ctls);
  atun_quic_tls_del(Q.stls);
  app_free(&AC);
  app_free(&AS);
}

static int both_started(void) { return SC.started && SS.started; }
static int client_started(void) { return SC.started; }

static int e2e_done(void) {
  return SC.closes > 0 && SS.closes > 0 && app_done_of(&AC) && app_done_of(&AS);
}

Test(pipe, over_quic_sixteen_mib_each_way) {
  const uint64_t total = 16 * MIB;
  static uint8_t early[1000];
  for (size_t i = 0; i < sizeof(early); ++i) {
    early[i] = pat_a(i);
  }
  quic_up();
  SC.early = early;
  SC.early_len = sizeof(early);
  AC.total_a = AS.total_a = total;
  AC.sent = sizeof(early); /* early data carries the first bytes */
  AC.half_close = AS.half_close = 1;
  double t0 = now_s();
  cr_assert(run_until(both_started, 10), "no stream: client %d server %d", SC.started,
            SS.started);
  app_reading(&AC, 1);
  app_reading(&AS, 1);
  ev_io_start(loop, &AC.wio);
  ev_io_start(loop, &AS.wio);
  cr_assert(run_until(e2e_done, 90), "stuck: c got %llu, s got %llu",
            (unsigned long long)AC.got, (unsigned long long)AS.got);
  double took = now_s() - t0;
  cr_assert_eq(SC.end, ATUN_PIPE_END_DONE);
  cr_assert_eq(SS.end, ATUN_PIPE_END_DONE);
  cr_assert_eq(AS.got, total);
  cr_assert_eq(AC.got, total);
  cr_assert_eq(AS.bad_b, 0);
  cr_assert_eq(AC.bad_b, 0);
  cr_assert(AC.eof && AS.eof);
  atun_pipe_stats c, s;
  atun_pipe_get_stats(&SC.pipe, &c);
  atun_pipe_get_stats(&SS.pipe, &s);
  cr_assert_eq(c.bytes_tcp_to_stream, total);
  cr_assert_eq(s.bytes_stream_to_tcp, total);
  cr_assert_leq(c.buffered_peak, Q_WINDOW_MAX);
  cr_assert_leq(s.buffered_peak, Q_WINDOW_MAX);
  cr_log_info("over QUIC: %llu bytes each way in %.2f s, backlog peaks %zu / %zu",
              (unsigned long long)total, took, c.buffered_peak, s.buffered_peak);
  quic_down();
  cr_assert_eq(FM.live, 0);
}

static int e2e_done_reset(void) {
  return SC.closes > 0 && SS.closes > 0 && app_done_of(&AC);
}

Test(pipe, over_quic_a_stalled_reader_stalls_the_sender) {
  quic_up();
  AC.total_a = 64 * MIB;
  /* app_s never reads: the server pipe may hold at most the window, the
   * client pipe stops reading, and app_c's socket fills up.  (The server
   * sees the stream with its first bytes.) */
  cr_assert(run_until(client_started, 10));
  ev_io_start(loop, &AC.wio);
  cr_assert(run_until(both_started, 10));
  /* Wait until the sender stands still for half a second (bounded). */
  uint64_t sent = AC.sent;
  double end = now_s() + 20;
  do {
    sent = AC.sent;
    run_for(0.5);
  } while (AC.sent != sent && now_s() < end);
  atun_pipe_stats c, s;
  atun_pipe_get_stats(&SC.pipe, &c);
  atun_pipe_get_stats(&SS.pipe, &s);
  cr_assert_eq(AC.sent, sent, "the sender is not held back");
  cr_assert_lt(AC.sent, AC.total_a);
  cr_assert_leq(s.buffered, Q_WINDOW_MAX);
  cr_assert_leq(s.buffered_peak, Q_WINDOW_MAX);
  cr_assert(atun_pipe_waits_for_room(&SC.pipe));
  cr_log_info("stalled: app_c sent %llu, server backlog %zu (peak %zu), client "
              "room waits %llu",
              (unsigned long long)AC.sent, s.buffered, s.buffered_peak,
              (unsigned long long)c.room_waits);
  /* A reset of app_s reaches app_c as a reset. */
  atun_tcp_reset(AS.fd);
  ev_io_stop(loop, &AS.rio);
  AS.fd = -1;
  app_reading(&AC, 1);
  cr_assert(run_until(e2e_done_reset, 10));
  cr_assert_eq(SS.end, ATUN_PIPE_END_TCP_RESET);
  cr_assert_eq(SC.end, ATUN_PIPE_END_STREAM_RESET);
  /* The RST shows to whichever call comes first: the blocked send here. */
  cr_assert(AC.err == ECONNRESET || AC.werr == ECONNRESET, "err %d werr %d", AC.err,
            AC.werr);
  atun_pipe_get_stats(&SC.pipe, &c);
  cr_assert_eq(c.app_error, ATUN_APP_TARGET_RESET);
  quic_down();
  cr_assert_eq(FM.live, 0);
}
