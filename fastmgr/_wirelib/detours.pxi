# Detours (included by _wire.pyx): a message of DETOUR_MIN bytes or more
# between two connections with rings crosses the socket instead, in its
# place in the stream (see fm_ring.h and _protocol.py).  The functions
# take the connection first.

cdef bint _detour_here(Connection conn) noexcept nogil:
    """Whether the stream goes on through the socket: a detour is open,
    or rx has been read up to the start of one announced."""
    return conn.rx_detour_left > 0 or fm_detour_here(conn.rx, conn.rx_head)


cdef Py_ssize_t _detour_in(Connection conn, double deadline, bint block,
                           Py_ssize_t most=PY_SSIZE_T_MAX) except -1:
    """Move a detour's bytes from the socket into rbuf (room permitting,
    and at most most bytes): first any wake-up bytes and its marker.
    Returns the bytes moved; without block, 0 if none had come or at EOF
    (which the caller's next look at the socket sees).  Precondition:
    _detour_here(), rcap > rend, most > 0."""
    cdef unsigned char mark = 0
    cdef unsigned char* dst
    cdef size_t want
    cdef ssize_t got
    cdef int err
    while True:
        if conn.rx_detour_left == 0:
            dst, want = &mark, 1
        else:
            dst = conn.rbuf + conn.rend
            want = <size_t>min(conn.rx_detour_left, <uint64_t>min(conn.rcap - conn.rend, most))
        if block and deadline < 0:
            _check_signals(conn)
            with nogil:
                got = c_recv(conn.fd, dst, want, 0)
                err = errno
        else:
            got = c_recv(conn.fd, dst, want, MSG_DONTWAIT)
            err = errno
        if got == 0:
            if not block:
                return 0
            raise EOFError("the peer closed the connection")
        if got < 0:
            if fm_again(err):
                if not block:
                    return 0
                _wait_socket(conn, POLLIN, deadline)
            elif err == EINTR:
                _check_signals(conn)
            else:
                return _os_error(err)
            continue
        if conn.rx_detour_left == 0:
            if mark == 0:
                continue  # a wake-up byte sent before the detour
            conn.rx_detour_left = fm_detour_len(conn.rx)
            if mark != DETOUR_MARK or conn.rx_detour_left == 0:
                conn.rx_detour_left = 0
                return _ring_corrupt(conn)
            continue
        _detour_took(conn, got)
        return got


cdef void _detour_took(Connection conn, ssize_t got) noexcept nogil:
    """Count got bytes of the open detour, received into rbuf at rend;
    at its end, let the writer send another."""
    conn.rend += got
    conn.rx_detour_left -= got
    if conn.rx_detour_left == 0:
        fm_detour_done(conn.rx)
        if fm_flag_seen(&conn.rx.writer_waiting):
            _doorbell(conn)


cdef int _detour_send(Connection conn, iovec* iov, int count, size_t total) except -1:
    """_ring_send_iov() for a message of DETOUR_MIN bytes or more: once
    the peer has taken our last detour, announce this one and send it
    through the socket.  Precondition: count <= MAX_SEGMENTS."""
    cdef iovec marked[MAX_SEGMENTS + 1]
    cdef unsigned char mark = DETOUR_MARK
    cdef double deadline = _deadline(conn)
    while fm_detour_pending(conn.tx):
        _wait_for_tx(conn, True, deadline, total)
    marked[0].iov_base = &mark
    marked[0].iov_len = 1
    memcpy(&marked[1], iov, count * sizeof(iovec))
    # a reader asleep on the ring is woken by the marker itself
    fm_detour_announce(conn.tx, conn.tx_tail, total)
    conn.tx_detouring = True
    try:
        _sock_send_iov(conn, marked, count + 1)
    except BaseException:
        conn.close()  # the stream is cut mid-message: it cannot go on
        raise
    finally:
        conn.tx_detouring = False
        if conn.bell_owed:
            conn.bell_owed = False
            if conn.fd >= 0:
                _doorbell(conn)
    return 0
