import importlib
import os

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
