/*
 * The agent's target check (SPEC section 7): before any connect, a
 * ConnectRequest target must lie inside what the agent advertises and
 * outside its deny list.
 *
 * Addresses.  An address is allowed iff it lies inside some advertised
 * subnet AND inside no deny prefix: the deny list wins, even over an
 * advertised 0.0.0.0/0 or ::/0.  IPv4-mapped IPv6 addresses
 * (::ffff:a.b.c.d) are folded to IPv4 first (atun_addr_normalize()), and so
 * are IPv4-mapped prefixes of length >= 96 in both lists, so neither
 * spelling of an address escapes a rule written in the other.  IPv6
 * prefixes shorter than /96 that span the mapped range do not apply to
 * IPv4 targets (a rule for IPv4 is written as IPv4).
 *
 * Host names.  The agent resolves a name and every resolved address must
 * pass the address check (atun_policy_check_resolved(): one bad address
 * denies the whole target, an empty answer is a dns_failure).  Before
 * resolving, atun_policy_check_name() checks the name's syntax and, only
 * when |names_require_domain| is set, that it falls under an advertised
 * domain on a label boundary.  That is off by default: the gateway also
 * sends names to an agent a client pinned explicitly, and the addresses -
 * what the agent actually connects to - are the security boundary either
 * way.  Turning it on stops the agent from resolving names it never
 * claimed (no DNS lookups on behalf of the gateway for other zones).
 *
 * Default deny list (atun_policy_deny_defaults()): 0.0.0.0/8 and ::/128
 * (the unspecified address connects to the local host on Linux),
 * 127.0.0.0/8 and ::1/128 (loopback), 169.254.0.0/16 and fe80::/10 (link
 * local), 169.254.169.254/32 and fd00:ec2::254/128 (cloud metadata; the
 * IPv4 one lies inside 169.254.0.0/16 and collapses into it, but stays
 * listed so that a custom list built from the defaults keeps it).
 *
 * Cost.  Both prefix lists are kept sorted with every prefix that another
 * one covers dropped, which leaves disjoint ranges: an address check is two
 * binary searches, O(log n) for n <= ATUN_POLICY_SUBNETS_MAX.  Domains are
 * kept sorted; a name check looks up each of its label suffixes (at most
 * 127) by binary search, O(labels * log n).  Setting the routes costs
 * O(n log n).  Checks never allocate.
 */
#ifndef ATUN_POLICY_H
#define ATUN_POLICY_H

#include "addr.h"
#include "atun.h"
#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An agent advertises at most this many (SPEC section 3). */
#define ATUN_POLICY_SUBNETS_MAX ATUN_SUBNETS_MAX
#define ATUN_POLICY_DOMAINS_MAX ATUN_DOMAINS_MAX
/* Deny prefixes, the defaults included. */
#define ATUN_POLICY_DENY_MAX 256
/* Addresses one resolution may yield; more is denied (the caller must not
 * connect to addresses that were not checked). */
#define ATUN_POLICY_RESOLVED_MAX 64
/* Entries in the default deny list. */
#define ATUN_POLICY_DENY_DEFAULTS 8

typedef struct atun_policy_settings {
  /* Extra deny prefixes (copied), |ndeny| of them; may be NULL if 0. */
  const atun_prefix *deny;
  size_t ndeny;
  /* Nonzero: the default deny list applies as well.  Default 1.  Zero
   * leaves only |deny|: loopback and metadata become reachable if a
   * subnet covers them. */
  int deny_defaults;
  /* Nonzero: a host name must fall under an advertised domain.  Default 0
   * (see above). */
  int names_require_domain;
} atun_policy_settings;

void atun_policy_settings_default(atun_policy_settings *settings);

/* The default deny list; |*n| receives ATUN_POLICY_DENY_DEFAULTS. */
const atun_prefix *atun_policy_deny_defaults(size_t *n);

typedef struct atun_policy atun_policy;

/* Creates a policy with no routes (everything denied until
 * atun_policy_set_routes()).  |settings| NULL means the defaults.
 * Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  |deny| NULL with |ndeny| > 0
 *   ATUN_ERR_LIMIT             more than ATUN_POLICY_DENY_MAX deny prefixes
 *   ATUN_ERR_BAD_PREFIX        a deny prefix fails atun_prefix_valid()
 *   ATUN_ERR_NOMEM */
int atun_policy_new(atun_policy **ppolicy, const atun_policy_settings *settings,
                    const atun_mem *mem);

/* Frees |policy|.  NULL is a no-op. */
void atun_policy_del(atun_policy *policy);

/* Replaces the advertised routes with copies of |subnets| (|nsubnets|) and
 * |domains| (|ndomains|; names are normalized, any case and one trailing
 * dot accepted; |auto_detected| is ignored).  All or nothing: on error the
 * previous routes stay.
 * Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  a NULL array with a nonzero count
 *   ATUN_ERR_LIMIT             above ATUN_POLICY_SUBNETS_MAX / _DOMAINS_MAX
 *   ATUN_ERR_BAD_PREFIX        a subnet fails atun_prefix_valid()
 *   ATUN_ERR_BAD_NAME          a domain fails atun_name_normalize()
 *   ATUN_ERR_NOMEM */
int atun_policy_set_routes(atun_policy *policy, const atun_prefix *subnets,
                           size_t nsubnets, const atun_domain *domains,
                           size_t ndomains);

/* Distinct ranges / domains kept after covered prefixes and duplicates
 * were dropped (for logs and tests). */
size_t atun_policy_nsubnets(const atun_policy *policy);
size_t atun_policy_ndomains(const atun_policy *policy);
size_t atun_policy_ndeny(const atun_policy *policy);

/* Why a check decided as it did. */
typedef struct atun_policy_verdict {
  int status;         /* atun_connect_status, as returned */
  const char *reason; /* static text for logs */
  /* The address that decided (for a resolved list: the first bad one, or
   * the last checked when all pass); family 0 when none. */
  atun_addr addr;
  /* The deny prefix that matched, or the advertised range that allowed;
   * family 0 when none. */
  atun_prefix rule;
  /* The advertised domain the name fell under; "" when none. */
  char domain[ATUN_NAME_MAX + 1];
} atun_policy_verdict;

/* Checks one address.  Returns ATUN_CONNECT_OK or ATUN_CONNECT_DENIED (an
 * address of neither family is denied).  |verdict| may be NULL. */
int atun_policy_check_addr(const atun_policy *policy, const atun_addr *addr,
                           atun_policy_verdict *verdict);

/* Checks a host name (|namelen| bytes) before it is resolved: it must be
 * acceptable as an atun_target host (atun_name_normalize(), last label not
 * starting with a digit) and, with |names_require_domain|, fall under an
 * advertised domain.  Returns ATUN_CONNECT_OK or ATUN_CONNECT_DENIED. */
int atun_policy_check_name(const atun_policy *policy, const char *name,
                           size_t namelen, atun_policy_verdict *verdict);

/* Checks every address a name resolved to (|n| of them).  Returns
 * ATUN_CONNECT_OK when all pass, ATUN_CONNECT_DNS_FAILURE when |n| is 0,
 * ATUN_CONNECT_DENIED when any fails or |n| exceeds
 * ATUN_POLICY_RESOLVED_MAX. */
int atun_policy_check_resolved(const atun_policy *policy, const atun_addr *addrs,
                               size_t n, atun_policy_verdict *verdict);

/* Dispatches a ConnectRequest target: an address to
 * atun_policy_check_addr(), a host to atun_policy_check_name() (whose
 * resolved addresses still need atun_policy_check_resolved()).  An unknown
 * kind is denied. */
int atun_policy_check_target(const atun_policy *policy, const atun_target *target,
                             atun_policy_verdict *verdict);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_POLICY_H */
