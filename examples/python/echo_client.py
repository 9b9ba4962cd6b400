#!/usr/bin/env python3
"""A tunnel client in Python on libtunnel's sans-I/O engine: registers a TCP
proxy and answers every visitor in-process as an echo service (no local
port). Python sockets and selectors do the I/O; the engine the protocol.

usage: echo_client.py --server HOST:PORT [--token TOKEN] [--no-mux]
                      [--remote-port N] [--name NAME]
The token defaults to $TUNNEL_TOKEN. Prints tcp://HOST:PORT once the proxy
is up; exits 1 when the login or the proxy is refused or the session ends,
0 on SIGINT/SIGTERM.
"""

import argparse
import errno
import os
import selectors
import signal
import socket
import sys

import tunnel_engine as te

# Bytes of one visitor held at most: what arrived and was not yet echoed.
# The engine's window bounds it, as consumption is reported only once the
# bytes are echoed.
WINDOW = 256 * 1024


class Conn:
    """A socket to the server: the control connection, or (non-mux) a work
    connection the engine asked for."""

    def __init__(self, sock):
        self.sock = sock
        self.connecting = True
        self.out = b''  # taken from the engine, not yet written
        self.finished = False  # the engine is done: flush, then close


class EchoClient(te.Engine):
    def __init__(self, host, server, mux, **kw):
        super().__init__(mux=mux, window=WINDOW, **kw)
        self.host = host
        self.server = server
        self.sel = selectors.DefaultSelector()
        self.conns = {}  # number -> Conn
        self.echo = {}  # stream -> bytearray from the visitor, not yet echoed
        self.ended = set()  # streams whose visitor finished sending
        self.exit_code = None

    # ------------------------------------------------ engine events

    def on_state(self, status, message):
        if status == 0:
            print(f'echo_client: logged in (run id {message})',
                  file=sys.stderr)
            return
        why = 'login refused' if status == te.EAUTH else 'session ended'
        print(f'echo_client: {why}: {message or te.strerror(status)}',
              file=sys.stderr)
        for number in list(self.conns):
            self.drop(number)
        self.exit_code = 1

    def on_proxy(self, proxy, status, message):
        if status != 0:
            print(f'echo_client: proxy refused: {message}', file=sys.stderr)
            self.exit_code = 1
            return
        print(f'tcp://{self.host}{message}', flush=True)

    def on_stream_open(self, stream, proxy, visitor):
        self.echo[stream] = bytearray()
        return True

    def on_stream_data(self, stream, data):
        self.echo[stream] += data

    def on_stream_end(self, stream, status):
        if status == 0:
            self.ended.add(stream)
        else:  # reset or gone: the number is no longer valid
            self.echo.pop(stream, None)
            self.ended.discard(stream)

    def on_connect(self, conn):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self.server)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.conn_closed(conn, te.ECONNREFUSED)
            return
        self.conns[conn] = Conn(sock)
        self.sel.register(sock, selectors.EVENT_WRITE, conn)

    def on_disconnect(self, conn):
        if conn in self.conns:
            self.conns[conn].finished = True

    # ------------------------------------------------ the loop

    def drop(self, number):
        c = self.conns.pop(number)
        self.sel.unregister(c.sock)
        c.sock.close()

    def pump_streams(self):
        """Echoes what the windows allow; half-closes after the visitor."""
        for stream in list(self.echo):
            buf = self.echo.get(stream)
            if buf:
                taken = self.stream_write(stream, buf)
                if taken:
                    del buf[:taken]
                    # Echoed: only now may the visitor send that much more.
                    self.stream_consumed(stream, taken)
            if stream in self.ended and stream in self.echo and not buf:
                self.stream_shutdown(stream)
                # Without multiplexing the shutdown ends the stream.
                if self.echo.pop(stream, None) is not None:
                    self.stream_close(stream)
                self.ended.discard(stream)

    def flush(self, number):
        """Writes the engine's output for one connection until its socket
        is full; each connection on its own, so none waits for another."""
        c = self.conns[number]
        while True:
            if not c.out:
                c.out = self.send(number)
                if not c.out:
                    break
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                return
            except OSError:
                self.drop(number)
                self.conn_closed(number, te.ECONNRESET)
                return
            c.out = c.out[n:]
        if c.finished:
            self.drop(number)

    def on_socket(self, number, mask):
        c = self.conns[number]
        if c.connecting:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.drop(number)
                if number == te.CONTROL:
                    raise OSError(err, os.strerror(err))
                self.conn_closed(number, te.ECONNREFUSED)
                return
            c.connecting = False
            if number == te.CONTROL:
                self.start()
            else:
                self.conn_ready(number)
            return
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = None
            if data:
                self.recv(number, data)
            else:
                self.drop(number)
                self.conn_closed(number, 0 if data == b'' else te.ECONNRESET)
                return
        if mask & selectors.EVENT_WRITE and number in self.conns:
            self.flush(number)

    def run(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex(self.server)
        self.conns[te.CONTROL] = Conn(sock)
        self.sel.register(sock, selectors.EVENT_WRITE, te.CONTROL)
        while self.exit_code is None:
            deadline = self.tick()
            self.pump_streams()
            for number in list(self.conns):
                c = self.conns.get(number)
                if c and not c.connecting:
                    self.flush(number)
            for number, c in self.conns.items():
                want = selectors.EVENT_WRITE if c.connecting or c.out else 0
                if not c.connecting:
                    want |= selectors.EVENT_READ
                if self.sel.get_key(c.sock).events != want:
                    self.sel.modify(c.sock, want, number)
            if self.exit_code is not None:
                break
            timeout = None
            if deadline is not None:
                timeout = max(0, deadline - te.now_ms()) / 1000
            for key, mask in self.sel.select(timeout):
                if key.data in self.conns:
                    self.on_socket(key.data, mask)
        return self.exit_code


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--server', required=True, help='HOST:PORT')
    ap.add_argument('--token', default=os.environ.get('TUNNEL_TOKEN'))
    ap.add_argument('--no-mux', action='store_true')
    ap.add_argument('--remote-port', type=int, default=0)
    ap.add_argument('--name', default=f'echo-{os.urandom(3).hex()}')
    ap.add_argument('--verbose', '-v', action='count', default=0)
    args = ap.parse_args()
    host, _, port = args.server.rpartition(':')
    server = (socket.gethostbyname(host), int(port))

    def stop(signum, frame):
        print(f'echo_client: signal {signum}, shutting down', file=sys.stderr)
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def log(level, message):
        print(f'echo_client: {message}', file=sys.stderr)

    with EchoClient(host, server, mux=not args.no_mux, token=args.token, log=log,
                    log_level=te.LOG_WARN + args.verbose) as client:
        client.add_proxy(args.name, te.PROXY_TCP,
                         remote_port=args.remote_port)
        try:
            return client.run()
        except OSError as exc:
            print(f'echo_client: cannot reach the server: {exc}',
                  file=sys.stderr)
            return 1


if __name__ == '__main__':
    sys.exit(main())
