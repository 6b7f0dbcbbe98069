"""A lane: one connection to a manager, driven by an event loop.

The socket is non-blocking and registered with the loop (``add_reader``);
nothing here ever waits.  Requests are framed as every fastmgr connection
frames them and encoded by the wire's compiled ``Codec``; replies are cut
out of the stream by the wire's ``FrameReader``.  The envelope carries no
request id: a connection answers in request order, so the lane keeps the
calls it sent in a FIFO (``slots``) and hands each reply to the oldest.
A call that ended early (cancelled, or out of time) keeps its slot, so its
late reply is taken by it and never by the call after it.

Writes: a request on an idle lane leaves at once; while replies are
outstanding, requests gather in ``out`` and leave together at the end of
the loop's turn (one write for many: the server reads them in one go).

Spinning: right after a request leaves an idle lane, the caller may read
the socket for a few tens of microseconds before it gives the loop back
(``spin``).  A reply caught that way completes the call with no trip
through the loop, whose wake-up costs more than the round trip itself.

TLS goes through an ``ssl.SSLObject`` over memory buffers, so the same
non-blocking socket carries it.
"""
import collections
import os
import select
import ssl
import struct
import time

from ..errors import ManagerGone, ProtocolError
from ..proxies import collect_increfs

__all__ = ["Lane", "copy_failure"]

#: bytes read from the socket at a time
RECV_SIZE = 256 * 1024
#: buffered requests this large leave at once, without waiting for the turn's end
FLUSH_SIZE = 64 * 1024
#: a spin yields the CPU from this many seconds on, in case the server
#: shares it with us (it then runs only when we let it)
SPIN_CALM = 4e-6

_frame_len = struct.Struct("!i")
_frame_len64 = struct.Struct("!Q")
_perf = time.perf_counter
_yield = os.sched_yield


def frame(body):
    """The frame header of the protocol, then body, as one bytes object."""
    n = len(body)
    if n > 0x7FFFFFFF:
        return _frame_len.pack(-1) + _frame_len64.pack(n) + body
    return _frame_len.pack(n) + body


class Lane:
    """One connection of a Link (see the module docstring)."""

    def __init__(self, link, sock, frames, tls=None):
        self.link = link
        self.loop = link.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.frames = frames            # the wire's FrameReader for this stream
        self.tls = tls                  # (SSLObject, incoming BIO, outgoing BIO) or None
        self.slots = collections.deque()  # calls sent, oldest first, awaiting replies
        self.out = bytearray()          # frames that leave at the end of this turn
        self.flush_due = False          # a flush is scheduled for the end of the turn
        self.unsent = bytearray()       # bytes the socket did not take yet
        self.closed = False
        self.greeting = True            # the handshake is not over: frames wait for recv_frame()
        self.raw = None                 # during the handshake: the future of the next frame
        self.on_idle = None             # on_idle(lane) when the last reply came (a pool's lane)
        self.held = 0                   # locks its server thread holds for a task
        self._increfs = []              # proxies unpickled from a reply: increfs to send
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self._poller = select.poll()
        self._poller.register(self.fd, select.POLLIN)
        self.loop.add_reader(self.fd, self._readable)

    def __repr__(self):
        return "<Lane fd=%d %s, %d waiting>" % (self.fd, "closed" if self.closed else "open",
                                               len(self.slots))

    # -- sending ---------------------------------------------------------------

    def send(self, call):
        """Send call.body; its reply goes to call.resolve() (a PlainCall,
        or a Discard)."""
        if self.closed:
            call.fail(ManagerGone("the connection to the manager at %r is closed"
                                  % (self.link.address,)))
            return
        body = call.body
        call.body = None
        slots, out = self.slots, self.out
        slots.append(call)
        if len(slots) > 1 or out:
            n = len(body)
            out += _frame_len.pack(n) if n <= 0x7FFFFFFF else _frame_len.pack(-1) + _frame_len64.pack(n)
            out += body
            if not self.flush_due:
                self.flush_due = True
                self.loop.call_soon(self.flush)
            elif len(out) >= FLUSH_SIZE:
                self.flush()
            return
        self._write(frame(body))
        link = self.link
        if call.spin and link.spin_s and not self.closed and link.may_spin():
            link.spun(self.spin(call, link.spin_s))

    def queue(self, data):
        """Send data at the end of this turn of the loop (at once when
        much is waiting)."""
        self.out += data
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush)
        elif len(self.out) >= FLUSH_SIZE:
            self.flush()

    def send_oneway(self, body):
        """A request that gets no reply (REQ_ONEWAY)."""
        if self.closed:
            return
        if self.slots or self.out:
            self.queue(frame(body))
        else:
            self._write(frame(body))

    def send_frame(self, data):
        """A handshake frame."""
        self._write(frame(data))

    def flush(self):
        self.flush_due = False
        if self.out and not self.closed:
            data = bytes(self.out)
            del self.out[:]
            self._write(data)

    def _write(self, data):
        """Send data: through TLS first if the lane has it."""
        if self.tls is not None:
            try:
                self.tls[0].write(data)
            except ssl.SSLError as exc:
                self.broken(exc)
                return
            data = self.tls[2].read()
        self._send_raw(data)

    def _send_raw(self, data):
        """Send bytes as they are, keeping what the socket does not take."""
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

    def _readable(self):
        while not self.closed:
            try:
                n = self.sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.broken(exc)
                return
            if n == 0:
                self.broken(EOFError("the manager closed the connection"))
                return
            self._take_in(n)
            if n < RECV_SIZE:
                return

    def spin(self, call, budget):
        """Read the socket until call has its reply or budget (seconds)
        runs out; True if it came.  The caller holds the loop meanwhile.
        (poll() says "nothing yet" for a third of what a recv that fails
        with EAGAIN costs.)"""
        ready = self._poller.poll
        now = _perf()
        end, calm = now + budget, now + SPIN_CALM
        while True:
            if ready(0):
                try:
                    n = self.sock.recv_into(self._buf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self.broken(exc)
                    return True
                if n == 0:
                    self.broken(EOFError("the manager closed the connection"))
                    return True
                self._take_in(n)
                if call.done() or self.closed:
                    return True
                continue
            now = _perf()
            if now >= end:
                return False
            if now >= calm:
                _yield()

    def _take_in(self, n):
        """n bytes arrived in the receive buffer: hand out whole replies."""
        data = self._view[:n]
        if self.tls is not None:
            data = self._decrypt(data)
            if data is None:
                return
        self.frames.feed(data)
        try:
            if self.greeting:
                self._take_handshake_frame()
            else:
                self._deliver()
        except ProtocolError as exc:
            self.broken(exc)
            return
        if not self.slots and self.on_idle is not None and not self.closed:
            self.on_idle(self)

    def _deliver(self):
        frames, slots = self.frames, self.slots
        decode = self.link.codec.decode_response
        increfs = self._increfs
        collect_increfs(increfs)
        try:
            while True:
                body = frames.next_message()
                if body is None:
                    return
                if not slots:
                    raise ProtocolError("the manager sent a reply that nothing asked for")
                call = slots.popleft()
                try:
                    kind, value = decode(body)
                except ProtocolError:
                    slots.appendleft(call)  # broken() fails it with the others
                    raise
                except Exception as exc:  # a result that does not unpickle, say
                    call.fail(exc)
                else:
                    call.resolve(kind, value)
        finally:
            # resolve() only scheduled the awaiting tasks: these increfs
            # leave before any of them can use a proxy that came here
            collect_increfs(None)
            if increfs:
                self.link.send_increfs(self, increfs)
                del increfs[:]

    def _decrypt(self, data):
        sslobj, incoming, outgoing = self.tls
        incoming.write(data)
        chunks = []
        while True:
            try:
                chunk = sslobj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.broken(EOFError("the manager closed the TLS connection"))
                return None
            except ssl.SSLError as exc:
                self.broken(exc)
                return None
            if not chunk:
                break
            chunks.append(chunk)
        records = outgoing.read()  # what TLS itself wants sent (a key update, say)
        if records and not self.closed:
            self._send_raw(records)
        return b"".join(chunks) if chunks else None

    # -- the handshake ---------------------------------------------------------

    def recv_frame(self):
        """A future of the next frame's body, unread (the handshake)."""
        self.raw = self.loop.create_future()
        raw = self.raw
        self._take_handshake_frame()
        return raw

    def _take_handshake_frame(self):
        if self.raw is None:
            return
        body = self.frames.next_message()
        if body is not None:
            raw, self.raw = self.raw, None
            if not raw.done():
                raw.set_result(body)

    # -- ending ----------------------------------------------------------------

    def broken(self, exc):
        """The connection cannot go on: every call waiting on it fails
        (ManagerGone when the link broke, ProtocolError when the stream
        did), and the link forgets it."""
        if self.closed:
            return
        self.close()
        slots, self.slots = self.slots, collections.deque()
        raw, self.raw = self.raw, None
        if raw is not None and not raw.done():
            raw.set_exception(copy_failure(exc, self.link.address))
        for call in slots:
            call.fail(copy_failure(exc, self.link.address))
        self.link.lost(self)

    def close(self):
        """Close the socket (never shutdown(): a forked child holds a copy
        that must not end the parent's connection)."""
        if not self.closed:
            self.detach().close()

    def detach(self):
        """Stop watching the socket; return it, still open."""
        if not self.closed:
            self.closed = True
            if not self.loop.is_closed():
                self.loop.remove_reader(self.fd)
                if self.unsent:
                    self.loop.remove_writer(self.fd)
        return self.sock


def copy_failure(exc, address=None):
    """A fresh exception for one waiting call (an exception object raised
    in several tasks would collect all their tracebacks): a broken link
    to the manager at address is ManagerGone."""
    if isinstance(exc, (ProtocolError, ManagerGone)):
        fresh = type(exc)(*exc.args)
        fresh.__cause__ = exc.__cause__ if isinstance(exc, ManagerGone) else exc
        return fresh
    if address is not None and isinstance(exc, (OSError, EOFError)):
        gone = ManagerGone("the manager at %r is gone: %s" % (address, exc))
        gone.__cause__ = exc
        return gone
    try:
        fresh = type(exc)(*exc.args)
    except Exception:
        return exc
    fresh.__cause__ = exc.__cause__
    return fresh
