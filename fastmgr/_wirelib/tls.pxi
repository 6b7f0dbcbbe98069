# The TLS path of a Connection (included by _wire.pyx): an ssl.SSLSocket
# encrypts, so bytes go through its methods, with its timeout standing in
# for the deadline, and never spin.  The functions take the connection
# first.

cdef int _tls_timeout(Connection conn, double deadline) except -1:
    """Set the SSL socket's timeout to what is left until deadline; if
    nothing is, close and raise TimeoutError."""
    cdef double left
    if deadline < 0:
        conn.sock.settimeout(None)
        return 0
    left = deadline - _now()
    if left <= 0:
        conn.close()
        raise TimeoutError("timed out after %.3g s waiting for the peer" % conn._timeout)
    conn.sock.settimeout(left)
    return 0


cdef int _tls_fill(Connection conn, Py_ssize_t need, double deadline) except -1:
    """_fill() for a TLS socket. Precondition: rbuf can hold need bytes
    from rstart."""
    cdef ssize_t got
    while conn.rend - conn.rstart < need:
        _tls_timeout(conn, deadline)
        view = PyMemoryView_FromMemory(<char*>conn.rbuf + conn.rend, conn.rcap - conn.rend,
                                       PyBUF_WRITE)
        try:
            got = conn.sock.recv_into(view)
        except (TimeoutError, _socket.timeout):
            conn.close()
            raise TimeoutError("timed out after %.3g s waiting for the peer" % conn._timeout)
        except BaseException:
            conn.close()
            raise
        finally:
            view.release()
        if got == 0:
            raise EOFError("the peer closed the connection")
        conn.rend += got
    return 0


cdef int _tls_send(Connection conn, iovec* iov, int count) except -1:
    """_send_iov() for a TLS socket: a small message in one write, the
    parts of a large one in turn, each from its own memory."""
    cdef double deadline = _deadline(conn)
    cdef int i
    cdef size_t total = 0
    for i in range(count):
        total += iov[i].iov_len
    try:
        if total <= <size_t>c_copy_threshold:
            _tls_timeout(conn, deadline)
            conn.sock.sendall(b"".join([
                PyBytes_FromStringAndSize(<char*>iov[i].iov_base, iov[i].iov_len)
                for i in range(count)]))
            return 0
        for i in range(count):
            if iov[i].iov_len:
                _tls_timeout(conn, deadline)
                conn.sock.sendall(PyMemoryView_FromMemory(<char*>iov[i].iov_base,
                                                          iov[i].iov_len, PyBUF_READ))
    except (TimeoutError, _socket.timeout):
        conn.close()
        raise TimeoutError("timed out after %.3g s sending to the peer" % conn._timeout)
    return 0
