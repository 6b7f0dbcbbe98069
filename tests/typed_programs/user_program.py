"""A small typed program of a fastmgr user.

tests/test_typing.py checks it with ``mypy --strict`` against the installed
fastmgr (its stubs and py.typed), and runs it, so that the types it relies
on are the ones the package really has.
"""
from __future__ import annotations

import asyncio
import queue
from typing import Any, Callable

import fastmgr
from fastmgr import BaseManager, SyncManager
from fastmgr.sync import AcquirerProxy, DictProxy, ListProxy, ValueProxy


class Maths:
    def add(self, x: int, y: int) -> int:
        return x + y


class MathsManager(BaseManager):
    # register() adds this method at run time; declaring it tells the checker
    Maths: Callable[[], Maths]


MathsManager.register("Maths", Maths)


class RemoteManager(BaseManager):
    Maths: Callable[[], Maths]


RemoteManager.register("Maths")


def use_registered_type() -> int:
    with MathsManager() as manager:
        maths = manager.Maths()
        result: int = maths.add(4, 3)
        server_address = manager.address
        remote = RemoteManager(address=server_address, authkey=_authkey(manager))
        remote.connect()
        return result + remote.Maths().add(1, 1)


def _authkey(manager: BaseManager) -> bytes:
    import multiprocessing

    return bytes(multiprocessing.current_process().authkey)


def use_sync_manager(manager: SyncManager) -> dict[str, int]:
    d: DictProxy[str, int] = manager.dict()
    d["a"] = 1
    d.update({"b": 2})
    keys: list[str] = d.keys()
    assert sorted(keys) == ["a", "b"]
    items: list[int] = manager.list([1, 2, 3])[:]
    numbers: ListProxy[int] = manager.list(items)
    numbers.append(4)
    q: queue.Queue[Any] = manager.Queue()
    q.put(len(numbers))
    lock: AcquirerProxy = manager.Lock()
    with lock:
        counter: ValueProxy[int] = manager.Value("i", 0)
        counter.value += q.get(timeout=10)
    ns = manager.Namespace(x=1)
    ns.y = ns.x + counter.get()
    d["ns"] = ns.y

    with fastmgr.pipeline(manager):
        for i in range(10):
            d["k%d" % i] = i
        pending: Any = d.get("k5")
    d["pending"] = pending.result()

    fastmgr.oneway(d)["oneway"] = 7
    return d.copy()


async def use_async_views(manager: SyncManager) -> int:
    amgr = fastmgr.aio(manager)
    ad = await amgr.dict()
    await ad.setitem("a", 1)
    aq = fastmgr.aio(manager.Queue())
    await aq.put(await ad.get("a"))
    async with await amgr.Lock():
        item: int = await aq.get(timeout=10)
    length: int = await ad.len()
    return item + length


def main() -> None:
    assert use_registered_type() == 9
    with SyncManager() as manager:
        copy = use_sync_manager(manager)
        assert asyncio.run(use_async_views(manager)) == 2
    assert copy["ns"] == 5 and copy["pending"] == 5 and copy["oneway"] == 7, copy
    manager2: SyncManager = fastmgr.Manager()
    try:
        assert manager2.list([1])[0] == 1
    finally:
        manager2.shutdown()
    print("ok", fastmgr.__version__)


if __name__ == "__main__":
    main()
