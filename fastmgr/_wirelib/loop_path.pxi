# A Connection driven by an event loop (included by _wire.pyx): nothing
# here blocks.  The loop watches the socket (readable: bytes, wake-up
# bytes or EOF; writable: room, on the socket path) and calls these:
#
#   loop_queue()    a request frame into wbuf, as send_request() would
#   loop_send()     as much of wbuf as the socket or the tx ring takes now;
#                   the rest waits for the next call (loop_sent says how far)
#   loop_receive()  what came, through the socket or rx, decoded frame by frame
#   loop_spin()     a spin for the next bytes, for a caller about to yield
#
# With rings, the loop's reader keeps rx.reader_waiting raised (the peer
# rings for every message) except while it spins; a writer that finds tx
# full raises tx.writer_waiting (the peer rings once it made room) and is
# called again when the socket turns readable, and after every
# loop_receive() (which takes in the wake-up bytes, that one among them).  A message too large for
# the ring crosses it in several turns rather than as a detour, whose
# socket part could not wait for room without blocking.  The functions
# take the connection first.

cdef int _loop_iov(Connection conn, iovec* iov) except -1:
    """iov[0:count] over the part of wbuf not sent yet, the out-of-band
    buffers in place; returns count, at most MAX_SEGMENTS (frames queued
    together may hold more buffers: the rest goes in a later turn)."""
    cdef WriteBuffer w = conn.wbuf
    cdef int count = 0
    cdef Py_ssize_t pos = 0, offset, skip = conn.loop_sent, n
    cdef const char* data
    for offset, segment in w.oob:
        if count > MAX_SEGMENTS - 3:  # room for this segment, bytes before it, the tail
            return count
        if offset > pos:
            n = offset - pos
            if skip >= n:
                skip -= n
            else:
                iov[count].iov_base = w.buf + pos + skip
                iov[count].iov_len = n - skip
                skip = 0
                count += 1
        _segment(segment, &data, &n)
        if skip >= n:
            skip -= n
        else:
            iov[count].iov_base = <void*>(data + skip)
            iov[count].iov_len = n - skip
            skip = 0
            count += 1
        pos = offset
    if w.length > pos + skip:
        iov[count].iov_base = w.buf + pos + skip
        iov[count].iov_len = w.length - pos - skip
        count += 1
    return count


cdef Py_ssize_t _loop_send(Connection conn) except -1:
    """Connection.loop_send()."""
    cdef iovec iov[MAX_SEGMENTS]
    cdef int count, i
    cdef msghdr msg
    cdef ssize_t sent
    cdef int64_t room
    cdef size_t n
    cdef int err
    _check_open(conn)
    if conn.pyio:
        raise ValueError("a TLS connection cannot be driven by an event loop")
    while conn.wbuf.total() > conn.loop_sent:
        count = _loop_iov(conn, iov)
        if conn.tx != NULL:
            sent = 0
            for i in range(count):
                room = fm_ring_writable(conn.tx, conn.tx_tail)
                if room < 0:
                    return _ring_corrupt(conn)
                n = iov[i].iov_len if iov[i].iov_len < <size_t>room else <size_t>room
                if n:
                    fm_ring_put(conn.tx, &conn.tx_tail, <unsigned char*>iov[i].iov_base, n)
                    sent += n
                if n < iov[i].iov_len:
                    break
            if sent and fm_flag_seen(&conn.tx.reader_waiting):
                _doorbell(conn)
            if sent == 0:
                # full: the peer rings once it made room (then the loop
                # finds the socket readable and calls again)
                fm_flag_set(&conn.tx.writer_waiting, 1)
                if fm_ring_writable(conn.tx, conn.tx_tail) == 0:
                    break
                fm_flag_set(&conn.tx.writer_waiting, 0)
        else:
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = count
            sent = sendmsg(conn.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
            err = errno
            if sent < 0:
                if fm_again(err):
                    break
                if err == EINTR:
                    continue
                return _os_error(err)
        conn.loop_sent += sent
    if conn.loop_sent >= conn.wbuf.total():
        conn.wbuf.reset()
        conn.loop_sent = 0
        if conn.tx != NULL:
            fm_flag_set(&conn.tx.writer_waiting, 0)
        return 0
    return conn.wbuf.total() - conn.loop_sent


cdef bint _loop_take_in(Connection conn) except -1:
    """Move what came into rbuf, without blocking; True once the peer has
    closed (and nothing more is there)."""
    cdef ssize_t got
    cdef int err
    while True:
        if conn.rend == conn.rcap:
            _grow_rbuf(conn)
        if conn.rx != NULL:
            if _ring_read(conn) > 0:
                continue
            got = _take_wakeups(conn, MSG_DONTWAIT)
            err = errno
            if got == -2:
                return _ring_corrupt(conn)
            if got == 0:
                return not fm_rx_ready(conn.rx, conn.rx_head)
            if got > 0 and (fm_rx_ready(conn.rx, conn.rx_head) or _detour_here(conn)):
                continue
            if got < 0 and not fm_again(err) and err != EINTR:
                return _os_error(err)
            return False
        got = c_recv(conn.fd, conn.rbuf + conn.rend, conn.rcap - conn.rend, MSG_DONTWAIT)
        err = errno
        if got > 0:
            conn.rend += got
            if conn.rend < conn.rcap:
                return False
            continue
        if got == 0:
            return True
        if fm_again(err):
            return False
        if err != EINTR:
            return _os_error(err)


cdef list _loop_receive(Connection conn, bint decode):
    """Connection.loop_receive()."""
    cdef list out = []
    cdef Py_ssize_t header = 0, start, size
    cdef uint64_t body = 0
    cdef _Taken taken
    cdef FrameState state
    cdef bint eof
    _check_open(conn)
    if conn.pyio:
        raise ValueError("a TLS connection cannot be driven by an event loop")
    eof = _loop_take_in(conn)
    while True:
        state = _frame_at(conn.rbuf + conn.rstart, conn.rend - conn.rstart, conn.max_message,
                          &header, &body)
        if state == FRAME_PARTIAL:
            break
        if state != FRAME_WHOLE:
            # a refused header cannot be skipped: the stream is lost
            conn.close()
            if state == FRAME_TOO_LARGE:
                raise MessageTooLarge("message of %d bytes exceeds the limit of %d"
                                      % (body, conn.max_message))
            raise ProtocolError("bad message length %d" % <int64_t>body)
        start = conn.rstart + header
        conn.rstart = start + <Py_ssize_t>body
        if not decode:
            out.append(PyBytes_FromStringAndSize(<char*>conn.rbuf + start, <Py_ssize_t>body))
            continue
        size = <Py_ssize_t>body
        try:
            # out-of-band buffers came into rbuf with the rest of the frame:
            # each is copied out into the object it becomes
            taken = _split_body(conn.rbuf, &start, &size)
            out.append(conn.codec.decode_response_at(conn.rbuf + start, size, taken))
        except ProtocolError:
            conn.close()
            raise
        except Exception as exc:  # a value that does not unpickle: that reply's outcome
            out.append((0, exc))
    if conn.rstart == conn.rend:
        conn.rstart = conn.rend = 0
        _shrink(conn)
    if eof and not out:
        raise EOFError("the peer closed the connection")
    return out


cdef bint _loop_spin(Connection conn) except -1:
    """Connection.loop_spin(): spin (GIL released, a spinner slot
    permitting) for up to the budget in force until bytes come; whether
    they did (or EOF)."""
    cdef int slot, outcome = SPIN_OFF
    cdef ssize_t got = -1
    cdef int err = EAGAIN
    _check_open(conn)
    if conn.pyio or conn._spin_us <= 0:
        return False
    if conn.spin.budget_us <= 0 or fm_slot_max == 0:
        # the wait goes to the loop: counted as a blocking wait, after
        # enough of which the policy tries spinning again
        _adapt_spin(&conn.spin, conn._spin_us, SPIN_OFF)
        return False
    if conn.rend == conn.rcap:
        _grow_rbuf(conn)
    if conn.rx != NULL:
        # no wake-ups while we look ourselves; after, as before, the peer
        # rings, and what it wrote before it could see that is seen by
        # the last look
        fm_flag_set(&conn.rx.reader_waiting, 0)
        with nogil:
            outcome = _ring_spin_for_bytes(conn, conn.spin.budget_us)
        fm_flag_set(&conn.rx.reader_waiting, 1)
        got = 1 if (outcome == SPIN_PAID or fm_rx_ready(conn.rx, conn.rx_head)
                    or _detour_here(conn)) else -1
    else:
        with nogil:
            slot = fm_slot_enter()
            if slot:
                outcome = SPIN_PAID
                got = _sock_spin_recv(conn, conn.rbuf + conn.rend, conn.rcap - conn.rend, slot,
                                      &outcome)
                err = errno
                fm_slot_leave()
        if got > 0:
            conn.rend += got
    conn.spin_extra = 0
    if outcome != SPIN_OFF:
        _adapt_spin(&conn.spin, conn._spin_us, outcome)
    return got >= 0 or not fm_again(err)
