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


cdef bint _loop_take_in(Connection conn, Py_ssize_t need) except -1:
    """Move what came into rbuf, without blocking, growing rbuf only while
    it holds fewer than need unconsumed bytes; True once the peer has
    closed (and nothing more is there)."""
    cdef ssize_t got
    cdef int err
    while True:
        if conn.rend == conn.rcap:
            if conn.rend - conn.rstart >= need:
                return False
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


# The out-of-band buffers of a reply (outofband.pxi) go straight from the
# stream into the objects they become, as _recv_buffers() takes them on
# the blocking path: rbuf holds only the frame's head and inline body, so
# a reply of N bytes costs N, not N for rbuf and N more for its copies.

cdef Py_ssize_t _loop_need(Connection conn, bint buffers) except -1:
    """How many unconsumed bytes rbuf must hold before the frame at rstart
    can be taken out: all of it, or (buffers) for a body that carries
    out-of-band buffers, its head, table and inline body."""
    cdef Py_ssize_t header = 0, table, have = conn.rend - conn.rstart
    cdef uint64_t body = 0
    cdef const unsigned char* p = conn.rbuf + conn.rstart
    if _frame_at(p, have, conn.max_message, &header, &body) != FRAME_PARTIAL:
        return have
    if header == 0 or have < header:
        return have + 1
    if not buffers or body < BUFFER_PREFIX_SIZE or (have > header and p[header] != BODY_BUFFERS):
        return header + <Py_ssize_t>body
    if have < header + BUFFER_PREFIX_SIZE:
        return header + BUFFER_PREFIX_SIZE
    table = _buffer_table_size(p + header, <Py_ssize_t>body)
    if have < header + table:
        return header + table
    return header + <Py_ssize_t>body - _buffer_table(p + header, table, <Py_ssize_t>body)


cdef bint _loop_start_buffers(Connection conn, Py_ssize_t header, Py_ssize_t body) except -1:
    """For a frame at rstart not all in (header bytes, then body): if its
    body carries out-of-band buffers and rbuf holds its table and inline
    body, allocate the buffers, move in what of them rbuf holds, and
    return True; loop_receive() fills the rest (_loop_fill_buffers)."""
    cdef const unsigned char* p = conn.rbuf + conn.rstart + header
    cdef Py_ssize_t have = conn.rend - conn.rstart - header, table, total, at
    if have < BUFFER_PREFIX_SIZE or p[0] != BODY_BUFFERS:
        return False
    table = _buffer_table_size(p, body)
    if have < table:
        return False
    total = _buffer_table(p, table, body)
    if have < body - total:
        return False
    taken = _Taken()
    taken.buffers = [_new_buffer(p[at], <Py_ssize_t>fm_get_u64le(p + at + 1))
                     for at in range(BUFFER_PREFIX_SIZE, table, BUFFER_ENTRY_SIZE)]
    conn.loop_taken = taken
    conn.loop_head = header + table
    conn.loop_inline = body - table - total
    conn.loop_filled = 0
    _loop_move_extra(conn)
    return True


cdef int _loop_move_extra(Connection conn) except -1:
    """Move the bytes rbuf holds past the inline body of the frame whose
    buffers are being filled into those buffers: the read that found the
    frame, or a spin, took them in (a spin may have taken the start of the
    next frame too, which stays)."""
    cdef Py_ssize_t end = conn.rstart + conn.loop_head + conn.loop_inline, at = end
    cdef Py_ssize_t room = 0, n
    cdef char* dst
    while at < conn.rend:
        dst = _loop_buffer_at(conn, &room)
        if dst == NULL:
            break
        n = min(conn.rend - at, room)
        memcpy(dst, conn.rbuf + at, n)
        at += n
        conn.loop_filled += n
    if at > end:
        memmove(conn.rbuf + end, conn.rbuf + at, conn.rend - at)
        conn.rend -= at - end
    return 0


cdef char* _loop_buffer_at(Connection conn, Py_ssize_t* room) noexcept:
    """Where the next byte of the buffers being filled goes, and room[0]
    how many more the buffer there takes; NULL once they are full."""
    cdef Py_ssize_t skip = conn.loop_filled, size
    for buf in conn.loop_taken.buffers:
        size = Py_SIZE(buf)
        if skip < size:
            room[0] = size - skip
            return _buffer_memory(buf) + skip
        skip -= size
    return NULL


cdef bint _loop_fill_buffers(Connection conn) except -1:
    """Read what came, without blocking, straight into the buffers being
    filled; True once the peer has closed.  Every path reads into
    rbuf[rend:rcap]: for the while, rbuf is the rest of one buffer."""
    cdef unsigned char* saved = conn.rbuf
    cdef Py_ssize_t saved_cap = conn.rcap, saved_start = conn.rstart, saved_end
    cdef Py_ssize_t room = 0
    cdef char* dst
    cdef bint eof = False
    _loop_move_extra(conn)
    saved_end = conn.rend
    while not eof:
        dst = _loop_buffer_at(conn, &room)
        if dst == NULL:
            break
        conn.rbuf = <unsigned char*>dst
        conn.rcap = room
        conn.rstart = conn.rend = 0
        try:
            eof = _loop_take_in(conn, 0)
        finally:
            conn.loop_filled += conn.rend
            room -= conn.rend
            conn.rbuf = saved
            conn.rcap = saved_cap
            conn.rstart = saved_start
            conn.rend = saved_end
        if room > 0:
            break  # nothing more now
    return eof


cdef int _loop_decode(Connection conn, list out, Py_ssize_t start, Py_ssize_t size,
                      _Taken taken) except -1:
    """Decode the reply whose inline body is rbuf[start:start + size] into
    out; a value that does not unpickle is that reply's outcome, a
    malformed reply closes the connection."""
    try:
        out.append(conn.codec.decode_response_at(conn.rbuf + start, size, taken))
    except ProtocolError:
        conn.close()
        raise
    except Exception as exc:
        out.append((0, exc))
    return 0


cdef list _loop_receive(Connection conn, bint decode):
    """Connection.loop_receive()."""
    cdef list out = []
    cdef Py_ssize_t header = 0, start, size
    cdef uint64_t body = 0
    cdef _Taken taken
    cdef FrameState state
    cdef bint eof = False, progress, full
    _check_open(conn)
    if conn.pyio:
        raise ValueError("a TLS connection cannot be driven by an event loop")
    while not eof:
        if conn.loop_taken is not None:
            eof = _loop_fill_buffers(conn)
            if _loop_buffer_at(conn, &size) != NULL:
                break  # the rest of them comes later
            taken, conn.loop_taken = conn.loop_taken, None
            start = conn.rstart + conn.loop_head
            conn.rstart = start + conn.loop_inline
            _loop_decode(conn, out, start, conn.loop_inline, taken)
            continue  # what came after it
        try:
            eof = _loop_take_in(conn, _loop_need(conn, decode))
        except ProtocolError:
            conn.close()
            raise
        full = conn.rend == conn.rcap
        progress = False
        while True:
            state = _frame_at(conn.rbuf + conn.rstart, conn.rend - conn.rstart, conn.max_message,
                              &header, &body)
            if state == FRAME_PARTIAL:
                try:
                    if decode and header and _loop_start_buffers(conn, header, <Py_ssize_t>body):
                        full = progress = True
                except ProtocolError:
                    conn.close()
                    raise
                break
            if state != FRAME_WHOLE:
                # a refused header cannot be skipped: the stream is lost
                conn.close()
                if state == FRAME_TOO_LARGE:
                    raise MessageTooLarge("message of %d bytes exceeds the limit of %d"
                                          % (body, conn.max_message))
                raise ProtocolError("bad message length %d" % <int64_t>body)
            progress = True
            start = conn.rstart + header
            conn.rstart = start + <Py_ssize_t>body
            if not decode:
                out.append(PyBytes_FromStringAndSize(<char*>conn.rbuf + start, <Py_ssize_t>body))
                continue
            size = <Py_ssize_t>body
            try:
                # a whole frame's out-of-band buffers came into rbuf with
                # the rest of it: each is copied out into its object
                taken = _split_body(conn.rbuf, &start, &size)
            except ProtocolError:
                conn.close()
                raise
            _loop_decode(conn, out, start, size, taken)
        # read on only if rbuf filled up (else the socket or ring had no more)
        if not (full and progress):
            break
    if conn.rstart == conn.rend and conn.loop_taken is None:
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
