"""The async view of a manager: its typeid methods, awaited."""
import asyncio
import functools

from ..errors import ProcessError
from ..proxies import Token, build_proxy
from .link import link_for
from .views import view_of

__all__ = ["AsyncManager"]


class AsyncManager:
    """``fastmgr.aio(manager)``: ``await amgr.typeid(...)`` creates a shared
    object, as ``manager.typeid(...)`` does, and returns an async view of
    its proxy.  The manager is started or connected as usual, first."""

    __slots__ = ("_manager",)

    def __init__(self, manager):
        self._manager = manager

    @property
    def manager(self):
        """The manager this view calls through."""
        return self._manager

    def __repr__(self):
        return "<async view of %r>" % (self._manager,)

    def __getattr__(self, name):
        manager = self._manager
        registry = manager._registry
        if name in registry and callable(getattr(type(manager), name, None)):
            create = functools.partial(self._create, name)
            functools.update_wrapper(create, self._create)
            create.__name__ = name
            return create
        raise AttributeError("%r has no typeid %r" % (self, name))

    def __dir__(self):
        manager = self._manager
        return sorted(set(object.__dir__(self)) | {
            name for name in manager._registry if callable(getattr(type(manager), name, None))})

    def _link(self):
        return link_for(self._manager._peer(), asyncio.get_running_loop())

    async def _create(self, typeid, /, *args, **kwds):
        """Create a shared object of typeid: an async view of its proxy."""
        manager = self._manager
        from ..managers import State
        if manager._state.value != State.STARTED:
            raise ProcessError("server not yet started")
        ident, exposed = await self._link().control("create", (typeid,) + args, kwds)
        proxytype = manager._registry[typeid][-1]
        proxy = build_proxy(proxytype, Token(typeid, manager._address, ident),
                            manager._serializer, manager, manager._authkey, exposed)
        return view_of(proxy)

    async def _number_of_objects(self):
        return await self._link().control("number_of_objects")

    async def _debug_info(self):
        return await self._link().control("debug_info")
