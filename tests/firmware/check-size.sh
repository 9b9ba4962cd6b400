#!/bin/sh
# Cross-compiles the client core (-Dcore_only=true) for a Cortex-M4 with
# newlib-nano and checks it against its flash budget: the text (code and
# read-only data) of its modules, summed before the firmware's link drops
# unused functions, must stay within 34 KiB. cJSON and mbedTLS are not
# compiled in; their headers (Debian's, plain C) are put on the include path.
# Also fails when a module calls a library function that the core lacks, so
# the core_only source list stays complete.
#
# usage: check-size.sh SOURCE_DIR WORK_DIR [MESON]
# WORK_DIR is emptied first. TUNNEL_CROSS_HEADERS is the directory holding
# cjson/ and mbedtls/ (/usr/include), TUNNEL_CORE_TEXT_BUDGET the budget in
# bytes. Exits 77 (skipped) when the arm-none-eabi toolchain is not installed.
set -eu
src=$(cd "$1" && pwd)
work=$2
meson=${3:-meson}
budget=${TUNNEL_CORE_TEXT_BUDGET:-34816}
headers=${TUNNEL_CROSS_HEADERS:-/usr/include}

for tool in arm-none-eabi-gcc arm-none-eabi-size arm-none-eabi-nm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool not found (Debian: gcc-arm-none-eabi, libnewlib-arm-none-eabi)"
    exit 77
  fi
done

rm -rf "$work"
mkdir -p "$work/include"
work=$(cd "$work" && pwd)
# Only these directories: the rest of the host's /usr/include (glibc) must not
# shadow newlib's headers.
for d in cjson mbedtls; do
  if [ -d "$headers/$d" ]; then
    ln -s "$headers/$d" "$work/include/$d"
  fi
done
cat >"$work/headers.ini" <<EOF
[built-in options]
c_args = core_c_args + ['-isystem', '$work/include']
EOF

# The host build's compiler settings are not the cross build's.
unset CC CFLAGS CPPFLAGS LDFLAGS
if ! "$meson" setup "$work/build" "$src" --werror -Dcore_only=true \
    --cross-file "$src/.ci/cross/arm-none-eabi.ini" \
    --cross-file "$work/headers.ini" >"$work/setup.log" 2>&1; then
  cat "$work/setup.log"
  echo "FAIL: cross setup"
  exit 1
fi
if ! ninja -C "$work/build" >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  echo "FAIL: cross build"
  exit 1
fi
lib=$work/build/lib/libtunnel.a

echo "client core, arm-none-eabi (Cortex-M4, -Os), bytes:"
arm-none-eabi-size "$lib" | awk -v budget="$budget" '
  NR == 1 { printf "%-14s %7s %6s %6s\n", "module", "text", "data", "bss"; next }
  {
    name = $6
    sub(/\.c\.o$/, ".c", name)
    printf "%-14s %7d %6d %6d\n", name, $1, $2, $3
    text += $1; data += $2; bss += $3; n++
  }
  END {
    printf "%-14s %7d %6d %6d\n", "total", text, data, bss
    if (n == 0) { print "FAIL: no object in the library"; exit 1 }
    if (text > budget) {
      printf "FAIL: text %d bytes exceeds the budget of %d\n", text, budget
      exit 1
    }
    printf "text within budget: %d of %d bytes\n", text, budget
  }'

# Functions the core calls must be its own, the C library's or the compiler
# runtime's, cJSON's or mbedTLS's: any other tunnel symbol left undefined
# means a module the core_only list misses.
arm-none-eabi-nm -g "$lib" | awk '
  $1 == "U" { undef[$2] = 1; next }
  NF == 3 { def[$3] = 1 }
  END {
    for (s in undef)
      if (!(s in def) && s ~ /^tunnel/) { print "FAIL: undefined " s; bad = 1 }
    exit bad
  }'
