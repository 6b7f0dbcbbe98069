"""What the fuzz harnesses check, without atheris: importable by the tests.

Each target takes the fuzzer's bytes and a list of wire implementations
(``fastmgr._wire``, ``fastmgr._wire_py`` or both).  A target returns when the
implementations behaved as the protocol says, and raises ``Finding`` (or
lets an unexpected exception through) when they did not.  With both
implementations, their outcomes must also agree: same values, same
exception types, same replies.

The handshake target makes the nonces of the handshake fixed (it replaces
``os.urandom`` for the process, see ``fix_nonces``), so that it can write a
valid client answer ahead of the bytes that follow a successful handshake.
"""
import hmac
import importlib
import math
import os
import socket
import struct

from fastmgr import _protocol as P
from fastmgr.errors import AuthenticationError, ProtocolError

SERIALIZERS = ("safe", "xmlrpclib")   # never "pickle": unpickling arbitrary bytes runs code
KEY = b"fuzz-key"
FIXED_NONCE_BYTE = b"\x5a"


class Finding(AssertionError):
    """An implementation broke the protocol, or the two disagreed."""


def implementations(name):
    """The wire modules a harness runs: 'compiled', 'python' or 'both'."""
    name = (name or "both").lower()
    if name not in ("compiled", "python", "both"):
        raise ValueError("implementation must be compiled, python or both, not %r" % name)
    mods = []
    if name in ("compiled", "both"):
        mods.append(importlib.import_module("fastmgr._wire"))
    if name in ("python", "both"):
        mods.append(importlib.import_module("fastmgr._wire_py"))
    return mods


# ---------------------------------------------------------------------------
# comparing outcomes

def canon(value):
    """A comparable form of a decoded value: types kept, NaN equal to NaN."""
    t = type(value)
    if t is float:
        return ("float", struct.pack("<d", value) if not math.isnan(value) else b"nan")
    if t in (tuple, list):
        return (t.__name__, tuple(canon(v) for v in value))
    if t is dict:
        return ("dict", tuple((canon(k), canon(v)) for k, v in value.items()))
    return (t.__name__, value)


def outcome(fn, *args, allowed=(ProtocolError,)):
    """("ok", canon(result)) or ("err", exception type name); an exception
    not in allowed propagates: it is a finding."""
    try:
        return ("ok", canon(fn(*args)))
    except allowed as exc:
        return ("err", type(exc).__name__)


def agree(label, outcomes):
    """outcomes: [(implementation, outcome)]; all must be equal."""
    first = outcomes[0][1]
    for impl, out in outcomes[1:]:
        if out != first:
            raise Finding("%s: %s gave %r but %s gave %r" % (
                label, outcomes[0][0], _short(first), impl, _short(out)))


def _short(x, n=300):
    text = repr(x)
    return text if len(text) <= n else text[:n] + "..."


# ---------------------------------------------------------------------------
# the decoder

def decoder_target(data, mods):
    """Codec.loads / decode_request / decode_response under the serializers
    that never unpickle, and FrameReader fed in pieces; decoded values must
    encode again to something that decodes to the same value."""
    data = bytes(data)
    for serializer in SERIALIZERS:
        for method in ("loads", "decode_request", "decode_response"):
            results = []
            for mod in mods:
                codec = mod.Codec(serializer)
                out = outcome(getattr(codec, method), data)
                if out[0] == "ok" and method == "loads":
                    again = codec.loads(codec.dumps(codec.loads(data)))
                    if canon(again) != out[1]:
                        raise Finding("%s %s: value does not survive a round trip: %s" % (
                            mod.IMPLEMENTATION, serializer, _short(data)))
                results.append((mod.IMPLEMENTATION, out))
            agree("%s(%s)" % (method, serializer), results)
    if data:
        step = data[0] % 16 + 1
        limit = (64, 1024, P.DEFAULT_MAX_MESSAGE)[data[0] % 3]
        results = []
        for mod in mods:
            results.append((mod.IMPLEMENTATION, _frames(mod, data[1:], step, limit)))
        agree("FrameReader(step=%d, limit=%d)" % (step, limit), results)


def _frames(mod, data, step, limit):
    reader = mod.FrameReader(limit)
    bodies = []
    try:
        for i in range(0, len(data), step):
            reader.feed(data[i:i + step])
            while True:
                body = reader.next_message()
                if body is None:
                    break
                if len(body) > limit:
                    raise Finding("%s FrameReader returned %d bytes over a limit of %d"
                                  % (mod.IMPLEMENTATION, len(body), limit))
                bodies.append(body)
    except ProtocolError as exc:
        return (bodies, type(exc).__name__)
    return (bodies, None)


# ---------------------------------------------------------------------------
# the handshake, and what follows it

def fix_nonces():
    """Make every nonce fixed (both wires call os.urandom through the os
    module), so that a harness can precompute a valid handshake."""
    os.urandom = lambda n: FIXED_NONCE_BYTE * n


def _digest(prefix, message):
    return hmac.new(KEY, prefix + message, "sha256").digest()


#: the server's challenge message once nonces are fixed
FIXED_MESSAGE = P.SHA256_PREFIX + P.MAGIC + FIXED_NONCE_BYTE * P.NONCE_SIZE


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        for opt in (32, socket.SO_SNDBUF):  # 32: SO_SNDBUFFORCE (root may pass wmem_max)
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                break
            except OSError:
                continue
    return a, b


def _read_all(sock):
    sock.settimeout(2)
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class Echo:
    def echo(self, *args, **kwds):
        return [list(args), kwds]

    def boom(self, *args):
        raise ValueError(*args)

    def make(self, *args):
        return args


class _Control:
    def dummy(self):
        return None


def _fallback(ident, obj, method, args, kwds):
    if method == "#GETVALUE":
        return None
    if method == "__repr__":
        return "Echo"
    raise AttributeError("method %r is not exposed" % (method,))


def _make_proxy(typeid, obj):
    return (typeid, 99, ("echo",))


def _table(mod):
    return {
        1: mod.Entry(Echo(), frozenset(["echo", "boom"])),
        2: mod.Entry(Echo(), frozenset(["make"]), {"make": "Echo"}),
    }


def _server_run(mod, serializer, stream):
    """deliver_challenge then serve_connection over a socket whose peer sent
    ``stream`` and closed for writing.  Returns (outcome, bytes the server
    wrote)."""
    srv, cli = _pair()
    cli.sendall(stream)
    cli.shutdown(socket.SHUT_WR)
    # a small limit, so that large announced frames are refused quickly
    conn = mod.Connection(srv, codec=mod.Codec(serializer), max_message=MAX_MESSAGE)
    conn.timeout = 5
    try:
        try:
            hello = mod.deliver_challenge(conn, KEY)
        except AuthenticationError:
            conn.close()
            return ("auth-failed", None), _read_all(cli)
        conn.timeout = 5  # bounds a blocked send only: all the input is there
        try:
            control = mod.Entry(_Control(), frozenset(["dummy"]))
            result = mod.serve_connection(conn, _table(mod), control, _fallback, _make_proxy)
        except ProtocolError as exc:
            result = type(exc).__name__
        if result is not None and result not in ("ProtocolError", "MessageTooLarge"):
            raise Finding("serve_connection returned %r" % (result,))
        conn.close()
        return ("served", bytes(hello), result), _read_all(cli)
    finally:
        conn.close()
        cli.close()


def _replies(mod, written, serializer):
    """Split what the server wrote into frames; every one must be a well
    formed handshake frame or response.  Returns the response kinds."""
    reader = mod.FrameReader()
    reader.feed(written)
    frames = []
    while True:
        body = reader.next_message()
        if body is None:
            break
        frames.append(body)
    if len(written) and not frames:
        raise Finding("the server wrote bytes that are not a frame: %r" % written[:64])
    kinds = []
    for body in frames[2:]:  # after the challenge and the WELCOME
        kind, _value = mod.Codec(serializer).decode_response(body)
        kinds.append(kind)
    return kinds


def handshake_target(data, mods):
    """data[0] chooses the scenario:

    0: the bytes as a client's whole answer: the server must refuse them
       (AuthenticationError) or, if they happen to be right, go on serving.
    1: a valid answer whose nonce and hello (up to 80 bytes: the limit is 64)
       come from data, then data's remaining bytes after the handshake: the
       server must serve until ProtocolError or EOF, and every reply it
       sends must be a well-formed response.
    2: the bytes as a server's side: the client must refuse them with
       AuthenticationError or EOFError.
    3: a stdlib client's valid answer (HMAC-MD5 or {sha256}, by data[1]),
       then data's remaining bytes as its challenge and what follows: the
       server must authenticate it or refuse with AuthenticationError or
       EOFError, and decode nothing.
    4: the bytes as a stdlib server's side, to a client that takes stdlib
       servers: it must accept or refuse with AuthenticationError or
       EOFError.
    """
    data = bytes(data)
    if not data:
        return
    mode = data[0] % 5
    serializer = SERIALIZERS[(data[0] // 5) % 2]
    rest = data[1:]
    results = []
    if mode in (0, 1):
        if mode == 0:
            stream = rest
        else:
            nonce = rest[:P.NONCE_SIZE].ljust(P.NONCE_SIZE, b"\0")
            hello_len = rest[P.NONCE_SIZE] % 81 if len(rest) > P.NONCE_SIZE else 0
            hello = rest[P.NONCE_SIZE + 1:P.NONCE_SIZE + 1 + hello_len]
            garbage = rest[P.NONCE_SIZE + 1 + hello_len:]
            answer = P.MAGIC + _digest(b"C", FIXED_MESSAGE) + nonce + hello
            stream = struct.pack("!i", len(answer)) + answer + garbage
        for mod in mods:
            out, written = _server_run(mod, serializer, stream)
            if out[0] == "auth-failed":
                seen = written.endswith(P.FAILURE)  # a wrong digest is told FAILURE
            else:
                seen = _replies(mod, written, serializer)
            results.append((mod.IMPLEMENTATION, (out, seen)))
        agree("server handshake (mode %d, %s)" % (mode, serializer), results)
    elif mode == 3:
        stdlib_server_side(rest, mods)
    elif mode == 4:
        stdlib_client_side(rest, mods)
    else:
        hello = b"h" * (data[0] % 5)
        for mod in mods:
            srv, cli = _pair()
            try:
                srv.sendall(rest)
                srv.shutdown(socket.SHUT_WR)
                conn = mod.Connection(cli, codec=mod.Codec(serializer))
                conn.timeout = 5
                try:
                    mod.answer_challenge(conn, KEY, hello)
                    out = "accepted"
                except (AuthenticationError, EOFError) as exc:
                    out = type(exc).__name__
                conn.close()
            finally:
                srv.close()
                cli.close()
            results.append((mod.IMPLEMENTATION, out))
        agree("client handshake", results)


def stdlib_answer(legacy):
    """A stdlib client's right answer to the fixed challenge."""
    if legacy:
        return hmac.new(KEY, FIXED_MESSAGE, "md5").digest()
    return P.SHA256_PREFIX + hmac.new(KEY, FIXED_MESSAGE, "sha256").digest()


def stdlib_server_side(rest, mods):
    """Mode 3 of handshake_target."""
    from fastmgr import _handshake
    answer = stdlib_answer(bool(rest[:1]) and rest[0] % 2 == 0)
    stream = struct.pack("!i", len(answer)) + answer + rest[1:]
    results = []
    for mod in mods:
        srv, cli = _pair()
        try:
            cli.sendall(stream)
            cli.shutdown(socket.SHUT_WR)
            conn = mod.Connection(srv, codec=mod.Codec("safe"), max_message=MAX_MESSAGE)
            conn.timeout = 5
            try:
                out = _handshake.server_handshake(conn, KEY)[::2]  # (dialect, digest)
            except (AuthenticationError, EOFError) as exc:
                out = type(exc).__name__
            conn.close()
        finally:
            srv.close()
            cli.close()
        results.append((mod.IMPLEMENTATION, out))
    agree("stdlib client's handshake", results)


def stdlib_client_side(rest, mods):
    """Mode 4 of handshake_target."""
    from fastmgr import _handshake
    results = []
    for mod in mods:
        srv, cli = _pair()
        try:
            srv.sendall(rest)
            srv.shutdown(socket.SHUT_WR)
            conn = mod.Connection(cli, codec=mod.Codec("safe"))
            conn.timeout = 5
            try:
                out = _handshake.client_handshake(conn, KEY, stdlib_servers=True)
            except (AuthenticationError, EOFError) as exc:
                out = type(exc).__name__
            conn.close()
        finally:
            srv.close()
            cli.close()
        results.append((mod.IMPLEMENTATION, out))
    agree("handshake with a stdlib server", results)


MAX_MESSAGE = 1 << 20  # the served connection's limit in the handshake target


TARGETS = {"decoder": decoder_target, "handshake": handshake_target}


# ---------------------------------------------------------------------------
# seeds

def seeds():
    """{target: {name: bytes}}: valid inputs for the fuzzers to start from."""
    from fastmgr import _wire_py as w
    codec = w.Codec("safe")
    values = [None, True, False, 0, -1, 2 ** 63, -(2 ** 70), 1.5, float("nan"), "", "héllo\ud800",
              b"\x00\xff", (1, "a"), [1, [2, [3]]], {"k": [1, 2], 3: (None,)}]
    dec = {}
    for i, v in enumerate(values):
        dec["value-%02d" % i] = codec.dumps(v)
    dec["request"] = codec.encode_request(P.REQ_CALL, 1, "echo", (1, "x"), {"k": 2})
    dec["oneway"] = codec.encode_request(P.REQ_ONEWAY, 0, "decref_many", ([1, 2],), None)
    dec["response"] = codec.encode_response(P.RESP_PROXY, ("Echo", 3, ("echo",)))
    dec["frames"] = b"\x00" + w.frame(b"abc") + w.frame(b"") + b"\xff\xff\xff\xff" + b"\0" * 8
    hs = {}
    req = b"".join(w.frame(codec.encode_request(P.REQ_CALL, ident, m, a, None))
                   for ident, m, a in [(1, "echo", (1,)), (1, "boom", ("x",)), (2, "make", ()),
                                       (0, "dummy", ()), (7, "echo", ()), (1, "nope", ())])
    hs["valid-then-calls"] = b"\x01" + b"N" * 32 + b"\x10" + b"h" * 16 + req
    hs["valid-then-garbage"] = b"\x06" + b"N" * 32 + b"\x00" + b"\x00\x00\x00\x05\x01\x00"
    hs["raw-answer"] = b"\x00" + w.frame(b"x" * 64)
    hs["huge-length"] = b"\x00" + b"\x7f\xff\xff\xff"
    hs["4gib-length"] = b"\x00" + b"\xff\xff\xff\xff" + struct.pack("!Q", 4 << 30)
    challenge = P.CHALLENGE + P.SHA256_PREFIX + P.MAGIC + b"n" * 32
    hs["client-side"] = b"\x02" + w.frame(challenge) + w.frame(P.WELCOME + b"d" * 32)
    hs["stdlib-answer-md5"] = b"\x03" + b"\x00" + w.frame(P.CHALLENGE + b"c" * 20) + w.frame(P.WELCOME)
    hs["stdlib-answer-sha256"] = (b"\x03" + b"\x01" + w.frame(P.CHALLENGE + P.SHA256_PREFIX + b"c" * 40)
                                  + w.frame(P.WELCOME))
    hs["stdlib-client-no-challenge"] = b"\x03" + b"\x00" + w.frame(b"c" * 20)
    # the client's own challenge, once nonces are fixed, and a server's right answers
    ours = P.SHA256_PREFIX + P.CLIENT_MAGIC + FIXED_NONCE_BYTE * P.STDLIB_MESSAGE
    md5 = hmac.new(KEY, ours, "md5").digest()
    sha256 = P.SHA256_PREFIX + hmac.new(KEY, ours, "sha256").digest()
    hs["stdlib-server-legacy"] = (b"\x04" + w.frame(P.CHALLENGE + b"s" * 20) + w.frame(P.WELCOME)
                                  + w.frame(md5))
    hs["stdlib-server-modern"] = (b"\x04" + w.frame(P.CHALLENGE + P.SHA256_PREFIX + b"s" * 40)
                                  + w.frame(P.WELCOME) + w.frame(sha256))
    hs["stdlib-server-modern-md5"] = (b"\x04" + w.frame(P.CHALLENGE + P.SHA256_PREFIX + b"s" * 40)
                                      + w.frame(P.WELCOME) + w.frame(md5))
    hs["stdlib-server-reflects"] = b"\x04" + w.frame(P.CHALLENGE + ours)
    return {"decoder": dec, "handshake": hs}
