"""Helpers for tests/test_hardening.py.

``Served`` runs ``fastmgr serve helpers.hardening:HardManager`` as its own
process, its log in a file the tests read, so that a test can limit its
resources from outside (prlimit, a pids cgroup), read its memory and CPU
time from /proc, and kill it.  ``SocketFlood`` and ``RingFlood`` send
requests and never read a reply.  Another local user's attacks are in
``helpers.spin_attack``.
"""
import ast
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from fastmgr import SyncManager
from helpers.reliability import proc_status, wait_until  # noqa: F401 (used as H.*)

AUTHKEY = b"hardening-key"
#: the tests directory: ``fastmgr serve`` runs there and imports SPEC
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "helpers.hardening:HardManager"


class Echo:
    """A shared object whose methods take and return plain values."""

    def echo(self, value):
        return value

    def size(self, value):
        return len(value)


class HardManager(SyncManager):
    pass


HardManager.register("Echo", Echo)


def child_env(**extra):
    """The environment of a child Python: it imports fastmgr from where we
    do, and helpers.hardening from the tests directory."""
    import fastmgr

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastmgr.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# the server

class Served:
    """``fastmgr serve`` in its own process; its log goes to a file."""

    def __init__(self, address="127.0.0.1:0", serializer="pickle", env=None, args=()):
        self.log = tempfile.NamedTemporaryFile(prefix="fastmgr-served-", suffix=".log")
        command = [sys.executable, "-m", "fastmgr", "serve", SPEC, "--address", address,
                   "--serializer", serializer, "--log-level", "DEBUG"] + list(args)
        self.proc = subprocess.Popen(
            command, cwd=TESTS, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            env=child_env(FASTMGR_AUTHKEY=AUTHKEY.decode(), **(env or {})))
        self.pid = self.proc.pid
        self.address = None
        found = wait_until(lambda: self._serving() or self.proc.poll() is not None, 30)
        if not found or self.address is None:
            self.stop()
            raise RuntimeError("the server did not start:\n%s" % self.text())

    def _serving(self):
        match = re.search(r"serving \S+ at (.*?)( \(TLS\))?$", self.text(), re.M)
        if match:
            self.address = ast.literal_eval(match.group(1))
        return match is not None

    def text(self):
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def tail(self, n=3000):
        """The end of the log, for assertion messages."""
        return self.text()[-n:]

    def status(self):
        return proc_status(self.pid)

    def manager(self, **kwds):
        mgr = HardManager(address=self.address, authkey=AUTHKEY, **kwds)
        mgr.connect()
        return mgr

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


def roundtrip(served, timeout=10, fresh=True):
    """A legitimate client is served: an object, a call.  fresh: on new
    connections (this process's earlier ones to served are dropped first,
    and the objects only they held go)."""
    mgr = served.manager(timeout=timeout, connect_timeout=timeout)
    if fresh:
        mgr._peer().reset()
    d = mgr.dict()
    d["k"] = "v"
    assert d["k"] == "v"
    del d


def silent_connections(address, count):
    """count TCP connections that never say a word."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(address)
        socks.append(s)
    return socks


# ---------------------------------------------------------------------------
# clients that send and never read

RING_TAIL = 64                  # the layout of a ring (_protocol.py)
RING_DETOUR_AT = RING_TAIL + 8
RING_DATA = 256
RING_CAP = 256 << 10
DETOUR_MARK = b"\x5a"


def echo_ident(served):
    """The ident of a new Echo object on served, held by this process."""
    mgr = served.manager()
    proxy = mgr.Echo()
    return mgr, proxy, proxy._id


def echo_frame(ident, size):
    """One framed request: echo(bytes(size)) on ident."""
    from fastmgr import _protocol as P
    from fastmgr._backend import wire
    body = wire.Codec().encode_request(P.REQ_CALL, ident, "echo", (bytes(size),), None)
    return wire.frame(body)


class SocketFlood:
    """An authenticated client (socket only) that sends requests and never
    reads a reply; a send that makes no progress for `stall` seconds ends
    the flood."""

    def __init__(self, address, stall=3.0):
        from fastmgr.connection import Client
        self.conn = Client(address, AUTHKEY, timeout=10)
        self.raw = socket.socket(fileno=os.dup(self.conn.fileno()))
        self.raw.settimeout(stall)
        self.sent = 0

    def run(self, frame, count):
        for _ in range(count):
            try:
                self.raw.sendall(frame)
            except (socket.timeout, TimeoutError):
                break
            self.sent += 1
        return self.sent

    def close(self):
        self.raw.close()
        self.conn.close()


class StdlibFlood(SocketFlood):
    """A client of plain multiprocessing.managers, past accept_connection,
    whose calls are sent and never read."""

    def __init__(self, address, stall=3.0):
        from multiprocessing import connection
        self.conn = connection.Client(address, authkey=AUTHKEY)
        self.conn.send((None, "accept_connection", ("flood",), {}))
        assert self.conn.recv() == ("#RETURN", None)
        self.raw = socket.socket(fileno=os.dup(self.conn.fileno()))
        self.raw.settimeout(stall)
        self.sent = 0

    @staticmethod
    def frame(ident, size):
        """One framed call, echo(bytes(size)) on ident, in the stdlib's format."""
        import pickle
        import struct
        body = pickle.dumps(("%x" % ident, "echo", (bytes(size),), {}))
        return struct.pack("!i", len(body)) + body


class RingFlood:
    """An authenticated client of a unix socket that offers rings, then
    writes requests straight into its ring (or, for large ones, as detours)
    and never reads its replies."""

    def __init__(self, address, stall=3.0):
        import fcntl
        import mmap
        import struct
        from fastmgr import _protocol as P
        from fastmgr._backend import wire
        from fastmgr._handshake import answer_challenge
        self.stall = stall
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(address)
        self.conn = wire.Connection(self.sock, timeout=10)
        answer_challenge(self.conn, AUTHKEY, os.urandom(16) + P.RING_HELLO)
        size = wire.Connection.ring_size()
        fd = os.memfd_create("fastmgr-ring", os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            offer = struct.pack("!i", len(P.RING_OFFER)) + P.RING_OFFER
            socket.send_fds(self.sock, [offer], [fd])
            if self.conn.recv_bytes(64) != P.RING_ACCEPT:
                raise RuntimeError("the server declined the ring")
            self.shared = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.sent = 0

    def _get(self, offset, fmt="<Q"):
        import struct
        return struct.unpack_from(fmt, self.shared, offset)[0]

    def _put(self, offset, value, fmt="<Q"):
        import struct
        struct.pack_into(fmt, self.shared, offset, value)

    def _wake(self):
        try:
            self.sock.send(b"\0", socket.MSG_DONTWAIT)
        except OSError:
            pass

    def _until(self, predicate):
        deadline = time.monotonic() + self.stall
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)
        return True

    def _write(self, data):
        """Put data into the ring as room comes; False if it stops coming."""
        while data:
            room = lambda: RING_CAP - (self._get(RING_TAIL) - self._get(0))  # noqa: E731
            if not self._until(lambda: room() > 0):
                return False
            tail = self._get(RING_TAIL)
            n = min(room(), len(data))
            at = tail % RING_CAP
            first = min(n, RING_CAP - at)
            self.shared[RING_DATA + at:RING_DATA + at + first] = data[:first]
            self.shared[RING_DATA:RING_DATA + n - first] = data[first:n]
            self._put(RING_TAIL, tail + n)
            self._wake()
            data = data[n:]
        return True

    def _detour(self, frame):
        """Announce frame as a detour and send it on the socket."""
        if not self._until(lambda: self._get(RING_DETOUR_AT + 16, "<I") == 0):
            return False
        self._put(RING_DETOUR_AT, self._get(RING_TAIL))
        self._put(RING_DETOUR_AT + 8, len(frame))
        self._put(RING_DETOUR_AT + 16, 1, "<I")
        self.sock.settimeout(self.stall)
        try:
            self.sock.sendall(DETOUR_MARK + frame)
        except (socket.timeout, TimeoutError):
            return False
        return True

    def run(self, frame, count):
        send = self._detour if len(frame) >= (256 << 10) else self._write
        for _ in range(count):
            if not send(frame):
                break
            self.sent += 1
        return self.sent

    def close(self):
        self.shared.close()
        self.conn.close()
