#!/bin/sh
# Installs into a staging tree, then builds and runs a program against it
# using nothing but pkg-config.
set -eu
build=$1
src=$2
sanitize=${3:-none}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
meson install -C "$build" --no-rebuild --destdir "$stage" >"$stage/install.log" 2>&1 \
  || { cat "$stage/install.log"; exit 1; }
pc=$(find "$stage" -name libtunnel.pc | head -n 1)
[ -n "$pc" ] || { echo "libtunnel.pc not installed"; exit 1; }
for f in tunnel/tunnel.h tunnel/version.h; do
  find "$stage" -path "*/include/$f" | grep -q . || { echo "$f not installed"; exit 1; }
done
find "$stage" -name 'libtunnel.a' | grep -q . || { echo "static library not installed"; exit 1; }
# The staging tree stands in for the root file system.
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$stage
flags=$(pkg-config --cflags --libs libtunnel)
case "$flags" in *"$stage"*) ;; *) echo "pkg-config ignored the staging tree: $flags"; exit 1;; esac
# A sanitized library needs its runtime in the program too.
san=""
[ "$sanitize" = none ] || san="-fsanitize=$sanitize"
cc -std=c99 -Wall -Werror $san -o "$stage/installed" "$src" $flags
libdir=$stage$(pkg-config --variable=libdir libtunnel | sed "s|^$stage||")
LD_LIBRARY_PATH=$libdir "$stage/installed"
echo "installed tree ok: $flags"
