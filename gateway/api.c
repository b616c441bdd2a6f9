/*
 * The management API (SPEC §6) on io/https: the endpoints, their
 * authentication and the JSON they speak.  docs/api.md is the operator's
 * reference for every endpoint.
 *
 * Authentication: admin bearer tokens from the config (auth.h) for
 * everything but enrollment, which takes the enrollment token as its
 * bearer, and /health/ready, which takes none (probes).  Every write is
 * audited in the store with the admin token's name (or "enrollment") as
 * the actor.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "clock.h"
#include "enroll.h"
#include "gw.h"
#include "http_json.h"
#include "log.h"

#define API_PREFIX "/jet/agent-tunnel"
/* GET /agents pages: default and largest page. */
#define LIST_LIMIT_DEFAULT 100
#define LIST_LIMIT_MAX 1000
/* Largest /metrics text. */
#define METRICS_TEXT_MAX ((size_t)1 << 20)
/* Candidates shown by resolve-target. */
#define RESOLVE_CANDIDATES_MAX 16

/* --- small helpers ---------------------------------------------------------------- */

/* Handlers answer errors through |resp| and still return 0: a nonzero
 * return means "could not even answer" (the framework sends a 500). */
static int fail(atun_http_response *resp, int status, const char *code, const char *msg) {
  return atun_http_json_error(resp, status, code, msg);
}

static int fail_store(atun_http_response *resp, int err) {
  atun_log(ATUN_LOG_ERROR, "api", "store_error", "error=%s", atun_strerror(err));
  return fail(resp, 500, "internal", "the gateway's store failed; see its log");
}

static void hex(char *out, const uint8_t *in, size_t len) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < len; ++i) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * len] = '\0';
}

static void peer_text(char out[ATUN_ADDR_STRLEN], const atun_http_request *req) {
  atun_addr_format(out, &req->peer);
}

static cJSON *add_time(cJSON *obj, const char *key, atun_tstamp wall) {
  char text[ATUN_GW_TIME_STRLEN];
  if (wall == ATUN_TSTAMP_MAX) return cJSON_AddNullToObject(obj, key);
  atun_gw_time_format(text, wall);
  return cJSON_AddStringToObject(obj, key, text);
}

/* --- authentication ------------------------------------------------------------- */

/* Checks the admin bearer token for |scope|.  Returns 0 with |*who| set to
 * the token's name, or -1 with |resp| holding the 401 / 403. */
static int authorize(atun_gw *gw, const atun_http_request *req, atun_http_response *resp,
                     unsigned scope, const char **who) {
  const char *tok = NULL;
  size_t len = 0;
  if (atun_http_request_bearer(req, &tok, &len) != 0) tok = NULL;
  atun_gw_auth_result r = atun_gw_auth_check(gw->cfg.admin_tokens, gw->cfg.admin_token_count,
                                             tok, len, scope, who);
  if (r == ATUN_GW_AUTH_OK) return 0;
  if (r == ATUN_GW_AUTH_SCOPE) {
    fail(resp, 403, "forbidden",
         scope == ATUN_CONFIG_SCOPE_WRITE ? "this token lacks the write scope"
                                          : "this token lacks the read scope");
    return -1;
  }
  fail(resp, 401, "unauthorized",
       r == ATUN_GW_AUTH_MISSING ? "an admin bearer token is required"
                                 : "the bearer token is not valid");
  atun_http_response_add_header(resp, "WWW-Authenticate", "Bearer realm=\"atun\"");
  return -1;
}

/* --- agent JSON ------------------------------------------------------------------- */

static void add_routes(atun_gw *gw, cJSON *obj, const uint8_t id[16],
                       const atun_registry_agent_info *info) {
  cJSON *subnets = cJSON_AddArrayToObject(obj, "subnets");
  cJSON *domains = cJSON_AddArrayToObject(obj, "domains");
  if (info == NULL || subnets == NULL || domains == NULL) return;
  atun_prefix *p = calloc(info->nsubnets + 1, sizeof(*p));
  atun_route_domain *d = calloc(info->ndomains + 1, sizeof(*d));
  if (p != NULL && d != NULL &&
      atun_registry_agent_routes(gw->reg, id, p, info->nsubnets, d, info->ndomains) == 0) {
    char text[ATUN_PREFIX_STRLEN];
    for (size_t i = 0; i < info->nsubnets; ++i) {
      atun_prefix_format(text, &p[i]);
      cJSON_AddItemToArray(subnets, cJSON_CreateString(text));
    }
    for (size_t i = 0; i < info->ndomains; ++i) {
      cJSON *dom = cJSON_CreateObject();
      cJSON_AddStringToObject(dom, "name", d[i].name);
      cJSON_AddBoolToObject(dom, "auto_detected", d[i].auto_detected);
      cJSON_AddItemToArray(domains, dom);
    }
  }
  free(p);
  free(d);
}

static void add_live(atun_gw *gw, cJSON *o, const uint8_t id[16], int revoked, atun_tstamp mono) {
  atun_registry_agent_info info;
  int known = atun_registry_get(gw->reg, id, mono, &info) == 0;
  int status = revoked ? ATUN_AGENT_REVOKED : known ? info.status : ATUN_AGENT_OFFLINE;
  cJSON_AddStringToObject(o, "status", atun_agent_status_name(status));
  cJSON_AddBoolToObject(o, "connected", known && info.connected && !revoked);
  add_time(o, "last_seen", known ? atun_gw_mono_to_wall(info.last_seen) : ATUN_TSTAMP_MAX);
  if (known && info.rtt_ns != UINT64_MAX)
    cJSON_AddNumberToObject(o, "rtt_ms", (double)info.rtt_ns / 1e6);
  else
    cJSON_AddNullToObject(o, "rtt_ms");
  cJSON_AddNumberToObject(o, "active_streams", known ? info.active_streams : 0);
  if (known && info.has_route_epoch)
    cJSON_AddNumberToObject(o, "route_epoch", (double)info.route_epoch);
  else
    cJSON_AddNullToObject(o, "route_epoch");
  add_routes(gw, o, id, known && !revoked ? &info : NULL);
}

cJSON *atun_gw_api_agent_json(atun_gw *gw, const atun_agent_record *rec, atun_tstamp mono) {
  char text[2 * ATUN_CA_SERIAL_MAX + 1];
  uint8_t id[16];
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) return NULL;
  cJSON_AddStringToObject(o, "id", rec->id);
  cJSON_AddStringToObject(o, "name", rec->name);
  int revoked = rec->revoked_at != ATUN_TSTAMP_MAX;
  if (atun_gw_uuid_parse(id, rec->id, strlen(rec->id)) == 0) add_live(gw, o, id, revoked, mono);
  add_time(o, "cert_expires_at", rec->cert_not_after);
  hex(text, rec->serial, rec->serial_len);
  cJSON_AddStringToObject(o, "cert_serial", text);
  char fp[2 * ATUN_STORE_FINGERPRINT_LEN + 1];
  hex(fp, rec->fingerprint, sizeof(rec->fingerprint));
  cJSON_AddStringToObject(o, "cert_sha256", fp);
  add_time(o, "enrolled_at", rec->enrolled_at);
  add_time(o, "revoked_at", rec->revoked_at);
  return o;
}

/* --- GET /agents ------------------------------------------------------------------ */

/* Reads "name=<digits>" from the query |q|; absent keeps |*out|.  Returns
 * 0 or -1 (present but not a number up to |max|). */
static int query_uint(const char *q, const char *name, size_t max, size_t *out) {
  size_t nlen = strlen(name);
  for (const char *p = q; *p != '\0';) {
    const char *amp = strchr(p, '&');
    size_t seglen = amp ? (size_t)(amp - p) : strlen(p);
    if (seglen > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
      size_t v = 0, digits = seglen - nlen - 1;
      if (digits == 0 || digits > 9) return -1;
      for (size_t i = 0; i < digits; ++i) {
        char c = p[nlen + 1 + i];
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (size_t)(c - '0');
      }
      if (v > max) return -1;
      *out = v;
    }
    p += seglen + (amp ? 1 : 0);
  }
  return 0;
}

static int h_agents_list(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  const char *who;
  if (authorize(gw, req, resp, ATUN_CONFIG_SCOPE_READ, &who) != 0) return 0;
  size_t limit = LIST_LIMIT_DEFAULT, offset = 0;
  if (query_uint(req->query, "limit", LIST_LIMIT_MAX, &limit) != 0 || limit == 0 ||
      query_uint(req->query, "offset", 1000000000, &offset) != 0)
    return fail(resp, 400, "invalid_field",
                "limit must be 1..1000 and offset a non-negative integer");
  atun_agent_record *recs = calloc(limit, sizeof(*recs));
  if (recs == NULL) return -1;
  ssize_t n = atun_store_agent_list(gw->store, recs, limit, offset);
  if (n < 0) {
    free(recs);
    return fail_store(resp, (int)n);
  }
  cJSON *root = cJSON_CreateObject();
  cJSON *arr = cJSON_AddArrayToObject(root, "agents");
  for (ssize_t i = 0; i < n; ++i)
    cJSON_AddItemToArray(arr, atun_gw_api_agent_json(gw, &recs[i], req->ts));
  cJSON_AddNumberToObject(root, "offset", (double)offset);
  cJSON_AddNumberToObject(root, "limit", (double)limit);
  if ((size_t)n == limit) cJSON_AddNumberToObject(root, "next_offset", (double)(offset + limit));
  free(recs);
  return atun_http_json_respond(resp, 200, root);
}

/* --- GET / DELETE /agents/{id} ------------------------------------------------------ */

static int find_agent(atun_gw *gw, const char *id, atun_agent_record *rec,
                      atun_http_response *resp) {
  int rv = atun_uuid_valid(id, strlen(id)) ? atun_store_agent_get(gw->store, id, rec)
                                            : ATUN_ERR_NOT_FOUND;
  if (rv == ATUN_ERR_NOT_FOUND) fail(resp, 404, "not_found", "no agent with this id");
  else if (rv != 0) fail_store(resp, rv);
  return rv;
}

static int h_agent_get(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  const char *who;
  atun_agent_record rec;
  if (authorize(gw, req, resp, ATUN_CONFIG_SCOPE_READ, &who) != 0) return 0;
  if (find_agent(gw, req->id, &rec, resp) != 0) return 0;
  cJSON *o = atun_gw_api_agent_json(gw, &rec, req->ts);
  return o == NULL ? -1 : atun_http_json_respond(resp, 200, o);
}

/* Revocation: the store first (durable, audited), then the registry and the
 * live connection, so a crash in between leaves the agent refused. */
static int h_agent_delete(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  const char *who;
  atun_agent_record rec;
  uint8_t id[16];
  if (authorize(gw, req, resp, ATUN_CONFIG_SCOPE_WRITE, &who) != 0) return 0;
  if (find_agent(gw, req->id, &rec, resp) != 0) return 0;
  int rv = atun_store_agent_revoke(gw->store, rec.id, atun_gw_wall_now(), who);
  if (rv == ATUN_ERR_REVOKED) return fail(resp, 409, "already_revoked", "the agent is already revoked");
  if (rv != 0) return fail_store(resp, rv);
  atun_gw_uuid_parse(id, rec.id, strlen(rec.id));
  atun_registry_agent_info info;
  if (atun_registry_get(gw->reg, id, req->ts, &info) == 0) atun_registry_revoke(gw->reg, id);
  size_t closed = atun_gw_agents_close(gw, id, ATUN_APP_REVOKED, "revoked");
  ++gw->metrics.revocations;
  atun_log(ATUN_LOG_INFO, "gateway", "agent_revoked",
           "agent_id=%s agent_name=%s by=%s connections_closed=%zu", rec.id, rec.name, who,
           closed);
  if (atun_store_agent_get(gw->store, rec.id, &rec) != 0) return fail_store(resp, ATUN_ERR_STORE);
  cJSON *o = atun_gw_api_agent_json(gw, &rec, req->ts);
  return o == NULL ? -1 : atun_http_json_respond(resp, 200, o);
}

/* --- POST /agents/resolve-target --------------------------------------------------- */

static const char *match_name(uint8_t m) {
  return m == ATUN_ROUTE_MATCH_PREFIX ? "prefix" : m == ATUN_ROUTE_MATCH_DOMAIN ? "domain" : "pin";
}

static cJSON *candidate_json(atun_gw *gw, const atun_route_candidate *c, atun_tstamp mono) {
  char text[ATUN_UUID_STRLEN], route[ATUN_ROUTE_NAME_MAX + 1];
  atun_registry_agent_info info;
  cJSON *o = cJSON_CreateObject();
  /* The registry uses the agent id as the tie-break and reports it. */
  atun_gw_uuid_format(text, c->health.tiebreak);
  cJSON_AddStringToObject(o, "agent_id", text);
  int known = atun_registry_get(gw->reg, c->health.tiebreak, mono, &info) == 0;
  cJSON_AddStringToObject(o, "agent_name", known ? info.name : "");
  cJSON_AddStringToObject(o, "status", atun_agent_status_name(known ? info.status : 0));
  cJSON_AddStringToObject(o, "match", match_name(c->match));
  if (c->match == ATUN_ROUTE_MATCH_PREFIX) {
    atun_prefix_format(route, &c->prefix);
    cJSON_AddStringToObject(o, "route", route);
  } else if (c->match == ATUN_ROUTE_MATCH_DOMAIN) {
    cJSON_AddStringToObject(o, "route", c->domain);
  } else {
    cJSON_AddNullToObject(o, "route");
  }
  cJSON_AddNumberToObject(o, "active_streams", c->health.active_streams);
  if (c->health.rtt_ns != UINT64_MAX)
    cJSON_AddNumberToObject(o, "rtt_ms", (double)c->health.rtt_ns / 1e6);
  else
    cJSON_AddNullToObject(o, "rtt_ms");
  return o;
}

/* The optional "agent" pin: an agent id or a name. */
static int parse_pin(const char *agent, atun_registry_pin *pin) {
  memset(pin, 0, sizeof(*pin));
  if (agent == NULL) return 0;
  if (atun_gw_uuid_parse(pin->id, agent, strlen(agent)) == 0) {
    pin->kind = ATUN_REGISTRY_PIN_ID;
    return 0;
  }
  if (!atun_agent_name_valid(agent, strlen(agent))) return -1;
  pin->kind = ATUN_REGISTRY_PIN_NAME;
  pin->name = agent;
  return 0;
}

static int resolve_respond(atun_gw *gw, const atun_http_request *req, atun_http_response *resp,
                           const char *target, const atun_route_target *t,
                           const atun_registry_pin *pin) {
  atun_route_candidate cand[RESOLVE_CANDIDATES_MAX];
  ssize_t n = atun_registry_resolve(gw->reg, t, pin, req->ts, cand, RESOLVE_CANDIDATES_MAX);
  if (n < 0) return fail(resp, 400, "invalid_field", "field 'target' can not be routed");
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "target", target);
  cJSON_AddStringToObject(root, "kind", t->kind == ATUN_ROUTE_TARGET_ADDR ? "address" : "name");
  cJSON *arr = cJSON_AddArrayToObject(root, "candidates");
  for (ssize_t i = 0; i < n; ++i) cJSON_AddItemToArray(arr, candidate_json(gw, &cand[i], req->ts));
  return atun_http_json_respond(resp, 200, root);
}

static int h_resolve(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  const char *who, *target, *agent;
  cJSON *body;
  if (authorize(gw, req, resp, ATUN_CONFIG_SCOPE_READ, &who) != 0) return 0;
  int rv = atun_http_json_parse_body(req, resp, &body);
  if (rv != 0) return rv == ATUN_ERR_NOMEM ? -1 : 0;
  atun_route_target t;
  atun_registry_pin pin;
  if (atun_http_json_get_string(body, "target", 1, ATUN_ROUTE_NAME_MAX + 2, &target, resp) != 0 ||
      atun_http_json_get_string(body, "agent", 0, ATUN_AGENT_NAME_MAX, &agent, resp) != 0) {
    cJSON_Delete(body);
    return 0;
  }
  if (atun_route_target_parse(&t, target) != 0)
    rv = fail(resp, 400, "invalid_field", "field 'target' must be an IP address or a host name");
  else if (parse_pin(agent, &pin) != 0)
    rv = fail(resp, 400, "invalid_field", "field 'agent' must be an agent id or name");
  else
    rv = resolve_respond(gw, req, resp, target, &t, &pin);
  cJSON_Delete(body);
  return rv;
}

/* --- POST /tokens ---------------------------------------------------------------------- */

/* "ttl": a duration string ("30m") or a number of milliseconds, as in the
 * config file. */
static int parse_ttl(const cJSON *body, uint64_t *ttl_ns, atun_http_response *resp) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "ttl");
  uint64_t ms;
  if (v == NULL || cJSON_IsNull(v)) return 0;
  int ok = 0;
  if (cJSON_IsString(v))
    ok = atun_config_duration_parse(&ms, v->valuestring, strlen(v->valuestring)) == 0;
  else if (cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble <= 1e12 &&
           v->valuedouble == (double)(uint64_t)v->valuedouble)
    ok = (ms = (uint64_t)v->valuedouble, 1);
  if (!ok || ms == 0 || ms > ATUN_TOKEN_TTL_MAX_NS / ATUN_NS_PER_MS) {
    fail(resp, 400, "invalid_field",
         "field 'ttl' must be a duration from 1s to 30d (\"1h\") or milliseconds");
    return -1;
  }
  *ttl_ns = ms * ATUN_NS_PER_MS;
  return 0;
}

static int token_respond(atun_gw *gw, atun_http_response *resp, const atun_token_record *rec,
                         const char *secret) {
  char url[ATUN_ENROLL_URL_MAX + 1], text[ATUN_ENROLL_STRLEN];
  atun_config_gateway_api_url(&gw->cfg, url);
  ssize_t n = atun_enroll_encode(text, sizeof(text), url, secret, gw->pki->ca_pin);
  if (n < 0) {
    atun_store_token_remove(gw->store, rec->id);
    return fail(resp, 500, "internal", "api_public_url can not go into an enrollment string");
  }
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", rec->id);
  if (rec->name[0] != '\0') cJSON_AddStringToObject(o, "name", rec->name);
  else cJSON_AddNullToObject(o, "name");
  add_time(o, "created_at", rec->created_at);
  add_time(o, "expires_at", rec->expires_at);
  cJSON_AddStringToObject(o, "enrollment_string", text);
  memset(text, 0, sizeof(text));
  return atun_http_json_respond(resp, 201, o);
}

static int h_token_create(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  const char *who, *name = NULL;
  cJSON *body = NULL;
  uint64_t ttl_ns = gw->cfg.enroll_token_ttl_ns;
  if (authorize(gw, req, resp, ATUN_CONFIG_SCOPE_WRITE, &who) != 0) return 0;
  /* An empty body takes every default. */
  if (req->body_len > 0) {
    int rv = atun_http_json_parse_body(req, resp, &body);
    if (rv != 0) return rv == ATUN_ERR_NOMEM ? -1 : 0;
    if (parse_ttl(body, &ttl_ns, resp) != 0 ||
        atun_http_json_get_string(body, "name", 0, ATUN_TOKEN_NAME_MAX, &name, resp) != 0) {
      cJSON_Delete(body);
      return 0;
    }
  }
  char secret[ATUN_TOKEN_SECRET_STRLEN];
  atun_token_record rec;
  atun_tstamp wall = atun_gw_wall_now();
  const atun_token_store *ts = atun_store_token_store(gw->store);
  int rv = atun_token_issue(ts, atun_ca_sysrand(), wall, ttl_ns, name, secret, sizeof(secret),
                            &rec);
  /* Housekeeping purges expired tokens every minute; a full store gets an
   * early purge rather than a refusal. */
  if (rv == ATUN_ERR_FULL && atun_store_token_purge(gw->store, wall) > 0)
    rv = atun_token_issue(ts, atun_ca_sysrand(), wall, ttl_ns, name, secret, sizeof(secret), &rec);
  cJSON_Delete(body);
  if (rv == ATUN_ERR_BAD_NAME)
    return fail(resp, 400, "invalid_field", "field 'name' must be printable ASCII");
  if (rv == ATUN_ERR_FULL) return fail(resp, 503, "unavailable", "too many enrollment tokens");
  if (rv != 0) return fail_store(resp, rv);
  atun_store_audit_add(gw->store, wall, who, "token_create", rec.id, rec.name[0] ? rec.name : NULL);
  ++gw->metrics.tokens_issued;
  atun_log(ATUN_LOG_INFO, "gateway", "token_created", "id=%s by=%s ttl_s=%llu", rec.id,
           who, (unsigned long long)(ttl_ns / ATUN_NS_PER_S));
  rv = token_respond(gw, resp, &rec, secret);
  memset(secret, 0, sizeof(secret));
  return rv;
}

/* --- POST /enroll ------------------------------------------------------------------------- */

typedef struct enroll_req {
  const char *agent_id, *agent_name, *csr_pem, *hostname;
  uint8_t token_hash[ATUN_TOKEN_HASH_BYTES];
} enroll_req;

static int enroll_fail(atun_gw *gw, atun_http_response *resp, int result, int status,
                       const char *code, const char *msg) {
  ++gw->metrics.enrollments[result];
  return fail(resp, status, code, msg);
}

/* The enrollment token is the bearer; it is checked for form here and
 * consumed by the store transaction. */
static int enroll_token(atun_gw *gw, const atun_http_request *req, atun_http_response *resp,
                        enroll_req *er) {
  const char *tok;
  size_t len;
  uint8_t secret[ATUN_TOKEN_SECRET_BYTES];
  if (atun_http_request_bearer(req, &tok, &len) != 0 ||
      atun_token_secret_decode(secret, tok, len) != 0) {
    enroll_fail(gw, resp, ATUN_GW_ENROLL_BAD_TOKEN, 401, "unauthorized",
                "an enrollment token is required as the bearer token");
    atun_http_response_add_header(resp, "WWW-Authenticate", "Bearer realm=\"atun-enroll\"");
    return -1;
  }
  int rv = atun_token_hash(er->token_hash, secret);
  memset(secret, 0, sizeof(secret));
  if (rv != 0) enroll_fail(gw, resp, ATUN_GW_ENROLL_ERROR, 500, "internal", "hashing failed");
  return rv;
}

static int enroll_fields(atun_gw *gw, const cJSON *body, atun_http_response *resp, enroll_req *er) {
  if (atun_http_json_get_string(body, "agent_id", 1, ATUN_UUID_LEN, &er->agent_id, resp) != 0 ||
      atun_http_json_get_string(body, "agent_name", 1, ATUN_AGENT_NAME_MAX, &er->agent_name,
                                resp) != 0 ||
      atun_http_json_get_string(body, "csr_pem", 1, ATUN_CA_PEM_MAX, &er->csr_pem, resp) != 0 ||
      atun_http_json_get_string(body, "hostname", 0, ATUN_NAME_MAX, &er->hostname, resp) != 0) {
    ++gw->metrics.enrollments[ATUN_GW_ENROLL_BAD_REQUEST];
    return -1;
  }
  if (!atun_uuid_valid(er->agent_id, strlen(er->agent_id))) {
    enroll_fail(gw, resp, ATUN_GW_ENROLL_BAD_REQUEST, 400, "invalid_field",
                "field 'agent_id' must be a lowercase UUID");
    return -1;
  }
  if (!atun_agent_name_valid(er->agent_name, strlen(er->agent_name))) {
    enroll_fail(gw, resp, ATUN_GW_ENROLL_BAD_REQUEST, 400, "invalid_field",
                "field 'agent_name' must be 1-63 of [A-Za-z0-9._-], starting with a letter or digit");
    return -1;
  }
  if (er->hostname != NULL && !atun_text_valid(er->hostname, strlen(er->hostname))) {
    enroll_fail(gw, resp, ATUN_GW_ENROLL_BAD_REQUEST, 400, "invalid_field",
                "field 'hostname' must be printable text");
    return -1;
  }
  return 0;
}

static int enroll_respond(atun_gw *gw, atun_http_response *resp, const enroll_req *er,
                          const uint8_t *der, size_t derlen, atun_tstamp not_after) {
  size_t len;
  char pin[ATUN_SPKI_PIN_HEX_LEN + 1], endpoint[ATUN_HOSTPORT_STRLEN];
  char *client = atun_gw_pem(ATUN_PEM_CERT, der, derlen, &len);
  char *ca = atun_gw_pem(ATUN_PEM_CERT, gw->pki->ca_cert, gw->pki->ca_cert_len, &len);
  cJSON *o = cJSON_CreateObject();
  int rv = -1;
  if (client != NULL && ca != NULL && o != NULL) {
    atun_spki_pin_format_hex(pin, gw->pki->server_pin);
    atun_config_gateway_quic_endpoint(&gw->cfg, endpoint);
    cJSON_AddStringToObject(o, "agent_id", er->agent_id);
    cJSON_AddStringToObject(o, "agent_name", er->agent_name);
    cJSON_AddStringToObject(o, "client_cert_pem", client);
    cJSON_AddStringToObject(o, "ca_cert_pem", ca);
    cJSON_AddStringToObject(o, "quic_endpoint", endpoint);
    cJSON_AddStringToObject(o, "server_spki_sha256", pin);
    add_time(o, "cert_expires_at", not_after);
    rv = atun_http_json_respond(resp, 200, o);
    o = NULL;
  }
  cJSON_Delete(o);
  free(client);
  free(ca);
  return rv;
}

static int enroll_sign(atun_gw *gw, atun_http_response *resp, const enroll_req *er,
                       atun_tstamp wall, uint8_t *der, size_t *derlen, atun_agent_record *rec) {
  atun_ca_settings s;
  atun_cert_profile prof;
  atun_gw_ca_settings(&s, &gw->cfg);
  atun_ca_issuer ca = {gw->pki->ca_cert, gw->pki->ca_cert_len, gw->pki->ca_key,
                       gw->pki->ca_key_len};
  int rv = atun_ca_sign_csr(&s, er->csr_pem, strlen(er->csr_pem), er->agent_name, er->agent_id,
                            &ca, wall, atun_ca_sysrand(), der, ATUN_CA_DER_MAX, derlen, &prof);
  if (rv == ATUN_ERR_MALFORMED || rv == ATUN_ERR_DENIED || rv == ATUN_ERR_FRAME_TOO_LARGE) {
    enroll_fail(gw, resp, ATUN_GW_ENROLL_BAD_REQUEST, 400, "invalid_field",
                rv == ATUN_ERR_DENIED ? "field 'csr_pem' must carry a P-256 key"
                                      : "field 'csr_pem' is not a validly signed CSR");
    return -1;
  }
  memset(rec, 0, sizeof(*rec));
  if (rv == 0) rv = atun_ca_cert_fingerprint(der, *derlen, rec->fingerprint);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "api", "enroll_sign_failed", "error=%s", atun_strerror(rv));
    enroll_fail(gw, resp, ATUN_GW_ENROLL_ERROR, 500, "internal", "signing failed");
    return -1;
  }
  memcpy(rec->id, er->agent_id, strlen(er->agent_id) + 1);
  memcpy(rec->name, er->agent_name, strlen(er->agent_name) + 1);
  memcpy(rec->serial, prof.serial, prof.serial_len);
  rec->serial_len = prof.serial_len;
  rec->cert_not_after = prof.not_after;
  rec->revoked_at = ATUN_TSTAMP_MAX;
  return 0;
}

/* Maps what the store transaction said to a response. */
static int enroll_store_fail(atun_gw *gw, atun_http_response *resp, int rv, const enroll_req *er,
                             const char *peer) {
  atun_log(ATUN_LOG_WARN, "gateway", "enrollment_refused",
           "agent_id=%s agent_name=%s peer=%s reason=%s", er->agent_id, er->agent_name, peer,
           atun_strerror(rv));
  switch (rv) {
    case ATUN_ERR_NOT_FOUND:
    case ATUN_ERR_USED:
    case ATUN_ERR_EXPIRED:
      /* One answer for all three: the caller learns nothing about which
       * tokens exist. */
      return enroll_fail(gw, resp, ATUN_GW_ENROLL_BAD_TOKEN, 401, "invalid_token",
                         "the enrollment token is unknown, used or expired");
    case ATUN_ERR_EXISTS:
      return enroll_fail(gw, resp, ATUN_GW_ENROLL_CONFLICT, 409, "conflict",
                         "an agent with this id or name is already enrolled");
    case ATUN_ERR_FULL:
      return enroll_fail(gw, resp, ATUN_GW_ENROLL_ERROR, 503, "unavailable",
                         "the gateway holds as many agents as it may");
    default:
      ++gw->metrics.enrollments[ATUN_GW_ENROLL_ERROR];
      return fail_store(resp, rv);
  }
}

static int enroll_run(atun_gw *gw, const atun_http_request *req, atun_http_response *resp,
                      const enroll_req *er) {
  char peer[ATUN_ADDR_STRLEN];
  uint8_t *der = malloc(ATUN_CA_DER_MAX);
  size_t derlen;
  atun_agent_record rec;
  atun_token_record tok;
  atun_tstamp wall = atun_gw_wall_now();
  if (der == NULL) return -1;
  peer_text(peer, req);
  int rv = 0;
  if (enroll_sign(gw, resp, er, wall, der, &derlen, &rec) != 0) goto done;
  rv = atun_store_enroll(gw->store, er->token_hash, wall, &rec, "enrollment", &tok);
  if (rv != 0) {
    rv = enroll_store_fail(gw, resp, rv, er, peer);
    goto done;
  }
  ++gw->metrics.enrollments[ATUN_GW_ENROLL_OK];
  atun_log(ATUN_LOG_INFO, "gateway", "agent_enrolled",
           "agent_id=%s agent_name=%s enrollment=%s peer=%s hostname=%s", er->agent_id,
           er->agent_name, tok.id, peer, er->hostname ? er->hostname : "");
  rv = enroll_respond(gw, resp, er, der, derlen, rec.cert_not_after);
done:
  free(der);
  return rv;
}

static int h_enroll(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  enroll_req er;
  cJSON *body;
  memset(&er, 0, sizeof(er));
  int rv = atun_http_json_ratelimit(gw->enroll_limit, req, resp);
  if (rv == ATUN_ERR_WOULDBLOCK) {
    ++gw->metrics.enrollments[ATUN_GW_ENROLL_RATE_LIMITED];
    return 0;
  }
  if (rv != 0) return -1;
  if (enroll_token(gw, req, resp, &er) != 0) return 0;
  rv = atun_http_json_parse_body(req, resp, &body);
  if (rv != 0) {
    ++gw->metrics.enrollments[ATUN_GW_ENROLL_BAD_REQUEST];
    return rv == ATUN_ERR_NOMEM ? -1 : 0;
  }
  rv = enroll_fields(gw, body, resp, &er) == 0 ? enroll_run(gw, req, resp, &er) : 0;
  cJSON_Delete(body);
  return rv;
}

/* --- /metrics, /health/ready ------------------------------------------------------------- */

static int h_metrics(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  const char *who;
  if (authorize(gw, req, resp, ATUN_CONFIG_SCOPE_READ, &who) != 0) return 0;
  atun_gw_text t;
  atun_gw_text_init(&t, METRICS_TEXT_MAX);
  int rv = atun_gw_metrics_render(gw, &t, req->ts);
  if (rv == 0 && !t.failed)
    rv = atun_http_response_set_body(resp, 200, "text/plain; version=0.0.4", t.buf, t.len);
  else
    rv = rv != 0 ? fail_store(resp, rv) : -1;
  atun_gw_text_free(&t);
  return rv;
}

static int h_ready(const atun_http_request *req, atun_http_response *resp, void *ud) {
  atun_gw *gw = ud;
  (void)req;
  if (gw->draining) return fail(resp, 503, "unavailable", "the gateway is shutting down");
  if (gw->quic == NULL) return fail(resp, 503, "unavailable", "the QUIC listener is not up");
  if (atun_store_schema_version(gw->store) < 0)
    return fail(resp, 503, "unavailable", "the store can not be read");
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "status", "ready");
  return atun_http_json_respond(resp, 200, o);
}

/* --- wiring ------------------------------------------------------------------------------------ */

static void access_log(const atun_http_access *e, void *ud) {
  char peer[ATUN_ADDR_STRLEN];
  (void)ud;
  atun_addr_format(peer, e->peer);
  atun_log(e->status >= 500 ? ATUN_LOG_WARN : ATUN_LOG_DEBUG, "api", "api_request",
           "method=%s path=%s status=%d duration_ms=%.3f peer=%s request_bytes=%zu "
           "response_bytes=%zu",
           e->method, e->path, e->status, (double)e->duration_ns / 1e6, peer, e->body_bytes,
           e->response_bytes);
}

typedef struct route_def {
  const char *method, *pattern;
  atun_http_handler handler;
} route_def;

static const route_def routes[] = {
    {"POST", API_PREFIX "/enroll", h_enroll},
    {"POST", API_PREFIX "/tokens", h_token_create},
    {"GET", API_PREFIX "/agents", h_agents_list},
    {"GET", API_PREFIX "/agents/{id}", h_agent_get},
    {"DELETE", API_PREFIX "/agents/{id}", h_agent_delete},
    {"POST", API_PREFIX "/agents/resolve-target", h_resolve},
    {"GET", "/metrics", h_metrics},
    {"GET", "/health/ready", h_ready},
};

int atun_gw_api_init(atun_gw *gw) {
  atun_ratelimit_settings rs;
  atun_ratelimit_settings_default(&rs);
  rs.burst = gw->cfg.limits.enroll_burst;
  rs.interval_ns = gw->cfg.limits.enroll_interval_ns;
  int rv = atun_ratelimit_new(&gw->enroll_limit, &rs, atun_ca_sysrand(), atun_mem_default());
  if (rv == 0) rv = atun_http_router_new(&gw->router, atun_mem_default());
  for (size_t i = 0; rv == 0 && i < sizeof(routes) / sizeof(routes[0]); ++i)
    rv = atun_http_router_add(gw->router, routes[i].method, routes[i].pattern, routes[i].handler,
                              gw);
  if (rv == 0) atun_http_router_set_access_log(gw->router, access_log, gw);
  return rv;
}

/* The chain is the server certificate and the CA: an enrolling agent holds
 * only the CA's pin and finds the CA in the chain. */
static int api_server_new(atun_gw *gw) {
  size_t leaflen, calen, keylen;
  char *leaf = atun_gw_pem(ATUN_PEM_CERT, gw->pki->server_cert, gw->pki->server_cert_len, &leaflen);
  char *ca = atun_gw_pem(ATUN_PEM_CERT, gw->pki->ca_cert, gw->pki->ca_cert_len, &calen);
  char *key = atun_gw_pem(ATUN_PEM_KEY, gw->pki->server_key, gw->pki->server_key_len, &keylen);
  char *chain = leaf && ca ? malloc(leaflen + calen + 1) : NULL;
  int rv = ATUN_ERR_NOMEM;
  if (chain != NULL && key != NULL) {
    memcpy(chain, leaf, leaflen);
    memcpy(chain + leaflen, ca, calen + 1);
    atun_https_settings hs;
    atun_https_settings_default(&hs);
    hs.connections_max = gw->cfg.limits.api_max_connections;
    hs.http.body_bytes_max = gw->cfg.limits.api_max_request_bytes;
    hs.http.header_timeout_ns = gw->cfg.limits.api_header_timeout_ns;
    rv = atun_https_server_new(&gw->https, gw->loop, &hs, gw->router, chain, leaflen + calen, key,
                               keylen, atun_mem_default());
  }
  if (key != NULL) memset(key, 0, keylen);
  free(leaf);
  free(ca);
  free(key);
  free(chain);
  return rv;
}

int atun_gw_api_start(atun_gw *gw) {
  char addr[ATUN_ADDR_STRLEN];
  int rv = api_server_new(gw);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "api", "api_start_failed", "error=%s", atun_strerror(rv));
    return rv;
  }
  atun_addr_format(addr, &gw->cfg.api_listen.addr);
  rv = atun_https_server_listen(gw->https, addr, gw->cfg.api_listen.port, &gw->api_port);
  if (rv != 0) {
    atun_log(ATUN_LOG_ERROR, "api", "api_listen_failed", "address=%s port=%u error=%s", addr,
             (unsigned)gw->cfg.api_listen.port, atun_strerror(rv));
    atun_https_server_del(gw->https);
    gw->https = NULL;
    return rv;
  }
  atun_log(ATUN_LOG_INFO, "api", "api_listening", "address=%s port=%u", addr,
           (unsigned)gw->api_port);
  return 0;
}

void atun_gw_api_stop(atun_gw *gw) {
  if (gw->https != NULL) atun_https_server_stop(gw->https);
}

void atun_gw_api_free(atun_gw *gw) {
  atun_https_server_del(gw->https);
  atun_http_router_del(gw->router);
  atun_ratelimit_del(gw->enroll_limit);
  gw->https = NULL;
  gw->router = NULL;
  gw->enroll_limit = NULL;
}
