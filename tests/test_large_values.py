"""Large values: out-of-band buffers (``_protocol.py``, "Out-of-band
buffers"), on both wires, through connections and through managers."""
import multiprocessing
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

import fastmgr
from fastmgr import _bench
from fastmgr import _protocol as P
from fastmgr._backend import wire
from fastmgr.connection import Client
from fastmgr.errors import MessageTooLarge, ProtocolError
from helpers.common import Worker, raw_pair

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
BIG = P.OOB_MIN  # the smallest buffer that goes out of band


@pytest.fixture
def pair(impls, transport):
    a_sock, b_sock = raw_pair(transport)
    a, b = impls[0].Connection(a_sock, timeout=30), impls[1].Connection(b_sock, timeout=30)
    yield a, b
    a.close()
    b.close()


def buffer_table(body):
    """[(kind, size)] of a body with out-of-band buffers, else None."""
    if body[0] != P.BODY_BUFFERS:
        return None
    count = struct.unpack_from("<I", body, 1)[0]
    return [struct.unpack_from("<BQ", body, P.BUFFER_PREFIX_SIZE + i * P.BUFFER_ENTRY_SIZE)
            for i in range(count)]


def same_array(got, sent):
    """Equal, of one dtype and shape, laid out in the same order (pickle
    makes a non-contiguous array contiguous)."""
    if not (type(got) is type(sent) and got.dtype == sent.dtype and got.shape == sent.shape):
        return False
    if sent.flags.c_contiguous or sent.flags.f_contiguous:
        if (got.flags.c_contiguous, got.flags.f_contiguous) != (
                sent.flags.c_contiguous, sent.flags.f_contiguous):
            return False
    if sent.dtype == object:
        return all(x == y for x, y in zip(got.ravel(), sent.ravel()))
    return np.array_equal(got, sent)


def arrays():
    rng = np.random.default_rng(7)
    c_order = rng.random((256, 128))
    return {
        "C-ordered": c_order,
        "F-ordered": np.asfortranarray(c_order),
        "non-contiguous": c_order[::2, ::3],
        "0-d": np.array(2.5),
        "int8": rng.integers(-128, 127, 3 * BIG, dtype=np.int8),
        "complex": rng.random(BIG // 8) + 1j,
        "structured": np.zeros(BIG, dtype=[("a", "<i4"), ("b", "<f8")]),
        "read-only": np.frombuffer(bytes(2 * BIG), dtype=np.uint16),
        "object dtype": np.array([1, "two", None, (3,)] * 5000, dtype=object),
    }


# -- the codec ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(arrays()))
def test_arrays_round_trip(wire, name):
    array = arrays()[name]
    codec = wire.Codec()
    data = codec.dumps(array)
    back = codec.loads(data)
    assert same_array(back, array)
    assert back.flags.writeable == array.flags.writeable
    table = buffer_table(data)
    if name in ("non-contiguous", "0-d", "object dtype"):
        # numpy pickles these in band (the object dtype as a normal pickle)
        assert table is None
    else:
        assert table == [(P.BUF_BYTEARRAY, array.nbytes)]
        assert len(data) < array.nbytes + 300  # the data is not in the pickle too


def test_bytes_bytearray_memoryview_contents(wire):
    codec = wire.Codec()
    raw = bytes(range(256)) * (BIG // 128)
    values = [raw, bytearray(raw), memoryview(raw), memoryview(bytearray(raw)),
              memoryview(np.arange(BIG, dtype=np.float64).reshape(256, -1)),
              memoryview(raw)[::2]]
    back = codec.loads(codec.dumps(values))
    assert [type(v) for v in back] == [bytes, bytearray] + [memoryview] * 4
    for sent, got in zip(values, back):
        assert bytes(got) == bytes(sent)
    for sent, got in zip(values[2:], back[2:]):
        assert (got.format, got.shape, got.readonly) == (sent.format, sent.shape, sent.readonly)
    kinds = [kind for kind, _ in buffer_table(codec.dumps(values))]
    # bytes natively; a strided memoryview is copied (C order) before it goes
    assert kinds == [P.BUF_BYTES] + [P.BUF_BYTEARRAY] * 5


def test_small_buffers_stay_inline(wire):
    codec = wire.Codec()
    value = [b"x" * (BIG - 1), bytearray(BIG - 1), np.zeros((BIG - 1) // 8)]
    data = codec.dumps(value)
    assert buffer_table(data) is None
    assert codec.loads(data)[:2] == value[:2]


def test_buffer_limit_per_message(wire):
    codec = wire.Codec()
    value = [bytes([i]) * BIG for i in range(P.MAX_BUFFERS + 2)]
    data = codec.dumps(value)
    assert len(buffer_table(data)) == P.MAX_BUFFERS  # the rest inline
    assert codec.loads(data) == value


def test_requests_and_responses_carry_buffers(wire):
    codec = wire.Codec()
    array = np.arange(BIG, dtype=np.int32)
    kwds = {"blob": b"k" * BIG}
    data = codec.encode_request(P.REQ_CALL, 5, "put", (array, [array, 1]), kwds)
    assert [kind for kind, _ in buffer_table(data)] == [P.BUF_BYTEARRAY] * 2 + [P.BUF_BYTES]
    kind, ident, method, args, got_kwds = codec.decode_request(data)
    assert (kind, ident, method, got_kwds) == (P.REQ_CALL, 5, "put", kwds)
    assert same_array(args[0], array) and same_array(args[1][0], array)
    data = codec.encode_response(P.RESP_RETURN, {"a": array})
    kind, value = codec.decode_response(data)
    assert kind == P.RESP_RETURN and same_array(value["a"], array)


def _body(entries, inline, buffers=None):
    head = struct.pack("<BI", P.BODY_BUFFERS, len(entries))
    head += b"".join(struct.pack("<BQ", kind, size) for kind, size in entries)
    if buffers is None:
        buffers = [b"\0" * size for _, size in entries]
    return head + inline + b"".join(buffers)


T_BYTES_OOB, T_PICKLE_OOB = bytes([P.T_BYTES_OOB]), bytes([P.T_PICKLE_OOB])

MALFORMED = {
    "no count": bytes([P.BODY_BUFFERS, 1, 0]),
    "no buffer": _body([], T_BYTES_OOB),
    "too many buffers": _body([(P.BUF_BYTES, BIG)] * (P.MAX_BUFFERS + 1), T_BYTES_OOB),
    "truncated table": _body([(P.BUF_BYTES, BIG)], b"")[:10],
    "unknown kind": _body([(2, BIG)], T_BYTES_OOB),
    "small buffer": _body([(P.BUF_BYTES, BIG - 1)], T_BYTES_OOB),
    "buffers past the end": _body([(P.BUF_BYTES, BIG)], T_BYTES_OOB, [b"\0" * (BIG - 1)]),
    "no inline byte": _body([(P.BUF_BYTES, BIG)], b""),
    "huge size": _body([(P.BUF_BYTES, 1 << 62)], T_BYTES_OOB, [b""]),
    "unused buffer": _body([(P.BUF_BYTES, BIG)] * 2, T_BYTES_OOB),
    "wrong kind": _body([(P.BUF_BYTEARRAY, BIG)], T_BYTES_OOB),
    "a buffer without the table": T_BYTES_OOB,
    "a pickle without buffers": T_PICKLE_OOB + struct.pack("<II", 0, 1) + b".",
    "a pickle taking too many": _body([(P.BUF_BYTEARRAY, BIG)],
                                      T_PICKLE_OOB + struct.pack("<II", 2, 1) + b"."),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bodies_are_refused(wire, name):
    for decode in (wire.Codec().loads, wire.Codec("safe").loads):
        with pytest.raises(ProtocolError):
            decode(MALFORMED[name])


def test_safe_refuses_a_pickle_with_buffers(wire):
    data = wire.Codec().dumps(np.zeros(BIG))
    with pytest.raises(ProtocolError):
        wire.Codec("safe").loads(data)
    # bytes need no pickle
    assert wire.Codec("safe").loads(wire.Codec("safe").dumps(b"s" * BIG)) == b"s" * BIG


# -- connections -----------------------------------------------------------------


def test_values_cross_connections_in_fresh_buffers(pair):
    a, b = pair
    array = np.random.default_rng(1).random(MIB // 8)
    value = {"array": array, "f": np.asfortranarray(array.reshape(256, -1)),
             "bytes": b"b" * MIB, "bytearray": bytearray(b"c" * BIG), "small": [1, "x"]}
    for sender, receiver in ((a, b), (b, a)):
        worker = Worker(sender.send, value)
        got = receiver.recv()
        worker.outcome()
        assert same_array(got["array"], array) and same_array(got["f"], value["f"])
        assert got["bytes"] == value["bytes"] and got["bytearray"] == value["bytearray"]
        assert got["small"] == [1, "x"]
        assert got["array"].flags.writeable
        # the array's memory is a buffer of its own, not shared with another value
        base = got["array"].base
        while isinstance(base, (memoryview, np.ndarray)):
            base = base.obj if isinstance(base, memoryview) else base.base
        assert type(base) is bytearray and len(base) == array.nbytes


def test_many_buffers_and_a_small_message_after(pair):
    a, b = pair
    value = [np.full(BIG // 8, i, dtype=np.float64) for i in range(P.MAX_BUFFERS + 3)]
    worker = Worker(a.send, value)
    got = b.recv()
    worker.outcome()
    assert all(same_array(x, y) for x, y in zip(got, value))
    a.send("after")
    assert b.recv() == "after"


def _request_size(codec, args):
    return len(codec.encode_request(P.REQ_CALL, 1, "m", args, None))


def test_max_message_exact_and_one_byte_over(impls, transport):
    limit = 2 * MIB
    a_sock, b_sock = raw_pair(transport)
    a = impls[0].Connection(a_sock, max_message=limit, timeout=30)
    b = impls[1].Connection(b_sock, max_message=limit, timeout=30)
    try:
        payload = b"p" * (BIG + limit - _request_size(a.codec, (b"p" * BIG,)))
        assert _request_size(a.codec, (payload,)) == limit
        worker = Worker(a.send_request, P.REQ_CALL, 1, "m", (payload,))
        got = b.recv_bytes()
        worker.outcome()
        assert len(got) == limit
        with pytest.raises(MessageTooLarge):
            a.send_request(P.REQ_CALL, 1, "m", (payload + b"!",))
        assert not a.closed
        a.send("usable")
        assert b.recv() == "usable"
    finally:
        a.close()
        b.close()


class Store(_bench.Store):
    def make(self, nbytes):
        return b"m" * nbytes


@pytest.fixture
def served(impls, transport):
    """A client Connection (impls[1]) and serve_connection (impls[0]) over
    a Store, with a 4 MiB limit on both sides."""
    server_wire, client_wire = impls
    a_sock, b_sock = raw_pair(transport)
    server_conn = server_wire.Connection(a_sock, max_message=4 * MIB)
    client = client_wire.Connection(b_sock, max_message=4 * MIB, timeout=30)
    table = {7: server_wire.Entry(Store(), {"put", "get", "make"})}

    def fallback(ident, obj, method, args, kwds):
        raise AttributeError(method)

    worker = Worker(server_wire.serve_connection, server_conn, table, server_wire.Entry(object(), set()),
                    fallback, lambda typeid, obj: None)
    yield client
    client.close()
    worker.join(10)
    server_conn.close()


def test_serve_arguments_and_results_out_of_band(served):
    client = served
    array = np.random.default_rng(2).random((512, 300))
    for value in (array, np.asfortranarray(array), [array, b"x" * MIB]):
        assert served.call(7, "put", (value,)) == (P.RESP_RETURN, None)
        kind, got = served.call(7, "get")
        assert kind == P.RESP_RETURN
        if isinstance(value, list):
            assert same_array(got[0], array) and got[1] == value[1]
        else:
            assert same_array(got, value)
    assert client.call(7, "make", (10,)) == (P.RESP_RETURN, b"m" * 10)


def test_serve_a_result_over_the_limit(served):
    kind, value = served.call(7, "make", (4 * MIB,))
    assert kind == P.RESP_ERROR and isinstance(value[0], MessageTooLarge)
    assert served.call(7, "make", (3,)) == (P.RESP_RETURN, b"mmm")


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    """(server context, client context): a self-signed certificate for
    localhost, made with the openssl command."""
    ssl = pytest.importorskip("ssl")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem", "-out",
                    "cert.pem", "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost"], cwd=str(d), check=True, capture_output=True,
                   timeout=60)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    client = ssl.create_default_context(cafile=str(d / "cert.pem"))
    return server, client


@pytest.mark.parametrize("server_name, client_name", [
    ("compiled", "python"), ("python", "compiled"), ("compiled", "compiled")])
def test_tls_carries_buffers(tls_contexts, server_name, client_name, request):
    server_wire = request.getfixturevalue(server_name + "_wire")
    client_wire = request.getfixturevalue(client_name + "_wire")
    server_ctx, client_ctx = tls_contexts
    array = np.random.default_rng(3).random(MIB // 8)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()

    def echo():
        conn = server_wire.Connection(server_ctx.wrap_socket(accepted, server_side=True),
                                      timeout=30)
        try:
            conn.send(conn.recv())
        finally:
            conn.close()

    worker = Worker(echo)
    client = client_wire.Connection(client_ctx.wrap_socket(raw, server_hostname="localhost"),
                                    timeout=30)
    try:
        client.send([array, b"t" * MIB])
        back = client.recv()
    finally:
        client.close()
    worker.outcome(30)
    assert same_array(back[0], array) and back[1] == b"t" * MIB


# -- managers ----------------------------------------------------------------------

FORK = multiprocessing.get_context("fork")


class LargeManager(fastmgr.SyncManager):
    pass


LargeManager.register("Store", Store)


@pytest.fixture(scope="module")
def manager():
    m = LargeManager()
    m.start()
    yield m
    m.shutdown()


@pytest.mark.parametrize("nbytes", [200 * 1024, 300 * 1024, 8 * MIB],
                         ids=["within a ring", "above the rings", "8 MiB"])
def test_arrays_through_a_method_a_queue_and_a_list(manager, nbytes):
    array = np.random.default_rng(nbytes).random(nbytes // 8)
    store, q = manager.Store(), manager.Queue()
    for value in (array, np.asfortranarray(array.reshape(-1, 64)), bytes(nbytes),
                  bytearray(b"y" * nbytes)):
        store.put(value)
        got = store.get()
        q.put(value)
        from_queue = q.get()
        for back in (got, from_queue):
            if isinstance(value, np.ndarray):
                assert same_array(back, value) and back.flags.writeable
            else:
                assert type(back) is type(value) and back == value
    items = manager.list([array, 1])
    items.append(array)
    got = items[:]
    assert same_array(got[0], array) and got[1] == 1 and same_array(got[2], array)


def _body_size(ident, method, args):
    return len(wire.Codec().encode_request(P.REQ_CALL, ident, method, args, None))


def test_max_message_through_a_manager():
    limit = 2 * MIB
    with LargeManager(max_message=limit) as m:
        store = m.Store()
        payload = b"p" * (BIG + limit - _body_size(store._id, "put", (b"p" * BIG,)))
        assert _body_size(store._id, "put", (payload,)) == limit
        store.put(payload)
        assert store.get() == payload
        with pytest.raises(MessageTooLarge):
            store.put(payload + b"!")
        assert store.get() == payload  # the connection goes on
        # a result over the limit: the server says so instead
        with pytest.raises(MessageTooLarge):
            store.make(limit)
        assert store.make(3) == b"mmm"


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _send_part_then_hang(address, authkey, ident, pipe):
    """Connect without rings, send the first quarter of a 64 MiB request,
    say so, and wait to be killed."""
    conn = Client(address, authkey, hello=os.urandom(16))
    array = np.ones(64 * MIB // 8)
    body = wire.Codec().encode_request(P.REQ_CALL, ident, "put", (array,), None)
    frame = struct.pack("!i", len(body)) + body
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.sendall(frame[: len(frame) // 4])
    pipe.send("sent")
    time.sleep(60)


def _put_and_get_killed(store, pipe):
    array = np.ones(64 * MIB // 8)
    pipe.send("sending")
    store.put(array)
    pipe.send("sent")
    time.sleep(60)


def _wait_rss_below(pid, limit_kb, timeout=10):
    deadline = time.monotonic() + timeout
    while _rss_kb(pid) > limit_kb and time.monotonic() < deadline:
        time.sleep(0.05)
    return _rss_kb(pid)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
@pytest.mark.parametrize("how", ["a raw frame, cut", "a proxy call, killed at once"])
def test_client_killed_while_sending_64mib(how):
    with LargeManager() as m:
        server = m._process.pid
        store, other = m.Store(), m.Store()
        other.put("still here")
        baseline = _rss_kb(server)
        mine, theirs = FORK.Pipe()
        if how == "a raw frame, cut":
            child = FORK.Process(target=_send_part_then_hang,
                                 args=(m.address, bytes(m._authkey), store._id, theirs))
        else:
            child = FORK.Process(target=_put_and_get_killed, args=(store, theirs))
        child.start()
        try:
            assert mine.poll(30)
            mine.recv()
            if how == "a raw frame, cut":
                # others are served while a message is half in
                assert other.get() == "still here"
            else:
                time.sleep(0.005)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
        assert other.get() == "still here"
        # what the half message took is freed (a put that got through
        # keeps its 64 MiB in the store: replace it)
        store.put(None)
        assert _wait_rss_below(server, baseline + 16 * 1024) <= baseline + 16 * 1024
        assert other.get() == "still here"


@pytest.mark.parametrize("address", ["unix", "tcp"])
def test_messages_above_the_backlog_bound_pipelined(address):
    """A request or a reply larger than a server connection's bound on
    unread requests plus unsent replies (BACKLOG_MAX) is still received,
    and sent, whole, with more of them waiting behind it."""
    array = np.arange(2 * P.BACKLOG_MAX // 8, dtype=np.float64)      # twice the bound
    m = LargeManager(address=("127.0.0.1", 0) if address == "tcp" else None)
    m.start()
    try:
        store = m.Store()
        with fastmgr.pipeline(store):
            pending = []
            for i in range(4):
                store.put(array + i)
                pending.append(store.get())
        for i, p in enumerate(pending):
            assert same_array(p.result(), array + i)
        assert same_array(store.get(), array + 3)
    finally:
        m.shutdown()
