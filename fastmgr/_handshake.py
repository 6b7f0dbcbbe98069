"""The handshake of ``_protocol.py``, written once for both wires.

It needs only ``conn.send_bytes(data)`` and ``conn.recv_bytes(maxlength)``,
so it runs over the compiled ``Connection`` and the pure-Python one alike.
Nothing is decoded before it succeeds.  Every failure the peer can cause
is a ``multiprocessing.AuthenticationError``, except a server that closes
before its challenge: the client then sees ``EOFError``.
"""
import hmac
import os

from ._protocol import (DIGEST_SIZE, FAILURE, MAGIC, MAX_HANDSHAKE_FRAME, MAX_HELLO,
                        NONCE_SIZE, WELCOME)
from .errors import AuthenticationError, ProtocolError

__all__ = ["deliver_challenge", "answer_challenge"]

#: the client's answer before its hello: a digest, then its nonce
_ANSWER_SIZE = DIGEST_SIZE + NONCE_SIZE


def _digest(authkey, prefix, nonce):
    """The proof of the key: the prefix (C or S) stops a reflected challenge."""
    return hmac.new(authkey, prefix + nonce, "sha256").digest()


def _check_authkey(authkey):
    if not isinstance(authkey, bytes):
        raise TypeError("authkey must be bytes, not %s" % type(authkey).__name__)


def _recv(conn):
    """One handshake frame; a too long or malformed one is an
    AuthenticationError."""
    try:
        return conn.recv_bytes(MAX_HANDSHAKE_FRAME)
    except ProtocolError as exc:
        raise AuthenticationError("malformed handshake frame: %s" % exc) from None


def deliver_challenge(conn, authkey):
    """Server side: challenge the client, then prove we know the key too.
    Returns the client's hello bytes."""
    _check_authkey(authkey)
    nonce = os.urandom(NONCE_SIZE)
    conn.send_bytes(MAGIC + nonce)
    try:
        answer = _recv(conn)
    except EOFError:
        raise AuthenticationError("the client closed during the handshake") from None
    if not _ANSWER_SIZE <= len(answer) <= _ANSWER_SIZE + MAX_HELLO:
        raise AuthenticationError("malformed handshake answer (%d bytes)" % len(answer))
    if not hmac.compare_digest(answer[:DIGEST_SIZE], _digest(authkey, b"C", nonce)):
        try:
            conn.send_bytes(FAILURE)
        except OSError:
            pass
        raise AuthenticationError("digest received was wrong")
    client_nonce = answer[DIGEST_SIZE:_ANSWER_SIZE]
    conn.send_bytes(WELCOME + _digest(authkey, b"S", client_nonce))
    return answer[_ANSWER_SIZE:]


def answer_challenge(conn, authkey, hello=b""):
    """Client side: answer the server's challenge (sending hello, at most
    MAX_HELLO bytes), then check the server's proof."""
    _check_authkey(authkey)
    hello = bytes(memoryview(hello))
    if len(hello) > MAX_HELLO:
        raise ValueError("hello is %d bytes, more than %d" % (len(hello), MAX_HELLO))
    challenge = _recv(conn)
    if len(challenge) != len(MAGIC) + NONCE_SIZE or not challenge.startswith(MAGIC):
        raise AuthenticationError("the peer is not a fastmgr server of protocol %d" % MAGIC[-1])
    nonce = os.urandom(NONCE_SIZE)
    conn.send_bytes(_digest(authkey, b"C", challenge[len(MAGIC):]) + nonce + hello)
    reply = _recv(conn)
    if reply == FAILURE:
        raise AuthenticationError("digest sent was rejected")
    if len(reply) != len(WELCOME) + DIGEST_SIZE or not reply.startswith(WELCOME):
        raise AuthenticationError("malformed handshake reply (%d bytes)" % len(reply))
    if not hmac.compare_digest(reply[len(WELCOME):], _digest(authkey, b"S", nonce)):
        raise AuthenticationError("the server did not prove it knows the key")
