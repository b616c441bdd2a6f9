/*
 * The QUIC connection object: ngtcp2 0.12.1 + wolfSSL 5.5.4, sans-I/O.
 *
 * Layout of this file: TLS context, certificate facts (pin, identity),
 * stream send buffers and the stream table, ngtcp2 callbacks, connection
 * life cycle (close, read, write, expiry), stream API.
 */
#include <wolfssl/options.h> /* first: it configures every other wolfSSL header */
#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_wolfssl.h>

#include <string.h>

#include "codec.h"
#include "quic.h"

/* One application error space on the wire: the wrapper's codes are the
 * codec's. */
_Static_assert(ATUN_QUIC_ERR_INTERNAL == ATUN_APP_INTERNAL, "error space");
_Static_assert(ATUN_QUIC_ERR_ALPN == ATUN_APP_VERSION_MISMATCH, "error space");
_Static_assert(ATUN_QUIC_ERR_REVOKED == ATUN_APP_REVOKED, "error space");
_Static_assert(ATUN_QUIC_ERR_IDENTITY == ATUN_APP_UNAUTHORIZED, "error space");
/* The allocator tables have the same shape, so one converts to the other. */
_Static_assert(sizeof(atun_mem) == sizeof(ngtcp2_mem), "allocator shape");

#define STREAMS_MAX_LIMIT ((uint64_t)65536)
/* Stream data vectors handed to ngtcp2 per call: a packet carries at most
 * ATUN_QUIC_DATAGRAM_MAX bytes, so two chunks always cover it. */
#define WRITE_NVEC 2
/* Datagrams written back to back before ngtcp2's pacer is told. */
#define BURST_MAX 64
/* Stream table buckets of a new connection (it doubles as streams come). */
#define STREAM_BUCKETS_MIN 16
/* ngtcp2 keeps at most this many of our connection ids alive. */
#define SCIDS_MAX 16
#define AGENT_URI_PREFIX "atun://agent/"
#define TLS_ALERT_INTERNAL_ERROR 80

/* --- TLS context ---------------------------------------------------------- */

struct atun_quic_tls {
  const atun_mem *mem;
  atun_quic_role role;
  WOLFSSL_CTX *ctx;
  int has_pin;
  uint8_t pin[ATUN_QUIC_SHA256_LEN];
  char alpn[256];
  size_t alpn_len;
};

static int buffer_format(const uint8_t *buf, size_t len) {
  static const char pem[] = "-----BEGIN";
  if (len >= sizeof(pem) - 1 && memcmp(buf, pem, sizeof(pem) - 1) == 0) {
    return WOLFSSL_FILETYPE_PEM;
  }
  return WOLFSSL_FILETYPE_ASN1;
}

static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store);
static const WOLFSSL_QUIC_METHOD quic_method;
static int spki_of_key(const uint8_t *key, size_t len,
                       uint8_t out[ATUN_QUIC_SHA256_LEN]);
static int spki_of_cert(const uint8_t *cert, size_t len,
                        uint8_t out[ATUN_QUIC_SHA256_LEN]);

static int tls_config_valid(atun_quic_role role, const atun_quic_tls_config *cfg) {
  if (cfg == NULL || cfg->ca == NULL || cfg->ca_len == 0) {
    return 0;
  }
  if ((cfg->cert == NULL) != (cfg->key == NULL)) {
    return 0;
  }
  if (cfg->cert != NULL && (cfg->cert_len == 0 || cfg->key_len == 0)) {
    return 0;
  }
  if (role == ATUN_QUIC_SERVER && (cfg->cert == NULL || cfg->server_spki_sha256)) {
    return 0;
  }
  if (role != ATUN_QUIC_SERVER && role != ATUN_QUIC_CLIENT) {
    return 0;
  }
  if (cfg->alpn != NULL) {
    size_t n = strlen(cfg->alpn);
    if (n == 0 || n > 255 || strchr(cfg->alpn, ',') != NULL) {
      return 0; /* wolfSSL reads a comma as a list separator */
    }
  }
  return 1;
}

/* Loads the CA and the own certificate and key into |ctx|.  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT. */
static int tls_load(WOLFSSL_CTX *ctx, const atun_quic_tls_config *cfg) {
  if (wolfSSL_CTX_load_verify_buffer(ctx, cfg->ca, (long)cfg->ca_len,
                                     buffer_format(cfg->ca, cfg->ca_len)) !=
      WOLFSSL_SUCCESS) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (cfg->cert == NULL) {
    return 0;
  }
  if (wolfSSL_CTX_use_certificate_chain_buffer_format(
          ctx, cfg->cert, (long)cfg->cert_len,
          buffer_format(cfg->cert, cfg->cert_len)) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_use_PrivateKey_buffer(ctx, cfg->key, (long)cfg->key_len,
                                        buffer_format(cfg->key, cfg->key_len)) !=
          WOLFSSL_SUCCESS ||
      wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  /* wolfSSL 5.5.4 passes an ECC key that belongs to another certificate;
   * compare the public halves ourselves (other key types: wolfSSL's word). */
  uint8_t from_key[ATUN_QUIC_SHA256_LEN], from_cert[ATUN_QUIC_SHA256_LEN];
  if (spki_of_key(cfg->key, cfg->key_len, from_key) == 0 &&
      (spki_of_cert(cfg->cert, cfg->cert_len, from_cert) != 0 ||
       memcmp(from_key, from_cert, ATUN_QUIC_SHA256_LEN) != 0)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  return 0;
}

int atun_quic_tls_new(atun_quic_tls **ptls, atun_quic_role role,
                      const atun_quic_tls_config *config, const atun_mem *mem) {
  if (ptls == NULL || mem == NULL || !tls_config_valid(role, config)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  atun_quic_tls *t = atun_mem_calloc(mem, 1, sizeof(*t));
  if (t == NULL) {
    return ATUN_ERR_NOMEM;
  }
  t->mem = mem;
  t->role = role;
  const char *alpn = config->alpn ? config->alpn : ATUN_ALPN;
  t->alpn_len = strlen(alpn);
  memcpy(t->alpn, alpn, t->alpn_len + 1);
  if (config->server_spki_sha256 != NULL) {
    t->has_pin = 1;
    memcpy(t->pin, config->server_spki_sha256, ATUN_QUIC_SHA256_LEN);
  }
  int rv = ATUN_ERR_NOMEM;
  t->ctx = wolfSSL_CTX_new(role == ATUN_QUIC_SERVER ? wolfTLSv1_3_server_method()
                                                    : wolfTLSv1_3_client_method());
  if (t->ctx == NULL) {
    goto fail_ctx;
  }
  rv = ATUN_ERR_INTERNAL;
  if ((role == ATUN_QUIC_SERVER
           ? ngtcp2_crypto_wolfssl_configure_server_context(t->ctx)
           : ngtcp2_crypto_wolfssl_configure_client_context(t->ctx)) != 0 ||
      wolfSSL_CTX_set_quic_method(t->ctx, &quic_method) != WOLFSSL_SUCCESS) {
    goto fail_load;
  }
  rv = tls_load(t->ctx, config);
  if (rv != 0) {
    goto fail_load;
  }
  /* The server has no mode without client certificates: mutual TLS is the
   * only way in. */
  wolfSSL_CTX_set_verify(t->ctx,
                         role == ATUN_QUIC_SERVER
                             ? WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT
                             : WOLFSSL_VERIFY_PEER,
                         verify_cb);
  *ptls = t;
  return 0;

fail_load:
  wolfSSL_CTX_free(t->ctx);
fail_ctx:
  atun_mem_free(mem, t);
  return rv;
}

void atun_quic_tls_del(atun_quic_tls *tls) {
  if (tls == NULL) {
    return;
  }
  wolfSSL_CTX_free(tls->ctx);
  atun_mem_free(tls->mem, tls);
}

/* --- certificate facts ---------------------------------------------------- */

/* Reads one DER TLV at |*p|: tag, and the value span.  Only the short tags
 * an X.509 certificate uses at the levels we walk.  Returns 0 or -1. */
static int der_next(const uint8_t **p, const uint8_t *end, uint8_t *tag,
                    const uint8_t **val, size_t *vlen) {
  const uint8_t *q = *p;
  if (end - q < 2) {
    return -1;
  }
  *tag = *q++;
  size_t len = *q++;
  if (len & 0x80) {
    size_t nbytes = len & 0x7f;
    if (nbytes == 0 || nbytes > 4 || (size_t)(end - q) < nbytes) {
      return -1;
    }
    len = 0;
    while (nbytes--) {
      len = (len << 8) | *q++;
    }
  }
  if ((size_t)(end - q) < len) {
    return -1;
  }
  *val = q;
  *vlen = len;
  *p = q + len;
  return 0;
}

/* Enters the SEQUENCE at |*p|; on success |*p|/|*end| span its contents. */
static int der_enter_seq(const uint8_t **p, const uint8_t **end) {
  uint8_t tag;
  const uint8_t *val;
  size_t vlen;
  if (der_next(p, *end, &tag, &val, &vlen) != 0 || tag != 0x30) {
    return -1;
  }
  *p = val;
  *end = val + vlen;
  return 0;
}

int atun_quic_spki_sha256(const uint8_t *der, size_t der_len,
                          uint8_t out[ATUN_QUIC_SHA256_LEN]) {
  if (der == NULL || out == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  const uint8_t *p = der, *end = der + der_len;
  /* Certificate -> TBSCertificate -> [version] serial sigalg issuer
   * validity subject SubjectPublicKeyInfo. */
  if (der_enter_seq(&p, &end) != 0 || der_enter_seq(&p, &end) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  uint8_t tag;
  const uint8_t *val, *start = p;
  size_t vlen;
  if (der_next(&p, end, &tag, &val, &vlen) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  int skip = tag == 0xa0 ? 5 : 4; /* fields left before the SPKI */
  while (skip--) {
    if (der_next(&p, end, &tag, &val, &vlen) != 0) {
      return ATUN_ERR_MALFORMED;
    }
  }
  start = p;
  if (der_next(&p, end, &tag, &val, &vlen) != 0 || tag != 0x30) {
    return ATUN_ERR_MALFORMED;
  }
  if (wc_Sha256Hash(start, (word32)(p - start), out) != 0) {
    return ATUN_ERR_INTERNAL;
  }
  return 0;
}

/* The pin of an ECC private key's public half, or -1 if |key| is no ECC
 * key (PEM or DER). */
static int spki_of_key(const uint8_t *key, size_t len,
                       uint8_t out[ATUN_QUIC_SHA256_LEN]) {
  uint8_t der[1024], pub[256];
  int n = (int)len;
  if (buffer_format(key, len) == WOLFSSL_FILETYPE_PEM) {
    n = wc_KeyPemToDer(key, (int)len, der, sizeof(der), NULL);
    key = der;
  }
  ecc_key k;
  word32 idx = 0;
  if (n <= 0 || wc_ecc_init(&k) != 0) {
    return -1;
  }
  int rv = -1;
  if (wc_EccPrivateKeyDecode(key, &idx, &k, (word32)n) == 0 &&
      (k.type != ECC_PRIVATEKEY_ONLY || wc_ecc_make_pub(&k, NULL) == 0)) {
    n = wc_EccPublicKeyToDer(&k, pub, sizeof(pub), 1);
    rv = n > 0 && wc_Sha256Hash(pub, (word32)n, out) == 0 ? 0 : -1;
  }
  wc_ecc_free(&k);
  return rv;
}

/* The pin of the first certificate of a PEM or DER buffer. */
static int spki_of_cert(const uint8_t *cert, size_t len,
                        uint8_t out[ATUN_QUIC_SHA256_LEN]) {
  uint8_t der[8192];
  if (buffer_format(cert, len) == WOLFSSL_FILETYPE_PEM) {
    int n = wc_CertPemToDer(cert, (int)len, der, sizeof(der), CERT_TYPE);
    if (n <= 0) {
      return -1;
    }
    cert = der;
    len = (size_t)n;
  }
  return atun_quic_spki_sha256(cert, len, out);
}

/* Copies |len| bytes of |src| as printable ASCII (others become '?') into
 * |dst| of |cap| bytes, NUL-terminated, cut if needed. */
static void copy_printable(char *dst, size_t cap, const uint8_t *src, size_t len) {
  size_t n = len < cap - 1 ? len : cap - 1;
  for (size_t i = 0; i < n; ++i) {
    dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? (char)src[i] : '?';
  }
  dst[n] = '\0';
}

static int is_hex(char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
         (ch >= 'A' && ch <= 'F');
}

/* Stores the lowercase UUID of "atun://agent/<uuid>" in |out|, or returns -1
 * if |name| is not exactly that. */
static int agent_id_from_uri(char *out, const char *name, size_t len) {
  size_t plen = sizeof(AGENT_URI_PREFIX) - 1;
  if (len != plen + ATUN_QUIC_AGENT_ID_STRLEN ||
      memcmp(name, AGENT_URI_PREFIX, plen) != 0) {
    return -1;
  }
  const char *u = name + plen;
  for (size_t i = 0; i < ATUN_QUIC_AGENT_ID_STRLEN; ++i) {
    int dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? u[i] != '-' : !is_hex(u[i])) {
      return -1;
    }
    out[i] = (u[i] >= 'A' && u[i] <= 'F') ? (char)(u[i] - 'A' + 'a') : u[i];
  }
  out[ATUN_QUIC_AGENT_ID_STRLEN] = '\0';
  return 0;
}

/* The agent id is taken only when exactly one atun://agent/ URI is present
 * and well formed: two ids in one certificate are not an identity. */
static void peer_agent_id(atun_quic_peer *p, const DNS_entry *names) {
  size_t plen = sizeof(AGENT_URI_PREFIX) - 1;
  int found = 0;
  for (const DNS_entry *e = names; e != NULL; e = e->next) {
    if (e->type != ASN_URI_TYPE || e->len < (int)plen ||
        memcmp(e->name, AGENT_URI_PREFIX, plen) != 0) {
      continue;
    }
    if (found++ || agent_id_from_uri(p->agent_id, e->name, (size_t)e->len) != 0) {
      p->agent_id[0] = '\0';
      return;
    }
  }
}

/* Fills |p| from a DER certificate.  Returns 0 or ATUN_ERR_MALFORMED. */
static int peer_parse(atun_quic_peer *p, const uint8_t *der, size_t len) {
  memset(p, 0, sizeof(*p));
  if (wc_Sha256Hash(der, (word32)len, p->cert_sha256) != 0 ||
      atun_quic_spki_sha256(der, len, p->spki_sha256) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  DecodedCert dc;
  wc_InitDecodedCert(&dc, der, (word32)len, NULL);
  int rv = wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL);
  if (rv == 0) {
    if (dc.subjectCN != NULL && dc.subjectCNLen > 0) {
      copy_printable(p->cn, sizeof(p->cn), (const uint8_t *)dc.subjectCN,
                     (size_t)dc.subjectCNLen);
    }
    peer_agent_id(p, dc.altNames);
  }
  wc_FreeDecodedCert(&dc);
  return rv == 0 ? 0 : ATUN_ERR_MALFORMED;
}

static atun_quic_hs_failure failure_from_alert(uint8_t alert) {
  switch (alert) {
  case 42: /* bad_certificate */
  case 43: /* unsupported_certificate */
  case 46: /* certificate_unknown */
    return ATUN_QUIC_HS_BAD_CERTIFICATE;
  case 44:
    return ATUN_QUIC_HS_REVOKED;
  case 45:
    return ATUN_QUIC_HS_EXPIRED;
  case 48:
    return ATUN_QUIC_HS_UNKNOWN_CA;
  case 116: /* certificate_required */
    return ATUN_QUIC_HS_NO_CERTIFICATE;
  case 120: /* no_application_protocol */
    return ATUN_QUIC_HS_ALPN_MISMATCH;
  default:
    return ATUN_QUIC_HS_TLS;
  }
}

static atun_quic_hs_failure failure_from_verify_error(int err) {
  switch (err) {
  case ASN_NO_SIGNER_E:
    return ATUN_QUIC_HS_UNKNOWN_CA;
  case ASN_AFTER_DATE_E:
  case ASN_BEFORE_DATE_E:
    return ATUN_QUIC_HS_EXPIRED;
  default:
    return ATUN_QUIC_HS_BAD_CERTIFICATE;
  }
}

/* What a peer's CONNECTION_CLOSE says about the handshake. */
static atun_quic_hs_failure failure_from_close(int app, uint64_t code) {
  if (app) {
    switch (code) {
    case ATUN_QUIC_ERR_REVOKED:
      return ATUN_QUIC_HS_REVOKED;
    case ATUN_QUIC_ERR_IDENTITY:
      return ATUN_QUIC_HS_BAD_CERTIFICATE;
    case ATUN_QUIC_ERR_ALPN:
      return ATUN_QUIC_HS_ALPN_MISMATCH;
    default:
      return ATUN_QUIC_HS_OK;
    }
  }
  if ((code & ~(uint64_t)0xff) == NGTCP2_CRYPTO_ERROR) {
    return failure_from_alert((uint8_t)(code & 0xff));
  }
  return ATUN_QUIC_HS_OK;
}

const char *atun_quic_hs_failure_name(atun_quic_hs_failure f) {
  switch (f) {
  case ATUN_QUIC_HS_OK:
    return "ok";
  case ATUN_QUIC_HS_UNKNOWN_CA:
    return "unknown_ca";
  case ATUN_QUIC_HS_BAD_CERTIFICATE:
    return "bad_certificate";
  case ATUN_QUIC_HS_EXPIRED:
    return "expired";
  case ATUN_QUIC_HS_NO_CERTIFICATE:
    return "no_certificate";
  case ATUN_QUIC_HS_ALPN_MISMATCH:
    return "alpn_mismatch";
  case ATUN_QUIC_HS_PIN_MISMATCH:
    return "pin_mismatch";
  case ATUN_QUIC_HS_REVOKED:
    return "revoked";
  case ATUN_QUIC_HS_TIMEOUT:
    return "timeout";
  case ATUN_QUIC_HS_TLS:
    return "tls";
  }
  return "unknown";
}

/* --- connection and stream state ------------------------------------------ */

typedef struct chunk {
  struct chunk *next;
  size_t len;
  uint8_t data[ATUN_QUIC_CHUNK_SIZE];
} chunk;

/* Send side: bytes [acked, queued) live in the chunk list head..tail;
 * [acked, sent) were handed to ngtcp2 (which keeps pointers into them until
 * they are acknowledged), [sent, queued) wait.  |cursor|/|cursor_pos| locate
 * |sent| while sent < queued. */
typedef struct qstream {
  int64_t id;
  void *user_data;
  struct qstream *hnext;
  struct qstream *rprev, *rnext;
  chunk *head, *tail;
  chunk *cursor;
  size_t cursor_pos;
  uint64_t head_start;
  uint64_t acked, sent, queued;
  uint64_t rx_unconsumed;
  uint8_t local, in_ready, fin_queued, fin_sent, write_shut;
  uint8_t announced; /* ngtcp2 called stream_open for it */
} qstream;

struct atun_quic_conn {
  const atun_mem *mem;
  ngtcp2_mem ngmem;
  atun_rand rand;
  atun_quic_tls *tls;
  atun_quic_settings settings;
  atun_quic_callbacks cb;
  void *user_data;
  atun_quic_role role;
  atun_quic_state state;
  ngtcp2_conn *ng;
  WOLFSSL *ssl;
  ngtcp2_crypto_conn_ref conn_ref;
  ngtcp2_path_storage ps; /* where ngtcp2 writes the path of a datagram */
  ngtcp2_cid odcid;       /* server: the client's original destination id */

  qstream **buckets;
  size_t nbuckets;     /* a power of two, grows with the streams */
  size_t nbuckets_max; /* where growth stops */
  size_t nlocal, nremote;
  qstream *ready_head, *ready_tail;
  size_t nready;
  size_t tx_buffered;
  uint64_t rx_unconsumed;

  int peer_known;
  atun_quic_peer peer;
  atun_quic_hs_failure hs_failure; /* first local TLS verdict */
  int tls_cb_failed;               /* see tls_outcome */
  int stateless_reset;

  int close_pending;
  int closed_reported;
  atun_quic_close_info info;
  uint8_t *close_pkt;
  size_t close_pkt_len;
  int close_resend_due;
  unsigned close_resends;
  atun_tstamp close_deadline;
  size_t burst;
};

void atun_quic_settings_default(atun_quic_settings *s) {
  memset(s, 0, sizeof(*s));
  s->stream_window_initial = (uint64_t)8 << 20;
  s->stream_window_max = (uint64_t)16 << 20;
  s->conn_window_initial = (uint64_t)16 << 20;
  s->conn_window_max = (uint64_t)32 << 20;
  s->max_streams_bidi = 1024;
  s->stream_send_buffer_max = (size_t)4 << 20;
  s->conn_send_buffer_max = (size_t)32 << 20;
  s->idle_timeout_ns = 30 * ATUN_NS_PER_S;
  s->handshake_timeout_ns = 10 * ATUN_NS_PER_S;
  s->keep_alive_ns = 0;
  s->max_ack_delay_ns = 25 * ATUN_NS_PER_MS;
  s->ack_thresh = 2;
  s->max_udp_payload = ATUN_QUIC_DATAGRAM_MAX;
}

static int settings_valid(const atun_quic_settings *s) {
  return s->stream_window_initial > 0 &&
         s->stream_window_max >= s->stream_window_initial &&
         s->conn_window_initial > 0 && s->conn_window_max >= s->conn_window_initial &&
         s->stream_window_max <= NGTCP2_MAX_VARINT &&
         s->conn_window_max <= NGTCP2_MAX_VARINT && s->max_streams_bidi > 0 &&
         s->max_streams_bidi <= STREAMS_MAX_LIMIT && s->stream_send_buffer_max > 0 &&
         s->conn_send_buffer_max > 0 && s->idle_timeout_ns > 0 &&
         s->idle_timeout_ns <= ATUN_QUIC_DURATION_MAX_NS &&
         s->handshake_timeout_ns > 0 &&
         s->handshake_timeout_ns <= ATUN_QUIC_DURATION_MAX_NS &&
         s->keep_alive_ns <= ATUN_QUIC_DURATION_MAX_NS && s->max_ack_delay_ns > 0 &&
         s->max_ack_delay_ns < (1u << 14) * ATUN_NS_PER_MS && s->ack_thresh > 0 &&
         s->max_udp_payload >= ATUN_QUIC_DATAGRAM_MIN &&
         s->max_udp_payload <= ATUN_QUIC_DATAGRAM_MAX;
}

/* --- stream table and ready list ------------------------------------------ */

static size_t stream_hash(const atun_quic_conn *c, int64_t id) {
  return (size_t)(((uint64_t)id * 0x9e3779b97f4a7c15ull) >> 32) & (c->nbuckets - 1);
}

static qstream *stream_find(const atun_quic_conn *c, int64_t id) {
  if (id < 0) {
    return NULL;
  }
  qstream *s = c->buckets[stream_hash(c, id)];
  while (s != NULL && s->id != id) {
    s = s->hnext;
  }
  return s;
}

/* Doubles the table once it holds as many streams as buckets, up to the
 * size |max_streams_bidi| calls for: an idle connection keeps a small
 * table, a busy one short chains.  A failed allocation keeps the old
 * table (longer chains, nothing lost). */
static void table_grow(atun_quic_conn *c) {
  if (c->nlocal + c->nremote < c->nbuckets || c->nbuckets >= c->nbuckets_max) {
    return;
  }
  size_t old_n = c->nbuckets;
  qstream **old = c->buckets;
  qstream **fresh = atun_mem_calloc(c->mem, old_n * 2, sizeof(*fresh));
  if (fresh == NULL) {
    return;
  }
  c->buckets = fresh;
  c->nbuckets = old_n * 2;
  for (size_t i = 0; i < old_n; ++i) {
    while (old[i] != NULL) {
      qstream *s = old[i];
      old[i] = s->hnext;
      size_t h = stream_hash(c, s->id);
      s->hnext = fresh[h];
      fresh[h] = s;
    }
  }
  atun_mem_free(c->mem, old);
}

static void stream_insert(atun_quic_conn *c, qstream *s) {
  table_grow(c);
  size_t h = stream_hash(c, s->id);
  s->hnext = c->buckets[h];
  c->buckets[h] = s;
  if (s->local) {
    c->nlocal++;
  } else {
    c->nremote++;
  }
}

static void ready_add(atun_quic_conn *c, qstream *s) {
  if (s->in_ready) {
    return;
  }
  s->in_ready = 1;
  s->rnext = NULL;
  s->rprev = c->ready_tail;
  if (c->ready_tail) {
    c->ready_tail->rnext = s;
  } else {
    c->ready_head = s;
  }
  c->ready_tail = s;
  c->nready++;
}

static void ready_remove(atun_quic_conn *c, qstream *s) {
  if (!s->in_ready) {
    return;
  }
  if (s->rprev) {
    s->rprev->rnext = s->rnext;
  } else {
    c->ready_head = s->rnext;
  }
  if (s->rnext) {
    s->rnext->rprev = s->rprev;
  } else {
    c->ready_tail = s->rprev;
  }
  s->in_ready = 0;
  s->rprev = s->rnext = NULL;
  c->nready--;
}

/* Frees |s| with its buffers and forgets it. */
static void stream_free(atun_quic_conn *c, qstream *s) {
  qstream **pp = &c->buckets[stream_hash(c, s->id)];
  while (*pp != s) {
    pp = &(*pp)->hnext;
  }
  *pp = s->hnext;
  ready_remove(c, s);
  if (s->local) {
    c->nlocal--;
  } else {
    c->nremote--;
  }
  c->tx_buffered -= (size_t)(s->queued - s->acked);
  while (s->head != NULL) {
    chunk *next = s->head->next;
    atun_mem_free(c->mem, s->head);
    s->head = next;
  }
  atun_mem_free(c->mem, s);
}

/* The part of the connection's send buffer atun_quic_stream_writable()
 * keeps back (see quic.h). */
static size_t conn_reserve(const atun_quic_conn *c) {
  size_t r = c->settings.conn_send_buffer_max / 8;
  return r < ATUN_QUIC_SEND_RESERVE_MAX ? r : ATUN_QUIC_SEND_RESERVE_MAX;
}

/* Bytes stream |s| may queue, with |reserve| bytes of the connection's
 * buffer kept back. */
static size_t stream_room(const atun_quic_conn *c, const qstream *s, size_t reserve) {
  size_t used = (size_t)(s->queued - s->acked);
  size_t room = c->settings.stream_send_buffer_max > used
                    ? c->settings.stream_send_buffer_max - used
                    : 0;
  size_t cmax = c->settings.conn_send_buffer_max - reserve;
  size_t croom = cmax > c->tx_buffered ? cmax - c->tx_buffered : 0;
  return room < croom ? room : croom;
}

/* Appends up to |len| bytes; returns how many fit into chunks it could get. */
static size_t stream_append(atun_quic_conn *c, qstream *s, const uint8_t *data,
                            size_t len) {
  size_t done = 0;
  while (done < len) {
    chunk *t = s->tail;
    if (t == NULL || t->len == ATUN_QUIC_CHUNK_SIZE) {
      t = atun_mem_malloc(c->mem, sizeof(*t));
      if (t == NULL) {
        break;
      }
      t->next = NULL;
      t->len = 0;
      if (s->tail) {
        s->tail->next = t;
      } else {
        s->head = t;
        s->head_start = s->queued;
      }
      s->tail = t;
    }
    size_t k = ATUN_QUIC_CHUNK_SIZE - t->len;
    if (k > len - done) {
      k = len - done;
    }
    if (s->sent == s->queued) {
      s->cursor = t;
      s->cursor_pos = t->len;
    }
    memcpy(t->data + t->len, data + done, k);
    t->len += k;
    s->queued += k;
    c->tx_buffered += k;
    done += k;
  }
  return done;
}

/* Fills |vec| with unsent data from the cursor on; sets |*fin| when the FIN
 * may ride along (the vectors cover everything unsent). */
static size_t stream_vecs(const qstream *s, ngtcp2_vec *vec, int *fin) {
  size_t n = 0, covered = 0, unsent = (size_t)(s->queued - s->sent);
  const chunk *ch = s->cursor;
  size_t pos = s->cursor_pos;
  while (covered < unsent && n < WRITE_NVEC) {
    vec[n].base = (uint8_t *)ch->data + pos;
    vec[n].len = ch->len - pos;
    covered += vec[n].len;
    ++n;
    ch = ch->next;
    pos = 0;
  }
  *fin = s->fin_queued && !s->fin_sent && covered == unsent;
  return n;
}

static void stream_sent(atun_quic_conn *c, qstream *s, size_t n, int fin) {
  s->sent += n;
  while (n > 0) {
    size_t k = s->cursor->len - s->cursor_pos;
    if (k > n) {
      k = n;
    }
    s->cursor_pos += k;
    n -= k;
    if (s->cursor_pos == s->cursor->len && s->cursor->next != NULL) {
      s->cursor = s->cursor->next;
      s->cursor_pos = 0;
    }
  }
  if (fin && s->sent == s->queued) {
    s->fin_sent = 1;
  }
  if (s->sent == s->queued && (!s->fin_queued || s->fin_sent)) {
    ready_remove(c, s);
  }
}

static void stream_acked(atun_quic_conn *c, qstream *s, uint64_t n) {
  s->acked += n;
  c->tx_buffered -= (size_t)n;
  /* Only the tail can be partly filled; it goes once everything is acked. */
  while (s->head != NULL && s->head_start + s->head->len <= s->acked &&
         (s->head->len == ATUN_QUIC_CHUNK_SIZE || s->head == s->tail)) {
    chunk *h = s->head;
    s->head_start += h->len;
    s->head = h->next;
    if (s->head == NULL) {
      s->tail = NULL;
    }
    atun_mem_free(c->mem, h);
  }
}

static qstream *stream_new(atun_quic_conn *c, int64_t id, int local, void *ud) {
  qstream *s = atun_mem_calloc(c->mem, 1, sizeof(*s));
  if (s != NULL) {
    s->id = id;
    s->local = (uint8_t)local;
    s->user_data = ud;
  }
  return s;
}

/* --- closing -------------------------------------------------------------- */

static void report_closed(atun_quic_conn *c) {
  if (c->closed_reported) {
    return;
  }
  c->closed_reported = 1;
  if (c->cb.connection_closed) {
    c->cb.connection_closed(c, &c->info, c->user_data);
  }
}

/* Decides a local close; the first decision wins.  The CONNECTION_CLOSE is
 * written by the next atun_quic_conn_write (callbacks can not write). */
static void schedule_close(atun_quic_conn *c, int app, uint64_t code,
                           atun_quic_hs_failure f, const char *reason) {
  if (c->close_pending || c->state >= ATUN_QUIC_STATE_CLOSING) {
    return;
  }
  c->close_pending = 1;
  c->info.source = ATUN_QUIC_CLOSE_LOCAL;
  c->info.app = app;
  c->info.error_code = code;
  c->info.hs_failure = f;
  copy_printable(c->info.reason, sizeof(c->info.reason), (const uint8_t *)reason,
                 strlen(reason));
}

static void enter_closed(atun_quic_conn *c, atun_quic_close_source src,
                         atun_quic_hs_failure f, const char *reason) {
  if (!c->closed_reported) {
    c->info.source = src;
    c->info.app = 0;
    c->info.error_code = 0;
    c->info.hs_failure = f;
    copy_printable(c->info.reason, sizeof(c->info.reason), (const uint8_t *)reason,
                   strlen(reason));
  }
  c->close_pending = 0;
  c->state = ATUN_QUIC_STATE_CLOSED;
  report_closed(c);
}

static atun_tstamp closing_deadline(atun_quic_conn *c, atun_tstamp ts) {
  return ts + 3 * ngtcp2_conn_get_pto(c->ng);
}

static void enter_draining(atun_quic_conn *c, atun_tstamp ts) {
  ngtcp2_connection_close_error ccerr;
  ngtcp2_conn_get_connection_close_error(c->ng, &ccerr);
  c->info.source = ATUN_QUIC_CLOSE_PEER;
  c->info.app = ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION;
  c->info.error_code = ccerr.error_code;
  c->info.hs_failure = failure_from_close(c->info.app, ccerr.error_code);
  if (c->stateless_reset) {
    copy_printable(c->info.reason, sizeof(c->info.reason),
                   (const uint8_t *)"stateless_reset", 15);
  } else {
    copy_printable(c->info.reason, sizeof(c->info.reason), ccerr.reason,
                   ccerr.reason ? ccerr.reasonlen : 0);
  }
  c->close_pending = 0;
  c->state = ATUN_QUIC_STATE_DRAINING;
  c->close_deadline = closing_deadline(c, ts);
  report_closed(c);
}

/* --- ngtcp2 and wolfSSL callbacks ----------------------------------------- */

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) {
  return ((atun_quic_conn *)ref->user_data)->ng;
}

static atun_quic_conn *conn_of_ssl(WOLFSSL *ssl) {
  ngtcp2_crypto_conn_ref *ref = ssl ? wolfSSL_get_app_data(ssl) : NULL;
  return ref ? ref->user_data : NULL;
}

/* Runs for every certificate of the peer's chain (wolfSSL is built with
 * WOLFSSL_ALWAYS_VERIFY_CB and WOLFSSL_VERIFY_CB_ALL_CERTS), successes
 * included.  It records why a chain failed, and at the leaf reads the peer's
 * facts and checks the server pin. */
static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store) {
  atun_quic_conn *c = conn_of_ssl(wolfSSL_X509_STORE_CTX_get_ex_data(
      store, wolfSSL_get_ex_data_X509_STORE_CTX_idx()));
  if (c == NULL) {
    return 0;
  }
  if (!preverify) {
    if (c->hs_failure == ATUN_QUIC_HS_OK) {
      c->hs_failure =
          failure_from_verify_error(wolfSSL_X509_STORE_CTX_get_error(store));
    }
    return 0;
  }
  if (wolfSSL_X509_STORE_CTX_get_error_depth(store) != 0) {
    return 1;
  }
  int len = 0;
  const unsigned char *der =
      wolfSSL_X509_get_der(wolfSSL_X509_STORE_CTX_get_current_cert(store), &len);
  if (der == NULL || len <= 0 || peer_parse(&c->peer, der, (size_t)len) != 0) {
    c->hs_failure = ATUN_QUIC_HS_BAD_CERTIFICATE;
    return 0;
  }
  c->peer_known = 1;
  if (c->tls->has_pin &&
      memcmp(c->peer.spki_sha256, c->tls->pin, ATUN_QUIC_SHA256_LEN) != 0) {
    c->hs_failure = ATUN_QUIC_HS_PIN_MISMATCH;
    return 0;
  }
  return 1;
}

/* wolfSSL 5.5.4 spins forever in ProcessReplyEx when a QUIC method callback
 * reports a failure: seen with an allocation failure while ngtcp2 installs
 * keys, and a peer's malformed transport parameters take the same path (a
 * remote hang).  So this method never reports failure to wolfSSL: it notes
 * it, and the ngtcp2 callback that drove wolfSSL returns the error once
 * wolfSSL is back (tls_outcome). */
static int tls_set_secrets(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL wl, const uint8_t *rx,
                           const uint8_t *tx, size_t len) {
  atun_quic_conn *c = conn_of_ssl(ssl);
  ngtcp2_crypto_level lv = ngtcp2_crypto_wolfssl_from_wolfssl_encryption_level(wl);
  if ((rx && ngtcp2_crypto_derive_and_install_rx_key(c->ng, NULL, NULL, NULL, lv, rx,
                                                     len) != 0) ||
      (tx && ngtcp2_crypto_derive_and_install_tx_key(c->ng, NULL, NULL, NULL, lv, tx,
                                                     len) != 0)) {
    c->tls_cb_failed = 1;
  }
  return 1;
}

static int tls_add_data(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL wl, const uint8_t *data,
                        size_t len) {
  atun_quic_conn *c = conn_of_ssl(ssl);
  int rv = ngtcp2_conn_submit_crypto_data(
      c->ng, ngtcp2_crypto_wolfssl_from_wolfssl_encryption_level(wl), data, len);
  if (rv != 0) {
    ngtcp2_conn_set_tls_error(c->ng, rv);
    c->tls_cb_failed = 1;
  }
  return 1;
}

static int tls_flush(WOLFSSL *ssl) {
  (void)ssl;
  return 1;
}

static int tls_alert(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL wl, uint8_t alert) {
  (void)wl;
  ngtcp2_conn_set_tls_alert(conn_of_ssl(ssl)->ng, alert);
  return 1;
}

static const WOLFSSL_QUIC_METHOD quic_method = {tls_set_secrets, tls_add_data,
                                                tls_flush, tls_alert};

static int tls_outcome(atun_quic_conn *c, int rv) {
  if (!c->tls_cb_failed) {
    return rv;
  }
  c->tls_cb_failed = 0;
  int err = ngtcp2_conn_get_tls_error(c->ng);
  return err != 0 ? err : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int on_client_initial(ngtcp2_conn *ng, void *ud) {
  return tls_outcome(ud, ngtcp2_crypto_client_initial_cb(ng, ud));
}

static int on_recv_crypto_data(ngtcp2_conn *ng, ngtcp2_crypto_level level,
                               uint64_t offset, const uint8_t *data, size_t len,
                               void *ud) {
  return tls_outcome(
      ud, ngtcp2_crypto_recv_crypto_data_cb(ng, level, offset, data, len, ud));
}

static void on_rand(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *rctx) {
  atun_quic_conn *c = rctx->native_handle;
  /* ngtcp2 uses these bytes for non-cryptographic choices only (e.g. which
   * packet number to skip) and has no way to fail here. */
  if (c->rand.fill(dest, len, c->rand.user_data) != 0) {
    memset(dest, 0, len);
  }
}

static void cid_to_public(atun_quic_cid *out, const ngtcp2_cid *cid) {
  out->len = cid->datalen;
  memcpy(out->data, cid->data, cid->datalen);
}

static int on_new_cid(ngtcp2_conn *ng, ngtcp2_cid *cid, uint8_t *token, size_t cidlen,
                      void *ud) {
  atun_quic_conn *c = ud;
  (void)ng;
  if (c->rand.fill(cid->data, cidlen, c->rand.user_data) != 0 ||
      c->rand.fill(token, NGTCP2_STATELESS_RESET_TOKENLEN, c->rand.user_data) != 0) {
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  cid->datalen = cidlen;
  if (c->cb.cid_added) {
    atun_quic_cid pub;
    cid_to_public(&pub, cid);
    c->cb.cid_added(c, &pub, c->user_data);
  }
  return 0;
}

static int on_remove_cid(ngtcp2_conn *ng, const ngtcp2_cid *cid, void *ud) {
  atun_quic_conn *c = ud;
  (void)ng;
  if (c->cb.cid_removed) {
    atun_quic_cid pub;
    cid_to_public(&pub, cid);
    c->cb.cid_removed(c, &pub, c->user_data);
  }
  return 0;
}

static int on_path_challenge(ngtcp2_conn *ng, uint8_t *data, void *ud) {
  atun_quic_conn *c = ud;
  (void)ng;
  return c->rand.fill(data, NGTCP2_PATH_CHALLENGE_DATALEN, c->rand.user_data) == 0
             ? 0
             : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int on_stateless_reset(ngtcp2_conn *ng, const ngtcp2_pkt_stateless_reset *sr,
                              void *ud) {
  (void)ng;
  (void)sr;
  ((atun_quic_conn *)ud)->stateless_reset = 1;
  return 0;
}

/* Once a close is decided inside an ngtcp2 callback, the rest of the packet
 * is still processed, but nothing more reaches the application: stream data
 * of a refused agent never does.  The callbacks do not return
 * NGTCP2_ERR_CALLBACK_FAILURE for this: from on_handshake_completed that
 * leaves ngtcp2 0.12 half way into its post-handshake state, and its close
 * writer then trips an assertion. */
static int muted(const atun_quic_conn *c) { return c->close_pending; }

static int app_failed(atun_quic_conn *c) {
  schedule_close(c, 1, ATUN_QUIC_ERR_INTERNAL, ATUN_QUIC_HS_OK, "callback_failure");
  return 0;
}

static int refuse(atun_quic_conn *c, uint64_t code, atun_quic_hs_failure f) {
  schedule_close(c, 1, code, f, atun_quic_hs_failure_name(f));
  return -1;
}

/* State for a stream the peer opened, created on first sight (ngtcp2 does
 * not announce streams the peer opened implicitly).  NULL once the
 * connection is closing. */
static qstream *remote_stream(atun_quic_conn *c, int64_t id) {
  qstream *s = NULL;
  if (c->nremote < c->settings.max_streams_bidi) { /* ngtcp2 enforces it too */
    s = stream_new(c, id, 0, NULL);
  }
  if (s == NULL) {
    schedule_close(c, 1, ATUN_QUIC_ERR_INTERNAL, ATUN_QUIC_HS_OK, "out_of_memory");
    return NULL;
  }
  stream_insert(c, s);
  ngtcp2_conn_set_stream_user_data(c->ng, id, s);
  if (c->cb.stream_open && c->cb.stream_open(c, id, c->user_data) != 0) {
    app_failed(c);
    return NULL;
  }
  return s;
}

static int alpn_ok(atun_quic_conn *c) {
  char *proto = NULL;
  unsigned short len = 0;
  return wolfSSL_ALPN_GetProtocol(c->ssl, &proto, &len) == WOLFSSL_SUCCESS &&
         proto != NULL && len == c->tls->alpn_len &&
         memcmp(proto, c->tls->alpn, len) == 0;
}

/* The server's admission check: a verified certificate carrying an agent id,
 * then the application's verdict (revocation). */
static int admit_client(atun_quic_conn *c) {
  if (!c->peer_known || c->peer.agent_id[0] == '\0') {
    return refuse(c, ATUN_QUIC_ERR_IDENTITY, ATUN_QUIC_HS_BAD_CERTIFICATE);
  }
  int rv = c->cb.peer_verify ? c->cb.peer_verify(c, &c->peer, c->user_data) : 0;
  if (rv == ATUN_ERR_REVOKED) {
    return refuse(c, ATUN_QUIC_ERR_REVOKED, ATUN_QUIC_HS_REVOKED);
  }
  if (rv != 0) {
    return refuse(c, ATUN_QUIC_ERR_IDENTITY, ATUN_QUIC_HS_BAD_CERTIFICATE);
  }
  return 0;
}

static int on_handshake_completed(ngtcp2_conn *ng, void *ud) {
  atun_quic_conn *c = ud;
  (void)ng;
  if (muted(c)) {
    return 0;
  }
  if (!alpn_ok(c)) {
    refuse(c, ATUN_QUIC_ERR_ALPN, ATUN_QUIC_HS_ALPN_MISMATCH);
    return 0;
  }
  if (c->role == ATUN_QUIC_SERVER) {
    if (admit_client(c) != 0) {
      return 0;
    }
  } else if (!c->peer_known) {
    /* wolfSSL verified a chain without showing us its leaf: no pin check
     * happened, so fail closed. */
    refuse(c, ATUN_QUIC_ERR_INTERNAL, ATUN_QUIC_HS_TLS);
    return 0;
  }
  c->state = ATUN_QUIC_STATE_ESTABLISHED;
  if (c->cb.handshake_completed && c->cb.handshake_completed(c, c->user_data) != 0) {
    return app_failed(c);
  }
  return 0;
}

static int on_stream_open(ngtcp2_conn *ng, int64_t id, void *ud) {
  (void)ng;
  qstream *s = muted(ud) ? NULL : remote_stream(ud, id);
  if (s != NULL) {
    s->announced = 1;
  }
  return 0;
}

/* Nobody reads: consume at once so the peer is never stuck. */
static void auto_consume(atun_quic_conn *c, int64_t id, size_t len) {
  ngtcp2_conn_extend_max_offset(c->ng, len);
  if (ngtcp2_conn_extend_max_stream_offset(c->ng, id, len) != 0) {
    schedule_close(c, 1, ATUN_QUIC_ERR_INTERNAL, ATUN_QUIC_HS_OK, "out_of_memory");
  }
}

static int on_recv_stream_data(ngtcp2_conn *ng, uint32_t flags, int64_t id,
                               uint64_t offset, const uint8_t *data, size_t len,
                               void *ud, void *sud) {
  atun_quic_conn *c = ud;
  (void)ng;
  (void)offset;
  if (muted(c)) {
    return 0;
  }
  qstream *s = sud ? sud : remote_stream(c, id);
  if (s == NULL) {
    return 0;
  }
  if (c->cb.stream_data == NULL) {
    auto_consume(c, id, len);
    return 0;
  }
  s->rx_unconsumed += len;
  c->rx_unconsumed += len;
  int fin = (flags & NGTCP2_STREAM_DATA_FLAG_FIN) != 0;
  if (c->cb.stream_data(c, id, data, len, fin, c->user_data, s->user_data) != 0) {
    return app_failed(c);
  }
  return 0;
}

static int on_acked(ngtcp2_conn *ng, int64_t id, uint64_t offset, uint64_t len,
                    void *ud, void *sud) {
  atun_quic_conn *c = ud;
  qstream *s = sud;
  (void)ng;
  (void)offset;
  if (s == NULL || len == 0) {
    return 0;
  }
  stream_acked(c, s, len);
  if (!muted(c) && c->cb.stream_acked &&
      c->cb.stream_acked(c, id, (size_t)len, c->user_data, s->user_data) != 0) {
    return app_failed(c);
  }
  return 0;
}

static int on_stream_reset(ngtcp2_conn *ng, int64_t id, uint64_t final_size,
                           uint64_t app_error, void *ud, void *sud) {
  atun_quic_conn *c = ud;
  (void)ng;
  (void)final_size;
  if (muted(c)) {
    return 0;
  }
  qstream *s = sud ? sud : remote_stream(c, id);
  if (s != NULL && c->cb.stream_reset &&
      c->cb.stream_reset(c, id, app_error, c->user_data, s->user_data) != 0) {
    return app_failed(c);
  }
  return 0;
}

static int on_stream_close(ngtcp2_conn *ng, uint32_t flags, int64_t id,
                           uint64_t app_error, void *ud, void *sud) {
  atun_quic_conn *c = ud;
  qstream *s = sud;
  (void)ng;
  if (s == NULL) {
    return 0; /* never seen by the application */
  }
  int has_error = (flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET) != 0;
  int rv = 0;
  if (!muted(c) && c->cb.stream_closed) {
    rv = c->cb.stream_closed(c, id, has_error, app_error, c->user_data, s->user_data);
  }
  if (s->announced) {
    /* ngtcp2 gives the peer a new stream only for streams it did not
     * announce; the others are ours to hand back. */
    ngtcp2_conn_extend_max_streams_bidi(ng, 1);
  }
  stream_free(c, s);
  return rv == 0 ? 0 : app_failed(c);
}

static const ngtcp2_callbacks client_callbacks = {
    .client_initial = on_client_initial,
    .recv_crypto_data = on_recv_crypto_data,
    .handshake_completed = on_handshake_completed,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = on_recv_stream_data,
    .acked_stream_data_offset = on_acked,
    .stream_open = on_stream_open,
    .stream_close = on_stream_close,
    .recv_stateless_reset = on_stateless_reset,
    .recv_retry = ngtcp2_crypto_recv_retry_cb,
    .rand = on_rand,
    .get_new_connection_id = on_new_cid,
    .remove_connection_id = on_remove_cid,
    .update_key = ngtcp2_crypto_update_key_cb,
    .stream_reset = on_stream_reset,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .get_path_challenge_data = on_path_challenge,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

static const ngtcp2_callbacks server_callbacks = {
    .recv_client_initial = ngtcp2_crypto_recv_client_initial_cb,
    .recv_crypto_data = on_recv_crypto_data,
    .handshake_completed = on_handshake_completed,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = on_recv_stream_data,
    .acked_stream_data_offset = on_acked,
    .stream_open = on_stream_open,
    .stream_close = on_stream_close,
    .recv_stateless_reset = on_stateless_reset,
    .rand = on_rand,
    .get_new_connection_id = on_new_cid,
    .remove_connection_id = on_remove_cid,
    .update_key = ngtcp2_crypto_update_key_cb,
    .stream_reset = on_stream_reset,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .get_path_challenge_data = on_path_challenge,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

/* --- construction --------------------------------------------------------- */

static int endpoint_to_addr(ngtcp2_sockaddr_union *u, ngtcp2_socklen *len,
                            const atun_quic_endpoint *e) {
  memset(u, 0, sizeof(*u));
  uint8_t *port;
  if (e->addr.family == ATUN_AF_INET) {
    u->in.sin_family = AF_INET;
    memcpy(&u->in.sin_addr, e->addr.bytes, 4);
    port = (uint8_t *)&u->in.sin_port;
    *len = sizeof(u->in);
  } else if (e->addr.family == ATUN_AF_INET6) {
    u->in6.sin6_family = AF_INET6;
    memcpy(&u->in6.sin6_addr, e->addr.bytes, 16);
    port = (uint8_t *)&u->in6.sin6_port;
    *len = sizeof(u->in6);
  } else {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  port[0] = (uint8_t)(e->port >> 8);
  port[1] = (uint8_t)e->port;
  return 0;
}

static void endpoint_from_addr(atun_quic_endpoint *e, const ngtcp2_addr *a) {
  const ngtcp2_sockaddr_union *u = (const ngtcp2_sockaddr_union *)a->addr;
  const uint8_t *port;
  memset(e, 0, sizeof(*e));
  if (u->sa.sa_family == AF_INET6) {
    e->addr.family = ATUN_AF_INET6;
    memcpy(e->addr.bytes, &u->in6.sin6_addr, 16);
    port = (const uint8_t *)&u->in6.sin6_port;
  } else {
    e->addr.family = ATUN_AF_INET;
    memcpy(e->addr.bytes, &u->in.sin_addr, 4);
    port = (const uint8_t *)&u->in.sin_port;
  }
  e->port = (uint16_t)(port[0] << 8 | port[1]);
}

static int path_to_ng(ngtcp2_path_storage *ps, const atun_quic_path *p) {
  ngtcp2_path_storage_zero(ps);
  if (endpoint_to_addr(&ps->local_addrbuf, &ps->path.local.addrlen, &p->local) != 0 ||
      endpoint_to_addr(&ps->remote_addrbuf, &ps->path.remote.addrlen, &p->remote) !=
          0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  return 0;
}

static int config_valid(const atun_quic_conn_config *cfg, atun_quic_role role) {
  return cfg != NULL && cfg->tls != NULL && cfg->tls->role == role &&
         cfg->mem != NULL && cfg->rand.fill != NULL &&
         (cfg->settings == NULL || settings_valid(cfg->settings));
}

static size_t buckets_for(uint64_t max_streams) {
  size_t n = STREAM_BUCKETS_MIN;
  while (n < 2 * max_streams) {
    n <<= 1;
  }
  return n;
}

/* Allocates the object and its TLS session.  Returns 0 or an error. */
static int conn_alloc(atun_quic_conn **pc, const atun_quic_conn_config *cfg,
                      atun_quic_role role) {
  const atun_mem *mem = cfg->mem;
  atun_quic_conn *c = atun_mem_calloc(mem, 1, sizeof(*c));
  if (c == NULL) {
    return ATUN_ERR_NOMEM;
  }
  c->mem = mem;
  memcpy(&c->ngmem, mem, sizeof(c->ngmem));
  c->rand = cfg->rand;
  c->tls = cfg->tls;
  if (cfg->settings) {
    c->settings = *cfg->settings;
  } else {
    atun_quic_settings_default(&c->settings);
  }
  if (cfg->callbacks) {
    c->cb = *cfg->callbacks;
  }
  c->user_data = cfg->user_data;
  c->role = role;
  c->close_deadline = ATUN_TSTAMP_MAX;
  c->nbuckets = STREAM_BUCKETS_MIN;
  c->nbuckets_max = buckets_for(c->settings.max_streams_bidi);
  c->buckets = atun_mem_calloc(mem, c->nbuckets, sizeof(*c->buckets));
  if (c->buckets == NULL) {
    goto fail_buckets;
  }
  c->ssl = wolfSSL_new(c->tls->ctx);
  if (c->ssl == NULL) {
    goto fail_ssl;
  }
  c->conn_ref.get_conn = get_conn;
  c->conn_ref.user_data = c;
  wolfSSL_set_app_data(c->ssl, &c->conn_ref);
  if (role == ATUN_QUIC_SERVER) {
    wolfSSL_set_accept_state(c->ssl);
  } else {
    wolfSSL_set_connect_state(c->ssl);
  }
  /* A server refuses a client without our ALPN at the TLS level; both sides
   * check the outcome again (on_handshake_completed). */
  if (wolfSSL_UseALPN(c->ssl, c->tls->alpn, (unsigned)c->tls->alpn_len,
                      role == ATUN_QUIC_SERVER
                          ? WOLFSSL_ALPN_FAILED_ON_MISMATCH
                          : WOLFSSL_ALPN_CONTINUE_ON_MISMATCH) != WOLFSSL_SUCCESS) {
    goto fail_alpn;
  }
  *pc = c;
  return 0;

fail_alpn:
  wolfSSL_free(c->ssl);
fail_ssl:
  atun_mem_free(mem, c->buckets);
fail_buckets:
  atun_mem_free(mem, c);
  return ATUN_ERR_NOMEM;
}

static void fill_ng_settings(atun_quic_conn *c, ngtcp2_settings *ns, atun_tstamp ts) {
  const atun_quic_settings *s = &c->settings;
  ngtcp2_settings_default(ns);
  ns->initial_ts = ts;
  ns->cc_algo = NGTCP2_CC_ALGO_CUBIC;
  ns->rand_ctx.native_handle = c;
  ns->max_tx_udp_payload_size = s->max_udp_payload;
  ns->max_window = s->conn_window_max;
  ns->max_stream_window = s->stream_window_max;
  ns->ack_thresh = s->ack_thresh;
  ns->handshake_timeout = s->handshake_timeout_ns;
}

static void fill_params(atun_quic_conn *c, ngtcp2_transport_params *p) {
  const atun_quic_settings *s = &c->settings;
  ngtcp2_transport_params_default(p);
  p->initial_max_stream_data_bidi_local = s->stream_window_initial;
  p->initial_max_stream_data_bidi_remote = s->stream_window_initial;
  p->initial_max_stream_data_uni = 0;
  p->initial_max_data = s->conn_window_initial;
  p->initial_max_streams_bidi = s->max_streams_bidi;
  p->initial_max_streams_uni = 0;
  p->max_idle_timeout = s->idle_timeout_ns;
  p->max_ack_delay = s->max_ack_delay_ns;
  p->max_udp_payload_size = ATUN_QUIC_DATAGRAM_MAX;
}

static int rand_cid(atun_quic_conn *c, ngtcp2_cid *cid, size_t len) {
  cid->datalen = len;
  return c->rand.fill(cid->data, len, c->rand.user_data) == 0 ? 0 : ATUN_ERR_INTERNAL;
}

static int from_ng_new(int rv) {
  return rv == NGTCP2_ERR_NOMEM ? ATUN_ERR_NOMEM : ATUN_ERR_INTERNAL;
}

/* Finishes construction once ngtcp2 exists. */
static void conn_attach(atun_quic_conn *c, ngtcp2_conn *ng) {
  c->ng = ng;
  ngtcp2_conn_set_tls_native_handle(c->ng, c->ssl);
  ngtcp2_conn_set_keep_alive_timeout(c->ng, c->settings.keep_alive_ns);
  ngtcp2_path_storage_zero(&c->ps);
}

void atun_quic_conn_del(atun_quic_conn *c) {
  if (c == NULL) {
    return;
  }
  for (size_t i = 0; i < c->nbuckets; ++i) {
    while (c->buckets[i] != NULL) {
      stream_free(c, c->buckets[i]);
    }
  }
  ngtcp2_conn_del(c->ng);
  wolfSSL_free(c->ssl);
  atun_mem_free(c->mem, c->close_pkt);
  atun_mem_free(c->mem, c->buckets);
  atun_mem_free(c->mem, c);
}

int atun_quic_conn_client_new(atun_quic_conn **pconn,
                              const atun_quic_conn_config *config,
                              const atun_quic_path *path, atun_tstamp ts) {
  ngtcp2_path_storage ps;
  if (pconn == NULL || path == NULL || !config_valid(config, ATUN_QUIC_CLIENT) ||
      path_to_ng(&ps, path) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  atun_quic_conn *c;
  int rv = conn_alloc(&c, config, ATUN_QUIC_CLIENT);
  if (rv != 0) {
    return rv;
  }
  ngtcp2_cid dcid, scid;
  ngtcp2_settings ns;
  ngtcp2_transport_params params;
  if (rand_cid(c, &dcid, ATUN_QUIC_SCID_LEN) != 0 ||
      rand_cid(c, &scid, ATUN_QUIC_SCID_LEN) != 0) {
    atun_quic_conn_del(c);
    return ATUN_ERR_INTERNAL;
  }
  fill_ng_settings(c, &ns, ts);
  fill_params(c, &params);
  /* ngtcp2 0.12 leaves a freed pointer behind when it fails: assign only
   * on success. */
  ngtcp2_conn *ng = NULL;
  rv = ngtcp2_conn_client_new(&ng, &dcid, &scid, &ps.path, NGTCP2_PROTO_VER_V1,
                              &client_callbacks, &ns, &params, &c->ngmem, c);
  if (rv != 0) {
    atun_quic_conn_del(c);
    return from_ng_new(rv);
  }
  conn_attach(c, ng);
  *pconn = c;
  return 0;
}

int atun_quic_conn_server_accept(atun_quic_conn **pconn,
                                 const atun_quic_conn_config *config,
                                 const atun_quic_path *path, const uint8_t *data,
                                 size_t len, atun_tstamp ts) {
  ngtcp2_path_storage ps;
  if (pconn == NULL || path == NULL || data == NULL ||
      !config_valid(config, ATUN_QUIC_SERVER) || path_to_ng(&ps, path) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  ngtcp2_pkt_hd hd;
  if (ngtcp2_accept(&hd, data, len) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  if (!ngtcp2_is_supported_version(hd.version)) {
    return ATUN_ERR_VERSION;
  }
  atun_quic_conn *c;
  int rv = conn_alloc(&c, config, ATUN_QUIC_SERVER);
  if (rv != 0) {
    return rv;
  }
  ngtcp2_cid scid;
  ngtcp2_settings ns;
  ngtcp2_transport_params params;
  fill_ng_settings(c, &ns, ts);
  fill_params(c, &params);
  params.original_dcid = hd.dcid;
  params.stateless_reset_token_present = 1;
  c->odcid = hd.dcid;
  if (rand_cid(c, &scid, ATUN_QUIC_SCID_LEN) != 0 ||
      c->rand.fill(params.stateless_reset_token, NGTCP2_STATELESS_RESET_TOKENLEN,
                   c->rand.user_data) != 0) {
    atun_quic_conn_del(c);
    return ATUN_ERR_INTERNAL;
  }
  ngtcp2_conn *ng = NULL;
  rv = ngtcp2_conn_server_new(&ng, &hd.scid, &scid, &ps.path, hd.version,
                              &server_callbacks, &ns, &params, &c->ngmem, c);
  if (rv != 0) {
    atun_quic_conn_del(c);
    return from_ng_new(rv);
  }
  conn_attach(c, ng);
  *pconn = c;
  return atun_quic_conn_read(c, path, data, len, ts);
}

/* --- reading, expiry ------------------------------------------------------ */

/* Turns an ngtcp2 error of read/write/expiry into the connection's end. */
static void on_ng_error(atun_quic_conn *c, int rv, atun_tstamp ts) {
  switch (rv) {
  case NGTCP2_ERR_DRAINING:
    enter_draining(c, ts);
    break;
  case NGTCP2_ERR_CRYPTO: {
    uint8_t alert = ngtcp2_conn_get_tls_alert(c->ng);
    if (alert == 0) {
      alert = TLS_ALERT_INTERNAL_ERROR;
    }
    atun_quic_hs_failure f =
        c->hs_failure != ATUN_QUIC_HS_OK ? c->hs_failure : failure_from_alert(alert);
    schedule_close(c, 0, NGTCP2_CRYPTO_ERROR | alert, f, atun_quic_hs_failure_name(f));
    break;
  }
  case NGTCP2_ERR_IDLE_CLOSE:
    enter_closed(c, ATUN_QUIC_CLOSE_IDLE, ATUN_QUIC_HS_OK, "idle_timeout");
    break;
  case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
    enter_closed(c, ATUN_QUIC_CLOSE_TIMEOUT, ATUN_QUIC_HS_TIMEOUT, "handshake_timeout");
    break;
  case NGTCP2_ERR_DROP_CONN:
  case NGTCP2_ERR_RETRY:
  case NGTCP2_ERR_RECV_VERSION_NEGOTIATION:
    enter_closed(c, ATUN_QUIC_CLOSE_DROPPED, ATUN_QUIC_HS_OK, ngtcp2_strerror(rv));
    break;
  default:
    if (ngtcp2_err_is_fatal(rv)) {
      /* Out of memory or a failed callback inside ngtcp2: its state may be
       * half updated, and writing a close from there can crash 0.12.  The
       * API allows dropping instead; the peer times out. */
      enter_closed(c, ATUN_QUIC_CLOSE_DROPPED, ATUN_QUIC_HS_OK, ngtcp2_strerror(rv));
    } else {
      schedule_close(c, 0, ngtcp2_err_infer_quic_transport_error_code(rv),
                     ATUN_QUIC_HS_OK, ngtcp2_strerror(rv));
    }
    break;
  }
}

int atun_quic_conn_read(atun_quic_conn *c, const atun_quic_path *path,
                        const uint8_t *data, size_t len, atun_tstamp ts) {
  ngtcp2_path_storage ps;
  if (c == NULL || path == NULL || (data == NULL && len > 0) ||
      path_to_ng(&ps, path) != 0) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  switch (c->state) {
  case ATUN_QUIC_STATE_CLOSED:
    return ATUN_ERR_CLOSED;
  case ATUN_QUIC_STATE_DRAINING:
    return 0;
  case ATUN_QUIC_STATE_CLOSING:
    c->close_resend_due =
        c->close_pkt != NULL && c->close_resends < ATUN_QUIC_CLOSE_RESEND_MAX;
    return 0;
  default:
    break;
  }
  if (c->close_pending) {
    return 0;
  }
  int rv = ngtcp2_conn_read_pkt(c->ng, &ps.path, NULL, data, len, ts);
  if (rv != 0) {
    on_ng_error(c, rv, ts);
  }
  return 0;
}

int atun_quic_conn_handle_expiry(atun_quic_conn *c, atun_tstamp ts) {
  if (c == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (c->state == ATUN_QUIC_STATE_CLOSING || c->state == ATUN_QUIC_STATE_DRAINING) {
    if (ts >= c->close_deadline) {
      c->state = ATUN_QUIC_STATE_CLOSED;
    }
    return 0;
  }
  if (c->state == ATUN_QUIC_STATE_CLOSED || c->close_pending) {
    return 0;
  }
  int rv = ngtcp2_conn_handle_expiry(c->ng, ts);
  if (rv != 0) {
    on_ng_error(c, rv, ts);
  }
  return 0;
}

atun_tstamp atun_quic_conn_get_expiry(const atun_quic_conn *c) {
  switch (c->state) {
  case ATUN_QUIC_STATE_CLOSED:
    return ATUN_TSTAMP_MAX;
  case ATUN_QUIC_STATE_CLOSING:
  case ATUN_QUIC_STATE_DRAINING:
    return c->close_deadline;
  default:
    return ngtcp2_conn_get_expiry(c->ng);
  }
}

/* --- writing -------------------------------------------------------------- */

static void path_out(const atun_quic_conn *c, atun_quic_path *path) {
  if (path != NULL) {
    endpoint_from_addr(&path->local, &c->ps.path.local);
    endpoint_from_addr(&path->remote, &c->ps.path.remote);
  }
}

static ssize_t write_close(atun_quic_conn *c, atun_quic_path *path, uint8_t *buf,
                           size_t cap, atun_tstamp ts) {
  ngtcp2_connection_close_error ccerr;
  ngtcp2_connection_close_error_default(&ccerr);
  const uint8_t *reason = (const uint8_t *)c->info.reason;
  size_t rlen = strlen(c->info.reason);
  if (c->info.app) {
    ngtcp2_connection_close_error_set_application_error(&ccerr, c->info.error_code,
                                                        reason, rlen);
  } else {
    ngtcp2_connection_close_error_set_transport_error(&ccerr, c->info.error_code,
                                                      reason, rlen);
  }
  ngtcp2_ssize n = ngtcp2_conn_write_connection_close(c->ng, &c->ps.path, NULL, buf,
                                                      cap, &ccerr, ts);
  c->close_pending = 0;
  if (n <= 0) {
    /* Nothing can carry the close (no keys yet, or ngtcp2 failed): end
     * silently, the peer times out. */
    c->state = ATUN_QUIC_STATE_CLOSED;
    report_closed(c);
    return 0;
  }
  c->close_pkt = atun_mem_malloc(c->mem, (size_t)n);
  if (c->close_pkt != NULL) {
    memcpy(c->close_pkt, buf, (size_t)n);
    c->close_pkt_len = (size_t)n;
  }
  c->state = ATUN_QUIC_STATE_CLOSING;
  c->close_deadline = closing_deadline(c, ts);
  path_out(c, path);
  report_closed(c);
  return n;
}

static ssize_t resend_close(atun_quic_conn *c, atun_quic_path *path, uint8_t *buf,
                            size_t cap) {
  if (!c->close_resend_due || c->close_pkt_len > cap) {
    return 0;
  }
  c->close_resend_due = 0;
  c->close_resends++;
  memcpy(buf, c->close_pkt, c->close_pkt_len);
  path_out(c, path);
  return (ssize_t)c->close_pkt_len;
}

/* Tells ngtcp2's pacer a burst went out. */
static void burst_end(atun_quic_conn *c, atun_tstamp ts) {
  if (c->burst > 0) {
    ngtcp2_conn_update_pkt_tx_time(c->ng, ts);
    c->burst = 0;
  }
}

/* Writes one packet, packing stream data of the ready streams round-robin.
 * ngtcp2 is called at most once per ready stream plus once to finish, so the
 * loop is bounded by the number of streams. */
static ngtcp2_ssize write_streams(atun_quic_conn *c, uint8_t *buf, size_t cap,
                                  atun_tstamp ts) {
  size_t budget = c->nready;
  qstream *s = c->ready_head;
  for (;;) {
    ngtcp2_vec vec[WRITE_NVEC];
    size_t nvec = 0;
    int fin = 0;
    int64_t id = -1;
    uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_NONE;
    if (s != NULL && budget > 0) {
      nvec = stream_vecs(s, vec, &fin);
      id = s->id;
      flags = NGTCP2_WRITE_STREAM_FLAG_MORE | (fin ? NGTCP2_WRITE_STREAM_FLAG_FIN : 0);
      budget--;
    } else {
      s = NULL;
    }
    ngtcp2_ssize ndatalen = -1;
    ngtcp2_ssize n = ngtcp2_conn_writev_stream(c->ng, &c->ps.path, NULL, buf, cap,
                                               &ndatalen, flags, id, vec, nvec, ts);
    qstream *next = s ? s->rnext : NULL;
    if (s != NULL && ndatalen >= 0) {
      stream_sent(c, s, (size_t)ndatalen, fin);
    }
    switch (n) {
    case NGTCP2_ERR_WRITE_MORE:
    case NGTCP2_ERR_STREAM_DATA_BLOCKED:
      s = next;
      continue;
    case NGTCP2_ERR_STREAM_SHUT_WR:
    case NGTCP2_ERR_STREAM_NOT_FOUND:
      s->write_shut = 1;
      ready_remove(c, s);
      s = next;
      continue;
    default:
      break;
    }
    if (n > 0 && s != NULL && s->in_ready) {
      ready_remove(c, s); /* to the back of the line */
      ready_add(c, s);
    }
    return n;
  }
}

ssize_t atun_quic_conn_write(atun_quic_conn *c, atun_quic_path *path, uint8_t *buf,
                             size_t cap, atun_tstamp ts) {
  if (c == NULL || buf == NULL || cap < ATUN_QUIC_DATAGRAM_MIN) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  switch (c->state) {
  case ATUN_QUIC_STATE_CLOSED:
  case ATUN_QUIC_STATE_DRAINING:
    return 0;
  case ATUN_QUIC_STATE_CLOSING:
    return resend_close(c, path, buf, cap);
  default:
    break;
  }
  if (c->close_pending) {
    return write_close(c, path, buf, cap, ts);
  }
  ngtcp2_ssize n = write_streams(c, buf, cap, ts);
  if (n < 0) {
    on_ng_error(c, (int)n, ts);
    return c->close_pending ? write_close(c, path, buf, cap, ts) : 0;
  }
  if (n == 0) {
    burst_end(c, ts);
    return 0;
  }
  if (++c->burst >= BURST_MAX) {
    burst_end(c, ts);
  }
  path_out(c, path);
  return n;
}

/* --- connection API ------------------------------------------------------- */

int atun_quic_conn_close(atun_quic_conn *c, uint64_t app_error, const char *reason) {
  if (c == NULL || app_error > NGTCP2_MAX_VARINT) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (c->close_pending || c->state >= ATUN_QUIC_STATE_CLOSING) {
    return ATUN_ERR_STATE;
  }
  schedule_close(c, 1, app_error, ATUN_QUIC_HS_OK, reason ? reason : "");
  return 0;
}

atun_quic_state atun_quic_conn_get_state(const atun_quic_conn *c) { return c->state; }

int atun_quic_conn_is_done(const atun_quic_conn *c) {
  return c->state == ATUN_QUIC_STATE_CLOSED;
}

atun_quic_role atun_quic_conn_get_role(const atun_quic_conn *c) { return c->role; }

void *atun_quic_conn_get_user_data(const atun_quic_conn *c) { return c->user_data; }

const atun_quic_peer *atun_quic_conn_get_peer(const atun_quic_conn *c) {
  return c->peer_known ? &c->peer : NULL;
}

size_t atun_quic_conn_get_cids(const atun_quic_conn *c, atun_quic_cid *out,
                               size_t max) {
  ngtcp2_cid scids[SCIDS_MAX];
  size_t n = 0, num = ngtcp2_conn_get_num_scid(c->ng);
  if (num <= SCIDS_MAX) {
    num = ngtcp2_conn_get_scid(c->ng, scids);
    for (size_t i = 0; i < num && n < max; ++i) {
      cid_to_public(&out[n++], &scids[i]);
    }
  }
  if (c->role == ATUN_QUIC_SERVER && n < max) {
    cid_to_public(&out[n++], &c->odcid);
  }
  return n;
}

uint64_t atun_quic_conn_get_rtt(const atun_quic_conn *c) {
  ngtcp2_conn_stat st;
  ngtcp2_conn_get_conn_stat(c->ng, &st);
  return st.smoothed_rtt;
}

int atun_quic_packet_dcid(const uint8_t *data, size_t len, atun_quic_cid *dcid) {
  if (data == NULL || dcid == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  ngtcp2_version_cid vc;
  int rv = ngtcp2_pkt_decode_version_cid(&vc, data, len, ATUN_QUIC_SCID_LEN);
  if (rv != 0 && rv != NGTCP2_ERR_VERSION_NEGOTIATION) {
    return ATUN_ERR_MALFORMED;
  }
  if (vc.dcidlen > ATUN_QUIC_CID_MAX) {
    return ATUN_ERR_MALFORMED;
  }
  dcid->len = vc.dcidlen;
  memcpy(dcid->data, vc.dcid, vc.dcidlen);
  return rv == 0 ? 0 : ATUN_ERR_VERSION;
}

/* --- stream API ----------------------------------------------------------- */

static int conn_usable(const atun_quic_conn *c) {
  return c->state < ATUN_QUIC_STATE_CLOSING && !c->close_pending;
}

int atun_quic_stream_open(atun_quic_conn *c, int64_t *stream_id, void *ud) {
  if (c == NULL || stream_id == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (c->state != ATUN_QUIC_STATE_ESTABLISHED || !conn_usable(c)) {
    return ATUN_ERR_STATE;
  }
  if (c->nlocal >= c->settings.max_streams_bidi) {
    return ATUN_ERR_FULL;
  }
  qstream *s = stream_new(c, -1, 1, ud);
  if (s == NULL) {
    return ATUN_ERR_NOMEM;
  }
  int rv = ngtcp2_conn_open_bidi_stream(c->ng, &s->id, s);
  if (rv != 0) {
    atun_mem_free(c->mem, s);
    return rv == NGTCP2_ERR_STREAM_ID_BLOCKED ? ATUN_ERR_WOULDBLOCK : ATUN_ERR_NOMEM;
  }
  stream_insert(c, s);
  *stream_id = s->id;
  return 0;
}

/* The stream |id| if it may still be written.  Returns 0 or an error. */
static int writable_stream(const atun_quic_conn *c, int64_t id, qstream **ps) {
  if (!conn_usable(c)) {
    return ATUN_ERR_STATE;
  }
  qstream *s = stream_find(c, id);
  if (s == NULL) {
    return ATUN_ERR_NOT_FOUND;
  }
  if (s->fin_queued || s->write_shut) {
    return ATUN_ERR_STATE;
  }
  *ps = s;
  return 0;
}

ssize_t atun_quic_stream_write(atun_quic_conn *c, int64_t id, const uint8_t *data,
                               size_t len, int fin) {
  qstream *s;
  if (c == NULL || (data == NULL && len > 0)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int rv = writable_stream(c, id, &s);
  if (rv != 0) {
    return rv;
  }
  size_t room = stream_room(c, s, 0);
  if (len > 0 && room == 0) {
    return ATUN_ERR_WOULDBLOCK;
  }
  size_t n = stream_append(c, s, data, len < room ? len : room);
  if (n == 0 && len > 0) {
    return ATUN_ERR_NOMEM;
  }
  if (fin && n == len) {
    s->fin_queued = 1;
  }
  if (n > 0 || s->fin_queued) {
    ready_add(c, s);
  }
  return (ssize_t)n;
}

ssize_t atun_quic_stream_writable(const atun_quic_conn *c, int64_t id) {
  qstream *s;
  if (c == NULL) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int rv = writable_stream(c, id, &s);
  return rv != 0 ? rv : (ssize_t)stream_room(c, s, conn_reserve(c));
}

int atun_quic_stream_consume(atun_quic_conn *c, int64_t id, size_t n) {
  if (c == NULL || n > c->rx_unconsumed) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  qstream *s = stream_find(c, id);
  if (s != NULL && n > s->rx_unconsumed) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (s != NULL) {
    s->rx_unconsumed -= n;
  }
  c->rx_unconsumed -= n;
  if (!conn_usable(c)) {
    return 0; /* credit no longer matters */
  }
  ngtcp2_conn_extend_max_offset(c->ng, n);
  if (s != NULL && ngtcp2_conn_extend_max_stream_offset(c->ng, id, n) != 0) {
    return ATUN_ERR_NOMEM;
  }
  return 0;
}

int atun_quic_stream_shutdown(atun_quic_conn *c, int64_t id, uint64_t app_error) {
  if (c == NULL || app_error > NGTCP2_MAX_VARINT) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (!conn_usable(c)) {
    return ATUN_ERR_STATE;
  }
  qstream *s = stream_find(c, id);
  if (s == NULL) {
    return ATUN_ERR_NOT_FOUND;
  }
  int rv = ngtcp2_conn_shutdown_stream(c->ng, id, app_error);
  if (rv != 0) {
    return rv == NGTCP2_ERR_NOMEM ? ATUN_ERR_NOMEM : ATUN_ERR_STATE;
  }
  /* Buffers stay until stream_close: ngtcp2 may still point into them. */
  s->write_shut = 1;
  ready_remove(c, s);
  return 0;
}

int atun_quic_stream_set_user_data(atun_quic_conn *c, int64_t id, void *ud) {
  qstream *s = c ? stream_find(c, id) : NULL;
  if (s == NULL) {
    return ATUN_ERR_NOT_FOUND;
  }
  s->user_data = ud;
  return 0;
}
