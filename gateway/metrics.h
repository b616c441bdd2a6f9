/*
 * Counters of the running gateway and their Prometheus text rendering
 * (GET /metrics).  Gauges (agents by status, streams, connections) are read
 * from the registry, the store and the listeners at scrape time; only
 * events are counted here.
 */
#ifndef ATUN_GW_METRICS_H
#define ATUN_GW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "quic.h"

/* Handshake failure reasons are indexed by atun_quic_hs_failure; index 0
 * (ATUN_QUIC_HS_OK) counts connections that ended before admission
 * without a TLS verdict ("other"). */
#define ATUN_GW_HS_REASONS (ATUN_QUIC_HS_TLS + 1)

typedef enum atun_gw_enroll_result {
  ATUN_GW_ENROLL_OK = 0,
  ATUN_GW_ENROLL_BAD_REQUEST,   /* invalid JSON, field or CSR */
  ATUN_GW_ENROLL_BAD_TOKEN,     /* missing, unknown, used or expired token */
  ATUN_GW_ENROLL_CONFLICT,      /* id or name already enrolled */
  ATUN_GW_ENROLL_RATE_LIMITED,
  ATUN_GW_ENROLL_ERROR,         /* store or CA failure */
  ATUN_GW_ENROLL_RESULTS
} atun_gw_enroll_result;

/* "ok", "bad_request", ... */
const char *atun_gw_enroll_result_name(int result);

typedef enum atun_gw_renew_result {
  ATUN_GW_RENEW_OK = 0,
  ATUN_GW_RENEW_REFUSED, /* bad CSR, revoked, unknown */
  ATUN_GW_RENEW_ERROR,
  ATUN_GW_RENEW_RESULTS
} atun_gw_renew_result;

typedef struct atun_gw_metrics {
  uint64_t hs_failures[ATUN_GW_HS_REASONS];
  uint64_t enrollments[ATUN_GW_ENROLL_RESULTS];
  uint64_t agent_renewals[ATUN_GW_RENEW_RESULTS];
  uint64_t server_renewals;
  uint64_t connections_admitted;
  uint64_t connections_replaced;
  uint64_t revocations;
  uint64_t tokens_issued;
} atun_gw_metrics;

/* A growable text buffer with a bound. */
typedef struct atun_gw_text {
  char *buf;
  size_t len, cap, max;
  int failed; /* an append did not fit or memory ran out */
} atun_gw_text;

void atun_gw_text_init(atun_gw_text *t, size_t max);
void atun_gw_text_free(atun_gw_text *t);
__attribute__((format(printf, 2, 3)))
void atun_gw_text_printf(atun_gw_text *t, const char *fmt, ...);

#endif /* ATUN_GW_METRICS_H */
