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
from .managers import BaseManager, State  # noqa: E402
from .proxies import AutoProxy, BaseProxy, MakeProxyType, RebuildProxy, Token  # noqa: E402
from .server import Server, all_methods, public_methods  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BaseManager", "BaseProxy", "AutoProxy", "MakeProxyType", "RebuildProxy", "Token",
    "Server", "State", "RemoteError", "ProcessError", "AuthenticationError", "ProtocolError",
    "ManagerGone", "all_methods", "public_methods",
]
