"""Opening a lane: connect, TLS, the handshake; none of it waits on the loop.

The same steps as ``connection.Client`` (and the same errors: ManagerGone
for a manager that cannot be reached, TimeoutError past the peer's
``connect_timeout``, AuthenticationError for a wrong key), with the socket
non-blocking from the start.  Lanes never offer shared-memory rings: a
loop waits on the socket, which a ring would leave silent.
"""
import asyncio
import socket
import ssl

from .._backend import wire
from .._handshake import answer_challenge_async
from .._protocol import DEFAULT_MAX_MESSAGE, MAX_HANDSHAKE_FRAME
from ..connection import address_family
from ..errors import ManagerGone
from ..proxies import _UNREACHABLE, _Session
from .lane import Lane

__all__ = ["open_lane"]

_GONE = (ConnectionRefusedError, FileNotFoundError, ConnectionResetError, BrokenPipeError,
         EOFError)


async def open_lane(link):
    """A new, authenticated lane to link's manager."""
    peer = link.peer
    sock = socket.socket(address_family(peer.address), socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        return await asyncio.wait_for(_open(link, sock), peer.connect_timeout)
    except asyncio.TimeoutError:
        sock.close()
        raise TimeoutError("connecting to the manager at %r took more than %r seconds"
                           % (peer.address, peer.connect_timeout)) from None
    except ManagerGone:
        sock.close()
        raise
    except _GONE as exc:
        sock.close()
        raise ManagerGone("cannot reach the manager at %r: %s" % (peer.address, exc)) from exc
    except OSError as exc:
        sock.close()
        if exc.errno not in _UNREACHABLE:
            raise
        raise ManagerGone("cannot reach the manager at %r: %s" % (peer.address, exc)) from exc
    except BaseException:
        sock.close()
        raise


async def _open(link, sock):
    loop, peer = link.loop, link.peer
    await loop.sock_connect(sock, peer.address)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = None
    if peer.ssl_context is not None:
        tls = await _tls_handshake(loop, sock, peer.ssl_context, peer.address)
    lane = Lane(link, sock, wire.FrameReader(MAX_HANDSHAKE_FRAME), tls)
    try:
        await answer_challenge_async(_Greeting(lane), bytes(peer.authkey),
                                                _Session.id)
    except BaseException:
        lane.detach()
        raise
    lane.frames = wire.FrameReader(DEFAULT_MAX_MESSAGE)
    lane.greeting = False
    return lane


class _Greeting:
    """The handshake's view of a lane: send_bytes, and recv_bytes awaited."""

    def __init__(self, lane):
        self._lane = lane

    def send_bytes(self, data):
        self._lane.send_frame(data)

    async def recv_bytes(self, maxlength=None):
        return await self._lane.recv_frame()


async def _tls_handshake(loop, sock, context, address):
    """(SSLObject, incoming, outgoing): TLS over memory buffers, the
    handshake done through the non-blocking socket."""
    hostname = address[0] if context.check_hostname and isinstance(address, tuple) else None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=hostname)
    while True:
        try:
            sslobj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        records = outgoing.read()
        if records:
            await loop.sock_sendall(sock, records)
        data = await loop.sock_recv(sock, 65536)
        if not data:
            raise EOFError("the manager closed the connection during the TLS handshake")
        incoming.write(data)
    records = outgoing.read()
    if records:
        await loop.sock_sendall(sock, records)
    return sslobj, incoming, outgoing
