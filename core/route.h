/*
 * Route table (SPEC §4): which agents can carry a connection to a target.
 *
 * Agents advertise IPv4/IPv6 subnets and DNS domain suffixes.  The table maps
 * a target to an ordered list of candidate agents:
 *
 *   - an IP target walks a path-compressed 16-way trie per family and
 *     collects every advertised prefix that contains it, longest first;
 *   - a host name is looked up suffix by suffix on label boundaries, longest
 *     first, in a hash of normalized suffixes (lowercase, no trailing dot), so
 *     "corp.example" matches "a.corp.example" and "corp.example" but never
 *     "badcorp.example".
 *
 * Neither walk visits routes that can not match: a lookup costs the trie
 * depth (at most 33 nodes, about log16 of the routes in practice) or the
 * label count of the name, plus the agents advertising a matching route.
 * An IPv4 lookup starts from a direct index instead of the trie's root: it
 * finds the nodes for /0 to /15 and the first node at or below /16 in one
 * step each, all at once, rather than one after the other.
 * Memory: about 500 bytes per subnet and 150 per domain at 100,000 routes
 * (bench/bench_route prints it), plus 546 KiB for the IPv4 index (69,904
 * pointers) while the table holds any IPv4 route; at most max_routes
 * routes.  An update keeps the index current at a constant cost per node it
 * adds or removes, so it still costs in proportion to the changed agent's
 * routes.
 *
 * Agents are named by a |uint32_t| handle below |max_agents| (the registry's
 * slot index).  The table keeps no liveness state: health and eligibility
 * come from a callback at lookup time.
 *
 * Memory comes from the |atun_mem| given to atun_route_table_new().  A
 * replace either applies completely or leaves the table as it was.
 */
#ifndef ATUN_ROUTE_H
#define ATUN_ROUTE_H

#include "addr.h"
#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per-agent bounds from the wire protocol (SPEC §3). */
#define ATUN_ROUTE_SUBNETS_MAX 4096
#define ATUN_ROUTE_DOMAINS_MAX 1024
/* A DNS name in text form without the trailing dot, and one label. */
#define ATUN_ROUTE_NAME_MAX 253
#define ATUN_ROUTE_LABEL_MAX 63
/* Largest max_agents a table accepts. */
#define ATUN_ROUTE_AGENTS_MAX ((uint32_t)1 << 24)
/* Longest candidate list one lookup produces; a larger |cap| is clamped.
 * Keeps the per-lookup work bounded (each match is checked against the
 * candidates already chosen). */
#define ATUN_ROUTE_CANDIDATES_MAX 64

/* An advertised DNS suffix.  |name| is NUL-terminated; a replace accepts any
 * case and one trailing dot and stores it lowercase without the dot.  Same
 * layout as the codec's atun_domain, so a decoded advertisement converts by
 * field copy. */
typedef struct atun_route_domain {
  char name[ATUN_ROUTE_NAME_MAX + 1];
  uint8_t auto_detected; /* 0 or 1, kept for listing only */
} atun_route_domain;

typedef struct atun_route_settings {
  /* Handles are in [0, max_agents), at most ATUN_ROUTE_AGENTS_MAX.
   * Default 4096. */
  uint32_t max_agents;
  /* Subnets + domains over all agents (after duplicates within one agent's
   * advertisement collapse).  Default 1,048,576. */
  size_t max_routes;
  /* Default ATUN_ROUTE_SUBNETS_MAX / ATUN_ROUTE_DOMAINS_MAX; may not exceed
   * them. */
  size_t max_subnets_per_agent;
  size_t max_domains_per_agent;
} atun_route_settings;

void atun_route_settings_default(atun_route_settings *settings);

/* What the caller knows about an agent at lookup time. */
typedef struct atun_route_health {
  int eligible;            /* online, connected, not revoked */
  uint32_t active_streams; /* fewer sorts first */
  uint64_t rtt_ns;         /* lower sorts first; UINT64_MAX = unknown */
  uint8_t tiebreak[16];    /* e.g. the agent id; lower sorts first */
} atun_route_health;

/* Fills |*health| for |agent|.  Called once per matching route during a
 * lookup (so possibly several times for one agent); it must not modify the
 * table. */
typedef void (*atun_route_health_fn)(uint32_t agent, atun_route_health *health,
                                     void *user_data);

typedef enum atun_route_target_kind {
  ATUN_ROUTE_TARGET_ADDR = 1,
  ATUN_ROUTE_TARGET_NAME = 2
} atun_route_target_kind;

/* A lookup key.  |name| is borrowed: it must stay valid during the lookup. */
typedef struct atun_route_target {
  uint8_t kind; /* atun_route_target_kind */
  atun_addr addr;
  const char *name;
  size_t namelen;
} atun_route_target;

/* Parses |s| as an IPv4 or IPv6 literal (an IPv6 literal may be in
 * brackets; an IPv4-mapped IPv6 address becomes IPv4), else as a host name
 * (validated like a domain, see atun_route_name_normalize()).  |out| borrows
 * |s|.  Returns 0, ATUN_ERR_INVALID_ARGUMENT (|s| NULL) or ATUN_ERR_BAD_NAME.
 */
int atun_route_target_parse(atun_route_target *out, const char *s);

/* Writes |name| (|len| bytes, any case, at most one trailing dot) to |out|
 * lowercase and without the dot, NUL-terminated, and returns its length.
 * Accepted: 1..ATUN_ROUTE_NAME_MAX bytes, labels of 1..ATUN_ROUTE_LABEL_MAX
 * bytes of letters, digits, '-' and '_'.  |out| holds ATUN_ROUTE_NAME_MAX+1
 * bytes.  Returns the length or ATUN_ERR_BAD_NAME. */
ssize_t atun_route_name_normalize(char *out, const char *name, size_t len);

typedef enum atun_route_match_kind {
  ATUN_ROUTE_MATCH_PREFIX = 1, /* |prefix| matched an IP target */
  ATUN_ROUTE_MATCH_DOMAIN = 2, /* |domain| matched a host name */
  ATUN_ROUTE_MATCH_PIN = 3     /* chosen by an explicit pin, no route */
} atun_route_match_kind;

typedef struct atun_route_candidate {
  uint32_t agent;
  uint8_t match; /* atun_route_match_kind */
  atun_prefix prefix;
  char domain[ATUN_ROUTE_NAME_MAX + 1]; /* normalized suffix, "" if none */
  atun_route_health health;             /* as the callback reported it */
} atun_route_candidate;

/* Total order used inside one matched route: fewer active streams, then
 * lower RTT, then lower tiebreak bytes, then lower handle.  Returns <0, 0,
 * >0. */
int atun_route_health_cmp(const atun_route_health *a, uint32_t agent_a,
                          const atun_route_health *b, uint32_t agent_b);

typedef struct atun_route_table atun_route_table;

/* Allocates an empty table in |*ptable|.  |settings| NULL means the
 * defaults.  Returns 0, ATUN_ERR_INVALID_ARGUMENT (a zero bound, a bound
 * above its maximum) or ATUN_ERR_NOMEM. */
int atun_route_table_new(atun_route_table **ptable,
                         const atun_route_settings *settings,
                         const atun_mem *mem);

/* Frees |table| and everything in it.  NULL is a no-op. */
void atun_route_table_del(atun_route_table *table);

/* Replaces every route of |agent| with |prefixes| (|nprefixes|, each
 * atun_prefix_valid(); an IPv4-mapped IPv6 prefix of length >= 96 is folded
 * to IPv4) and |domains| (|ndomains|).  Duplicates collapse.  Costs the
 * agent's old plus new routes, not the table size (amortized: the domain
 * hash doubles when it fills).  All or nothing: on any error the table is
 * exactly as before.
 *
 * Returns 0 or:
 *   ATUN_ERR_INVALID_ARGUMENT  |agent| >= max_agents, or a NULL array with a
 *                              nonzero count
 *   ATUN_ERR_LIMIT             |nprefixes| or |ndomains| above the per-agent
 *                              bound
 *   ATUN_ERR_BAD_PREFIX        a prefix is not valid
 *   ATUN_ERR_BAD_NAME          a domain is not acceptable
 *   ATUN_ERR_FULL              the table would hold more than max_routes
 *   ATUN_ERR_NOMEM */
int atun_route_table_replace(atun_route_table *table, uint32_t agent,
                             const atun_prefix *prefixes, size_t nprefixes,
                             const atun_route_domain *domains, size_t ndomains);

/* Removes every route of |agent| (no-op if it has none).  Never allocates.
 * Returns 0 or ATUN_ERR_INVALID_ARGUMENT (|agent| >= max_agents). */
int atun_route_table_remove(atun_route_table *table, uint32_t agent);

/* Writes the candidates for |target| into |out| (|cap| entries, clamped to
 * ATUN_ROUTE_CANDIDATES_MAX), best first:
 *   - routes from the most specific match (longest prefix or suffix) to the
 *     broadest;
 *   - within one route, the eligible agents in atun_route_health_cmp order;
 *   - an agent appears once, at its most specific route; agents for which
 *     |health_cb| reports !eligible are left out.
 * When |out| fills, the list is cut: it holds the |cap| best candidates and
 * the rest are dropped (the return value is then |cap|).  Entries of |out|
 * past the returned count are scratch: their content is unspecified.
 *
 * Returns the number of candidates (0 = no route), or
 * ATUN_ERR_INVALID_ARGUMENT (|cap| 0, bad |target| kind) or
 * ATUN_ERR_BAD_NAME (a name target that does not normalize). */
ssize_t atun_route_table_lookup(const atun_route_table *table,
                                const atun_route_target *target,
                                atun_route_health_fn health_cb, void *user_data,
                                atun_route_candidate *out, size_t cap);

/* Number of routes in the table, over all agents. */
size_t atun_route_table_size(const atun_route_table *table);

/* Number of subnets and domains |agent| has in the table (0 for an unknown
 * handle). */
size_t atun_route_table_agent_nprefixes(const atun_route_table *table,
                                        uint32_t agent);
size_t atun_route_table_agent_ndomains(const atun_route_table *table,
                                       uint32_t agent);

/* Copies |agent|'s routes, normalized and without duplicates, in the order
 * they were first given.  |prefixes| / |domains| may be NULL when their cap
 * is 0.  Returns 0, ATUN_ERR_NOBUF (a cap below the agent's count; nothing
 * copied) or ATUN_ERR_INVALID_ARGUMENT. */
int atun_route_table_agent_routes(const atun_route_table *table, uint32_t agent,
                                  atun_prefix *prefixes, size_t prefixes_cap,
                                  atun_route_domain *domains,
                                  size_t domains_cap);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_ROUTE_H */
