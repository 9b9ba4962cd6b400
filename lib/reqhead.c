#include "reqhead.h"

#include <string.h>

static int on_message_begin(http_parser *p) {
  tunnel__reqhead *r = p->data;
  r->target_len = 0;
  r->target_long = 0;
  r->target[0] = '\0';
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  tunnel__reqhead *r = p->data;
  if (r->target_long || r->target_len + len >= sizeof r->target) {
    /* Too long: kept empty, whatever pieces it came in. */
    r->target_long = 1;
    r->target_len = 0;
    r->target[0] = '\0';
    return 0;
  }
  memcpy(r->target + r->target_len, at, len);
  r->target_len += len;
  r->target[r->target_len] = '\0';
  return 0;
}

static int on_message_complete(http_parser *p) {
  tunnel__reqhead *r = p->data;
  r->complete = 1;
  http_parser_pause(p, 1); /* one request at a time */
  return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

void tunnel__reqhead_init(tunnel__reqhead *r, size_t max_request) {
  memset(r, 0, sizeof *r);
  http_parser_init(&r->parser, HTTP_REQUEST);
  r->parser.data = r;
  r->max_request = max_request;
}

tunnel__reqhead_event tunnel__reqhead_feed(tunnel__reqhead *r,
                                           const char *data, size_t len,
                                           size_t *used) {
  *used = 0;
  if (r->complete) {
    /* The previous request was answered: on to the next. */
    r->complete = 0;
    r->bytes = 0;
    http_parser_pause(&r->parser, 0);
  }
  while (len) {
    size_t n = http_parser_execute(&r->parser, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
    r->bytes += n;
    *used += n;
    data += n;
    len -= n;
    if (e != HPE_OK && e != HPE_PAUSED)
      return TUNNEL__REQHEAD_MALFORMED;
    if (r->bytes > r->max_request)
      return TUNNEL__REQHEAD_TOO_LARGE;
    if (r->complete)
      return TUNNEL__REQHEAD_REQUEST;
    if (n == 0)
      return TUNNEL__REQHEAD_MALFORMED; /* took nothing: it never will */
  }
  return TUNNEL__REQHEAD_MORE;
}

int tunnel__reqhead_method(const tunnel__reqhead *r) {
  return (int)r->parser.method;
}

int tunnel__reqhead_keep_alive(const tunnel__reqhead *r) {
  return http_should_keep_alive(&r->parser);
}
