#include "anon.h"

#include <stdio.h>
#include <string.h>

void tunnel__anon_add(tunnel__anon_set *set, tunnel__anon *a,
                      const char *addr, uint32_t cost,
                      void (*shed)(tunnel__anon *a)) {
  snprintf(a->addr, sizeof a->addr, "%s", addr ? addr : "");
  a->cost = cost;
  a->shed = shed;
  a->next = NULL;
  a->prev = set->tail;
  if (set->tail)
    set->tail->next = a;
  else
    set->head = a;
  set->tail = a;
  a->linked = 1;
  set->count++;
  set->bytes += cost;
}

void tunnel__anon_remove(tunnel__anon_set *set, tunnel__anon *a) {
  if (!a->linked)
    return;
  if (a->prev)
    a->prev->next = a->next;
  else
    set->head = a->next;
  if (a->next)
    a->next->prev = a->prev;
  else
    set->tail = a->prev;
  a->prev = a->next = NULL;
  a->linked = 0;
  set->count--;
  set->bytes -= a->cost;
}

/* Closes the owner, which unlinks (and may free) `a`. 0 if it did not
 * unlink: the callers stop rather than loop forever. */
static int shed(tunnel__anon_set *set, tunnel__anon *a) {
  uint32_t before = set->count;
  a->shed(a);
  return set->count < before;
}

uint32_t tunnel__anon_make_room(tunnel__anon_set *set,
                                const tunnel__anon_limits *lim,
                                const char *addr, uint32_t cost) {
  uint32_t n = 0;
  /* A linear walk: the set holds at most `max` entries, and a new peer is
   * rare next to the traffic of authenticated ones. */
  uint32_t same = 0;
  for (tunnel__anon *a = set->head; a; a = a->next)
    same += strcmp(a->addr, addr) == 0;
  for (tunnel__anon *a = set->head, *next; a && same >= lim->per_addr;
       a = next) {
    next = a->next;
    if (strcmp(a->addr, addr) == 0) {
      if (!shed(set, a))
        return n;
      same--;
      n++;
    }
  }
  while (set->head &&
         (set->count >= lim->max || set->bytes + cost > lim->bytes)) {
    if (!shed(set, set->head))
      return n;
    n++;
  }
  return n;
}
