"""What an async view's method returns: a call that starts when awaited.

A ``Call`` is an ``asyncio.Future`` that also speaks the coroutine protocol
(``send``, ``throw``, ``close``), so it goes wherever a coroutine goes
(``await``, ``asyncio.create_task``, ``TaskGroup``, ``gather``, ``wait_for``,
``shield``) and nothing happens until one of them first looks at it, as
with a coroutine.  Being a future is what makes it cheap: ``gather`` and
``wait_for`` take a future as it is, where they would wrap a coroutine in
a task of its own, and a reply that comes while the caller spins for it
completes the call without a trip through the event loop.

``PlainCall`` is one request on a lane (``lane.py``).  ``OpCall`` runs a
coroutine of several requests (a sliced blocking wait, a queue get that
looks in the stash first) in a task of its own; the coroutine resolves the
call itself, so a result can never fall between its task and its call.

A call that ends before its reply (cancelled, or out of time) leaves the
reply to its ``late`` handler, if it has one (``leftovers.py``).
"""
import asyncio
import collections.abc
import contextvars

from .. import _protocol as P
from ..proxies import BaseProxy, reply_error

__all__ = ["FREE", "QUICK", "Call", "PlainCall", "plain_call", "run_callbacks", "GuardedCall", "OpCall", "exception_for"]

#: routes of a PlainCall besides a lane of its own: the shared lane, and
#: the shared lane unless the calling task holds a lock (then its lane)
FREE = "free"
QUICK = "quick"

RESP_RETURN = P.RESP_RETURN
RESP_PROXY = P.RESP_PROXY
_future_new = asyncio.Future.__new__
_future_init = asyncio.Future.__init__
_blocking = asyncio.Future.__dict__["_asyncio_future_blocking"]
_blocking_get = _blocking.__get__
_add_done_callback = asyncio.Future.add_done_callback
_future_result = asyncio.Future.result
_future_exception = asyncio.Future.exception
_future_del = asyncio.Future.__del__
_future_done = asyncio.Future.done
_future_set_result = asyncio.Future.set_result
_future_set_exception = asyncio.Future.set_exception
_future_cancel = asyncio.Future.cancel
_copy_context = contextvars.copy_context


def exception_for(kind, value):
    """The exception a failed reply stands for, fit for a future: asyncio
    cannot carry StopIteration, so it arrives as StopAsyncIteration."""
    exc = reply_error(kind, value)
    if isinstance(exc, StopIteration):
        stop = StopAsyncIteration(*exc.args)
        stop.__cause__ = exc.__cause__
        return stop
    return exc


class Call(asyncio.Future):
    """A future that starts its work the first time it is awaited, driven
    as a coroutine, or given a done-callback (see the module docstring)."""

    # _begun: whether the work has started
    # _it: what drives the call when a task runs it as a coroutine
    # _limit: seconds the call may take once started (None: no limit)
    # _timer: the handle that ends the call when its time is up, or None
    # _unclaimed: unclaimed(value) for a result that nobody took (see _wait)
    # _awaited: whether a task awaits it (through _wait)
    __slots__ = ("_begun", "_it", "_limit", "_timer", "_unclaimed", "_awaited")

    def __init__(self, loop, limit=None):
        _future_init(self, loop=loop)
        self._begun = False
        self._it = None
        self._limit = limit
        self._timer = None
        self._unclaimed = None
        self._awaited = False

    def _begin(self):
        """Start the work (called once)."""

    def _started(self):
        """Begin, once; an exception raised while starting (an argument
        that does not encode, say) becomes the call's outcome."""
        if self._begun:
            return
        self._begun = True
        try:
            self._begin()
        except BaseException as exc:  # delivered to whoever awaits
            if not self.done():
                if isinstance(exc, StopIteration):
                    exc = StopAsyncIteration(*exc.args)
                self.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        limit = self._limit
        if limit is not None and not self.done():
            self._timer = self.get_loop().call_later(limit, self._time_up, limit)

    def __await__(self):
        self._started()
        return self._wait()

    __iter__ = __await__

    def _wait(self):
        """Future.__await__, except for one case.  A task cancelled in the
        very turn its call got a result (the result came; the task's wake-up
        was due, and the cancellation came first) is thrown CancelledError
        here, and would drop the result; the call's unclaimed handler takes
        it instead (an item a get took goes back to the queue's leftovers)."""
        if not self.done():
            self._asyncio_future_blocking = True
            self._awaited = True
            try:
                yield self
            except BaseException:
                unclaimed = self._unclaimed
                if unclaimed is not None and self.done() and not self.cancelled() and (
                        _future_exception(self) is None):
                    self._unclaimed = None
                    unclaimed(_future_result(self))
                raise
            if not self.done():
                raise RuntimeError("await wasn't used with future")
        self._unclaimed = None  # claimed
        return _future_result(self)

    def result(self):
        # a task that awaits the call looks at result() when it wakes, then
        # may be thrown CancelledError instead of taking it: only _wait
        # knows whether its result was taken
        if not self._awaited:
            self._unclaimed = None  # claimed
        return _future_result(self)

    def add_done_callback(self, fn, *, context=None):
        self._started()
        _add_done_callback(self, fn, context=context)

    # asyncio tells a future from other objects by this attribute
    # (asyncio.isfuture): ensure_future(call), gather(call), wait(...) look
    # at it first, and start the call as they would schedule a coroutine
    @property
    def _asyncio_future_blocking(self):
        self._started()
        return _blocking.__get__(self)

    @_asyncio_future_blocking.setter
    def _asyncio_future_blocking(self, value):
        _blocking.__set__(self, value)

    # -- the coroutine protocol (asyncio.create_task drives it) --------------

    def _iterator(self):
        it = self._it
        if it is None:
            it = self._it = self.__await__()
        return it

    def send(self, value):
        return self._iterator().send(value)

    def throw(self, typ, val=None, tb=None):
        if val is None and tb is None:
            return self._iterator().throw(typ)
        return self._iterator().throw(typ, val, tb)

    def close(self):
        if self._it is not None:
            self._it.close()

    # -- ending early ----------------------------------------------------------

    def _time_up(self, seconds):
        self._timer = None
        if not self.done():
            self.set_exception(TimeoutError("no reply within %r seconds" % seconds))
            self._ended_early()

    def _ended_early(self):
        """The call ended before its work did (subclasses clean up)."""

    def cancel(self, msg=None):
        if not super().cancel(msg):
            return False
        self._settled()
        self._ended_early()
        return True

    def _settled(self):
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()


collections.abc.Coroutine.register(Call)


class PlainCall(Call):
    """One request: ``link.dispatch(call)`` sends it on the lane that
    ``route`` names (``link.py``)."""

    # link: the Link that sends it
    # route: which lane carries it (link.FREE, link.QUICK, or a Lane)
    # request: (ident, method, args, kwds) until a lane sends it (then None)
    # view: the async view it was made by: it keeps the proxy (so its
    #       reference) alive until the reply comes, and turns proxies in
    #       the result into views
    # late: late(value) for a result that comes after the call ended
    # after: after(value) for every result, early or late (a lock's bookkeeping)
    # spin: whether the caller may spin for the reply (calls that may wait
    #       on the server do not)
    # _fn, _ctx: its first done-callback and that callback's context, or None
    # _more: [(fn, context)] of the callbacks after the first, or None
    __slots__ = ("link", "route", "request", "view", "late", "after", "spin",
                 "_fn", "_ctx", "_more")
    oneway = False

    def __init__(self, loop, link, route, request, view=None, late=None, after=None,
                 spin=True, limit=None):
        # Call.__init__ inlined: this runs for every call
        _future_init(self, loop=loop)
        self._begun = False
        self._it = None
        self._limit = limit
        self._timer = None
        self._unclaimed = late
        self._awaited = False
        self.link = link
        self.route = route
        self.request = request
        self.view = view
        self.late = late
        self.after = after
        self.spin = spin
        self._fn = self._ctx = self._more = None

    # no unclaimed handler (that is GuardedCall's): Future's own result()
    result = _future_result

    @property
    def _asyncio_future_blocking(self):
        if not self._begun:
            # _started inlined, for the calls a gather (ensure_future, ...)
            # starts: their caller starts others before it waits, so they
            # do not spin (the requests of the turn leave together)
            self._begun = True
            self.spin = False
            try:
                link = self.link
                lane = link.shared
                if self.route is FREE and lane is not None and not link.peer.dead:
                    lane.send(self)
                else:
                    link.dispatch(self)
            except BaseException as exc:  # delivered to whoever awaits
                if not _future_done(self):
                    self.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            if self._limit is not None and not _future_done(self):
                self._timer = self.get_loop().call_later(self._limit, self._time_up,
                                                         self._limit)
        return _blocking_get(self)

    @_asyncio_future_blocking.setter
    def _asyncio_future_blocking(self, value):
        _blocking.__set__(self, value)

    # -- done-callbacks --------------------------------------------------------
    #
    # A PlainCall keeps its own done-callbacks: a lane that resolves many
    # calls at once schedules all their callbacks in one handle of the
    # loop (run_callbacks), where a Future schedules one handle per
    # callback, which costs more than the rest of the call.  As with a
    # Future, callbacks are taken when the call is done and run soon after,
    # each in its own context, never inside set_result() itself.

    def add_done_callback(self, fn, *, context=None):
        if not self._begun:
            self._started()
        if context is None:
            context = _copy_context()
        if _future_done(self):
            self.get_loop().call_soon(fn, self, context=context)
        elif self._fn is None:
            self._fn = fn
            self._ctx = context
        elif self._more is None:
            self._more = [(fn, context)]
        else:
            self._more.append((fn, context))

    def remove_done_callback(self, fn):
        if self._fn is None or _future_done(self):
            return 0
        kept = [(self._fn, self._ctx)] + (self._more or [])
        left = [(f, ctx) for f, ctx in kept if f != fn]
        self._fn = self._ctx = self._more = None
        if left:
            (self._fn, self._ctx), more = left[0], left[1:]
            self._more = more or None
        return len(kept) - len(left)

    def _callbacks_due(self):
        """The call is done: its callbacks run soon."""
        if self._fn is not None:
            self.get_loop().call_soon(run_callbacks, [self])

    def set_result(self, result):
        _future_set_result(self, result)
        self._callbacks_due()

    def set_exception(self, exception):
        _future_set_exception(self, exception)
        self._callbacks_due()

    def cancel(self, msg=None):
        if not _future_cancel(self, msg):
            return False
        self._callbacks_due()
        self._settled()
        self._ended_early()
        return True

    def _started(self):
        # Call._started with _begin, and Link.dispatch for the shared
        # lane, inlined: this runs for every call
        if self._begun:
            return
        self._begun = True
        try:
            link = self.link
            lane = link.shared
            if self.route is FREE and lane is not None and not link.peer.dead:
                lane.send(self)
            else:
                link.dispatch(self)
        except BaseException as exc:  # delivered to whoever awaits
            if not self.done():
                self.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        if self._limit is not None and not self.done():
            self._timer = self.get_loop().call_later(self._limit, self._time_up, self._limit)

    def _ended_early(self):
        self.link.ended_early(self)

    def resolve(self, kind, value):
        """The reply came (a lane calls this, in request order).  The call
        lets go of what it holds: a done future can outlive the step that
        awaited it (the loop holds the handle that woke the task), and must
        not keep the view and its proxy alive meanwhile."""
        after, late, view = self.after, self.late, self.view
        self.after = self.late = self.view = None
        if kind == RESP_RETURN:
            if after is not None:
                after(value)
            if self.done():
                if late is not None:
                    late(value)
                return
            if self._timer is not None:
                self._settled()
            if view is not None and isinstance(value, BaseProxy):
                value = view._convert(kind, value)
            self.set_result(value)
            return
        if self.done():
            return
        self._settled()
        if kind == RESP_PROXY and view is not None:
            try:
                self.set_result(view._convert(kind, value))
            except Exception as exc:
                self.set_exception(exc)
        else:
            self.set_exception(exception_for(kind, value))

    def fail(self, exc):
        """The reply will never come (the connection broke), or it came
        but could not be decoded."""
        self.after = self.late = self.view = None
        if not self.done():
            self._settled()
            self.set_exception(exc)


def plain_call(link, route, request, view, limit):
    """PlainCall(running loop, link, route, request, view, limit=limit),
    made without the cost of a Python __init__ (a view's every call is one).
    Called where a loop runs."""
    call = _future_new(PlainCall)
    _future_init(call)  # of the running loop (and no keyword to parse)
    call._begun = call._awaited = False
    call._it = call._timer = call._unclaimed = None
    call._limit = limit
    call.link = link
    call.route = route
    call.request = request
    call.view = view
    call.late = call.after = None
    call.spin = True
    call._fn = call._ctx = call._more = None
    return call


def run_callbacks(calls):
    """Run the done-callbacks of calls, which are done (one handle of the
    loop for them all; see PlainCall).  A callback that raises is reported
    to the loop's exception handler, as the loop does with a handle."""
    for i, call in enumerate(calls):
        fn, context, more = call._fn, call._ctx, call._more
        call._fn = call._ctx = call._more = None
        while fn is not None:
            try:
                context.run(fn, call)
            except (SystemExit, KeyboardInterrupt):
                # what is left still runs, in a later turn
                rest = [call] if more else []
                if more:
                    call._fn, call._ctx = more[0]
                    call._more = more[1:] or None
                rest.extend(calls[i + 1:])
                if rest:
                    call.get_loop().call_soon(run_callbacks, rest)
                raise
            except BaseException as exc:
                call.get_loop().call_exception_handler({
                    "message": "Exception in callback %r" % (fn,),
                    "exception": exc,
                    "future": call,
                })
            if more:
                (fn, context), more = more[0], more[1:]
            else:
                fn = None


class Guarded:
    """A call whose result must not be dropped unseen (an item a get took,
    a lock an acquire took): if nobody takes it, its unclaimed handler does,
    even when the call itself is dropped."""

    __slots__ = ()

    def __del__(self):
        # a result nobody ever took (a call dropped unawaited once done)
        unclaimed = self._unclaimed
        if unclaimed is not None and self.done() and not self.cancelled() and (
                _future_exception(self) is None):
            self._unclaimed = None
            try:
                unclaimed(_future_result(self))
            except Exception:
                pass
        _future_del(self)


class GuardedCall(Guarded, PlainCall):
    """A PlainCall with a late handler, which also takes a result nobody
    took, and says when its reply came (``replied``, ``on_reply``)."""

    result = Call.result

    # replied: whether the reply (or the failure) came
    # on_reply: on_reply() once it came, after the late handler (or None)
    __slots__ = ("replied", "on_reply")

    def __init__(self, *args):
        PlainCall.__init__(self, *args)
        self.replied = False
        self.on_reply = None

    def resolve(self, kind, value):
        self.replied = True
        try:
            PlainCall.resolve(self, kind, value)
        finally:
            self._replied()

    def fail(self, exc):
        self.replied = True
        try:
            PlainCall.fail(self, exc)
        finally:
            self._replied()

    def _replied(self):
        on_reply, self.on_reply = self.on_reply, None
        if on_reply is not None:
            on_reply()

    @property
    def sent(self):
        """Whether a lane sent it (its reply will come)."""
        return self.request is None


class OpCall(Guarded, Call):
    """Several requests, run by ``op(call)``, a coroutine that resolves
    the call itself and runs in a task of its own."""

    # op: the coroutine function, None once started
    # task: the task running it
    # owner: the task that started the call (locks it takes are that task's)
    __slots__ = ("op", "task", "owner")

    def __init__(self, loop, op, limit=None):
        super().__init__(loop, limit)
        self.op = op
        self.task = None
        self.owner = None

    def _begin(self):
        op = self.op
        if op is not None:
            self.op = None
            loop = self.get_loop()
            self.owner = asyncio.current_task(loop)
            self.task = loop.create_task(self._run(op))

    async def _run(self, op):
        try:
            await op(self)
        except asyncio.CancelledError:
            if not self.done():
                self.cancel()
            raise
        except GeneratorExit:  # the loop is gone, and its tasks with it
            raise
        except BaseException as exc:
            if not self.done():
                self._settled()
                self.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def give(self, value):
        """The op's result, unless the call has ended: then False (the op
        deals with what it holds)."""
        if self.done():
            return False
        self._settled()
        self.set_result(value)
        return True

    def _ended_early(self):
        self._settled()
        task = self.task
        if task is not None and not task.done():
            task.cancel()


class Discard:
    """A slot for a request whose reply nobody awaits (the release that
    undoes an acquire which succeeded after its caller gave up)."""

    __slots__ = ("request",)
    spin = False
    oneway = False

    def __init__(self, request):
        self.request = request

    def done(self):
        return False

    def resolve(self, kind, value):
        pass

    def fail(self, exc):
        pass


class OnewayRequest:
    """A REQ_ONEWAY request on its way to a lane: it takes no slot, since
    no reply comes."""

    __slots__ = ("request", "route")
    oneway = True

    def __init__(self, request, route):
        self.request = request
        self.route = route

    def done(self):
        return False

    def fail(self, exc):
        pass
