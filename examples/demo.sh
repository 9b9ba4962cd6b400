#!/bin/bash
# The demo: builds libtunnel, then on loopback starts a tunnel-server, a
# local "hello" service and a tunnel-client exposing it, fetches the
# service through the public port, and stops everything.
# It needs bash (/dev/tcp, arrays): started with another shell, it moves.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -eu
cd "$(dirname "$0")/.."
sh .ci/install-deps
if [ ! -f build-demo/build.ninja ]; then
  meson setup build-demo --buildtype=release -Dtests=false >/dev/null
fi
ninja -C build-demo >/dev/null
bin=build-demo/examples
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Waits (bounded) for a line in a file and prints it.
wait_line() {
  for _ in $(seq 1 100); do
    if [ -s "$1" ]; then head -n 1 "$1"; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for $2" >&2
  return 1
}

token=demo-$RANDOM$RANDOM
echo "1. tunnel-server on loopback (public ports 20000-29999)"
"$bin/tunnel-server" --control 127.0.0.1:0 --bind 127.0.0.1 \
  --ports 20000-29999 --token "$token" >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
control=$(wait_line "$work/server.out" "the server" | sed 's/^listening on //')
echo "   clients connect to $control"
for _ in $(seq 1 100); do
  grep -q '^tls certificate' "$work/server.out" && break
  sleep 0.05
done
pin=$(sed -n 's/^tls certificate.* sha256 //p' "$work/server.out")
[ -n "$pin" ] || { echo "demo FAILED: no certificate fingerprint"; exit 1; }
echo "   its TLS certificate (made at start): sha256 ${pin:0:23}..."

echo "2. a local service that only this machine can reach"
"$bin/hello-service" >"$work/hello.out" 2>&1 &
pids+=($!)
local_addr=$(wait_line "$work/hello.out" "the local service")
echo "   listening on $local_addr"

echo "3. tunnel-client exposes it through the server, over TLS pinned to it"
"$bin/tunnel-client" --server "$control" --token "$token" --tls-pin "$pin" \
  tcp "$local_addr" --name hello >"$work/client.out" 2>"$work/client.log" &
pids+=($!)
public=$(wait_line "$work/client.out" "the public address")
echo "   public address: $public"

echo "4. a visitor fetches the public address"
hostport=${public#tcp://}
exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}"
printf 'GET / HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
reply=$(timeout 5 cat <&3)
exec 3<&-
printf '%s\n' "$reply" | sed 's/^/   | /'
case "$reply" in
*"Hello from behind the tunnel"*) echo "demo ok: the local service answered through the tunnel" ;;
*) echo "demo FAILED: unexpected reply"; cat "$work"/*.log; exit 1 ;;
esac
