"""Replies whose bytes travel out of band, taken in by an event loop's
loop_receive(): whatever the split of the stream, each buffer ends up in
an object of its own, and what follows the frame comes out after it.  On
the compiled wire the buffers come straight from the stream into those
objects, so a reply of N bytes needs about N of memory, not 2N."""
import os
import select
import socket
import threading
import time

import pytest

from fastmgr import _protocol as P
from helpers.ring import new_memfd

pytestmark = pytest.mark.timeout(60)

WAIT = 10


def _value():
    return [b"a" * P.OOB_MIN, "inline", bytearray(b"b" * (P.OOB_MIN + 7)), b"c" * (3 * P.OOB_MIN)]


def _frames(wire, value):
    """The stream of a reply carrying value, then of a small reply; and
    where the first frame's buffers begin in it."""
    codec = wire.Codec()
    first = wire.frame(codec.encode_response(P.RESP_RETURN, value))
    buffers = sum(len(part) for part in value if isinstance(part, (bytes, bytearray)))
    return first + wire.frame(codec.encode_response(P.RESP_RETURN, "next")), len(first) - buffers


def _receive(conn, count):
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < count:
        assert time.monotonic() < deadline, "only %d of %d replies came" % (len(got), count)
        select.select([conn.fileno()], [], [], 0.1)
        got += conn.loop_receive()
    return got


def _send_in_thread(sock, data):
    thread = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    thread.start()
    return thread


def _deliver(client, peer, data):
    """Send data, taking in what comes meanwhile (more than the socket
    holds would block the sender); the replies that came whole."""
    sender = _send_in_thread(peer, data)
    got = []
    deadline = time.monotonic() + WAIT
    while sender.is_alive():
        assert time.monotonic() < deadline, "the bytes did not leave"
        select.select([client.fileno()], [], [], 0.01)
        got += client.loop_receive()
    return got + client.loop_receive()


@pytest.fixture
def socket_pair(wire):
    a, b = socket.socketpair()
    client = wire.Connection(a)
    yield client, b
    client.close()
    b.close()


def test_a_reply_with_buffers_in_any_split(wire, socket_pair):
    client, peer = socket_pair
    value = _value()
    data, buffers_at = _frames(wire, value)
    cuts = set(range(1, 40)) | set(range(buffers_at - 20, buffers_at + 20))
    cuts |= {buffers_at + P.OOB_MIN + k for k in (-1, 0, 1)} | {len(data) - k for k in range(1, 30)}
    cuts |= set(range(1, len(data), len(data) // 23))
    for cut in sorted(cuts):
        early = _deliver(client, peer, data[:cut])
        sender = _send_in_thread(peer, data[cut:])
        got = early + _receive(client, 2 - len(early))
        sender.join(WAIT)
        assert got == [(P.RESP_RETURN, value), (P.RESP_RETURN, "next")], "cut at %d" % cut
        assert [type(part) for part in got[0][1]] == [bytes, str, bytearray, bytes]
        assert client.loop_receive() == []


def test_a_spin_that_reads_past_the_buffers(compiled_wire):
    """A spin reads into the read buffer while the buffers are being
    filled: what it took goes into them, and the next frame's start stays."""
    a, peer = socket.socketpair()
    client = compiled_wire.Connection(a)
    client.spin_us = 20000
    try:
        value = _value()
        data, buffers_at = _frames(compiled_wire, value)
        cut = buffers_at + 100
        assert _deliver(client, peer, data[:cut]) == []
        sender = _send_in_thread(peer, data[cut:])
        for _ in range(100):  # bounded: each spin is at most 20 ms
            if client.loop_spin():
                break
        assert _receive(client, 2) == [(P.RESP_RETURN, value), (P.RESP_RETURN, "next")]
        sender.join(WAIT)
    finally:
        client.close()
        peer.close()


def test_the_peer_closes_in_the_middle_of_the_buffers(wire, socket_pair):
    client, peer = socket_pair
    data, buffers_at = _frames(wire, _value())
    assert _deliver(client, peer, data[:buffers_at + P.OOB_MIN + 5]) == []
    peer.close()
    deadline = time.monotonic() + WAIT
    with pytest.raises(EOFError):
        while time.monotonic() < deadline:
            select.select([client.fileno()], [], [], 0.1)
            client.loop_receive()


def _status_bytes(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no %s in /proc/self/status" % key)


def test_a_large_reply_needs_one_copy_of_its_bytes(compiled_wire):
    """The peak resident memory while a 64 MiB reply comes in: the value's
    64 MiB and little more (before, the read buffer took it all in first,
    and the value was copied out of it: 2N)."""
    size = 64 << 20
    a, peer = socket.socketpair()
    client = compiled_wire.Connection(a)
    try:
        data = compiled_wire.frame(compiled_wire.Codec().encode_response(P.RESP_RETURN, bytes(size)))
        before = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM starts again from VmRSS
        sender = _send_in_thread(peer, data)
        (kind, value), = _receive(client, 1)
        extra = _status_bytes("VmHWM") - before
        sender.join(WAIT)
        assert kind == P.RESP_RETURN and len(value) == size
        assert extra < 1.4 * size, "the peak was %.1f MiB above the start" % (extra / 2**20)
    finally:
        client.close()
        peer.close()


def test_replies_with_buffers_through_the_rings(compiled_wire):
    """Buffers larger than a ring, replies one after another: the ring's
    bytes go into the buffers, turn by turn, and the replies come in order."""
    a, b = socket.socketpair()
    client, server = compiled_wire.Connection(a), compiled_wire.Connection(b, timeout=WAIT)
    fd = new_memfd(compiled_wire)
    client.attach_ring(fd, False)
    server.attach_ring(fd, True)
    values = [[bytes([i]) * (1 << 20), "x" * i, bytearray(P.OOB_MIN + i)] for i in range(5)]
    try:
        bodies = [server.codec.encode_response(P.RESP_RETURN, value) for value in values]
        sender = threading.Thread(target=lambda: [server.send_bytes(body) for body in bodies],
                                  daemon=True)
        sender.start()
        assert _receive(client, len(values)) == [(P.RESP_RETURN, value) for value in values]
        sender.join(WAIT)
    finally:
        client.close()
        server.close()
        os.close(fd)
