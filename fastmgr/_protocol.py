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
The server speaks first, in the stdlib's form, so that a client of plain
``multiprocessing.managers`` can answer it too (see "Stdlib peers" below):

1. server -> client: ``CHALLENGE`` + ``M``, where the message
   ``M = SHA256_PREFIX + MAGIC + Ns`` (``Ns``: 32 random bytes).  ``MAGIC``
   (``FASTMGR`` and the protocol version, 8 bytes) tells a fastmgr client
   that a fastmgr server speaks; after ``{sha256}`` a stdlib server sends
   random bytes, which begin with ``FASTMGR`` once in 2**56 connections.
2. client -> server: ``MAGIC`` + ``HMAC-SHA256(key, b"C" + M)`` (32 bytes)
   + a 32-byte random nonce ``Nc`` + an optional client *hello* of at most
   ``MAX_HELLO`` bytes (the manager uses it to send the client's session
   id).  No stdlib answer begins with ``MAGIC`` (theirs are 16 bytes, or
   begin with ``{``).
3. server -> client: ``FAILURE`` if the digest is wrong (the server then
   closes), else ``WELCOME`` + ``HMAC-SHA256(key, b"S" + Nc)``.
The different prefixes ``C``/``S`` stop a peer from reflecting a challenge;
the nonces of both sides, from replaying one.  A client whose ``MAGIC``
carries another version, or a server's, is told so (AuthenticationError).
A server that refuses a client for a reason other than its key sends
``FAILURE`` + a space + the reason in ASCII (say, ``this server requires
TLS``), which a fastmgr client shows; a stdlib client sees a rejection.

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
only then may the writer announce another.  A writer that cannot wait for
the socket part (a connection driven by an event loop) streams such a
message through the ring in several turns instead; the reader cannot tell
the difference and need not.  Each ring: u64 head (consumed); u64 tail
(written), u64 detour_at, u64 detour_len, u32 detour_pending, i32 writer_cpu
(the CPU the writer last wrote from: a hint for spinning, any value is
safe); u32 reader_waiting; u32 writer_waiting: each group on its own
64-byte line, then ``RING_CAPACITY`` bytes of data; see
``_wirelib/fm_ring.h``.
Every handshake frame is at most ``MAX_HANDSHAKE_FRAME`` bytes; a longer or
malformed one, a wrong digest, or a foreign magic raises
``multiprocessing.AuthenticationError`` on the side that sees it.

Stdlib peers
------------
A client or server of plain ``multiprocessing.managers`` (CPython 3.10 to
3.13) speaks the stdlib's handshake and then pickles; a fastmgr server
serves such clients and a fastmgr client uses such servers, telling them
apart in the handshake above (the bytes of fastmgr-to-fastmgr connections
do not change).

The stdlib's handshake: each side answers the other's ``CHALLENGE`` +
message with an HMAC of the message, then hears ``WELCOME`` or
``FAILURE``; the server challenges first, then the client.  Python 3.10
and 3.11 send 20 random bytes and answer with the raw 16-byte HMAC-MD5 of
whatever message comes; 3.12 and later send ``{sha256}`` + 40 random
bytes, answer ``{name}`` + the HMAC of the digest the message names, and
take a raw HMAC-MD5 answer from the older ones.  So:

- *fastmgr server, stdlib client*: the client answers step 1 the stdlib's
  way: ``{sha256}`` + HMAC-SHA256(key, M) from 3.12 on, a raw
  HMAC-MD5(key, M) before.  The server checks it, sends ``WELCOME``,
  answers the client's challenge as the stdlib does (MD5 only for a
  20-byte challenge) and waits for its ``WELCOME``.
- *fastmgr client, stdlib server*: a challenge without ``MAGIC`` is the
  stdlib's; the client answers it as the stdlib does, then challenges the
  server with ``{sha256}`` + ``CLIENT_MAGIC`` + 40 random bytes and accepts
  a raw HMAC-MD5 answer only from a server whose own challenge was the
  20-byte kind.

The stdlib's handshake proves the key the same way in both directions, so
a side that answers any challenge can be made to answer someone else's (an
impostor server sends a client the challenge it got from that client on
another connection, and returns the answer).  No fastmgr process answers a
challenge that begins with ``{name}`` + ``MAGIC_FAMILY``: so fastmgr's own
challenges, to stdlib clients (``MAGIC``) and to stdlib servers
(``CLIENT_MAGIC``), are answered only by a peer that knows the key, or by
a stdlib process that shares it.  Where no stdlib process has the key, an
impostor can no more pass as a stdlib server to a fastmgr client than as a
fastmgr server.

After that, every frame body is a pickle (protocol 4) of the stdlib's
tuples: requests ``(ident, method, args, kwds)``, with ident ``None`` for
the manager's own requests (``create``, ``incref``, ``decref``,
``get_methods``, ``accept_connection``, ``dummy``, ``debug_info``,
``number_of_objects``, ``shutdown``); replies ``('#RETURN', value)``,
``('#ERROR', exception)``, ``('#TRACEBACK', text)``, ``('#PROXY',
(exposed, token))``, ``('#UNSERIALIZABLE', text)``.  As in the stdlib, a
manager request is the only request of its connection, except
``accept_connection``, after which the connection carries method calls.
A fastmgr server counts a stdlib client's references for its process,
where it can tell the process, and frees them when it exits
(``_stdlib_server.py``).  Idents are strings (fastmgr's integer ``i`` is ``'%x' % i``); proxies,
tokens, Namespace and Value cross as the stdlib's classes.  A server or
client whose serializer is not ``pickle`` refuses stdlib peers (they would
unpickle), and so does a server told ``stdlib_clients=False`` or serving
TLS (which the stdlib's client cannot speak: a TLS server gives a client
that sends no TLS hello within ``PLAINTEXT_WAIT`` seconds a challenge and
then ``FAILURE``).

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
0x0c  bytes      none: the message's next out-of-band buffer (kind BUF_BYTES)
0x0d  pickle     u32 k, u32 n, then n bytes of a protocol-5 pickle whose
                 out-of-band buffers are the message's next k buffers
                 (k >= 1, each of kind BUF_BYTEARRAY)
====  =========  ==========================================================

Only objects whose type is *exactly* one of the first ten (not a subclass:
``bool`` is its own tag, an ``IntEnum`` is pickled) are encoded natively,
and the views of a dict (``keys()``, ``values()``, ``items()``: of exactly
those types), which are encoded as a list (``0x09``) of their items (for
``items()``, 2-tuples): what the stdlib's pickler makes of them too.
Everything else, and a str/bytes/container of 2**32 or more bytes/items (but
a bytes value that goes out of band), is pickled.  Native nesting deeper than ``MAX_DEPTH`` makes the whole top-level
value fall back to pickle (so recursive structures survive).
Native decoding gives fresh containers: two references to one list arrive
as two equal lists, where pickle would keep them one.

With the ``safe`` serializer nothing is ever pickled or unpickled: an
object that needs pickle raises ``UnsafeValueError`` on the sending side, and
a pickle tag on the receiving side raises ``ProtocolError``.

Without pickle (``safe``, ``xmlrpclib``) a decoded dict may hold at most
``SAME_HASH_MAX`` keys of one exact hash value; one more raises
``ProtocolError`` before it is inserted.  Keys of equal hash make a dict
probe the same slots again and again: n of them cost n*n/2 probes, and one
message of crafted int keys (``k * (2**61 - 1) + c`` all hash to ``c``)
would hold the server for seconds.  Distinct keys of one hash are rare in
real data.  Not counted: ints of magnitude below the hash modulus
(``sys.hash_info.modulus``; no two of them share a hash, but for -1 and -2),
and str and bytes keys while their hashes are randomised
(``sys.flags.hash_randomization``).

Out-of-band buffers (large values)
----------------------------------
The bytes of a large value do not travel inside the encoding: they follow
it, each in a buffer of its own, so that the sender sends them straight
from the value's memory (one ``sendmsg`` with the rest of the message) and
the receiver reads each straight into the memory the decoded value keeps
(``pickle.loads(..., buffers=...)`` uses it in place).  A body that
carries buffers starts with the byte ``BODY_BUFFERS``, which no other body
starts with (a request or response kind, or a value tag)::

    u8 BODY_BUFFERS | u32 count | count x (u8 kind, u64 size)
    | inline body | buffer 1 | ... | buffer count

The *inline body* is an ordinary body (a request, a response or a value)
whose ``0x0c``/``0x0d`` values take the buffers in order.  The kinds say
what the receiver allocates before it reads a buffer: ``BUF_BYTES`` a
``bytes`` object (a ``0x0c`` value), ``BUF_BYTEARRAY`` a ``bytearray``
handed to the unpickler (a ``0x0d`` value: a numpy array becomes a view of
it, a ``bytearray`` is it, a ``memoryview`` is a view of it, read-only if
the sender's was).

Which bytes go out of band (the same rule in both wires, so that they write
the same bytes):

- a ``bytes`` value at a native place (the top level, or an item of a
  native tuple, list or dict) of ``OOB_MIN`` bytes or more: tag ``0x0c``;
- every buffer the pickler offers (``pickle.PickleBuffer``: the data of a
  contiguous numpy array, or of anything else that pickles with protocol 5
  buffers) of ``OOB_MIN`` bytes or more, and a ``bytearray`` or
  ``memoryview`` of ``OOB_MIN`` bytes or more, at a native place or inside
  a pickled value (a ``bytearray`` only at a native place: pickle writes one
  nested in other objects itself);
- while the message holds fewer than ``MAX_BUFFERS`` buffers: later ones,
  and smaller ones, stay inline (``0x07``, or inside the pickle).

A pickle with no buffer out of band is an ordinary ``0x0b`` value; a body
with no buffer has no ``BODY_BUFFERS`` prefix: small messages are
unchanged.  A reader checks, before it allocates anything: ``1 <= count
<= MAX_BUFFERS``; every kind known; every size at least ``OOB_MIN``; the
prefix, the sizes and at least one inline byte within the body (whose size
the frame header already held to the reader's limit).  So one message
never makes a reader allocate more than the limit.  After decoding, every
buffer must have been taken, by a value of its kind (``ProtocolError``
otherwise).  Under ``safe`` a ``0x0d`` value is refused like ``0x0b``.

A sender refuses a message whose body would exceed its own limit with
``MessageTooLarge`` before a byte of it leaves, so the connection stays
usable (both ends of a manager have the same limit).  A server whose
reply is too large sends, instead, a ``RESP_ERROR`` carrying the
``MessageTooLarge``.

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

PROTOCOL_VERSION = 3  # 3: out-of-band buffers (2: the stdlib's handshake)

#: after the digest name of the server's challenge, and first in the
#: client's answer: the last byte is the protocol version
MAGIC = b"FASTMGR" + bytes([PROTOCOL_VERSION])
MAGIC_FAMILY = MAGIC[:-1]
#: begins a fastmgr client's challenge to a stdlib server: no fastmgr process
#: answers a challenge that begins with MAGIC_FAMILY (see "Stdlib peers")
CLIENT_MAGIC = MAGIC_FAMILY + b"\x00"
#: how protocol 1 servers began their challenge (to name the mismatch)
MAGIC_V1 = b"FMG\x01"
CHALLENGE = b"#CHALLENGE#"
SHA256_PREFIX = b"{sha256}"
NONCE_SIZE = 32
DIGEST_SIZE = 32
MAX_HELLO = 64
MAX_HANDSHAKE_FRAME = 256
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
#: random bytes after ``{sha256}`` in a challenge to a stdlib server (as 3.12's)
STDLIB_MESSAGE = 40
#: the length of a challenge message from Python 3.10 and 3.11 (MD5 only)
STDLIB_LEGACY_MESSAGE = 20
MD5_DIGEST_SIZE = 16
#: seconds a TLS server waits for a client's TLS hello before it takes the
#: client for one without TLS (a stdlib client waits for the server instead)
PLAINTEXT_WAIT = 3.0
#: what a handshake tells (see "Stdlib peers")
DIALECT_FASTMGR = "fastmgr"
DIALECT_STDLIB = "stdlib"
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
#: without pickle, the most keys of one exact hash value a decoded dict may hold
SAME_HASH_MAX = 8
#: a server's bound per connection on unread request bytes plus unsent reply
#: bytes: while a reply waits for its peer to read, the server reads ahead only
#: up to it (one larger message is still received, or sent, whole)
BACKLOG_MAX = 4 << 20

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
T_BYTES_OOB = 0x0C
T_PICKLE_OOB = 0x0D

# out-of-band buffers (see "Out-of-band buffers")
#: the first byte of a body that carries out-of-band buffers
BODY_BUFFERS = 0x80
#: what a buffer becomes: a bytes value, or a bytearray for the unpickler
BUF_BYTES = 0x00
BUF_BYTEARRAY = 0x01
#: the smallest buffer that goes out of band
OOB_MIN = 64 * 1024
#: most buffers in one message
MAX_BUFFERS = 64
#: bytes of a buffer-table entry: u8 kind, u64 size
BUFFER_ENTRY_SIZE = 9
#: bytes before the table: u8 BODY_BUFFERS, u32 count
BUFFER_PREFIX_SIZE = 5

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
