#!/usr/bin/env python3
"""The moving parts of bench/soak.sh around the two tunnel programs
(standard library only).

  soak_load.py run STATUSDIR SERVER_PORT
      Runs, all in one process, until SIGTERM:
      - an echo service on 127.0.0.1 (answers a half-close with one);
      - a relay on 127.0.0.1 for the client's link to SERVER_PORT, which
        cuts every relayed connection (RST) every SOAK_CUT_SECONDS and
        then drops new ones for SOAK_CUT_DOWN seconds;
      - visitors: SOAK_RATE per second to the public port, each sending
        SOAK_KIB KiB, half-closing and checking the echo.
      Writes STATUSDIR/ports ("ECHO_PORT RELAY_PORT") once listening, and
      waits for STATUSDIR/public (the public port) before the first
      visitor. STATUSDIR/status, rewritten every 0.5 s, holds
      "ok failed at_cut cuts in_flight". SIGUSR1 says the client is being
      restarted, SIGUSR2 that it is back: in between the relay neither
      cuts nor drops connections (a client whose first connection fails
      exits), and failures from SIGUSR1 until SOAK_GRACE seconds after
      SIGUSR2 count as at a cut, as do those of visitors that overlap a
      cut, its SOAK_CUT_DOWN and the SOAK_GRACE seconds after.
      Unexpected failures are listed in STATUSDIR/failures.
      On SIGTERM: no new visitors, the ones under way finish (10 s at
      most), a last status, exit.
  soak_load.py verdict STATUSDIR WARMUP MAX_FAILED
      Prints the growth per metric from the samples soak.sh took
      (STATUSDIR/samples) and the verdict on the final counts
      (STATUSDIR/status); exit status 1 when more than MAX_FAILED visitors
      failed away from cuts or none succeeded.
"""
import asyncio
import os
import signal
import sys
import time

HOST = "127.0.0.1"


def env_num(name, default):
    v = os.environ.get(name, "")
    return float(v) if v else default


class Load:
    def __init__(self, statusdir, server_port):
        self.dir = statusdir
        self.server_port = server_port
        self.rate = env_num("SOAK_RATE", 4)
        self.size = int(env_num("SOAK_KIB", 32) * 1024)
        self.cut_every = env_num("SOAK_CUT_SECONDS", 45)
        self.cut_down = env_num("SOAK_CUT_DOWN", 2)
        self.grace = env_num("SOAK_GRACE", 10)
        self.ok = self.failed = self.at_cut = self.cuts = 0
        self.in_flight = 0
        self.windows = []       # (from, until): failures expected
        self.restart_from = None  # a client restart under way, since
        self.down_until = 0.0   # the relay drops new connections until
        self.links = set()      # relayed connections: (writer, writer)
        self.stopping = False
        self.public = None
        self.fail_log = open(os.path.join(statusdir, "failures"), "a")
        self.t0 = time.monotonic()

    # ------------------------------------------------------------ services
    async def echo(self, r, w):
        try:
            while True:
                b = await r.read(65536)
                if not b:
                    break
                w.write(b)
                await w.drain()
            if w.can_write_eof():
                w.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def pipe(self, r, w):
        try:
            while True:
                b = await r.read(65536)
                if not b:
                    break
                w.write(b)
                await w.drain()
            if w.can_write_eof():
                w.write_eof()
        except OSError:
            w.transport.abort()

    async def relay(self, cr, cw):
        if time.monotonic() < self.down_until:
            cw.transport.abort()
            return
        try:
            sr, sw = await asyncio.open_connection(HOST, self.server_port)
        except OSError:
            cw.transport.abort()
            return
        link = (cw, sw)
        self.links.add(link)
        try:
            await asyncio.gather(self.pipe(cr, sw), self.pipe(sr, cw))
        finally:
            self.links.discard(link)
            cw.close()
            sw.close()

    async def cutter(self):
        while True:
            await asyncio.sleep(self.cut_every)
            if self.restart_from is not None:
                continue
            now = time.monotonic()
            self.cuts += 1
            self.down_until = now + self.cut_down
            self.windows.append((now, now + self.cut_down + self.grace))
            for a, b in list(self.links):
                a.transport.abort()
                b.transport.abort()

    # ------------------------------------------------------------ visitors
    def expected(self, start, end):
        if self.restart_from is not None and end >= self.restart_from:
            return True
        return any(start <= u and f <= end for f, u in self.windows)

    async def visitor(self, n):
        start = time.monotonic()
        data = os.urandom(self.size)
        why = None
        w = None
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.public), 10)

            async def send():
                w.write(data)
                await w.drain()
                w.write_eof()

            sender = asyncio.ensure_future(send())
            got = await asyncio.wait_for(r.read(), 30)
            await asyncio.wait_for(sender, 5)
            if got != data:
                why = "%d of %d bytes back%s" % (
                    len(got), len(data),
                    "" if len(got) != len(data) else ", different")
        except asyncio.TimeoutError:
            why = "timed out"
        except OSError as e:
            why = "%s: %s" % (type(e).__name__, e)
        finally:
            if w is not None:
                w.transport.abort()
            self.in_flight -= 1
        end = time.monotonic()
        if why is None:
            self.ok += 1
        elif self.expected(start, end):
            self.at_cut += 1
        else:
            self.failed += 1
            self.fail_log.write("t=%.1f-%.1fs visitor %d: %s\n" % (
                start - self.t0, end - self.t0, n, why))
            self.fail_log.flush()

    async def visitors(self):
        path = os.path.join(self.dir, "public")
        while self.public is None:
            try:
                with open(path) as f:
                    self.public = int(f.read().strip())
            except (OSError, ValueError):
                await asyncio.sleep(0.2)
        n = 0
        next_t = time.monotonic()
        tasks = set()
        while not self.stopping:
            n += 1
            self.in_flight += 1
            t = asyncio.ensure_future(self.visitor(n))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            next_t += 1.0 / self.rate
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # ------------------------------------------------------------ status
    def write_status(self):
        tmp = os.path.join(self.dir, "status.tmp")
        with open(tmp, "w") as f:
            f.write("%d %d %d %d %d\n" % (self.ok, self.failed, self.at_cut,
                                          self.cuts, self.in_flight))
        os.replace(tmp, os.path.join(self.dir, "status"))

    async def status(self):
        while True:
            self.write_status()
            await asyncio.sleep(0.5)

    def restart_begins(self):
        self.restart_from = time.monotonic()
        self.down_until = 0.0

    def restart_ends(self):
        if self.restart_from is not None:
            self.windows.append((self.restart_from,
                                 time.monotonic() + self.grace))
            self.restart_from = None

    async def main(self):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: done.done() or
                                done.set_result(None))
        loop.add_signal_handler(signal.SIGUSR1, self.restart_begins)
        loop.add_signal_handler(signal.SIGUSR2, self.restart_ends)
        echo = await asyncio.start_server(self.echo, HOST, 0, backlog=256)
        relay = await asyncio.start_server(self.relay, HOST, 0, backlog=64)
        ports = "%d %d\n" % (echo.sockets[0].getsockname()[1],
                             relay.sockets[0].getsockname()[1])
        with open(os.path.join(self.dir, "ports.tmp"), "w") as f:
            f.write(ports)
        os.replace(os.path.join(self.dir, "ports.tmp"),
                   os.path.join(self.dir, "ports"))
        status = asyncio.ensure_future(self.status())
        cutter = asyncio.ensure_future(self.cutter())
        visitors = asyncio.ensure_future(self.visitors())
        await done
        self.stopping = True
        cutter.cancel()
        try:
            await asyncio.wait_for(visitors, 11)
        except asyncio.TimeoutError:
            pass
        status.cancel()
        self.write_status()
        echo.close()
        relay.close()
        for a, b in list(self.links):
            a.transport.abort()
            b.transport.abort()


# ---------------------------------------------------------------- verdict
def load_samples(path):
    """soak.sh's samples: t srss spriv sfds gen crss cpriv cfds ok failed
    at_cut cuts; gen numbers the client process (1, 2, ... per restart)."""
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) != 12:
                continue
            try:
                rows.append([float(p[0])] + [int(x) if x.isdigit() else None
                                             for x in p[1:]])
            except ValueError:
                continue
    return rows


def growth_line(label, first, last, unit):
    if first is None or last is None:
        return "%-28s %10s" % (label, "n/a")
    d = last - first
    pct = "" if not first else " (%+.1f%%)" % (100.0 * d / first)
    return "%-28s %8d -> %-8d %+8d %s%s" % (label, first, last, d, unit, pct)


def verdict(statusdir, warmup, max_failed):
    rows = load_samples(os.path.join(statusdir, "samples"))
    if not rows:
        print("verdict: FAIL (no samples)")
        return 1
    print()
    print("growth from the first sample after the %d s warm-up to the last:"
          % warmup)
    srv = [r for r in rows if r[0] >= warmup] or rows[-1:]
    a, b = srv[0], srv[-1]
    print("tunnel-server (one process, %.0f s to %.0f s):" % (a[0], b[0]))
    for i, name, unit in ((1, "VmRSS", "KiB"), (2, "Private_Dirty", "KiB"),
                          (3, "open fds", "")):
        print("  " + growth_line(name, a[i], b[i], unit))
    # The client is restarted every few minutes: each process from its own
    # warm-up to its last sample.
    gens = sorted({r[4] for r in rows if r[4] is not None})
    for g in gens:
        mine = [r for r in rows if r[4] == g]
        start = mine[0][0]
        after = [r for r in mine if r[0] >= start + warmup]
        if len(after) < 2:
            print("tunnel-client #%d: %d samples, none after its warm-up"
                  % (g, len(mine)))
            continue
        a, b = after[0], after[-1]
        print("tunnel-client #%d (%.0f s to %.0f s):" % (g, a[0], b[0]))
        for i, name, unit in ((5, "VmRSS", "KiB"), (6, "Private_Dirty", "KiB"),
                              (7, "open fds", "")):
            print("  " + growth_line(name, a[i], b[i], unit))
    # The counts once the visitors under way at the end have finished.
    try:
        with open(os.path.join(statusdir, "status")) as f:
            ok, failed, at_cut, cuts = [int(x) for x in f.read().split()[:4]]
    except (OSError, ValueError):
        ok, failed, at_cut, cuts = rows[-1][8:12]
    print()
    print("visitors: %s ok, %s failed away from cuts, %s failed at a cut or "
          "restart; %s link cuts" % (ok, failed, at_cut, cuts))
    bad = []
    if not ok:
        bad.append("no visitor succeeded")
    if failed is None or failed > max_failed:
        bad.append("%s visitors failed away from cuts (allowed: %d)"
                   % (failed, max_failed))
    if bad:
        print("verdict: FAIL: " + "; ".join(bad))
        return 1
    print("verdict: ok (memory and fd growth above are for reading, not "
          "judged)")
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "run":
        asyncio.run(Load(argv[2], int(argv[3])).main())
        return 0
    if len(argv) == 5 and argv[1] == "verdict":
        return verdict(argv[2], int(argv[3]), int(argv[4]))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
