"""A lane: one connection to a manager, driven by an event loop.

The socket is registered with the loop (``add_reader``), and nothing here
ever waits.  The envelope carries no request id: a connection answers in
request order, so the lane keeps the calls it sent in a FIFO (``slots``)
and hands each reply to the oldest.  A call that ended early (cancelled,
or out of time) keeps its slot, so its late reply is taken by it and
never by the call after it.

Writes: a request on an idle lane leaves at once; while replies are
outstanding, requests gather and leave together at the end of the loop's
turn (one write for many: the server reads them in one go).

Spinning: right after a request leaves an idle lane, the caller may spin
for its reply (the wire's spin policy, within the lane's budget) before it
gives the loop back.  A reply caught that way completes the call with no
trip through the loop, whose wake-up costs more than the round trip.

``WireLane`` drives the wire's own ``Connection`` (``loop_queue``,
``loop_send``, ``loop_receive``, ``loop_spin``): the compiled wire encodes,
frames and decodes there, and between processes on one machine carries the
bytes through its shared-memory rings, the socket carrying only wake-up
bytes.  TLS lanes are ``tls_lane.TlsLane``.
"""
import asyncio
import collections

from .. import _protocol as P
from ..errors import ManagerGone, ProtocolError
from ..proxies import BaseProxy, collect_increfs
from .call import PlainCall, run_callbacks

__all__ = ["Lane", "WireLane", "copy_failure"]

REQ_CALL = P.REQ_CALL
RESP_RETURN = P.RESP_RETURN
_future_done = asyncio.Future.done
_future_set_result = asyncio.Future.set_result  # PlainCall's own, without its callbacks


class Lane:
    """What every lane does, whatever carries its bytes."""

    #: whether calls may spin for their replies on this lane
    spins = False

    def __init__(self, link, fd):
        self.link = link
        self.loop = link.loop
        self.fd = fd
        self.slots = collections.deque()  # calls sent, oldest first, awaiting replies
        self.flush_due = False          # a flush is scheduled for the end of the turn
        self.closed = False
        self.greeting = True            # the handshake is not over: frames go to recv_frame()
        self.frames_in = collections.deque()  # handshake frames not asked for yet
        self.raw = None                 # the future of the next handshake frame, if asked
        self.on_idle = None             # on_idle(lane) when the last reply came (a pool's lane)
        self.held = 0                   # locks its server thread holds for a task
        self._increfs = []              # proxies unpickled from a reply: increfs to send

    def __repr__(self):
        return "<%s fd=%d %s, %d waiting>" % (type(self).__name__, self.fd,
                                              "closed" if self.closed else "open",
                                              len(self.slots))

    # -- what a kind of lane provides ------------------------------------------

    def _queue(self, kind, request):
        """Encode request (ident, method, args, kwds) into the bytes to send."""
        raise NotImplementedError

    def _push(self):
        """Send what is queued, as far as the transport takes it now."""
        raise NotImplementedError

    def _pending(self):
        """Whether queued bytes wait to be sent."""
        raise NotImplementedError

    def _spin(self):
        """Spin for bytes; whether they came."""
        return False

    def _take(self):
        """Read what came: a list of (kind, value) replies, or (0, exc) for
        one that does not decode (raw bodies during the handshake).
        EOFError, OSError or ProtocolError when the stream is over."""
        raise NotImplementedError

    def _stop_watching(self):
        """Unregister from the loop."""
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)

    def _close_transport(self):
        raise NotImplementedError

    # -- sending ---------------------------------------------------------------

    def send(self, call):
        """Send call.request; its reply goes to call.resolve() (a PlainCall,
        or a Discard).  An argument that does not encode raises here."""
        if self.closed:
            call.fail(ManagerGone("the connection to the manager at %r is closed"
                                  % (self.link.address,)))
            return
        idle = not self.slots and not self.flush_due and not self._pending()
        self._queue(P.REQ_CALL, call.request)
        call.request = None
        self.slots.append(call)
        if not idle:
            self._flush_later()
            return
        self._push()
        link = self.link
        if call.spin and self.spins and not self.closed and link.may_spin():
            if self._spin() and not self.closed:
                self._readable()

    def send_oneway(self, request):
        """A request that gets no reply (REQ_ONEWAY): (ident, method, args, kwds)."""
        if self.closed:
            return
        idle = not self.slots and not self.flush_due and not self._pending()
        self._queue(P.REQ_ONEWAY, request)
        if idle:
            self._push()
        else:
            self._flush_later()

    def _flush_later(self):
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush)

    def flush(self):
        self.flush_due = False
        if not self.closed:
            self._push()

    # -- receiving -------------------------------------------------------------

    def _readable(self):
        if self.closed:
            return
        try:
            if self._pending():
                self._push()
            replies = self._take()
        except (EOFError, OSError, ProtocolError) as exc:
            self.broken(exc)
            return
        if self._pending() and not self.closed:
            # the wake-up that said the peer made room in the ring may
            # have come after the push and been taken in with the replies
            self._push()
        if self.greeting:
            self.frames_in.extend(replies)
            self._handshake_frame()
        elif replies:
            self._deliver(replies)
        if not self.slots and self.on_idle is not None and not self.closed:
            self.on_idle(self)

    def _deliver(self, replies):
        slots, increfs = self.slots, self._increfs
        due = []  # calls resolved here whose callbacks run together (run_callbacks)
        collect_increfs(increfs)
        try:
            for kind, value in replies:
                if not slots:
                    self.broken(ProtocolError("the manager sent a reply that nothing asked for"))
                    return
                call = slots.popleft()
                if (kind == RESP_RETURN and call.__class__ is PlainCall and call.after is None
                        and call._timer is None and not isinstance(value, BaseProxy)):
                    # PlainCall.resolve's common case, inlined: a plain value
                    # for a call with no timer and nothing to do after
                    call.view = None
                    if not _future_done(call):
                        _future_set_result(call, value)
                        if call._fn is not None:
                            due.append(call)
                    continue
                if due:  # callbacks run in the order of the replies
                    self.loop.call_soon(run_callbacks, due)
                    due = []
                if kind == 0:
                    call.fail(value)
                else:
                    call.resolve(kind, value)
        finally:
            if due:
                self.loop.call_soon(run_callbacks, due)
            # resolve() only scheduled the awaiting tasks: these increfs
            # leave before any of them can use a proxy that came here
            collect_increfs(None)
            if increfs:
                self.link.send_increfs(self, increfs)
                del increfs[:]

    # -- the handshake ---------------------------------------------------------

    def send_frame(self, data):
        """A handshake frame (raw bytes)."""
        raise NotImplementedError

    def recv_frame(self):
        """A future of the next handshake frame's body."""
        self.raw = self.loop.create_future()
        raw = self.raw
        self._handshake_frame()
        return raw

    def _handshake_frame(self):
        if self.raw is not None and self.frames_in:
            raw, self.raw = self.raw, None
            if not raw.done():
                raw.set_result(self.frames_in.popleft())

    def greeted(self):
        """The handshake is over: frames are replies from now on."""
        self.greeting = False

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
        """Close the connection (never shutdown(): a forked child holds a
        copy that must not end the parent's connection)."""
        if not self.closed:
            self.closed = True
            self._stop_watching()
            self._close_transport()

    def handover(self):
        """Stop watching it and return the wire Connection, for sync use
        (an anchor), or None if this lane cannot be had that way."""
        return None


class WireLane(Lane):
    """A lane over the wire's Connection, driven by its loop_* methods."""

    def __init__(self, link, conn):
        super().__init__(link, conn.fileno())
        self.conn = conn
        self.spins = conn.spin_us > 0
        self.ring = False       # the bytes cross shared-memory rings
        self.left = 0           # bytes queued that loop_send() could not send yet
        self.writer_on = False  # waiting for the socket to be writable (socket path)
        self.loop.add_reader(self.fd, self._readable)

    def attached_ring(self):
        """The connection took its rings (connect.py)."""
        self.ring = True

    def greeted(self):
        super().greeted()
        self.conn.max_message = P.DEFAULT_MAX_MESSAGE

    def send(self, call):
        # the common case of Lane.send inlined: replies are outstanding, so
        # the request leaves with the others at the end of the loop's turn
        slots = self.slots
        if not slots or self.closed:
            Lane.send(self, call)
            return
        ident, method, args, kwds = call.request
        self.conn.loop_queue(REQ_CALL, ident, method, args, kwds)
        call.request = None
        slots.append(call)
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush)

    def _queue(self, kind, request):
        ident, method, args, kwds = request
        self.conn.loop_queue(kind, ident, method, args, kwds)

    def _pending(self):
        return self.left > 0

    def _push(self):
        try:
            self.left = self.conn.loop_send()
        except (OSError, ProtocolError) as exc:
            self.broken(exc)
            return
        # the rest goes when the socket is writable; through a ring, when
        # the peer rings (the socket turns readable: _readable pushes)
        if self.ring:
            return
        if self.left and not self.writer_on:
            self.writer_on = True
            self.loop.add_writer(self.fd, self._writable)
        elif not self.left and self.writer_on:
            self.writer_on = False
            self.loop.remove_writer(self.fd)

    def _writable(self):
        if not self.closed:
            self._push()

    def _spin(self):
        return self.conn.loop_spin()

    def _take(self):
        return self.conn.loop_receive(not self.greeting)

    def send_frame(self, data):
        self.conn.send_bytes(data)

    def _stop_watching(self):
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
            if self.writer_on:
                self.loop.remove_writer(self.fd)
        self.writer_on = False

    def _close_transport(self):
        self.conn.close()

    def handover(self):
        if self.closed or self.slots or self.left:
            return None
        self.closed = True
        self._stop_watching()
        return self.conn


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
