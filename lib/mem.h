/* Allocator indirection: every object allocates through the hook it was
 * created with, so embedders can account or bound memory per object. */
#ifndef TUNNEL_LIB_MEM_H
#define TUNNEL_LIB_MEM_H

#include "tunnel/tunnel.h"

typedef struct tunnel__mem {
  tunnel_malloc_fn malloc_fn;
  tunnel_realloc_fn realloc_fn;
  tunnel_free_fn free_fn;
  void *user_data;
} tunnel__mem;

/* The libc allocator. */
const tunnel__mem *tunnel__mem_default(void);

void *tunnel__malloc(const tunnel__mem *m, size_t size);
void *tunnel__calloc(const tunnel__mem *m, size_t n, size_t size);
void *tunnel__realloc(const tunnel__mem *m, void *ptr, size_t size);
void tunnel__free(const tunnel__mem *m, void *ptr);
/* Copies `len` bytes and appends a NUL; NULL on OOM. */
char *tunnel__strndup(const tunnel__mem *m, const char *s, size_t len);
char *tunnel__strdup(const tunnel__mem *m, const char *s);
/* Overwrites secrets before their memory is released (not optimised away). */
void tunnel__wipe(void *p, size_t n);
void tunnel__wipe_string(char *s); /* NULL is fine */

#endif
