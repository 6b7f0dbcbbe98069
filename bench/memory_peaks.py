"""Peak memory of sending a large value through a manager, on each side.

    python bench/memory_peaks.py [--mib 64] [--impl fastmgr --impl stdlib] [--aio]

A custom object keeps one value (``put``) and gives it back (``get``).  A
fresh client process makes a float64 ndarray of N MiB (numpy needed), then
``put``s it and ``get``s it back.  For each step, the extra resident memory
each side needed at its peak is read from the kernel: the peak (``VmHWM``)
is reset through ``/proc/PID/clear_refs`` before the step (Linux; as the
owner of both processes), and the figure is the peak during the step less
the resident memory before it.  The client's Python allocations
(tracemalloc, numpy's included) are given too.  A receiving side must
allocate N for the value it keeps; what is above that, and anything a
sending side allocates, is the cost of the transfer.  With ``--aio`` the
client calls through ``fastmgr.aio`` views on an event loop (fastmgr only).
"""
import argparse
import multiprocessing
import os
import sys
import tracemalloc


class Store:
    def __init__(self):
        self.value = None

    def put(self, value):
        self.value = value

    def get(self):
        return self.value

    def drop(self):
        self.value = None


def _status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no %s in /proc/%d/status" % (key, pid))


def _reset_peak(pid):
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


class Peak:
    """The extra resident memory of pid at its peak during a with block."""

    def __init__(self, pid):
        self.pid = pid

    def __enter__(self):
        self.before = _status(self.pid, "VmRSS")
        _reset_peak(self.pid)
        return self

    def __exit__(self, *exc):
        self.extra = _status(self.pid, "VmHWM") - self.before


class _Calls:
    """put/get on the store: plain calls, or (aio) awaited through a view
    on one event loop, warmed up like the plain ones."""

    def __init__(self, store, aio):
        self.store, self.loop = store, None
        if aio:
            import asyncio
            import fastmgr
            self.loop = asyncio.new_event_loop()
            self.view = fastmgr.aio(store)

    def __call__(self, method, *args):
        if self.loop is None:
            return getattr(self.store, method)(*args)
        return self.loop.run_until_complete(getattr(self.view, method)(*args))


def _client(impl, address, authkey, mib, aio, out):
    import numpy
    if impl == "stdlib":
        from multiprocessing.managers import BaseManager
    else:
        from fastmgr import BaseManager

    class M(BaseManager):
        pass
    M.register("Store")
    m = M(address=address, authkey=authkey)
    m.connect()
    store = m.Store()
    call = _Calls(store, aio)
    call("put", numpy.zeros(1))  # the server imports numpy here, not in a measured step
    call("get")
    array = numpy.random.default_rng(0).random((mib << 20) // 8)
    server = out.recv()
    results = {}
    tracemalloc.start()
    for step in ("put", "get"):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with Peak(os.getpid()) as client, Peak(server) as served:
            back = call("put", array) if step == "put" else call("get")
        results[step] = {"client": client.extra, "server": served.extra,
                         "client_python": tracemalloc.get_traced_memory()[1] - base}
        del back
    tracemalloc.stop()
    store.drop()
    out.send(results)


def measure(impl, mib, aio=False):
    if impl == "stdlib":
        from multiprocessing.managers import BaseManager
    else:
        from fastmgr import BaseManager

    class M(BaseManager):
        pass
    M.register("Store", Store)
    ctx = multiprocessing.get_context("fork")
    with M(authkey=b"peaks") as m:
        mine, theirs = ctx.Pipe()
        child = ctx.Process(target=_client, args=(impl, m.address, b"peaks", mib, aio, theirs))
        child.start()
        mine.send(m._process.pid)
        results = mine.recv()
        child.join(30)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, action="append")
    parser.add_argument("--impl", action="append", choices=["stdlib", "fastmgr"])
    parser.add_argument("--aio", action="store_true", help="call through fastmgr.aio views")
    args = parser.parse_args()
    impls = args.impl or (["fastmgr"] if args.aio else ["stdlib", "fastmgr"])
    if args.aio and "stdlib" in impls:
        parser.error("--aio measures fastmgr only")
    print("%-8s %6s %-5s %14s %14s %16s" % ("impl", "MiB", "step", "client extra",
                                             "server extra", "client Python"))
    for mib in args.mib or [1, 8, 64]:
        for impl in impls:
            for step, r in measure(impl, mib, args.aio).items():
                print("%-8s %6d %-5s %12.1f M %12.1f M %14.1f M" % (
                    impl, mib, step, r["client"] / 2**20, r["server"] / 2**20,
                    r["client_python"] / 2**20), flush=True)


if __name__ == "__main__":
    sys.exit(main())
