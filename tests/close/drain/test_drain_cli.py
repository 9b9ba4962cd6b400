#!/usr/bin/env python3
"""tunnel-server's graceful stop, driven as a child process with
tunnel-client and an echo service run by this script.

  transfer-mux, transfer-nomux
      SIGTERM while a visitor is in the middle of a 16 MiB echo read
      slowly: the server says it drains, the transfer completes intact, a
      new visitor is refused, and the server exits 0 once the visitor is
      done (well before its drain time).
  twice
      SIGTERM with a visitor that never finishes: the server keeps running
      (draining, default drain time); a second SIGTERM makes it exit 0 at
      once.

Every wait is bounded; children are killed and reaped whatever happens.

usage: test_drain_cli.py SERVER CLIENT CASE"""
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

SERVER, CLIENT, CASE = sys.argv[1:4]
TOTAL = 16 << 20
BEFORE = 2 << 20
START_S = 10.0
procs = []


class Proc:
    def __init__(self, args):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.out = b""
        self.err = b""
        procs.append(self)

    def pump(self, timeout):
        fds = [f for f in (self.p.stdout, self.p.stderr) if not f.closed]
        if not fds:
            time.sleep(timeout)
            return
        r, _, _ = select.select(fds, [], [], timeout)
        for f in r:
            d = os.read(f.fileno(), 65536)
            if not d:
                f.close()
            elif f is self.p.stdout:
                self.out += d
            else:
                self.err += d

    def wait_out(self, needle, timeout):
        end = time.monotonic() + timeout
        while needle not in self.out and time.monotonic() < end:
            if self.p.poll() is not None:
                self.pump(0.05)
                break
            self.pump(0.05)
        return needle in self.out

    def wait_exit(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump(0.05)
            if self.p.poll() is not None:
                self.pump(0.05)
                return self.p.returncode
        return None

    def line_after(self, prefix):
        for line in self.out.decode(errors="replace").splitlines():
            i = line.find(prefix)
            if i >= 0:
                return line[i + len(prefix):]
        return None


def fail(msg):
    for p in procs:
        p.pump(0.05)
        sys.stderr.write("--- %s stderr:\n%s\n" % (p.p.args[0],
                                                  p.err.decode(errors="replace")))
    raise SystemExit("FAIL: " + msg)


def echo_service():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)

    def serve(c):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    c.shutdown(socket.SHUT_WR)
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def accept():
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls.getsockname()[1]


def start(mux, drain_args):
    port = echo_service()
    srv = Proc([SERVER, "--control", "127.0.0.1:0", "--bind", "127.0.0.1",
                "--ports", "20000-29999"] + drain_args)
    if not srv.wait_out(b"listening on ", START_S):
        fail("tunnel-server did not start")
    sport = srv.line_after("listening on ").split(":")[-1].strip()
    cargs = [CLIENT, "--server", "127.0.0.1:" + sport, "tcp",
             "127.0.0.1:%d" % port, "--name", "drain"]
    if not mux:
        cargs.append("--no-mux")
    cli = Proc(cargs)
    if not cli.wait_out(b"tcp://", START_S):
        fail("tunnel-client did not register its proxy")
    pub = int(cli.line_after("tcp://").split(":")[-1].strip())
    return srv, cli, pub


def refused(pub):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", pub))
        s.sendall(b"x")
        return s.recv(1) == b""
    except OSError:
        return True
    finally:
        s.close()


def case_transfer(mux):
    srv, cli, pub = start(mux, ["--drain-ms", "20000"])
    data = os.urandom(TOTAL)
    v = socket.create_connection(("127.0.0.1", pub), timeout=20)

    def send():
        try:
            v.sendall(data)
            v.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()
    got = bytearray()
    signalled = None
    while True:
        d = v.recv(65536)
        if not d:
            break
        got += d
        time.sleep(0.002)  # a slow reader
        if signalled is None and len(got) >= BEFORE:
            srv.p.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            if len(got) >= TOTAL:
                fail("the transfer ended before the signal")
            srv.pump(0.05)
            if not refused(pub):
                fail("a new visitor was served during the drain")
    v.close()
    if signalled is None:
        fail("the visitor got %d bytes only" % len(got))
    if bytes(got) != data:
        fail("the transfer came back damaged (%d of %d bytes)"
             % (len(got), TOTAL))
    rc = srv.wait_exit(10)
    if rc is None:
        fail("tunnel-server still running 10 s after the transfer ended")
    if rc != 0:
        fail("tunnel-server exited with %d" % rc)
    if time.monotonic() - signalled >= 20:
        fail("tunnel-server waited for its whole drain time")
    if b"draining (up to 20000 ms; signal again to stop now)" not in srv.err:
        fail("tunnel-server did not say it drains")


def case_twice():
    srv, cli, pub = start(True, [])
    v = socket.create_connection(("127.0.0.1", pub), timeout=5)
    v.sendall(b"hello")
    if v.recv(5) != b"hello":
        fail("no echo through the tunnel")
    srv.p.send_signal(signal.SIGTERM)
    if srv.wait_exit(0.5) is not None:
        fail("tunnel-server did not drain (exited at once)")
    if b"draining (up to 5000 ms" not in srv.err:
        fail("tunnel-server did not say it drains")
    t = time.monotonic()
    srv.p.send_signal(signal.SIGTERM)
    rc = srv.wait_exit(3)
    if rc is None:
        fail("tunnel-server still running 3 s after a second signal")
    if rc != 0:
        fail("tunnel-server exited with %d" % rc)
    if time.monotonic() - t > 2:
        fail("the second signal did not stop the server promptly")
    v.close()


try:
    if CASE == "transfer-mux":
        case_transfer(True)
    elif CASE == "transfer-nomux":
        case_transfer(False)
    elif CASE == "twice":
        case_twice()
    else:
        raise SystemExit("no case named " + CASE)
    print("ok")
finally:
    for p in procs:
        if p.p.poll() is None:
            p.p.kill()
        p.p.wait()
