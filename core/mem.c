#include <stdlib.h>

#include "atun.h"

static void *default_malloc(size_t size, void *user_data) {
  (void)user_data;
  return malloc(size);
}

static void default_free(void *ptr, void *user_data) {
  (void)user_data;
  free(ptr);
}

static void *default_calloc(size_t nmemb, size_t size, void *user_data) {
  (void)user_data;
  return calloc(nmemb, size);
}

static void *default_realloc(void *ptr, size_t size, void *user_data) {
  (void)user_data;
  return realloc(ptr, size);
}

static const atun_mem mem_default = {NULL, default_malloc, default_free,
                                     default_calloc, default_realloc};

const atun_mem *atun_mem_default(void) { return &mem_default; }

void *atun_mem_malloc(const atun_mem *mem, size_t size) {
  return mem->malloc(size, mem->user_data);
}

void atun_mem_free(const atun_mem *mem, void *ptr) {
  mem->free(ptr, mem->user_data);
}

void *atun_mem_calloc(const atun_mem *mem, size_t nmemb, size_t size) {
  return mem->calloc(nmemb, size, mem->user_data);
}

void *atun_mem_realloc(const atun_mem *mem, void *ptr, size_t size) {
  return mem->realloc(ptr, size, mem->user_data);
}
