"""The pure-Python wire's codec: values to bytes and back (``Codec``), and
the table of out-of-band buffers a body may carry.

Part of the pure-Python twin (``_wire_py``, which re-exports what it needs);
the bytes are described in ``fastmgr/_protocol.py``.
"""
import struct
import sys

from . import _pickling
from ._protocol import (
    BODY_BUFFERS,
    BUF_BYTEARRAY,
    BUF_BYTES,
    BUFFER_ENTRY_SIZE,
    BUFFER_PREFIX_SIZE,
    MAX_BUFFERS,
    MAX_DEPTH,
    OOB_MIN,
    REQ_CALL,
    REQUEST_HEAD_SIZE,
    REQ_ONEWAY,
    RESP_ERROR,
    RESP_FAILURE,
    RESP_PROXY,
    RESP_RETURN,
    SAME_HASH_MAX,
    SERIALIZERS,
    T_BIGINT,
    T_BYTES,
    T_BYTES_OOB,
    T_DICT,
    T_FALSE,
    T_FLOAT,
    T_INT64,
    T_LIST,
    T_NONE,
    T_PICKLE,
    T_PICKLE_OOB,
    T_STR,
    T_TRUE,
    T_TUPLE,
)
from .errors import ProtocolError, UnsafeValueError

_U32_LIMIT = 1 << 32
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_REQUEST_KINDS = (REQ_CALL, REQ_ONEWAY)
#: dict keys not counted by the SAME_HASH_MAX rule: str and bytes while their
#: hashes are randomised, and ints below the hash modulus in magnitude (no two
#: of them share a hash, but for -1 and -2)
_UNCOUNTED_KEYS = (str, bytes) if sys.flags.hash_randomization else ()
_HASH_MODULUS = sys.hash_info.modulus
_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_RESPONSE_KINDS = (RESP_RETURN, RESP_ERROR, RESP_FAILURE, RESP_PROXY)

_u8 = struct.Struct("<B")
_u32 = struct.Struct("<I")
_i64 = struct.Struct("<q")
_f64 = struct.Struct("<d")
_request_head = struct.Struct("<BQ")  # kind, ident: REQUEST_HEAD_SIZE bytes
_buffer_prefix = struct.Struct("<BI")  # BODY_BUFFERS, count
_buffer_entry = struct.Struct("<BQ")  # kind, size


# ---------------------------------------------------------------------------
# the codec


class _TooDeep(Exception):
    """Native nesting ran past MAX_DEPTH: pickle the whole top-level value."""


def _tag(tag):
    return bytes((tag,))


def _tagged_length(tag, n):
    return bytes((tag,)) + _u32.pack(n)


def _bigint_bytes(i):
    """The minimal signed two's complement of ``i``, little-endian."""
    magnitude = i if i >= 0 else ~i  # ~i == -i - 1 needs the same bits as i
    return i.to_bytes((magnitude.bit_length() + 8) // 8, "little", signed=True)


class _Body:
    """One body being encoded: its inline chunks and its out-of-band
    buffers, ``(kind, data)`` (see ``_protocol.py``, "Out-of-band buffers")."""

    __slots__ = ("chunks", "buffers")

    def __init__(self):
        self.chunks = []
        self.buffers = []

    def parts(self):
        """The body as bytes-like parts: the inline bytes (behind the buffer
        table when there are buffers), then each buffer."""
        inline = b"".join(self.chunks)
        if not self.buffers:
            return [inline]
        table = [_buffer_prefix.pack(BODY_BUFFERS, len(self.buffers))]
        table += [_buffer_entry.pack(kind, len(data)) for kind, data in self.buffers]
        return [b"".join(table) + inline] + [data for _, data in self.buffers]

    def joined(self):
        return b"".join(self.parts())


class _Taken:
    """The out-of-band buffers of a body being decoded, taken in order by
    its values."""

    __slots__ = ("buffers", "kinds", "next")

    def __init__(self, kinds, buffers):
        self.kinds = kinds
        self.buffers = buffers
        self.next = 0

    def take(self, count, kind):
        if self.next + count > len(self.buffers):
            raise ProtocolError("a value takes more out-of-band buffers than the message has")
        taken = self.buffers[self.next : self.next + count]
        for k in self.kinds[self.next : self.next + count]:
            if k != kind:
                raise ProtocolError("an out-of-band buffer of kind %d where %d is due" % (k, kind))
        self.next += count
        return taken

    def check_all_taken(self):
        if self.next != len(self.buffers):
            raise ProtocolError("%d out-of-band buffers left unused" % (len(self.buffers) - self.next))


def _no_buffers(count, kind):
    raise ProtocolError("a value takes an out-of-band buffer in a body without buffers")


def _table_size(prefix, body_size):
    """The size of the buffer table (its prefix included) that ``prefix``
    (the first BUFFER_PREFIX_SIZE bytes of a body that starts with
    BODY_BUFFERS) announces."""
    if body_size < BUFFER_PREFIX_SIZE:
        raise ProtocolError("truncated buffer table")
    _, count = _buffer_prefix.unpack_from(prefix)
    if not 1 <= count <= MAX_BUFFERS:
        raise ProtocolError("a message with %d out-of-band buffers" % count)
    size = BUFFER_PREFIX_SIZE + count * BUFFER_ENTRY_SIZE
    if size > body_size:
        raise ProtocolError("truncated buffer table")
    return size


def _buffer_table(table, body_size):
    """[(kind, size)] from a whole buffer table (``_table_size`` bytes).
    With _table_size, every check of "Out-of-band buffers" is made here,
    before anything is allocated."""
    entries = []
    total = 0
    for at in range(BUFFER_PREFIX_SIZE, _table_size(table, body_size), BUFFER_ENTRY_SIZE):
        kind, size = _buffer_entry.unpack_from(table, at)
        if kind not in (BUF_BYTES, BUF_BYTEARRAY):
            raise ProtocolError("unknown out-of-band buffer kind 0x%02x" % kind)
        if size < OOB_MIN:
            raise ProtocolError("an out-of-band buffer of %d bytes, fewer than %d" % (size, OOB_MIN))
        total += size
        entries.append((kind, size))
    if len(table) + total >= body_size:
        raise ProtocolError("out-of-band buffers larger than their message")
    return entries


def _split_body(data):
    """(inline body, _Taken or None) of a whole body held in memory."""
    if len(data) == 0 or data[0] != BODY_BUFFERS:
        return data, None
    table = data[: _table_size(data, len(data))]
    entries = _buffer_table(table, len(data))
    end = len(data)
    buffers = []
    for kind, size in reversed(entries):
        chunk = data[end - size : end]
        buffers.append(bytes(chunk) if kind == BUF_BYTES else bytearray(chunk))
        end -= size
    buffers.reverse()
    return data[len(table) : end], _Taken([k for k, _ in entries], buffers)


class Codec:
    """Encodes values and envelopes (see ``_protocol.py``, "Values")."""

    def __init__(self, serializer="pickle"):
        if serializer not in SERIALIZERS:
            raise ValueError(
                "unknown serializer %r (expected one of %s)" % (serializer, ", ".join(SERIALIZERS))
            )
        self.serializer = serializer

    def __repr__(self):
        return "Codec(%r)" % self.serializer

    # -- encoding ----------------------------------------------------------

    def _encode_top(self, obj, body):
        """Append one top-level value to body, pickled whole if it nests
        too deeply."""
        chunks, buffers = len(body.chunks), len(body.buffers)
        try:
            self._encode(obj, body, 0)
        except _TooDeep:
            del body.chunks[chunks:], body.buffers[buffers:]
            self._encode_pickle(obj, body)

    def _encode(self, obj, body, depth):
        """Append the encoding of ``obj`` to ``body``; ``depth`` is the number
        of containers around it."""
        out = body.chunks
        t = type(obj)
        if obj is None:
            out.append(_tag(T_NONE))
        elif t is bool:
            out.append(_tag(T_TRUE if obj else T_FALSE))
        elif t is int:
            if _INT64_MIN <= obj <= _INT64_MAX:
                out.append(_tag(T_INT64) + _i64.pack(obj))
            else:
                raw = _bigint_bytes(obj)
                if len(raw) >= _U32_LIMIT:
                    self._encode_pickle(obj, body)
                else:
                    out.append(_tagged_length(T_BIGINT, len(raw)))
                    out.append(raw)
        elif t is float:
            out.append(_tag(T_FLOAT) + _f64.pack(obj))
        elif t is bytes and len(obj) >= OOB_MIN and len(body.buffers) < MAX_BUFFERS:
            out.append(_tag(T_BYTES_OOB))
            body.buffers.append((BUF_BYTES, obj))
        elif t is str or t is bytes:
            raw = obj.encode("utf-8", "surrogatepass") if t is str else obj
            if len(raw) >= _U32_LIMIT:
                self._encode_pickle(obj, body)
            else:
                out.append(_tagged_length(T_STR if t is str else T_BYTES, len(raw)))
                out.append(raw)
        elif t is tuple or t is list or t is dict or t in _DICT_VIEWS:
            if len(obj) >= _U32_LIMIT:
                self._encode_pickle(obj, body)
                return
            depth += 1
            if depth > MAX_DEPTH:
                raise _TooDeep
            if t is dict:
                out.append(_tagged_length(T_DICT, len(obj)))
                for key, value in obj.items():
                    self._encode(key, body, depth)
                    self._encode(value, body, depth)
            else:  # a dict's view goes as a list, as the stdlib's pickler sends it
                out.append(_tagged_length(T_TUPLE if t is tuple else T_LIST, len(obj)))
                for item in obj:
                    self._encode(item, body, depth)
        else:
            self._encode_pickle(obj, body)

    def _encode_pickle(self, obj, body):
        if self.serializer != "pickle":
            raise UnsafeValueError(
                "the %r serializer cannot send %s: it needs pickle"
                % (self.serializer, type(obj).__qualname__)
            )
        raw, views = _pickling.dumps_buffers(obj, MAX_BUFFERS - len(body.buffers))
        if len(raw) >= _U32_LIMIT:
            raise ValueError("the pickle of a %s is too large to send" % type(obj).__qualname__)
        if views:
            body.chunks.append(_tag(T_PICKLE_OOB) + _u32.pack(len(views)) + _u32.pack(len(raw)))
            body.buffers += [(BUF_BYTEARRAY, view) for view in views]
        else:
            body.chunks.append(_tagged_length(T_PICKLE, len(raw)))
        body.chunks.append(raw)

    def _value_body(self, obj):
        body = _Body()
        self._encode_top(obj, body)
        return body

    def _request_body(self, kind, ident, method, args, kwds):
        if kind not in _REQUEST_KINDS:
            raise ValueError("not a request kind: %r" % (kind,))
        if not 0 <= ident < 1 << 64:
            raise OverflowError("ident %d does not fit in 64 bits" % ident)
        body = _Body()
        body.chunks.append(_request_head.pack(kind, ident))
        self._encode_top(method, body)
        self._encode_top(args, body)
        self._encode_top(kwds if kwds else None, body)
        return body

    def _response_body(self, kind, value):
        if kind not in _RESPONSE_KINDS:
            raise ValueError("not a response kind: %r" % (kind,))
        body = _Body()
        body.chunks.append(_u8.pack(kind))
        self._encode_top(value, body)
        return body

    def dumps(self, obj):
        return self._value_body(obj).joined()

    def encode_request(self, kind, ident, method, args, kwds):
        return self._request_body(kind, ident, method, args, kwds).joined()

    def encode_response(self, kind, value):
        return self._response_body(kind, value).joined()

    # -- decoding ----------------------------------------------------------

    def _decode(self, data, pos, depth, taken):
        """Decode one value at ``data[pos:]``, taking out-of-band buffers
        from ``taken`` (None: the body has none); return (value, next
        position)."""
        tag = _read(data, pos, 1)[0]
        pos += 1
        if tag == T_NONE:
            return None, pos
        if tag == T_FALSE:
            return False, pos
        if tag == T_TRUE:
            return True, pos
        if tag == T_INT64:
            return _i64.unpack(_read(data, pos, 8))[0], pos + 8
        if tag == T_FLOAT:
            return _f64.unpack(_read(data, pos, 8))[0], pos + 8
        if tag == T_BYTES_OOB:
            return (taken.take if taken else _no_buffers)(1, BUF_BYTES)[0], pos
        if tag in (T_BIGINT, T_STR, T_BYTES, T_PICKLE, T_PICKLE_OOB):
            count = 0
            if tag == T_PICKLE_OOB:
                count = _u32.unpack(_read(data, pos, 4))[0]
                pos += 4
            n = _u32.unpack(_read(data, pos, 4))[0]
            raw = _read(data, pos + 4, n)
            pos += 4 + n
            if tag == T_BIGINT:
                return int.from_bytes(raw, "little", signed=True), pos
            if tag == T_STR:
                try:
                    return str(raw, "utf-8", "surrogatepass"), pos
                except UnicodeDecodeError as exc:
                    raise ProtocolError("invalid UTF-8 in a str: %s" % exc) from None
            if tag == T_BYTES:
                return bytes(raw), pos
            if self.serializer != "pickle":
                raise ProtocolError("the %r serializer does not accept pickled values" % self.serializer)
            if tag == T_PICKLE:
                return _pickling.loads(raw), pos  # its exceptions propagate unchanged
            if count == 0:
                raise ProtocolError("a pickle announced with no out-of-band buffer")
            buffers = (taken.take if taken else _no_buffers)(count, BUF_BYTEARRAY)
            return _pickling.loads(raw, buffers=buffers), pos
        if tag in (T_TUPLE, T_LIST, T_DICT):
            depth += 1
            if depth > MAX_DEPTH:
                raise ProtocolError("native nesting deeper than %d" % MAX_DEPTH)
            n = _u32.unpack(_read(data, pos, 4))[0]
            pos += 4
            if tag == T_DICT:
                result = {}
                # without pickle, keys of one hash are counted (SAME_HASH_MAX)
                counts = {} if self.serializer != "pickle" and n > SAME_HASH_MAX else None
                for _ in range(n):
                    key, pos = self._decode(data, pos, depth, taken)
                    value, pos = self._decode(data, pos, depth, taken)
                    try:
                        if counts is not None and _counted_key(key):
                            _count_hash(counts, hash(key))
                        result[key] = value
                    except TypeError as exc:
                        raise ProtocolError("unusable dict key: %s" % exc) from None
                return result, pos
            items = []
            for _ in range(n):
                item, pos = self._decode(data, pos, depth, taken)
                items.append(item)
            if tag == T_TUPLE and self.serializer != "xmlrpclib":
                return tuple(items), pos
            return items, pos
        raise ProtocolError("unknown value tag 0x%02x" % tag)

    def _decode_value(self, data, taken):
        value, pos = self._decode(data, 0, 0, taken)
        _expect_end(data, pos)
        if taken is not None:
            taken.check_all_taken()
        return value

    def _decode_request(self, data, taken):
        kind, ident = _request_head.unpack(_read(data, 0, REQUEST_HEAD_SIZE))
        if kind not in _REQUEST_KINDS:
            raise ProtocolError("unknown request kind 0x%02x" % kind)
        method, pos = self._decode(data, REQUEST_HEAD_SIZE, 0, taken)
        args, pos = self._decode(data, pos, 0, taken)
        kwds, pos = self._decode(data, pos, 0, taken)
        _expect_end(data, pos)
        if taken is not None:
            taken.check_all_taken()
        if type(method) is not str:
            raise ProtocolError("request method is a %s, not a str" % type(method).__name__)
        if not (type(args) is tuple or (self.serializer == "xmlrpclib" and type(args) is list)):
            raise ProtocolError("request args are a %s, not a tuple" % type(args).__name__)
        if not (kwds is None or type(kwds) is dict):
            raise ProtocolError("request kwds are a %s, not a dict" % type(kwds).__name__)
        return kind, ident, method, args, kwds

    def _decode_response(self, data, taken):
        kind = _read(data, 0, 1)[0]
        if kind not in _RESPONSE_KINDS:
            raise ProtocolError("unknown response kind 0x%02x" % kind)
        value, pos = self._decode(data, 1, 0, taken)
        _expect_end(data, pos)
        if taken is not None:
            taken.check_all_taken()
        return kind, value

    def loads(self, data):
        """Decode exactly one value; trailing or missing bytes: ProtocolError."""
        return self._decode_value(*_split_body(memoryview(data).cast("B")))

    def decode_request(self, data):
        return self._decode_request(*_split_body(memoryview(data).cast("B")))

    def decode_response(self, data):
        return self._decode_response(*_split_body(memoryview(data).cast("B")))


def _counted_key(key):
    """Whether the SAME_HASH_MAX rule counts key."""
    if type(key) is int:
        return not -_HASH_MODULUS < key < _HASH_MODULUS
    return type(key) not in _UNCOUNTED_KEYS


def _count_hash(counts, h):
    """One more key of hash h in a dict being decoded (counts: hash -> keys;
    a dict keyed by hash values, which no one can make collide more than a
    few times); past SAME_HASH_MAX, ProtocolError."""
    seen = counts.get(h, 0) + 1
    if seen > SAME_HASH_MAX:
        raise ProtocolError("a dict with more than %d keys of one hash value: refused "
                            "without pickle (see SAME_HASH_MAX)" % SAME_HASH_MAX)
    counts[h] = seen


def _read(data, pos, n):
    """``data[pos:pos + n]``, or ProtocolError when the input is too short."""
    if pos + n > len(data):
        raise ProtocolError("truncated message: need %d bytes at offset %d of %d" % (n, pos, len(data)))
    return data[pos : pos + n]


def _expect_end(data, pos):
    if pos != len(data):
        raise ProtocolError("%d trailing bytes after the message" % (len(data) - pos))
