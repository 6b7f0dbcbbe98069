"""The handshake of ``_protocol.py`` ("Handshake", "Stdlib peers"),
written once for both wires.

It needs only ``conn.send_bytes(data)`` and ``conn.recv_bytes(maxlength)``,
so it runs over the compiled ``Connection`` and the pure-Python one alike.
Nothing is decoded before it succeeds.  Every failure the peer can cause
is a ``multiprocessing.AuthenticationError``, except a server that closes
before its challenge: the client then sees ``EOFError``.

Server side: ``server_handshake()`` tells a fastmgr client from a client of
plain ``multiprocessing.managers`` and authenticates either;
``deliver_challenge()`` takes fastmgr clients only.  Client side:
``client_handshake()`` authenticates with a fastmgr server, or a stdlib
server when asked to; ``answer_challenge()``, with a fastmgr server only,
and ``answer_challenge_async()`` the same for an event loop's connection.
"""
import collections
import hmac
import os

from . import _handshake_stdlib as stdlib
from . import _protocol as P
from .errors import AuthenticationError, ProtocolError

__all__ = ["Greeting", "StdlibRefused", "server_handshake", "client_handshake",
           "deliver_challenge", "answer_challenge", "answer_challenge_async", "refuse"]

#: the client's answer before its hello: the magic, a digest, then its nonce
_ANSWER_SIZE = len(P.MAGIC) + P.DIGEST_SIZE + P.NONCE_SIZE

#: what server_handshake() learned: the dialect of the connection from now
#: on, the hello of a fastmgr client (empty for a stdlib one), and the
#: digest the client proved the key with ("sha256", or "md5" from a stdlib
#: client of Python 3.10 or 3.11)
Greeting = collections.namedtuple("Greeting", "dialect hello digest")


class StdlibRefused(AuthenticationError):
    """A peer of plain multiprocessing.managers, which this side does not
    serve or use (it would mean pickle where pickle is refused, say)."""


def _digest(authkey, prefix, message):
    """The proof of the key: the prefix (C or S) stops a reflected challenge."""
    return hmac.new(authkey, prefix + message, "sha256").digest()


def _check_authkey(authkey):
    if not isinstance(authkey, bytes):
        raise TypeError("authkey must be bytes, not %s" % type(authkey).__name__)


def _recv(conn):
    """One handshake frame; a too long or broken one is an AuthenticationError."""
    try:
        return conn.recv_bytes(P.MAX_HANDSHAKE_FRAME)
    except ProtocolError as exc:
        raise AuthenticationError("malformed handshake frame: %s" % exc) from None


def _version(data, at):
    """The protocol version byte at data[at], as text."""
    return str(data[at]) if len(data) > at else "?"


def _fail(conn, reason=b""):
    try:
        conn.send_bytes(P.FAILURE + (b" " + reason if reason else b""))
    except OSError:
        pass


def _challenge(conn):
    """Send the server's challenge; return its message M."""
    message = P.SHA256_PREFIX + P.MAGIC + os.urandom(P.NONCE_SIZE)
    conn.send_bytes(P.CHALLENGE + message)
    try:
        return message, _recv(conn)
    except EOFError:
        raise AuthenticationError("the client closed during the handshake") from None


# ---------------------------------------------------------------------------
# server side

def server_handshake(conn, authkey, stdlib_refusal=None):
    """Server side: challenge the client and authenticate it, whether it runs
    fastmgr or plain multiprocessing.managers; returns a Greeting.  With
    stdlib_refusal (a reason, str), a stdlib client that knows the key is
    told FAILURE and StdlibRefused is raised."""
    _check_authkey(authkey)
    message, answer = _challenge(conn)
    if answer.startswith(P.MAGIC):
        return Greeting(P.DIALECT_FASTMGR, _welcome(conn, authkey, message, answer), "sha256")
    if answer.startswith(P.MAGIC_FAMILY):
        _fail(conn)
        raise AuthenticationError("the client speaks fastmgr protocol %s, this server %d"
                                  % (_version(answer, len(P.MAGIC_FAMILY)), P.PROTOCOL_VERSION))
    digest = _welcome_stdlib(conn, authkey, message, answer, stdlib_refusal)
    return Greeting(P.DIALECT_STDLIB, b"", digest)


def _welcome(conn, authkey, message, answer):
    """A fastmgr client's answer: check it, prove we know the key too;
    return the client's hello."""
    if not _ANSWER_SIZE <= len(answer) <= _ANSWER_SIZE + P.MAX_HELLO:
        _fail(conn)
        raise AuthenticationError("malformed handshake answer (%d bytes)" % len(answer))
    digest = answer[len(P.MAGIC):len(P.MAGIC) + P.DIGEST_SIZE]
    if not hmac.compare_digest(digest, _digest(authkey, b"C", message)):
        _fail(conn)
        raise AuthenticationError("digest received was wrong")
    client_nonce = answer[len(P.MAGIC) + P.DIGEST_SIZE:_ANSWER_SIZE]
    conn.send_bytes(P.WELCOME + _digest(authkey, b"S", client_nonce))
    return answer[_ANSWER_SIZE:]


def _welcome_stdlib(conn, authkey, message, answer, refusal):
    """A stdlib client's answer: check it, then answer its challenge;
    returns the name of the client's digest."""
    try:
        # a raw HMAC-MD5 comes from 3.10 and 3.11, which know nothing better
        digest = stdlib.verify(authkey, message, answer, md5_ok=True)
    except AuthenticationError:
        _fail(conn)
        raise
    if refusal is not None:
        _fail(conn)
        raise StdlibRefused(refusal)
    conn.send_bytes(P.WELCOME)
    stdlib.answer(conn, authkey, stdlib.take_challenge(conn))
    return digest


def deliver_challenge(conn, authkey):
    """Server side, for fastmgr clients only: challenge the client, then
    prove we know the key too.  Returns the client's hello bytes."""
    return server_handshake(conn, authkey, "this connection takes fastmgr clients only").hello


def refuse(conn, reason):
    """Server side: challenge the client, take its answer, and tell it
    FAILURE and reason (bytes) whatever it said."""
    _challenge(conn)
    _fail(conn, reason)


# ---------------------------------------------------------------------------
# client side

def answer_challenge(conn, authkey, hello=b""):
    """Client side, for fastmgr servers only: answer the server's challenge
    (sending hello, at most MAX_HELLO bytes), then check the server's proof."""
    client_handshake(conn, authkey, hello)


def client_handshake(conn, authkey, hello=b"", stdlib_servers=False):
    """Client side: authenticate with the server and check that it knows
    the key (hello as in answer_challenge); returns the dialect of the
    connection from now on.  A server of plain multiprocessing.managers is
    authenticated the stdlib's way when stdlib_servers is true, else
    StdlibRefused is raised."""
    hello = _client_hello(authkey, hello)
    challenge = _recv(conn)
    if _from_stdlib_server(challenge):
        _stdlib_server(conn, authkey, challenge[len(P.CHALLENGE):], stdlib_servers)
        return P.DIALECT_STDLIB
    answer, nonce = _answer(authkey, hello, challenge)
    conn.send_bytes(answer)
    _check_proof(authkey, _recv(conn), nonce)
    return P.DIALECT_FASTMGR


async def answer_challenge_async(conn, authkey, hello=b""):
    """answer_challenge() for an event loop: conn.recv_bytes() is awaited.
    A fastmgr server only: an async view speaks no stdlib format."""
    hello = _client_hello(authkey, hello)
    challenge = await _recv_async(conn)
    if _from_stdlib_server(challenge):
        raise StdlibRefused("the server runs plain multiprocessing.managers: "
                            "async views need a fastmgr server")
    answer, nonce = _answer(authkey, hello, challenge)
    conn.send_bytes(answer)
    _check_proof(authkey, await _recv_async(conn), nonce)


async def _recv_async(conn):
    """_recv(), awaited."""
    try:
        return await conn.recv_bytes(P.MAX_HANDSHAKE_FRAME)
    except ProtocolError as exc:
        raise AuthenticationError("malformed handshake frame: %s" % exc) from None


def _client_hello(authkey, hello):
    """The client's checked arguments: hello as bytes."""
    _check_authkey(authkey)
    hello = bytes(memoryview(hello))
    if len(hello) > P.MAX_HELLO:
        raise ValueError("hello is %d bytes, more than %d" % (len(hello), P.MAX_HELLO))
    return hello


def _from_stdlib_server(challenge):
    """Whether a challenge frame is a stdlib server's (no fastmgr magic)."""
    if challenge.startswith(P.MAGIC_V1):
        raise AuthenticationError("the server speaks fastmgr protocol 1, this client %d"
                                  % P.PROTOCOL_VERSION)
    if not challenge.startswith(P.CHALLENGE):
        raise AuthenticationError("the peer is not a manager server (no challenge)")
    return not challenge.startswith(P.CHALLENGE + P.SHA256_PREFIX + P.MAGIC_FAMILY)


def _stdlib_server(conn, authkey, message, accept):
    """Authenticate with a stdlib server whose challenge message came, the
    stdlib's way, if accept."""
    if not accept:
        raise StdlibRefused("the server runs plain multiprocessing.managers, whose "
                            "format this connection does not speak")
    if len(message) < P.STDLIB_LEGACY_MESSAGE:
        raise AuthenticationError("challenge too short: %d bytes" % len(message))
    stdlib.answer(conn, authkey, message)
    stdlib.challenge(conn, authkey, md5_ok=stdlib.is_legacy(message))


def _answer(authkey, hello, challenge):
    """(the answer to a fastmgr server's challenge frame, the nonce the
    server must prove the key with)."""
    message = challenge[len(P.CHALLENGE):]
    if message.startswith(P.SHA256_PREFIX + P.CLIENT_MAGIC):
        raise AuthenticationError("the server sent a fastmgr client's challenge: not answered")
    if not message.startswith(P.SHA256_PREFIX + P.MAGIC):
        version = _version(message, len(P.SHA256_PREFIX) + len(P.MAGIC_FAMILY))
        raise AuthenticationError("the server speaks fastmgr protocol %s, this client %d"
                                  % (version, P.PROTOCOL_VERSION))
    if len(message) != len(P.SHA256_PREFIX) + len(P.MAGIC) + P.NONCE_SIZE:
        raise AuthenticationError("malformed challenge (%d bytes)" % len(message))
    nonce = os.urandom(P.NONCE_SIZE)
    return P.MAGIC + _digest(authkey, b"C", message) + nonce + hello, nonce


def _check_proof(authkey, reply, nonce):
    """The server's reply: its proof that it knows the key, or a refusal."""
    if reply == P.FAILURE:
        raise AuthenticationError("digest sent was rejected")
    if reply.startswith(P.FAILURE + b" "):
        reason = reply[len(P.FAILURE) + 1:].decode("ascii", "replace")
        raise AuthenticationError("the server refused the connection: %s" % reason)
    if len(reply) != len(P.WELCOME) + P.DIGEST_SIZE or not reply.startswith(P.WELCOME):
        raise AuthenticationError("malformed handshake reply (%d bytes)" % len(reply))
    if not hmac.compare_digest(reply[len(P.WELCOME):], _digest(authkey, b"S", nonce)):
        raise AuthenticationError("the server did not prove it knows the key")
