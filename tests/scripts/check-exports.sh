#!/bin/sh
# Only tunnel_* symbols may be exported by the shared library.
set -eu
lib=$1
syms=$(nm -D --defined-only "$lib" | awk '{print $3}')
[ -n "$syms" ] || { echo "no exported symbols in $lib"; exit 1; }
bad=$(printf '%s\n' "$syms" | grep -v -E '^tunnel_' \
  | grep -v -E '^(_init|_fini|_edata|_end|__bss_start)$' || true)
if [ -n "$bad" ]; then
  echo "unexpected exported symbols:"; printf '%s\n' "$bad"; exit 1
fi
internal=$(printf '%s\n' "$syms" | grep -E '^tunnel__' || true)
[ -z "$internal" ] || { echo "internal symbols exported:"; printf '%s\n' "$internal"; exit 1; }
echo "exports ok: $(printf '%s\n' "$syms" | grep -c '^tunnel_') tunnel_* symbols"
