"""A ctypes binding of libtunnel's sans-I/O client engine (<tunnel/engine.h>).

Standard library only. The engine owns no socket and reads no clock: the
program feeds it the bytes its sockets receive (recv), writes out what it
gives (send), passes the time in, and hears of visitors through the on_*
methods, which a subclass overrides. Handles stay opaque pointers and the
configuration goes through setters, so no C struct layout is mirrored here.

The library is found through $TUNNEL_LIBRARY (a path), else as
libtunnel.so.0 on the loader's path.
"""

import ctypes
import os
import time
from ctypes import (CFUNCTYPE, POINTER, byref, c_char_p, c_int, c_int32,
                    c_int64, c_size_t, c_uint16, c_uint32, c_uint64, c_void_p)

CONTROL = 1  # the control connection's number
PROXY_TCP, PROXY_HTTP, PROXY_HTTPS = 1, 2, 3
LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG = 0, 1, 2, 3
# A few error codes (include/tunnel/tunnel.h has them all).
EINVAL, EAGAIN, ECLOSED, ERESET, EAUTH = -1, -6, -7, -8, -10
ECONNREFUSED, ECONNRESET, EIO = -12, -13, -21

_NO_DEADLINE = 2**64 - 1

# Callback types, in the header's order of arguments (the engine pointer
# first, user_data last; both unused here: each Engine has its own
# trampolines).
_STATE = CFUNCTYPE(None, c_void_p, c_int, c_char_p, c_void_p)
_PROXY = CFUNCTYPE(None, c_void_p, c_uint32, c_int, c_char_p, c_void_p)
_OPEN = CFUNCTYPE(c_int, c_void_p, c_uint32, c_uint32, c_char_p, c_void_p)
_DATA = CFUNCTYPE(None, c_void_p, c_uint32, c_void_p, c_size_t, c_void_p)
_END = CFUNCTYPE(None, c_void_p, c_uint32, c_int, c_void_p)
_WRITABLE = CFUNCTYPE(None, c_void_p, c_uint32, c_void_p)
_CONN = CFUNCTYPE(None, c_void_p, c_uint32, c_void_p)
_RANDOM = CFUNCTYPE(c_int, c_void_p, c_size_t, c_void_p)
_TIME = CFUNCTYPE(c_int64, c_void_p)
_LOG = CFUNCTYPE(None, c_int, c_char_p, c_void_p)

_E = c_void_p  # tunnel_engine *
_SIGNATURES = {
    'tunnel_strerror': (c_char_p, [c_int]),
    'tunnel_err_name': (c_char_p, [c_int]),
    'tunnel_config_new': (c_int, [POINTER(c_void_p)]),
    'tunnel_config_free': (None, [c_void_p]),
    'tunnel_config_set_token': (c_int, [c_void_p, c_char_p]),
    'tunnel_config_set_tcp_mux': (c_int, [c_void_p, c_int]),
    'tunnel_config_set_pool_count': (c_int, [c_void_p, c_uint32]),
    'tunnel_config_set_heartbeat': (c_int, [c_void_p, c_uint32, c_uint32]),
    'tunnel_config_set_stream_window': (c_int, [c_void_p, c_uint32]),
    'tunnel_config_set_log': (c_int, [c_void_p, _LOG, c_int, c_void_p]),
    'tunnel_engine_new': (c_int, [POINTER(c_void_p), c_void_p, c_void_p]),
    'tunnel_engine_free': (None, [_E]),
    'tunnel_engine_set_state_cb': (c_int, [_E, _STATE]),
    'tunnel_engine_set_proxy_cb': (c_int, [_E, _PROXY]),
    'tunnel_engine_set_stream_cbs': (c_int, [_E, _OPEN, _DATA, _END,
                                             _WRITABLE]),
    'tunnel_engine_set_conn_cbs': (c_int, [_E, _CONN, _CONN]),
    'tunnel_engine_set_random_cb': (c_int, [_E, _RANDOM]),
    'tunnel_engine_set_time_cb': (c_int, [_E, _TIME]),
    'tunnel_engine_add_proxy': (c_int, [_E, c_char_p, c_int32,
                                        POINTER(c_uint32)]),
    'tunnel_engine_proxy_set_remote_port': (c_int, [_E, c_uint32, c_uint16]),
    'tunnel_engine_proxy_set_subdomain': (c_int, [_E, c_uint32, c_char_p]),
    'tunnel_engine_proxy_add_domain': (c_int, [_E, c_uint32, c_char_p]),
    'tunnel_engine_start': (c_int, [_E, c_uint64]),
    'tunnel_engine_recv': (c_int, [_E, c_uint32, c_char_p, c_size_t,
                                   c_uint64]),
    'tunnel_engine_next_output': (c_int, [_E, POINTER(c_uint32)]),
    'tunnel_engine_send': (c_int, [_E, c_uint32, c_void_p, c_size_t,
                                   POINTER(c_size_t)]),
    'tunnel_engine_conn_ready': (c_int, [_E, c_uint32, c_uint64]),
    'tunnel_engine_conn_closed': (c_int, [_E, c_uint32, c_int, c_uint64]),
    'tunnel_engine_tick': (c_int, [_E, c_uint64, POINTER(c_uint64)]),
    'tunnel_engine_stream_write': (c_int, [_E, c_uint32, c_char_p, c_size_t,
                                           POINTER(c_size_t)]),
    'tunnel_engine_stream_shutdown': (c_int, [_E, c_uint32]),
    'tunnel_engine_stream_close': (c_int, [_E, c_uint32]),
    'tunnel_engine_stream_consumed': (c_int, [_E, c_uint32, c_size_t]),
}

_lib = None


def library():
    """The loaded libtunnel, with every function used here declared."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(os.environ.get('TUNNEL_LIBRARY') or 'libtunnel.so.0')
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        _lib = lib
    return _lib


def strerror(code):
    return library().tunnel_strerror(code).decode()


def now_ms():
    """Milliseconds on the monotonic clock the engine is given."""
    return time.monotonic_ns() // 1_000_000


class TunnelError(Exception):
    def __init__(self, code, what=''):
        self.code = code
        name = library().tunnel_err_name(code).decode()
        super().__init__(f'{what}{": " if what else ""}{name}: '
                         f'{strerror(code)}')


def _check(rc, what):
    if rc < 0:
        raise TunnelError(rc, what)
    return rc


class Engine:
    """One client session. Override the on_* methods; call the others from
    the program's loop. Not thread-safe: one thread drives an engine."""

    def __init__(self, token=None, mux=True, pool=None, window=None,
                 heartbeat=None, log=None, log_level=LOG_WARN):
        lib = library()
        self._lib = lib
        self._e = None
        self._error = None  # an exception raised in a callback
        cfg = c_void_p()
        _check(lib.tunnel_config_new(byref(cfg)), 'config')
        try:
            # Kept alive as long as the engine: C holds the pointers.
            self._log = _LOG(lambda lvl, msg, ud: log(lvl, msg.decode(
                errors='replace'))) if log else _LOG()
            if log:
                _check(lib.tunnel_config_set_log(cfg, self._log, log_level,
                                                 None), 'log')
            if token:
                _check(lib.tunnel_config_set_token(cfg, token.encode()),
                       'token')
            _check(lib.tunnel_config_set_tcp_mux(cfg, 1 if mux else 0), 'mux')
            if pool is not None:
                _check(lib.tunnel_config_set_pool_count(cfg, pool), 'pool')
            if window is not None:
                _check(lib.tunnel_config_set_stream_window(cfg, window),
                       'window')
            if heartbeat is not None:
                _check(lib.tunnel_config_set_heartbeat(cfg, *heartbeat),
                       'heartbeat')
            e = c_void_p()
            _check(lib.tunnel_engine_new(byref(e), cfg, None), 'engine')
            self._e = e
        finally:
            lib.tunnel_config_free(cfg)
        self._cbs = (
            _STATE(self._guard(lambda e, st, msg, ud: self.on_state(
                st, msg.decode(errors='replace') if msg else ''))),
            _PROXY(self._guard(lambda e, p, st, msg, ud: self.on_proxy(
                p, st, msg.decode(errors='replace') if msg else ''))),
            _OPEN(self._guard(self._open, ECONNREFUSED)),
            _DATA(self._guard(lambda e, s, data, n, ud: self.on_stream_data(
                s, ctypes.string_at(data, n)))),
            _END(self._guard(lambda e, s, st, ud: self.on_stream_end(s, st))),
            _WRITABLE(self._guard(lambda e, s, ud: self.on_stream_writable(s))),
            _CONN(self._guard(lambda e, c, ud: self.on_connect(c))),
            _CONN(self._guard(lambda e, c, ud: self.on_disconnect(c))),
            _RANDOM(self._guard(self._random, EIO)),
            _TIME(self._guard(lambda ud: int(time.time()), 0)),
        )
        (state, proxy, opened, data, end, writable, connect, disconnect,
         random, clock) = self._cbs
        _check(lib.tunnel_engine_set_state_cb(e, state), 'state cb')
        _check(lib.tunnel_engine_set_proxy_cb(e, proxy), 'proxy cb')
        _check(lib.tunnel_engine_set_stream_cbs(e, opened, data, end,
                                                writable), 'stream cbs')
        _check(lib.tunnel_engine_set_conn_cbs(e, connect, disconnect),
               'conn cbs')
        _check(lib.tunnel_engine_set_random_cb(e, random), 'random cb')
        _check(lib.tunnel_engine_set_time_cb(e, clock), 'time cb')
        self._out = ctypes.create_string_buffer(64 * 1024)

    # ---------------------------------------------------- callbacks

    def _guard(self, fn, failed=None):
        """An exception cannot cross C: keep the first one, answer the
        engine with `failed`, and raise it when the engine call returns."""
        def call(*args):
            try:
                return fn(*args)
            except BaseException as exc:  # SystemExit from a signal too
                if self._error is None:
                    self._error = exc
                return failed
        return call

    def _open(self, e, stream, proxy, visitor, ud):
        rc = self.on_stream_open(stream, proxy, visitor.decode())
        return 0 if rc is None or rc is True else (
            rc if isinstance(rc, int) and rc < 0 else ECONNREFUSED)

    @staticmethod
    def _random(out, n, ud):
        ctypes.memmove(out, os.urandom(n), n)
        return 0

    def on_state(self, status, message):
        """0: logged in (message: the run id). Negative: refused
        (EAUTH) or the session ended; close every socket."""

    def on_proxy(self, proxy, status, message):
        """0 and the public address (":PORT" for TCP), or an error."""

    def on_stream_open(self, stream, proxy, visitor):
        """A visitor arrived. Return None/True to take it, or a negative
        error code to refuse it."""
        return ECONNREFUSED

    def on_stream_data(self, stream, data):
        """Bytes from the visitor; call stream_consumed() once used."""

    def on_stream_end(self, stream, status):
        """0: the visitor finished sending. Negative: the stream is gone."""

    def on_stream_writable(self, stream):
        """stream_write() can take more."""

    def on_connect(self, conn):
        """Non-mux: open connection `conn` to the server, then call
        conn_ready() or conn_closed()."""
        self.conn_closed(conn, ECONNREFUSED)

    def on_disconnect(self, conn):
        """The engine is done with `conn`: flush send(conn), then close."""

    # ---------------------------------------------------- calls

    def _call(self, what, rc):
        err, self._error = self._error, None
        if err is not None:
            raise err
        return _check(rc, what)

    def add_proxy(self, name, kind=PROXY_TCP, remote_port=None,
                  subdomain=None, domains=()):
        out = c_uint32()
        lib, e = self._lib, self._e
        self._call('add_proxy', lib.tunnel_engine_add_proxy(
            e, name.encode(), kind, byref(out)))
        p = out.value
        if remote_port is not None:
            self._call('remote_port', lib.tunnel_engine_proxy_set_remote_port(
                e, p, remote_port))
        if subdomain:
            self._call('subdomain', lib.tunnel_engine_proxy_set_subdomain(
                e, p, subdomain.encode()))
        for d in domains:
            self._call('domain', lib.tunnel_engine_proxy_add_domain(
                e, p, d.encode()))
        return p

    def start(self, now=None):
        self._call('start', self._lib.tunnel_engine_start(
            self._e, now_ms() if now is None else now))

    def recv(self, conn, data, now=None):
        """0, or the error that ended the session (returned, not raised:
        on_state has heard of it)."""
        data = bytes(data)
        rc = self._lib.tunnel_engine_recv(
            self._e, conn, data, len(data), now_ms() if now is None else now)
        self._call('recv', 0)  # raises what a callback raised
        return rc

    def next_output(self):
        """The number of a connection with bytes to send, or None."""
        conn = c_uint32()
        if self._call('next_output', self._lib.tunnel_engine_next_output(
                self._e, byref(conn))):
            return conn.value
        return None

    def send(self, conn, cap=65536):
        """Up to `cap` bytes to send on `conn` (b'' when none)."""
        if len(self._out) < cap:
            self._out = ctypes.create_string_buffer(cap)
        n = c_size_t()
        self._call('send', self._lib.tunnel_engine_send(
            self._e, conn, self._out, cap, byref(n)))
        return self._out.raw[:n.value]

    def conn_ready(self, conn, now=None):
        self._call('conn_ready', self._lib.tunnel_engine_conn_ready(
            self._e, conn, now_ms() if now is None else now))

    def conn_closed(self, conn, status=0, now=None):
        self._call('conn_closed', self._lib.tunnel_engine_conn_closed(
            self._e, conn, status, now_ms() if now is None else now))

    def tick(self, now=None):
        """Runs what is due; the time (ms) to call again, or None."""
        nxt = c_uint64()
        self._call('tick', self._lib.tunnel_engine_tick(
            self._e, now_ms() if now is None else now, byref(nxt)))
        return None if nxt.value == _NO_DEADLINE else nxt.value

    def stream_write(self, stream, data):
        """How many bytes of `data` the window took (0: wait for
        on_stream_writable)."""
        data = bytes(data)
        taken = c_size_t()
        self._call('stream_write', self._lib.tunnel_engine_stream_write(
            self._e, stream, data, len(data), byref(taken)))
        return taken.value

    def stream_shutdown(self, stream):
        self._call('stream_shutdown',
                   self._lib.tunnel_engine_stream_shutdown(self._e, stream))

    def stream_close(self, stream):
        self._call('stream_close',
                   self._lib.tunnel_engine_stream_close(self._e, stream))

    def stream_consumed(self, stream, n):
        self._call('stream_consumed', self._lib.tunnel_engine_stream_consumed(
            self._e, stream, n))

    def close(self):
        """Frees the engine; no callback fires from here on."""
        if self._e:
            self._lib.tunnel_engine_free(self._e)
            self._e = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
