"""Mistakes that the types catch: tests/test_typing.py expects mypy to
report exactly the lines marked ``# error: <code>``, so the checked
program above is checked against real types, not Any."""
from __future__ import annotations

import fastmgr
from fastmgr import SyncManager
from fastmgr.sync import DictProxy, ListProxy


def mistakes(manager: SyncManager) -> None:
    d: DictProxy[str, int] = manager.dict()
    d["a"] = "one"  # error: assignment
    numbers: ListProxy[int] = manager.list([1, 2])
    numbers.append("three")  # error: arg-type
    total: str = numbers[0]  # error: assignment
    manager.Lock().acquire(blocking="yes")  # error: arg-type
    manager.no_such_type()  # error: attr-defined
    fastmgr.pipeline(manager, window="big")  # error: arg-type
    fastmgr.BaseManager(address=("127.0.0.1", 0), authkey="text")  # error: arg-type
    fastmgr.no_such_function()  # error: attr-defined
    print(total)
