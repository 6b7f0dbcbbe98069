# Out-of-band buffers (included by _wire.pyx; see _protocol.py, "Out-of-band
# buffers"): the table that a body carrying them starts with, checked
# before anything is allocated for it; the buffers a decoder takes
# (_Taken); and receiving them, each straight into the object it becomes.
# Sending them is WriteBuffer's (buffers.pxi).

@cython.final
cdef class _Taken:
    """The out-of-band buffers of a body being decoded, taken in turn by
    its values (see _take)."""

    cdef int check_all_taken(self) except -1:
        if self.next != len(self.buffers):
            raise ProtocolError("%d out-of-band buffers left unused"
                                % (len(self.buffers) - self.next))
        return 0


cdef object _take(_Taken taken, uint64_t count, bint as_bytes):
    """The next buffer of taken (as_bytes: for a bytes value), or its next
    count buffers (a list, for the unpickler); ProtocolError if there are
    not that many, or not of that kind."""
    cdef Py_ssize_t i
    if taken is None:
        raise ProtocolError("a value takes an out-of-band buffer in a body without buffers")
    if count > <uint64_t>(len(taken.buffers) - taken.next):
        raise ProtocolError("a value takes more out-of-band buffers than the message has")
    for i in range(taken.next, taken.next + <Py_ssize_t>count):
        if (type(taken.buffers[i]) is bytes) != as_bytes:
            raise ProtocolError("an out-of-band buffer of the wrong kind")
    i = taken.next
    taken.next += count
    if as_bytes:
        return taken.buffers[i]
    return taken.buffers[i:taken.next]


cdef Py_ssize_t _buffer_table_size(const unsigned char* p, Py_ssize_t body) except -1:
    """The size of the buffer table (its prefix included) that the
    BUFFER_PREFIX_SIZE bytes at p announce, p the start of a body of body
    bytes that starts with BODY_BUFFERS."""
    cdef uint32_t count
    if body < BUFFER_PREFIX_SIZE:
        raise ProtocolError("truncated buffer table")
    count = fm_get_u32le(p + 1)
    if count < 1 or count > MAX_BUFFERS:
        raise ProtocolError("a message with %d out-of-band buffers" % count)
    if BUFFER_PREFIX_SIZE + count * BUFFER_ENTRY_SIZE > body:
        raise ProtocolError("truncated buffer table")
    return BUFFER_PREFIX_SIZE + count * BUFFER_ENTRY_SIZE


cdef Py_ssize_t _buffer_table(const unsigned char* p, Py_ssize_t table,
                              Py_ssize_t body) except -1:
    """Check the whole buffer table at p (table bytes, _buffer_table_size)
    of a body of body bytes; returns the size of its buffers together."""
    cdef Py_ssize_t at, total = 0
    cdef uint64_t size
    for at in range(BUFFER_PREFIX_SIZE, table, BUFFER_ENTRY_SIZE):
        if p[at] != BUF_BYTES and p[at] != BUF_BYTEARRAY:
            raise ProtocolError("unknown out-of-band buffer kind 0x%02x" % p[at])
        size = fm_get_u64le(p + at + 1)
        if size < OOB_MIN:
            raise ProtocolError("an out-of-band buffer of %d bytes, fewer than %d" % (size, OOB_MIN))
        if size >= <uint64_t>body or total + <Py_ssize_t>size >= body:
            raise ProtocolError("out-of-band buffers larger than their message")
        total += <Py_ssize_t>size
    if table + total >= body:
        raise ProtocolError("out-of-band buffers larger than their message")
    return total


cdef object _new_buffer(uint8_t kind, Py_ssize_t size):
    """A new bytes (BUF_BYTES) or bytearray of size bytes, not filled in:
    the caller fills all of it before anything else sees it."""
    cdef object buf
    cdef char* p
    if kind == BUF_BYTES:
        buf = PyBytes_FromStringAndSize(NULL, size)
        p = PyBytes_AS_STRING(buf)
    else:
        buf = PyByteArray_FromStringAndSize(NULL, size)
        p = PyByteArray_AS_STRING(buf)
    if size >= HUGE_BUFFER_MIN:
        fm_advise_huge(p, size)
    return buf


cdef inline char* _buffer_memory(object buf) noexcept:
    if type(buf) is bytes:
        return PyBytes_AS_STRING(buf)
    return PyByteArray_AS_STRING(buf)


cdef _Taken _split_body(const unsigned char* p, Py_ssize_t* start, Py_ssize_t* size):
    """For a whole body at p[start[0]:start[0] + size[0]]: if it carries
    out-of-band buffers, narrow start and size to its inline body and
    return its buffers (copied out); else None."""
    cdef const unsigned char* body = p + start[0]
    cdef Py_ssize_t n = size[0], table, total, at, end, length
    cdef _Taken taken
    if n == 0 or body[0] != BODY_BUFFERS:
        return None
    table = _buffer_table_size(body, n)
    total = _buffer_table(body, table, n)
    taken = _Taken()
    taken.buffers = []
    end = n - total
    for at in range(BUFFER_PREFIX_SIZE, table, BUFFER_ENTRY_SIZE):
        length = <Py_ssize_t>fm_get_u64le(body + at + 1)
        buf = _new_buffer(body[at], length)
        memcpy(_buffer_memory(buf), body + end, length)
        end += length
        taken.buffers.append(buf)
    start[0] += table
    size[0] = n - table - total
    return taken


cdef _Taken _recv_buffers(Connection conn, Py_ssize_t header, Py_ssize_t body,
                          Py_ssize_t* start, Py_ssize_t* size, double deadline):
    """_recv_message() of a body that starts with BODY_BUFFERS (rbuf holds
    the frame's header and that byte): its table and inline body into
    rbuf, as a frame's body is; then each buffer, checked and allocated,
    filled from the bytes already read and then straight from the stream."""
    cdef Py_ssize_t table, total, at, n
    cdef _Taken taken = _Taken()
    cdef unsigned char* p
    if body >= BUFFER_PREFIX_SIZE:
        _fill(conn, header + BUFFER_PREFIX_SIZE, deadline)
    table = _buffer_table_size(conn.rbuf + conn.rstart + header, body)
    _fill(conn, header + table, deadline)
    total = _buffer_table(conn.rbuf + conn.rstart + header, table, body)
    _fill(conn, header + body - total, deadline)
    p = conn.rbuf + conn.rstart + header
    taken.buffers = [_new_buffer(p[at], <Py_ssize_t>fm_get_u64le(p + at + 1))
                     for at in range(BUFFER_PREFIX_SIZE, table, BUFFER_ENTRY_SIZE)]
    start[0] = conn.rstart + header + table
    size[0] = body - table - total
    conn.rstart += header + body - total
    for buf in taken.buffers:
        n = min(conn.rend - conn.rstart, Py_SIZE(buf))
        memcpy(_buffer_memory(buf), conn.rbuf + conn.rstart, n)
        conn.rstart += n
        if n < Py_SIZE(buf):
            _recv_into(conn, _buffer_memory(buf) + n, Py_SIZE(buf) - n, deadline)
    if conn.rstart == conn.rend:
        conn.rstart = conn.rend = 0
    return taken


cdef int _recv_into(Connection conn, char* dst, Py_ssize_t n, double deadline) except -1:
    """Read exactly n bytes of the stream straight into dst.  Precondition:
    rbuf holds no unconsumed byte.  Every path (_fill: the socket, rings,
    detours, TLS) reads into rbuf[rend:rcap]: for the while, rbuf is dst."""
    cdef unsigned char* saved = conn.rbuf
    cdef Py_ssize_t saved_cap = conn.rcap, saved_at = conn.rstart
    conn.rbuf = <unsigned char*>dst
    conn.rcap = n
    conn.rstart = conn.rend = 0
    try:
        _fill(conn, n, deadline)
    finally:
        conn.rbuf = saved
        conn.rcap = saved_cap
        conn.rstart = conn.rend = saved_at
    return 0
