/*
 * The configuration model of both daemons: JSON files (docs/config.md lists
 * every key), parsed into plain structs and written back.
 *
 * Parsing starts from the defaults and overrides what the text sets.  Every
 * value is checked; a failure names the key and the problem in
 * |atun_config_error.message| ("advertise_subnets[2]: host bits set in
 * 10.0.0.1/8").  Keys this version does not know only produce warnings, so a
 * newer file still loads.  Durations are either a JSON number of
 * milliseconds or a string of digits with one unit: "250ms", "10s", "5m",
 * "24h", "90d".
 *
 * Syntax is checked strictly (RFC 8259, UTF-8, no duplicate known keys,
 * nesting at most ATUN_CONFIG_DEPTH_MAX, no "\u0000" in strings, numbers of
 * at most ATUN_CONFIG_NUMBER_MAX characters) before cJSON builds the tree;
 * syntax errors name a line and column.  cJSON allocates through its global
 * hooks; everything the structs own comes from the |atun_mem| given (NULL
 * there means atun_mem_default()).
 *
 * `atun-agent enroll` merges its result into an existing file with
 * atun_config_merge_enrollment(), which rewrites only the keys enrollment
 * owns and leaves every other byte of the file as it was.
 */
#ifndef ATUN_CONFIG_H
#define ATUN_CONFIG_H

#include "addr.h"
#include "atun.h"
#include "ca_policy.h"
#include "codec.h"
#include "enroll.h"
#include "quic.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- bounds ------------------------------------------------------------------- */

/* Largest config text read or written. */
#define ATUN_CONFIG_TEXT_MAX ((size_t)1 << 20)
/* Deepest nesting of arrays and objects anywhere in the text. */
#define ATUN_CONFIG_DEPTH_MAX 64
/* Longest number token (cJSON reads at most 63 characters of one). */
#define ATUN_CONFIG_NUMBER_MAX 63
/* Longest file or directory path, in bytes. */
#define ATUN_CONFIG_PATH_MAX 1023
/* Room for one error or warning text, NUL included. */
#define ATUN_CONFIG_MSG_MAX 256
/* Warnings kept per parse; further ones are only counted. */
#define ATUN_CONFIG_WARNINGS_MAX 16

#define ATUN_CONFIG_SERVER_NAMES_MAX ATUN_CA_SAN_MAX
#define ATUN_CONFIG_FORWARDS_MAX 1024
#define ATUN_CONFIG_SOCKS5_USERS_MAX 256
/* RFC 1929: user names and passwords of 1..255 bytes. */
#define ATUN_CONFIG_CREDENTIAL_MAX 255
#define ATUN_CONFIG_ADMIN_TOKENS_MAX 64
#define ATUN_CONFIG_ADMIN_NAME_MAX 64
#define ATUN_CONFIG_DENY_MAX 1024
/* Longest duration accepted anywhere (100 years). */
#define ATUN_CONFIG_DURATION_MAX_MS ((uint64_t)36500 * 24 * 3600 * 1000)

/* --- shared types ----------------------------------------------------------------- */

typedef enum atun_config_log_level {
  ATUN_CONFIG_LOG_ERROR = 0,
  ATUN_CONFIG_LOG_WARN = 1,
  ATUN_CONFIG_LOG_INFO = 2,
  ATUN_CONFIG_LOG_DEBUG = 3
} atun_config_log_level;

/* Returns "error", "warn", "info" or "debug" ("unknown" otherwise). */
const char *atun_config_log_level_name(int level);

/* What a parse or merge reports.  |message| is "" on success, else
 * "<key path>: <problem>" (or "line L, column C: <problem>" for syntax).
 * Warnings (unknown keys) are kept on success and failure alike. */
typedef struct atun_config_error {
  char message[ATUN_CONFIG_MSG_MAX];
  char warnings[ATUN_CONFIG_WARNINGS_MAX][ATUN_CONFIG_MSG_MAX];
  size_t warning_count;   /* entries of |warnings| in use */
  size_t warnings_dropped; /* warnings beyond ATUN_CONFIG_WARNINGS_MAX */
} atun_config_error;

/* Parses a duration of |len| bytes: digits then one of "ms", "s", "m",
 * "h", "d"; no sign, blank or fraction.  Returns 0 or ATUN_ERR_MALFORMED
 * (also for more than ATUN_CONFIG_DURATION_MAX_MS). */
int atun_config_duration_parse(uint64_t *ms, const char *s, size_t len);

/* Writes |ms| with the largest unit that divides it ("90s", "36h", "0s") and
 * a NUL into |buf| (32 bytes always suffice).  Returns the length or
 * ATUN_ERR_NOBUF. */
ssize_t atun_config_duration_format(char *buf, size_t buflen, uint64_t ms);

/* --- agent ------------------------------------------------------------------- */

typedef struct atun_config_agent {
  const atun_mem *mem; /* owns the lists */
  char name[ATUN_AGENT_NAME_STRLEN];  /* "" until enrolled */
  char agent_id[ATUN_UUID_STRLEN];    /* "" until enrolled */
  uint8_t has_gateway;                /* "gateway": "host:port" */
  atun_target gateway_host;
  uint16_t gateway_port;
  /* TLS server name to expect; "" means the gateway's host name. */
  char server_name[ATUN_NAME_MAX + 1];
  char key_file[ATUN_CONFIG_PATH_MAX + 1];
  char cert_file[ATUN_CONFIG_PATH_MAX + 1];
  char ca_file[ATUN_CONFIG_PATH_MAX + 1];
  uint8_t has_server_spki;
  uint8_t server_spki_sha256[ATUN_SPKI_PIN_BYTES];
  atun_prefix *advertise_subnets; /* <= ATUN_SUBNETS_MAX */
  size_t advertise_subnet_count;
  atun_domain *advertise_domains; /* <= ATUN_DOMAINS_MAX */
  size_t advertise_domain_count;
  uint8_t auto_detect_domains;
  char resolv_conf[ATUN_CONFIG_PATH_MAX + 1];
  atun_prefix *deny;              /* <= ATUN_CONFIG_DENY_MAX */
  size_t deny_count;
  uint64_t connect_timeout_ns;    /* whole ms, 1 ms .. 1 h */
  uint64_t drain_timeout_ns;      /* whole ms, 1 ms .. 1 h */
  atun_config_log_level log_level;
} atun_config_agent;

/* Fills |cfg| with the defaults (not enrolled; deny list: loopback,
 * link-local and cloud metadata addresses), lists allocated from |mem|.
 * Returns 0 or ATUN_ERR_NOMEM (|cfg| then holds nothing to free). */
int atun_config_agent_default(atun_config_agent *cfg, const atun_mem *mem);

/* Releases the lists of |cfg| and zeroes it (a zeroed |cfg| is fine). */
void atun_config_agent_free(atun_config_agent *cfg);

/*
 * Parses the JSON |text| of |len| bytes over the defaults into |cfg|.  |err|
 * may be NULL.  On failure |cfg| is zeroed (nothing to free).  Returns 0 or
 *   ATUN_ERR_LIMIT             |len| above ATUN_CONFIG_TEXT_MAX, or a list
 *                              above its bound,
 *   ATUN_ERR_MALFORMED         not valid JSON, or the top is no object,
 *   ATUN_ERR_INVALID_ARGUMENT  a value of the wrong type or out of range,
 *                              a duplicate key, a clash between keys,
 *   ATUN_ERR_MISSING_FIELD     a list item without a key it needs,
 *   ATUN_ERR_BAD_PREFIX        a subnet with a bad length or host bits,
 *   ATUN_ERR_BAD_NAME          a bad domain, host or agent name,
 *   ATUN_ERR_NOMEM.
 */
int atun_config_agent_parse(atun_config_agent *cfg, const char *text,
                            size_t len, const atun_mem *mem,
                            atun_config_error *err);

/* Writes |cfg| as JSON (two-space indents, every key, a final newline) into
 * a NUL-terminated buffer from |cfg|->mem, which the caller frees with
 * atun_mem_free().  Returns 0, ATUN_ERR_NOMEM or ATUN_ERR_LIMIT (above
 * ATUN_CONFIG_TEXT_MAX). */
int atun_config_agent_serialize(const atun_config_agent *cfg, char **out,
                                size_t *outlen);

/* Checks that |cfg| holds what a running agent needs: name, agent_id,
 * gateway, key, certificate and CA files.  Returns 0 or
 * ATUN_ERR_MISSING_FIELD, naming the key in |err| (may be NULL). */
int atun_config_agent_check_enrolled(const atun_config_agent *cfg,
                                     atun_config_error *err);

/* --- gateway ------------------------------------------------------------------- */

typedef struct atun_config_socks5_user {
  char username[ATUN_CONFIG_CREDENTIAL_MAX + 1];
  char password[ATUN_CONFIG_CREDENTIAL_MAX + 1];
} atun_config_socks5_user;

typedef struct atun_config_forward {
  atun_quic_endpoint listen;  /* TCP address the gateway listens on */
  atun_target target;         /* address or host name inside the network */
  uint16_t port;              /* 1..65535 */
  char agent[ATUN_AGENT_NAME_STRLEN]; /* agent id or name; "" = routed */
} atun_config_forward;

#define ATUN_CONFIG_SCOPE_READ 0x1u
#define ATUN_CONFIG_SCOPE_WRITE 0x2u

typedef struct atun_config_admin_token {
  char name[ATUN_CONFIG_ADMIN_NAME_MAX + 1]; /* printable ASCII, unique */
  uint8_t sha256[32];                        /* of the bearer secret */
  unsigned scopes;                           /* ATUN_CONFIG_SCOPE_*, != 0 */
} atun_config_admin_token;

typedef struct atun_config_limits {
  uint32_t max_agents;             /* 1..1000000, default 4096 */
  uint32_t max_streams_per_agent;  /* 1..65536, default 1024 */
  uint32_t client_max_connections; /* SOCKS5 + forwards, 1..1000000 */
  uint32_t api_max_connections;    /* 1..65536, default 256 */
  uint32_t api_max_request_bytes;  /* 1 KiB..64 MiB, default 64 KiB */
  uint64_t api_header_timeout_ns;  /* 1 ms..1 h, default 10 s */
  uint32_t enroll_burst;           /* 1..1000000, default 5 */
  uint64_t enroll_interval_ns;     /* 1 ms..24 h, default 12 s */
} atun_config_limits;

typedef struct atun_config_gateway {
  const atun_mem *mem; /* owns the lists */
  char state_dir[ATUN_CONFIG_PATH_MAX + 1];
  atun_config_log_level log_level;
  atun_quic_endpoint quic_listen;  /* UDP, default [::]:4433 */
  /* What agents dial, given out at enrollment; has_... 0 means the first
   * server name and the port of |quic_listen|. */
  uint8_t has_quic_public;
  atun_target quic_public_host;
  uint16_t quic_public_port;
  atun_quic_endpoint api_listen;   /* TCP, default 127.0.0.1:8443 */
  /* URL put in enrollment strings; "" means https://<first server
   * name>:<api port>. */
  char api_public_url[ATUN_ENROLL_URL_MAX + 1];
  /* Names and addresses of the server certificate (1..16): DNS names
   * lowercase, IP literals in their text form. */
  char server_names[ATUN_CONFIG_SERVER_NAMES_MAX][ATUN_NAME_MAX + 1];
  size_t server_name_count;
  uint64_t heartbeat_interval_ns;   /* whole ms, 100 ms..600 s */
  uint32_t offline_missed_heartbeats; /* 1..ATUN_SESSION_MISSED_MAX */
  uint64_t drain_timeout_ns;        /* 1 ms..1 h */
  uint64_t client_cert_lifetime_ns;
  uint64_t server_cert_lifetime_ns;
  uint64_t ca_lifetime_ns;
  uint64_t enroll_token_ttl_ns;     /* default for new tokens */
  uint8_t socks5_enabled;
  atun_quic_endpoint socks5_listen; /* default 127.0.0.1:1080 */
  atun_config_socks5_user *socks5_users; /* none: no authentication */
  size_t socks5_user_count;
  atun_config_forward *forwards;
  size_t forward_count;
  atun_config_admin_token *admin_tokens;
  size_t admin_token_count;
  atun_config_limits limits;
} atun_config_gateway;

/* Fills |cfg| with the defaults.  Returns 0 (it allocates nothing; the
 * return value keeps the signature of the agent's). */
int atun_config_gateway_default(atun_config_gateway *cfg, const atun_mem *mem);

void atun_config_gateway_free(atun_config_gateway *cfg);

/* As atun_config_agent_parse(), for the gateway. */
int atun_config_gateway_parse(atun_config_gateway *cfg, const char *text,
                              size_t len, const atun_mem *mem,
                              atun_config_error *err);

/* As atun_config_agent_serialize(), for the gateway. */
int atun_config_gateway_serialize(const atun_config_gateway *cfg, char **out,
                                  size_t *outlen);

/* The QUIC endpoint agents are told to dial ("host:port"), resolving the
 * default of |quic_public_endpoint|. */
void atun_config_gateway_quic_endpoint(const atun_config_gateway *cfg,
                                       char buf[ATUN_HOSTPORT_STRLEN]);

/* The API URL for enrollment strings, resolving the default of
 * |api_public_url|. */
void atun_config_gateway_api_url(const atun_config_gateway *cfg,
                                 char buf[ATUN_ENROLL_URL_MAX + 1]);

/* --- merging an enrollment into an agent config --------------------------------- */

/* What `atun-agent enroll` owns in the agent config.  Strings are
 * NUL-terminated and checked like the keys they set. */
typedef struct atun_config_enrollment {
  const char *agent_id;  /* "agent_id" */
  const char *name;      /* "name" */
  const char *gateway;   /* "gateway", host:port as the API returned it */
  const char *key_file;  /* "key_file" */
  const char *cert_file; /* "cert_file" */
  const char *ca_file;   /* "ca_file" */
  uint8_t server_spki_sha256[ATUN_SPKI_PIN_BYTES]; /* "server_spki_sha256" */
  /* "advertise_subnets" / "advertise_domains", only when |set_...| is
   * nonzero (given on the command line); otherwise the file's lists stay. */
  int set_subnets;
  const atun_prefix *subnets;
  size_t subnet_count;
  int set_domains;
  const atun_domain *domains;
  size_t domain_count;
} atun_config_enrollment;

/*
 * Merges |enr| into the agent config text |existing| of |len| bytes and
 * writes the result, NUL-terminated, into a buffer from |mem| (free it with
 * atun_mem_free()).  Keys |enr| owns are replaced where they stand (their
 * first occurrence) or appended at the end of the top-level object, in the
 * file's own indentation; every other byte is kept, unknown keys, order,
 * whitespace and number spellings included.  Empty (or blank) |existing|
 * gives a complete agent config.  The result must load with
 * atun_config_agent_parse(), so a file whose other settings are invalid is
 * refused rather than written back.  |err| may be NULL.
 * Returns 0, or
 *   ATUN_ERR_MALFORMED         |existing| is not JSON or not an object,
 *   ATUN_ERR_INVALID_ARGUMENT, ATUN_ERR_BAD_NAME, ATUN_ERR_BAD_PREFIX
 *                              a bad value in |enr|, or what loading the
 *                              result returns,
 *   ATUN_ERR_LIMIT             |existing| or the result above
 *                              ATUN_CONFIG_TEXT_MAX, a list of |enr| above
 *                              its bound,
 *   ATUN_ERR_NOMEM.
 */
int atun_config_merge_enrollment(const char *existing, size_t len,
                                 const atun_config_enrollment *enr,
                                 const atun_mem *mem, char **out,
                                 size_t *outlen, atun_config_error *err);

#ifdef __cplusplus
}
#endif

#endif /* ATUN_CONFIG_H */
