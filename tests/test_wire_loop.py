"""A Connection driven by an event loop (loop_queue, loop_send,
loop_receive, loop_spin): nothing blocks, frames come out whole and in
order, on both wires, over a socket and (compiled) through the rings.
The other end is an ordinary Connection in a thread."""
import os
import pickle
import select
import socket
import threading
import time

import pytest

from fastmgr import _protocol as P
from fastmgr.errors import MessageTooLarge, ProtocolError
from helpers.ring import new_memfd

pytestmark = pytest.mark.timeout(60)

WAIT = 10


@pytest.fixture(params=["socket", "rings"])
def pair(request, wire):
    """(loop side, peer side): the loop side is the client."""
    if request.param == "rings" and wire.IMPLEMENTATION != "compiled":
        pytest.skip("the pure-Python wire has no rings")
    a, b = socket.socketpair()
    client, server = wire.Connection(a), wire.Connection(b, timeout=WAIT)
    fd = None
    if request.param == "rings":
        fd = new_memfd(wire)
        client.attach_ring(fd, False)
        server.attach_ring(fd, True)
    yield client, server
    client.close()
    server.close()
    if fd is not None:
        os.close(fd)


def _receive(conn, count, decode=True):
    """loop_receive() until count frames came, waiting on the socket as a
    loop would."""
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < count:
        assert time.monotonic() < deadline, "only %d of %d frames came" % (len(got), count)
        select.select([conn.fileno()], [], [], 0.1)
        got += conn.loop_receive(decode)
    return got


def _send_all(conn):
    deadline = time.monotonic() + WAIT
    while conn.loop_send():
        assert time.monotonic() < deadline, "the queued frames did not leave"
        if conn.has_ring if hasattr(conn, "has_ring") else False:
            select.select([conn.fileno()], [], [], 0.1)
            conn.loop_receive()
        else:
            select.select([], [conn.fileno()], [], 0.1)


def _serve(server, count, reply=lambda req: (P.RESP_RETURN, req)):
    """A thread answering count requests with reply(decoded request)."""
    def run():
        for _ in range(count):
            kind, ident, method, args, kwds = server.codec.decode_request(server.recv_bytes())
            server.send_bytes(server.codec.encode_response(*reply((ident, method, args))))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_pipelined_requests_and_their_replies(pair):
    client, server = pair
    thread = _serve(server, 500)
    for i in range(500):
        client.loop_queue(P.REQ_CALL, i + 1, "get", (i, "x" * (i % 50)))
    _send_all(client)
    replies = _receive(client, 500)
    thread.join(WAIT)
    assert replies == [(P.RESP_RETURN, (i + 1, "get", (i, "x" * (i % 50)))) for i in range(500)]
    assert client.loop_receive() == []


def test_nothing_blocks_when_nothing_came(pair):
    client, _ = pair
    started = time.monotonic()
    for _ in range(100):
        assert client.loop_receive() == []
    assert client.loop_send() == 0
    assert time.monotonic() - started < 5


def test_a_frame_in_pieces_comes_out_whole(wire):
    a, b = socket.socketpair()
    client = wire.Connection(a)
    try:
        body = client.codec.encode_response(P.RESP_RETURN, list(range(1000)))
        data = wire.frame(body)
        for cut in (1, 3, 4, 5, len(data) // 2, len(data) - 1):
            b.sendall(data[:cut])
            assert client.loop_receive() == []
            b.sendall(data[cut:])
            assert _receive(client, 1) == [(P.RESP_RETURN, list(range(1000)))]
    finally:
        client.close()
        b.close()


def test_large_messages_both_ways(pair):
    client, server = pair
    big = bytes(range(256)) * 8192          # 2 MiB: more than a ring, more than a socket buffer
    thread = _serve(server, 2)
    client.loop_queue(P.REQ_CALL, 1, "echo", (big,))
    client.loop_queue(P.REQ_CALL, 2, "echo", (b"small",))
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < 2:
        assert time.monotonic() < deadline
        select.select([client.fileno()], [client.fileno()] if client.loop_send() else [], [], 0.1)
        got += client.loop_receive()
    thread.join(WAIT)
    assert got == [(P.RESP_RETURN, (1, "echo", (big,))), (P.RESP_RETURN, (2, "echo", (b"small",)))]


class Unpicklable:
    def __reduce__(self):
        return (_fail, ())


def _fail():
    raise ValueError("no way back")


def test_a_reply_that_does_not_decode_is_that_reply_alone(wire):
    a, b = socket.socketpair()
    client, server = wire.Connection(a), wire.Connection(b)
    try:
        for value in ("before", Unpicklable(), "after"):
            server.send_bytes(server.codec.encode_response(P.RESP_RETURN, value))
        replies = _receive(client, 3)
        assert replies[0] == (P.RESP_RETURN, "before") and replies[2] == (P.RESP_RETURN, "after")
        assert replies[1][0] == 0 and isinstance(replies[1][1], ValueError)
    finally:
        client.close()
        server.close()


def test_raw_frames_for_the_handshake(pair):
    client, server = pair
    server.send_bytes(b"challenge")
    server.send_bytes(b"")
    assert _receive(client, 2, decode=False) == [b"challenge", b""]


def test_eof_after_the_last_frame(pair):
    client, server = pair
    server.send_bytes(server.codec.encode_response(P.RESP_RETURN, "last"))
    server.close()
    assert _receive(client, 1) == [(P.RESP_RETURN, "last")]
    with pytest.raises(EOFError):
        for _ in range(100):
            select.select([client.fileno()], [], [], 0.1)
            client.loop_receive()


def test_a_refused_header_closes(wire):
    for header, error in ((b"\xff\xff\xff\xfe", ProtocolError),
                          (b"\x7f\xff\xff\xff", MessageTooLarge)):
        a, b = socket.socketpair()
        client = wire.Connection(a, max_message=1 << 20)
        b.sendall(header)
        with pytest.raises(error):
            for _ in range(100):
                select.select([client.fileno()], [], [], 0.1)
                client.loop_receive()
        assert client.closed
        b.close()


def test_tls_connections_are_refused(wire):
    import ssl
    a, b = socket.socketpair()
    try:
        context = ssl.create_default_context()
        tls = context.wrap_socket(a, server_hostname="x", do_handshake_on_connect=False)
        conn = wire.Connection(tls)
        with pytest.raises(ValueError):
            conn.loop_send()
        with pytest.raises(ValueError):
            conn.loop_receive()
        conn.close()
    finally:
        b.close()


def test_spin_catches_a_prompt_reply(compiled_wire):
    a, b = socket.socketpair()
    client, server = compiled_wire.Connection(a), compiled_wire.Connection(b, timeout=WAIT)
    client.spin_us = 1000
    try:
        thread = _serve(server, 1)
        client.loop_queue(P.REQ_CALL, 1, "ping", ())
        assert client.loop_send() == 0
        for _ in range(2000):  # bounded: each spin is at most a millisecond
            if client.loop_spin():
                break
        assert _receive(client, 1) == [(P.RESP_RETURN, (1, "ping", ()))]
        thread.join(WAIT)
        client.spin_us = 0
        assert client.loop_spin() is False
    finally:
        client.close()
        server.close()


def test_pickled_values_cross(pair):
    client, server = pair
    thread = _serve(server, 1)
    value = {"set": {1, 2}, "bytes": bytearray(b"x")}
    client.loop_queue(P.REQ_CALL, 9, "m", (value,))
    _send_all(client)
    assert _receive(client, 1)[0][1][2] == (value,)
    thread.join(WAIT)
    assert pickle.loads(pickle.dumps(value)) == value


def test_frames_queued_together_with_many_out_of_band_buffers(pair):
    """Each frame may take MAX_BUFFERS out-of-band buffers; several queued
    together hold more than one send takes: they leave in turns, in order,
    and the replies' buffers come back into values of their own."""
    client, server = pair
    blobs = [bytes([i]) * P.OOB_MIN for i in range(P.MAX_BUFFERS)]
    thread = _serve(server, 3)
    for ident in (1, 2, 3):
        client.loop_queue(P.REQ_CALL, ident, "echo", (blobs,))
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < 3:
        assert time.monotonic() < deadline
        select.select([client.fileno()], [client.fileno()] if client.loop_send() else [], [], 0.1)
        got += client.loop_receive()
    thread.join(WAIT)
    assert got == [(P.RESP_RETURN, (ident, "echo", (blobs,))) for ident in (1, 2, 3)]


def test_a_request_above_the_limit_is_refused_before_it_is_queued(wire):
    a, b = socket.socketpair()
    client = wire.Connection(a, max_message=1 << 20)
    try:
        with pytest.raises(MessageTooLarge):
            client.loop_queue(P.REQ_CALL, 1, "echo", (bytes(2 << 20),))
        assert client.loop_send() == 0
        client.loop_queue(P.REQ_CALL, 2, "echo", (b"small",))
        assert client.loop_send() == 0
        conn = wire.Connection(b, timeout=WAIT)
        assert conn.codec.decode_request(conn.recv_bytes())[1:3] == (2, "echo")
    finally:
        client.close()
        b.close()
