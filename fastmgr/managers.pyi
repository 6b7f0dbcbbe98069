import ssl
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from typing_extensions import Self

from .proxies import BaseProxy
from .server import Server

__all__ = ["BaseManager", "State"]

class State:
    INITIAL: ClassVar[int]
    STARTED: ClassVar[int]
    SHUTDOWN: ClassVar[int]
    value: int

class BaseManager:
    """Register types on a subclass, then start() a server process or
    connect() to a running one.

    ``register(typeid, ...)`` adds a method ``typeid`` to the class at run
    time, which a type checker cannot see: declare it on the subclass, e.g.
    ``Maths: Callable[[], MathsClass]`` (or a proxy type)."""
    _registry: ClassVar[dict[str, tuple[Any, ...]]]
    def __init__(self, address: Any = None, authkey: bytes | None = None,
                 serializer: str = "pickle", ctx: BaseContext | None = None, *,
                 shutdown_timeout: float = 1.0, timeout: float | None = None,
                 connect_timeout: float | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 client_ssl_context: ssl.SSLContext | None = None,
                 spin_us: int | None = None, stdlib_clients: bool = True,
                 max_message: int | None = None) -> None: ...
    @property
    def address(self) -> Any: ...
    def get_server(self) -> Server: ...
    def connect(self) -> None: ...
    def reconnect(self) -> None: ...
    def start(self, initializer: Callable[..., object] | None = None,
              initargs: Iterable[Any] = ()) -> None: ...
    def shutdown(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None: ...
    @classmethod
    def register(cls, typeid: str, callable: Callable[..., object] | None = None,
                 proxytype: Any = None, exposed: Sequence[str] | None = None,
                 method_to_typeid: Mapping[str, str] | None = None,
                 create_method: bool = True) -> None: ...
