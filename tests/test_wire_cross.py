"""Differential tests: the compiled wire and the python wire write the same
bytes and read each other's.  Needs both (see conftest.compiled_wire)."""
import collections
import enum
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastmgr import _protocol as P
from fastmgr.errors import ProtocolError
from helpers.values import same

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def both(compiled_wire, python_wire):
    return compiled_wire, python_wire


surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(st.characters() | surrogates, max_size=20)
ints = (st.integers(-(2**64), 2**64) | st.integers()
        | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, -(2**71), 2**71 - 1, -(2**64)])
        | st.integers(0, 200).flatmap(lambda k: st.sampled_from([2**k, -(2**k), 2**k - 1, -(2**k) + 1])))
scalars = st.none() | st.booleans() | ints | st.floats() | texts | st.binary(max_size=20)
hashables = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(hashables, inner, max_size=4),
    max_leaves=25,
)


def assert_same_everywhere(both, value, serializer="pickle"):
    compiled, python = both
    c_codec, p_codec = compiled.Codec(serializer), python.Codec(serializer)
    c_bytes, p_bytes = c_codec.dumps(value), p_codec.dumps(value)
    assert c_bytes == p_bytes, "value %r: compiled %s, python %s" % (value, c_bytes.hex(), p_bytes.hex())
    assert same(p_codec.loads(c_bytes), c_codec.loads(p_bytes))
    return p_codec.loads(c_bytes)


@FUZZ
@given(value=values)
@example(value=[-(2**71), 2**71, -(2**63) - 1, 2**63, float("nan"), -0.0, "\udc80"])
def test_same_bytes_for_native_values(both, value):
    back = assert_same_everywhere(both, value)
    assert same(back, value)


@FUZZ
@given(value=values)
def test_same_bytes_safe_and_xmlrpclib(both, value):
    assert same(assert_same_everywhere(both, value, "safe"), value)
    compiled, python = both
    data = compiled.Codec("xmlrpclib").dumps(value)
    assert data == python.Codec("xmlrpclib").dumps(value)
    # a tuple used as a dict key arrives as a list, which cannot be a key:
    # both refuse that the same way
    verdicts = [_outcome(wire.Codec("xmlrpclib").loads, data) for wire in both]
    assert same(verdicts[0], verdicts[1])


class Color(enum.IntEnum):
    RED = 1


def _deep(depth, make):
    value = None
    for _ in range(depth):
        value = make(value)
    return value


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset(),
        Color.RED,
        [Color.RED, (1 + 2j,)],
        collections.OrderedDict(a=1),
        bytearray(b"x"),
        _deep(P.MAX_DEPTH, lambda v: [v]),
        _deep(P.MAX_DEPTH + 1, lambda v: [v]),
        _deep(P.MAX_DEPTH, lambda v: {"k": (v,)}),
        [1, _deep(P.MAX_DEPTH, lambda v: (v,))],
        {"a": [_deep(P.MAX_DEPTH - 1, lambda v: [v])]},
        "x" * 70000,
        b"y" * 70000,
        list(range(1000)),
    ],
    ids=lambda v: ascii(v)[:30],
)
def test_same_bytes_for_pickled_and_deep_values(both, value):
    assert_same_everywhere(both, value)


def test_recursive_value(both):
    value = [1]
    value.append(value)
    compiled, python = both
    c_bytes, p_bytes = compiled.Codec().dumps(value), python.Codec().dumps(value)
    assert c_bytes == p_bytes
    back = compiled.Codec().loads(p_bytes)
    assert back[1] is back


kinds = st.sampled_from([P.REQ_CALL, P.REQ_ONEWAY])
idents = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**32, 2**63, 2**64 - 1])
argss = st.lists(values, max_size=4).map(tuple)
kwdss = st.none() | st.dictionaries(st.text(max_size=8), values, max_size=3)


@FUZZ
@given(kind=kinds, ident=idents, method=texts, args=argss, kwds=kwdss)
def test_same_request_bytes(both, kind, ident, method, args, kwds):
    compiled, python = both
    c_bytes = compiled.Codec().encode_request(kind, ident, method, args, kwds)
    p_bytes = python.Codec().encode_request(kind, ident, method, args, kwds)
    assert c_bytes == p_bytes
    expected = (kind, ident, method, args, kwds or None)
    assert same(compiled.Codec().decode_request(p_bytes), expected)
    assert same(python.Codec().decode_request(c_bytes), expected)


@FUZZ
@given(kind=st.sampled_from([P.RESP_RETURN, P.RESP_ERROR, P.RESP_FAILURE, P.RESP_PROXY]), value=values)
def test_same_response_bytes(both, kind, value):
    compiled, python = both
    c_bytes = compiled.Codec().encode_response(kind, value)
    p_bytes = python.Codec().encode_response(kind, value)
    assert c_bytes == p_bytes
    assert same(compiled.Codec().decode_response(p_bytes), (kind, value))
    assert same(python.Codec().decode_response(c_bytes), (kind, value))


def _outcome(call, data):
    try:
        return ("value", call(data))
    except ProtocolError:
        return ("ProtocolError",)


@FUZZ
@given(data=st.binary(max_size=48))
@example(data=b"\x04\x02\x00\x00\x00\x01\x00")  # a bigint written longer than needed
@example(data=b"\x04\x01\x00\x00\x00\x05")  # a bigint that fits in an int64
@example(data=b"\x04\x00\x00\x00\x00")  # a bigint with no bytes
@example(data=b"\x0a\x02\x00\x00\x00\x00\x00\x00\x01")  # a key given twice
def test_same_verdict_on_random_bytes(both, data):
    """Both accept the same inputs (with equal values) and reject the rest."""
    compiled, python = both
    for name in ("loads", "decode_request", "decode_response"):
        verdicts = [_outcome(getattr(wire.Codec("safe"), name), data) for wire in both]
        assert len(verdicts[0]) == len(verdicts[1]) and same(verdicts[0], verdicts[1]), (
            "%s(%s): compiled %r, python %r" % (name, data.hex(), verdicts[0], verdicts[1]))


@FUZZ
@given(body=st.binary(max_size=300))
def test_same_frames(both, body):
    compiled, python = both
    assert compiled.frame(body) == python.frame(body)


def _drain(reader):
    got = []
    while (msg := reader.next_message()) is not None:
        got.append(msg)
    return got


def _read_split(wire, stream, cuts):
    reader = wire.FrameReader()
    got = []
    start = 0
    for cut in list(cuts) + [len(stream)]:
        reader.feed(stream[start:cut])
        got += _drain(reader)
        start = cut
    return got


@settings(max_examples=50, deadline=None)
@given(bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_frame_reader_every_split(both, bodies):
    compiled, python = both
    stream = b"".join(python.frame(b) for b in bodies)
    for cut in range(len(stream) + 1):
        for wire in both:
            assert _read_split(wire, stream, [cut]) == bodies
    for wire in both:
        assert _read_split(wire, stream, range(1, len(stream))) == bodies  # one byte at a time


@FUZZ
@given(bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=6), data=st.data())
def test_frame_reader_random_splits(both, bodies, data):
    stream = b"".join(both[1].frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    for wire in both:
        assert _read_split(wire, stream, cuts) == bodies


def test_frame_reader_long_form_every_split(both):
    stream = (struct.pack("!i", -1) + struct.pack("!Q", 5) + b"hello"
              + both[0].frame(b"x") + struct.pack("!i", -1) + struct.pack("!Q", 0))
    for wire in both:
        for cut in range(len(stream) + 1):
            assert _read_split(wire, stream, [cut]) == [b"hello", b"x", b""]
        assert _read_split(wire, stream, range(1, len(stream))) == [b"hello", b"x", b""]


# -- out-of-band buffers (_protocol.py, "Out-of-band buffers") --------------------

BIG = P.OOB_MIN


@pytest.mark.parametrize(
    "value",
    [
        bytearray(b"a" * BIG),
        memoryview(b"m" * BIG),
        memoryview(bytearray(2 * BIG)).cast("I", (BIG // 4, 2)),
        [b"x" * BIG, b"y" * (BIG - 1), (b"z" * (BIG + 1),)],
        {"k": b"v" * BIG, b"k" * BIG: 1},
        [bytes([i]) * BIG for i in range(P.MAX_BUFFERS + 2)],
    ],
    ids=["bytearray", "memoryview", "memoryview-2d", "mixed", "dict", "over-the-limit"],
)
def test_same_bytes_with_buffers(both, value):
    compiled, python = both
    c_bytes, p_bytes = compiled.Codec().dumps(value), python.Codec().dumps(value)
    assert c_bytes == p_bytes
    for wire, data in ((compiled, p_bytes), (python, c_bytes)):
        back = wire.Codec().loads(data)
        if isinstance(value, memoryview):
            assert (back.tobytes(), back.format, back.shape) == (
                value.tobytes(), value.format, value.shape)
        else:
            assert same(back, value)
    envelopes = [wire.Codec().encode_request(P.REQ_CALL, 9, "m", (value, 1), {"kw": value})
                 for wire in both]
    assert envelopes[0] == envelopes[1]
    envelopes = [wire.Codec().encode_response(P.RESP_RETURN, value) for wire in both]
    assert envelopes[0] == envelopes[1]


def test_same_bytes_for_arrays(both):
    np = pytest.importorskip("numpy")
    c_order = np.arange(BIG, dtype=np.float64).reshape(64, -1)
    compiled, python = both
    for value in (c_order, np.asfortranarray(c_order), c_order[::2], np.array(1.5),
                  np.array([None, "x"] * 100, dtype=object)):
        c_bytes, p_bytes = compiled.Codec().dumps([value, 5]), python.Codec().dumps([value, 5])
        assert c_bytes == p_bytes
        for wire, data in ((compiled, p_bytes), (python, c_bytes)):
            back = wire.Codec().loads(data)
            assert back[1] == 5 and back[0].dtype == value.dtype
            assert back[0].tolist() == value.tolist()
    many = [np.full(BIG // 8, i, dtype=np.float64) for i in range(P.MAX_BUFFERS + 1)]
    assert compiled.Codec().dumps(many) == python.Codec().dumps(many)


entry_kinds = st.sampled_from([P.BUF_BYTES, P.BUF_BYTEARRAY, 2])
entry_sizes = st.sampled_from([BIG - 1, BIG, BIG + 3])
inline_parts = st.sampled_from([
    bytes([P.T_BYTES_OOB]),
    bytes([P.T_PICKLE_OOB]) + struct.pack("<II", 1, 1) + b"N",
    bytes([P.T_PICKLE_OOB]) + struct.pack("<II", 0, 1) + b"N",
    bytes([P.T_LIST]) + struct.pack("<I", 2) + bytes([P.T_BYTES_OOB]) * 2,
    bytes([P.T_NONE]),
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(miscount=st.sampled_from([0, 0, 0, 1, -1, P.MAX_BUFFERS]),
       entries=st.lists(st.tuples(entry_kinds, entry_sizes), max_size=3),
       inline=inline_parts, slack=st.sampled_from([0, 0, -1, 1]),
       cut=st.sampled_from([0, 0, 0, 1, 7, 20]))
@example(miscount=0, entries=[(P.BUF_BYTES, BIG)], inline=bytes([P.T_BYTES_OOB]), slack=0, cut=0)
def test_same_verdict_on_buffer_tables(both, miscount, entries, inline, slack, cut):
    """Bodies that start with BODY_BUFFERS, well formed or not: both wires
    accept the same ones with the same values and refuse the rest."""
    count = max(0, len(entries) + miscount)
    head = struct.pack("<BI", P.BODY_BUFFERS, count)
    head += b"".join(struct.pack("<BQ", kind, size) for kind, size in entries)
    total = sum(size for _, size in entries) + slack
    body = head + inline + b"\x01" * max(0, total)
    if cut:
        body = body[:-cut]
    for serializer in ("pickle", "safe"):
        verdicts = [_any_outcome(wire.Codec(serializer).loads, body) for wire in both]
        assert len(verdicts[0]) == len(verdicts[1]) and same(verdicts[0], verdicts[1]), (
            "compiled %r, python %r" % (verdicts[0][0], verdicts[1][0]))


def _any_outcome(call, data):
    """As _outcome, and any other exception by its type (an unpickler's)."""
    try:
        return _outcome(call, data)
    except Exception as exc:
        return (type(exc).__name__,)


def test_dict_views_go_as_lists(both):
    d = {"a": 1, 2: (3, 4), None: [5, {"x": b"y"}]}
    for view in (d.keys(), d.values(), d.items(), {}.items()):
        for serializer in ("pickle", "safe"):
            as_list = both[1].Codec(serializer).dumps(list(view))
            assert [wire.Codec(serializer).dumps(view) for wire in both] == [as_list] * 2
            assert same(both[0].Codec(serializer).loads(as_list), list(view))
