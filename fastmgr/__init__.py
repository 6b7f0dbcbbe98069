"""fastmgr: multiprocessing.managers, with its hot path compiled.

Change one import (``from fastmgr import BaseManager``) and the program
runs as before, faster.  ``fastmgr._backend.describe()`` says which wire
implementation is in use.

The public names are imported on first use, so ``import fastmgr`` (and the
pytest plugin, which pytest imports in every run) loads no compiled code
and maps no shared memory until a manager name is asked for.  It reads the
FASTMGR_* settings, though, so that a bad value fails at import.
"""
import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        "fastmgr runs on Linux only (its compiled wire uses epoll, eventfd and memfd); "
        "this system is %r.  Use multiprocessing.managers from the standard library "
        "instead." % sys.platform)

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import pkgutil  # noqa: E402
import types  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from ._version import __version__ as __version__  # noqa: E402
from . import _settings  # noqa: E402,F401  (a bad FASTMGR_* value fails here, at import)

# run from a source checkout, find the compiled extension in the installed copy
__path__ = pkgutil.extend_path(__path__, __name__)

#: where each public name lives
_HOME = {
    "_aio": ["aio", "AsyncProxy", "AsyncManager"],
    "errors": ["AuthenticationError", "ManagerGone", "ProcessError", "ProtocolError",
               "RemoteError"],
    "_install": ["install", "installed", "uninstall"],
    "managers": ["BaseManager", "State"],
    "pipeline": ["oneway", "pipeline"],
    "proxies": ["AutoProxy", "BaseProxy", "MakeProxyType", "RebuildProxy", "Token"],
    "namespace": ["Namespace", "NamespaceProxy"],
    "server": ["Server", "all_methods", "public_methods"],
    "sharedmem": ["SharedMemoryManager", "SharedMemoryServer"],
    "sync": ["AcquirerProxy", "Array", "ArrayProxy", "BarrierProxy", "BaseListProxy",
             "BasePoolProxy", "ConditionProxy", "DictProxy", "EventProxy", "IteratorProxy",
             "ListProxy", "Manager", "PoolProxy", "SetProxy", "SyncManager", "Value",
             "ValueProxy"],
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = [
    "install", "uninstall", "installed", "pipeline", "oneway", "aio", "AsyncProxy", "AsyncManager",
    "BaseManager", "BaseProxy", "AutoProxy", "MakeProxyType", "RebuildProxy", "Token",
    "Server", "State", "RemoteError", "ProcessError", "AuthenticationError", "ProtocolError",
    "ManagerGone", "all_methods", "public_methods",
    "SyncManager", "Manager", "SharedMemoryManager", "SharedMemoryServer",
    "Namespace", "NamespaceProxy", "Value", "Array", "IteratorProxy", "AcquirerProxy",
    "ConditionProxy", "EventProxy", "BarrierProxy", "ValueProxy", "ListProxy",
    "BaseListProxy", "DictProxy", "SetProxy", "ArrayProxy", "PoolProxy", "BasePoolProxy",
]

if TYPE_CHECKING:
    from ._aio import AsyncManager, AsyncProxy, aio
    from ._install import install, installed, uninstall
    from .errors import (AuthenticationError, ManagerGone, ProcessError, ProtocolError,
                         RemoteError)
    from .managers import BaseManager, State
    from .namespace import Namespace, NamespaceProxy
    from .pipeline import oneway, pipeline
    from .proxies import AutoProxy, BaseProxy, MakeProxyType, RebuildProxy, Token
    from .server import Server, all_methods, public_methods
    from .sharedmem import SharedMemoryManager, SharedMemoryServer
    from .sync import (AcquirerProxy, Array, ArrayProxy, BarrierProxy, BaseListProxy,
                       BasePoolProxy, ConditionProxy, DictProxy, EventProxy, IteratorProxy,
                       ListProxy, Manager, PoolProxy, SetProxy, SyncManager, Value,
                       ValueProxy)
else:
    def __getattr__(name):
        module = _MODULE_OF.get(name)
        if module is None:  # a submodule, as `import fastmgr` used to load them all
            if importlib.util.find_spec(__name__ + "." + name) is None:
                raise AttributeError("module 'fastmgr' has no attribute %r" % name)
            return importlib.import_module("." + name, __name__)
        loaded = importlib.import_module("." + module, __name__)
        for public in _HOME[module]:  # later lookups skip this function
            globals()[public] = getattr(loaded, public)
        return globals()[name]

    def __dir__():
        return sorted(set(globals()) | set(__all__))

    class _Package(types.ModuleType):
        """The submodule ``pipeline`` has the name of the function it
        defines, and importing a submodule binds it on its package: keep
        ``fastmgr.pipeline`` the function, whichever import comes first."""

        def __setattr__(self, name, value):
            if name == "pipeline" and isinstance(value, types.ModuleType):
                value = value.pipeline
            super().__setattr__(name, value)

    sys.modules[__name__].__class__ = _Package
