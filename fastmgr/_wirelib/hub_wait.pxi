# How the hub's loop waits (included by _wire.pyx): a look (GIL kept),
# then a spin (GIL released) over epoll, the rings of the connections that
# have them, and the socket of the connection served last; then a sleep in
# epoll.  Also the hub's table of rings.  The functions take the hub first.

cdef int _hub_wait(Hub hub, epoll_event* events) except -1:
    """Ready events: polled (GIL kept), then spun for (GIL released), then
    waited for in epoll.  The spin also tries recv on the connection served
    last, whose next request is the likeliest: when that catches it, its
    event is the one returned, its bytes already in its buffer."""
    cdef int n = 0, lfd = -1, outcome = SPIN_OFF
    cdef ssize_t got = -1
    cdef int err = EAGAIN
    cdef unsigned char* lbuf = NULL
    cdef size_t lspace = 0
    cdef _Served ls = hub.last
    cdef int budget = hub.spin.budget_us
    if hub.partial:
        hub.partial = False
        budget = _half_frame_budget(&hub.spin, hub.spin_us)
    if budget > 0 and fm_slot_max > 0:
        n = epoll_wait(hub.epfd, events, MAX_EVENTS, 0)
        if n >= 0:
            n = _hub_rings_ready(hub, events, n)
        if n > 0:
            return n
    if ls is not None:
        lfd = _last_target(ls.conn, &lbuf, &lspace)
    if budget > 0:
        with nogil:
            outcome = _hub_spin(hub, events, budget, lfd, lbuf, lspace, &n, &got, &err)
    if got >= 0 or not fm_again(err):
        # the spin caught the last connection's bytes
        if got > 0:
            if ls.conn.rx != NULL:
                _detour_took(ls.conn, got)
            else:
                ls.conn.rend += got
        events[0].data.u64 = ls.token
        n = 1
    if n > 0:
        _adapt_spin(&hub.spin, hub.spin_us, SPIN_PAID)
        return n
    if outcome != SPIN_OFF or hub.spin_us > 0:
        _adapt_spin(&hub.spin, hub.spin_us, outcome)
    with nogil:
        n = _hub_sleep(hub, events)
    return n if n > 0 else 0


cdef int _last_target(Connection lconn, unsigned char** lbuf, size_t* lspace) noexcept:
    """Where the next bytes of the connection served last land, for the
    spin to try recv there: its socket (with rings: only while a detour is
    open, and only the detour's rest) into the free end of its rbuf.
    Returns the socket, or -1 if there is nothing to try."""
    if lconn.fd >= 0 and lconn.rcap > lconn.rend and (lconn.rx == NULL
                                                     or lconn.rx_detour_left > 0):
        lbuf[0] = lconn.rbuf + lconn.rend
        lspace[0] = lconn.rcap - lconn.rend
        if lconn.rx != NULL and lspace[0] > lconn.rx_detour_left:
            lspace[0] = lconn.rx_detour_left
        return lconn.fd
    return -1


cdef int _hub_spin(Hub hub, epoll_event* events, int budget, int lfd, unsigned char* lbuf,
                   size_t lspace, int* n, ssize_t* got, int* err) noexcept nogil:
    """Spin (slot permitting) for up to budget µs: recv on lfd (if not
    -1) into lbuf, every turn; epoll every turn, or every
    RING_TURNS_PER_EPOLL turns with rings to look at; the rings.  Leaves
    n events in events, or what recv returned in got (errno in err).
    Returns the outcome for _adapt_spin() (SPIN_OFF without a slot)."""
    cdef int slot, outcome = SPIN_OFF
    cdef double until, t, calm
    cdef bint yielded = False
    cdef unsigned int turn = 0
    slot = fm_slot_enter()
    if slot:
        outcome = SPIN_MISSED
        t = _now()
        until = t + budget * 1e-6
        calm = _spin_start(&hub.spin, slot, True, t)
        while True:
            if lfd >= 0:
                got[0] = c_recv(lfd, lbuf, lspace, MSG_DONTWAIT)
                err[0] = errno
                if got[0] >= 0 or not fm_again(err[0]):
                    _caught(&hub.spin, yielded)
                    break
            turn += 1
            if hub.nrings == 0 or turn % RING_TURNS_PER_EPOLL == 0:
                n[0] = epoll_wait(hub.epfd, events, MAX_EVENTS, 0)
            else:
                n[0] = 0
            if n[0] >= 0:
                n[0] = _hub_rings_ready(hub, events, n[0])
            if n[0] > 0:
                _caught(&hub.spin, yielded and _hub_ready_from_here(hub))
                break
            t = _now()
            if n[0] != 0 or t >= until:
                break
            if g_spin_yield and t >= calm:
                if _yield(&hub.spin, t, &yielded):
                    outcome = SPIN_LONG_YIELD
                    break
        fm_slot_leave()
    return outcome


cdef int _hub_sleep(Hub hub, epoll_event* events) noexcept nogil:
    """Wait in epoll until an event comes; returns how many (or what
    epoll_wait returned).  Clients ring while we sleep; a message that came
    before they could see that is seen by a last look at the rings."""
    cdef int n
    cdef uint64_t one = 1
    _hub_rings_waiting(hub, 1)
    hub.sleeps += 1
    n = _hub_rings_ready(hub, events, 0)
    if n == 0:
        fm_store(&hub.blocked, 1)
        n = epoll_wait(hub.epfd, events, MAX_EVENTS, -1)
        fm_store(&hub.blocked, 0)
        if fm_load(&hub.parked):
            c_write(hub.parkfd, &one, 8)
    _hub_rings_waiting(hub, 0)
    return n


# -- the table of rings -------------------------------------------------------

cdef int _hub_ring_add(Hub hub, _Served s) except -1:
    """Look at s's ring from now on (on the loop thread)."""
    cdef int cap
    if s.ring_at >= 0 or s.conn.rx == NULL or s.ended:
        return 0
    if hub.nrings == hub.ring_cap:
        cap = max(16, 2 * hub.ring_cap)
        hub.ring_rx = <fm_ring**>_realloc_or_raise(hub.ring_rx, cap * sizeof(fm_ring*))
        hub.ring_head = <uint64_t**>_realloc_or_raise(hub.ring_head, cap * sizeof(uint64_t*))
        hub.ring_token = <uint64_t*>_realloc_or_raise(hub.ring_token, cap * sizeof(uint64_t))
        hub.ring_cap = cap
    hub.ring_rx[hub.nrings] = s.conn.rx
    hub.ring_head[hub.nrings] = &s.conn.rx_head
    hub.ring_token[hub.nrings] = s.token
    s.ring_at = hub.nrings
    hub.nrings += 1
    # the loop is awake: the client need not ring
    fm_flag_set(&s.conn.rx.reader_waiting, 0)
    return 0


cdef void _hub_ring_remove(Hub hub, _Served s) noexcept:
    """Stop looking at s's ring (the last one takes its place)."""
    cdef int i = s.ring_at, last = hub.nrings - 1
    cdef _Served moved
    if i < 0 or i > last:
        return
    s.ring_at = -1
    if i != last:
        hub.ring_rx[i] = hub.ring_rx[last]
        hub.ring_head[i] = hub.ring_head[last]
        hub.ring_token[i] = hub.ring_token[last]
        moved = hub.served.get(hub.ring_token[i])
        if moved is not None:
            moved.ring_at = i
    hub.nrings = last


cdef int _hub_rings_ready(Hub hub, epoll_event* events, int n) noexcept nogil:
    """Add an event for each ring that holds bytes (or whose positions
    are impossible: reading it will say so) to events[0:n]."""
    cdef int i
    for i in range(hub.nrings):
        if n >= MAX_EVENTS:
            break
        if fm_ring_readable(hub.ring_rx[i], hub.ring_head[i][0]) != 0:
            events[n].data.u64 = hub.ring_token[i]
            n += 1
    return n


cdef bint _hub_ready_from_here(Hub hub) noexcept nogil:
    """Whether the first ring that holds bytes was written from our
    CPU (see CALM_LATE_MAX); with none (a socket's event), True: a
    yield that ran another thread is all we can tell."""
    cdef int i
    for i in range(hub.nrings):
        if fm_ring_readable(hub.ring_rx[i], hub.ring_head[i][0]) != 0:
            return fm_ring_from_here(hub.ring_rx[i])
    return True


cdef void _hub_rings_waiting(Hub hub, uint32_t v) noexcept nogil:
    """Tell every ring's writer whether the loop sleeps (v 1) or not (0)."""
    cdef int i
    for i in range(hub.nrings):
        fm_flag_set(&hub.ring_rx[i].reader_waiting, v)
