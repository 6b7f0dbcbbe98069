"""Values of many shapes through a custom method, against the stdlib.

    python bench/value_shapes.py [--rounds 7] [--shape records ...]

A custom object on the server keeps one value; ``put(value)`` sends it as
an argument and ``get()`` brings it back as a result.  For each shape, a
manager of each implementation keeps the same value, and their calls are
timed in interleaved rounds in this one process (median of the rounds;
each turn starts with an untimed ``get``, in which what the call before
left to the allocator and the other server runs out).
The figure is how many times faster fastmgr is.  The big-container rows of
``python -m fastmgr bench`` are three of these shapes; the rest are what
users send too (records, ints, big strings, sets, ...).
"""
import argparse
import statistics
import sys
import time

from multiprocessing.managers import BaseManager as StdlibBase

from fastmgr import BaseManager as FastBase

N = 100000

SHAPES = {
    "100k (str, float) tuples": lambda: [("key%d" % i, i * 0.5) for i in range(N)],
    "100k str -> float dict": lambda: {"key%d" % i: i * 0.5 for i in range(N)},
    "100k records (3-key dicts)": lambda: [{"id": i, "name": "n%d" % i, "score": i * 0.5}
                                           for i in range(N)],
    "100k [int, int, str] lists": lambda: [[i, i + 1, "a"] for i in range(N)],
    "10k dicts of dicts": lambda: {"k%d" % i: {"a": i, "b": [i, i]} for i in range(N // 10)},
    "100k str -> str dict": lambda: {"k%d" % i: "v%d" % i for i in range(N)},
    "100k non-ASCII keys": lambda: {"\u043a\u043b\u044e\u0447%d" % i: i for i in range(N)},
    "100k int -> int dict": lambda: {i: i for i in range(N)},
    "1M ints": lambda: list(range(10 * N)),
    "100k str": lambda: ["s%d" % i for i in range(N)],
    "100k float tuple": lambda: tuple(i * 0.25 for i in range(N)),
    "8 MiB str": lambda: "x" * (8 << 20),
    "100k int set (pickled)": lambda: set(range(N)),
}


class Store:
    def __init__(self):
        self.value = None

    def put(self, value):
        self.value = value

    def get(self):
        return self.value


class StdlibManager(StdlibBase):
    pass


class FastManager(FastBase):
    pass


for _cls in (StdlibManager, FastManager):
    _cls.register("Store", Store)


def _timed(call, *args):
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def measure(make, rounds):
    """{(impl, "put"|"get"): median seconds} for one shape, rounds interleaved."""
    value = make()
    samples = {}
    with StdlibManager() as stdlib, FastManager() as fast:
        stores = {"stdlib": stdlib.Store(), "fastmgr": fast.Store()}
        for store in stores.values():
            store.put(value)
            store.get()
        for _ in range(rounds):
            for impl, store in stores.items():
                samples.setdefault((impl, "put"), []).append(_timed(store.put, value))
                samples.setdefault((impl, "get"), []).append(_timed(store.get))
    return {key: statistics.median(times) for key, times in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shape", action="append", help="run only the shapes whose name "
                        "contains this (repeatable)")
    args = parser.parse_args()
    print("%-28s %10s %10s %7s %10s %10s %7s" % ("value", "put stdlib", "fastmgr", "", "get stdlib",
                                                 "fastmgr", ""))
    for name, make in SHAPES.items():
        if args.shape and not any(part in name for part in args.shape):
            continue
        t = measure(make, args.rounds)
        print("%-28s %8.2f ms %7.2f ms %6.1fx %8.2f ms %7.2f ms %6.1fx" % (
            name, t["stdlib", "put"] * 1e3, t["fastmgr", "put"] * 1e3,
            t["stdlib", "put"] / t["fastmgr", "put"], t["stdlib", "get"] * 1e3,
            t["fastmgr", "get"] * 1e3, t["stdlib", "get"] / t["fastmgr", "get"]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
