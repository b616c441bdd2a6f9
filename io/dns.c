/*
 * c-ares on libev; see dns.h.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <ares.h>

#include "codec.h"

/* What c-ares' callback writes to: the query while somebody waits for it,
 * NULL once the query was cancelled or timed out. */
struct atun_dns_ticket {
  atun_dns *dns;
  atun_dns_query *query;
};

typedef struct dns_sock {
  ev_io io;
  int fd; /* -1: free slot */
  atun_dns *dns;
} dns_sock;

struct atun_dns {
  struct ev_loop *loop;
  ares_channel channel;
  ev_timer timer; /* c-ares' own timeouts */
  atun_dns_settings settings;
  const atun_mem *mem;
  dns_sock *socks; /* |settings.sockets_max| slots */
  atun_dns_query *active; /* queries waiting for their callback */
  int starting; /* inside ares_getaddrinfo: answers must wait for the loop */
  atun_dns_stats stats;
};

/* ======================================================================
 * Settings, names
 * ====================================================================== */

void atun_dns_settings_default(atun_dns_settings *settings) {
  memset(settings, 0, sizeof(*settings));
  settings->timeout_ns = 5 * ATUN_NS_PER_S;
  settings->try_timeout_ns = 1 * ATUN_NS_PER_S;
  settings->tries = 2;
  settings->queries_max = 1024;
  settings->sockets_max = 16;
  settings->use_hosts = 1;
  settings->use_search = 1;
}

static int timeout_valid(uint64_t ns) {
  return ns >= ATUN_NS_PER_MS && ns <= ATUN_DNS_TIMEOUT_MAX_NS;
}

static int servers_valid(const atun_dns_settings *s) {
  if (s->nservers > ATUN_DNS_SERVERS_MAX || (s->nservers > 0 && s->servers == NULL)) {
    return 0;
  }
  for (size_t i = 0; i < s->nservers; ++i) {
    uint8_t f = s->servers[i].addr.family;
    if (f != ATUN_AF_INET && f != ATUN_AF_INET6) {
      return 0;
    }
  }
  return 1;
}

static int settings_valid(const atun_dns_settings *s) {
  return timeout_valid(s->timeout_ns) && timeout_valid(s->try_timeout_ns) &&
         s->tries >= 1 && s->tries <= ATUN_DNS_TRIES_LIMIT && s->queries_max >= 1 &&
         s->queries_max <= ATUN_DNS_QUERIES_LIMIT && s->sockets_max >= 1 &&
         s->sockets_max <= ATUN_DNS_SOCKETS_LIMIT && servers_valid(s);
}

const char *atun_dns_reason_name(int reason) {
  switch (reason) {
  case ATUN_DNS_OK: return "ok";
  case ATUN_DNS_NXDOMAIN: return "nxdomain";
  case ATUN_DNS_NODATA: return "no_data";
  case ATUN_DNS_TIMEOUT: return "timeout";
  case ATUN_DNS_SERVER: return "server_failure";
  case ATUN_DNS_BAD_NAME: return "bad_name";
  case ATUN_DNS_NOMEM: return "nomem";
  default: return "unknown";
  }
}

/* ======================================================================
 * c-ares timer and sockets
 * ====================================================================== */

static void timer_rearm(atun_dns *dns) {
  struct timeval tv;
  ev_timer_stop(dns->loop, &dns->timer);
  if (ares_timeout(dns->channel, NULL, &tv) == NULL) {
    return;
  }
  ev_timer_set(&dns->timer, (ev_tstamp)tv.tv_sec + (ev_tstamp)tv.tv_usec / 1e6, 0.);
  ev_timer_start(dns->loop, &dns->timer);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  atun_dns *dns = w->data;
  ares_process_fd(dns->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  timer_rearm(dns);
}

static void sock_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  dns_sock *s = w->data;
  atun_dns *dns = s->dns;
  int fd = s->fd;
  /* The slot may be reused while c-ares works: nothing of |s| after this. */
  ares_process_fd(dns->channel, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
                  (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
  timer_rearm(dns);
}

static dns_sock *sock_find(atun_dns *dns, int fd) {
  for (size_t i = 0; i < dns->settings.sockets_max; ++i) {
    if (dns->socks[i].fd == fd) {
      return &dns->socks[i];
    }
  }
  return NULL;
}

/* c-ares made a socket.  Refusing it here (the table is full) makes c-ares
 * close it and treat the server as failing, rather than leave a socket
 * nobody watches. */
static int sock_create_cb(ares_socket_t fd, int type, void *data) {
  (void)fd;
  (void)type;
  atun_dns *dns = data;
  if (dns->stats.sockets >= dns->settings.sockets_max) {
    ++dns->stats.sockets_refused;
    return -1;
  }
  return 0;
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable) {
  atun_dns *dns = data;
  dns_sock *s = sock_find(dns, fd);
  if (!readable && !writable) {
    if (s != NULL) {
      ev_io_stop(dns->loop, &s->io);
      s->fd = -1;
      --dns->stats.sockets;
    }
    return;
  }
  if (s == NULL) {
    s = sock_find(dns, -1);
    /* sock_create_cb let it in only with a free slot. */
    ATUN_ASSERT(s != NULL);
    if (s == NULL) {
      return;
    }
    s->fd = fd;
    ++dns->stats.sockets;
  }
  ev_io_stop(dns->loop, &s->io);
  ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
  ev_io_start(dns->loop, &s->io);
}

/* ======================================================================
 * Queries
 * ====================================================================== */

static void query_unlink(atun_dns_query *q) {
  atun_dns *dns = q->dns;
  if (q->prev != NULL) {
    q->prev->next = q->next;
  } else {
    dns->active = q->next;
  }
  if (q->next != NULL) {
    q->next->prev = q->prev;
  }
  q->prev = q->next = NULL;
}

/* Cuts |q| loose from its ticket: c-ares' answer will go nowhere. */
static void query_detach(atun_dns_query *q) {
  if (q->ticket != NULL) {
    q->ticket->query = NULL;
    q->ticket = NULL;
    ++q->dns->stats.detached;
  }
}

/* Ends |q| and calls back; the callback may free or restart |q|. */
static void query_deliver(atun_dns_query *q) {
  atun_dns *dns = q->dns;
  ev_timer_stop(dns->loop, &q->timer);
  query_unlink(q);
  q->active = 0;
  q->answered = 0;
  if (q->result.status == ATUN_CONNECT_OK) {
    ++dns->stats.answered_ok;
  } else {
    ++dns->stats.failed;
  }
  /* A copy: a restart inside the callback may complete into |q->result|. */
  atun_dns_result r = q->result;
  q->cb(q, &r, q->user_data);
}

static void query_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  atun_dns_query *q = w->data;
  if (!q->answered) {
    query_detach(q);
    memset(&q->result, 0, sizeof(q->result));
    q->result.status = ATUN_CONNECT_DNS_FAILURE;
    q->result.reason = ATUN_DNS_TIMEOUT;
    ++q->dns->stats.timeouts;
  }
  query_deliver(q);
}

static int reason_of(int status) {
  switch (status) {
  case ARES_SUCCESS: return ATUN_DNS_OK;
  case ARES_ENODATA: return ATUN_DNS_NODATA;
  case ARES_ENOTFOUND: return ATUN_DNS_NXDOMAIN;
  case ARES_ETIMEOUT: return ATUN_DNS_TIMEOUT;
  case ARES_ENOMEM: return ATUN_DNS_NOMEM;
  case ARES_EBADNAME: return ATUN_DNS_BAD_NAME;
  default: return ATUN_DNS_SERVER;
  }
}

static int addr_from_sockaddr(atun_addr *a, const struct sockaddr *sa) {
  memset(a, 0, sizeof(*a));
  if (sa->sa_family == AF_INET) {
    a->family = ATUN_AF_INET;
    memcpy(a->bytes, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    a->family = ATUN_AF_INET6;
    memcpy(a->bytes, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    atun_addr_normalize(a);
    return 0;
  }
  return -1;
}

static int result_has(const atun_dns_result *r, const atun_addr *a) {
  for (size_t i = 0; i < r->naddrs; ++i) {
    if (r->addrs[i].family == a->family &&
        memcmp(r->addrs[i].bytes, a->bytes, sizeof(a->bytes)) == 0) {
      return 1;
    }
  }
  return 0;
}

/* Distinct addresses, in c-ares' order, at most ATUN_DNS_ADDRS_MAX. */
static void result_fill(atun_dns_result *r, const struct ares_addrinfo *ai) {
  for (const struct ares_addrinfo_node *n = ai->nodes; n != NULL; n = n->ai_next) {
    atun_addr a;
    if (n->ai_addr == NULL || addr_from_sockaddr(&a, n->ai_addr) != 0 ||
        result_has(r, &a)) {
      continue;
    }
    if (r->naddrs < ATUN_DNS_ADDRS_MAX) {
      r->addrs[r->naddrs++] = a;
    } else {
      ++r->dropped;
    }
  }
}

static void result_set(atun_dns_result *r, int status, const struct ares_addrinfo *ai) {
  memset(r, 0, sizeof(*r));
  r->reason = reason_of(status);
  if (status == ARES_SUCCESS && ai != NULL) {
    result_fill(r, ai);
    if (r->naddrs == 0) {
      r->reason = ATUN_DNS_NODATA;
    }
  }
  if (r->reason == ATUN_DNS_OK) {
    r->status = ATUN_CONNECT_OK;
  } else if (r->reason == ATUN_DNS_NOMEM) {
    r->status = ATUN_CONNECT_INTERNAL;
  } else {
    r->status = ATUN_CONNECT_DNS_FAILURE;
  }
}

static void ares_done_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai) {
  (void)timeouts;
  atun_dns_ticket *t = arg;
  atun_dns *dns = t->dns;
  atun_dns_query *q = t->query;
  --dns->stats.in_flight;
  if (q == NULL) {
    --dns->stats.detached;
  } else {
    q->ticket = NULL;
    result_set(&q->result, status, ai);
  }
  ares_freeaddrinfo(ai);
  atun_mem_free(dns->mem, t);
  if (q == NULL) {
    return;
  }
  if (dns->starting) {
    /* Answered inside atun_dns_resolve (hosts file, numeric name): the
     * caller hears of it from the loop. */
    q->answered = 1;
    ev_timer_stop(dns->loop, &q->timer);
    ev_timer_set(&q->timer, 0., 0.);
    ev_timer_start(dns->loop, &q->timer);
    return;
  }
  query_deliver(q);
}

void atun_dns_query_init(atun_dns_query *query) {
  memset(query, 0, sizeof(*query));
}

static int name_valid(const char *name) {
  size_t len = strnlen(name, ATUN_DNS_NAME_MAX + 1);
  return len >= 1 && len <= ATUN_DNS_NAME_MAX;
}

/* Makes |query| active on |dns|, tied to ticket |t|, its deadline running. */
static void query_arm(atun_dns *dns, atun_dns_query *query, atun_dns_ticket *t,
                      atun_dns_cb cb, void *user_data) {
  memset(query, 0, sizeof(*query));
  query->dns = dns;
  query->ticket = t;
  query->cb = cb;
  query->user_data = user_data;
  query->active = 1;
  query->next = dns->active;
  if (dns->active != NULL) {
    dns->active->prev = query;
  }
  dns->active = query;
  ev_timer_init(&query->timer, query_timer_cb, (ev_tstamp)dns->settings.timeout_ns / 1e9,
                0.);
  query->timer.data = query;
  ev_timer_start(dns->loop, &query->timer);
  ++dns->stats.queries;
  ++dns->stats.in_flight;
}

int atun_dns_resolve(atun_dns *dns, atun_dns_query *query, const char *name,
                     atun_dns_cb cb, void *user_data) {
  if (dns == NULL || query == NULL || name == NULL || cb == NULL || !name_valid(name)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (query->active) {
    return ATUN_ERR_STATE;
  }
  if (dns->stats.in_flight >= dns->settings.queries_max) {
    return ATUN_ERR_FULL;
  }
  atun_dns_ticket *t = atun_mem_malloc(dns->mem, sizeof(*t));
  if (t == NULL) {
    return ATUN_ERR_NOMEM;
  }
  t->dns = dns;
  t->query = query;
  query_arm(dns, query, t, cb, user_data);

  struct ares_addrinfo_hints hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  /* $CARES_HOSTS may stand in for /etc/hosts (the tests' own file). */
  hints.ai_flags = ARES_AI_ENVHOSTS;
  /* Saved, not cleared: a callback may resolve from inside another
   * resolve's synchronous completion. */
  int outer = dns->starting;
  dns->starting = 1;
  ares_getaddrinfo(dns->channel, name, NULL, &hints, ares_done_cb, t);
  dns->starting = outer;
  timer_rearm(dns);
  return 0;
}

void atun_dns_cancel(atun_dns_query *query) {
  if (query == NULL || !query->active) {
    return;
  }
  atun_dns *dns = query->dns;
  query_detach(query);
  ev_timer_stop(dns->loop, &query->timer);
  query_unlink(query);
  query->active = 0;
  query->answered = 0;
  ++dns->stats.cancelled;
}

int atun_dns_query_is_active(const atun_dns_query *query) { return query->active; }

void atun_dns_get_stats(const atun_dns *dns, atun_dns_stats *out) { *out = dns->stats; }

/* ======================================================================
 * Resolver
 * ====================================================================== */

static int set_servers(atun_dns *dns) {
  struct ares_addr_port_node nodes[ATUN_DNS_SERVERS_MAX];
  const atun_dns_settings *s = &dns->settings;
  memset(nodes, 0, sizeof(nodes));
  for (size_t i = 0; i < s->nservers; ++i) {
    const atun_tcp_endpoint *ep = &s->servers[i];
    struct ares_addr_port_node *n = &nodes[i];
    n->next = i + 1 < s->nservers ? &nodes[i + 1] : NULL;
    if (ep->addr.family == ATUN_AF_INET) {
      n->family = AF_INET;
      memcpy(&n->addr.addr4, ep->addr.bytes, 4);
    } else {
      n->family = AF_INET6;
      memcpy(&n->addr.addr6, ep->addr.bytes, 16);
    }
    n->udp_port = n->tcp_port = ep->port != 0 ? ep->port : 53;
  }
  int rv = ares_set_servers_ports(dns->channel, nodes);
  if (rv == ARES_ENOMEM) {
    return ATUN_ERR_NOMEM;
  }
  return rv == ARES_SUCCESS ? 0 : ATUN_ERR_IO;
}

static int channel_init(atun_dns *dns) {
  const atun_dns_settings *s = &dns->settings;
  struct ares_options o;
  memset(&o, 0, sizeof(o));
  int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
             ARES_OPT_LOOKUPS | ARES_OPT_FLAGS;
  o.sock_state_cb = sock_state_cb;
  o.sock_state_cb_data = dns;
  o.timeout = (int)(s->try_timeout_ns / ATUN_NS_PER_MS);
  o.tries = s->tries;
  o.lookups = s->use_hosts ? (char *)"fb" : (char *)"b";
  o.flags = s->use_search ? 0 : ARES_FLAG_NOSEARCH;
  if (!s->use_search) {
    /* c-ares 1.18's getaddrinfo ignores NOSEARCH: an empty search list
     * given here keeps resolv.conf's out. */
    mask |= ARES_OPT_DOMAINS;
    o.domains = NULL;
    o.ndomains = 0;
  }
  if (s->resolv_conf != NULL) {
    mask |= ARES_OPT_RESOLVCONF;
    o.resolvconf_path = (char *)s->resolv_conf;
  }
  if (s->nservers > 0) {
    mask |= ARES_OPT_NOROTATE;
  }
  int rv = ares_init_options(&dns->channel, &o, mask);
  if (rv != ARES_SUCCESS) {
    return rv == ARES_ENOMEM ? ATUN_ERR_NOMEM : ATUN_ERR_IO;
  }
  ares_set_socket_callback(dns->channel, sock_create_cb, dns);
  if (s->nservers > 0 && (rv = set_servers(dns)) != 0) {
    ares_destroy(dns->channel);
    return rv;
  }
  return 0;
}

int atun_dns_new(atun_dns **pdns, struct ev_loop *loop,
                 const atun_dns_settings *settings, const atun_mem *mem) {
  if (pdns == NULL || loop == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  atun_dns_settings s;
  if (settings != NULL) {
    s = *settings;
  } else {
    atun_dns_settings_default(&s);
  }
  if (!settings_valid(&s)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (mem == NULL) {
    mem = atun_mem_default();
  }
  atun_dns *dns = atun_mem_calloc(mem, 1, sizeof(*dns));
  if (dns == NULL) {
    return ATUN_ERR_NOMEM;
  }
  dns->loop = loop;
  dns->mem = mem;
  dns->settings = s;
  /* The servers array is the caller's; nothing keeps it past this call. */
  dns->settings.servers = NULL;
  dns->socks = atun_mem_calloc(mem, s.sockets_max, sizeof(*dns->socks));
  if (dns->socks == NULL) {
    atun_mem_free(mem, dns);
    return ATUN_ERR_NOMEM;
  }
  for (size_t i = 0; i < s.sockets_max; ++i) {
    dns->socks[i].fd = -1;
    dns->socks[i].dns = dns;
    ev_init(&dns->socks[i].io, sock_io_cb);
    dns->socks[i].io.data = &dns->socks[i];
  }
  ev_init(&dns->timer, timer_cb);
  dns->timer.data = dns;
  int rv = ares_library_init(ARES_LIB_INIT_ALL) == ARES_SUCCESS ? 0 : ATUN_ERR_IO;
  if (rv == 0) {
    dns->settings.servers = s.servers;
    rv = channel_init(dns);
    dns->settings.servers = NULL;
    if (rv != 0) {
      ares_library_cleanup();
    }
  }
  if (rv != 0) {
    atun_mem_free(mem, dns->socks);
    atun_mem_free(mem, dns);
    return rv;
  }
  *pdns = dns;
  return 0;
}

void atun_dns_del(atun_dns *dns) {
  if (dns == NULL) {
    return;
  }
  while (dns->active != NULL) {
    atun_dns_query *q = dns->active;
    query_detach(q);
    ev_timer_stop(dns->loop, &q->timer);
    query_unlink(q);
    q->active = 0;
    q->answered = 0;
  }
  /* Every ticket is detached now: c-ares' farewell callbacks go nowhere,
   * and its sockets leave through sock_state_cb. */
  ares_destroy(dns->channel);
  ares_library_cleanup();
  ev_timer_stop(dns->loop, &dns->timer);
  for (size_t i = 0; i < dns->settings.sockets_max; ++i) {
    ev_io_stop(dns->loop, &dns->socks[i].io);
  }
  atun_mem_free(dns->mem, dns->socks);
  atun_mem_free(dns->mem, dns);
}
