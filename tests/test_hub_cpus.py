"""Where a manager's processes run: a server and client pinned to one CPU
still serve every kind of call, and so does the plain spin policy.  Every
wait is bounded.
"""
import contextlib
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

import fastmgr
from helpers.common import child_env, finish
from helpers.hub_rig import WAIT

pytestmark = pytest.mark.timeout(60)


def _set_affinity(tid, cpus):
    with contextlib.suppress(ProcessLookupError):  # a server thread that has ended
        os.sched_setaffinity(tid, cpus)


def _put_later(q):
    time.sleep(0.2)
    q.put("late")


def test_everything_on_one_cpu():
    """Server and client pinned to one CPU, where a wait soon learns to
    spin only by yielding the CPU: calls, a 1 MiB argument (a detour through the
    socket), and a blocking get that another process's put ends, all come
    through."""
    m = fastmgr.SyncManager()
    m.start()
    mask = os.sched_getaffinity(0)
    server = m._process.pid
    pinned = [int(t) for t in os.listdir("/proc/%d/task" % server)] + [os.getpid()]
    for tid in pinned:
        _set_affinity(tid, {min(mask)})
    try:
        d, q = m.dict(), m.Queue()
        for i in range(2000):
            d[i % 10] = i
            assert d[i % 10] == i
        blob = os.urandom(1 << 20)
        d["blob"] = blob
        assert d["blob"] == blob
        child = multiprocessing.get_context("fork").Process(target=_put_later, args=(q,))
        child.start()
        assert q.get(timeout=WAIT) == "late"
        finish(child)
    finally:
        for tid in pinned:
            _set_affinity(tid, mask)
        m.shutdown()


PLAIN_PROGRAM = r"""
import multiprocessing, os, sys, time
import fastmgr

def put_later(q):
    time.sleep(0.2)
    q.put("late")

if sys.argv[1] == "one CPU":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # every process after inherits it
m = fastmgr.SyncManager()
m.start()
try:
    d, q, lock = m.dict(), m.Queue(), m.Lock()
    for i in range(2000):
        d[i % 10] = i
        assert d[i % 10] == i
    blob = os.urandom(1 << 20)
    d["blob"] = blob
    assert d["blob"] == blob
    for _ in range(200):
        assert lock.acquire(timeout=30)
        lock.release()
    child = multiprocessing.get_context("fork").Process(target=put_later, args=(q,))
    child.start()
    assert q.get(timeout=30) == "late"
    child.join(30)
finally:
    m.shutdown()
print("ok")
"""


@pytest.mark.parametrize("where", ["any CPU", "one CPU"])
def test_the_plain_spin_policy_serves_every_kind_of_call(where):
    """FASTMGR_SPIN_POLICY=plain (adaptive spin-then-block and the spinner
    slots alone): calls, a 1 MiB argument, a lock, and a blocking get that
    another process's put ends, on any CPU and with everything on one."""
    result = subprocess.run([sys.executable, "-c", PLAIN_PROGRAM, where], capture_output=True,
                            text=True, env=child_env(FASTMGR_SPIN_POLICY="plain"), timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
