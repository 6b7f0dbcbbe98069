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


def refuse(message):
    """Stop before serving: message on stderr, exit code 2 (as argparse's
    usage errors)."""
    sys.stderr.write("fastmgr serve: %s\n" % message)
    raise SystemExit(2)


def read_authkey(args):
    """The authkey from --authkey-file, else from the environment variable.

    One rule for every source: a key that is empty or only whitespace is
    refused (anyone could guess it)."""
    if args.authkey_file:
        source = "the file %s" % args.authkey_file
        try:
            with open(args.authkey_file, "rb") as f:
                key = f.read().rstrip(b"\r\n")
        except OSError as exc:
            refuse("cannot read the authkey file: %s" % exc)
    else:
        source = "the environment variable %s" % args.authkey_env
        key = authkey_from(args.authkey_env)
        if key is None:
            refuse("no authkey: %s is unset or empty; set it or pass --authkey-file"
                   % args.authkey_env)
    if not key.strip():
        refuse("the authkey from %s is empty or only whitespace: refusing to serve "
               "with a key anyone could guess (set %s or pass --authkey-file)"
               % (source, args.authkey_env))
    return key


def load_manager_class(spec):
    from . import BaseManager, install
    module_name, sep, name = spec.partition(":")
    if not sep or not name:
        refuse("expected module:Class, got %r" % spec)
    install()  # managers written for multiprocessing.managers become fastmgr's
    sys.path.insert(0, os.getcwd())
    obj = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, BaseManager)):
        refuse("%s is not a BaseManager subclass" % spec)
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
    authkey = read_authkey(args)  # before the manager's module runs any code
    manager_class = load_manager_class(args.spec)
    manager = manager_class(address=parse_address(args.address), authkey=authkey,
                            serializer=args.serializer, ssl_context=server_ssl_context(args),
                            stdlib_clients=not args.no_stdlib_clients)
    try:
        server = manager.get_server()
    except OSError as exc:  # the address is taken, say, or not ours to use
        refuse("cannot listen at %s: %s" % (args.address, exc))

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
