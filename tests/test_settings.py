"""fastmgr._settings: the one reader of FASTMGR_* variables, its rules and
its errors."""
import os
import re
import subprocess
import sys

import pytest

from helpers.common import child_env
from fastmgr import _settings

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fastmgr")


@pytest.mark.parametrize("text,value", [
    ("1", True), ("true", True), ("Yes", True), ("ON", True),
    ("0", False), ("false", False), ("no", False), ("Off", False),
    ("", None), ("  ", None),
])
def test_switch(monkeypatch, text, value):
    monkeypatch.setenv("FASTMGR_TEST_SWITCH", text)
    for default in (True, False):
        expected = default if value is None else value
        assert _settings.switch("FASTMGR_TEST_SWITCH", default) is expected


def test_unset_means_the_default(monkeypatch):
    monkeypatch.delenv("FASTMGR_TEST_UNSET", raising=False)
    assert _settings.switch("FASTMGR_TEST_UNSET", True) is True
    assert _settings.count("FASTMGR_TEST_UNSET", 7, 0, 10) == 7
    assert _settings.duration("FASTMGR_TEST_UNSET", 2.5, 0.001, 10) == 2.5
    assert _settings.choice("FASTMGR_TEST_UNSET", "full", ("full", "plain")) == "full"


def test_choice(monkeypatch):
    monkeypatch.setenv("FASTMGR_TEST_CHOICE", " Plain ")
    assert _settings.choice("FASTMGR_TEST_CHOICE", "full", ("full", "plain")) == "plain"


def test_count_and_duration(monkeypatch):
    monkeypatch.setenv("FASTMGR_TEST_NUMBER", " 10 ")
    assert _settings.count("FASTMGR_TEST_NUMBER", 0, 0, 10) == 10
    assert _settings.duration("FASTMGR_TEST_NUMBER", 0, 0.5, 10) == 10.0
    monkeypatch.setenv("FASTMGR_TEST_NUMBER", "0.25")
    assert _settings.duration("FASTMGR_TEST_NUMBER", 1.0, 0.001, 10) == 0.25


@pytest.mark.parametrize("reader,text", [
    (lambda name: _settings.switch(name, True), "2"),
    (lambda name: _settings.switch(name, True), "yes please"),
    (lambda name: _settings.count(name, 0, 0, 10), "11"),
    (lambda name: _settings.count(name, 0, 0, 10), "-1"),
    (lambda name: _settings.count(name, 0, 0, 10), "1.5"),
    (lambda name: _settings.count(name, 0, 0, 10), "many"),
    (lambda name: _settings.duration(name, 1.0, 0.001, 10), "0"),
    (lambda name: _settings.duration(name, 1.0, 0.001, 10), "nan"),
    (lambda name: _settings.duration(name, 1.0, 0.001, 10), "inf"),
    (lambda name: _settings.duration(name, 1.0, 0.001, 10), "soon"),
    (lambda name: _settings.choice(name, "full", ("full", "plain")), "fast"),
])
def test_a_bad_value_names_the_variable(monkeypatch, reader, text):
    monkeypatch.setenv("FASTMGR_TEST_BAD", text)
    with pytest.raises(ValueError, match="FASTMGR_TEST_BAD"):
        reader("FASTMGR_TEST_BAD")


@pytest.mark.parametrize("name,text", [
    ("FASTMGR_SPIN_US", "10001"),
    ("FASTMGR_SPIN_YIELD", "maybe"),
    ("FASTMGR_SPIN_POLICY", "fast"),
    ("FASTMGR_RING", "2"),
    ("FASTMGR_HANDSHAKE_TIMEOUT", "-1"),
    ("FASTMGR_PUREPYTHON", "yes!"),
])
def test_import_refuses_a_bad_value(name, text):
    result = subprocess.run([sys.executable, "-c", "import fastmgr"], capture_output=True,
                            text=True, env=child_env(**{name: text}), timeout=60)
    assert result.returncode != 0
    assert "ValueError" in result.stderr and name in result.stderr


@pytest.mark.parametrize("text,policy", [(None, "full"), ("plain", "plain"), (" Full ", "full")])
def test_spin_policy(text, policy):
    """FASTMGR_SPIN_POLICY picks the whole spin policy: full (the default)
    or plain."""
    env = child_env(FASTMGR_SPIN_POLICY=text or "")  # empty: unset
    result = subprocess.run([sys.executable, "-c", "from fastmgr import _settings; "
                             "print(_settings.SPIN_POLICY)"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == policy


def test_only_settings_reads_the_environment():
    """Every FASTMGR_* variable is read in _settings.py and nowhere else in
    the package (the build's own switches live in setup.py)."""
    offenders = []
    for folder, _dirs, names in os.walk(SOURCE):
        for name in names:
            if name == "_settings.py" or not name.endswith((".py", ".pyx", ".pxi", ".pxd", ".h")):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                text = f.read()
            if re.search(r"\benviron\b|\bgetenv\b", text):
                offenders.append(name)
    assert sorted(offenders) == []
