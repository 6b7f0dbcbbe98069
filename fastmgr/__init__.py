"""fastmgr: multiprocessing.managers, with its hot path compiled.

Change one import (``from fastmgr import BaseManager``) and the program
runs as before, faster.  ``fastmgr._backend.describe()`` says which wire
implementation is in use.
"""
import pkgutil

# run from a source checkout, find the compiled extension in the installed copy
__path__ = pkgutil.extend_path(__path__, __name__)

from .errors import (AuthenticationError, ManagerGone, ProcessError, ProtocolError,  # noqa: E402
                     RemoteError)
from ._install import install, installed, uninstall  # noqa: E402
from .managers import BaseManager, State  # noqa: E402
from .pipeline import oneway, pipeline  # noqa: E402
from .proxies import AutoProxy, BaseProxy, MakeProxyType, RebuildProxy, Token  # noqa: E402
from .namespace import Namespace, NamespaceProxy  # noqa: E402
from .server import Server, all_methods, public_methods  # noqa: E402
from .sharedmem import SharedMemoryManager, SharedMemoryServer  # noqa: E402
from .sync import (AcquirerProxy, Array, ArrayProxy, BarrierProxy, BaseListProxy,  # noqa: E402
                   BasePoolProxy, ConditionProxy, DictProxy, EventProxy, IteratorProxy,
                   ListProxy, Manager, PoolProxy, SetProxy, SyncManager, Value, ValueProxy)

__version__ = "0.1.0"

__all__ = [
    "install", "uninstall", "installed", "pipeline", "oneway", "BaseManager", "BaseProxy", "AutoProxy", "MakeProxyType", "RebuildProxy", "Token",
    "Server", "State", "RemoteError", "ProcessError", "AuthenticationError", "ProtocolError",
    "ManagerGone", "all_methods", "public_methods",
    "SyncManager", "Manager", "SharedMemoryManager", "SharedMemoryServer",
    "Namespace", "NamespaceProxy", "Value", "Array", "IteratorProxy", "AcquirerProxy",
    "ConditionProxy", "EventProxy", "BarrierProxy", "ValueProxy", "ListProxy",
    "BaseListProxy", "DictProxy", "SetProxy", "ArrayProxy", "PoolProxy", "BasePoolProxy",
]
