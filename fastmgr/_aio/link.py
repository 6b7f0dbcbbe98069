"""A link: one event loop's connections (lanes) to one manager.

Which lane carries a call:

- calls on objects the server serves from its loop (dicts, lists,
  Namespaces, your own classes: everything not *thread-bound*, see
  ``server.THREAD_BOUND``) share one lane, pipelined: many calls in
  flight, replies matched in order;
- calls on thread-bound objects (locks, queues, events, conditions,
  barriers, pools) that cannot block (``Queue.qsize``, ``Event.set``,
  ``Lock.release``, ...) share that lane too;
- a call that may block (``Queue.get``, ``Lock.acquire``, ``Event.wait``,
  ...) takes a lane of its own from a small pool for as long as it waits,
  since the server answers a connection's requests one after another and a
  waiting call would hold up every call behind it;
- a task that holds a lock it took through a view keeps that lane (the
  server thread that holds the lock is that lane's, as a thread's is in
  the stdlib) until it releases it: its calls on thread-bound objects go
  there meanwhile.

A link lives as long as its loop: ``asyncio.run()`` (and ``uvloop.run()``)
close it before the loop closes, through the loop's async-generator
shutdown; what it does then is in ``leftovers.py``.
"""
import asyncio
import os
import time
from multiprocessing import util

from .._backend import wire
from ..errors import ManagerGone, RemoteError
from .call import FREE, QUICK, GuardedCall, OnewayRequest, PlainCall
from .connect import open_lane
from .lane import copy_failure
from .leftovers import Leftovers

__all__ = ["Link", "link_for", "FREE", "QUICK"]


#: pool lanes kept open while nobody uses them
IDLE_MAX = 8
#: the longest spin for a reply (microseconds), whatever the manager's spin_us:
#: the loop is held meanwhile
SPIN_MAX_US = 50
#: spinning replies keep the loop for at most this long before it gets a turn
STREAK_MAX = 0.001

_perf = time.perf_counter
_current_task = asyncio.current_task

_links = {}  # loop -> {peer: Link}


def link_for(peer, loop):
    """The link of loop (running, in this thread) to peer's manager."""
    by_peer = _links.get(loop)
    if by_peer is None:
        _forget_closed_loops()
        _watch_exit()
        by_peer = _links[loop] = {}
    link = by_peer.get(peer)
    if link is None or link.closed:
        link = by_peer[peer] = Link(peer, loop)
    return link


def _forget_closed_loops():
    """Links of loops closed without shutting their async generators down
    (a loop run by hand): close their sockets and put their leftovers back,
    synchronously, now that nothing else uses them."""
    for loop in [loop for loop in _links if loop.is_closed()]:
        for link in _links.pop(loop).values():
            link.abandon()


_exit_watched = None  # the pid that registered _at_exit (a child's registry starts empty)


def _watch_exit():
    global _exit_watched
    if _exit_watched != os.getpid():
        _exit_watched = os.getpid()
        # before the process gives back its references (proxies.py, priority 10)
        util.Finalize(None, _at_exit, exitpriority=11)


def _at_exit():
    """At exit: links of loops that were closed without their shutdown
    put back the items cancelled gets left (see leftovers.py)."""
    _forget_closed_loops()


def forget_all_links():
    """In a forked child: the parent's loops and lanes are not ours."""
    _links.clear()


class Link:
    """See the module docstring."""

    def __init__(self, peer, loop):
        self.peer = peer
        self.loop = loop
        self.address = peer.address
        self.codec = peer.codec
        self.closed = False
        self.shared = None       # the pipelined lane, once open
        self.opening = None      # the task opening it
        self.waiting = []        # calls that wait for it to open
        self.idle = []           # pool lanes nobody uses
        self.lanes = set()       # every open lane
        self.pins = {}           # task -> the lane whose server thread holds its locks
        self.bound = {}          # ident -> True if the server gives its calls a thread
                                 # (or the task asking it)
        self.leftovers = Leftovers(self)
        spin_us = peer.spin_us if peer.spin_us is not None else wire.get_spin()
        self.spin_us = min(spin_us, SPIN_MAX_US)  # the lanes' spin budget
        self._turn_due = False   # a callback waits for the loop's next turn
        self._streak_from = 0.0  # when the loop last had a turn, as far as spins know
        self._shutdown = _watch_shutdown(self)

    def __repr__(self):
        return "<Link to %r, %d lanes%s>" % (self.address, len(self.lanes),
                                            ", closed" if self.closed else "")

    # -- sending ---------------------------------------------------------------

    def call(self, route, ident, method, args=(), kwds=None, view=None, late=None,
             after=None, spin=True, limit=None):
        """A PlainCall of method on ident, not started (view: see PlainCall)."""
        kind = PlainCall if late is None else GuardedCall
        return kind(self.loop, self, route, (ident, method, args, kwds or None), view, late,
                    after, spin, limit)

    def dispatch(self, call):
        """Send a PlainCall (or a OnewayRequest) on the lane its route names
        (PlainCall._started)."""
        route = call.route
        if route is FREE:
            lane = self.shared
        elif route is QUICK:
            lane = self.pins.get(_current_task(self.loop)) if self.pins else None
            if lane is None:
                lane = self.shared
        else:
            lane = route
        if lane is None:
            if self.closed:
                call.fail(ManagerGone("the link to the manager at %r is closed" % (self.address,)))
                return
            self.waiting.append(call)
            if self.opening is None:
                self.opening = self.loop.create_task(self._open_shared())
            return
        if self.peer.dead:
            self._send_decrefs(lane)
        if call.oneway:
            lane.send_oneway(call.request)
        else:
            lane.send(call)

    def ended_early(self, call):
        """call was cancelled or ran out of time.  If it was sent on the
        shared lane and is still unanswered, the server may be busy with
        it for long: later calls take a new shared lane (this one closes
        once its replies, late ones included, are in), as a sync call that
        times out leaves its connection."""
        lane = self.shared
        if lane is not None and call in lane.slots:
            self.shared = None
            lane.on_idle = self.drop

    def send_oneway(self, ident, method, args=(), kwds=None):
        """A request that gets no reply, on the shared lane (REQ_ONEWAY)."""
        self.dispatch(OnewayRequest((ident, method, args, kwds or None), FREE))

    async def _open_shared(self):
        try:
            lane = await open_lane(self)
        except BaseException as exc:
            self.opening = None
            waiting, self.waiting = self.waiting, []
            for call in waiting:
                call.fail(copy_failure(exc))
            if not isinstance(exc, Exception):
                raise
            return
        self.opening = None
        self.lanes.add(lane)
        self.shared = lane
        waiting, self.waiting = self.waiting, []
        for call in waiting:
            if not call.done():  # a call cancelled before it left did nothing
                self.dispatch(call)

    def _send_decrefs(self, lane):
        """Proxies that died since the last call: their references go first."""
        idents = self.peer._settle()
        if idents:
            lane.send_oneway((0, "decref_many", (idents,), None))

    def send_increfs(self, lane, increfs):
        """References taken by proxies unpickled from a reply on lane."""
        for peer, ident in increfs:
            if peer is self.peer:
                lane.send_oneway((0, "incref", (ident,), None))
            else:  # a proxy of another manager: its server must hear it now
                peer.control("incref", ident)

    async def control(self, method, args=(), kwds=None):
        """One of the manager's own requests (create, incref, ...): errors
        as the sync side raises them, RemoteError with the server's traceback."""
        call = self.call(FREE, 0, method, args, kwds, limit=self.peer.timeout)
        try:
            return await call
        except Exception as exc:
            tb = getattr(exc.__cause__, "tb", None)  # a RemoteTraceback: the server raised it
            if tb is None or isinstance(exc, RemoteError):
                raise
            raise RemoteError(tb) from None

    async def thread_bound(self, ident):
        """Whether the server gives calls on ident a thread of their own
        (asked once per link and object, however many calls want to know)."""
        bound = self.bound.get(ident)
        if bound is None:
            bound = self.bound[ident] = self.loop.create_task(self._ask_thread_bound(ident))
        if isinstance(bound, bool):
            return bound
        return await asyncio.shield(bound)

    async def _ask_thread_bound(self, ident):
        try:
            bound = bool(await self.control("thread_bound", (ident,)))
        except RemoteError:
            bound = True  # a server that cannot say: the careful choice
        except BaseException:
            del self.bound[ident]  # ask again next time
            raise
        self.bound[ident] = bound
        return bound

    # -- lanes of their own ------------------------------------------------------

    async def checkout(self):
        """A lane for one caller alone (a call that may block)."""
        while self.idle:
            lane = self.idle.pop()
            if not lane.closed:
                return lane
        if self.closed:
            raise ManagerGone("the link to the manager at %r is closed" % (self.address,))
        lane = await open_lane(self)
        if self.closed:
            lane.close()
            raise ManagerGone("the link to the manager at %r is closed" % (self.address,))
        self.lanes.add(lane)
        if self.peer.dead:
            self._send_decrefs(lane)
        return lane

    def checkin(self, lane):
        """A caller is done with lane: back to the pool once its replies,
        late ones included, are in."""
        if lane.closed or lane.held or lane in self.idle:
            return
        if lane.slots:
            lane.on_idle = self.checkin
            return
        lane.on_idle = None
        if len(self.idle) < IDLE_MAX and not self.closed:
            self.idle.append(lane)
        else:
            self.drop(lane)

    def pinned(self, owner):
        """The lane that holds owner's locks, or None."""
        return self.pins.get(owner) if self.pins else None

    def pin(self, owner, lane):
        """owner (a task) took a lock through lane."""
        lane.held += 1
        if self.pins.get(owner) is not lane:
            if owner is not None and owner not in self.pins:
                owner.add_done_callback(self._owner_done)
            self.pins[owner] = lane

    def unpin(self, owner, lane):
        """owner released a lock it took through lane."""
        if lane.held:
            lane.held -= 1
        if not lane.held:
            if self.pins.get(owner) is lane:
                del self.pins[owner]
            self.checkin(lane)

    def _owner_done(self, task):
        """A task ended holding locks: as with a thread that ends holding
        them, they stay held; its lane closes (a Lock can still be released
        through any other lane; an RLock's owner is gone)."""
        lane = self.pins.pop(task, None)
        if lane is not None:
            lane.held = 0
            if lane.slots:  # its late replies still have work to do
                lane.on_idle = self.drop
            else:
                self.drop(lane)

    def drop(self, lane):
        self.lanes.discard(lane)
        lane.close()

    def lost(self, lane):
        """lane broke (Lane.broken): forget it everywhere."""
        self.lanes.discard(lane)
        if self.shared is lane:
            self.shared = None
        if lane in self.idle:
            self.idle.remove(lane)
        for owner in [owner for owner, held in self.pins.items() if held is lane]:
            del self.pins[owner]

    # -- spinning ----------------------------------------------------------------

    def may_spin(self):
        """Whether a call may spin for its reply now: not once replies
        caught by spinning have kept the loop from its other work for
        STREAK_MAX seconds.  (How long a spin lasts, and whether spinning
        pays, the wire's spin policy decides, lane by lane.)"""
        if not self._turn_due:
            self._turn_due = True
            self._streak_from = _perf()
            self.loop.call_soon(self._turn)
            return True
        return _perf() - self._streak_from < STREAK_MAX

    def _turn(self):
        self._turn_due = False

    # -- the end -----------------------------------------------------------------

    async def aclose(self):
        """The loop is shutting down (see leftovers.py)."""
        if self.closed:
            return
        await self.leftovers.settle()
        self._close()

    def abandon(self):
        """The loop closed without telling us: no replies can be awaited."""
        if not self.closed:
            self.leftovers.abandon()
            self._close()

    def _close(self):
        self.closed = True
        self.leftovers.leave_anchor()
        for lane in list(self.lanes):
            lane.close()
        self.lanes.clear()
        self.idle.clear()
        self.pins.clear()
        self.shared = None
        by_peer = _links.get(self.loop)
        if by_peer is not None and by_peer.get(self.peer) is self:
            del by_peer[self.peer]
            if not by_peer:
                del _links[self.loop]


async def _until_shutdown(link):
    """Suspended for the loop's life; the loop's shutdown of its async
    generators (asyncio.run does it) resumes it, while the loop still runs."""
    try:
        yield
    finally:
        await link.aclose()


def _watch_shutdown(link):
    """Register link with the running loop's shutdown: the async generator
    above, started, is one the loop will close."""
    watcher = _until_shutdown(link)
    try:
        watcher.asend(None).send(None)
    except StopIteration:
        pass
    return watcher  # the loop only keeps a weak reference to it
