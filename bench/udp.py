#!/usr/bin/env python3
"""UDP helpers for bench/run.sh (standard library only).

  udp.py freeport LO HI       print a port in [LO, HI] (0 0: any) that is
                              free on 127.0.0.1 for TCP and for UDP alike
                              (iperf3 -u needs both under one number)
  udp.py waitudp PORT SECONDS wait until a UDP socket is bound to PORT
  udp.py iperf JSONFILE       print "received_Mbit/s loss_%" of an iperf3 -u
                              run, or "err: ..."
  udp.py next LO HI           the next offered load (Mbit/s) of the search
                              between LO (<= 1% loss, 0: none yet) and HI
                              (> 1% loss); prints nothing when they are close
  udp.py report RESULTSFILE   print the UDP table
"""
import json
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import load, median  # noqa: E402

LOSS_OK = 1.0  # percent


def both_free(port):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        t.bind(("127.0.0.1", port))
        u.bind(("127.0.0.1", t.getsockname()[1] if port == 0 else port))
        return t.getsockname()[1]
    except OSError:
        return None
    finally:
        t.close()
        u.close()


def freeport(lo, hi):
    for _ in range(200):
        p = both_free(0 if lo == 0 else random.randint(lo, hi))
        if p:
            print(p)
            return 0
    print("err: no port free for both TCP and UDP")
    return 1


def waitudp(port, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            return 0
        finally:
            u.close()
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
        s = j["end"]["sum"]
        loss = s["lost_percent"]
        # iperf3 >= 3.9 gives the receiver's own figure; older ones only
        # the sender's rate, which the loss scales down.
        rcv = j["end"].get("sum_received")
        bps = rcv["bits_per_second"] if rcv else s["bits_per_second"] * (1 - loss / 100)
    except (KeyError, TypeError):
        print("err: iperf3 JSON has no UDP summary (end.sum.lost_percent)")
        return 1
    print("%.1f %.3f" % (bps / 1e6, loss))
    return 0


def next_load(lo, hi):
    # Halve the gap until it is under 15% of the lower end: a few steps.
    if hi <= 0:
        return 0
    mid = (lo + hi) / 2 if lo > 0 else hi / 4
    if lo > 0 and (hi - lo) < 0.15 * lo:
        return 0
    if mid < 5:
        return 0
    print("%d" % round(mid))
    return 0


def report(path):
    r = load(path)
    paths = r.get("udp.paths", "").split()
    labels = {"direct": "direct (no relay)", "mux": "tunnel, mux",
              "frp": "frp %s (frps+frpc)" % r.get("meta.frp", "")}
    fixed = [int(x) for x in r.get("udp.fixed", "").split()]
    lens = r.get("udp.lens", "").split()

    def rounds(key):
        return r.rounds.get(key, {})

    def cell(k):
        rc, lo = r.get(k + ".recv"), r.get(k + ".loss")
        if rc is None:
            return "n/a"
        try:
            return "%.0f / %.2f%%" % (float(rc), float(lo))
        except (TypeError, ValueError):
            return "err"

    def best(p, ln):
        # Median over the rounds of the highest load with <= 1% loss, with
        # ">=" when even the highest load tried stayed under 1%.
        k = "udp.%s.%s.best" % (p, ln)
        xs = list(rounds(k).values())
        if not xs:
            return None, r.get(k, "n/a")
        m = median(xs)
        capped = r.get("udp.%s.%s.capped" % (p, ln)) == "1"
        txt = ("%s%.0f" % (">= " if capped else "", m))
        if len(xs) > 1:
            txt += " (%.0f-%.0f)" % (min(xs), max(xs))
        return m, txt

    secs = r.get("udp.seconds", "?")
    print()
    print("UDP, iperf3 -u, %s s per offered load, visitor -> service; "
          "cells: received Mbit/s / loss %% (median of %s round(s))"
          % (secs, r.get("meta.rounds", "1")))
    head = ["path", "len"] + ["%d Mbit/s" % f for f in fixed] + ["max load <= 1% loss"]
    rows = []
    for p in paths:
        for ln in lens:
            if "udp.%s.%s.skip" % (p, ln) in r:
                continue
            cells = [cell("udp.%s.%s.%d" % (p, ln, f)) for f in fixed]
            rows.append([" ".join(labels.get(p, p).split()), ln] + cells + [best(p, ln)[1]])
    w = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    fmt = "| " + " | ".join("%%-%ds" % n for n in w) + " |"
    print(fmt % tuple(head))
    print("|" + "|".join("-" * (n + 2) for n in w) + "|")
    for row in rows:
        print(fmt % tuple(row))
    print()
    for ln in lens:
        m, _ = best("mux", ln)
        for other in ("frp", "direct"):
            if other not in paths or "udp.%s.%s.skip" % (other, ln) in r:
                continue
            o, _ = best(other, ln)
            if m is None or not o:
                print("tunnel / %s, max load <= 1%% loss, %s B: n/a" % (other, ln))
                continue
            # Per round, then the median, like the TCP ratios.
            ra, rb = rounds("udp.mux.%s.best" % ln), rounds("udp.%s.%s.best" % (other, ln))
            per = [ra[k] / rb[k] for k in ra if k in rb and rb[k]]
            txt = "%.2fx" % median(per) if per else "%.2fx" % (m / o)
            if len(per) > 1:
                txt += " (rounds %.2f-%.2f)" % (min(per), max(per))
            print("tunnel / %s, max load <= 1%% loss, %s B: %s" % (other, ln, txt))
    notes = [v for k, v in sorted(r.items()) if k.startswith("note.")]
    if notes:
        print()
        print("UDP notes:")
        for n in notes:
            print("  - " + n)
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "freeport":
        return freeport(int(argv[2]), int(argv[3]))
    if len(argv) == 4 and argv[1] == "waitudp":
        return waitudp(int(argv[2]), float(argv[3]))
    if len(argv) == 3 and argv[1] == "iperf":
        return iperf(argv[2])
    if len(argv) == 4 and argv[1] == "next":
        return next_load(float(argv[2]), float(argv[3]))
    if len(argv) == 3 and argv[1] == "report":
        return report(argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv) or 0)
