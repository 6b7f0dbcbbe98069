# The spin policy: how long a waiting thread spins before it blocks, and
# how it spins (included by _wire.pyx).
#
# A wait spins first (a non-blocking look in a loop, GIL released) for a
# bounded, adaptive budget, then blocks.  Waking a sleeping thread on
# another CPU costs tens of microseconds on a VM, far more than the
# wire's work per call, so a reply that arrives within the spin window is
# the difference between ~5 us and ~40 us a call.  The loops that spin are
# in socket_path.pxi, rings.pxi and hub_wait.pxi; the rules they follow
# are here, with their state (SpinState) and whole-number constants
# (SPIN_*, SLOT_*, PROBE_*, ...) in _wire.pxd and the machine-wide spinner
# slots in fm_spin.h (mapped by spin_segment.pxi).

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
# each move up to MOVE_GAP_MAX until catches come early (late_share below
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

# FASTMGR_SPIN_POLICY: "full" applies every rule below; "plain" spins
# within the budget, then blocks, with the machine-wide slots and nothing else
cdef bint g_full = SPIN_POLICY == "full"


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
    """Grow a spin budget (st.budget_us, at most budget µs) when spinning
    caught the message, halve it when it did not, and try again after
    st.waits_before_retry blocking waits once it reached zero; each try
    that fails doubles the wait, so where spinning never pays it costs
    next to nothing."""
    global g_spins
    if outcome != SPIN_OFF:
        g_spins += 1
        if g_spins >= SPINS_PER_REFRESH:
            # the CPUs we may use can change (pinned to one since?)
            g_spins = 0
            _refresh_max_spinners()
    if st.waits_before_retry < PROBE_MIN:
        st.waits_before_retry = PROBE_MIN
    if outcome == SPIN_PAID:
        st.blocking_waits = 0
        st.waits_before_retry = PROBE_MIN
        st.budget_us = min(budget, st.budget_us * 2)
    elif outcome == SPIN_LONG_YIELD and st.lost_s > LOST_MAX_S:
        st.budget_us = 0
        st.blocking_waits = 0
        st.waits_before_retry = PROBE_MAX
    elif outcome != SPIN_OFF:
        st.budget_us //= 2
        if st.budget_us == 0 and st.waits_before_retry < PROBE_MAX:
            st.waits_before_retry *= 2
    else:
        st.blocking_waits += 1
        if st.blocking_waits >= st.waits_before_retry:
            # now and then, look again: the CPUs we may use can change
            st.blocking_waits = 0
            _refresh_max_spinners()
            st.budget_us = budget


cdef inline bint _long_yield(SpinState* st, double before, double after, uint64_t ours) noexcept nogil:
    """Whether a yield from before to after lost us the CPU to somebody
    else's busy process: it was long, and our own spinners caught fewer
    than OURS_RATE messages a second (ours in all) on our CPU meanwhile.
    If so, count it."""
    if not g_full:
        return False
    if after - before < LONG_YIELD_S or ours >= (after - before) * OURS_RATE:
        return False
    st.lost_s = st.lost_s * exp((st.lost_at - after) / LOST_TAU_S) + (after - before)
    st.lost_at = after
    return True


cdef inline bint _yield(SpinState* st, double before, bint* switched) noexcept nogil:
    """A spinner's yield, from before: sets switched if another thread ran
    meanwhile (the yield took SWITCHED_S or more); whether it lost us the
    CPU (_long_yield)."""
    cdef double after
    cdef uint64_t* count = NULL
    cdef uint64_t seen = 0
    if g_full:
        count = fm_cpu_count(sched_getcpu())
        seen = fm_count_read(count)
    sched_yield()
    after = _now()
    if after - before >= SWITCHED_S:
        switched[0] = True
    return _long_yield(st, before, after, fm_count_read(count) - seen if count != NULL else 0)


cdef inline int _bulk_budget(int budget) noexcept nogil:
    """The spin budget of a large message's turn through a ring."""
    if not g_full:
        return budget
    return min(BULK_SPINS * budget, MAX_SPIN_US)


cdef inline bint _cpus_free(SpinState* st) noexcept nogil:
    """Whether long yields have lost less than LOST_MAX_S lately: if not, a
    busy process shares our CPUs and spinning stays off."""
    if not g_full:
        return True
    return st.lost_s * exp((st.lost_at - _now()) / LOST_TAU_S) <= LOST_MAX_S


cdef inline int _half_frame_budget(SpinState* st, int budget) noexcept nogil:
    """The spin budget of a wait for the rest of a frame that is half in:
    its writer is busy writing it, so at least _bulk_budget(budget),
    however low the adapted budget fell, unless the CPUs are busy."""
    if not g_full:
        return st.budget_us
    if st.budget_us < _bulk_budget(budget) and _cpus_free(st):
        return _bulk_budget(budget)
    return st.budget_us


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
    if slot != SLOT_UNCROWDED:
        return
    if st.late_share < CALM_LATE_MAX:
        if st.late_share < MOVE_SETTLED:
            st.move_gap = MOVE_GAP_MIN
        return
    if <int>(st.spins - st.move_at) < 0:
        return
    if fm_move_off_cpu():
        # look again: the calm phase comes back until catches say otherwise
        st.late_share = MOVE_SETTLED
    st.move_at = st.spins + st.move_gap
    if st.move_gap < MOVE_GAP_MAX:
        st.move_gap *= 2


cdef inline double _spin_start(SpinState* st, int slot, bint moves, double t) noexcept nogil:
    """Begin a spin at t: a server thread that may move (moves) first looks
    whether to (_move_apart).  Returns when the spin starts yielding at
    every turn."""
    if moves and g_full:
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
    st.calm = (st.late_share < CALM_LATE_MAX or st.spins % CALM_PROBE == 0
               or not g_full)
    if not g_full:
        return t
    return t + CALM_SPIN_S if st.calm else t


cdef inline void _caught(SpinState* st, bint yielded) noexcept nogil:
    """A spin caught its message; yielded: only after a yield that ran the
    peer on our CPU (see CALM_LATE_MAX)."""
    if g_full:
        fm_count_catch()
    if st.calm:
        st.late_share += ((1.0 if yielded else 0.0) - st.late_share) / 16.0
