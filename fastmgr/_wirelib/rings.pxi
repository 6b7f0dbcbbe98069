# The ring path of a Connection (included by _wire.pyx): between two
# processes on one machine, bytes cross two shared-memory rings (fm_ring.h)
# and the socket carries only wake-up bytes, EOF, and the detours of
# messages too large for a ring (detours.pxi).  The functions take the
# connection first.

cdef void _ring_unmap(Connection conn) noexcept:
    """Let go of the rings' mapping, if any."""
    if conn.shm != NULL:
        munmap(conn.shm, 2 * sizeof(fm_ring))
        conn.shm = NULL
        conn.rx = conn.tx = NULL


cdef int _ring_attach(Connection conn, int fd, bint server) except -1:
    """Connection.attach_ring(): map the two rings in fd and take this
    side's."""
    cdef void* mem
    _check_open(conn)
    if conn.shm != NULL or conn.pyio:
        raise ValueError("this connection cannot take a ring")
    if conn.rend > conn.rstart:
        raise ValueError("bytes already received through the socket")
    if _os.fstat(fd).st_size < 2 * sizeof(fm_ring):
        raise ValueError("the ring file is too small")
    mem = mmap(NULL, 2 * sizeof(fm_ring), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if mem == MAP_FAILED:
        PyErr_SetFromErrno(OSError)
    conn.shm = mem
    conn.rx = <fm_ring*>mem + (0 if server else 1)
    conn.tx = <fm_ring*>mem + (1 if server else 0)
    conn.rx_head = conn.tx_tail = conn.rx_detour_left = 0
    conn.tx_detouring = conn.bell_owed = False
    # until a side says it is looking at its ring, the other rings for
    # every message (a needless ring costs a spurious wake-up; a missing
    # one, a hang): neither side has sent through the rings yet
    fm_flag_set(&conn.rx.reader_waiting, 1)
    fm_flag_set(&conn.tx.reader_waiting, 1)
    return 0


cdef int _ring_corrupt(Connection conn) except -1:
    conn.close()
    raise ProtocolError("the shared ring's positions are impossible, or bytes came "
                        "on the socket that no detour announced: the peer broke "
                        "the ring protocol")


cdef void _doorbell(Connection conn) noexcept nogil:
    """Wake the peer: a byte on the socket (if the socket is full of
    them the peer has wake-ups enough; if it is gone, reading says so).
    Not in the middle of a detour we send: it is owed until the end."""
    cdef unsigned char zero = 0
    if conn.tx_detouring:
        conn.bell_owed = True
        return
    c_send(conn.fd, &zero, 1, MSG_DONTWAIT | MSG_NOSIGNAL)


cdef ssize_t _take_wakeups(Connection conn, int flags) noexcept nogil:
    """Wait for bytes on the socket (flags 0) or look (MSG_DONTWAIT),
    and take the wake-up bytes among them; a detour's bytes stay for
    _detour_in().  Returns how many bytes were there, 0 at EOF, -1
    with errno, or -2 if the peer sent bytes no detour announced."""
    cdef unsigned char scratch[64]
    cdef ssize_t got, k = 0
    if conn.rx_detour_left:
        # the socket holds the open detour's bytes, any of them 0
        return c_recv(conn.fd, scratch, 1, flags | MSG_PEEK)
    got = c_recv(conn.fd, scratch, sizeof(scratch), flags | MSG_PEEK)
    if got <= 0:
        return got
    while k < got and scratch[k] == 0:
        k += 1
    if k > 0:
        c_recv(conn.fd, scratch, k, MSG_DONTWAIT)
    if k < got and not (fm_detour_pending(conn.rx) and fm_rx_ready(conn.rx, conn.rx_head)):
        # a marker is sent only after its detour is announced, and the
        # ring written up to where it belongs
        return -2
    return got


cdef Py_ssize_t _ring_read(Connection conn, Py_ssize_t most=PY_SSIZE_T_MAX) except -1:
    """Move what rx holds into rbuf (room permitting, and at most most
    bytes), or what came of a detour; returns the number of bytes moved.
    Never blocks.  Precondition: rcap > rend, most > 0."""
    cdef int64_t n = fm_ring_readable(conn.rx, conn.rx_head)
    if n < 0:
        return _ring_corrupt(conn)
    if n == 0:
        if _detour_here(conn):
            return _detour_in(conn, NO_TIMEOUT, False, most)
        return 0
    if n > conn.rcap - conn.rend:
        n = conn.rcap - conn.rend
    if n > most:
        n = most
    fm_ring_take(conn.rx, &conn.rx_head, conn.rbuf + conn.rend, n)
    conn.rend += n
    if fm_flag_seen(&conn.rx.writer_waiting):
        _doorbell(conn)
    return n


cdef int _ring_sleep(Connection conn, uint32_t* flag, bint writing, double deadline) except -1:
    """Wait for the peer's wake-up on the socket (the caller raised
    flag, then looked at the ring once more); lower flag after.  EOF
    raises EOFError (BrokenPipeError when writing)."""
    cdef ssize_t got
    cdef int err
    try:
        while True:
            if deadline >= 0:
                _wait_socket(conn, POLLIN, deadline)
                got = _take_wakeups(conn, MSG_DONTWAIT)
                err = errno
            else:
                _check_signals(conn)
                with nogil:
                    got = _take_wakeups(conn, 0)
                    err = errno
            if got > 0:
                return 0
            if got == 0:
                if writing:
                    raise BrokenPipeError("the peer closed the connection")
                raise EOFError("the peer closed the connection")
            if got == -2:
                return _ring_corrupt(conn)
            if err == EINTR:
                _check_signals(conn)
            elif not fm_again(err):
                return _os_error(err)
    finally:
        if conn.shm != NULL:  # not unmapped by a close on the way out
            fm_flag_set(flag, 0)


cdef int _ring_fill(Connection conn, Py_ssize_t need, double deadline) except -1:
    """_fill() through rx: copy, spin on the ring, then sleep until the
    peer rings.  Precondition: rbuf can hold need bytes."""
    cdef int outcome, budget
    while conn.rend - conn.rstart < need:
        if _detour_here(conn):
            # the stream goes on through the socket: read it as a
            # connection without rings would
            _detour_in(conn, deadline, True)
            continue
        if _ring_read(conn) > 0:
            continue
        outcome = SPIN_OFF
        budget = conn.spin.budget_us
        if conn.rend > conn.rstart:
            budget = _half_frame_budget(&conn.spin, conn._spin_us)
        if budget > 0:
            with nogil:
                outcome = _ring_spin_for_bytes(conn, budget)
            conn.spin_extra = 0
        if outcome == SPIN_PAID:
            _adapt_spin(&conn.spin, conn._spin_us, SPIN_PAID)
            continue
        if outcome != SPIN_OFF or conn._spin_us > 0:
            _adapt_spin(&conn.spin, conn._spin_us, outcome)
        fm_flag_set(&conn.rx.reader_waiting, 1)
        if fm_rx_ready(conn.rx, conn.rx_head):
            fm_flag_set(&conn.rx.reader_waiting, 0)
            continue
        _ring_sleep(conn, &conn.rx.reader_waiting, False, deadline)
    return 0


cdef int _ring_spin_for_bytes(Connection conn, int budget) noexcept nogil:
    """Spin (slot permitting) for up to budget µs, and spin_extra more,
    until rx has something to read: the outcome for _adapt_spin()
    (SPIN_OFF without a slot)."""
    cdef int slot, outcome = SPIN_OFF
    cdef double t, until, calm
    cdef bint yielded = False
    slot = fm_slot_enter()
    if slot:
        outcome = SPIN_MISSED
        t = _now()
        until = t + (budget + conn.spin_extra) * 1e-6
        calm = _spin_start(&conn.spin, slot, conn.moves, t)
        while True:
            if g_spin_yield and t >= calm:
                if _yield(&conn.spin, t, &yielded):
                    outcome = SPIN_LONG_YIELD
                    break
            if fm_rx_ready(conn.rx, conn.rx_head):
                _caught(&conn.spin, yielded and fm_ring_from_here(conn.rx))
                outcome = SPIN_PAID
                break
            t = _now()
            if t >= until:
                break
        fm_slot_leave()
    return outcome


cdef int _ring_send_iov(Connection conn, iovec* iov, int count) except -1:
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
        return _detour_send(conn, iov, count, total)
    while count > 0:
        if iov[0].iov_len == 0:
            iov += 1
            count -= 1
            continue
        room = fm_ring_writable(conn.tx, conn.tx_tail)
        if room < 0:
            return _ring_corrupt(conn)
        if room > 0:
            n = iov[0].iov_len if iov[0].iov_len < <size_t>room else <size_t>room
            # a large message to a sleeping reader: wake it after a
            # first part, so that it reads while we write the rest
            wake = first and n > RING_FIRST_PUT and fm_flag_seen(&conn.tx.reader_waiting)
            if wake:
                n = RING_FIRST_PUT
            fm_ring_put(conn.tx, &conn.tx_tail, <unsigned char*>iov[0].iov_base, n)
            if wake:
                _doorbell(conn)
            first = False
            iov[0].iov_base = <char*>iov[0].iov_base + n
            iov[0].iov_len -= n
            continue
        # full: wake the reader, and wait for room
        if fm_flag_seen(&conn.tx.reader_waiting):
            _doorbell(conn)
        if deadline == -2.0:
            deadline = _deadline(conn)
        _wait_for_tx(conn, False, deadline, _iov_bytes(iov, count))
    if fm_flag_seen(&conn.tx.reader_waiting):
        _doorbell(conn)
    return 0


cdef inline bint _tx_free(Connection conn, bint detour) noexcept nogil:
    """Whether tx has room (with detour: whether the peer has taken
    our last detour)."""
    if detour:
        return not fm_detour_pending(conn.tx)
    return fm_ring_writable(conn.tx, conn.tx_tail) != 0


cdef int _wait_for_tx(Connection conn, bint detour, double deadline, size_t unsent) except -1:
    """Wait once for _tx_free(detour), unsent bytes still to send: take in
    what the peer sent us (so that two peers writing a lot to each other
    cannot block each other forever; a server's connection only up to its
    backlog_max), spin, then sleep until the peer rings.  The caller looks
    again."""
    cdef bint full = _backlog_full(conn, unsent)
    if not full:
        _read_available(conn, unsent)
    if _ring_spin_for_room(conn, detour):
        conn.nap_s = 0.0
        return 0
    fm_flag_set(&conn.tx.writer_waiting, 1)
    if _tx_free(conn, detour):
        fm_flag_set(&conn.tx.writer_waiting, 0)
        conn.nap_s = 0.0
        return 0
    if full and _unread_on_socket(conn):
        # bytes of the peer's that we will not take yet keep the socket
        # readable: a sleep until it rings would not sleep
        fm_flag_set(&conn.tx.writer_waiting, 0)
        return _ring_nap(conn, deadline)
    conn.nap_s = 0.0
    return _ring_sleep(conn, &conn.tx.writer_waiting, True, deadline)


cdef bint _unread_on_socket(Connection conn) except -1:
    """Whether bytes other than wake-ups wait on the socket (a detour's),
    once the wake-ups before them are taken."""
    cdef unsigned char byte
    cdef ssize_t got = _take_wakeups(conn, MSG_DONTWAIT)
    if got == -2:
        return _ring_corrupt(conn)
    if got <= 0:
        return False  # nothing, or EOF (which the sleep then sees)
    return c_recv(conn.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0


cdef int _ring_nap(Connection conn, double deadline) except -1:
    """Sleep a little: 1 ms, doubling up to 64 ms while naps follow one
    another, or less if the peer hangs up; past the deadline, close and
    raise TimeoutError."""
    cdef pollfd pfd
    cdef double left
    conn.nap_s = min(0.064, max(0.001, conn.nap_s * 2))
    left = conn.nap_s
    if deadline >= 0:
        left = min(left, deadline - _now())
        if left <= 0:
            conn.close()
            raise TimeoutError("timed out after %.3g s sending to the peer" % conn._timeout)
    pfd.fd = conn.fd
    pfd.events = 0
    _check_signals(conn)
    with nogil:
        poll(&pfd, 1, <int>(left * 1000.0 + 0.999))
    return 0


cdef bint _ring_spin_for_room(Connection conn, bint detour) noexcept:
    """Spin (as a reader spins) until _tx_free(detour); whether it
    came.  A reader that is awake frees room within microseconds, and
    a message that fills the ring crosses it in many such turns."""
    cdef int slot
    cdef double t, until, calm
    cdef bint room = False, switched = False, long_yield = False
    if conn.spin.budget_us == 0:
        return False
    with nogil:
        slot = fm_slot_enter()
        if slot:
            t = _now()
            until = t + _bulk_budget(conn._spin_us) * 1e-6
            calm = t + (CALM_SPIN_S if slot == SLOT_UNCROWDED and g_full else 0.0)
            while True:
                if _tx_free(conn, detour):
                    room = True
                    break
                if t >= until:
                    break
                if g_spin_yield and t >= calm:
                    if _yield(&conn.spin, t, &switched):
                        long_yield = True
                        break
                t = _now()
            fm_slot_leave()
    if long_yield:
        # counted as the other spins count it: where yields keep losing
        # the CPU (a busy process beside us), spinning stops
        _adapt_spin(&conn.spin, conn._spin_us, SPIN_LONG_YIELD)
    return room


cdef bint _ring_poll(Connection conn, timeout) except -1:
    """poll() with rings: True when rx holds bytes or the peer closed."""
    cdef pollfd pfd
    cdef int rc, ms
    cdef ssize_t got
    cdef double deadline = -1.0 if timeout is None else _now() + max(0.0, timeout)
    pfd.fd = conn.fd
    pfd.events = POLLIN
    while True:
        fm_flag_set(&conn.rx.reader_waiting, 1)
        try:
            if fm_rx_ready(conn.rx, conn.rx_head) or conn.rx_detour_left:
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
                return fm_rx_ready(conn.rx, conn.rx_head)
            got = _take_wakeups(conn, MSG_DONTWAIT)
            if got == 0:
                return True
            if got == -2:
                return _ring_corrupt(conn)
        finally:
            if conn.shm != NULL:
                fm_flag_set(&conn.rx.reader_waiting, 0)


cdef Py_ssize_t _ring_hub_read(Connection conn, bint drain) except -2:
    """_hub_read() with rings: what rx holds.  The socket (wake-up bytes,
    or EOF) is read when rx holds nothing, or when drain says wake-ups
    may be waiting there: a syscall the common case need not pay."""
    cdef Py_ssize_t n = _ring_read(conn)
    cdef ssize_t got
    if n > 0 and not drain:
        return n
    got = _take_wakeups(conn, MSG_DONTWAIT)
    if got == -2:
        return _ring_corrupt(conn)
    if n > 0:
        return n
    return 0 if got == 0 else -1
