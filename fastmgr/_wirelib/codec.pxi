# Codec: values and envelopes to bytes and back, as _protocol.py
# specifies them (included by _wire.pyx; its layout is in _wire.pxd).  The
# quick paths for the items of big containers are in codec_items.pxi, the
# out-of-band buffers of large values in outofband.pxi.

# dict views go as lists (the stdlib registers the same for its pickler)
cdef type _dict_keys = type({}.keys())
cdef type _dict_values = type({}.values())
cdef type _dict_items = type({}.items())

cdef int _serializer_mode(str serializer) except -1:
    if serializer == "pickle":
        return 0
    if serializer == "safe":
        return 1
    if serializer == "xmlrpclib":
        return 2
    raise ValueError("unknown serializer %r (choose from %s)" % (serializer, ", ".join(SERIALIZERS)))



# Dict keys the SAME_HASH_MAX rule does not count: ints of magnitude below
# the hash modulus (no two of them share a hash, but for -1 and -2), and str
# and bytes while their hashes are randomised.
cdef long long c_hash_modulus = _sys.hash_info.modulus
cdef bint g_hash_randomized = _sys.flags.hash_randomization != 0
fm_hash_seed = int.from_bytes(_os.urandom(8), "little")


cdef inline int _counted_key(object key) except -1:
    """Whether the SAME_HASH_MAX rule counts key."""
    cdef type t = type(key)
    cdef long long v
    cdef int overflow = 0
    if t is int:
        v = PyLong_AsLongLongAndOverflow(key, &overflow)
        return overflow != 0 or v >= c_hash_modulus or v <= -c_hash_modulus
    return not (g_hash_randomized and (t is str or t is bytes))

@cython.final
cdef class Codec:
    """Encodes values and envelopes (see _protocol.py)."""

    def __init__(self, str serializer="pickle"):
        cdef int mode = _serializer_mode(serializer)
        self.serializer = serializer
        self.may_pickle = mode == 0
        self.tuples_as_lists = mode == 2

    def __dealloc__(self):
        fm_key_cache_clear(&self.keys)

    def __reduce__(self):
        return (Codec, (self.serializer,))

    # -- encoding --------------------------------------------------------

    cdef int _pickle(self, WriteBuffer buf, object obj) except -1:
        """Append obj pickled, its large buffers out of band while the body
        has room for them (the rule of the twin's: both call _pickling)."""
        cdef bytes data
        cdef list views = None
        cdef Py_ssize_t room = buf.buffer_room()
        if not self.may_pickle:
            raise UnsafeValueError(
                "the %r serializer sends only None, bool, int, float, str, bytes, "
                "tuple, list and dict; got %s" % (self.serializer, type(obj).__name__))
        if room > 0:
            data, views = _pickling.dumps_buffers(obj, room)
        else:
            data = _pickling.dumps(obj)
        if <uint64_t>PyBytes_GET_SIZE(data) >= U32_LIMIT:
            raise ValueError("a pickled value of %d bytes is too large to send" % len(data))
        if views:
            buf.write_tag_u32(T_PICKLE_OOB, <uint32_t>len(views))
            buf.ensure(4)
            fm_put_u32le(buf.buf + buf.length, <uint32_t>PyBytes_GET_SIZE(data))
            buf.length += 4
            for view in views:
                buf.add_buffer(view)
        else:
            buf.write_tag_u32(T_PICKLE, <uint32_t>PyBytes_GET_SIZE(data))
        buf.write_raw(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return 0

    cdef int _encode(self, WriteBuffer buf, object obj, int depth) except -1:
        """Append one value. Returns TOO_DEEP when containers nest deeper than
        MAX_DEPTH (the caller then pickles the whole top-level value)."""
        cdef type t = type(obj)
        cdef long long v
        cdef int overflow = 0
        cdef Py_ssize_t n
        cdef const char* s
        if obj is None:
            return buf.write_u8(T_NONE)
        if t is bool:
            return buf.write_u8(T_TRUE if obj is True else T_FALSE)
        if t is int:
            v = PyLong_AsLongLongAndOverflow(obj, &overflow)
            if overflow == 0:
                return buf.write_tag_u64(T_INT64, <uint64_t>v)
            data = obj.to_bytes(((obj if obj >= 0 else ~obj).bit_length() + 8) // 8, "little",
                                signed=True)
            if <uint64_t>PyBytes_GET_SIZE(data) >= U32_LIMIT:
                return self._pickle(buf, obj)
            buf.write_tag_u32(T_BIGINT, <uint32_t>PyBytes_GET_SIZE(data))
            return buf.write_raw(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if t is float:
            return buf.write_tag_u64(T_FLOAT, fm_double_bits(PyFloat_AS_DOUBLE(obj)))
        if t is str and PyUnicode_IS_COMPACT_ASCII(obj) and _encode_scalar(buf, obj):
            return 0  # its bytes are its UTF-8: no call, no try
        if t is str:
            try:
                s = PyUnicode_AsUTF8AndSize(obj, &n)
            except UnicodeEncodeError:
                data = (<str>obj).encode("utf-8", "surrogatepass")
                s = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
            if <uint64_t>n >= U32_LIMIT:
                return self._pickle(buf, obj)
            buf.write_tag_u32(T_STR, <uint32_t>n)
            return buf.write_raw(s, n)
        if t is bytes:
            n = PyBytes_GET_SIZE(obj)
            if n >= OOB_MIN and buf.buffer_room() > 0:
                buf.write_u8(T_BYTES_OOB)
                return buf.add_buffer(obj)
            if <uint64_t>n >= U32_LIMIT:
                return self._pickle(buf, obj)
            buf.write_tag_u32(T_BYTES, <uint32_t>n)
            return buf.write_raw(PyBytes_AS_STRING(obj), n)
        if (t is tuple or t is list or t is dict or t is _dict_keys or t is _dict_values
                or t is _dict_items):
            return self._encode_container(buf, obj, t, depth)
        return self._pickle(buf, obj)

    cdef int _encode_container(self, WriteBuffer buf, object obj, type t, int depth) except -1:
        """_encode() of a tuple, list, dict or dict view (t: its type)."""
        cdef Py_ssize_t n
        if depth > c_max_depth:
            return TOO_DEEP
        n = len(obj)
        if <uint64_t>n >= U32_LIMIT:
            return self._pickle(buf, obj)
        if t is dict:
            return self._encode_dict(buf, obj, n, depth)
        return self._encode_items(buf, obj, t, n, depth)

    cdef int _encode_items(self, WriteBuffer buf, object obj, type t, Py_ssize_t n,
                           int depth) except -1:
        """The n items of a tuple, a list, or a dict's view (which goes as a
        list, as the stdlib's pickler sends it), behind their tag and count."""
        cdef Py_ssize_t i
        cdef int r
        buf.write_tag_u32(T_TUPLE if t is tuple else T_LIST, <uint32_t>n)
        if t is tuple:
            for i in range(n):
                item = <object>PyTuple_GET_ITEM(obj, i)
                if not _encode_scalar(buf, item):
                    r = self._encode(buf, item, depth + 1)
                    if r:
                        return r
        elif t is list:
            for i in range(n):
                # the list may shrink while an item's pickling runs Python code
                if i >= PyList_GET_SIZE(obj):
                    raise RuntimeError("list changed size during encoding")
                item = <object>PyList_GET_ITEM(obj, i)
                if not _encode_scalar(buf, item):
                    r = self._encode(buf, item, depth + 1)
                    if r:
                        return r
        else:
            i = 0
            for item in obj:
                i += 1
                if i > n:
                    break
                if not _encode_scalar(buf, item):
                    r = self._encode(buf, item, depth + 1)
                    if r:
                        return r
            if i != n:
                raise RuntimeError("dictionary changed size during encoding")
        return 0

    cdef int _encode_dict(self, WriteBuffer buf, dict obj, Py_ssize_t n, int depth) except -1:
        """The n entries of a dict behind their tag and count."""
        cdef PyObject* key
        cdef PyObject* value
        cdef Py_ssize_t pos = 0, i = 0
        cdef int r
        buf.write_tag_u32(T_DICT, <uint32_t>n)
        while PyDict_Next(obj, &pos, &key, &value):
            k = <object>key
            val = <object>value
            i += 1
            if i > n:
                break
            if not _encode_scalar(buf, k):
                r = self._encode(buf, k, depth + 1)
                if r:
                    return r
            if not _encode_scalar(buf, val):
                r = self._encode(buf, val, depth + 1)
                if r:
                    return r
        if i != n:
            raise RuntimeError("dictionary changed size during encoding")
        return 0

    cdef int encode_top(self, WriteBuffer buf, object obj) except -1:
        """Append one top-level value, pickled whole if it nests too deeply."""
        cdef Py_ssize_t start = buf.length, buffers = buf.noob
        if self._encode(buf, obj, 1) == TOO_DEEP:
            buf.length = start
            buf.drop_buffers(buffers)
            self._pickle(buf, obj)
        return 0

    cdef int encode_request_into(self, WriteBuffer buf, int kind, uint64_t ident,
                                 object method, object args, object kwds) except -1:
        if kind != REQ_CALL and kind != REQ_ONEWAY:
            raise ValueError("unknown request kind %r" % kind)
        buf.write_tag_u64(<uint8_t>kind, ident)
        self.encode_top(buf, method)
        self.encode_top(buf, args)
        if kwds:
            self.encode_top(buf, kwds)
        else:
            buf.write_u8(T_NONE)
        return 0

    cdef int encode_response_into(self, WriteBuffer buf, int kind, object value) except -1:
        if kind < RESP_RETURN or kind > RESP_PROXY:
            raise ValueError("unknown response kind %r" % kind)
        buf.write_u8(<uint8_t>kind)
        return self.encode_top(buf, value)

    # a fresh WriteBuffer each: a Codec may be shared by threads, and
    # pickling runs Python code, which lets another thread in

    def dumps(self, obj):
        cdef WriteBuffer out = WriteBuffer()
        out.begin_body()
        self.encode_top(out, obj)
        out.end_body(0)
        return out.joined()

    def encode_request(self, int kind, uint64_t ident, method, args, kwds):
        cdef WriteBuffer out = WriteBuffer()
        out.begin_body()
        self.encode_request_into(out, kind, ident, method, args, kwds)
        out.end_body(0)
        return out.joined()

    def encode_response(self, int kind, value):
        cdef WriteBuffer out = WriteBuffer()
        out.begin_body()
        self.encode_response_into(out, kind, value)
        out.end_body(0)
        return out.joined()

    # -- decoding --------------------------------------------------------

    cdef object _decode(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, int depth,
                        _Taken taken):
        """Decode the value at p[pos[0]:n] and advance pos, taking
        out-of-band buffers from taken (None: the body has none).
        Precondition: pos[0] <= n. Every read is checked against n."""
        cdef Py_ssize_t at = pos[0]
        cdef uint8_t tag
        cdef uint64_t length, buffers = 0
        if at >= n:
            raise ProtocolError("truncated message: value expected")
        tag = p[at]
        at += 1
        if tag == T_NONE:
            pos[0] = at
            return None
        if tag == T_FALSE:
            pos[0] = at
            return False
        if tag == T_TRUE:
            pos[0] = at
            return True
        if tag == T_INT64 or tag == T_FLOAT:
            if n - at < 8:
                raise ProtocolError("truncated message: 8-byte number")
            pos[0] = at + 8
            if tag == T_INT64:
                return PyLong_FromLongLong(<int64_t>fm_get_u64le(p + at))
            return PyFloat_FromDouble(fm_bits_double(fm_get_u64le(p + at)))
        if tag == T_BYTES_OOB:
            pos[0] = at
            return _take(taken, 1, True)
        if tag > T_PICKLE_OOB:
            raise ProtocolError("unknown value tag 0x%02x" % tag)
        if tag == T_PICKLE_OOB:
            if n - at < 4:
                raise ProtocolError("truncated message: buffer count")
            buffers = fm_get_u32le(p + at)
            at += 4
        if n - at < 4:
            raise ProtocolError("truncated message: length")
        length = fm_get_u32le(p + at)
        at += 4
        if tag == T_TUPLE or tag == T_LIST or tag == T_DICT:
            if depth > c_max_depth:
                raise ProtocolError("containers nest deeper than %d" % c_max_depth)
            # every item takes at least one byte: refuse counts the data cannot hold
            if length > <uint64_t>(n - at) or (tag == T_DICT and 2 * length > <uint64_t>(n - at)):
                raise ProtocolError("truncated message: container of %d items" % length)
            pos[0] = at
            if tag == T_DICT:
                if not self.may_pickle and length > c_same_hash_max:
                    # keys counted per hash
                    return self._decode_dict_counted(p, n, pos, <Py_ssize_t>length, depth, taken)
                return self._decode_dict(p, n, pos, depth, taken, <Py_ssize_t>length)
            if tag == T_LIST or self.tuples_as_lists:
                return self._decode_list(p, n, pos, depth, taken, <Py_ssize_t>length)
            return self._decode_tuple(p, n, pos, depth, taken, <Py_ssize_t>length)
        if length > <uint64_t>(n - at):
            raise ProtocolError("truncated message: %d bytes announced, %d left" % (length, n - at))
        pos[0] = at + <Py_ssize_t>length
        if tag == T_STR:
            return _decode_str(<const char*>p + at, <Py_ssize_t>length)
        return self._decode_bytes(p, at, tag, length, buffers, taken)

    cdef object _decode_bytes(self, const unsigned char* p, Py_ssize_t at, uint8_t tag,
                              uint64_t length, uint64_t buffers, _Taken taken):
        """_decode() of a bytes value, a big int or a pickle (with buffers
        out-of-band buffers) whose length bytes are at p[at:] (checked)."""
        if tag == T_BYTES:
            return PyBytes_FromStringAndSize(<const char*>p + at, <Py_ssize_t>length)
        if tag == T_BIGINT:
            return int.from_bytes(PyBytes_FromStringAndSize(<const char*>p + at, <Py_ssize_t>length),
                                  "little", signed=True)
        # T_PICKLE, T_PICKLE_OOB
        if not self.may_pickle:
            raise ProtocolError("the %r serializer refuses pickled data" % self.serializer)
        data = PyBytes_FromStringAndSize(<const char*>p + at, <Py_ssize_t>length)
        if tag == T_PICKLE:
            return _pickling.loads(data)
        if buffers == 0:
            raise ProtocolError("a pickle announced with no out-of-band buffer")
        return _pickling.loads(data, buffers=_take(taken, buffers, False))

    cdef inline object _item(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                             int depth, _Taken taken):
        """A container's item: _decode_scalar() when it can, else _decode()."""
        cdef PyObject* item = _decode_scalar(p, n, pos)
        if item != NULL:
            return _owned(item)
        if PyErr_Occurred():
            _raise_pending()
        return self._decode(p, n, pos, depth, taken)

    cdef inline object _key(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                            int depth, _Taken taken):
        """A small dict's key: a short ASCII str from the key cache (it is
        most often one of many records' keys), anything else _item()'s."""
        cdef Py_ssize_t at = pos[0]
        cdef uint32_t length
        if n - at >= 5 and p[at] == T_STR:
            length = fm_get_u32le(p + at + 1)
            if (2 <= length <= FM_KEY_MAX_LEN and length <= <uint64_t>(n - at - 5)
                    and fm_ascii(p + at + 5, length)):
                key = fm_key(&self.keys, p + at + 5, length)
                pos[0] = at + 5 + length
                return key
        return self._item(p, n, pos, depth, taken)

    cdef list _decode_list(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                           int depth, _Taken taken, Py_ssize_t count):
        cdef list result = PyList_New(count)
        cdef Py_ssize_t i
        if count:
            # the collector is kept off it while it fills (else every pass
            # that runs meanwhile walks all of its items so far)
            PyObject_GC_UnTrack(result)
        for i in range(count):
            item = self._item(p, n, pos, depth + 1, taken)
            Py_INCREF(item)
            PyList_SET_ITEM(result, i, item)
        if count:
            PyObject_GC_Track(result)
        return result

    cdef tuple _decode_tuple(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                             int depth, _Taken taken, Py_ssize_t count):
        cdef tuple result = PyTuple_New(count)
        cdef Py_ssize_t i
        cdef bint atomic = True
        if count == 0:
            return result
        PyObject_GC_UnTrack(result)  # as a list's, while it fills
        for i in range(count):
            item = self._item(p, n, pos, depth + 1, taken)
            if atomic and not _atomic(item):
                atomic = False
            Py_INCREF(item)
            PyTuple_SET_ITEM(result, i, item)
        if not atomic:
            # else it stays untracked: a tuple of such items is in no cycle
            # (the collector would find that out at its next pass, which a
            # big list of small tuples makes costly)
            PyObject_GC_Track(result)
        return result

    cdef dict _decode_dict(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                           int depth, _Taken taken, Py_ssize_t count):
        # sized for its entries at once, as far as the bytes left could hold
        # distinct ones (a peer's count must not make us allocate much more
        # than the message): growing a big dict step by step rehashes it
        # again and again
        cdef dict result = _new_dict(min(count, (n - pos[0]) // 16))
        cdef Py_ssize_t i
        cdef bint small = count <= FM_KEY_DICT_MAX
        for i in range(count):
            if small:
                key = self._key(p, n, pos, depth + 1, taken)
            else:
                key = self._item(p, n, pos, depth + 1, taken)
            item = self._item(p, n, pos, depth + 1, taken)
            if fm_dict_set(result, key, item) < 0:
                _bad_dict_key()
        return result

    cdef dict _decode_dict_counted(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                                   Py_ssize_t count, int depth, _Taken taken):
        """_decode() of a dict of count entries (more than SAME_HASH_MAX)
        without pickle: a key that would be the SAME_HASH_MAX + 1st of its
        hash value raises ProtocolError before it goes in (see
        _protocol.py)."""
        cdef dict result = {}
        cdef object key, item
        cdef Py_ssize_t i
        cdef int64_t v
        cdef bint counted
        cdef size_t cap = 16
        cdef fm_hash_slot* slots = NULL
        try:
            for i in range(count):
                # an int64 key is judged by its bytes (no call in the common
                # case), any other once decoded
                if n - pos[0] >= 9 and p[pos[0]] == T_INT64:
                    v = <int64_t>fm_get_u64le(p + pos[0] + 1)
                    counted = v >= c_hash_modulus or v <= -c_hash_modulus
                    key = self._decode(p, n, pos, depth + 1, taken)
                else:
                    key = self._decode(p, n, pos, depth + 1, taken)
                    counted = _counted_key(key)
                item = self._decode(p, n, pos, depth + 1, taken)
                try:
                    if counted:
                        if slots == NULL:
                            while cap < 2 * <size_t>count:
                                cap *= 2
                            slots = <fm_hash_slot*>PyMem_Calloc(cap, sizeof(fm_hash_slot))
                            if slots == NULL:
                                raise MemoryError()
                        if fm_hash_count(slots, cap - 1, PyObject_Hash(key)) > c_same_hash_max:
                            raise ProtocolError(
                                "a dict with more than %d keys of one hash value: refused "
                                "without pickle (see SAME_HASH_MAX)" % c_same_hash_max)
                    PyDict_SetItem(result, key, item)
                except TypeError as exc:
                    raise ProtocolError("bad dict key: %s" % exc) from None
        finally:
            PyMem_Free(slots)
        return result

    cdef object decode_all(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                           _Taken taken):
        """Decode the last value of a message: no bytes may follow it, and
        it must have taken all of the message's out-of-band buffers."""
        value = self._decode(p, n, pos, 1, taken)
        if pos[0] != n:
            raise ProtocolError("%d unexpected bytes after the message" % (n - pos[0]))
        if taken is not None:
            taken.check_all_taken()
        return value

    cdef tuple decode_request_at(self, const unsigned char* p, Py_ssize_t n, _Taken taken):
        cdef Py_ssize_t pos = REQUEST_HEAD_SIZE
        cdef int kind
        if n < REQUEST_HEAD_SIZE:
            raise ProtocolError("truncated request header")
        kind = p[0]
        if kind != REQ_CALL and kind != REQ_ONEWAY:
            raise ProtocolError("unknown request kind 0x%02x" % kind)
        ident = fm_get_u64le(p + REQUEST_IDENT_OFFSET)
        method = self._decode(p, n, &pos, 1, taken)
        args = self._decode(p, n, &pos, 1, taken)
        kwds = self.decode_all(p, n, &pos, taken)
        if type(method) is not str:
            raise ProtocolError("method name must be a str")
        if not (type(args) is tuple or (self.tuples_as_lists and type(args) is list)):
            raise ProtocolError("request arguments must be a tuple")
        if kwds is not None and type(kwds) is not dict:
            raise ProtocolError("request keywords must be a dict")
        return (kind, ident, method, args, kwds)

    cdef tuple decode_response_at(self, const unsigned char* p, Py_ssize_t n, _Taken taken):
        cdef Py_ssize_t pos = RESPONSE_HEAD_SIZE
        cdef int kind
        if n < RESPONSE_HEAD_SIZE:
            raise ProtocolError("empty response")
        kind = p[0]
        if kind < RESP_RETURN or kind > RESP_PROXY:
            raise ProtocolError("unknown response kind 0x%02x" % kind)
        return (kind, self.decode_all(p, n, &pos, taken))

    # whole bodies (out-of-band buffers inside: copied out, _split_body)

    def loads(self, data):
        cdef bytes b = bytes(memoryview(data))
        cdef Py_ssize_t start = 0, size = PyBytes_GET_SIZE(b), pos = 0
        cdef _Taken taken = _split_body(<const unsigned char*>PyBytes_AS_STRING(b), &start, &size)
        return self.decode_all(<const unsigned char*>PyBytes_AS_STRING(b) + start, size, &pos,
                               taken)

    def decode_request(self, data):
        cdef bytes b = bytes(memoryview(data))
        cdef Py_ssize_t start = 0, size = PyBytes_GET_SIZE(b)
        cdef _Taken taken = _split_body(<const unsigned char*>PyBytes_AS_STRING(b), &start, &size)
        return self.decode_request_at(<const unsigned char*>PyBytes_AS_STRING(b) + start, size,
                                      taken)

    def decode_response(self, data):
        cdef bytes b = bytes(memoryview(data))
        cdef Py_ssize_t start = 0, size = PyBytes_GET_SIZE(b)
        cdef _Taken taken = _split_body(<const unsigned char*>PyBytes_AS_STRING(b), &start, &size)
        return self.decode_response_at(<const unsigned char*>PyBytes_AS_STRING(b) + start, size,
                                       taken)
