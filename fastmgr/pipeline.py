"""Pipelined and oneway calls: fastmgr's way past one round trip per call.

``pipeline(target)`` (a manager or a proxy) pipelines this thread's calls to
that manager for the length of a ``with`` block: each proxy call returns at
once with a ``Pending`` instead of its result, the requests leave in batches,
and the replies come back in order.  At the end of the block every reply has
been read; if any call failed and its ``Pending`` was not asked, the first
such error is raised there.  Calls that create proxies (and the manager's
own requests) stay synchronous.

    with fastmgr.pipeline(manager):
        for i in range(10000):
            d[i] = i                    # no waiting
        n = d.get(5)                    # a Pending
    print(n.result())

``oneway(proxy)`` sends calls that never wait and get no reply at all
(errors are dropped on the server):

    fastmgr.oneway(d)[i] = i
    fastmgr.oneway(counter).increment()
"""
from . import _protocol as P
from ._backend import wire
from ._stdlib_client import StdlibConnection
from .proxies import BaseProxy, proxy_from_reply, reply_error

__all__ = ["pipeline", "oneway", "Pipeline"]


def _peer_of(target):
    if _is_async_view(target):
        raise TypeError("an async view needs no pipeline(): its calls are pipelined "
                        "as they are, gather them")
    if isinstance(target, BaseProxy):
        return object.__getattribute__(target, "_peer")
    peer = getattr(target, "_peer", None)
    if callable(peer):  # a manager
        return peer()
    raise TypeError("pipeline() and oneway() take a fastmgr manager or proxy, not %r"
                    % type(target).__name__)


class Pipeline:
    """The context manager returned by pipeline()."""

    def __init__(self, target, window=4096):
        self._peer = _peer_of(target)
        self._address = self._peer.address
        self._window = window
        self._pipe = None
        self._conn = None

    def _resolve(self, kind, value):
        if kind == P.RESP_PROXY:
            return proxy_from_reply(value, self._address, self._peer.codec.serializer, None,
                                    self._peer.authkey)
        raise reply_error(kind, value)

    def __enter__(self):
        peer = self._peer
        conn = peer.connection()
        if not isinstance(conn, (wire.Connection, StdlibConnection)):
            raise RuntimeError("this thread is already pipelining to %r" % (self._address,))
        self._conn = conn
        if isinstance(conn, StdlibConnection):
            # a stdlib server's connection is Python: so is the pipeline over it
            from ._wire_py import Pipeline as pipeline_type
        else:
            pipeline_type = wire.Pipeline
        self._pipe = pipeline_type(conn, self._resolve, self._window)
        peer.tls.conn = self._pipe
        return self

    def sync(self):
        """Wait for every reply sent so far."""
        self._pipe.sync()

    def __exit__(self, exc_type, exc, tb):
        peer = self._peer
        if getattr(peer.tls, "conn", None) is self._pipe:
            peer.tls.conn = self._conn
        if self._pipe.closed:
            return False
        try:
            self._pipe.sync()
        except BaseException as error:
            peer._failed(self._conn, error)
            if exc_type is None:
                raise
            return False
        unseen = self._pipe.unseen_errors()
        if unseen and exc_type is None:
            unseen[0].result()  # raises the first error nobody looked at
        return False


def pipeline(target, window=4096):
    """Pipeline this thread's calls to target's manager in a with block."""
    return Pipeline(target, window)


class OnewayCalls:
    """Methods, item assignment and deletion as calls that are sent and
    never answered; a subclass says how one is sent (_send)."""

    __slots__ = ()

    def _send(self, method, args, kwds=None):
        raise NotImplementedError

    def __getattr__(self, name):
        def call(*args, **kwds):
            self._send(name, args, kwds)
        call.__name__ = name
        return call

    def __setitem__(self, key, value):
        self._send("__setitem__", (key, value))

    def __delitem__(self, key):
        self._send("__delitem__", (key,))


class _Oneway(OnewayCalls):
    """Calls on a proxy that send a request and never wait for its reply."""

    __slots__ = ("_proxy",)

    def __init__(self, proxy):
        object.__setattr__(self, "_proxy", proxy)

    def _send(self, method, args, kwds=None):
        proxy = self._proxy
        peer = proxy._peer
        conn = peer.connection()
        try:
            conn.send_request(P.REQ_ONEWAY, proxy._id, method, args, kwds or None)
        except BaseException as exc:
            peer._failed(conn, exc)
            raise


def _is_async_view(target):
    from ._aio import AsyncProxy
    return isinstance(target, AsyncProxy)


def oneway(proxy):
    """A view of proxy whose calls never wait (and return None).  Of an
    async view (fastmgr.aio), the calls leave on its loop's shared
    connection, ahead of the awaits made there after them."""
    if _is_async_view(proxy):
        from ._aio.views import OnewayView
        return OnewayView(proxy)
    if not isinstance(proxy, BaseProxy):
        raise TypeError("oneway() takes a fastmgr proxy, not %r" % type(proxy).__name__)
    return _Oneway(proxy)
