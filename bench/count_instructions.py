"""Instructions per custom-method call, client side and server side, with
callgrind: fastmgr against the stdlib, with spinning off.

    python bench/count_instructions.py [--calls 2000]

Each side is run under callgrind twice, with N and 2N calls; the difference
divided by N is the cost of one call, free of start-up and shut-down.  The
other side runs natively.  Instruction counts do not depend on the load of
the machine, so they are repeatable where wall-clock times are not.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)

SERVER_CODE = r"""
import sys
impl, address = sys.argv[1], sys.argv[2]
if impl == "fastmgr":
    from fastmgr import BaseManager
else:
    from multiprocessing.managers import BaseManager
class Maths:
    def add(self, x, y):
        return x + y
class M(BaseManager):
    pass
M.register("Maths", Maths)
server = M(address=address, authkey=b"count").get_server()
open(address + ".ready", "w").close()
server.serve_forever()
"""

CLIENT_CODE = r"""
import sys
impl, address, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
if impl == "fastmgr":
    from fastmgr import BaseManager
else:
    from multiprocessing.managers import BaseManager
class M(BaseManager):
    pass
M.register("Maths")
m = M(address=address, authkey=b"count")
m.connect()
maths = m.Maths()
maths.add(1, 2)
for i in range(calls):
    maths.add(i, 1)
"""


def _callgrind(out):
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]


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


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(impl, side, calls, workdir, env):
    """Instructions of `side` for one run of `calls` calls."""
    address = os.path.join(workdir, "%s-%s-%d.sock" % (impl, side, calls))
    out = address + ".cg"
    server_cmd = [sys.executable, "-c", SERVER_CODE, impl, address]
    client_cmd = [sys.executable, "-c", CLIENT_CODE, impl, address, str(calls)]
    if side == "server":
        server_cmd = _callgrind(out) + server_cmd
    else:
        client_cmd = _callgrind(out) + client_cmd
    server = subprocess.Popen(server_cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(address, server)
        subprocess.run(client_cmd, env=env, check=True, timeout=600, stderr=subprocess.DEVNULL)
        if side == "server":
            time.sleep(0.5)
    finally:
        # SIGTERM lets callgrind write its totals
        _stop(server)
    # one file per process, all threads included
    return _total(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--impl", action="append", choices=["stdlib", "fastmgr"])
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    env = dict(os.environ, FASTMGR_SPIN_US="0", PYTHONHASHSEED="0")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for impl in args.impl or ["stdlib", "fastmgr"]:
            for side in ("client", "server"):
                small = measure(impl, side, args.calls, workdir, env)
                large = measure(impl, side, 2 * args.calls, workdir, env)
                results[(impl, side)] = (large - small) / args.calls
                print("%-8s %-6s %8.0f instructions per call" % (impl, side, results[(impl, side)]),
                      flush=True)
    return results


if __name__ == "__main__":
    main()
