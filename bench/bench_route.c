/*
 * Route lookup micro-benchmark: the route table against a linear scan over
 * the same routes, for IPv4, IPv6 and domain targets at 100, 10,000 and
 * 100,000 routes.  Prints figures; never asserts on timing.
 *
 * The scan is the cheapest form of the naive approach: it only finds the
 * most specific matching route (no candidate list, no health ordering), so
 * the ratio understates the table's advantage.  Half the targets fall
 * inside an advertised route, half are random.  Routes go to agents 100 at
 * a time; IPv4 lengths follow a routing-table-like mix (see rand_prefix),
 * IPv6 ones are /48, /64 or anything from /32 to /128 under 2001::/16,
 * domains are two or three labels.  A lookup asks for 8 candidates unless
 * --cap says otherwise; cb/look counts the health callbacks it made.
 *
 * usage: bench_route [--help] [--version]
 * exit codes: 0 done, 1 setup failed, 2 bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "route.h"
#include "support.h"

/* Enough distinct targets that their trie paths do not all stay cached. */
#define TARGETS 65536
#define ROUNDS 5
#define ROUTES_PER_AGENT 100
#define KIND_V4 0
#define KIND_V6 1
#define KIND_NAME 2

static const char *kind_names[] = {"ipv4", "ipv6", "domain"};

typedef struct route_set {
  int kind;
  size_t n;
  atun_prefix *prefixes;
  atun_route_domain *domains;
  atun_route_target *targets;
  char (*target_names)[ATUN_ROUTE_NAME_MAX + 1];
} route_set;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static unsigned long g_health_calls;

static void health_cb(uint32_t agent, atun_route_health *h, void *ud) {
  (void)ud;
  ++g_health_calls;
  h->eligible = 1;
  h->active_streams = agent % 3;
  h->rtt_ns = agent * 1000u;
  memset(h->tiebreak, 0, sizeof(h->tiebreak));
}

/* --- route and target generation ------------------------------------------ */

static void mask_prefix(atun_prefix *p) {
  for (unsigned i = p->len; i < 128; ++i)
    p->addr.bytes[i / 8] &= (uint8_t) ~(0x80 >> (i % 8));
}

static void rand_bytes(atun_testrng *r, uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    b[i] = (uint8_t)atun_testrng_next(r);
}

static atun_prefix rand_prefix(atun_testrng *r, int kind) {
  atun_prefix p;
  memset(&p, 0, sizeof(p));
  if (kind == KIND_V4) {
    p.addr.family = ATUN_AF_INET;
    rand_bytes(r, p.addr.bytes, 4);
    /* Mostly /24s, like a routing table: 60% /24, 20% /16../23, 15%
     * /25../32, 5% /8../15 (about four routes cover an address). */
    uint64_t d = atun_testrng_below(r, 20);
    p.len = d < 12   ? 24
            : d < 16 ? (uint8_t)(16 + atun_testrng_below(r, 8))
            : d < 19 ? (uint8_t)(25 + atun_testrng_below(r, 8))
                     : (uint8_t)(8 + atun_testrng_below(r, 8));
  } else {
    p.addr.family = ATUN_AF_INET6;
    p.addr.bytes[0] = 0x20;
    p.addr.bytes[1] = 0x01;
    rand_bytes(r, p.addr.bytes + 2, 14);
    uint64_t d = atun_testrng_below(r, 10);
    p.len = d < 5 ? 48 : d < 8 ? 64 : (uint8_t)(32 + atun_testrng_below(r, 97));
  }
  mask_prefix(&p);
  return p;
}

static void rand_label(atun_testrng *r, char *out) {
  size_t n = 3 + atun_testrng_below(r, 8);
  for (size_t i = 0; i < n; ++i)
    out[i] = (char)('a' + atun_testrng_below(r, 26));
  out[n] = '\0';
}

static void rand_domain(atun_testrng *r, char *out) {
  char l1[16], l2[16];
  rand_label(r, l1);
  rand_label(r, l2);
  if (atun_testrng_below(r, 2))
    snprintf(out, ATUN_ROUTE_NAME_MAX + 1, "%s.%s.example", l1, l2);
  else
    snprintf(out, ATUN_ROUTE_NAME_MAX + 1, "%s.corp", l1);
}

static void make_target(atun_testrng *r, route_set *s, size_t i) {
  atun_route_target *t = &s->targets[i];
  memset(t, 0, sizeof(*t));
  int inside = atun_testrng_below(r, 2) == 0;
  size_t pick = atun_testrng_below(r, s->n);
  if (s->kind == KIND_NAME) {
    char *name = s->target_names[i];
    char host[16];
    rand_label(r, host);
    if (inside)
      snprintf(name, ATUN_ROUTE_NAME_MAX + 1, "%.15s.%.237s", host,
               s->domains[pick].name);
    else
      rand_domain(r, name);
    t->kind = ATUN_ROUTE_TARGET_NAME;
    t->name = name;
    t->namelen = strlen(name);
    return;
  }
  t->kind = ATUN_ROUTE_TARGET_ADDR;
  t->addr = rand_prefix(r, s->kind).addr; /* for the family and 2001::/16 */
  rand_bytes(r, t->addr.bytes + (s->kind == KIND_V4 ? 0 : 2),
             s->kind == KIND_V4 ? 4 : 14);
  if (!inside) return;
  /* Keep the route's network bits, random host bits. */
  const atun_prefix *route = &s->prefixes[pick];
  for (unsigned b = 0; b < route->len; ++b) {
    uint8_t mask = (uint8_t)(0x80 >> (b % 8));
    t->addr.bytes[b / 8] = (uint8_t)((t->addr.bytes[b / 8] & ~mask) |
                                     (route->addr.bytes[b / 8] & mask));
  }
}

static int route_set_init(route_set *s, int kind, size_t n, uint64_t seed) {
  atun_testrng r;
  atun_testrng_seed(&r, seed);
  memset(s, 0, sizeof(*s));
  s->kind = kind;
  s->n = n;
  s->targets = calloc(TARGETS, sizeof(*s->targets));
  s->target_names = calloc(TARGETS, sizeof(*s->target_names));
  if (s->targets == NULL || s->target_names == NULL) return -1;
  if (kind == KIND_NAME) {
    s->domains = calloc(n, sizeof(*s->domains));
    if (s->domains == NULL) return -1;
    for (size_t i = 0; i < n; ++i)
      rand_domain(&r, s->domains[i].name);
  } else {
    s->prefixes = calloc(n, sizeof(*s->prefixes));
    if (s->prefixes == NULL) return -1;
    for (size_t i = 0; i < n; ++i)
      s->prefixes[i] = rand_prefix(&r, kind);
  }
  for (size_t i = 0; i < TARGETS; ++i)
    make_target(&r, s, i);
  return 0;
}

static void route_set_free(route_set *s) {
  free(s->prefixes);
  free(s->domains);
  free(s->targets);
  free(s->target_names);
}

/* Routes go to agents in blocks of ROUTES_PER_AGENT. */
static int table_fill(atun_route_table *t, const route_set *s) {
  for (size_t first = 0; first < s->n; first += ROUTES_PER_AGENT) {
    size_t k =
        s->n - first < ROUTES_PER_AGENT ? s->n - first : ROUTES_PER_AGENT;
    uint32_t agent = (uint32_t)(first / ROUTES_PER_AGENT);
    int rv =
        s->kind == KIND_NAME
            ? atun_route_table_replace(t, agent, NULL, 0, s->domains + first, k)
            : atun_route_table_replace(t, agent, s->prefixes + first, k, NULL,
                                       0);
    if (rv != 0) {
      fprintf(stderr, "replace: %s\n", atun_strerror(rv));
      return -1;
    }
  }
  return 0;
}

/* --- the linear scan ------------------------------------------------------ */

static int suffix_match(const char *name, size_t n, const char *suffix) {
  size_t k = strlen(suffix);
  if (k > n || memcmp(name + n - k, suffix, k) != 0) return 0;
  return k == n || name[n - k - 1] == '.';
}

/* Specificity of the best match: prefix length or suffix length + 1, 0 if
 * none.  Domains in the set are already lowercase; the target is
 * normalized once, as the table does. */
static unsigned scan_lookup(const route_set *s, const atun_route_target *t) {
  unsigned best = 0;
  if (s->kind == KIND_NAME) {
    char name[ATUN_ROUTE_NAME_MAX + 1];
    ssize_t n = atun_route_name_normalize(name, t->name, t->namelen);
    if (n < 0) return 0;
    for (size_t i = 0; i < s->n; ++i) {
      if (suffix_match(name, (size_t)n, s->domains[i].name)) {
        unsigned spec = (unsigned)strlen(s->domains[i].name) + 1;
        if (spec > best) best = spec;
      }
    }
    return best;
  }
  for (size_t i = 0; i < s->n; ++i)
    if (atun_prefix_contains(&s->prefixes[i], &t->addr) &&
        s->prefixes[i].len + 1u > best)
      best = s->prefixes[i].len + 1u;
  return best;
}

static unsigned table_best(const atun_route_candidate *c, ssize_t n) {
  if (n <= 0) return 0;
  if (c[0].match == ATUN_ROUTE_MATCH_DOMAIN)
    return (unsigned)strlen(c[0].domain) + 1;
  return c[0].prefix.len + 1u;
}

/* --- measurement ---------------------------------------------------------- */

typedef struct options {
  int kind;      /* -1 = all */
  size_t routes; /* 0 = 100, 10,000 and 100,000 */
  size_t cap;    /* candidates asked for per lookup */
  int scan;      /* also check and time the linear scan */
} options;

typedef struct result {
  double table_ns, scan_ns;
  double calls; /* health callbacks per lookup */
  size_t mismatches, hits;
  size_t bytes;
} result;

/* Other processes share the machine: the fastest of ROUNDS rounds is the
 * figure least disturbed by them. */
static double time_table(atun_route_table *t, const route_set *s, size_t cap,
                         unsigned *sink) {
  atun_route_candidate c[ATUN_ROUTE_CANDIDATES_MAX];
  double best = 0;
  for (int round = 0; round < ROUNDS; ++round) {
    double t0 = now_ns();
    for (size_t i = 0; i < TARGETS; ++i)
      *sink += (unsigned)atun_route_table_lookup(t, &s->targets[i], health_cb,
                                                 NULL, c, cap);
    double ns = (now_ns() - t0) / TARGETS;
    if (round == 0 || ns < best) best = ns;
  }
  return best;
}

static double time_scan(const route_set *s, unsigned *sink) {
  size_t iters = 20000000 / s->n;
  if (iters < 100) iters = 100;
  if (iters > TARGETS) iters = TARGETS;
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    double t0 = now_ns();
    for (size_t i = 0; i < iters; ++i)
      *sink += scan_lookup(s, &s->targets[i]);
    double ns = (now_ns() - t0) / (double)iters;
    if (round == 0 || ns < best) best = ns;
  }
  return best;
}

static int bench_one(int kind, size_t n, const options *o, result *res) {
  size_t cap = o->cap;
  static route_set s;
  atun_failmem fm;
  atun_failmem_init(&fm, -1);
  atun_route_table *t = NULL;
  int ok = route_set_init(&s, kind, n, 1000 + n * 3 + (size_t)kind) == 0 &&
           atun_route_table_new(&t, NULL, &fm.mem) == 0 &&
           table_fill(t, &s) == 0;
  if (!ok) {
    route_set_free(&s);
    atun_route_table_del(t);
    return -1;
  }
  memset(res, 0, sizeof(*res));
  res->bytes = fm.live_bytes;
  atun_route_candidate c[ATUN_ROUTE_CANDIDATES_MAX];
  /* Correctness first: the best route must agree on every target. */
  size_t checks = TARGETS / 16;
  g_health_calls = 0;
  for (size_t i = 0; i < checks; ++i) {
    ssize_t k =
        atun_route_table_lookup(t, &s.targets[i], health_cb, NULL, c, cap);
    unsigned want = o->scan ? scan_lookup(&s, &s.targets[i]) : table_best(c, k);
    res->hits += want != 0;
    res->mismatches += table_best(c, k) != want;
  }
  res->calls = (double)g_health_calls / (double)checks;
  res->hits = res->hits * 1000 / checks; /* per mille */
  unsigned sink = 0;
  res->table_ns = time_table(t, &s, cap, &sink);
  res->scan_ns = o->scan ? time_scan(&s, &sink) : 0;
  if (sink == 42) fprintf(stderr, " ");
  atun_route_table_del(t);
  route_set_free(&s);
  return 0;
}

/* Latency of a dependent load over |bytes| of memory (a random cycle of
 * cache lines).  A lookup in a large table costs a few such loads, so this
 * puts the figures of a run on a busy, shared machine in proportion. */
static double chase_ns(size_t bytes) {
  size_t n = bytes / 64;
  size_t *lines = malloc(n * 64);
  size_t *order = malloc(n * sizeof(size_t));
  if (lines == NULL || order == NULL) {
    free(lines);
    free(order);
    return 0;
  }
  atun_testrng r;
  atun_testrng_seed(&r, 99);
  for (size_t i = 0; i < n; ++i)
    order[i] = i;
  for (size_t i = n - 1; i > 0; --i) {
    size_t j = atun_testrng_below(&r, i + 1), tmp = order[i];
    order[i] = order[j];
    order[j] = tmp;
  }
  for (size_t i = 0; i < n; ++i)
    lines[order[i] * 8] = order[(i + 1) % n] * 8;
  size_t at = 0, loads = 2000000;
  double t0 = now_ns();
  for (size_t i = 0; i < loads; ++i)
    at = lines[at];
  double ns = (now_ns() - t0) / (double)loads;
  if (at == 1) fprintf(stderr, " ");
  free(lines);
  free(order);
  return ns;
}

static int usage(const char *prog, int rc) {
  printf("usage: %s [--kind ipv4|ipv6|domain] [--routes N] [--cap N] "
         "[--no-scan]\n"
         "       %s --help | --version\n"
         "Times route-table lookups against a linear scan over the same\n"
         "routes (default: all kinds at 100, 10,000 and 100,000 routes, 8\n"
         "candidates per lookup).  --no-scan times the table alone (for\n"
         "profilers).  Build Release for real figures.\n"
         "Exit codes: 0 done, 1 setup failed, 2 bad usage.\n",
         prog, prog);
  return rc;
}

static int parse_args(int argc, char **argv, options *o) {
  o->kind = -1;
  o->routes = 0;
  o->cap = 8;
  o->scan = 1;
  for (int i = 1; i < argc; ++i) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0) return usage(argv[0], 0) - 1;
    if (strcmp(a, "--no-scan") == 0) {
      o->scan = 0;
      continue;
    }
    if (strcmp(a, "--version") == 0) {
      printf("bench_route (atun)\n");
      return -1;
    }
    if (i + 1 >= argc) return usage(argv[0], 2);
    const char *v = argv[++i];
    if (strcmp(a, "--kind") == 0) {
      for (int k = KIND_V4; k <= KIND_NAME; ++k)
        if (strcmp(v, kind_names[k]) == 0) o->kind = k;
      if (o->kind < 0) return usage(argv[0], 2);
    } else if (strcmp(a, "--routes") == 0) {
      o->routes = strtoul(v, NULL, 10);
      if (o->routes == 0 || o->routes > 1000000) return usage(argv[0], 2);
    } else if (strcmp(a, "--cap") == 0) {
      o->cap = strtoul(v, NULL, 10);
      if (o->cap == 0 || o->cap > ATUN_ROUTE_CANDIDATES_MAX)
        return usage(argv[0], 2);
    } else {
      return usage(argv[0], 2);
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc != 0) return rc < 0 ? 0 : rc;
  static const size_t sizes[] = {100, 10000, 100000};
  double load_ns = chase_ns(64 << 20);
  printf("dependent load: %.1f ns over 1 MiB, %.1f ns over 64 MiB (\"loads\" "
         "below:\n"
         "table_ns in units of the latter, a measure the machine's load moves "
         "less)\n",
         chase_ns(1 << 20), load_ns);
  printf("%-7s %8s %10s %7s %12s %10s %9s %6s %8s %9s\n", "kind", "routes",
         "table_ns", "loads", "scan_ns", "speedup", "bytes/rt", "hit%",
         "cb/look", "mismatch");
  for (int kind = KIND_V4; kind <= KIND_NAME; ++kind) {
    if (o.kind >= 0 && kind != o.kind) continue;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
      size_t n = o.routes != 0 ? o.routes : sizes[i];
      result res;
      if (bench_one(kind, n, &o, &res) != 0) {
        fprintf(stderr, "setup failed for %s at %zu routes\n", kind_names[kind],
                n);
        return 1;
      }
      printf("%-7s %8zu %10.1f %7.2f %12.1f %9.0fx %9.1f %5.1f%% %8.1f %9zu\n",
             kind_names[kind], n, res.table_ns, res.table_ns / load_ns,
             res.scan_ns, res.scan_ns / res.table_ns,
             (double)res.bytes / (double)n, (double)res.hits / 10.0, res.calls,
             res.mismatches);
      fflush(stdout);
      if (o.routes != 0) break;
    }
  }
  return 0;
}
