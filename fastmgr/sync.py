"""SyncManager, its proxy types and helper types, and Manager().

The types and their exposed methods are the stdlib's, with what Python 3.14
added available on every Python fastmgr supports: ``set()``,
``list.clear``/``copy``, dict ``|``, ``|=`` and ``reversed``, and
``locked()`` on the lock proxies.
"""
import array
import collections.abc
import queue
import threading
import time
import types
from multiprocessing import get_context, pool

from .managers import BaseManager
from .namespace import Namespace, NamespaceProxy
from .proxies import BaseProxy, MakeProxyType

__all__ = [
    "SyncManager", "Manager", "Namespace", "Value", "Array",
    "IteratorProxy", "AcquirerProxy", "ConditionProxy", "EventProxy", "BarrierProxy",
    "NamespaceProxy", "ValueProxy", "ListProxy", "BaseListProxy", "DictProxy", "SetProxy",
    "ArrayProxy", "PoolProxy", "BasePoolProxy",
]


class Value:
    """The referent of manager.Value(): a typecode and a value (unchecked,
    as in the stdlib)."""

    def __init__(self, typecode, value, lock=True):
        self._typecode = typecode
        self._value = value

    def get(self):
        return self._value

    def set(self, value):
        self._value = value

    def __repr__(self):
        return "%s(%r, %r)" % (type(self).__name__, self._typecode, self._value)

    value = property(get, set)


def Array(typecode, sequence, lock=True):
    """The referent of manager.Array(): an array.array."""
    return array.array(typecode, sequence)


class RLock:
    """threading.RLock with ``locked()`` (Python 3.14's), on every Python."""

    _fastmgr_thread_bound_ = True  # owned by the thread that acquired it

    def __init__(self):
        self._lock = threading.RLock()

    def acquire(self, blocking=True, timeout=-1):
        return self._lock.acquire(blocking, timeout)

    def release(self):
        self._lock.release()

    def locked(self):
        if self._lock._is_owned():
            return True
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()

    def _is_owned(self):
        return self._lock._is_owned()

    def _release_save(self):
        return self._lock._release_save()

    def _acquire_restore(self, state):
        self._lock._acquire_restore(state)


def _rlock():
    lock = threading.RLock()
    return lock if hasattr(lock, "locked") else RLock()


# ---------------------------------------------------------------------------
# Proxy types

class IteratorProxy(BaseProxy):
    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self):
        return self

    def __next__(self, *args):
        return self._callmethod("__next__", args)

    def send(self, *args):
        return self._callmethod("send", args)

    def throw(self, *args):
        return self._callmethod("throw", args)

    def close(self, *args):
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    _exposed_ = ("acquire", "release", "locked")

    def acquire(self, blocking=True, timeout=None):
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod("acquire", args)

    def release(self):
        return self._callmethod("release")

    def locked(self):
        return self._callmethod("locked")

    def __enter__(self):
        return self._callmethod("acquire")

    def __exit__(self, exc_type, exc_val, exc_tb):
        return self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    _exposed_ = ("acquire", "release", "locked", "wait", "notify", "notify_all")

    def wait(self, timeout=None):
        return self._callmethod("wait", (timeout,))

    def notify(self, n=1):
        return self._callmethod("notify", (n,))

    def notify_all(self):
        return self._callmethod("notify_all")

    def wait_for(self, predicate, timeout=None):
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    _exposed_ = ("is_set", "set", "clear", "wait")

    def is_set(self):
        return self._callmethod("is_set")

    def set(self):
        return self._callmethod("set")

    def clear(self):
        return self._callmethod("clear")

    def wait(self, timeout=None):
        return self._callmethod("wait", (timeout,))


class BarrierProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout=None):
        return self._callmethod("wait", (timeout,))

    def abort(self):
        return self._callmethod("abort")

    def reset(self):
        return self._callmethod("reset")

    @property
    def parties(self):
        return self._callmethod("__getattribute__", ("parties",))

    @property
    def n_waiting(self):
        return self._callmethod("__getattribute__", ("n_waiting",))

    @property
    def broken(self):
        return self._callmethod("__getattribute__", ("broken",))


class ValueProxy(BaseProxy):
    _exposed_ = ("get", "set")

    def get(self):
        return self._callmethod("get")

    def set(self, value):
        return self._callmethod("set", (value,))

    value = property(get, set)

    __class_getitem__ = classmethod(types.GenericAlias)


def _returns_self(name):
    """An in-place operator: the referent changes, the proxy is the result."""
    def method(self, value):
        self._callmethod(name, (value,))
        return self
    method.__name__ = name
    return method


BaseListProxy = MakeProxyType("BaseListProxy", (
    "__add__", "__contains__", "__delitem__", "__getitem__", "__imul__", "__len__",
    "__mul__", "__reversed__", "__rmul__", "__setitem__",
    "append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove",
    "reverse", "sort",
))


class ListProxy(BaseListProxy):
    def __iadd__(self, value):
        self._callmethod("extend", (value,))
        return self

    __imul__ = _returns_self("__imul__")
    __class_getitem__ = classmethod(types.GenericAlias)


collections.abc.MutableSequence.register(BaseListProxy)

_BaseDictProxy = MakeProxyType("DictProxy", (
    "__contains__", "__delitem__", "__getitem__", "__ior__", "__iter__", "__len__", "__or__",
    "__reversed__", "__ror__", "__setitem__", "clear", "copy", "fromkeys", "get", "items",
    "keys", "pop", "popitem", "setdefault", "update", "values",
))
_BaseDictProxy._method_to_typeid_ = {"__iter__": "Iterator"}


class DictProxy(_BaseDictProxy):
    __ior__ = _returns_self("__ior__")
    __class_getitem__ = classmethod(types.GenericAlias)


collections.abc.MutableMapping.register(_BaseDictProxy)

_BaseSetProxy = MakeProxyType("SetProxy", (
    "__and__", "__contains__", "__iand__", "__ior__", "__isub__", "__iter__", "__ixor__",
    "__len__", "__or__", "__rand__", "__ror__", "__rsub__", "__rxor__", "__sub__", "__xor__",
    "__ge__", "__gt__", "__le__", "__lt__",
    "add", "clear", "copy", "difference", "difference_update", "discard", "intersection",
    "intersection_update", "isdisjoint", "issubset", "issuperset", "pop", "remove",
    "symmetric_difference", "symmetric_difference_update", "union", "update",
))
_BaseSetProxy._method_to_typeid_ = {"__iter__": "Iterator"}


class SetProxy(_BaseSetProxy):
    __ior__ = _returns_self("__ior__")
    __iand__ = _returns_self("__iand__")
    __ixor__ = _returns_self("__ixor__")
    __isub__ = _returns_self("__isub__")
    __class_getitem__ = classmethod(types.GenericAlias)


collections.abc.MutableSet.register(_BaseSetProxy)

ArrayProxy = MakeProxyType("ArrayProxy", ("__len__", "__getitem__", "__setitem__"))

BasePoolProxy = MakeProxyType("PoolProxy", (
    "apply", "apply_async", "close", "imap", "imap_unordered", "join", "map", "map_async",
    "starmap", "starmap_async", "terminate",
))
BasePoolProxy._method_to_typeid_ = {
    "apply_async": "AsyncResult",
    "map_async": "AsyncResult",
    "starmap_async": "AsyncResult",
    "imap": "Iterator",
    "imap_unordered": "Iterator",
}


class PoolProxy(BasePoolProxy):
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


# ---------------------------------------------------------------------------

class SyncManager(BaseManager):
    """A manager of the types meant for synchronisation between processes,
    plus dict, list, set and Namespace. ``Manager()`` returns a started one."""


SyncManager.register("Queue", queue.Queue)
SyncManager.register("JoinableQueue", queue.Queue)
SyncManager.register("Event", threading.Event, EventProxy)
SyncManager.register("Lock", threading.Lock, AcquirerProxy)
SyncManager.register("RLock", _rlock, AcquirerProxy)
SyncManager.register("Semaphore", threading.Semaphore, AcquirerProxy,
                     exposed=("acquire", "release"))
SyncManager.register("BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy,
                     exposed=("acquire", "release"))
SyncManager.register("Condition", threading.Condition, ConditionProxy)
SyncManager.register("Barrier", threading.Barrier, BarrierProxy)
SyncManager.register("Pool", pool.Pool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("set", set, SetProxy)
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", Array, ArrayProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
# types returned by methods of other proxies
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)


def Manager(ctx=None):
    """A started SyncManager; ``ctx`` is the multiprocessing context of its
    server process (default: the current one)."""
    manager = SyncManager(ctx=ctx or get_context())
    manager.start()
    return manager
