from multiprocessing.shared_memory import ShareableList, SharedMemory
from typing import Any, Iterable

from .managers import BaseManager
from .server import Server

__all__ = ["SharedMemoryManager", "SharedMemoryServer"]

class SharedMemoryServer(Server): ...

class SharedMemoryManager(BaseManager):
    def get_server(self) -> SharedMemoryServer: ...
    def SharedMemory(self, size: int) -> SharedMemory: ...
    def ShareableList(self, sequence: Iterable[Any] | None) -> ShareableList[Any]: ...
