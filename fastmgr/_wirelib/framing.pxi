# Framing (included by _wire.pyx): the stdlib's frame header, written by
# _put_header() and read in one place, _frame_at(); FrameReader for feeds
# in any split (a Connection reads into its own buffer, _recv_frame()).

cdef inline Py_ssize_t _put_header(unsigned char* h, Py_ssize_t n) noexcept nogil:
    """Write the header of a frame of n body bytes at h (room for
    LONG_FRAME_HEADER_SIZE bytes); returns its size."""
    if n <= MAX_SHORT_FRAME:
        fm_put_i32be(h, <uint32_t>n)
        return FRAME_HEADER_SIZE
    fm_put_i32be(h, 0xffffffff)
    fm_put_i32be(h + 4, <uint32_t>(<uint64_t>n >> 32))
    fm_put_i32be(h + 8, <uint32_t>n)
    return LONG_FRAME_HEADER_SIZE


cdef bytes _header(Py_ssize_t n):
    """The stdlib's frame header for a body of n bytes."""
    cdef unsigned char h[LONG_FRAME_HEADER_SIZE]
    return PyBytes_FromStringAndSize(<char*>h, _put_header(h, n))


def frame(body):
    """Header + body, as one bytes object."""
    cdef bytes data = bytes(memoryview(body))
    return _header(len(data)) + data


cdef inline FrameState _frame_at(const unsigned char* p, Py_ssize_t avail, Py_ssize_t limit,
                                 Py_ssize_t* header, uint64_t* body) noexcept nogil:
    """What the avail bytes at p hold: the one reader of frame headers.
    Sets header to the header's size as its first four bytes tell (0 while
    fewer are in) and, once the whole header is in, body to the length it
    announces (for FRAME_MALFORMED: that negative length, as an int64).
    Returns FRAME_PARTIAL (more bytes must come), FRAME_WHOLE,
    FRAME_TOO_LARGE (a body over limit) or FRAME_MALFORMED."""
    cdef int n32
    cdef uint64_t n
    header[0] = 0
    if avail < FRAME_HEADER_SIZE:
        return FRAME_PARTIAL
    n32 = fm_get_i32be(p)
    if n32 >= 0:
        header[0] = FRAME_HEADER_SIZE
        n = <uint64_t>n32
    elif n32 == -1:
        header[0] = LONG_FRAME_HEADER_SIZE
        if avail < LONG_FRAME_HEADER_SIZE:
            return FRAME_PARTIAL
        n = fm_get_u64be(p + FRAME_HEADER_SIZE)
    else:
        body[0] = <uint64_t><int64_t>n32
        return FRAME_MALFORMED
    body[0] = n
    if n > <uint64_t>limit:
        return FRAME_TOO_LARGE
    if <uint64_t>(avail - header[0]) < n:
        return FRAME_PARTIAL
    return FRAME_WHOLE


cdef int _parse_header(const unsigned char* p, Py_ssize_t avail, Py_ssize_t limit,
                       Py_ssize_t* header, Py_ssize_t* body) except -1:
    """Parse a frame header from p[0:avail]. Returns 0 and leaves header[0]
    at 0 when more bytes are needed; else sets header size and body size.
    Raises MessageTooLarge above limit and ProtocolError on a bad length."""
    cdef uint64_t n = 0
    cdef FrameState state = _frame_at(p, avail, limit, header, &n)
    if state == FRAME_TOO_LARGE:
        raise MessageTooLarge("message of %d bytes exceeds the limit of %d" % (n, limit))
    if state == FRAME_MALFORMED:
        raise ProtocolError("bad message length %d" % <int64_t>n)
    if avail < header[0]:
        header[0] = 0
    else:
        body[0] = <Py_ssize_t>n
    return 0


cdef FrameState _frame_state(Connection conn) noexcept:
    """For a hub: FRAME_WHOLE when conn's read buffer holds the whole next
    frame, FRAME_PARTIAL when more bytes must come first, FRAME_NEEDS_CARE
    when its header needs _recv_frame()'s care (too large, malformed, or
    the long form, of a frame over MAX_SHORT_FRAME bytes), FRAME_BUFFERS
    when it holds the head of a larger frame whose body carries
    out-of-band buffers, up to its request's ident (_request_head_at)."""
    cdef Py_ssize_t header
    cdef uint64_t body
    cdef FrameState state = _frame_at(conn.rbuf + conn.rstart, conn.rend - conn.rstart,
                                      conn.max_message, &header, &body)
    if state == FRAME_TOO_LARGE or state == FRAME_MALFORMED or header == LONG_FRAME_HEADER_SIZE:
        return FRAME_NEEDS_CARE
    if (state == FRAME_PARTIAL and header == FRAME_HEADER_SIZE
            and conn.rend - conn.rstart >= FRAME_HEADER_SIZE + BUFFER_PREFIX_SIZE
            and conn.rbuf[conn.rstart + FRAME_HEADER_SIZE] == BODY_BUFFERS
            and conn.rend - conn.rstart >= _request_head_at(conn) + REQUEST_HEAD_SIZE):
        return FRAME_BUFFERS
    return state


cdef inline Py_ssize_t _request_head_at(Connection conn) noexcept:
    """Where the head of the request in the frame at rstart begins, from
    rstart: after the buffer table of a body that carries out-of-band
    buffers (at most MAX_BUFFERS entries are counted: the receive refuses
    more; before the table's prefix is in, as many).  Precondition: rbuf
    holds the frame's header."""
    cdef uint32_t count = MAX_BUFFERS
    if (conn.rend - conn.rstart <= FRAME_HEADER_SIZE
            or conn.rbuf[conn.rstart + FRAME_HEADER_SIZE] != BODY_BUFFERS):
        return FRAME_HEADER_SIZE
    if conn.rend - conn.rstart >= FRAME_HEADER_SIZE + BUFFER_PREFIX_SIZE:
        count = fm_get_u32le(conn.rbuf + conn.rstart + FRAME_HEADER_SIZE + 1)
    if count > MAX_BUFFERS:
        count = MAX_BUFFERS
    return FRAME_HEADER_SIZE + BUFFER_PREFIX_SIZE + count * BUFFER_ENTRY_SIZE


@cython.final
cdef class FrameReader:
    """Feed bytes in any split; take whole bodies out."""

    def __init__(self, Py_ssize_t max_message=DEFAULT_MAX_MESSAGE):
        self.data = bytearray()
        self.max_message = max_message

    def feed(self, data):
        self.data += data

    def next_message(self):
        cdef Py_ssize_t header = 0, body = 0
        cdef const unsigned char* p = <const unsigned char*><char*>self.data
        _parse_header(p, len(self.data), self.max_message, &header, &body)
        if header == 0 or len(self.data) - header < body:
            return None
        message = bytes(self.data[header:header + body])
        del self.data[:header + body]
        return message
