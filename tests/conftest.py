"""Fixtures and hooks shared by every test module.  Plain helpers live in
the ``helpers`` package beside this file."""
import importlib

import pytest

from helpers import aio
from helpers.common import PUREPYTHON, managers_module
from helpers.hub_rig import Rig


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


@pytest.fixture(params=["python-python", "compiled-compiled", "compiled-python", "python-compiled"])
def impls(request):
    """(wire of end A, wire of end B): each pairing of the two wires."""
    return tuple(request.getfixturevalue(name + "_wire") for name in request.param.split("-"))


@pytest.fixture(params=["unix", "tcp"])
def transport(request):
    return request.param


@pytest.fixture(scope="session", params=["compiled", "python"])
def wire(request):
    """Each wire implementation in turn."""
    return request.getfixturevalue(request.param + "_wire")


# -- behaviour tests written once, run on the stdlib and on fastmgr ----------

IMPLEMENTATIONS = ["stdlib", "fastmgr"]


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


# -- a hub over socketpairs (tests/test_hub_*.py, tests/test_ring*.py) -------

@pytest.fixture
def rig(wire):
    """A hub of the wire under test (helpers/hub_rig.py), closed and checked
    at the end of the test."""
    r = Rig(wire)
    yield r
    r.close()


@pytest.fixture
def compiled(wire):
    """Whether the hub under test is the compiled one (one loop thread)."""
    return wire.IMPLEMENTATION == "compiled"


# -- async views (test_aio_*.py) ---------------------------------------------

@pytest.fixture(params=aio.LOOPS)
def aio_run(request):
    """aio_run(coroutine function, *args): its result, run on a new event
    loop of each kind (the default loop, uvloop), bounded in time."""
    return aio.loop_runner(request.param)


@pytest.fixture(scope="module", params=aio.METHODS)
def aio_manager(request):
    """A started helpers.aio.AioManager, by fork and by spawn."""
    m = aio.start_manager(request.param)
    yield m
    m.shutdown()
