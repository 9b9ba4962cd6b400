#!/bin/sh
# Builds libtunnel and runs the demo. See README.md.
set -eu
cd "$(dirname "$0")/.."
sh .ci/install-deps
if [ ! -f build-demo/build.ninja ]; then
  meson setup build-demo --buildtype=release >/dev/null
fi
ninja -C build-demo >/dev/null
if [ -x build-demo/examples/tunnel-demo ]; then
  exec build-demo/examples/tunnel-demo
fi
# Until the tunnel programs are built, the demo is the core's self-check.
meson test -C build-demo --suite unit
