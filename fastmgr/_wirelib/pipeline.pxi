# Pipelined calls (included by _wire.pyx; layouts in _wire.pxd): a
# Pipeline stands in for a Connection, sends calls in batches without
# waiting, and reads their replies in order into Pending objects.

@cython.final
cdef class Pending:
    """The reply to a pipelined call; result() waits for it if need be."""
    def done(self):
        return self.kind != 0

    def result(self):
        """The call's result, or its exception raised."""
        self.seen = True
        if self.kind == 0:
            self.pipe._wait_for(self)
        if self.kind == RESP_RETURN:
            return self.value
        return self.pipe.resolve(self.kind, self.value)

    def __repr__(self):
        return "<Pending %s>" % ("done" if self.kind else "waiting")


@cython.final
cdef class Pipeline:
    """Stands in for a Connection: call() sends without waiting and returns
    (RESP_RETURN, Pending).  Requests leave in batches; replies are read in
    order, when more than ``window`` are outstanding, when a result is
    asked for, and by sync()."""
    def __init__(self, Connection conn, resolve, Py_ssize_t window=4096):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.conn = conn
        self.resolve = resolve
        self.waiting = []
        self.failed = []
        self.window = window
        conn.wbuf.reset()

    @property
    def closed(self):
        return self.conn.closed

    def close(self):
        self.conn.close()

    @property
    def outstanding(self):
        return len(self.waiting) - self.head

    cdef int _flush(self) except -1:
        if self.queued:
            self.queued = 0
            _send_buffer(self.conn)
        return 0

    cdef int _read_one(self) except -1:
        cdef Pending p
        kind, value = self.conn.recv_response()
        p = self.waiting[self.head]
        self.waiting[self.head] = None
        self.head += 1
        if self.head == len(self.waiting):
            self.waiting.clear()
            self.head = 0
        p.value = value
        p.kind = kind
        if kind == RESP_ERROR or kind == RESP_FAILURE:
            self.failed.append(p)
        return 0

    cdef int _wait_for(self, Pending p) except -1:
        self._flush()
        while p.kind == 0:
            self._read_one()
        return 0

    def call(self, uint64_t ident, method, args=(), kwds=None):
        cdef Pending p
        if ident == 0:
            # the manager's own requests (create, incref...) stay synchronous
            self.sync()
            return self.conn.call(ident, method, args, kwds)
        _queue_request(self.conn, REQ_CALL, ident, method, args, kwds)
        self.queued += 1
        p = Pending()
        p.pipe = self
        self.waiting.append(p)
        if self.queued >= 512 or self.conn.wbuf.total() >= c_copy_threshold:
            self._flush()
        if len(self.waiting) - self.head > self.window:
            self._flush()
            while len(self.waiting) - self.head > self.window // 2:
                self._read_one()
        return (RESP_RETURN, p)

    def send_request(self, int kind, uint64_t ident, method, args=(), kwds=None):
        if kind != REQ_ONEWAY:
            raise ValueError("a pipeline sends calls with call()")
        _queue_request(self.conn, kind, ident, method, args, kwds)
        self.queued += 1
        if self.queued >= 512 or self.conn.wbuf.total() >= c_copy_threshold:
            self._flush()

    def sync(self):
        """Send what is queued and read every outstanding reply."""
        self._flush()
        while self.head < len(self.waiting):
            self._read_one()

    def unseen_errors(self):
        """Failed calls whose result() nobody asked for."""
        return [p for p in self.failed if not (<Pending>p).seen]
