"""Calls that may block on the server, as coroutines run by an OpCall.

Each op takes the view, the OpCall it resolves (``outer``) and the
method's arguments.  A blocking wait is sent in slices of ``SLICE``
seconds (``get(True, SLICE)``, ``acquire(True, SLICE)``, ``wait(SLICE)``,
again until it succeeds or its own timeout runs out), so that one that
nobody awaits any more ends soon on the server (see ``leftovers.py``);
waits that have no timeout to slice (``Barrier.wait``, ``JoinableQueue.join``,
a pool's results, your own blocking methods) are sent whole.
"""
import asyncio
import contextlib
import queue

from .call import Discard
from .leftovers import SLICE
from .link import FREE

__all__ = ["QUICK_METHODS", "first_call", "blocking_call", "release", "queue_get",
           "queue_put", "acquire", "wait_sliced"]

#: methods of thread-bound objects that never block: they share the
#: pipelined lane (or the lane of the lock the calling task holds)
QUICK_METHODS = frozenset([
    "qsize", "empty", "full", "put_nowait", "get_nowait", "task_done",
    "is_set", "set", "clear", "notify", "notify_all", "release", "locked",
    "abort", "reset", "ready", "successful", "__getattribute__", "__repr__", "__str__",
    "#GETVALUE",
])


async def relay(outer, plain):
    """outer's outcome is plain's; if outer has ended, plain's late handler
    takes the result.  (Should this op be cancelled in the very turn plain
    got its result, that handler takes it too: Call._wait.)"""
    late = plain.late
    value = await plain
    if not outer.give(value) and late is not None:
        late(value)


@contextlib.asynccontextmanager
async def lane_for(link, owner):
    """The lane of the locks owner holds, else one from the pool for the
    length of the block."""
    lane = link.pinned(owner)
    if lane is not None:
        yield lane
        return
    lane = await link.checkout()
    try:
        yield lane
    finally:
        link.checkin(lane)


def _deadline(loop, timeout):
    """When a wait of timeout seconds ends (None: never)."""
    return None if timeout is None else loop.time() + timeout


def _slice(loop, deadline):
    """How long the next slice waits on the server."""
    if deadline is None:
        return SLICE
    return min(SLICE, max(0.0, deadline - loop.time()))


def quick_route(link, owner):
    """The lane for a quick call of owner's: that of its locks, else the
    shared one."""
    return link.pinned(owner) or FREE


async def first_call(view, outer, method, args, kwds, op):
    """The view's first call: ask the server how it serves the object,
    then make the call as the answer says (op: the view's op for method
    on a thread-bound object, or None)."""
    link = view._link_now()
    view._bound = bound = await link.thread_bound(view._ident)
    if bound and op is not None:
        await op(view, outer, *args, **(kwds or {}))
        return
    if not bound:
        route = FREE
    elif method in QUICK_METHODS:
        route = quick_route(link, outer.owner)
    else:
        await blocking_call(view, outer, method, args, kwds)
        return
    await relay(outer, link.call(route, view._ident, method, args, kwds, view=view))


async def blocking_call(view, outer, method, args, kwds):
    """A call that may block, sent whole on a lane of its own."""
    link = view._link_now()
    async with lane_for(link, outer.owner) as lane:
        await relay(outer, link.call(lane, view._ident, method, args, kwds,
                                     view=view, spin=False))


async def release(view, outer):
    """release() as the first call of a view (see views.release_call)."""
    await relay(outer, view._release_call(outer.owner))


async def queue_get(view, outer, block=True, timeout=None):
    """Queue.get: an item a cancelled get left first, then get_nowait on
    the shared lane, then (if it may wait) get in slices on a lane of its
    own.  An item that comes for nobody goes to leftovers.  Items keep
    their order: while gets that were cancelled are still on the server
    (they wait there first, so they take the next items), a get asks
    nothing and waits for their replies instead, ready to take what they
    bring."""
    link, ident = view._link_now(), view._ident
    leftovers = link.leftovers
    keep = outer._unclaimed = leftovers.keeper(view._proxy)
    if leftovers.offer(ident, outer) or await _after_cancelled_gets(leftovers, ident, outer):
        return
    try:
        item = await _get(view, link, ident, quick_route(link, outer.owner), "get_nowait", (),
                          keep)
    except queue.Empty:
        if not block:
            raise
    else:
        if not outer.give(item):
            keep(item)
        return
    loop = link.loop
    deadline = _deadline(loop, timeout)
    leftovers.waiting(ident, outer)
    try:
        async with lane_for(link, outer.owner) as lane:
            while not leftovers.offer(ident, outer):
                args = (True, timeout) if timeout is not None and timeout <= SLICE else (
                    True, _slice(loop, deadline))
                try:
                    item = await _get(view, link, ident, lane, "get", args, keep, spin=False)
                except queue.Empty:
                    if deadline is None or loop.time() < deadline:
                        continue
                    raise
                if not outer.give(item):
                    keep(item)
                return
    finally:
        leftovers.done_waiting(ident, outer)


async def _after_cancelled_gets(leftovers, ident, outer):
    """Wait, as a waiting get, for the replies of cancelled gets still on
    the server; True if one of them left outer its item."""
    while True:
        earlier = leftovers.in_flight(ident)
        if not earlier:
            return False
        leftovers.waiting(ident, outer)
        try:
            await asyncio.wait(earlier)  # a hand-off to outer cancels this wait
        finally:
            leftovers.done_waiting(ident, outer)
        if leftovers.offer(ident, outer):
            return True


async def _get(view, link, ident, route, method, args, keep, spin=True):
    """One get request's item.  Cancelled before its reply, it leaves the
    request to leftovers (in_flight) until the reply comes."""
    plain = link.call(route, ident, method, args, view=view, late=keep, spin=spin)
    try:
        return await plain
    except asyncio.CancelledError:
        link.leftovers.orphaned(ident, plain)
        raise


async def queue_put(view, outer, item, block=True, timeout=None):
    """Queue.put: put_nowait on the shared lane, then (if the queue is
    full and it may wait) put in slices on a lane of its own."""
    link, ident = view._link_now(), view._ident
    try:
        await relay(outer, link.call(quick_route(link, outer.owner), ident, "put_nowait",
                                     (item,), view=view))
        return
    except queue.Full:
        if not block:
            raise
    loop = link.loop
    deadline = _deadline(loop, timeout)
    async with lane_for(link, outer.owner) as lane:
        while True:
            args = (item, True, timeout) if timeout is not None and timeout <= SLICE else (
                item, True, _slice(loop, deadline))
            try:
                await relay(outer, link.call(lane, ident, "put", args, view=view, spin=False))
                return
            except queue.Full:
                if deadline is None or loop.time() < deadline:
                    continue
                raise


def _forever(timeout):
    """A lock's timeout that means no limit (None, or -1 as threading has it)."""
    return timeout is None or timeout == -1


async def acquire(view, outer, blocking=True, timeout=None):
    """acquire() of a lock, semaphore or condition: on the lane of the
    locks the calling task holds, else one from the pool, which the task
    then keeps until it releases (see link.py).  An acquire that succeeds
    for nobody is released at once, on its lane."""
    link, ident, owner = view._link_now(), view._ident, outer.owner
    lane = link.pinned(owner)
    own = lane is None
    if own:
        lane = await link.checkout()
    release = (ident, "release", (), None)

    def undo(got):
        if got and not lane.closed:
            lane.send(Discard(release))

    try:
        loop = link.loop
        if not blocking:
            args = (False,) if _forever(timeout) else (False, timeout)
            got = await link.call(lane, ident, "acquire", args, view=view, late=undo)
        elif not _forever(timeout) and timeout <= SLICE:
            got = await link.call(lane, ident, "acquire", (True, timeout), view=view,
                                  late=undo)
        else:
            deadline = None if _forever(timeout) else loop.time() + timeout
            while True:
                got = await link.call(lane, ident, "acquire", (True, _slice(loop, deadline)),
                                      view=view, late=undo, spin=False)
                if got or (deadline is not None and loop.time() >= deadline):
                    break
        if got:
            def unclaimed(got):  # the lock came, its caller did not take it
                undo(got)  # first: the lane goes back to the pool only once idle
                link.unpin(owner, lane)
            outer._unclaimed = unclaimed
            link.pin(owner, lane)
            if not outer.give(got):
                outer._unclaimed = None
                unclaimed(got)
        else:
            outer.give(got)
    finally:
        if own and not lane.held:
            link.checkin(lane)


async def wait_sliced(view, outer, timeout=None):
    """Event.wait or Condition.wait: wait(SLICE) until it returns true or
    timeout runs out (a condition's wait needs the lock, so it goes on the
    lane of the locks the calling task holds)."""
    link, ident = view._link_now(), view._ident
    loop = link.loop
    deadline = _deadline(loop, timeout)
    async with lane_for(link, outer.owner) as lane:
        while True:
            waited = timeout if timeout is not None and timeout <= SLICE else _slice(
                loop, deadline)
            plain = link.call(lane, ident, "wait", (waited,), view=view, spin=False)
            value = await plain
            if value or (deadline is not None and loop.time() >= deadline):
                outer.give(value)
                return
