#!/bin/bash
# libtunnel benchmark: TCP throughput (iperf3), new-connection rate, HTTP
# request rate and latency (wrk, keep-alive), UDP throughput and loss
# (iperf3 -u), secret-service (stcp) throughput (bench/pump.c) and idle
# client RSS of the tunnel (mux and no-mux, plain and TLS to the server)
# against baselines
# measured in the same run: a direct connection, a chain of two socat relays,
# ssh -R, and, when their binaries are there, stock frp (frps + frpc, its HTTP
# vhost for HTTP) and bore. Everything runs on 127.0.0.1. See bench/README.md.
#
# Environment:
#   BENCH_SECONDS   iperf3 duration per direction, and wrk duration per path
#                   (default 5)
#   BENCH_CONNS     connections per conn-rate run (default 2000)
#   BENCH_CONC      concurrent connections in conn-rate runs (default 32)
#   BENCH_HTTP_CONNS  wrk keep-alive connections (default 32, 2 threads)
#   BENCH_ROUNDS    measure every throughput and conn-rate row this many times,
#                   one round after the other (default 1); the tables show
#                   medians and the spread
#   BENCH_QUICK=1   throughput and conn rate only: no HTTP, no frp or bore
#                   (the UDP rows still run, frp's UDP proxy included)
#   BENCH_UDP=0     no UDP rows (iperf3 -u: direct, tunnel mux, frp)
#   BENCH_UDP_SECONDS  iperf3 -u duration per offered load (default 3)
#   BENCH_UDP_LOADS    fixed offered loads, Mbit/s (default "200 1000")
#   BENCH_UDP_LENS     datagram sizes (default "1400 8000"; frp: <= 1472)
#   BENCH_UDP_STEPS    extra loads tried to find the highest with <= 1%
#                      loss (default 4)
#   BENCH_STCP=0    no secret-service rows (tcp proxy, stcp visitor port,
#                   in-process dial; frp's tcp and stcp visitor)
#   BENCH_BUILD     meson build directory (default build-bench)
#   BENCH_SSH_CIPHER  force an ssh cipher (default: OpenSSH's choice)
#   BENCH_PEERS     directory with frps, frpc and bore (default ../shared/peers
#                   next to the repository); rows of a missing peer are left out
#   BENCH_KEEP=1    keep the temp dir with all logs
set -euo pipefail
set +m # no job control: background jobs must not lead process groups (setsid)

T=${BENCH_SECONDS:-5}
N=${BENCH_CONNS:-2000}
C=${BENCH_CONC:-32}
HC=${BENCH_HTTP_CONNS:-32}
ROUNDS=${BENCH_ROUNDS:-1}
QUICK=${BENCH_QUICK:-0}
WARM=200
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BENCH_BUILD:-build-bench}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
BIN=$BUILD/examples
H="python3 $ROOT/bench/helpers.py"

die() {
  echo "bench: ERROR: $*" >&2
  exit 1
}
say() { echo "bench: $*" >&2; }

for v in "$T" "$N" "$C" "$HC" "$ROUNDS"; do
  case "$v" in '' | *[!0-9]* | 0) die "BENCH_SECONDS, BENCH_CONNS, BENCH_CONC, BENCH_HTTP_CONNS and BENCH_ROUNDS must be positive integers" ;; esac
done
case "$QUICK" in 0 | 1) ;; *) die "BENCH_QUICK must be 0 or 1" ;; esac
[ "$HC" -ge 2 ] || die "BENCH_HTTP_CONNS must be at least 2 (wrk runs 2 threads)"


# ---------------------------------------------------------------- processes
work=""
pids=()
cleanup() {
  local rc=$? p i
  set +e
  trap - EXIT INT TERM
  # Each process was started with setsid, so its pid is also its process
  # group: killing the group also ends socat's and sshd's per-connection
  # children. Reverse order: clients before the servers they talk to.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
  done
  for _ in $(seq 1 30); do
    local alive=0
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
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
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

# start NAME CMD...: runs CMD in its own process group, stdout and stderr in
# $work/NAME.out and $work/NAME.err; the pid is left in $LASTPID.
start() {
  local name=$1
  shift
  setsid "$@" >"$work/$name.out" 2>"$work/$name.err" </dev/null &
  LASTPID=$!
  pids+=("$LASTPID")
}

# stop PID: ends one process started by start() and waits for it (bounded).
stop() {
  local p=$1 q keep=()
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  pids=("${keep[@]}")
}

# wait_line FILE PID SECONDS: prints the first line of FILE once it has one;
# fails if PID exits first or time runs out.
wait_line() {
  local i n=$(($3 * 20))
  for ((i = 0; i < n; i++)); do
    if [ -s "$1" ] && [ "$(wc -l <"$1")" -ge 1 ]; then
      head -n 1 "$1"
      return 0
    fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo n/a; }
priv() { awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' "/proc/$1/smaps_rollup" 2>/dev/null || echo n/a; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo n/a; }

# ---------------------------------------------------------------- setup
need_pkgs=""
need() { command -v "$1" >/dev/null 2>&1 || need_pkgs="$need_pkgs $2"; }
need iperf3 iperf3
need wrk wrk
need socat socat
need ssh openssh-client
need ssh-keygen openssh-client
[ -x /usr/sbin/sshd ] || need_pkgs="$need_pkgs openssh-server"
need python3 python3
need meson meson
need ninja ninja-build
need cc gcc
need pkg-config pkgconf
need setsid util-linux
need timeout coreutils
for p in libuv1-dev libmbedtls-dev libhttp-parser-dev libcjson-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    need_pkgs="$need_pkgs $p"
done
need_pkgs=$(echo "$need_pkgs" | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [ -n "${need_pkgs// /}" ]; then
  command -v apt-get >/dev/null || die "missing:$need_pkgs and no apt-get to install them"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "missing:$need_pkgs; run as root to install them"
    sudo=sudo
  fi
  say "installing:$need_pkgs"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || die "apt-get update failed"
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $need_pkgs >/dev/null ||
    die "apt-get install$need_pkgs failed"
fi

work=$(mktemp -d /tmp/libtunnel-bench.XXXXXX) || die "mktemp failed"
RES=$work/results
: >"$RES"
put() { echo "$1 $2" >>"$RES"; }

buildtype() {
  meson introspect --buildoptions "$BUILD" 2>/dev/null |
    python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="buildtype"))' 2>/dev/null ||
    echo "?"
}
# A build directory of another checkout would measure that checkout.
if [ -f "$BUILD/meson-info/meson-info.json" ]; then
  src=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["directories"]["source"])' \
    "$BUILD/meson-info/meson-info.json" 2>/dev/null || echo "?")
  [ "$(realpath "$src" 2>/dev/null)" = "$(realpath "$ROOT")" ] ||
    die "$BUILD was configured for $src, not $ROOT: choose another BENCH_BUILD"
fi
if [ ! -f "$BUILD/build.ninja" ]; then
  say "configuring $BUILD (release)"
  meson setup "$BUILD" --buildtype=release -Dtests=false >"$work/meson.log" 2>&1 ||
    { tail -n 30 "$work/meson.log" >&2; die "meson setup $BUILD failed"; }
elif [ "$(buildtype)" != release ]; then
  say "switching $BUILD to buildtype=release"
  meson configure "$BUILD" -Dbuildtype=release >"$work/meson.log" 2>&1 ||
    { tail -n 30 "$work/meson.log" >&2; die "meson configure $BUILD failed"; }
fi
say "building $BUILD"
ninja -C "$BUILD" examples/tunnel-server examples/tunnel-client >"$work/ninja.log" 2>&1 ||
  { tail -n 40 "$work/ninja.log" >&2; die "build failed (log: $work/ninja.log)"; }
bt=$(buildtype)
[ "$bt" = release ] || say "warning: $BUILD has buildtype '$bt', not release"

read -ra uvflags <<<"$(pkg-config --cflags --libs libuv)" || die "pkg-config does not know libuv"
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -o "$work/connrate" "$ROOT/bench/connrate.c" \
  "${uvflags[@]}" >"$work/cc.log" 2>&1 ||
  { cat "$work/cc.log" >&2; die "cannot compile bench/connrate.c against libuv"; }
CR=$work/connrate
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -o "$work/httpd" "$ROOT/bench/httpd.c" \
  "${uvflags[@]}" >"$work/cc-httpd.log" 2>&1 ||
  { cat "$work/cc-httpd.log" >&2; die "cannot compile bench/httpd.c against libuv"; }

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
put meta.desc "$(nproc) CPUs, $(uname -r), libtunnel $commit, $bt build"
put meta.seconds "$T"
put meta.conns "$N"
put meta.conc "$C"
put meta.http_conns "$HC"
put meta.rounds "$ROUNDS"
put meta.quick "$QUICK"

freeport() { $H freeport; }
waitlisten() { $H waitlisten "$1" "${2:-5}"; }

# Services behind everything: iperf3 (restarted per test) and an echo server.
IPORT=$(freeport)
start echo "$CR" serve
ECHO_PID=$LASTPID
echo_addr=$(wait_line "$work/echo.out" "$ECHO_PID" 5) || die "echo service did not start: $(cat "$work/echo.err")"
EPORT=${echo_addr##*:}
start httpd "$work/httpd"
HTTPD_PID=$LASTPID
httpd_addr=$(wait_line "$work/httpd.out" "$HTTPD_PID" 5) || die "HTTP service did not start: $(cat "$work/httpd.err")"
HPORT=${httpd_addr##*:}

# socat chains: client -> A -> B -> service, one chain per service.
socat_chain() { # NAME TARGETPORT -> prints the entry port
  local a b
  a=$(freeport)
  b=$(freeport)
  start "$1-2" socat TCP-LISTEN:"$b",bind=127.0.0.1,reuseaddr,fork,backlog=1024 TCP:127.0.0.1:"$2"
  start "$1-1" socat TCP-LISTEN:"$a",bind=127.0.0.1,reuseaddr,fork,backlog=1024 TCP:127.0.0.1:"$b"
  SOCAT_PID=$LASTPID
  waitlisten "$b" || die "socat relay did not listen on $b: $(cat "$work/$1-2.err")"
  waitlisten "$a" || die "socat relay did not listen on $a: $(cat "$work/$1-1.err")"
  SOCAT_PORT=$a
}
socat_chain socat-iperf "$IPORT"
SOCAT_IPERF=$SOCAT_PORT
SOCAT_RSS_PID=$SOCAT_PID
socat_chain socat-echo "$EPORT"
SOCAT_ECHO=$SOCAT_PORT
socat_chain socat-http "$HPORT"
SOCAT_HTTP=$SOCAT_PORT

# ssh -R through a private sshd.
SSH_IPERF="" SSH_ECHO="" SSH_HTTP="" SSH_PID=""
setup_ssh() {
  local d=$work/ssh sshd=/usr/sbin/sshd port me
  mkdir -p "$d"
  chmod 700 "$d"
  ssh-keygen -q -t ed25519 -N '' -f "$d/host_key" >/dev/null || { SSH_ERR="ssh-keygen failed"; return 1; }
  ssh-keygen -q -t ed25519 -N '' -f "$d/user_key" >/dev/null || { SSH_ERR="ssh-keygen failed"; return 1; }
  cp "$d/user_key.pub" "$d/authorized_keys"
  port=$(freeport)
  me=$(id -un)
  cat >"$d/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile none
AuthorizedKeysFile $d/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowUsers $me
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
EOF
  # Privilege separation directory; the package normally creates it at boot.
  if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then mkdir -p /run/sshd && chmod 755 /run/sshd; fi
  if ! "$sshd" -t -f "$d/sshd_config" >"$work/sshd-test.err" 2>&1; then
    SSH_ERR="sshd -t: $(head -n 3 "$work/sshd-test.err" | tr '\n' ' ')"
    return 1
  fi
  start sshd "$sshd" -D -e -f "$d/sshd_config"
  waitlisten "$port" 5 || { SSH_ERR="sshd did not listen: $(tail -n 3 "$work/sshd.err" | tr '\n' ' ')"; return 1; }
  local copt=()
  [ -n "${BENCH_SSH_CIPHER:-}" ] && copt=(-c "$BENCH_SSH_CIPHER")
  start ssh ssh -F /dev/null -i "$d/user_key" -p "$port" -l "$me" "${copt[@]}" \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o IdentitiesOnly=yes -o ExitOnForwardFailure=yes \
    -o ServerAliveInterval=0 -o LogLevel=INFO \
    -N -R "0:127.0.0.1:$IPORT" -R "0:127.0.0.1:$EPORT" -R "0:127.0.0.1:$HPORT" 127.0.0.1
  SSH_PID=$LASTPID
  local i
  for ((i = 0; i < 200; i++)); do
    SSH_IPERF=$(sed -n "s/^Allocated port \([0-9]*\) for remote forward to 127.0.0.1:$IPORT.*/\1/p" "$work/ssh.err")
    SSH_ECHO=$(sed -n "s/^Allocated port \([0-9]*\) for remote forward to 127.0.0.1:$EPORT.*/\1/p" "$work/ssh.err")
    SSH_HTTP=$(sed -n "s/^Allocated port \([0-9]*\) for remote forward to 127.0.0.1:$HPORT.*/\1/p" "$work/ssh.err")
    [ -n "$SSH_IPERF" ] && [ -n "$SSH_ECHO" ] && [ -n "$SSH_HTTP" ] && break
    kill -0 "$SSH_PID" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$SSH_IPERF" ] || [ -z "$SSH_ECHO" ] || [ -z "$SSH_HTTP" ]; then
    SSH_ERR="ssh -R did not come up: $(grep -v '^Warning: Permanently' "$work/ssh.err" | tail -n 3 | tr '\n' ' ') $(tail -n 3 "$work/sshd.err" | tr '\n' ' ')"
    SSH_IPERF="" SSH_ECHO="" SSH_HTTP=""
    return 1
  fi
  local cipher
  cipher=$(grep -o 'cipher: [^ ]*' "$work/ssh.err" | head -n 1 || true)
  if [ -z "$cipher" ]; then
    if [ -n "${BENCH_SSH_CIPHER:-}" ]; then
      cipher="cipher $BENCH_SSH_CIPHER"
    else
      cipher="cipher $(ssh -F /dev/null -G 127.0.0.1 2>/dev/null </dev/null | awk '/^ciphers / {split($2, c, ","); print c[1]}') (OpenSSH default)"
    fi
  fi
  put note.ssh "ssh -R: OpenSSH $(ssh -V 2>&1 | sed 's/^OpenSSH_\([^,]*\).*/\1/'), $cipher"
  return 0
}
say "starting sshd and ssh -R"
SSH_ERR=""
if ! setup_ssh; then
  say "ssh -R unavailable, its rows will read n/a: $SSH_ERR"
  put note.ssh "ssh -R unavailable: $SSH_ERR"
  SSH_IPERF="" SSH_ECHO="" SSH_HTTP=""
fi

# The tunnel: one server, one client per (mode, service).
say "starting tunnel-server and tunnel-clients"
token=bench-$RANDOM$RANDOM
start server "$BIN/tunnel-server" --control 127.0.0.1:0 --bind 127.0.0.1 \
  --ports 20000-29999 --token "$token" --http 127.0.0.1:0 --domain localhost
SERVER_PID=$LASTPID
line=$(wait_line "$work/server.out" "$SERVER_PID" 10) ||
  die "tunnel-server did not start: $(tail -n 5 "$work/server.err")"
CONTROL=${line#listening on }
# Its HTTP port, printed on the next line ("http on 127.0.0.1:PORT").
THTTP=""
for _ in $(seq 1 100); do
  THTTP=$(sed -n 's/^http on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/server.out")
  [ -n "$THTTP" ] && break
  sleep 0.05
done
[ -n "$THTTP" ] || die "tunnel-server did not print its HTTP port: $(tail -n 5 "$work/server.err")"
# The same server takes plain and TLS clients; with no certificate given it
# makes one at start and prints its fingerprint, which the TLS clients pin.
TLS_PIN=$(sed -n 's/^tls certificate.* sha256 \([0-9A-Fa-f:]*\)$/\1/p' "$work/server.out")
TUNNEL_PROCS=("server:$SERVER_PID")

# check_tunnel: records (once) any tunnel process (ours, or a peer tunnel's)
# that exited during the run.
declare -A GONE=()
PEER_PROCS=()
check_tunnel() {
  local e name pid st
  for e in "${TUNNEL_PROCS[@]}" "${PEER_PROCS[@]}"; do
    name=${e%%:*} pid=${e#*:}
    [ -n "${GONE[$pid]:-}" ] && continue
    kill -0 "$pid" 2>/dev/null && continue
    st=0
    wait "$pid" 2>/dev/null || st=$?
    GONE[$pid]=1
    local why="exit status $st"
    [ "$st" -gt 128 ] && why="killed by signal $((st - 128))$([ $st = 141 ] && echo ' (SIGPIPE)')"
    local shown=tunnel-$name
    case " ${PEER_PROCS[*]} " in *" $e "*) shown=$name ;; esac
    say "tunnel process $shown (pid $pid) died during '$1': $why"
    put "note.died-$name" "$shown (pid $pid) died during $1: $why; last log: $(tail -n 2 "$work/$name.err" | tr '\n' ' ')"
  done
}

# tunnel_client NAME LOCALPORT [--no-mux]: on success sets TC_PORT (public
# port) and TC_PID and returns 0; returns 2 if --no-mux is unavailable.
tunnel_client() {
  local name=$1 lport=$2
  shift 2
  TC_PORT="" TC_PID=""
  start "$name" "$BIN/tunnel-client" --server "$CONTROL" --token "$token" "$@" \
    tcp "127.0.0.1:$lport" --name "$name"
  TC_PID=$LASTPID
  local out
  if ! out=$(wait_line "$work/$name.out" "$TC_PID" 10); then
    for _ in $(seq 1 20); do kill -0 "$TC_PID" 2>/dev/null || break; sleep 0.05; done
    if grep -q -- "--no-mux is not available" "$work/$name.err"; then
      stop "$TC_PID"
      return 2
    fi
    die "tunnel-client $name ($*) did not register: $(tail -n 5 "$work/$name.err")"
  fi
  TUNNEL_PROCS+=("$name:$TC_PID")
  case "$out" in
  tcp://*:*) TC_PORT=${out##*:} ;;
  *) die "tunnel-client $name printed '$out', expected tcp://HOST:PORT" ;;
  esac
}
tunnel_client mux-iperf "$IPORT"
MUX_IPERF=$TC_PORT MUX_PID=$TC_PID
tunnel_client mux-echo "$EPORT"
MUX_ECHO=$TC_PORT
NOMUX_IPERF="" NOMUX_ECHO="" NOMUX_PID=""
if tunnel_client nomux-iperf "$IPORT" --no-mux; then
  NOMUX_IPERF=$TC_PORT NOMUX_PID=$TC_PID
  tunnel_client nomux-echo "$EPORT" --no-mux
  NOMUX_ECHO=$TC_PORT
else
  say "tunnel-client reports --no-mux unavailable: no-mux rows will read n/a"
  put note.nomux "tunnel-client: --no-mux is not available in this build"
fi
# The same proxies with TLS between client and server. With no-mux, every
# work connection is a TLS connection of its own (a resumed handshake).
TLSMUX_IPERF="" TLSMUX_ECHO="" TLSMUX_PID="" TLSNOMUX_IPERF="" TLSNOMUX_ECHO=""
if [ -n "$TLS_PIN" ]; then
  # -v: the client names the cipher suite at login (nothing per connection).
  tls=(--tls --tls-pin "$TLS_PIN" -v)
  tunnel_client tls-mux-iperf "$IPORT" "${tls[@]}"
  TLSMUX_IPERF=$TC_PORT TLSMUX_PID=$TC_PID
  tunnel_client tls-mux-echo "$EPORT" "${tls[@]}"
  TLSMUX_ECHO=$TC_PORT
  if [ -n "$NOMUX_PID" ]; then
    tunnel_client tls-nomux-iperf "$IPORT" --no-mux "${tls[@]}"
    TLSNOMUX_IPERF=$TC_PORT
    tunnel_client tls-nomux-echo "$EPORT" --no-mux "${tls[@]}"
    TLSNOMUX_ECHO=$TC_PORT
  fi
  put meta.tls "$(sed -n 's/.*client: TLS \(.*\), [a-z]* handshake$/\1/p' "$work/tls-mux-iperf.err" | head -n 1)"
else
  say "tunnel-server printed no TLS certificate: TLS rows will read n/a"
  put note.tls "tunnel-server printed no TLS certificate line: TLS rows read n/a"
fi

# tunnel_http_client NAME SUBDOMAIN [--no-mux]: an http proxy for the HTTP
# service, reached on the server's HTTP port as SUBDOMAIN.localhost; waits
# until a request goes through, then sets TH_HOST (the Host to send).
tunnel_http_client() {
  local name=$1 sub=$2 out
  shift 2
  TH_HOST=""
  start "$name" "$BIN/tunnel-client" --server "$CONTROL" --token "$token" "$@" \
    http "127.0.0.1:$HPORT" --subdomain "$sub" --name "$name"
  local pid=$LASTPID
  out=$(wait_line "$work/$name.out" "$pid" 10) ||
    die "tunnel-client $name ($*) did not register: $(tail -n 5 "$work/$name.err")"
  [ "$out" = "http://$sub.localhost:$THTTP" ] ||
    die "tunnel-client $name printed '$out', expected http://$sub.localhost:$THTTP"
  TUNNEL_PROCS+=("$name:$pid")
  $H waithttp "$THTTP" "$sub.localhost:$THTTP" 10 ||
    die "no answer through the HTTP tunnel $name: $(tail -n 5 "$work/$name.err")"
  TH_HOST="$sub.localhost:$THTTP"
}
MUX_HTTP_HOST="" NOMUX_HTTP_HOST="" MUX_HTTPTCP=""
if [ "$QUICK" = 0 ]; then
  tunnel_http_client mux-http bench-mux
  MUX_HTTP_HOST=$TH_HOST
  if [ -n "$NOMUX_PID" ]; then
    tunnel_http_client nomux-http bench-nomux --no-mux
    NOMUX_HTTP_HOST=$TH_HOST
  fi
  # The same HTTP service through a plain tcp proxy: what HTTP routing costs.
  tunnel_client mux-httptcp "$HPORT"
  MUX_HTTPTCP=$TC_PORT
fi

# Peer tunnels, when their binaries are there. frp: frps + one frpc with
# two tcp proxies, its defaults otherwise (tcp_mux on, pool_count 1), token
# auth, warnings-only logs like tunnel-server's default. bore: one server
# and one `bore local` per service, with a secret, warnings-only logs.
PEERS=${BENCH_PEERS:-$ROOT/../shared/peers}
FRP_HAVE=0 FRP_IPERF="" FRP_ECHO="" FRP_HTTP="" FRPC_PID=""
BORE_HAVE=0 BORE_IPERF="" BORE_ECHO="" BORE_PID=""
PEER_ERR=""
setup_frp() {
  local bp fport_iperf fport_echo fhttp
  bp=$(freeport)
  fport_iperf=$(freeport)
  fport_echo=$(freeport)
  fhttp=$(freeport)
  cat >"$work/frps.ini" <<EOF
[common]
bind_addr = 127.0.0.1
bind_port = $bp
proxy_bind_addr = 127.0.0.1
vhost_http_port = $fhttp
subdomain_host = localhost
token = $token
log_level = warn
EOF
  cat >"$work/frpc.ini" <<EOF
[common]
server_addr = 127.0.0.1
server_port = $bp
token = $token
log_level = warn

[iperf]
type = tcp
local_ip = 127.0.0.1
local_port = $IPORT
remote_port = $fport_iperf

[echo]
type = tcp
local_ip = 127.0.0.1
local_port = $EPORT
remote_port = $fport_echo

[http]
type = http
local_ip = 127.0.0.1
local_port = $HPORT
subdomain = bench
EOF
  start frps "$PEERS/frps" -c "$work/frps.ini"
  PEER_PROCS+=("frps:$LASTPID")
  waitlisten "$bp" 10 ||
    { PEER_ERR="frps did not listen: $(tail -q -n 3 "$work/frps.out" "$work/frps.err" | tr '\n' ' ')"; return 1; }
  start frpc "$PEERS/frpc" -c "$work/frpc.ini"
  FRPC_PID=$LASTPID
  PEER_PROCS+=("frpc:$LASTPID")
  if ! waitlisten "$fport_iperf" 10 || ! waitlisten "$fport_echo" 10; then
    PEER_ERR="frpc did not register: $(tail -q -n 3 "$work/frpc.out" "$work/frpc.err" | tr '\n' ' ')"
    return 1
  fi
  FRP_IPERF=$fport_iperf FRP_ECHO=$fport_echo
  if $H waithttp "$fhttp" "bench.localhost:$fhttp" 10; then
    FRP_HTTP="$fhttp:bench.localhost:$fhttp"
  else
    put note.frp-http "frp HTTP vhost did not answer: $(tail -q -n 3 "$work/frps.out" "$work/frpc.out" | tr '\n' ' ')"
  fi
}
setup_bore() {
  local bi be secret=bench-$RANDOM$RANDOM
  # bore's control port is fixed.
  if waitlisten 7835 0.01; then
    PEER_ERR="port 7835 (bore's control port) is already in use"
    return 1
  fi
  start bore-server env -u BORE_MIN_PORT -u BORE_MAX_PORT RUST_LOG=warn \
    "$PEERS/bore" server --secret "$secret"
  PEER_PROCS+=("bore-server:$LASTPID")
  waitlisten 7835 10 ||
    { PEER_ERR="bore server did not listen: $(tail -n 3 "$work/bore-server.err" | tr '\n' ' ')"; return 1; }
  bi=$(freeport)
  be=$(freeport)
  start bore-iperf env -u BORE_SERVER -u BORE_LOCAL_PORT RUST_LOG=warn \
    "$PEERS/bore" local "$IPORT" --local-host 127.0.0.1 --to 127.0.0.1 --port "$bi" --secret "$secret"
  BORE_PID=$LASTPID
  PEER_PROCS+=("bore-iperf:$LASTPID")
  start bore-echo env -u BORE_SERVER -u BORE_LOCAL_PORT RUST_LOG=warn \
    "$PEERS/bore" local "$EPORT" --local-host 127.0.0.1 --to 127.0.0.1 --port "$be" --secret "$secret"
  PEER_PROCS+=("bore-echo:$LASTPID")
  if ! waitlisten "$bi" 10 || ! waitlisten "$be" 10; then
    PEER_ERR="bore local did not register: $(tail -q -n 3 "$work/bore-iperf.err" "$work/bore-echo.err" | tr '\n' ' ')"
    return 1
  fi
  BORE_IPERF=$bi BORE_ECHO=$be
}
if [ "$QUICK" = 1 ]; then
  say "quick mode: no frp, bore or HTTP"
elif [ -x "$PEERS/frps" ] && [ -x "$PEERS/frpc" ]; then
  FRP_HAVE=1
  put meta.frp "$("$PEERS/frps" --version 2>/dev/null | head -n 1)"
  say "starting frps and frpc"
  setup_frp || { say "frp unavailable, its rows will read n/a: $PEER_ERR"; put note.frp "frp unavailable: $PEER_ERR"; }
else
  say "no frps/frpc in $PEERS: frp rows left out"
  put note.frp "frp rows left out: no frps and frpc in $PEERS"
fi
if [ "$QUICK" = 1 ]; then
  :
elif [ -x "$PEERS/bore" ]; then
  BORE_HAVE=1
  put meta.bore "$("$PEERS/bore" --version 2>/dev/null | sed 's/^bore-cli //' | head -n 1)"
  say "starting bore server and bore local"
  setup_bore || { say "bore unavailable, its rows will read n/a: $PEER_ERR"; put note.bore "bore unavailable: $PEER_ERR"; }
else
  say "no bore in $PEERS: bore rows left out"
  put note.bore "bore rows left out: no bore in $PEERS"
fi
PEER_ROWS=()
[ $FRP_HAVE = 1 ] && PEER_ROWS+=("frp:$FRP_IPERF:$FRP_ECHO")
[ $BORE_HAVE = 1 ] && PEER_ROWS+=("bore:$BORE_IPERF:$BORE_ECHO")

# ---------------------------------------------------------------- idle RSS
sleep 1
mem() { put "rss.$1" "$(rss "$2")"; put "priv.$1" "$(priv "$2")"; }
mem client_mux "$MUX_PID"
[ -n "$NOMUX_PID" ] && mem client_nomux "$NOMUX_PID"
[ -n "$TLSMUX_PID" ] && mem client_tlsmux "$TLSMUX_PID"
mem socat "$SOCAT_RSS_PID"
mem server "$SERVER_PID"
[ -n "$SSH_PID" ] && [ -n "$SSH_IPERF" ] && mem ssh "$SSH_PID"
[ -n "$FRP_IPERF" ] && mem frpc "$FRPC_PID"
[ -n "$BORE_IPERF" ] && mem bore "$BORE_PID"

# ---------------------------------------------------------------- throughput
# Every measurement is stored as KEY#ROUND; the report takes the median over
# the rounds, the spread, and each ratio per round (both sides measured
# minutes apart at most, under the same load from the rest of the machine).
IPERF_PID=""
iperf_run() { # KEY DIR PORT ROUND
  local key=$1 dir=$2 port=$3 r=$4 flag="" v tag=$1-$2-r$4
  [ "$dir" = rev ] && flag=-R
  if [ -z "$port" ]; then
    put "tput.$key.$dir" n/a
    return
  fi
  start "iperf3-server-$tag" iperf3 -s -1 -B 127.0.0.1 -p "$IPORT"
  IPERF_PID=$LASTPID
  waitlisten "$IPORT" 5 || die "iperf3 server did not listen on $IPORT: $(cat "$work/iperf3-server-$tag.err")"
  timeout $((T + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$T" -J $flag \
    --connect-timeout 5000 >"$work/iperf-$tag.json" 2>"$work/iperf-$tag.err" || true
  v=$($H iperf "$work/iperf-$tag.json") || {
    say "iperf3 $key $dir (round $r) failed: ${v#err: }"
    put "note.iperf-$tag" "iperf3 $key $dir (round $r) failed: ${v#err: }"
    v=err
  }
  put "tput.$key.$dir#$r" "$v"
  say "  $key $dir: $v Gbit/s"
  stop "$IPERF_PID"
  check_tunnel "iperf3 $key $dir"
}
TPUT_ROWS=("direct:$IPORT" "socat:$SOCAT_IPERF" "ssh:$SSH_IPERF" "mux:$MUX_IPERF"
  "tlsmux:$TLSMUX_IPERF" "nomux:$NOMUX_IPERF" "tlsnomux:$TLSNOMUX_IPERF")
CONN_ROWS=("direct:$EPORT" "socat:$SOCAT_ECHO" "ssh:$SSH_ECHO" "mux:$MUX_ECHO"
  "tlsmux:$TLSMUX_ECHO" "nomux:$NOMUX_ECHO" "tlsnomux:$TLSNOMUX_ECHO")
for e in "${PEER_ROWS[@]}"; do
  IFS=: read -r key ip ep <<<"$e"
  TPUT_ROWS+=("$key:$ip")
  CONN_ROWS+=("$key:$ep")
done

# ---------------------------------------------------------------- conn rate
conn_run() { # KEY PORT ROUND
  local key=$1 port=$2 r=$3 out rc=0 f tag=$1-r$3
  if [ -z "$port" ]; then
    put "conn.$key.rate" n/a
    return
  fi
  # Warm-up (not measured), then the measured run; both time-bounded.
  timeout 60 "$CR" -n "$WARM" -c "$C" -t 30 "127.0.0.1:$port" >/dev/null 2>"$work/conn-$tag-warm.err" || true
  out=$(timeout 120 "$CR" -n "$N" -c "$C" -t 90 "127.0.0.1:$port" 2>"$work/conn-$tag.err") || rc=$?
  # A run shorter than a second is noisy: do two more, keep the median rate.
  local secs
  secs=$(echo "$out" | tr ' ' '\n' | sed -n 's/^seconds=//p')
  if [ $rc = 0 ] && awk -v s="${secs:-9}" 'BEGIN {exit !(s < 1)}'; then
    local o2 o3
    o2=$(timeout 120 "$CR" -n "$N" -c "$C" -t 90 "127.0.0.1:$port" 2>>"$work/conn-$tag.err") || rc=$?
    o3=$(timeout 120 "$CR" -n "$N" -c "$C" -t 90 "127.0.0.1:$port" 2>>"$work/conn-$tag.err") || rc=$?
    if [ $rc = 0 ]; then
      out=$(printf '%s\n%s\n%s\n' "$out" "$o2" "$o3" |
        awk '{for (i = 1; i <= NF; i++) if ($i ~ /^rate=/) r = substr($i, 6); print r, $0}' |
        sort -n | sed -n '2p' | cut -d' ' -f2-)
      out="$out (median of 3)"
    fi
  fi
  for f in rate p50 p99; do
    local v
    v=$(echo "$out" | tr ' ' '\n' | sed -n "s/^${f}\(_ms\)\?=//p")
    put "conn.$key.$f#$r" "${v:-err}"
  done
  if [ $rc != 0 ]; then
    say "conn rate $key (round $r): failures ($out) $(cat "$work/conn-$tag.err")"
    put "note.conn-$tag" "conn rate $key (round $r): $(echo "$out" | cut -d' ' -f1-2) $(head -n 2 "$work/conn-$tag.err" | tr '\n' ' ')"
  fi
  say "  $key: $out"
  check_tunnel "conn rate $key"
}

for ((round = 1; round <= ROUNDS; round++)); do
  say "round $round of $ROUNDS: throughput, ${T}s per direction"
  for row in "${TPUT_ROWS[@]}"; do
    for dir in fwd rev; do iperf_run "${row%%:*}" "$dir" "${row#*:}" "$round"; done
  done
  say "round $round of $ROUNDS: new-connection rate, $N connections, $C concurrent"
  for row in "${CONN_ROWS[@]}"; do
    conn_run "${row%%:*}" "${row#*:}" "$round"
  done
done

# How TLS no-mux work connections are set up: the measured server logs
# warnings only, so a second one with debug logs (where each TLS handshake
# is named full or resumed) serves one no-mux TLS client for WARM visitors.
tls_resume_check() {
  local line ctl pin port full resumed
  start server-debug "$BIN/tunnel-server" --control 127.0.0.1:0 --bind 127.0.0.1 \
    --ports 30000-30999 --token "$token" -v -v
  local spid=$LASTPID
  line=$(wait_line "$work/server-debug.out" "$spid" 10) || return 1
  ctl=${line#listening on }
  pin=""
  for _ in $(seq 1 20); do
    pin=$(sed -n 's/^tls certificate.* sha256 \([0-9A-Fa-f:]*\)$/\1/p' "$work/server-debug.out")
    [ -n "$pin" ] && break
    sleep 0.05
  done
  [ -n "$pin" ] || { stop "$spid"; return 1; }
  start tls-debug "$BIN/tunnel-client" --server "$ctl" --token "$token" --no-mux \
    --tls --tls-pin "$pin" tcp "127.0.0.1:$EPORT" --name tls-debug
  local cpid=$LASTPID
  if line=$(wait_line "$work/tls-debug.out" "$cpid" 10); then
    port=${line##*:}
    timeout 60 "$CR" -n "$WARM" -c "$C" -t 30 "127.0.0.1:$port" >/dev/null 2>&1 || true
  fi
  stop "$cpid"
  stop "$spid"
  [ -n "${port:-}" ] || return 1
  full=$(grep -c "server: TLS from .*, full handshake" "$work/server-debug.err" || true)
  resumed=$(grep -c "server: TLS from .*, resumed handshake" "$work/server-debug.err" || true)
  put note.tls-resume "TLS no-mux, $WARM visitors through a second server with debug logs: $((full + resumed)) TLS handshakes (control connection included), $resumed resumed, $full full"
}
if [ -n "$TLSNOMUX_ECHO" ]; then
  say "TLS no-mux: counting full and resumed handshakes"
  tls_resume_check || put note.tls-resume "TLS no-mux: the handshake count (second server, debug logs) did not come up"
fi

# ---------------------------------------------------------------- HTTP
# wrk, keep-alive, HC connections over 2 threads, GET / of the same HTTP
# service on every path; 1 s warm-up first (not measured).
http_run() { # KEY PORT HOST
  local key=$1 port=$2 host=$3 rc=0 v
  if [ -z "$port" ]; then
    put "http.$key.rps" n/a
    return
  fi
  timeout 30 wrk -t2 -c"$HC" -d1s -H "Host: $host" "http://127.0.0.1:$port/" \
    >"$work/wrk-$key-warm.out" 2>&1 || true
  timeout $((T + 60)) wrk -t2 -c"$HC" -d"${T}s" --latency -H "Host: $host" \
    "http://127.0.0.1:$port/" >"$work/wrk-$key.out" 2>&1 || rc=$?
  if ! v=$($H wrk "$work/wrk-$key.out"); then
    say "wrk $key failed (status $rc): ${v#err: }"
    put "note.http-$key" "wrk $key failed (status $rc): ${v#err: } $(tail -n 2 "$work/wrk-$key.out" | tr '\n' ' ')"
    put "http.$key.rps" err
    check_tunnel "wrk $key"
    return
  fi
  local rps p50 p99 errs
  read -r rps p50 p99 errs <<<"$v"
  put "http.$key.rps" "$rps"
  put "http.$key.p50" "$p50"
  put "http.$key.p99" "$p99"
  put "http.$key.errs" "$errs"
  [ "$errs" != 0 ] && put "note.http-$key" "wrk $key: $errs failed requests ($(grep -E 'Socket errors|Non-2xx' "$work/wrk-$key.out" | tr -s ' ' | tr '\n' ';'))"
  say "  $key: $rps req/s, p50 $p50 ms, p99 $p99 ms, $errs errors"
  # One connection, one request at a time: the latency a path adds to a
  # request, without the queueing of HC connections in flight.
  if timeout $((T + 60)) wrk -t1 -c1 -d"${T}s" --latency -H "Host: $host" \
    "http://127.0.0.1:$port/" >"$work/wrk1-$key.out" 2>&1 &&
    v=$($H wrk "$work/wrk1-$key.out"); then
    read -r rps p50 p99 errs <<<"$v"
    put "http.$key.p50_1" "$p50"
    say "  $key, 1 connection: p50 $p50 ms"
  else
    put "http.$key.p50_1" err
  fi
  check_tunnel "wrk $key"
}
if [ "$QUICK" = 0 ]; then
  say "HTTP, wrk -t2 -c$HC -d${T}s keep-alive"
  HTTP_ROWS=("direct:$HPORT:127.0.0.1:$HPORT" "socat:$SOCAT_HTTP:127.0.0.1:$SOCAT_HTTP")
  HTTP_ROWS+=("ssh:$SSH_HTTP:127.0.0.1:$SSH_HTTP")
  HTTP_ROWS+=("mux:$THTTP:$MUX_HTTP_HOST")
  if [ -n "$NOMUX_HTTP_HOST" ]; then HTTP_ROWS+=("nomux:$THTTP:$NOMUX_HTTP_HOST"); else HTTP_ROWS+=("nomux::"); fi
  HTTP_ROWS+=("tcpmux:$MUX_HTTPTCP:127.0.0.1:$MUX_HTTPTCP")
  if [ $FRP_HAVE = 1 ]; then
    if [ -n "$FRP_HTTP" ]; then HTTP_ROWS+=("frp:$FRP_HTTP"); else HTTP_ROWS+=("frp::"); fi
  fi
  for row in "${HTTP_ROWS[@]}"; do
    IFS=: read -r key port host <<<"$row"
    # A row whose port is missing (its path did not come up) reads n/a.
    [ -z "$port" ] && host=""
    http_run "$key" "$port" "$host"
  done
fi

# ---------------------------------------------------------------- UDP
# iperf3 -u, visitor -> service, at fixed offered loads, then a short search
# for the highest load with <= 1% loss. iperf3's UDP test also needs its TCP
# control connection: the tunnel and frp each expose a tcp and a udp proxy
# with the same public port number. Runs in quick mode too.
UDP=${BENCH_UDP:-1}
US=${BENCH_UDP_SECONDS:-3}
ULOADS=${BENCH_UDP_LOADS:-200 1000}
ULENS=${BENCH_UDP_LENS:-1400 8000}
USTEPS=${BENCH_UDP_STEPS:-4}
U="python3 $ROOT/bench/udp.py"
UR=$work/udp-results
: >"$UR"
uput() { echo "$1 $2" >>"$UR"; }
for v in "$US" "$USTEPS" $ULOADS $ULENS; do
  case "$v" in '' | *[!0-9]* | 0) die "BENCH_UDP_SECONDS, BENCH_UDP_STEPS, BENCH_UDP_LOADS and BENCH_UDP_LENS must be positive integers" ;; esac
done
ULOADS=$(echo $ULOADS | tr ' ' '\n' | sort -n | tr '\n' ' ')

# udp_run KEY PORT LEN LOAD TAG: one iperf3 -u run at LOAD Mbit/s, datagrams
# of LEN bytes; sets URES to "received_Mbit/s loss_%" or "" on failure.
udp_run() {
  local key=$1 port=$2 len=$3 load=$4 tag=udp-$1-$3-$4-$5 v
  URES=""
  start "iperf3-server-$tag" iperf3 -s -1 -B 127.0.0.1 -p "$UPORT"
  local ipid=$LASTPID
  waitlisten "$UPORT" 5 || die "iperf3 server did not listen on $UPORT: $(cat "$work/iperf3-server-$tag.err")"
  timeout $((US + 30)) iperf3 -u -c 127.0.0.1 -p "$port" -b "${load}M" -l "$len" -t "$US" -J \
    --connect-timeout 5000 >"$work/iperf-$tag.json" 2>"$work/iperf-$tag.err" || true
  if v=$($U iperf "$work/iperf-$tag.json"); then
    URES=$v
  else
    say "iperf3 -u $key $len B at $load Mbit/s failed: ${v#err: }"
    uput "note.$tag" "iperf3 -u $key, $len B at $load Mbit/s: ${v#err: }"
  fi
  stop "$ipid"
  check_tunnel "iperf3 -u $key"
}

# udp_path KEY PORT LEN ROUND: the fixed loads, then the search.
udp_path() {
  local key=$1 port=$2 len=$3 r=$4 load lo=0 hi=0 recv loss n
  for load in $ULOADS; do
    udp_run "$key" "$port" "$len" "$load" "r$r"
    if [ -z "$URES" ]; then
      uput "udp.$key.$len.$load.recv#$r" err
      continue
    fi
    read -r recv loss <<<"$URES"
    uput "udp.$key.$len.$load.recv#$r" "$recv"
    uput "udp.$key.$len.$load.loss#$r" "$loss"
    say "  udp $key $len B, $load Mbit/s: $recv Mbit/s received, $loss% lost"
    # Loss is not always monotonic in the load: the first load above 1%
    # bounds the search, whatever the higher ones do.
    if awk -v l="$loss" 'BEGIN {exit !(l <= 1)}'; then
      [ "$hi" = 0 ] && lo=$load
    elif [ "$hi" = 0 ]; then
      hi=$load
    fi
  done
  for ((n = 0; n < USTEPS; n++)); do
    [ "$hi" = 0 ] && break
    load=$($U next "$lo" "$hi")
    [ -n "$load" ] || break
    udp_run "$key" "$port" "$len" "$load" "r$r-s$n"
    [ -n "$URES" ] || break
    read -r recv loss <<<"$URES"
    say "  udp $key $len B, $load Mbit/s (search): $recv Mbit/s received, $loss% lost"
    if awk -v l="$loss" 'BEGIN {exit !(l <= 1)}'; then lo=$load; else hi=$load; fi
  done
  uput "udp.$key.$len.best#$r" "$lo"
  [ "$hi" = 0 ] && uput "udp.$key.$len.capped" 1
  return 0
}

setup_udp() {
  local rp out i
  UPORT=$($U freeport 0 0) || die "no free port for the UDP service"
  # The tunnel: a tcp and a udp proxy, same public port (server range).
  rp=$($U freeport 20000 29999) || die "no port free for TCP and UDP in 20000-29999"
  start mux-udp "$BIN/tunnel-client" --server "$CONTROL" --token "$token" \
    tcp "127.0.0.1:$UPORT" --remote-port "$rp" --name mux-udp-ctl \
    udp "127.0.0.1:$UPORT" --remote-port "$rp" --name mux-udp
  local cpid=$LASTPID
  for ((i = 0; i < 200; i++)); do
    grep -q "^udp://" "$work/mux-udp.out" 2>/dev/null && grep -q "^tcp://" "$work/mux-udp.out" && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.05
  done
  out=$(grep "^udp://" "$work/mux-udp.out" || true)
  if [ "$out" = "udp://127.0.0.1:$rp" ] && grep -q "^tcp://127.0.0.1:$rp$" "$work/mux-udp.out"; then
    UDP_MUX=$rp
    TUNNEL_PROCS+=("mux-udp:$cpid")
  else
    say "tunnel udp proxy did not register: $(tail -n 3 "$work/mux-udp.err" | tr '\n' ' ')"
    uput note.udp-mux "tunnel-client with tcp+udp proxies on port $rp did not register: $(tail -n 3 "$work/mux-udp.err" | tr '\n' ' ')"
  fi
  # frp: its own frps and frpc (also in quick mode), udp_packet_size 1500
  # (frp's default, stated: datagrams of 1,400 bytes fit).
  [ -x "$PEERS/frps" ] && [ -x "$PEERS/frpc" ] || return 0
  UDP_FRP_HAVE=1
  uput meta.frp "$("$PEERS/frps" --version 2>/dev/null | head -n 1)"
  local bp fp
  bp=$(freeport)
  fp=$($U freeport 0 0) || return 0
  cat >"$work/frps-udp.ini" <<EOF
[common]
bind_addr = 127.0.0.1
bind_port = $bp
proxy_bind_addr = 127.0.0.1
token = $token
log_level = warn
udp_packet_size = 1500
EOF
  cat >"$work/frpc-udp.ini" <<EOF
[common]
server_addr = 127.0.0.1
server_port = $bp
token = $token
log_level = warn
udp_packet_size = 1500

[iperf-ctl]
type = tcp
local_ip = 127.0.0.1
local_port = $UPORT
remote_port = $fp

[iperf-udp]
type = udp
local_ip = 127.0.0.1
local_port = $UPORT
remote_port = $fp
EOF
  start frps-udp "$PEERS/frps" -c "$work/frps-udp.ini"
  PEER_PROCS+=("frps-udp:$LASTPID")
  if ! waitlisten "$bp" 10; then
    uput note.udp-frp "frps did not listen: $(tail -q -n 3 "$work/frps-udp.out" "$work/frps-udp.err" | tr '\n' ' ')"
    return 0
  fi
  start frpc-udp "$PEERS/frpc" -c "$work/frpc-udp.ini"
  PEER_PROCS+=("frpc-udp:$LASTPID")
  if waitlisten "$fp" 10 && $U waitudp "$fp" 10; then
    UDP_FRP=$fp
  else
    uput note.udp-frp "frpc did not register its tcp+udp proxies: $(tail -q -n 3 "$work/frpc-udp.out" "$work/frpc-udp.err" | tr '\n' ' ')"
  fi
}

UDP_MUX="" UDP_FRP="" UDP_FRP_HAVE=0 UPORT=""
if [ "$UDP" = 1 ]; then
  say "UDP: starting a tcp+udp tunnel proxy and frp's"
  setup_udp
  uput meta.rounds "$ROUNDS"
  uput udp.seconds "$US"
  uput udp.fixed "$ULOADS"
  uput udp.lens "$ULENS"
  upaths="direct mux"
  [ $UDP_FRP_HAVE = 1 ] && upaths="$upaths frp"
  uput udp.paths "$upaths"
  for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round of $ROUNDS: UDP, ${US}s per load"
    for key in $upaths; do
      case $key in direct) port=$UPORT ;; mux) port=$UDP_MUX ;; frp) port=$UDP_FRP ;; esac
      for len in $ULENS; do
        # frp 0.46 reads a datagram into udp_packet_size bytes and carries
        # at most about 7.5 KB: larger ones are not compared.
        if [ "$key" = frp ] && [ "$len" -gt 1472 ]; then
          uput "udp.frp.$len.skip" 1
          continue
        fi
        if [ -z "$port" ]; then
          uput "udp.$key.$len.best" n/a
          continue
        fi
        udp_path "$key" "$port" "$len" "$round"
      done
    done
  done
fi

# ---------------------------------------------------------------- STCP
# Secret services: bulk throughput to one service (bench/pump.c) through a
# tcp proxy, through an stcp visitor's local port, and dialled in-process
# (tunnel_client_dial), each measured by the same pump so the ends cost
# the same; frp's tcp proxy and stcp visitor beside them when frp is
# there. Also the CPU each row costs the relay (server) and the clients,
# in seconds per GB carried. Runs in quick mode too.
STCP=${BENCH_STCP:-1}
SR=$work/stcp-results
: >"$SR"
sput() { echo "$1 $2" >>"$SR"; }
cpu_ticks() { # PID...: user+system clock ticks, summed
  local p s=0 t
  for p in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || t=0
    s=$((s + ${t:-0}))
  done
  echo "$s"
}
if [ "$STCP" = 1 ]; then
  PUMP=$work/pump
  # The examples built above link the shared library.
  [ -e "$BUILD/lib/libtunnel.so" ] || die "no lib/libtunnel.so in $BUILD"
  cc -O2 -std=c11 -D_GNU_SOURCE -Wall -o "$PUMP" "$ROOT/bench/pump.c" \
    -I"$ROOT/include" -I"$BUILD/include" "$BUILD/lib/libtunnel.so" \
    -Wl,-rpath,"$BUILD/lib" "${uvflags[@]}" >"$work/cc-pump.log" 2>&1 ||
    { cat "$work/cc-pump.log" >&2; die "cannot compile bench/pump.c"; }
  start pump-service "$PUMP" serve 0
  line=$(wait_line "$work/pump-service.out" "$LASTPID" 10) || die "the pump service did not start: $(cat "$work/pump-service.err")"
  PPORT=${line##*:}
  # The tunnel's three paths, from clients of their own.
  ST_TCP="" ST_VISIT="" ST_SVC="" ST_VIS_PID="" ST_CLIENTS=() ssecret=bench-pump-$RANDOM$RANDOM
  start st-tcp "$BIN/tunnel-client" --server "$CONTROL" --token "$token" \
    tcp "127.0.0.1:$PPORT" --name st-tcp
  if out=$(wait_line "$work/st-tcp.out" "$LASTPID" 10); then
    ST_TCP=${out##*:} ST_CLIENTS+=("$LASTPID") TUNNEL_PROCS+=("st-tcp:$LASTPID")
  fi
  start st-service "$BIN/tunnel-client" --server "$CONTROL" --token "$token" \
    stcp "127.0.0.1:$PPORT" --name bench-pump --secret "$ssecret"
  if [ "$(wait_line "$work/st-service.out" "$LASTPID" 10)" = stcp://bench-pump ]; then
    ST_SVC=1 ST_CLIENTS+=("$LASTPID") TUNNEL_PROCS+=("st-service:$LASTPID")
    start st-visitor "$BIN/tunnel-client" --server "$CONTROL" --token "$token" \
      visit bench-pump --secret "$ssecret" --bind 127.0.0.1:0
    if out=$(wait_line "$work/st-visitor.out" "$LASTPID" 10); then
      ST_VISIT=${out##*:} ST_VIS_PID=$LASTPID TUNNEL_PROCS+=("st-visitor:$LASTPID")
    fi
  fi
  [ -n "$ST_TCP" ] && [ -n "$ST_VISIT" ] ||
    sput note.stcp "tunnel rows read n/a: $(tail -q -n 2 "$work/st-tcp.err" "$work/st-service.err" "$work/st-visitor.err" 2>/dev/null | tr '\n' ' ')"
  # frp: frps, one frpc with a tcp and an stcp proxy, one visitor frpc.
  FST_TCP="" FST_VISIT="" FST_PIDS=()
  if [ -x "$PEERS/frps" ] && [ -x "$PEERS/frpc" ]; then
    sput meta.frp "$("$PEERS/frps" --version 2>/dev/null | head -n 1)"
    fbp=$(freeport) ftp=$(freeport) fvp=$(freeport)
    printf '[common]\nbind_addr = 127.0.0.1\nbind_port = %s\nproxy_bind_addr = 127.0.0.1\ntoken = %s\nlog_level = warn\n' \
      "$fbp" "$token" >"$work/frps-st.ini"
    printf '[common]\nserver_addr = 127.0.0.1\nserver_port = %s\ntoken = %s\nlog_level = warn\n\n[tp]\ntype = tcp\nlocal_ip = 127.0.0.1\nlocal_port = %s\nremote_port = %s\n\n[st]\ntype = stcp\nsk = %s\nlocal_ip = 127.0.0.1\nlocal_port = %s\n' \
      "$fbp" "$token" "$PPORT" "$ftp" "$ssecret" "$PPORT" >"$work/frpc-st.ini"
    printf '[common]\nserver_addr = 127.0.0.1\nserver_port = %s\ntoken = %s\nlog_level = warn\n\n[st_visitor]\ntype = stcp\nrole = visitor\nserver_name = st\nsk = %s\nbind_addr = 127.0.0.1\nbind_port = %s\n' \
      "$fbp" "$token" "$ssecret" "$fvp" >"$work/frpv-st.ini"
    start frps-st "$PEERS/frps" -c "$work/frps-st.ini"
    FST_SRV=$LASTPID PEER_PROCS+=("frps-st:$LASTPID")
    if waitlisten "$fbp" 10; then
      start frpc-st "$PEERS/frpc" -c "$work/frpc-st.ini"
      FST_PIDS+=("$LASTPID") PEER_PROCS+=("frpc-st:$LASTPID")
      start frpv-st "$PEERS/frpc" -c "$work/frpv-st.ini"
      FST_VIS_PID=$LASTPID PEER_PROCS+=("frpv-st:$LASTPID")
      waitlisten "$ftp" 10 && FST_TCP=$ftp
      waitlisten "$fvp" 10 && FST_VISIT=$fvp
    fi
    [ -n "$FST_TCP" ] && [ -n "$FST_VISIT" ] ||
      sput note.stcp-frp "frp rows read n/a: $(tail -q -n 3 "$work/frps-st.err" "$work/frpc-st.err" "$work/frpv-st.err" 2>/dev/null | tr '\n' ' ')"
    sleep 1 # frp's visitor registers after it listens
  fi
  sput stcp.seconds "$T"
  # pump_row KEY DIR ROUND RELAY_PID "CLIENT_PIDS" READY ARGS...: READY
  # empty when the row's path did not come up.
  pump_row() {
    local key=$1 dir=$2 r=$3 relay=$4 clients=$5 ready=$6 out s0 s1 c0 c1
    shift 6
    if [ -z "$ready" ]; then
      sput "stcp.$key.$dir#$r" n/a
      return
    fi
    s0=$(cpu_ticks "$relay") c0=$(cpu_ticks $clients)
    if out=$(timeout $((T + 40)) "$PUMP" "$@" "$T" "$dir" 2>"$work/pump-$key-$dir-$r.err"); then
      s1=$(cpu_ticks "$relay") c1=$(cpu_ticks $clients)
      local gb bytes
      gb=$(echo "$out" | sed -n 's/.*gbit_s=\([0-9.]*\).*/\1/p')
      bytes=$(echo "$out" | sed -n 's/^bytes=\([0-9]*\).*/\1/p')
      sput "stcp.$key.$dir#$r" "$gb"
      sput "stcp.$key.$dir.relay#$r" "$(awk -v t=$((s1 - s0)) -v b="$bytes" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}')"
      sput "stcp.$key.$dir.clients#$r" "$(awk -v t=$((c1 - c0)) -v b="$bytes" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}')"
      say "  $key $dir: $gb Gbit/s"
    else
      sput "stcp.$key.$dir#$r" err
      sput "note.pump-$key-$dir-$r" "$(head -c 300 "$work/pump-$key-$dir-$r.err" | tr '\n' ' ')"
      say "  $key $dir: failed: $(head -c 300 "$work/pump-$key-$dir-$r.err")"
    fi
  }
  for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round of $ROUNDS: secret services, ${T}s per direction"
    for dir in fwd rev; do
      pump_row tcp "$dir" "$round" "$SERVER_PID" "${ST_CLIENTS[*]}" "$ST_TCP" tcp "127.0.0.1:$ST_TCP"
      pump_row visit "$dir" "$round" "$SERVER_PID" "${ST_CLIENTS[*]} $ST_VIS_PID" "$ST_VISIT" tcp "127.0.0.1:$ST_VISIT"
      pump_row dial "$dir" "$round" "$SERVER_PID" "${ST_CLIENTS[*]}" "$ST_SVC" dial "$CONTROL" "$token" bench-pump "$ssecret"
      if [ -n "$FST_TCP" ] && [ -n "$FST_VISIT" ]; then
        pump_row frp-tcp "$dir" "$round" "$FST_SRV" "${FST_PIDS[*]}" 1 tcp "127.0.0.1:$FST_TCP"
        pump_row frp-visit "$dir" "$round" "$FST_SRV" "${FST_PIDS[*]} $FST_VIS_PID" 1 tcp "127.0.0.1:$FST_VISIT"
      fi
    done
    check_tunnel "secret services"
  done
fi

put hwm.client_mux "$(hwm "$MUX_PID")"
[ -n "$NOMUX_PID" ] && put hwm.client_nomux "$(hwm "$NOMUX_PID")"
[ -n "$TLSMUX_PID" ] && put hwm.client_tlsmux "$(hwm "$TLSMUX_PID")"
check_tunnel "the end of the run"
# Reconnects of a tunnel-client mean its control connection broke mid-run.
for e in "${TUNNEL_PROCS[@]}"; do
  name=${e%%:*}
  [ "$name" = server ] && continue
  n=$(grep -c "disconnected:" "$work/$name.err" || true)
  [ "${n:-0}" -gt 0 ] && put "note.reconnect-$name" "tunnel-client $name lost its server connection $n time(s): $(grep -m1 -B1 "disconnected:" "$work/$name.err" | tr '\n' ' ')"
done

$H report "$RES"
if [ "$UDP" = 1 ]; then $U report "$UR"; fi
if [ "$STCP" = 1 ]; then python3 "$ROOT/bench/stcp.py" report "$SR"; fi
