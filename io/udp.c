/*
 * UDP socket on libev; see udp.h.
 */
#define _GNU_SOURCE /* recvmmsg, sendmmsg, in6_pktinfo */

#include "udp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

atun__udp_sendmmsg_fn atun__udp_sendmmsg = sendmmsg;

/* Slots one sendmmsg call may carry (GSO groups several per message). */
#define SEND_SLOTS_MAX 256

/* Room for one pktinfo and one UDP_SEGMENT (send) or UDP_GRO (receive)
 * control message. */
#define CTL_BYTES \
  (CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(int)))

/* Datagrams handed to the recv callback at once; a batch of coalesced
 * messages is split and delivered in runs of at most this many. */
#define RECV_DGRAMS_MAX 256

typedef union ctlbuf {
  char buf[CTL_BYTES];
  struct cmsghdr align;
} ctlbuf;

typedef struct slot {
  struct sockaddr_storage to;
  socklen_t tolen;
  atun_addr src; /* family 0: let the kernel choose */
  size_t len;
} slot;

struct atun_udp {
  struct ev_loop *loop;
  ev_io rio;
  ev_io wio;
  int fd;
  int family;   /* AF_INET or AF_INET6 */
  int wildcard; /* bound to 0.0.0.0 or :: */
  int dual;
  int gso;
  int gro;
  int pktinfo;
  size_t rslot; /* bytes per receive slot */
  atun_udp_settings s;
  atun_udp_callbacks cb;
  void *user_data;
  const atun_mem *mem;
  atun_quic_endpoint local;
  size_t rcvbuf, sndbuf;
  atun_udp_stats st;

  /* receive: one batch of slots */
  uint8_t *rbuf;
  struct mmsghdr rmsg[ATUN_UDP_BATCH];
  struct iovec riov[ATUN_UDP_BATCH];
  struct sockaddr_storage rname[ATUN_UDP_BATCH];
  ctlbuf rctl[ATUN_UDP_BATCH];
  atun_udp_datagram dg[RECV_DGRAMS_MAX];

  /* send: a ring of |s.send_queue_max| slots */
  slot *q;
  uint8_t *qbuf;
  size_t qhead, qlen;
  int reserved;
  int blocked; /* waiting for EV_WRITE */
  int in_cb;   /* inside a user callback: deletion waits for its return */
  int dead;
  struct mmsghdr smsg[ATUN_UDP_BATCH];
  struct iovec siov[SEND_SLOTS_MAX];
  ctlbuf sctl[ATUN_UDP_BATCH];
  size_t sslots[ATUN_UDP_BATCH]; /* slots carried by each message */
};

void atun_udp_settings_default(atun_udp_settings *s) {
  s->rcvbuf_bytes = (size_t)8 << 20;
  s->sndbuf_bytes = (size_t)8 << 20;
  s->recv_datagram_max = 2048;
  s->send_datagram_max = 1500;
  s->send_queue_max = 1024;
  s->recv_batches_max = 8;
  s->gso = 1;
  s->gro = 1;
}

static int settings_valid(const atun_udp_settings *s) {
  return s->rcvbuf_bytes <= ATUN_UDP_SOCKBUF_LIMIT &&
         s->sndbuf_bytes <= ATUN_UDP_SOCKBUF_LIMIT &&
         s->recv_datagram_max >= ATUN_UDP_DATAGRAM_MIN &&
         s->recv_datagram_max <= ATUN_UDP_DATAGRAM_LIMIT &&
         s->send_datagram_max >= ATUN_UDP_DATAGRAM_MIN &&
         s->send_datagram_max <= ATUN_UDP_DATAGRAM_LIMIT &&
         s->send_queue_max >= 1 && s->send_queue_max <= ATUN_UDP_QUEUE_LIMIT &&
         s->recv_batches_max >= 1 && s->recv_batches_max <= ATUN_UDP_BATCHES_LIMIT;
}

/* --- addresses ------------------------------------------------------------------------ */

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int atun_udp_sockaddr_from_endpoint(struct sockaddr_storage *ss, socklen_t *len,
                                    const atun_quic_endpoint *ep, int family) {
  if (ss == NULL || len == NULL || ep == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  memset(ss, 0, sizeof(*ss));
  if (family == AF_INET && ep->addr.family == ATUN_AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(ep->port);
    memcpy(&sin->sin_addr, ep->addr.bytes, 4);
    *len = sizeof(*sin);
    return 0;
  }
  if (family != AF_INET6 ||
      (ep->addr.family != ATUN_AF_INET && ep->addr.family != ATUN_AF_INET6)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(ep->port);
  if (ep->addr.family == ATUN_AF_INET) {
    memcpy(sin6->sin6_addr.s6_addr, v4mapped_prefix, 12);
    memcpy(sin6->sin6_addr.s6_addr + 12, ep->addr.bytes, 4);
  } else {
    memcpy(sin6->sin6_addr.s6_addr, ep->addr.bytes, 16);
  }
  *len = sizeof(*sin6);
  return 0;
}

int atun_udp_endpoint_from_sockaddr(atun_quic_endpoint *ep,
                                    const struct sockaddr *sa, socklen_t len) {
  if (ep == NULL || sa == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  memset(ep, 0, sizeof(*ep));
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
    ep->addr.family = ATUN_AF_INET;
    memcpy(ep->addr.bytes, &sin->sin_addr, 4);
    ep->port = ntohs(sin->sin_port);
    return 0;
  }
  if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
    ep->addr.family = ATUN_AF_INET6;
    memcpy(ep->addr.bytes, sin6->sin6_addr.s6_addr, 16);
    atun_addr_normalize(&ep->addr);
    ep->port = ntohs(sin6->sin6_port);
    return 0;
  }
  return ATUN_ERR_INVALID_ARGUMENT;
}

static int addr_is_unspecified(const atun_addr *a) {
  size_t n = a->family == ATUN_AF_INET ? 4 : 16;
  for (size_t i = 0; i < n; ++i) {
    if (a->bytes[i] != 0) return 0;
  }
  return 1;
}

/* --- receive ----------------------------------------------------------------------------- */

/* The destination address (pktinfo) and the segment size of a coalesced
 * message (UDP_GRO) from the control messages; |*seg| stays 0 without. */
static void cmsg_parse(struct msghdr *mh, atun_addr *local, size_t *seg) {
  for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      struct in_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof(pi));
      local->family = ATUN_AF_INET;
      memcpy(local->bytes, &pi.ipi_addr, 4);
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      struct in6_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof(pi));
      local->family = ATUN_AF_INET6;
      memcpy(local->bytes, pi.ipi6_addr.s6_addr, 16);
      atun_addr_normalize(local);
    } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
      int v;
      memcpy(&v, CMSG_DATA(c), sizeof(v));
      *seg = v > 0 ? (size_t)v : 0;
    }
  }
}

static void recv_prepare(atun_udp *u) {
  for (size_t i = 0; i < ATUN_UDP_BATCH; ++i) {
    u->riov[i].iov_base = u->rbuf + i * u->rslot;
    u->riov[i].iov_len = u->rslot;
    struct msghdr *mh = &u->rmsg[i].msg_hdr;
    memset(mh, 0, sizeof(*mh));
    mh->msg_name = &u->rname[i];
    mh->msg_namelen = sizeof(u->rname[i]);
    mh->msg_iov = &u->riov[i];
    mh->msg_iovlen = 1;
    int ctl = u->pktinfo || u->gro;
    mh->msg_control = ctl ? u->rctl[i].buf : NULL;
    mh->msg_controllen = ctl ? sizeof(u->rctl[i].buf) : 0;
    u->rmsg[i].msg_len = 0;
  }
}

static void udp_free(atun_udp *u);

/* Runs the recv callback; returns -1 if it deleted the socket (now freed). */
static int deliver(atun_udp *u, size_t k) {
  u->in_cb = 1;
  u->cb.recv(u, u->dg, k, u->user_data);
  u->in_cb = 0;
  if (!u->dead) return 0;
  udp_free(u);
  return -1;
}

/* Turns |n| received messages into datagrams, a coalesced message into its
 * segments, and delivers them in runs.  Returns -1 if a callback deleted
 * the socket. */
static int recv_collect(atun_udp *u, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    struct msghdr *mh = &u->rmsg[i].msg_hdr;
    if (mh->msg_flags & MSG_TRUNC) {
      ++u->st.recv_truncated;
      continue;
    }
    atun_quic_path path;
    if (atun_udp_endpoint_from_sockaddr(&path.remote, mh->msg_name,
                                        mh->msg_namelen) != 0) {
      ++u->st.recv_errors;
      continue;
    }
    path.local = u->local;
    size_t len = u->rmsg[i].msg_len, seg = 0;
    cmsg_parse(mh, &path.local.addr, &seg);
    if (seg == 0 || seg > len) seg = len;
    if (seg < len) ++u->st.gro_recvs;
    const uint8_t *data = u->riov[i].iov_base;
    size_t off = 0;
    do {
      size_t dl = len - off < seg ? len - off : seg;
      const uint8_t *at = data + off;
      off += dl;
      if (dl > u->s.recv_datagram_max) {
        ++u->st.recv_truncated; /* a coalesced one the slot bound misses */
        continue;
      }
      atun_udp_datagram *d = &u->dg[k];
      d->path = path;
      d->data = at;
      d->len = dl;
      ++u->st.datagrams_in;
      u->st.bytes_in += dl;
      if (++k == RECV_DGRAMS_MAX) {
        if (deliver(u, k) != 0) return -1;
        k = 0;
      }
    } while (off < len);
  }
  return k > 0 ? deliver(u, k) : 0;
}

static void recv_cb(struct ev_loop *loop, ev_io *w, int revents) {
  atun_udp *u = w->data;
  (void)loop;
  (void)revents;
  for (size_t b = 0; b < u->s.recv_batches_max; ++b) {
    recv_prepare(u);
    int n = recvmmsg(u->fd, u->rmsg, ATUN_UDP_BATCH, 0, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) ++u->st.recv_errors;
      return;
    }
    if (recv_collect(u, (size_t)n) != 0) return;
    if (n < ATUN_UDP_BATCH) return;
  }
}

/* --- send ---------------------------------------------------------------------------------- */

static size_t qindex(const atun_udp *u, size_t i) {
  return (u->qhead + i) % u->s.send_queue_max;
}

static uint8_t *slot_data(const atun_udp *u, size_t idx) {
  return u->qbuf + idx * u->s.send_datagram_max;
}

static int same_flow(const slot *a, const slot *b) {
  return a->tolen == b->tolen && memcmp(&a->to, &b->to, a->tolen) == 0 &&
         memcmp(&a->src, &b->src, sizeof(a->src)) == 0;
}

/* Slots from queue position |first| that can leave as one GSO message:
 * one destination and source, equal sizes, only the last may be shorter. */
static size_t gso_run(const atun_udp *u, size_t first, size_t max) {
  const slot *s0 = &u->q[qindex(u, first)];
  size_t n = 1, bytes = s0->len;
  while (n < max && n < ATUN_UDP_GSO_SEGMENTS_MAX && first + n < u->qlen) {
    const slot *prev = &u->q[qindex(u, first + n - 1)];
    const slot *s = &u->q[qindex(u, first + n)];
    if (prev->len != s0->len || s->len > s0->len || !same_flow(s0, s) ||
        bytes + s->len > ATUN_UDP_GSO_BYTES_MAX) {
      break;
    }
    bytes += s->len;
    ++n;
  }
  return n;
}

static void put_cmsgs(atun_udp *u, struct msghdr *mh, ctlbuf *ctl,
                      const slot *s, size_t segs) {
  memset(ctl, 0, sizeof(*ctl));
  mh->msg_control = ctl->buf;
  mh->msg_controllen = sizeof(ctl->buf);
  struct cmsghdr *c = CMSG_FIRSTHDR(mh);
  size_t used = 0;
  if (s->src.family != 0) {
    if (u->family == AF_INET) {
      struct in_pktinfo pi = {0};
      memcpy(&pi.ipi_spec_dst, s->src.bytes, 4);
      c->cmsg_level = IPPROTO_IP;
      c->cmsg_type = IP_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(pi));
      memcpy(CMSG_DATA(c), &pi, sizeof(pi));
      used += CMSG_SPACE(sizeof(pi));
    } else {
      struct in6_pktinfo pi = {0};
      if (s->src.family == ATUN_AF_INET) {
        memcpy(pi.ipi6_addr.s6_addr, v4mapped_prefix, 12);
        memcpy(pi.ipi6_addr.s6_addr + 12, s->src.bytes, 4);
      } else {
        memcpy(pi.ipi6_addr.s6_addr, s->src.bytes, 16);
      }
      c->cmsg_level = IPPROTO_IPV6;
      c->cmsg_type = IPV6_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(pi));
      memcpy(CMSG_DATA(c), &pi, sizeof(pi));
      used += CMSG_SPACE(sizeof(pi));
    }
    c = CMSG_NXTHDR(mh, c);
  }
  if (segs > 1) {
    uint16_t seg = (uint16_t)s->len;
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(seg));
    memcpy(CMSG_DATA(c), &seg, sizeof(seg));
    used += CMSG_SPACE(sizeof(seg));
  }
  mh->msg_controllen = used;
  if (used == 0) mh->msg_control = NULL;
}

/* Builds up to ATUN_UDP_BATCH messages from the head of the queue; returns
 * how many. */
static size_t send_prepare(atun_udp *u) {
  size_t nmsg = 0, pos = 0;
  while (nmsg < ATUN_UDP_BATCH && pos < u->qlen && pos < SEND_SLOTS_MAX) {
    size_t room = SEND_SLOTS_MAX - pos;
    size_t segs = u->gso ? gso_run(u, pos, room) : 1;
    const slot *s0 = &u->q[qindex(u, pos)];
    struct msghdr *mh = &u->smsg[nmsg].msg_hdr;
    memset(mh, 0, sizeof(*mh));
    mh->msg_name = (void *)&s0->to;
    mh->msg_namelen = s0->tolen;
    mh->msg_iov = &u->siov[pos];
    mh->msg_iovlen = segs;
    for (size_t i = 0; i < segs; ++i) {
      size_t idx = qindex(u, pos + i);
      u->siov[pos + i].iov_base = slot_data(u, idx);
      u->siov[pos + i].iov_len = u->q[idx].len;
    }
    put_cmsgs(u, mh, &u->sctl[nmsg], s0, segs);
    u->sslots[nmsg] = segs;
    pos += segs;
    ++nmsg;
  }
  return nmsg;
}

static void queue_pop(atun_udp *u, size_t n, int sent) {
  for (size_t i = 0; i < n; ++i) {
    const slot *s = &u->q[qindex(u, 0)];
    if (sent) {
      ++u->st.datagrams_out;
      u->st.bytes_out += s->len;
    } else {
      ++u->st.send_errors;
    }
    u->qhead = qindex(u, 1);
    --u->qlen;
  }
}

static void set_blocked(atun_udp *u) {
  u->blocked = 1;
  ++u->st.send_blocked;
  ev_io_start(u->loop, &u->wio);
}

/* One sendmmsg round.  Returns 0 to go on, -1 when blocked. */
static int send_round(atun_udp *u) {
  size_t nmsg = send_prepare(u);
  int n = atun__udp_sendmmsg(u->fd, u->smsg, (unsigned)nmsg, 0);
  ++u->st.send_calls;
  if (n < 0) {
    if (errno == EINTR) return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      set_blocked(u);
      return -1;
    }
    if (u->sslots[0] > 1 && (errno == EIO || errno == EINVAL)) {
      /* The device (or a kernel without it) refuses GSO: do without. */
      u->gso = 0;
      return 0;
    }
    queue_pop(u, u->sslots[0], 0);
    return 0;
  }
  for (int i = 0; i < n; ++i) {
    if (u->sslots[i] > 1) ++u->st.gso_sends;
    queue_pop(u, u->sslots[i], 1);
  }
  return 0;
}

size_t atun_udp_flush(atun_udp *u) {
  if (u == NULL) return 0;
  /* Each round takes at least one slot off or blocks: bounded by the
   * queue length. */
  while (u->qlen > 0 && !u->blocked) {
    if (send_round(u) != 0) break;
  }
  return u->qlen;
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents) {
  atun_udp *u = w->data;
  (void)revents;
  ev_io_stop(loop, &u->wio);
  u->blocked = 0;
  if (atun_udp_flush(u) == 0 && u->cb.writable != NULL) {
    u->in_cb = 1;
    u->cb.writable(u, u->user_data);
    u->in_cb = 0;
    if (u->dead) udp_free(u);
  }
}

size_t atun_udp_send_room(const atun_udp *u) {
  return u == NULL ? 0 : u->s.send_queue_max - u->qlen;
}

uint8_t *atun_udp_send_reserve(atun_udp *u, size_t *cap) {
  if (u == NULL || cap == NULL || u->qlen == u->s.send_queue_max) return NULL;
  u->reserved = 1;
  *cap = u->s.send_datagram_max;
  return slot_data(u, qindex(u, u->qlen));
}

int atun_udp_send_commit(atun_udp *u, const atun_quic_path *path, size_t len) {
  if (u == NULL || path == NULL || !u->reserved || len == 0 ||
      len > u->s.send_datagram_max) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  slot *s = &u->q[qindex(u, u->qlen)];
  if (atun_udp_sockaddr_from_endpoint(&s->to, &s->tolen, &path->remote,
                                      u->family) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  memset(&s->src, 0, sizeof(s->src));
  const atun_addr *src = &path->local.addr;
  if (u->wildcard && u->pktinfo &&
      (src->family == ATUN_AF_INET ||
       (src->family == ATUN_AF_INET6 && u->family == AF_INET6)) &&
      !addr_is_unspecified(src)) {
    s->src = *src;
  }
  s->len = len;
  u->reserved = 0;
  ++u->qlen;
  size_t batch = u->s.send_queue_max < ATUN_UDP_BATCH ? u->s.send_queue_max
                                                      : ATUN_UDP_BATCH;
  if (u->qlen >= batch) atun_udp_flush(u);
  return 0;
}

int atun_udp_send(atun_udp *u, const atun_quic_path *path, const uint8_t *data,
                  size_t len) {
  if (u == NULL || path == NULL || data == NULL || len == 0 ||
      len > u->s.send_datagram_max) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  size_t cap;
  uint8_t *p = atun_udp_send_reserve(u, &cap);
  if (p == NULL) {
    ++u->st.send_dropped;
    return ATUN_ERR_FULL;
  }
  memcpy(p, data, len);
  int rv = atun_udp_send_commit(u, path, len);
  if (rv != 0) u->reserved = 0;
  return rv;
}

/* --- socket -------------------------------------------------------------------------------- */

static int errno_to_error(int e) {
  switch (e) {
  case EADDRINUSE: return ATUN_ERR_EXISTS;
  case EACCES:
  case EPERM: return ATUN_ERR_DENIED;
  case EADDRNOTAVAIL:
  case EAFNOSUPPORT: return ATUN_ERR_INVALID_ARGUMENT;
  case ENOMEM:
  case ENOBUFS: return ATUN_ERR_NOMEM;
  default: return ATUN_ERR_INTERNAL;
  }
}

/* Asks for |want| bytes (the privileged option first, which ignores the
 * rmem_max/wmem_max ceiling) and returns what the kernel granted. */
static size_t set_buffer(int fd, int force_opt, int opt, size_t want) {
  if (want > 0) {
    int v = want > INT_MAX / 2 ? INT_MAX / 2 : (int)want;
    if (setsockopt(fd, SOL_SOCKET, force_opt, &v, sizeof(v)) != 0) {
      (void)setsockopt(fd, SOL_SOCKET, opt, &v, sizeof(v));
    }
  }
  int got = 0;
  socklen_t len = sizeof(got);
  if (getsockopt(fd, SOL_SOCKET, opt, &got, &len) != 0 || got < 0) return 0;
  return (size_t)got;
}

static int enable_pktinfo(atun_udp *u) {
  int one = 1;
  if (u->family == AF_INET) {
    return setsockopt(u->fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
  }
  return setsockopt(u->fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one));
}

static int gso_available(int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &v, &len) == 0;
}

/* Creates, configures and binds the socket.  Returns 0 or -1 (errno). */
static int socket_open(atun_udp *u, const atun_quic_endpoint *local) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  if (atun_udp_sockaddr_from_endpoint(&ss, &sslen, local, u->family) != 0) {
    errno = EAFNOSUPPORT;
    return -1;
  }
  u->fd = socket(u->family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (u->fd < 0) return -1;
  int v6only = u->dual ? 0 : 1;
  if (u->family == AF_INET6 &&
      setsockopt(u->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) != 0) {
    return -1;
  }
  u->rcvbuf = set_buffer(u->fd, SO_RCVBUFFORCE, SO_RCVBUF, u->s.rcvbuf_bytes);
  u->sndbuf = set_buffer(u->fd, SO_SNDBUFFORCE, SO_SNDBUF, u->s.sndbuf_bytes);
  u->pktinfo = u->wildcard && enable_pktinfo(u) == 0;
  if (bind(u->fd, (struct sockaddr *)&ss, sslen) != 0) return -1;
  struct sockaddr_storage bound;
  socklen_t blen = sizeof(bound);
  if (getsockname(u->fd, (struct sockaddr *)&bound, &blen) != 0) return -1;
  uint16_t port;
  atun_quic_endpoint ep;
  if (atun_udp_endpoint_from_sockaddr(&ep, (struct sockaddr *)&bound, blen) != 0) {
    errno = EAFNOSUPPORT;
    return -1;
  }
  port = ep.port;
  u->local = *local;
  u->local.port = port;
  u->gso = u->s.gso && gso_available(u->fd);
  int one = 1;
  u->gro = u->s.gro && setsockopt(u->fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
  u->rslot = u->gro ? ATUN_UDP_GRO_BYTES_MAX : u->s.recv_datagram_max;
  return 0;
}

static int buffers_alloc(atun_udp *u) {
  u->rbuf = atun_mem_malloc(u->mem, ATUN_UDP_BATCH * u->rslot);
  u->q = atun_mem_calloc(u->mem, u->s.send_queue_max, sizeof(*u->q));
  u->qbuf = atun_mem_malloc(u->mem, u->s.send_queue_max * u->s.send_datagram_max);
  return u->rbuf != NULL && u->q != NULL && u->qbuf != NULL ? 0 : ATUN_ERR_NOMEM;
}

static void udp_free(atun_udp *u) {
  if (u->fd >= 0) close(u->fd);
  atun_mem_free(u->mem, u->rbuf);
  atun_mem_free(u->mem, u->q);
  atun_mem_free(u->mem, u->qbuf);
  atun_mem_free(u->mem, u);
}

int atun_udp_new(atun_udp **pudp, struct ev_loop *loop,
                 const atun_udp_settings *settings,
                 const atun_quic_endpoint *local,
                 const atun_udp_callbacks *callbacks, void *user_data,
                 const atun_mem *mem) {
  atun_udp_settings defaults;
  if (settings == NULL) {
    atun_udp_settings_default(&defaults);
    settings = &defaults;
  }
  if (mem == NULL) mem = atun_mem_default();
  if (pudp == NULL || loop == NULL || local == NULL || callbacks == NULL ||
      callbacks->recv == NULL || !settings_valid(settings) ||
      (local->addr.family != ATUN_AF_INET && local->addr.family != ATUN_AF_INET6)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  atun_udp *u = atun_mem_calloc(mem, 1, sizeof(*u));
  if (u == NULL) return ATUN_ERR_NOMEM;
  u->fd = -1;
  u->mem = mem;
  u->loop = loop;
  u->s = *settings;
  u->cb = *callbacks;
  u->user_data = user_data;
  u->family = local->addr.family == ATUN_AF_INET ? AF_INET : AF_INET6;
  u->wildcard = addr_is_unspecified(&local->addr);
  u->dual = u->family == AF_INET6 && u->wildcard;
  int rv = socket_open(u, local) != 0 ? errno_to_error(errno) : buffers_alloc(u);
  if (rv != 0) {
    int e = errno;
    udp_free(u);
    errno = e;
    return rv;
  }
  ev_io_init(&u->rio, recv_cb, u->fd, EV_READ);
  u->rio.data = u;
  ev_io_init(&u->wio, write_cb, u->fd, EV_WRITE);
  u->wio.data = u;
  ev_io_start(loop, &u->rio);
  *pudp = u;
  return 0;
}

void atun_udp_del(atun_udp *u) {
  if (u == NULL || u->dead) return;
  ev_io_stop(u->loop, &u->rio);
  ev_io_stop(u->loop, &u->wio);
  if (u->in_cb) {
    u->dead = 1;
    return;
  }
  udp_free(u);
}

void atun_udp_get_info(const atun_udp *u, atun_udp_info *out) {
  memset(out, 0, sizeof(*out));
  if (u == NULL) return;
  out->local = u->local;
  out->dual_stack = u->dual;
  out->rcvbuf_bytes = u->rcvbuf;
  out->sndbuf_bytes = u->sndbuf;
  out->gso = u->gso;
  out->gro = u->gro;
  out->pktinfo = u->pktinfo;
}

void atun_udp_get_stats(const atun_udp *u, atun_udp_stats *out) {
  memset(out, 0, sizeof(*out));
  if (u == NULL) return;
  *out = u->st;
  out->queued = u->qlen;
}

int atun_udp_fd(const atun_udp *u) { return u == NULL ? -1 : u->fd; }
