"""``python -m fastmgr bench``: fastmgr against the stdlib, in one run.

Each op is timed for both implementations in alternating rounds on the
same machine, so a ratio means something even on a noisy one.  A figure is
the median over rounds of the mean time per op within a round.
"""
import json
import multiprocessing
import statistics
import sys
import time
from multiprocessing import managers as std_managers

import fastmgr

IMPLEMENTATIONS = {"stdlib": std_managers, "fastmgr": fastmgr}


class Maths:
    def add(self, x, y):
        return x + y

    def echo(self, value):
        return value


class StdlibManager(std_managers.BaseManager):
    pass


class FastManager(fastmgr.BaseManager):
    pass


for _cls in (StdlibManager, FastManager):
    _cls.register("Maths", Maths)

MANAGERS = {"stdlib": StdlibManager, "fastmgr": FastManager}


def manager_class(impl):
    return MANAGERS[impl]


# -- ops: each takes a started manager and returns (one-op callable, cleanup)

def op_custom_call(manager):
    maths = manager.Maths()
    return (lambda: maths.add(1, 2)), None


def op_proxy_creation(manager):
    return manager.Maths, None


def op_bytes_1mib(manager):
    maths = manager.Maths()
    payload = bytes(1 << 20)
    return (lambda: maths.echo(payload)), None


OPS = [
    # name, function, ops per round, address kind
    ("custom method call", op_custom_call, 2000, "unix"),
    ("proxy creation", op_proxy_creation, 100, "unix"),
    ("1 MiB bytes echo", op_bytes_1mib, 20, "unix"),
]


def _address(kind):
    return ("127.0.0.1", 0) if kind == "tcp" else None


def _time_round(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def measure(fn_by_impl, n, rounds):
    """Median seconds per op for each impl, rounds interleaved."""
    samples = {impl: [] for impl in fn_by_impl}
    for impl, fn in fn_by_impl.items():
        _time_round(fn, max(1, n // 10))  # warm up
    for _ in range(rounds):
        for impl, fn in fn_by_impl.items():
            samples[impl].append(_time_round(fn, n))
    return {impl: statistics.median(s) for impl, s in samples.items()}


def bench_startup(rounds):
    """Seconds to start a manager, make one proxy, call it and shut down."""
    def run(impl):
        def once():
            with manager_class(impl)() as m:
                m.Maths().add(1, 2)
        return once
    return measure({impl: run(impl) for impl in IMPLEMENTATIONS}, 1, rounds)


def run(ops=None, rounds=5, scale=1.0, progress=sys.stderr):
    """Run the comparison; returns a list of result rows (dicts)."""
    rows = []
    selected = [op for op in OPS if ops is None or op[0] in ops]
    total = len(selected) + 1
    for index, (name, func, n, kind) in enumerate(selected, 1):
        print("[%d/%d] %s ..." % (index, total, name), file=progress, flush=True)
        started, fns = [], {}
        try:
            for impl in IMPLEMENTATIONS:
                m = manager_class(impl)(address=_address(kind))
                m.start()
                started.append(m)
                fns[impl] = func(m)[0]
            result = measure(fns, max(1, int(n * scale)), rounds)
        finally:
            fns.clear()
            for m in started:
                m.shutdown()
        rows.append(_row(name, result))
    print("[%d/%d] manager start-up ..." % (total, total), file=progress, flush=True)
    rows.append(_row("manager start-up", bench_startup(max(3, rounds))))
    return rows


def _row(name, result):
    return {"op": name, "stdlib_us": result["stdlib"] * 1e6, "fastmgr_us": result["fastmgr"] * 1e6,
            "speedup": result["stdlib"] / result["fastmgr"]}


def format_table(rows):
    lines = ["%-28s %12s %12s %9s" % ("op", "stdlib (us)", "fastmgr (us)", "speedup")]
    for row in rows:
        lines.append("%-28s %12.1f %12.1f %8.1fx" % (
            row["op"], row["stdlib_us"], row["fastmgr_us"], row["speedup"]))
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastmgr[plot]'")
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    names = [r["op"] for r in rows]
    ax.barh(names, [r["speedup"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="grey", linestyle="--")
    ax.set_xlabel("speedup over multiprocessing.managers (x)")
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        ax.text(r["speedup"], i, " %.1fx" % r["speedup"], va="center")
    fig.tight_layout()
    fig.savefig(path)


def main(args):
    multiprocessing.set_start_method(args.start_method, force=True)
    from . import _backend
    print(_backend.describe(), file=sys.stderr)
    rows = run(ops=args.op or None, rounds=args.rounds, scale=args.scale)
    if args.json:
        print(json.dumps({"wire": _backend.wire.IMPLEMENTATION, "rows": rows}, indent=2))
    else:
        print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
        print("plot written to %s" % args.plot, file=sys.stderr)
