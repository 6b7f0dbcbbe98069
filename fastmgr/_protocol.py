"""The fastmgr wire protocol, written down once.

Both implementations of the wire (the compiled ``fastmgr._wire`` and the
pure-Python ``fastmgr._wire_py``) follow this text byte for byte; the
constants below are the only place the numbers live (``_wire.pxd`` repeats
them as a ``cdef enum``, ``_wire._constants()`` reports them as compiled,
and a test checks that the two agree).

Framing
-------
A message on a stream socket is a *frame*: a 4-byte big-endian signed length
``n`` followed by ``n`` bytes of body (``FRAME_HEADER_SIZE``).  A body longer
than ``MAX_SHORT_FRAME`` (``0x7fffffff``) bytes is sent as the length ``-1``
followed by an 8-byte big-endian unsigned length (``LONG_FRAME_HEADER_SIZE``:
12 bytes in all).  This is the framing of ``multiprocessing.connection``, so
a stdlib ``Connection`` can read our frames and we can read its.  Any other
negative length is a ``ProtocolError``.  A length above the reader's limit
raises ``MessageTooLarge`` before a byte of the body is read or allocated.
A frame always leaves in one write: header and body together.

Handshake (before anything is decoded; ``_handshake.py``, for both wires)
-------------------------------------------------------------------------
1. server -> client: ``MAGIC`` (4 bytes) + a 32-byte random nonce ``Ns``.
2. client -> server: ``HMAC-SHA256(key, b"C" + Ns)`` (32 bytes) + a 32-byte
   random nonce ``Nc`` + an optional client *hello* of at most
   ``MAX_HELLO`` bytes (the manager uses it to send the client's session id).
3. server -> client: ``FAILURE`` if the digest is wrong (the server then
   closes), else ``WELCOME`` + ``HMAC-SHA256(key, b"S" + Nc)``.
The different prefixes ``C``/``S`` stop a peer from reflecting a challenge.

Shared-memory rings (unix sockets only, both ends compiled)
------------------------------------------------------------
A client whose hello ends with ``RING_HELLO`` sends, right after the
handshake, a ``RING_OFFER`` frame carrying (SCM_RIGHTS) a zeroed memfd of
``Connection.ring_size()`` bytes, sealed against shrinking, growing and
further seals; the server answers ``RING_ACCEPT`` (then maps it) or
``RING_DECLINE`` (a pure-Python server, or a file that is not such a
memfd).  After an accept, every byte that would have crossed the socket
crosses two rings in that file instead (client to server first); the
socket carries wake-up bytes (0), and its EOF still means the peer is
gone.  A message too large for a ring (``DETOUR_MIN`` bytes or more in one
send) takes a detour: the writer announces it in the ring (where in the
stream it belongs, and its size), then sends the byte ``DETOUR_MARK`` and
the message on the socket; the reader takes it there once
it has read the ring up to that point, then lowers the announcement, and
only then may the writer announce another.  Each ring: u64 head (consumed); u64 tail
(written), u64 detour_at, u64 detour_len, u32 detour_pending, i32 writer_cpu
(the CPU the writer last wrote from: a hint for spinning, any value is
safe); u32 reader_waiting; u32 writer_waiting: each group on its own
64-byte line, then ``RING_CAPACITY`` bytes of data; see
``_wirelib/fm_ring.h``.
Every handshake frame is at most ``MAX_HANDSHAKE_FRAME`` bytes; a longer or
malformed one, a wrong digest, or a foreign magic raises
``multiprocessing.AuthenticationError`` on the side that sees it.

Values (the codec)
------------------
One tag byte, then the payload; all fixed-width numbers are little-endian.

====  =========  ==========================================================
tag   type       payload
====  =========  ==========================================================
0x00  None       -
0x01  False      -
0x02  True       -
0x03  int        8 bytes, signed (for -2**63 <= i < 2**63)
0x04  int        u32 n, then n bytes: the minimal signed two's complement
0x05  float      8 bytes, IEEE 754 double
0x06  str        u32 n, then n bytes of UTF-8 ("surrogatepass")
0x07  bytes      u32 n, then n bytes
0x08  tuple      u32 n, then n values
0x09  list       u32 n, then n values
0x0a  dict       u32 n, then n (key, value) pairs
0x0b  pickle     u32 n, then n bytes of a protocol-5 pickle
====  =========  ==========================================================

Only objects whose type is *exactly* one of the first ten (not a subclass:
``bool`` is its own tag, an ``IntEnum`` is pickled) are encoded natively.
Everything else, and a str/bytes/container of 2**32 or more bytes/items, is
pickled.  Native nesting deeper than ``MAX_DEPTH`` makes the whole top-level
value fall back to pickle (so recursive structures survive).
Native decoding gives fresh containers: two references to one list arrive
as two equal lists, where pickle would keep them one.

With the ``safe`` serializer nothing is ever pickled or unpickled: an
object that needs pickle raises ``UnsafeValueError`` on the sending side, and
a pickle tag on the receiving side raises ``ProtocolError``.

Envelope
--------
Request body::

    u8 kind (REQ_CALL or REQ_ONEWAY) | u64 ident | value method (str)
    | value args (tuple) | value kwds (dict, or None for no keywords)

The ident is at ``REQUEST_IDENT_OFFSET``, the method at
``REQUEST_HEAD_SIZE``: a server may look up the object before it decodes
anything (the compiled hub does, to find the thread-bound ones).

Ident 0 is the server's control object (create, incref, decref, ...).
A ``REQ_ONEWAY`` request gets no response, even when it fails.

Response body (the value at ``RESPONSE_HEAD_SIZE``)::

    u8 kind | value

=============  ======================================================
RESP_RETURN    the method's result
RESP_ERROR     (exception, traceback text): raised on the caller's side;
               or (name, args, traceback text), see below
RESP_FAILURE   traceback text: raised as ``RemoteError``
RESP_PROXY     (typeid, ident, exposed): the result is a new shared object
=============  ======================================================

When a reply does not encode (a result or an exception that will not
pickle, or any value under the ``safe`` serializer), the server sends
instead: for an exception of a builtin type whose args are all None,
bool, int, float, str or bytes, ``RESP_ERROR`` with ``(name, args,
traceback text)``, ``name`` the type's name, which the client raises as
that builtin exception made from those args (a ``RemoteError`` of the
traceback text if it cannot); for any other exception, its traceback
text as ``RESP_FAILURE``; for any other value, the traceback of the
encoding error as ``RESP_FAILURE``.
"""

PROTOCOL_VERSION = 1

#: first four bytes of the server's challenge; the last byte is the version
MAGIC = b"FMG\x01"
NONCE_SIZE = 32
DIGEST_SIZE = 32
MAX_HELLO = 64
MAX_HANDSHAKE_FRAME = 256
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
RING_HELLO = b"#RING2"  # the ring layout with detours
RING_OFFER = b"#RING-OFFER#"
RING_ACCEPT = b"#RING-OK#"
RING_DECLINE = b"#RING-NO#"

# frames (see Framing)
FRAME_HEADER_SIZE = 4
LONG_FRAME_HEADER_SIZE = 12
MAX_SHORT_FRAME = 0x7FFFFFFF

# envelopes: where the fields of a request and a response begin
REQUEST_IDENT_OFFSET = 1
REQUEST_HEAD_SIZE = 9
RESPONSE_HEAD_SIZE = 1

# shared-memory rings (see Shared-memory rings)
#: bytes of data in one ring
RING_CAPACITY = 262144
#: a message of this many bytes or more in one send takes the detour
DETOUR_MIN = 262144
#: the byte that opens a detour on the socket (wake-up bytes are 0)
DETOUR_MARK = 0x5A

#: default ceiling for one message body after authentication (bytes)
DEFAULT_MAX_MESSAGE = 1 << 30
#: frames up to this size are sent by copying header and body into one buffer;
#: larger ones go out with one ``sendmsg`` of two buffers
COPY_THRESHOLD = 64 * 1024
#: deepest native nesting before the value is pickled whole
MAX_DEPTH = 64
#: the largest spin budget a wait may have, µs (not a wire format, but a
#: limit both wires enforce alike: set_spin(), FASTMGR_SPIN_US)
MAX_SPIN_US = 10000

# value tags
T_NONE = 0x00
T_FALSE = 0x01
T_TRUE = 0x02
T_INT64 = 0x03
T_BIGINT = 0x04
T_FLOAT = 0x05
T_STR = 0x06
T_BYTES = 0x07
T_TUPLE = 0x08
T_LIST = 0x09
T_DICT = 0x0A
T_PICKLE = 0x0B

# request kinds
REQ_CALL = 0x01
REQ_ONEWAY = 0x02

# response kinds
RESP_RETURN = 0x10
RESP_ERROR = 0x11
RESP_FAILURE = 0x12
RESP_PROXY = 0x13

PICKLE_PROTOCOL = 5

#: serializer names a manager accepts; "xmlrpclib" is the stdlib's name for
#: its no-pickle serializer, which also turns tuples into lists
SERIALIZERS = ("pickle", "safe", "xmlrpclib")

#: names every wire implementation must provide (see tests/test_wire_api.py)
WIRE_API = (
    "IMPLEMENTATION",
    "Codec",
    "FrameReader",
    "Connection",
    "Pipeline",
    "Pending",
    "frame",
    "deliver_challenge",
    "answer_challenge",
    "serve_connection",
    "Entry",
    "Hub",
    "set_spin",
    "get_spin",
)
