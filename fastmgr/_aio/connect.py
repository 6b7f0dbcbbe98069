"""Opening a lane: connect, TLS, the handshake; none of it waits on the loop.

The same steps as ``connection.Client`` (and the same errors: ManagerGone
for a manager that cannot be reached, TimeoutError past the peer's
``connect_timeout``, AuthenticationError for a wrong key), with the socket
non-blocking until it is connected.  Over a unix socket the lane offers
shared-memory rings, as a sync connection does: the loop then waits on the
socket for the rings' wake-up bytes.
"""
import asyncio
import os
import socket
import ssl

from .._backend import wire
from .._handshake import answer_challenge_async
from .._protocol import MAX_HANDSHAKE_FRAME, RING_HELLO
from ..connection import (address_family, can_ring, connect_once, connect_pauses, ring_answered,
                          ring_file, send_ring_offer)
from ..errors import ManagerGone
from ..proxies import _UNREACHABLE, _Session
from .lane import WireLane
from .tls_lane import TlsLane

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
    await _connect(loop, sock, peer.address)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ring = False
    if peer.ssl_context is not None:
        tls = await _tls_handshake(loop, sock, peer.ssl_context, peer.address)
        lane = TlsLane(link, sock, wire.FrameReader(MAX_HANDSHAKE_FRAME), tls)
    else:
        conn = wire.Connection(sock, codec=link.codec, max_message=MAX_HANDSHAKE_FRAME)
        conn.spin_us = link.spin_us
        ring = can_ring(conn, sock)
        lane = WireLane(link, conn)
    try:
        await answer_challenge_async(_Greeting(lane), bytes(peer.authkey),
                                     _Session.id + (RING_HELLO if ring else b""))
        if ring:
            await _offer_ring(lane, sock)
    except BaseException:
        lane.close()
        raise
    lane.greeted()
    return lane


async def _connect(loop, sock, address):
    """loop.sock_connect(), but a unix socket is tried again while its
    listener's backlog is full: sock_connect() would take the EAGAIN of
    connect() for a connection in progress and return with the socket
    unconnected (the first recv() then fails with EINVAL).  The caller
    bounds the wait (connect_timeout)."""
    if sock.family != socket.AF_UNIX:
        await loop.sock_connect(sock, address)
        return
    pauses = connect_pauses()
    while not connect_once(sock, address):
        await asyncio.sleep(next(pauses))


async def _offer_ring(lane, sock):
    """connection.offer_ring(), its answer awaited."""
    conn = lane.conn
    fd = ring_file(conn)
    try:
        send_ring_offer(sock, fd)
        if ring_answered(conn, await lane.recv_frame(), fd):
            lane.attached_ring()
    finally:
        os.close(fd)


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
