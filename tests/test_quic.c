/*
 * The QUIC connection object, client and server wired back to back in
 * memory: a virtual clock, a fixed one-way delay, and bounded loops.
 *
 * Certificates are made here with wolfCrypt (P-256, the agent id in a URI
 * SAN) once per test process: a CA, the gateway, an agent, an agent of
 * another CA, an expired agent and an agent without an id.
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quic.h"
#include "support.h"

/* --- certificates --------------------------------------------------------- */

#define AGENT_ID "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
#define AGENT_URI "atun://agent/" AGENT_ID

typedef struct ident {
  ecc_key key;
  uint8_t key_der[256];
  int key_len;
  uint8_t cert[2048];
  int cert_len;
} ident;

static struct {
  int ready;
  WC_RNG rng;
  ident ca, server, client, rogue_ca, rogue_client, expired, noid, badid, twoids, upper;
} K;

typedef struct cert_opts {
  const char *cn;
  const char *uri;  /* URI SAN or NULL */
  const char *uri2; /* a second one */
  int is_ca;
  int expired;
} cert_opts;

/* GeneralNames of uniformResourceIdentifiers: SEQUENCE { [6] uri ... }. */
static int uri_san(uint8_t *out, const char *uri, const char *uri2) {
  size_t len = 2;
  const char *uris[2] = {uri, uri2};
  for (int i = 0; i < 2 && uris[i]; ++i) {
    size_t n = strlen(uris[i]);
    cr_assert(n < 60);
    out[len++] = 0x86;
    out[len++] = (uint8_t)n;
    memcpy(out + len, uris[i], n);
    len += n;
  }
  out[0] = 0x30;
  out[1] = (uint8_t)(len - 2);
  return (int)len;
}

static void set_dates(Cert *c, const char *before, const char *after) {
  c->beforeDate[0] = 0x17; /* UTCTime */
  c->beforeDate[1] = 13;
  memcpy(c->beforeDate + 2, before, 13);
  c->beforeDateSz = 15;
  c->afterDate[0] = 0x17;
  c->afterDate[1] = 13;
  memcpy(c->afterDate + 2, after, 13);
  c->afterDateSz = 15;
}

/* Makes |id| a key and a certificate signed by |issuer| (NULL: itself). */
static void make_ident(ident *id, const ident *issuer, const cert_opts *o) {
  cr_assert_eq(wc_ecc_init(&id->key), 0);
  cr_assert_eq(wc_ecc_make_key(&K.rng, 32, &id->key), 0);
  id->key_len = wc_EccPrivateKeyToDer(&id->key, id->key_der, sizeof(id->key_der));
  cr_assert_gt(id->key_len, 0);
  Cert c;
  cr_assert_eq(wc_InitCert(&c), 0);
  snprintf(c.subject.commonName, CTC_NAME_SIZE, "%s", o->cn);
  snprintf(c.subject.org, CTC_NAME_SIZE, "atun tests");
  c.sigType = CTC_SHA256wECDSA;
  c.daysValid = 30;
  c.isCA = o->is_ca;
  if (o->uri) {
    c.altNamesSz = uri_san(c.altNames, o->uri, o->uri2);
  }
  if (o->expired) {
    set_dates(&c, "200101000000Z", "210101000000Z");
  }
  if (issuer) {
    cr_assert_eq(wc_SetIssuerBuffer(&c, issuer->cert, issuer->cert_len), 0);
  }
  cr_assert_gt(wc_MakeCert(&c, id->cert, sizeof(id->cert), NULL, &id->key, &K.rng), 0);
  ecc_key *signer = issuer ? (ecc_key *)&issuer->key : &id->key;
  id->cert_len = wc_SignCert(c.bodySz, c.sigType, id->cert, sizeof(id->cert), NULL,
                             signer, &K.rng);
  cr_assert_gt(id->cert_len, 0, "sign %s: %d", o->cn, id->cert_len);
}

static void keys_init(void) {
  if (K.ready) {
    return;
  }
  cr_assert_eq(wc_InitRng(&K.rng), 0);
  make_ident(&K.ca, NULL, &(cert_opts){.cn = "atun test CA", .is_ca = 1});
  make_ident(&K.server, &K.ca, &(cert_opts){.cn = "gateway.test"});
  make_ident(&K.client, &K.ca, &(cert_opts){.cn = "agent-one", .uri = AGENT_URI});
  make_ident(&K.rogue_ca, NULL, &(cert_opts){.cn = "rogue CA", .is_ca = 1});
  make_ident(&K.rogue_client, &K.rogue_ca,
             &(cert_opts){.cn = "agent-one", .uri = AGENT_URI});
  make_ident(&K.expired, &K.ca,
             &(cert_opts){.cn = "agent-old", .uri = AGENT_URI, .expired = 1});
  make_ident(&K.noid, &K.ca, &(cert_opts){.cn = "agent-noid"});
  make_ident(&K.badid, &K.ca,
             &(cert_opts){.cn = "agent-bad",
                          .uri = "atun://agent/0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0fz"});
  make_ident(&K.twoids, &K.ca,
             &(cert_opts){.cn = "agent-two",
                          .uri = AGENT_URI,
                          .uri2 = "atun://agent/11111111-2222-4333-8444-555555555555"});
  make_ident(&K.upper, &K.ca,
             &(cert_opts){.cn = "agent-upper",
                          .uri = "atun://agent/0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9",
                          .uri2 = "https://example.test/other"});
  K.ready = 1;
}

static atun_quic_tls *tls_server(const ident *ca) {
  atun_quic_tls *t = NULL;
  atun_quic_tls_config cfg = {.ca = ca->cert,
                              .ca_len = (size_t)ca->cert_len,
                              .cert = K.server.cert,
                              .cert_len = (size_t)K.server.cert_len,
                              .key = K.server.key_der,
                              .key_len = (size_t)K.server.key_len};
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &cfg, atun_mem_default()), 0);
  return t;
}

/* A client context presenting |who| (NULL: no certificate). */
static atun_quic_tls *tls_client(const ident *who, const uint8_t *pin,
                                 const char *alpn) {
  atun_quic_tls *t = NULL;
  atun_quic_tls_config cfg = {.ca = K.ca.cert,
                              .ca_len = (size_t)K.ca.cert_len,
                              .server_spki_sha256 = pin,
                              .alpn = alpn};
  if (who) {
    cfg.cert = who->cert;
    cfg.cert_len = (size_t)who->cert_len;
    cfg.key = who->key_der;
    cfg.key_len = (size_t)who->key_len;
  }
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_CLIENT, &cfg, atun_mem_default()), 0);
  return t;
}

/* --- the in-memory pair ---------------------------------------------------------- */

#define DELAY_NS (5 * ATUN_NS_PER_MS)
#define QUEUE_MAX 8192
#define RX_MAX 65536
#define WRITES_PER_STEP 4096

typedef struct dgram {
  atun_tstamp at;
  size_t len;
  uint8_t data[ATUN_QUIC_DATAGRAM_MAX];
} dgram;

struct pair;

typedef struct side {
  struct pair *p;
  atun_quic_conn *conn;
  atun_quic_path path; /* as this side sees it */
  dgram *q;            /* datagrams travelling to this side */
  size_t qhead, qlen;
  int drop_input; /* lose every datagram to this side */
  int hs_done, closed;
  atun_quic_close_info close;
  atun_tstamp closed_at;
  int64_t opened_sid;
  int nopened, nreset, nstream_closed, stream_closed_err_set;
  uint64_t reset_code, stream_closed_err;
  uint64_t acked;
  uint8_t rx[RX_MAX];
  size_t rx_len;
  size_t rx_total; /* every byte delivered, also those not kept in rx */
  int rx_fin;
  int manual_consume;   /* 0: consume at once */
  int fail_stream_data; /* stream_data returns an error */
  size_t ncids_added;
  uint16_t sent_to_port; /* remote port of the last datagram written */
  int fail_hs;           /* handshake_completed returns an error */
} side;

typedef struct pair {
  atun_quic_tls *ctls, *stls;
  atun_quic_settings cset, sset;
  const atun_mem *cmem, *smem;
  side c, s;
  atun_tstamp now;
  atun_testrng crng, srng;
  int verify_rv, verify_calls;
  atun_quic_peer seen_peer;
  void (*tick)(struct pair *);
  void *app;
  size_t dropped;
  int pinged, ponged;                          /* allocation-failure runs */
  const atun_quic_callbacks *server_callbacks; /* NULL: test_callbacks */
} pair;

static side *side_of(void *ud) { return ud; }

static int cb_peer_verify(atun_quic_conn *conn, const atun_quic_peer *peer, void *ud) {
  pair *p = side_of(ud)->p;
  (void)conn;
  p->verify_calls++;
  p->seen_peer = *peer;
  return p->verify_rv;
}

static int cb_hs(atun_quic_conn *conn, void *ud) {
  (void)conn;
  side_of(ud)->hs_done = 1;
  return side_of(ud)->fail_hs ? -1 : 0;
}

static int cb_stream_open(atun_quic_conn *conn, int64_t sid, void *ud) {
  (void)conn;
  side_of(ud)->opened_sid = sid;
  side_of(ud)->nopened++;
  return 0;
}

static int cb_stream_data(atun_quic_conn *conn, int64_t sid, const uint8_t *data,
                          size_t len, int fin, void *ud, void *sud);

static int cb_stream_reset(atun_quic_conn *conn, int64_t sid, uint64_t err, void *ud,
                           void *sud) {
  (void)conn;
  (void)sid;
  (void)sud;
  side_of(ud)->nreset++;
  side_of(ud)->reset_code = err;
  return 0;
}

static int cb_acked(atun_quic_conn *conn, int64_t sid, size_t n, void *ud, void *sud) {
  (void)conn;
  (void)sid;
  (void)sud;
  side_of(ud)->acked += n;
  return 0;
}

static int cb_stream_closed(atun_quic_conn *conn, int64_t sid, int has_error,
                            uint64_t err, void *ud, void *sud) {
  side *x = side_of(ud);
  (void)conn;
  (void)sid;
  (void)sud;
  x->nstream_closed++;
  x->stream_closed_err_set = has_error;
  x->stream_closed_err = err;
  return 0;
}

static void cb_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                      void *ud) {
  side *x = side_of(ud);
  (void)conn;
  x->closed++;
  x->close = *info;
  x->closed_at = x->p->now;
}

static void cb_cid_added(atun_quic_conn *conn, const atun_quic_cid *cid, void *ud) {
  (void)conn;
  cr_assert_eq(cid->len, ATUN_QUIC_SCID_LEN);
  side_of(ud)->ncids_added++;
}

static const atun_quic_callbacks test_callbacks = {
    .peer_verify = cb_peer_verify,
    .handshake_completed = cb_hs,
    .stream_open = cb_stream_open,
    .stream_data = cb_stream_data,
    .stream_reset = cb_stream_reset,
    .stream_acked = cb_acked,
    .stream_closed = cb_stream_closed,
    .connection_closed = cb_closed,
    .cid_added = cb_cid_added,
};

typedef struct echo_app echo_app;
static int echo_on_data(pair *p, side *x, int64_t sid, const uint8_t *data, size_t len,
                        int fin);

static int cb_stream_data(atun_quic_conn *conn, int64_t sid, const uint8_t *data,
                          size_t len, int fin, void *ud, void *sud) {
  side *x = side_of(ud);
  (void)sud;
  if (x->fail_stream_data) {
    return -1;
  }
  if (x->p->app) {
    return echo_on_data(x->p, x, sid, data, len, fin);
  }
  x->rx_total += len;
  if (len > 0 && x->rx_len + len <= sizeof(x->rx)) {
    memcpy(x->rx + x->rx_len, data, len);
    x->rx_len += len;
  }
  x->rx_fin |= fin;
  if (!x->manual_consume) {
    cr_assert_eq(atun_quic_stream_consume(conn, sid, len), 0);
  }
  return 0;
}

static atun_quic_endpoint ep(uint8_t last, uint16_t port) {
  atun_quic_endpoint e = {.addr = {.family = ATUN_AF_INET, .bytes = {192, 0, 2, last}},
                          .port = port};
  return e;
}

static void pair_init(pair *p) {
  keys_init();
  memset(p, 0, sizeof(*p));
  atun_quic_settings_default(&p->cset);
  atun_quic_settings_default(&p->sset);
  p->cmem = p->smem = atun_mem_default();
  p->c.p = p;
  p->s.p = p;
  p->c.path = (atun_quic_path){.local = ep(10, 40000), .remote = ep(1, 4433)};
  p->s.path = (atun_quic_path){.local = ep(1, 4433), .remote = ep(10, 40000)};
  p->c.q = calloc(QUEUE_MAX, sizeof(dgram));
  p->s.q = calloc(QUEUE_MAX, sizeof(dgram));
  cr_assert(p->c.q && p->s.q);
  p->now = 1000 * ATUN_NS_PER_S;
  atun_testrng_seed(&p->crng, 1);
  atun_testrng_seed(&p->srng, 2);
}

static atun_quic_conn_config conn_config(pair *p, side *x) {
  int server = x == &p->s;
  atun_quic_conn_config cfg = {
      .tls = server ? p->stls : p->ctls,
      .settings = server ? &p->sset : &p->cset,
      .callbacks =
          server && p->server_callbacks ? p->server_callbacks : &test_callbacks,
      .user_data = x,
      .mem = server ? p->smem : p->cmem,
      .rand = atun_testrng_as_rand(server ? &p->srng : &p->crng),
  };
  return cfg;
}

/* Starts a pair: the given client context, a server trusting |server_ca|. */
static void pair_start(pair *p, atun_quic_tls *ctls, const ident *server_ca) {
  p->ctls = ctls;
  p->stls = tls_server(server_ca);
  atun_quic_conn_config cfg = conn_config(p, &p->c);
  cr_assert_eq(atun_quic_conn_client_new(&p->c.conn, &cfg, &p->c.path, p->now), 0);
}

static void pair_free(pair *p) {
  atun_quic_conn_del(p->c.conn);
  atun_quic_conn_del(p->s.conn);
  atun_quic_tls_del(p->ctls);
  atun_quic_tls_del(p->stls);
  free(p->c.q);
  free(p->s.q);
}

static void push(pair *p, side *to, const uint8_t *data, size_t len) {
  if (to->drop_input || to->qlen == QUEUE_MAX) {
    p->dropped += !to->drop_input;
    return;
  }
  dgram *d = &to->q[(to->qhead + to->qlen++) % QUEUE_MAX];
  d->at = p->now + DELAY_NS;
  d->len = len;
  memcpy(d->data, data, len);
}

static void deliver(pair *p, side *x) {
  while (x->qlen > 0 && x->q[x->qhead].at <= p->now) {
    dgram *d = &x->q[x->qhead];
    if (x->conn == NULL) {
      atun_quic_conn_config cfg = conn_config(p, x);
      int rv = atun_quic_conn_server_accept(&x->conn, &cfg, &x->path, d->data, d->len,
                                            p->now);
      cr_assert(rv == 0 || rv == ATUN_ERR_NOMEM, "accept: %d", rv);
    } else {
      int rv = atun_quic_conn_read(x->conn, &x->path, d->data, d->len, p->now);
      cr_assert(rv == 0 || rv == ATUN_ERR_CLOSED, "read: %d", rv);
    }
    x->qhead = (x->qhead + 1) % QUEUE_MAX;
    x->qlen--;
  }
}

static void flush(pair *p, side *x, side *to) {
  uint8_t buf[ATUN_QUIC_DATAGRAM_MAX];
  if (x->conn == NULL) {
    return;
  }
  if (atun_quic_conn_get_expiry(x->conn) <= p->now) {
    cr_assert_eq(atun_quic_conn_handle_expiry(x->conn, p->now), 0);
  }
  for (int i = 0; i < WRITES_PER_STEP; ++i) {
    atun_quic_path path;
    ssize_t n = atun_quic_conn_write(x->conn, &path, buf, sizeof(buf), p->now);
    cr_assert_geq(n, 0);
    if (n == 0) {
      return;
    }
    x->sent_to_port = path.remote.port;
    push(p, to, buf, (size_t)n);
  }
}

static atun_tstamp next_event(pair *p) {
  atun_tstamp t = ATUN_TSTAMP_MAX;
  side *sides[2] = {&p->c, &p->s};
  for (int i = 0; i < 2; ++i) {
    side *x = sides[i];
    if (x->qlen > 0 && x->q[x->qhead].at < t) {
      t = x->q[x->qhead].at;
    }
    if (x->conn && atun_quic_conn_get_expiry(x->conn) < t) {
      t = atun_quic_conn_get_expiry(x->conn);
    }
  }
  return t;
}

/* Runs until |done| holds or nothing is left to do before |until|; at most
 * |steps| steps.  Returns |done|'s final verdict. */
static int pump(pair *p, int (*done)(pair *), atun_tstamp until, long steps) {
  for (long i = 0; i < steps; ++i) {
    deliver(p, &p->c);
    deliver(p, &p->s);
    if (p->tick) {
      p->tick(p);
    }
    flush(p, &p->c, &p->s);
    flush(p, &p->s, &p->c);
    if (done && done(p)) {
      return 1;
    }
    atun_tstamp t = next_event(p);
    if (t == ATUN_TSTAMP_MAX || t > until) {
      break;
    }
    p->now = t > p->now ? t : p->now + 1000;
  }
  return done ? done(p) : 0;
}

static int both_hs(pair *p) { return p->c.hs_done && p->s.hs_done; }
static int both_closed(pair *p) { return p->c.closed && p->s.closed; }
static int both_done(pair *p) {
  return p->c.conn && p->s.conn && atun_quic_conn_is_done(p->c.conn) &&
         atun_quic_conn_is_done(p->s.conn);
}

static void handshake(pair *p) {
  atun_tstamp t0 = p->now;
  cr_assert(pump(p, both_hs, t0 + ATUN_NS_PER_S, 1000), "handshake");
  cr_assert_eq(atun_quic_conn_get_state(p->c.conn), ATUN_QUIC_STATE_ESTABLISHED);
  cr_assert_eq(atun_quic_conn_get_state(p->s.conn), ATUN_QUIC_STATE_ESTABLISHED);
  /* Let the HANDSHAKE_DONE and the last ACKs land. */
  pump(p, NULL, p->now + 100 * ATUN_NS_PER_MS, 1000);
}

static void pair_up(pair *p) {
  pair_init(p);
  pair_start(p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(p);
}

/* Runs a refused handshake and checks both ends saw it within a second of
 * virtual time. */
static void expect_refused(pair *p, atun_quic_hs_failure server_says,
                           atun_quic_hs_failure client_says) {
  atun_tstamp t0 = p->now;
  cr_assert(pump(p, both_closed, t0 + 10 * ATUN_NS_PER_S, 10000), "both closed");
  cr_assert_eq(p->s.close.hs_failure, server_says, "server: %s",
               atun_quic_hs_failure_name(p->s.close.hs_failure));
  cr_assert_eq(p->c.close.hs_failure, client_says, "client: %s",
               atun_quic_hs_failure_name(p->c.close.hs_failure));
  cr_assert_lt(p->s.closed_at - t0, ATUN_NS_PER_S);
  cr_assert_lt(p->c.closed_at - t0, ATUN_NS_PER_S);
  cr_assert_eq(p->c.closed, 1);
  cr_assert_eq(p->s.closed, 1);
  cr_assert_eq(p->s.nopened, 0, "a refused client never reaches the application");
  cr_assert(pump(p, both_done, t0 + 30 * ATUN_NS_PER_S, 10000), "closing periods end");
}

/* --- TLS context ---------------------------------------------------------- */

Test(quic_tls, server_requires_ca_cert_and_key) {
  keys_init();
  atun_quic_tls *t = NULL;
  const atun_mem *mem = atun_mem_default();
  atun_quic_tls_config ok = {.ca = K.ca.cert,
                             .ca_len = (size_t)K.ca.cert_len,
                             .cert = K.server.cert,
                             .cert_len = (size_t)K.server.cert_len,
                             .key = K.server.key_der,
                             .key_len = (size_t)K.server.key_len};
  atun_quic_tls_config c = ok;
  c.ca = NULL;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c = ok;
  c.ca_len = 0;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c = ok;
  c.cert = NULL;
  c.key = NULL;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c = ok;
  c.key = NULL;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c = ok;
  c.key = K.client.key_der; /* not the certificate's key */
  c.key_len = (size_t)K.client.key_len;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c = ok;
  c.ca = (const uint8_t *)"not a certificate";
  c.ca_len = 17;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c = ok;
  c.server_spki_sha256 = K.server.cert; /* a pin is the client's business */
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c = ok;
  c.alpn = "atun/2,h3";
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  c.alpn = "";
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_tls_new(&t, (atun_quic_role)7, &ok, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, NULL, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &ok, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_null(t);
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &ok, mem), 0);
  atun_quic_tls_del(t);
  atun_quic_tls_del(NULL);
}

Test(quic_tls, client_needs_ca_and_accepts_pem) {
  keys_init();
  atun_quic_tls *t = NULL;
  const atun_mem *mem = atun_mem_default();
  atun_quic_tls_config c = {0};
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_CLIENT, &c, mem),
               ATUN_ERR_INVALID_ARGUMENT);
  uint8_t pem[4096];
  int n = wc_DerToPem(K.ca.cert, (word32)K.ca.cert_len, pem, sizeof(pem), CERT_TYPE);
  cr_assert_gt(n, 0);
  c.ca = pem;
  c.ca_len = (size_t)n;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_CLIENT, &c, mem), 0);
  atun_quic_tls_del(t);
}

Test(quic_tls, allocation_failure) {
  keys_init();
  atun_failmem fm;
  atun_failmem_init(&fm, 0);
  atun_quic_tls *t = NULL;
  atun_quic_tls_config c = {.ca = K.ca.cert, .ca_len = (size_t)K.ca.cert_len};
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_CLIENT, &c, &fm.mem), ATUN_ERR_NOMEM);
  cr_assert_eq(fm.live, 0);
}

Test(quic_tls, spki_pin_is_the_hash_of_the_public_key_info) {
  keys_init();
  uint8_t spki[256], want[32], got[32];
  int n = wc_EccPublicKeyToDer(&K.server.key, spki, sizeof(spki), 1);
  cr_assert_gt(n, 0);
  cr_assert_eq(wc_Sha256Hash(spki, (word32)n, want), 0);
  cr_assert_eq(atun_quic_spki_sha256(K.server.cert, (size_t)K.server.cert_len, got), 0);
  cr_assert_arr_eq(got, want, 32);
  cr_assert_eq(atun_quic_spki_sha256(K.server.cert, 40, got), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_quic_spki_sha256((const uint8_t *)"\x30\x03\x02\x01\x01", 5, got),
               ATUN_ERR_MALFORMED);
  cr_assert_eq(
      atun_quic_spki_sha256((const uint8_t *)"\x30\x84\xff\xff\xff\xff", 6, got),
      ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_quic_spki_sha256(NULL, 0, got), ATUN_ERR_INVALID_ARGUMENT);
}

Test(quic_tls, failure_names) {
  cr_assert_str_eq(atun_quic_hs_failure_name(ATUN_QUIC_HS_UNKNOWN_CA), "unknown_ca");
  cr_assert_str_eq(atun_quic_hs_failure_name(ATUN_QUIC_HS_PIN_MISMATCH),
                   "pin_mismatch");
  cr_assert_str_eq(atun_quic_hs_failure_name(ATUN_QUIC_HS_REVOKED), "revoked");
  cr_assert_str_eq(atun_quic_hs_failure_name(ATUN_QUIC_HS_EXPIRED), "expired");
  cr_assert_str_eq(atun_quic_hs_failure_name(ATUN_QUIC_HS_ALPN_MISMATCH),
                   "alpn_mismatch");
  cr_assert_str_eq(atun_quic_hs_failure_name(ATUN_QUIC_HS_OK), "ok");
  cr_assert_str_eq(atun_quic_hs_failure_name((atun_quic_hs_failure)99), "unknown");
}

/* --- handshake ------------------------------------------------------------ */

Test(quic_handshake, completes_and_server_sees_the_agent) {
  pair p;
  pair_up(&p);
  cr_assert_eq(p.verify_calls, 1);
  cr_assert_str_eq(p.seen_peer.agent_id, AGENT_ID);
  cr_assert_str_eq(p.seen_peer.cn, "agent-one");
  uint8_t fp[32];
  wc_Sha256Hash(K.client.cert, (word32)K.client.cert_len, fp);
  cr_assert_arr_eq(p.seen_peer.cert_sha256, fp, 32);
  const atun_quic_peer *sp = atun_quic_conn_get_peer(p.c.conn);
  cr_assert_not_null(sp);
  cr_assert_str_eq(sp->cn, "gateway.test");
  cr_assert_str_eq(sp->agent_id, "");
  cr_assert_eq(atun_quic_conn_get_role(p.s.conn), ATUN_QUIC_SERVER);
  cr_assert_eq(atun_quic_conn_get_role(p.c.conn), ATUN_QUIC_CLIENT);
  cr_assert_eq(atun_quic_conn_get_user_data(p.s.conn), &p.s);
  uint64_t rtt = atun_quic_conn_get_rtt(p.c.conn);
  cr_assert(rtt >= 2 * DELAY_NS && rtt < 4 * DELAY_NS, "rtt %lu", (unsigned long)rtt);
  cr_assert_eq(p.dropped, 0);
  pair_free(&p);
}

Test(quic_handshake, matching_pin_accepted) {
  pair p;
  pair_init(&p);
  uint8_t pin[32];
  cr_assert_eq(atun_quic_spki_sha256(K.server.cert, (size_t)K.server.cert_len, pin), 0);
  pair_start(&p, tls_client(&K.client, pin, NULL), &K.ca);
  handshake(&p);
  pair_free(&p);
}

Test(quic_handshake, wrong_pin_refused_by_client) {
  pair p;
  pair_init(&p);
  uint8_t pin[32] = {1, 2, 3};
  pair_start(&p, tls_client(&K.client, pin, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_BAD_CERTIFICATE, ATUN_QUIC_HS_PIN_MISMATCH);
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_LOCAL);
  cr_assert_eq(p.s.close.source, ATUN_QUIC_CLOSE_PEER);
  cr_assert_eq(p.c.hs_done, 0);
  cr_assert_eq(p.verify_calls, 0);
  pair_free(&p);
}

Test(quic_handshake, client_cert_of_another_ca_refused) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.rogue_client, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_UNKNOWN_CA, ATUN_QUIC_HS_UNKNOWN_CA);
  cr_assert_eq(p.s.close.source, ATUN_QUIC_CLOSE_LOCAL);
  cr_assert_eq(p.s.close.app, 0);
  cr_assert_eq(p.s.close.error_code, 0x100 + 48);
  cr_assert_str_eq(p.s.close.reason, "unknown_ca");
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_PEER);
  cr_assert_eq(p.c.close.error_code, 0x100 + 48);
  cr_assert_eq(p.verify_calls, 0);
  pair_free(&p);
}

Test(quic_handshake, expired_client_cert_refused) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.expired, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_EXPIRED, ATUN_QUIC_HS_EXPIRED);
  pair_free(&p);
}

Test(quic_handshake, missing_client_cert_refused) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(NULL, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_NO_CERTIFICATE, ATUN_QUIC_HS_NO_CERTIFICATE);
  pair_free(&p);
}

Test(quic_handshake, client_cert_without_agent_id_refused) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.noid, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_BAD_CERTIFICATE, ATUN_QUIC_HS_BAD_CERTIFICATE);
  cr_assert_eq(p.c.close.app, 1);
  cr_assert_eq(p.c.close.error_code, ATUN_QUIC_ERR_IDENTITY);
  cr_assert_eq(p.verify_calls, 0);
  pair_free(&p);
}

Test(quic_handshake, alpn_mismatch_refused) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.client, NULL, "atun/9"), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_ALPN_MISMATCH, ATUN_QUIC_HS_ALPN_MISMATCH);
  pair_free(&p);
}

Test(quic_handshake, revocation_hook_refuses) {
  pair p;
  pair_init(&p);
  p.verify_rv = ATUN_ERR_REVOKED;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_REVOKED, ATUN_QUIC_HS_REVOKED);
  cr_assert_eq(p.verify_calls, 1);
  cr_assert_str_eq(p.seen_peer.agent_id, AGENT_ID);
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_PEER);
  cr_assert_eq(p.c.close.app, 1);
  cr_assert_eq(p.c.close.error_code, ATUN_QUIC_ERR_REVOKED);
  cr_assert_str_eq(p.c.close.reason, "revoked");
  cr_assert_eq(p.s.hs_done, 0);
  pair_free(&p);
}

Test(quic_handshake, hook_denial_is_an_identity_refusal) {
  pair p;
  pair_init(&p);
  p.verify_rv = ATUN_ERR_DENIED;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_BAD_CERTIFICATE, ATUN_QUIC_HS_BAD_CERTIFICATE);
  cr_assert_eq(p.c.close.error_code, ATUN_QUIC_ERR_IDENTITY);
  pair_free(&p);
}

Test(quic_handshake, times_out_without_server) {
  pair p;
  pair_init(&p);
  p.cset.handshake_timeout_ns = 3 * ATUN_NS_PER_S;
  p.s.drop_input = 1;
  atun_tstamp t0 = p.now;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  cr_assert(pump(&p, NULL, t0 + 60 * ATUN_NS_PER_S, 10000) == 0);
  cr_assert_eq(p.c.closed, 1);
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_TIMEOUT);
  cr_assert_eq(p.c.close.hs_failure, ATUN_QUIC_HS_TIMEOUT);
  cr_assert(p.c.closed_at - t0 >= 3 * ATUN_NS_PER_S);
  cr_assert(p.c.closed_at - t0 < 4 * ATUN_NS_PER_S);
  cr_assert(atun_quic_conn_is_done(p.c.conn));
  uint8_t buf[ATUN_QUIC_DATAGRAM_MAX];
  cr_assert_eq(atun_quic_conn_read(p.c.conn, &p.c.path, buf, 10, p.now),
               ATUN_ERR_CLOSED);
  cr_assert_eq(atun_quic_conn_write(p.c.conn, NULL, buf, sizeof(buf), p.now), 0);
  cr_assert_eq(atun_quic_conn_get_expiry(p.c.conn), ATUN_TSTAMP_MAX);
  pair_free(&p);
}

Test(quic_handshake, accept_refuses_garbage) {
  keys_init();
  pair p;
  pair_init(&p);
  p.stls = tls_server(&K.ca);
  atun_quic_conn *c = NULL;
  atun_quic_conn_config cfg = conn_config(&p, &p.s);
  uint8_t junk[1200] = {0x40, 1, 2, 3};
  cr_assert_eq(
      atun_quic_conn_server_accept(&c, &cfg, &p.s.path, junk, sizeof(junk), p.now),
      ATUN_ERR_MALFORMED);
  /* A long header Initial of an unknown version, padded to 1200 bytes. */
  uint8_t vn[1200] = {0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0};
  int rv = atun_quic_conn_server_accept(&c, &cfg, &p.s.path, vn, sizeof(vn), p.now);
  cr_assert(rv == ATUN_ERR_MALFORMED || rv == ATUN_ERR_VERSION, "%d", rv);
  cr_assert_null(c);
  atun_quic_cid dcid;
  cr_assert_eq(atun_quic_packet_dcid(vn, sizeof(vn), &dcid), ATUN_ERR_VERSION);
  cr_assert_eq(dcid.len, 8);
  cr_assert_eq(atun_quic_packet_dcid(junk, 3, &dcid), ATUN_ERR_MALFORMED);
  cr_assert_eq(atun_quic_packet_dcid(NULL, 3, &dcid), ATUN_ERR_INVALID_ARGUMENT);
  cfg.tls = NULL;
  cr_assert_eq(
      atun_quic_conn_server_accept(&c, &cfg, &p.s.path, junk, sizeof(junk), p.now),
      ATUN_ERR_INVALID_ARGUMENT);
  pair_free(&p);
}

Test(quic_handshake, config_is_checked) {
  pair p;
  pair_init(&p);
  p.ctls = tls_client(&K.client, NULL, NULL);
  p.stls = tls_server(&K.ca);
  atun_quic_conn *c = NULL;
  atun_quic_conn_config cfg = conn_config(&p, &p.c);
  cfg.tls = p.stls; /* a server context for a client */
  cr_assert_eq(atun_quic_conn_client_new(&c, &cfg, &p.c.path, p.now),
               ATUN_ERR_INVALID_ARGUMENT);
  cfg = conn_config(&p, &p.c);
  atun_quic_settings s = p.cset;
  s.max_udp_payload = 1000;
  cfg.settings = &s;
  cr_assert_eq(atun_quic_conn_client_new(&c, &cfg, &p.c.path, p.now),
               ATUN_ERR_INVALID_ARGUMENT);
  s = p.cset;
  s.stream_window_max = s.stream_window_initial - 1;
  cr_assert_eq(atun_quic_conn_client_new(&c, &cfg, &p.c.path, p.now),
               ATUN_ERR_INVALID_ARGUMENT);
  s = p.cset;
  s.max_streams_bidi = 65537;
  cr_assert_eq(atun_quic_conn_client_new(&c, &cfg, &p.c.path, p.now),
               ATUN_ERR_INVALID_ARGUMENT);
  s = p.cset;
  s.idle_timeout_ns = 0;
  cr_assert_eq(atun_quic_conn_client_new(&c, &cfg, &p.c.path, p.now),
               ATUN_ERR_INVALID_ARGUMENT);
  cfg = conn_config(&p, &p.c);
  atun_quic_path bad = p.c.path;
  bad.remote.addr.family = 0;
  cr_assert_eq(atun_quic_conn_client_new(&c, &cfg, &bad, p.now),
               ATUN_ERR_INVALID_ARGUMENT);
  cfg.settings = NULL; /* defaults */
  cr_assert_eq(atun_quic_conn_client_new(&c, &cfg, &p.c.path, p.now), 0);
  uint8_t buf[ATUN_QUIC_DATAGRAM_MAX];
  cr_assert_eq(atun_quic_conn_write(c, NULL, buf, 1199, p.now),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_conn_read(c, &bad, buf, 10, p.now), ATUN_ERR_INVALID_ARGUMENT);
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(c, &sid, NULL), ATUN_ERR_STATE);
  cr_assert_eq(atun_quic_conn_get_peer(c), NULL);
  atun_quic_conn_del(c);
  pair_free(&p);
}

Test(quic_handshake, ipv6_path) {
  pair p;
  pair_init(&p);
  atun_quic_endpoint a = {
      .addr = {.family = ATUN_AF_INET6, .bytes = {0x20, 0x01, 0xd, 0xb8}},
      .port = 5000};
  atun_quic_endpoint b = a;
  b.addr.bytes[15] = 1;
  b.port = 4433;
  p.c.path = (atun_quic_path){.local = a, .remote = b};
  p.s.path = (atun_quic_path){.local = b, .remote = a};
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  pair_free(&p);
}

Test(quic_handshake, server_cids_route_client_datagrams) {
  pair p;
  pair_up(&p);
  atun_quic_cid cids[ATUN_QUIC_CIDS_MAX];
  size_t n = atun_quic_conn_get_cids(p.s.conn, cids, ATUN_QUIC_CIDS_MAX);
  cr_assert_geq(n, 2);
  cr_assert_eq(n, p.s.ncids_added + 2, "issued ids + initial id + original dcid");
  cr_assert_eq(atun_quic_conn_get_cids(p.s.conn, cids, 1), 1);
  /* The client's next datagram carries one of them. */
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"x", 1, 0), 1);
  uint8_t buf[ATUN_QUIC_DATAGRAM_MAX];
  ssize_t len = atun_quic_conn_write(p.c.conn, NULL, buf, sizeof(buf), p.now);
  cr_assert_gt(len, 0);
  atun_quic_cid dcid;
  cr_assert_eq(atun_quic_packet_dcid(buf, (size_t)len, &dcid), 0);
  int found = 0;
  for (size_t i = 0; i < n; ++i) {
    found |= cids[i].len == dcid.len && memcmp(cids[i].data, dcid.data, dcid.len) == 0;
  }
  cr_assert(found);
  pair_free(&p);
}

/* --- closing -------------------------------------------------------------- */

Test(quic_close, idle_timeout_closes_both) {
  pair p;
  pair_init(&p);
  p.cset.idle_timeout_ns = 2 * ATUN_NS_PER_S;
  p.sset.idle_timeout_ns = 2 * ATUN_NS_PER_S;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  atun_tstamp t0 = p.now;
  cr_assert(pump(&p, both_closed, t0 + 10 * ATUN_NS_PER_S, 10000));
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_IDLE);
  cr_assert_eq(p.s.close.source, ATUN_QUIC_CLOSE_IDLE);
  cr_assert(p.c.closed_at - t0 <= 2 * ATUN_NS_PER_S);
  cr_assert(p.c.closed_at - t0 >= ATUN_NS_PER_S);
  cr_assert(atun_quic_conn_is_done(p.c.conn) && atun_quic_conn_is_done(p.s.conn));
  pair_free(&p);
}

Test(quic_close, keep_alive_prevents_idle_close) {
  pair p;
  pair_init(&p);
  p.cset.idle_timeout_ns = 2 * ATUN_NS_PER_S;
  p.sset.idle_timeout_ns = 2 * ATUN_NS_PER_S;
  p.cset.keep_alive_ns = 500 * ATUN_NS_PER_MS;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  pump(&p, both_closed, p.now + 10 * ATUN_NS_PER_S, 100000);
  cr_assert_eq(p.c.closed + p.s.closed, 0);
  pair_free(&p);
}

Test(quic_close, application_close_reaches_peer) {
  pair p;
  pair_up(&p);
  cr_assert_eq(atun_quic_conn_close(p.c.conn, 0x1234, "bye now"), 0);
  cr_assert_eq(atun_quic_conn_close(p.c.conn, 1, NULL), ATUN_ERR_STATE);
  cr_assert_eq(p.c.closed, 0, "reported when the close is written");
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), ATUN_ERR_STATE);
  cr_assert(pump(&p, both_closed, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_LOCAL);
  cr_assert_eq(p.s.close.source, ATUN_QUIC_CLOSE_PEER);
  cr_assert_eq(p.s.close.app, 1);
  cr_assert_eq(p.s.close.error_code, 0x1234);
  cr_assert_str_eq(p.s.close.reason, "bye now");
  cr_assert_eq(p.s.close.hs_failure, ATUN_QUIC_HS_OK);
  cr_assert_eq(atun_quic_conn_get_state(p.c.conn), ATUN_QUIC_STATE_CLOSING);
  cr_assert_eq(atun_quic_conn_get_state(p.s.conn), ATUN_QUIC_STATE_DRAINING);
  cr_assert_eq(atun_quic_conn_close(p.s.conn, 1, NULL), ATUN_ERR_STATE);
  uint8_t junk[64] = {0x40};
  cr_assert_eq(atun_quic_conn_read(p.s.conn, &p.s.path, junk, sizeof(junk), p.now), 0);
  uint8_t buf[ATUN_QUIC_DATAGRAM_MAX];
  cr_assert_eq(atun_quic_conn_write(p.s.conn, NULL, buf, sizeof(buf), p.now), 0,
               "a draining end stays silent");
  cr_assert(pump(&p, both_done, p.now + 10 * ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.c.closed, 1);
  cr_assert_eq(p.s.closed, 1);
  pair_free(&p);
}

Test(quic_close, closing_resends_are_bounded) {
  pair p;
  pair_up(&p);
  cr_assert_eq(atun_quic_conn_close(p.c.conn, 7, "x"), 0);
  uint8_t buf[ATUN_QUIC_DATAGRAM_MAX], junk[100] = {0x40};
  ssize_t first = atun_quic_conn_write(p.c.conn, NULL, buf, sizeof(buf), p.now);
  cr_assert_gt(first, 0);
  cr_assert_eq(atun_quic_conn_write(p.c.conn, NULL, buf, sizeof(buf), p.now), 0);
  int resent = 0;
  for (int i = 0; i < 3 * ATUN_QUIC_CLOSE_RESEND_MAX; ++i) {
    cr_assert_eq(atun_quic_conn_read(p.c.conn, &p.c.path, junk, sizeof(junk), p.now),
                 0);
    ssize_t n = atun_quic_conn_write(p.c.conn, NULL, buf, sizeof(buf), p.now);
    cr_assert(n == 0 || n == first);
    resent += n > 0;
  }
  cr_assert_eq(resent, ATUN_QUIC_CLOSE_RESEND_MAX);
  pair_free(&p);
}

Test(quic_close, callback_failure_closes_with_internal) {
  pair p;
  pair_up(&p);
  p.s.fail_stream_data = 1;
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"boom", 4, 0), 4);
  cr_assert(pump(&p, both_closed, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.s.close.source, ATUN_QUIC_CLOSE_LOCAL);
  cr_assert_eq(p.c.close.app, 1);
  cr_assert_eq(p.c.close.error_code, ATUN_QUIC_ERR_INTERNAL);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"x", 1, 0),
               ATUN_ERR_STATE);
  pair_free(&p);
}

/* --- streams -------------------------------------------------------------- */

static int server_got_fin(pair *p) { return p->s.rx_fin; }
static int client_got_fin(pair *p) { return p->c.rx_fin; }
static int both_streams_closed(pair *p) {
  return p->c.nstream_closed == 1 && p->s.nstream_closed == 1;
}

Test(quic_stream, fin_both_ways) {
  pair p;
  pair_up(&p);
  int64_t sid;
  int tag = 5;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, &tag), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"hello", 5, 1),
               5);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"x", 1, 0),
               ATUN_ERR_STATE);
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, sid), ATUN_ERR_STATE);
  cr_assert(pump(&p, server_got_fin, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.s.nopened, 1);
  cr_assert_eq(p.s.opened_sid, sid);
  cr_assert_eq(p.s.rx_len, 5);
  cr_assert_arr_eq(p.s.rx, "hello", 5);
  cr_assert_eq(atun_quic_stream_set_user_data(p.s.conn, sid, &tag), 0);
  cr_assert_eq(atun_quic_stream_write(p.s.conn, sid, (const uint8_t *)"world", 5, 0),
               5);
  cr_assert_eq(atun_quic_stream_write(p.s.conn, sid, NULL, 0, 1), 0);
  cr_assert(pump(&p, client_got_fin, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.c.rx_len, 5);
  cr_assert_arr_eq(p.c.rx, "world", 5);
  cr_assert(pump(&p, both_streams_closed, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.c.stream_closed_err_set, 0);
  cr_assert_eq(p.s.stream_closed_err_set, 0);
  cr_assert_eq(p.c.acked, 5);
  cr_assert_eq(p.s.acked, 5);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"x", 1, 0),
               ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_quic_stream_set_user_data(p.c.conn, sid, NULL), ATUN_ERR_NOT_FOUND);
  pair_free(&p);
}

static int server_saw_reset(pair *p) {
  return p->s.nreset == 1 && p->s.nstream_closed == 1 && p->c.nstream_closed == 1;
}

Test(quic_stream, reset_reaches_peer) {
  pair p;
  pair_up(&p);
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"abc", 3, 0), 3);
  pump(&p, NULL, p.now + 50 * ATUN_NS_PER_MS, 1000);
  cr_assert_eq(p.s.rx_len, 3);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"unsent", 6, 0),
               6);
  cr_assert_eq(atun_quic_stream_shutdown(p.c.conn, sid, 0x42), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"x", 1, 0),
               ATUN_ERR_STATE);
  cr_assert(pump(&p, server_saw_reset, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.s.reset_code, 0x42);
  cr_assert_eq(p.s.rx_len, 3, "nothing after the reset");
  cr_assert(p.s.stream_closed_err_set);
  cr_assert(p.c.stream_closed_err_set);
  cr_assert_eq(p.c.stream_closed_err, 0x42);
  cr_assert_eq(atun_quic_stream_shutdown(p.c.conn, sid, 1), ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_quic_stream_shutdown(p.c.conn, sid, UINT64_MAX),
               ATUN_ERR_INVALID_ARGUMENT);
  pair_free(&p);
}

Test(quic_stream, send_buffer_bound) {
  pair p;
  pair_init(&p);
  p.cset.stream_send_buffer_max = 100000;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  static uint8_t big[200000];
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, sid), 100000);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, big, sizeof(big), 1), 100000);
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, sid), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, big, 1, 1), ATUN_ERR_WOULDBLOCK);
  for (int i = 0; i < 100 && p.c.acked < 100000; ++i) {
    pump(&p, NULL, p.now + 20 * ATUN_NS_PER_MS, 1000);
  }
  cr_assert_eq(p.s.rx_total, 100000);
  cr_assert_eq(p.c.acked, 100000);
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, sid), 100000);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, big, 100000, 1), 100000);
  pair_free(&p);
}

Test(quic_stream, connection_send_buffer_bound) {
  pair p;
  pair_init(&p);
  p.cset.stream_send_buffer_max = 100000;
  p.cset.conn_send_buffer_max = 150000;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  static uint8_t big[100000];
  int64_t a, b;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &a, NULL), 0);
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &b, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, a, big, sizeof(big), 0), 100000);
  /* An eighth of the connection's buffer (18750 bytes) is kept back from
   * what writable() offers, for short messages written without asking. */
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, b), 50000 - 18750);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, b, big, 50000 - 18750, 0), 50000 - 18750);
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, b), 0);
  /* A new stream's header still fits, up to the end of the reserve. */
  int64_t c;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &c, NULL), 0);
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, c), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, c, big, 100, 0), 100);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, b, big, sizeof(big), 0), 18750 - 100);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, b, big, 1, 0), ATUN_ERR_WOULDBLOCK);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, c, big, 1, 0), ATUN_ERR_WOULDBLOCK);
  pair_free(&p);
}

/* The reserve is an eighth of the connection buffer, capped. */
Test(quic_stream, send_reserve_is_capped) {
  pair p;
  pair_init(&p);
  p.cset.stream_send_buffer_max = (size_t)64 << 20;
  p.cset.conn_send_buffer_max = (size_t)8 << 20; /* an eighth: 1 MiB */
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  int64_t a;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &a, NULL), 0);
  cr_assert_eq(atun_quic_stream_writable(p.c.conn, a),
               (ssize_t)(((size_t)8 << 20) - ATUN_QUIC_SEND_RESERVE_MAX));
  pair_free(&p);
}

Test(quic_stream, own_stream_table_bound) {
  pair p;
  pair_init(&p);
  p.cset.max_streams_bidi = 4;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  int64_t sid;
  for (int i = 0; i < 4; ++i) {
    cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  }
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), ATUN_ERR_FULL);
  pair_free(&p);
}

Test(quic_stream, peer_stream_limit_blocks) {
  pair p;
  pair_init(&p);
  p.sset.max_streams_bidi = 4;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  int64_t sid[5];
  for (int i = 0; i < 4; ++i) {
    cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid[i], NULL), 0);
    cr_assert_eq(atun_quic_stream_write(p.c.conn, sid[i], NULL, 0, 1), 0);
  }
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid[4], NULL), ATUN_ERR_WOULDBLOCK);
  /* The server finishes its side of every stream: they close, credit returns. */
  pump(&p, NULL, p.now + 50 * ATUN_NS_PER_MS, 1000);
  cr_assert_eq(p.s.nopened, 4);
  for (int i = 0; i < 4; ++i) {
    cr_assert_eq(atun_quic_stream_write(p.s.conn, sid[i], NULL, 0, 1), 0);
  }
  pump(&p, NULL, p.now + 200 * ATUN_NS_PER_MS, 1000);
  cr_assert_eq(p.s.nstream_closed, 4);
  cr_assert_eq(p.c.nstream_closed, 4);
  int rv = atun_quic_stream_open(p.c.conn, &sid[4], NULL);
  cr_assert_eq(rv, 0, "%d", rv);
  pair_free(&p);
}

Test(quic_stream, consume_is_checked) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  p.s.manual_consume = 1;
  handshake(&p);
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"12345", 5, 0),
               5);
  pump(&p, NULL, p.now + 50 * ATUN_NS_PER_MS, 1000);
  cr_assert_eq(p.s.rx_len, 5);
  cr_assert_eq(atun_quic_stream_consume(p.s.conn, sid, 6), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_stream_consume(p.s.conn, sid + 4, 6),
               ATUN_ERR_INVALID_ARGUMENT, "more than the connection delivered");
  cr_assert_eq(atun_quic_stream_consume(p.s.conn, sid, 5), 0);
  cr_assert_eq(atun_quic_stream_consume(p.s.conn, sid, 1), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_stream_write(p.s.conn, 99, (const uint8_t *)"x", 1, 0),
               ATUN_ERR_NOT_FOUND);
  cr_assert_eq(atun_quic_stream_write(p.s.conn, sid, NULL, 1, 0),
               ATUN_ERR_INVALID_ARGUMENT);
  pair_free(&p);
}

/* Without consume() the sender stops at the window; consuming releases it. */
Test(quic_stream, flow_control_follows_consume) {
  pair p;
  pair_init(&p);
  p.sset.stream_window_initial = p.sset.stream_window_max = 256 * 1024;
  p.sset.conn_window_initial = p.sset.conn_window_max = 1024 * 1024;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  p.s.manual_consume = 1;
  handshake(&p);
  static uint8_t big[512 * 1024];
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, big, sizeof(big), 0),
               (ssize_t)sizeof(big));
  size_t total = 0;
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 50; ++i) {
      pump(&p, NULL, p.now + 20 * ATUN_NS_PER_MS, 1000);
    }
    total = p.s.rx_total;
    cr_assert_eq(total, (size_t)(round + 1) * 256 * 1024, "round %d: %zu", round,
                 total);
    cr_assert_eq(atun_quic_stream_consume(p.s.conn, sid, 256 * 1024), 0);
  }
  pair_free(&p);
}

/* --- 10 MB echo with backpressure ----------------------------------------- */

#define ECHO_BYTES ((size_t)10 * 1000 * 1000)
#define ECHO_WINDOW ((uint64_t)1 << 20)

struct echo_app {
  int64_t sid;
  size_t sent, received; /* client */
  int sent_fin;
  uint8_t *pending; /* server: received, not yet echoed, at pending_head */
  size_t pending_head, pending_len, pending_max;
  int got_fin, echoed_fin;
  size_t send_buffered_max;
};

static uint8_t pattern(size_t i) { return (uint8_t)(i * 131 + (i >> 11)); }

static int echo_on_data(pair *p, side *x, int64_t sid, const uint8_t *data, size_t len,
                        int fin) {
  echo_app *e = p->app;
  if (x == &p->c) {
    for (size_t i = 0; i < len; ++i) {
      if (data[i] != pattern(e->received + i)) {
        cr_assert_fail("echo byte %zu differs", e->received + i);
      }
    }
    e->received += len;
    p->c.rx_fin |= fin;
    return atun_quic_stream_consume(x->conn, sid, len);
  }
  /* The flow-control window bounds what the peer can push past consume(). */
  cr_assert_leq(e->pending_len + len, ECHO_WINDOW);
  if (e->pending_head + e->pending_len + len > ECHO_WINDOW) {
    memmove(e->pending, e->pending + e->pending_head, e->pending_len);
    e->pending_head = 0;
  }
  memcpy(e->pending + e->pending_head + e->pending_len, data, len);
  e->pending_len += len;
  e->got_fin |= fin;
  if (e->pending_len > e->pending_max) {
    e->pending_max = e->pending_len;
  }
  return 0;
}

static void echo_tick(pair *p) {
  echo_app *e = p->app;
  static uint8_t chunk[65536];
  ssize_t room =
      e->sent < ECHO_BYTES ? atun_quic_stream_writable(p->c.conn, e->sid) : 0;
  while (e->sent < ECHO_BYTES && room > 0) {
    size_t n = ECHO_BYTES - e->sent;
    n = n < sizeof(chunk) ? n : sizeof(chunk);
    n = n < (size_t)room ? n : (size_t)room;
    for (size_t i = 0; i < n; ++i) {
      chunk[i] = pattern(e->sent + i);
    }
    ssize_t w =
        atun_quic_stream_write(p->c.conn, e->sid, chunk, n, e->sent + n == ECHO_BYTES);
    cr_assert_eq(w, (ssize_t)n, "writable() promised room");
    e->sent += n;
    room -= (ssize_t)n;
  }
  if (p->s.conn && e->pending_len > 0) {
    ssize_t w = atun_quic_stream_write(p->s.conn, e->sid, e->pending + e->pending_head,
                                       e->pending_len, 0);
    if (w > 0) {
      e->pending_head += (size_t)w;
      e->pending_len -= (size_t)w;
      cr_assert_eq(atun_quic_stream_consume(p->s.conn, e->sid, (size_t)w), 0);
    } else {
      cr_assert_eq(w, ATUN_ERR_WOULDBLOCK);
    }
  }
  if (e->got_fin && e->pending_len == 0 && !e->echoed_fin) {
    cr_assert_eq(atun_quic_stream_write(p->s.conn, e->sid, NULL, 0, 1), 0);
    e->echoed_fin = 1;
  }
}

static int echo_done(pair *p) { return p->c.rx_fin; }

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

Test(quic_stream, echo_10mb_with_backpressure, .timeout = 300) {
  pair p;
  pair_init(&p);
  /* Small windows and buffers so backpressure and credit matter all along. */
  p.sset.stream_window_initial = p.sset.stream_window_max = ECHO_WINDOW;
  p.cset.stream_window_initial = p.cset.stream_window_max = ECHO_WINDOW;
  p.cset.stream_send_buffer_max = 512 * 1024;
  p.sset.stream_send_buffer_max = 256 * 1024;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  echo_app e = {0};
  e.pending = malloc(ECHO_WINDOW);
  cr_assert_not_null(e.pending);
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &e.sid, NULL), 0);
  p.app = &e;
  p.tick = echo_tick;
  atun_tstamp v0 = p.now;
  double w0 = wall_s();
  cr_assert(pump(&p, echo_done, p.now + 600 * ATUN_NS_PER_S, 2000000), "echo finished");
  double secs = wall_s() - w0;
  cr_assert_eq(e.received, ECHO_BYTES);
  cr_assert(e.got_fin);
  cr_assert_eq(p.dropped, 0);
  cr_assert_gt(e.pending_max, 0);
  cr_assert_leq(e.pending_max, ECHO_WINDOW);
  printf("quic echo: %zu bytes each way in %.2f s wall (%.0f Mbit/s each way, "
         "both directions encrypted), %.2f s virtual at %u ms RTT, server backlog max "
         "%zu\n",
         ECHO_BYTES, secs, ECHO_BYTES * 8 / secs / 1e6, (double)(p.now - v0) / 1e9,
         (unsigned)(2 * DELAY_NS / ATUN_NS_PER_MS), e.pending_max);
  cr_assert(pump(&p, both_streams_closed, p.now + ATUN_NS_PER_S, 10000));
  free(e.pending);
  pair_free(&p);
}

/* --- allocation failures -------------------------------------------------- */

static int exchanged(pair *p) { return p->s.rx_fin && p->c.rx_fin; }

static void fail_tick(pair *p) {
  if (!p->pinged && p->c.hs_done &&
      atun_quic_conn_get_state(p->c.conn) == ATUN_QUIC_STATE_ESTABLISHED) {
    int64_t sid;
    if (atun_quic_stream_open(p->c.conn, &sid, NULL) == 0) {
      p->pinged = 1;
      atun_quic_stream_write(p->c.conn, sid, (const uint8_t *)"ping", 4, 1);
    }
  }
  if (!p->ponged && p->s.rx_fin && p->s.conn) {
    p->ponged = 1;
    atun_quic_stream_write(p->s.conn, p->s.opened_sid, (const uint8_t *)"pong", 4, 1);
  }
}

/* One run with the client (or server) allocator failing at allocation |n|
 * (and every later one unless |once|).  Returns the allocations the side
 * made. */
static long run_with_failures(int server, long n, int once, int *ok) {
  atun_failmem fm;
  atun_failmem_init(&fm, n);
  atun_failmem_arm(&fm, n, once);
  pair p;
  pair_init(&p);
  p.cset.idle_timeout_ns = p.sset.idle_timeout_ns = ATUN_NS_PER_S;
  p.cset.handshake_timeout_ns = p.sset.handshake_timeout_ns = ATUN_NS_PER_S;
  if (server) {
    p.smem = &fm.mem;
  } else {
    p.cmem = &fm.mem;
  }
  p.tick = fail_tick;
  p.ctls = tls_client(&K.client, NULL, NULL);
  p.stls = tls_server(&K.ca);
  atun_quic_conn_config cfg = conn_config(&p, &p.c);
  int rv = atun_quic_conn_client_new(&p.c.conn, &cfg, &p.c.path, p.now);
  cr_assert(rv == 0 || rv == ATUN_ERR_NOMEM);
  if (rv == 0) {
    *ok = pump(&p, exchanged, p.now + 5 * ATUN_NS_PER_S, 20000);
    pump(&p, NULL, p.now + 10 * ATUN_NS_PER_S, 20000); /* let timeouts run */
    /* Whatever failed, nothing is left hanging: both ends are over. */
    cr_assert(*ok || atun_quic_conn_is_done(p.c.conn), "client live, failure at %ld",
              n);
    cr_assert(*ok || p.s.conn == NULL || atun_quic_conn_is_done(p.s.conn),
              "server live, failure at %ld", n);
  } else {
    *ok = 0;
  }
  pair_free(&p);
  cr_assert_eq(fm.live, 0, "leak with failure at %ld", n);
  return fm.allocs;
}

static void failure_sweep(int server, int once) {
  keys_init();
  int ok = 0;
  long total = run_with_failures(server, -1, 0, &ok);
  cr_assert(ok, "clean run exchanges data");
  cr_assert_gt(total, 10);
  long succeeded = 0;
  for (long n = 0; n < total; ++n) {
    run_with_failures(server, n, once, &ok);
    succeeded += ok;
  }
  cr_assert_lt(succeeded, total, "failures must matter");
}

Test(quic_alloc, client_fails_from_n_on, .timeout = 300) { failure_sweep(0, 0); }
Test(quic_alloc, server_fails_from_n_on, .timeout = 300) { failure_sweep(1, 0); }
Test(quic_alloc, client_fails_once, .timeout = 300) { failure_sweep(0, 1); }
Test(quic_alloc, server_fails_once, .timeout = 300) { failure_sweep(1, 1); }

/* --- more identities, paths and stream corners ---------------------------- */

Test(quic_handshake, agent_id_must_be_a_uuid) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.badid, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_BAD_CERTIFICATE, ATUN_QUIC_HS_BAD_CERTIFICATE);
  cr_assert_eq(p.c.close.error_code, ATUN_QUIC_ERR_IDENTITY);
  pair_free(&p);
}

Test(quic_handshake, two_agent_ids_refused) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.twoids, NULL, NULL), &K.ca);
  expect_refused(&p, ATUN_QUIC_HS_BAD_CERTIFICATE, ATUN_QUIC_HS_BAD_CERTIFICATE);
  pair_free(&p);
}

Test(quic_handshake, agent_id_is_lowercased_and_other_uris_ignored) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.upper, NULL, NULL), &K.ca);
  handshake(&p);
  cr_assert_str_eq(p.seen_peer.agent_id, AGENT_ID);
  cr_assert_str_eq(p.seen_peer.cn, "agent-upper");
  pair_free(&p);
}

Test(quic_handshake, handshake_callback_failure_closes) {
  pair p;
  pair_init(&p);
  p.c.fail_hs = 1;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  cr_assert(pump(&p, both_closed, p.now + 5 * ATUN_NS_PER_S, 10000));
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_LOCAL);
  cr_assert_eq(p.c.close.error_code, ATUN_QUIC_ERR_INTERNAL);
  cr_assert_eq(p.s.close.source, ATUN_QUIC_CLOSE_PEER);
  pair_free(&p);
}

static int der_to_pem(const uint8_t *der, int len, uint8_t *pem, size_t cap, int type) {
  int n = wc_DerToPem(der, (word32)len, pem, (word32)cap, type);
  cr_assert_gt(n, 0);
  return n;
}

Test(quic_tls, pem_certificate_and_key) {
  keys_init();
  uint8_t ca[2048], cert[2048], key[1024], other[1024];
  atun_quic_tls_config c = {
      .ca = ca,
      .ca_len = (size_t)der_to_pem(K.ca.cert, K.ca.cert_len, ca, sizeof(ca), CERT_TYPE),
      .cert = cert,
      .cert_len = (size_t)der_to_pem(K.server.cert, K.server.cert_len, cert,
                                     sizeof(cert), CERT_TYPE),
      .key = key,
      .key_len = (size_t)der_to_pem(K.server.key_der, K.server.key_len, key,
                                    sizeof(key), ECC_PRIVATEKEY_TYPE)};
  atun_quic_tls *t = NULL;
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, atun_mem_default()), 0);
  atun_quic_tls_del(t);
  c.key = other;
  c.key_len = (size_t)der_to_pem(K.client.key_der, K.client.key_len, other,
                                 sizeof(other), ECC_PRIVATEKEY_TYPE);
  cr_assert_eq(atun_quic_tls_new(&t, ATUN_QUIC_SERVER, &c, atun_mem_default()),
               ATUN_ERR_INVALID_ARGUMENT);
}

static int server_got_all(pair *p) { return p->s.nopened == 40 && p->s.rx_len == 40; }

/* Forty streams in a sixty-four bucket table: ids collide, and the ready list
 * is worked from both ends. */
Test(quic_stream, many_streams) {
  pair p;
  pair_init(&p);
  p.cset.max_streams_bidi = 40;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  int64_t sid[40];
  for (int i = 0; i < 40; ++i) {
    cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid[i], NULL), 0);
    cr_assert_eq(atun_quic_stream_write(p.c.conn, sid[i], (const uint8_t *)"a", 1, 0),
                 1);
  }
  int64_t extra;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &extra, NULL), ATUN_ERR_FULL);
  for (int i = 39; i >= 0; --i) {
    cr_assert_eq(atun_quic_stream_write(p.c.conn, sid[i], NULL, 0, 1), 0);
  }
  cr_assert(pump(&p, server_got_all, p.now + ATUN_NS_PER_S, 1000));
  pair_free(&p);
}

static int server_got_100(pair *p) { return p->s.nopened == 100 && p->s.rx_len == 100; }

/* The stream table grows from 16 buckets as streams come; a growth that
 * finds no memory is swallowed (the old table, longer chains) and every
 * stream still works. */
Test(quic_stream, stream_table_growth_and_its_failure) {
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  pair p;
  pair_init(&p);
  p.cset.max_streams_bidi = p.sset.max_streams_bidi = 100;
  p.cmem = &fm.mem;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  int64_t sid[100];
  long swallowed = 0;
  for (int i = 0; i < 100; ++i) {
    /* Fail each allocation of the open in turn until one open succeeds
     * although an allocation failed: that one was the table's growth. */
    int rv = ATUN_ERR_NOMEM;
    for (long k = 0; rv == ATUN_ERR_NOMEM && k < 8; ++k) {
      long before = fm.failures;
      atun_failmem_arm(&fm, i >= 16 ? k : -1, 1);
      rv = atun_quic_stream_open(p.c.conn, &sid[i], NULL);
      if (rv == 0 && fm.failures > before) ++swallowed;
    }
    atun_failmem_arm(&fm, -1, 0);
    cr_assert_eq(rv, 0, "stream %d", i);
  }
  /* Growth was due at 16, 32 and 64 streams. */
  cr_assert_geq(swallowed, 1);
  for (int i = 0; i < 100; ++i) {
    cr_assert_eq(atun_quic_stream_write(p.c.conn, sid[i], (const uint8_t *)"a", 1, 1), 1);
  }
  cr_assert(pump(&p, server_got_100, p.now + ATUN_NS_PER_S, 2000));
  pair_free(&p);
  cr_assert_eq(fm.live, 0);
}

static int server_moved(pair *p) {
  return p->s.sent_to_port == 40001 && p->s.rx_len == 2;
}

/* The client's NAT picks a new port: the server validates the new path
 * (PATH_CHALLENGE from the injected RNG) and follows it. */
Test(quic_close, nat_rebinding_keeps_the_connection) {
  pair p;
  pair_up(&p);
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"x", 1, 0), 1);
  pump(&p, NULL, p.now + 50 * ATUN_NS_PER_MS, 1000);
  p.s.path.remote.port = 40001;
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"y", 1, 0), 1);
  cr_assert(pump(&p, server_moved, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(atun_quic_conn_get_state(p.s.conn), ATUN_QUIC_STATE_ESTABLISHED);
  pair_free(&p);
}

Test(quic_close, close_before_the_first_datagram_is_silent) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  cr_assert_eq(atun_quic_conn_close(p.c.conn, 3, "never mind"), 0);
  uint8_t buf[ATUN_QUIC_DATAGRAM_MAX];
  cr_assert_eq(atun_quic_conn_write(p.c.conn, NULL, buf, sizeof(buf), p.now), 0);
  cr_assert_eq(p.c.closed, 1);
  cr_assert_eq(p.c.close.source, ATUN_QUIC_CLOSE_LOCAL);
  cr_assert(atun_quic_conn_is_done(p.c.conn));
  pair_free(&p);
}

static int client_saw_reset(pair *p) {
  return p->c.nreset == 1 && p->c.nstream_closed == 1;
}

/* The peer resets a stream we still have data queued on: the data is
 * dropped and the stream goes away. */
Test(quic_stream, peer_reset_drops_queued_data) {
  pair p;
  pair_init(&p);
  p.sset.stream_window_initial = p.sset.stream_window_max = 64 * 1024;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  static uint8_t big[1 << 20];
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, big, sizeof(big), 0),
               (ssize_t)sizeof(big));
  pump(&p, NULL, p.now + 50 * ATUN_NS_PER_MS, 1000);
  cr_assert_eq(atun_quic_stream_shutdown(p.s.conn, sid, 0x77), 0);
  cr_assert(pump(&p, client_saw_reset, p.now + ATUN_NS_PER_S, 1000));
  cr_assert_eq(p.c.reset_code, 0x77);
  cr_assert(p.c.stream_closed_err_set);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, big, 1, 0), ATUN_ERR_NOT_FOUND);
  pair_free(&p);
}

static int client_acked_all(pair *p) { return p->c.acked == (1u << 20); }

/* A server without a stream_data callback consumes everything at once. */
Test(quic_stream, without_a_reader_data_is_consumed) {
  pair p;
  pair_init(&p);
  p.sset.stream_window_initial = p.sset.stream_window_max = 64 * 1024;
  atun_quic_callbacks cb = test_callbacks;
  cb.stream_data = NULL;
  p.server_callbacks = &cb;
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  handshake(&p);
  static uint8_t big[1 << 20];
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, big, sizeof(big), 1),
               (ssize_t)sizeof(big));
  cr_assert(pump(&p, client_acked_all, p.now + 5 * ATUN_NS_PER_S, 100000));
  pair_free(&p);
}

Test(quic_stream, consume_after_close_is_accepted) {
  pair p;
  pair_init(&p);
  pair_start(&p, tls_client(&K.client, NULL, NULL), &K.ca);
  p.s.manual_consume = 1;
  handshake(&p);
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(p.c.conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(p.c.conn, sid, (const uint8_t *)"abc", 3, 0), 3);
  pump(&p, NULL, p.now + 50 * ATUN_NS_PER_MS, 1000);
  cr_assert_eq(atun_quic_conn_close(p.s.conn, 0, NULL), 0);
  cr_assert_eq(atun_quic_stream_consume(p.s.conn, sid, 3), 0);
  cr_assert_eq(atun_quic_stream_shutdown(p.s.conn, sid, 1), ATUN_ERR_STATE);
  cr_assert_eq(atun_quic_stream_writable(p.s.conn, sid), ATUN_ERR_STATE);
  pair_free(&p);
}
