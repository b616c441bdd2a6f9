/*
 * Certificate policy of the gateway's CA (SPEC §5): what goes into each kind
 * of certificate, which names are acceptable, and when a certificate is due
 * for renewal.  Pure: no crypto, no clock, no file.  io/ca encodes a profile
 * built here with wolfCrypt and reads certificates back into the same
 * struct, so a round trip can be compared field by field.
 *
 * Certificate times are wall-clock nanoseconds since the UNIX epoch (an
 * |atun_tstamp| taken from the real-time clock by the caller, not the
 * per-boot monotonic one: they are written into certificates and persisted).
 * X.509 keeps whole seconds, so every time in a profile is a whole second.
 */
#ifndef ATUN_CA_POLICY_H
#define ATUN_CA_POLICY_H

#include "addr.h"
#include "atun.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Agent names become the CN of client certificates: 1..ATUN_AGENT_NAME_MAX
 * bytes of [A-Za-z0-9._-], starting with a letter or digit.  63 is what an
 * X.509 name field of wolfSSL's generator holds. */
#define ATUN_AGENT_NAME_MAX 63
#define ATUN_AGENT_NAME_STRLEN (ATUN_AGENT_NAME_MAX + 1)

/* Agent ids are UUIDs in their canonical text form, lowercase only, so one
 * agent never has two spellings (8-4-4-4-12 hex digits). */
#define ATUN_UUID_LEN 36
#define ATUN_UUID_STRLEN (ATUN_UUID_LEN + 1)

/* The URI SAN that carries the agent id.  wolfSSL 5.5.4 rejects URIs without
 * "://" (so no "urn:uuid:"). */
#define ATUN_AGENT_URI_PREFIX "atun://agent/"
#define ATUN_AGENT_URI_PREFIX_LEN 13
#define ATUN_AGENT_URI_LEN (ATUN_AGENT_URI_PREFIX_LEN + ATUN_UUID_LEN)

/* Serial numbers are 16 random bytes with the top bit cleared (positive) and
 * the next bit set, so the DER integer is always exactly 16 bytes: a shorter
 * encoding would only happen by chance and would make lengths vary. */
#define ATUN_CA_SERIAL_LEN 16
/* Longest serial read back from a certificate (RFC 5280 allows 20 octets). */
#define ATUN_CA_SERIAL_MAX 20

/* Bounds of a profile: CN bytes, SAN entries per certificate, text bytes of
 * one DNS or URI SAN (253 = longest DNS name). */
#define ATUN_CA_CN_MAX 63
#define ATUN_CA_SAN_MAX 16
#define ATUN_CA_SAN_NAME_MAX 253

/* Size of the encoded SAN extension value for a full profile: the SEQUENCE
 * header (4) plus, per entry, a tag, a long-form length (3) and the text. */
#define ATUN_CA_SAN_DER_MAX (4 + ATUN_CA_SAN_MAX * (3 + ATUN_CA_SAN_NAME_MAX))

/* An encoded ASN.1 time (GeneralizedTime TLV: 2 + 15 bytes). */
#define ATUN_CA_TIME_DER_MAX 17

typedef enum atun_cert_kind {
  ATUN_CERT_CA = 1,
  ATUN_CERT_SERVER = 2,
  ATUN_CERT_CLIENT = 3
} atun_cert_kind;

/* Key usage and extended key usage bits of a profile. */
#define ATUN_KU_DIGITAL_SIGNATURE 0x01u
#define ATUN_KU_KEY_CERT_SIGN 0x02u
#define ATUN_KU_CRL_SIGN 0x04u
#define ATUN_EKU_SERVER_AUTH 0x01u
#define ATUN_EKU_CLIENT_AUTH 0x02u

/* SAN types carry their GeneralName tag numbers. */
typedef enum atun_san_type {
  ATUN_SAN_DNS = 2,
  ATUN_SAN_URI = 6,
  ATUN_SAN_IP = 7
} atun_san_type;

typedef struct atun_cert_san {
  atun_san_type type;
  char name[ATUN_CA_SAN_NAME_MAX + 1]; /* DNS or URI text, NUL-terminated */
  atun_addr ip;                        /* ATUN_SAN_IP only */
} atun_cert_san;

typedef struct atun_cert_profile {
  atun_cert_kind kind;
  char cn[ATUN_CA_CN_MAX + 1];
  uint8_t serial[ATUN_CA_SERIAL_MAX];
  size_t serial_len;
  atun_tstamp not_before; /* whole seconds */
  atun_tstamp not_after;  /* whole seconds, > not_before */
  int is_ca;
  unsigned key_usage;     /* ATUN_KU_* */
  unsigned ext_key_usage; /* ATUN_EKU_* */
  size_t nsans;
  atun_cert_san sans[ATUN_CA_SAN_MAX];
} atun_cert_profile;

typedef struct atun_ca_settings {
  uint64_t ca_lifetime_ns;     /* 10 years */
  uint64_t server_lifetime_ns; /* 1 year */
  uint64_t client_lifetime_ns; /* 90 days */
  /* not_before is set this far in the past so a peer whose clock runs a
   * little behind does not reject a certificate issued a moment ago. */
  uint64_t backdate_ns; /* 5 minutes */
  char ca_cn[ATUN_CA_CN_MAX + 1];     /* "atun CA" */
  char server_cn[ATUN_CA_CN_MAX + 1]; /* "atun gateway" */
} atun_ca_settings;

void atun_ca_settings_default(atun_ca_settings *s);

/* Nonzero if |name| of |len| bytes is an acceptable agent name. */
int atun_agent_name_valid(const char *name, size_t len);

/* Nonzero if |s| of |len| bytes is a canonical lowercase UUID. */
int atun_uuid_valid(const char *s, size_t len);

/* Writes a random (version 4) UUID, NUL-terminated, into |out|.  Returns 0 or
 * ATUN_ERR_CALLBACK_FAILURE (|rand| failed). */
int atun_uuid_generate(char out[ATUN_UUID_STRLEN], const atun_rand *rand);

/* Writes "atun://agent/<id>" into |out|.  Returns 0 or
 * ATUN_ERR_INVALID_ARGUMENT (|id| is not a canonical UUID). */
int atun_agent_uri_format(char out[ATUN_AGENT_URI_LEN + 1], const char *id);

/* Extracts the agent id from the URI |uri| of |len| bytes into |out|.
 * Returns 0 or ATUN_ERR_MALFORMED. */
int atun_agent_uri_parse(char out[ATUN_UUID_STRLEN], const char *uri,
                         size_t len);

/* Nonzero if |name| (NUL-terminated) is a DNS host name fit for a server
 * certificate: letters, digits and hyphens in labels of 1..63 bytes that do
 * not start or end with a hyphen, 253 bytes at most, no trailing dot. */
int atun_ca_dns_name_valid(const char *name);

/* Fills |p| with 16 random serial bytes (see ATUN_CA_SERIAL_LEN).  Returns 0
 * or ATUN_ERR_CALLBACK_FAILURE. */
int atun_ca_serial_generate(atun_cert_profile *p, const atun_rand *rand);

/*
 * Profile builders.  |now| is wall-clock ns; the validity starts at |now|
 * minus the backdate, rounded down to a second, and lasts the lifetime of the
 * kind from |s|.  Issued certificates never outlive their CA: not_after is
 * capped at |ca_not_after|.
 */

/* The self-signed CA: CN |s|->ca_cn, CA:TRUE, keyCertSign and cRLSign.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (|now| unset or a bad setting) or
 * ATUN_ERR_CALLBACK_FAILURE. */
int atun_ca_profile_ca(atun_cert_profile *p, const atun_ca_settings *s,
                       atun_tstamp now, const atun_rand *rand);

/* The gateway's server certificate: CN |s|->server_cn, one SAN per entry of
 * |hosts| (|nhosts| NUL-terminated strings; IP literals become IP SANs,
 * others DNS SANs, lowercased; duplicates are kept once), EKU serverAuth.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (no host, |now| unset, bad setting),
 * ATUN_ERR_BAD_NAME (a host is neither an IP literal nor a DNS name),
 * ATUN_ERR_LIMIT (more than ATUN_CA_SAN_MAX distinct hosts),
 * ATUN_ERR_EXPIRED (|now| >= |ca_not_after|) or ATUN_ERR_CALLBACK_FAILURE. */
int atun_ca_profile_server(atun_cert_profile *p, const atun_ca_settings *s,
                           const char *const *hosts, size_t nhosts,
                           atun_tstamp now, atun_tstamp ca_not_after,
                           const atun_rand *rand);

/* An agent's client certificate: CN |name|, one URI SAN atun://agent/|id|,
 * EKU clientAuth.  Returns 0, ATUN_ERR_BAD_NAME (|name|),
 * ATUN_ERR_INVALID_ARGUMENT (|id|, |now| unset, bad setting),
 * ATUN_ERR_EXPIRED (|now| >= |ca_not_after|) or ATUN_ERR_CALLBACK_FAILURE. */
int atun_ca_profile_client(atun_cert_profile *p, const atun_ca_settings *s,
                           const char *name, const char *id, atun_tstamp now,
                           atun_tstamp ca_not_after, const atun_rand *rand);

/* The agent id of a client profile: its one URI SAN must be an agent URI.
 * Returns 0, ATUN_ERR_NOT_FOUND (no URI SAN) or ATUN_ERR_MALFORMED (several
 * URI SANs, or one that is not an agent URI). */
int atun_cert_profile_agent_id(const atun_cert_profile *p,
                               char out[ATUN_UUID_STRLEN]);

/* Encodes the SANs of |p| as a DER GeneralNames SEQUENCE into |out| (cap
 * |cap|, ATUN_CA_SAN_DER_MAX always suffices); the length goes to |outlen|.
 * Returns 0, ATUN_ERR_INVALID_ARGUMENT (no SAN, a bad entry) or
 * ATUN_ERR_NOBUF. */
int atun_cert_profile_san_der(const atun_cert_profile *p, uint8_t *out,
                              size_t cap, size_t *outlen);

/* Decodes a DER GeneralNames SEQUENCE of |len| bytes into the SANs of |p|
 * (replacing them).  DNS, URI and IP names are kept; other name types are
 * skipped.  Returns 0, ATUN_ERR_MALFORMED (bad DER, trailing bytes, an empty
 * or NUL-holding name, an IP of neither 4 nor 16 bytes) or ATUN_ERR_LIMIT
 * (more than ATUN_CA_SAN_MAX kept names, or one longer than
 * ATUN_CA_SAN_NAME_MAX). */
int atun_cert_profile_san_parse(atun_cert_profile *p, const uint8_t *der,
                                size_t len);

/* Finds the subjectAltName extension in the certificate extensions |exts| of
 * |len| bytes (the [3]-tagged field or the bare SEQUENCE OF Extension) and
 * points |val|/|vallen| at its value (the GeneralNames DER).  Returns 0,
 * ATUN_ERR_NOT_FOUND or ATUN_ERR_MALFORMED (bad DER, or the extension twice). */
int atun_ca_ext_find_san(const uint8_t *exts, size_t len, const uint8_t **val,
                         size_t *vallen);

/*
 * Renewal: a certificate valid from |not_before| to |not_after| is due at
 * not_before + floor(2 * (not_after - not_before) / 3), i.e. with a third of
 * its lifetime left.  Server certificates are renewed with the same key (so
 * SPKI pins stay valid), agents renew over the control stream.
 */

/* The instant renewal is due; |not_before| when |not_after| <= |not_before|. */
atun_tstamp atun_ca_renew_at(atun_tstamp not_before, atun_tstamp not_after);

/* Nonzero when |now| >= atun_ca_renew_at(|not_before|, |not_after|). */
int atun_ca_should_renew(atun_tstamp not_before, atun_tstamp not_after,
                         atun_tstamp now);

/* Encodes |t| (whole seconds are kept) as an ASN.1 time TLV: UTCTime before
 * 2050, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5).  Needs
 * ATUN_CA_TIME_DER_MAX bytes at most.  Returns the length or
 * ATUN_ERR_NOBUF. */
ssize_t atun_ca_time_encode(uint8_t *out, size_t cap, atun_tstamp t);

/* Decodes an ASN.1 UTCTime or GeneralizedTime TLV of |len| bytes ("Z" form,
 * no fraction).  A time past what |atun_tstamp| holds (year 2554) gives
 * ATUN_TSTAMP_MAX.  Returns 0 or ATUN_ERR_MALFORMED (bad syntax, or before
 * 1970). */
int atun_ca_time_decode(atun_tstamp *out, const uint8_t *in, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_CA_POLICY_H */
