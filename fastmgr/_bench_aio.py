"""The asyncio rows of ``python -m fastmgr bench``.

What an asyncio program does today with a stdlib manager is hand each call
to a thread: ``await loop.run_in_executor(None, d.get, k)``.  Each row
times that against ``await fastmgr.aio(d).get(k)`` on the same kind of
loop, in alternating rounds (a round: one ``run_until_complete`` of a
batch; the figure: the median over rounds of the time per op):

- ``asyncio, await dict get``: one await at a time;
- ``asyncio, 1,000 concurrent dict gets``: one ``gather`` of 1,000
  awaits (the executor's threads against one manager connection);

each with the default event loop and, when it is installed, uvloop.
"""
import asyncio
import statistics
import time

import fastmgr

__all__ = ["AIO_ROWS", "measure_aio_op", "new_loop"]

CONCURRENT = 1000


def new_loop(kind):
    """A new event loop of kind "asyncio" or "uvloop"."""
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def uvloop_available():
    import importlib.util
    return importlib.util.find_spec("uvloop") is not None


def one_at_a_time(m, impl):
    """async batch(n): n dict gets, each awaited before the next."""
    d = m.dict({"key": 1})
    if impl == "fastmgr":
        ad = fastmgr.aio(d)

        async def batch(n):
            for _ in range(n):
                await ad.get("key")
    else:
        async def batch(n):
            run = asyncio.get_running_loop().run_in_executor
            for _ in range(n):
                await run(None, d.get, "key")
    return batch


def concurrent(m, impl):
    """async batch(n): n gathers of CONCURRENT dict gets each."""
    d = m.dict({i: i for i in range(CONCURRENT)})
    keys = range(CONCURRENT)
    if impl == "fastmgr":
        ad = fastmgr.aio(d)

        async def batch(n):
            for _ in range(n):
                await asyncio.gather(*[ad.get(k) for k in keys])
    else:
        async def batch(n):
            run = asyncio.get_running_loop().run_in_executor
            for _ in range(n):
                await asyncio.gather(*[run(None, d.get, k) for k in keys])
    return batch


#: (name, batch maker, ops a round, loop kind)
AIO_ROWS = [
    ("asyncio, await dict get", one_at_a_time, 1000, "asyncio"),
    ("asyncio, 1,000 concurrent dict gets", concurrent, 5, "asyncio"),
    ("uvloop, await dict get", one_at_a_time, 1000, "uvloop"),
    ("uvloop, 1,000 concurrent dict gets", concurrent, 5, "uvloop"),
]


def measure_aio_op(make_batch, loop_kind, start_manager, implementations, n, rounds):
    """{impl: seconds per op}: each implementation's batch on a loop of its
    own, rounds interleaved, after a warm-up round each."""
    managers, loops, batches = [], {}, {}
    try:
        for impl in implementations:
            managers.append(start_manager(impl))
            loops[impl] = new_loop(loop_kind)
            batches[impl] = make_batch(managers[-1], impl)
        samples = {impl: [] for impl in implementations}
        for impl in implementations:
            loops[impl].run_until_complete(batches[impl](max(1, n // 10)))
        for _ in range(rounds):
            for impl in implementations:
                start = time.perf_counter()
                loops[impl].run_until_complete(batches[impl](n))
                samples[impl].append((time.perf_counter() - start) / n)
        return {impl: statistics.median(s) for impl, s in samples.items()}
    finally:
        batches.clear()
        for loop in loops.values():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
        for m in managers:
            m.shutdown()
