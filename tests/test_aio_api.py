"""fastmgr.aio: what an async view offers, against real aio_manager processes
(fork and spawn), on the default event loop and on uvloop."""
import asyncio
import gc
import inspect
import queue
import sys

import pytest

import fastmgr
from fastmgr import ProcessError, RemoteError, aio
from helpers.aio import AioManager, CustomError, in_thread, loop_runner, start_manager

pytestmark = pytest.mark.timeout(120)


def test_aio_takes_proxies_and_managers_only(aio_manager):
    d = aio_manager.dict()
    view = aio(d)
    assert aio(view) is view and view.proxy is d
    assert aio(aio(aio_manager)).manager is aio_manager
    with pytest.raises(TypeError):
        aio(3)
    assert "async view" in repr(view) and "DictProxy" in repr(view)


def test_dict(aio_manager, aio_run):
    d = aio_manager.dict({"a": 1})

    async def main():
        ad = aio(d)
        assert await ad.get("a") == 1
        assert await ad.get("missing", "default") == "default"
        await ad.setitem("b", 2)
        assert await ad.getitem("b") == 2
        assert await ad.len() == 2
        assert await ad.contains("a") and not await ad.contains("zzz")
        await ad.delitem("a")
        assert await ad.copy() == {"b": 2}
        await ad.update({"c": 3}, d=4)
        assert sorted(await ad.keys()) == ["b", "c", "d"]
        assert await ad.pop("d") == 4
        assert await ad.or_({"x": 0}) == {"b": 2, "c": 3, "x": 0}
        assert await ad.ior({"y": 9}) is ad
        with pytest.raises(KeyError) as info:
            await ad.getitem("nope")
        assert info.value.args == ("nope",)
        assert "Traceback" in str(info.value.__cause__)
        return await ad._getvalue()

    assert aio_run(main) == {"b": 2, "c": 3, "y": 9}
    assert d.copy() == {"b": 2, "c": 3, "y": 9}  # the same object, seen synchronously


def test_list_and_async_for(aio_manager, aio_run):
    items = aio_manager.list([3, 1, 2])

    async def main():
        al = aio(items)
        await al.append(4)
        await al.extend([5])
        await al.setitem(0, 0)
        assert await al.getitem(-1) == 5
        assert await al.len() == 5
        await al.sort()
        with pytest.raises(IndexError):
            await al.getitem(99)
        assert await al.imul(2) is al
        return [x async for x in al]

    assert aio_run(main) == [0, 1, 2, 4, 5] * 2


def test_manager_view_makes_async_views(aio_run):
    m = start_manager()
    try:
        async def main():
            amgr = aio(m)
            before = await amgr._number_of_objects()
            ad = await amgr.dict({"k": "v"})
            maths = await amgr.Maths("made here")
            assert isinstance(ad, fastmgr.AsyncProxy) and isinstance(maths, fastmgr.AsyncProxy)
            assert await ad.get("k") == "v"
            assert await maths.add(2, 3) == 5
            assert await maths.repr() == "Maths('made here')"
            assert await amgr._number_of_objects() == before + 2
            assert "Maths" in dir(amgr) and "dict" in dir(amgr)
            with pytest.raises(AttributeError):
                amgr.no_such_typeid
            del ad, maths
            gc.collect()
            await (await amgr.list()).append(1)  # the decrefs leave with the next call
            assert await amgr._number_of_objects() == before + 0
        aio_run(main)
    finally:
        m.shutdown()

    async def not_started():
        await aio(AioManager()).dict()
    with pytest.raises(ProcessError):
        asyncio.run(not_started())


def test_a_view_nobody_keeps_lives_until_its_call_is_answered(aio_run):
    """A proxy made for one call and dropped at once: its reference goes
    only once the call is answered (the next call sends its decref)."""
    m = start_manager()
    try:
        async def main():
            amgr = aio(m)
            async with await amgr.Lock():
                pass
            await (await amgr.dict()).setitem("k", "v")
            await aio(m.list()).append(1)
            gc.collect()
            return await amgr._number_of_objects()

        assert aio_run(main) == 0
    finally:
        m.shutdown()


def test_errors_as_the_sync_call_raises_them(aio_manager, aio_run):
    maths = aio_manager.Maths()

    async def main():
        am = aio(maths)
        with pytest.raises(KeyError) as info:
            await am.fail_key("k")
        assert "fail_key" in str(info.value.__cause__)
        with pytest.raises(CustomError) as info:
            await am.fail_custom(7)
        assert type(info.value) is CustomError and info.value.args == (7,)
        with pytest.raises(RemoteError) as info:  # a result that does not pickle
            await am.unpicklable()
        with pytest.raises(RemoteError):
            await am._call("_not_exposed")
        with pytest.raises(type(sync_error)):  # an argument that does not pickle
            await am.echo(lambda: None)
        return await am.add(1, 2)  # still fine after all that

    try:
        maths.echo(lambda: None)
    except Exception as exc:
        sync_error = exc
    assert aio_run(main) == 3


def test_nested_proxies_come_back_as_views(aio_manager, aio_run):
    shelf = aio_manager.Shelf()
    outer = aio_manager.dict()
    outer["inner"] = aio_manager.dict({"deep": 1})

    async def main():
        item = await aio(shelf).item("tools")  # method_to_typeid: a new proxy
        assert isinstance(item, fastmgr.AsyncProxy)
        assert await item.repr() == "Maths('tools')"
        assert await item.add(1, 1) == 2
        inner = await aio(outer).getitem("inner")  # a proxy stored in a dict
        assert isinstance(inner, fastmgr.AsyncProxy)
        assert await inner.get("deep") == 1
        await inner.setitem("deep", 2)
        return item.proxy, inner.proxy

    item, inner = aio_run(main)
    assert item.add(2, 2) == 4 and inner["deep"] == 2  # the proxies work synchronously too


def test_iterators(aio_manager, aio_run):
    d = aio_manager.dict({1: "a", 2: "b", 3: "c"})

    async def main():
        ad = aio(d)
        keys = [k async for k in ad]
        it = await ad.iter()
        assert isinstance(it, fastmgr.AsyncProxy)
        first = await it.next()
        rest = [k async for k in it]
        with pytest.raises(StopAsyncIteration):
            await it.next()
        return keys, [first] + rest

    keys, again = aio_run(main)
    assert sorted(keys) == [1, 2, 3] and sorted(again) == [1, 2, 3]


def test_value_namespace_event_barrier(aio_manager, aio_run):
    value = aio_manager.Value("i", 1)
    ns = aio_manager.Namespace(x=1)
    event = aio_manager.Event()
    barrier = aio_manager.Barrier(3)

    async def main():
        av, ans, aev, ab = aio(value), aio(ns), aio(event), aio(barrier)
        assert await av.value == 1
        await av.set(5)
        assert await av.get() == 5
        assert await ans.getattr("x") == 1
        await ans.setattr("y", 2)
        await ans.delattr("x")
        with pytest.raises(AttributeError):
            await ans.getattr("x")
        assert not await aev.wait(0.05)
        waiter = asyncio.ensure_future(aev.wait())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await aev.set()
        assert await waiter is True and await aev.is_set()
        assert await ab.parties == 3 and not await ab.broken
        indexes = await asyncio.gather(ab.wait(), ab.wait(), ab.wait())
        return sorted(indexes)

    assert aio_run(main) == [0, 1, 2]
    assert value.value == 5 and ns.y == 2


def test_locks(aio_manager, aio_run):
    lock, rlock, sem = aio_manager.Lock(), aio_manager.RLock(), aio_manager.Semaphore(2)

    async def main():
        al, arl, asem = aio(lock), aio(rlock), aio(sem)
        async with al:
            assert await al.locked()
            assert not await al.acquire(False)
            assert not await al.acquire(True, 0.05)
        assert not await al.locked()
        async with arl:
            async with arl:  # re-entrant for the task that holds it
                pass

            async def other_task():
                with pytest.raises(RuntimeError):
                    await arl.release()  # not the owner
                return await arl.acquire(timeout=0.05)
            assert await asyncio.ensure_future(other_task()) is False
        assert await asyncio.ensure_future(arl.acquire(timeout=1))  # free again
        await asyncio.sleep(0)
        async with asem:
            async with asem:
                assert not await asem.acquire(timeout=0.05)
        # a Lock taken in one task may be released in another, as with threads
        assert await al.acquire()
        await asyncio.ensure_future(al.release())
        return await al.locked()

    assert aio_run(main) is False
    assert lock.acquire(timeout=1)  # nothing left held
    lock.release()


def test_condition(aio_manager, aio_run):
    cond = aio_manager.Condition()
    state = aio_manager.dict(ready=False)

    async def main():
        ac, ast = aio(cond), aio(state)

        async def consumer():
            async with ac:
                return await ac.wait_for(lambda: ast.get("ready"), timeout=10)

        async def producer():
            await asyncio.sleep(0.05)
            async with ac:
                await ast.setitem("ready", True)
                await ac.notify_all()

        got = await asyncio.gather(consumer(), consumer(), producer())
        async with ac:
            assert await ac.wait(0.05) is False
        with pytest.raises(RuntimeError):
            await ac.notify()  # without the lock, as the stdlib says
        return got[:2]

    assert aio_run(main) == [True, True]


def test_queues(aio_manager, aio_run):
    q, jq, small = aio_manager.Queue(), aio_manager.JoinableQueue(), aio_manager.Queue(1)

    async def main():
        aq, ajq, asmall = aio(q), aio(jq), aio(small)
        await aq.put(1)
        await aq.put_nowait(2)
        assert await aq.qsize() == 2
        assert [await aq.get(), await aq.get_nowait()] == [1, 2]
        with pytest.raises(queue.Empty):
            await aq.get_nowait()
        with pytest.raises(queue.Empty):
            await aq.get(timeout=0.05)
        with pytest.raises(queue.Empty):
            await aq.get(True, 0.7)  # longer than one slice on the server
        getter = asyncio.ensure_future(aq.get())
        await asyncio.sleep(0.1)
        await aq.put("late")
        assert await getter == "late"
        await asmall.put("x")
        with pytest.raises(queue.Full):
            await asmall.put_nowait("y")
        with pytest.raises(queue.Full):
            await asmall.put("y", timeout=0.05)
        putter = asyncio.ensure_future(asmall.put("y"))
        await asyncio.sleep(0.05)
        assert await asmall.get() == "x"
        await putter
        assert await asmall.get() == "y"
        await ajq.put("job")
        joiner = asyncio.ensure_future(ajq.join())
        assert await ajq.get() == "job"
        await asyncio.sleep(0.05)
        assert not joiner.done()
        await ajq.task_done()
        await joiner
        return await aq.empty()

    assert aio_run(main) is True


def test_pool_results(aio_manager, aio_run):
    pool = aio_manager.Pool(2)

    async def main():
        apool = aio(pool)
        result = await apool.apply_async(pow, (2, 10))
        assert isinstance(result, fastmgr.AsyncProxy)
        assert await result.get(timeout=10) == 1024
        return await apool.map(abs, [-1, -2])

    try:
        assert aio_run(main) == [1, 2]
    finally:
        pool.terminate()


def test_a_blocking_call_does_not_hold_up_others(aio_manager, aio_run):
    """A thread-bound object's call that blocks takes a lane of its own:
    calls on other objects, and quick calls, go on meanwhile."""
    waiter, d, q = aio_manager.Waiter(), aio_manager.dict(), aio_manager.Queue()

    async def main():
        aw, ad, aq = aio(waiter), aio(d), aio(q)
        blocked = [asyncio.ensure_future(aw.wait(20)), asyncio.ensure_future(aq.get())]
        await asyncio.sleep(0.1)
        for i in range(50):
            await ad.setitem(i, i)
        assert await aq.qsize() == 0 and await aw.pause(0) == 0
        assert not any(t.done() for t in blocked)
        await aw.set()
        await aq.put("go")
        return await asyncio.gather(*blocked)

    assert aio_run(main) == [True, "go"]


def test_many_calls_in_flight(aio_manager, aio_run):
    d = aio_manager.dict({i: i * i for i in range(500)})
    maths = aio_manager.Maths()

    async def main():
        ad, am = aio(d), aio(maths)
        squares = await asyncio.gather(*[ad.get(i) for i in range(500)])
        sums = await asyncio.gather(*[asyncio.ensure_future(am.add(i, 1)) for i in range(300)])
        mixed = await asyncio.gather(*[ad.get(i) if i % 2 else am.echo(i) for i in range(300)])
        return squares, sums, mixed

    squares, sums, mixed = aio_run(main)
    assert squares == [i * i for i in range(500)]
    assert sums == [i + 1 for i in range(300)]
    assert mixed == [i * i if i % 2 else i for i in range(300)]


def test_done_callbacks_of_calls_behave_as_a_futures(aio_manager, aio_run):
    # a call keeps its own done-callbacks (many run from one handle of the
    # loop): they run soon after, in order, each in its own context; a
    # callback that raises goes to the loop's exception handler
    import contextvars
    d = aio_manager.dict({i: i for i in range(50)})
    var = contextvars.ContextVar("var", default="unset")

    async def main():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda loop, context: reported.append(context["exception"]))
        ad = aio(d)
        seen = []
        calls = [ad.get(i) for i in range(50)]
        for i, call in enumerate(calls):
            var.set(i)
            ctx = contextvars.copy_context()
            call.add_done_callback(lambda c, i=i: seen.append((i, var.get(), c.result())),
                                   context=ctx)
            call.add_done_callback(lambda c: seen.append("second") if c is calls[0] else None)
        var.set("main")
        removed = calls[1].add_done_callback(str) or calls[1].remove_done_callback(str)
        calls[2].add_done_callback(lambda c: 1 / 0)
        assert not any(seen)
        results = await asyncio.gather(*calls)
        await asyncio.sleep(0)
        late = []
        calls[3].add_done_callback(late.append)  # a done call: soon, as a future does
        assert late == []
        await asyncio.sleep(0)
        return results, seen, removed, late == [calls[3]], reported

    results, seen, removed, late_ran, reported = aio_run(main)
    assert results == list(range(50))
    assert [entry for entry in seen if entry != "second"] == [(i, i, i) for i in range(50)]
    assert seen[1] == "second" and seen.count("second") == 1
    assert removed == 1 and late_ran
    assert len(reported) == 1 and isinstance(reported[0], ZeroDivisionError)


def test_the_same_proxy_sync_and_async(aio_manager, aio_run):
    d = aio_manager.dict()

    async def main():
        ad = aio(d)
        for i in range(20):
            d[i] = "sync"
            assert await ad.get(i) == "sync"
            await ad.setitem(i, "async")
            assert d[i] == "async"
        return len(d)

    assert aio_run(main) == 20
    assert in_thread(loop_runner(aio_run.kind), main) == 20  # a loop in another thread


def test_calls_behave_as_coroutines(aio_manager, aio_run):
    maths = aio_manager.Maths()

    async def main():
        am = aio(maths)
        call = am.add(1, 2)
        assert asyncio.iscoroutine(call) and asyncio.isfuture(call)
        assert asyncio.iscoroutinefunction(am.add)
        if sys.version_info >= (3, 12):
            assert inspect.iscoroutinefunction(am.add)
        results = [await asyncio.create_task(am.add(1, 1)),
                   await asyncio.wait_for(am.add(2, 2), 10),
                   await asyncio.shield(am.add(3, 3)), await call]
        if sys.version_info >= (3, 11):
            async with asyncio.TaskGroup() as group:
                task = group.create_task(am.add(4, 4))
            results.append(task.result())
        return results

    assert aio_run(main)[:4] == [2, 4, 6, 3]
    # made where no loop runs, it starts in the loop that awaits it
    assert asyncio.run(aio(maths).add(5, 5)) == 10


def test_timeouts(aio_run):
    m = start_manager(timeout=0.3)
    try:
        maths = m.Maths()

        async def main():
            am = aio(maths)
            with pytest.raises(TimeoutError):
                await am.slow(1.0, "late")
            assert await am.echo("mine") == "mine"  # never the late reply
            maths._set_timeout(5)
            assert await am.slow(0.5, "in time") == "in time"
            maths._set_timeout(0.1)
            with pytest.raises(TimeoutError):
                await am.slow(0.5, "late")
            maths._set_timeout(5)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(am.slow(0.5, "late"), 0.1)
            return await am.echo("last")

        assert aio_run(main) == "last"
    finally:
        m.shutdown()


def test_oneway(aio_manager, aio_run):
    d = aio_manager.dict()

    async def main():
        ad = aio(d)
        send = fastmgr.oneway(ad)
        for i in range(100):
            send[i] = i
        send.update({"done": True})
        return await ad.get("done"), await ad.len()

    assert aio_run(main) == (True, 101)
    with pytest.raises(TypeError):
        fastmgr.pipeline(aio(d))



def test_large_calls_in_flight_together(aio_manager, aio_run):
    """Calls whose requests are larger than a ring, in flight together:
    the lane writes the next while the server reads the one before and
    sends its reply (a wake-up that says there is room may come in with
    the replies).  Bytes of 64 KiB or more travel out of band; a str in
    the encoding."""
    maths = aio_manager.Maths()
    text = "x" * (2 << 20)
    blobs = [bytes([i]) * (64 << 10) for i in range(64)]   # 64 buffers in one message

    async def main():
        am = aio(maths)
        texts = await asyncio.gather(*[am.echo(text) for _ in range(3)])
        many = await asyncio.gather(*[am.echo(blobs) for _ in range(3)])
        return texts == [text] * 3 and many == [blobs] * 3

    assert aio_run(main)


def test_arrays_and_buffers_come_out_of_band(aio_manager, aio_run):
    """numpy arrays, bytes and bytearrays through the loop's lanes, both
    ways (their bytes out of band), and through a Queue."""
    np = pytest.importorskip("numpy")
    maths, q = aio_manager.Maths(), aio_manager.Queue()
    array = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)   # 8 MiB
    blob = bytes(range(256)) * 4096                                      # 1 MiB

    async def main():
        am, aq = aio(maths), aio(q)
        back = await am.echo(array)
        assert back.dtype == array.dtype and back.shape == array.shape
        assert np.array_equal(back, array) and back.flags.writeable
        fortran = np.asfortranarray(array[:, :512])
        back = await am.echo(fortran)
        assert np.array_equal(back, fortran) and back.flags.f_contiguous
        assert await am.echo(blob) == blob
        assert await am.echo(bytearray(blob)) == bytearray(blob)
        await aq.put(array)
        assert np.array_equal(await aq.get(timeout=10), array)
        return True

    assert aio_run(main)
