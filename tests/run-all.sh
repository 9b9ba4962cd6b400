#!/bin/sh
# Builds from scratch and runs the whole suite three ways:
#   release  -Werror build
#   asan     AddressSanitizer + UndefinedBehaviorSanitizer (any report fails)
#   fuzz     clang libFuzzer targets: corpus replay plus a short bounded run
# The three are built one after the other (each build uses every core);
# the release and asan suites then run side by side: most of their tests
# wait on sockets and timers one at a time, so two suites fill two cores.
set -eu
cd "$(dirname "$0")/.."
sh .ci/install-deps

out=build-ci
rm -rf "$out"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
export LSAN_OPTIONS=""

build() { # name, setup args...
  name=$1
  shift
  echo "=== $name build"
  meson setup "$out/$name" --werror "$@" >"$out/$name.setup.log" 2>&1 ||
    { cat "$out/$name.setup.log"; exit 1; }
  ninja -C "$out/$name" >"$out/$name.build.log" 2>&1 ||
    { tail -n 60 "$out/$name.build.log"; exit 1; }
}

# Runs one build's suite; its output goes to $out/NAME.test.log.
suite() { # name
  meson test -C "$out/$1" --print-errorlogs --num-processes 2 \
    >"$out/$1.test.log" 2>&1
}

# Counts one build's results; prints its log and records a failure.
tally() { # name, suite exit status
  echo "=== $1 tests"
  cat "$out/$1.test.log"
  ok=$(python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(sum(x["result"] in ("OK","EXPECTEDFAIL","SKIP") for x in r), sum(x["result"] not in ("OK","EXPECTEDFAIL","SKIP") for x in r))' "$out/$1/meson-logs/testlog.json")
  passed=$((passed + ${ok% *}))
  failed=$((failed + ${ok#* }))
  [ "$2" -eq 0 ] || failed_builds="${failed_builds:-} $1"
}

mkdir -p "$out"
passed=0
failed=0
build release
build asan -Db_sanitize=address,undefined -Db_lundef=false
CC=clang build fuzz -Dfuzzing=true -Db_sanitize=address -Db_lundef=false -Dtests=false

echo "=== release and asan tests (side by side)"
set +e
suite release &
release_pid=$!
suite asan
asan_rc=$?
wait "$release_pid"
release_rc=$?
suite fuzz
fuzz_rc=$?
set -e
tally release "$release_rc"
tally asan "$asan_rc"
tally fuzz "$fuzz_rc"

echo
echo "$passed passed, $failed failed"
[ -z "${failed_builds:-}" ] || { echo "failing builds:$failed_builds"; exit 1; }
