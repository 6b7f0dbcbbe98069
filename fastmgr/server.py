"""The manager server: accept loop, the hub that serves connections, object table.

Every shared object has an integer ident and an entry
``table[ident] = wire.Entry(obj, exposed, method_to_typeid, thread_bound)``
that the compiled serve loop reads without a lock (a dict lookup is atomic).
Connections are served by the wire's ``Hub``: one loop thread for all of
them, and a thread of their own for those that use a thread-bound object
(a lock, a queue: anything whose methods may block or belong to a thread)
or whose call runs long.  Reference counts are
kept per *session*, one session per client process: a session's references
go when its last connection closes, so a client that dies, even by SIGKILL,
leaves nothing behind.  Ident 0 on every connection is that connection's
``Control`` object: create, incref, decref and the other manager requests.
A client of plain ``multiprocessing.managers``, told apart in the
handshake, is served in the stdlib's format on a thread of its own
(``_stdlib_server.py``), on the same objects.
"""
import functools
import itertools
import logging
import operator
import os
import queue
import stat
import sys
import threading
from multiprocessing import pool, process

from . import _handshake
from . import _protocol as P
from ._admission import Handshakes, LogQuota, Shortage, peer_error
from ._backend import wire
from ._stdlib_server import ClientProcesses, serve_stdlib_client
from .connection import HANDSHAKE_TIMEOUT, Listener, answer_ring, sends_nothing
from .errors import AuthenticationError, ProtocolError

__all__ = ["Server", "public_methods", "all_methods"]

log = logging.getLogger("fastmgr.server")
# silent unless the program configures logging (as `fastmgr serve` does): a
# flood of refused peers must not write to a stderr nobody reads
log.addHandler(logging.NullHandler())

#: the session of references held by proxies that live in the server itself:
#: not bytes, so that no client's hello (its session id) can name it
LOCAL_SESSION = ("local",)

#: objects whose calls run on their connection's own thread, as every call
#: does in the stdlib's server: they may block, or an RLock's owner is the
#: calling thread.  A class can ask for the same with a true class attribute
#: ``_fastmgr_thread_bound_``.
THREAD_BOUND = (type(threading.Lock()), type(threading.RLock()), threading.Condition,
                threading.Semaphore, threading.Event, threading.Barrier, queue.Queue,
                pool.Pool, pool.ApplyResult, pool.IMapIterator)


def all_methods(obj):
    """Names of the callable attributes of obj."""
    return [name for name in dir(obj) if callable(getattr(obj, name, None))]


def public_methods(obj):
    """Names of the callable attributes of obj that do not start with '_'."""
    return [name for name in all_methods(obj) if name[0] != "_"]


class Session:
    """The references one client process holds, and its open connections."""

    __slots__ = ("connections", "refs")

    def __init__(self):
        self.connections = 0
        self.refs = {}  # ident -> count


class Control:
    """Ident 0 of one connection: the manager's own requests."""

    exposed = frozenset([
        "create", "incref", "decref", "decref_many", "get_methods", "thread_bound", "dummy",
        "debug_info", "number_of_objects", "shutdown", "set_name",
    ])

    def __init__(self, server, session):
        self._server = server
        self._session = session

    def create(self, typeid, /, *args, **kwds):
        return self._server.create(self._session, typeid, *args, **kwds)

    def incref(self, ident, count=1):
        self._server.incref(self._session, ident, count)

    def decref(self, ident):
        self._server.decref_many(self._session, (ident,))

    def decref_many(self, idents):
        self._server.decref_many(self._session, idents)

    def get_methods(self, ident):
        return tuple(self._server.table[ident].exposed)

    def thread_bound(self, ident):
        """Whether calls on ident run on their connection's own thread
        (async views give such calls a connection of their own)."""
        return bool(self._server.table[ident].thread_bound)

    def dummy(self):
        return None

    def debug_info(self):
        return self._server.debug_info()

    def number_of_objects(self):
        return self._server.number_of_objects()

    def shutdown(self):
        self._server.shutdown()

    def set_name(self, name):
        self.name = name


class Server:
    """Serves the objects of a manager's registry on ``address``."""

    control_class = Control

    def __init__(self, registry, address, authkey, serializer, *, max_message=None,
                 ssl_context=None, spin_us=None, stdlib_clients=True):
        if not isinstance(authkey, bytes):
            raise TypeError("Authkey {0!r} is type {1!s}, not bytes".format(authkey, type(authkey)))
        self.registry = registry
        self.authkey = process.AuthenticationString(authkey)
        self.serializer = serializer
        self.codec = wire.Codec(serializer)
        self.listener = Listener(address, codec=self.codec, max_message=max_message)
        _warn_if_others_can_replace(self.listener.address)
        self.ssl_context = ssl_context
        self.spin_us = spin_us
        self.address = self.listener.address
        self.table = {}         # ident -> wire.Entry
        self.refcount = {}      # ident -> references held by all sessions
        self.sessions = {}      # session id -> Session
        self.dead_local = []    # idents whose in-server proxy died; see flush_local()
        self.mutex = threading.Lock()
        self.stop_event = threading.Event()
        self._idents = itertools.count(1)
        self._private_sessions = itertools.count()
        self._connections = set()
        self._shortage = Shortage()
        self._handshakes = Handshakes()
        self._failures_logged = LogQuota()
        self.hub = wire.Hub(self.table, self.fallback, _start_thread, spin_us)
        self.stdlib_refusal = _stdlib_refusal(serializer, ssl_context, stdlib_clients)
        self.client_processes = ClientProcesses(self)

    # -- running -----------------------------------------------------------

    def serve_forever(self):
        """Serve until a client asks for shutdown, then exit the process (as
        the stdlib's server does)."""
        process.current_process()._manager_server = self
        try:
            accepter = threading.Thread(target=self.accepter, name="fastmgr-accepter", daemon=True)
            accepter.start()
            try:
                while not self.stop_event.is_set():
                    self.stop_event.wait(1)
            except (KeyboardInterrupt, SystemExit):
                pass
        finally:
            self.close()
            if sys.stdout is not None:
                sys.stdout.flush()
            if sys.stderr is not None:
                sys.stderr.flush()
            sys.exit(0)

    def accepter(self):
        """Take in connections until closed.  Out of descriptors or threads,
        it waits (see _admission.Shortage) and goes on: it never ends
        before the server does."""
        while not self.stop_event.is_set():
            try:
                sock, peer = self.listener.accept_socket()
            except OSError as exc:
                if self.listener._sock is None:
                    return
                if not peer_error(exc):
                    self._shortage.wait("accept a connection", exc)
                continue
            while not self._start_handshake(sock, peer):
                if self.stop_event.is_set():
                    sock.close()
                    return
            self._shortage.recovered()

    def _start_handshake(self, sock, peer):
        """Authenticate sock in a thread of its own; False if no thread
        could be started (after waiting a little: try again)."""
        key = self._handshakes.begin(sock)
        try:
            threading.Thread(target=self.handle_connection, args=(sock, peer, key),
                             name="fastmgr-handshake", daemon=True).start()
        except (RuntimeError, MemoryError) as exc:  # "can't start new thread"
            self._handshakes.done(key)
            self._shortage.wait("start a thread to authenticate a new connection", exc)
            return False
        return True

    def shutdown(self):
        """Stop serving (serve_forever then returns and exits the process)."""
        self.stop_event.set()

    def close(self):
        self.stop_event.set()
        self.hub.close()
        self.listener.close()
        self.client_processes.close()
        for conn in list(self._connections):
            conn.close()

    def handle_connection(self, sock, peer=None, handshake=None):
        """Authenticate a new connection, then hand it to the hub (or, for a
        client of plain multiprocessing.managers, serve it on this thread).
        handshake: its key in self._handshakes."""
        conn = None
        who = peer or "a local client"
        try:
            if self.ssl_context is not None and sends_nothing(sock):
                self._refuse_plaintext(sock, who)
                return
            conn = self.listener.wrap(sock, self.ssl_context)
            if self.spin_us is not None:
                conn.spin_us = self.spin_us
            conn.timeout = HANDSHAKE_TIMEOUT
            greeting = _handshake.server_handshake(conn, bytes(self.authkey), self.stdlib_refusal)
            session = bytes(greeting.hello)
            if greeting.dialect == P.DIALECT_FASTMGR and self.ssl_context is None and \
                    session.endswith(P.RING_HELLO):
                session = session[:-len(P.RING_HELLO)]
                answer_ring(conn, sock)
            conn.timeout = None
        except _handshake.StdlibRefused as exc:
            self._log_refusal(log.error, "refused a client of multiprocessing.managers from %s: %s",
                              who, exc)
            (conn or sock).close()
            self._shortage.freed()
            return
        except (AuthenticationError, ProtocolError, OSError, EOFError, ValueError) as exc:
            self._log_refusal(log.warning, "failed authentication from %s: %s", who, exc)
            (conn or sock).close()
            self._shortage.freed()
            return
        finally:
            if handshake is not None:
                self._handshakes.done(handshake)
        if greeting.dialect == P.DIALECT_STDLIB:
            self._serve_stdlib(conn, sock, peer, greeting.digest)
            self._shortage.freed()
            return
        if not session:
            # no session id: references private to this connection, so that
            # clients without one cannot drop each other's
            session = ("connection", next(self._private_sessions))
        log.info("connection from %s", who)
        self.hold_session(session, conn)
        control = self.control_class(self, session)
        finished = functools.partial(self._finished, session, conn, peer)
        try:
            self.hub.add(conn, wire.Entry(control, control.exposed),
                         functools.partial(self.make_proxy, session), finished)
        except Exception as exc:
            conn.close()
            finished(exc)

    def _refuse_plaintext(self, sock, who):
        """A client without TLS at a TLS server: tell it no, plainly."""
        conn = wire.Connection(sock, codec=self.codec)
        try:
            conn.timeout = HANDSHAKE_TIMEOUT
            _handshake.refuse(conn, b"this server requires TLS")
        except (AuthenticationError, OSError, EOFError):
            pass
        finally:
            conn.close()
        self._log_refusal(log.error, "refused a client without TLS from %s: this server requires "
                          "TLS (a client of plain multiprocessing.managers cannot speak it)", who)

    def _log_refusal(self, method, message, *args):
        """Log a peer refused before it authenticated, within the quota
        (anyone who can reach the address can be refused as often as it
        likes): the count of those left out goes with the next one."""
        left_out = self._failures_logged.take()
        if left_out is not None:
            method(message + (" (and %d more refusals not logged)" % left_out if left_out else ""),
                   *args)

    def _serve_stdlib(self, conn, sock, peer, digest):
        conn.backlog_max = P.BACKLOG_MAX  # as the hub does (see _protocol.BACKLOG_MAX)
        with self.mutex:
            self._connections.add(conn)
        serve_stdlib_client(self, conn, sock, peer, digest)

    def _finished(self, session, conn, peer, exc):
        """The hub is done with a connection (exc: why, None if it closed)."""
        if isinstance(exc, (OSError, EOFError)):
            log.info("dropping a connection: %s", exc)
        elif exc is not None:
            log.error("error serving a connection", exc_info=exc)
        self.release_session(session, conn)
        self._shortage.freed()
        log.info("disconnection of %s", peer or "a local client")

    def hold_session(self, session, conn=None):
        """One more holder of session's references: a connection (then
        also closed with the server), or a client process that lives."""
        with self.mutex:
            if conn is not None:
                self._connections.add(conn)
            self.sessions.setdefault(session, Session()).connections += 1

    def release_session(self, session, conn=None):
        """One holder less; the last one of a session frees its references."""
        with self.mutex:
            if conn is not None:
                self._connections.discard(conn)
            state = self.sessions[session]
            state.connections -= 1
            if state.connections or session == LOCAL_SESSION:
                return
            del self.sessions[session]
            garbage = self._drop(state.refs.items())
        del garbage
        self.flush_local()

    def forget_connection(self, conn):
        with self.mutex:
            self._connections.discard(conn)

    # -- the object table --------------------------------------------------

    def register_object(self, typeid, obj):
        """Put obj in the table under typeid's exposure; return (ident, exposed)."""
        _callable, exposed, method_to_typeid, _proxytype = self.registry[typeid]
        if exposed is None:
            exposed = public_methods(obj)
        if method_to_typeid is not None:
            if not isinstance(method_to_typeid, dict):
                raise TypeError("Method_to_typeid {0!r}: type {1!s}, not dict".format(
                    method_to_typeid, type(method_to_typeid)))
            exposed = list(exposed) + list(method_to_typeid)
        ident = next(self._idents)
        thread_bound = isinstance(obj, THREAD_BOUND) or getattr(
            type(obj), "_fastmgr_thread_bound_", False)
        self.table[ident] = wire.Entry(obj, frozenset(exposed), method_to_typeid,
                                       bool(thread_bound))
        return ident, tuple(exposed)

    def create(self, session, typeid, /, *args, **kwds):
        """Make a new shared object; the caller's session holds one reference."""
        self.flush_local()
        callable_ = self.registry[typeid][0]
        if callable_ is None:
            if kwds or len(args) != 1:
                raise ValueError("Without callable, must have one non-keyword argument")
            obj = args[0]
        else:
            obj = callable_(*args, **kwds)
        with self.mutex:
            ident, exposed = self.register_object(typeid, obj)
            self._incref(session, ident, 1)
        return ident, exposed

    def make_proxy(self, session, typeid, obj):
        """A method in method_to_typeid returned obj: share it, for the
        calling session."""
        with self.mutex:
            ident, exposed = self.register_object(typeid, obj)
            self._incref(session, ident, 1)
        return (typeid, ident, exposed)

    def _incref(self, session, ident, count):
        """Precondition: self.mutex is held."""
        if ident not in self.table:
            raise KeyError(ident)
        refs = self.sessions.setdefault(session, Session()).refs
        refs[ident] = refs.get(ident, 0) + count
        self.refcount[ident] = self.refcount.get(ident, 0) + count

    def incref(self, session, ident, count=1):
        """Give session count more references to ident (count >= 1: a
        session drops references only by decref, and only those it holds)."""
        count = operator.index(count)
        if count < 1:
            raise ValueError("incref count must be at least 1, not %d" % count)
        with self.mutex:
            self._incref(session, ident, count)

    def decref_many(self, session, idents):
        """Drop one of session's references to each ident (repeats allowed)."""
        with self.mutex:
            state = self.sessions.get(session)
            refs = state.refs if state is not None else {}
            pairs = []
            for ident in idents:
                held = refs.get(ident, 0)
                if held <= 0:
                    log.debug("decref of %r, which session does not hold", ident)
                    continue
                if held == 1:
                    del refs[ident]
                else:
                    refs[ident] = held - 1
                pairs.append((ident, 1))
            garbage = self._drop(pairs)
        del garbage  # objects die here, outside the lock
        self.flush_local()

    def _drop(self, pairs):
        """Remove counts; return the objects whose count reached zero, for
        the caller to let go of outside the lock. Precondition: mutex held."""
        garbage = []
        for ident, count in pairs:
            left = self.refcount.get(ident, 0) - count
            if left > 0:
                self.refcount[ident] = left
                continue
            self.refcount.pop(ident, None)
            garbage.append(self.table.pop(ident, None))
        return garbage

    def flush_local(self):
        """Release references of in-server proxies that died since last time
        (their finalizers only queue the ident; see proxies.LocalPeer)."""
        while self.dead_local:
            idents = []
            while self.dead_local:
                idents.append(self.dead_local.pop())
            self.decref_many(LOCAL_SESSION, idents)

    def _client_held(self):
        """{ident: references held by client processes}, leaving out the
        objects that only proxies inside the server refer to (a managed list
        that holds a proxy of itself, say): the stdlib counts only the
        former.  Precondition: self.mutex is held."""
        local = self.sessions.get(LOCAL_SESSION)
        local = local.refs if local is not None else {}
        held = {}
        for ident, count in self.refcount.items():
            count -= local.get(ident, 0)
            if count > 0:
                held[ident] = count
        return held

    def number_of_objects(self):
        self.flush_local()
        with self.mutex:
            return len(self._client_held())

    def debug_info(self):
        self.flush_local()
        with self.mutex:
            lines = []
            for ident, count in sorted(self._client_held().items()):
                obj = self.table[ident].obj
                lines.append("  %s:       refcount=%s\n    %s" % (ident, count, str(obj)[:75]))
        return "\n".join(lines)

    # -- methods the serve loop falls back on --------------------------------

    def fallback(self, ident, obj, method, args, kwds):
        if method == "#GETVALUE":
            return obj
        if method == "__str__":
            return str(obj)
        if method == "__repr__":
            return repr(obj)
        raise AttributeError("method %r of %r object is not in exposed=%r" % (
            method, type(obj), tuple(self.table[ident].exposed) if ident in self.table else ()))

    def owns(self, address):
        """Whether a token's address names this server."""
        if address == self.address:
            return True
        if isinstance(address, tuple) and isinstance(self.address, tuple):
            return address[1] == self.address[1] and (
                address[0] in ("localhost", "127.0.0.1", "::1", "", "0.0.0.0", "::")
                or address[0] == self.address[0])
        return False


def _stdlib_refusal(serializer, ssl_context, stdlib_clients):
    """Why this server refuses clients of plain multiprocessing.managers
    (they speak pickle and no TLS), or None."""
    if not stdlib_clients:
        return ("this server does not serve them (stdlib_clients=False, or fastmgr serve "
                "--no-stdlib-clients)")
    if serializer != "pickle":
        return ("they speak pickle, and this server's serializer %r never unpickles"
                % serializer)
    if ssl_context is not None:
        return "this server requires TLS, which they cannot speak"
    return None


def _warn_if_others_can_replace(address):
    """Warn when a unix socket lives in a directory where another user
    could remove it and put their own in its place: clients would then
    talk to them (a directory that only we, or root, may change, or a
    sticky one such as /tmp, is safe; the default address is in a private
    one)."""
    if not isinstance(address, str) or not address or address[0] == "\0":
        return
    directory = os.path.dirname(os.path.abspath(address))
    try:
        st = os.stat(directory)
    except OSError:
        return
    others_write = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX
    if st.st_uid not in (os.geteuid(), 0) or others_write:
        log.warning("the unix socket %s is in %s, which other users may change: they could "
                    "put a socket of their own in its place", address, directory)


def _start_thread(fn, *args):
    """The hub's way to start its threads; a failure is logged here and
    raised to the hub, which keeps serving what it can (see Hub)."""
    try:
        threading.Thread(target=fn, args=args, daemon=True).start()
    except (RuntimeError, MemoryError) as exc:
        log.warning("cannot start a thread for %s: %s",
                    getattr(fn, "__name__", "the hub"), exc)
        raise
