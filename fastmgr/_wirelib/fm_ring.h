/* A shared-memory ring: one direction of a connection between two
   processes on one machine (see rings.pxi and _protocol.py).  Declared in
   chelpers.pxd.

   Positions count bytes ever written (tail) and consumed (head); each
   side keeps its own position privately and only publishes it, so a peer
   that scribbles on the mapping can garble bytes (which are decoded as
   untrusted anyway) or make positions impossible (reported as -1), but
   never make us read or write outside the data area.  A side about to
   sleep sets its *_waiting flag, then looks once more; a side that moves
   its position then looks at the other's flag and, if set, writes a byte
   to the socket beside the ring to wake it.

   A message too large for the ring takes a detour through the socket
   (detours.pxi): the writer announces it (detour_at: the ring position
   where it belongs in the stream, detour_len: its size, then
   detour_pending), then sends a marker byte and the message on the
   socket.  The reader reads the ring up to detour_at only, takes the
   detour from the socket (after any wake-up bytes before its marker),
   then lowers detour_pending; the writer announces no other detour until
   then.  The fields share the tail's cache line, which the reader loads
   anyway; so does writer_cpu, the CPU the writer last wrote from, which
   tells a reader whose message came only after it yielded whether the
   writer ran on its CPU meanwhile (fm_ring_from_here; a hint for the spin
   policy, nothing more). */
#ifndef FM_RING_H
#define FM_RING_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* sched_getcpu */
#endif
#include <sched.h>
#include <stdint.h>
#include <string.h>

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

#endif
