/*
 * The client side of the gateway's data plane: the SOCKS5 listener, the
 * static forwards, and one session stream per client connection.
 *
 * A client goes HANDSHAKE (SOCKS5 only) -> CONNECTING (a session stream to
 * one candidate agent at a time, ConnectRequest out, ConnectResponse in)
 * -> PIPING (io/pipe between the socket and the stream) -> freed.
 * Decisions taken inside a QUIC callback (a failure status, a reset, a
 * dead connection) are carried out from the client's own timer, so the
 * next candidate is tried from the loop and never from inside another
 * connection's callback.
 *
 * No candidate at all: SOCKS reply 0x04 (host unreachable) at once.  0x02
 * (not allowed) stays reserved for an agent's explicit refusal, so a client
 * can tell "nobody can reach it" from "forbidden".
 */
#ifndef ATUN_GW_SOCKS_H
#define ATUN_GW_SOCKS_H

#include "gw.h"
#include "tcp.h"

/* Candidates tried per client connection. */
#define ATUN_GW_CANDIDATES_MAX 8
/* From stream open to ConnectResponse; the agent's own connect timeout is
 * shorter, so this only catches an agent that never answers. */
#define ATUN_GW_CONNECT_RESPONSE_TIMEOUT_NS ((uint64_t)30 * ATUN_NS_PER_S)
/* Client bytes read at once during the SOCKS5 handshake; what follows the
 * CONNECT request in that read becomes early data of the pipe. */
#define ATUN_GW_HANDSHAKE_READ_MAX 2048
/* Free send room an ack must leave before a pipe waiting for room is
 * woken (one per this much, at most one full read each). */
#define ATUN_GW_WAKE_ROOM_MIN ((size_t)16384)

/* Starts the SOCKS5 listener (when enabled) and every forward.  A listener
 * that can not bind is logged (client_listen_failed) and skipped.  Returns
 * 0 or ATUN_ERR_NOMEM / what atun_socks5_server_new returns. */
int atun_gw_dataplane_start(atun_gw *gw);

/* SIGHUP: takes the SOCKS5 users, the SOCKS5 listener and the forwards of
 * |cfg|, which the listeners copy (|cfg| need not outlive the call).  A
 * listener on an address |cfg| still names keeps its socket; one |cfg| no
 * longer names stops accepting while its clients go on; a new one that can
 * not bind is logged (client_listen_failed) and skipped, as is one that
 * failed before (it is tried again).  Not while draining: new listeners
 * would accept.  Returns 0 or ATUN_ERR_NOMEM / what atun_socks5_server_new
 * returns; on an error from the users nothing changed. */
int atun_gw_dataplane_reload(atun_gw *gw, const atun_config_gateway *cfg);

/* One client listener, for the status file. */
typedef struct atun_gw_listener_info {
  const atun_config_forward *fwd; /* NULL: SOCKS5; valid until a reload */
  atun_tcp_endpoint listen;       /* bound address and port */
  size_t clients;                 /* connections accepted and still open */
} atun_gw_listener_info;

/* Fills |out| with up to |max| listeners that accept now.  Returns how many
 * there are (may exceed |max|). */
size_t atun_gw_dataplane_listeners(const atun_gw *gw, atun_gw_listener_info *out, size_t max);

/* Closes every listener and client connection (NULL parts allowed). */
void atun_gw_dataplane_stop(atun_gw *gw);

/* Stops accepting clients (drain): the listening sockets close, so a new
 * client is refused at once rather than left in the kernel's backlog;
 * clients already there go on. */
void atun_gw_dataplane_pause(atun_gw *gw);

/* Stream events of a session stream, from agents.c. */
void atun_gw_client_on_stream_data(atun_gw_client *cl, const uint8_t *data, size_t len,
                                   int fin);
void atun_gw_client_on_stream_reset(atun_gw_client *cl, uint64_t app_error);
void atun_gw_client_on_stream_closed(atun_gw_client *cl, int has_error, uint64_t app_error);

/* The connection's send buffer has room again: wakes its waiting pipes. */
void atun_gw_streams_on_writable(atun_gw_streams *streams);

/* The agent connection of |streams| is gone: every pipe on it is aborted
 * (client socket reset), every client still connecting moves on to its
 * next candidate. */
void atun_gw_streams_conn_gone(atun_gw *gw, atun_gw_streams *streams);

#endif /* ATUN_GW_SOCKS_H */
