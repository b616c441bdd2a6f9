/*
 * The small stream interface between a control-session state machine
 * (session_agent.h, session_gw.h) and whatever carries its control stream:
 * an ngtcp2 stream in the daemons, a simulated stream in atun-sim, a plain
 * byte pipe in the tests.
 *
 * The machines never call out to a transport.  The caller drives them:
 *
 *   in:   on_transport_connected(ts)   the connection is up, stream open
 *         on_data(ts, bytes, len)      bytes read from the control stream
 *         on_stream_closed(ts)         the control stream ended (FIN/reset)
 *         on_transport_failed(ts)      the connection is gone
 *         handle_expiry(ts)            the machine's timer fired
 *
 *   out:  write(dest, destlen)         encoded frames to put on the stream,
 *                                      drained after every call above
 *         want_close(&app_error)       once the written bytes are out, close
 *                                      the connection with |app_error|
 *         get_expiry()                 when to call handle_expiry() next
 *         events                       through the machine's callback
 *
 * Outbound bytes wait in an |atun_outq|: a FIFO with a stated byte bound.
 * A peer that stops reading the control stream (or a caller that stops
 * draining) makes the queue hit the bound; the machine then gives the
 * session up with ATUN_APP_OVERLOADED rather than buffer without limit.
 *
 * The queue keeps its bytes contiguous so write() is one memcpy.  Storage
 * grows on demand, never past |max|, and is released whenever the queue
 * runs empty while holding more than ATUN_OUTQ_KEEP bytes: a gateway with
 * thousands of idle agents must not keep each one's largest burst.
 */
#ifndef ATUN_STREAM_H
#define ATUN_STREAM_H

#include <string.h>

#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Smallest |max| a session accepts: room for the largest frame a session
 * machine queues apart from a RouteAdvertise (a certificate renewal carrying
 * a 16 KiB DER blob and a 1 KiB message), twice over. */
#define ATUN_OUTQ_MIN ((size_t)40 * 1024)
/* Storage kept across an empty queue; larger blocks are released. */
#define ATUN_OUTQ_KEEP ((size_t)4096)

typedef struct atun_outq {
  const atun_mem *mem;
  uint8_t *buf;
  size_t cap;  /* bytes allocated at |buf| */
  size_t head; /* first unread byte */
  size_t len;  /* unread bytes from |head| */
  size_t max;  /* bound on |len| */
} atun_outq;

/* Prepares an empty queue of at most |max| bytes.  Allocates nothing. */
static inline void atun_outq_init(atun_outq *q, size_t max,
                                  const atun_mem *mem) {
  memset(q, 0, sizeof(*q));
  q->mem = mem;
  q->max = max;
}

static inline void atun_outq_free(atun_outq *q) {
  atun_mem_free(q->mem, q->buf);
  q->buf = NULL;
  q->cap = q->head = q->len = 0;
}

/* Drops every queued byte (the transport they were meant for is gone). */
static inline void atun_outq_clear(atun_outq *q) {
  if (q->cap > ATUN_OUTQ_KEEP) {
    atun_outq_free(q);
    return;
  }
  q->head = q->len = 0;
}

static inline size_t atun_outq_len(const atun_outq *q) { return q->len; }

/* Returns a pointer to |n| (> 0) writable bytes at the tail, to be committed with
 * atun_outq_commit(), or NULL with |*perr| set to ATUN_ERR_FULL (|n| more
 * bytes would pass |max|) or ATUN_ERR_NOMEM.  On error the queue is
 * unchanged. */
static inline uint8_t *atun_outq_reserve(atun_outq *q, size_t n, int *perr) {
  ATUN_ASSERT(n > 0);
  if (n > q->max - q->len) {
    *perr = ATUN_ERR_FULL;
    return NULL;
  }
  size_t need = q->len + n;
  if (q->head + need <= q->cap) return q->buf + q->head + q->len;
  if (need <= q->cap) {
    memmove(q->buf, q->buf + q->head, q->len);
    q->head = 0;
    return q->buf + q->len;
  }
  /* Doubling keeps the copies linear in the bytes queued; the cap at |max|
   * keeps a full queue from holding twice its bound. */
  size_t cap = q->cap < 256 ? 256 : q->cap;
  if (cap > q->max) cap = q->max;
  while (cap < need) cap = cap > q->max / 2 ? q->max : cap * 2;
  uint8_t *p = atun_mem_malloc(q->mem, cap);
  if (p == NULL) {
    *perr = ATUN_ERR_NOMEM;
    return NULL;
  }
  if (q->len > 0) memcpy(p, q->buf + q->head, q->len);
  atun_mem_free(q->mem, q->buf);
  q->buf = p;
  q->cap = cap;
  q->head = 0;
  return p + q->len;
}

/* Makes |n| bytes written after atun_outq_reserve(q, m >= n) part of the
 * queue. */
static inline void atun_outq_commit(atun_outq *q, size_t n) {
  ATUN_ASSERT(q->head + q->len + n <= q->cap);
  q->len += n;
}

/* Moves up to |destlen| queued bytes to |dest| and returns how many. */
static inline size_t atun_outq_read(atun_outq *q, uint8_t *dest,
                                    size_t destlen) {
  size_t n = destlen < q->len ? destlen : q->len;
  if (n == 0) return 0;
  memcpy(dest, q->buf + q->head, n);
  q->head += n;
  q->len -= n;
  if (q->len == 0) atun_outq_clear(q);
  return n;
}

#ifdef __cplusplus
}
#endif

#endif /* ATUN_STREAM_H */
