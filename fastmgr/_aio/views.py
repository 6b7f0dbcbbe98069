"""Async views of proxies.

A view has an awaitable method for every method its proxy exposes, with
the same arguments, and named twins for the special methods Python has no
async form of: ``__getitem__`` is ``getitem``, ``__len__`` is ``len``,
``__contains__`` is ``contains``, ``__or__`` is ``or_`` (a keyword gets a
trailing underscore, as in the ``operator`` module), and so on: the name
without its underscores.  In-place twins (``ior``, ``iand``, ...) return
the view, as ``d |= x`` leaves ``d`` the proxy.

Beyond that, by what the proxy exposes:

- locks, semaphores and conditions: ``async with``, and ``acquire`` with
  the stdlib's arguments;
- conditions: ``wait``, ``wait_for`` (the predicate runs here, as with the
  proxy; it may be a coroutine function), ``notify``;
- queues: ``get``/``put`` with their arguments (see ``ops.py``);
- iterators (a dict's ``iter()``): ``async for``, and ``next()``; a remote
  ``StopIteration`` arrives as ``StopAsyncIteration`` (asyncio cannot carry
  StopIteration);
- anything with ``__iter__`` or ``__getitem__``: ``async for``, item by
  item as ``for`` over the proxy goes (``copy()`` or ``_getvalue()`` take
  a snapshot in one call);
- ``Value``: ``await av.value``; ``Barrier``: ``await ab.parties`` (and
  ``n_waiting``, ``broken``); ``Namespace``: ``getattr``, ``setattr``,
  ``delattr``;
- a pool: ``async with`` (terminated at the end, as the proxy does).

A method that a view defines itself (``proxy``, and the names above) wins
over an exposed method of the same name; the proxy itself is ``view.proxy``.
"""
import asyncio
import inspect
import keyword

from .. import _protocol as P
from ..pipeline import OnewayCalls
from ..proxies import BaseProxy
from . import ops
from .call import OpCall, plain_call
from .link import FREE, QUICK, link_for

__all__ = ["AsyncProxy", "OnewayView", "view_of", "view_type"]

RESP_PROXY = P.RESP_PROXY
_get_running_loop = asyncio.get_running_loop
_current_task = asyncio.current_task


def awaitable(method):
    """Mark a method that returns a call (an awaitable that behaves as a
    coroutine) as a coroutine function, where Python lets us:
    inspect.iscoroutinefunction (3.12+) and asyncio.iscoroutinefunction."""
    if hasattr(inspect, "markcoroutinefunction"):
        inspect.markcoroutinefunction(method)
    else:
        method._is_coroutine = _asyncio_marker
    return method


_asyncio_marker = getattr(asyncio.coroutines, "_is_coroutine", None)


class AsyncProxy:
    """An async view of a proxy (see the module docstring)."""

    # _proxy: the proxy (it holds the reference to the shared object)
    # _ident, _peer: its ident and this process's link to its server
    # _loop, _link: the loop of the last call and its Link to the server
    # _bound: whether the server gives calls on the object a thread of
    #         their own (None until the server says)
    __slots__ = ("_proxy", "_ident", "_peer", "_loop", "_link", "_bound", "__weakref__")
    _exposed_ = ()

    def __init__(self, proxy):
        self._proxy = proxy
        self._ident = proxy._id
        self._peer = proxy._peer
        self._loop = self._link = None
        self._bound = None

    @property
    def proxy(self):
        """The proxy this view calls through."""
        return self._proxy

    def __repr__(self):
        return "<async view of %r>" % (self._proxy,)

    def __reduce__(self):
        # a view travels to another process as its proxy does
        return (view_of, (self._proxy,))

    # -- making calls ------------------------------------------------------------

    def _link_now(self):
        """The running loop's link to the server."""
        loop = _get_running_loop()
        link = self._link
        if self._loop is not loop or link.closed:
            link = self._link = link_for(self._peer, loop)
            self._loop = loop
        return link

    def _call(self, method, args=(), kwds=None, op=None, limit=-1):
        """The awaitable of method(*args, **kwds) on the shared object.
        op(view, outer, *args, **kwds) runs it instead, when the object is
        thread-bound (ops.py).  limit: seconds (default: the proxy's
        timeout, else its manager's)."""
        try:
            loop = _get_running_loop()
        except RuntimeError:
            return self._later(method, args, kwds, op)
        link = self._link
        if self._loop is not loop or link.closed:
            link = self._link = link_for(self._peer, loop)
            self._loop = loop
        if limit == -1:
            limit = self._proxy.__dict__.get("_call_timeout", self._peer.timeout)
        bound = self._bound
        if bound is False:
            return plain_call(link, FREE, (self._ident, method, args, kwds), self, limit)
        if bound is None:
            return OpCall(loop, lambda outer: ops.first_call(self, outer, method, args, kwds, op),
                          limit)
        if op is not None:
            return OpCall(loop, lambda outer: op(self, outer, *args, **(kwds or {})), limit)
        if method in ops.QUICK_METHODS:
            return plain_call(link, QUICK, (self._ident, method, args, kwds), self, limit)
        return OpCall(loop, lambda outer: ops.blocking_call(self, outer, method, args, kwds),
                      limit)

    async def _later(self, method, args, kwds, op):
        """A call made where no loop runs: it starts once awaited in one."""
        return await self._call(method, args, kwds, op)

    def _convert(self, kind, value):
        """A proxy in a result, as an async view."""
        if kind == RESP_PROXY:
            value = self._proxy._proxy_from_reply(value)
        return view_of(value)

    # -- what every proxy has -----------------------------------------------------

    @awaitable
    def _getvalue(self):
        """A copy of the shared object."""
        return self._call("#GETVALUE")

    @awaitable
    def repr(self):
        """The shared object's repr (what str(proxy) gives)."""
        return self._call("__repr__")

    @awaitable
    def str(self):
        """The shared object's str."""
        return self._call("__str__")

    def __aiter__(self):
        if "__iter__" in self._exposed_:
            return _RemoteIteration(self)
        if "__getitem__" in self._exposed_:
            return _IndexIteration(self)
        raise TypeError("%r is not iterable" % (self,))


class _RemoteIteration:
    """async for over a view whose object makes its own iterator."""

    def __init__(self, view):
        self._view = view
        self._it = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._it is None:
            self._it = await self._view._call("__iter__")
            if not isinstance(self._it, AsyncProxy):
                self._it = _LocalIteration(self._it)
        return await self._it.__anext__()


class _LocalIteration:
    """An iterator that came back as a value (not a proxy): iterated here."""

    def __init__(self, iterable):
        self._it = iter(iterable)

    async def __anext__(self):
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class _IndexIteration:
    """async for over a sequence: getitem(0), getitem(1), ... until IndexError."""

    def __init__(self, view):
        self._view = view
        self._index = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            item = await self._view._call("__getitem__", (self._index,))
        except IndexError:
            raise StopAsyncIteration from None
        self._index += 1
        return item


# ---------------------------------------------------------------------------
# families: what views of some kinds of object have besides forwarders

class LockView(AsyncProxy):
    """Locks, semaphores (and conditions): ``async with``.  A lock taken
    through a view belongs to the task that awaited the acquire."""

    __slots__ = ()

    @awaitable
    def acquire(self, blocking=True, timeout=None):
        return self._call("acquire", _acquire_args(blocking, timeout), None, _acquire_op)

    @awaitable
    def release(self):
        if self._bound and _running():
            return self._release_call(_current_task())
        return self._call("release", (), None, _release_op)

    def _release_call(self, owner):
        """release() on the lane of owner's locks (then one fewer held
        there), else on the shared lane."""
        link = self._link_now()
        lane = link.pinned(owner)
        if lane is None:
            return link.call(QUICK, self._ident, "release", view=self)
        return link.call(lane, self._ident, "release", view=self,
                         after=lambda value: link.unpin(owner, lane))

    def __aenter__(self):
        return self.acquire()

    def __aexit__(self, exc_type, exc, tb):
        return self.release()


def _running():
    try:
        _get_running_loop()
    except RuntimeError:
        return False
    return True


def _acquire_args(blocking, timeout):
    """acquire()'s arguments as the stdlib's proxy sends them."""
    return (blocking,) if timeout is None else (blocking, timeout)


def _acquire_op(view, outer, blocking=True, timeout=None):
    return ops.acquire(view, outer, blocking, timeout)


def _release_op(view, outer):
    return ops.release(view, outer)


class ConditionView(LockView):
    __slots__ = ()

    @awaitable
    def wait(self, timeout=None):
        return self._call("wait", (timeout,), None, ops.wait_sliced)

    @awaitable
    def notify(self, n=1):
        return self._call("notify", (n,))

    @awaitable
    def notify_all(self):
        return self._call("notify_all")

    async def wait_for(self, predicate, timeout=None):
        """As the proxy's: the predicate runs here, between waits."""
        result = await _maybe_awaited(predicate())
        if result:
            return result
        loop = _get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waittime = None
        while not result:
            if deadline is not None:
                waittime = deadline - loop.time()
                if waittime <= 0:
                    break
            await self.wait(waittime)
            result = await _maybe_awaited(predicate())
        return result


async def _maybe_awaited(value):
    return await value if inspect.isawaitable(value) else value


class EventView(AsyncProxy):
    __slots__ = ()

    @awaitable
    def wait(self, timeout=None):
        return self._call("wait", (timeout,), None, ops.wait_sliced)


class BarrierView(AsyncProxy):
    __slots__ = ()

    @awaitable
    def wait(self, timeout=None):
        return self._call("wait", (timeout,))

    parties = property(lambda self: self._call("__getattribute__", ("parties",)),
                       doc="await view.parties")
    n_waiting = property(lambda self: self._call("__getattribute__", ("n_waiting",)),
                         doc="await view.n_waiting")
    broken = property(lambda self: self._call("__getattribute__", ("broken",)),
                      doc="await view.broken")


class QueueView(AsyncProxy):
    __slots__ = ()

    @awaitable
    def get(self, block=True, timeout=None):
        return self._call("get", (block, timeout), None, ops.queue_get)

    @awaitable
    def get_nowait(self):
        return self.get(False)

    @awaitable
    def put(self, item, block=True, timeout=None):
        return self._call("put", (item, block, timeout), None, ops.queue_put)

    @awaitable
    def put_nowait(self, item):
        return self.put(item, False)


class IteratorView(AsyncProxy):
    __slots__ = ()

    def __aiter__(self):
        return self

    def __anext__(self):
        return self._call("__next__")

    @awaitable
    def next(self):
        return self._call("__next__")


class ValueView(AsyncProxy):
    __slots__ = ()

    value = property(lambda self: self._call("get"), doc="await view.value (set: view.set(x))")


class NamespaceView(AsyncProxy):
    __slots__ = ()

    @awaitable
    def getattr(self, name):
        return self._call("__getattribute__", (name,))

    @awaitable
    def setattr(self, name, value):
        return self._call("__setattr__", (name, value))

    @awaitable
    def delattr(self, name):
        return self._call("__delattr__", (name,))


class PoolView(AsyncProxy):
    __slots__ = ()

    async def __aenter__(self):
        return self

    def __aexit__(self, exc_type, exc, tb):
        return self._call("terminate")


def _families(proxytype, exposed):
    """The family classes of a view for proxytype exposing exposed."""
    from ..sync import BarrierProxy, BasePoolProxy, ValueProxy
    has = set(exposed).issuperset
    families = []
    if has(("acquire", "release", "wait", "notify")):
        families.append(ConditionView)
    elif has(("acquire", "release")):
        families.append(LockView)
    if issubclass(proxytype, BarrierProxy):
        families.append(BarrierView)
    elif has(("wait", "set", "is_set")):
        families.append(EventView)
    if has(("get", "put", "get_nowait", "put_nowait")):
        families.append(QueueView)
    if "__next__" in exposed:
        families.append(IteratorView)
    if issubclass(proxytype, ValueProxy):
        families.append(ValueView)
    if has(("__getattribute__", "__setattr__", "__delattr__")):
        families.append(NamespaceView)
    if issubclass(proxytype, BasePoolProxy):
        families.append(PoolView)
    return tuple(families) or (AsyncProxy,)


# ---------------------------------------------------------------------------
# view types

_INPLACE = frozenset(["__iadd__", "__isub__", "__imul__", "__ior__", "__iand__", "__ixor__"])


def twin_name(method):
    """The view's name for method: a special method without its
    underscores (a keyword gets a trailing one)."""
    if len(method) > 4 and method.startswith("__") and method.endswith("__"):
        name = method[2:-2]
        return name + "_" if keyword.iskeyword(name) else name
    return method


def _forwarder(method):
    def call(self, /, *args, **kwds):
        # the common case of _call inlined: a known loop, an object that is
        # not thread-bound
        try:
            loop = _get_running_loop()
        except RuntimeError:
            return self._later(method, args, kwds, None)
        link = self._link
        if self._loop is loop and self._bound is False and not link.closed:
            return plain_call(link, FREE, (self._ident, method, args, kwds), self,
                              self._proxy.__dict__.get("_call_timeout", self._peer.timeout))
        return self._call(method, args, kwds)
    call.__name__ = twin_name(method)
    call.__doc__ = "await the shared object's %s(...)" % method
    return awaitable(call)


def _inplace_forwarder(method):
    async def call(self, other):
        await self._call(method, (other,))
        return self
    call.__name__ = twin_name(method)
    call.__doc__ = "await the shared object's %s(other); returns the view" % method
    return call


def exposed_of(proxy):
    """The names proxy forwards to its shared object."""
    exposed = getattr(proxy, "_exposed_", None)
    if exposed is None:  # a proxy class written by hand, with no _exposed_
        exposed = [name for name, attr in vars(type(proxy)).items()
                   if not name.startswith("_") and callable(attr)]
    return tuple(exposed)


_view_types = {}  # (proxy type, exposed) -> view type


def view_type(proxy):
    """The view class for proxy's type and exposed methods (made once)."""
    proxytype, exposed = type(proxy), exposed_of(proxy)
    key = (proxytype, exposed)
    viewtype = _view_types.get(key)
    if viewtype is None:
        bases = _families(proxytype, exposed)
        namespace = {"__slots__": (), "_exposed_": exposed, "__module__": __name__}
        for method in exposed:
            name = twin_name(method)
            if name in namespace or any(hasattr(base, name) for base in bases):
                continue
            namespace[name] = (_inplace_forwarder if method in _INPLACE else _forwarder)(method)
        viewtype = type("Async" + proxytype.__name__.replace("[", "_").replace("]", ""),
                        bases, namespace)
        _view_types[key] = viewtype
    return viewtype


def view_of(value):
    """An async view of value if it is a proxy, else value."""
    if isinstance(value, BaseProxy):
        return view_type(value)(value)
    return value



class OnewayView(OnewayCalls):
    """``fastmgr.oneway(view)``: calls that are sent and never answered
    (errors are dropped on the server), on the shared lane of the running
    loop.  They return None at once."""

    __slots__ = ("_view",)

    def __init__(self, view):
        object.__setattr__(self, "_view", view)

    def _send(self, method, args, kwds=None):
        view = self._view
        link = view._link_now()
        link.send_oneway(view._ident, method, args, kwds)
