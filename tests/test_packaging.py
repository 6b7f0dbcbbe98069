"""What the package promises at import: Linux only, a version from one
place, public names that load on first use, and no compiled code loaded by
``import fastmgr`` itself."""
import importlib.metadata
import subprocess
import sys

import pytest
from helpers.common import child_env

import fastmgr

pytestmark = pytest.mark.timeout(60)


def python(code):
    """Run code in a fresh interpreter that imports the fastmgr under test."""
    return subprocess.run([sys.executable, "-c", code], env=child_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=50)


def test_other_systems_get_a_clear_import_error():
    proc = python("import sys; sys.platform = 'darwin'; import fastmgr")
    assert proc.returncode != 0
    assert "ImportError: fastmgr runs on Linux only" in proc.stdout, proc.stdout
    assert "'darwin'" in proc.stdout


def test_import_loads_no_compiled_code():
    proc = python("import sys, fastmgr; print(' '.join(m for m in sys.modules if 'fastmgr' in m))")
    assert proc.returncode == 0, proc.stdout
    loaded = set(proc.stdout.split())
    # the version, and the settings (read and checked at import); nothing else
    assert loaded <= {"fastmgr", "fastmgr._version", "fastmgr._settings", "fastmgr._protocol"}, loaded


def test_every_public_name_resolves():
    for name in fastmgr.__all__:
        assert getattr(fastmgr, name) is not None, name
    assert set(fastmgr.__all__) <= set(dir(fastmgr))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        fastmgr.no_such_name


@pytest.mark.parametrize("first", ["import fastmgr.pipeline", "from fastmgr import oneway",
                                   "from fastmgr.pipeline import Pipeline"])
def test_pipeline_is_the_function_whichever_import_comes_first(first):
    proc = python(first + "; import fastmgr, inspect; print(inspect.isfunction(fastmgr.pipeline))")
    assert proc.stdout.strip() == "True", proc.stdout


def test_submodules_are_attributes_as_before():
    proc = python("import fastmgr; print(fastmgr.sync.SyncManager.__name__)")
    assert proc.stdout.strip() == "SyncManager", proc.stdout


def test_one_version():
    from fastmgr._version import __version__

    assert fastmgr.__version__ == __version__
    try:
        installed = importlib.metadata.version("fastmgr")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastmgr is not installed (no metadata to compare)")
    assert installed == __version__


def test_smoke_subset_names_tests_that_exist():
    """tests/smoke-tests.txt (run on every Python but the one with the full
    suite, and by the release build) names files and tests that exist."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "smoke-tests.txt")) as listing:
        entries = [line.strip() for line in listing if line.strip() and not line.startswith("#")]
    assert entries
    for entry in entries:
        path, _, name = entry.partition("::")
        assert path.startswith("tests/"), entry
        with open(os.path.join(here, path[len("tests/"):])) as source:
            text = source.read()
        assert not name or ("def %s(" % name) in text, entry


def test_dict_views_travel_as_lists_in_a_fresh_process():
    """The stdlib's managers module registers reducers as it is imported
    (dict views pickle as lists); a program that imports only fastmgr gets
    them too, though ``import fastmgr`` no longer imports everything."""
    proc = python("import fastmgr\n"
                  "with fastmgr.SyncManager() as m:\n"
                  "    d = m.dict({1: 2})\n"
                  "    print(d.keys(), d.values(), d.items())\n")
    assert proc.stdout.strip() == "[1] [2] [(1, 2)]", proc.stdout
