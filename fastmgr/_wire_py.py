"""The pure-Python wire: the readable reference for ``fastmgr._wire``.

Every byte this module writes is described in ``fastmgr/_protocol.py``; the
API is the one in ``fastmgr/_wire.pyi``.  The compiled module must produce the
same bytes and raise the same exceptions; when the two disagree, the text of
``_protocol.py`` decides, then this file.
"""
import collections
import select
import socket
import ssl
import struct
import sys
import time
import traceback

from . import _pickling
from ._handshake import answer_challenge, deliver_challenge  # noqa: F401 (WIRE_API)
from ._settings import SPIN_US
from ._protocol import (
    BODY_BUFFERS,
    BUF_BYTEARRAY,
    BUF_BYTES,
    BUFFER_ENTRY_SIZE,
    BUFFER_PREFIX_SIZE,
    COPY_THRESHOLD,
    DEFAULT_MAX_MESSAGE,
    FRAME_HEADER_SIZE,
    LONG_FRAME_HEADER_SIZE,
    MAX_BUFFERS,
    MAX_DEPTH,
    MAX_SHORT_FRAME,
    MAX_SPIN_US,
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
from .errors import MessageTooLarge, ProtocolError, UnsafeValueError

IMPLEMENTATION = "python"

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
_frame_len = struct.Struct("!i")
_frame_len64 = struct.Struct("!Q")
_buffer_prefix = struct.Struct("<BI")  # BODY_BUFFERS, count
_buffer_entry = struct.Struct("<BQ")  # kind, size


# ---------------------------------------------------------------------------
# spin budget (the compiled wire busy-polls this long before blocking; the
# python wire keeps the number but always blocks at once)

_spin_us = SPIN_US


def set_spin(microseconds):
    """Process-wide default spin budget for new connections (0: never spin)."""
    global _spin_us
    microseconds = int(microseconds)
    if microseconds < 0 or microseconds > MAX_SPIN_US:
        raise ValueError("spin budget must be between 0 and %d µs" % MAX_SPIN_US)
    _spin_us = microseconds


def get_spin():
    return _spin_us


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

# ---------------------------------------------------------------------------
# framing


def _frame_header(n):
    if n > MAX_SHORT_FRAME:
        return _frame_len.pack(-1) + _frame_len64.pack(n)
    return _frame_len.pack(n)


def frame(body):
    """Header + body, as one bytes object."""
    body = memoryview(body).cast("B")
    return _frame_header(len(body)) + body


def _parse_header(header):
    """(body length, header length) from the first bytes of a frame, or
    None when more bytes are needed."""
    if len(header) < FRAME_HEADER_SIZE:
        return None
    (n,) = _frame_len.unpack(header[:FRAME_HEADER_SIZE])
    if n >= 0:
        return n, FRAME_HEADER_SIZE
    if n != -1:
        raise ProtocolError("bad frame length %d" % n)
    if len(header) < LONG_FRAME_HEADER_SIZE:
        return None
    (n,) = _frame_len64.unpack(header[FRAME_HEADER_SIZE:LONG_FRAME_HEADER_SIZE])
    return n, LONG_FRAME_HEADER_SIZE


def _check_size(n, limit):
    if n > limit:
        raise MessageTooLarge("a frame announced %d bytes, more than the limit of %d" % (n, limit))


class FrameReader:
    """Incremental framing: feed bytes in any split, take whole bodies out."""

    def __init__(self, max_message=DEFAULT_MAX_MESSAGE):
        self.max_message = max_message
        self._buffer = bytearray()

    def feed(self, data):
        self._buffer += data

    def next_message(self):
        """The next complete body, or None until more bytes arrive.
        Raises MessageTooLarge / ProtocolError on a bad header."""
        parsed = _parse_header(self._buffer[:LONG_FRAME_HEADER_SIZE])
        if parsed is None:
            return None
        n, start = parsed
        _check_size(n, self.max_message)
        if len(self._buffer) < start + n:
            return None
        body = bytes(self._buffer[start : start + n])
        del self._buffer[: start + n]
        return body


# ---------------------------------------------------------------------------
# connections


class Connection:
    """A framed, connected stream socket; owns ``sock`` and closes it.

    Reads take exactly one frame from the socket and never read ahead.  A
    receive that does not complete (timeout, refused header, an exception
    from a signal handler) closes the connection: the stream would be out of
    step, and a late reply must never be read as the answer to a later call.
    ``timeout`` bounds sends as well as receives."""

    def __init__(self, sock, codec=None, max_message=DEFAULT_MAX_MESSAGE, timeout=None):
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._sock = sock
        self.codec = codec if codec is not None else Codec()
        self.max_message = max_message
        self.timeout = timeout
        self.spin_us = get_spin()
        self._loop_out = bytearray()   # frames loop_send() has not sent yet
        self._loop_in = bytearray()    # bytes loop_receive() read ahead
        self.backlog_max = 0  # kept for the API: this wire never reads ahead of a request

    def __repr__(self):
        state = "closed" if self._sock is None else "fd=%d" % self._sock.fileno()
        return "<%s.Connection %s>" % (__name__, state)

    @property
    def timeout(self):
        return self._timeout

    @timeout.setter
    def timeout(self, value):
        if value is not None and value < 0:
            raise ValueError("timeout must be None or >= 0")
        self._timeout = value

    @property
    def closed(self):
        return self._sock is None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _check_closed(self):
        if self._sock is None:
            raise OSError("handle is closed")

    def fileno(self):
        self._check_closed()
        return self._sock.fileno()

    def close(self):
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    # -- bytes -------------------------------------------------------------

    def send_bytes(self, data, offset=0, size=None):
        body = memoryview(data).cast("B")
        n = len(body) - offset if size is None else size
        if offset < 0 or n < 0 or offset + n > len(body):
            raise ValueError("offset/size out of range")
        self._check_closed()
        self._send_parts([body[offset : offset + n]])

    def _send_parts(self, parts):
        """Send one frame whose body is the concatenation of parts (bytes-like,
        the first of them small), in one sendmsg when it is large."""
        n = sum(len(part) for part in parts)
        header = _frame_header(n)
        sock = self._sock
        if self._timeout is not None:
            sock.settimeout(self._timeout)  # a bound on the whole send
        try:
            if n <= COPY_THRESHOLD:
                sock.sendall(header + b"".join(parts))
            elif isinstance(sock, ssl.SSLSocket):  # (an SSLSocket has no sendmsg)
                sock.sendall(header + parts[0])
                for part in parts[1:]:
                    sock.sendall(part)
            else:
                self._sendmsg_all([header] + [memoryview(part).cast("B") for part in parts])
        except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0
            self.close()
            raise TimeoutError("timed out after %r s sending to the peer" % self._timeout) from None
        except BaseException:
            self.close()  # part of a frame may have left: the stream is broken
            raise
        finally:
            if self._sock is not None and self._timeout is not None:
                sock.setblocking(True)

    def _sendmsg_all(self, parts):
        """sendmsg until every part has left, resuming after short sends."""
        while parts:
            sent = self._sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                del parts[0]
            if parts:
                parts[0] = parts[0][sent:]

    def recv_bytes(self, maxlength=None):
        self._check_closed()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        limit = self.max_message if maxlength is None else min(maxlength, self.max_message)
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        try:
            n = self._recv_header(limit, deadline)
            return bytes(self._recv_exactly(n, deadline))
        except EOFError:
            raise
        except BaseException:
            self.close()
            raise

    def _recv_header(self, limit, deadline):
        """The body size of the next frame, held to limit."""
        header = self._recv_exactly(FRAME_HEADER_SIZE, deadline)
        parsed = _parse_header(header)
        if parsed is None:  # the 8-byte length of a long frame follows
            header += self._recv_exactly(LONG_FRAME_HEADER_SIZE - FRAME_HEADER_SIZE, deadline)
            parsed = _parse_header(header)
        n = parsed[0]
        _check_size(n, limit)
        return n

    def _recv_body(self):
        """The next frame's body as (inline body, _Taken or None): the
        out-of-band buffers of a body that has them are each read into
        their own fresh object (see ``_protocol.py``)."""
        self._check_closed()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        try:
            n = self._recv_header(self.max_message, deadline)
            if n == 0:
                return memoryview(b""), None
            head = self._recv_exactly(1, deadline)
            if head[0] != BODY_BUFFERS:
                return memoryview(head + self._recv_exactly(n - 1, deadline)), None
            if n < BUFFER_PREFIX_SIZE:
                raise ProtocolError("truncated buffer table")
            head += self._recv_exactly(BUFFER_PREFIX_SIZE - 1, deadline)
            head += self._recv_exactly(_table_size(head, n) - len(head), deadline)
            entries = _buffer_table(head, n)
            inline_size = n - len(head) - sum(size for _, size in entries)
            inline = self._recv_exactly(inline_size, deadline)
            buffers = [self._recv_buffer(kind, size, deadline) for kind, size in entries]
            return memoryview(inline), _Taken([kind for kind, _ in entries], buffers)
        except EOFError:
            raise
        except BaseException:
            self.close()
            raise

    def _recv_buffer(self, kind, size, deadline):
        """One out-of-band buffer, read into the object it becomes."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            if deadline is not None:
                self._wait_readable(deadline)
            chunk = self._sock.recv_into(view[got:], min(size - got, 1 << 20))
            if not chunk:
                raise EOFError("the peer closed the connection")
            got += chunk
        view.release()
        return bytes(buf) if kind == BUF_BYTES else buf

    def _recv_exactly(self, n, deadline):
        # grow as bytes arrive: a peer announcing a huge frame and sending
        # nothing must not make us allocate it
        buf = bytearray()
        while len(buf) < n:
            if deadline is not None:
                self._wait_readable(deadline)
            chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("the peer closed the connection")
            buf += chunk
        return buf

    def _wait_readable(self, deadline):
        """Return once the socket is readable; past ``deadline`` close the
        connection and raise TimeoutError."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._readable(remaining):
            raise TimeoutError("no complete message within %r seconds" % self._timeout)

    def _readable(self, timeout):
        if getattr(self._sock, "pending", None) and self._sock.pending():
            return True  # TLS: decrypted bytes wait in the SSL object
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return bool(poller.poll(ms))

    def poll(self, timeout=0.0):
        self._check_closed()
        return self._readable(timeout)

    # -- values and envelopes ----------------------------------------------

    def _parts(self, body):
        """The parts of an encoded body, or MessageTooLarge when it is larger
        than max_message (then nothing is sent: the connection stays usable)."""
        parts = body.parts()
        n = sum(len(part) for part in parts)
        if n > self.max_message:
            raise MessageTooLarge(
                "a message of %d bytes is larger than the limit of %d" % (n, self.max_message))
        return parts

    def _send_body(self, body):
        self._send_parts(self._parts(body))

    def send(self, obj):
        self._check_closed()
        self._send_body(self.codec._value_body(obj))

    def recv(self):
        return self.codec._decode_value(*self._recv_body())

    def send_request(self, kind, ident, method, args=(), kwds=None):
        self._check_closed()
        self._send_body(self.codec._request_body(kind, ident, method, args, kwds))

    def recv_response(self):
        return self.codec._decode_response(*self._recv_body())

    def call(self, ident, method, args=(), kwds=None):
        """send_request(REQ_CALL, ...) then recv_response()."""
        self.send_request(REQ_CALL, ident, method, args, kwds)
        return self.recv_response()

    # -- driven by an event loop: none of these blocks ------------------------
    # (a connection is read either this way or by recv_bytes(), not both:
    # loop_receive() reads ahead)

    def _check_loop(self):
        self._check_closed()
        if isinstance(self._sock, ssl.SSLSocket):
            raise ValueError("a TLS connection cannot be driven by an event loop")

    def loop_queue(self, kind, ident, method, args=(), kwds=None):
        """Queue a request frame; loop_send() sends it."""
        self._check_loop()
        parts = self._parts(self.codec._request_body(kind, ident, method, args, kwds))
        self._loop_out += _frame_header(sum(len(part) for part in parts))
        for part in parts:
            self._loop_out += part

    def loop_send(self):
        """Send what the socket takes now of the queued frames; return how
        many bytes wait still (0: all sent)."""
        self._check_loop()
        out = self._loop_out
        while out:
            try:
                sent = self._sock.send(out, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            del out[:sent]
        return len(out)

    def loop_receive(self, decode=True):
        """Take in what came, and return every whole frame: decoded as
        responses ((kind, value), or (0, exception) for one whose value
        does not decode), or without decode the bodies as bytes.  Raises
        EOFError once the peer has closed and no frame is left."""
        self._check_loop()
        data, out, eof = self._loop_in, [], False
        while True:
            try:
                chunk = self._sock.recv(1 << 18, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not chunk:
                eof = True
                break
            data += chunk
        while True:
            try:
                parsed = _parse_header(data[:12])
                if parsed is not None:
                    _check_size(parsed[0], self.max_message)
            except ProtocolError:
                self.close()  # a refused header cannot be skipped: the stream is lost
                raise
            if parsed is None or len(data) < parsed[1] + parsed[0]:
                break
            n, start = parsed
            body = bytes(data[start:start + n])
            del data[:start + n]
            if not decode:
                out.append(body)
                continue
            try:
                out.append(self.codec.decode_response(body))
            except ProtocolError:
                self.close()
                raise
            except Exception as exc:  # a value that does not unpickle: that reply's outcome
                out.append((0, exc))
        if eof and not out:
            raise EOFError("the peer closed the connection")
        return out

    def loop_spin(self):
        """Whether bytes came within the spin budget: this wire never spins."""
        self._check_loop()
        return False


# ---------------------------------------------------------------------------
# the server loop


class Entry:
    """One row of a server's object table: a shared object and how it may
    be called (see serve_connection).  Its fields are read-only."""

    __slots__ = ("obj", "exposed", "method_to_typeid", "thread_bound")

    def __init__(self, obj, exposed, method_to_typeid=None, thread_bound=False):
        setattr_ = object.__setattr__
        setattr_(self, "obj", obj)                    # the shared object
        setattr_(self, "exposed", exposed)            # the method names callers may call (a set)
        setattr_(self, "method_to_typeid", method_to_typeid)  # results shared in turn, or None
        setattr_(self, "thread_bound", bool(thread_bound))    # calls need their own thread

    def __setattr__(self, name, value):
        raise AttributeError("an Entry's fields are read-only")

    def __repr__(self):
        return "Entry(%r, %r, %r, %r)" % (self.obj, self.exposed, self.method_to_typeid,
                                          self.thread_bound)


def _dispatch(request, table, control, fallback, make_proxy):
    """(response kind, value) for one decoded request."""
    _, ident, method, args, kwds = request
    kwds = kwds or {}
    try:
        entry = control if ident == 0 else table[ident]
        if type(entry) is not Entry:
            raise TypeError("the object table holds a %s, not an Entry" % type(entry).__name__)
        obj, exposed, method_to_typeid = entry.obj, entry.exposed, entry.method_to_typeid
    except Exception:
        return RESP_FAILURE, traceback.format_exc()
    if method not in exposed:
        try:
            return RESP_RETURN, fallback(ident, obj, method, args, kwds)
        except Exception:
            return RESP_FAILURE, traceback.format_exc()
    try:
        result = getattr(obj, method)(*args, **kwds)
    except Exception as exc:
        return RESP_ERROR, (exc, traceback.format_exc())
    typeid = method_to_typeid.get(method) if method_to_typeid is not None else None
    if typeid is not None:
        try:
            return RESP_PROXY, make_proxy(typeid, result)
        except Exception:
            return RESP_FAILURE, traceback.format_exc()
    return RESP_RETURN, result


_PLAIN = (str, int, float, bool, bytes, type(None))


def _unencodable(kind, value):
    """The reply to send when (kind, value) would not encode: an exception
    without pickle goes by builtin type name and args, if it can; else its
    traceback text goes as a failure."""
    if kind == RESP_ERROR:
        exc, tb = value
        if type(exc).__module__ == "builtins" and all(type(a) in _PLAIN for a in exc.args):
            return RESP_ERROR, (type(exc).__name__, exc.args, tb)
        return RESP_FAILURE, tb
    return RESP_FAILURE, traceback.format_exc()


def serve_connection(conn, table, control, fallback, make_proxy):
    """The server's loop for one connection, until the peer closes (see
    ``_wire.pyi``).  Raises ProtocolError on a malformed frame."""
    codec = conn.codec
    while True:
        try:
            data, taken = conn._recv_body()
        except EOFError:
            return None
        try:
            request = codec._decode_request(data, taken)
        except ProtocolError:
            raise
        except Exception:  # e.g. an argument that fails to unpickle
            # _decode_request checked the kind byte before decoding any value
            if data[0] != REQ_ONEWAY:
                conn._send_body(codec._response_body(RESP_FAILURE, traceback.format_exc()))
            continue
        del data, taken
        kind, value = _dispatch(request, table, control, fallback, make_proxy)
        if request[0] == REQ_ONEWAY:
            continue
        del request
        try:
            parts = conn._parts(codec._response_body(kind, value))
        except MessageTooLarge as exc:
            # the caller learns why, and its connection goes on
            parts = conn._parts(codec._response_body(RESP_ERROR, (exc, traceback.format_exc())))
        except Exception:
            parts = conn._parts(codec._response_body(*_unencodable(kind, value)))
        del value  # do not keep the result alive while waiting for the next request
        conn._send_parts(parts)
        del parts


class Hub:
    """The compiled Hub's contract, simply: every connection gets a thread
    of its own at once (see ``_wire.pyi``)."""

    def __init__(self, table, fallback, start_thread, spin_us=None):
        # spin_us is part of the contract; this hub never spins
        self.table = table
        self.fallback = fallback
        self.start_thread = start_thread
        self.closed = False
        self.handovers = 0

    def add(self, conn, control, make_proxy, finished):
        if self.closed:
            raise OSError("the hub is closed")
        self.handovers += 1
        self.start_thread(self._own_thread, conn, control, make_proxy, finished)

    def close(self):
        self.closed = True

    def stats(self):
        return {"connections": 0, "replacements": 0, "handovers": self.handovers}

    def _own_thread(self, conn, control, make_proxy, finished):
        exc = None
        try:
            serve_connection(conn, self.table, control, self.fallback, make_proxy)
        except BaseException as e:
            exc = e
        conn.close()
        finished(exc)


# ---------------------------------------------------------------------------
# Pipelined calls

class Pending:
    """The reply to a pipelined call; result() waits for it if need be."""

    def __init__(self, pipe):
        self._pipe = pipe
        self._kind = 0
        self._value = None
        self._seen = False

    def done(self):
        return self._kind != 0

    def result(self):
        """The call's result, or its exception raised."""
        self._seen = True
        if self._kind == 0:
            self._pipe._wait_for(self)
        if self._kind == RESP_RETURN:
            return self._value
        return self._pipe.resolve(self._kind, self._value)

    def __repr__(self):
        return "<Pending %s>" % ("done" if self._kind else "waiting")


class Pipeline:
    """Stands in for a Connection: call() sends without waiting and returns
    (RESP_RETURN, Pending); replies are read in order."""

    def __init__(self, conn, resolve, window=4096):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.conn = conn
        self.resolve = resolve
        self._waiting = collections.deque()
        self._failed = []
        self._window = window

    @property
    def closed(self):
        return self.conn.closed

    def close(self):
        self.conn.close()

    @property
    def outstanding(self):
        return len(self._waiting)

    def _read_one(self):
        kind, value = self.conn.recv_response()
        pending = self._waiting.popleft()
        pending._value = value
        pending._kind = kind
        if kind in (RESP_ERROR, RESP_FAILURE):
            self._failed.append(pending)

    def _wait_for(self, pending):
        while pending._kind == 0:
            self._read_one()

    def call(self, ident, method, args=(), kwds=None):
        if ident == 0:
            self.sync()
            return self.conn.call(ident, method, args, kwds)
        self.conn.send_request(REQ_CALL, ident, method, args, kwds)
        pending = Pending(self)
        self._waiting.append(pending)
        # read the replies that are there, so the server never blocks on us
        while self._waiting and self.conn.poll(0):
            self._read_one()
        if len(self._waiting) > self._window:
            while len(self._waiting) > self._window // 2:
                self._read_one()
        return (RESP_RETURN, pending)

    def send_request(self, kind, ident, method, args=(), kwds=None):
        if kind != REQ_ONEWAY:
            raise ValueError("a pipeline sends calls with call()")
        self.conn.send_request(kind, ident, method, args, kwds)

    def sync(self):
        """Read every outstanding reply."""
        while self._waiting:
            self._read_one()

    def unseen_errors(self):
        """Failed calls whose result() nobody asked for."""
        return [p for p in self._failed if not p._seen]
