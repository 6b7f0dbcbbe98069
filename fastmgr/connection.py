"""Listener and Client, shaped like ``multiprocessing.connection``'s.

A connection is the wire's ``Connection``: framed, authenticated by the
handshake of ``_protocol.py`` before anything is decoded (or, to a server
of plain ``multiprocessing.managers``, a ``StdlibConnection`` over such
connections).  Addresses are
those of the stdlib: a ``(host, port)`` tuple for TCP (an IPv6 host such as
``'::1'`` works too), a path string for a unix socket.
"""
import fcntl
import functools
import os
import select
import socket
import struct
import time
from multiprocessing import connection as _mpc
from multiprocessing import util

from . import _handshake
from . import _protocol as P
from . import _settings
from ._backend import wire
from ._stdlib_client import StdlibConnection
from .errors import ProtocolError

__all__ = ["Listener", "Client", "address_family", "default_address"]

#: how long an unauthenticated peer may take over the handshake (seconds;
#: ``FASTMGR_HANDSHAKE_TIMEOUT``)
HANDSHAKE_TIMEOUT = _settings.HANDSHAKE_TIMEOUT

#: whether connections over unix sockets may carry their bytes through
#: shared memory (``FASTMGR_RING=0`` turns it off)
RINGS = _settings.RING

_RING_OFFER_FRAME = struct.pack("!i", len(P.RING_OFFER)) + P.RING_OFFER
# a ring file's size can never change once offered: a file that shrank under
# the server's mapping would kill it (SIGBUS) at its next look
_RING_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

#: first and longest pause before connecting again to a unix listener whose
#: backlog is full
CONNECT_RETRY_FIRST_S = 0.0005
CONNECT_RETRY_MAX_S = 0.05


def can_ring(conn, sock):
    """Whether conn (over sock) can carry its bytes through shared memory."""
    return (RINGS and hasattr(conn, "attach_ring") and hasattr(os, "memfd_create")
            and type(sock) is socket.socket and sock.family == socket.AF_UNIX)


def offer_ring(conn, sock):
    """Client side, right after the handshake (whose hello ended with
    RING_HELLO): send a shared-memory file beside a RING_OFFER frame and
    attach it if the server accepts."""
    fd = ring_file(conn)
    try:
        send_ring_offer(sock, fd)
        ring_answered(conn, conn.recv_bytes(len(P.RING_ACCEPT) + len(P.RING_DECLINE)), fd)
    finally:
        os.close(fd)


def ring_file(conn):
    """The file a client offers: a zeroed memfd of conn.ring_size() bytes,
    sealed so that its size cannot change."""
    fd = os.memfd_create("fastmgr-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, conn.ring_size())
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _RING_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def send_ring_offer(sock, fd):
    """The RING_OFFER frame, with fd beside it."""
    socket.send_fds(sock, [_RING_OFFER_FRAME], [fd])


def ring_answered(conn, answer, fd):
    """The server's answer to a ring offer: attach fd if it accepted;
    whether it did."""
    if answer == P.RING_ACCEPT:
        conn.attach_ring(fd, False)
        return True
    if answer != P.RING_DECLINE:
        raise ProtocolError("unexpected answer to a ring offer")
    return False


def _sound_ring_file(fd, size):
    """A memfd of exactly size bytes, sealed so that it stays so."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:  # not a memfd
        return False
    return seals & _RING_SEALS == _RING_SEALS and os.fstat(fd).st_size == size


def answer_ring(conn, sock):
    """Server side, right after a handshake whose hello ended with
    RING_HELLO: take the client's RING_OFFER frame and its file (read
    straight from the socket, bounded by HANDSHAKE_TIMEOUT), attach it when
    we can, and say so."""
    data, fds = b"", []
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        while len(data) < len(_RING_OFFER_FRAME):
            msg, more, _flags, _addr = socket.recv_fds(
                sock, len(_RING_OFFER_FRAME) - len(data), 1, socket.MSG_CMSG_CLOEXEC)
            fds += more
            if not msg:
                raise EOFError("the peer closed the connection during the ring offer")
            data += msg
        sock.setblocking(True)
        if data != _RING_OFFER_FRAME or len(fds) != 1:
            raise ProtocolError("malformed ring offer")
        accept = can_ring(conn, sock) and _sound_ring_file(fds[0], conn.ring_size())
        # the answer still goes through the socket; an attach that fails
        # after it ends the connection
        conn.send_bytes(P.RING_ACCEPT if accept else P.RING_DECLINE)
        if accept:
            conn.attach_ring(fds[0], True)
    finally:
        for fd in fds:
            os.close(fd)


def address_family(address):
    """The socket family for an address: AF_UNIX for a path, AF_INET6 for a
    tuple whose host is an IPv6 literal (or a 4-tuple), else AF_INET."""
    if isinstance(address, (str, bytes, os.PathLike)):
        return socket.AF_UNIX
    if isinstance(address, tuple):
        if len(address) == 4 or ":" in str(address[0]):
            return socket.AF_INET6
        return socket.AF_INET
    raise ValueError("address type of %r unrecognized" % (address,))


def default_address():
    """A fresh unix socket path in this process's temporary directory."""
    return _mpc.arbitrary_address("AF_UNIX")


class Listener:
    """A bound, listening socket whose ``accept`` returns raw connections;
    the server authenticates them in their own threads (a slow or hostile
    peer never holds up the accept loop)."""

    def __init__(self, address=None, backlog=128, codec=None, max_message=None):
        if address is None:
            address = default_address()
        family = address_family(address)
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(backlog)
        except BaseException:
            self._sock.close()
            raise
        self.address = self._sock.getsockname()
        if family == socket.AF_INET6:
            self.address = self.address[:2]
        self._unlink = None
        if family == socket.AF_UNIX:
            self._unlink = util.Finalize(self, os.unlink, args=(address,), exitpriority=0)
        self._codec = codec
        self._max_message = max_message
        self.last_accepted = None

    def fileno(self):
        return self._sock.fileno()

    def accept_socket(self):
        """The next connected socket and its peer's address."""
        sock, self.last_accepted = self._sock.accept()
        return sock, self.last_accepted

    def wrap(self, sock, ssl_context=None):
        """A connection over an accepted socket; with ssl_context, the TLS
        handshake happens here, bounded by HANDSHAKE_TIMEOUT."""
        if ssl_context is not None:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            sock = ssl_context.wrap_socket(sock, server_side=True)
        kwargs = {"codec": self._codec}
        if self._max_message:
            kwargs["max_message"] = self._max_message
        return wire.Connection(sock, **kwargs)

    def close(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            # shutdown() wakes a thread blocked in accept() on Linux
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            if self._unlink is not None:
                self._unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def Client(address, authkey, codec=None, hello=b"", timeout=None, max_message=None,
           ssl_context=None, server_hostname=None, ring=False):
    """Connect to ``address`` and authenticate with ``authkey``.

    ``timeout`` bounds the connect and the handshakes; the returned
    connection waits without a limit unless told otherwise.  With
    ``ssl_context`` the connection is TLS (``server_hostname`` defaults to
    the address's host when the context checks host names).  A server of
    plain ``multiprocessing.managers`` gets a ``StdlibConnection`` (when the
    codec pickles; else the handshake raises ``_handshake.StdlibRefused``).
    """
    options = dict(codec=codec, timeout=timeout, max_message=max_message,
                   ssl_context=ssl_context, server_hostname=server_hostname)
    conn, dialect = _open(address, authkey, hello=hello, ring=ring, **options)
    if dialect == P.DIALECT_FASTMGR:
        return conn
    return StdlibConnection(conn, functools.partial(_open_stdlib, address, authkey, **options))


def _open_stdlib(address, authkey, **options):
    """Another authenticated connection to the same stdlib server."""
    conn, dialect = _open(address, authkey, **options)
    if dialect != P.DIALECT_STDLIB:
        conn.close()
        raise ProtocolError("the server at %r no longer runs multiprocessing.managers"
                            % (address,))
    return conn


def connect_socket(sock, address, timeout):
    """sock.connect(), waiting up to timeout seconds for room at a unix
    listener whose backlog is full.  With a timeout the socket is
    non-blocking underneath, and a unix connect() then fails at once with
    EAGAIN (a blocking one would wait, as the stdlib's client does)."""
    if sock.family != socket.AF_UNIX or timeout is None:
        sock.connect(address)
        return
    deadline = time.monotonic() + timeout
    pauses = connect_pauses()
    while not connect_once(sock, address):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the listener at %r had no room for %r seconds"
                               % (address, timeout))
        time.sleep(min(next(pauses), left))


def connect_once(sock, address):
    """One connect() of a non-blocking unix socket: False while the
    listener's backlog is full (a unix connect() is never in progress: it
    is made or refused at once)."""
    try:
        sock.connect(address)
        return True
    except (BlockingIOError, InterruptedError):
        return False


def connect_pauses():
    """The pauses between tries of connect_once(), growing."""
    pause = CONNECT_RETRY_FIRST_S
    while True:
        yield pause
        pause = min(pause * 2, CONNECT_RETRY_MAX_S)


def _open(address, authkey, codec=None, hello=b"", timeout=None, max_message=None,
          ssl_context=None, server_hostname=None, ring=False):
    """An authenticated wire Connection and the dialect it speaks."""
    family = address_family(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        connect_socket(sock, address, timeout)
        if ssl_context is not None:
            if server_hostname is None and ssl_context.check_hostname:
                server_hostname = address[0]
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise
    kwargs = {"codec": codec}
    if max_message:
        kwargs["max_message"] = max_message
    conn = wire.Connection(sock, **kwargs)
    ring = ring and can_ring(conn, sock)
    pickles = (codec.serializer if codec is not None else "pickle") == "pickle"
    try:
        conn.timeout = HANDSHAKE_TIMEOUT if timeout is None else timeout
        dialect = _handshake.client_handshake(
            conn, bytes(authkey), hello + (P.RING_HELLO if ring else b""), stdlib_servers=pickles)
        if ring and dialect == P.DIALECT_FASTMGR:
            offer_ring(conn, sock)
        conn.timeout = None
    except _handshake.StdlibRefused:
        conn.close()
        raise _handshake.StdlibRefused(
            "the server at %r runs plain multiprocessing.managers, which speaks pickle, and "
            "this client's serializer %r never unpickles" % (address, codec.serializer)) from None
    except BaseException:
        conn.close()
        raise
    return conn, dialect


def sends_nothing(sock, seconds=P.PLAINTEXT_WAIT):
    """Whether a newly accepted peer stays silent for seconds: not a TLS
    client (which speaks first), but one waiting for a challenge."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return not poller.poll(int(seconds * 1000))
