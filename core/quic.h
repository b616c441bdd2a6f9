/*
 * The QUIC connection object: one ngtcp2 connection and its wolfSSL session,
 * for both roles (agent = client, gateway = server).
 *
 * Sans-I/O like ngtcp2 itself: datagrams and a timestamp go in
 * (atun_quic_conn_read, atun_quic_conn_handle_expiry), datagrams and an expiry
 * come out (atun_quic_conn_write, atun_quic_conn_get_expiry), stream events go
 * to callbacks.  No socket, no clock: the simulator runs the very same object.
 *
 * Driving loop (io/ or the simulator):
 *
 *   on datagram:  atun_quic_conn_read(...)
 *   on timer:     atun_quic_conn_handle_expiry(...)
 *   after either, and after any stream call:
 *                 while ((n = atun_quic_conn_write(...)) > 0) send(n bytes);
 *                 re-arm the timer at atun_quic_conn_get_expiry()
 *   once atun_quic_conn_is_done(): atun_quic_conn_del()
 *
 * Security model.  Both sides trust one CA (the gateway's).  The server
 * demands a client certificate chaining to it; the client verifies the server
 * against it and, if configured, against a SHA-256 pin of the server's
 * SubjectPublicKeyInfo (atun_quic_spki_sha256 defines the pin).  ALPN is
 * "atun/2" (ATUN_ALPN) on both sides and checked again after the handshake.
 * The server then reads the agent id from the client certificate's URI SAN
 * atun://agent/<uuid>, and asks the peer_verify callback (revocation) before
 * it reports the handshake as completed.
 *
 * Beware (notes/wolfssl-ngtcp2.md): the client's handshake_completed fires
 * before the server has judged the client certificate.  The agent must wait
 * for the gateway's HelloAck before it treats the connection as accepted.
 *
 * Stream send data is copied into a bounded per-stream buffer inside the
 * object (ngtcp2 does not copy: bytes must stay put until acknowledged).
 * Received data is handed to stream_data and is NOT kept: the application
 * buffers it and calls atun_quic_stream_consume() once its sink (a TCP
 * socket) took the bytes; only then does the peer get more credit.  That is
 * the backpressure path, so the receive-side memory of a stream is bounded by
 * its flow-control window.
 *
 * wolfSSL allocates with its own allocator and keeps its own RNG (TLS key
 * shares, signatures); everything ngtcp2 and this object allocate goes
 * through |mem|, and every other random byte (connection ids, reset tokens,
 * path challenges, ngtcp2's rand) comes from |rand|.
 */
#ifndef ATUN_QUIC_H
#define ATUN_QUIC_H

#include "addr.h"
#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- application error codes -------------------------------------------------
 *
 * The wrapper closes connections with codes of the one atun application error
 * space (atun_app_error in codec.h), so the agent reads a single table:
 *
 *   ATUN_QUIC_ERR_INTERNAL  0x01  a local failure: out of memory, a callback
 *                                 failed, the TLS stack misbehaved
 *   ATUN_QUIC_ERR_ALPN      0x07  negotiated ALPN is not atun/2 (the peer
 *                                 speaks another protocol version)
 *   ATUN_QUIC_ERR_REVOKED   0x08  peer_verify said the agent id or the
 *                                 certificate fingerprint is revoked
 *   ATUN_QUIC_ERR_IDENTITY  0x09  client certificate without a valid
 *                                 atun://agent/<uuid> URI SAN, or peer_verify
 *                                 refused it for another reason
 *
 * TLS failures during the handshake (unknown CA, expired certificate, pin
 * mismatch, no certificate, ALPN refused by the server) travel as QUIC
 * transport errors CRYPTO_ERROR (0x100 + TLS alert), as RFC 9001 requires. */
#define ATUN_QUIC_ERR_NO_ERROR 0x00u
#define ATUN_QUIC_ERR_INTERNAL 0x01u
#define ATUN_QUIC_ERR_ALPN 0x07u
#define ATUN_QUIC_ERR_REVOKED 0x08u
#define ATUN_QUIC_ERR_IDENTITY 0x09u

/* --- bounds --------------------------------------------------------------- */

/* Largest UDP payload this endpoint sends; atun_quic_conn_write needs at least
 * ATUN_QUIC_DATAGRAM_MIN bytes of room and fills at most this much. */
#define ATUN_QUIC_DATAGRAM_MAX 1452
#define ATUN_QUIC_DATAGRAM_MIN 1200
/* Length of the connection ids this endpoint issues. */
#define ATUN_QUIC_SCID_LEN 16
#define ATUN_QUIC_CID_MAX 20
/* Connection ids one connection answers to (issued ids + the client's
 * original destination id); QUIC peers hold at most 8 of ours. */
#define ATUN_QUIC_CIDS_MAX 10
/* A close reason phrase, kept and sent (longer ones are cut). */
#define ATUN_QUIC_REASON_MAX 127
/* Certificate subject CN kept for the peer (longer ones are cut). */
#define ATUN_QUIC_CN_MAX 64
/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
#define ATUN_QUIC_AGENT_ID_STRLEN 36
#define ATUN_QUIC_SHA256_LEN 32
/* Largest part of the connection send buffer kept for short messages
 * (atun_quic_stream_writable). */
#define ATUN_QUIC_SEND_RESERVE_MAX ((size_t)256 << 10)
/* Stream send data lives in chunks of this size, allocated on demand. */
#define ATUN_QUIC_CHUNK_SIZE ((size_t)16384)
/* In the closing period, the CONNECTION_CLOSE is sent again for incoming
 * datagrams (RFC 9000, 10.2.1), at most this many times. */
#define ATUN_QUIC_CLOSE_RESEND_MAX 8
/* Largest duration setting: a day (keeps deadline arithmetic far from
 * overflow and catches a unit mistake). */
#define ATUN_QUIC_DURATION_MAX_NS ((uint64_t)24 * 3600 * ATUN_NS_PER_S)

/* --- settings ------------------------------------------------------------- */

typedef struct atun_quic_settings {
  /* Receive flow control: the initial windows we grant the peer, and the
   * ceilings ngtcp2's window auto-tuning may grow them to.  The application
   * must be ready to buffer a stream's max window of unconsumed bytes. */
  uint64_t stream_window_initial; /* default 8 MiB */
  uint64_t stream_window_max;     /* default 16 MiB */
  uint64_t conn_window_initial;   /* default 16 MiB */
  uint64_t conn_window_max;       /* default 32 MiB */
  /* Bidirectional streams the peer may have open at once; we also open at
   * most this many ourselves.  Default 1024, at most 65536. */
  uint64_t max_streams_bidi;
  /* Send buffering inside the object: bytes written but not yet acknowledged,
   * per stream and for the whole connection.  Defaults 4 MiB / 32 MiB. */
  size_t stream_send_buffer_max;
  size_t conn_send_buffer_max;
  uint64_t idle_timeout_ns;      /* default 30 s */
  uint64_t handshake_timeout_ns; /* default 10 s */
  uint64_t keep_alive_ns;        /* PING after this much quiet; 0 = off (default) */
  uint64_t max_ack_delay_ns;     /* default 25 ms */
  /* ACK-eliciting packets received before an immediate ACK; default 2. */
  size_t ack_thresh;
  size_t max_udp_payload; /* default ATUN_QUIC_DATAGRAM_MAX, >= DATAGRAM_MIN */
} atun_quic_settings;

void atun_quic_settings_default(atun_quic_settings *settings);

/* --- TLS context ---------------------------------------------------------- */

typedef enum atun_quic_role {
  ATUN_QUIC_CLIENT = 0, /* the agent */
  ATUN_QUIC_SERVER = 1  /* the gateway */
} atun_quic_role;

/* Buffers are PEM (starting with "-----BEGIN") or DER; they are copied. */
typedef struct atun_quic_tls_config {
  const uint8_t *ca; /* required: the CA every peer must chain to */
  size_t ca_len;
  const uint8_t *cert; /* own certificate (chain); required for a server */
  size_t cert_len;
  const uint8_t *key; /* own private key; required with |cert| */
  size_t key_len;
  /* Client only, optional: SHA-256 of the server certificate's
   * SubjectPublicKeyInfo (ATUN_QUIC_SHA256_LEN bytes). */
  const uint8_t *server_spki_sha256;
  /* NULL means ATUN_ALPN.  Anything else is for tests and later versions. */
  const char *alpn;
} atun_quic_tls_config;

typedef struct atun_quic_tls atun_quic_tls;

/* Builds a TLS context for |role| from |config|.  A server context always
 * requires a client certificate chaining to |config->ca|; there is no way to
 * build one without a CA.
 * Returns 0 and stores the context in |*ptls|, or ATUN_ERR_INVALID_ARGUMENT
 * (missing CA, server without certificate or key, certificate without key,
 * a buffer wolfSSL refuses, a key not matching the certificate, an ALPN longer
 * than 255 bytes) or ATUN_ERR_NOMEM. */
int atun_quic_tls_new(atun_quic_tls **ptls, atun_quic_role role,
                      const atun_quic_tls_config *config, const atun_mem *mem);

/* Frees |tls|.  Every connection made with it must be deleted first. */
void atun_quic_tls_del(atun_quic_tls *tls);

/* Computes the pin of a DER certificate: SHA-256 over the DER of its
 * SubjectPublicKeyInfo (the HPKP definition), so a renewed certificate that
 * keeps its key keeps its pin.  Returns 0, ATUN_ERR_MALFORMED or
 * ATUN_ERR_INVALID_ARGUMENT. */
int atun_quic_spki_sha256(const uint8_t *der, size_t der_len,
                          uint8_t out[ATUN_QUIC_SHA256_LEN]);

/* --- handshake outcome ---------------------------------------------------- */

/* Why a handshake (or the server's admission check right after it) failed.
 * Usable as a metrics label through atun_quic_hs_failure_name(). */
typedef enum atun_quic_hs_failure {
  ATUN_QUIC_HS_OK = 0,
  ATUN_QUIC_HS_UNKNOWN_CA,      /* "unknown_ca" */
  ATUN_QUIC_HS_BAD_CERTIFICATE, /* "bad_certificate" (incl. no agent id) */
  ATUN_QUIC_HS_EXPIRED,         /* "expired" (or not yet valid) */
  ATUN_QUIC_HS_NO_CERTIFICATE,  /* "no_certificate": client sent none */
  ATUN_QUIC_HS_ALPN_MISMATCH,   /* "alpn_mismatch" */
  ATUN_QUIC_HS_PIN_MISMATCH,    /* "pin_mismatch" */
  ATUN_QUIC_HS_REVOKED,         /* "revoked" */
  ATUN_QUIC_HS_TIMEOUT,         /* "timeout": no handshake in time */
  ATUN_QUIC_HS_TLS              /* "tls": any other TLS failure */
} atun_quic_hs_failure;

const char *atun_quic_hs_failure_name(atun_quic_hs_failure f);

/* Who ended the connection. */
typedef enum atun_quic_close_source {
  ATUN_QUIC_CLOSE_LOCAL = 0, /* this endpoint sent CONNECTION_CLOSE */
  ATUN_QUIC_CLOSE_PEER,      /* the peer did (or a stateless reset came) */
  ATUN_QUIC_CLOSE_IDLE,      /* idle timeout, silent */
  ATUN_QUIC_CLOSE_TIMEOUT,   /* handshake timeout, silent */
  ATUN_QUIC_CLOSE_DROPPED    /* dropped without a word (version negotiation,
                                an unusable first packet, a failure while
                                writing the close) */
} atun_quic_close_source;

typedef struct atun_quic_close_info {
  atun_quic_close_source source;
  int app;             /* nonzero: |error_code| is an application code */
  uint64_t error_code; /* else a QUIC transport code (0x100+ = TLS alert) */
  atun_quic_hs_failure hs_failure;
  char reason[ATUN_QUIC_REASON_MAX + 1]; /* printable ASCII, may be empty */
} atun_quic_close_info;

/* What the certificate of the peer says.  On the server, |agent_id| holds the
 * lowercase UUID of the client's atun://agent/<uuid> URI SAN. */
typedef struct atun_quic_peer {
  uint8_t cert_sha256[ATUN_QUIC_SHA256_LEN]; /* over the certificate DER */
  uint8_t spki_sha256[ATUN_QUIC_SHA256_LEN];
  char cn[ATUN_QUIC_CN_MAX + 1];
  char agent_id[ATUN_QUIC_AGENT_ID_STRLEN + 1]; /* "" when absent */
} atun_quic_peer;

/* --- connection ----------------------------------------------------------- */

typedef struct atun_quic_conn atun_quic_conn;

/* An endpoint: address and port (host order). */
typedef struct atun_quic_endpoint {
  atun_addr addr;
  uint16_t port;
} atun_quic_endpoint;

typedef struct atun_quic_path {
  atun_quic_endpoint local;
  atun_quic_endpoint remote;
} atun_quic_path;

typedef struct atun_quic_cid {
  size_t len;
  uint8_t data[ATUN_QUIC_CID_MAX];
} atun_quic_cid;

/* Callbacks.  Each may be NULL.  Those returning int return 0, or nonzero to
 * fail, which closes the connection with ATUN_QUIC_ERR_INTERNAL.  They run
 * inside atun_quic_conn_read/_handle_expiry/_write: they may call the stream
 * functions and atun_quic_conn_close, but must not delete the connection.
 * Once a close is decided (a failed callback, a refused peer,
 * atun_quic_conn_close) no other callback of the connection runs but
 * connection_closed.  |stream_user_data| is what atun_quic_stream_open or
 * _set_user_data stored. */
typedef struct atun_quic_callbacks {
  /* Server: after the client certificate passed the TLS checks and carries
   * an agent id.  Return 0 to admit, ATUN_ERR_REVOKED to close with
   * ATUN_QUIC_ERR_REVOKED, any other nonzero value to close with
   * ATUN_QUIC_ERR_IDENTITY. */
  int (*peer_verify)(atun_quic_conn *conn, const atun_quic_peer *peer, void *user_data);
  /* The QUIC handshake completed (server: and the peer was admitted). */
  int (*handshake_completed)(atun_quic_conn *conn, void *user_data);
  /* The peer opened stream |stream_id|. */
  int (*stream_open)(atun_quic_conn *conn, int64_t stream_id, void *user_data);
  /* In-order bytes; |fin| marks the end of the peer's direction.  |data| is
   * valid during the call only.  Consume them (atun_quic_stream_consume). */
  int (*stream_data)(atun_quic_conn *conn, int64_t stream_id, const uint8_t *data,
                     size_t len, int fin, void *user_data, void *stream_user_data);
  /* The peer reset its direction of the stream with |app_error|. */
  int (*stream_reset)(atun_quic_conn *conn, int64_t stream_id, uint64_t app_error,
                      void *user_data, void *stream_user_data);
  /* The peer acknowledged |nbytes| more of our data: that much send buffer
   * is free again (for this stream and for the connection). */
  int (*stream_acked)(atun_quic_conn *conn, int64_t stream_id, size_t nbytes,
                      void *user_data, void *stream_user_data);
  /* The stream is gone; |app_error| is set when |has_error| (a reset).  The
   * stream id is invalid after this call. */
  int (*stream_closed)(atun_quic_conn *conn, int64_t stream_id, int has_error,
                       uint64_t app_error, void *user_data, void *stream_user_data);
  /* The connection ended, for whatever reason; called exactly once.  Streams
   * still open get no stream_closed. */
  void (*connection_closed)(atun_quic_conn *conn, const atun_quic_close_info *info,
                            void *user_data);
  /* A connection id that routes to this connection appeared / went away
   * (server demultiplexing). */
  void (*cid_added)(atun_quic_conn *conn, const atun_quic_cid *cid, void *user_data);
  void (*cid_removed)(atun_quic_conn *conn, const atun_quic_cid *cid, void *user_data);
} atun_quic_callbacks;

typedef enum atun_quic_state {
  ATUN_QUIC_STATE_HANDSHAKE = 0,
  ATUN_QUIC_STATE_ESTABLISHED,
  ATUN_QUIC_STATE_CLOSING,  /* we sent CONNECTION_CLOSE; resent on input */
  ATUN_QUIC_STATE_DRAINING, /* the peer closed; we stay silent */
  ATUN_QUIC_STATE_CLOSED    /* nothing left to do: delete it */
} atun_quic_state;

/* Common arguments of both constructors; everything is copied except |tls|,
 * |mem| and the rand's user data, which must outlive the connection. */
typedef struct atun_quic_conn_config {
  atun_quic_tls *tls;
  const atun_quic_settings *settings; /* NULL: defaults */
  const atun_quic_callbacks *callbacks;
  void *user_data;
  const atun_mem *mem;
  atun_rand rand;
} atun_quic_conn_config;

/* Starts a client (agent) connection on |path| at |ts|; the first write
 * produces the Initial.  |config->tls| must be a client context.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT, ATUN_ERR_NOMEM or ATUN_ERR_INTERNAL
 * (RNG or TLS setup failure). */
int atun_quic_conn_client_new(atun_quic_conn **pconn,
                              const atun_quic_conn_config *config,
                              const atun_quic_path *path, atun_tstamp ts);

/* Accepts a server (gateway) connection from the first datagram |data| of a
 * client and processes it.  |config->tls| must be a server context.
 * Returns 0, ATUN_ERR_MALFORMED (not a client Initial ngtcp2 accepts),
 * ATUN_ERR_VERSION (a QUIC version we do not speak), ATUN_ERR_INVALID_ARGUMENT,
 * ATUN_ERR_NOMEM or ATUN_ERR_INTERNAL.  On error no connection exists. */
int atun_quic_conn_server_accept(atun_quic_conn **pconn,
                                 const atun_quic_conn_config *config,
                                 const atun_quic_path *path, const uint8_t *data,
                                 size_t len, atun_tstamp ts);

/* Frees |conn| and everything it holds.  No callback is called. */
void atun_quic_conn_del(atun_quic_conn *conn);

/* Feeds one received datagram.  A datagram that ends the connection (a
 * CONNECTION_CLOSE, a TLS failure, a protocol error) is not an error of this
 * call: the end is reported through connection_closed and the state.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT or ATUN_ERR_CLOSED (state CLOSED). */
int atun_quic_conn_read(atun_quic_conn *conn, const atun_quic_path *path,
                        const uint8_t *data, size_t len, atun_tstamp ts);

/* Writes at most one datagram into |buf| (|cap| >= ATUN_QUIC_DATAGRAM_MIN)
 * and, if |path| is not NULL, the path to send it on.  Call it until it
 * returns 0.  Returns the datagram length, 0 when there is nothing to send
 * now (congestion, pacing, nothing pending), or ATUN_ERR_INVALID_ARGUMENT. */
ssize_t atun_quic_conn_write(atun_quic_conn *conn, atun_quic_path *path, uint8_t *buf,
                             size_t cap, atun_tstamp ts);

/* When atun_quic_conn_handle_expiry should be called next;
 * ATUN_TSTAMP_MAX when never. */
atun_tstamp atun_quic_conn_get_expiry(const atun_quic_conn *conn);

/* Handles the timers due at |ts| (loss detection, ACK delay, idle and
 * handshake timeouts, the end of the closing/draining period).
 * Returns 0 or ATUN_ERR_INVALID_ARGUMENT. */
int atun_quic_conn_handle_expiry(atun_quic_conn *conn, atun_tstamp ts);

/* Closes the connection with application code |app_error| and an optional
 * |reason| (cut at ATUN_QUIC_REASON_MAX).  The CONNECTION_CLOSE goes out on
 * the next write; connection_closed fires then, not here.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT or ATUN_ERR_STATE (already closing). */
int atun_quic_conn_close(atun_quic_conn *conn, uint64_t app_error, const char *reason);

atun_quic_state atun_quic_conn_get_state(const atun_quic_conn *conn);
/* Nonzero once the state is CLOSED. */
int atun_quic_conn_is_done(const atun_quic_conn *conn);
atun_quic_role atun_quic_conn_get_role(const atun_quic_conn *conn);
void *atun_quic_conn_get_user_data(const atun_quic_conn *conn);

/* The peer's certificate facts, or NULL before they are known (server: from
 * the handshake on; client: once the server certificate was verified). */
const atun_quic_peer *atun_quic_conn_get_peer(const atun_quic_conn *conn);

/* Copies into |out| (room for |max|) the connection ids datagrams for this
 * connection may carry as destination.  Returns how many were stored. */
size_t atun_quic_conn_get_cids(const atun_quic_conn *conn, atun_quic_cid *out,
                               size_t max);

/* Smoothed RTT in ns (ngtcp2's estimate; the initial RTT before samples). */
uint64_t atun_quic_conn_get_rtt(const atun_quic_conn *conn);

/* Reads the destination connection id of a datagram for demultiplexing
 * (short headers are assumed to carry ATUN_QUIC_SCID_LEN bytes).
 * Returns 0, ATUN_ERR_MALFORMED, ATUN_ERR_VERSION (long header of a version
 * we do not speak) or ATUN_ERR_INVALID_ARGUMENT. */
int atun_quic_packet_dcid(const uint8_t *data, size_t len, atun_quic_cid *dcid);

/* --- streams -------------------------------------------------------------- */

/* Opens a bidirectional stream and stores its id in |*stream_id|.  Needs a
 * completed handshake.  Returns 0, ATUN_ERR_STATE (handshake not completed,
 * or closing), ATUN_ERR_WOULDBLOCK (the peer's stream limit: retry after a
 * stream closed), ATUN_ERR_FULL (max_streams_bidi of ours are open) or
 * ATUN_ERR_NOMEM. */
int atun_quic_stream_open(atun_quic_conn *conn, int64_t *stream_id,
                          void *stream_user_data);

/* Copies up to |len| bytes into the stream's send buffer and, if all of them
 * fit and |fin| is set, ends our direction after them (a zero |len| with
 * |fin| only ends it).  Returns the number of bytes taken (maybe fewer than
 * |len|: the rest waits for stream_acked), or ATUN_ERR_WOULDBLOCK (no room
 * at all), ATUN_ERR_NOT_FOUND, ATUN_ERR_STATE (direction already finished or
 * reset, or the connection is closing), ATUN_ERR_INVALID_ARGUMENT or
 * ATUN_ERR_NOMEM. */
ssize_t atun_quic_stream_write(atun_quic_conn *conn, int64_t stream_id,
                               const uint8_t *data, size_t len, int fin);

/* Bytes a bulk writer may hand atun_quic_stream_write now (stream and
 * connection bounds), or ATUN_ERR_NOT_FOUND / ATUN_ERR_STATE.  It keeps
 * back an eighth of conn_send_buffer_max (at most ATUN_QUIC_SEND_RESERVE_MAX)
 * that atun_quic_stream_write itself may still use: writers that size
 * their writes by this call (pipes) can fill the connection's buffer, yet a
 * short message written without asking (a session header, a control
 * frame) still finds room. */
ssize_t atun_quic_stream_writable(const atun_quic_conn *conn, int64_t stream_id);

/* The application is done with |n| received bytes of the stream (its sink
 * took them): the peer gets that much more credit.  Consume every byte
 * delivered, including those of a stream that since closed or was reset.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (more than was delivered and not yet
 * consumed) or ATUN_ERR_NOMEM. */
int atun_quic_stream_consume(atun_quic_conn *conn, int64_t stream_id, size_t n);

/* Resets the stream both ways with |app_error| (RESET_STREAM and
 * STOP_SENDING): a TCP reset.  Unsent data is dropped.
 * Returns 0, ATUN_ERR_NOT_FOUND, ATUN_ERR_STATE or ATUN_ERR_NOMEM. */
int atun_quic_stream_shutdown(atun_quic_conn *conn, int64_t stream_id,
                              uint64_t app_error);

/* Returns 0 or ATUN_ERR_NOT_FOUND. */
int atun_quic_stream_set_user_data(atun_quic_conn *conn, int64_t stream_id,
                                   void *stream_user_data);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_QUIC_H */
