"""Run CPython's own manager tests (test._test_multiprocessing, from the
``test`` package installed with Python) against fastmgr or the stdlib.

    python tools/cpython_manager_tests.py [--impl fastmgr|stdlib|both]
                                          [--start-method fork|spawn|forkserver ...]

Each (implementation, start method) runs in a fresh interpreter, a worker,
built the way CPython's test_multiprocessing_<method> modules are built:
``install_tests_in_module_dict(globals(), method)`` in the worker's main
module.  With ``--impl fastmgr`` the worker calls ``fastmgr.install()``
*before* it imports the test module, at the top of the module, so that every
child process that re-imports the main module (spawn, forkserver) installs
it too, as a user's program would.

Selected (the manager flavour): every ``WithManager*`` class, the
MyManager / RemoteManager / ManagerRestart tests (``*TestMyManager``,
``*TestRemoteManager``, ``*TestManagerRestart`` in every flavour),
``TestSyncManagerTypes``, ``TestInitializers``, and the SharedMemoryManager /
SharedMemoryServer tests of ``_TestSharedMemory``.

One selected test, test_shared_memory_SharedMemoryManager_reuses_resource_tracker,
runs its manager in a fresh ``python -I -c`` of its own, where nothing has
called fastmgr.install(): it exercises the stdlib under either implementation.

Prints, per start method, ``passed N, failed N, skipped N`` (failed counts
failures and errors), and last a line ``N passed, N failed, N skipped``
(with ``--impl both``: the stdlib's totals first, as the baseline, then
fastmgr's).  Exits non-zero if a test of the implementation under test
(fastmgr, with ``both``) failed or one of its workers did not finish.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
PROJECT = os.path.dirname(os.path.dirname(HERE))
START_METHODS = ("fork", "spawn", "forkserver")
_ENV_IMPL = "FASTMGR_CPYTHON_TESTS_IMPL"
_ENV_METHOD = "FASTMGR_CPYTHON_TESTS_START_METHOD"
_RESULT_TAG = "CPYTHON-MANAGER-TESTS-RESULT "

# ---------------------------------------------------------------------------
# Worker: this module is the test module (it is also re-imported as
# __mp_main__ by spawn and forkserver children, which find the test classes
# here by name).

_IMPL = os.environ.get(_ENV_IMPL)
if _IMPL == "fastmgr":
    import fastmgr                     # noqa: E402
    fastmgr.install()                  # before the tests import multiprocessing.managers
if _IMPL in ("fastmgr", "stdlib"):
    import test._test_multiprocessing as _tmp   # noqa: E402
    _tmp.install_tests_in_module_dict(globals(), os.environ.get(_ENV_METHOD, "fork"))


def _selected(test):
    """Whether a test (a unittest.TestCase instance) is of the manager flavour."""
    cls = type(test).__name__
    method = test._testMethodName
    if cls.startswith("WithManager"):
        return True
    if cls.endswith(("TestMyManager", "TestRemoteManager", "TestManagerRestart")):
        return True
    if cls in ("TestSyncManagerTypes", "TestInitializers"):
        return True
    if cls.endswith("TestSharedMemory"):
        return "SharedMemoryManager" in method or "SharedMemoryServer" in method
    return False


def _flatten(suite):
    import unittest
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _check_implementation(impl, require_installed=False):
    """Say which managers run, and refuse to test the wrong ones."""
    import multiprocessing.managers as mpm
    if impl == "fastmgr":
        import fastmgr
        import fastmgr._backend
        print("fastmgr %s from %s" % (fastmgr.__version__, os.path.dirname(fastmgr.__file__)))
        print(fastmgr._backend.describe())
        if fastmgr._backend.wire.IMPLEMENTATION != "compiled":
            sys.exit("error: fastmgr is not running its compiled wire")
        if require_installed:
            for path in (fastmgr.__file__, fastmgr._backend.wire.__file__):
                path = os.path.realpath(path)
                if path.startswith(os.path.join(os.path.realpath(PROJECT), "fastmgr") + os.sep):
                    sys.exit("error: %s is the source tree's, not the installed copy" % path)
        if mpm.SyncManager is not fastmgr.SyncManager or mpm.BaseManager is not fastmgr.BaseManager:
            sys.exit("error: multiprocessing.managers is not fastmgr's after fastmgr.install()")
        if not issubclass(_tmp.MyManager, fastmgr.BaseManager):
            sys.exit("error: the test module's managers are not fastmgr's")
    else:
        if mpm.SyncManager.__module__ != "multiprocessing.managers":
            sys.exit("error: multiprocessing.managers.SyncManager is not the stdlib's")
        print("stdlib multiprocessing.managers from %s" % mpm.__file__)


def worker(impl, method, verbosity, timeout, match=(), require_installed=False):
    import faulthandler
    import signal
    import unittest
    faulthandler.enable()
    # Python's own SIGINT handling, which some tests rely on: a worker started
    # from a background job inherits SIGINT ignored, and Python keeps it so
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if timeout:
        # a hung test must not hang CI: dump every thread's stack and exit
        faulthandler.dump_traceback_later(timeout, exit=True)
    _check_implementation(impl, require_installed)
    print("test module: %s; start method: %s" % (_tmp.__file__, method))
    sys.stdout.flush()

    module = sys.modules[__name__]
    tests = [t for t in _flatten(unittest.defaultTestLoader.loadTestsFromModule(module))
             if _selected(t) and (not match or any(m in t.id() for m in match))]
    suite = unittest.TestSuite(tests)
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=verbosity)
    started = time.monotonic()
    result = runner.run(suite)
    elapsed = time.monotonic() - started
    skipped = len(result.skipped)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    # class- and module-level errors are not among testsRun
    in_run = [t for t, _ in result.errors if isinstance(t, unittest.TestCase)]
    passed = (result.testsRun - len(result.failures) - len(in_run) - skipped
              - len(result.expectedFailures) - len(result.unexpectedSuccesses))
    counts = {"impl": impl, "method": method, "passed": passed, "failed": failed,
              "skipped": skipped, "selected": len(tests), "seconds": round(elapsed, 1),
              "failures": sorted(t.id() if isinstance(t, unittest.TestCase) else str(t)
                                 for t, _ in result.failures + result.errors)}
    sys.stdout.flush()
    print(_RESULT_TAG + json.dumps(counts))
    sys.stdout.flush()
    faulthandler.cancel_dump_traceback_later()
    return 0 if failed == 0 else 1


# ---------------------------------------------------------------------------
# Driver: one worker per (implementation, start method)

def run_one(impl, method, verbosity, timeout, match=(), require_installed=False):
    env = dict(os.environ)
    env[_ENV_IMPL] = impl
    env[_ENV_METHOD] = method
    env.setdefault("PYTHONFAULTHANDLER", "1")
    cmd = [sys.executable, HERE, "--worker", "--impl", impl, "--start-method", method,
           "--verbosity=%d" % verbosity, "--timeout", str(timeout)]
    cmd += ["--match=%s" % m for m in match]
    if require_installed:
        cmd.append("--require-installed")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cpython-mgr-tests-") as cwd:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        counts = None
        for line in proc.stdout:
            if line.startswith(_RESULT_TAG):
                counts = json.loads(line[len(_RESULT_TAG):])
            else:
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
    wall = time.monotonic() - started
    if counts is None:
        counts = {"impl": impl, "method": method, "passed": 0, "failed": 1, "skipped": 0,
                  "selected": 0, "seconds": round(wall, 1),
                  "failures": ["worker exited with %s before reporting" % rc]}
    counts["wall"] = round(wall, 1)
    counts["rc"] = rc
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=("fastmgr", "stdlib", "both"), default="fastmgr")
    parser.add_argument("--start-method", action="append", choices=START_METHODS,
                        help="repeatable; default: all three")
    parser.add_argument("--verbosity", type=int, default=1, help="unittest verbosity")
    parser.add_argument("--require-installed", action="store_true",
                        help="fail unless fastmgr is imported from outside this source tree")
    parser.add_argument("--timeout", type=float, default=240,
                        help="seconds before a worker is stopped with a stack dump")
    parser.add_argument("-k", "--match", action="append",
                        help="run only the selected tests whose id contains this (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the counts as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    methods = args.start_method or list(START_METHODS)

    if args.worker:
        if _IMPL != args.impl:
            sys.exit("error: a worker needs %s=%s" % (_ENV_IMPL, args.impl))
        return worker(args.impl, methods[0], args.verbosity, args.timeout, args.match or (),
                      args.require_installed)

    impls = ["stdlib", "fastmgr"] if args.impl == "both" else [args.impl]
    print("Python %s (%s)" % (sys.version.split()[0], sys.executable))
    results = []
    for impl in impls:
        for method in methods:
            print("=== %s, start method %s ===" % (impl, method))
            sys.stdout.flush()
            results.append(run_one(impl, method, args.verbosity, args.timeout,
                                   args.match or (), args.require_installed))

    print()
    print("CPython manager tests (%s), Python %s" % (_test_module_file(), sys.version.split()[0]))
    for r in results:
        print("%-7s %-11s passed %d, failed %d, skipped %d  (%.1fs)" % (
            r["impl"], r["method"] + ":", r["passed"], r["failed"], r["skipped"], r["wall"]))
        for name in r["failures"]:
            print("        FAILED: %s" % name)
    totals = {}
    for impl in impls:
        mine = [r for r in results if r["impl"] == impl]
        totals[impl] = {k: sum(r[k] for r in mine) for k in ("passed", "failed", "skipped")}
        totals[impl]["ok"] = not totals[impl]["failed"] and all(r["rc"] == 0 for r in mine)
        totals[impl]["seconds"] = round(sum(r["wall"] for r in mine), 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "totals": totals}, f, indent=1)
    # the implementation under test decides the exit status; with --impl
    # both the stdlib's counts are the baseline, printed first
    tested = "fastmgr" if "fastmgr" in totals else "stdlib"
    if tested == "fastmgr" and "stdlib" in totals and not totals["stdlib"]["ok"]:
        print("note: the stdlib itself fails here; compare the lists above")
    for impl in sorted(impls, key=lambda i: i == tested):
        t = totals[impl]
        prefix = "" if impl == tested else "%s baseline: " % impl
        print("%s%d passed, %d failed, %d skipped" % (prefix, t["passed"], t["failed"],
                                                      t["skipped"]))
    return 0 if totals[tested]["ok"] else 1


def _test_module_file():
    import importlib.util
    spec = importlib.util.find_spec("test._test_multiprocessing")
    return spec.origin if spec else "?"


if __name__ == "__main__":
    sys.exit(main())
