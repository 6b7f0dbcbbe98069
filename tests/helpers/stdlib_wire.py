"""Module-level helpers for tests/test_stdlib_wire.py.

The fastmgr side: the manager class its servers serve (``fastmgr serve
helpers.stdlib_wire:FastManager``, or this module's ``serve`` mode through
``get_server()``), and small programs run as ``python -m helpers.stdlib_wire
MODE ...`` from the tests directory.  The stdlib side: the CPython 3.10-3.13
found on this machine, each in a venv of its own without fastmgr, running
``helpers/stdlib_peer.py`` isolated (``-I``).

``serve ADDRESS KEYHEX [SERIALIZER]``
    a fastmgr server through get_server(); prints {"address": ...} once it
    listens, logs everything to stderr;
``count ADDRESS KEYHEX N``
    a fastmgr client: N times, with the server's lock, add one to its counter.
"""
import glob
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import fastmgr
from fastmgr import AcquirerProxy, ValueProxy

# the custom type the clients share through AutoProxy: the stdlib peer's own
from helpers.stdlib_peer import Counter

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(TESTS, "helpers", "stdlib_peer.py")
#: run the programs of this module as [*PROGRAM, MODE, ...] from TESTS
PROGRAM = [sys.executable, "-m", "helpers.stdlib_wire"]
SPEC = "helpers.stdlib_wire:FastManager"
KEY = b"stdlib wire tests"


_LOCK = threading.Lock()
_COUNTER = fastmgr.Value("i", 0)


class FastManager(fastmgr.SyncManager):
    """SyncManager's types, a custom type, one lock and counter for all."""


FastManager.register("Counter", Counter)
FastManager.register("get_lock", callable=lambda: _LOCK, proxytype=AcquirerProxy)
FastManager.register("get_counter", callable=lambda: _COUNTER, proxytype=ValueProxy)


class Client(fastmgr.BaseManager):
    """A remote client's view of either server."""


for _typeid in ("dict", "list", "Queue", "Lock", "Event", "Namespace", "Value"):
    Client.register(_typeid, proxytype=fastmgr.SyncManager._registry[_typeid][-1])
Client.register("Counter")
Client.register("get_lock", proxytype=AcquirerProxy)
Client.register("get_counter", proxytype=ValueProxy)


# ---------------------------------------------------------------------------
# the Pythons of the stdlib side

def stdlib_pythons():
    """{"3.x": interpreter} for each CPython 3.10-3.13 found: pyenv's, and
    the one running the tests (its base, not a venv's)."""
    found = {}
    candidates = sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python"))
    candidates.append(getattr(sys, "_base_executable", sys.executable))
    for python in candidates:
        match = re.search(r"3\.(\d+)", os.path.realpath(python) + " " + python)
        try:
            out = subprocess.run([python, "-I", "-c", "import sys; print(*sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode != 0 or not match:
            continue
        major, minor = map(int, out.stdout.split())
        if major == 3 and 10 <= minor <= 13:
            found.setdefault("%d.%d" % (major, minor), python)
    return dict(sorted(found.items()))


def make_venv(python, where):
    """A venv of python without pip and without fastmgr; its interpreter."""
    subprocess.run([python, "-m", "venv", "--without-pip", where], check=True, timeout=120,
                   capture_output=True)
    return os.path.join(where, "bin", "python")


def address_text(address):
    if isinstance(address, (tuple, list)):
        return "%s:%d" % (address[0], address[1])
    return address


class Child:
    """A child process whose stdout is JSON lines, read with deadlines, and
    whose stderr goes to a file (read whole, or from a mark)."""

    def __init__(self, cmd, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, cwd=TESTS)
        self._buffer = b""

    def next(self, timeout=30.0):
        """The next JSON line, within timeout seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line from %r within %s s; its log:\n%s"
                                     % (self.proc.args, timeout, self.log()))
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError("%r ended (exit %r) without a line; its log:\n%s"
                                         % (self.proc.args, self.proc.wait(10), self.log()))
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def lines_until(self, key, timeout=30.0):
        """Every line up to (and with) the first that has key."""
        lines = []
        while True:
            lines.append(self.next(timeout))
            if key in lines[-1]:
                return lines

    def log(self, since=0):
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_size(self):
        return os.path.getsize(self.log_path)

    def wait_log(self, pattern, since=0, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log(since)):
            if time.monotonic() > deadline:
                raise AssertionError("no %r in the log within %s s:\n%s"
                                     % (pattern, timeout, self.log(since)))
            time.sleep(0.05)

    def wait(self, timeout=30.0):
        return self.proc.wait(timeout)

    def stop(self, signum=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


# ---------------------------------------------------------------------------
# programs

def _emit(**kwds):
    sys.stdout.write(json.dumps(kwds) + "\n")
    sys.stdout.flush()


def _parse(text):
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else text


def serve(address, key, serializer="pickle"):
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = FastManager(address=_parse(address), authkey=key,
                         serializer=serializer).get_server()
    _emit(address=server.address)
    server.serve_forever()


def count(address, key, n):
    manager = Client(address=_parse(address), authkey=key)
    manager.connect()
    lock, counter = manager.get_lock(), manager.get_counter()
    for _ in range(n):
        with lock:
            counter.set(counter.get() + 1)
    _emit(done=True)


if __name__ == "__main__":
    mode, address, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    if mode == "serve":
        serve(address, key, *sys.argv[4:5])
    elif mode == "count":
        count(address, key, int(sys.argv[4]))
    else:
        sys.exit("unknown mode %r" % mode)
