#include "evq.h"

static int before(const sim_event *a, const sim_event *b) {
  if (a->at != b->at) return a->at < b->at;
  return a->seq < b->seq;
}

static void swap(sim_event *a, sim_event *b) {
  sim_event t = *a;
  *a = *b;
  *b = t;
}

void sim_evq_init(sim_evq *q, const atun_mem *mem, size_t cap_max) {
  q->mem = mem;
  q->heap = NULL;
  q->len = 0;
  q->cap = 0;
  q->cap_max = cap_max;
  q->next_seq = 0;
}

void sim_evq_free(sim_evq *q) {
  atun_mem_free(q->mem, q->heap);
  q->heap = NULL;
  q->len = q->cap = 0;
}

static int grow(sim_evq *q) {
  size_t ncap = q->cap ? q->cap * 2 : 64;
  if (ncap > q->cap_max) ncap = q->cap_max;
  sim_event *h = atun_mem_realloc(q->mem, q->heap, ncap * sizeof(*h));
  if (h == NULL) return ATUN_ERR_NOMEM;
  q->heap = h;
  q->cap = ncap;
  return 0;
}

int sim_evq_push(sim_evq *q, atun_tstamp at, uint32_t kind, uint32_t node, void *data) {
  if (q->len == q->cap_max) return ATUN_ERR_FULL;
  if (q->len == q->cap) {
    int rv = grow(q);
    if (rv != 0) return rv;
  }
  size_t i = q->len++;
  q->heap[i] = (sim_event){at, q->next_seq++, kind, node, data};
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(&q->heap[i], &q->heap[parent])) break;
    swap(&q->heap[i], &q->heap[parent]);
    i = parent;
  }
  return 0;
}

int sim_evq_pop(sim_evq *q, sim_event *out) {
  if (q->len == 0) return ATUN_ERR_NOT_FOUND;
  *out = q->heap[0];
  q->heap[0] = q->heap[--q->len];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < q->len && before(&q->heap[l], &q->heap[m])) m = l;
    if (r < q->len && before(&q->heap[r], &q->heap[m])) m = r;
    if (m == i) break;
    swap(&q->heap[i], &q->heap[m]);
    i = m;
  }
  return 0;
}

atun_tstamp sim_evq_next_at(const sim_evq *q) {
  return q->len ? q->heap[0].at : ATUN_TSTAMP_MAX;
}
