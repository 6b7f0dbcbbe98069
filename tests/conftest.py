import importlib
import os
import threading

import pytest

#: the same rule as fastmgr._backend: set and not "0" forces the python wire
PUREPYTHON = os.environ.get("FASTMGR_PUREPYTHON", "") not in ("", "0")


def pytest_report_header(config):
    try:
        from fastmgr import _backend

        line = _backend.describe()
    except Exception as exc:  # the header must not stop the session
        line = "fastmgr wire: NOT IMPORTABLE (%s: %s)" % (type(exc).__name__, exc)
    bar = "#" * max(60, len(line) + 8)
    return [bar, "### " + line, bar]


@pytest.fixture(scope="session")
def python_wire():
    return importlib.import_module("fastmgr._wire_py")


@pytest.fixture(scope="session")
def compiled_wire():
    """The compiled wire.  Missing: an error, unless FASTMGR_PUREPYTHON is set."""
    try:
        return importlib.import_module("fastmgr._wire")
    except ImportError as exc:
        if PUREPYTHON:
            pytest.skip("FASTMGR_PUREPYTHON is set and fastmgr._wire is not built (%s)" % exc)
        pytest.fail(
            "fastmgr._wire (the compiled wire) is not importable: %s; build it with "
            "`python setup.py build_ext --inplace` or set FASTMGR_PUREPYTHON=1" % exc,
            pytrace=False,
        )


@pytest.fixture(scope="session", params=["compiled", "python"])
def wire(request):
    """Each wire implementation in turn."""
    return request.getfixturevalue(request.param + "_wire")


# -- behaviour tests written once, run on the stdlib and on fastmgr ----------

IMPLEMENTATIONS = ["stdlib", "fastmgr"]


def managers_module(name):
    if name == "stdlib":
        import multiprocessing.managers as module
    else:
        import fastmgr as module
    return module


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def impl(request):
    """The managers module under test: multiprocessing.managers or fastmgr."""
    return managers_module(request.param)


@pytest.fixture(scope="module")
def manager(impl):
    """A started SyncManager of impl, shared by a test module."""
    m = impl.SyncManager()
    m.start()
    yield m
    m.shutdown()


def child_env(**extra):
    """The environment for a child Python that must import the fastmgr under
    test (installed, or this checkout when run from it)."""
    import fastmgr

    root = os.path.dirname(os.path.dirname(fastmgr.__file__))
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


class Worker(threading.Thread):
    """Runs fn(*args) in a thread and keeps the result or the exception."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def outcome(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def receive(conn, proc, timeout=30):
    """The next message from a child process; a child's ("error",
    traceback) fails the test."""
    if not conn.poll(timeout):
        pytest.fail("no message from %r within %ss" % (proc, timeout))
    try:
        message = conn.recv()
    except EOFError:
        proc.join(5)
        pytest.fail("%r closed its pipe without a message (exitcode %r)" % (proc, proc.exitcode))
    if isinstance(message, tuple) and message[0] == "error":
        pytest.fail("%r failed:\n%s" % (proc, message[1]))
    return message


def child_result(conn, proc, timeout=30):
    """The value of a child's ("ok", value) message."""
    tag, value = receive(conn, proc, timeout)
    assert tag == "ok"
    return value
