# cython: language_level=3, embedsignature=True
"""The compiled hot path of fastmgr: framing, codec, serve loop and hub.

This file is a map.  The code is in the files it includes, one concern
each, in fastmgr/_wirelib/; the constants, the spin state and the layout
of every class are declared in _wire.pxd; the C helpers are in
_wirelib/fm_*.h, declared in _wirelib/chelpers.pxd (system calls in
_wirelib/posix.pxd).  The byte formats are specified in _protocol.py;
_wire_py.py is the readable twin of this module, and the tests hold the
two to the same bytes; the handshake is _handshake.py, for both.

    common.pxi       the clock, errno, memory
    spin_segment.pxi the spinner slots shared by a user's processes (fm_segment.h)
    spin_policy.pxi  the rules of a wait: how long to spin before blocking
    buffers.pxi      WriteBuffer: outgoing frames, large buffers sent in place
    framing.pxi      frame headers (read in one place, _frame_at), FrameReader
    codec.pxi        Codec: values and envelopes to bytes and back
    codec_items.pxi    the items of big containers, quickly
    outofband.pxi      large values' buffers: their table, taking and receiving them
    connection.pxi   Connection: its Python surface, receiving, sending
    socket_path.pxi    bytes through the socket: spin, then block
    rings.pxi          bytes through shared-memory rings (fm_ring.h)
    detours.pxi        messages too large for a ring, through the socket
    tls.pxi            bytes through an SSL socket
    loop_path.pxi      driven by an event loop, never blocking (fastmgr.aio)
    pipeline.pxi     Pipeline, Pending: calls sent without waiting
    serve.pxi        Entry, serve_connection: the server's loop for one connection
    hub.pxi          Hub: one loop thread serves many connections
    hub_wait.pxi       how that loop waits: a spin over all, then epoll
    watchdog.pxi       replacing a loop thread that one call keeps

The path of one request, a proxy's call over a unix or TCP socket:

1. The client: Connection.call() (connection.pxi) queues the request,
   _queue_request(): Codec.encode_request_into() (codec.pxi) writes it
   into the connection's WriteBuffer (buffers.pxi) between begin_frame()
   and end_frame(), which writes the header (_put_header, framing.pxi).
   _send_buffer() hands it to _sock_send_iov() (socket_path.pxi): one
   send().
2. The server: the hub's loop thread waits in _hub_wait() (hub_wait.pxi),
   spinning in _hub_spin() under the rules of spin_policy.pxi, then in
   epoll.  _hub_serve_ready() (hub.pxi) reads with _hub_read(), finds a
   whole frame (_frame_state, framing.pxi), checks that the object is not
   thread-bound (_needs_own_thread), and _serve_frame() (serve.pxi)
   decodes the request (Codec.decode_request_at), runs it on the object
   of its Entry (_dispatch) and queues the reply (_queue_response).  The
   replies to requests that came together leave together (_send_buffer).
3. The client again: _recv_frame() (connection.pxi) has _fill() read
   through _sock_fill() (socket_path.pxi), which spins in
   _sock_spin_recv() and then blocks in recv(); _parse_header()
   (framing.pxi) reads the header and Codec.decode_response_at() the
   reply.

Between two compiled ends on one machine, _send_iov() and _fill() go
through rings.pxi instead; with TLS, through tls.pxi.
"""

cimport cython
from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.memoryview cimport PyMemoryView_FromMemory, PyMemoryView_GET_BUFFER
from cpython.object cimport PyObject, PyObject_Hash
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EAGAIN, EINTR, errno
from libc.math cimport exp
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

from fastmgr._wirelib.chelpers cimport *
from fastmgr._wirelib.posix cimport *

import logging as _logging
import os as _os
import socket as _socket
import sys as _sys
import traceback as _traceback

from . import _pickling
from ._handshake import answer_challenge, deliver_challenge
from ._protocol import (BACKLOG_MAX, COPY_THRESHOLD, DEFAULT_MAX_MESSAGE, MAX_DEPTH, SAME_HASH_MAX,
                        SERIALIZERS)
from ._settings import SPIN_POLICY, SPIN_US, SPIN_YIELD
from .errors import MessageTooLarge, ProtocolError, UnsafeValueError

IMPLEMENTATION = "compiled"

include "_wirelib/common.pxi"
include "_wirelib/spin_segment.pxi"
include "_wirelib/spin_policy.pxi"
include "_wirelib/buffers.pxi"
include "_wirelib/framing.pxi"
include "_wirelib/codec.pxi"
include "_wirelib/codec_items.pxi"
include "_wirelib/outofband.pxi"
include "_wirelib/connection.pxi"
include "_wirelib/socket_path.pxi"
include "_wirelib/rings.pxi"
include "_wirelib/detours.pxi"
include "_wirelib/tls.pxi"
include "_wirelib/loop_path.pxi"
include "_wirelib/pipeline.pxi"
include "_wirelib/serve.pxi"
include "_wirelib/hub.pxi"
include "_wirelib/hub_wait.pxi"
include "_wirelib/watchdog.pxi"
