/*
 * tool_many_agents: N agents in one process, on one libev loop, for the
 * control-plane integration tests.  Each agent is an atun_session_agent
 * driven over its own io/quic_ev client endpoint (its own UDP socket) with
 * its own enrolled certificate, as atun-agent would, minus the data plane.
 *
 *   tool_many_agents --manifest FILE --ca CA_CRT --pin HEX --port PORT
 *                    [--duration S] [--alpn ALPN] [--once]
 *
 * FILE holds one agent a line: "CERT_PEM KEY_PEM".  The gateway is
 * 127.0.0.1:PORT.  The agents run for S seconds (default 10), then the tool
 * prints one line
 *
 *   agents=N established=E connects=C establishments=K refusals=R
 *
 * (E: established at the end; K: HelloAcks seen in all; C: dial attempts)
 * and exits 0 if every agent is established and none had to establish
 * twice, else 1.  SIGTERM or SIGINT end the run early, same summary.  With --once each agent dials once and the tool ends when
 * every connection ended, printing "closed reason=..." per agent and
 * exiting 0 if none was ever established (the refusal tests).  --alpn
 * offers another ALPN than atun/2.
 */
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ca.h"
#include "quic_ev.h"
#include "session_agent.h"

#define AGENTS_MAX 1024
#define LINE_MAX_LEN 4096
#define CRED_MAX ATUN_CA_PEM_MAX
#define PUMP_CHUNK 4096

typedef struct run run;

typedef struct agent {
  run *r;
  atun_quic_tls *tls;
  atun_quic_ev *ep;
  atun_quic_conn *conn;
  atun_session_agent *s;
  ev_timer timer;
  int64_t ctrl;
  int dial_pending, in_cb, close_sent, established, finished;
  unsigned connects, establishments;
} agent;

struct run {
  struct ev_loop *loop;
  atun_quic_endpoint gw;
  agent *agents;
  size_t n;
  int once;
  size_t finished;
  unsigned refusals;
};

static atun_tstamp now(void) { return atun_quic_ev_now(NULL); }

static void service(agent *a);

static void dial(agent *a) {
  a->dial_pending = 0;
  if (a->conn != NULL) {
    atun_quic_ev_abort(a->conn);
    a->conn = NULL;
  }
  a->ctrl = -1;
  a->close_sent = 0;
  ++a->connects;
  if (atun_quic_ev_connect(a->ep, &a->r->gw, &a->conn) != 0) {
    a->conn = NULL;
    atun_session_agent_on_transport_failed(a->s, now());
  }
}

static void pump(agent *a) {
  uint8_t buf[PUMP_CHUNK];
  while (a->conn != NULL && a->ctrl >= 0 && atun_session_agent_pending(a->s) > 0) {
    ssize_t room = atun_quic_stream_writable(a->conn, a->ctrl);
    if (room <= 0) return;
    size_t want = (size_t)room < sizeof(buf) ? (size_t)room : sizeof(buf);
    ssize_t n = atun_session_agent_write(a->s, buf, want);
    if (n <= 0 || atun_quic_stream_write(a->conn, a->ctrl, buf, (size_t)n, 0) != n) return;
  }
}

static void arm(agent *a) {
  ev_timer_stop(a->r->loop, &a->timer);
  atun_tstamp exp = atun_session_agent_get_expiry(a->s);
  if (exp == ATUN_TSTAMP_MAX || a->finished) return;
  atun_tstamp t = now();
  ev_timer_set(&a->timer, exp > t ? (double)(exp - t) / (double)ATUN_NS_PER_S : 0., 0.);
  ev_timer_start(a->r->loop, &a->timer);
}

static void service(agent *a) {
  uint64_t app_error;
  if (a->dial_pending && a->in_cb == 0 && !a->finished) dial(a);
  pump(a);
  if (a->conn != NULL && !a->close_sent && atun_session_agent_want_close(a->s, &app_error)) {
    a->close_sent = 1;
    atun_quic_ev_close(a->conn, app_error, atun_app_error_name(app_error));
  }
  if (a->conn != NULL) atun_quic_ev_flush(a->conn);
  arm(a);
}

static int on_session_event(atun_session_agent *s, const atun_session_agent_event *ev,
                            void *ud) {
  agent *a = ud;
  (void)s;
  if (ev->type == ATUN_SESSION_AGENT_EV_CONNECT_NOW) a->dial_pending = 1;
  if (ev->type == ATUN_SESSION_AGENT_EV_ESTABLISHED) {
    a->established = 1;
    ++a->establishments;
  }
  if (ev->type == ATUN_SESSION_AGENT_EV_STATE &&
      ev->u.state.old_state == ATUN_SESSION_AGENT_ESTABLISHED)
    a->established = 0;
  return 0;
}

static int after(agent *a, int rv) {
  if (rv != 0) return -1;
  ++a->in_cb;
  service(a);
  --a->in_cb;
  return 0;
}

static int on_handshake(atun_quic_conn *conn, void *ud) {
  agent *a = ud;
  if (conn != a->conn || atun_quic_stream_open(conn, &a->ctrl, NULL) != 0) return -1;
  return after(a, atun_session_agent_on_transport_connected(a->s, now()));
}

static int on_stream_data(atun_quic_conn *conn, int64_t id, const uint8_t *data, size_t len,
                          int fin, void *ud, void *sud) {
  agent *a = ud;
  (void)sud;
  atun_quic_stream_consume(conn, id, len);
  if (conn != a->conn || id != a->ctrl) return 0;
  int rv = len > 0 ? atun_session_agent_on_data(a->s, now(), data, len) : 0;
  if (rv == 0 && fin) rv = atun_session_agent_on_stream_closed(a->s, now());
  return after(a, rv);
}

static int on_stream_acked(atun_quic_conn *conn, int64_t id, size_t n, void *ud, void *sud) {
  agent *a = ud;
  (void)conn, (void)id, (void)n, (void)sud;
  return after(a, 0);
}

static void on_connection_closed(atun_quic_conn *conn, const atun_quic_close_info *info,
                                 void *ud) {
  agent *a = ud;
  if (conn != a->conn) return;
  if (info->hs_failure != ATUN_QUIC_HS_OK || !a->established) ++a->r->refusals;
  if (a->r->once && !a->finished) {
    a->finished = 1;
    ++a->r->finished;
    printf("closed reason=%s app=%d code=0x%llx\n", atun_quic_hs_failure_name(info->hs_failure),
           info->app, (unsigned long long)info->error_code);
    if (a->r->finished == a->r->n) ev_break(a->r->loop, EVBREAK_ALL);
  }
  a->ctrl = -1;
  ++a->in_cb;
  atun_session_agent_on_transport_failed(a->s, now());
  service(a);
  --a->in_cb;
}

static void on_closed_hook(atun_quic_ev *ep, atun_quic_conn *conn, void *cud, void *eud) {
  agent *a = eud;
  (void)ep, (void)cud;
  if (conn == a->conn) a->conn = NULL;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
  agent *a = w->data;
  (void)loop, (void)revents;
  atun_session_agent_handle_expiry(a->s, now());
  service(a);
}

static void on_end(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)w, (void)revents;
  ev_break(loop, EVBREAK_ALL);
}

/* SIGTERM or SIGINT end the run early, with the summary as usual. */
static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)w, (void)revents;
  ev_break(loop, EVBREAK_ALL);
}

static int slurp(const char *path, uint8_t *buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -1;
  *len = fread(buf, 1, CRED_MAX, f);
  int bad = ferror(f) || *len == CRED_MAX;
  fclose(f);
  return bad ? -1 : 0;
}

static int hex_pin(const char *hex, uint8_t out[ATUN_QUIC_SHA256_LEN]) {
  if (strlen(hex) != 2 * ATUN_QUIC_SHA256_LEN) return -1;
  for (size_t i = 0; i < ATUN_QUIC_SHA256_LEN; ++i) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  return 0;
}

typedef struct opts {
  const char *manifest, *ca, *pin, *alpn;
  unsigned port;
  double duration;
  int once;
} opts;

static const atun_quic_callbacks callbacks = {
    .handshake_completed = on_handshake,
    .stream_data = on_stream_data,
    .stream_acked = on_stream_acked,
    .connection_closed = on_connection_closed,
};

static int agent_init(agent *a, run *r, const opts *o, const uint8_t *ca, size_t ca_len,
                      const uint8_t *pin, const char *cert_path, const char *key_path) {
  static uint8_t cert[CRED_MAX], key[CRED_MAX];
  size_t cert_len, key_len;
  if (slurp(cert_path, cert, &cert_len) != 0 || slurp(key_path, key, &key_len) != 0) {
    fprintf(stderr, "cannot read %s or %s\n", cert_path, key_path);
    return -1;
  }
  a->r = r;
  a->ctrl = -1;
  atun_quic_tls_config tc = {.ca = ca, .ca_len = ca_len, .cert = cert, .cert_len = cert_len,
                             .key = key, .key_len = key_len, .server_spki_sha256 = pin,
                             .alpn = o->alpn};
  const atun_mem *mem = atun_mem_default();
  if (atun_quic_tls_new(&a->tls, ATUN_QUIC_CLIENT, &tc, mem) != 0) {
    fprintf(stderr, "TLS context refused %s\n", cert_path);
    return -1;
  }
  atun_quic_ev_settings es;
  atun_quic_ev_settings_default(&es);
  atun_quic_conn_config cc = {.tls = a->tls, .callbacks = &callbacks, .user_data = a,
                              .mem = mem, .rand = *atun_ca_sysrand()};
  atun_quic_ev_hooks hooks = {.on_closed = on_closed_hook};
  atun_session_agent_settings ss;
  atun_session_agent_settings_default(&ss);
  if (atun_quic_ev_client_new(&a->ep, r->loop, &es, &cc, &hooks, a) != 0 ||
      atun_session_agent_new(&a->s, &ss, on_session_event, atun_ca_sysrand(), mem, a) != 0) {
    fprintf(stderr, "out of memory\n");
    return -1;
  }
  ev_timer_init(&a->timer, on_timer, 0., 0.);
  a->timer.data = a;
  return 0;
}

static int parse(int argc, char **argv, opts *o) {
  static const struct option lo[] = {
      {"manifest", 1, NULL, 'm'}, {"ca", 1, NULL, 'c'}, {"pin", 1, NULL, 'p'},
      {"port", 1, NULL, 'P'}, {"duration", 1, NULL, 'd'}, {"alpn", 1, NULL, 'a'},
      {"once", 0, NULL, 'o'}, {NULL, 0, NULL, 0}};
  memset(o, 0, sizeof(*o));
  o->duration = 10;
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    switch (c) {
    case 'm': o->manifest = optarg; break;
    case 'c': o->ca = optarg; break;
    case 'p': o->pin = optarg; break;
    case 'P': o->port = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'd': o->duration = strtod(optarg, NULL); break;
    case 'a': o->alpn = optarg; break;
    case 'o': o->once = 1; break;
    default: return -1;
    }
  }
  return o->manifest && o->ca && o->pin && o->port > 0 && o->port < 65536 ? 0 : -1;
}

static int load(run *r, const opts *o) {
  static uint8_t ca[CRED_MAX];
  uint8_t pin[ATUN_QUIC_SHA256_LEN];
  size_t ca_len;
  if (slurp(o->ca, ca, &ca_len) != 0 || hex_pin(o->pin, pin) != 0) {
    fprintf(stderr, "bad --ca or --pin\n");
    return -1;
  }
  FILE *f = fopen(o->manifest, "r");
  if (f == NULL) return -1;
  char line[LINE_MAX_LEN], cert[LINE_MAX_LEN], key[LINE_MAX_LEN];
  int rv = 0;
  while (rv == 0 && fgets(line, sizeof(line), f) != NULL) {
    if (sscanf(line, "%4095s %4095s", cert, key) != 2) continue;
    if (r->n == AGENTS_MAX) {
      fprintf(stderr, "more than %d agents\n", AGENTS_MAX);
      rv = -1;
      break;
    }
    rv = agent_init(&r->agents[r->n], r, o, ca, ca_len, pin, cert, key);
    ++r->n;
  }
  fclose(f);
  return rv;
}

static void cleanup(run *r) {
  for (size_t i = 0; i < r->n; ++i) {
    agent *a = &r->agents[i];
    ev_timer_stop(r->loop, &a->timer);
    atun_quic_ev_del(a->ep);
    atun_session_agent_del(a->s);
    atun_quic_tls_del(a->tls);
  }
  free(r->agents);
}

int main(int argc, char **argv) {
  opts o;
  run r = {0};
  if (parse(argc, argv, &o) != 0) {
    fprintf(stderr, "usage: %s --manifest F --ca CRT --pin HEX --port P [--duration S] "
                    "[--alpn A] [--once]\n", argv[0]);
    return 2;
  }
  r.loop = ev_default_loop(0);
  r.once = o.once;
  r.gw.port = (uint16_t)o.port;
  atun_addr_parse(&r.gw.addr, "127.0.0.1");
  r.agents = calloc(AGENTS_MAX, sizeof(agent));
  if (r.agents == NULL || load(&r, &o) != 0 || r.n == 0) {
    cleanup(&r);
    return 2;
  }
  for (size_t i = 0; i < r.n; ++i) {
    atun_session_agent_start(r.agents[i].s, now());
    service(&r.agents[i]);
  }
  ev_timer end;
  ev_timer_init(&end, on_end, o.duration, 0.);
  ev_timer_start(r.loop, &end);
  ev_signal sigterm, sigint;
  ev_signal_init(&sigterm, on_signal, SIGTERM);
  ev_signal_init(&sigint, on_signal, SIGINT);
  ev_signal_start(r.loop, &sigterm);
  ev_signal_start(r.loop, &sigint);
  ev_run(r.loop, 0);
  size_t est = 0;
  unsigned connects = 0, establishments = 0;
  for (size_t i = 0; i < r.n; ++i) {
    est += r.agents[i].established != 0;
    connects += r.agents[i].connects;
    establishments += r.agents[i].establishments;
  }
  printf("agents=%zu established=%zu connects=%u establishments=%u refusals=%u\n", r.n, est,
         connects, establishments, r.refusals);
  int ok = o.once ? r.finished == r.n && establishments == 0
                  : est == r.n && establishments == r.n;
  cleanup(&r);
  return ok ? 0 : 1;
}
