/*
 * The proxy between one TCP socket and one QUIC stream, both directions, on
 * a libev loop.  Both daemons use it once a session is up: the gateway
 * between a SOCKS5 / port-forward client and its stream, the agent between
 * a stream and its target.  No protocol logic: the session header and the
 * ConnectResponse are the owner's business, before the pipe starts.
 *
 * The stream side is an interface (atun_pipe_stream_ops), so the pipe runs
 * against a fake stream in tests; atun_pipe_quic_ops adapts a real stream
 * of an atun_quic_conn driven by io/quic_ev.
 *
 * TCP -> stream.  The socket is read only while the stream has room
 * (ops->writable() > 0), never more than the room, and what was read goes
 * straight into ops->write(), which copies it into the stream's send buffer.
 * With no room the read watcher stops (counted in room_waits) and starts
 * again when the owner says room appeared (atun_pipe_on_stream_writable()).
 * The kernel's receive buffer then fills and TCP flow control slows the
 * sender: nothing piles up in between.  Reads go through one scratch buffer
 * of ATUN_PIPE_READ_MAX bytes per thread, empty between events, so this
 * direction costs the pipe no memory of its own.  Only when a stream takes
 * fewer bytes than it said it would (its allocator failed) does the rest
 * wait in a per-pipe copy of at most ATUN_PIPE_READ_MAX bytes, and early
 * data (below) waits there the same way.
 *
 * Stream -> TCP.  Bytes the stream delivers (atun_pipe_on_stream_data())
 * are copied into the backlog, a queue of ATUN_PIPE_CHUNK_SIZE chunks
 * allocated on demand and freed as they drain, and written to the socket
 * once per loop round, from an ev_prepare watcher that runs after the loop
 * dispatched every event of the round: a batch of datagrams that delivered
 * thirty stream frames costs one writev(2), not thirty send(2)s, and the
 * acknowledgements the batch called for leave before the socket write.
 * What the socket does not take waits for EV_WRITE.  ops->consume() is
 * called only for bytes the socket accepted, so a slow TCP reader holds
 * back the peer's credit: the peer can not have more than the stream's
 * receive window in flight unconsumed, and that bounds the backlog.
 * |backlog_max| states the bound (set it to the stream's largest receive
 * window, atun_quic_settings.stream_window_max); a peer that delivers
 * beyond it broke flow control and the pipe ends with
 * ATUN_PIPE_END_OVERFLOW.
 *
 * Memory per pipe, fixed: sizeof(atun_pipe) + the backlog (at most
 * |backlog_max| bytes, in at most ceil(backlog_max / ATUN_PIPE_CHUNK_SIZE)
 * + 1 chunks) + at most ATUN_PIPE_READ_MAX bytes of pending TCP->stream data.
 *
 * Half-close.  TCP EOF -> a FIN on the stream (after any pending bytes).
 * Stream FIN -> shutdown(SHUT_WR) once the backlog is written.  When both
 * directions have ended so, the socket is closed and the pipe ends DONE.
 *
 * Resets.  A TCP reset or socket error -> ops->shutdown(ATUN_APP_TARGET_RESET)
 * (both directions of the stream), end TCP_RESET.  A stream reset
 * (atun_pipe_on_stream_reset()) -> the socket closes with a RST, our
 * direction of the stream is shut down too, end STREAM_RESET.  Whenever a
 * pipe ends for any reason but atun_pipe_abort(), the backlog's bytes are
 * consumed before they are dropped: the connection's credit must not leak.
 *
 * Callbacks.  on_close runs exactly once per started pipe that ends on its
 * own, always from the loop (an ev_timer), never inside a call the owner
 * made, so the owner may free the pipe's memory there.  By then the socket
 * is closed and every buffer freed.  atun_pipe_abort() and atun_pipe_reset()
 * end a pipe at once and never call back.
 *
 * Wiring, for an owner with an atun_quic_conn (io/quic_ev) per pipe:
 *
 *   stream_data       -> atun_pipe_on_stream_data
 *   stream_acked      -> atun_pipe_on_stream_writable (and, since streams
 *                        share the connection's send buffer, the same for
 *                        its other pipes that atun_pipe_waits_for_room())
 *   stream_reset      -> atun_pipe_on_stream_reset
 *   stream_closed     -> atun_pipe_on_stream_closed
 *   connection_closed -> atun_pipe_abort on every pipe of the connection
 *   on_close          -> atun_quic_stream_set_user_data(conn, id, NULL) if
 *                        the stream still lives, then free the session; a
 *                        stream without a pipe gets its delivered bytes
 *                        consumed by the owner directly
 *
 * Re-entrancy.  ops->flush() is the last thing a pipe does in any handler
 * or call, after it touched its own memory for the last time: flushing a
 * QUIC connection may find it dead and make the owner abort and free this
 * very pipe.  The ops other than flush must not call back into the pipe.
 */
#ifndef ATUN_PIPE_H
#define ATUN_PIPE_H

#include <ev.h>

#include "atun.h"
#include "quic.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- bounds --------------------------------------------------------------- */

/* Largest read(2) from the socket, the per-thread scratch buffer, and the
 * largest pending copy. */
#define ATUN_PIPE_READ_MAX ((size_t)65536)
/* Backlog allocation unit. */
#define ATUN_PIPE_CHUNK_SIZE ((size_t)16384)
/* Largest backlog_max setting. */
#define ATUN_PIPE_BACKLOG_LIMIT ((size_t)1 << 30)
/* Largest early data (atun_pipe_config.early). */
#define ATUN_PIPE_EARLY_MAX ATUN_PIPE_READ_MAX
/* Chunks one writev(2) hands the socket. */
#define ATUN_PIPE_IOV_MAX 16
/* Largest reads_per_event / writes_per_event. */
#define ATUN_PIPE_EVENT_CALLS_LIMIT 1024

typedef struct atun_pipe_settings {
  /* Stream bytes held for a slow socket, ATUN_PIPE_CHUNK_SIZE..LIMIT.
   * Default 16 MiB, the default stream_window_max of core/quic.h. */
  size_t backlog_max;
  /* Bytes per read(2), 1..ATUN_PIPE_READ_MAX.  Default ATUN_PIPE_READ_MAX. */
  size_t read_max;
  /* read(2) / writev(2) calls per readiness event, 1..LIMIT, so one busy
   * pipe can not starve the loop.  Defaults 16 and 16. */
  size_t reads_per_event;
  size_t writes_per_event;
} atun_pipe_settings;

void atun_pipe_settings_default(atun_pipe_settings *settings);

/* --- the stream side ------------------------------------------------------ */

/* What the pipe needs of a stream.  |stream| is atun_pipe_config.stream.
 * writable: bytes write() would take now, or a negative error (the stream
 *           can not be written any more: the pipe ends STREAM_ERROR).
 * write:    takes up to |len| bytes (and a FIN after them if |fin| and all
 *           fit; |len| 0 with |fin| only ends the direction; |data| may be
 *           NULL when |len| is 0); returns the bytes taken or an error.
 * consume:  the socket took |n| delivered bytes: give the peer credit.
 *           Called after the stream closed, too (quic.h asks for it).
 * shutdown: reset both directions with |app_error|; errors are ignored.
 * flush:    send what the calls before made pending. */
typedef struct atun_pipe_stream_ops {
  ssize_t (*writable)(void *stream);
  ssize_t (*write)(void *stream, const uint8_t *data, size_t len, int fin);
  int (*consume)(void *stream, size_t n);
  int (*shutdown)(void *stream, uint64_t app_error);
  void (*flush)(void *stream);
} atun_pipe_stream_ops;

/* A stream of a connection driven by io/quic_ev: pass a pointer to one of
 * these (living as long as the pipe) as |stream| with atun_pipe_quic_ops.
 * flush is atun_quic_ev_flush(). */
typedef struct atun_pipe_quic {
  atun_quic_conn *conn;
  int64_t stream_id;
} atun_pipe_quic;

extern const atun_pipe_stream_ops atun_pipe_quic_ops;

/* --- the pipe ------------------------------------------------------------- */

/* How a pipe ended.  atun_pipe_end_name() gives a metrics label. */
typedef enum atun_pipe_end {
  ATUN_PIPE_END_NONE = 0,     /* "none": still running (or never started) */
  ATUN_PIPE_END_DONE,         /* "done": FIN both ways, socket closed */
  ATUN_PIPE_END_TCP_RESET,    /* "tcp_reset": the socket was reset or
                                 failed (sys_errno); the stream was shut
                                 down with ATUN_APP_TARGET_RESET */
  ATUN_PIPE_END_STREAM_RESET, /* "stream_reset": the peer reset the stream
                                 (app_error); the socket got a RST */
  ATUN_PIPE_END_STREAM_ERROR, /* "stream_error": the stream refused a call
                                 or closed under a live direction; stream
                                 shut down with ATUN_APP_INTERNAL, RST */
  ATUN_PIPE_END_OVERFLOW,     /* "overflow": delivered beyond backlog_max;
                                 shut down with ATUN_APP_OVERLOADED, RST */
  ATUN_PIPE_END_NOMEM,        /* "nomem": a buffer could not be allocated;
                                 shut down with ATUN_APP_INTERNAL, RST */
  ATUN_PIPE_END_RESET,        /* "reset": atun_pipe_reset() (no callback) */
  ATUN_PIPE_END_ABORTED       /* "aborted": atun_pipe_abort() (no callback) */
} atun_pipe_end;

const char *atun_pipe_end_name(int end);

typedef struct atun_pipe_stats {
  uint64_t bytes_tcp_to_stream; /* read from the socket, taken by the stream */
  uint64_t bytes_stream_to_tcp; /* written to the socket (and consumed) */
  uint64_t room_waits;          /* reading paused: no stream room */
  uint64_t tcp_blocked;         /* socket writes that met EAGAIN */
  uint64_t tcp_writes;          /* writev(2) calls that wrote bytes */
  size_t buffered;              /* backlog now */
  size_t buffered_peak;         /* largest backlog seen */
  int end;                      /* atun_pipe_end */
  int sys_errno;                /* the socket error behind TCP_RESET */
  uint64_t app_error;           /* the peer's code behind STREAM_RESET */
} atun_pipe_stats;

typedef struct atun_pipe atun_pipe;

/* The pipe ended with |end| (an atun_pipe_end, never NONE, RESET or
 * ABORTED); see the stats for details.  The socket is closed.  The owner
 * may free |pipe| here. */
typedef void (*atun_pipe_close_cb)(atun_pipe *pipe, int end, void *user_data);

typedef struct atun_pipe_config {
  struct ev_loop *loop;
  /* A connected, non-blocking TCP socket.  The pipe owns it once started
   * (not after a failed start). */
  int fd;
  const atun_pipe_stream_ops *ops;
  void *stream;
  atun_pipe_close_cb on_close;
  void *user_data;
  /* Bytes the client sent before the pipe existed (SOCKS5 data pipelined
   * behind CONNECT): they go to the stream first.  At most
   * ATUN_PIPE_EARLY_MAX; copied. */
  const uint8_t *early;
  size_t early_len;
  const atun_pipe_settings *settings; /* NULL: defaults */
  const atun_mem *mem;                /* NULL: atun_mem_default() */
} atun_pipe_config;

typedef struct atun_pipe_chunk atun_pipe_chunk;

/* Caller-owned; the fields are internal. */
struct atun_pipe {
  struct ev_loop *loop;
  ev_io rio;
  ev_io wio;
  ev_prepare prep;    /* writes the backlog once per loop round */
  ev_timer end_timer; /* delivers on_close from the loop */
  int fd;
  int started;
  int dirty; /* stream calls made since the last flush */
  const atun_pipe_stream_ops *ops;
  void *stream;
  atun_pipe_close_cb on_close;
  void *user_data;
  const atun_mem *mem;
  atun_pipe_settings settings;
  /* TCP -> stream */
  uint8_t *pending; /* bytes the stream has yet to take, in order */
  size_t pending_off;
  size_t pending_len;
  int tcp_eof;   /* EOF read from the socket */
  int fin_sent;  /* FIN written to the stream */
  int room_wait; /* reading paused for room */
  /* stream -> TCP */
  atun_pipe_chunk *head;
  atun_pipe_chunk *tail;
  size_t head_off;    /* bytes of |head| already written */
  int fin_recv;       /* the stream delivered its FIN */
  int shut_wr;        /* shutdown(SHUT_WR) done */
  int stream_gone;    /* closed: only consume and flush from now on */
  atun_pipe_stats stats;
};

/*
 * Starts |pipe| with |config|: the early data goes to the stream now (what
 * does not fit waits for room), then the socket is watched.  Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  a NULL loop, ops (any of its functions) or
 *                              on_close, a negative fd, early data above
 *                              ATUN_PIPE_EARLY_MAX or NULL with a length,
 *                              a setting out of bounds
 *   ATUN_ERR_NOMEM             no memory for the early data copy
 *   what ops->writable / ops->write returned (the stream is unusable)
 * On error nothing was written to the stream, the caller keeps |fd|, and
 * nothing needs freeing.
 */
int atun_pipe_start(atun_pipe *pipe, const atun_pipe_config *config);

/* The stream delivered |len| bytes (|fin|: and its end).  Call it from the
 * stream_data callback; bytes the stream delivered before the pipe started
 * (and that the owner did not consume) go in the same way, right after
 * atun_pipe_start().  After the pipe ended the bytes are consumed and
 * dropped. */
void atun_pipe_on_stream_data(atun_pipe *pipe, const uint8_t *data, size_t len,
                              int fin);

/* The stream may have room again.  Call it from stream_acked of this
 * stream, and - the connection's send buffer being shared by its streams -
 * for the other pipes of the connection that wait for room
 * (atun_pipe_waits_for_room()).  Cheap when the pipe does not wait. */
void atun_pipe_on_stream_writable(atun_pipe *pipe);

/* The peer reset the stream with |app_error| (the stream_reset callback). */
void atun_pipe_on_stream_reset(atun_pipe *pipe, uint64_t app_error);

/* The stream is gone (the stream_closed callback): the pipe never calls
 * writable, write or shutdown on it again.  A clean close after FIN both
 * ways lets the backlog drain to the socket; otherwise the socket is reset
 * (|has_error|: STREAM_RESET with |app_error|, else STREAM_ERROR). */
void atun_pipe_on_stream_closed(atun_pipe *pipe, int has_error,
                                uint64_t app_error);

/* The owner ends the pipe: the stream is shut down with |app_error|, the
 * socket reset, the backlog consumed and freed.  No callback; |pipe| may be
 * freed on return.  A no-op on a pipe that already ended (a pending
 * on_close is cancelled). */
void atun_pipe_reset(atun_pipe *pipe, uint64_t app_error);

/* The QUIC connection died: the socket is reset and everything freed
 * without a single stream call (the stream no longer exists).  No
 * callback; |pipe| may be freed on return.  A no-op on zeroed storage and
 * after a failed start; on an ended pipe it cancels the pending on_close.
 * This is also how an owner frees a pipe it no longer wants called back. */
void atun_pipe_abort(atun_pipe *pipe);

/* Nonzero while reading is paused for lack of stream room. */
int atun_pipe_waits_for_room(const atun_pipe *pipe);

/* An atun_pipe_end; NONE while running. */
int atun_pipe_get_end(const atun_pipe *pipe);

void atun_pipe_get_stats(const atun_pipe *pipe, atun_pipe_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_PIPE_H */
