"""A lane over TLS: an ``ssl.SSLObject`` over memory buffers, on the
non-blocking socket (the wire's Connection cannot be driven by a loop
through an SSL socket, whose reads and writes block).

Requests are encoded by the wire's ``Codec`` and framed here; replies are
cut out of the decrypted stream by the wire's ``FrameReader``.  No spin:
TLS replies are read when the loop says the socket is readable.
"""
import ssl
import struct

from .. import _protocol as P
from .._backend import wire
from ..errors import ProtocolError
from .lane import Lane

__all__ = ["TlsLane"]

#: bytes read from the socket at a time
RECV_SIZE = 256 * 1024
#: queued requests this large leave at once, without waiting for the turn's end
FLUSH_SIZE = 64 * 1024

_frame_len = struct.Struct("!i")
_frame_len64 = struct.Struct("!Q")


def frame(body):
    """The frame header of the protocol, then body, as one bytes object."""
    n = len(body)
    if n > 0x7FFFFFFF:
        return _frame_len.pack(-1) + _frame_len64.pack(n) + body
    return _frame_len.pack(n) + body


class TlsLane(Lane):
    """See the module docstring.  tls: (SSLObject, incoming BIO, outgoing BIO)."""

    def __init__(self, link, sock, frames, tls):
        super().__init__(link, sock.fileno())
        self.sock = sock
        self.frames = frames            # the wire's FrameReader for the decrypted stream
        self.tls = tls
        self.out = bytearray()          # frames queued for the next flush
        self.unsent = bytearray()       # encrypted bytes the socket did not take yet
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self.loop.add_reader(self.fd, self._readable)

    def greeted(self):
        super().greeted()
        # the server sends nothing more before our first request
        self.frames = wire.FrameReader(P.DEFAULT_MAX_MESSAGE)

    # -- sending ---------------------------------------------------------------

    def _queue(self, kind, request):
        ident, method, args, kwds = request
        self.out += frame(self.link.codec.encode_request(kind, ident, method, args, kwds))
        if len(self.out) >= FLUSH_SIZE:
            self._push()

    def _pending(self):
        return bool(self.out) or bool(self.unsent)

    def _push(self):
        if self.out:
            data = bytes(self.out)
            del self.out[:]
            self._write(data)

    def send_frame(self, data):
        self._write(frame(data))

    def _write(self, data):
        try:
            self.tls[0].write(data)
        except ssl.SSLError as exc:
            self.broken(exc)
            return
        self._send_raw(self.tls[2].read())

    def _send_raw(self, data):
        """Send encrypted bytes, keeping what the socket does not take."""
        if self.unsent:
            self.unsent += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.broken(exc)
            return
        if sent < len(data):
            self.unsent += memoryview(data)[sent:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self):
        try:
            sent = self.sock.send(self.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.broken(exc)
            return
        del self.unsent[:sent]
        if not self.unsent:
            self.loop.remove_writer(self.fd)

    # -- receiving -------------------------------------------------------------

    def _take(self):
        replies = []
        while not self.closed:
            try:
                n = self.sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            if n == 0:
                if replies:
                    break
                raise EOFError("the manager closed the connection")
            self._decrypt(self._view[:n])
            if n < RECV_SIZE:
                break
        self._cut(replies)
        return replies

    def _decrypt(self, data):
        sslobj, incoming, outgoing = self.tls
        incoming.write(data)
        while True:
            try:
                chunk = sslobj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                raise EOFError("the manager closed the TLS connection") from None
            if not chunk:
                break
            self.frames.feed(chunk)
        records = outgoing.read()  # what TLS itself wants sent (a key update, say)
        if records:
            self._send_raw(records)

    def _cut(self, replies):
        """Whole frames out of the decrypted stream: raw during the
        handshake, else decoded."""
        decode = self.link.codec.decode_response
        while True:
            body = self.frames.next_message()
            if body is None:
                return
            if self.greeting:
                replies.append(body)
                continue
            try:
                replies.append(decode(body))
            except ProtocolError:
                raise
            except Exception as exc:  # a value that does not unpickle: that reply's outcome
                replies.append((0, exc))

    # -- ending ----------------------------------------------------------------

    def _stop_watching(self):
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
            if self.unsent:
                self.loop.remove_writer(self.fd)

    def _close_transport(self):
        self.sock.close()
