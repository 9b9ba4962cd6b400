#!/usr/bin/env python3
"""Secret-service (stcp) report for bench/run.sh (standard library only).

  stcp.py report RESULTSFILE   print the table and the ratios
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import load, median, round_ratios  # noqa: E402

ROWS = [
    ("tcp", "tunnel, tcp proxy"),
    ("visit", "tunnel, stcp visitor port"),
    ("dial", "tunnel, stcp in-process dial"),
    ("frp-tcp", "frp, tcp proxy"),
    ("frp-visit", "frp, stcp visitor port"),
]
TARGET = 0.9  # secret service / tcp proxy of the same tunnel


def cell(r, key, fmt):
    v = r.get(key)
    if v is None:
        return "n/a"
    try:
        return fmt % float(v)
    except ValueError:
        return str(v)


def report(path):
    r = load(path)
    rows = [(k, label) for k, label in ROWS if "stcp.%s.fwd" % k in r]
    if not rows:
        return 0
    rounds = max((len(v) for k, v in r.rounds.items()
                  if k.startswith("stcp.")), default=1)
    print()
    print("Secret services: bulk throughput to one service through each path "
          "(bench/pump.c at both ends), %s s per direction, median of %d "
          "round(s); CPU in seconds per GB carried" %
          (r.get("stcp.seconds", "?"), rounds))
    hdr = "%-30s %9s %9s %11s %11s %12s %12s" % (
        "path", "fwd Gb/s", "rev Gb/s", "relay fwd", "relay rev",
        "clients fwd", "clients rev")
    print(hdr)
    print("-" * len(hdr))
    for k, label in rows:
        print("%-30s %9s %9s %11s %11s %12s %12s" % (
            label,
            cell(r, "stcp.%s.fwd" % k, "%.2f"),
            cell(r, "stcp.%s.rev" % k, "%.2f"),
            cell(r, "stcp.%s.fwd.relay" % k, "%.2f s"),
            cell(r, "stcp.%s.rev.relay" % k, "%.2f s"),
            cell(r, "stcp.%s.fwd.clients" % k, "%.2f s"),
            cell(r, "stcp.%s.rev.clients" % k, "%.2f s")))
    print("(relay: the server's CPU; clients: the tunnel clients' CPU, the "
          "visitor's own client included; a dialling program's client runs "
          "inside the pump and is not counted)")
    print()
    hdr = "%-34s %8s %16s   %s" % ("ratio, per round", "median", "rounds",
                                   "target")
    print(hdr)
    print("-" * (len(hdr) + 16))
    pairs = [
        ("dial", "tcp", "stcp dial / tcp proxy", True),
        ("visit", "tcp", "stcp visitor / tcp proxy", True),
        ("frp-visit", "frp-tcp", "frp: stcp visitor / tcp proxy", False),
        ("visit", "frp-visit", "stcp visitor: tunnel / frp", False),
    ]
    for a, b, label, target in pairs:
        for d in ("fwd", "rev"):
            xs = round_ratios(r, "stcp.%s.%s" % (a, d), "stcp.%s.%s" % (b, d))
            if not xs:
                continue
            m = median(xs)
            tgt = ""
            if target:
                tgt = ">= %.1fx: %s" % (TARGET,
                                        "met" if m >= TARGET else "NOT met")
            print("%-34s %7.2fx %16s   %s" % (
                "%s, %s" % (label, d), m,
                "[%.2f..%.2f]" % (min(xs), max(xs)), tgt))
    notes = [(k, v) for k, v in r.items()
             if k.startswith("note.stcp") or k.startswith("note.pump")]
    for k, v in notes:
        print("note: %s" % v)
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "report":
        return report(argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
