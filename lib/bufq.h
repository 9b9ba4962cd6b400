/* A FIFO of bytes stored in fixed chunks. Appending never moves bytes that
 * are already queued, so a caller may hand the iovecs from tunnel__bufq_iov()
 * to an asynchronous write and consume them only when the write completes. */
#ifndef TUNNEL_LIB_BUFQ_H
#define TUNNEL_LIB_BUFQ_H

#include <stddef.h>
#include <stdint.h>

#include "mem.h"

typedef struct tunnel__iov {
  const uint8_t *base;
  size_t len;
} tunnel__iov;

typedef struct tunnel__chunk tunnel__chunk;

typedef struct tunnel__bufq {
  const tunnel__mem *mem;
  tunnel__chunk *head;
  tunnel__chunk *tail;
  tunnel__chunk *spare; /* one emptied chunk kept to avoid malloc churn */
  size_t size;          /* bytes queued */
  size_t chunk_size;
} tunnel__bufq;

void tunnel__bufq_init(tunnel__bufq *q, const tunnel__mem *mem,
                       size_t chunk_size);
void tunnel__bufq_free(tunnel__bufq *q);
/* All or nothing: TUNNEL_ENOMEM leaves the queue unchanged. */
int tunnel__bufq_append(tunnel__bufq *q, const void *data, size_t len);
/* Appends several pieces, all or nothing (a frame header and its payload
 * must never be queued apart). */
int tunnel__bufq_appendv(tunnel__bufq *q, const tunnel__iov *v, size_t n);
/* Fills up to `max` iovecs from the head; returns how many. */
size_t tunnel__bufq_iov(const tunnel__bufq *q, tunnel__iov *iov, size_t max);
/* Drops `n` bytes from the head (n <= size). */
void tunnel__bufq_consume(tunnel__bufq *q, size_t n);

#endif
