"""A/B of the spin policy's rules on the figures users see, on three
machine shapes.

    python tools/spin_ab.py --variants full,no-calm,no-moves+lost,plain --rounds 10

A variant is "full" (every rule), "plain" (FASTMGR_SPIN_POLICY=plain) or
"no-RULE[+RULE...]" (every rule but those); the first is the reference.
Each turn is a fresh child process with a manager per variant, each forked
with its variant's rules (fastmgr._wire._set_spin_rules).  It measures
fastmgr alone: dict get, dict set, Queue put+get, the 10,000-call
pipelined loop and a 1 MiB argument (mean time per op over a window of
30 ms), and the calls/s of 8 client processes (windows of 0.1 s).  The
variants take turns window by window, the child switching to a variant's
rules before each of its windows; each figure of a turn is the median over
its windows.  Rounds run every shape once, in turn.

Shapes: "default" (where the kernel puts things), "pinned" (the child and
everything it starts under taskset -c 0), "quota" (the child under a cgroup
quota of one CPU, /work/shared/tools/cpu-quota.sh or $SPIN_AB_QUOTA_TOOL).

Every turn's figures and the load average go to --out (JSON lines) as they
come.  The summary gives, per shape, variant and figure, how many times
better the reference did than the variant in the same turn: the median
over turns and the quartiles (above 1: the reference is better).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QUOTA = os.environ.get("SPIN_AB_QUOTA_TOOL", "/work/shared/tools/cpu-quota.sh")

SHAPES = {
    "default": [],
    "pinned": ["taskset", "-c", "0"],
    "quota": [QUOTA, "1.0"],
}

# figure -> whether higher is better
FIGURES = {"dict_get": False, "dict_set": False, "queue": False, "pipelined": False,
           "1mib": False, "tput8": True}

WINDOW_SECONDS = 0.03
CLIENT_SECONDS = 0.1


def _per_op(fn, seconds):
    """Mean µs per call of fn over about `seconds`, after a short warm-up."""
    end = time.perf_counter() + seconds / 10
    while time.perf_counter() < end:
        fn()
    calls = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= end:
            return (now - start) / calls * 1e6


def rules_of(variant):
    """"full", "plain" or "no-RULE+RULE" -> (policy, rules left out)"""
    if variant in ("full", "plain"):
        return variant, ()
    if not variant.startswith("no-"):
        raise SystemExit("bad variant %r" % variant)
    return "full", tuple(variant[3:].split("+"))


def child(figures, variants, windows):
    """Measure the figures for every variant in this process, in windows
    that take turns; print {variant: {figure: median over windows}}.  Each
    variant has its own manager and clients, forked with its rules; this
    process switches to a variant's rules before each of its windows."""
    sys.path.insert(0, os.path.dirname(HERE))
    import multiprocessing
    multiprocessing.set_start_method("fork", force=True)
    from fastmgr import _bench as B
    from fastmgr import _wire

    def use(variant):
        _wire._set_spin_rules(*rules_of(variant))

    ops = {"dict_get": B.op_dict_get, "dict_set": B.op_dict_set, "queue": B.op_queue_put_get,
           "pipelined": B.op_pipelined_loop, "1mib": B.op_bytes_1mib}
    ops = {name: setup for name, setup in ops.items() if name in figures}
    samples = {v: {f: [] for f in figures} for v in variants}
    managers, fns, gangs = {}, {}, {}
    try:
        for v in variants:
            use(v)
            managers[v] = B.start_manager("fastmgr")
            fns[v] = {name: setup(managers[v], "fastmgr") for name, setup in ops.items()}
            if "tput8" in figures:
                gangs[v] = B.Clients("fastmgr", managers[v], 8)
        for w in range(windows):
            order = variants[w % len(variants):] + variants[:w % len(variants)]
            if w % 2:
                order.reverse()
            for name in ops:
                for v in order:
                    use(v)
                    samples[v][name].append(_per_op(fns[v][name], WINDOW_SECONDS))
            if "tput8" in figures:
                for v in order:
                    samples[v]["tput8"].append(gangs[v].run(seconds=CLIENT_SECONDS))
    finally:
        for gang in gangs.values():
            gang.close()
        for m in managers.values():
            m.shutdown()
    print(json.dumps({v: {f: statistics.median(x) for f, x in by_fig.items() if x}
                      for v, by_fig in samples.items()}))


def run_turn(shape, variants, figures, windows):
    cmd = SHAPES[shape] + [sys.executable, os.path.abspath(__file__), "--child",
                           "--figures", ",".join(figures), "--variants", ",".join(variants),
                           "--windows", str(windows)]
    load = [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit("turn failed (%s): %s" % (shape, done.stderr[-2000:]))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return {"shape": shape, "reference": variants[0], "load": load, "at": started,
            "seconds": time.time() - started, "figures": json.loads(lines[-1])}


def _quartiles(values):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(turns):
    """{(shape, variant, figure): summary}: per turn, how many times better
    the reference did than the variant; over turns, the median and
    quartiles."""
    out = {}
    for t in turns:
        ref = t["figures"][t["reference"]]
        for variant, figs in t["figures"].items():
            if variant == t["reference"]:
                continue
            for fig, higher_better in FIGURES.items():
                a, b = ref.get(fig), figs.get(fig)
                if a is None or b is None:
                    continue
                s = out.setdefault((t["shape"], variant, fig), {"ratios": [], "loads": []})
                s["ratios"].append(a / b if higher_better else b / a)
                s["loads"].append(t["load"][0])
    for s in out.values():
        s["median"] = statistics.median(s["ratios"])
        s["q1"], s["q3"] = _quartiles(s["ratios"])
        s["rounds"] = len(s["ratios"])
        s["load"] = statistics.median(s["loads"])
        s["load_lo"], s["load_hi"] = min(s["loads"]), max(s["loads"])
    return out


def print_summary(summary, file=sys.stdout):
    print("%-8s %-14s %-10s %7s %15s %6s %5s" % (
        "shape", "variant", "figure", "median", "quartiles", "rounds", "load"), file=file)
    for (shape, variant, fig), s in sorted(summary.items()):
        print("%-8s %-14s %-10s %7.3f %7.3f-%-7.3f %6d %5.1f" % (
            shape, variant, fig, s["median"], s["q1"], s["q3"], s["rounds"], s["load"]),
            file=file)


def markdown(summary, file=sys.stdout):
    """A row per variant and shape, a column per figure; each cell the
    reference's gain in percent (median, and quartiles)."""
    figures = [f for f in FIGURES if any(k[2] == f for k in summary)]
    keys = sorted({(variant, shape) for shape, variant, _ in summary})
    print("| variant | shape | load | " + " | ".join(figures) + " |", file=file)
    print("|---|---|---|" + "---|" * len(figures), file=file)
    for variant, shape in keys:
        cells = []
        for fig in figures:
            s = summary.get((shape, variant, fig))
            cells.append("%+.0f (%+.0f..%+.0f)" % tuple(
                (x - 1) * 100 for x in (s["median"], s["q1"], s["q3"])) if s else "")
        s = next(summary[k] for k in summary if k[:2] == (shape, variant))
        print("| %s | %s | %.1f (%.1f-%.1f) | %s |" % (
            variant, shape, s["load"], s["load_lo"], s["load_hi"], " | ".join(cells)), file=file)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variants", default="full,plain",
                   help="full, plain or no-RULE[+RULE...], comma-separated; the first is "
                        "the reference")
    p.add_argument("--shapes", default="default,pinned,quota")
    p.add_argument("--figures", default=",".join(FIGURES))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--windows", type=int, default=8, help="windows per variant and figure "
                   "in each turn")
    p.add_argument("--out", default="spin_ab.jsonl")
    p.add_argument("--summarize", metavar="JSONL", help="only summarize a finished run")
    p.add_argument("--markdown", action="store_true", help="summarize as a markdown table")
    args = p.parse_args()
    figures = [f for f in args.figures.split(",") if f]
    variants = [v for v in args.variants.split(",") if v]
    if args.child:
        child(figures, variants, args.windows)
        return
    if args.summarize:
        with open(args.summarize) as f:
            summary = summarize([json.loads(line) for line in f])
        (markdown if args.markdown else print_summary)(summary)
        return
    for v in variants:
        rules_of(v)
    turns = []
    with open(args.out, "a") as out:
        for r in range(args.rounds):
            for shape in (args.shapes.split(",")[r % 3:] + args.shapes.split(",")[:r % 3]):
                turn = run_turn(shape, variants, figures, args.windows)
                turns.append(turn)
                out.write(json.dumps(turn) + "\n")
                out.flush()
                print("round %d %-8s load %.1f %.0f s" % (r, shape, turn["load"][0],
                                                          turn["seconds"]),
                      file=sys.stderr, flush=True)
    print_summary(summarize(turns))


if __name__ == "__main__":
    main()
