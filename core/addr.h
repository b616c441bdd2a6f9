/*
 * Addresses and CIDR prefixes shared by the codec, the route table and the
 * registry.  IPv4 is kept in its own family (not as IPv4-mapped IPv6); an
 * IPv4-mapped IPv6 address is folded to IPv4 by atun_addr_normalize().
 */
#ifndef ATUN_ADDR_H
#define ATUN_ADDR_H

#include "atun.h"

#define ATUN_AF_INET 4
#define ATUN_AF_INET6 6

typedef struct atun_addr {
  uint8_t family; /* ATUN_AF_INET or ATUN_AF_INET6 */
  uint8_t bytes[16]; /* network order; IPv4 uses the first 4 */
} atun_addr;

typedef struct atun_prefix {
  atun_addr addr;  /* host bits beyond |len| are zero */
  uint8_t len;     /* <= 32 for IPv4, <= 128 for IPv6 */
} atun_prefix;

/* Longest text form of a prefix, with the terminating NUL ("ffff:...:ffff/128"). */
#define ATUN_PREFIX_STRLEN 44
#define ATUN_ADDR_STRLEN 40

/* Parses "a.b.c.d" or an IPv6 literal into |out|.  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT. */
int atun_addr_parse(atun_addr *out, const char *s);

/* Parses "addr/len" (a bare address means a host prefix).  Host bits must be
 * zero.  Returns 0, ATUN_ERR_INVALID_ARGUMENT or ATUN_ERR_BAD_PREFIX. */
int atun_prefix_parse(atun_prefix *out, const char *s);

/* Writes the text form into |buf| (at least ATUN_ADDR_STRLEN / ATUN_PREFIX_STRLEN
 * bytes). */
void atun_addr_format(char *buf, const atun_addr *a);
void atun_prefix_format(char *buf, const atun_prefix *p);

/* Folds an IPv4-mapped IPv6 address (::ffff:a.b.c.d) to IPv4. */
void atun_addr_normalize(atun_addr *a);

/* Nonzero if |a| lies inside |p| (same family). */
int atun_prefix_contains(const atun_prefix *p, const atun_addr *a);

/* Nonzero if |p| has a valid length for its family and no host bits set. */
int atun_prefix_valid(const atun_prefix *p);

/* Total order: family, then address bytes, then length. */
int atun_prefix_cmp(const atun_prefix *a, const atun_prefix *b);

#endif
