"""The contract both wire implementations meet (``_wire`` and ``_wire_py``).

The byte formats are specified in ``fastmgr/_protocol.py``.
"""
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

IMPLEMENTATION: str  # "compiled" or "python"

def set_spin(microseconds: int) -> None:
    """Process-wide default spin budget for new connections (0: never spin)."""

def get_spin() -> int: ...

def frame(body: bytes) -> bytes:
    """Header + body, as one bytes object."""

# Compiled wire only: the protocol's numbers as compiled (the tests hold
# them against _protocol.py).
def _constants() -> Dict[str, int]: ...

# Compiled wire only: where client spinners are counted, "machine" (a System
# V segment of the user's own) or "process"; the segment's key and size.
def spin_sharing() -> str: ...
def spin_segment(uid: int) -> Tuple[int, int]: ...

class Codec:
    """Encodes values and envelopes. ``serializer`` is one of
    ``_protocol.SERIALIZERS``: "pickle" falls back to pickle for types
    without a native tag; "safe" and "xmlrpclib" never pickle nor unpickle
    (``UnsafeValueError`` when encoding, ``ProtocolError`` when decoding a
    pickle tag); "xmlrpclib" also decodes tuples as lists."""

    serializer: str
    def __init__(self, serializer: str = "pickle") -> None: ...
    def dumps(self, obj: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any:
        """Decode exactly one value; trailing or missing bytes: ProtocolError."""
    def encode_request(self, kind: int, ident: int, method: str,
                       args: tuple, kwds: Optional[dict]) -> bytes: ...
    def decode_request(self, data: bytes) -> Tuple[int, int, str, tuple, Optional[dict]]: ...
    def encode_response(self, kind: int, value: Any) -> bytes: ...
    def decode_response(self, data: bytes) -> Tuple[int, Any]: ...

class FrameReader:
    """Incremental framing: feed bytes in any split, take whole bodies out."""

    def __init__(self, max_message: int = ...) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def next_message(self) -> Optional[bytes]:
        """The next complete body, or None until more bytes arrive.
        Raises MessageTooLarge / ProtocolError on a bad header."""

class Connection:
    """A framed, connected stream socket. Owns ``sock`` and closes it.

    ``timeout`` (seconds, None: wait forever) bounds every wait for a
    message; when it runs out TimeoutError is raised and the connection is
    closed, so a late reply is never read as the answer to a later call.
    A peer that closed raises EOFError.  ``spin_us`` is this connection's
    spin budget before it blocks (0: block at once).  ``backlog_max``, on
    a server's connection, bounds the unread request bytes plus unsent
    reply bytes that a send which waits takes in (0: no bound; the hub
    and serve_connection set it to ``_protocol.BACKLOG_MAX``)."""

    codec: Codec
    timeout: Optional[float]
    spin_us: int
    max_message: int
    backlog_max: int
    closed: bool
    def __init__(self, sock: socket.socket, codec: Optional[Codec] = None,
                 max_message: int = ..., timeout: Optional[float] = None) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def send_bytes(self, buf: bytes, offset: int = 0, size: Optional[int] = None) -> None: ...
    def recv_bytes(self, maxlength: Optional[int] = None) -> bytes: ...
    def send(self, obj: Any) -> None: ...
    def recv(self) -> Any: ...
    def poll(self, timeout: Optional[float] = 0.0) -> bool: ...
    def send_request(self, kind: int, ident: int, method: str,
                     args: tuple = (), kwds: Optional[dict] = None) -> None: ...
    def recv_response(self) -> Tuple[int, Any]: ...
    def call(self, ident: int, method: str, args: tuple = (),
             kwds: Optional[dict] = None) -> Tuple[int, Any]:
        """send_request(REQ_CALL, ...) then recv_response()."""
    # Driven by an event loop (fastmgr.aio): none of these blocks; the loop
    # waits for the socket to turn readable (bytes, the rings' wake-up
    # bytes, EOF) or writable.  Not for TLS connections (ValueError).
    def loop_queue(self, kind: int, ident: int, method: str, args: tuple = (),
                   kwds: Optional[dict] = None) -> None:
        """Queue a request frame; loop_send() sends it."""
    def loop_send(self) -> int:
        """Send what the socket (or the tx ring) takes now of the queued
        frames; return how many bytes wait still.  With rings, the rest
        goes once the peer rings: the socket turns readable."""
    def loop_receive(self, decode: bool = True) -> list:
        """Every whole frame that came: (kind, value) per response, or
        (0, exception) for one that does not decode; without decode the
        bodies as bytes.  EOFError once the peer has closed and no frame
        is left."""
    def loop_spin(self) -> bool:
        """Spin for up to the spin budget in force until bytes come (the
        compiled wire; the pure-Python one returns False at once)."""
    # Compiled wire only (connection.can_ring() looks for attach_ring):
    has_ring: bool
    @staticmethod
    def ring_size() -> int:
        """Bytes of the memfd attach_ring() maps (two rings)."""
    def attach_ring(self, fd: int, server: bool) -> None:
        """From now on carry bytes through the two shared-memory rings in
        fd (zeroed, ring_size() bytes; client to server first), the socket
        kept for wake-ups, EOF and messages too large for a ring.  Both
        sides attach before either sends;
        raises ValueError if this connection already has bytes read ahead,
        a ring, or TLS.  See _protocol.py."""

class Pending:
    """The reply to a pipelined call."""

    def done(self) -> bool: ...
    def result(self) -> Any:
        """The call's result (waiting for it if need be), or its exception raised."""

class Pipeline:
    """Stands in for a Connection: call() sends without waiting and returns
    (RESP_RETURN, Pending); replies are read in order, when more than
    ``window`` are outstanding, when a result is asked for, and by sync().
    ``resolve(kind, value)`` returns or raises the result of a reply that
    is not RESP_RETURN."""

    conn: Connection
    resolve: Callable[[int, Any], Any]
    closed: bool
    outstanding: int
    def __init__(self, conn: Connection, resolve: Callable[[int, Any], Any],
                 window: int = 4096) -> None: ...
    def close(self) -> None: ...
    def call(self, ident: int, method: str, args: tuple = (),
             kwds: Optional[dict] = None) -> Tuple[int, Any]: ...
    def send_request(self, kind: int, ident: int, method: str,
                     args: tuple = (), kwds: Optional[dict] = None) -> None:
        """REQ_ONEWAY only."""
    def sync(self) -> None:
        """Send what is queued and read every outstanding reply."""
    def unseen_errors(self) -> List[Pending]:
        """Failed calls whose result() nobody asked for."""

# The handshake, re-exported from fastmgr._handshake (one implementation
# for both wires):
def deliver_challenge(conn: Connection, authkey: bytes) -> bytes:
    """Server side of the handshake; returns the client's hello bytes.
    Raises multiprocessing.AuthenticationError."""

def answer_challenge(conn: Connection, authkey: bytes, hello: bytes = b"") -> None:
    """Client side of the handshake. Raises multiprocessing.AuthenticationError
    (EOFError if the server closes before its challenge)."""

class Entry:
    """One row of a server's object table (read-only fields)."""

    obj: Any
    exposed: Any  # a set of method names callers may call
    method_to_typeid: Optional[Dict[str, str]]  # results shared in turn, or None
    thread_bound: bool  # calls on obj need the connection's own thread (see Hub)
    def __init__(self, obj: Any, exposed: Any, method_to_typeid: Optional[Dict[str, str]] = None,
                 thread_bound: bool = False) -> None: ...

def serve_connection(conn: Connection, table: Dict[int, Entry], control: Entry,
                     fallback: Callable[[int, Any, str, tuple, dict], Any],
                     make_proxy: Callable[[str, Any], tuple]) -> None:
    """The server's loop for one connection, until the peer closes.

    ``table`` maps ident -> Entry.  Ident 0 is ``control``, the
    connection's own Entry.  For a method not in
    ``exposed``, ``fallback(ident, obj, method, args, kwds)`` answers (it
    raises AttributeError for names it does not know).  A result of a method
    named in ``method_to_typeid`` is registered by
    ``make_proxy(typeid, result)``, which returns the RESP_PROXY value.
    Exceptions from the method become RESP_ERROR; unknown idents, fallback
    failures and results that cannot be encoded become RESP_FAILURE.
    Returns when the peer closes; raises ProtocolError on a malformed frame
    (the caller then closes the connection)."""


class Hub:
    """Serves connections for one server: ``table`` and ``fallback`` as for
    serve_connection; ``start_thread(fn, *args)`` runs fn in a new daemon
    thread.  The compiled hub serves every connection from one loop thread
    (spinning ``spin_us`` µs, then waiting in epoll) and gives a connection
    a thread of its own (running serve_connection) when a request names a
    thread-bound object, when its frame header needs care, or when a call
    or send keeps the loop for long (a watchdog then starts a new loop
    thread).  The pure-Python hub gives every connection its own thread."""

    closed: bool
    def __init__(self, table: Dict[int, Entry], fallback: Callable[..., Any],
                 start_thread: Callable[..., None], spin_us: Optional[int] = None) -> None: ...
    def add(self, conn: Connection, control: Entry, make_proxy: Callable[[str, Any], tuple],
            finished: Callable[[Optional[BaseException]], None]) -> None:
        """Serve conn; ``finished(exc)`` is called once when that ends, with
        the exception that ended it or None when the peer closed.  The hub
        closes conn before."""
    def close(self) -> None:
        """Stop the loop threads (open connections stay the caller's)."""
    def stats(self) -> dict:
        """{"connections": in the loop now, "replacements": loop threads
        replaced when stuck, "handovers": connections given their own thread}."""
