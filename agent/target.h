/*
 * The agent's data plane (SPEC section 3, 7): every stream the gateway opens
 * is one proxied TCP connection.
 *
 * Per stream: read exactly one ConnectRequest (a frame reader bounded by
 * ATUN_SESSION_PAYLOAD_MAX; a malformed header resets the stream with the
 * codec's application error), check the target with core/policy before
 * anything else, resolve a host name with io/dns (every answer checked
 * again), connect with io/tcp trying the addresses in order under one
 * deadline (the config's connect_timeout), answer ConnectResponse with the
 * exact status, and on ok hand the socket and the stream to io/pipe.  Bytes
 * the gateway sent behind the header are held (at most ATUN_PIPE_EARLY_MAX,
 * not consumed, so QUIC credit stays honest) and go to the target first.
 *
 * Lifetime.  A gateway reset cancels the query, the connect or the pipe (the
 * target gets a RST).  The QUIC connection's end aborts every record of it
 * (agent_dp_conn_gone()).  A record is freed once nothing of it runs any
 * more; the stream's user data is cleared then, and later bytes of the
 * stream are consumed by the owner and dropped.
 *
 * Bound: at most |sessions_max| records at once; a stream beyond it is
 * answered ConnectResponse internal "overloaded" at once.
 *
 * Flushing.  The stream calls made from the loop (DNS and connect
 * outcomes, pipe events) are flushed with atun_quic_ev_flush() as the last
 * step, after which nothing of the record is touched: a flush may find the
 * connection dead and make the owner call agent_dp_conn_gone().
 */
#ifndef ATUN_AGENT_TARGET_H
#define ATUN_AGENT_TARGET_H

#include <ev.h>

#include "config.h"
#include "quic.h"

/* Records at once when the config names no bound (it has no key for it);
 * the gateway's default max_streams_per_agent. */
#define AGENT_DP_SESSIONS_MAX 1024

typedef struct agent_dp agent_dp;

/* The number of records changed to |count| (for Heartbeats). */
typedef void (*agent_dp_count_cb)(size_t count, void *user_data);

/* Creates the data plane on |loop| with a resolver reading |resolv_conf|
 * (the config's, so the names resolve as the domains were detected; NULL:
 * the system's), no routes (everything denied) and |sessions_max| records
 * (1..65536).  A resolver that can not start is logged and host names are
 * then answered dns_failure.  Returns 0, ATUN_ERR_INVALID_ARGUMENT or
 * ATUN_ERR_NOMEM. */
int agent_dp_new(agent_dp **pdp, struct ev_loop *loop, size_t sessions_max,
                 const char *resolv_conf, agent_dp_count_cb on_count,
                 void *user_data);

/* Aborts every record and frees |dp| (NULL allowed). */
void agent_dp_del(agent_dp *dp);

/* Takes the policy of |cfg| (deny list, connect timeout) and the routes
 * advertised: |subnets| / |domains|.  All or nothing: on error the old
 * policy stays.  Returns 0 or an error of atun_policy_new() /
 * atun_policy_set_routes(). */
int agent_dp_configure(agent_dp *dp, const atun_config_agent *cfg,
                       const atun_prefix *subnets, size_t nsubnets,
                       const atun_domain *domains, size_t ndomains);

/* Stream callbacks of |conn|, for every stream but the control stream.
 * |sud| is the stream user data.  stream_data consumes what the data plane
 * does not keep; with |sud| NULL (no record) the owner consumes all. */
void agent_dp_on_stream_open(agent_dp *dp, atun_quic_conn *conn, int64_t id);
void agent_dp_on_stream_data(agent_dp *dp, atun_quic_conn *conn, int64_t id,
                             const uint8_t *data, size_t len, int fin, void *sud);
void agent_dp_on_stream_reset(agent_dp *dp, uint64_t app_error, void *sud);
void agent_dp_on_stream_closed(agent_dp *dp, int has_error, uint64_t app_error,
                               void *sud);

/* Some stream of |conn| (the control stream included) got acked: the
 * connection's send buffer has room again for the pipes waiting for it. */
void agent_dp_on_acked(agent_dp *dp, const atun_quic_conn *conn);

/* |conn| is closed or deleted: every record of it ends without a stream
 * call (targets get a RST).  |dp| NULL is a no-op. */
void agent_dp_conn_gone(agent_dp *dp, const atun_quic_conn *conn);

/* Records now. */
size_t agent_dp_count(const agent_dp *dp);

#endif /* ATUN_AGENT_TARGET_H */
