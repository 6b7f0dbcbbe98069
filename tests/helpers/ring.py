"""The layout of a shared-memory ring, as the ring tests write into it, and
a ring file to attach."""
import os

from fastmgr import _protocol as P

# the layout of one ring (_protocol.py): head; tail, detour_at, detour_len,
# detour_pending, writer_cpu; reader_waiting; writer_waiting: on lines of 64
# bytes, then the data
TAIL = 64
DETOUR_AT = TAIL + 8
WRITER_CPU = DETOUR_AT + 20
# messages this large take the detour through the socket (_protocol.py)
DETOUR_MIN = P.DETOUR_MIN
DETOUR_MARK = bytes([P.DETOUR_MARK])


def new_memfd(wire):
    fd = os.memfd_create("fastmgr-test-ring")
    os.ftruncate(fd, wire.Connection.ring_size())
    return fd
