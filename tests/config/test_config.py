#!/usr/bin/env python3
"""Configuration files for tunnel-server and tunnel-client, driven as child
processes: tunnels brought up from frp INI and JSON files carry real
traffic (hello-service behind them), flags override the file, bad files
fail with one error naming the key or line, unknown keys warn, and stock
frpc runs with the very INI file tunnel-client reads.

usage: test_config.py SERVER CLIENT HELLO CASE [PEERS_DIR]"""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

SERVER, CLIENT, HELLO, CASE = sys.argv[1:5]
PEERS = sys.argv[5] if len(sys.argv) > 5 else ""
GREETING = b"Hello from behind the tunnel\n"
TOKEN = "cfg-%08x" % int.from_bytes(os.urandom(4), "big")
procs = []
tmp = tempfile.mkdtemp(prefix="tunnel-config-")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def write(name, text, mode=0o600):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class Proc:
    def __init__(self, args, env=None):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env)
        self.out = b""
        self.err = b""
        procs.append(self)

    def pump(self, timeout):
        fds = [f for f in (self.p.stdout, self.p.stderr) if not f.closed]
        r, _, _ = select.select(fds, [], [], timeout)
        for f in r:
            d = os.read(f.fileno(), 65536)
            if not d:
                f.close()
            elif f is self.p.stdout:
                self.out += d
            else:
                self.err += d

    def wait_out(self, count, timeout=10):
        """The first `count` stdout lines, waiting for them."""
        end = time.time() + timeout
        while self.out.count(b"\n") < count:
            if time.time() > end or (self.p.poll() is not None
                                     and self.p.stdout.closed):
                fail("waited for %d lines of stdout from %s; got %r, "
                     "stderr %r" % (count, self.p.args[0], self.out,
                                    self.err))
            self.pump(0.1)
        return self.out.decode().splitlines()[:count]

    def finish(self, timeout=10):
        end = time.time() + timeout
        while self.p.poll() is None or not (self.p.stdout.closed
                                            and self.p.stderr.closed):
            if time.time() > end:
                fail("%s did not exit" % self.p.args[0])
            self.pump(0.1)
        return self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait()


def fail(msg):
    for p in procs:
        p.kill()
    sys.stderr.write("FAIL: %s\n" % msg)
    for p in procs:
        sys.stderr.write("-- %s stderr:\n%s\n" % (p.p.args[0],
                                                   p.err.decode()))
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def fetch(port, host=None, path="/", auth=None):
    """An HTTP request through the tunnel; the whole reply."""
    end = time.time() + 10
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            req = "GET %s HTTP/1.1\r\nHost: %s\r\n" % (path, host or "x")
            if auth:
                import base64
                req += "Authorization: Basic %s\r\n" % base64.b64encode(
                    auth.encode()).decode()
            s.sendall((req + "Connection: close\r\n\r\n").encode())
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            s.close()
            if GREETING in data or b" 401 " in data or time.time() > end:
                return data
        except OSError:
            if time.time() > end:
                return b""
        time.sleep(0.2)


def hello():
    h = Proc([HELLO])
    return int(h.wait_out(1)[0].rsplit(":", 1)[1])


def start_server(token=TOKEN, http=True):
    hp = free_port() if http else 0
    path = write("frps.ini", "[common]\nbind_addr = 127.0.0.1\n"
                 "bind_port = 0\nsubdomain_host = example.test\n" +
                 ("vhost_http_port = %d\nvhost_https_port = %d\n"
                  % (hp, free_port()) if http else "") +
                 ("token = %s\n" % token if token else ""))
    s = Proc([SERVER, "-c", path, "--no-tls"])
    lines = s.wait_out(3 if http else 1)
    return s, int(lines[0].rsplit(":", 1)[1]), hp


def client_ini(cport, lport, r1, r2, token=TOKEN):
    # Every documented client and proxy key of the INI format.
    return ("[common]\nserver_addr = 127.0.0.1\nserver_port = %d\n"
            "token = %s\nauthentication_method = token\ntcp_mux = true\n"
            "pool_count = 2\ntls_enable = false\nheartbeat_interval = 10\n"
            "heartbeat_timeout = 60\nlog_level = info\n"
            "login_fail_exit = true\nprotocol = tcp\n\n"
            "[one]\ntype = tcp\nlocal_ip = 127.0.0.1\nlocal_port = %d\n"
            "remote_port = %d\n\n"
            "[two]\nlocal_port = %d\nremote_port = %d\n"
            "use_encryption = false\n\n"
            "[web]\ntype = http\nlocal_port = %d\nsubdomain = web\n"
            "custom_domains = www.example.org, other.example.org\n"
            "locations = /, /api\nhost_header_rewrite = app.internal\n"
            "http_user = admin\nhttp_pwd = pw\nheader_X-From = cfg\n\n"
            "[site]\ntype = https\nlocal_port = %d\n"
            "custom_domains = secure.example.org\n"
            % (cport, token, lport, r1, lport, r2, lport, lport))


def client_json(cport, lport, r1, r2, token=TOKEN):
    return json.dumps({
        "serverAddr": "127.0.0.1", "serverPort": cport,
        "auth": {"method": "token", "token": token},
        "log": {"level": "info"}, "loginFailExit": True,
        "transport": {"tcpMux": True, "poolCount": 2, "protocol": "tcp",
                      "heartbeatInterval": 10, "heartbeatTimeout": 60,
                      "tls": {"enable": False}},
        "proxies": [
            {"name": "one", "type": "tcp", "localIP": "127.0.0.1",
             "localPort": lport, "remotePort": r1},
            {"name": "two", "type": "tcp", "localPort": lport,
             "remotePort": r2, "transport": {"useEncryption": False}},
            {"name": "web", "type": "http", "localPort": lport,
             "subdomain": "web",
             "customDomains": ["www.example.org", "other.example.org"],
             "locations": ["/", "/api"], "hostHeaderRewrite": "app.internal",
             "httpUser": "admin", "httpPassword": "pw",
             "requestHeaders": {"set": {"X-From": "cfg"}}},
            {"name": "site", "type": "https", "localPort": lport,
             "customDomains": ["secure.example.org"]}]}, indent=1)


def expect_tunnels(cli, r1, r2, hp):
    lines = cli.wait_out(6)
    for want in ("tcp://127.0.0.1:%d" % r1, "tcp://127.0.0.1:%d" % r2,
                 "http://web.example.test:%d" % hp,
                 "http://www.example.org:%d" % hp,
                 "https://secure.example.org"):
        check(any(l.startswith(want) for l in lines),
              "no %s in %r" % (want, lines))
    check(GREETING in fetch(r1), "no greeting through proxy one")
    check(GREETING in fetch(r2), "no greeting through proxy two")
    # The http proxy: basic auth enforced, routed by name and location.
    check(b" 401 " in fetch(hp, "web.example.test").split(b"\r\n")[0],
          "http proxy without credentials was not refused")
    check(GREETING in fetch(hp, "www.example.org", "/api/x", "admin:pw"),
          "no greeting through the http proxy")


def case_full(fmt):
    lport = hello()
    srv, cport, hp = start_server()
    r1, r2 = free_port(), free_port()
    if fmt == "ini":
        path = write("frpc.ini", client_ini(cport, lport, r1, r2))
    else:
        path = write("frpc.json", client_json(cport, lport, r1, r2))
    cli = Proc([CLIENT, "-c", path])
    expect_tunnels(cli, r1, r2, hp)
    check(b"warning" not in cli.err, "warnings for documented keys: %r"
          % cli.err)


def case_json_server():
    # Every documented server key of the JSON format.
    lport = hello()
    hp = free_port()
    path = write("frps.json", json.dumps({
        "bindAddr": "127.0.0.1", "bindPort": 0,
        "proxyBindAddr": "127.0.0.1", "vhostHTTPPort": hp,
        "subDomainHost": "example.test",
        "allowPorts": [{"start": 20000, "end": 40000}, {"single": 40001}],
        "maxPortsPerClient": 2,
        "auth": {"method": "token", "token": TOKEN,
                 "additionalScopes": ["NewWorkConns"]},
        "transport": {"heartbeatTimeout": 60, "tls": {"force": False}},
        "log": {"level": "info"}}))
    srv = Proc([SERVER, "-c", path, "--no-tls"])
    lines = srv.wait_out(2)
    cport = int(lines[0].rsplit(":", 1)[1])
    check(lines[1] == "http on 127.0.0.1:%d" % hp, "vhost line %r" % lines)
    cli = Proc([CLIENT, "--server", "127.0.0.1:%d" % cport, "--token",
                TOKEN, "tcp", str(lport), "--remote-port", "40001",
                "http", str(lport), "--subdomain", "web"])
    got = cli.wait_out(2)
    check("tcp://127.0.0.1:40001" in got, "allowed port refused: %r" % got)
    check(GREETING in fetch(40001), "no greeting through the tcp proxy")
    check(GREETING in fetch(hp, "web.example.test"), "no http greeting")
    # A port outside allowPorts is refused; so is a third proxy.
    bad = Proc([CLIENT, "--server", "127.0.0.1:%d" % cport, "--token",
                TOKEN, "tcp", str(lport), "--remote-port", "19999"])
    check(bad.finish() == 1, "a port outside allowPorts was accepted")
    third = Proc([CLIENT, "--server", "127.0.0.1:%d" % cport, "--token",
                  TOKEN, "tcp", str(lport), "tcp", str(lport), "tcp",
                  str(lport)])
    check(third.finish() == 1, "maxPortsPerClient was not enforced")
    check(b"warning" not in srv.err, "server warned: %r" % srv.err)


def case_flags_override():
    lport = hello()
    srv, cport, hp = start_server(http=False)
    r = free_port()
    # The file names a dead server and a wrong token: the flags win, and
    # the command line's proxy runs next to the file's.
    path = write("c.ini", "[common]\nserver_addr = 127.0.0.1\n"
                 "server_port = %d\ntoken = wrong\n[f]\nlocal_port = %d\n"
                 "remote_port = %d\n" % (free_port(), lport, r))
    r2 = free_port()
    cli = Proc([CLIENT, "-c", path, "--server", "127.0.0.1:%d" % cport,
                "--token", TOKEN, "tcp", str(lport), "--remote-port",
                str(r2)])
    got = cli.wait_out(2)
    check(sorted(got) == sorted(["tcp://127.0.0.1:%d" % r,
                                 "tcp://127.0.0.1:%d" % r2]), repr(got))
    check(GREETING in fetch(r) and GREETING in fetch(r2), "no greeting")
    # $TUNNEL_TOKEN beats the file too.
    env = dict(os.environ, TUNNEL_TOKEN=TOKEN)
    path2 = write("c2.ini", "[common]\nserver_port = %d\ntoken = wrong\n"
                  "[g]\nlocal_port = %d\n" % (cport, lport))
    cli2 = Proc([CLIENT, "-c", path2], env=env)
    check(cli2.wait_out(1)[0].startswith("tcp://"), "env token lost")


def case_bad_files():
    cases = [
        ("b1.ini", "[common]\nserver_port = seventy\n[a]\nlocal_port=1\n",
         ["line 2", "server_port"]),
        ("b2.ini", "[common]\n[a]\ntype = xtcp\nlocal_port = 1\n",
         ["line 3", "'xtcp'", "not supported"]),
        ("b3.ini", "[common]\nthis line is wrong\n", ["line 2"]),
        ("b4.json", '{"serverPort": 99999}', ["serverPort"]),
        ("b5.json", '{"proxies": [{"name": "x", "type": "xtcp", '
         '"localPort": 1}]}', ["'xtcp'", "not supported"]),
        ("b6.json", '{"serverAddr": "a",\n "serverPort": }', ["line 2"]),
        ("b7.json", '{"proxies": [{"name": "x", "type": "tcp"}]}',
         ["proxies[0]", "localPort"]),
        ("b8.toml", 'serverAddr = "x"\n', ["TOML"]),
        ("b9.ini", "[common]\ntcp_mux = maybe\n[a]\nlocal_port = 1\n",
         ["tcp_mux"]),
        ("b10.json", '{"proxies": [{"name": "x", "type": "tcp", '
         '"localPort": 1, "subdomain": "s"}]}', ["subdomain", "tcp"]),
    ]
    for name, text, wants in cases:
        p = Proc([CLIENT, "-c", write(name, text)])
        rc = p.finish()
        err = p.err.decode()
        check(rc == 2, "%s: exit %s, want 2" % (name, rc))
        check(len(err.strip().splitlines()) == 1,
              "%s: not one line: %r" % (name, err))
        for w in wants:
            check(w in err, "%s: %r lacks %r" % (name, err, w))
    for name, text, wants in [
            ("s1.ini", "[common]\nallow_ports = 1000-2000,3000\n",
             ["allow_ports"]),
            ("s2.json", '{"bindPort": "x"}', ["bindPort"])]:
        p = Proc([SERVER, "-c", write(name, text)])
        rc = p.finish()
        check(rc == 2, "%s: exit %s" % (name, rc))
        for w in wants:
            check(w in p.err.decode(), "%s: %r" % (name, p.err))


def case_unknown_keys():
    lport = hello()
    srv, cport, hp = start_server(http=False)
    path = write("u.ini", "[common]\nserver_port = %d\ntoken = %s\n"
                 "colour = blue\n[a]\nlocal_port = %d\nflavour = x\n"
                 % (cport, TOKEN, lport))
    cli = Proc([CLIENT, "-c", path])
    check(cli.wait_out(1)[0].startswith("tcp://"), "no tunnel")
    err = cli.err.decode()
    check("line 4: unknown key 'colour'" in err, err)
    check("line 7: unknown key 'flavour'" in err, err)
    jpath = write("u.json", json.dumps({
        "serverPort": cport, "auth": {"token": TOKEN, "colour": 1},
        "proxies": [{"name": "j", "type": "tcp", "localPort": lport,
                     "flavour": 2}]}))
    cli2 = Proc([CLIENT, "-c", jpath])
    check(cli2.wait_out(1)[0].startswith("tcp://"), "no tunnel (json)")
    err = cli2.err.decode()
    check("unknown key 'auth.colour'" in err, err)
    check("unknown key 'proxies[0].flavour'" in err, err)


def case_readable_token():
    lport = hello()
    srv, cport, hp = start_server(http=False)
    body = "[common]\nserver_port = %d\ntoken = %s\n[a]\nlocal_port = %d\n" \
        % (cport, TOKEN, lport)
    for mode, warned in ((0o644, True), (0o600, False)):
        cli = Proc([CLIENT, "-c", write("t%o.ini" % mode, body, mode)])
        cli.wait_out(1)
        check(("readable by group or others" in cli.err.decode()) == warned,
              "mode %o: %r" % (mode, cli.err))
        check(TOKEN not in cli.err.decode(), "token printed")
        cli.kill()


def case_stock_examples():
    # Shaped as frp's own example files (frpc.ini, frps.ini, several
    # proxies, http with subdomain), ports made free for the test.
    lport = hello()
    hp = free_port()
    cport = free_port()
    srv = Proc([SERVER, "-c", write("frps.ini",
               "[common]\nbind_port = %d\nvhost_http_port = %d\n"
               "subdomain_host = frps.com\n" % (cport, hp))])
    srv.wait_out(2)
    r1, r2 = free_port(), free_port()
    cli = Proc([CLIENT, "-c", write("frpc.ini",
               "[common]\nserver_addr = 127.0.0.1\nserver_port = %d\n\n"
               "[ssh]\ntype = tcp\nlocal_ip = 127.0.0.1\nlocal_port = %d\n"
               "remote_port = %d\n\n[ssh2]\ntype = tcp\nlocal_ip = 127.0.0.1\n"
               "local_port = %d\nremote_port = %d\n\n[web]\ntype = http\n"
               "local_port = %d\nsubdomain = test\n"
               % (cport, lport, r1, lport, r2, lport))])
    cli.wait_out(3)
    check(GREETING in fetch(r1) and GREETING in fetch(r2), "tcp")
    check(GREETING in fetch(hp, "test.frps.com"), "http subdomain")
    check(b"warning" not in cli.err + srv.err.replace(
        b"warning: no token", b""), "%r %r" % (cli.err, srv.err))


def case_interop_frpc():
    frpc = os.path.join(PEERS, "frpc") if PEERS else ""
    if not frpc or not os.access(frpc, os.X_OK):
        print("SKIP: no stock frpc")
        sys.exit(77)
    lport = hello()
    srv, cport, hp = start_server()
    r1, r2 = free_port(), free_port()
    body = ("[common]\nserver_addr = 127.0.0.1\nserver_port = %d\n"
            "token = %s\n\n[ssh]\ntype = tcp\nlocal_ip = 127.0.0.1\n"
            "local_port = %d\nremote_port = %d\n\n[web]\ntype = http\n"
            "local_port = %d\nsubdomain = web\n" % (cport, TOKEN, lport, r1,
                                                    lport))
    path = write("frpc.ini", body)
    # Our client reads it...
    ours = Proc([CLIENT, "-c", path])
    ours.wait_out(2)
    check(GREETING in fetch(r1), "our client: tcp")
    check(GREETING in fetch(hp, "web.example.test"), "our client: http")
    ours.kill()
    time.sleep(0.5)
    # ...and so does stock frpc, against our server.
    stock = Proc([frpc, "-c", path])
    check(GREETING in fetch(r1), "frpc: tcp")
    check(GREETING in fetch(hp, "web.example.test"), "frpc: http")
    check(stock.p.poll() is None, "frpc exited")


CASES = {
    "ini": lambda: case_full("ini"),
    "json": lambda: case_full("json"),
    "json-server": case_json_server,
    "flags-override": case_flags_override,
    "bad-files": case_bad_files,
    "unknown-keys": case_unknown_keys,
    "readable-token": case_readable_token,
    "stock-examples": case_stock_examples,
    "interop-frpc": case_interop_frpc,
}

try:
    CASES[CASE]()
finally:
    for p in procs:
        p.kill()
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
print("ok")
