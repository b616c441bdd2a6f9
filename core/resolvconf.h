/*
 * Domain auto-detection (SPEC section 7): the search domains of the text
 * of /etc/resolv.conf.  The caller reads the file (the core does no file
 * access) and passes its bytes.
 *
 * Which line counts, as glibc (2.26 and later, resolv/res_init.c) reads the
 * file:
 *   - lines are split at '\n'; a NUL ends a line's content (glibc sees the
 *     line as a C string);
 *   - a line whose first byte is '#' or ';' is a comment;
 *   - the keyword must start the line and be followed by a blank:
 *     "search a.example b.example" or "domain a.example";
 *   - a keyword with no value after it is ignored (it changes nothing);
 *   - "domain" and "search" both replace the search list, so the LAST such
 *     line wins and all earlier ones are forgotten; "domain" contributes
 *     its first word only, "search" every word.
 * Two deliberate departures, both about text glibc would turn into search
 * entries that no operator means as such:
 *   - a word starting with '#' or ';' ends the value list (a trailing
 *     comment; glibc would search "#" and the words after it);
 *   - '\r' counts as a blank, so a file with CRLF line ends reads as
 *     intended.
 * When neither keyword appears glibc derives the domain from the host
 * name, and LOCALDOMAIN overrides the file; both are the caller's business.
 *
 * Each word of the winning line is kept if atun_name_normalize() accepts
 * it (lowercased, trailing dot dropped), it has at least two labels, and
 * its last label does not start with a digit (no address literal becomes
 * a domain; no TLD starts with one).  Duplicates are dropped.  glibc up to
 * 2.25 searched at most 6 domains (256 bytes in all) and later versions
 * have no limit; the first ATUN_RESOLVCONF_DOMAINS_MAX valid ones are kept.
 */
#ifndef ATUN_RESOLVCONF_H
#define ATUN_RESOLVCONF_H

#include "atun.h"
#include "codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Domains kept from one file. */
#define ATUN_RESOLVCONF_DOMAINS_MAX 32
/* Largest text accepted; a real resolv.conf is a few hundred bytes. */
#define ATUN_RESOLVCONF_TEXT_MAX ((size_t)64 * 1024)

typedef enum atun_resolvconf_source {
  ATUN_RESOLVCONF_NONE = 0,   /* no effective domain or search line */
  ATUN_RESOLVCONF_DOMAIN = 1, /* the winning line was "domain" */
  ATUN_RESOLVCONF_SEARCH = 2  /* the winning line was "search" */
} atun_resolvconf_source;

typedef struct atun_resolvconf {
  /* Valid, unique, in file order; every |auto_detected| is 1. */
  atun_domain domains[ATUN_RESOLVCONF_DOMAINS_MAX];
  size_t ndomains;
  /* Words of the winning line dropped as invalid, single-label or numeric
   * (duplicates are not counted). */
  size_t nrejected;
  /* Nonzero: valid domains beyond ATUN_RESOLVCONF_DOMAINS_MAX were left
   * out. */
  uint8_t truncated;
  uint8_t source; /* atun_resolvconf_source */
  /* 1-based line number of the winning line, 0 if none (for logs). */
  size_t line;
} atun_resolvconf;

/* Parses |len| bytes of resolv.conf text at |text| into |out| (overwritten).
 * Returns 0 (possibly with no domains) or
 *   ATUN_ERR_INVALID_ARGUMENT  |text| NULL with |len| > 0
 *   ATUN_ERR_LIMIT             |len| above ATUN_RESOLVCONF_TEXT_MAX */
int atun_resolvconf_parse(atun_resolvconf *out, const char *text, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_RESOLVCONF_H */
