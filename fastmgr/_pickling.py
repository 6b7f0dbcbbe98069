"""The pickle fallback shared by both wire implementations.

The pickler applies the reducers ``multiprocessing`` registers with
``ForkingPickler`` (for sockets, connections, ...); proxies pickle through
their ``__reduce__``.  The stdlib's managers module registers some as it is
imported (a dict's ``keys()``, ``values()`` and ``items()`` travel as
lists), so it is imported here, whatever else the process imported.  It
pickles with protocol 5 and takes the data of large buffers out of the
stream (see ``_protocol.py``, "Out-of-band buffers"): both wires call
``dumps`` here, so they leave out the same ones.
"""
import copyreg
import io
import multiprocessing.managers  # noqa: F401  (its reducers: dict views as lists, array.array)
import pickle
from multiprocessing.reduction import ForkingPickler

from ._protocol import MAX_BUFFERS, OOB_MIN, PICKLE_PROTOCOL

#: memoryview formats that a flat buffer can be cast back to
_CASTABLE = frozenset("bBhHiIlLqQnNfdec?P") | frozenset("@" + f for f in "bBhHiIlLqQnNfdec?P")


def _memoryview_of(buffer, fmt, shape):
    """Unpickle a memoryview: a view of ``buffer`` (flat bytes, C order) with
    the sender's format and shape; read-only if the sender's was (pickle
    then hands a read-only view)."""
    view = memoryview(buffer)
    if fmt == "B" and len(shape) == 1:
        return view
    return view.cast("B").cast(fmt, shape)


def _reduce_memoryview(view):
    """A memoryview pickles as its contents (C order) with its format and
    shape; its memory goes out of band when large, like a numpy array's."""
    if view.format not in _CASTABLE:
        raise TypeError("cannot pickle a memoryview of format %r" % view.format)
    data = view if view.c_contiguous else view.tobytes()
    return _memoryview_of, (pickle.PickleBuffer(data), view.format, view.shape)


class _Pickler(pickle.Pickler):
    """ForkingPickler's reducers, plus memoryviews."""

    def __init__(self, file, buffer_callback=None):
        super().__init__(file, PICKLE_PROTOCOL, buffer_callback=buffer_callback)
        table = copyreg.dispatch_table.copy()
        table[memoryview] = _reduce_memoryview
        table.update(ForkingPickler._extra_reducers)
        self.dispatch_table = table


class _OutOfBand:
    """The buffer callback: keeps a flat view of each large buffer, while
    there is room, and tells pickle to leave its data out."""

    __slots__ = ("views", "room")

    def __init__(self, room):
        self.views = []
        self.room = room

    def __call__(self, buffer):
        view = buffer.raw()
        if view.nbytes < OOB_MIN or len(self.views) >= self.room:
            return True  # in the stream
        self.views.append(view)
        return False


def dumps(obj):
    """The protocol-5 pickle of obj, every buffer in it."""
    out = io.BytesIO()
    _Pickler(out).dump(obj)
    return out.getvalue()


def dumps_buffers(obj, room):
    """(pickle, views): the protocol-5 pickle of obj, and flat memoryviews
    of the buffers left out of it (at most ``room``, each of ``OOB_MIN``
    bytes or more), in the order the pickle takes them."""
    if room <= 0:
        return dumps(obj), []
    if type(obj) is bytearray and len(obj) >= OOB_MIN:
        # pickle writes a bytearray itself, but a PickleBuffer of it goes out
        # of band and unpickles as the bytearray it is given
        obj = pickle.PickleBuffer(obj)
    out = io.BytesIO()
    oob = _OutOfBand(min(room, MAX_BUFFERS))
    _Pickler(out, oob).dump(obj)
    return out.getvalue(), oob.views


loads = pickle.loads
