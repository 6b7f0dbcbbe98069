"""Instructions per awaited dict get in the client process, with callgrind:
``fastmgr.aio`` against the stdlib through ``loop.run_in_executor``, and
asyncio's own share (a ``gather`` over bare futures, each set by a
callback of its own, or all by one), with spinning off.

    python bench/count_aio_instructions.py [--rounds 4] [--loop asyncio --loop uvloop]

Each case runs under callgrind twice, with N and 2N rounds (a round: one
``gather`` of 1,000 gets, or 1,000 gets awaited one at a time); the
difference divided by the calls is the cost of one call, free of start-up
and shut-down.  The manager's server runs natively.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

SERVER_CODE = r"""
import sys
impl, address = sys.argv[1], sys.argv[2]
if impl == "fastmgr":
    from fastmgr import SyncManager
else:
    from multiprocessing.managers import SyncManager
server = SyncManager(address=address, authkey=b"count").get_server()
open(address + ".ready", "w").close()
server.serve_forever()
"""

CLIENT_CODE = r"""
import asyncio, sys
case, loop_kind, address, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
CALLS = 1000
if case.startswith("stdlib"):
    from multiprocessing.managers import SyncManager
else:
    from fastmgr import SyncManager
    import fastmgr
m = SyncManager(address=address, authkey=b"count")
m.connect()
d = m.dict({i: i for i in range(CALLS)})
keys = range(CALLS)
if case == "fastmgr-gather":
    ad = fastmgr.aio(d)
    async def round_():
        await asyncio.gather(*[ad.get(k) for k in keys])
elif case == "fastmgr-one":
    ad = fastmgr.aio(d)
    async def round_():
        for k in keys:
            await ad.get(k)
elif case == "stdlib-gather":
    async def round_():
        run = asyncio.get_running_loop().run_in_executor
        await asyncio.gather(*[run(None, d.get, k) for k in keys])
elif case == "stdlib-one":
    async def round_():
        run = asyncio.get_running_loop().run_in_executor
        for k in keys:
            await run(None, d.get, k)
elif case == "futures-gather":
    async def round_():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for k in keys]
        for k, f in zip(keys, futs):
            loop.call_soon(f.set_result, k)
        await asyncio.gather(*futs)
elif case == "futures-batch":
    async def round_():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for k in keys]
        def resolve_all():
            for k, f in zip(keys, futs):
                f.set_result(k)
        loop.call_soon(resolve_all)
        await asyncio.gather(*futs)
if loop_kind == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
async def main():
    await round_()  # warm-up: connections, the first call's questions
    for _ in range(rounds):
        await round_()
loop.run_until_complete(main())
loop.run_until_complete(loop.shutdown_asyncgens())
loop.run_until_complete(loop.shutdown_default_executor())
loop.close()
"""

CASES = ["stdlib-one", "stdlib-gather", "fastmgr-one", "fastmgr-gather", "futures-gather",
         "futures-batch"]


def _total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in " + path)


def _wait_ready(address, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(address + ".ready"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)


def measure(case, loop_kind, rounds, address, env, keep=None):
    """Instructions of the client for one run of `rounds` rounds."""
    out = keep or address + ".%s-%s-%d.cg" % (case, loop_kind, rounds)
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
    if keep:
        cmd.append("--dump-instr=yes")
    cmd += [sys.executable, "-c", CLIENT_CODE, case, loop_kind, address, str(rounds)]
    subprocess.run(cmd, env=env, check=True, timeout=1200, stderr=subprocess.DEVNULL)
    total = _total(out)
    if not keep:
        os.unlink(out)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--loop", action="append", choices=["asyncio", "uvloop"])
    parser.add_argument("--case", action="append", choices=CASES)
    parser.add_argument("--keep", help="also write a profile (--dump-instr) of the larger "
                        "run of each case to KEEP-<case>-<loop>.cg")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    env = dict(os.environ, FASTMGR_SPIN_US="0", PYTHONHASHSEED="0")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        servers = {}
        try:
            for impl in ("stdlib", "fastmgr"):
                address = os.path.join(workdir, impl + ".sock")
                servers[impl] = (address, subprocess.Popen(
                    [sys.executable, "-c", SERVER_CODE, impl, address], env=env,
                    stderr=subprocess.DEVNULL))
                _wait_ready(address, servers[impl][1])
            for loop_kind in args.loop or ["asyncio", "uvloop"]:
                for case in args.case or CASES:
                    address = servers["stdlib" if case.startswith("stdlib") else "fastmgr"][0]
                    small = measure(case, loop_kind, args.rounds, address, env)
                    keep = args.keep and "%s-%s-%s.cg" % (args.keep, case, loop_kind)
                    large = measure(case, loop_kind, 2 * args.rounds, address, env, keep)
                    per_call = (large - small) / (args.rounds * 1000)
                    results[(case, loop_kind)] = per_call
                    print("%-8s %-15s %8.0f instructions per call" % (loop_kind, case, per_call),
                          flush=True)
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait(60)
    return results


if __name__ == "__main__":
    main()
