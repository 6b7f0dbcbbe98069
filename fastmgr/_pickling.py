"""The pickle fallback shared by both wire implementations.

``ForkingPickler`` applies the reducers ``multiprocessing`` registers (for
sockets, connections, ...), and proxies pickle through their ``__reduce__``.
The stdlib's managers module registers some as it is imported (a dict's
``keys()``, ``values()`` and ``items()`` travel as lists), so it is imported
here, whatever else the process imported.
"""
import multiprocessing.managers  # noqa: F401  (its reducers: dict views as lists, array.array)
import pickle
from multiprocessing.reduction import ForkingPickler

from ._protocol import PICKLE_PROTOCOL


def dumps(obj):
    return bytes(ForkingPickler.dumps(obj, PICKLE_PROTOCOL))


loads = pickle.loads
