/*
 * frp control messages (wire protocol v1), sans-I/O.
 *
 * Frame: [1 byte type][int64 big-endian body length][JSON body], as
 * golib/msg/json writes it. Bodies are the JSON of frp's pkg/msg structs.
 *
 * Decoding follows Go's encoding/json where it matters for interoperability:
 * unknown keys are ignored, a duplicated key keeps its last value (a
 * duplicated map merges), null leaves a field unset, invalid UTF-8 in strings
 * becomes U+FFFD. Keys match exactly (Go would also match case-insensitively;
 * frp never emits other spellings). Strict JSON is required: trailing bytes,
 * raw control characters, "01" or a BOM are protocol errors, as in Go.
 * Strings containing "\u0000" are rejected because fields are C strings.
 * An escaped UTF-16 surrogate that is not half of a pair decodes to U+FFFD,
 * one per escape, as in Go.
 *
 * Integers arrive through cJSON as doubles, so integer fields accept only
 * integral values within +-(2^53 - 1), where every JSON integer literal is
 * represented exactly (a timestamp round-trips exactly in that range; larger
 * literals are refused rather than rounded). Ports accept 0..65535. cJSON
 * hides the literal, so "1e3" or "1.0" pass as integers where Go refuses.
 *
 * Known types without typed fields: UDPPacket and frp's NatHole* messages.
 * Their bodies are checked to be JSON objects and otherwise dropped; they
 * encode as "{}". Their fields arrive with UDP proxies and xtcp.
 *
 * Encoding mirrors Go's omitempty: NULL or empty strings, zero numbers,
 * false, and empty arrays or maps are omitted. Keys are emitted in frp's
 * struct order; map entries in stored order (Go sorts them; peers do not
 * care). Strings are escaped as Go escapes them (<, >, &, U+2028/9 too).
 */
#ifndef TUNNEL_LIB_MSG_H
#define TUNNEL_LIB_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bufq.h"
#include "mem.h"

#define TUNNEL__MSG_HEADER_SIZE 9

enum {
  TUNNEL__MSG_LOGIN = 'o',
  TUNNEL__MSG_LOGIN_RESP = '1',
  TUNNEL__MSG_NEW_PROXY = 'p',
  TUNNEL__MSG_NEW_PROXY_RESP = '2',
  TUNNEL__MSG_CLOSE_PROXY = 'c',
  TUNNEL__MSG_NEW_WORK_CONN = 'w',
  TUNNEL__MSG_REQ_WORK_CONN = 'r',
  TUNNEL__MSG_START_WORK_CONN = 's',
  TUNNEL__MSG_NEW_VISITOR_CONN = 'v',
  TUNNEL__MSG_NEW_VISITOR_CONN_RESP = '3',
  TUNNEL__MSG_PING = 'h',
  TUNNEL__MSG_PONG = '4',
  TUNNEL__MSG_UDP_PACKET = 'u',       /* known, fields not decoded */
  TUNNEL__MSG_NAT_HOLE_VISITOR = 'i', /* known, fields not decoded */
  TUNNEL__MSG_NAT_HOLE_CLIENT = 'n',  /* known, fields not decoded */
  TUNNEL__MSG_NAT_HOLE_RESP = 'm',    /* known, fields not decoded */
  TUNNEL__MSG_NAT_HOLE_SID = '5',     /* known, fields not decoded */
  TUNNEL__MSG_NAT_HOLE_REPORT = '6'   /* known, fields not decoded */
};

/* Owned array of owned strings; an element is never NULL after decoding. */
typedef struct tunnel__msg_strs {
  char **v;
  size_t n;
} tunnel__msg_strs;

typedef struct tunnel__msg_kv {
  char *key;
  char *value;
} tunnel__msg_kv;

/* Owned map<string,string> in arrival order. Duplicated keys are kept;
 * tunnel__msg_map_get() returns the last, which is the one Go would keep. */
typedef struct tunnel__msg_map {
  tunnel__msg_kv *v;
  size_t n;
} tunnel__msg_map;

/* One flat struct for every type: a field not used by `type` stays NULL/0
 * and is neither encoded nor filled by decoding. All pointers are owned and
 * allocated with the tunnel__mem passed to the calls below. */
typedef struct tunnel__msg {
  uint8_t type;

  /* Login, LoginResp, NewWorkConn, NewVisitorConn, Ping */
  char *version;         /* version */
  char *hostname;        /* hostname */
  char *os;              /* os */
  char *arch;            /* arch */
  char *user;            /* user */
  char *privilege_key;   /* privilege_key */
  int64_t timestamp;     /* timestamp */
  char *run_id;          /* run_id */
  tunnel__msg_map metas; /* metas (Login and NewProxy) */
  int64_t pool_count;    /* pool_count */

  /* LoginResp, NewProxyResp, StartWorkConn, NewVisitorConnResp, Pong */
  char *error; /* error */

  /* NewProxy, NewProxyResp, CloseProxy, StartWorkConn, NewVisitorConn* */
  char *proxy_name;                /* proxy_name */
  char *proxy_type;                /* proxy_type */
  bool use_encryption;             /* use_encryption (also NewVisitorConn) */
  bool use_compression;            /* use_compression (also NewVisitorConn) */
  char *bandwidth_limit;           /* bandwidth_limit */
  char *bandwidth_limit_mode;      /* bandwidth_limit_mode */
  char *group;                     /* group */
  char *group_key;                 /* group_key */
  int64_t remote_port;             /* remote_port (Go int) */
  tunnel__msg_strs custom_domains; /* custom_domains */
  char *subdomain;                 /* subdomain */
  tunnel__msg_strs locations;      /* locations */
  char *http_user;                 /* http_user */
  char *http_pwd;                  /* http_pwd */
  char *host_header_rewrite;       /* host_header_rewrite */
  tunnel__msg_map headers;         /* headers */
  char *route_by_http_user;        /* route_by_http_user */
  char *sk;                        /* sk */
  tunnel__msg_strs allow_users;    /* allow_users */
  char *multiplexer;               /* multiplexer */
  char *remote_addr;               /* remote_addr (NewProxyResp) */

  /* StartWorkConn */
  char *src_addr;    /* src_addr */
  char *dst_addr;    /* dst_addr */
  uint16_t src_port; /* src_port */
  uint16_t dst_port; /* dst_port */

  /* NewVisitorConn */
  char *sign_key; /* sign_key */
} tunnel__msg;

/* "Login", ... or NULL when frp defines no such type. */
const char *tunnel__msg_type_name(uint8_t type);

/* Zeroes every field and sets the type (no allocation). */
void tunnel__msg_init(tunnel__msg *m, uint8_t type);
/* Frees every owned field and re-initialises with the same type. */
void tunnel__msg_clear(const tunnel__mem *mem, tunnel__msg *m);

/* Replaces *field with a copy of s (NULL clears it). TUNNEL_ENOMEM leaves
 * the field unchanged. */
int tunnel__msg_set_str(const tunnel__mem *mem, char **field, const char *s);
/* Appends a copy of s to the array. */
int tunnel__msg_strs_push(const tunnel__mem *mem, tunnel__msg_strs *a,
                          const char *s);
/* Appends a copy of the pair (keys may repeat: see tunnel__msg_map). */
int tunnel__msg_map_add(const tunnel__mem *mem, tunnel__msg_map *map,
                        const char *key, const char *value);
/* Value of the last entry named key, or NULL. */
const char *tunnel__msg_map_get(const tunnel__msg_map *map, const char *key);

/* 1 when both messages have the same type and the same value in every field,
 * treating NULL and "" alike (omitempty cannot tell them apart). */
int tunnel__msg_equal(const tunnel__msg *a, const tunnel__msg *b);

/* Appends one framed message to out: all of it, or nothing on TUNNEL_ENOMEM.
 * TUNNEL_EINVAL for an unknown type. */
int tunnel__msg_encode(const tunnel__mem *mem, const tunnel__msg *m,
                       tunnel__bufq *out);

/* Decodes a body of `type` into *out, which is overwritten (not freed first)
 * and must later be released with tunnel__msg_clear(). On error *out holds
 * nothing to free. TUNNEL_EPROTO: unknown type, bad JSON, non-object body,
 * field of the wrong JSON type or out of range; TUNNEL_ENOMEM. */
int tunnel__msg_decode(const tunnel__mem *mem, uint8_t type,
                       const uint8_t *json, size_t len, tunnel__msg *out);

/* 1 when `json` passes the lexical checks every body gets before cJSON
 * parses it (what Go accepts: no raw control bytes, no BOM, strict numbers
 * and escapes, no "\u0000"), with no lone surrogate escape. */
int tunnel__msg_json_strict(const uint8_t *json, size_t len);

/* Incremental framer. The body is buffered only when it arrives split
 * across feeds, and only after its length passed the limit. The buffer
 * grows with the bytes that arrived, not with the announced length, so a
 * header alone costs nothing and a trickled body costs at most about twice
 * what was sent. */
typedef struct tunnel__msg_reader {
  const tunnel__mem *mem;
  uint32_t max_body;
  int err; /* sticky */
  uint8_t hdr[TUNNEL__MSG_HEADER_SIZE];
  size_t hdr_len;
  uint8_t *body;    /* partial body */
  size_t body_len;  /* bytes of it received */
  size_t body_cap;  /* bytes allocated, at most body_want */
  size_t body_want; /* announced length */
} tunnel__msg_reader;

void tunnel__msg_reader_init(tunnel__msg_reader *r, const tunnel__mem *mem,
                             uint32_t max_body);
void tunnel__msg_reader_free(tunnel__msg_reader *r);
/* Consumes at most one message from data; *used = bytes consumed (bytes
 * after a complete message are left alone: on a work connection raw payload
 * follows StartWorkConn). Returns 1 with *out filled (as by
 * tunnel__msg_decode) when a message completed, 0 when more bytes are needed
 * (all of data consumed), or a negative error, which every later call
 * returns again: TUNNEL_EPROTO for an unknown type byte, TUNNEL_ELIMIT for a
 * negative length or one above max_body, or a decoding error. */
int tunnel__msg_reader_feed(tunnel__msg_reader *r, const uint8_t *data,
                            size_t len, size_t *used, tunnel__msg *out);
/* The same without decoding: 1 with the type and the raw JSON body, valid
 * until the next call on the reader (for messages decoded elsewhere, such
 * as UDPPacket, lib/udpmsg.h). */
int tunnel__msg_reader_next(tunnel__msg_reader *r, const uint8_t *data,
                            size_t len, size_t *used, uint8_t *type,
                            const uint8_t **body, size_t *body_len);

#endif
