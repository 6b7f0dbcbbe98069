"""Pickles exchanged with peers that run plain ``multiprocessing.managers``.

Such a peer knows none of fastmgr's classes, and fastmgr must not take the
stdlib's proxies for its own.  So on a connection in the stdlib's format
(see ``_protocol.py``, "Stdlib peers"):

- what leaves as a fastmgr proxy, token, Namespace or Value arrives as the
  stdlib's: a proxy as ``multiprocessing.managers.RebuildProxy`` of the
  stdlib's proxy type of the same name (or its ``AutoProxy``, with the
  exposed methods, for a type the stdlib does not have), with the ident as
  the stdlib's idents are, a string (hexadecimal for fastmgr's integers);
- what arrives as one of those stdlib classes is read as fastmgr's, and a
  token that names this process's own server gets its integer ident back.

The stdlib's classes are named by module and name through ``getattr`` on
the imported module, never pickled as this process's own globals:
``fastmgr.install()`` may have put fastmgr's classes under those names here,
while the peer has the stdlib's.
"""
import importlib
import io
import pickle
from multiprocessing.reduction import ForkingPickler

from . import _pickling  # noqa: F401  (the stdlib managers' reducers, registered)

__all__ = ["dumps", "loads", "stdlib_ident", "STDLIB_PROXY_TYPES"]

#: every Python since 3.4 reads protocol 4; the stdlib's own default on 3.10-3.13
PROTOCOL = 4

STDLIB_MODULE = "multiprocessing.managers"

#: the proxy types of ``multiprocessing.managers`` (3.10-3.13), by name
STDLIB_PROXY_TYPES = frozenset([
    "IteratorProxy", "AcquirerProxy", "ConditionProxy", "EventProxy", "BarrierProxy",
    "NamespaceProxy", "ValueProxy", "BaseListProxy", "ListProxy", "DictProxy",
    "ArrayProxy", "BasePoolProxy", "PoolProxy",
])


class _StdlibModule:
    """Unpickles as the peer's ``multiprocessing.managers`` module."""

    def __reduce__(self):
        return (importlib.import_module, (STDLIB_MODULE,))


class _StdlibName:
    """Unpickles as ``multiprocessing.managers.<name>`` in the peer."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (getattr, (_MODULE, self.name))

    def __call__(self, *args, **kwds):
        # callable, as pickle wants the first item of a reduction to be;
        # called only where a peer unpickles it
        raise TypeError("multiprocessing.managers.%s stands for the stdlib's class in a "
                        "stdlib peer; it is not called here" % self.name)


_MODULE = _StdlibModule()
_NAMES = {}


def _stdlib(name):
    """The one stand-in for a name (one object, so a pickle memoizes it)."""
    stand_in = _NAMES.get(name)
    if stand_in is None:
        stand_in = _NAMES[name] = _StdlibName(name)
    return stand_in


def stdlib_ident(ident):
    """An ident as a stdlib peer expects it: a string."""
    return "%x" % ident if type(ident) is int else ident


def _reduce_token(token):
    return (_stdlib("Token"), (token.typeid, token.address, stdlib_ident(token.id)))


def _reduce_proxy(proxy):
    get = object.__getattribute__  # NamespaceProxy forwards public names
    cls = type(proxy)
    kwds = {}
    if getattr(proxy, "_isauto", False):
        func = _stdlib("AutoProxy")
        kwds["exposed"] = tuple(get(proxy, "_exposed_"))
    elif cls.__module__.startswith("fastmgr.") and cls.__name__ in STDLIB_PROXY_TYPES:
        func = _stdlib(cls.__name__)
    elif cls.__module__.startswith("fastmgr."):
        # a type only fastmgr has (SetProxy): the stdlib's AutoProxy of its methods
        func = _stdlib("AutoProxy")
        kwds["exposed"] = tuple(getattr(cls, "_exposed_", ()))
    else:
        func = cls  # the program's own proxy type, by reference as always
    serializer = get(proxy, "_serializer")
    if serializer not in ("pickle", "xmlrpclib"):
        serializer = "pickle"  # the only other name the stdlib knows
    return (_stdlib("RebuildProxy"), (func, get(proxy, "_token"), serializer, kwds))


def _reduce_namespace(namespace):
    return (_stdlib("Namespace"), (), dict(namespace.__dict__))


def _reduce_value(value):
    return (_stdlib("Value"), (value._typecode, value._value))


def _reducers():
    from . import namespace, proxies, sync
    return {proxies.Token: _reduce_token, namespace.Namespace: _reduce_namespace,
            sync.Value: _reduce_value}, proxies.BaseProxy


class _Pickler(ForkingPickler):
    """ForkingPickler (the stdlib's reducers apply) that writes the stdlib's
    classes where fastmgr has its own."""

    _by_type = None
    _proxy_base = None

    def reducer_override(self, obj):
        if _Pickler._by_type is None:
            _Pickler._by_type, _Pickler._proxy_base = _reducers()
        reduce = _Pickler._by_type.get(type(obj))
        if reduce is not None:
            return reduce(obj)
        if isinstance(obj, _Pickler._proxy_base):
            return _reduce_proxy(obj)
        return NotImplemented


def dumps(obj):
    """The bytes of obj as a stdlib peer reads them."""
    buf = io.BytesIO()
    _Pickler(buf, PROTOCOL).dump(obj)
    return buf.getbuffer()


def _rebuild_proxy(func, token, serializer, kwds):
    """A stdlib proxy arrived: make it fastmgr's.  A token of this process's
    own server gets the integer ident its table uses."""
    from . import proxies
    if isinstance(token.id, str) and proxies._server_here(token.address) is not None:
        try:
            token.id = int(token.id, 16)
        except ValueError:
            pass  # not one of ours: looking it up fails as in the stdlib
    return proxies.RebuildProxy(func, token, serializer, kwds)


def _from_stdlib():
    from . import errors, namespace, proxies, sync
    names = {name: getattr(sync, name) for name in STDLIB_PROXY_TYPES if hasattr(sync, name)}
    names.update({
        "NamespaceProxy": namespace.NamespaceProxy, "Namespace": namespace.Namespace,
        "Token": proxies.Token, "AutoProxy": proxies.AutoProxy, "RebuildProxy": _rebuild_proxy,
        "Value": sync.Value, "RemoteError": errors.RemoteError,
    })
    return names


class _Unpickler(pickle.Unpickler):
    _names = None

    def find_class(self, module, name):
        if module == STDLIB_MODULE:
            if _Unpickler._names is None:
                _Unpickler._names = _from_stdlib()
            found = _Unpickler._names.get(name)
            if found is not None:
                return found
        return super().find_class(module, name)


def loads(data):
    """A value a stdlib peer sent, with fastmgr's classes for the stdlib's."""
    return _Unpickler(io.BytesIO(data)).load()
