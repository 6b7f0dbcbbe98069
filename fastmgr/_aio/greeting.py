"""The client's side of the handshake, awaited (see ``_protocol.py``)."""
import hmac
import os

from .._protocol import DIGEST_SIZE, FAILURE, MAGIC, MAX_HANDSHAKE_FRAME, MAX_HELLO, NONCE_SIZE, WELCOME
from ..errors import AuthenticationError, ProtocolError

__all__ = ["answer_challenge_async"]


def _digest(authkey, prefix, nonce):
    return hmac.new(authkey, prefix + nonce, "sha256").digest()


async def _recv(conn):
    try:
        return await conn.recv_bytes(MAX_HANDSHAKE_FRAME)
    except ProtocolError as exc:
        raise AuthenticationError("malformed handshake frame: %s" % exc) from None


async def answer_challenge_async(conn, authkey, hello=b""):
    """answer_challenge() over a connection whose recv_bytes is awaited."""
    if not isinstance(authkey, bytes):
        raise TypeError("authkey must be bytes, not %s" % type(authkey).__name__)
    hello = bytes(memoryview(hello))
    if len(hello) > MAX_HELLO:
        raise ValueError("hello is %d bytes, more than %d" % (len(hello), MAX_HELLO))
    challenge = await _recv(conn)
    if len(challenge) != len(MAGIC) + NONCE_SIZE or not challenge.startswith(MAGIC):
        raise AuthenticationError("the peer is not a fastmgr server of protocol %d" % MAGIC[-1])
    nonce = os.urandom(NONCE_SIZE)
    conn.send_bytes(_digest(authkey, b"C", challenge[len(MAGIC):]) + nonce + hello)
    reply = await _recv(conn)
    if reply == FAILURE:
        raise AuthenticationError("digest sent was rejected")
    if len(reply) != len(WELCOME) + DIGEST_SIZE or not reply.startswith(WELCOME):
        raise AuthenticationError("malformed handshake reply (%d bytes)" % len(reply))
    if not hmac.compare_digest(reply[len(WELCOME):], _digest(authkey, b"S", nonce)):
        raise AuthenticationError("the server did not prove it knows the key")
