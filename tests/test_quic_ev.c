/*
 * The libev QUIC driver end to end on 127.0.0.1: a real server endpoint and
 * real client endpoints in one loop, real sockets, certificates made here
 * with the project's CA (io/ca.h: ECDSA P-256, agent id in the URI SAN).
 *
 * Every wait is bounded (run_until); settings shrink timeouts where a test
 * waits for one.
 */
#define _GNU_SOURCE

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "ca.h"
#include "quic_ev.h"
#include "support.h"

#define AGENT_ID "4d2c6e1a-9b7f-4a3e-8c5d-0f1e2d3c4b5a"
#define MIB ((size_t)1 << 20)
#define ECHO_MAX (4 * MIB)
#define CLIENTS_MAX 64

/* --- certificates ---------------------------------------------------------------- */

typedef struct blob {
  uint8_t d[ATUN_CA_DER_MAX];
  size_t n;
} blob;

static struct {
  blob ca_key, ca_cert, srv_key, srv_cert, ag_key, ag_cert;
} C;

static atun_tstamp wall_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (atun_tstamp)t.tv_sec * ATUN_NS_PER_S + (atun_tstamp)t.tv_nsec;
}

static void make_certs(void) {
  atun_ca_settings cs;
  atun_ca_settings_default(&cs);
  atun_tstamp now = wall_now();
  const atun_rand *r = atun_ca_sysrand();
  cr_assert_eq(atun_ca_create(&cs, now, r, C.ca_key.d, sizeof(C.ca_key.d), &C.ca_key.n,
                              C.ca_cert.d, sizeof(C.ca_cert.d), &C.ca_cert.n), 0);
  atun_ca_issuer ca = {C.ca_cert.d, C.ca_cert.n, C.ca_key.d, C.ca_key.n};
  cr_assert_eq(atun_ca_key_generate(C.srv_key.d, sizeof(C.srv_key.d), &C.srv_key.n), 0);
  const char *hosts[] = {"127.0.0.1", "localhost"};
  cr_assert_eq(atun_ca_server_issue(&cs, hosts, 2, C.srv_key.d, C.srv_key.n, &ca, now, r,
                                    C.srv_cert.d, sizeof(C.srv_cert.d), &C.srv_cert.n), 0);
  cr_assert_eq(atun_ca_key_generate(C.ag_key.d, sizeof(C.ag_key.d), &C.ag_key.n), 0);
  uint8_t csr[ATUN_CA_DER_MAX];
  size_t csrlen, pemlen;
  char pem[ATUN_CA_PEM_MAX];
  cr_assert_eq(atun_ca_csr_make(C.ag_key.d, C.ag_key.n, "agent-one", AGENT_ID, csr,
                                sizeof(csr), &csrlen), 0);
  cr_assert_eq(atun_pem_encode(ATUN_PEM_CSR, csr, csrlen, pem, sizeof(pem), &pemlen), 0);
  cr_assert_eq(atun_ca_sign_csr(&cs, pem, pemlen, "agent-one", AGENT_ID, &ca, now, r,
                                C.ag_cert.d, sizeof(C.ag_cert.d), &C.ag_cert.n, NULL), 0);
}

/* --- the world ------------------------------------------------------------------------ */

struct world;

/* Application state of one connection (its user data), either side. */
typedef struct app {
  struct world *w;
  int server;
  atun_quic_conn *conn;
  int hs_done;
  int closed_cb;   /* connection_closed calls */
  int on_closed;   /* on_closed hook calls */
  atun_quic_close_info close;
  char agent_id[ATUN_QUIC_AGENT_ID_STRLEN + 1];
  atun_quic_path path; /* server: as on_accept saw it */
  int64_t sid;
  int has_stream;
  size_t total; /* client: bytes to echo */
  size_t sent;
  int fin_sent;
  size_t rcvd;
  int rx_fin;
  int mismatch;
  int close_when_done;
  int nreset, nstream_closed;
  uint64_t reset_code;
  /* server: received, not yet echoed (bounded by the stream window) */
  uint8_t *pend;
  size_t pend_off, pend_len, pend_cap, pend_peak;
} app;

typedef struct world {
  struct ev_loop *loop;
  atun_quic_tls *stls, *ctls;
  atun_quic_settings sq, cq; /* server and client connection settings */
  atun_quic_ev_settings ses, ces;
  atun_testrng rng;
  atun_quic_ev *srv;
  atun_quic_endpoint srv_ep;
  int refuse; /* on_accept refuses */
  size_t accepted, srv_closed, srv_hs, srv_live, accept_lost;
  atun_quic_path accept_paths[4]; /* the first few, as on_accept saw them */
  app *last_srv;
  /* clients */
  atun_quic_ev *cli[CLIENTS_MAX];
  app capp[CLIENTS_MAX];
  size_t ncli;
} world;

static world W;
static uint8_t *pattern;

static uint8_t pat(size_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

static void tls_make(void) {
  atun_quic_tls_config s = {.ca = C.ca_cert.d, .ca_len = C.ca_cert.n,
                            .cert = C.srv_cert.d, .cert_len = C.srv_cert.n,
                            .key = C.srv_key.d, .key_len = C.srv_key.n};
  cr_assert_eq(atun_quic_tls_new(&W.stls, ATUN_QUIC_SERVER, &s, atun_mem_default()), 0);
  static uint8_t pin[ATUN_QUIC_SHA256_LEN];
  cr_assert_eq(atun_quic_spki_sha256(C.srv_cert.d, C.srv_cert.n, pin), 0);
  atun_quic_tls_config c = {.ca = C.ca_cert.d, .ca_len = C.ca_cert.n,
                            .cert = C.ag_cert.d, .cert_len = C.ag_cert.n,
                            .key = C.ag_key.d, .key_len = C.ag_key.n,
                            .server_spki_sha256 = pin};
  cr_assert_eq(atun_quic_tls_new(&W.ctls, ATUN_QUIC_CLIENT, &c, atun_mem_default()), 0);
}

static atun__quic_ev_hash_fn default_hash;

static void setup(void) {
  default_hash = atun__quic_ev_hash;
  memset(&W, 0, sizeof(W));
  make_certs();
  tls_make();
  W.loop = ev_loop_new(EVFLAG_AUTO);
  atun_testrng_seed(&W.rng, 7);
  atun_quic_settings_default(&W.sq);
  atun_quic_settings_default(&W.cq);
  atun_quic_ev_settings_default(&W.ses);
  atun_quic_ev_settings_default(&W.ces);
  W.ces.udp.send_queue_max = 256;
  pattern = malloc(ECHO_MAX);
  for (size_t i = 0; i < ECHO_MAX; ++i) pattern[i] = pat(i);
}

static void teardown(void) {
  for (size_t i = 0; i < W.ncli; ++i) atun_quic_ev_del(W.cli[i]);
  atun_quic_ev_del(W.srv);
  for (size_t i = 0; i < W.ncli; ++i) free(W.capp[i].pend);
  atun_quic_tls_del(W.stls);
  atun_quic_tls_del(W.ctls);
  ev_loop_destroy(W.loop);
  free(pattern);
  atun__udp_sendmmsg = sendmmsg;
  atun__quic_ev_hash = default_hash;
}

TestSuite(quic_ev, .init = setup, .fini = teardown, .timeout = 120);

static double since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* --- bounded loop runs ------------------------------------------------------------------- */

static void expired_cb(struct ev_loop *l, ev_timer *t, int revents) {
  (void)l;
  (void)revents;
  *(int *)t->data = 1;
}

/* Runs the loop until |pred| holds or |seconds| pass; returns |pred|. */
static int run_until(int (*pred)(void *), void *arg, double seconds) {
  int expired = 0;
  ev_timer t;
  ev_timer_init(&t, expired_cb, seconds, 0.);
  t.data = &expired;
  ev_timer_start(W.loop, &t);
  while (!pred(arg) && !expired) ev_run(W.loop, EVRUN_ONCE);
  ev_timer_stop(W.loop, &t);
  return pred(arg);
}

/* --- echo logic ---------------------------------------------------------------------------- */

static const uint8_t nothing[1];

/* Server: echo what is pending, consuming only what the stream took, so
 * the peer's credit follows our sink. */
static void server_pump(app *a) {
  while (a->has_stream && !a->fin_sent && (a->pend_len > 0 || a->rx_fin)) {
    const uint8_t *p = a->pend_len > 0 ? a->pend + a->pend_off : nothing;
    ssize_t n = atun_quic_stream_write(a->conn, a->sid, p, a->pend_len, a->rx_fin);
    if (n < 0) break;
    if ((size_t)n == a->pend_len && a->rx_fin) a->fin_sent = 1;
    a->pend_off += (size_t)n;
    a->pend_len -= (size_t)n;
    if (a->pend_len == 0) a->pend_off = 0;
    if (n > 0) cr_assert_eq(atun_quic_stream_consume(a->conn, a->sid, (size_t)n), 0);
    if (n == 0 && !a->fin_sent) break;
  }
}

/* Appends to the echo buffer, compacting or growing only when the tail is
 * full (a memmove per write would dominate the run). */
static void pend_append(app *a, const uint8_t *data, size_t len) {
  if (a->pend != NULL && a->pend_off + a->pend_len + len > a->pend_cap) {
    memmove(a->pend, a->pend + a->pend_off, a->pend_len);
    a->pend_off = 0;
  }
  if (a->pend_len + len > a->pend_cap) {
    size_t cap = a->pend_cap ? a->pend_cap * 2 : 65536;
    while (cap < a->pend_len + len) cap *= 2;
    a->pend = realloc(a->pend, cap);
    a->pend_cap = cap;
  }
  memcpy(a->pend + a->pend_off + a->pend_len, data, len);
  a->pend_len += len;
  if (a->pend_len > a->pend_peak) a->pend_peak = a->pend_len;
}

static void client_pump(app *a) {
  while (a->has_stream && !a->fin_sent) {
    size_t len = a->total - a->sent;
    if (len > 65536) len = 65536;
    int fin = a->sent + len == a->total;
    const uint8_t *p = len > 0 ? pattern + a->sent : nothing;
    ssize_t n = atun_quic_stream_write(a->conn, a->sid, p, len, fin);
    if (n <= 0 && !(n == 0 && fin && len == 0)) break;
    a->sent += (size_t)n;
    if ((size_t)n == len && fin) a->fin_sent = 1;
  }
}

static int cb_peer_verify(atun_quic_conn *conn, const atun_quic_peer *peer, void *ud) {
  app *a = ud;
  cr_assert_eq(a->conn == NULL || a->conn == conn, 1);
  memcpy(a->agent_id, peer->agent_id, sizeof(a->agent_id));
  return 0;
}

static int cb_handshake_completed(atun_quic_conn *conn, void *ud) {
  app *a = ud;
  a->conn = conn;
  a->hs_done = 1;
  if (a->server) {
    ++a->w->srv_hs;
    return 0;
  }
  if (a->total > 0 || a->close_when_done) {
    cr_assert_eq(atun_quic_stream_open(conn, &a->sid, a), 0);
    a->has_stream = 1;
    client_pump(a);
  }
  return 0;
}

static int cb_stream_open(atun_quic_conn *conn, int64_t sid, void *ud) {
  app *a = ud;
  a->conn = conn;
  a->sid = sid;
  a->has_stream = 1;
  return 0;
}

static void finish_if_done(app *a) {
  if (a->rx_fin && a->rcvd == a->total && a->close_when_done) {
    a->close_when_done = 0;
    atun_quic_ev_close(a->conn, 0, "done");
  }
}

static int cb_stream_data(atun_quic_conn *conn, int64_t sid, const uint8_t *data,
                          size_t len, int fin, void *ud, void *sud) {
  app *a = ud;
  (void)sud;
  if (a->server) {
    pend_append(a, data, len);
    if (fin) a->rx_fin = 1;
    server_pump(a);
    return 0;
  }
  for (size_t i = 0; i < len; ++i) {
    if (a->rcvd + i >= a->total || data[i] != pattern[a->rcvd + i]) {
      a->mismatch = 1;
      break;
    }
  }
  a->rcvd += len;
  if (fin) a->rx_fin = 1;
  cr_assert_eq(atun_quic_stream_consume(conn, sid, len), 0);
  finish_if_done(a);
  return 0;
}

static int cb_stream_acked(atun_quic_conn *conn, int64_t sid, size_t n, void *ud,
                           void *sud) {
  app *a = ud;
  (void)conn;
  (void)sid;
  (void)n;
  (void)sud;
  if (a->server) server_pump(a);
  else client_pump(a);
  return 0;
}

static int cb_stream_reset(atun_quic_conn *conn, int64_t sid, uint64_t err, void *ud,
                           void *sud) {
  app *a = ud;
  (void)conn;
  (void)sid;
  (void)sud;
  ++a->nreset;
  a->reset_code = err;
  return 0;
}

static int cb_stream_closed(atun_quic_conn *conn, int64_t sid, int has_error, uint64_t err,
                            void *ud, void *sud) {
  app *a = ud;
  (void)conn;
  (void)sid;
  (void)has_error;
  (void)err;
  (void)sud;
  ++a->nstream_closed;
  return 0;
}

static void cb_connection_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                                 void *ud) {
  app *a = ud;
  (void)conn;
  ++a->closed_cb;
  a->close = *info;
}

static const atun_quic_callbacks app_callbacks = {
    .peer_verify = cb_peer_verify,
    .handshake_completed = cb_handshake_completed,
    .stream_open = cb_stream_open,
    .stream_data = cb_stream_data,
    .stream_acked = cb_stream_acked,
    .stream_reset = cb_stream_reset,
    .stream_closed = cb_stream_closed,
    .connection_closed = cb_connection_closed,
};

/* --- endpoints ------------------------------------------------------------------------------- */

static int hook_accept(atun_quic_ev *ep, const atun_quic_path *path,
                       atun_quic_conn_config *config, void *ud) {
  world *w = ud;
  cr_assert_eq(ep, w->srv);
  cr_assert_eq(config->user_data, NULL);
  if (w->refuse) return -1;
  app *a = calloc(1, sizeof(*a));
  a->w = w;
  a->server = 1;
  a->path = *path;
  config->user_data = a;
  if (w->accepted < 4) w->accept_paths[w->accepted] = *path;
  ++w->accepted;
  ++w->srv_live;
  w->last_srv = a;
  return 0;
}

static void hook_srv_closed(atun_quic_ev *ep, atun_quic_conn *conn, void *cud, void *ud) {
  world *w = ud;
  app *a = cud;
  cr_assert_eq(ep, w->srv);
  cr_assert_eq(a->on_closed, 0, "on_closed twice");
  cr_assert(a->conn == NULL || a->conn == conn);
  /* NULL: admitted by on_accept, but the connection could not be made. */
  if (conn != NULL) cr_assert_eq(atun_quic_ev_conn_get_user_data(conn), a);
  else ++w->accept_lost;
  ++w->srv_closed;
  --w->srv_live;
  if (w->last_srv == a) w->last_srv = NULL;
  free(a->pend);
  free(a);
}

static void hook_cli_closed(atun_quic_ev *ep, atun_quic_conn *conn, void *cud, void *ud) {
  app *a = cud;
  (void)ud;
  cr_assert_eq(atun_quic_ev_of(conn), ep);
  ++a->on_closed;
}

static const atun_quic_ev_hooks srv_hooks = {.on_accept = hook_accept,
                                             .on_closed = hook_srv_closed};
static const atun_quic_ev_hooks cli_hooks = {.on_closed = hook_cli_closed};

static atun_quic_conn_config conn_config(atun_quic_tls *tls, const atun_quic_settings *s,
                                         void *ud) {
  atun_quic_conn_config c = {.tls = tls, .settings = s, .callbacks = &app_callbacks,
                             .user_data = ud, .mem = atun_mem_default(),
                             .rand = atun_testrng_as_rand(&W.rng)};
  return c;
}

static int server_start_on(const char *addr) {
  atun_quic_endpoint lo = {.port = 0};
  cr_assert_eq(atun_addr_parse(&lo.addr, addr), 0);
  atun_quic_conn_config cfg = conn_config(W.stls, &W.sq, NULL);
  int rv = atun_quic_ev_server_new(&W.srv, W.loop, &W.ses, &lo, &cfg, &srv_hooks, &W);
  if (rv != 0) return rv;
  cr_assert_eq(atun_quic_ev_get_local(W.srv, &W.srv_ep), 0);
  cr_assert_neq(W.srv_ep.port, 0);
  return 0;
}

static void server_start(void) { cr_assert_eq(server_start_on("127.0.0.1"), 0); }

/* Creates client endpoint |i| that echoes |total| bytes and then closes. */
static app *client_start(size_t i, size_t total, int close_when_done) {
  app *a = &W.capp[i];
  memset(a, 0, sizeof(*a));
  a->w = &W;
  a->total = total;
  a->close_when_done = close_when_done;
  atun_quic_conn_config cfg = conn_config(W.ctls, &W.cq, a);
  if (W.cli[i] == NULL) {
    cr_assert_eq(atun_quic_ev_client_new(&W.cli[i], W.loop, &W.ces, &cfg, &cli_hooks, &W), 0);
    if (i >= W.ncli) W.ncli = i + 1;
  }
  atun_quic_conn *conn = NULL;
  cr_assert_eq(atun_quic_ev_connect(W.cli[i], &W.srv_ep, &conn), 0);
  cr_assert_not_null(conn);
  cr_assert_eq(atun_quic_ev_client_conn(W.cli[i]), conn);
  cr_assert_eq(atun_quic_ev_conn_get_user_data(conn), a);
  a->conn = conn;
  return a;
}

/* --- predicates ---------------------------------------------------------------------------------- */

static int p_hs(void *arg) {
  app *a = arg;
  return a->hs_done && W.srv_hs > 0;
}

static int p_hs2(void *arg) {
  app *a = arg;
  return a->hs_done && W.srv_hs >= 2;
}

static int p_all_hs(void *arg) {
  size_t n = *(size_t *)arg;
  size_t done = 0;
  for (size_t i = 0; i < n; ++i) done += W.capp[i].hs_done;
  return done == n && W.srv_hs >= n;
}

static int p_all_echoed(void *arg) {
  size_t n = *(size_t *)arg;
  size_t done = 0;
  for (size_t i = 0; i < n; ++i) done += W.capp[i].rx_fin;
  return done == n;
}

static int p_all_closed(void *arg) {
  size_t n = *(size_t *)arg;
  size_t done = 0;
  for (size_t i = 0; i < n; ++i) done += W.capp[i].on_closed;
  return done == n && W.srv_live == 0;
}

static int p_echoed(void *arg) { return ((app *)arg)->rx_fin; }
static int p_cli_closed(void *arg) { return ((app *)arg)->on_closed > 0; }
static int p_srv_empty(void *arg) {
  (void)arg;
  return W.srv_live == 0;
}
static int p_srv_closed1(void *arg) {
  (void)arg;
  return W.srv_closed >= 1;
}

static int p_accepted(void *arg) { return W.accepted >= *(size_t *)arg; }

/* --- tests ------------------------------------------------------------------------------------------ */

Test(quic_ev, handshake_and_agent_id) {
  server_start();
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, a, 10.));
  app *s = W.last_srv;
  cr_assert_not_null(s);
  cr_assert_str_eq(s->agent_id, AGENT_ID);
  const atun_quic_peer *peer = atun_quic_conn_get_peer(s->conn);
  cr_assert_not_null(peer);
  cr_assert_str_eq(peer->cn, "agent-one");
  /* on_accept saw the client's path. */
  atun_quic_endpoint cl;
  cr_assert_eq(atun_quic_ev_get_local(W.cli[0], &cl), 0);
  cr_assert_eq(s->path.remote.port, cl.port);
  cr_assert_eq(memcmp(&s->path.local, &W.srv_ep, sizeof(W.srv_ep)), 0);
  cr_assert_eq(atun_quic_ev_get_user_data(W.srv), &W);
  cr_assert_eq(atun_quic_ev_of(s->conn), W.srv);
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  cr_assert_eq(st.conns_accepted, 1);
  cr_assert_eq(st.conns_open, 1);
  /* The server's first id and the client's original destination id. */
  cr_assert_geq(st.cids_routed, 2);
  cr_assert_leq(st.cids_routed, ATUN_QUIC_EV_CONN_CIDS_MAX);
  cr_assert_gt(st.udp.datagrams_in, 0);
  cr_assert_gt(st.udp.bytes_out, 0);
  /* A second connect while one exists. */
  cr_assert_eq(atun_quic_ev_connect(W.cli[0], &W.srv_ep, NULL), ATUN_ERR_STATE);
  /* Setting the user data takes. */
  int marker;
  atun_quic_ev_conn_set_user_data(a->conn, &marker);
  cr_assert_eq(atun_quic_ev_conn_get_user_data(a->conn), &marker);
  atun_quic_ev_conn_set_user_data(a->conn, a);
}

static void echo_check(app *a, size_t total) {
  cr_assert_eq(a->mismatch, 0);
  cr_assert_eq(a->rcvd, total);
  cr_assert(a->rx_fin);
}

Test(quic_ev, stream_echo_byte_exact) {
  W.ses.writes_per_round = 16;
  W.sq.stream_window_initial = MIB;
  W.sq.stream_window_max = 2 * MIB;
  server_start();
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  app *a = client_start(0, ECHO_MAX, 1);
  cr_assert(run_until(p_echoed, a, 60.));
  double secs = since(&t0);
  cr_assert(run_until(p_cli_closed, a, 10.));
  echo_check(a, ECHO_MAX);
  cr_assert_eq(a->on_closed, 1);
  cr_assert_eq(a->closed_cb, 1);
  cr_assert_eq(a->close.source, ATUN_QUIC_CLOSE_LOCAL);
  cr_log_info("echoed %zu MiB each way in %.2f s (%.0f Mbit/s each way)",
              ECHO_MAX / MIB, secs, (double)ECHO_MAX * 8 / secs / 1e6);
  /* The server side goes once its draining period ends. */
  cr_assert(run_until(p_srv_empty, NULL, 10.));
  cr_assert_eq(W.srv_closed, 1);
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  cr_assert_gt(st.write_yields, 0);
  cr_assert_eq(st.conns_closed, 1);
  cr_assert_eq(st.conns_open, 0);
  cr_assert_gt(st.udp.bytes_in, ECHO_MAX);
  cr_assert_gt(st.udp.bytes_out, ECHO_MAX);
  cr_log_info("server: %lu datagrams out in %lu sendmmsg calls, %lu GSO messages",
              (unsigned long)st.udp.datagrams_out, (unsigned long)st.udp.send_calls,
              (unsigned long)st.udp.gso_sends);
  cr_assert_eq(atun_quic_ev_client_conn(W.cli[0]), NULL);
  atun_quic_ev_stats cs;
  atun_quic_ev_get_stats(W.cli[0], &cs);
  cr_assert_eq(cs.conns_closed, 1);
  cr_assert_leq(st.udp.datagrams_in, cs.udp.datagrams_out);
}

/* The send queue fills (the kernel "says" EAGAIN now and then): the
 * connections hold back, resume on EV_WRITE, and nothing is lost. */
static int flaky_calls;
static int flaky_sendmmsg(int fd, struct mmsghdr *m, unsigned n, int flags) {
  if (++flaky_calls % 3 == 0) {
    errno = EAGAIN;
    return -1;
  }
  return sendmmsg(fd, m, n, flags);
}

Test(quic_ev, blocked_queue_resumes) {
  W.ces.udp.send_queue_max = 4;
  W.ses.udp.send_queue_max = 4;
  server_start();
  atun__udp_sendmmsg = flaky_sendmmsg;
  app *a = client_start(0, MIB, 1);
  cr_assert(run_until(p_cli_closed, a, 60.));
  echo_check(a, MIB);
  atun_quic_ev_stats cs, ss;
  atun_quic_ev_get_stats(W.cli[0], &cs);
  atun_quic_ev_get_stats(W.srv, &ss);
  cr_assert_gt(cs.write_blocked + ss.write_blocked, 0);
  cr_assert_gt(cs.udp.send_blocked + ss.udp.send_blocked, 0);
  cr_assert_eq(cs.udp.send_dropped + ss.udp.send_dropped, 0);
}

static int p_idle(void *arg) {
  app *a = arg;
  return a->on_closed > 0 && W.srv_live == 0;
}

Test(quic_ev, idle_timeout_closes_silent_connection) {
  W.sq.idle_timeout_ns = 300 * ATUN_NS_PER_MS;
  W.cq.idle_timeout_ns = 300 * ATUN_NS_PER_MS;
  server_start();
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, a, 10.));
  atun_tstamp t0 = atun_quic_ev_now(W.loop);
  cr_assert(run_until(p_idle, a, 10.));
  atun_tstamp dt = atun_quic_ev_now(W.loop) - t0;
  cr_assert_geq(dt, 250 * ATUN_NS_PER_MS);
  cr_assert_lt(dt, 5 * ATUN_NS_PER_S);
  cr_assert_eq(a->close.source, ATUN_QUIC_CLOSE_IDLE);
  cr_assert_eq(a->on_closed, 1);
  cr_assert_eq(a->closed_cb, 1);
  cr_assert_eq(W.srv_closed, 1);
  cr_assert_eq(atun_quic_ev_client_conn(W.cli[0]), NULL);
  atun_quic_endpoint ep;
  cr_assert_eq(atun_quic_ev_get_local(W.cli[0], &ep), ATUN_ERR_STATE);
}

Test(quic_ev, graceful_close_reaches_peer) {
  server_start();
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, a, 10.));
  app *s = W.last_srv;
  /* The server closes; the peer learns code and reason. */
  cr_assert_eq(atun_quic_ev_close(s->conn, 0x42, "maintenance"), 0);
  cr_assert_eq(atun_quic_ev_close(s->conn, 0x42, "again"), ATUN_ERR_STATE);
  cr_assert(run_until(p_idle, a, 10.));
  cr_assert_eq(a->close.source, ATUN_QUIC_CLOSE_PEER);
  cr_assert(a->close.app);
  cr_assert_eq(a->close.error_code, 0x42);
  cr_assert_str_eq(a->close.reason, "maintenance");
  cr_assert_eq(a->on_closed, 1);
  cr_assert_eq(W.srv_closed, 1);
}

Test(quic_ev, abort_and_reconnect) {
  W.sq.idle_timeout_ns = 400 * ATUN_NS_PER_MS;
  server_start();
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, a, 10.));
  atun_quic_endpoint first;
  cr_assert_eq(atun_quic_ev_get_local(W.cli[0], &first), 0);
  /* Client abort: gone at once, no word to the server. */
  atun_quic_ev_abort(a->conn);
  cr_assert_eq(a->on_closed, 1);
  cr_assert_eq(a->closed_cb, 0);
  cr_assert_null(atun_quic_ev_client_conn(W.cli[0]));
  cr_assert_eq(W.srv_live, 1);
  /* Reconnect: a fresh socket and a second server connection. */
  a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs2, a, 10.));
  cr_assert_eq(W.srv_hs, 2);
  atun_quic_endpoint second;
  cr_assert_eq(atun_quic_ev_get_local(W.cli[0], &second), 0);
  cr_assert_neq(first.port, second.port);
  cr_assert_eq(W.accepted, 2);
  /* The orphan on the server idles out. */
  cr_assert(run_until(p_srv_closed1, NULL, 5.));
}

static int p_unknown(void *arg) {
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  return st.unknown_cid > 0 && st.undecodable > 0 && *(int *)arg;
}

static int p_accept_failed(void *arg) {
  (void)arg;
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  return st.accept_failures > 0;
}

Test(quic_ev, server_abort_then_unknown_cids_dropped) {
  server_start();
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, a, 10.));
  app *s = W.last_srv;
  atun_quic_ev_abort(s->conn);
  cr_assert_eq(W.srv_closed, 1);
  cr_assert_eq(W.srv_live, 0);
  /* The client keeps talking: short headers for a connection the server
   * no longer knows are dropped and counted. */
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(a->conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(a->conn, sid, (const uint8_t *)"hello", 5, 0), 5);
  atun_quic_ev_flush(a->conn);
  /* And a datagram too short to carry a connection id. */
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_storage ss;
  socklen_t len;
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(&ss, &len, &W.srv_ep, AF_INET), 0);
  cr_assert_eq(sendto(fd, "\x40", 1, 0, (struct sockaddr *)&ss, len), 1);
  int yes = 1;
  cr_assert(run_until(p_unknown, &yes, 5.));
  /* An Initial with a destination id shorter than RFC 9000 allows a client
   * (8 bytes): ngtcp2 will not accept it, no connection is made. */
  uint8_t bad[1200] = {0xc3, 0, 0, 0, 1, 4, 1, 2, 3, 4, 0, 0, 0x44, 0x00};
  cr_assert_eq(sendto(fd, bad, sizeof(bad), 0, (struct sockaddr *)&ss, len), 1200);
  cr_assert(run_until(p_accept_failed, NULL, 5.));
  close(fd);
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  cr_assert_eq(st.conns_accepted, 1);
  cr_assert_eq(st.accept_failures, 1);
  cr_assert_eq(st.conns_open, 0);
  cr_assert_eq(st.cids_routed, 0);
}

static int p_srv_reset(void *arg) {
  app *a = arg;
  return W.last_srv != NULL && W.last_srv->nreset > 0 && W.last_srv->nstream_closed > 0 &&
         a->nstream_closed > 0;
}

static int p_echo3(void *arg) { return ((app *)arg)->rcvd == 3; }

/* A stream reset travels (a TCP reset on the agent side, say). */
Test(quic_ev, stream_reset_reaches_peer) {
  server_start();
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, a, 10.));
  int64_t sid;
  cr_assert_eq(atun_quic_stream_open(a->conn, &sid, NULL), 0);
  cr_assert_eq(atun_quic_stream_write(a->conn, sid, (const uint8_t *)"abc", 3, 0), 3);
  atun_quic_ev_flush(a->conn);
  cr_assert(run_until(p_echo3, a, 5.));
  cr_assert_eq(atun_quic_stream_shutdown(a->conn, sid, 7), 0);
  atun_quic_ev_flush(a->conn);
  cr_assert(run_until(p_srv_reset, a, 5.));
  cr_assert_eq(W.last_srv->reset_code, 7);
  cr_assert_eq(a->nstream_closed, 1);
  cr_assert_eq(W.last_srv->nstream_closed, 1);
}

static int p_wrong_peer(void *arg) {
  (void)arg;
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.cli[0], &st);
  return st.wrong_peer > 0;
}

Test(quic_ev, client_drops_strangers) {
  server_start();
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, a, 10.));
  atun_quic_endpoint cl;
  cr_assert_eq(atun_quic_ev_get_local(W.cli[0], &cl), 0);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_storage ss;
  socklen_t len;
  cr_assert_eq(atun_udp_sockaddr_from_endpoint(&ss, &len, &cl, AF_INET), 0);
  uint8_t junk[1200] = {0xc0};
  cr_assert_eq(sendto(fd, junk, sizeof(junk), 0, (struct sockaddr *)&ss, len), 1200);
  cr_assert(run_until(p_wrong_peer, NULL, 5.));
  close(fd);
  cr_assert_eq(a->closed_cb, 0);
}

static int p_timeout3(void *arg) { return ((app *)arg)->on_closed > 0; }

Test(quic_ev, connection_bound_refuses) {
  W.ses.conns_max = 2;
  W.cq.handshake_timeout_ns = 700 * ATUN_NS_PER_MS;
  server_start();
  app *a = client_start(0, 0, 0);
  app *b = client_start(1, 0, 0);
  size_t two = 2;
  cr_assert(run_until(p_all_hs, &two, 10.));
  app *c = client_start(2, 0, 0);
  cr_assert(run_until(p_timeout3, c, 10.));
  cr_assert_eq(c->hs_done, 0);
  cr_assert_eq(c->close.source, ATUN_QUIC_CLOSE_TIMEOUT);
  cr_assert_eq(c->close.hs_failure, ATUN_QUIC_HS_TIMEOUT);
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  cr_assert_gt(st.conns_refused, 0);
  cr_assert_eq(st.conns_accepted, 2);
  cr_assert_eq(st.conns_open, 2);
  /* Room again once one goes. */
  atun_quic_ev_close(a->conn, 0, "bye");
  cr_assert(run_until(p_srv_closed1, NULL, 10.));
  W.cq.handshake_timeout_ns = 10 * ATUN_NS_PER_S;
  c = client_start(2, 0, 0);
  size_t three = 3;
  cr_assert(run_until(p_accepted, &three, 10.));
  cr_assert(run_until(p_hs, c, 10.));
  (void)b;
}

/* Two buckets for every id: long probe runs that wrap around the end of
 * the table. */
static uint64_t poor_hash(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n) {
  (void)k0;
  (void)k1;
  return n > 0 && (p[n - 1] & 1) ? 63 : 62;
}

/* A small demux table: connections come and go, ids collide and are
 * removed from the middle of probe runs; every id leaves in the end. */
Test(quic_ev, small_table_churn) {
  W.ses.conns_max = 2; /* 64 slots */
  atun__quic_ev_hash = poor_hash;
  server_start();
  for (int round = 0; round < 4; ++round) {
    for (size_t i = 0; i < 2; ++i) client_start(i, 4096, 1);
    size_t n = 2;
    cr_assert(run_until(p_all_echoed, &n, 20.), "round %d", round);
    for (size_t i = 0; i < 2; ++i) echo_check(&W.capp[i], 4096);
    cr_assert(run_until(p_all_closed, &n, 20.), "round %d", round);
    atun_quic_ev_stats st;
    atun_quic_ev_get_stats(W.srv, &st);
    cr_assert_eq(st.cids_routed, 0);
    cr_assert_eq(st.cid_overflow, 0);
    cr_assert_eq(st.conns_refused, 0);
  }
  cr_assert_eq(W.accepted, 8);
}

Test(quic_ev, on_accept_refuses) {
  W.cq.handshake_timeout_ns = 500 * ATUN_NS_PER_MS;
  server_start();
  W.refuse = 1;
  app *a = client_start(0, 0, 0);
  cr_assert(run_until(p_timeout3, a, 10.));
  cr_assert_eq(a->hs_done, 0);
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  cr_assert_gt(st.conns_refused, 0);
  cr_assert_eq(st.conns_accepted, 0);
  cr_assert_eq(W.accepted, 0);
}

#define MANY 50
#define MANY_BYTES 65536

Test(quic_ev, fifty_clients_at_once) {
  server_start();
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (size_t i = 0; i < MANY; ++i) client_start(i, MANY_BYTES, 1);
  size_t n = MANY;
  cr_assert(run_until(p_all_hs, &n, 60.));
  double t_hs = since(&t0);
  cr_assert(run_until(p_all_echoed, &n, 60.));
  double t_echo = since(&t0);
  /* Each side then waits out its closing or draining period (3 PTO). */
  cr_assert(run_until(p_all_closed, &n, 60.));
  double t_closed = since(&t0);
  for (size_t i = 0; i < MANY; ++i) {
    echo_check(&W.capp[i], MANY_BYTES);
    cr_assert_eq(W.capp[i].on_closed, 1);
  }
  cr_assert_eq(W.accepted, MANY);
  cr_assert_eq(W.srv_closed, MANY);
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  cr_assert_eq(st.conns_accepted, MANY);
  cr_assert_eq(st.conns_closed, MANY);
  cr_assert_eq(st.conns_open, 0);
  cr_assert_eq(st.cid_overflow, 0);
  /* Every id of every connection left the table. */
  cr_assert_eq(st.cids_routed, 0);
  cr_log_info("%d clients: all handshakes %.2f s, all echoes %.2f s, all closed %.2f s",
              MANY, t_hs, t_echo, t_closed);
}

/* A gateway listens on [::]: IPv4 and IPv6 agents on one socket, each
 * answered from the address it dialled (pktinfo). */
Test(quic_ev, dual_stack_server) {
  if (server_start_on("::") != 0) cr_skip_test("no IPv6 socket");
  atun_udp_info info;
  atun_quic_ev_get_udp_info(W.srv, &info);
  cr_assert(info.dual_stack);
  uint16_t port = W.srv_ep.port;
  const char *dial[] = {"127.0.0.1", "::1"};
  for (size_t i = 0; i < 2; ++i) {
    cr_assert_eq(atun_addr_parse(&W.srv_ep.addr, dial[i]), 0);
    W.srv_ep.port = port;
    client_start(i, 256 * 1024, 1);
  }
  size_t n = 2;
  cr_assert(run_until(p_all_echoed, &n, 30.));
  for (size_t i = 0; i < 2; ++i) echo_check(&W.capp[i], 256 * 1024);
  cr_assert(run_until(p_all_closed, &n, 30.));
  cr_assert_eq(W.accepted, 2);
  cr_assert_eq(W.srv_closed, 2);
  /* Not the wildcard: each connection's local address is the one its
   * agent dialled, IPv4 folded from the mapped form. */
  cr_assert_neq(W.accept_paths[0].remote.addr.family, W.accept_paths[1].remote.addr.family);
  for (size_t i = 0; i < 2; ++i) {
    const atun_quic_path *p = &W.accept_paths[i];
    atun_addr want;
    cr_assert_eq(atun_addr_parse(&want, p->remote.addr.family == ATUN_AF_INET ? "127.0.0.1"
                                                                            : "::1"), 0);
    cr_assert_eq(memcmp(&p->local.addr, &want, sizeof(want)), 0);
    cr_assert_eq(p->local.port, port);
  }
}

Test(quic_ev, invalid_arguments) {
  atun_quic_endpoint lo = {.port = 0};
  cr_assert_eq(atun_addr_parse(&lo.addr, "127.0.0.1"), 0);
  atun_quic_conn_config cfg = conn_config(W.stls, NULL, NULL);
  atun_quic_ev *ep = NULL;
  cr_assert_eq(atun_quic_ev_server_new(NULL, W.loop, NULL, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_ev_server_new(&ep, NULL, NULL, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, NULL, NULL, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, NULL, &lo, NULL, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_quic_conn_config bad = cfg;
  bad.tls = NULL;
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, NULL, &lo, &bad, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  bad = cfg;
  bad.rand.fill = NULL;
  cr_assert_eq(atun_quic_ev_client_new(&ep, W.loop, NULL, &bad, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_quic_ev_settings s;
  atun_quic_ev_settings_default(&s);
  s.conns_max = 0;
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, &s, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  s.conns_max = ATUN_QUIC_EV_CONNS_LIMIT + 1;
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, &s, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_quic_ev_settings_default(&s);
  s.writes_per_round = 0;
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, &s, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  s.writes_per_round = ATUN_QUIC_EV_WRITES_LIMIT + 1;
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, &s, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  atun_quic_ev_settings_default(&s);
  s.udp.send_datagram_max = ATUN_QUIC_DATAGRAM_MIN - 1;
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, &s, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  /* The UDP layer's verdicts come through. */
  atun_quic_endpoint far = lo;
  cr_assert_eq(atun_addr_parse(&far.addr, "192.0.2.1"), 0);
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, NULL, &far, &cfg, NULL, NULL),
               ATUN_ERR_INVALID_ARGUMENT);
  /* A server does not connect; a client needs a real remote. */
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, NULL, &lo, &cfg, NULL, NULL), 0);
  atun_quic_endpoint remote;
  cr_assert_eq(atun_quic_ev_get_local(ep, &remote), 0);
  cr_assert_eq(atun_quic_ev_connect(ep, &remote, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_null(atun_quic_ev_client_conn(ep));
  atun_udp_info info;
  atun_quic_ev_get_udp_info(ep, &info);
  cr_assert_eq(info.local.port, remote.port);
  atun_quic_ev_del(ep);
  atun_quic_conn_config ccfg = conn_config(W.ctls, NULL, NULL);
  cr_assert_eq(atun_quic_ev_client_new(&ep, W.loop, NULL, &ccfg, NULL, NULL), 0);
  atun_quic_endpoint zero = remote;
  zero.port = 0;
  cr_assert_eq(atun_quic_ev_connect(ep, &zero, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_ev_connect(ep, NULL, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_eq(atun_quic_ev_get_local(ep, &remote), ATUN_ERR_STATE);
  cr_assert_eq(atun_quic_ev_get_local(NULL, &remote), ATUN_ERR_INVALID_ARGUMENT);
  atun_quic_ev_get_udp_info(ep, &info);
  cr_assert_eq(info.local.port, 0);
  /* A server TLS context makes the connection constructor refuse. */
  atun_quic_ev_del(ep);
  ccfg.tls = W.stls;
  cr_assert_eq(atun_quic_ev_client_new(&ep, W.loop, NULL, &ccfg, NULL, NULL), 0);
  cr_assert_eq(atun_quic_ev_connect(ep, &remote, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_null(atun_quic_ev_client_conn(ep));
  atun_quic_ev_del(ep);
  atun_quic_ev_del(NULL);
  atun_quic_ev_flush(NULL);
  atun_quic_ev_abort(NULL);
  cr_assert_eq(atun_quic_ev_close(NULL, 0, NULL), ATUN_ERR_INVALID_ARGUMENT);
  cr_assert_null(atun_quic_ev_get_user_data(NULL));
}

static int fail_rand(uint8_t *d, size_t n, void *ud) {
  (void)d;
  (void)n;
  (void)ud;
  return -1;
}

Test(quic_ev, rand_failure) {
  atun_quic_endpoint lo = {.port = 0};
  cr_assert_eq(atun_addr_parse(&lo.addr, "127.0.0.1"), 0);
  atun_quic_conn_config cfg = conn_config(W.stls, NULL, NULL);
  cfg.rand.fill = fail_rand;
  atun_quic_ev *ep = NULL;
  cr_assert_eq(atun_quic_ev_server_new(&ep, W.loop, NULL, &lo, &cfg, NULL, NULL),
               ATUN_ERR_INTERNAL);
  cr_assert_null(ep);
}

Test(quic_ev, allocation_failures) {
  atun_quic_endpoint lo = {.port = 0};
  cr_assert_eq(atun_addr_parse(&lo.addr, "127.0.0.1"), 0);
  int ok = 0;
  for (long n = 0; n < 20 && !ok; ++n) {
    atun_failmem fm;
    atun_failmem_init(&fm, n);
    atun_quic_conn_config cfg = conn_config(W.stls, NULL, NULL);
    cfg.mem = &fm.mem;
    atun_quic_ev *ep = NULL;
    int rv = atun_quic_ev_server_new(&ep, W.loop, NULL, &lo, &cfg, NULL, NULL);
    if (rv == 0) {
      ok = 1;
      atun_quic_ev_del(ep);
    } else {
      cr_assert_eq(rv, ATUN_ERR_NOMEM, "server after %ld: %d", n, rv);
    }
    cr_assert_eq(fm.live, 0);
  }
  cr_assert(ok);
  /* Server out of memory at an accept: the Initial is dropped, the
   * client's next one gets in. */
  atun_failmem sfm;
  atun_failmem_init(&sfm, -1);
  atun_quic_endpoint any = lo;
  atun_quic_conn_config scfg = conn_config(W.stls, &W.sq, NULL);
  scfg.mem = &sfm.mem;
  cr_assert_eq(atun_quic_ev_server_new(&W.srv, W.loop, &W.ses, &any, &scfg, &srv_hooks, &W), 0);
  cr_assert_eq(atun_quic_ev_get_local(W.srv, &W.srv_ep), 0);
  atun_failmem_arm(&sfm, 0, 1);
  app *c = client_start(0, 0, 0);
  cr_assert(run_until(p_hs, c, 10.));
  atun_quic_ev_stats st;
  atun_quic_ev_get_stats(W.srv, &st);
  cr_assert_eq(st.accept_failures, 1);
  cr_assert_eq(st.conns_accepted, 1);
  cr_assert_eq(sfm.failures, 1);
  cr_assert_eq(W.accept_lost, 1);
  cr_assert_eq(W.accepted, 2);
  atun_quic_ev_del(W.cli[0]);
  W.cli[0] = NULL;
  atun_quic_ev_del(W.srv);
  W.srv = NULL;
  cr_assert_eq(sfm.live, 0);
  /* Client connect: every allocation up to success fails cleanly. */
  server_start();
  ok = 0;
  for (long n = 1; n < 400 && !ok; ++n) {
    atun_failmem fm;
    atun_failmem_init(&fm, n);
    app a = {.w = &W};
    atun_quic_conn_config cfg = conn_config(W.ctls, NULL, &a);
    cfg.mem = &fm.mem;
    atun_quic_ev *ep = NULL;
    cr_assert_eq(atun_quic_ev_client_new(&ep, W.loop, NULL, &cfg, &cli_hooks, &W), 0);
    int rv = atun_quic_ev_connect(ep, &W.srv_ep, NULL);
    if (rv == 0) {
      ok = 1;
    } else {
      cr_assert_eq(rv, ATUN_ERR_NOMEM, "connect after %ld: %d", n, rv);
      cr_assert_null(atun_quic_ev_client_conn(ep));
      cr_assert_eq(fm.live, 1); /* the endpoint itself */
    }
    atun_quic_ev_del(ep);
    cr_assert_eq(fm.live, 0);
    cr_assert_eq(a.on_closed, ok);
  }
  cr_assert(ok);
}
