# WriteBuffer: the bytes a connection is about to send (included by
# _wire.pyx; its layout is in _wire.pxd).

@cython.final
cdef class WriteBuffer:
    """A growable byte buffer, reused for every message of a connection.

    It may hold several frames (pipelined requests, coalesced responses).
    The large buffers of a body (_protocol.py, "Out-of-band buffers") are
    not copied in: each is kept, with the object that owns its memory, as
    an *out-of-band segment* behind its body's inline bytes, and sent in
    place by one sendmsg() with the inline bytes around it."""

    def __cinit__(self):
        self.capacity = 4096
        self.buf = <unsigned char*>PyMem_Malloc(self.capacity)
        if self.buf == NULL:
            raise MemoryError()
        self.length = 0
        self.oob = []

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef inline void reset(self) noexcept:
        self.length = 0
        if self.noob:
            self.oob.clear()  # lets go of the values whose memory they are
            self.noob = self.oob_bytes = 0

    cdef inline Py_ssize_t total(self) noexcept:
        return self.length + self.oob_bytes

    cdef int _grow(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t cap = self.capacity * 2
        while cap < self.length + extra:
            cap *= 2
        self.buf = <unsigned char*>_realloc_or_raise(self.buf, cap)
        self.capacity = cap
        return 0

    cdef inline int ensure(self, Py_ssize_t extra) except -1:
        if self.length + extra > self.capacity:
            self._grow(extra)
        return 0

    cdef inline int write_u8(self, uint8_t v) except -1:
        self.ensure(1)
        self.buf[self.length] = v
        self.length += 1
        return 0

    cdef inline int write_tag_u32(self, uint8_t tag, uint32_t v) except -1:
        self.ensure(5)
        self.buf[self.length] = tag
        fm_put_u32le(self.buf + self.length + 1, v)
        self.length += 5
        return 0

    cdef inline int write_tag_u64(self, uint8_t tag, uint64_t v) except -1:
        self.ensure(9)
        self.buf[self.length] = tag
        fm_put_u64le(self.buf + self.length + 1, v)
        self.length += 9
        return 0

    cdef inline int write_raw(self, const void* data, Py_ssize_t n) except -1:
        self.ensure(n)
        memcpy(self.buf + self.length, data, n)
        self.length += n
        return 0

    # -- out-of-band segments -------------------------------------------

    cdef inline Py_ssize_t buffer_room(self) noexcept:
        """How many more out-of-band buffers the open body may take."""
        return MAX_BUFFERS - (self.noob - self.body_oob)

    cdef int add_buffer(self, object data) except -1:
        """Keep data (bytes, or a flat memoryview) as the open body's next
        out-of-band buffer; end_body() places it.  Precondition:
        buffer_room() > 0."""
        self.oob.append((-1, data))
        self.noob += 1
        self.oob_bytes += _segment_size(data)
        return 0

    cdef int drop_buffers(self, Py_ssize_t count) except -1:
        """Forget the out-of-band buffers after the first count."""
        while self.noob > count:
            self.oob_bytes -= _segment_size(self.oob.pop()[1])
            self.noob -= 1
        return 0

    cdef inline Py_ssize_t begin_body(self) noexcept:
        """Mark where a body begins; returns the offset for end_body()."""
        self.body_oob = self.noob
        return self.length

    cdef Py_ssize_t end_body(self, Py_ssize_t start) except -1:
        """Complete the body begun at start: if it took out-of-band buffers,
        put the buffer table in front of its inline bytes and the buffers
        behind them.  Returns the body's size, buffers included."""
        cdef Py_ssize_t count = self.noob - self.body_oob
        cdef Py_ssize_t table = BUFFER_PREFIX_SIZE + count * BUFFER_ENTRY_SIZE
        cdef Py_ssize_t i, n, size = 0
        cdef unsigned char* p
        if count == 0:
            return self.length - start
        self.ensure(table)
        memmove(self.buf + start + table, self.buf + start, self.length - start)
        self.length += table
        p = self.buf + start
        p[0] = BODY_BUFFERS
        fm_put_u32le(p + 1, <uint32_t>count)
        p += BUFFER_PREFIX_SIZE
        for i in range(self.body_oob, self.noob):
            data = self.oob[i][1]
            n = _segment_size(data)
            p[0] = BUF_BYTES if type(data) is bytes else BUF_BYTEARRAY
            fm_put_u64le(p + 1, <uint64_t>n)
            p += BUFFER_ENTRY_SIZE
            size += n
            self.oob[i] = (self.length, data)
        self.body_oob = self.noob
        return self.length - start + size

    # -- frames -------------------------------------------------------------

    cdef inline Py_ssize_t begin_frame(self) except -1:
        """Reserve a frame header; returns its offset for end_frame()."""
        self.ensure(FRAME_HEADER_SIZE)
        self.length += FRAME_HEADER_SIZE
        self.begin_body()
        return self.length - FRAME_HEADER_SIZE

    cdef int end_frame(self, Py_ssize_t start, Py_ssize_t limit) except -1:
        """Write the header of the frame begun at start, now that its body
        is complete (the long header, moving the body up, for a body above
        MAX_SHORT_FRAME bytes).  A body above limit is forgotten, and raises
        MessageTooLarge: nothing of it has left."""
        cdef Py_ssize_t buffers = self.body_oob
        cdef Py_ssize_t n, i, grow = LONG_FRAME_HEADER_SIZE - FRAME_HEADER_SIZE
        if self.noob == buffers:
            n = self.length - start - FRAME_HEADER_SIZE  # the usual: no out-of-band buffer
        else:
            n = self.end_body(start + FRAME_HEADER_SIZE)
        if n > limit:
            self.length = start
            self.drop_buffers(buffers)
            raise MessageTooLarge("a message of %d bytes is larger than the limit of %d"
                                  % (n, limit))
        if n <= MAX_SHORT_FRAME:
            _put_header(self.buf + start, n)
            return 0
        self.ensure(grow)
        memmove(self.buf + start + LONG_FRAME_HEADER_SIZE, self.buf + start + FRAME_HEADER_SIZE,
                self.length - start - FRAME_HEADER_SIZE)
        self.length += grow
        for i in range(self.noob):
            offset, data = self.oob[i]
            if offset > start:
                self.oob[i] = (offset + grow, data)
        _put_header(self.buf + start, n)
        return 0

    cdef bytes joined(self):
        """Everything written, the out-of-band segments in their places,
        as one bytes object."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self.total())
        cdef char* dst = PyBytes_AS_STRING(out)
        cdef Py_ssize_t pos = 0, offset, n
        cdef const char* src
        for offset, data in self.oob:
            memcpy(dst, self.buf + pos, offset - pos)
            dst += offset - pos
            pos = offset
            _segment(data, &src, &n)
            memcpy(dst, src, n)
            dst += n
        memcpy(dst, self.buf + pos, self.length - pos)
        return out


cdef inline int _segment(object data, const char** p, Py_ssize_t* n) except -1:
    """The memory of an out-of-band segment: bytes, or a flat memoryview
    (of a PickleBuffer's raw(), which keeps its exporter's memory alive)."""
    cdef Py_buffer* view
    if type(data) is bytes:
        p[0] = PyBytes_AS_STRING(data)
        n[0] = PyBytes_GET_SIZE(data)
    else:
        view = PyMemoryView_GET_BUFFER(data)
        p[0] = <const char*>view.buf
        n[0] = view.len
    return 0


cdef inline Py_ssize_t _segment_size(object data) except -1:
    cdef const char* p
    cdef Py_ssize_t n
    _segment(data, &p, &n)
    return n
