"""What the child processes of test_aio_programs.py run: the programs of
test_programs.py, their main an ``async def`` using ``fastmgr.aio``.
Module-level, so that they pickle by reference under spawn (children
import this module as ``helpers.aio_programs``)."""
import asyncio
import traceback

from helpers.programs import _connect

from fastmgr import aio


def _report(out, main, *args):
    """asyncio.run(main(*args)); send ('ok', result) or ('error', traceback)."""
    try:
        result = asyncio.run(asyncio.wait_for(main(*args), 60))
    except BaseException:
        out.send(("error", traceback.format_exc()))
        raise
    else:
        out.send(("ok", result))
    finally:
        out.close()


async def _put(address, authkey, items):
    aq = aio(_connect(address, authkey).get_queue())
    for item in items:
        await aq.put(item)
    return len(items)


async def _get(address, authkey, count, timeout):
    aq = aio(_connect(address, authkey).get_queue())
    return [await aq.get(timeout=timeout) for _ in range(count)]


async def _bump(counter, times):
    ac = aio(counter)
    await asyncio.gather(*[ac.increment() for _ in range(times)])
    return await ac.value(), repr(counter)


def queue_putter(address, authkey, items, out):
    _report(out, _put, address, authkey, items)


def queue_getter(address, authkey, count, out, timeout=20):
    _report(out, _get, address, authkey, count, timeout)


def bump(counter, times, out):
    _report(out, _bump, counter, times)
