# Serving (included by _wire.pyx; layouts in _wire.pxd): the server's
# object table rows (Entry), and the loop that serves one connection:
# receive a frame, decode the request, look up the object, check the
# method is exposed, call it, encode the reply, send.  A Hub runs the same
# steps for many connections (hub.pxi).

@cython.final
cdef class Entry:
    """One row of a server's object table: a shared object and how it may
    be called (see serve_connection)."""

    def __init__(self, obj, exposed, method_to_typeid=None, bint thread_bound=False):
        self.obj = obj
        self.exposed = exposed
        self.method_to_typeid = method_to_typeid
        self.thread_bound = thread_bound

    def __repr__(self):
        return "Entry(%r, %r, %r, %r)" % (self.obj, self.exposed, self.method_to_typeid,
                                          self.thread_bound)


def serve_connection(Connection conn, dict table, Entry control, fallback, make_proxy):
    """Receive, decode, look up, check exposure, call, encode, send; until
    the peer closes (see _wire.pyi for the contract)."""
    cdef Py_ssize_t start, size
    cdef _Taken taken
    cdef _Reply reply = _Reply()
    conn.backlog_max = c_backlog_max  # a server's connection (see _backlog_full)
    while True:
        try:
            taken = _recv_message(conn, &start, &size)
        except EOFError:
            return None
        except ProtocolError:
            _flush_before_failing(conn)
            raise
        _serve_frame(conn, start, size, taken, table, control, fallback, make_proxy, reply)
        taken = None
        # replies to requests that arrived together leave together
        if conn.wbuf.length and (_frame_state(conn) != FRAME_WHOLE
                                 or conn.wbuf.total() >= c_copy_threshold):
            _send_buffer(conn)


cdef int _serve_frame(Connection conn, Py_ssize_t start, Py_ssize_t size, _Taken taken,
                      dict table, Entry control, fallback, make_proxy, _Reply reply) except -1:
    """Decode and run the request in rbuf[start:start + size], whose
    out-of-band buffers are taken; queue its reply in wbuf (not sent yet)."""
    cdef int kind, rkind
    cdef tuple request, substitute
    cdef object result
    try:
        request = conn.codec.decode_request_at(conn.rbuf + start, size, taken)
    except ProtocolError:
        _flush_before_failing(conn)
        raise
    except Exception:
        # well framed, but its contents would not decode (an unpickling
        # error, say): the caller learns why, the connection goes on
        kind = conn.rbuf[start]
        _shrink(conn)
        rkind = RESP_FAILURE
        result = _traceback.format_exc()
    else:
        _shrink(conn)
        kind = request[0]
        rkind = _dispatch(request, table, control, fallback, make_proxy, reply)
        result = reply.value
        reply.value = None
    taken = None  # the arguments hold the buffers they use
    if kind != REQ_ONEWAY:
        try:
            _queue_response(conn, rkind, result)
        except MessageTooLarge as exc:
            # the caller learns why, and its connection goes on
            _queue_response(conn, RESP_ERROR, (exc, _traceback.format_exc()))
        except Exception:
            substitute = _unencodable(rkind, result)
            _queue_response(conn, substitute[0], substitute[1])
    return 0


cdef void _flush_before_failing(Connection conn) noexcept:
    """The replies to the requests before a bad one still go out."""
    if conn.wbuf.length and conn.fd >= 0:
        try:
            _send_buffer(conn)
        except Exception:
            pass
    conn.wbuf.reset()


cdef tuple _unencodable(int rkind, result):
    """The reply to send when rkind/result would not encode: an exception
    without pickle is sent by builtin type name and args, if it can be;
    else its traceback text goes as a failure."""
    if rkind == RESP_ERROR:
        exc, tb = result
        name = type(exc).__name__
        if type(exc).__module__ == "builtins" and all(
                type(a) in (str, int, float, bool, bytes, type(None)) for a in exc.args):
            return (RESP_ERROR, (name, exc.args, tb))
        return (RESP_FAILURE, tb)
    return (RESP_FAILURE, _traceback.format_exc())


@cython.final
cdef class _Reply:
    """The reply _dispatch() made: one per connection, reused."""


cdef int _dispatch(tuple request, dict table, Entry control, fallback, make_proxy,
                   _Reply out) except -1:
    """Run one decoded request; store the reply value in out and return
    the reply kind."""
    cdef Entry entry
    cdef object ident = request[1], method = request[2], args = request[3], kwds = request[4]
    cdef object obj, exposed, m2t, typeid, result
    try:
        entry = control if ident == 0 else <Entry?>table[ident]
        obj = entry.obj
        exposed = entry.exposed
    except Exception:
        out.value = _traceback.format_exc()
        return RESP_FAILURE
    if method not in exposed:
        try:
            out.value = fallback(ident, obj, method, args, kwds if kwds is not None else {})
            return RESP_RETURN
        except Exception:
            out.value = _traceback.format_exc()
            return RESP_FAILURE
    if type(args) is not tuple:
        args = tuple(args)
    try:
        if kwds is None:
            result = getattr(obj, method)(*args)
        else:
            result = getattr(obj, method)(*args, **kwds)
    except Exception as exc:
        out.value = (exc, _traceback.format_exc())
        return RESP_ERROR
    m2t = entry.method_to_typeid
    if m2t is not None:
        typeid = m2t.get(method)
        if typeid is not None:
            try:
                out.value = make_proxy(typeid, result)
                return RESP_PROXY
            except Exception:
                out.value = _traceback.format_exc()
                return RESP_FAILURE
    out.value = result
    return RESP_RETURN
