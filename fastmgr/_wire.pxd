# Declarations of the compiled wire: its constants, the spin state, and the
# layout of every cdef class (the code is in _wire.pyx and the files it
# includes; see the map in its docstring).

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from fastmgr._wirelib.chelpers cimport fm_key_cache, fm_ring
from fastmgr._wirelib.posix cimport epoll_event, iovec


cdef enum:
    # value tags (_protocol.T_*)
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
    # envelope kinds (_protocol.REQ_* / RESP_*)
    REQ_CALL = 0x01
    REQ_ONEWAY = 0x02
    RESP_RETURN = 0x10
    RESP_ERROR = 0x11
    RESP_FAILURE = 0x12
    RESP_PROXY = 0x13
    # frames and envelopes (_protocol.py)
    FRAME_HEADER_SIZE = 4           # the length, i32 big-endian
    LONG_FRAME_HEADER_SIZE = 12     # -1, then the length, u64 big-endian
    MAX_SHORT_FRAME = 0x7FFFFFFF    # the longest body a 4-byte header announces
    REQUEST_IDENT_OFFSET = 1        # the u64 ident, after the kind byte
    REQUEST_HEAD_SIZE = 9           # kind and ident: the method name follows
    RESPONSE_HEAD_SIZE = 1          # the kind: the value follows
    # out-of-band buffers (_protocol.py, "Out-of-band buffers")
    BODY_BUFFERS = 0x80             # the first byte of a body that carries them
    BUF_BYTES = 0x00                # a buffer that becomes a bytes value
    BUF_BYTEARRAY = 0x01            # a buffer that becomes a bytearray, for the unpickler
    OOB_MIN = 65536                 # the smallest buffer that goes out of band
    MAX_BUFFERS = 64                # most buffers in one message
    BUFFER_PREFIX_SIZE = 5          # BODY_BUFFERS, then the u32 count
    BUFFER_ENTRY_SIZE = 9           # an entry of the table: u8 kind, u64 size
    # the largest spin budget (µs); see FM_STALE_NS (_protocol.MAX_SPIN_US)
    MAX_SPIN_US = 10000
    # a message of this many bytes or more takes the detour through the
    # socket (see fm_ring.h): a ring would carry it in several turns, and
    # each turn that finds the other side asleep costs a wake-up; the
    # kernel's socket buffer hands it over as the floor does
    # (_protocol.DETOUR_MIN)
    DETOUR_MIN = 262144
    # the byte that opens a detour on the socket; wake-up bytes are 0
    # (_protocol.DETOUR_MARK)
    DETOUR_MARK = 0x5A

    # encoder result: the value nests too deeply and must be pickled whole
    TOO_DEEP = 1
    # the segments one send takes at most: inline bytes, and the
    # out-of-band buffers of one frame (every frame with buffers is sent
    # before another is queued: see WriteBuffer), around them
    MAX_SEGMENTS = 2 * 64 + 2
    # a received buffer this large gets huge pages where the kernel has
    # them transparently: faulting in 4 KiB pages one by one costs more
    # than copying them (numpy asks the same for its arrays from 4 MiB)
    HUGE_BUFFER_MIN = 4194304
    # the first part of a large message to a sleeping reader, after which
    # the reader is woken (_ring_send_iov)
    RING_FIRST_PUT = 32768

    # -- the spin policy (spin_policy.pxi) --
    # what a spin came to (_adapt_spin): none, caught the message, ran out
    # of budget, or was cut short by a long yield
    SPIN_OFF = 0
    SPIN_PAID = 1
    SPIN_MISSED = 2
    SPIN_LONG_YIELD = 3
    # fm_slot_enter(): a slot taken while fewer others spin than there are
    # CPUs (a CPU may be free to move to, see _move_apart; a writer
    # waiting for room begins calm, see _ring_spin_for_room), or one taken
    # while as many or more spin
    SLOT_UNCROWDED = 1
    SLOT_CROWDED = 2
    # slots per CPU: a yielding spinner's turn costs about 1 µs, so this
    # many go round well within a spin budget
    SLOTS_PER_CPU = 8
    # machine-wide client spinner slots
    MAX_SLOTS = 64
    # a large message's turns through a ring (a writer waiting for room,
    # a reader holding half a frame) spin this many times the budget: the
    # other side is busy copying up to a ring's worth, which takes longer
    # than a small message's answer
    BULK_SPINS = 4
    # bytes sent per µs added to the spin that waits for the answer
    SPIN_EXTRA_BYTES = 8192
    SPIN_EXTRA_MAX_US = 1000
    # spins between two looks at the CPUs this process may use
    SPINS_PER_REFRESH = 256
    # blocking waits before spinning is tried again, at first and at most
    PROBE_MIN = 64
    PROBE_MAX = 4096

    # -- the hub (hub.pxi) --
    MAX_EVENTS = 64
    # bytes a hub reads of a large frame before it knows whether its body
    # carries out-of-band buffers (a whole table, and the request's ident)
    HUB_PEEK = 4096
    # with rings to watch, the spinning loop asks epoll (for sockets and
    # new connections) only every this many turns
    RING_TURNS_PER_EPOLL = 8


# What the bytes at the start of a connection's read buffer hold (framing.pxi).
cdef enum FrameState:
    FRAME_PARTIAL       # more bytes must come before the frame is whole
    FRAME_WHOLE         # header and body are all in
    FRAME_TOO_LARGE     # the header announces more than the limit
    FRAME_MALFORMED     # the header's length is negative (and not the long form's -1)
    FRAME_NEEDS_CARE    # for a hub: too large, malformed or long: _recv_frame() decides
    FRAME_BUFFERS       # for a hub: the head of a larger frame whose body carries
                        # out-of-band buffers, up to its request's ident (the rest is
                        # read straight into them, _recv_message)


# _hub_serve_ready() outcomes (hub.pxi)
cdef enum ServeOutcome:
    SERVED              # go on with the next ready connection
    REPLACED            # this thread was replaced mid-call: it now owns the connection
    OWN_THREAD          # the connection needs a thread of its own from now on


# How a waiting thread's spin budget adapts (spin_policy.pxi).
cdef struct SpinState:
    int budget_us               # the budget in force, µs (at most the owner's spin_us)
    int blocking_waits          # blocking waits since the budget reached zero
    int waits_before_retry      # blocking waits before spinning is tried again
    double lost_s               # seconds lost in long yields, decayed to lost_at
    double lost_at              # when lost_s was last brought up to date
    unsigned int spins          # spins so far
    bint calm                   # the spin in progress began with a calm phase
    double late_share           # share of recent calm spins that caught only after a
                                # yield ran another thread
    unsigned int move_at        # spins before the next move to another CPU (_move_apart)
    unsigned int move_gap       # spins between two moves


@cython.final
cdef class WriteBuffer:
    cdef unsigned char* buf     # owned allocation: the inline bytes
    cdef Py_ssize_t length      # inline bytes written
    cdef Py_ssize_t capacity    # bytes allocated
    cdef list oob               # out-of-band segments: [(inline offset, bytes or flat
                                # memoryview)], offsets ascending; they keep the memory alive
    cdef Py_ssize_t noob        # len(oob)
    cdef Py_ssize_t oob_bytes   # total size of the out-of-band segments
    cdef Py_ssize_t body_oob    # noob when the open body began

    cdef inline void reset(self) noexcept
    cdef inline Py_ssize_t total(self) noexcept
    cdef int _grow(self, Py_ssize_t extra) except -1
    cdef inline int ensure(self, Py_ssize_t extra) except -1
    cdef inline int write_u8(self, uint8_t v) except -1
    cdef inline int write_tag_u32(self, uint8_t tag, uint32_t v) except -1
    cdef inline int write_tag_u64(self, uint8_t tag, uint64_t v) except -1
    cdef inline int write_raw(self, const void* data, Py_ssize_t n) except -1
    cdef inline Py_ssize_t buffer_room(self) noexcept
    cdef int add_buffer(self, object data) except -1
    cdef int drop_buffers(self, Py_ssize_t count) except -1
    cdef inline Py_ssize_t begin_body(self) noexcept
    cdef Py_ssize_t end_body(self, Py_ssize_t start) except -1
    cdef inline Py_ssize_t begin_frame(self) except -1
    cdef int end_frame(self, Py_ssize_t start, Py_ssize_t limit) except -1
    cdef bytes joined(self)


cdef class _Taken


@cython.final
cdef class Codec:
    cdef readonly str serializer  # one of _protocol.SERIALIZERS
    cdef bint may_pickle        # "pickle": types without a tag are pickled
    cdef bint tuples_as_lists   # "xmlrpclib": decode T_TUPLE as list
    cdef fm_key_cache keys      # the keys of small dicts decoded (fm_codec.h)

    cdef int _pickle(self, WriteBuffer buf, object obj) except -1
    cdef int _encode(self, WriteBuffer buf, object obj, int depth) except -1
    cdef int _encode_container(self, WriteBuffer buf, object obj, type t, int depth) except -1
    cdef int _encode_items(self, WriteBuffer buf, object obj, type t, Py_ssize_t n,
                           int depth) except -1
    cdef int _encode_dict(self, WriteBuffer buf, dict obj, Py_ssize_t n, int depth) except -1
    cdef int encode_top(self, WriteBuffer buf, object obj) except -1
    cdef int encode_request_into(self, WriteBuffer buf, int kind, uint64_t ident,
                                 object method, object args, object kwds) except -1
    cdef int encode_response_into(self, WriteBuffer buf, int kind, object value) except -1
    cdef object _decode(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, int depth,
                        _Taken taken)
    cdef object _decode_bytes(self, const unsigned char* p, Py_ssize_t at, uint8_t tag,
                              uint64_t length, uint64_t buffers, _Taken taken)
    cdef inline object _item(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                             int depth, _Taken taken)
    cdef inline object _key(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                            int depth, _Taken taken)
    cdef list _decode_list(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                           int depth, _Taken taken, Py_ssize_t count)
    cdef tuple _decode_tuple(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                             int depth, _Taken taken, Py_ssize_t count)
    cdef dict _decode_dict(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                           int depth, _Taken taken, Py_ssize_t count)
    cdef dict _decode_dict_counted(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                                   Py_ssize_t count, int depth, _Taken taken)
    cdef object decode_all(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                           _Taken taken)
    cdef tuple decode_request_at(self, const unsigned char* p, Py_ssize_t n, _Taken taken)
    cdef tuple decode_response_at(self, const unsigned char* p, Py_ssize_t n, _Taken taken)


# The out-of-band buffers of a body being decoded (outofband.pxi).
@cython.final
cdef class _Taken:
    cdef list buffers           # bytes (BUF_BYTES) or bytearray objects, in the table's order
    cdef Py_ssize_t next        # the index of the next buffer a value takes

    cdef int check_all_taken(self) except -1


@cython.final
cdef class FrameReader:
    cdef bytearray data         # bytes fed and not yet taken out
    cdef Py_ssize_t max_message # the largest body accepted


# The behaviour of a Connection is spread by concern over module-level
# functions that take it first: connection.pxi (its Python surface, the
# read buffer, sending), socket_path.pxi, rings.pxi, detours.pxi, tls.pxi,
# loop_path.pxi (driven by an event loop).
@cython.final
cdef class Connection:
    cdef object sock                # the socket.socket we own
    cdef int fd                     # its descriptor, -1 once closed
    cdef readonly Codec codec       # encodes and decodes values and envelopes
    cdef public Py_ssize_t max_message  # the largest frame body accepted
    cdef double _timeout            # seconds; NO_TIMEOUT waits forever
    cdef int _spin_us               # spin budget before blocking, µs
    cdef SpinState spin             # how the budget in force adapts
    cdef bint moves                 # a server thread of its own: may move off its client's CPU
    cdef int spin_extra             # µs added to the next spin: the peer takes in a large message
    cdef WriteBuffer wbuf           # outgoing frames, sent by _send_buffer()
    cdef bint pyio                  # a TLS socket: read and write through its methods
    cdef unsigned char* rbuf        # incoming bytes
    cdef Py_ssize_t rcap            # rbuf's size
    cdef Py_ssize_t rstart          # first unconsumed byte in rbuf
    cdef Py_ssize_t rend            # end of received bytes in rbuf
    cdef void* shm                  # the rings' mapping (attach_ring), or NULL
    cdef fm_ring* rx                # the ring we read from, or NULL
    cdef fm_ring* tx                # the ring we write to, or NULL
    cdef uint64_t rx_head           # our position in rx (kept privately)
    cdef uint64_t tx_tail           # our position in tx (kept privately)
    cdef uint64_t rx_detour_left    # bytes of an open detour (its marker read) still on the socket
    cdef bint tx_detouring          # sending a detour: wake-up bytes wait until it is through
    cdef bint bell_owed             # a wake-up byte held back by tx_detouring
    cdef Py_ssize_t loop_sent       # bytes of wbuf an event loop's loop_send() has sent
    cdef _Taken loop_taken          # the out-of-band buffers of the frame at rstart, which
                                    # loop_receive() fills straight from the stream; or None
    cdef Py_ssize_t loop_head       # that frame's header and buffer table (its inline body follows)
    cdef Py_ssize_t loop_inline     # the size of that inline body, all in rbuf
    cdef Py_ssize_t loop_filled     # the bytes of its buffers come so far
    cdef public Py_ssize_t backlog_max  # served by a server: most unread request bytes plus
                                    # unsent reply bytes a waiting send takes in (0: no bound)
    cdef double nap_s               # the next _ring_nap(), seconds (0: none in a row)


cdef class Pipeline


@cython.final
cdef class Pending:
    cdef Pipeline pipe      # the pipeline that sent the call
    cdef int kind           # 0 until the reply has come
    cdef object value       # the reply's value
    cdef bint seen          # result() was called


@cython.final
cdef class Pipeline:
    cdef readonly Connection conn   # the connection the calls go through
    cdef readonly object resolve    # (kind, value) -> result or raise, for non-RETURN replies
    cdef list waiting               # Pending objects whose replies are not read yet
    cdef Py_ssize_t head            # waiting[head] is the oldest unread
    cdef Py_ssize_t queued          # requests in conn.wbuf, not sent yet
    cdef Py_ssize_t window          # most replies outstanding
    cdef list failed                # Pending objects whose reply is an error

    cdef int _flush(self) except -1
    cdef int _read_one(self) except -1
    cdef int _wait_for(self, Pending p) except -1


@cython.final
cdef class Entry:
    cdef readonly object obj                # the shared object
    cdef readonly object exposed            # the method names callers may call (a set)
    cdef readonly object method_to_typeid   # {method: typeid}: results shared in turn; or None
    cdef readonly bint thread_bound         # its calls need the connection's own thread (see Hub)


@cython.final
cdef class _Reply:
    cdef object value       # the value of the reply _dispatch() made


@cython.final
cdef class _Served:
    cdef Connection conn        # the connection
    cdef Entry control          # its ident 0
    cdef object make_proxy      # make_proxy(typeid, result) for its calls
    cdef object finished        # finished(exc or None), once, when serving ends
    cdef uint64_t token         # its key in Hub.served and its epoll events
    cdef bint ended             # serving it has ended
    cdef _Reply reply           # its reply in the making, reused
    cdef int ring_at            # its place in the hub's ring table, -1 if none
    cdef long drained           # the hub's sleeps when its socket was last read


# The behaviour of a Hub is spread over hub.pxi (the loop and serving),
# hub_wait.pxi (how the loop waits, and its table of rings) and
# watchdog.pxi, as module-level functions that take it first.
@cython.final
cdef class Hub:
    cdef int epfd                   # the epoll instance of every served socket
    cdef int wakefd                 # close() writes here; token 0
    cdef int parkfd                 # the watchdog sleeps on this while the hub is idle
    cdef dict table                 # the server's object table: ident -> Entry
    cdef object fallback            # answers a method not exposed (see serve_connection)
    cdef object start_thread        # start_thread(fn, *args): run fn in a new daemon thread
    cdef dict served                # token -> _Served
    cdef uint64_t tokens            # the last token given
    cdef bint partial               # a frame was left half in: the next wait spins its whole budget
    cdef public int spin_us         # spin budget of the loop's waits, µs
    cdef SpinState spin             # how the loop's budget in force adapts
    cdef long generation            # bumped each time a stuck loop thread is replaced
    cdef long call_seq              # bumped for every connection the loop serves
    cdef long busy                  # 1 while the loop serves a connection
    cdef long blocked               # 1 while the loop sleeps in epoll_wait
    cdef long parked                # 1 while the watchdog sleeps on parkfd
    cdef bint loop_missing          # a replacement loop thread could not be started
    cdef _Served current            # the connection being served
    cdef _Served last               # the connection served last
    cdef object loop_tid            # native id of the loop thread
    cdef bint started               # the loop thread was started
    cdef bint watching              # the watchdog thread was started
    cdef readonly bint closed       # close() was called
    cdef readonly long replacements # stuck loop threads replaced
    cdef readonly long handovers    # connections given a thread of their own
    # connections with shared-memory rings, which the loop looks at itself
    # (spinning, and once more before it sleeps): changed only by the loop
    # thread, or by the watchdog while no loop thread runs the loop
    cdef fm_ring** ring_rx          # each one's rx ring
    cdef uint64_t** ring_head       # where each one's reader is (its rx_head)
    cdef uint64_t* ring_token       # each one's token
    cdef int nrings                 # rings in the table
    cdef int ring_cap               # rings the arrays hold
    cdef long sleeps                # times the loop raised the rings' flags to sleep
