"""Peak memory of sending a large value through a manager, on each side.

    python bench/memory_peaks.py [--mib 64] [--impl fastmgr --impl stdlib]

A custom object keeps one value (``put``) and gives it back (``get``).  A
fresh client process makes a float64 ndarray of N MiB (numpy needed), then
``put``s it and ``get``s it back.  For each step, the extra resident memory
each side needed at its peak is read from the kernel: the peak (``VmHWM``)
is reset through ``/proc/PID/clear_refs`` before the step (Linux; as the
owner of both processes), and the figure is the peak during the step less
the resident memory before it.  The client's Python allocations
(tracemalloc, numpy's included) are given too.  A receiving side must
allocate N for the value it keeps; what is above that, and anything a
sending side allocates, is the cost of the transfer.
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


def _client(impl, address, authkey, mib, out):
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
    store.put(numpy.zeros(1))  # the server imports numpy here, not in a measured step
    store.get()
    array = numpy.random.default_rng(0).random((mib << 20) // 8)
    server = out.recv()
    results = {}
    tracemalloc.start()
    for step in ("put", "get"):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with Peak(os.getpid()) as client, Peak(server) as served:
            back = store.put(array) if step == "put" else store.get()
        results[step] = {"client": client.extra, "server": served.extra,
                         "client_python": tracemalloc.get_traced_memory()[1] - base}
        del back
    tracemalloc.stop()
    store.drop()
    out.send(results)


def measure(impl, mib):
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
        child = ctx.Process(target=_client, args=(impl, m.address, b"peaks", mib, theirs))
        child.start()
        mine.send(m._process.pid)
        results = mine.recv()
        child.join(30)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, action="append")
    parser.add_argument("--impl", action="append", choices=["stdlib", "fastmgr"])
    args = parser.parse_args()
    print("%-8s %6s %-5s %14s %14s %16s" % ("impl", "MiB", "step", "client extra",
                                             "server extra", "client Python"))
    for mib in args.mib or [1, 8, 64]:
        for impl in args.impl or ["stdlib", "fastmgr"]:
            for step, r in measure(impl, mib).items():
                print("%-8s %6d %-5s %12.1f M %12.1f M %14.1f M" % (
                    impl, mib, step, r["client"] / 2**20, r["server"] / 2**20,
                    r["client_python"] / 2**20), flush=True)


if __name__ == "__main__":
    sys.exit(main())
