"""The pytest plugin users get with fastmgr (fastmgr/pytest_plugin.py).

Each test runs pytest in a child process on a program from
tests/plugin_programs/, in a scratch directory, so that the plugin is
loaded the way a user's pytest loads it: through the ``pytest11`` entry
point of the installed fastmgr.
"""
import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest

PROGRAMS = os.path.join(os.path.dirname(__file__), "plugin_programs")

pytestmark = pytest.mark.timeout(300)


def entry_point():
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.name == "fastmgr":
            return ep
    return None


def run_pytest(tmp_path, program, *args, timeout=240):
    """pytest on tests/plugin_programs/<program>.py, copied to
    tmp_path/test_<program>.py; returns (exit code, output)."""
    if entry_point() is None:
        pytest.fail("fastmgr's pytest11 entry point is missing: install fastmgr "
                    "(pip install .) before running this suite", pytrace=False)
    shutil.copy(os.path.join(PROGRAMS, program + ".py"), tmp_path / ("test_" + program + ".py"))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keeps the rootdir here
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout)
    return proc.returncode, proc.stdout


def test_entry_point_names_the_plugin_module():
    ep = entry_point()
    assert ep is not None, "fastmgr is not installed with its pytest11 entry point"
    assert ep.value == "fastmgr.pytest_plugin"


def test_benchmark_runs_on_both_and_the_table_has_both_rows(tmp_path):
    pytest.importorskip("pytest_benchmark")
    code, out = run_pytest(tmp_path, "user_benchmark", "--benchmark-max-time=0.2",
                           "--benchmark-min-rounds=3")
    assert code == 0, out
    assert "test_dict_set[stdlib] PASSED" in out and "test_dict_set[fastmgr] PASSED" in out, out
    table = out[out.index("benchmark:"):]
    rows = [line.split()[0] for line in table.splitlines() if line.startswith("test_dict_set[")]
    assert sorted(rows) == ["test_dict_set[fastmgr]", "test_dict_set[stdlib]"], table


@pytest.mark.parametrize("name", ["fastmgr", "stdlib"])
def test_option_runs_one_implementation(tmp_path, name):
    code, out = run_pytest(tmp_path, "user_fixture", "-s", "--manager-impl=" + name)
    assert code == 0, out
    assert "3 passed" in out, out
    assert "IMPL %s" % name in out and out.count("IMPL ") == 1, out
    assert "[%s]" % name in out and "[%s]" % ({"fastmgr", "stdlib"} - {name}).pop() not in out


def test_fixture_gives_both_implementations(tmp_path):
    code, out = run_pytest(tmp_path, "user_fixture", "-s")
    assert code == 0, out
    assert "6 passed" in out, out
    assert "test_attributes[stdlib]" in out and "test_attributes[fastmgr]" in out, out


def test_inert_for_tests_that_do_not_use_it(tmp_path):
    code, out = run_pytest(tmp_path, "user_plain", "-s")
    assert code == 0, out
    assert "::test_plain " in out and "LOADED" in out and "1 passed" in out, out


def test_option_is_in_help_and_plugin_can_be_turned_off(tmp_path):
    code, out = run_pytest(tmp_path, "user_plain", "--help")
    assert code == 0 and "--manager-impl={stdlib,fastmgr}" in out, out
    code, out = run_pytest(tmp_path, "user_fixture", "-p", "no:fastmgr")
    assert code != 0 and "fixture 'manager_impl' not found" in out, out
