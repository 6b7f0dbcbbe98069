"""A hub of either wire over socketpairs, with a table of shared objects
that record what happens server-side: what tests/test_hub*.py and the ring
tests serve their connections with.  Every wait is bounded (``WAIT``);
``Rig.close()`` joins every thread the hub started."""
import functools
import socket
import threading
import time

import pytest

from fastmgr import _protocol as P

WAIT = 10  # seconds: the bound on any single wait



class Box:
    """The shared object of the unit tests; records what happens server-side."""

    def __init__(self):
        self.event = threading.Event()
        self.waiting = threading.Event()
        self.log = []
        self.stamps = []
        self.spinning = threading.Event()

    def echo(self, value):
        return value

    def record(self, item):
        self.log.append(item)

    def fail(self, key):
        raise KeyError(key)

    def thread(self):
        return threading.get_ident()

    def blob(self, size):
        return bytes(size)

    def wait(self, timeout):
        """Blocks until release() is called (from another connection)."""
        self.waiting.set()
        return self.event.wait(timeout)

    def release(self):
        self.event.set()

    def spin(self, at_least, at_most):
        """Computes (never sleeps) for at_least seconds, and on until
        stamp() was called, for at_most seconds in all."""
        start = time.monotonic()
        self.spinning.set()
        n = 0
        while True:
            n += 1
            now = time.monotonic()
            if now - start >= at_most or (now - start >= at_least and self.stamps):
                break
        return start, time.monotonic(), n

    def stamp(self):
        self.stamps.append(time.monotonic())
        return len(self.stamps)

    def make(self, n):
        return list(range(n))


class Control:
    exposed = frozenset(["hello"])

    def __init__(self, name):
        self.name = name

    def hello(self):
        return "hello " + self.name


BOX, BOUND, RLOCK, OTHER = 1, 2, 3, 4
BOX_METHODS = frozenset(["echo", "record", "fail", "thread", "blob", "wait", "release",
                         "spin", "stamp", "make"])


def fallback(ident, obj, method, args, kwds):
    if method == "#GETVALUE":
        return ("value of", ident)
    raise AttributeError("no method %r" % method)


class Rig:
    """A Hub of one wire, its table, and the connections given to it; the
    threads the hub starts are recorded so that they can be joined."""

    def __init__(self, wire):
        self.wire = wire
        self.box = Box()
        self.bound = Box()      # the same class, thread-bound
        self.rlock = threading.RLock()
        self.table = {
            BOX: wire.Entry(self.box, BOX_METHODS, {"make": "List"}, False),
            BOUND: wire.Entry(self.bound, BOX_METHODS, None, True),
            RLOCK: wire.Entry(self.rlock, frozenset(["acquire", "release", "_is_owned"]), None,
                              True),
            OTHER: wire.Entry(Box(), BOX_METHODS, None, False),
        }
        self.threads = []
        self.lock = threading.Lock()
        self.ends = {}          # connection number -> [(exc, server conn closed at the time)]
        self.servers = []
        self.clients = []
        self.proxies = []
        self.hub = wire.Hub(self.table, fallback, self.start_thread)

    def start_thread(self, fn, *args):
        thread = threading.Thread(target=fn, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def make_proxy(self, typeid, obj):
        self.proxies.append((typeid, obj))
        return (typeid, 100 + len(self.proxies), ("append",))

    def _finished(self, number, exc):
        with self.lock:
            self.ends.setdefault(number, []).append((exc, self.servers[number].closed))

    def connect(self, max_message=P.DEFAULT_MAX_MESSAGE, pair=None, ring=None):
        """A client Connection to a new connection of the hub (over pair,
        (server socket, client socket), if given; with ring, a memfd of
        Connection.ring_size() bytes, through shared-memory rings)."""
        ours, theirs = pair or socket.socketpair()
        server = self.wire.Connection(ours, max_message=max_message)
        client = self.wire.Connection(theirs, timeout=WAIT)
        if ring is not None:
            server.attach_ring(ring, True)
            client.attach_ring(ring, False)
        number = len(self.servers)
        self.servers.append(server)
        self.clients.append(client)
        control = Control(str(number))
        self.hub.add(server, self.wire.Entry(control, control.exposed), self.make_proxy,
                     functools.partial(self._finished, number))
        return client

    def wait_ended(self, numbers, timeout=WAIT):
        """The (exc, closed) of each connection's end, once all ended."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if all(n in self.ends for n in numbers):
                    return [self.ends[n][0] for n in numbers]
            if time.monotonic() > deadline:
                missing = [n for n in numbers if n not in self.ends]
                pytest.fail("finished() not called for connections %s" % missing)
            time.sleep(0.005)

    def close(self):
        """Close the clients, wait until every connection ended, close the
        hub and join its threads; finished() came exactly once each."""
        for entry in self.table.values():
            if isinstance(entry.obj, Box):
                entry.obj.event.set()  # a call still waiting returns
        for client in self.clients:
            client.close()
        try:
            self.wait_ended(range(len(self.servers)))
        finally:
            self.hub.close()
            deadline = time.monotonic() + WAIT
            for thread in list(self.threads):
                thread.join(max(0.0, deadline - time.monotonic()))
            for server in self.servers:
                server.close()
        alive = [t for t in self.threads if t.is_alive()]
        assert not alive, "hub threads still running after close(): %r" % alive
        with self.lock:
            assert all(len(calls) == 1 for calls in self.ends.values()), self.ends
            assert all(closed for calls in self.ends.values() for _exc, closed in calls), \
                "finished() called before the hub closed the connection"

    def stat(self, name):
        return self.hub.stats()[name]

    def number(self, client):
        """The number of client's connection (for wait_ended)."""
        return self.clients.index(client)


def wait_for(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not met within %ss" % timeout)
        time.sleep(0.002)
