# Connection: its Python surface, and what every path shares: the read
# buffer, receiving a frame, queueing and sending frames (included by
# _wire.pyx; its layout is in _wire.pxd).  How bytes move is chosen per
# connection: through the socket (socket_path.pxi), through shared-memory
# rings (rings.pxi, detours.pxi), or through a TLS object (tls.pxi).

@cython.final
cdef class Connection:
    """A framed, connected stream socket (see _wire.pyi)."""

    def __cinit__(self):
        self.fd = -1
        self.rcap = 16384
        self.rbuf = <unsigned char*>PyMem_Malloc(self.rcap)
        if self.rbuf == NULL:
            raise MemoryError()

    def __init__(self, sock, Codec codec=None, Py_ssize_t max_message=DEFAULT_MAX_MESSAGE,
                 timeout=None):
        self.sock = sock
        self.fd = sock.fileno()
        self.codec = codec if codec is not None else Codec()
        self.max_message = max_message
        self.timeout = timeout
        self.spin_us = g_spin_us
        self.wbuf = WriteBuffer()
        if sock.family in (_socket.AF_INET, _socket.AF_INET6):
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if type(sock) is not _socket.socket:
            import ssl
            # TLS: bytes go through the SSL object, not straight to the fd
            self.pyio = isinstance(sock, ssl.SSLSocket)
        if self.pyio:
            self.spin_us = 0
        else:
            sock.setblocking(True)

    def __dealloc__(self):
        PyMem_Free(self.rbuf)
        _ring_unmap(self)

    property spin_us:
        """Spin budget before blocking, µs (0: never spin)."""
        def __get__(self):
            return self._spin_us
        def __set__(self, int value):
            self._spin_us = self.spin.budget_us = value

    property timeout:
        def __get__(self):
            return None if self._timeout < 0 else self._timeout
        def __set__(self, value):
            if value is None:
                self._timeout = NO_TIMEOUT
            elif value < 0:
                raise ValueError("timeout must be None or >= 0")
            else:
                self._timeout = value

    @property
    def closed(self):
        return self.fd < 0

    def fileno(self):
        _check_open(self)
        return self.fd

    def close(self):
        # the rings stay mapped until the object goes: a hub may look at
        # them until it lets go of the connection
        if self.fd >= 0:
            self.fd = -1
            self.sock.close()

    @staticmethod
    def ring_size():
        """Bytes of shared memory attach_ring() maps: two rings."""
        return 2 * sizeof(fm_ring)

    def attach_ring(self, int fd, bint server):
        """From now on, carry bytes through the two shared-memory rings in
        the file fd (ring_size() bytes, zeroed; the caller keeps fd): the
        first carries client to server, the second server to client.  The
        socket stays, for wake-ups, to see the peer close, and for messages
        too large for a ring (detours).  Both sides attach before either
        sends through the rings."""
        _ring_attach(self, fd, server)

    @property
    def has_ring(self):
        return self.shm != NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_bytes(self, buf, Py_ssize_t offset=0, size=None):
        cdef const unsigned char[::1] view = memoryview(buf).cast("B")
        cdef Py_ssize_t n = view.shape[0] - offset if size is None else size
        cdef iovec iov[2]
        cdef bytes head
        cdef Py_ssize_t start
        if offset < 0 or n < 0 or offset + n > view.shape[0]:
            raise ValueError("offset/size out of range")
        _check_open(self)
        self.wbuf.reset()
        if n <= c_copy_threshold:
            start = self.wbuf.begin_frame()
            if n:
                self.wbuf.write_raw(&view[offset], n)
            self.wbuf.end_frame(start, PY_SSIZE_T_MAX)  # raw bytes: no limit, as the stdlib
            return _send_buffer(self)
        head = _header(n)
        iov[0].iov_base = PyBytes_AS_STRING(head)
        iov[0].iov_len = PyBytes_GET_SIZE(head)
        iov[1].iov_base = <void*>&view[offset]
        iov[1].iov_len = n
        return _send_iov(self, iov, 2)

    def recv_bytes(self, maxlength=None):
        cdef Py_ssize_t start, size
        cdef Py_ssize_t limit = self.max_message
        if maxlength is not None:
            if maxlength < 0:
                raise ValueError("negative maxlength")
            limit = min(limit, maxlength)
        _check_open(self)
        _recv_frame(self, limit, &start, &size)
        data = PyBytes_FromStringAndSize(<char*>self.rbuf + start, size)
        _shrink(self)
        return data

    def send(self, obj):
        cdef Py_ssize_t start
        _check_open(self)
        self.wbuf.reset()
        start = self.wbuf.begin_frame()
        try:
            self.codec.encode_top(self.wbuf, obj)
        except BaseException:
            self.wbuf.reset()
            raise
        self.wbuf.end_frame(start, self.max_message)
        _send_buffer(self)

    def recv(self):
        cdef Py_ssize_t start, size, pos = 0
        cdef _Taken taken
        _check_open(self)
        taken = _recv_message(self, &start, &size)
        try:
            return self.codec.decode_all(self.rbuf + start, size, &pos, taken)
        finally:
            _shrink(self)

    def poll(self, timeout=0.0):
        cdef pollfd pfd
        cdef int rc, ms
        _check_open(self)
        if self.rend > self.rstart or (self.pyio and self.sock.pending()):
            return True
        if self.rx != NULL:
            return _ring_poll(self, timeout)
        ms = -1 if timeout is None else max(0, <int>(timeout * 1000.0))
        pfd.fd = self.fd
        pfd.events = POLLIN
        with nogil:
            rc = poll(&pfd, 1, ms)
        if rc < 0:
            PyErr_SetFromErrno(OSError)
        return rc > 0

    def send_request(self, int kind, uint64_t ident, method, args=(), kwds=None):
        _check_open(self)
        self.wbuf.reset()
        _queue_request(self, kind, ident, method, args, kwds)
        _send_buffer(self)

    def recv_response(self):
        cdef Py_ssize_t start, size
        cdef _Taken taken
        _check_open(self)
        taken = _recv_message(self, &start, &size)
        try:
            return self.codec.decode_response_at(self.rbuf + start, size, taken)
        finally:
            _shrink(self)

    # -- driven by an event loop (loop_path.pxi): none of these blocks --

    def loop_queue(self, int kind, uint64_t ident, method, args=(), kwds=None):
        """Queue a request frame; loop_send() sends it."""
        _check_open(self)
        _queue_request(self, kind, ident, method, args, kwds)

    def loop_send(self):
        """Send what the socket (or the tx ring) takes now of the queued
        frames; return how many bytes wait still (0: all sent)."""
        return _loop_send(self)

    def loop_receive(self, bint decode=True):
        """Take in what came, and return every whole frame: decoded as
        responses ((kind, value), or (0, exception) for one whose value
        does not decode), or without decode the bodies as bytes.  Raises
        EOFError once the peer has closed and no frame is left."""
        return _loop_receive(self, decode)

    def loop_spin(self):
        """Spin for up to the spin budget in force until bytes come (the
        caller then calls loop_receive); whether they did."""
        return _loop_spin(self)

    def call(self, uint64_t ident, method, args=(), kwds=None):
        """Send a request and wait for its response: (kind, value)."""
        cdef Py_ssize_t start, size
        cdef _Taken taken
        _check_open(self)
        self.wbuf.reset()
        _queue_request(self, REQ_CALL, ident, method, args, kwds)
        _send_buffer(self)
        taken = _recv_message(self, &start, &size)
        try:
            return self.codec.decode_response_at(self.rbuf + start, size, taken)
        finally:
            _shrink(self)


# -- what every path shares ---------------------------------------------------

cdef inline int _check_open(Connection conn) except -1:
    if conn.fd < 0:
        raise OSError("handle is closed")
    return 0


cdef int _check_signals(Connection conn) except -1:
    """Run pending signal handlers; one that raises also closes the
    connection, whose reply would otherwise be read as the answer to the
    next call."""
    try:
        PyErr_CheckSignals()
    except BaseException:
        conn.close()
        raise
    return 0


cdef inline double _deadline(Connection conn) noexcept:
    return NO_TIMEOUT if conn._timeout < 0 else _now() + conn._timeout


# -- receiving ----------------------------------------------------------------

cdef int _grow_rbuf(Connection conn) except -1:
    """Make room at the end of rbuf: compact, or double it if full."""
    if conn.rstart > 0:
        memmove(conn.rbuf, conn.rbuf + conn.rstart, conn.rend - conn.rstart)
        conn.rend -= conn.rstart
        conn.rstart = 0
    else:
        conn.rbuf = <unsigned char*>_realloc_or_raise(conn.rbuf, conn.rcap * 2)
        conn.rcap *= 2
    return 0


cdef int _fill(Connection conn, Py_ssize_t need, double deadline) except -1:
    """Read until rbuf holds at least need unconsumed bytes.
    Raises EOFError if the peer closes first."""
    cdef Py_ssize_t have
    _check_open(conn)
    if conn.rstart + need > conn.rcap:
        # compact first, grow only if that is not enough
        have = conn.rend - conn.rstart
        memmove(conn.rbuf, conn.rbuf + conn.rstart, have)
        conn.rstart = 0
        conn.rend = have
        if need > conn.rcap:
            conn.rbuf = <unsigned char*>_realloc_or_raise(conn.rbuf, need)
            conn.rcap = need
            if need >= HUGE_BUFFER_MIN:
                # (fresh: _shrink gives it back after the message)
                fm_advise_huge(<char*>conn.rbuf, need)
    if conn.pyio:
        return _tls_fill(conn, need, deadline)
    if conn.rx != NULL:
        return _ring_fill(conn, need, deadline)
    return _sock_fill(conn, need, deadline)


cdef int _recv_frame(Connection conn, Py_ssize_t limit, Py_ssize_t* start,
                     Py_ssize_t* size) except -1:
    """Receive one frame; its body is rbuf[start:start + size] until the
    next receive. Precondition: the connection is open."""
    cdef Py_ssize_t header = 0, body = 0
    cdef double deadline = _deadline(conn)
    if conn.rend - conn.rstart < FRAME_HEADER_SIZE:
        _fill(conn, FRAME_HEADER_SIZE, deadline)
    try:
        _parse_header(conn.rbuf + conn.rstart, conn.rend - conn.rstart, limit, &header, &body)
        if header == 0:
            _fill(conn, LONG_FRAME_HEADER_SIZE, deadline)
            _parse_header(conn.rbuf + conn.rstart, conn.rend - conn.rstart, limit, &header,
                          &body)
    except ProtocolError:
        # a refused header cannot be skipped: the stream is lost
        conn.close()
        raise
    if conn.rend - conn.rstart < header + body:
        _fill(conn, header + body, deadline)
    start[0] = conn.rstart + header
    size[0] = body
    conn.rstart += header + body
    if conn.rstart == conn.rend:
        conn.rstart = conn.rend = 0
    return 0


cdef _Taken _recv_message(Connection conn, Py_ssize_t* start, Py_ssize_t* size):
    """Receive one frame, as _recv_frame(); if its body carries out-of-band
    buffers (_protocol.py), read each straight into the object it becomes
    (outofband.pxi) and return them, start and size narrowed to its inline
    body; else return None."""
    cdef Py_ssize_t header = 0, body = 0
    cdef double deadline = _deadline(conn)
    if conn.rend - conn.rstart < FRAME_HEADER_SIZE:
        _fill(conn, FRAME_HEADER_SIZE, deadline)
    try:
        _parse_header(conn.rbuf + conn.rstart, conn.rend - conn.rstart, conn.max_message,
                      &header, &body)
        if header == 0:
            _fill(conn, LONG_FRAME_HEADER_SIZE, deadline)
            _parse_header(conn.rbuf + conn.rstart, conn.rend - conn.rstart, conn.max_message,
                          &header, &body)
    except ProtocolError:
        # a refused header cannot be skipped: the stream is lost
        conn.close()
        raise
    if conn.rend - conn.rstart < header + body:
        if conn.rend - conn.rstart == header and body:
            _fill(conn, header + 1, deadline)
        if body == 0 or conn.rbuf[conn.rstart + header] != BODY_BUFFERS:
            _fill(conn, header + body, deadline)
    if body == 0 or conn.rbuf[conn.rstart + header] != BODY_BUFFERS:
        start[0] = conn.rstart + header
        size[0] = body
        conn.rstart += header + body
        if conn.rstart == conn.rend:
            conn.rstart = conn.rend = 0
        return None
    try:
        return _recv_buffers(conn, header, body, start, size, deadline)
    except BaseException:
        conn.close()  # the rest of the frame is still to come: the stream is lost
        raise


cdef void _shrink(Connection conn) noexcept:
    """Give back a buffer that one large message grew, once it is empty."""
    cdef unsigned char* nbuf
    if conn.rcap > (4 << 20) and conn.rstart == conn.rend:
        nbuf = <unsigned char*>PyMem_Realloc(conn.rbuf, 16384)
        if nbuf != NULL:
            conn.rbuf = nbuf
            conn.rcap = 16384
            conn.rstart = conn.rend = 0


cdef inline bint _backlog_full(Connection conn, size_t unsent) noexcept nogil:
    """Whether a server's connection holds all it may of unread requests
    plus unsent replies (backlog_max; unsent: what the send that waits has
    left): it then reads no more until its replies drain, as a stdlib
    server would, and a client that sends and never reads cannot grow it."""
    return (conn.backlog_max > 0
            and <size_t>(conn.rend - conn.rstart) + unsent >= <size_t>conn.backlog_max)


cdef int _read_available(Connection conn, size_t unsent) except -1:
    """Read what has arrived into rbuf without blocking (growing it if
    full): used while a send of unsent more bytes waits, so that two peers
    that both write a lot cannot block each other forever; a server's
    connection reads only up to its backlog_max.  Returns 1 if the peer has
    closed its side (nothing more will come), else 0."""
    cdef ssize_t got
    cdef Py_ssize_t most = PY_SSIZE_T_MAX
    if conn.backlog_max > 0:
        if _backlog_full(conn, unsent):
            return 0
        most = conn.backlog_max - (conn.rend - conn.rstart) - <Py_ssize_t>unsent
    if conn.rend == conn.rcap:
        _grow_rbuf(conn)
    if most > conn.rcap - conn.rend:
        most = conn.rcap - conn.rend
    if conn.rx != NULL:
        if _ring_read(conn, most) > 0:
            return 0
        got = _take_wakeups(conn, MSG_DONTWAIT)
        if got == -2:
            return _ring_corrupt(conn)
        return got == 0
    return _sock_read_available(conn, most)


# -- sending ------------------------------------------------------------------

cdef int _send_iov(Connection conn, iovec* iov, int count) except -1:
    """Send iov[0:count] completely, resuming after partial writes.
    Precondition: the connection is open."""
    if conn.pyio:
        return _tls_send(conn, iov, count)
    if conn.tx != NULL:
        return _ring_send_iov(conn, iov, count)
    return _sock_send_iov(conn, iov, count)


cdef int _send_buffer(Connection conn) except -1:
    """Send all of wbuf (one or more frames) with one sendmsg, the
    out-of-band buffers in place; then empty it."""
    cdef iovec iov[MAX_SEGMENTS]
    cdef int count = 0
    cdef Py_ssize_t pos = 0, offset, n
    cdef WriteBuffer w = conn.wbuf
    cdef const char* data
    try:
        _check_open(conn)
        # the peer answers a large message only once it has taken it in
        if g_full:
            conn.spin_extra = <int>min(w.total() // SPIN_EXTRA_BYTES, SPIN_EXTRA_MAX_US)
        if w.noob == 0:
            iov[0].iov_base = w.buf
            iov[0].iov_len = w.length
            return _send_iov(conn, iov, 1)
        if 2 * w.noob + 1 > MAX_SEGMENTS:
            # cannot happen: every frame with buffers is sent before the next
            raise RuntimeError("too many out-of-band buffers queued to send at once")
        for offset, segment in w.oob:
            if offset > pos:
                iov[count].iov_base = w.buf + pos
                iov[count].iov_len = offset - pos
                count += 1
            _segment(segment, &data, &n)
            iov[count].iov_base = <void*>data
            iov[count].iov_len = n
            count += 1
            pos = offset
        if w.length > pos:
            iov[count].iov_base = w.buf + pos
            iov[count].iov_len = w.length - pos
            count += 1
        return _send_iov(conn, iov, count)
    finally:
        w.reset()


cdef int _rollback(Connection conn, Py_ssize_t start, Py_ssize_t buffers) except -1:
    """Forget a frame whose encoding failed half-way."""
    conn.wbuf.length = start
    conn.wbuf.drop_buffers(buffers)
    return 0


cdef int _queue_request(Connection conn, int kind, uint64_t ident, method, args,
                        kwds) except -1:
    """Append one request frame to wbuf (not sent yet); MessageTooLarge
    (and none) above the connection's limit."""
    cdef Py_ssize_t buffers = conn.wbuf.noob
    cdef Py_ssize_t start = conn.wbuf.begin_frame()
    try:
        conn.codec.encode_request_into(conn.wbuf, kind, ident, method, args, kwds)
    except BaseException:
        _rollback(conn, start, buffers)
        raise
    return conn.wbuf.end_frame(start, conn.max_message)


cdef int _queue_response(Connection conn, int kind, value) except -1:
    """Append one response frame to wbuf (not sent yet); MessageTooLarge
    (and none) above the connection's limit."""
    cdef Py_ssize_t buffers = conn.wbuf.noob
    cdef Py_ssize_t start = conn.wbuf.begin_frame()
    try:
        conn.codec.encode_response_into(conn.wbuf, kind, value)
    except BaseException:
        _rollback(conn, start, buffers)
        raise
    return conn.wbuf.end_frame(start, conn.max_message)
