/*
 * libev driver of atun_quic_conn; see quic_ev.h.
 *
 * Every entry point from the loop (datagrams, a timer, the socket turning
 * writable) and from the application (flush, close, abort, connect) ends
 * the same way: connections that were touched sit on the dirty list and
 * are serviced -- written, deleted if done, timer re-armed -- once no
 * connection call is on the stack (|depth| 0), then the socket is flushed.
 * Deleting only at depth 0 is what makes it safe for application
 * callbacks to close or abort any connection, their own included.
 */
#include "quic_ev.h"

#include <stddef.h>
#include <string.h>
#include <time.h>

#include <ev.h>

/* Marks a live driver record (catches a connection not made here). */
#define QCONN_MAGIC 0x71657663u
/* Service passes over the dirty list per entry point, as a multiple of the
 * connections open; what is left continues from a zero timer. */
#define DRAIN_PASSES 4

typedef struct qconn qconn;

/* An intrusive doubly linked list membership. */
typedef struct qlink {
  qconn *prev, *next;
  int on;
} qlink;

typedef struct qlist {
  qconn *head;
} qlist;

struct qconn {
  uint32_t magic;
  atun_quic_ev *ep;
  atun_quic_conn *conn;
  ev_timer timer;
  atun_quic_callbacks app_cb;
  void *app_ud;
  qlink all, dirty, blocked;
  atun_quic_cid cids[ATUN_QUIC_EV_CONN_CIDS_MAX];
  size_t ncids;
  int more;          /* yielded with datagrams left to write */
  int abort_pending; /* delete at the next service */
};

typedef struct centry {
  atun_quic_cid cid;
  qconn *q; /* NULL: empty */
} centry;

struct atun_quic_ev {
  struct ev_loop *loop;
  int server;
  atun_quic_ev_settings s;
  atun_quic_conn_config tmpl;
  atun_quic_callbacks tmpl_cb;
  atun_quic_settings tmpl_settings;
  atun_quic_ev_hooks hooks;
  void *user_data;
  const atun_mem *mem;
  atun_udp *udp;
  atun_udp_stats udp_past; /* client: sockets already closed */
  /* client */
  qconn *client;
  atun_quic_path client_path;
  /* connections */
  qlist all, dirty, blocked;
  size_t nconns;
  int depth; /* connection calls on the stack */
  int dying;
  /* server demultiplexing: open addressing, linear probing */
  centry *table;
  size_t tcap; /* power of two */
  size_t tlen;
  uint64_t k0, k1;
  atun_quic_ev_stats st;
};

/* --- lists --------------------------------------------------------------------------------- */

static void list_add(qlist *l, qconn *q, size_t off) {
  qlink *k = (qlink *)((char *)q + off);
  if (k->on) return;
  k->on = 1;
  k->prev = NULL;
  k->next = l->head;
  if (l->head != NULL) ((qlink *)((char *)l->head + off))->prev = q;
  l->head = q;
}

static void list_del(qlist *l, qconn *q, size_t off) {
  qlink *k = (qlink *)((char *)q + off);
  if (!k->on) return;
  if (k->prev != NULL) ((qlink *)((char *)k->prev + off))->next = k->next;
  else l->head = k->next;
  if (k->next != NULL) ((qlink *)((char *)k->next + off))->prev = k->prev;
  k->on = 0;
  k->prev = k->next = NULL;
}

#define OFF_ALL offsetof(qconn, all)
#define OFF_DIRTY offsetof(qconn, dirty)
#define OFF_BLOCKED offsetof(qconn, blocked)

/* --- time ---------------------------------------------------------------------------------- */

atun_tstamp atun_quic_ev_now(struct ev_loop *loop) {
  struct timespec t;
  (void)loop;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (atun_tstamp)t.tv_sec * ATUN_NS_PER_S + (atun_tstamp)t.tv_nsec;
}

/* --- demux table (keyed SipHash-2-4: the client chooses its first id) ------------------------ */

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                        \
  do {                                                                  \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);           \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                              \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                              \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);           \
  } while (0)

static uint64_t siphash(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n) {
  uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
  uint64_t b = (uint64_t)n << 56;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t m = 0;
    for (int j = 0; j < 8; ++j) m |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  for (int j = 0; i + (size_t)j < n; ++j) b |= (uint64_t)p[i + j] << (8 * j);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

atun__quic_ev_hash_fn atun__quic_ev_hash = siphash;

static int cid_eq(const atun_quic_cid *a, const atun_quic_cid *b) {
  return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static size_t table_slot(const atun_quic_ev *ep, const atun_quic_cid *cid) {
  return (size_t)atun__quic_ev_hash(ep->k0, ep->k1, cid->data, cid->len) & (ep->tcap - 1);
}

static qconn *table_find(const atun_quic_ev *ep, const atun_quic_cid *cid) {
  for (size_t i = table_slot(ep, cid);; i = (i + 1) & (ep->tcap - 1)) {
    const centry *e = &ep->table[i];
    if (e->q == NULL) return NULL;
    if (cid_eq(&e->cid, cid)) return e->q;
  }
}

/* Returns 0, or -1 if the id belongs to another connection or the table is
 * at its load bound. */
static int table_insert(atun_quic_ev *ep, const atun_quic_cid *cid, qconn *q) {
  if (ep->tlen >= ep->tcap / 2 + ep->tcap / 4) return -1;
  size_t i = table_slot(ep, cid);
  for (;; i = (i + 1) & (ep->tcap - 1)) {
    centry *e = &ep->table[i];
    if (e->q == NULL) break;
    if (cid_eq(&e->cid, cid)) return e->q == q ? 0 : -1;
  }
  ep->table[i].cid = *cid;
  ep->table[i].q = q;
  ++ep->tlen;
  return 0;
}

/* Deletes with backward shift, so probing never needs tombstones. */
static void table_remove(atun_quic_ev *ep, const atun_quic_cid *cid, qconn *q) {
  size_t mask = ep->tcap - 1, i = table_slot(ep, cid);
  for (;; i = (i + 1) & mask) {
    if (ep->table[i].q == NULL) return;
    if (cid_eq(&ep->table[i].cid, cid)) break;
  }
  if (ep->table[i].q != q) return;
  for (size_t j = (i + 1) & mask; ep->table[j].q != NULL; j = (j + 1) & mask) {
    size_t home = table_slot(ep, &ep->table[j].cid);
    /* Move j back into the hole at i unless its home lies in (i, j]. */
    int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (stays) continue;
    ep->table[i] = ep->table[j];
    i = j;
  }
  ep->table[i].q = NULL;
  --ep->tlen;
}

static void cid_register(qconn *q, const atun_quic_cid *cid) {
  atun_quic_ev *ep = q->ep;
  if (!ep->server) return;
  for (size_t i = 0; i < q->ncids; ++i) {
    if (cid_eq(&q->cids[i], cid)) return;
  }
  if (q->ncids == ATUN_QUIC_EV_CONN_CIDS_MAX || table_insert(ep, cid, q) != 0) {
    ++ep->st.cid_overflow;
    return;
  }
  q->cids[q->ncids++] = *cid;
}

static void cid_unregister(qconn *q, const atun_quic_cid *cid) {
  for (size_t i = 0; i < q->ncids; ++i) {
    if (cid_eq(&q->cids[i], cid)) {
      table_remove(q->ep, cid, q);
      q->cids[i] = q->cids[--q->ncids];
      return;
    }
  }
}

/* --- callback trampolines ------------------------------------------------------------------- */

static qconn *qconn_of(atun_quic_conn *conn, void *ud) {
  qconn *q = ud;
  ATUN_ASSERT(q != NULL && q->magic == QCONN_MAGIC);
  if (q->conn == NULL) q->conn = conn; /* callbacks inside the constructor */
  return q;
}

static int t_peer_verify(atun_quic_conn *conn, const atun_quic_peer *peer, void *ud) {
  qconn *q = qconn_of(conn, ud);
  return q->app_cb.peer_verify(conn, peer, q->app_ud);
}

static int t_handshake_completed(atun_quic_conn *conn, void *ud) {
  qconn *q = qconn_of(conn, ud);
  return q->app_cb.handshake_completed(conn, q->app_ud);
}

static int t_stream_open(atun_quic_conn *conn, int64_t sid, void *ud) {
  qconn *q = qconn_of(conn, ud);
  return q->app_cb.stream_open(conn, sid, q->app_ud);
}

static int t_stream_data(atun_quic_conn *conn, int64_t sid, const uint8_t *data,
                         size_t len, int fin, void *ud, void *sud) {
  qconn *q = qconn_of(conn, ud);
  return q->app_cb.stream_data(conn, sid, data, len, fin, q->app_ud, sud);
}

static int t_stream_reset(atun_quic_conn *conn, int64_t sid, uint64_t err, void *ud,
                          void *sud) {
  qconn *q = qconn_of(conn, ud);
  return q->app_cb.stream_reset(conn, sid, err, q->app_ud, sud);
}

static int t_stream_acked(atun_quic_conn *conn, int64_t sid, size_t n, void *ud,
                          void *sud) {
  qconn *q = qconn_of(conn, ud);
  return q->app_cb.stream_acked(conn, sid, n, q->app_ud, sud);
}

static int t_stream_closed(atun_quic_conn *conn, int64_t sid, int has_error,
                           uint64_t err, void *ud, void *sud) {
  qconn *q = qconn_of(conn, ud);
  return q->app_cb.stream_closed(conn, sid, has_error, err, q->app_ud, sud);
}

static void t_connection_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                                void *ud) {
  qconn *q = qconn_of(conn, ud);
  if (q->app_cb.connection_closed) q->app_cb.connection_closed(conn, info, q->app_ud);
}

static void t_cid_added(atun_quic_conn *conn, const atun_quic_cid *cid, void *ud) {
  qconn *q = qconn_of(conn, ud);
  cid_register(q, cid);
  if (q->app_cb.cid_added) q->app_cb.cid_added(conn, cid, q->app_ud);
}

static void t_cid_removed(atun_quic_conn *conn, const atun_quic_cid *cid, void *ud) {
  qconn *q = qconn_of(conn, ud);
  cid_unregister(q, cid);
  if (q->app_cb.cid_removed) q->app_cb.cid_removed(conn, cid, q->app_ud);
}

/* The table handed to the connection: a trampoline where the application
 * has a callback, NULL where it has none (the core behaves differently
 * without some, stream_data above all). */
static void trampolines(atun_quic_callbacks *t, const atun_quic_callbacks *app) {
  memset(t, 0, sizeof(*t));
  if (app->peer_verify) t->peer_verify = t_peer_verify;
  if (app->handshake_completed) t->handshake_completed = t_handshake_completed;
  if (app->stream_open) t->stream_open = t_stream_open;
  if (app->stream_data) t->stream_data = t_stream_data;
  if (app->stream_reset) t->stream_reset = t_stream_reset;
  if (app->stream_acked) t->stream_acked = t_stream_acked;
  if (app->stream_closed) t->stream_closed = t_stream_closed;
  t->connection_closed = t_connection_closed;
  t->cid_added = t_cid_added;
  t->cid_removed = t_cid_removed;
}

/* --- connection records ----------------------------------------------------------------------- */

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static qconn *qconn_new(atun_quic_ev *ep, const atun_quic_conn_config *cfg) {
  qconn *q = atun_mem_calloc(ep->mem, 1, sizeof(*q));
  if (q == NULL) return NULL;
  q->magic = QCONN_MAGIC;
  q->ep = ep;
  if (cfg->callbacks) q->app_cb = *cfg->callbacks;
  q->app_ud = cfg->user_data;
  ev_timer_init(&q->timer, timer_cb, 0., 0.);
  q->timer.data = q;
  list_add(&ep->all, q, OFF_ALL);
  ++ep->nconns;
  return q;
}

/* Frees a record whose connection never came to be. */
static void qconn_discard(qconn *q) {
  atun_quic_ev *ep = q->ep;
  while (q->ncids > 0) cid_unregister(q, &q->cids[q->ncids - 1]);
  list_del(&ep->all, q, OFF_ALL);
  list_del(&ep->dirty, q, OFF_DIRTY);
  list_del(&ep->blocked, q, OFF_BLOCKED);
  --ep->nconns;
  q->magic = 0;
  atun_mem_free(ep->mem, q);
}

static void client_retire_socket(atun_quic_ev *ep) {
  atun_udp_stats st;
  atun_udp_flush(ep->udp);
  atun_udp_get_stats(ep->udp, &st);
  ep->udp_past.datagrams_in += st.datagrams_in;
  ep->udp_past.bytes_in += st.bytes_in;
  ep->udp_past.datagrams_out += st.datagrams_out;
  ep->udp_past.bytes_out += st.bytes_out;
  ep->udp_past.recv_truncated += st.recv_truncated;
  ep->udp_past.recv_errors += st.recv_errors;
  ep->udp_past.send_dropped += st.send_dropped;
  ep->udp_past.send_errors += st.send_errors;
  ep->udp_past.send_blocked += st.send_blocked;
  ep->udp_past.gso_sends += st.gso_sends;
  ep->udp_past.send_calls += st.send_calls;
  atun_udp_del(ep->udp);
  ep->udp = NULL;
}

/* Deletes |q| and its connection; on_closed first.  Only at depth 0. */
static void qconn_delete(qconn *q) {
  atun_quic_ev *ep = q->ep;
  ev_timer_stop(ep->loop, &q->timer);
  if (ep->hooks.on_closed) {
    ++ep->depth;
    ep->hooks.on_closed(ep, q->conn, q->app_ud, ep->user_data);
    --ep->depth;
  }
  atun_quic_conn_del(q->conn);
  q->conn = NULL;
  ++ep->st.conns_closed;
  if (ep->client == q) {
    ep->client = NULL;
    client_retire_socket(ep);
  }
  qconn_discard(q);
}

static void mark_dirty(qconn *q) { list_add(&q->ep->dirty, q, OFF_DIRTY); }

/* --- servicing ---------------------------------------------------------------------------------- */

static void conn_write(qconn *q, atun_tstamp now) {
  atun_quic_ev *ep = q->ep;
  size_t i = 0;
  ++ep->depth;
  for (; i < ep->s.writes_per_round; ++i) {
    size_t cap;
    uint8_t *buf = atun_udp_send_reserve(ep->udp, &cap);
    if (buf == NULL) {
      list_add(&ep->blocked, q, OFF_BLOCKED);
      ++ep->st.write_blocked;
      break;
    }
    atun_quic_path path;
    ssize_t n = atun_quic_conn_write(q->conn, &path, buf, cap, now);
    if (n <= 0) break;
    /* Fails only for a remote this socket's family can not reach: the
     * datagram is lost like any other and QUIC deals with it. */
    (void)atun_udp_send_commit(ep->udp, &path, (size_t)n);
  }
  --ep->depth;
  q->more = i == ep->s.writes_per_round;
  if (q->more) ++ep->st.write_yields;
}

static void conn_arm(qconn *q, atun_tstamp now) {
  struct ev_loop *loop = q->ep->loop;
  ev_timer_stop(loop, &q->timer);
  double delay = 0.;
  if (!q->more) {
    atun_tstamp exp = atun_quic_conn_get_expiry(q->conn);
    if (exp == ATUN_TSTAMP_MAX) return;
    if (exp > now) delay = (double)(exp - now) / (double)ATUN_NS_PER_S;
  }
  ev_timer_set(&q->timer, delay, 0.);
  ev_timer_start(loop, &q->timer);
}

static void conn_service(qconn *q, atun_tstamp now) {
  atun_quic_ev *ep = q->ep;
  list_del(&ep->dirty, q, OFF_DIRTY);
  if (!q->abort_pending && !q->blocked.on && ep->udp != NULL) conn_write(q, now);
  if (q->abort_pending || atun_quic_conn_is_done(q->conn)) {
    qconn_delete(q);
    return;
  }
  conn_arm(q, now);
}

/* Services the dirty connections and flushes the socket.  Only at depth 0. */
static void ep_drain(atun_quic_ev *ep) {
  if (ep->depth > 0 || ep->dying) return;
  atun_tstamp now = atun_quic_ev_now(ep->loop);
  size_t budget = DRAIN_PASSES * (ep->nconns + 1);
  while (ep->dirty.head != NULL && budget-- > 0) conn_service(ep->dirty.head, now);
  /* Callbacks kept dirtying each other: continue from the loop. */
  while (ep->dirty.head != NULL) {
    qconn *q = ep->dirty.head;
    list_del(&ep->dirty, q, OFF_DIRTY);
    q->more = 1;
    conn_arm(q, now);
  }
  if (ep->udp != NULL) atun_udp_flush(ep->udp);
}

static void conn_read(qconn *q, const atun_quic_path *path, const uint8_t *data,
                      size_t len, atun_tstamp now) {
  ++q->ep->depth;
  (void)atun_quic_conn_read(q->conn, path, data, len, now);
  --q->ep->depth;
  mark_dirty(q);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  qconn *q = w->data;
  atun_quic_ev *ep = q->ep;
  (void)revents;
  atun_tstamp now = atun_quic_ev_now(loop);
  if (now >= atun_quic_conn_get_expiry(q->conn)) {
    ++ep->depth;
    (void)atun_quic_conn_handle_expiry(q->conn, now);
    --ep->depth;
  }
  q->more = 0;
  mark_dirty(q);
  ep_drain(ep);
}

static void on_writable(atun_udp *udp, void *ud) {
  atun_quic_ev *ep = ud;
  (void)udp;
  while (ep->blocked.head != NULL) {
    qconn *q = ep->blocked.head;
    list_del(&ep->blocked, q, OFF_BLOCKED);
    mark_dirty(q);
  }
  ep_drain(ep);
}

/* --- server ------------------------------------------------------------------------------------ */

/* A datagram that may open a connection: a long-header Initial (type 0 in
 * QUIC v1) padded to the 1200 bytes RFC 9000 demands of a client. */
static int maybe_initial(const uint8_t *data, size_t len) {
  return len >= ATUN_QUIC_DATAGRAM_MIN && (data[0] & 0x80) != 0 &&
         (data[0] & 0x30) == 0;
}

/* on_accept admitted a connection that could not be made: the
 * application gets its user data back through on_closed. */
static void accept_lost(atun_quic_ev *ep, void *app_ud) {
  ++ep->st.accept_failures;
  if (ep->hooks.on_closed == NULL) return;
  ++ep->depth;
  ep->hooks.on_closed(ep, NULL, app_ud, ep->user_data);
  --ep->depth;
}

static void server_accept(atun_quic_ev *ep, const atun_udp_datagram *d,
                          atun_tstamp now) {
  if (ep->nconns >= ep->s.conns_max) {
    ++ep->st.conns_refused;
    return;
  }
  atun_quic_conn_config cfg = ep->tmpl;
  if (ep->hooks.on_accept) {
    ++ep->depth;
    int rv = ep->hooks.on_accept(ep, &d->path, &cfg, ep->user_data);
    --ep->depth;
    if (rv != 0) {
      ++ep->st.conns_refused;
      return;
    }
  }
  if (cfg.mem == NULL) cfg.mem = ep->mem;
  qconn *q = qconn_new(ep, &cfg);
  if (q == NULL) {
    accept_lost(ep, cfg.user_data);
    return;
  }
  void *app_ud = cfg.user_data;
  atun_quic_callbacks cb;
  trampolines(&cb, &q->app_cb);
  cfg.callbacks = &cb;
  cfg.user_data = q;
  ++ep->depth;
  int rv = atun_quic_conn_server_accept(&q->conn, &cfg, &d->path, d->data, d->len, now);
  --ep->depth;
  if (rv != 0) {
    q->conn = NULL;
    qconn_discard(q);
    accept_lost(ep, app_ud);
    return;
  }
  atun_quic_cid cids[ATUN_QUIC_EV_CONN_CIDS_MAX];
  size_t n = atun_quic_conn_get_cids(q->conn, cids, ATUN_QUIC_EV_CONN_CIDS_MAX);
  for (size_t i = 0; i < n; ++i) cid_register(q, &cids[i]);
  ++ep->st.conns_accepted;
  mark_dirty(q);
}

static void server_datagram(atun_quic_ev *ep, const atun_udp_datagram *d,
                            atun_tstamp now) {
  atun_quic_cid dcid;
  if (atun_quic_packet_dcid(d->data, d->len, &dcid) != 0) {
    ++ep->st.undecodable;
    return;
  }
  qconn *q = table_find(ep, &dcid);
  if (q != NULL) {
    if (!q->abort_pending) conn_read(q, &d->path, d->data, d->len, now);
    return;
  }
  if (!maybe_initial(d->data, d->len)) {
    ++ep->st.unknown_cid;
    return;
  }
  server_accept(ep, d, now);
}

static void server_recv(atun_udp *udp, const atun_udp_datagram *d, size_t n, void *ud) {
  atun_quic_ev *ep = ud;
  (void)udp;
  atun_tstamp now = atun_quic_ev_now(ep->loop);
  for (size_t i = 0; i < n; ++i) server_datagram(ep, &d[i], now);
  ep_drain(ep);
}

/* --- client ------------------------------------------------------------------------------------ */

static int endpoint_eq(const atun_quic_endpoint *a, const atun_quic_endpoint *b) {
  size_t n = a->addr.family == ATUN_AF_INET ? 4 : 16;
  return a->port == b->port && a->addr.family == b->addr.family &&
         memcmp(a->addr.bytes, b->addr.bytes, n) == 0;
}

static void client_recv(atun_udp *udp, const atun_udp_datagram *d, size_t n, void *ud) {
  atun_quic_ev *ep = ud;
  atun_tstamp now = atun_quic_ev_now(ep->loop);
  for (size_t i = 0; i < n; ++i) {
    qconn *q = ep->client;
    if (udp != ep->udp || q == NULL || q->abort_pending ||
        !endpoint_eq(&d[i].path.remote, &ep->client_path.remote)) {
      ++ep->st.wrong_peer;
      continue;
    }
    /* The path the connection was made on, always: a pktinfo address
     * would look like a migration to ngtcp2. */
    conn_read(q, &ep->client_path, d[i].data, d[i].len, now);
  }
  ep_drain(ep);
}

static const atun_udp_callbacks server_udp_cb = {.recv = server_recv,
                                                 .writable = on_writable};
static const atun_udp_callbacks client_udp_cb = {.recv = client_recv,
                                                 .writable = on_writable};

int atun_quic_ev_connect(atun_quic_ev *ep, const atun_quic_endpoint *remote,
                         atun_quic_conn **pconn) {
  if (ep == NULL || remote == NULL || ep->server ||
      (remote->addr.family != ATUN_AF_INET && remote->addr.family != ATUN_AF_INET6) ||
      remote->port == 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (ep->client != NULL || ep->dying) return ATUN_ERR_STATE;
  atun_quic_endpoint local = {.addr = {.family = remote->addr.family}, .port = 0};
  atun_udp *udp = NULL;
  int rv = atun_udp_new(&udp, ep->loop, &ep->s.udp, &local, &client_udp_cb, ep, ep->mem);
  if (rv != 0) return rv;
  atun_udp_info info;
  atun_udp_get_info(udp, &info);
  ep->client_path.local = info.local;
  ep->client_path.remote = *remote;
  atun_quic_conn_config cfg = ep->tmpl;
  qconn *q = qconn_new(ep, &cfg);
  if (q == NULL) {
    atun_udp_del(udp);
    return ATUN_ERR_NOMEM;
  }
  atun_quic_callbacks cb;
  trampolines(&cb, &q->app_cb);
  cfg.callbacks = &cb;
  cfg.user_data = q;
  ++ep->depth;
  rv = atun_quic_conn_client_new(&q->conn, &cfg, &ep->client_path,
                                 atun_quic_ev_now(ep->loop));
  --ep->depth;
  if (rv != 0) {
    q->conn = NULL;
    qconn_discard(q);
    atun_udp_del(udp);
    return rv;
  }
  ep->udp = udp;
  ep->client = q;
  if (pconn != NULL) *pconn = q->conn;
  mark_dirty(q);
  ep_drain(ep);
  return 0;
}

atun_quic_conn *atun_quic_ev_client_conn(const atun_quic_ev *ep) {
  return ep == NULL || ep->client == NULL ? NULL : ep->client->conn;
}

/* --- endpoint ------------------------------------------------------------------------------------ */

void atun_quic_ev_settings_default(atun_quic_ev_settings *s) {
  atun_udp_settings_default(&s->udp);
  s->conns_max = 1024;
  s->writes_per_round = 64;
}

static int settings_valid(const atun_quic_ev_settings *s) {
  return s->conns_max >= 1 && s->conns_max <= ATUN_QUIC_EV_CONNS_LIMIT &&
         s->writes_per_round >= 1 && s->writes_per_round <= ATUN_QUIC_EV_WRITES_LIMIT &&
         s->udp.send_datagram_max >= ATUN_QUIC_DATAGRAM_MIN;
}

static int ep_new(atun_quic_ev **pep, struct ev_loop *loop,
                  const atun_quic_ev_settings *settings,
                  const atun_quic_conn_config *config,
                  const atun_quic_ev_hooks *hooks, void *user_data) {
  atun_quic_ev_settings defaults;
  if (settings == NULL) {
    atun_quic_ev_settings_default(&defaults);
    settings = &defaults;
  }
  if (pep == NULL || loop == NULL || config == NULL || config->tls == NULL ||
      config->rand.fill == NULL || !settings_valid(settings)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  const atun_mem *mem = config->mem ? config->mem : atun_mem_default();
  atun_quic_ev *ep = atun_mem_calloc(mem, 1, sizeof(*ep));
  if (ep == NULL) return ATUN_ERR_NOMEM;
  ep->loop = loop;
  ep->s = *settings;
  ep->mem = mem;
  ep->user_data = user_data;
  if (hooks != NULL) ep->hooks = *hooks;
  ep->tmpl = *config;
  ep->tmpl.mem = mem;
  if (config->callbacks) {
    ep->tmpl_cb = *config->callbacks;
    ep->tmpl.callbacks = &ep->tmpl_cb;
  }
  if (config->settings) {
    ep->tmpl_settings = *config->settings;
    ep->tmpl.settings = &ep->tmpl_settings;
  }
  *pep = ep;
  return 0;
}

static size_t pow2_at_least(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

int atun_quic_ev_server_new(atun_quic_ev **pep, struct ev_loop *loop,
                            const atun_quic_ev_settings *settings,
                            const atun_quic_endpoint *local,
                            const atun_quic_conn_config *config,
                            const atun_quic_ev_hooks *hooks, void *user_data) {
  if (pep == NULL || local == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  atun_quic_ev *ep;
  int rv = ep_new(&ep, loop, settings, config, hooks, user_data);
  if (rv != 0) return rv;
  ep->server = 1;
  uint8_t key[16];
  if (config->rand.fill(key, sizeof(key), config->rand.user_data) != 0) {
    rv = ATUN_ERR_INTERNAL;
    goto fail_rand;
  }
  memcpy(&ep->k0, key, 8);
  memcpy(&ep->k1, key + 8, 8);
  ep->tcap = pow2_at_least(2 * ep->s.conns_max * ATUN_QUIC_EV_CONN_CIDS_MAX);
  ep->table = atun_mem_calloc(ep->mem, ep->tcap, sizeof(*ep->table));
  if (ep->table == NULL) {
    rv = ATUN_ERR_NOMEM;
    goto fail_table;
  }
  rv = atun_udp_new(&ep->udp, loop, &ep->s.udp, local, &server_udp_cb, ep, ep->mem);
  if (rv != 0) goto fail_udp;
  *pep = ep;
  return 0;

fail_udp:
  atun_mem_free(ep->mem, ep->table);
fail_table:
fail_rand:
  atun_mem_free(ep->mem, ep);
  return rv;
}

int atun_quic_ev_client_new(atun_quic_ev **pep, struct ev_loop *loop,
                            const atun_quic_ev_settings *settings,
                            const atun_quic_conn_config *config,
                            const atun_quic_ev_hooks *hooks, void *user_data) {
  return ep_new(pep, loop, settings, config, hooks, user_data);
}

void atun_quic_ev_del(atun_quic_ev *ep) {
  if (ep == NULL) return;
  /* Hooks may flush other connections meanwhile: that only marks them. */
  ep->dying = 1;
  while (ep->all.head != NULL) qconn_delete(ep->all.head);
  atun_udp_del(ep->udp);
  atun_mem_free(ep->mem, ep->table);
  atun_mem_free(ep->mem, ep);
}

/* --- per-connection calls from the application ---------------------------------------------- */

static qconn *qconn_get(const atun_quic_conn *conn) {
  if (conn == NULL) return NULL;
  qconn *q = atun_quic_conn_get_user_data(conn);
  ATUN_ASSERT(q != NULL && q->magic == QCONN_MAGIC);
  return q;
}

void atun_quic_ev_flush(atun_quic_conn *conn) {
  qconn *q = qconn_get(conn);
  if (q == NULL) return;
  mark_dirty(q);
  ep_drain(q->ep);
}

int atun_quic_ev_close(atun_quic_conn *conn, uint64_t app_error, const char *reason) {
  qconn *q = qconn_get(conn);
  if (q == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  int rv = atun_quic_conn_close(conn, app_error, reason);
  atun_quic_ev_flush(conn);
  return rv;
}

void atun_quic_ev_abort(atun_quic_conn *conn) {
  qconn *q = qconn_get(conn);
  if (q == NULL) return;
  q->abort_pending = 1;
  mark_dirty(q);
  ep_drain(q->ep);
}

void *atun_quic_ev_conn_get_user_data(const atun_quic_conn *conn) {
  qconn *q = qconn_get(conn);
  return q == NULL ? NULL : q->app_ud;
}

void atun_quic_ev_conn_set_user_data(atun_quic_conn *conn, void *user_data) {
  qconn *q = qconn_get(conn);
  if (q != NULL) q->app_ud = user_data;
}

atun_quic_ev *atun_quic_ev_of(const atun_quic_conn *conn) {
  qconn *q = qconn_get(conn);
  return q == NULL ? NULL : q->ep;
}

void *atun_quic_ev_get_user_data(const atun_quic_ev *ep) {
  return ep == NULL ? NULL : ep->user_data;
}

int atun_quic_ev_get_local(const atun_quic_ev *ep, atun_quic_endpoint *out) {
  if (ep == NULL || out == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  if (ep->udp == NULL) return ATUN_ERR_STATE;
  atun_udp_info info;
  atun_udp_get_info(ep->udp, &info);
  *out = info.local;
  return 0;
}

void atun_quic_ev_get_udp_info(const atun_quic_ev *ep, atun_udp_info *out) {
  atun_udp_get_info(ep == NULL ? NULL : ep->udp, out);
}

void atun_quic_ev_get_stats(const atun_quic_ev *ep, atun_quic_ev_stats *out) {
  memset(out, 0, sizeof(*out));
  if (ep == NULL) return;
  *out = ep->st;
  atun_udp_stats cur;
  atun_udp_get_stats(ep->udp, &cur);
  out->udp = ep->udp_past;
  out->udp.datagrams_in += cur.datagrams_in;
  out->udp.bytes_in += cur.bytes_in;
  out->udp.datagrams_out += cur.datagrams_out;
  out->udp.bytes_out += cur.bytes_out;
  out->udp.recv_truncated += cur.recv_truncated;
  out->udp.recv_errors += cur.recv_errors;
  out->udp.send_dropped += cur.send_dropped;
  out->udp.send_errors += cur.send_errors;
  out->udp.send_blocked += cur.send_blocked;
  out->udp.gso_sends += cur.gso_sends;
  out->udp.send_calls += cur.send_calls;
  out->udp.queued = cur.queued;
  out->conns_open = ep->nconns;
  out->cids_routed = ep->tlen;
}
