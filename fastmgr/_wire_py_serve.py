"""The pure-Python wire's serving side and pipeline: the object table's
``Entry``, ``serve_connection`` (one request after another on a
connection), ``Hub`` (a thread per connection), and ``Pending``/``Pipeline``.

Part of the pure-Python twin (``_wire_py`` re-exports these).
"""
import collections
import traceback

from ._protocol import (
    REQ_CALL,
    REQ_ONEWAY,
    RESP_ERROR,
    RESP_FAILURE,
    RESP_PROXY,
    RESP_RETURN,
)
from .errors import MessageTooLarge, ProtocolError


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
