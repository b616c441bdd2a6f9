/*
 * The atun wire protocol, version 2 (SPEC section 3; the byte-level reference
 * is docs/protocol.md).
 *
 * A frame is  type (1 byte) | length (QUIC varint) | payload,  and a payload
 * is a sequence of fields  field_id (varint) | field_len (varint) | value.
 * Decoders skip field ids they do not know, so a later version can add
 * optional fields without breaking this one.
 *
 * Messages are plain structs gathered in the tagged union |atun_msg|.
 * Encoding writes a whole frame into a caller buffer; decoding allocates
 * what it must (strings of unbounded-looking size, lists, DER blobs) through
 * an |atun_mem| and is undone with atun_msg_free().  Short strings (names,
 * software versions) live inline in the structs so that the common frames
 * decode without any allocation.
 *
 * Every limit below is checked before anything is allocated.
 */
#ifndef ATUN_CODEC_H
#define ATUN_CODEC_H

#include "addr.h"
#include "atun.h"
#include "varint.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- versions and ALPN ---------------------------------------------------- */

#define ATUN_PROTO_VERSION_MIN 2
#define ATUN_PROTO_VERSION_MAX 2
/* ALPN protocol id, and the same in TLS wire form (length-prefixed list). */
#define ATUN_ALPN "atun/2"
#define ATUN_ALPN_LEN 6
#define ATUN_ALPN_WIRE "\x06" "atun/2"
#define ATUN_ALPN_WIRE_LEN 7

/* Picks the highest version in both [local_min, local_max] and
 * [peer_min, peer_max] and stores it in |*chosen|.
 * Returns 0, ATUN_ERR_VERSION (no overlap) or ATUN_ERR_INVALID_ARGUMENT (a
 * min above its max). */
int atun_version_negotiate(uint32_t local_min, uint32_t local_max,
                           uint32_t peer_min, uint32_t peer_max,
                           uint32_t *chosen);

/* --- limits ----------------------------------------------------------------- */

/* Largest payload of a control-stream frame. */
#define ATUN_CONTROL_PAYLOAD_MAX ((size_t)1 << 20)
/* Largest payload of a session-stream frame (ConnectRequest/Response). */
#define ATUN_SESSION_PAYLOAD_MAX ((size_t)4096)
/* Frame header: 1 type byte and a length varint of at most 8 bytes. */
#define ATUN_FRAME_HEADER_MAX 9

#define ATUN_SUBNETS_MAX 4096
#define ATUN_DOMAINS_MAX 1024
/* A DNS name in text form without the trailing dot, and one label. */
#define ATUN_NAME_MAX 253
#define ATUN_LABEL_MAX 63
/* Software version strings ("atun-agent 0.1.0 (linux x86_64)"). */
#define ATUN_SOFTWARE_VERSION_MAX 128
/* Free-text messages in Goodbye, Error, CertRenewResponse, ConnectResponse. */
#define ATUN_MESSAGE_MAX 1024
/* DER blobs in certificate renewal. */
#define ATUN_CSR_MAX 16384
#define ATUN_CERT_MAX 16384

#define ATUN_SESSION_ID_LEN 16
#define ATUN_AGENT_ID_LEN 16

/* --- frame types -------------------------------------------------------------- */

typedef enum atun_frame_type {
  ATUN_FRAME_HELLO = 0x01,
  ATUN_FRAME_HELLO_ACK = 0x02,
  ATUN_FRAME_ROUTE_ADVERTISE = 0x03,
  ATUN_FRAME_HEARTBEAT = 0x04,
  ATUN_FRAME_HEARTBEAT_ACK = 0x05,
  ATUN_FRAME_GOODBYE = 0x06,
  ATUN_FRAME_ERROR = 0x07,
  ATUN_FRAME_CERT_RENEW_REQUEST = 0x08,
  ATUN_FRAME_CERT_RENEW_RESPONSE = 0x09,
  ATUN_FRAME_CONNECT_REQUEST = 0x10,
  ATUN_FRAME_CONNECT_RESPONSE = 0x11
} atun_frame_type;

/* Nonzero if |type| is a frame type of this version. */
int atun_frame_type_known(uint8_t type);

/* Nonzero for the frame types carried on session streams (ConnectRequest,
 * ConnectResponse); zero for control-stream types and unknown types. */
int atun_frame_type_is_session(uint8_t type);

/* Returns the payload limit for |type| (ATUN_SESSION_PAYLOAD_MAX for session
 * types, ATUN_CONTROL_PAYLOAD_MAX otherwise), or 0 for an unknown type. */
size_t atun_frame_payload_max(uint8_t type);

/* Returns a static name such as "hello" or "connect_request", "unknown" for
 * an unknown type. */
const char *atun_frame_type_name(uint8_t type);

/* --- QUIC application error codes ------------------------------------------------ */

/* Codes used to close the connection (control stream problems) or to reset
 * a stream (session stream problems), and carried in Error frames.  Values
 * are on the wire: never renumber. */
typedef enum atun_app_error {
  ATUN_APP_NO_ERROR = 0x00,          /* graceful close */
  ATUN_APP_INTERNAL = 0x01,          /* local failure (e.g. out of memory) */
  ATUN_APP_PROTOCOL_VIOLATION = 0x02,/* valid frame at the wrong time/place */
  ATUN_APP_MALFORMED_FRAME = 0x03,   /* frame that does not decode */
  ATUN_APP_FRAME_TOO_LARGE = 0x04,   /* length above the frame limit */
  ATUN_APP_UNKNOWN_FRAME = 0x05,     /* frame type this version lacks */
  ATUN_APP_LIMIT_EXCEEDED = 0x06,    /* list or string above its bound */
  ATUN_APP_VERSION_MISMATCH = 0x07,  /* no common protocol version */
  ATUN_APP_REVOKED = 0x08,           /* agent certificate revoked */
  ATUN_APP_UNAUTHORIZED = 0x09,      /* peer identity not acceptable */
  ATUN_APP_HANDSHAKE_TIMEOUT = 0x0a, /* no Hello/HelloAck in time */
  ATUN_APP_HEARTBEAT_TIMEOUT = 0x0b, /* peer silent past the offline timeout */
  ATUN_APP_SHUTDOWN = 0x0c,          /* closing after a drain */
  ATUN_APP_REPLACED = 0x0d,          /* a newer connection of the agent won */
  ATUN_APP_CONNECT_FAILED = 0x0e,    /* session: target connect failed */
  ATUN_APP_TARGET_RESET = 0x0f,      /* session: the TCP peer reset */
  ATUN_APP_OVERLOADED = 0x10         /* a local bound (streams, queue) hit */
} atun_app_error;

/* Returns a static snake_case name ("protocol_violation"), "unknown" for a
 * code this version does not define.  Usable as a metrics label. */
const char *atun_app_error_name(uint64_t code);

/* Maps a codec error (a decode failure) to the application error code the
 * connection or stream should be closed with.  ATUN_ERR_FRAME_TOO_LARGE ->
 * FRAME_TOO_LARGE, ATUN_ERR_UNKNOWN_TYPE -> UNKNOWN_FRAME, ATUN_ERR_LIMIT ->
 * LIMIT_EXCEEDED, ATUN_ERR_VERSION -> VERSION_MISMATCH, other decode errors
 * -> MALFORMED_FRAME, ATUN_ERR_PROTO/STATE -> PROTOCOL_VIOLATION, 0 ->
 * NO_ERROR, anything else (NOMEM, ...) -> INTERNAL. */
uint64_t atun_app_error_from_codec(int err);

/* --- message structs ----------------------------------------------------------- */

/* 0x01, agent -> gateway, first frame on the control stream. */
typedef struct atun_hello {
  uint32_t min_version;  /* required, <= max_version */
  uint32_t max_version;  /* required */
  char software_version[ATUN_SOFTWARE_VERSION_MAX + 1]; /* "" = absent */
} atun_hello;

/* 0x02, gateway -> agent. */
typedef struct atun_hello_ack {
  uint32_t chosen_version;        /* required */
  uint32_t heartbeat_interval_ms; /* required, >= 1 */
  uint32_t offline_timeout_ms;    /* 0 = absent (use the default) */
  uint8_t has_agent_id;           /* agent id the gateway saw in the cert */
  uint8_t agent_id[ATUN_AGENT_ID_LEN];
  char software_version[ATUN_SOFTWARE_VERSION_MAX + 1]; /* "" = absent */
} atun_hello_ack;

typedef struct atun_domain {
  /* Lowercase, no trailing dot, validated (see atun_name_normalize()). */
  char name[ATUN_NAME_MAX + 1];
  uint8_t auto_detected; /* 0 or 1 */
} atun_domain;

/* 0x03, agent -> gateway. */
typedef struct atun_route_advertise {
  uint64_t epoch;        /* required */
  atun_prefix *subnets;  /* <= ATUN_SUBNETS_MAX, each atun_prefix_valid() */
  size_t subnet_count;
  atun_domain *domains;  /* <= ATUN_DOMAINS_MAX */
  size_t domain_count;
} atun_route_advertise;

/* 0x04, either direction. */
typedef struct atun_heartbeat {
  uint64_t seq;                 /* required */
  atun_tstamp sent_at;          /* required, sender's clock (ns) */
  uint32_t active_stream_count; /* required */
} atun_heartbeat;

/* 0x05, answers a Heartbeat. */
typedef struct atun_heartbeat_ack {
  uint64_t seq;             /* required, the Heartbeat's seq */
  atun_tstamp echo_sent_at; /* required, the Heartbeat's sent_at */
} atun_heartbeat_ack;

typedef enum atun_goodbye_reason {
  ATUN_GOODBYE_SHUTDOWN = 0, /* process stopping, draining streams */
  ATUN_GOODBYE_RESTART = 1,  /* coming back soon */
  ATUN_GOODBYE_REPLACED = 2, /* a newer connection of this agent exists */
  ATUN_GOODBYE_REVOKED = 3,  /* the agent was deleted/revoked */
  ATUN_GOODBYE_ADMIN = 4     /* operator request */
} atun_goodbye_reason;

/* 0x06, either direction.  |reason| values beyond the enum are accepted
 * (informational, a later version may add some). */
typedef struct atun_goodbye {
  uint64_t reason; /* required, atun_goodbye_reason */
  char *message;   /* NULL = absent; decoded ones are allocated */
} atun_goodbye;

/* 0x07, either direction.  Answering a Hello with no common version, the
 * gateway sets code ATUN_APP_VERSION_MISMATCH and names its range. */
typedef struct atun_error_frame {
  uint64_t code;                  /* required, atun_app_error */
  char *message;                  /* NULL = absent */
  uint32_t supported_min_version; /* both 0 = absent; else both set, */
  uint32_t supported_max_version; /* min <= max */
} atun_error_frame;

/* 0x08, agent -> gateway. */
typedef struct atun_cert_renew_request {
  uint8_t *csr;    /* required, DER, 1..ATUN_CSR_MAX bytes */
  size_t csr_len;
  uint8_t rotate_key; /* 0 or 1: the CSR carries a new key */
} atun_cert_renew_request;

typedef enum atun_cert_status {
  ATUN_CERT_STATUS_OK = 0,
  ATUN_CERT_STATUS_BAD_CSR = 1,     /* CSR unparsable or identity mismatch */
  ATUN_CERT_STATUS_DENIED = 2,      /* policy refuses (e.g. revoked) */
  ATUN_CERT_STATUS_RETRY_LATER = 3, /* rate limited or CA busy */
  ATUN_CERT_STATUS_INTERNAL = 4
} atun_cert_status;
#define ATUN_CERT_STATUS_MAX ATUN_CERT_STATUS_INTERNAL

/* Returns "ok", "bad_csr", ...; "unknown" outside the enum. */
const char *atun_cert_status_name(uint64_t status);

/* 0x09, gateway -> agent. */
typedef struct atun_cert_renew_response {
  uint64_t status; /* required, atun_cert_status (others are malformed) */
  uint8_t *cert;   /* DER; required (1..ATUN_CERT_MAX bytes) when status is
                      OK, must be absent otherwise */
  size_t cert_len;
  char *message;   /* NULL = absent */
} atun_cert_renew_response;

typedef enum atun_target_kind {
  ATUN_TARGET_ADDR = 1, /* |addr|, IPv4 or IPv6 */
  ATUN_TARGET_HOST = 2  /* |host|, a DNS name the agent resolves */
} atun_target_kind;

typedef struct atun_target {
  uint8_t kind;  /* atun_target_kind */
  atun_addr addr;
  /* Lowercase, no trailing dot, validated like a domain; in addition the
   * last label must not start with a digit, so no IPv4 literal (in any of
   * the forms inet_aton accepts) can pass as a name. */
  char host[ATUN_NAME_MAX + 1];
} atun_target;

/* 0x10, gateway -> agent, first frame of a session stream. */
typedef struct atun_connect_request {
  uint8_t session_id[ATUN_SESSION_ID_LEN]; /* required */
  atun_target target;                      /* required */
  uint16_t port;                           /* required, 1..65535 */
} atun_connect_request;

typedef enum atun_connect_status {
  ATUN_CONNECT_OK = 0,
  ATUN_CONNECT_DENIED = 1,      /* outside advertised routes or policy */
  ATUN_CONNECT_DNS_FAILURE = 2,
  ATUN_CONNECT_REFUSED = 3,
  ATUN_CONNECT_UNREACHABLE = 4,
  ATUN_CONNECT_TIMEOUT = 5,
  ATUN_CONNECT_INTERNAL = 6
} atun_connect_status;
#define ATUN_CONNECT_STATUS_MAX ATUN_CONNECT_INTERNAL

/* Returns "ok", "denied", "dns_failure", ...; "unknown" outside the enum. */
const char *atun_connect_status_name(uint64_t status);

/* 0x11, agent -> gateway, first frame the agent sends on a session stream. */
typedef struct atun_connect_response {
  uint64_t status; /* required, atun_connect_status (others are malformed) */
  char *message;   /* NULL = absent */
} atun_connect_response;

/* Any message, tagged by its frame type. */
typedef struct atun_msg {
  uint8_t type; /* atun_frame_type */
  union {
    atun_hello hello;
    atun_hello_ack hello_ack;
    atun_route_advertise route_advertise;
    atun_heartbeat heartbeat;
    atun_heartbeat_ack heartbeat_ack;
    atun_goodbye goodbye;
    atun_error_frame error;
    atun_cert_renew_request cert_renew_request;
    atun_cert_renew_response cert_renew_response;
    atun_connect_request connect_request;
    atun_connect_response connect_response;
  } u;
} atun_msg;

/* --- encoding ------------------------------------------------------------------- */

/* Writes |msg| as one whole frame (type, length, payload) into |buf|.  The
 * encoder validates what the decoder would: names are written lowercase
 * without a trailing dot, an empty message string is left out.
 * Returns the frame length, or
 *   ATUN_ERR_NOBUF            |buflen| is too small (nothing useful written),
 *   ATUN_ERR_UNKNOWN_TYPE     |msg->type| is not a frame type,
 *   ATUN_ERR_LIMIT            a list or string above its bound,
 *   ATUN_ERR_BAD_PREFIX       a subnet fails atun_prefix_valid(),
 *   ATUN_ERR_BAD_NAME         a domain or host name is not acceptable,
 *   ATUN_ERR_MALFORMED        another field value the decoder would refuse
 *                             (bad UTF-8, min > max, unknown status, ...),
 *   ATUN_ERR_MISSING_FIELD    a required value is absent (e.g. empty CSR),
 *   ATUN_ERR_FRAME_TOO_LARGE  the payload would exceed its frame limit. */
ssize_t atun_frame_encode(uint8_t *buf, size_t buflen, const atun_msg *msg);

/* Returns the exact number of bytes atun_frame_encode() writes for |msg|, or
 * the error it would return (never ATUN_ERR_NOBUF). */
ssize_t atun_frame_encoded_size(const atun_msg *msg);

/* --- decoding ------------------------------------------------------------------- */

/* Decodes the |payloadlen| bytes at |payload| as the payload of a frame of
 * type |type| into |*msg| (overwritten; |msg->type| set).  Allocations go
 * through |mem|; on success release them with atun_msg_free().  On failure
 * nothing stays allocated and |*msg| holds nothing to free.
 * Returns 0 or
 *   ATUN_ERR_UNKNOWN_TYPE, ATUN_ERR_FRAME_TOO_LARGE (payload above the limit
 *   of |type|), ATUN_ERR_TRUNCATED (a field runs past the end),
 *   ATUN_ERR_MALFORMED, ATUN_ERR_TRAILING (an integer not filling its field),
 *   ATUN_ERR_MISSING_FIELD, ATUN_ERR_LIMIT, ATUN_ERR_BAD_PREFIX,
 *   ATUN_ERR_BAD_NAME, ATUN_ERR_NOMEM. */
int atun_msg_decode(atun_msg *msg, uint8_t type, const uint8_t *payload,
                    size_t payloadlen, const atun_mem *mem);

/* Decodes exactly one whole frame occupying all |buflen| bytes at |buf|.
 * Returns 0, ATUN_ERR_TRUNCATED (the frame is incomplete), ATUN_ERR_TRAILING
 * (bytes after it), or an error of atun_msg_decode(). */
int atun_frame_decode(atun_msg *msg, const uint8_t *buf, size_t buflen,
                      const atun_mem *mem);

/* Releases what decoding allocated in |msg| (a no-op for messages without
 * allocations) and leaves |msg| empty.  Only for decoded messages. */
void atun_msg_free(atun_msg *msg, const atun_mem *mem);

/* Checks that |in| (|inlen| bytes, no NUL needed) is an acceptable DNS name
 * and writes it to |out| (ATUN_NAME_MAX + 1 bytes) lowercase, without a
 * trailing dot, NUL-terminated.  Rules: total <= 253 after dropping one
 * trailing dot, labels 1..63 bytes of ASCII letters, digits and hyphens, no
 * label starting or ending with a hyphen.
 * Returns 0 or ATUN_ERR_BAD_NAME. */
int atun_name_normalize(char *out, const char *in, size_t inlen);

/* Nonzero if |s| (|len| bytes) is valid UTF-8 (no overlong forms, no
 * surrogates, <= U+10FFFF) with no control character (C0, DEL, C1). */
int atun_text_valid(const char *s, size_t len);

/* --- incremental frame reader ------------------------------------------------------ */

/*
 * Assembles frames from a byte stream delivered in arbitrary pieces.  It
 * consumes at most one frame per call and stops right after it, so the raw
 * bytes following a ConnectRequest on a session stream stay with the
 * caller.  The payload buffer grows with the bytes actually received (never
 * beyond the limit), so a peer announcing a large frame does not make the
 * reader reserve it up front.
 */
typedef struct atun_frame_reader {
  const atun_mem *mem;
  size_t payload_max; /* set at init; per-type limits apply as well */
  int state;          /* internal */
  int error;          /* sticky error, 0 while usable */
  uint8_t type;
  uint8_t len_bytes[ATUN_VARINT_LEN_MAX]; /* length varint being read */
  uint8_t len_have;
  uint8_t len_need;
  size_t payload_len;
  size_t payload_have;
  uint8_t *buf;       /* payload storage, |buf_cap| bytes */
  size_t buf_cap;
} atun_frame_reader;

/* Prepares |r| for frames whose payload is at most |payload_max| bytes
 * (ATUN_CONTROL_PAYLOAD_MAX on the control stream, ATUN_SESSION_PAYLOAD_MAX
 * on session streams).  Allocates nothing.  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT (|payload_max| above ATUN_CONTROL_PAYLOAD_MAX). */
int atun_frame_reader_init(atun_frame_reader *r, size_t payload_max,
                           const atun_mem *mem);

/* Releases the reader's buffer. */
void atun_frame_reader_free(atun_frame_reader *r);

/* Consumes bytes of |data| (|datalen| may be 0) until a frame is complete or
 * the input is used up, and returns how many it consumed.  A frame held from
 * the previous call is dropped first.  Afterwards atun_frame_reader_ready()
 * says whether a whole frame is held.  Errors are sticky (every later call
 * returns the same one):
 *   ATUN_ERR_UNKNOWN_TYPE     the type byte names no frame type,
 *   ATUN_ERR_FRAME_TOO_LARGE  the length exceeds |payload_max| or the type's
 *                             limit (detected before any payload byte is
 *                             buffered),
 *   ATUN_ERR_NOMEM. */
ssize_t atun_frame_reader_feed(atun_frame_reader *r, const uint8_t *data,
                               size_t datalen);

/* Nonzero if a complete frame is held. */
int atun_frame_reader_ready(const atun_frame_reader *r);

/* Gives the held frame's type and payload; the payload stays valid until
 * the next feed or free.  Only when atun_frame_reader_ready(). */
void atun_frame_reader_frame(const atun_frame_reader *r, uint8_t *type,
                             const uint8_t **payload, size_t *payloadlen);

/* Decodes the held frame into |msg| (see atun_msg_decode()).  Returns
 * ATUN_ERR_STATE if no frame is held, else as atun_msg_decode(). */
int atun_frame_reader_decode(const atun_frame_reader *r, atun_msg *msg,
                             const atun_mem *mem);

/* For the end of the stream (FIN): returns 0 if the reader stands between
 * frames, ATUN_ERR_TRUNCATED if a frame was cut off, or the sticky error. */
int atun_frame_reader_eof(const atun_frame_reader *r);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_CODEC_H */
