# The hub's watchdog (included by _wire.pyx): a thread that replaces the
# loop thread when one connection keeps it, leaving that connection the
# old thread.  The functions take the hub first.

cdef int _watchdog(Hub hub, double interval, double patience) except -1:
    """Replace the loop thread when it is stuck serving one connection:
    after `interval` s if it sleeps (a blocking call, a full socket),
    after `patience` s if it computes (it holds the GIL anyway)."""
    cdef long seen = -1, seq
    cdef int idle = 0
    cdef double stuck_since = 0
    cdef unsigned int us = <unsigned int>(interval * 1e6)
    cdef uint64_t value
    cdef pollfd pfd
    pfd.fd = hub.parkfd
    pfd.events = POLLIN
    # without the GIL throughout: taking it every tick would cost the
    # loop thread a hand-off each time
    with nogil:
        while not hub.closed:
            if idle >= 2:
                # the loop sleeps in epoll: sleep too, until it wakes
                fm_store(&hub.parked, 1)
                if fm_load(&hub.blocked):
                    poll(&pfd, 1, -1)
                fm_store(&hub.parked, 0)
                c_read(hub.parkfd, &value, 8)
                idle = 0
            usleep(us)
            if hub.loop_missing:
                with gil:
                    _hub_start_loop(hub)
            seq = fm_load(&hub.call_seq)
            if fm_load(&hub.blocked):
                idle += 1
            else:
                idle = 0
            if fm_load(&hub.busy) and seq == seen:
                if not stuck_since:
                    stuck_since = _now() - interval
                with gil:
                    if _watchdog_stuck(hub, seq, _now() - stuck_since >= patience):
                        stuck_since = 0
                        _watchdog_replace(hub)
            else:
                stuck_since = 0
            seen = seq
    return 0


cdef bint _watchdog_stuck(Hub hub, long seq, bint long_enough):
    """Whether the loop still serves the same connection, and is not
    merely computing (or preempted) for less than the patience."""
    if not long_enough:
        try:
            with open("/proc/self/task/%d/stat" % hub.loop_tid, "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"R":
                    return False
        except (OSError, IndexError, TypeError):
            return False
    # looked at only now: reading /proc lets the GIL go, and the loop
    # may move on meanwhile
    return hub.busy and hub.call_seq == seq and hub.current is not None


cdef int _watchdog_replace(Hub hub) except -1:
    """Leave the stuck loop thread with its connection; start another."""
    cdef _Served s = hub.current
    if s is None:
        return 0
    hub.generation += 1
    hub.replacements += 1
    _hub_forget(hub, s)
    hub.current = None
    fm_store(&hub.busy, 0)
    _hub_start_loop(hub)
    return 0


cdef int _hub_start_loop(Hub hub) except -1:
    """Start a loop thread; if none can be had now, the watchdog tries
    again at its next tick."""
    try:
        hub.start_thread(hub.run)
        hub.loop_missing = 0
    except Exception:
        hub.loop_missing = 1
    return 0
