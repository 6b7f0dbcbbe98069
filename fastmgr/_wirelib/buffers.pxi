# WriteBuffer: the bytes a connection is about to send (included by
# _wire.pyx; its layout is in _wire.pxd).

@cython.final
cdef class WriteBuffer:
    """A growable byte buffer, reused for every message of a connection.

    It may hold several frames (pipelined requests, coalesced responses).
    Large bytes values are not copied in: they are kept as *external*
    segments, sent in place by one sendmsg() with the inline bytes around them."""

    def __cinit__(self):
        self.capacity = 4096
        self.buf = <unsigned char*>PyMem_Malloc(self.capacity)
        if self.buf == NULL:
            raise MemoryError()
        self.length = 0
        self.externals = []

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef inline void reset(self) noexcept:
        self.length = 0
        if self.ext_bytes:
            self.externals.clear()
            self.ext_bytes = 0

    cdef inline Py_ssize_t total(self) noexcept:
        return self.length + self.ext_bytes

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

    cdef int write_bytes(self, bytes data) except -1:
        """Append the payload of a bytes value: in place when it is large."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.allow_external and n >= c_copy_threshold and len(self.externals) < MAX_EXTERNALS:
            self.externals.append((self.length, data))
            self.ext_bytes += n
            return 0
        return self.write_raw(PyBytes_AS_STRING(data), n)

    cdef inline Py_ssize_t begin_frame(self) except -1:
        """Reserve a frame header; returns its offset for end_frame()."""
        self.ensure(FRAME_HEADER_SIZE)
        self.length += FRAME_HEADER_SIZE
        self.frame_ext = self.ext_bytes
        return self.length - FRAME_HEADER_SIZE

    cdef int end_frame(self, Py_ssize_t start) except -1:
        """Write the header of the frame begun at start, now that its body
        is complete (the long header, moving the body up, for a body above
        MAX_SHORT_FRAME bytes)."""
        cdef Py_ssize_t n = (self.length - start - FRAME_HEADER_SIZE
                             + self.ext_bytes - self.frame_ext)
        cdef Py_ssize_t i, grow = LONG_FRAME_HEADER_SIZE - FRAME_HEADER_SIZE
        if n <= MAX_SHORT_FRAME:
            _put_header(self.buf + start, n)
            return 0
        self.ensure(grow)
        memmove(self.buf + start + LONG_FRAME_HEADER_SIZE, self.buf + start + FRAME_HEADER_SIZE,
                self.length - start - FRAME_HEADER_SIZE)
        self.length += grow
        for i in range(len(self.externals)):
            offset, data = self.externals[i]
            if offset > start:
                self.externals[i] = (offset + grow, data)
        _put_header(self.buf + start, n)
        return 0

    cdef bytes body(self):
        """Everything written, as one bytes object.
        Precondition: no externals (allow_external is off)."""
        return PyBytes_FromStringAndSize(<char*>self.buf, self.length)
