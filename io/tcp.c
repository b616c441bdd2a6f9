/*
 * TCP listener and connect on libev; see tcp.h.
 */
#define _GNU_SOURCE /* accept4 */

#include "tcp.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

atun__tcp_accept4_fn atun__tcp_accept4 = accept4;

/* ======================================================================
 * Socket helpers
 * ====================================================================== */

int atun_tcp_sockaddr(struct sockaddr_storage *ss, socklen_t *len,
                      const atun_tcp_endpoint *ep) {
  memset(ss, 0, sizeof(*ss));
  if (ep->addr.family == ATUN_AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(ep->port);
    memcpy(&sin->sin_addr, ep->addr.bytes, 4);
    *len = sizeof(*sin);
    return 0;
  }
  if (ep->addr.family == ATUN_AF_INET6) {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(ep->port);
    memcpy(&sin6->sin6_addr, ep->addr.bytes, 16);
    *len = sizeof(*sin6);
    return 0;
  }
  return ATUN_ERR_INVALID_ARGUMENT;
}

int atun_tcp_endpoint_from_sockaddr(atun_tcp_endpoint *ep,
                                    const struct sockaddr *sa, socklen_t len) {
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
    memcpy(ep->addr.bytes, &sin6->sin6_addr, 16);
    ep->port = ntohs(sin6->sin6_port);
    atun_addr_normalize(&ep->addr);
    return 0;
  }
  return ATUN_ERR_INVALID_ARGUMENT;
}

int atun_tcp_set_nodelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return ATUN_ERR_IO;
  }
  return 0;
}

int atun_tcp_half_close(int fd) {
  return shutdown(fd, SHUT_WR) == 0 ? 0 : ATUN_ERR_IO;
}

void atun_tcp_reset(int fd) {
  if (fd < 0) {
    return;
  }
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  /* Failing here only loses the RST: the socket still has to go. */
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  close(fd);
}

static int endpoint_of(int fd, atun_tcp_endpoint *out, int peer) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  int rv = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
                : getsockname(fd, (struct sockaddr *)&ss, &len);
  if (rv != 0) {
    return ATUN_ERR_IO;
  }
  return atun_tcp_endpoint_from_sockaddr(out, (struct sockaddr *)&ss, len) == 0
             ? 0
             : ATUN_ERR_IO;
}

int atun_tcp_local_endpoint(int fd, atun_tcp_endpoint *out) {
  return endpoint_of(fd, out, 0);
}

int atun_tcp_peer_endpoint(int fd, atun_tcp_endpoint *out) {
  return endpoint_of(fd, out, 1);
}

int atun_tcp_connect_status_from_errno(int err) {
  switch (err) {
  case 0:
    return ATUN_CONNECT_OK;
  case ECONNREFUSED:
  case ECONNRESET:
    return ATUN_CONNECT_REFUSED;
  case ENETUNREACH:
  case EHOSTUNREACH:
  case ENETDOWN:
  case EHOSTDOWN:
  case EACCES:
  case EPERM:
    return ATUN_CONNECT_UNREACHABLE;
  case ETIMEDOUT:
    return ATUN_CONNECT_TIMEOUT;
  default:
    return ATUN_CONNECT_INTERNAL;
  }
}

static ev_tstamp ns_to_ev(uint64_t ns) { return (ev_tstamp)ns / 1e9; }

/* ======================================================================
 * Listener
 * ====================================================================== */

void atun_tcp_listener_settings_default(atun_tcp_listener_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  settings->backlog = 1024;
  settings->accepts_per_event = 64;
  settings->conns_max = 4096;
  settings->error_pause_ns = 100 * ATUN_NS_PER_MS;
  settings->v6only = 0;
}

static int listener_settings_valid(const atun_tcp_listener_settings *s) {
  return s->backlog >= 1 && s->backlog <= ATUN_TCP_BACKLOG_LIMIT &&
         s->accepts_per_event >= 1 &&
         s->accepts_per_event <= ATUN_TCP_ACCEPTS_PER_EVENT_LIMIT &&
         s->conns_max >= 1 && s->conns_max <= ATUN_TCP_CONNS_LIMIT &&
         s->error_pause_ns >= 1 && s->error_pause_ns <= ATUN_TCP_TIMEOUT_MAX_NS;
}

/* Accepting runs only when nobody holds it back: the owner, an error pause
 * or the connection guard. */
static int listener_should_run(const atun_tcp_listener *l) {
  return !l->paused_by_owner && !l->paused_by_error &&
         l->stats.conns < l->settings.conns_max;
}

static void listener_update(atun_tcp_listener *l) {
  if (listener_should_run(l)) {
    ev_io_start(l->loop, &l->io);
  } else {
    ev_io_stop(l->loop, &l->io);
  }
}

static void listener_pause_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  atun_tcp_listener *l = w->data;
  l->paused_by_error = 0;
  listener_update(l);
}

static void listener_error_pause(atun_tcp_listener *l) {
  ++l->stats.error_pauses;
  l->paused_by_error = 1;
  listener_update(l);
  ev_timer_set(&l->pause_timer, ns_to_ev(l->settings.error_pause_ns), 0.);
  ev_timer_start(l->loop, &l->pause_timer);
}

static int accept_is_resource_error(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* Hands one accepted socket to the owner.  Returns 0 to go on accepting,
 * -1 when the listener was freed inside the callback. */
static int listener_deliver(atun_tcp_listener *l, int fd,
                            const struct sockaddr_storage *ss, socklen_t len) {
  atun_tcp_endpoint peer;
  /* The listener's own family: always convertible. */
  int rv = atun_tcp_endpoint_from_sockaddr(&peer, (const struct sockaddr *)ss, len);
  ATUN_ASSERT(rv == 0);
  (void)rv;
  /* On a fresh TCP socket this does not fail; if it did, the connection
   * would only be slower, not wrong. */
  (void)atun_tcp_set_nodelay(fd);
  int alive = 1;
  l->alive = &alive;
  /* Counted before the callback, which may release it at once. */
  ++l->stats.conns;
  rv = l->cb(l, fd, &peer, l->user_data);
  if (!alive) {
    /* Freed inside the callback: |l| is gone, but the verdict on |fd|
     * still stands. */
    if (rv != 0) {
      atun_tcp_reset(fd);
    }
    return -1;
  }
  l->alive = NULL;
  if (rv != 0) {
    --l->stats.conns;
    ++l->stats.refused;
    atun_tcp_reset(fd);
    return 0;
  }
  ++l->stats.accepted;
  if (l->stats.conns == l->settings.conns_max) {
    ++l->stats.full_pauses;
  }
  return 0;
}

static void listener_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  atun_tcp_listener *l = w->data;
  for (size_t i = 0; i < l->settings.accepts_per_event && listener_should_run(l); ++i) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = atun__tcp_accept4(l->fd, (struct sockaddr *)&ss, &len,
                               SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        break;
      }
      if (accept_is_resource_error(errno)) {
        listener_error_pause(l);
        return;
      }
      /* ECONNABORTED, EPROTO, ...: that one connection died in the queue. */
      ++l->stats.accept_errors;
      continue;
    }
    if (listener_deliver(l, fd, &ss, len) != 0) {
      return;
    }
  }
  listener_update(l);
}

static int listen_errno_to_error(int err) {
  switch (err) {
  case EADDRINUSE:
    return ATUN_ERR_EXISTS;
  case EACCES:
  case EPERM:
    return ATUN_ERR_DENIED;
  case EADDRNOTAVAIL:
  case EAFNOSUPPORT:
    return ATUN_ERR_INVALID_ARGUMENT;
  default:
    return ATUN_ERR_IO;
  }
}

static int listen_socket(const atun_tcp_endpoint *local,
                         const atun_tcp_listener_settings *s, int *pfd) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (atun_tcp_sockaddr(&ss, &len, local) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return listen_errno_to_error(errno);
  }
  int one = 1;
  int v6only = s->v6only ? 1 : 0;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      (ss.ss_family == AF_INET6 &&
       setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) != 0) ||
      bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, s->backlog) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return listen_errno_to_error(err);
  }
  *pfd = fd;
  return 0;
}

int atun_tcp_listener_init(atun_tcp_listener *listener, struct ev_loop *loop,
                           const atun_tcp_endpoint *local,
                           const atun_tcp_listener_settings *settings,
                           atun_tcp_accept_cb cb, void *user_data) {
  if (listener == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  /* A failed init leaves storage that _free() accepts as a no-op. */
  memset(listener, 0, sizeof(*listener));
  listener->fd = -1;
  if (loop == NULL || local == NULL || cb == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  atun_tcp_listener_settings s;
  if (settings != NULL) {
    s = *settings;
  } else {
    atun_tcp_listener_settings_default(&s);
  }
  if (!listener_settings_valid(&s)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int fd;
  int rv = listen_socket(local, &s, &fd);
  if (rv != 0) {
    return rv;
  }
  listener->loop = loop;
  listener->fd = fd;
  listener->settings = s;
  listener->cb = cb;
  listener->user_data = user_data;
  /* A bound socket always has a name. */
  rv = atun_tcp_local_endpoint(fd, &listener->local);
  ATUN_ASSERT(rv == 0);
  ev_io_init(&listener->io, listener_io_cb, fd, EV_READ);
  listener->io.data = listener;
  ev_init(&listener->pause_timer, listener_pause_cb);
  listener->pause_timer.data = listener;
  ev_io_start(loop, &listener->io);
  return 0;
}

void atun_tcp_listener_free(atun_tcp_listener *listener) {
  if (listener == NULL || listener->fd < 0) {
    return;
  }
  ev_io_stop(listener->loop, &listener->io);
  ev_timer_stop(listener->loop, &listener->pause_timer);
  close(listener->fd);
  listener->fd = -1;
  if (listener->alive != NULL) {
    *listener->alive = 0;
    listener->alive = NULL;
  }
}

void atun_tcp_listener_release(atun_tcp_listener *listener) {
  ATUN_ASSERT(listener->stats.conns > 0);
  if (listener->stats.conns == 0) {
    return;
  }
  --listener->stats.conns;
  if (listener->fd >= 0 && listener->alive == NULL) {
    listener_update(listener);
  }
}

void atun_tcp_listener_set_paused(atun_tcp_listener *listener, int paused) {
  listener->paused_by_owner = paused ? 1 : 0;
  if (listener->fd >= 0 && listener->alive == NULL) {
    listener_update(listener);
  }
}

int atun_tcp_listener_is_paused(const atun_tcp_listener *listener) {
  return !listener_should_run(listener);
}

const atun_tcp_endpoint *atun_tcp_listener_local(const atun_tcp_listener *listener) {
  return &listener->local;
}

void atun_tcp_listener_get_stats(const atun_tcp_listener *listener,
                                 atun_tcp_listener_stats *out) {
  *out = listener->stats;
}

/* ======================================================================
 * Connect
 * ====================================================================== */

void atun_tcp_connect_init(atun_tcp_connect *conn) {
  memset(conn, 0, sizeof(*conn));
  conn->fd = -1;
}

static void connect_stop(atun_tcp_connect *c) {
  ev_io_stop(c->loop, &c->io);
  ev_timer_stop(c->loop, &c->timer);
  c->active = 0;
}

/* Ends the attempt and reports it; the callback may reuse or free |c|. */
static void connect_finish(atun_tcp_connect *c, int status, int err) {
  int fd = c->fd;
  connect_stop(c);
  c->fd = -1;
  if (status != ATUN_CONNECT_OK) {
    close(fd);
    fd = -1;
  }
  c->cb(c, status, fd, err, c->user_data);
}

static void connect_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  atun_tcp_connect *c = w->data;
  int err = 0;
  socklen_t len = sizeof(err);
  /* Reading a socket's pending error does not fail on a valid socket. */
  (void)getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  connect_finish(c, atun_tcp_connect_status_from_errno(err), err);
}

/* The deadline, or the zero timer that reports an error connect(2) gave
 * at once. */
static void connect_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  atun_tcp_connect *c = w->data;
  if (c->early_errno != 0) {
    int err = c->early_errno;
    connect_finish(c, atun_tcp_connect_status_from_errno(err), err);
    return;
  }
  connect_finish(c, ATUN_CONNECT_TIMEOUT, 0);
}

static int connect_socket(const atun_tcp_endpoint *remote, int *pfd, int *perr) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (atun_tcp_sockaddr(&ss, &len, remote) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return ATUN_ERR_IO;
  }
  /* Before connect(2), so the first data segment goes out unheld (a
   * failure would only cost latency). */
  (void)atun_tcp_set_nodelay(fd);
  *perr = connect(fd, (struct sockaddr *)&ss, len) == 0 ? 0 : errno;
  if (*perr == EINPROGRESS || *perr == EINTR) {
    *perr = EINPROGRESS;
  }
  *pfd = fd;
  return 0;
}

int atun_tcp_connect_start(atun_tcp_connect *conn, struct ev_loop *loop,
                           const atun_tcp_endpoint *remote, uint64_t timeout_ns,
                           atun_tcp_connect_cb cb, void *user_data) {
  if (conn == NULL || loop == NULL || remote == NULL || cb == NULL ||
      remote->port == 0 || timeout_ns == 0 || timeout_ns > ATUN_TCP_TIMEOUT_MAX_NS) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (conn->active) {
    return ATUN_ERR_STATE;
  }
  int fd, err;
  int rv = connect_socket(remote, &fd, &err);
  if (rv != 0) {
    return rv;
  }
  conn->loop = loop;
  conn->fd = fd;
  conn->cb = cb;
  conn->user_data = user_data;
  conn->active = 1;
  conn->early_errno = 0;
  ev_io_init(&conn->io, connect_io_cb, fd, EV_WRITE);
  conn->io.data = conn;
  ev_init(&conn->timer, connect_timer_cb);
  conn->timer.data = conn;
  if (err == EINPROGRESS || err == 0) {
    /* Even a connect that completed at once (loopback can) is reported
     * from the loop, by the writable socket. */
    ev_io_start(loop, &conn->io);
    ev_timer_set(&conn->timer, ns_to_ev(timeout_ns), 0.);
  } else {
    conn->early_errno = err;
    ev_timer_set(&conn->timer, 0., 0.);
  }
  ev_timer_start(loop, &conn->timer);
  return 0;
}

void atun_tcp_connect_cancel(atun_tcp_connect *conn) {
  if (conn == NULL || !conn->active) {
    return;
  }
  connect_stop(conn);
  close(conn->fd);
  conn->fd = -1;
}

int atun_tcp_connect_is_active(const atun_tcp_connect *conn) {
  return conn->active;
}
