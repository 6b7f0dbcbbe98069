# The hub (included by _wire.pyx; layouts in _wire.pxd): one loop thread
# serves every connection that is idle or quick.  How the loop waits is in
# hub_wait.pxi, the watchdog that replaces a stuck loop thread in
# watchdog.pxi; the functions there and here take the hub first.

@cython.final
cdef class _Served:
    """A connection in a hub's care."""

    def __cinit__(self):
        self.ring_at = -1
        self.drained = -1


@cython.final
cdef class Hub:
    """Serves many connections from one loop thread (see _wire.pyi).

    A thread per connection costs a wake-up and a GIL hand-off for every
    call; one thread that waits on all connections at once (spinning
    first, then in epoll) serves whatever is ready without either.  Calls
    that may block, or that must run on one thread throughout, would stall
    everyone here, so a connection leaves the hub for a thread of its own
    when (a) a request names a thread-bound object (Entry.thread_bound:
    locks, queues, ...), or (b) a call or send runs long: the watchdog then
    starts a new loop thread and the old one stays with that connection."""

    def __cinit__(self):
        self.epfd = self.wakefd = self.parkfd = -1

    def __init__(self, dict table, fallback, start_thread, spin_us=None):
        cdef epoll_event ev
        self.table = table
        self.fallback = fallback
        self.start_thread = start_thread
        self.served = {}
        self.spin_us = self.spin.budget_us = g_spin_us if spin_us is None else spin_us
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        self.parkfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.epfd < 0 or self.wakefd < 0 or self.parkfd < 0:
            PyErr_SetFromErrno(OSError)
        ev.events = EPOLLIN
        ev.data.u64 = 0
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.wakefd, &ev) < 0:
            PyErr_SetFromErrno(OSError)

    def __dealloc__(self):
        for fd in (self.epfd, self.wakefd, self.parkfd):
            if fd >= 0:
                c_close(fd)
        PyMem_Free(self.ring_rx)
        PyMem_Free(self.ring_head)
        PyMem_Free(self.ring_token)

    def add(self, Connection conn, Entry control, make_proxy, finished):
        """Serve conn from now on; finished(exc) is called when that ends."""
        cdef epoll_event ev
        cdef _Served s = _Served()
        s.conn, s.control, s.make_proxy, s.finished = conn, control, make_proxy, finished
        s.reply = _Reply()
        conn.backlog_max = c_backlog_max  # a server's connection (see _backlog_full)
        if self.closed:
            raise OSError("the hub is closed")
        # a thread that cannot be had now is asked for again at the next
        # add: one failure must not leave the hub without its loop.  Each
        # flag is raised before its thread starts, so that adds on other
        # threads meanwhile (handshakes run in parallel) start no second one
        if not self.started:
            self.started = True
            try:
                self.start_thread(self.run)
            except BaseException:
                self.started = False
                raise
        if not self.watching:
            self.watching = True
            try:
                self.start_thread(self.watch)
            except Exception:
                self.watching = False
        if conn.pyio or self.epfd < 0:
            self.start_thread(self._own_thread, s)
            return
        self.tokens += 1
        s.token = self.tokens
        if conn.rx != NULL:
            # until the loop looks at this ring itself, the client rings
            # for every message: the loop learns of it through epoll
            fm_flag_set(&conn.rx.reader_waiting, 1)
        self.served[s.token] = s
        ev.events = EPOLLIN
        ev.data.u64 = s.token
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, conn.fd, &ev) < 0:
            del self.served[s.token]
            PyErr_SetFromErrno(OSError)

    def close(self):
        """Stop the loop and the watchdog (connections are the caller's)."""
        cdef uint64_t one = 1
        self.closed = True
        c_write(self.wakefd, &one, 8)
        c_write(self.parkfd, &one, 8)

    def stats(self):
        return {"connections": len(self.served), "replacements": self.replacements,
                "handovers": self.handovers}

    def run(self):
        """The loop thread: until closed, or replaced by the watchdog."""
        cdef long gen = self.generation
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i, outcome
        cdef uint64_t token
        cdef _Served s
        import threading
        self.loop_tid = threading.get_native_id()
        while not self.closed:
            n = _hub_wait(self, events)
            for i in range(n):
                token = events[i].data.u64
                if token == 0:
                    continue
                s = self.served.get(token)
                if s is None:
                    continue
                outcome = _hub_serve_ready(self, s, gen)
                if outcome == OWN_THREAD:
                    self.handovers += 1
                    _hub_forget(self, s)
                    try:
                        self.start_thread(self._own_thread, s)
                    except BaseException as exc:  # no thread to be had: drop s, not the loop
                        _hub_end(self, s, exc)
                elif outcome == REPLACED:
                    self._own_thread(s)
                    return

    def _own_thread(self, _Served s):
        """Serve s on this thread until it ends."""
        exc = None
        try:
            if not s.ended and not s.conn.closed:
                s.conn.moves = True
                if s.conn.wbuf.length:
                    _send_buffer(s.conn)
                serve_connection(s.conn, self.table, s.control, self.fallback, s.make_proxy)
        except BaseException as e:
            exc = e
        _hub_end(self, s, exc)

    def watch(self, double interval=0.002, double patience=0.05):
        """Replace the loop thread when it is stuck serving one connection:
        after `interval` s if it sleeps (a blocking call, a full socket),
        after `patience` s if it computes (it holds the GIL anyway)."""
        _watchdog(self, interval, patience)


cdef int _hub_serve_ready(Hub hub, _Served s, long gen) except -1:
    """Read what s sent, run every whole request, send the replies."""
    cdef Connection conn = s.conn
    cdef Py_ssize_t got = -1, start, size
    cdef FrameState state
    cdef _Taken taken
    hub.current = s
    fm_store(&hub.call_seq, hub.call_seq + 1)
    fm_store(&hub.busy, 1)
    try:
        if s.ring_at < 0 and conn.rx != NULL:
            _hub_ring_add(hub, s)
        if _frame_state(conn) != FRAME_WHOLE:
            # clients ring only while the loop sleeps: their wake-ups
            # can wait on the socket only if it slept since last read
            got = _hub_read(conn, s.drained != hub.sleeps)
            s.drained = hub.sleeps
        while True:
            state = _frame_state(conn)
            # (replies also go out before a frame with buffers is read in,
            # which may take a while)
            if conn.wbuf.length and (state == FRAME_PARTIAL or state == FRAME_BUFFERS
                                     or conn.wbuf.total() >= c_copy_threshold):
                _send_buffer(conn)
                if gen != hub.generation:
                    return REPLACED
                continue  # a send that had to wait may have read more requests
            if state == FRAME_PARTIAL:
                if conn.rend > conn.rstart:
                    hub.partial = True
                break
            if _needs_own_thread(hub, conn, state):
                return OWN_THREAD
            # a frame with buffers that is not all in yet is read in here, at
            # once (the watchdog takes over from this thread if it takes long)
            taken = _recv_message(conn, &start, &size)
            _serve_frame(conn, start, size, taken, hub.table, s.control, hub.fallback,
                         s.make_proxy, s.reply)
            taken = None
            if gen != hub.generation:
                return REPLACED
            fm_store(&hub.call_seq, hub.call_seq + 1)
        if got == 0:
            _hub_end(hub, s, None)
        else:
            hub.last = s
    except BaseException as exc:
        _hub_end(hub, s, exc)
    finally:
        if gen == hub.generation:
            fm_store(&hub.busy, 0)
            hub.current = None
    # replaced during the last step: this thread keeps s (even ended)
    return SERVED if gen == hub.generation else REPLACED


cdef int _needs_own_thread(Hub hub, Connection conn, FrameState state) except -1:
    """Whether the whole frame at the start of conn's read buffer must be
    served on a thread of its own: its header needs care, it is too short
    for a request head (decoding it will say why), or its request names a
    thread-bound object."""
    cdef object entry
    cdef Py_ssize_t head = _request_head_at(conn)
    if (state == FRAME_NEEDS_CARE
            or conn.rend - conn.rstart < FRAME_HEADER_SIZE + REQUEST_HEAD_SIZE
            or conn.rend - conn.rstart < head + REQUEST_HEAD_SIZE):
        return True
    entry = hub.table.get(fm_get_u64le(conn.rbuf + conn.rstart + head + REQUEST_IDENT_OFFSET))
    return type(entry) is Entry and (<Entry>entry).thread_bound


cdef Py_ssize_t _hub_read(Connection conn, bint drain) except -2:
    """One non-blocking read, with room made for the whole frame in
    progress. Returns the bytes read, 0 at EOF, -1 if none had come.
    With rings, drain: wake-up bytes may wait on the socket."""
    cdef Py_ssize_t have = conn.rend - conn.rstart
    cdef Py_ssize_t need = 4096
    cdef Py_ssize_t header
    cdef uint64_t body
    cdef ssize_t got
    _check_open(conn)
    if (_frame_at(conn.rbuf + conn.rstart, have, conn.max_message, &header, &body) == FRAME_PARTIAL
            and header == FRAME_HEADER_SIZE):
        need = header + <Py_ssize_t>body - have
        if need > HUB_PEEK and (have <= header or conn.rbuf[conn.rstart + header] == BODY_BUFFERS):
            # a large frame: first learn whether its body carries out-of-band
            # buffers, which are not read into rbuf (_recv_message)
            need = HUB_PEEK
    if conn.rcap - conn.rend < need:
        memmove(conn.rbuf, conn.rbuf + conn.rstart, have)
        conn.rstart = 0
        conn.rend = have
        if conn.rcap - have < need:
            conn.rbuf = <unsigned char*>_realloc_or_raise(conn.rbuf, have + need)
            conn.rcap = have + need
    if conn.rx != NULL:
        return _ring_hub_read(conn, drain)
    got = c_recv(conn.fd, conn.rbuf + conn.rend, conn.rcap - conn.rend, MSG_DONTWAIT)
    if got > 0:
        conn.rend += got
        return got
    if got == 0:
        return 0
    if fm_again(errno) or errno == EINTR:
        return -1
    PyErr_SetFromErrno(OSError)
    return -2


cdef void _hub_forget(Hub hub, _Served s) noexcept:
    """Take s out of the hub (it is served elsewhere, or ended)."""
    cdef epoll_event ev
    if hub.last is s:
        hub.last = None
    _hub_ring_remove(hub, s)
    if hub.served.pop(s.token, None) is not None and s.conn.fd >= 0:
        epoll_ctl(hub.epfd, EPOLL_CTL_DEL, s.conn.fd, &ev)


cdef int _hub_end(Hub hub, _Served s, exc) except -1:
    """Serving s has ended (exc: why, None if the peer closed): close it
    and tell its finished() hook, once."""
    if s.ended:
        return 0
    s.ended = True
    _hub_forget(hub, s)
    _flush_before_failing(s.conn)
    s.conn.close()
    try:
        s.finished(exc)
    except BaseException:
        pass  # the hook's own failure must not stop the loop
    return 0
