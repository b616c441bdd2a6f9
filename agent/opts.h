/*
 * Command-line values of the agent: comma-separated lists of subnets and
 * domains ("10.0.0.0/8,2001:db8::/32", "corp.example,lab.example").  Items
 * may have blanks around them; an empty item is an error, a repeated one
 * is kept once.  The empty string is the empty list.  Pure, so the unit tests cover every bound.
 */
#ifndef ATUN_AGENT_OPTS_H
#define ATUN_AGENT_OPTS_H

#include "addr.h"
#include "atun.h"
#include "codec.h"

/* Longest list argument looked at: 4096 IPv6 prefixes and their commas. */
#define AGENT_LIST_TEXT_MAX ((size_t)ATUN_SUBNETS_MAX * ATUN_PREFIX_STRLEN)

/* Room for the text of one bad item in an error message. */
#define AGENT_OPT_BAD_MAX 64

/* Parses the list |s| into |out| (room for |max| entries), the count into
 * |*count|.  On failure |bad| (AGENT_OPT_BAD_MAX bytes) holds the offending
 * item, cut if long.  Returns 0 or
 *   ATUN_ERR_INVALID_ARGUMENT  an empty item, or a subnet that does not
 *                              parse,
 *   ATUN_ERR_BAD_PREFIX        a subnet with host bits or a bad length,
 *   ATUN_ERR_BAD_NAME          a domain that is not a DNS name of at least
 *                              two labels,
 *   ATUN_ERR_LIMIT             more than |max| distinct items, or |s|
 *                              longer than AGENT_LIST_TEXT_MAX. */
int agent_opts_subnets(const char *s, atun_prefix *out, size_t max,
                       size_t *count, char bad[AGENT_OPT_BAD_MAX]);
int agent_opts_domains(const char *s, atun_domain *out, size_t max,
                       size_t *count, char bad[AGENT_OPT_BAD_MAX]);

#endif /* ATUN_AGENT_OPTS_H */
