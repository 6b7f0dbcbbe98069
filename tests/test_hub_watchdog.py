"""Calls that keep the hub's loop, on both wires: a call that blocks,
computes for long or cannot send its reply stalls no other connection.
On the compiled hub a watchdog sees the loop thread stuck, starts a new
one and leaves the old one with that connection.  Every wait is bounded.
"""
import json
import os
import subprocess
import sys

import pytest

from fastmgr import _protocol as P
from fastmgr.errors import ProtocolError
from helpers.common import child_env
from helpers.hub_rig import BOX, OTHER, WAIT, wait_for

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------
# calls that keep the loop

def test_blocking_call_does_not_deadlock(rig, compiled):
    """A waits for an event that only B's call sets."""
    a, b, c = rig.connect(), rig.connect(), rig.connect()
    a.send_request(P.REQ_CALL, BOX, "wait", (WAIT,))
    wait_for(rig.box.waiting.is_set)
    assert b.call(BOX, "echo", ("b",)) == (P.RESP_RETURN, "b")
    assert b.call(BOX, "release") == (P.RESP_RETURN, None)
    assert a.recv_response() == (P.RESP_RETURN, True)
    if compiled:
        assert rig.stat("replacements") >= 1
        assert rig.stat("handovers") == 0
    # everyone goes on: a on the thread it kept, alone; b and c on the loop
    for i in range(10):
        assert a.call(BOX, "echo", (("a", i),)) == (P.RESP_RETURN, ("a", i))
        assert b.call(BOX, "echo", (("b", i),)) == (P.RESP_RETURN, ("b", i))
        assert c.call(BOX, "echo", (("c", i),)) == (P.RESP_RETURN, ("c", i))
    a_threads = {a.call(BOX, "thread")[1] for _ in range(20)}
    assert len(a_threads) == 1
    if compiled:
        assert a_threads.isdisjoint(b.call(BOX, "thread")[1] for _ in range(20))
    a.close()
    assert rig.wait_ended([rig.number(a)]) == [(None, True)]
    assert b.call(0, "hello") == (P.RESP_RETURN, "hello 1")


def test_two_blocking_calls_at_once(rig, compiled):
    """Each stuck loop thread is replaced in turn."""
    a, b, c = rig.connect(), rig.connect(), rig.connect()
    other = rig.table[OTHER].obj
    a.send_request(P.REQ_CALL, BOX, "wait", (WAIT,))
    wait_for(rig.box.waiting.is_set)
    b.send_request(P.REQ_CALL, OTHER, "wait", (WAIT,))
    wait_for(other.waiting.is_set)
    assert c.call(OTHER, "release") == (P.RESP_RETURN, None)
    assert b.recv_response() == (P.RESP_RETURN, True)
    assert c.call(BOX, "release") == (P.RESP_RETURN, None)
    assert a.recv_response() == (P.RESP_RETURN, True)
    if compiled:
        assert rig.stat("replacements") >= 2


def test_cpu_bound_call_does_not_stall_others(rig):
    """B's call is served while A's call computes, between its start and end."""
    a, b = rig.connect(), rig.connect()
    a.send_request(P.REQ_CALL, BOX, "spin", (0.3, WAIT))
    wait_for(rig.box.spinning.is_set)
    assert b.call(BOX, "stamp") == (P.RESP_RETURN, 1)
    assert b.call(BOX, "echo", ("b",)) == (P.RESP_RETURN, "b")
    kind, (start, end, _n) = a.recv_response()
    assert kind == P.RESP_RETURN
    assert start < rig.box.stamps[0] < end
    assert a.call(BOX, "echo", ("a",)) == (P.RESP_RETURN, "a")


def test_a_peer_that_does_not_read_stalls_no_one(rig, compiled):
    """A asks for large replies and never reads them: the thread sending
    to A blocks on a full socket; B is served all the same."""
    a, b = rig.connect(), rig.connect()
    for _ in range(32):
        a.send_request(P.REQ_CALL, BOX, "blob", (1 << 20,))
    assert b.call(BOX, "echo", ("b",)) == (P.RESP_RETURN, "b")
    for i in range(20):
        assert b.call(BOX, "echo", (i,)) == (P.RESP_RETURN, i)
    if compiled:
        wait_for(lambda: rig.stat("replacements") >= 1)
    c = rig.connect()
    assert c.call(BOX, "echo", ("c",)) == (P.RESP_RETURN, "c")
    a.close()
    (exc, closed), = rig.wait_ended([rig.number(a)])
    assert isinstance(exc, OSError) and not isinstance(exc, ProtocolError), repr(exc)
    assert b.call(BOX, "echo", ("after",)) == (P.RESP_RETURN, "after")


def test_request_that_arrives_during_a_send_is_served(rig):
    """A request that arrives while the server sends a large reply (and
    reads what comes meanwhile, to keep the socket moving) is answered
    without waiting for more bytes from the client."""
    c = rig.connect()
    for i in range(20):
        c.send_request(P.REQ_CALL, BOX, "blob", (1 << 20,))
        assert c.poll(WAIT)  # the reply has begun: the server is sending it
        c.send_request(P.REQ_CALL, BOX, "echo", (i,))
        assert c.recv_response() == (P.RESP_RETURN, bytes(1 << 20))
        assert c.poll(2), "no reply to echo(%d)" % i
        assert c.recv_response() == (P.RESP_RETURN, i)


def test_watchdog_replaces_only_a_loop_that_is_still_stuck(compiled_wire):
    """The watchdog lets the GIL go while it checks the loop thread; a call
    that returns meanwhile must not get the idle loop replaced: a replaced
    loop thread keeps serving from the same epoll set, so two threads read
    one connection."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                         env["PYTHONPATH"]])
    out = subprocess.run(
        [sys.executable, "-c", "from helpers import hub; hub.watchdog_paused_in_check()"],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    if not seen["fired"]:
        pytest.skip("the watchdog no longer reads /proc through open(): cannot pause it there")
    assert seen == {"fired": True, "replacements": 0, "threads": 1}
