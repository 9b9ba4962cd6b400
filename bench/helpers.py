#!/usr/bin/env python3
"""Small helpers for bench/run.sh (standard library only).

  helpers.py freeport                 print a free TCP port on 127.0.0.1
  helpers.py waitlisten PORT SECONDS  wait until something listens on PORT
  helpers.py iperf JSONFILE           print Gbit/s received, or "err: ..."
  helpers.py waithttp PORT HOST SECONDS
                                      wait until GET / with Host HOST on
                                      127.0.0.1:PORT answers 200
  helpers.py wrk OUTFILE              print "req/s p50_ms p99_ms errors"
                                      from wrk --latency output, or "err: ..."
  helpers.py report RESULTSFILE       print the result tables
"""
import json
import re
import socket
import sys
import time


def freeport():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def listening(port):
    """True if a TCP socket listens on PORT (IPv4 or IPv6), per /proc."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state = parts[1], parts[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            pass
    return False


def waitlisten(port, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if listening(port):
            return 0
        time.sleep(0.02)
    return 1


def http_ok(port, host):
    """True if GET / with Host `host` on 127.0.0.1:port answers 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close"
                       "\r\n\r\n" % host).encode())
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.split(b" ", 2)[1:2] == [b"200"]


def waithttp(port, host, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if http_ok(port, host):
            return 0
        time.sleep(0.05)
    return 1


WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        print("err: no wrk output (%s)" % e)
        return 1
    m = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    if not m:
        last = text.strip().splitlines()[-1:] or ["empty output"]
        print("err: no Requests/sec in wrk output: %s" % last[0])
        return 1
    rps = float(m.group(1))
    lat = {}
    for pct, v, unit in re.findall(
            r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        lat[pct] = float(v) * WRK_UNITS[unit]
    if "50" not in lat or "99" not in lat:
        print("err: no latency distribution in wrk output (--latency)")
        return 1
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                  r"timeout (\d+)", text)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errs += int(m.group(1))
    print("%.0f %.3f %.3f %d" % (rps, lat["50"], lat["99"], errs))
    return 0


def iperf(path):
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        print("err: no iperf3 JSON (%s)" % e)
        return 1
    if "error" in j:
        print("err: %s" % j["error"])
        return 1
    try:
        bps = j["end"]["sum_received"]["bits_per_second"]
    except KeyError:
        print("err: iperf3 JSON has no end.sum_received")
        return 1
    print("%.3f" % (bps / 1e9))
    return 0


def load(path):
    r = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or " " not in line:
                continue
            k, v = line.split(" ", 1)
            r[k] = v
    return r


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def http_report(r, ratio, rcell):
    """The HTTP table: req/s and latency per path, then same-run ratios."""
    if not any(k.startswith("http.") for k in r):
        return
    rows = [
        ("direct", "direct (no relay)"),
        ("socat", "socat chain (2 relays)"),
        ("ssh", "ssh -R"),
        ("mux", "tunnel http vhost, mux"),
        ("nomux", "tunnel http vhost, no-mux"),
        ("tcpmux", "tunnel tcp proxy, mux"),
    ]
    if any(k.startswith("http.frp.") for k in r):
        rows.append(("frp", " ".join(("frp %s http vhost (mux)" % r.get(
            "meta.frp", "")).split())))

    def cell(key, fmt):
        v = r.get(key, "n/a")
        n = num(v)
        return fmt % n if n is not None else v

    d50 = num(r.get("http.direct.p50"))
    print()
    print("HTTP: wrk -t2 -c%s -d%ss, keep-alive, GET / of a 13-byte body "
          "(bench/httpd.c)" % (r.get("meta.http_conns"), r.get("meta.seconds")))
    print()
    hdr = "%-34s %9s %8s %8s %12s %7s" % ("path", "req/s", "p50 ms", "p99 ms",
                                          "p50 added ms", "errors")
    print(hdr)
    print("-" * len(hdr))
    for key, label in rows:
        p50 = num(r.get("http.%s.p50" % key))
        added = "" if key == "direct" else (
            "n/a" if p50 is None or d50 is None else "%+.3f" % (p50 - d50))
        print("%-34s %9s %8s %8s %12s %7s" % (
            label, cell("http.%s.rps" % key, "%.0f"),
            cell("http.%s.p50" % key, "%.3f"), cell("http.%s.p99" % key, "%.3f"),
            added, r.get("http.%s.errs" % key, "")))
    print()
    hdr = "%-40s %8s %9s %9s" % ("ratio (req/s; latency: tunnel / other)",
                                 "req/s", "p50", "p99")
    print(hdr)
    print("-" * len(hdr))
    pairs = [("mux", "socat"), ("mux", "frp"), ("mux", "ssh"),
             ("mux", "direct"), ("mux", "tcpmux"), ("nomux", "socat"),
             ("nomux", "frp"), ("frp", "direct")]
    names = dict(rows)
    short = {"mux": "tunnel mux", "nomux": "tunnel no-mux", "socat": "socat",
             "frp": "frp", "ssh": "ssh -R", "direct": "direct",
             "tcpmux": "tunnel tcp proxy"}
    for a, b in pairs:
        if a not in names or b not in names:
            continue
        print("%-40s %8s %9s %9s" % (
            "%s / %s" % (short[a], short[b]),
            rcell(ratio("http.%s.rps" % a, "http.%s.rps" % b)),
            rcell(ratio("http.%s.p50" % a, "http.%s.p50" % b)),
            rcell(ratio("http.%s.p99" % a, "http.%s.p99" % b))))


def report(path):
    r = load(path)
    rows = [
        ("direct", "direct (no relay)"),
        ("socat", "socat chain (2 relays)"),
        ("ssh", "ssh -R"),
        ("mux", "tunnel, mux"),
        ("nomux", "tunnel, no-mux"),
    ]
    # Peer tunnels: rows only when the run measured them (their binaries
    # were there).
    peers = []
    for key, label in (("frp", "frp %s (frps+frpc, mux)" % r.get("meta.frp", "")),
                       ("bore", "bore %s" % r.get("meta.bore", ""))):
        if any(k.startswith(("tput.%s." % key, "conn.%s." % key)) for k in r):
            peers.append((key, " ".join(label.split()), key))
    rows += [(key, label) for key, label, _ in peers]

    def cell(key, fmt="%.2f"):
        v = r.get(key, "n/a")
        n = num(v)
        return fmt % n if n is not None else v

    print()
    print("libtunnel bench  (%s)" % r.get("meta.desc", ""))
    print()
    print("Throughput, iperf3 single stream, %s s each; new connections: %s "
          "total, %s concurrent" % (r.get("meta.seconds"), r.get("meta.conns"),
                                   r.get("meta.conc")))
    print()
    hdr = "%-30s %11s %11s %10s %9s %9s" % (
        "path", "fwd Gbit/s", "rev Gbit/s", "conn/s", "p50 ms", "p99 ms")
    print(hdr)
    print("-" * len(hdr))
    for key, label in rows:
        print("%-30s %11s %11s %10s %9s %9s" % (
            label, cell("tput.%s.fwd" % key), cell("tput.%s.rev" % key),
            cell("conn.%s.rate" % key, "%.0f"),
            cell("conn.%s.p50" % key), cell("conn.%s.p99" % key)))

    def ratio(a, b):
        x, y = num(r.get(a)), num(r.get(b))
        if x is None or y is None or y == 0:
            return None
        return x / y

    def rcell(x):
        return "n/a" if x is None else "%.2fx" % x

    print()
    hdr = "%-26s %7s %7s %8s   %s" % ("ratio (tunnel / baseline)", "fwd",
                                     "rev", "conn/s", "target (throughput)")
    print(hdr)
    print("-" * (len(hdr) + 20))
    targets = {("mux", "socat"): 1.2, ("nomux", "socat"): 2.5}
    baselines = [("socat", "socat chain"), ("ssh", "ssh -R"),
                 ("direct", "direct")]
    baselines += [(key, short) for key, _, short in peers]
    for t, tl in (("mux", "mux"), ("nomux", "no-mux")):
        for b, bl in baselines:
            f = ratio("tput.%s.fwd" % t, "tput.%s.fwd" % b)
            v = ratio("tput.%s.rev" % t, "tput.%s.rev" % b)
            c = ratio("conn.%s.rate" % t, "conn.%s.rate" % b)
            tgt = ""
            if (t, b) in targets:
                want = targets[(t, b)]
                if f is None or v is None:
                    verdict = "n/a"
                elif min(f, v) >= want:
                    verdict = "met"
                else:
                    verdict = "NOT met"
                tgt = ">= %.1fx: %s" % (want, verdict)
            print("%-26s %7s %7s %8s   %s" % ("%s / %s" % (tl, bl), rcell(f),
                                             rcell(v), rcell(c), tgt))
    # The peer tunnels against the same direct baseline.
    if peers:
        print()
    for key, _, short in peers:
        print("%-26s %7s %7s %8s" % (
            "%s / direct" % short,
            rcell(ratio("tput.%s.fwd" % key, "tput.direct.fwd")),
            rcell(ratio("tput.%s.rev" % key, "tput.direct.rev")),
            rcell(ratio("conn.%s.rate" % key, "conn.direct.rate"))))

    http_report(r, ratio, rcell)

    print()
    hdr = "%-40s %9s %9s   %s" % ("idle memory (registered + 1 s)",
                                   "RSS KiB", "priv KiB", "note")
    print(hdr)
    print("-" * (len(hdr) + 20))

    def rss_row(key, label, note=""):
        pk = "priv." + key.split(".", 1)[1]
        print("%-40s %9s %9s   %s" % (label, r.get(key, "n/a"),
                                     r.get(pk, "") if key.startswith("rss.")
                                     else "", note))

    lim = 2048
    for key, label in (("rss.client_mux", "tunnel-client, 1 proxy, mux"),
                       ("rss.client_nomux", "tunnel-client, 1 proxy, no-mux")):
        v = num(r.get(key))
        note = "target <= %d KiB: %s" % (
            lim, "n/a" if v is None else ("met" if v <= lim else "NOT met"))
        rss_row(key, label, note)
    rss_row("rss.socat", "socat, idle listener (baseline)")
    s, c = num(r.get("rss.socat")), num(r.get("rss.client_mux"))
    if s and c:
        print("%-40s %9s" % ("  tunnel-client (mux) / socat", "%.2fx" % (c / s)))
    rss_row("rss.ssh", "ssh -R client, idle", "informational")
    rss_row("rss.server", "tunnel-server, idle", "informational")
    for key, label in (("rss.frpc", "frpc, 2 proxies, idle"),
                       ("rss.bore", "bore local, 1 port, idle")):
        if key in r:
            rss_row(key, label, "informational")
    rss_row("hwm.client_mux", "tunnel-client mux, peak after load",
            "informational (VmHWM)")
    rss_row("hwm.client_nomux", "tunnel-client no-mux, peak after load",
            "informational (VmHWM)")
    print("(priv = Private_Clean + Private_Dirty from smaps_rollup: memory "
          "not shared with other processes; RSS also counts shared libc etc.)")
    notes = [v for k, v in sorted(r.items()) if k.startswith("note.")]
    if notes:
        print()
        print("notes:")
        for n in notes:
            print("  - " + n)


def main(argv):
    if len(argv) >= 2 and argv[1] == "freeport":
        return freeport()
    if len(argv) == 4 and argv[1] == "waitlisten":
        return waitlisten(int(argv[2]), float(argv[3]))
    if len(argv) == 3 and argv[1] == "iperf":
        return iperf(argv[2])
    if len(argv) == 5 and argv[1] == "waithttp":
        return waithttp(int(argv[2]), argv[3], float(argv[4]))
    if len(argv) == 3 and argv[1] == "wrk":
        return wrk(argv[2])
    if len(argv) == 3 and argv[1] == "report":
        return report(argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv) or 0)
