#!/bin/sh
# The memory an idle tunnel-client costs. Starts tunnel-server and
# tunnel-client on loopback (plain, multiplexed, one TCP proxy, ephemeral
# ports), waits for the public address, lets the client settle, then reads
# /proc/PID/smaps_rollup and /proc/PID/smaps. Prints RSS and private memory
# (Private_Clean + Private_Dirty: the pages no other process maps) with a
# breakdown by mapping, and fails when private memory passes MAX_PRIVATE_KIB
# or, when given, RSS passes MAX_RSS_KIB. (The pages of a program linked
# moments before count as dirty until written back; the total is the same.)
#
# usage: check.sh SERVER CLIENT SANITIZE MAX_PRIVATE_KIB [MAX_RSS_KIB]
# Exit status: 0 within the limits, 1 over a limit, 77 skipped (a sanitizer
# runtime, or no smaps_rollup), 99 the measurement itself failed.
set -u
server=$1
client=$2
sanitize=$3
max_private=$4
max_rss=${5:-}

if [ "$sanitize" != none ] && [ -n "$sanitize" ]; then
  echo "skipped: the $sanitize sanitizer runtime has a footprint of its own"
  exit 77
fi
if [ ! -r /proc/self/smaps_rollup ]; then
  echo "skipped: this kernel has no /proc/PID/smaps_rollup"
  exit 77
fi

work=$(mktemp -d) || exit 99
spid=""
cpid=""

# alive PID: the process runs (a zombie child waiting to be reaped does not).
alive() {
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

# stop PID: SIGTERM, SIGKILL after 5 s, then reap it.
stop() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null
  n=0
  while alive "$1" && [ $n -lt 50 ]; do
    sleep 0.1
    n=$((n + 1))
  done
  if alive "$1"; then
    echo "process $1 ignored SIGTERM, killing it"
    kill -KILL "$1" 2>/dev/null
  fi
  wait "$1" 2>/dev/null
}

cleanup() {
  stop "$cpid"
  stop "$spid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 99' INT TERM

# wait_for FILE PATTERN PID SECONDS: 0 once FILE has a line matching
# PATTERN; 1 when PID exits first or time runs out.
wait_for() {
  n=0
  while [ $n -lt $(($4 * 10)) ]; do
    grep -q "$2" "$1" 2>/dev/null && return 0
    alive "$3" || return 1
    sleep 0.1
    n=$((n + 1))
  done
  return 1
}

fail() {
  echo "error: $1"
  for f in "$work"/*.out "$work"/*.err; do
    [ -s "$f" ] && { echo "--- ${f##*/}"; tail -n 5 "$f"; }
  done
  exit 99
}

# meson test sets MALLOC_PERTURB_, which makes malloc fill every block it
# hands out and so touch every page of each buffer: not what a user's
# process does.
unset MALLOC_PERTURB_ MALLOC_CHECK_
export TUNNEL_TOKEN=footprint-$$
"$server" --control 127.0.0.1:0 --bind 127.0.0.1 --no-tls \
  >"$work/server.out" 2>"$work/server.err" </dev/null &
spid=$!
wait_for "$work/server.out" '^listening on 127\.0\.0\.1:[0-9]' "$spid" 20 ||
  fail "tunnel-server did not start"
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/server.out" |
  head -n 1)
[ -n "$port" ] || fail "no control port in tunnel-server's output"

# No visitor arrives, so the local address (the discard port) is never
# dialled; the server picks the public port.
"$client" --server "127.0.0.1:$port" tcp 127.0.0.1:9 \
  >"$work/client.out" 2>"$work/client.err" </dev/null &
cpid=$!
wait_for "$work/client.out" '^tcp://127\.0\.0\.1:[0-9]' "$cpid" 20 ||
  fail "tunnel-client did not log in and register its proxy"
grep -q 'logged in' "$work/client.err" || fail "no login reported"
# Idle: the work connection the pool keeps ready is open by now.
sleep 1
alive "$cpid" || fail "tunnel-client exited while idle"

rollup=$(awk '/^Rss:/ {r = $2} /^Private_Clean:/ {c = $2}
              /^Private_Dirty:/ {d = $2} /^Anonymous:/ {a = $2}
              END {print r + 0, c + 0, d + 0, a + 0}' \
  "/proc/$cpid/smaps_rollup") || fail "cannot read smaps_rollup"
# Every mapping: the program, each shared object, heap, stack, and the
# anonymous ones (shared objects' .bss, thread stacks, malloc arenas).
awk '/^[0-9a-f]+-[0-9a-f]+ / {
       n = $6 == "" ? "[anonymous]" : $6; sub(/.*\//, "", n)
       if (!(n in seen)) { seen[n] = 1; order[k++] = n }
     }
     /^Rss:/ {r[n] += $2}
     /^Private_Clean:/ {c[n] += $2}
     /^Private_Dirty:/ {d[n] += $2}
     END {
       for (i = 0; i < k; i++)
         if (r[order[i]] > 0)
           printf "  %-34s %6d %7d %7d\n", order[i], r[order[i]],
                  c[order[i]], d[order[i]]
     }' "/proc/$cpid/smaps" >"$work/mappings" || fail "cannot read smaps"
threads=$(ls "/proc/$cpid/task" | wc -l)
set -- $rollup
rss=$1 pclean=$2 pdirty=$3 anon=$4
private=$((pclean + pdirty))

echo "idle tunnel-client (plain, multiplexed, one tcp proxy): pid $cpid," \
  "$threads thread(s)"
echo "  RSS $rss KiB; private $private KiB (clean $pclean, dirty $pdirty);" \
  "anonymous $anon KiB"
printf '  %-34s %6s %7s %7s\n' "mapping (KiB)" rss p_clean p_dirty
cat "$work/mappings"

status=0
if [ "$private" -gt "$max_private" ]; then
  echo "over: private memory $private KiB > $max_private KiB"
  status=1
else
  echo "ok: private memory $private KiB <= $max_private KiB"
fi
if [ -n "$max_rss" ]; then
  if [ "$rss" -gt "$max_rss" ]; then
    echo "over: RSS $rss KiB > $max_rss KiB"
    status=1
  else
    echo "ok: RSS $rss KiB <= $max_rss KiB"
  fi
fi
exit $status
