"""fastmgr.aio: cancellation loses nothing, the loop never blocks, and a
aio_manager that dies fails every pending await at once.  Real aio_manager
processes (fork and spawn), default event loop and uvloop."""
import asyncio
import os
import queue
import random
import signal
import time

import pytest

from helpers.aio import start_manager
from fastmgr import ManagerGone, aio

pytestmark = pytest.mark.timeout(180)


def test_a_cancelled_call_leaves_its_lane_to_the_next(aio_manager, aio_run):
    maths = aio_manager.Maths()

    async def main():
        am = aio(maths)
        slow = asyncio.ensure_future(am.slow(0.3, "late"))
        await asyncio.sleep(0.05)
        slow.cancel()
        answers = await asyncio.gather(*[am.echo(i) for i in range(20)])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(am.slow(0.3, "late"), 0.05)
        answers.append(await am.echo("mine"))
        await asyncio.sleep(0.4)  # the late replies come, and go nowhere
        answers.append(await am.echo("last"))
        return answers

    assert aio_run(main) == list(range(20)) + ["mine", "last"]


def test_a_cancelled_get_hands_its_item_to_the_next_get(aio_manager, aio_run):
    q = aio_manager.Queue()

    async def main():
        aq = aio(q)
        getter = asyncio.ensure_future(aq.get())
        await asyncio.sleep(0.1)
        getter.cancel()
        await aq.put("first")
        await aq.put("second")
        # whichever request took "first" on the server, the next get here has it
        return [await aq.get(timeout=5), await aq.get(timeout=5)]

    assert aio_run(main) == ["first", "second"]


def test_items_nobody_took_go_back_when_the_loop_ends(aio_manager, aio_run):
    q = aio_manager.Queue()

    async def main():
        aq = aio(q)
        getters = [asyncio.ensure_future(aq.get()) for _ in range(3)]
        await asyncio.sleep(0.1)
        for getter in getters:
            getter.cancel()
        for item in ("a", "b"):
            q.put(item)  # from outside: the cancelled requests may take them
        await asyncio.sleep(0.1)

    started = time.monotonic()
    aio_run(main)
    assert time.monotonic() - started < 10
    assert sorted([q.get(timeout=5), q.get(timeout=5)]) == ["a", "b"]
    assert q.empty()


def test_many_cancelled_gets_lose_and_duplicate_nothing(aio_manager, aio_run):
    """Consumers whose gets are cancelled at random (task.cancel, wait_for
    timeouts) against producers: every item arrives exactly once."""
    q = aio_manager.Queue()
    count, consumers = 600, 25

    async def main():
        aq = aio(q)
        got = []
        enough = asyncio.Event()

        async def consume(seed):
            rnd = random.Random(seed)
            while not enough.is_set():
                try:
                    if rnd.random() < 0.5:
                        item = await asyncio.wait_for(aq.get(), rnd.uniform(0.0005, 0.03))
                    else:
                        task = asyncio.ensure_future(aq.get(timeout=rnd.choice([None, 0.01, 2])))
                        await asyncio.sleep(rnd.uniform(0, 0.01))
                        if rnd.random() < 0.6:
                            task.cancel()
                        item = await task
                except (asyncio.TimeoutError, asyncio.CancelledError, queue.Empty):
                    continue
                got.append(item)
                if len(got) == count:
                    enough.set()

        async def produce(start):
            for i in range(start, count, 2):
                await aq.put(i)
                if i % 25 == 0:
                    await asyncio.sleep(0.002)

        tasks = [asyncio.ensure_future(consume(seed)) for seed in range(consumers)]
        await asyncio.gather(produce(0), produce(1))
        await asyncio.wait_for(enough.wait(), 60)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return got

    got = aio_run(main)
    assert len(got) == count and sorted(got) == list(range(count))
    assert q.empty()


def test_one_consumer_with_cancelled_gets_keeps_the_order(aio_manager, aio_run):
    """Items a cancelled get took come out of the next gets in the order
    they left the queue."""
    q = aio_manager.Queue()
    count = 200

    async def main():
        aq = aio(q)
        got = []

        async def produce():
            for i in range(count):
                await aq.put(i)
                if i % 10 == 0:
                    await asyncio.sleep(0.003)

        async def consume():
            rnd = random.Random(7)
            while len(got) < count:
                try:
                    got.append(await asyncio.wait_for(aq.get(), rnd.uniform(0.0005, 0.01)))
                except asyncio.TimeoutError:
                    pass

        await asyncio.gather(produce(), consume())
        return got

    assert aio_run(main) == list(range(count))


def test_a_cancelled_acquire_gives_the_lock_back(aio_manager, aio_run):
    lock = aio_manager.Lock()

    async def main():
        al = aio(lock)
        lock.acquire()
        waiting = asyncio.ensure_future(al.acquire())
        await asyncio.sleep(0.1)
        waiting.cancel()
        lock.release()  # the cancelled request may take it now: it gives it back
        other = [await asyncio.ensure_future(al.acquire(timeout=5))]
        await al.release()
        return other

    assert aio_run(main) == [True]
    assert lock.acquire(timeout=5)
    lock.release()


def test_locks_under_cancellation_stay_exclusive(aio_manager, aio_run):
    lock = aio_manager.Lock()
    holders = aio_manager.Value("i", 0)

    async def main():
        al, ah = aio(lock), aio(holders)
        entered = 0

        async def worker(seed):
            nonlocal entered
            rnd = random.Random(seed)
            for _ in range(20):
                try:
                    if rnd.random() < 0.5:
                        await asyncio.wait_for(al.acquire(), rnd.uniform(0.001, 0.05))
                    else:
                        task = asyncio.ensure_future(al.acquire())
                        await asyncio.sleep(rnd.uniform(0, 0.02))
                        task.cancel()
                        await task
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    continue
                try:
                    inside = await ah.get()
                    assert inside == 0, "two holders at once"
                    await ah.set(1)
                    entered += 1
                    await asyncio.sleep(rnd.uniform(0, 0.003))
                    await ah.set(0)
                finally:
                    await al.release()

        await asyncio.gather(*[worker(seed) for seed in range(12)])
        return entered

    assert aio_run(main) > 0
    assert lock.acquire(timeout=5)  # every cancelled acquire gave it back
    lock.release()


def test_a_cancelled_condition_wait(aio_manager, aio_run):
    cond = aio_manager.Condition()

    async def main():
        ac = aio(cond)

        async def waiter():
            async with ac:
                await ac.wait()

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with ac:  # the lock is free again for others
            await ac.notify_all()
        return True

    assert aio_run(main)
    assert cond.acquire(timeout=5)
    cond.release()


def test_the_loop_is_never_blocked(aio_manager, aio_run):
    """A Queue.get that waits 10 s: a 1 ms ticker in the same loop keeps
    ticking.  (A blocked loop would lag by the whole 10 s; the bound here
    is generous so that a busy machine does not fail the test.)"""
    q = aio_manager.Queue()

    async def main():
        aq = aio(q)
        lags = []
        getter = asyncio.ensure_future(aq.get(timeout=10))
        loop = asyncio.get_running_loop()
        while not getter.done():
            before = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - before - 0.001)
        with pytest.raises(queue.Empty):
            getter.result()
        return lags

    lags = aio_run(main)
    lags.sort()
    print("ticker lag over 10 s: median %.2f ms, 99%% %.2f ms, max %.2f ms (%s)" % (
        lags[len(lags) // 2] * 1e3, lags[int(len(lags) * 0.99)] * 1e3, lags[-1] * 1e3,
        aio_run.kind))
    assert len(lags) > 1000
    assert lags[-1] < 1.0


def test_calls_answered_at_once_still_let_other_tasks_run(aio_manager, aio_run):
    """A task that awaits call after call, each reply caught by spinning,
    yields to the loop now and then: a 1 ms ticker keeps ticking."""
    d = aio_manager.dict({"k": 1})

    async def main():
        ad = aio(d)
        loop = asyncio.get_running_loop()
        stop = loop.time() + 2
        calls = 0

        async def busy():
            nonlocal calls
            while loop.time() < stop:
                await ad.get("k")
                calls += 1

        async def ticker():
            lags = []
            while loop.time() < stop:
                before = loop.time()
                await asyncio.sleep(0.001)
                lags.append(loop.time() - before - 0.001)
            return lags

        lags = (await asyncio.gather(busy(), ticker()))[1]
        return calls, sorted(lags)

    calls, lags = aio_run(main)
    print("%d calls in 2 s beside a ticker: its lag median %.2f ms, max %.2f ms (%s)" % (
        calls, lags[len(lags) // 2] * 1e3, lags[-1] * 1e3, aio_run.kind))
    assert calls > 0 and len(lags) > 100
    assert lags[-1] < 1.0


def test_a_killed_manager_fails_every_pending_await(aio_run):
    m = start_manager()
    try:
        q, d = m.Queue(), m.dict({"k": 1})

        async def main():
            aq, ad = aio(q), aio(d)
            assert await ad.get("k") == 1
            pending = [asyncio.ensure_future(aq.get()) for _ in range(90)]
            pending += [asyncio.ensure_future(ad.get("k")) for _ in range(10)]
            await asyncio.sleep(0.3)
            os.kill(m._process.pid, signal.SIGKILL)
            started = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 20)
            took = time.monotonic() - started
            gone = [x for x in outcomes if isinstance(x, ManagerGone)]
            assert len(gone) >= 90, outcomes
            assert all(isinstance(x, ManagerGone) or x == 1 for x in outcomes)
            with pytest.raises(ManagerGone):
                await ad.get("k")
            await asyncio.sleep(0.01)  # the loop goes on
            return took

        took = aio_run(main)
        print("100 pending awaits failed within %.3f s" % took)
        assert took < 10
    finally:
        m._process.join(5)
        m.shutdown()
