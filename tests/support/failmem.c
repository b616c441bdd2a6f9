#include <stdlib.h>
#include <string.h>

#include "support.h"

/* Each block carries its size in a header so live bytes can be tracked. */
typedef struct header {
  size_t size;
  size_t pad; /* keeps the payload 16-byte aligned */
} header;

static int should_fail(atun_failmem *fm) {
  if (fm->fail_after < 0) return 0;
  if (fm->fail_after > 0) {
    --fm->fail_after;
    return 0;
  }
  if (fm->fail_once) fm->fail_after = -1;
  return 1;
}

static void *fm_malloc(size_t size, void *ud) {
  atun_failmem *fm = ud;
  if (should_fail(fm)) {
    ++fm->failures;
    return NULL;
  }
  header *h = malloc(sizeof(header) + size);
  if (h == NULL) return NULL;
  h->size = size;
  ++fm->allocs;
  ++fm->live;
  fm->live_bytes += size;
  if (fm->live_bytes > fm->peak_bytes) fm->peak_bytes = fm->live_bytes;
  return h + 1;
}

static void fm_free(void *ptr, void *ud) {
  atun_failmem *fm = ud;
  if (ptr == NULL) return;
  header *h = (header *)ptr - 1;
  --fm->live;
  fm->live_bytes -= h->size;
  free(h);
}

static void *fm_calloc(size_t nmemb, size_t size, void *ud) {
  if (size != 0 && nmemb > SIZE_MAX / size) return NULL;
  void *p = fm_malloc(nmemb * size, ud);
  if (p != NULL) memset(p, 0, nmemb * size);
  return p;
}

static void *fm_realloc(void *ptr, size_t size, void *ud) {
  if (ptr == NULL) return fm_malloc(size, ud);
  header *old = (header *)ptr - 1;
  void *p = fm_malloc(size, ud);
  if (p == NULL) return NULL;
  memcpy(p, ptr, old->size < size ? old->size : size);
  fm_free(ptr, ud);
  return p;
}

void atun_failmem_init(atun_failmem *fm, long fail_after) {
  memset(fm, 0, sizeof(*fm));
  fm->mem.user_data = fm;
  fm->mem.malloc = fm_malloc;
  fm->mem.free = fm_free;
  fm->mem.calloc = fm_calloc;
  fm->mem.realloc = fm_realloc;
  fm->fail_after = fail_after;
}

void atun_failmem_arm(atun_failmem *fm, long fail_after, int fail_once) {
  fm->fail_after = fail_after;
  fm->fail_once = fail_once;
}
