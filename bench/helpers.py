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


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


class Results(dict):
    """{key: value}, and in .rounds {key: {round: number}} for the keys
    measured in rounds."""
    rounds = None


def load(path):
    """The results. A key measured in rounds (KEY#ROUND) reads as the median
    of its numeric rounds ("err" if none is); its rounds are in .rounds."""
    r = Results()
    r.rounds = {}
    rounds = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or " " not in line:
                continue
            k, v = line.split(" ", 1)
            if "#" in k:
                k, rd = k.rsplit("#", 1)
                rounds.setdefault(k, {})[rd] = num(v)
            else:
                r[k] = v
    for k, per in rounds.items():
        xs = [x for x in per.values() if x is not None]
        r[k] = repr(median(xs)) if xs else "err"
        r.rounds[k] = {rd: x for rd, x in per.items() if x is not None}
    return r


def spread(r, key):
    """Half the range of KEY's rounds, relative to their median (None with
    fewer than two rounds)."""
    xs = list(r.rounds.get(key, {}).values())
    if len(xs) < 2:
        return None
    m = median(xs)
    return (max(xs) - min(xs)) / 2 / m if m else None


def round_ratios(r, a, b):
    """A / B in each round where both were measured."""
    ra, rb = r.rounds.get(a, {}), r.rounds.get(b, {})
    return [ra[k] / rb[k] for k in ra if k in rb and rb[k]]


def tls_report(r):
    """Plain against TLS between tunnel-client and tunnel-server, and the
    TLS tunnel against ssh -R: medians, spread, per-round ratios."""
    if not any(k.startswith(("tput.tls", "conn.tls")) for k in r):
        return
    n = r.get("meta.rounds", "1")
    suite = r.get("meta.tls") or "cipher suite not reported"

    def rng(key, fmt):
        xs = list(r.rounds.get(key, {}).values())
        if not xs:
            return r.get(key, "n/a")
        m = fmt % median(xs)
        if len(xs) < 2:
            return m
        return "%s [%s..%s]" % (m, fmt % min(xs), fmt % max(xs))

    print()
    print("TLS between tunnel-client and tunnel-server (%s); %s" % (
        suite, "one round" if n == "1" else
        "median of %s rounds [lowest..highest]" % n))
    print()
    hdr = "%-22s %-20s %-20s %-18s %s" % (
        "path", "fwd Gbit/s", "rev Gbit/s", "conn/s", "conn p50 ms")
    print(hdr)
    print("-" * len(hdr))
    for key, label in (("mux", "tunnel, mux"), ("tlsmux", "tunnel, mux, TLS"),
                       ("nomux", "tunnel, no-mux"),
                       ("tlsnomux", "tunnel, no-mux, TLS"), ("ssh", "ssh -R")):
        print(("%-22s %-20s %-20s %-18s %s" % (
            label, rng("tput.%s.fwd" % key, "%.2f"),
            rng("tput.%s.rev" % key, "%.2f"), rng("conn.%s.rate" % key, "%.0f"),
            rng("conn.%s.p50" % key, "%.3f"))).rstrip())
    print()
    hdr = "%-34s %7s %-16s %s" % ("ratio, per round", "median", "[low..high]",
                                 "target (on the median)")
    print(hdr)
    print("-" * (len(hdr) + 6))
    rows = [
        ("TLS mux / ssh -R, fwd", "tput.tlsmux.fwd", "tput.ssh.fwd", 1.5),
        ("TLS mux / ssh -R, rev", "tput.tlsmux.rev", "tput.ssh.rev", 1.5),
        ("TLS mux / plain mux, conn/s", "conn.tlsmux.rate", "conn.mux.rate",
         0.8),
        ("TLS no-mux / plain no-mux, conn/s", "conn.tlsnomux.rate",
         "conn.nomux.rate", 0.8),
        ("TLS mux / plain mux, fwd", "tput.tlsmux.fwd", "tput.mux.fwd", None),
        ("TLS mux / plain mux, rev", "tput.tlsmux.rev", "tput.mux.rev", None),
        ("TLS no-mux / plain no-mux, fwd", "tput.tlsnomux.fwd",
         "tput.nomux.fwd", None),
        ("TLS no-mux / plain no-mux, rev", "tput.tlsnomux.rev",
         "tput.nomux.rev", None),
    ]
    for label, a, b, want in rows:
        xs = round_ratios(r, a, b)
        if not xs:
            print("%-34s %7s" % (label, "n/a"))
            continue
        m = median(xs)
        span = "[%.2f..%.2f]" % (min(xs), max(xs)) if len(xs) > 1 else ""
        tgt = ""
        if want is not None:
            tgt = ">= %.1fx: %s" % (want, "met" if m >= want else "NOT met")
            if m >= want > min(xs):
                tgt += " (not in every round)"
        print(("%-34s %6.2fx %-16s %s" % (label, m, span, tgt)).rstrip())


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
    d50_1 = num(r.get("http.direct.p50_1"))
    print()
    print("HTTP: wrk -t2 -c%s -d%ss, keep-alive, GET / of a 13-byte body "
          "(bench/httpd.c)" % (r.get("meta.http_conns"), r.get("meta.seconds")))
    print()
    hdr = "%-34s %9s %8s %8s %12s %7s %10s %10s" % (
        "path", "req/s", "p50 ms", "p99 ms", "p50 added ms", "errors",
        "1-conn p50", "1c added")
    print(hdr)
    print("-" * len(hdr))
    for key, label in rows:
        p50 = num(r.get("http.%s.p50" % key))
        added = "" if key == "direct" else (
            "n/a" if p50 is None or d50 is None else "%+.3f" % (p50 - d50))
        p50_1 = num(r.get("http.%s.p50_1" % key))
        added_1 = "" if key == "direct" else (
            "n/a" if p50_1 is None or d50_1 is None else
            "%+.3f" % (p50_1 - d50_1))
        print("%-34s %9s %8s %8s %12s %7s %10s %10s" % (
            label, cell("http.%s.rps" % key, "%.0f"),
            cell("http.%s.p50" % key, "%.3f"), cell("http.%s.p99" % key, "%.3f"),
            added, r.get("http.%s.errs" % key, ""),
            cell("http.%s.p50_1" % key, "%.3f"), added_1))
    print("(1-conn: wrk -t1 -c1, one request at a time: what the path adds "
          "to a request, without queueing)")
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
    if any(k.startswith(("tput.tls", "conn.tls")) for k in r):
        rows[4:4] = [("tlsmux", "tunnel, mux, TLS")]
        rows.append(("tlsnomux", "tunnel, no-mux, TLS"))
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
        if n is None:
            return v
        sp = spread(r, key)
        return fmt % n + ("" if sp is None else "±%.0f%%" % (sp * 100))

    nr = r.get("meta.rounds", "1")
    print()
    print("libtunnel bench  (%s)" % r.get("meta.desc", ""))
    print()
    print("Throughput, iperf3 single stream, %s s each; new connections: %s "
          "total, %s concurrent" % (r.get("meta.seconds"), r.get("meta.conns"),
                                   r.get("meta.conc")))
    if nr != "1":
        print("Median of %s rounds; ±: half the range between the lowest and "
              "highest round, relative to the median" % nr)
    if r.get("meta.quick") == "1":
        print("Quick run (BENCH_QUICK=1): no HTTP, frp or bore")
    print()
    hdr = "%-30s %11s %11s %10s %10s %10s" % (
        "path", "fwd Gbit/s", "rev Gbit/s", "conn/s", "p50 ms", "p99 ms")
    print(hdr)
    print("-" * len(hdr))
    for key, label in rows:
        print("%-30s %11s %11s %10s %10s %10s" % (
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

    tls_report(r)
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
    if "rss.client_tlsmux" in r:
        rss_row("rss.client_tlsmux", "tunnel-client, 1 proxy, mux, TLS",
                "informational")
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
    if "hwm.client_tlsmux" in r:
        rss_row("hwm.client_tlsmux", "tunnel-client mux TLS, peak after load",
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
