#!/bin/bash
# Idle memory of a tunnel client, side by side in one run: tunnel-client
# from a default build and from the small-device profile
# (-Dsmall_footprint=true), bore's client and frpc when ../shared/peers has
# them. Each client logs in to its own kind of server on 127.0.0.1 and
# exposes one TCP port (plain, no TLS); once all are registered and have
# idled for a second, the script reads each one's /proc/PID/smaps_rollup
# and prints a table:
#   RSS          resident pages, shared ones included (libc, ...)
#   private      Private_Clean + Private_Dirty: pages no other process maps
#   dirty        Private_Dirty alone: written pages (heap, stacks, .data,
#                relocated data); the clean rest is program text and
#                read-only data that only this process maps, which the
#                kernel may drop and read again
# The default build's tunnel-client shares libtunnel.so, libuv and mbedTLS
# with the tunnel-server of the same build, so their pages count as shared
# for it; the other clients are single binaries (libc aside). RSS of program
# text also depends on the kernel: it maps file pages around each one
# touched (fault-around, 64 KiB by default).
#
# Environment:
#   FOOTPRINT_BUILD        default build directory (default build-footprint)
#   FOOTPRINT_SMALL_BUILD  small profile build directory
#                          (default build-footprint-small)
#   FOOTPRINT_PEERS        directory with bore, frps and frpc
#                          (default ../shared/peers next to the repository)
#   FOOTPRINT_SETTLE       seconds to idle before measuring (default 1)
#   FOOTPRINT_KEEP=1       keep the temp dir with all logs
set -euo pipefail
set +m # no job control: background jobs must not lead process groups

cd "$(dirname "$0")/.."
ROOT=$PWD
abs() { case "$1" in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
BUILD=$(abs "${FOOTPRINT_BUILD:-build-footprint}")
SMALL=$(abs "${FOOTPRINT_SMALL_BUILD:-build-footprint-small}")
PEERS=$(abs "${FOOTPRINT_PEERS:-../shared/peers}")
SETTLE=${FOOTPRINT_SETTLE:-1}
H="python3 $ROOT/bench/helpers.py"

die() {
  echo "footprint: ERROR: $*" >&2
  exit 1
}
say() { echo "footprint: $*" >&2; }
case "$SETTLE" in '' | *[!0-9]*) die "FOOTPRINT_SETTLE must be a whole number of seconds" ;; esac
[ -r /proc/self/smaps_rollup ] || die "this kernel has no /proc/PID/smaps_rollup"
for t in meson ninja python3 setsid; do
  command -v "$t" >/dev/null || die "$t is needed"
done

# ---------------------------------------------------------------- processes
work=""
pids=()
cleanup() {
  local rc=$? p i alive
  set +e
  trap - EXIT INT TERM
  # Each process leads its own group (setsid): clients before servers.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM -- "-${pids[i]}" 2>/dev/null || kill -TERM "${pids[i]}" 2>/dev/null
  done
  for _ in $(seq 1 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      say "process $p did not stop on SIGTERM, killing it"
      kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null
    fi
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if [ -n "$work" ]; then
    if [ "${FOOTPRINT_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
      say "logs kept in $work"
    else
      rm -rf "$work"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: CMD in its own process group, output in $work/NAME.*;
# its pid in $LASTPID.
start() {
  local name=$1
  shift
  # meson's MALLOC_PERTURB_ would make malloc touch every block it returns.
  setsid env -u MALLOC_PERTURB_ "$@" >"$work/$name.out" 2>"$work/$name.err" </dev/null &
  LASTPID=$!
  pids+=("$LASTPID")
}

# wait_match FILE REGEX PID SECONDS: prints the first matching line of FILE;
# fails if PID exits first or time runs out.
wait_match() {
  local i
  for ((i = 0; i < $4 * 20; i++)); do
    if grep -m 1 -E "$2" "$1" 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- builds
work=$(mktemp -d /tmp/libtunnel-footprint.XXXXXX) || die "mktemp failed"
build() { # DIR [meson options...]
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    say "configuring $dir $*"
    meson setup "$dir" -Dtests=false "$@" >"$work/setup-${dir##*/}.log" 2>&1 ||
      { tail -n 30 "$work/setup-${dir##*/}.log" >&2; die "meson setup $dir failed"; }
  fi
  say "building $dir"
  ninja -C "$dir" examples/tunnel-server examples/tunnel-client >"$work/ninja-${dir##*/}.log" 2>&1 ||
    { tail -n 40 "$work/ninja-${dir##*/}.log" >&2; die "build of $dir failed"; }
}
build "$BUILD"
build "$SMALL" -Dsmall_footprint=true
opt() { # DIR OPTION: the value meson has for OPTION in DIR
  meson introspect --buildoptions "$1" 2>/dev/null |
    python3 -c 'import json,sys; print(next((o["value"] for o in json.load(sys.stdin) if o["name"]==sys.argv[1]), "?"))' "$2" 2>/dev/null ||
    echo "?"
}
[ "$(opt "$SMALL" small_footprint)" = True ] ||
  die "$SMALL is not configured with -Dsmall_footprint=true"
[ "$(opt "$BUILD" small_footprint)" = False ] ||
  die "$BUILD is configured with -Dsmall_footprint=true; want a default build"
# Written pages of just-linked binaries count as dirty until written back.
sync

# ---------------------------------------------------------------- clients
token=footprint-$RANDOM$RANDOM
export TUNNEL_TOKEN=$token
rows=()   # LABEL:PID
notes=()

start server "$BUILD/examples/tunnel-server" --control 127.0.0.1:0 --bind 127.0.0.1 --no-tls
SPID=$LASTPID
line=$(wait_match "$work/server.out" '^listening on 127\.0\.0\.1:[0-9]+$' "$SPID" 20) ||
  die "tunnel-server did not start: $(tail -n 3 "$work/server.err")"
SPORT=${line##*:}

# The exposed local port is never dialled: no visitor arrives.
for kind in "default build" "small profile"; do
  dir=$BUILD
  [ "$kind" = "small profile" ] && dir=$SMALL
  start "client-${kind%% *}" "$dir/examples/tunnel-client" --server "127.0.0.1:$SPORT" tcp 127.0.0.1:9
  pid=$LASTPID
  wait_match "$work/client-${kind%% *}.out" '^tcp://' "$pid" 20 >/dev/null ||
    die "tunnel-client ($kind) did not register: $(tail -n 3 "$work/client-${kind%% *}.err")"
  rows+=("tunnel-client, $kind:$pid")
done

if [ -x "$PEERS/bore" ]; then
  ver=$("$PEERS/bore" --version 2>/dev/null | sed 's/^bore-cli //' | head -n 1)
  if $H waitlisten 7835 0.01; then
    notes+=("bore left out: port 7835 (its fixed control port) is in use")
  else
    start bore-server env -u BORE_MIN_PORT -u BORE_MAX_PORT RUST_LOG=warn \
      "$PEERS/bore" server --secret "$token"
    if $H waitlisten 7835 10; then
      bport=$($H freeport)
      start bore-local env -u BORE_SERVER -u BORE_LOCAL_PORT RUST_LOG=warn \
        "$PEERS/bore" local 9 --local-host 127.0.0.1 --to 127.0.0.1 --port "$bport" --secret "$token"
      bpid=$LASTPID
      if $H waitlisten "$bport" 10; then
        rows+=("bore local $ver:$bpid")
      else
        notes+=("bore left out: its client did not register: $(tail -n 2 "$work/bore-local.err" | tr '\n' ' ')")
      fi
    else
      notes+=("bore left out: its server did not listen: $(tail -n 2 "$work/bore-server.err" | tr '\n' ' ')")
    fi
  fi
else
  notes+=("bore left out: no $PEERS/bore")
fi

if [ -x "$PEERS/frps" ] && [ -x "$PEERS/frpc" ]; then
  ver=$("$PEERS/frpc" --version 2>/dev/null | head -n 1)
  fbind=$($H freeport)
  fport=$($H freeport)
  cat >"$work/frps.ini" <<EOF
[common]
bind_addr = 127.0.0.1
bind_port = $fbind
proxy_bind_addr = 127.0.0.1
token = $token
log_level = warn
EOF
  cat >"$work/frpc.ini" <<EOF
[common]
server_addr = 127.0.0.1
server_port = $fbind
token = $token
log_level = warn

[footprint]
type = tcp
local_ip = 127.0.0.1
local_port = 9
remote_port = $fport
EOF
  start frps "$PEERS/frps" -c "$work/frps.ini"
  if $H waitlisten "$fbind" 10; then
    start frpc "$PEERS/frpc" -c "$work/frpc.ini"
    fpid=$LASTPID
    if $H waitlisten "$fport" 10; then
      rows+=("frpc $ver:$fpid")
    else
      notes+=("frpc left out: it did not register: $(tail -n 2 "$work/frpc.out" | tr '\n' ' ')")
    fi
  else
    notes+=("frpc left out: frps did not listen: $(tail -n 2 "$work/frps.out" | tr '\n' ' ')")
  fi
else
  notes+=("frpc left out: no $PEERS/frps and $PEERS/frpc")
fi

# ---------------------------------------------------------------- measure
sleep "$SETTLE"
printf '\nIdle client, one TCP proxy, plain, loopback (KiB)\n\n'
printf '| %-34s | %6s | %7s | %6s | %7s |\n' client RSS private dirty threads
printf '| %-34s | %6s | %7s | %6s | %7s |\n' ------ -----: ------: -----: ------:
for r in "${rows[@]}"; do
  label=${r%:*}
  pid=${r##*:}
  kill -0 "$pid" 2>/dev/null || die "$label exited before the measurement"
  read -r rss pc pd < <(awk '/^Rss:/ {r = $2} /^Private_Clean:/ {c = $2}
    /^Private_Dirty:/ {d = $2} END {print r + 0, c + 0, d + 0}' "/proc/$pid/smaps_rollup")
  threads=$(ls "/proc/$pid/task" | wc -l)
  printf '| %-34s | %6d | %7d | %6d | %7d |\n' "$label" "$rss" $((pc + pd)) "$pd" "$threads"
done
echo
for n in "${notes[@]}"; do echo "note: $n"; done
echo "$(nproc) CPUs, Linux $(uname -r); libtunnel $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "($(opt "$BUILD" buildtype) build and small profile)"
