"""Taking in new connections when resources run short or peers misbehave.

The accept loop must outlive any shortage.  At the file-descriptor limit
``accept()`` fails at once, again and again; with no thread to be had a new
connection cannot be authenticated.  ``Shortage`` makes the loop wait then
(a little longer each time in a row, or until a connection closes and gives
its descriptor and thread back) and logs the first failure and the
recovery, not every retry.

Anyone who can reach the address can fail to authenticate as often as it
likes; ``LogQuota`` keeps the warnings about it from filling the log.

A peer that connects and never finishes the handshake holds a descriptor
and a thread until the handshake timeout.  ``Handshakes`` keeps at most
``MAX_PENDING`` of them: past that the oldest is cut off, so that such peers
cannot keep legitimate clients out (a legitimate handshake takes about a
millisecond; a flood would need ``MAX_PENDING`` new connections within it).
"""
import collections
import errno
import itertools
import logging
import socket
import threading
import time

__all__ = ["Shortage", "Handshakes", "LogQuota", "MAX_PENDING", "peer_error"]

log = logging.getLogger("fastmgr.server")

#: connections being authenticated at once; past this the oldest is cut off
MAX_PENDING = 128

#: the first and the longest wait after a failure for lack of resources (s)
BACKOFF_MIN = 0.005
BACKOFF_MAX = 0.5

#: accept() errors that concern one peer only (it left before we took it in)
_PEER_ERRORS = frozenset(
    getattr(errno, name) for name in ("ECONNABORTED", "EPROTO", "EPERM", "ENOPROTOOPT",
                                      "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "ENETUNREACH",
                                      "ENETDOWN", "EOPNOTSUPP")
    if hasattr(errno, name))


def peer_error(exc):
    """Whether an accept() error concerns only the peer being accepted."""
    return exc.errno in _PEER_ERRORS


class Shortage:
    """Waits after failures for lack of resources (descriptors, threads,
    memory).  It warns at the first failure and says when a try works
    again; a shortage that comes and goes is not warned about again
    within WARN_EVERY seconds."""

    WARN_EVERY = 60.0

    def __init__(self):
        self._freed = threading.Event()
        self._delay = 0.0
        self._warned = False            # a warning was logged and no recovery since
        self._warned_at = None          # time.monotonic() of the last warning
        self._failures = 0              # failures since the last warning

    def freed(self):
        """A connection closed: its descriptor and thread are free again."""
        self._freed.set()

    def wait(self, what, exc):
        """`what` failed for lack of resources: wait before trying again."""
        now = time.monotonic()
        self._failures += 1
        if self._warned_at is None or (not self._warned
                                       and now - self._warned_at >= self.WARN_EVERY):
            log.warning("cannot %s: %s; waiting for resources (until a connection closes, "
                        "at most %.1f s between tries; %d failed tries since the last such "
                        "warning)", what, exc, BACKOFF_MAX, self._failures)
            self._warned, self._warned_at, self._failures = True, now, 0
        self._delay = min(BACKOFF_MAX, max(BACKOFF_MIN, self._delay * 2))
        self._freed.clear()
        self._freed.wait(self._delay)

    def recovered(self):
        """The last try worked."""
        self._delay = 0.0
        if self._warned:
            self._warned = False
            log.warning("serving new connections again")


class Handshakes:
    """The connections being authenticated, oldest first.  Each entry holds
    a duplicate of its socket's descriptor, closed only here, so that the
    oldest can be shut down from the accept loop whatever its own thread
    is doing (a shutdown wakes a thread blocked reading it)."""

    def __init__(self, limit=MAX_PENDING):
        self._limit = limit
        self._lock = threading.Lock()
        self._pending = collections.OrderedDict()   # key -> duplicate socket or None
        self._keys = itertools.count()
        self.cut_off = 0                            # connections shut down for being oldest

    def __len__(self):
        return len(self._pending)

    def begin(self, sock):
        """sock's handshake starts; returns the key to pass to done()."""
        try:
            spare = sock.dup()
        except OSError:
            spare = None    # out of descriptors: this one cannot be cut off
        evicted = []
        with self._lock:
            key = next(self._keys)
            self._pending[key] = spare
            while len(self._pending) > self._limit:
                evicted.append(self._pending.popitem(last=False)[1])
            self.cut_off += len(evicted)
        for old in evicted:
            _cut(old)
        if evicted and not self.cut_off & (self.cut_off - 1):  # 1, 2, 4, 8...: no flood of logs
            log.warning("more than %d connections were being authenticated at once: cut off "
                        "the oldest (%d so far)", self._limit, self.cut_off)
        return key

    def done(self, key):
        """The handshake under key is over (or never started)."""
        with self._lock:
            spare = self._pending.pop(key, None)
        if spare is not None:
            spare.close()


def _cut(spare):
    if spare is None:
        return
    try:
        spare.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    spare.close()


class LogQuota:
    """At most `burst` messages at once, then one a second (a token
    bucket); the count of those left out goes with the next one logged."""

    def __init__(self, burst=10, per_second=1.0):
        self._burst = burst
        self._rate = per_second
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self.left_out = 0

    def take(self):
        """None if this message must be left out, else how many were left
        out since the last one logged."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1:
                self.left_out += 1
                return None
            self._tokens -= 1
            left_out, self.left_out = self.left_out, 0
            return left_out
