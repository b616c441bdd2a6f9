/*
 * The server side of SOCKS5 (RFC 1928) with username/password
 * authentication (RFC 1929), as a sans-I/O state machine per client
 * connection.
 *
 * Bytes from the client go in through atun_socks5_conn_feed() in pieces of
 * any size; the reply bytes collect in a small queue inside the connection
 * (atun_socks5_conn_out()); a parsed CONNECT request comes out through
 * atun_socks5_conn_request().  The machine never reads past the end of the
 * CONNECT request, so data a client pipelines behind it stays with the
 * caller and becomes the first bytes of the tunnel.
 *
 * Life of a connection (atun_socks5_conn_state()):
 *
 *   HANDSHAKE    greeting, optional authentication, request; feed it.
 *   CONNECT      a CONNECT request is parsed.  The caller picks an agent,
 *                opens the session, and answers with
 *                atun_socks5_conn_reply() (success or the failure status).
 *                feed() consumes nothing in this state.
 *   ESTABLISHED  the success reply is queued: send it, then relay bytes.
 *   CLOSING      an error reply may be queued: send it, then close.
 *
 * Only CONNECT is served: BIND and UDP ASSOCIATE get reply 0x07 (command
 * not supported) and the connection closes.  A greeting or request with a
 * version other than 5 closes the connection without a reply (the client
 * speaks another protocol, e.g. SOCKS4 or HTTP, and could not read one).
 *
 * Authentication.  A server with users accepts only method 0x02
 * (username/password); the password is compared in constant time, and an
 * unknown user costs the same compare as a known one.  A server without
 * users accepts method 0x00, and also 0x02 (preferred when the client
 * offers it) so that a client can carry an agent pin in its username; the
 * password is then ignored.
 *
 * Agent pin (SPEC section 4).  A client asks for a specific agent by
 * appending "+<agent>" to its username, where <agent> is an agent name or
 * id (atun_agent_name_valid(): 1..63 bytes of [A-Za-z0-9._-]; the canonical
 * UUID text qualifies):
 *
 *     alice+db-agent     user "alice", pinned to the agent "db-agent"
 *     +db-agent          (no users configured) pinned to "db-agent"
 *     anything           (no users configured) no pin; name ignored
 *
 * e.g. `curl -x socks5h://alice+db-agent:secret@gw:1080 ...`.  With users
 * configured, a username equal to a configured user is taken whole, even
 * if it holds a '+'; otherwise it splits at its last '+'.  A pin that is
 * not a valid agent name, or any pin while pins are disabled, fails the
 * authentication.  Whether the pinned agent exists is the caller's
 * question.
 *
 * Bounds: every client field is at most 255 bytes by the wire format, so a
 * connection buffers at most ATUN_SOCKS5_MSG_MAX bytes; the server sends at
 * most 2 + 2 + 22 bytes during a handshake, which the fixed output queue
 * always holds; a feed() call loops at most once per input byte plus once
 * per message (three messages at most).
 *
 * Timeout: the caller arms a timer from atun_socks5_conn_expiry() and calls
 * atun_socks5_conn_handle_expiry() when it fires; a client that stalls in
 * the handshake is closed.  Once the request is parsed, the caller's connect
 * attempt owns the clock (it answers with ATUN_CONNECT_TIMEOUT).
 *
 * The server (users and settings) is passed to every call rather than kept
 * by the connection, so a configuration reload can swap servers while
 * handshakes are in flight.  Nothing here allocates except the server.
 */
#ifndef ATUN_SOCKS5_H
#define ATUN_SOCKS5_H

#include "addr.h"
#include "atun.h"
#include "ca_policy.h"
#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATUN_SOCKS5_VERSION 0x05
#define ATUN_SOCKS5_AUTH_VERSION 0x01

#define ATUN_SOCKS5_METHOD_NONE 0x00
#define ATUN_SOCKS5_METHOD_USERPASS 0x02
#define ATUN_SOCKS5_METHOD_UNACCEPTABLE 0xff

#define ATUN_SOCKS5_CMD_CONNECT 0x01
#define ATUN_SOCKS5_CMD_BIND 0x02
#define ATUN_SOCKS5_CMD_UDP_ASSOCIATE 0x03

#define ATUN_SOCKS5_ATYP_IPV4 0x01
#define ATUN_SOCKS5_ATYP_DOMAIN 0x03
#define ATUN_SOCKS5_ATYP_IPV6 0x04

/* Reply codes (RFC 1928 section 6). */
#define ATUN_SOCKS5_REP_SUCCEEDED 0x00
#define ATUN_SOCKS5_REP_GENERAL_FAILURE 0x01
#define ATUN_SOCKS5_REP_NOT_ALLOWED 0x02
#define ATUN_SOCKS5_REP_NETWORK_UNREACHABLE 0x03
#define ATUN_SOCKS5_REP_HOST_UNREACHABLE 0x04
#define ATUN_SOCKS5_REP_CONNECTION_REFUSED 0x05
#define ATUN_SOCKS5_REP_TTL_EXPIRED 0x06
#define ATUN_SOCKS5_REP_COMMAND_NOT_SUPPORTED 0x07
#define ATUN_SOCKS5_REP_ATYP_NOT_SUPPORTED 0x08

/* A username, password or domain: one length byte, so 255 at most. */
#define ATUN_SOCKS5_FIELD_MAX 255
/* The largest client message, the RFC 1929 request:
 * VER ULEN UNAME(255) PLEN PASSWD(255). */
#define ATUN_SOCKS5_MSG_MAX (3 + 2 * ATUN_SOCKS5_FIELD_MAX)
/* A reply: VER REP RSV ATYP, an IPv6 address, a port. */
#define ATUN_SOCKS5_REPLY_MAX 22
/* Output queue: method choice (2) + auth status (2) + reply (22) fit. */
#define ATUN_SOCKS5_OUT_MAX 32
/* Users a server holds (the gateway config allows as many). */
#define ATUN_SOCKS5_USERS_MAX 256
/* Default time a client has from accept to a complete request. */
#define ATUN_SOCKS5_HANDSHAKE_TIMEOUT_NS ((uint64_t)10 * ATUN_NS_PER_S)
/* The separator between a username and an agent pin. */
#define ATUN_SOCKS5_PIN_SEP '+'

typedef struct atun_socks5_settings {
  /* Accept to complete request; > 0.  Default 10 s. */
  uint64_t handshake_timeout_ns;
  /* Nonzero: usernames may carry an agent pin.  Default 1. */
  int allow_pin;
} atun_socks5_settings;

void atun_socks5_settings_default(atun_socks5_settings *settings);

/* A user given to atun_socks5_server_new(); both fields are bytes, no NUL
 * needed. */
typedef struct atun_socks5_user {
  const char *name; /* 1..ATUN_SOCKS5_FIELD_MAX bytes */
  size_t namelen;
  const char *pass; /* 1..ATUN_SOCKS5_FIELD_MAX bytes */
  size_t passlen;
} atun_socks5_user;

typedef struct atun_socks5_server atun_socks5_server;

/* Creates a server holding copies of |users| (|nusers| of them; 0 = no
 * authentication).  |settings| NULL means the defaults.
 * Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  a zero handshake timeout, |users| NULL with
 *                              |nusers| > 0, or a name or password of 0 or
 *                              more than ATUN_SOCKS5_FIELD_MAX bytes
 *   ATUN_ERR_LIMIT             |nusers| above ATUN_SOCKS5_USERS_MAX
 *   ATUN_ERR_EXISTS            two users with the same name
 *   ATUN_ERR_NOMEM */
int atun_socks5_server_new(atun_socks5_server **psrv,
                           const atun_socks5_settings *settings,
                           const atun_socks5_user *users, size_t nusers,
                           const atun_mem *mem);

/* Wipes the stored passwords and frees |srv|.  NULL is a no-op. */
void atun_socks5_server_del(atun_socks5_server *srv);

/* Number of users (0: the server runs without authentication). */
size_t atun_socks5_server_nusers(const atun_socks5_server *srv);

typedef enum atun_socks5_state {
  ATUN_SOCKS5_HANDSHAKE = 0,
  ATUN_SOCKS5_CONNECT = 1,
  ATUN_SOCKS5_ESTABLISHED = 2,
  ATUN_SOCKS5_CLOSING = 3
} atun_socks5_state;

/* Why a connection is CLOSING; for logs and metrics. */
typedef enum atun_socks5_close_reason {
  ATUN_SOCKS5_CLOSE_NONE = 0,
  ATUN_SOCKS5_CLOSE_BAD_VERSION = 1,   /* not SOCKS5 / not RFC 1929 */
  ATUN_SOCKS5_CLOSE_NO_METHOD = 2,     /* no acceptable method offered */
  ATUN_SOCKS5_CLOSE_AUTH_FAILED = 3,   /* unknown user or wrong password */
  ATUN_SOCKS5_CLOSE_BAD_PIN = 4,       /* malformed or disallowed pin */
  ATUN_SOCKS5_CLOSE_BAD_COMMAND = 5,   /* BIND, UDP ASSOCIATE, unknown */
  ATUN_SOCKS5_CLOSE_BAD_ATYP = 6,      /* unknown address type */
  ATUN_SOCKS5_CLOSE_BAD_TARGET = 7,    /* unusable name, or port 0 */
  ATUN_SOCKS5_CLOSE_TIMEOUT = 8,       /* handshake took too long */
  ATUN_SOCKS5_CLOSE_CONNECT_FAILED = 9 /* the caller replied with a failure */
} atun_socks5_close_reason;

/* Returns a static snake_case name ("bad_version", ...), "unknown" outside
 * the enum.  Usable as a metrics label. */
const char *atun_socks5_close_reason_name(int reason);

/* A parsed CONNECT request. */
typedef struct atun_socks5_request {
  /* ATUN_TARGET_ADDR (an IPv4-mapped IPv6 address folded to IPv4; a
   * domain field holding an IP literal, bracketed or not, lands here too)
   * or ATUN_TARGET_HOST (rules of atun_target.host). */
  atun_target target;
  uint16_t port; /* 1..65535 */
  /* Agent name or id the client pinned; "" = none. */
  char pin[ATUN_AGENT_NAME_MAX + 1];
  /* The configured user that authenticated; "" without authentication.
   * Bytes of the operator's config, NUL-terminated. */
  char user[ATUN_SOCKS5_FIELD_MAX + 1];
} atun_socks5_request;

/* Caller-owned per-connection state.  Fields are internal. */
typedef struct atun_socks5_conn {
  uint8_t state;  /* atun_socks5_state */
  uint8_t phase;  /* which message HANDSHAKE reads */
  uint8_t reason; /* atun_socks5_close_reason */
  int err;        /* sticky error while CLOSING */
  atun_tstamp deadline;
  size_t have;    /* bytes of the current message in |msg| */
  uint8_t msg[ATUN_SOCKS5_MSG_MAX];
  size_t outlen;
  uint8_t out[ATUN_SOCKS5_OUT_MAX];
  atun_socks5_request req;
} atun_socks5_conn;

/* Starts a connection accepted at |now|; the handshake must complete by
 * |now| + the server's handshake timeout. */
void atun_socks5_conn_init(atun_socks5_conn *conn,
                           const atun_socks5_server *srv, atun_tstamp now);

/* Consumes client bytes from |data| (|datalen| may be 0) and returns how
 * many it took: all of them while the handshake goes on, exactly up to the
 * end of the CONNECT request when the request completes (the rest is
 * tunnel data and stays with the caller), 0 in CONNECT and ESTABLISHED.
 * Replies are queued (atun_socks5_conn_out()).  When the input breaks the
 * protocol the connection becomes CLOSING, an error reply may be queued,
 * and this and every later call return the error:
 *   ATUN_ERR_PROTO   bad version (no reply), unsupported command (0x07),
 *                    unknown address type (0x08), unusable target: a
 *                    domain that is neither an IP literal nor a valid host
 *                    name (0x04, it can not resolve) or port 0 (0x02)
 *   ATUN_ERR_DENIED  no acceptable method (0xff), failed authentication or
 *                    bad pin (RFC 1929 status 0x01)
 *   ATUN_ERR_TIMEOUT after atun_socks5_conn_handle_expiry() closed it
 *   ATUN_ERR_CLOSED  after atun_socks5_conn_reply() with a failure
 * The close reason tells them apart. */
ssize_t atun_socks5_conn_feed(atun_socks5_conn *conn,
                              const atun_socks5_server *srv,
                              const uint8_t *data, size_t datalen);

/* Returns the atun_socks5_state. */
int atun_socks5_conn_state(const atun_socks5_conn *conn);

/* Returns the atun_socks5_close_reason (NONE unless CLOSING). */
int atun_socks5_conn_close_reason(const atun_socks5_conn *conn);

/* The parsed request in CONNECT and ESTABLISHED, NULL before. */
const atun_socks5_request *atun_socks5_conn_request(const atun_socks5_conn *conn);

/* Answers the CONNECT request with |status| (an atun_connect_status) and
 * the bound address |bound| / |bound_port| (|bound| NULL: 0.0.0.0:0, which
 * is what a tunnel can honestly say).  ATUN_CONNECT_OK moves to
 * ESTABLISHED, any other status to CLOSING with the mapped reply code.
 * Returns 0 or
 *   ATUN_ERR_STATE             not in CONNECT
 *   ATUN_ERR_INVALID_ARGUMENT  |status| outside the enum, or |bound| of
 *                              neither family */
int atun_socks5_conn_reply(atun_socks5_conn *conn, uint64_t status,
                           const atun_addr *bound, uint16_t bound_port);

/* The queued output: |*len| bytes at the returned pointer, valid until the
 * next call on |conn|. */
const uint8_t *atun_socks5_conn_out(const atun_socks5_conn *conn, size_t *len);

/* Drops the first |n| queued bytes (clamped to what is queued) once the
 * caller has written them. */
void atun_socks5_conn_out_consume(atun_socks5_conn *conn, size_t n);

/* The time at which the handshake times out, ATUN_TSTAMP_MAX outside
 * HANDSHAKE. */
atun_tstamp atun_socks5_conn_expiry(const atun_socks5_conn *conn);

/* Closes a connection still in HANDSHAKE at |now| >= its expiry (no reply:
 * RFC 1928 has none for this).  Returns 0 (nothing to do) or
 * ATUN_ERR_TIMEOUT (now CLOSING). */
int atun_socks5_conn_handle_expiry(atun_socks5_conn *conn, atun_tstamp now);

/* Maps a connect status to its reply code:
 *   ok          -> 0x00 succeeded
 *   denied      -> 0x02 connection not allowed by ruleset
 *   dns_failure -> 0x04 host unreachable (the name has no usable address)
 *   unreachable -> 0x03 network unreachable (no route to the target's
 *                  network; kept apart from a name that did not resolve)
 *   refused     -> 0x05 connection refused
 *   timeout     -> 0x06 TTL expired (the closest RFC 1928 has)
 *   internal    -> 0x01 general SOCKS server failure
 * and anything else to 0x01. */
uint8_t atun_socks5_reply_code(uint64_t status);

/* Writes the reply VER REP RSV ATYP BND.ADDR BND.PORT into |buf|.  |bound|
 * NULL means 0.0.0.0.  Returns the length (10 or 22) or
 * ATUN_ERR_NOBUF / ATUN_ERR_INVALID_ARGUMENT (|bound| of neither family). */
ssize_t atun_socks5_reply_encode(uint8_t *buf, size_t buflen, uint8_t rep,
                                 const atun_addr *bound, uint16_t bound_port);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_SOCKS5_H */
