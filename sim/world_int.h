/*
 * Internal structures of the simulated world, shared by world.c (the run,
 * faults and invariants), sim_agent.c and sim_gateway.c (the two kinds of
 * node).  Not part of any interface outside sim/.
 */
#ifndef ATUN_SIM_WORLD_INT_H
#define ATUN_SIM_WORLD_INT_H

#include "certs.h"
#include "codec.h"
#include "quic.h"
#include "registry.h"
#include "session_agent.h"
#include "session_gw.h"
#include "token.h"
#include "world.h"

#define SIM_GW_NODE 0u
#define SIM_QUIC_PORT 4433
#define SIM_API_PORT 8443
/* Gateway-side connections held per agent (the live one plus stale ones
 * waiting for their idle timeout); a further one is refused. */
#define SIM_CONNS_PER_AGENT 4
#define SIM_ROUTE_VERSIONS_MAX 64
#define SIM_ECHO_STREAMS_MAX 16
/* Sim header in front of every datagram: source port, destination port. */
#define SIM_HDR_LEN 4
#define SIM_DGRAM_MAX (SIM_HDR_LEN + ATUN_QUIC_DATAGRAM_MAX)
/* Same-timestamp timer firings of one object before the run calls it a
 * livelock. */
#define SIM_SPIN_MAX 10000
#define SIM_TOKEN_RACERS_MAX 5
#define SIM_ENROLL_TRIES_MAX 5

/* Event kinds (SIM_EV_DELIVER is the network's). */
enum {
  EV_AGENT_TIMER = 2,  /* node: agent; data: incarnation */
  EV_CONN_TIMER,       /* data: slot | generation << 32 */
  EV_FAULT,            /* node: target; data: fault kind */
  EV_CHECK,            /* periodic invariant check */
  EV_ENROLL            /* node: agent; data: racer attempt */
};

enum {
  F_GW_CRASH = 1, F_GW_RESTART, F_AGENT_CRASH, F_AGENT_RESTART, F_PARTITION,
  F_PARTITION_END, F_PAUSE, F_PAUSE_END, F_ROUTE_CHANGE, F_REVOKE, F_TRANSFER,
  F_TOKEN_RACE, F_HEAL, F_CLOG
};

typedef struct sim_world sim_world;

typedef struct sim_echo {
  int used;
  int64_t id;
  atun_frame_reader reader;
  int header_done;
  int fin_in, fin_out;
  uint8_t *buf; /* bytes received and not yet taken by the send side */
  size_t len, cap;
} sim_echo;

typedef struct sim_agent {
  sim_world *w;
  uint32_t node;
  uint8_t id[ATUN_AGENT_ID_LEN];
  char id_str[ATUN_QUIC_AGENT_ID_STRLEN + 1];
  char name[32];
  sim_cred cred;
  atun_quic_tls *tls;
  atun_session_agent *session;
  atun_quic_conn *conn;
  int64_t ctrl;            /* -1: no control stream */
  int close_sent;           /* we closed the QUIC connection */
  int told;                 /* the session knows the connection is over */
  uint16_t port;
  uint64_t incarnation;
  int crashed;
  int revoked;             /* the gateway revoked it (the agent not told) */
  atun_tstamp paused_until;
  atun_tstamp skew;
  atun_tstamp timer_at;
  uint32_t spin;
  atun_tstamp spin_at;
  uint32_t route_version;  /* persists across crashes */
  uint64_t route_hash[SIM_ROUTE_VERSIONS_MAX];
  sim_echo echo[SIM_ECHO_STREAMS_MAX];
  uint64_t established;
  /* Enrollment race in progress. */
  char token[ATUN_TOKEN_SECRET_STRLEN];
  uint32_t enroll_tries;
  int enroll_done;
  int part_dir;            /* partition: 1 up, 2 down, 3 both */
} sim_agent;

typedef struct sim_gw_conn {
  sim_world *w;
  int used;
  uint32_t gen;            /* bumped at every reuse of the slot */
  atun_quic_conn *conn;
  atun_session_gw *session;
  int64_t ctrl;
  int close_sent;
  uint32_t agent;          /* node of the peer */
  uint16_t port;
  uint8_t id[ATUN_AGENT_ID_LEN];
  int has_id;
  uint64_t generation;     /* registry generation, 0 = not registered */
  atun_tstamp timer_at;
  uint32_t spin;
  atun_tstamp spin_at;
} sim_gw_conn;

typedef struct sim_transfer {
  int used;
  uint64_t id;
  uint32_t agent;
  uint32_t slot, slot_gen;
  int64_t stream;
  uint32_t total, sent, verified;
  uint8_t hdr[64];
  size_t hdr_len, hdr_sent;
  atun_frame_reader reader;
  int response_ok;
  int fin_sent;
  int liveness;            /* started in the liveness phase */
} sim_transfer;

/* Tokens live 60 s and races start at least 10 s apart: 16 remembered
 * tokens cover every token that can still be redeemed. */
#define SIM_TOKENS_SEEN_MAX 16
typedef struct sim_token_seen {
  char id[ATUN_TOKEN_ID_STRLEN];
  uint32_t accepted;
} sim_token_seen;

typedef struct sim_gw {
  int up;
  uint64_t incarnation;
  atun_tstamp paused_until;
  atun_tstamp skew;
  sim_cred cred;
  atun_quic_tls *tls;
  atun_registry *reg;
  sim_gw_conn *conns;      /* agents * SIM_CONNS_PER_AGENT slots */
  size_t nslots;
  /* Durable state, kept across crashes. */
  uint8_t *revoked;        /* by agent node */
  atun_token_memstore *tokens;
  sim_token_seen seen[SIM_TOKENS_SEEN_MAX]; /* acceptances per token */
  uint32_t seen_next;
} sim_gw;

struct sim_world {
  sim_options o;
  sim_result *r;
  atun_failmem fm;
  const atun_mem *mem;
  atun_testrng rng;        /* faults and network */
  atun_testrng keyrng;     /* keys, connection ids */
  atun_rand rand;          /* keyrng as atun_rand */
  sim_evq q;
  sim_net net;
  atun_tstamp now;
  int liveness;            /* 0: safety phase, 1: healing */
  atun_tstamp heal_at;
  int stop;
  sim_cred ca;
  atun_quic_settings qs;
  sim_gw gw;
  sim_agent *agents;       /* index = node; [0] unused */
  sim_transfer transfers[SIM_TRANSFERS_MAX];
  uint64_t next_transfer_id;
  uint64_t liveness_first_transfer; /* transfer ids above it were started healed */
  uint64_t hs_second, hs_in_second;
  uint32_t route_check_next;  /* round-robin cursor of the route check */
  uint8_t dgram[SIM_DGRAM_MAX];
};

/* world.c */
void sim_violation(sim_world *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void sim_log(sim_world *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sim_trace(sim_world *w, uint64_t a, uint64_t b, uint64_t c);
atun_tstamp sim_node_ts(const sim_world *w, uint32_t node);
void sim_send(sim_world *w, uint32_t from, uint16_t sport, uint32_t to, uint16_t dport,
              const uint8_t *payload, size_t len);
void sim_routes_for(const sim_world *w, uint32_t node, uint32_t version,
                    atun_prefix *subnets, size_t *nsubnets, atun_domain *domains,
                    size_t *ndomains);
uint64_t sim_routes_hash(const atun_prefix *subnets, size_t nsubnets,
                         const atun_route_domain *domains, size_t ndomains);
uint8_t sim_transfer_byte(uint64_t id, uint32_t i);
void sim_fatal(sim_world *w, const char *what, int rv);

/* sim_agent.c */
int sim_agent_init(sim_world *w, sim_agent *a, uint32_t node);
int sim_agent_start(sim_agent *a);
void sim_agent_crash(sim_agent *a);
void sim_agent_free(sim_agent *a);
void sim_agent_on_datagram(sim_agent *a, uint16_t sport, uint16_t dport,
                           const uint8_t *data, size_t len);
void sim_agent_on_timer(sim_agent *a);
void sim_agent_change_routes(sim_agent *a);
void sim_agent_enroll_send(sim_agent *a);
int sim_agent_online(const sim_agent *a);

/* sim_gateway.c */
int sim_gw_init(sim_world *w);
int sim_gw_start(sim_world *w);
void sim_gw_crash(sim_world *w);
void sim_gw_free(sim_world *w);
void sim_gw_on_datagram(sim_world *w, uint32_t from, uint16_t sport, uint16_t dport,
                        const uint8_t *data, size_t len);
void sim_gw_on_conn_timer(sim_world *w, uint32_t slot, uint32_t gen, atun_tstamp at);
void sim_gw_defer_conn_timer(sim_world *w, uint64_t data, atun_tstamp at, atun_tstamp until);
void sim_gw_revoke(sim_world *w, uint32_t node);
int sim_gw_start_transfer(sim_world *w, int liveness);
int sim_gw_issue_token(sim_world *w, char *secret);
void sim_gw_handle_registry_expiry(sim_world *w);

#endif
