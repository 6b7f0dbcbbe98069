"""The type information users check their programs against: the stubs
(.pyi) and py.typed of the installed fastmgr.

``mypy --strict`` passes on a small typed user program
(tests/typed_programs/user_program.py), which also runs; it reports the mistakes
in tests/typed_programs/user_mistakes.py, line by line; and mypy's stubtest finds
the stubs in agreement with the modules they describe.
"""
import os
import re
import subprocess
import sys

import pytest

import fastmgr

TYPING = os.path.join(os.path.dirname(__file__), "typed_programs")
STUBBED = ["fastmgr.errors", "fastmgr._install", "fastmgr.managers", "fastmgr.namespace",
           "fastmgr.pipeline", "fastmgr.proxies", "fastmgr.server", "fastmgr.sharedmem",
           "fastmgr.sync"]

pytestmark = [pytest.mark.timeout(300)]


def run(args, cwd):
    """A command in a scratch directory, where only the installed fastmgr is
    importable (mypy reads the package it would import)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=280)


def mypy(tmp_path, *args):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install '.[test]')")
    return run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull,
                "--python-version", "%d.%d" % sys.version_info[:2], *args], tmp_path)


def test_package_is_typed():
    here = os.path.dirname(fastmgr.__file__)
    assert os.path.exists(os.path.join(here, "py.typed"))
    for module in STUBBED:
        assert os.path.exists(os.path.join(here, module.split(".")[1] + ".pyi")), module
    # fastmgr.aio's: the package's public face only (stubtest leaves it out:
    # the modules behind it are not stubbed)
    assert os.path.exists(os.path.join(here, "_aio", "__init__.pyi"))


def test_strict_user_program_passes(tmp_path):
    proc = mypy(tmp_path, "--strict", os.path.join(TYPING, "user_program.py"))
    assert proc.returncode == 0, proc.stdout
    assert "Success: no issues found" in proc.stdout


def test_user_program_runs(tmp_path):
    proc = run([sys.executable, os.path.join(TYPING, "user_program.py")], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip() == "ok " + fastmgr.__version__


def test_mistakes_are_reported_where_marked(tmp_path):
    path = os.path.join(TYPING, "user_mistakes.py")
    expected = set()
    with open(path) as source:
        for number, line in enumerate(source, 1):
            marked = re.search(r"# error: ([a-z-]+)$", line)
            if marked:
                expected.add((number, marked.group(1)))
    proc = mypy(tmp_path, "--strict", "--show-error-codes", path)
    reported = {(int(m.group(1)), m.group(2)) for m in
                re.finditer(r"user_mistakes\.py:(\d+): error: .*\[([a-z-]+)\]$", proc.stdout, re.M)}
    assert reported == expected, proc.stdout


#: stubtest's complaints that are the stubs' purpose: methods forwarded to
#: the referent take (*args, **kwds) at run time, and the stubs give the
#: referent's own signature instead
FORWARDED = re.compile(r'is inconsistent, stub does not have \*args parameter "args"')


def test_stubs_agree_with_the_modules(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install '.[test]')")
    proc = run([sys.executable, "-m", "mypy.stubtest", "--ignore-missing-stub",
                "--allowlist", os.path.join(TYPING, "stubtest-allowlist.txt"), *STUBBED], tmp_path)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    unexpected = [line for line in errors if not FORWARDED.search(line)]
    assert not unexpected, proc.stdout
    assert "not checking stubs" not in proc.stdout, proc.stdout
