"""Helpers for tests/test_reliability.py and tools/soak.py.

A manager server runs as its own process (``python -m helpers.reliability
serve`` from the tests directory), so that the tests can read its memory and threads from /proc,
kill it, and give it a short pre-authentication timeout through
``FASTMGR_HANDSHAKE_TIMEOUT``.  What client processes run lives here too.
Nothing here needs a package beyond the standard library and fastmgr.
"""
import multiprocessing
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from fastmgr import ManagerGone
from fastmgr.sync import SyncManager

AUTHKEY = b"reliability-key"
#: the tests directory, where ``helpers`` is importable
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORK = multiprocessing.get_context("fork")


# ---------------------------------------------------------------------------
# /proc

def proc_status(pid):
    """{'rss_kb': ..., 'threads': ..., 'fds': ...} of a live process, from /proc."""
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


def zombie_children(pid=None):
    """Pids of the zombie children of pid (default: this process)."""
    pid = os.getpid() if pid is None else pid
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(entry))
    return zombies


def wait_until(predicate, timeout, interval=0.05):
    """Poll predicate until it is true (returns True) or timeout (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------
# the server process

class ServerProcess:
    """A SyncManager server in a child process, on TCP loopback."""

    def __init__(self, handshake_timeout=None, extra_env=None):
        from helpers.common import child_env
        env = child_env()
        if handshake_timeout is not None:
            env["FASTMGR_HANDSHAKE_TIMEOUT"] = str(handshake_timeout)
        env.update(extra_env or {})
        # the server logs a warning per refused peer: its stderr goes to a
        # file, as a pipe nobody reads would fill up and block it
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.reliability", "serve"],
            cwd=TESTS, stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            self.stop()
            raise RuntimeError("the server did not start: %s" % self.stderr())
        host, port = line.split()
        self.address = (host, int(port))
        self.pid = self.proc.pid

    def status(self):
        return proc_status(self.pid)

    def stderr(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def manager(self):
        mgr = SyncManager(address=self.address, authkey=AUTHKEY)
        mgr.connect()
        return mgr

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def serve_main():
    manager = SyncManager(address=("127.0.0.1", 0), authkey=AUTHKEY)
    server = manager.get_server()
    host, port = server.address[:2]
    sys.stdout.write("%s %d\n" % (host, port))
    sys.stdout.flush()
    server.serve_forever()


# ---------------------------------------------------------------------------
# raw sockets (a hostile peer)

def raw_connect(address, timeout=10):
    sock = socket.create_connection(address, timeout=timeout)
    return sock


def read_frame(sock):
    """One frame's body, or None when the peer closed."""
    head = _recv_exactly(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack("!i", head)
    return _recv_exactly(sock, n)


def _recv_exactly(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def closed_by_peer(sock, timeout):
    """Whether the peer closes sock (recv gives EOF or a reset) within timeout,
    reading and discarding whatever it sends first."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (socket.timeout, TimeoutError):
        return False
    return False


# ---------------------------------------------------------------------------
# client processes

def report_errors(fn):
    """Run fn in a child; exit code 0 on success, 1 with the traceback on stderr."""
    import traceback
    try:
        fn()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def holder(address, ready, kinds=("dict", "list", "Value", "Lock", "Queue")):
    """Connect, create one object of each kind, tell ready, then sleep
    (until SIGKILLed)."""
    mgr = SyncManager(address=address, authkey=AUTHKEY)
    mgr.connect()
    held = []
    for kind in kinds:
        if kind == "Value":
            held.append(mgr.Value("i", 0))
        else:
            held.append(getattr(mgr, kind)())
    held[0]["nested"] = held[1]  # a proxy kept inside the server too
    ready.send(len(held))
    ready.close()
    time.sleep(3600)


def incrementer(value, lock, n):
    def run():
        for _ in range(n):
            with lock:
                value.value += 1
    report_errors(run)


def dict_writer(shared, lock, index, n):
    def run():
        for j in range(n):
            with lock:
                shared["total"] = shared.get("total", 0) + 1
            shared["w%d-%d" % (index, j)] = j  # a key of its own: no lock needed
    report_errors(run)


def blocking_client(index, barrier, queue, results, cond, flag, event, gate):
    """Blocks in Barrier.wait, Queue.get, Condition.wait and Event.wait, in turn."""
    def run():
        barrier.wait(timeout=60)
        item = queue.get(timeout=60)
        with cond:
            gate.append(index)
            if not cond.wait_for(lambda: flag.value == 1, timeout=60):
                raise AssertionError("condition never notified")
        if not event.wait(60):
            raise AssertionError("event never set")
        results.put((index, item))
    report_errors(run)


def busy_until_gone(address, role, ready, report):
    """Work until the server dies; report (role, exception type name,
    isinstance ManagerGone) through report."""
    try:
        mgr = SyncManager(address=address, authkey=AUTHKEY)
        mgr.connect()
        d = mgr.dict()
        q = mgr.Queue()
        ev = mgr.Event()
        ready.set()
        if role == "queue":
            q.get()
        elif role == "event":
            ev.wait()
        else:
            i = 0
            while True:
                d[i % 100] = i
                d.get(i % 7)
                i += 1
        report.send((role, None, False))
    except BaseException as exc:
        report.send((role, type(exc).__name__, isinstance(exc, ManagerGone)))
    report.close()
    os._exit(0)


def soak_client(address, stop_at, index):
    """Mixed work at full speed until time.monotonic() >= stop_at: calls,
    proxies made and dropped, nested proxies, queue traffic."""
    def run():
        mgr = SyncManager(address=address, authkey=AUTHKEY)
        mgr.connect()
        rng = random.Random(index)
        d = mgr.dict()
        lst = mgr.list()
        q = mgr.Queue()
        lock = mgr.Lock()
        value = mgr.Value("i", 0)
        i = 0
        while time.monotonic() < stop_at:
            op = i % 8
            if op == 0:
                d[rng.randrange(100)] = "x" * rng.randrange(200)
            elif op == 1:
                lst.append(i)
                if len(lst) > 100:
                    del lst[:50]
            elif op == 2:
                q.put(i)
                q.get()
            elif op == 3:
                with lock:
                    value.value += 1
            elif op == 4:
                tmp = mgr.dict({"k": i})   # made and dropped
                tmp["k"] = i + 1
                del tmp
            elif op == 5:
                inner = mgr.list([i])
                d["nested"] = inner        # a proxy that lives in the server
                del inner
            elif op == 6:
                d.get(rng.randrange(100))
            else:
                value.get()
            i += 1
    report_errors(run)


def soak(address, pid, seconds, clients=8, interval=1.0, on_sample=None):
    """Run clients soak_client processes against the server (pid) for
    seconds; sample its RSS and threads every interval.  Returns the
    samples [(t, rss_kb, threads, fds)]."""
    stop_at = time.monotonic() + seconds
    procs = [FORK.Process(target=soak_client, args=(address, stop_at, i)) for i in range(clients)]
    start = time.monotonic()
    samples = []
    for p in procs:
        p.start()
    try:
        next_sample = start
        while time.monotonic() < stop_at:
            st = proc_status(pid)
            sample = (round(time.monotonic() - start, 2), st["rss_kb"], st["threads"], st["fds"])
            samples.append(sample)
            if on_sample is not None:
                on_sample(sample)
            next_sample += interval
            time.sleep(max(0.0, next_sample - time.monotonic()))
        for p in procs:
            p.join(30)
        codes = [p.exitcode for p in procs]
        if any(c != 0 for c in codes):
            raise AssertionError("soak clients failed: exit codes %r" % codes)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    return samples


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve_main()
    else:
        raise SystemExit("usage: python -m helpers.reliability serve")
