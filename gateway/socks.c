/*
 * SOCKS5 listener, static forwards and session streams (see socks.h).
 *
 * Ownership: a client is freed only from the loop (its own timer, a
 * listener callback, the pipe's on_close) or by atun_gw_streams_conn_gone()
 * / atun_gw_dataplane_stop() for piping clients, whose pipe is aborted
 * first.  While CONNECTING a client is the user data of its stream; the
 * user data is cleared before the stream is given up, so a late stream
 * event never finds a freed client.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ca.h"
#include "clock.h"
#include "log.h"
#include "pipe.h"
#include "socks.h"
#include "socks5.h"
#include "tcp.h"

enum { ST_HANDSHAKE, ST_CONNECTING, ST_PIPING };

#define RESULT_NO_AGENT ATUN_GW_CONNECT_NO_AGENT

/* A listener lives on after a reload removed it (|retired|: socket closed)
 * until the last client it accepted is freed, since clients point here. */
typedef struct gw_listener {
  atun_tcp_listener tcp;
  atun_gw *gw;
  struct gw_listener *next;
  const atun_config_forward *fwd; /* NULL: the SOCKS5 listener, else &fcopy */
  atun_config_forward fcopy;      /* the config can be swapped by a reload */
  atun_quic_endpoint listen;      /* as configured (port 0 stays 0) */
  size_t clients;                 /* accepted here and not yet freed */
  int retired;
} gw_listener;

struct atun_gw_dataplane {
  atun_socks5_server *socks;
  gw_listener *listeners; /* bound ones, and retired ones still in use */
  atun_gw_client *clients; /* every client; gw->dp_counts.clients of them */
};

static void listener_unlink(atun_gw_dataplane *dp, gw_listener *lst);

/* What a client needs only until its pipe runs (about 6 KiB, most of a
 * connecting client): freed when the pipe starts, so an idle tunnelled
 * connection costs the gateway the struct below and the pipe's buffers. */
typedef struct client_setup {
  uint64_t last_status; /* of the last failed candidate */
  atun_socks5_conn socks;
  atun_connect_request req;
  char pin[ATUN_AGENT_NAME_MAX + 1];
  atun_route_candidate cands[ATUN_GW_CANDIDATES_MAX];
  size_t ncands, next_cand;
  atun_frame_reader rd;
  uint8_t early[ATUN_GW_HANDSHAKE_READ_MAX];
  size_t early_len;
  /* Forwards: what the client sent while CONNECTING, kept to be sent again
   * to the next candidate; |opt_sent| of it went to the current stream. */
  uint8_t *opt;
  size_t opt_len, opt_sent;
  int opt_done; /* EOF read, or the buffer full: reading waits for the pipe */
} client_setup;

struct atun_gw_client {
  atun_gw *gw;
  gw_listener *lst;
  atun_gw_client *prev, *next;   /* all clients */
  atun_gw_client *sprev, *snext; /* clients of one agent connection */
  int state;
  int fd;
  ev_io io;
  ev_timer timer;
  int retry;               /* what the timer means: RETRY_* */
  client_setup *su;        /* NULL once piping */
  atun_gw_agent_link link; /* conn NULL: no stream */
  int64_t sid;
  atun_pipe_quic pq;
  atun_pipe pipe;
};

/* The client timer's meaning besides a deadline. */
enum { RETRY_NONE, RETRY_NEXT, RETRY_RESOLVE };

static void client_advance(atun_gw_client *cl);
static void resolve(atun_gw_client *cl);

/* --- bookkeeping ----------------------------------------------------------------- */

static void streams_add(atun_gw_client *cl) {
  atun_gw_streams *s = cl->link.streams;
  cl->sprev = NULL;
  cl->snext = s->head;
  if (s->head != NULL) s->head->sprev = cl;
  s->head = cl;
  ++s->count;
  atun_registry_set_active_streams(cl->gw->reg, cl->link.id, cl->link.generation, s->count);
}

static void streams_unlink(atun_gw_streams *s, atun_gw_client *cl) {
  if (cl->sprev != NULL) cl->sprev->snext = cl->snext;
  else s->head = cl->snext;
  if (cl->snext != NULL) cl->snext->sprev = cl->sprev;
}

/* Forgets the stream (the caller dealt with it). */
static void streams_remove(atun_gw_client *cl) {
  atun_gw_streams *s = cl->link.streams;
  if (cl->link.conn == NULL) return;
  streams_unlink(s, cl);
  --s->count;
  atun_registry_set_active_streams(cl->gw->reg, cl->link.id, cl->link.generation, s->count);
  cl->link.conn = NULL;
  cl->sid = -1;
}

static void setup_free(atun_gw_client *cl) {
  if (cl->su == NULL) return;
  atun_frame_reader_free(&cl->su->rd);
  free(cl->su->opt);
  free(cl->su);
  cl->su = NULL;
}

static void client_free(atun_gw_client *cl) {
  atun_gw_dataplane *dp = cl->gw->dp;
  ev_io_stop(cl->gw->loop, &cl->io);
  ev_timer_stop(cl->gw->loop, &cl->timer);
  if (cl->state == ST_PIPING) {
    atun_pipe_stats st;
    atun_pipe_get_stats(&cl->pipe, &st);
    cl->gw->dp_counts.bytes_up += st.bytes_tcp_to_stream;
    cl->gw->dp_counts.bytes_down += st.bytes_stream_to_tcp;
    atun_pipe_abort(&cl->pipe); /* no-op once ended; closes the socket */
  } else if (cl->fd >= 0) {
    close(cl->fd);
  }
  if (cl->link.conn != NULL && cl->sid >= 0)
    atun_quic_stream_set_user_data(cl->link.conn, cl->sid, NULL);
  streams_remove(cl);
  setup_free(cl);
  if (cl->prev != NULL) cl->prev->next = cl->next;
  else dp->clients = cl->next;
  if (cl->next != NULL) cl->next->prev = cl->prev;
  --cl->gw->dp_counts.clients;
  atun_tcp_listener_release(&cl->lst->tcp);
  if (--cl->lst->clients == 0 && cl->lst->retired) listener_unlink(dp, cl->lst);
  free(cl);
}

static void timer_in(atun_gw_client *cl, uint64_t ns) {
  if (ns > ATUN_TCP_TIMEOUT_MAX_NS) ns = 0; /* a deadline already past */
  ev_timer_stop(cl->gw->loop, &cl->timer);
  ev_timer_set(&cl->timer, (double)ns / 1e9, 0.0);
  ev_timer_start(cl->gw->loop, &cl->timer);
}

/* --- replies to the client --------------------------------------------------------- */

/* Writes the queued SOCKS bytes; a socket that can not take 32 bytes of a
 * fresh connection at once is treated as gone.  Returns 0 or -1. */
static int socks_flush(atun_gw_client *cl) {
  size_t len;
  const uint8_t *out = atun_socks5_conn_out(&cl->su->socks, &len);
  if (len == 0) return 0;
  ssize_t n = write(cl->fd, out, len);
  if (n != (ssize_t)len) return -1;
  atun_socks5_conn_out_consume(&cl->su->socks, len);
  return 0;
}

/* The client's outcome is |status|; a forward has no reply to send.
 * Returns 0 or -1 (the reply could not be written). */
static int reply(atun_gw_client *cl, uint64_t status) {
  if (cl->lst->fwd != NULL) return 0;
  atun_socks5_conn_reply(&cl->su->socks, status, NULL, 0);
  return socks_flush(cl);
}

static void fail(atun_gw_client *cl, int result, uint64_t status) {
  char target[ATUN_NAME_MAX + 1];
  ++cl->gw->dp_counts.connects[result];
  if (cl->su->req.target.kind == ATUN_TARGET_ADDR) atun_addr_format(target, &cl->su->req.target.addr);
  else memcpy(target, cl->su->req.target.host, sizeof(target));
  atun_log(ATUN_LOG_INFO, "gateway", "client_connect_failed", "target=%s port=%u result=%s",
           target, (unsigned)cl->su->req.port,
           result == RESULT_NO_AGENT ? "no_agent" : atun_connect_status_name(status));
  reply(cl, status);
  client_free(cl);
}

/* --- the pipe --------------------------------------------------------------------------- */

static void on_pipe_close(atun_pipe *pipe, int end, void *ud) {
  atun_gw_client *cl = ud;
  (void)pipe;
  atun_log(ATUN_LOG_DEBUG, "gateway", "client_closed", "end=%s", atun_pipe_end_name(end));
  client_free(cl);
}

/* ConnectResponse ok: reply, then the pipe takes the socket and the stream;
 * |rest| are stream bytes that followed the response. */
static void start_pipe(atun_gw_client *cl, const uint8_t *rest, size_t restlen, int fin) {
  ev_io_stop(cl->gw->loop, &cl->io);
  ev_timer_stop(cl->gw->loop, &cl->timer);
  if (reply(cl, ATUN_CONNECT_OK) != 0) {
    atun_quic_stream_consume(cl->link.conn, cl->sid, restlen);
    atun_quic_stream_shutdown(cl->link.conn, cl->sid, ATUN_APP_TARGET_RESET);
    ++cl->gw->dp_counts.connects[ATUN_CONNECT_INTERNAL];
    client_free(cl);
    return;
  }
  cl->pq.conn = cl->link.conn;
  cl->pq.stream_id = cl->sid;
  atun_pipe_config pc = {.loop = cl->gw->loop, .fd = cl->fd, .ops = &atun_pipe_quic_ops,
                         .stream = &cl->pq, .on_close = on_pipe_close, .user_data = cl,
                         .early = cl->su->early, .early_len = cl->su->early_len};
  if (cl->su->opt != NULL) { /* a forward: what the stream did not take yet */
    pc.early = cl->su->opt + cl->su->opt_sent;
    pc.early_len = cl->su->opt_len - cl->su->opt_sent;
    cl->gw->dp_counts.bytes_up += cl->su->opt_sent;
  }
  int rv = atun_pipe_start(&cl->pipe, &pc);
  if (rv != 0) {
    atun_quic_stream_consume(cl->link.conn, cl->sid, restlen);
    atun_quic_stream_shutdown(cl->link.conn, cl->sid, ATUN_APP_INTERNAL);
    ++cl->gw->dp_counts.connects[ATUN_CONNECT_INTERNAL];
    client_free(cl);
    return;
  }
  ++cl->gw->dp_counts.connects[ATUN_CONNECT_OK];
  cl->state = ST_PIPING;
  cl->fd = -1; /* the pipe's now */
  setup_free(cl); /* the pipe copied what it needs */
  if (restlen > 0 || fin) atun_pipe_on_stream_data(&cl->pipe, rest, restlen, fin);
}

/* --- session streams ------------------------------------------------------------------ */

/* Gives up the current stream (reset) and tries the next candidate from the
 * loop. */
static void next_later(atun_gw_client *cl, uint64_t status) {
  if (cl->link.conn != NULL && cl->sid >= 0) {
    atun_quic_stream_set_user_data(cl->link.conn, cl->sid, NULL);
    atun_quic_stream_shutdown(cl->link.conn, cl->sid, ATUN_APP_CONNECT_FAILED);
  }
  streams_remove(cl);
  cl->su->last_status = status;
  cl->retry = RETRY_NEXT;
  timer_in(cl, 0);
}

static void on_response(atun_gw_client *cl, const uint8_t *rest, size_t restlen, int fin) {
  atun_msg msg;
  int rv = atun_frame_reader_decode(&cl->su->rd, &msg, atun_mem_default());
  if (rv != 0 || msg.type != ATUN_FRAME_CONNECT_RESPONSE) {
    if (rv == 0) atun_msg_free(&msg, atun_mem_default());
    next_later(cl, ATUN_CONNECT_INTERNAL);
    return;
  }
  uint64_t status = msg.u.connect_response.status;
  atun_msg_free(&msg, atun_mem_default());
  if (status == ATUN_CONNECT_OK) {
    start_pipe(cl, rest, restlen, fin);
    return;
  }
  if (status == ATUN_CONNECT_DENIED) cl->su->next_cand = cl->su->ncands; /* policy: final */
  next_later(cl, status);
}

void atun_gw_client_on_stream_data(atun_gw_client *cl, const uint8_t *data, size_t len,
                                   int fin) {
  if (cl->state == ST_PIPING) {
    atun_pipe_on_stream_data(&cl->pipe, data, len, fin);
    return;
  }
  ssize_t n = atun_frame_reader_feed(&cl->su->rd, data, len);
  if (n < 0) {
    atun_quic_stream_consume(cl->link.conn, cl->sid, len);
    next_later(cl, ATUN_CONNECT_INTERNAL);
    return;
  }
  atun_quic_stream_consume(cl->link.conn, cl->sid, (size_t)n);
  if (atun_frame_reader_ready(&cl->su->rd)) {
    on_response(cl, data + n, len - (size_t)n, fin);
    return;
  }
  if (fin) next_later(cl, ATUN_CONNECT_INTERNAL);
}

void atun_gw_client_on_stream_reset(atun_gw_client *cl, uint64_t app_error) {
  if (cl->state == ST_PIPING) atun_pipe_on_stream_reset(&cl->pipe, app_error);
  else next_later(cl, ATUN_CONNECT_INTERNAL);
}

void atun_gw_client_on_stream_closed(atun_gw_client *cl, int has_error, uint64_t app_error) {
  if (cl->state == ST_PIPING) {
    /* Stays listed: the pipe still consumes and flushes on the connection
     * while its backlog drains, so a dying connection must find it. */
    cl->sid = -1;
    atun_pipe_on_stream_closed(&cl->pipe, has_error, app_error);
    return;
  }
  cl->sid = -1; /* nothing left to reset */
  next_later(cl, ATUN_CONNECT_INTERNAL);
}

void atun_gw_streams_on_writable(atun_gw_streams *streams) {
  /* The connection's send buffer is shared: wake only as many waiting
   * pipes as the free room can feed a full read each, or all of them
   * would read a sliver, find no room and pause again (an epoll_ctl pair
   * and a short read each, per ack).  A pipe woken goes to the back of
   * the list, so the room goes round. */
  ssize_t promised = 0; /* room already counted for pipes woken here */
  atun_gw_client *woken = NULL, *last = NULL;
  for (atun_gw_client *cl = streams->head, *next; cl != NULL; cl = next) {
    next = cl->snext;
    if (cl->state != ST_PIPING || cl->sid < 0 || !atun_pipe_waits_for_room(&cl->pipe))
      continue;
    /* A pipe short of its own stream's room waits for that stream's acks;
     * the others share what the connection has left. */
    ssize_t room = atun_quic_stream_writable(cl->link.conn, cl->sid);
    if (room - promised < (ssize_t)ATUN_GW_WAKE_ROOM_MIN) continue;
    promised += (ssize_t)ATUN_PIPE_READ_MAX;
    streams_unlink(streams, cl);
    cl->snext = NULL;
    cl->sprev = last;
    if (last != NULL) last->snext = cl;
    else woken = cl;
    last = cl;
  }
  if (woken == NULL) return;
  /* Back of the list, then the wake-ups (which may not free clients). */
  atun_gw_client **tail = &streams->head;
  atun_gw_client *prev = NULL;
  while (*tail != NULL) {
    prev = *tail;
    tail = &(*tail)->snext;
  }
  *tail = woken;
  woken->sprev = prev;
  for (atun_gw_client *cl = woken; cl != NULL; cl = cl->snext)
    atun_pipe_on_stream_writable(&cl->pipe);
}

void atun_gw_streams_conn_gone(atun_gw *gw, atun_gw_streams *streams) {
  (void)gw;
  while (streams->head != NULL) {
    atun_gw_client *cl = streams->head;
    cl->sid = -1; /* the stream went with the connection */
    if (cl->state == ST_PIPING) {
      client_free(cl); /* aborts the pipe: the client socket is reset */
      continue;
    }
    next_later(cl, ATUN_CONNECT_UNREACHABLE);
  }
}

/* Forwards send what the client says before the agent answered right
 * behind the ConnectRequest (the agent holds up to ATUN_PIPE_EARLY_MAX
 * bytes until its target is connected): a client that speaks first saves
 * a round trip through the tunnel.  What the stream does not take now
 * becomes the pipe's early data. */
static void opt_send(atun_gw_client *cl) {
  if (cl->su->opt_sent == cl->su->opt_len || cl->sid < 0) return;
  ssize_t n = atun_quic_stream_write(cl->link.conn, cl->sid, cl->su->opt + cl->su->opt_sent,
                                     cl->su->opt_len - cl->su->opt_sent, 0);
  if (n > 0) cl->su->opt_sent += (size_t)n;
}

/* A forward's client sent bytes while CONNECTING.  Keeps at most
 * ATUN_PIPE_EARLY_MAX of them, then stops reading (|opt_done|); an EOF
 * waits for the pipe, which reads it again.  |flush| 0: the caller
 * flushes, and nothing is sent on the stream here.  Returns 0, or -1 when
 * the client reset and was freed (after the flush, the last act). */
static int opt_read(atun_gw_client *cl, int flush) {
  client_setup *su = cl->su;
  if (su->opt == NULL && (su->opt = malloc(ATUN_PIPE_EARLY_MAX)) == NULL) {
    su->opt_done = 1; /* the bytes wait in the socket for the pipe */
    ev_io_stop(cl->gw->loop, &cl->io);
    return 0;
  }
  ssize_t n = read(cl->fd, su->opt + su->opt_len, ATUN_PIPE_EARLY_MAX - su->opt_len);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (n < 0) { /* the client reset: so does the stream */
    atun_quic_conn *conn = cl->sid >= 0 ? cl->link.conn : NULL;
    if (conn != NULL) atun_quic_stream_shutdown(conn, cl->sid, ATUN_APP_TARGET_RESET);
    client_free(cl);
    if (conn != NULL) atun_quic_ev_flush(conn);
    return -1;
  }
  su->opt_len += (size_t)n;
  if (n == 0 || su->opt_len == ATUN_PIPE_EARLY_MAX) {
    su->opt_done = 1;
    ev_io_stop(cl->gw->loop, &cl->io);
  }
  if (flush && n > 0 && cl->link.conn != NULL && cl->sid >= 0) {
    opt_send(cl);
    atun_quic_ev_flush(cl->link.conn);
  }
  return 0;
}

/* Opens a stream on candidate |cand| and sends the ConnectRequest.
 * Returns 0 (waiting for the response) or a connect status to go on with. */
static uint64_t try_candidate(atun_gw_client *cl, const atun_route_candidate *cand) {
  atun_gw_agent_link link;
  if (atun_gw_agents_link(cl->gw, cand->agent, &link) != 0) return ATUN_CONNECT_UNREACHABLE;
  uint8_t frame[ATUN_SESSION_PAYLOAD_MAX + 16];
  atun_msg msg = {.type = ATUN_FRAME_CONNECT_REQUEST};
  msg.u.connect_request = cl->su->req;
  ssize_t flen = atun_frame_encode(frame, sizeof(frame), &msg);
  if (flen < 0) return ATUN_CONNECT_INTERNAL;
  int64_t sid;
  if (atun_quic_stream_open(link.conn, &sid, cl) != 0) return ATUN_CONNECT_INTERNAL;
  if (atun_quic_stream_write(link.conn, sid, frame, (size_t)flen, 0) != flen) {
    atun_quic_stream_set_user_data(link.conn, sid, NULL);
    atun_quic_stream_shutdown(link.conn, sid, ATUN_APP_INTERNAL);
    atun_quic_ev_flush(link.conn);
    return ATUN_CONNECT_INTERNAL;
  }
  cl->link = link;
  cl->sid = sid;
  cl->su->opt_sent = 0;
  opt_send(cl);
  streams_add(cl);
  atun_frame_reader_free(&cl->su->rd);
  atun_frame_reader_init(&cl->su->rd, ATUN_SESSION_PAYLOAD_MAX, atun_mem_default());
  timer_in(cl, ATUN_GW_CONNECT_RESPONSE_TIMEOUT_NS);
  return ATUN_CONNECT_OK;
}

/* Tries candidates in order until one has a stream open; none left: the
 * client gets the last failure.  May free |cl|; the flush comes last. */
static void client_advance(atun_gw_client *cl) {
  uint64_t status = cl->su->last_status;
  while (cl->su->next_cand < cl->su->ncands) {
    status = try_candidate(cl, &cl->su->cands[cl->su->next_cand++]);
    if (status == ATUN_CONNECT_OK) {
      atun_quic_ev_flush(cl->link.conn); /* may end in conn_gone: retry is queued */
      return;
    }
    cl->su->last_status = status;
  }
  fail(cl, cl->su->ncands == 0 ? RESULT_NO_AGENT : (int)status, status);
}

static void resolve(atun_gw_client *cl) {
  atun_route_target t = {0};
  if (cl->su->req.target.kind == ATUN_TARGET_ADDR) {
    t.kind = ATUN_ROUTE_TARGET_ADDR;
    t.addr = cl->su->req.target.addr;
  } else {
    t.kind = ATUN_ROUTE_TARGET_NAME;
    t.name = cl->su->req.target.host;
    t.namelen = strlen(cl->su->req.target.host);
  }
  atun_registry_pin pin = {.kind = ATUN_REGISTRY_PIN_NONE};
  if (cl->su->pin[0] != '\0') {
    size_t len = strlen(cl->su->pin);
    if (len == ATUN_UUID_LEN && atun_gw_uuid_parse(pin.id, cl->su->pin, len) == 0)
      pin.kind = ATUN_REGISTRY_PIN_ID;
    else {
      pin.kind = ATUN_REGISTRY_PIN_NAME;
      pin.name = cl->su->pin;
    }
  }
  ssize_t n = atun_registry_resolve(cl->gw->reg, &t, &pin, atun_gw_mono_now(), cl->su->cands,
                                    ATUN_GW_CANDIDATES_MAX);
  cl->su->ncands = n > 0 ? (size_t)n : 0;
  cl->su->next_cand = 0;
  /* Nobody routes there: host unreachable (socks.h says why not 0x02). */
  cl->su->last_status = ATUN_CONNECT_DNS_FAILURE;
  cl->state = ST_CONNECTING;
  if (cl->lst->fwd != NULL) {
    /* What the client sent already rides in the ConnectRequest's packet. */
    if (!cl->su->opt_done && cl->su->opt_len == 0 && opt_read(cl, 0) != 0) return;
    if (!cl->su->opt_done) ev_io_start(cl->gw->loop, &cl->io);
  } else {
    ev_io_stop(cl->gw->loop, &cl->io);
  }
  if (atun_ca_sysrand()->fill(cl->su->req.session_id, sizeof(cl->su->req.session_id),
                              atun_ca_sysrand()->user_data) != 0) {
    fail(cl, ATUN_CONNECT_INTERNAL, ATUN_CONNECT_INTERNAL);
    return;
  }
  client_advance(cl);
}

/* --- the client socket -------------------------------------------------------------------- */

static void handshake_input(atun_gw_client *cl, const uint8_t *buf, size_t len) {
  atun_gw_dataplane *dp = cl->gw->dp;
  ssize_t n = atun_socks5_conn_feed(&cl->su->socks, dp->socks, buf, len);
  if (n < 0 || socks_flush(cl) != 0) {
    ++cl->gw->dp_counts.handshake_failures;
    atun_log(ATUN_LOG_INFO, "gateway", "socks5_refused", "reason=%s",
             atun_socks5_close_reason_name(atun_socks5_conn_close_reason(&cl->su->socks)));
    client_free(cl);
    return;
  }
  if (atun_socks5_conn_state(&cl->su->socks) != ATUN_SOCKS5_CONNECT) {
    timer_in(cl, atun_socks5_conn_expiry(&cl->su->socks) - atun_gw_mono_now());
    return;
  }
  const atun_socks5_request *r = atun_socks5_conn_request(&cl->su->socks);
  cl->su->req.target = r->target;
  cl->su->req.port = r->port;
  memcpy(cl->su->pin, r->pin, sizeof(cl->su->pin));
  cl->su->early_len = len - (size_t)n;
  memcpy(cl->su->early, buf + n, cl->su->early_len);
  resolve(cl);
}

static void on_client_io(struct ev_loop *loop, ev_io *w, int revents) {
  atun_gw_client *cl = w->data;
  uint8_t buf[ATUN_GW_HANDSHAKE_READ_MAX];
  (void)loop, (void)revents;
  if (cl->lst->fwd != NULL) {
    (void)opt_read(cl, 1);
    return;
  }
  ssize_t n = read(cl->fd, buf, sizeof(buf));
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    client_free(cl);
    return;
  }
  handshake_input(cl, buf, (size_t)n);
}

static void on_client_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  atun_gw_client *cl = w->data;
  (void)loop, (void)revents;
  int retry = cl->retry;
  cl->retry = RETRY_NONE;
  if (retry == RETRY_RESOLVE) {
    resolve(cl);
    return;
  }
  if (retry == RETRY_NEXT) {
    client_advance(cl);
    return;
  }
  if (cl->state == ST_HANDSHAKE) {
    if (atun_socks5_conn_handle_expiry(&cl->su->socks, atun_gw_mono_now()) == 0) {
      timer_in(cl, atun_socks5_conn_expiry(&cl->su->socks) - atun_gw_mono_now());
      return;
    }
    ++cl->gw->dp_counts.handshake_failures;
    client_free(cl);
    return;
  }
  /* The agent never answered the ConnectRequest. */
  next_later(cl, ATUN_CONNECT_TIMEOUT);
}

static int on_accept(atun_tcp_listener *l, int fd, const atun_tcp_endpoint *peer, void *ud) {
  gw_listener *lst = ud;
  atun_gw *gw = lst->gw;
  atun_gw_dataplane *dp = gw->dp;
  (void)l, (void)peer;
  if (gw->dp_counts.clients >= gw->cfg.limits.client_max_connections) return -1;
  atun_gw_client *cl = calloc(1, sizeof(*cl));
  if (cl == NULL) return -1;
  if ((cl->su = calloc(1, sizeof(*cl->su))) == NULL) {
    free(cl);
    return -1;
  }
  cl->gw = gw;
  cl->lst = lst;
  cl->fd = fd;
  cl->sid = -1;
  atun_frame_reader_init(&cl->su->rd, ATUN_SESSION_PAYLOAD_MAX, atun_mem_default());
  ev_io_init(&cl->io, on_client_io, fd, EV_READ);
  ev_timer_init(&cl->timer, on_client_timer, 0.0, 0.0);
  cl->io.data = cl->timer.data = cl;
  cl->next = dp->clients;
  if (dp->clients != NULL) dp->clients->prev = cl;
  dp->clients = cl;
  ++gw->dp_counts.clients;
  ++lst->clients;
  if (lst->fwd != NULL) {
    cl->su->req.target = lst->fwd->target;
    cl->su->req.port = lst->fwd->port;
    snprintf(cl->su->pin, sizeof(cl->su->pin), "%s", lst->fwd->agent);
    /* Runs from the loop: a failure frees the client, and the listener
     * must have counted it as taken first. */
    cl->retry = RETRY_RESOLVE;
    ev_timer_set(&cl->timer, 0.0, 0.0);
    ev_timer_start(gw->loop, &cl->timer);
    return 0;
  }
  atun_socks5_conn_init(&cl->su->socks, dp->socks, atun_gw_mono_now());
  ev_io_start(gw->loop, &cl->io);
  timer_in(cl, atun_socks5_conn_expiry(&cl->su->socks) - atun_gw_mono_now());
  return 0;
}

/* --- listeners ------------------------------------------------------------------------------ */

static int endpoint_same(const atun_quic_endpoint *a, const atun_quic_endpoint *b) {
  return a->port == b->port && a->addr.family == b->addr.family &&
         memcmp(a->addr.bytes, b->addr.bytes, sizeof(a->addr.bytes)) == 0;
}

static const char *kind_name(const gw_listener *lst) {
  return lst->fwd != NULL ? "forward" : "socks5";
}

static void listener_unlink(atun_gw_dataplane *dp, gw_listener *lst) {
  gw_listener **pp = &dp->listeners;
  while (*pp != lst) pp = &(*pp)->next;
  *pp = lst->next;
  free(lst);
}

/* Binds |at| for a forward (|fwd|, copied) or the SOCKS5 listener (NULL).
 * A bind failure is logged (client_listen_failed) and leaves nothing
 * behind.  Returns 0, ATUN_ERR_NOMEM or what atun_tcp_listener_init
 * returns. */
static int listener_add(atun_gw *gw, const atun_quic_endpoint *at,
                        const atun_config_forward *fwd) {
  gw_listener *lst = calloc(1, sizeof(*lst));
  if (lst == NULL) return ATUN_ERR_NOMEM;
  lst->gw = gw;
  lst->listen = *at;
  if (fwd != NULL) {
    lst->fcopy = *fwd;
    lst->fwd = &lst->fcopy;
  }
  atun_tcp_listener_settings ts;
  atun_tcp_listener_settings_default(&ts);
  ts.conns_max = gw->cfg.limits.client_max_connections;
  atun_tcp_endpoint ep = {.addr = at->addr, .port = at->port};
  char addr[ATUN_ADDR_STRLEN];
  atun_addr_format(addr, &at->addr);
  int rv = atun_tcp_listener_init(&lst->tcp, gw->loop, &ep, &ts, on_accept, lst);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "gateway", "client_listen_failed", "kind=%s address=%s port=%u "
             "error=%s", kind_name(lst), addr, (unsigned)at->port, atun_strerror(rv));
    free(lst);
    return rv;
  }
  gw_listener **tail = &gw->dp->listeners; /* config order, for the status */
  while (*tail != NULL) tail = &(*tail)->next;
  *tail = lst;
  atun_log(ATUN_LOG_INFO, "gateway", "client_listening", "kind=%s address=%s port=%u",
           kind_name(lst), addr, (unsigned)atun_tcp_listener_local(&lst->tcp)->port);
  return 0;
}

/* Closes the socket of |lst|; the clients it accepted go on, and the last
 * of them frees it (client_free). */
static void listener_retire(atun_gw_dataplane *dp, gw_listener *lst) {
  char addr[ATUN_ADDR_STRLEN];
  atun_addr_format(addr, &lst->listen.addr);
  atun_log(ATUN_LOG_INFO, "gateway", "client_listener_closed", "kind=%s address=%s port=%u "
           "clients=%zu", kind_name(lst), addr, (unsigned)lst->listen.port, lst->clients);
  atun_tcp_listener_free(&lst->tcp);
  lst->retired = 1;
  if (lst->clients == 0) listener_unlink(dp, lst);
}

/* The live listener of kind |forward| on configured endpoint |at|, or NULL. */
static gw_listener *listener_find(atun_gw_dataplane *dp, const atun_quic_endpoint *at,
                                  int forward) {
  for (gw_listener *lst = dp->listeners; lst != NULL; lst = lst->next)
    if (!lst->retired && (lst->fwd != NULL) == forward && endpoint_same(&lst->listen, at))
      return lst;
  return NULL;
}

static const atun_config_forward *forward_at(const atun_config_gateway *cfg,
                                             const atun_quic_endpoint *at) {
  for (size_t i = 0; i < cfg->forward_count; ++i)
    if (endpoint_same(&cfg->forwards[i].listen, at)) return &cfg->forwards[i];
  return NULL;
}

/* --- lifetime ------------------------------------------------------------------------------- */

/* The SOCKS5 machine for the users of |cfg|: the server copies them. */
static int socks_server_new(const atun_config_gateway *cfg, atun_socks5_server **out) {
  atun_socks5_user *users = calloc(cfg->socks5_user_count + 1, sizeof(*users));
  if (users == NULL) return ATUN_ERR_NOMEM;
  for (size_t i = 0; i < cfg->socks5_user_count; ++i) {
    users[i].name = cfg->socks5_users[i].username;
    users[i].namelen = strlen(cfg->socks5_users[i].username);
    users[i].pass = cfg->socks5_users[i].password;
    users[i].passlen = strlen(cfg->socks5_users[i].password);
  }
  int rv = atun_socks5_server_new(out, NULL, users, cfg->socks5_user_count, atun_mem_default());
  free(users);
  return rv;
}

/* Binds what |cfg| asks for and no listener has yet.  A client port already
 * taken (two gateways on one host with the default 127.0.0.1:1080) is
 * logged and skipped: agents, the API and the other listeners keep working,
 * which is what an operator needs to fix it. */
static int listeners_open(atun_gw *gw, const atun_config_gateway *cfg) {
  int rv = 0;
  if (cfg->socks5_enabled && listener_find(gw->dp, &cfg->socks5_listen, 0) == NULL)
    rv = listener_add(gw, &cfg->socks5_listen, NULL);
  for (size_t i = 0; i < cfg->forward_count && rv != ATUN_ERR_NOMEM; ++i)
    if (listener_find(gw->dp, &cfg->forwards[i].listen, 1) == NULL)
      rv = listener_add(gw, &cfg->forwards[i].listen, &cfg->forwards[i]);
  return rv == ATUN_ERR_NOMEM ? rv : 0;
}

int atun_gw_dataplane_start(atun_gw *gw) {
  gw->dp = calloc(1, sizeof(*gw->dp));
  if (gw->dp == NULL) return ATUN_ERR_NOMEM;
  int rv = socks_server_new(&gw->cfg, &gw->dp->socks);
  return rv != 0 ? rv : listeners_open(gw, &gw->cfg);
}

/* A listener whose configured address stays keeps its socket (a forward
 * takes the new target for its next clients); the others close before the
 * new ones bind, so an address may move from one listener to another. */
int atun_gw_dataplane_reload(atun_gw *gw, const atun_config_gateway *cfg) {
  atun_gw_dataplane *dp = gw->dp;
  atun_socks5_server *socks;
  int rv = socks_server_new(cfg, &socks);
  if (rv != 0) return rv;
  /* A handshake under way goes on against the new users. */
  atun_socks5_server_del(dp->socks);
  dp->socks = socks;
  gw_listener *next;
  for (gw_listener *lst = dp->listeners; lst != NULL; lst = next) {
    next = lst->next;
    if (lst->retired) continue;
    const atun_config_forward *f = lst->fwd != NULL ? forward_at(cfg, &lst->listen) : NULL;
    if (f != NULL) lst->fcopy = *f;
    else if (lst->fwd != NULL || !cfg->socks5_enabled ||
             !endpoint_same(&lst->listen, &cfg->socks5_listen))
      listener_retire(dp, lst);
  }
  return listeners_open(gw, cfg);
}

void atun_gw_dataplane_pause(atun_gw *gw) {
  if (gw->dp == NULL) return;
  gw_listener *next;
  for (gw_listener *lst = gw->dp->listeners; lst != NULL; lst = next) {
    next = lst->next;
    if (!lst->retired) listener_retire(gw->dp, lst);
  }
}

size_t atun_gw_dataplane_listeners(const atun_gw *gw, atun_gw_listener_info *out, size_t max) {
  size_t n = 0;
  for (const gw_listener *lst = gw->dp != NULL ? gw->dp->listeners : NULL; lst != NULL;
       lst = lst->next) {
    if (lst->retired) continue;
    if (n < max) {
      out[n].fwd = lst->fwd;
      out[n].listen = *atun_tcp_listener_local(&lst->tcp);
      out[n].clients = lst->clients;
    }
    ++n;
  }
  return n;
}

void atun_gw_dataplane_stop(atun_gw *gw) {
  atun_gw_dataplane *dp = gw->dp;
  if (dp == NULL) return;
  while (dp->clients != NULL) {
    atun_gw_client *cl = dp->clients;
    if (cl->state == ST_CONNECTING && cl->link.conn != NULL && cl->sid >= 0)
      atun_quic_stream_set_user_data(cl->link.conn, cl->sid, NULL);
    client_free(cl);
  }
  while (dp->listeners != NULL) {
    gw_listener *lst = dp->listeners;
    atun_tcp_listener_free(&lst->tcp);
    listener_unlink(dp, lst);
  }
  atun_socks5_server_del(dp->socks);
  free(dp);
  gw->dp = NULL;
}
