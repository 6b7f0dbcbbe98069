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
    """_send_iov() for a TLS socket."""
    cdef double deadline = _deadline(conn)
    cdef int i
    data = b"".join([PyBytes_FromStringAndSize(<char*>iov[i].iov_base, iov[i].iov_len)
                     for i in range(count)])
    _tls_timeout(conn, deadline)
    try:
        conn.sock.sendall(data)
    except (TimeoutError, _socket.timeout):
        conn.close()
        raise TimeoutError("timed out after %.3g s sending to the peer" % conn._timeout)
    return 0
