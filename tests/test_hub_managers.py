"""The hub end to end: a manager server and client processes, on the
stdlib and on fastmgr.  Objects that block or belong to a thread (an RLock
held across calls, a Condition, a Queue's blocking get, registered classes
that block or ask to be thread-bound) stop no other client.  Every wait is
bounded.
"""
import functools
import multiprocessing
import time

import pytest

from helpers import common
from helpers import hub as H
from helpers.common import Worker, finish
from helpers.hub_rig import WAIT, wait_for

pytestmark = pytest.mark.timeout(60)

receive = functools.partial(common.receive, timeout=WAIT)
result = functools.partial(common.child_result, timeout=WAIT)


METHODS = ["fork", "spawn"]


@pytest.fixture(params=METHODS)
def ctx(request):
    return multiprocessing.get_context(request.param)


@pytest.fixture
def children():
    """Starts child processes: start(ctx, target, *args) -> (process, our
    end of its pipe); any still running at the end of the test are killed."""
    started = []

    def start(ctx, target, *args):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=target, args=args + (theirs,), daemon=True)
        proc.start()
        theirs.close()
        started.append(proc)
        return proc, ours

    yield start
    for proc in started:
        proc.join(0.2)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


@pytest.fixture(scope="module")
def gate_manager(impl):
    m = H.gate_manager_class(impl)()
    m.start()
    yield m
    m.shutdown()


def in_new_thread(steps):
    """Run this process's side of a test from a new thread: its proxies
    then use a new connection, which no earlier test moved to a thread of
    its own (on fastmgr's server it starts on the shared loop)."""
    Worker(steps).outcome(3 * WAIT)


def _check_held_by_one_client(lock, ctx, children):
    """The child acquires lock and holds it across calls; this process
    cannot acquire it meanwhile, the child can again (re-entrant), and this
    process can once the child released it twice.  This process calls from
    a new thread: a new connection, which no earlier call has moved to a
    thread of its own."""
    proc, conn = children(ctx, H.rlock_owner, lock)

    def steps():
        assert receive(conn, proc) == "acquired"
        assert lock.acquire(timeout=0.2) is False
        conn.send("reacquire")
        assert receive(conn, proc) == "released once"  # still held once
        assert lock.acquire(blocking=False) is False
        conn.send("release")
        assert result(conn, proc) == [True, True]
        finish(proc)
        assert lock.acquire(timeout=WAIT) is True
        assert lock.acquire(timeout=WAIT) is True  # ours now, re-entrant
        lock.release()
        lock.release()

    in_new_thread(steps)


def test_rlock_owned_across_calls(impl, manager, ctx, children):
    """An RLock's owner is the thread that serves its client's connection:
    the same thread for every call of that client, and not the thread of
    another client's calls."""
    _check_held_by_one_client(manager.RLock(), ctx, children)


def test_class_that_asks_to_be_thread_bound(gate_manager, ctx, children):
    """A registered class with a true _fastmgr_thread_bound_ is served on
    its connection's own thread, so a lock it keeps is held per client."""
    _check_held_by_one_client(gate_manager.Keeper(), ctx, children)


def test_condition_wait_and_notify(manager, ctx, children):
    cond = manager.Condition()
    proc, conn = children(ctx, H.condition_waiter, cond)

    def steps():
        assert receive(conn, proc) == "waiting"
        with cond:  # taken once the child waits
            cond.notify()
        assert result(conn, proc) is True
        finish(proc)

    in_new_thread(steps)


def test_blocking_method_of_a_registered_class(gate_manager, ctx, children):
    """Gate.wait() blocks on the server until open() comes from another
    client process; the server serves that client meanwhile."""
    gate = gate_manager.Gate()
    proc, conn = children(ctx, H.gate_waiter, gate)

    def steps():
        assert receive(conn, proc) == "waiting"
        wait_for(lambda: gate.waiting() == 1)
        assert gate.echo("while it waits") == "while it waits"
        other = gate_manager.Gate()  # creating objects goes on too
        assert other.echo(1) == 1
        gate.open()
        assert result(conn, proc) is True
        finish(proc)
        assert gate.waiting() == 0

    in_new_thread(steps)


def test_blocking_get_does_not_stop_other_clients(manager, ctx, children):
    queue = manager.Queue()
    shared = manager.dict()
    proc, conn = children(ctx, H.queue_getter, queue)

    def steps():
        assert receive(conn, proc) == "getting"
        time.sleep(0.1)  # let the get() reach the server and block there
        for i in range(200):
            shared[i] = i * i
        assert len(shared) == 200 and shared[199] == 199 * 199
        assert proc.is_alive() and not conn.poll(0)  # still waiting for an item
        queue.put("item")
        assert result(conn, proc) == "item"
        finish(proc)

    in_new_thread(steps)
