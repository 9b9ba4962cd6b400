#include "mem.h"

#include <stdlib.h>
#include <string.h>

static void *libc_malloc(size_t size, void *ud) {
  (void)ud;
  return malloc(size);
}

static void *libc_realloc(void *ptr, size_t size, void *ud) {
  (void)ud;
  return realloc(ptr, size);
}

static void libc_free(void *ptr, void *ud) {
  (void)ud;
  free(ptr);
}

static const tunnel__mem default_mem = {libc_malloc, libc_realloc, libc_free,
                                        NULL};

const tunnel__mem *tunnel__mem_default(void) { return &default_mem; }

void *tunnel__malloc(const tunnel__mem *m, size_t size) {
  return m->malloc_fn(size ? size : 1, m->user_data);
}

void *tunnel__calloc(const tunnel__mem *m, size_t n, size_t size) {
  if (size && n > SIZE_MAX / size)
    return NULL;
  void *p = tunnel__malloc(m, n * size);
  if (p)
    memset(p, 0, n * size);
  return p;
}

void *tunnel__realloc(const tunnel__mem *m, void *ptr, size_t size) {
  return m->realloc_fn(ptr, size ? size : 1, m->user_data);
}

void tunnel__free(const tunnel__mem *m, void *ptr) {
  if (ptr)
    m->free_fn(ptr, m->user_data);
}

char *tunnel__strndup(const tunnel__mem *m, const char *s, size_t len) {
  char *p = tunnel__malloc(m, len + 1);
  if (!p)
    return NULL;
  if (len)
    memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

char *tunnel__strdup(const tunnel__mem *m, const char *s) {
  return tunnel__strndup(m, s, strlen(s));
}

void tunnel__wipe(void *p, size_t n) {
  volatile unsigned char *v = p;
  while (n--)
    *v++ = 0;
}

void tunnel__wipe_string(char *s) {
  if (s)
    tunnel__wipe(s, strlen(s));
}
