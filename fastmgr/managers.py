"""BaseManager: registration, start/connect/shutdown, and the server process."""
import signal
import threading
from multiprocessing import connection as _mpc
from multiprocessing import get_context, process, util

from . import _protocol as P
from ._backend import wire
from .connection import Client
from .errors import ProcessError
from .proxies import AutoProxy, Token, _proxytypes, _Session, build_proxy, forget_peer, peer_for
from .server import Server

__all__ = ["BaseManager", "State"]


class State:
    """The life of a manager: INITIAL, then STARTED, then SHUTDOWN."""
    __slots__ = ["value"]
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


def _check_initial(state):
    """Raise the stdlib's ProcessError unless the manager is INITIAL."""
    if state.value == State.STARTED:
        raise ProcessError("Already started server")
    if state.value == State.SHUTDOWN:
        raise ProcessError("Manager has shut down")
    if state.value != State.INITIAL:
        raise ProcessError("Unknown state {!r}".format(state.value))


def _watch_parent(server):
    """Stop the server when the process that started it dies (even by
    SIGKILL): its end of the sentinel pipe closes then."""
    parent = process.parent_process()
    if parent is None:
        return

    def watch():
        try:
            _mpc.wait([parent.sentinel])
        except (OSError, ValueError):
            pass
        util.info("manager's parent process died: shutting down")
        server.stop_event.set()

    threading.Thread(target=watch, name="fastmgr-parent-watch", daemon=True).start()


def _server_side(ssl_context):
    import ssl
    return ssl_context.protocol == ssl.PROTOCOL_TLS_SERVER


class BaseManager:
    """Base class for managers: register types on a subclass, then start()
    a server process or connect() to a running server."""

    _registry = {}
    _Server = Server

    def __init__(self, address=None, authkey=None, serializer="pickle", ctx=None, *,
                 shutdown_timeout=1.0, timeout=None, connect_timeout=None, ssl_context=None,
                 client_ssl_context=None, spin_us=None, stdlib_clients=True,
                 max_message=None):
        """As the stdlib's, plus (keywords only):

        timeout: seconds each proxy call may take (None: no limit); a proxy
            overrides it with proxy._set_timeout(seconds). TimeoutError then.
        connect_timeout: seconds to connect and authenticate (default: 30,
            or timeout when that is shorter).
        ssl_context: an ssl.SSLContext: a server context (PROTOCOL_TLS_SERVER)
            serves TLS from get_server() or start(); a client context makes
            connect() and the proxies use TLS.
        client_ssl_context: the client context, where ssl_context is the
            server's (start() with TLS needs both).
        spin_us: microseconds a waiting thread spins before it blocks
            (0: never; None: FASTMGR_SPIN_US, default 50).
        stdlib_clients: whether the server this manager runs serves clients
            of plain multiprocessing.managers too (they speak pickle; a
            server whose serializer is not 'pickle', or that serves TLS,
            refuses them whatever this says).
        max_message: the largest message body, in bytes, that the server
            and this object's connections send or accept (default 1 GiB); a
            larger argument or result raises MessageTooLarge, and the
            connection stays usable.
        """
        if authkey is None:
            authkey = process.current_process().authkey
        if serializer not in P.SERIALIZERS:
            raise ValueError("unknown serializer %r (choose from %s)"
                             % (serializer, ", ".join(P.SERIALIZERS)))
        self._address = address
        self._authkey = process.AuthenticationString(authkey)
        self._state = State()
        self._state.value = State.INITIAL
        self._serializer = serializer
        self._ctx = ctx or get_context()
        self._shutdown_timeout = shutdown_timeout
        self._process = None
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._client_ssl_context = client_ssl_context
        self._spin_us = spin_us
        self._stdlib_clients = stdlib_clients
        self._max_message = max_message

    @property
    def address(self):
        return self._address

    def _peer(self):
        peer = peer_for(self._address, self._authkey, self._serializer)
        peer.configure(self._timeout, self._connect_timeout, self._client_ssl(), self._spin_us,
                       self._max_message)
        return peer

    def _client_ssl(self):
        if self._client_ssl_context is not None:
            return self._client_ssl_context
        if self._ssl_context is not None and not _server_side(self._ssl_context):
            return self._ssl_context
        return None

    def _server_options(self):
        ctx = self._ssl_context
        return {"ssl_context": ctx if ctx is not None and _server_side(ctx) else None,
                "spin_us": self._spin_us, "stdlib_clients": self._stdlib_clients,
                "max_message": self._max_message}

    def get_server(self):
        """A server for this manager's registry, to run with serve_forever()."""
        _check_initial(self._state)
        return self._Server(self._registry, self._address, self._authkey, self._serializer,
                            **self._server_options())

    def connect(self):
        """Connect to a running manager server at self.address."""
        self._peer().control("dummy")
        self._state.value = State.STARTED

    def reconnect(self):
        """Connect again to a server that restarted at self.address.
        Proxies from before the restart name objects that are gone."""
        self._peer().reset()
        self.connect()

    def start(self, initializer=None, initargs=()):
        """Start a server process for this manager."""
        _check_initial(self._state)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        reader, writer = _mpc.Pipe(duplex=False)
        self._process = self._ctx.Process(
            target=type(self)._run_server,
            args=(self._registry, self._address, self._authkey, self._serializer, writer,
                  initializer, initargs, self._server_options()),
        )
        ident = ":".join(str(i) for i in self._process._identity)
        self._process.name = type(self).__name__ + "-" + ident
        self._process.start()
        writer.close()
        self._address = reader.recv()
        reader.close()
        self._state.value = State.STARTED
        self.shutdown = util.Finalize(
            self, type(self)._finalize_manager,
            args=(self._process, self._address, self._authkey, self._state,
                  self._serializer, self._shutdown_timeout, self._client_ssl()),
            exitpriority=0,
        )

    @classmethod
    def _run_server(cls, registry, address, authkey, serializer, writer, initializer=None,
                    initargs=(), options=None):
        """The server process: make the server, report its address, serve."""
        # the parent handles Ctrl-C; the manager goes when told (bpo-36368)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if initializer is not None:
            initializer(*initargs)
        server = cls._Server(registry, address, authkey, serializer, **(options or {}))
        writer.send(server.address)
        writer.close()
        _watch_parent(server)
        util.info("manager serving at %r", server.address)
        server.serve_forever()

    def shutdown(self):
        """Stop a server started by start(); a no-op before that (start()
        replaces this method with the finalizer that does the work)."""

    @staticmethod
    def _finalize_manager(proc, address, authkey, state, serializer, shutdown_timeout,
                          ssl_context=None):
        if proc.is_alive():
            util.info("sending shutdown message to manager")
            try:
                conn = Client(address, authkey, wire.Codec(serializer), hello=_Session.id,
                              timeout=shutdown_timeout, ssl_context=ssl_context)
                try:
                    conn.timeout = shutdown_timeout
                    conn.call(0, "shutdown")
                finally:
                    conn.close()
            except Exception:
                pass
            proc.join(timeout=shutdown_timeout)
            if proc.is_alive():
                util.info("manager still alive: terminating it")
                proc.terminate()
                proc.join(timeout=shutdown_timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        state.value = State.SHUTDOWN
        forget_peer(address)

    def join(self, timeout=None):
        """Wait for the server process started by start()."""
        if self._process is not None:
            self._process.join(timeout)
            if not self._process.is_alive():
                self._process = None

    def _create(self, typeid, /, *args, **kwds):
        """Create a shared object: one round trip on this thread's connection.
        Returns its token and exposed methods."""
        if self._state.value != State.STARTED:
            raise ProcessError("server not yet started")
        ident, exposed = self._peer().control("create", typeid, *args, **kwds)
        return Token(typeid, self._address, ident), exposed

    def _debug_info(self):
        return self._peer().control("debug_info")

    def _number_of_objects(self):
        return self._peer().control("number_of_objects")

    def __enter__(self):
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value != State.STARTED:
            if self._state.value == State.INITIAL:
                raise ProcessError("Unable to start server")
            _check_initial(self._state)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.shutdown()

    @classmethod
    def register(cls, typeid, callable=None, proxytype=None, exposed=None,
                 method_to_typeid=None, create_method=True):
        """Register a type (or callable) under typeid for this manager class."""
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        for key, value in (method_to_typeid or {}).items():
            if type(key) is not str or type(value) is not str:
                raise TypeError("method_to_typeid must map str to str, not %r: %r" % (key, value))
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)
        _proxytypes[typeid] = proxytype
        if create_method:
            def temp(self, /, *args, **kwds):
                token, exp = self._create(typeid, *args, **kwds)
                return build_proxy(proxytype, token, self._serializer, self, self._authkey, exp)
            temp.__name__ = typeid
            setattr(cls, typeid, temp)
