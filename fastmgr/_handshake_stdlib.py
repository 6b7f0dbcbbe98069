"""The stdlib's authentication handshake, for peers that run plain
``multiprocessing`` (Python 3.10 to 3.13; see ``_protocol.py``, "Stdlib
peers").

Each side proves it knows the key by answering the other's challenge:
``#CHALLENGE#`` + a message, answered by an HMAC of the message, then
``#WELCOME#`` or ``#FAILURE#``.  Two generations of it are alive:

- *legacy* (3.10, 3.11): the message is 20 random bytes and the answer is
  the raw 16-byte HMAC-MD5 of whatever message came;
- *modern* (3.12 and later): the message is ``{sha256}`` + 40 random bytes,
  the answer ``{sha256}`` + the HMAC-SHA256 of the whole message, and a
  modern side takes a raw HMAC-MD5 answer from a legacy peer.

We follow the modern rules, which a legacy peer understands, and prefer
the strongest digest both sides know: our challenges name sha256, and MD5
is accepted only from a peer that showed itself legacy.  Our challenges
carry fastmgr's magic, and we answer none that does: no fastmgr process
can be made to answer another's challenge.
"""
import hmac
import os

from . import _protocol as P
from .errors import AuthenticationError, ProtocolError

__all__ = ["response", "verify", "answer", "challenge"]

#: digests the stdlib accepts in a ``{name}`` prefix
DIGESTS = frozenset([b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"])


def is_legacy(message):
    """Whether a challenge message (after ``#CHALLENGE#``) came from a
    legacy peer, which sends 20 random bytes and no digest name."""
    return len(message) == P.STDLIB_LEGACY_MESSAGE


def _named_digest(data):
    """(name, rest) of ``{name}rest`` with a name the stdlib allows."""
    if data.startswith(b"{"):
        end = data.find(b"}", 1, max(map(len, DIGESTS)) + 2)
        if end > 0 and data[1:end] in DIGESTS:
            return data[1:end].decode("ascii"), data[end + 1:]
    raise AuthenticationError("a stdlib handshake message without a known {digest} prefix")


def response(authkey, message):
    """The answer to a stdlib challenge message: raw HMAC-MD5 for a legacy
    one, else ``{name}`` + the HMAC of the digest the message names.  A
    challenge of a fastmgr process is never answered (see "Stdlib peers")."""
    if is_legacy(message):
        return hmac.new(authkey, message, "md5").digest()
    name, rest = _named_digest(message)
    if rest.startswith(P.MAGIC_FAMILY):
        raise AuthenticationError("the peer sent a fastmgr process's challenge back: "
                                  "not answered")
    return b"{%s}%s" % (name.encode("ascii"), hmac.new(authkey, message, name).digest())


def verify(authkey, message, reply, md5_ok):
    """Check a peer's answer to our challenge message (md5_ok: the peer is
    legacy, so a raw HMAC-MD5 is the best it can do); the digest's name."""
    if len(reply) == P.MD5_DIGEST_SIZE:
        if not md5_ok:
            raise AuthenticationError("a raw HMAC-MD5 answer from a peer that knows better")
        name, mac = "md5", reply
    else:
        name, mac = _named_digest(reply)
        if name != "sha256":
            raise AuthenticationError("answered with %s where sha256 was asked" % name)
    try:
        expected = hmac.new(authkey, message, name).digest()
    except ValueError:  # no MD5 in this Python (FIPS)
        raise AuthenticationError("digest %s is not available here" % name) from None
    if not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")
    return name


def _recv(conn):
    try:
        return conn.recv_bytes(P.MAX_HANDSHAKE_FRAME)
    except ProtocolError as exc:  # a frame too long or malformed
        raise AuthenticationError("malformed handshake frame: %s" % exc) from None


def answer(conn, authkey, message):
    """Answer the stdlib challenge ``message`` (read already) and wait for
    the verdict."""
    conn.send_bytes(response(authkey, message))
    if _recv(conn) != P.WELCOME:
        raise AuthenticationError("digest sent was rejected")


def take_challenge(conn):
    """Read a stdlib challenge; its message."""
    frame = _recv(conn)
    if not frame.startswith(P.CHALLENGE):
        raise AuthenticationError("expected a challenge from the peer")
    message = frame[len(P.CHALLENGE):]
    if len(message) < P.STDLIB_LEGACY_MESSAGE:
        raise AuthenticationError("challenge too short: %d bytes" % len(message))
    return message


def challenge(conn, authkey, md5_ok):
    """Challenge the peer the stdlib's way and tell it the verdict."""
    message = P.SHA256_PREFIX + P.CLIENT_MAGIC + os.urandom(P.STDLIB_MESSAGE)
    conn.send_bytes(P.CHALLENGE + message)
    try:
        verify(authkey, message, _recv(conn), md5_ok)
    except AuthenticationError:
        try:
            conn.send_bytes(P.FAILURE)
        except OSError:
            pass
        raise
    conn.send_bytes(P.WELCOME)
