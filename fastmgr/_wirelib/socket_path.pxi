# The socket path of a Connection (included by _wire.pyx): bytes move
# through the socket itself, read into rbuf with a spin before blocking,
# written with one sendmsg.  The functions take the connection first.

cdef short _wait_socket(Connection conn, short events, double deadline) except -1:
    """Block until fd is ready for events or the deadline passes (then
    close and raise TimeoutError). Signals are checked on EINTR; an
    exception from a handler also closes the connection, whose reply
    would otherwise be read as the answer to the next call."""
    cdef pollfd pfd
    cdef int ms, rc
    cdef double left
    pfd.fd = conn.fd
    pfd.events = events
    while True:
        # a signal that came while we spun (or before an EINTR) is seen here
        _check_signals(conn)
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
            conn.close()
            raise TimeoutError("timed out after %.3g s waiting for the peer" % conn._timeout)
        if errno != EINTR:
            PyErr_SetFromErrno(OSError)
            return -1


cdef ssize_t _sock_spin_recv(Connection conn, unsigned char* dst, Py_ssize_t space, int slot,
                             int* outcome) noexcept nogil:
    """Poll with non-blocking recv for up to spin.budget_us µs (the caller
    has just found nothing).  Returns what recv returned last, or -1
    with EAGAIN when the budget ran out (outcome SPIN_MISSED) or a
    yield kept the CPU from us too long (SPIN_LONG_YIELD)."""
    cdef ssize_t got
    cdef double t = _now()
    cdef double until = t + (conn.spin.budget_us + conn.spin_extra) * 1e-6
    cdef double calm = _spin_start(&conn.spin, slot, conn.moves, t)
    cdef bint yielded = False
    while True:
        if g_spin_yield and t >= calm:
            # a peer (or anyone) waiting for this CPU gets it: spinning
            # must never starve the thread we are waiting for
            if _yield(&conn.spin, t, &yielded):
                outcome[0] = SPIN_LONG_YIELD
                fm_set_errno(EAGAIN)
                return -1
        got = c_recv(conn.fd, dst, space, MSG_DONTWAIT)
        if got >= 0 or not fm_again(errno):
            _caught(&conn.spin, yielded)
            return got
        t = _now()
        if t >= until:
            outcome[0] = SPIN_MISSED
            return -1


cdef int _sock_fill(Connection conn, Py_ssize_t need, double deadline) except -1:
    """_fill() through the socket: a non-blocking recv, then a spin (when
    the budget allows), then a blocking recv (or a poll until the
    deadline).  Precondition: rbuf can hold need bytes from rstart."""
    cdef ssize_t got
    cdef int err
    cdef Py_ssize_t space
    cdef int slot, outcome
    while conn.rend - conn.rstart < need:
        space = conn.rcap - conn.rend
        outcome = SPIN_OFF
        if (conn.spin.budget_us == 0 or fm_slot_max == 0) and deadline < 0:
            # neither spinning (nor able to: one CPU) nor a deadline:
            # straight to the blocking recv below, which returns at once
            # if bytes are there
            got = -1
            err = EAGAIN
        else:
            # non-blocking, so the GIL stays: releasing it would hand it
            # to another thread and cost a switch to take it back
            got = c_recv(conn.fd, conn.rbuf + conn.rend, space, MSG_DONTWAIT)
            err = errno
        if got < 0 and fm_again(err) and conn.spin.budget_us > 0:
            with nogil:
                slot = fm_slot_enter()
                if slot:
                    outcome = SPIN_PAID
                    got = _sock_spin_recv(conn, conn.rbuf + conn.rend, space, slot, &outcome)
                    err = errno
                    fm_slot_leave()
                conn.spin_extra = 0
        if got < 0 and fm_again(err):
            if outcome != SPIN_OFF or conn._spin_us > 0:
                _adapt_spin(&conn.spin, conn._spin_us, outcome)
            if deadline >= 0:
                _wait_socket(conn, POLLIN, deadline)
                continue
            # no deadline: block in recv itself, a syscall fewer than
            # poll then recv (a signal interrupts it with EINTR)
            _check_signals(conn)
            with nogil:
                got = c_recv(conn.fd, conn.rbuf + conn.rend, space, 0)
                err = errno
            if got < 0 and fm_again(err):
                _wait_socket(conn, POLLIN, deadline)
                continue
        elif outcome == SPIN_PAID:
            _adapt_spin(&conn.spin, conn._spin_us, SPIN_PAID)
        if got > 0:
            conn.rend += got
        elif got == 0:
            raise EOFError("the peer closed the connection")
        elif err == EINTR:
            _check_signals(conn)
        else:
            return _os_error(err)
    return 0


cdef int _sock_read_available(Connection conn, Py_ssize_t most) except -1:
    """_read_available() through the socket, at most most bytes: 1 at EOF,
    else 0."""
    cdef ssize_t got
    with nogil:
        got = c_recv(conn.fd, conn.rbuf + conn.rend, most, MSG_DONTWAIT)
    if got > 0:
        conn.rend += got
    return got == 0


cdef int _sock_send_iov(Connection conn, iovec* iov, int count) except -1:
    """_send_iov() through the socket."""
    cdef ssize_t sent
    cdef msghdr msg
    cdef int err
    cdef short revents, events = POLLIN | POLLOUT
    cdef double deadline = -2.0
    if count == 1 and iov[0].iov_len <= <size_t>c_copy_threshold:
        # the common case: one small buffer, one non-blocking send() with
        # the GIL kept; fall through if it was partial
        sent = c_send(conn.fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL)
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
            sent = sendmsg(conn.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
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
                deadline = _deadline(conn)
            if _backlog_full(conn, _iov_bytes(iov, count)):
                # a server's connection that holds all it may: room first
                _wait_socket(conn, POLLOUT, deadline)
                continue
            revents = _wait_socket(conn, events, deadline)
            if ((revents & POLLIN) and not (revents & POLLOUT)
                    and _read_available(conn, _iov_bytes(iov, count))):
                # the peer has shut its side: its EOF would keep POLLIN
                # up, so wait for room alone (a peer that still reads
                # makes room; the deadline holds either way)
                events = POLLOUT
        elif err == EINTR:
            PyErr_CheckSignals()
        else:
            return _os_error(err)
    return 0
