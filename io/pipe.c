/*
 * TCP <-> stream proxy on libev; see pipe.h.
 */
#include "pipe.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "codec.h"
#include "quic_ev.h"
#include "tcp.h"

struct atun_pipe_chunk {
  atun_pipe_chunk *next;
  size_t len; /* bytes filled */
  uint8_t data[ATUN_PIPE_CHUNK_SIZE];
};

/* Socket reads land here and leave for the stream's send buffer within the
 * same event: the stream never has less room than was read, so nothing
 * stays behind and one buffer per thread serves every pipe. */
static _Thread_local uint8_t scratch[ATUN_PIPE_READ_MAX];

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* ======================================================================
 * Settings, names
 * ====================================================================== */

void atun_pipe_settings_default(atun_pipe_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  settings->backlog_max = (size_t)16 << 20;
  settings->read_max = ATUN_PIPE_READ_MAX;
  settings->reads_per_event = 16;
  settings->writes_per_event = 16;
}

static int settings_valid(const atun_pipe_settings *s) {
  return s->backlog_max >= ATUN_PIPE_CHUNK_SIZE &&
         s->backlog_max <= ATUN_PIPE_BACKLOG_LIMIT && s->read_max >= 1 &&
         s->read_max <= ATUN_PIPE_READ_MAX && s->reads_per_event >= 1 &&
         s->reads_per_event <= ATUN_PIPE_EVENT_CALLS_LIMIT &&
         s->writes_per_event >= 1 &&
         s->writes_per_event <= ATUN_PIPE_EVENT_CALLS_LIMIT;
}

const char *atun_pipe_end_name(int end) {
  switch (end) {
  case ATUN_PIPE_END_NONE: return "none";
  case ATUN_PIPE_END_DONE: return "done";
  case ATUN_PIPE_END_TCP_RESET: return "tcp_reset";
  case ATUN_PIPE_END_STREAM_RESET: return "stream_reset";
  case ATUN_PIPE_END_STREAM_ERROR: return "stream_error";
  case ATUN_PIPE_END_OVERFLOW: return "overflow";
  case ATUN_PIPE_END_NOMEM: return "nomem";
  case ATUN_PIPE_END_RESET: return "reset";
  case ATUN_PIPE_END_ABORTED: return "aborted";
  default: return "unknown";
  }
}

/* ======================================================================
 * Backlog: stream bytes the socket has not taken yet
 * ====================================================================== */

static void backlog_free(atun_pipe *p) {
  while (p->head != NULL) {
    atun_pipe_chunk *c = p->head;
    p->head = c->next;
    atun_mem_free(p->mem, c);
  }
  p->tail = NULL;
  p->head_off = 0;
  p->stats.buffered = 0;
}

static size_t tail_room(const atun_pipe *p) {
  return p->tail == NULL ? 0 : ATUN_PIPE_CHUNK_SIZE - p->tail->len;
}

/* Appends all |len| bytes or nothing: the chunks are allocated before a
 * byte is copied, so a failure leaves the backlog as it was.  Returns 0 or
 * ATUN_ERR_NOMEM. */
static int backlog_append(atun_pipe *p, const uint8_t *data, size_t len) {
  size_t room = tail_room(p);
  size_t need = len > room ? (len - room + ATUN_PIPE_CHUNK_SIZE - 1) / ATUN_PIPE_CHUNK_SIZE
                           : 0;
  atun_pipe_chunk *fresh = NULL;
  for (size_t i = 0; i < need; ++i) {
    atun_pipe_chunk *c = atun_mem_malloc(p->mem, sizeof(*c));
    if (c == NULL) {
      while (fresh != NULL) {
        atun_pipe_chunk *n = fresh->next;
        atun_mem_free(p->mem, fresh);
        fresh = n;
      }
      return ATUN_ERR_NOMEM;
    }
    c->len = 0;
    c->next = fresh;
    fresh = c;
  }
  size_t off = 0;
  while (off < len) {
    if (tail_room(p) == 0) {
      atun_pipe_chunk *c = fresh;
      fresh = c->next;
      c->next = NULL;
      if (p->tail != NULL) {
        p->tail->next = c;
      } else {
        p->head = c;
      }
      p->tail = c;
    }
    size_t n = min_size(tail_room(p), len - off);
    memcpy(p->tail->data + p->tail->len, data + off, n);
    p->tail->len += n;
    off += n;
  }
  ATUN_ASSERT(fresh == NULL);
  p->stats.buffered += len;
  if (p->stats.buffered > p->stats.buffered_peak) {
    p->stats.buffered_peak = p->stats.buffered;
  }
  return 0;
}

/* Forgets the first |n| bytes, which the socket took. */
static void backlog_drop(atun_pipe *p, size_t n) {
  p->stats.buffered -= n;
  while (n > 0) {
    atun_pipe_chunk *c = p->head;
    size_t here = min_size(c->len - p->head_off, n);
    p->head_off += here;
    n -= here;
    if (p->head_off == c->len) {
      p->head = c->next;
      p->head_off = 0;
      atun_mem_free(p->mem, c);
    }
  }
  if (p->head == NULL) {
    p->tail = NULL;
  }
}

static size_t backlog_iov(const atun_pipe *p, struct iovec *iov) {
  size_t n = 0;
  size_t off = p->head_off;
  for (const atun_pipe_chunk *c = p->head; c != NULL && n < ATUN_PIPE_IOV_MAX;
       c = c->next) {
    iov[n].iov_base = (void *)(c->data + off);
    iov[n].iov_len = c->len - off;
    off = 0;
    ++n;
  }
  return n;
}

/* ======================================================================
 * Ending
 * ====================================================================== */

static void pending_free(atun_pipe *p) {
  atun_mem_free(p->mem, p->pending);
  p->pending = NULL;
  p->pending_off = 0;
  p->pending_len = 0;
}

static void give_credit(atun_pipe *p, size_t n) {
  if (n > 0) {
    (void)p->ops->consume(p->stream, n);
    p->dirty = 1;
  }
}

/* Ends the pipe with |end|: the socket is closed (a RST unless DONE), the
 * buffers freed, the backlog's bytes consumed (unless ABORTED), the stream
 * shut down with |code| if |shut|, and on_close scheduled (unless the owner
 * asked for the end). */
static void pipe_end(atun_pipe *p, int end, int shut, uint64_t code) {
  ATUN_ASSERT(p->stats.end == ATUN_PIPE_END_NONE);
  p->stats.end = end;
  ev_io_stop(p->loop, &p->rio);
  ev_io_stop(p->loop, &p->wio);
  ev_prepare_stop(p->loop, &p->prep);
  if (end != ATUN_PIPE_END_ABORTED) {
    give_credit(p, p->stats.buffered);
  }
  backlog_free(p);
  pending_free(p);
  if (shut && !p->stream_gone) {
    (void)p->ops->shutdown(p->stream, code);
    p->dirty = 1;
  }
  if (end == ATUN_PIPE_END_DONE) {
    close(p->fd);
  } else {
    atun_tcp_reset(p->fd);
  }
  p->fd = -1;
  if (end != ATUN_PIPE_END_RESET && end != ATUN_PIPE_END_ABORTED) {
    ev_timer_set(&p->end_timer, 0., 0.);
    ev_timer_start(p->loop, &p->end_timer);
  }
}

static void fail_tcp(atun_pipe *p, int err) {
  p->stats.sys_errno = err;
  pipe_end(p, ATUN_PIPE_END_TCP_RESET, 1, ATUN_APP_TARGET_RESET);
}

static void fail_stream(atun_pipe *p) {
  pipe_end(p, ATUN_PIPE_END_STREAM_ERROR, 1, ATUN_APP_INTERNAL);
}

static void fail_nomem(atun_pipe *p) {
  pipe_end(p, ATUN_PIPE_END_NOMEM, 1, ATUN_APP_INTERNAL);
}

static int ended(const atun_pipe *p) { return p->stats.end != ATUN_PIPE_END_NONE; }

/* The last act of every entry point: the flush may end up freeing |p|. */
static void pipe_flush(atun_pipe *p) {
  if (!p->dirty) {
    return;
  }
  p->dirty = 0;
  void (*flush)(void *) = p->ops->flush;
  void *stream = p->stream;
  flush(stream);
}

static void check_done(atun_pipe *p) {
  if (p->fin_sent && p->shut_wr) {
    pipe_end(p, ATUN_PIPE_END_DONE, 0, 0);
  }
}

static void end_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  atun_pipe *p = w->data;
  p->on_close(p, p->stats.end, p->user_data);
}

/* ======================================================================
 * TCP -> stream
 * ====================================================================== */

static void pause_for_room(atun_pipe *p) {
  ev_io_stop(p->loop, &p->rio);
  p->room_wait = 1;
  ++p->stats.room_waits;
}

static void send_fin(atun_pipe *p) {
  ssize_t rv = p->ops->write(p->stream, NULL, 0, 1);
  p->dirty = 1;
  if (rv < 0) {
    fail_stream(p);
    return;
  }
  p->fin_sent = 1;
  check_done(p);
}

/* Hands |len| bytes to the stream.  Returns the bytes taken or -1 after
 * the pipe ended. */
static ssize_t stream_put(atun_pipe *p, const uint8_t *data, size_t len) {
  ssize_t n = p->ops->write(p->stream, data, len, 0);
  p->dirty = 1;
  if (n == ATUN_ERR_WOULDBLOCK) {
    return 0;
  }
  if (n < 0 || (size_t)n > len) {
    fail_stream(p);
    return -1;
  }
  p->stats.bytes_tcp_to_stream += (uint64_t)n;
  return n;
}

/* Writes what waits in |pending|.  Returns 0 when it all went, 1 when some
 * waits for room, -1 after the pipe ended. */
static int pending_drain(atun_pipe *p) {
  ssize_t n = stream_put(p, p->pending + p->pending_off,
                         p->pending_len - p->pending_off);
  if (n < 0) {
    return -1;
  }
  p->pending_off += (size_t)n;
  if (p->pending_off < p->pending_len) {
    return 1;
  }
  pending_free(p);
  return 0;
}

/* Keeps the |len| bytes the stream refused (of a socket read or of early
 * data) until it has room.  Returns 0 or -1 after the pipe ended. */
static int pending_keep(atun_pipe *p, const uint8_t *data, size_t len) {
  ATUN_ASSERT(p->pending == NULL && len <= ATUN_PIPE_READ_MAX);
  p->pending = atun_mem_malloc(p->mem, len);
  if (p->pending == NULL) {
    fail_nomem(p);
    return -1;
  }
  memcpy(p->pending, data, len);
  p->pending_len = len;
  p->pending_off = 0;
  return 0;
}

/* Reading runs only with nothing pending, so the FIN goes at once. */
static void on_tcp_eof(atun_pipe *p) {
  ATUN_ASSERT(p->pending == NULL);
  ev_io_stop(p->loop, &p->rio);
  p->tcp_eof = 1;
  send_fin(p);
}

/* One socket read into the stream.  Returns 1 to read again, 0 to stop for
 * this event (drained, paused or ended). */
static int read_once(atun_pipe *p) {
  ssize_t room = p->ops->writable(p->stream);
  if (room < 0) {
    fail_stream(p);
    return 0;
  }
  if (room == 0) {
    pause_for_room(p);
    return 0;
  }
  size_t want = min_size((size_t)room, p->settings.read_max);
  ssize_t n = recv(p->fd, scratch, want, 0);
  if (n == 0) {
    on_tcp_eof(p);
    return 0;
  }
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      fail_tcp(p, errno);
    }
    return 0;
  }
  ssize_t taken = stream_put(p, scratch, (size_t)n);
  if (taken < 0) {
    return 0;
  }
  if (taken < n) {
    if (pending_keep(p, scratch + taken, (size_t)(n - taken)) == 0) {
      pause_for_room(p);
    }
    return 0;
  }
  /* A short read means the socket is drained: skip the EAGAIN call. */
  return (size_t)n == want;
}

static void rio_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  atun_pipe *p = w->data;
  for (size_t i = 0; i < p->settings.reads_per_event; ++i) {
    if (!read_once(p)) {
      break;
    }
  }
  pipe_flush(p);
}

static void resume_reading(atun_pipe *p) {
  /* Paused readers have not seen EOF: reading stopped before it. */
  ATUN_ASSERT(!p->tcp_eof);
  if (p->pending != NULL && pending_drain(p) != 0) {
    return; /* still waiting, or ended */
  }
  ssize_t room = p->ops->writable(p->stream);
  if (room < 0) {
    fail_stream(p);
    return;
  }
  if (room > 0) {
    p->room_wait = 0;
    /* The read itself happens from the loop: the owner is most likely
     * inside a QUIC callback now. */
    ev_io_start(p->loop, &p->rio);
  }
}

void atun_pipe_on_stream_writable(atun_pipe *pipe) {
  if (!pipe->started || ended(pipe) || pipe->stream_gone || !pipe->room_wait) {
    return;
  }
  resume_reading(pipe);
  pipe_flush(pipe);
}

int atun_pipe_waits_for_room(const atun_pipe *pipe) {
  return pipe->started && !ended(pipe) && pipe->room_wait;
}

/* ======================================================================
 * Stream -> TCP
 * ====================================================================== */

static void tcp_half_close(atun_pipe *p) {
  if (atun_tcp_half_close(p->fd) != 0) {
    fail_tcp(p, errno);
    return;
  }
  p->shut_wr = 1;
  check_done(p);
}

/* The socket took |n| bytes: credit for the peer. */
static int took(atun_pipe *p, size_t n) {
  p->stats.bytes_stream_to_tcp += n;
  if (p->ops->consume(p->stream, n) != 0) {
    fail_stream(p);
    return -1;
  }
  p->dirty = 1;
  return 0;
}

/* Writes the backlog until it is empty, the socket is full or the
 * per-event bound is hit.  Returns 0, or -1 after the pipe ended. */
static int backlog_write(atun_pipe *p) {
  for (size_t i = 0; i < p->settings.writes_per_event && p->head != NULL; ++i) {
    struct iovec iov[ATUN_PIPE_IOV_MAX];
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = backlog_iov(p, iov);
    ssize_t n = sendmsg(p->fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        ++p->stats.tcp_blocked;
        return 0;
      }
      if (errno == EINTR) {
        continue;
      }
      fail_tcp(p, errno);
      return -1;
    }
    ++p->stats.tcp_writes;
    backlog_drop(p, (size_t)n);
    if (took(p, (size_t)n) != 0) {
      return -1;
    }
  }
  return 0;
}

/* Writes what the backlog holds; waits for EV_WRITE while some is left. */
static void backlog_service(atun_pipe *p) {
  if (backlog_write(p) != 0) {
    return;
  }
  if (p->head != NULL) {
    ev_io_start(p->loop, &p->wio);
    return;
  }
  ev_io_stop(p->loop, &p->wio);
  if (p->fin_recv && !p->shut_wr) {
    tcp_half_close(p);
  }
}

static void wio_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  atun_pipe *p = w->data;
  backlog_service(p);
  pipe_flush(p);
}

/* Runs once the loop has dispatched every event of this round, before it
 * waits again: all the stream data that a batch of datagrams delivered
 * leaves in one writev instead of one send per packet, and the peer's
 * acknowledgements (written when the batch was read) went out first. */
static void prep_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  (void)revents;
  atun_pipe *p = w->data;
  ev_prepare_stop(loop, w);
  backlog_service(p);
  pipe_flush(p);
}

static void stream_data(atun_pipe *p, const uint8_t *data, size_t len, int fin) {
  if (len > 0) {
    if (len > p->settings.backlog_max - p->stats.buffered) {
      give_credit(p, len);
      pipe_end(p, ATUN_PIPE_END_OVERFLOW, 1, ATUN_APP_OVERLOADED);
      return;
    }
    if (backlog_append(p, data, len) != 0) {
      give_credit(p, len);
      fail_nomem(p);
      return;
    }
    if (!ev_is_active(&p->wio)) {
      ev_prepare_start(p->loop, &p->prep);
    }
  }
  if (fin) {
    p->fin_recv = 1;
    if (p->head == NULL) {
      tcp_half_close(p);
    }
  }
}

void atun_pipe_on_stream_data(atun_pipe *pipe, const uint8_t *data, size_t len,
                              int fin) {
  if (!pipe->started || pipe->stats.end == ATUN_PIPE_END_ABORTED) {
    return;
  }
  if (ended(pipe)) {
    give_credit(pipe, len);
  } else if (pipe->fin_recv) {
    /* Nothing follows a FIN; a stream that says otherwise is broken. */
    give_credit(pipe, len);
    if (len > 0) {
      fail_stream(pipe);
    }
  } else {
    stream_data(pipe, data, len, fin);
  }
  pipe_flush(pipe);
}

/* ======================================================================
 * Stream events, owner calls
 * ====================================================================== */

void atun_pipe_on_stream_reset(atun_pipe *pipe, uint64_t app_error) {
  if (!pipe->started || ended(pipe)) {
    return;
  }
  pipe->stats.app_error = app_error;
  /* Our direction goes too: a peer that reset only its own leaves ours
   * open otherwise. */
  pipe_end(pipe, ATUN_PIPE_END_STREAM_RESET, 1, app_error);
  pipe_flush(pipe);
}

void atun_pipe_on_stream_closed(atun_pipe *pipe, int has_error,
                                uint64_t app_error) {
  if (!pipe->started) {
    return;
  }
  pipe->stream_gone = 1;
  if (ended(pipe)) {
    return;
  }
  if (has_error) {
    pipe->stats.app_error = app_error;
    pipe_end(pipe, ATUN_PIPE_END_STREAM_RESET, 0, 0);
  } else if (!pipe->fin_sent || !pipe->fin_recv) {
    pipe_end(pipe, ATUN_PIPE_END_STREAM_ERROR, 0, 0);
  }
  /* A clean close leaves the backlog draining: consume stays allowed. */
  pipe_flush(pipe);
}

void atun_pipe_reset(atun_pipe *pipe, uint64_t app_error) {
  if (!pipe->started) {
    return;
  }
  ev_timer_stop(pipe->loop, &pipe->end_timer);
  if (!ended(pipe)) {
    pipe_end(pipe, ATUN_PIPE_END_RESET, 1, app_error);
  }
  pipe_flush(pipe);
}

void atun_pipe_abort(atun_pipe *pipe) {
  if (!pipe->started) {
    return;
  }
  ev_timer_stop(pipe->loop, &pipe->end_timer);
  if (!ended(pipe)) {
    pipe_end(pipe, ATUN_PIPE_END_ABORTED, 0, 0);
  }
  pipe->dirty = 0;
}

int atun_pipe_get_end(const atun_pipe *pipe) { return pipe->stats.end; }

void atun_pipe_get_stats(const atun_pipe *pipe, atun_pipe_stats *out) {
  *out = pipe->stats;
}

/* ======================================================================
 * Start
 * ====================================================================== */

static int config_valid(const atun_pipe_config *c) {
  const atun_pipe_stream_ops *o = c->ops;
  return c->loop != NULL && c->fd >= 0 && c->on_close != NULL && o != NULL &&
         o->writable != NULL && o->write != NULL && o->consume != NULL &&
         o->shutdown != NULL && o->flush != NULL &&
         c->early_len <= ATUN_PIPE_EARLY_MAX &&
         (c->early != NULL || c->early_len == 0);
}

/* Early data: copied first, so that a stream refusing it fails the start
 * before anything was written. */
static int start_early(atun_pipe *p, const uint8_t *early, size_t len) {
  p->pending = atun_mem_malloc(p->mem, len);
  if (p->pending == NULL) {
    return ATUN_ERR_NOMEM;
  }
  memcpy(p->pending, early, len);
  p->pending_len = len;
  ssize_t n = p->ops->write(p->stream, p->pending, len, 0);
  if (n == ATUN_ERR_WOULDBLOCK) {
    n = 0;
  }
  if (n < 0 || (size_t)n > len) {
    pending_free(p);
    return n < 0 ? (int)n : ATUN_ERR_INTERNAL;
  }
  p->dirty = 1;
  p->stats.bytes_tcp_to_stream += (uint64_t)n;
  p->pending_off = (size_t)n;
  if (p->pending_off == len) {
    pending_free(p);
  } else {
    p->room_wait = 1; /* the read watcher is not started at all */
    ++p->stats.room_waits;
  }
  return 0;
}

int atun_pipe_start(atun_pipe *pipe, const atun_pipe_config *config) {
  if (pipe == NULL || config == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  memset(pipe, 0, sizeof(*pipe));
  pipe->fd = -1;
  atun_pipe_settings s;
  if (config->settings != NULL) {
    s = *config->settings;
  } else {
    atun_pipe_settings_default(&s);
  }
  if (!config_valid(config) || !settings_valid(&s)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  pipe->loop = config->loop;
  pipe->ops = config->ops;
  pipe->stream = config->stream;
  pipe->on_close = config->on_close;
  pipe->user_data = config->user_data;
  pipe->mem = config->mem != NULL ? config->mem : atun_mem_default();
  pipe->settings = s;
  if (config->early_len > 0) {
    int rv = start_early(pipe, config->early, config->early_len);
    if (rv != 0) {
      return rv;
    }
  }
  pipe->fd = config->fd;
  ev_io_init(&pipe->rio, rio_cb, pipe->fd, EV_READ);
  pipe->rio.data = pipe;
  ev_io_init(&pipe->wio, wio_cb, pipe->fd, EV_WRITE);
  pipe->wio.data = pipe;
  ev_prepare_init(&pipe->prep, prep_cb);
  pipe->prep.data = pipe;
  ev_init(&pipe->end_timer, end_timer_cb);
  pipe->end_timer.data = pipe;
  pipe->started = 1;
  if (!pipe->room_wait) {
    ev_io_start(pipe->loop, &pipe->rio);
  }
  pipe_flush(pipe);
  return 0;
}

/* ======================================================================
 * The QUIC stream adapter
 * ====================================================================== */

static ssize_t quic_writable(void *stream) {
  const atun_pipe_quic *q = stream;
  return atun_quic_stream_writable(q->conn, q->stream_id);
}

static ssize_t quic_write(void *stream, const uint8_t *data, size_t len, int fin) {
  const atun_pipe_quic *q = stream;
  return atun_quic_stream_write(q->conn, q->stream_id, data, len, fin);
}

static int quic_consume(void *stream, size_t n) {
  const atun_pipe_quic *q = stream;
  return atun_quic_stream_consume(q->conn, q->stream_id, n);
}

static int quic_shutdown(void *stream, uint64_t app_error) {
  const atun_pipe_quic *q = stream;
  return atun_quic_stream_shutdown(q->conn, q->stream_id, app_error);
}

static void quic_flush(void *stream) {
  const atun_pipe_quic *q = stream;
  atun_quic_ev_flush(q->conn);
}

const atun_pipe_stream_ops atun_pipe_quic_ops = {
    .writable = quic_writable,
    .write = quic_write,
    .consume = quic_consume,
    .shutdown = quic_shutdown,
    .flush = quic_flush,
};
