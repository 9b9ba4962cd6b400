"""The Python binding (examples/python) end to end: tunnel-server and
echo_client.py as child processes, a visitor that sends 1 MiB through the
public port and checks the echo byte for byte, then half-closes and expects
the end of the echo; multiplexed and not. SIGTERM must end the client with
status 0. Every child is stopped by PID, also when a check fails.

usage: test_python.py TUNNEL_SERVER EXAMPLES_PYTHON_DIR
($TUNNEL_LIBRARY: the built libtunnel.so)
"""

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

PAYLOAD = 1 << 20
TOKEN = f'py-{random.getrandbits(32):08x}'


def sanitizer_env(lib):
    """A sanitized library needs its runtime loaded first into Python (and
    Python's own allocations are not the library's leaks)."""
    try:
        out = subprocess.run(['ldd', lib], capture_output=True, text=True,
                             check=False).stdout
    except OSError:
        return {}
    runtimes = re.findall(r'=>\s*(\S*lib(?:asan|ubsan)\.so\S*)', out)
    if not runtimes:
        return {}
    return {'LD_PRELOAD': ' '.join(runtimes),
            'ASAN_OPTIONS': 'detect_leaks=0:verify_asan_link_order=0'}


class Child:
    def __init__(self, name, args, env=None):
        self.name = name
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)

    def first_line(self, timeout=20):
        """The first stdout line, read without blocking past `timeout`."""
        result = []
        t = threading.Thread(target=lambda: result.append(
            self.p.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not result or not result[0]:
            raise AssertionError(f'{self.name} printed no line')
        return result[0].decode().strip()

    def stop(self, sig=signal.SIGTERM, timeout=5):
        """Signals the process by PID; SIGKILL when it lingers. Its status."""
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.p.stdout.close()
        return self.p.returncode


def visit(port, data):
    """Sends `data` while reading the echo; half-closes after the last byte
    and expects the echo to end right after the same bytes."""
    s = socket.create_connection(('127.0.0.1', port), timeout=30)
    sender = threading.Thread(target=lambda: (s.sendall(data),
                                              s.shutdown(socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    sender.join()
    s.close()
    if got != data:
        raise AssertionError(f'echo differs: sent {len(data)} bytes, got '
                             f'{len(got)}')


def run(server_path, pydir, mux):
    env = {k: v for k, v in os.environ.items() if not k.startswith('TUNNEL_')}
    env['TUNNEL_LIBRARY'] = os.environ['TUNNEL_LIBRARY']
    env['PYTHONDONTWRITEBYTECODE'] = '1'  # nothing written to the sources
    lo = random.randrange(10000, 30000)
    children = []
    try:
        server = Child('tunnel-server', [
            server_path, '--control', '127.0.0.1:0', '--bind', '127.0.0.1',
            '--ports', f'{lo}-{lo + 999}', '--token', TOKEN, '--no-tls'],
            env=env)
        children.append(server)
        line = server.first_line()
        m = re.fullmatch(r'listening on 127\.0\.0\.1:(\d+)', line)
        assert m, f'tunnel-server printed {line!r}'
        client_env = dict(env, **sanitizer_env(env['TUNNEL_LIBRARY']))
        client = Child('echo_client.py', [
            sys.executable, os.path.join(pydir, 'echo_client.py'),
            '--server', f'127.0.0.1:{m.group(1)}', '--token', TOKEN]
            + ([] if mux else ['--no-mux']), env=client_env)
        children.append(client)
        line = client.first_line()
        m = re.fullmatch(r'tcp://127\.0\.0\.1:(\d+)', line)
        assert m, f'echo_client.py printed {line!r}'
        visit(int(m.group(1)), os.urandom(PAYLOAD))
        status = client.stop()
        assert status == 0, f'echo_client.py exited {status} on SIGTERM'
    finally:
        for c in children:
            c.stop(signal.SIGKILL)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    for mux in (True, False):
        t0 = time.monotonic()
        run(sys.argv[1], sys.argv[2], mux)
        print(f'{"mux" if mux else "non-mux"}: 1 MiB echoed in '
              f'{time.monotonic() - t0:.2f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
