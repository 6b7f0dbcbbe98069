"""Managers used across a network: the ``fastmgr serve`` command, TLS,
timeouts, a typed error for a vanished manager, a manager that goes with
the process that started it, the ``safe`` serializer and server-side
tracebacks.

Every point runs over TCP on 127.0.0.1 and on ::1 (the IPv6 cases skip
only where ::1 cannot be bound).  One test puts the server and the client on
two different hosts: two network namespaces joined by a veth pair, made by
the test (it needs root and iproute2), and cuts the link in the middle of a
call.  Certificates are made by the tests with the ``openssl`` command.
"""
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

import fastmgr
from fastmgr import AuthenticationError, ManagerGone
from fastmgr.connection import Client
from fastmgr.errors import RemoteError, RemoteTraceback, UnsafeValueError

from helpers import remote as H

TESTS = Path(__file__).resolve().parent
#: run the programs of helpers/remote.py as [*PROGRAM, MODE, ...] from TESTS
PROGRAM = [sys.executable, "-m", "helpers.remote"]
SPEC = "helpers.remote:RemoteManager"

#: what a refused connection may raise (anything but success)
REFUSALS = (AuthenticationError, TimeoutError, ConnectionError, EOFError, ssl.SSLError)

#: slack for "promptly": process start-up and a loaded CI machine
SLACK = 1.0

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------------------
# helpers

def _can_bind(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def host(request):
    if not _can_bind(request.param):
        pytest.skip("cannot bind %s on this machine" % request.param)
    return request.param


def free_port(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def cli_address(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def child_env(**extra):
    """The environment of a child: it imports fastmgr from where we do, and
    helpers.remote from the tests directory."""
    env = dict(os.environ)
    env.pop("FASTMGR_AUTHKEY", None)
    fastmgr_home = str(Path(fastmgr.__file__).resolve().parents[1])
    paths = [str(TESTS), fastmgr_home] + [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra)
    return env


class Lines:
    """The lines a child writes on one stream, read by a thread, so that
    every wait for them has a deadline."""

    def __init__(self, stream):
        self.lines = []
        self.eof = False
        self.taken = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def text(self):
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, pattern, count=1, timeout=10.0):
        """The count-th line that matches pattern."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines if re.search(pattern, line)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise AssertionError("no %d line(s) matching %r (%s); got:\n%s" % (
                        count, pattern, "stream closed" if self.eof else "timed out",
                        "".join(self.lines)))
                self._cond.wait(left)

    def next(self, timeout=10.0):
        """The next line not taken yet."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.taken >= len(self.lines):
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise AssertionError("no line within %.1f s (%s); got:\n%s" % (
                        timeout, "stream closed" if self.eof else "timed out",
                        "".join(self.lines)))
                self._cond.wait(left)
            self.taken += 1
            return self.lines[self.taken - 1]


class Serve:
    """A ``python -m fastmgr serve`` process (maybe in a network namespace)."""

    def __init__(self, *args, env=None, netns=None):
        cmd = [sys.executable, "-m", "fastmgr", "serve", *args]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.proc = subprocess.Popen(cmd, cwd=str(TESTS), env=env or child_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.log = Lines(self.proc.stderr)

    @property
    def pid(self):
        return self.proc.pid

    def ready(self, timeout=15.0):
        self.log.wait_for(r"serving .* at ", timeout=timeout)
        return self

    def stop(self, signum=signal.SIGTERM, timeout=5.0):
        """Send signum; the exit code, within timeout."""
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def servers():
    """Start ``fastmgr serve`` processes; all are killed at the end."""
    started = []

    def start(*args, **kwds):
        server = Serve(*args, **kwds)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def managers():
    """Managers made by a test; those started are shut down at the end."""
    made = []

    def make(*args, **kwds):
        manager = H.RemoteManager(*args, **kwds)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown()


def started(managers, host, **kwds):
    manager = managers(address=(host, 0), authkey=H.AUTHKEY, **kwds)
    manager.start()
    return manager


def assert_refused(connect):
    """connect() must fail in one of the ways a refusal may look like."""
    with pytest.raises(REFUSALS):
        connect()


def assert_clean_shutdown(manager):
    """shutdown() asks the server to stop (over TLS, for a TLS manager), and
    it exits by itself at once: not terminated after a wait."""
    proc = manager._process
    started_at = time.monotonic()
    manager.shutdown()
    assert time.monotonic() - started_at < 0.9
    assert proc.exitcode == 0


# ---------------------------------------------------------------------------
# 1. the command line

def _run_cli(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "fastmgr", *args], cwd=str(TESTS),
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(40)
def test_cli_help_explains_every_option():
    from fastmgr.cli import build_parser

    top = _run_cli("--help")
    assert top.returncode == 0, top.stderr
    assert "serve" in top.stdout and "bench" in top.stdout
    serve = _run_cli("serve", "--help")
    assert serve.returncode == 0, serve.stderr
    # the help text wraps lines: compare on single spaces
    text = " ".join(serve.stdout.split())
    subparsers = [a for a in build_parser()._actions if getattr(a, "choices", None)
                  and "serve" in a.choices][0]
    parser = subparsers.choices["serve"]
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text, "serve --help does not mention %s" % option
        if action.option_strings and "-h" not in action.option_strings:
            assert action.help and action.help != "==SUPPRESS==", (
                "%s has no help text" % action.option_strings)
    assert "module:Class" in text
    assert "FASTMGR_AUTHKEY" in text and "SIGTERM" in text
    # the authkey itself never goes on the command line
    key_options = {o for a in parser._actions for o in a.option_strings if "authkey" in o}
    assert key_options == {"--authkey-env", "--authkey-file"}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serve_authkey_from_env_logs_and_stops(host, signum, servers, managers):
    port = free_port(host)
    address = (host, port)
    server = servers(SPEC, "--address", cli_address(host, port),
                     env=child_env(FASTMGR_AUTHKEY=H.AUTHKEY.decode())).ready()
    with open("/proc/%d/cmdline" % server.pid, "rb") as f:
        assert H.AUTHKEY not in f.read()

    manager = managers(address=address, authkey=H.AUTHKEY)
    manager.connect()
    service = manager.Service()
    assert service.add(2, 3) == 5
    assert service.pid() == server.pid          # served by that process
    server.log.wait_for(r"connection from")

    # a client with the wrong key is refused, and that is logged
    with pytest.raises(AuthenticationError):
        Client(address, b"not the key", timeout=5).close()
    server.log.wait_for(r"failed authentication")

    # connects and disconnects are logged
    before = len(re.findall(r"disconnection", server.log.text()))
    Client(address, H.AUTHKEY, timeout=5).close()
    server.log.wait_for(r"disconnection", count=before + 1)

    started_at = time.monotonic()
    code = server.stop(signum, timeout=10)
    took = time.monotonic() - started_at
    server.log.wait_for(r"stopped", timeout=5)   # the reader thread has it all
    log = server.log.text()
    assert code == 0 and took < 5.0, "exit code %r after %.2f s; log:\n%s" % (code, took, log)
    assert signal.Signals(signum).name in log
    assert "Traceback" not in log, log


@pytest.mark.timeout(40)
def test_cli_serve_authkey_from_file(host, servers, managers, tmp_path):
    keyfile = tmp_path / "authkey"
    keyfile.write_bytes(H.AUTHKEY + b"\n")
    port = free_port(host)
    server = servers(SPEC, "--address", cli_address(host, port), "--authkey-file",
                     str(keyfile), env=child_env()).ready()
    manager = managers(address=(host, port), authkey=H.AUTHKEY)
    manager.connect()
    assert manager.Service().echo("from file") == "from file"
    with pytest.raises(AuthenticationError):
        Client((host, port), H.AUTHKEY + b"\n", timeout=5).close()
    assert server.stop(signal.SIGTERM) == 0


def test_cli_serve_without_authkey_refuses_to_start():
    result = subprocess.run(
        [sys.executable, "-m", "fastmgr", "serve", SPEC, "--address", "127.0.0.1:0"],
        cwd=str(TESTS), env=child_env(), capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    assert "FASTMGR_AUTHKEY" in result.stderr and "--authkey-file" in result.stderr


# ---------------------------------------------------------------------------
# 2. TLS

def _openssl(*args, cwd):
    result = subprocess.run(["openssl", *args], cwd=str(cwd), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, "openssl %s failed:\n%s" % (" ".join(args), result.stderr)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost, 127.0.0.1 and ::1, and a
    client certificate, made here with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (.ci/run installs it)")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=fastmgr test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=d)
    leaves = {
        "server": "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
                  "extendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in leaves.items():
        (d / (name + ".ext")).write_text(
            ext + "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        _openssl("req", "-new", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=fastmgr test " + name, cwd=d)
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", "0x" + secrets.token_hex(8), "-days", "2",
                 "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)
    return d


def server_context(pki, mutual=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki / "ca.pem"))
    return ctx


def client_context(pki, with_cert=False):
    # the default context: host name checked against the subjectAltName
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


# Links to one server are shared by every manager object of this process
# with the same address, serializer and key (see fastmgr.proxies.peer_for);
# so each test below tries the clients that must be refused first, before a
# TLS client has connected to that address.

def test_tls_manager_api(host, pki, managers):
    manager = started(managers, host, ssl_context=server_context(pki),
                      client_ssl_context=client_context(pki))
    plain = managers(address=manager.address, authkey=H.AUTHKEY, connect_timeout=1.0)
    started_at = time.monotonic()
    assert_refused(plain.connect)
    assert time.monotonic() - started_at < 1.0 + SLACK
    assert_refused(lambda: Client(manager.address, H.AUTHKEY, timeout=1.0))

    service = manager.Service()
    assert service.add(20, 22) == 42
    assert service.echo(b"\x00" * 100000) == b"\x00" * 100000   # more than one TLS record

    # another manager object, as a client elsewhere would make it
    client = managers(address=manager.address, authkey=H.AUTHKEY,
                      ssl_context=client_context(pki))
    client.connect()
    assert client.Service().echo("over TLS") == "over TLS"
    assert_clean_shutdown(manager)


def test_mutual_tls_manager_api(host, pki, managers):
    manager = started(managers, host, ssl_context=server_context(pki, mutual=True),
                      client_ssl_context=client_context(pki, with_cert=True))
    address = manager.address
    assert_refused(lambda: Client(address, H.AUTHKEY, timeout=1.0))
    assert_refused(lambda: Client(address, H.AUTHKEY, timeout=2.0,
                                  ssl_context=client_context(pki, with_cert=False)))
    no_cert = managers(address=address, authkey=H.AUTHKEY, connect_timeout=2.0,
                       ssl_context=client_context(pki, with_cert=False))
    assert_refused(no_cert.connect)

    assert manager.Service().add(1, 2) == 3
    client = managers(address=address, authkey=H.AUTHKEY,
                      ssl_context=client_context(pki, with_cert=True))
    client.connect()
    assert client.Service().echo([1, "two"]) == [1, "two"]
    assert_clean_shutdown(manager)


@pytest.mark.timeout(40)
def test_mutual_tls_cli(host, pki, servers, managers):
    port = free_port(host)
    address = (host, port)
    server = servers(SPEC, "--address", cli_address(host, port),
                     "--certfile", str(pki / "server.pem"), "--keyfile", str(pki / "server.key"),
                     "--cafile", str(pki / "ca.pem"),
                     env=child_env(FASTMGR_AUTHKEY=H.AUTHKEY.decode())).ready()
    assert "TLS" in server.log.text()

    assert_refused(lambda: Client(address, H.AUTHKEY, timeout=1.0))
    no_cert = managers(address=address, authkey=H.AUTHKEY, connect_timeout=2.0,
                       ssl_context=client_context(pki, with_cert=False))
    assert_refused(no_cert.connect)
    server.log.wait_for(r"failed authentication")

    client = managers(address=address, authkey=H.AUTHKEY,
                      ssl_context=client_context(pki, with_cert=True))
    client.connect()
    service = client.Service()
    assert service.add(3, 4) == 7
    assert service.pid() == server.pid
    assert server.stop(signal.SIGTERM) == 0


# ---------------------------------------------------------------------------
# 3. timeouts

def test_connect_timeout(host, managers):
    # a listener that never accepts: the kernel completes the TCP connect,
    # and nobody ever sends the handshake
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as silent:
        silent.bind((host, 0))
        silent.listen(8)
        manager = managers(address=silent.getsockname()[:2], authkey=H.AUTHKEY,
                           connect_timeout=0.5)
        started_at = time.monotonic()
        with pytest.raises(TimeoutError):
            manager.connect()
        assert time.monotonic() - started_at < 0.5 + SLACK
        started_at = time.monotonic()
        with pytest.raises(TimeoutError):
            Client(silent.getsockname()[:2], H.AUTHKEY, timeout=0.5)
        assert time.monotonic() - started_at < 0.5 + SLACK


@pytest.fixture(params=["tcp", "tls"])
def transport(request):
    """Keywords of a manager that serves and calls over plain TCP or TLS."""
    if request.param == "tcp":
        return {}
    pki = request.getfixturevalue("pki")
    return {"ssl_context": server_context(pki), "client_ssl_context": client_context(pki)}


def test_call_timeout_manager_default(host, transport, managers):
    # (connect_timeout: connecting would otherwise be bounded by timeout too)
    manager = started(managers, host, timeout=0.5, connect_timeout=10, **transport)
    service = manager.Service()
    assert service.add(1, 1) == 2
    started_at = time.monotonic()
    with pytest.raises(TimeoutError):
        service.slow(1.0, "late")
    elapsed = time.monotonic() - started_at
    assert 0.4 < elapsed < 0.5 + SLACK
    # the next call gets its own answer, not the late one
    assert service.echo("mine") == "mine"
    time.sleep(1.0 - elapsed + 0.1)      # the late reply has been sent by now
    assert service.add(2, 3) == 5
    assert service.slow(0.05, "quick") == "quick"


def test_call_timeout_per_proxy(host, managers):
    manager = started(managers, host)
    service = manager.Service()
    other = manager.Service()
    service._set_timeout(0.4)
    started_at = time.monotonic()
    with pytest.raises(TimeoutError):
        service.slow(1.0, "late")
    assert time.monotonic() - started_at < 0.4 + SLACK
    assert service.echo("own") == "own"
    # the override is this proxy's alone, and can be removed
    assert other.slow(0.6, "other") == "other"
    service._set_timeout(None)
    assert service.slow(0.6, "no limit") == "no limit"

    # a proxy's override wins over the manager's default, both ways
    bounded = started(managers, host, timeout=0.3, connect_timeout=10)
    patient = bounded.Service()
    patient._set_timeout(3.0)
    assert patient.slow(0.6, "patient") == "patient"
    hasty = bounded.Service()
    hasty._set_timeout(0.1)
    with pytest.raises(TimeoutError):
        hasty.slow(0.25, "hasty")
    assert hasty.echo(7) == 7


def test_ctrl_c_during_a_call_leaves_the_proxy_usable(host, transport, managers):
    manager = started(managers, host, **transport)
    service = manager.Service()
    assert service.echo(1) == 1
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        started_at = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            service.slow(5.0, "slow")
        assert time.monotonic() - started_at < 0.3 + SLACK
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert service.echo("after") == "after"
    assert service.add(2, 2) == 4


# ---------------------------------------------------------------------------
# 4. one typed error when the manager is gone

def _assert_gone_promptly(call):
    started_at = time.monotonic()
    with pytest.raises(ManagerGone) as info:
        call()
    assert time.monotonic() - started_at < SLACK + 1.0
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value, EOFError)
    return info.value


def test_killed_manager_raises_manager_gone(host, managers):
    manager = started(managers, host)
    service = manager.Service()
    assert service.add(1, 2) == 3
    os.kill(manager._process.pid, signal.SIGKILL)
    manager._process.join(5)
    for _ in range(3):                       # every call, not only the first
        _assert_gone_promptly(lambda: service.add(1, 2))
    _assert_gone_promptly(lambda: service.slow(0.1, None))
    _assert_gone_promptly(manager.Service)
    other = managers(address=manager.address, authkey=H.AUTHKEY)
    _assert_gone_promptly(other.connect)
    started_at = time.monotonic()
    manager.shutdown()
    assert time.monotonic() - started_at < 5.0


def test_unreachable_manager_raises_manager_gone(host, managers):
    manager = managers(address=(host, free_port(host)), authkey=H.AUTHKEY)
    _assert_gone_promptly(manager.connect)
    _assert_gone_promptly(manager.connect)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_reconnect_to_a_restarted_server(host, how, servers, managers):
    port = free_port(host)
    address = (host, port)
    env = child_env(FASTMGR_AUTHKEY=H.AUTHKEY.decode())
    first = servers(SPEC, "--address", cli_address(host, port), env=env).ready()
    manager = managers(address=address, authkey=H.AUTHKEY, connect_timeout=5.0)
    manager.connect()
    service = manager.Service()
    assert service.pid() == first.pid
    first.proc.send_signal(how)
    first.proc.wait(10)
    _assert_gone_promptly(lambda: service.add(1, 2))
    _assert_gone_promptly(manager.Service)

    second = servers(SPEC, "--address", cli_address(host, port), env=env).ready()
    manager.reconnect()
    again = manager.Service()
    assert again.pid() == second.pid
    assert again.add(2, 3) == 5
    assert second.stop(signal.SIGTERM) == 0


# ---------------------------------------------------------------------------
# 5. a manager exits when the process that started it dies

def _exited(pid):
    """Gone, or a zombie nobody reaped yet (it has exited all the same)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")


def test_manager_exits_when_its_parent_is_killed(host):
    parent = subprocess.Popen([*PROGRAM, "orphan", host], cwd=str(TESTS),
                              env=child_env(), stdout=subprocess.PIPE, text=True)
    manager_pid = None
    try:
        report = json.loads(Lines(parent.stdout).next(timeout=15))
        manager_pid = report["manager_pid"]
        address = tuple(report["address"])
        assert not _exited(manager_pid)
        Client(address, H.AUTHKEY, timeout=5).close()    # it serves
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5.0
        while not _exited(manager_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _exited(manager_pid), "the manager outlived its parent by 5 s"
        with pytest.raises(OSError):
            Client(address, H.AUTHKEY, timeout=2).close()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        if manager_pid is not None and not _exited(manager_pid):
            os.kill(manager_pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# 6. the safe serializer

NATIVES = [
    None, True, False, 0, -1, 2**63, -(2**70), 1.5, -0.0, float("inf"), "", "h\u00e9llo \u2603",
    b"", b"\x00\xff" * 10, (), (1, "a", (2.0, None)), [], [1, [2, [3, []]]], {},
    {"a": 1, 2: [b"x"], (1, 2): {"n": None}, None: (True,)},
]


def test_safe_serializer(host, managers):
    manager = started(managers, host, serializer="safe")
    service = manager.Service()
    for value in NATIVES:
        back = service.echo(value)
        assert back == value and type(back) is type(value), value
    assert service.echo(NATIVES) == NATIVES

    class Local:
        pass

    for value, culprit in (({1, 2}, "set"), (Local(), "Local"), (frozenset(), "frozenset"),
                           (1j, "complex"), ([1, {2}], "set")):
        with pytest.raises(UnsafeValueError) as info:
            service.echo(value)
        message = str(info.value)        # says which serializer, and what it got
        assert "'safe'" in message and culprit in message, message
        assert not isinstance(info.value.__cause__, RemoteTraceback)  # raised here
    assert service.echo("still usable") == "still usable"

    # builtin exceptions from the remote method come back with their type
    with pytest.raises(KeyError) as info:
        service.fail_key("missing")
    assert info.value.args == ("missing",)
    with pytest.raises(ValueError) as info:
        service.fail("x")
    assert info.value.args == ("remote failure", "x")
    assert "_remote_failure_site" in str(info.value.__cause__)

    # a result that would need pickle fails on the server's side, and says why
    with pytest.raises(RemoteError) as info:
        service.make_set()
    assert "UnsafeValueError" in str(info.value)
    assert service.add(1, 2) == 3


# ---------------------------------------------------------------------------
# 7. server-side tracebacks as __cause__

@pytest.mark.parametrize("serializer", ["pickle", "safe"])
def test_remote_traceback_is_the_cause(host, serializer, managers):
    manager = started(managers, host, serializer=serializer)
    service = manager.Service()
    with pytest.raises(ValueError) as info:
        service.fail(42)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "_remote_failure_site" in str(cause) and "Traceback" in str(cause)
    shown = "".join(traceback.format_exception(info.value))
    assert "_remote_failure_site" in shown and "Server-side traceback" in shown


# ---------------------------------------------------------------------------
# server and client on two hosts: network namespaces joined by a veth pair

_netns_serial = iter(range(1000))

#: TEST-NET-1 (RFC 5737): routed nowhere, and used only inside the namespaces
SERVER_IP, CLIENT_IP = "192.0.2.1", "192.0.2.2"


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def netns_pair():
    """Two namespaces, "a" (server) and "b" (client), joined by veth_a/veth_b."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are a Linux feature")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces (ip netns add) needs root; uid is %d"
                    % os.geteuid())
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed (.ci/run installs it)")
    tag = "%d%d" % (os.getpid(), next(_netns_serial))
    names = {"ns_a": "fmgr%sa" % tag, "ns_b": "fmgr%sb" % tag,
             "veth_a": "fv%sa" % tag[-11:], "veth_b": "fv%sb" % tag[-11:]}
    made = []
    try:
        for ns in (names["ns_a"], names["ns_b"]):
            result = _ip("netns", "add", ns)
            if result.returncode != 0:
                pytest.skip("cannot make a network namespace here: `ip netns add` failed: %s"
                            % result.stderr.strip())
            made.append(ns)
        # the pair is made straight inside the namespaces: nothing on this host's
        # own interfaces
        result = _ip("-n", names["ns_a"], "link", "add", names["veth_a"], "type", "veth",
                     "peer", "name", names["veth_b"], "netns", names["ns_b"])
        if result.returncode != 0:
            pytest.skip("cannot join network namespaces with a veth pair: %s"
                        % result.stderr.strip())
        for ns, veth, ip in ((names["ns_a"], names["veth_a"], SERVER_IP),
                             (names["ns_b"], names["veth_b"], CLIENT_IP)):
            for args in (("addr", "add", ip + "/24", "dev", veth),
                         ("link", "set", veth, "up"), ("link", "set", "lo", "up")):
                result = _ip("-n", ns, *args)
                assert result.returncode == 0, "ip -n %s %s: %s" % (
                    ns, " ".join(args), result.stderr)
        yield names
    finally:
        for ns in made:
            _ip("netns", "del", ns)


@pytest.mark.timeout(60)
def test_cut_link_between_hosts_times_out(netns_pair, servers):
    ns_a, ns_b = netns_pair["ns_a"], netns_pair["ns_b"]
    port = 50000
    env = child_env(FASTMGR_AUTHKEY=H.AUTHKEY.decode())
    server = servers(SPEC, "--address", "%s:%d" % (SERVER_IP, port), env=env,
                     netns=ns_a).ready()
    client = subprocess.Popen(
        ["ip", "netns", "exec", ns_b, *PROGRAM, "client", SERVER_IP,
         str(port)],
        cwd=str(TESTS), env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    answers = Lines(client.stdout)

    def send(op, **kwds):
        client.stdin.write(json.dumps(dict(op=op, **kwds)) + "\n")
        client.stdin.flush()

    def ask(op, wait=15.0, **kwds):
        send(op, **kwds)
        return json.loads(answers.next(wait))

    def link(ns, veth, state):
        result = _ip("-n", ns, "link", "set", veth, state)
        assert result.returncode == 0, result.stderr

    try:
        call_timeout, connect_timeout = 2.0, 1.0
        answer = ask("connect", timeout=call_timeout, connect_timeout=connect_timeout)
        assert answer.get("ok") == server.pid, answer   # across the namespaces
        # a 1 s call fits in the 2 s timeout while the link is up
        answer = ask("call", method="slow", args=[1.0, "whole"])
        assert answer.get("ok") == "whole", answer

        # cut the link in the middle of the same call: TimeoutError in time
        send("call", method="slow", args=[1.0, "cut"])
        time.sleep(0.4)
        link(ns_a, netns_pair["veth_a"], "down")
        answer = json.loads(answers.next(call_timeout + 5.0))
        assert answer.get("exc") == "TimeoutError", answer
        assert call_timeout - 0.1 <= answer["elapsed"] <= call_timeout + SLACK, answer

        # the server's side is still down: a new connection times out
        answer = ask("call", method="echo", args=["again"])
        assert answer.get("exc") == "TimeoutError", answer
        assert answer["elapsed"] <= connect_timeout + SLACK, answer

        # the client's side down too: no route, the manager is unreachable
        link(ns_b, netns_pair["veth_b"], "down")
        answer = ask("call", method="echo", args=["no route"])
        assert answer.get("exc") == "ManagerGone", answer
        assert answer["elapsed"] <= SLACK, answer

        # the link back: calls work again
        link(ns_a, netns_pair["veth_a"], "up")
        link(ns_b, netns_pair["veth_b"], "up")
        answer = ask("call", method="echo", args=["back"])
        assert answer.get("ok") == "back", answer
        assert ask("exit").get("ok", 0) is None
        client.wait(10)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
