"""``python -m fastmgr bench``: fastmgr against the stdlib, in one run.

Each op is timed for both implementations in alternating rounds on the
same machine, so a ratio means something even on a noisy one.  A time is
the median over rounds of the mean time per op within a round.  Every row
gets fresh managers (a SyncManager subclass of each implementation).

Besides per-op times there are four other kinds of row:

- ``throughput, N clients``: N forked client processes, each connected to
  the one manager, call a method in a loop for a fixed window; the figure is
  the total calls/s, median of five windows (speedup = fastmgr / stdlib).
  The rows for every client count are measured together: each window runs
  every count with each implementation in turn (in reverse order every
  other window), so that 8 clients compare with 2 as fastmgr compares with
  the stdlib, in the same stretch of time.  How many times what 2 clients
  get 8 clients get is the median of the ratios within a window, each
  8-client figure against the 2-client one of its window (only the
  4-client turn comes between them): the machine's slow and fast stretches
  then fall on both alike;
- ``..., 1 CPU``: the op with the benchmark process and the manager's server
  process (every thread of both) pinned to one CPU;
- ``socket floor, 1 MiB``: a bare ping-pong between two processes over a
  socketpair (4-byte length + 1 MiB in one sendall, read with recv_into
  into a preallocated buffer, 1-byte reply), timed in the same rounds as the
  1 MiB argument, which is then shown as a multiple of it;
- ``socket floor, N MiB both ways``: the same, but the other process sends
  the N MiB back (read into a preallocated buffer too), timed in the same
  rounds as the N MiB ndarray rows (which move N MiB each way: ``put``
  then ``get``);
- ``asyncio, ...`` and ``uvloop, ...``: awaits on an event loop, the
  stdlib's calls handed to executor threads against ``fastmgr.aio`` views
  (see ``_bench_aio.py``).

The ndarray rows need numpy (``pip install 'fastmgr[bench]'``); without it
they are skipped with a note.

The pytest-benchmark suite in ``bench/`` reuses the op definitions here.
"""
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing import managers as std_managers

import fastmgr

from . import _bench_aio
from ._bench_machine import (  # noqa: F401 (the bench's API: tests and bench/ use them here)
    SocketFloor, describe_machine, figure, machine, pinned_to_one_cpu, plot)

IMPLEMENTATIONS = ("stdlib", "fastmgr")


class Maths:
    def add(self, x, y):
        return x + y

    def nbytes(self, data):
        return len(data)

    def length(self, items):
        return len(items)


class StdlibManager(std_managers.SyncManager):
    pass


class FastManager(fastmgr.SyncManager):
    pass


class Store:
    """Keeps one value: a custom object that large values go through."""

    def __init__(self):
        self.value = None

    def put(self, value):
        self.value = value

    def get(self):
        return self.value


for _cls in (StdlibManager, FastManager):
    _cls.register("Maths", Maths)
    _cls.register("Store", Store)

MANAGERS = {"stdlib": StdlibManager, "fastmgr": FastManager}


def manager_class(impl):
    return MANAGERS[impl]


def address_for(kind):
    """The address argument of a manager listening on `kind` ("unix" or "tcp")."""
    return ("127.0.0.1", 0) if kind == "tcp" else None


def start_manager(impl, kind="unix"):
    manager = manager_class(impl)(address=address_for(kind))
    manager.start()
    return manager


# -- ops: each takes a started manager and its impl name, returns a callable
#    doing one op

def op_custom_call(m, impl):
    maths = m.Maths()
    return lambda: maths.add(1, 2)


def op_dict_get(m, impl):
    d = m.dict({"key": 1})
    return lambda: d["key"]


def op_dict_set(m, impl):
    d = m.dict()
    return lambda: d.__setitem__("key", 1)


def op_namespace_read(m, impl):
    ns = m.Namespace(x=1)
    return lambda: ns.x


def op_namespace_write(m, impl):
    ns = m.Namespace(x=1)
    return lambda: setattr(ns, "x", 2)


def op_list_append(m, impl):
    items = m.list()
    return lambda: items.append(1)


def op_value_read(m, impl):
    value = m.Value("i", 1)
    return lambda: value.value


def op_queue_put_get(m, impl):
    q = m.Queue()

    def put_get():
        q.put(1)
        return q.get()
    return put_get


def op_lock_acquire_release(m, impl):
    lock = m.Lock()

    def acquire_release():
        lock.acquire()
        lock.release()
    return acquire_release


def op_bytes_1mib(m, impl):
    maths, payload = m.Maths(), bytes(1 << 20)
    return lambda: maths.nbytes(payload)


def op_list_10k(m, impl):
    maths, items = m.Maths(), list(range(10000))
    return lambda: maths.length(items)


def op_proxy_creation(m, impl):
    return m.Maths


class Skip(Exception):
    """An op that cannot run here (a missing optional dependency)."""


def _ndarray(mib):
    try:
        import numpy
    except ImportError:
        raise Skip("needs numpy (pip install 'fastmgr[bench]')") from None
    return numpy.random.default_rng(0).random((mib << 20) // 8)


def _checked(value, expected):
    if value.nbytes != expected.nbytes:
        raise RuntimeError("got %d bytes back, not %d" % (value.nbytes, expected.nbytes))


def op_ndarray_method(mib):
    def setup(m, impl):
        store, array = m.Store(), _ndarray(mib)

        def put_get():
            store.put(array)
            _checked(store.get(), array)
        return put_get
    return setup


def op_ndarray_queue(mib):
    def setup(m, impl):
        q, array = m.Queue(), _ndarray(mib)

        def put_get():
            q.put(array)
            _checked(q.get(), array)
        return put_get
    return setup


BIG_ENTRIES = 100000


def op_big_list_slice(m, impl):
    items = m.list([("key%d" % i, i * 0.5) for i in range(BIG_ENTRIES)])
    return lambda: items[:]


def op_big_dict_copy(m, impl):
    d = m.dict({"key%d" % i: i * 0.5 for i in range(BIG_ENTRIES)})
    return d.copy


def op_big_dict_items(m, impl):
    d = m.dict({"key%d" % i: i * 0.5 for i in range(BIG_ENTRIES)})
    return d.items


PIPELINED_CALLS = 10000


def op_pipelined_loop(m, impl):
    """10,000 ``d[i] = i``: in a fastmgr.pipeline block for fastmgr, the
    plain loop for the stdlib (which has no pipelining)."""
    d = m.dict()

    def plain():
        for i in range(PIPELINED_CALLS):
            d[i] = i

    def pipelined():
        with fastmgr.pipeline(m):
            for i in range(PIPELINED_CALLS):
                d[i] = i
    return pipelined if impl == "fastmgr" else plain


class Floor:
    """The socket floor a row is read against: `size` bytes to the other
    process, and back too if `both_ways` (else a 1-byte reply)."""

    def __init__(self, size, both_ways=False):
        self.size, self.both_ways = size, both_ways

    @property
    def name(self):
        return "socket floor, %d MiB%s" % (self.size >> 20, " both ways" if self.both_ways else "")


class Op:
    """One row of the comparison.

    kind "time": `setup(manager, impl)` returns a callable timed `n` times a
    round (it may raise Skip); "clients": throughput of `n` client
    processes; "startup": manager start-up; "aio": `setup(manager, impl)`
    returns `async batch(n)`, run on an event loop of kind `loop` (see
    _bench_aio.py).  `address` is "unix" or "tcp"; `pinned` runs the row on
    one CPU; `floor` (a Floor) also times that socket floor in the same
    rounds."""

    def __init__(self, name, setup=None, n=1, kind="time", address="unix", pinned=False,
                 floor=None, loop=None):
        self.name, self.setup, self.n, self.kind = name, setup, n, kind
        self.address, self.pinned, self.floor = address, pinned, floor
        self.loop = loop

    def __repr__(self):
        return "Op(%r)" % self.name


SMALL_CALLS = [
    ("custom method call", op_custom_call),
    ("dict get", op_dict_get),
    ("dict set", op_dict_set),
    ("Namespace read", op_namespace_read),
]

CLIENT_COUNTS = (1, 2, 4, 8)

#: (MiB, ops per round) of the ndarray rows
NDARRAY_SIZES = ((1, 10), (8, 2), (64, 1))

OPS = (
    [Op(name, setup, 2000) for name, setup in SMALL_CALLS]
    + [Op("Namespace write", op_namespace_write, 2000),
       Op("list append", op_list_append, 2000),
       Op("Value read", op_value_read, 2000),
       Op("Queue put+get", op_queue_put_get, 1000),
       Op("Lock acquire+release", op_lock_acquire_release, 1000),
       Op("1 MiB bytes argument", op_bytes_1mib, 20, floor=Floor(1 << 20))]
    + [Op("%d MiB ndarray, custom method put+get" % mib, op_ndarray_method(mib), n,
          floor=Floor(mib << 20, both_ways=True)) for mib, n in NDARRAY_SIZES]
    + [Op("%d MiB ndarray, Queue put+get" % mib, op_ndarray_queue(mib), n,
          floor=Floor(mib << 20, both_ways=True)) for mib, n in NDARRAY_SIZES]
    + [Op("100k (str, float) list, l[:]", op_big_list_slice, 5),
       Op("100k dict, d.copy()", op_big_dict_copy, 5),
       Op("100k dict, d.items()", op_big_dict_items, 5),
       Op("10k-int list, unix", op_list_10k, 50),
       Op("10k-int list, TCP", op_list_10k, 10, address="tcp"),
       Op("proxy creation", op_proxy_creation, 100),
       Op("pipelined loop, 10k d[i] = i", op_pipelined_loop, 1)]
    + [Op(name + ", 1 CPU", setup, 1000, pinned=True) for name, setup in SMALL_CALLS]
    + [Op("throughput, %d client%s" % (n, "s" if n > 1 else ""), n=n, kind="clients")
       for n in CLIENT_COUNTS]
    + [Op(name, setup, n, kind="aio", loop=loop) for name, setup, n, loop in _bench_aio.AIO_ROWS
       if loop != "uvloop" or _bench_aio.uvloop_available()]
    + [Op("manager start-up", kind="startup")]
)


def find_op(name):
    for op in OPS:
        if op.name == name:
            return op
    raise KeyError(name)


# -- throughput: client processes, forked, each with its own connection

def _client_main(impl, address, authkey, conn):
    m = manager_class(impl)(address=address, authkey=authkey)
    m.connect()
    maths = m.Maths()
    maths.add(1, 2)
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            return
        seconds, calls = command
        count, start = 0, time.perf_counter()
        if seconds is not None:
            end = start + seconds
            while time.perf_counter() < end:
                maths.add(1, 2)
                count += 1
        else:
            for count in range(1, calls + 1):
                maths.add(1, 2)
        conn.send((count, time.perf_counter() - start))


class Clients:
    """`n` forked client processes connected to `manager`, idle between runs."""

    def __init__(self, impl, manager, n):
        ctx = multiprocessing.get_context("fork")
        self._pipes, self._processes = [], []
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=_client_main, daemon=True,
                                  args=(impl, manager.address, manager._authkey, theirs))
            process.start()
            theirs.close()
            self._pipes.append(mine)
            self._processes.append(process)
        for pipe in self._pipes:
            pipe.recv()

    def run(self, seconds=None, calls=None):
        """Every client calls for `seconds` (or `calls` times); total calls/s."""
        for pipe in self._pipes:
            pipe.send((seconds, calls))
        return sum(count / elapsed for count, elapsed in (p.recv() for p in self._pipes))

    def close(self):
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.terminate()


def startup_once(impl):
    """Start a manager, make one proxy, call it, shut down."""
    with manager_class(impl)() as m:
        m.Maths().add(1, 2)


# -- measuring

def _time_round(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def measure(fn_by_name, n, rounds):
    """Median seconds per op for each entry, rounds interleaved."""
    samples = {name: [] for name in fn_by_name}
    for fn in fn_by_name.values():
        _time_round(fn, max(1, n // 10))  # warm up
    for _ in range(rounds):
        for name, fn in fn_by_name.items():
            samples[name].append(_time_round(fn, n))
    return {name: statistics.median(s) for name, s in samples.items()}


def _measure_time_op(op, rounds, scale):
    managers, fns, floor = [], {}, None
    try:
        for impl in IMPLEMENTATIONS:
            managers.append(start_manager(impl, op.address))
            fns[impl] = op.setup(managers[-1], impl)
        if op.floor is not None:
            floor = SocketFloor(op.floor.size, op.floor.both_ways)
            fns["floor"] = floor.call
        n = max(1, int(op.n * scale))
        if op.pinned:
            with pinned_to_one_cpu([m._process.pid for m in managers]):
                return measure(fns, n, rounds)
        return measure(fns, n, rounds)
    finally:
        fns.clear()
        if floor is not None:
            floor.close()
        for m in managers:
            m.shutdown()


def measure_clients(ops, scale=1.0, windows=5):
    """{op name: {impl: calls/s, "windows": {impl: [calls/s per window]}}}
    for "clients" ops measured together: the median over `windows`
    windows, each of which runs every op with each implementation in turn
    (reversed every other window); all managers and clients are up
    throughout.  An implementation's client counts come one after another,
    so that its ratios between them (_annotate) are timed close together."""
    seconds = max(0.1, 0.36 * scale)
    turns = [(op, impl) for impl in IMPLEMENTATIONS for op in ops]
    managers, clients = [], {}
    samples = {turn: [] for turn in turns}
    try:
        for op, impl in turns:
            managers.append(start_manager(impl, op.address))
            clients[op, impl] = Clients(impl, managers[-1], op.n)
        for window in range(windows):
            for turn in (turns if window % 2 == 0 else turns[::-1]):
                samples[turn].append(clients[turn].run(seconds=seconds))
    finally:
        for gang in clients.values():
            gang.close()
        for manager in managers:
            manager.shutdown()
    results = {op.name: {"windows": {}} for op in ops}
    for (op, impl), values in samples.items():
        results[op.name][impl] = statistics.median(values)
        results[op.name]["windows"][impl] = values
    return results


def measure_op(op, rounds=5, scale=1.0):
    """{impl (and "floor"): seconds per op} for an op that is not of kind
    "clients" (those: measure_clients)."""
    if op.kind == "startup":
        return measure({impl: (lambda impl=impl: startup_once(impl)) for impl in IMPLEMENTATIONS},
                       1, max(3, rounds))
    if op.kind == "aio":
        return _bench_aio.measure_aio_op(op.setup, op.loop, start_manager, IMPLEMENTATIONS,
                                         max(1, int(op.n * scale)), rounds)
    try:
        return _measure_time_op(op, rounds, scale)
    except Skip as exc:
        return {"skipped": str(exc)}


def make_row(op, result):
    if "skipped" in result:
        return {"op": op.name, "skipped": result["skipped"]}
    if op.kind == "clients":
        return {"op": op.name, "unit": "calls/s", "stdlib": result["stdlib"],
                "fastmgr": result["fastmgr"], "speedup": result["fastmgr"] / result["stdlib"],
                "windows": result["windows"]}
    row = {"op": op.name, "unit": "us", "stdlib": result["stdlib"] * 1e6,
           "fastmgr": result["fastmgr"] * 1e6, "speedup": result["stdlib"] / result["fastmgr"]}
    if "floor" in result:
        row["floor"] = result["floor"] * 1e6
        row["floor_name"] = op.floor.name
        row["floor_multiple"] = result["fastmgr"] / result["floor"]
    return row


def run(ops=None, rounds=5, scale=1.0, progress=sys.stderr):
    """Run the comparison; returns a list of result rows (dicts).  `ops`:
    names or parts of names to run (default: all)."""
    selected = [op for op in OPS if not ops or any(part in op.name for part in ops)]
    together = [op for op in selected if op.kind == "clients"]
    measured = {}  # their results, measured when the first of them comes
    rows = []
    for index, op in enumerate(selected, 1):
        print("[%2d/%d] %-40s" % (index, len(selected), op.name), end="", file=progress,
              flush=True)
        started = time.perf_counter()
        if op.kind == "clients":
            if not measured:
                measured = measure_clients(together, scale)
            row = make_row(op, measured[op.name])
        else:
            row = make_row(op, measure_op(op, rounds, scale))
        rows.append(row)
        if "skipped" in row:
            print("skipped: %s" % row["skipped"], file=progress, flush=True)
            continue
        print("%12s %12s %8.1fx  (%.1f s)" % (
            _fmt(row["stdlib"], row["unit"]), _fmt(row["fastmgr"], row["unit"]), row["speedup"],
            time.perf_counter() - started), file=progress, flush=True)
    return _annotate(rows)


def _annotate(rows):
    """Notes on rows that are read against another row."""
    by_name = {row["op"]: row for row in rows}
    for row in rows:
        if "floor" in row:
            row["note"] = "%.2fx %s" % (row["floor_multiple"], row["floor_name"])
    eight, two = by_name.get("throughput, 8 clients"), by_name.get("throughput, 2 clients")
    if eight and two:
        eight["fastmgr_vs_2_clients"] = statistics.median(
            [a / b for a, b in zip(eight["windows"]["fastmgr"], two["windows"]["fastmgr"])])
        eight["note"] = "fastmgr: %.2fx its 2 clients" % eight["fastmgr_vs_2_clients"]
    out = []
    for row in rows:
        out.append(row)
        if "floor" in row:
            out.append({"op": row["floor_name"], "unit": "us", "value": row["floor"],
                        "note": "bare socketpair round trip, same rounds"})
    return out


def _fmt(value, unit):
    if unit == "calls/s":
        return "%.1fk/s" % (value / 1e3)
    if value >= 1e6:
        return "%.2f s" % (value / 1e6)
    if value >= 1e3:
        return "%.2f ms" % (value / 1e3)
    return "%.1f us" % value


def format_table(rows):
    lines = ["%-40s %12s %12s %9s  %s" % ("op", "stdlib", "fastmgr", "speedup", "")]
    for row in rows:
        if "skipped" in row:
            lines.append("%-40s %12s %12s %9s  skipped: %s" % (row["op"], "", "", "", row["skipped"]))
            continue
        if "value" in row:  # a reference row: one figure, no comparison
            lines.append("%-40s %12s %12s %9s  %s" % (
                row["op"], "", _fmt(row["value"], row["unit"]), "", row.get("note", "")))
            continue
        lines.append("%-40s %12s %12s %8.1fx  %s" % (
            row["op"], _fmt(row["stdlib"], row["unit"]), _fmt(row["fastmgr"], row["unit"]),
            row["speedup"], row.get("note", "")))
    lines.append("(times per op, median of rounds; throughput in calls/s summed over clients; "
                 "speedup = how many times better fastmgr is)")
    return "\n".join(line.rstrip() for line in lines)


def main(args):
    multiprocessing.set_start_method(args.start_method, force=True)
    from . import _backend
    print(_backend.describe(), file=sys.stderr)
    print("CPUs usable: %d; %d rounds per op" % (len(os.sched_getaffinity(0)), args.rounds),
          file=sys.stderr)
    started = time.perf_counter()
    rows = run(ops=args.op or None, rounds=args.rounds, scale=args.scale)
    print("done in %.1f s" % (time.perf_counter() - started), file=sys.stderr)
    if args.json:
        print(json.dumps({"wire": _backend.wire.IMPLEMENTATION,
                          "cpus": len(os.sched_getaffinity(0)), "machine": machine(),
                          "rows": rows}, indent=2))
    else:
        print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
        print("plot written to %s" % args.plot, file=sys.stderr)
