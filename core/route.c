#include "route.h"

#include <string.h>

/*
 * Layout.
 *
 * Each family has a 16-way trie over the address bits (key bits left-aligned
 * in two 64-bit words, IPv4 in the top 32 bits of key[0]).  A node sits at a
 * length that is a multiple of 4 and owns two things:
 *   - 15 route slots for the prefixes of length len .. len+3 below it (one
 *     for len, two for len+1, four for len+2, eight for len+3), each
 *     holding the list of agents advertising that prefix;
 *   - 16 children, indexed by the next 4 bits, each at a length >= len+4.
 * Edges skip whole nibbles where nothing branches (path compression), so a
 * lookup visits about log16(routes) nodes instead of the log2(routes) of a
 * binary trie: on a machine where a cache miss costs ~200 ns, the node
 * visits are what a lookup costs.
 *
 * A node other than the /0 root exists only while it has a route or at
 * least two children.  That makes the shape unique for a given set of
 * prefixes, which is what lets a failed replace restore the table exactly
 * by pruning the empty nodes it added.
 *
 * Walking down from the root makes every node visit wait for the one
 * before.  At 100,000 IPv4 routes the nodes at /4../12 are all there and
 * each visit is a cache miss, so IPv4 has a direct index: one entry per
 * node at /4, /8 and /12 (16 + 256 + 4096), and per /16 (65,536) the first
 * node at or below /16 on its path, i.e. a node of length >= 16 whose
 * parent is shorter.  A lookup reads the four entries its address selects
 * and fetches those nodes side by side, then walks on from the /16 entry.
 * The entries follow the trie: attaching a node sets its entry, freeing it
 * clears it, so an update pays a constant per node it adds or removes, and
 * a failed update, which frees exactly the nodes it added, leaves the index
 * as it was.  Cost: 69,904 pointers (546 KiB), allocated with the first
 * IPv4 route and freed with the last.
 *
 * Domains live in an open-addressing hash (linear probing, at most half
 * full) keyed by the normalized suffix; a slot keeps the full 64-bit hash,
 * so a probe for a suffix nobody advertises rarely touches a node.  The
 * hash runs over the name from its last byte to its first, so one pass over
 * a target name yields the hash of every suffix.
 *
 * A route's agents sit in one array (an rlist), so a lookup reads them
 * without chasing a pointer per agent; the node also mirrors the first
 * agent of each route, so a route with a single agent (the common case)
 * costs no read beyond the node.  Every agent owns one block of
 * entries, its subnets first, then its domains; an entry knows its place in
 * its route's array so that leaving costs O(1).  A replace first allocates
 * the new block, any missing node and room in every list it joins; only
 * then does it add the new entries and drop the old ones, which can not
 * fail.
 */

#define FAMILY_V4 0
#define FAMILY_V6 1
#define MAPPED_PREFIX_LEN 96

#define STRIDE 4
#define FANOUT 16
#define NSLOTS 15

struct tnode;
struct dnode;

typedef struct rentry {
  union {
    struct tnode *t;
    struct dnode *d;
  } node;
  uint32_t agent;
  uint32_t pos; /* index in the route's rlist */
  uint8_t slot; /* route slot within node.t */
  uint8_t auto_detected;
} rentry;

typedef struct ritem {
  rentry *owner;
  uint32_t agent;
} ritem;

/* The agents of one route.  Exists while count > 0, and between the two
 * phases of a replace with the room it reserved. */
typedef struct rlist {
  uint32_t count;
  uint32_t cap;
  ritem item[];
} rlist;

/* Fields a lookup reads come first, so a node costs it few cache lines. */
typedef struct tnode {
  uint64_t key[2];
  uint8_t len; /* a multiple of STRIDE */
  uint8_t fam;
  uint8_t nchildren;
  uint16_t used;          /* slots with agents */
  uint16_t multi;         /* slots with more than one agent */
  uint32_t first[NSLOTS]; /* slot[i]->item[0].agent while used */
  struct tnode *child[FANOUT];
  rlist *slot[NSLOTS];
  struct tnode *parent;
  uint64_t stamp; /* last replace that touched it, to spot duplicates */
  uint16_t seen;  /* slots that replace already took */
  uint16_t lists; /* slots with an rlist, empty ones included */
} tnode;

typedef struct dnode {
  rlist *list;
  uint32_t first; /* list->item[0].agent */
  uint8_t multi;  /* more than one agent */
  uint64_t hash;
  uint64_t stamp;
  size_t len;
  char name[]; /* len + 1 bytes */
} dnode;

typedef struct dslot {
  uint64_t hash;
  dnode *node; /* NULL = empty */
} dslot;

typedef struct agent_routes {
  rentry *block; /* nprefixes + ndomains entries */
  uint32_t nprefixes;
  uint32_t ndomains;
} agent_routes;

/* The IPv4 index (see "IPv4 index" below): for each of the levels /4, /8
 * and /12 one entry per key of that length, then one per /16. */
#define V4_INDEX_LEVELS 4
#define V4_DIR_BITS 16
#define V4_INDEX_SIZE (16 + 256 + 4096 + ((size_t)1 << V4_DIR_BITS))

struct atun_route_table {
  const atun_mem *mem;
  atun_route_settings settings;
  tnode *root[2];
  tnode **v4_index; /* V4_INDEX_SIZE */
  dslot *buckets;
  size_t nbuckets; /* a power of two, at least twice ndnodes */
  size_t ndnodes;
  agent_routes *agents; /* max_agents */
  size_t nroutes;
  uint64_t stamp;
};

#define BUCKETS_MIN 64

/* --- settings and names --------------------------------------------------- */

void atun_route_settings_default(atun_route_settings *settings) {
  settings->max_agents = 4096;
  settings->max_routes = (size_t)1 << 20;
  settings->max_subnets_per_agent = ATUN_ROUTE_SUBNETS_MAX;
  settings->max_domains_per_agent = ATUN_ROUTE_DOMAINS_MAX;
}

static int name_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

ssize_t atun_route_name_normalize(char *out, const char *name, size_t len) {
  if (name == NULL) return ATUN_ERR_BAD_NAME;
  if (len > 0 && name[len - 1] == '.') --len;
  if (len == 0 || len > ATUN_ROUTE_NAME_MAX) return ATUN_ERR_BAD_NAME;
  size_t label = 0;
  for (size_t i = 0; i < len; ++i) {
    char c = name[i];
    if (c == '.') {
      if (label == 0) return ATUN_ERR_BAD_NAME;
      label = 0;
    } else if (!name_char_ok(c) || ++label > ATUN_ROUTE_LABEL_MAX) {
      return ATUN_ERR_BAD_NAME;
    }
    out[i] = lower(c);
  }
  if (label == 0) return ATUN_ERR_BAD_NAME;
  out[len] = '\0';
  return (ssize_t)len;
}

int atun_route_target_parse(atun_route_target *out, const char *s) {
  memset(out, 0, sizeof(*out));
  if (s == NULL) return ATUN_ERR_INVALID_ARGUMENT;
  size_t n = strlen(s);
  char buf[ATUN_ROUTE_NAME_MAX + 2];
  const char *lit = s;
  if (n >= 2 && s[0] == '[' && s[n - 1] == ']' && n - 2 < sizeof(buf)) {
    memcpy(buf, s + 1, n - 2);
    buf[n - 2] = '\0';
    lit = buf;
  }
  if (atun_addr_parse(&out->addr, lit) == 0) {
    atun_addr_normalize(&out->addr);
    out->kind = ATUN_ROUTE_TARGET_ADDR;
    return 0;
  }
  char norm[ATUN_ROUTE_NAME_MAX + 1];
  if (atun_route_name_normalize(norm, s, n) < 0) return ATUN_ERR_BAD_NAME;
  memset(&out->addr, 0, sizeof(out->addr));
  out->kind = ATUN_ROUTE_TARGET_NAME;
  out->name = s;
  out->namelen = n;
  return 0;
}

int atun_route_health_cmp(const atun_route_health *a, uint32_t agent_a,
                          const atun_route_health *b, uint32_t agent_b) {
  if (a->active_streams != b->active_streams)
    return a->active_streams < b->active_streams ? -1 : 1;
  if (a->rtt_ns != b->rtt_ns) return a->rtt_ns < b->rtt_ns ? -1 : 1;
  int c = memcmp(a->tiebreak, b->tiebreak, sizeof(a->tiebreak));
  if (c != 0) return c < 0 ? -1 : 1;
  if (agent_a != agent_b) return agent_a < agent_b ? -1 : 1;
  return 0;
}

/* --- keys ----------------------------------------------------------------- */

static unsigned family_maxlen(int fam) { return fam == FAMILY_V4 ? 32 : 128; }

static int family_index(uint8_t family) {
  return family == ATUN_AF_INET ? FAMILY_V4 : FAMILY_V6;
}

static uint64_t load_be64(const uint8_t *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i)
    v = (v << 8) | (i < n ? p[i] : 0);
  return v;
}

static void addr_key(uint64_t key[2], const atun_addr *a) {
  size_t n = a->family == ATUN_AF_INET ? 4 : 16;
  key[0] = load_be64(a->bytes, n);
  key[1] = n > 8 ? load_be64(a->bytes + 8, 8) : 0;
}

/* One byte swap and store: this runs for every candidate a lookup
 * returns. */
static void store_be64(uint8_t *p, uint64_t v) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  memcpy(p, &v, sizeof(v));
}

static void key_addr(atun_addr *a, const uint64_t key[2], int fam) {
  a->family = fam == FAMILY_V4 ? ATUN_AF_INET : ATUN_AF_INET6;
  store_be64(a->bytes, key[0]);
  store_be64(a->bytes + 8, key[1]);
}

/* |n| (<= STRIDE) bits of |key| from |pos|, a multiple of STRIDE, so they
 * never straddle the two words. */
static unsigned key_bits(const uint64_t key[2], unsigned pos, unsigned n) {
  if (n == 0) return 0;
  return (unsigned)(key[pos / 64] >> (64 - pos % 64 - n)) & ((1u << n) - 1);
}

static unsigned nibble(const uint64_t key[2], unsigned pos) {
  return key_bits(key, pos, STRIDE);
}

/* Slots are numbered by depth below the node, then by the extra bits. */
static unsigned slot_index(unsigned depth, unsigned bits) {
  return (1u << depth) - 1 + bits;
}

static unsigned slot_depth(unsigned slot) {
  return 31 - (unsigned)__builtin_clz(slot + 1);
}

/* Length of the common leading bits of |a| and |b|, at most |limit|. */
static unsigned common_len(const uint64_t a[2], const uint64_t b[2],
                           unsigned limit) {
  uint64_t x = a[0] ^ b[0];
  unsigned n;
  if (x != 0) {
    n = (unsigned)__builtin_clzll(x);
  } else {
    uint64_t y = a[1] ^ b[1];
    n = 64 + (y != 0 ? (unsigned)__builtin_clzll(y) : 64);
  }
  return n < limit ? n : limit;
}

static int node_covers(const tnode *n, const uint64_t key[2]) {
  return common_len(n->key, key, n->len) == n->len;
}

static void mask_key(uint64_t key[2], unsigned len) {
  for (unsigned w = 0; w < 2; ++w) {
    unsigned bits = len > 64 * w ? len - 64 * w : 0;
    if (bits < 64) key[w] &= bits == 0 ? 0 : ~(uint64_t)0 << (64 - bits);
  }
}

/* Validates |in| and folds an IPv4-mapped IPv6 prefix (length >= 96) to
 * IPv4 so that it meets the IPv4 targets it was meant for. */
static int prefix_norm(atun_prefix *out, const atun_prefix *in) {
  if (!atun_prefix_valid(in)) return ATUN_ERR_BAD_PREFIX;
  *out = *in;
  if (out->len < MAPPED_PREFIX_LEN) return 0;
  atun_addr_normalize(&out->addr);
  if (out->addr.family == ATUN_AF_INET) out->len -= MAPPED_PREFIX_LEN;
  return 0;
}

/* --- IPv4 index ---------------------------------------------------------- */

/* Entry |level| (1 .. V4_INDEX_LEVELS) of the IPv4 index for the key word
 * |key0|: the levels hold 16, 256, 4096 and 65,536 entries, one after the
 * other. */
static tnode **v4_entry(const atun_route_table *t, unsigned level,
                        uint64_t key0) {
  ATUN_ASSERT(t->v4_index != NULL);
  size_t offset = (((size_t)1 << (STRIDE * level)) - 16) / 15;
  return &t->v4_index[offset + (size_t)(key0 >> (64 - STRIDE * level))];
}

/* The index entry that names |n|, a node other than the root, while it
 * hangs below a node of length |parent_len|, or NULL if none does: every
 * IPv4 node of length 4, 8 or 12 has one, and so does a node of length
 * >= 16 whose parent is shorter (the first node at or below /16 on the
 * path of every address it covers). */
static tnode **v4_entry_of(const atun_route_table *t, const tnode *n,
                           unsigned parent_len) {
  ATUN_ASSERT(n->len > 0);
  if (n->fam != FAMILY_V4) return NULL;
  if (n->len < V4_DIR_BITS) return v4_entry(t, n->len / STRIDE, n->key[0]);
  if (parent_len >= V4_DIR_BITS) return NULL;
  return v4_entry(t, V4_INDEX_LEVELS, n->key[0]);
}

/* The index exists while the IPv4 trie holds more than its bare root, so a
 * table without IPv4 routes does not pay for it.  Either way round the
 * trie is empty, so the index starts and ends with no entries to move. */
static int v4_index_reserve(atun_route_table *t) {
  if (t->v4_index != NULL) return 0;
  t->v4_index = atun_mem_calloc(t->mem, V4_INDEX_SIZE, sizeof(*t->v4_index));
  return t->v4_index != NULL ? 0 : ATUN_ERR_NOMEM;
}

static void v4_index_release(atun_route_table *t) {
  const tnode *root = t->root[FAMILY_V4];
  if (root->lists != 0 || root->nchildren != 0) return;
  atun_mem_free(t->mem, t->v4_index);
  t->v4_index = NULL;
}

/* --- trie ----------------------------------------------------------------- */

static tnode *tnode_new(atun_route_table *t, int fam, const uint64_t key[2],
                        unsigned len) {
  tnode *n = atun_mem_calloc(t->mem, 1, sizeof(*n));
  if (n == NULL) return NULL;
  n->fam = (uint8_t)fam;
  n->key[0] = key[0];
  n->key[1] = key[1];
  mask_key(n->key, len);
  n->len = (uint8_t)len;
  return n;
}

/* Hangs |child| below |parent| at its nibble, replacing what was there. */
static void tnode_attach(atun_route_table *t, tnode *parent, tnode *child) {
  tnode **at = &parent->child[nibble(child->key, parent->len)];
  if (*at == NULL) ++parent->nchildren;
  *at = child;
  child->parent = parent;
  tnode **entry = v4_entry_of(t, child, parent->len);
  if (entry != NULL) *entry = child;
}

/* Drops the index entry naming |n|, which is about to be freed. */
static void tnode_unindex(atun_route_table *t, const tnode *n) {
  tnode **entry = v4_entry_of(t, n, n->parent->len);
  if (entry == NULL) return;
  ATUN_ASSERT(*entry == n);
  *entry = NULL;
}

/* The node and slot of the prefix (|key|, |len|). */
static unsigned home_len(unsigned len) { return len & ~(STRIDE - 1u); }

static unsigned home_slot(const uint64_t key[2], unsigned len) {
  unsigned h = home_len(len);
  return slot_index(len - h, key_bits(key, h, len - h));
}

/* Returns the home node of (|key|, |len|), creating it (and a branching
 * node where an edge must split) if missing; NULL only when out of memory,
 * and then the trie is unchanged. */
static tnode *tnode_obtain(atun_route_table *t, int fam, const uint64_t key[2],
                           unsigned len) {
  unsigned h = home_len(len);
  tnode *n = t->root[fam];
  for (;;) {
    if (n->len == h) return n;
    tnode *c = n->child[nibble(key, n->len)];
    if (c == NULL) {
      tnode *leaf = tnode_new(t, fam, key, h);
      if (leaf != NULL) tnode_attach(t, n, leaf);
      return leaf;
    }
    unsigned cl = common_len(c->key, key, c->len < h ? c->len : h);
    if (cl == c->len) {
      n = c;
      continue;
    }
    /* |c| and the new prefix part inside c's edge: a node at the last
     * boundary before they differ takes both. */
    tnode *m = tnode_new(t, fam, key, home_len(cl));
    if (m == NULL) return NULL;
    tnode *leaf = m;
    if (m->len != h) {
      leaf = tnode_new(t, fam, key, h);
      if (leaf == NULL) {
        atun_mem_free(t->mem, m);
        return NULL;
      }
    }
    tnode_attach(t, n, m);
    tnode_attach(t, m, c);
    if (leaf != m) tnode_attach(t, m, leaf);
    return leaf;
  }
}

static tnode *tnode_find(const atun_route_table *t, int fam,
                         const uint64_t key[2], unsigned len) {
  unsigned h = home_len(len);
  const tnode *n = t->root[fam];
  while (n != NULL && n->len < h && node_covers(n, key))
    n = n->child[nibble(key, n->len)];
  if (n == NULL || n->len != h || !node_covers(n, key)) return NULL;
  return (tnode *)n;
}

static tnode *tnode_only_child(const tnode *n) {
  for (unsigned i = 0; i < FANOUT; ++i)
    if (n->child[i] != NULL) return n->child[i];
  return NULL;
}

/* Removes |n| and then its ancestors while they hold no route and have at
 * most one child, which restores the unique shape after routes left. */
static void tnode_prune(atun_route_table *t, tnode *n) {
  while (n->parent != NULL && n->lists == 0 && n->nchildren <= 1) {
    tnode *child = tnode_only_child(n);
    tnode *parent = n->parent;
    tnode_unindex(t, n);
    if (child != NULL) {
      tnode_attach(t, parent, child);
    } else {
      parent->child[nibble(n->key, parent->len)] = NULL;
      --parent->nchildren;
    }
    atun_mem_free(t->mem, n);
    n = parent;
  }
}

static void tnode_free_all(atun_route_table *t, tnode *n) {
  /* Iterative post-order through the parent links: no recursion depth to
   * bound. */
  while (n != NULL) {
    tnode *c = n->nchildren > 0 ? tnode_only_child(n) : NULL;
    if (c != NULL) {
      n = c;
      continue;
    }
    tnode *parent = n->parent;
    if (parent != NULL) {
      parent->child[nibble(n->key, parent->len)] = NULL;
      --parent->nchildren;
    }
    for (unsigned i = 0; i < NSLOTS; ++i)
      atun_mem_free(t->mem, n->slot[i]);
    atun_mem_free(t->mem, n);
    n = parent;
  }
}

/* --- domain hash ---------------------------------------------------------- */

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static uint64_t name_hash(const char *name, size_t len) {
  uint64_t h = FNV_OFFSET;
  for (size_t i = len; i > 0; --i) {
    h ^= (uint8_t)name[i - 1];
    h *= FNV_PRIME;
  }
  return h;
}

/* Index of the slot holding (|name|, |len|), or of the empty slot where it
 * would go. */
static size_t dnode_probe(const atun_route_table *t, const char *name,
                          size_t len, uint64_t hash) {
  size_t mask = t->nbuckets - 1;
  size_t i = hash & mask;
  for (;;) {
    const dslot *b = &t->buckets[i];
    if (b->node == NULL) return i;
    if (b->hash == hash && b->node->len == len &&
        memcmp(b->node->name, name, len) == 0)
      return i;
    i = (i + 1) & mask;
  }
}

static void dslot_put(dslot *buckets, size_t nbuckets, dslot item) {
  size_t i = item.hash & (nbuckets - 1);
  while (buckets[i].node != NULL)
    i = (i + 1) & (nbuckets - 1);
  buckets[i] = item;
}

/* Grows the slot array so |count| nodes fill at most half of it.  A larger
 * array is invisible to lookups, so it is kept even if the caller then
 * fails. */
static int buckets_reserve(atun_route_table *t, size_t count) {
  size_t n = t->nbuckets;
  while (n < 2 * count)
    n *= 2;
  if (n == t->nbuckets) return 0;
  dslot *b = atun_mem_calloc(t->mem, n, sizeof(*b));
  if (b == NULL) return ATUN_ERR_NOMEM;
  for (size_t i = 0; i < t->nbuckets; ++i)
    if (t->buckets[i].node != NULL) dslot_put(b, n, t->buckets[i]);
  atun_mem_free(t->mem, t->buckets);
  t->buckets = b;
  t->nbuckets = n;
  return 0;
}

static dnode *dnode_obtain(atun_route_table *t, const char *name, size_t len) {
  uint64_t hash = name_hash(name, len);
  dslot *b = &t->buckets[dnode_probe(t, name, len, hash)];
  if (b->node != NULL) return b->node;
  ATUN_ASSERT(2 * (t->ndnodes + 1) <= t->nbuckets);
  dnode *d = atun_mem_calloc(t->mem, 1, sizeof(*d) + len + 1);
  if (d == NULL) return NULL;
  d->hash = hash;
  d->len = len;
  memcpy(d->name, name, len + 1);
  b->hash = hash;
  b->node = d;
  ++t->ndnodes;
  return d;
}

/* Backward-shift deletion: later members of the probe run move into the
 * hole when their home allows it, so probes need no tombstones. */
static void dslot_delete(atun_route_table *t, size_t hole) {
  size_t mask = t->nbuckets - 1;
  for (size_t j = (hole + 1) & mask; t->buckets[j].node != NULL;
       j = (j + 1) & mask) {
    size_t home = t->buckets[j].hash & mask;
    int stays =
        hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (stays) continue;
    t->buckets[hole] = t->buckets[j];
    hole = j;
  }
  t->buckets[hole].node = NULL;
  t->buckets[hole].hash = 0;
}

static void dnode_prune(atun_route_table *t, dnode *d) {
  if (d->list != NULL) return;
  size_t i = dnode_probe(t, d->name, d->len, d->hash);
  ATUN_ASSERT(t->buckets[i].node == d);
  dslot_delete(t, i);
  --t->ndnodes;
  atun_mem_free(t->mem, d);
}

/* --- table ---------------------------------------------------------------- */

static int settings_valid(const atun_route_settings *s) {
  return s->max_agents > 0 && s->max_agents <= ATUN_ROUTE_AGENTS_MAX &&
         s->max_routes > 0 &&
         s->max_subnets_per_agent <= ATUN_ROUTE_SUBNETS_MAX &&
         s->max_domains_per_agent <= ATUN_ROUTE_DOMAINS_MAX;
}

int atun_route_table_new(atun_route_table **ptable,
                         const atun_route_settings *settings,
                         const atun_mem *mem) {
  atun_route_settings defaults;
  if (settings == NULL) {
    atun_route_settings_default(&defaults);
    settings = &defaults;
  }
  if (!settings_valid(settings)) return ATUN_ERR_INVALID_ARGUMENT;
  atun_route_table *t = atun_mem_calloc(mem, 1, sizeof(*t));
  if (t == NULL) goto fail_table;
  t->mem = mem;
  t->settings = *settings;
  t->agents = atun_mem_calloc(mem, settings->max_agents, sizeof(*t->agents));
  if (t->agents == NULL) goto fail_agents;
  t->buckets = atun_mem_calloc(mem, BUCKETS_MIN, sizeof(*t->buckets));
  if (t->buckets == NULL) goto fail_buckets;
  t->nbuckets = BUCKETS_MIN;
  static const uint64_t zero[2] = {0, 0};
  t->root[FAMILY_V4] = tnode_new(t, FAMILY_V4, zero, 0);
  if (t->root[FAMILY_V4] == NULL) goto fail_root4;
  t->root[FAMILY_V6] = tnode_new(t, FAMILY_V6, zero, 0);
  if (t->root[FAMILY_V6] == NULL) goto fail_root6;
  *ptable = t;
  return 0;

fail_root6:
  atun_mem_free(mem, t->root[FAMILY_V4]);
fail_root4:
  atun_mem_free(mem, t->buckets);
fail_buckets:
  atun_mem_free(mem, t->agents);
fail_agents:
  atun_mem_free(mem, t);
fail_table:
  return ATUN_ERR_NOMEM;
}

void atun_route_table_del(atun_route_table *t) {
  if (t == NULL) return;
  for (uint32_t a = 0; a < t->settings.max_agents; ++a)
    atun_mem_free(t->mem, t->agents[a].block);
  for (size_t i = 0; i < t->nbuckets; ++i) {
    dnode *d = t->buckets[i].node;
    if (d == NULL) continue;
    atun_mem_free(t->mem, d->list);
    atun_mem_free(t->mem, d);
  }
  tnode_free_all(t, t->root[FAMILY_V4]);
  tnode_free_all(t, t->root[FAMILY_V6]);
  atun_mem_free(t->mem, t->v4_index);
  atun_mem_free(t->mem, t->buckets);
  atun_mem_free(t->mem, t->agents);
  atun_mem_free(t->mem, t);
}

/* Makes room for one more agent in |*plist|, creating the list if needed.
 * On failure |*plist| is unchanged. */
static int rlist_reserve(atun_route_table *t, rlist **plist) {
  rlist *l = *plist;
  if (l != NULL && l->count < l->cap) return 0;
  uint32_t cap = l == NULL ? 1 : 2 * l->cap;
  rlist *grown = atun_mem_realloc(t->mem, l, sizeof(*l) + cap * sizeof(ritem));
  if (grown == NULL) return ATUN_ERR_NOMEM;
  if (l == NULL) grown->count = 0;
  grown->cap = cap;
  *plist = grown;
  return 0;
}

static void rlist_add(rlist *l, rentry *e) {
  ATUN_ASSERT(l->count < l->cap);
  e->pos = l->count++;
  l->item[e->pos].owner = e;
  l->item[e->pos].agent = e->agent;
}

/* Removes |e| from |*plist| by moving the last item into its place; frees
 * the list when it empties.  Returns nonzero if it did. */
static int rlist_del(atun_route_table *t, rlist **plist, rentry *e) {
  rlist *l = *plist;
  uint32_t last = --l->count;
  if (e->pos != last) {
    l->item[e->pos] = l->item[last];
    l->item[e->pos].owner->pos = e->pos;
  }
  if (l->count > 0) return 0;
  atun_mem_free(t->mem, l);
  *plist = NULL;
  return 1;
}

static void tnode_slot_free(atun_route_table *t, tnode *n, unsigned slot) {
  atun_mem_free(t->mem, n->slot[slot]);
  n->slot[slot] = NULL;
  n->lists &= (uint16_t) ~(1u << slot);
  n->used &= (uint16_t) ~(1u << slot);
  n->multi &= (uint16_t) ~(1u << slot);
}

/* Refreshes the node's mirror of a slot's first agent after its list
 * changed. */
static void tnode_slot_sync(tnode *n, unsigned slot) {
  const rlist *l = n->slot[slot];
  n->first[slot] = l->item[0].agent;
  n->used |= (uint16_t)(1u << slot);
  if (l->count > 1)
    n->multi |= (uint16_t)(1u << slot);
  else
    n->multi &= (uint16_t) ~(1u << slot);
}

static void dnode_sync(dnode *d) {
  d->first = d->list->item[0].agent;
  d->multi = d->list->count > 1;
}

/* Unlinks and frees |agent|'s current block, pruning nodes left empty. */
static void agent_clear(atun_route_table *t, uint32_t agent) {
  agent_routes *ar = &t->agents[agent];
  for (uint32_t i = 0; i < ar->nprefixes; ++i) {
    rentry *e = &ar->block[i];
    tnode *n = e->node.t;
    if (rlist_del(t, &n->slot[e->slot], e)) {
      tnode_slot_free(t, n, e->slot);
      tnode_prune(t, n);
    } else {
      tnode_slot_sync(n, e->slot);
    }
  }
  for (uint32_t i = ar->nprefixes; i < ar->nprefixes + ar->ndomains; ++i) {
    dnode *d = ar->block[i].node.d;
    if (rlist_del(t, &d->list, &ar->block[i]))
      dnode_prune(t, d);
    else
      dnode_sync(d);
  }
  t->nroutes -= (size_t)ar->nprefixes + ar->ndomains;
  atun_mem_free(t->mem, ar->block);
  memset(ar, 0, sizeof(*ar));
  v4_index_release(t);
}

static int replace_check(const atun_route_table *t, uint32_t agent,
                         const atun_prefix *prefixes, size_t nprefixes,
                         const atun_route_domain *domains, size_t ndomains) {
  if (agent >= t->settings.max_agents) return ATUN_ERR_INVALID_ARGUMENT;
  if ((prefixes == NULL && nprefixes > 0) || (domains == NULL && ndomains > 0))
    return ATUN_ERR_INVALID_ARGUMENT;
  if (nprefixes > t->settings.max_subnets_per_agent ||
      ndomains > t->settings.max_domains_per_agent)
    return ATUN_ERR_LIMIT;
  atun_prefix p;
  for (size_t i = 0; i < nprefixes; ++i)
    if (prefix_norm(&p, &prefixes[i]) != 0) return ATUN_ERR_BAD_PREFIX;
  char name[ATUN_ROUTE_NAME_MAX + 1];
  for (size_t i = 0; i < ndomains; ++i)
    if (atun_route_name_normalize(
            name, domains[i].name,
            strnlen(domains[i].name, sizeof(domains[i].name))) < 0)
      return ATUN_ERR_BAD_NAME;
  return 0;
}

/* Frees the empty lists and nodes a failed replace added.  Outside a
 * replace no list is empty, the trie holds no empty node with fewer than
 * two children and the hash no empty node, so exactly the added ones go. */
static void replace_rollback(atun_route_table *t, const atun_prefix *prefixes,
                             size_t nprefixes, const atun_route_domain *domains,
                             size_t ndomains) {
  for (size_t i = 0; i < nprefixes; ++i) {
    atun_prefix p;
    uint64_t key[2];
    prefix_norm(&p, &prefixes[i]);
    addr_key(key, &p.addr);
    tnode *n = tnode_find(t, family_index(p.addr.family), key, p.len);
    if (n == NULL) continue;
    unsigned slot = home_slot(key, p.len);
    if (n->slot[slot] != NULL && n->slot[slot]->count == 0)
      tnode_slot_free(t, n, slot);
    tnode_prune(t, n);
  }
  char name[ATUN_ROUTE_NAME_MAX + 1];
  for (size_t i = 0; i < ndomains; ++i) {
    ssize_t len = atun_route_name_normalize(
        name, domains[i].name,
        strnlen(domains[i].name, sizeof(domains[i].name)));
    dnode *d = t->buckets[dnode_probe(t, name, (size_t)len,
                                      name_hash(name, (size_t)len))]
                   .node;
    if (d == NULL) continue;
    if (d->list != NULL && d->list->count == 0) {
      atun_mem_free(t->mem, d->list);
      d->list = NULL;
    }
    dnode_prune(t, d);
  }
}

/* Finds or creates the node of every new route and room in its list, fills
 * |block| with the distinct ones and counts them in |*np| / |*nd|. */
static int replace_obtain(atun_route_table *t, uint32_t agent, rentry *block,
                          const atun_prefix *prefixes, size_t nprefixes,
                          const atun_route_domain *domains, size_t ndomains,
                          uint32_t *np, uint32_t *nd) {
  uint64_t stamp = ++t->stamp;
  size_t n = 0;
  for (size_t i = 0; i < nprefixes; ++i) {
    atun_prefix p;
    uint64_t key[2];
    prefix_norm(&p, &prefixes[i]);
    addr_key(key, &p.addr);
    int fam = family_index(p.addr.family);
    if (fam == FAMILY_V4 && v4_index_reserve(t) != 0) return ATUN_ERR_NOMEM;
    tnode *node = tnode_obtain(t, fam, key, p.len);
    if (node == NULL) return ATUN_ERR_NOMEM;
    unsigned slot = home_slot(key, p.len);
    if (node->stamp != stamp) {
      node->stamp = stamp;
      node->seen = 0;
    }
    if (node->seen & (1u << slot)) continue;
    node->seen |= (uint16_t)(1u << slot);
    if (rlist_reserve(t, &node->slot[slot]) != 0) return ATUN_ERR_NOMEM;
    node->lists |= (uint16_t)(1u << slot);
    block[n].node.t = node;
    block[n].slot = (uint8_t)slot;
    block[n++].agent = agent;
  }
  *np = (uint32_t)n;
  char name[ATUN_ROUTE_NAME_MAX + 1];
  for (size_t i = 0; i < ndomains; ++i) {
    ssize_t len = atun_route_name_normalize(
        name, domains[i].name,
        strnlen(domains[i].name, sizeof(domains[i].name)));
    dnode *d = dnode_obtain(t, name, (size_t)len);
    if (d == NULL) return ATUN_ERR_NOMEM;
    if (d->stamp == stamp) continue;
    d->stamp = stamp;
    if (rlist_reserve(t, &d->list) != 0) return ATUN_ERR_NOMEM;
    block[n].node.d = d;
    block[n].auto_detected = domains[i].auto_detected ? 1 : 0;
    block[n++].agent = agent;
  }
  *nd = (uint32_t)(n - *np);
  return 0;
}

int atun_route_table_replace(atun_route_table *t, uint32_t agent,
                             const atun_prefix *prefixes, size_t nprefixes,
                             const atun_route_domain *domains,
                             size_t ndomains) {
  int rv = replace_check(t, agent, prefixes, nprefixes, domains, ndomains);
  if (rv != 0) return rv;
  if (buckets_reserve(t, t->ndnodes + ndomains) != 0) return ATUN_ERR_NOMEM;
  rentry *block = NULL;
  size_t total = nprefixes + ndomains;
  if (total > 0) {
    block = atun_mem_calloc(t->mem, total, sizeof(*block));
    if (block == NULL) return ATUN_ERR_NOMEM;
  }
  uint32_t np = 0, nd = 0;
  rv = replace_obtain(t, agent, block, prefixes, nprefixes, domains, ndomains,
                      &np, &nd);
  agent_routes *ar = &t->agents[agent];
  size_t old = (size_t)ar->nprefixes + ar->ndomains;
  if (rv == 0 && t->nroutes - old + np + nd > t->settings.max_routes)
    rv = ATUN_ERR_FULL;
  if (rv != 0) {
    replace_rollback(t, prefixes, nprefixes, domains, ndomains);
    v4_index_release(t);
    atun_mem_free(t->mem, block);
    return rv;
  }
  /* Add the new routes before dropping the old ones, so no list or node
   * shared by both is freed in between. */
  for (uint32_t i = 0; i < np; ++i) {
    tnode *n = block[i].node.t;
    rlist_add(n->slot[block[i].slot], &block[i]);
    tnode_slot_sync(n, block[i].slot);
  }
  for (uint32_t i = np; i < np + nd; ++i) {
    rlist_add(block[i].node.d->list, &block[i]);
    dnode_sync(block[i].node.d);
  }
  agent_clear(t, agent);
  if (np + nd == 0) {
    atun_mem_free(t->mem, block);
    return 0;
  }
  ar->block = block;
  ar->nprefixes = np;
  ar->ndomains = nd;
  t->nroutes += (size_t)np + nd;
  return 0;
}

int atun_route_table_remove(atun_route_table *t, uint32_t agent) {
  if (agent >= t->settings.max_agents) return ATUN_ERR_INVALID_ARGUMENT;
  agent_clear(t, agent);
  return 0;
}

size_t atun_route_table_size(const atun_route_table *t) { return t->nroutes; }

size_t atun_route_table_agent_nprefixes(const atun_route_table *t,
                                        uint32_t agent) {
  return agent < t->settings.max_agents ? t->agents[agent].nprefixes : 0;
}

size_t atun_route_table_agent_ndomains(const atun_route_table *t,
                                       uint32_t agent) {
  return agent < t->settings.max_agents ? t->agents[agent].ndomains : 0;
}

static void tnode_prefix(atun_prefix *p, const tnode *n, unsigned slot) {
  unsigned depth = slot_depth(slot);
  uint64_t key[2] = {n->key[0], n->key[1]};
  if (depth > 0) {
    uint64_t bits = slot + 1 - (1u << depth);
    key[n->len / 64] |= bits << (64 - n->len % 64 - depth);
  }
  key_addr(&p->addr, key, n->fam);
  p->len = (uint8_t)(n->len + depth);
}

int atun_route_table_agent_routes(const atun_route_table *t, uint32_t agent,
                                  atun_prefix *prefixes, size_t prefixes_cap,
                                  atun_route_domain *domains,
                                  size_t domains_cap) {
  if (agent >= t->settings.max_agents) return ATUN_ERR_INVALID_ARGUMENT;
  const agent_routes *ar = &t->agents[agent];
  if (prefixes_cap < ar->nprefixes || domains_cap < ar->ndomains)
    return ATUN_ERR_NOBUF;
  for (uint32_t i = 0; i < ar->nprefixes; ++i) {
    tnode_prefix(&prefixes[i], ar->block[i].node.t, ar->block[i].slot);
  }
  for (uint32_t i = 0; i < ar->ndomains; ++i) {
    const rentry *e = &ar->block[ar->nprefixes + i];
    memset(&domains[i], 0, sizeof(domains[i]));
    memcpy(domains[i].name, e->node.d->name, e->node.d->len + 1);
    domains[i].auto_detected = e->auto_detected;
  }
  return 0;
}

/* --- lookup --------------------------------------------------------------- */

typedef struct pick {
  uint32_t agent;
  atun_route_health health;
} pick;

typedef struct collector {
  atun_route_candidate *out;
  size_t cap;
  size_t n;
  atun_route_health_fn health_cb;
  void *user_data;
} collector;

#define LABELS_MAX ((ATUN_ROUTE_NAME_MAX + 1) / 2)

static int pick_cmp(const pick *a, const pick *b) {
  return atun_route_health_cmp(&a->health, a->agent, &b->health, b->agent);
}

/* An agent is listed once, at its most specific route. */
static int already_chosen(const collector *c, uint32_t agent) {
  for (size_t i = 0; i < c->n; ++i)
    if (c->out[i].agent == agent) return 1;
  return 0;
}

/* Fills |*p| for |agent|; nonzero if it is eligible and not listed yet. */
static int pick_fill(const collector *c, uint32_t agent, pick *p) {
  if (already_chosen(c, agent)) return 0;
  memset(p, 0, sizeof(*p));
  p->agent = agent;
  c->health_cb(agent, &p->health, c->user_data);
  return p->health.eligible != 0;
}

/* Keeps the |room| best eligible agents of |l| in |level|, sorted; returns
 * how many it kept. */
static size_t level_pick(const collector *c, const rlist *l, pick *level,
                         size_t room) {
  size_t k = 0;
  for (uint32_t i = 0; i < l->count; ++i) {
    pick p;
    if (!pick_fill(c, l->item[i].agent, &p)) continue;
    size_t pos;
    if (k < room)
      pos = k++;
    else if (pick_cmp(&p, &level[room - 1]) < 0)
      pos = room - 1;
    else
      continue;
    while (pos > 0 && pick_cmp(&p, &level[pos - 1]) < 0) {
      level[pos] = level[pos - 1];
      --pos;
    }
    level[pos] = p;
  }
  return k;
}

/* Appends the agents of one route, |l|'s or only |single| when |l| is NULL,
 * to the candidates; returns the first one added and their count in |*pk|.
 */
static atun_route_candidate *collect_level(collector *c, const rlist *l,
                                           uint32_t single, size_t *pk) {
  atun_route_candidate *first = &c->out[c->n];
  *pk = 0;
  if (l == NULL) {
    /* The common single agent: nothing to order, and the callback writes
     * straight into the candidate (copying what it just wrote stalls on
     * store forwarding). */
    if (already_chosen(c, single)) return first;
    memset(&first->health, 0, sizeof(first->health));
    c->health_cb(single, &first->health, c->user_data);
    if (!first->health.eligible) return first;
    first->agent = single;
    ++c->n;
    *pk = 1;
    return first;
  }
  pick level[ATUN_ROUTE_CANDIDATES_MAX];
  size_t k = level_pick(c, l, level, c->cap - c->n);
  for (size_t i = 0; i < k; ++i) {
    atun_route_candidate *cand = &c->out[c->n + i];
    cand->agent = level[i].agent;
    cand->health = level[i].health;
  }
  c->n += k;
  *pk = k;
  return first;
}

static void collect_prefix(collector *c, const tnode *n, unsigned slot) {
  size_t k;
  const rlist *l = (n->multi & (1u << slot)) ? n->slot[slot] : NULL;
  atun_route_candidate *cand = collect_level(c, l, n->first[slot], &k);
  for (size_t i = 0; i < k; ++i) {
    cand[i].match = ATUN_ROUTE_MATCH_PREFIX;
    tnode_prefix(&cand[i].prefix, n, slot);
    cand[i].domain[0] = '\0';
  }
}

static void collect_domain(collector *c, const dnode *d) {
  size_t k;
  atun_route_candidate *cand =
      collect_level(c, d->multi ? d->list : NULL, d->first, &k);
  for (size_t i = 0; i < k; ++i) {
    cand[i].match = ATUN_ROUTE_MATCH_DOMAIN;
    memset(&cand[i].prefix, 0, sizeof(cand[i].prefix));
    memcpy(cand[i].domain, d->name, d->len + 1);
  }
}

/* The routes that contain a target, from the broadest to the most
 * specific: at most one per length. */
typedef struct hitlist {
  struct {
    const tnode *node;
    unsigned slot;
  } hit[128 + 1];
  size_t n;
} hitlist;

/* Records the routes of |n|, which covers |key|, that contain |key|. */
static void node_hits(const tnode *n, const uint64_t key[2], unsigned maxlen,
                      hitlist *h) {
  unsigned room = maxlen - n->len;
  unsigned depth_max = room < STRIDE ? room : STRIDE - 1;
  for (unsigned d = 0; n->used != 0 && d <= depth_max; ++d) {
    unsigned slot = slot_index(d, key_bits(key, n->len, d));
    if (n->used & (1u << slot)) {
      /* Fetch the agents while the walk goes on: the cache misses then
       * overlap instead of adding up. */
      if (n->multi & (1u << slot))
        __builtin_prefetch(n->slot[slot]);
      else
        __builtin_prefetch(&n->first[slot]);
      h->hit[h->n].node = n;
      h->hit[h->n++].slot = slot;
    }
  }
}

/* Every node on the path that covers the target may hold matches, at most
 * one per length; the walk stops at the first node that does not.  A leaf
 * ends it too, before its child array costs a cache line. */
static void walk(const tnode *n, const uint64_t key[2], unsigned maxlen,
                 hitlist *h) {
  while (n != NULL && node_covers(n, key)) {
    node_hits(n, key, maxlen, h);
    if (maxlen - n->len < STRIDE || n->nchildren == 0) break;
    n = n->child[nibble(key, n->len)];
  }
}

/* The nodes above /16 come straight from the index, and so does the first
 * one at or below it, so that instead of a chain of five dependent cache
 * misses down to /16 the lookup waits for about one. */
static void walk_v4(const atun_route_table *t, const uint64_t key[2],
                    hitlist *h) {
  if (t->v4_index == NULL) return; /* no IPv4 route */
  const tnode *upper[V4_INDEX_LEVELS];
  upper[0] = t->root[FAMILY_V4];
  for (unsigned level = 1; level < V4_INDEX_LEVELS; ++level) {
    upper[level] = *v4_entry(t, level, key[0]);
    if (upper[level] != NULL) __builtin_prefetch(upper[level]);
  }
  const tnode *below = *v4_entry(t, V4_INDEX_LEVELS, key[0]);
  if (below != NULL) __builtin_prefetch(below);
  unsigned maxlen = family_maxlen(FAMILY_V4);
  for (unsigned level = 0; level < V4_INDEX_LEVELS; ++level)
    if (upper[level] != NULL) node_hits(upper[level], key, maxlen, h);
  walk(below, key, maxlen, h);
}

static void lookup_addr(const atun_route_table *t, const atun_addr *a,
                        collector *c) {
  uint64_t key[2];
  addr_key(key, a);
  hitlist h;
  h.n = 0;
  if (a->family == ATUN_AF_INET)
    walk_v4(t, key, &h);
  else
    walk(t->root[FAMILY_V6], key, family_maxlen(FAMILY_V6), &h);
  for (size_t i = h.n; i > 0 && c->n < c->cap; --i)
    collect_prefix(c, h.hit[i - 1].node, h.hit[i - 1].slot);
}

static void lookup_name(const atun_route_table *t, const char *name, size_t len,
                        collector *c) {
  /* One pass from the end hashes every suffix that starts a label. */
  size_t starts[LABELS_MAX];
  uint64_t hashes[LABELS_MAX];
  size_t ns = 0;
  uint64_t h = FNV_OFFSET;
  for (size_t i = len; i > 0; --i) {
    h ^= (uint8_t)name[i - 1];
    h *= FNV_PRIME;
    if (i == 1 || name[i - 2] == '.') {
      ATUN_ASSERT(ns < LABELS_MAX);
      starts[ns] = i - 1;
      hashes[ns++] = h;
      __builtin_prefetch(&t->buckets[h & (t->nbuckets - 1)]);
    }
  }
  for (size_t j = ns; j > 0 && c->n < c->cap; --j) {
    size_t s = starts[j - 1];
    const dnode *d =
        t->buckets[dnode_probe(t, name + s, len - s, hashes[j - 1])].node;
    if (d != NULL) collect_domain(c, d);
  }
}

ssize_t atun_route_table_lookup(const atun_route_table *t,
                                const atun_route_target *target,
                                atun_route_health_fn health_cb, void *user_data,
                                atun_route_candidate *out, size_t cap) {
  if (target == NULL || health_cb == NULL || out == NULL || cap == 0)
    return ATUN_ERR_INVALID_ARGUMENT;
  collector c = {
      out, cap < ATUN_ROUTE_CANDIDATES_MAX ? cap : ATUN_ROUTE_CANDIDATES_MAX, 0,
      health_cb, user_data};
  if (target->kind == ATUN_ROUTE_TARGET_ADDR) {
    atun_addr a = target->addr;
    atun_addr_normalize(&a);
    if (a.family != ATUN_AF_INET && a.family != ATUN_AF_INET6)
      return ATUN_ERR_INVALID_ARGUMENT;
    lookup_addr(t, &a, &c);
  } else if (target->kind == ATUN_ROUTE_TARGET_NAME) {
    char name[ATUN_ROUTE_NAME_MAX + 1];
    ssize_t len =
        atun_route_name_normalize(name, target->name, target->namelen);
    if (len < 0) return len;
    lookup_name(t, name, (size_t)len, &c);
  } else {
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  return (ssize_t)c.n;
}
