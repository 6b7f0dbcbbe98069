"""Whole programs written against the multiprocessing.managers API, run on
fastmgr under both start methods and over unix and TCP sockets.

The helpers the children run live in ``helpers.programs`` (importable by name
under ``spawn``).  Every wait is bounded and every process is stopped in a
``finally`` block.
"""
import errno
import gc
import multiprocessing
import os
import re
import signal
import socket
import time

import pytest

from helpers import programs
from helpers.programs import AUTHKEY, CustomError, MyManager, QueueManager
from helpers.common import child_result, receive
from fastmgr import RemoteError

METHODS = ["fork", "spawn"]
WAIT = 30  # seconds: the bound on any single wait for a child


def _ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = _ipv6_loopback()

PROXY_REPR = r"<AutoProxy\[%s\] object, typeid '%s' at 0x[0-9a-f]+>"


# ---------------------------------------------------------------------------
# helpers

@pytest.fixture(autouse=True)
def _no_children_left():
    """Every test ends with no child process of ours alive."""
    yield
    leftovers = multiprocessing.active_children()
    for proc in leftovers:
        _stop(proc)
    assert not leftovers, "processes left behind: %r" % leftovers


def _stop(proc, timeout=5):
    """Terminate, then kill, a process; never wait without a bound."""
    if proc.pid is None:
        return
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout)


def _join(proc, timeout=WAIT):
    proc.join(timeout)
    assert not proc.is_alive(), "%r did not exit within %ss" % (proc, timeout)
    assert proc.exitcode == 0, "%r exited with %r" % (proc, proc.exitcode)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(ctx, target, transport, tmp_path, procs, extra=()):
    """Start target(address, AUTHKEY, status, *extra) in a process of ctx on
    a fresh address; retry when the port was taken meanwhile."""
    for attempt in range(5):
        if transport == "tcp":
            address = ("127.0.0.1", _free_port())
        else:
            address = str(tmp_path / ("srv%d.sock" % attempt))
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=target, args=(address, AUTHKEY, writer) + tuple(extra))
        proc.start()
        procs.append(proc)
        writer.close()
        message = receive(reader, proc)
        if message[0] == "oserror" and message[1] == errno.EADDRINUSE:
            reader.close()
            _join(proc)
            continue
        assert message[0] == "ok", message
        assert message[1] == address
        return proc, address, reader
    pytest.fail("no free address after 5 attempts")


def _pid_gone(pid):
    """True once pid has exited (a zombie counts as exited)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _manager_address(transport):
    return {"unix": None, "tcp": ("127.0.0.1", 0), "ipv6": ("::1", 0)}[transport]


# ---------------------------------------------------------------------------
# 1. A custom manager

@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["unix", "tcp", "ipv6"])
@pytest.mark.parametrize("method", METHODS)
def test_custom_manager(method, transport):
    if transport == "ipv6" and not HAVE_IPV6:
        pytest.skip("::1 is not available")
    ctx = multiprocessing.get_context(method)
    with MyManager(address=_manager_address(transport), ctx=ctx) as m:
        if transport == "unix":
            assert isinstance(m.address, str) and os.path.exists(m.address)
        else:
            assert m.address[0] == _manager_address(transport)[0] and m.address[1] > 0
        baseline = m._number_of_objects()
        assert baseline == 0

        maths = m.Maths()
        assert maths.add(4, 3) == 7
        assert maths.mul(7, 8) == 56
        assert re.fullmatch(PROXY_REPR % ("Maths", "Maths"), repr(maths)), repr(maths)
        # str() is the referent's repr, computed in the server
        assert str(maths) == "MathsClass(label='maths', calls=2)"
        assert m._number_of_objects() == baseline + 1

        # a referent's exception is raised here with its own type and args,
        # and the server-side traceback rides along as its __cause__
        with pytest.raises(KeyError) as info:
            maths.fail_key("missing")
        assert type(info.value) is KeyError and info.value.args == ("missing",)
        assert "fail_key" in str(info.value.__cause__)
        with pytest.raises(ValueError) as info:
            maths.fail_value("bad", 3)
        assert type(info.value) is ValueError and info.value.args == ("bad", 3)
        assert "fail_value" in str(info.value.__cause__)
        with pytest.raises(CustomError) as info:
            maths.fail_custom(7)
        assert type(info.value) is CustomError
        assert info.value.args == (7, "custom failure 7") and info.value.code == 7
        assert "fail_custom" in str(info.value.__cause__)

        # a private or unknown method is not exposed: RemoteError
        assert not hasattr(maths, "_secret")
        with pytest.raises(RemoteError) as info:
            maths._callmethod("_secret")
        assert "_secret" in str(info.value)
        with pytest.raises(RemoteError):
            maths._callmethod("no_such_method")
        assert maths.add(1, 1) == 2  # the proxy still works after failures
        # a re-raised exception's traceback holds the proxy's frames, and the
        # frame of _callmethod holds the exception: a cycle, as with the stdlib
        del info
        gc.collect()

        # dropping a proxy sends its decref ahead of the next call
        other = m.Maths("other")
        assert other.add(0, 5) == 5
        assert m._number_of_objects() == baseline + 2
        del other
        assert m._number_of_objects() == baseline + 1

        # method_to_typeid: child() returns a proxy of a registered type
        parent = m.Parent()
        child = parent.child("alice")
        assert re.fullmatch(PROXY_REPR % ("Child", "Child"), repr(child)), repr(child)
        assert child.hello() == "hello from alice"
        child.set_value(42)
        assert parent.child_value("alice") == 42  # the proxy's referent is the parent's child
        assert child.get_value() == 42
        assert m._number_of_objects() == baseline + 3
        bob = parent.child("bob")
        assert bob.hello() == "hello from bob" and parent.count() == 2
        assert not hasattr(MyManager, "Child")  # create_method=False
        del bob, child, parent
        assert m._number_of_objects() == baseline + 1
        assert maths.add(2, 2) == 4
        del maths
        assert m._number_of_objects() == baseline


# ---------------------------------------------------------------------------
# 2. A remote manager

ITEMS = [1, -7, 2 ** 70, "text", "h\u00e9llo", b"\x00raw bytes", (1, "two", 3.0),
         {"key": [1, 2, 3], "none": None, 5: (6,)}]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("method", METHODS)
def test_remote_manager(method, transport, tmp_path):
    ctx = multiprocessing.get_context(method)
    procs = []
    try:
        server, address, _ = _start_server(ctx, programs.queue_server, transport, tmp_path,
                                           procs)

        # a client with the wrong key is refused, with the stdlib's exception
        QueueManager.register("get_queue")
        bad = QueueManager(address=address, authkey=b"not the key")
        with pytest.raises(multiprocessing.AuthenticationError) as info:
            bad.connect()
        assert type(info.value) is multiprocessing.AuthenticationError
        assert server.is_alive()

        # then two clients with the right key: one gets what the other puts
        get_r, get_w = ctx.Pipe(duplex=False)
        getter = ctx.Process(target=programs.queue_getter,
                             args=(address, AUTHKEY, len(ITEMS), get_w))
        getter.start()
        procs.append(getter)
        get_w.close()
        put_r, put_w = ctx.Pipe(duplex=False)
        putter = ctx.Process(target=programs.queue_putter, args=(address, AUTHKEY, ITEMS, put_w))
        putter.start()
        procs.append(putter)
        put_w.close()

        assert child_result(put_r, putter) == len(ITEMS)
        got = child_result(get_r, getter)
        assert got == ITEMS
        assert [type(x) for x in got] == [type(x) for x in ITEMS]
        _join(putter)
        _join(getter)

        # this process, refused before, connects once it has the right key
        good = QueueManager(address=address, authkey=AUTHKEY)
        good.connect()
        queue = good.get_queue()
        assert queue.empty()
        queue.put(("last", 1))
        assert queue.get(timeout=5) == ("last", 1)
        del queue
        # and a wrong key is still refused in a process that has a good link
        with pytest.raises(multiprocessing.AuthenticationError) as info:
            QueueManager(address=address, authkey=b"not the key").connect()
        assert type(info.value) is multiprocessing.AuthenticationError
    finally:
        for proc in procs:
            _stop(proc)


# ---------------------------------------------------------------------------
# 3. Local processes and a remote manager

@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("method", METHODS)
def test_local_processes_and_remote_manager(method, transport, tmp_path):
    count = 50
    ctx = multiprocessing.get_context(method)
    procs = []
    producer_pid = None
    try:
        server, address, status = _start_server(ctx, programs.producer_server, transport,
                                                tmp_path, procs, extra=(method, count))
        tag, producer_pid = receive(status, server)
        assert tag == "pid" and producer_pid > 0

        get_r, get_w = ctx.Pipe(duplex=False)
        client = ctx.Process(target=programs.queue_getter,
                             args=(address, AUTHKEY, count + 1, get_w))
        client.start()
        procs.append(client)
        get_w.close()
        got = child_result(get_r, client)
        # the producer ran by this test's start method, as the server's child
        assert got[0] == ("from", method, server.pid)
        assert got[1:] == [("item", i, "x" * (i % 7)) for i in range(count)]
        _join(client)
        # the producer (the server's child) exits once its items are out
        assert _wait_for(lambda: _pid_gone(producer_pid)), "producer still running"
    finally:
        for proc in procs:
            _stop(proc)
        if producer_pid is not None and not _wait_for(lambda: _pid_gone(producer_pid), 5):
            os.kill(producer_pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# 4. A proxy passed to a child process

@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("method", METHODS)
def test_proxy_passed_to_child(method, transport):
    ctx = multiprocessing.get_context(method)
    times = 25
    with MyManager(address=_manager_address(transport), ctx=ctx) as m:
        baseline = m._number_of_objects()
        counter = m.Counter(100)
        assert counter.value() == 100
        out_r, out_w = ctx.Pipe(duplex=False)
        child = ctx.Process(target=programs.bump, args=(counter, times, out_w))
        try:
            child.start()
            out_w.close()
            value, child_repr = child_result(out_r, child)
            _join(child)
        finally:
            _stop(child)
        assert value == 100 + times
        assert re.fullmatch(PROXY_REPR % ("Counter", "Counter"), child_repr), child_repr
        # the parent sees the child's work, and its referent outlived the child
        assert counter.value() == 100 + times
        assert counter.increment(5) == 105 + times
        assert m._number_of_objects() == baseline + 1
        del counter, child
        # the child's references go when its connections close: soon, not at once
        assert _wait_for(lambda: m._number_of_objects() == baseline), m._debug_info()
