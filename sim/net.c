#include "net.h"

#include <string.h>

typedef struct packet {
  uint32_t from, to;
  uint32_t len;
  uint8_t bytes[];
} packet;

sim_link_params sim_link_params_default(void) {
  sim_link_params p = {0};
  p.delay_ns = 10 * ATUN_NS_PER_MS;
  p.mtu = 1500;
  p.queue_bytes_max = 1u << 20;
  p.up = 1;
  return p;
}

int sim_net_init(sim_net *net, const atun_mem *mem, sim_evq *evq, atun_testrng *rng,
                 uint32_t nnodes, const sim_link_params *p, sim_deliver_fn deliver,
                 void *user_data) {
  memset(net, 0, sizeof(*net));
  net->mem = mem;
  net->evq = evq;
  net->rng = rng;
  net->nnodes = nnodes;
  net->deliver = deliver;
  net->user_data = user_data;
  net->in_flight_max = 1u << 20;
  net->up = atun_mem_calloc(mem, nnodes, sizeof(sim_link));
  net->down = atun_mem_calloc(mem, nnodes, sizeof(sim_link));
  if (net->up == NULL || net->down == NULL) {
    sim_net_free(net);
    return ATUN_ERR_NOMEM;
  }
  for (uint32_t i = 0; i < nnodes; ++i) net->up[i].p = net->down[i].p = *p;
  return 0;
}

void sim_net_free(sim_net *net) {
  atun_mem_free(net->mem, net->up);
  atun_mem_free(net->mem, net->down);
  net->up = net->down = NULL;
}

sim_link *sim_net_link(sim_net *net, uint32_t from, uint32_t to) {
  if (from == to || from >= net->nnodes || to >= net->nnodes) return NULL;
  if (to == 0) return &net->up[from];
  if (from == 0) return &net->down[to];
  return NULL;
}

static int chance(sim_net *net, uint32_t ppm) {
  return ppm != 0 && atun_testrng_below(net->rng, SIM_PPM) < ppm;
}

static int schedule(sim_net *net, sim_link *l, uint32_t from, uint32_t to,
                    const uint8_t *data, size_t len, atun_tstamp depart, int corrupt) {
  if (net->in_flight == net->in_flight_max) return ATUN_ERR_FULL;
  packet *pk = atun_mem_malloc(net->mem, sizeof(packet) + len);
  if (pk == NULL) return ATUN_ERR_NOMEM;
  pk->from = from;
  pk->to = to;
  pk->len = (uint32_t)len;
  memcpy(pk->bytes, data, len);
  if (corrupt && len > 0) {
    uint64_t bit = atun_testrng_below(net->rng, (uint64_t)len * 8);
    pk->bytes[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    ++net->stats.corrupted;
  }
  atun_tstamp jitter = l->p.jitter_ns ? atun_testrng_below(net->rng, l->p.jitter_ns + 1) : 0;
  int rv = sim_evq_push(net->evq, depart + l->p.delay_ns + jitter, SIM_EV_DELIVER, to, pk);
  if (rv != 0) {
    atun_mem_free(net->mem, pk);
    return rv;
  }
  ++net->in_flight;
  l->queued_bytes += (uint32_t)len;
  return 0;
}

/* The bandwidth model: a datagram leaves when the link has finished sending
 * the ones before it; the queue in front of the link holds a bounded number of
 * bytes. */
static atun_tstamp departure(sim_link *l, size_t len, atun_tstamp now) {
  /* A clogged link holds datagrams (unlike a partition, which drops them)
   * and lets them go, in order, when it clears. */
  if (l->clog_until > now) now = l->clog_until;
  if (l->p.bandwidth_bps == 0) return now;
  atun_tstamp start = l->busy_until > now ? l->busy_until : now;
  l->busy_until = start + (atun_tstamp)len * 8 * ATUN_NS_PER_S / l->p.bandwidth_bps;
  return l->busy_until;
}

int sim_net_send(sim_net *net, uint32_t from, uint32_t to, const uint8_t *data,
                 size_t len, atun_tstamp now) {
  sim_link *l = sim_net_link(net, from, to);
  if (l == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  ++net->stats.sent;
  if (!l->p.up) return (void)++net->stats.drop_down, 0;
  if (len > l->p.mtu) return (void)++net->stats.drop_mtu, 0;
  if (l->queued_bytes + len > l->p.queue_bytes_max) return (void)++net->stats.drop_queue, 0;
  if (chance(net, l->p.loss_ppm)) return (void)++net->stats.drop_loss, 0;
  atun_tstamp depart = departure(l, len, now);
  int rv = schedule(net, l, from, to, data, len, depart, chance(net, l->p.corrupt_ppm));
  if (rv != 0 || !chance(net, l->p.dup_ppm)) return rv;
  ++net->stats.dup;
  return schedule(net, l, from, to, data, len, depart, 0);
}

static packet *take(sim_net *net, const sim_event *ev) {
  packet *pk = ev->data;
  sim_link *l = sim_net_link(net, pk->from, pk->to);
  ATUN_ASSERT(l != NULL && l->queued_bytes >= pk->len && net->in_flight > 0);
  l->queued_bytes -= pk->len;
  --net->in_flight;
  return pk;
}

void sim_net_on_event(sim_net *net, const sim_event *ev) {
  packet *pk = take(net, ev);
  ++net->stats.delivered;
  net->stats.bytes_delivered += pk->len;
  net->deliver(pk->to, pk->from, pk->bytes, pk->len, ev->at, net->user_data);
  atun_mem_free(net->mem, pk);
}

void sim_net_drop_event(sim_net *net, const sim_event *ev) {
  atun_mem_free(net->mem, take(net, ev));
}
