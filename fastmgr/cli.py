"""The ``fastmgr`` command line (also ``python -m fastmgr``)."""
import argparse
import sys


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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from . import _bench
        return _bench.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
