#include "ca_policy.h"

#include <string.h>

#define NS_PER_DAY ((uint64_t)86400 * ATUN_NS_PER_S)
#define SECS_PER_DAY 86400u

/* Longer back-dating would only hide a badly wrong clock. */
#define BACKDATE_MAX_NS NS_PER_DAY

/* ASN.1 tags used here. */
#define TAG_SEQUENCE 0x30
#define TAG_UTC_TIME 0x17
#define TAG_GENERALIZED_TIME 0x18
#define TAG_CONTEXT_PRIMITIVE 0x80

#define UTC_TIME_LEN 13         /* YYMMDDHHMMSSZ */
#define GENERALIZED_TIME_LEN 15 /* YYYYMMDDHHMMSSZ */

void atun_ca_settings_default(atun_ca_settings *s) {
  memset(s, 0, sizeof(*s));
  s->ca_lifetime_ns = (uint64_t)3652 * NS_PER_DAY;
  s->server_lifetime_ns = (uint64_t)365 * NS_PER_DAY;
  s->client_lifetime_ns = (uint64_t)90 * NS_PER_DAY;
  s->backdate_ns = (uint64_t)300 * ATUN_NS_PER_S;
  memcpy(s->ca_cn, "atun CA", sizeof("atun CA"));
  memcpy(s->server_cn, "atun gateway", sizeof("atun gateway"));
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static int is_lower_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); }
static char to_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

int atun_agent_name_valid(const char *name, size_t len) {
  if (len == 0 || len > ATUN_AGENT_NAME_MAX) return 0;
  if (!is_alpha(name[0]) && !is_digit(name[0])) return 0;
  for (size_t i = 0; i < len; ++i) {
    char c = name[i];
    if (!is_alpha(c) && !is_digit(c) && c != '.' && c != '_' && c != '-') {
      return 0;
    }
  }
  return 1;
}

static int uuid_dash_at(size_t i) { return i == 8 || i == 13 || i == 18 || i == 23; }

int atun_uuid_valid(const char *s, size_t len) {
  if (len != ATUN_UUID_LEN) return 0;
  for (size_t i = 0; i < len; ++i) {
    if (uuid_dash_at(i) ? s[i] != '-' : !is_lower_hex(s[i])) return 0;
  }
  return 1;
}

int atun_uuid_generate(char out[ATUN_UUID_STRLEN], const atun_rand *rand) {
  static const char hex[] = "0123456789abcdef";
  uint8_t b[16];
  if (rand->fill(b, sizeof(b), rand->user_data) != 0) {
    out[0] = '\0';
    return ATUN_ERR_CALLBACK_FAILURE;
  }
  b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4: random */
  b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  size_t o = 0;
  for (size_t i = 0; i < sizeof(b); ++i) {
    if (uuid_dash_at(o)) out[o++] = '-';
    out[o++] = hex[b[i] >> 4];
    out[o++] = hex[b[i] & 0x0f];
  }
  out[o] = '\0';
  return 0;
}

int atun_agent_uri_format(char out[ATUN_AGENT_URI_LEN + 1], const char *id) {
  if (id == NULL || !atun_uuid_valid(id, strnlen(id, ATUN_UUID_STRLEN))) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  memcpy(out, ATUN_AGENT_URI_PREFIX, ATUN_AGENT_URI_PREFIX_LEN);
  memcpy(out + ATUN_AGENT_URI_PREFIX_LEN, id, ATUN_UUID_STRLEN);
  return 0;
}

int atun_agent_uri_parse(char out[ATUN_UUID_STRLEN], const char *uri,
                         size_t len) {
  if (len != ATUN_AGENT_URI_LEN ||
      memcmp(uri, ATUN_AGENT_URI_PREFIX, ATUN_AGENT_URI_PREFIX_LEN) != 0 ||
      !atun_uuid_valid(uri + ATUN_AGENT_URI_PREFIX_LEN, ATUN_UUID_LEN)) {
    return ATUN_ERR_MALFORMED;
  }
  memcpy(out, uri + ATUN_AGENT_URI_PREFIX_LEN, ATUN_UUID_LEN);
  out[ATUN_UUID_LEN] = '\0';
  return 0;
}

static int dns_label_valid(const char *l, size_t len) {
  if (len == 0 || len > 63 || l[0] == '-' || l[len - 1] == '-') return 0;
  for (size_t i = 0; i < len; ++i) {
    if (!is_alpha(l[i]) && !is_digit(l[i]) && l[i] != '-') return 0;
  }
  return 1;
}

int atun_ca_dns_name_valid(const char *name) {
  size_t len = strnlen(name, ATUN_CA_SAN_NAME_MAX + 1);
  if (len == 0 || len > ATUN_CA_SAN_NAME_MAX) return 0;
  size_t start = 0;
  for (size_t i = 0; i <= len; ++i) {
    if (i == len || name[i] == '.') {
      if (!dns_label_valid(name + start, i - start)) return 0;
      start = i + 1;
    }
  }
  return 1;
}

int atun_ca_serial_generate(atun_cert_profile *p, const atun_rand *rand) {
  if (rand->fill(p->serial, ATUN_CA_SERIAL_LEN, rand->user_data) != 0) {
    return ATUN_ERR_CALLBACK_FAILURE;
  }
  p->serial[0] = (uint8_t)((p->serial[0] & 0x3f) | 0x40);
  p->serial_len = ATUN_CA_SERIAL_LEN;
  return 0;
}

static atun_tstamp floor_s(atun_tstamp t) { return t - t % ATUN_NS_PER_S; }

static int cn_valid(const char *cn, size_t cap) {
  size_t len = strnlen(cn, cap);
  if (len == 0 || len >= cap) return 0;
  for (size_t i = 0; i < len; ++i) {
    if (cn[i] < 0x20 || cn[i] > 0x7e) return 0;
  }
  return 1;
}

static int lifetime_valid(uint64_t ns) { return ns >= ATUN_NS_PER_S; }

static int settings_valid(const atun_ca_settings *s) {
  return lifetime_valid(s->ca_lifetime_ns) &&
         lifetime_valid(s->server_lifetime_ns) &&
         lifetime_valid(s->client_lifetime_ns) &&
         s->backdate_ns <= BACKDATE_MAX_NS &&
         cn_valid(s->ca_cn, sizeof(s->ca_cn)) &&
         cn_valid(s->server_cn, sizeof(s->server_cn));
}

/* The parts every kind shares: serial and validity. */
static int profile_base(atun_cert_profile *p, const atun_ca_settings *s,
                        atun_cert_kind kind, const char *cn, atun_tstamp now,
                        uint64_t lifetime_ns, atun_tstamp ca_not_after,
                        const atun_rand *rand) {
  memset(p, 0, sizeof(*p));
  if (now == ATUN_TSTAMP_MAX || !settings_valid(s)) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  if (now >= ca_not_after) return ATUN_ERR_EXPIRED;
  p->kind = kind;
  p->not_before = floor_s(now - (s->backdate_ns < now ? s->backdate_ns : now));
  atun_tstamp end = now > ATUN_TSTAMP_MAX - lifetime_ns ? ATUN_TSTAMP_MAX
                                                        : now + lifetime_ns;
  p->not_after = floor_s(end < ca_not_after ? end : ca_not_after);
  if (p->not_after <= p->not_before) return ATUN_ERR_EXPIRED;
  memcpy(p->cn, cn, strlen(cn) + 1);
  return atun_ca_serial_generate(p, rand);
}

int atun_ca_profile_ca(atun_cert_profile *p, const atun_ca_settings *s,
                       atun_tstamp now, const atun_rand *rand) {
  int rv = profile_base(p, s, ATUN_CERT_CA, s->ca_cn, now, s->ca_lifetime_ns,
                        ATUN_TSTAMP_MAX, rand);
  if (rv != 0) return rv;
  p->is_ca = 1;
  p->key_usage = ATUN_KU_KEY_CERT_SIGN | ATUN_KU_CRL_SIGN;
  return 0;
}

static int san_equal(const atun_cert_san *a, const atun_cert_san *b) {
  if (a->type != b->type) return 0;
  if (a->type == ATUN_SAN_IP) {
    return a->ip.family == b->ip.family &&
           memcmp(a->ip.bytes, b->ip.bytes, sizeof(a->ip.bytes)) == 0;
  }
  return strcmp(a->name, b->name) == 0;
}

/* Parses one configured host into |san|: an IP literal or a DNS name. */
static int host_to_san(atun_cert_san *san, const char *host) {
  memset(san, 0, sizeof(*san));
  if (atun_addr_parse(&san->ip, host) == 0) {
    atun_addr_normalize(&san->ip);
    san->type = ATUN_SAN_IP;
    return 0;
  }
  if (!atun_ca_dns_name_valid(host)) return ATUN_ERR_BAD_NAME;
  san->type = ATUN_SAN_DNS;
  size_t len = strlen(host);
  for (size_t i = 0; i < len; ++i) san->name[i] = to_lower(host[i]);
  return 0;
}

static int add_host_sans(atun_cert_profile *p, const char *const *hosts,
                         size_t nhosts) {
  for (size_t i = 0; i < nhosts; ++i) {
    atun_cert_san san;
    if (hosts[i] == NULL) return ATUN_ERR_INVALID_ARGUMENT;
    int rv = host_to_san(&san, hosts[i]);
    if (rv != 0) return rv;
    size_t j = 0;
    while (j < p->nsans && !san_equal(&p->sans[j], &san)) ++j;
    if (j < p->nsans) continue;
    if (p->nsans == ATUN_CA_SAN_MAX) return ATUN_ERR_LIMIT;
    p->sans[p->nsans++] = san;
  }
  return 0;
}

int atun_ca_profile_server(atun_cert_profile *p, const atun_ca_settings *s,
                           const char *const *hosts, size_t nhosts,
                           atun_tstamp now, atun_tstamp ca_not_after,
                           const atun_rand *rand) {
  if (nhosts == 0) {
    memset(p, 0, sizeof(*p));
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  int rv = profile_base(p, s, ATUN_CERT_SERVER, s->server_cn, now,
                        s->server_lifetime_ns, ca_not_after, rand);
  if (rv != 0) return rv;
  p->key_usage = ATUN_KU_DIGITAL_SIGNATURE;
  p->ext_key_usage = ATUN_EKU_SERVER_AUTH;
  return add_host_sans(p, hosts, nhosts);
}

int atun_ca_profile_client(atun_cert_profile *p, const atun_ca_settings *s,
                           const char *name, const char *id, atun_tstamp now,
                           atun_tstamp ca_not_after, const atun_rand *rand) {
  memset(p, 0, sizeof(*p));
  if (name == NULL ||
      !atun_agent_name_valid(name, strnlen(name, ATUN_AGENT_NAME_STRLEN))) {
    return ATUN_ERR_BAD_NAME;
  }
  char uri[ATUN_AGENT_URI_LEN + 1];
  if (atun_agent_uri_format(uri, id) != 0) return ATUN_ERR_INVALID_ARGUMENT;
  int rv = profile_base(p, s, ATUN_CERT_CLIENT, name, now,
                        s->client_lifetime_ns, ca_not_after, rand);
  if (rv != 0) return rv;
  p->key_usage = ATUN_KU_DIGITAL_SIGNATURE;
  p->ext_key_usage = ATUN_EKU_CLIENT_AUTH;
  p->sans[0].type = ATUN_SAN_URI;
  memcpy(p->sans[0].name, uri, sizeof(uri));
  p->nsans = 1;
  return 0;
}

int atun_cert_profile_agent_id(const atun_cert_profile *p,
                               char out[ATUN_UUID_STRLEN]) {
  const atun_cert_san *uri = NULL;
  for (size_t i = 0; i < p->nsans; ++i) {
    if (p->sans[i].type != ATUN_SAN_URI) continue;
    if (uri != NULL) return ATUN_ERR_MALFORMED;
    uri = &p->sans[i];
  }
  if (uri == NULL) return ATUN_ERR_NOT_FOUND;
  return atun_agent_uri_parse(out, uri->name,
                              strnlen(uri->name, sizeof(uri->name)));
}

/* Writes a DER length; returns its size, or 0 when it does not fit. */
static size_t der_len(uint8_t *out, size_t cap, size_t len) {
  if (len < 0x80) {
    if (cap < 1) return 0;
    out[0] = (uint8_t)len;
    return 1;
  }
  if (len <= 0xff) {
    if (cap < 2) return 0;
    out[0] = 0x81;
    out[1] = (uint8_t)len;
    return 2;
  }
  if (cap < 3) return 0;
  out[0] = 0x82;
  out[1] = (uint8_t)(len >> 8);
  out[2] = (uint8_t)len;
  return 3;
}

static int ia5_valid(const char *s, size_t len) {
  if (len == 0 || len > ATUN_CA_SAN_NAME_MAX) return 0;
  for (size_t i = 0; i < len; ++i) {
    if (s[i] <= 0x20 || s[i] > 0x7e) return 0;
  }
  return 1;
}

/* The content bytes of one GeneralName, or NULL when the entry is bad. */
static const uint8_t *san_value(const atun_cert_san *san, size_t *len) {
  switch (san->type) {
  case ATUN_SAN_IP:
    *len = san->ip.family == ATUN_AF_INET ? 4 : 16;
    return san->ip.family == ATUN_AF_INET || san->ip.family == ATUN_AF_INET6
               ? san->ip.bytes : NULL;
  case ATUN_SAN_DNS:
    *len = strnlen(san->name, sizeof(san->name));
    return atun_ca_dns_name_valid(san->name) ? (const uint8_t *)san->name
                                             : NULL;
  case ATUN_SAN_URI:
    *len = strnlen(san->name, sizeof(san->name));
    return ia5_valid(san->name, *len) ? (const uint8_t *)san->name : NULL;
  }
  return NULL;
}

/* Encodes the GeneralName list (without the SEQUENCE header) into |out|;
 * with |out| NULL only measures.  Returns the length or a negative error. */
static ssize_t san_body(const atun_cert_profile *p, uint8_t *out) {
  uint8_t hdr[4];
  size_t total = 0;
  for (size_t i = 0; i < p->nsans; ++i) {
    size_t vlen;
    const uint8_t *v = san_value(&p->sans[i], &vlen);
    if (v == NULL) return ATUN_ERR_INVALID_ARGUMENT;
    hdr[0] = (uint8_t)(TAG_CONTEXT_PRIMITIVE | p->sans[i].type);
    size_t hlen = 1 + der_len(hdr + 1, sizeof(hdr) - 1, vlen);
    if (out != NULL) {
      memcpy(out + total, hdr, hlen);
      memcpy(out + total + hlen, v, vlen);
    }
    total += hlen + vlen;
  }
  return (ssize_t)total;
}

int atun_cert_profile_san_der(const atun_cert_profile *p, uint8_t *out,
                              size_t cap, size_t *outlen) {
  if (p->nsans == 0 || p->nsans > ATUN_CA_SAN_MAX) {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  ssize_t body = san_body(p, NULL);
  if (body < 0) return (int)body;
  if (cap < 1) return ATUN_ERR_NOBUF;
  out[0] = TAG_SEQUENCE;
  size_t hlen = 1 + der_len(out + 1, cap - 1, (size_t)body);
  if (hlen == 1 || cap - hlen < (size_t)body) return ATUN_ERR_NOBUF;
  san_body(p, out + hlen);
  *outlen = hlen + (size_t)body;
  return 0;
}

/* --- DER reading ---------------------------------------------------------- */

#define TAG_OID 0x06
#define TAG_BOOLEAN 0x01
#define TAG_OCTET_STRING 0x04
#define TAG_EXTENSIONS 0xa3

/* Reads one TLV at *|pp| (not past |end|): its tag goes to |tag|, its value
 * to |val|/|len|, and *|pp| moves past it.  Lengths up to 3 bytes long form
 * (16 MiB) are enough for anything a certificate holds.  Returns 0 or
 * ATUN_ERR_MALFORMED. */
static int der_next(const uint8_t **pp, const uint8_t *end, uint8_t *tag,
                    const uint8_t **val, size_t *len) {
  const uint8_t *p = *pp;
  if (end - p < 2) return ATUN_ERR_MALFORMED;
  *tag = p[0];
  size_t n = p[1];
  p += 2;
  if (n & 0x80) {
    size_t nbytes = n & 0x7f;
    if (nbytes == 0 || nbytes > 3 || (size_t)(end - p) < nbytes) {
      return ATUN_ERR_MALFORMED;
    }
    n = 0;
    for (size_t i = 0; i < nbytes; ++i) n = (n << 8) | p[i];
    p += nbytes;
  }
  if ((size_t)(end - p) < n) return ATUN_ERR_MALFORMED;
  *val = p;
  *len = n;
  *pp = p + n;
  return 0;
}

/* Reads the one TLV that must fill |der| of |len| bytes, with tag |want|. */
static int der_whole(const uint8_t *der, size_t len, uint8_t want,
                     const uint8_t **val, size_t *vlen) {
  const uint8_t *p = der;
  uint8_t tag;
  if (der_next(&p, der + len, &tag, val, vlen) != 0 || tag != want ||
      p != der + len) {
    return ATUN_ERR_MALFORMED;
  }
  return 0;
}

static int san_from_der(atun_cert_san *san, uint8_t tag, const uint8_t *v,
                        size_t len) {
  memset(san, 0, sizeof(*san));
  san->type = (atun_san_type)(tag & 0x1f);
  if (san->type == ATUN_SAN_IP) {
    if (len != 4 && len != 16) return ATUN_ERR_MALFORMED;
    san->ip.family = len == 4 ? ATUN_AF_INET : ATUN_AF_INET6;
    memcpy(san->ip.bytes, v, len);
    return 0;
  }
  if (len == 0 || memchr(v, 0, len) != NULL) return ATUN_ERR_MALFORMED;
  if (len > ATUN_CA_SAN_NAME_MAX) return ATUN_ERR_LIMIT;
  memcpy(san->name, v, len);
  return 0;
}

int atun_cert_profile_san_parse(atun_cert_profile *p, const uint8_t *der,
                                size_t len) {
  const uint8_t *body, *v;
  size_t blen, vlen;
  uint8_t tag;
  p->nsans = 0;
  if (der_whole(der, len, TAG_SEQUENCE, &body, &blen) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  const uint8_t *end = body + blen;
  while (body < end) {
    if (der_next(&body, end, &tag, &v, &vlen) != 0) return ATUN_ERR_MALFORMED;
    if (tag != (TAG_CONTEXT_PRIMITIVE | ATUN_SAN_DNS) &&
        tag != (TAG_CONTEXT_PRIMITIVE | ATUN_SAN_URI) &&
        tag != (TAG_CONTEXT_PRIMITIVE | ATUN_SAN_IP)) {
      continue;
    }
    if (p->nsans == ATUN_CA_SAN_MAX) return ATUN_ERR_LIMIT;
    int rv = san_from_der(&p->sans[p->nsans], tag, v, vlen);
    if (rv != 0) return rv;
    ++p->nsans;
  }
  return 0;
}

/* Nonzero if the Extension body |ext| is subjectAltName (2.5.29.17); its
 * value goes to |val|/|vallen|. */
static int ext_is_san(const uint8_t *ext, size_t len, const uint8_t **val,
                      size_t *vallen, int *err) {
  static const uint8_t oid_san[] = {0x55, 0x1d, 0x11};
  const uint8_t *p = ext, *end = ext + len, *oid;
  size_t oidlen;
  uint8_t tag;
  *err = der_next(&p, end, &tag, &oid, &oidlen);
  if (*err != 0 || tag != TAG_OID) {
    *err = ATUN_ERR_MALFORMED;
    return 0;
  }
  if (oidlen != sizeof(oid_san) || memcmp(oid, oid_san, oidlen) != 0) return 0;
  *err = der_next(&p, end, &tag, val, vallen);
  if (*err == 0 && tag == TAG_BOOLEAN) {
    *err = der_next(&p, end, &tag, val, vallen);
  }
  if (*err != 0 || tag != TAG_OCTET_STRING || p != end) {
    *err = ATUN_ERR_MALFORMED;
    return 0;
  }
  return 1;
}

int atun_ca_ext_find_san(const uint8_t *exts, size_t len, const uint8_t **val,
                         size_t *vallen) {
  const uint8_t *seq, *ext;
  size_t seqlen, extlen;
  uint8_t tag;
  if (len > 0 && exts[0] == TAG_EXTENSIONS) {
    if (der_whole(exts, len, TAG_EXTENSIONS, &exts, &len) != 0) {
      return ATUN_ERR_MALFORMED;
    }
  }
  if (der_whole(exts, len, TAG_SEQUENCE, &seq, &seqlen) != 0) {
    return ATUN_ERR_MALFORMED;
  }
  int found = 0;
  const uint8_t *end = seq + seqlen;
  while (seq < end) {
    int err;
    if (der_next(&seq, end, &tag, &ext, &extlen) != 0 || tag != TAG_SEQUENCE) {
      return ATUN_ERR_MALFORMED;
    }
    const uint8_t *v;
    size_t vlen;
    if (ext_is_san(ext, extlen, &v, &vlen, &err)) {
      if (found) return ATUN_ERR_MALFORMED;
      found = 1;
      *val = v;
      *vallen = vlen;
    }
    if (err != 0) return err;
  }
  return found ? 0 : ATUN_ERR_NOT_FOUND;
}

atun_tstamp atun_ca_renew_at(atun_tstamp not_before, atun_tstamp not_after) {
  if (not_after <= not_before) return not_before;
  uint64_t life = not_after - not_before;
  /* floor(2 * life / 3) without overflowing 2 * life. */
  return not_before + (life / 3) * 2 + ((life % 3) * 2) / 3;
}

int atun_ca_should_renew(atun_tstamp not_before, atun_tstamp not_after,
                         atun_tstamp now) {
  return now >= atun_ca_renew_at(not_before, not_after);
}

/* --- time ---------------------------------------------------------------- */

static int is_leap(uint64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static uint64_t leaps_through(uint64_t y) { return y / 4 - y / 100 + y / 400; }

/* Days from 1970-01-01 to January 1st of |y| (>= 1970). */
static uint64_t days_before_year(uint64_t y) {
  return 365 * (y - 1970) + leaps_through(y - 1) - leaps_through(1969);
}

static unsigned month_days(uint64_t y, unsigned m) {
  static const uint8_t days[12] = {31, 28, 31, 30, 31, 30,
                                   31, 31, 30, 31, 30, 31};
  return days[m - 1] + (m == 2 && is_leap(y) ? 1u : 0u);
}

typedef struct civil {
  uint64_t year;
  unsigned month, day, hour, min, sec;
} civil;

static void civil_from_secs(civil *c, uint64_t secs) {
  uint64_t days = secs / SECS_PER_DAY;
  uint64_t rem = secs % SECS_PER_DAY;
  c->hour = (unsigned)(rem / 3600);
  c->min = (unsigned)(rem / 60 % 60);
  c->sec = (unsigned)(rem % 60);
  /* days / 366 undershoots by at most a few years for any |atun_tstamp|. */
  c->year = 1970 + days / 366;
  while (days_before_year(c->year + 1) <= days) ++c->year;
  days -= days_before_year(c->year);
  c->month = 1;
  while (days >= month_days(c->year, c->month)) {
    days -= month_days(c->year, c->month);
    ++c->month;
  }
  c->day = (unsigned)days + 1;
}

static void put2(uint8_t *out, unsigned v) {
  out[0] = (uint8_t)('0' + v / 10 % 10);
  out[1] = (uint8_t)('0' + v % 10);
}

ssize_t atun_ca_time_encode(uint8_t *out, size_t cap, atun_tstamp t) {
  civil c;
  civil_from_secs(&c, t / ATUN_NS_PER_S);
  int utc = c.year < 2050;
  size_t len = utc ? UTC_TIME_LEN : GENERALIZED_TIME_LEN;
  if (cap < len + 2) return ATUN_ERR_NOBUF;
  out[0] = utc ? TAG_UTC_TIME : TAG_GENERALIZED_TIME;
  out[1] = (uint8_t)len;
  uint8_t *d = out + 2;
  if (!utc) {
    put2(d, (unsigned)(c.year / 100));
    d += 2;
  }
  put2(d, (unsigned)(c.year % 100));
  put2(d + 2, c.month);
  put2(d + 4, c.day);
  put2(d + 6, c.hour);
  put2(d + 8, c.min);
  put2(d + 10, c.sec);
  d[12] = 'Z';
  return (ssize_t)(len + 2);
}

/* Reads |n| decimal digits; returns -1 on a non-digit. */
static long digits(const uint8_t *in, size_t n) {
  long v = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!is_digit((char)in[i])) return -1;
    v = v * 10 + (in[i] - '0');
  }
  return v;
}

static int civil_from_text(civil *c, const uint8_t *d, int utc) {
  long y = digits(d, utc ? 2 : 4);
  if (y < 0) return ATUN_ERR_MALFORMED;
  if (utc) y += y >= 50 ? 1900 : 2000;
  d += utc ? 2 : 4;
  long f[5];
  for (size_t i = 0; i < 5; ++i) {
    f[i] = digits(d + 2 * i, 2);
    if (f[i] < 0) return ATUN_ERR_MALFORMED;
  }
  if (d[10] != 'Z' || y < 1970 || f[0] < 1 || f[0] > 12) {
    return ATUN_ERR_MALFORMED;
  }
  c->year = (uint64_t)y;
  c->month = (unsigned)f[0];
  c->day = (unsigned)f[1];
  c->hour = (unsigned)f[2];
  c->min = (unsigned)f[3];
  c->sec = (unsigned)f[4];
  if (c->day < 1 || c->day > month_days(c->year, c->month) || c->hour > 23 ||
      c->min > 59 || c->sec > 59) {
    return ATUN_ERR_MALFORMED;
  }
  return 0;
}

int atun_ca_time_decode(atun_tstamp *out, const uint8_t *in, size_t len) {
  if (len < 2) return ATUN_ERR_MALFORMED;
  int utc = in[0] == TAG_UTC_TIME;
  size_t want = utc ? UTC_TIME_LEN : GENERALIZED_TIME_LEN;
  if ((!utc && in[0] != TAG_GENERALIZED_TIME) || in[1] != want ||
      len != want + 2) {
    return ATUN_ERR_MALFORMED;
  }
  civil c;
  int rv = civil_from_text(&c, in + 2, utc);
  if (rv != 0) return rv;
  uint64_t days = days_before_year(c.year);
  for (unsigned m = 1; m < c.month; ++m) days += month_days(c.year, m);
  days += c.day - 1;
  uint64_t secs = days * SECS_PER_DAY + c.hour * 3600u + c.min * 60u + c.sec;
  *out = secs > ATUN_TSTAMP_MAX / ATUN_NS_PER_S ? ATUN_TSTAMP_MAX
                                                : secs * ATUN_NS_PER_S;
  return 0;
}
