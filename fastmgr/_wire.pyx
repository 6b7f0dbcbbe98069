# cython: language_level=3, embedsignature=True
"""The compiled hot path of fastmgr: framing, codec, handshake, serve loop.

The byte formats are specified in ``_protocol.py``; ``_wire_py.py`` is the
readable twin of this module and the tests hold the two to the same bytes.

Waiting for a message spins first (a non-blocking ``recv`` in a loop, GIL
released) for a bounded, adaptive budget, then blocks (in ``recv`` itself,
or in ``poll`` when there is a deadline).  The server's ``Hub`` waits the
same way for all its connections at once, in ``epoll``.  Waking a
sleeping thread on another CPU costs tens of microseconds on a VM, far more
than all of this module's work per call, so a reply that arrives within the
spin window is the difference between ~5 us and ~40 us a call.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EAGAIN, EINTR, errno
from libc.math cimport exp
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

import os as _os
import socket as _socket
import traceback as _traceback

from . import _pickling
from ._handshake import answer_challenge, deliver_challenge
from ._protocol import COPY_THRESHOLD, DEFAULT_MAX_MESSAGE, MAX_DEPTH, SERIALIZERS
from ._settings import SPIN_US, SPIN_YIELD
from .errors import MessageTooLarge, ProtocolError, UnsafeValueError

IMPLEMENTATION = "compiled"

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    enum: POLLIN
    enum: POLLOUT

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags)
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    enum: MSG_DONTWAIT
    enum: MSG_NOSIGNAL
    enum: MSG_PEEK

cdef extern from "<sched.h>" nogil:
    int sched_yield()
    int sched_getcpu()

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum: EPOLLIN
    enum: EPOLL_CTL_ADD
    enum: EPOLL_CTL_DEL
    enum: EPOLL_CLOEXEC

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum: EFD_CLOEXEC
    enum: EFD_NONBLOCK

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)
    ssize_t c_read "read"(int fd, void* buf, size_t n)
    ssize_t c_write "write"(int fd, const void* buf, size_t n)
    int usleep(unsigned int usec)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum: CLOCK_MONOTONIC

cdef extern from *:
    """
    #include <stdint.h>
    static inline void fm_put_u32le(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
        p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
    }
    static inline void fm_put_u64le(unsigned char *p, uint64_t v) {
        fm_put_u32le(p, (uint32_t)v); fm_put_u32le(p + 4, (uint32_t)(v >> 32));
    }
    static inline uint32_t fm_get_u32le(const unsigned char *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    static inline uint64_t fm_get_u64le(const unsigned char *p) {
        return (uint64_t)fm_get_u32le(p) | ((uint64_t)fm_get_u32le(p + 4) << 32);
    }
    static inline void fm_put_i32be(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
        p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
    }
    static inline uint64_t fm_get_u64be(const unsigned char *p) {
        uint64_t v = 0; int i;
        for (i = 0; i < 8; i++) v = (v << 8) | p[i];
        return v;
    }
    static inline int32_t fm_get_i32be(const unsigned char *p) {
        return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
    }
    static inline uint64_t fm_double_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
    static inline double fm_bits_double(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
    /* threads of this process spinning right now, and how many may */
    static int fm_spinners = 0;
    static int fm_max_spinners = 1;
    static inline int fm_spin_enter(void) {
        if (__atomic_add_fetch(&fm_spinners, 1, __ATOMIC_RELAXED) > fm_max_spinners) {
            __atomic_sub_fetch(&fm_spinners, 1, __ATOMIC_RELAXED);
            return 0;
        }
        return 1;
    }
    static inline void fm_spin_leave(void) { __atomic_sub_fetch(&fm_spinners, 1, __ATOMIC_RELAXED); }
    /* Spinners are counted across processes, in slots of a small shared
       mapping (one per user): each slot holds the monotonic time its
       spinner began, 0 when free; a slot older than FM_STALE_NS belonged to
       a process that died mid-spin and may be taken.  fm_slot_enter()
       returns 0 (no slot free), 1 (fewer other spinners than CPUs) or 2
       (as many or more).  Without the mapping, spinners are counted per
       process. */
    #define FM_STALE_NS 50000000LL
    static int64_t *fm_slots = NULL;
    static int fm_slot_max = 0;
    static __thread int fm_slot = -1;
    static __thread int64_t fm_slot_stamp = 0;
    static inline int64_t fm_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    static inline int fm_slot_enter(void) {
        int i, busy = 0;
        int64_t now, v;
        if (fm_slots == NULL) return fm_spin_enter();
        now = fm_now_ns();
        fm_slot = -1;
        for (i = 0; i < fm_slot_max; i++) {
            v = __atomic_load_n(&fm_slots[i], __ATOMIC_RELAXED);
            if (v != 0 && now - v <= FM_STALE_NS)
                busy++;
            else if (fm_slot < 0 &&
                     __atomic_compare_exchange_n(&fm_slots[i], &v, now, 0,
                                                 __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                fm_slot = i;
                fm_slot_stamp = now;
            }
        }
        if (fm_slot < 0) return 0;
        return busy < fm_max_spinners ? 1 : 2;
    }
    /* Move the calling thread off the CPU it runs on, to another it may
       use, without changing the CPUs it may use: narrow its affinity (the
       kernel migrates it at once), then put the old mask back.  Returns
       whether it moved. */
    #include <sched.h>
    static int fm_move_off_cpu(void) {
        cpu_set_t mask, others;
        int me = sched_getcpu();
        if (me < 0 || sched_getaffinity(0, sizeof mask, &mask) != 0) return 0;
        if (CPU_COUNT(&mask) < 2 || !CPU_ISSET(me, &mask)) return 0;
        others = mask;
        CPU_CLR(me, &others);
        if (sched_setaffinity(0, sizeof others, &others) != 0) return 0;
        sched_setaffinity(0, sizeof mask, &mask);
        return 1;
    }
    /* After the slots, a counter per CPU (by CPU number modulo FM_CPUS, a
       cache line apart) of the messages our spinners caught there: a
       yield that kept the CPU from us for long gave it to our own peers
       if that count grew meanwhile, and to a busy process of somebody
       else's if it did not.  Without the mapping, the counters are the
       process's own. */
    #define FM_CPUS 64
    static uint64_t fm_own_counts[FM_CPUS * 8];
    static uint64_t *fm_counts = fm_own_counts;
    static inline uint64_t *fm_cpu_count(int cpu) {
        return &fm_counts[(cpu < 0 ? 0 : cpu % FM_CPUS) * 8];
    }
    static inline uint64_t fm_count_read(uint64_t *count) {
        return __atomic_load_n(count, __ATOMIC_RELAXED);
    }
    static inline void fm_count_catch(void) {
        __atomic_add_fetch(fm_cpu_count(sched_getcpu()), 1, __ATOMIC_RELAXED);
    }
    static inline void fm_slot_leave(void) {
        int64_t v = fm_slot_stamp;
        if (fm_slots == NULL) { fm_spin_leave(); return; }
        __atomic_compare_exchange_n(&fm_slots[fm_slot], &v, 0, 0,
                                    __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    }
    /* A shared-memory ring: one direction of a connection between two
       processes on one machine (see Connection.attach_ring).  Positions
       count bytes ever written (tail) and consumed (head); each side keeps
       its own position privately and only publishes it, so a peer that
       scribbles on the mapping can garble bytes (which are decoded as
       untrusted anyway) or make positions impossible (reported as -1), but
       never make us read or write outside the data area.  A side about
       to sleep sets its *_waiting flag, then looks once more; a side that
       moves its position then looks at the other's flag and, if set,
       writes a byte to the socket beside the ring to wake it.

       A message too large for the ring takes a detour through the socket:
       the writer announces it (detour_at: the ring position where it
       belongs in the stream, detour_len: its size, then detour_pending),
       then sends a marker byte and the message on the socket.  The
       reader reads the ring up to detour_at only, takes the detour from
       the socket (after any wake-up bytes before its marker), then
       lowers detour_pending; the writer announces no other detour until
       then.  The fields share the tail's cache line, which the reader
       loads anyway; so does writer_cpu, the CPU the writer last wrote
       from, which tells a reader whose message came only after it yielded
       whether the writer ran on its CPU meanwhile (fm_ring_from_here; a
       hint for the spin policy, nothing more). */
    #define FM_RING_CAP 262144u
    typedef struct {
        uint64_t head; char pad0[56];
        uint64_t tail; uint64_t detour_at; uint64_t detour_len;
        uint32_t detour_pending; int32_t writer_cpu; char pad1[32];
        uint32_t reader_waiting; char pad2[60];
        uint32_t writer_waiting; char pad3[60];
        unsigned char data[FM_RING_CAP];
    } fm_ring;
    static inline int fm_detour_pending(fm_ring *r) {
        return __atomic_load_n(&r->detour_pending, __ATOMIC_ACQUIRE) != 0;
    }
    /* bytes the reader may take from the ring: up to a pending detour's
       start; -1 if the positions are impossible */
    static inline int64_t fm_ring_readable(fm_ring *r, uint64_t head) {
        uint64_t n = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) - head, d;
        if (n > FM_RING_CAP) return -1;
        if (fm_detour_pending(r)) {
            d = __atomic_load_n(&r->detour_at, __ATOMIC_RELAXED) - head;
            if (d > FM_RING_CAP) return -1;
            if (d < n) n = d;
        }
        return (int64_t)n;
    }
    /* whether the reader, at head, is at a pending detour's start */
    static inline int fm_detour_here(fm_ring *r, uint64_t head) {
        return fm_detour_pending(r) && __atomic_load_n(&r->detour_at, __ATOMIC_RELAXED) == head;
    }
    /* whether the reader has something to do: bytes, or a detour to take */
    static inline int fm_rx_ready(fm_ring *r, uint64_t head) {
        return fm_ring_readable(r, head) != 0 || fm_detour_here(r, head);
    }
    static inline uint64_t fm_detour_len(fm_ring *r) {
        return __atomic_load_n(&r->detour_len, __ATOMIC_RELAXED);
    }
    static inline void fm_detour_announce(fm_ring *r, uint64_t at, uint64_t len) {
        __atomic_store_n(&r->detour_at, at, __ATOMIC_RELAXED);
        __atomic_store_n(&r->detour_len, len, __ATOMIC_RELAXED);
        __atomic_store_n(&r->detour_pending, 1, __ATOMIC_RELEASE);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    static inline void fm_detour_done(fm_ring *r) {
        __atomic_store_n(&r->detour_pending, 0, __ATOMIC_RELEASE);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    static inline int64_t fm_ring_writable(fm_ring *r, uint64_t tail) {
        uint64_t used = tail - __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        return used > FM_RING_CAP ? -1 : (int64_t)(FM_RING_CAP - used);
    }
    static inline void fm_ring_take(fm_ring *r, uint64_t *head, unsigned char *dst, size_t n) {
        size_t at = (size_t)(*head % FM_RING_CAP), first = FM_RING_CAP - at;
        if (first > n) first = n;
        memcpy(dst, r->data + at, first);
        memcpy(dst + first, r->data, n - first);
        *head += n;
        __atomic_store_n(&r->head, *head, __ATOMIC_RELEASE);
    }
    static inline void fm_ring_put(fm_ring *r, uint64_t *tail, const unsigned char *src, size_t n) {
        size_t at = (size_t)(*tail % FM_RING_CAP), first = FM_RING_CAP - at;
        if (first > n) first = n;
        memcpy(r->data + at, src, first);
        memcpy(r->data, src + first, n - first);
        *tail += n;
        __atomic_store_n(&r->writer_cpu, sched_getcpu(), __ATOMIC_RELAXED);
        __atomic_store_n(&r->tail, *tail, __ATOMIC_RELEASE);
    }
    static inline int fm_ring_from_here(fm_ring *r) {
        return __atomic_load_n(&r->writer_cpu, __ATOMIC_RELAXED) == sched_getcpu();
    }
    static inline void fm_flag_set(uint32_t *flag, uint32_t v) {
        __atomic_store_n(flag, v, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    static inline int fm_flag_seen(uint32_t *flag) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        return __atomic_load_n(flag, __ATOMIC_RELAXED) != 0;
    }
    /* flags shared between a hub's loop thread and its watchdog */
    static inline long fm_load(long *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void fm_store(long *p, long v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    #include <errno.h>
    static inline int fm_again(int e) { return e == EAGAIN || e == EWOULDBLOCK; }
    static inline void fm_set_errno(int e) { errno = e; }
    """
    void fm_put_u32le(unsigned char* p, uint32_t v) nogil
    void fm_put_u64le(unsigned char* p, uint64_t v) nogil
    uint32_t fm_get_u32le(const unsigned char* p) nogil
    uint64_t fm_get_u64le(const unsigned char* p) nogil
    void fm_put_i32be(unsigned char* p, uint32_t v) nogil
    uint64_t fm_get_u64be(const unsigned char* p) nogil
    int fm_get_i32be(const unsigned char* p) nogil
    uint64_t fm_double_bits(double d) nogil
    double fm_bits_double(uint64_t u) nogil
    int fm_max_spinners
    int fm_spin_enter() nogil
    void fm_spin_leave() nogil
    int64_t* fm_slots
    int fm_slot_max
    int fm_slot_enter() nogil
    void fm_slot_leave() nogil
    int fm_move_off_cpu() nogil
    enum: FM_CPUS
    uint64_t* fm_counts
    uint64_t* fm_cpu_count(int cpu) nogil
    uint64_t fm_count_read(uint64_t* count) nogil
    void fm_count_catch() nogil
    bint fm_again(int e) nogil
    ctypedef struct fm_ring:
        uint32_t reader_waiting
        uint32_t writer_waiting
    unsigned int FM_RING_CAP
    int64_t fm_ring_readable(fm_ring* r, uint64_t head) nogil
    bint fm_detour_pending(fm_ring* r) nogil
    bint fm_detour_here(fm_ring* r, uint64_t head) nogil
    bint fm_rx_ready(fm_ring* r, uint64_t head) nogil
    bint fm_ring_from_here(fm_ring* r) nogil
    uint64_t fm_detour_len(fm_ring* r) nogil
    void fm_detour_announce(fm_ring* r, uint64_t at, uint64_t length) nogil
    void fm_detour_done(fm_ring* r) nogil
    int64_t fm_ring_writable(fm_ring* r, uint64_t tail) nogil
    void fm_ring_take(fm_ring* r, uint64_t* head, unsigned char* dst, size_t n) nogil
    void fm_ring_put(fm_ring* r, uint64_t* tail, const unsigned char* src, size_t n) nogil
    void fm_flag_set(uint32_t* flag, uint32_t v) nogil
    int fm_flag_seen(uint32_t* flag) nogil
    long fm_load(long* p) nogil
    void fm_store(long* p, long v) nogil
    void fm_set_errno(int e) nogil


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
    # envelope kinds (_protocol.REQ_* / RESP_*)
    REQ_CALL = 0x01
    REQ_ONEWAY = 0x02
    RESP_RETURN = 0x10
    RESP_ERROR = 0x11
    RESP_FAILURE = 0x12
    RESP_PROXY = 0x13
    # encoder result: the value nests too deeply and must be pickled whole
    TOO_DEEP = 1
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
    SLOT_FULL = 1
    SLOT_CROWDED = 2
    # slots per CPU: a yielding spinner's turn costs about 1 µs, so this
    # many go round well within a spin budget
    SLOTS_PER_CPU = 8
    # the first part of a large message to a sleeping reader, after which
    # the reader is woken (_ring_send_iov)
    RING_FIRST_PUT = 32768
    # a message of this many bytes or more takes the detour through the
    # socket (see fm_ring): a ring would carry it in several turns, and
    # each turn that finds the other side asleep costs a wake-up; the
    # kernel's socket buffer hands it over as the floor does
    DETOUR_MIN = 262144
    # the byte that opens a detour on the socket (wake-up bytes are 0)
    DETOUR_MARK = 0x5A
    # a large message's turns through a ring (a writer waiting for room,
    # a reader holding half a frame) spin this many times the budget: the
    # other side is busy copying up to a ring's worth, which takes longer
    # than a small message's answer
    BULK_SPINS = 4
    # bytes sent per µs added to the spin that waits for the answer
    SPIN_EXTRA_BYTES = 8192
    SPIN_EXTRA_MAX_US = 1000
    # most large bytes values one message keeps external (see WriteBuffer)
    MAX_EXTERNALS = 64
    # machine-wide client spinner slots
    MAX_SLOTS = 64
    # the largest spin budget (µs); see FM_STALE_NS
    MAX_SPIN_US = 10000
    # spins between two looks at the CPUs this process may use
    SPINS_PER_REFRESH = 256
    # blocking waits before spinning is tried again, at first and at most
    PROBE_MIN = 64
    PROBE_MAX = 4096

# spinning yields the CPU at every turn, but only after this long: the
# common reply comes within it, and a yield costs more than a recv
cdef double CALM_SPIN_S = 4e-6
# ... unless most recent catches came only after a yield (more than
# CALM_LATE_MAX of them) that ran the peer on our CPU (through a ring: the
# writer wrote from our CPU, fm_ring_from_here; through a socket: the yield
# ran some other thread): then the peer runs only while we yield, because
# it shares our CPU, and the calm phase is time taken from it.  Such spins
# yield at once, but for one in CALM_PROBE, which looks again.
cdef double CALM_LATE_MAX = 0.75
cdef unsigned int CALM_PROBE = 64
# The server's loop moves to another CPU when its catches come late
# (_move_apart), at most once in MOVE_GAP_MIN spins, doubling the gap after
# each move up to MOVE_GAP_MAX until catches come early (late below
# MOVE_SETTLED) again.
cdef double MOVE_SETTLED = 0.5
cdef unsigned int MOVE_GAP_MIN = 64
cdef unsigned int MOVE_GAP_MAX = 65536
# A yield that kept the CPU from us this long means a busy thread took it
# for a whole time slice.  When that thread was one of ours (a client
# making call after call while the others wait their turn, as 8 clients on
# 2 CPUs do), the CPU did our work: the spin goes on.  When it was
# somebody else's (too few catches on the CPU meanwhile, see OURS_RATE),
# the spin stops there.  That happens now and then anyway, but where a busy
# process shares our CPUs it happens often, and a spinner (which the
# scheduler does not hurry back, as it does a woken sleeper) loses more
# time than blocking would: when the time lost in long yields, decaying
# with LOST_TAU_S, passes LOST_MAX_S, spinning stops for PROBE_MAX blocking
# waits.
cdef double LONG_YIELD_S = 1e-3
# catches a second on a CPU that say our own spinners had it; one of ours
# making calls back to back catches a reply every few µs, a busy process
# of somebody else's lets through a few in a time slice
cdef double OURS_RATE = 1e4
# a yield that takes this long ran another thread: one that does not, a
# system call, takes well under it
cdef double SWITCHED_S = 2e-6
cdef double LOST_TAU_S = 1.0
cdef double LOST_MAX_S = 0.05

cdef struct SpinState:
    int now             # the budget in force, µs (at most the owner's spin_us)
    int misses          # blocking waits since the budget reached zero
    int wait            # blocking waits before spinning is tried again
    double lost         # seconds lost in long yields, decayed to lost_at
    double lost_at      # when lost was last brought up to date
    unsigned int spins  # spins so far
    bint calm           # the spin in progress began with a calm phase
    double late         # share of recent calm spins that caught only after a yield ran another thread
    unsigned int move_at   # spins before the next move to another CPU (_move_apart)
    unsigned int move_gap  # spins between two moves

cdef int c_max_depth = MAX_DEPTH
cdef Py_ssize_t c_copy_threshold = COPY_THRESHOLD
cdef uint64_t U32_LIMIT = 0x100000000

# ---------------------------------------------------------------------------
# Spin policy

cdef int g_spins = 0   # spins since _refresh_max_spinners() last ran
cdef bint g_spin_yield = SPIN_YIELD
cdef int g_spin_us = SPIN_US


# the machine's CPUs, looked up once (os.cpu_count() reads a file)
cdef int g_machine_cpus = _os.cpu_count() or 1


cdef void _refresh_max_spinners() noexcept:
    """Up to SLOTS_PER_CPU spinners per CPU of the machine may spin
    (counted in the shared slots, which every process sees alike, pinned
    to one CPU or not); beyond as many as this process may use CPUs, they
    are crowded (SLOT_CROWDED).  A process that may use a single CPU is no
    exception: its peer may run on another (a client pinned to one CPU,
    its server to another), and where the peer shares that CPU its
    messages come only after a yield, which turns the calm phase off
    (_calm_until)."""
    global fm_max_spinners, fm_slot_max
    try:
        ncpu = len(_os.sched_getaffinity(0))
    except Exception:
        ncpu = g_machine_cpus
    fm_max_spinners = ncpu
    fm_slot_max = min(SLOTS_PER_CPU * max(ncpu, g_machine_cpus), MAX_SLOTS)


cdef void _map_slots() noexcept:
    """Map the machine-wide spinner slots and catch counters; without them
    (no /dev/shm, say) client spinners and catches are counted per
    process."""
    global fm_slots, fm_counts
    cdef void* mem
    cdef size_t size = MAX_SLOTS * 8 + FM_CPUS * 64
    try:
        fd = _os.open("/dev/shm/fastmgr-spin-%d" % _os.getuid(), _os.O_RDWR | _os.O_CREAT, 0o600)
    except Exception:
        return
    try:
        if _os.fstat(fd).st_size < size:
            _os.ftruncate(fd, size)
        mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if mem != MAP_FAILED:
            fm_slots = <int64_t*>mem
            fm_counts = <uint64_t*>(<char*>mem + MAX_SLOTS * 8)
    except Exception:
        pass
    finally:
        _os.close(fd)


_map_slots()
_refresh_max_spinners()


def set_spin(int microseconds):
    """Set the default spin budget (µs) for connections made from now on."""
    global g_spin_us
    if microseconds < 0 or microseconds > MAX_SPIN_US:
        raise ValueError("spin budget must be between 0 and %d µs" % MAX_SPIN_US)
    g_spin_us = microseconds
    _refresh_max_spinners()


def get_spin():
    return g_spin_us


cdef void _adapt_spin(SpinState* st, int budget, int outcome) noexcept:
    """Grow a spin budget (st.now, at most budget µs) when spinning caught
    the message, halve it when it did not, and try again after st.wait
    blocking waits once it reached zero; each try that fails doubles the
    wait, so where spinning never pays it costs next to nothing."""
    global g_spins
    if outcome != SPIN_OFF:
        g_spins += 1
        if g_spins >= SPINS_PER_REFRESH:
            # the CPUs we may use can change (pinned to one since?)
            g_spins = 0
            _refresh_max_spinners()
    if st.wait < PROBE_MIN:
        st.wait = PROBE_MIN
    if outcome == SPIN_PAID:
        st.misses = 0
        st.wait = PROBE_MIN
        st.now = min(budget, st.now * 2)
    elif outcome == SPIN_LONG_YIELD and st.lost > LOST_MAX_S:
        st.now = 0
        st.misses = 0
        st.wait = PROBE_MAX
    elif outcome != SPIN_OFF:
        st.now //= 2
        if st.now == 0 and st.wait < PROBE_MAX:
            st.wait *= 2
    else:
        st.misses += 1
        if st.misses >= st.wait:
            # now and then, look again: the CPUs we may use can change
            st.misses = 0
            _refresh_max_spinners()
            st.now = budget


cdef inline bint _long_yield(SpinState* st, double before, double after, uint64_t ours) noexcept nogil:
    """Whether a yield from before to after lost us the CPU to somebody
    else's busy process: it was long, and our own spinners caught fewer
    than OURS_RATE messages a second (ours in all) on our CPU meanwhile.
    If so, count it."""
    if after - before < LONG_YIELD_S or ours >= (after - before) * OURS_RATE:
        return False
    st.lost = st.lost * exp((st.lost_at - after) / LOST_TAU_S) + (after - before)
    st.lost_at = after
    return True


cdef inline bint _yield(SpinState* st, double before, bint* switched) noexcept nogil:
    """A spinner's yield, from before: sets switched if another thread ran
    meanwhile (the yield took SWITCHED_S or more); whether it lost us the
    CPU (_long_yield)."""
    cdef double after
    cdef uint64_t* count = fm_cpu_count(sched_getcpu())
    cdef uint64_t seen = fm_count_read(count)
    sched_yield()
    after = _now()
    if after - before >= SWITCHED_S:
        switched[0] = True
    return _long_yield(st, before, after, fm_count_read(count) - seen)


cdef inline int _bulk_budget(int budget) noexcept nogil:
    """The spin budget of a large message's turn through a ring."""
    return min(BULK_SPINS * budget, MAX_SPIN_US)


cdef inline bint _cpus_free(SpinState* st) noexcept nogil:
    """Whether long yields have lost less than LOST_MAX_S lately: if not, a
    busy process shares our CPUs and spinning stays off."""
    return st.lost * exp((st.lost_at - _now()) / LOST_TAU_S) <= LOST_MAX_S


cdef inline int _half_frame_budget(SpinState* st, int budget) noexcept nogil:
    """The spin budget of a wait for the rest of a frame that is half in:
    its writer is busy writing it, so at least _bulk_budget(budget),
    however low the adapted budget fell, unless the CPUs are busy."""
    if st.now < _bulk_budget(budget) and _cpus_free(st):
        return _bulk_budget(budget)
    return st.now


cdef inline void _quick_wake(SpinState* st, int budget, double asleep, double woke) noexcept nogil:
    """A blocking wait from asleep to woke, with spinning off: if it ended
    within the budget, spinning would have caught the message, so spin
    again from the next wait (unless long yields said the CPUs are busy)."""
    if (st.now == 0 and budget > 0 and woke - asleep < budget * 1e-6
            and _cpus_free(st)):
        st.now = budget
        st.misses = 0


cdef inline void _move_apart(SpinState* st, int slot) noexcept nogil:
    """The server's loop (or a server thread that serves one connection),
    when its peers run only while it yields (most catches late, see
    CALM_LATE_MAX), shares its CPU with one of them, often by chance: the
    kernel wakes a thread beside its waker, and two threads that yield to
    each other are never moved apart.  Then it moves to another CPU, if it
    may use one.  Where that does not help (the kernel puts it back, or
    another client waits there), the moves come ever more rarely."""
    if st.move_gap < MOVE_GAP_MIN:
        st.move_gap = MOVE_GAP_MIN
    if slot != SLOT_FULL:
        return
    if st.late < CALM_LATE_MAX:
        if st.late < MOVE_SETTLED:
            st.move_gap = MOVE_GAP_MIN
        return
    if <int>(st.spins - st.move_at) < 0:
        return
    if fm_move_off_cpu():
        # look again: the calm phase comes back until catches say otherwise
        st.late = MOVE_SETTLED
    st.move_at = st.spins + st.move_gap
    if st.move_gap < MOVE_GAP_MAX:
        st.move_gap *= 2


cdef inline double _spin_start(SpinState* st, int slot, bint moves, double t) noexcept nogil:
    """Begin a spin at t: a server thread that may move (moves) first looks
    whether to (_move_apart).  Returns when the spin starts yielding at
    every turn."""
    if moves:
        _move_apart(st, slot)
    return _calm_until(st, t)


cdef inline double _calm_until(SpinState* st, double t) noexcept nogil:
    """When a spin that begins at t starts yielding at every turn.  Every
    spinner begins calm, crowded or not, as long as that pays: more
    spinners than CPUs then take turns by time slices, a client making
    call after call while the others wait, rather than by a switch per
    call (8 clients on 2 CPUs: about 650k calls/s calm, 450k yielding at
    once)."""
    st.spins += 1
    st.calm = st.late < CALM_LATE_MAX or st.spins % CALM_PROBE == 0
    return t + CALM_SPIN_S if st.calm else t


cdef inline void _caught(SpinState* st, bint yielded) noexcept nogil:
    """A spin caught its message; yielded: only after a yield that ran the
    peer on our CPU (see CALM_LATE_MAX)."""
    fm_count_catch()
    if st.calm:
        st.late += ((1.0 if yielded else 0.0) - st.late) / 16.0


cdef void* _realloc_or_raise(void* p, size_t n) except NULL:
    cdef void* q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q


cdef int _os_error(int err) except -1:
    """Raise the OSError (subclass) of errno value err."""
    fm_set_errno(err)
    PyErr_SetFromErrno(OSError)
    return -1


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# ---------------------------------------------------------------------------
# Buffers

@cython.final
cdef class WriteBuffer:
    """A growable byte buffer, reused for every message of a connection.

    It may hold several frames (pipelined requests, coalesced responses).
    Large bytes values are not copied in: they are kept as *external*
    segments, sent in place by one sendmsg() with the inline bytes around them."""
    cdef unsigned char* buf     # owned allocation
    cdef Py_ssize_t length      # inline bytes written
    cdef Py_ssize_t capacity    # bytes allocated
    cdef bint allow_external    # whether large bytes may stay external
    cdef list externals         # [(inline offset, bytes object)], offsets ascending
    cdef Py_ssize_t ext_bytes   # total size of the externals
    cdef Py_ssize_t frame_ext   # ext_bytes when the open frame began

    def __cinit__(self):
        self.capacity = 4096
        self.buf = <unsigned char*>PyMem_Malloc(self.capacity)
        if self.buf == NULL:
            raise MemoryError()
        self.length = 0
        self.externals = []

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef inline void reset(self) noexcept:
        self.length = 0
        if self.ext_bytes:
            self.externals.clear()
            self.ext_bytes = 0

    cdef inline Py_ssize_t total(self) noexcept:
        return self.length + self.ext_bytes

    cdef int _grow(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t cap = self.capacity * 2
        while cap < self.length + extra:
            cap *= 2
        self.buf = <unsigned char*>_realloc_or_raise(self.buf, cap)
        self.capacity = cap
        return 0

    cdef inline int ensure(self, Py_ssize_t extra) except -1:
        if self.length + extra > self.capacity:
            self._grow(extra)
        return 0

    cdef inline int write_u8(self, uint8_t v) except -1:
        self.ensure(1)
        self.buf[self.length] = v
        self.length += 1
        return 0

    cdef inline int write_tag_u32(self, uint8_t tag, uint32_t v) except -1:
        self.ensure(5)
        self.buf[self.length] = tag
        fm_put_u32le(self.buf + self.length + 1, v)
        self.length += 5
        return 0

    cdef inline int write_tag_u64(self, uint8_t tag, uint64_t v) except -1:
        self.ensure(9)
        self.buf[self.length] = tag
        fm_put_u64le(self.buf + self.length + 1, v)
        self.length += 9
        return 0

    cdef inline int write_raw(self, const void* data, Py_ssize_t n) except -1:
        self.ensure(n)
        memcpy(self.buf + self.length, data, n)
        self.length += n
        return 0

    cdef int write_bytes(self, bytes data) except -1:
        """Append the payload of a bytes value: in place when it is large."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.allow_external and n >= c_copy_threshold and len(self.externals) < MAX_EXTERNALS:
            self.externals.append((self.length, data))
            self.ext_bytes += n
            return 0
        return self.write_raw(PyBytes_AS_STRING(data), n)

    cdef inline Py_ssize_t begin_frame(self) except -1:
        """Reserve a frame header; returns its offset for end_frame()."""
        self.ensure(4)
        self.length += 4
        self.frame_ext = self.ext_bytes
        return self.length - 4

    cdef int end_frame(self, Py_ssize_t start) except -1:
        """Write the header of the frame begun at start, now that its body
        is complete (a 12-byte header for a body above 2**31 - 1 bytes)."""
        cdef Py_ssize_t n = self.length - start - 4 + self.ext_bytes - self.frame_ext
        cdef Py_ssize_t i
        if not _big_frame(n):
            fm_put_i32be(self.buf + start, <uint32_t>n)
            return 0
        self.ensure(8)
        memmove(self.buf + start + 12, self.buf + start + 4, self.length - start - 4)
        self.length += 8
        for i in range(len(self.externals)):
            offset, data = self.externals[i]
            if offset > start:
                self.externals[i] = (offset + 8, data)
        fm_put_i32be(self.buf + start, 0xffffffff)
        fm_put_i32be(self.buf + start + 4, <uint32_t>(<uint64_t>n >> 32))
        fm_put_i32be(self.buf + start + 8, <uint32_t>n)
        return 0

    cdef bytes body(self):
        """Everything written, as one bytes object.
        Precondition: no externals (allow_external is off)."""
        return PyBytes_FromStringAndSize(<char*>self.buf, self.length)


cdef inline bint _big_frame(Py_ssize_t n) noexcept:
    return n > 0x7fffffff


cdef bytes _header(Py_ssize_t n):
    """The stdlib's frame header for a body of n bytes."""
    cdef unsigned char h[12]
    if _big_frame(n):
        fm_put_i32be(h, 0xffffffff)
        fm_put_i32be(h + 4, <uint32_t>(<uint64_t>n >> 32))
        fm_put_i32be(h + 8, <uint32_t>n)
        return PyBytes_FromStringAndSize(<char*>h, 12)
    fm_put_i32be(h, <uint32_t>n)
    return PyBytes_FromStringAndSize(<char*>h, 4)


def frame(body):
    """Header + body, as one bytes object."""
    cdef bytes data = bytes(memoryview(body))
    return _header(len(data)) + data


# ---------------------------------------------------------------------------
# The codec

cdef int _serializer_mode(str serializer) except -1:
    if serializer == "pickle":
        return 0
    if serializer == "safe":
        return 1
    if serializer == "xmlrpclib":
        return 2
    raise ValueError("unknown serializer %r (choose from %s)" % (serializer, ", ".join(SERIALIZERS)))


@cython.final
cdef class Codec:
    """Encodes values and envelopes (see _protocol.py)."""
    cdef readonly str serializer
    cdef bint may_pickle        # "pickle": types without a tag are pickled
    cdef bint tuples_as_lists   # "xmlrpclib": decode T_TUPLE as list
    cdef WriteBuffer out        # scratch buffer of dumps()/encode_*()

    def __init__(self, str serializer="pickle"):
        cdef int mode = _serializer_mode(serializer)
        self.serializer = serializer
        self.may_pickle = mode == 0
        self.tuples_as_lists = mode == 2
        self.out = WriteBuffer()

    def __reduce__(self):
        return (Codec, (self.serializer,))

    # -- encoding --------------------------------------------------------

    cdef int _pickle(self, WriteBuffer buf, object obj) except -1:
        cdef bytes data
        if not self.may_pickle:
            raise UnsafeValueError(
                "the %r serializer sends only None, bool, int, float, str, bytes, "
                "tuple, list and dict; got %s" % (self.serializer, type(obj).__name__))
        data = _pickling.dumps(obj)
        if PyBytes_GET_SIZE(data) >= U32_LIMIT:
            raise ValueError("a pickled value of %d bytes is too large to send" % len(data))
        buf.write_tag_u32(T_PICKLE, <uint32_t>PyBytes_GET_SIZE(data))
        buf.write_raw(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return 0

    cdef int _encode(self, WriteBuffer buf, object obj, int depth) except -1:
        """Append one value. Returns TOO_DEEP when containers nest deeper than
        MAX_DEPTH (the caller then pickles the whole top-level value)."""
        cdef type t = type(obj)
        cdef long long v
        cdef int overflow = 0
        cdef Py_ssize_t n, i
        cdef const char* s
        cdef PyObject* key
        cdef PyObject* value
        cdef Py_ssize_t pos = 0
        cdef int r
        if obj is None:
            return buf.write_u8(T_NONE)
        if t is bool:
            return buf.write_u8(T_TRUE if obj is True else T_FALSE)
        if t is int:
            v = PyLong_AsLongLongAndOverflow(obj, &overflow)
            if overflow == 0:
                return buf.write_tag_u64(T_INT64, <uint64_t>v)
            data = obj.to_bytes(((obj if obj >= 0 else ~obj).bit_length() + 8) // 8, "little",
                                signed=True)
            if PyBytes_GET_SIZE(data) >= U32_LIMIT:
                return self._pickle(buf, obj)
            buf.write_tag_u32(T_BIGINT, <uint32_t>PyBytes_GET_SIZE(data))
            return buf.write_raw(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if t is float:
            return buf.write_tag_u64(T_FLOAT, fm_double_bits(PyFloat_AS_DOUBLE(obj)))
        if t is str:
            try:
                s = PyUnicode_AsUTF8AndSize(obj, &n)
            except UnicodeEncodeError:
                data = (<str>obj).encode("utf-8", "surrogatepass")
                s = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
            if n >= U32_LIMIT:
                return self._pickle(buf, obj)
            buf.write_tag_u32(T_STR, <uint32_t>n)
            return buf.write_raw(s, n)
        if t is bytes:
            n = PyBytes_GET_SIZE(obj)
            if n >= U32_LIMIT:
                return self._pickle(buf, obj)
            buf.write_tag_u32(T_BYTES, <uint32_t>n)
            return buf.write_bytes(obj)
        if t is tuple or t is list or t is dict:
            if depth > c_max_depth:
                return TOO_DEEP
            n = len(obj)
            if n >= U32_LIMIT:
                return self._pickle(buf, obj)
            if t is tuple:
                buf.write_tag_u32(T_TUPLE, <uint32_t>n)
                for i in range(n):
                    r = self._encode(buf, <object>PyTuple_GET_ITEM(obj, i), depth + 1)
                    if r:
                        return r
            elif t is list:
                buf.write_tag_u32(T_LIST, <uint32_t>n)
                for i in range(n):
                    # the list may shrink while an item's pickling runs Python code
                    if i >= PyList_GET_SIZE(obj):
                        raise RuntimeError("list changed size during encoding")
                    item = <object>PyList_GET_ITEM(obj, i)
                    r = self._encode(buf, item, depth + 1)
                    if r:
                        return r
            else:
                buf.write_tag_u32(T_DICT, <uint32_t>n)
                i = 0
                while PyDict_Next(obj, &pos, &key, &value):
                    k = <object>key
                    val = <object>value
                    i += 1
                    if i > n:
                        break
                    r = self._encode(buf, k, depth + 1)
                    if r:
                        return r
                    r = self._encode(buf, val, depth + 1)
                    if r:
                        return r
                if i != n:
                    raise RuntimeError("dictionary changed size during encoding")
            return 0
        return self._pickle(buf, obj)

    cdef int encode_top(self, WriteBuffer buf, object obj) except -1:
        """Append one top-level value, pickled whole if it nests too deeply."""
        cdef Py_ssize_t start = buf.length
        if self._encode(buf, obj, 1) == TOO_DEEP:
            buf.length = start
            self._pickle(buf, obj)
        return 0

    cdef int encode_request_into(self, WriteBuffer buf, int kind, uint64_t ident,
                                 object method, object args, object kwds) except -1:
        if kind != REQ_CALL and kind != REQ_ONEWAY:
            raise ValueError("unknown request kind %r" % kind)
        buf.write_tag_u64(<uint8_t>kind, ident)
        self.encode_top(buf, method)
        self.encode_top(buf, args)
        if kwds:
            self.encode_top(buf, kwds)
        else:
            buf.write_u8(T_NONE)
        return 0

    cdef int encode_response_into(self, WriteBuffer buf, int kind, object value) except -1:
        if kind < RESP_RETURN or kind > RESP_PROXY:
            raise ValueError("unknown response kind %r" % kind)
        buf.write_u8(<uint8_t>kind)
        return self.encode_top(buf, value)

    def dumps(self, obj):
        self.out.reset()
        self.encode_top(self.out, obj)
        return self.out.body()

    def encode_request(self, int kind, uint64_t ident, method, args, kwds):
        self.out.reset()
        self.encode_request_into(self.out, kind, ident, method, args, kwds)
        return self.out.body()

    def encode_response(self, int kind, value):
        self.out.reset()
        self.encode_response_into(self.out, kind, value)
        return self.out.body()

    # -- decoding --------------------------------------------------------

    cdef object _decode(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, int depth):
        """Decode the value at p[pos[0]:n] and advance pos.
        Precondition: pos[0] <= n. Every read is checked against n."""
        cdef Py_ssize_t at = pos[0]
        cdef uint8_t tag
        cdef uint64_t length
        cdef Py_ssize_t i, count
        cdef object result, item, key
        if at >= n:
            raise ProtocolError("truncated message: value expected")
        tag = p[at]
        at += 1
        if tag == T_NONE:
            pos[0] = at
            return None
        if tag == T_FALSE:
            pos[0] = at
            return False
        if tag == T_TRUE:
            pos[0] = at
            return True
        if tag == T_INT64 or tag == T_FLOAT:
            if n - at < 8:
                raise ProtocolError("truncated message: 8-byte number")
            pos[0] = at + 8
            if tag == T_INT64:
                return PyLong_FromLongLong(<int64_t>fm_get_u64le(p + at))
            return PyFloat_FromDouble(fm_bits_double(fm_get_u64le(p + at)))
        if tag > T_PICKLE:
            raise ProtocolError("unknown value tag 0x%02x" % tag)
        if n - at < 4:
            raise ProtocolError("truncated message: length")
        length = fm_get_u32le(p + at)
        at += 4
        if tag == T_TUPLE or tag == T_LIST or tag == T_DICT:
            if depth > c_max_depth:
                raise ProtocolError("containers nest deeper than %d" % c_max_depth)
            # every item takes at least one byte: refuse counts the data cannot hold
            if length > <uint64_t>(n - at) or (tag == T_DICT and 2 * length > <uint64_t>(n - at)):
                raise ProtocolError("truncated message: container of %d items" % length)
            count = <Py_ssize_t>length
            pos[0] = at
            if tag == T_DICT:
                result = {}
                for i in range(count):
                    key = self._decode(p, n, pos, depth + 1)
                    item = self._decode(p, n, pos, depth + 1)
                    try:
                        PyDict_SetItem(result, key, item)
                    except TypeError as exc:
                        raise ProtocolError("bad dict key: %s" % exc) from None
                return result
            if tag == T_LIST or self.tuples_as_lists:
                result = PyList_New(count)
                for i in range(count):
                    item = self._decode(p, n, pos, depth + 1)
                    Py_INCREF(item)
                    PyList_SET_ITEM(result, i, item)
                return result
            result = PyTuple_New(count)
            for i in range(count):
                item = self._decode(p, n, pos, depth + 1)
                Py_INCREF(item)
                PyTuple_SET_ITEM(result, i, item)
            return result
        if length > <uint64_t>(n - at):
            raise ProtocolError("truncated message: %d bytes announced, %d left" % (length, n - at))
        pos[0] = at + <Py_ssize_t>length
        if tag == T_STR:
            try:
                return PyUnicode_DecodeUTF8(<const char*>p + at, <Py_ssize_t>length, "surrogatepass")
            except UnicodeDecodeError as exc:
                raise ProtocolError("bad UTF-8 in str: %s" % exc) from None
        if tag == T_BYTES:
            return PyBytes_FromStringAndSize(<const char*>p + at, <Py_ssize_t>length)
        if tag == T_BIGINT:
            return int.from_bytes(PyBytes_FromStringAndSize(<const char*>p + at, <Py_ssize_t>length),
                                  "little", signed=True)
        # T_PICKLE
        if not self.may_pickle:
            raise ProtocolError("the %r serializer refuses pickled data" % self.serializer)
        return _pickling.loads(PyBytes_FromStringAndSize(<const char*>p + at, <Py_ssize_t>length))

    cdef object decode_all(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos):
        """Decode the last value of a message: no bytes may follow it."""
        value = self._decode(p, n, pos, 1)
        if pos[0] != n:
            raise ProtocolError("%d unexpected bytes after the message" % (n - pos[0]))
        return value

    cdef tuple decode_request_at(self, const unsigned char* p, Py_ssize_t n):
        cdef Py_ssize_t pos = 9
        cdef int kind
        if n < 9:
            raise ProtocolError("truncated request header")
        kind = p[0]
        if kind != REQ_CALL and kind != REQ_ONEWAY:
            raise ProtocolError("unknown request kind 0x%02x" % kind)
        ident = fm_get_u64le(p + 1)
        method = self._decode(p, n, &pos, 1)
        args = self._decode(p, n, &pos, 1)
        kwds = self.decode_all(p, n, &pos)
        if type(method) is not str:
            raise ProtocolError("method name must be a str")
        if not (type(args) is tuple or (self.tuples_as_lists and type(args) is list)):
            raise ProtocolError("request arguments must be a tuple")
        if kwds is not None and type(kwds) is not dict:
            raise ProtocolError("request keywords must be a dict")
        return (kind, ident, method, args, kwds)

    cdef tuple decode_response_at(self, const unsigned char* p, Py_ssize_t n):
        cdef Py_ssize_t pos = 1
        cdef int kind
        if n < 1:
            raise ProtocolError("empty response")
        kind = p[0]
        if kind < RESP_RETURN or kind > RESP_PROXY:
            raise ProtocolError("unknown response kind 0x%02x" % kind)
        return (kind, self.decode_all(p, n, &pos))

    def loads(self, data):
        cdef bytes b = bytes(memoryview(data))
        cdef Py_ssize_t pos = 0
        return self.decode_all(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), &pos)

    def decode_request(self, data):
        cdef bytes b = bytes(memoryview(data))
        return self.decode_request_at(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    def decode_response(self, data):
        cdef bytes b = bytes(memoryview(data))
        return self.decode_response_at(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# ---------------------------------------------------------------------------
# Incremental framing (for feeds in any split; the Connection reads directly)

cdef int _parse_header(const unsigned char* p, Py_ssize_t avail, Py_ssize_t limit,
                       Py_ssize_t* header, Py_ssize_t* body) except -1:
    """Parse a frame header from p[0:avail]. Returns 0 and leaves header[0]
    at 0 when more bytes are needed; else sets header size and body size.
    Raises MessageTooLarge above limit and ProtocolError on a bad length."""
    cdef int n32
    cdef uint64_t n64
    header[0] = 0
    if avail < 4:
        return 0
    n32 = fm_get_i32be(p)
    if n32 >= 0:
        n64 = <uint64_t>n32
        if n64 > <uint64_t>limit:
            raise MessageTooLarge("message of %d bytes exceeds the limit of %d" % (n64, limit))
        header[0] = 4
        body[0] = n32
        return 0
    if n32 != -1:
        raise ProtocolError("bad message length %d" % n32)
    if avail < 12:
        return 0
    n64 = fm_get_u64be(p + 4)
    if n64 > <uint64_t>limit:
        raise MessageTooLarge("message of %d bytes exceeds the limit of %d" % (n64, limit))
    header[0] = 12
    body[0] = <Py_ssize_t>n64
    return 0


@cython.final
cdef class FrameReader:
    """Feed bytes in any split; take whole bodies out."""
    cdef bytearray data
    cdef Py_ssize_t max_message

    def __init__(self, Py_ssize_t max_message=DEFAULT_MAX_MESSAGE):
        self.data = bytearray()
        self.max_message = max_message

    def feed(self, data):
        self.data += data

    def next_message(self):
        cdef Py_ssize_t header = 0, body = 0
        cdef const unsigned char* p = <const unsigned char*><char*>self.data
        _parse_header(p, len(self.data), self.max_message, &header, &body)
        if header == 0 or len(self.data) - header < body:
            return None
        message = bytes(self.data[header:header + body])
        del self.data[:header + body]
        return message


# ---------------------------------------------------------------------------
# Connections

cdef double NO_TIMEOUT = -1.0


@cython.final
cdef class Connection:
    """A framed, connected stream socket (see _wire.pyi)."""
    cdef object sock                # the socket.socket we own
    cdef int fd                     # its descriptor, -1 once closed
    cdef readonly Codec codec
    cdef public Py_ssize_t max_message
    cdef double _timeout            # seconds; NO_TIMEOUT waits forever
    cdef int _spin_us               # spin budget before blocking, µs
    cdef SpinState spin             # how the budget in force adapts
    cdef bint moves                 # a server thread of its own: may move off its client's CPU
    cdef int spin_extra             # µs added to the next spin: the peer is taking in a large message
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

    def __cinit__(self):
        self.fd = -1
        self.rcap = 16384
        self.rbuf = <unsigned char*>PyMem_Malloc(self.rcap)
        if self.rbuf == NULL:
            raise MemoryError()

    def __init__(self, sock, Codec codec=None, Py_ssize_t max_message=DEFAULT_MAX_MESSAGE,
                 timeout=None):
        self.sock = sock
        self.fd = sock.fileno()
        self.codec = codec if codec is not None else Codec()
        self.max_message = max_message
        self.timeout = timeout
        self.spin_us = g_spin_us
        self.wbuf = WriteBuffer()
        self.wbuf.allow_external = True
        if sock.family in (_socket.AF_INET, _socket.AF_INET6):
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if type(sock) is not _socket.socket:
            import ssl
            # TLS: bytes go through the SSL object, not straight to the fd
            self.pyio = isinstance(sock, ssl.SSLSocket)
        if self.pyio:
            self.spin_us = 0
        else:
            sock.setblocking(True)

    def __dealloc__(self):
        PyMem_Free(self.rbuf)
        self._unmap()

    property spin_us:
        """Spin budget before blocking, µs (0: never spin)."""
        def __get__(self):
            return self._spin_us
        def __set__(self, int value):
            self._spin_us = self.spin.now = value

    property timeout:
        def __get__(self):
            return None if self._timeout < 0 else self._timeout
        def __set__(self, value):
            if value is None:
                self._timeout = NO_TIMEOUT
            elif value < 0:
                raise ValueError("timeout must be None or >= 0")
            else:
                self._timeout = value

    @property
    def closed(self):
        return self.fd < 0

    def fileno(self):
        self._check_open()
        return self.fd

    def close(self):
        # the rings stay mapped until the object goes: a hub may look at
        # them until it lets go of the connection
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()

    cdef void _unmap(self) noexcept:
        if self.shm != NULL:
            munmap(self.shm, 2 * sizeof(fm_ring))
            self.shm = NULL
            self.rx = self.tx = NULL

    @staticmethod
    def ring_size():
        """Bytes of shared memory attach_ring() maps: two rings."""
        return 2 * sizeof(fm_ring)

    def attach_ring(self, int fd, bint server):
        """From now on, carry bytes through the two shared-memory rings in
        the file fd (ring_size() bytes, zeroed; the caller keeps fd): the
        first carries client to server, the second server to client.  The
        socket stays, for wake-ups, to see the peer close, and for messages
        too large for a ring (detours).  Both sides attach before either
        sends through the rings."""
        cdef void* mem
        self._check_open()
        if self.shm != NULL or self.pyio:
            raise ValueError("this connection cannot take a ring")
        if self.rend > self.rstart:
            raise ValueError("bytes already received through the socket")
        if _os.fstat(fd).st_size < 2 * sizeof(fm_ring):
            raise ValueError("the ring file is too small")
        mem = mmap(NULL, 2 * sizeof(fm_ring), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if mem == MAP_FAILED:
            PyErr_SetFromErrno(OSError)
        self.shm = mem
        self.rx = <fm_ring*>mem + (0 if server else 1)
        self.tx = <fm_ring*>mem + (1 if server else 0)
        self.rx_head = self.tx_tail = self.rx_detour_left = 0
        self.tx_detouring = self.bell_owed = False
        # until a side says it is looking at its ring, the other rings for
        # every message (a needless ring costs a spurious wake-up; a missing
        # one, a hang): neither side has sent through the rings yet
        fm_flag_set(&self.rx.reader_waiting, 1)
        fm_flag_set(&self.tx.reader_waiting, 1)

    @property
    def has_ring(self):
        return self.shm != NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef inline int _check_open(self) except -1:
        if self.fd < 0:
            raise OSError("handle is closed")
        return 0

    # -- waiting ------------------------------------------------------------

    cdef int _check_signals(self) except -1:
        """Run pending signal handlers; one that raises also closes the
        connection, whose reply would otherwise be read as the answer to
        the next call."""
        try:
            PyErr_CheckSignals()
        except BaseException:
            self.close()
            raise
        return 0

    cdef short _wait(self, short events, double deadline) except -1:
        """Block until fd is ready for events or the deadline passes (then
        close and raise TimeoutError). Signals are checked on EINTR; an
        exception from a handler also closes the connection, whose reply
        would otherwise be read as the answer to the next call."""
        cdef pollfd pfd
        cdef int ms, rc
        cdef double left
        pfd.fd = self.fd
        pfd.events = events
        while True:
            # a signal that came while we spun (or before an EINTR) is seen here
            self._check_signals()
            if deadline < 0:
                ms = -1
            else:
                left = deadline - _now()
                ms = <int>(left * 1000.0 + 0.999) if left > 0 else 0
            with nogil:
                rc = poll(&pfd, 1, ms)
            if rc > 0:
                return pfd.revents
            if rc == 0:
                self.close()
                raise TimeoutError("timed out after %.3g s waiting for the peer" % self._timeout)
            if errno != EINTR:
                PyErr_SetFromErrno(OSError)
                return -1

    cdef inline double _deadline(self) noexcept:
        return NO_TIMEOUT if self._timeout < 0 else _now() + self._timeout

    cdef ssize_t _spin_recv(self, unsigned char* dst, Py_ssize_t space, int slot,
                            int* outcome) noexcept nogil:
        """Poll with non-blocking recv for up to spin.now µs (the caller
        has just found nothing).  Returns what recv returned last, or -1
        with EAGAIN when the budget ran out (outcome SPIN_MISSED) or a
        yield kept the CPU from us too long (SPIN_LONG_YIELD)."""
        cdef ssize_t got
        cdef double t = _now()
        cdef double until = t + (self.spin.now + self.spin_extra) * 1e-6
        cdef double calm = _spin_start(&self.spin, slot, self.moves, t)
        cdef bint yielded = False
        while True:
            if g_spin_yield and t >= calm:
                # a peer (or anyone) waiting for this CPU gets it: spinning
                # must never starve the thread we are waiting for
                if _yield(&self.spin, t, &yielded):
                    outcome[0] = SPIN_LONG_YIELD
                    fm_set_errno(EAGAIN)
                    return -1
            got = c_recv(self.fd, dst, space, MSG_DONTWAIT)
            if got >= 0 or not fm_again(errno):
                _caught(&self.spin, yielded)
                return got
            t = _now()
            if t >= until:
                outcome[0] = SPIN_MISSED
                return -1

    # -- the shared-memory rings (attach_ring) -------------------------------

    cdef int _ring_corrupt(self) except -1:
        self.close()
        raise ProtocolError("the shared ring's positions are impossible, or bytes came "
                            "on the socket that no detour announced: the peer broke "
                            "the ring protocol")

    cdef void _doorbell(self) noexcept nogil:
        """Wake the peer: a byte on the socket (if the socket is full of
        them the peer has wake-ups enough; if it is gone, reading says so).
        Not in the middle of a detour we send: it is owed until the end."""
        cdef unsigned char zero = 0
        if self.tx_detouring:
            self.bell_owed = True
            return
        c_send(self.fd, &zero, 1, MSG_DONTWAIT | MSG_NOSIGNAL)

    cdef ssize_t _take_wakeups(self, int flags) noexcept nogil:
        """Wait for bytes on the socket (flags 0) or look (MSG_DONTWAIT),
        and take the wake-up bytes among them; a detour's bytes stay for
        _detour_in().  Returns how many bytes were there, 0 at EOF, -1
        with errno, or -2 if the peer sent bytes no detour announced."""
        cdef unsigned char scratch[64]
        cdef ssize_t got, k = 0
        if self.rx_detour_left:
            # the socket holds the open detour's bytes, any of them 0
            return c_recv(self.fd, scratch, 1, flags | MSG_PEEK)
        got = c_recv(self.fd, scratch, sizeof(scratch), flags | MSG_PEEK)
        if got <= 0:
            return got
        while k < got and scratch[k] == 0:
            k += 1
        if k > 0:
            c_recv(self.fd, scratch, k, MSG_DONTWAIT)
        if k < got and not (fm_detour_pending(self.rx) and fm_rx_ready(self.rx, self.rx_head)):
            # a marker is sent only after its detour is announced, and the
            # ring written up to where it belongs
            return -2
        return got

    cdef bint _detour_here(self) noexcept nogil:
        """Whether the stream goes on through the socket: a detour is open,
        or rx has been read up to the start of one announced."""
        return self.rx_detour_left > 0 or fm_detour_here(self.rx, self.rx_head)

    cdef Py_ssize_t _detour_in(self, double deadline, bint block) except -1:
        """Move a detour's bytes from the socket into rbuf (room
        permitting): first any wake-up bytes and its marker.  Returns the
        bytes moved; without block, 0 if none had come or at EOF (which
        the caller's next look at the socket sees).  Precondition:
        _detour_here(), rcap > rend."""
        cdef unsigned char mark = 0
        cdef unsigned char* dst
        cdef size_t want
        cdef ssize_t got
        cdef int err
        while True:
            if self.rx_detour_left == 0:
                dst, want = &mark, 1
            else:
                dst = self.rbuf + self.rend
                want = <size_t>min(self.rx_detour_left, <uint64_t>(self.rcap - self.rend))
            if block and deadline < 0:
                self._check_signals()
                with nogil:
                    got = c_recv(self.fd, dst, want, 0)
                    err = errno
            else:
                got = c_recv(self.fd, dst, want, MSG_DONTWAIT)
                err = errno
            if got == 0:
                if not block:
                    return 0
                raise EOFError("the peer closed the connection")
            if got < 0:
                if fm_again(err):
                    if not block:
                        return 0
                    self._wait(POLLIN, deadline)
                elif err == EINTR:
                    self._check_signals()
                else:
                    return _os_error(err)
                continue
            if self.rx_detour_left == 0:
                if mark == 0:
                    continue  # a wake-up byte sent before the detour
                self.rx_detour_left = fm_detour_len(self.rx)
                if mark != DETOUR_MARK or self.rx_detour_left == 0:
                    self.rx_detour_left = 0
                    return self._ring_corrupt()
                continue
            self._detour_took(got)
            return got

    cdef void _detour_took(self, ssize_t got) noexcept nogil:
        """Count got bytes of the open detour, received into rbuf at rend;
        at its end, let the writer send another."""
        self.rend += got
        self.rx_detour_left -= got
        if self.rx_detour_left == 0:
            fm_detour_done(self.rx)
            if fm_flag_seen(&self.rx.writer_waiting):
                self._doorbell()

    cdef Py_ssize_t _ring_read(self) except -1:
        """Move what rx holds into rbuf (room permitting), or what came of
        a detour; returns the number of bytes moved.  Never blocks.
        Precondition: rcap > rend."""
        cdef int64_t n = fm_ring_readable(self.rx, self.rx_head)
        if n < 0:
            return self._ring_corrupt()
        if n == 0:
            if self._detour_here():
                return self._detour_in(NO_TIMEOUT, False)
            return 0
        if n > self.rcap - self.rend:
            n = self.rcap - self.rend
        fm_ring_take(self.rx, &self.rx_head, self.rbuf + self.rend, n)
        self.rend += n
        if fm_flag_seen(&self.rx.writer_waiting):
            self._doorbell()
        return n

    cdef int _ring_sleep(self, uint32_t* flag, bint writing, double deadline) except -1:
        """Wait for the peer's wake-up on the socket (the caller raised
        flag, then looked at the ring once more); lower flag after.  EOF
        raises EOFError (BrokenPipeError when writing)."""
        cdef ssize_t got
        cdef int err
        try:
            while True:
                if deadline >= 0:
                    self._wait(POLLIN, deadline)
                    got = self._take_wakeups(MSG_DONTWAIT)
                    err = errno
                else:
                    self._check_signals()
                    with nogil:
                        got = self._take_wakeups(0)
                        err = errno
                if got > 0:
                    return 0
                if got == 0:
                    if writing:
                        raise BrokenPipeError("the peer closed the connection")
                    raise EOFError("the peer closed the connection")
                if got == -2:
                    return self._ring_corrupt()
                if err == EINTR:
                    self._check_signals()
                elif not fm_again(err):
                    return _os_error(err)
        finally:
            if self.shm != NULL:  # not unmapped by a close on the way out
                fm_flag_set(flag, 0)

    cdef int _fill_ring(self, Py_ssize_t need, double deadline) except -1:
        """_fill() through rx: copy, spin on the ring, then sleep until the
        peer rings.  Precondition: rbuf can hold need bytes."""
        cdef int slot, outcome, budget
        cdef double t, until, calm
        cdef bint yielded
        while self.rend - self.rstart < need:
            if self._detour_here():
                # the stream goes on through the socket: read it as a
                # connection without rings would
                self._detour_in(deadline, True)
                continue
            if self._ring_read() > 0:
                continue
            outcome = SPIN_OFF
            budget = self.spin.now
            if self.rend > self.rstart:
                budget = _half_frame_budget(&self.spin, self._spin_us)
            if budget > 0:
                with nogil:
                    slot = fm_slot_enter()
                    if slot:
                        outcome = SPIN_MISSED
                        yielded = False
                        t = _now()
                        until = t + (budget + self.spin_extra) * 1e-6
                        calm = _spin_start(&self.spin, slot, self.moves, t)
                        while True:
                            if g_spin_yield and t >= calm:
                                if _yield(&self.spin, t, &yielded):
                                    outcome = SPIN_LONG_YIELD
                                    break
                            if fm_rx_ready(self.rx, self.rx_head):
                                _caught(&self.spin, yielded and fm_ring_from_here(self.rx))
                                outcome = SPIN_PAID
                                break
                            t = _now()
                            if t >= until:
                                break
                        fm_slot_leave()
                self.spin_extra = 0
            if outcome == SPIN_PAID:
                _adapt_spin(&self.spin, self._spin_us, SPIN_PAID)
                continue
            if outcome != SPIN_OFF or self._spin_us > 0:
                _adapt_spin(&self.spin, self._spin_us, outcome)
            fm_flag_set(&self.rx.reader_waiting, 1)
            if fm_rx_ready(self.rx, self.rx_head):
                fm_flag_set(&self.rx.reader_waiting, 0)
                continue
            t = _now()
            self._ring_sleep(&self.rx.reader_waiting, False, deadline)
            _quick_wake(&self.spin, self._spin_us, t, _now())
        return 0

    cdef int _ring_send_iov(self, iovec* iov, int count) except -1:
        """_send_iov() through tx (a message of DETOUR_MIN bytes or more:
        through the socket, _detour_send)."""
        cdef int64_t room
        cdef size_t n, total = 0
        cdef double deadline = -2.0
        cdef bint first = True, wake
        cdef int i
        for i in range(count):
            total += iov[i].iov_len
        if total >= DETOUR_MIN:
            return self._detour_send(iov, count, total)
        while count > 0:
            if iov[0].iov_len == 0:
                iov += 1
                count -= 1
                continue
            room = fm_ring_writable(self.tx, self.tx_tail)
            if room < 0:
                return self._ring_corrupt()
            if room > 0:
                n = iov[0].iov_len if iov[0].iov_len < <size_t>room else <size_t>room
                # a large message to a sleeping reader: wake it after a
                # first part, so that it reads while we write the rest
                wake = first and n > RING_FIRST_PUT and fm_flag_seen(&self.tx.reader_waiting)
                if wake:
                    n = RING_FIRST_PUT
                fm_ring_put(self.tx, &self.tx_tail, <unsigned char*>iov[0].iov_base, n)
                if wake:
                    self._doorbell()
                first = False
                iov[0].iov_base = <char*>iov[0].iov_base + n
                iov[0].iov_len -= n
                continue
            # full: wake the reader, and wait for room
            if fm_flag_seen(&self.tx.reader_waiting):
                self._doorbell()
            if deadline == -2.0:
                deadline = self._deadline()
            self._wait_for_tx(False, deadline)
        if fm_flag_seen(&self.tx.reader_waiting):
            self._doorbell()
        return 0

    cdef int _detour_send(self, iovec* iov, int count, size_t total) except -1:
        """_ring_send_iov() for a message of DETOUR_MIN bytes or more: once
        the peer has taken our last detour, announce this one and send it
        through the socket.  Precondition: count <= 2 * MAX_EXTERNALS + 1."""
        cdef iovec marked[2 * MAX_EXTERNALS + 2]
        cdef unsigned char mark = DETOUR_MARK
        cdef double deadline = self._deadline()
        while fm_detour_pending(self.tx):
            self._wait_for_tx(True, deadline)
        marked[0].iov_base = &mark
        marked[0].iov_len = 1
        memcpy(&marked[1], iov, count * sizeof(iovec))
        # a reader asleep on the ring is woken by the marker itself
        fm_detour_announce(self.tx, self.tx_tail, total)
        self.tx_detouring = True
        try:
            self._sock_send_iov(marked, count + 1)
        except BaseException:
            self.close()  # the stream is cut mid-message: it cannot go on
            raise
        finally:
            self.tx_detouring = False
            if self.bell_owed:
                self.bell_owed = False
                if self.fd >= 0:
                    self._doorbell()
        return 0

    cdef inline bint _tx_free(self, bint detour) noexcept nogil:
        """Whether tx has room (with detour: whether the peer has taken
        our last detour)."""
        if detour:
            return not fm_detour_pending(self.tx)
        return fm_ring_writable(self.tx, self.tx_tail) != 0

    cdef int _wait_for_tx(self, bint detour, double deadline) except -1:
        """Wait once for _tx_free(detour): take in what the peer sent us
        (so that two peers writing a lot to each other cannot block each
        other forever), spin, then sleep until the peer rings.  The caller
        looks again."""
        self._read_available()
        if self._ring_spin_for_room(detour):
            return 0
        fm_flag_set(&self.tx.writer_waiting, 1)
        if self._tx_free(detour):
            fm_flag_set(&self.tx.writer_waiting, 0)
            return 0
        return self._ring_sleep(&self.tx.writer_waiting, True, deadline)

    cdef bint _ring_spin_for_room(self, bint detour) noexcept:
        """Spin (as a reader spins) until _tx_free(detour); whether it
        came.  A reader that is awake frees room within microseconds, and
        a message that fills the ring crosses it in many such turns."""
        cdef int slot
        cdef double t, until, calm
        cdef bint room = False, switched = False, long_yield = False
        if self.spin.now == 0:
            return False
        with nogil:
            slot = fm_slot_enter()
            if slot:
                t = _now()
                until = t + _bulk_budget(self._spin_us) * 1e-6
                calm = t + (CALM_SPIN_S if slot == SLOT_FULL else 0.0)
                while True:
                    if self._tx_free(detour):
                        room = True
                        break
                    if t >= until:
                        break
                    if g_spin_yield and t >= calm:
                        if _yield(&self.spin, t, &switched):
                            long_yield = True
                            break
                    t = _now()
                fm_slot_leave()
        if long_yield:
            # counted as the other spins count it: where yields keep losing
            # the CPU (a busy process beside us), spinning stops
            _adapt_spin(&self.spin, self._spin_us, SPIN_LONG_YIELD)
        return room

    cdef int _grow_rbuf(self) except -1:
        """Make room at the end of rbuf: compact, or double it if full."""
        if self.rstart > 0:
            memmove(self.rbuf, self.rbuf + self.rstart, self.rend - self.rstart)
            self.rend -= self.rstart
            self.rstart = 0
        else:
            self.rbuf = <unsigned char*>_realloc_or_raise(self.rbuf, self.rcap * 2)
            self.rcap *= 2
        return 0

    cdef int _fill(self, Py_ssize_t need, double deadline) except -1:
        """Read until rbuf holds at least need unconsumed bytes.
        Raises EOFError if the peer closes first."""
        cdef ssize_t got
        cdef int err
        cdef Py_ssize_t have, space
        cdef int slot, outcome
        self._check_open()
        if self.rstart + need > self.rcap:
            # compact first, grow only if that is not enough
            have = self.rend - self.rstart
            memmove(self.rbuf, self.rbuf + self.rstart, have)
            self.rstart = 0
            self.rend = have
            if need > self.rcap:
                self.rbuf = <unsigned char*>_realloc_or_raise(self.rbuf, need)
                self.rcap = need
        if self.pyio:
            return self._fill_pyio(need, deadline)
        if self.rx != NULL:
            return self._fill_ring(need, deadline)
        while self.rend - self.rstart < need:
            space = self.rcap - self.rend
            outcome = SPIN_OFF
            if (self.spin.now == 0 or fm_slot_max == 0) and deadline < 0:
                # neither spinning (nor able to: one CPU) nor a deadline:
                # straight to the blocking recv below, which returns at once
                # if bytes are there
                got = -1
                err = EAGAIN
            else:
                # non-blocking, so the GIL stays: releasing it would hand it
                # to another thread and cost a switch to take it back
                got = c_recv(self.fd, self.rbuf + self.rend, space, MSG_DONTWAIT)
                err = errno
            if got < 0 and fm_again(err) and self.spin.now > 0:
                with nogil:
                    slot = fm_slot_enter()
                    if slot:
                        outcome = SPIN_PAID
                        got = self._spin_recv(self.rbuf + self.rend, space, slot, &outcome)
                        err = errno
                        fm_slot_leave()
                    self.spin_extra = 0
            if got < 0 and fm_again(err):
                if outcome != SPIN_OFF or self._spin_us > 0:
                    _adapt_spin(&self.spin, self._spin_us, outcome)
                if deadline >= 0:
                    self._wait(POLLIN, deadline)
                    continue
                # no deadline: block in recv itself, a syscall fewer than
                # poll then recv (a signal interrupts it with EINTR)
                self._check_signals()
                with nogil:
                    got = c_recv(self.fd, self.rbuf + self.rend, space, 0)
                    err = errno
                if got < 0 and fm_again(err):
                    self._wait(POLLIN, deadline)
                    continue
            elif outcome == SPIN_PAID:
                _adapt_spin(&self.spin, self._spin_us, SPIN_PAID)
            if got > 0:
                self.rend += got
            elif got == 0:
                raise EOFError("the peer closed the connection")
            elif err == EINTR:
                self._check_signals()
            else:
                return _os_error(err)
        return 0

    cdef int _pyio_timeout(self, double deadline) except -1:
        cdef double left
        if deadline < 0:
            self.sock.settimeout(None)
            return 0
        left = deadline - _now()
        if left <= 0:
            self.close()
            raise TimeoutError("timed out after %.3g s waiting for the peer" % self._timeout)
        self.sock.settimeout(left)
        return 0

    cdef int _fill_pyio(self, Py_ssize_t need, double deadline) except -1:
        """_fill() for a TLS socket. Precondition: rbuf can hold need bytes
        from rstart."""
        cdef ssize_t got
        while self.rend - self.rstart < need:
            self._pyio_timeout(deadline)
            view = PyMemoryView_FromMemory(<char*>self.rbuf + self.rend, self.rcap - self.rend,
                                           PyBUF_WRITE)
            try:
                got = self.sock.recv_into(view)
            except (TimeoutError, _socket.timeout):
                self.close()
                raise TimeoutError("timed out after %.3g s waiting for the peer" % self._timeout)
            except BaseException:
                self.close()
                raise
            finally:
                view.release()
            if got == 0:
                raise EOFError("the peer closed the connection")
            self.rend += got
        return 0

    cdef int _send_pyio(self, iovec* iov, int count) except -1:
        """_send_iov() for a TLS socket."""
        cdef double deadline = self._deadline()
        cdef int i
        data = b"".join([PyBytes_FromStringAndSize(<char*>iov[i].iov_base, iov[i].iov_len)
                         for i in range(count)])
        self._pyio_timeout(deadline)
        try:
            self.sock.sendall(data)
        except (TimeoutError, _socket.timeout):
            self.close()
            raise TimeoutError("timed out after %.3g s sending to the peer" % self._timeout)
        return 0

    cdef int _recv_frame(self, Py_ssize_t limit, Py_ssize_t* start, Py_ssize_t* size) except -1:
        """Receive one frame; its body is rbuf[start:start + size] until the
        next receive. Precondition: the connection is open."""
        cdef Py_ssize_t header = 0, body = 0
        cdef double deadline = self._deadline()
        if self.rend - self.rstart < 4:
            self._fill(4, deadline)
        try:
            _parse_header(self.rbuf + self.rstart, self.rend - self.rstart, limit, &header, &body)
            if header == 0:
                self._fill(12, deadline)
                _parse_header(self.rbuf + self.rstart, self.rend - self.rstart, limit, &header,
                              &body)
        except ProtocolError:
            # a refused header cannot be skipped: the stream is lost
            self.close()
            raise
        if self.rend - self.rstart < header + body:
            self._fill(header + body, deadline)
        start[0] = self.rstart + header
        size[0] = body
        self.rstart += header + body
        if self.rstart == self.rend:
            self.rstart = self.rend = 0
        return 0

    cdef void _shrink(self) noexcept:
        """Give back a buffer that one large message grew, once it is empty."""
        cdef unsigned char* nbuf
        if self.rcap > (4 << 20) and self.rstart == self.rend:
            nbuf = <unsigned char*>PyMem_Realloc(self.rbuf, 16384)
            if nbuf != NULL:
                self.rbuf = nbuf
                self.rcap = 16384
                self.rstart = self.rend = 0

    # -- sending ------------------------------------------------------------

    cdef int _read_available(self) except -1:
        """Read what has arrived into rbuf without blocking (growing it if
        full): used while a send waits, so that two peers that both write
        a lot cannot block each other forever.  Returns 1 if the peer has
        closed its side (nothing more will come), else 0."""
        cdef ssize_t got
        if self.rend == self.rcap:
            self._grow_rbuf()
        if self.rx != NULL:
            if self._ring_read() > 0:
                return 0
            got = self._take_wakeups(MSG_DONTWAIT)
            if got == -2:
                return self._ring_corrupt()
            return got == 0
        with nogil:
            got = c_recv(self.fd, self.rbuf + self.rend, self.rcap - self.rend, MSG_DONTWAIT)
        if got > 0:
            self.rend += got
        return got == 0

    cdef int _send_iov(self, iovec* iov, int count) except -1:
        """Send iov[0:count] completely, resuming after partial writes.
        Precondition: the connection is open."""
        if self.pyio:
            return self._send_pyio(iov, count)
        if self.tx != NULL:
            return self._ring_send_iov(iov, count)
        return self._sock_send_iov(iov, count)

    cdef int _sock_send_iov(self, iovec* iov, int count) except -1:
        """_send_iov() through the socket."""
        cdef ssize_t sent
        cdef msghdr msg
        cdef int err
        cdef short revents, events = POLLIN | POLLOUT
        cdef double deadline = -2.0
        if count == 1 and iov[0].iov_len <= <size_t>c_copy_threshold:
            # the common case: one small buffer, one non-blocking send() with
            # the GIL kept; fall through if it was partial
            sent = c_send(self.fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL)
            err = errno
            if sent >= 0 and <size_t>sent == iov[0].iov_len:
                return 0
            if sent > 0:
                iov[0].iov_base = <char*>iov[0].iov_base + sent
                iov[0].iov_len -= sent
        while count > 0:
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = count
            with nogil:
                sent = sendmsg(self.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
                err = errno
            if sent >= 0:
                while count > 0 and <size_t>sent >= iov[0].iov_len:
                    sent -= iov[0].iov_len
                    iov += 1
                    count -= 1
                if count > 0:
                    iov[0].iov_base = <char*>iov[0].iov_base + sent
                    iov[0].iov_len -= sent
            elif fm_again(err):
                if deadline == -2.0:
                    deadline = self._deadline()
                revents = self._wait(events, deadline)
                if (revents & POLLIN) and not (revents & POLLOUT) and self._read_available():
                    # the peer has shut its side: its EOF would keep POLLIN
                    # up, so wait for room alone (a peer that still reads
                    # makes room; the deadline holds either way)
                    events = POLLOUT
            elif err == EINTR:
                PyErr_CheckSignals()
            else:
                return _os_error(err)
        return 0

    cdef int _send_buffer(self) except -1:
        """Send all of wbuf (one or more frames) with one sendmsg, large
        bytes values in place; then empty it."""
        cdef iovec iov[2 * MAX_EXTERNALS + 1]
        cdef int count = 0
        cdef Py_ssize_t pos = 0, offset
        cdef WriteBuffer w = self.wbuf
        cdef bytes data
        try:
            self._check_open()
            # the peer answers a large message only once it has taken it in
            self.spin_extra = <int>min((w.length + w.ext_bytes) // SPIN_EXTRA_BYTES, SPIN_EXTRA_MAX_US)
            if w.ext_bytes == 0:
                iov[0].iov_base = w.buf
                iov[0].iov_len = w.length
                return self._send_iov(iov, 1)
            for offset, data in w.externals:
                if offset > pos:
                    iov[count].iov_base = w.buf + pos
                    iov[count].iov_len = offset - pos
                    count += 1
                iov[count].iov_base = PyBytes_AS_STRING(data)
                iov[count].iov_len = PyBytes_GET_SIZE(data)
                count += 1
                pos = offset
            if w.length > pos:
                iov[count].iov_base = w.buf + pos
                iov[count].iov_len = w.length - pos
                count += 1
            return self._send_iov(iov, count)
        finally:
            w.reset()

    cdef inline Py_ssize_t _externals(self) noexcept:
        return len(self.wbuf.externals)

    cdef int _rollback(self, Py_ssize_t start, Py_ssize_t externals) except -1:
        """Forget a frame whose encoding failed half-way."""
        cdef WriteBuffer w = self.wbuf
        w.length = start
        while len(w.externals) > externals:
            w.ext_bytes -= PyBytes_GET_SIZE(w.externals.pop()[1])
        return 0

    cdef int _queue_request(self, int kind, uint64_t ident, method, args, kwds) except -1:
        """Append one request frame to wbuf (not sent yet)."""
        cdef Py_ssize_t externals = self._externals()
        cdef Py_ssize_t start = self.wbuf.begin_frame()
        try:
            self.codec.encode_request_into(self.wbuf, kind, ident, method, args, kwds)
        except BaseException:
            self._rollback(start, externals)
            raise
        return self.wbuf.end_frame(start)

    cdef int _queue_response(self, int kind, value) except -1:
        """Append one response frame to wbuf (not sent yet)."""
        cdef Py_ssize_t externals = self._externals()
        cdef Py_ssize_t start = self.wbuf.begin_frame()
        try:
            self.codec.encode_response_into(self.wbuf, kind, value)
        except BaseException:
            self._rollback(start, externals)
            raise
        return self.wbuf.end_frame(start)

    cdef bint _has_frame(self) noexcept:
        """Whether rbuf already holds another whole (small) frame."""
        cdef Py_ssize_t avail = self.rend - self.rstart
        cdef int n
        if avail < 4:
            return False
        n = fm_get_i32be(self.rbuf + self.rstart)
        return n >= 0 and n <= self.max_message and avail - 4 >= n

    cdef int _frame_state(self) noexcept:
        """For a hub: 1 when rbuf holds the whole next frame, 0 when more
        bytes must come first, -1 when its header needs _recv_frame()'s
        care (too large, malformed, or a frame of over 2 GiB)."""
        cdef Py_ssize_t avail = self.rend - self.rstart
        cdef int n
        if avail < 4:
            return 0
        n = fm_get_i32be(self.rbuf + self.rstart)
        if n < 0 or n > self.max_message:
            return -1
        return 1 if avail - 4 >= n else 0

    cdef Py_ssize_t _hub_read_ring(self, bint drain) except -2:
        """_hub_read() with rings: what rx holds.  The socket (wake-up bytes,
        or EOF) is read when rx holds nothing, or when drain says wake-ups
        may be waiting there: a syscall the common case need not pay."""
        cdef Py_ssize_t n = self._ring_read()
        cdef ssize_t got
        if n > 0 and not drain:
            return n
        got = self._take_wakeups(MSG_DONTWAIT)
        if got == -2:
            return self._ring_corrupt()
        if n > 0:
            return n
        return 0 if got == 0 else -1

    cdef Py_ssize_t _hub_read(self, bint drain=True) except -2:
        """One non-blocking read, with room made for the whole frame in
        progress. Returns the bytes read, 0 at EOF, -1 if none had come.
        With rings, drain: wake-up bytes may wait on the socket."""
        cdef Py_ssize_t have = self.rend - self.rstart
        cdef Py_ssize_t need = 4096
        cdef ssize_t got
        self._check_open()
        if self._frame_state() == 0 and have >= 4:
            need = 4 + fm_get_i32be(self.rbuf + self.rstart) - have
        if self.rcap - self.rend < need:
            memmove(self.rbuf, self.rbuf + self.rstart, have)
            self.rstart = 0
            self.rend = have
            if self.rcap - have < need:
                self.rbuf = <unsigned char*>_realloc_or_raise(self.rbuf, have + need)
                self.rcap = have + need
        if self.rx != NULL:
            return self._hub_read_ring(drain)
        got = c_recv(self.fd, self.rbuf + self.rend, self.rcap - self.rend, MSG_DONTWAIT)
        if got > 0:
            self.rend += got
            return got
        if got == 0:
            return 0
        if fm_again(errno) or errno == EINTR:
            return -1
        PyErr_SetFromErrno(OSError)
        return -2

    def send_bytes(self, buf, Py_ssize_t offset=0, size=None):
        cdef const unsigned char[::1] view = memoryview(buf).cast("B")
        cdef Py_ssize_t n = view.shape[0] - offset if size is None else size
        cdef iovec iov[2]
        cdef bytes head
        cdef Py_ssize_t start
        if offset < 0 or n < 0 or offset + n > view.shape[0]:
            raise ValueError("offset/size out of range")
        self._check_open()
        self.wbuf.reset()
        if n <= c_copy_threshold:
            start = self.wbuf.begin_frame()
            if n:
                self.wbuf.write_raw(&view[offset], n)
            self.wbuf.end_frame(start)
            return self._send_buffer()
        head = _header(n)
        iov[0].iov_base = PyBytes_AS_STRING(head)
        iov[0].iov_len = PyBytes_GET_SIZE(head)
        iov[1].iov_base = <void*>&view[offset]
        iov[1].iov_len = n
        return self._send_iov(iov, 2)

    def recv_bytes(self, maxlength=None):
        cdef Py_ssize_t start, size
        cdef Py_ssize_t limit = self.max_message
        if maxlength is not None:
            if maxlength < 0:
                raise ValueError("negative maxlength")
            limit = min(limit, maxlength)
        self._check_open()
        self._recv_frame(limit, &start, &size)
        data = PyBytes_FromStringAndSize(<char*>self.rbuf + start, size)
        self._shrink()
        return data

    def send(self, obj):
        cdef Py_ssize_t start
        self._check_open()
        self.wbuf.reset()
        start = self.wbuf.begin_frame()
        self.codec.encode_top(self.wbuf, obj)
        self.wbuf.end_frame(start)
        self._send_buffer()

    def recv(self):
        cdef Py_ssize_t start, size, pos = 0
        self._check_open()
        self._recv_frame(self.max_message, &start, &size)
        try:
            return self.codec.decode_all(self.rbuf + start, size, &pos)
        finally:
            self._shrink()

    def poll(self, timeout=0.0):
        cdef pollfd pfd
        cdef int rc, ms
        self._check_open()
        if self.rend > self.rstart or (self.pyio and self.sock.pending()):
            return True
        if self.rx != NULL:
            return self._poll_ring(timeout)
        ms = -1 if timeout is None else max(0, <int>(timeout * 1000.0))
        pfd.fd = self.fd
        pfd.events = POLLIN
        with nogil:
            rc = poll(&pfd, 1, ms)
        if rc < 0:
            PyErr_SetFromErrno(OSError)
        return rc > 0

    cdef bint _poll_ring(self, timeout) except -1:
        """poll() with rings: True when rx holds bytes or the peer closed."""
        cdef pollfd pfd
        cdef int rc, ms
        cdef ssize_t got
        cdef double deadline = -1.0 if timeout is None else _now() + max(0.0, timeout)
        pfd.fd = self.fd
        pfd.events = POLLIN
        while True:
            fm_flag_set(&self.rx.reader_waiting, 1)
            try:
                if fm_rx_ready(self.rx, self.rx_head) or self.rx_detour_left:
                    return True
                ms = -1 if deadline < 0 else max(0, <int>((deadline - _now()) * 1000.0))
                with nogil:
                    rc = poll(&pfd, 1, ms)
                if rc < 0:
                    if errno != EINTR:
                        PyErr_SetFromErrno(OSError)
                    PyErr_CheckSignals()
                    continue
                if rc == 0:
                    return fm_rx_ready(self.rx, self.rx_head)
                got = self._take_wakeups(MSG_DONTWAIT)
                if got == 0:
                    return True
                if got == -2:
                    return self._ring_corrupt()
            finally:
                if self.shm != NULL:
                    fm_flag_set(&self.rx.reader_waiting, 0)

    def send_request(self, int kind, uint64_t ident, method, args=(), kwds=None):
        self._check_open()
        self.wbuf.reset()
        self._queue_request(kind, ident, method, args, kwds)
        self._send_buffer()

    def recv_response(self):
        cdef Py_ssize_t start, size
        self._check_open()
        self._recv_frame(self.max_message, &start, &size)
        try:
            return self.codec.decode_response_at(self.rbuf + start, size)
        finally:
            self._shrink()

    def call(self, uint64_t ident, method, args=(), kwds=None):
        """Send a request and wait for its response: (kind, value)."""
        cdef Py_ssize_t start, size
        self._check_open()
        self.wbuf.reset()
        self._queue_request(REQ_CALL, ident, method, args, kwds)
        self._send_buffer()
        self._recv_frame(self.max_message, &start, &size)
        try:
            return self.codec.decode_response_at(self.rbuf + start, size)
        finally:
            self._shrink()


# ---------------------------------------------------------------------------
# Pipelined calls

@cython.final
cdef class Pending:
    """The reply to a pipelined call; result() waits for it if need be."""
    cdef Pipeline pipe      # the pipeline that sent the call
    cdef int kind           # 0 until the reply has come
    cdef object value
    cdef bint seen          # result() was called

    def done(self):
        return self.kind != 0

    def result(self):
        """The call's result, or its exception raised."""
        self.seen = True
        if self.kind == 0:
            self.pipe._wait_for(self)
        if self.kind == RESP_RETURN:
            return self.value
        return self.pipe.resolve(self.kind, self.value)

    def __repr__(self):
        return "<Pending %s>" % ("done" if self.kind else "waiting")


@cython.final
cdef class Pipeline:
    """Stands in for a Connection: call() sends without waiting and returns
    (RESP_RETURN, Pending).  Requests leave in batches; replies are read in
    order, when more than ``window`` are outstanding, when a result is
    asked for, and by sync()."""
    cdef readonly Connection conn
    cdef readonly object resolve    # (kind, value) -> result or raise, for non-RETURN replies
    cdef list waiting               # Pending objects whose replies are not read yet
    cdef Py_ssize_t head            # waiting[head] is the oldest unread
    cdef Py_ssize_t queued          # requests in conn.wbuf, not sent yet
    cdef Py_ssize_t window          # most replies outstanding
    cdef list failed                # Pending objects whose reply is an error

    def __init__(self, Connection conn, resolve, Py_ssize_t window=4096):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.conn = conn
        self.resolve = resolve
        self.waiting = []
        self.failed = []
        self.window = window
        conn.wbuf.reset()

    @property
    def closed(self):
        return self.conn.closed

    def close(self):
        self.conn.close()

    @property
    def outstanding(self):
        return len(self.waiting) - self.head

    cdef int _flush(self) except -1:
        if self.queued:
            self.queued = 0
            self.conn._send_buffer()
        return 0

    cdef int _read_one(self) except -1:
        cdef Pending p
        kind, value = self.conn.recv_response()
        p = self.waiting[self.head]
        self.waiting[self.head] = None
        self.head += 1
        if self.head == len(self.waiting):
            self.waiting.clear()
            self.head = 0
        p.value = value
        p.kind = kind
        if kind == RESP_ERROR or kind == RESP_FAILURE:
            self.failed.append(p)
        return 0

    cdef int _wait_for(self, Pending p) except -1:
        self._flush()
        while p.kind == 0:
            self._read_one()
        return 0

    def call(self, uint64_t ident, method, args=(), kwds=None):
        cdef Pending p
        if ident == 0:
            # the manager's own requests (create, incref...) stay synchronous
            self.sync()
            return self.conn.call(ident, method, args, kwds)
        self.conn._queue_request(REQ_CALL, ident, method, args, kwds)
        self.queued += 1
        p = Pending()
        p.pipe = self
        self.waiting.append(p)
        if self.queued >= 512 or self.conn.wbuf.total() >= c_copy_threshold:
            self._flush()
        if len(self.waiting) - self.head > self.window:
            self._flush()
            while len(self.waiting) - self.head > self.window // 2:
                self._read_one()
        return (RESP_RETURN, p)

    def send_request(self, int kind, uint64_t ident, method, args=(), kwds=None):
        if kind != REQ_ONEWAY:
            raise ValueError("a pipeline sends calls with call()")
        self.conn._queue_request(kind, ident, method, args, kwds)
        self.queued += 1
        if self.queued >= 512 or self.conn.wbuf.total() >= c_copy_threshold:
            self._flush()

    def sync(self):
        """Send what is queued and read every outstanding reply."""
        self._flush()
        while self.head < len(self.waiting):
            self._read_one()

    def unseen_errors(self):
        """Failed calls whose result() nobody asked for."""
        return [p for p in self.failed if not (<Pending>p).seen]


# ---------------------------------------------------------------------------
# The server's loop for one connection

@cython.final
cdef class Entry:
    """One row of a server's object table: a shared object and how it may
    be called (see serve_connection)."""
    cdef readonly object obj                # the shared object
    cdef readonly object exposed            # the method names callers may call (a set)
    cdef readonly object method_to_typeid   # {method: typeid} whose results are shared in turn, or None
    cdef readonly bint thread_bound         # its calls need the connection's own thread (see Hub)

    def __init__(self, obj, exposed, method_to_typeid=None, bint thread_bound=False):
        self.obj = obj
        self.exposed = exposed
        self.method_to_typeid = method_to_typeid
        self.thread_bound = thread_bound

    def __repr__(self):
        return "Entry(%r, %r, %r, %r)" % (self.obj, self.exposed, self.method_to_typeid,
                                          self.thread_bound)


def serve_connection(Connection conn, dict table, Entry control, fallback, make_proxy):
    """Receive, decode, look up, check exposure, call, encode, send; until
    the peer closes (see _wire.pyi for the contract)."""
    cdef Py_ssize_t start, size
    cdef _Reply reply = _Reply()
    while True:
        try:
            conn._recv_frame(conn.max_message, &start, &size)
        except EOFError:
            return None
        except ProtocolError:
            _flush_before_failing(conn)
            raise
        _serve_frame(conn, start, size, table, control, fallback, make_proxy, reply)
        # replies to requests that arrived together leave together
        if conn.wbuf.length and (not conn._has_frame() or conn.wbuf.total() >= c_copy_threshold):
            conn._send_buffer()


cdef int _serve_frame(Connection conn, Py_ssize_t start, Py_ssize_t size, dict table,
                      Entry control, fallback, make_proxy, _Reply reply) except -1:
    """Decode and run the request in rbuf[start:start + size]; queue its
    reply in wbuf (not sent yet)."""
    cdef int kind, rkind
    cdef tuple request, substitute
    cdef object result
    try:
        request = conn.codec.decode_request_at(conn.rbuf + start, size)
    except ProtocolError:
        _flush_before_failing(conn)
        raise
    except Exception:
        # well framed, but its contents would not decode (an unpickling
        # error, say): the caller learns why, the connection goes on
        kind = conn.rbuf[start]
        conn._shrink()
        rkind = RESP_FAILURE
        result = _traceback.format_exc()
    else:
        conn._shrink()
        kind = request[0]
        rkind = _dispatch(request, table, control, fallback, make_proxy, reply)
        result = reply.value
        reply.value = None
    if kind != REQ_ONEWAY:
        try:
            conn._queue_response(rkind, result)
        except Exception:
            substitute = _unencodable(rkind, result)
            conn._queue_response(substitute[0], substitute[1])
    return 0


cdef void _flush_before_failing(Connection conn) noexcept:
    """The replies to the requests before a bad one still go out."""
    if conn.wbuf.length and conn.fd >= 0:
        try:
            conn._send_buffer()
        except Exception:
            pass
    conn.wbuf.reset()


cdef tuple _unencodable(int rkind, result):
    """The reply to send when rkind/result would not encode: an exception
    without pickle is sent by builtin type name and args, if it can be;
    else its traceback text goes as a failure."""
    if rkind == RESP_ERROR:
        exc, tb = result
        name = type(exc).__name__
        if type(exc).__module__ == "builtins" and all(
                type(a) in (str, int, float, bool, bytes, type(None)) for a in exc.args):
            return (RESP_ERROR, (name, exc.args, tb))
        return (RESP_FAILURE, tb)
    return (RESP_FAILURE, _traceback.format_exc())


@cython.final
cdef class _Reply:
    """The reply _dispatch() made: one per connection, reused."""
    cdef object value


cdef int _dispatch(tuple request, dict table, Entry control, fallback, make_proxy,
                   _Reply out) except -1:
    """Run one decoded request; store the reply value in out and return
    the reply kind."""
    cdef Entry entry
    cdef object ident = request[1], method = request[2], args = request[3], kwds = request[4]
    cdef object obj, exposed, m2t, typeid, result
    try:
        entry = control if ident == 0 else <Entry?>table[ident]
        obj = entry.obj
        exposed = entry.exposed
    except Exception:
        out.value = _traceback.format_exc()
        return RESP_FAILURE
    if method not in exposed:
        try:
            out.value = fallback(ident, obj, method, args, kwds if kwds is not None else {})
            return RESP_RETURN
        except Exception:
            out.value = _traceback.format_exc()
            return RESP_FAILURE
    if type(args) is not tuple:
        args = tuple(args)
    try:
        if kwds is None:
            result = getattr(obj, method)(*args)
        else:
            result = getattr(obj, method)(*args, **kwds)
    except Exception as exc:
        out.value = (exc, _traceback.format_exc())
        return RESP_ERROR
    m2t = entry.method_to_typeid
    if m2t is not None:
        typeid = m2t.get(method)
        if typeid is not None:
            try:
                out.value = make_proxy(typeid, result)
                return RESP_PROXY
            except Exception:
                out.value = _traceback.format_exc()
                return RESP_FAILURE
    out.value = result
    return RESP_RETURN


# ---------------------------------------------------------------------------
# The hub: one thread serves every idle-or-quick connection

cdef enum:
    MAX_EVENTS = 64
    # with rings to watch, the spinning loop asks epoll (for sockets and
    # new connections) only every this many turns
    RING_TURNS_PER_EPOLL = 8
    # _Hub._serve_ready() outcomes
    SERVED = 0          # go on with the next ready connection
    REPLACED = 1        # this thread was replaced mid-call: it now owns the connection
    OWN_THREAD = 2      # the connection needs a thread of its own from now on


@cython.final
cdef class _Served:
    """A connection in a hub's care."""
    cdef Connection conn
    cdef Entry control
    cdef object make_proxy
    cdef object finished        # finished(exc or None), once, when serving ends
    cdef uint64_t token
    cdef bint ended
    cdef _Reply reply
    cdef int ring_at            # its place in the hub's ring table, -1 if none
    cdef long drained           # the hub's sleeps when its socket was last read

    def __cinit__(self):
        self.ring_at = -1
        self.drained = -1


@cython.final
cdef class Hub:
    """Serves many connections from one loop thread (see _wire.pyi).

    A thread per connection costs a wake-up and a GIL hand-off for every
    call; one thread that waits on all connections at once (spinning
    first, then in epoll) serves whatever is ready without either.  Calls
    that may block, or that must run on one thread throughout, would stall
    everyone here, so a connection leaves the hub for a thread of its own
    when (a) a request names a thread-bound object (Entry.thread_bound: locks,
    queues, ...), or (b) a call or send runs long: the watchdog then starts
    a new loop thread and the old one stays with that connection."""
    cdef int epfd
    cdef int wakefd                 # close() writes here; token 0
    cdef int parkfd                 # the watchdog sleeps on this while the hub is idle
    cdef dict table
    cdef object fallback
    cdef object start_thread        # start_thread(fn, *args): run fn in a new daemon thread
    cdef dict served                # token -> _Served
    cdef uint64_t tokens
    cdef bint partial               # a frame was left half in: the next wait spins its whole budget
    cdef public int spin_us
    cdef SpinState spin
    cdef long generation            # bumped each time a stuck loop thread is replaced
    cdef long call_seq              # bumped for every connection the loop serves
    cdef long busy                  # 1 while the loop serves a connection
    cdef long blocked               # 1 while the loop sleeps in epoll_wait
    cdef long parked                # 1 while the watchdog sleeps on parkfd
    cdef bint loop_missing          # a replacement loop thread could not be started
    cdef _Served current            # the connection being served
    cdef _Served last               # the connection served last
    cdef object loop_tid            # native id of the loop thread
    cdef bint started
    cdef readonly bint closed
    cdef readonly long replacements
    cdef readonly long handovers
    # connections with shared-memory rings, which the loop looks at itself
    # (spinning, and once more before it sleeps): changed only by the loop
    # thread, or by the watchdog while no loop thread runs the loop
    cdef fm_ring** ring_rx
    cdef uint64_t** ring_head
    cdef uint64_t* ring_token
    cdef int nrings
    cdef int ring_cap
    cdef long sleeps                # times the loop raised the rings' flags to sleep

    def __cinit__(self):
        self.epfd = self.wakefd = self.parkfd = -1

    def __init__(self, dict table, fallback, start_thread, spin_us=None):
        cdef epoll_event ev
        self.table = table
        self.fallback = fallback
        self.start_thread = start_thread
        self.served = {}
        self.spin_us = self.spin.now = g_spin_us if spin_us is None else spin_us
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        self.parkfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.epfd < 0 or self.wakefd < 0 or self.parkfd < 0:
            PyErr_SetFromErrno(OSError)
        ev.events = EPOLLIN
        ev.data.u64 = 0
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.wakefd, &ev) < 0:
            PyErr_SetFromErrno(OSError)

    def __dealloc__(self):
        for fd in (self.epfd, self.wakefd, self.parkfd):
            if fd >= 0:
                c_close(fd)
        PyMem_Free(self.ring_rx)
        PyMem_Free(self.ring_head)
        PyMem_Free(self.ring_token)

    cdef int _ring_add(self, _Served s) except -1:
        """Look at s's ring from now on (on the loop thread)."""
        cdef int cap
        if s.ring_at >= 0 or s.conn.rx == NULL or s.ended:
            return 0
        if self.nrings == self.ring_cap:
            cap = max(16, 2 * self.ring_cap)
            self.ring_rx = <fm_ring**>_realloc_or_raise(self.ring_rx, cap * sizeof(fm_ring*))
            self.ring_head = <uint64_t**>_realloc_or_raise(self.ring_head, cap * sizeof(uint64_t*))
            self.ring_token = <uint64_t*>_realloc_or_raise(self.ring_token, cap * sizeof(uint64_t))
            self.ring_cap = cap
        self.ring_rx[self.nrings] = s.conn.rx
        self.ring_head[self.nrings] = &s.conn.rx_head
        self.ring_token[self.nrings] = s.token
        s.ring_at = self.nrings
        self.nrings += 1
        # the loop is awake: the client need not ring
        fm_flag_set(&s.conn.rx.reader_waiting, 0)
        return 0

    cdef void _ring_remove(self, _Served s) noexcept:
        cdef int i = s.ring_at, last = self.nrings - 1
        cdef _Served moved
        if i < 0 or i > last:
            return
        s.ring_at = -1
        if i != last:
            self.ring_rx[i] = self.ring_rx[last]
            self.ring_head[i] = self.ring_head[last]
            self.ring_token[i] = self.ring_token[last]
            moved = self.served.get(self.ring_token[i])
            if moved is not None:
                moved.ring_at = i
        self.nrings = last

    cdef int _rings_ready(self, epoll_event* events, int n) noexcept nogil:
        """Add an event for each ring that holds bytes (or whose positions
        are impossible: reading it will say so) to events[0:n]."""
        cdef int i
        for i in range(self.nrings):
            if n >= MAX_EVENTS:
                break
            if fm_ring_readable(self.ring_rx[i], self.ring_head[i][0]) != 0:
                events[n].data.u64 = self.ring_token[i]
                n += 1
        return n

    cdef bint _ready_from_here(self) noexcept nogil:
        """Whether the first ring that holds bytes was written from our
        CPU (see CALM_LATE_MAX); with none (a socket's event), True: a
        yield that ran another thread is all we can tell."""
        cdef int i
        for i in range(self.nrings):
            if fm_ring_readable(self.ring_rx[i], self.ring_head[i][0]) != 0:
                return fm_ring_from_here(self.ring_rx[i])
        return True

    cdef void _rings_waiting(self, uint32_t v) noexcept nogil:
        cdef int i
        for i in range(self.nrings):
            fm_flag_set(&self.ring_rx[i].reader_waiting, v)

    def add(self, Connection conn, Entry control, make_proxy, finished):
        """Serve conn from now on; finished(exc) is called when that ends."""
        cdef epoll_event ev
        cdef _Served s = _Served()
        s.conn, s.control, s.make_proxy, s.finished = conn, control, make_proxy, finished
        s.reply = _Reply()
        if self.closed:
            raise OSError("the hub is closed")
        if not self.started:
            self.started = True
            self.start_thread(self.run)
            self.start_thread(self.watch)
        if conn.pyio or self.epfd < 0:
            self.start_thread(self._own_thread, s)
            return
        self.tokens += 1
        s.token = self.tokens
        if conn.rx != NULL:
            # until the loop looks at this ring itself, the client rings
            # for every message: the loop learns of it through epoll
            fm_flag_set(&conn.rx.reader_waiting, 1)
        self.served[s.token] = s
        ev.events = EPOLLIN
        ev.data.u64 = s.token
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, conn.fd, &ev) < 0:
            del self.served[s.token]
            PyErr_SetFromErrno(OSError)

    def close(self):
        """Stop the loop and the watchdog (connections are the caller's)."""
        cdef uint64_t one = 1
        self.closed = True
        c_write(self.wakefd, &one, 8)
        c_write(self.parkfd, &one, 8)

    def stats(self):
        return {"connections": len(self.served), "replacements": self.replacements,
                "handovers": self.handovers}

    # -- the loop -------------------------------------------------------------

    def run(self):
        """The loop thread: until closed, or replaced by the watchdog."""
        cdef long gen = self.generation
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i, outcome
        cdef uint64_t token
        cdef _Served s
        import threading
        self.loop_tid = threading.get_native_id()
        while not self.closed:
            n = self._wait(events)
            for i in range(n):
                token = events[i].data.u64
                if token == 0:
                    continue
                s = self.served.get(token)
                if s is None:
                    continue
                outcome = self._serve_ready(s, gen)
                if outcome == OWN_THREAD:
                    self.handovers += 1
                    self._forget(s)
                    try:
                        self.start_thread(self._own_thread, s)
                    except BaseException as exc:  # no thread to be had: drop s, not the loop
                        self._end(s, exc)
                elif outcome == REPLACED:
                    self._own_thread(s)
                    return

    cdef int _wait(self, epoll_event* events) except -1:
        """Ready events: polled (GIL kept), then spun for (GIL released),
        then waited for in epoll.  The spin also tries recv on the
        connection served last, whose next request is the likeliest: when
        that catches it, its event is the one returned, its bytes already
        in its buffer."""
        cdef int n = 0, lfd = -1
        cdef int slot, outcome = SPIN_OFF
        cdef double until, t, calm
        cdef bint yielded = False
        cdef unsigned int turn = 0
        cdef uint64_t one = 1
        cdef ssize_t got = -1
        cdef int err = EAGAIN
        cdef unsigned char* lbuf = NULL
        cdef size_t lspace = 0
        cdef Connection lconn
        cdef _Served ls = self.last
        cdef int budget = self.spin.now
        if self.partial:
            self.partial = False
            budget = _half_frame_budget(&self.spin, self.spin_us)
        if budget > 0 and fm_slot_max > 0:
            n = epoll_wait(self.epfd, events, MAX_EVENTS, 0)
            if n >= 0:
                n = self._rings_ready(events, n)
            if n > 0:
                return n
        if ls is not None:
            lconn = ls.conn
            if lconn.fd >= 0 and lconn.rcap > lconn.rend and (lconn.rx == NULL
                                                             or lconn.rx_detour_left > 0):
                # its socket: or, with rings, the open detour's rest
                lfd = lconn.fd
                lbuf = lconn.rbuf + lconn.rend
                lspace = lconn.rcap - lconn.rend
                if lconn.rx != NULL and lspace > lconn.rx_detour_left:
                    lspace = lconn.rx_detour_left
        if budget > 0:
            with nogil:
                slot = fm_slot_enter()
                if slot:
                    outcome = SPIN_MISSED
                    t = _now()
                    until = t + budget * 1e-6
                    calm = _spin_start(&self.spin, slot, True, t)
                    while True:
                        if lfd >= 0:
                            got = c_recv(lfd, lbuf, lspace, MSG_DONTWAIT)
                            err = errno
                            if got >= 0 or not fm_again(err):
                                _caught(&self.spin, yielded)
                                break
                        turn += 1
                        if self.nrings == 0 or turn % RING_TURNS_PER_EPOLL == 0:
                            n = epoll_wait(self.epfd, events, MAX_EVENTS, 0)
                        else:
                            n = 0
                        if n >= 0:
                            n = self._rings_ready(events, n)
                        if n > 0:
                            _caught(&self.spin, yielded and self._ready_from_here())
                            break
                        t = _now()
                        if n != 0 or t >= until:
                            break
                        if g_spin_yield and t >= calm:
                            if _yield(&self.spin, t, &yielded):
                                outcome = SPIN_LONG_YIELD
                                break
                    fm_slot_leave()
        if got >= 0 or not fm_again(err):
            if got > 0:
                if lconn.rx != NULL:
                    lconn._detour_took(got)
                else:
                    lconn.rend += got
            events[0].data.u64 = ls.token
            n = 1
        if n > 0:
            _adapt_spin(&self.spin, self.spin_us, SPIN_PAID)
            return n
        if outcome != SPIN_OFF or self.spin_us > 0:
            _adapt_spin(&self.spin, self.spin_us, outcome)
        with nogil:
            # clients ring while we sleep; a message that came before they
            # could see that is seen by the last look
            self._rings_waiting(1)
            self.sleeps += 1
            n = self._rings_ready(events, 0)
            if n == 0:
                fm_store(&self.blocked, 1)
                t = _now()
                n = epoll_wait(self.epfd, events, MAX_EVENTS, -1)
                _quick_wake(&self.spin, self.spin_us, t, _now())
                fm_store(&self.blocked, 0)
                if fm_load(&self.parked):
                    c_write(self.parkfd, &one, 8)
            self._rings_waiting(0)
        return n if n > 0 else 0

    cdef int _serve_ready(self, _Served s, long gen) except -1:
        """Read what s sent, run every whole request, send the replies."""
        cdef Connection conn = s.conn
        cdef Py_ssize_t got = -1, start, size
        cdef int state
        cdef object entry
        self.current = s
        fm_store(&self.call_seq, self.call_seq + 1)
        fm_store(&self.busy, 1)
        try:
            if s.ring_at < 0 and conn.rx != NULL:
                self._ring_add(s)
            if conn._frame_state() != 1:
                # clients ring only while the loop sleeps: their wake-ups
                # can wait on the socket only if it slept since last read
                got = conn._hub_read(s.drained != self.sleeps)
                s.drained = self.sleeps
            while True:
                state = conn._frame_state()
                if conn.wbuf.length and (state == 0 or conn.wbuf.total() >= c_copy_threshold):
                    conn._send_buffer()
                    if gen != self.generation:
                        return REPLACED
                    continue  # a send that had to wait may have read more requests
                if state == 0:
                    if conn.rend > conn.rstart:
                        self.partial = True
                    break
                if state < 0 or conn.rend - conn.rstart < 13:
                    return OWN_THREAD
                entry = self.table.get(fm_get_u64le(conn.rbuf + conn.rstart + 5))
                if type(entry) is Entry and (<Entry>entry).thread_bound:
                    return OWN_THREAD
                conn._recv_frame(conn.max_message, &start, &size)
                _serve_frame(conn, start, size, self.table, s.control, self.fallback,
                             s.make_proxy, s.reply)
                if gen != self.generation:
                    return REPLACED
                fm_store(&self.call_seq, self.call_seq + 1)
            if got == 0:
                self._end(s, None)
            else:
                self.last = s
        except BaseException as exc:
            self._end(s, exc)
        finally:
            if gen == self.generation:
                fm_store(&self.busy, 0)
                self.current = None
        # replaced during the last step: this thread keeps s (even ended)
        return SERVED if gen == self.generation else REPLACED

    cdef void _forget(self, _Served s) noexcept:
        """Take s out of the hub (it is served elsewhere, or ended)."""
        cdef epoll_event ev
        if self.last is s:
            self.last = None
        self._ring_remove(s)
        if self.served.pop(s.token, None) is not None and s.conn.fd >= 0:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, s.conn.fd, &ev)

    cdef int _end(self, _Served s, exc) except -1:
        if s.ended:
            return 0
        s.ended = True
        self._forget(s)
        _flush_before_failing(s.conn)
        s.conn.close()
        try:
            s.finished(exc)
        except BaseException:
            pass  # the hook's own failure must not stop the loop
        return 0

    def _own_thread(self, _Served s):
        """Serve s on this thread until it ends."""
        exc = None
        try:
            if not s.ended and not s.conn.closed:
                s.conn.moves = True
                if s.conn.wbuf.length:
                    s.conn._send_buffer()
                serve_connection(s.conn, self.table, s.control, self.fallback, s.make_proxy)
        except BaseException as e:
            exc = e
        self._end(s, exc)

    # -- the watchdog -----------------------------------------------------------

    def watch(self, double interval=0.002, double patience=0.05):
        """Replace the loop thread when it is stuck serving one connection:
        after `interval` s if it sleeps (a blocking call, a full socket),
        after `patience` s if it computes (it holds the GIL anyway)."""
        cdef long seen = -1, seq
        cdef int idle = 0
        cdef double stuck_since = 0
        cdef unsigned int us = <unsigned int>(interval * 1e6)
        cdef uint64_t value
        cdef pollfd pfd
        pfd.fd = self.parkfd
        pfd.events = POLLIN
        # without the GIL throughout: taking it every tick would cost the
        # loop thread a hand-off each time
        with nogil:
            while not self.closed:
                if idle >= 2:
                    # the loop sleeps in epoll: sleep too, until it wakes
                    fm_store(&self.parked, 1)
                    if fm_load(&self.blocked):
                        poll(&pfd, 1, -1)
                    fm_store(&self.parked, 0)
                    c_read(self.parkfd, &value, 8)
                    idle = 0
                usleep(us)
                if self.loop_missing:
                    with gil:
                        self._start_loop()
                seq = fm_load(&self.call_seq)
                if fm_load(&self.blocked):
                    idle += 1
                else:
                    idle = 0
                if fm_load(&self.busy) and seq == seen:
                    if not stuck_since:
                        stuck_since = _now() - interval
                    with gil:
                        if self._stuck(seq, _now() - stuck_since >= patience):
                            stuck_since = 0
                            self._replace()
                else:
                    stuck_since = 0
                seen = seq

    cdef bint _stuck(self, long seq, bint long_enough):
        """Whether the loop still serves the same connection, and is not
        merely computing (or preempted) for less than the patience."""
        if not long_enough:
            try:
                with open("/proc/self/task/%d/stat" % self.loop_tid, "rb") as f:
                    if f.read().rpartition(b")")[2].split()[0] == b"R":
                        return False
            except (OSError, IndexError, TypeError):
                return False
        # looked at only now: reading /proc lets the GIL go, and the loop
        # may move on meanwhile
        return self.busy and self.call_seq == seq and self.current is not None

    cdef int _replace(self) except -1:
        """Leave the stuck loop thread with its connection; start another."""
        cdef _Served s = self.current
        if s is None:
            return 0
        self.generation += 1
        self.replacements += 1
        self._forget(s)
        self.current = None
        fm_store(&self.busy, 0)
        self._start_loop()
        return 0

    cdef int _start_loop(self) except -1:
        """Start a loop thread; if none can be had now, the watchdog tries
        again at its next tick."""
        try:
            self.start_thread(self.run)
            self.loop_missing = 0
        except Exception:
            self.loop_missing = 1
        return 0
