"""Fixtures of the pytest-benchmark suite: managers started once per module."""
import pytest

from fastmgr import _bench


@pytest.fixture(scope="module")
def managers():
    """managers(impl, address="unix", pinned=False): a started SyncManager
    subclass of `impl`, one per key for the module.  Rows pinned to one CPU
    get their own, as server threads started while pinned stay pinned."""
    started = {}

    def get(impl, address="unix", pinned=False):
        key = (impl, address, pinned)
        if key not in started:
            started[key] = _bench.start_manager(impl, address)
        return started[key]

    yield get
    for manager in started.values():
        manager.shutdown()
