"""The hub that serves a server's connections, in-process over socketpairs,
on both wires: replies of every kind, many and pipelined connections,
oneway requests, thread-bound objects, TLS connections and malformed input.

The compiled hub serves every connection from one loop thread, and a
connection that uses a thread-bound object (a lock, a queue) gets a thread
of its own.  The pure-Python hub gives every connection a thread at once;
both meet the same contract, checked here.  Every wait is bounded; every
thread a hub starts is joined at the end of its test (the ``rig`` fixture).
"""
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading

import pytest

from fastmgr import _protocol as P
from fastmgr.errors import MessageTooLarge, ProtocolError
from helpers.common import Worker
from helpers.hub_rig import BOUND, BOX, RLOCK, WAIT, Control, Rig, wait_for

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------
# the basics

def test_dispatch_through_the_hub(rig):
    """Return, error, failure, fallback, control and proxy replies, as
    serve_connection gives them."""
    c = rig.connect()
    assert c.call(BOX, "echo", ((1, "two"),)) == (P.RESP_RETURN, (1, "two"))
    kind, (exc, tb) = c.call(BOX, "fail", ("k",))
    assert kind == P.RESP_ERROR and type(exc) is KeyError and "fail" in tb
    kind, text = c.call(999, "echo", (1,))
    assert kind == P.RESP_FAILURE and "KeyError" in text
    kind, text = c.call(BOX, "hidden")
    assert kind == P.RESP_FAILURE and "AttributeError" in text
    assert c.call(BOX, "#GETVALUE") == (P.RESP_RETURN, ("value of", BOX))
    assert c.call(0, "hello") == (P.RESP_RETURN, "hello 0")
    assert c.call(BOX, "make", (3,)) == (P.RESP_PROXY, ("List", 101, ("append",)))
    assert rig.proxies == [("List", [0, 1, 2])]
    c.close()
    assert rig.wait_ended([0]) == [(None, True)]


def test_stats_and_add_after_close(wire, compiled):
    rig = Rig(wire)
    try:
        assert set(rig.hub.stats()) == {"connections", "replacements", "handovers"}
        c = rig.connect()
        assert c.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)
        if compiled:
            assert rig.hub.stats() == {"connections": 1, "replacements": 0, "handovers": 0}
        c.close()
        rig.wait_ended([0])
        if compiled:
            assert rig.stat("connections") == 0
    finally:
        rig.close()
    assert rig.hub.closed
    ours, theirs = socket.socketpair()
    server = wire.Connection(ours)
    try:
        with pytest.raises(OSError):
            rig.hub.add(server, wire.Entry(Control("x"), Control.exposed),
                        rig.make_proxy, lambda exc: None)
    finally:
        server.close()
        theirs.close()


def test_many_connections(rig, compiled):
    n = 50
    clients = [rig.connect() for _ in range(n)]
    if compiled:
        assert rig.stat("connections") == n
    # a request outstanding on every connection at once, then the answers
    for i, c in enumerate(clients):
        c.send_request(P.REQ_CALL, BOX, "echo", (("first", i),))
    for i, c in enumerate(clients):
        assert c.recv_response() == (P.RESP_RETURN, ("first", i))

    # and every connection calling from its own thread at the same time
    go = threading.Barrier(n, timeout=WAIT)

    def calls(i, c):
        go.wait()
        return [c.call(BOX, "echo", ((i, k),))[1] for k in range(20)] + [c.call(0, "hello")[1]]

    workers = [Worker(calls, i, c) for i, c in enumerate(clients)]
    for i, worker in enumerate(workers):
        assert worker.outcome(WAIT) == [(i, k) for k in range(20)] + ["hello %d" % i]
    for c in clients:
        c.close()
    assert rig.wait_ended(range(n)) == [(None, True)] * n
    if compiled:
        assert rig.stat("connections") == 0 and rig.stat("handovers") == 0


def test_pipelined_requests_answered_in_order(rig):
    c = rig.connect()
    other = rig.connect()
    for i in range(300):
        c.send_request(P.REQ_CALL, BOX, "echo", (i,))
        if i % 100 == 0:
            c.send_request(P.REQ_CALL, BOX, "fail", (i,))
    got = []
    for i in range(303):
        kind, value = c.recv_response()
        got.append(value if kind == P.RESP_RETURN else ("error", value[0].args))
    expected = []
    for i in range(300):
        expected.append(i)
        if i % 100 == 0:
            expected.append(("error", (i,)))
    assert got == expected
    assert other.call(BOX, "echo", ("other",)) == (P.RESP_RETURN, "other")


def test_oneway_gets_no_reply(rig):
    c = rig.connect()
    c.send_request(P.REQ_ONEWAY, BOX, "record", ("a",))
    c.send_request(P.REQ_ONEWAY, BOX, "fail", ("silently",))
    c.send_request(P.REQ_ONEWAY, 999, "record", ("unknown ident",))
    c.send_request(P.REQ_ONEWAY, BOX, "record", ("b",))
    assert c.call(BOX, "echo", ("after",)) == (P.RESP_RETURN, "after")
    assert rig.box.log == ["a", "b"]
    assert not c.poll(0.1)  # nothing else came
    c.send_request(P.REQ_ONEWAY, BOUND, "record", ("bound",))  # thread-bound, oneway
    assert c.call(BOUND, "echo", (1,)) == (P.RESP_RETURN, 1)
    assert rig.bound.log == ["bound"]
    assert not c.poll(0.1)


# ---------------------------------------------------------------------------
# thread-bound objects

def test_thread_bound_entry_gets_a_thread_of_its_own(rig, compiled):
    c = rig.connect()
    other = rig.connect()
    assert other.call(BOX, "echo", (0,)) == (P.RESP_RETURN, 0)
    before = rig.stat("handovers")
    loop_thread = c.call(BOX, "thread")[1]
    first = c.call(BOUND, "thread")[1]
    if compiled:
        assert rig.stat("handovers") == before + 1
        assert first != loop_thread
    # from now on every call on c is served by that thread, in order
    for i in range(5):
        c.send_request(P.REQ_CALL, BOX, "echo", (i,))
        c.send_request(P.REQ_CALL, BOUND, "thread")
        c.send_request(P.REQ_CALL, BOX, "thread")
    for i in range(5):
        assert c.recv_response() == (P.RESP_RETURN, i)
        assert c.recv_response() == (P.RESP_RETURN, first)
        assert c.recv_response() == (P.RESP_RETURN, first)
    if compiled:
        assert rig.stat("handovers") == before + 1
        assert rig.stat("connections") == 1  # only `other` is still in the loop
    assert other.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)


def test_replies_before_a_handover_go_out_first(rig, compiled):
    """Requests on the loop, then one on a thread-bound entry, in one write:
    the replies come back in the order of the requests."""
    c = rig.connect()
    for i in range(3):
        c.send_request(P.REQ_CALL, BOX, "echo", (i,))
    c.send_request(P.REQ_CALL, BOUND, "echo", ("bound",))
    c.send_request(P.REQ_CALL, BOX, "echo", (3,))
    got = [c.recv_response() for _ in range(5)]
    assert got == [(P.RESP_RETURN, v) for v in (0, 1, 2, "bound", 3)]
    if compiled:
        assert rig.stat("handovers") == 1


def test_rlock_is_owned_by_its_connection(rig):
    a, b = rig.connect(), rig.connect()
    assert a.call(RLOCK, "acquire") == (P.RESP_RETURN, True)
    assert a.call(RLOCK, "_is_owned") == (P.RESP_RETURN, True)
    assert b.call(RLOCK, "_is_owned") == (P.RESP_RETURN, False)
    assert b.call(RLOCK, "acquire", (True, 0.1)) == (P.RESP_RETURN, False)
    assert a.call(RLOCK, "acquire") == (P.RESP_RETURN, True)  # re-entrant
    assert a.call(RLOCK, "release") == (P.RESP_RETURN, None)
    assert b.call(RLOCK, "acquire", (True, 0.1)) == (P.RESP_RETURN, False)
    assert a.call(RLOCK, "release") == (P.RESP_RETURN, None)
    kind, (exc, _tb) = a.call(RLOCK, "release")
    assert kind == P.RESP_ERROR and isinstance(exc, RuntimeError)
    assert b.call(RLOCK, "acquire", (True, WAIT)) == (P.RESP_RETURN, True)
    assert b.call(RLOCK, "release") == (P.RESP_RETURN, None)


def test_blocked_lock_does_not_stall_others(rig):
    a, b, c = rig.connect(), rig.connect(), rig.connect()
    assert a.call(RLOCK, "acquire") == (P.RESP_RETURN, True)
    b.send_request(P.REQ_CALL, RLOCK, "acquire", (True, WAIT))  # blocks until a releases
    for i in range(20):
        assert c.call(BOX, "echo", (i,)) == (P.RESP_RETURN, i)
    assert not b.poll(0.05)
    assert a.call(RLOCK, "release") == (P.RESP_RETURN, None)
    assert b.recv_response() == (P.RESP_RETURN, True)
    assert b.call(RLOCK, "release") == (P.RESP_RETURN, None)


# ---------------------------------------------------------------------------
# TLS

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """(server context, client context) with a self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("hub-tls")
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        cwd=str(d), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(str(d / "cert.pem"))
    return server, client


def tls_pair(tls):
    """A connected pair of TLS sockets, (server side, client side)."""
    ours, theirs = socket.socketpair()
    server = Worker(tls[0].wrap_socket, ours, True)
    client = tls[1].wrap_socket(theirs, server_hostname="localhost")
    return server.outcome(), client


def test_tls_connection_has_a_thread_of_its_own(rig, compiled, tls):
    """Bytes of a TLS connection go through its SSL object, not the loop's
    epoll: it is served on a thread of its own from the start."""
    plain = rig.connect()
    secure = rig.connect(pair=tls_pair(tls))
    if compiled:
        assert rig.stat("connections") == 1  # only the plain one is in the loop
    assert secure.call(BOX, "echo", ("tls",)) == (P.RESP_RETURN, "tls")
    for i in range(20):
        secure.send_request(P.REQ_CALL, BOX, "echo", (i,))
    assert [secure.recv_response()[1] for _ in range(20)] == list(range(20))
    secure.send_request(P.REQ_CALL, BOX, "wait", (WAIT,))
    wait_for(rig.box.waiting.is_set)
    assert plain.call(BOX, "release") == (P.RESP_RETURN, None)
    assert secure.recv_response() == (P.RESP_RETURN, True)
    assert plain.call(BOX, "echo", ("plain",)) == (P.RESP_RETURN, "plain")


# ---------------------------------------------------------------------------
# malformed input

def _frame(body):
    return struct.pack("!i", len(body)) + body


BAD_INPUT = {
    # a well-framed body with an unknown request kind (long enough to be
    # looked at by the loop)
    "bad-kind": _frame(b"\x07" + bytes(8) + b"garbage-garbage"),
    # a short body: no room for the request header
    "short-body": _frame(b"\x01\x07\x00"),
    # a well-framed request whose method is not a str
    "bad-method": _frame(b"\x01" + bytes(8) + b"\x03" + bytes(8) + b"\x08\x00\x00\x00\x00\x00"),
    # a negative length
    "negative-length": struct.pack("!i", -5) + b"zzzz",
    # a length over the reader's limit (1000 bytes here)
    "too-large": struct.pack("!i", 1001),
    # the long form announcing 4 GiB
    "4GiB": struct.pack("!i", -1) + struct.pack("!Q", 4 << 30),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_malformed_input_ends_only_that_connection(rig, name):
    good, bad, later = rig.connect(1000), rig.connect(1000), rig.connect(1000)
    assert good.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)
    bad.send_request(P.REQ_CALL, BOX, "echo", ("before",))
    assert bad.recv_response() == (P.RESP_RETURN, "before")
    sock = socket.socket(fileno=os.dup(bad.fileno()))
    try:
        sock.sendall(BAD_INPUT[name])
    finally:
        sock.close()
    (exc, closed), = rig.wait_ended([rig.number(bad)])
    expected = MessageTooLarge if name in ("too-large", "4GiB") else ProtocolError
    assert isinstance(exc, expected), repr(exc)
    # the server closed its end (a reset when it left bytes unread)
    with pytest.raises((EOFError, ConnectionResetError)):
        bad.recv_response()
    for c in (good, later):
        assert c.call(BOX, "echo", (2,)) == (P.RESP_RETURN, 2)


def test_reply_before_a_bad_frame_in_the_same_write(rig):
    c = rig.connect(1000)
    other = rig.connect()
    head = bytearray()
    codec = rig.wire.Codec()
    head += _frame(codec.encode_request(P.REQ_CALL, BOX, "echo", ("first",), None))
    head += _frame(b"\x07" + bytes(8) + b"garbage-garbage")
    sock = socket.socket(fileno=os.dup(c.fileno()))
    try:
        sock.sendall(bytes(head))
    finally:
        sock.close()
    assert c.recv_response() == (P.RESP_RETURN, "first")
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv_response()
    (exc, closed), = rig.wait_ended([rig.number(c)])
    assert isinstance(exc, ProtocolError)
    assert other.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)
