/*
 * The running gateway: one libev loop holding the QUIC listener (agents.c),
 * the HTTPS API (api.c), the registry, the store and the timers of
 * cmd_run.c.  Everything runs on the loop thread.
 *
 * Time: registry, sessions, QUIC and rate limits take monotonic ns; the
 * store, tokens and certificates take wall-clock ns (clock.h).
 */
#ifndef ATUN_GW_GW_H
#define ATUN_GW_GW_H

#include <ev.h>

#include "config.h"
#include "https.h"
#include "metrics.h"
#include "quic.h"
#include "quic_ev.h"
#include "ratelimit.h"
#include "registry.h"
#include "state.h"
#include "store.h"

/* QUIC TLS contexts alive at once: the current one and those retired by a
 * server certificate renewal whose connections are still open. */
#define ATUN_GW_TLS_SLOTS 4

/* A QUIC TLS context and the connections admitted with it.  Connections
 * still in their handshake are not counted: a retired context is freed
 * only once none is admitted and a handshake timeout has passed since it
 * stopped taking new connections, by which time every handshake begun on
 * it has ended one way or the other. */
typedef struct atun_gw_tls_slot {
  uint32_t magic;         /* ATUN_GW_TLS_MAGIC: the user data of a
                             connection not yet admitted points here */
  atun_quic_tls *tls;     /* NULL: slot free */
  size_t conns;           /* admitted connections made with |tls| */
  atun_tstamp retired_at; /* mono; ATUN_TSTAMP_MAX while current */
} atun_gw_tls_slot;

#define ATUN_GW_TLS_MAGIC 0x676c7473u

typedef struct atun_gw_conn atun_gw_conn;
typedef struct atun_gw_client atun_gw_client;
typedef struct atun_gw_dataplane atun_gw_dataplane;

/* Index of the "no_agent" client outcome, after the connect statuses. */
#define ATUN_GW_CONNECT_NO_AGENT (ATUN_CONNECT_STATUS_MAX + 1)
#define ATUN_GW_CONNECT_RESULTS (ATUN_GW_CONNECT_NO_AGENT + 1)

/* Data-plane counters (socks.c counts, metrics.c renders). */
typedef struct atun_gw_dp_counters {
  uint64_t connects[ATUN_GW_CONNECT_RESULTS]; /* by atun_connect_status */
  uint64_t handshake_failures; /* SOCKS5 clients gone before a request */
  uint64_t bytes_up;   /* client -> target, of finished connections */
  uint64_t bytes_down; /* target -> client */
  size_t clients;      /* client connections open now */
} atun_gw_dp_counters;

/* The session streams the gateway opened on one agent connection
 * (socks.c links its clients here; agents.c owns the storage). */
typedef struct atun_gw_streams {
  atun_gw_client *head;
  uint32_t count;
} atun_gw_streams;

/* What a client needs of the live connection behind a route candidate. */
typedef struct atun_gw_agent_link {
  atun_quic_conn *conn;
  atun_gw_streams *streams;
  uint8_t id[16];
  uint64_t generation;
} atun_gw_agent_link;

typedef struct atun_gw {
  struct ev_loop *loop;
  const char *config_path;
  atun_config_gateway cfg;
  atun_gw_pki *pki;
  atun_store *store;
  atun_registry *reg;
  atun_gw_metrics metrics;

  /* QUIC side (agents.c) */
  atun_quic_ev *quic;
  atun_quic_settings quic_settings;
  atun_gw_tls_slot tls[ATUN_GW_TLS_SLOTS];
  size_t tls_current;
  atun_gw_conn *conns; /* every admitted connection, newest first */
  size_t nconns;
  ev_timer reg_timer;    /* the registry's expiry */
  atun_route_domain *domains; /* scratch for one advertisement */

  /* HTTPS side (api.c) */
  atun_http_router *router;
  atun_https_server *https;
  atun_ratelimit *enroll_limit;
  uint16_t api_port;     /* bound port */

  /* Data plane (socks.c) */
  atun_gw_dataplane *dp;
  atun_gw_dp_counters dp_counts;

  /* cmd_run.c */
  ev_signal sigterm, sigint, sighup;
  ev_timer housekeeping; /* every minute: retired TLS, expired tokens */
  ev_timer renew;        /* daily: server certificate renewal */
  ev_timer drain;        /* bound on the drain after SIGTERM */
  atun_tstamp drain_deadline; /* mono */
  int draining;          /* SIGTERM seen: no new connections */
  int tls_reload_pending; /* renewed, but no TLS slot was free yet */
} atun_gw;

/* --- agents.c: QUIC listener, sessions, registry ----------------------------- */

/* Creates the registry and the QUIC TLS context and starts listening on
 * cfg.quic_listen.  Returns 0 or an ATUN_ERR_*; logs what failed. */
int atun_gw_agents_start(atun_gw *gw);

/* Closes every connection and frees the QUIC side (NULL parts allowed). */
void atun_gw_agents_stop(atun_gw *gw);

/* Closes every live connection of agent |id| (16 bytes) with |app_error|
 * and |reason|.  Returns the number of connections closed. */
size_t atun_gw_agents_close(atun_gw *gw, const uint8_t *id, uint64_t app_error,
                            const char *reason);

/* Sends Goodbye to every agent; refuses new connections from now on. */
void atun_gw_agents_drain(atun_gw *gw);

/* Connections not yet fully closed. */
size_t atun_gw_agents_open(const atun_gw *gw);

/* Fills |*out| with the registered, open connection behind route-table
 * handle |handle|.  Returns 0 or ATUN_ERR_NOT_FOUND (no such connection,
 * or it is closing). */
int atun_gw_agents_link(atun_gw *gw, uint32_t handle, atun_gw_agent_link *out);

/* --- tls.c: QUIC TLS contexts across server certificate renewals ------------ */

/* Makes the first context from the current server certificate.  Returns 0
 * or what atun_quic_tls_new returns. */
int atun_gw_tls_start(atun_gw *gw);

/* Swaps in a context for the current server certificate at monotonic
 * |mono|; the old one serves its connections until they end.  Returns 0,
 * ATUN_ERR_FULL (no free slot yet: try again later) or what
 * atun_quic_tls_new returns. */
int atun_gw_tls_reload(atun_gw *gw, atun_tstamp mono);

/* Frees retired contexts nobody can use any more (see atun_gw_tls_slot). */
void atun_gw_tls_housekeeping(atun_gw *gw, atun_tstamp mono);

/* How long a retired context is kept at least: a handshake timeout, an idle
 * timeout and some slack, by when every connection begun on it before it
 * retired was either admitted (and counted) or gone. */
uint64_t atun_gw_tls_hold_ns(const atun_gw *gw);

/* Frees every context. */
void atun_gw_tls_free(atun_gw *gw);

/* --- api.c: HTTPS management API ------------------------------------------------ */

/* Builds the router with every endpoint and the enrollment rate limiter.
 * Returns 0 or an ATUN_ERR_*. */
int atun_gw_api_init(atun_gw *gw);

/* Starts the HTTPS server on cfg.api_listen with the current server
 * certificate (leaf and CA).  Returns 0 or an ATUN_ERR_*; logs what
 * failed. */
int atun_gw_api_start(atun_gw *gw);

/* Stops accepting and closes every API connection. */
void atun_gw_api_stop(atun_gw *gw);

/* Frees the API side. */
void atun_gw_api_free(atun_gw *gw);

/* The agent object of the API (docs/api.md) for store record |rec|, with
 * live state at monotonic |mono|; also written into the status file.
 * Returns NULL when out of memory. */
struct cJSON *atun_gw_api_agent_json(atun_gw *gw, const atun_agent_record *rec,
                                     atun_tstamp mono);

/* --- renew.c ------------------------------------------------------------------ */

/* Answers an agent's certificate renewal: signs the CSR DER |csr| (|len|
 * bytes) for agent |id| named |name| (the identity of its connection; the
 * CSR's own subject is ignored) and records the new certificate in the
 * store.  The certificate DER goes to |der| (ATUN_CA_DER_MAX bytes), its
 * expiry (wall clock) to |*until|.  Returns an atun_cert_status: OK,
 * BAD_CSR (unreadable, badly signed, not P-256), DENIED (revoked or
 * unknown agent) or INTERNAL. */
uint64_t atun_gw_renew_sign(atun_gw *gw, const char *id, const char *name, const uint8_t *csr,
                            size_t len, uint8_t *der, size_t *derlen, atun_tstamp *until);

/* --- metrics.c ---------------------------------------------------------------- */

/* Appends the Prometheus text exposition of everything the gateway counts
 * to |out|, with agent gauges at monotonic |mono|.  Returns 0 or
 * ATUN_ERR_STORE (the store could not be read; |out| is then partial). */
int atun_gw_metrics_render(atun_gw *gw, atun_gw_text *out, atun_tstamp mono);

/* --- helpers ------------------------------------------------------------------- */

/* Parses a canonical lowercase UUID into 16 bytes.  Returns 0 or
 * ATUN_ERR_MALFORMED. */
int atun_gw_uuid_parse(uint8_t out[16], const char *s, size_t len);

/* Writes 16 bytes as a canonical UUID and a NUL. */
void atun_gw_uuid_format(char out[ATUN_UUID_STRLEN], const uint8_t id[16]);

#endif /* ATUN_GW_GW_H */
