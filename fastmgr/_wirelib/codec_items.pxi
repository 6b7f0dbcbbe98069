# The items of big containers, quickly (included by _wire.pyx): the
# scalars that fill most lists, tuples and dicts, written and read without
# a call to Codec._encode()/_decode() each, and the same bytes as those
# write (codec.pxi).  Strings in ASCII, the usual case, are copied straight.

cdef inline int _encode_scalar(WriteBuffer buf, object obj) except -1:
    """Write obj as Codec._encode() would if it is an int64, a float, an
    ASCII str, None or a bool, and return 1; else write nothing, return 0."""
    cdef type t = type(obj)
    cdef long long v
    cdef int overflow = 0
    cdef Py_ssize_t n
    if t is float:
        buf.write_tag_u64(T_FLOAT, fm_double_bits(PyFloat_AS_DOUBLE(obj)))
        return 1
    if t is str:
        if not PyUnicode_IS_COMPACT_ASCII(obj):
            return 0
        n = PyUnicode_GET_LENGTH(obj)
        if <uint64_t>n >= U32_LIMIT:
            return 0
        buf.write_tag_u32(T_STR, <uint32_t>n)
        buf.write_raw(PyUnicode_DATA(obj), n)
        return 1
    if t is int:
        v = PyLong_AsLongLongAndOverflow(obj, &overflow)
        if overflow:
            return 0
        buf.write_tag_u64(T_INT64, <uint64_t>v)
        return 1
    if obj is None:
        buf.write_u8(T_NONE)
        return 1
    if t is bool:
        buf.write_u8(T_TRUE if obj is True else T_FALSE)
        return 1
    return 0


cdef inline PyObject* _decode_scalar(const unsigned char* p, Py_ssize_t n,
                                     Py_ssize_t* pos) noexcept:
    """The int64, float, short ASCII str, None or bool at p[pos[0]:n], as a
    new reference (pos advanced); NULL with no exception set for anything
    else, which Codec._decode() reads (and says what is wrong with); NULL
    with an exception set when memory ran out."""
    cdef Py_ssize_t at = pos[0]
    cdef uint8_t tag
    cdef uint32_t length
    cdef PyObject* result
    if at >= n:
        return NULL
    tag = p[at]
    if tag == T_FLOAT or tag == T_INT64:
        if n - at < 9:
            return NULL
        pos[0] = at + 9
        if tag == T_FLOAT:
            return _new_float(fm_bits_double(fm_get_u64le(p + at + 1)))
        return _new_int(<int64_t>fm_get_u64le(p + at + 1))
    if tag == T_STR:
        if n - at < 5:
            return NULL
        length = fm_get_u32le(p + at + 1)
        if length < 2 or length > 256 or length > <uint64_t>(n - at - 5):
            return NULL
        if not fm_ascii(p + at + 5, length):
            return NULL
        result = _new_str(length, 127)
        if result != NULL:
            memcpy(_str_data(result), p + at + 5, length)
            pos[0] = at + 5 + length
        return result
    if tag == T_NONE or tag == T_TRUE or tag == T_FALSE:
        pos[0] = at + 1
        result = _none if tag == T_NONE else _true if tag == T_TRUE else _false
        Py_XINCREF(result)
        return result
    return NULL


cdef inline object _owned(PyObject* p):
    """The object of a new reference, which it takes over."""
    cdef object result = <object>p
    Py_XDECREF(p)
    return result


cdef int _raise_pending() except -1:
    """Let the exception already set go on."""
    return -1


cdef inline bint _atomic(object item) noexcept:
    """Whether item can be in no reference cycle: not of a type the
    collector tracks (str, int, float, bytes, None, ...), or a tuple it no
    longer tracks."""
    if not PyType_IS_GC(Py_TYPE(item)):
        return True
    return type(item) is tuple and not PyObject_GC_IsTracked(item)


cdef inline object _decode_str(const char* s, Py_ssize_t n):
    """A str from n bytes of UTF-8 (surrogates allowed)."""
    cdef object result
    if n > 1 and fm_ascii(<const unsigned char*>s, n):
        result = PyUnicode_New(n, 127)
        if n >= HUGE_BUFFER_MIN:
            fm_advise_huge(<char*>PyUnicode_DATA(result), n)
        memcpy(PyUnicode_DATA(result), s, n)
        return result
    try:
        return PyUnicode_DecodeUTF8(s, n, "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad UTF-8 in str: %s" % exc) from None


cdef int _bad_dict_key() except -1:
    """After a failed insertion into a dict being decoded: a key that is
    not hashable is the peer's fault (ProtocolError); another failure
    goes on as it is."""
    if not PyErr_ExceptionMatches(TypeError):
        return -1
    exc = fm_take_error()
    raise ProtocolError("bad dict key: %s" % exc) from None
