"""The programs of test_programs.py with an ``async def`` main: the same
managers and servers, their clients using ``fastmgr.aio``; fork and spawn,
unix and TCP sockets.  Every wait is bounded; every process is stopped in
a ``finally`` block."""
import asyncio
import errno
import gc
import multiprocessing
import re
import socket

import pytest

from helpers import aio_programs, programs
from helpers.common import child_result, finish, receive
from helpers.programs import AUTHKEY, CustomError, MyManager, QueueManager
from fastmgr import AsyncProxy, AuthenticationError, AutoProxy, RemoteError, Token, aio

METHODS = ["fork", "spawn"]
ITEMS = [1, -7, 2 ** 70, "text", "h\u00e9llo", b"\x00raw bytes", (1, "two", 3.0),
         {"key": [1, 2, 3], "none": None, 5: (6,)}]

pytestmark = pytest.mark.timeout(90)


def _stop(proc, timeout=5):
    if proc.pid is None:
        return
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout)


def _address(transport, tmp_path, attempt):
    if transport == "unix":
        return str(tmp_path / ("srv%d.sock" % attempt))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return ("127.0.0.1", sock.getsockname()[1])


def _start_server(ctx, target, transport, tmp_path, procs, extra=()):
    """target(address, AUTHKEY, status, *extra) in a process of ctx."""
    for attempt in range(5):
        address = _address(transport, tmp_path, attempt)
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=target, args=(address, AUTHKEY, writer) + tuple(extra))
        proc.start()
        procs.append(proc)
        writer.close()
        message = receive(reader, proc)
        if message[0] == "oserror" and message[1] == errno.EADDRINUSE:
            finish(proc)
            continue
        assert message[:2] == ("ok", address), message
        return address, reader
    pytest.fail("no free address after 5 attempts")


def _child(ctx, target, args, procs):
    """Start target(*args, out) in a child; return the reading end."""
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=tuple(args) + (writer,))
    proc.start()
    procs.append(proc)
    writer.close()
    return reader, proc


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("method", METHODS)
def test_custom_manager(method, transport):
    address = None if transport == "unix" else ("127.0.0.1", 0)
    with MyManager(address=address, ctx=multiprocessing.get_context(method)) as m:
        async def main():
            amgr = aio(m)
            baseline = await amgr._number_of_objects()
            maths = await amgr.Maths()
            assert await maths.add(4, 3) == 7 and await maths.mul(7, 8) == 56
            assert await maths.repr() == "MathsClass(label='maths', calls=2)"
            with pytest.raises(KeyError) as info:
                await maths.fail_key("missing")
            assert info.value.args == ("missing",) and "fail_key" in str(info.value.__cause__)
            with pytest.raises(ValueError) as info:
                await maths.fail_value("bad", 3)
            assert info.value.args == ("bad", 3)
            with pytest.raises(CustomError) as info:
                await maths.fail_custom(7)
            assert info.value.code == 7 and "fail_custom" in str(info.value.__cause__)
            with pytest.raises(RemoteError):
                await maths._call("_secret")
            del info
            other = await amgr.Maths("other")
            assert await other.add(0, 5) == 5
            assert await amgr._number_of_objects() == baseline + 2
            del other
            gc.collect()
            assert await amgr._number_of_objects() == baseline + 1
            parent = await amgr.Parent()
            child = await parent.child("alice")
            assert isinstance(child, AsyncProxy)
            assert re.fullmatch(r"<AutoProxy\[Child\] object, typeid 'Child' at 0x[0-9a-f]+>",
                                repr(child.proxy))
            assert await child.hello() == "hello from alice"
            await child.set_value(42)
            assert await parent.child_value("alice") == 42
            children = await asyncio.gather(*[parent.child(n) for n in ("bob", "carol")])
            assert [await c.hello() for c in children] == ["hello from bob", "hello from carol"]
            assert await parent.count() == 3
            del child, children, parent
            gc.collect()
            assert await maths.add(2, 2) == 4
            del maths
            gc.collect()
            return baseline, await amgr._number_of_objects()

        baseline, left = asyncio.run(asyncio.wait_for(main(), 60))
        assert left == baseline


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("method", METHODS)
def test_remote_manager(method, transport, tmp_path):
    ctx = multiprocessing.get_context(method)
    procs = []
    try:
        address, _ = _start_server(ctx, programs.queue_server, transport, tmp_path, procs)
        get_r, getter = _child(ctx, aio_programs.queue_getter,
                               (address, AUTHKEY, len(ITEMS)), procs)
        put_r, putter = _child(ctx, aio_programs.queue_putter, (address, AUTHKEY, ITEMS), procs)
        assert child_result(put_r, putter) == len(ITEMS)
        got = child_result(get_r, getter)
        assert got == ITEMS and [type(x) for x in got] == [type(x) for x in ITEMS]
        finish(putter)
        finish(getter)

        QueueManager.register("get_queue")
        good = QueueManager(address=address, authkey=AUTHKEY)
        good.connect()
        queue = good.get_queue()

        async def main():
            aq = aio(queue)
            await aq.put(("last", 1))
            assert await aq.get(timeout=5) == ("last", 1)
            # a proxy made with the wrong key: its async lanes are refused too
            wrong = AutoProxy(Token("get_queue", address, queue._id), "pickle",
                              authkey=b"not the key", exposed=("qsize",), incref=False)
            with pytest.raises(AuthenticationError):
                await aio(wrong).qsize()
            return await aq.empty()

        assert asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        for proc in procs:
            _stop(proc)


@pytest.mark.parametrize("method", METHODS)
def test_local_processes_and_remote_manager(method, tmp_path):
    count = 50
    ctx = multiprocessing.get_context(method)
    procs = []
    try:
        address, status = _start_server(ctx, programs.producer_server, "unix", tmp_path, procs,
                                        extra=(method, count))
        tag, producer_pid = receive(status, procs[0])
        assert tag == "pid"
        get_r, client = _child(ctx, aio_programs.queue_getter, (address, AUTHKEY, count + 1),
                               procs)
        got = child_result(get_r, client)
        assert got[0] == ("from", method, procs[0].pid)
        assert got[1:] == [("item", i, "x" * (i % 7)) for i in range(count)]
        finish(client)
    finally:
        for proc in procs:
            _stop(proc)


@pytest.mark.parametrize("method", METHODS)
def test_proxy_passed_to_child(method):
    ctx = multiprocessing.get_context(method)
    times = 25
    with MyManager(ctx=ctx) as m:
        counter = m.Counter(100)
        procs = []
        try:
            out, child = _child(ctx, aio_programs.bump, (counter, times), procs)
            value, child_repr = child_result(out, child)
            finish(child)
        finally:
            for proc in procs:
                _stop(proc)
        assert value == 100 + times
        assert "AutoProxy[Counter]" in child_repr

        async def main():
            ac = aio(counter)
            return await ac.value(), await ac.increment(5)

        assert asyncio.run(asyncio.wait_for(main(), 60)) == (100 + times, 105 + times)
