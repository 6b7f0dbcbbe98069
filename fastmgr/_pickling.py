"""The pickle fallback shared by both wire implementations.

``ForkingPickler`` applies the reducers ``multiprocessing`` registers (for
sockets, connections, ...), and proxies pickle through their ``__reduce__``.
"""
import pickle
from multiprocessing.reduction import ForkingPickler

from ._protocol import PICKLE_PROTOCOL


def dumps(obj):
    return bytes(ForkingPickler.dumps(obj, PICKLE_PROTOCOL))


loads = pickle.loads
