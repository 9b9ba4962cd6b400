#include "msg.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "wire.h"

/* Largest magnitude at which every JSON integer literal maps to a distinct
 * double; beyond it cJSON would round silently. */
#define MAX_SAFE_INT 9007199254740991.0

enum { K_STR, K_I64, K_U16, K_BOOL, K_STRS, K_MAP };

/* Every field once: the JSON key is the member name for all of frp's. */
#define MSG_FIELDS(X)                                                          \
  X(VERSION, version, STR)                                                     \
  X(HOSTNAME, hostname, STR)                                                   \
  X(OS, os, STR)                                                               \
  X(ARCH, arch, STR)                                                           \
  X(USER, user, STR)                                                           \
  X(PRIVILEGE_KEY, privilege_key, STR)                                         \
  X(TIMESTAMP, timestamp, I64)                                                 \
  X(RUN_ID, run_id, STR)                                                       \
  X(METAS, metas, MAP)                                                         \
  X(POOL_COUNT, pool_count, I64)                                               \
  X(ERROR, error, STR)                                                         \
  X(PROXY_NAME, proxy_name, STR)                                               \
  X(PROXY_TYPE, proxy_type, STR)                                               \
  X(USE_ENCRYPTION, use_encryption, BOOL)                                      \
  X(USE_COMPRESSION, use_compression, BOOL)                                    \
  X(BANDWIDTH_LIMIT, bandwidth_limit, STR)                                     \
  X(BANDWIDTH_LIMIT_MODE, bandwidth_limit_mode, STR)                           \
  X(GROUP, group, STR)                                                         \
  X(GROUP_KEY, group_key, STR)                                                 \
  X(REMOTE_PORT, remote_port, I64)                                             \
  X(CUSTOM_DOMAINS, custom_domains, STRS)                                      \
  X(SUBDOMAIN, subdomain, STR)                                                 \
  X(LOCATIONS, locations, STRS)                                                \
  X(HTTP_USER, http_user, STR)                                                 \
  X(HTTP_PWD, http_pwd, STR)                                                   \
  X(HOST_HEADER_REWRITE, host_header_rewrite, STR)                             \
  X(HEADERS, headers, MAP)                                                     \
  X(ROUTE_BY_HTTP_USER, route_by_http_user, STR)                               \
  X(SK, sk, STR)                                                               \
  X(ALLOW_USERS, allow_users, STRS)                                            \
  X(MULTIPLEXER, multiplexer, STR)                                             \
  X(REMOTE_ADDR, remote_addr, STR)                                             \
  X(SRC_ADDR, src_addr, STR)                                                   \
  X(DST_ADDR, dst_addr, STR)                                                   \
  X(SRC_PORT, src_port, U16)                                                   \
  X(DST_PORT, dst_port, U16)                                                   \
  X(SIGN_KEY, sign_key, STR)

enum {
#define X(id, member, kind) F_##id,
  MSG_FIELDS(X)
#undef X
      F__COUNT
};

typedef struct field_desc {
  const char *name;
  uint8_t kind;
  size_t off;
} field_desc;

static const field_desc fields[F__COUNT] = {
#define X(id, member, kind) {#member, K_##kind, offsetof(tunnel__msg, member)},
    MSG_FIELDS(X)
#undef X
};

/* Per type, its fields in frp's struct order (the order Go emits them). */
static const uint8_t f_login[] = {
    F_VERSION,       F_HOSTNAME,  F_OS,     F_ARCH,  F_USER,
    F_PRIVILEGE_KEY, F_TIMESTAMP, F_RUN_ID, F_METAS, F_POOL_COUNT};
static const uint8_t f_login_resp[] = {F_VERSION, F_RUN_ID, F_ERROR};
static const uint8_t f_new_proxy[] = {F_PROXY_NAME,
                                      F_PROXY_TYPE,
                                      F_USE_ENCRYPTION,
                                      F_USE_COMPRESSION,
                                      F_BANDWIDTH_LIMIT,
                                      F_BANDWIDTH_LIMIT_MODE,
                                      F_GROUP,
                                      F_GROUP_KEY,
                                      F_METAS,
                                      F_REMOTE_PORT,
                                      F_CUSTOM_DOMAINS,
                                      F_SUBDOMAIN,
                                      F_LOCATIONS,
                                      F_HTTP_USER,
                                      F_HTTP_PWD,
                                      F_HOST_HEADER_REWRITE,
                                      F_HEADERS,
                                      F_ROUTE_BY_HTTP_USER,
                                      F_SK,
                                      F_ALLOW_USERS,
                                      F_MULTIPLEXER};
static const uint8_t f_new_proxy_resp[] = {F_PROXY_NAME, F_REMOTE_ADDR,
                                           F_ERROR};
static const uint8_t f_close_proxy[] = {F_PROXY_NAME};
static const uint8_t f_new_work_conn[] = {F_RUN_ID, F_PRIVILEGE_KEY,
                                          F_TIMESTAMP};
static const uint8_t f_start_work_conn[] = {
    F_PROXY_NAME, F_SRC_ADDR, F_DST_ADDR, F_SRC_PORT, F_DST_PORT, F_ERROR};
static const uint8_t f_new_visitor_conn[] = {
    F_RUN_ID,    F_PROXY_NAME,     F_SIGN_KEY,
    F_TIMESTAMP, F_USE_ENCRYPTION, F_USE_COMPRESSION};
static const uint8_t f_new_visitor_conn_resp[] = {F_PROXY_NAME, F_ERROR};
static const uint8_t f_ping[] = {F_PRIVILEGE_KEY, F_TIMESTAMP};
static const uint8_t f_pong[] = {F_ERROR};

typedef struct msg_type {
  uint8_t type;
  const char *name;
  const uint8_t *f;
  size_t n;
} msg_type;

#define T(t, name, arr)                                                        \
  { t, name, arr, sizeof arr / sizeof arr[0] }
#define T0(t, name)                                                            \
  { t, name, NULL, 0 }
static const msg_type types[] = {
    T(TUNNEL__MSG_LOGIN, "Login", f_login),
    T(TUNNEL__MSG_LOGIN_RESP, "LoginResp", f_login_resp),
    T(TUNNEL__MSG_NEW_PROXY, "NewProxy", f_new_proxy),
    T(TUNNEL__MSG_NEW_PROXY_RESP, "NewProxyResp", f_new_proxy_resp),
    T(TUNNEL__MSG_CLOSE_PROXY, "CloseProxy", f_close_proxy),
    T(TUNNEL__MSG_NEW_WORK_CONN, "NewWorkConn", f_new_work_conn),
    T0(TUNNEL__MSG_REQ_WORK_CONN, "ReqWorkConn"),
    T(TUNNEL__MSG_START_WORK_CONN, "StartWorkConn", f_start_work_conn),
    T(TUNNEL__MSG_NEW_VISITOR_CONN, "NewVisitorConn", f_new_visitor_conn),
    T(TUNNEL__MSG_NEW_VISITOR_CONN_RESP, "NewVisitorConnResp",
      f_new_visitor_conn_resp),
    T(TUNNEL__MSG_PING, "Ping", f_ping),
    T(TUNNEL__MSG_PONG, "Pong", f_pong),
    T0(TUNNEL__MSG_UDP_PACKET, "UDPPacket"),
    T0(TUNNEL__MSG_NAT_HOLE_VISITOR, "NatHoleVisitor"),
    T0(TUNNEL__MSG_NAT_HOLE_CLIENT, "NatHoleClient"),
    T0(TUNNEL__MSG_NAT_HOLE_RESP, "NatHoleResp"),
    T0(TUNNEL__MSG_NAT_HOLE_SID, "NatHoleSid"),
    T0(TUNNEL__MSG_NAT_HOLE_REPORT, "NatHoleReport"),
};
#undef T
#undef T0

static const msg_type *find_type(uint8_t type) {
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (types[i].type == type)
      return &types[i];
  return NULL;
}

const char *tunnel__msg_type_name(uint8_t type) {
  const msg_type *t = find_type(type);
  return t ? t->name : NULL;
}

#define AT(m, f, T) ((T *)(void *)((char *)(m) + (f)->off))
#define CAT(m, f, T) ((const T *)(const void *)((const char *)(m) + (f)->off))

/* ------------------------------------------------------------ ownership */

static void strs_free(const tunnel__mem *mem, tunnel__msg_strs *a) {
  for (size_t i = 0; i < a->n; i++)
    tunnel__free(mem, a->v[i]);
  tunnel__free(mem, a->v);
  a->v = NULL;
  a->n = 0;
}

static void map_free(const tunnel__mem *mem, tunnel__msg_map *m) {
  for (size_t i = 0; i < m->n; i++) {
    tunnel__free(mem, m->v[i].key);
    tunnel__free(mem, m->v[i].value);
  }
  tunnel__free(mem, m->v);
  m->v = NULL;
  m->n = 0;
}

void tunnel__msg_init(tunnel__msg *m, uint8_t type) {
  memset(m, 0, sizeof *m);
  m->type = type;
}

void tunnel__msg_clear(const tunnel__mem *mem, tunnel__msg *m) {
  /* A key is good for a while (the allowed clock skew): not left behind. */
  tunnel__wipe_string(m->privilege_key);
  tunnel__wipe_string(m->sign_key);
  for (size_t i = 0; i < F__COUNT; i++) {
    const field_desc *f = &fields[i];
    switch (f->kind) {
    case K_STR:
      tunnel__free(mem, *AT(m, f, char *));
      break;
    case K_STRS:
      strs_free(mem, AT(m, f, tunnel__msg_strs));
      break;
    case K_MAP:
      map_free(mem, AT(m, f, tunnel__msg_map));
      break;
    default:
      break;
    }
  }
  tunnel__msg_init(m, m->type);
}

int tunnel__msg_set_str(const tunnel__mem *mem, char **field, const char *s) {
  char *copy = NULL;
  if (s && !(copy = tunnel__strdup(mem, s)))
    return TUNNEL_ENOMEM;
  tunnel__free(mem, *field);
  *field = copy;
  return 0;
}

int tunnel__msg_strs_push(const tunnel__mem *mem, tunnel__msg_strs *a,
                          const char *s) {
  char *copy = tunnel__strdup(mem, s ? s : "");
  if (!copy)
    return TUNNEL_ENOMEM;
  char **v = a->n < SIZE_MAX / sizeof *v - 1
                 ? tunnel__realloc(mem, a->v, (a->n + 1) * sizeof *v)
                 : NULL;
  if (!v) {
    tunnel__free(mem, copy);
    return TUNNEL_ENOMEM;
  }
  v[a->n++] = copy;
  a->v = v;
  return 0;
}

/* Takes ownership of key and value in every outcome. */
static int map_push_owned(const tunnel__mem *mem, tunnel__msg_map *map,
                          char *key, char *value) {
  tunnel__msg_kv *v =
      key && value && map->n < SIZE_MAX / sizeof *v - 1
          ? tunnel__realloc(mem, map->v, (map->n + 1) * sizeof *v)
          : NULL;
  if (!v) {
    tunnel__free(mem, key);
    tunnel__free(mem, value);
    return TUNNEL_ENOMEM;
  }
  v[map->n].key = key;
  v[map->n].value = value;
  map->n++;
  map->v = v;
  return 0;
}

int tunnel__msg_map_add(const tunnel__mem *mem, tunnel__msg_map *map,
                        const char *key, const char *value) {
  return map_push_owned(mem, map, tunnel__strdup(mem, key ? key : ""),
                        tunnel__strdup(mem, value ? value : ""));
}

static int str_eq(const char *a, const char *b) {
  return strcmp(a ? a : "", b ? b : "") == 0;
}

const char *tunnel__msg_map_get(const tunnel__msg_map *map, const char *key) {
  for (size_t i = map->n; i-- > 0;)
    if (str_eq(map->v[i].key, key))
      return map->v[i].value;
  return NULL;
}

int tunnel__msg_equal(const tunnel__msg *a, const tunnel__msg *b) {
  if (a->type != b->type)
    return 0;
  for (size_t i = 0; i < F__COUNT; i++) {
    const field_desc *f = &fields[i];
    switch (f->kind) {
    case K_STR:
      if (!str_eq(*CAT(a, f, char *), *CAT(b, f, char *)))
        return 0;
      break;
    case K_I64:
      if (*CAT(a, f, int64_t) != *CAT(b, f, int64_t))
        return 0;
      break;
    case K_U16:
      if (*CAT(a, f, uint16_t) != *CAT(b, f, uint16_t))
        return 0;
      break;
    case K_BOOL:
      if (*CAT(a, f, bool) != *CAT(b, f, bool))
        return 0;
      break;
    case K_STRS: {
      const tunnel__msg_strs *x = CAT(a, f, tunnel__msg_strs);
      const tunnel__msg_strs *y = CAT(b, f, tunnel__msg_strs);
      if (x->n != y->n)
        return 0;
      for (size_t j = 0; j < x->n; j++)
        if (!str_eq(x->v[j], y->v[j]))
          return 0;
      break;
    }
    case K_MAP: {
      const tunnel__msg_map *x = CAT(a, f, tunnel__msg_map);
      const tunnel__msg_map *y = CAT(b, f, tunnel__msg_map);
      if (x->n != y->n)
        return 0;
      for (size_t j = 0; j < x->n; j++)
        if (!str_eq(x->v[j].key, y->v[j].key) ||
            !str_eq(x->v[j].value, y->v[j].value))
          return 0;
      break;
    }
    default:
      break;
    }
  }
  return 1;
}

/* ----------------------------------------------------------------- UTF-8 */

/* Length of the well-formed UTF-8 sequence at p, or 0; accepts exactly what
 * Go's utf8.DecodeRune accepts (no overlongs, surrogates or > U+10FFFF), so
 * invalid bytes are replaced one by one as Go replaces them. */
static size_t utf8_seq(const uint8_t *p, size_t n, uint32_t *cp) {
  uint8_t c = p[0];
  size_t len;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2, v = c & 0x1f, min = 0x80;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3, v = c & 0x0f, min = 0x800;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    v = (v << 6) | (p[i] & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
    return 0;
  *cp = v;
  return len;
}

/* Copies a decoded JSON string, replacing each invalid byte with U+FFFD. */
static char *dup_utf8(const tunnel__mem *mem, const char *s) {
  const uint8_t *p = (const uint8_t *)s;
  size_t n = strlen(s), out = 0;
  uint32_t cp;
  for (size_t i = 0; i < n;) {
    size_t k = utf8_seq(p + i, n - i, &cp);
    out += k ? k : 3;
    i += k ? k : 1;
  }
  if (out == n)
    return tunnel__strndup(mem, s, n);
  char *d = tunnel__malloc(mem, out + 1);
  if (!d)
    return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    size_t k = utf8_seq(p + i, n - i, &cp);
    if (k) {
      memcpy(d + o, p + i, k);
      o += k;
      i += k;
    } else {
      memcpy(d + o, "\xef\xbf\xbd", 3);
      o += 3;
      i++;
    }
  }
  d[o] = '\0';
  return d;
}

/* --------------------------------------------------------------- encoding */

typedef struct jbuf {
  const tunnel__mem *mem;
  uint8_t *p;
  size_t len, cap;
  int err;
} jbuf;

static int jb_reserve(jbuf *b, size_t add) {
  if (b->err)
    return 0;
  if (add > SIZE_MAX - b->len) {
    b->err = TUNNEL_ENOMEM;
    return 0;
  }
  size_t need = b->len + add;
  if (need <= b->cap)
    return 1;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  uint8_t *p = tunnel__realloc(b->mem, b->p, cap);
  if (!p) {
    b->err = TUNNEL_ENOMEM;
    return 0;
  }
  b->p = p;
  b->cap = cap;
  return 1;
}

static void jb_put(jbuf *b, const void *d, size_t n) {
  if (jb_reserve(b, n)) {
    memcpy(b->p + b->len, d, n);
    b->len += n;
  }
}

static void jb_byte(jbuf *b, uint8_t c) { jb_put(b, &c, 1); }

/* Escapes as Go's encoding/json does with HTML escaping on (json.Marshal),
 * so our bytes match frp's for the same strings. */
static void jb_str(jbuf *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  const uint8_t *p = (const uint8_t *)(s ? s : "");
  size_t n = strlen((const char *)p);
  jb_byte(b, '"');
  for (size_t i = 0; i < n;) {
    uint8_t c = p[i];
    if (c < 0x80) {
      i++;
      if (c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' &&
          c != '&') {
        jb_byte(b, c);
        continue;
      }
      char e[6] = {'\\', 0, 0, 0, 0, 0};
      size_t en = 2;
      switch (c) {
      case '"':
      case '\\':
        e[1] = (char)c;
        break;
      case '\b':
        e[1] = 'b';
        break;
      case '\f':
        e[1] = 'f';
        break;
      case '\n':
        e[1] = 'n';
        break;
      case '\r':
        e[1] = 'r';
        break;
      case '\t':
        e[1] = 't';
        break;
      default:
        memcpy(e + 1, "u00", 3);
        e[4] = hex[c >> 4];
        e[5] = hex[c & 15];
        en = 6;
        break;
      }
      jb_put(b, e, en);
      continue;
    }
    uint32_t cp;
    size_t k = utf8_seq(p + i, n - i, &cp);
    if (!k) {
      jb_put(b, "\\ufffd", 6);
      i++;
    } else if (cp == 0x2028 || cp == 0x2029) {
      /* Go escapes these because JavaScript treats them as newlines. */
      jb_put(b, cp == 0x2028 ? "\\u2028" : "\\u2029", 6);
      i += k;
    } else {
      jb_put(b, p + i, k);
      i += k;
    }
  }
  jb_byte(b, '"');
}

static int field_empty(const tunnel__msg *m, const field_desc *f) {
  switch (f->kind) {
  case K_STR: {
    const char *s = *CAT(m, f, char *);
    return !s || !*s;
  }
  case K_I64:
    return *CAT(m, f, int64_t) == 0;
  case K_U16:
    return *CAT(m, f, uint16_t) == 0;
  case K_BOOL:
    return !*CAT(m, f, bool);
  case K_STRS:
    return CAT(m, f, tunnel__msg_strs)->n == 0;
  case K_MAP:
    return CAT(m, f, tunnel__msg_map)->n == 0;
  default:
    return 1;
  }
}

/* Decimal text of v into buf (at least 21 bytes), NUL-terminated; returns
 * its length. Not printf: newlib-nano's has no 64-bit conversions (it would
 * print "ld"), and its <inttypes.h> may lack PRId64 under GCC's <stdint.h>. */
static size_t fmt_i64(char *buf, int64_t v) {
  char rev[20];
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  size_t n = 0, len = 0;
  do {
    rev[n++] = (char)('0' + (int)(u % 10));
    u /= 10;
  } while (u);
  if (v < 0)
    buf[len++] = '-';
  while (n)
    buf[len++] = rev[--n];
  buf[len] = '\0';
  return len;
}

static void jb_field(jbuf *b, const tunnel__msg *m, const field_desc *f) {
  char num[24];
  jb_str(b, f->name);
  jb_byte(b, ':');
  switch (f->kind) {
  case K_STR:
    jb_str(b, *CAT(m, f, char *));
    break;
  case K_I64:
    jb_put(b, num, fmt_i64(num, *CAT(m, f, int64_t)));
    break;
  case K_U16:
    snprintf(num, sizeof num, "%u", (unsigned)*CAT(m, f, uint16_t));
    jb_put(b, num, strlen(num));
    break;
  case K_BOOL:
    jb_put(b, "true", 4); /* false is omitted */
    break;
  case K_STRS: {
    const tunnel__msg_strs *a = CAT(m, f, tunnel__msg_strs);
    jb_byte(b, '[');
    for (size_t i = 0; i < a->n; i++) {
      if (i)
        jb_byte(b, ',');
      jb_str(b, a->v[i]);
    }
    jb_byte(b, ']');
    break;
  }
  case K_MAP: {
    const tunnel__msg_map *a = CAT(m, f, tunnel__msg_map);
    jb_byte(b, '{');
    for (size_t i = 0; i < a->n; i++) {
      if (i)
        jb_byte(b, ',');
      jb_str(b, a->v[i].key);
      jb_byte(b, ':');
      jb_str(b, a->v[i].value);
    }
    jb_byte(b, '}');
    break;
  }
  default:
    break;
  }
}

/* Emitted by hand rather than with cJSON_Print: the bytes then match Go's,
 * int64 prints exactly, and memory goes through the caller's allocator. */
int tunnel__msg_encode(const tunnel__mem *mem, const tunnel__msg *m,
                       tunnel__bufq *out) {
  const msg_type *t = find_type(m->type);
  if (!t)
    return TUNNEL_EINVAL;
  jbuf b = {mem, NULL, 0, 0, 0};
  if (jb_reserve(&b, TUNNEL__MSG_HEADER_SIZE))
    b.len = TUNNEL__MSG_HEADER_SIZE;
  jb_byte(&b, '{');
  int first = 1;
  for (size_t i = 0; i < t->n; i++) {
    const field_desc *f = &fields[t->f[i]];
    if (field_empty(m, f))
      continue;
    if (!first)
      jb_byte(&b, ',');
    first = 0;
    jb_field(&b, m, f);
  }
  jb_byte(&b, '}');
  int rc = b.err;
  if (!rc) {
    b.p[0] = m->type;
    tunnel__put64(b.p + 1, (uint64_t)(b.len - TUNNEL__MSG_HEADER_SIZE));
    rc = tunnel__bufq_append(out, b.p, b.len);
  }
  tunnel__free(mem, b.p);
  return rc;
}

/* --------------------------------------------------------------- decoding */

static int is_ws(uint8_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* End of the RFC 8259 number starting at i, or 0 if malformed. */
static size_t scan_number(const uint8_t *p, size_t n, size_t i) {
  if (p[i] == '-')
    i++;
  if (i >= n || !is_digit(p[i]))
    return 0;
  if (p[i++] != '0')
    while (i < n && is_digit(p[i]))
      i++;
  if (i < n && p[i] == '.') {
    if (++i >= n || !is_digit(p[i]))
      return 0;
    while (i < n && is_digit(p[i]))
      i++;
  }
  if (i < n && (p[i] == 'e' || p[i] == 'E')) {
    if (++i < n && (p[i] == '+' || p[i] == '-'))
      i++;
    if (i >= n || !is_digit(p[i]))
      return 0;
    while (i < n && is_digit(p[i]))
      i++;
  }
  /* "01", "1.2.3", "1-" must not pass as two adjacent tokens. */
  if (i < n && (is_digit(p[i]) || p[i] == '.' || p[i] == 'e' || p[i] == 'E' ||
                p[i] == '+' || p[i] == '-'))
    return 0;
  return i;
}

/* Value of the four hex digits at p, or -1. */
static long hex4(const uint8_t *p) {
  long v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t c = p[i];
    if (is_digit(c))
      v = v << 4 | (c - '0');
    else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
      v = v << 4 | ((c | 0x20) - 'a' + 10);
    else
      return -1;
  }
  return v;
}

static int is_surrogate(long u) { return u >= 0xd800 && u <= 0xdfff; }

/* Lexical checks cJSON skips but Go's decoder makes: the body starts with
 * '{' (no BOM), no control bytes outside whitespace, none raw in strings,
 * strict numbers, only JSON's escapes with "\u" taking four hex digits
 * (cJSON would decode "\uzzzz" as a NUL); plus no "\u0000", which would cut
 * a C string short. cJSON then checks the grammar.
 *
 * Go decodes an escaped surrogate that is not a high one followed at once by
 * an escaped low one as U+FFFD; cJSON refuses it. Such escapes are counted
 * in *lone and, when fix is not NULL (a copy of p), rewritten there as
 * "\ufffd": same length, and then cJSON decodes what Go decodes. */
static int json_lex_ok(const uint8_t *p, size_t n, uint8_t *fix, size_t *lone) {
  size_t i = 0;
  *lone = 0;
  while (i < n && is_ws(p[i]))
    i++;
  if (i >= n || p[i] != '{')
    return 0;
  while (i < n) {
    uint8_t c = p[i];
    if (c == '"') {
      for (i++;; i++) {
        if (i >= n || p[i] < 0x20)
          return 0;
        if (p[i] == '"')
          break;
        if (p[i] != '\\')
          continue;
        if (n - i < 2)
          return 0;
        uint8_t e = p[i + 1];
        if (e != 'u') {
          if (!memchr("\"\\/bfnrt", e, 8))
            return 0;
          i++;
          continue;
        }
        long u = n - i >= 6 ? hex4(p + i + 2) : -1;
        if (u <= 0)
          return 0;
        if (is_surrogate(u)) {
          long low = -1;
          if (u <= 0xdbff && n - i >= 12 && p[i + 6] == '\\' && p[i + 7] == 'u')
            low = hex4(p + i + 8);
          if (low >= 0xdc00 && low <= 0xdfff) {
            i += 11; /* a pair: both escapes */
            continue;
          }
          /* Only this escape is replaced; the next one stands alone. */
          ++*lone;
          if (fix)
            memcpy(fix + i, "\\ufffd", 6);
        }
        i += 5;
      }
      i++;
    } else if (c == '-' || is_digit(c)) {
      if (!(i = scan_number(p, n, i)))
        return 0;
    } else {
      if (c < 0x20 && !is_ws(c))
        return 0;
      i++;
    }
  }
  return 1;
}

static int int_ok(double d, double lo, double hi) {
  return d >= lo && d <= hi && d == (double)(int64_t)d;
}

static const field_desc *lookup(const msg_type *t, const char *key) {
  for (size_t i = 0; i < t->n; i++)
    if (strcmp(fields[t->f[i]].name, key) == 0)
      return &fields[t->f[i]];
  return NULL;
}

/* A string element or map value; null decodes to "" as in Go. */
static int elem_str(const tunnel__mem *mem, const cJSON *it, char **out) {
  if (cJSON_IsNull(it))
    *out = tunnel__strdup(mem, "");
  else if (cJSON_IsString(it))
    *out = dup_utf8(mem, it->valuestring);
  else
    return TUNNEL_EPROTO;
  return *out ? 0 : TUNNEL_ENOMEM;
}

static int decode_field(const tunnel__mem *mem, tunnel__msg *m,
                        const field_desc *f, const cJSON *it) {
  switch (f->kind) {
  case K_STR: {
    char *s = NULL;
    int rc = cJSON_IsString(it) ? elem_str(mem, it, &s) : TUNNEL_EPROTO;
    if (rc)
      return rc;
    tunnel__free(mem, *AT(m, f, char *));
    *AT(m, f, char *) = s;
    return 0;
  }
  case K_BOOL:
    if (!cJSON_IsBool(it))
      return TUNNEL_EPROTO;
    *AT(m, f, bool) = cJSON_IsTrue(it);
    return 0;
  case K_I64:
    if (!cJSON_IsNumber(it) ||
        !int_ok(it->valuedouble, -MAX_SAFE_INT, MAX_SAFE_INT))
      return TUNNEL_EPROTO;
    *AT(m, f, int64_t) = (int64_t)it->valuedouble;
    return 0;
  case K_U16:
    if (!cJSON_IsNumber(it) || !int_ok(it->valuedouble, 0, 65535))
      return TUNNEL_EPROTO;
    *AT(m, f, uint16_t) = (uint16_t)it->valuedouble;
    return 0;
  case K_STRS: {
    if (!cJSON_IsArray(it))
      return TUNNEL_EPROTO;
    size_t n = 0;
    for (const cJSON *e = it->child; e; e = e->next)
      n++;
    tunnel__msg_strs a = {NULL, 0};
    if (n && !(a.v = tunnel__calloc(mem, n, sizeof *a.v)))
      return TUNNEL_ENOMEM;
    int rc = 0;
    for (const cJSON *e = it->child; e && !rc; e = e->next)
      if (!(rc = elem_str(mem, e, &a.v[a.n])))
        a.n++;
    if (rc) {
      strs_free(mem, &a);
      return rc;
    }
    /* A repeated key replaces the slice, as in Go. */
    strs_free(mem, AT(m, f, tunnel__msg_strs));
    *AT(m, f, tunnel__msg_strs) = a;
    return 0;
  }
  case K_MAP: {
    if (!cJSON_IsObject(it))
      return TUNNEL_EPROTO;
    /* A repeated key merges into the map, as in Go; entries are appended
     * one by one so the map stays consistent if one fails. */
    tunnel__msg_map *map = AT(m, f, tunnel__msg_map);
    for (const cJSON *e = it->child; e; e = e->next) {
      char *v;
      int rc = elem_str(mem, e, &v);
      if (rc)
        return rc;
      rc = map_push_owned(mem, map, dup_utf8(mem, e->string), v);
      if (rc)
        return rc;
    }
    return 0;
  }
  default:
    return TUNNEL_EPROTO;
  }
}

int tunnel__msg_json_strict(const uint8_t *json, size_t len) {
  size_t lone;
  return json_lex_ok(json, len, NULL, &lone) && lone == 0;
}

int tunnel__msg_decode(const tunnel__mem *mem, uint8_t type,
                       const uint8_t *json, size_t len, tunnel__msg *out) {
  tunnel__msg_init(out, type);
  const msg_type *t = find_type(type);
  size_t lone;
  if (!t || !json_lex_ok(json, len, NULL, &lone))
    return TUNNEL_EPROTO;
  uint8_t *fixed = NULL;
  if (lone) {
    if (!(fixed = tunnel__malloc(mem, len)))
      return TUNNEL_ENOMEM;
    memcpy(fixed, json, len);
    json_lex_ok(json, len, fixed, &lone);
    json = fixed;
  }
  const char *end = NULL;
  /* cJSON allocates with its global hooks; the tree lives only for this
   * call. Its allocation failures are indistinguishable from bad JSON. */
  cJSON *root = cJSON_ParseWithLengthOpts((const char *)json, len, &end, 0);
  int rc = root && cJSON_IsObject(root) && end ? 0 : TUNNEL_EPROTO;
  /* cJSON stops after the value; Go refuses anything but whitespace. */
  for (size_t i = rc ? len : (size_t)((const uint8_t *)end - json); i < len;
       i++)
    if (!is_ws(json[i]))
      rc = TUNNEL_EPROTO;
  tunnel__free(mem, fixed); /* cJSON copied what it keeps */
  if (!root)
    return rc;
  for (const cJSON *it = rc ? NULL : root->child; it && !rc; it = it->next) {
    const field_desc *f = lookup(t, it->string);
    /* Unknown keys are ignored and null leaves a field untouched (Go). */
    if (f && !cJSON_IsNull(it))
      rc = decode_field(mem, out, f, it);
  }
  cJSON_Delete(root);
  if (rc)
    tunnel__msg_clear(mem, out);
  return rc;
}

/* ----------------------------------------------------------------- reader */

/* First allocation for a body that arrives in pieces: most control
 * messages fit, and a peer trickling bytes cannot make it much larger. */
#define BODY_MIN_CAP 256

void tunnel__msg_reader_init(tunnel__msg_reader *r, const tunnel__mem *mem,
                             uint32_t max_body) {
  memset(r, 0, sizeof *r);
  r->mem = mem;
  r->max_body = max_body;
}

static void reader_drop_body(tunnel__msg_reader *r) {
  tunnel__free(r->mem, r->body);
  r->body = NULL;
  r->body_len = 0;
  r->body_cap = 0;
}

void tunnel__msg_reader_free(tunnel__msg_reader *r) { reader_drop_body(r); }

static int reader_fail(tunnel__msg_reader *r, int err, size_t off,
                       size_t *used) {
  *used = off;
  reader_drop_body(r);
  r->err = err;
  return err;
}

/* Makes room for `add` more body bytes (body_len + add <= body_want). The
 * capacity doubles, capped at the announced length, so memory follows what
 * actually arrived while copies stay linear in the body size. */
static int reader_reserve(tunnel__msg_reader *r, size_t add) {
  size_t need = r->body_len + add;
  if (need <= r->body_cap)
    return 0;
  size_t cap = r->body_cap ? r->body_cap : BODY_MIN_CAP;
  while (cap < need)
    cap = cap > r->body_want / 2 ? r->body_want : cap * 2;
  if (cap > r->body_want)
    cap = r->body_want;
  uint8_t *p = tunnel__realloc(r->mem, r->body, cap);
  if (!p)
    return TUNNEL_ENOMEM;
  r->body = p;
  r->body_cap = cap;
  return 0;
}

int tunnel__msg_reader_next(tunnel__msg_reader *r, const uint8_t *data,
                            size_t len, size_t *used, uint8_t *type,
                            const uint8_t **body_out, size_t *body_len) {
  size_t off = 0;
  *used = 0;
  if (r->err)
    return r->err;
  if (r->body && r->body_len == r->body_want)
    reader_drop_body(r); /* the previous message's, handed out */
  while (r->hdr_len < TUNNEL__MSG_HEADER_SIZE) {
    if (off == len) {
      *used = off;
      return 0;
    }
    r->hdr[r->hdr_len++] = data[off++];
    /* Checked at once, as frp does, before waiting for the length. */
    if (r->hdr_len == 1 && !find_type(r->hdr[0]))
      return reader_fail(r, TUNNEL_EPROTO, off, used);
    if (r->hdr_len == TUNNEL__MSG_HEADER_SIZE) {
      /* A negative int64 reads as a huge unsigned value: one test for both. */
      uint64_t want = tunnel__be64(r->hdr + 1);
      if (want > r->max_body)
        return reader_fail(r, TUNNEL_ELIMIT, off, used);
      r->body_want = (size_t)want;
      r->body_len = 0;
    }
  }
  const uint8_t *body;
  size_t avail = len - off;
  if (r->body_want == 0) {
    body = (const uint8_t *)"";
  } else if (r->body_len == 0 && avail >= r->body_want) {
    body = data + off; /* whole body at hand: no copy */
    off += r->body_want;
  } else {
    size_t take = r->body_want - r->body_len;
    if (take > avail)
      take = avail;
    if (take) {
      if (reader_reserve(r, take))
        return reader_fail(r, TUNNEL_ENOMEM, off, used);
      memcpy(r->body + r->body_len, data + off, take);
      r->body_len += take;
      off += take;
    }
    if (r->body_len < r->body_want) {
      *used = off;
      return 0;
    }
    body = r->body;
  }
  r->hdr_len = 0;
  *type = r->hdr[0];
  *body_out = body;
  *body_len = r->body_want;
  *used = off;
  return 1;
}

int tunnel__msg_reader_feed(tunnel__msg_reader *r, const uint8_t *data,
                            size_t len, size_t *used, tunnel__msg *out) {
  uint8_t type;
  const uint8_t *body;
  size_t blen;
  int rc = tunnel__msg_reader_next(r, data, len, used, &type, &body, &blen);
  if (rc != 1)
    return rc;
  rc = tunnel__msg_decode(r->mem, type, body, blen, out);
  reader_drop_body(r);
  if (rc < 0)
    return reader_fail(r, rc, *used, used);
  return 1;
}
