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
# a yield that takes this long ran another thread: one that does not, a
# system call, takes well under it
cdef double SWITCHED_S = 2e-6

# FASTMGR_SPIN_POLICY=plain: adaptive spin-then-block within the spinner
# slots, and none of the rules above or below (no calm phase, no longer
# spins for large messages)
cdef bint g_full_policy = SPIN_POLICY == "full"


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


cdef inline void _yield(double before, bint* switched) noexcept nogil:
    """A spinner's yield, from before: sets switched if another thread ran
    meanwhile (the yield took SWITCHED_S or more)."""
    sched_yield()
    if _now() - before >= SWITCHED_S:
        switched[0] = True


cdef inline int _bulk_budget(int budget) noexcept nogil:
    """The spin budget of a large message's turn through a ring."""
    if not g_full_policy:
        return budget
    return min(BULK_SPINS * budget, MAX_SPIN_US)


cdef inline int _half_frame_budget(SpinState* st, int budget) noexcept nogil:
    """The spin budget of a wait for the rest of a frame that is half in:
    its writer is busy writing it, so at least _bulk_budget(budget),
    however low the adapted budget fell."""
    if g_full_policy and st.budget_us < _bulk_budget(budget):
        return _bulk_budget(budget)
    return st.budget_us


cdef inline double _calm_until(SpinState* st, double t) noexcept nogil:
    """When a spin that begins at t starts yielding at every turn.  Every
    spinner begins calm, crowded or not, as long as that pays: more
    spinners than CPUs then take turns by time slices, a client making
    call after call while the others wait, rather than by a switch per
    call (8 clients on 2 CPUs: about 650k calls/s calm, 450k yielding at
    once)."""
    st.spins += 1
    st.calm = g_full_policy and (st.late_share < CALM_LATE_MAX or st.spins % CALM_PROBE == 0)
    return t + CALM_SPIN_S if st.calm else t


cdef inline void _caught(SpinState* st, bint yielded) noexcept nogil:
    """A spin caught its message; yielded: only after a yield that ran the
    peer on our CPU (see CALM_LATE_MAX)."""
    if st.calm:
        st.late_share += ((1.0 if yielded else 0.0) - st.late_share) / 16.0
