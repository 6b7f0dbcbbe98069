"""A test that does not use the plugin: it is left alone, and pytest's
start loaded no compiled code of fastmgr."""
import sys


def test_plain():
    assert "fastmgr.pytest_plugin" in sys.modules  # loaded by its entry point
    loaded = sorted(name for name in sys.modules if name.startswith("fastmgr"))
    assert "fastmgr._wire" not in loaded and "fastmgr._backend" not in loaded, loaded
    assert "fastmgr.managers" not in loaded, loaded
    print("LOADED", loaded)
