"""Helpers for tests/test_hardening.py.

``Served`` runs ``fastmgr serve _hardening_helpers:HardManager`` as its own
process, its log in a file the tests read, so that a test can limit its
resources from outside (prlimit, a pids cgroup), read its memory and CPU
time from /proc, and kill it.  ``in_namespace`` runs a function in a child
with its own mount namespace, a private tmpfs on /dev/shm and /tmp, and
optionally as another user: the machine's real files are never touched.
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


def wait_until(predicate, timeout, interval=0.05):
    """Poll predicate until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------
# /proc

def proc_status(pid):
    """{'rss_kb', 'threads', 'fds'} of a live process."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                out["rss_kb"] = int(value.split()[0])
            elif key == "Threads":
                out["threads"] = int(value.split()[0])
    out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    return out


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


def roundtrip(served, timeout=10):
    """A legitimate client is served: a new manager link, an object, a call."""
    mgr = served.manager(timeout=timeout, connect_timeout=timeout)
    d = mgr.dict()
    d["k"] = "v"
    assert d["k"] == "v"
    del d
    mgr._peer().reset()  # close this test process's connections to it


# ---------------------------------------------------------------------------
# another user, in a namespace of its own

NOBODY = 65534


def in_namespace(argv, uid=None, timeout=60, env=None):
    """Run argv (a Python program's arguments) in a new mount namespace with
    private tmpfs on /dev/shm and /tmp, as uid if given; returns the
    CompletedProcess.  Root only."""
    script = ("mount -t tmpfs -o mode=1777 none /dev/shm && "
              "mount -t tmpfs -o mode=1777 none /tmp && exec \"$@\"")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                           "sh"] + list(argv), env=child_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def as_user(uid, fn):
    """Call fn() in a forked child running as uid; returns its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def silent_connections(address, count):
    """count TCP connections that never say a word."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(address)
        socks.append(s)
    return socks
