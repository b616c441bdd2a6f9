/*
 * The libev driver of atun_quic_conn objects (core/quic.h), for both roles:
 * a server endpoint for the gateway, a client endpoint for the agent.  No
 * protocol logic: it moves datagrams, runs timers and deletes finished
 * connections, exactly the loop spelled out in quic.h:
 *
 *   datagrams in   -> atun_quic_conn_read     (a recvmmsg batch at a time)
 *   timer fired    -> atun_quic_conn_handle_expiry
 *   after either, and after atun_quic_ev_flush():
 *                     atun_quic_conn_write into the UDP send queue, then
 *                     re-arm the connection's one ev_timer from
 *                     atun_quic_conn_get_expiry()
 *   is_done        -> on_closed hook, atun_quic_conn_del
 *
 * The endpoint owns every connection it made.  It installs its own
 * callbacks in each connection and forwards every one of them to the
 * application's (from the atun_quic_conn_config), with the application's
 * user data; the cid callbacks feed its demultiplexing table first.  So
 * atun_quic_conn_get_user_data() returns the driver's record: use
 * atun_quic_ev_conn_get_user_data() instead.
 *
 * Server demultiplexing: datagrams go to connections by destination
 * connection id, in a hash table (keyed hash: the client picks its first
 * id) holding every id a connection answers to.  The table is sized once
 * for |conns_max| (about 1.3 MB at the default 1024).  An unknown id that is not
 * a client Initial is dropped and counted; an Initial beyond |conns_max|
 * connections, or one on_accept refuses, is dropped and counted (the client
 * retries, then times out).  Nothing is sent for a dropped datagram: no
 * Version Negotiation, no Stateless Reset, no Retry.
 *
 * Writes: a connection writes at most |writes_per_round| datagrams, then
 * yields and continues from a zero timer, so one bulk sender can not starve
 * the others.  When the UDP send queue is full the connection holds back
 * and resumes on the socket's writable callback: nothing is lost to the
 * queue bound on this path.
 *
 * Time: atun_quic_ev_now(), monotonic ns.  (libev's ev_now() is the wall
 * clock rebased on the monotonic one and follows wall-clock steps; QUIC
 * timestamps must never jump, so it is not used for them.)
 *
 * Re-entrancy: the application's callbacks run inside the driver; there
 * they may call atun_quic_ev_flush, _close and _abort on any connection
 * (an abort there takes effect when the callback returns), but not
 * atun_quic_ev_del.  on_closed must not touch the closing connection.
 */
#ifndef ATUN_QUIC_EV_H
#define ATUN_QUIC_EV_H

#include "atun.h"
#include "quic.h"
#include "udp.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

#define ATUN_QUIC_EV_CONNS_LIMIT 65536
#define ATUN_QUIC_EV_WRITES_LIMIT 4096
/* Connection ids one connection can have in the demux table at once:
 * ATUN_QUIC_CIDS_MAX plus room for a replacement issued before its
 * predecessor is retired.  Ids beyond are not routed (counted). */
#define ATUN_QUIC_EV_CONN_CIDS_MAX (ATUN_QUIC_CIDS_MAX + 4)

typedef struct atun_quic_ev_settings {
  atun_udp_settings udp;
  /* Server: connections at once, 1..ATUN_QUIC_EV_CONNS_LIMIT.  Default
   * 1024. */
  size_t conns_max;
  /* Datagrams a connection writes before it yields, 1..WRITES_LIMIT.
   * Default 64. */
  size_t writes_per_round;
} atun_quic_ev_settings;

void atun_quic_ev_settings_default(atun_quic_ev_settings *settings);

typedef struct atun_quic_ev atun_quic_ev;

typedef struct atun_quic_ev_hooks {
  /* Server: the first datagram of a new connection arrived on |path|.
   * |config| is a copy of the endpoint's template; change what differs for
   * this connection (user_data, mostly) and return 0 to accept, nonzero to
   * refuse (the datagram is dropped).  NULL accepts with the template. */
  int (*on_accept)(atun_quic_ev *ep, const atun_quic_path *path,
                   atun_quic_conn_config *config, void *ep_user_data);
  /* |conn| is about to be deleted: after its connection_closed when it
   * ended on its own, or because of atun_quic_ev_abort / atun_quic_ev_del.
   * Called exactly once per connection the endpoint made, and once with
   * |conn| NULL when on_accept admitted a connection that could then not
   * be made (memory, a malformed Initial), so the application can free
   * what it set up there.  May be NULL. */
  void (*on_closed)(atun_quic_ev *ep, atun_quic_conn *conn,
                    void *conn_user_data, void *ep_user_data);
} atun_quic_ev_hooks;

typedef struct atun_quic_ev_stats {
  atun_udp_stats udp;           /* datagrams and bytes in/out, drops */
  uint64_t conns_accepted;      /* server: connections made */
  uint64_t conns_refused;       /* server: Initials over conns_max or refused
                                   by on_accept */
  uint64_t accept_failures;     /* server: atun_quic_conn_server_accept
                                   failed (malformed, version, memory) */
  uint64_t conns_closed;        /* connections deleted */
  uint64_t unknown_cid;         /* dropped: no connection, not an Initial */
  uint64_t undecodable;         /* dropped: no connection id readable, or
                                   a QUIC version we do not speak */
  uint64_t wrong_peer;          /* client: dropped, not from the server */
  uint64_t cid_overflow;        /* ids not routed (table or per-conn bound) */
  uint64_t write_yields;        /* writes_per_round reached */
  uint64_t write_blocked;       /* held back by a full send queue */
  size_t conns_open;
  size_t cids_routed;           /* server: ids in the demux table now */
} atun_quic_ev_stats;

/*
 * Server endpoint on |local| (port 0: ephemeral).  |config| is the template
 * for accepted connections: |tls| (a server context), |settings|,
 * |callbacks| (the application's, may be NULL), |user_data|, |mem| (also
 * used for the endpoint itself; NULL: default) and |rand| (also keys the
 * demux hash).  |hooks| NULL: accept all, no close hook.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT, ATUN_ERR_NOMEM, ATUN_ERR_INTERNAL
 * (|rand| failed) or what atun_udp_new returns.
 */
int atun_quic_ev_server_new(atun_quic_ev **pep, struct ev_loop *loop,
                            const atun_quic_ev_settings *settings,
                            const atun_quic_endpoint *local,
                            const atun_quic_conn_config *config,
                            const atun_quic_ev_hooks *hooks, void *user_data);

/*
 * Client endpoint: one connection at a time, made by atun_quic_ev_connect
 * from |config| (|tls| a client context).  Opens no socket yet.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT or ATUN_ERR_NOMEM.
 */
int atun_quic_ev_client_new(atun_quic_ev **pep, struct ev_loop *loop,
                            const atun_quic_ev_settings *settings,
                            const atun_quic_conn_config *config,
                            const atun_quic_ev_hooks *hooks, void *user_data);

/*
 * Client: opens a fresh UDP socket (a new source port per attempt) and
 * starts a connection to |remote| (already resolved), sending its first
 * Initial.  The connection goes to |*pconn| unless |pconn| is NULL.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (a server endpoint, a bad address),
 * ATUN_ERR_STATE (a connection exists: close or abort it first), what
 * atun_udp_new returns, or what atun_quic_conn_client_new returns.
 */
int atun_quic_ev_connect(atun_quic_ev *ep, const atun_quic_endpoint *remote,
                         atun_quic_conn **pconn);

/* Client: the current connection, or NULL. */
atun_quic_conn *atun_quic_ev_client_conn(const atun_quic_ev *ep);

/* Deletes every connection (on_closed for each, no CONNECTION_CLOSE sent),
 * closes the socket and frees |ep| (NULL allowed).  Not from a callback. */
void atun_quic_ev_del(atun_quic_ev *ep);

/* Writes what |conn| has to send and re-arms its timer: call it after
 * writing to or opening a stream outside a callback.  Inside a callback it
 * only marks |conn|; the driver writes when the callback returns. */
void atun_quic_ev_flush(atun_quic_conn *conn);

/* Closes |conn| gracefully (atun_quic_conn_close + flush); it is deleted
 * once its closing period ends.  Returns what atun_quic_conn_close returns. */
int atun_quic_ev_close(atun_quic_conn *conn, uint64_t app_error,
                       const char *reason);

/* Deletes |conn| without a word to the peer (on_closed first).  Inside a
 * callback the deletion waits until the callback returns. */
void atun_quic_ev_abort(atun_quic_conn *conn);

/* The application's user data of |conn| (config.user_data after
 * on_accept), and a way to change it. */
void *atun_quic_ev_conn_get_user_data(const atun_quic_conn *conn);
void atun_quic_ev_conn_set_user_data(atun_quic_conn *conn, void *user_data);

/* The endpoint driving |conn|. */
atun_quic_ev *atun_quic_ev_of(const atun_quic_conn *conn);
void *atun_quic_ev_get_user_data(const atun_quic_ev *ep);

/* The bound local endpoint (client: of the current socket).  Returns 0 or
 * ATUN_ERR_STATE (no socket). */
int atun_quic_ev_get_local(const atun_quic_ev *ep, atun_quic_endpoint *out);

/* UDP facts of the socket (client: the current one); zeroed if none. */
void atun_quic_ev_get_udp_info(const atun_quic_ev *ep, atun_udp_info *out);

/* Counters since creation (a client sums its sockets). */
void atun_quic_ev_get_stats(const atun_quic_ev *ep, atun_quic_ev_stats *out);

/* Monotonic ns for the QUIC objects (CLOCK_MONOTONIC), never the wall
 * clock.  |loop| is accepted for symmetry with ev_now() and unused. */
atun_tstamp atun_quic_ev_now(struct ev_loop *loop);

/* --- testing ------------------------------------------------------------------------------ */

/* The demux table's hash of connection id |p| (|n| bytes) under key
 * |k0|,|k1|: SipHash-2-4.  Tests swap in a poor one to force collisions,
 * which random ids almost never produce.  Never set it elsewhere. */
typedef uint64_t (*atun__quic_ev_hash_fn)(uint64_t k0, uint64_t k1,
                                          const uint8_t *p, size_t n);
extern atun__quic_ev_hash_fn atun__quic_ev_hash;

#ifdef __cplusplus
}
#endif

#endif /* ATUN_QUIC_EV_H */
