/*
 * TCP on a libev loop: a listener and an outgoing connect, both caller-owned
 * with their watchers embedded, plus the socket helpers the data plane needs.
 * No protocol logic.
 *
 * Listener.  Non-blocking, SO_REUSEADDR, IPv4 or IPv6 from the address
 * (the IPv6 wildcard "::" is dual-stack unless |v6only|).  Each readiness
 * event accepts at most |accepts_per_event| connections, so a connection
 * storm can not starve the loop (libev calls again while the queue holds
 * more).  A guard counts the connections the owner took and not yet gave
 * back (atun_tcp_listener_release()); at |conns_max| the listener stops
 * accepting, and the kernel's backlog holds (then drops) newcomers until a
 * release brings the count under the bound.  Running out of descriptors
 * (EMFILE, ENFILE) or kernel memory stops accepting for |error_pause_ns|:
 * a listener left readable would spin the loop.  Every accepted socket is
 * non-blocking, close-on-exec, with TCP_NODELAY.
 *
 * Connect.  Non-blocking connect to an address and port with a deadline
 * (an ev_timer).  The outcome is an atun_connect_status (core/codec.h) so
 * the agent can answer ConnectResponse with it as is:
 *
 *   ok           connected; the callback takes the socket
 *   refused      ECONNREFUSED (a RST answered the SYN), ECONNRESET
 *   unreachable  ENETUNREACH, EHOSTUNREACH, ENETDOWN, EHOSTDOWN,
 *                EACCES/EPERM (a local firewall or a broadcast address)
 *   timeout      the deadline passed first, or ETIMEDOUT from the kernel
 *   internal     anything else (EADDRNOTAVAIL: no local port left, ...)
 *
 * The outcome always arrives through the callback from the loop, even when
 * connect(2) knew it at once (a route lookup failure), never from inside
 * atun_tcp_connect_start(); so the owner has one code path.  A start that
 * fails (bad arguments, no socket) returns an error and never calls back.
 *
 * TCP_NODELAY is set on every socket made here: the tunnel forwards what it
 * reads at once, and Nagle would hold the first small write of a
 * request/response protocol for a round trip.
 */
#ifndef ATUN_TCP_H
#define ATUN_TCP_H

#include <sys/socket.h>

#include <ev.h>

#include "addr.h"
#include "atun.h"
#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- bounds --------------------------------------------------------------- */

/* listen(2) backlog: the kernel caps it at net.core.somaxconn anyway. */
#define ATUN_TCP_BACKLOG_LIMIT 65535
#define ATUN_TCP_ACCEPTS_PER_EVENT_LIMIT 4096
#define ATUN_TCP_CONNS_LIMIT ((size_t)1 << 20)
/* Longest connect deadline and accept pause: an hour (a larger value is a
 * unit mistake). */
#define ATUN_TCP_TIMEOUT_MAX_NS ((uint64_t)3600 * ATUN_NS_PER_S)

/* An address and a port (host order). */
typedef struct atun_tcp_endpoint {
  atun_addr addr;
  uint16_t port;
} atun_tcp_endpoint;

/* --- socket helpers ------------------------------------------------------- */

/* Fills |ss| and |*len| for |ep|.  Returns 0 or ATUN_ERR_INVALID_ARGUMENT
 * (a family other than ATUN_AF_INET / ATUN_AF_INET6). */
int atun_tcp_sockaddr(struct sockaddr_storage *ss, socklen_t *len,
                      const atun_tcp_endpoint *ep);

/* The endpoint of |sa| (|len| bytes); an IPv4-mapped IPv6 address is folded
 * to IPv4.  Returns 0 or ATUN_ERR_INVALID_ARGUMENT. */
int atun_tcp_endpoint_from_sockaddr(atun_tcp_endpoint *ep,
                                    const struct sockaddr *sa, socklen_t len);

/* Sets TCP_NODELAY on |fd|.  Returns 0 or ATUN_ERR_IO (errno set). */
int atun_tcp_set_nodelay(int fd);

/* Ends our sending direction (shutdown SHUT_WR): the peer reads EOF once it
 * has read everything sent before.  Returns 0 or ATUN_ERR_IO (errno set;
 * ENOTCONN when the peer already reset). */
int atun_tcp_half_close(int fd);

/* Closes |fd| with a RST instead of a FIN (SO_LINGER {1, 0}, then close):
 * unsent and unread bytes are dropped and the peer sees ECONNRESET.
 * |fd| is closed even if SO_LINGER fails.  A negative |fd| is a no-op. */
void atun_tcp_reset(int fd);

/* The local / peer endpoint of a connected or bound socket.  Returns 0 or
 * ATUN_ERR_IO. */
int atun_tcp_local_endpoint(int fd, atun_tcp_endpoint *out);
int atun_tcp_peer_endpoint(int fd, atun_tcp_endpoint *out);

/* Maps a connect errno to an atun_connect_status (table above); 0 maps to
 * ATUN_CONNECT_OK. */
int atun_tcp_connect_status_from_errno(int err);

/* --- listener ------------------------------------------------------------- */

typedef struct atun_tcp_listener_settings {
  /* listen(2) backlog, 1..ATUN_TCP_BACKLOG_LIMIT.  Default 1024. */
  int backlog;
  /* accept4 calls per readiness event, 1..LIMIT.  Default 64. */
  size_t accepts_per_event;
  /* Connections taken and not yet released, 1..ATUN_TCP_CONNS_LIMIT;
   * accepting pauses at the bound.  Default 4096. */
  size_t conns_max;
  /* Pause after EMFILE / ENFILE / ENOBUFS / ENOMEM, > 0.  Default 100 ms. */
  uint64_t error_pause_ns;
  /* Nonzero: an IPv6 listener takes IPv6 only.  Default 0 (dual-stack on
   * "::"; IPv4 peers are reported as IPv4). */
  int v6only;
} atun_tcp_listener_settings;

void atun_tcp_listener_settings_default(atun_tcp_listener_settings *settings);

typedef struct atun_tcp_listener atun_tcp_listener;

/* A connection arrived: |fd| (non-blocking, TCP_NODELAY) from |peer|.
 * Return 0 to take it: the owner now owns |fd| and calls
 * atun_tcp_listener_release() once it closed it.  Return nonzero to refuse:
 * the listener resets and closes |fd| and does not count it.  The callback
 * may pause, release or free the listener. */
typedef int (*atun_tcp_accept_cb)(atun_tcp_listener *listener, int fd,
                                  const atun_tcp_endpoint *peer, void *user_data);

typedef struct atun_tcp_listener_stats {
  uint64_t accepted;      /* taken by the callback */
  uint64_t refused;       /* the callback said no */
  uint64_t full_pauses;   /* accepting stopped at conns_max */
  uint64_t error_pauses;  /* accepting stopped after EMFILE & co */
  uint64_t accept_errors; /* other accept4 failures (ECONNABORTED, ...) */
  size_t conns;           /* taken and not yet released */
} atun_tcp_listener_stats;

/* Caller-owned; the fields are internal. */
struct atun_tcp_listener {
  struct ev_loop *loop;
  ev_io io;
  ev_timer pause_timer;
  int fd;
  int paused_by_owner;
  int paused_by_error;
  int *alive; /* cleared by _free while inside the accept loop */
  atun_tcp_listener_settings settings;
  atun_tcp_accept_cb cb;
  void *user_data;
  atun_tcp_endpoint local;
  atun_tcp_listener_stats stats;
};

/* Binds |local| (port 0: ephemeral), listens and starts accepting on |loop|.
 * |settings| NULL means the defaults.  Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  a NULL argument, a setting out of bounds, an
 *                              unknown family
 *   ATUN_ERR_EXISTS            the address is in use
 *   ATUN_ERR_DENIED            not permitted (a privileged port)
 *   ATUN_ERR_IO                another socket failure (errno tells)
 * On error nothing is left open and atun_tcp_listener_free() is a no-op. */
int atun_tcp_listener_init(atun_tcp_listener *listener, struct ev_loop *loop,
                           const atun_tcp_endpoint *local,
                           const atun_tcp_listener_settings *settings,
                           atun_tcp_accept_cb cb, void *user_data);

/* Stops and closes the listener.  Connections taken stay with their owners.
 * Allowed from inside the accept callback, twice, and after a failed init
 * (not on storage that never went through init). */
void atun_tcp_listener_free(atun_tcp_listener *listener);

/* The owner closed one connection it took: the guard counts it out and
 * accepting resumes if it paused at the bound.  Releasing more than was
 * taken is a bug (asserted; ignored in release builds). */
void atun_tcp_listener_release(atun_tcp_listener *listener);

/* Pauses (|paused| nonzero) or resumes accepting on the owner's behalf, e.g.
 * while draining; independent of the guard and of error pauses. */
void atun_tcp_listener_set_paused(atun_tcp_listener *listener, int paused);

/* Nonzero while the listener is not accepting, for whatever reason. */
int atun_tcp_listener_is_paused(const atun_tcp_listener *listener);

/* The bound address (port resolved when 0 was asked for). */
const atun_tcp_endpoint *atun_tcp_listener_local(const atun_tcp_listener *listener);

void atun_tcp_listener_get_stats(const atun_tcp_listener *listener,
                                 atun_tcp_listener_stats *out);

/* --- connect -------------------------------------------------------------- */

typedef struct atun_tcp_connect atun_tcp_connect;

/* The connect ended with |status| (an atun_connect_status).  On
 * ATUN_CONNECT_OK the callback owns |fd| (non-blocking, TCP_NODELAY);
 * otherwise |fd| is -1 and |sys_errno| says why (0 for the deadline).  The
 * attempt is over when this runs: the callback may free |conn| or start it
 * again. */
typedef void (*atun_tcp_connect_cb)(atun_tcp_connect *conn, int status, int fd,
                                    int sys_errno, void *user_data);

/* Caller-owned; the fields are internal. */
struct atun_tcp_connect {
  struct ev_loop *loop;
  ev_io io;
  ev_timer timer;
  int fd;
  int active;
  int early_errno; /* connect(2) failed at once: reported from the loop */
  atun_tcp_connect_cb cb;
  void *user_data;
};

/* Initializes |conn| idle; atun_tcp_connect_cancel() on it is a no-op. */
void atun_tcp_connect_init(atun_tcp_connect *conn);

/* Starts a connect from |conn| (idle: atun_tcp_connect_init() or zeroed
 * storage, or after its callback ran) on |loop| to |remote| that gives up
 * after |timeout_ns| (1..ATUN_TCP_TIMEOUT_MAX_NS).  Returns 0 (the callback
 * will run exactly once unless cancelled) or
 *   ATUN_ERR_INVALID_ARGUMENT  a NULL argument, port 0, an unknown family,
 *                              a timeout out of bounds
 *   ATUN_ERR_STATE             |conn| is already connecting
 *   ATUN_ERR_IO                socket(2) failed (EMFILE: answer
 *                              ATUN_CONNECT_INTERNAL)
 * and then never calls back. */
int atun_tcp_connect_start(atun_tcp_connect *conn, struct ev_loop *loop,
                           const atun_tcp_endpoint *remote, uint64_t timeout_ns,
                           atun_tcp_connect_cb cb, void *user_data);

/* Abandons a connect in progress: the socket is closed and the callback
 * never runs.  A no-op on an idle |conn|. */
void atun_tcp_connect_cancel(atun_tcp_connect *conn);

/* Nonzero while a connect is in progress. */
int atun_tcp_connect_is_active(const atun_tcp_connect *conn);

/* --- testing -------------------------------------------------------------- */

/* The accept4(2) every listener calls; tests swap it to produce errors a
 * real kernel gives only under load (ECONNABORTED, ENOBUFS).  Never set it
 * elsewhere. */
typedef int (*atun__tcp_accept4_fn)(int fd, struct sockaddr *addr, socklen_t *len,
                                    int flags);
extern atun__tcp_accept4_fn atun__tcp_accept4;

#ifdef __cplusplus
}
#endif

#endif /* ATUN_TCP_H */
