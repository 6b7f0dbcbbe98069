"""What calls that ended early leave behind, and where it goes.

A call that is cancelled (or runs out of time) after its request left
cannot be taken back: the server runs it anyway.  The lane keeps its
slot, so its reply is read by it and never by the next call, and a *late*
handler deals with what the reply carries:

- an item taken by a ``Queue.get`` goes to the next ``get`` from this
  loop on the same queue (through any view of it), before that get asks
  the server; a get that is already waiting takes it at once (its own
  request, still on the server, then ends the same way); while such a
  request is still out, a new get asks nothing and waits for its reply,
  ready to take what it brings: the request waits on the server first and
  takes the next item first, so items keep their order.  Put back at the
  front of the queue it cannot be: ``queue.Queue`` has no way to do that,
  and putting it at the back would reorder it;
- a lock, semaphore or condition that an ``acquire`` took is released at
  once, on the connection that took it (an RLock's owner is that
  connection's server thread);
- anything else (a put that went through, an event that was set) is
  dropped: the call happened.

A blocking call on the server waits in slices of ``SLICE`` seconds
(``get(True, SLICE)``, then again), so a call nobody waits for any more
ends within ``SLICE``.  When the loop shuts down (``asyncio.run`` and
``uvloop.run`` shut down its async generators, which tells the link),
``settle`` waits for such calls (at most ``SLICE`` and a little more),
puts the items nobody took back into their queues (at the back: the
loop that could take them is going), leaves an idle connection to the
session as the sync side's anchor (proxies made here then stay alive for
sync use), and closes the lanes.  A loop closed without that shutdown (run
by hand, ``loop.close()`` alone) is noticed when the next link is made:
the items are put back then, and calls still on the server are abandoned
as a sync call interrupted by Ctrl-C is (an item one of them takes later
is lost).
"""
import asyncio
import collections
import logging


__all__ = ["Leftovers", "SLICE"]

log = logging.getLogger("fastmgr.aio")
log.addHandler(logging.NullHandler())

#: seconds a blocking call waits on the server before it is asked again
SLICE = 0.5
#: seconds a shutting-down link waits for calls that ended early
GRACE = SLICE + 0.5
#: seconds a put that gives an item back may wait for room
PUT_BACK_TIMEOUT = 5.0


class Leftovers:
    """One link's items of cancelled gets, and its gets that wait."""

    def __init__(self, link):
        self.link = link
        self.items = {}    # ident -> deque of items whose gets had ended
        self.proxies = {}  # ident -> the queue's proxy (to put items back)
        self.getters = {}  # ident -> deque of the OpCalls of gets waiting on the server
        self.orphans = {}  # ident -> {get request that ended early: future of its reply}

    # -- gets --------------------------------------------------------------------

    def take(self, ident):
        """(True, item) for an item a cancelled get left, else (False, None)."""
        items = self.items.get(ident)
        if not items:
            return False, None
        item = items.popleft()
        if not items:
            del self.items[ident]
            del self.proxies[ident]
        return True, item

    def keep(self, proxy, item):
        """An item a get took for nobody: to a waiting get, else kept."""
        ident = proxy._id
        getters = self.getters.get(ident)
        while getters:
            call = getters.popleft()
            if call.give(item):
                call.task.cancel()  # its own request ends as this one did
                return
        self.items.setdefault(ident, collections.deque()).append(item)
        self.proxies[ident] = proxy

    def offer(self, ident, call):
        """Give call (a get's OpCall) an item a cancelled get left, if any."""
        if call.done() or not self.items.get(ident):
            return False
        call.give(self.take(ident)[1])
        return True

    def orphaned(self, ident, plain):
        """A get request (a GuardedCall) whose caller gave up is still on the
        server: until its reply comes, new gets of the same queue wait for
        it instead of asking (in_flight)."""
        if plain.replied or not plain.sent:
            return
        settled = self.link.loop.create_future()
        orphans = self.orphans.setdefault(ident, {})
        orphans[plain] = settled

        def replied():
            orphans.pop(plain, None)
            if not orphans and self.orphans.get(ident) is orphans:
                del self.orphans[ident]
            if not settled.done():
                settled.set_result(None)
        plain.on_reply = replied

    def in_flight(self, ident):
        """The replies still to come of cancelled gets on ident (futures)."""
        orphans = self.orphans.get(ident)
        return list(orphans.values()) if orphans else None

    def keeper(self, proxy):
        """The late handler of a get on proxy's queue."""
        return lambda item: self.keep(proxy, item)

    def waiting(self, ident, call):
        self.getters.setdefault(ident, collections.deque()).append(call)

    def done_waiting(self, ident, call):
        getters = self.getters.get(ident)
        if getters is not None:
            try:
                getters.remove(call)
            except ValueError:
                pass
            if not getters:
                del self.getters[ident]

    # -- the end of the loop -----------------------------------------------------

    async def settle(self):
        """Wait (bounded) for calls that ended early, then put back what
        nobody took."""
        loop = self.link.loop
        deadline = loop.time() + GRACE
        while loop.time() < deadline and any(lane.slots for lane in self.link.lanes):
            await asyncio.sleep(0.005)
        from .link import FREE
        while self.items:
            ident, items = self.items.popitem()
            proxy = self.proxies.pop(ident)
            for item in items:
                call = self.link.call(FREE, ident, "put", (item, True, PUT_BACK_TIMEOUT),
                                      spin=False)
                try:
                    await call
                except Exception as exc:
                    log.warning("an item of a cancelled get on %r is lost: %s", proxy, exc)

    def abandon(self):
        """The loop is closed: put back what nobody took, synchronously."""
        while self.items:
            ident, items = self.items.popitem()
            proxy = self.proxies.pop(ident)
            for item in items:
                try:
                    proxy.put(item, True, PUT_BACK_TIMEOUT)
                except Exception as exc:
                    log.warning("an item of a cancelled get on %r is lost: %s", proxy, exc)

    def leave_anchor(self):
        """Hand an idle lane's connection to the sync side as its anchor,
        if it has none, so that the session (and every object made here)
        outlives the loop."""
        link, peer = self.link, self.link.peer
        with peer.lock:
            anchor = peer.anchor
            if anchor is not None and not anchor.closed:
                return
            for lane in list(link.lanes):
                if lane.held:
                    continue
                conn = lane.handover()
                if conn is not None:
                    link.lanes.discard(lane)
                    peer.anchor = conn
                    return
