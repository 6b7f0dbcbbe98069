"""``fastmgr serve module:Class``: run a manager server from the command line."""
import importlib
import logging
import os
import signal
import sys

from ._settings import authkey_from

log = logging.getLogger("fastmgr.serve")


def parse_address(text):
    """HOST:PORT, [IPv6]:PORT, or a unix socket path."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return (host, int(port))
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return (host, int(port))
    return text


def read_authkey(args):
    if args.authkey_file:
        with open(args.authkey_file, "rb") as f:
            return f.read().rstrip(b"\r\n")
    authkey = authkey_from(args.authkey_env)
    if authkey is None:
        raise SystemExit("fastmgr serve: no authkey: set %s or pass --authkey-file"
                         % args.authkey_env)
    return authkey


def load_manager_class(spec):
    from . import BaseManager, install
    module_name, sep, name = spec.partition(":")
    if not sep or not name:
        raise SystemExit("fastmgr serve: expected module:Class, got %r" % spec)
    install()  # managers written for multiprocessing.managers become fastmgr's
    sys.path.insert(0, os.getcwd())
    obj = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, BaseManager)):
        raise SystemExit("fastmgr serve: %s is not a BaseManager subclass" % spec)
    return obj


def server_ssl_context(args):
    if not args.certfile:
        return None
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.certfile, args.keyfile)
    if args.cafile:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.cafile)
    return ctx


def main(args):
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    manager_class = load_manager_class(args.spec)
    manager = manager_class(address=parse_address(args.address), authkey=read_authkey(args),
                            serializer=args.serializer, ssl_context=server_ssl_context(args),
                            stdlib_clients=not args.no_stdlib_clients)
    server = manager.get_server()

    def stop(signum, frame):
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving %s at %r%s", args.spec, server.address, " (TLS)" if args.certfile else "")
    try:
        server.serve_forever()
    except SystemExit:
        pass
    log.info("stopped")
    return 0
