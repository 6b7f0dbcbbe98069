"""Hostile neighbours and misbehaving clients: what a manager server and
its clients must withstand (see docs/security.md).

Each server is ``fastmgr serve`` in its own process (``Served``), so that a
test can starve it of descriptors or threads from outside and read its
memory and CPU time from /proc.  Tests that play another local user run
the attacker as ``nobody`` in a child with its own mount namespace and a
private tmpfs on /dev/shm and /tmp (``in_namespace``); they need root and
skip without it.  Every wait is bounded.
"""
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import hardening as H
from helpers import spin_attack as S
from helpers.common import Worker
from fastmgr import _protocol as P
from fastmgr._admission import MAX_PENDING
from fastmgr.connection import Client, connect_socket
from fastmgr.errors import RemoteError

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def served():
    started = []

    def start(*args, **kwds):
        srv = H.Served(*args, **kwds)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


# ---------------------------------------------------------------------------
# running out of descriptors and threads: the accept loop waits, logs once,
# and serves again when they come back

def test_accept_loop_at_the_descriptor_limit(served):
    srv = served()
    H.roundtrip(srv)
    soft, hard = resource.prlimit(srv.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (srv.status()["fds"] + 2, hard))
    socks = []
    try:
        socks = H.silent_connections(srv.address, 8)   # the last ones stay in the backlog
        assert H.wait_until(lambda: "cannot accept a connection" in srv.text(), 10), srv.tail()
        # waiting, not spinning: a loop retrying accept() would take a whole CPU
        before = H.cpu_seconds(srv.pid)
        time.sleep(2.0)
        used = H.cpu_seconds(srv.pid) - before
        assert used < 0.2, "the server used %.2f s of CPU in 2 s at the descriptor limit" % used
    finally:
        for s in socks:
            s.close()
        resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (soft, hard))
    H.roundtrip(srv)
    assert H.wait_until(lambda: "serving new connections again" in srv.text(), 10), srv.tail()
    assert srv.text().count("cannot accept a connection") == 1, srv.tail()


def _pids_cgroup():
    root = "/sys/fs/cgroup/pids"
    if not ROOT:
        pytest.skip("needs root: it limits the server's threads with a pids cgroup")
    if not os.path.exists(os.path.join(root, "cgroup.procs")):
        pytest.skip("no cgroup v1 pids hierarchy at %s" % root)
    path = os.path.join(root, "fastmgr-test-%d" % os.getpid())
    os.mkdir(path)
    return root, path


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_accept_loop_without_threads(served):
    root, cgroup = _pids_cgroup()
    srv = None
    try:
        srv = served()
        H.roundtrip(srv)
        _write(os.path.join(cgroup, "cgroup.procs"), str(srv.pid))
        with open(os.path.join(cgroup, "pids.current")) as f:
            _write(os.path.join(cgroup, "pids.max"), f.read().strip())
        client = Worker(H.roundtrip, srv, 30)
        assert H.wait_until(lambda: "cannot start a thread" in srv.text(), 10), srv.tail()
        time.sleep(0.5)
        assert client.is_alive(), "the client did not wait for the server"
        _write(os.path.join(cgroup, "pids.max"), "max")
        client.outcome(40)
        H.roundtrip(srv)
        assert "serving new connections again" in srv.text(), srv.tail()
    finally:
        if srv is not None and srv.alive():
            _write(os.path.join(root, "cgroup.procs"), str(srv.pid))
            srv.stop()
        os.rmdir(cgroup)


def test_a_hub_that_could_not_start_a_thread_tries_again(wire):
    """The hub starts its loop thread with its first connection; if no
    thread could be had then, the next connection starts it."""
    from helpers.hub_rig import BOX, Rig

    class Starved(Rig):
        refusals = 1

        def start_thread(self, fn, *args):
            if self.refusals:
                self.refusals -= 1
                raise RuntimeError("can't start new thread")
            super().start_thread(fn, *args)

    rig = Starved(wire)
    try:
        with pytest.raises(RuntimeError):
            rig.connect()
        rig.servers.pop().close()     # refused: the hub never had it
        rig.clients.pop().close()
        client = rig.connect()
        assert client.call(BOX, "echo", ("served",)) == (P.RESP_RETURN, "served")
    finally:
        rig.close()


def test_first_connections_added_at_once_start_one_loop(compiled_wire):
    """Handshakes run in parallel, so the hub's first connections can be
    added at once: one loop thread, however slowly threads start."""
    from helpers.hub_rig import BOX, Rig

    class Slow(Rig):
        def start_thread(self, fn, *args):
            time.sleep(0.2)
            super().start_thread(fn, *args)

    rig = Slow(compiled_wire)
    try:
        clients = [Worker(rig.connect) for _ in range(4)]
        clients = [w.outcome(10) for w in clients]
        for client in clients:
            assert client.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)
        loops = [t for t in rig.threads if getattr(t, "_target", None) == rig.hub.run]
        assert len(loops) == 1, "%d loop threads" % len(loops)
    finally:
        rig.close()


def test_silent_peers_cannot_keep_clients_out(served):
    srv = served()
    H.roundtrip(srv)
    base = srv.status()
    socks = H.silent_connections(srv.address, 2 * MAX_PENDING + 50)
    try:
        # every silent peer has been taken in (or cut off) by now
        assert H.wait_until(lambda: "cut off the oldest" in srv.text(), 20), srv.tail()
        H.roundtrip(srv)
        threads = srv.status()["threads"]
        assert threads <= base["threads"] + MAX_PENDING + 8, (threads, base)
    finally:
        for s in socks:
            s.close()
    H.roundtrip(srv)


def test_failed_authentications_do_not_flood_the_log(served):
    from fastmgr import AuthenticationError
    srv = served()
    for _ in range(200):
        with pytest.raises((AuthenticationError, OSError, EOFError)):
            Client(srv.address, b"wrong key", timeout=10).close()
    H.roundtrip(srv)
    logged = srv.text().count("failed authentication")
    assert 10 <= logged <= 40, "%d warnings for 200 failed authentications" % logged


# ---------------------------------------------------------------------------
# reference counts: no client drops references it does not hold

def _raw_client(srv, hello):
    conn = Client(srv.address, H.AUTHKEY, hello=hello, timeout=10)
    conn.timeout = 10
    return conn


def test_incref_below_one_is_refused(served):
    srv = served()
    mgr = srv.manager()
    d = mgr.dict({"x": 1})
    mgr._peer().control("incref", d._id)       # a second reference, held by this process
    attacker = _raw_client(srv, os.urandom(16))
    try:
        for count in (0, -1, -1000):
            kind, value = attacker.call(0, "incref", (d._id, count))
            assert kind == P.RESP_ERROR, (kind, value)
            assert "at least 1" in str(value[0])
        kind, value = attacker.call(0, "incref", (d._id, 0.5))
        assert kind == P.RESP_ERROR
        # decrefs of references it does not hold change nothing
        kind, _ = attacker.call(0, "decref_many", ([d._id] * 10000,))
        assert kind == P.RESP_RETURN
        for _ in range(10):
            attacker.call(0, "decref", (d._id,))
    finally:
        attacker.close()
    mgr._peer().control("decref", d._id)       # our own second reference goes
    assert d["x"] == 1                         # and the first still works
    assert mgr._number_of_objects() == 1


def test_no_client_can_pose_as_the_server_itself(served):
    """References held by proxies inside the server belong to a session no
    client's hello can name."""
    srv = served()
    mgr = srv.manager()
    inner = mgr.list([1, 2])
    outer = mgr.dict()
    outer["inner"] = inner                     # the server now holds a proxy of inner
    ident = inner._id
    del inner
    mgr._peer().flush()
    for hello in (b"local", b""):
        attacker = _raw_client(srv, hello)
        try:
            for _ in range(3):
                attacker.call(0, "decref", (ident,))
        finally:
            attacker.close()
    # the list lives on (called by ident: its proxy in the server holds it)
    assert mgr._peer().call(ident, "__len__") == (P.RESP_RETURN, 2)


# ---------------------------------------------------------------------------
# empty keys: one rule for every source

def _serve_with(keyfile=None, env_key=None):
    env = H.child_env()
    env.pop("FASTMGR_AUTHKEY", None)
    if env_key is not None:
        env["FASTMGR_AUTHKEY"] = env_key
    args = [sys.executable, "-m", "fastmgr", "serve", H.SPEC, "--address", "127.0.0.1:0"]
    if keyfile is not None:
        args += ["--authkey-file", str(keyfile)]
    try:
        return subprocess.run(args, cwd=H.TESTS, env=env, capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("fastmgr serve started with that key (still serving after 20 s)")


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"  \t\n", b"\n\n"],
                         ids=["empty", "newline", "crlf", "blanks", "two-newlines"])
def test_empty_key_file_is_refused(tmp_path, content):
    keyfile = tmp_path / "key"
    keyfile.write_bytes(content)
    result = _serve_with(keyfile=keyfile)
    assert result.returncode == 2, result
    assert "empty or only whitespace" in result.stderr


@pytest.mark.parametrize("value", ["", " ", "\t\n"], ids=["empty", "space", "blanks"])
def test_empty_key_variable_is_refused(value):
    result = _serve_with(env_key=value)
    assert result.returncode == 2, result
    assert "FASTMGR_AUTHKEY" in result.stderr


def test_missing_key_is_refused_the_same_way(tmp_path):
    result = _serve_with()
    assert result.returncode == 2 and "FASTMGR_AUTHKEY" in result.stderr, result
    result = _serve_with(keyfile=tmp_path / "absent")
    assert result.returncode == 2 and "authkey file" in result.stderr, result


# ---------------------------------------------------------------------------
# the unix socket's path: taken by someone else, or in their directory

def test_a_taken_socket_path_is_refused_cleanly(tmp_path):
    path = tmp_path / "taken.sock"
    path.write_bytes(b"")              # another user's file, say
    env = H.child_env(FASTMGR_AUTHKEY=H.AUTHKEY.decode())
    result = subprocess.run([sys.executable, "-m", "fastmgr", "serve", H.SPEC, "--address",
                             str(path)], cwd=H.TESTS, env=env, capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2 and "cannot listen at" in result.stderr, result
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("owner", ["us, writable by all", "another user"])
def test_a_socket_in_a_directory_others_may_change_is_warned_about(served, tmp_path, owner):
    directory = tmp_path / "shared"
    directory.mkdir()
    if owner == "another user":
        if not ROOT:
            pytest.skip("needs root: the directory is given to nobody")
        os.chown(directory, 65534, 65534)
        os.chmod(directory, 0o755)
    else:
        os.chmod(directory, 0o777)    # no sticky bit: anyone may replace our socket
    srv = served(address=str(directory / "m.sock"))
    assert "other users may change" in srv.text(), srv.tail()
    H.roundtrip(srv)


def test_no_warning_for_a_private_or_sticky_directory(served, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    for directory in (private, sticky):
        srv = served(address=str(directory / "m.sock"))
        assert "other users may change" not in srv.text(), srv.tail()


# ---------------------------------------------------------------------------
# connect() is bounded by timeout= when connect_timeout is not given

@pytest.mark.parametrize("accepts", [False, True], ids=["backlog", "accepted"])
def test_connect_is_bounded_by_timeout(accepts):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held = []
    if accepts:   # a server that takes the connection and never answers
        threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    try:
        mgr = H.HardManager(address=listener.getsockname(), authkey=H.AUTHKEY, timeout=1.0)
        attempt = Worker(mgr.connect)
        with pytest.raises((TimeoutError, OSError)):
            attempt.outcome(10)      # the default connect_timeout is 30 s
    finally:
        listener.close()
        for sock, _ in held:
            sock.close()


# ---------------------------------------------------------------------------
# a client that sends and never reads: the server reads no further than a
# bound per connection, and serves everyone else meanwhile

#: what one flooding connection may add to the server's RSS: the bound on
#: read-ahead (BACKLOG, 4 MiB, up to twice that in the buffer), the reply
#: being sent and the request being run (1 MiB each), and allocator slack
FLOOD_RSS_MAX_KB = 40 * 1024


def _flood(served_, flood, frame, count):
    """Run flood with count frames in a thread; meanwhile sample the
    server's RSS and check a legitimate client is served.  Returns the
    largest RSS growth seen (kB) and how many frames got out."""
    base = served_.status()["rss_kb"]
    worker = Worker(flood.run, frame, count)
    peak, rounds = 0, 0
    while worker.is_alive():
        H.roundtrip(served_, fresh=False)
        rounds += 1
        peak = max(peak, served_.status()["rss_kb"] - base)
        time.sleep(0.05)
    sent = worker.outcome(5)
    H.roundtrip(served_, fresh=False)
    peak = max(peak, served_.status()["rss_kb"] - base)
    assert rounds > 0
    return peak, sent


@pytest.mark.parametrize("size", [1 << 20, 64 << 10], ids=["1MiB", "64KiB"])
def test_a_client_that_never_reads_over_tcp(served, size):
    srv = served()
    mgr, keep, ident = H.echo_ident(srv)
    H.roundtrip(srv, fresh=False)
    count = (220 << 20) // size
    flood = H.SocketFlood(srv.address)
    try:
        peak, sent = _flood(srv, flood, H.echo_frame(ident, size), count)
    finally:
        flood.close()
    assert peak < FLOOD_RSS_MAX_KB, "server RSS grew %d kB (%d requests of %d bytes sent)" % (
        peak, sent, size)
    assert sent < count, "the server read all %d requests without sending a reply" % count
    assert srv.alive()


def test_a_stdlib_client_that_never_reads(served):
    srv = served()
    mgr, keep, ident = H.echo_ident(srv)
    H.roundtrip(srv, fresh=False)
    flood = H.StdlibFlood(srv.address)
    try:
        peak, sent = _flood(srv, flood, H.StdlibFlood.frame(ident, 1 << 20), 220)
    finally:
        flood.close()
    assert peak < FLOOD_RSS_MAX_KB, "server RSS grew %d kB (%d requests sent)" % (peak, sent)
    assert sent < 220
    assert srv.alive()


@pytest.mark.parametrize("size", [1 << 20, 200 << 10], ids=["1MiB-detours", "200KiB-ring"])
def test_a_client_that_never_reads_through_the_rings(served, tmp_path, size):
    from fastmgr._backend import wire
    if wire.IMPLEMENTATION != "compiled":
        pytest.skip("the pure-Python wire has no rings")
    srv = served(address=str(tmp_path / "m.sock"))
    mgr, keep, ident = H.echo_ident(srv)
    H.roundtrip(srv, fresh=False)
    count = (220 << 20) // size
    flood = H.RingFlood(srv.address)
    try:
        peak, sent = _flood(srv, flood, H.echo_frame(ident, size), count)
    finally:
        flood.close()
    assert peak < FLOOD_RSS_MAX_KB, "server RSS grew %d kB (%d requests of %d bytes sent)" % (
        peak, sent, size)
    assert sent < count
    assert srv.alive()


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_pipelining_thousands_of_calls_still_works(served, tmp_path, where):
    """A client that sends far more than the bound before it reads: its
    sends wait for the server, which waits for it to read; neither blocks
    the other for good."""
    import fastmgr
    srv = served(address=str(tmp_path / "m.sock") if where == "unix" else "127.0.0.1:0")
    mgr = srv.manager()
    echo = mgr.Echo()
    blob = bytes(10 << 10)
    with fastmgr.pipeline(mgr):
        pending = [echo.size(blob + bytes(i % 7)) for i in range(3000)]
        big = [echo.echo(bytes(1 << 20)) for _ in range(12)]
    assert [p.result() for p in pending] == [len(blob) + i % 7 for i in range(3000)]
    assert all(len(p.result()) == 1 << 20 for p in big)


# ---------------------------------------------------------------------------
# 'safe': one message of keys crafted to collide in a dict cannot stall
# everyone (a dict with more than SAME_HASH_MAX keys of one hash is refused)

HASH_MODULUS = 2 ** 61 - 1      # sys.hash_info.modulus on 64-bit builds


def colliding_ints(n, c=7):
    """n distinct ints whose hash() is c, all counted by the rule (ints
    below the modulus in magnitude are not: no two share a hash)."""
    return [k * HASH_MODULUS + c for k in range(1, n + 1)]


def dict_bytes(codec, keys):
    """The encoding of {key: None for key in keys}, built without the dict
    (building it would be quadratic for colliding keys)."""
    import struct
    return (bytes([P.T_DICT]) + struct.pack("<I", len(keys))
            + b"".join(codec.dumps(k) + codec.dumps(None) for k in keys))


@pytest.mark.parametrize("serializer", ["safe", "xmlrpclib"])
def test_a_dict_of_colliding_keys_is_refused_without_pickle(wire, serializer):
    from fastmgr.errors import ProtocolError
    codec = wire.Codec(serializer)
    keys = colliding_ints(P.SAME_HASH_MAX)
    assert codec.loads(dict_bytes(codec, keys)) == dict.fromkeys(keys)
    for keys in (colliding_ints(P.SAME_HASH_MAX + 1),
                 colliding_ints(20000),
                 # any type counts: floats and ints of one hash
                 [2.0 ** (61 * k) for k in range(1, 6)] + colliding_ints(4, 1)):
        with pytest.raises(ProtocolError, match="keys of one hash"):
            codec.loads(dict_bytes(codec, keys))
    # nested anywhere in a request: args = ([crafted dict],)
    import struct
    body = (struct.pack("<BQ", P.REQ_CALL, 1) + codec.dumps("m")
            + bytes([P.T_TUPLE]) + struct.pack("<I", 1) + bytes([P.T_LIST])
            + struct.pack("<I", 1) + dict_bytes(codec, colliding_ints(P.SAME_HASH_MAX + 1))
            + codec.dumps(None))
    with pytest.raises(ProtocolError, match="keys of one hash"):
        codec.decode_request(body)


def test_pickle_codec_keeps_the_stdlib_behaviour(wire):
    codec = wire.Codec("pickle")
    keys = colliding_ints(P.SAME_HASH_MAX + 5)
    assert codec.loads(dict_bytes(codec, keys)) == dict.fromkeys(keys)


def test_ordinary_dicts_are_never_refused(wire):
    codec = wire.Codec("safe")
    samples = [
        dict.fromkeys([7] + colliding_ints(P.SAME_HASH_MAX)),   # small ints are not counted
        {i: i for i in range(5000)},
        {-1: "a", -2: "b"},                                  # hash(-1) == hash(-2)
        {str(i): i for i in range(5000)},
        {(i, -i): i for i in range(3000)},
        {i * 0.5: i for i in range(3000)},
        {b"%d" % i: None for i in range(1000)},
        {None: 1, True: 2, 0: 3, 2.5: 4, "s": 5, (1, "x"): 6},
    ]
    for value in samples:
        assert codec.loads(codec.dumps(value)) == value


def test_one_colliding_message_does_not_stall_other_clients(served):
    import struct
    from fastmgr._backend import wire
    srv = served(serializer="safe")
    mgr = srv.manager(serializer="safe")
    echo = mgr.Echo()
    codec = wire.Codec("safe")
    body = (struct.pack("<BQ", P.REQ_CALL, echo._id) + codec.dumps("size")
            + bytes([P.T_TUPLE]) + struct.pack("<I", 1)
            + dict_bytes(codec, colliding_ints(30000)) + codec.dumps(None))
    attacker = Client(srv.address, H.AUTHKEY, codec=codec, timeout=10)
    raw = socket.socket(fileno=os.dup(attacker.fileno()))
    try:
        raw.sendall(wire.frame(body))
        time.sleep(0.2)       # the server is at it now (unbounded: ~10 s of one CPU)
        # another client, new to the server, is served meanwhile
        def another_client():
            other = H.HardManager(address=srv.address, authkey=H.AUTHKEY, serializer="safe")
            other.connect()
            return other.dict({"a": 1})["a"]
        assert Worker(another_client).outcome(5) == 1
        # and the attacker's connection is closed, its message refused
        raw.settimeout(10)
        assert raw.recv(1) == b""
    finally:
        raw.close()
        attacker.close()
    assert "keys of one hash" in srv.text()


# ---------------------------------------------------------------------------
# the machine-wide spinner counts: no other user can influence them

def _spin_attack(scenario):
    import json
    if not ROOT:
        pytest.skip("needs root: the attacker runs as nobody in namespaces of its own")
    from fastmgr._backend import wire
    if wire.IMPLEMENTATION != "compiled":
        pytest.skip("the pure-Python wire never spins")
    hidden = [path for path in (sys.executable, wire.__file__, S.TESTS)
              if os.path.realpath(path).startswith(("/tmp/", "/dev/shm/"))]
    if hidden:
        pytest.skip("%s would be hidden under the private /tmp or /dev/shm" % hidden[0])
    out = S.in_namespace([sys.executable, "-m", "helpers.spin_attack", scenario])
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report.get("attacker", 0) == 0, report
    victim = report["victim"]
    assert victim["returncode"] == 0, "the victim died: %r" % victim
    return report, victim


def test_the_segment_key_is_the_one_the_tests_attack(compiled_wire):
    for uid in (0, 1, 1000, 65534, 2 ** 32 - 2):
        assert compiled_wire.spin_segment(uid) == S.spin_segment(uid)


@pytest.mark.timeout(120)
def test_another_users_segment_is_ignored_with_one_warning():
    report, victim = _spin_attack("squat")
    assert victim["sharing"] == "process", victim
    assert len(victim["warnings"]) == 1 and "System V" in victim["warnings"][0], victim
    assert victim["probe"] != 0, "spinning was turned off: %r" % victim
    assert victim["calls"] > 0


@pytest.mark.timeout(120)
def test_a_symlink_planted_by_another_user_is_not_followed():
    report, victim = _spin_attack("symlink")
    assert report["victim_file_bytes"] == 0, report
    assert victim["warnings"] == [], victim


@pytest.mark.timeout(120)
def test_truncating_a_planted_file_kills_no_one():
    report, victim = _spin_attack("truncate")
    assert victim["calls"] > 0 and victim["warnings"] == [], victim


@pytest.mark.timeout(120)
def test_slot_times_in_the_future_are_stale():
    report, victim = _spin_attack("future")
    assert victim["sharing"] == "machine", victim
    assert victim["probe"] != 0, "a slot time in the future kept a slot busy: %r" % victim


def _full_unix_listener(path):
    """A unix listener whose backlog (0: one queued connection) is full."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(0)
    queued = socket.socket(socket.AF_UNIX)
    queued.connect(path)
    return listener, queued


def test_a_client_waits_for_room_at_a_full_unix_listener(tmp_path):
    # with a timeout the socket is non-blocking underneath, and connect()
    # fails at once with EAGAIN while the backlog is full: many clients
    # connecting at once to a busy server must wait, as the stdlib's do
    path = str(tmp_path / "listener")
    listener, queued = _full_unix_listener(path)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    done = []
    worker = threading.Thread(target=lambda: done.append(connect_socket(sock, path, 10)))
    try:
        worker.start()
        time.sleep(0.2)
        assert not done
        listener.accept()[0].close()
        worker.join(10)
        assert done and sock.getpeername() == path
    finally:
        for s in (sock, queued, listener):
            s.close()


def test_no_room_at_a_unix_listener_times_out(tmp_path):
    path = str(tmp_path / "listener")
    listener, queued = _full_unix_listener(path)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):
            connect_socket(sock, path, 0.3)
    finally:
        for s in (sock, queued, listener):
            s.close()
