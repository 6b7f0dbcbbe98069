"""Namespace and NamespaceProxy.

The rule, as in the stdlib: attributes whose name starts with ``_`` live on
the proxy itself; every other attribute lives in the shared Namespace.
So ``ns._z = 1`` never reaches the server, and ``repr`` of the Namespace
shows only the public attributes.
"""
from .proxies import BaseProxy

__all__ = ["Namespace", "NamespaceProxy"]


class Namespace:
    """A plain object holding attributes, shown as Namespace(a=1, b=2)."""

    def __init__(self, /, **kwds):
        self.__dict__.update(kwds)

    def __repr__(self):
        shown = sorted("%s=%r" % (name, value) for name, value in self.__dict__.items()
                       if not name.startswith("_"))
        return "%s(%s)" % (type(self).__name__, ", ".join(shown))


class NamespaceProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattribute__(self, key):
        # every public name is the referent's (no lookup on the proxy first,
        # which would fail and cost an exception per read)
        if key[0] == "_":
            return object.__getattribute__(self, key)
        return object.__getattribute__(self, "_callmethod")("__getattribute__", (key,))

    def __setattr__(self, key, value):
        if key[0] == "_":
            return object.__setattr__(self, key, value)
        return object.__getattribute__(self, "_callmethod")("__setattr__", (key, value))

    def __delattr__(self, key):
        if key[0] == "_":
            return object.__delattr__(self, key)
        return object.__getattribute__(self, "_callmethod")("__delattr__", (key,))
