# Small helpers every part of the compiled wire uses (included by _wire.pyx).

# a timeout or deadline that never comes
cdef double NO_TIMEOUT = -1.0

# _protocol.py's numbers that the compiled code reads as C values
cdef int c_max_depth = MAX_DEPTH
cdef Py_ssize_t c_copy_threshold = COPY_THRESHOLD
cdef uint32_t c_same_hash_max = SAME_HASH_MAX
cdef Py_ssize_t c_backlog_max = BACKLOG_MAX
# lengths in the codec are u32: a str, bytes or container this long is pickled
# (sizes are compared as uint64_t: a Py_ssize_t may be too narrow to hold it)
cdef uint64_t U32_LIMIT = 0x100000000


cdef void* _realloc_or_raise(void* p, size_t n) except NULL:
    cdef void* q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q


cdef int _os_error(int err) except -1:
    """Raise the OSError (subclass) of errno value err."""
    fm_set_errno(err)
    PyErr_SetFromErrno(OSError)
    return -1


cdef inline size_t _iov_bytes(iovec* iov, int count) noexcept nogil:
    """The bytes of iov[0:count]."""
    cdef size_t n = 0
    cdef int i
    for i in range(count):
        n += iov[i].iov_len
    return n


cdef inline double _now() noexcept nogil:
    """The monotonic clock, in seconds."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def _constants():
    """The protocol numbers as this build compiled them (_wire.pxd's
    enums and the C helpers' macros), for the tests to hold against
    _protocol.py."""
    return {
        "T_NONE": T_NONE, "T_FALSE": T_FALSE, "T_TRUE": T_TRUE, "T_INT64": T_INT64,
        "T_BIGINT": T_BIGINT, "T_FLOAT": T_FLOAT, "T_STR": T_STR, "T_BYTES": T_BYTES,
        "T_TUPLE": T_TUPLE, "T_LIST": T_LIST, "T_DICT": T_DICT, "T_PICKLE": T_PICKLE,
        "T_BYTES_OOB": T_BYTES_OOB, "T_PICKLE_OOB": T_PICKLE_OOB,
        "BODY_BUFFERS": BODY_BUFFERS, "BUF_BYTES": BUF_BYTES, "BUF_BYTEARRAY": BUF_BYTEARRAY,
        "OOB_MIN": OOB_MIN, "MAX_BUFFERS": MAX_BUFFERS,
        "BUFFER_PREFIX_SIZE": BUFFER_PREFIX_SIZE, "BUFFER_ENTRY_SIZE": BUFFER_ENTRY_SIZE,
        "REQ_CALL": REQ_CALL, "REQ_ONEWAY": REQ_ONEWAY,
        "RESP_RETURN": RESP_RETURN, "RESP_ERROR": RESP_ERROR, "RESP_FAILURE": RESP_FAILURE,
        "RESP_PROXY": RESP_PROXY,
        "FRAME_HEADER_SIZE": FRAME_HEADER_SIZE, "LONG_FRAME_HEADER_SIZE": LONG_FRAME_HEADER_SIZE,
        "MAX_SHORT_FRAME": MAX_SHORT_FRAME,
        "REQUEST_IDENT_OFFSET": REQUEST_IDENT_OFFSET, "REQUEST_HEAD_SIZE": REQUEST_HEAD_SIZE,
        "RESPONSE_HEAD_SIZE": RESPONSE_HEAD_SIZE,
        "MAX_SPIN_US": MAX_SPIN_US, "DETOUR_MIN": DETOUR_MIN, "DETOUR_MARK": DETOUR_MARK,
        "RING_CAPACITY": FM_RING_CAP,
        "MAX_DEPTH": c_max_depth, "COPY_THRESHOLD": c_copy_threshold,
        "SAME_HASH_MAX": c_same_hash_max, "BACKLOG_MAX": c_backlog_max,
    }
