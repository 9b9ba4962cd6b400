#!/usr/bin/env python3
"""Small helpers for bench/run.sh (standard library only).

  helpers.py freeport                 print a free TCP port on 127.0.0.1
  helpers.py waitlisten PORT SECONDS  wait until something listens on PORT
  helpers.py iperf JSONFILE           print Gbit/s received, or "err: ..."
  helpers.py report RESULTSFILE       print the result tables
"""
import json
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
    if len(argv) == 3 and argv[1] == "report":
        return report(argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv) or 0)
