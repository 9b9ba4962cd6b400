#include "bufq.h"

#include <string.h>

struct tunnel__chunk {
  tunnel__chunk *next;
  size_t off; /* first unconsumed byte */
  size_t len; /* bytes written */
  size_t cap;
  uint8_t data[];
};

void tunnel__bufq_init(tunnel__bufq *q, const tunnel__mem *mem,
                       size_t chunk_size) {
  memset(q, 0, sizeof *q);
  q->mem = mem;
  q->chunk_size = chunk_size ? chunk_size : 16384;
}

void tunnel__bufq_free(tunnel__bufq *q) {
  tunnel__chunk *c = q->head;
  while (c) {
    tunnel__chunk *next = c->next;
    tunnel__free(q->mem, c);
    c = next;
  }
  tunnel__free(q->mem, q->spare);
  q->head = q->tail = q->spare = NULL;
  q->size = 0;
}

static tunnel__chunk *chunk_new(tunnel__bufq *q, size_t need) {
  size_t cap = need > q->chunk_size ? need : q->chunk_size;
  tunnel__chunk *c;
  if (q->spare && q->spare->cap >= need) {
    c = q->spare;
    q->spare = NULL;
  } else {
    c = tunnel__malloc(q->mem, sizeof *c + cap);
    if (!c)
      return NULL;
    c->cap = cap;
  }
  c->next = NULL;
  c->off = c->len = 0;
  return c;
}

int tunnel__bufq_appendv(tunnel__bufq *q, const tunnel__iov *v, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++)
    len += v[i].len;
  if (len == 0)
    return 0;
  size_t room = q->tail ? q->tail->cap - q->tail->len : 0;
  /* Allocate first so that a failure leaves the queue untouched. */
  tunnel__chunk *fresh = NULL;
  if (room < len) {
    fresh = chunk_new(q, len - room);
    if (!fresh)
      return TUNNEL_ENOMEM;
  }
  tunnel__chunk *c = q->tail && room ? q->tail : fresh;
  for (size_t i = 0; i < n; i++) {
    const uint8_t *p = v[i].base;
    size_t left = v[i].len;
    while (left) {
      if (c->len == c->cap)
        c = fresh;
      size_t k = c->cap - c->len < left ? c->cap - c->len : left;
      memcpy(c->data + c->len, p, k);
      c->len += k;
      p += k;
      left -= k;
    }
  }
  q->size += len;
  if (fresh) {
    if (q->tail)
      q->tail->next = fresh;
    else
      q->head = fresh;
    q->tail = fresh;
  }
  return 0;
}

int tunnel__bufq_append(tunnel__bufq *q, const void *data, size_t len) {
  tunnel__iov v = {data, len};
  return tunnel__bufq_appendv(q, &v, 1);
}

size_t tunnel__bufq_iov(const tunnel__bufq *q, tunnel__iov *iov, size_t max) {
  size_t n = 0;
  for (tunnel__chunk *c = q->head; c && n < max; c = c->next) {
    if (c->len == c->off)
      continue;
    iov[n].base = c->data + c->off;
    iov[n].len = c->len - c->off;
    n++;
  }
  return n;
}

void tunnel__bufq_consume(tunnel__bufq *q, size_t n) {
  if (n > q->size)
    n = q->size;
  q->size -= n;
  while (n || (q->head && q->head->off == q->head->len)) {
    tunnel__chunk *c = q->head;
    if (!c)
      break;
    size_t avail = c->len - c->off;
    size_t take = avail < n ? avail : n;
    c->off += take;
    n -= take;
    if (c->off < c->len)
      break;
    /* Keep the tail chunk while it still has room: appends may follow. */
    if (c == q->tail && c->len < c->cap) {
      c->off = c->len = 0;
      break;
    }
    q->head = c->next;
    if (!q->head)
      q->tail = NULL;
    if (!q->spare && c->cap == q->chunk_size)
      q->spare = c;
    else
      tunnel__free(q->mem, c);
  }
}
