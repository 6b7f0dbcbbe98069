"""Connections over real sockets: framing, limits, EOF, timeouts, the
handshake and the server loop, for each wire and for mixed pairs."""
import hashlib
import hmac
import multiprocessing.connection
import os
import socket
import struct
import sys
import time

import pytest

from helpers.common import Worker, raw_pair
from fastmgr import _protocol as P
from fastmgr.errors import AuthenticationError, MessageTooLarge, ProtocolError

pytestmark = pytest.mark.timeout(30)

MIB = 1 << 20


@pytest.fixture
def pair(impls, transport):
    """Two connected Connections, A (impls[0]) and B (impls[1])."""
    a_sock, b_sock = raw_pair(transport)
    a, b = impls[0].Connection(a_sock), impls[1].Connection(b_sock)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def half(wire, transport):
    """A Connection of ``wire`` and the raw socket at the other end."""
    ours, theirs = raw_pair(transport)
    conn = wire.Connection(ours)
    yield conn, theirs
    conn.close()
    theirs.close()


# -- messages --------------------------------------------------------------------


VALUES = [None, True, 2**70, -1.5, "h\u00e9\ud800", b"\x00", (1, [2, {3: "4"}]), {5}, list(range(100))]


def test_send_recv_both_ways(pair):
    a, b = pair
    for value in VALUES:
        a.send(value)
        assert b.recv() == value
        b.send(value)
        assert a.recv() == value


def test_send_bytes_recv_bytes(pair):
    a, b = pair
    for body in [b"", b"x", bytes(range(256)) * 300, bytearray(b"ba"), memoryview(b"mv")]:
        a.send_bytes(body)
        assert b.recv_bytes() == bytes(body)
    big = os.urandom(3 * MIB)
    sender = Worker(a.send_bytes, big)  # more than the socket buffers hold
    assert b.recv_bytes() == big
    sender.outcome()
    sender = Worker(b.send_bytes, big)
    assert a.recv_bytes() == big
    sender.outcome()


def test_many_messages_in_flight(pair):
    a, b = pair
    for i in range(200):
        a.send(i)
    assert [b.recv() for _ in range(200)] == list(range(200))


def test_requests_and_responses(pair):
    a, b = pair
    a.send_request(P.REQ_CALL, 7, "method", (1, "x"), {"k": [2]})
    assert b.codec.decode_request(b.recv_bytes()) == (P.REQ_CALL, 7, "method", (1, "x"), {"k": [2]})
    b.send_bytes(b.codec.encode_response(P.RESP_RETURN, {"ok": True}))
    assert a.recv_response() == (P.RESP_RETURN, {"ok": True})


def test_poll(pair):
    a, b = pair
    assert a.poll() is False
    assert a.poll(0.05) is False
    b.send(1)
    assert a.poll(5) is True
    assert a.recv() == 1
    assert a.poll(0) is False


def test_attributes(wire, transport):
    s1, s2 = raw_pair(transport)
    codec = wire.Codec("safe")
    conn = wire.Connection(s1, codec, max_message=1234, timeout=2.5)
    try:
        assert conn.codec is codec and conn.max_message == 1234 and conn.timeout == 2.5
        assert conn.spin_us == wire.get_spin()
        assert conn.fileno() == s1.fileno()
        assert conn.closed is False
        if transport == "tcp":
            assert s1.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        default = wire.Connection(s2)
        assert default.codec.serializer == "pickle" and default.timeout is None
        assert default.max_message == P.DEFAULT_MAX_MESSAGE
        default.close()
    finally:
        conn.close()


@pytest.mark.parametrize("spin_us", [0, 1, 10000])
def test_spin_budget_is_settable_and_calls_work_with_any(wire, transport, spin_us):
    """A budget set on a connection is the one it uses (0: it never spins);
    replies that come late, early, or while the other side is busy all
    arrive whatever the budget."""
    s1, s2 = raw_pair(transport)
    a, b = wire.Connection(s1), wire.Connection(s2)
    try:
        a.spin_us = b.spin_us = spin_us
        assert (a.spin_us, b.spin_us) == (spin_us, spin_us)

        def echo():
            for i in range(200):
                if i % 50 == 0:
                    time.sleep(0.002)  # past any budget: the waiter blocks
                b.send(b.recv())

        worker = Worker(echo)
        for i in range(200):
            a.send(i)
            assert a.recv() == i
        worker.outcome()
    finally:
        a.close()
        b.close()


def test_close(half):
    conn, theirs = half
    conn.close()
    conn.close()  # idempotent
    assert conn.closed is True
    for call in (conn.recv, conn.recv_bytes, lambda: conn.send(1), lambda: conn.send_bytes(b"x"),
                 conn.fileno, conn.poll):
        with pytest.raises(OSError, match="handle is closed"):
            call()
    assert theirs.recv(10) == b""  # the socket itself was closed


# -- the stdlib oracle -------------------------------------------------------------


def test_stdlib_reads_our_frames_and_we_read_its(half, wire):
    conn, theirs = half
    oracle = multiprocessing.connection.Connection(os.dup(theirs.fileno()))
    try:
        for body in [b"", b"small", os.urandom(P.COPY_THRESHOLD + 1), os.urandom(3 * MIB)]:
            sender = Worker(conn.send_bytes, body)
            assert oracle.recv_bytes() == body
            sender.outcome()
            sender = Worker(oracle.send_bytes, body)
            assert conn.recv_bytes() == body
            sender.outcome()
        conn.send([1, "two"])
        assert oracle.recv_bytes() == wire.Codec().dumps([1, "two"])
        oracle.send_bytes(wire.Codec().dumps({"three": 3}))
        assert conn.recv() == {"three": 3}
    finally:
        oracle.close()


# -- limits, EOF, timeouts ---------------------------------------------------------


def test_4gib_header_raises_promptly(half):
    conn, theirs = half
    conn.timeout = 10
    theirs.sendall(struct.pack("!i", -1) + struct.pack("!Q", 4 << 30))  # and no body at all
    start = time.monotonic()
    with pytest.raises(MessageTooLarge):
        conn.recv_bytes()
    assert time.monotonic() - start < 2


def test_max_message_and_maxlength(wire, transport):
    ours, theirs = raw_pair(transport)
    conn = wire.Connection(ours, max_message=100, timeout=10)
    try:
        theirs.sendall(struct.pack("!i", 100) + b"x" * 100)
        assert conn.recv_bytes() == b"x" * 100
        theirs.sendall(struct.pack("!i", 101))
        with pytest.raises(MessageTooLarge):
            conn.recv_bytes()
    finally:
        conn.close()
        theirs.close()


def test_maxlength_argument(half):
    conn, theirs = half
    conn.timeout = 10
    theirs.sendall(struct.pack("!i", 50) + b"y" * 50)
    assert conn.recv_bytes(50) == b"y" * 50
    theirs.sendall(struct.pack("!i", 51))
    with pytest.raises(MessageTooLarge):
        conn.recv_bytes(50)


def test_negative_length_is_protocol_error(half):
    conn, theirs = half
    conn.timeout = 10
    theirs.sendall(struct.pack("!i", -7) + b"junk")
    with pytest.raises(ProtocolError):
        conn.recv_bytes()


def test_long_form_header(half):
    conn, theirs = half
    theirs.sendall(struct.pack("!i", -1) + struct.pack("!Q", 3) + b"abc")
    assert conn.recv_bytes() == b"abc"


@pytest.mark.parametrize("sent", [b"", b"\x00\x00", b"\x00\x00\x00\x0aabc", b"\xff\xff\xff\xff\x00"])
def test_eof_raises_eoferror(half, sent):
    conn, theirs = half
    theirs.sendall(sent)
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        conn.recv_bytes()


def test_eof_after_close(pair):
    a, b = pair
    a.send(1)
    a.close()
    assert b.recv() == 1
    with pytest.raises(EOFError):
        b.recv()


@pytest.mark.parametrize("sent", [b"", b"\x00\x00\x00\x0aabc"], ids=["idle", "mid-frame"])
def test_timeout_closes_the_connection(half, sent):
    conn, theirs = half
    conn.timeout = 0.2
    theirs.sendall(sent)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.recv()
    assert 0.15 < time.monotonic() - start < 5
    assert conn.closed
    with pytest.raises(OSError, match="handle is closed"):
        conn.recv()


def test_timeout_is_per_message_not_per_read(half):
    conn, theirs = half
    conn.timeout = 0.5

    def dribble():
        try:
            for byte in struct.pack("!i", 3) + b"abc":
                theirs.sendall(bytes([byte]))
                time.sleep(0.15)
        except OSError:  # the reader gave up and closed
            pass

    sender = Worker(dribble)
    with pytest.raises(TimeoutError):
        conn.recv_bytes()  # each byte is in time, the message is not
    sender.outcome()
    assert conn.closed


def test_send_times_out_when_the_peer_does_not_read(half):
    conn, theirs = half
    conn.timeout = 0.3
    with pytest.raises(TimeoutError):
        conn.send_bytes(bytes(64 * MIB))
    assert conn.closed


def test_send_bytes_offset_and_size(pair):
    a, b = pair
    a.send_bytes(b"0123456789", 2, 3)
    a.send_bytes(b"0123456789", 7)
    assert b.recv_bytes() == b"234"
    assert b.recv_bytes() == b"789"
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", 2, 5)


def test_call_times_out(pair):
    a, b = pair
    a.timeout = 0.2
    with pytest.raises(TimeoutError):
        a.call(1, "m")
    assert a.closed
    assert b.codec.decode_request(b.recv_bytes())[2] == "m"


# -- the handshake -------------------------------------------------------------


KEY = b"secret key"
#: what a fastmgr server's challenge message M starts with (then its nonce)
M_HEAD = P.SHA256_PREFIX + P.MAGIC


def fastmgr_challenge(nonce):
    """A fastmgr server's challenge frame body with nonce, and its message M."""
    message = M_HEAD + nonce
    return P.CHALLENGE + message, message


def test_handshake(pair, impls):
    (a, b), (server_wire, client_wire) = pair, impls
    server = Worker(server_wire.deliver_challenge, a, KEY)
    assert client_wire.answer_challenge(b, KEY, b"session-42") is None
    assert server.outcome() == b"session-42"
    a.send("after")
    assert b.recv() == "after"
    b.send("and back")
    assert a.recv() == "and back"


def test_handshake_empty_and_longest_hello(pair, impls):
    (a, b), (server_wire, client_wire) = pair, impls
    for hello in (b"", b"h" * P.MAX_HELLO):
        server = Worker(server_wire.deliver_challenge, a, KEY)
        client_wire.answer_challenge(b, KEY, hello)
        assert server.outcome() == hello


def test_handshake_wrong_key(pair, impls):
    (a, b), (server_wire, client_wire) = pair, impls
    server = Worker(server_wire.deliver_challenge, a, KEY)
    with pytest.raises(AuthenticationError):
        client_wire.answer_challenge(b, b"another key")
    with pytest.raises(AuthenticationError):
        server.outcome()


def test_handshake_bytes_on_the_wire(wire, transport):
    """The server's frames, checked by hand against the spec."""
    ours, theirs = raw_pair(transport)
    conn = wire.Connection(ours)
    peer = multiprocessing.connection.Connection(os.dup(theirs.fileno()))
    try:
        server = Worker(wire.deliver_challenge, conn, KEY)
        challenge = peer.recv_bytes()
        assert challenge.startswith(b"#CHALLENGE#{sha256}" + P.MAGIC)
        assert len(challenge) == len(P.CHALLENGE) + len(M_HEAD) + P.NONCE_SIZE
        m = challenge[len(P.CHALLENGE):]
        nc = b"n" * P.NONCE_SIZE
        peer.send_bytes(P.MAGIC + hmac.new(KEY, b"C" + m, hashlib.sha256).digest() + nc + b"hi")
        assert peer.recv_bytes() == P.WELCOME + hmac.new(KEY, b"S" + nc, "sha256").digest()
        assert server.outcome() == b"hi"

        # and a wrong digest gets FAILURE before the error
        server = Worker(wire.deliver_challenge, conn, KEY)
        m = peer.recv_bytes()[len(P.CHALLENGE):]
        peer.send_bytes(P.MAGIC + hmac.new(KEY, b"S" + m, "sha256").digest() + nc)  # a reflection
        assert peer.recv_bytes() == P.FAILURE
        with pytest.raises(AuthenticationError):
            server.outcome()
    finally:
        peer.close()
        conn.close()
        theirs.close()


def test_client_against_a_hand_made_server(wire, transport):
    ours, theirs = raw_pair(transport)
    conn = wire.Connection(ours)
    peer = multiprocessing.connection.Connection(os.dup(theirs.fileno()))
    try:
        challenge, m = fastmgr_challenge(os.urandom(P.NONCE_SIZE))
        peer.send_bytes(challenge)
        client = Worker(wire.answer_challenge, conn, KEY, b"hello")
        answer = peer.recv_bytes()
        assert answer[:8] == P.MAGIC
        assert answer[8:40] == hmac.new(KEY, b"C" + m, "sha256").digest()
        assert len(answer) == 8 + 32 + 32 + 5 and answer[72:] == b"hello"
        peer.send_bytes(P.WELCOME + hmac.new(KEY, b"S" + answer[40:72], "sha256").digest())
        assert client.outcome() is None
    finally:
        peer.close()
        conn.close()
        theirs.close()


def test_client_refuses_a_proof_with_trailing_bytes(wire, transport):
    """The server's proof is exactly WELCOME and a digest: a right digest
    with a byte after it is refused too."""
    ours, theirs = raw_pair(transport)
    conn = wire.Connection(ours)
    peer = multiprocessing.connection.Connection(os.dup(theirs.fileno()))
    try:
        peer.send_bytes(fastmgr_challenge(os.urandom(P.NONCE_SIZE))[0])
        client = Worker(wire.answer_challenge, conn, KEY)
        nc = peer.recv_bytes()[40:72]
        peer.send_bytes(P.WELCOME + hmac.new(KEY, b"S" + nc, "sha256").digest() + b"x")
        with pytest.raises(AuthenticationError):
            client.outcome()
    finally:
        peer.close()
        conn.close()
        theirs.close()


def test_both_wires_run_the_one_handshake(wire):
    from fastmgr import _handshake

    assert wire.deliver_challenge is _handshake.deliver_challenge
    assert wire.answer_challenge is _handshake.answer_challenge


def test_handshake_needs_only_send_bytes_and_recv_bytes():
    """_handshake works over any connection with send_bytes/recv_bytes:
    here the stdlib's."""
    from fastmgr import _handshake

    a, b = multiprocessing.connection.Pipe()
    try:
        server = Worker(_handshake.deliver_challenge, a, KEY)
        _handshake.answer_challenge(b, KEY, b"hi")
        assert server.outcome() == b"hi"
    finally:
        a.close()
        b.close()


# -- the stdlib's handshake (see also tests/test_stdlib_wire.py) ---------------


def _this_pythons_digest():
    return "md5" if sys.version_info < (3, 12) else "sha256"


def test_server_handshake_with_this_pythons_stdlib_client(wire):
    """A client running multiprocessing.connection's own functions (this
    Python's) is told apart and authenticated, with its best digest."""
    from fastmgr import _handshake

    a, b = socket.socketpair()
    ours, theirs = wire.Connection(a), multiprocessing.connection.Connection(b.detach())
    try:
        client = Worker(lambda: (multiprocessing.connection.answer_challenge(theirs, KEY),
                                 multiprocessing.connection.deliver_challenge(theirs, KEY)))
        greeting = _handshake.server_handshake(ours, KEY)
        assert greeting == (P.DIALECT_STDLIB, b"", _this_pythons_digest())
        client.outcome()
    finally:
        ours.close()
        theirs.close()


def test_client_handshake_with_this_pythons_stdlib_server(wire):
    from fastmgr import _handshake

    a, b = socket.socketpair()
    ours, theirs = wire.Connection(a), multiprocessing.connection.Connection(b.detach())
    try:
        server = Worker(lambda: (multiprocessing.connection.deliver_challenge(theirs, KEY),
                                 multiprocessing.connection.answer_challenge(theirs, KEY)))
        assert _handshake.client_handshake(ours, KEY, stdlib_servers=True) == P.DIALECT_STDLIB
        server.outcome()
        # without stdlib_servers, such a server is refused before any answer
        server = Worker(multiprocessing.connection.deliver_challenge, theirs, KEY)
        with pytest.raises(AuthenticationError, match="plain multiprocessing.managers"):
            _handshake.client_handshake(ours, KEY)
    finally:
        ours.close()
        theirs.close()
        server.join(10)


def test_a_stdlib_clients_wrong_key_or_refusal_gets_failure(wire):
    from fastmgr import _handshake

    for key, refusal, error in [(b"wrong", None, "digest received was wrong"),
                                (KEY, "not here", "not here")]:
        a, b = socket.socketpair()
        ours, theirs = wire.Connection(a), multiprocessing.connection.Connection(b.detach())
        try:
            client = Worker(multiprocessing.connection.answer_challenge, theirs, key)
            with pytest.raises(AuthenticationError, match=error):
                _handshake.server_handshake(ours, KEY, refusal)
            with pytest.raises(AuthenticationError, match="rejected"):
                client.outcome()
        finally:
            ours.close()
            theirs.close()


def test_an_impostor_cannot_reflect_a_fastmgr_clients_challenge(wire):
    """The stdlib's handshake is the same both ways.  An impostor server
    (without the key) that plays a legacy stdlib server needs the answer to
    the client's own challenge: it sends that challenge to the client (or
    to any fastmgr process) on a second connection.  It is not answered."""
    from fastmgr import _handshake

    pairs = [socket.socketpair() for _ in range(2)]
    clients = [wire.Connection(a) for a, _ in pairs]
    impostor = [multiprocessing.connection.Connection(b.detach()) for _, b in pairs]
    try:
        first = Worker(_handshake.client_handshake, clients[0], KEY, b"", True)
        impostor[0].send_bytes(P.CHALLENGE + os.urandom(P.STDLIB_LEGACY_MESSAGE))
        impostor[0].recv_bytes()                      # the client's answer (MD5)
        impostor[0].send_bytes(P.WELCOME)             # accepted, whatever it was
        theirs = impostor[0].recv_bytes()             # the client's own challenge
        assert theirs.startswith(P.CHALLENGE + P.SHA256_PREFIX + P.CLIENT_MAGIC)

        second = Worker(_handshake.client_handshake, clients[1], KEY, b"", True)
        impostor[1].send_bytes(theirs)                # reflected
        with pytest.raises(AuthenticationError, match="not answered"):
            second.outcome()
        impostor[0].send_bytes(P.SHA256_PREFIX + os.urandom(32))
        with pytest.raises(AuthenticationError):
            first.outcome()
    finally:
        for conn in clients + impostor:
            conn.close()


def test_a_legacy_answer_after_a_modern_challenge_is_refused(wire):
    """A server whose challenge named sha256 knows it: its raw HMAC-MD5
    answer to the client's challenge is a downgrade, refused."""
    from fastmgr import _handshake

    a, b = socket.socketpair()
    ours, theirs = wire.Connection(a), multiprocessing.connection.Connection(b.detach())
    try:
        client = Worker(_handshake.client_handshake, ours, KEY, b"", True)
        message = P.SHA256_PREFIX + os.urandom(40)
        theirs.send_bytes(P.CHALLENGE + message)
        assert theirs.recv_bytes() == P.SHA256_PREFIX + hmac.new(KEY, message, "sha256").digest()
        theirs.send_bytes(P.WELCOME)
        challenge = theirs.recv_bytes()[len(P.CHALLENGE):]
        theirs.send_bytes(hmac.new(KEY, challenge, "md5").digest())
        with pytest.raises(AuthenticationError, match="knows better"):
            client.outcome()
        assert theirs.recv_bytes() == P.FAILURE
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("challenge", [
    P.SHA256_PREFIX + P.MAGIC + b"n" * P.NONCE_SIZE,           # a fastmgr server's
    P.SHA256_PREFIX + P.CLIENT_MAGIC + b"n" * P.STDLIB_MESSAGE,  # a fastmgr client's
    b"{md5}" + P.CLIENT_MAGIC + b"n" * P.STDLIB_MESSAGE,
])
def test_no_fastmgr_challenge_is_answered_the_stdlibs_way(challenge):
    from fastmgr import _handshake_stdlib

    with pytest.raises(AuthenticationError, match="not answered"):
        _handshake_stdlib.response(KEY, challenge)


BAD_CHALLENGES = [
    P.CHALLENGE + M_HEAD + b"x" * 31,  # short nonce
    P.CHALLENGE + M_HEAD + b"x" * 33,  # long nonce
    P.CHALLENGE + P.SHA256_PREFIX + b"FASTMGR" + bytes([P.PROTOCOL_VERSION + 1])
    + b"x" * 32,  # another protocol version
    b"FMG\x01" + b"x" * 32,  # protocol 1
    P.MAGIC + b"x" * 32,  # no challenge
    b"#CHALLENGE#" + b"x" * 40,  # the stdlib's challenge (3.11)
    b"#CHALLENGE#{sha256}" + b"x" * 40,  # the stdlib's challenge (3.12)
    b"y" * (P.MAX_HANDSHAKE_FRAME + 1),  # too long
]


@pytest.mark.parametrize("challenge", BAD_CHALLENGES, ids=lambda c: c[:8].hex() + "-%d" % len(c))
def test_client_refuses_a_bad_challenge(half, wire, challenge):
    conn, theirs = half
    conn.timeout = 10
    theirs.sendall(struct.pack("!i", len(challenge)) + challenge)
    with pytest.raises(AuthenticationError):
        wire.answer_challenge(conn, KEY)


@pytest.mark.parametrize("reply", [
    P.WELCOME + b"z" * 32,  # wrong server digest
    P.WELCOME,
    b"#WELCOMX#" + b"z" * 32,
    b"",
])
def test_client_refuses_a_bad_reply(half, wire, reply):
    conn, theirs = half
    conn.timeout = 10
    challenge = fastmgr_challenge(b"n" * 32)[0]
    theirs.sendall(struct.pack("!i", len(challenge)) + challenge)
    theirs.sendall(struct.pack("!i", len(reply)) + reply)
    with pytest.raises(AuthenticationError):
        wire.answer_challenge(conn, KEY)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a length of 1.2 GB
    b"\xff\xff\xff\xf0garbage",  # a negative length
    b"\x00\x00\x01\x01" + b"q" * 257,  # a frame over MAX_HANDSHAKE_FRAME
    b"\x00\x00\x00\x05short",  # too short to hold a digest and a nonce
    b"\x00\x00\x00\x89" + P.MAGIC + b"q" * 129,  # a hello of MAX_HELLO + 1 bytes
    b"\x00\x00\x00\x10" + b"q" * 16,  # a wrong HMAC-MD5, as a stdlib client's
    b"\x00\x00\x00\x28{sha256}" + b"q" * 32,  # a wrong HMAC-SHA256, as a stdlib client's
    b"\x00\x00\x00\x48FASTMGR" + bytes([P.PROTOCOL_VERSION + 1]) + b"q" * 64,  # another version
])
def test_server_refuses_garbage(half, wire, garbage):
    conn, theirs = half
    conn.timeout = 10
    server = Worker(wire.deliver_challenge, conn, KEY)
    theirs.sendall(garbage)
    with pytest.raises(AuthenticationError):
        server.outcome()


def test_server_refuses_too_long_hello_with_right_digest(half, wire):
    conn, theirs = half
    conn.timeout = 10
    server = Worker(wire.deliver_challenge, conn, KEY)
    peer = multiprocessing.connection.Connection(os.dup(theirs.fileno()))
    try:
        m = peer.recv_bytes()[len(P.CHALLENGE):]
        peer.send_bytes(P.MAGIC + hmac.new(KEY, b"C" + m, "sha256").digest() + b"n" * 32
                        + b"h" * (P.MAX_HELLO + 1))
        with pytest.raises(AuthenticationError):
            server.outcome()
    finally:
        peer.close()


def test_server_sees_eof_as_authentication_error(half, wire):
    conn, theirs = half
    server = Worker(wire.deliver_challenge, conn, KEY)
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(AuthenticationError):
        server.outcome()


def test_client_sees_eof(half, wire):
    conn, theirs = half
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises((EOFError, AuthenticationError)):
        wire.answer_challenge(conn, KEY)


def test_handshake_argument_checks(half, wire):
    conn, theirs = half
    with pytest.raises(TypeError):
        wire.deliver_challenge(conn, "str key")
    with pytest.raises(TypeError):
        wire.answer_challenge(conn, "str key")
    with pytest.raises(ValueError):
        wire.answer_challenge(conn, KEY, b"h" * (P.MAX_HELLO + 1))


# -- serve_connection ----------------------------------------------------------


class Thing:
    def __init__(self):
        self.value = [1, 2, 3]
        self.log = []

    def add(self, a, b=0):
        return a + b

    def raise_keyerror(self, key):
        raise KeyError(key)

    def unpicklable_result(self):
        return lambda: None

    def make_child(self, n):
        return list(range(n))

    def record(self, item):
        self.log.append(item)

    def hidden(self):
        return "not exposed"


class Control:
    def echo(self, *args, **kwds):
        return args, kwds


def _explode():
    raise LookupError("cannot unpickle this")


class ExplodesOnLoad:
    def __reduce__(self):
        return _explode, ()


@pytest.fixture
def served(impls, transport):
    """A client Connection (impls[1]) talking to serve_connection (impls[0])
    in a thread; yields (client, state)."""
    server_wire, _ = impls
    a_sock, b_sock = raw_pair(transport)
    server_conn = server_wire.Connection(a_sock)
    client = impls[1].Connection(b_sock, timeout=10)
    thing = Thing()
    proxies = []

    def fallback(ident, obj, method, args, kwds):
        if method == "#GETVALUE":
            return obj.value
        raise AttributeError("no method %r" % method)

    def make_proxy(typeid, result):
        proxies.append((typeid, result))
        return typeid, 1000 + len(proxies), ("append",)

    table = {7: server_wire.Entry(thing, {"add", "raise_keyerror", "unpicklable_result",
                                          "make_child", "record"}, {"make_child": "Child"}),
             8: (thing, {"add"}, None, False)}  # a row that is not an Entry
    control = server_wire.Entry(Control(), {"echo"})
    worker = Worker(server_wire.serve_connection, server_conn, table, control, fallback, make_proxy)
    state = {"thing": thing, "proxies": proxies, "worker": worker, "server_conn": server_conn}
    yield client, state
    client.close()
    worker.join(10)
    server_conn.close()


def test_serve_return_and_error(served):
    client, state = served
    assert client.call(7, "add", (2, 3)) == (P.RESP_RETURN, 5)
    assert client.call(7, "add", ("a",), {"b": "b"}) == (P.RESP_RETURN, "ab")
    kind, (exc, tb) = client.call(7, "raise_keyerror", ("k",))
    assert kind == P.RESP_ERROR
    assert type(exc) is KeyError and exc.args == ("k",)
    assert isinstance(tb, str) and "KeyError" in tb and "raise_keyerror" in tb
    kind, (exc, tb) = client.call(7, "add", (1, "x"))  # a TypeError inside the method
    assert kind == P.RESP_ERROR and type(exc) is TypeError


def test_serve_failures(served):
    client, state = served
    kind, text = client.call(7, "unpicklable_result")
    assert kind == P.RESP_FAILURE and isinstance(text, str) and "Traceback" in text
    kind, text = client.call(12345, "add", (1, 2))
    assert kind == P.RESP_FAILURE and "KeyError" in text
    kind, text = client.call(7, "hidden")  # not exposed: the fallback refuses it
    assert kind == P.RESP_FAILURE and "AttributeError" in text and "hidden" in text
    assert client.call(7, "add", (1, 1)) == (P.RESP_RETURN, 2)  # still serving


def test_entry_is_a_named_read_only_record(wire):
    entry = wire.Entry("obj", frozenset(["m"]), {"m": "T"}, True)
    assert (entry.obj, entry.exposed, entry.method_to_typeid, entry.thread_bound) == (
        "obj", frozenset(["m"]), {"m": "T"}, True)
    plain = wire.Entry("obj", {"m"})
    assert plain.method_to_typeid is None and plain.thread_bound is False
    with pytest.raises(AttributeError):
        entry.obj = "another"
    with pytest.raises(TypeError):
        entry[0]  # a record, not a tuple
    assert repr(entry).startswith("Entry(")


def test_serve_refuses_a_table_row_that_is_not_an_entry(served):
    client, state = served
    kind, text = client.call(8, "add", (1, 2))
    assert kind == P.RESP_FAILURE and "TypeError" in text
    assert client.call(7, "add", (1, 1)) == (P.RESP_RETURN, 2)  # still serving


def test_serve_fallback_control_and_proxy(served):
    client, state = served
    assert client.call(7, "#GETVALUE") == (P.RESP_RETURN, [1, 2, 3])
    assert client.call(0, "echo", (1,), {"k": 2}) == (P.RESP_RETURN, ((1,), {"k": 2}))
    assert client.call(7, "make_child", (3,)) == (P.RESP_PROXY, ("Child", 1001, ("append",)))
    assert state["proxies"] == [("Child", [0, 1, 2])]


def test_serve_oneway(served):
    client, state = served
    client.send_request(P.REQ_ONEWAY, 7, "record", ("first",))
    client.send_request(P.REQ_ONEWAY, 7, "raise_keyerror", ("k",))  # fails silently
    client.send_request(P.REQ_ONEWAY, 999, "record", ("x",))  # unknown ident: silently
    client.send_request(P.REQ_ONEWAY, 7, "nope")  # the fallback refuses: silently
    client.send_request(P.REQ_ONEWAY, 7, "record", (ExplodesOnLoad(),))  # cannot decode: silently
    client.send_request(P.REQ_ONEWAY, 7, "record", ("second",))
    assert client.call(7, "add", (0, 0)) == (P.RESP_RETURN, 0)
    assert state["thing"].log == ["first", "second"]
    assert not client.poll(0.1)  # no stray responses


def test_serve_request_that_cannot_be_decoded(served):
    client, state = served
    kind, text = client.call(7, "record", (ExplodesOnLoad(),))
    assert kind == P.RESP_FAILURE and "LookupError" in text and "cannot unpickle this" in text
    assert client.call(7, "add", (4, 5)) == (P.RESP_RETURN, 9)
    assert state["thing"].log == []


def test_serve_returns_on_eof(served):
    client, state = served
    assert client.call(7, "add", (1, 2)) == (P.RESP_RETURN, 3)
    client.close()
    assert state["worker"].outcome() is None


@pytest.mark.parametrize("body", [
    b"\x07garbage",  # an unknown request kind
    b"\x01\x07\x00",  # a short header
    b"\x01" + bytes(8) + b"\x06\x01\x00\x00\x00m\x08\x00\x00\x00\x00\x00\xff",  # a trailing byte
    b"\x01" + bytes(8) + b"\x03" + bytes(8) + b"\x08\x00\x00\x00\x00\x00",  # method is an int
])
def test_serve_malformed_frame_raises_protocol_error(served, body):
    client, state = served
    assert client.call(7, "add", (1, 2)) == (P.RESP_RETURN, 3)
    client.send_bytes(body)
    with pytest.raises(ProtocolError):
        state["worker"].outcome()


def test_serve_malformed_framing_raises_protocol_error(served):
    client, state = served
    os.write(client.fileno(), struct.pack("!i", -5) + b"zzzz")
    with pytest.raises(ProtocolError):
        state["worker"].outcome()
