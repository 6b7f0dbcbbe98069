"""Module-level helpers for tests/test_programs.py.

Everything a child process runs or receives lives here, so that it pickles
by reference under the ``spawn`` start method (children import this module
as ``helpers.programs``: the tests directory is on ``sys.path``).  The programs are
written as a user of ``multiprocessing.managers`` would write them, with
only the import changed to ``fastmgr``.
"""
import multiprocessing
import os
import queue as queue_module
import traceback

from fastmgr import BaseManager

AUTHKEY = b"abracadabra"


# ---------------------------------------------------------------------------
# 1. A custom manager

class CustomError(Exception):
    """An exception type the client knows only through this module."""

    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class MathsClass:
    def __init__(self, label="maths"):
        self.label = label
        self.calls = 0

    def add(self, x, y):
        self.calls += 1
        return x + y

    def mul(self, x, y):
        self.calls += 1
        return x * y

    def fail_key(self, key):
        raise KeyError(key)

    def fail_value(self, text, number):
        raise ValueError(text, number)

    def fail_custom(self, code):
        raise CustomError(code, "custom failure %d" % code)

    def _secret(self):
        return "not exposed"

    def __repr__(self):
        return "MathsClass(label=%r, calls=%d)" % (self.label, self.calls)


class Child:
    def __init__(self, name):
        self.name = name
        self.value = 0

    def hello(self):
        return "hello from %s" % self.name

    def set_value(self, value):
        self.value = value

    def get_value(self):
        return self.value


class Parent:
    def __init__(self):
        self._children = {}

    def child(self, name):
        """Returns the shared child object itself (sent back as a proxy)."""
        if name not in self._children:
            self._children[name] = Child(name)
        return self._children[name]

    def child_value(self, name):
        return self._children[name].value

    def count(self):
        return len(self._children)


class Counter:
    def __init__(self, start=0):
        self._value = start

    def increment(self, by=1):
        self._value += by
        return self._value

    def value(self):
        return self._value


class MyManager(BaseManager):
    pass


MyManager.register("Maths", MathsClass)
MyManager.register("Parent", Parent, method_to_typeid={"child": "Child"})
MyManager.register("Child", Child, create_method=False)
MyManager.register("Counter", Counter)


def _report_errors(out, func, *args):
    """Run func; send ('ok', result) or ('error', traceback text) on out."""
    try:
        result = func(*args)
    except BaseException:
        out.send(("error", traceback.format_exc()))
        raise
    else:
        out.send(("ok", result))
    finally:
        out.close()


# ---------------------------------------------------------------------------
# 2. A remote manager, and 3. local processes with a remote manager

class QueueManager(BaseManager):
    pass


def _bind(address, authkey, status):
    """The server for address, or None; tells the parent where (or why not)."""
    try:
        server = QueueManager(address=address, authkey=authkey).get_server()
    except OSError as exc:
        status.send(("oserror", exc.errno, str(exc)))
        status.close()
        return None
    except BaseException:
        status.send(("error", traceback.format_exc()))
        status.close()
        raise
    status.send(("ok", server.address))
    return server


def queue_server(address, authkey, status):
    """The remote manager of the stdlib documentation: a queue.Queue shared
    through get_queue.  The lambda is made here, in the server process."""
    queue = queue_module.Queue()
    QueueManager.register("get_queue", callable=lambda: queue)
    server = _bind(address, authkey, status)
    if server is not None:
        status.close()
        server.serve_forever()


def _connect(address, authkey):
    QueueManager.register("get_queue")
    m = QueueManager(address=address, authkey=authkey)
    m.connect()
    return m


def queue_putter(address, authkey, items, out):
    def put():
        m = _connect(address, authkey)
        q = m.get_queue()
        for item in items:
            q.put(item)
        return len(items)
    _report_errors(out, put)


def queue_getter(address, authkey, count, out, timeout=20):
    def get():
        m = _connect(address, authkey)
        q = m.get_queue()
        return [q.get(timeout=timeout) for _ in range(count)]
    _report_errors(out, get)


class Producer(multiprocessing.Process):
    """A Process subclass that overrides run(): a header naming its start
    method and parent, then ``count`` items, into a multiprocessing queue."""

    def __init__(self, queue, count):
        super().__init__(name="producer")
        self.queue = queue
        self.count = count

    def run(self):
        self.queue.put(("from", multiprocessing.get_start_method(), os.getppid()))
        for i in range(self.count):
            self.queue.put(("item", i, "x" * (i % 7)))
        self.queue.close()
        self.queue.join_thread()


def producer_server(address, authkey, status, method, count):
    """Serve a multiprocessing.Queue of this context, which a Process
    subclass fills with ``count`` items; send the producer's pid too."""
    # Producer is a plain multiprocessing.Process: it starts by the default
    # method, which this (server) process sets for itself
    multiprocessing.set_start_method(method, force=True)
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    QueueManager.register("get_queue", callable=lambda: queue)
    server = _bind(address, authkey, status)
    if server is None:
        return
    producer = Producer(queue, count)
    producer.start()
    status.send(("pid", producer.pid))
    status.close()
    server.serve_forever()


# ---------------------------------------------------------------------------
# 4. A proxy passed to a child process

def bump(counter, times, out):
    def work():
        for _ in range(times):
            counter.increment()
        return counter.value(), repr(counter)
    _report_errors(out, work)
