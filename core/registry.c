#include "registry.h"

#include <string.h>

/*
 * Layout.
 *
 * Records live in one array indexed by slot (the route-table handle).  The
 * array grows by doubling up to max_agents; slots of forgotten records go on
 * a free list and are reused.  An open-addressing index (linear probing,
 * backward-shift deletion) maps ids to slots.
 *
 * An indexed binary min-heap orders the agents not yet reported offline by
 * their deadline (last_seen + timeout), which gives get_expiry in O(1) and
 * heartbeats in O(log n).
 */

#define NO_SLOT UINT32_MAX
#define SLOTS_INITIAL 16

typedef struct agent_rec {
  uint8_t id[ATUN_REGISTRY_ID_LEN];
  char name[ATUN_REGISTRY_NAME_MAX + 1];
  uint8_t in_use;
  uint8_t connected;
  uint8_t revoked;
  uint8_t has_epoch;
  uint64_t epoch;
  uint64_t generation; /* 0 when not connected */
  atun_tstamp last_seen;
  uint64_t rtt_ns;
  uint32_t active_streams;
  uint32_t heap_pos; /* NO_SLOT when not waiting for a timeout */
  uint32_t next_free;
} agent_rec;

struct atun_registry {
  const atun_mem *mem;
  atun_registry_settings settings;
  atun_registry_callbacks callbacks;
  void *user_data;
  uint64_t timeout_ns;
  atun_route_table *routes;
  agent_rec *recs;
  uint32_t cap;   /* slots allocated */
  uint32_t nrecs; /* slots ever used (in use or free-listed) */
  uint32_t count; /* records in use */
  uint32_t free_head;
  uint32_t *index; /* slot + 1, 0 = empty */
  uint32_t index_cap;
  uint32_t *heap;
  uint32_t heap_len;
  uint64_t next_generation;
};

void atun_registry_settings_default(atun_registry_settings *settings) {
  settings->max_agents = 4096;
  settings->heartbeat_interval_ns = 10 * ATUN_NS_PER_S;
  settings->missed_heartbeats_max = 3;
  atun_route_settings_default(&settings->route);
  settings->route.max_agents = settings->max_agents;
}

const char *atun_agent_status_name(int status) {
  switch (status) {
  case ATUN_AGENT_ONLINE:
    return "online";
  case ATUN_AGENT_OFFLINE:
    return "offline";
  case ATUN_AGENT_REVOKED:
    return "revoked";
  default:
    return "unknown";
  }
}

/* --- id index ------------------------------------------------------------- */

static uint32_t id_hash(const uint8_t *id) {
  uint64_t a, b;
  memcpy(&a, id, 8);
  memcpy(&b, id + 8, 8);
  uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ULL)) * 0xff51afd7ed558ccdULL;
  return (uint32_t)(h ^ (h >> 32));
}

static uint32_t index_home(const atun_registry *reg, uint32_t slot) {
  return id_hash(reg->recs[slot].id) & (reg->index_cap - 1);
}

/* Returns the index position holding |id|, or the empty one where it would
 * go. */
static uint32_t index_probe(const atun_registry *reg, const uint8_t *id) {
  uint32_t mask = reg->index_cap - 1;
  uint32_t i = id_hash(id) & mask;
  while (reg->index[i] != 0 &&
         memcmp(reg->recs[reg->index[i] - 1].id, id, ATUN_REGISTRY_ID_LEN) != 0)
    i = (i + 1) & mask;
  return i;
}

static uint32_t find_slot(const atun_registry *reg, const uint8_t *id) {
  uint32_t v = reg->index[index_probe(reg, id)];
  return v == 0 ? NO_SLOT : v - 1;
}

static void index_insert(atun_registry *reg, uint32_t slot) {
  reg->index[index_probe(reg, reg->recs[slot].id)] = slot + 1;
}

/* Backward-shift deletion: pull later members of the probe run into the hole
 * when their home position allows it, so lookups need no tombstones. */
static void index_delete(atun_registry *reg, uint32_t slot) {
  uint32_t mask = reg->index_cap - 1;
  uint32_t hole = index_probe(reg, reg->recs[slot].id);
  uint32_t j = hole;
  for (;;) {
    j = (j + 1) & mask;
    if (reg->index[j] == 0) break;
    uint32_t home = index_home(reg, reg->index[j] - 1);
    /* Move j into the hole unless its home lies cyclically in (hole, j]. */
    int stays =
        hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (stays) continue;
    reg->index[hole] = reg->index[j];
    hole = j;
  }
  reg->index[hole] = 0;
}

/* --- expiry heap ---------------------------------------------------------- */

static atun_tstamp deadline(const atun_registry *reg, const agent_rec *r) {
  if (r->last_seen == ATUN_TSTAMP_MAX) return ATUN_TSTAMP_MAX;
  if (r->last_seen > ATUN_TSTAMP_MAX - reg->timeout_ns) return ATUN_TSTAMP_MAX;
  return r->last_seen + reg->timeout_ns;
}

static int heap_less(const atun_registry *reg, uint32_t i, uint32_t j) {
  return deadline(reg, &reg->recs[reg->heap[i]]) <
         deadline(reg, &reg->recs[reg->heap[j]]);
}

static void heap_swap(atun_registry *reg, uint32_t i, uint32_t j) {
  uint32_t a = reg->heap[i], b = reg->heap[j];
  reg->heap[i] = b;
  reg->heap[j] = a;
  reg->recs[b].heap_pos = i;
  reg->recs[a].heap_pos = j;
}

static void heap_fix(atun_registry *reg, uint32_t i) {
  while (i > 0 && heap_less(reg, i, (i - 1) / 2)) {
    heap_swap(reg, i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
  for (;;) {
    uint32_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < reg->heap_len && heap_less(reg, l, m)) m = l;
    if (r < reg->heap_len && heap_less(reg, r, m)) m = r;
    if (m == i) return;
    heap_swap(reg, i, m);
    i = m;
  }
}

static void heap_push(atun_registry *reg, uint32_t slot) {
  ATUN_ASSERT(reg->heap_len < reg->cap);
  uint32_t i = reg->heap_len++;
  reg->heap[i] = slot;
  reg->recs[slot].heap_pos = i;
  heap_fix(reg, i);
}

static void heap_remove(atun_registry *reg, uint32_t slot) {
  uint32_t i = reg->recs[slot].heap_pos;
  if (i == NO_SLOT) return;
  uint32_t last = --reg->heap_len;
  if (i != last) {
    heap_swap(reg, i, last);
    heap_fix(reg, i);
  }
  reg->recs[slot].heap_pos = NO_SLOT;
}

/* --- slots ---------------------------------------------------------------- */

static uint32_t index_cap_for(uint32_t cap) {
  uint32_t n = 16;
  while (n < 2 * cap)
    n *= 2;
  return n;
}

/* Moves records, heap and index to arrays for |cap| slots; on failure
 * nothing changes. */
static int slots_resize(atun_registry *reg, uint32_t cap) {
  uint32_t icap = index_cap_for(cap);
  agent_rec *recs = atun_mem_calloc(reg->mem, cap, sizeof(*recs));
  uint32_t *heap = atun_mem_calloc(reg->mem, cap, sizeof(*heap));
  uint32_t *index = atun_mem_calloc(reg->mem, icap, sizeof(*index));
  if (recs == NULL || heap == NULL || index == NULL) {
    atun_mem_free(reg->mem, recs);
    atun_mem_free(reg->mem, heap);
    atun_mem_free(reg->mem, index);
    return ATUN_ERR_NOMEM;
  }
  if (reg->nrecs > 0) memcpy(recs, reg->recs, reg->nrecs * sizeof(*recs));
  if (reg->heap_len > 0) memcpy(heap, reg->heap, reg->heap_len * sizeof(*heap));
  atun_mem_free(reg->mem, reg->recs);
  atun_mem_free(reg->mem, reg->heap);
  atun_mem_free(reg->mem, reg->index);
  reg->recs = recs;
  reg->heap = heap;
  reg->index = index;
  reg->cap = cap;
  reg->index_cap = icap;
  for (uint32_t s = 0; s < reg->nrecs; ++s)
    if (recs[s].in_use) index_insert(reg, s);
  return 0;
}

/* Takes a free slot for |id| and indexes it.  Returns the slot, or
 * ATUN_ERR_FULL / ATUN_ERR_NOMEM as a negative value. */
static int64_t slot_take(atun_registry *reg, const uint8_t *id) {
  if (reg->count >= reg->settings.max_agents) return ATUN_ERR_FULL;
  uint32_t slot;
  if (reg->free_head != NO_SLOT) {
    slot = reg->free_head;
    reg->free_head = reg->recs[slot].next_free;
  } else {
    if (reg->nrecs == reg->cap) {
      uint32_t cap = reg->cap <= reg->settings.max_agents / 2
                         ? reg->cap * 2
                         : reg->settings.max_agents;
      int rv = slots_resize(reg, cap);
      if (rv != 0) return rv;
    }
    slot = reg->nrecs++;
  }
  agent_rec *r = &reg->recs[slot];
  memset(r, 0, sizeof(*r));
  memcpy(r->id, id, ATUN_REGISTRY_ID_LEN);
  r->in_use = 1;
  r->last_seen = ATUN_TSTAMP_MAX;
  r->rtt_ns = UINT64_MAX;
  r->heap_pos = NO_SLOT;
  index_insert(reg, slot);
  ++reg->count;
  return slot;
}

/* --- lifecycle ------------------------------------------------------------ */

static int settings_valid(const atun_registry_settings *s) {
  return s->max_agents > 0 && s->max_agents <= ATUN_REGISTRY_AGENTS_MAX &&
         s->heartbeat_interval_ns > 0 && s->missed_heartbeats_max > 0 &&
         s->heartbeat_interval_ns <= UINT64_MAX / s->missed_heartbeats_max;
}

int atun_registry_new(atun_registry **preg,
                      const atun_registry_settings *settings,
                      const atun_registry_callbacks *callbacks, void *user_data,
                      const atun_mem *mem) {
  atun_registry_settings defaults;
  if (settings == NULL) {
    atun_registry_settings_default(&defaults);
    settings = &defaults;
  }
  if (!settings_valid(settings)) return ATUN_ERR_INVALID_ARGUMENT;
  atun_registry *reg = atun_mem_calloc(mem, 1, sizeof(*reg));
  if (reg == NULL) return ATUN_ERR_NOMEM;
  reg->mem = mem;
  reg->settings = *settings;
  reg->settings.route.max_agents = settings->max_agents;
  if (callbacks != NULL) reg->callbacks = *callbacks;
  reg->user_data = user_data;
  reg->timeout_ns =
      settings->heartbeat_interval_ns * settings->missed_heartbeats_max;
  reg->free_head = NO_SLOT;
  reg->next_generation = 1;
  int rv = atun_route_table_new(&reg->routes, &reg->settings.route, mem);
  if (rv != 0) goto fail_routes;
  rv = slots_resize(reg, settings->max_agents < SLOTS_INITIAL
                             ? settings->max_agents
                             : SLOTS_INITIAL);
  if (rv != 0) goto fail_slots;
  *preg = reg;
  return 0;

fail_slots:
  atun_route_table_del(reg->routes);
fail_routes:
  atun_mem_free(mem, reg);
  return rv;
}

void atun_registry_del(atun_registry *reg) {
  if (reg == NULL) return;
  atun_route_table_del(reg->routes);
  atun_mem_free(reg->mem, reg->recs);
  atun_mem_free(reg->mem, reg->heap);
  atun_mem_free(reg->mem, reg->index);
  atun_mem_free(reg->mem, reg);
}

uint64_t atun_registry_offline_timeout(const atun_registry *reg) {
  return reg->timeout_ns;
}

/* --- connections ---------------------------------------------------------- */

static int name_valid(const char *name) {
  if (name == NULL) return 0;
  size_t n = strnlen(name, ATUN_REGISTRY_NAME_MAX + 1);
  if (n == 0 || n > ATUN_REGISTRY_NAME_MAX) return 0;
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = (unsigned char)name[i];
    if (c < 0x20 || c == 0x7f) return 0;
  }
  return 1;
}

/* Drops the connection state of |slot| (routes included), keeping its
 * identity and history for listing. */
static void connection_end(atun_registry *reg, uint32_t slot) {
  agent_rec *r = &reg->recs[slot];
  atun_route_table_remove(reg->routes, slot);
  heap_remove(reg, slot);
  r->connected = 0;
  r->generation = 0;
  r->has_epoch = 0;
  r->epoch = 0;
  r->active_streams = 0;
}

/* Records that |slot| was seen at |ts|.  Returns 1 if it had been reported
 * offline and is waiting for a timeout again, else 0. */
static int mark_seen(atun_registry *reg, uint32_t slot, atun_tstamp ts) {
  agent_rec *r = &reg->recs[slot];
  if (r->last_seen == ATUN_TSTAMP_MAX || ts > r->last_seen) r->last_seen = ts;
  if (r->heap_pos != NO_SLOT) {
    heap_fix(reg, r->heap_pos);
    return 0;
  }
  heap_push(reg, slot);
  return 1;
}

int atun_registry_connect(atun_registry *reg, const uint8_t *id,
                          const char *name, atun_tstamp ts,
                          uint64_t *pgeneration) {
  if (id == NULL || pgeneration == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  if (!name_valid(name)) return ATUN_ERR_BAD_NAME;
  uint32_t slot = find_slot(reg, id);
  if (slot != NO_SLOT && reg->recs[slot].revoked) return ATUN_ERR_REVOKED;
  if (slot == NO_SLOT) {
    int64_t rv = slot_take(reg, id);
    if (rv < 0) return (int)rv;
    slot = (uint32_t)rv;
  } else {
    connection_end(reg, slot);
  }
  agent_rec *r = &reg->recs[slot];
  strcpy(r->name, name);
  r->connected = 1;
  r->generation = reg->next_generation++;
  r->rtt_ns = UINT64_MAX;
  r->last_seen = ts;
  mark_seen(reg, slot, ts);
  *pgeneration = r->generation;
  return 0;
}

/* The slot of |id| if |generation| is its current connection. */
static int current_slot(const atun_registry *reg, const uint8_t *id,
                        uint64_t generation, uint32_t *pslot) {
  if (id == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  uint32_t slot = find_slot(reg, id);
  if (slot == NO_SLOT) return ATUN_ERR_NOT_FOUND;
  const agent_rec *r = &reg->recs[slot];
  if (!r->connected || generation == 0 || r->generation != generation)
    return ATUN_ERR_STALE;
  *pslot = slot;
  return 0;
}

int atun_registry_disconnect(atun_registry *reg, const uint8_t *id,
                             uint64_t generation) {
  uint32_t slot;
  int rv = current_slot(reg, id, generation, &slot);
  if (rv != 0) return rv;
  connection_end(reg, slot);
  return 0;
}

int atun_registry_advertise(atun_registry *reg, const uint8_t *id,
                            uint64_t generation, uint64_t epoch,
                            const atun_prefix *prefixes, size_t nprefixes,
                            const atun_route_domain *domains, size_t ndomains,
                            atun_tstamp ts, atun_advertise_outcome *poutcome) {
  atun_advertise_outcome dummy;
  if (poutcome == NULL) poutcome = &dummy;
  uint32_t slot;
  int rv = current_slot(reg, id, generation, &slot);
  if (rv != 0) return rv;
  agent_rec *r = &reg->recs[slot];
  if (r->has_epoch && epoch < r->epoch) {
    *poutcome = ATUN_ADVERTISE_IGNORED;
    return 0;
  }
  if (r->has_epoch && epoch == r->epoch) {
    mark_seen(reg, slot, ts);
    *poutcome = ATUN_ADVERTISE_REFRESHED;
    return 0;
  }
  rv = atun_route_table_replace(reg->routes, slot, prefixes, nprefixes, domains,
                                ndomains);
  if (rv != 0) return rv;
  r->has_epoch = 1;
  r->epoch = epoch;
  mark_seen(reg, slot, ts);
  *poutcome = ATUN_ADVERTISE_REPLACED;
  return 0;
}

int atun_registry_heartbeat(atun_registry *reg, const uint8_t *id,
                            uint64_t generation, atun_tstamp ts,
                            uint64_t rtt_ns) {
  uint32_t slot;
  int rv = current_slot(reg, id, generation, &slot);
  if (rv != 0) return rv;
  if (rtt_ns != UINT64_MAX) reg->recs[slot].rtt_ns = rtt_ns;
  return mark_seen(reg, slot, ts);
}

int atun_registry_set_active_streams(atun_registry *reg, const uint8_t *id,
                                     uint64_t generation, uint32_t count) {
  uint32_t slot;
  int rv = current_slot(reg, id, generation, &slot);
  if (rv != 0) return rv;
  reg->recs[slot].active_streams = count;
  return 0;
}

int atun_registry_revoke(atun_registry *reg, const uint8_t *id) {
  if (id == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  uint32_t slot = find_slot(reg, id);
  if (slot == NO_SLOT) {
    int64_t rv = slot_take(reg, id);
    if (rv < 0) return (int)rv;
    slot = (uint32_t)rv;
  }
  connection_end(reg, slot);
  reg->recs[slot].revoked = 1;
  return 0;
}

int atun_registry_forget(atun_registry *reg, const uint8_t *id) {
  if (id == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  uint32_t slot = find_slot(reg, id);
  if (slot == NO_SLOT) return ATUN_ERR_NOT_FOUND;
  connection_end(reg, slot);
  index_delete(reg, slot);
  agent_rec *r = &reg->recs[slot];
  memset(r, 0, sizeof(*r));
  r->heap_pos = NO_SLOT;
  r->next_free = reg->free_head;
  reg->free_head = slot;
  --reg->count;
  return 0;
}

/* --- expiry --------------------------------------------------------------- */

atun_tstamp atun_registry_get_expiry(const atun_registry *reg) {
  if (reg->heap_len == 0) return ATUN_TSTAMP_MAX;
  return deadline(reg, &reg->recs[reg->heap[0]]);
}

int atun_registry_handle_expiry(atun_registry *reg, atun_tstamp ts) {
  while (reg->heap_len > 0) {
    uint32_t slot = reg->heap[0];
    const agent_rec *r = &reg->recs[slot];
    if (deadline(reg, r) > ts) break;
    heap_remove(reg, slot);
    if (reg->callbacks.offline != NULL &&
        reg->callbacks.offline(r->id, slot, r->last_seen, reg->user_data) != 0)
      return ATUN_ERR_CALLBACK_FAILURE;
  }
  return 0;
}

/* --- routing -------------------------------------------------------------- */

static int rec_online(const atun_registry *reg, const agent_rec *r,
                      atun_tstamp ts) {
  return r->in_use && r->connected && !r->revoked && ts < deadline(reg, r);
}

typedef struct resolve_ctx {
  const atun_registry *reg;
  atun_tstamp ts;
  const atun_registry_pin *pin;
  uint32_t pin_slot;
} resolve_ctx;

static int pin_allows(const resolve_ctx *ctx, uint32_t slot) {
  if (ctx->pin == NULL) return 1;
  if (ctx->pin->kind == ATUN_REGISTRY_PIN_ID) return slot == ctx->pin_slot;
  return strcmp(ctx->reg->recs[slot].name, ctx->pin->name) == 0;
}

static void resolve_health(uint32_t agent, atun_route_health *h, void *ud) {
  const resolve_ctx *ctx = ud;
  const agent_rec *r = &ctx->reg->recs[agent];
  h->eligible = rec_online(ctx->reg, r, ctx->ts) && pin_allows(ctx, agent);
  h->active_streams = r->active_streams;
  h->rtt_ns = r->rtt_ns;
  memcpy(h->tiebreak, r->id, sizeof(h->tiebreak));
}

static int listed(const atun_route_candidate *out, size_t n, uint32_t agent) {
  for (size_t i = 0; i < n; ++i)
    if (out[i].agent == agent) return 1;
  return 0;
}

/* Appends the pinned agents that are eligible but had no route, in health
 * order, after the |n| routed ones. */
static size_t append_pinned(const resolve_ctx *ctx, atun_route_candidate *out,
                            size_t n, size_t cap) {
  size_t base = n;
  if (base >= cap) return n;
  for (uint32_t s = 0; s < ctx->reg->nrecs; ++s) {
    atun_route_candidate c;
    memset(&c, 0, sizeof(c));
    resolve_health(s, &c.health, (void *)ctx);
    if (!c.health.eligible || listed(out, base, s)) continue;
    c.agent = s;
    c.match = ATUN_ROUTE_MATCH_PIN;
    size_t pos;
    if (n < cap)
      pos = n++;
    else if (atun_route_health_cmp(&c.health, s, &out[cap - 1].health,
                                   out[cap - 1].agent) < 0)
      pos = cap - 1;
    else
      continue;
    while (pos > base &&
           atun_route_health_cmp(&c.health, s, &out[pos - 1].health,
                                 out[pos - 1].agent) < 0) {
      out[pos] = out[pos - 1];
      --pos;
    }
    out[pos] = c;
  }
  return n;
}

static int pin_prepare(const atun_registry *reg, const atun_registry_pin *pin,
                       resolve_ctx *ctx) {
  ctx->pin = NULL;
  ctx->pin_slot = NO_SLOT;
  if (pin == NULL || pin->kind == ATUN_REGISTRY_PIN_NONE) return 0;
  ctx->pin = pin;
  if (pin->kind == ATUN_REGISTRY_PIN_ID) {
    ctx->pin_slot = find_slot(reg, pin->id);
    return ctx->pin_slot == NO_SLOT ? ATUN_ERR_NOT_FOUND : 0;
  }
  if (pin->kind != ATUN_REGISTRY_PIN_NAME || !name_valid(pin->name))
    return ATUN_ERR_INVALID_ARGUMENT;
  for (uint32_t s = 0; s < reg->nrecs; ++s)
    if (reg->recs[s].in_use && strcmp(reg->recs[s].name, pin->name) == 0)
      return 0;
  return ATUN_ERR_NOT_FOUND;
}

ssize_t atun_registry_resolve(const atun_registry *reg,
                              const atun_route_target *target,
                              const atun_registry_pin *pin, atun_tstamp ts,
                              atun_route_candidate *out, size_t cap) {
  resolve_ctx ctx = {reg, ts, NULL, NO_SLOT};
  int rv = pin_prepare(reg, pin, &ctx);
  if (rv != 0) return rv;
  ssize_t n = atun_route_table_lookup(reg->routes, target, resolve_health, &ctx,
                                      out, cap);
  if (n < 0 || ctx.pin == NULL) return n;
  if (cap > ATUN_ROUTE_CANDIDATES_MAX) cap = ATUN_ROUTE_CANDIDATES_MAX;
  return (ssize_t)append_pinned(&ctx, out, (size_t)n, cap);
}

/* --- listing -------------------------------------------------------------- */

static void fill_info(const atun_registry *reg, uint32_t slot, atun_tstamp ts,
                      atun_registry_agent_info *info) {
  const agent_rec *r = &reg->recs[slot];
  memset(info, 0, sizeof(*info));
  memcpy(info->id, r->id, sizeof(info->id));
  memcpy(info->name, r->name, sizeof(info->name));
  info->handle = slot;
  if (r->revoked)
    info->status = ATUN_AGENT_REVOKED;
  else
    info->status =
        rec_online(reg, r, ts) ? ATUN_AGENT_ONLINE : ATUN_AGENT_OFFLINE;
  info->connected = r->connected;
  info->generation = r->generation;
  info->last_seen = r->last_seen;
  info->rtt_ns = r->rtt_ns;
  info->active_streams = r->active_streams;
  info->has_route_epoch = r->has_epoch;
  info->route_epoch = r->epoch;
  info->nsubnets = atun_route_table_agent_nprefixes(reg->routes, slot);
  info->ndomains = atun_route_table_agent_ndomains(reg->routes, slot);
}

int atun_registry_get(const atun_registry *reg, const uint8_t *id,
                      atun_tstamp ts, atun_registry_agent_info *info) {
  if (id == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  uint32_t slot = find_slot(reg, id);
  if (slot == NO_SLOT) return ATUN_ERR_NOT_FOUND;
  fill_info(reg, slot, ts, info);
  return 0;
}

int atun_registry_next(const atun_registry *reg, uint32_t *cursor,
                       atun_tstamp ts, atun_registry_agent_info *info) {
  while (*cursor < reg->nrecs) {
    uint32_t slot = (*cursor)++;
    if (reg->recs[slot].in_use) {
      fill_info(reg, slot, ts, info);
      return 0;
    }
  }
  return ATUN_ERR_NOT_FOUND;
}

size_t atun_registry_count(const atun_registry *reg) { return reg->count; }

int atun_registry_agent_routes(const atun_registry *reg, const uint8_t *id,
                               atun_prefix *subnets, size_t subnets_cap,
                               atun_route_domain *domains, size_t domains_cap) {
  if (id == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  uint32_t slot = find_slot(reg, id);
  if (slot == NO_SLOT) return ATUN_ERR_NOT_FOUND;
  return atun_route_table_agent_routes(reg->routes, slot, subnets, subnets_cap,
                                       domains, domains_cap);
}
