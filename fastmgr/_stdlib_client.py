"""A fastmgr client's link to a server of plain ``multiprocessing.managers``.

``connection.Client()`` returns a ``StdlibConnection`` when the handshake
finds such a server (``_protocol.py``, "Stdlib peers").  It takes the calls
a wire ``Connection`` takes (``call``, ``send_request``, ``recv_response``,
``poll``, ``timeout``, ``close``), with fastmgr's reply kinds, so proxies and
peers use it as they use any connection; underneath it speaks the stdlib's
format and uses connections as the stdlib's clients do:

- method calls go on one connection, which an ``accept_connection`` request
  has given a thread of the server (the connection just authenticated, if
  nothing used it yet, else a new one);
- each of the manager's own requests (ident 0: create, incref, decref,
  get_methods, ...) goes on a new connection, which the server closes after
  its one reply.

A oneway request is a call whose reply is read and dropped in its turn; a
oneway decref is done at once, and its failures are ignored, as the
stdlib's proxies ignore theirs.  Timeouts bound each connection's sends and
receives as on any connection (``connect_timeout`` the new ones' handshake).
"""
import collections
import threading
from multiprocessing import process

from . import _protocol as P
from . import _stdlib_pickle
from .errors import ManagerGone, ProtocolError

__all__ = ["StdlibConnection"]

_NEW, _SPENT, _SERVING = "new", "spent", "serving"

#: how a connect that finds no server fails (ManagerGone, as in proxies.Peer)
_GONE = (ConnectionRefusedError, FileNotFoundError, ConnectionResetError, BrokenPipeError,
         EOFError)


def _reply(message):
    """(fastmgr kind, value) for a stdlib reply tuple."""
    try:
        kind, value = message
    except (TypeError, ValueError):
        raise ProtocolError("a stdlib reply that is not a (kind, value) pair") from None
    if kind == "#RETURN":
        return P.RESP_RETURN, value
    if kind == "#ERROR":
        return P.RESP_ERROR, (value, None)  # the stdlib sends no traceback
    if kind == "#TRACEBACK":
        return P.RESP_FAILURE, value
    if kind == "#UNSERIALIZABLE":
        return P.RESP_FAILURE, "Unserializable message: %s\n" % (value,)
    if kind == "#PROXY":
        exposed, token = value
        return P.RESP_PROXY, (token.typeid, token.id, exposed)
    raise ProtocolError("unrecognized reply kind %r from a stdlib server" % (kind,))


def _thread_name():
    """What the stdlib's proxies call a connection's thread."""
    name = process.current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


class StdlibConnection:
    """A connection to a stdlib server, with a wire Connection's calls."""

    def __init__(self, conn, connect):
        self._conn = conn            # authenticated; _NEW until used
        self._state = _NEW
        self._connect = connect      # () -> another authenticated wire Connection
        self._replies = collections.deque()  # per request in flight: drop its reply?
        self._timeout = None
        self._closed = False
        self.spin_us = None

    def __repr__(self):
        return "<StdlibConnection %s %r>" % (self._state, self._conn)

    # -- a wire Connection's attributes -------------------------------------

    @property
    def timeout(self):
        return self._timeout

    @timeout.setter
    def timeout(self, value):
        if value is not None and value < 0:
            raise ValueError("timeout must be None or >= 0")
        self._timeout = value
        if not self._conn.closed:
            self._conn.timeout = value

    @property
    def closed(self):
        return self._closed or (self._state == _SERVING and self._conn.closed)

    def close(self):
        self._closed = True
        self._conn.close()

    def fileno(self):
        return self._conn.fileno()

    def poll(self, timeout=0.0):
        if self._state != _SERVING:
            return False
        return self._conn.poll(timeout)

    # -- connections ---------------------------------------------------------

    def _new(self):
        try:
            conn = self._connect()
        except _GONE as exc:
            raise ManagerGone("cannot reach the manager: %s" % exc) from exc
        conn.timeout = self._timeout
        if self.spin_us is not None:
            conn.spin_us = self.spin_us
        return conn

    def _calls(self):
        """The connection for method calls, made so on first use."""
        if self._closed:
            raise OSError("handle is closed")
        if self._state == _SERVING:
            return self._conn
        if self._state == _SPENT:
            self._conn = self._new()
        self._state = _SERVING
        conn = self._conn
        conn.send_bytes(_stdlib_pickle.dumps((None, "accept_connection", (_thread_name(),), {})))
        kind, value = _reply(_stdlib_pickle.loads(conn.recv_bytes()))
        if kind != P.RESP_RETURN:
            conn.close()
            raise ProtocolError("the stdlib server refused a connection for calls: %s" % (value,))
        return conn

    def _manager_request(self, method, args, kwds):
        """One of the manager's own requests, on a connection of its own."""
        if self._state == _NEW:
            conn, self._state = self._conn, _SPENT
        else:
            conn = self._new()
        try:
            conn.send_bytes(_stdlib_pickle.dumps((None, method, tuple(args), kwds or {})))
            return _reply(_stdlib_pickle.loads(conn.recv_bytes()))
        finally:
            conn.close()  # the server closes it after its reply

    def _manager_call(self, method, args, kwds):
        """A manager request as fastmgr's Control takes it, made the stdlib's way."""
        if method == "incref":
            ident, count = (tuple(args) + (1,))[:2]
            for _ in range(count):
                reply = self._manager_request("incref", (ident,), None)
                if reply[0] != P.RESP_RETURN:
                    return reply
            return P.RESP_RETURN, None
        if method == "decref_many":
            for ident in args[0]:
                reply = self._manager_request("decref", (ident,), None)
                if reply[0] != P.RESP_RETURN:
                    return reply
            return P.RESP_RETURN, None
        if method == "get_methods":
            from .proxies import Token  # (proxies imports this module)
            return self._manager_request("get_methods", (Token(None, None, args[0]),), None)
        if method == "set_name":
            return P.RESP_RETURN, None  # fastmgr's own; the stdlib names threads itself
        return self._manager_request(method, args, kwds)

    # -- requests and replies ------------------------------------------------

    def call(self, ident, method, args=(), kwds=None):
        """A request and its reply: (kind, value), as a wire Connection's."""
        if ident == 0:
            return self._manager_call(method, args, kwds)
        self.send_request(P.REQ_CALL, ident, method, args, kwds)
        return self.recv_response()

    def send_request(self, kind, ident, method, args=(), kwds=None):
        if ident == 0:
            if kind != P.REQ_ONEWAY:
                raise ValueError("manager requests go through call()")
            try:
                self._manager_call(method, args, kwds)
            except Exception:
                pass  # as the stdlib's proxies, whose decref failures are logged only
            return
        conn = self._calls()
        conn.send_bytes(_stdlib_pickle.dumps((ident, method, tuple(args), kwds or {})))
        self._replies.append(kind == P.REQ_ONEWAY)

    def recv_response(self):
        conn = self._calls()
        while True:
            if not self._replies:
                raise ProtocolError("no request is waiting for a reply")
            drop = self._replies[0]
            data = conn.recv_bytes()
            self._replies.popleft()
            if not drop:
                return _reply(_stdlib_pickle.loads(data))
