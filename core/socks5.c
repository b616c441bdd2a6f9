#include "socks5.h"

#include <string.h>

#include "token.h"

/* Which client message HANDSHAKE is reading. */
enum { PH_GREETING = 0, PH_AUTH = 1, PH_REQUEST = 2 };

/* A stored user.  The password block holds the length in its first byte
 * and the bytes zero-padded after it, so one fixed-size constant-time
 * compare covers length and content. */
typedef struct user {
  uint8_t namelen;
  char name[ATUN_SOCKS5_FIELD_MAX];
  uint8_t pass[1 + ATUN_SOCKS5_FIELD_MAX];
} user;

struct atun_socks5_server {
  const atun_mem *mem;
  atun_socks5_settings settings;
  size_t nusers;
  user *users;
};

/* Stores through a volatile pointer so the compiler keeps the wipe of
 * memory that is about to die. */
static void wipe(void *p, size_t n) {
  volatile uint8_t *v = p;
  for (size_t i = 0; i < n; ++i) v[i] = 0;
}

/* --- server ------------------------------------------------------------------ */

void atun_socks5_settings_default(atun_socks5_settings *settings) {
  settings->handshake_timeout_ns = ATUN_SOCKS5_HANDSHAKE_TIMEOUT_NS;
  settings->allow_pin = 1;
}

static int field_ok(const char *p, size_t n) {
  return p != NULL && n >= 1 && n <= ATUN_SOCKS5_FIELD_MAX;
}

static const user *find_user(const atun_socks5_server *srv, const char *name,
                             size_t len) {
  for (size_t i = 0; i < srv->nusers; ++i) {
    const user *u = &srv->users[i];
    if (u->namelen == len && memcmp(u->name, name, len) == 0) return u;
  }
  return NULL;
}

static int check_users(const atun_socks5_user *users, size_t nusers) {
  if (nusers > ATUN_SOCKS5_USERS_MAX) return ATUN_ERR_LIMIT;
  if (users == NULL && nusers > 0) return ATUN_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < nusers; ++i) {
    if (!field_ok(users[i].name, users[i].namelen) ||
        !field_ok(users[i].pass, users[i].passlen)) {
      return ATUN_ERR_INVALID_ARGUMENT;
    }
    for (size_t j = 0; j < i; ++j) {
      if (users[j].namelen == users[i].namelen &&
          memcmp(users[j].name, users[i].name, users[i].namelen) == 0) {
        return ATUN_ERR_EXISTS;
      }
    }
  }
  return 0;
}

int atun_socks5_server_new(atun_socks5_server **psrv,
                           const atun_socks5_settings *settings,
                           const atun_socks5_user *users, size_t nusers,
                           const atun_mem *mem) {
  atun_socks5_settings defaults;
  if (settings == NULL) {
    atun_socks5_settings_default(&defaults);
    settings = &defaults;
  }
  if (settings->handshake_timeout_ns == 0) return ATUN_ERR_INVALID_ARGUMENT;
  int rv = check_users(users, nusers);
  if (rv != 0) return rv;
  atun_socks5_server *srv = atun_mem_calloc(mem, 1, sizeof(*srv));
  if (srv == NULL) return ATUN_ERR_NOMEM;
  if (nusers > 0) {
    srv->users = atun_mem_calloc(mem, nusers, sizeof(*srv->users));
    if (srv->users == NULL) {
      atun_mem_free(mem, srv);
      return ATUN_ERR_NOMEM;
    }
  }
  srv->mem = mem;
  srv->settings = *settings;
  srv->nusers = nusers;
  for (size_t i = 0; i < nusers; ++i) {
    user *u = &srv->users[i];
    u->namelen = (uint8_t)users[i].namelen;
    memcpy(u->name, users[i].name, users[i].namelen);
    u->pass[0] = (uint8_t)users[i].passlen;
    memcpy(u->pass + 1, users[i].pass, users[i].passlen);
  }
  *psrv = srv;
  return 0;
}

void atun_socks5_server_del(atun_socks5_server *srv) {
  if (srv == NULL) return;
  if (srv->users != NULL) {
    wipe(srv->users, srv->nusers * sizeof(*srv->users));
    atun_mem_free(srv->mem, srv->users);
  }
  atun_mem_free(srv->mem, srv);
}

size_t atun_socks5_server_nusers(const atun_socks5_server *srv) {
  return srv->nusers;
}

/* --- replies ------------------------------------------------------------------ */

uint8_t atun_socks5_reply_code(uint64_t status) {
  switch (status) {
    case ATUN_CONNECT_OK: return ATUN_SOCKS5_REP_SUCCEEDED;
    case ATUN_CONNECT_DENIED: return ATUN_SOCKS5_REP_NOT_ALLOWED;
    case ATUN_CONNECT_DNS_FAILURE: return ATUN_SOCKS5_REP_HOST_UNREACHABLE;
    case ATUN_CONNECT_UNREACHABLE: return ATUN_SOCKS5_REP_NETWORK_UNREACHABLE;
    case ATUN_CONNECT_REFUSED: return ATUN_SOCKS5_REP_CONNECTION_REFUSED;
    case ATUN_CONNECT_TIMEOUT: return ATUN_SOCKS5_REP_TTL_EXPIRED;
    default: return ATUN_SOCKS5_REP_GENERAL_FAILURE;
  }
}

ssize_t atun_socks5_reply_encode(uint8_t *buf, size_t buflen, uint8_t rep,
                                 const atun_addr *bound, uint16_t bound_port) {
  static const atun_addr any4 = {ATUN_AF_INET, {0}};
  if (bound == NULL) bound = &any4;
  size_t alen;
  uint8_t atyp;
  if (bound->family == ATUN_AF_INET) {
    alen = 4;
    atyp = ATUN_SOCKS5_ATYP_IPV4;
  } else if (bound->family == ATUN_AF_INET6) {
    alen = 16;
    atyp = ATUN_SOCKS5_ATYP_IPV6;
  } else {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  size_t n = 4 + alen + 2;
  if (buflen < n) return ATUN_ERR_NOBUF;
  buf[0] = ATUN_SOCKS5_VERSION;
  buf[1] = rep;
  buf[2] = 0;
  buf[3] = atyp;
  memcpy(buf + 4, bound->bytes, alen);
  buf[4 + alen] = (uint8_t)(bound_port >> 8);
  buf[5 + alen] = (uint8_t)bound_port;
  return (ssize_t)n;
}

/* --- connection: output and failure --------------------------------------------- */

/* The handshake sends at most 2 + 2 + ATUN_SOCKS5_REPLY_MAX bytes in all,
 * which ATUN_SOCKS5_OUT_MAX holds even if the caller never drains. */
static void out_put(atun_socks5_conn *c, const uint8_t *p, size_t n) {
  ATUN_ASSERT(n <= ATUN_SOCKS5_OUT_MAX - c->outlen);
  memcpy(c->out + c->outlen, p, n);
  c->outlen += n;
}

static void out_pair(atun_socks5_conn *c, uint8_t a, uint8_t b) {
  const uint8_t pair[2] = {a, b};
  out_put(c, pair, sizeof(pair));
}

static void out_reply(atun_socks5_conn *c, uint8_t rep, const atun_addr *bound,
                      uint16_t bound_port) {
  uint8_t buf[ATUN_SOCKS5_REPLY_MAX];
  ssize_t n = atun_socks5_reply_encode(buf, sizeof(buf), rep, bound, bound_port);
  ATUN_ASSERT(n > 0);
  out_put(c, buf, (size_t)n);
}

static int fail(atun_socks5_conn *c, int reason, int err) {
  c->state = ATUN_SOCKS5_CLOSING;
  c->reason = (uint8_t)reason;
  c->err = err;
  return err;
}

static int fail_reply(atun_socks5_conn *c, int reason, uint8_t rep) {
  out_reply(c, rep, NULL, 0);
  return fail(c, reason, ATUN_ERR_PROTO);
}

/* --- connection: reading ---------------------------------------------------------- */

/* Total length of the current message as far as the bytes held tell; grows
 * as the length fields arrive.  Unknown address types never get here
 * (check_header() closes on them first). */
static size_t msg_need(const atun_socks5_conn *c) {
  const uint8_t *m = c->msg;
  if (c->phase == PH_GREETING) return c->have < 2 ? 2 : 2 + (size_t)m[1];
  if (c->phase == PH_AUTH) {
    if (c->have < 2) return 2;
    size_t plen_at = 2 + (size_t)m[1];
    if (c->have <= plen_at) return plen_at + 1;
    return plen_at + 1 + m[plen_at];
  }
  if (c->have < 4) return 4;
  if (m[3] == ATUN_SOCKS5_ATYP_IPV4) return 4 + 4 + 2;
  if (m[3] == ATUN_SOCKS5_ATYP_IPV6) return 4 + 16 + 2;
  return c->have < 5 ? 5 : 5 + (size_t)m[4] + 2;
}

static int check_request_header(atun_socks5_conn *c) {
  const uint8_t *m = c->msg;
  if (c->have >= 1 && m[0] != ATUN_SOCKS5_VERSION)
    return fail(c, ATUN_SOCKS5_CLOSE_BAD_VERSION, ATUN_ERR_PROTO);
  if (c->have >= 2 && m[1] != ATUN_SOCKS5_CMD_CONNECT)
    return fail_reply(c, ATUN_SOCKS5_CLOSE_BAD_COMMAND,
                      ATUN_SOCKS5_REP_COMMAND_NOT_SUPPORTED);
  /* RSV (m[2]) is ignored: nothing depends on it. */
  if (c->have >= 4 && m[3] != ATUN_SOCKS5_ATYP_IPV4 &&
      m[3] != ATUN_SOCKS5_ATYP_IPV6 && m[3] != ATUN_SOCKS5_ATYP_DOMAIN)
    return fail_reply(c, ATUN_SOCKS5_CLOSE_BAD_ATYP,
                      ATUN_SOCKS5_REP_ATYP_NOT_SUPPORTED);
  if (c->have >= 5 && m[3] == ATUN_SOCKS5_ATYP_DOMAIN && m[4] == 0)
    return fail_reply(c, ATUN_SOCKS5_CLOSE_BAD_TARGET,
                      ATUN_SOCKS5_REP_HOST_UNREACHABLE);
  return 0;
}

/* Rejects what the header bytes held so far already condemn, so a client
 * speaking another protocol is answered on its first bytes instead of
 * being waited for. */
static int check_header(atun_socks5_conn *c) {
  const uint8_t *m = c->msg;
  switch (c->phase) {
    case PH_GREETING:
      if (c->have >= 1 && m[0] != ATUN_SOCKS5_VERSION)
        return fail(c, ATUN_SOCKS5_CLOSE_BAD_VERSION, ATUN_ERR_PROTO);
      if (c->have >= 2 && m[1] == 0) {
        out_pair(c, ATUN_SOCKS5_VERSION, ATUN_SOCKS5_METHOD_UNACCEPTABLE);
        return fail(c, ATUN_SOCKS5_CLOSE_NO_METHOD, ATUN_ERR_DENIED);
      }
      return 0;
    case PH_AUTH:
      if (c->have >= 1 && m[0] != ATUN_SOCKS5_AUTH_VERSION)
        return fail(c, ATUN_SOCKS5_CLOSE_BAD_VERSION, ATUN_ERR_PROTO);
      return 0;
    default:
      return check_request_header(c);
  }
}

static int offered(const uint8_t *methods, size_t n, uint8_t method) {
  return memchr(methods, method, n) != NULL;
}

/* With users only username/password will do.  Without, username/password
 * is still preferred when offered: clients offer it only when they have a
 * username to send, and that username may carry a pin. */
static int process_greeting(atun_socks5_conn *c, const atun_socks5_server *srv) {
  const uint8_t *methods = c->msg + 2;
  size_t n = c->msg[1];
  uint8_t choice = ATUN_SOCKS5_METHOD_UNACCEPTABLE;
  if (offered(methods, n, ATUN_SOCKS5_METHOD_USERPASS)) {
    choice = ATUN_SOCKS5_METHOD_USERPASS;
  } else if (srv->nusers == 0 && offered(methods, n, ATUN_SOCKS5_METHOD_NONE)) {
    choice = ATUN_SOCKS5_METHOD_NONE;
  }
  out_pair(c, ATUN_SOCKS5_VERSION, choice);
  if (choice == ATUN_SOCKS5_METHOD_UNACCEPTABLE)
    return fail(c, ATUN_SOCKS5_CLOSE_NO_METHOD, ATUN_ERR_DENIED);
  c->phase = choice == ATUN_SOCKS5_METHOD_USERPASS ? PH_AUTH : PH_REQUEST;
  return 0;
}

/* An unknown user is compared against the first user's password and the
 * result thrown away, so the time taken does not tell which names exist. */
static int password_ok(const atun_socks5_server *srv, const user *u,
                       const uint8_t *pass, size_t plen) {
  uint8_t given[1 + ATUN_SOCKS5_FIELD_MAX] = {0};
  given[0] = (uint8_t)plen;
  memcpy(given + 1, pass, plen);
  const user *against = u != NULL ? u : &srv->users[0];
  int eq = atun_ct_memeq(given, against->pass, sizeof(given));
  wipe(given, sizeof(given));
  return eq & (u != NULL);
}

typedef struct credentials {
  const char *name;
  size_t namelen;
  const char *pin; /* NULL = none */
  size_t pinlen;
} credentials;

static void split_pin(credentials *cr) {
  const char *name = cr->name;
  for (size_t i = cr->namelen; i-- > 0;) {
    if (name[i] != ATUN_SOCKS5_PIN_SEP) continue;
    cr->pin = name + i + 1;
    cr->pinlen = cr->namelen - i - 1;
    cr->namelen = i;
    return;
  }
}

static int auth_fail(atun_socks5_conn *c, int reason) {
  out_pair(c, ATUN_SOCKS5_AUTH_VERSION, 0x01);
  return fail(c, reason, ATUN_ERR_DENIED);
}

static int process_auth(atun_socks5_conn *c, const atun_socks5_server *srv) {
  const uint8_t *m = c->msg;
  credentials cr = {(const char *)m + 2, m[1], NULL, 0};
  size_t plen = m[2 + cr.namelen];
  const uint8_t *pass = m + 3 + cr.namelen;
  const user *u = NULL;
  if (srv->nusers > 0) {
    u = find_user(srv, cr.name, cr.namelen);
    if (u == NULL) {
      split_pin(&cr);
      if (cr.pin != NULL) u = find_user(srv, cr.name, cr.namelen);
    }
    if (!password_ok(srv, u, pass, plen))
      return auth_fail(c, ATUN_SOCKS5_CLOSE_AUTH_FAILED);
  } else {
    split_pin(&cr);
  }
  if (cr.pin != NULL &&
      (!srv->settings.allow_pin || !atun_agent_name_valid(cr.pin, cr.pinlen)))
    return auth_fail(c, ATUN_SOCKS5_CLOSE_BAD_PIN);
  if (cr.pin != NULL) {
    memcpy(c->req.pin, cr.pin, cr.pinlen);
    c->req.pin[cr.pinlen] = '\0';
  }
  if (u != NULL) {
    memcpy(c->req.user, u->name, u->namelen);
    c->req.user[u->namelen] = '\0';
  }
  out_pair(c, ATUN_SOCKS5_AUTH_VERSION, 0x00);
  c->phase = PH_REQUEST;
  return 0;
}

/* The last label of a host name must not start with a digit, as in the
 * wire codec: the resolver would read "10.1" or "0x7f.1" as an address. */
static int host_ok(const char *host) {
  const char *dot = strrchr(host, '.');
  const char *last = dot != NULL ? dot + 1 : host;
  return !(last[0] >= '0' && last[0] <= '9');
}

/* A domain field holding an IP literal (bracketed or not) becomes an
 * address target, so the address rules (and the longest-prefix route)
 * apply to it rather than the name rules. */
static int parse_domain(atun_target *t, const uint8_t *p, size_t n) {
  char text[ATUN_SOCKS5_FIELD_MAX + 1];
  if (memchr(p, '\0', n) != NULL) return ATUN_ERR_BAD_NAME;
  memcpy(text, p, n);
  text[n] = '\0';
  int bracketed = n >= 2 && text[0] == '[' && text[n - 1] == ']';
  if (bracketed) text[n - 1] = '\0';
  if (atun_addr_parse(&t->addr, bracketed ? text + 1 : text) == 0) {
    atun_addr_normalize(&t->addr);
    t->kind = ATUN_TARGET_ADDR;
    return 0;
  }
  if (bracketed || atun_name_normalize(t->host, text, n) != 0 || !host_ok(t->host))
    return ATUN_ERR_BAD_NAME;
  t->kind = ATUN_TARGET_HOST;
  return 0;
}

static int process_request(atun_socks5_conn *c) {
  const uint8_t *m = c->msg;
  atun_target *t = &c->req.target;
  memset(t, 0, sizeof(*t));
  size_t port_at;
  if (m[3] == ATUN_SOCKS5_ATYP_DOMAIN) {
    port_at = 5 + (size_t)m[4];
    if (parse_domain(t, m + 5, m[4]) != 0)
      return fail_reply(c, ATUN_SOCKS5_CLOSE_BAD_TARGET,
                        ATUN_SOCKS5_REP_HOST_UNREACHABLE);
  } else {
    size_t alen = m[3] == ATUN_SOCKS5_ATYP_IPV4 ? 4 : 16;
    t->kind = ATUN_TARGET_ADDR;
    t->addr.family = alen == 4 ? ATUN_AF_INET : ATUN_AF_INET6;
    memcpy(t->addr.bytes, m + 4, alen);
    atun_addr_normalize(&t->addr);
    port_at = 4 + alen;
  }
  uint16_t port = (uint16_t)((m[port_at] << 8) | m[port_at + 1]);
  /* Nothing listens on port 0: refuse it as the ruleset would. */
  if (port == 0)
    return fail_reply(c, ATUN_SOCKS5_CLOSE_BAD_TARGET, ATUN_SOCKS5_REP_NOT_ALLOWED);
  c->req.port = port;
  c->state = ATUN_SOCKS5_CONNECT;
  return 0;
}

static int process(atun_socks5_conn *c, const atun_socks5_server *srv) {
  int rv;
  switch (c->phase) {
    case PH_GREETING: rv = process_greeting(c, srv); break;
    case PH_AUTH:
      rv = process_auth(c, srv);
      wipe(c->msg, c->have); /* it held a password */
      break;
    default: rv = process_request(c); break;
  }
  c->have = 0;
  return rv;
}

void atun_socks5_conn_init(atun_socks5_conn *conn,
                           const atun_socks5_server *srv, atun_tstamp now) {
  memset(conn, 0, sizeof(*conn));
  conn->state = ATUN_SOCKS5_HANDSHAKE;
  conn->phase = PH_GREETING;
  uint64_t timeout = srv->settings.handshake_timeout_ns;
  conn->deadline = now > ATUN_TSTAMP_MAX - timeout ? ATUN_TSTAMP_MAX : now + timeout;
}

/* Each pass either copies at least one byte or completes one of the (at
 * most three) messages, so the loop runs at most |datalen| + 3 times.  It
 * copies no more than the current message still needs, which is what
 * leaves pipelined tunnel data unconsumed. */
ssize_t atun_socks5_conn_feed(atun_socks5_conn *conn,
                              const atun_socks5_server *srv,
                              const uint8_t *data, size_t datalen) {
  if (conn->state == ATUN_SOCKS5_CLOSING) return conn->err;
  size_t off = 0;
  while (conn->state == ATUN_SOCKS5_HANDSHAKE) {
    int rv = check_header(conn);
    if (rv != 0) return rv;
    size_t need = msg_need(conn);
    ATUN_ASSERT(need <= ATUN_SOCKS5_MSG_MAX && need >= conn->have);
    if (conn->have == need) {
      rv = process(conn, srv);
      if (rv != 0) return rv;
      continue;
    }
    if (off == datalen) break;
    size_t take = need - conn->have;
    if (take > datalen - off) take = datalen - off;
    memcpy(conn->msg + conn->have, data + off, take);
    conn->have += take;
    off += take;
  }
  return (ssize_t)off;
}

int atun_socks5_conn_state(const atun_socks5_conn *conn) { return conn->state; }

int atun_socks5_conn_close_reason(const atun_socks5_conn *conn) {
  return conn->reason;
}

const atun_socks5_request *atun_socks5_conn_request(const atun_socks5_conn *conn) {
  if (conn->state != ATUN_SOCKS5_CONNECT && conn->state != ATUN_SOCKS5_ESTABLISHED)
    return NULL;
  return &conn->req;
}

int atun_socks5_conn_reply(atun_socks5_conn *conn, uint64_t status,
                           const atun_addr *bound, uint16_t bound_port) {
  if (conn->state != ATUN_SOCKS5_CONNECT) return ATUN_ERR_STATE;
  if (status > ATUN_CONNECT_STATUS_MAX) return ATUN_ERR_INVALID_ARGUMENT;
  if (bound != NULL && bound->family != ATUN_AF_INET &&
      bound->family != ATUN_AF_INET6) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  out_reply(conn, atun_socks5_reply_code(status), bound, bound_port);
  if (status == ATUN_CONNECT_OK) {
    conn->state = ATUN_SOCKS5_ESTABLISHED;
  } else {
    fail(conn, ATUN_SOCKS5_CLOSE_CONNECT_FAILED, ATUN_ERR_CLOSED);
  }
  return 0;
}

const uint8_t *atun_socks5_conn_out(const atun_socks5_conn *conn, size_t *len) {
  *len = conn->outlen;
  return conn->out;
}

void atun_socks5_conn_out_consume(atun_socks5_conn *conn, size_t n) {
  if (n > conn->outlen) n = conn->outlen;
  memmove(conn->out, conn->out + n, conn->outlen - n);
  conn->outlen -= n;
}

atun_tstamp atun_socks5_conn_expiry(const atun_socks5_conn *conn) {
  return conn->state == ATUN_SOCKS5_HANDSHAKE ? conn->deadline : ATUN_TSTAMP_MAX;
}

int atun_socks5_conn_handle_expiry(atun_socks5_conn *conn, atun_tstamp now) {
  if (conn->state != ATUN_SOCKS5_HANDSHAKE || now < conn->deadline) return 0;
  return fail(conn, ATUN_SOCKS5_CLOSE_TIMEOUT, ATUN_ERR_TIMEOUT);
}

const char *atun_socks5_close_reason_name(int reason) {
  switch (reason) {
    case ATUN_SOCKS5_CLOSE_NONE: return "none";
    case ATUN_SOCKS5_CLOSE_BAD_VERSION: return "bad_version";
    case ATUN_SOCKS5_CLOSE_NO_METHOD: return "no_method";
    case ATUN_SOCKS5_CLOSE_AUTH_FAILED: return "auth_failed";
    case ATUN_SOCKS5_CLOSE_BAD_PIN: return "bad_pin";
    case ATUN_SOCKS5_CLOSE_BAD_COMMAND: return "bad_command";
    case ATUN_SOCKS5_CLOSE_BAD_ATYP: return "bad_atyp";
    case ATUN_SOCKS5_CLOSE_BAD_TARGET: return "bad_target";
    case ATUN_SOCKS5_CLOSE_TIMEOUT: return "timeout";
    case ATUN_SOCKS5_CLOSE_CONNECT_FAILED: return "connect_failed";
    default: return "unknown";
  }
}
