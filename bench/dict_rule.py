"""What the SAME_HASH_MAX rule costs on ordinary dicts: decoding the same
message with Codec('pickle') (no rule) and Codec('safe') (the rule), in one
run, interleaved.

    python bench/dict_rule.py [--rounds 15] [--callgrind]

Native values decode the same way under both serializers; the only work
'safe' adds to a dict of more than SAME_HASH_MAX entries is counting its
keys per hash value (str and bytes keys are not counted while their hashes
are randomised).  Wall-clock: the median of per-round ratios and their
spread.  --callgrind also counts instructions per decode (N and 2N decodes
under callgrind; the difference over N), which do not depend on the load.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SAMPLES = {
    "int keys, 10": lambda: {i: i for i in range(10)},
    "int keys, 1k": lambda: {i: i for i in range(1000)},
    "int keys, 100k": lambda: {i: i for i in range(100_000)},
    "str keys, 1k": lambda: {"key%d" % i: i for i in range(1000)},
    "tuple keys, 1k": lambda: {(i, i + 1): i for i in range(1000)},
    "float keys, 1k": lambda: {i * 0.5: i for i in range(1000)},
    "8 small dicts": lambda: [{"a": i, "b": [i], 3: None} for i in range(8)],
}


def per_decode(codec, data, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        codec.loads(data)
    return (time.perf_counter() - start) / repeat


def wall_clock(rounds):
    from fastmgr._backend import wire
    plain, safe = wire.Codec("pickle"), wire.Codec("safe")
    print("%-16s %12s %12s %8s  %s" % ("message", "pickle", "safe", "ratio", "ratio spread"))
    for name, make in SAMPLES.items():
        data = plain.dumps(make())
        assert safe.loads(data) == plain.loads(data)
        repeat = max(1, int(0.02 / max(per_decode(plain, data, 1), 1e-7)))
        a_times, b_times, ratios = [], [], []
        for i in range(rounds):
            pair = [(plain, a_times), (safe, b_times)]
            if i % 2:
                pair.reverse()
            got = {}
            for codec, out in pair:
                got[codec.serializer] = per_decode(codec, data, repeat)
                out.append(got[codec.serializer])
            ratios.append(got["safe"] / got["pickle"])
        print("%-16s %10.2f us %10.2f us %7.3fx  %.3f-%.3f" % (
            name, statistics.median(a_times) * 1e6, statistics.median(b_times) * 1e6,
            statistics.median(ratios), min(ratios), max(ratios)))


CALLGRIND_CODE = r"""
import gc, sys
gc.disable()
from fastmgr._backend import wire
sys.path.insert(0, sys.argv[4])
from dict_rule import SAMPLES
codec = wire.Codec(sys.argv[1])
data = wire.Codec("pickle").dumps(SAMPLES[sys.argv[2]]())
for _ in range(int(sys.argv[3])):
    codec.loads(data)
"""


def instructions(serializer, name, n, workdir):
    out = os.path.join(workdir, "cg.out")
    subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                    sys.executable, "-c", CALLGRIND_CODE, serializer, name, str(n),
                    os.path.dirname(os.path.abspath(__file__))],
                   check=True, capture_output=True)
    with open(out) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    os.unlink(out)
    return total


def callgrind():
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    print("\ninstructions per decode (callgrind)")
    print("%-16s %12s %12s %8s" % ("message", "pickle", "safe", "ratio"))
    with tempfile.TemporaryDirectory() as workdir:
        for name in SAMPLES:
            n = 10 if "100k" in name else 2000 if "10" in name or "small" in name else 200
            counts = {}
            for serializer in ("pickle", "safe"):
                counts[serializer] = (instructions(serializer, name, 2 * n, workdir)
                                      - instructions(serializer, name, n, workdir)) / n
            print("%-16s %12.0f %12.0f %7.3fx" % (name, counts["pickle"], counts["safe"],
                                                  counts["safe"] / counts["pickle"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--callgrind", action="store_true")
    args = parser.parse_args()
    from fastmgr._backend import wire
    print("wire: %s; load: %s" % (wire.IMPLEMENTATION, open("/proc/loadavg").read().strip()))
    wall_clock(args.rounds)
    if args.callgrind:
        callgrind()


if __name__ == "__main__":
    main()
