/* Reads HTTP/1.x requests one at a time off a byte stream, for the small
 * endpoints that only need the method and the target (the metrics port):
 * bounded in head size and target length, with http-parser doing the
 * parsing. Sans-I/O. */
#ifndef TUNNEL_LIB_REQHEAD_H
#define TUNNEL_LIB_REQHEAD_H

#include <http_parser.h>
#include <stddef.h>

#define TUNNEL__REQHEAD_TARGET_MAX 256u

typedef enum tunnel__reqhead_event {
  TUNNEL__REQHEAD_MORE,      /* everything taken; a request is not complete */
  TUNNEL__REQHEAD_REQUEST,   /* a whole request: answer it, then feed on */
  TUNNEL__REQHEAD_MALFORMED, /* not HTTP: answer 400 and close */
  TUNNEL__REQHEAD_TOO_LARGE  /* beyond the size limit: 400 and close */
} tunnel__reqhead_event;

typedef struct tunnel__reqhead {
  http_parser parser;
  size_t max_request; /* bytes of one request, head and body */
  size_t bytes;       /* of the current request */
  int complete;
  int target_long;    /* the target did not fit: treat as bad */
  size_t target_len;
  char target[TUNNEL__REQHEAD_TARGET_MAX];
} tunnel__reqhead;

void tunnel__reqhead_init(tunnel__reqhead *r, size_t max_request);
/* Takes bytes until a request completes or fails; *used says how many
 * (the rest belongs to the next call). After REQUEST, the method, the
 * target and keep-alive describe it until the next call. */
tunnel__reqhead_event tunnel__reqhead_feed(tunnel__reqhead *r,
                                           const char *data, size_t len,
                                           size_t *used);
int tunnel__reqhead_method(const tunnel__reqhead *r); /* enum http_method */
int tunnel__reqhead_keep_alive(const tunnel__reqhead *r);

#endif
