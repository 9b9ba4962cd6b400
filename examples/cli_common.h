/* Helpers shared by the example programs (argument parsing, logging to
 * stderr). Not part of the library. */
#ifndef TUNNEL_EXAMPLES_CLI_COMMON_H
#define TUNNEL_EXAMPLES_CLI_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tunnel/tunnel.h>

/* Splits "HOST:PORT", "[V6]:PORT" or "PORT" (host left as given default).
 * Returns 0 on success. `host` receives at most hlen-1 characters. */
static inline int cli_parse_hostport(const char *s, char *host, size_t hlen,
                                     uint16_t *port) {
  const char *colon = strrchr(s, ':');
  const char *ps = s;
  if (colon) {
    const char *h = s;
    size_t n = (size_t)(colon - s);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
      h++;
      n -= 2;
    }
    if (n == 0 || n >= hlen)
      return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    ps = colon + 1;
  }
  char *end;
  long v = strtol(ps, &end, 10);
  if (*ps == '\0' || *end != '\0' || v < 0 || v > 65535)
    return -1;
  *port = (uint16_t)v;
  return 0;
}

/* Whether `host` names this machine (no network path to protect). */
static inline int cli_is_loopback(const char *host) {
  return !strncmp(host, "127.", 4) || !strcmp(host, "::1") ||
         !strcmp(host, "localhost");
}

static inline int cli_parse_u32(const char *s, uint32_t max, uint32_t *out) {
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (*s == '\0' || *s == '-' || *end != '\0' || v > max)
    return -1;
  *out = (uint32_t)v;
  return 0;
}

static inline void cli_log(int level, const char *msg, void *ud) {
  fprintf(stderr, "%s: %s: %s\n", (const char *)ud,
          tunnel_log_level_name(level), msg);
}

/* Overwrites a secret; volatile so that the stores are not dropped as dead
 * (the memory is about to be freed or never read again). */
static inline void cli_wipe(void *p, size_t n) {
  volatile unsigned char *v = (volatile unsigned char *)p;
  while (n--)
    *v++ = 0;
}

static inline void cli_wipe_string(char *s) {
  if (s)
    cli_wipe(s, strlen(s));
}

/* Wipes and frees a secret returned by cli_token(). */
static inline void cli_secret_free(char *s) {
  cli_wipe_string(s);
  free(s);
}

#define CLI_TOKEN_FILE_MAX 4096

/* The first line of `path` (trailing CR/LF stripped) into a new string;
 * `what` names the file in messages ("token file", "secret file").
 * Read with read(2), not stdio, so that no library buffer keeps a copy.
 * An unreadable or empty file is an error naming the file; a file that
 * group or others may read gets a one-line warning. NULL after printing
 * the error. */
static inline char *cli_read_secret_file(const char *prog, const char *what,
                                         const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "%s: cannot read %s '%s': %s\n", prog, what, path,
            strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
      (st.st_mode & (S_IRGRP | S_IROTH)))
    fprintf(stderr,
            "%s: warning: %s '%s' is readable by group or others "
            "(chmod 600 it)\n",
            prog, what, path);
  char buf[CLI_TOKEN_FILE_MAX + 1];
  size_t len = 0;
  int err = 0;
  /* The first line is all that is kept: stop reading once it is in. */
  while (len < CLI_TOKEN_FILE_MAX && !memchr(buf, '\n', len)) {
    ssize_t n = read(fd, buf + len, CLI_TOKEN_FILE_MAX - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      err = errno;
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  close(fd);
  char *nl = memchr(buf, '\n', len);
  size_t line = nl ? (size_t)(nl - buf) : len;
  while (line && (buf[line - 1] == '\r' || buf[line - 1] == '\n'))
    line--;
  char *out = NULL;
  if (err)
    fprintf(stderr, "%s: cannot read %s '%s': %s\n", prog, what, path,
            strerror(err));
  else if (!nl && len == CLI_TOKEN_FILE_MAX)
    fprintf(stderr, "%s: %s '%s': first line longer than %d bytes\n",
            prog, what, path, CLI_TOKEN_FILE_MAX);
  else if (line == 0)
    fprintf(stderr, "%s: %s '%s' is empty\n", prog, what, path);
  else if (memchr(buf, '\0', line))
    fprintf(stderr, "%s: %s '%s' holds a NUL byte\n", prog, what, path);
  else if (!(out = malloc(line + 1)))
    fprintf(stderr, "%s: out of memory\n", prog);
  else {
    memcpy(out, buf, line);
    out[line] = '\0';
  }
  cli_wipe(buf, sizeof buf);
  return out;
}

/* The token: --token (`arg`), else --token-file (`file`), else
 * $TUNNEL_TOKEN, else none (*out NULL). *out is a copy for the caller to
 * hand to tunnel_config_set_token() and then cli_secret_free(); the
 * argument and the environment value are wiped in place once copied, so
 * that the process keeps no other copy (and /proc/PID/cmdline and environ
 * no longer show it). 0, or -1 after printing why. */
static inline int cli_token(const char *prog, char *arg, const char *file,
                            char **out) {
  *out = NULL;
  char *env = getenv("TUNNEL_TOKEN");
  char *src = arg ? arg : file ? NULL : env;
  if (src) {
    if (!(*out = strdup(src))) {
      fprintf(stderr, "%s: out of memory\n", prog);
      return -1;
    }
  } else if (file &&
             !(*out = cli_read_secret_file(prog, "token file", file))) {
    return -1;
  }
  cli_wipe_string(arg);
  cli_wipe_string(env);
  return 0;
}

#endif
