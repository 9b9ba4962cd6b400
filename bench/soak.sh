#!/bin/bash
# libtunnel soak: tunnel-server and tunnel-client under a steady light load
# for a bounded time, with the client's link cut every few seconds and the
# client process restarted every few minutes, to show whether memory or
# file descriptors grow. Everything runs on 127.0.0.1. See bench/README.md.
#
# bench/soak_load.py runs the echo service behind the tunnel, the relay the
# client's link goes through (it cuts the link) and the visitors. Every
# SOAK_SAMPLE seconds this script reads VmRSS (/proc/PID/status),
# Private_Dirty (/proc/PID/smaps_rollup) and the open fds (/proc/PID/fd) of
# both programs and prints a row; at the end, the growth of each from the
# first sample after the warm-up to the last, and the verdict.
#
# Environment:
#   SOAK_SECONDS          how long (default 1200: 20 minutes)
#   SOAK_WARMUP           seconds before the reference sample, for the
#                         server and for each client process (default 60)
#   SOAK_SAMPLE           seconds between samples (default 10)
#   SOAK_CUT_SECONDS      the relay cuts the client's link this often
#                         (default 45)
#   SOAK_CUT_DOWN         ... and drops reconnections for this long
#                         (default 2: the first retry fails)
#   SOAK_RESTART_SECONDS  the client process is restarted this often
#                         (SIGTERM, then a new one; default 300)
#   SOAK_RATE             visitors per second (default 4)
#   SOAK_KIB              KiB each visitor sends and reads back (default 32)
#   SOAK_GRACE            seconds after a cut or a restart in which a failed
#                         visitor counts as expected (default 10)
#   SOAK_MAX_FAILED       visitors allowed to fail away from cuts (default 0)
#   SOAK_CLIENT_ARGS      more tunnel-client options, e.g. "--no-mux" or
#                         "--tls-insecure"
#   BENCH_BUILD           meson build directory (default build-bench; made
#                         with --buildtype=release when missing)
#   BENCH_KEEP=1          keep the temp dir with all logs
set -eEuo pipefail
set +m # no job control: background jobs must not lead process groups

DUR=${SOAK_SECONDS:-1200}
WARM=${SOAK_WARMUP:-60}
STEP=${SOAK_SAMPLE:-10}
RESTART=${SOAK_RESTART_SECONDS:-300}
MAXF=${SOAK_MAX_FAILED:-0}
read -ra CLIENT_ARGS <<<"${SOAK_CLIENT_ARGS:-}"
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BENCH_BUILD:-build-bench}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
BIN=$BUILD/examples
LOAD="$ROOT/bench/soak_load.py"

die() {
  echo "soak: ERROR: $*" >&2
  exit 1
}
say() { echo "soak: $*" >&2; }

for v in "$DUR" "$WARM" "$STEP" "$RESTART" "$MAXF"; do
  case "$v" in '' | *[!0-9]*) die "SOAK_SECONDS, SOAK_WARMUP, SOAK_SAMPLE, SOAK_RESTART_SECONDS and SOAK_MAX_FAILED must be integers" ;; esac
done
if [ "$STEP" -eq 0 ] || [ "$RESTART" -eq 0 ] || [ "$DUR" -eq 0 ]; then
  die "SOAK_SECONDS, SOAK_SAMPLE and SOAK_RESTART_SECONDS must be positive"
fi
for c in python3 meson ninja setsid; do
  command -v "$c" >/dev/null || die "$c is missing (bench/run.sh installs what the benchmarks need)"
done

# ---------------------------------------------------------------- processes
work=""
pids=()
cleanup() {
  local rc=$? p i
  set +e
  trap - EXIT INT TERM ERR
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null
  done
  for _ in $(seq 1 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      say "process $p did not stop on SIGTERM, killing it"
      kill -KILL "$p" 2>/dev/null
    fi
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if [ -n "$work" ]; then
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
      say "logs kept in $work"
    else
      rm -rf "$work"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'say "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD with stdout and stderr in $work/NAME.out and
# $work/NAME.err (appended: a restarted client keeps one log); the pid is
# left in $LASTPID.
start() {
  local name=$1
  shift
  "$@" >>"$work/$name.out" 2>>"$work/$name.err" </dev/null &
  LASTPID=$!
  pids+=("$LASTPID")
}

# stop PID: SIGTERM, SIGKILL after 15 s; the exit status in $STOPPED.
stop() {
  local p=$1 q keep=()
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    say "process $p did not stop within 15 s of SIGTERM, killing it"
    kill -KILL "$p" 2>/dev/null || true
  fi
  STOPPED=0
  wait "$p" 2>/dev/null || STOPPED=$?
  for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  pids=("${keep[@]}")
}

# wait_match FILE REGEX PID SECONDS [COUNT]: the COUNTth line of FILE that
# matches REGEX once there is one; fails if PID exits first or time runs out.
wait_match() {
  local i n=$(($4 * 10)) line
  for ((i = 0; i < n; i++)); do
    line=$(grep -E "$2" "$1" 2>/dev/null | sed -n "${5:-1}p")
    if [ -n "$line" ]; then
      echo "$line"
      return 0
    fi
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }
dirty() { awk '/^Private_Dirty:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || true; }
nfds() { { ls "/proc/$1/fd" 2>/dev/null || true; } | wc -l; }

# ---------------------------------------------------------------- build
work=$(mktemp -d /tmp/libtunnel-soak.XXXXXX) || die "mktemp failed"
buildtype() {
  meson introspect --buildoptions "$BUILD" 2>/dev/null |
    python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="buildtype"))' 2>/dev/null ||
    echo "?"
}
if [ ! -f "$BUILD/build.ninja" ]; then
  say "configuring $BUILD (release)"
  meson setup "$BUILD" --buildtype=release -Dtests=false >"$work/meson.log" 2>&1 ||
    { tail -n 30 "$work/meson.log" >&2; die "meson setup $BUILD failed"; }
fi
say "building $BUILD"
ninja -C "$BUILD" examples/tunnel-server examples/tunnel-client >"$work/ninja.log" 2>&1 ||
  { tail -n 40 "$work/ninja.log" >&2; die "build failed (log: $work/ninja.log)"; }
bt=$(buildtype)
[ "$bt" = release ] || say "warning: $BUILD has buildtype '$bt', not release"

# ---------------------------------------------------------------- start
export TUNNEL_TOKEN=soak-$$-$RANDOM
unset TUNNEL_SERVER
start server "$BIN/tunnel-server" --control 127.0.0.1:0 --bind 127.0.0.1
SPID=$LASTPID
control=$(wait_match "$work/server.out" '^listening on ' "$SPID" 30) ||
  die "tunnel-server did not start: $(tail -n 5 "$work/server.err")"
SPORT=${control##*:}

start load python3 "$LOAD" run "$work" "$SPORT"
LPID=$LASTPID
for _ in $(seq 1 100); do [ -s "$work/ports" ] && break; sleep 0.1; done
[ -s "$work/ports" ] || die "soak_load.py did not start: $(tail -n 5 "$work/load.err")"
read -r EPORT RPORT <"$work/ports"
PUBLIC=$(python3 "$ROOT/bench/helpers.py" freeport)

gen=0
start_client() {
  local addr_lines
  gen=$((gen + 1))
  # The client's log is appended across restarts (and a client prints its
  # address again after each reconnection): wait for one line more.
  addr_lines=$(grep -c '^tcp://' "$work/client.out" 2>/dev/null || true)
  start client "$BIN/tunnel-client" --server "127.0.0.1:$RPORT" "${CLIENT_ARGS[@]}" \
    tcp "127.0.0.1:$EPORT" --name soak --remote-port "$PUBLIC"
  CPID=$LASTPID
  wait_match "$work/client.out" "^tcp://127\.0\.0\.1:$PUBLIC\$" "$CPID" 60 \
    "$((addr_lines + 1))" >/dev/null ||
    die "tunnel-client #$gen did not register: $(tail -n 5 "$work/client.err")"
  echo "$gen $(date +%s)" >>"$work/client-starts"
}
start_client
echo "$PUBLIC" >"$work/public"
say "server :$SPORT, relay :$RPORT -> server, echo :$EPORT, public :$PUBLIC;" \
  "$DUR s, samples every $STEP s, link cut every ${SOAK_CUT_SECONDS:-45} s," \
  "client restart every $RESTART s"

# ---------------------------------------------------------------- the run
SAMPLES=$work/samples
: >"$SAMPLES"
problems=()
printf '%6s %4s | %9s %9s %5s | %9s %9s %5s | %7s %6s %6s %5s\n' \
  time "" "srv RSS" "srv dirty" fds "cli RSS" "cli dirty" fds ok failed at-cut cuts
printf '%6s %4s | %9s %9s %5s | %9s %9s %5s | %7s %6s %6s %5s\n' \
  s "" KiB KiB "" KiB KiB "" "" "" "" ""
echo "------------+---------------------------+---------------------------+-----------------------------"
t0=$(date +%s)
next_restart=$RESTART
t=0
while :; do
  ok=0 failed=0 atcut=0 cuts=0
  if [ -s "$work/status" ]; then read -r ok failed atcut cuts _ <"$work/status" || true; fi
  sr=$(rss "$SPID") sd=$(dirty "$SPID") sf=$(nfds "$SPID")
  cr=$(rss "$CPID") cd=$(dirty "$CPID") cf=$(nfds "$CPID")
  printf '%6d %4s | %9s %9s %5s | %9s %9s %5s | %7s %6s %6s %5s\n' \
    "$t" "#$gen" "${sr:-n/a}" "${sd:-n/a}" "$sf" "${cr:-n/a}" "${cd:-n/a}" "$cf" \
    "$ok" "$failed" "$atcut" "$cuts"
  echo "$t ${sr:--} ${sd:--} $sf $gen ${cr:--} ${cd:--} $cf $ok $failed $atcut $cuts" >>"$SAMPLES"
  kill -0 "$SPID" 2>/dev/null || { problems+=("tunnel-server exited: $(tail -n 3 "$work/server.err")"); break; }
  kill -0 "$CPID" 2>/dev/null || { problems+=("tunnel-client #$gen exited: $(tail -n 3 "$work/client.err")"); break; }
  kill -0 "$LPID" 2>/dev/null || { problems+=("soak_load.py exited: $(tail -n 3 "$work/load.err")"); break; }
  [ "$t" -ge "$DUR" ] && break
  if [ "$t" -ge "$next_restart" ] && [ $((t + STEP)) -le "$DUR" ]; then
    # soak_load.py holds its cuts until SIGUSR2 and lets connections
    # through at once: a client whose first connection fails exits.
    kill -USR1 "$LPID"
    sleep 0.2
    stop "$CPID"
    [ "$STOPPED" = 0 ] || problems+=("tunnel-client #$gen exited with status $STOPPED on SIGTERM")
    start_client
    kill -USR2 "$LPID"
    next_restart=$((next_restart + RESTART))
  fi
  # The next sample on the STEP grid, however long the restart took.
  t=$(($(date +%s) - t0))
  t=$(((t / STEP + 1) * STEP))
  [ "$t" -gt "$DUR" ] && t=$DUR
  # In the background, so that a signal is handled at once.
  sleep $((t0 + t - $(date +%s))) 2>/dev/null &
  wait $! || true
done

# ---------------------------------------------------------------- the end
stop "$LPID"
[ "$STOPPED" = 0 ] || problems+=("soak_load.py exited with status $STOPPED")
if kill -0 "$CPID" 2>/dev/null; then
  stop "$CPID"
  [ "$STOPPED" = 0 ] || problems+=("tunnel-client exited with status $STOPPED on SIGTERM")
fi
if kill -0 "$SPID" 2>/dev/null; then
  stop "$SPID"
  [ "$STOPPED" = 0 ] || problems+=("tunnel-server exited with status $STOPPED on SIGTERM")
fi
read -r ok failed atcut cuts _ <"$work/status" || true
logins=$(grep -c 'logged in' "$work/client.err" || true)
echo
echo "client processes: $gen; logins: $logins (one per process, one per" \
  "reconnection; $cuts link cuts)"
if [ -s "$work/failures" ]; then
  echo "visitors that failed away from cuts (first 10):"
  head -n 10 "$work/failures" | sed 's/^/  /'
fi
rc=0
python3 "$LOAD" verdict "$work" "$WARM" "$MAXF" || rc=1
for p in "${problems[@]}"; do
  echo "verdict: FAIL: $p"
  rc=1
done
exit $rc
