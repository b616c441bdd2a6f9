/*
 * Agent registry (SPEC §4): who is connected, what they advertise, whether
 * they may carry traffic.
 *
 * Agents are keyed by their 16-byte id.  Each agent gets a slot whose index
 * is its handle in the route table; a slot is reused only after
 * atun_registry_forget().
 *
 * Connections and generations.  atun_registry_connect() hands out a
 * generation number, unique over the registry's life.  A newer connection
 * of the same agent replaces the older one.  Every later call for that
 * connection (advertise, heartbeat, stream count, disconnect) carries the
 * generation; one from an older connection fails with ATUN_ERR_STALE and
 * changes nothing, so the cleanup of a replaced connection can never touch
 * the entry of the newer one.
 *
 * Routes belong to a connection: a new connection starts with none, and a
 * disconnect or a revocation removes them.  Within a connection the route
 * epoch rules apply: a higher epoch replaces the routes, an equal one only
 * refreshes last_seen, a lower one is ignored.  The first advertisement of
 * a connection is accepted whatever its epoch (an agent that restarted may
 * count from 0 again).
 *
 * Online means connected, not revoked and seen (connect, heartbeat or
 * accepted advertisement) within the offline timeout:
 *
 *     online  <=>  ts < last_seen + offline_timeout
 *
 * so at ts = last_seen + timeout - 1 the agent is online and at
 * ts = last_seen + timeout it is offline.  Every query takes |ts| and applies
 * that rule itself; atun_registry_handle_expiry() only reports the
 * transitions (for logs and metrics).  A connected agent that timed out keeps
 * its routes in the table (skipped as ineligible), so a late heartbeat
 * brings it back without a new advertisement.
 *
 * Revocation is final for the registry's life: a revoked agent never routes
 * and every later connect of its id fails with ATUN_ERR_REVOKED.
 */
#ifndef ATUN_REGISTRY_H
#define ATUN_REGISTRY_H

#include "atun.h"
#include "route.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ATUN_REGISTRY_ID_LEN 16
/* An agent name (its certificate CN): 1..64 bytes, no control characters. */
#define ATUN_REGISTRY_NAME_MAX 64
#define ATUN_REGISTRY_AGENTS_MAX ATUN_ROUTE_AGENTS_MAX

typedef struct atun_registry_settings {
  /* Agents held at once, revoked and disconnected ones included; at most
   * ATUN_REGISTRY_AGENTS_MAX.  Default 4096. */
  uint32_t max_agents;
  /* Interval agents are told to heartbeat at.  Default 10 s. */
  uint64_t heartbeat_interval_ns;
  /* Missed heartbeats before an agent is offline: the offline timeout is
   * heartbeat_interval_ns * missed_heartbeats_max.  Default 3. */
  uint32_t missed_heartbeats_max;
  /* Route table bounds; max_agents there is taken from above. */
  atun_route_settings route;
} atun_registry_settings;

void atun_registry_settings_default(atun_registry_settings *settings);

typedef enum atun_agent_status {
  ATUN_AGENT_ONLINE = 1,
  ATUN_AGENT_OFFLINE = 2, /* disconnected, or no heartbeat within timeout */
  ATUN_AGENT_REVOKED = 3
} atun_agent_status;

/* Returns "online", "offline", "revoked" or "unknown". */
const char *atun_agent_status_name(int status);

/* Reports that the agent |id| (slot |handle|) went offline because its
 * heartbeats stopped.  Returns 0, or nonzero to make
 * atun_registry_handle_expiry() fail with ATUN_ERR_CALLBACK_FAILURE. */
typedef int (*atun_registry_offline_fn)(const uint8_t *id, uint32_t handle,
                                        atun_tstamp last_seen, void *user_data);

typedef struct atun_registry_callbacks {
  atun_registry_offline_fn offline; /* may be NULL */
} atun_registry_callbacks;

typedef struct atun_registry atun_registry;

/* Allocates an empty registry in |*preg|.  |settings| NULL = defaults;
 * |callbacks| may be NULL.  Returns 0, ATUN_ERR_INVALID_ARGUMENT (a zero
 * bound or interval, a timeout that overflows, bad route settings) or
 * ATUN_ERR_NOMEM. */
int atun_registry_new(atun_registry **preg,
                      const atun_registry_settings *settings,
                      const atun_registry_callbacks *callbacks, void *user_data,
                      const atun_mem *mem);

/* Frees |reg| and everything in it.  NULL is a no-op. */
void atun_registry_del(atun_registry *reg);

/* The offline timeout in ns (interval * missed heartbeats). */
uint64_t atun_registry_offline_timeout(const atun_registry *reg);

/* Registers a new connection of agent |id| named |name| (NUL-terminated) at
 * |ts| and stores its generation in |*pgeneration|.  An existing connection
 * of the agent is replaced: its generation goes stale, its routes are
 * removed, its epoch, stream count and RTT are reset.
 * Returns 0 or:
 *   ATUN_ERR_REVOKED  the id was revoked
 *   ATUN_ERR_BAD_NAME |name| empty, too long or with control characters
 *   ATUN_ERR_FULL     a new id and max_agents already held
 *   ATUN_ERR_NOMEM */
int atun_registry_connect(atun_registry *reg, const uint8_t *id,
                          const char *name, atun_tstamp ts,
                          uint64_t *pgeneration);

/* Ends connection |generation| of |id|: the agent goes offline, its routes
 * and stream count are dropped; its record stays for listing.
 * Returns 0, ATUN_ERR_NOT_FOUND (unknown id) or ATUN_ERR_STALE (not the
 * agent's current connection; nothing changes). */
int atun_registry_disconnect(atun_registry *reg, const uint8_t *id,
                             uint64_t generation);

typedef enum atun_advertise_outcome {
  ATUN_ADVERTISE_REPLACED = 1,  /* routes replaced, epoch stored */
  ATUN_ADVERTISE_REFRESHED = 2, /* equal epoch: last_seen refreshed only */
  ATUN_ADVERTISE_IGNORED = 3    /* lower epoch: nothing changed */
} atun_advertise_outcome;

/* Applies a RouteAdvertise of connection |generation| at |ts| with the epoch
 * rules above; stores what happened in |*poutcome| (may be NULL).  Input as
 * for atun_route_table_replace().
 * Returns 0 or ATUN_ERR_NOT_FOUND, ATUN_ERR_STALE, or one of the errors of
 * atun_route_table_replace() (then nothing changed, the epoch included). */
int atun_registry_advertise(atun_registry *reg, const uint8_t *id,
                            uint64_t generation, uint64_t epoch,
                            const atun_prefix *prefixes, size_t nprefixes,
                            const atun_route_domain *domains, size_t ndomains,
                            atun_tstamp ts, atun_advertise_outcome *poutcome);

/* Records a heartbeat of connection |generation| at |ts| with a new RTT
 * sample |rtt_ns| (UINT64_MAX = no sample, keep the old value).
 * Returns 0, 1 if the agent had been reported offline by
 * atun_registry_handle_expiry() and is online again, ATUN_ERR_NOT_FOUND or
 * ATUN_ERR_STALE. */
int atun_registry_heartbeat(atun_registry *reg, const uint8_t *id,
                            uint64_t generation, atun_tstamp ts,
                            uint64_t rtt_ns);

/* Sets the number of streams the gateway has open on connection
 * |generation| (used to prefer less loaded agents).
 * Returns 0, ATUN_ERR_NOT_FOUND or ATUN_ERR_STALE. */
int atun_registry_set_active_streams(atun_registry *reg, const uint8_t *id,
                                     uint64_t generation, uint32_t count);

/* Marks |id| revoked: its connection (if any) goes stale, its routes are
 * removed and it never routes again; a later connect fails with
 * ATUN_ERR_REVOKED.  An unknown id gets a revoked record so that holds for
 * it too.  Revoking twice is a no-op.
 * Returns 0, ATUN_ERR_FULL (unknown id and no room) or ATUN_ERR_NOMEM. */
int atun_registry_revoke(atun_registry *reg, const uint8_t *id);

/* Drops the record of |id| entirely (routes included), freeing its slot.
 * A revoked id forgotten here can connect again: keep revocations in the
 * durable store.  Returns 0 or ATUN_ERR_NOT_FOUND. */
int atun_registry_forget(atun_registry *reg, const uint8_t *id);

/* The earliest time an online agent times out, or ATUN_TSTAMP_MAX. */
atun_tstamp atun_registry_get_expiry(const atun_registry *reg);

/* Reports (through the offline callback) every agent whose timeout passed
 * at |ts|, in deadline order, and stops reporting it until it is seen
 * again.  Returns 0 or ATUN_ERR_CALLBACK_FAILURE (the agents before the
 * failing one are reported, the failing one is marked reported too). */
int atun_registry_handle_expiry(atun_registry *reg, atun_tstamp ts);

/* A client's request for a specific agent (SPEC §4). */
typedef enum atun_registry_pin_kind {
  ATUN_REGISTRY_PIN_NONE = 0,
  ATUN_REGISTRY_PIN_ID = 1,
  ATUN_REGISTRY_PIN_NAME = 2
} atun_registry_pin_kind;

typedef struct atun_registry_pin {
  uint8_t kind; /* atun_registry_pin_kind */
  uint8_t id[ATUN_REGISTRY_ID_LEN];
  const char *name; /* NUL-terminated, borrowed */
} atun_registry_pin;

/* Candidates for |target| at |ts|, as atun_route_table_lookup() with the
 * registry's health (online, streams, RTT, id as tie-break).  With a pin
 * (|pin| NULL or kind NONE = no pin) only the pinned agents are candidates
 * (several for a name several agents share): those with a route to the
 * target in route order, then the other eligible ones with match kind
 * ATUN_ROUTE_MATCH_PIN (the agent itself enforces its routes).
 * Returns the count (0 = none) or the errors of atun_route_table_lookup(),
 * or ATUN_ERR_INVALID_ARGUMENT (bad pin). */
ssize_t atun_registry_resolve(const atun_registry *reg,
                              const atun_route_target *target,
                              const atun_registry_pin *pin, atun_tstamp ts,
                              atun_route_candidate *out, size_t cap);

/* A snapshot of one agent for listing. */
typedef struct atun_registry_agent_info {
  uint8_t id[ATUN_REGISTRY_ID_LEN];
  char name[ATUN_REGISTRY_NAME_MAX + 1];
  uint32_t handle;       /* route-table handle = slot index */
  uint8_t status;        /* atun_agent_status at the given ts */
  uint8_t connected;     /* a connection is registered */
  uint64_t generation;   /* current connection, 0 if none */
  atun_tstamp last_seen; /* ATUN_TSTAMP_MAX if never seen */
  uint64_t rtt_ns;       /* UINT64_MAX = unknown */
  uint32_t active_streams;
  uint8_t has_route_epoch; /* an advertisement was accepted */
  uint64_t route_epoch;
  size_t nsubnets;
  size_t ndomains;
} atun_registry_agent_info;

/* Fills |*info| for |id| at |ts|.  Returns 0 or ATUN_ERR_NOT_FOUND. */
int atun_registry_get(const atun_registry *reg, const uint8_t *id,
                      atun_tstamp ts, atun_registry_agent_info *info);

/* Iterates over all agents in slot order: start with |*cursor| = 0; each
 * call fills |*info| and advances |*cursor|.  Returns 0, or
 * ATUN_ERR_NOT_FOUND past the last agent. */
int atun_registry_next(const atun_registry *reg, uint32_t *cursor,
                       atun_tstamp ts, atun_registry_agent_info *info);

/* Number of agents held (any status). */
size_t atun_registry_count(const atun_registry *reg);

/* Copies |id|'s current routes (see atun_route_table_agent_routes()).
 * Returns 0, ATUN_ERR_NOT_FOUND or ATUN_ERR_NOBUF. */
int atun_registry_agent_routes(const atun_registry *reg, const uint8_t *id,
                               atun_prefix *subnets, size_t subnets_cap,
                               atun_route_domain *domains, size_t domains_cap);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_REGISTRY_H */
