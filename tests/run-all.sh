#!/bin/sh
# Builds from scratch and runs the whole suite three ways:
#   release  -Werror build
#   asan     AddressSanitizer + UndefinedBehaviorSanitizer (any report fails)
#   fuzz     clang libFuzzer targets: corpus replay plus a short bounded run
set -eu
cd "$(dirname "$0")/.."
sh .ci/install-deps

out=build-ci
rm -rf "$out"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
export LSAN_OPTIONS=""
passed=0
failed=0

run() { # name, setup args...
  name=$1
  shift
  echo "=== $name build"
  meson setup "$out/$name" --werror "$@" >"$out/$name.setup.log" 2>&1 ||
    { cat "$out/$name.setup.log"; exit 1; }
  ninja -C "$out/$name" >"$out/$name.build.log" 2>&1 ||
    { tail -n 60 "$out/$name.build.log"; exit 1; }
  set +e
  meson test -C "$out/$name" --print-errorlogs --num-processes 2
  rc=$?
  set -e
  ok=$(python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(sum(x["result"] in ("OK","EXPECTEDFAIL","SKIP") for x in r), sum(x["result"] not in ("OK","EXPECTEDFAIL","SKIP") for x in r))' "$out/$name/meson-logs/testlog.json")
  passed=$((passed + ${ok% *}))
  failed=$((failed + ${ok#* }))
  [ "$rc" -eq 0 ] || failed_builds="${failed_builds:-} $name"
}

mkdir -p "$out"
run release
run asan -Db_sanitize=address,undefined -Db_lundef=false
CC=clang run fuzz -Dfuzzing=true -Db_sanitize=address -Db_lundef=false -Dtests=false

echo
echo "$passed passed, $failed failed"
[ -z "${failed_builds:-}" ] || { echo "failing builds:$failed_builds"; exit 1; }
