"""Proxies and this process's links to manager servers.

A ``Peer`` is this process's link to one server: one connection per thread
(for calls), one idle *anchor* connection that keeps the process's session
alive on the server, and the count of live proxies per ident.  Proxies never
do I/O when they die: they queue their ident, and the next call on any
thread sends the queued decrefs ahead of itself, without waiting for a reply.
"""
import builtins
import errno
import functools
import os
import sys
import threading
from multiprocessing import process, util
from multiprocessing.context import get_spawning_popen

from . import _protocol as P
from ._backend import wire
from ._stdlib_client import StdlibConnection
from .connection import Client
from .errors import ManagerGone, ProtocolError, RemoteError, RemoteTraceback

__all__ = ["Token", "BaseProxy", "AutoProxy", "MakeProxyType", "RebuildProxy"]

RESP_RETURN = P.RESP_RETURN

#: seconds a new connection may take to connect and authenticate, when
#: neither connect_timeout nor a shorter timeout is given
DEFAULT_CONNECT_TIMEOUT = 30.0

#: errnos of a connect that found no way to the manager (ManagerGone)
_UNREACHABLE = frozenset(getattr(errno, name) for name in
                         ("ENETUNREACH", "EHOSTUNREACH", "ENETDOWN", "EHOSTDOWN")
                         if hasattr(errno, name))


class Token:
    """Identifies a shared object: its typeid, its server's address, its ident."""

    __slots__ = ("typeid", "address", "id")

    def __init__(self, typeid, address, id):
        (self.typeid, self.address, self.id) = (typeid, address, id)

    def __getstate__(self):
        return (self.typeid, self.address, self.id)

    def __setstate__(self, state):
        (self.typeid, self.address, self.id) = state

    def __repr__(self):
        return "%s(typeid=%r, address=%r, id=%r)" % (
            self.__class__.__name__, self.typeid, self.address, self.id)


# ---------------------------------------------------------------------------
# Sessions and peers

class _Session:
    """This process's session id, sent in every handshake; new after a fork."""
    id = os.urandom(16)


_peers = {}            # (address, serializer, authkey) -> Peer
_peers_lock = threading.Lock()


class _Collected(threading.local):
    """See collect_increfs()."""
    increfs = None


_collected = _Collected()


def collect_increfs(into):
    """While into is a list (None ends it), proxies unpickled on this thread
    count their reference at once and append (peer, ident) to into instead
    of asking the server and waiting: an event loop that decodes a reply
    must not wait, and sends those increfs itself."""
    _collected.increfs = into


class Peer:
    """This process's link to the server at ``address``."""

    def __init__(self, address, authkey, serializer):
        self.address = address
        self.authkey = authkey
        self.codec = wire.Codec(serializer)
        self.tls = threading.local()   # .conn: the calling thread's connection
        self.lock = threading.Lock()
        self.anchor = None             # keeps the session alive; never used for calls
        self.stdlib = False            # the server runs plain multiprocessing.managers
        self.held = {}                 # ident -> live proxies that own a reference
        self.dead = []                 # idents of proxies that died since the last flush
        self.timeout = None            # per-call timeout of new connections (seconds)
        self.connect_timeout = None    # None: see connect_bound()
        self.ssl_context = None
        self.spin_us = None            # None: the process default (FASTMGR_SPIN_US)
        self.max_message = None        # None: the wire's default

    def configure(self, timeout=None, connect_timeout=None, ssl_context=None, spin_us=None,
                  max_message=None):
        """Settings of a manager object, for the connections made from now on."""
        if timeout is not None:
            self.timeout = timeout
        if connect_timeout is not None:
            self.connect_timeout = connect_timeout
        if ssl_context is not None:
            self.ssl_context = ssl_context
        if spin_us is not None:
            self.spin_us = spin_us
        if max_message is not None:
            self.max_message = max_message

    def connect_bound(self):
        """Seconds a new connection may take to connect and authenticate:
        connect_timeout if given, else the call timeout when it is shorter
        than the default (a manager told to give up on calls after a second
        must not wait half a minute for a server that never answers)."""
        if self.connect_timeout is not None:
            return self.connect_timeout
        if self.timeout is not None:
            return min(self.timeout, DEFAULT_CONNECT_TIMEOUT)
        return DEFAULT_CONNECT_TIMEOUT

    def _client(self):
        try:
            conn = Client(self.address, self.authkey, self.codec, hello=_Session.id,
                          timeout=self.connect_bound(), ssl_context=self.ssl_context,
                          ring=True, max_message=self.max_message)
        except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError,
                BrokenPipeError, EOFError) as exc:
            raise ManagerGone("cannot reach the manager at %r: %s" % (self.address, exc)) from exc
        except OSError as exc:
            # no route to the manager's network or host: unreachable, as gone
            if exc.errno not in _UNREACHABLE:
                raise
            raise ManagerGone("cannot reach the manager at %r: %s" % (self.address, exc)) from exc
        if self.spin_us is not None:
            conn.spin_us = self.spin_us
        return conn

    def _connect(self):
        conn = None
        with self.lock:
            # the anchor never receives anything: readable means the server is gone
            if self.anchor is not None and not self.anchor.closed and self.anchor.poll(0):
                self.anchor.close()
            if not self.stdlib and (self.anchor is None or self.anchor.closed):
                anchor = self._client()
                if isinstance(anchor, StdlibConnection):
                    # a stdlib server keeps no sessions: nothing to anchor,
                    # and this connection serves the calls
                    self.stdlib, conn = True, anchor
                else:
                    self.anchor = anchor
        if conn is None:
            conn = self._client()
        conn.timeout = self.timeout
        self.tls.conn = conn
        return conn

    def reset(self):
        """Forget every connection and reference: the server restarted."""
        with self.lock:
            if self.anchor is not None:
                self.anchor.close()
            self.anchor = None
            self.stdlib = False
            self.tls = threading.local()
            self.held = {}
            self.dead = []

    def _drop(self, conn):
        conn.close()
        if getattr(self.tls, "conn", None) is conn:
            del self.tls.conn

    def connection(self):
        """The calling thread's connection, made on first use."""
        try:
            return self.tls.conn
        except AttributeError:
            return self._connect()

    def call(self, ident, method, /, args=(), kwds=None):
        """One request on the calling thread's connection: (kind, value)."""
        conn = self.connection()
        if self.dead:
            self._flush(conn)
        try:
            return conn.call(ident, method, args, kwds)
        except BaseException as exc:
            self._failed(conn, exc)
            raise

    def _failed(self, conn, exc):
        """After a failed call: a broken or closed connection is dropped (the
        next call makes a new one); a vanished server is ManagerGone."""
        unreachable = isinstance(exc, OSError) and exc.errno in _UNREACHABLE
        if (isinstance(exc, (EOFError, ConnectionError, ProtocolError)) or unreachable
                or conn.closed):
            self._drop(conn)
        if (isinstance(exc, (EOFError, ConnectionError)) or unreachable) and not isinstance(
                exc, ManagerGone):
            raise ManagerGone("the manager at %r is gone: %s" % (self.address, exc)) from exc

    def control(self, method, /, *args, **kwds):
        kind, value = self.call(0, method, args, kwds or None)
        if kind == RESP_RETURN:
            return value
        if kind == P.RESP_ERROR:
            # the manager's own requests (create, incref, ...) fail as the
            # stdlib's do: RemoteError carrying the server-side traceback
            raise RemoteError(value[1])
        raise reply_error(kind, value)

    # -- references --------------------------------------------------------

    def adopt(self, ident):
        """A proxy took over a reference the server already counted for us."""
        with self.lock:
            self.held[ident] = self.held.get(ident, 0) + 1

    def acquire(self, ident):
        """A new proxy needs its own reference: ask the server for one
        (or, while an event loop decodes a reply, let it ask later)."""
        collected = _collected.increfs
        if collected is not None:
            collected.append((self, ident))
        else:
            self.control("incref", ident)
        self.adopt(ident)

    def release(self, ident):
        """Called from a proxy's finalizer: no I/O and no lock here."""
        self.dead.append(ident)

    def _settle(self):
        """Take the dead proxies into account; return the idents to decref."""
        idents = []
        with self.lock:
            while self.dead:
                ident = self.dead.pop()
                left = self.held.get(ident, 0) - 1
                if left < 0:
                    continue  # inherited through fork, not ours
                if left:
                    self.held[ident] = left
                else:
                    del self.held[ident]
                idents.append(ident)
        return idents

    def _flush(self, conn):
        idents = self._settle()
        if idents:
            conn.send_request(P.REQ_ONEWAY, 0, "decref_many", (idents,))

    def flush(self):
        if self.dead:
            self.control("dummy")

    def _after_fork_child(self):
        """In a forked child: the parent's connections and references are not
        ours.  Proxies inherited from the parent keep working on new
        connections; _reacquire() takes references for them."""
        for conn in (self.anchor, getattr(self.tls, "conn", None)):
            if conn is not None:
                conn.close()  # this process's copy; the parent's stays open
        self.tls = threading.local()
        self.lock = threading.Lock()
        self.anchor = None
        self.inherited, self.held, self.dead = self.held, {}, []

    def _release_all(self):
        """Drop every reference this process holds on the server (at exit)."""
        with self.lock:
            idents = [ident for ident, count in self.held.items() for _ in range(count)]
            self.held = {}   # proxies that die later release nothing (see _settle)
        if idents:
            try:
                self.control("decref_many", idents)
            except Exception as exc:
                util.info("releasing references at exit failed: %s", exc)

    def _reacquire(self):
        """In a child started by multiprocessing: own references for the
        proxies inherited from the parent, as the stdlib does."""
        inherited = getattr(self, "inherited", None)
        if not inherited:
            return
        self.inherited = {}
        for ident, count in inherited.items():
            try:
                self.control("incref", ident, count)
            except Exception as exc:
                util.info("incref after fork failed: %s", exc)
                continue
            with self.lock:
                self.held[ident] = self.held.get(ident, 0) + count


class LocalPeer(Peer):
    """The server's own link to itself, for proxies that live inside the
    server (a proxy stored in a managed dict, say).  Their references belong
    to the server's local session and are counted without any I/O."""

    def __init__(self, server, address, authkey, serializer):
        super().__init__(address, authkey, serializer)
        self.server = server

    def acquire(self, ident):
        from .server import LOCAL_SESSION
        self.server.incref(LOCAL_SESSION, ident)

    def adopt(self, ident):
        self.acquire(ident)

    def release(self, ident):
        self.server.dead_local.append(ident)


def _server_here(address):
    server = getattr(process.current_process(), "_manager_server", None)
    if server is not None and server.owns(address):
        return server
    return None


def peer_for(address, authkey, serializer):
    # the key is part of the identity: a link made with a wrong key must not
    # serve later callers that have the right one, nor the other way round
    key = (address, serializer, bytes(authkey))
    peer = _peers.get(key)
    if peer is None:
        with _peers_lock:
            peer = _peers.get(key)
            if peer is None:
                server = _server_here(address)
                if server is not None:
                    peer = LocalPeer(server, address, authkey, serializer)
                else:
                    peer = Peer(address, authkey, serializer)
                _peers[key] = peer
    return peer


def forget_peer(address):
    """A manager shut down: drop this process's links to it, closing the
    anchor and the calling thread's connection (a proxy used later makes a
    new one, and learns that the manager is gone)."""
    with _peers_lock:
        gone = [_peers.pop(key) for key in [k for k in _peers if k[0] == address]]
    for peer in gone:
        with peer.lock:
            anchor, peer.anchor = peer.anchor, None
        if anchor is not None:
            anchor.close()
        conn = getattr(peer.tls, "conn", None)
        if conn is not None:
            peer._drop(conn)


def _after_fork_in_child():
    _Session.id = os.urandom(16)
    global _peers_lock
    _peers_lock = threading.Lock()
    for peer in list(_peers.values()):
        peer._after_fork_child()


def _after_fork_in_mp_child(_registry_key):
    _release_at_exit()  # the child's finalizer registry starts empty
    for peer in list(_peers.values()):
        peer._reacquire()


def _release_all():
    """At the exit of a process, give back its references now, one round
    trip per server, rather than when the server notices its connections
    closed: once a child process has exited (and been joined), what it held
    is released, as with the stdlib, whose proxies decref at exit."""
    for peer in list(_peers.values()):
        if not isinstance(peer, LocalPeer):
            peer._release_all()


def _release_at_exit():
    # priority 10: that of the stdlib's proxy finalizers, before a manager
    # started here shuts down (priority 0)
    util.Finalize(None, _release_all, exitpriority=10)


_release_at_exit()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ForkHook:
    """multiprocessing runs after-fork hooks of objects still alive in the
    child's bootstrap; this one lives as long as the module."""


_fork_hook = _ForkHook()
util.register_after_fork(_fork_hook, _after_fork_in_mp_child)


# ---------------------------------------------------------------------------
# Replies

def reply_error(kind, value):
    """The exception a non-RETURN reply stands for (RESP_PROXY excluded)."""
    if kind == P.RESP_ERROR:
        if len(value) == 3:
            # sent without pickle: a builtin exception, by name and args
            name, args, tb = value
            cls = getattr(builtins, name, None)
            exc = None
            if isinstance(cls, type) and issubclass(cls, BaseException):
                try:
                    exc = cls(*args)
                except Exception:
                    exc = None
        else:
            exc, tb = value
        if isinstance(exc, BaseException):
            if tb is not None:  # a stdlib server sends none
                exc.__cause__ = RemoteTraceback(tb)
            return exc
        return RemoteError(tb)
    if kind == P.RESP_FAILURE:
        return RemoteError(value)
    return ValueError("Unrecognized message type %r" % (kind,))


_proxytypes = {}       # typeid -> proxytype, from every register() call


class _Adopting(threading.local):
    """Set while a proxy is built for a reference the server already counted,
    so the proxy type's __init__ (maybe the user's) needs no extra argument."""
    on = False


_adopting = _Adopting()


def proxy_from_reply(result, address, serializer, manager, authkey):
    """The proxy a RESP_PROXY reply stands for: the proxy type that the
    manager (or else any manager class) registered for its typeid."""
    typeid, ident, exposed = result
    if manager is not None and typeid in manager._registry:
        proxytype = manager._registry[typeid][-1]
    else:
        proxytype = _proxytypes.get(typeid, AutoProxy)
    return build_proxy(proxytype, Token(typeid, address, ident), serializer, manager, authkey,
                       exposed)


def build_proxy(proxytype, token, serializer, manager, authkey, exposed):
    """A proxy for a reference that the server counted for this process."""
    _adopting.on = True
    try:
        return proxytype(token, serializer, manager=manager, authkey=authkey, exposed=exposed)
    finally:
        _adopting.on = False


# ---------------------------------------------------------------------------
# Proxies

class BaseProxy:
    """A base for proxies of shared objects."""

    def __init__(self, token, serializer, manager=None, authkey=None, exposed=None,
                 incref=True, manager_owned=False):
        if authkey is not None:
            authkey = process.AuthenticationString(authkey)
        elif manager is not None:
            authkey = manager._authkey
        else:
            authkey = process.current_process().authkey
        self._token = token
        self._id = token.id
        self._manager = manager
        self._serializer = serializer
        self._authkey = authkey
        self._owned_by_manager = manager_owned
        self._owns_ref = False
        self._peer = peer_for(token.address, authkey, serializer)
        if _adopting.on:
            _adopting.on = False
            self._peer.adopt(self._id)
            self._owns_ref = True
        elif incref:
            self._peer.acquire(self._id)
            self._owns_ref = True

    def __del__(self):
        if self._owns_ref:
            self._owns_ref = False
            self._peer.release(self._id)

    def _callmethod(self, methodname, args=(), kwds={}):
        """Call methodname on the referent and return a copy of the result."""
        # Peer.call() with Peer.connection() inlined: this is the path every
        # proxy call takes
        peer = self._peer
        try:
            conn = peer.tls.conn
        except AttributeError:
            conn = peer._connect()
        if peer.dead:
            peer._flush(conn)
        try:
            kind, result = conn.call(self._id, methodname, args, kwds or None)
        except BaseException as exc:
            peer._failed(conn, exc)
            raise
        if kind == RESP_RETURN:
            return result
        if kind == P.RESP_PROXY:
            return self._proxy_from_reply(result)
        try:
            raise reply_error(kind, result)
        finally:
            del result  # else exception -> traceback -> this frame -> exception

    def _proxy_from_reply(self, result):
        return proxy_from_reply(result, self._token.address, self._serializer, self._manager,
                                self._authkey)

    def _set_timeout(self, seconds):
        """Bound this proxy's calls to seconds (None: the manager's default).
        A call that runs out raises TimeoutError; its connection is dropped."""
        if seconds is None:
            self.__dict__.pop("_callmethod", None)
            self.__dict__.pop("_call_timeout", None)
        else:
            object.__setattr__(self, "_callmethod",
                               functools.partial(_timed_callmethod, self, seconds))
            object.__setattr__(self, "_call_timeout", seconds)  # for async views

    def _getvalue(self):
        """Get a copy of the value of the referent."""
        return self._callmethod("#GETVALUE")

    def _incref(self):
        self._peer.acquire(self._id)
        self._owns_ref = True

    def __reduce__(self):
        kwds = {}
        if get_spawning_popen() is not None:
            kwds["authkey"] = self._authkey
        if getattr(self, "_isauto", False):
            kwds["exposed"] = self._exposed_
            return (RebuildProxy, (AutoProxy, self._token, self._serializer, kwds))
        return (RebuildProxy, (type(self), self._token, self._serializer, kwds))

    def __deepcopy__(self, memo):
        return self._getvalue()

    def __repr__(self):
        return "<%s object, typeid %r at %#x>" % (type(self).__name__, self._token.typeid, id(self))

    def __str__(self):
        """The referent's repr, or a fall-back if that fails."""
        try:
            return self._callmethod("__repr__")
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def _timed_callmethod(proxy, timeout, methodname, args=(), kwds={}):
    """_callmethod with this proxy's own timeout on the thread's connection."""
    conn = proxy._peer.connection()
    if not isinstance(conn, (wire.Connection, StdlibConnection)):  # a pipeline: no waits
        return BaseProxy._callmethod(proxy, methodname, args, kwds)
    saved, conn.timeout = conn.timeout, timeout
    try:
        return BaseProxy._callmethod(proxy, methodname, args, kwds)
    finally:
        if not conn.closed:
            conn.timeout = saved


def RebuildProxy(func, token, serializer, kwds):
    """Unpickle a proxy: it takes its own reference in this process."""
    if _server_here(token.address) is not None:
        kwds["manager_owned"] = True
    kwds.pop("incref", None)
    return func(token, serializer, incref=True, **kwds)


_proxy_type_cache = {}


def _forwarder(name):
    def method(self, /, *args, **kwds):
        return self._callmethod(name, args, kwds)
    method.__name__ = name
    return method


def MakeProxyType(name, exposed, _cache=None):
    """A BaseProxy subclass with one forwarding method per exposed name."""
    exposed = tuple(exposed)
    cache = _proxy_type_cache if _cache is None else _cache
    try:
        return cache[(name, exposed)]
    except KeyError:
        pass
    namespace = {meth: _forwarder(meth) for meth in exposed}
    # belong to the caller's module, so that the type pickles by reference
    namespace["__module__"] = sys._getframe(1).f_globals.get("__name__", __name__)
    proxytype = type(name, (BaseProxy,), namespace)
    proxytype._exposed_ = exposed
    cache[(name, exposed)] = proxytype
    return proxytype


def AutoProxy(token, serializer, manager=None, authkey=None, exposed=None, incref=True,
              manager_owned=False):
    """A proxy whose methods are those the server exposes for token."""
    if authkey is None and manager is not None:
        authkey = manager._authkey
    if authkey is None:
        authkey = process.current_process().authkey
    if exposed is None:
        exposed = peer_for(token.address, authkey, serializer).control("get_methods", token.id)
    proxytype = MakeProxyType("AutoProxy[%s]" % token.typeid, exposed)
    proxy = proxytype(token, serializer, manager=manager, authkey=authkey, incref=incref,
                      manager_owned=manager_owned)
    proxy._isauto = True
    return proxy
