"""A peer that runs plain ``multiprocessing.managers``, for
tests/test_stdlib_wire.py: a program, never imported.

Run by a Python 3.10-3.13 of its own, isolated (``-I``, in a venv without
fastmgr), so that nothing in it is fastmgr's; it imports only the stdlib,
and says so.  Every mode prints one JSON object a line on stdout:

``server ADDRESS KEYHEX``
    serve a SyncManager (with the custom types below) with get_server();
    print {"address": ...} once it listens, then serve until shut down;
``client ADDRESS KEYHEX``
    connect, exercise the type list and print {"step": name, "value": ...}
    per step, then {"done": true};
``count ADDRESS KEYHEX N``
    connect, then N times: with the server's lock, add one to its counter;
``stuck ADDRESS KEYHEX``
    connect, create objects, print {"objects": n} and block in a call that
    never returns (for a SIGKILL);
``refused ADDRESS KEYHEX``
    connect and print how it failed: {"error": type name, "text": ...}.

ADDRESS is HOST:PORT or a unix socket path.
"""
import json
import multiprocessing
import os
import sys
import threading
import time
from multiprocessing.managers import AcquirerProxy, BaseManager, SyncManager, Value, ValueProxy


class Counter:
    """A custom type, shared through AutoProxy."""

    def __init__(self, start=0):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def fail(self):
        raise LookupError("custom failure")

    def slow(self, seconds):
        time.sleep(seconds)
        return seconds

    def unpicklable(self):
        return lambda: None


_LOCK = threading.Lock()
_COUNTER = Value("i", 0)


class PeerManager(SyncManager):
    """What the stdlib server serves: SyncManager's types, a custom type,
    and one lock and counter that every client shares."""


PeerManager.register("Counter", Counter)
PeerManager.register("get_lock", callable=lambda: _LOCK, proxytype=AcquirerProxy)
PeerManager.register("get_counter", callable=lambda: _COUNTER, proxytype=ValueProxy)


class ClientManager(BaseManager):
    """A remote client's view: typeids (and proxy types) only."""


ClientManager.register("Counter")
ClientManager.register("get_lock", proxytype=AcquirerProxy)
ClientManager.register("get_counter", proxytype=ValueProxy)


def emit(**kwds):
    sys.stdout.write(json.dumps(kwds) + "\n")
    sys.stdout.flush()


def parse_address(text):
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return (host, int(port))
    return text


def connect(address, key, manager_class=SyncManager):
    # nested proxies use the process's key, as always with the stdlib
    multiprocessing.current_process().authkey = key
    manager = manager_class(address=parse_address(address), authkey=key)
    manager.connect()
    return manager


def run_server(address, key):
    manager = PeerManager(address=parse_address(address), authkey=key)
    server = manager.get_server()
    emit(address=server.address, python=sys.version_info[:2], fastmgr="fastmgr" in sys.modules)
    server.serve_forever()


def run_client(address, key):
    m = connect(address, key)
    client = ClientManager(address=m.address, authkey=key)
    client.connect()
    emit(step="python", value=list(sys.version_info[:2]),
         fastmgr=any(name.startswith("fastmgr") for name in sys.modules))
    d = m.dict({"a": 1})
    d["b"] = [1, 2]
    emit(step="dict", value=[d["a"], d["b"], sorted(d.keys()), len(d), d.get("zz", 7)])
    try:
        d["missing"]
    except KeyError as exc:
        emit(step="dict_keyerror", value=repr(exc))
    lst = m.list([3, 1, 2])
    lst.append(4)
    lst.sort()
    emit(step="list", value=[lst[:], len(lst), lst.index(4)])
    q = m.Queue()
    q.put("x")
    q.put({"y": 1})
    emit(step="queue", value=[q.get(), q.get(timeout=5), q.empty()])
    lock = m.Lock()
    with lock:
        pass
    emit(step="lock", value=[lock.acquire(False), lock.release()])
    ev = m.Event()
    ev.set()
    emit(step="event", value=[ev.is_set(), ev.wait(1)])
    ns = m.Namespace(x=1)
    ns.y = "two"
    got = ns._getvalue()
    emit(step="namespace", value=[ns.x, ns.y, type(got).__module__, sorted(vars(got).items())])
    v = m.Value("i", 41)
    v.value += 1
    got = v._getvalue()
    emit(step="value", value=[v.value, type(got).__module__, got.value])
    inner = m.dict({"deep": True})
    lst.append(inner)
    d["inner"] = inner
    emit(step="nested", value=[lst[-1]["deep"], d["inner"]["deep"], type(lst[-1]).__name__])
    c = client.Counter(10)
    emit(step="autoproxy", value=[c.add(5), c.get(), type(c).__name__,
                                  sorted(n for n in type(c)._exposed_ if not n.startswith("_"))])
    try:
        c.fail()
    except LookupError as exc:
        emit(step="custom_error", value=repr(exc))
    try:
        c.unpicklable()
    except Exception as exc:
        emit(step="unserializable", value=[type(exc).__name__, "Unserializable" in str(exc)])
    it = iter(m.dict({"k1": 1, "k2": 2}))
    emit(step="iterator", value=sorted(it))
    emit(step="server_pid", value=c.pid())
    emit(step="objects", value=m._number_of_objects())
    emit(done=True)


def run_count(address, key, n):
    m = connect(address, key, ClientManager)
    lock, counter = m.get_lock(), m.get_counter()
    for _ in range(n):
        with lock:
            counter.set(counter.get() + 1)
    emit(done=True)


def run_stuck(address, key):
    m = connect(address, key)
    objects = [m.dict({"i": i}) for i in range(3)]
    q = m.Queue()
    emit(objects=len(objects) + 1, pid=os.getpid())
    q.get()  # never answered: the test kills us here


def run_refused(address, key):
    started = time.monotonic()
    try:
        connect(address, key).dict()
    except BaseException as exc:
        emit(error=type(exc).__name__, text=str(exc), seconds=time.monotonic() - started)
    else:
        emit(error=None)


def main():
    mode, address, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    if mode == "server":
        run_server(address, key)
    elif mode == "client":
        run_client(address, key)
    elif mode == "count":
        run_count(address, key, int(sys.argv[4]))
    elif mode == "stuck":
        run_stuck(address, key)
    elif mode == "refused":
        run_refused(address, key)
    else:
        sys.exit("unknown mode %r" % mode)


if __name__ == "__main__":
    main()
