/*
 * libFuzzer harness: the route table and the registry as stateful objects.
 * The input is a program: the first byte arms allocation failures, every
 * following op byte picks a call whose arguments come from the next bytes
 * (time only moves forward).  Checked after every call:
 *   - a failed replace or advertisement leaves the table's size, the
 *     agent's routes and the allocator's live block count as they were;
 *   - a candidate list is ordered (never a broader route before a more
 *     specific one), lists an agent once, only eligible agents, and every
 *     listed route contains the target;
 *   - every block is freed at the end.
 */
#include <stdlib.h>
#include <string.h>

#include "registry.h"
#include "route.h"
#include "support.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) abort();                                                      \
  } while (0)

#define AGENTS 8
#define OPS_MAX 512
#define PREFIXES_MAX 12
#define DOMAINS_MAX 6

typedef struct cursor {
  const uint8_t *p, *end;
} cursor;

static uint8_t next(cursor *c) { return c->p < c->end ? *c->p++ : 0; }

static int more(const cursor *c) { return c->p < c->end; }

static atun_prefix take_prefix(cursor *c) {
  atun_prefix p;
  memset(&p, 0, sizeof(p));
  uint8_t head = next(c);
  p.addr.family = (head & 1) ? ATUN_AF_INET6 : ATUN_AF_INET;
  size_t n = p.addr.family == ATUN_AF_INET ? 4 : 16;
  /* Few address bytes from the input, so prefixes overlap often. */
  for (size_t i = 0; i < n; ++i)
    p.addr.bytes[i] = (i < 3 || (head & 2)) ? next(c) : 0;
  if ((head & 4) && p.addr.family == ATUN_AF_INET6) {
    memset(p.addr.bytes, 0, 10);
    p.addr.bytes[10] = p.addr.bytes[11] = 0xff;
  }
  p.len = (uint8_t)(next(c) % (n * 8 + 1));
  if (head & 8) p.len = (uint8_t)(p.len + 1); /* sometimes invalid */
  for (unsigned i = p.len; i < 128; ++i)
    if (!(head & 16)) p.addr.bytes[i / 8] &= (uint8_t) ~(0x80 >> (i % 8));
  return p;
}

static void take_name(cursor *c, char *out, size_t cap) {
  static const char *labels[] = {"a", "corp", "badcorp", "example", "B", "x-1"};
  uint8_t head = next(c);
  size_t n = 0;
  if (head & 0x80) { /* raw bytes: exercises validation */
    size_t len = head & 0x1f;
    for (size_t i = 0; i < len && n + 1 < cap; ++i)
      out[n++] = (char)next(c);
  } else {
    for (size_t i = 0; i <= (head & 3); ++i) {
      const char *l = labels[next(c) % 6];
      size_t k = strlen(l);
      if (n + k + 2 >= cap) break;
      if (i > 0) out[n++] = '.';
      memcpy(out + n, l, k);
      n += k;
    }
    if (head & 4) out[n++] = '.';
  }
  out[n] = '\0';
}

typedef struct advert {
  atun_prefix p[PREFIXES_MAX];
  size_t np;
  atun_route_domain d[DOMAINS_MAX];
  size_t nd;
} advert;

static void take_advert(cursor *c, advert *a) {
  memset(a, 0, sizeof(*a));
  a->np = next(c) % (PREFIXES_MAX + 1);
  for (size_t i = 0; i < a->np; ++i)
    a->p[i] = take_prefix(c);
  a->nd = next(c) % (DOMAINS_MAX + 1);
  for (size_t i = 0; i < a->nd; ++i) {
    take_name(c, a->d[i].name, sizeof(a->d[i].name));
    a->d[i].auto_detected = next(c) & 1;
  }
}

static void take_target(cursor *c, atun_route_target *t, char *name,
                        size_t cap) {
  memset(t, 0, sizeof(*t));
  if (next(c) & 1) {
    take_name(c, name, cap);
    t->kind = ATUN_ROUTE_TARGET_NAME;
    t->name = name;
    t->namelen = strlen(name);
  } else {
    t->kind = ATUN_ROUTE_TARGET_ADDR;
    t->addr = take_prefix(c).addr;
  }
}

/* --- route table ---------------------------------------------------------- */

static uint8_t g_eligible[AGENTS];

static void health(uint32_t agent, atun_route_health *h, void *ud) {
  (void)ud;
  CHECK(agent < AGENTS);
  h->eligible = g_eligible[agent];
  h->active_streams = agent % 3;
  h->rtt_ns = agent % 2;
}

/* Routes of one kind, most specific first: a suffix or prefix length never
 * grows along the list, and each matched route contains the target. */
static void check_candidates(const atun_route_target *t,
                             const atun_route_candidate *c, ssize_t n,
                             size_t cap) {
  CHECK(n >= 0 && (size_t)n <= cap && n <= ATUN_ROUTE_CANDIDATES_MAX);
  atun_addr a = t->addr;
  atun_addr_normalize(&a);
  for (ssize_t i = 0; i < n; ++i) {
    for (ssize_t j = 0; j < i; ++j)
      CHECK(c[j].agent != c[i].agent);
    if (c[i].match == ATUN_ROUTE_MATCH_PREFIX) {
      CHECK(t->kind == ATUN_ROUTE_TARGET_ADDR);
      CHECK(atun_prefix_contains(&c[i].prefix, &a));
      if (i > 0) CHECK(c[i - 1].prefix.len >= c[i].prefix.len);
    } else {
      CHECK(c[i].match == ATUN_ROUTE_MATCH_DOMAIN);
      CHECK(t->kind == ATUN_ROUTE_TARGET_NAME);
      if (i > 0) CHECK(strlen(c[i - 1].domain) >= strlen(c[i].domain));
    }
  }
}

static void table_op(cursor *c, atun_route_table *t, atun_failmem *fm) {
  uint8_t op = next(c) % 4;
  uint32_t agent = next(c) % AGENTS;
  if (op == 0) {
    advert a;
    take_advert(c, &a);
    size_t size = atun_route_table_size(t);
    size_t np = atun_route_table_agent_nprefixes(t, agent);
    long live = fm->live;
    int rv = atun_route_table_replace(t, agent, a.p, a.np, a.d, a.nd);
    CHECK(rv <= 0);
    if (rv != 0) {
      CHECK(atun_route_table_size(t) == size);
      CHECK(atun_route_table_agent_nprefixes(t, agent) == np);
      if (rv == ATUN_ERR_NOMEM) CHECK(fm->live == live);
    } else {
      CHECK(atun_route_table_agent_nprefixes(t, agent) <= a.np);
      CHECK(atun_route_table_agent_ndomains(t, agent) <= a.nd);
    }
  } else if (op == 1) {
    CHECK(atun_route_table_remove(t, agent) == 0);
    CHECK(atun_route_table_agent_nprefixes(t, agent) == 0);
  } else if (op == 2) {
    g_eligible[agent] ^= 1;
  } else {
    atun_route_target target;
    char name[64];
    take_target(c, &target, name, sizeof(name));
    atun_route_candidate cand[AGENTS];
    size_t cap = 1 + next(c) % AGENTS;
    ssize_t n = atun_route_table_lookup(t, &target, health, NULL, cand, cap);
    if (n == ATUN_ERR_BAD_NAME) return;
    check_candidates(&target, cand, n, cap);
    for (ssize_t i = 0; i < n; ++i)
      CHECK(g_eligible[cand[i].agent]);
  }
}

/* --- registry ------------------------------------------------------------- */

typedef struct reg_state {
  atun_registry *reg;
  uint64_t gen[AGENTS];
  atun_tstamp ts;
} reg_state;

static int on_offline(const uint8_t *id, uint32_t handle, atun_tstamp last_seen,
                      void *ud) {
  (void)id, (void)handle, (void)ud;
  CHECK(last_seen != ATUN_TSTAMP_MAX);
  return 0;
}

static void registry_op(cursor *c, reg_state *s) {
  uint8_t op = next(c) % 8;
  int i = next(c) % AGENTS;
  uint8_t id[16] = {0};
  id[0] = (uint8_t)i;
  uint64_t gen = s->gen[i] - (next(c) % 4 == 0); /* sometimes stale */
  s->ts += (atun_tstamp)next(c) * ATUN_NS_PER_S;
  int rv = 0;
  switch (op) {
  case 0: {
    uint64_t g = 0;
    rv = atun_registry_connect(s->reg, id, "agent", s->ts, &g);
    if (rv == 0) {
      CHECK(g > s->gen[i]);
      s->gen[i] = g;
    }
    break;
  }
  case 1: {
    advert a;
    take_advert(c, &a);
    atun_advertise_outcome out;
    rv = atun_registry_advertise(s->reg, id, gen, next(c), a.p, a.np, a.d, a.nd,
                                 s->ts, &out);
    break;
  }
  case 2:
    rv = atun_registry_heartbeat(s->reg, id, gen, s->ts, next(c));
    CHECK(rv <= 1);
    rv = rv > 0 ? 0 : rv;
    break;
  case 3:
    rv = atun_registry_disconnect(s->reg, id, gen);
    break;
  case 4:
    rv = next(c) & 1 ? atun_registry_revoke(s->reg, id)
                     : atun_registry_forget(s->reg, id);
    break;
  case 5:
    CHECK(atun_registry_handle_expiry(s->reg, s->ts) == 0);
    CHECK(atun_registry_get_expiry(s->reg) > s->ts);
    break;
  default: {
    atun_route_target target;
    char name[64];
    take_target(c, &target, name, sizeof(name));
    atun_registry_pin pin = {(uint8_t)(next(c) % 3), {0}, "agent"};
    pin.id[0] = (uint8_t)(next(c) % AGENTS);
    atun_route_candidate cand[AGENTS];
    ssize_t n =
        atun_registry_resolve(s->reg, &target, &pin, s->ts, cand, AGENTS);
    if (n >= 0 && pin.kind == ATUN_REGISTRY_PIN_NONE)
      check_candidates(&target, cand, n, AGENTS);
    break;
  }
  }
  CHECK(rv <= 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cursor c = {data, data + size};
  uint8_t arm = next(&c);
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  memset(g_eligible, 1, sizeof(g_eligible));
  atun_route_table *t = NULL;
  reg_state s;
  memset(&s, 0, sizeof(s));
  s.ts = ATUN_NS_PER_S;
  atun_registry_settings rs;
  atun_registry_settings_default(&rs);
  rs.max_agents = AGENTS / 2; /* the bound is reached */
  atun_registry_callbacks cb = {on_offline};
  if (atun_route_table_new(&t, NULL, &fm.mem) != 0 ||
      atun_registry_new(&s.reg, &rs, &cb, NULL, &fm.mem) != 0)
    abort();
  /* From here on allocations fail after |arm| of them (0 = never), once. */
  if (arm != 0) atun_failmem_arm(&fm, arm, 1);
  for (int ops = 0; more(&c) && ops < OPS_MAX; ++ops) {
    if (next(&c) & 1)
      table_op(&c, t, &fm);
    else
      registry_op(&c, &s);
  }
  atun_registry_del(s.reg);
  atun_route_table_del(t);
  CHECK(fm.live == 0);
  return 0;
}
