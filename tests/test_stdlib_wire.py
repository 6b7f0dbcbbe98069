"""fastmgr and plain multiprocessing.managers on one wire, each way.

A fastmgr server serves clients of plain ``multiprocessing.managers``, and a
fastmgr client uses servers of plain ``multiprocessing.managers``; the
handshake tells them apart (``_protocol.py``, "Stdlib peers").  The stdlib
side is a real process of each CPython 3.10-3.13 found on this machine, in
a venv of its own without fastmgr and isolated (``-I``), running
``helpers/stdlib_peer.py``.  Python 3.10 and 3.11 prove the key with HMAC-MD5,
3.12 and later with HMAC-SHA256: the server's log says which each used.

Every wait is bounded; the whole file takes about 30 s on a quiet 2-CPU
machine with four Pythons (the TLS refusal waits PLAINTEXT_WAIT, 3 s).
"""
import ast
import contextlib
import gc
import multiprocessing
import os
import re
import signal
import ssl
import shutil
import subprocess
import sys
import time

import pytest

import fastmgr
from fastmgr import _protocol as P
from fastmgr._stdlib_client import StdlibConnection
from fastmgr.errors import AuthenticationError, ManagerGone, RemoteError
from helpers import stdlib_wire as H
from helpers.common import child_env

PYTHONS = H.stdlib_pythons()
VERSIONS = list(PYTHONS)
NEWEST = VERSIONS[-1] if VERSIONS else None
KEYHEX = H.KEY.hex()

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only (/proc, pidfds)"),
    pytest.mark.skipif(not PYTHONS, reason="no CPython 3.10-3.13 found"),
    pytest.mark.timeout(60),
]


def digest_of(version):
    """The digest a stdlib peer of that version proves the key with."""
    return "MD5" if version in ("3.10", "3.11") else "SHA256"


def wait_until(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("%s did not hold within %s s" % (what, timeout))
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    """{version: the python of a venv of that version, without fastmgr}."""
    root = tmp_path_factory.mktemp("stdlib-venvs")
    return {version: H.make_venv(python, str(root / version))
            for version, python in PYTHONS.items()}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("stdlib-logs")


class Server:
    """A running server: its child process and address."""

    def __init__(self, child, address):
        self.child, self.address = child, address

    def objects(self):
        """The server's number of shared objects, asked by a fastmgr client
        that holds none."""
        manager = H.Client(address=self.address, authkey=H.KEY, connect_timeout=10)
        manager.connect()
        return manager._number_of_objects()


def fastmgr_serve(logs, name, *options, address="127.0.0.1:0"):
    """A ``fastmgr serve helpers.stdlib_wire:FastManager`` process."""
    child = H.Child([sys.executable, "-m", "fastmgr", "serve", H.SPEC,
                     "--address", address, "--log-level", "DEBUG", *options],
                    str(logs / (name + ".log")),
                    env=child_env(FASTMGR_AUTHKEY=H.KEY.decode()))
    with stopped_on_error(child):
        child.wait_log(r"serving \S+ at ", timeout=30)
        found = re.search(r"serving \S+ at (\(.*?\)|'.*?')", child.log()).group(1)
        return Server(child, ast.literal_eval(found))


def get_server(logs, name, address, serializer="pickle"):
    """A fastmgr server made by FastManager(...).get_server()."""
    child = H.Child([*H.PROGRAM, "serve", address, KEYHEX, serializer],
                    str(logs / (name + ".log")), env=child_env())
    with stopped_on_error(child):
        address = child.next()["address"]
        return Server(child, tuple(address) if isinstance(address, list) else address)


@contextlib.contextmanager
def stopped_on_error(child):
    """A server that did not come up is not left running."""
    try:
        yield
    except BaseException:
        child.stop(signal.SIGKILL)
        raise


@pytest.fixture(scope="module")
def served(logs):
    """``fastmgr serve`` on TCP."""
    server = fastmgr_serve(logs, "fastmgr-serve")
    yield server
    server.child.stop()


@pytest.fixture(scope="module")
def unix_server(logs, tmp_path_factory):
    """A get_server() server on a unix socket."""
    path = str(tmp_path_factory.mktemp("sock") / "manager.sock")
    server = get_server(logs, "get-server-unix", path)
    yield server
    server.child.stop()


def stdlib_peer(venvs, logs, version, mode, address, *args, key=H.KEY):
    return H.Child([venvs[version], "-I", H.PEER, mode, H.address_text(address), key.hex(),
                    *map(str, args)], str(logs / ("%s-%s-%d.log" % (mode, version, time.time_ns()))))


class StdlibServers:
    """One stdlib server per version, started on first use."""

    def __init__(self, venvs, logs):
        self.venvs, self.logs, self.started = venvs, logs, {}

    def __getitem__(self, version):
        if version not in self.started:
            self.started[version] = self.start(version)
        return self.started[version]

    def start(self, version):
        child = stdlib_peer(self.venvs, self.logs, version, "server", "127.0.0.1:0")
        with stopped_on_error(child):
            info = child.next()
            assert info["python"] == [3, int(version.split(".")[1])] and not info["fastmgr"]
            return Server(child, tuple(info["address"]))

    def close(self):
        for server in self.started.values():
            server.child.stop()


@pytest.fixture(scope="module")
def stdlib_servers(venvs, logs):
    servers = StdlibServers(venvs, logs)
    yield servers
    servers.close()


# ---------------------------------------------------------------------------
# a fastmgr server, stdlib clients

def run_stdlib_client(venvs, logs, version, server):
    child = stdlib_peer(venvs, logs, version, "client", server.address)
    try:
        lines = child.lines_until("done")
        assert child.wait() == 0, child.log()
    finally:
        child.stop()
    return {line["step"]: line for line in lines if "step" in line}


def check_client_steps(steps, version, server_pid):
    assert steps["python"]["value"] == [3, int(version.split(".")[1])]
    assert steps["python"]["fastmgr"] is False          # nothing of fastmgr in the client
    value = lambda step: steps[step]["value"]           # noqa: E731
    assert value("dict") == [1, [1, 2], ["a", "b"], 2, 7]
    assert value("dict_keyerror") == "KeyError('missing')"
    assert value("list") == [[1, 2, 3, 4], 4, 3]
    assert value("queue") == ["x", {"y": 1}, True]
    assert value("lock") == [True, None]
    assert value("event") == [True, True]
    # a Namespace and a Value arrive as the stdlib's own classes
    assert value("namespace") == [1, "two", "multiprocessing.managers", [["x", 1], ["y", "two"]]]
    assert value("value") == [42, "multiprocessing.managers", 42]
    assert value("nested") == [True, True, "DictProxy"]
    assert value("autoproxy") == [15, 15, "AutoProxy[Counter]",
                                  ["add", "fail", "get", "pid", "slow", "unpicklable"]]
    assert value("custom_error") == "LookupError('custom failure')"
    assert value("unserializable") == ["RemoteError", True]
    assert value("iterator") == ["k1", "k2"]
    assert value("server_pid") == server_pid
    assert value("objects") >= 10


def check_digests(log, version):
    used = set(re.findall(r"multiprocessing\.managers, HMAC-(\w+)", log))
    assert used == {digest_of(version)}, log


@pytest.mark.parametrize("version", VERSIONS)
def test_stdlib_client_uses_fastmgr_serve(version, venvs, logs, served):
    """The type list from a stdlib client of each version, against
    ``fastmgr serve`` on TCP; what it held is released when it exits."""
    before = served.objects()
    mark = served.child.log_size()
    steps = run_stdlib_client(venvs, logs, version, served)
    check_client_steps(steps, version, served.child.proc.pid)
    check_digests(served.child.log(mark), version)
    wait_until(lambda: served.objects() == before, what="the client's objects freed")


@pytest.mark.parametrize("version", VERSIONS)
def test_stdlib_client_uses_get_server_on_a_unix_socket(version, venvs, logs, unix_server):
    before = unix_server.objects()
    mark = unix_server.child.log_size()
    steps = run_stdlib_client(venvs, logs, version, unix_server)
    check_client_steps(steps, version, unix_server.child.proc.pid)
    check_digests(unix_server.child.log(mark), version)
    wait_until(lambda: unix_server.objects() == before, what="the client's objects freed")


@pytest.mark.parametrize("version", VERSIONS)
def test_stdlib_client_with_a_wrong_key(version, venvs, logs, served):
    mark = served.child.log_size()
    child = stdlib_peer(venvs, logs, version, "refused", served.address, key=b"wrong key")
    try:
        outcome = child.next()
    finally:
        child.stop()
    assert outcome["error"] == "AuthenticationError", outcome
    served.child.wait_log(r"failed authentication from .*digest received was wrong", since=mark)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_stdlib_client_killed_in_a_call_leaves_nothing(transport, venvs, logs, served,
                                                       unix_server):
    """SIGKILLed while the server holds its call (a get on an empty queue),
    a stdlib client's objects go once its process is gone."""
    server = served if transport == "tcp" else unix_server
    before = server.objects()
    child = stdlib_peer(venvs, logs, NEWEST, "stuck", server.address)
    try:
        info = child.next()
        wait_until(lambda: server.objects() == before + info["objects"],
                   what="the client's objects counted")
        time.sleep(0.2)  # the call reached the server
        os.kill(child.proc.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        child.stop()
    wait_until(lambda: server.objects() == before, what="the killed client's objects freed")


def test_mixed_load_counts_exactly(venvs, logs, served):
    """Stdlib clients of two versions and fastmgr clients add to one counter
    under one lock at once: nothing is lost."""
    n = 300
    manager = H.Client(address=served.address, authkey=H.KEY)
    manager.connect()
    counter = manager.get_counter()
    start = counter.get()
    versions = sorted({VERSIONS[0], NEWEST})
    children = [stdlib_peer(venvs, logs, version, "count", served.address, n)
                for version in versions]
    children += [H.Child([*H.PROGRAM, "count", H.address_text(served.address), KEYHEX, str(n)],
                         str(logs / ("fastmgr-count-%d.log" % i)), env=child_env())
                 for i in range(2)]
    try:
        for child in children:
            assert child.next(timeout=50) == {"done": True}, child.log()
    finally:
        for child in children:
            child.stop()
    assert counter.get() == start + n * len(children)


# ---------------------------------------------------------------------------
# refusals

@pytest.mark.parametrize("version", VERSIONS)
def test_safe_server_refuses_stdlib_clients(version, venvs, logs, tmp_path):
    """serializer='safe' never unpickles: a stdlib client (who speaks only
    pickle) gets AuthenticationError at once, and the server says why."""
    server = get_server(logs, "safe-%s" % version, str(tmp_path / "safe.sock"), "safe")
    try:
        child = stdlib_peer(venvs, logs, version, "refused", server.address)
        try:
            outcome = child.next()
        finally:
            child.stop()
        assert outcome["error"] == "AuthenticationError", outcome
        assert outcome["seconds"] < 5
        server.child.wait_log(r"ERROR refused a client of multiprocessing.managers .*"
                              r"'safe' never unpickles")
        assert server.objects() == 0  # fastmgr clients are served as ever
    finally:
        server.child.stop()


def test_serve_no_stdlib_clients(venvs, logs):
    server = fastmgr_serve(logs, "no-stdlib", "--no-stdlib-clients")
    try:
        child = stdlib_peer(venvs, logs, NEWEST, "refused", server.address)
        try:
            outcome = child.next()
        finally:
            child.stop()
        assert outcome["error"] == "AuthenticationError", outcome
        server.child.wait_log(r"refused a client of multiprocessing.managers .*"
                              r"--no-stdlib-clients")
        assert server.objects() == 0
    finally:
        server.child.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem", "-out",
                    "cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], cwd=str(d), check=True, capture_output=True,
                   timeout=60)
    return d


def test_tls_server_refuses_a_stdlib_client_plainly(venvs, logs, certificate):
    """A stdlib client has no TLS: the TLS server tells it no (an
    AuthenticationError within PLAINTEXT_WAIT and a little), and goes on
    serving its TLS clients."""
    server = fastmgr_serve(logs, "tls", "--certfile", str(certificate / "cert.pem"),
                           "--keyfile", str(certificate / "key.pem"))
    try:
        child = stdlib_peer(venvs, logs, NEWEST, "refused", server.address)
        try:
            outcome = child.next(timeout=P.PLAINTEXT_WAIT + 20)
        finally:
            child.stop()
        assert outcome["error"] == "AuthenticationError", outcome
        assert outcome["seconds"] < P.PLAINTEXT_WAIT + 5
        server.child.wait_log(r"refused a client without TLS .*requires TLS")
        # a fastmgr client without TLS hears why
        with pytest.raises(AuthenticationError, match="requires TLS"):
            H.Client(address=server.address, authkey=H.KEY, connect_timeout=20).connect()
        ctx = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
        manager = H.Client(address=server.address, authkey=H.KEY, ssl_context=ctx)
        manager.connect()
        assert manager.Counter(3).add(1) == 4
    finally:
        server.child.stop()


# ---------------------------------------------------------------------------
# stdlib servers, a fastmgr client

@pytest.mark.parametrize("version", VERSIONS)
def test_fastmgr_client_uses_stdlib_server(version, stdlib_servers, monkeypatch):
    """The type list, against a stdlib server of each version, through a
    fastmgr client in this process."""
    server = stdlib_servers[version]
    # nested proxies take the process's key, as with the stdlib's clients
    monkeypatch.setattr(multiprocessing.current_process(), "authkey", H.KEY)
    m = H.Client(address=server.address, authkey=H.KEY, timeout=20, connect_timeout=10)
    m.connect()
    before = m._number_of_objects()
    d = m.dict({"a": 1})
    d["b"] = [1, 2]
    assert (d["a"], d["b"], sorted(d.keys()), len(d), d.get("zz", 7)) == (1, [1, 2], ["a", "b"],
                                                                          2, 7)
    assert isinstance(object.__getattribute__(d, "_peer").tls.conn, StdlibConnection)
    with pytest.raises(KeyError):
        d["missing"]
    lst = m.list([3, 1, 2])
    lst.append(4)
    lst.sort()
    assert (lst[:], len(lst)) == ([1, 2, 3, 4], 4)
    q = m.Queue()
    q.put("x")
    assert q.get(timeout=5) == "x" and q.empty()
    lock = m.Lock()
    with lock:
        assert not lock.acquire(False)
    ev = m.Event()
    ev.set()
    assert ev.is_set() and ev.wait(1)
    ns = m.Namespace(x=1)
    ns.y = "two"
    got = ns._getvalue()
    assert (ns.x, ns.y, type(got), vars(got)) == (1, "two", fastmgr.Namespace, {"x": 1, "y": "two"})
    v = m.Value("i", 41)
    v.value += 1
    assert v.value == 42 and v._getvalue().value == 42
    inner = m.dict({"deep": True})
    lst.append(inner)
    assert lst[-1]["deep"] is True and isinstance(lst[-1], fastmgr.DictProxy)
    assert sorted(iter(m.dict({"k1": 1, "k2": 2}))) == ["k1", "k2"]
    c = m.Counter(10)
    assert c.add(5) == 15 and type(c).__name__ == "AutoProxy[Counter]"
    assert c.pid() == server.child.proc.pid
    with pytest.raises(LookupError, match="custom failure"):
        c.fail()
    with pytest.raises(RemoteError, match="Unserializable"):
        c.unpicklable()
    with fastmgr.pipeline(m):
        for i in range(50):
            d[i] = i
        pending = d.get(7)
    assert pending.result() == 7 and len(d) == 52
    fastmgr.oneway(d)["one"] = 1
    assert d["one"] == 1
    del d, lst, q, lock, ev, ns, v, inner, c, pending
    gc.collect()
    assert m._number_of_objects() == before


@pytest.mark.parametrize("version", VERSIONS)
def test_fastmgr_client_with_a_wrong_key(version, stdlib_servers):
    server = stdlib_servers[version]
    with pytest.raises(AuthenticationError):
        H.Client(address=server.address, authkey=b"wrong key", connect_timeout=10).connect()
    assert server.child.proc.poll() is None


def test_fastmgr_client_with_safe_serializer_refuses_a_stdlib_server(stdlib_servers):
    server = stdlib_servers[NEWEST]
    manager = H.Client(address=server.address, authkey=H.KEY, serializer="safe",
                       connect_timeout=10)
    with pytest.raises(AuthenticationError, match="never unpickles"):
        manager.connect()


def test_fastmgr_client_timeouts_and_gone_with_a_stdlib_server(venvs, logs):
    server = StdlibServers(venvs, logs).start(NEWEST)
    try:
        m = H.Client(address=server.address, authkey=H.KEY, timeout=0.5, connect_timeout=10)
        m.connect()
        c = m.Counter()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            c.slow(5)
        assert time.monotonic() - started < 3
        assert c.add(2) == 2  # on a new connection
        c._set_timeout(10)
        assert c.slow(0.6) == 0.6  # this proxy's own timeout
    finally:
        server.child.stop(signal.SIGKILL)
    with pytest.raises(ManagerGone):
        c.add(1)
    with pytest.raises(ManagerGone):
        m.Counter()
