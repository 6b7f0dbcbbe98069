"""The value codec and the envelopes, against the text of fastmgr/_protocol.py."""
import collections
import enum
import gc
import pickle
import struct
import sys
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmgr import _pickling, _protocol as P
from fastmgr.errors import ProtocolError, UnsafeValueError
from helpers.values import same

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def u32(n):
    return struct.pack("<I", n)


def nested_lists(depth, leaf=None):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


class Color(enum.IntEnum):
    RED = 1


class MyList(list):
    pass


class MyDict(dict):
    pass


class MyStr(str):
    pass


def _explode(message):
    raise LookupError(message)


class ExplodesOnLoad:
    """Pickles fine; unpickling it raises LookupError."""

    def __reduce__(self):
        return _explode, ("boom",)


EDGE_VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    2**64,
    -(2**64),
    2**71,
    -(2**71),
    -(2**71) - 1,
    2**1000 + 12345,
    -(3**700),
    0.0,
    -0.0,
    1.5,
    float("inf"),
    float("-inf"),
    float("nan"),
    5e-324,
    "",
    "ascii",
    "h\u00e9llo \u4e16\u754c \U0001f600",
    "\ud800",
    "a\udfffb\udc80",
    "\x00",
    b"",
    b"\x00\xff" * 100,
    (),
    [],
    {},
    (1,),
    [None, True, 1, 1.0, "1", b"1"],
    {"a": 1, 2: "b", (3, 4): [5], None: {}, 1.5: (), b"k": True, False: 0},
    (1, [2, (3, {4: [5, (6,)]})]),
    [[], [[]], [[[]]]],
    "x" * 100000,
]


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("value", EDGE_VALUES, ids=lambda v: ascii(v)[:40])
def test_round_trip(wire, value):
    codec = wire.Codec()
    data = codec.dumps(value)
    assert type(data) is bytes
    assert same(codec.loads(data), value)
    assert data[0] != P.T_PICKLE  # every one of these has a native tag


def test_bool_is_not_int(wire):
    codec = wire.Codec()
    assert codec.dumps(True) == bytes([P.T_TRUE])
    assert codec.dumps(False) == bytes([P.T_FALSE])
    assert codec.dumps(1)[0] == P.T_INT64
    assert codec.loads(codec.dumps(True)) is True
    assert type(codec.loads(codec.dumps(1))) is int
    assert [type(x) for x in codec.loads(codec.dumps([0, False, 1, True]))] == [int, bool, int, bool]


@pytest.mark.parametrize(
    "value",
    [Color.RED, MyList([1, 2]), MyDict(a=1), MyStr("s"), {1, 2}, frozenset([3]), bytearray(b"ab"),
     1 + 2j, collections.OrderedDict(a=1), range(3)],
    ids=lambda v: type(v).__name__,
)
def test_other_types_are_pickled_and_keep_their_type(wire, value):
    codec = wire.Codec()
    data = codec.dumps(value)
    raw = _pickling.dumps(value)
    assert data == bytes([P.T_PICKLE]) + u32(len(raw)) + raw
    back = codec.loads(data)
    assert type(back) is type(value)
    assert back == value


def test_pickled_items_inside_native_containers(wire):
    codec = wire.Codec()
    value = [1, Color.RED, {"k": {5}}]
    data = codec.dumps(value)
    assert data[0] == P.T_LIST
    back = codec.loads(data)
    assert back == value and type(back[1]) is Color and type(back[2]["k"]) is set


def test_recursive_list_is_pickled_whole(wire):
    codec = wire.Codec()
    lst = [1, "a"]
    lst.append(lst)
    data = codec.dumps(lst)
    assert data[0] == P.T_PICKLE
    back = codec.loads(data)
    assert back[:2] == [1, "a"] and back[2] is back


def test_recursive_dict_is_pickled_whole(wire):
    codec = wire.Codec()
    d = {"x": 1}
    d["self"] = [d]
    back = codec.loads(codec.dumps(d))
    assert back["self"][0] is back


def test_shared_references_arrive_as_copies(wire):
    codec = wire.Codec()
    inner = [1]
    back = codec.loads(codec.dumps([inner, inner]))
    assert back == [[1], [1]] and back[0] is not back[1]


@pytest.mark.parametrize("make", [lambda x: [x], lambda x: (x,), lambda x: {"k": x}],
                         ids=["list", "tuple", "dict"])
def test_depth_limit(wire, make):
    codec = wire.Codec()

    def nest(depth):
        value = 7
        for _ in range(depth):
            value = make(value)
        return value

    at_limit = nest(P.MAX_DEPTH)
    data = codec.dumps(at_limit)
    assert data[0] != P.T_PICKLE and bytes([P.T_PICKLE]) not in data[:-9]
    assert codec.loads(data) == at_limit

    over = nest(P.MAX_DEPTH + 1)
    data = codec.dumps(over)
    raw = _pickling.dumps(over)
    assert data == bytes([P.T_PICKLE]) + u32(len(raw)) + raw  # the whole value, not the deep part
    assert codec.loads(data) == over


def test_depth_counts_containers_not_scalars(wire):
    codec = wire.Codec()
    # MAX_DEPTH containers holding scalars is native; one deep branch among
    # shallow ones pickles the whole top-level value
    assert codec.dumps(nested_lists(P.MAX_DEPTH, "leaf"))[0] == P.T_LIST
    wide = [1, 2, nested_lists(P.MAX_DEPTH), 3]
    assert codec.dumps(wide)[0] == P.T_PICKLE
    assert codec.loads(codec.dumps(wide)) == wide


def test_fresh_codec_defaults_to_pickle(wire):
    assert wire.Codec().serializer == "pickle"
    for name in P.SERIALIZERS:
        assert wire.Codec(name).serializer == name


def test_unknown_serializer(wire):
    with pytest.raises(ValueError):
        wire.Codec("marshal")


# -- exact bytes ---------------------------------------------------------------

EXACT = [
    (None, "00"),
    (False, "01"),
    (True, "02"),
    (0, "03 0000000000000000"),
    (-2, "03 feffffffffffffff"),
    (2**63 - 1, "03 ffffffffffffff7f"),
    (-(2**63), "03 0000000000000080"),
    (2**63, "04 09000000 000000000000008000"),
    (-(2**63) - 1, "04 09000000 ffffffffffffff7fff"),
    (2**64 - 1, "04 09000000 ffffffffffffffff00"),
    (-(2**71), "04 09000000 000000000000000080"),  # minimal: 9 bytes, not 10
    (2**71, "04 0a000000 00000000000000008000"),
    (1.0, "05 000000000000f03f"),
    (-0.0, "05 0000000000000080"),
    (float("inf"), "05 000000000000f07f"),
    ("", "06 00000000"),
    ("h\u00e9", "06 03000000 68c3a9"),
    ("\ud800", "06 03000000 eda080"),
    (b"\x00\xff", "07 02000000 00ff"),
    ((), "08 00000000"),
    ((1, None), "08 02000000 03 0100000000000000 00"),
    ([True, []], "09 02000000 02 09 00000000"),
    ({}, "0a 00000000"),
    ({"a": b""}, "0a 01000000 06 01000000 61 07 00000000"),
]


@pytest.mark.parametrize("value,hexed", EXACT, ids=[h for _, h in EXACT])
def test_exact_bytes(wire, value, hexed):
    codec = wire.Codec()
    expected = bytes.fromhex(hexed)
    assert codec.dumps(value) == expected
    assert same(codec.loads(expected), value)


def test_exact_request_and_response_bytes(wire):
    codec = wire.Codec()
    expected = bytes.fromhex("01 0500000000000000 06 03000000 676574 08 01000000 09 00000000 00")
    assert codec.encode_request(P.REQ_CALL, 5, "get", ([],), None) == expected
    assert codec.encode_request(P.REQ_CALL, 5, "get", ([],), {}) == expected  # {} is "no keywords"
    assert codec.decode_request(expected) == (P.REQ_CALL, 5, "get", ([],), None)

    expected = bytes.fromhex(
        "02 ffffffffffffffff 06 01000000 6d 08 00000000 0a 01000000 06 01000000 6b 00"
    )
    assert codec.encode_request(P.REQ_ONEWAY, 2**64 - 1, "m", (), {"k": None}) == expected
    assert codec.decode_request(expected) == (P.REQ_ONEWAY, 2**64 - 1, "m", (), {"k": None})

    assert codec.encode_response(P.RESP_RETURN, 1) == bytes.fromhex("10 03 0100000000000000")
    assert codec.encode_response(P.RESP_FAILURE, "tb") == bytes.fromhex("12 06 02000000 7462")
    assert codec.decode_response(bytes.fromhex("13 08 00000000")) == (P.RESP_PROXY, ())


def test_frame_bytes(wire):
    assert wire.frame(b"") == b"\x00\x00\x00\x00"
    assert wire.frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert wire.frame(b"x" * 300) == b"\x00\x00\x01\x2c" + b"x" * 300
    assert wire.frame(bytearray(b"ab")) == b"\x00\x00\x00\x02ab"


# -- envelopes ---------------------------------------------------------------


@pytest.mark.parametrize("kind", [P.REQ_CALL, P.REQ_ONEWAY])
def test_request_round_trip(wire, kind):
    codec = wire.Codec()
    args = (1, "two", [3.0], {"four": (4,)}, Color.RED)
    kwds = {"a": None, "b": {5}}
    data = codec.encode_request(kind, 123456789, "method_name", args, kwds)
    got = codec.decode_request(data)
    assert got == (kind, 123456789, "method_name", args, kwds)
    assert type(got[3]) is tuple and type(got[4]) is dict


@pytest.mark.parametrize("kind", [P.RESP_RETURN, P.RESP_ERROR, P.RESP_FAILURE, P.RESP_PROXY])
def test_response_round_trip(wire, kind):
    codec = wire.Codec()
    value = ("typeid", 42, ("a", "b")) if kind == P.RESP_PROXY else [1, {2: 3}]
    assert codec.decode_response(codec.encode_response(kind, value)) == (kind, value)


def test_error_response_carries_an_exception(wire):
    codec = wire.Codec()
    kind, (exc, tb) = codec.decode_response(
        codec.encode_response(P.RESP_ERROR, (KeyError("k"), "Traceback...")))
    assert kind == P.RESP_ERROR and type(exc) is KeyError and exc.args == ("k",) and tb == "Traceback..."


# -- safe and xmlrpclib --------------------------------------------------------


@pytest.mark.parametrize("serializer", ["safe", "xmlrpclib"])
def test_no_pickle_serializers_refuse_to_encode(wire, serializer):
    codec = wire.Codec(serializer)
    deep = nested_lists(P.MAX_DEPTH + 1)
    recursive = []
    recursive.append(recursive)
    for value in [{1}, Color.RED, [1, MyList()], {"k": object()}, deep, recursive, bytearray()]:
        with pytest.raises(UnsafeValueError):
            codec.dumps(value)
    with pytest.raises(UnsafeValueError):
        codec.encode_request(P.REQ_CALL, 1, "m", ({1},), None)
    with pytest.raises(UnsafeValueError):
        codec.encode_response(P.RESP_RETURN, {1})
    assert issubclass(UnsafeValueError, TypeError)


@pytest.mark.parametrize("serializer", ["safe", "xmlrpclib"])
def test_no_pickle_serializers_refuse_to_decode(wire, serializer):
    codec = wire.Codec(serializer)
    pickled = wire.Codec("pickle").dumps({1})
    for data in [pickled, bytes([P.T_LIST]) + u32(1) + pickled,
                 wire.Codec("pickle").dumps(ExplodesOnLoad())]:  # never unpickled at all
        with pytest.raises(ProtocolError):
            codec.loads(data)
    request = wire.Codec().encode_request(P.REQ_CALL, 1, "m", ({1},), None)
    with pytest.raises(ProtocolError):
        codec.decode_request(request)
    with pytest.raises(ProtocolError):
        codec.decode_response(bytes([P.RESP_RETURN]) + pickled)


def test_safe_keeps_native_values(wire):
    safe, full = wire.Codec("safe"), wire.Codec()
    for value in EDGE_VALUES:
        assert safe.dumps(value) == full.dumps(value)
        assert same(safe.loads(safe.dumps(value)), value)


def test_xmlrpclib_decodes_tuples_as_lists(wire):
    codec = wire.Codec("xmlrpclib")
    value = (1, (2, [3, (4,)]), {"k": ()})
    data = codec.dumps(value)
    assert data == wire.Codec().dumps(value)  # the bytes are the same
    assert same(codec.loads(data), [1, [2, [3, [4]]], {"k": []}])
    kind, ident, method, args, kwds = codec.decode_request(
        codec.encode_request(P.REQ_CALL, 3, "m", (1, (2,)), None))
    assert (kind, ident, method, kwds) == (P.REQ_CALL, 3, "m", None)
    assert same(args, [1, [2]])


# -- malformed input -----------------------------------------------------------

MALFORMED_VALUES = [
    b"",
    b"\x0c",
    b"\xff",
    b"\x00\x00",  # trailing byte
    b"\x03\x01\x00",  # short int64
    b"\x05\x00\x00\x00\x00",  # short float
    b"\x04\x02\x00\x00",  # short length
    b"\x04\x05\x00\x00\x00\x01",  # short bigint
    b"\x06\x05\x00\x00\x00ab",  # short str
    b"\x06\x01\x00\x00\x00\xff",  # invalid UTF-8
    b"\x06\x02\x00\x00\x00\xc3\x28",  # invalid UTF-8
    b"\x06\x04\x00\x00\x00\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\x07\xff\xff\xff\xff",  # huge bytes length, nothing after
    b"\x08\x02\x00\x00\x00\x00",  # tuple with a missing item
    b"\x09\xff\xff\xff\xff",  # huge count
    b"\x0a\x01\x00\x00\x00\x00",  # dict with a missing value
    b"\x0a\x01\x00\x00\x00\x09\x00\x00\x00\x00\x00",  # unhashable key
    b"\x0a\x01\x00\x00\x00\x0a\x00\x00\x00\x00\x00",  # unhashable key
    b"\x0b\x05\x00\x00\x00\x80",  # short pickle
    b"\x09\x01\x00\x00\x00" * 100000 + b"\x00",  # absurd nesting: no crash, no RecursionError
]


@pytest.mark.parametrize("data", MALFORMED_VALUES, ids=lambda d: d[:12].hex())
def test_malformed_values(wire, data):
    for serializer in P.SERIALIZERS:
        with pytest.raises(ProtocolError):
            wire.Codec(serializer).loads(data)


def test_decoder_rejects_nesting_the_encoder_never_writes(wire):
    codec = wire.Codec()
    ok = bytes([P.T_LIST]) + u32(1)
    assert codec.loads(ok * P.MAX_DEPTH + b"\x00") == nested_lists(P.MAX_DEPTH)
    with pytest.raises(ProtocolError):
        codec.loads(ok * (P.MAX_DEPTH + 1) + b"\x00")


def test_unpickling_errors_propagate_unchanged(wire):
    codec = wire.Codec()
    data = codec.dumps([1, ExplodesOnLoad()])
    with pytest.raises(LookupError, match="boom") as info:
        codec.loads(data)
    assert not isinstance(info.value, ProtocolError)
    # a pickle that is not a pickle: whatever pickle raises, unchanged
    junk = bytes([P.T_PICKLE]) + u32(3) + b"\x80\x05\xff"
    with pytest.raises(pickle.UnpicklingError):
        codec.loads(junk)


def _request(codec, method="m", args=(), kwds=None, kind=P.REQ_CALL, ident=1):
    return (bytes([kind]) + struct.pack("<Q", ident) + codec.dumps(method)
            + codec.dumps(args) + codec.dumps(kwds))


def test_malformed_requests(wire):
    codec = wire.Codec()
    good = _request(codec)
    assert codec.decode_request(good) == (P.REQ_CALL, 1, "m", (), None)
    bad = [
        b"",
        good[:9],
        good[:-1],
        good + b"\x00",
        b"\x00" + good[1:],  # kind 0
        b"\x10" + good[1:],  # a response kind
        _request(codec, kind=3),
        _request(codec, method=b"m"),
        _request(codec, method=None),
        _request(codec, args=[1]),  # a list is not args (outside xmlrpclib)
        _request(codec, args=None),
        _request(codec, kwds=[("a", 1)]),
        _request(codec, kwds=()),
    ]
    for data in bad:
        with pytest.raises(ProtocolError):
            codec.decode_request(data)
    xml = wire.Codec("xmlrpclib")
    assert xml.decode_request(_request(codec, args=[1])) == (P.REQ_CALL, 1, "m", [1], None)


def test_malformed_responses(wire):
    codec = wire.Codec()
    good = codec.encode_response(P.RESP_RETURN, [1])
    assert codec.decode_response(good) == (P.RESP_RETURN, [1])
    for data in [b"", good[:1], good[:-1], good + b"\x00", b"\x01" + good[1:], b"\x14" + good[1:],
                 b"\x00" + good[1:]]:
        with pytest.raises(ProtocolError):
            codec.decode_response(data)


def test_ident_out_of_range_on_encode(wire):
    codec = wire.Codec()
    for ident in (-1, 2**64):
        with pytest.raises(OverflowError):
            codec.encode_request(P.REQ_CALL, ident, "m", (), None)


def test_encode_refuses_kinds_the_decoder_rejects(wire):
    codec = wire.Codec()
    with pytest.raises((ValueError, OverflowError)):
        codec.encode_request(P.RESP_RETURN, 1, "m", (), None)
    with pytest.raises((ValueError, OverflowError)):
        codec.encode_response(P.REQ_CALL, None)


native = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mangled(draw):
    """A valid encoding with a few bytes changed, cut or appended."""
    data = bytearray(wire_free_encode(draw(native)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[draw(st.integers(0, len(data))):]
        else:
            data += draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


def wire_free_encode(value):
    """Valid bytes to mangle, the same whichever wire is under test."""
    from fastmgr import _wire_py

    return _wire_py.Codec("safe").dumps(value)


def _decodes_or_protocol_error(call, data):
    try:
        call(data)
    except ProtocolError:
        pass


@FUZZ
@given(data=st.binary(max_size=64) | mangled())
def test_random_bytes_raise_only_protocol_error(wire, data):
    codec = wire.Codec("safe")  # nothing is unpickled: any other exception is a bug
    _decodes_or_protocol_error(codec.loads, data)
    _decodes_or_protocol_error(codec.decode_response, data)
    _decodes_or_protocol_error(codec.decode_request, data)
    for prefix in (b"\x01" + bytes(8), b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x06\x01\x00\x00\x00m"):
        _decodes_or_protocol_error(codec.decode_request, prefix + data)
    for prefix in (b"\x10", b"\x11", b"\x12", b"\x13"):
        _decodes_or_protocol_error(codec.decode_response, prefix + data)
    _decodes_or_protocol_error(wire.Codec("xmlrpclib").loads, data)


@FUZZ
@given(value=native)
def test_native_round_trip_property(wire, value):
    codec = wire.Codec()
    data = codec.dumps(value)
    assert data[0] != P.T_PICKLE
    assert same(codec.loads(data), value)


# -- FrameReader -----------------------------------------------------------------


def test_frame_reader_splits(wire):
    bodies = [b"", b"a", b"bc" * 100, b"\x00\xff\xff\xff\xff", b"last"]
    stream = b"".join(wire.frame(b) for b in bodies)
    for size in (1, 2, 3, 5, 7, 64, len(stream)):
        reader = wire.FrameReader()
        got = []
        for i in range(0, len(stream), size):
            reader.feed(stream[i:i + size])
            while (msg := reader.next_message()) is not None:
                got.append(msg)
        assert got == bodies
        assert reader.next_message() is None


def test_frame_reader_long_header(wire):
    reader = wire.FrameReader()
    reader.feed(struct.pack("!i", -1))
    assert reader.next_message() is None
    reader.feed(struct.pack("!Q", 3)[:5])
    assert reader.next_message() is None
    reader.feed(struct.pack("!Q", 3)[5:] + b"ab")
    assert reader.next_message() is None
    reader.feed(b"c" + wire.frame(b"next"))
    assert reader.next_message() == b"abc"
    assert reader.next_message() == b"next"
    assert reader.next_message() is None


def test_frame_reader_too_large_as_soon_as_the_header_is_seen(wire):
    from fastmgr.errors import MessageTooLarge

    reader = wire.FrameReader(100)
    reader.feed(wire.frame(b"x" * 100))
    assert reader.next_message() == b"x" * 100
    reader.feed(struct.pack("!i", 101))
    with pytest.raises(MessageTooLarge):
        reader.next_message()

    reader = wire.FrameReader()
    reader.feed(struct.pack("!i", -1) + struct.pack("!Q", 4 << 30))  # 4 GiB, no body
    with pytest.raises(MessageTooLarge):
        reader.next_message()
    assert issubclass(MessageTooLarge, ProtocolError)


@pytest.mark.parametrize("length", [-2, -100, -(2**31)])
def test_frame_reader_negative_length(wire, length):
    reader = wire.FrameReader()
    reader.feed(struct.pack("!i", length) + b"abcdefgh")
    with pytest.raises(ProtocolError):
        reader.next_message()


# -- spin ------------------------------------------------------------------------


def test_spin_setting(wire):
    old = wire.get_spin()
    assert isinstance(old, int) and old >= 0
    try:
        wire.set_spin(0)
        assert wire.get_spin() == 0
        wire.set_spin(123)
        assert wire.get_spin() == 123
    finally:
        wire.set_spin(old)


# -- big containers: the compiled decoder's quick paths ------------------------


def test_items_that_leave_the_quick_path_decode_the_same(wire):
    """The items a quick path takes (int64, float, short ASCII str, None,
    bool) beside the ones it leaves to the long way."""
    codec = wire.Codec()
    items = [0, -1, 2**63 - 1, 2**64, 1.5, None, True, False, "", "a", "ab", "x" * 256,
             "x" * 257, "h\u00e9", "\ud800", b"b", (), [], {}, ("a", 1.0)]
    for value in (items, tuple(items), {i: v for i, v in enumerate(items)},
                  {"k%d" % i: v for i, v in enumerate(items)}):
        assert same(codec.loads(codec.dumps(value)), value)


def test_decoded_tuples_of_plain_items_are_left_to_no_collector(compiled_wire):
    """The collector never looks at a decoded tuple whose items cannot be
    in a cycle (it would find that out itself at its next pass); anything
    that may be in one stays tracked."""
    codec = compiled_wire.Codec()
    value = codec.loads(codec.dumps([(1, "a", None), (1, [2]), ((1, 2.0), b"x"), ({},),
                                     collections.OrderedDict()]))
    assert gc.is_tracked(value)
    assert [gc.is_tracked(item) for item in value[:4]] == [False, True, False, True]
    # a cycle through a decoded list is collected
    value.append(value)
    ref = weakref.ref(value[4])
    del value
    gc.collect()
    assert ref() is None


def test_records_decode_the_same_whatever_their_keys(wire):
    """Small dicts' keys of every kind the key cache takes or leaves (short
    ASCII str, too long, not ASCII, not str), more distinct ones than it
    has slots, and keys that share a slot in turn."""
    codec = wire.Codec()
    keys = (["k%d" % i for i in range(3000)] + ["x" * 32, "x" * 33, "\u00e9t\u00e9", "a", "", 7,
                                                 (1, "k1")])
    records = [{key: i, "name": "n%d" % i, "k%d" % (i % 7): [i]} for i, key in enumerate(keys)]
    for value in (records, records[::-1], [dict(zip(keys[i:i + 64], range(64)))
                                             for i in range(0, 3000, 64)]):
        assert same(codec.loads(codec.dumps(value)), value)


def test_small_dicts_share_their_keys(compiled_wire):
    """Records decoded by one codec share their short ASCII keys (made and
    hashed once) until another key takes the slot; a codec lets go of the
    keys it holds when it goes."""
    codec = compiled_wire.Codec()
    first, second = codec.loads(codec.dumps([{"name": 1, "x" * 33: 2}, {"name": 3, "x" * 33: 4}]))
    (name_1, long_1), (name_2, long_2) = list(first), list(second)
    assert name_1 is name_2 and long_1 is not long_2
    big = codec.loads(codec.dumps({"key%d" % i: i for i in range(100)}))
    again = codec.loads(codec.dumps({"key%d" % i: i for i in range(100)}))
    assert all(a is not b for a, b in zip(big, again))  # a large dict's keys are its own
    held = sys.getrefcount(name_1)
    del codec
    assert sys.getrefcount(name_1) == held - 1
