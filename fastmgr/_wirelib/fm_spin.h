/* What the spin policy (spin_policy.pxi) needs from C: spinner slots
   shared by every process of a user, a per-CPU count of the messages
   spinners caught, and a way to move a thread off its CPU.  Declared in
   chelpers.pxd. */
#ifndef FM_SPIN_H
#define FM_SPIN_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* cpu_set_t, sched_getcpu */
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

/* Move the calling thread off the CPU it runs on, to another it may use,
   without changing the CPUs it may use: narrow its affinity (the kernel
   migrates it at once), then put the old mask back.  Returns whether it
   moved. */
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
   cache line apart) of the messages our spinners caught there: a yield
   that kept the CPU from us for long gave it to our own peers if that
   count grew meanwhile, and to a busy process of somebody else's if it
   did not.  Without the mapping, the counters are the process's own.
   Only differences of a counter are used, so any value is harmless. */
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

#endif
