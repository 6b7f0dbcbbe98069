"""A manager server survives whatever reaches its socket and whoever dies,
and loses nothing.

The server runs in its own process (``helpers.reliability.ServerProcess``)
with a short pre-authentication timeout (``FASTMGR_HANDSHAKE_TIMEOUT``), so
that its memory and threads can be read from /proc and it can be killed.
Every wait is bounded.  ``FASTMGR_LONG=1`` runs the long variants (full
increment counts, a longer soak); ``tools/soak.py`` and ``tools/fuzz.sh``
are the by-hand versions of the soak and of the fuzzers.
"""
import glob
import multiprocessing
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from fastmgr import AuthenticationError
from fastmgr import _protocol as P
from fastmgr.connection import Client
from helpers import reliability as H
from helpers.common import PUREPYTHON, child_env

LONG = os.environ.get("FASTMGR_LONG", "") not in ("", "0")
HANDSHAKE_TIMEOUT = 1.0        # the test server's pre-authentication timeout (s)
RSS_SLACK_KB = 30 * 1024       # what hostile traffic may add to the server's RSS
#: 16 clients x 10,000 locked increments take ~20 s on 2 cores (compiled wire)
INCREMENTS = int(os.environ.get("FASTMGR_INCREMENTS", 1000 if PUREPYTHON and not LONG else 10_000))
SOAK_SECONDS = 600 if LONG else 12
FUZZ_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc and uses SIGKILL")


# ---------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def server():
    """One server for the hostile-input tests; each test checks that it
    still serves and that its threads came back to the baseline."""
    srv = H.ServerProcess(handshake_timeout=HANDSHAKE_TIMEOUT)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_server():
    srv = H.ServerProcess(handshake_timeout=HANDSHAKE_TIMEOUT)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _no_children_left():
    yield
    left = multiprocessing.active_children()
    for proc in left:
        proc.kill()
        proc.join(5)
    assert not left, "client processes left behind: %r" % left


def _legit_roundtrip(srv):
    """A legitimate client works: a new connection, an object, a call."""
    conn = Client(srv.address, H.AUTHKEY, timeout=10)
    try:
        conn.timeout = 10
        kind, value = conn.call(0, "dummy")
        assert kind == P.RESP_RETURN and value is None
    finally:
        conn.close()
    mgr = srv.manager()
    d = mgr.dict()
    d["x"] = 1
    assert d["x"] == 1
    del d


class Baseline:
    """The server's threads and RSS before a test's traffic; check() waits
    for the threads to come back and bounds the RSS growth."""

    def __init__(self, srv):
        self.srv = srv
        _legit_roundtrip(srv)   # warm up: the first use allocates
        self.before = srv.status()

    def check(self, rss_slack_kb=RSS_SLACK_KB, timeout=HANDSHAKE_TIMEOUT + 10):
        _legit_roundtrip(self.srv)
        ok = H.wait_until(lambda: self.srv.status()["threads"] <= self.before["threads"],
                          timeout)
        after = self.srv.status()
        assert ok, "server threads %d, baseline %d" % (after["threads"], self.before["threads"])
        assert after["fds"] <= self.before["fds"] + 2, (after, self.before)
        assert after["rss_kb"] - self.before["rss_kb"] < rss_slack_kb, (after, self.before)
        assert self.srv.alive()
        return after


# ---------------------------------------------------------------------------
# hostile input

@pytest.mark.timeout(60)
def test_random_bytes(server):
    base = Baseline(server)
    rng = random.Random(1)
    for i in range(300):
        with H.raw_connect(server.address) as sock:
            sock.sendall(rng.randbytes(rng.randrange(1, 8192)))
        if i % 50 == 0:
            _legit_roundtrip(server)
    base.check()


@pytest.mark.timeout(60)
def test_truncated_frames(server):
    base = Baseline(server)
    rng = random.Random(2)
    for i in range(200):
        with H.raw_connect(server.address) as sock:
            n = rng.randrange(1, 200)
            body = rng.randbytes(n)
            cut = rng.randrange(0, 4 + n)
            sock.sendall((struct.pack("!i", n) + body)[:cut])
    base.check()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("header", [
    struct.pack("!i", -1) + struct.pack("!Q", 4 << 30),        # 4 GiB, long form
    struct.pack("!i", -1) + struct.pack("!Q", (1 << 64) - 1),   # the largest u64
    struct.pack("!i", 0x7FFFFFFF),                              # 2 GiB - 1
    struct.pack("!i", -2),                                      # a bad length
], ids=["4GiB", "u64max", "2GiB", "negative"])
def test_huge_length_header(server, header):
    """Refused at once, before authentication: nothing is allocated, the
    connection is closed without waiting for the body."""
    base = Baseline(server)
    for _ in range(20):
        with H.raw_connect(server.address) as sock:
            challenge = H.read_frame(sock)
            assert challenge.startswith(P.CHALLENGE + P.SHA256_PREFIX + P.MAGIC)
            sock.sendall(header)
            t0 = time.monotonic()
            assert H.closed_by_peer(sock, 5)
            assert time.monotonic() - t0 < HANDSHAKE_TIMEOUT / 2
    base.check(rss_slack_kb=8 * 1024)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sent", [b"", struct.pack("!i", 64), struct.pack("!i", 64) + b"x" * 10],
                         ids=["nothing", "header", "header+part"])
def test_silent_peer_is_dropped(server, sent):
    """A connection that goes silent before authenticating is closed after
    the pre-authentication timeout; 50 of them cost no lasting thread."""
    base = Baseline(server)
    socks = []
    try:
        for _ in range(50):
            sock = H.raw_connect(server.address)
            socks.append(sock)
            sock.sendall(sent)
        t0 = time.monotonic()
        for sock in socks:
            assert H.closed_by_peer(sock, HANDSHAKE_TIMEOUT + 10)
        elapsed = time.monotonic() - t0
        assert elapsed < HANDSHAKE_TIMEOUT + 5, elapsed
        _legit_roundtrip(server)
    finally:
        for sock in socks:
            sock.close()
    base.check()


def _authenticated_socket(address):
    """A raw socket that completed the handshake with the right key."""
    conn = Client(address, H.AUTHKEY, timeout=10)
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    return sock


@pytest.mark.timeout(60)
def test_garbage_after_handshake(server):
    """After a successful handshake, malformed frames end that connection
    (well-framed bodies that do not decode get a failure reply or a close);
    the server goes on serving."""
    base = Baseline(server)
    rng = random.Random(3)
    for i in range(200):
        with _authenticated_socket(server.address) as sock:
            if i % 3 == 0:
                sock.sendall(rng.randbytes(rng.randrange(1, 4096)))
            else:
                body = rng.randbytes(rng.randrange(0, 300))
                if i % 3 == 1 and body:
                    body = bytes([P.REQ_CALL]) + body  # a plausible kind byte
                sock.sendall(struct.pack("!i", len(body)) + body)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server already reset it: as good as closed
            assert H.closed_by_peer(sock, 10)
    # a length beyond the limit after authentication: refused, connection closed
    with _authenticated_socket(server.address) as sock:
        sock.sendall(struct.pack("!i", -1) + struct.pack("!Q", 4 << 30))
        assert H.closed_by_peer(sock, 5)
    base.check()


@pytest.mark.timeout(120)
def test_thousand_wrong_keys(server):
    base = Baseline(server)
    t0 = time.monotonic()
    for i in range(1000):
        with pytest.raises(AuthenticationError):
            conn = Client(server.address, b"wrong-key-%d" % i, timeout=10)
            conn.close()
    elapsed = time.monotonic() - t0
    print("1000 wrong-key handshakes: %.2f s" % elapsed)
    base.check()


@pytest.mark.timeout(60)
def test_nothing_decoded_before_authentication(server, tmp_path):
    """Frames that would act if decoded (a shutdown request, a pickle that
    creates a file) sent instead of the handshake answer do nothing."""
    base = Baseline(server)
    marker = tmp_path / "unpickled"

    class Touch:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle
    codec_bodies = [
        P.REQ_CALL.to_bytes(1, "little") + (0).to_bytes(8, "little")
        + b"\x06" + (8).to_bytes(4, "little") + b"shutdown" + b"\x08\0\0\0\0" + b"\x00",
        b"\x0b" + struct.pack("<I", 100) + pickle.dumps(Touch(), 5),
    ]
    for body in codec_bodies:
        for padded in (body, body.ljust(300, b"\0")):   # within and over the frame limit
            with H.raw_connect(server.address) as sock:
                H.read_frame(sock)
                sock.sendall(struct.pack("!i", len(padded)) + padded)
                assert H.closed_by_peer(sock, 5)
    assert not marker.exists()
    base.check()


# ---------------------------------------------------------------------------
# a client dies

def _kill_holder(srv, mgr=None, baseline=None, ready_timeout=30):
    reader, writer = H.FORK.Pipe(duplex=False)
    proc = H.FORK.Process(target=H.holder, args=(srv.address, writer))
    proc.start()
    writer.close()
    try:
        assert reader.poll(ready_timeout), "the client never became ready"
        held = reader.recv()
    finally:
        reader.close()
    if mgr is not None:
        assert mgr._number_of_objects() >= baseline + held
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    return held


@pytest.mark.timeout(60)
def test_sigkilled_client_frees_its_referents(fresh_server):
    mgr = fresh_server.manager()
    baseline = mgr._number_of_objects()
    held = _kill_holder(fresh_server, mgr, baseline)
    assert held == 5
    assert H.wait_until(lambda: mgr._number_of_objects() == baseline, 10), (
        mgr._number_of_objects(), baseline)


@pytest.mark.timeout(120)
def test_hundred_sigkilled_clients_in_a_row(fresh_server):
    mgr = fresh_server.manager()
    baseline = mgr._number_of_objects()
    before = fresh_server.status()
    t0 = time.monotonic()
    for i in range(100):
        _kill_holder(fresh_server, *((mgr, baseline) if i % 10 == 0 else ()))
    assert H.wait_until(lambda: mgr._number_of_objects() == baseline, 15), (
        mgr._number_of_objects(), baseline)
    assert H.wait_until(lambda: fresh_server.status()["threads"] <= before["threads"], 10)
    after = fresh_server.status()
    assert after["fds"] <= before["fds"] + 2, (after, before)
    print("100 killed clients: %.1f s, server %r -> %r" % (time.monotonic() - t0, before, after))


# ---------------------------------------------------------------------------
# the server dies

@pytest.mark.timeout(60)
def test_server_sigkilled_under_load(fresh_server):
    roles = ["busy"] * 6 + ["queue", "event"]
    procs, readers, readies = [], [], []
    for role in roles:
        reader, writer = H.FORK.Pipe(duplex=False)
        ready = H.FORK.Event()
        proc = H.FORK.Process(target=H.busy_until_gone,
                              args=(fresh_server.address, role, ready, writer))
        proc.start()
        writer.close()
        procs.append(proc)
        readers.append(reader)
        readies.append(ready)
    try:
        for ready in readies:
            assert ready.wait(30), "a client never became ready"
        time.sleep(0.5)  # busy for a while
        fresh_server.kill()
        t0 = time.monotonic()
        reports = []
        for reader in readers:
            assert reader.poll(15), "a client hangs after the server died"
            reports.append(reader.recv())
        for proc in procs:
            proc.join(10)
        print("all 8 clients saw the death within %.2f s" % (time.monotonic() - t0))
        for role, name, gone in reports:
            assert gone, "%s client got %s, not ManagerGone" % (role, name)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for reader in readers:
            reader.close()


# ---------------------------------------------------------------------------
# load: nothing lost

def _run_all(procs, timeout):
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    assert codes == [0] * len(procs), "client exit codes %r" % codes


@pytest.mark.timeout(600)
def test_sixteen_clients_increment_under_a_lock(fresh_server):
    mgr = fresh_server.manager()
    value = mgr.Value("i", 0)
    lock = mgr.Lock()
    procs = [H.FORK.Process(target=H.incrementer, args=(value, lock, INCREMENTS))
             for _ in range(16)]
    t0 = time.monotonic()
    _run_all(procs, 590)
    elapsed = time.monotonic() - t0
    print("16 x %d locked increments: %.1f s (%.0f increments/s)"
          % (INCREMENTS, elapsed, 16 * INCREMENTS / elapsed))
    assert value.value == 16 * INCREMENTS


@pytest.mark.timeout(120)
def test_concurrent_dict_writers_lose_nothing(fresh_server):
    mgr = fresh_server.manager()
    shared = mgr.dict()
    lock = mgr.Lock()
    n = 2000 if LONG else 150
    procs = [H.FORK.Process(target=H.dict_writer, args=(shared, lock, i, n)) for i in range(16)]
    _run_all(procs, 110)
    data = shared.copy()
    assert data.pop("total") == 16 * n
    assert data == {"w%d-%d" % (i, j): j for i in range(16) for j in range(n)}


@pytest.mark.timeout(120)
def test_blocking_calls_with_sixteen_clients(fresh_server):
    mgr = fresh_server.manager()
    n = 16
    barrier = mgr.Barrier(n)
    queue = mgr.Queue()
    results = mgr.Queue()
    cond = mgr.Condition()
    flag = mgr.Value("i", 0)
    event = mgr.Event()
    gate = mgr.list()
    procs = [H.FORK.Process(target=H.blocking_client,
                            args=(i, barrier, queue, results, cond, flag, event, gate))
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.2)
        for i in range(n):          # the clients wait in Queue.get for these
            queue.put("item-%d" % i)
        assert H.wait_until(lambda: len(gate) == n, 60), "clients never reached Condition.wait"
        with cond:
            flag.value = 1
            cond.notify_all()
        time.sleep(0.2)
        event.set()
        got = sorted(results.get(timeout=60) for _ in range(n))
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * n
        assert sorted(item for _, item in got) == sorted("item-%d" % i for i in range(n))
        assert sorted(index for index, _ in got) == list(range(n))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


# ---------------------------------------------------------------------------
# soak

@pytest.mark.timeout(SOAK_SECONDS + 120)
def test_soak_is_flat(fresh_server):
    """8 clients at full speed: after a warm-up, the server's RSS and
    thread count stay flat."""
    samples = H.soak(fresh_server.address, fresh_server.pid, SOAK_SECONDS, interval=0.5)
    assert len(samples) >= 10
    warm = samples[len(samples) // 3:]
    rss = [s[1] for s in warm]
    threads = [s[2] for s in warm]
    half = len(warm) // 2
    first, second = max(rss[:half]), max(rss[half:])
    print("soak %ds: rss %d..%d kB (first half max %d, second %d), threads %d..%d"
          % (SOAK_SECONDS, min(rss), max(rss), first, second, min(threads), max(threads)))
    assert second - first < 8 * 1024, "RSS grows: %d kB then %d kB" % (first, second)
    assert max(threads) - min(threads) <= 4, threads
    # 8 clients, a few connections each (anchor + one per thread), plus the server's own
    assert max(threads) <= 8 * 3 + 6, threads


# ---------------------------------------------------------------------------
# shutdown

SHUTDOWN_SCRIPT = textwrap.dedent(r"""
    import multiprocessing, os, sys, threading, time
    from fastmgr import ManagerGone
    from fastmgr.sync import SyncManager

    def blocked_get(q, ready):
        ready.set()
        try:
            q.get()
        except (ManagerGone, EOFError, ConnectionError, OSError):
            os._exit(0)
        os._exit(3)

    def busy(d, ready):
        ready.set()
        try:
            while True:
                d["k"] = d.get("k", 0) + 1
        except (ManagerGone, EOFError, ConnectionError, OSError):
            os._exit(0)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        mgr = SyncManager(ctx=ctx)
        mgr.start()
        server_pid = mgr._process.pid
        q = mgr.Queue()
        d = mgr.dict()
        outer = mgr.list([mgr.dict({"inner": mgr.list([1, 2])})])   # nested proxies
        inner = outer[0]
        ready = [ctx.Event() for _ in range(3)]
        procs = [ctx.Process(target=blocked_get, args=(q, ready[0])),
                 ctx.Process(target=busy, args=(d, ready[1])),
                 ctx.Process(target=busy, args=(d, ready[2]))]
        for p in procs:
            p.start()
        for e in ready:
            assert e.wait(30)
        time.sleep(0.3)
        t0 = time.monotonic()
        mgr.shutdown()
        took = time.monotonic() - t0
        for p in procs:
            p.join(15)
        codes = [p.exitcode for p in procs]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        try:
            os.kill(server_pid, 0)
            server_alive = True
        except ProcessLookupError:
            server_alive = False
        print("shutdown %.3f s; clients %r; server alive %r; active %r"
              % (took, codes, server_alive, multiprocessing.active_children()))
        assert took < 5, took
        assert codes == [0, 0, 0], codes
        assert not server_alive
        assert not multiprocessing.active_children()
""")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_shutdown_with_live_clients(tmp_path, method):
    """shutdown() with clients busy, one blocked in Queue.get() and nested
    proxies alive: bounded, no zombie, no resource-tracker warning."""
    script = tmp_path / "shutdown_scenario.py"
    script.write_text(SHUTDOWN_SCRIPT)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-W", "always", str(script), method],
                          capture_output=True, text=True, timeout=80, cwd=str(tmp_path),
                          env=child_env())
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "resource_tracker" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 60
    assert not H.zombie_children()


# ---------------------------------------------------------------------------
# fuzzing: the regression corpus, and a short run of each fuzzer

def _fuzz_targets():
    sys.path.insert(0, FUZZ_DIR)
    try:
        import _targets
    finally:
        sys.path.remove(FUZZ_DIR)
    return _targets


def _corpus():
    cases = []
    for path in sorted(glob.glob(os.path.join(FUZZ_DIR, "corpus", "*", "*"))):
        target = os.path.basename(os.path.dirname(path))
        name = os.path.basename(path)
        cases.append(pytest.param(target, path, id="%s/%s" % (target, name)))
    return cases


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target,path", _corpus())
def test_fuzz_corpus_replays(target, path, monkeypatch):
    """Each saved input through both implementations: they must agree."""
    targets = _fuzz_targets()
    if target == "handshake":
        monkeypatch.setattr(os, "urandom", lambda n: targets.FIXED_NONCE_BYTE * n)
    with open(path, "rb") as f:
        data = f.read()
    targets.TARGETS[target](data, targets.implementations("both"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["decoder", "handshake"])
def test_fuzzer_short_run(target, tmp_path):
    """Each fuzzer for a few seconds (FASTMGR_FUZZ_SECONDS), on both
    implementations at once; skipped without atheris."""
    pytest.importorskip("atheris")
    seconds = int(os.environ.get("FASTMGR_FUZZ_SECONDS", "5"))
    (tmp_path / "new").mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(FUZZ_DIR, "fuzz_%s.py" % target),
         "-max_total_time=%d" % seconds, "-artifact_prefix=%s/" % tmp_path, str(tmp_path / "new"),
         os.path.join(FUZZ_DIR, "corpus", target)],
        capture_output=True, text=True, timeout=seconds + 60, cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "Done " in proc.stderr, tail
