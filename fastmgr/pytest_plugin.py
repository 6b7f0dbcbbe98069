"""A pytest plugin: run one test on multiprocessing.managers and on fastmgr.

pytest loads it wherever fastmgr is installed (the ``pytest11`` entry point
named ``fastmgr``; ``-p no:fastmgr`` turns it off).  It does nothing to a
test that does not ask for ``manager_impl``: it adds one fixture and one
option, and imports neither implementation until a test asks.

    def test_dict_set(benchmark, manager_impl):
        with manager_impl.SyncManager() as manager:
            d = manager.dict()
            benchmark(d.__setitem__, "key", 1)

runs twice, as ``test_dict_set[stdlib]`` and ``test_dict_set[fastmgr]``, and
pytest-benchmark's table has a row for each.  ``--manager-impl=fastmgr`` (or
``stdlib``) runs only that one.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest

IMPLEMENTATIONS = ("stdlib", "fastmgr")


@dataclass(frozen=True)
class ManagerImpl:
    """One implementation of the managers API, as a test sees it."""

    name: str                   # "stdlib" or "fastmgr"
    BaseManager: type           # subclass it and register() your types
    SyncManager: type           # the manager with Queue, dict, list, Lock, ...
    Manager: Callable[..., Any]  # Manager(ctx=None): a started SyncManager

    def __repr__(self) -> str:
        return "<manager_impl %s>" % self.name


def _stdlib() -> ManagerImpl:
    import multiprocessing.managers as managers

    # after fastmgr.install(), multiprocessing.managers holds fastmgr's
    # names; the stdlib's own are kept aside until uninstall()
    from fastmgr import _install  # plain Python: no compiled code
    saved = _install._saved or {}
    base = saved.get("BaseManager", managers.BaseManager)
    sync = saved.get("SyncManager", managers.SyncManager)

    def Manager(ctx: Optional[Any] = None) -> Any:
        """A started stdlib SyncManager, as ``multiprocessing.Manager()`` gives."""
        import multiprocessing

        manager = sync(ctx=ctx if ctx is not None else multiprocessing.get_context())
        manager.start()
        return manager

    return ManagerImpl("stdlib", base, sync, Manager)


def _fastmgr() -> ManagerImpl:
    import fastmgr

    return ManagerImpl("fastmgr", fastmgr.BaseManager, fastmgr.SyncManager, fastmgr.Manager)


def load(name: str) -> ManagerImpl:
    """The implementation called ``name`` ("stdlib" or "fastmgr")."""
    if name == "stdlib":
        return _stdlib()
    if name == "fastmgr":
        return _fastmgr()
    raise ValueError("no manager implementation %r (choose from %s)"
                     % (name, ", ".join(IMPLEMENTATIONS)))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastmgr", "fastmgr's manager_impl fixture")
    group.addoption(
        "--manager-impl", choices=IMPLEMENTATIONS, default=None, dest="fastmgr_manager_impl",
        help="run the tests that use the manager_impl fixture on this implementation only "
             "(default: on both, stdlib first)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "manager_impl" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("fastmgr_manager_impl")
    names = [chosen] if chosen else list(IMPLEMENTATIONS)
    metafunc.parametrize("manager_impl", names, indirect=True, ids=names)


@pytest.fixture
def manager_impl(request: pytest.FixtureRequest) -> ManagerImpl:
    """multiprocessing.managers or fastmgr: each in turn, or the one that
    ``--manager-impl`` names.  Attributes: ``name``, ``BaseManager``,
    ``SyncManager`` and ``Manager``."""
    name = getattr(request, "param", None)
    if name is None:  # asked for by name (getfixturevalue), not parametrised
        name = request.config.getoption("fastmgr_manager_impl") or "fastmgr"
    return load(name)
