"""What the tests of async views (test_aio_*.py) share.

What a manager process needs lives here, so that it pickles by reference
under the spawn start method.  The fixtures (in conftest.py): ``aio_run``,
over the default event loop and uvloop, runs a coroutine function on a new
loop, bounded in time (loop_runner); ``aio_manager``, over fork and spawn,
is a started AioManager shared by a test module.
"""
import asyncio
import multiprocessing
import threading
import time

import pytest

import fastmgr

#: the bound on a whole coroutine run by the run fixture (seconds)
RUN_LIMIT = 60

LOOPS = ["asyncio", "uvloop"]
METHODS = ["fork", "spawn"]


class Maths:
    def __init__(self, label="maths"):
        self.label = label

    def add(self, x, y):
        return x + y

    def echo(self, value):
        return value

    def slow(self, seconds, value):
        time.sleep(seconds)
        return value

    def fail_key(self, key):
        raise KeyError(key)

    def fail_custom(self, code):
        raise CustomError(code)

    def unpicklable(self):
        return threading.Lock()

    def __repr__(self):
        return "Maths(%r)" % self.label


class CustomError(Exception):
    """An exception type the client knows only through this module."""


class Waiter:
    """A thread-bound object of our own: its calls may block."""

    _fastmgr_thread_bound_ = True

    def __init__(self):
        self._event = threading.Event()

    def wait(self, timeout):
        return self._event.wait(timeout)

    def set(self):
        self._event.set()

    def pause(self, seconds):
        time.sleep(seconds)
        return seconds


class Shelf:
    """Hands out proxies of other shared objects (method_to_typeid)."""

    def __init__(self):
        self._items = {}

    def item(self, name):
        return self._items.setdefault(name, Maths(name))


class AioManager(fastmgr.SyncManager):
    pass


AioManager.register("Maths", Maths)
AioManager.register("Waiter", Waiter)
AioManager.register("Shelf", Shelf, method_to_typeid={"item": "Maths"})


def start_manager(method="fork", **kwds):
    manager = AioManager(ctx=multiprocessing.get_context(method), **kwds)
    manager.start()
    return manager


def loop_runner(kind):
    """run(coroutine function, *args): its result, on a new loop of kind."""
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        start = uvloop.run
    else:
        start = asyncio.run

    def run(fn, *args, limit=RUN_LIMIT):
        return start(asyncio.wait_for(fn(*args), limit))
    run.kind = kind
    return run


def in_thread(fn, *args, limit=RUN_LIMIT):
    """fn(*args) in a new thread (a loop of its own there); its result."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # handed back to the test
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the thread did not finish within %s s" % limit
    if "error" in box:
        raise box["error"]
    return box["result"]
