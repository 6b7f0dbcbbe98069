"""Module-level helpers for tests/test_hub.py: what its client processes
run, and managers with registered classes (one that blocks, one that
holds a lock across calls).

They live here so that they pickle by reference under the ``spawn`` start
method (the children import this module as ``helpers.hub``).  Each child
reports on a pipe: ("ok", value) at the end, or ("error", traceback text);
every wait in a child is bounded by ``WAIT``.
"""
import multiprocessing.managers
import threading

import fastmgr
from helpers.programs import _report_errors

WAIT = 10  # seconds: the bound on any single wait in a child


class Gate:
    """A shared object whose wait() blocks until open() is called, from
    another client.  Not thread-bound: fastmgr serves it on its loop."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiting = 0

    def wait(self, timeout):
        with self._lock:
            self._waiting += 1
        try:
            return self._event.wait(timeout)
        finally:
            with self._lock:
                self._waiting -= 1

    def waiting(self):
        return self._waiting

    def open(self):
        self._event.set()

    def echo(self, value):
        return value


class Keeper:
    """An RLock held from one call to the next, so thread-bound by choice
    (the stdlib serves every connection on a thread of its own anyway)."""

    _fastmgr_thread_bound_ = True

    def __init__(self):
        self._lock = threading.RLock()

    def acquire(self, blocking=True, timeout=-1):
        return self._lock.acquire(blocking, timeout)

    def release(self):
        self._lock.release()


class StdlibGateManager(multiprocessing.managers.BaseManager):
    pass


class FastGateManager(fastmgr.BaseManager):
    pass


for _manager in (StdlibGateManager, FastGateManager):
    _manager.register("Gate", Gate)
    _manager.register("Keeper", Keeper)


def gate_manager_class(module):
    """The manager class with Gate registered, for a managers module."""
    return FastGateManager if module is fastmgr else StdlibGateManager


def _expect(conn, word):
    if not conn.poll(WAIT):
        raise TimeoutError("no %r from the parent within %ss" % (word, WAIT))
    got = conn.recv()
    if got != word:
        raise AssertionError("expected %r from the parent, got %r" % (word, got))


# ---------------------------------------------------------------------------
# what the children run

def rlock_owner(lock, conn):
    """Hold a re-entrant lock across calls: acquire, let the parent try,
    re-acquire, release twice."""
    def run():
        steps = [lock.acquire(timeout=WAIT)]
        conn.send("acquired")
        _expect(conn, "reacquire")
        steps.append(lock.acquire(timeout=WAIT))
        lock.release()
        conn.send("released once")
        _expect(conn, "release")
        lock.release()
        return steps
    _report_errors(conn, run)


def condition_waiter(cond, conn):
    """Wait on cond; the parent notifies once this process waits."""
    def run():
        with cond:
            # the parent can take the lock only once wait() released it
            conn.send("waiting")
            return cond.wait(WAIT)
    _report_errors(conn, run)


def gate_waiter(gate, conn):
    def run():
        conn.send("waiting")
        return gate.wait(WAIT)
    _report_errors(conn, run)


def queue_getter(queue, conn):
    def run():
        conn.send("getting")
        return queue.get(timeout=WAIT)
    _report_errors(conn, run)


# ---------------------------------------------------------------------------
# the watchdog, paused at a chosen moment (run in a process of its own)

def watchdog_paused_in_check():
    """Let a call on the compiled hub's loop block until the watchdog checks
    the loop thread, then return while the watchdog is paused in that check
    (an audit hook on its open() of /proc/self/task/<tid>/stat, which lets
    the GIL go).  Prints what followed: whether the hook fired, the hub's
    replacements, and how many threads then serve one other connection
    (which never blocked)."""
    import json
    import socket
    import sys
    import time

    from fastmgr import _protocol as P
    from fastmgr import _wire as wire

    go, armed, fired = threading.Event(), threading.Event(), threading.Event()

    def hook(event, args):
        if (event == "open" and armed.is_set() and isinstance(args[0], str)
                and args[0].startswith("/proc/self/task/")):
            armed.clear()
            fired.set()
            go.set()          # the call returns now,
            time.sleep(0.05)  # and the loop finishes it and waits for more

    sys.addaudithook(hook)

    class Obj:
        def block(self):
            armed.set()
            return go.wait(WAIT)

        def thread(self):
            return threading.get_ident()

    def start_thread(fn, *args):
        threading.Thread(target=fn, args=args, daemon=True).start()

    hub = wire.Hub({1: wire.Entry(Obj(), frozenset(["block", "thread"]))}, None, start_thread)
    clients = []
    for _ in range(2):
        ours, theirs = socket.socketpair()
        hub.add(wire.Connection(ours), wire.Entry(None, frozenset()), None, lambda exc: None)
        clients.append(wire.Connection(theirs, timeout=WAIT))
    blocked, other = clients
    assert blocked.call(1, "block") == (P.RESP_RETURN, True)
    time.sleep(0.1)
    threads = {other.call(1, "thread")[1] for _ in range(200)}
    print(json.dumps({"fired": fired.is_set(), "replacements": hub.stats()["replacements"],
                      "threads": len(threads)}))
