"""The pure-Python wire: the readable reference for ``fastmgr._wire``.

Every byte this module writes is described in ``fastmgr/_protocol.py``; the
API is the one in ``fastmgr/_wire.pyi``.  The compiled module must produce the
same bytes and raise the same exceptions; when the two disagree, the text of
``_protocol.py`` decides, then this twin.

This module holds the spin budget, framing and ``Connection``; the codec is
in ``_wire_py_codec.py`` and the serving side and pipeline in
``_wire_py_serve.py``.  Their public names are imported here: use this
module.
"""
import select
import socket
import ssl
import struct
import time

from ._handshake import answer_challenge, deliver_challenge  # noqa: F401 (WIRE_API)
from ._settings import SPIN_US
from ._protocol import (
    BODY_BUFFERS,
    BUF_BYTES,
    BUFFER_PREFIX_SIZE,
    COPY_THRESHOLD,
    DEFAULT_MAX_MESSAGE,
    FRAME_HEADER_SIZE,
    LONG_FRAME_HEADER_SIZE,
    MAX_SHORT_FRAME,
    MAX_SPIN_US,
    REQ_CALL,
)
from ._wire_py_codec import Codec, _Taken, _buffer_table, _table_size  # noqa: F401 (WIRE_API: Codec)
from ._wire_py_serve import Entry, Hub, Pending, Pipeline, serve_connection  # noqa: F401 (WIRE_API)
from .errors import MessageTooLarge, ProtocolError

IMPLEMENTATION = "python"

_frame_len = struct.Struct("!i")
_frame_len64 = struct.Struct("!Q")


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
