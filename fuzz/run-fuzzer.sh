#!/bin/sh
# Replays the corpus, then fuzzes for a bounded time. New inputs go to a
# scratch directory so the source tree is never written.
set -eu
exe=$1
corpus=$2
seconds=${3:-10}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# A finding must fail the test: libFuzzer's default exit code, 77, would
# read as "skipped".
"$exe" -error_exitcode=1 -runs=0 "$corpus"
"$exe" -error_exitcode=1 -max_total_time="$seconds" -seed=1 -print_final_stats=1 \
  -artifact_prefix="$scratch/" "$scratch" "$corpus"
