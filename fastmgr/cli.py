"""The ``fastmgr`` command line (also ``python -m fastmgr``)."""
import argparse
import sys

from ._settings import AUTHKEY_VARIABLE


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastmgr",
        description="fastmgr: a faster drop-in for multiprocessing.managers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser(
        "bench", help="compare fastmgr with multiprocessing.managers on this machine",
        description="Time common manager operations for the stdlib and for fastmgr in one "
                    "run and print a table of per-op times (or calls/s) and speedups, with progress "
                    "on stderr.")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="also write a bar chart of the speedups (needs matplotlib)")
    bench.add_argument("--rounds", type=int, default=5,
                       help="alternating timing rounds per op (default: 5)")
    bench.add_argument("--scale", type=float, default=1.0,
                       help="multiply the number of ops per round; also the throughput "
                            "window in seconds (default: 1.0)")
    bench.add_argument("--op", action="append", metavar="NAME",
                       help="run only the ops whose name contains NAME (repeatable); "
                            "default: all")
    bench.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"],
                       help="start method of the manager processes (default: fork)")

    serve = sub.add_parser(
        "serve", help="serve a manager class over TCP or a unix socket",
        description="Serve the manager class SPEC (module:Class, a BaseManager subclass with "
                    "its types registered) until SIGTERM or SIGINT.  The authkey is read from "
                    "an environment variable or a file, never from the command line.  Managers "
                    "written against multiprocessing.managers work too: fastmgr.install() runs "
                    "before the module is imported.")
    serve.add_argument("spec", metavar="module:Class",
                       help="the manager class, e.g. myapp.managers:QueueManager")
    serve.add_argument("--address", required=True, metavar="HOST:PORT",
                       help="where to listen: HOST:PORT (IPv6 as [::1]:PORT), or a path for a "
                            "unix socket")
    serve.add_argument("--authkey-env", default=AUTHKEY_VARIABLE, metavar="VAR",
                       help="environment variable holding the authkey (default: %s)"
                            % AUTHKEY_VARIABLE)
    serve.add_argument("--authkey-file", metavar="PATH",
                       help="file holding the authkey (its bytes, trailing newline dropped); "
                            "takes precedence over the environment variable")
    serve.add_argument("--serializer", default="pickle", choices=["pickle", "safe"],
                       help="'safe' never unpickles: only None, bool, int, float, str, bytes, "
                            "tuple, list and dict cross the wire (default: pickle)")
    serve.add_argument("--no-stdlib-clients", action="store_true",
                       help="refuse clients of plain multiprocessing.managers (served by "
                            "default, in their own format: pickle; never with 'safe' or TLS)")
    serve.add_argument("--certfile", metavar="PEM", help="serve TLS with this certificate chain")
    serve.add_argument("--keyfile", metavar="PEM", help="the certificate's private key")
    serve.add_argument("--cafile", metavar="PEM",
                       help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="what to log: connects, disconnects and failed authentications are "
                            "logged at INFO and WARNING (default: INFO)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from . import _bench
        return _bench.main(args)
    if args.command == "serve":
        from . import _serve
        return _serve.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
