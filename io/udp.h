/*
 * A non-blocking UDP socket on a libev loop, for QUIC.
 *
 * - Family from the address: an IPv4 address gives an IPv4 socket; an IPv6
 *   address gives an IPv6 socket, dual-stack (IPV6_V6ONLY=0) when it is the
 *   wildcard "::", so one socket on [::] serves both families.  IPv4 peers
 *   of a dual-stack socket appear as plain IPv4 endpoints (the mapped form
 *   ::ffff:a.b.c.d is folded on receive and rebuilt on send).
 * - Large kernel buffers (SO_RCVBUF/SO_SNDBUF, SO_*BUFFORCE first when
 *   permitted); atun_udp_get_info() reports what the kernel granted.
 * - Receive: recvmmsg, ATUN_UDP_BATCH datagrams per call, at most
 *   |recv_batches_max| calls per readiness event so one busy socket can not
 *   starve the loop (libev calls again while data is left).  A socket bound
 *   to a wildcard address learns each datagram's destination address
 *   (IP_PKTINFO / IPV6_RECVPKTINFO) and can answer from that address, so a
 *   multi-homed gateway replies from the address the agent dialled.
 * - With UDP_GRO (asked for by default, used when the kernel grants it) the
 *   kernel may hand over a run of datagrams of one sender as one message
 *   with their segment size; it is split again before the callback, which
 *   sees single datagrams either way.  Each of the ATUN_UDP_BATCH receive
 *   slots is then ATUN_UDP_GRO_BYTES_MAX bytes (2 MiB in all, touched only
 *   as far as traffic fills them) instead of |recv_datagram_max|.
 * - Send: datagrams go into a bounded queue of |send_queue_max| slots
 *   (allocated once, at creation) and leave with sendmmsg, or with UDP GSO
 *   (UDP_SEGMENT, detected at run time) for runs of equal-size datagrams to
 *   one destination.  A queue that meets EAGAIN waits for EV_WRITE; a
 *   datagram that finds it full is dropped and counted (QUIC recovers).
 *   A send error other than EAGAIN drops the datagrams of the message it
 *   failed on (counted: send_errors); a GSO send the kernel refuses (EIO,
 *   EINVAL) turns GSO off for the socket and the datagrams go again
 *   without it.
 *
 * Callbacks run on the loop; they may send, flush, and even delete the
 * socket (its memory is then released when the callback returns).
 */
#ifndef ATUN_UDP_H
#define ATUN_UDP_H

#include <sys/socket.h>

#include "addr.h"
#include "atun.h"
#include "quic.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

/* Datagrams per recvmmsg / sendmmsg call. */
#define ATUN_UDP_BATCH 32
/* Segments in one GSO send (the kernel's UDP_MAX_SEGMENTS), and its payload
 * bound (one IP datagram). */
#define ATUN_UDP_GSO_SEGMENTS_MAX 64
#define ATUN_UDP_GSO_BYTES_MAX 65000
/* Receive slot size with UDP_GRO: the largest message the kernel builds. */
#define ATUN_UDP_GRO_BYTES_MAX 65535
/* Bounds of the settings. */
#define ATUN_UDP_DATAGRAM_LIMIT 65507
#define ATUN_UDP_DATAGRAM_MIN 64
#define ATUN_UDP_QUEUE_LIMIT 65536
#define ATUN_UDP_BATCHES_LIMIT 1024
#define ATUN_UDP_SOCKBUF_LIMIT ((size_t)256 << 20)

typedef struct atun_udp_settings {
  /* Kernel buffer sizes asked for; 0 keeps the kernel default.  Default
   * 8 MiB each. */
  size_t rcvbuf_bytes;
  size_t sndbuf_bytes;
  /* Room per received datagram; a longer one is dropped and counted
   * (recv_truncated).  Default 2048. */
  size_t recv_datagram_max;
  /* Largest datagram that can be queued (slot size).  Default 1500. */
  size_t send_datagram_max;
  /* Datagrams the send queue holds; beyond: dropped.  Default 1024. */
  size_t send_queue_max;
  /* recvmmsg calls per readiness event.  Default 8. */
  size_t recv_batches_max;
  /* Nonzero: use UDP_SEGMENT when the kernel has it.  Default 1. */
  int gso;
  /* Nonzero: ask for UDP_GRO (coalesced receive).  Default 1. */
  int gro;
} atun_udp_settings;

void atun_udp_settings_default(atun_udp_settings *settings);

typedef struct atun_udp_datagram {
  const uint8_t *data;
  size_t len;
  /* remote: the sender; local: the address it was sent to (the bound
   * address when the kernel did not say) and the bound port. */
  atun_quic_path path;
} atun_udp_datagram;

typedef struct atun_udp atun_udp;

typedef struct atun_udp_callbacks {
  /* |n| (>= 1) datagrams of one recvmmsg call; valid during the call. */
  void (*recv)(atun_udp *udp, const atun_udp_datagram *dgrams, size_t n,
               void *user_data);
  /* The send queue was blocked (EAGAIN or full) and has drained empty:
   * whoever held back may write again.  May be NULL. */
  void (*writable)(atun_udp *udp, void *user_data);
} atun_udp_callbacks;

typedef struct atun_udp_info {
  atun_quic_endpoint local; /* bound address and port */
  int dual_stack;           /* IPv6 socket taking IPv4 too */
  size_t rcvbuf_bytes;      /* as the kernel reports it (Linux doubles) */
  size_t sndbuf_bytes;
  int gso;                  /* UDP_SEGMENT in use */
  int gro;                  /* UDP_GRO in use */
  int pktinfo;              /* destination addresses known per datagram */
} atun_udp_info;

typedef struct atun_udp_stats {
  uint64_t datagrams_in;
  uint64_t bytes_in;
  uint64_t datagrams_out; /* handed to the kernel */
  uint64_t bytes_out;
  uint64_t recv_truncated; /* longer than recv_datagram_max: dropped */
  uint64_t gro_recvs;      /* messages that carried several datagrams */
  uint64_t recv_errors;    /* recvmmsg failures other than EAGAIN */
  uint64_t send_dropped;   /* queue full: dropped */
  uint64_t send_errors;    /* datagrams dropped by a failed send */
  uint64_t send_blocked;   /* EAGAIN: the queue waited for EV_WRITE */
  uint64_t gso_sends;      /* GSO messages sent (several datagrams each) */
  uint64_t send_calls;     /* sendmmsg calls */
  size_t queued;           /* datagrams waiting now */
} atun_udp_stats;

/*
 * Opens a socket bound to |local| (port 0: an ephemeral port) on |loop|,
 * receiving into |callbacks| with |user_data|.  |settings| NULL means
 * defaults; |mem| NULL means atun_mem_default().
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (a NULL argument, no recv callback,
 * a setting out of bounds, a bad family), ATUN_ERR_EXISTS (address in use),
 * ATUN_ERR_DENIED (not permitted), ATUN_ERR_NOMEM, or ATUN_ERR_INTERNAL
 * (another socket error; errno tells which).  On error nothing is left.
 */
int atun_udp_new(atun_udp **pudp, struct ev_loop *loop,
                 const atun_udp_settings *settings,
                 const atun_quic_endpoint *local,
                 const atun_udp_callbacks *callbacks, void *user_data,
                 const atun_mem *mem);

/* Closes the socket and frees |udp| (NULL allowed); queued datagrams are
 * dropped.  From inside one of |udp|'s callbacks the socket stops at once
 * and the memory goes when the callback returns. */
void atun_udp_del(atun_udp *udp);

void atun_udp_get_info(const atun_udp *udp, atun_udp_info *out);
void atun_udp_get_stats(const atun_udp *udp, atun_udp_stats *out);
int atun_udp_fd(const atun_udp *udp);

/* Zero-copy send: a slot of |*cap| (= send_datagram_max) bytes to write one
 * datagram into, committed with atun_udp_send_commit().  NULL when the
 * queue is full (nothing is counted: the caller may hold back and wait for
 * the writable callback).  Reserving again without a commit returns the
 * same slot. */
uint8_t *atun_udp_send_reserve(atun_udp *udp, size_t *cap);

/* Queues the |len| bytes written into the reserved slot for |path|->remote,
 * from |path|->local.addr when the socket is bound to a wildcard and that
 * address is set (family nonzero, not unspecified).  A full batch is sent at
 * once.  Returns 0 or ATUN_ERR_INVALID_ARGUMENT (no slot reserved, |len| 0
 * or above the slot, |remote| not reachable on this socket's family). */
int atun_udp_send_commit(atun_udp *udp, const atun_quic_path *path,
                         size_t len);

/* Copies and queues one datagram.  Returns 0, ATUN_ERR_FULL (queue full:
 * dropped and counted) or ATUN_ERR_INVALID_ARGUMENT (as for commit). */
int atun_udp_send(atun_udp *udp, const atun_quic_path *path,
                  const uint8_t *data, size_t len);

/* Hands the queue to the kernel until it is empty or the kernel says
 * EAGAIN (then EV_WRITE resumes it).  Returns the datagrams still queued. */
size_t atun_udp_flush(atun_udp *udp);

/* Slots free in the send queue. */
size_t atun_udp_send_room(const atun_udp *udp);

/* --- address conversion ---------------------------------------------------------- */

/* Fills |ss|/|*len| for endpoint |ep| as a socket of |family| (AF_INET or
 * AF_INET6) needs it: IPv4 on an AF_INET6 socket becomes ::ffff:a.b.c.d.
 * Returns 0 or ATUN_ERR_INVALID_ARGUMENT (IPv6 on an AF_INET socket, or an
 * unknown family). */
int atun_udp_sockaddr_from_endpoint(struct sockaddr_storage *ss,
                                    socklen_t *len,
                                    const atun_quic_endpoint *ep, int family);

/* The endpoint of |sa| (|len| bytes), an IPv4-mapped IPv6 address folded to
 * IPv4.  Returns 0 or ATUN_ERR_INVALID_ARGUMENT. */
int atun_udp_endpoint_from_sockaddr(atun_quic_endpoint *ep,
                                    const struct sockaddr *sa, socklen_t len);

/* --- testing -------------------------------------------------------------------------- */

struct mmsghdr;

/* The sendmmsg(2) every socket calls; tests swap it to make the kernel
 * "say" EAGAIN or EIO, which loopback never does (it frees a datagram's
 * send buffer the moment it is handed over).  Never set it elsewhere. */
typedef int (*atun__udp_sendmmsg_fn)(int fd, struct mmsghdr *msgs,
                                     unsigned int n, int flags);
extern atun__udp_sendmmsg_fn atun__udp_sendmmsg;

#ifdef __cplusplus
}
#endif

#endif /* ATUN_UDP_H */
