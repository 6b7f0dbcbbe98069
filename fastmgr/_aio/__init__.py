"""Async views of proxies and managers: ``fastmgr.aio(target)``.

The pieces, from the bottom up: ``lane.py`` (one connection driven by
the event loop: the wire's Connection through its loop_* methods, or
``tls_lane.py`` over TLS), ``connect.py`` (opening one; the handshake is
``_handshake.py``'s), ``link.py`` (one loop's lanes to one manager, and
which lane a call takes), ``call.py`` (the awaitable a view's method
returns), ``ops.py`` (calls that may block), ``leftovers.py`` (what
cancelled calls leave behind), ``views.py`` and ``manager.py`` (what
users call).
docs/asyncio.md is the user's guide.
"""
import os

from ..managers import BaseManager
from ..proxies import BaseProxy
from .link import forget_all_links
from .manager import AsyncManager
from .views import AsyncProxy, view_of

__all__ = ["aio", "AsyncProxy", "AsyncManager"]


def aio(target):
    """An async view of a proxy (its methods awaitable), or of a manager
    (``await amgr.dict()`` returns an async view of a new dict)."""
    if isinstance(target, (AsyncProxy, AsyncManager)):
        return target
    if isinstance(target, BaseProxy):
        return view_of(target)
    if isinstance(target, BaseManager):
        return AsyncManager(target)
    raise TypeError("aio() takes a fastmgr proxy or manager, not %r" % type(target).__name__)


os.register_at_fork(after_in_child=forget_all_links)
