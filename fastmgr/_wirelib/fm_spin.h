/* What the spin policy (spin_policy.pxi) needs from C: spinner slots
   shared by every process of a user.  Declared in chelpers.pxd. */
#ifndef FM_SPIN_H
#define FM_SPIN_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <stdint.h>
#include <time.h>

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
   mapping (one per user, fm_segment.h): each slot holds the monotonic time
   its spinner began, 0 when free; a slot older than FM_STALE_NS belonged
   to a process that died mid-spin and may be taken, and so may one whose
   time is yet to come (the mapping is shared: its values are taken as
   hints, never trusted).  fm_slot_enter() returns 0 (no slot free), 1
   (SLOT_UNCROWDED: fewer other spinners than CPUs) or 2 (SLOT_CROWDED: as
   many or more).  Without the mapping, spinners are counted per process. */
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
        if (v != 0 && v <= now && now - v <= FM_STALE_NS)
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

static inline void fm_slot_leave(void) {
    int64_t v = fm_slot_stamp;
    if (fm_slots == NULL) { fm_spin_leave(); return; }
    __atomic_compare_exchange_n(&fm_slots[fm_slot], &v, 0, 0,
                                __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

#endif
