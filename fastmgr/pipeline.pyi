from types import TracebackType
from typing import Any

from ._aio import AsyncProxy
from .managers import BaseManager
from .proxies import BaseProxy

__all__ = ["pipeline", "oneway", "Pipeline"]

class Pipeline:
    """Inside ``with``, this thread's proxy calls to one manager return a
    ``Pending`` (``.result()``) at once.  Their static types stay those of
    the plain calls: annotate what you keep as ``Any``."""
    def __init__(self, target: BaseManager | BaseProxy, window: int = 4096) -> None: ...
    def __enter__(self) -> Pipeline: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...
    def sync(self) -> None: ...

def pipeline(target: BaseManager | BaseProxy, window: int = 4096) -> Pipeline: ...

def oneway(proxy: BaseProxy | AsyncProxy) -> Any:
    """The proxy's methods, item assignment and deletion, sent without a
    reply (of an async view: on its loop's shared connection)."""
