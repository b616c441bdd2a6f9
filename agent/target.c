/*
 * The agent's data plane: ConnectRequest -> policy -> DNS -> connect ->
 * ConnectResponse -> pipe.  See target.h.
 */
#include "target.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "dns.h"
#include "log.h"
#include "pipe.h"
#include "policy.h"
#include "quic_ev.h"
#include "tcp.h"

#define SESSIONS_LIMIT 65536
/* A ConnectResponse: header, status varint, message (cut to this). */
#define RESPONSE_MSG_MAX 128
#define RESPONSE_BUF (ATUN_FRAME_HEADER_MAX + 16 + RESPONSE_MSG_MAX)

typedef enum rstate { ST_HEADER = 0, ST_RESOLVING, ST_CONNECTING, ST_PIPE } rstate;

/* The pipe's view of the stream, with a way back to the data plane so that
 * flushes can wait for the end of the handler that caused them. */
typedef struct dp_stream {
  atun_pipe_quic q; /* first: the quic ops take it as their stream */
  agent_dp *dp;
} dp_stream;

typedef struct rec {
  agent_dp *dp;
  struct rec *prev, *next;
  atun_quic_conn *conn;
  int64_t id;
  rstate state;
  atun_frame_reader reader;
  /* Stream bytes behind the header, not consumed yet: the target's first. */
  uint8_t *early;
  size_t early_len;
  int fin;
  uint16_t port;
  char target[ATUN_NAME_MAX + 1]; /* for logs */
  atun_addr addrs[ATUN_DNS_ADDRS_MAX];
  size_t naddrs;
  size_t next_addr;
  int last_status;
  atun_tstamp deadline;
  atun_dns_query query;
  atun_tcp_connect tc;
  dp_stream stream;
  atun_pipe pipe;
} rec;

struct agent_dp {
  struct ev_loop *loop;
  atun_dns *dns;
  atun_policy *policy;
  uint64_t connect_timeout_ns;
  size_t sessions_max;
  size_t count;
  rec *head;
  agent_dp_count_cb on_count;
  void *user_data;
  int depth;                  /* inside a handler of ours */
  atun_quic_conn *flush_conn; /* flush wanted at depth 0 */
};

/* --- flushing ------------------------------------------------------------- */

static void enter(agent_dp *dp) { ++dp->depth; }

static void want_flush(agent_dp *dp, atun_quic_conn *conn) {
  if (dp->depth > 0) {
    dp->flush_conn = conn;
    return;
  }
  atun_quic_ev_flush(conn);
}

/* Last step of every handler: nothing of ours is touched after the flush. */
static void leave(agent_dp *dp) {
  if (--dp->depth > 0 || dp->flush_conn == NULL) return;
  atun_quic_conn *conn = dp->flush_conn;
  dp->flush_conn = NULL;
  atun_quic_ev_flush(conn);
}

static ssize_t s_writable(void *s) { return atun_pipe_quic_ops.writable(s); }
static ssize_t s_write(void *s, const uint8_t *d, size_t n, int fin) {
  return atun_pipe_quic_ops.write(s, d, n, fin);
}
static int s_consume(void *s, size_t n) { return atun_pipe_quic_ops.consume(s, n); }
static int s_shutdown(void *s, uint64_t e) { return atun_pipe_quic_ops.shutdown(s, e); }
static void s_flush(void *s) {
  dp_stream *st = s;
  want_flush(st->dp, st->q.conn);
}

static const atun_pipe_stream_ops stream_ops = {
    .writable = s_writable, .write = s_write, .consume = s_consume,
    .shutdown = s_shutdown, .flush = s_flush};

/* --- records ----------------------------------------------------------------- */

static void set_count(agent_dp *dp, size_t count) {
  dp->count = count;
  if (dp->on_count != NULL) dp->on_count(count, dp->user_data);
}

/* Stops whatever runs for |r| without a stream call and frees it. */
static void rec_free(rec *r, int forget_stream) {
  agent_dp *dp = r->dp;
  atun_dns_cancel(&r->query);
  atun_tcp_connect_cancel(&r->tc);
  if (r->state == ST_PIPE) atun_pipe_abort(&r->pipe);
  if (forget_stream) atun_quic_stream_set_user_data(r->conn, r->id, NULL);
  atun_frame_reader_free(&r->reader);
  free(r->early);
  if (r->prev != NULL) r->prev->next = r->next;
  else dp->head = r->next;
  if (r->next != NULL) r->next->prev = r->prev;
  free(r);
  set_count(dp, dp->count - 1);
}

/* The held bytes will never reach the target: give their credit back. */
static void drop_early(rec *r) {
  if (r->early_len > 0) atun_quic_stream_consume(r->conn, r->id, r->early_len);
  r->early_len = 0;
}

/* Ends |r| with a reset of the stream (|app_error|). */
static void rec_reset(rec *r, uint64_t app_error, const char *why) {
  atun_log(ATUN_LOG_INFO, "agent", "session_reset", "stream=%lld target=%s reason=%s "
           "code=%s", (long long)r->id, r->target[0] ? r->target : "-", why,
           atun_app_error_name(app_error));
  drop_early(r);
  atun_quic_stream_shutdown(r->conn, r->id, app_error);
  want_flush(r->dp, r->conn);
  rec_free(r, 1);
}

static ssize_t encode_response(uint8_t *buf, int status, const char *msg) {
  char text[RESPONSE_MSG_MAX];
  snprintf(text, sizeof(text), "%s", msg);
  atun_msg m = {.type = ATUN_FRAME_CONNECT_RESPONSE};
  m.u.connect_response.status = (uint64_t)status;
  m.u.connect_response.message = text;
  return atun_frame_encode(buf, RESPONSE_BUF, &m);
}

/* Writes ConnectResponse; a failure ends the stream with FIN behind it.
 * Returns 0 or -1 (the stream could not take it: reset). */
static int write_response(atun_quic_conn *conn, int64_t id, int status, const char *msg) {
  uint8_t buf[RESPONSE_BUF];
  ssize_t n = encode_response(buf, status, msg);
  if (n < 0) return -1;
  ssize_t took = atun_quic_stream_write(conn, id, buf, (size_t)n, status != ATUN_CONNECT_OK);
  if (took != n) {
    atun_quic_stream_shutdown(conn, id, ATUN_APP_INTERNAL);
    return -1;
  }
  return 0;
}

/* Answers a failure and ends |r|. */
static void rec_fail(rec *r, int status, const char *msg) {
  atun_log(ATUN_LOG_INFO, "agent", "session_failed", "stream=%lld target=%s port=%u "
           "status=%s detail=%s", (long long)r->id, r->target, (unsigned)r->port,
           atun_connect_status_name((uint64_t)status), msg);
  drop_early(r);
  write_response(r->conn, r->id, status, msg);
  want_flush(r->dp, r->conn);
  rec_free(r, 1);
}

/* --- pipe ------------------------------------------------------------------- */

static void on_pipe_close(atun_pipe *pipe, int end, void *ud) {
  rec *r = ud;
  agent_dp *dp = r->dp;
  atun_pipe_stats st;
  atun_pipe_get_stats(pipe, &st);
  atun_log(ATUN_LOG_INFO, "agent", "session_closed", "stream=%lld target=%s port=%u "
           "end=%s to_target=%llu from_target=%llu", (long long)r->id, r->target,
           (unsigned)r->port, atun_pipe_end_name(end),
           (unsigned long long)st.bytes_stream_to_tcp,
           (unsigned long long)st.bytes_tcp_to_stream);
  enter(dp);
  r->state = ST_HEADER; /* the pipe is over: nothing to abort */
  rec_free(r, 1);
  leave(dp);
}

static void start_pipe(rec *r, int fd) {
  if (write_response(r->conn, r->id, ATUN_CONNECT_OK, "connected") != 0) {
    atun_tcp_reset(fd);
    drop_early(r);
    want_flush(r->dp, r->conn);
    rec_free(r, 1);
    return;
  }
  r->stream = (dp_stream){.q = {.conn = r->conn, .stream_id = r->id}, .dp = r->dp};
  atun_pipe_config pc = {.loop = r->dp->loop, .fd = fd, .ops = &stream_ops,
                         .stream = &r->stream, .on_close = on_pipe_close, .user_data = r};
  int rv = atun_pipe_start(&r->pipe, &pc);
  if (rv != 0) {
    atun_tcp_reset(fd);
    rec_reset(r, ATUN_APP_INTERNAL, atun_strerror(rv));
    return;
  }
  r->state = ST_PIPE;
  atun_log(ATUN_LOG_INFO, "agent", "session_open", "stream=%lld target=%s port=%u",
           (long long)r->id, r->target, (unsigned)r->port);
  if (r->early_len > 0 || r->fin) {
    /* Not consumed yet: the pipe consumes what the socket takes. */
    size_t n = r->early_len;
    r->early_len = 0;
    atun_pipe_on_stream_data(&r->pipe, r->early, n, r->fin);
  }
  free(r->early);
  r->early = NULL;
  want_flush(r->dp, r->conn);
}

/* --- connect ---------------------------------------------------------------- */

static void connect_next(rec *r);

static void on_connect(atun_tcp_connect *tc, int status, int fd, int sys_errno, void *ud) {
  rec *r = ud;
  agent_dp *dp = r->dp;
  (void)tc, (void)sys_errno;
  enter(dp);
  if (status == ATUN_CONNECT_OK) {
    start_pipe(r, fd);
  } else {
    r->last_status = status;
    ++r->next_addr;
    connect_next(r);
  }
  leave(dp);
}

/* Tries the next address under the one deadline of the request; the last
 * failure's status answers when none is left. */
static void connect_next(rec *r) {
  r->state = ST_CONNECTING;
  while (r->next_addr < r->naddrs) {
    atun_tstamp now = atun_quic_ev_now(r->dp->loop);
    if (now >= r->deadline) {
      rec_fail(r, ATUN_CONNECT_TIMEOUT, "connect timed out");
      return;
    }
    atun_tcp_endpoint ep = {.addr = r->addrs[r->next_addr], .port = r->port};
    uint64_t left = r->deadline - now;
    if (left > ATUN_TCP_TIMEOUT_MAX_NS) left = ATUN_TCP_TIMEOUT_MAX_NS;
    if (atun_tcp_connect_start(&r->tc, r->dp->loop, &ep, left, on_connect, r) == 0)
      return;
    r->last_status = ATUN_CONNECT_INTERNAL;
    ++r->next_addr;
  }
  const char *msg = "connect failed";
  switch (r->last_status) {
  case ATUN_CONNECT_REFUSED: msg = "connection refused"; break;
  case ATUN_CONNECT_UNREACHABLE: msg = "target unreachable"; break;
  case ATUN_CONNECT_TIMEOUT: msg = "connect timed out"; break;
  default: break;
  }
  rec_fail(r, r->last_status, msg);
}

static void start_connect(rec *r) {
  r->next_addr = 0;
  r->last_status = ATUN_CONNECT_INTERNAL;
  r->deadline = atun_quic_ev_now(r->dp->loop) + r->dp->connect_timeout_ns;
  connect_next(r);
}

/* --- DNS ---------------------------------------------------------------------- */

static void on_dns(atun_dns_query *q, const atun_dns_result *res, void *ud) {
  rec *r = ud;
  agent_dp *dp = r->dp;
  (void)q;
  enter(dp);
  if (res->status != ATUN_CONNECT_OK) {
    rec_fail(r, res->status, atun_dns_reason_name(res->reason));
  } else {
    atun_policy_verdict v;
    int st = atun_policy_check_resolved(dp->policy, res->addrs, res->naddrs, &v);
    if (st != ATUN_CONNECT_OK) {
      rec_fail(r, st, v.reason);
    } else {
      memcpy(r->addrs, res->addrs, res->naddrs * sizeof(res->addrs[0]));
      r->naddrs = res->naddrs;
      start_connect(r);
    }
  }
  leave(dp);
}

/* --- the request -------------------------------------------------------------- */

static void start_request(rec *r, const atun_connect_request *req) {
  agent_dp *dp = r->dp;
  const atun_target *t = &req->target;
  r->port = req->port;
  if (t->kind == ATUN_TARGET_ADDR) atun_addr_format(r->target, &t->addr);
  else snprintf(r->target, sizeof(r->target), "%s", t->host);
  atun_policy_verdict v;
  int st = atun_policy_check_target(dp->policy, t, &v);
  if (st != ATUN_CONNECT_OK) {
    rec_fail(r, st, v.reason);
    return;
  }
  if (t->kind == ATUN_TARGET_ADDR) {
    r->addrs[0] = t->addr;
    r->naddrs = 1;
    start_connect(r);
    return;
  }
  if (dp->dns == NULL) {
    rec_fail(r, ATUN_CONNECT_DNS_FAILURE, "no resolver");
    return;
  }
  r->state = ST_RESOLVING;
  int rv = atun_dns_resolve(dp->dns, &r->query, t->host, on_dns, r);
  if (rv != 0)
    rec_fail(r, ATUN_CONNECT_INTERNAL, rv == ATUN_ERR_FULL ? "overloaded" : atun_strerror(rv));
}

/* Holds bytes behind the header until the pipe runs; more than one pipe's
 * early data is a gateway that does not wait for ConnectResponse. */
static int hold(rec *r, const uint8_t *data, size_t len) {
  if (len == 0) return 0;
  if (len > ATUN_PIPE_EARLY_MAX - r->early_len) return -1;
  if (r->early == NULL && (r->early = malloc(ATUN_PIPE_EARLY_MAX)) == NULL) return -1;
  memcpy(r->early + r->early_len, data, len);
  r->early_len += len;
  return 0;
}

static void on_header_data(rec *r, const uint8_t *data, size_t len, int fin) {
  ssize_t n = atun_frame_reader_feed(&r->reader, data, len);
  if (n < 0) {
    atun_quic_stream_consume(r->conn, r->id, len);
    rec_reset(r, atun_app_error_from_codec((int)n), "bad header");
    return;
  }
  atun_quic_stream_consume(r->conn, r->id, (size_t)n);
  if (!atun_frame_reader_ready(&r->reader)) {
    if (!fin) return;
    int eof = atun_frame_reader_eof(&r->reader);
    rec_reset(r, eof != 0 ? atun_app_error_from_codec(eof) : ATUN_APP_PROTOCOL_VIOLATION,
              "stream ended before ConnectRequest");
    return;
  }
  atun_msg m;
  int rv = atun_frame_reader_decode(&r->reader, &m, atun_mem_default());
  if (rv == 0 && m.type != ATUN_FRAME_CONNECT_REQUEST) {
    atun_msg_free(&m, atun_mem_default());
    rv = ATUN_ERR_PROTO;
  }
  if (rv != 0 || hold(r, data + n, len - (size_t)n) != 0) {
    if (rv == 0) atun_msg_free(&m, atun_mem_default());
    atun_quic_stream_consume(r->conn, r->id, len - (size_t)n);
    rec_reset(r, rv != 0 ? atun_app_error_from_codec(rv) : ATUN_APP_OVERLOADED,
              rv != 0 ? atun_strerror(rv) : "data before ConnectResponse");
    return;
  }
  atun_frame_reader_free(&r->reader);
  r->fin = fin;
  atun_connect_request req = m.u.connect_request;
  atun_msg_free(&m, atun_mem_default());
  start_request(r, &req);
}

/* --- public --------------------------------------------------------------------- */

static int make_resolver(agent_dp *dp, const char *resolv_conf) {
  atun_dns_settings s;
  atun_dns_settings_default(&s);
  s.resolv_conf = resolv_conf;
  int rv = atun_dns_new(&dp->dns, dp->loop, &s, atun_mem_default());
  if (rv == ATUN_ERR_NOMEM) return rv;
  if (rv != 0) {
    dp->dns = NULL;
    atun_log(ATUN_LOG_WARN, "agent", "resolver_unavailable", "resolv_conf=%s error=%s",
             resolv_conf != NULL ? resolv_conf : "-", atun_strerror(rv));
  }
  return 0;
}

int agent_dp_new(agent_dp **pdp, struct ev_loop *loop, size_t sessions_max,
                 const char *resolv_conf, agent_dp_count_cb on_count,
                 void *user_data) {
  if (pdp == NULL || loop == NULL || sessions_max == 0 || sessions_max > SESSIONS_LIMIT)
    return ATUN_ERR_INVALID_ARGUMENT;
  agent_dp *dp = calloc(1, sizeof(*dp));
  if (dp == NULL) return ATUN_ERR_NOMEM;
  dp->loop = loop;
  dp->sessions_max = sessions_max;
  dp->on_count = on_count;
  dp->user_data = user_data;
  dp->connect_timeout_ns = 10 * ATUN_NS_PER_S;
  int rv = atun_policy_new(&dp->policy, NULL, atun_mem_default());
  if (rv == 0) rv = make_resolver(dp, resolv_conf);
  if (rv != 0) {
    agent_dp_del(dp);
    return rv;
  }
  *pdp = dp;
  return 0;
}

void agent_dp_del(agent_dp *dp) {
  if (dp == NULL) return;
  dp->on_count = NULL;
  while (dp->head != NULL) rec_free(dp->head, 0);
  atun_dns_del(dp->dns);
  atun_policy_del(dp->policy);
  free(dp);
}

int agent_dp_configure(agent_dp *dp, const atun_config_agent *cfg,
                       const atun_prefix *subnets, size_t nsubnets,
                       const atun_domain *domains, size_t ndomains) {
  /* The config's deny list is the whole list: it starts as the defaults,
   * and an operator who writes [] means it. */
  atun_policy_settings s;
  atun_policy_settings_default(&s);
  s.deny = cfg->deny;
  s.ndeny = cfg->deny_count;
  s.deny_defaults = 0;
  atun_policy *p;
  int rv = atun_policy_new(&p, &s, atun_mem_default());
  if (rv != 0) return rv;
  rv = atun_policy_set_routes(p, subnets, nsubnets, domains, ndomains);
  if (rv != 0) {
    atun_policy_del(p);
    return rv;
  }
  atun_policy_del(dp->policy);
  dp->policy = p;
  dp->connect_timeout_ns = cfg->connect_timeout_ns;
  return 0;
}

void agent_dp_on_stream_open(agent_dp *dp, atun_quic_conn *conn, int64_t id) {
  enter(dp);
  rec *r = dp->count < dp->sessions_max ? calloc(1, sizeof(*r)) : NULL;
  if (r == NULL) {
    atun_log(ATUN_LOG_WARN, "agent", "session_refused", "stream=%lld reason=%s max=%zu",
             (long long)id, "overloaded", dp->sessions_max);
    write_response(conn, id, ATUN_CONNECT_INTERNAL, "overloaded");
    want_flush(dp, conn);
    leave(dp);
    return;
  }
  r->dp = dp;
  r->conn = conn;
  r->id = id;
  atun_frame_reader_init(&r->reader, ATUN_SESSION_PAYLOAD_MAX, atun_mem_default());
  atun_dns_query_init(&r->query);
  atun_tcp_connect_init(&r->tc);
  r->next = dp->head;
  if (dp->head != NULL) dp->head->prev = r;
  dp->head = r;
  atun_quic_stream_set_user_data(conn, id, r);
  set_count(dp, dp->count + 1);
  leave(dp);
}

void agent_dp_on_stream_data(agent_dp *dp, atun_quic_conn *conn, int64_t id,
                             const uint8_t *data, size_t len, int fin, void *sud) {
  rec *r = sud;
  (void)conn, (void)id;
  enter(dp);
  switch (r->state) {
  case ST_HEADER: on_header_data(r, data, len, fin); break;
  case ST_PIPE: atun_pipe_on_stream_data(&r->pipe, data, len, fin); break;
  default:
    if (hold(r, data, len) != 0) {
      atun_quic_stream_consume(r->conn, r->id, len);
      rec_reset(r, ATUN_APP_OVERLOADED, "data before ConnectResponse");
    } else if (fin) {
      r->fin = 1;
    }
    break;
  }
  leave(dp);
}

void agent_dp_on_stream_reset(agent_dp *dp, uint64_t app_error, void *sud) {
  rec *r = sud;
  enter(dp);
  if (r->state == ST_PIPE) atun_pipe_on_stream_reset(&r->pipe, app_error);
  else rec_reset(r, app_error, "reset by the gateway");
  leave(dp);
}

void agent_dp_on_stream_closed(agent_dp *dp, int has_error, uint64_t app_error,
                               void *sud) {
  rec *r = sud;
  enter(dp);
  if (r->state == ST_PIPE) {
    atun_pipe_on_stream_closed(&r->pipe, has_error, app_error);
  } else {
    atun_log(ATUN_LOG_INFO, "agent", "session_reset", "stream=%lld target=%s reason=%s",
             (long long)r->id, r->target[0] ? r->target : "-", "stream closed");
    drop_early(r);
    rec_free(r, 0);
  }
  leave(dp);
}

void agent_dp_on_acked(agent_dp *dp, const atun_quic_conn *conn) {
  enter(dp);
  for (rec *r = dp->head; r != NULL; r = r->next)
    if (r->conn == conn && r->state == ST_PIPE && atun_pipe_waits_for_room(&r->pipe))
      atun_pipe_on_stream_writable(&r->pipe);
  leave(dp);
}

void agent_dp_conn_gone(agent_dp *dp, const atun_quic_conn *conn) {
  if (dp == NULL) return;
  if (dp->flush_conn == conn) dp->flush_conn = NULL;
  rec *next;
  for (rec *r = dp->head; r != NULL; r = next) {
    next = r->next;
    if (r->conn == conn) rec_free(r, 0);
  }
}

size_t agent_dp_count(const agent_dp *dp) { return dp->count; }
