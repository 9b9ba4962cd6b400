#!/usr/bin/env python3
"""tunnel-server and tunnel-client under valgrind memcheck, a full session.

usage: test_valgrind.py SERVER CLIENT SANITIZE MODE
MODE: mux (plain, multiplexed), tls (multiplexed over TLS, certificate
made by the server, client --tls-insecure) or nomux (plain, --no-mux).

On 127.0.0.1 with ports chosen at run time: an echo service of this
script, a tunnel-server and a tunnel-client exposing the echo service as a
tcp proxy. Visitors send a few MiB through it and half-close; one drops its
connection mid-transfer. Then the server is stopped with SIGTERM (its log
is checked) and a new one, also under valgrind, starts on the same control
port: the client must log in again and carry traffic. Finally SIGTERM ends
the client, then the server. Each program must exit with status 0, with no
memcheck error, no definite, indirect or possible leak, and no file
descriptor open at exit beyond 0, 1 and 2.

Exit status: 0 pass, 1 fail, 77 skipped (no valgrind, or a sanitizer build:
valgrind cannot run a sanitizer runtime).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
# Under valgrind the programs run 20 to 50 times slower than natively:
# generous bounds, yet every wait has one.
START_S = 40
RECONNECT_S = 40
EXIT_S = 40
VISITOR_S = 60


class Failure(Exception):
    pass


def free_port():
    """A port the kernel reports free now (it is reused moments later)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


class EchoService:
    """Echoes every byte; answers a half-close with a half-close once all
    it read has been written back."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        try:
            c.settimeout(VISITOR_S)
            while True:
                b = c.recv(65536)
                if not b:
                    c.shutdown(socket.SHUT_WR)
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


def visit(port, size, seed, errors, abort_after=None):
    """One visitor: sends SIZE bytes while reading the echo, half-closes,
    and expects every byte back, then EOF. With ABORT_AFTER it closes the
    connection once that many bytes came back (a visitor that leaves)."""
    data = (seed.to_bytes(4, "big") * 16384) * (size // 65536 + 1)
    data = data[:size]
    got = bytearray()
    try:
        s = socket.create_connection((HOST, port), timeout=VISITOR_S)
    except OSError as e:
        errors.append("visitor %d: connect: %s" % (seed, e))
        return
    send_err = []

    def sender():
        try:
            view = memoryview(data)
            for off in range(0, len(view), 32768):
                s.sendall(view[off:off + 32768])
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
            if abort_after is not None and len(got) >= abort_after:
                break
    except OSError as e:
        errors.append("visitor %d: after %d bytes: %s" % (seed, len(got), e))
    finally:
        s.close()
        t.join(VISITOR_S)
    if abort_after is not None:
        if len(got) < abort_after:
            errors.append("visitor %d: %d bytes back, wanted at least %d"
                          % (seed, len(got), abort_after))
        return
    if send_err:
        errors.append("visitor %d: send: %s" % (seed, send_err[0]))
    elif bytes(got) != data:
        errors.append("visitor %d: %d bytes back of %d, or different"
                      % (seed, len(got), len(data)))


def traffic(port, sizes, first_seed, abort=False):
    """Visitors of SIZES at once (plus one that leaves mid-transfer)."""
    errors = []
    threads = []
    for i, n in enumerate(sizes):
        threads.append(threading.Thread(
            target=visit, args=(port, n, first_seed + i, errors), daemon=True))
    if abort:
        threads.append(threading.Thread(
            target=visit, args=(port, 1 << 20, first_seed + len(sizes), errors),
            kwargs={"abort_after": 64 << 10}, daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + VISITOR_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            errors.append("a visitor did not finish in %d s" % VISITOR_S)
            break
    if errors:
        raise Failure("traffic through port %d: %s" % (port, "; ".join(errors)))


class Program:
    """One program under valgrind, its stdout, stderr and valgrind log in
    files of the work directory."""

    def __init__(self, work, name, argv, env):
        self.name = name
        self.out = os.path.join(work, name + ".out")
        self.err = os.path.join(work, name + ".err")
        self.vglog = os.path.join(work, name + ".vg")
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            # close_fds: the program inherits 0, 1 and 2 only, so any other
            # descriptor valgrind finds open at exit is the program's.
            self.proc = subprocess.Popen(
                argv(self.vglog), stdin=subprocess.DEVNULL, stdout=o,
                stderr=e, env=env, close_fds=True)
        self.pid = self.proc.pid

    def text(self, which="out"):
        try:
            with open(self.out if which == "out" else self.err, "r",
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_for(self, pattern, seconds, count=1):
        """The COUNTth match of PATTERN in stdout, once the program wrote it;
        Failure when it exits first or time runs out."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + seconds
        while True:
            found = rx.findall(self.text())
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                raise Failure("%s exited (status %s) before printing %r:\n%s"
                              % (self.name, self.proc.returncode, pattern,
                                 self.tail()))
            if time.monotonic() > deadline:
                raise Failure("%s: no %r in %d s:\n%s"
                              % (self.name, pattern, seconds, self.tail()))
            time.sleep(0.1)

    def stop(self):
        """SIGTERM, then the exit status (bounded wait)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            raise Failure("%s did not exit within %d s of SIGTERM:\n%s"
                          % (self.name, EXIT_S, self.tail()))

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, n=15):
        lines = []
        for which in ("out", "err"):
            t = self.text(which).splitlines()[-n:]
            if t:
                lines.append("--- %s std%s" % (self.name, which))
                lines += t
        return "\n".join(lines)


def check_vglog(prog, status):
    """Problems found in one finished run's valgrind log; prints its
    summary lines."""
    problems = []
    try:
        with open(prog.vglog, "r", errors="replace") as f:
            log = f.read()
    except OSError as e:
        return ["%s: no valgrind log: %s" % (prog.name, e)]
    strip = re.compile(r"^==\d+== ?", re.M)
    body = strip.sub("", log)
    for line in body.splitlines():
        if re.match(r"(ERROR SUMMARY|FILE DESCRIPTORS|\s*(in use at exit|"
                    r"total heap usage|definitely lost|indirectly lost|"
                    r"possibly lost)):", line):
            print("%s: %s" % (prog.name, line.strip()))
    if status != 0:
        problems.append("%s exited with status %s (99: valgrind found errors)"
                        % (prog.name, status))
    m = re.search(r"^ERROR SUMMARY: (\d+) errors", body, re.M)
    if not m:
        problems.append("%s: no ERROR SUMMARY in the valgrind log" % prog.name)
    elif m.group(1) != "0":
        problems.append("%s: %s memcheck errors (leaks included)"
                        % (prog.name, m.group(1)))
    # --track-fds lists every descriptor open at exit but 0, 1 and 2,
    # each with where it was opened ("Open file descriptor 7: PATH",
    # "Open AF_INET socket 8: ..."). Valgrind 3.19 also lists its own log
    # file, as inherited: that one entry is not the program's.
    for fd, what in re.findall(r"^Open \D*?(\d+):? ?(.*)$", body, re.M):
        if int(fd) > 2 and what.strip() != prog.vglog:
            problems.append("%s: descriptor %s open at exit (%s)"
                            % (prog.name, fd, what.strip()))
    if problems:
        problems.append("--- %s\n%s" % (prog.vglog, body))
    return problems


def main(argv):
    if len(argv) != 5 or argv[4] not in ("mux", "tls", "nomux"):
        sys.stderr.write(__doc__)
        return 2
    server_bin, client_bin, sanitize, mode = argv[1:5]
    if sanitize not in ("", "none"):
        print("skipped: a %s sanitizer build; valgrind cannot run its runtime"
              % sanitize)
        return 77
    valgrind = shutil.which("valgrind")
    if not valgrind:
        print("skipped: valgrind is not installed")
        return 77

    def under_valgrind(cmd):
        def argv_for(log):
            a = [valgrind, "--tool=memcheck", "--leak-check=full",
                 "--show-leak-kinds=definite,indirect,possible",
                 "--errors-for-leak-kinds=definite,indirect,possible",
                 "--error-exitcode=99", "--track-fds=yes",
                 "--num-callers=40", "--log-file=" + log]
            return a + cmd
        return argv_for

    env = dict(os.environ)
    token = "vg-%d-%d" % (os.getpid(), int(time.time()))
    env["TUNNEL_TOKEN"] = token
    # libuv 1.45 and later may hand file I/O to io_uring, whose shared
    # rings memcheck cannot follow; the programs do no file I/O through
    # libuv, and epoll, which carries all their sockets, is unaffected.
    env["UV_USE_IO_URING"] = "0"
    env.pop("TUNNEL_SERVER", None)

    # A timeout of the test runner ends this script with SIGTERM: the
    # programs are still killed on the way out (finally, below).
    def on_term(signum, frame):
        raise Failure("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)

    work = tempfile.mkdtemp(prefix="libtunnel-valgrind-")
    echo = EchoService()
    progs = []
    problems = []
    t0 = time.monotonic()
    try:
        control = free_port()
        server_cmd = [server_bin, "--control", "%s:%d" % (HOST, control),
                      "--bind", HOST, "--ports", "20000-40000"]
        if mode != "tls":
            server_cmd.append("--no-tls")
        client_cmd = [client_bin, "--server", "%s:%d" % (HOST, control)]
        if mode == "tls":
            client_cmd.append("--tls-insecure")
        if mode == "nomux":
            client_cmd.append("--no-mux")
        client_cmd += ["tcp", str(echo.port), "--name", "echo"]
        addr_rx = r"^tcp://127\.0\.0\.1:(\d+)$"

        def start_server(n):
            p = Program(work, "server%d" % n, under_valgrind(server_cmd), env)
            progs.append(p)
            p.wait_for(r"^listening on 127\.0\.0\.1:%d$" % control, START_S)
            return p

        server = start_server(1)
        client = Program(work, "client", under_valgrind(client_cmd), env)
        progs.append(client)
        public = int(client.wait_for(addr_rx, START_S))
        print("%s: session up after %.1f s, public port %d"
              % (mode, time.monotonic() - t0, public))

        # 4 x 768 KiB each way, and one visitor that leaves mid-transfer.
        traffic(public, [768 << 10] * 4, 1, abort=True)
        print("%s: first traffic done at %.1f s" % (mode, time.monotonic() - t0))

        # The server goes away; a new one takes the same control port.
        st = server.stop()
        problems += check_vglog(server, st)
        server = start_server(2)
        public = int(client.wait_for(addr_rx, RECONNECT_S, count=2))
        print("%s: client logged in again at %.1f s, public port %d"
              % (mode, time.monotonic() - t0, public))
        traffic(public, [512 << 10] * 3, 10)
        print("%s: second traffic done at %.1f s" % (mode, time.monotonic() - t0))

        st = client.stop()
        problems += check_vglog(client, st)
        st = server.stop()
        problems += check_vglog(server, st)
    except Failure as e:
        problems.append(str(e))
    finally:
        for p in reversed(progs):
            p.kill()
        echo.close()
    print("%s: %.1f s in all" % (mode, time.monotonic() - t0))
    if problems:
        for p in problems:
            print("FAIL: " + p)
        print("logs kept in " + work)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("%s: ok" % mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
