/*
 * Asynchronous name resolution with c-ares on a libev loop, for the agent's
 * host-name targets (SPEC section 3: dns_failure).  Never blocks the loop.
 *
 * One resolver (atun_dns) holds a c-ares channel.  c-ares tells through its
 * socket-state callback which sockets to watch; each gets an ev_io from a
 * table of |sockets_max| slots allocated once, and a socket that would not
 * find a slot is refused at creation (c-ares then treats that server as
 * failing).  One ev_timer runs c-ares' retransmissions, re-armed from
 * ares_timeout() after every piece of work.
 *
 * A query (atun_dns_query) is caller-owned storage, embedded in whatever
 * waits for the answer, with its own ev_timer: the per-query deadline.  It
 * asks for A and AAAA at once (ares_getaddrinfo, AF_UNSPEC) and reports at
 * most ATUN_DNS_ADDRS_MAX distinct addresses, in c-ares' RFC 6724 order.
 * The outcome maps onto atun_connect_status: ok, dns_failure (no such name,
 * no address, no answer in time, a failing server, a bad name) or internal
 * (c-ares out of memory).
 *
 * Cancellation.  c-ares can not drop one query, so each carries a small
 * ticket: cancelling (or the deadline) detaches the query from its ticket
 * and c-ares finishes on its own - its retries are bounded by
 * |try_timeout_ns| and |tries| - into a ticket nobody reads.  A cancelled
 * query never calls back and its storage may go at once.  Detached tickets
 * count towards |queries_max| until c-ares lets go of them.
 *
 * The callback always runs from the loop, never inside atun_dns_resolve()
 * (an /etc/hosts hit or a numeric name completes at once inside c-ares: the
 * answer waits for a zero timer).  It may free the query, start it again or
 * start others, but not delete the resolver.
 *
 * Configuration: the system's /etc/resolv.conf by default (nameservers,
 * search, ndots, options), /etc/hosts first when |use_hosts|.  |servers|
 * replaces the nameservers (in that order, no rotation) and |resolv_conf|
 * the file, which is how tests keep every packet on loopback.
 */
#ifndef ATUN_DNS_H
#define ATUN_DNS_H

#include <ev.h>

#include "addr.h"
#include "atun.h"
#include "tcp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Addresses one answer reports; more are dropped (and counted). */
#define ATUN_DNS_ADDRS_MAX 16
/* Nameservers given in the settings. */
#define ATUN_DNS_SERVERS_MAX 8
#define ATUN_DNS_QUERIES_LIMIT 65536
#define ATUN_DNS_SOCKETS_LIMIT 256
#define ATUN_DNS_TRIES_LIMIT 16
/* Longest query deadline and try timeout (a larger one is a unit slip). */
#define ATUN_DNS_TIMEOUT_MAX_NS ((uint64_t)300 * ATUN_NS_PER_S)
/* A name: 253 characters, one trailing dot allowed. */
#define ATUN_DNS_NAME_MAX 254

typedef struct atun_dns_settings {
  /* The whole query, 1 ms..TIMEOUT_MAX.  Default 5 s. */
  uint64_t timeout_ns;
  /* c-ares' first try timeout per server (it doubles on later rounds),
   * 1 ms..TIMEOUT_MAX, millisecond resolution.  Default 1 s. */
  uint64_t try_timeout_ns;
  /* c-ares' tries per server, 1..LIMIT.  Default 2. */
  int tries;
  /* Queries c-ares holds at once, detached ones included,
   * 1..ATUN_DNS_QUERIES_LIMIT.  Default 1024. */
  size_t queries_max;
  /* Sockets watched at once (two per nameserver suffice: UDP and TCP),
   * 1..ATUN_DNS_SOCKETS_LIMIT.  Default 16. */
  size_t sockets_max;
  /* Nameservers replacing resolv.conf's, |nservers| <= SERVERS_MAX; NULL
   * and 0 keep resolv.conf's. */
  const atun_tcp_endpoint *servers;
  size_t nservers;
  /* resolv.conf to read; NULL: the system's. */
  const char *resolv_conf;
  /* Nonzero: look in /etc/hosts (or $CARES_HOSTS) before DNS.  Default 1. */
  int use_hosts;
  /* Nonzero: apply resolv.conf's search domains.  Default 1. */
  int use_search;
} atun_dns_settings;

void atun_dns_settings_default(atun_dns_settings *settings);

/* Why a query ended as it did; atun_dns_reason_name() gives a label. */
typedef enum atun_dns_reason {
  ATUN_DNS_OK = 0,       /* "ok" */
  ATUN_DNS_NXDOMAIN,     /* "nxdomain": no such name */
  ATUN_DNS_NODATA,       /* "no_data": the name has no A/AAAA */
  ATUN_DNS_TIMEOUT,      /* "timeout": no answer in time */
  ATUN_DNS_SERVER,       /* "server_failure": SERVFAIL, REFUSED, an
                            unreadable answer, no usable server */
  ATUN_DNS_BAD_NAME,     /* "bad_name": c-ares refused the name */
  ATUN_DNS_NOMEM         /* "nomem": c-ares ran out of memory */
} atun_dns_reason;

const char *atun_dns_reason_name(int reason);

typedef struct atun_dns_result {
  int status; /* ATUN_CONNECT_OK, _DNS_FAILURE or _INTERNAL (NOMEM) */
  int reason; /* atun_dns_reason */
  size_t naddrs;
  atun_addr addrs[ATUN_DNS_ADDRS_MAX];
  size_t dropped; /* addresses after the list was full (not checked
                     against each other for duplicates) */
} atun_dns_result;

typedef struct atun_dns atun_dns;
typedef struct atun_dns_query atun_dns_query;
typedef struct atun_dns_ticket atun_dns_ticket;

/* The query ended; |result| is valid during the call (it lives in
 * |query|).  |query| is idle again: the callback may free or reuse it. */
typedef void (*atun_dns_cb)(atun_dns_query *query, const atun_dns_result *result,
                            void *user_data);

/* Caller-owned; the fields are internal. */
struct atun_dns_query {
  atun_dns *dns;
  ev_timer timer; /* the deadline, or a zero timer delivering an answer */
  atun_dns_ticket *ticket;
  atun_dns_query *prev, *next; /* the resolver's active queries */
  atun_dns_cb cb;
  void *user_data;
  int active;
  int answered; /* |result| holds the answer, waiting for the timer */
  atun_dns_result result;
};

typedef struct atun_dns_stats {
  uint64_t queries;         /* started */
  uint64_t answered_ok;
  uint64_t failed;          /* dns_failure or internal, timeouts included */
  uint64_t timeouts;        /* the per-query deadline passed */
  uint64_t cancelled;
  uint64_t sockets_refused; /* c-ares wanted a socket beyond sockets_max */
  size_t in_flight;         /* tickets c-ares holds, detached ones included */
  size_t detached;          /* of which nobody waits for */
  size_t sockets;           /* watched now */
} atun_dns_stats;

/* Creates a resolver on |loop|.  |settings| NULL means the defaults; |mem|
 * NULL atun_mem_default() (c-ares itself uses the C library's allocator).
 * Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  a NULL argument, a setting out of bounds,
 *                              more than ATUN_DNS_SERVERS_MAX servers or one
 *                              of neither family
 *   ATUN_ERR_NOMEM
 *   ATUN_ERR_IO                c-ares could not start (unreadable
 *                              resolv.conf, ...) */
int atun_dns_new(atun_dns **pdns, struct ev_loop *loop,
                 const atun_dns_settings *settings, const atun_mem *mem);

/* Cancels every query without a callback, stops every watcher and frees
 * |dns| (NULL allowed).  Not from inside a callback. */
void atun_dns_del(atun_dns *dns);

/* Initializes |query| idle, so that atun_dns_cancel() on it is a no-op. */
void atun_dns_query_init(atun_dns_query *query);

/* Starts resolving |name| (NUL-terminated, 1..ATUN_DNS_NAME_MAX bytes)
 * into |query| (idle).  Returns 0 (the callback runs exactly once unless
 * the query is cancelled) or
 *   ATUN_ERR_INVALID_ARGUMENT  a NULL argument, an empty or overlong name
 *   ATUN_ERR_STATE             |query| is active
 *   ATUN_ERR_FULL              |queries_max| tickets in flight
 *   ATUN_ERR_NOMEM
 * and then never calls back. */
int atun_dns_resolve(atun_dns *dns, atun_dns_query *query, const char *name,
                     atun_dns_cb cb, void *user_data);

/* Abandons |query|: no callback, storage free at once.  A no-op on an
 * idle query. */
void atun_dns_cancel(atun_dns_query *query);

/* Nonzero while |query| waits for its callback. */
int atun_dns_query_is_active(const atun_dns_query *query);

void atun_dns_get_stats(const atun_dns *dns, atun_dns_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_DNS_H */
