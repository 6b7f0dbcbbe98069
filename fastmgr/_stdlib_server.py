"""Serving clients of plain ``multiprocessing.managers``.

Once the handshake has told such a client (``_protocol.py``, "Stdlib
peers"), its connection is served here, on the thread that authenticated
it, the way the stdlib's own server serves it: the first request,
``(None, name, args, kwds)``, is one of the manager's own (``create``,
``incref``, ``decref``, ``get_methods``, ``accept_connection``, ...) and its
reply ends the connection, except after ``accept_connection``: from then on
the connection carries method calls ``(ident, method, args, kwds)`` until
the client closes it.  Replies are ``('#RETURN', value)``, ``('#ERROR',
exception)``, ``('#TRACEBACK', text)``, ``('#PROXY', (exposed, token))`` and
``('#UNSERIALIZABLE', text)``, pickled (``_stdlib_pickle.py``).  The
objects and reference counts are those every client of the server shares;
the client sees each ident as a hexadecimal string.

Whose references?  A stdlib client takes and drops references on
short-lived connections of their own, so they cannot belong to a
connection.  They belong to the client's process instead, found through
the kernel (``_peer_process.py``), and go when that process exits (a
pidfd tells us), as a fastmgr client's go when its session ends: a client
killed in the middle of a call leaves nothing behind.  A client whose
process cannot be told (on another host, in another namespace, owned by a
user whose processes we may not inspect) keeps the stdlib's rule: its
references go only when it drops them; they are counted per host, so that
no host can drop what another holds.
"""
import logging
import os
import select
import threading
import traceback

from . import _stdlib_pickle
from ._peer_process import peer_pid
from .proxies import Token

__all__ = ["serve_stdlib_client", "ClientProcesses"]

log = logging.getLogger("fastmgr.server")

#: the manager's own requests, as the stdlib's server names them
PUBLIC = frozenset(["shutdown", "create", "accept_connection", "get_methods", "debug_info",
                    "number_of_objects", "dummy", "incref", "decref"])


def _table_ident(ident):
    """The table's integer for a stdlib client's ident (a hex string)."""
    if type(ident) is str:
        return int(ident, 16)
    return ident


class _StdlibClient:
    """One connection from a stdlib client."""

    def __init__(self, server, conn, sock, peer, digest):
        self.server = server
        self.conn = conn
        self.sock = sock
        self.peer = peer
        self.who = "%s (multiprocessing.managers, HMAC-%s)" % (
            peer or "a local client", digest.upper())
        self.session = None   # the client process's session, looked up when needed

    # -- replies -----------------------------------------------------------

    def send(self, message):
        try:
            data = _stdlib_pickle.dumps(message)
        except Exception:
            data = _stdlib_pickle.dumps(("#UNSERIALIZABLE", traceback.format_exc()))
        self.conn.send_bytes(data)

    def recv(self):
        return _stdlib_pickle.loads(self.conn.recv_bytes())

    def client_session(self):
        if self.session is None:
            self.session = self.server.client_processes.session_for(self.sock, self.peer)
            self.server.hold_session(self.session, self.conn)
        return self.session

    def close(self):
        if self.session is not None:
            self.server.release_session(self.session, self.conn)
        else:
            self.server.forget_connection(self.conn)
        self.conn.close()

    # -- the first request -------------------------------------------------

    def serve(self):
        try:
            request = self.recv()
            _ignored, name, args, kwds = request
            if name not in PUBLIC and name not in self.server.control_class.exposed:
                raise AttributeError("%r unrecognized" % (name,))
            if name == "accept_connection":
                log.info("connection from %s", self.who)
                self.send(("#RETURN", None))
                self.serve_calls()
                log.info("disconnection of %s", self.who)
                return
            log.debug("%s request from %s", name, self.who)
            if name in PUBLIC:
                handler = getattr(self, "do_" + name)
            else:  # one the server adds (a SharedMemoryServer's segments)
                control = self.server.control_class(self.server, self.client_session())
                handler = getattr(control, name)
        except (EOFError, OSError):
            return
        except Exception:
            self.send(("#TRACEBACK", traceback.format_exc()))
            return
        try:
            message = ("#RETURN", handler(*args, **kwds))
        except Exception:
            message = ("#TRACEBACK", traceback.format_exc())
        self.send(message)
        if name == "shutdown":
            self.server.shutdown()  # after the reply, as the stdlib does

    def do_create(self, typeid, /, *args, **kwds):
        ident, exposed = self.server.create(self.client_session(), typeid, *args, **kwds)
        return _stdlib_pickle.stdlib_ident(ident), exposed

    def do_incref(self, ident):
        self.server.incref(self.client_session(), _table_ident(ident), 1)

    def do_decref(self, ident):
        self.server.decref_many(self.client_session(), (_table_ident(ident),))

    def do_get_methods(self, token):
        return tuple(self.server.table[_table_ident(token.id)].exposed)

    def do_debug_info(self):
        return self.server.debug_info()

    def do_number_of_objects(self):
        return self.server.number_of_objects()

    def do_dummy(self):
        return None

    def do_shutdown(self):
        return None

    # -- method calls ------------------------------------------------------

    def serve_calls(self):
        """Answer (ident, method, args, kwds) requests until the client
        closes the connection."""
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                return
            self.send(self.call(data))

    def call(self, data):
        server = self.server
        method = None
        try:
            ident, method, args, kwds = _stdlib_pickle.loads(data)
            ident = _table_ident(ident)
            entry = server.table[ident]
            if method not in entry.exposed:
                return ("#RETURN", server.fallback(ident, entry.obj, method, args, kwds))
            function = getattr(entry.obj, method)
        except Exception:
            return ("#TRACEBACK", traceback.format_exc())
        try:
            result = function(*args, **kwds)
        except Exception as exc:
            return ("#ERROR", exc)
        typeid = entry.method_to_typeid.get(method) if entry.method_to_typeid else None
        if not typeid:
            return ("#RETURN", result)
        try:
            typeid, ident, exposed = server.make_proxy(self.client_session(), typeid, result)
        except Exception:
            return ("#TRACEBACK", traceback.format_exc())
        token = Token(typeid, server.address, ident)
        return ("#PROXY", (exposed, token))


def serve_stdlib_client(server, conn, sock, peer, digest):
    """Serve one authenticated connection of a stdlib client (which proved
    the key with digest), then close it."""
    client = _StdlibClient(server, conn, sock, peer, digest)
    try:
        client.serve()
    except Exception as exc:  # a send that failed: the client is gone
        log.info("dropping a stdlib client's connection: %s", exc)
    finally:
        client.close()


class ClientProcesses:
    """The sessions of stdlib clients: one per client process where the
    process can be told, held until it exits; else one per host, held for
    good (see the module's docstring)."""

    def __init__(self, server):
        self._server = server
        self._lock = threading.Lock()
        self._pids = {}         # pid -> pidfd, for processes being watched
        self._sessions = {}     # pidfd -> (pid, session)
        self._hosts = set()     # host sessions, held for good
        self._poll = None
        self._wake = None       # (read end, write end) of the watcher's pipe
        self._closed = False

    def session_for(self, sock, peer):
        """The session of the client process at the other end of sock."""
        # sessions are tuples: no fastmgr client's hello (bytes) can name them
        pid = peer_pid(sock, hints=list(self._pids))
        if pid is not None:
            session = ("stdlib pid", pid)
            if self._watch(pid, session):
                return session
        session = ("stdlib host", peer[0] if isinstance(peer, tuple) else "local")
        with self._lock:
            if session not in self._hosts:
                self._hosts.add(session)
                self._server.hold_session(session)
        return session

    def _watch(self, pid, session):
        """Hold session until process pid exits; False if it cannot be watched."""
        with self._lock:
            if pid in self._pids:
                return True
            if self._closed:
                return False
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):  # no pidfds here, or gone already
                return False
            self._pids[pid] = pidfd
            self._sessions[pidfd] = (pid, session)
            self._server.hold_session(session)
            if self._poll is None:
                self._start()
            self._poll.register(pidfd, select.POLLIN)
            os.write(self._wake[1], b"\0")
        return True

    def _start(self):
        self._poll = select.poll()
        self._wake = os.pipe()
        self._poll.register(self._wake[0], select.POLLIN)
        threading.Thread(target=self._run, name="fastmgr-stdlib-clients", daemon=True).start()

    def _run(self):
        wake = self._wake[0]
        while True:
            for fd, _event in self._poll.poll():
                if fd != wake:
                    self._exited(fd)
                elif not os.read(wake, 512):  # close() closed the write end
                    with self._lock:
                        os.close(wake)
                        for pidfd in self._sessions:
                            os.close(pidfd)
                        self._sessions.clear()
                        self._pids.clear()
                    return

    def _exited(self, pidfd):
        with self._lock:
            pid, session = self._sessions.pop(pidfd)
            del self._pids[pid]
            self._poll.unregister(pidfd)
            os.close(pidfd)
        self._server.release_session(session)

    def close(self):
        with self._lock:
            self._closed = True
            if self._wake is not None:
                os.close(self._wake[1])

