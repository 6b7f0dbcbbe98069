"""Shared-memory rings (compiled wire, unix sockets): a connection whose
bytes cross two rings in a memfd, the socket beside them kept for wake-ups,
for seeing the peer go, and for messages too large for a ring (detours).
Checked against the socket path on the same messages, through the hub, end
to end through the negotiation after the handshake, and against a peer that
writes over the rings or breaks the detours' rules."""
import fcntl
import gc
import mmap
import multiprocessing
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from helpers.common import Worker, child_env
from fastmgr import _protocol as P
from fastmgr.errors import ProtocolError
from helpers.hub_rig import BOUND, BOX, wait_for
from helpers.ring import DETOUR_AT, DETOUR_MARK, DETOUR_MIN, TAIL, WRITER_CPU, new_memfd


pytestmark = pytest.mark.timeout(60)

WAIT = 10


@pytest.fixture
def wire(compiled_wire):
    return compiled_wire


@pytest.fixture
def memfd(wire):
    fd = new_memfd(wire)
    yield fd
    os.close(fd)


@pytest.fixture
def ring_pair(wire, memfd):
    a, b = socket.socketpair()
    client, server = wire.Connection(a, timeout=WAIT), wire.Connection(b, timeout=WAIT)
    client.attach_ring(memfd, False)
    server.attach_ring(memfd, True)
    yield client, server
    client.close()
    server.close()


def random_value(rng, depth=0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randrange(-2**70, 2**70)
    if kind == 2:
        return rng.random()
    if kind == 3:
        return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(40)))
    if kind == 4:
        return rng.randbytes(rng.choice([0, 1, 100, 70000, 300000]))
    if kind == 5:
        return rng.random() < 0.5
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    if kind == 7:
        return tuple(random_value(rng, depth + 1) for _ in range(rng.randrange(6)))
    return {str(i): random_value(rng, depth + 1) for i in range(rng.randrange(6))}


def echo_all(conn, n):
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())


def test_messages_cross_the_ring_as_they_cross_a_socket(wire, ring_pair):
    """The same random messages (sizes around the ring's capacity
    included) arrive the same through the rings and through a socket."""
    client, server = ring_pair
    a, b = socket.socketpair()
    plain_client, plain_server = wire.Connection(a, timeout=WAIT), wire.Connection(b, timeout=WAIT)
    rng = random.Random(4)
    cap = wire.Connection.ring_size() // 2 - 256
    sizes = [0, 1, 4, cap - 4, cap - 1, cap, cap + 1, 2 * cap + 3, 3 << 20]
    values = [random_value(rng) for _ in range(200)]
    payloads = [rng.randbytes(n) for n in sizes]
    workers = [Worker(echo_all, s, len(values) + len(payloads)) for s in (server, plain_server)]
    try:
        for value in values:
            client.send(value)
            plain_client.send(value)
            assert client.recv() == plain_client.recv() == value
        for payload in payloads:
            client.send_bytes(payload)
            plain_client.send_bytes(payload)
            assert client.recv_bytes() == plain_client.recv_bytes() == payload
        for w in workers:
            w.outcome()
    finally:
        plain_client.close()
        plain_server.close()


def test_large_messages_reach_a_sleeping_reader_whole(wire, ring_pair):
    """With spinning off every wait sleeps: a writer wakes the reader
    after the first part of a large message and writes the rest while it
    reads; sizes around that first part and the ring's capacity."""
    client, server = ring_pair
    client.spin_us = server.spin_us = 0
    cap = wire.Connection.ring_size() // 2 - 256
    sizes = [(32 << 10) - 1, 32 << 10, (32 << 10) + 1, cap, cap + 1, 3 << 20]
    payloads = [os.urandom(n) for n in sizes]
    worker = Worker(echo_all, server, len(payloads))
    for payload in payloads:
        time.sleep(0.01)  # the echo side is asleep in its wait by now
        client.send_bytes(payload)
        assert client.recv_bytes() == payload
    worker.outcome()


def spin_catches(wire):
    """The catches of every spinner of this user, summed over CPUs: the
    System V segment of wire.spin_segment() holds a 64-byte header, 64
    spinner slots of 8 bytes, then a counter per CPU a cache line apart
    (fastmgr/_wirelib/fm_spin.h)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    key, size = wire.spin_segment(os.geteuid())
    address = libc.shmat(libc.shmget(key, 0, 0), None, 0o10000)  # SHM_RDONLY
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    try:
        data = ctypes.string_at(address, size)
    finally:
        libc.shmdt(ctypes.c_void_p(address))
    return sum(struct.unpack_from("<Q", data, 64 + 512 + 64 * cpu)[0] for cpu in range(64))


def echo_late(conn, n):
    """Echo n messages, each about 50 us after it came: the other side is
    spinning by then."""
    for _ in range(n):
        message = conn.recv_bytes()
        until = time.perf_counter() + 50e-6
        while time.perf_counter() < until:
            pass
        conn.send_bytes(message)


def test_the_writer_says_in_the_ring_which_cpu_it_wrote_from(wire, ring_pair, memfd):
    """Every message put in a ring leaves the writer's CPU beside the
    tail: a reader whose message came only after it yielded learns from it
    whether the writer shares its CPU."""
    client, server = ring_pair
    mask = os.sched_getaffinity(0)
    cpus = sorted(mask)[:2]
    try:
        with mmap.mmap(memfd, wire.Connection.ring_size()) as shared:
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                client.send_bytes(b"x")
                assert server.recv_bytes() == b"x"
                assert struct.unpack_from("<i", shared, WRITER_CPU)[0] == cpu
    finally:
        os.sched_setaffinity(0, mask)


def test_spin_catches_are_counted_in_the_shared_mapping(wire, ring_pair):
    """A spinner that catches its message counts it on its CPU, where every
    process sees it: a long yield after which the count grew little lost
    the CPU to somebody else's busy process, not to our own clients."""
    if wire.spin_sharing() != "machine":
        pytest.skip("no shared spinner segment here: counts stay per process")
    client, server = ring_pair
    client.spin_us = server.spin_us = 2000
    before = spin_catches(wire)
    worker = Worker(echo_late, server, 20)
    for i in range(20):
        client.send_bytes(b"%d" % i)
        assert client.recv_bytes() == b"%d" % i
    worker.outcome()
    assert spin_catches(wire) > before


@pytest.mark.parametrize("spin", [None, 0], ids=["spinning", "asleep"])
def test_large_messages_keep_their_place_in_the_stream(ring_pair, spin):
    """Messages of DETOUR_MIN bytes or more cross the socket, the others
    the ring, in one stream: sent back to back (a writer waits for the
    reader to take one detour before it announces the next) while the
    echoes come back the same way, the order kept."""
    client, server = ring_pair
    if spin is not None:
        client.spin_us = server.spin_us = spin
    rng = random.Random(8)
    sizes = [DETOUR_MIN - 5, DETOUR_MIN - 4, 5, DETOUR_MIN, 1 << 20, 0, 3 << 20,
             DETOUR_MIN * 2, 100, DETOUR_MIN - 4]  # a frame's header is 4 bytes
    payloads = [rng.randbytes(n) for n in sizes]
    worker = Worker(echo_all, server, len(payloads))
    for payload in payloads:
        client.send_bytes(payload)
    assert [client.recv_bytes() for _ in payloads] == payloads
    worker.outcome()


def test_a_large_message_is_announced_in_the_ring_and_sent_on_the_socket(wire, ring_pair,
                                                                          memfd):
    """The detour as the protocol describes it, read by hand."""
    client, server = ring_pair
    client.send("before")
    assert server.recv() == "before"
    payload = os.urandom(DETOUR_MIN)
    sender = Worker(client.send_bytes, payload)
    raw = socket.socket(fileno=os.dup(server.fileno()))
    raw.settimeout(WAIT)
    try:
        got = b""
        while len(got) < 1 + 4 + len(payload):
            chunk = raw.recv(1 << 20)
            assert chunk
            got += chunk.lstrip(b"\0") if not got else chunk  # wake-ups first
    finally:
        raw.close()
    assert got == DETOUR_MARK + struct.pack("!i", len(payload)) + payload
    sender.outcome()
    with mmap.mmap(memfd, wire.Connection.ring_size()) as shared:
        tail, at, length, pending = struct.unpack_from("<QQQI", shared, TAIL)
        assert (at, length, pending) == (tail, 4 + len(payload), 1)
        struct.pack_into("<I", shared, DETOUR_AT + 16, 0)  # taken: as the reader says so
    client.send("after")
    sender = Worker(client.send_bytes, payload)  # a second detour, once the first was taken
    assert server.recv() == "after"
    assert server.recv_bytes() == payload
    sender.outcome()


def test_two_sides_sending_large_messages_at_once_do_not_block_each_other(ring_pair):
    client, server = ring_pair
    big = os.urandom(3 << 20)

    def side(conn):
        for _ in range(4):
            conn.send_bytes(big)
        return [conn.recv_bytes() == big for _ in range(4)]

    workers = [Worker(side, client), Worker(side, server)]
    for w in workers:
        assert w.outcome(timeout=WAIT) == [True] * 4


def test_two_sides_writing_a_lot_at_once_do_not_block_each_other(ring_pair):
    client, server = ring_pair

    def side(conn, tag):
        for i in range(300):
            conn.send((tag, i, b"x" * 5000))  # 1.5 MB each way, ring of 256 kB
        return [conn.recv()[1] for _ in range(300)]

    workers = [Worker(side, client, "c"), Worker(side, server, "s")]
    for w in workers:
        assert w.outcome(timeout=WAIT) == list(range(300))


def test_poll_eof_and_timeout(wire, ring_pair):
    client, server = ring_pair
    assert client.poll(0) is False
    assert client.poll(0.02) is False
    server.send("hi")
    assert client.poll(WAIT) is True
    assert client.recv() == "hi"
    client.timeout = 0.05
    with pytest.raises(TimeoutError):
        client.recv()
    assert client.closed  # a timed-out connection is dropped, as with sockets
    server.close()


def test_peer_closing_is_eof(ring_pair):
    client, server = ring_pair
    server.send("last")
    server.close()
    assert client.recv() == "last"  # what was sent before still arrives
    with pytest.raises(EOFError):
        client.recv()


def test_attach_refuses_what_it_cannot_take(wire, memfd):
    a, b = socket.socketpair()
    conn = wire.Connection(a)
    try:
        small = os.memfd_create("small")
        try:
            with pytest.raises(ValueError):
                conn.attach_ring(small, True)
        finally:
            os.close(small)
        conn.attach_ring(memfd, True)
        assert conn.has_ring
        with pytest.raises(ValueError):
            conn.attach_ring(memfd, True)
    finally:
        conn.close()
        b.close()


def test_impossible_positions_raise_protocol_error(wire, ring_pair, memfd):
    client, server = ring_pair
    client.send("fine")
    assert server.recv() == "fine"
    with mmap.mmap(memfd, wire.Connection.ring_size()) as shared:
        struct.pack_into("<Q", shared, TAIL, 1 << 40)  # client-to-server tail
    with pytest.raises(ProtocolError):
        server.recv()
    assert server.closed


def test_bytes_no_detour_announced_raise_protocol_error(ring_pair):
    client, server = ring_pair
    client.send("fine")
    assert server.recv() == "fine"
    os.write(client.fileno(), b"\0" + DETOUR_MARK + bytes(10))
    with pytest.raises(ProtocolError):
        server.recv()
    assert server.closed


@pytest.mark.parametrize("bad", ["marker", "empty", "ahead", "beyond"])
def test_a_detour_announced_wrongly_raises_protocol_error(wire, ring_pair, memfd, bad):
    """A wrong marker, an empty detour, one announced past what the ring
    holds (its marker came first), or at an impossible place."""
    client, server = ring_pair
    client.send("fine")
    assert server.recv() == "fine"
    ahead = {"ahead": 100, "beyond": 1 << 40}.get(bad, 0)
    with mmap.mmap(memfd, wire.Connection.ring_size()) as shared:
        tail = struct.unpack_from("<Q", shared, TAIL)[0]
        struct.pack_into("<QQI", shared, DETOUR_AT, tail + ahead, 0 if bad == "empty" else 100, 1)
    mark = b"\x01" if bad == "marker" else DETOUR_MARK
    os.write(client.fileno(), b"\0\0" + mark + struct.pack("!i", 96) + bytes(96))
    with pytest.raises(ProtocolError):
        server.recv()
    assert server.closed


@pytest.mark.parametrize("rings", [True, False], ids=["rings", "socket"])
def test_a_large_send_to_a_peer_that_shut_its_side_times_out(wire, memfd, rings):
    """The peer's EOF keeps the socket readable; the send must still keep
    its deadline (it used to loop on that readability for ever)."""
    a, b = socket.socketpair()
    client, server = wire.Connection(a, timeout=0.2), wire.Connection(b, timeout=WAIT)
    try:
        if rings:
            client.attach_ring(memfd, False)
            server.attach_ring(memfd, True)
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(TimeoutError):
            client.send_bytes(bytes(3 << 20))
    finally:
        client.close()
        server.close()


# ---------------------------------------------------------------------------
# through the hub

@pytest.fixture
def memfd_of_test(wire):
    """memfd_of_test(): a new ring file, closed at the end of the test."""
    fds = []

    def make():
        fds.append(new_memfd(wire))
        return fds[-1]

    yield make
    for fd in fds:
        os.close(fd)


def test_hub_serves_ring_and_socket_connections_together(rig, memfd_of_test):
    fds = [memfd_of_test() for _ in range(12)]
    clients = [rig.connect(ring=fd) for fd in fds] + [rig.connect() for _ in range(12)]

    def calls(c, k):
        for i in range(300):
            assert c.call(BOX, "echo", ((k, i),)) == (P.RESP_RETURN, (k, i))

    workers = [Worker(calls, c, k) for k, c in enumerate(clients)]
    for w in workers:
        w.outcome(timeout=WAIT * 3)
    # pipelined: many requests in one go, replies in order
    c = clients[0]
    for i in range(2000):
        c.send_request(P.REQ_CALL, BOX, "echo", (i,))
    assert [c.recv_response()[1] for _ in range(2000)] == list(range(2000))
    # a large argument and reply (detours through the socket)
    big = os.urandom(1 << 20)
    assert c.call(BOX, "echo", (big,)) == (P.RESP_RETURN, big)


def test_hub_hands_a_ring_connection_to_its_own_thread(rig, memfd_of_test):
    fd = memfd_of_test()
    c = rig.connect(ring=fd)
    assert c.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)
    # a thread-bound object: the connection leaves the loop thread
    assert c.call(BOUND, "echo", (2,)) == (P.RESP_RETURN, 2)
    assert rig.stat("handovers") == 1
    for i in range(200):
        assert c.call(BOX, "echo", (i,)) == (P.RESP_RETURN, i)


def test_a_ring_peer_that_does_not_read_stalls_no_one(rig, memfd_of_test):
    """As over sockets: the loop thread blocked on A's full ring is
    replaced, and B (a ring too) is served all the same."""
    fd_a, fd_b = memfd_of_test(), memfd_of_test()
    a, b = rig.connect(ring=fd_a), rig.connect(ring=fd_b)
    for _ in range(8):
        a.send_request(P.REQ_CALL, BOX, "blob", (1 << 20,))
    for i in range(50):
        assert b.call(BOX, "echo", (i,)) == (P.RESP_RETURN, i)
    wait_for(lambda: rig.stat("replacements") >= 1)
    assert a.recv_response() == (P.RESP_RETURN, bytes(1 << 20))  # nothing lost
    a.close()
    (exc, closed), = rig.wait_ended([rig.number(a)])
    assert isinstance(exc, OSError) and not isinstance(exc, ProtocolError), repr(exc)
    assert b.call(BOX, "echo", ("after",)) == (P.RESP_RETURN, "after")


def test_corrupt_ring_ends_only_that_connection(wire, rig, memfd_of_test):
    fd_bad, fd_good = memfd_of_test(), memfd_of_test()
    bad, good = rig.connect(ring=fd_bad), rig.connect(ring=fd_good)
    assert bad.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)
    with mmap.mmap(fd_bad, wire.Connection.ring_size()) as shared:
        struct.pack_into("<Q", shared, TAIL, 1 << 40)
    try:
        os.write(bad.fileno(), b"\0")  # a wake-up, in case the loop sleeps
    except BrokenPipeError:
        pass  # it was awake, saw the ring, and closed already
    (exc, closed), = rig.wait_ended([rig.number(bad)])
    assert isinstance(exc, ProtocolError), repr(exc)
    assert good.call(BOX, "echo", (2,)) == (P.RESP_RETURN, 2)


def test_a_client_gone_mid_detour_ends_only_its_connection(wire, rig, memfd_of_test):
    fd_gone, fd_good = memfd_of_test(), memfd_of_test()
    gone, good = rig.connect(ring=fd_gone), rig.connect(ring=fd_good)
    assert gone.call(BOX, "echo", (1,)) == (P.RESP_RETURN, 1)
    with mmap.mmap(fd_gone, wire.Connection.ring_size()) as shared:
        tail = struct.unpack_from("<Q", shared, TAIL)[0]
        struct.pack_into("<QQI", shared, DETOUR_AT, tail, 1 << 20, 1)
    os.write(gone.fileno(), DETOUR_MARK + struct.pack("!i", (1 << 20) - 4) + bytes(5000))
    gone.close()
    (exc, closed), = rig.wait_ended([rig.number(gone)])
    assert not isinstance(exc, ProtocolError), repr(exc)
    assert good.call(BOX, "echo", (2,)) == (P.RESP_RETURN, 2)
    big = os.urandom(1 << 20)
    assert good.call(BOX, "echo", (big,)) == (P.RESP_RETURN, big)


# ---------------------------------------------------------------------------
# end to end: the offer after the handshake

SERVE = r"""
import sys
from fastmgr import BaseManager
class Maths:
    def add(self, x, y):
        return x + y
    def echo(self, x):
        return x
class M(BaseManager):
    pass
M.register("Maths", Maths)
m = M(address=sys.argv[1], authkey=b"ring")
server = m.get_server()
print("ready", flush=True)
server.serve_forever()
"""


needs_compiled_client = pytest.mark.skipif(
    __import__("fastmgr._backend", fromlist=["wire"]).wire.IMPLEMENTATION != "compiled",
    reason="this process runs the pure-Python wire, which has no rings")


class Served:
    """A manager server in a subprocess: the compiled wire unless env says
    FASTMGR_PUREPYTHON=1."""

    def __init__(self, tmp_path, **env):
        env.setdefault("FASTMGR_PUREPYTHON", "")
        self.address = str(tmp_path / "m.sock")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, self.address],
                                     stdout=subprocess.PIPE, text=True, env=child_env(**env))
        assert self.proc.stdout.readline().strip() == "ready"

    def close(self):
        self.proc.kill()
        self.proc.wait(WAIT)


@pytest.fixture
def serve(tmp_path):
    """serve(**env): a Served manager, killed at the end of the test."""
    started = []

    def start(**env):
        started.append(Served(tmp_path, **env))
        return started[-1]

    yield start
    for served in started:
        served.close()


def raw_ring_client(served, wire):
    """A socket and Connection to served, past a handshake whose hello asks
    for a ring, the offer not yet made."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(served.address)
    conn = wire.Connection(sock, timeout=WAIT)
    wire.answer_challenge(conn, b"ring", os.urandom(16) + P.RING_HELLO)
    return sock, conn


def manager_class():
    from fastmgr import BaseManager

    class M(BaseManager):
        pass
    M.register("Maths")
    return M


def connected_proxy(served):
    m = manager_class()(address=served.address, authkey=b"ring")
    m.connect()
    return m.Maths()


@needs_compiled_client
def test_a_local_client_gets_rings_and_calls_through_them(serve):
    served = serve()
    p = connected_proxy(served)
    assert [p.add(i, 1) for i in range(1000)] == list(range(1, 1001))
    assert p._peer.tls.conn.has_ring


@needs_compiled_client
def test_a_pure_python_server_declines_and_calls_go_through_the_socket(serve):
    served = serve(FASTMGR_PUREPYTHON="1")
    p = connected_proxy(served)
    assert p.add(2, 3) == 5
    assert not p._peer.tls.conn.has_ring


@needs_compiled_client
def test_rings_can_be_turned_off(serve, monkeypatch):
    from fastmgr import connection
    monkeypatch.setattr(connection, "RINGS", False)
    served = serve()
    p = connected_proxy(served)
    assert p.add(2, 3) == 5
    assert not p._peer.tls.conn.has_ring


@needs_compiled_client
@pytest.mark.parametrize("offer", ["no-fd", "garbage", "silence"])
def test_a_bad_ring_offer_ends_only_that_client(serve, offer, wire):
    served = serve(FASTMGR_HANDSHAKE_TIMEOUT="1")
    sock, conn = raw_ring_client(served, wire)
    if offer == "no-fd":
        sock.sendall(struct.pack("!i", len(P.RING_OFFER)) + P.RING_OFFER)
    elif offer == "garbage":
        sock.sendall(b"\0\0\0\x05hello")
    with pytest.raises((EOFError, ConnectionResetError)):
        conn.recv_bytes()
    conn.close()
    p = connected_proxy(served)
    assert p.add(1, 1) == 2


@needs_compiled_client
@pytest.mark.parametrize("kind", ["unsealed", "regular-file", "wrong-size"])
def test_a_ring_file_that_could_change_size_is_declined(serve, tmp_path, wire, kind):
    """Only a memfd sealed at its size is mapped: one that could shrink
    under the server's mapping would kill the server at its next look."""
    served = serve()
    sock, conn = raw_ring_client(served, wire)
    size = wire.Connection.ring_size()
    if kind == "regular-file":
        fd = os.open(str(tmp_path / "ring"), os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, size)
    else:
        fd = os.memfd_create("r", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size if kind == "unsealed" else size - 4096)
        if kind == "wrong-size":
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_SEAL)
    try:
        socket.send_fds(sock, [struct.pack("!i", len(P.RING_OFFER)) + P.RING_OFFER], [fd])
        assert conn.recv_bytes() == P.RING_DECLINE
    finally:
        os.close(fd)
    # the connection goes on over the socket
    kind_, value = conn.call(0, "number_of_objects", ())
    assert kind_ == P.RESP_RETURN and value == 0
    conn.close()


@needs_compiled_client
def test_the_seals_we_set_stop_any_size_change(serve):
    served = serve()
    p = connected_proxy(served)
    assert p.add(1, 2) == 3
    # a file sealed as offer_ring() seals its own: no size change takes
    from fastmgr import connection
    fd = os.memfd_create("probe", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4096)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, connection._RING_SEALS)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        assert connection._sound_ring_file(fd, 4096)
    finally:
        os.close(fd)


@needs_compiled_client
def test_connections_that_end_give_their_rings_back(serve):
    """Threads that call once and end: their connections' mappings go on
    both sides (a Connection unmaps when it goes), so churn leaks nothing."""

    def mapped(pid):
        with open("/proc/%d/maps" % pid) as f:
            return sum(1 for line in f if "fastmgr-ring" in line)

    served = serve()
    p = connected_proxy(served)
    assert p.add(1, 2) == 3
    ours = mapped(os.getpid())  # earlier tests' connections may live on
    for _ in range(3):
        threads = [threading.Thread(target=p.add, args=(1, 2)) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    gc.collect()
    deadline = time.monotonic() + WAIT
    while mapped(served.proc.pid) > 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mapped(served.proc.pid) <= 4  # the main thread's, the anchor's, and slack
    assert mapped(os.getpid()) <= ours + 2


def _echo_large_forever(address, ready):
    m = manager_class()(address=address, authkey=b"ring")
    m.connect()
    p, big = m.Maths(), bytes(1 << 20)
    p.echo(big)
    ready.set()
    while True:
        p.echo(big)


@needs_compiled_client
def test_clients_killed_mid_detour_leave_the_server_whole(serve):
    """1 MiB each way per call (detours both ways): clients SIGKILLed at
    random points of a call; everyone else is served, whole."""
    served = serve()
    p = connected_proxy(served)
    big = os.urandom(1 << 20)
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(5)
    for i in range(6):
        ready = ctx.Event()
        proc = ctx.Process(target=_echo_large_forever, args=(served.address, ready), daemon=True)
        proc.start()
        assert ready.wait(WAIT)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT)
        assert p.echo(big) == big
        assert p.add(i, 1) == i + 1
    assert p._peer.tls.conn.has_ring
